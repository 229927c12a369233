"""Errors of talking to a runstream API, each with the exit code a command reports for it."""

from __future__ import annotations

from typing import Final

from runstream.errors import RunstreamError

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
"""The run failed, or the command could not do its work (API down, server error)."""
EXIT_USAGE: Final = 2
"""Bad configuration or arguments: nothing was started."""
EXIT_STOPPED: Final = 3
"""The run ended ``stopped``."""
EXIT_INTERRUPTED: Final = 130
"""Left at once on a second Ctrl-C (128 + SIGINT, as shells report it)."""


class ClientError(RunstreamError):
    """A failure to report as one line, ``runstream: <message>``, with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(ClientError):
    """The user insisted (a second Ctrl-C or SIGTERM): the command gave up waiting."""

    def __init__(self, message: str = "interrupted") -> None:
        super().__init__(message, EXIT_INTERRUPTED)
