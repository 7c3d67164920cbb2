"""Resolving and redacting DSNs: a password must never reach a log line, a repr or an exception."""

from __future__ import annotations

import os
import re

from ._errors import ConfigurationError

ENV_VAR = "NURSERY_WORKER_DSN"

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
    """Return the DSN to use: the argument, else ``$NURSERY_WORKER_DSN``.

    Raises:
        ConfigurationError: neither is set, or the value is blank.
    """
    if dsn is None:
        dsn = os.environ.get(ENV_VAR)
        if dsn is None:
            raise ConfigurationError(
                f"no database configured: pass App(dsn='postgresql://user@host/db') or set the {ENV_VAR} "
                "environment variable"
            )
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
