"""The patch record: every patch of a statically patched ELF, as JSON, so that `bt run`
knows the exits, the patch<->guest maps and the original bytes without re-deriving them.

Stored in the non-allocated section `.ring1.patches` of the output ELF (the patch code
itself is the PT_LOAD segment at bt.layout.PATCH_BASE). Format version 2 (1 had the
same shape, but its patch code addresses the state block before it was split into a
protected and a patch-writable page, bt/layout.py; such a kernel must be patched again):

    {"version": 2, "patch_base": int, "patch_top": int, "rule_data": {key: size},
     "patches": [{"site", "kind", "start", "end", "original" (hex), "op",
                  "block": null | {"address", "size", "tail", "chunks": [[patch, guest, rule, entry]],
                                   "exits": [[at, resume, op|null]], "gate": null | int,
                                   "check": null | int, "gate_on": hex, "gate_off": hex}}],
     "refusals": [{"site", "reason", "op"}]}

A chunk's `entry` is 0 when it has no entry stub; `gate_on`/`gate_off` are the bytes the
patch manager writes at `gate` (patchmgr/patch.py `Block`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bt import isa, layout
from bt.errors import InputError
from bt.operation import Imm, Mem, Operand, Operation, Reg
from patchmgr.patch import Block, Chunk, ExitRecord, Patch, Refusal

SECTION = ".ring1.patches"
VERSION = 2


def _operand(o: Operand) -> dict[str, Any]:
    if isinstance(o, Reg):
        return {"reg": o.name}
    if isinstance(o, Imm):
        return {"imm": o.value}
    return {"mem": [o.size, o.base, o.index, o.scale, o.disp, o.seg]}


def _operand_back(d: dict[str, Any]) -> Operand:
    if "reg" in d:
        return Reg(d["reg"])
    if "imm" in d:
        return Imm(d["imm"])
    size, base, index, scale, disp, seg = d["mem"]
    return Mem(size, base, index, scale, disp, seg)


def op_to_json(op: Operation) -> dict[str, Any]:
    return {"cls": op.cls, "address": op.address, "length": op.length, "mnemonic": op.mnemonic,
            "operands": [_operand(o) for o in op.operands], "text": op.text, "rep": op.rep}


def op_from_json(d: dict[str, Any]) -> Operation:
    op = Operation(d["cls"], d["address"], d["length"], d["mnemonic"],
                   tuple(_operand_back(o) for o in d["operands"]), d["text"], d["rep"])
    _check_op(op)
    return op


def _register_names() -> frozenset[str]:
    from capstone import CS_ARCH_X86, CS_MODE_32, Cs
    from capstone import x86_const as x

    cs = Cs(CS_ARCH_X86, CS_MODE_32)
    return frozenset(n for n in (cs.reg_name(i) for i in range(1, x.X86_REG_ENDING)) if n)


_REGISTERS: frozenset[str] = frozenset()


def _check_op(op: Operation) -> None:
    """An operation the runtime can emulate as recorded: a class of bt.isa (or None),
    Capstone's register names, an x86 length (a record is input: it may be forged)."""
    global _REGISTERS
    if not _REGISTERS:
        _REGISTERS = _register_names()
    if op.cls is not None and op.cls not in {c.name for c in isa.CLASSES}:
        raise ValueError(f"operation at {op.address!r}: unknown class {op.cls!r}")
    _addr(op.address, "an operation's address")
    if not (isinstance(op.length, int) and 1 <= op.length <= 15 and isinstance(op.mnemonic, str)
            and isinstance(op.text, str) and isinstance(op.rep, bool)):
        raise ValueError(f"operation at {op.address:#x} is malformed")
    for o in op.operands:
        regs = [o.name] if isinstance(o, Reg) else [o.base, o.index, o.seg] if isinstance(o, Mem) else []
        if any(r is not None and r not in _REGISTERS for r in regs):
            raise ValueError(f"operation at {op.address:#x}: unknown register in {o!r}")
        ints = [o.value] if isinstance(o, Imm) else [o.size, o.scale, o.disp] if isinstance(o, Mem) else []
        if any(not isinstance(v, int) or isinstance(v, bool) for v in ints):
            raise ValueError(f"operation at {op.address:#x}: malformed operand {o!r}")


