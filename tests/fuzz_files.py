"""The file mutator of tests/fuzz.py: seeded, so a case is its (seed, number) alone.

A case starts from a sample kernel, patchcases.elf or a sample as `bt patch` writes it
(its patch record is input too), and applies one to three mutations: truncation, byte
flips, an ELF, program or section header field set to a value that matters (0, the file's
size, 2^31, the VMM area...), overlapping or giant segments, a rewritten multiboot header
(the a.out kludge), string tables that are not UTF-8, a foreign file, appended bytes, or
digits of the patch record rewritten in place.
"""

from __future__ import annotations

import functools
import random
import struct
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = [*sorted(ROOT.glob("samples/*/*.elf")), ROOT / "tests/data/scan/patchcases.elf"]
ELF_FIELDS = {  # ELF32 header: name -> (offset, struct format)
    "e_type": (16, "<H"), "e_machine": (18, "<H"), "e_version": (20, "<I"), "e_entry": (24, "<I"),
    "e_phoff": (28, "<I"), "e_shoff": (32, "<I"), "e_flags": (36, "<I"), "e_ehsize": (40, "<H"),
    "e_phentsize": (42, "<H"), "e_phnum": (44, "<H"), "e_shentsize": (46, "<H"), "e_shnum": (48, "<H"),
    "e_shstrndx": (50, "<H"),
}
PHDR_FIELDS = ("p_type", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_flags", "p_align")
SHDR_FIELDS = ("sh_name", "sh_type", "sh_flags", "sh_addr", "sh_offset", "sh_size", "sh_link", "sh_info",
               "sh_addralign", "sh_entsize")
INTERESTING = (0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0xFFF, 0x1000, 0x9000, 0xA0000, 0xFFFF, 0x10000,
               0x100000, 0x3FE0000, 0x4000000, 0x7FFFFFFF, 0x80000000, 0xC0000000, 0xFFC00000, 0xFFE00000,
               0xFFFFF000, 0xFFFFFFF0, 0xFFFFFFFF)
MB_MAGIC = 0x1BADB002


def _u(data: bytearray, at: int, fmt: str) -> int | None:
    if at < 0 or at + struct.calcsize(fmt) > len(data):
        return None
    return int(struct.unpack_from(fmt, data, at)[0])


def _put(data: bytearray, at: int, fmt: str, value: int) -> None:
    size = struct.calcsize(fmt)
    if 0 <= at and at + size <= len(data):
        struct.pack_into(fmt, data, at, value & ((1 << (8 * size)) - 1))


def _value(rng: random.Random, data: bytearray, old: int | None) -> int:
    pick = rng.random()
    if pick < 0.5:
        return rng.choice(INTERESTING)
    if pick < 0.65:
        return len(data) + rng.choice((-1, 0, 1, 16, -16))
    if pick < 0.85 and old is not None:
        return old + rng.choice((-1, 1, -16, 16, 0x1000, -0x1000, 0x100000))
    return rng.getrandbits(32)


def _phdr_at(data: bytearray, i: int) -> int | None:
    phoff, phentsize = _u(data, 28, "<I"), _u(data, 42, "<H")
    return None if phoff is None or phentsize is None else phoff + i * phentsize


def _shdr_at(data: bytearray, i: int) -> int | None:
    shoff, shentsize = _u(data, 32, "<I"), _u(data, 46, "<H")
    return None if shoff is None or shentsize is None else shoff + i * shentsize


def m_truncate(rng: random.Random, data: bytearray) -> str:
    cut = rng.choice((rng.randrange(0, min(len(data), 256) or 1), rng.randrange(0, len(data) or 1),
                      len(data) - rng.randrange(1, 64)))
    del data[max(0, cut):]
    return f"truncate to {len(data)}"


def m_flip(rng: random.Random, data: bytearray) -> str:
    if not data:
        return "flip (empty)"
    where = []
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(min(len(data), 512)) if rng.random() < 0.5 else rng.randrange(len(data))
        data[at] = rng.getrandbits(8)
        where.append(at)
    return f"flip bytes at {where}"


def m_elf_field(rng: random.Random, data: bytearray) -> str:
    name = rng.choice(list(ELF_FIELDS))
    at, fmt = ELF_FIELDS[name]
    value = _value(rng, data, _u(data, at, fmt))
    _put(data, at, fmt, value)
    return f"{name} = {value:#x}"


def m_phdr_field(rng: random.Random, data: bytearray) -> str:
    phnum = _u(data, 44, "<H") or 1
    i = rng.randrange(min(phnum, 16))
    k = rng.randrange(len(PHDR_FIELDS))
    at = _phdr_at(data, i)
    if at is None:
        return "phdr (no header)"
    at += 4 * k
    value = _value(rng, data, _u(data, at, "<I"))
    _put(data, at, "<I", value)
    return f"phdr[{i}].{PHDR_FIELDS[k]} = {value:#x}"


def m_shdr_field(rng: random.Random, data: bytearray) -> str:
    shnum = _u(data, 48, "<H") or 1
    i = rng.randrange(min(shnum, 64))
    k = rng.randrange(len(SHDR_FIELDS))
    at = _shdr_at(data, i)
    if at is None:
        return "shdr (no header)"
    at += 4 * k
    value = _value(rng, data, _u(data, at, "<I"))
    _put(data, at, "<I", value)
    return f"shdr[{i}].{SHDR_FIELDS[k]} = {value:#x}"


def m_overlap(rng: random.Random, data: bytearray) -> str:
    """Copy one program header over another: overlapping or duplicated segments."""
    phnum = _u(data, 44, "<H") or 0
    if phnum < 2:
        return "overlap (one phdr)"
    a, b = rng.sample(range(min(phnum, 16)), 2)
    pa, pb = _phdr_at(data, a), _phdr_at(data, b)
    if pa is None or pb is None or max(pa, pb) + 32 > len(data):
        return "overlap (out of file)"
    data[pb:pb + 32] = data[pa:pa + 32]
    if rng.random() < 0.5:   # shift the copy a little: a partial overlap
        _put(data, pb + 8, "<I", (_u(data, pb + 8, "<I") or 0) + rng.choice((0x10, 0x800, 0x1000)))
    return f"phdr[{b}] = phdr[{a}] (overlap)"


def m_giant(rng: random.Random, data: bytearray) -> str:
    """A huge p_memsz or p_filesz on a PT_LOAD."""
    phnum = _u(data, 44, "<H") or 1
    i = rng.randrange(min(phnum, 16))
    at = _phdr_at(data, i)
    if at is None:
        return "giant (no header)"
    which = rng.choice((16, 20))
    value = rng.choice((0x7FFFFFFF, 0x80000000, 0xF0000000, 0xFFFFFFFF, 0x3F00000, 0x10000000))
    _put(data, at + which, "<I", value)
    return f"phdr[{i}].{'p_filesz' if which == 16 else 'p_memsz'} = {value:#x}"


def m_multiboot(rng: random.Random, data: bytearray) -> str:
    """Rewrite the multiboot header: flags (the a.out kludge), address fields, checksum kept."""
    at = data.find(struct.pack("<I", MB_MAGIC), 0, 8192)
    if at < 0 or at + 32 > len(data):
        return "multiboot (none)"
    flags = rng.choice((0x10003, 0x10000, 0x3, 0x7, 0x8, 0x10002, rng.getrandbits(32)))
    _put(data, at + 4, "<I", flags)
    _put(data, at + 8, "<I", -(MB_MAGIC + flags))
    for k in range(5):
        if rng.random() < 0.5:
            _put(data, at + 12 + 4 * k, "<I", _value(rng, data, _u(data, at + 12 + 4 * k, "<I")))
    return f"multiboot flags {flags:#x} and address fields"


def m_symbol_names(rng: random.Random, data: bytearray) -> str:
    """Bytes that are not UTF-8 in the string tables (symbol and section names)."""
    shnum = _u(data, 48, "<H") or 0
    for i in range(min(shnum, 64)):
        at = _shdr_at(data, i)
        if at is None or _u(data, at + 4, "<I") != 3:      # SHT_STRTAB
            continue
        off, size = _u(data, at + 16, "<I") or 0, _u(data, at + 20, "<I") or 0
        if size > 2 and off + size <= len(data):
            for _ in range(rng.randint(1, 6)):
                pos = off + 1 + rng.randrange(size - 2)
                if data[pos]:
                    data[pos] = rng.choice((0x80, 0xC3, 0xE2, 0xFF, 0xFE))
    return "non-UTF-8 bytes in string tables"


def m_foreign(rng: random.Random, data: bytearray) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        data[:] = rng.randbytes(rng.randrange(0, 4096))
        return "random bytes"
    if kind == 1:
        data[:] = b"#!/bin/sh\necho not a kernel\n"
        return "a text file"
    if kind == 2:
        data[:] = b"\x7fELF" + rng.randbytes(rng.randrange(0, 200))
        return "ELF magic and random bytes"
    if kind == 3:
        _put(data, 18, "<H", rng.choice((40, 183, 62, 8, 0)))
        return "foreign e_machine"
    data[4] = rng.choice((0, 2, 3))
    return f"EI_CLASS {data[4]}"


def m_append(rng: random.Random, data: bytearray) -> str:
    n = rng.choice((1, 100, 4096, 65536))
    data += rng.randbytes(n)
    return f"append {n} random bytes"


def m_record(rng: random.Random, data: bytearray) -> str:
    """Rewrite digits of a `bt patch` record in place (same length, still JSON): addresses,
    sizes and kinds a forged record could claim."""
    at = data.find(b'{"version":')
    if at < 0:
        return "record (none)"
    end = data.find(b"\0", at)
    end = len(data) if end < 0 else end
    runs = [i for i in range(at, end) if chr(data[i]).isdigit()]
    for _ in range(rng.randint(1, 4)):
        if runs:
            data[rng.choice(runs)] = ord(str(rng.randrange(10)))
    if rng.random() < 0.2:
        kind = data.find(rng.choice((b'"jmp"', b'"int3"', b'"cli"', b'"eax"')), at, end)
        if kind >= 0:
            data[kind + 1] = ord("x")
    return "digits of the patch record"


MUTATIONS: tuple[tuple[Callable[[random.Random, bytearray], str], int], ...] = (
    (m_flip, 6), (m_elf_field, 6), (m_phdr_field, 8), (m_shdr_field, 6), (m_truncate, 3), (m_overlap, 2),
    (m_giant, 2), (m_multiboot, 3), (m_symbol_names, 2), (m_foreign, 1), (m_append, 1), (m_record, 3),
)
#: Samples also fuzzed as `bt patch` writes them (their patch record is input too).
PATCHED = ("hello", "zoo", "usermode")


@functools.cache
def bases() -> tuple[tuple[str, bytes], ...]:
    """The kernels cases start from: the samples, patchcases.elf and patched samples."""
    from patchmgr import registry
    from runtime.staticpatch import patch_kernel

    out = [(p.name, p.read_bytes()) for p in SAMPLES]
    rules = registry.load()
    for name in PATCHED:
        out.append((f"{name}.patched.elf", patch_kernel(ROOT / f"samples/{name}/{name}.elf", rules).data))
    return tuple(out)


def make_case(seed: int, number: int) -> tuple[str, bytes, list[str]]:
    """The case `number` of `seed`: which kernel it starts from, its bytes, what was done."""
    rng = random.Random(f"ring1-fuzz/{seed}/{number}")
    name, raw = rng.choice(bases())
    data = bytearray(raw)
    what = []
    funcs, weights = zip(*MUTATIONS, strict=True)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        what.append(rng.choices(funcs, weights)[0](rng, data))
    return name, bytes(data), what


