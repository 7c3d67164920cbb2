"""Registered tasks: option validation, argument checking and the ``defer`` family."""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import json
import math
import re
import typing
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

import attrs

from ._errors import ConfigurationError
from ._flow import CircuitBreaker, LimitBy, RateLimit, check_depends_on, resolve_limit_key
from ._json import check_json, check_storable, encode_args, encode_args_text, encode_args_value
from ._models import Job, JobBatch, JobSpec
from ._retry import policy_to_json
from ._state import ACTIVE_STATES, JobState
from ._tracing import defer_span, tracing_active

if TYPE_CHECKING:
    from ._app import App

P = ParamSpec("P")
#: The function's return type (a coroutine for ``async def``); covariant so a checker can match
#: ``Task[P, Coroutine[Any, Any, T]]`` and give ``defer`` the awaited type.
R = TypeVar("R", covariant=True)
T = TypeVar("T")

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,99}")
_TASK_NAME = re.compile(r"[^\s\x00-\x1f\x7f\ud800-\udfff]{1,255}")
_INT32 = (-(2**31), 2**31 - 1)
#: Options of a job whose task sets none (``@app.task`` defaults, and unregistered task names).
DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = 0
DEFAULT_MAX_ATTEMPTS = 20
_MAX_DELAY = 100 * 365.25 * 86400
_DEFAULT_UNIQUE_STATES = tuple(s.value for s in JobState if s in ACTIVE_STATES)
_UNIQUE_KEY_MAX = 1000

#: ``unique_key=``: a string, True (the arguments are the key), or a function of the arguments.
UniqueKey = str | bool | Callable[[dict[str, Any]], str] | None


def check_unique(unique_key: object, unique_states: object, *, where: str) -> tuple[UniqueKey, tuple[str, ...]]:
    """Validate the unique options; return (key option, sorted states)."""
    if unique_key is not None and not isinstance(unique_key, (str, bool)) and not callable(unique_key):
        raise ConfigurationError(
            f"{where}: unique_key={unique_key!r} must be a string, True (the arguments are the key), a function "
            "args -> str, or None"
        )
    if isinstance(unique_key, str) and not 0 < len(unique_key) <= _UNIQUE_KEY_MAX:
        raise ConfigurationError(f"{where}: unique_key must be 1-{_UNIQUE_KEY_MAX} characters, got {unique_key!r}")
    if isinstance(unique_key, str):
        check_storable(unique_key, what="unique_key", where=where)
    if unique_states is None:
        return unique_key, _DEFAULT_UNIQUE_STATES
    if isinstance(unique_states, str) or not hasattr(unique_states, "__iter__"):
        raise ConfigurationError(f"{where}: unique_states={unique_states!r} must be a collection of job states")
    # A pending job (waiting for its dependencies) is queued: always in scope, like the others.
    states: set[str] = {JobState.PENDING.value}
    for value in unique_states:
        try:
            states.add(JobState(value).value)
        except ValueError:
            raise ConfigurationError(
                f"{where}: unique_states holds {value!r}, which is not a job state "
                f"(one of {', '.join(s.value for s in JobState)})"
            ) from None
    missing = set(_DEFAULT_UNIQUE_STATES) - states
    if missing:
        raise ConfigurationError(
            f"{where}: unique_states={sorted(states)} must include every queued and running state "
            f"({', '.join(_DEFAULT_UNIQUE_STATES)}); missing {sorted(missing)}. Add 'completed' (and others) to "
            "also refuse a job whose twin already finished"
        )
    return unique_key, tuple(s.value for s in JobState if s.value in states)


