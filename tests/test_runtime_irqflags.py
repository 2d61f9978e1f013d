"""PUSHF/POPF through the emulators (runtime/emulate/irqflags.py) with the virtual IF unlike
the real one, and STI;HLT, against QEMU (tests/refguest.py).

PUSHF and POPF never trap at CPL 1; they reach their emulators only through a patch that
exits: the one-byte INT3 replacement, which the patch manager uses where no 5-byte window
is safe. Each site below is its own basic block between branch targets, so it gets INT3
(checked), and every PUSHF/POPF of the guest runs through the emulators while ring1's real
IF stays 1 and its real IOPL 0.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import runtime_guest
from refguest import hexlines, run_reference, run_ring1, write_elf
from runtime_guest import KERNEL, kernel

from patchmgr.manager import PatchConfig


def _alone(n: int, insn: str) -> str:
    """`insn` as a basic block of its own: a branch target, then a JMP."""
    return f"jmp s{n}\ns{n}:\n{insn}\njmp e{n}\ne{n}:\n"


#: (kernel code, what PUSHF then shows in EFLAGS, as the SDM says it at CPL 0). Each step
#: starts with CMP EAX, EAX, so the arithmetic flags are known: ZF and PF set, the rest clear.
STEPS = [
    ("cli", 0x046),                       # virtual IF 0, real IF 1
    ("sti", 0x246),
    ("cli\npush 0x202\n{popf}", 0x202),   # POPF sets IF at CPL 0
    ("sti\npush 0x002\n{popf}", 0x002),   # ... and clears it
    ("cli\npush 0x3002\n{popf}", 0x3002),  # IOPL 3 at CPL 0
    ("push 0x08d7\n{popf}", 0x08d7),      # OF SF ZF AF PF CF, IF 0, IOPL 0 again
    ("push 0x0202\n{popf}", 0x0202),
]


def _guest() -> str:
    src, n = "", 0
    for code, _ in STEPS:
        n += 1
        src += "cmp eax, eax\n" + code.format(popf=_alone(1000 + n, "popfd")) + "\n"
        n += 1
        src += _alone(n, "pushfd") + "pop eax\nand eax, 0x3fd7\ncall 0x1e0000\n"
    return "cli\n" + src + "mov al, 0\nout 0xf4, al\n"


def test_pushf_popf_emulators_show_the_virtual_if_and_iopl(tmp_path: Path):
    elf = write_elf(kernel(_guest()), tmp_path / "flags.elf")
    theirs = run_reference(elf)
    assert theirs.serial == hexlines(*(want for _, want in STEPS)) and theirs.status == 1, \
        "QEMU disagrees with the SDM"
    ours, vm = run_ring1(elf, PatchConfig(hot=1))
    assert ours == theirs
    # Every PUSHF and POPF ran through its emulator, from an INT3 patch.
    assert vm.patches is not None
    kinds = {(p.op.cls, p.kind) for p in vm.patches.patches.values() if p.op.cls in ("pushf", "popf")}
    assert kinds == {("pushf", "int3"), ("popf", "int3")}
    emulated = Counter(cls for (kind, cls, _site), n in vm.stats.hits.items() for _ in range(n)
                       if kind == "hypercall")
    assert emulated["pushf"] == len(STEPS)
    assert emulated["popf"] == sum("{popf}" in code for code, _ in STEPS)


def test_unpatched_pushf_leaks_the_real_if(tmp_path: Path):
    # What the emulators are for: without patches PUSHF runs natively and shows real IF 1.
    elf = write_elf(kernel(_guest()), tmp_path / "flags.elf")
    ours, _vm = run_ring1(elf, PatchConfig(enabled=False))
    assert ours.serial.split(b"\n")[0] == b"%08x" % 0x246


# -- STI;HLT ------------------------------------------------------------------------------------

#: Remap the PIC (IRQ 0 at vector 0x20, only IRQ 0 unmasked), start the PIT at 100 Hz, then
#: with IF = 0 wait until the PIC has latched IRQ 0 (OCW3: read IRR).
TICK_PENDING = "\n    cli\n" + runtime_guest.TICK_PENDING
#: The IRQ 0 handler prints the return address of its frame (as an offset from `base`).
PRINT_RETURN = "mov eax, [esp]\nsub eax, 0x100000\ncall 0x1e0000\nmov al, 0x20\nout 0xf4, al\n"


@pytest.mark.parametrize("tail, after, mode", [
    # STI's shadow covers the HLT: the HLT starts, the interrupt ends it, the frame returns
    # after the HLT (SDM STI: interrupts are recognised after the next instruction).
    ("sti\nhlt\nmarker:\nnop\nhlt\n", "marker", "unpatched"),
    ("sti\nhlt\nmarker:\nnop\nhlt\n", "marker", "patched"),
    # The shadow covers one instruction, whatever it is.
    ("sti\nnop\nmarker:\nnop\nhlt\n", "marker", "unpatched"),
    ("sti\nnop\nmarker:\nnop\nhlt\n", "marker", "patched"),
    # A CLI in the shadow keeps the interrupt out; the next STI's shadow lets it in after the NOP.
    ("sti\ncli\nnop\nsti\nnop\nmarker:\nnop\nhlt\n", "marker", "unpatched"),
    ("sti\ncli\nnop\nsti\nnop\nmarker:\nnop\nhlt\n", "marker", "patched"),
    # POPF has no shadow: the interrupt comes right after it. (Unpatched, POPF cannot set the
    # virtual IF at all: the raw-mode leak patching fixes.)
    ("push 0x202\npopfd\nmarker:\nnop\nhlt\n", "marker", "patched"),
    # ... also through the POPF emulator (an INT3 patch: the POPF is a block of its own).
    ("push 0x202\njmp s7\ns7:\npopfd\nmarker:\njmp e7\ne7:\nnop\nhlt\n", "marker", "patched"),
], ids=["sti-hlt-unpatched", "sti-hlt-patched", "sti-nop-unpatched", "sti-nop-patched", "sti-cli-unpatched",
        "sti-cli-patched", "popf-patched", "popf-emulated"])
def test_a_pending_irq_after_sti_or_popf_matches_qemu(tmp_path: Path, tail: str, after: str, mode: str):
    src = TICK_PENDING + tail
    elf = write_elf(kernel(src, handlers={0x20: (PRINT_RETURN, 0, False)}), tmp_path / "stihlt.elf")
    theirs = run_reference(elf)
    marker = _label_offset(src, after)
    assert theirs.serial == hexlines(marker) and theirs.status == (0x20 << 1) | 1, \
        "QEMU disagrees with the SDM"
    ours, _vm = run_ring1(elf, None if mode == "unpatched" else PatchConfig(hot=1))
    assert ours == theirs


def _label_offset(src: str, label: str) -> int:
    """Offset from KERNEL of `label` in the kernel code `src` as runtime_guest.kernel assembles it."""
    mark = b"\x0f\x0b\xf1\xf1\xf1"     # UD2 and three ICEBPs: a pattern the guest code does not hold
    code = next(data for addr, data in kernel(src).chunks if addr == KERNEL)
    probe = src.replace(f"{label}:", f"{label}:\nud2\n.byte 0xf1, 0xf1, 0xf1")
    marked = next(data for addr, data in kernel(probe).chunks if addr == KERNEL)
    at = marked.index(mark)
    assert code[:at] == marked[:at]
    return at


@pytest.mark.parametrize("mode", ["emulated", "patched"])
def test_popf_that_leaves_if_clear_lets_no_pending_irq_in(tmp_path: Path, mode: str):
    # IRQ 0 waits while IF = 0; a POPF whose image has IF = 0 must not let it in (through the
    # POPF emulator from an INT3 patch, or through the inline patch).
    popf = _alone(1, "popfd") if mode == "emulated" else "popfd\nnop\nnop\nnop\nnop\n"
    src = TICK_PENDING + "push 0x002\n" + popf + "mov eax, 0x99\ncall 0x1e0000\nmov al, 0x21\nout 0xf4, al\n"
    elf = write_elf(kernel(src, handlers={0x20: (PRINT_RETURN, 0, False)}), tmp_path / "popf0.elf")
    theirs = run_reference(elf)
    assert (theirs.serial, theirs.status) == (hexlines(0x99), (0x21 << 1) | 1), "QEMU disagrees with the SDM"
    ours, vm = run_ring1(elf, PatchConfig(hot=1))
    assert ours == theirs
    assert vm.patches is not None
    kinds = {p.kind for p in vm.patches.patches.values() if p.op.cls == "popf"}
    assert kinds == ({"int3"} if mode == "emulated" else {"jmp"})
