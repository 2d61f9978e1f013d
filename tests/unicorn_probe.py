"""How Unicorn's x86 CPU model treats each privileged or sensitive instruction at CPL 1
with IOPL 0, the way a raw-mode VMM runs a guest kernel: the measurement behind
`bt.isa`'s `unicorn` column (tests/test_isa.py checks the table against it).

A copy of the project's shared probe (`shared/tools/ring1_probe.py`, the tool the notes
in shared/notes/unicorn-ring1.md were measured with), kept in the repository so a clone
checks the table against the installed Unicorn too; CI clones the repository alone.
Keep the two in step when the probe changes.

It builds a flat GDT with ring-0, ring-1 and ring-3 segments, enters ring 1 with
IRETD from a ring-0 stub, executes one instruction, and records what the CPU did: a
fault (vector, faulting mnemonic), an I/O hook call, or nothing.

    python3 tests/unicorn_probe.py            # the whole table
    python3 tests/unicorn_probe.py "cli" "mov eax, cr3"
"""

from __future__ import annotations

import struct
import sys

from capstone import CS_ARCH_X86, CS_MODE_32, Cs
from keystone import KS_ARCH_X86, KS_MODE_32, Ks
from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_HOOK_INTR, UC_MODE_32, Uc, UcError
from unicorn.x86_const import (
    UC_X86_INS_IN,
    UC_X86_INS_OUT,
    UC_X86_REG_CR0,
    UC_X86_REG_CS,
    UC_X86_REG_DS,
    UC_X86_REG_EIP,
    UC_X86_REG_ES,
    UC_X86_REG_ESP,
    UC_X86_REG_GDTR,
    UC_X86_REG_SS,
)

GDT, BOOT, GUEST = 0x1000, 0x10000, 0x20000
KCODE0, KDATA0, KCODE1, KDATA1 = 0x08, 0x10, 0x19, 0x21   # selectors (with RPL)

_ks = Ks(KS_ARCH_X86, KS_MODE_32)
_cs = Cs(CS_ARCH_X86, CS_MODE_32)

INSTRUCTIONS = [
    "cli", "sti", "hlt", "mov eax, cr0", "mov cr0, eax", "mov eax, cr3", "mov cr3, eax",
    "mov eax, dr7", "mov dr7, eax", "lgdt [0x9000]", "lidt [0x9000]", "sgdt [0x9000]",
    "sidt [0x9000]", "lldt ax", "sldt ax", "ltr ax", "str ax", "smsw ax", "lmsw ax", "clts",
    "invd", "wbinvd", "invlpg [0x9000]", "rdmsr", "wrmsr", "rdtsc", "rdpmc", "cpuid",
    "pushfd", "popfd", "in al, dx", "out dx, al", "insb", "outsb", "mov ax, cs", "push cs",
    "mov ax, ss", "push ss", "lar eax, ecx", "lsl eax, ecx", "verr cx", "verw cx",
    "int3", "int 0x80", "mov ss, ax", "pop ss", "mov ds, ax",
]


def _asm(src: str, addr: int) -> bytes:
    encoding, _ = _ks.asm(src, addr)
    return bytes(encoding)


def _descriptor(access: int) -> bytes:
    """A flat 4 GiB, 32-bit, page-granular descriptor with the given access byte."""
    return struct.pack("<HHBBBB", 0xFFFF, 0, 0, access, 0xCF, 0)


def machine(guest_src: str) -> Uc:
    """A CPU in protected mode, about to IRETD from ring 0 into `guest_src` at ring 1."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x400000)
    gdt = b"\0" * 8 + b"".join(_descriptor(a) for a in (0x9A, 0x92, 0xBA, 0xB2, 0xFA, 0xF2))
    uc.mem_write(GDT, gdt)
    uc.reg_write(UC_X86_REG_GDTR, (0, GDT, len(gdt) - 1, 0))
    uc.reg_write(UC_X86_REG_CR0, uc.reg_read(UC_X86_REG_CR0) | 1)
    for reg, sel in ((UC_X86_REG_CS, KCODE0), (UC_X86_REG_SS, KDATA0),
                     (UC_X86_REG_DS, KDATA0), (UC_X86_REG_ES, KDATA0)):
        uc.reg_write(reg, sel)
    uc.mem_write(GUEST, _asm(guest_src, GUEST))
    # IRETD frame for an outward privilege change: EIP, CS, EFLAGS (IF=1, IOPL=0), ESP, SS.
    uc.mem_write(BOOT, _asm(f"push {KDATA1}\npush 0x18000\npush 0x202\npush {KCODE1}\n"
                            f"push {GUEST}\niretd", BOOT))
    uc.reg_write(UC_X86_REG_ESP, 0x8000)
    return uc


def probe(insn: str) -> list[str]:
    pre = "mov ecx, 0x10\nmov eax, 0x11\nmov edx, 0x3f8\nmov esi, 0x9000\nmov edi, 0x9100\n"
    if insn == "popfd":
        pre += "push 0x3202\n"
    if insn in ("mov ss, ax", "pop ss", "mov ds, ax"):
        pre += "mov eax, 0x10\npush eax\n"
    if insn in ("lldt ax", "ltr ax"):
        pre += "xor eax, eax\n"
    uc = machine(pre + insn + "\nnop\nhlt")
    target = GUEST + len(_asm(pre, GUEST))          # address of the probed instruction
    seen: list[str] = []

    def on_intr(uc: Uc, vector: int, _: object) -> None:
        eip = uc.reg_read(UC_X86_REG_EIP)
        at = next(_cs.disasm(bytes(uc.mem_read(eip, 16)), eip), None)
        where = "the probed instruction" if eip == target else f"'{at.mnemonic if at else '?'}' after it"
        seen.append(f"vector {vector} at {where}")
        uc.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.hook_add(UC_HOOK_INSN, lambda *a: seen.append("IN hook") or 0, None, 1, 0, UC_X86_INS_IN)
    uc.hook_add(UC_HOOK_INSN, lambda *a: seen.append("OUT hook"), None, 1, 0, UC_X86_INS_OUT)
    try:
        uc.emu_start(BOOT, 0xFFFFFFFF, count=200)
    except UcError as err:
        seen.append(f"UcError: {err}")
    return seen


def main(argv: list[str]) -> None:
    for insn in argv or INSTRUCTIONS:
        outcome = probe(insn)
        first = outcome[0] if outcome else ""
        if first == "vector 13 at the probed instruction":
            verdict = "#GP"
        elif first.endswith("hook"):
            verdict = "I/O hook"
        elif first.startswith("vector 13"):
            verdict = "no trap"
        else:
            verdict = first or "no stop"
        print(f"{insn:18s} {verdict:10s} {outcome}")


if __name__ == "__main__":
    main(sys.argv[1:])