def resolve_unique_key(option: UniqueKey, kwargs: Mapping[str, Any], *, where: str) -> str | None:
    """The unique key of one job from the ``unique_key=`` option and its arguments."""
    if option is None or option is False:
        return None
    if option is True:
        return json.dumps(kwargs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if isinstance(option, str):
        return option
    try:
        key = option(dict(kwargs))
    except Exception as exc:
        raise ConfigurationError(f"{where}: the unique_key function raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(key, str) or not 0 < len(key) <= _UNIQUE_KEY_MAX:
        raise ConfigurationError(
            f"{where}: the unique_key function returned {key!r}; it must return a string of 1-{_UNIQUE_KEY_MAX} "
            "characters"
        )
    return check_storable(key, what="the unique_key function's key", where=where)


def check_queue(queue: object, *, where: str) -> str:
    """Return *queue* if it is a valid queue name, else raise ``ConfigurationError``."""
    if not isinstance(queue, str) or not _QUEUE_NAME.fullmatch(queue):
        raise ConfigurationError(
            f"{where}: queue={queue!r} is not a valid queue name; use 1-100 letters, digits, '_', '.', ':' "
            "or '-', starting with a letter, digit or '_' (for example 'emails')"
        )
    return queue


def check_task_name(name: object, *, where: str) -> str:
    """Return *name* if it is a valid task name, else raise ``ConfigurationError``."""
    if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
        raise ConfigurationError(
            f"{where}: task name {name!r} is not valid; use 1-255 printable characters without spaces "
            "(for example 'billing.send_invoice')"
        )
    return name


def check_priority(priority: object, *, where: str) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not _INT32[0] <= priority <= _INT32[1]:
        raise ConfigurationError(
            f"{where}: priority={priority!r} must be an int between -2**31 and 2**31-1 (higher runs first)"
        )
    return priority


def check_max_attempts(max_attempts: object, *, where: str) -> int:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not 1 <= max_attempts <= _INT32[1]:
        raise ConfigurationError(f"{where}: max_attempts={max_attempts!r} must be an int >= 1")
    return max_attempts


def check_timeout(timeout: object, *, where: str) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, dt.timedelta):
        timeout = timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ConfigurationError(
            f"{where}: timeout={timeout!r} must be a number of seconds > 0, or None for no timeout"
        )
    return float(timeout)


def check_schedule(scheduled_at: object, delay: object, *, where: str) -> tuple[dt.datetime | None, float | None]:
    if scheduled_at is not None and delay is not None:
        raise ConfigurationError(f"{where}: pass scheduled_at= or delay=, not both")
    if scheduled_at is not None:
        if not isinstance(scheduled_at, dt.datetime):
            raise ConfigurationError(f"{where}: scheduled_at={scheduled_at!r} must be a datetime with a timezone")
        if scheduled_at.tzinfo is None or scheduled_at.utcoffset() is None:
            raise ConfigurationError(
                f"{where}: scheduled_at={scheduled_at!r} is naive; pass an aware datetime such as "
                "datetime.now(timezone.utc) + timedelta(minutes=5), or use delay="
            )
        return scheduled_at, None
    if delay is not None:
        if isinstance(delay, dt.timedelta):
            delay = delay.total_seconds()
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) or delay < 0:
            raise ConfigurationError(f"{where}: delay={delay!r} must be a number of seconds >= 0 or a timedelta")
        if delay > _MAX_DELAY:
            raise ConfigurationError(
                f"{where}: delay={delay!r} is more than 100 years; pass scheduled_at= for a fixed date instead"
            )
        return None, float(delay)
    return None, None


def build_spec(
    *,
    task: str,
    kwargs: Mapping[str, Any],
    max_bytes: int,
    queue: str,
    priority: int,
    max_attempts: int,
    scheduled_at: dt.datetime | None = None,
    delay: float | None = None,
    unique_key: str | None = None,
    unique_states: tuple[str, ...] | None = None,
    retry_policy: dict[str, Any] | None = None,
) -> JobSpec:
    """Encode validated options and arguments into a :class:`JobSpec` (the one place specs are made)."""
    args_json, args = encode_args_value(kwargs, max_bytes=max_bytes)
    return JobSpec(
        unique_key=unique_key,
        unique_states=unique_states if unique_key is not None else None,
        retry_policy=retry_policy,
        task=task,
        args=args,  # what the row will hold: tuples as lists, no shared objects
        args_json=args_json,
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        scheduled_at=scheduled_at,
        delay=delay,
    )


