"""`bt compare` end to end on recorded runs (--replay), and its exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from report_fixtures import DATA

from bt.cli import main
from runtime.report import adapter, runner

SYNTHETIC = str(DATA / "synthetic.runs.json")


def bt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bt", *args], capture_output=True, text=True)


def test_replay_writes_text_json_and_html(tmp_path: Path):
    proc = bt("compare", SYNTHETIC, "--replay", "--json", str(tmp_path / "r.json"),
              "--html", str(tmp_path / "r.html"))
    assert proc.returncode == 0, proc.stderr
    assert "Exits by kind" in proc.stdout and "Reproducibility" in proc.stdout
    assert "\x1b[" not in proc.stdout  # not a terminal: plain text
    assert json.loads((tmp_path / "r.json").read_text())["schema"] == "ring1.compare/1"
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page


def test_mismatch_is_loud_and_exits_6(tmp_path: Path):
    data = json.loads(Path(SYNTHETIC).read_text())
    data["runs"][1]["serial"] = "hello from a different kernel\n"
    bad = tmp_path / "bad.runs.json"
    bad.write_text(json.dumps(data))
    proc = bt("compare", str(bad), "--replay", "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 6
    assert "MISMATCH" in proc.stdout
    assert "disagree" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is False


def test_replay_of_a_bad_file_is_one_line_exit_2(tmp_path: Path):
    (tmp_path / "x.json").write_text("{}")
    proc = bt("compare", str(tmp_path / "x.json"), "--replay")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_runtime_and_patching_are_there():
    assert adapter.unavailable(static=False) is None
    assert adapter.unavailable(static=True) is None


def test_says_so_when_it_cannot_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    # The runtime exists today: make `unavailable` say why it would not, and check that
    # `bt compare` then runs nothing and says so in one line.
    reason = "patching is unavailable: the run loop has no patch manager yet"
    monkeypatch.setattr(adapter, "unavailable", lambda static: reason)
    monkeypatch.setattr(runner, "run_all", lambda *a, **k: pytest.fail("compared although it cannot"))
    assert main(["compare", "samples/irqsave/irqsave.elf"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"bt compare: cannot compare unpatched and patched runs: {reason}"]


def test_expect_names_the_runs_that_produced_the_expected_output(tmp_path: Path):
    expected = tmp_path / "expected.serial"
    expected.write_bytes(b"not what the guest printed\n")
    proc = bt("compare", SYNTHETIC, "--replay", "--expect", str(expected))
    assert proc.returncode == 6 and "expected output" in proc.stderr
    assert "produced by no run; NOT by unpatched, dynamic" in " ".join(proc.stdout.split())
    proc = bt("compare", SYNTHETIC, "--replay", "--expect", str(DATA / "synthetic.expected"))
    assert proc.returncode == 0, proc.stderr
    assert "produced by every run" in " ".join(proc.stdout.split())


def test_expect_once_per_kernel():
    proc = bt("compare", SYNTHETIC, SYNTHETIC, "--replay", "--expect", "x")
    assert proc.returncode == 2 and "one expected output per KERNEL" in proc.stderr


def test_runs_that_agree_on_an_abnormal_stop_exit_4():
    # A budget far too small for hello: both runs stop at the same place, which is
    # agreement, but not success.
    hello = str(Path(__file__).resolve().parent.parent / "samples" / "hello" / "hello.elf")
    proc = bt("compare", hello, "--max-insns", "500", "--jobs", "1")
    assert proc.returncode == 4, proc.stderr
    assert "every run stopped the same abnormal way" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_rule_variants_side_by_side(tmp_path: Path):
    """Issue 17: compare with and without a rule in one report (--variant), and
    --disable-rule/--disable-class for the patched runs; the rules are in the JSON."""
    irqsave = str(Path(__file__).resolve().parent.parent / "samples" / "irqsave" / "irqsave.elf")
    proc = bt("compare", irqsave, "--cmdline", "iters=300", "--jobs", "1", "--disable-class", "pushf",
              "--variant", "no-irqflags=--disable-rule irqflags", "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    k = data["kernels"][0]
    assert k["modes"] == ["unpatched", "dynamic", "no-irqflags"]
    cli = next(r for r in k["exits"]["by_class"] if r["class"] == "cli")
    assert cli["counts"]["no-irqflags"] == cli["counts"]["unpatched"] > 100 > cli["counts"]["dynamic"]
    assert not [p for p in k["patches"]["dynamic"] if p["instruction"] == "pushfd"]   # --disable-class
    repro = data["reproducibility"]
    assert repro["options"]["disable_class"] == ["pushf"]
    assert repro["options"]["variants"] == {"no-irqflags": {"disable_rule": ["irqflags"]}}
    rules = {r["name"]: r for r in repro["rules"]}
    assert rules["irqflags"]["distribution"] == "built-in" and "cli" in rules["irqflags"]["classes"]
    assert "no-irqflags" in proc.stdout


def test_bad_variants_are_usage_errors(capsys):
    from bt.cli import main

    hello = str(Path(__file__).resolve().parent.parent / "samples" / "hello" / "hello.elf")
    for spec, words in (("dynamic=--hot 2", "NAME=OPTIONS"), ("x", "NAME=OPTIONS"),
                        ("x=--nope", "unrecognized arguments"), ("x=", "no option given"),
                        ("x=--disable-rule nosuchrule", "no rule called nosuchrule")):
        assert main(["compare", hello, "--variant", spec]) == 2, spec
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, (spec, err)
