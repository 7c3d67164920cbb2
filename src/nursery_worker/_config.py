"""Worker options: each one declared once, here, with its type, default, validator and help text.

:class:`WorkerConfig` is the one declaration. Everything else reads it:

- :class:`WorkerOptions` (a ``TypedDict`` of the same names, checked against ``WorkerConfig`` by a
  test) types the keyword arguments of ``open_worker(app, **options)``, and
  :class:`SupervisedOptions` (every option but ``once``) those of ``run_supervisor``;
- the supervisor hands its children ``WorkerConfig.to_options()`` and each child rebuilds the
  config from it;
- :func:`worker_options` lists name, default and help text of each option, for docstrings
  (:func:`options_doc`) and command-line options.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

import attrs

from ._driver._common import DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT
from ._errors import ConfigurationError
from ._json import DEFAULT_MAX_RESULT_BYTES
from ._state import WorkerState
from ._task import check_queue

#: The final states whose jobs the pruner deletes once they are older than their retention.
FINAL_STATES = ("completed", "discarded", "cancelled")

#: Default retention of the hourly metric rollups: 30 days.
DEFAULT_ROLLUP_RETENTION = 30 * 86400.0
#: The per-minute metric rollups are kept for at most this long (the hourly ones serve longer ranges).
MINUTE_ROLLUP_RETENTION = 2 * 86400.0
#: Default of ``durable_sleep_threshold``: sleeps from 10 s on end the attempt (durable).
DEFAULT_DURABLE_SLEEP_THRESHOLD = 10.0
#: Default retention of emitted events: 7 days.
DEFAULT_EVENT_RETENTION = 7 * 86400.0
#: Default retention of finished jobs, in seconds, by final state (None: keep forever).
DEFAULT_RETENTION: dict[str, float | None] = {
    "completed": 24 * 3600.0,
    "discarded": 7 * 24 * 3600.0,
    "cancelled": 7 * 24 * 3600.0,
}


# --- validators and converters -------------------------------------------------------------------


def _positive(name: str) -> Callable[[object, object, float], None]:
    def check(_: object, __: object, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isnan(value):
            raise ConfigurationError(f"open_worker({name}={value!r}): must be a number > 0")

    return check


def _queues(value: Sequence[str] | str | None) -> tuple[str, ...]:
    # None (the default) is the empty tuple: the worker serves every queue its app names.
    if value is None:
        return ()
    if isinstance(value, str):
        value = [q.strip() for q in value.split(",") if q.strip()]
    queues = tuple(dict.fromkeys(check_queue(q, where="open_worker(queues=...)") for q in value))
    if not queues:
        raise ConfigurationError(
            "open_worker(queues=...): give at least one queue name, such as ('default',), or None for every "
            "queue the app's tasks and periodic schedules name"
        )
    return queues


def _retention(value: Mapping[str, float | dt.timedelta | None] | None) -> dict[str, float | None]:
    """Validate ``retention=``: seconds (or a timedelta, or None to keep) by final state."""
    if value is None:
        return {state: None for state in FINAL_STATES}
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"open_worker(retention={value!r}): pass a dict such as {{'completed': 3600, 'discarded': 86400}}, "
            "or None to never prune"
        )
    out = dict(DEFAULT_RETENTION)
    for state, age in value.items():
        if state not in FINAL_STATES:
            raise ConfigurationError(
                f"open_worker(retention=...): {state!r} is not a final state; use {', '.join(FINAL_STATES)}"
            )
        if isinstance(age, dt.timedelta):
            age = age.total_seconds()
        if age is not None and (isinstance(age, bool) or not isinstance(age, (int, float)) or not age >= 0):
            raise ConfigurationError(
                f"open_worker(retention={{{state!r}: {age!r}}}): must be seconds >= 0, a timedelta, or None to keep"
            )
        out[state] = None if age is None else float(age)
    return out


def _doc(text: str, *, supervised: bool = True) -> dict[str, Any]:
    """An option's field metadata: its help text, and whether supervised children take it."""
    return {"help": text, "supervised": supervised}


