"""The exception hierarchy: one root, each class mixing in the builtin it resembles."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._models import Job


class NurseryWorkerError(Exception):
    """Root of every error nursery-worker raises on purpose."""


class ConfigurationError(NurseryWorkerError, ValueError):
    """Raised when an option, a DSN or a task definition is invalid; the message names the fix."""


class JobNotFound(NurseryWorkerError, LookupError):
    """Raised when a job id does not exist in the jobs table."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"no job with id {job_id!r} exists (it may never have existed or been pruned)")
        self.job_id = job_id


class TaskNotFound(NurseryWorkerError, LookupError):
    """Raised when a task name is not registered on the app."""


class PeriodicNotFound(NurseryWorkerError, LookupError):
    """Raised when no periodic schedule has that name, in the database or the app (the message lists them)."""


class SchemaNotReady(NurseryWorkerError, RuntimeError):
    """Raised when the database schema is missing, older or newer than this version expects."""


class JobStateError(NurseryWorkerError, ValueError):
    """Raised when an operation does not fit the job's state (retrying a job that is not finished)."""


class JobFailed(NurseryWorkerError, RuntimeError):
    """Raised by ``app.wait_for`` when the job ended discarded or cancelled; ``.job`` is the job."""

    def __init__(self, message: str, job: Job) -> None:
        super().__init__(message)
        self.job = job


class DatabaseError(NurseryWorkerError, ConnectionError):
    """Raised when the database cannot be reached or a statement fails; the DSN password is redacted.

    ``transient`` is False when the statement itself was refused (bad data, a constraint): trying
    the same statement again cannot succeed.
    """

    transient: bool = True


class SupervisorError(NurseryWorkerError, RuntimeError):
    """Raised when a supervisor gives up: a child failed to start, or crash-looped; the message names
    the child, its last exit and the reason."""


#: What a running worker's loops log and retry with backoff instead of dying (the tables may come
#: back: a restore, a migration run late).
RETRYABLE_ERRORS = (DatabaseError, SchemaNotReady)
