"""Helpers of the fault tests: worker subprocesses, their CPU time, a private PostgreSQL server."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[2]
LEDGER_APP = "tests.faults.ledger_app:app"


def named(dsn: str, application_name: str) -> str:
    """*dsn* with an application_name, so that a test can find (and terminate) exactly those backends."""
    return make_conninfo(dsn, application_name=application_name)


def worker_env(dsn: str, schema: str, **extra: str) -> dict[str, str]:
    """The environment of a worker subprocess: only our DSN and schema, the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    env.update(NURSERY_WORKER_DSN=dsn, NURSERY_WORKER_SCHEMA=schema, PYTHONPATH=str(ROOT), **extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class WorkerProcess:
    """A ``nursery-worker run`` subprocess (of the ledger app, unless told another); its output goes to files."""

    def __init__(self, process: anyio.abc.Process, out: Path, err: Path) -> None:
        self.process = process
        self.out_path = out
        self.err_path = err

    @classmethod
    async def start(
        cls, tmp_path: Path, env: dict[str, str], *args: str, name: str = "worker", app: str = LEDGER_APP
    ) -> WorkerProcess:
        out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            process = await anyio.open_process(
                [sys.executable, "-m", "nursery_worker", "run", "--app", app, *args],
                cwd=ROOT,
                env=env,
                stdout=stdout,
                stderr=stderr,
            )
        return cls(process, out, err)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    def alive(self) -> bool:
        return self.process.returncode is None

    def signal(self, signum: int) -> None:
        assert self.alive(), f"the worker exited early ({self.process.returncode}):\n{self.stderr}"
        self.process.send_signal(signum)

    async def wait(self, within: float = 60.0) -> int:
        """Wait (bounded) for the process to exit; return its status."""
        with anyio.move_on_after(within):
            return await self.process.wait()
        raise AssertionError(f"the worker did not exit within {within}s:\n{self.stderr}")

    async def aclose(self) -> None:
        """Test clean-up: kill it if it still runs (a stopped process is continued first)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
                self.process.kill()
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            await self.process.wait()
        await self.process.aclose()


async def rows(conn: psycopg.Connection[Any], statement: Any, params: Sequence[Any] | None = None) -> list[Any]:
    """Run a query on the test's connection in a thread; return its rows."""
    return await anyio.to_thread.run_sync(lambda: conn.execute(statement, params).fetchall())


async def scalar(conn: psycopg.Connection[Any], statement: Any, params: Sequence[Any] | None = None) -> Any:
    (row,) = await rows(conn, statement, params)
    return row[0]


async def terminate_backends(conn: psycopg.Connection[Any], application_name: str) -> int:
    """pg_terminate_backend every backend with *application_name* (never the caller's); return how many."""
    killed = await rows(
        conn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = %s AND pid <> pg_backend_pid()",
        [application_name],
    )
    return len(killed)


# --- a private PostgreSQL server ----------------------------------------------------------------


class PrivateServer:
    """A PostgreSQL cluster of our own (initdb in a temporary directory, a free port on 127.0.0.1).

    The fault tests stop and start it at will; the shared cluster of the test suite is never touched.
    PostgreSQL refuses to run as root, so under root every command runs as the ``postgres`` user.
    """

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb") or ""]
        self.bin = Path(found[-1]).parent
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="nw-faults-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.base, "postgres", "postgres")
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.running = False

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, text=True, timeout=timeout)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N", "-E", "UTF8")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off "
            "-c max_connections=100"
        )
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o",
                  options, "start")  # fmt: skip
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def destroy(self) -> None:
        """Stop it (immediately) if it runs and delete its files; never raises."""
        if self.running:
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def create_schema_with_ledger(self, schema: str) -> None:
        from .ledger_app import create_ledger

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            create_ledger(conn, schema)
