"""`nursery-worker run --metrics-port P`, as a user runs it: one worker, and a supervisor of two whose one
endpoint merges its children's metrics."""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nursery_worker import App

from .test_supervisor import FAST, SupervisorProcess, defer, poll
from .test_supervisor import start as start  # a fixture

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError:
        return 0, ""  # not listening yet


def samples(port: int, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples named *name* of one scrape."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    return [
        (s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples if s.name == name
    ]


def completed(port: int) -> dict[str, float]:
    """nursery_worker_jobs_completed_total of task "record" by worker label ("" for a single worker)."""
    found = samples(port, "nursery_worker_jobs_completed_total")
    return {labels.get("worker", ""): value for labels, value in found if labels.get("task") == "record"}


def running_workers(port: int) -> set[str]:
    """The worker labels whose state gauge says running."""
    found = samples(port, "nursery_worker_worker_state")
    return {labels["worker"] for labels, value in found if labels["state"] == "running" and value == 1}


def test_a_single_worker_serves_metrics_and_health(start: Callable[..., SupervisorProcess], app: App) -> None:
    """`run --metrics-port` serves /healthz, /readyz once running, and /metrics whose counters follow the jobs."""
    port = free_port()
    sup = start("--app", "myjobs:app", "--metrics-port", str(port), *FAST)
    poll("ready", lambda: get(port, "/readyz")[0] == 200, sup)
    assert get(port, "/healthz") == (200, "ok\n")
    defer(app, "record", 4)
    poll("4 completed", lambda: completed(port) == {"": 4.0}, sup)
    sup.signal(signal.SIGTERM)
    assert sup.wait() == 0


def test_the_supervisor_merges_its_childrens_metrics(start: Callable[..., SupervisorProcess], app: App) -> None:
    """Under `--processes 2` one endpoint is ready once both children are, and sums to every job by worker label."""
    port = free_port()
    sup = start("--app", "myjobs:app", "--processes", "2", "--metrics-port", str(port), *FAST)
    poll("ready", lambda: get(port, "/readyz")[0] == 200, sup)
    assert get(port, "/healthz") == (200, "ok\n")
    # Ready means every child's endpoint is up: both are in the very next scrape.
    assert running_workers(port) == {"0", "1"}
    defer(app, "record", 10)
    by_worker = poll("10 completed", lambda: (c := completed(port)) and sum(c.values()) == 10 and c, sup)
    assert set(by_worker) <= {"0", "1"}
    families = poll(
        "one merged family", lambda: get(port, "/metrics")[1].count("# TYPE nursery_worker_jobs_completed_total ")
    )
    assert families == 1
    sup.signal(signal.SIGTERM)
    assert sup.wait() == 0
