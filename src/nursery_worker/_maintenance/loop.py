"""The loop every periodic maintenance service runs in."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import anyio

from .._backoff import ServiceBackoff
from .._errors import RETRYABLE_ERRORS

logger = logging.getLogger("nursery_worker.maintenance")


async def serve_periodically(
    name: str,
    interval: float,
    run_once: Callable[[], Awaitable[object]],
    *,
    jitter: float = 0.1,
    first_after: float = 0.0,
) -> None:
    """Call *run_once* every *interval* seconds (± *jitter*), the first time after *first_after*.

    A database error is logged and retried with backoff, never fatal.
    """
    backoff = ServiceBackoff(cap=max(interval, 1.0))
    await anyio.sleep(first_after)
    while True:
        try:
            await run_once()
        except RETRYABLE_ERRORS as exc:
            delay = backoff.next()
            logger.warning("%s: %s; retrying in %.1fs", name, exc, delay)
            await anyio.sleep(delay)
            continue
        backoff.reset()
        await anyio.sleep(interval * random.uniform(1 - jitter, 1 + jitter))
