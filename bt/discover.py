"""Code first seen at run time: recursive descent from an address the guest is running.

The static scan (`bt.scan`) cannot reach everything: code reached only through a
function pointer, an IDT entry or a return address it could not compute, or code the
guest copies or generates at run time. CSAM scanned such a page the first time the
guest executed it; ring1 does the same for a site the patch manager is about to
patch (it trapped, or a code hook saw it run): a descent from that address over guest
memory as it is now, following the same control flow as the scanner (direct near and
far JMP/CALL, conditional branches, IRET/RETF to a label pushed just before them) and
stopping where it meets code already known. The site is known to be an instruction
start, because the CPU is executing it; everything else the descent decodes from it
is as sure as the static scan's own reach.

Pure: it reads through a callable and returns blocks and targets; the code map
(patchmgr/codemap.py) keeps them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import capstone
from capstone import x86_const as x86

from bt.errors import InternalError
from bt.sweep import MAX_INSN, FlowKind, flow_of

#: Instructions one descent decodes at most (a runaway decode of data ends there).
BUDGET = 4096

_TARGET_KINDS = (FlowKind.COND, FlowKind.JUMP, FlowKind.CALL)
_FALLTHROUGH_KINDS = (FlowKind.COND, FlowKind.CALL, FlowKind.CALL_INDIRECT)
_FAR_RETURNS = (x86.X86_INS_IRETD, x86.X86_INS_RETF)


@dataclass(frozen=True)
class Found:
    blocks: tuple[tuple[int, int], ...]   # [start, end) basic blocks, in discovery order
    targets: tuple[int, ...]              # direct branch targets met (the start included)
    instructions: int


_engines: dict[int, capstone.Cs] = {}


def _engine(bits: int) -> capstone.Cs:
    if bits not in _engines:
        try:
            _engines[bits] = capstone.Cs(capstone.CS_ARCH_X86,
                                         capstone.CS_MODE_64 if bits == 64 else capstone.CS_MODE_32)
        except capstone.CsError as err:
            raise InternalError(f"capstone: {err}") from err
    return _engines[bits]


def descend(read: Callable[[int, int], bytes], start: int, known: Callable[[int], bool], *,
            bits: int = 32, budget: int = BUDGET) -> Found:
    """Basic blocks reachable from `start`. `read(address, size)` returns up to `size` bytes
    of guest code (fewer, or none, where memory ends); `known(address)` is true where a
    block the caller already has holds `address`: a block ends before it, and the descent
    does not enter it."""
    md = _engine(bits)
    todo = [start]
    seen: set[int] = set()
    blocks: list[tuple[int, int]] = []
    targets: set[int] = {start}
    decoded = 0
    while todo and decoded < budget:
        lead = todo.pop()
        if lead in seen or known(lead):
            continue
        seen.add(lead)
        pos, prev = lead, b""
        while decoded < budget:
            code = read(pos, MAX_INSN)
            insn = next(md.disasm(code, pos, 1), None) if code else None
            if insn is None:
                break                    # unreadable or undecodable: the block ends before it
            decoded += 1
            raw = bytes(insn.bytes)
            end = pos + insn.size
            kind, target = flow_of(insn.id, insn.op_str, raw, bits)
            more: list[int] = []
            if kind in _TARGET_KINDS:
                more.append(target)
            if kind in _FALLTHROUGH_KINDS:
                more.append(end)
            if insn.id in _FAR_RETURNS and bits == 32 and len(prev) == 5 and prev[0] == 0x68 \
                    and raw[0] in (0xCF, 0xCB, 0xCA):
                more.append(int.from_bytes(prev[1:], "little"))    # push $label; iret (bt.scan)
            for m in more:
                targets.add(m)
                todo.append(m)
            pos, prev = end, raw
            if kind is not FlowKind.NONE or pos in targets or known(pos):
                break
        if pos > lead:
            blocks.append((lead, pos))
    return Found(tuple(blocks), tuple(sorted(targets)), decoded)
