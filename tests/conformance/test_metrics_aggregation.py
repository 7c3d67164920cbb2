"""Metrics that add up under the supervisor: per-process series once per child, global gauges once,
so the README's PromQL gives the true figures (checked by scraping a supervisor of two children)."""

from __future__ import annotations

import functools
import importlib
import re
import socket
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nursery_worker import App, JobState, Supervisor, run_supervisor
from nursery_worker._metrics import http_get, merge_expositions

from ..integration.helpers import wait_for_state, wait_until

ROOT = Path(__file__).resolve().parents[2]

MODULE = """\
from nursery_worker import App

app = App(schema={schema!r})


@app.task(name="work_a", queue="a")
async def work_a(n: int) -> None:
    pass


@app.task(name="work_b", queue="b")
async def work_b(n: int) -> None:
    pass
"""

FAST: dict[str, Any] = {
    "heartbeat_interval": 0.2,
    "rescue_after": 1.0,
    "poll_interval": 0.1,
    "shutdown_timeout": 5.0,
    "restart_delay": 0.2,
}

Sample = tuple[str, dict[str, str], float]


def _samples(text: str) -> list[Sample]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def _readme_queries() -> list[str]:
    """The PromQL queries of the README's ``promql`` block, comments stripped."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```promql\n(.*?)```", readme, re.S)
    assert block is not None, "the README has no promql block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.split("#", 1)[0].strip()]


_QUERY = re.compile(r"sum(?: by \((?P<by>[^)]*)\))? ?\((?P<name>\w+)(?:\{(?P<match>[^}]*)\})?\)")


def evaluate(query: str, samples: list[Sample]) -> dict[tuple[str, ...], float]:
    """Evaluate ``sum [by (labels)] (metric{label="value",...})`` over one scrape, as Prometheus would."""
    m = _QUERY.fullmatch(query)
    assert m is not None, f"the test cannot evaluate {query!r}"
    by = [b.strip() for b in (m["by"] or "").split(",") if b.strip()]
    match = dict(re.findall(r'(\w+)="([^"]*)"', m["match"] or ""))
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for name, labels, value in samples:
        if name == m["name"] and all(labels.get(k) == v for k, v in match.items()):
            out[tuple(labels.get(b, "") for b in by)] += value
    return dict(out)


@pytest.fixture
def module(tmp_path: Path, engine_schema: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An importable app module (unique name) on sys.path; the children get the same sys.path."""
    name = f"aggjobs_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODULE.format(schema=engine_schema))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_readme_promql_gives_the_true_figures_over_two_children(
    module: Any, app: App, engine_dsn: str
) -> None:
    """Scraping a supervisor of two children, the README's sums give the completed jobs, the backlog once, and 2."""
    parked = await app.defer_many([app.job_by_name("work_a", {"n": n}, queue="parked") for n in range(4)])
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(90):
            supervisor: Supervisor = await tg.start(
                functools.partial(
                    run_supervisor,
                    module.__name__ + ":app",
                    processes=2,
                    queues="a,b",
                    metrics_port=0,
                    handle_signals=False,
                    dsn=engine_dsn,
                    **FAST,
                )
            )
            port = supervisor.metrics_port
            assert port is not None

            async def ready() -> bool:
                # Every child's endpoint is up (a child reports its port a moment after RUNNING).
                return (await http_get("127.0.0.1", port, "/readyz"))[0] == 200

            await wait_until(ready, within=30)
            done = await app.defer_many(
                [app.job_by_name("work_a", {"n": n}, queue="a") for n in range(5)]
                + [app.job_by_name("work_b", {"n": n}, queue="b") for n in range(3)]
            )
            for job in done:
                await wait_for_state(app, job.id, JobState.COMPLETED, within=60)
            completed = "sum by (queue, task) (nursery_worker_jobs_completed_total)"
            expected = {
                completed: {("a", "work_a"): 5.0, ("b", "work_b"): 3.0},
                'sum by (queue) (nursery_worker_queue_depth{state="available"})': {("parked",): 4.0},
                'sum(nursery_worker_worker_state{state="running"})': {(): 2.0},
            }
            assert _readme_queries() == list(expected)

            async def scrape() -> list[Sample]:
                status, body = await http_get("127.0.0.1", port, "/metrics")
                assert status == 200, body
                return _samples(body.decode())

            async def counted() -> list[Sample] | None:
                # An outcome is counted once its write is known, a moment after the job shows completed.
                found = await scrape()
                return found if evaluate(completed, found) == expected[completed] else None

            samples = await wait_until(counted, within=30)
            for query, figures in expected.items():
                assert evaluate(query, samples) == figures, query
            depth = [labels for name, labels, _ in samples if name == "nursery_worker_queue_depth"]
            assert all("worker" not in labels for labels in depth)
            assert len(depth) == len({(d["queue"], d["state"]) for d in depth})
            assert {labels["worker"] for name, labels, _ in samples if name == "nursery_worker_running_jobs"} == {
                "0",
                "1",
            }
            supervisor.stop()
            await supervisor.wait_stopped()
    assert [(await app.get_job(j.id)).state for j in parked] == [JobState.AVAILABLE] * 4


