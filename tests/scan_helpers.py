"""Helpers for the scanner tests: tiny ELFs built with GNU as/ld, and objdump's view of a file."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from requires import require_tool

from bt import isa


def build_elf(tmp_path: Path, source: str, bits: int = 32, name: str = "k", text: int = 0x100000,
              ld_flags: tuple[str, ...] = ()) -> Path:
    """Assemble and link an AT&T-syntax `source` into a static ELF at `text`."""
    require_tool("binutils")
    src, obj, elf = tmp_path / f"{name}.S", tmp_path / f"{name}.o", tmp_path / f"{name}.elf"
    src.write_text(source)
    subprocess.run(["as", f"--{bits}", str(src), "-o", str(obj)], check=True, capture_output=True)
    emul = ["-m", "elf_i386"] if bits == 32 else ["-m", "elf_x86_64"]
    subprocess.run(["ld", *emul, *ld_flags, "-Ttext", hex(text), "-e", "_start", str(obj), "-o", str(elf)],
                   check=True, capture_output=True)
    return elf


# ---- objdump as the reference -------------------------------------------------------------------

_PREFIXES = {"rep", "repz", "repe", "repnz", "repne", "lock", "data16", "data32", "addr16", "addr32",
             "notrack", "bnd", "cs", "ds", "es", "ss", "fs", "gs", "xacquire", "xrelease"}
_CR = re.compile(r"^cr\d+$")
_DR = re.compile(r"^dr\d+$")


def objdump_class(text: str) -> str | None:
    """The class of one objdump -M intel instruction, from its mnemonic and operand text only:
    an independent reading of the same table (`mnemonics` column), to compare the scanner with."""
    words = text.split(None, 1)
    while words and (words[0] in _PREFIXES or words[0].startswith("rex")):
        words = words[1].split(None, 1) if len(words) > 1 else []
    if not words:
        return None
    mnem = words[0]
    ops = words[1].split("#")[0].strip() if len(words) > 1 else ""
    args = [a.strip() for a in ops.split(",")] if ops else []
    if mnem == "mov" and len(args) == 2:
        dst, src = args
        for pattern, to, frm in ((_CR, "mov_to_cr", "mov_from_cr"), (_DR, "mov_to_dr", "mov_from_dr")):
            if pattern.match(dst):
                return to
            if pattern.match(src):
                return frm
        if dst == "ss":
            return "mov_to_sreg"
        if src in ("cs", "ss"):
            return "mov_from_sreg"
        return None
    if mnem == "push":
        return "push_sreg" if args in (["cs"], ["ss"]) else None
    if mnem == "pop":
        return "pop_sreg" if args == ["ss"] else None
    if mnem in ("jmp", "call"):
        # far forms: m16:32 / m16:64 operands, or a direct ptr16:32 ("0x8:0x100000")
        if "FWORD PTR" in ops or "TBYTE PTR" in ops or re.fullmatch(r"0x[0-9a-f]+:0x[0-9a-f]+", ops):
            return "far_jmp" if mnem == "jmp" else "far_call"
        return None
    for cls in isa.CLASSES:
        if mnem in cls.mnemonics and cls.name not in _OPERAND_ROWS:
            return cls.name
    return None


_OPERAND_ROWS = {"mov_from_cr", "mov_to_cr", "mov_from_dr", "mov_to_dr", "mov_to_sreg", "mov_from_sreg",
                 "push_sreg", "pop_sreg", "far_jmp", "far_call"}


_OPERAND_MNEMONICS = {"mov", "push", "pop", "jmp", "call"}
_CANDIDATES = isa.CANDIDATE_MNEMONICS | _PREFIXES


def _grep_patterns() -> list[str]:
    """Lines objdump_class may classify (a superset), for grep to pick out of millions."""
    plain = sorted(_CANDIDATES - _OPERAND_MNEMONICS - _PREFIXES)
    lead = "\t(" + "|".join(sorted(_PREFIXES)) + "|rex[.A-Za-z]*)? *"
    return [
        lead + "(" + "|".join(plain) + ")( |$)",
        lead + "mov +[^\t]*(cr[0-9]|dr[0-9]|cs|ss)",
        lead + "(push|pop) +(cs|ss)$",
        lead + "(jmp|call) +(FWORD|TBYTE|0x[0-9a-f]+:)",
    ]


def objdump_sites(path: Path) -> tuple[dict[int, tuple[str, str]], list[int]]:
    """What objdump -d -M intel prints with a class: address -> (class, text), and apart the
    addresses of its INT3s (a vmlinux has millions: padding). grep picks the candidate lines."""
    require_tool("binutils")
    sites: dict[int, tuple[str, str]] = {}
    int3: list[int] = []
    grep = ["grep", "-E"]
    for pattern in _grep_patterns():
        grep += ["-e", pattern]
    env = {**os.environ, "LC_ALL": "C"}     # GNU grep is ~40x slower in a UTF-8 locale
    dump_cmd = ["objdump", "-d", "-w", "-M", "intel", str(path)]
    with subprocess.Popen(dump_cmd, stdout=subprocess.PIPE, env=env) as dump, \
            subprocess.Popen(grep, stdin=dump.stdout, stdout=subprocess.PIPE, text=True, env=env) as picked:
        assert dump.stdout is not None and picked.stdout is not None
        dump.stdout.close()         # grep owns the pipe now
        for line in picked.stdout:
            parts = line.split("\t")
            if len(parts) < 3 or not parts[0].endswith(":"):
                continue
            text = parts[-1].strip()
            address = int(parts[0][:-1], 16)
            if text == "int3":
                int3.append(address)
                continue
            cls = objdump_class(text)
            if cls is not None:
                sites[address] = (cls, text)
    if dump.returncode != 0:
        raise AssertionError(f"objdump -d {path} failed ({dump.returncode})")
    return sites, int3
