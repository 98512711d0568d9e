"""Rendering the pages: Jinja2 templates (autoescaped), a strict CSP, no caching.

The pages need no JavaScript and load nothing: their one style sheet is inline and
allowed by its hash, every other kind of content is refused (``default-src 'none'``),
they cannot be framed (``frame-ancestors 'none'``, and X-Frame-Options from the
middleware), and their forms may only post to us. A form's answer redirects to the
client, which CSP's form-action also covers, so a page that starts the way back to a
client names the client's origin there too.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.responses import HTMLResponse

from provider.errors import ServiceUnavailable

TEMPLATES = Path(__file__).parent / "templates"
PRODUCT = "provider"
AUTHORIZE_PATH = "/oauth/authorize"
LOGIN_PATH = "/oauth/authorize/login"
MFA_PATH = "/oauth/authorize/mfa"
CONSENT_PATH = "/oauth/authorize/consent"
LOGOUT_PATH = "/oauth/logout"
# Paths answered with pages: the middleware leaves their CSP to them.
WEB_PAGES = (AUTHORIZE_PATH, LOGIN_PATH, MFA_PATH, CONSENT_PATH, LOGOUT_PATH)
PAGE_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@cache
def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES),
                       autoescape=select_autoescape(["html"]), auto_reload=False)


@cache
def _style() -> tuple[Markup, str]:
    css = (TEMPLATES / "page.css").read_text().strip()
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    return Markup(css), f"'sha256-{digest}'"  # noqa: S704 (our own file, not input)


def content_security_policy(form_targets: Iterable[str] = ()) -> str:
    _, style_hash = _style()
    targets = " ".join(dict.fromkeys(form_targets))
    form_action = f"'self' {targets}".strip()
    return (f"default-src 'none'; style-src {style_hash}; form-action {form_action}; "
            "frame-ancestors 'none'; base-uri 'none'")


def render(template: str, *, status: int = 200, form_targets: Iterable[str] = (),
           headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    css, _ = _style()
    html = _environment().get_template(template).render(css=css, product=PRODUCT,
                                                        **context)
    return HTMLResponse(html, status_code=status, headers={
        **PAGE_HEADERS, "Content-Security-Policy": content_security_policy(form_targets),
        **(headers or {}),
    })


def message(title: str, text: str, *, status: int = 200,
            headers: dict[str, str] | None = None) -> HTMLResponse:
    return render("message.html", status=status, headers=headers, title=title,
                  message=text)


def is_page(path: str) -> bool:
    """Whether a request to ``path`` is a browser's, to be answered with a page."""
    return path in WEB_PAGES


def unavailable() -> HTMLResponse:
    """A page's answer when the database or the rate-limit service is out: a person
    reads it, so it is a page, not JSON; nothing is redirected to the client (its
    redirect URI could not be checked)."""
    return message("Try again shortly",
                   "The service is unavailable right now. Try again in a few seconds.",
                   status=503, headers=ServiceUnavailable().headers())


def internal_error() -> HTMLResponse:
    return message("Something went wrong",
                   "The server could not handle this request. Try again later.", status=500)
