"""The page-module convention: what a page module exposes, what its handler gets and returns.

A page module in ``web/_pages/`` defines ``PAGE = Page(...)``. The framework (``_server.py``) finds
every such module at start-up and serves, for each page:

- ``GET {path}``: ``handler(req)`` returns a :class:`View`; its template is rendered with its
  context (and the base template's nav, flash and CSRF token);
- ``GET /api{path}``: the same handler, its view's ``data`` (or, when None, its context) as JSON;
- for each :class:`Action` of the page, ``POST {path}{action.path}`` (a form post from the page,
  answered with a redirect back) and ``POST /api{path}{action.path}`` (answered with JSON), both
  behind the write checks (read-only mode, credentials, same origin, CSRF) and written to the audit.

Handlers raise :class:`WebError` for bad input (a 4xx page naming the bad value); any other
exception is a 500 page without a traceback (logged).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from ._request import PageRequest

#: A page handler: reads through ``req.admin`` and returns what to render.
Handler = Callable[["PageRequest"], Awaitable["View"]]
#: An action handler: changes something through ``req.admin`` and says what happened.
ActionHandler = Callable[["PageRequest"], Awaitable["Done"]]


class WebError(Exception):
    """Raised by a handler for a request it cannot answer: a 4xx page (or JSON) with *message*.

    Args:
        status: the HTTP status (400 bad input, 403 refused, 404 unknown id, 409 wrong state).
        message: one sentence naming the bad value and the fix; shown to the user as is.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@attrs.frozen(kw_only=True)
class View:
    """What a page handler returns.

    Attributes:
        template: the Jinja2 template under ``web/templates/`` that renders the page.
        context: the template's variables (records are fine: the JSON twin converts attrs
            records, datetimes and enums).
        data: what ``/api{path}`` returns; None means the context itself.
        title: the page's ``<title>``; None means the page's nav title.
    """

    template: str
    context: Mapping[str, Any] = attrs.field(factory=dict)
    data: Any = None
    title: str | None = None


@attrs.frozen(kw_only=True)
class Done:
    """What an action handler returns.

    Attributes:
        message: one sentence for the flash banner (and the JSON answer's ``message``).
        redirect: where the browser goes after a form post (default: back to the referring page).
        count: how many jobs (or rows) the action changed, for the audit.
        target: what it acted on (a job id, a queue name, a filter), for the audit.
        data: extra JSON for the API answer.
    """

    message: str
    redirect: str | None = None
    count: int | None = None
    target: str = ""
    data: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Action:
    """A POST endpoint of a page: ``{page.path}{path}``, e.g. ``/jobs/{job_id:int}`` + ``/retry``.

    Attributes:
        name: the action's name, passed to ``authorize(request, name)`` and written to the audit
            (e.g. ``"job.retry"``).
        path: appended to the page's path; may hold Starlette path parameters.
        handler: runs the action; raises :class:`WebError` on bad input.
    """

    name: str
    path: str
    handler: ActionHandler


@attrs.frozen(kw_only=True)
class Page:
    """One page of the dashboard, defined as ``PAGE`` in a module of ``web/_pages/``.

    Attributes:
        name: a short unique id (also the template's default stem).
        path: the URL path under the dashboard's root, e.g. ``"/queues"`` or ``"/jobs/{job_id:int}"``.
        title: the nav's label (and the default ``<title>``).
        order: the nav's order (smaller first); pages 1-4 use 10-40, 5-9 use 50-90.
        handler: builds the page's view from the request.
        nav: whether the page appears in the nav (detail pages do not).
        actions: the page's POST endpoints.
        live: whether the page refreshes on the server's change events (and by polling).
    """

    name: str
    path: str
    title: str
    order: int
    handler: Handler
    nav: bool = True
    actions: tuple[Action, ...] = ()
    live: bool = True
