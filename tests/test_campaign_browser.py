"""The campaign's HTML page and a drill-down in a real browser: they load offline, ask for
nothing but themselves, and every drill-down link leads to a page that is there.

Needs Chromium (skipped without it; CI installs it and must run this test).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from campaign_fixtures import record, report, runs
from cdp_pipe import Browser, find_chromium

from runtime.campaign import html

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                reason="chromium not installed (apt-get install chromium)")

PAGE_FACTS = """
JSON.stringify({
  title: document.title,
  links: [...document.querySelectorAll('a')].map(a => a.href),
  flagged: document.querySelectorAll('td.flagged').length,
  cells: document.querySelectorAll('td.cell').length,
})
"""


def _requests(events: list[dict]) -> list[str]:
    return [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]


def _errors(events: list[dict]) -> list[dict]:
    return [e for e in events if e["method"] == "Runtime.exceptionThrown"
            or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]


def test_the_campaign_page_and_its_drilldowns_load_offline(tmp_path: Path):
    r = report(tmp_path, runs(static_1=record("static", serial=b"other\n", exits=150)))
    page = tmp_path / "campaign.html"
    written = html.write(r, page)
    assert CHROMIUM is not None, "chromium is not installed, and CI must run this test"
    with Browser(CHROMIUM) as browser:
        session = browser.open_page(page.as_uri())
        facts = json.loads(browser.evaluate(session, PAGE_FACTS))
        events = list(browser.events)
    with Browser(CHROMIUM) as browser:  # cdp_pipe drives one page per browser
        drill = browser.open_page(facts["links"][1])
        drill_title = browser.evaluate(drill, "document.title")
        events += browser.events
    assert facts["title"] == "ring1 campaign: m"
    # the baseline and two configurations in the exits table, two in the speedup table (one kernel:
    # no totals); static's runs disagree, so it is flagged in both tables
    assert facts["cells"] == 1 + 2 + 2 and facts["flagged"] == 2
    assert sorted({Path(u.removeprefix("file://")) for u in facts["links"]}) == sorted(written[1:])
    assert drill_title.startswith("ring1 compare")
    assert not _errors(events), _errors(events)
    assert set(_requests(events)) == {page.as_uri(), facts["links"][1]}
