"""Displaced instructions keep their meaning in a patch block: relative JMP/Jcc/CALL and
LOOP re-targeted, CALL pushing the guest return address, and the guest resumes right."""

from __future__ import annotations

import pytest

from runtime.ruletest import CODE, run_native, run_patched
from runtime.ruletest import REGS as _NAMES

JCC = """
cli
test eax, eax
jz skip
add ebx, 1
skip:
add ecx, 2
nop
nop
nop
nop
nop
"""

CALL = """
cli
call func
add esi, 3
jmp done
func:
mov edx, esp
mov edx, dword ptr [edx]
ret
done:
nop
nop
nop
nop
nop
"""

LOOP = """
mov ecx, 3
again:
cli
add eax, 1
loop again
nop
nop
nop
nop
nop
"""

JECXZ = """
cli
add eax, 1
jecxz out
add ebx, 1
out:
nop
nop
nop
nop
nop
"""


@pytest.mark.parametrize("src", [JCC, CALL, LOOP, JECXZ], ids=["jcc", "call", "loop", "jecxz"])
@pytest.mark.parametrize("eax", [0, 1])
def test_displaced_branches(src: str, eax: int) -> None:
    regs = dict.fromkeys(_NAMES, 0) | {"eax": eax, "ecx": eax, "esp": 0}
    del regs["esp"]
    native = run_native(src, regs, 0, 1)
    patched, mgr = run_patched(src, regs, 0, 1)
    assert [p.kind for p in mgr.patches.values()] == ["jmp"], mgr.notes
    assert patched.regs == native.regs
    assert patched.virtual_if == native.virtual_if == 0
    assert patched.stack == native.stack


def test_call_pushes_guest_return_address() -> None:
    regs = {"eax": 0, "edx": 0}
    patched, mgr = run_patched(CALL, regs, 0, 1)
    (patch,) = mgr.patches.values()
    # func read its return address off the stack: the guest address after the CALL.
    assert patched.regs["edx"] == patch.end
    assert not mgr.patch_memory.contains(patched.regs["edx"])


def test_maps_between_patch_and_guest() -> None:
    _, mgr = run_patched(JCC, {"eax": 1}, 0, 1)
    (patch,) = mgr.patches.values()
    block = patch.block
    assert block is not None and patch.start == CODE
    for chunk in block.chunks:
        assert mgr.to_guest_eip(chunk.patch) == chunk.guest
        if chunk.guest != patch.start:
            # Resuming at a guest address inside the window continues in the block.
            assert mgr.resume_at(chunk.guest) == chunk.patch
    assert mgr.resume_at(patch.start) == patch.start
    assert mgr.resume_at(patch.end) == patch.end
    assert mgr.to_guest_eip(block.tail) == patch.end
    assert mgr.to_guest_eip(CODE + 0x100) == CODE + 0x100


def test_branch_target_inside_window_forces_int3() -> None:
    src = "cli\nnop\nhere:\nnop\nnop\nnop\nnop\ntest eax, eax\njnz here"
    out, mgr = run_patched(src, {"eax": 0}, 0, 1, sites=[CODE])
    (patch,) = mgr.patches.values()
    # Backward impossible (the CLI starts the block), forward windows hold `here`.
    assert patch.kind == "int3"
    assert "shorter than 5 bytes" in mgr.notes[CODE]   # the target `here` splits the block
    assert [e.mnemonic if e else None for e in out.exits] == ["cli"]
