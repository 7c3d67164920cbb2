"""Click parameter types the command groups share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from .._durations import parse_duration

if TYPE_CHECKING:  # click is generic over the value only in its stubs of recent releases
    _ParamType = click.ParamType[float]
else:
    _ParamType = click.ParamType


class DurationType(_ParamType):
    """A duration option: ``90``, ``90s``, ``15m``, ``1h30m``, ``2d`` (see ``parse_duration``), as seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


#: Any duration >= 0, as float seconds.
DURATION = DurationType()


class PositiveDurationType(DurationType):
    """A duration that must be more than zero (an interval, a timeout)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        seconds = super().convert(value, param, ctx)
        if not seconds > 0:
            self.fail(f"{value!r} must be more than 0 (e.g. 2, 500ms, 1m)", param, ctx)
        return seconds


#: A duration > 0, as float seconds.
POSITIVE_DURATION = PositiveDurationType()
