"""Tasks of a script run as ``python script.py`` get the name a worker that imports the script knows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """\
import os

from nursery_worker import App

app = App(dsn=os.environ["SCRIPT_DSN"], schema=os.environ["SCRIPT_SCHEMA"])


@app.task
def shout(word: str) -> str:
    return word.upper()


if __name__ == "__main__":
    app.migrate_sync()
    job = shout.defer_sync(word="hi")
    print(shout.name, job.id)
"""

WORKER = """\
import anyio
from nursery_worker.testing import drain

import {module} as jobs


async def main() -> None:
    await drain(jobs.app, timeout=30)
    job = await jobs.app.get_job({job_id})
    print(job.state.value, job.result)


anyio.run(main)
"""


def run(args: list[str], *, cwd: Path, dsn: str, schema: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SCRIPT_DSN": dsn, "SCRIPT_SCHEMA": schema}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def write_script(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(SCRIPT)
    return script


def test_a_script_task_runs_on_a_worker_that_imports_the_script(
    tmp_path: Path, engine_dsn: str, engine_schema: str
) -> None:
    """``python jobs_script.py`` names its task ``jobs_script.shout``, and a worker importing it completes the job."""
    script = write_script(tmp_path / "project", "jobs_script.py")
    enqueued = run([sys.executable, str(script)], cwd=tmp_path, dsn=engine_dsn, schema=engine_schema)
    assert enqueued.returncode == 0, enqueued.stderr
    name, job_id = enqueued.stdout.split()
    assert name == "jobs_script.shout"
    worker = WORKER.format(module="jobs_script", job_id=job_id)
    worked = run([sys.executable, "-c", worker], cwd=script.parent, dsn=engine_dsn, schema=engine_schema)
    assert worked.returncode == 0, worked.stderr
    assert worked.stdout.split() == ["completed", "HI"]


def test_a_script_inside_a_package_is_named_by_its_package(tmp_path: Path, engine_dsn: str, engine_schema: str) -> None:
    """``python pkg/jobs_script.py`` with ``pkg/__init__.py`` names its task ``pkg.jobs_script.shout``."""
    script = write_script(tmp_path / "pkg", "jobs_script.py")
    (tmp_path / "pkg" / "__init__.py").write_text("")
    enqueued = run([sys.executable, str(script)], cwd=tmp_path, dsn=engine_dsn, schema=engine_schema)
    assert enqueued.returncode == 0, enqueued.stderr
    name, job_id = enqueued.stdout.split()
    assert name == "pkg.jobs_script.shout"
    worker = WORKER.format(module="pkg.jobs_script", job_id=job_id)
    worked = run([sys.executable, "-c", worker], cwd=tmp_path, dsn=engine_dsn, schema=engine_schema)
    assert worked.returncode == 0, worked.stderr
    assert worked.stdout.split() == ["completed", "HI"]


def test_a_script_whose_file_name_is_not_a_module_is_refused(
    tmp_path: Path, engine_dsn: str, engine_schema: str
) -> None:
    """``python my-jobs.py`` refuses ``@app.task`` without ``name=``, with a message that asks for one."""
    script = write_script(tmp_path, "my-jobs.py")
    result = run([sys.executable, str(script)], cwd=tmp_path, dsn=engine_dsn, schema=engine_schema)
    assert result.returncode == 1
    assert "ConfigurationError" in result.stderr
    assert "'my-jobs.py' is not a module name" in result.stderr and "@app.task(name=...)" in result.stderr


def test_a_module_run_with_dash_m_keeps_its_module_name(tmp_path: Path, engine_dsn: str, engine_schema: str) -> None:
    """``python -m pkg.jobs_script`` names its task ``pkg.jobs_script.shout``, as an import of it does."""
    write_script(tmp_path / "pkg", "jobs_script.py")
    (tmp_path / "pkg" / "__init__.py").write_text("")
    enqueued = run([sys.executable, "-m", "pkg.jobs_script"], cwd=tmp_path, dsn=engine_dsn, schema=engine_schema)
    assert enqueued.returncode == 0, enqueued.stderr
    assert enqueued.stdout.split()[0] == "pkg.jobs_script.shout"
