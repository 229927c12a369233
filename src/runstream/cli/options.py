"""Options shared by every command that talks to the API."""

from __future__ import annotations

from typing import Annotated

import typer

ApiUrlOption = Annotated[
    str, typer.Option("--api", envvar="RUNSTREAM_API_URL", help="Base URL of the API.")
]
"""The ``--api`` option of every command that talks to the API."""
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="RUNSTREAM_TOKEN", help="API key or JWT (Bearer)."),
]
"""The ``--token`` option of every command that talks to the API."""
