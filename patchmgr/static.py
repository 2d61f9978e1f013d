"""`bt patch IN.elf -o OUT.elf`: patch every scanned site ahead of time (PATM did it at run
time; the static form makes the patched kernel an artefact one can inspect with objdump).

The patcher sees the kernel as `bt run` finds it in memory when it adopts the patches:
every piece of the file at its physical load address (`Loaded`, what runtime/boot.py
plans), a kernel address taken there through the program headers as the run does
(`to_phys`, runtime.patching.KernelMap). A site is patched only where the whole basic
block around it is bytes of the file, the very bytes the scanner decoded (they are what
the patch rewrites); sites elsewhere (code outside every segment) are left to run-time
patching and counted. runtime/staticpatch.py supplies the plan and checks the output.

The output is the input's bytes, with

* every patched window rewritten (the 5-byte JMP or the INT3) at its file offset;
* appended: the patch code, the record (patchmgr/record.py), a section name table and a
  section header table holding the input's sections plus `.ring1.patchcode` and the
  non-allocated `.ring1.patches` (e_shoff, e_shnum, e_shstrndx point at them);
* the patch code as a PT_LOAD segment (R+X) at bt.layout.PATCH_BASE. That program header
  reuses the input's PT_GNU_STACK entry (or a PT_NULL one), which no loader of a kernel
  reads, so the table stays where it is (some multiboot loaders want it in the first
  8 KiB). A kernel with neither gets a copy of its table with one more entry appended to
  the file: QEMU and ring1 read program headers anywhere in the file.

Nothing of the input moves, no section changes address, and nothing is added inside the
guest's memory: the one new segment is patch memory. The ELF is written here rather than
by LIEF's writer, which aborted the process on an unknown e_type and reserved gigabytes
for a garbage section table (issue 12); this writer only appends, so its memory is the
file's size plus the patches.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from bt import elf, layout, scan
from bt.errors import InputError, PatchError
from patchmgr import record
from patchmgr.codemap import ScanCodeMap
from patchmgr.manager import PatchConfig, PatchManager, head
from patchmgr.patch import Patch, Refusal
from patchmgr.registry import RuleSet

CODE_SECTION = ".ring1.patchcode"
PT_NULL, PT_LOAD, PT_GNU_STACK = 0, 1, 0x6474E551
PF_X, PF_R = 1, 4
SHT_PROGBITS, SHT_STRTAB = 1, 3
SHN_LORESERVE = 0xFF00
PN_XNUM = 0xFFFF
ALIGN = 16


class Loaded(Protocol):
    """A piece of the kernel file in guest memory at entry (runtime.boot.Placement): `filesz`
    bytes from file `offset`, then zeros up to `size`, at physical `address`."""

    @property
    def address(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def filesz(self) -> int: ...


class ImageMemory:
    """Guest memory as `bt run` has it when it adopts the patches, over the output's bytes:
    a kernel address goes to the physical address `to_phys` gives (where the ELF's program
    headers put it: runtime.patching.KernelMap, the run's own rule), the pieces of the file
    sit at their load addresses, zeros elsewhere (RAM is zero-filled), and the patch memory
    is being filled. A write must land on bytes of the file."""

    def __init__(self, places: Sequence[Loaded], out: bytearray,
                 to_phys: Callable[[int], int] = lambda address: address) -> None:
        self.places = sorted(places, key=lambda p: p.address)
        self.out = out
        self.to_phys = to_phys
        self.patch = bytearray()

    def _piece(self, phys: int) -> Loaded | None:
        for p in self.places:
            if p.address <= phys < p.address + p.size:
                return p
        return None

    def stored(self, start: int, end: int) -> bool:
        """Whether [start, end) is file bytes of one piece (a patch there can be written)."""
        phys = self.to_phys(start)
        p = self._piece(phys)
        return p is not None and phys + end - start <= p.address + p.filesz

    def read(self, address: int, size: int) -> bytes:
        if layout.PATCH_BASE <= address < layout.PATCH_BASE + layout.PATCH_SIZE:
            off = address - layout.PATCH_BASE
            return bytes(self.patch[off:off + size]).ljust(size, b"\0")
        if address >= layout.VMM_BASE:
            raise PatchError(f"{address:#x}: the VMM area has no image here")   # the state block
        # Physically contiguous from the translated start, as the run reads it (a decode of 16
        # bytes at a segment's last instruction reads what follows it in RAM).
        phys = self.to_phys(address)
        out = bytearray(size)
        for p in self.places:
            lo, hi = max(phys, p.address), min(phys + size, p.address + p.filesz)
            if lo < hi:
                at = p.offset + lo - p.address
                out[lo - phys:hi - phys] = self.out[at:at + hi - lo]
        return bytes(out)

    def write(self, address: int, data: bytes) -> None:
        if layout.PATCH_BASE <= address < layout.PATCH_BASE + layout.PATCH_SIZE:
            off = address - layout.PATCH_BASE
            if len(self.patch) < off + len(data):
                self.patch.extend(bytes(off + len(data) - len(self.patch)))
            self.patch[off:off + len(data)] = data
            return
        phys = self.to_phys(address)
        p = self._piece(phys)
        if p is None or phys + len(data) > p.address + p.filesz:
            raise PatchError(f"{address:#x}+{len(data)}: not file bytes of a loaded segment")
        at = p.offset + phys - p.address
        self.out[at:at + len(data)] = data


@dataclass(frozen=True)
class StaticResult:
    patches: tuple[Patch, ...]
    refusals: tuple[Refusal, ...]
    notes: dict[int, str]
    sites: int
    patch_bytes: int
    #: Sites left to run-time patching: not at their load address, or not file bytes.
    elsewhere: int = 0


@dataclass(frozen=True)
class StaticOutput:
    data: bytes
    result: StaticResult


def check_input(image: elf.KernelImage) -> None:
    """What `bt patch` refuses before it starts (exit 2)."""
    if image.bits != 32:
        raise InputError(f"{image.path}: ring1 patches 32-bit kernels only")
    if any(s.name in (record.SECTION, CODE_SECTION) for s in image.sections):
        raise InputError(f"{image.path}: already patched by bt patch ({record.SECTION} is there)")


def patch_image(image: elf.KernelImage, rules: RuleSet, places: Sequence[Loaded],
                to_phys: Callable[[int], int] = lambda address: address) -> StaticOutput:
    """The patched ELF's bytes. `places`: where `bt run` loads the file (runtime/boot.py);
    `to_phys`: where it reads a kernel address when it adopts the patches."""
    check_input(image)
    result = scan.scan(image)
    out = bytearray(image.raw)
    memory = ImageMemory(places, out, to_phys)
    code = ScanCodeMap(result)
    manager = PatchManager(PatchConfig(eager=True), memory, code, rules)
    wanted = [s.address for s in result.sites
              if s.reached and rules.handles(s.cls.name) and not user_code(image, s.address)]
    fits: dict[tuple[int, int], bool] = {}
    sites = [a for a in wanted if _in_image(image, memory, code, a, fits)]
    manager.patch_all(sites)
    patches = sorted(manager.patches.values(), key=lambda p: p.site)
    refusals = sorted(manager.refusals.values(), key=lambda r: r.site)
    rec = record.dump(patches, refusals, layout.PATCH_BASE, manager.patch_memory.top,
                      dict(manager.ctx.data_slots()))
    data = write_elf(image, out, bytes(memory.patch), rec)
    return StaticOutput(data, StaticResult(tuple(patches), tuple(refusals), dict(manager.notes), len(sites),
                                           len(memory.patch), len(wanted) - len(sites)))


def _in_image(image: elf.KernelImage, memory: ImageMemory, code: ScanCodeMap, site: int,
              fits: dict[tuple[int, int], bool]) -> bool:
    """A patch of `site` stays inside its basic block: the block must be file bytes at its own
    address in memory, the very bytes the scanner decoded there, for the patch to be written
    (and found by `bt run`)."""
    bounds = code.block_of(site)
    start, end = bounds if bounds is not None else (site, site + 1)
    if (start, end) not in fits:
        fits[(start, end)] = (memory.stored(start, end)
                              and memory.read(start, end - start) == image.read(start, end - start))
    return fits[(start, end)]


def user_code(image: elf.KernelImage, address: int) -> bool:
    """Code the guest runs in ring 3 (the samples' `.user` sections): never patched, its
    sensitive instructions must fault as they would at CPL 3."""
    return any(s.name.startswith(".user") and s.address <= address < s.address + s.size
               for s in image.sections)


# ---- writing the ELF (ELF32: `bt patch` patches 32-bit kernels) ---------------------------------

def _align(buf: bytearray, n: int = ALIGN) -> int:
    buf.extend(bytes(-len(buf) % n))
    return len(buf)


def write_elf(image: elf.KernelImage, out: bytearray, code: bytes, rec: bytes) -> bytes:
    """`out` (the input's bytes, patched) with the patch segment, the record and the section
    table appended, as the module docstring says."""
    t = elf.Tables.of(bytes(out[:52]), 32)
    code_off = _align(out)
    out += code
    rec_off = _align(out)
    out += rec

    # Section headers: the input's, if its table is sound (elf.load's rule), else a new one.
    sound = elf.sound_sections(t, len(image.raw), 32)
    shdrs = [bytearray(out[t.shoff + i * 40:t.shoff + (i + 1) * 40]) for i in range(t.shnum)] if sound else []
    if not shdrs:
        shdrs = [bytearray(40)]
    strndx = t.shstrndx if sound else 0
    names = bytearray(b"\0")
    if strndx and struct.unpack_from("<I", shdrs[strndx], 4)[0] == SHT_STRTAB:
        _, _, _, _, off, size = struct.unpack_from("<6I", shdrs[strndx])
        if off + size <= len(image.raw):
            names = bytearray(out[off:off + size])
    else:
        strndx = 0
    if not names.endswith(b"\0"):
        names += b"\0"
    # A name offset past the end of the input's name table would now read the names added
    # below (a garbage table could "contain" .ring1.patches): such a section gets no name.
    for entry in shdrs:
        if struct.unpack_from("<I", entry)[0] >= len(names):
            struct.pack_into("<I", entry, 0, 0)
    if not strndx:
        strndx = len(shdrs)
        shdrs.append(bytearray(40))
        struct.pack_into("<I", shdrs[strndx], 0, len(names))
        names += b".shstrtab\0"
    if len(shdrs) + 2 >= SHN_LORESERVE:
        raise InputError(f"{image.path}: too many sections ({len(shdrs)}) to add two")
    for name, off, size in ((CODE_SECTION, code_off, len(code)), (record.SECTION, rec_off, len(rec))):
        entry = bytearray(40)     # not allocated: the patch segment loads the code, the record is data
        struct.pack_into("<10I", entry, 0, len(names), SHT_PROGBITS, 0, 0, off, size, 0, 0, ALIGN, 0)
        names += name.encode() + b"\0"
        shdrs.append(entry)
    names_off = len(out)
    out += names
    struct.pack_into("<10I", shdrs[strndx], 0, struct.unpack_from("<I", shdrs[strndx])[0], SHT_STRTAB, 0, 0,
                     names_off, len(names), 0, 0, 1, 0)
    shoff = _align(out, 4)
    for entry in shdrs:
        out += entry
    struct.pack_into("<I", out, 32, shoff)
    struct.pack_into("<HHH", out, 46, 40, len(shdrs), strndx)

    # The patch segment: PT_GNU_STACK's (or a PT_NULL's) entry, else a table of its own.
    load = struct.pack("<8I", PT_LOAD, code_off, layout.PATCH_BASE, layout.PATCH_BASE, len(code), len(code),
                       PF_R | PF_X, ALIGN)
    types = [struct.unpack_from("<I", out, t.phoff + i * 32)[0] for i in range(t.phnum)]
    for kind in (PT_GNU_STACK, PT_NULL):
        if kind in types:
            at = t.phoff + types.index(kind) * 32
            out[at:at + 32] = load
            return bytes(out)
    if t.phnum + 1 >= PN_XNUM:
        raise InputError(f"{image.path}: too many program headers ({t.phnum}) to add one")
    phoff = _align(out, 4)
    out += out[t.phoff:t.phoff + t.phnum * 32] + load
    struct.pack_into("<I", out, 28, phoff)
    struct.pack_into("<H", out, 44, t.phnum + 1)
    if t.phnum == 0:
        struct.pack_into("<H", out, 42, 32)
    return bytes(out)


def patch_segment(image: elf.KernelImage) -> elf.Segment | None:
    """The PT_LOAD `bt patch` added (its bytes are `.ring1.patchcode`, at PATCH_BASE): the
    loader leaves it to the patch manager. None for a kernel without one."""
    code = next((s for s in image.sections if s.name == CODE_SECTION), None)
    if code is None or not any(s.name == record.SECTION for s in image.sections):
        return None
    return next((g for g in image.segments if g.vaddr == layout.PATCH_BASE and g.offset == code.offset), None)


def original_image(image: elf.KernelImage, rec: record.Record) -> elf.KernelImage:
    """The kernel as it was before `bt patch`: every recorded window's original bytes put
    back. The patch manager scans this, not the patched file, whose JMPs into patch memory
    would hide from the descent the code that follows each window."""
    raw = bytearray(image.raw)
    for patch in rec.patches:
        want = head(patch)
        for seg in image.segments:
            at = seg.offset + patch.start - seg.vaddr
            # The segment whose bytes hold the patch (a record is input: it may point anywhere).
            if (seg.vaddr <= patch.start and patch.end <= seg.vaddr + seg.filesz
                    and raw[at:at + len(want)] == want):
                raw[at:at + len(patch.original)] = patch.original
                break
    data = bytes(raw)
    return dataclasses.replace(image, raw=data,
                               segments=tuple(dataclasses.replace(g, raw=data) for g in image.segments))


def read_record(image: elf.KernelImage) -> record.Record | None:
    """The patch record of a statically patched kernel, None for an ordinary one."""
    sections = {s.name: s for s in image.sections}
    if record.SECTION not in sections:
        return None
    code_sec = sections.get(CODE_SECTION)
    code = bytes(image.section_bytes(code_sec)) if code_sec is not None else b""
    return record.load(bytes(image.section_bytes(sections[record.SECTION])), code)
