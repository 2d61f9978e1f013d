"""`bt bench patch` runs end to end and reports its figures; figures are never asserted
(timings are machine-dependent), only their shape and the counts, which are exact."""

from __future__ import annotations

import json

from bt.cli import main


def test_bench_patch_json(capsys):
    assert main(["bench", "patch", "--runs", "2", "--cmdline", "iters=50", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    configs = doc["configs"]
    assert len(configs) == 6
    assert all(len(c["runs_s"]) == 2 and c["run_s"] == min(c["runs_s"]) for c in configs.values())
    assert len(doc["pv_ratio_rounds"]) == 2 and doc["pv_ratio"] > 0
    assert configs["irqsave patched"]["traps"] < configs["irqsave unpatched"]["traps"]
    assert configs["irqsave eager"]["traps"] == 0


def test_bench_patch_text(capsys):
    assert main(["bench", "patch", "--runs", "1", "--cmdline", "iters=10"]) == 0
    out = capsys.readouterr().out
    assert "median of 1 rounds" in out and "patched irqsave / irqsave-pv (patched)" in out


def test_bench_patch_bad_runs(capsys):
    assert main(["bench", "patch", "--runs", "0"]) == 2
    assert "argument --runs: must be at least 1" in capsys.readouterr().err
