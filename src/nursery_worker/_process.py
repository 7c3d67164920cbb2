"""What a supervisor and its child processes share: the options protocol, importing the app by its
path (the command line imports it the same way), process titles. Kept apart from ``_child`` (the
child's entry point, run with ``python -m``), which the package itself never imports."""

from __future__ import annotations

import contextlib
import importlib
import json
import signal
from typing import Any

import attrs

from ._app import App
from ._errors import ConfigurationError

#: What a supervisor sends a child to make it stop at once (cancel its jobs and hand them back).
HARD_STOP_SIGNAL = signal.SIGUSR1

#: The environment variable holding a child's options (JSON). Its presence means "I am a child".
ENV_OPTIONS = "NURSERY_WORKER_CHILD"
#: The exit status of a child that could not start (after a ``fatal`` report).
EXIT_STARTUP_FAILED = 3

try:
    from setproctitle import setproctitle as _setproctitle
except ImportError:  # pragma: no cover - a dependency; titles are cosmetic, so never fatal

    def _setproctitle(title: str) -> None:
        pass


def set_title(title: str) -> None:
    """Set the process title that ``ps`` shows (a no-op where setproctitle is unavailable)."""
    with contextlib.suppress(Exception):
        _setproctitle(title)


@attrs.frozen(kw_only=True)
class ChildOptions:
    """What the supervisor tells a child; JSON-encoded into :data:`ENV_OPTIONS`."""

    app: str
    index: int
    supervisor_id: str
    restarts: int
    report_fd: int
    report_interval: float
    backend: str
    dsn: str | None
    log_level: str
    sys_path: list[str]
    worker: dict[str, Any]
    #: Serve metrics on an ephemeral loopback port, named in the reports as ``metrics_port``.
    metrics: bool = False
    #: How the slot's previous process ended (None for the first), stored in the workers table.
    last_exit: str | None = None

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ChildOptions:
        return cls(**json.loads(text))


def import_app(path: str, *, label: str = "app path", wrap_import_errors: bool = False) -> App:
    """Import ``module:attr`` and return the :class:`App` it names.

    The one way an app is found by its path: the command line's ``--app``, the supervisor's check
    and the child process all call it. *label* names the path in messages (the CLI says
    ``--app``).

    Errors raised by importing the module propagate unchanged (their traceback is what the user
    needs), unless *wrap_import_errors*: then they become one :class:`ConfigurationError` line
    naming the module and the error. A malformed path, a missing attribute or a non-App raise
    :class:`ConfigurationError`.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"{label} {path!r} must look like 'package.module:app'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        if not wrap_import_errors:
            raise
        raise ConfigurationError(
            f"{label} {path!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"{label} {path!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, App):
        raise ConfigurationError(f"{label} {path!r} is not a nursery_worker.App (it is of type {type(obj).__name__})")
    return obj
