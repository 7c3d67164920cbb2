"""The embedded engine's LISTEN: it reads the events table after the last id it saw.

No LISTEN/NOTIFY in SQLite: a write that would notify adds rows to the ``events`` table in its
transaction (``_connection.Tx.notify``). A listener reads the rows after the last id it saw every
:data:`LISTEN_POLL` seconds, and at once when a write of this process pokes it (a byte on a socket
pair, so a poke from any thread or event loop wakes it).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from ..._errors import DatabaseError
from ..._models import Notification
from ._connection import SqliteConnections, Tx, wakers, wakers_lock

T = TypeVar("T")

#: How often an idle listener looks for other processes' events (seconds). A poke from a write
#: of this process wakes it at once.
LISTEN_POLL = 0.05


class SqliteListener:
    """The embedded engine's LISTEN: reads the events table after the last id seen.

    It reads every :data:`LISTEN_POLL` seconds, and at once when a write of this process (any
    driver on the same file and schema, any thread) pokes its socket pair. Waiting on the socket
    is an ordinary checkpoint on trio and asyncio alike, so cancelling a wait is instant.
    """

    def __init__(self, driver: SqliteConnections) -> None:
        self._driver = driver
        self._last: int | None = None
        self._socks: tuple[socket.socket, socket.socket] | None = None

    async def connect(self) -> None:
        await self.aclose()
        # Registered before the last id is read: an event committed meanwhile is either at or
        # before that id (skipped, as LISTEN skips what came before it) or after it (read by the
        # next wait, whose poke may already be waiting on the socket). None is lost.
        recv, send = socket.socketpair()
        recv.setblocking(False)
        send.setblocking(False)
        with wakers_lock:
            wakers.setdefault(self._driver._key, set()).add(send)
        self._socks = (recv, send)
        try:
            row = await self._read(lambda tx: tx.execute("last_event").fetchone())
        except BaseException:
            await self.aclose()
            raise
        self._last = int(row[0])

    async def _read(self, fn: Callable[[Tx], T]) -> T:
        # Not through the driver's observers: like PostgreSQL's LISTEN connection, the listener's
        # polls are not the app's database calls (the metrics count those).
        return await anyio.to_thread.run_sync(lambda: self._driver._run(fn, write=False))

    def _events(self, tx: Tx) -> list[tuple[int, str]]:
        return [(int(i), str(p)) for i, p in tx.execute("events_after", {"after": self._last})]

    async def wait(self, keepalive: float) -> list[Notification]:
        if self._socks is None or self._last is None:
            raise DatabaseError("the listener is not connected")
        recv = self._socks[0]
        deadline = anyio.current_time() + keepalive
        while True:
            rows = await self._read(self._events)
            if rows:
                self._last = rows[-1][0]
                out = []
                for _, payload in rows:
                    kind, _, value = payload.partition(":")
                    out.append(Notification(kind=kind, value=value))
                return out
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return []
            with anyio.move_on_after(min(LISTEN_POLL, remaining)):
                await anyio.wait_readable(recv)
            with contextlib.suppress(BlockingIOError):  # drain the pokes: one read covers them all
                while recv.recv(4096):
                    pass

    async def aclose(self) -> None:
        socks, self._socks = self._socks, None
        self._last = None
        if socks is None:
            return
        recv, send = socks
        with wakers_lock:
            registered = wakers.get(self._driver._key)
            if registered is not None:
                registered.discard(send)
                if not registered:
                    del wakers[self._driver._key]
        recv.close()
        send.close()
