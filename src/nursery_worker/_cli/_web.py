"""``nursery-worker web``: serve the dashboard with Hypercorn, on asyncio or trio.

Loopback and read-only by default: ``--read-write`` switches the write actions on and needs
``--token`` (or ``$NURSERY_WORKER_WEB_TOKEN``); a bind to another address than loopback says so in
one warning line.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import click

from ._context import CliContext, app_option, common_options

logger = logging.getLogger("nursery_worker.cli")

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@click.command()
@app_option("The App whose queue to show, as 'package.module:app' (or give --dsn).")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to bind; loopback by default.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="The port to bind.")
@click.option(
    "--read-write",
    is_flag=True,
    help="Switch the write actions on (retry, cancel, delete, run now, bulk, queue pause and limits); needs --token.",
)
@click.option(
    "--token",
    default=lambda: os.environ.get("NURSERY_WORKER_WEB_TOKEN"),
    show_default="$NURSERY_WORKER_WEB_TOKEN",
    help="The write token (8+ characters): entered once on /login, or sent as 'Authorization: Bearer'.",
)
@click.option(
    "--backend",
    default=lambda: os.environ.get("NURSERY_WORKER_BACKEND", "asyncio"),
    type=click.Choice(["asyncio", "trio"]),
    show_default="asyncio, or $NURSERY_WORKER_BACKEND",
    help="The event loop to serve on.",
)
@click.option(
    "--statement-timeout",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.05),
    help="Seconds any one page's database reads may take.",
)
@common_options
def web(
    ctx: CliContext,
    host: str,
    port: int,
    read_write: bool,
    token: str | None,
    backend: str,
    statement_timeout: float,
) -> None:
    """Serve the dashboard (needs nursery-worker[web]): read-only on 127.0.0.1:8765 by default."""
    try:
        from hypercorn.config import Config

        from ..web import create_web_app
    except ImportError as exc:
        raise click.UsageError(
            f"the dashboard needs its extra: pip install 'nursery-worker[web]' ({exc.name} is missing)"
        ) from None
    if read_write and not token:
        raise click.UsageError("--read-write needs --token (or $NURSERY_WORKER_WEB_TOKEN) of 8+ characters")
    if not read_write and token:
        logger.warning("--token is ignored without --read-write: the dashboard is read-only")
    if backend == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            raise click.UsageError("--backend trio needs trio: pip install 'nursery-worker[trio]'") from None
    app = ctx.app()
    asgi = create_web_app(
        app, read_only=not read_write, token=token if read_write else None, statement_timeout=statement_timeout
    )
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("nursery_worker.web")
    if host not in _LOOPBACK:
        logger.warning("the dashboard binds %s: it is reachable from other machines", host)
    mode = "read-write" if read_write else "read-only"
    click.echo(f"nursery-worker dashboard ({mode}) on http://{host}:{port}/ ({backend}); Ctrl-C stops it", err=True)

    async def serve() -> None:
        serve_on: Any
        if backend == "trio":
            from hypercorn.trio import serve as serve_on
        else:
            from hypercorn.asyncio import serve as serve_on
        await serve_on(asgi, config)

    from ._run import _run_loop

    _run_loop(serve, backend)
