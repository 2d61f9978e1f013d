"""Mutation testing of the fault-handling code with mutmut: do the tests notice a small bug?

    python3 -m tests.mutate                   # every area below
    python3 -m tests.mutate deliver report    # some
    python3 -m tests.mutate --list            # the areas, their code and their tests
    python3 -m tests.mutate emulate --files runtime/emulate/irqflags.py    # one file of an area

Run it before resolving a change to the emulators, delivery, the patch rules or the report
model (docs/mutation-testing.md). mutmut (`pip install -e '.[mutation]'`) changes one
operator, constant or call at a time in the area's code and runs the tests that reach the
changed function; a mutant no test notices "survived". Kill a survivor with a test, or
explain in docs/mutation-testing.md why it cannot be told apart (an equivalent mutant).

The repository is copied to a scratch folder first (tracked and untracked files, the
working tree as it is), so mutmut's `mutants/` never lands in the work tree, and tests that
start `python -m bt` get the mutated code through PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: area -> (code mutmut changes, the tests that must notice)
AREAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "emulate": (("runtime/emulate/",), tuple(f"tests/test_{t}.py" for t in (
        "runtime_traps", "runtime_irqflags", "runtime_deliver", "runtime_faults", "runtime_userio",
        "runtime_stops", "patch_runtime"))),
    "deliver": (("runtime/deliver.py",), tuple(f"tests/test_{t}.py" for t in (
        "runtime_deliver", "runtime_faults", "runtime_traps", "runtime_userio", "runtime_irqflags",
        "runtime_stops"))),
    "rules": (("patchmgr/rules/",), tuple(f"tests/test_{t}.py" for t in (
        "patch_rules", "patch_irqflags", "patch_runtime", "patch_relocate", "patch_record",
        "runtime_irqflags", "patch_plugins"))),
    "report": (("runtime/report/model.py",), tuple(f"tests/test_{t}.py" for t in (
        "report_model", "report_reductions", "report_golden", "report_json", "report_cli"))),
}
#: Packages and files the tests read besides the mutated code.
ALSO_COPY = ("bt", "patchmgr", "runtime", "samples", "docs", "README.md")


def _files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]


def _config(code: tuple[str, ...], tests: tuple[str, ...]) -> str:
    def toml_list(items: tuple[str, ...]) -> str:
        return "[" + ", ".join(f'"{i}"' for i in items) + "]"

    return ("\n[tool.mutmut]\n"
            f"source_paths = {toml_list(code)}\n"
            f"also_copy = {toml_list(ALSO_COPY)}\n"
            f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n"
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]\n')


def run_area(name: str, scratch: Path, children: int, files: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    """Mutate one area in `scratch` (only `files` of it, when given); (mutants tried,
    survivors with their diffs)."""
    code, tests = AREAS[name]
    if files:
        code = tuple(f for f in files if any(f.startswith(c) for c in code))
    work = scratch / name
    for rel in _files():
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    pyproject = work / "pyproject.toml"
    base = re.sub(r"\n\[tool\.mutmut\][^\[]*", "\n", pyproject.read_text())
    pyproject.write_text(base + _config(code, tests))
    # mutmut puts mutants/ first on its own sys.path; tests that start `python -m bt` need it
    # through PYTHONPATH. Under another name (a link): an entry equal to mutmut's, made while
    # mutants/ is still empty, would stay cached as empty by the import system.
    (work / "mutated").symlink_to("mutants")
    env = {**os.environ, "PYTHONPATH": str(work / "mutated"), "NO_COLOR": "1",
           "RING1_QEMU_CACHE": str(scratch / "qemu")}     # the reference, once (tests/refguest.py)
    mutmut = [sys.executable, "-m", "mutmut"]
    subprocess.run([*mutmut, "run", "--max-children", str(children)], cwd=work, env=env,
                   stdout=subprocess.DEVNULL, check=False)
    results = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True,
                             text=True, check=False).stdout
    names = re.findall(r"^\s*(\S+): (\w[\w ]*)$", results, re.M)
    survivors = []
    for mutant, status in names:
        if status not in ("killed", "survived"):
            survivors.append(f"{mutant}: {status}")
        if status == "survived":
            diff = subprocess.run([*mutmut, "show", mutant], cwd=work, env=env, capture_output=True,
                                  text=True, check=False).stdout
            survivors.append(diff.strip())
    return len(names), survivors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.mutate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("areas", nargs="*", metavar="AREA", help=f"of {', '.join(AREAS)} (default: all)")
    parser.add_argument("--list", action="store_true", help="list the areas and exit")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants tested at once")
    parser.add_argument("--files", nargs="+", default=(), metavar="PATH",
                        help="mutate only these files of the areas (a quicker check of one change)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="work in DIR and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.list:
        for name, (code, tests) in AREAS.items():
            print(f"{name}: {' '.join(code)}\n    tests: {' '.join(tests)}")
        return 0
    unknown = [a for a in args.areas if a not in AREAS]
    if unknown:
        parser.error(f"unknown area(s): {', '.join(unknown)}")
    try:
        import mutmut  # noqa: F401
    except ImportError:
        print("mutmut is not installed: pip install -e '.[mutation]'", file=sys.stderr)
        return 2
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="ring1-mutate-"))
    try:
        total = 0
        for name in args.areas or list(AREAS):
            if args.files and not any(f.startswith(c) for f in args.files for c in AREAS[name][0]):
                continue        # none of the files asked for is in this area
            t0 = time.monotonic()
            tried, survivors = run_area(name, scratch, args.jobs, tuple(args.files))
            total += len([s for s in survivors if s.startswith("#")])
            print(f"== {name}: {tried} mutants, {sum(s.startswith('#') for s in survivors)} survived "
                  f"({time.monotonic() - t0:.0f} s)")
            for s in survivors:
                print(s + "\n")
        print(f"{total} survivor(s): kill each with a test or explain it in docs/mutation-testing.md")
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
