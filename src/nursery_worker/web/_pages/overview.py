"""Page 1, the overview: what every queue holds, how fast it moves, and what needs attention."""

from __future__ import annotations

from .._page import Page, View
from .._request import PageRequest


async def overview(req: PageRequest) -> View:
    """Counts by state per queue (each a link to the filtered job list)."""
    queues = await req.read(req.admin.list_queues)
    return View(template="overview.html", context={"queues": queues})


PAGE = Page(name="overview", path="/", title="Overview", order=10, handler=overview)
