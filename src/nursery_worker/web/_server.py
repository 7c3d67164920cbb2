"""The dashboard's ASGI app: page discovery, routing, the HTML and JSON answers, errors, actions.

See the package docstring for the page convention; ``_page.py`` for its records.
"""

from __future__ import annotations

import contextlib
import hmac
import html
import importlib
import json
import logging
import pkgutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .._admin import Admin
from .._dsn import redact as redact_dsn
from .._errors import ConfigurationError, JobNotFound, JobStateError, NurseryWorkerError
from . import _pages
from ._audit import write_audit
from ._live import StreamCounter, change_events
from ._page import Action, Done, Page, View, WebError
from ._render import jsonable, make_environment
from ._request import Authorizer, PageRequest, Redactor, WebOptions
from ._security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    TOKEN_COOKIE,
    SecurityHeaders,
    check_write,
    new_csrf_token,
    same_origin,
)

if TYPE_CHECKING:
    from .._app import App

logger = logging.getLogger("nursery_worker.web")

_STATIC = Path(__file__).parent / "static"


def discover_pages() -> list[Page]:
    """Every ``PAGE`` of the modules in ``web/_pages/``, by nav order (then name).

    Raises:
        ConfigurationError: two pages share a name or a path.
    """
    pages: list[Page] = []
    for info in pkgutil.iter_modules(_pages.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{_pages.__name__}.{info.name}")
        page = getattr(module, "PAGE", None)
        if isinstance(page, Page):
            pages.append(page)
    pages.sort(key=lambda p: (p.order, p.name))
    for attr in ("name", "path"):
        seen: set[str] = set()
        for page in pages:
            value = getattr(page, attr)
            if value in seen:
                raise ConfigurationError(f"two dashboard pages have the {attr} {value!r}")
            seen.add(value)
    return pages


class Dashboard:
    """The state one dashboard app holds: its App, options, pages, templates and stream slots."""

    def __init__(self, app: App, options: WebOptions) -> None:
        self.app = app
        self.admin = Admin(app)
        self.options = options
        self.pages = discover_pages()
        self.env = make_environment()
        self.streams = StreamCounter(options.live_connections)
        self.progress: dict[str, int] = {}

    # --- helpers --------------------------------------------------------------------------------

    def page_request(self, request: Request, form: dict[str, str] | None = None) -> PageRequest:
        root = request.scope.get("root_path", "")
        return PageRequest(
            request=request,
            app=self.app,
            admin=self.admin,
            options=self.options,
            root=root,
            form=form or {},
            progress=self.progress,
        )

    def render(self, req: PageRequest, template: str, context: dict[str, Any], *, status: int = 200) -> Response:
        token = req.request.cookies.get(CSRF_COOKIE) or new_csrf_token()
        flash = req.request.query_params.get("flash")
        base = {
            "root": req.root,
            "nav": [p for p in self.pages if p.nav],
            "current": req.request.url.path[len(req.root) :] or "/",
            "csrf_token": token,
            "csrf_field": CSRF_FIELD,
            "can_write": req.can_write,
            "logged_in": self._logged_in(req.request),
            "needs_login": req.can_write and self.options.token is not None and self.options.authorize is None,
            "site_title": self.options.title,
            "flash": flash,
            "req": req,
            "page": None,
        }
        html = self.env.get_template(template).render({**base, **context})
        response = HTMLResponse(html, status_code=status)
        if req.request.cookies.get(CSRF_COOKIE) != token:
            response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", path=req.root or "/")
        return response

    def _logged_in(self, request: Request) -> bool:
        token = self.options.token
        return token is not None and request.cookies.get(TOKEN_COOKIE) == token

    def error(self, req: PageRequest, status: int, message: str, *, api: bool) -> Response:
        message = redact_dsn(message)
        if api:
            return JSONResponse({"error": message, "status": status}, status_code=status)
        return self.render(req, "error.html", {"status": status, "message": message, "title": "Error"}, status=status)

    async def guarded(self, req: PageRequest, api: bool, call: Callable[[], Awaitable[Response]]) -> Response:
        """Run *call*, turning a :class:`WebError` or a user error into a 4xx, anything else into a 500."""
        try:
            return await call()
        except WebError as exc:
            return self.error(req, exc.status, exc.message, api=api)
        except JobNotFound as exc:
            return self.error(req, 404, str(exc), api=api)
        except JobStateError as exc:
            return self.error(req, 409, str(exc), api=api)
        except (ConfigurationError, TypeError, ValueError) as exc:
            return self.error(req, 400, str(exc), api=api)
        except NurseryWorkerError as exc:
            logger.warning("dashboard: %s", redact_dsn(f"{type(exc).__name__}: {exc}"))
            return self.error(req, 503, f"the database could not answer: {exc}", api=api)
        except Exception:
            logger.exception("dashboard: error on %s", req.request.url.path)
            return self.error(req, 500, "internal error (logged on the server)", api=api)

    # --- endpoints --------------------------------------------------------------------------------

    def page_endpoint(self, page: Page, *, api: bool) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            req = self.page_request(request)

            async def answer() -> Response:
                view: View = await page.handler(req)
                if api:
                    data = view.data if view.data is not None else view.context
                    return JSONResponse(jsonable(data))
                context = {**view.context, "title": view.title or page.title, "page": page}
                return self.render(req, view.template, context)

            return await self.guarded(req, api, answer)

        return endpoint

    def action_endpoint(self, page: Page, action: Action, *, api: bool) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            req = self.page_request(request)

            async def answer() -> Response:
                form = await _read_form(request)
                req.form = form
                await check_write(request, form, self.options, action.name)
                done: Done = await action.handler(req)
                await write_audit(req, action.name, done)
                if api:
                    return JSONResponse(
                        {"ok": True, "message": done.message, "count": done.count, **jsonable(done.data)}
                    )
                if request.headers.get("hx-request") == "true":
                    # An htmx post (the bulk confirmation) swaps this in place of a redirect.
                    return HTMLResponse(f'<p class="flash" role="status">{html.escape(done.message)}</p>')
                target = done.redirect or _back(request, req.root)
                sep = "&" if "?" in target else "?"
                return RedirectResponse(target + sep + urlencode({"flash": done.message}), status_code=303)

            return await self.guarded(req, api, answer)

        return endpoint

    async def login(self, request: Request) -> Response:
        req = self.page_request(request)

        async def answer() -> Response:
            if request.method == "GET":
                return self.render(req, "login.html", {"title": "Log in", "page": None})
            form = await _read_form(request)
            req.form = form
            token = self.options.token
            if self.options.read_only or token is None:
                raise WebError(403, "logging in is for write actions with a token, which are not switched on")
            if not same_origin(request):
                raise WebError(403, "log in refused: the request comes from another origin")
            cookie = request.cookies.get(CSRF_COOKIE, "")
            if not cookie or not hmac.compare_digest(cookie.encode(), form.get(CSRF_FIELD, "").encode()):
                raise WebError(403, "log in refused: missing or wrong CSRF token (reload the page and try again)")
            if not hmac.compare_digest(form.get("token", "").encode(), token.encode()):
                raise WebError(403, "wrong token")
            response = RedirectResponse(req.url("/", flash="logged in: write actions are enabled"), status_code=303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path=req.root or "/")
            return response

        return await self.guarded(req, False, answer)

    async def events(self, request: Request) -> Response:
        if not self.streams.try_acquire():
            return Response("too many live streams; the page polls instead\n", status_code=503)
        req = self.page_request(request)
        return StreamingResponse(
            change_events(req, self.streams),
            media_type="text/event-stream",
            headers={"x-accel-buffering": "no"},
        )

    async def not_found(self, request: Request, exc: Exception) -> Response:
        req = self.page_request(request)
        api = request.url.path[len(req.root) :].startswith("/api/")
        status = getattr(exc, "status_code", 404)
        message = "no such page" if status == 404 else "method not allowed" if status == 405 else "bad request"
        return self.error(req, status, f"{message}: {request.url.path}", api=api)

    # --- routes ---------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = []
        for page in self.pages:
            routes.append(Route(page.path, self.page_endpoint(page, api=False), methods=["GET"]))
            api_path = "/api" + (page.path if page.path != "/" else "/overview")
            routes.append(Route(api_path, self.page_endpoint(page, api=True), methods=["GET"]))
            for action in page.actions:
                base = page.path.rstrip("/")
                routes.append(
                    Route(base + action.path, self.action_endpoint(page, action, api=False), methods=["POST"])
                )
                routes.append(
                    Route("/api" + base + action.path, self.action_endpoint(page, action, api=True), methods=["POST"])
                )
        routes.append(Route("/login", self.login, methods=["GET", "POST"]))
        routes.append(Route("/events", self.events, methods=["GET"]))
        routes.append(Mount("/static", app=StaticFiles(directory=_STATIC), name="static"))
        return routes


def _back(request: Request, root: str) -> str:
    """The referring page when it is ours, else the dashboard's root."""
    referer = request.headers.get("referer")
    if referer:
        parts = urlsplit(referer)
        if parts.netloc == request.headers.get("host") and parts.path.startswith(root or "/"):
            query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("flash="))
            return parts.path + ("?" + query if query else "")
    return (root or "") + "/"


