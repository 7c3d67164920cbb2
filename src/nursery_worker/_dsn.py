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
_warned: set[tuple[str, str]] = set()
_announced_lock = threading.Lock()

#: Where a DSN may start in a text: a URL's scheme, or a key/value password keyword (also as the
#: end of a longer name, such as PGPASSWORD=, to err on the side of hiding). These
#: only *locate* a candidate; what the password is, and where it ends, is decided by parsing from
#: there with libpq's own grammar (see ``_redact_url`` and ``_kv_value_end``).
_CANDIDATE = re.compile(r"(?P<url>(?<![\w+.\-])[a-z][a-z0-9+.\-]*://)|(?P<kv>(?:ssl)?password\s*=)", re.I)
_SECRET_KEYS = frozenset({"password", "sslpassword"})
#: A key/value DSN starts with a keyword and ``=``.
_KV_START = re.compile(r"[A-Za-z_]+\s*=")
HIDDEN = "***"


def redact(text: str) -> str:
    """Return *text* with every DSN password in it replaced by ``***``.

    The DSN is parsed the way libpq parses it, never matched by a pattern of what a password looks
    like. In a URL (``postgresql://user:pw@host/db``) the password runs from the first ``:`` of the
    user information to the first ``@`` before any ``/``: libpq reads ``S3c?ret`` and ``S3c#ret``
    whole, and so does this. Query parameters ``password=`` and ``sslpassword=`` (their names
    percent-decoded, as libpq does) are hidden up to the next ``&``. In key/value form
    (``host=x password='a b\\'c'``), a value runs to the first unescaped space, or is quoted with
    backslash escapes. A URL that libpq could not read (a port that is not a number, an ``@`` after
    the host) is hidden whole after its scheme; an unterminated quoted value is hidden to the end.

    Works on a DSN alone and on any message that embeds one (a URL inside a message ends at the next
    white space or line end unless the text is that URL alone).

    Args:
        text: a DSN, or any text that may contain one.

    Returns:
        The text with each password replaced by ``***``.
    """
    first = len(text) - len(text.lstrip())
    if _KV_START.match(text, first):
        whole = _redact_kv(text)
        if whole is not None:
            return whole
    return _scan(text, first)


def _scan(text: str, first: int = -1) -> str:
    """Hide the passwords of the DSNs found in *text*; a URL starting at *first* is the whole text."""
    out: list[str] = []
    i = 0
    while True:
        m = _CANDIDATE.search(text, i)
        if m is None:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i : m.start()])
        if m.group("url") is not None:
            whole = m.start() == first
            end = _url_end(text, m.end(), whole=whole)
            out.append(m.group("url"))
            out.append(_redact_url(text[m.end() : end]))
            i = end
        else:
            out.append(m.group("kv"))
            rest = m.end()
            while rest < len(text) and text[rest].isspace():
                rest += 1
            end, _ = _kv_value(text, rest)
            out.append(text[m.end() : rest] + (HIDDEN if end > rest else ""))
            i = end


