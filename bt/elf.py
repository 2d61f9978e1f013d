"""Loading x86 kernel ELF files (ELF32 i386 and ELF64 x86-64).

`load(path)` returns a `KernelImage`: header facts, loadable segments with their
bytes, sections, symbols and a `symbolize` helper. The file is read once; headers,
sections and symbols are read from it here, after each table was checked to lie
inside the file (System V gABI, "Object Files"), and segment and section bytes are
slices of it. A general ELF library was used before and was dropped for this: on a
hostile file it trusted the tables' sizes (a symbol table of sh_entsize 1 over 60 MB
made it allocate 7 GB) or reported a segment cut to the file where the header says
more (issue 12). What is read here is bounded by the file's size: at most
`MAX_SYMBOLS` symbols are kept.

Every failure is an `ElfError` with a one-line reason: missing file, not an ELF,
truncated or corrupt, not x86, no executable code.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from bt.errors import ElfError
from bt.infile import Unreadable, read_input
from bt.symbols import Function, FunctionMap

ELF_MAGIC = b"\x7fELF"
_MACHINES = {3: "i386", 62: "x86-64"}            # e_machine: EM_386, EM_X86_64
_FOREIGN = {40: "ARM", 183: "AArch64", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64", 243: "RISC-V",
            2: "SPARC", 22: "s390", 50: "IA-64"}
PF_X, PF_W, PF_R = 1, 2, 4
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
SHT_PROGBITS, SHT_NOBITS = 1, 8
SHN_ABS = 0xFFF1


@dataclass(frozen=True)
class Segment:
    """A PT_LOAD program header and its file bytes (`data` is `filesz` long)."""

    vaddr: int
    paddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int          # PF_R | PF_W | PF_X
    raw: bytes = field(repr=False, compare=False)    # the whole file

    @property
    def data(self) -> bytes:
        """The segment's file bytes, sliced when asked: a hostile file's thousand program
        headers over the same 64 MiB would otherwise be a thousand copies at load."""
        return self.raw[self.offset:self.offset + self.filesz]

    @property
    def executable(self) -> bool:
        return bool(self.flags & PF_X)


@dataclass(frozen=True)
class Section:
    name: str
    address: int
    offset: int
    size: int
    flags: int          # SHF_* bits
    type: int           # SHT_* value

    @property
    def executable(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR) and bool(self.flags & SHF_ALLOC)

    @property
    def has_bytes(self) -> bool:
        return self.type != SHT_NOBITS and self.size > 0


@dataclass(frozen=True)
class Symbol:
    name: str
    address: int
    size: int
    is_function: bool
    is_global: bool


@dataclass(frozen=True)
class KernelImage:
    """A loaded kernel ELF. `raw` is the whole file (sections are views into it)."""

    path: str
    bits: int                       # 32 or 64
    machine: str                    # "i386" or "x86-64"
    entry: int
    segments: tuple[Segment, ...]
    sections: tuple[Section, ...]
    symbols: tuple[Symbol, ...]     # sorted by address
    sha256: str
    raw: bytes = field(repr=False, compare=False)
    _sym_addrs: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_sym_addrs", [s.address for s in self.symbols])

    @property
    def executable_sections(self) -> tuple[Section, ...]:
        """Sections of code. A file without section headers gets one pseudo-section per
        executable PT_LOAD segment (its file bytes), named "PT_LOAD@<vaddr>"."""
        found = tuple(s for s in self.sections if s.executable and s.has_bytes)
        if found:
            return found
        return tuple(Section(name=f"PT_LOAD@{g.vaddr:#x}", address=g.vaddr, offset=g.offset, size=g.filesz,
                             flags=SHF_ALLOC | SHF_EXECINSTR, type=SHT_PROGBITS)
                     for g in self.segments if g.executable and g.filesz)

    def section_bytes(self, section: Section) -> memoryview:
        return memoryview(self.raw)[section.offset:section.offset + section.size]

    def read(self, addr: int, size: int) -> bytes:
        """Up to `size` file bytes at virtual address `addr`, cut at the end of the allocated
        section holding it (b"" when none does)."""
        for s in (*self.sections, *self.executable_sections):
            if s.address <= addr < s.address + s.size and s.flags & SHF_ALLOC and s.has_bytes:
                start = s.offset + addr - s.address
                return self.raw[start:min(start + size, s.offset + s.size)]
        return b""

    def symbol_at(self, addr: int) -> Symbol | None:
        """The nearest symbol at or below `addr` (as objdump names `<sym+off>`), or None."""
        i = bisect.bisect_right(self._sym_addrs, addr) - 1
        return self.symbols[i] if i >= 0 else None

    @cached_property
    def functions(self) -> FunctionMap:
        """The function symbols, for naming addresses the way every report does (bt/symbols.py)."""
        return FunctionMap(Function(s.name, s.address, s.size) for s in self.symbols if s.is_function)

    def describe(self, addr: int) -> str:
        """`function+0xoff`, or the hex address outside every function (bt/symbols.py)."""
        return self.functions.describe(addr)

    def symbolize(self, addr: int) -> str:
        """"name+0x12" for `addr` ("name" at offset 0), or the bare hex address with no symbol below."""
        sym = self.symbol_at(addr)
        if sym is None:
            return f"{addr:#x}"
        off = addr - sym.address
        return f"{sym.name}+{off:#x}" if off else sym.name


def _check_header(path: str, raw: bytes) -> tuple[int, int]:
    """Bits and e_machine from the raw identification bytes."""
    if len(raw) < 4 or raw[:4] != ELF_MAGIC:
        raise ElfError(path, "not an ELF file (no \\x7fELF magic)")
    if len(raw) < 52:
        raise ElfError(path, f"truncated ELF header ({len(raw)} bytes)")
    ei_class, ei_data = raw[4], raw[5]
    if ei_class not in (1, 2):
        raise ElfError(path, f"corrupt ELF header (EI_CLASS {ei_class})")
    if ei_data != 1:
        raise ElfError(path, "big-endian ELF: not x86")
    machine = int.from_bytes(raw[18:20], "little")
    if machine not in _MACHINES:
        name = _FOREIGN.get(machine, f"e_machine {machine}")
        raise ElfError(path, f"not an x86 ELF ({name}); ring1 needs i386 or x86-64")
    bits = 32 if ei_class == 1 else 64
    if (bits == 32) != (machine == 3):
        kind = "x32 (ELF32 x86-64)" if bits == 32 else "ELF64 i386"
        raise ElfError(path, f"{kind} is not a kernel ring1 can load: need ELF32 i386 or ELF64 x86-64")
    if bits == 64 and len(raw) < 64:
        raise ElfError(path, f"truncated ELF header ({len(raw)} bytes)")
    return bits, machine


@dataclass(frozen=True)
class Tables:
    """Where the ELF header puts the program and section header tables (ELF32/64 alike)."""

    phoff: int
    phentsize: int
    phnum: int
    shoff: int
    shentsize: int
    shnum: int
    shstrndx: int

    @classmethod
    def of(cls, raw: bytes, bits: int) -> Tables:
        if bits == 32:
            phoff, shoff = struct.unpack_from("<II", raw, 28)
            rest = struct.unpack_from("<6H", raw, 40)
        else:
            phoff, shoff = struct.unpack_from("<QQ", raw, 32)
            rest = struct.unpack_from("<6H", raw, 52)
        _ehsize, phentsize, phnum, shentsize, shnum, shstrndx = rest
        return cls(phoff, phentsize, phnum, shoff, shentsize, shnum, shstrndx)


PHENT = {32: 32, 64: 56}    # sizeof(Elf32_Phdr), sizeof(Elf64_Phdr)
SHENT = {32: 40, 64: 64}    # sizeof(Elf32_Shdr), sizeof(Elf64_Shdr)


def sound_sections(t: Tables, size: int, bits: int) -> bool:
    """A section header table ring1 reads: inside the file, entries of the standard size, a
    name table index inside it. (Extended numbering, e_shnum 0 with the count in entry 0,
    is not read: a kernel with 65,280 sections is not one ring1 has met.)"""
    return (t.shentsize == SHENT[bits] and t.shoff != 0 and 0 < t.shnum and t.shstrndx < t.shnum
            and t.shoff + t.shnum * t.shentsize <= size)


def _check_tables(path: str, raw: bytes, bits: int) -> None:
    """The program header table is what loads a kernel: it must lie inside the file with
    entries of the standard size, or the file is refused. (A section header table that does
    not is ignored, `sound_sections`: loaders never read sections.)"""
    t = Tables.of(raw, bits)
    if t.phnum:
        if t.phentsize != PHENT[bits]:
            raise ElfError(path, f"corrupt program header table (e_phentsize {t.phentsize}, "
                                 f"ELF{bits} needs {PHENT[bits]})")
        if t.phoff + t.phnum * t.phentsize > len(raw):
            raise ElfError(path, f"truncated: {t.phnum} program headers at offset {t.phoff:#x} run past "
                                 f"the end of the file ({len(raw):#x} bytes)")


def load(path: str | Path, data: bytes | None = None) -> KernelImage:
    """Load a kernel ELF (`data`: its bytes, if the caller has read them already). Raises
    `ElfError` (one line) for anything ring1 cannot scan or run."""
    name = str(path)
    if data is not None:
        raw = data
    else:
        try:
            raw = read_input(path)
        except Unreadable as err:
            raise ElfError(name, str(err)) from None
    bits, machine = _check_header(name, raw)
    _check_tables(name, raw, bits)
    entry = struct.unpack_from("<I" if bits == 32 else "<Q", raw, 24)[0]
    segments = _segments(name, raw, bits)
    headers = _section_headers(raw, bits)
    sections = _sections(name, raw, headers, Tables.of(raw, bits).shstrndx)
    symbols = _symbols(name, raw, bits, headers)

    if not any(s.executable and s.filesz for s in segments) and not any(
            s.executable and s.has_bytes for s in sections):
        raise ElfError(name, "no executable code (no PF_X segment or SHF_EXECINSTR section with bytes)")
    return KernelImage(path=name, bits=bits, machine=_MACHINES[machine], entry=entry, segments=segments,
                       sections=sections, symbols=symbols, sha256=hashlib.sha256(raw).hexdigest(), raw=raw)


def text(name: bytes) -> str:
    """A symbol or section name as text: bytes that are not UTF-8 are shown as \\xNN
    escapes (JSON and the terminal need text)."""
    return name.decode("utf-8", "backslashreplace")


def _name(table: bytes, at: int) -> str:
    """The NUL-terminated name at `at` in a string table ("" outside it)."""
    if at >= len(table):
        return ""
    end = table.find(b"\0", at)
    return text(table[at:end if end >= 0 else len(table)])


PT_LOAD = 1


def _segments(path: str, raw: bytes, bits: int) -> tuple[Segment, ...]:
    """The PT_LOAD entries. A segment whose file bytes run past the end of the file is a
    truncated file, not a shorter segment."""
    t = Tables.of(raw, bits)
    out = []
    for i in range(t.phnum):
        at = t.phoff + i * t.phentsize
        if bits == 32:
            kind, off, vaddr, paddr, filesz, memsz, flags, _align = struct.unpack_from("<8I", raw, at)
        else:
            kind, flags, off, vaddr, paddr, filesz, memsz, _align = struct.unpack_from("<IIQQQQQQ", raw, at)
        if kind != PT_LOAD:
            continue
        if off + filesz > len(raw):
            raise ElfError(path, f"truncated: segment at {vaddr:#x} needs file bytes "
                                 f"{off:#x}..{off + filesz:#x}, file has {len(raw):#x}")
        out.append(Segment(vaddr=vaddr, paddr=paddr, offset=off, filesz=filesz, memsz=memsz, flags=flags,
                           raw=raw))
    return tuple(out)


@dataclass(frozen=True)
class _Shdr:
    name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


def _section_headers(raw: bytes, bits: int) -> list[_Shdr]:
    t = Tables.of(raw, bits)
    if not sound_sections(t, len(raw), bits):
        return []
    fmt = "<10I" if bits == 32 else "<IIQQQQIIQQ"
    out = []
    for i in range(t.shnum):
        name, kind, flags, addr, off, size, link, _info, _align, entsize = struct.unpack_from(
            fmt, raw, t.shoff + i * t.shentsize)
        out.append(_Shdr(name, kind, flags, addr, off, size, link, entsize))
    return out


def _table(raw: bytes, h: _Shdr) -> bytes:
    """A section's bytes, or b"" for one that does not lie inside the file."""
    return raw[h.offset:h.offset + h.size] if h.type != SHT_NOBITS and h.offset + h.size <= len(raw) else b""


