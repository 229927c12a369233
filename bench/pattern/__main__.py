"""``python -m bench.pattern api --port P`` or ``python -m bench.pattern worker``."""

from __future__ import annotations

import argparse
import asyncio


def main() -> None:
    """Run the pattern's API (under uvicorn) or its worker, until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.pattern")
    sub = parser.add_subparsers(dest="role", required=True)
    api = sub.add_parser("api", help="the FastAPI app under uvicorn")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8100)
    sub.add_parser("worker", help="the worker process")
    args = parser.parse_args()
    if args.role == "api":
        import uvicorn

        from bench.pattern.app import create_app

        uvicorn.run(
            create_app(),
            host=args.host,
            port=args.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
    else:
        from bench.pattern.worker import run_worker

        try:  # the same event loop as runstream's worker gets (uvloop when installed)
            import uvloop
        except ImportError:
            asyncio.run(run_worker())
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(run_worker())


if __name__ == "__main__":
    main()
