"""The HTML report: one self-contained file (inline CSS, inline SVG, no script, no fetch).

The template (`templates/compare.html.j2`) lays the page out; the charts are drawn
by `svg`; this module only prepares what the template shows.
"""

from __future__ import annotations

from typing import Any

import jinja2
from markupsafe import Markup

from runtime.report import fmt, svg
from runtime.report.jsonout import SCHEMA
from runtime.report.model import Comparison, KernelComparison
from runtime.report.record import BASELINE


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("runtime.report", "templates"),
        autoescape=True,  # guest output and symbol names are data, never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(count=fmt.count, reduction=fmt.reduction, change=fmt.change, seconds=fmt.seconds,
                       micros=fmt.micros,
                       factor=fmt.factor, maybe_count=fmt.maybe_count, address=fmt.address)
    return env


def _charts(k: KernelComparison) -> dict[str, Any]:
    slug = k.name
    charts: dict[str, Any] = {
        "by_class": Markup(svg.bar_chart(f"{slug}-by-class", [svg.Bar(r.key, r.counts) for r in k.by_class],
                                         k.modes)),
        "by_kind": Markup(svg.bar_chart(f"{slug}-by-kind", [svg.Bar(r.key, r.counts) for r in k.by_kind],
                                        k.modes)),
    }
    maps: dict[str, Markup] = {}
    for m in k.patched_modes:
        tiles = []
        for f in k.functions:
            detail = ", ".join(f"{mode} {fmt.count(n)}" for mode, n in f.counts.items())
            # The model's reduction, the one rule every renderer shows (runtime/report/model.py).
            tiles.append(svg.Tile(f.name, f.counts[BASELINE], f.reduction(m), f"{f.name}: {detail} exits"))
        maps[m] = Markup(svg.treemap(f"{slug}-map-{m}", tiles))
    charts["maps"] = maps
    return charts


def _summary_chart(comparison: Comparison) -> Markup | None:
    if len(comparison.kernels) < 2:
        return None
    modes: list[str] = []
    for k in comparison.kernels:
        modes += [m for m in k.modes if m not in modes]
    bars = [svg.Bar(k.name, k.total.counts) for k in comparison.kernels]
    return Markup(svg.bar_chart("summary", bars, modes))


def render(comparison: Comparison) -> str:
    template = _environment().get_template("compare.html.j2")
    return template.render(
        c=comparison,
        schema=SCHEMA,
        baseline=BASELINE,
        colours=svg.MODE_COLOURS,
        summary_chart=_summary_chart(comparison),
        kernels=[(k, _charts(k)) for k in comparison.kernels],
        not_measured=fmt.NOT_MEASURED,
    )