def check_spec_storable(spec: JobSpec, *, item: int) -> None:
    """Refuse *spec* if a string of it that reaches the database cannot be stored (a NUL, a lone surrogate).

    ``task.job()`` checks what it builds, but a spec made by hand or changed with ``attrs.evolve``
    reaches ``defer_many`` unchecked, where the database would refuse it with a generic error
    (PostgreSQL: a NUL in text, a ``\\u0000`` or NaN in jsonb; both engines: a lone surrogate).

    Raises:
        ConfigurationError: naming the item (*item*, its index in ``defer_many``), the field, the value
            and the fix.
    """
    # The common case is a few short ASCII strings: str.isascii() reads a flag, and an ASCII string
    # can only be unstorable by holding a NUL. defer_many calls this for each of thousands of specs.
    task, queue, unique_key, limit_key = spec.task, spec.queue, spec.unique_key, spec.limit_key
    if not (
        task.isascii()
        and queue.isascii()
        and (unique_key is None or unique_key.isascii())
        and (limit_key is None or limit_key.isascii())
        and "\x00" not in task
        and "\x00" not in queue
        and (unique_key is None or "\x00" not in unique_key)
        and (limit_key is None or "\x00" not in limit_key)
    ):
        _check_fields(
            spec, [("task name", task), ("queue", queue), ("unique_key", unique_key), ("limit key", limit_key)], item
        )
    if spec.unique_states is not None or spec.trace_context is not None:
        fields: list[tuple[str, object]] = [("unique_states item", state) for state in spec.unique_states or ()]
        for key, header in (spec.trace_context or {}).items():
            fields.extend((("trace_context key", key), (f"trace_context[{key!r}]", header)))
        _check_fields(spec, fields, item)
    text = spec.args_json
    # What our encoder never writes: a NUL (raw or escaped), NaN/Infinity, a lone surrogate. Any of
    # these (or a mere backslash-u in a string) sends the arguments through the walk naming the path.
    suspect = "\x00" in text or "\\u" in text or "NaN" in text or "Infinity" in text
    if not suspect and not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            suspect = True
    if not suspect:
        return
    try:
        check_json(json.loads(text, strict=False), "args_json")
    except ValueError as exc:  # JSONDecodeError included
        detail = str(exc).replace("job argument ", "", 1)
        raise ConfigurationError(
            f"defer_many: item {item} ({spec.task!r}): {detail}; build the spec with task.job(**kwargs) or "
            "app.job_by_name(...), which check the arguments and encode them"
        ) from None


def _check_fields(spec: JobSpec, fields: list[tuple[str, object]], item: int) -> None:
    for what, value in fields:
        if isinstance(value, str):
            check_storable(value, what=what, where=f"defer_many: item {item} ({spec.task!r})")


def _is_context(annotation: Any) -> bool:
    """True for ``JobContext``, ``JobContext | None``, ``Optional[JobContext]`` and their string forms."""
    from ._context import JobContext

    if annotation is JobContext:
        return True
    if isinstance(annotation, str):
        return re.search(r"(?<![\w.])(?:[\w.]+\.)?JobContext\b", annotation) is not None
    return any(_is_context(arg) for arg in typing.get_args(annotation))


def _kwargs_signature(func: Callable[..., Any], name: str) -> tuple[inspect.Signature, str | None]:
    """The signature jobs' arguments must fit, and the name of a ``JobContext`` parameter if any."""
    sig = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = {}
    context: str | None = None
    for param in sig.parameters.values():
        if _is_context(hints.get(param.name, param.annotation)):
            if context is not None:
                raise ConfigurationError(f"task {name!r}: only one parameter may take the JobContext")
            context = param.name
            continue
        if param.kind is inspect.Parameter.POSITIONAL_ONLY and param.default is inspect.Parameter.empty:
            raise ConfigurationError(
                f"task {name!r}: parameter {param.name!r} is positional-only, but jobs pass arguments by "
                "keyword; remove the '/' from the signature"
            )
    if context is not None:
        if sig.parameters[context].kind not in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            raise ConfigurationError(f"task {name!r}: the JobContext parameter {context!r} must be passable by keyword")
        sig = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != context])
    return sig, context


