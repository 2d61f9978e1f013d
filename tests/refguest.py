"""Reference guests: one tiny guest (tests/runtime_guest.py) booted under ring1 and under QEMU.

QEMU runs the guest kernel at CPL 0 on its x86 model, the reference; ring1 runs the same
ELF at CPL 1. The guest prints what it observed (error codes, frames, flags) to COM1 as
hex words and ends through isa-debug-exit, so a test compares the two outputs byte for
byte and also checks QEMU's against values computed by hand from the SDM: a guest that
does not test what its test says fails against the hand-made values, and ring1 that
differs from the CPU fails against QEMU.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from requires import require_tool
from runtime_guest import asm

from bt.errors import GuestStop
from patchmgr.manager import PatchConfig
from runtime.config import RunConfig
from runtime.vm import RawImage, Vm

#: `call PRINT` prints EAX as 8 hex digits and a newline on COM1; every register and the
#: stack are kept (flags are not). The UART sends without being set up, in QEMU and ring1.
PRINT = 0x1E0000
PRINT_SRC = """
    pushad
    mov ebx, eax
    mov ecx, 8
    mov dx, 0x3f8
digit:
    rol ebx, 4
    mov eax, ebx
    and eax, 0xf
    cmp eax, 10
    jb decimal
    add eax, 0x27
decimal:
    add eax, 0x30
    out dx, al
    dec ecx
    jnz digit
    mov al, 10
    out dx, al
    popad
    ret
"""


def hexlines(*values: int) -> bytes:
    """What the guest prints for these values with `call PRINT`."""
    return b"".join(b"%08x\n" % (v & 0xFFFFFFFF) for v in values)


def with_print(img: RawImage) -> RawImage:
    return RawImage(((PRINT, asm(PRINT_SRC, PRINT)), *img.chunks), img.entry)


#: QEMU's multiboot loader copies one blob from the lowest to the highest loaded address and
#: its option ROM works in low memory: the ELF loads above 1 MiB only, and a stub copies the
#: guest's low chunks (GDT, IDT, TSS at 0x20000...) into place before it enters the kernel.
STAGE, STUB = 0x200000, 0x1F0000


def multiboot_elf(img: RawImage) -> bytes:
    """`img` as a multiboot ELF QEMU boots: its chunks applied in order (later ones
    overwrite), merged into non-overlapping PT_LOAD segments, low ones staged."""
    memory: dict[int, int] = {}
    for addr, data in img.chunks:
        memory.update(zip(range(addr, addr + len(data)), data, strict=True))
    runs: list[tuple[int, bytearray]] = []
    for addr in sorted(memory):
        if runs and runs[-1][0] + len(runs[-1][1]) == addr:
            runs[-1][1].append(memory[addr])
        else:
            runs.append((addr, bytearray([memory[addr]])))
    segments: list[tuple[int, bytes]] = []
    stub, staged = "", STAGE
    for addr, data in runs:
        if addr >= 0x100000:
            segments.append((addr, bytes(data)))
            continue
        segments.append((staged, bytes(data)))
        stub += f"mov esi, {staged:#x}\nmov edi, {addr:#x}\nmov ecx, {len(data)}\ncld\nrep movsb\n"
        staged += len(data) + (-len(data) % 16)
    # The firmware leaves the timer's IRQ 0 unmasked at vector 8, which the guests here do not
    # expect: mask both PICs (a guest that wants interrupts programs them itself). A direct JMP,
    # so that the scanner's descent from the ELF entry reaches the kernel.
    mask_pic = "mov al, 0xff\nout 0x21, al\nout 0xa1, al\n"
    segments.append((STUB, asm(mask_pic + stub + f"jmp {img.entry:#x}\n", STUB)))
    magic, flags = 0x1BADB002, 0
    header = struct.pack("<III", magic, flags, (-(magic + flags)) & 0xFFFFFFFF)
    offset = 52 + 32 * len(segments) + len(header)
    phdrs, body = b"", b""
    for addr, data in segments:
        phdrs += struct.pack("<8I", 1, offset + len(body), addr, addr, len(data), len(data), 7, 4)
        body += data + bytes(-len(data) % 4)
    ehdr = struct.pack("<16sHHIIIIIHHHHHH", b"\x7fELF\x01\x01\x01" + bytes(9), 2, 3, 1, STUB, 52, 0, 0,
                       52, 32, len(segments), 40, 0, 0)
    return ehdr + phdrs + header + body


@dataclass(frozen=True)
class Outcome:
    """How one run ended: COM1 bytes, and the debug-exit status or the stop reason."""

    serial: bytes
    status: int | None
    stop: str | None = None


def write_elf(img: RawImage, path: Path) -> Path:
    path.write_bytes(multiboot_elf(with_print(img)))
    return path


def run_ring1(elf: Path, patch: PatchConfig | None = None, max_insns: int = 5_000_000) -> tuple[Outcome, Vm]:
    """The ELF under ring1: unpatched (`patch` None) or with the patch manager."""
    out = io.BytesIO()
    vm = Vm(RunConfig(kernel=elf, serial=out, max_insns=max_insns, patch=patch))
    try:
        result = vm.run()
    except GuestStop as stop:
        return Outcome(out.getvalue(), None, stop.reason), vm
    return Outcome(out.getvalue(), result.exit_status), vm


#: A folder where QEMU's outcomes are kept by ELF digest: the reference does not change when
#: ring1 does, so a mutation run (tests/mutate.py) boots each guest under QEMU once.
CACHE_ENV = "RING1_QEMU_CACHE"


def run_reference(elf: Path) -> Outcome:
    """The ELF under QEMU (TCG, CPL 0). A triple fault resets the machine, and `-no-reboot`
    turns that into QEMU's exit with status 0: reported as the stop "triple fault"."""
    require_tool("qemu")
    from qemu import run_qemu

    cache = os.environ.get(CACHE_ENV)
    kept = Path(cache) / hashlib.sha256(elf.read_bytes()).hexdigest() if cache else None
    if kept is not None and kept.exists():
        code_text, _, serial = kept.read_bytes().partition(b"\n")
        code = int(code_text)
    else:
        serial, code = run_qemu(elf, "")
        if kept is not None:
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_bytes(b"%d\n" % code + serial)
    if code == 0:
        return Outcome(serial, None, "triple fault")
    return Outcome(serial, code)
