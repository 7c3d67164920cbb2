"""Integration tests of App configuration against real PostgreSQL: where the DSN comes from,
what happens when it is missing, malformed or unreachable, and that a password never leaks."""

from __future__ import annotations

import contextlib
import traceback
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from nursery_worker import App, ConfigurationError, DatabaseError, JobState, redact_dsn
from nursery_worker._driver.postgres import MIGRATIONS

pytestmark = pytest.mark.anyio

Conn = psycopg.Connection[Any]
ENV_VAR = "NURSERY_WORKER_DSN"
PASSWORD = "s3cret"
UNREACHABLE = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test"


def job_count(db: Conn) -> int:
    """How many rows the test schema's jobs table holds."""
    row = db.execute("SELECT count(*) FROM jobs").fetchone()
    assert row is not None
    return int(row[0])


def exception_texts(exc: BaseException) -> list[str]:
    """What a log line shows of *exc*: its repr, and the full traceback with the chained exceptions it displays."""
    return [repr(exc), "".join(traceback.format_exception(exc))]


# --- where the DSN comes from ---------------------------------------------------------------


def test_app_without_a_dsn_can_be_constructed_when_the_env_var_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """App() with no dsn and no NURSERY_WORKER_DSN constructs fine: the DSN is only needed on first use."""
    monkeypatch.delenv(ENV_VAR, raising=False)

    app = App()

    assert ENV_VAR in repr(app)


def test_driver_without_any_dsn_is_the_embedded_engine_in_the_current_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """app.driver with neither dsn= nor NURSERY_WORKER_DSN is the embedded engine on ./nursery-worker.sqlite3."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    app = App()

    assert repr(app.driver) == f"<SqliteDriver {str(tmp_path / 'nursery-worker.sqlite3')!r} schema='nursery_worker'>"


async def test_defer_without_any_dsn_enqueues_into_the_embedded_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """defer on an App with neither dsn= nor NURSERY_WORKER_DSN creates ./nursery-worker.sqlite3 and enqueues there."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    async with App() as app:

        @app.task
        async def send(to: str) -> None: ...

        job = await send.defer(to="x")

    assert job.state is JobState.AVAILABLE
    assert (tmp_path / "nursery-worker.sqlite3").exists()


async def test_the_env_var_dsn_is_used_when_set(
    monkeypatch: pytest.MonkeyPatch, dsn: str, schema: str, db: Conn
) -> None:
    """App() with no dsn= connects to $NURSERY_WORKER_DSN on first use."""
    monkeypatch.setenv(ENV_VAR, dsn)

    async with App(schema=schema) as app:
        assert await app.migrate() == [version for version, _ in MIGRATIONS]

        @app.task
        async def send(to: str) -> None: ...

        job = await send.defer(to="x")

    assert job.state is JobState.AVAILABLE
    assert job_count(db) == 1


