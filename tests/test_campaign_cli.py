"""`bt campaign` end to end on the samples: outputs, resuming, flags and exit codes, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from runtime.report import adapter

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
DOC = ROOT / "docs" / "campaign-json.md"

pytestmark = pytest.mark.skipif(adapter.unavailable(static=True) is not None,
                                reason=f"{adapter.unavailable(static=True)}")

#: Two kernels, unpatched + dynamic + static, two runs each: 12 cells.
SMALL = f'''
[campaign]
name = "small"
[[kernels]]
path = "{SAMPLES}/hello/hello.elf"
cmdline = "mode=test greeting=hi"
expect = "{{dir}}/expected.serial"
[[kernels]]
path = "{SAMPLES}/irqsave/irqsave.elf"
cmdline = "iters=2000"
[matrix]
mode = ["dynamic", "static"]
repeats = 2
'''


def bt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bt", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, stdin=subprocess.DEVNULL)


def manifest(tmp_path: Path, body: str = SMALL) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(body)
    return path


def documented() -> dict[str, set[str]]:
    fields = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| `([^`]+)` \| ([a-z ]+) \|", line)
        if m:
            fields[m.group(1)] = set(m.group(2).split(" or "))
    return fields


NAMED = {"build": "<name>", "settings": "<dimension>", "exits_by_kind": "<kind>", "dependencies": "<dist>",
         "options": "<option>"}


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    for t, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array")):
        if isinstance(value, t):
            return name
    return "object"


def field_paths(value: Any, prefix: str = "", parent: str = "") -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    if prefix:
        out.setdefault(prefix, set()).add(json_type(value))
    if isinstance(value, dict):
        for key, item in value.items():
            name = NAMED.get(parent, key)
            for p, types in field_paths(item, f"{prefix}.{name}" if prefix else name, key).items():
                out.setdefault(p, set()).update(types)
    elif isinstance(value, list):
        for item in value:
            for p, types in field_paths(item, f"{prefix}[]", parent).items():
                out.setdefault(p, set()).update(types)
    return out


def test_a_campaign_runs_stores_reports_and_resumes(tmp_path: Path):
    m = manifest(tmp_path)
    proc = bt("campaign", str(m), "--jobs", "2", "--json", "r.json", "--html", "r.html", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "12 cell(s) to run, 0 reused" in proc.stderr
    assert "bt campaign: [12/12] " in proc.stderr  # plain progress lines: stderr is not a terminal
    assert "Exits removed" in proc.stdout and "Speedup" in proc.stdout and "\x1b[" not in proc.stdout
    cells = sorted((tmp_path / "small.results" / "cells").glob("*.json"))
    assert len(cells) == 12

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema"] == "ring1.campaign/1" and report["ok"] is True
    assert [c["label"] for c in report["configs"]] == ["unpatched", "dynamic", "static"]
    irqsave = report["kernels"][1]["results"]
    assert irqsave[1]["reduction"] > 0.9 and irqsave[1]["speedup"] > 0  # patching removes irqsave's exits
    assert all(len(r["wall_s"]["runs"]) == 2 for k in report["kernels"] for r in k["results"])
    doc = documented()
    for path, types in field_paths(report).items():
        assert path in doc, f"{path} is not in docs/campaign-json.md"
        assert types <= doc[path], (path, types, doc[path])

    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert "http://" not in page and "https://" not in page
    links = sorted(set(re.findall(r'href="([^"]+)"', page)))
    assert len(links) == 6 and all((tmp_path / link).is_file() for link in links)  # 2 kernels x 3 configs
    drill = (tmp_path / "r-kernels" / "irqsave-c2.html").read_text()
    assert "ring1 compare" in drill and "irqsave" in drill

    # Again: every cell is reused, nothing runs, the counts are the same.
    again = bt("campaign", str(m), "--json", "r2.json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 cell(s) to run, 12 reused" in again.stderr
    second = json.loads((tmp_path / "r2.json").read_text())
    assert second["cells"] == {"planned": 12, "reused": 12, "ran": 0, "failed": 0}
    assert second["kernels"] == report["kernels"]

    # A lost cell file (and a half-written one) is all that runs again.
    for path in cells[:3]:
        path.unlink()
    (cells[3].parent / f".{cells[3].name}.x.tmp").write_text("{")
    plan = bt("campaign", str(m), "--plan", cwd=tmp_path)
    assert plan.returncode == 0 and "12 cell(s), 9 stored in small.results, 3 to run" in plan.stdout
    resumed = bt("campaign", str(m), cwd=tmp_path)
    assert resumed.returncode == 0 and "3 cell(s) to run, 9 reused" in resumed.stderr
    assert sorted(p.name for p in cells[0].parent.iterdir()) == [p.name for p in cells]


def test_flagged_runs_exit_6_and_stay_out_of_the_totals(tmp_path: Path):
    # zoo prints the RPL of CS and SS: 1 unpatched (a raw-mode leak), 0 patched as under QEMU.
    m = manifest(tmp_path, f'''
[[kernels]]
path = "{SAMPLES}/zoo/zoo.elf"
expect = "{{dir}}/expected.serial"
[[kernels]]
path = "{SAMPLES}/hello/hello.elf"
cmdline = "mode=test greeting=hi"
''')
    proc = bt("campaign", str(m), "--jobs", "1", "--json", "r.json", cwd=tmp_path)
    assert proc.returncode == 6, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("bt campaign: error: 2 kernel/configuration pair(s) flagged")
    assert "MISMATCH" in proc.stdout and "Traceback" not in proc.stderr
    assert "zoo c1: serial differs from the expected: byte 33: expected b'cs.rpl: 0" in proc.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] is False
    assert report["totals"][0]["kernels"] == ["hello"] and report["totals"][0]["left_out"] == ["zoo"]


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path):
    m = manifest(tmp_path, SMALL + "\n[report]\nhtlm = 'x.html'\n")
    proc = bt("campaign", str(m), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"bt campaign: error: {m}: [report]: unknown key 'htlm'; did you mean 'html'? "
        "(known: results, json, html, top)"]
    (tmp_path / "bad.elf").write_bytes(b"not an elf at all")
    m = manifest(tmp_path, '[[kernels]]\npath = "bad.elf"\n')
    proc = bt("campaign", str(m), cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "small.results").exists()  # nothing ran, nothing was created
    proc = bt("campaign", str(manifest(tmp_path)), "--jobs", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "--jobs must be at least 1" in proc.stderr
    proc = bt("campaign", str(manifest(tmp_path)), "--html", "nowhere/r.html", cwd=tmp_path)
    assert proc.returncode == 2 and "the folder nowhere does not exist" in proc.stderr
    proc = bt("campaign", str(manifest(tmp_path)), "--json", ".", cwd=tmp_path)
    assert proc.returncode == 2 and "--json .: is a folder" in proc.stderr


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ctrl_c_keeps_whole_cells_and_stops_the_workers(tmp_path: Path):
    # Six unpatched runs of a longer irqsave (a second or more each), two at a time.
    m = manifest(tmp_path, f'''
[[kernels]]
path = "{SAMPLES}/irqsave/irqsave.elf"
cmdline = "iters=80000"
[matrix]
mode = "none"
repeats = 6
''')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "bt", "campaign", str(m), "--jobs", "2"], cwd=tmp_path,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    cells = tmp_path / "small.results" / "cells"
    workers: list[int] = []
    deadline = time.monotonic() + 120
    try:
        while not (cells.is_dir() and any(cells.glob("*.json"))):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no cell finished in time"
            workers = _children(proc.pid) or workers
            time.sleep(0.1)
        workers = _children(proc.pid) or workers
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "bt campaign: interrupted" and "Traceback" not in err
    stored = sorted(cells.iterdir())
    assert 1 <= len(stored) < 6
    for path in stored:  # whole cells only: no temporary file, every file reads
        assert path.suffix == ".json" and not path.name.startswith(".")
        assert json.loads(path.read_text())["cell"]["key"] == path.stem
    # The pool's workers are stopped before bt exits; multiprocessing's resource tracker (a child
    # too) goes when it sees bt's end of its pipe close, a moment later on a busy machine.
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers and not any(_alive(pid) for pid in workers), "a worker outlived bt campaign"
    plan = bt("campaign", str(m), "--plan", cwd=tmp_path)
    assert f"{len(stored)} stored in small.results, {6 - len(stored)} to run" in plan.stdout


def test_a_worker_that_dies_is_replaced_and_its_cell_sent_again(tmp_path: Path):
    import threading

    from runtime.campaign import executors
    from runtime.campaign import manifest as campaign_manifest
    from runtime.campaign.plan import make_plan

    m = manifest(tmp_path, f'''
[[kernels]]
path = "{SAMPLES}/irqsave/irqsave.elf"
cmdline = "iters=3000000"
[matrix]
mode = "none"
''')  # a run of a few seconds (9.4 M CLI/STI exits, most in C): the worker dies in the middle of it
    plan = make_plan(campaign_manifest.load(m))
    spec = next(iter(plan.cells.values()))
    owner = plan.owner(spec.key)
    done = []
    killed = []

    def workers() -> list[int]:
        found = []
        for pid in _children(os.getpid()):
            try:        # a child may end between the listing and this read (seen under load)
                if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                continue
        return found

    def kill_the_worker() -> None:
        deadline = time.monotonic() + 60
        while not workers() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        for pid in workers():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    def started(s: Any) -> None:
        if not killed and not done:
            threading.Thread(target=kill_the_worker).start()

    local = executors.LocalExecutor(1)
    try:
        executors.run_cells([spec], lambda s: (owner.blob, owner.inputs), local, started,
                            lambda s, outcome: done.append(outcome))
    finally:
        local.close(cancel=False)
    assert killed, "no worker to kill"
    assert len(done) == 1 and done[0].ok and done[0].attempts == 2, done
