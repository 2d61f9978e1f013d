"""Campaign pieces on their own: cell keys, the results folder, a cell on a worker, the
scheduling loop, and the report model's flags and totals (on made-up runs)."""

from __future__ import annotations

import json
import os
from concurrent.futures import Future
from pathlib import Path

import pytest
from campaign_fixtures import HELLO, record, report, runs, write_manifest

from runtime.campaign import cell, executors, identity, manifest, store
from runtime.campaign.cell import CellOutcome, CellSpec, InputRef
from runtime.campaign.identity import Blob
from runtime.campaign.plan import make_plan
from runtime.report.record import RunRecord


def key(**change):
    base = {"kernel_sha256": "a" * 64, "mode": "dynamic", "options": {"hot": 1, "image_name": "k.elf"},
            "repeat": 0, "build": {"ring1": "1", "source": "s"}}
    return identity.cell_key(**{**base, **change})


def test_a_cell_key_changes_with_everything_a_run_depends_on():
    same = key()
    assert key() == same and len(same) == 64
    changed = [key(kernel_sha256="b" * 64), key(mode="static"),
               key(options={"hot": 4, "image_name": "k.elf"}),
               key(options={"hot": 1, "image_name": "other.elf"}), key(repeat=1),
               key(build={"ring1": "1", "source": "t"}), key(inputs={"disk[0]": "c" * 64})]
    assert len({same, *changed}) == len(changed) + 1


def test_the_build_names_ring1_its_source_and_what_makes_a_run():
    b = identity.build()
    assert set(b) == {"ring1", "source", "unicorn", "capstone", "keystone-engine", "lief", "plugins"}
    root = identity.source_root()
    for entry in identity.NOT_RUN_SOURCE:  # a renamed module must not slip into or out of the hash
        assert (root / entry).exists(), entry
    assert identity.build_differences(b, {**b, "unicorn": "0.0"}) == [
        f"unicorn: {b['unicorn']} here, 0.0 in the campaign"]


