"""Fixtures of the fault tests: the ledger table in the test's schema, and a private PostgreSQL server."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import psycopg
import pytest

from nursery_worker import App

from .helpers import PrivateServer
from .ledger_app import Ledger, create_ledger


@pytest.fixture
def ledger(app: App, dsn: str, schema: str, db: psycopg.Connection[tuple[object, ...]]) -> Iterator[Ledger]:
    """The ledger table in the test's (migrated) schema, and a writer of its rows for in-process workers."""
    create_ledger(db, schema)
    writer = Ledger(dsn, schema, application_name=f"ledger-{schema}")
    yield writer
    writer.close()


@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivateServer]:
    """A PostgreSQL server of this module's own, which its tests may stop and start; always stopped after."""
    server = PrivateServer()
    try:
        if not server.bin.joinpath("initdb").exists():
            pytest.skip("no PostgreSQL server binaries (initdb) on this machine for a private server")
        try:
            server.init()
            server.start()
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or exc
            pytest.skip(f"cannot start a private PostgreSQL server (needs initdb/pg_ctl, as root runuser): {detail}")
        yield server
    finally:
        server.destroy()
