"""``nursery-worker status``: the workers table, as a table for people or JSON for programs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ._models import WorkerRow
from ._supervisor import format_duration

_COLUMNS = (
    "SUPERVISOR",
    "CHILD",
    "PID",
    "HOST",
    "STATE",
    "UPTIME",
    "RESTARTS",
    "PROCESSED",
    "FAILED",
    "RUNNING",
    "HEARTBEAT",
    "QUEUES",
)


def as_dict(row: WorkerRow) -> dict[str, Any]:
    """One worker as a JSON-ready dict; ages are seconds by the database's clock."""
    return {
        "id": row.id,
        "supervisor_id": row.supervisor_id,
        "child_index": row.child_index,
        "pid": row.pid,
        "hostname": row.hostname,
        "state": row.state,
        "queues": list(row.queues),
        "concurrency": row.concurrency,
        "started_at": row.started_at.isoformat(),
        "uptime": round((row.now - row.started_at).total_seconds(), 3),
        "restarts": row.restarts,
        "processed": row.processed,
        "failed": row.failed,
        "running": row.running,
        "heartbeat_at": row.heartbeat_at.isoformat(),
        "heartbeat_age": round((row.now - row.heartbeat_at).total_seconds(), 3),
    }


def render_json(rows: Sequence[WorkerRow]) -> str:
    """The workers as a JSON array of :func:`as_dict` objects."""
    return json.dumps([as_dict(r) for r in rows], indent=2)


def render_table(rows: Sequence[WorkerRow], *, schema: str) -> str:
    """The workers as an aligned text table, or a sentence when there are none."""
    if not rows:
        return f"no workers are registered in schema {schema!r}"
    cells = [_COLUMNS] + [
        (
            r.supervisor_id or "-",
            "-" if r.child_index is None else str(r.child_index),
            str(r.pid),
            r.hostname,
            r.state,
            format_duration((r.now - r.started_at).total_seconds()),
            str(r.restarts),
            str(r.processed),
            str(r.failed),
            f"{r.running}/{r.concurrency}",
            f"{max(0.0, (r.now - r.heartbeat_at).total_seconds()):.1f}s ago",
            ",".join(r.queues),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)