def test_a_blank_env_var_raises_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A NURSERY_WORKER_DSN set to blanks raises ConfigurationError naming the variable, on first use."""
    monkeypatch.setenv(ENV_VAR, "   ")
    app = App()

    with pytest.raises(ConfigurationError) as info:
        _ = app.driver

    assert ENV_VAR in str(info.value)


async def test_an_explicit_dsn_wins_over_the_env_var(
    monkeypatch: pytest.MonkeyPatch, dsn: str, schema: str, db: Conn
) -> None:
    """App(dsn=...) uses its own DSN even when NURSERY_WORKER_DSN points elsewhere."""
    monkeypatch.setenv(ENV_VAR, UNREACHABLE)

    async with App(dsn=dsn, schema=schema) as app:
        await app.migrate()

        @app.task
        async def send(to: str) -> None: ...

        await send.defer(to="x")

    assert job_count(db) == 1


@pytest.mark.parametrize("bad", ["", "   "])
def test_an_empty_dsn_is_rejected_at_construction(bad: str) -> None:
    """App(dsn="") raises ConfigurationError naming dsn= at once."""
    with pytest.raises(ConfigurationError) as info:
        App(dsn=bad)
    assert "dsn=" in str(info.value)


# --- passwords never leak -------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret_dsn",
    [
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/test",
        f"postgres://postgres:{PASSWORD}@127.0.0.1/test?sslmode=disable",
        f"host=127.0.0.1 user=postgres password={PASSWORD} dbname=test",
        f"host=127.0.0.1 user=postgres password='{PASSWORD} x' dbname=test",
        f"postgresql://postgres@127.0.0.1/test?password={PASSWORD}",
        f"postgresql://postgres@127.0.0.1/test?password={PASSWORD}&sslmode=disable",
    ],
)
def test_repr_of_app_never_shows_the_password(secret_dsn: str) -> None:
    """repr(App) and repr(app.driver) show the DSN with its password redacted, in every DSN form."""
    app = App(dsn=secret_dsn)

    for text in (repr(app), str(app), repr(app.driver)):
        assert PASSWORD not in text
        assert "***" in text


async def test_unreachable_database_raises_database_error_without_the_password(schema: str) -> None:
    """defer against a closed port raises DatabaseError within seconds, naming the host but not the password."""
    # aclosing, not ``async with app``: that opens the engine on entry; these test the first call.
    async with contextlib.aclosing(App(dsn=UNREACHABLE, schema=schema, connect_timeout=2)) as app:

        @app.task
        async def send(to: str) -> None: ...

        with anyio.fail_after(10), pytest.raises(DatabaseError) as info:
            await send.defer(to="x")

    assert isinstance(info.value, ConnectionError)
    assert "127.0.0.1" in str(info.value)
    for text in exception_texts(info.value):
        assert PASSWORD not in text


async def test_unreachable_database_makes_migrate_raise_database_error_without_the_password(schema: str) -> None:
    """app.migrate against a closed port raises DatabaseError without the password."""
    # aclosing, not ``async with app``: that opens the engine on entry; these test the first call.
    async with contextlib.aclosing(App(dsn=UNREACHABLE, schema=schema, connect_timeout=2)) as app:
        with anyio.fail_after(10), pytest.raises(DatabaseError) as info:
            await app.migrate()

    for text in exception_texts(info.value):
        assert PASSWORD not in text


async def test_unreachable_database_makes_get_job_raise_database_error(schema: str) -> None:
    """app.get_job against a closed port raises DatabaseError without the password."""
    # aclosing, not ``async with app``: that opens the engine on entry; these test the first call.
    async with contextlib.aclosing(App(dsn=UNREACHABLE, schema=schema, connect_timeout=2)) as app:
        with anyio.fail_after(10), pytest.raises(DatabaseError) as info:
            await app.get_job(1)

    for text in exception_texts(info.value):
        assert PASSWORD not in text


async def test_a_missing_database_raises_database_error_naming_it(schema: str) -> None:
    """A DSN naming a database that does not exist makes defer raise DatabaseError that says so."""
    async with contextlib.aclosing(
        App(dsn=f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/no_such_db_nw", schema=schema, connect_timeout=2)
    ) as app:

        @app.task
        async def send(to: str) -> None: ...

        with anyio.fail_after(10), pytest.raises(DatabaseError) as info:
            await send.defer(to="x")

    assert "no_such_db_nw" in str(info.value)
    for text in exception_texts(info.value):
        assert PASSWORD not in text


@pytest.mark.parametrize(
    "malformed",
    [
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/test?no_such_option=1",
        f"host=127.0.0.1 password={PASSWORD} dangling",
        f"host=127.0.0.1 password='{PASSWORD}",
        f"postgresql://postgres:{PASSWORD}@[::1/test",
    ],
)
def test_a_malformed_dsn_raises_configuration_error_without_the_password(malformed: str) -> None:
    """A DSN libpq cannot parse raises ConfigurationError at App(), showing the expected form, not the password."""
    with pytest.raises(ConfigurationError) as info:
        App(dsn=malformed)

    assert "postgresql://" in str(info.value)
    for text in exception_texts(info.value):
        assert PASSWORD not in text


@pytest.mark.parametrize(
    ("foreign", "scheme"),
    [
        (f"mysql://root:{PASSWORD}@127.0.0.1/test", "mysql"),
        (f"redis://:{PASSWORD}@127.0.0.1:6379/0", "redis"),
    ],
)
def test_a_non_postgres_scheme_raises_configuration_error(foreign: str, scheme: str) -> None:
    """A DSN for another database raises ConfigurationError naming the scheme and the expected form."""
    with pytest.raises(ConfigurationError) as info:
        App(dsn=foreign)

    assert repr(scheme) in str(info.value)
    assert "postgresql://" in str(info.value)
    for text in exception_texts(info.value):
        assert PASSWORD not in text


# --- other App options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"pool_min_size": -1},
        {"pool_max_size": 0},
        {"pool_min_size": 5, "pool_max_size": 2},
        {"connect_timeout": 0},
        {"connect_timeout": -1},
        {"max_args_bytes": 1},
        {"error_cap": 0},
        {"pool_max_size": True},
        {"schema": "Has-Caps"},
        {"schema": "public; drop table x"},
        {"schema": ""},
    ],
)
def test_invalid_app_options_are_rejected(dsn: str, options: dict[str, Any]) -> None:
    """App() with an out-of-range pool size, timeout, size limit, error cap or schema name raises ConfigurationError."""
    with pytest.raises(ConfigurationError) as info:
        App(dsn=dsn, **options)

    assert any(f"{key}=" in str(info.value) for key in options)


async def test_an_app_reconnects_after_aclose(app: App, db: Conn) -> None:
    """After app.aclose(), using the app again opens a new pool and works."""

    @app.task
    async def send(to: str) -> None: ...

    await send.defer(to="x")
    await app.aclose()
    await send.defer(to="y")

    assert job_count(db) == 2


# --- configure_database --------------------------------------------------------------------


async def test_configure_database_points_an_unused_app_at_the_dsn_and_schema_given(
    monkeypatch: pytest.MonkeyPatch, dsn: str, schema: str, db: Conn
) -> None:
    """configure_database(dsn=, schema=) on an app not used yet makes its jobs land in that database and schema."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    app = App(schema="elsewhere")

    @app.task
    async def send(to: str) -> None: ...

    app.configure_database(dsn=dsn, schema=schema)
    async with app:
        assert app.schema == schema
        await app.migrate()
        await send.defer(to="x")

    assert job_count(db) == 1


