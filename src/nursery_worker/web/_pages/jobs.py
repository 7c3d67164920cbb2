"""Page 2, the jobs: state tabs, filters in the URL, keyset (cursor) pagination, hideable args;
and the bulk actions over a filter, run in chunks (their count preview is ``bulk.py``)."""

from __future__ import annotations

import attrs

from ..._jobfilter import BulkAction
from .._page import Action, Done, Page, View, WebError
from .._request import PageRequest
from ._common import STATES, job_filter, read_filter

#: Rows per page unless ``limit=`` says otherwise (the row cap bounds it).
PAGE_SIZE = 50
#: Jobs changed per transaction by a bulk action.
CHUNK = 500
#: The most bulk actions whose progress is remembered.
MAX_TICKETS = 100
BULK: tuple[BulkAction, ...] = ("cancel", "retry", "delete")


async def jobs(req: PageRequest) -> View:
    """One page of jobs matching the URL's filter, newest first, from the cursor on."""
    shown, search = read_filter(req)
    limit = req.int_param("limit", low=1, high=req.options.row_cap) or min(PAGE_SIZE, req.options.row_cap)
    cursor = req.int_param("cursor", low=1, high=2**63 - 1)
    search = attrs.evolve(search, before_id=cursor)
    found = await req.read(
        lambda: req.admin.search_jobs(search, limit=limit + 1, time_limit=req.options.statement_timeout)
    )
    more = len(found) > limit
    page = [req.show(j) for j in found[:limit]]
    next_cursor = page[-1].id if more and page else None
    return View(
        template="jobs.html",
        context={
            "jobs": page,
            "filter": shown,
            "query": shown.query(),
            "states": STATES,
            "next_cursor": next_cursor,
            "cursor": cursor,
            "limit": limit,
        },
        data={
            "jobs": page,
            "filter": shown.query(),
            "next_cursor": next_cursor,
        },
    )


def _bulk(action: BulkAction) -> Action:
    async def run(req: PageRequest) -> Done:
        shown, _ = read_filter(req)
        chosen = job_filter(shown)
        chunks: list[int] = []
        ticket = req.param("ticket")
        if ticket is not None and (len(ticket) > 64 or not ticket.replace("-", "").replace("_", "").isalnum()):
            raise WebError(400, f"ticket={ticket!r} is not a progress ticket")

        def advance(examined: int) -> None:
            chunks.append(examined)
            if ticket is not None:
                req.progress[ticket] = sum(chunks)

        if ticket is not None:
            while len(req.progress) >= MAX_TICKETS:  # the oldest bulk actions' progress is forgotten
                del req.progress[next(iter(req.progress))]
            req.progress[ticket] = 0
        result = await req.admin.bulk(action, chosen, chunk_size=CHUNK, progress=advance)
        verb = {"cancel": "cancelled", "retry": "retried", "delete": "deleted"}[action]
        extra = f", {result.requested} executing asked to stop" if result.requested else ""
        message = (
            f"{verb} {result.changed} of {result.matched} jobs ({chosen.for_action(action).describe()}){extra}, "
            f"in {len(chunks)} chunks of up to {CHUNK}"
        )
        return Done(
            message=message,
            redirect=req.url("/jobs", **shown.query()),
            count=result.changed,
            target=chosen.describe(),
            data={
                "matched": result.matched,
                "changed": result.changed,
                "requested": result.requested,
                "chunks": chunks,
            },
        )

    return Action(name=f"jobs.bulk_{action}", path=f"/bulk/{action}", handler=run)


PAGE = Page(
    name="jobs",
    path="/jobs",
    title="Jobs",
    order=20,
    handler=jobs,
    actions=tuple(_bulk(a) for a in BULK),
)
