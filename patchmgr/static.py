"""`bt patch IN.elf -o OUT.elf`: patch every scanned site ahead of time (PATM did it at run
time; the static form makes the patched kernel an artefact one can inspect with objdump).

The output is the input with

* every patched window rewritten (the 5-byte JMP or the INT3) in its segment's bytes;
* the patch code at bt.layout.PATCH_BASE, in a PT_LOAD segment (R+X). That program header
  reuses the input's PT_GNU_STACK entry, which no loader of a kernel reads: adding a
  program header would make LIEF move the header table into a new PT_LOAD placed after
  the kernel's last segment, which is exactly where kernels allocate from their `end`
  symbol upward;
* the section `.ring1.patchcode` holding those bytes and the non-allocated section
  `.ring1.patches` holding the record (patchmgr/record.py) that `bt run` reads back.

The file is written to a temporary name beside OUT and renamed over it, so OUT is never a
half-written ELF.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bt import elf, layout, scan
from bt.errors import ElfError, InputError, PatchError
from patchmgr import record
from patchmgr.codemap import ScanCodeMap
from patchmgr.manager import PatchConfig, PatchManager
from patchmgr.patch import Patch, Refusal
from patchmgr.registry import RuleSet

CODE_SECTION = ".ring1.patchcode"
PT_LOAD, PT_GNU_STACK = 1, 0x6474E551
PF_X, PF_R = 1, 4


class ImageMemory:
    """Guest memory over an ELF's loadable segments plus the patch memory being filled."""

    def __init__(self, image: elf.KernelImage) -> None:
        self.segments = [(s.vaddr, bytearray(s.data)) for s in image.segments if s.filesz]
        self.patch = bytearray()

    def _locate(self, address: int, size: int) -> tuple[bytearray, int]:
        if layout.PATCH_BASE <= address < layout.PATCH_BASE + layout.PATCH_SIZE:
            off = address - layout.PATCH_BASE
            if len(self.patch) < off + size:
                self.patch.extend(bytes(off + size - len(self.patch)))
            return self.patch, off
        for base, data in self.segments:
            if base <= address and address + size <= base + len(data):
                return data, address - base
        raise PatchError(f"{address:#x}+{size}: not in a loadable segment's file bytes")

    def read(self, address: int, size: int) -> bytes:
        """Up to `size` bytes: fewer at the end of a segment (the decoder asks for 16 bytes
        at a site whatever its length, and the last instruction may end a segment)."""
        if not layout.PATCH_BASE <= address < layout.PATCH_BASE + layout.PATCH_SIZE:
            for base, data in self.segments:
                if base <= address < base + len(data):
                    return bytes(data[address - base:address - base + size])
        data, off = self._locate(address, size)
        return bytes(data[off:off + size])

    def write(self, address: int, data: bytes) -> None:
        buf, off = self._locate(address, len(data))
        buf[off:off + len(data)] = data


@dataclass(frozen=True)
class StaticResult:
    patches: tuple[Patch, ...]
    refusals: tuple[Refusal, ...]
    notes: dict[int, str]
    sites: int
    patch_bytes: int


def patch_file(src: str | Path, dst: str | Path, rules: RuleSet) -> StaticResult:
    image = elf.load(src)
    if image.bits != 32:
        raise InputError(f"{src}: ring1 patches 32-bit kernels only")
    if any(s.vaddr < layout.VMM_BASE + layout.VMM_SIZE and s.vaddr + s.memsz > layout.VMM_BASE
           for s in image.segments):
        raise InputError(f"{src}: a segment already lies in the VMM area (patched twice?)")
    result = scan.scan(image)
    memory = ImageMemory(image)
    manager = PatchManager(PatchConfig(eager=True), memory, ScanCodeMap(result), rules)
    sites = [s.address for s in result.sites
             if s.reached and rules.handles(s.cls.name) and not user_code(image, s.address)]
    manager.patch_all(sites)
    patches = sorted(manager.patches.values(), key=lambda p: p.site)
    refusals = sorted(manager.refusals.values(), key=lambda r: r.site)
    rec = record.dump(patches, refusals, layout.PATCH_BASE, manager.patch_memory.top,
                      dict(manager.ctx.data_slots()))
    _write(Path(src), Path(dst), memory, bytes(memory.patch), rec)
    return StaticResult(tuple(patches), tuple(refusals), dict(manager.notes), len(sites), len(memory.patch))


