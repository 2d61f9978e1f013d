"""`bt bench watch` runs end to end and reports its figures; figures are never asserted
(timings are machine-dependent), only their shape and the counts, which are exact."""

from __future__ import annotations

import json

from bt.cli import main


def test_bench_watch_json(capsys):
    assert main(["bench", "watch", "--iters", "200", "--runs", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stores"] == 400                  # every store into the GDT slot was seen
    assert doc["gdt_s"] > 0 and doc["base_s"] > 0 and "us_per_store" in doc


def test_bench_watch_text(capsys):
    assert main(["bench", "watch", "--iters", "50", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "store into a write-monitored GDT slot (100 stores, fastest of 1)" in out
    assert "per Linux context switch (6 TLS stores)" in out
