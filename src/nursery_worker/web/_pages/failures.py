"""Page 8, failures: failed and discarded attempts grouped by task and by exception type, over the
last hour, day or week, from the metric rollups; with the newest failed jobs."""

from __future__ import annotations

import attrs

from ..._insights import FAILURE_WINDOWS
from .._page import Page, View, WebError
from .._request import PageRequest


async def failures(req: PageRequest) -> View:
    """The failures of ``?window=`` (``1h``, ``24h`` (default) or ``7d``) by task and by type."""
    window = req.param("window") or "24h"
    if window not in FAILURE_WINDOWS:
        raise WebError(400, f"window={window!r} is not one of {', '.join(FAILURE_WINDOWS)}")
    report = await req.read(lambda: req.admin.failures(window=window, recent=min(50, req.options.row_cap)))
    report = attrs.evolve(report, recent=tuple(req.show(j) for j in report.recent))
    context = {"report": report, "windows": list(FAILURE_WINDOWS), "window": window}
    return View(template="failures.html", context=context, data=report)


PAGE = Page(name="failures", path="/failures", title="Failures", order=80, handler=failures)
