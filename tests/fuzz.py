"""A seeded fuzzer for ring1's input handling: mutated kernels through `bt scan`, `bt patch`,
a reload of what `bt patch` wrote, and `bt run`, in-process, with the CLI's own exit codes.

Every case is derived from (seed, case number) alone, so a failure reproduces with

    python -m tests.fuzz --seed S --case N          # one case, printed in full
    python -m tests.fuzz --seed S 2000              # 2,000 cases, a summary of findings

`tests/test_fuzz.py` runs a bounded number of cases in CI; `pytest --fuzz N` runs N.

What must hold for every input (issue 12), checked after each command:

* the exit code is 0, 2 (bad input or usage), 4 (the guest stopped) or, for `bt run`, an
  odd guest status: never 8, never a signal, never a Python traceback;
* exit 2 prints one `bt CMD: error:` line;
* the input file is unchanged, no temporary file is left behind, and an output that
  existed before a failed command still holds what it held;
* what `bt patch` wrote loads (`bt scan`) and `bt run` accepts it (no exit 2 or 8);
* `bt patch` handles what `bt run` accepted, or refuses with exit 2 (it never fails in
  between).

The cases run in a child process (one per batch, restarted after a death) under an
address-space limit and a watchdog, so a crash, a hang or a memory balloon in a dependency
is a finding too, charged to the case that caused it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import json
import os
import random
import resource
import selectors
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = [*sorted(ROOT.glob("samples/*/*.elf")), ROOT / "tests/data/scan/patchcases.elf"]
#: The child's address-space limit: far above what any case needs (docs/robustness.md
#: gives the measured ceiling), far below what a runaway allocation would take.
MEMORY_LIMIT = int(os.environ.get("RING1_FUZZ_AS", 2 << 30))
#: Seconds a case may take before the watchdog kills the child (a hang).
CASE_TIMEOUT = 60.0
#: Guest budget per run: enough for a sample to print, small enough to keep cases short.
MAX_INSNS = 30_000
SENTINEL = b"an output that existed before the command\n"

ELF_FIELDS = {  # ELF32 header: name -> (offset, struct format)
    "e_type": (16, "<H"), "e_machine": (18, "<H"), "e_version": (20, "<I"), "e_entry": (24, "<I"),
    "e_phoff": (28, "<I"), "e_shoff": (32, "<I"), "e_flags": (36, "<I"), "e_ehsize": (40, "<H"),
    "e_phentsize": (42, "<H"), "e_phnum": (44, "<H"), "e_shentsize": (46, "<H"), "e_shnum": (48, "<H"),
    "e_shstrndx": (50, "<H"),
}
PHDR_FIELDS = ("p_type", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_flags", "p_align")
SHDR_FIELDS = ("sh_name", "sh_type", "sh_flags", "sh_addr", "sh_offset", "sh_size", "sh_link", "sh_info",
               "sh_addralign", "sh_entsize")
INTERESTING = (0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0xFFF, 0x1000, 0x9000, 0xA0000, 0xFFFF, 0x10000,
               0x100000, 0x3FE0000, 0x4000000, 0x7FFFFFFF, 0x80000000, 0xC0000000, 0xFFC00000, 0xFFE00000,
               0xFFFFF000, 0xFFFFFFF0, 0xFFFFFFFF)
MB_MAGIC = 0x1BADB002


# ---- the mutator ------------------------------------------------------------------------------

def _u(data: bytearray, at: int, fmt: str) -> int | None:
    if at < 0 or at + struct.calcsize(fmt) > len(data):
        return None
    return int(struct.unpack_from(fmt, data, at)[0])


def _put(data: bytearray, at: int, fmt: str, value: int) -> None:
    size = struct.calcsize(fmt)
    if 0 <= at and at + size <= len(data):
        struct.pack_into(fmt, data, at, value & ((1 << (8 * size)) - 1))


def _value(rng: random.Random, data: bytearray, old: int | None) -> int:
    pick = rng.random()
    if pick < 0.5:
        return rng.choice(INTERESTING)
    if pick < 0.65:
        return len(data) + rng.choice((-1, 0, 1, 16, -16))
    if pick < 0.85 and old is not None:
        return old + rng.choice((-1, 1, -16, 16, 0x1000, -0x1000, 0x100000))
    return rng.getrandbits(32)


def _phdr_at(data: bytearray, i: int) -> int | None:
    phoff, phentsize = _u(data, 28, "<I"), _u(data, 42, "<H")
    return None if phoff is None or phentsize is None else phoff + i * phentsize


def _shdr_at(data: bytearray, i: int) -> int | None:
    shoff, shentsize = _u(data, 32, "<I"), _u(data, 46, "<H")
    return None if shoff is None or shentsize is None else shoff + i * shentsize


def m_truncate(rng: random.Random, data: bytearray) -> str:
    cut = rng.choice((rng.randrange(0, min(len(data), 256) or 1), rng.randrange(0, len(data) or 1),
                      len(data) - rng.randrange(1, 64)))
    del data[max(0, cut):]
    return f"truncate to {len(data)}"


def m_flip(rng: random.Random, data: bytearray) -> str:
    if not data:
        return "flip (empty)"
    where = []
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(min(len(data), 512)) if rng.random() < 0.5 else rng.randrange(len(data))
        data[at] = rng.getrandbits(8)
        where.append(at)
    return f"flip bytes at {where}"


def m_elf_field(rng: random.Random, data: bytearray) -> str:
    name = rng.choice(list(ELF_FIELDS))
    at, fmt = ELF_FIELDS[name]
    value = _value(rng, data, _u(data, at, fmt))
    _put(data, at, fmt, value)
    return f"{name} = {value:#x}"


def m_phdr_field(rng: random.Random, data: bytearray) -> str:
    phnum = _u(data, 44, "<H") or 1
    i = rng.randrange(min(phnum, 16))
    k = rng.randrange(len(PHDR_FIELDS))
    at = _phdr_at(data, i)
    if at is None:
        return "phdr (no header)"
    at += 4 * k
    value = _value(rng, data, _u(data, at, "<I"))
    _put(data, at, "<I", value)
    return f"phdr[{i}].{PHDR_FIELDS[k]} = {value:#x}"


def m_shdr_field(rng: random.Random, data: bytearray) -> str:
    shnum = _u(data, 48, "<H") or 1
    i = rng.randrange(min(shnum, 64))
    k = rng.randrange(len(SHDR_FIELDS))
    at = _shdr_at(data, i)
    if at is None:
        return "shdr (no header)"
    at += 4 * k
    value = _value(rng, data, _u(data, at, "<I"))
    _put(data, at, "<I", value)
    return f"shdr[{i}].{SHDR_FIELDS[k]} = {value:#x}"


def m_overlap(rng: random.Random, data: bytearray) -> str:
    """Copy one program header over another: overlapping or duplicated segments."""
    phnum = _u(data, 44, "<H") or 0
    if phnum < 2:
        return "overlap (one phdr)"
    a, b = rng.sample(range(min(phnum, 16)), 2)
    pa, pb = _phdr_at(data, a), _phdr_at(data, b)
    if pa is None or pb is None or max(pa, pb) + 32 > len(data):
        return "overlap (out of file)"
    data[pb:pb + 32] = data[pa:pa + 32]
    if rng.random() < 0.5:   # shift the copy a little: a partial overlap
        _put(data, pb + 8, "<I", (_u(data, pb + 8, "<I") or 0) + rng.choice((0x10, 0x800, 0x1000)))
    return f"phdr[{b}] = phdr[{a}] (overlap)"


def m_giant(rng: random.Random, data: bytearray) -> str:
    """A huge p_memsz or p_filesz on a PT_LOAD."""
    phnum = _u(data, 44, "<H") or 1
    i = rng.randrange(min(phnum, 16))
    at = _phdr_at(data, i)
    if at is None:
        return "giant (no header)"
    which = rng.choice((16, 20))
    value = rng.choice((0x7FFFFFFF, 0x80000000, 0xF0000000, 0xFFFFFFFF, 0x3F00000, 0x10000000))
    _put(data, at + which, "<I", value)
    return f"phdr[{i}].{'p_filesz' if which == 16 else 'p_memsz'} = {value:#x}"


def m_multiboot(rng: random.Random, data: bytearray) -> str:
    """Rewrite the multiboot header: flags (the a.out kludge), address fields, checksum kept."""
    at = data.find(struct.pack("<I", MB_MAGIC), 0, 8192)
    if at < 0 or at + 32 > len(data):
        return "multiboot (none)"
    flags = rng.choice((0x10003, 0x10000, 0x3, 0x7, 0x8, 0x10002, rng.getrandbits(32)))
    _put(data, at + 4, "<I", flags)
    _put(data, at + 8, "<I", -(MB_MAGIC + flags))
    for k in range(5):
        if rng.random() < 0.5:
            _put(data, at + 12 + 4 * k, "<I", _value(rng, data, _u(data, at + 12 + 4 * k, "<I")))
    return f"multiboot flags {flags:#x} and address fields"


def m_symbol_names(rng: random.Random, data: bytearray) -> str:
    """Bytes that are not UTF-8 in the string tables (symbol and section names)."""
    shnum = _u(data, 48, "<H") or 0
    for i in range(min(shnum, 64)):
        at = _shdr_at(data, i)
        if at is None or _u(data, at + 4, "<I") != 3:      # SHT_STRTAB
            continue
        off, size = _u(data, at + 16, "<I") or 0, _u(data, at + 20, "<I") or 0
        if size > 2 and off + size <= len(data):
            for _ in range(rng.randint(1, 6)):
                pos = off + 1 + rng.randrange(size - 2)
                if data[pos]:
                    data[pos] = rng.choice((0x80, 0xC3, 0xE2, 0xFF, 0xFE))
    return "non-UTF-8 bytes in string tables"


def m_foreign(rng: random.Random, data: bytearray) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        data[:] = rng.randbytes(rng.randrange(0, 4096))
        return "random bytes"
    if kind == 1:
        data[:] = b"#!/bin/sh\necho not a kernel\n"
        return "a text file"
    if kind == 2:
        data[:] = b"\x7fELF" + rng.randbytes(rng.randrange(0, 200))
        return "ELF magic and random bytes"
    if kind == 3:
        _put(data, 18, "<H", rng.choice((40, 183, 62, 8, 0)))
        return "foreign e_machine"
    data[4] = rng.choice((0, 2, 3))
    return f"EI_CLASS {data[4]}"


def m_append(rng: random.Random, data: bytearray) -> str:
    n = rng.choice((1, 100, 4096, 65536))
    data += rng.randbytes(n)
    return f"append {n} random bytes"


def m_record(rng: random.Random, data: bytearray) -> str:
    """Rewrite digits of a `bt patch` record in place (same length, still JSON): addresses,
    sizes and kinds a forged record could claim."""
    at = data.find(b'{"version":')
    if at < 0:
        return "record (none)"
    end = data.find(b"\0", at)
    end = len(data) if end < 0 else end
    runs = [i for i in range(at, end) if chr(data[i]).isdigit()]
    for _ in range(rng.randint(1, 4)):
        if runs:
            data[rng.choice(runs)] = ord(str(rng.randrange(10)))
    if rng.random() < 0.2:
        kind = data.find(rng.choice((b'"jmp"', b'"int3"', b'"cli"', b'"eax"')), at, end)
        if kind >= 0:
            data[kind + 1] = ord("x")
    return "digits of the patch record"


MUTATIONS: tuple[tuple[Callable[[random.Random, bytearray], str], int], ...] = (
    (m_flip, 6), (m_elf_field, 6), (m_phdr_field, 8), (m_shdr_field, 6), (m_truncate, 3), (m_overlap, 2),
    (m_giant, 2), (m_multiboot, 3), (m_symbol_names, 2), (m_foreign, 1), (m_append, 1), (m_record, 3),
)
#: Samples also fuzzed as `bt patch` writes them (their patch record is input too).
PATCHED = ("hello", "zoo", "usermode")


@functools.cache
def bases() -> tuple[tuple[str, bytes], ...]:
    """The kernels cases start from: the samples, patchcases.elf and patched samples."""
    from patchmgr import registry
    from runtime.staticpatch import patch_kernel

    out = [(p.name, p.read_bytes()) for p in SAMPLES]
    rules = registry.load()
    for name in PATCHED:
        out.append((f"{name}.patched.elf", patch_kernel(ROOT / f"samples/{name}/{name}.elf", rules).data))
    return tuple(out)


def make_case(seed: int, number: int) -> tuple[str, bytes, list[str]]:
    """The case `number` of `seed`: which kernel it starts from, its bytes, what was done."""
    rng = random.Random(f"ring1-fuzz/{seed}/{number}")
    name, raw = rng.choice(bases())
    data = bytearray(raw)
    what = []
    funcs, weights = zip(*MUTATIONS, strict=True)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        what.append(rng.choices(funcs, weights)[0](rng, data))
    return name, bytes(data), what


# ---- running one case -------------------------------------------------------------------------

@dataclass
class Outcome:
    argv: list[str]
    code: int
    stderr: str


@dataclass
class CaseResult:
    number: int
    base: str
    mutations: list[str]
    outcomes: list[Outcome] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)


def _bt(argv: list[str]) -> Outcome:
    """One `bt` command in this process, its stdout discarded and its stderr kept."""
    from bt.cli import main

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:          # argparse
            code = stop.code if isinstance(stop.code, int) else 2
    return Outcome(argv, code, err.getvalue())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "-"


def _judge(result: CaseResult, o: Outcome, allowed: set[int], odd: bool = False) -> None:
    ok = o.code in allowed or (odd and o.code % 2 == 1)
    cmd = " ".join(o.argv[:2])
    last = o.stderr.strip().splitlines()[-1] if o.stderr.strip() else ""
    if not ok:
        result.findings.append(f"{cmd}: exit {o.code}: {last}")
    if "Traceback" in o.stderr or "internal error" in o.stderr:
        result.findings.append(f"{cmd}: {last}")
    if o.code == 2 and not last.startswith(f"bt {o.argv[0]}: error:"):
        result.findings.append(f"{cmd}: exit 2 without an error line: {o.stderr.strip()[:200]!r}")


def run_case(number: int, base: str, data: bytes, mutations: list[str], work: Path) -> CaseResult:
    result = CaseResult(number, base, mutations)
    for old in work.iterdir():
        old.unlink()
    kernel = work / "k.elf"
    kernel.write_bytes(data)
    before = _sha(kernel)
    outs = {name: work / name for name in ("scan.json", "p.elf", "serial.txt", "run.json")}
    for path in outs.values():
        path.write_bytes(SENTINEL)

    def kept_on_failure(o: Outcome, *names: str) -> None:
        for name in names:
            if o.code in (2, 8) and outs[name].read_bytes() != SENTINEL:
                result.findings.append(f"{' '.join(o.argv[:2])}: exit {o.code} changed the existing {name}")

    run_args = ["--max-insns", str(MAX_INSNS), "--timeout", "20"]
    steps = [
        (["scan", str(kernel)], {0, 2}, False, ()),
        (["scan", str(kernel), f"--json={outs['scan.json']}"], {0, 2}, False, ("scan.json",)),
        (["run", str(kernel), *run_args, "--serial", str(outs["serial.txt"]),
          "--json", str(outs["run.json"])],
         {0, 2, 4}, True, ("serial.txt", "run.json")),
        (["patch", str(kernel), "-o", str(outs["p.elf"])], {0, 2}, False, ("p.elf",)),
    ]
    codes = []
    for argv, allowed, odd, names in steps:
        o = _bt(argv)
        result.outcomes.append(o)
        _judge(result, o, allowed, odd)
        kept_on_failure(o, *names)
        codes.append(o.code)
    run_code, patch_code = codes[2], codes[3]
    if patch_code == 0:
        # What bt patch wrote loads, and runs wherever the input ran (the input may need more
        # RAM than --ram's default: then both say so).
        for argv, allowed, odd in ((["scan", str(outs["p.elf"])], {0}, False),
                                   (["run", str(outs["p.elf"]), *run_args], {0, 2, 4}, True)):
            o = _bt(argv)
            result.outcomes.append(o)
            _judge(result, o, allowed, odd)
            if o.code == 2 and (argv[0] == "scan" or run_code != 2):
                result.findings.append(f"bt {' '.join(argv[:2])} of bt patch's output: exit 2: "
                                       f"{o.stderr.strip().splitlines()[-1]}")
    elif run_code != 2 and patch_code == 2:
        why = result.outcomes[3].stderr.strip().splitlines()[-1]
        if not any(ok in why for ok in PATCH_MAY_REFUSE):
            result.findings.append(f"bt run accepted it, bt patch refused: {why}")
    if _sha(kernel) != before:
        result.findings.append("the input was modified")
    left = sorted(p.name for p in work.iterdir() if p.name.endswith(".tmp") or ".tmp" in p.name)
    if left:
        result.findings.append(f"temporary files left behind: {left}")
    return result


#: Why `bt patch` may refuse a kernel `bt run` runs (documented in docs/robustness.md).
PATCH_MAY_REFUSE: tuple[str, ...] = ("already patched by bt patch",)


# ---- the worker and its parent ----------------------------------------------------------------

def worker(seed: int, first: int, count: int) -> None:
    """Run cases first..first+count-1, one JSON line per case on stdout ("begin" before each)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with tempfile.TemporaryDirectory(prefix="ring1-fuzz-") as tmp:
        work = Path(tmp)
        for number in range(first, first + count):
            print(json.dumps({"begin": number}), flush=True)
            base, data, what = make_case(seed, number)
            r = run_case(number, base, data, what, work)
            print(json.dumps({"case": number, "findings": r.findings,
                              "codes": [o.code for o in r.outcomes]}), flush=True)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_cases(seed: int, first: int, count: int, progress: Callable[[int, list[str]], None] | None = None,
              timeout: float = CASE_TIMEOUT) -> dict[int, list[str]]:
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
        base, data, what = make_case(args.seed, args.case)
        with tempfile.TemporaryDirectory(prefix="ring1-fuzz-") as tmp:
            r = run_case(args.case, base, data, what, Path(tmp))
        print(f"case {args.case} of seed {args.seed}: {base}, {'; '.join(what)}")
        for o in r.outcomes:
            print(f"  bt {' '.join(o.argv)} -> {o.code}\n    " + o.stderr.strip().replace("\n", "\n    "))
        print("findings:" if r.findings else "no findings", *r.findings, sep="\n  ")
        return 1 if r.findings else 0
    t0 = time.monotonic()
    found = run_cases(args.seed, args.first, args.cases)
    for number, what in sorted(found.items()):
        _, _, muts = make_case(args.seed, number)
        print(f"case {number} ({'; '.join(muts)}):", *what, sep="\n  ")
    print(f"{args.cases} cases of seed {args.seed} in {time.monotonic() - t0:.1f} s: "
          f"{len(found)} with findings")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
