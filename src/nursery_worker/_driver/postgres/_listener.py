"""The PostgreSQL engine's LISTEN: one connection of its own, waited on from the event loop.

It never blocks a thread: it waits for its socket to become readable on the event loop, so a
cancelled wait returns at once, on trio and asyncio alike.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from psycopg import sql

from ..._errors import DatabaseError
from ..._models import Notification
from ._connection import PostgresConnections

logger = logging.getLogger("nursery_worker.driver")


class PostgresListener:
    """LISTEN on the schema's channel, waiting on the socket from the event loop (no thread)."""

    def __init__(self, driver: PostgresConnections) -> None:
        self._driver = driver
        self._conn: psycopg.Connection[Any] | None = None
        self._backlog: list[psycopg.Notify] = []

    async def connect(self) -> None:
        def connect() -> psycopg.Connection[Any]:
            conn = self._driver._connect()
            try:
                # Notifications that arrive while psycopg itself reads (during LISTEN or the
                # keepalive query) go to this handler; the rest we read off the socket in wait().
                conn.add_notify_handler(self._backlog.append)
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._driver.channel)))
            except psycopg.Error as exc:
                conn.close()
                raise self._driver._translate(exc) from None
            return conn

        await self.aclose()
        self._conn = await anyio.to_thread.run_sync(connect)

    def _take(self) -> list[Notification]:
        notes, self._backlog[:] = list(self._backlog), []
        out = []
        for n in notes:
            kind, _, value = n.payload.partition(":")
            out.append(Notification(kind=kind, value=value))
        return out

    async def wait(self, keepalive: float) -> list[Notification]:
        conn = self._conn
        if conn is None:
            raise DatabaseError("the listener is not connected")
        if self._backlog:
            return self._take()
        with anyio.move_on_after(keepalive) as idle:
            await anyio.wait_readable(conn.fileno())
        try:
            if idle.cancelled_caught:
                # Quiet for a while: prove the link is alive (a dead TCP peer never turns readable).
                await anyio.to_thread.run_sync(conn.execute, "SELECT 1")
                return self._take()
            pgconn = conn.pgconn
            pgconn.consume_input()
            while (n := pgconn.notifies()) is not None:
                self._backlog.append(psycopg.Notify(n.relname.decode(), n.extra.decode(), n.be_pid))
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("the listener connection was closed")
        except psycopg.Error as exc:
            raise self._driver._translate(exc) from None
        return self._take()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover - closing a broken socket
                logger.debug("error closing the listener connection", exc_info=True)
