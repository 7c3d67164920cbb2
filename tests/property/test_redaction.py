"""No password, whatever its characters, ever reaches a repr, an exception, a log line or the CLI's output.

Passwords are drawn from every printable character; a URL carries them raw except where libpq needs
a percent-encoding (``%``, ``@``, ``/``), or fully encoded as a query parameter; a key/value DSN
carries them quoted with libpq's escapes. libpq itself (psycopg's ``conninfo_to_dict``) is the
oracle of what the password is, and of the redacted DSN meaning the same apart from it.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from unittest import mock
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from nursery_worker import App, ConfigurationError, DatabaseError, redact_dsn

#: Every printable character: no control characters, no lone surrogates.
_printable = st.characters(blacklist_categories=("Cc", "Cs"))
#: A fixed core keeps a drawn password from matching ordinary output by chance ("1" in a port);
#: the characters around it, where quoting and escaping go wrong, are drawn freely.
passwords = st.builds(lambda a, b: a + "Zq7" + b, st.text(_printable, max_size=12), st.text(_printable, max_size=12))

_HOST = "127.0.0.1"  # port 1: closed, so a connection is refused at once


def _url_userinfo(password: str) -> str:
    return f"postgresql://app:{quote(password, safe=_url_safe(password))}@{_HOST}:1/test"


def _url_safe(password: str) -> str:
    # Everything raw ('?', '#', ':' included: libpq reads them) except what libpq needs encoded.
    return "".join(sorted({c for c in password if c not in "%@/" and not c.isspace()}))


def _url_query(password: str) -> str:
    return f"postgresql://app@{_HOST}:1/test?sslmode=disable&password={quote(password, safe='')}"


def _kv(password: str, key: str = "password") -> str:
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    return f"host={_HOST} port=1 user=app {key}='{quoted}' dbname=test"


FORMS: dict[str, Callable[[str], str]] = {
    "url": _url_userinfo,
    "url-query": _url_query,
    "key-value": _kv,
    "sslpassword": lambda p: _kv(p, "sslpassword"),
}
forms = st.sampled_from(sorted(FORMS))
#: Also DSNs libpq cannot read as meant (a raw space, quote, '@' or '/' in the password): the
#: password must not leak through the error that says so either.
RAW_FORMS: dict[str, Callable[[str], str]] = {
    **FORMS,
    "url-raw": lambda p: f"postgresql://app:{p}@{_HOST}:1/test",
    "key-value-raw": lambda p: f"host={_HOST} port=1 user=app password={p} dbname=test",
}
any_forms = st.sampled_from(sorted(RAW_FORMS))


def _absent(password: str, text: str) -> None:
    assert password not in text, text
    encoded = quote(password, safe="")
    assert encoded not in text, text


@settings(max_examples=300, deadline=None)
@given(password=passwords, form=forms)
def test_redact_hides_the_password_libpq_reads_and_keeps_the_rest(password: str, form: str) -> None:
    """redact_dsn hides exactly the password libpq reads from the DSN: libpq reads the same DSN from its output,
    with *** as the password."""
    dsn = FORMS[form](password)
    key = "sslpassword" if form == "sslpassword" else "password"
    parsed = conninfo_to_dict(dsn)
    assert parsed[key] == password  # the DSN says what we mean it to, by libpq's reading
    redacted = redact_dsn(dsn)
    _absent(password, redacted)
    assert conninfo_to_dict(redacted) == {**parsed, key: "***"}


@settings(max_examples=100, deadline=None)
@given(password=passwords, form=forms, before=st.sampled_from(["cannot connect to ", "dsn='", ""]))
def test_redact_hides_the_password_of_a_dsn_inside_a_message(password: str, form: str, before: str) -> None:
    """A DSN inside a longer message loses its password too, and the words around it stay."""
    text = f"{before}{FORMS[form](password)}: connection refused"
    redacted = redact_dsn(text)
    _absent(password, redacted)
    assert redacted.startswith(before)


@contextmanager
def _records() -> Iterator[list[logging.LogRecord]]:
    """Every log record emitted meanwhile, by any logger."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _record_text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += "".join(traceback.format_exception(*record.exc_info))
    return text


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(password=passwords, form=any_forms)
def test_reprs_errors_and_log_records_never_show_the_password(password: str, form: str) -> None:
    """repr(App), the driver's repr, the error of an unreadable DSN or an unreachable database (its text, repr
    and whole traceback chain) and every log record emitted meanwhile are free of the password."""
    dsn = RAW_FORMS[form](password)
    with _records() as records:
        try:
            app = App(dsn=dsn, connect_timeout=1)
        except ConfigurationError as exc:  # a DSN libpq cannot read
            assert form in ("url-raw", "key-value-raw")
            error: Exception = exc
        else:
            try:
                for text in (repr(app), str(app), repr(app.driver)):
                    _absent(password, text)
                    assert "***" in text
                with pytest.raises((DatabaseError, ConfigurationError)) as caught:
                    app.migrate_sync()
            finally:
                app.close()
            error = caught.value
    _absent(password, str(error))
    _absent(password, repr(error))
    _absent(password, "".join(traceback.format_exception(error)))
    for record in records:
        _absent(password, _record_text(record))


def _cli(args: list[str]) -> tuple[int, str]:
    """Run the ``nursery-worker`` entry point in-process; its exit code and everything it printed."""
    from nursery_worker._cli import main

    runner = CliRunner()
    with runner.isolation() as streams, mock.patch.object(sys, "argv", ["nursery-worker", *args]):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
    out, err = streams[0].getvalue(), streams[1].getvalue()
    return code, (out + err).decode("utf-8", "replace")


COMMANDS = [
    ["status"],
    ["migrate"],
    ["defer", "billing.send", "--args", "{}"],
    ["jobs", "list"],
    ["healthcheck"],
]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(password=passwords, form=any_forms)
def test_cli_commands_against_an_unreachable_database_never_print_the_password(password: str, form: str) -> None:
    """status, migrate, defer, jobs list and healthcheck on an unreachable (or unreadable) DSN fail without printing
    the password, in their output or in any log record."""
    dsn = RAW_FORMS[form](password)
    with _records() as records:
        for command in COMMANDS:
            for log_format in ("console", "json"):
                code, output = _cli([*command, "--dsn", dsn, "--log-format", log_format, "--log-level", "debug"])
                assert code != 0, (command, output)
                _absent(password, output)
    for record in records:
        _absent(password, _record_text(record))