def dump(patches: list[Patch], refusals: list[Refusal], patch_base: int, patch_top: int,
         rule_data: dict[str, int]) -> bytes:
    out: dict[str, Any] = {"version": VERSION, "patch_base": patch_base, "patch_top": patch_top,
                           "rule_data": rule_data, "patches": [], "refusals": []}
    for p in patches:
        block = None
        if p.block is not None:
            b = p.block
            block = {"address": b.address, "size": len(b.code), "tail": b.tail,
                     "chunks": [[c.patch, c.guest, c.rule, c.entry] for c in b.chunks],
                     "exits": [[at, r.resume, op_to_json(r.op) if r.op else None] for at, r in b.exits],
                     "gate": b.gate, "check": b.check,
                     "gate_on": b.gate_on.hex(), "gate_off": b.gate_off.hex()}
        out["patches"].append({"site": p.site, "kind": p.kind, "start": p.start, "end": p.end,
                               "original": p.original.hex(), "op": op_to_json(p.op), "block": block})
    for r in refusals:
        out["refusals"].append({"site": r.site, "reason": r.reason, "op": op_to_json(r.op)})
    return json.dumps(out, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Record:
    patches: tuple[Patch, ...]
    refusals: tuple[Refusal, ...]
    patch_base: int
    patch_top: int
    rule_data: dict[str, int]
    code: bytes          # patch memory from patch_base to patch_top


def load(data: bytes, code: bytes) -> Record:
    """Parse a record; `code` is patch memory from its `patch_base` (the patch segment)."""
    try:
        raw = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{SECTION}: not a patch record ({err})") from err
    if not isinstance(raw, dict):
        raise InputError(f"{SECTION}: not a patch record (a JSON {type(raw).__name__})")
    if raw.get("version") != VERSION:
        raise InputError(f"{SECTION}: record version {raw.get('version')} (this ring1 reads {VERSION})")
    try:
        return _parse(raw, code)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise InputError(f"{SECTION}: malformed patch record ({type(err).__name__}: {err})") from err


def _addr(value: Any, what: str) -> int:
    """A 32-bit address from the record: an int (not a bool) in 0..2^32-1."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
        raise ValueError(f"{what} is not a 32-bit address: {value!r}")
    return value


#: Longest patch window a record may claim (a JMP window is a few instructions of one block).
MAX_WINDOW = 256


def _check_patch(p: Patch, base: int, top: int) -> None:
    """What `bt run` relies on when it adopts a patch: a window in guest memory holding the
    site, its original bytes, and a block inside the recorded patch memory."""
    if p.kind not in ("jmp", "int3"):
        raise ValueError(f"patch at {p.site:#x} has kind {p.kind!r}")
    if not (p.start <= p.site < p.end <= p.start + MAX_WINDOW) or len(p.original) != p.end - p.start:
        raise ValueError(f"patch at {p.site:#x}: window [{p.start:#x},{p.end:#x}) does not fit")
    if p.end > layout.VMM_BASE:
        raise ValueError(f"patch at {p.site:#x} lies in the VMM area")
    if (p.kind == "jmp") != (p.block is not None):
        raise ValueError(f"patch at {p.site:#x}: a {p.kind} patch and a block do not go together")
    b = p.block
    if b is None:
        return
    if not base <= b.address <= b.address + len(b.code) <= top:
        raise ValueError(f"block at {b.address:#x} lies outside the recorded patch memory")
    for c in b.chunks:
        inside = base <= c.patch < top and (c.entry == 0 or base <= c.entry < top)
        if not (p.start <= c.guest < p.end and inside):
            raise ValueError(f"block at {b.address:#x}: a chunk outside its window or patch memory")
    for at, r in b.exits:
        if not base <= at < top:
            raise ValueError(f"block at {b.address:#x}: an exit outside patch memory")
        _addr(r.resume, "an exit's resume address")
    for gate in (b.gate, b.check):
        if gate is not None and not base <= gate < top:
            raise ValueError(f"block at {b.address:#x}: a gate outside patch memory")


def _parse(raw: dict[str, Any], code: bytes) -> Record:
    base, top = _addr(raw["patch_base"], "patch_base"), _addr(raw["patch_top"], "patch_top")
    if not base <= top <= base + len(code):
        raise ValueError(f"patch_top {top:#x} outside the patch segment ({len(code)} bytes at {base:#x})")
    patches = []
    for d in raw["patches"]:
        block = None
        if d["block"] is not None:
            b = d["block"]
            off = _addr(b["address"], "a block address") - base
            if off < 0 or off + b["size"] > len(code):
                raise InputError(f"{SECTION}: block at {b['address']:#x} lies outside the patch segment")
            block = Block(b["address"], code[off:off + b["size"]], d["start"], d["end"],
                          tuple(Chunk(_addr(p, "a chunk"), _addr(g, "a chunk"), r, _addr(e, "a chunk"))
                                for p, g, r, e in b["chunks"]),
                          _addr(b["tail"], "a block tail"),
                          tuple((_addr(at, "an exit"), ExitRecord(op_from_json(op) if op else None, resume))
                                for at, resume, op in b["exits"]), b.get("gate"), b.get("check"),
                          bytes.fromhex(b["gate_on"]), bytes.fromhex(b["gate_off"]))
        patch = Patch(_addr(d["site"], "a site"), op_from_json(d["op"]), d["kind"],
                      _addr(d["start"], "a start"), _addr(d["end"], "an end"), bytes.fromhex(d["original"]),
                      block)
        _check_patch(patch, base, top)
        patches.append(patch)
    refusals = [Refusal(_addr(d["site"], "a refused site"), op_from_json(d["op"]), str(d["reason"]))
                for d in raw["refusals"]]
    rule_data = {str(k): int(v) for k, v in dict(raw["rule_data"]).items()}
    return Record(tuple(patches), tuple(refusals), base, top, rule_data, code)
