"""Prometheus metrics and health endpoints (the ``metrics`` extra).

::

    serve_metrics(worker)                     a child of the caller's task group
    └─ HTTP listener                          one task per connection, each under a deadline
       ├─ /metrics   the worker's own CollectorRegistry (queue depth and database health queried on scrape)
       ├─ /healthz   200 while the event loop answers
       └─ /readyz    200 while RUNNING, listener connected, last database call succeeded

The HTTP server is a few lines on anyio's TCP listener rather than a thread of prometheus_client's:
it runs on the worker's own event loop (so ``/healthz`` answering *is* the liveness check) and in
the worker's task tree, for asyncio and trio alike.

Counters live on a :class:`WorkerMetrics` attached to the worker (``worker.metrics``); the worker
observes each attempt as it ends and counts its outcome once the write took effect (a late write
the database ignored counts as ``jobs_ignored``). It is None (nothing recorded) unless metrics are
served. Under the supervisor each child serves its metrics on an ephemeral loopback port named in its
reports, and the supervisor's endpoint merges the children's per-process families with a ``worker``
label. The global gauges (:data:`GLOBAL_FAMILIES`: the queue depth and the database's health, the
same database-wide figures in every child) are asked of one elected child only, the lowest slot
whose endpoint is up (the next one while it restarts), and reported once without a ``worker``
label: summing over ``worker`` then gives the true number for counters and gauges alike.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc

from ._errors import RETRYABLE_ERRORS, ConfigurationError
from ._models import DatabaseHealth, Job, QueueDepth, RescueResult
from ._state import Cancelled, Failed, Outcome, Released, Snoozed, Succeeded, Transition, WorkerState

if TYPE_CHECKING:
    from ._app import App
    from ._config import WorkerConfig


class Worker(Protocol):
    """What the metrics read of a worker (``_worker.Worker``; kept a protocol so that the worker's
    modules and this one do not import each other)."""

    @property
    def app(self) -> App: ...

    @property
    def config(self) -> WorkerConfig: ...

    @property
    def state(self) -> WorkerState: ...

    @property
    def listener_connected(self) -> bool: ...

    @property
    def running_jobs(self) -> tuple[Job, ...]: ...

    metrics: WorkerMetrics | None


class Supervisor(Protocol):
    """What the supervisor's endpoint reads of ``_supervisor.Supervisor``."""

    def metrics_ports(self) -> list[tuple[int, int]]: ...

    def not_ready(self) -> list[str]: ...


logger = logging.getLogger("nursery_worker.metrics")

#: The default bind address: metrics and health stay on the machine unless asked otherwise.
DEFAULT_HOST = "127.0.0.1"
#: Latency buckets in seconds, from a fast job (5 ms) to a long one (an hour).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Families whose values are database-wide, the same in every process: reported once under the supervisor.
GLOBAL_FAMILIES = frozenset(
    {
        "nursery_worker_queue_depth",
        "nursery_worker_oldest_transaction_seconds",
        "nursery_worker_dead_tuples",
        "nursery_worker_live_tuples",
        "nursery_worker_sqlite_wal_bytes",
    }
)
#: The query string a worker's ``/metrics`` takes to leave the global families out (and skip their query).
_NO_GLOBAL = "global=0"
_REQUEST_TIMEOUT = 10.0
_MAX_REQUEST = 16_384


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError("metrics need prometheus-client: pip install 'nursery-worker[metrics]'") from None
    return prometheus_client


def check_available() -> None:
    """Raise :class:`ConfigurationError` (naming the extra) if prometheus-client is not installed."""
    _prometheus()


