"""Inline SVG charts for the dashboard's history and workflow pages: drawn on the server, no script.

Only SVG presentation attributes are used (no ``style`` attributes), so the dashboard's CSP
(``style-src 'self'``) holds. Every text that reaches the SVG is escaped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

from ..._insights import JobGraph

#: Line colours, one per series, in order.
COLOURS = ("#3556d8", "#c0362c", "#067647", "#b54708", "#7a5af8", "#0e9384")
#: Node fills by job state.
STATE_FILL = {
    "completed": "#ecfdf3",
    "discarded": "#fef3f2",
    "cancelled": "#fef3f2",
    "executing": "#eff8ff",
    "retryable": "#fffaeb",
}


def line_chart(
    times: Sequence[dt.datetime],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    label: Callable[[float], str],
    width: int = 640,
    height: int = 160,
) -> Markup:
    """A line chart of *series* (name, one value or None per time) over *times*, with the highest
    value labelled by *label*; gaps (None) break a line."""
    pad_left, pad_bottom, pad_top = 64, 20, 8
    inner_w, inner_h = width - pad_left - 8, height - pad_bottom - pad_top
    values = [v for _, vs in series for v in vs if v is not None]
    top = max(values) if values else 0.0
    top = top if top > 0 else 1.0
    n = max(1, len(times) - 1)

    def x(i: int) -> float:
        return pad_left + inner_w * i / n

    def y(v: float) -> float:
        return pad_top + inner_h * (1 - v / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img">',
        f'<line x1="{pad_left}" y1="{pad_top + inner_h}" x2="{width - 8}" y2="{pad_top + inner_h}" stroke="#d0d5dd"/>',
        f'<line x1="{pad_left}" y1="{pad_top}" x2="{pad_left}" y2="{pad_top + inner_h}" stroke="#d0d5dd"/>',
        f'<text x="{pad_left - 4}" y="{pad_top + 10}" text-anchor="end" font-size="10" fill="#667085">'
        f"{escape(label(top))}</text>",
        f'<text x="{pad_left - 4}" y="{pad_top + inner_h}" text-anchor="end" font-size="10" fill="#667085">'
        f"{escape(label(0.0))}</text>",
    ]
    if times:
        for i, anchor in ((0, "start"), (len(times) - 1, "end")):
            parts.append(
                f'<text x="{x(i):.1f}" y="{height - 4}" text-anchor="{anchor}" font-size="10" fill="#667085">'
                f"{escape(times[i].strftime('%m-%d %H:%M'))}</text>"
            )
    for k, (name, vs) in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        runs: list[list[str]] = [[]]
        for i, v in enumerate(vs):
            if v is None:
                runs.append([])
            else:
                runs[-1].append(f"{x(i):.1f},{y(v):.1f}")
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>')
            elif run:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(run)}"/>')
        parts.append(
            f'<text x="{pad_left + 6 + 110 * k}" y="{pad_top + 10}" font-size="10" fill="{colour}">'
            f"{escape(name)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def graph_svg(graph: JobGraph, *, link: Callable[[int], str]) -> Markup:
    """*graph* as columns by depth (dependencies left, dependants right), one box per job linking to
    ``link(job_id)``, with an arrow from each dependency to its dependant."""
    columns: dict[int, list[int]] = {}
    for node in graph.nodes:
        columns.setdefault(node.depth, []).append(node.id)
    depths = sorted(columns)
    box_w, box_h, gap_x, gap_y = 170, 40, 50, 14
    where: dict[int, tuple[float, float]] = {}
    for c, depth in enumerate(depths):
        for r, job_id in enumerate(columns[depth]):
            where[job_id] = (10 + c * (box_w + gap_x), 10 + r * (box_h + gap_y))
    width = 20 + len(depths) * (box_w + gap_x) - gap_x
    height = 20 + max(len(ids) for ids in columns.values()) * (box_h + gap_y) - gap_y
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#98a2b3"/></marker></defs>',
    ]
    for parent, child in graph.edges():
        (px, py), (cx, cy) = where[parent], where[child]
        parts.append(
            f'<line x1="{px + box_w}" y1="{py + box_h / 2}" x2="{cx}" y2="{cy + box_h / 2}" stroke="#98a2b3" '
            'marker-end="url(#arrow)"/>'
        )
    for node in graph.nodes:
        nx, ny = where[node.id]
        state = node.state.value
        stroke = "#3556d8" if node.id == graph.job_id else "#d0d5dd"
        task = node.task if len(node.task) <= 24 else "…" + node.task[-23:]
        parts.append(
            f'<a href="{escape(link(node.id))}"><rect x="{nx}" y="{ny}" width="{box_w}" height="{box_h}" rx="4" '
            f'fill="{STATE_FILL.get(state, "#f2f4f7")}" stroke="{stroke}"/>'
            f'<text x="{nx + 6}" y="{ny + 16}" font-size="11" fill="#1d2433">#{node.id} {escape(state)}</text>'
            f'<text x="{nx + 6}" y="{ny + 31}" font-size="10" fill="#667085">{escape(task)}</text></a>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def seconds_label(value: float) -> str:
    """A duration for an axis: 850ms, 1.2s, 3m."""
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f}s"
    return f"{value / 60:.0f}m"
