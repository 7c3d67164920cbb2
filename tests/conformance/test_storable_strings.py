"""A string the database cannot store (a NUL, a lone surrogate) is refused where it is given, naming the value
and the fix, never by a generic database error later, the same on every engine."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from nursery_worker import App, ConfigurationError, JobSpec, JobState

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


def _hand_built(task: str, **fields: Any) -> JobSpec:
    """A JobSpec made by hand, as a producer that skips task.job() would: ``json.dumps`` of its arguments."""
    args = fields.pop("args", {"to": "x"})
    options: dict[str, Any] = {"queue": "default", "priority": 0, "max_attempts": 3, **fields}
    return JobSpec(task=task, args=args, args_json=json.dumps(args), **options)


#: field -> how to spoil a good spec with a bad string, and what the message then says (the field and its value).
SPOILED: dict[str, Callable[[JobSpec, str], tuple[JobSpec, str]]] = {
    "unique_key": lambda spec, bad: (
        attrs.evolve(spec, unique_key=bad, unique_states=("available",)),
        f"unique_key {bad!r} contains",
    ),
    "queue": lambda spec, bad: (attrs.evolve(spec, queue=bad), f"queue {bad!r} contains"),
    "task": lambda spec, bad: (_hand_built(f"send.{bad}"), f"task name {f'send.{bad}'!r} contains"),
    "limit_key": lambda spec, bad: (attrs.evolve(spec, limit_key=bad), f"limit key {bad!r} contains"),
    "args_json": lambda spec, bad: (_hand_built(spec.task, args={"to": bad}), "args_json['to'] contains"),
}


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("field", SPOILED)
async def test_defer_many_refuses_a_spec_holding_a_string_the_database_cannot_store(
    app: App, bad: str, field: str
) -> None:
    """A JobSpec built by hand or evolved with a NUL or a lone surrogate in a stored string makes defer_many raise
    ConfigurationError naming the item, the field, the value and the fix, and writes none of the batch."""

    @app.task(name="send")
    async def send(to: str) -> None: ...

    good = send.job(to="a")
    spoiled, named = SPOILED[field](good, bad)
    with pytest.raises(ConfigurationError, match=FIX[bad]) as caught:
        await app.defer_many([good, spoiled, send.job(to="b")])
    assert str(caught.value).startswith("defer_many: item 1 (") and named in str(caught.value)
    with pytest.raises(ConfigurationError, match=FIX[bad]):
        app.defer_many_sync([spoiled])
    (job,) = await app.defer_many([send.job(to="c")])  # the engine took nothing bad and works on
    assert [j.id for j in await app.list_jobs()] == [job.id]


async def test_defer_many_refuses_an_escaped_nul_or_nan_in_hand_built_arguments(app: App) -> None:
    """Arguments encoded by hand with json.dumps (a NUL escaped as \\u0000, NaN) are refused at defer_many, naming
    the argument's path, where task.job() would have refused them too."""

    @app.task(name="send")
    async def send(to: Any) -> None: ...

    with pytest.raises(ConfigurationError, match=r"args_json\['to'\]\[1\] contains a NUL character"):
        await app.defer_many([_hand_built("send", args={"to": ["ok", "a\x00b"]})])
    with pytest.raises(ConfigurationError, match=r"args_json\['to'\] is nan.*use None or a finite number"):
        await app.defer_many([_hand_built("send", args={"to": math.nan})])
    assert await app.list_jobs() == []


async def test_defer_many_accepts_hand_built_specs_with_storable_strings(app: App) -> None:
    """Hand-built specs with non-ASCII text, escapes and backslashes that the database can store are inserted."""

    @app.task(name="send")
    async def send(to: str) -> None: ...

    args = {"to": "Zoë \\users\\u0041 \x01 NaN Infinity 🎉"}
    (job,) = await app.defer_many([_hand_built("send", args=args, unique_key="ключ-🎉", queue="default")])
    assert (job.args, job.unique_key) == (args, "ключ-🎉")
    assert (await app.get_job(job.id)).args == args