def _sections(path: str, raw: bytes, headers: list[_Shdr], shstrndx: int) -> tuple[Section, ...]:
    """The section headers (`sound_sections` found the table sound, or there is none); names
    from the section name table."""
    if not headers:
        return ()
    names = _table(raw, headers[shstrndx])
    out = []
    for h in headers:
        s = Section(name=_name(names, h.name), address=h.addr, offset=h.offset, size=h.size, flags=h.flags,
                    type=h.type)
        if s.has_bytes and s.flags & SHF_ALLOC and s.offset + s.size > len(raw):
            raise ElfError(path, f"truncated: section {s.name} needs file bytes up to "
                                 f"{s.offset + s.size:#x}, file has {len(raw):#x}")
        out.append(s)
    return tuple(out)


SHT_SYMTAB, SHT_DYNSYM = 2, 11
STT_NOTYPE, STT_OBJECT, STT_FUNC = 0, 1, 2
STB_LOCAL = 0
#: The most symbols `load` keeps: a 64 MiB file could hold 4 million entries, each a Python
#: object of about 270 bytes. Linux kernels have a few hundred thousand.
MAX_SYMBOLS = 1 << 20
_SYM = {
    32: np.dtype([("name", "<u4"), ("value", "<u4"), ("size", "<u4"), ("info", "u1"), ("other", "u1"),
                  ("shndx", "<u2")]),
    64: np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"), ("value", "<u8"),
                  ("size", "<u8")]),
}