class WorkerMetrics:
    """The Prometheus metrics of one worker, on a registry of its own.

    Attributes:
        registry: the ``prometheus_client.CollectorRegistry`` that ``/metrics`` renders.
        db_ok: whether the last database call of the worker's app succeeded.
        db_error: the message of the last failed call, while ``db_ok`` is False.
    """

    def __init__(self, worker: Worker, *, depth_interval: float = 1.0) -> None:
        pc = _prometheus()
        self.worker = worker
        self.registry = pc.CollectorRegistry(auto_describe=True)
        self.db_ok = True
        self.db_error = ""
        self._depth: list[QueueDepth] = []
        self._health: DatabaseHealth | None = None
        self._depth_at = -float("inf")
        self._depth_interval = depth_interval
        self._with_global = True  # render() sets it for the duration of one synchronous collection
        labels = ("queue", "task")
        r = self.registry

        def counter(name: str, doc: str, names: Sequence[str] = labels) -> Any:
            return pc.Counter(f"nursery_worker_{name}", doc, names, registry=r)

        self.completed = counter("jobs_completed", "Attempts that succeeded.")
        self.failed = counter("jobs_failed", "Attempts that raised or timed out (retried or discarded).")
        self.retried = counter("jobs_retried", "Failed attempts that will run again.")
        self.discarded = counter("jobs_discarded", "Jobs given up on (attempts exhausted, Discard, bad job).")
        self.cancelled = counter("jobs_cancelled", "Executing jobs stopped by a cancel request.")
        self.snoozed = counter("jobs_snoozed", "Attempts that asked to run again later (Snooze).")
        self.released = counter("jobs_released", "Attempts handed back at shutdown, to run again.")
        self.ignored = counter(
            "jobs_ignored",
            "Late outcomes the database ignored: the job was no longer this attempt's (rescued or handed back).",
        )
        self.rescued = counter(
            "jobs_rescued", "Jobs taken back from dead workers by this worker's reaper, by new state.", ("state",)
        )
        self.db_errors = counter("database_errors", "Database calls that failed, by error type.", ("error",))
        self.duration = pc.Histogram(
            "nursery_worker_job_duration_seconds",
            "Time from the start to the end of an attempt (released attempts excluded).",
            labels,
            buckets=_BUCKETS,
            registry=r,
        )
        self.pickup = pc.Histogram(
            "nursery_worker_job_pickup_latency_seconds",
            "Time from when a job was due (scheduled_at) to when an attempt claimed it, by the database clock.",
            labels,
            buckets=_BUCKETS,
            registry=r,
        )
        r.register(_LiveCollector(self))
        self._unobserve = worker.app.driver.observe(self._on_database_call)

    def close(self) -> None:
        """Stop observing the worker's database calls."""
        self._unobserve()

    # --- what the worker reports ----------------------------------------------------------------

    def observe(self, job: Job, outcome: Outcome, duration: float) -> None:
        """Observe one attempt's duration and pickup latency; called by the worker as it ends."""
        if isinstance(outcome, Released):
            return
        key = (job.queue, job.task)
        self.duration.labels(*key).observe(max(0.0, duration))
        if job.attempted_at is not None and job.scheduled_at is not None:
            self.pickup.labels(*key).observe(max(0.0, (job.attempted_at - job.scheduled_at).total_seconds()))

    def count(self, job: Job, outcome: Outcome, transition: Transition | None) -> None:
        """Count one attempt's outcome once its write is known (*transition*: what the database
        applied; None: it ignored a late write)."""
        key = (job.queue, job.task)
        if transition is None:
            self.ignored.labels(*key).inc()
        elif isinstance(outcome, Released):
            self.released.labels(*key).inc()
        elif isinstance(outcome, Succeeded):
            self.completed.labels(*key).inc()
        elif isinstance(outcome, Snoozed):
            self.snoozed.labels(*key).inc()
        elif isinstance(outcome, Cancelled):
            self.cancelled.labels(*key).inc()
        elif isinstance(outcome, Failed):
            self.failed.labels(*key).inc()
            (self.retried if transition.state == "retryable" else self.discarded).labels(*key).inc()

    def record_rescue(self, result: RescueResult) -> None:
        """Count the jobs one reaper pass took back from dead workers."""
        for state in ("retryable", "discarded", "cancelled"):
            if count := getattr(result, state):
                self.rescued.labels(state).inc(count)

    def _on_database_call(self, error: Exception | None) -> None:
        if error is None:
            self.db_ok, self.db_error = True, ""
        else:
            self.db_ok, self.db_error = False, str(error)
            self.db_errors.labels(type(error).__name__).inc()

    # --- what the endpoints read ----------------------------------------------------------------

    def not_ready(self) -> list[str]:
        """Why the worker is not ready (empty when it is)."""
        w = self.worker
        reasons = []
        if w.state is not WorkerState.RUNNING:
            reasons.append(f"worker is {w.state.value}")
        if w.config.listen and not w.listener_connected:
            reasons.append("listener is not connected")
        if not self.db_ok:
            reasons.append(f"last database call failed: {self.db_error}")
        return reasons

    async def refresh_global(self) -> None:
        """Query the database-wide figures (queue depth; the oldest open transaction and the jobs
        table's dead tuples, or SQLite's WAL size), at most once per ``depth_interval``: two cheap
        statements, whatever the scrape rate. The last values stay on error."""
        now = anyio.current_time()
        if now - self._depth_at < self._depth_interval:
            return
        self._depth_at = now
        driver = self.worker.app.driver
        with anyio.move_on_after(5.0):
            try:
                self._depth = await driver.queue_depth()
                self._health = await driver.database_health()
            except RETRYABLE_ERRORS as exc:
                logger.debug("queue depth and database health: %s", exc)

    def render(self, *, with_global: bool = True) -> bytes:
        """The exposition text of every metric (without :data:`GLOBAL_FAMILIES` unless *with_global*)."""
        self._with_global = with_global
        try:
            data: bytes = _prometheus().generate_latest(self.registry)
        finally:
            self._with_global = True
        return data


