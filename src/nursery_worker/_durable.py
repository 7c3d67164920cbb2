"""Durable steps, sleeps, event waits and progress: what one attempt of a job remembers across attempts.

A :class:`Session` belongs to one attempt (its :class:`~._context.JobContext`). It reads the job's
stored steps once, at its first durable call, and from then on:

- ``step(name, fn)`` returns a completed step's stored result without running it; otherwise it runs
  ``fn`` and stores its JSON result (or its error) with one write guarded by the attempt's lease.
- ``sleep``/``sleep_until`` and ``wait_for_event`` end the attempt when the wait is not over: the
  job is written ``scheduled`` until the wait's end (:meth:`Driver.wait_step`, guarded, the attempt
  given back), and :class:`Suspend` carries the outcome to the executor, which writes nothing more.
  When the job runs again, its code runs from the top, its completed steps return at once, and the
  wait finds its stored end (or the event's payload).
- ``progress`` stores ``(done, total, note)`` at most once per :data:`PROGRESS_INTERVAL`; the last
  value held back is written when the attempt ends.

A durable write whose lease is gone (the job was rescued, or handed back) raises
:class:`AttemptLost`: the code that would go on has no attempt left to go on in.

Names: a step's name is unique within its job. Sleeps and waits without a name are named by their
order in the job's code (``sleep-1``, ``sleep-2``; ``event:<key>``), which is the same on every
attempt when the code is deterministic up to that point.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import inspect
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, overload

import anyio

from ._errors import ConfigurationError, NurseryWorkerError
from ._json import DEFAULT_MAX_RESULT_BYTES, check_json, check_result_size, check_storable
from ._models import JobStep, Lease, StepWrite, WaitResult
from ._outcomes import JobOutcome, check_seconds
from ._state import ErrorInfo, Suspended, error_info

if TYPE_CHECKING:
    from ._context import JobContext
    from ._driver import Driver
    from ._stepwriter import StepWriter

P = ParamSpec("P")
R = TypeVar("R")

#: The least time between two progress writes of one attempt, in seconds.
PROGRESS_INTERVAL = 1.0
#: Step names, event keys and progress notes longer than this are refused (characters).
MAX_NAME = 200
MAX_KEY = 500
MAX_NOTE = 500


class AttemptLost(BaseException):
    """This attempt of the job is no longer this worker's: a durable write found its lease gone.

    The job was rescued by a peer (this worker's heartbeat lapsed), or handed back, and another
    attempt owns it now; nothing was written. It derives from ``BaseException``, as cancellation
    does, so that ``except Exception`` in task code does not swallow it and run on: let it
    propagate. The worker ends the attempt; its outcome is ignored like any late one.
    """


class EventTimeout(NurseryWorkerError, TimeoutError):
    """``context.wait_for_event`` reached its timeout before the event was emitted.

    Durable like the wait: when the job runs again, the same wait raises it again at once.

    Attributes:
        key: the event's key.
        step: the name of the waiting step.
    """

    def __init__(self, key: str, step: str) -> None:
        super().__init__(f"event {key!r} was not emitted before the timeout of step {step!r}")
        self.key = key
        self.step = step


class StepResultRefused(NurseryWorkerError, ValueError):
    """A step returned a value that cannot be stored (not JSON, or over ``max_result_bytes``).

    The step ran; its side effects happened. Its job fails for good rather than run it again.
    """


class Suspend(BaseException):
    """The job was suspended by a durable wait (already written): end the attempt with *outcome*."""

    def __init__(self, outcome: Suspended) -> None:
        super().__init__(f"suspended until {outcome.delay:g}s from now ({outcome.kind} {outcome.step!r})")
        self.outcome = outcome


class CancelRequested(BaseException):
    """A durable wait found the job's cancel requested: end the attempt as cancelled."""


#: What ends an attempt from inside a durable call, past the task's own ``except Exception``.
EXITS = (Suspend, AttemptLost, CancelRequested)


def exit_of(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The durable exit inside *group* (raised in a task group of the job's own), or None: a
    suspension first, as its write is already made."""
    found = group.subgroup(lambda e: isinstance(e, EXITS))
    if found is None:
        return None
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup[BaseException]) -> None:
        for e in g.exceptions:
            if isinstance(e, BaseExceptionGroup):
                walk(e)
            else:
                leaves.append(e)

    walk(found)
    return next((e for e in leaves if isinstance(e, Suspend)), leaves[0] if leaves else None)


class Store(Protocol):
    """Where a session keeps its steps: the database (:class:`DatabaseStore`), or memory (testing)."""

    async def load(self) -> list[JobStep]: ...

    async def record(
        self, *, name: str, position: int, result_json: str | None, error: ErrorInfo | None, duration: float
    ) -> bool: ...

    async def wait(
        self, *, name: str, position: int, event: str | None, delay: float | None, until: dt.datetime | None
    ) -> WaitResult: ...

    async def progress(self, *, done: float, total: float | None, note: str | None) -> bool: ...


class DatabaseStore:
    """The steps of one attempt in the database, every write guarded by its *lease*; step records
    go through the worker's *writer* (batched with other jobs'), or alone without one."""

    def __init__(self, driver: Driver, lease: Lease, writer: StepWriter | None = None) -> None:
        self.driver = driver
        self.lease = lease
        self.writer = writer

    async def load(self) -> list[JobStep]:
        return await self.driver.job_steps(self.lease.job_id)

    async def record(
        self, *, name: str, position: int, result_json: str | None, error: ErrorInfo | None, duration: float
    ) -> bool:
        record = StepWrite(
            lease=self.lease, name=name, position=position, result_json=result_json, error=error, duration=duration
        )
        if self.writer is not None:
            return await self.writer.record(record)
        return (await self.driver.record_steps([record]))[0]

    async def wait(
        self, *, name: str, position: int, event: str | None, delay: float | None, until: dt.datetime | None
    ) -> WaitResult:
        return await self.driver.wait_step(
            self.lease, name=name, position=position, event=event, delay=delay, until=until
        )

    async def progress(self, *, done: float, total: float | None, note: str | None) -> bool:
        return await self.driver.set_progress(self.lease, done=done, total=total, note=note)


class MemoryStore:
    """Steps kept in memory, for a context made by ``testing.make_context``: a sleep ends at once,
    and an event wait receives what *events* holds for its key or times out at once."""

    def __init__(self, events: Mapping[str, Any] | None = None) -> None:
        self.steps: dict[str, JobStep] = {}
        self.events = dict(events or {})
        #: Every progress report, in order: (done, total, note).
        self.reports: list[tuple[float, float | None, str | None]] = []

    async def load(self) -> list[JobStep]:
        return sorted(self.steps.values(), key=lambda s: s.position)

    async def record(
        self, *, name: str, position: int, result_json: str | None, error: ErrorInfo | None, duration: float
    ) -> bool:
        from ._models import JobError

        runs = self.steps[name].runs + 1 if name in self.steps else 1
        self.steps[name] = JobStep(
            name=name,
            position=position,
            state="failed" if error is not None else "completed",
            attempt=1,
            runs=runs,
            result=None if result_json is None or error is not None else json.loads(result_json),
            error=None if error is None else JobError(attempt=1, at=None, type=error.type, message=error.message),
            duration=duration,
        )
        return True

    async def wait(
        self, *, name: str, position: int, event: str | None, delay: float | None, until: dt.datetime | None
    ) -> WaitResult:
        if event is None:
            outcome, state, payload = "done", "completed", None
        elif event in self.events:
            outcome, state, payload = "received", "completed", self.events[event]
        else:
            outcome, state, payload = "timeout", "timed_out", None
        self.steps[name] = JobStep(name=name, position=position, state=state, attempt=1, runs=0, result=payload)
        return WaitResult(outcome=outcome, payload=payload)

    async def progress(self, *, done: float, total: float | None, note: str | None) -> bool:
        self.reports.append((done, total, note))
        return True


def memory_session(
    job_id: int, attempt: int, *, sleep_threshold: float, events: Mapping[str, Any] | None = None
) -> Session:
    """A session whose steps stay in memory (:class:`MemoryStore`), for a context outside a worker."""
    return Session(
        MemoryStore(events),
        job_id=job_id,
        attempt=attempt,
        max_result_bytes=DEFAULT_MAX_RESULT_BYTES,
        sleep_threshold=sleep_threshold,
        final_timeout=10.0,
        clock=lambda: dt.datetime.now(dt.UTC),
    )


def _text(value: object, *, what: str, where: str, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{where}: the {what} must be a non-empty str, got {value!r}")
    if len(value) > limit:
        raise ConfigurationError(f"{where}: the {what} is {len(value)} characters long; use at most {limit}")
    return check_storable(value, what=f"the {what}", where=where)  # no NUL, no lone surrogate


def _number(value: object, *, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{where}: {value!r} must be a finite number >= 0")
    return float(value)


def check_event_key(key: object, *, where: str) -> str:
    """Validate an event's key.

    Raises:
        ConfigurationError: *key* is not a non-empty str of at most ``MAX_KEY`` characters without NUL.
    """
    return _text(key, what="event key", where=where, limit=MAX_KEY)


def encode_payload(payload: Any, *, where: str, max_bytes: int) -> str:
    """The JSON of an event's payload, checked like a job's arguments.

    Raises:
        TypeError: *payload* is not JSON (the message names the path and the fix).
        ValueError: it is over *max_bytes* bytes.
    """
    try:
        check_json(payload, "payload")
    except (TypeError, ValueError) as exc:
        detail = str(exc).replace("job argument ", "", 1)
        raise type(exc)(f"{where}: the payload is not JSON: {detail}") from None
    encoded = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    size = len(encoded.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ValueError(
            f"{where}: the payload is {size:,} bytes of JSON, above the limit of {max_bytes:,}; emit a reference "
            "to data stored elsewhere (an id, a URL) instead"
        )
    return encoded


class Session:
    """The durable calls of one attempt (see the module's docstring).

    Args:
        store: where the steps are kept.
        job_id: the job's id (for messages).
        attempt: the attempt running.
        max_result_bytes: the largest step result, in bytes of JSON.
        sleep_threshold: sleeps shorter than this many seconds wait in the worker (not durably).
        final_timeout: the deadline of a step's write, shielded from cancellation.
        clock: the database's time now, as the worker estimates it (the claim's time plus the time
            since by the monotonic clock).
    """

    def __init__(
        self,
        store: Store,
        *,
        job_id: int,
        attempt: int,
        max_result_bytes: int,
        sleep_threshold: float,
        final_timeout: float,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.max_result_bytes = max_result_bytes
        self.sleep_threshold = sleep_threshold
        self.final_timeout = final_timeout
        self.clock = clock
        self._steps: dict[str, JobStep] | None = None
        self._load_lock = anyio.Lock()
        self._next = 0  # the position of the next new step
        self._used: set[str] = set()
        self._counters: dict[str, int] = {}
        self._progress_at = -math.inf
        self._held: tuple[float, float | None, str | None] | None = None

    # --- names and the stored steps -----------------------------------------------------------

    async def _loaded(self) -> dict[str, JobStep]:
        if self._steps is None:
            # Steps run concurrently (in a task group of the job's) read them once between them.
            async with self._load_lock:
                if self._steps is None:
                    stored = await self.store.load()
                    self._next = max((s.position for s in stored), default=-1) + 1
                    self._steps = {s.name: s for s in stored}
        return self._steps

    def _claim(self, name: str, *, where: str) -> None:
        if name in self._used:
            raise ConfigurationError(
                f"{where}: the step name {name!r} is already used in job {self.job_id}; step names are unique "
                "within a job: give each call its own name (such as f'charge-{item_id}')"
            )
        self._used.add(name)

    def auto_name(self, base: str, *, first_bare: bool = False) -> str:
        """The next name of *base* in this attempt's order: ``base-1``, ``base-2``, ... (with
        *first_bare*: ``base``, ``base-2``, ...; counted apart from the other form)."""
        key = ("@" if first_bare else "") + base
        n = self._counters.get(key, 0) + 1
        self._counters[key] = n
        return base if first_bare and n == 1 else f"{base}-{n}"

    def _position(self, steps: dict[str, JobStep], name: str) -> int:
        found = steps.get(name)
        if found is not None:
            return found.position
        # Taken at once (no await in between): concurrent steps get positions of their own.
        position, self._next = self._next, self._next + 1
        return position

    async def _shielded(self, call: Callable[[], Awaitable[R]]) -> R:
        # A step's record is the final write of work already done: a shutdown must not cut it off.
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + self.final_timeout):
            return await call()
        raise TimeoutError(f"job {self.job_id}: a durable write took over {self.final_timeout:g}s (final_timeout)")

    def _lost(self, what: str) -> AttemptLost:
        return AttemptLost(
            f"job {self.job_id} attempt {self.attempt}: {what} was not written: the attempt is no longer this "
            "worker's (rescued after a lapsed heartbeat, or handed back)"
        )

    # --- steps --------------------------------------------------------------------------------

    async def step(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run *fn* once as step *name*, or return its stored result (see ``JobContext.step``)."""
        where = f"context.step({name!r})"
        _text(name, what="step name", where="context.step(name)", limit=MAX_NAME)
        if not callable(fn):
            raise ConfigurationError(f"{where}: {fn!r} is not callable; pass the function and its arguments")
        self._claim(name, where=where)
        steps = await self._loaded()
        found = steps.get(name)
        if found is not None and found.state == "completed":
            return found.result
        if found is not None and found.state in ("waiting", "timed_out"):
            raise ConfigurationError(f"{where}: {name!r} names a sleep or an event wait of job {self.job_id}")
        position = self._position(steps, name)
        started = time.monotonic()
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except JobOutcome:
            raise  # a snooze, a retry or a discard: the job's answer, not the step's failure
        except Exception as exc:
            await self._record_failure(name, position, error_info(exc), time.monotonic() - started)
            raise
        duration = time.monotonic() - started
        try:
            encoded = self._encode(name, value)
        except StepResultRefused as refused:
            await self._record_failure(
                name, position, ErrorInfo(type="StepResultRefused", message=str(refused)), duration
            )
            raise
        written = await self._shielded(
            lambda: self.store.record(name=name, position=position, result_json=encoded, error=None, duration=duration)
        )
        if not written:
            raise self._lost(f"the result of step {name!r}")
        result = None if encoded is None else json.loads(encoded)
        steps[name] = JobStep(
            name=name, position=position, state="completed", attempt=self.attempt, result=result, duration=duration
        )
        return result

    def _encode(self, name: str, value: Any) -> str | None:
        if value is None:
            return None
        try:
            check_json(value, "result")
            encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            check_result_size(encoded, self.max_result_bytes)
        except (TypeError, ValueError) as exc:
            detail = str(exc).replace("job argument ", "", 1)
            raise StepResultRefused(
                f"step {name!r} of job {self.job_id} returned a value that cannot be stored: {detail}; return JSON "
                "(dict, list, str, int, float, bool, None) of at most max_result_bytes, such as an id of data "
                "stored elsewhere; the job fails for good rather than run the step again"
            ) from None
        return encoded

    async def _record_failure(self, name: str, position: int, error: ErrorInfo, duration: float) -> None:
        written = await self._shielded(
            lambda: self.store.record(name=name, position=position, result_json=None, error=error, duration=duration)
        )
        if not written:
            raise self._lost(f"the failure of step {name!r}")

    # --- durable waits ------------------------------------------------------------------------

    async def sleep(self, seconds: float | dt.timedelta, name: str | None) -> None:
        """Sleep *seconds*, durably beyond the threshold (see ``JobContext.sleep``)."""
        delay = check_seconds(seconds, where="context.sleep(seconds)")
        await self._sleep(name, delay=delay, until=None, where="context.sleep")

    async def sleep_until(self, when: dt.datetime, name: str | None) -> None:
        """Sleep until *when*, durably beyond the threshold (see ``JobContext.sleep_until``)."""
        if not isinstance(when, dt.datetime) or when.tzinfo is None or when.utcoffset() is None:
            raise ConfigurationError(f"context.sleep_until({when!r}): pass an aware datetime (with a time zone)")
        delay = (when - self.clock()).total_seconds()
        await self._sleep(name, delay=delay, until=when, where="context.sleep_until")

    async def _sleep(self, name: str | None, *, delay: float, until: dt.datetime | None, where: str) -> None:
        if name is None:
            name = self.auto_name("sleep")
        else:
            _text(name, what="step name", where=f"{where}(name=...)", limit=MAX_NAME)
        self._claim(name, where=f"{where}(name={name!r})")
        steps = await self._loaded()
        found = steps.get(name)
        if found is not None and found.state == "completed":
            return
        if found is None and delay < self.sleep_threshold:
            await anyio.sleep(max(0.0, delay))
            return
        result = await self._wait(steps, name, event=None, delay=max(0.0, delay), until=until)
        if result.outcome != "done":
            raise ConfigurationError(f"{where}: step {name!r} of job {self.job_id} is an event wait, not a sleep")

    async def wait_for_event(
        self,
        key: str,
        timeout: float | dt.timedelta | None,  # noqa: ASYNC109 (a durable wait's end, not a cancel scope)
        name: str | None,
    ) -> Any:
        """Wait durably for event *key* (see ``JobContext.wait_for_event``)."""
        check_event_key(key, where="context.wait_for_event(key)")
        delay = None if timeout is None else check_seconds(timeout, where="context.wait_for_event(timeout=...)")
        if name is None:
            name = f"event:{key}"[:MAX_NAME]
        else:
            _text(name, what="step name", where="context.wait_for_event(name=...)", limit=MAX_NAME)
        self._claim(name, where=f"context.wait_for_event({key!r})")
        steps = await self._loaded()
        found = steps.get(name)
        if found is not None and found.state == "completed":
            return found.result
        if found is not None and found.state == "timed_out":
            raise EventTimeout(key, name)
        result = await self._wait(steps, name, event=key, delay=delay, until=None)
        if result.outcome == "timeout":
            raise EventTimeout(key, name)
        return result.payload

    async def _wait(
        self, steps: dict[str, JobStep], name: str, *, event: str | None, delay: float | None, until: dt.datetime | None
    ) -> WaitResult:
        position = self._position(steps, name)
        await self.flush_progress()  # the report held back, before the attempt may end
        result = await self._shielded(
            lambda: self.store.wait(name=name, position=position, event=event, delay=delay, until=until)
        )
        if result.outcome == "lost":
            raise self._lost(f"the wait of step {name!r}")
        if result.outcome == "cancel_requested":
            raise CancelRequested(f"job {self.job_id}: its cancel was requested")
        if result.outcome == "suspended":
            left = 0.0 if result.until is None else max(0.0, (result.until - self.clock()).total_seconds())
            kind = "sleep" if event is None else "event"
            raise Suspend(Suspended(delay=left, kind=kind, step=name))
        state = "timed_out" if result.outcome == "timeout" else "completed"
        steps[name] = JobStep(
            name=name, position=position, state=state, attempt=self.attempt, runs=0, result=result.payload, event=event
        )
        return result

    # --- progress -----------------------------------------------------------------------------

    async def progress(self, done: float, total: float | None, note: str | None) -> None:
        """Report progress, written at most once per :data:`PROGRESS_INTERVAL` (see ``JobContext.progress``)."""
        done = _number(done, where="context.progress(done)")
        if total is not None:
            total = _number(total, where="context.progress(total=...)")
        if note is not None:
            if not isinstance(note, str):
                raise ConfigurationError(f"context.progress(note={note!r}): the note must be a str or None")
            note = check_storable(note[:MAX_NOTE], what="the note", where="context.progress(note=...)")
        now = time.monotonic()
        final = total is not None and done >= total
        if not final and now - self._progress_at < PROGRESS_INTERVAL:
            self._held = (done, total, note)
            return
        self._held = None
        self._progress_at = now
        await self._write_progress(done, total, note)

    @property
    def progress_held(self) -> bool:
        """Whether a progress report was held back by the interval and not written yet."""
        return self._held is not None

    async def flush_progress(self) -> None:
        """Write the progress report held back, if any (the attempt is ending)."""
        held, self._held = self._held, None
        if held is not None:
            with anyio.CancelScope(shield=True, deadline=anyio.current_time() + self.final_timeout):
                await self.store.progress(done=held[0], total=held[1], note=held[2])

    async def _write_progress(self, done: float, total: float | None, note: str | None) -> None:
        if not await self.store.progress(done=done, total=total, note=note):
            raise self._lost("the progress")


# --- the decorator form --------------------------------------------------------------------------

#: The context of the job running in this task (set by the executor, read by :func:`step`).
current_context: contextvars.ContextVar[Callable[[], JobContext] | None] = contextvars.ContextVar(
    "nursery_worker_job_context", default=None
)


@overload
def step(fn: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]: ...
@overload
def step(
    fn: None = None, /, *, name: str | None = None
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]: ...
def step(fn: Any = None, /, *, name: str | None = None) -> Any:
    """Make an ``async`` function a durable step of whatever job calls it.

    Inside a running job, each call is ``await context.step(name, fn, *args, **kwargs)``: run once,
    its JSON result stored, returned from storage when the job runs again. The name is *name* (default:
    the function's ``__qualname__``); its second and later calls within one job are named
    ``name-2``, ``name-3``, ... in the order the job's code makes them. Outside a job (a test, a
    script) the function is simply called.

    Args:
        fn: the ``async`` function (``@step``), or None (``@step(name="charge")``).
        name: the step's name (default: the function's qualified name).

    Returns:
        The wrapped function (or a decorator that wraps one).

    Raises:
        ConfigurationError: *fn* is not an ``async`` function, or *name* is not a non-empty str.

    Example:
        >>> @nursery_worker.step
        ... async def charge_card(order_id: int) -> str:
        ...     return (await payments.charge(order_id)).id
    """

    def wrap(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        if not inspect.iscoroutinefunction(func):
            raise ConfigurationError(
                f"@step: {getattr(func, '__qualname__', func)!r} is not an async function; durable steps are awaited "
                "(for blocking work, call anyio.to_thread.run_sync inside an async step)"
            )
        base = name if name is not None else func.__qualname__
        _text(base, what="step name", where="@step(name=...)", limit=MAX_NAME - 12)

        @functools.wraps(func)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            get = current_context.get()
            if get is None:
                return await func(*args, **kwargs)
            context = get()
            session = context._durable()
            step_name = session.auto_name(base, first_bare=True)
            result: R = await session.step(step_name, func, args, dict(kwargs))
            return result

        return run

    if fn is None:
        return wrap
    return wrap(fn)