def test_a_global_family_is_merged_once_without_a_worker_label() -> None:
    """Merging children's texts keeps the first text's queue depth, unlabelled, and labels per-process series."""
    text = (
        "# HELP nursery_worker_queue_depth Jobs.\n"
        "# TYPE nursery_worker_queue_depth gauge\n"
        'nursery_worker_queue_depth{{queue="q",state="available"}} {depth}\n'
        "# HELP nursery_worker_running_jobs Jobs executing now.\n"
        "# TYPE nursery_worker_running_jobs gauge\n"
        "nursery_worker_running_jobs {running}\n"
    )
    merged = merge_expositions([("1", text.format(depth=7, running=2)), ("0", text.format(depth=6, running=3))])
    samples = _samples(merged.decode())
    assert [(labels, value) for name, labels, value in samples if name == "nursery_worker_queue_depth"] == [
        ({"queue": "q", "state": "available"}, 7.0)
    ]
    assert evaluate("sum(nursery_worker_running_jobs)", samples) == {(): 5.0}


class _Slots:
    """The supervisor as its endpoint sees it: the (slot, port) of each child serving metrics."""

    def __init__(self, ports: list[tuple[int, int]]) -> None:
        self.ports = ports

    def metrics_ports(self) -> list[tuple[int, int]]:
        return self.ports

    def not_ready(self) -> list[str]:
        return []


@pytest.mark.anyio
async def test_the_next_child_reports_the_queue_depth_while_the_elected_one_is_down(app: App) -> None:
    """When the lowest slot's endpoint does not answer, the next child's queue depth is reported, once."""
    from nursery_worker import open_worker, serve_metrics
    from nursery_worker._metrics import _supervisor_routes

    await app.defer_many([app.job_by_name("parked_task", {"n": n}, queue="parked") for n in range(3)])
    with socket.socket() as s:  # a port nothing listens on: the elected child, restarting
        s.bind(("127.0.0.1", 0))
        dead = int(s.getsockname()[1])
    async with open_worker(app, queues="a", poll_interval=0.1) as worker, anyio.create_task_group() as tg:
        live = await tg.start(serve_metrics, worker, 0)
        route = _supervisor_routes(_Slots([(0, dead), (1, live)]))
        status, _, body = await route("/metrics")
        tg.cancel_scope.cancel()
    samples = _samples(body.decode())
    assert status == 200
    assert evaluate('sum by (queue) (nursery_worker_queue_depth{state="available"})', samples) == {("parked",): 3.0}
    assert [labels for name, labels, _ in samples if name == "nursery_worker_running_jobs"] == [{"worker": "1"}]