def _redact_kv(text: str) -> str | None:
    """*text*, a whole key/value DSN, with its secrets hidden; parsed with libpq's grammar.

    What libpq could not parse (a word without ``=``: the rest of an unquoted password with a
    space in it?) is hidden from the first password keyword to the end. None when there is no
    password keyword at all: nothing to hide, the text is left to the scan of a message.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while True:
        start = i
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            out.append(text[start:])
            return "".join(out)
        key_start = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[key_start:i]
        while i < n and text[i].isspace():
            i += 1
        if i == n or text[i] != "=" or not key:
            break
        i += 1
        while i < n and text[i].isspace():
            i += 1
        end, closed = _kv_value(text, i)
        if not closed:
            break
        if key.lower().endswith("password") and end > i:
            out.append(text[start:i] + HIDDEN)
        else:  # a value may be a URL (libpq expands dbname=postgresql://...)
            out.append(text[start:i] + _scan(text[i:end], 0))
        i = end
    m = _CANDIDATE.search(text)
    while m is not None and m.group("kv") is None:
        m = _CANDIDATE.search(text, m.end())
    if m is None:
        return None
    return text[: m.end()] + HIDDEN


def _url_end(text: str, start: int, *, whole: bool) -> int:
    """Where the URL starting at *start* (after ``scheme://``) ends: the text's end if it is the
    whole text; in a message, the first line break, or the first white space outside the user
    information (which libpq reads up to its ``@``, spaces and all)."""
    if whole:
        return len(text)
    line_end = len(text)
    for j in range(start, len(text)):
        if text[j] in "\r\n":
            line_end = j
            break
    at = _userinfo_end(text, start, line_end)
    j = start if at is None else at + 1
    while j < line_end and not text[j].isspace():
        j += 1
    return j


def _userinfo_end(text: str, start: int, end: int) -> int | None:
    """The index of the ``@`` that ends the user information, as libpq finds it (the first ``@``
    before any ``/``), or None when there is none."""
    for j in range(start, end):
        if text[j] == "@":
            return j
        if text[j] == "/":
            return None
    return None


def _redact_url(rest: str) -> str:
    """*rest* (what follows ``scheme://``) with its passwords hidden."""
    at = _userinfo_end(rest, 0, len(rest))
    head = ""
    if at is not None:
        userinfo = rest[:at]
        colon = userinfo.find(":")
        head = (userinfo[: colon + 1] + HIDDEN if colon >= 0 and colon < len(userinfo) - 1 else userinfo) + "@"
        rest = rest[at + 1 :]
    cut = len(rest)
    for sep in "/?":
        k = rest.find(sep)
        if k >= 0:
            cut = min(cut, k)
    netloc, tail = rest[:cut], rest[cut:]
    if not _netloc_ok(netloc) or "@" in netloc or "@" in tail:
        # libpq could not read it as we do (a password with a raw '/' or '@' in it?): hide it all.
        return HIDDEN
    q = tail.find("?")
    if q < 0:
        return head + rest
    params = tail[q + 1 :].split("&")
    for n, param in enumerate(params):
        key, eq, value = param.partition("=")
        if eq and value and unquote(key).strip().lower() in _SECRET_KEYS:
            params[n] = key + "=" + HIDDEN
    return head + netloc + tail[: q + 1] + "&".join(params)


def _netloc_ok(netloc: str) -> bool:
    """Whether libpq can read *netloc* as ``host[:port][,host[:port]...]``."""
    for host in netloc.split(","):
        if host.startswith("["):
            close = host.find("]")
            if close < 0:
                return False
            host = host[close + 1 :]
            if host and not host.startswith(":"):
                return False
            port = host[1:]
        else:
            port = host.rpartition(":")[2] if ":" in host else ""
        if port and not port.isdigit():
            return False
    return True


def _kv_value(text: str, start: int) -> tuple[int, bool]:
    """Where the key/value value starting at *start* ends, as libpq's ``conninfo_parse`` reads it,
    and whether it is well formed: a quoted value ends after its closing quote (a backslash
    escapes anything; unterminated, it runs to the end of the text and is not well formed), any
    other value at the first unescaped white space."""
    n = len(text)
    j = start
    if j < n and text[j] == "'":
        j += 1
        while j < n:
            if text[j] == "\\":
                j += 2
                continue
            if text[j] == "'":
                return j + 1, True
            j += 1
        return n, False
    while j < n and not text[j].isspace():
        j += 2 if text[j] == "\\" else 1
    return min(j, n), True


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
    # One short line per file and process: every CLI command resolves the DSN.
    with _announced_lock:
        if path in _announced:
            return
        _announced.add(path)
    logger.info("no DSN given: using the embedded SQLite file %s (set $%s for PostgreSQL)", path, ENV_VAR)


def embedded_fallback(dsn: str | None) -> str | None:
    """The embedded file's absolute path if an App given *dsn* (None: not given) falls back to it, else None."""
    if dsn is None and os.environ.get(ENV_VAR) is None:
        return os.path.abspath(DEFAULT_SQLITE_FILE)
    return None


def warn_embedded_worker(path: str) -> None:
    """Log, once per process and file, a WARNING that a worker uses the embedded file *path* by default.

    A worker that silently works a local file while its producers write elsewhere is the surprise
    this prevents; the INFO line of :func:`resolve_dsn` is then not repeated.
    """
    with _announced_lock:
        if ("worker", path) in _warned:
            return
        _warned.add(("worker", path))
        _announced.add(path)
    logger.warning(
        "no DSN given (dsn=, --dsn, $%s): this worker uses the embedded SQLite file %s, which only processes "
        "on this host see; set %s=postgresql://user@host/db to share jobs across hosts",
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
