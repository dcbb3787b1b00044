"""`/`: a page to run any program: one job from a form built from its input schema, or a file as a batch.

Plain HTML, CSS and JS from `api/static/`, no build step and nothing from
another host. The page talks to the same API as any client: `GET /programs`
for the schemas, `POST /programs/{name}/jobs` and `/batches`, the job's and
the batch's event streams, `GET /batches/{id}/results` and its NDJSON.
Its script is one file: the key check lets only these three paths through
without a key (api/auth.py's `PUBLIC_PATHS`).
"""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# Only our own files and the API itself: model output can never run as script.
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
}

router = APIRouter(include_in_schema=False)


def _file(name: str, media_type: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=_HEADERS)


@router.get("/")
async def index() -> FileResponse:
    return _file("index.html", "text/html; charset=utf-8")


@router.get("/static/app.js")
async def app_js() -> FileResponse:
    return _file("app.js", "text/javascript; charset=utf-8")


@router.get("/static/style.css")
async def style_css() -> FileResponse:
    return _file("style.css", "text/css; charset=utf-8")
