"""What both engines share, so that it is written once: the stored form of a spec and of an error,
the order of a dependency graph's insert, the observers of database calls, the migration runner,
and the words of the errors both raise.

Nothing here touches a database library; each engine passes its own statements in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from importlib import resources
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

import attrs

from .._errors import ConfigurationError, DatabaseError, SchemaNotReady
from .._models import DurableOverview, GraphNode, Job, JobError, JobProgress, JobSpec, JobStep, ProgressRow, Waiting
from .._state import MAX_DELAY, ErrorInfo, JobState

if TYPE_CHECKING:
    import sqlite3

    import psycopg

logger = logging.getLogger("nursery_worker.driver")

T = TypeVar("T")

#: Seconds a session of ours may sit idle inside a transaction before PostgreSQL ends it. Our
#: statements are single autocommit statements, so only a hung or buggy client gets there; left
#: open, such a session holds back vacuum on the jobs table for as long as it lives.
DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT = 60.0

#: A connection whose transaction an insert joins (``connection=``): a psycopg connection with
#: PostgreSQL, a ``sqlite3.Connection`` to the same file with the embedded engine. Each engine
#: refuses the other's with a message saying which one it needs.
UserConnection: TypeAlias = "psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | sqlite3.Connection"

#: A valid schema name, on either engine (a PostgreSQL schema, or the SQLite tables' prefix).
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


def check_schema_name(schema: object) -> str:
    """Return *schema* if it is a valid schema name on both engines.

    Raises:
        ConfigurationError: it is not (the message says what is allowed).
    """
    if not isinstance(schema, str) or not SCHEMA_NAME.match(schema):
        raise ConfigurationError(
            f"schema={schema!r} is not a valid schema name: use 1-41 lowercase letters, digits and "
            "underscores, starting with a letter or underscore (for example 'nursery_worker')"
        )
    return schema


# --- stored forms ------------------------------------------------------------------------------


def spec_columns(spec: JobSpec) -> dict[str, Any]:
    """The columns a job spec stores as given (its JSON fields encoded): the part of a one-job
    insert's parameters both engines share; each adds its own schedule and bookkeeping."""
    return {
        "task": spec.task,
        "queue": spec.queue,
        "args": spec.args_json,
        "priority": spec.priority,
        "max_attempts": spec.max_attempts,
        "retry_policy": None if spec.retry_policy is None else json.dumps(spec.retry_policy),
        "trace_context": None if spec.trace_context is None else json.dumps(spec.trace_context),
        "limit_key": spec.limit_key,
    }


def _storable(text: str) -> str:
    """*text* as both engines can store it in JSON: NUL and lone surrogates written out as escapes.

    PostgreSQL's jsonb refuses ``\\u0000`` and a lone surrogate, and SQLite cannot encode a lone
    surrogate to UTF-8; either would fail the whole batch of outcomes the error is written with.
    """
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def error_entry(error: ErrorInfo) -> str:
    """An attempt's error as the JSON object stored in a job's ``errors`` list."""
    return json.dumps(
        {"type": _storable(error.type), "message": _storable(error.message), "traceback": _storable(error.traceback)}
    )


