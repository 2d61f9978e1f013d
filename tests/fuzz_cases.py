"""The cases of tests/fuzz.py and what must hold after each command (issue 12).

A file case runs a mutated kernel (tests/fuzz_files.py) through `bt scan`, `bt scan
--json=FILE`, `bt run` with `--serial` and `--json`, `bt patch`, and, when `bt patch`
wrote something, `bt scan` and `bt run` of that. An invocation case runs one `bt`
command line drawn from the options every command has, with hostile values: numbers
(0, -1, nan, inf, words), paths (the input itself, a directory, /dev/null, /dev/full, a
missing folder, /proc, a name that is not UTF-8, an existing file), command lines that
are not UTF-8.

After every command: the exit code is 0, 2, 4, 6 (`bt compare`) or an odd guest status
(`bt run`), never 8, never a Python traceback; exit 2 prints one `bt ...: error:` line;
inputs are unchanged; no temporary file is left; an existing file a failed command was
to write still holds what it held; /dev/null is still a device.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import stat
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzz_files import ROOT, make_case

#: Guest budget per run: enough for a sample to print, small enough to keep cases short.
MAX_INSNS = 30_000
SENTINEL = b"an output that existed before the command\n"
#: Why `bt patch` may refuse a kernel `bt run` runs (docs/robustness.md).
PATCH_MAY_REFUSE = ("already patched by bt patch",)
#: What each command may exit with (odd: `bt run`'s guest statuses).
ALLOWED = {"scan": {0, 2}, "patch": {0, 2}, "run": {0, 2, 4}, "compare": {0, 2, 4, 6}, "bench": {2},
           "--version": {0}}


@dataclass
class Outcome:
    argv: list[str]
    code: int
    stderr: str


@dataclass
class CaseResult:
    number: int
    what: str
    outcomes: list[Outcome] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)


def bt(argv: list[str]) -> Outcome:
    """One `bt` command in this process, its stdout discarded and its stderr kept."""
    from bt.cli import main

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:          # --help, --version
            code = stop.code if isinstance(stop.code, int) else 2
    return Outcome(argv, code, err.getvalue())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "-"


def judge(result: CaseResult, o: Outcome) -> None:
    """The rules every command obeys, whatever its input."""
    command = next((a for a in o.argv if not a.startswith("--traceback")), "")
    allowed = ALLOWED.get(command, {0, 2})
    odd = command == "run"
    where = " ".join(o.argv[:2])
    last = o.stderr.strip().splitlines()[-1] if o.stderr.strip() else ""
    if o.code not in allowed and not (odd and o.code % 2 == 1):
        result.findings.append(f"bt {where}: exit {o.code}: {last}")
    if ("Traceback" in o.stderr and "--traceback" not in o.argv) or "internal error" in o.stderr:
        result.findings.append(f"bt {where}: {last}")
    bare = [a for a in o.argv if a != "--traceback"] in ([], ["bench"])     # prints its help
    if o.code == 2 and not bare and not (last.startswith("bt") and ": error: " in last):
        result.findings.append(f"bt {where}: exit 2 without an error line: {o.stderr.strip()[:200]!r}")


def _leftovers(result: CaseResult, work: Path) -> None:
    left = sorted(p.name for p in work.rglob("*") if ".tmp" in p.name)
    if left:
        result.findings.append(f"temporary files left behind: {left}")
    if not stat.S_ISCHR(os.stat("/dev/null").st_mode):
        result.findings.append("/dev/null is no longer a device")


def _clear(work: Path) -> None:
    for old in sorted(work.rglob("*"), reverse=True):
        if old.is_dir() and not old.is_symlink():
            old.rmdir()
        else:
            old.unlink()


# ---- file cases -----------------------------------------------------------------------------------

def run_file_case(seed: int, number: int, work: Path) -> CaseResult:
    base, data, mutations = make_case(seed, number)
    result = CaseResult(number, f"{base}: {'; '.join(mutations)}")
    _clear(work)
    kernel = work / "k.elf"
    kernel.write_bytes(data)
    before = _sha(kernel)
    outs = {name: work / name for name in ("scan.json", "p.elf", "serial.txt", "run.json")}
    for path in outs.values():
        path.write_bytes(SENTINEL)

    run_args = ["--max-insns", str(MAX_INSNS), "--timeout", "20"]
    steps = [
        (["scan", str(kernel)], ()),
        (["scan", str(kernel), f"--json={outs['scan.json']}"], ("scan.json",)),
        (["run", str(kernel), *run_args, "--serial", str(outs["serial.txt"]),
          "--json", str(outs["run.json"])], ("serial.txt", "run.json")),
        (["patch", str(kernel), "-o", str(outs["p.elf"])], ("p.elf",)),
    ]
    codes = []
    for argv, names in steps:
        o = bt(argv)
        result.outcomes.append(o)
        judge(result, o)
        for name in names:
            if o.code in (2, 8) and outs[name].read_bytes() != SENTINEL:
                result.findings.append(f"bt {' '.join(argv[:2])}: exit {o.code} changed the existing {name}")
        codes.append(o.code)
    run_code, patch_code = codes[2], codes[3]
    if patch_code == 0:
        # What bt patch wrote loads, and runs wherever the input ran (the input may need more
        # RAM than --ram's default: then both say so).
        for argv in (["scan", str(outs["p.elf"])], ["run", str(outs["p.elf"]), *run_args]):
            o = bt(argv)
            result.outcomes.append(o)
            judge(result, o)
            if o.code == 2 and (argv[0] == "scan" or run_code != 2):
                result.findings.append(f"bt {argv[0]} of bt patch's output: exit 2: "
                                       f"{o.stderr.strip().splitlines()[-1]}")
    elif run_code != 2 and patch_code == 2:
        why = result.outcomes[3].stderr.strip().splitlines()[-1]
        if not any(ok in why for ok in PATCH_MAY_REFUSE):
            result.findings.append(f"bt run accepted it, bt patch refused: {why}")
    if _sha(kernel) != before:
        result.findings.append("the input was modified")
    _leftovers(result, work)
    return result


# ---- invocation cases ----------------------------------------------------------------------------

NUMBERS = ("0", "-1", "1", "3", "nan", "inf", "-inf", "1e400", "x", "", "0x10", "99999999999999999999")
CMDLINES = ("", "a=1 b=2", os.fsdecode(b"k=\xff\xfe"), "x" * 4000, " ")


def _path(rng: random.Random, work: Path) -> str:
    return rng.choice((
        str(work / "k.elf"), str(work / "k2.elf"), str(work / "existing"), str(work / "new.out"), str(work),
        str(work / "missing" / "x"), "/dev/null", "/dev/full", "/proc/self/ring1-x", "-",
        str(work / os.fsdecode(b"w\xff.out")), str(work / "link.elf"), str(work / "runs"),
    ))


def _draw(rng: random.Random, options: dict[str, str], work: Path) -> list[str]:
    """Some of `options` (name -> "flag", "num", "path", "word", "cmdline"), with values."""
    out: list[str] = []
    for name, kind in options.items():
        if rng.random() < 0.35:
            continue
        if kind == "flag":
            out.append(name)
        elif kind == "num":
            out += [name, rng.choice(NUMBERS)]
        elif kind == "path":
            out += [name, _path(rng, work)]
        elif kind == "cmdline":
            out += [name, rng.choice(CMDLINES)]
        else:
            out += [name, rng.choice(("cli", "irqflags", "nope", "", "*", "privileged"))]
    return out


def make_invocation(seed: int, number: int, work: Path) -> tuple[list[str], list[str]]:
    """A command line for case `number` (same seed, same number: same command line), and
    the files it reads."""
    rng = random.Random(f"ring1-fuzz-argv/{seed}/{number}")
    kernel = str(work / rng.choice(("k.elf", "k.elf", "k2.elf", "notes.txt", "missing.elf")))
    inputs = [kernel]
    command = rng.choice(("scan", "scan", "run", "run", "run", "patch", "patch", "compare", "bench",
                          "global"))
    if command == "scan":
        argv = ["scan", kernel, *_draw(rng, {"--class": "word", "--symbol": "word", "--all-sites": "flag",
                                             "--limit": "num"}, work)]
        if rng.random() < 0.5:
            argv.append(rng.choice(("--json", f"--json={_path(rng, work)}")))
    elif command == "run":
        argv = ["run", kernel, *_draw(rng, {"--cmdline": "cmdline", "--serial": "path",
                                            "--timeout": "num", "--ram": "num", "--stats": "flag",
                                            "--json": "path", "--hot": "num", "--eager": "flag",
                                            "--no-patch": "flag", "--disable-rule": "word",
                                            "--screen": "path", "--keys": "path", "--module": "path",
                                            "--disk": "path", "--disk-writable": "flag",
                                            "--key-delay": "num"}, work)]
        inputs += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--keys", "--module", "--disk")
                   and "--disk-writable" not in argv]
        if "--max-insns" not in argv:
            argv += ["--max-insns", rng.choice((str(MAX_INSNS), "0", "-5", "x"))]
    elif command == "patch":
        argv = ["patch", *([kernel] if rng.random() < 0.9 else []),
                *_draw(rng, {"-o": "path", "--list-rules": "flag", "--disable-rule": "word", "-v": "flag"},
                       work)]
    elif command == "compare":
        kernels = [kernel] + ([str(work / "k2.elf")] if rng.random() < 0.3 else [])
        inputs = kernels
        argv = ["compare", *kernels, *_draw(rng, {"--json": "path", "--html": "path", "--top": "num",
                                                  "--hot": "num", "--save-runs": "path", "--expect": "path",
                                                  "--cmdline": "cmdline"}, work),
                "--jobs", "1", "--max-insns", rng.choice((str(MAX_INSNS), "0", "x"))]
    elif command == "bench":
        # Only forms that are refused before they measure anything (a real benchmark takes
        # seconds to minutes, `bench scan` without a kernel downloads one).
        argv = ["bench", rng.choice(("scan", "patch", "trap")), rng.choice(("--runs", "--bogus")),
                rng.choice(("0", "-1", "x", "nan"))]
    else:
        argv = rng.choice((["--version"], ["--bogus"], ["nope"], ["run"], ["scan", "--json"], []))
    if rng.random() < 0.1:
        argv.insert(rng.randrange(len(argv) + 1), "--traceback")
    return argv, inputs


def run_invocation_case(seed: int, number: int, work: Path) -> CaseResult:
    _clear(work)
    sample = ROOT / "samples" / "hello" / "hello.elf"
    for name in ("k.elf", "k2.elf"):
        (work / name).write_bytes(sample.read_bytes())
    (work / "notes.txt").write_text("not a kernel\n")
    (work / "existing").write_bytes(SENTINEL)
    (work / "link.elf").symlink_to(work / "k.elf")
    argv, read = make_invocation(seed, number, work)
    result = CaseResult(number, "bt " + " ".join(argv))
    inputs = {name: _sha(Path(name)) for name in read}
    o = bt(argv)
    result.outcomes.append(o)
    judge(result, o)
    changed = [name for name, sha in inputs.items() if _sha(Path(name)) != sha]
    if changed:
        result.findings.append(f"inputs changed: {changed}")
    if o.code in (2, 8) and (work / "existing").read_bytes() != SENTINEL:
        result.findings.append(f"exit {o.code} changed an existing file it was to write")
    _leftovers(result, work)
    return result
