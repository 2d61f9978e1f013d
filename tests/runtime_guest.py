"""Tiny guests for the runtime's unit tests, assembled with Keystone.

A guest is a RawImage entered at CPL 1 like a plain ELF: `kernel(src)` prefixes
`src` with a prologue that loads a flat GDT (ring-0 and ring-3 code and data, a
TSS), an IDT whose gates point at the handlers given, reloads the segments and
the stack, and LTRs the TSS. Handlers and user code sit at fixed addresses.
Results are read back from guest memory (`RESULTS`) after the run.

Keystone 0.9.2 encodes LGDT/LIDT/LJMP with a 0x66 prefix in 32-bit mode (16-bit
operands), so those are emitted as bytes.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

from keystone import KS_ARCH_X86, KS_MODE_32, Ks

from bt.errors import GuestStop
from runtime.config import RunConfig
from runtime.segments import segment
from runtime.vm import RawImage, RunResult, Vm

KERNEL = 0x100000
GDT, IDT, TSS, RESULTS = 0x20000, 0x21000, 0x22000, 0x23000
GDTR, IDTR = 0x20F00, 0x20F10   # the pseudo-descriptors LGDT/LIDT read
KSTACK, USTACK = 0x80000, 0x90000
USER = 0x120000
HANDLERS = 0x110000          # handler for vector v at HANDLERS + v * 0x100
KCODE, KDATA, UCODE, UDATA, TSS_SEL = 0x08, 0x10, 0x1B, 0x23, 0x28

_ks = Ks(KS_ARCH_X86, KS_MODE_32)


def asm(src: str, addr: int) -> bytes:
    encoding, _ = _ks.asm(src, addr)
    return bytes(encoding or b"")


def lgdt(addr: int) -> str:
    return ".byte 0x0f, 0x01, 0x15\n" + f".long {addr:#x}\n"


def lidt(addr: int) -> str:
    return ".byte 0x0f, 0x01, 0x1d\n" + f".long {addr:#x}\n"


def ljmp(sel: int, off: int) -> str:
    return f".byte 0xea\n.long {off:#x}\n.word {sel:#x}\n"


def exit_with(value: int) -> str:
    return f"mov al, {value}\nout 0xf4, al\nhlt\n"


def gate(offset: int, dpl: int = 0, trap: bool = False) -> bytes:
    access = 0x80 | (dpl << 5) | (0xF if trap else 0xE)
    return struct.pack("<HHBBH", offset & 0xFFFF, KCODE, 0, access, offset >> 16)


def gdt_bytes() -> bytes:
    flat = 0xFFFFFFFF
    descs = [bytes(8), segment(0, flat, 0x9A).to_bytes(), segment(0, flat, 0x92).to_bytes(),
             segment(0, flat, 0xFA).to_bytes(), segment(0, flat, 0xF2).to_bytes(),
             segment(TSS, 103, 0x89, 0x0).to_bytes()]
    return b"".join(descs)


def kernel(src: str, handlers: dict[int, tuple[str, int, bool]] | None = None,
           user: str | None = None, chunks: tuple[tuple[int, bytes], ...] = ()) -> RawImage:
    """`handlers`: vector -> (source, gate DPL, trap gate?)."""
    handlers = handlers or {}
    gdt = gdt_bytes()
    idt = bytearray(256 * 8)
    out: list[tuple[int, bytes]] = []
    for vector, (hsrc, dpl, trap) in handlers.items():
        addr = HANDLERS + vector * 0x100
        idt[vector * 8:vector * 8 + 8] = gate(addr, dpl, trap)
        code = asm(hsrc, addr)
        assert len(code) <= 0x100
        out.append((addr, code))
    head = lgdt(GDTR) + lidt(IDTR)
    first = asm(head, KERNEL)
    after_jump = KERNEL + len(first) + 7
    rest = (f"mov ax, {KDATA}\nmov ds, ax\nmov es, ax\nmov ss, ax\nmov esp, {KSTACK}\n"
            f"mov ax, {TSS_SEL}\nltr ax\n" + src)
    code = first + asm(ljmp(KCODE, after_jump), KERNEL + len(first)) + asm(rest, after_jump)
    tss = bytearray(104)
    struct.pack_into("<II", tss, 4, KSTACK, KDATA)
    out += [(KERNEL, code), (GDT, gdt), (IDT, bytes(idt)), (TSS, bytes(tss)),
            (GDTR, struct.pack("<HI", len(gdt) - 1, GDT)), (IDTR, struct.pack("<HI", len(idt) - 1, IDT))]
    if user is not None:
        out.append((USER, asm(user, USER)))
    out += list(chunks)
    return RawImage(tuple(out), KERNEL)


def to_user(esp: int = USTACK) -> str:
    """Kernel code that IRETs to USER in ring 3 with IF = 1."""
    return (f"push {UDATA}\npush {esp:#x}\npush 0x202\npush {UCODE}\npush {USER:#x}\n"
            f"mov ax, {UDATA}\nmov ds, ax\nmov es, ax\niretd\n")


#: Remap the 8259s (IRQ 0 at vector 0x20, only IRQ 0 unmasked) and start the PIT at 100 Hz.
PIC_PIT_SETUP = """
    mov al, 0x11
    out 0x20, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x04
    out 0x21, al
    mov al, 0x01
    out 0x21, al
    mov al, 0xfe
    out 0x21, al
    mov al, 0x34
    out 0x43, al
    mov al, 0x9c
    out 0x40, al
    mov al, 0x2e
    out 0x40, al
"""
#: The same, then wait with IF clear until the 8259 has latched IRQ 0 (OCW3: read IRR).
TICK_PENDING = PIC_PIT_SETUP + """    mov al, 0x0a
    out 0x20, al
wait:
    in al, 0x20
    test al, 1
    jz wait
"""


def run(image: RawImage, max_insns: int = 2_000_000, fast: bool = True) -> tuple[Vm, RunResult | GuestStop]:
    """`fast`: the fast exits (runtime/fastexit.py) take CLI/STI where they can."""
    vm = Vm(RunConfig(kernel=Path("<test>"), serial=io.BytesIO(), max_insns=max_insns, fast_exits=fast),
            image=image)
    try:
        return vm, vm.run()
    except GuestStop as stop:
        return vm, stop


def words(vm: Vm, addr: int, count: int) -> tuple[int, ...]:
    return struct.unpack(f"<{count}I", vm.cpu.phys_read(addr, 4 * count))
