"""``nursery-worker run --reload``: restart the worker when the app's source files change (development).

The reloader is a parent process that never imports the app. It runs the real worker as a child,
``nursery-worker run ...`` with the same options but without ``--reload``, so each generation
imports the app's code afresh in a new interpreter (no stale modules, no half-reloaded state).
One task group per generation holds the file watcher (``watchfiles.awatch``, on this event loop),
the wait for the child, and the signal relay: a change stops the child gracefully (SIGTERM: its
``--shutdown-timeout`` applies) and starts the next; a child that exits by itself (a syntax error
in the new code) is restarted at the next change. SIGTERM/SIGINT are forwarded to the child (a
second one stops it at once, as ``run`` does) and the reloader exits with the child's status. The
child runs in a session of its own, so Ctrl-C in a terminal reaches it once, through the reloader.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import click

logger = logging.getLogger("nursery_worker.cli")

#: The child's environment sets it off, so that ``$NURSERY_WORKER_RELOAD`` cannot recurse.
RELOAD_ENV = "NURSERY_WORKER_RELOAD"


def check_available() -> None:
    """Raise ``click.UsageError`` if watchfiles is not installed."""
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        raise click.UsageError("--reload needs watchfiles: pip install 'nursery-worker[reload]'") from None


def source_root(app_path: str) -> Path:
    """The directory holding the app's top-level package or module, found without importing it.

    Raises:
        click.UsageError: the module cannot be found.
    """
    top = app_path.partition(":")[0].split(".")[0]
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    spec = importlib.util.find_spec(top) if top else None
    if spec is None or (spec.origin is None and not spec.submodule_search_locations):
        raise click.UsageError(f"--reload: cannot find module {top!r} of --app {app_path!r} to watch")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    assert spec.origin is not None
    return Path(spec.origin).parent


def child_argv(argv: Sequence[str]) -> list[str]:
    """``python -m nursery_worker`` and this command's arguments without ``--reload``."""
    return [sys.executable, "-m", "nursery_worker", *(arg for arg in argv if arg != "--reload")]


async def reload(args: Sequence[str], root: Path) -> int:
    """Run the worker *args* (this command's arguments) describe as a child, restarting it when a
    ``.py`` file under *root* changes, until SIGTERM/SIGINT.

    Returns:
        The exit status of the last child (negative: the signal that ended it).
    """
    from watchfiles import PythonFilter, awatch

    argv = child_argv(args)
    env = {**os.environ, RELOAD_ENV: "false"}
    logger.info("--reload: watching the .py files under %s; the worker restarts when one changes", root)
    stopping = False
    status = 0
    while True:
        process = await anyio.open_process(argv, stdin=None, stdout=None, stderr=None, env=env, start_new_session=True)
        restart = anyio.Event()
        stop_watching = anyio.Event()

        async def watch(process: anyio.abc.Process, restart: anyio.Event, stop_watching: anyio.Event) -> None:
            watcher = awatch(root, watch_filter=PythonFilter(), stop_event=stop_watching)
            async with contextlib.aclosing(watcher) as batches:
                async for changes in batches:
                    names = ", ".join(sorted({Path(path).name for _, path in changes}))
                    logger.info("--reload: %s changed; stopping the worker to restart it", names)
                    restart.set()
                    _signal(process, signal.SIGTERM)
                    return

        async def relay(process: anyio.abc.Process, *, task_status: anyio.abc.TaskStatus[None]) -> None:
            nonlocal stopping
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                task_status.started()
                async for _ in signals:
                    stopping = True
                    _signal(process, signal.SIGTERM)  # a second one: the worker stops at once

        async with anyio.create_task_group() as tg:
            await tg.start(relay, process)
            tg.start_soon(watch, process, restart, stop_watching)
            status = await process.wait()
            stop_watching.set()  # the watcher's thread returns within a step
            tg.cancel_scope.cancel()
        if stopping:
            return status
        if not restart.is_set():
            logger.warning(
                "--reload: the worker exited with status %d; it restarts when a .py file under %s changes", status, root
            )
            if not await _wait_for_change(root, awatch, PythonFilter()):
                return status
        logger.info("--reload: restarting the worker")


async def _wait_for_change(root: Path, awatch: Any, watch_filter: Any) -> bool:
    """Wait for a change under *root* (True), or for SIGTERM/SIGINT (False)."""
    stop_watching = anyio.Event()
    changed = False

    async def watch(scope: anyio.CancelScope) -> None:
        nonlocal changed
        async with contextlib.aclosing(awatch(root, watch_filter=watch_filter, stop_event=stop_watching)) as batches:
            async for _ in batches:
                changed = True
                break
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch, tg.cancel_scope)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        stop_watching.set()
    return changed


def _signal(process: anyio.abc.Process, signum: signal.Signals) -> None:
    """Send *signum* to the child unless it has exited already."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)
