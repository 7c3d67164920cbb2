"""The worker's maintenance services, one module each.

Each service is a small object whose ``run_once()`` makes one pass and returns what it did (tests
call it directly); the worker's task tree runs it in a loop (:func:`serve_periodically`, or the
service's own ``serve()`` where its timing is its own):

- ``heartbeat``: :class:`Heartbeat` proves the worker alive;
- ``rescuer``: :class:`Rescuer` takes back the jobs of dead workers, :class:`LostClaims` this
  worker's own claims whose fetch result never arrived;
- ``promoter``: :class:`Promoter` makes due scheduled and retryable jobs available;
- ``pruner``: :class:`Pruner` deletes finished jobs past their retention;
- ``rollups``: :class:`RollupWriter` adds the counted finished attempts to the metric rollups;
- ``scheduler``: :class:`Scheduler` enqueues the due ticks of periodic schedules;
- ``cancels``: :class:`CancelWatcher` relays cancel requests whose notification was lost;
- ``loop``: :func:`serve_periodically`, the jittered loop with backoff on database errors.
"""

from .cancels import CancelWatcher as CancelWatcher
from .heartbeat import Heartbeat as Heartbeat
from .loop import serve_periodically as serve_periodically
from .promoter import Promoter as Promoter
from .pruner import Pruner as Pruner
from .rescuer import LostClaims as LostClaims
from .rescuer import Rescuer as Rescuer
from .rollups import RollupWriter as RollupWriter
from .scheduler import Scheduler as Scheduler
from .scheduler import SchedulerResult as SchedulerResult