def _symbols(path: str, raw: bytes, bits: int, headers: list[_Shdr]) -> tuple[Symbol, ...]:
    """Functions, objects and untyped labels with a name and a section, from the symbol
    tables (.symtab, then .dynsym). A table whose entry size, extent or string table is not
    sound is skipped, as a table that is not there."""
    dtype = _SYM[bits]
    seen: set[tuple[str, int]] = set()
    out: list[Symbol] = []
    for kind in (SHT_SYMTAB, SHT_DYNSYM):
        for h in headers:
            if h.type != kind or h.entsize != dtype.itemsize or h.size % dtype.itemsize:
                continue
            table = _table(raw, h)
            strings = _table(raw, headers[h.link]) if h.link < len(headers) else b""
            if not table or not strings:
                continue
            syms = np.frombuffer(table, dtype=dtype)
            typ = syms["info"] & 0xF
            keep = (((typ == STT_NOTYPE) | (typ == STT_OBJECT) | (typ == STT_FUNC)) & (syms["name"] != 0)
                    & (syms["name"] < len(strings)) & (syms["shndx"] != 0) & (syms["shndx"] != SHN_ABS))
            for i in np.flatnonzero(keep).tolist():
                sym = syms[i]
                name = _name(strings, int(sym["name"]))
                key = (name, int(sym["value"]))
                if not name or key in seen:
                    continue        # section/file symbols, undefined and absolute ones: not code addresses
                if len(out) >= MAX_SYMBOLS:
                    raise ElfError(path, f"more than {MAX_SYMBOLS:,} symbols: ring1 reads at most that many")
                seen.add(key)
                out.append(Symbol(name=name, address=key[1], size=int(sym["size"]),
                                  is_function=int(sym["info"]) & 0xF == STT_FUNC,
                                  is_global=int(sym["info"]) >> 4 != STB_LOCAL))
    # Sort by address; at equal addresses functions and larger symbols last, so symbol_at picks them.
    out.sort(key=lambda s: (s.address, s.is_function, s.is_global, s.size))
    return tuple(out)
