"""How the dashboard's pages are rendered: its templates, the security headers of every page, and its own
404 page."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates

from producers.dashboard import formatting
from producers.dashboard.sessions import Session

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals.update(fmt=formatting)


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def render(
    request: Request,
    template: str,
    session: Session | None,
    status_code: int = 200,
    media: str | None = None,
    **context: Any,
) -> Response:
    """The page, with its security headers; ``media``: the URL of a video it plays (allowed by the CSP:
    presigned URLs name their own host, on AWS the bucket's, so the policy takes the URL's origin)."""
    response = templates.TemplateResponse(
        request,
        template,
        {"session": session, "partial": request.query_params.get("partial") == "1", **context},
        status_code=status_code,
    )
    secure_headers(response, origin_of(media) if media else None)
    return response


def secure_headers(response: Response, media_origin: str | None) -> None:
    media = f"'self' {media_origin}" if media_origin else "'self'"
    response.headers["Content-Security-Policy"] = (
        f"default-src 'self'; script-src 'self'; style-src 'self'; img-src {media} data:; "
        f"media-src {media}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"


def not_found(request: Request, session: Session, message: str, back: str, back_name: str) -> Response:
    """The dashboard's own 404 page (an API's JSON answer is for programs)."""
    return render(request, "notfound.html", session, 404, message=message, back=back, back_name=back_name)
