"""The embedded engine's flow control, written in Python: what PostgreSQL does in PL/pgSQL
(migration 6: the ``nw_claim_limited`` claim, the ``nw_limited_finished`` and
``nw_release_dependents`` triggers) runs here as statements of the same ``BEGIN IMMEDIATE``
transaction as the write that causes it. The write lock serialises it all, so the counts a claim
reads stay true until it commits and two workers never overshoot a limit.

Every function takes the transaction (:class:`~._connection.Tx`) it runs in; the driver calls them
from every path to a final state: a worker's outcome, a rescue, a cancel, and the cascade itself.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from ..._models import Job, LimitedClaim, TaskLimits
from ._connection import Tx
from ._queries import job_from_row
from ._time import iso


def settle(tx: Tx, finished: Iterable[tuple[int, str, str]]) -> None:
    """Release or cancel the pending dependents of jobs that reached a final state in *tx*
    ((id, task, state) of jobs with dependents), and theirs in turn (PostgreSQL's trigger
    ``nw_release_dependents``). Called on every path to a final state."""
    work = deque(finished)
    at = iso(tx.now)
    while work:
        job_id, task, state = work.popleft()
        if state == "completed":
            released = tx.execute("release", {"id": job_id, "now": tx.now}).fetchall()
            tx.notify_available(str(r[0]) for r in released if r[1] == "available")
            continue
        message = f"dependency {job_id} ({task}) was {state}, so this job will not run"
        doomed = tx.execute("doom", {"id": job_id, "now": tx.now, "at": at, "message": message}).fetchall()
        tx.notify_finished([int(r[0]) for r in doomed])
        work.extend((int(r[0]), str(r[1]), "cancelled") for r in doomed if r[2])


def limited_finished(tx: Tx, task: str, state: str, last_error: str | None) -> None:
    """A limited job left executing by a worker's outcome: a success closes its task's
    breaker; a failure (retryable or discarded; not a rescue, a snooze, a release or a cancel)
    counts towards opening it, and a failed probe opens it again at once."""
    if state == "completed":
        tx.execute("breaker_success", {"task": task, "now": tx.now})
    elif state in ("retryable", "discarded") and (last_error or "") not in ("WorkerLost", "Cancelled"):
        tx.execute("breaker_failure", {"task": task, "now": tx.now})


def _rate_room(tx: Tx, scope: str, count: int, period: float) -> tuple[int, float | None]:
    """How many jobs of a rate-limited scope may start now, and in how many seconds the next
    may when none can (PostgreSQL's ``nw_rate_room``: GCRA, bursts above 50 per second)."""
    slot = period / count
    burst = max(1, math.floor(count * 0.02 / period))
    row = tx.execute("rate_tat", {"scope": scope}).fetchone()
    tat = tx.now if row is None else int(row[0])
    ahead = max(0.0, (tat - tx.now) / 1_000_000)
    room = max(0, burst - math.ceil(ahead / slot - 1e-9))
    return room, None if room > 0 else max(0.001, ahead - (burst - 1) * slot)


def _rate_take(tx: Tx, scope: str, count: int, period: float, n: int) -> None:
    """Take *n* slots of a scope that :meth:`_rate_room` allowed (PostgreSQL's ``nw_rate_take``)."""
    step = round(n * period / count * 1_000_000)
    tx.execute("rate_take", {"scope": scope, "now": tx.now, "step": step})


def claim_limited(
    tx: Tx, worker_id: str, queues: Sequence[str], limit: int, config: Mapping[str, TaskLimits], adopt: bool
) -> LimitedClaim:
    """The limited claim, group by group, best group first; the write lock of the transaction
    keeps the counts it reads true until it commits, so two workers never overshoot."""
    now = tx.now
    queues_json = json.dumps(list(queues))
    tasks_json = json.dumps(list(config))
    if adopt and config:
        tx.execute("adopt", {"queues": queues_json, "tasks": tasks_json})
    groups = tx.execute("limited_groups", {"queues": queues_json}).fetchall()
    claimed: list[Job] = []
    wake: float | None = None
    held: set[str] = set()

    def sooner(seconds: float) -> None:
        nonlocal wake
        wake = seconds if wake is None else min(wake, seconds)

    for queue, task, key in groups:
        cap = limit - len(claimed)
        probe = False
        cfg = None if task is None else config.get(task)
        # A limited task this worker does not know the limits of: leave its jobs to one that does.
        if key is not None and cfg is None:
            continue
        limits = tx.execute("queue_limits", {"name": queue}).fetchone()
        qc, qr, qp = (None, None, 0.0) if limits is None else (limits[0], limits[1], float(limits[2] or 0))
        if qc is not None:
            running = int(tx.execute("count_queue_executing", {"queue": queue}).fetchone()[0])
            cap = min(cap, qc - running)
        if qr is not None:
            room, wait = _rate_room(tx, f"q:{queue}", int(qr), qp)
            cap = min(cap, room)
            if wait is not None:
                sooner(wait)
        if cfg is not None and cfg.concurrency is not None:
            params = {"task": task, "key": key or ""}
            running = int(tx.execute("count_task_executing", params).fetchone()[0])
            cap = min(cap, cfg.concurrency - running)
        scope = f"t:{task}:{key or ''}"
        rate = None if cfg is None else cfg.rate
        if rate is not None:
            room, wait = _rate_room(tx, scope, rate.count, rate.period)
            cap = min(cap, room)
            if wait is not None:
                sooner(wait)
        if cfg is not None and cfg.breaker and cap > 0:
            breaker = tx.execute("breaker", {"task": task}).fetchone()
            if breaker is not None and breaker[0] == "open":
                reopens = breaker[1] + round(breaker[2] * 1_000_000)
                if reopens > now:
                    cap = 0
                    sooner((reopens - now) / 1_000_000)
                    held.add(task)
                else:
                    probe, cap = True, 1
            elif breaker is not None and breaker[0] == "half_open":
                if tx.execute("probe_running", {"id": breaker[3]}).fetchone() is not None:
                    cap = 0
                else:
                    probe, cap = True, 1
        if cap > 0:
            params = {"worker": worker_id, "now": now, "queue": queue, "cap": cap}
            if key is None:
                rows = tx.execute("claim_queue", {**params, "tasks": tasks_json}).fetchall()
            else:
                rows = tx.execute("claim_group", {**params, "task": task, "key": key}).fetchall()
            got = len(rows)
            if got:
                jobs = [job_from_row(r) for r in rows]
                claimed.extend(jobs)
                # The slots taken; and come back when the next one opens, in case more jobs wait.
                if qr is not None:
                    _rate_take(tx, f"q:{queue}", int(qr), qp, got)
                    sooner(qp / int(qr) * got)
                if rate is not None:
                    _rate_take(tx, scope, rate.count, rate.period, got)
                    sooner(rate.period / rate.count * got)
                if probe:
                    tx.execute("breaker_probe", {"task": task, "probe": jobs[-1].id, "now": now})
        if len(claimed) >= limit:
            break
    claimed.sort(key=lambda j: (-j.priority, j.scheduled_at, j.id))
    return LimitedClaim(
        jobs=tuple(claimed), wake=None if wake is None else max(wake, 0.001), breakers_open=tuple(sorted(held))
    )
