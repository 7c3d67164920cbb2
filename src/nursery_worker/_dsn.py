"""Resolving and redacting DSNs: a password must never reach a log line, a repr or an exception.

Which database: the DSN given (``App(dsn=...)``, ``--dsn``), else ``$NURSERY_WORKER_DSN``, else the
embedded engine's file ``./nursery-worker.sqlite3`` (announced in one log line).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs

from ._errors import ConfigurationError

ENV_VAR = "NURSERY_WORKER_DSN"
#: The embedded engine's file when no DSN is configured, relative to the current directory.
DEFAULT_SQLITE_FILE = "nursery-worker.sqlite3"

logger = logging.getLogger("nursery_worker")
_announced: set[str] = set()
_announced_lock = threading.Lock()

_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^:/?#@\s]*:)(?P<pw>[^@/?#\s]*)(?P<tail>@)", re.I)
_KV_PASSWORD = re.compile(r"(?P<head>(?<![?&])\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.I)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<pw>[^&#\s]*)", re.I)


def redact(text: str) -> str:
    """Return *text* with every DSN password in it replaced by ``***``.

    Works on URL DSNs (``postgresql://user:pw@host``), on ``password=`` query parameters and on
    libpq key/value strings (``host=x password=pw``), and on any message that embeds one of them.

    Args:
        text: a DSN, or any text that may contain one.

    Returns:
        The text with each password replaced by ``***``.
    """
    text = _URL_PASSWORD.sub(r"\g<head>***\g<tail>", text)
    text = _QUERY_PASSWORD.sub(r"\g<head>***", text)
    return _KV_PASSWORD.sub(r"\g<head>***", text)


def resolve_dsn(dsn: str | None) -> str:
    """Return the DSN to use: the argument, else ``$NURSERY_WORKER_DSN``, else the embedded engine's
    file ``./nursery-worker.sqlite3`` (made absolute; announced once per process in a log line).

    Args:
        dsn: the DSN given, or None.

    Returns:
        A PostgreSQL DSN or a ``sqlite:///`` one.

    Raises:
        ConfigurationError: the value is not a string, or is blank.
    """
    if dsn is None:
        dsn = os.environ.get(ENV_VAR)
        if dsn is None:
            path = os.path.abspath(DEFAULT_SQLITE_FILE)
            _announce(path)
            return "sqlite:///" + path
        source = f"${ENV_VAR}"
    else:
        source = "dsn="
    if not isinstance(dsn, str):
        raise ConfigurationError(
            f"{source} must be a string such as 'postgresql://user@host/db', got {type(dsn).__name__}"
        )
    if not dsn.strip():
        raise ConfigurationError(f"{source} is empty: give a DSN such as 'postgresql://user@host/db'")
    return dsn


def _announce(path: str) -> None:
    with _announced_lock:
        if path in _announced:
            return
        _announced.add(path)
    logger.info(
        "no database configured (dsn=None, $%s unset): using the embedded SQLite engine, file %s (one host; "
        "tables created on first use). For PostgreSQL, set %s=postgresql://user@host/db (or --dsn, "
        "App(dsn=...)) and run `nursery-worker migrate --dsn postgresql://user@host/db`",
        ENV_VAR,
        path,
        ENV_VAR,
    )


def is_sqlite_dsn(dsn: str) -> bool:
    """True when *dsn* selects the embedded engine (``sqlite:...``)."""
    return dsn.lstrip().lower().startswith("sqlite:")


@attrs.frozen(kw_only=True)
class SqliteTarget:
    """What a ``sqlite:///`` DSN names: the file and the engine's options."""

    path: str
    busy_timeout: float | None = None
    synchronous: str = "full"


_SQLITE_FORM = "'sqlite:///relative/path.sqlite3' or 'sqlite:////absolute/path.sqlite3'"


def parse_sqlite_dsn(dsn: str) -> SqliteTarget:
    """Parse an embedded-engine DSN.

    ``sqlite:///jobs.sqlite3`` is relative to the current directory, ``sqlite:////var/lib/jobs.sqlite3``
    absolute. Options: ``?busy_timeout=SECONDS`` (how long a write waits for another process's
    transaction; default ``App(connect_timeout=...)``) and ``?synchronous=full|normal`` (default
    ``full``: a committed job survives a power cut; ``normal`` is faster and survives a crash of the
    process). An in-memory database is refused: the worker's connections, its other processes and
    the CLI could not share it.

    Args:
        dsn: the DSN, starting with ``sqlite:``.

    Returns:
        The file's path (as given: relative paths are resolved by the driver) and the options.

    Raises:
        ConfigurationError: the DSN is malformed, names an in-memory database, or has an unknown option.
    """
    parts = urlsplit(dsn.strip())
    memory = (
        f"{dsn!r}: an in-memory SQLite database cannot be shared by a worker's connections, its other "
        f"processes and the CLI; use a file ({_SQLITE_FORM}), in a temporary directory for tests"
    )
    if dsn.strip().lower() == "sqlite://":  # SQLAlchemy's spelling of an in-memory database
        raise ConfigurationError(memory)
    if parts.netloc:
        raise ConfigurationError(f"invalid SQLite DSN {dsn!r}: a file has no host; use {_SQLITE_FORM}")
    if parts.scheme.lower() != "sqlite" or not dsn.strip()[len(parts.scheme) :].startswith(":///"):
        raise ConfigurationError(f"invalid SQLite DSN {dsn!r}: use {_SQLITE_FORM}")
    path = unquote(parts.path)[1:]
    if path in ("", ":memory:") or path.startswith("file:") or "mode=memory" in parts.query:
        raise ConfigurationError(memory)
    busy_timeout: float | None = None
    synchronous = "full"
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "busy_timeout":
            try:
                busy_timeout = float(value)
            except ValueError:
                busy_timeout = -1.0
            if not busy_timeout > 0:
                raise ConfigurationError(f"{dsn!r}: busy_timeout must be a number of seconds > 0, got {value!r}")
        elif key == "synchronous":
            if value.lower() not in ("full", "normal"):
                raise ConfigurationError(f"{dsn!r}: synchronous must be 'full' or 'normal', got {value!r}")
            synchronous = value.lower()
        else:
            raise ConfigurationError(
                f"{dsn!r}: unknown SQLite DSN option {key!r}; the options are busy_timeout and synchronous"
            )
    return SqliteTarget(path=path, busy_timeout=busy_timeout, synchronous=synchronous)
