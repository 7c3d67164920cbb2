"""Backoff for reconnects and retried database calls of the worker's own services."""

from __future__ import annotations

import random

import attrs


@attrs.define
class ServiceBackoff:
    """Doubling waits with full jitter, from *first* up to *cap* seconds; :meth:`reset` on success."""

    first: float = 0.1
    cap: float = 5.0
    _current: float = 0.0

    def next(self) -> float:
        self._current = self.first if self._current == 0 else min(self.cap, self._current * 2)
        return random.uniform(self._current / 2, self._current)

    def reset(self) -> None:
        self._current = 0.0
