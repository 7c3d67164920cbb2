"""OpenTelemetry tracing of jobs (the ``otel`` extra): a PRODUCER span where a job is deferred, a
CONSUMER span where it runs, joined through the W3C trace context stored on the job row.

Only the OpenTelemetry *API* is used; the application configures the SDK (a tracer provider and its
exporters). Without the API installed, or with no provider configured, no span is started and no
context is stored, so tracing costs next to nothing when it is off.

The consumer span is a *child* of the producer span (one trace from the request that deferred the
job to its execution, in any process on any host) and also carries a *link* to it, as the
OpenTelemetry messaging conventions recommend for consumers: tools that show links find the
producer either way, and a retry's spans all point back to the same producer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs

from ._flow import rebind_dependencies
from ._models import Job, JobSpec
from ._state import Cancelled, Failed, Outcome, Released, Snoozed, Succeeded

TRACER_NAME = "nursery_worker"
MESSAGING_SYSTEM = "nursery-worker"

_api: Any = None  # the opentelemetry modules once looked up; False when not installed


def _otel() -> Any:
    """The OpenTelemetry API, or None when it is not installed or no tracer provider is configured.

    Without a provider every span would be a no-op, yet starting one and parsing the stored
    context costs about 15 µs: a tenth of a no-op job's whole cost. So it is skipped.
    """
    global _api
    if _api is None:
        try:
            from opentelemetry import propagate, trace
            from opentelemetry.trace import Link, NoOpTracerProvider, ProxyTracerProvider, SpanKind, Status, StatusCode
        except ImportError:
            _api = False
        else:
            _api = {
                "trace": trace,
                "propagate": propagate,
                "Link": Link,
                "SpanKind": SpanKind,
                "Status": Status,
                "StatusCode": StatusCode,
                "no_op": (NoOpTracerProvider, ProxyTracerProvider),
            }
    if not _api or isinstance(_api["trace"].get_tracer_provider(), _api["no_op"]):
        return None
    return _api


@attrs.define
class Deferring:
    """What :func:`defer_span` hands to the code that inserts the jobs."""

    specs: list[JobSpec]
    span: Any = None

    def inserted(self, jobs: Sequence[Job]) -> None:
        """Record the ids of the inserted jobs on the producer span."""
        if self.span is None or not jobs:
            return
        if len(jobs) == 1:
            self.span.set_attribute("messaging.message.id", str(jobs[0].id))
            self.span.set_attribute("nursery_worker.job.id", jobs[0].id)
            if jobs[0].duplicate:
                self.span.set_attribute("nursery_worker.job.duplicate", True)


@contextlib.contextmanager
def defer_span(specs: Sequence[JobSpec]) -> Iterator[Deferring]:
    """A PRODUCER span around inserting *specs*; its context is stored on each of them.

    One span per call (``defer <task>``, or ``defer_many`` for several tasks): a batch of ten
    thousand jobs is one operation, and every job of it points back to that span.
    """
    api = _otel()
    if api is None or not specs:
        yield Deferring(specs=list(specs))
        return
    tasks = sorted({s.task for s in specs})
    queues = sorted({s.queue for s in specs})
    name = f"defer {tasks[0]}" if len(tasks) == 1 else "defer_many"
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "defer",
    }
    if len(queues) == 1:
        attributes["messaging.destination.name"] = queues[0]
    if len(tasks) == 1:
        attributes["nursery_worker.task"] = tasks[0]
    if len(specs) > 1:
        attributes["messaging.batch.message_count"] = len(specs)
    tracer = api["trace"].get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(name, kind=api["SpanKind"].PRODUCER, attributes=attributes) as span:
        if not span.get_span_context().is_valid:  # no tracer provider configured
            yield Deferring(specs=list(specs))
            return
        carrier: dict[str, str] = {}
        api["propagate"].inject(carrier)
        # W3C trace headers are printable ASCII; anything else (a NUL from a custom propagator) could
        # not be stored, and would fail the defer.
        context = {
            k: v
            for k, v in carrier.items()
            if k in ("traceparent", "tracestate") and isinstance(v, str) and v.isascii() and v.isprintable()
        } or None
        traced = rebind_dependencies(specs, [attrs.evolve(s, trace_context=context) for s in specs])
        yield Deferring(specs=traced, span=span)


_OUTCOMES: dict[type[Outcome], str] = {
    Succeeded: "completed",
    Failed: "failed",
    Snoozed: "snoozed",
    Cancelled: "cancelled",
    Released: "released",
}


def tracing_active() -> bool:
    """True when spans would be recorded (the worker skips the span machinery otherwise)."""
    return _otel() is not None


@contextlib.contextmanager
def process_span(job: Job, *, worker_id: str) -> Iterator[Callable[[Outcome], None]]:
    """A CONSUMER span ``process <task>`` around one attempt; call what it yields with the outcome.

    A failed attempt records its error as an ``exception`` event (type, message, traceback) and
    sets the span's status to ERROR; cancellation from outside (the worker's own) is not an error.
    """
    api = _otel()
    if api is None:
        yield _ignore
        return
    trace = api["trace"]
    parent = None
    links = []
    if job.trace_context:
        parent = api["propagate"].extract(dict(job.trace_context))
        producer = trace.get_current_span(parent).get_span_context()
        if producer.is_valid:
            links.append(api["Link"](producer))
        else:
            parent = None
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "process",
        "messaging.destination.name": job.queue,
        "messaging.message.id": str(job.id),
        "nursery_worker.job.id": job.id,
        "nursery_worker.task": job.task,
        "nursery_worker.queue": job.queue,
        "nursery_worker.attempt": job.attempt,
        "nursery_worker.max_attempts": job.max_attempts,
        "nursery_worker.worker_id": worker_id,
    }
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        f"process {job.task}",
        context=parent,
        kind=api["SpanKind"].CONSUMER,
        links=links,
        attributes=attributes,
        # Errors reach us as outcomes, not exceptions; what passes through is the worker's own
        # cancellation (a shutdown), which is not the job's failure.
        record_exception=False,
        set_status_on_exception=False,
    ) as span:

        def finish(outcome: Outcome) -> None:
            span.set_attribute("nursery_worker.outcome", _OUTCOMES.get(type(outcome), type(outcome).__name__))
            if isinstance(outcome, Failed):
                error = outcome.error
                span.add_event(
                    "exception",
                    {
                        "exception.type": error.type,
                        "exception.message": error.message,
                        "exception.stacktrace": error.traceback,
                    },
                )
                span.set_status(api["Status"](api["StatusCode"].ERROR, f"{error.type}: {error.message}"))

        yield finish


def _ignore(outcome: Outcome) -> None:
    pass
