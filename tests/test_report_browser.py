"""The HTML report in a real browser: it loads offline without console errors and its charts are drawn.

Needs Chromium (Debian: `apt-get install chromium`); skipped when it is absent, a failure
under CI (tests/requires.py). Set RING1_SCREENSHOT=FILE.png to keep a full-page screenshot.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cdp_pipe import Browser
from report_fixtures import comparison
from requires import require_tool

from runtime.report import html

CHART_SIZES = """
JSON.stringify([...document.querySelectorAll('svg.chart')].map(svg => {
  const box = svg.getBoundingClientRect();
  const marks = [...svg.querySelectorAll('rect.bar, g.tile rect')];
  const drawn = marks.filter(m => {
    const b = m.getBoundingClientRect();
    return b.width > 0 && b.height > 0;
  });
  return {name: svg.dataset.chart, width: box.width, height: box.height,
          marks: marks.length, drawn: drawn.length};
}))
"""


def _problems(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.exceptionThrown":
            out.append(f"uncaught: {p['exceptionDetails'].get('text')}")
        elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
            out.append(f"console.{p['type']}: {p.get('args')}")
        elif e["method"] == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            out.append(f"log {p['entry']['level']}: {p['entry'].get('text')}")
    return out


def _requests(events: list[dict]) -> list[str]:
    return [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]


@pytest.mark.parametrize("kernels", [("irqsave",), ("irqsave", "zoo", "timer"), ("synthetic",)])
def test_report_loads_cleanly_and_charts_are_drawn(tmp_path: Path, kernels: tuple[str, ...]):
    import json

    page = tmp_path / "report.html"
    page.write_text(html.render(comparison(*kernels)))
    with Browser(require_tool("chromium")) as browser:
        session = browser.open_page(page.as_uri())
        charts = json.loads(browser.evaluate(session, CHART_SIZES))
        title = browser.evaluate(session, "document.title")
        if os.environ.get("RING1_SCREENSHOT"):
            browser.screenshot(session, Path(os.environ["RING1_SCREENSHOT"]))
        events = list(browser.events)

    assert not _problems(events), _problems(events)
    # Self-contained: the page itself is the only thing the browser loaded.
    assert _requests(events) == [page.as_uri()], _requests(events)
    assert title.startswith("ring1 compare")
    names = {c["name"] for c in charts}
    for k in comparison(*kernels).kernels:
        maps = {f"{k.name}-map-{m}" for m in k.patched_modes}
        assert {f"{k.name}-by-class", f"{k.name}-by-kind", *maps} <= names, names
    if len(kernels) > 1:
        assert "summary" in names
    for chart in charts:
        assert chart["width"] > 100 and chart["height"] > 50, chart
        assert chart["drawn"] > 0, chart
