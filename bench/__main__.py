"""``python -m bench``: see :func:`bench.cli.main`."""

from bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
