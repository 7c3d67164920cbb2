"""The command line's part of the dashboard: ``jobs show --why`` (the diagnosis the job page shows)
and ``web``'s refusals before it serves anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nursery_worker import App
from nursery_worker._cli import cli


def test_jobs_show_why_names_a_paused_queue(migrated: App, engine_dsn: str, engine_schema: str) -> None:
    """``jobs show ID --why --json`` lists the paused queue among the reasons."""

    @migrated.task(queue="parked", name="web.parked")
    def parked() -> None: ...

    job = parked.defer_sync()
    migrated.close()
    runner = CliRunner()
    paused = runner.invoke(cli, ["queues", "pause", "parked", "--dsn", engine_dsn, "--schema", engine_schema])
    assert paused.exit_code == 0, paused.output
    shown = runner.invoke(
        cli, ["jobs", "show", str(job.id), "--why", "--json", "--dsn", engine_dsn, "--schema", engine_schema]
    )
    assert shown.exit_code == 0, shown.output
    codes = [r["code"] for r in json.loads(shown.output)["why"]]
    assert "queue_paused" in codes and "no_worker" in codes


def test_web_read_write_needs_a_token(engine_dsn: str) -> None:
    """``web --read-write`` without a token exits with a usage error before serving."""
    result = CliRunner().invoke(
        cli, ["web", "--read-write", "--dsn", engine_dsn], env={"NURSERY_WORKER_WEB_TOKEN": None}
    )
    assert result.exit_code == 2 and "--token" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_web_command_serves_on_each_backend(backend: str, tmp_path: Path) -> None:
    """``nursery-worker web --backend B`` serves the overview's JSON twin on loopback."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dsn = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    command = [sys.executable, "-m", "nursery_worker", "web", "--dsn", dsn, "--port", str(port), "--backend", backend]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/overview", timeout=5) as answer:
                    body = json.loads(answer.read())
                break
            except OSError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "the dashboard did not answer within 30 s"
                time.sleep(0.1)  # polling a port that is not open yet
        assert "attention" in body
    finally:
        server.terminate()
        server.wait(30)
