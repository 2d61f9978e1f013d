"""`bt bench boot` on the bundled mini-OS: the shape of the figures, the prompt reached in
every configuration with the same serial output; timings are printed, never asserted."""

from __future__ import annotations

import json

import pytest

from bt.cli import main
from runtime import bootbench
from tests.requires import require_tool


def test_bench_boot_minios_json(capsys: pytest.CaptureFixture[str]) -> None:
    require_tool("qemu")
    assert main(["bench", "boot", "--runs", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (minios,) = doc["targets"]
    rows = {r["name"]: r for r in minios["configs"]}
    assert set(rows) == {bootbench.QEMU, *bootbench.RING1}
    for name, row in rows.items():
        assert row["failed"] is None and row["seconds"] > 0, name
        if name != bootbench.QEMU:
            assert row["exits"] > 0 and row["guest_insns"] > 0 and row["startup_s"] > 0
            assert row["vs_qemu"] > 0


def test_bench_boot_a_tree_that_is_not_xv6(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "boot", "--no-minios", "--xv6", str(tmp_path)]) == 2
    assert "not a built xv6 tree" in capsys.readouterr().err


def test_bench_boot_reports_a_boot_without_prompt() -> None:
    minios = bootbench.minios()
    target = bootbench.BootTarget("x", minios.kernel, b"never printed", modules=minios.modules,
                                  disks=minios.disks)
    boot = bootbench.boot_ring1(target, [], timeout=3)
    assert boot.seconds is None and boot.why == "no prompt within 3 s"
