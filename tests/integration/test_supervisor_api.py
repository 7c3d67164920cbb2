"""`run_supervisor` from Python, on both backends: started in a task group, its handle, stop, and
trace-context propagation into the children."""

from __future__ import annotations

import functools
import importlib
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from nursery_worker import App, ConfigurationError, JobState, Supervisor, run_supervisor

from ..conftest import TEST_DSN
from .helpers import query, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MODULE = """\
import os
from pathlib import Path

from nursery_worker import App, CircuitBreaker

app = App(schema={schema!r})
HERE = Path(__file__).parent


@app.on_startup
async def record_trace_context() -> None:
    try:
        from opentelemetry import trace
    except ImportError:
        return
    ctx = trace.get_current_span().get_span_context()
    (HERE / f"trace-{{os.getpid()}}").write_text(f"{{ctx.trace_id:032x}} {{ctx.span_id:016x}} {{ctx.is_remote}}")


@app.task(name="noop")
async def noop(n: int) -> None:
    pass


@app.task(name="big")
async def big(size: int) -> str:
    return "x" * size


@app.task(name="down", max_attempts=1, circuit_breaker=CircuitBreaker(threshold=2, cooldown=60))
async def down(n: int) -> None:
    raise ConnectionError("the service is down")
"""

FAST: dict[str, Any] = {
    "heartbeat_interval": 0.2,
    "rescue_after": 1.0,
    "poll_interval": 0.1,
    "shutdown_timeout": 5.0,
    "restart_delay": 0.2,
    "dsn": TEST_DSN,
}


