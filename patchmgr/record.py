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
    return Operation(d["cls"], d["address"], d["length"], d["mnemonic"],
                     tuple(_operand_back(o) for o in d["operands"]), d["text"], d["rep"])


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


def _parse(raw: dict[str, Any], code: bytes) -> Record:
    patches = []
    for d in raw["patches"]:
        block = None
        if d["block"] is not None:
            b = d["block"]
            off = b["address"] - raw["patch_base"]
            if off < 0 or off + b["size"] > len(code):
                raise InputError(f"{SECTION}: block at {b['address']:#x} lies outside the patch segment")
            block = Block(b["address"], code[off:off + b["size"]], d["start"], d["end"],
                          tuple(Chunk(p, g, r, e) for p, g, r, e in b["chunks"]), b["tail"],
                          tuple((at, ExitRecord(op_from_json(op) if op else None, resume))
                                for at, resume, op in b["exits"]), b.get("gate"), b.get("check"),
                          bytes.fromhex(b["gate_on"]), bytes.fromhex(b["gate_off"]))
        patches.append(Patch(d["site"], op_from_json(d["op"]), d["kind"], d["start"], d["end"],
                             bytes.fromhex(d["original"]), block))
    refusals = [Refusal(d["site"], op_from_json(d["op"]), d["reason"]) for d in raw["refusals"]]
    return Record(tuple(patches), tuple(refusals), raw["patch_base"], raw["patch_top"],
                  dict(raw["rule_data"]), code)