# --- the options ------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class WorkerConfig:
    """The options of :func:`open_worker`, validated."""

    queues: tuple[str, ...] = attrs.field(
        default=None,
        converter=_queues,
        metadata=_doc(
            "the queues to work (a sequence, or a comma-separated string); None: ``default`` and every queue "
            "the app's tasks and periodic schedules name (``App.queue_names()``)."
        ),
    )
    concurrency: int = attrs.field(default=10, metadata=_doc("the most jobs running at once."))
    shutdown_timeout: float = attrs.field(
        default=30.0,
        validator=_positive("shutdown_timeout"),
        metadata=_doc("seconds running jobs get to finish after a graceful stop."),
    )
    poll_interval: float = attrs.field(
        default=1.0,
        validator=_positive("poll_interval"),
        metadata=_doc("seconds between fetches when no notification arrives."),
    )
    heartbeat_interval: float = attrs.field(
        default=2.0, validator=_positive("heartbeat_interval"), metadata=_doc("seconds between heartbeats.")
    )
    rescue_after: float = attrs.field(
        default=15.0,
        validator=_positive("rescue_after"),
        metadata=_doc(
            "seconds without a heartbeat after which peers rescue a worker's jobs (at least twice heartbeat_interval)."
        ),
    )
    reap_interval: float = attrs.field(
        default=5.0, validator=_positive("reap_interval"), metadata=_doc("seconds between orphan rescues.")
    )
    promote_interval: float = attrs.field(
        default=1.0,
        validator=_positive("promote_interval"),
        metadata=_doc("seconds between promotions of due scheduled/retryable jobs."),
    )
    final_timeout: float = attrs.field(
        default=10.0, validator=_positive("final_timeout"), metadata=_doc("the deadline of the shielded final writes.")
    )
    sync_threads: int | None = attrs.field(
        default=None,
        metadata=_doc("the most plain-``def`` tasks running in threads at once (None: ``min(concurrency, 32)``)."),
    )
    listen: bool = attrs.field(
        default=True, metadata=_doc("use LISTEN/NOTIFY to pick up jobs at once (polling always runs as a fallback).")
    )
    once: bool = attrs.field(
        default=False,
        metadata=_doc(
            "stop by itself when no job is available or running (what ``run --once`` does).", supervised=False
        ),
    )
    cancel_grace: float = attrs.field(
        default=10.0,
        validator=_positive("cancel_grace"),
        metadata=_doc(
            "seconds a cancelled job gets to stop; one that ignores its cancellation is then recorded as "
            "cancelled and abandoned (its task may still run)."
        ),
    )
    retention: dict[str, float | None] = attrs.field(
        factory=lambda: dict(DEFAULT_RETENTION),
        converter=_retention,
        metadata=_doc(
            "seconds (or a timedelta) to keep finished jobs, by final state (``completed``, ``discarded``, "
            "``cancelled``); a state given None is kept forever, and ``retention=None`` turns pruning off."
        ),
    )
    prune_interval: float = attrs.field(
        default=60.0,
        validator=_positive("prune_interval"),
        metadata=_doc("seconds between pruning passes (each deletes in bounded batches)."),
    )
    rollup_interval: float = attrs.field(
        default=10.0,
        validator=_positive("rollup_interval"),
        metadata=_doc(
            "seconds between writes of the worker's metric rollups (finished attempts counted by minute, "
            "queue and task, which the dashboard's history reads)."
        ),
    )
    rollup_retention: float = attrs.field(
        default=DEFAULT_ROLLUP_RETENTION,
        validator=_positive("rollup_retention"),
        metadata=_doc(
            "seconds to keep the hourly metric rollups (the per-minute ones are kept for at most "
            "two days), pruned with the finished jobs."
        ),
    )
    wait_for_db: float = attrs.field(
        default=0.0,
        metadata=_doc(
            "seconds to keep retrying the first connection (and schema check) with backoff, for "
            "containers that start before their database; 0 fails at once."
        ),
    )
    log_args: bool = attrs.field(
        default=False,
        metadata=_doc(
            "add each job's arguments to the log lines of its context (off by default: arguments often "
            "hold personal data)."
        ),
    )
    log_attempts: bool = attrs.field(
        default=True,
        metadata=_doc(
            "log one INFO line per finished attempt (task, job id, queue, attempt, duration, outcome) on the "
            "``nursery_worker.attempts`` logger."
        ),
    )
    idle_in_transaction_timeout: float = attrs.field(
        default=DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT,
        metadata=_doc(
            "seconds PostgreSQL lets a session of the worker's app (its pool, listener and migrations; never "
            "a connection you pass to ``defer``) sit idle inside a transaction before it ends that session "
            "(``idle_in_transaction_session_timeout``): such a session holds back vacuum on the jobs table. "
            "0 turns it off; SQLite ignores it."
        ),
    )
    max_result_bytes: int = attrs.field(
        default=DEFAULT_MAX_RESULT_BYTES,
        metadata=_doc(
            "the largest result, in bytes of JSON, a job may return; a larger one fails its attempt for good "
            "(the job is discarded with its size and the limit) and is never written. Return a reference to "
            "data stored elsewhere instead."
        ),
    )
    durable_sleep_threshold: float = attrs.field(
        default=DEFAULT_DURABLE_SLEEP_THRESHOLD,
        validator=_positive("durable_sleep_threshold"),
        metadata=_doc(
            "seconds from which ``context.sleep``/``sleep_until`` sleep durably: the attempt ends without "
            "using it up and the job runs again after the time, from its last completed step; a shorter "
            "sleep waits in the worker, holding its slot."
        ),
    )
    event_retention: float = attrs.field(
        default=DEFAULT_EVENT_RETENTION,
        validator=_positive("event_retention"),
        metadata=_doc(
            "seconds to keep an emitted event (``app.emit``) for jobs that wait for it later; the pruner "
            "deletes older ones that no suspended job waits for."
        ),
    )

    @wait_for_db.validator
    def _check_wait(self, _: object, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ConfigurationError(f"open_worker(wait_for_db={value!r}): must be seconds >= 0 (0: fail at once)")

    @idle_in_transaction_timeout.validator
    def _check_idle_timeout(self, _: object, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ConfigurationError(
                f"open_worker(idle_in_transaction_timeout={value!r}): must be seconds >= 0 (0: no timeout)"
            )

    @concurrency.validator
    def _check_concurrency(self, _: object, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"open_worker(concurrency={value!r}): must be an int >= 1")

    @max_result_bytes.validator
    def _check_result_bytes(self, _: object, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(
                f"open_worker(max_result_bytes={value!r}): must be an int >= 1 (bytes of JSON; default "
                f"{DEFAULT_MAX_RESULT_BYTES:,}, 64 MiB)"
            )

    @sync_threads.validator
    def _check_threads(self, _: object, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigurationError(f"open_worker(sync_threads={value!r}): must be an int >= 1 or None")

    @rescue_after.validator
    def _check_rescue(self, _: object, value: float) -> None:
        if value < 2 * self.heartbeat_interval:
            raise ConfigurationError(
                f"open_worker(rescue_after={value!r}) must be at least twice heartbeat_interval="
                f"{self.heartbeat_interval!r}, or live workers would be rescued"
            )

    @classmethod
    def from_options(cls, where: str, options: Mapping[str, Any]) -> WorkerConfig:
        """Validate keyword *options* of *where* (``open_worker``, ``run_supervisor``) into a config.

        Raises:
            TypeError: an option *where* does not take (named as Python names an unexpected argument).
            ConfigurationError: an option's value is invalid.
        """
        takes = {o.name for o in worker_options() if o.supervised or where == "open_worker"}
        for name in options:
            if name not in takes:
                raise TypeError(f"{where}() got an unexpected keyword argument {name!r}")
        return cls(**options)

    def to_options(self) -> dict[str, Any]:
        """Every option as JSON-ready keyword arguments that rebuild this config (what a child gets)."""
        options = attrs.asdict(self)
        options["queues"] = list(self.queues) or None
        return options


class SupervisedOptions(TypedDict, total=False):
    """The keyword arguments of ``run_supervisor`` that configure each child's worker.

    The same names and accepted types as :class:`WorkerConfig` (a test says so), except ``once``.
    """

    queues: Sequence[str] | str | None
    concurrency: int
    shutdown_timeout: float
    poll_interval: float
    heartbeat_interval: float
    rescue_after: float
    reap_interval: float
    promote_interval: float
    final_timeout: float
    sync_threads: int | None
    listen: bool
    cancel_grace: float
    retention: Mapping[str, float | dt.timedelta | None] | None
    prune_interval: float
    rollup_interval: float
    rollup_retention: float
    wait_for_db: float
    log_args: bool
    log_attempts: bool
    idle_in_transaction_timeout: float
    max_result_bytes: int
    durable_sleep_threshold: float
    event_retention: float


class WorkerOptions(SupervisedOptions, total=False):
    """The keyword arguments of ``open_worker``: one per :class:`WorkerConfig` field."""

    once: bool


@attrs.frozen(kw_only=True)
class OptionInfo:
    """One worker option as documentation and command lines show it.

    Attributes:
        name: the keyword argument.
        type: the type of its validated value, as declared (``"float"``, ``"int | None"``, ...).
        default: its default value (the converted value, as ``WorkerConfig()`` holds it).
        help: one or two sentences saying what it does.
        supervised: whether ``run_supervisor`` passes it to its children (``once`` is not).
    """

    name: str
    type: str
    default: Any
    help: str
    supervised: bool


def worker_options() -> tuple[OptionInfo, ...]:
    """Every worker option, in declaration order, with its default and help text."""
    defaults = WorkerConfig()
    return tuple(
        OptionInfo(
            name=f.name,
            type=str(f.type),
            default=getattr(defaults, f.name),
            help=f.metadata["help"],
            supervised=f.metadata["supervised"],
        )
        for f in attrs.fields(WorkerConfig)
    )


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_seconds(v)}" for k, v in value.items())
    if isinstance(value, tuple):
        return repr(list(value)) if value else "None"
    return repr(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return "forever"
    if value >= 86400 and value % 86400 == 0:
        days = int(value // 86400)
        return f"{days} day" + ("s" if days != 1 else "")
    return f"{value:g}s"


def options_doc(*, indent: int, supervised: bool = False, width: int = 112) -> str:
    """Google-style lines of the worker options (``name: help Default: ...``), for a docstring.

    Args:
        indent: the indentation of each option's first line (its continuation lines get 4 more).
        supervised: only the options ``run_supervisor`` passes to its children.
        width: the longest line.
    """
    pad = " " * indent
    lines = []
    for option in worker_options():
        if supervised and not option.supervised:
            continue
        text = f"{option.name}: {option.help} Default: ``{_shown(option.default)}``."
        lines.extend(textwrap.wrap(text, width=width, initial_indent=pad, subsequent_indent=pad + "    "))
    return "\n".join(lines)


def document_options(doc: str | None, *, supervised: bool = False) -> str:
    """*doc* with its ``{options}`` line replaced by :func:`options_doc`, at that line's indentation."""

    def lines(match: re.Match[str]) -> str:
        return options_doc(indent=len(match.group(1)), supervised=supervised)

    return re.sub(r"^([ \t]*)\{options\}$", lines, doc or "", count=1, flags=re.MULTILINE)


@attrs.frozen(kw_only=True)
class WorkerStats:
    """Counters of one worker since it started.

    An attempt is counted once its outcome is written, by what was written: a late outcome that the
    database ignored (the job was rescued from this worker, or handed back, meanwhile) counts only
    as ``ignored``.

    Attributes:
        processed: attempts that ran to an outcome (completed, failed, snoozed or cancelled).
        completed: attempts that succeeded.
        failed: attempts that raised or timed out (retried or discarded).
        retried: failed attempts that will run again.
        discarded: jobs given up on (attempts exhausted, ``Discard``, unknown task, bad arguments).
        snoozed: attempts that asked to run again later (``Snooze``), not using an attempt.
        cancelled: executing jobs stopped by ``app.cancel``.
        released: attempts handed back at shutdown, to run again without using an attempt.
        ignored: late outcomes the database refused to apply because the job was no longer this
            attempt's (rescued after this worker's heartbeat lapsed, or handed back): they changed
            nothing, and are in no other counter.
        running: jobs executing now.
        started_at: when the worker became RUNNING (wall clock, UTC).
        last_heartbeat: when its heartbeat last reached the database.
    """

    worker_id: str
    state: WorkerState
    processed: int
    completed: int
    failed: int
    retried: int
    discarded: int
    snoozed: int
    cancelled: int
    released: int
    ignored: int
    running: int
    started_at: dt.datetime | None
    last_heartbeat: dt.datetime | None
