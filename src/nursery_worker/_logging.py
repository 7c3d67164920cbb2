"""Structured logs through the standard :mod:`logging` module.

While a job runs, a context variable holds its id, task, queue, attempt and worker id; a filter on
the handler copies them onto every record, whoever logs it (nursery-worker itself or the task's
own code through ``logging``). Context variables follow the job into its thread when it is a plain
``def`` (anyio copies the context), and never leak into another job: each job runs in a task of its
own. Two formats: ``console`` (the human line plus ``[job=... task=...]``) and ``json`` (one
object per line). Both redact DSN passwords from the final text, whatever put them there.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._dsn import redact

if TYPE_CHECKING:
    from ._models import Job

#: The fields of a job's context, in the order they are printed.
FIELDS = ("job_id", "task", "queue", "attempt", "worker_id")

# The attributes every LogRecord has: anything else on a record came from ``extra=`` (a figure of
# the line, such as an attempt's duration or a stop's counters) and is a top-level key in JSON.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "job_args",
    *FIELDS,
}

#: The running job's context: (job id, task, queue, attempt, worker id, arguments or None). A tuple,
#: not a dict: it is set for every job, and read only when a line is logged.
_JobFields = tuple[int, str, str, int, str, Any]
_job_context: contextvars.ContextVar[_JobFields | None] = contextvars.ContextVar(
    "nursery_worker_job_context", default=None
)


@contextlib.contextmanager
def job_log_context(*, job_id: int, task: str, queue: str, attempt: int, worker_id: str) -> Iterator[None]:
    """Tag every log record emitted inside the block (in this task and its threads) with the job."""
    token = _job_context.set((job_id, task, queue, attempt, worker_id, None))
    try:
        yield
    finally:
        _job_context.reset(token)


def set_job_log_context(job: Job, worker_id: str, args: Any = None) -> None:
    """Tag the log records of the calling task from now on (a job's own task: its context dies with it).

    *args* (the job's arguments) are added only when the worker was asked to log them
    (``open_worker(log_args=True)``, ``run --log-args``): arguments often hold personal data.
    """
    _job_context.set((job.id, job.task, job.queue, job.attempt, worker_id, args))


def current_job_fields() -> dict[str, Any] | None:
    """The running job's context fields, or None outside a job."""
    fields = _job_context.get()
    if fields is None:
        return None
    out = dict(zip(FIELDS, fields, strict=False))
    if fields[5] is not None:
        out["job_args"] = fields[5]
    return out


class JobContextFilter(logging.Filter):
    """Copy the running job's fields onto each record (None outside a job); never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _job_context.get()
        for i, name in enumerate(FIELDS):
            if not hasattr(record, name):
                setattr(record, name, None if fields is None else fields[i])
        if not hasattr(record, "job_args"):
            record.job_args = None if fields is None else fields[5]
        return True


def _context_text(record: logging.LogRecord) -> str:
    if getattr(record, "job_id", None) is None:
        return ""
    parts: tuple[str, ...] = (
        f"job={record.job_id}",  # type: ignore[attr-defined]
        f"task={record.task}",  # type: ignore[attr-defined]
        f"queue={record.queue}",  # type: ignore[attr-defined]
        f"attempt={record.attempt}",  # type: ignore[attr-defined]
        f"worker={record.worker_id}",  # type: ignore[attr-defined]
    )
    job_args = getattr(record, "job_args", None)
    if job_args is not None:
        parts = (*parts, "args=" + json.dumps(job_args, default=str, separators=(",", ":")))
    return " [" + " ".join(parts) + "]"


class ConsoleFormatter(logging.Formatter):
    """``time LEVEL logger: message [job=.. task=.. queue=.. attempt=.. worker=..]``, passwords redacted."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__(f"%(asctime)s %(levelname)-7s {prefix}%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = _context_text(record)
        if context:
            first, sep, rest = text.partition("\n")
            text = first + context + sep + rest
        return redact(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the job's fields, every ``extra=`` field
    of the record as a key of its own (figures are never folded into the message), exc; passwords
    redacted."""

    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            **self._static,
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        job_args = getattr(record, "job_args", None)
        if job_args is not None:
            entry["args"] = json.loads(redact(json.dumps(job_args, default=str)))
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and name not in entry and not name.startswith("_"):
                entry[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str)


LOG_FORMATS = ("console", "json")


def setup_logging(
    level: str, log_format: str = "console", *, prefix: str = "", static: dict[str, Any] | None = None
) -> None:
    """Send the root logger's records to stderr in *log_format*, tagged with the job's context.

    Replaces handlers installed by an earlier call (or ``logging.basicConfig``) so that calling it
    twice does not print each line twice.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error``.
        log_format: ``console`` or ``json``.
        prefix: text put before the logger name in console lines (the supervisor's children).
        static: fields added to every JSON line (the supervisor's children: their slot and pid).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobContextFilter())
    handler.setFormatter(JsonFormatter(static) if log_format == "json" else ConsoleFormatter(prefix))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_nursery_worker", False) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    handler._nursery_worker = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