def user_code(image: elf.KernelImage, address: int) -> bool:
    """Code the guest runs in ring 3 (the samples' `.user` sections): never patched, its
    sensitive instructions must fault as they would at CPL 3."""
    return any(s.name.startswith(".user") and s.address <= address < s.address + s.size
               for s in image.sections)


def _write(src: Path, dst: Path, memory: ImageMemory, code: bytes, rec: bytes) -> None:
    import lief

    lief.logging.disable()
    binary = lief.ELF.parse(str(src))
    if binary is None:
        raise ElfError(str(src), "LIEF could not parse it")
    stack = [s for s in binary.segments if s.type == lief.ELF.Segment.TYPE.GNU_STACK]
    if not stack:
        raise PatchError(f"{src}: no PT_GNU_STACK program header to carry the patch segment")
    for base, data in memory.segments:
        binary.patch_address(base, list(data))
    for name, content in ((CODE_SECTION, code), (record.SECTION, rec)):
        sec = lief.ELF.Section(name)
        sec.type = lief.ELF.Section.TYPE.PROGBITS
        sec.alignment = 16
        sec.content = list(content)  # type: ignore[assignment,unused-ignore]
        binary.add(sec, loaded=False)
    fd, tmp = tempfile.mkstemp(prefix=dst.name + ".", suffix=".tmp", dir=dst.parent or Path("."))
    os.close(fd)
    try:
        binary.write(tmp)
        _retarget_stack_header(Path(tmp), len(code))
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _retarget_stack_header(path: Path, size: int) -> None:
    """Turn the PT_GNU_STACK entry into PT_LOAD of `.ring1.patchcode` at PATCH_BASE."""
    raw = bytearray(path.read_bytes())
    phoff, = struct.unpack_from("<I", raw, 28)
    phentsize, phnum = struct.unpack_from("<HH", raw, 42)
    shoff, = struct.unpack_from("<I", raw, 32)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", raw, 46)
    str_off = struct.unpack_from("<I", raw, shoff + shstrndx * shentsize + 16)[0]
    offset = None
    for i in range(shnum):
        name, _t, _f, _a, off = struct.unpack_from("<IIIII", raw, shoff + i * shentsize)
        end = raw.index(b"\0", str_off + name)
        if raw[str_off + name:end].decode() == CODE_SECTION:
            offset = off
    if offset is None:
        raise PatchError(f"{path}: {CODE_SECTION} missing after writing")
    for i in range(phnum):
        at = phoff + i * phentsize
        if struct.unpack_from("<I", raw, at)[0] == PT_GNU_STACK:
            struct.pack_into("<IIIIIIII", raw, at, PT_LOAD, offset, layout.PATCH_BASE, layout.PATCH_BASE,
                             size, size, PF_R | PF_X, 16)
            path.write_bytes(bytes(raw))
            return
    raise PatchError(f"{path}: PT_GNU_STACK vanished while writing")


def original_image(image: elf.KernelImage, rec: record.Record) -> elf.KernelImage:
    """The kernel as it was before `bt patch`: every recorded window's original bytes put
    back. The patch manager scans this, not the patched file, whose JMPs into patch memory
    would hide from the descent the code that follows each window."""
    raw = bytearray(image.raw)
    for patch in rec.patches:
        for seg in image.segments:
            if seg.vaddr <= patch.start and patch.end <= seg.vaddr + seg.filesz:
                at = seg.offset + patch.start - seg.vaddr
                raw[at:at + len(patch.original)] = patch.original
                break
    return dataclasses.replace(image, raw=bytes(raw))


def read_record(image: elf.KernelImage) -> record.Record | None:
    """The patch record of a statically patched kernel, None for an ordinary one."""
    sections = {s.name: s for s in image.sections}
    if record.SECTION not in sections:
        return None
    code_sec = sections.get(CODE_SECTION)
    code = bytes(image.section_bytes(code_sec)) if code_sec is not None else b""
    return record.load(bytes(image.section_bytes(sections[record.SECTION])), code)
