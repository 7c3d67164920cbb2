"""Rendering: the Jinja2 environment (autoescaped, with the dashboard's filters) and the
conversion of a view's records to JSON for the ``/api`` twin."""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import jinja2

from .._dsn import redact as redact_dsn
from .._models import JobStep
from .._status import progress_text, step_outcome

_TEMPLATES = Path(__file__).parent / "templates"


def jsonable(value: Any) -> Any:
    """*value* as JSON-ready data: attrs records become dicts, times ISO strings, enums values."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if attrs.has(type(value)):
        return {f.name: jsonable(getattr(value, f.name)) for f in attrs.fields(type(value)) if f.repr is not False}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return str(value)


def _ago(seconds: float | None) -> str:
    """A duration for people: 42s, 3m 5s, 2h 10m, 4d 3h."""
    if seconds is None:
        return "—"
    s = int(abs(seconds))
    if s < 60:
        text = f"{s}s"
    elif s < 3600:
        text = f"{s // 60}m {s % 60}s"
    elif s < 86400:
        text = f"{s // 3600}h {s % 3600 // 60}m"
    else:
        text = f"{s // 86400}d {s % 86400 // 3600}h"
    return ("-" if seconds < 0 else "") + text


def _time(value: dt.datetime | None) -> str:
    return "—" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _pretty(value: Any) -> str:
    return json.dumps(jsonable(value), indent=2, sort_keys=True, ensure_ascii=False)


#: A step's result or error is shortened to this many characters on the job page (the JSON twin has it whole).
STEP_PREVIEW = 120


def _outcome(step: JobStep) -> str:
    return step_outcome(step, STEP_PREVIEW)


def make_environment() -> jinja2.Environment:
    """The dashboard's Jinja2 environment: templates of ``web/templates``, autoescaped."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        enable_async=False,
    )
    env.filters["ago"] = _ago
    env.filters["time"] = _time
    env.filters["pretty"] = _pretty
    env.filters["nodsn"] = redact_dsn
    env.filters["progress"] = progress_text
    env.filters["outcome"] = _outcome
    return env