class _LiveCollector:
    """Gauges read when scraped: worker state, running jobs, readiness, queue depth."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        worker = self.metrics.worker
        state = GaugeMetricFamily(
            "nursery_worker_worker_state", "1 for the worker's current state, 0 for the others.", labels=["state"]
        )
        for s in WorkerState:
            state.add_metric([s.value], 1.0 if worker.state is s else 0.0)
        yield state
        yield GaugeMetricFamily("nursery_worker_running_jobs", "Jobs executing now.", value=len(worker.running_jobs))
        yield GaugeMetricFamily(
            "nursery_worker_ready", "1 when /readyz answers 200.", value=0.0 if self.metrics.not_ready() else 1.0
        )
        if not self.metrics._with_global:
            return
        depth = GaugeMetricFamily(
            "nursery_worker_queue_depth",
            "Jobs in each non-final state by queue (all workers' queues, as the database sees them).",
            labels=["queue", "state"],
        )
        for queue, job_state, count in ((d.queue, d.state, d.count) for d in self.metrics._depth):
            depth.add_metric([queue, job_state], float(count))
        yield depth
        yield from _health_families(self.metrics._health)


def _health_families(health: DatabaseHealth | None) -> Iterable[Any]:
    """The gauges of :class:`DatabaseHealth`: each one the engine has (none before the first query)."""
    from prometheus_client.core import GaugeMetricFamily

    if health is None:
        return
    if health.engine == "postgresql":
        oldest = health.oldest_transaction
        yield GaugeMetricFamily(
            "nursery_worker_oldest_transaction_seconds",
            "Age of the oldest open transaction on the PostgreSQL server (any client; 0 when none): while it "
            "is open, vacuum cannot clean the jobs table.",
            value=oldest.age if oldest is not None else 0.0,
        )
    if health.dead_tuples is not None:
        dead = GaugeMetricFamily(
            "nursery_worker_dead_tuples",
            "Dead rows of the table (summed over its partitions), as PostgreSQL's statistics last counted them.",
            labels=["table"],
        )
        dead.add_metric(["jobs"], float(health.dead_tuples))
        yield dead
    if health.live_tuples is not None:
        live = GaugeMetricFamily(
            "nursery_worker_live_tuples",
            "Live rows of the table (summed over its partitions), as PostgreSQL's statistics last counted them.",
            labels=["table"],
        )
        live.add_metric(["jobs"], float(health.live_tuples))
        yield live
    if health.wal_bytes is not None:
        yield GaugeMetricFamily(
            "nursery_worker_sqlite_wal_bytes",
            "Size of the SQLite write-ahead log file (a long reader keeps it from being checkpointed).",
            value=float(health.wal_bytes),
        )


# --- HTTP ------------------------------------------------------------------------------------------

#: A route answers (status, content type, body); it is given the request target (path and query).
Response = tuple[int, str, bytes]
Routes = Callable[[str], Awaitable[Response]]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 503: "Service Unavailable"}


def _text(status: int, text: str) -> Response:
    return status, "text/plain; charset=utf-8", (text + "\n").encode()


async def _handle(stream: anyio.abc.ByteStream, *, routes: Routes) -> None:
    try:
        async with stream:
            with anyio.move_on_after(_REQUEST_TIMEOUT):
                data = b""
                while b"\r\n\r\n" not in data and b"\n\n" not in data:
                    chunk = await stream.receive(4096)
                    data += chunk
                    if len(data) > _MAX_REQUEST:
                        break
                parts = data.split(b"\r\n", 1)[0].decode("latin-1").split()
                if len(parts) != 3:
                    status, ctype, body = _text(400, "bad request")
                elif parts[0] not in ("GET", "HEAD"):
                    status, ctype, body = _text(405, "only GET")
                else:
                    status, ctype, body = await routes(parts[1])
                head = (
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode()
                await stream.send(head if parts and parts[0] == "HEAD" else head + body)
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass  # the client went away
    except Exception:  # a bug in a route must not take the worker down with it
        logger.exception("metrics endpoint failed")


async def serve_http(
    routes: Routes,
    *,
    host: str,
    port: int,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *routes* over HTTP/1.1 (one request per connection) until cancelled; start with the bound port."""
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
    except OSError as exc:
        raise ConfigurationError(f"metrics: cannot listen on {host}:{port}: {exc}") from None
    async with listener:
        bound = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        logger.info("metrics and health endpoints on http://%s:%d/metrics", host, bound)
        task_status.started(bound)
        await listener.serve(functools.partial(_handle, routes=routes))