async def _read_form(request: Request) -> dict[str, str]:
    """The POST's form fields (or a JSON object's string values); a 400 if it is neither."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise WebError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise WebError(400, "the request body must be a JSON object")
        return {str(k): "" if v is None else str(v) for k, v in body.items()}
    if kind in ("", "application/x-www-form-urlencoded", "multipart/form-data"):
        if kind == "":
            return {}
        form = await request.form()
        return {k: v for k, v in form.items() if isinstance(v, str)}
    raise WebError(415, f"unsupported content type {kind!r}: post a form or a JSON object")


def create_web_app(
    app: App,
    *,
    read_only: bool = True,
    token: str | None = None,
    authorize: Authorizer | None = None,
    redact: Redactor | None = None,
    statement_timeout: float = 2.0,
    row_cap: int = 500,
    title: str = "nursery-worker",
    live_connections: int = 32,
) -> Starlette:
    """The dashboard of *app* as an ASGI app, to serve alone or mount under a prefix.

    The app's engine opens on the first request (no lifespan is needed); when the server runs
    the ASGI lifespan, the engine is closed at shutdown.

    Args:
        app: the nursery-worker App whose queue to show.
        read_only: refuse every write action (403). Writes need ``read_only=False`` and a
            credential: *token* or *authorize*.
        token: the write token: sent as ``Authorization: Bearer <token>`` by scripts, or entered
            once on the ``/login`` page by people (kept in an HttpOnly, SameSite=Strict cookie).
        authorize: ``authorize(request, action) -> bool`` (or an awaitable of it), deciding each
            write action (names such as ``"job.retry"``, ``"queue.pause"``); when given, it
            replaces the token check.
        redact: ``redact(task, value) -> value`` applied to every job's args and result before
            display (HTML and JSON).
        statement_timeout: seconds any one page's reads may take before a 503 page.
        row_cap: the most rows a list page or API call returns.
        title: the name shown in the page header.
        live_connections: the most live-update streams at once; pages beyond it poll.

    Returns:
        A Starlette application.

    Raises:
        ConfigurationError: an option is invalid (e.g. writes switched on without a credential).

    Example:
        >>> web = create_web_app(app)  # read-only
        >>> starlette_app.mount("/jobs-ui", web)
    """
    if not read_only and token is None and authorize is None:
        raise ConfigurationError(
            "create_web_app(read_only=False): write actions need a credential; pass token=... or authorize=..."
        )
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise ConfigurationError("create_web_app(token=...): the token must be a string of at least 8 characters")
    if isinstance(statement_timeout, bool) or not isinstance(statement_timeout, (int, float)) or statement_timeout <= 0:
        raise ConfigurationError(f"create_web_app(statement_timeout={statement_timeout!r}): must be seconds > 0")
    if isinstance(row_cap, bool) or not isinstance(row_cap, int) or not 1 <= row_cap <= 10_000:
        raise ConfigurationError(f"create_web_app(row_cap={row_cap!r}): must be an int from 1 to 10000")
    options = WebOptions(
        read_only=read_only,
        token=token,
        authorize=authorize,
        redact=redact,
        statement_timeout=float(statement_timeout),
        row_cap=row_cap,
        title=title,
        live_connections=live_connections,
    )
    dashboard = Dashboard(app, options)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await app.aclose()

    web = Starlette(
        routes=dashboard.routes(),
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={404: dashboard.not_found, 405: dashboard.not_found},
        lifespan=lifespan,
    )
    web.state.dashboard = dashboard
    return web
