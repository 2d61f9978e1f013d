"""Loading x86 kernel ELF files (ELF32 i386 and ELF64 x86-64) with LIEF.

`load(path)` returns a `KernelImage`: header facts, loadable segments with their
bytes, sections, symbols and a `symbolize` helper. LIEF reads the headers and the
symbol table; segment and section bytes are sliced from the file read once, so a
truncated file is noticed (a segment whose bytes lie past the end of the file) and
no LIEF buffer copies are made for a large vmlinux.

Every failure is an `ElfError` with a one-line reason: missing file, not an ELF,
truncated or corrupt, not x86, no executable code. LIEF's own logging (it prints
to stderr on bad input) is silenced while it parses.
"""

from __future__ import annotations

import bisect
import hashlib
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from bt.errors import ElfError
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
    data: bytes = field(repr=False)

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
    """Bits and e_machine from the raw identification bytes, before LIEF sees the file."""
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
    return bits, machine


def load(path: str | Path) -> KernelImage:
    """Load a kernel ELF. Raises `ElfError` (one line) for anything ring1 cannot scan or run."""
    import lief

    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ElfError(name, "no such file") from None
    except OSError as err:
        raise ElfError(name, f"cannot read: {err.strerror or err}") from err
    bits, machine = _check_header(name, raw)

    # LIEF logs to stderr on bad input, and its enums warn about values they do not know
    # (a corrupt p_type): both are silenced, the caller gets one ElfError line instead.
    with lief.logging.level_scope(lief.logging.LEVEL.OFF), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            # Only headers and symbols are needed: relocations, notes and the overlay of a
            # 60 MB vmlinux would double LIEF's memory for nothing.
            config = lief.ELF.ParserConfig()
            config.parse_relocations = False
            config.parse_notes = False
            config.parse_overlay = False
            config.parse_symbol_versions = False
            binary = lief.ELF.parse(name, config)
        except Exception as err:  # LIEF raises assorted types on corrupt input
            raise ElfError(name, f"corrupt ELF ({err})") from err
        if binary is None:
            raise ElfError(name, "corrupt ELF (LIEF could not parse it)")
        segments = _segments(name, binary, raw)
        sections = _sections(name, binary, raw)
        symbols = _symbols(binary)
        entry = int(binary.entrypoint)

    if not any(s.executable and s.filesz for s in segments) and not any(
            s.executable and s.has_bytes for s in sections):
        raise ElfError(name, "no executable code (no PF_X segment or SHF_EXECINSTR section with bytes)")
    return KernelImage(path=name, bits=bits, machine=_MACHINES[machine], entry=entry, segments=segments,
                       sections=sections, symbols=symbols, sha256=hashlib.sha256(raw).hexdigest(), raw=raw)


def _int(value: object) -> int:
    """A LIEF enum or flag set as an int (LIEF hands back a bare int for values it does not know)."""
    return int(getattr(value, "value", value))  # type: ignore[call-overload]


def _segments(path: str, binary: object, raw: bytes) -> tuple[Segment, ...]:
    import lief

    out = []
    for seg in binary.segments:  # type: ignore[attr-defined]
        if seg.type != lief.ELF.Segment.TYPE.LOAD:
            continue
        off, filesz = int(seg.file_offset), int(seg.physical_size)
        if off + filesz > len(raw):
            raise ElfError(path, f"truncated: segment at {int(seg.virtual_address):#x} needs file bytes "
                                 f"{off:#x}..{off + filesz:#x}, file has {len(raw):#x}")
        out.append(Segment(vaddr=int(seg.virtual_address), paddr=int(seg.physical_address), offset=off,
                           filesz=filesz, memsz=int(seg.virtual_size), flags=_int(seg.flags),
                           data=raw[off:off + filesz]))
    return tuple(out)


def _sections(path: str, binary: object, raw: bytes) -> tuple[Section, ...]:
    out = []
    for sec in binary.sections:  # type: ignore[attr-defined]
        s = Section(name=str(sec.name), address=int(sec.virtual_address), offset=int(sec.offset),
                    size=int(sec.size), flags=_int(sec.flags), type=_int(sec.type))
        if s.has_bytes and s.flags & SHF_ALLOC and s.offset + s.size > len(raw):
            raise ElfError(path, f"truncated: section {s.name} needs file bytes up to "
                                 f"{s.offset + s.size:#x}, file has {len(raw):#x}")
        out.append(s)
    return tuple(out)


def _symbols(binary: object) -> tuple[Symbol, ...]:
    import lief

    func, notype, obj = lief.ELF.Symbol.TYPE.FUNC, lief.ELF.Symbol.TYPE.NOTYPE, lief.ELF.Symbol.TYPE.OBJECT
    local = lief.ELF.Symbol.BINDING.LOCAL
    seen: set[tuple[str, int]] = set()
    out = []
    for table in (binary.symtab_symbols, binary.dynamic_symbols):  # type: ignore[attr-defined]
        for sym in table:
            kind = sym.type
            if kind not in (func, notype, obj) or not sym.name or sym.shndx in (0, SHN_ABS):
                continue  # section/file symbols, undefined and absolute ones (not code addresses)
            key = (sym.name, int(sym.value))
            if key in seen:
                continue
            seen.add(key)
            out.append(Symbol(name=sym.name, address=int(sym.value), size=int(sym.size),
                              is_function=kind == func, is_global=sym.binding != local))
    # Sort by address; at equal addresses functions and larger symbols last, so symbol_at picks them.
    out.sort(key=lambda s: (s.address, s.is_function, s.is_global, s.size))
    return tuple(out)