def test_write_atomic_leaves_the_old_file_or_the_new_one(tmp_path: Path, monkeypatch):
    target = tmp_path / "cell.json"
    store.write_atomic(target, "old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.write_atomic(target, "new")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_the_store_keeps_whole_cells_and_skips_damaged_ones(tmp_path: Path):
    s = store.ResultStore(tmp_path / "res")
    s.open()
    (s.cells / ".x.json.123.tmp").write_text("half")  # what an interrupted write leaves
    s.open()
    assert list(s.cells.iterdir()) == []
    spec = CellSpec("k1", "hello.elf", "a" * 64, "unpatched", {"image_name": "hello.elf"}, 0, {"ring1": "1"})
    info = make_plan(manifest.load(write_manifest(tmp_path))).kernels[0].info
    path = s.save(spec, info, CellOutcome("k1", record()))
    data = json.loads(path.read_text())
    assert set(data) == {"kernel", "runs", "cell"}  # the --save-runs form, plus the cell
    assert s.load("k1") is not None and s.load("k1").record == record()
    (s.cells / "k2.json").write_text("{not json")
    assert s.load("k2") is None and s.unreadable == [s.cells / "k2.json"]
    assert s.load("k3") is None  # never run


def _spec(data: bytes, **change) -> CellSpec:
    base = dict(key="k", kernel="hello.elf", kernel_sha256=identity.sha256(data), mode="unpatched",
                options={"image_name": "hello.elf"}, repeat=0, build=identity.build())
    return CellSpec(**{**base, **change})


def test_a_worker_refuses_another_build_and_a_corrupt_kernel():
    data = HELLO.read_bytes()
    other = cell.run_cell(_spec(data, build={**identity.build(), "source": "0" * 16}), data)
    assert other.record is None and other.exit_code == 2
    assert "runs another ring1 build than the campaign (source: " in other.error
    bad = cell.run_cell(_spec(data), data[:-1])
    assert bad.record is None and bad.exit_code == 8 and "arrived with sha256" in bad.error


def test_a_worker_runs_from_content_and_gets_inputs_as_files(monkeypatch):
    seen = {}

    def run_once(kernel, mode, options):
        seen.update(kernel=kernel, options=options, files={o: [Path(p).read_bytes() for p in v]
                                                           for o, v in options.items() if o == "disk"})
        assert Path(kernel).read_bytes() == HELLO.read_bytes()
        return RunRecord(**{**vars(record()), "options": options})

    from runtime.report import adapter

    monkeypatch.setattr(adapter, "run_once", run_once)
    data = HELLO.read_bytes()
    disk = b"disk image"
    spec = _spec(data, inputs=(InputRef("disk", "a.img", identity.sha256(disk)),))
    outcome = cell.run_cell(spec, data, [disk])
    assert outcome.ok, outcome.error
    assert Path(seen["kernel"]).name == "hello.elf" and not Path(seen["kernel"]).exists()  # private, removed
    assert seen["files"] == {"disk": [disk]}
    assert outcome.record is not None and outcome.record.options == {"image_name": "hello.elf"}
    assert cell.run_cell(_spec(data, kernel="../x.elf"), data).exit_code == 2  # never outside its folder


class _FakeExecutor:
    """Futures that fail once ("the worker died") for the cells named in `lose`."""

    description = "fake"

    def __init__(self, lose: dict[str, int]) -> None:
        self.lose = dict(lose)
        self.lost_calls = 0

    def slots(self) -> int:
        return 2

    def submit(self, spec, kernel, inputs):
        f: Future[CellOutcome] = Future()
        if self.lose.get(spec.key, 0) > 0:
            self.lose[spec.key] -= 1
            f.set_exception(RuntimeError("worker died\nmore lines"))
        else:
            f.set_result(CellOutcome(spec.key, record()))
        return f

    def lost(self, spec, err):
        self.lost_calls += 1

    def close(self, cancel):
        pass


def test_a_lost_cell_is_sent_once_more_then_failed():
    data = HELLO.read_bytes()
    specs = [_spec(data, key=k) for k in ("a", "b", "c")]
    done: dict[str, CellOutcome] = {}
    started: list[str] = []
    ex = _FakeExecutor({"b": 1, "c": 2})
    executors.run_cells(specs, lambda s: (Blob("hello.elf", "x", data), ()), ex,
                        lambda s: started.append(s.key), lambda s, o: done.setdefault(s.key, o))
    assert done["a"].ok and done["a"].attempts == 1
    assert done["b"].ok and done["b"].attempts == 2
    assert not done["c"].ok and done["c"].exit_code == 8
    assert done["c"].error == "lost 2 times, last: RuntimeError: worker died"
    assert sorted(started) == ["a", "b", "b", "c", "c"] and ex.lost_calls == 3


def test_reductions_speedups_and_added_exits_are_computed_from_medians(tmp_path: Path):
    r = report(tmp_path, runs())
    assert r.ok
    k = r.kernels[0]
    dynamic, static = k.entry("c2"), k.entry("c3")
    assert (dynamic.exits_removed, dynamic.reduction) == (90, 0.9)
    assert dynamic.speedup == 3.0 / 1.5  # medians 3.0 and 1.5
    assert dynamic.speedup_range == (2.0 / 2.0, 4.0 / 1.0)
    assert static.exits_removed == -50 and static.reduction == -0.5  # static added 50 exits
    from runtime.campaign import text

    assert text.removed(static) == "+50" and text.removed(dynamic) == "90.0%"
    total = {t.config_id: t for t in r.totals}["c2"]
    assert (total.exits_before, total.exits_after, total.kernels) == (100, 10, ("hello",))


def test_mismatches_are_flagged_and_never_averaged_in(tmp_path: Path):
    r = report(tmp_path, runs(dynamic_1=record("dynamic", serial=b"other\n", exits=10)))
    dynamic = r.kernels[0].entry("c2")
    assert not dynamic.clean and {f.what for f in dynamic.flags} == {"repeats"}
    assert "the 2 runs differ in guest output" in str(dynamic.flags[0])
    assert {t.config_id: t for t in r.totals}["c2"].left_out == ("hello",)
    assert not r.ok

    r = report(tmp_path, runs(static_0=record("static", status=3, exits=150),
                                static_1=record("static", status=3, exits=150)))
    static = r.kernels[0].entry("c3")
    assert [(f.what, f.against) for f in static.flags] == [("exit status", "baseline")]
    assert r.kernels[0].entry("c2").clean


def test_expected_output_and_failed_runs_flag_an_entry_and_its_dependents(tmp_path: Path):
    r = report(tmp_path, runs(), expect=b"QEMU says otherwise\n")
    base = r.kernels[0].entry("c1")
    assert [(f.what, f.against) for f in base.flags] == [("serial", "expected")]
    assert base.flags[0].detail == "byte 0: expected b'QEMU say', got b'ok\\n'"
    # every patched entry differs from the expected output too, and its baseline is flagged
    assert all(not e.clean for e in r.entries)
    r = report(tmp_path, runs(), failures={("none", 1)})
    base = r.kernels[0].entry("c1")
    assert [f.what for f in base.flags] == ["failed"] and len(base.runs) == 1
    assert r.kernels[0].entry("c2").flags[-1].what == "baseline"
    assert [(e.config_id, f.error) for e, f in r.failures] == [("c1", "boom")]