def encode_result(value: Any, *, task: str) -> str | None:
    """The JSON of a task's return value (None stays SQL NULL).

    Raises:
        TypeError / ValueError: the value is not JSON; the message names the task and the path.
    """
    if value is None:
        return None
    try:
        check_json(value, "result")
    except (TypeError, ValueError) as exc:
        detail = str(exc).replace("job argument ", "", 1)
        raise type(exc)(f"task {task!r} returned a value that is not JSON: {detail}") from None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class Task(Generic[P, R]):
    """A function registered with ``@app.task``; call ``defer`` to enqueue it.

    Calling the task object itself calls the function directly (handy in tests).

    ``Task[P, R]`` is generic in the function's parameters ``P`` and return type ``R``, so type
    checkers (mypy, pyright) check the arguments of ``defer``, ``defer_sync``, ``job``,
    ``configure(...).defer`` and of the direct call against the function's signature, and type
    the returned :class:`Job` by the result (``Job[int]`` for ``async def f() -> int`` too). A
    ``JobContext`` first parameter is left out of ``P``: the worker passes it, not the caller (to
    call such a task directly, use ``nursery_worker.testing.run_task``, which passes one).

    Attributes:
        name: the registered name (default ``module.qualname``).
        func: the decorated function.
        queue, priority, max_attempts: defaults for its jobs.
        timeout: seconds an attempt may run before it is cancelled, or None.
    """

    def __init__(
        self,
        app: App,
        func: Callable[P, R],
        *,
        name: str,
        queue: str,
        priority: int,
        max_attempts: int,
        timeout: float | None,
        backoff: Callable[[int], float],
        unique_key: UniqueKey = None,
        unique_states: tuple[str, ...] = _DEFAULT_UNIQUE_STATES,
        max_concurrency: int | None = None,
        rate_limit: RateLimit | None = None,
        limit_by: LimitBy = None,
        circuit_breaker: CircuitBreaker | None = None,
    ) -> None:
        self.app = app
        self.max_concurrency = max_concurrency
        self.rate_limit = rate_limit
        self.limit_by = limit_by
        self.circuit_breaker = circuit_breaker
        self.func = func
        self.name = name
        self.queue = queue
        self.priority = priority
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff = backoff
        self.unique_key = unique_key
        self.unique_states = unique_states
        self.is_async = inspect.iscoroutinefunction(func)
        self.signature, self.context_param = _kwargs_signature(func, name)
        # A fast check of keyword arguments (Signature.bind costs several µs per job; bulk
        # enqueues make millions of them). bind() still runs to word the error, and for
        # signatures the sets cannot describe (*args, positional-only parameters).
        params = self.signature.parameters.values()
        kinds = {p.kind for p in params}
        self._names = frozenset(p.name for p in params)
        self._required = frozenset(p.name for p in params if p.default is inspect.Parameter.empty)
        self._any_keyword = inspect.Parameter.VAR_KEYWORD in kinds
        self._simple = not kinds & {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY}
        self._positional = tuple(
            p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )
        self._plain_call: TaskCall[P, R] | None = None
        functools.update_wrapper(self, func)

    def __repr__(self) -> str:
        return f"<Task {self.name!r} queue={self.queue!r}>"

    @property
    def limited(self) -> bool:
        """True when the task has a global limit or a circuit breaker (its jobs take the limited claim)."""
        return self.max_concurrency is not None or self.rate_limit is not None or self.circuit_breaker is not None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def keywords(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, where: str) -> dict[str, Any]:
        """The job's keyword arguments from a call's positional and keyword arguments.

        Jobs store their arguments by name, so ``f.defer(1, b=2)`` for ``def f(a, b)`` stores
        ``{"a": 1, "b": 2}`` (the types of ``defer`` allow what a direct call allows).

        Args:
            args: the positional arguments of the call.
            kwargs: its keyword arguments.
            where: the method, for the message.

        Returns:
            *kwargs* itself when there are no positional arguments, else a new dict with both.

        Raises:
            TypeError: too many positional arguments, one that lands on a positional-only
                parameter, or a parameter given twice.
        """
        if not args:
            return kwargs
        signature = f"{self.func.__name__}{self.signature}"
        if len(args) > len(self._positional):
            raise TypeError(
                f"{self.name}.{where}(): takes {len(self._positional)} positional argument(s) but {len(args)} were "
                f"given; pass the others by keyword (signature: {signature})"
            )
        merged: dict[str, Any] = {}
        for param, value in zip(self._positional, args, strict=False):
            if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise TypeError(
                    f"{self.name}.{where}(): parameter {param.name!r} is positional-only and jobs pass arguments by "
                    f"keyword; remove the '/' from the signature (signature: {signature})"
                )
            if param.name in kwargs:
                raise TypeError(f"{self.name}.{where}(): got multiple values for argument {param.name!r}")
            merged[param.name] = value
        merged.update(kwargs)
        return merged

    def fits(self, kwargs: Mapping[str, Any]) -> bool:
        """True if *kwargs* surely fit the function (False: ask ``signature.bind`` to be sure)."""
        if not self._simple:
            return False
        keys = kwargs.keys()
        return self._required <= keys and (self._any_keyword or keys <= self._names)

    def check_args(self, kwargs: Mapping[str, Any]) -> None:
        """Raise ``TypeError`` if *kwargs* cannot be passed to the function.

        Args:
            kwargs: the keyword arguments of a job.
        """
        if self.fits(kwargs):
            return
        try:
            self.signature.bind(**kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}.defer(): {exc} (signature: {self.func.__name__}{self.signature})") from None

    def _plain(self) -> TaskCall[P, R]:
        """``configure()`` with no options, made once."""
        if self._plain_call is None:
            self._plain_call = self.configure()
        return self._plain_call

    def configure(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        scheduled_at: dt.datetime | None = None,
        delay: float | dt.timedelta | None = None,
        max_attempts: int | None = None,
        connection: Any = None,
        unique_key: UniqueKey = None,
        unique_states: typing.Iterable[str] | None = None,
        retry: Any = None,
        depends_on: typing.Iterable[Job | JobSpec | int] | Job | JobSpec | int | None = None,
    ) -> TaskCall[P, R]:
        """Return a deferrer with per-job options.

        Args:
            queue: run on this queue instead of the task's.
            priority: higher runs first among available jobs of a queue.
            scheduled_at: an aware datetime before which the job does not run.
            delay: seconds (or a timedelta) from now, by the database's clock.
            max_attempts: the attempt budget for these jobs.
            connection: an open psycopg connection: the insert joins its transaction (with the
                embedded engine, a ``sqlite3.Connection`` to the same file).
            unique_key: make the job unique among its task's jobs: a string, True (its arguments
                are the key) or a function ``args -> str``. While a job with the same key is in
                *unique_states*, enqueueing returns that job (``job.duplicate`` is True) and inserts
                nothing; the database enforces it, across processes. Default: the task's.
            unique_states: the states in which an existing job blocks a new one; always includes
                scheduled, available, executing and retryable (the default); add ``"completed"``
                to also refuse a job whose twin already completed.
            retry: this job's retry policy: ``ExponentialBackoff``, ``LinearBackoff``,
                ``ConstantBackoff`` or a number of seconds (stored on the job; a callable policy
                can only be set per task).
            depends_on: jobs this one waits for: ``Job`` objects, job ids, or (in one
                ``app.defer_many`` call) the specs of other jobs of the call. The job is ``pending``
                until every dependency completed; if one is discarded or cancelled, it is cancelled
                with an error naming that dependency.

        Returns:
            A :class:`TaskCall` with ``defer``, ``defer_sync`` and ``job``.

        Raises:
            ConfigurationError: an option is invalid (the message names it).

        Example:
            >>> await send_email.configure(delay=60, priority=5).defer(to="a@example.com")
        """
        where = f"{self.name}.configure()"
        at, seconds = check_schedule(scheduled_at, delay, where=where)
        if unique_states is not None and unique_key is None and self.unique_key is None:
            raise ConfigurationError(
                f"{where}: unique_states= has no effect without a unique_key (here or in @app.task(unique_key=...))"
            )
        if unique_key is None and unique_states is None:
            key_option, states = self.unique_key, self.unique_states
        else:
            key_option, states = check_unique(
                self.unique_key if unique_key is None else unique_key,
                self.unique_states if unique_states is None else unique_states,
                where=where,
            )
        return TaskCall(
            unique_key=key_option,
            unique_states=states,
            retry_policy=None if retry is None else policy_to_json(retry, where=where),
            task=self,
            queue=self.queue if queue is None else check_queue(queue, where=where),
            priority=self.priority if priority is None else check_priority(priority, where=where),
            max_attempts=self.max_attempts if max_attempts is None else check_max_attempts(max_attempts, where=where),
            scheduled_at=at,
            delay=seconds,
            connection=connection,
            depends_on=check_depends_on(depends_on, where=where),
        )

    def job(self, *args: P.args, **kwargs: P.kwargs) -> JobSpec:
        """Validate arguments into a :class:`JobSpec` for ``app.defer_many``, writing nothing.

        Args:
            *args: the function's arguments by position (stored by name).
            **kwargs: the function's keyword arguments (JSON values).

        Returns:
            The :class:`JobSpec`.

        Raises:
            TypeError: the arguments do not fit the function or are not JSON.
            ValueError: NaN/Infinity, a NUL character, or arguments that are too large.
        """
        return self._plain().job(*args, **kwargs)

    @overload
    async def defer(self: Task[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs) -> Job[T]: ...

    @overload
    async def defer(self: Task[P, T], *args: P.args, **kwargs: P.kwargs) -> Job[T]: ...

    async def defer(self, *args: Any, **kwargs: Any) -> Job[Any]:
        """Enqueue one job with these arguments.

        Args:
            *args: the function's arguments by position (stored by name).
            **kwargs: the function's keyword arguments (JSON values).

        Returns:
            The inserted :class:`Job` (``state`` is available, or scheduled when it is not yet due).

        Raises:
            TypeError: the arguments do not fit the function or are not JSON.
            ValueError: an argument is NaN/Infinity, has a NUL character, or is too large.
            DatabaseError: the database cannot be reached.
            SchemaNotReady: the schema is not migrated.
        """
        return await self._plain().defer(*args, **kwargs)

    @overload
    def defer_sync(self: Task[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs) -> Job[T]: ...

    @overload
    def defer_sync(self: Task[P, T], *args: P.args, **kwargs: P.kwargs) -> Job[T]: ...

    def defer_sync(self, *args: Any, **kwargs: Any) -> Job[Any]:
        """Like :meth:`defer`, for synchronous code (blocks the calling thread).

        Args:
            *args: the function's arguments by position (stored by name).
            **kwargs: the function's keyword arguments (JSON values).

        Returns:
            The inserted :class:`Job`.
        """
        return self._plain().defer_sync(*args, **kwargs)

    async def defer_batch(self, items: Iterable[Mapping[str, Any]]) -> list[int]:
        """Enqueue many jobs of this task, one per mapping of keyword arguments; return their ids.

        The lean bulk path: every item is checked against the function's signature and encoded as
        JSON before anything is written, then all jobs go in one transaction (COPY on PostgreSQL)
        with one notification per queue. No :class:`JobSpec` or :class:`Job` is made per job. For
        per-job options use ``app.defer_many``; for options shared by the batch, call
        ``task.configure(...).defer_batch(...)`` (``connection=`` joins your transaction).

        Args:
            items: the jobs' keyword arguments, one mapping per job (JSON values).

        Returns:
            The new jobs' ids, in the order given (with a unique key, a job whose twin is already
            queued gives the twin's id).

        Raises:
            TypeError: an item is not a mapping, does not fit the function, or is not JSON (the
                message names the item's index).
            ValueError: an item holds NaN/Infinity or a NUL character, or is above
                ``App(max_args_bytes=...)``. Nothing is written.
            DatabaseError: the database cannot be reached.

        Example:
            >>> ids = await send_email.defer_batch({"to": a} for a in addresses)
        """
        return await self._plain().defer_batch(items)

    def defer_batch_sync(self, items: Iterable[Mapping[str, Any]]) -> list[int]:
        """Like :meth:`defer_batch`, for synchronous code (blocks the calling thread).

        Args:
            items: the jobs' keyword arguments, one mapping per job (JSON values).

        Returns:
            The new jobs' ids, in the order given.

        Raises:
            TypeError, ValueError, DatabaseError: as :meth:`defer_batch`.
        """
        return self._plain().defer_batch_sync(items)

    def _batch_items(self, items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The items of a ``defer_batch`` as dicts whose keys fit the function.

        Raises:
            TypeError: naming the index of the first item that is not a mapping or does not fit.
        """
        out: list[dict[str, Any]] = []
        fits = self.fits
        for i, item in enumerate(items):
            if type(item) is not dict:
                if not isinstance(item, Mapping):
                    raise TypeError(
                        f"{self.name}.defer_batch(): item {i} is {item!r:.80}; pass one dict of the function's "
                        "keyword arguments per job"
                    )
                item = dict(item)
            if self._any_keyword and not all(type(k) is str for k in item):
                bad = next(k for k in item if not isinstance(k, str))
                raise TypeError(f"{self.name}.defer_batch(): item {i} has the key {bad!r}; argument names must be str")
            if not fits(item):
                try:
                    self.signature.bind(**item)
                except TypeError as exc:
                    raise TypeError(
                        f"{self.name}.defer_batch(): item {i}: {exc} (signature: {self.func.__name__}{self.signature})"
                    ) from None
            out.append(item)
        return out


@attrs.frozen(kw_only=True)
class TaskCall(Generic[P, R]):
    """A task with per-job options, from ``task.configure(...)``; typed like its :class:`Task`."""

    task: Task[P, R]
    queue: str
    priority: int
    max_attempts: int
    scheduled_at: dt.datetime | None = None
    delay: float | None = None
    connection: Any = attrs.field(default=None, repr=False)
    unique_key: UniqueKey = None
    unique_states: tuple[str, ...] = _DEFAULT_UNIQUE_STATES
    retry_policy: dict[str, Any] | None = None
    depends_on: tuple[int | JobSpec, ...] = ()

    def job(self, *args: P.args, **kwargs: P.kwargs) -> JobSpec:
        """Validate arguments into a :class:`JobSpec`, writing nothing.

        Args:
            *args: the function's arguments by position (stored by name).
            **kwargs: the function's keyword arguments (JSON values).

        Returns:
            The :class:`JobSpec`, with these options.

        Raises:
            TypeError: the arguments do not fit the function or are not JSON.
            ValueError: NaN/Infinity, a NUL character, or arguments above ``App(max_args_bytes=...)``.
        """
        named = self.task.keywords(args, kwargs, where="defer")
        depends_on = self.depends_on
        if "depends_on" in named and "depends_on" not in self.task._names:
            # A job option, unless the function itself takes a parameter of that name.
            extra = check_depends_on(named.pop("depends_on"), where=f"{self.task.name}.job()")
            depends_on = depends_on + tuple(d for d in extra if not any(d is e for e in depends_on))
        self.task.check_args(named)
        spec = build_spec(
            retry_policy=self.retry_policy,
            task=self.task.name,
            kwargs=named,
            max_bytes=self.task.app.max_args_bytes,
            queue=self.queue,
            priority=self.priority,
            max_attempts=self.max_attempts,
            scheduled_at=self.scheduled_at,
            delay=self.delay,
        )
        if depends_on or self.task.limited:
            spec = attrs.evolve(
                spec,
                depends_on=depends_on,
                limit_key=(
                    resolve_limit_key(self.task.limit_by, spec.args, where=f"{self.task.name}.job()")
                    if self.task.limited
                    else None
                ),
            )
        if self.unique_key is None or self.unique_key is False:
            return spec
        # The key is computed from the arguments as the row will hold them (validated JSON), with
        # defaults filled in: f(a=1) and f(a=1, b=<b's default>) are the same job.
        key_args = dict(spec.args)
        if self.unique_key is True:
            bound = self.task.signature.bind(**key_args)
            bound.apply_defaults()
            key_args = json.loads(encode_args(dict(bound.arguments), max_bytes=self.task.app.max_args_bytes))
        key = resolve_unique_key(self.unique_key, key_args, where=f"{self.task.name}.job()")
        return attrs.evolve(spec, unique_key=key, unique_states=self.unique_states)

    @overload
    async def defer(self: TaskCall[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs) -> Job[T]: ...

    @overload
    async def defer(self: TaskCall[P, T], *args: P.args, **kwargs: P.kwargs) -> Job[T]: ...

    async def defer(self, *args: Any, **kwargs: Any) -> Job[Any]:
        """Enqueue one job with these options; see :meth:`Task.defer` for what it raises.

        Args:
            *args: the function's arguments by position (stored by name).
            **kwargs: the function's keyword arguments (JSON values).

        Returns:
            The inserted :class:`Job`.
        """
        with defer_span([self.job(*args, **kwargs)]) as deferring:
            (job,) = await self.task.app.driver.insert_jobs(deferring.specs, connection=self.connection)
            deferring.inserted([job])
        return job

    @overload
    def defer_sync(self: TaskCall[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs) -> Job[T]: ...

    @overload
    def defer_sync(self: TaskCall[P, T], *args: P.args, **kwargs: P.kwargs) -> Job[T]: ...

    def defer_sync(self, *args: Any, **kwargs: Any) -> Job[Any]:
        """Enqueue one job from synchronous code; see :meth:`Task.defer` for what it raises.

        Args:
            *args: the function's arguments by position (stored by name).
            **kwargs: the function's keyword arguments (JSON values).

        Returns:
            The inserted :class:`Job`.
        """
        with defer_span([self.job(*args, **kwargs)]) as deferring:
            (job,) = self.task.app.driver.insert_jobs_sync(deferring.specs, connection=self.connection)
            deferring.inserted([job])
        return job

    def _batch(self, items: Iterable[Mapping[str, Any]]) -> JobBatch | list[JobSpec]:
        """Validate and encode the items of a ``defer_batch`` before anything is written.

        Returns:
            A :class:`JobBatch` (the lean path), or one :class:`JobSpec` per item when a job needs
            what only specs carry: a unique key, dependencies, a limit key, a trace context.
        """
        task = self.task
        checked = task._batch_items(items)
        per_job = "depends_on" not in task._names and any("depends_on" in item for item in checked)
        if self.unique_key not in (None, False) or self.depends_on or task.limited or per_job or tracing_active():
            return [self._item_spec(i, item) for i, item in enumerate(checked)]
        max_bytes = task.app.max_args_bytes
        encoded: list[str] = []
        append = encoded.append
        i = 0
        try:
            for i, item in enumerate(checked):  # noqa: B007 - the index names the item at fault
                append(encode_args_text(item, max_bytes=max_bytes))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{task.name}.defer_batch(): item {i}: {exc}") from None
        return JobBatch(
            task=task.name,
            queue=self.queue,
            priority=self.priority,
            max_attempts=self.max_attempts,
            scheduled_at=self.scheduled_at,
            delay=self.delay,
            retry_policy=self.retry_policy,
            args_json=encoded,
        )

    def _item_spec(self, i: int, item: dict[str, Any]) -> JobSpec:
        job: Callable[..., JobSpec] = self.job  # the item's keys were checked against the signature
        try:
            return job(**item)
        except (TypeError, ValueError) as exc:  # ConfigurationError is a ValueError
            raise type(exc)(f"{self.task.name}.defer_batch(): item {i}: {exc}") from None

    async def defer_batch(self, items: Iterable[Mapping[str, Any]]) -> list[int]:
        """Enqueue many jobs with these options, one per mapping of keyword arguments; return their ids.

        See :meth:`Task.defer_batch` for what it raises. With ``connection=``, the insert joins
        that transaction.

        Args:
            items: the jobs' keyword arguments, one mapping per job (JSON values).

        Returns:
            The new jobs' ids, in the order given.
        """
        batch = self._batch(items)
        driver = self.task.app.driver
        if isinstance(batch, JobBatch):
            return await driver.insert_batch(batch, connection=self.connection)
        with defer_span(batch) as deferring:
            jobs = await driver.insert_jobs(deferring.specs, connection=self.connection)
            deferring.inserted(jobs)
        return [job.id for job in jobs]

    def defer_batch_sync(self, items: Iterable[Mapping[str, Any]]) -> list[int]:
        """Like :meth:`defer_batch`, for synchronous code (blocks the calling thread).

        Args:
            items: the jobs' keyword arguments, one mapping per job (JSON values).

        Returns:
            The new jobs' ids, in the order given.
        """
        batch = self._batch(items)
        driver = self.task.app.driver
        if isinstance(batch, JobBatch):
            return driver.insert_batch_sync(batch, connection=self.connection)
        with defer_span(batch) as deferring:
            jobs = driver.insert_jobs_sync(deferring.specs, connection=self.connection)
            deferring.inserted(jobs)
        return [job.id for job in jobs]
