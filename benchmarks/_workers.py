"""Start worker processes for the harness and read what they report."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from typing import Any

from ._common import ROOT


def worker_env(dsn: str, schema: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        NURSERY_WORKER_DSN=dsn,
        NURSERY_WORKER_SCHEMA=schema,
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
    )
    env.update(extra)
    return env


def runner_cmd(
    backend: str,
    concurrency: int,
    *,
    once: bool = True,
    listen: bool = True,
    poll_interval: float = 1.0,
    rss: bool = False,
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks._runner",
        "--backend",
        backend,
        "--concurrency",
        str(concurrency),
        "--poll-interval",
        str(poll_interval),
    ]
    if once:
        cmd.append("--once")
    if not listen:
        cmd.append("--no-listen")
    if rss:
        cmd.append("--rss")
    return cmd


def start_runner(dsn: str, schema: str, backend: str, concurrency: int, **kwargs: Any) -> subprocess.Popen[str]:
    env = worker_env(dsn, schema, **kwargs.pop("env", {}))
    return subprocess.Popen(
        runner_cmd(backend, concurrency, **kwargs),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_runner(proc: subprocess.Popen[str], timeout: float = 600) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited with {proc.returncode}: {err[-2000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"worker printed no result: {out[-500:]} {err[-1500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_once(dsn: str, schema: str, backend: str, concurrency: int, **kwargs: Any) -> dict[str, Any]:
    """One worker process, ``--once``: works off what is queued and exits."""
    return finish_runner(start_runner(dsn, schema, backend, concurrency, once=True, **kwargs))


@functools.cache
def cli_has_processes() -> bool:
    """Does ``nursery-worker run`` have ``--processes`` (the supervisor) yet?"""
    proc = subprocess.run(
        [sys.executable, "-m", "nursery_worker", "run", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    return "--processes" in proc.stdout


def start_cli(dsn: str, schema: str, backend: str, concurrency: int, processes: int) -> subprocess.Popen[str]:
    """``nursery-worker run --processes N`` on the harness's app: a supervisor (or, at 1, one worker).

    It runs until signalled (``--once`` is a single-process mode); stop it with :func:`stop_cli`.
    """
    cmd = [
        sys.executable,
        "-m",
        "nursery_worker",
        "run",
        "--app",
        "benchmarks.bench_app:app",
        "--queues",
        "bench",
        "--concurrency",
        str(concurrency),
        "--backend",
        backend,
        "--processes",
        str(processes),
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=worker_env(dsn, schema), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def stop_cli(proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """SIGTERM (a graceful stop of every child), then wait; raises if it did not exit cleanly."""
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"nursery-worker run exited with {proc.returncode}: {stderr[-2000:]}")
