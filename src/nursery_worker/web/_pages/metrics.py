"""Page 9, metrics history: per-task throughput, failure rate and duration percentiles over hours
to weeks, from the rollups the workers write (no page scans the jobs table for history)."""

from __future__ import annotations

from typing import Any

from ..._insights import METRIC_RANGES, TaskMetrics
from .._page import Page, View, WebError
from .._request import PageRequest
from ._charts import line_chart, seconds_label


def _charts(t: TaskMetrics) -> dict[str, Any]:
    times = [p.at for p in t.points]
    return {
        "throughput": line_chart(
            times,
            [("completed/min", [p.throughput for p in t.points])],
            label=lambda v: f"{v:.3g}/min",
        ),
        "failure_rate": line_chart(
            times,
            [("failure rate", [None if p.failure_rate is None else 100 * p.failure_rate for p in t.points])],
            label=lambda v: f"{v:.0f}%",
        ),
        "duration": line_chart(
            times,
            [
                ("p50", [p.p50 for p in t.points]),
                ("p95", [p.p95 for p in t.points]),
                ("p99", [p.p99 for p in t.points]),
            ],
            label=seconds_label,
        ),
    }


async def metrics(req: PageRequest) -> View:
    """The history of ``?period=`` (``1h``, ``6h``, ``24h`` (default), ``7d``, ``30d``), for every
    task or only ``?task=``, with three inline SVG charts per task."""
    period = req.param("period") or "24h"
    if period not in METRIC_RANGES:
        raise WebError(400, f"period={period!r} is not one of {', '.join(METRIC_RANGES)}")
    task = req.param("task")
    history = await req.read(lambda: req.admin.metrics_history(period=period, task=task))
    context = {
        "history": history,
        "periods": list(METRIC_RANGES),
        "period": period,
        "task": task,
        "charts": {t.task: _charts(t) for t in history.tasks},
    }
    return View(template="metrics.html", context=context, data=history)


PAGE = Page(name="metrics", path="/metrics", title="Metrics", order=90, handler=metrics)
