"""The embedded engine works without psycopg installed, and a PostgreSQL DSN then says which extra to install.

psycopg is made unimportable in a subprocess by a ``sitecustomize`` that puts ``None`` in
``sys.modules`` for it (the state of an environment where it was never installed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

BLOCK = """import sys
for name in ("psycopg", "psycopg_pool", "psycopg_binary", "psycopg_c"):
    sys.modules[name] = None
"""

TASKS = """from nursery_worker import App

app = App()

@app.task(queue="emails", max_attempts=5, timeout=30)
async def send_welcome(user_id: int) -> None:
    print(f"welcome, user {user_id}!")
"""


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` in *cwd* with psycopg unimportable and no DSN in the environment."""
    shim = cwd / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(BLOCK, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURSERY_WORKER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(shim), str(cwd)])
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_quick_start_runs_without_psycopg(tmp_path: Path) -> None:
    """The README's quick start (embedded engine, no DSN) enqueues and runs a job with psycopg unimportable."""
    (tmp_path / "tasks.py").write_text(TASKS, encoding="utf-8")
    defer = run(tmp_path, "-c", "from tasks import send_welcome; print(send_welcome.defer_sync(user_id=42).id)")
    assert defer.returncode == 0, defer.stderr
    assert defer.stdout.strip() == "1"
    worker = run(tmp_path, "-m", "nursery_worker", "run", "--app", "tasks:app", "--queues", "emails", "--once")
    assert worker.returncode == 0, worker.stderr
    assert "welcome, user 42!" in worker.stdout
    check = run(
        tmp_path, "-c", "import tasks, sys; tasks.send_welcome.defer_sync(user_id=1); print(sys.modules['psycopg'])"
    )
    assert check.stdout.strip() == "None", "psycopg was imported by the embedded engine"


def test_a_dsn_without_psycopg_names_the_extra(tmp_path: Path) -> None:
    """App(dsn=postgresql://...) without psycopg raises ConfigurationError naming the extra, not the password."""
    code = """
from nursery_worker import App, ConfigurationError
try:
    App(dsn="postgresql://app:s3cret@127.0.0.1:5432/test")
except ConfigurationError as exc:
    print(exc)
else:
    raise SystemExit("no ConfigurationError")
"""
    result = run(tmp_path, "-c", code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pip install 'nursery-worker[postgres-binary]'" in result.stdout
    assert "s3cret" not in result.stdout


def test_the_cli_without_psycopg_names_the_extra(tmp_path: Path) -> None:
    """``nursery-worker migrate --dsn ...`` without psycopg exits with a one-line error naming the extra."""
    result = run(tmp_path, "-m", "nursery_worker", "migrate", "--dsn", "postgresql://app:s3cret@127.0.0.1:5432/test")
    assert result.returncode != 0
    assert "nursery-worker[postgres-binary]" in result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr
