"""Code the static scan never reached, learned when the guest runs it (patchmgr/codemap.py,
bt/discover.py), and the reports that say what became of such sites."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bt import elf, scan
from patchmgr.manager import NEVER_REACHED, PatchConfig
from patchmgr.registry import load
from runtime.config import RunConfig
from runtime.staticpatch import patch_file
from runtime.vm import Vm
from tests.scan_helpers import build_elf

# `hidden` is reached only through a register (no symbol, no direct branch): the scan
# sees its instructions in the sweep but never reaches them. PUSHF never traps (its
# first-execution hook fires), CLI and STI trap; all three sit in a 20-round loop.
HIDDEN = """
.text
.globl _start
.type _start, @function
_start:
    movl $20, %esi
1:  movl $2f, %eax
    call *%eax
    decl %esi
    jnz 1b
    movl $0, %eax
    outl %eax, $0xf4
3:  jmp 3b
2:  pushfl
    popl %ebx
    movl $1, %ecx
    movl $2, %edx
    cli
    movl $3, %ecx
    movl $4, %edx
    sti
    movl $5, %ecx
    movl $6, %edx
    ret
.section .note.GNU-stack, "", @progbits
"""


@pytest.fixture(scope="module")
def hidden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # -N: text at exactly 1 MiB, no ELF headers loaded below it (the PC hole)
    return build_elf(tmp_path_factory.mktemp("learn"), HIDDEN, ld_flags=("-N",))


def _run(path: Path, patch: PatchConfig) -> Vm:
    vm = Vm(RunConfig(kernel=path, serial=io.BytesIO(), max_insns=1_000_000, patch=patch))
    assert vm.run().exit_status == 1
    return vm


def test_the_scan_does_not_reach_the_hidden_code(hidden: Path) -> None:
    result = scan.scan(elf.load(hidden))
    assert {s.cls.name: s.reached for s in result.sites} == {"pushf": False, "cli": False, "sti": False,
                                                            "out": True}


def test_code_first_seen_at_run_time_is_learned_and_patched(hidden: Path) -> None:
    vm = _run(hidden, PatchConfig())
    m = vm.patches
    assert m is not None
    by_class = {p.op.cls: p for p in m.patches.values()}
    # Each site got a JMP window, not the INT3 fallback "outside every scanned basic block".
    kinds = {c: p.kind for c, p in by_class.items()}
    assert kinds.items() >= {"pushf": "jmp", "cli": "jmp", "sti": "jmp"}.items()
    assert not m.notes
    unscanned = m.unscanned_sites()
    assert [(u.text, u.status) for u in unscanned] == [("pushfd", "patched"), ("cli", "patched"),
                                                       ("sti", "patched")]
    assert all("learned at run time" in u.reason for u in unscanned)
    assert m.stats.traps[by_class["cli"].site] == 1          # trapped once, then patched
    assert vm.stats.by_class["cli"] <= 1


def test_a_statically_patched_kernel_says_which_sites_the_scan_never_reached(hidden: Path,
                                                                            tmp_path: Path) -> None:
    out = tmp_path / "hidden-patched.elf"
    patch_file(hidden, out, load())
    vm = _run(out, PatchConfig(enabled=False))
    assert vm.patches is not None
    unscanned = vm.patches.unscanned_sites()
    # CLI and STI trap; PUSHF runs unpatched and leaks the real IF (nothing sees it run)
    assert [(u.text, u.status, u.reason) for u in unscanned] == [
        ("cli", "unpatched", NEVER_REACHED), ("sti", "unpatched", NEVER_REACHED)]
    assert vm.stats.by_class["cli"] == 20
