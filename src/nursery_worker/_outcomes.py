"""What a task may raise (or return) to steer its job: snooze, retry at a chosen time, discard.

These are not errors of nursery-worker: they are a task's answers. Each may be raised from anywhere
in the task (``raise Snooze(30)``) or returned as its result (``return Snooze(30)``).
"""

from __future__ import annotations

import datetime as dt
import math

from ._errors import ConfigurationError

_MAX_SECONDS = 100 * 365.25 * 86400


def check_seconds(value: object, *, where: str) -> float:
    """*value* (seconds >= 0, or a timedelta) as float seconds, at most 100 years.

    Raises:
        ConfigurationError: *value* is negative, not finite, not a time, or over 100 years; the
            message names *where*.
    """
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{where}: {value!r} must be a number of seconds >= 0 or a timedelta")
    if value > _MAX_SECONDS:
        raise ConfigurationError(f"{where}: {value!r} seconds is more than 100 years; pass a shorter wait")
    return float(value)


class JobOutcome(Exception):
    """Base of the outcomes a task raises or returns to steer its job."""


class Snooze(JobOutcome):
    """Run the job again after *seconds*, without using up an attempt.

    Args:
        seconds: how long to wait (a number >= 0 or a ``timedelta``).

    Raises:
        ConfigurationError: *seconds* is negative, NaN or not a number.

    Example:
        >>> @app.task
        ... async def poll_export(export_id: str) -> None:
        ...     if not await export_ready(export_id):
        ...         raise Snooze(30)
    """

    def __init__(self, seconds: float | dt.timedelta) -> None:
        self.seconds = check_seconds(seconds, where="Snooze(seconds)")
        super().__init__(f"snoozed for {self.seconds:g}s")


class Retry(JobOutcome):
    """Fail this attempt and retry at a chosen time instead of the task's retry policy.

    The attempt counts: when it was the last one the job is discarded.

    A wait is counted from the database's ``now()`` when the outcome is written; a ``datetime`` is
    stored as the next attempt's time and compared with the database's clock, as every job time
    is, so a worker whose own clock is set wrong retries it neither early nor late.

    Args:
        after: seconds (or a ``timedelta``) to wait, or an aware ``datetime`` to retry at.
        reason: recorded as the attempt's error message.

    Raises:
        ConfigurationError: *after* is negative, naive or not a time.

    Example:
        >>> raise Retry(after=dt.timedelta(minutes=5), reason="rate limited by the API")
    """

    def __init__(self, after: float | dt.timedelta | dt.datetime = 0.0, reason: str = "retry requested") -> None:
        if isinstance(after, dt.datetime):
            if after.tzinfo is None or after.utcoffset() is None:
                raise ConfigurationError(f"Retry(after={after!r}): pass an aware datetime or a number of seconds")
            self.at: dt.datetime | None = after
            # For information only (by this machine's clock): the retry is scheduled at `at`.
            self.seconds = max(0.0, (after - dt.datetime.now(dt.UTC)).total_seconds())
        else:
            self.at = None
            self.seconds = check_seconds(after, where="Retry(after)")
        self.reason = str(reason)
        super().__init__(self.reason)


class Discard(JobOutcome):
    """Give up on the job now: it is discarded, whatever attempts are left.

    Args:
        reason: recorded as the attempt's error message.

    Example:
        >>> raise Discard("account was deleted")
    """

    def __init__(self, reason: str = "discarded by the task") -> None:
        self.reason = str(reason)
        super().__init__(self.reason)
