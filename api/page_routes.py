"""The search page: ``GET /`` answers ``static/index.html``, ``/static/...`` its assets.

The page is plain HTML, CSS and JavaScript (no build step, nothing fetched from another
host): it reads everything from the JSON API (``POST /v1/search``, ``GET /v1/suggest``,
``GET /v1/products/{id}``, ``GET /v1/recommend/similar/{id}``) in the shopper's browser.
The files ship as package data of ``shopsearch.api``, so an installed wheel serves them.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "page_router"]

#: The page's files (package data: pyproject.toml ``[tool.setuptools.package-data]``).
STATIC_DIR = Path(__file__).resolve().parent / "static"

# The page's state lives in its URL (?q=...&brand=...&page=2, ?product=ID), so a reload
# or a shared link shows the same thing; revalidating keeps an upgraded server's page
# from running against a cached older app.js.
_NO_STALE = {"Cache-Control": "no-cache"}


def page_router() -> APIRouter:
    """``GET /`` (the page) and ``/static`` (its script, style sheet and icons)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=_NO_STALE)

    # check_dir: a package installed without its data fails at start-up, not per request.
    router.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=True), name="static")
    return router