async def http_get(host: str, port: int, path: str) -> tuple[int, bytes]:
    """GET ``http://host:port/path``; return (status, body). Raises OSError, or TimeoutError after 5 s."""
    with anyio.fail_after(5.0):
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                try:
                    data += await stream.receive(65536)
                except anyio.EndOfStream:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise OSError(f"bad HTTP response from {host}:{port}{path}: {head[:80]!r}")
    return int(status_line[1]), body


def _worker_routes(metrics: WorkerMetrics) -> Routes:
    async def route(target: str) -> Response:
        path, _, query = target.partition("?")
        if path == "/metrics":
            # The supervisor asks all but one child to leave the global gauges (and their query) out.
            with_global = _NO_GLOBAL not in query.split("&")
            if with_global:
                await metrics.refresh_global()
            return 200, _CONTENT_TYPE, metrics.render(with_global=with_global)
        if path == "/healthz":
            return _text(200, "ok")
        if path == "/readyz":
            reasons = metrics.not_ready()
            return _text(503, "not ready: " + "; ".join(reasons)) if reasons else _text(200, "ready")
        return _text(404, "not found; try /metrics, /healthz or /readyz")

    return route


def attach(worker: Worker) -> WorkerMetrics:
    """The worker's :class:`WorkerMetrics`, created and attached on first use."""
    if worker.metrics is None:
        worker.metrics = WorkerMetrics(worker)
    return worker.metrics


