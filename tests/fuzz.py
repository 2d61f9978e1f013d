"""A seeded fuzzer for ring1's input handling (issue 12): mutated kernels through `bt scan`,
`bt patch`, a reload of what `bt patch` wrote and `bt run`, and hostile `bt` command lines,
all in-process with the CLI's own exit codes. What must hold after every command:
tests/fuzz_cases.py. How files are mutated: tests/fuzz_files.py.

Every case is derived from (seed, case number) alone, so a finding reproduces with

    python -m tests.fuzz --seed S --case N          # one case, printed in full
    python -m tests.fuzz --seed S 2000              # 2,000 cases, a summary of findings
    python -m pytest tests/test_fuzz.py --fuzz 2000 # the same through pytest

`tests/test_fuzz.py` runs a bounded number of cases in CI. One case in four is a command
line, the others a mutated file.

The cases run in a child process (one per batch, restarted after a death) under an
address-space limit and a watchdog, so a crash, a hang or a memory balloon in ring1 or a
library is a finding too, charged to the case that caused it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.fuzz_cases import CaseResult, run_file_case, run_invocation_case

ROOT = Path(__file__).resolve().parent.parent
#: The child's address-space limit: twice the ceiling docs/robustness.md states, far below
#: what a runaway allocation takes.
MEMORY_LIMIT = 2 << 30
#: Seconds a case may take before the watchdog kills the child (a hang).
CASE_TIMEOUT = 120.0


def is_invocation(seed: int, number: int) -> bool:
    return random.Random(f"ring1-fuzz-kind/{seed}/{number}").random() < 0.25


def run_one(seed: int, number: int, work: Path) -> CaseResult:
    if is_invocation(seed, number):
        return run_invocation_case(seed, number, work)
    return run_file_case(seed, number, work)


def worker(seed: int, first: int, count: int) -> None:
    """Run cases first..first+count-1, one JSON line per case on stdout ("begin" before each)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with tempfile.TemporaryDirectory(prefix="ring1-fuzz-") as tmp:
        work = Path(tmp)
        os.chdir(work)          # a relative output name lands in the scratch folder, not the repository
        for number in range(first, first + count):
            print(json.dumps({"begin": number}), flush=True)
            r = run_one(seed, number, work)
            print(json.dumps({"case": number, "what": r.what, "findings": r.findings}), flush=True)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_cases(seed: int, first: int, count: int, timeout: float = CASE_TIMEOUT,
              progress: Callable[[int, list[str]], None] | None = None) -> dict[int, list[str]]:
    """Cases first..first+count-1 in child processes; the findings of each case that has any.
    A child that dies or stalls is charged to the case it was running, then restarted after it."""
    findings: dict[int, list[str]] = {}
    number, end = first, first + count
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    while number < end:
        proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz", "--worker", "--seed", str(seed),
                                 "--first", str(number), str(end - number)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=_limit_memory)
        current = number
        for line, stalled in _lines(proc, timeout):
            if stalled:
                proc.kill()
                findings[current] = [f"no answer in {timeout:.0f} s (a hang or a runaway): killed"]
                break
            msg = json.loads(line)
            if "begin" in msg:
                current = msg["begin"]
                continue
            if msg["findings"]:
                findings[msg["case"]] = msg["findings"]
            if progress is not None:
                progress(msg["case"], msg["findings"])
            number = msg["case"] + 1
        proc.wait()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.returncode != 0 and current not in findings:
            how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                   else f"exit {proc.returncode}")
            tail = err.strip().splitlines()[-1:] if err.strip() else []
            findings[current] = [f"the process died ({how}) {' '.join(tail)}".strip()]
        number = max(number, current + 1)
    return findings


def _lines(proc: subprocess.Popen[bytes], timeout: float) -> Iterator[tuple[bytes, bool]]:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    deadline = time.monotonic() + timeout
    while True:
        if not sel.select(max(0.0, deadline - time.monotonic())):
            yield b"", True
            return
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            deadline = time.monotonic() + timeout
            yield line, False


def describe(seed: int, number: int) -> str:
    """What case `number` is, without running it."""
    with tempfile.TemporaryDirectory(prefix="ring1-fuzz-") as tmp:
        if is_invocation(seed, number):
            from tests.fuzz_cases import make_invocation

            return "bt " + " ".join(make_invocation(seed, number, Path(tmp))[0])
    from tests.fuzz_files import make_case

    base, _, what = make_case(seed, number)
    return f"{base}: {'; '.join(what)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("cases", type=int, nargs="?", default=200, help="how many cases (default 200)")
    p.add_argument("--seed", type=int, default=1, help="the seed (default 1)")
    p.add_argument("--first", type=int, default=0, help="the first case number (default 0)")
    p.add_argument("--case", type=int, help="run this one case here and print everything")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.seed, args.first, args.cases)
        return 0
    if args.case is not None:
        with tempfile.TemporaryDirectory(prefix="ring1-fuzz-") as tmp:
            r = run_one(args.seed, args.case, Path(tmp))
        print(f"case {args.case} of seed {args.seed}: {r.what}")
        for o in r.outcomes:
            print(f"  bt {' '.join(o.argv)} -> {o.code}\n    " + o.stderr.strip().replace("\n", "\n    "))
        print("findings:" if r.findings else "no findings", *r.findings, sep="\n  ")
        return 1 if r.findings else 0
    t0, cpu0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    found = run_cases(args.seed, args.first, args.cases)
    for number, what in sorted(found.items()):
        print(f"case {number} ({describe(args.seed, number)}):", *what, sep="\n  ")
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    print(f"{args.cases} cases of seed {args.seed} in {time.monotonic() - t0:.1f} s ({cpu:.1f} s of CPU): "
          f"{len(found)} with findings")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