def _parse_time(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def job_errors(entries: Iterable[Mapping[str, Any]] | None) -> tuple[JobError, ...]:
    """A job's stored ``errors`` list (decoded JSON) as records."""
    return tuple(
        JobError(
            attempt=int(e.get("attempt", 0)),
            at=_parse_time(e.get("at")),
            type=str(e.get("type", "")),
            message=str(e.get("message", "")),
            traceback=str(e.get("traceback", "")),
        )
        for e in (entries or ())
    )


# --- durable steps (see _durable.py) ----------------------------------------------------------

#: The columns of a step row, in the order :func:`step_from_row` reads them (both engines).
STEP_COLUMNS = "name, position, state, attempt, runs, result, error, duration, updated_at, wake_at, event"
#: A wait with no timeout is scheduled this far ahead (the longest wait a job's row holds).
FOREVER = MAX_DELAY


#: A time as an engine stores it: a datetime (PostgreSQL) or integer microseconds (SQLite).
TimeT = TypeVar("TimeT", dt.datetime, int)


@attrs.frozen(kw_only=True)
class WaitPlan(Generic[TimeT]):
    """What a durable wait does (``Driver.wait_step``), decided from what is stored.

    ``outcome``: ``done``, ``received``, ``timeout`` or ``suspended``; ``write``: the state to
    write on the wait's step (``completed``, ``timed_out`` or ``waiting``), None to write nothing;
    ``wake_at``: the wait's end (None: it has none).
    """

    outcome: str
    write: str | None = None
    wake_at: TimeT | None = None


def plan_wait(
    *,
    stored: str | None,
    stored_wake_at: TimeT | None,
    emitted: bool,
    event: str | None,
    until: TimeT | None,
    delay_end: TimeT | None,
    now: TimeT,
) -> WaitPlan[TimeT]:
    """Decide a durable wait, as both engines do (``_state.wait_guarded`` is the model).

    Args:
        stored: the state of the wait's step as stored, or None when it has no row.
        stored_wake_at: that step's end.
        emitted: whether the event (for an event wait) was emitted.
        event: the event's key, or None for a sleep.
        until: the end the caller gave, if any.
        delay_end: now + the delay the caller gave, if any.
        now: the database's time.

    Returns:
        The plan: a completed or timed-out step answers as stored; an emitted event is received;
        a wait whose end (a waiting step's, else *until*, else *delay_end*) has come is over; any
        other suspends the job until that end.
    """
    if stored == "completed":
        return WaitPlan(outcome="received" if event is not None else "done")
    if stored == "timed_out":
        return WaitPlan(outcome="timeout")
    if emitted:
        return WaitPlan(outcome="received", write="completed")
    wake_at = stored_wake_at if stored == "waiting" else until if until is not None else delay_end
    if wake_at is not None and wake_at <= now:
        if event is not None:
            return WaitPlan(outcome="timeout", write="timed_out", wake_at=wake_at)
        return WaitPlan(outcome="done", write="completed", wake_at=wake_at)
    return WaitPlan(outcome="suspended", write="waiting", wake_at=wake_at)


def job_progress(value: Mapping[str, Any] | None) -> JobProgress | None:
    """A job's stored ``progress`` (decoded JSON) as a record."""
    if not value:
        return None
    total = value.get("total")
    note = value.get("note")
    return JobProgress(
        done=float(value.get("done") or 0),
        total=None if total is None else float(total),
        note=None if note is None else str(note),
        updated_at=_parse_time(value.get("at")),
    )


def durable_overview_from(
    rows: Sequence[Sequence[Any]], counts: Sequence[Any], *, loads: Callable[[Any], Any]
) -> DurableOverview:
    """``Driver.durable_overview`` from its two reads: rows of (id, task, queue, progress) of
    executing jobs and the counts (reporting, sleeping, waiting for events); *loads* decodes the
    engine's JSON (PostgreSQL hands jsonb over decoded)."""
    progress = []
    for job_id, task, queue, value in rows:
        reported = job_progress(loads(value))
        if reported is not None:
            progress.append(ProgressRow(job_id=int(job_id), task=str(task), queue=str(queue), progress=reported))
    return DurableOverview(
        progress=tuple(progress),
        reporting=int(counts[0]),
        sleeping=int(counts[1]),
        waiting_for_events=int(counts[2]),
    )


def job_waiting(state: str, step: str | None, event: str | None, scheduled_at: dt.datetime | None) -> Waiting | None:
    """What a job suspended by a durable wait waits for, while it is scheduled; else None."""
    if step is None or state != "scheduled" or scheduled_at is None:
        return None
    return Waiting(kind="sleep" if event is None else "event", step=step, until=scheduled_at, event=event)


def step_from_row(
    row: Sequence[Any], *, time: Callable[[Any], dt.datetime | None], loads: Callable[[Any], Any]
) -> JobStep:
    """A step from a row of :data:`STEP_COLUMNS`; *time* decodes the engine's times and *loads*
    its JSON (PostgreSQL hands jsonb over decoded)."""
    error = loads(row[6])
    return JobStep(
        name=str(row[0]),
        position=int(row[1]),
        state=str(row[2]),
        attempt=int(row[3]),
        runs=int(row[4]),
        result=loads(row[5]),
        error=job_errors([error])[0] if error else None,
        duration=None if row[7] is None else float(row[7]),
        updated_at=time(row[8]),
        wake_at=time(row[9]),
        event=row[10],
    )


def one_line(message: str) -> str:
    """A database library's message (which may span lines, a hint on the second) as one line."""
    return " ".join(message.split())


# --- dependency graphs -------------------------------------------------------------------------


def order_graph(specs: Sequence[JobSpec]) -> list[int]:
    """Indexes of *specs* in an order where each spec comes after the specs it depends on.

    Raises:
        ConfigurationError: a spec depends on a spec that is not in *specs*, a spec that others
            depend on appears twice, or the dependencies form a cycle (the message names it).
    """
    index: dict[int, int] = {}
    for i, spec in enumerate(specs):
        if id(spec) in index:
            if any(any(dep is spec for dep in other.depends_on) for other in specs):
                raise ConfigurationError(
                    f"defer_many: the same job spec ({spec.task}) is listed twice and other jobs depend on it; "
                    "build one spec per job"
                )
            continue
        index[id(spec)] = i
    edges: dict[int, list[int]] = {}
    for i, spec in enumerate(specs):
        parents = []
        for dep in spec.depends_on:
            if isinstance(dep, JobSpec):
                if id(dep) not in index:
                    raise ConfigurationError(
                        f"defer_many: item {i} ({spec.task}) depends on a job spec ({dep.task}) that is not in this "
                        "call; defer both in one defer_many call, or defer the dependency first and pass its job"
                    )
                parents.append(index[id(dep)])
        edges[i] = parents
    # Kahn's algorithm, iterative (a chain of thousands of jobs must not hit the recursion limit),
    # keeping the order given among jobs that are ready together.
    children: dict[int, list[int]] = {i: [] for i in edges}
    waiting = {i: 0 for i in edges}
    for child, parents in edges.items():
        for parent in set(parents):
            children[parent].append(child)
            waiting[child] += 1
    ready = deque(i for i in sorted(edges) if waiting[i] == 0)
    order: list[int] = []
    while ready:
        node = ready.popleft()
        order.append(node)
        for child in children[node]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if len(order) < len(edges):
        # Walk parents from a job left over until one repeats: that loop is the cycle.
        node = next(i for i in edges if waiting[i] > 0)
        path: list[int] = []
        while node not in path:
            path.append(node)
            node = next(p for p in edges[node] if waiting[p] > 0)
        cycle = [*path[path.index(node) :], node]
        names = " <- ".join(f"{specs[k].task} (item {k})" for k in cycle)
        raise ConfigurationError(f"defer_many: the dependencies form a cycle ({names}); a workflow must be acyclic")
    return order


def dependency_ids(spec: JobSpec, inserted: Mapping[int, Job]) -> list[int]:
    """The ids *spec* depends on, with in-call specs replaced by the jobs inserted for them."""
    ids: list[int] = []
    for dep in spec.depends_on:
        job_id = inserted[id(dep)].id if isinstance(dep, JobSpec) else dep
        if job_id not in ids:
            ids.append(job_id)
    return ids


def insert_graph(
    specs: Sequence[JobSpec],
    *,
    insert: Callable[[Sequence[JobSpec]], list[Job]],
    insert_dependent: Callable[[JobSpec, list[int]], Job],
    transaction: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
) -> list[Job]:
    """Insert jobs with dependencies: the independent ones in one call of *insert*, then the others
    one by one (*insert_dependent*, given the ids they wait for), each after the jobs it depends
    on, all inside *transaction* (the engine's; SQLite's callers are in one already).

    Returns the jobs in the order of *specs*.
    """
    order = order_graph(specs)
    result: list[Job | None] = [None] * len(specs)
    by_spec: dict[int, Job] = {}
    with transaction():
        roots = [i for i in range(len(specs)) if not specs[i].depends_on]
        if roots:
            for i, job in zip(roots, insert([specs[i] for i in roots]), strict=True):
                result[i] = job
                by_spec.setdefault(id(specs[i]), job)
        for i in order:
            spec = specs[i]
            if not spec.depends_on:
                continue
            job = insert_dependent(spec, dependency_ids(spec, by_spec))
            result[i] = job
            by_spec.setdefault(id(spec), job)
    return [job for job in result if job is not None]


# --- observers -----------------------------------------------------------------------------------


class Observers:
    """The callbacks of ``Driver.observe``, called after each database call of the app (None on
    success, else the :class:`DatabaseError` or :class:`SchemaNotReady`)."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Exception | None], None]] = []

    def __bool__(self) -> bool:
        return bool(self._callbacks)

    def add(self, callback: Callable[[Exception | None], None]) -> Callable[[], None]:
        """Add *callback*; return a function that removes it."""
        self._callbacks.append(callback)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return remove

    def notify(self, error: Exception | None) -> None:
        for observer in list(self._callbacks):
            try:
                observer(error)
            except Exception:  # an observer (metrics) must never break a database call
                logger.exception("database observer %r failed", observer)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await *fn()* and tell the observers how it went (nothing to do when there are none)."""
        if not self._callbacks:
            return await fn()
        try:
            result = await fn()
        except (DatabaseError, SchemaNotReady) as exc:
            self.notify(exc)
            raise
        self.notify(None)
        return result


# --- migrations ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Migrations:
    """An engine's schema versions: ``(version, file)`` pairs, the files in ``migrations/`` of *package*.

    Each engine applies them its own way (one transaction under an advisory lock on PostgreSQL, one
    ``BEGIN IMMEDIATE`` on SQLite); which to apply, and refusing a schema newer than this code, is here.
    """

    package: str
    versions: tuple[tuple[int, str], ...]

    @property
    def count(self) -> int:
        """How many versions there are (the numbers may have gaps: one merged later)."""
        return len(self.versions)

    @property
    def latest(self) -> int:
        """The version this code reads and writes."""
        return self.versions[-1][0]

    def pending(self, applied: Iterable[int], *, where: str) -> Iterator[tuple[int, str, str]]:
        """``(version, file, script)`` of each version not in *applied*, in order.

        Raises:
            SchemaNotReady: *applied* holds a version newer than this code's (*where* names the schema).
        """
        done = set(applied)
        if done and max(done) > self.latest:
            raise too_new(where, max(done), self.latest)
        folder = resources.files(self.package).joinpath("migrations")
        return (
            (version, name, folder.joinpath(name).read_text(encoding="utf-8"))
            for version, name in self.versions
            if version not in done
        )


def too_new(where: str, version: int, latest: int) -> SchemaNotReady:
    """The error for a schema (*where*: ``schema 'x' of <database>``) newer than this code."""
    return SchemaNotReady(
        f"{where} is at version {version}, newer than this nursery-worker understands ({latest}): "
        "upgrade nursery-worker"
    )


def check_version(
    where: str, version: int | None, latest: int, *, applied: int | None = None, known: int | None = None
) -> None:
    """Raise ``SchemaNotReady`` unless the schema's *version* is exactly *latest*, with as many
    versions *applied* as this code *known*s (fewer: one below the newest is missing, merged later)."""
    if version is not None and version == latest and applied is not None and known is not None and applied < known:
        raise SchemaNotReady(
            f"{where} is at version {version} but lacks {known - applied} earlier migration(s): run "
            "`nursery-worker migrate` (or `await app.migrate()`)"
        )
    if version is None or version < latest:
        raise SchemaNotReady(
            f"{where} is at version {version or 0}, this nursery-worker needs {latest}: run `nursery-worker "
            "migrate` (or `await app.migrate()`)"
        )
    if version > latest:
        raise too_new(where, version, latest)


#: One job of a graph as the engines read it: id, task, queue, state, the ids it depends on.
GraphRow: TypeAlias = tuple[int, str, str, str, tuple[int, ...]]


def walk_graph(
    job_id: int,
    *,
    nodes: Callable[[list[int]], list[GraphRow]],
    children: Callable[[list[int], int], list[GraphRow]],
    max_depth: int,
    max_nodes: int,
) -> list[GraphNode]:
    """The jobs *job_id* depends on (negative depths) and those that depend on it (positive), level
    by level, at most *max_depth* levels each way and *max_nodes* jobs in all; [] if there is no
    such job. *nodes* reads jobs by id, *children* the jobs depending on any of some ids (at most
    a given number), each in the caller's connection: one statement per level."""
    found: dict[int, GraphNode] = {}

    def add(row: GraphRow, depth: int) -> bool:
        if row[0] in found or len(found) >= max_nodes:
            return False
        found[row[0]] = GraphNode(
            id=row[0], task=row[1], queue=row[2], state=JobState(row[3]), depends_on=row[4], depth=depth
        )
        return True

    root = nodes([job_id])
    if not root:
        return []
    add(root[0], 0)
    level = [job_id]
    for depth in range(1, max_depth + 1):  # ancestors
        wanted = sorted({p for i in level for p in found[i].depends_on if p not in found})
        rows = nodes(wanted) if wanted else []
        level = [r[0] for r in sorted(rows) if add(r, -depth)]
        if not level:
            break
    level = [job_id]
    for depth in range(1, max_depth + 1):  # dependants
        room = max_nodes - len(found)
        rows = children(level, room) if room > 0 else []
        level = [r[0] for r in rows if add(r, depth)]
        if not level:
            break
    return sorted(found.values(), key=lambda n: (n.depth, n.id))
