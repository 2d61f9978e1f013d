"""Patched CLI/STI/PUSHF/POPF at CPL 1 do exactly what the original does at CPL 0:
same registers, same arithmetic flags, same stack bytes, and the virtual IF equal to
the real IF of the native run (the bare-Unicorn harness in runtime/ruletest.py)."""

from __future__ import annotations

import pytest

from runtime.ruletest import run_native, run_patched

SEQUENCES = {
    "pushf-cli-popf": "add eax, ebx\npushfd\ncli\nadd ecx, edx\npopfd\nnop\nnop\nnop\nnop\nnop",
    "cli-only": "cli\nnop\nnop\nnop\nnop\nnop",
    "sti-then-read": "sti\npushfd\npop esi\nnop\nnop\nnop",
    "save-restore": "pushfd\npop edi\ncli\nsub eax, 7\npush edi\npopfd\nnop\nnop\nnop\nnop",
    "popf16": "push 0x2d7\npopf\npushf\npop si\nnop\nnop\nnop\nnop\nnop",
    "popf-sets-if": "push 0x2d7\npopfd\npushfd\npop esi\nnop\nnop\nnop\nnop",
    "popf-clears-if": "push 0x0c5\npopfd\npushfd\npop esi\nnop\nnop\nnop\nnop",
    "pushf16": "cmp eax, ebx\npushf\npop si\nnop\nnop\nnop\nnop\nnop",
    # PUSHFD; POP r32 uses r as its scratch register (PatchCode.before_pop).
    "save-flags-eax": "add eax, ebx\npushfd\npop eax\ncli\nnop\nnop\nnop\nnop",
    "save-flags-edx": "push 0x32d7\npopfd\nsti\npushfd\npop edx\nnop\nnop\nnop\nnop",
    "save-flags-ebx-ecx": "pushfd\npop ebx\ncli\npushfd\npop ecx\nnop\nnop\nnop\nnop\nnop",
    # PUSH r32; POPFD reloads r from the stack instead of a scratch word (PatchCode.after_push).
    "restore-flags-eax": "mov eax, 0x8d7\npush eax\npopfd\nnop\nnop\nnop\nnop",
    "restore-flags-ebp": "pushfd\npop ebp\ncli\nadd eax, ebx\npush ebp\npopfd\nnop\nnop\nnop\nnop",
    "restore-flags-iopl": "mov ecx, 0x3046\npush ecx\npopfd\npushfd\npop edx\nnop\nnop\nnop\nnop",
    # IOPL lives apart from IF in the virtual flags word: CLI/STI must keep it.
    "popf-iopl-cli": "push 0x32d7\npopfd\npushfd\npop esi\ncli\npushfd\npop edi\nnop\nnop\nnop\nnop",
    "popf16-iopl-sti": "push 0x1002\npopf\npushf\npop si\nsti\npushfd\npop edi\nnop\nnop\nnop\nnop",
}
REGS = {"eax": 0x12345678, "ebx": 0x9ABCDEF0, "ecx": 0x7FFFFFFF, "edx": 1, "esi": 0, "edi": 0,
        "ebp": 0x5555}


@pytest.mark.parametrize("name", sorted(SEQUENCES))
@pytest.mark.parametrize("flags", [0x000, 0x8D5, 0x041, 0x400])
@pytest.mark.parametrize("guest_if", [0, 1])
def test_patched_matches_native(name: str, flags: int, guest_if: int) -> None:
    src = SEQUENCES[name]
    native = run_native(src, REGS, flags, guest_if)
    patched, mgr = run_patched(src, REGS, flags, guest_if)
    assert mgr.patches, "nothing was patched"
    assert all(p.kind == "jmp" for p in mgr.patches.values()), mgr.notes
    assert patched.regs == native.regs
    assert patched.flags == native.flags
    assert patched.virtual_if == native.virtual_if
    assert patched.stack == native.stack
    assert patched.exits == [] or all(e is None for e in patched.exits)


def test_sti_exits_only_when_pending() -> None:
    src = "sti\nnop\nnop\nnop\nnop\nnop"
    quiet, _ = run_patched(src, REGS, 0, 0)
    assert quiet.exits == []
    # With an interrupt pending the block exits once, with nothing to emulate, at the
    # guest address after its window, where the runtime can deliver it.
    loud, mgr = run_patched(src, REGS, 0, 0, pending=1)
    (patch,) = mgr.patches.values()
    assert loud.exits == [None]
    assert loud.resumes == [patch.end]
    # CLI never exits, pending or not.
    cli, _ = run_patched("cli\nnop\nnop\nnop\nnop\nnop", REGS, 0, 1, pending=1)
    assert cli.exits == []


def test_popf_exits_only_when_it_sets_if() -> None:
    keeps_off, _ = run_patched("push 0x2\npopfd\nnop\nnop", REGS, 0, 0, pending=1)
    assert keeps_off.exits == []
    sets_on, _ = run_patched("push 0x202\npopfd\nnop\nnop", REGS, 0, 0, pending=1)
    assert sets_on.exits == [None]


@pytest.mark.parametrize("flags", [0x000, 0x8D5])
@pytest.mark.parametrize("pushed", [0x2D7, 0x3046, 0x0C5])
def test_entering_a_fused_popf_from_outside(flags: int, pushed: int) -> None:
    """A guest continuing at the POPFD of a PUSH r32; POPFD window (an IRET to it, say) did
    not run the PUSH: r need not equal [esp]. The block is entered at a stub holding the
    stand-alone translation, which leaves r alone."""
    src = "mov ebx, 0x202\npush ebx\npopfd\nnop\nnop\nnop\nnop"
    popfd = 0x20000 + 6                                   # CODE + mov (5) + push (1)
    _, mgr = run_patched(src, REGS, flags, 0)
    (patch,) = mgr.patches.values()
    assert patch.block is not None
    chunk = next(c for c in patch.block.chunks if c.guest == popfd)
    assert chunk.entry and mgr.resume_at(popfd) == chunk.entry
    assert mgr.to_guest_eip(chunk.entry) == popfd
    patched, _ = run_patched(src, REGS, flags, 0, enter_at=popfd, stack=(pushed,))
    assert patched.regs["ebx"] == REGS["ebx"]
    assert patched.regs["eax"] == REGS["eax"]
    assert patched.virtual_if == pushed & 0x200
    assert patched.flags == pushed & 0xCD5


def test_unmasking_window_runs_on_to_ret_through_a_code_gate() -> None:
    """STI; INC; RET (Linux's local_irq_enable) is one block that leaves by its own RET.
    Nothing pending: no exit, no check on the way. Pending: the JMP the patch manager put
    over the RET leads to the check, which exits at the RET's guest address."""
    src = "call f\nnop\nnop\nnop\nnop\nnop\njmp done\nf: sti\ninc dword ptr [0x90000]\nret\ndone: nop"
    quiet, mgr = run_patched(src, REGS, 0, 0)
    (patch,) = mgr.patches.values()
    block = patch.block
    assert block is not None and block.gate == block.chunks[-1].patch
    ret = patch.end - 1
    assert block.chunks[-1].guest == ret and mgr.resume_at(ret) == block.gate
    assert quiet.exits == [] and quiet.virtual_if == 0x200
    assert quiet.data[:4] == b"\x01\0\0\0"
    loud, mgr = run_patched(src, REGS, 0, 0, pending=1)
    assert loud.exits == [None] and loud.resumes == [ret]
    assert loud.data[:4] == b"\x01\0\0\0"           # the INC ran once, before the exit
    # The gate is the RET itself while nothing is pending, a JMP to the check while
    # something is; the patch manager switches it.
    (patch,) = mgr.patches.values()
    assert patch.block is not None
    gate = patch.block.gate
    assert gate is not None and patch.block.check is not None
    on = mgr.memory.read(gate, 5)
    assert on[0] == 0xE9 and gate + 5 + int.from_bytes(on[1:], "little", signed=True) == patch.block.check
    mgr.set_pending(False)
    assert mgr.memory.read(gate, 1) == b"\xc3"
    # The copy of the RET at the end of the check stands for the guest's RET.
    assert mgr.to_guest_eip(patch.block.limit - 1) == ret
