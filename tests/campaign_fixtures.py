"""Made-up runs for the campaign tests: a real kernel (hello), with chosen outputs, counts and times."""

from __future__ import annotations

from pathlib import Path

from runtime.campaign import manifest, model
from runtime.campaign.cell import CellOutcome
from runtime.campaign.plan import make_plan
from runtime.report.record import RunRecord, Timing
from runtime.report.repro import collect

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "samples" / "hello" / "hello.elf"


def record(mode: str = "unpatched", serial: bytes = b"ok\n", exits: int = 100, wall: float = 1.0,
            status: int | None = 1, stop: str = "") -> RunRecord:
    counts = {"trap": exits} if exits else {}
    return RunRecord(mode=mode, exit_status=status, stop_reason=stop, serial=serial, exits_by_kind=counts,
                     exits_by_class={"cli": exits} if exits else {}, sites=(), patches=(),
                     guest_instructions=1000, timing=Timing(wall=wall))


def write_manifest(tmp_path: Path, expect: bytes | None = None, repeats: int = 2) -> Path:
    lines = [f'[[kernels]]\npath = "{HELLO}"\n']
    if expect is not None:
        (tmp_path / "expected").write_bytes(expect)
        lines.append('expect = "expected"\n')
    lines.append(f'[matrix]\nmode = ["dynamic", "static"]\nrepeats = {repeats}\n')
    path = tmp_path / "m.toml"
    path.write_text("".join(lines))
    return path


def report(tmp_path: Path, made_up: dict, failures=(), expect: bytes | None = None) -> model.CampaignReport:
    """The model over made-up runs: `made_up` maps (mode, repeat) to a RunRecord."""
    plan = make_plan(manifest.load(write_manifest(tmp_path, expect)))
    records, failed = {}, {}
    for slot in plan.slots:
        mode = slot.config.mode
        if (mode, slot.repeat) in failures:
            failed[slot.key] = CellOutcome(slot.key, None, error="boom", exit_code=8)
        else:
            records[slot.key] = made_up[(mode, slot.repeat)]
    counts = model.CellCounts(len(plan.cells), 0, len(records), len(failed))
    return model.build_report(plan, records, failed, results="r", cells=counts, executor="fake",
                              repro=collect(["campaign"], {}))


def runs(**change):
    """Two runs per mode; `dynamic_1=record` replaces the second dynamic run."""
    base = {("none", 0): record(wall=2.0), ("none", 1): record(wall=4.0),
            ("dynamic", 0): record("dynamic", exits=10, wall=1.0),
            ("dynamic", 1): record("dynamic", exits=10, wall=2.0),
            ("static", 0): record("static", exits=150, wall=0.5),
            ("static", 1): record("static", exits=150, wall=1.0)}
    for name, run in change.items():
        mode, repeat = name.split("_")
        base[(mode, int(repeat))] = run
    return base
