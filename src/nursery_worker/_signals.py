"""The one signal relay, and the one helper that turns a single-error exception group back into the error.

Every process that runs workers stops them on signals the same way: ``Worker.serve_until_signalled``,
``nursery-worker run``, a supervised child and the supervisor itself all feed their signal receiver
to :func:`relay_signals`. The first stop signal stops gracefully, a second one stops at once, and
a signal before there is anything to stop cancels the start.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

_worker_logger = logging.getLogger("nursery_worker.worker")


class Stoppable(Protocol):
    """What a signal stops: a worker or a supervisor."""

    def stop(self, *, hard: bool = False) -> None: ...


def _nothing() -> None:
    pass


async def relay_signals(
    received: AsyncIterator[int],
    target: Callable[[], Stoppable | None],
    during_startup: Callable[[], None] = _nothing,
    *,
    on_signal: Callable[[], None] | None = None,
    actions: Mapping[int, Callable[[], None]] | None = None,
    subject: str = "",
    logger: logging.Logger = _worker_logger,
) -> None:
    """First signal: stop *target()* gracefully; second: stop it at once; before it runs: *during_startup*.

    Args:
        received: the signal numbers, as ``anyio.open_signal_receiver`` yields them.
        target: what to stop, or None while it is still starting.
        during_startup: called on a stop signal while *target()* is None (cancel the start).
        on_signal: called first at every stop signal (the CLI arms its exit watchdog).
        actions: signals with a meaning of their own, and what each does instead of stopping
            (the supervisor's SIGHUP restarts its children; a child's SIGUSR1 stops it at once).
        subject: what is stopped, for the log lines (``"every child "`` reads "stopping every
            child gracefully").
        logger: where the log lines go.
    """
    seen = 0
    async for signum in received:
        if actions is not None and signum in actions:
            actions[signum]()
            continue
        seen += 1
        if on_signal is not None:
            on_signal()
        name = signal.Signals(signum).name
        current = target()
        if current is None:
            logger.warning("%s during startup: stopping", name)
            during_startup()
        elif seen == 1:
            logger.warning("%s: stopping %sgracefully (send it again to stop now)", name, subject)
            current.stop()
        else:
            logger.warning("%s again: stopping %snow", name, subject)
            current.stop(hard=True)


def unwrap_group(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception inside *group* (however nested), or *group* itself if it holds several."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for e in exc.exceptions:
                walk(e)
        else:
            leaves.append(exc)

    walk(group)
    return leaves[0] if len(leaves) == 1 else group


@contextmanager
def single_error() -> Iterator[None]:
    """Re-raise an exception group that holds one error as that error (with its own cause).

    Task groups wrap whatever escapes them in a group the caller did not create; a group of
    several errors is re-raised unchanged.

    Example:
        >>> with single_error():
        ...     anyio.run(main)
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaf = unwrap_group(group)
        if leaf is group:
            raise
        raise leaf from leaf.__cause__
