"""The dashboard: a web UI over an App's queue, as an ASGI app (Starlette, on trio or asyncio).

Install with ``pip install nursery-worker[web]``. Serve it alone with
``nursery-worker web --app tasks:app`` (Hypercorn; loopback and read-only by default), or mount it
in a Starlette/FastAPI/Litestar app under a prefix::

    from nursery_worker.web import create_web_app
    host.mount("/queue", create_web_app(app))

It needs no lifespan: the App's engine opens on the first request (and closes at shutdown when
the server runs the lifespan). Every read and write goes through the admin module (``_admin.py``),
so the dashboard, the CLI and the ``App`` methods share one implementation of each operation.

Adding a page (the convention; nothing central lists pages)
-------------------------------------------------------------
1. Create ``web/_pages/<name>.py`` defining ``PAGE = Page(name=..., path=..., title=..., order=...,
   handler=...)`` (records in ``_page.py``). Modules starting with ``_`` are shared helpers, not
   pages. Nav order: overview 10, jobs 20, queues 40, workers 50, periodic 60, workflows 70,
   failures 80, metrics 90; detail pages set ``nav=False``.
2. The handler is ``async def handler(req: PageRequest) -> View``: read through ``req.admin``
   (wrapped in ``await req.read(lambda: ...)`` for the statement timeout), check query
   parameters with ``req.param`` / ``req.int_param`` / ``req.time_param`` (a bad value raises
   :class:`WebError` 400), pass every job through ``req.show(job)`` (the redaction hook) before
   it reaches a template or JSON, and return ``View(template="<name>.html", context={...})``.
3. The template ``web/templates/<name>.html`` extends ``base.html`` and fills ``content``; use
   ``_macros.html`` for forms (``post_button`` carries the CSRF token) and estimated counts.
   The whole ``content`` block is the live region: it is re-fetched on change events (or every
   5 s), so it must render from the URL alone.
4. The JSON twin comes free: ``GET /api{path}`` (``/api/overview`` for ``/``) answers the view's
   ``data``, or its context converted by ``_render.jsonable``.
5. Writes are :class:`Action` entries of ``Page.actions``: ``POST {path}{action.path}`` (a form;
   answered by a redirect with a flash message) and ``POST /api{path}{action.path}`` (JSON). The
   framework checks, before the handler runs: write actions on (else 403), same origin, the CSRF
   token (browser posts), and the token or ``authorize(request, action.name)``; after it, it writes
   the audit row from the returned :class:`Done`. An action handler never checks these itself.

Safety, closed by default: read-only unless ``read_only=False`` with a token or an authorize hook;
POST only for changes; CSP without inline script, ``X-Frame-Options: DENY``, ``nosniff``; the DSN's
password is never rendered; bad input gives a 4xx page, never a traceback.
"""

from ._page import Action, Done, Page, View, WebError
from ._request import PageRequest
from ._server import create_web_app

__all__ = ["Action", "Done", "Page", "PageRequest", "View", "WebError", "create_web_app"]
