"""The campaign's HTML report: one self-contained page (inline CSS, no script, no fetch) and,
beside it, each entry's drill-down: the `bt compare` report of that kernel, baseline
against configuration (`runtime.report.html`), one file each in `<page>-kernels/`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import jinja2

from runtime.campaign import text
from runtime.campaign.jsonout import SCHEMA
from runtime.campaign.model import CampaignReport, Entry
from runtime.campaign.store import write_atomic
from runtime.report import fmt
from runtime.report import html as compare_html
from runtime.report.model import Comparison


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("runtime.campaign", "templates"),
        autoescape=True,  # guest output, kernel and rule names are data, never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(count=fmt.count, reduction=fmt.reduction, seconds=fmt.seconds, factor=fmt.factor,
                       removed=text.removed, status=text.status)
    return env


def _shade(removed: float | None) -> str:
    """A table cell's background: the exit map's red-yellow-green scale (runtime.report.svg),
    light enough to read the figures on."""
    if removed is None:
        return "#eeeeee"
    return f"hsl({120 * min(max(removed, 0.0), 1.0):.0f},60%,82%)"


def drilldown_folder(page: Path) -> Path:
    return page.with_name(f"{page.stem}-kernels")


def _file_name(e: Entry) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{e.kernel}-{e.config_id}") + ".html"


def drilldowns(report: CampaignReport) -> dict[tuple[str, str], tuple[str, str]]:
    """(kernel, config id) -> (file name, page): the compare report of each entry that ran."""
    out = {}
    for e in report.entries:
        if e.comparison is None:
            continue
        rep = e.representative
        options = {"campaign": report.name, "configuration": f"{e.config_id} {e.config.to_json()}",
                   **(dict(rep.options) if rep else {}),
                   "run shown": f"the one with the median wall time of {len(e.runs)}"}
        repro = dataclasses.replace(report.repro, options=options)
        page = compare_html.render(Comparison((e.comparison,), repro))
        out[(e.kernel, e.config_id)] = (_file_name(e), page)
    return out


def render(report: CampaignReport, links: Mapping[tuple[str, str], str] | None = None) -> str:
    """The campaign page; `links` maps (kernel, config id) to the drill-down's relative URL."""
    links = links or {}
    colours = {(e.kernel, e.config_id): _shade(e.reduction) for e in report.entries}
    spreads = report.timing_spread()
    values = sorted(s for s, _ in spreads)
    return _environment().get_template("campaign.html.j2").render(
        r=report, schema=SCHEMA, links=links, colours=colours, labels={c.id: c.label for c in report.configs},
        patched=[c for c in report.configs if not c.is_baseline],
        totals={t.config_id: t for t in report.totals},
        spread_median=values[len(values) // 2] if values else None,
        spread_widest=spreads[0] if spreads else None,
        speedup=text.speedup,
    )


def write(report: CampaignReport, page: Path) -> list[Path]:
    """Write the page and its drill-downs, each whole or not at all. Returns what it wrote."""
    pages = drilldowns(report)
    folder = drilldown_folder(page)
    written = []
    if pages:
        folder.mkdir(exist_ok=True)
        for name, content in pages.values():
            write_atomic(folder / name, content)
            written.append(folder / name)
    links = {key: f"{quote(folder.name)}/{name}" for key, (name, _) in pages.items()}
    write_atomic(page, render(report, links))
    return [page, *written]
