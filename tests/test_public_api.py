"""Pins the public API: exactly what ``nursery_worker`` exports, and the error hierarchy users catch."""

from __future__ import annotations

import builtins

import pytest

import nursery_worker

PUBLIC_NAMES = [
    "App",
    "AttemptLost",
    "BreakerInfo",
    "BulkResult",
    "CallNext",
    "CancelResult",
    "ChildStatus",
    "CircuitBreaker",
    "ConfigurationError",
    "ConstantBackoff",
    "DatabaseError",
    "Discard",
    "EventTimeout",
    "ExponentialBackoff",
    "Job",
    "JobContext",
    "JobError",
    "JobFailed",
    "JobFilter",
    "JobNotFound",
    "JobOutcome",
    "JobProgress",
    "JobSpec",
    "JobState",
    "JobStateError",
    "JobStep",
    "LinearBackoff",
    "Middleware",
    "NurseryWorkerError",
    "PendingMigration",
    "PeriodicInfo",
    "PeriodicNotFound",
    "QueueInfo",
    "Retry",
    "RetryPolicy",
    "SchemaNotReady",
    "Snooze",
    "StepResultRefused",
    "Supervisor",
    "SupervisorError",
    "Task",
    "TaskCall",
    "TaskNotFound",
    "Waiting",
    "Worker",
    "WorkerState",
    "WorkerStats",
    "open_worker",
    "redact_dsn",
    "run_supervisor",
    "serve_metrics",
    "step",
]


def test_all_lists_exactly_the_public_names() -> None:
    """nursery_worker.__all__ is exactly the pinned list of public names, in order, without duplicates."""
    assert nursery_worker.__all__ == PUBLIC_NAMES


def test_every_public_name_is_importable() -> None:
    """Every name in __all__ is an attribute of the package (star-import works)."""
    namespace: dict[str, object] = {}
    exec("from nursery_worker import *", namespace)

    assert sorted(k for k in namespace if k != "__builtins__") == sorted(PUBLIC_NAMES)


def test_the_package_exposes_nothing_public_beyond_all() -> None:
    """Every attribute of the package without a leading underscore is listed in __all__."""
    # "@py_builtins"/"@pytest_ar": pytest rewrites the asserts of a distribution that ships a plugin.
    public = {name for name in dir(nursery_worker) if not name.startswith(("_", "@"))}
    submodules = {"testing", "pytest_plugin", "web"}  # test helpers, the pytest plugin, the dashboard

    assert public - submodules == set(PUBLIC_NAMES)


def test_the_package_has_a_version_string() -> None:
    """nursery_worker.__version__ is a non-empty version string."""
    assert isinstance(nursery_worker.__version__, str)
    assert nursery_worker.__version__


@pytest.mark.parametrize(
    ("name", "builtin"),
    [
        ("ConfigurationError", "ValueError"),
        ("JobNotFound", "LookupError"),
        ("TaskNotFound", "LookupError"),
        ("SchemaNotReady", "RuntimeError"),
        ("SupervisorError", "RuntimeError"),
        ("DatabaseError", "ConnectionError"),
        ("JobStateError", "ValueError"),
        ("JobFailed", "RuntimeError"),
    ],
)
def test_each_error_is_a_nursery_worker_error_and_its_builtin(name: str, builtin: str) -> None:
    """Each public error derives from NurseryWorkerError and from the builtin exception it resembles."""
    cls = getattr(nursery_worker, name)

    assert issubclass(cls, nursery_worker.NurseryWorkerError)
    assert issubclass(cls, getattr(builtins, builtin))


def test_the_root_error_is_an_exception() -> None:
    """NurseryWorkerError is an Exception (so `except Exception` catches every error nursery-worker raises)."""
    assert issubclass(nursery_worker.NurseryWorkerError, Exception)
