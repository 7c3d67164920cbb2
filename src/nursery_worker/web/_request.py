"""What a page or action handler gets: the request, the admin operations, the options, and helpers
that turn query parameters into checked values (a bad one is a :class:`WebError`, a 400 page)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import attrs
from starlette.requests import Request

from .._admin import Admin
from .._models import Job
from ._page import WebError

if TYPE_CHECKING:
    from .._app import App

T = TypeVar("T")

#: ``redact(task, value)``: the value to show for a job's args or result (return a copy).
Redactor = Callable[[str, Any], Any]
#: ``authorize(request, action)``: whether this request may run this action (may be async).
Authorizer = Callable[[Request, str], "bool | Awaitable[bool]"]


@attrs.frozen(kw_only=True)
class WebOptions:
    """The dashboard's options, as given to ``create_web_app``."""

    read_only: bool = True
    token: str | None = attrs.field(default=None, repr=False)
    authorize: Authorizer | None = None
    redact: Redactor | None = None
    statement_timeout: float = 2.0
    row_cap: int = 500
    title: str = "nursery-worker"
    live_connections: int = 32


@attrs.define
class PageRequest:
    """One request as a handler sees it.

    Attributes:
        request: the Starlette request.
        app: the nursery-worker App the dashboard shows.
        admin: its admin operations (every read and write goes through them).
        options: the dashboard's options.
        can_write: whether write actions are on (templates show their buttons only then).
        root: the dashboard's URL prefix (``""`` when served at the root), for links.
    """

    request: Request
    app: App
    admin: Admin
    options: WebOptions
    root: str
    form: Mapping[str, str] = attrs.field(factory=dict)
    #: The progress of running bulk actions, by ticket: jobs examined so far (shared by requests).
    progress: dict[str, int] = attrs.field(factory=dict)

    @property
    def can_write(self) -> bool:
        """Whether write actions are switched on."""
        return not self.options.read_only

    def url(self, path: str, **query: object) -> str:
        """*path* under the dashboard's root, with the query parameters that are not None or ""."""
        from urllib.parse import urlencode

        pairs = [(k, str(v)) for k, v in query.items() if v is not None and v != ""]
        return self.root + path + ("?" + urlencode(pairs) if pairs else "")

    def path_int(self, name: str) -> int:
        """A path parameter that Starlette already converted to an int."""
        value = self.request.path_params[name]
        if not isinstance(value, int) or value < 1:
            raise WebError(404, f"{name} {value!r} is not a positive integer")
        return value

    def param(self, name: str) -> str | None:
        """The query parameter (or, for a POST, the form field) *name*, stripped; None when empty."""
        value = self.form.get(name) if name in self.form else self.request.query_params.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def int_param(self, name: str, *, low: int | None = None, high: int | None = None) -> int | None:
        """The parameter *name* as an int within [*low*, *high*]; a 400 if it is not one."""
        text = self.param(name)
        if text is None:
            return None
        try:
            value = int(text)
        except ValueError:
            raise WebError(400, f"{name}={text!r} is not an integer") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise WebError(400, f"{name}={value} is out of range [{low}, {high}]")
        return value

    def time_param(self, name: str) -> dt.datetime | None:
        """The parameter *name* as an ISO 8601 time (UTC when it names no zone); a 400 if it is not one."""
        text = self.param(name)
        if text is None:
            return None
        try:
            value = dt.datetime.fromisoformat(text)
        except ValueError:
            raise WebError(400, f"{name}={text!r} is not an ISO 8601 time such as 2026-01-31T12:00") from None
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)

    def show(self, job: Job) -> Job:
        """*job* with its args and result passed through the redaction hook, ready to display."""
        redact = self.options.redact
        if redact is None:
            return job
        args = redact(job.task, dict(job.args))
        result = redact(job.task, job.result) if job.result is not None else None
        return attrs.evolve(job, args=args if isinstance(args, Mapping) else {"redacted": str(args)}, result=result)

    async def read(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one read under the dashboard's statement timeout: a 503 page if it takes longer."""
        limit = self.options.statement_timeout
        with anyio.move_on_after(limit if limit > 0 else math.inf) as scope:
            return await call()
        assert scope.cancelled_caught
        raise WebError(503, f"the database did not answer within the dashboard's statement timeout ({limit:g}s)")
