"""``nursery-worker events``: emit an event, waking the jobs that wait for it (``context.wait_for_event``)."""

from __future__ import annotations

import json
from typing import Any

import click

from ._context import JSON_OPTION, LOOKUP_APP, CliContext, common_options, echo_json


@click.group()
def events() -> None:
    """Emit the events durable jobs wait for (``context.wait_for_event``)."""


def _payload(text: str | None) -> Any:
    """The ``--payload`` as JSON data (None without one)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.UsageError(
            f"--payload is not valid JSON ({exc}): {text[:80]!r}; quote a string as '\"paid\"'"
        ) from None


@events.command("emit")
@click.argument("key")
@click.option("--payload", default=None, metavar="JSON", help="The event's payload, as JSON (default: null).")
@LOOKUP_APP
@JSON_OPTION
@common_options
def events_emit(ctx: CliContext, key: str, payload: str | None, as_json: bool) -> None:
    """Emit event KEY: the jobs waiting for it run again at once and receive the payload; a job that
    waits for it later receives it too.

    The first emit of a key wins: a later one changes nothing (and says so). Events are kept for the
    workers' event retention (7 days by default).
    """
    data = _payload(payload)
    first = ctx.run(lambda a: a.emit(key, data))
    if as_json:
        echo_json({"key": key, "first": first})
    elif first:
        click.echo(f"event {key!r} emitted: the jobs waiting for it run again")
    else:
        click.echo(f"event {key!r} was emitted before: its first payload stands, nothing changed")