async def serve_metrics(
    worker: Worker,
    port: int = 9464,
    *,
    host: str = DEFAULT_HOST,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the worker's Prometheus metrics and health endpoints until cancelled.

    Start it in a task group next to the worker; it counts from then on. ``/metrics`` is the
    Prometheus text format, ``/healthz`` answers 200 while the event loop runs, and ``/readyz``
    answers 200 while the worker is RUNNING, its listener is connected (unless ``listen=False``)
    and its last database call succeeded, else 503 with the reasons. ``nursery-worker run
    --metrics-port P`` does this for you.

    Args:
        worker: the worker from :func:`open_worker`.
        port: the TCP port; 0 picks a free one (``task_group.start`` returns it).
        host: the address to bind; loopback by default, ``0.0.0.0`` for every interface.

    Returns:
        Never: it runs until cancelled. ``await task_group.start(serve_metrics, worker)`` returns
        the bound port once it is listening.

    Raises:
        ConfigurationError: prometheus-client is not installed (``pip install
            'nursery-worker[metrics]'``), or the address cannot be bound.

    Example:
        >>> async with open_worker(app) as worker, anyio.create_task_group() as tg:
        ...     port = await tg.start(serve_metrics, worker, 9464)
        ...     await worker.wait_stopped()
        ...     tg.cancel_scope.cancel()
    """
    metrics = attach(worker)
    try:
        await serve_http(_worker_routes(metrics), host=host, port=port, task_status=task_status)
    finally:
        metrics.close()
        worker.metrics = None


# --- the supervisor's endpoint ---------------------------------------------------------------------


def merge_expositions(texts: Sequence[tuple[str, str]]) -> bytes:
    """Merge Prometheus exposition texts into one, adding a ``worker`` label to every per-process sample.

    A family of :data:`GLOBAL_FAMILIES` is taken from the first text that has it, unlabelled: its
    values are database-wide, so one copy is the true figure (and a sum over ``worker`` stays right).

    Args:
        texts: ``(worker label, exposition text)`` pairs, one per child, the elected child first.
    """
    pc = _prometheus()
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    merged: dict[str, Any] = {}
    for label, text in texts:
        for family in text_string_to_metric_families(text):
            is_global = family.name in GLOBAL_FAMILIES
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            elif is_global:
                continue  # reported once: the first child's copy
            for s in family.samples:
                labels = s.labels if is_global else {"worker": label, **s.labels}
                into.add_sample(s.name, labels, s.value, s.timestamp, s.exemplar)

    class _Merged:
        def collect(self) -> Iterable[Any]:
            return list(merged.values())

    registry = pc.CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    data: bytes = pc.generate_latest(registry)
    return data


def _supervisor_routes(supervisor: Supervisor) -> Routes:
    async def scrape(index: int, port: int, with_global: bool, out: dict[int, str]) -> None:
        path = "/metrics" if with_global else f"/metrics?{_NO_GLOBAL}"
        try:
            status, body = await http_get(DEFAULT_HOST, port, path)
        except (OSError, TimeoutError) as exc:
            logger.warning("child %d: cannot scrape its metrics on port %d: %r", index, port, exc)
            return
        if status == 200:
            out[index] = body.decode()
        else:
            logger.warning("child %d: its metrics endpoint answered %d", index, status)

    async def route(target: str) -> Response:
        path = target.partition("?")[0]
        children = sorted(supervisor.metrics_ports())
        if path == "/metrics":
            # The elected child (the lowest slot up; the next while it restarts) alone reports the
            # global gauges: every child would report the same database-wide figures.
            texts: dict[int, str] = {}
            async with anyio.create_task_group() as tg:
                for n, (index, port) in enumerate(children):
                    tg.start_soon(scrape, index, port, n == 0, texts)
            elected = children[0][0] if children else None
            if elected is not None and elected not in texts:
                # It did not answer: ask the next child that did for its full text instead.
                for index, port in children[1:]:
                    if index in texts:
                        await scrape(index, port, True, texts)
                        elected = index
                        break
            order = sorted(texts, key=lambda i: (i != elected, i))
            return 200, _CONTENT_TYPE, merge_expositions([(str(i), texts[i]) for i in order])
        if path == "/healthz":
            return _text(200, "ok")
        if path == "/readyz":
            reasons = supervisor.not_ready()
            return _text(503, "not ready: " + "; ".join(reasons)) if reasons else _text(200, "ready")
        return _text(404, "not found; try /metrics, /healthz or /readyz")

    return route


async def serve_supervisor_metrics(
    supervisor: Supervisor,
    port: int,
    *,
    host: str = DEFAULT_HOST,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The supervisor's endpoint: every child's metrics with a ``worker`` label; ready when all are."""
    await serve_http(_supervisor_routes(supervisor), host=host, port=port, task_status=task_status)
