"""``nursery-worker breakers``: the circuit breakers of tasks."""

from __future__ import annotations

import click

from ._context import JSON_OPTION, LOOKUP_APP, CliContext, common_options, echo_json


@click.group()
def breakers() -> None:
    """Show the circuit breakers of tasks (circuit_breaker=)."""


@breakers.command("list")
@LOOKUP_APP
@JSON_OPTION
@common_options
def breakers_list(ctx: CliContext, as_json: bool) -> None:
    """Every circuit breaker: closed, open (jobs held back) or half open (a probe runs), and its failures."""
    from .._status import breaker_dict, render_breakers

    found = ctx.run(lambda a: a.list_breakers())
    if as_json:
        echo_json([breaker_dict(b) for b in found])
    else:
        click.echo(render_breakers(found))
