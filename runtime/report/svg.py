"""Charts for the HTML report, drawn here as inline SVG.

Drawing on the server side keeps the page one self-contained file that needs no
script and no network: it opens offline, prints, and shows the same thing in any
browser. Each chart is an `<svg class="chart">` with a `data-chart` name, so
tests can find it in the page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from runtime.report import fmt

#: One colour per run, the same in every chart and legend; variants (`--variant`) take the
#: next free colour of VARIANT_COLOURS in the order the chart lists them.
MODE_COLOURS = {"unpatched": "#c0504d", "dynamic": "#4f81bd", "static": "#9bbb59"}
VARIANT_COLOURS = ("#8064a2", "#f79646", "#4bacc6", "#7f7f7f", "#b65708", "#2c4d75")


def _colours(modes: Sequence[str]) -> dict[str, str]:
    extra = [m for m in modes if m not in MODE_COLOURS]
    out = {m: VARIANT_COLOURS[i % len(VARIANT_COLOURS)] for i, m in enumerate(extra)}
    return {**out, **MODE_COLOURS}
FONT = "font-family:system-ui,sans-serif;font-size:12px"


@dataclass(frozen=True)
class Bar:
    label: str
    counts: Mapping[str, int]


def _log(n: int) -> float:
    # log10(1 + n): 0 maps to 0, and counts from 1 to millions share one readable axis.
    return math.log10(1 + n)


def bar_chart(name: str, bars: Sequence[Bar], modes: Sequence[str], width: int = 760) -> str:
    """Horizontal grouped bars, one group per label and one bar per run, on a log axis
    (patching removes exits by orders of magnitude; a linear axis would hide the after bars)."""
    label_w, value_w, bar_h, gap = 150, 90, 14, 10
    plot_w = width - label_w - value_w
    group_h = bar_h * len(modes) + gap
    legend_h, axis_h = 24, 36
    height = legend_h + group_h * max(len(bars), 1) + axis_h
    top = max((c for b in bars for c in b.counts.values()), default=0)
    scale = plot_w / _log(top) if top else 0.0
    out = [f'<svg class="chart" data-chart="{escape(name)}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" style="{FONT}">']
    colour = _colours(modes)
    x = label_w
    for m in modes:
        out.append(f'<rect x="{x}" y="4" width="12" height="12" fill="{colour[m]}"/>'
                   f'<text x="{x + 16}" y="14">{escape(m)}</text>')
        x += 20 + 8 * len(m) + 16
    for i, b in enumerate(bars):
        y0 = legend_h + i * group_h
        out.append(f'<text x="{label_w - 6}" y="{y0 + group_h / 2}" text-anchor="end" '
                   f'dominant-baseline="middle">{escape(b.label)}</text>')
        for j, m in enumerate(modes):
            n = b.counts.get(m, 0)
            w = _log(n) * scale
            y = y0 + j * bar_h
            out.append(f'<rect class="bar" data-mode="{escape(m)}" x="{label_w}" y="{y}" width="{w:.1f}" '
                       f'height="{bar_h - 2}" fill="{colour[m]}">'
                       f'<title>{escape(b.label)}, {escape(m)}: {fmt.count(n)} exits</title></rect>'
                       f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h / 2}" '
                       f'dominant-baseline="middle">{fmt.count(n)}</text>')
    # Decade ticks: the axis is logarithmic and says so.
    y_axis = legend_h + group_h * max(len(bars), 1)
    out.append(f'<line x1="{label_w}" y1="{y_axis}" x2="{label_w + plot_w}" y2="{y_axis}" stroke="#999"/>')
    if top:
        for d in range(int(math.log10(top)) + 1):
            tx = label_w + _log(10 ** d) * scale
            out.append(f'<line x1="{tx:.1f}" y1="{y_axis}" x2="{tx:.1f}" y2="{y_axis + 4}" stroke="#999"/>'
                       f'<text x="{tx:.1f}" y="{y_axis + 16}" text-anchor="middle" fill="#666">'
                       f'{fmt.count(10 ** d)}</text>')
    out.append(f'<text x="{label_w + plot_w}" y="{y_axis + 32}" text-anchor="end" fill="#666">'
               'exits (logarithmic scale)</text></svg>')
    return "".join(out)


@dataclass(frozen=True)
class Tile:
    label: str
    weight: int  # the tile's area is proportional to it
    removed: float | None  # share of exits patching removed (colour); None: no baseline exits
    tooltip: str


def _worst(row: Sequence[float], side: float) -> float:
    s = sum(row)
    return max(max(side * side * r / (s * s), (s * s) / (side * side * r)) for r in row)


def squarify(areas: Sequence[float], x: float, y: float, w: float, h: float) -> list[tuple[float, ...]]:
    """Rectangles for `areas` (sorted largest first, summing to w*h), kept close to square
    (Bruls, Huizing, van Wijk, "Squarified Treemaps", 2000)."""
    rects: list[tuple[float, ...]] = []
    i = 0
    while i < len(areas):
        side = min(w, h)
        row = [areas[i]]
        i += 1
        while i < len(areas) and _worst([*row, areas[i]], side) <= _worst(row, side):
            row.append(areas[i])
            i += 1
        s = sum(row)
        if w >= h:  # lay the row as a column along the left edge
            col_w = s / h
            yy = y
            for a in row:
                rects.append((x, yy, col_w, a / col_w))
                yy += a / col_w
            x, w = x + col_w, w - col_w
        else:  # lay it as a row along the top edge
            row_h = s / w
            xx = x
            for a in row:
                rects.append((xx, y, a / row_h, row_h))
                xx += a / row_h
            y, h = y + row_h, h - row_h
    return rects


def removed_colour(removed: float | None) -> str:
    """Red (nothing removed, or more exits) through yellow to green (every exit removed)."""
    if removed is None:
        return "#bbbbbb"
    hue = 120 * min(max(removed, 0.0), 1.0)
    return f"hsl({hue:.0f},60%,55%)"


def treemap(name: str, tiles: Sequence[Tile], width: int = 760, height: int = 320) -> str:
    """A map of exits over the kernel's functions: area = exits, colour = share removed."""
    tiles = sorted((t for t in tiles if t.weight > 0), key=lambda t: (-t.weight, t.label))
    out = [f'<svg class="chart" data-chart="{escape(name)}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" style="{FONT}">']
    total = sum(t.weight for t in tiles)
    if not total:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#666">'
                   'no exits at any guest instruction</text></svg>')
        return "".join(out)
    areas = [t.weight * width * height / total for t in tiles]
    for t, (x, y, w, h) in zip(tiles, squarify(areas, 0, 0, width, height), strict=True):
        out.append(f'<g class="tile"><rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                   f'fill="{removed_colour(t.removed)}" stroke="#fff" stroke-width="2">'
                   f'<title>{escape(t.tooltip)}</title></rect>')
        # Label only tiles big enough to hold it; the tooltip and the table carry the rest.
        if w > 7 * min(len(t.label), 24) and h > 30:
            out.append(f'<text x="{x + 5:.1f}" y="{y + 15:.1f}">{escape(t.label[:24])}</text>'
                       f'<text x="{x + 5:.1f}" y="{y + 29:.1f}" fill="#333">{fmt.count(t.weight)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)
