"""The dashboard's safety: security headers on every answer, and the checks every POST passes.

Closed by default: a write action is refused (403) unless write actions were switched on; then it
needs a credential (the token, as ``Authorization: Bearer`` or the cookie set by ``/login``, or a
yes from ``authorize(request, action)``); and every POST must come from the dashboard's own origin
(``Origin``, else ``Referer``) and, from a browser form, carry the CSRF token of its cookie
(double submit). GETs never change anything.
"""

from __future__ import annotations

import hmac
import inspect
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._page import WebError
from ._request import WebOptions

#: The cookie holding the CSRF token (double submit: forms echo it in a field).
CSRF_COOKIE = "nw_csrf"
#: The form field and header that echo it.
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: The cookie set by ``/login`` holding the write token.
TOKEN_COOKIE = "nw_token"

_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """ASGI middleware adding the security headers (CSP without inline script, no framing,
    nosniff, same-origin referrer, no caching) to every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [
                    (name, value) for name, value in _HEADERS if name not in names
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def new_csrf_token() -> str:
    """A fresh random CSRF token."""
    return secrets.token_urlsafe(24)


def same_origin(request: Request) -> bool:
    """Whether the POST comes from this dashboard's origin (by ``Origin``, else ``Referer``)."""
    host = request.headers.get("host", "")
    source = request.headers.get("origin")
    if source is None:
        referer = request.headers.get("referer")
        if referer is None:
            # Neither header: not a browser form (browsers send Origin on every POST); a script
            # must then prove itself by the bearer token (checked below), never by a cookie.
            return True
        source = referer
    if source == "null":
        return False
    parts = urlsplit(source)
    return bool(parts.netloc) and parts.netloc.lower() == host.lower()


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def check_write(request: Request, form: dict[str, str], options: WebOptions, action: str) -> None:
    """Raise a 403 :class:`WebError` unless this POST may run *action*.

    Order: write actions on; same origin; CSRF (for cookie-authenticated browser posts); then the
    credential: the token (bearer header or login cookie), or ``authorize(request, action)``.
    """
    if options.read_only:
        raise WebError(
            403, f"{action} refused: the dashboard is read-only (start it with --read-write and a --token to allow it)"
        )
    if not same_origin(request):
        raise WebError(403, f"{action} refused: the request comes from another origin")
    bearer = _bearer(request)
    if bearer is None:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        echoed = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER, "")
        if not cookie or not hmac.compare_digest(cookie.encode(), echoed.encode()):
            raise WebError(403, f"{action} refused: missing or wrong CSRF token (reload the page and try again)")
    if options.authorize is not None:
        verdict = options.authorize(request, action)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if not verdict:
            raise WebError(403, f"{action} refused by the dashboard's authorize hook")
        return
    if options.token is not None:
        given = bearer or request.cookies.get(TOKEN_COOKIE, "")
        if not given or not hmac.compare_digest(given.encode(), options.token.encode()):
            raise WebError(403, f"{action} refused: log in with the dashboard's token first")
        return
    raise WebError(403, f"{action} refused: write actions need a token or an authorize hook")
