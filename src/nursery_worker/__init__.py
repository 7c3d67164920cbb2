"""nursery-worker: a durable background-job runtime for trio and asyncio, on PostgreSQL.

Everything public is imported from here; every other module is private.
"""

from ._app import App as App
from ._config import WorkerStats as WorkerStats
from ._context import CallNext as CallNext
from ._context import JobContext as JobContext
from ._context import Middleware as Middleware
from ._dsn import redact as redact_dsn
from ._durable import AttemptLost as AttemptLost
from ._durable import EventTimeout as EventTimeout
from ._durable import StepResultRefused as StepResultRefused
from ._durable import step as step
from ._errors import ConfigurationError as ConfigurationError
from ._errors import DatabaseError as DatabaseError
from ._errors import JobFailed as JobFailed
from ._errors import JobNotFound as JobNotFound
from ._errors import JobStateError as JobStateError
from ._errors import NurseryWorkerError as NurseryWorkerError
from ._errors import PeriodicNotFound as PeriodicNotFound
from ._errors import SchemaNotReady as SchemaNotReady
from ._errors import SupervisorError as SupervisorError
from ._errors import TaskNotFound as TaskNotFound
from ._flow import BreakerInfo as BreakerInfo
from ._flow import CircuitBreaker as CircuitBreaker
from ._jobfilter import BulkResult as BulkResult
from ._jobfilter import JobFilter as JobFilter
from ._metrics import serve_metrics as serve_metrics
from ._models import CancelResult as CancelResult
from ._models import Job as Job
from ._models import JobError as JobError
from ._models import JobProgress as JobProgress
from ._models import JobSpec as JobSpec
from ._models import JobStep as JobStep
from ._models import PendingMigration as PendingMigration
from ._models import QueueInfo as QueueInfo
from ._models import Waiting as Waiting
from ._outcomes import Discard as Discard
from ._outcomes import JobOutcome as JobOutcome
from ._outcomes import Retry as Retry
from ._outcomes import Snooze as Snooze
from ._periodic import PeriodicInfo as PeriodicInfo
from ._retry import ConstantBackoff as ConstantBackoff
from ._retry import ExponentialBackoff as ExponentialBackoff
from ._retry import LinearBackoff as LinearBackoff
from ._retry import RetryPolicy as RetryPolicy
from ._state import JobState as JobState
from ._state import WorkerState as WorkerState
from ._supervisor import ChildStatus as ChildStatus
from ._supervisor import Supervisor as Supervisor
from ._supervisor import run_supervisor as run_supervisor
from ._task import Task as Task
from ._task import TaskCall as TaskCall
from ._worker import Worker as Worker
from ._worker import open_worker as open_worker

__all__ = [
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

__version__ = "0.1.0"
