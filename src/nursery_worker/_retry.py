"""Backoff policies: how long a failed job waits before its next attempt."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import attrs

from ._errors import ConfigurationError


@runtime_checkable
class RetryPolicy(Protocol):
    """Anything that maps the attempt that just failed (1-based) to seconds to wait."""

    def __call__(self, attempt: int) -> float: ...


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ConfigurationError(f"{type(instance).__name__}({attribute.name}={value!r}): must be a number > 0")


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    # Capped at 100 years: a longer wait could not be stored as a timestamp.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100 * 365.25 * 86400:
        raise ConfigurationError(
            f"{type(instance).__name__}({attribute.name}={value!r}): must be a number of seconds from 0 to 100 years"
        )


@attrs.frozen(kw_only=True)
class ExponentialBackoff:
    """Exponential backoff with jitter, the default: ``base * factor ** (attempt - 1)``, capped.

    With the defaults the waits are about 1, 2, 4, 8 ... seconds, never above an hour, each moved by
    up to ±10% so that jobs that failed together do not all retry in the same instant.

    Attributes:
        base: the wait after the first failed attempt, in seconds.
        factor: the growth per attempt.
        max_delay: the cap, in seconds.
        jitter: the relative spread, from 0 (none) to 1.

    Example:
        >>> @app.task(retry=ExponentialBackoff(base=5, max_delay=600))
        ... async def sync_account(account_id: int) -> None: ...
    """

    base: float = attrs.field(default=1.0, validator=_positive)
    factor: float = attrs.field(default=2.0, validator=_positive)
    max_delay: float = attrs.field(default=3600.0, validator=_positive)
    jitter: float = attrs.field(default=0.1)
    rng: random.Random = attrs.field(factory=random.Random, eq=False, repr=False)

    @jitter.validator
    def _check_jitter(self, _: attrs.Attribute[float], value: float) -> None:
        if not 0 <= value <= 1:
            raise ConfigurationError(f"ExponentialBackoff(jitter={value!r}): must be between 0 and 1")

    def __call__(self, attempt: int) -> float:
        """Return the seconds to wait after failed attempt number *attempt*."""
        exponent = min(max(attempt - 1, 0), 64)
        try:
            delay = min(self.max_delay, self.base * self.factor**exponent)
        except OverflowError:  # factor ** exponent beyond a float: far past the cap anyway
            delay = self.max_delay
        if self.jitter:
            delay *= 1 + self.rng.uniform(-self.jitter, self.jitter)
        return max(0.0, delay)


def resolve_retry(
    retry: RetryPolicy | Callable[[int], float] | float | int | None, *, where: str
) -> Callable[[int], float]:
    """Turn the ``retry=`` option into a callable; a number means a constant wait.

    Raises:
        ConfigurationError: the value is neither a callable nor a non-negative number.
    """
    if retry is None:
        return ExponentialBackoff()
    if isinstance(retry, bool):
        raise ConfigurationError(
            f"{where}: retry={retry!r} is not a policy; pass ExponentialBackoff(...) or a number of seconds"
        )
    if isinstance(retry, (int, float)):
        if retry < 0:
            raise ConfigurationError(f"{where}: retry={retry!r} is negative; pass a number of seconds >= 0")
        seconds = float(retry)
        return lambda attempt: seconds
    if callable(retry):
        return retry
    raise ConfigurationError(
        f"{where}: retry={retry!r} is not a policy; pass ExponentialBackoff(...), a callable attempt -> seconds, "
        "or a number of seconds"
    )


@attrs.frozen(kw_only=True)
class LinearBackoff:
    """Waits that grow by the same step: ``base + step * (attempt - 1)``, capped.

    Attributes:
        base: the wait after the first failed attempt, in seconds.
        step: added per further attempt, in seconds.
        max_delay: the cap, in seconds.

    Example:
        >>> @app.task(retry=LinearBackoff(base=10, step=10))
        ... async def fetch_feed(url: str) -> None: ...
    """

    base: float = attrs.field(default=1.0, validator=_non_negative)
    step: float = attrs.field(default=1.0, validator=_non_negative)
    max_delay: float = attrs.field(default=3600.0, validator=_positive)

    def __call__(self, attempt: int) -> float:
        """Return the seconds to wait after failed attempt number *attempt*."""
        return max(0.0, min(self.max_delay, self.base + self.step * max(attempt - 1, 0)))


@attrs.frozen
class ConstantBackoff:
    """The same wait after every failed attempt.

    Attributes:
        seconds: the wait, in seconds.

    Example:
        >>> send_email.configure(retry=ConstantBackoff(seconds=30))
    """

    seconds: float = attrs.field(default=1.0, validator=_non_negative)

    def __call__(self, attempt: int) -> float:
        """Return the seconds to wait after any failed attempt."""
        return self.seconds


def policy_to_json(policy: object, *, where: str) -> dict[str, Any]:
    """Describe a built-in policy as JSON, to store it on a job (a per-job ``retry=``).

    Raises:
        ConfigurationError: the policy is a callable, which cannot be stored on a job.
    """
    if isinstance(policy, ExponentialBackoff):
        return {
            "kind": "exponential",
            "base": policy.base,
            "factor": policy.factor,
            "max_delay": policy.max_delay,
            "jitter": policy.jitter,
        }
    if isinstance(policy, LinearBackoff):
        return {"kind": "linear", "base": policy.base, "step": policy.step, "max_delay": policy.max_delay}
    if isinstance(policy, ConstantBackoff):
        return {"kind": "constant", "seconds": policy.seconds}
    if isinstance(policy, (int, float)) and not isinstance(policy, bool):
        return policy_to_json(ConstantBackoff(seconds=float(policy)), where=where)
    raise ConfigurationError(
        f"{where}: retry={policy!r} cannot be stored on a job; a per-job retry must be ExponentialBackoff(...), "
        "LinearBackoff(...), ConstantBackoff(...) or a number of seconds "
        "(a callable works per task: @app.task(retry=...))"
    )


def policy_from_json(data: Any) -> Callable[[int], float] | None:
    """Rebuild a policy stored by :func:`policy_to_json`; None if *data* is empty or unknown."""
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    try:
        if kind == "exponential":
            return ExponentialBackoff(
                base=data["base"], factor=data["factor"], max_delay=data["max_delay"], jitter=data["jitter"]
            )
        if kind == "linear":
            return LinearBackoff(base=data["base"], step=data["step"], max_delay=data["max_delay"])
        if kind == "constant":
            return ConstantBackoff(seconds=data["seconds"])
    except (KeyError, TypeError, ConfigurationError):
        return None
    return None