def test_configure_database_keeps_what_it_is_not_given(dsn: str) -> None:
    """configure_database(schema=...) keeps the DSN and every other option; (dsn=...) keeps the schema."""
    app = App(dsn="sqlite:///elsewhere.sqlite3", schema="kept", pool_max_size=3)

    app.configure_database(dsn=dsn)
    assert (app.schema, app.pool_max_size) == ("kept", 3)
    app.configure_database(schema="other")
    assert (app.schema, app.pool_max_size) == ("other", 3)
    assert app.driver.schema == "other"
    assert "elsewhere" not in repr(app)


async def test_configure_database_refuses_an_app_in_use_until_it_is_closed(app: App, schema: str) -> None:
    """configure_database on an app whose engine is open raises ConfigurationError; after aclose() it works."""
    with pytest.raises(ConfigurationError, match="in use"):
        app.configure_database(schema="other_schema")
    assert app.schema == schema

    await app.aclose()
    app.configure_database(schema="other_schema")

    assert app.schema == "other_schema"


@pytest.mark.parametrize(("option", "value"), [("dsn", ""), ("dsn", "mysql://x@h/db"), ("schema", "Has-Caps")])
def test_configure_database_rejects_a_bad_dsn_or_schema_and_leaves_the_app_unchanged(
    dsn: str, option: str, value: str
) -> None:
    """An invalid DSN or schema raises ConfigurationError naming it, and the app keeps its database."""
    app = App(dsn=dsn, schema="kept")
    before = app.driver
    app.close()

    with pytest.raises(ConfigurationError):
        app.configure_database(**{option: value})

    assert app.schema == "kept"
    assert app.driver is before


# --- redact_dsn -----------------------------------------------------------------------------


def test_redact_dsn_hides_a_url_password() -> None:
    """redact_dsn replaces the password of a URL DSN and keeps the rest."""
    assert redact_dsn("postgresql://app:s3cret@db.example:5432/prod") == "postgresql://app:***@db.example:5432/prod"


