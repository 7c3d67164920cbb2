"""The embedded engine's time codec: the database's clock, and times as integer microseconds.

SQLite has no time type: every time is stored as integer microseconds since the epoch (UTC), read
from SQLite's own clock (``'now'``, millisecond resolution, the same for every use within one
statement), as PostgreSQL's ``now()`` is the database's and not the worker's.
"""

from __future__ import annotations

import datetime as dt

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)

#: The database's clock in integer microseconds, as an SQL expression.
NOW_SQL = "(CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) * 1000)"


def to_us(value: dt.datetime) -> int:
    """An aware datetime as stored."""
    return (value - _EPOCH) // _US


def from_us(value: int | None) -> dt.datetime | None:
    """A stored time (or NULL) as an aware UTC datetime (or None)."""
    return None if value is None else _EPOCH + dt.timedelta(microseconds=value)


def moment(value: int | None) -> dt.datetime:
    """A stored time that is never NULL, as an aware UTC datetime."""
    value_at = from_us(value)
    assert value_at is not None
    return value_at


def iso(us: int) -> str:
    """A stored time in ISO 8601, as error entries record it (PostgreSQL's ``to_json(now())``)."""
    return moment(us).isoformat()
