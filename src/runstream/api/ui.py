"""``GET /ui/``: a small page that lists the caller's runs, starts one and follows one live.

Three static files shipped with the package (``ui/``), served with a Content Security
Policy that allows nothing but this origin, so nothing an agent writes can run as script.
The page talks to the API with the key the user types (kept in the tab's sessionStorage)
and follows a run with EventSource through a stream ticket.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Final

from fastapi import APIRouter
from starlette.responses import RedirectResponse, Response

from runstream.api.errors import not_found

router = APIRouter(include_in_schema=False)

_TYPES: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
}
_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@cache
def _file(name: str) -> bytes:
    return files("runstream.api").joinpath("ui", name).read_bytes()


@router.get("/ui")
async def ui_root() -> RedirectResponse:
    return RedirectResponse("ui/", status_code=308)


@router.get("/ui/")
async def ui_page() -> Response:
    return _serve("index.html")


@router.get("/ui/{name}")
async def ui_asset(name: str) -> Response:
    if name not in _TYPES:
        raise not_found("file")
    return _serve(name)


def _serve(name: str) -> Response:
    return Response(_file(name), media_type=_TYPES[name], headers=_HEADERS)
