"""Durations as people write and read them: the one parser and the formatters every surface shares.

The CLI, the environment variables of ``run`` and the dashboard all accept the same forms, parsed
by :func:`parse_duration`, so ``1h30m`` means the same thing everywhere.
"""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_FORMS = "seconds (90, 2.5) or a number with units ms, s, m, h, d, w, compounded largest first (1h30m, 2d12h)"


def parse_duration(text: str) -> float:
    """Parse ``90``, ``2.5``, ``90s``, ``15m``, ``1h30m``, ``2d``, ``1w2d``, ``250ms`` into seconds.

    A bare number is seconds. Compound forms name each unit once, largest first.

    Args:
        text: the duration as written; surrounding space and case are ignored.

    Returns:
        The duration in seconds (>= 0).

    Raises:
        ValueError: *text* is not a duration; the message names it and the accepted forms.
    """
    raw = text.strip().lower().replace(" ", "")
    if not raw:
        raise ValueError(f"{text!r} is not a duration: use {_FORMS}")
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"{text!r} is not a duration: must be finite and >= 0; use {_FORMS}")
        return seconds
    total = 0.0
    pos = 0
    last_rank = math.inf
    for match in _PART.finditer(raw):
        if match.start() != pos:
            break
        size = _UNITS[match.group(2)]
        if size >= last_rank:
            raise ValueError(f"{text!r} is not a duration: name each unit once, largest first (e.g. 1h30m)")
        last_rank = size
        total += float(match.group(1)) * size
        pos = match.end()
    if pos != len(raw):
        raise ValueError(f"{text!r} is not a duration: use {_FORMS}")
    return total


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h01m``, ``3d04h``: short and sortable by eye."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_duration_exact(seconds: float) -> str:
    """The shortest compound form that :func:`parse_duration` reads back to *seconds* (``1h30m``)."""
    if seconds != int(seconds) or seconds < 1:
        return f"{seconds:g}s"
    left = int(seconds)
    out = []
    for unit in ("w", "d", "h", "m", "s"):
        size = int(_UNITS[unit])
        if left >= size:
            out.append(f"{left // size}{unit}")
            left %= size
    return "".join(out)
