"""The ``nursery-worker`` command line: the root group and :func:`main`, its entry point.

One module per command group; the options every command shares (``--app``, ``--dsn``,
``--schema``, ``--log-level``, ``--log-format``) and the context built from them live in
``_context``.

A user mistake (bad option, unreachable database, unmigrated schema, an app path that does not
import) prints one line and exits non-zero; tracebacks are for bugs, and for ``--log-level debug``.
"""

from __future__ import annotations

import os
import sys

import click

from .._dsn import redact
from .._errors import NurseryWorkerError
from ._breakers import breakers
from ._cron import cron
from ._defer import defer
from ._events import events
from ._jobs import jobs
from ._queues import queues
from ._run import run
from ._schema import migrate, prune
from ._status import healthcheck, status
from ._web import web


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nursery-worker")
def cli() -> None:
    """nursery-worker: durable background jobs for trio and asyncio, on PostgreSQL."""


for _command in (run, migrate, defer, status, healthcheck, jobs, queues, breakers, prune, cron, events, web):
    cli.add_command(_command)


def main() -> None:
    """Entry point of the ``nursery-worker`` console script."""
    try:
        cli.main(prog_name="nursery-worker", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        # One line, with where to look, instead of click's usage block.
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"Error: {redact(exc.format_message())}{where}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except NurseryWorkerError as exc:
        click.echo(f"Error: {redact(str(exc))}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug, or user code failing at import; still one line unless debugging
        if os.environ.get("NURSERY_WORKER_DEBUG"):
            raise
        click.echo(
            f"Error: {redact(f'{type(exc).__name__}: {exc}')} (set NURSERY_WORKER_DEBUG=1 for a traceback)", err=True
        )
        sys.exit(1)