def test_redact_dsn_hides_a_url_password_with_encoded_characters() -> None:
    """redact_dsn replaces a percent-encoded URL password entirely."""
    assert redact_dsn("postgres://app:p%40ss%2Fw0rd@db/prod") == "postgres://app:***@db/prod"


def test_redact_dsn_hides_a_key_value_password() -> None:
    """redact_dsn replaces password=... in a libpq key/value DSN and keeps the other keys."""
    assert redact_dsn("host=db user=app password=s3cret dbname=prod") == "host=db user=app password=*** dbname=prod"


def test_redact_dsn_hides_a_quoted_key_value_password() -> None:
    """redact_dsn replaces a quoted key/value password, spaces and escaped quotes included."""
    text = r"host=db password='s3 cr\'et' dbname=prod"
    assert redact_dsn(text) == "host=db password=*** dbname=prod"


def test_redact_dsn_hides_a_final_query_parameter_password() -> None:
    """redact_dsn replaces a password= query parameter at the end of a URL."""
    assert redact_dsn("postgresql://app@db/prod?sslmode=require&password=s3cret") == (
        "postgresql://app@db/prod?sslmode=require&password=***"
    )


def test_redact_dsn_keeps_the_parameters_after_a_query_password() -> None:
    """redact_dsn replaces a password= query parameter followed by others, and keeps those others."""
    assert redact_dsn("postgresql://app@db/prod?password=s3cret&sslmode=require") == (
        "postgresql://app@db/prod?password=***&sslmode=require"
    )


def test_redact_dsn_hides_a_dsn_embedded_in_a_message() -> None:
    """redact_dsn redacts a DSN inside a longer message and leaves the words around it."""
    assert redact_dsn("cannot connect to postgresql://app:s3cret@db/prod: refused") == (
        "cannot connect to postgresql://app:***@db/prod: refused"
    )


@pytest.mark.parametrize(
    ("dsn", "redacted", "secret"),
    [
        ("postgresql://app:S3c?ret@host/db", "postgresql://app:***@host/db", "S3c?ret"),
        ("postgresql://app:S3c#ret@host/db", "postgresql://app:***@host/db", "S3c#ret"),
        ("postgresql://app:S3c%40ret@host/db", "postgresql://app:***@host/db", "S3c%40ret"),
        ("postgresql://app:S3c%2Fret@host:5432/db", "postgresql://app:***@host:5432/db", "S3c%2Fret"),
        (
            "postgresql://app:S3c:r?e#t@h1,h2:5433/db?sslmode=require",
            "postgresql://app:***@h1,h2:5433/db?sslmode=require",
            "r?e#t",
        ),
        (
            "postgresql://app@host/db?sslpassword=k%20ey&password=S3c%3Fret",
            "postgresql://app@host/db?sslpassword=***&password=***",
            "S3c",
        ),
        (
            r"host=db sslpassword='k ey \' x' password='S3c \'ret' dbname=prod",
            "host=db sslpassword=*** password=*** dbname=prod",
            "S3c",
        ),
        (r"host=db password = S3c\ ret dbname=prod", "host=db password = *** dbname=prod", "S3c"),
        # What libpq cannot read (a raw '/' in the password) is hidden whole after the scheme.
        ("postgresql://app:S3c/ret@host/db", "postgresql://***", "S3c"),
        # ... and a key/value DSN libpq cannot read from its password on (inside a message: what libpq reads).
        ("host=db password=S3c ret dbname=prod", "host=db password=***", "S3c"),
    ],
)
def test_redact_dsn_parses_the_password_as_libpq_does(dsn: str, redacted: str, secret: str) -> None:
    """redact_dsn hides a password with '?', '#', '@', '/' or ':' in it, percent-encoded ones, and quoted
    password= and sslpassword= values with spaces and escaped quotes, as libpq reads them."""
    assert redact_dsn(dsn) == redacted
    assert secret not in redact_dsn(f"cannot connect to {dsn}")


@pytest.mark.parametrize(
    "plain", ["postgresql://app@db:5432/prod", "host=db user=app dbname=prod", "postgresql:///prod?host=/tmp"]
)
def test_redact_dsn_leaves_a_dsn_without_password_unchanged(plain: str) -> None:
    """redact_dsn returns a DSN that has no password exactly as given."""
    assert redact_dsn(plain) == plain
