"""A string the database cannot store (a NUL, a lone surrogate) is refused where it is given, naming the value
and the fix, never by a generic database error later, the same on every engine."""

from __future__ import annotations

import pytest

from nursery_worker import App, ConfigurationError, JobState

pytestmark = pytest.mark.anyio

BAD = ["a\x00b", "a\ud800b"]
FIX = {"a\x00b": "NUL character", "a\ud800b": "lone surrogate"}


@pytest.mark.parametrize("key", BAD)
async def test_configure_refuses_a_unique_key_the_database_cannot_store(app: App, key: str) -> None:
    """configure(unique_key=...) with a NUL or a lone surrogate raises ConfigurationError naming the key and the fix."""

    @app.task
    async def send() -> None: ...

    with pytest.raises(ConfigurationError, match=FIX[key]) as caught:
        send.configure(unique_key=key)
    assert repr(key) in str(caught.value) and "unique_key" in str(caught.value)
    job = await send.configure(unique_key="a-b").defer()  # the engine took nothing bad and works on
    assert job.state is JobState.AVAILABLE and job.unique_key == "a-b"


@pytest.mark.parametrize("key", BAD)
def test_a_task_declared_with_a_unique_key_the_database_cannot_store_is_refused(app: App, key: str) -> None:
    """@app.task(unique_key=...) with a NUL or a lone surrogate is refused when the task is declared."""
    with pytest.raises(ConfigurationError, match=FIX[key]):

        @app.task(unique_key=key)
        async def send() -> None: ...


@pytest.mark.parametrize("key", BAD)
async def test_a_unique_key_function_returning_an_unstorable_key_is_refused_at_defer(app: App, key: str) -> None:
    """A unique_key function whose key holds a NUL or a lone surrogate makes defer raise ConfigurationError."""

    @app.task(unique_key=lambda args: key)
    async def send(to: str) -> None: ...

    with pytest.raises(ConfigurationError, match=FIX[key]):
        await send.defer(to="x")


@pytest.mark.parametrize("key", BAD)
async def test_a_limit_by_function_returning_an_unstorable_key_is_refused_at_defer(app: App, key: str) -> None:
    """A limit_by function whose key holds a NUL or a lone surrogate makes defer raise ConfigurationError."""

    @app.task(max_concurrency=1, limit_by=lambda args: key)
    async def send(to: str) -> None: ...

    with pytest.raises(ConfigurationError, match=FIX[key]):
        await send.defer(to="x")


def test_a_task_or_periodic_name_with_a_lone_surrogate_is_refused(app: App) -> None:
    """A task name or a periodic schedule's name with a lone surrogate is refused like one with a NUL."""
    with pytest.raises(ConfigurationError, match="not valid"):

        @app.task(name="billing.\ud800")
        async def send() -> None: ...

    @app.task
    async def tick() -> None: ...

    with pytest.raises(ConfigurationError, match="tick-"):
        app.periodic(tick, cron="* * * * *", name="tick-\ud800")
