"""Metric rollups: finished attempts counted in memory and added to the database per interval.

A worker's executor hands every decided outcome to a :class:`RollupCounter` (synchronous, a dict
update); the :class:`~nursery_worker._maintenance.rollups.RollupWriter` service drains it every
``rollup_interval`` seconds into one upsert that adds the counts to the minute and hour rows
(``Driver.write_rollups``). The dashboard sums those rows over any range; it never scans jobs.

Durations go into a fixed log-scale histogram, so histograms of different workers and minutes add
up and percentiles can be read from any sum of them: bucket 0 holds attempts under 1 ms, bucket
``i`` (1..46) those under ``2 ** (i / 2)`` ms, and the last bucket everything longer (about 2.3 h
and over). The error of a percentile is at most one bucket: a factor of sqrt(2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import attrs

from ._models import HISTOGRAM_BUCKETS as HISTOGRAM_BUCKETS
from ._models import RollupRow

_FIRST = 0.001  # seconds: the upper bound of bucket 0


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a duration of *seconds*."""
    if not seconds >= _FIRST:  # also NaN and negative durations
        return 0
    index = math.floor(2 * math.log2(seconds / _FIRST)) + 1
    return min(index, HISTOGRAM_BUCKETS - 1)


def bucket_upper(index: int) -> float:
    """The upper bound, in seconds, of bucket *index* (the last bucket's is infinite)."""
    if index >= HISTOGRAM_BUCKETS - 1:
        return math.inf
    return float(_FIRST * 2 ** (index / 2))


def add_histograms(histograms: Iterable[Sequence[int]]) -> list[int]:
    """The bucket-by-bucket sum of *histograms* (each of :data:`HISTOGRAM_BUCKETS` counts)."""
    total = [0] * HISTOGRAM_BUCKETS
    for histogram in histograms:
        for i, n in enumerate(histogram[:HISTOGRAM_BUCKETS]):
            total[i] += n
    return total


def percentile(histogram: Sequence[int], q: float) -> float | None:
    """The duration, in seconds, that a fraction *q* of the counted attempts did not exceed.

    Read as the upper bound of the bucket holding that rank (for the last, open bucket: its lower
    bound). None when the histogram is empty.
    """
    total = sum(histogram)
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for i, n in enumerate(histogram):
        seen += n
        if seen >= rank:
            return bucket_upper(i) if i < HISTOGRAM_BUCKETS - 1 else bucket_upper(i - 1)
    return bucket_upper(HISTOGRAM_BUCKETS - 2)


@attrs.define
class _Counts:
    completed: int = 0
    failed: int = 0
    discarded: int = 0
    cancelled: int = 0
    duration_sum: float = 0.0
    histogram: list[int] = attrs.Factory(lambda: [0] * HISTOGRAM_BUCKETS)


@attrs.define
class RollupCounter:
    """The finished attempts counted since the last :meth:`drain`, by (queue, task, error type)."""

    _counts: dict[tuple[str, str, str], _Counts] = attrs.Factory(dict)

    def count(self, *, queue: str, task: str, state: str, error_type: str | None, duration: float) -> None:
        """Count one attempt that ended in *state* (``completed``, ``retryable``, ``discarded``,
        ``cancelled``; others, such as a snooze or a hand-back, are not counted) after *duration* s."""
        if state not in ("completed", "retryable", "discarded", "cancelled"):
            return
        key = (queue, task, (error_type or "") if state in ("retryable", "discarded") else "")
        c = self._counts.get(key)
        if c is None:
            c = self._counts[key] = _Counts()
        if state == "completed":
            c.completed += 1
        elif state == "retryable":
            c.failed += 1
        elif state == "discarded":
            c.discarded += 1
        else:
            c.cancelled += 1
        c.duration_sum += duration
        c.histogram[bucket_of(duration)] += 1

    def __len__(self) -> int:
        return len(self._counts)

    def drain(self) -> list[RollupRow]:
        """The rows counted so far, and start counting afresh."""
        counts, self._counts = self._counts, {}
        return [
            RollupRow(
                queue=queue,
                task=task,
                error_type=error_type,
                completed=c.completed,
                failed=c.failed,
                discarded=c.discarded,
                cancelled=c.cancelled,
                duration_sum=c.duration_sum,
                histogram=tuple(c.histogram),
            )
            for (queue, task, error_type), c in sorted(counts.items())
        ]

    def restore(self, rows: Iterable[RollupRow]) -> None:
        """Add *rows* back (a write that failed): they go out with the next interval's."""
        for row in rows:
            key = (row.queue, row.task, row.error_type)
            c = self._counts.get(key)
            if c is None:
                c = self._counts[key] = _Counts()
            c.completed += row.completed
            c.failed += row.failed
            c.discarded += row.discarded
            c.cancelled += row.cancelled
            c.duration_sum += row.duration_sum
            c.histogram = add_histograms((c.histogram, row.histogram))
