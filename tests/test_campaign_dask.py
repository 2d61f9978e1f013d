"""`bt campaign --dask` on a real Dask cluster on localhost: a scheduler and two workers, each a
separate process, run a small campaign on the samples; every cell must equal the local
executor's (timings and the worker's name aside).

Needs Dask's distributed package (`pip install -e '.[dask]'`): skipped without it, a
failure under CI=true (.ci/run installs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.report import adapter

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
HAVE_DASK = importlib.util.find_spec("distributed") is not None

pytestmark = [
    pytest.mark.skipif(not HAVE_DASK and not os.environ.get("CI"),
                       reason="dask distributed not installed (pip install -e '.[dask]')"),
    pytest.mark.skipif(adapter.unavailable(static=True) is not None, reason="the VMM cannot compare yet"),
]

MANIFEST = f'''
[[kernels]]
path = "{SAMPLES}/hello/hello.elf"
cmdline = "mode=test greeting=hi"
expect = "{{dir}}/expected.serial"
[[kernels]]
path = "{SAMPLES}/irqsave/irqsave.elf"
cmdline = "iters=20000"
[matrix]
mode = ["dynamic", "static"]
disable_rule = [["irqflags"]]
'''
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "10s"}


def _dask(*args: str, log: Path) -> subprocess.Popen[bytes]:
    # ring1 must be importable by the scheduler (it unpickles the tasks) and the workers.
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "dask", *args], env=ENV, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert HAVE_DASK, "dask distributed is not installed, and CI must run this test"
    from distributed import Client

    tmp = tmp_path_factory.mktemp("dask")
    info = tmp / "scheduler.json"
    procs = [_dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                   "--scheduler-file", str(info), log=tmp / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        while not info.exists():
            assert procs[0].poll() is None, (tmp / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.2)
        time.sleep(0.2)  # the file is written whole, but give it a moment to be complete
        address = json.loads(info.read_text())["address"]
        for i in (1, 2):
            procs.append(_dask("worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                               "--name", f"w{i}", log=tmp / f"worker{i}.log"))
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        # Workers first, while the scheduler they say goodbye to is still there; then the scheduler.
        for group in (procs[1:], procs[:1]):
            for proc in group:
                proc.terminate()
            for proc in group:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def bt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bt", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, stdin=subprocess.DEVNULL)


def _cells(folder: Path) -> dict[str, dict]:
    out = {}
    for path in (folder / "cells").glob("*.json"):
        data = json.loads(path.read_text())
        worker = data["cell"].pop("worker")
        for run in data["runs"]:
            run.pop("timing")  # measured, so never equal twice
        out[path.stem] = {"data": data, "worker": worker}
    return out


def test_a_campaign_on_a_dask_cluster_equals_the_local_one(cluster: str, tmp_path: Path):
    (tmp_path / "c.toml").write_text(MANIFEST)
    far = bt("campaign", "c.toml", "--dask", cluster, "--results", "far", "--json", "far.json", cwd=tmp_path)
    assert far.returncode == 0, far.stdout + far.stderr
    assert f"on dask {cluster}, 2 workers at start" in far.stdout
    near = bt("campaign", "c.toml", "--jobs", "2", "--results", "near", cwd=tmp_path)
    assert near.returncode == 0, near.stdout + near.stderr

    remote, local = _cells(tmp_path / "far"), _cells(tmp_path / "near")
    assert len(remote) == 2 * 3  # 2 kernels x (unpatched, dynamic and static without irqflags)
    assert remote.keys() == local.keys()  # the same cells: keys do not depend on where they run
    for key in remote:
        assert remote[key]["data"] == local[key]["data"], key
    workers = {c["worker"] for c in remote.values()}
    assert len(workers) == 2 and not workers & {c["worker"] for c in local.values()}
    report = json.loads((tmp_path / "far.json").read_text())
    assert report["cells"]["ran"] == 6 and report["executor"].startswith("dask ")


def test_an_unreachable_scheduler_is_one_line(tmp_path: Path):
    (tmp_path / "c.toml").write_text(MANIFEST)
    env = {**ENV, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"}  # Dask's default is 30 s
    proc = subprocess.run([sys.executable, "-m", "bt", "campaign", "c.toml", "--dask", "tcp://127.0.0.1:1"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("bt campaign: error: --dask tcp://127.0.0.1:1: cannot reach the scheduler")
    assert "Traceback" not in proc.stderr
