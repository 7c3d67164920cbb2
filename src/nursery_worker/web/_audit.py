"""The audit of the dashboard's write actions: who did what, to what, how many, when.

Every action that ran is written through the admin module's ``record_audit`` (the audit table of
both engines). An audit write that fails is logged, never hidden: the action itself already ran.
"""

from __future__ import annotations

import logging

from .._errors import RETRYABLE_ERRORS
from ._page import Done
from ._request import PageRequest

logger = logging.getLogger("nursery_worker.web")


def actor(req: PageRequest) -> str:
    """Who ran the action: the client's address and how it proved itself."""
    request = req.request
    client = request.client.host if request.client is not None else "unknown"
    how = "bearer" if request.headers.get("authorization") else "cookie"
    if req.options.authorize is not None:
        how = "authorize"
    user = request.scope.get("user")
    name = getattr(user, "display_name", None) or getattr(user, "username", None)
    return f"{name}@{client}" if name else f"{how}@{client}"


async def write_audit(req: PageRequest, action: str, done: Done) -> None:
    """Record *action* and its outcome in the audit table."""
    try:
        await req.admin.record_audit(actor=actor(req), action=action, target=done.target, count=done.count)
    except RETRYABLE_ERRORS as exc:
        logger.error("audit: could not record %s on %s: %s", action, done.target, type(exc).__name__)
