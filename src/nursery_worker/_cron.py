"""Cron expressions and their ticks: pure, synchronous, no I/O (the DST tests drive it directly).

Parsing and matching are cronsim's (Debian cron's semantics, zoneinfo time zones, an optional
seconds field). This module adds what a durable scheduler needs on top of an iterator:

- validation at registration, with messages that name the expression and the fix, including
  expressions that can never fire (``0 0 30 2 *``);
- ticks as aware datetimes that strictly increase in absolute time. cronsim computes the
  fixed-time expressions (``30 2 * * *``) on the naive wall clock, like Debian cron, and a start
  inside a repeated (fall-back) hour loses its ``fold``: it may answer a tick that is already in
  the past, or miss one. :meth:`Cron.ticks_after` and :meth:`Cron.latest_at_or_before` correct
  for both by comparing absolute times, so the scheduler never sees a tick twice or out of order.

What a DST change does to the ticks (cronsim's, documented in the README):

- An expression whose minute and hour fields are both fixed (``30 2 * * *``, ``0 9 * * MON``):
  a wall time skipped by the spring-forward gap fires once at the first minute after the gap
  (02:30 -> 03:00); a wall time repeated by the fall-back overlap fires once, at its first
  occurrence (summer time).
- An expression with ``*`` (or a step over ``*``) in its minute or hour field (``*/15 * * * *``,
  ``0 * * * *``), and every six-field expression: the ticks follow real time. A skipped hour has
  no ticks, a repeated hour has them twice (they are distinct instants).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterator

import cronsim

from ._errors import ConfigurationError

#: The usual ``@`` shorthands, as cron(8) defines them.
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FORMAT = (
    "five fields 'minute hour day-of-month month day-of-week' (for example '*/5 * * * *' or '0 6 * * MON-FRI'), "
    "six with a leading seconds field ('*/10 * * * * *'), or one of " + ", ".join(ALIASES)
)
_SECOND = dt.timedelta(seconds=1)


def resolve_zone(timezone: object, *, where: str) -> zoneinfo.ZoneInfo:
    """The ``ZoneInfo`` for an IANA name (or a ``ZoneInfo``, or ``datetime.UTC``).

    Raises:
        ConfigurationError: an unknown name, or a tzinfo that has no IANA name.
    """
    if isinstance(timezone, zoneinfo.ZoneInfo):
        return timezone
    if timezone is dt.UTC:
        return zoneinfo.ZoneInfo("UTC")
    if not isinstance(timezone, str):
        raise ConfigurationError(
            f"{where}: timezone={timezone!r} must be an IANA time zone name such as 'Europe/Paris' or 'UTC' "
            "(or a zoneinfo.ZoneInfo)"
        )
    try:
        return zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"{where}: timezone={timezone!r} is not a known IANA time zone; use a name such as 'Europe/Paris', "
            "'America/New_York' or 'UTC' (on systems without a time zone database, install the tzdata package)"
        ) from None


class Cron:
    """A validated cron expression in a time zone.

    Args:
        expression: five fields, six (seconds first), or an ``@`` alias (``@hourly``, ``@daily``...).
        zone: the time zone the fields are read in.
        where: who registers it, for error messages.

    Raises:
        ConfigurationError: the expression is invalid or can never fire; the message names it.
    """

    def __init__(self, expression: str, zone: zoneinfo.ZoneInfo, *, where: str = "cron") -> None:
        if not isinstance(expression, str):
            raise ConfigurationError(f"{where}: cron={expression!r} must be a string: {_FORMAT}")
        #: The expression as given, its whitespace normalised (``"0  6 * * *"`` is ``"0 6 * * *"``).
        self.expression = " ".join(expression.split())
        self.zone = zone
        self._text = ALIASES.get(self.expression.lower(), self.expression)
        try:
            cronsim.CronSim(self._text, dt.datetime(2000, 1, 1, tzinfo=zone))
        except cronsim.CronSimError as exc:
            raise ConfigurationError(self._invalid(where, str(exc))) from None
        # An expression that parses may still never match (cronsim looks 50 years ahead).
        start = dt.datetime.now(dt.UTC)
        if next(self.ticks_after(start), None) is None:
            raise ConfigurationError(
                f"{where}: cron={expression!r} never fires (no matching time within 50 years); check the "
                "day-of-month, month and day-of-week fields together"
            )

    def _invalid(self, where: str, detail: str) -> str:
        fields = self._text.split()
        if detail.lower() == "bad day-of-month" and len(fields) in (5, 6):
            # cronsim refuses a day that no chosen month has (``0 0 30 2 *``) with the same message
            # as a malformed field; with every month allowed it parses, which tells them apart.
            fields[-2] = "*"
            try:
                cronsim.CronSim(" ".join(fields), dt.datetime(2000, 1, 1, tzinfo=self.zone))
            except cronsim.CronSimError:
                pass
            else:
                return (
                    f"{where}: cron={self.expression!r} never fires: no month it allows has that day of the month; "
                    "fix the day-of-month or the month field"
                )
        return f"{where}: cron={self.expression!r} is not a valid cron expression ({detail}); use {_FORMAT}"

    def __repr__(self) -> str:
        return f"Cron({self.expression!r}, {self.zone.key!r})"

    def ticks_after(self, start: dt.datetime) -> Iterator[dt.datetime]:
        """The ticks strictly after *start* (aware), in increasing order, as UTC datetimes.

        UTC, because two datetimes that share a tzinfo object compare by their wall clock alone,
        ignoring ``fold``: 02:30 CET would not be "after" 02:30 CEST on the day clocks go back.
        """
        last = start.astimezone(dt.UTC)
        for local in cronsim.CronSim(self._text, start.astimezone(self.zone)):
            tick = local.astimezone(dt.UTC)
            if tick > last:
                last = tick
                yield tick

    def next_after(self, start: dt.datetime) -> dt.datetime | None:
        """The first tick strictly after *start*, as a UTC datetime, or None if there is none within 50 years."""
        return next(self.ticks_after(start), None)

    def latest_at_or_before(self, end: dt.datetime) -> dt.datetime | None:
        """The last tick at or before *end* (aware), as a UTC datetime, or None if there is none
        within 50 years back."""
        end = end.astimezone(dt.UTC)
        # Ticks fall on whole seconds: searching back from the next whole second includes *end*'s.
        local = (end.replace(microsecond=0) + _SECOND).astimezone(self.zone)
        back = cronsim.CronSim(self._text, local, reverse=True)
        try:
            candidate = next(back).astimezone(dt.UTC)
            while candidate > end:
                candidate = next(back).astimezone(dt.UTC)
        except StopIteration:
            return None
        # Going back on the naive wall clock can skip a tick of a repeated (fall-back) hour; a
        # forward pass from a tick known to be earlier finds anything in between.
        for tick in self.ticks_after(candidate):
            if tick > end:
                break
            candidate = tick
        return candidate
