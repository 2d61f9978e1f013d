"""`bt bench engine` and the engine floor run end to end: the shape of the figures and
the counts are checked, never a timing (benchmarks print them, tests do not assert them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bt.cli import main
from runtime import enginebench
from runtime.floor import run_floor, store_cost
from tests.qemu import run_qemu
from tests.requires import require_tool

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def test_floor_runs_a_sample_as_qemu_does() -> None:
    require_tool("qemu")
    kernel = SAMPLES / "hello" / "hello.elf"
    floor = run_floor(kernel, "a b")
    assert floor.serial == run_qemu(kernel, "a b")[0]
    assert floor.status == 0 and floor.seconds > 0
    hooked = run_floor(kernel, "a b", block_hook=True)     # the no-op C block hook changes nothing
    assert (hooked.serial, hooked.status) == (floor.serial, floor.status)


def test_store_cost_has_its_three_loops() -> None:
    cost = store_cost(iters=20_000)
    assert cost.store_ns > 0 and cost.load_ns > 0 and cost.empty_ns > 0


def test_bench_engine_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(enginebench, "newest_unicorn", lambda timeout=3.0: None)   # no network in tests
    assert main(["bench", "engine", "--cmdline", "iters=300", "--runs", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in doc["configs"]}
    names = {"engine floor", "floor + block hook", "ring1 unpatched", "ring1 patched", "ring1 eager"}
    assert names <= set(rows)
    assert rows["ring1 patched"]["guest_vs_hooked_floor"] > 0
    assert rows["engine floor"]["guest_vs_floor"] == 1.0
    assert rows["ring1 patched"]["exits"] < rows["ring1 unpatched"]["exits"]
    assert all(rows[n]["startup_s"] > 0 for n in rows if n.startswith("ring1"))
    assert doc["store"]["per_store_ns"] is not None and doc["newest_unicorn"] is None


def test_bench_engine_bad_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "engine", "--runs", "0"]) == 2
    assert "argument --runs: must be at least 1" in capsys.readouterr().err
