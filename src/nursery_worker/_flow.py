"""Flow control: global limits, circuit breakers and job dependencies (workflows).

Everything here is pure: option validation and the configuration a worker hands to the limited
claim. The enforcement lives where jobs are claimed, in the driver, so that any number of workers on
any number of hosts share one count; so does the ordering of a dependency graph's insert
(``_driver/_common.py``). The records (``RateLimit``, ``BreakerInfo``) are in ``_models``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from ._errors import ConfigurationError
from ._json import check_storable
from ._models import BreakerInfo as BreakerInfo
from ._models import Job, JobSpec, TaskLimits
from ._models import RateLimit as RateLimit

_INT32_MAX = 2**31 - 1
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*([a-z]+)\s*", re.IGNORECASE)
_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_LIMIT_KEY_MAX = 200

#: ``limit_by=``: the name of an argument, or a function of the arguments returning the partition.
LimitBy = str | Callable[[dict[str, Any]], object] | None


def parse_rate_limit(value: object, *, where: str) -> RateLimit | None:
    """Parse ``"100/m"``, ``"10/s"``, ``"5/h"``, ``"30/10s"`` or ``(count, seconds | timedelta)``.

    Raises:
        ConfigurationError: the value is not a rate (the message shows the accepted forms).
    """
    if value is None:
        return None
    fix = (
        "write it as '<count>/<unit>' with a unit of s, m, h or d (for example '100/m' or '30/10s'), or "
        "as a tuple (count, seconds)"
    )
    count: object
    period: object
    if isinstance(value, str):
        match = _RATE.fullmatch(value)
        if not match or match.group(3).lower() not in _UNITS:
            raise ConfigurationError(f"{where}: rate_limit={value!r} is not a rate; {fix}")
        count = int(match.group(1))
        period = float(match.group(2) or 1) * _UNITS[match.group(3).lower()]
    elif isinstance(value, tuple) and len(value) == 2:
        count, period = value
        if isinstance(period, dt.timedelta):
            period = period.total_seconds()
    else:
        raise ConfigurationError(f"{where}: rate_limit={value!r} is not a rate; {fix}")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= _INT32_MAX:
        raise ConfigurationError(f"{where}: rate_limit={value!r} needs a whole count >= 1; {fix}")
    if (
        isinstance(period, bool)
        or not isinstance(period, (int, float))
        or not math.isfinite(period)
        or not 0.001 <= period <= 366 * 86400
    ):
        raise ConfigurationError(f"{where}: rate_limit={value!r} needs a period between 1 ms and a year; {fix}")
    return RateLimit(count=count, period=float(period))


def check_max_concurrency(value: object, *, where: str) -> int | None:
    """Validate ``max_concurrency=`` (None: no limit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _INT32_MAX:
        raise ConfigurationError(
            f"{where}: max_concurrency={value!r} must be an int >= 1 (jobs running at once across all workers), "
            "or None for no limit"
        )
    return value


def check_limit_by(value: object, *, where: str) -> LimitBy:
    """Validate ``limit_by=``: an argument name or a function of the arguments."""
    if value is None or callable(value):
        return value
    if isinstance(value, str) and value.isidentifier():
        return value
    raise ConfigurationError(
        f"{where}: limit_by={value!r} must be the name of an argument (for example 'customer_id') or a function "
        "args -> key"
    )


def resolve_limit_key(option: LimitBy, args: Mapping[str, Any], *, where: str) -> str:
    """The partition of one job's limits ('' when the limits are not partitioned)."""
    if option is None:
        return ""
    if isinstance(option, str):
        if option not in args:
            raise ConfigurationError(
                f"{where}: limit_by={option!r} names an argument this job does not pass; pass {option}=... or "
                "use a function for limit_by"
            )
        key: object = args[option]
    else:
        try:
            key = option(dict(args))
        except Exception as exc:
            raise ConfigurationError(f"{where}: the limit_by function raised {type(exc).__name__}: {exc}") from exc
    text = key if isinstance(key, str) else _key_text(key, where=where)
    if len(text) > _LIMIT_KEY_MAX:
        raise ConfigurationError(f"{where}: the limit key {text[:40]!r}... is over {_LIMIT_KEY_MAX} characters")
    return check_storable(text, what="the limit key", where=where)


def _key_text(key: object, *, where: str) -> str:
    if isinstance(key, bool) or key is None or not isinstance(key, (int, float)):
        raise ConfigurationError(
            f"{where}: the limit key {key!r} must be a string or a number (it partitions the task's limits)"
        )
    return str(key)


def _seconds(value: Any) -> Any:
    return value.total_seconds() if isinstance(value, dt.timedelta) else value


@attrs.frozen(kw_only=True)
class CircuitBreaker:
    """A task's circuit breaker: after ``threshold`` consecutive failures (across all workers) the
    task's jobs are held back, neither run nor counted as attempts, for ``cooldown`` seconds; then
    one probe job runs. Its success closes the breaker; its failure opens it again.

    Attributes:
        threshold: consecutive failed attempts that open the breaker (>= 1).
        cooldown: seconds the breaker stays open before the probe (> 0).

    Example:
        >>> @app.task(circuit_breaker=CircuitBreaker(threshold=5, cooldown=30))
        ... async def call_partner_api(order_id: int) -> None: ...
    """

    threshold: int = attrs.field(default=5)
    cooldown: float = attrs.field(default=60.0, converter=_seconds)

    @threshold.validator
    def _check_threshold(self, _: object, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _INT32_MAX:
            raise ConfigurationError(f"CircuitBreaker(threshold={value!r}): must be an int >= 1")

    @cooldown.validator
    def _check_cooldown(self, _: object, value: object) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not 0 < value <= 366 * 86400
        ):
            raise ConfigurationError(f"CircuitBreaker(cooldown={value!r}): must be seconds > 0 (or a timedelta)")


def limits_config(tasks: Iterable[Any]) -> dict[str, TaskLimits]:
    """The limited claim's view of a task registry: each limited task's limits, by name."""
    return {
        task.name: TaskLimits(
            concurrency=task.max_concurrency,
            rate=task.rate_limit,
            breaker=task.circuit_breaker is not None,
        )
        for task in tasks
        if task.limited
    }


# --- dependencies ----------------------------------------------------------------------------------


def check_depends_on(value: object, *, where: str) -> tuple[int | JobSpec, ...]:
    """Validate ``depends_on=``: jobs (``Job``), job ids, or job specs of the same ``defer_many`` call."""
    if value is None:
        return ()
    if isinstance(value, (Job, JobSpec, int)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"{where}: depends_on={value!r} must be a list of jobs (as returned by defer), job ids, or job specs "
            "(task.job(...)) deferred in the same defer_many call"
        )
    out: list[int | JobSpec] = []
    for item in value:
        if isinstance(item, Job):
            item = item.id
        if isinstance(item, bool) or not isinstance(item, (int, JobSpec)):
            raise ConfigurationError(
                f"{where}: depends_on holds {item!r}; use jobs (as returned by defer), job ids, or job specs "
                "(task.job(...)) deferred in the same defer_many call"
            )
        if isinstance(item, int) and item < 1:
            raise ConfigurationError(f"{where}: depends_on holds the id {item}, which no job can have (ids are >= 1)")
        if not any(item is seen for seen in out):
            out.append(item)
    return tuple(out)


def rebind_dependencies(old: Sequence[JobSpec], new: Sequence[JobSpec]) -> list[JobSpec]:
    """Point the in-call dependencies of *new* (copies of *old*, say with a trace context added)
    at the copies instead of the originals, so that the graph stays within the call.

    The copies are fresh objects nobody else holds yet, so they are patched in place.
    """
    copies = {id(o): n for o, n in zip(old, new, strict=True)}
    for spec in new:
        if any(isinstance(d, JobSpec) for d in spec.depends_on):
            rebound = tuple(copies.get(id(d), d) if isinstance(d, JobSpec) else d for d in spec.depends_on)
            object.__setattr__(spec, "depends_on", rebound)
    return list(new)
