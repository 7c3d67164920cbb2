"""What every command shares: the common options, the one context built from them, and the helpers
that turn a command's failures into one line.

Each command takes a :class:`CliContext` as its first argument (see :func:`common_options`): its
logging is set up before the command body runs, and its App (``--app``, ``--dsn``, ``--schema``) is
built on first use and closed once the command is over.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import attrs
import click

from .._app import App
from .._dsn import redact
from .._errors import ConfigurationError, NurseryWorkerError
from .._logging import LOG_FORMATS, setup_logging
from .._process import import_app

T = TypeVar("T")
logger = logging.getLogger("nursery_worker.cli")

#: A number of seconds above zero.

#: ``--json``: print JSON instead of a table.
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table (for scripts).")


class EnvOption(click.Option):
    """An option settable by its environment variable, which an error names only if the value came from it."""

    def get_error_hint(self, ctx: click.Context | None) -> str:
        if ctx is not None and ctx.get_parameter_source(self.name or "") is click.core.ParameterSource.ENVIRONMENT:
            return super().get_error_hint(ctx)
        return click.Parameter.get_error_hint(self, ctx)


def app_option(help: str, *, required: bool = False, **extra: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """``--app`` (into ``app_path``): each command declares it where its help lists it, with its own help.

    *extra* goes to ``click.option`` (``run`` reads ``$NURSERY_WORKER_APP`` too).
    """
    return click.option("--app", "app_path", required=required, default=None, help=help, **extra)


#: ``--app`` of the commands that only read the DSN and schema from it.
LOOKUP_APP = app_option("Optional App ('package.module:app') to take DSN and schema from.")


def load_app(path: str) -> App:
    """Import the App of ``--app`` (from the current directory too).

    Raises:
        click.UsageError: the path is malformed, does not import, or is not an App.
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return import_app(path, label="--app", wrap_import_errors=True)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None


@attrs.define
class CliContext:
    """The options every command shares, and the App they name, built once on first use."""

    app_path: str | None
    dsn: str | None
    schema: str | None
    log_level: str
    log_format: str
    _app: App | None = attrs.field(default=None, repr=False)

    def app(self) -> App:
        """The ``--app`` (pointed at ``--dsn``), else an App of ``--dsn`` and ``--schema``.

        Raises:
            click.UsageError: ``--app`` does not load, or ``--schema`` contradicts its schema.
        """
        if self._app is None:
            self._app = self._make_app()
        return self._app

    def _make_app(self) -> App:
        if not self.app_path:
            return App(dsn=self.dsn, schema=self.schema)
        app = load_app(self.app_path)
        if self.schema is not None and self.schema != app.schema:
            raise click.UsageError(f"--schema {self.schema!r} differs from the app's schema {app.schema!r}")
        if self.dsn is not None:
            app.close()  # an engine the module opened at import is replaced, not refused
            app.configure_database(dsn=self.dsn)
        return app

    def run(self, body: Callable[[App], Awaitable[T]]) -> T:
        """Run ``body(app)`` on an event loop, close the app, and turn failures into one-line errors."""
        app = self.app()

        async def main() -> T:
            try:
                return await body(app)
            finally:
                await app.aclose()

        try:
            return anyio.run(main)
        except (NurseryWorkerError, click.ClickException):
            raise
        except Exception as exc:
            raise fail(exc) from None

    def close(self) -> None:
        """Close the app's connections, if it was built (closing twice is harmless)."""
        if self._app is not None:
            self._app.close()


def common_options(command: Callable[..., T]) -> Callable[..., T]:
    """Add ``--dsn``, ``--schema``, ``--log-format`` and ``--log-level`` to *command*, and call it
    with a :class:`CliContext` of them (and of its ``--app``) as its first argument.

    Apply it closest to the function, under the command's own options: it takes ``app_path`` out of
    the command's keyword arguments too. Logging is set up before the command body runs; the app
    is closed when it returns or fails.
    """

    @functools.wraps(command)
    def invoke(
        *args: Any,
        app_path: str | None = None,
        dsn: str | None,
        schema: str | None,
        log_level: str,
        log_format: str,
        **kwargs: Any,
    ) -> T:
        setup_logging(log_level, log_format)
        # The supervisor's children read it from their environment.
        os.environ["NURSERY_WORKER_LOG_FORMAT"] = log_format
        context = CliContext(app_path=app_path, dsn=dsn, schema=schema, log_level=log_level, log_format=log_format)
        try:
            return command(context, *args, **kwargs)
        finally:
            context.close()

    decorate = [
        click.option(
            "--dsn",
            default=None,
            help="PostgreSQL DSN, or sqlite:///PATH; default: the app's, $NURSERY_WORKER_DSN, "
            "./nursery-worker.sqlite3.",
        ),
        click.option(
            "--schema",
            default=None,
            help="Schema holding the tables; default: the app's, $NURSERY_WORKER_SCHEMA, nursery_worker.",
        ),
        click.option(
            "--log-format",
            default="console",
            envvar="NURSERY_WORKER_LOG_FORMAT",
            show_envvar=True,
            cls=EnvOption,
            type=click.Choice(LOG_FORMATS),
            show_default=True,
            help="console: human lines; json: one object per line. Job lines carry job id, task, queue, "
            "attempt, worker.",
        ),
        click.option(
            "--log-level",
            default="info",
            envvar="NURSERY_WORKER_LOG_LEVEL",
            show_envvar=True,
            cls=EnvOption,
            type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
            show_default=True,
        ),
    ]
    wrapped: Callable[..., T] = invoke
    for option in decorate:
        wrapped = option(wrapped)
    return wrapped


def fail(exc: BaseException) -> click.ClickException:
    """One redacted line for an unexpected error (its traceback goes to the debug log)."""
    logger.debug("details", exc_info=exc)
    return click.ClickException(
        redact(str(exc)) if isinstance(exc, NurseryWorkerError) else redact(f"{type(exc).__name__}: {exc}")
    )


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