@pytest.fixture
def module(tmp_path: Path, schema: str, app: App, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An importable app module (unique name) on sys.path; the children get the same sys.path."""
    name = f"supjobs_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODULE.format(schema=schema))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


async def test_run_supervisor_hands_back_a_handle_once_every_child_runs_and_stops_cleanly(
    module: Any, app: App, db: psycopg.Connection[Any], anyio_backend: str
) -> None:
    """Started with task_group.start, run_supervisor returns a Supervisor whose children all run; stop() ends it."""
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(60):
            supervisor: Supervisor = await tg.start(
                functools.partial(run_supervisor, module.app, processes=2, handle_signals=False, **FAST)
            )
            children = supervisor.children()
            assert [c.index for c in children] == [0, 1]
            assert all(c.state == "running" and c.restarts == 0 for c in children)
            assert len({c.pid for c in children}) == 2
            jobs = await app.defer_many([app.job_by_name("noop", {"n": n}) for n in range(10)])
            await wait_until(lambda: sum(c.processed for c in supervisor.children()) == 10, within=30)
            supervisor.stop()
            await supervisor.wait_stopped()
    assert [(await app.get_job(j.id)).state.value for j in jobs] == ["completed"] * 10
    assert await query(db, "SELECT count(*) FROM workers") == [(0,)]


async def test_each_child_refuses_a_result_over_the_max_result_bytes_it_was_given(
    module: Any, app: App, anyio_backend: str
) -> None:
    """run_supervisor(max_result_bytes=...) reaches every child: a larger result is discarded, a smaller one kept."""
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(60):
            supervisor: Supervisor = await tg.start(
                functools.partial(
                    run_supervisor, module.app, processes=2, handle_signals=False, max_result_bytes=100, **FAST
                )
            )
            small, large = await app.defer_many(
                [app.job_by_name("big", {"size": 98}), app.job_by_name("big", {"size": 99})]
            )
            await wait_until(lambda: sum(c.processed for c in supervisor.children()) == 2, within=30)
            supervisor.stop()
            await supervisor.wait_stopped()
    kept, refused = await app.get_job(small.id), await app.get_job(large.id)
    assert (kept.state, kept.result) == (JobState.COMPLETED, "x" * 98)
    assert (refused.state, refused.result) == (JobState.DISCARDED, None)
    assert "101 bytes of JSON, above the limit of 100 (max_result_bytes)" in refused.errors[-1].message


async def test_cancelling_run_supervisor_stops_every_child(
    module: Any, db: psycopg.Connection[Any], anyio_backend: str
) -> None:
    """Cancelling the scope around run_supervisor stops every child at once; none is left registered."""
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            supervisor: Supervisor = await tg.start(
                functools.partial(run_supervisor, f"{module.__name__}:app", processes=2, handle_signals=False, **FAST)
            )
            pids = [c.pid for c in supervisor.children()]
            tg.cancel_scope.cancel()
    assert await query(db, "SELECT count(*) FROM workers") == [(0,)]
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_the_callers_trace_context_propagates_into_each_child(
    module: Any, tmp_path: Path, anyio_backend: str
) -> None:
    """With OpenTelemetry installed, each child's current span is the supervisor's span, as a remote parent."""
    trace = pytest.importorskip("opentelemetry.trace")
    from opentelemetry import context

    parent = trace.SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    token = context.attach(trace.set_span_in_context(trace.NonRecordingSpan(parent)))
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                supervisor: Supervisor = await tg.start(
                    functools.partial(run_supervisor, module.app, processes=2, handle_signals=False, **FAST)
                )
                pids = [c.pid for c in supervisor.children()]
                supervisor.stop()
    finally:
        context.detach(token)
    seen = [(tmp_path / f"trace-{pid}").read_text() for pid in pids]
    assert seen == ["0af7651916cd43dd8448eb211c80319c b7ad6b7169203331 True"] * 2


async def test_an_app_that_no_module_holds_is_refused_with_the_fix(dsn: str, schema: str, anyio_backend: str) -> None:
    """An App object that is no importable module's global raises ConfigurationError naming the fixes."""
    local_app = App(dsn=dsn, schema=schema)
    with pytest.raises(ConfigurationError) as info:
        await run_supervisor(local_app, processes=2, handle_signals=False)
    assert "python -m" in str(info.value) and "'package.module:app'" in str(info.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"processes": 0}, "run_supervisor(processes=0): must be an int >= 1"),
        ({"processes": 2, "health_timeout": 0}, "run_supervisor(health_timeout=0): must be a number > 0"),
        ({"processes": 2, "max_restarts": -1}, "run_supervisor(max_restarts=-1): must be an int >= 0"),
        ({"processes": 2, "backend": "curio"}, "run_supervisor(backend='curio')"),
    ],
)
async def test_invalid_options_raise_configuration_error(
    module: Any, options: dict[str, Any], message: str, anyio_backend: str
) -> None:
    """Invalid supervisor options raise ConfigurationError naming the option, before any child starts."""
    with pytest.raises(ConfigurationError) as info:
        await run_supervisor(module.app, handle_signals=False, **options)
    assert message in str(info.value)


async def test_an_app_path_that_does_not_import_is_refused(anyio_backend: str) -> None:
    """A 'module:attr' string whose module does not import raises ConfigurationError naming the module."""
    with pytest.raises(ConfigurationError) as info:
        await run_supervisor("no_such_module_here:app", processes=2, handle_signals=False)
    assert "cannot import 'no_such_module_here'" in str(info.value)


async def test_the_supervisor_reports_an_open_circuit_breaker_of_its_children(
    module: Any, app: App, anyio_backend: str
) -> None:
    """After a task's breaker opens, the children's status (and so the supervisor's status line) names it."""
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(60):
            supervisor: Supervisor = await tg.start(
                functools.partial(
                    run_supervisor, module.app, processes=2, handle_signals=False, health_timeout=2, **FAST
                )
            )
            producer = App(dsn=TEST_DSN, schema=app.schema)
            try:
                await producer.defer_many([producer.job_by_name("down", {"n": n}) for n in range(4)])
            finally:
                await producer.aclose()

            def reported() -> bool:
                return any("down" in c.breakers_open for c in supervisor.children())

            await wait_until(reported, within=30)
            assert [b.state for b in await app.list_breakers()] == ["open"]
            supervisor.stop()
