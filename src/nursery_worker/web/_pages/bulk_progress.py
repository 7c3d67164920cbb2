"""The progress of a running bulk action: how many jobs it has examined so far, polled by the
bulk confirmation page while its post runs (a fragment, not a page of the nav)."""

from __future__ import annotations

from .._page import Page, View, WebError
from .._request import PageRequest


async def bulk_progress(req: PageRequest) -> View:
    """Jobs examined so far by the bulk action of ``ticket=``; a 404 for a ticket never started."""
    ticket = req.param("ticket")
    if ticket is None or ticket not in req.progress:
        raise WebError(404, f"no bulk action with ticket={ticket!r} has started")
    examined = req.progress[ticket]
    total = req.int_param("of", low=0)
    return View(
        template="bulk_progress.html",
        context={"examined": examined, "total": total},
        data={"ticket": ticket, "examined": examined},
    )


PAGE = Page(
    name="bulk_progress",
    path="/jobs/bulk/progress",
    title="Bulk progress",
    order=22,
    handler=bulk_progress,
    nav=False,
    live=False,
)
