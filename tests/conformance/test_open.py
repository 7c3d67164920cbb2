"""Opening the engine eagerly: ``app.open()``, ``app.open_sync()``, ``async with app:`` and ``with app:``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from nursery_worker import App, ConfigurationError, DatabaseError, JobState


def unreachable_dsn(engine: str, tmp_path: Path) -> str:
    """A DSN whose database cannot be opened: a closed port, or a file in a directory that does not exist."""
    if engine == "postgres":
        return "postgresql://postgres@127.0.0.1:1/test"
    return f"sqlite:///{tmp_path / 'missing' / 'jobs.sqlite3'}"


def assert_in_use(app: App) -> None:
    """The app's engine is open: configure_database refuses to repoint it."""
    with pytest.raises(ConfigurationError, match="is in use"):
        app.configure_database(schema="elsewhere")


@pytest.mark.anyio
async def test_open_opens_the_engine_before_the_first_call(make_app: Callable[..., App]) -> None:
    """``await app.open()`` opens the engine (the app is in use) and a later defer works on it."""
    app = make_app()
    await app.open()
    assert_in_use(app)
    await app.migrate()

    @app.task
    async def ping() -> None: ...

    assert (await ping.defer()).state is JobState.AVAILABLE


@pytest.mark.anyio
async def test_open_twice_is_harmless_and_reopens_after_aclose(make_app: Callable[..., App]) -> None:
    """A second ``open()`` does nothing; after ``aclose()`` the app is free to repoint, and opens again."""
    app = make_app()
    await app.open()
    await app.open()
    await app.aclose()
    app.configure_database(schema=app.schema)
    await app.open()
    assert_in_use(app)


@pytest.mark.anyio
async def test_async_with_opens_on_entry_and_closes_on_exit(make_app: Callable[..., App]) -> None:
    """``async with app:`` opens the engine before the block's first call and closes it on exit."""
    app = make_app()
    async with app as entered:
        assert entered is app
        assert_in_use(app)
    app.configure_database(schema=app.schema)


@pytest.mark.anyio
async def test_open_of_an_unreachable_database_raises_database_error(
    engine: str, engine_schema: str, tmp_path: Path
) -> None:
    """``open()`` of a database that cannot be reached raises DatabaseError at once, not at the first defer."""
    dsn = unreachable_dsn(engine, tmp_path)
    app = App(dsn=dsn, schema=engine_schema, connect_timeout=2)
    with anyio.fail_after(15), pytest.raises(DatabaseError):
        await app.open()
    await app.aclose()


@pytest.mark.anyio
async def test_a_failed_async_with_entry_leaves_the_app_closed(engine: str, engine_schema: str, tmp_path: Path) -> None:
    """When ``async with app:`` cannot open the engine it raises DatabaseError and leaves the app closed."""
    dsn = unreachable_dsn(engine, tmp_path)
    app = App(dsn=dsn, schema=engine_schema, connect_timeout=2)
    with anyio.fail_after(15), pytest.raises(DatabaseError):
        async with app:
            pytest.fail("the block ran although the engine did not open")
    app.configure_database(schema=engine_schema)


def test_open_sync_opens_the_engine(make_app: Callable[..., App]) -> None:
    """``app.open_sync()`` opens the engine from synchronous code (the app is in use)."""
    app = make_app()
    app.open_sync()
    assert_in_use(app)


def test_with_opens_on_entry_and_closes_on_exit(make_app: Callable[..., App]) -> None:
    """``with app:`` opens the engine on entry and closes it on exit, like ``async with``."""
    app = make_app()
    with app as entered:
        assert entered is app
        assert_in_use(app)
    app.configure_database(schema=app.schema)


def test_a_failed_with_entry_raises_database_error_and_leaves_the_app_closed(
    engine: str, engine_schema: str, tmp_path: Path
) -> None:
    """When ``with app:`` cannot open the engine it raises DatabaseError and leaves the app closed."""
    dsn = unreachable_dsn(engine, tmp_path)
    app = App(dsn=dsn, schema=engine_schema, connect_timeout=2)
    with pytest.raises(DatabaseError), app:
        pytest.fail("the block ran although the engine did not open")
    app.configure_database(schema=engine_schema)
