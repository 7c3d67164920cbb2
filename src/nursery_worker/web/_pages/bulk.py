"""The bulk action preview: how many jobs a bulk cancel, retry or delete over the job list's filter
would act on, and the form that confirms it (which posts to the jobs page's bulk action)."""

from __future__ import annotations

import secrets

from ..._jobfilter import BulkAction
from .._page import Page, View, WebError
from .._request import PageRequest
from ._common import job_filter, read_filter
from .jobs import BULK


def _action(text: str | None) -> BulkAction:
    for action in BULK:
        if action == text:
            return action
    raise WebError(400, f"action={text!r} is not a bulk action; use one of {', '.join(BULK)}")


async def bulk_preview(req: PageRequest) -> View:
    """How many jobs a bulk action over the URL's filter would act on, and the form to confirm it."""
    action = _action(req.param("action"))
    shown, _ = read_filter(req)
    narrowed = job_filter(shown).for_action(action)
    count = await req.read(lambda: req.admin.count_jobs(narrowed))
    return View(
        template="bulk.html",
        context={
            "action": action,
            "filter": shown,
            "query": shown.query(),
            "count": count,
            "what": narrowed.describe(),
            "ticket": secrets.token_urlsafe(12),
        },
        data={"action": action, "filter": shown.query(), "count": count, "describe": narrowed.describe()},
        title=f"Bulk {action}",
    )


PAGE = Page(name="bulk", path="/jobs/bulk", title="Bulk action", order=21, handler=bulk_preview, nav=False, live=False)
