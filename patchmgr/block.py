"""Building one patch block: translate the site, relocate the displaced instructions,
return to the guest (PATM's patch-block recompiler, for one window).

A block is a sequence of chunks, one per guest instruction of the window, each
self-contained (its labels are its own), so a block can be entered at any chunk: the
runtime does that when it resumes at a guest address inside a window (`resume_at`).
After the chunks comes the tail: a JMP back to the guest, unless the window ran on to
the RET (or JMP) that ends its basic block, which then leaves the block itself. If some
chunk may have set the virtual IF (STI, POPF) or exited in the middle of the block (the
runtime never delivers an interrupt inside patch code, whose address the guest must not
see), the block must look for a pending interrupt before it leaves: virtual IF set and
`pending` non-zero -> exit with nothing to emulate at a guest address, where the runtime
delivers the interrupt. That check costs nothing while no interrupt is pending, because
the patch manager switches it in only while `pending` is set
(`PatchManager.set_pending`, called by the runtime), through the block's gate:

* a code gate, when the block leaves by its own last instruction: the RET itself (padded
  to 5 bytes) while nothing is pending, a JMP to the check while something is; the check
  exits at the RET's guest address or runs a copy of the RET. Linux's local_irq_enable
  (STI; ...; RET) and local_irq_restore (PUSH; POPF; ...; RET) leave with no extra jump;
* a data gate otherwise: the tail is `jmp dword ptr [gate]`, an indirect JMP through a
  word holding the guest return address (or the check's address while something is
  pending). It costs what the direct JMP it replaces does (Unicorn ends the translation
  block at either and looks the target up), and needs no register or flag.

Code fused with the instruction before it (PatchCode.after_push) is right only when
entered from that instruction; a guest entering the window there from elsewhere (an IRET
to it) starts at a stub after the tail holding the stand-alone translation (Chunk.entry).

Hypercalls are the `int3` instructions of a chunk; they are found by disassembling
the chunk's own bytes, and matched in order with the chunk's `exits`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from capstone import CS_ARCH_X86, CS_MODE_32, Cs

from bt import isa
from bt.errors import PatchError
from bt.operation import Operation, Reg
from patchmgr.assembler import assemble, jmp
from patchmgr.patch import JMP_LEN, Block, Chunk, ExitRecord
from patchmgr.registry import RuleSet
from patchmgr.relocate import CannotMove, relocate
from patchmgr.rule import EmitContext

INT3 = b"\xcc"

if TYPE_CHECKING:
    from capstone import CsInsn

_cs = Cs(CS_ARCH_X86, CS_MODE_32)


@dataclass(frozen=True)
class Planned:
    """One window instruction, ready to place: text or raw bytes, and what it needs."""

    guest: int
    asm: str
    raw: bytes
    exits: tuple[Operation, ...]
    ends_window: bool
    may_unmask: bool
    rule: str | None
    before_pop: tuple[tuple[str, str], ...] = ()   # PatchCode.before_pop
    pops: str | None = None                        # a relocated POP r32: r
    after_push: tuple[tuple[str, str], ...] = ()   # PatchCode.after_push
    pushes: str | None = None                      # a relocated PUSH r32: r
    shadow: bool = False                           # PatchCode.shadow
    may_mask: bool = False                         # PatchCode.may_mask


def plan(insn: CsInsn, rules: RuleSet, ctx: EmitContext,
         emulable: Callable[[str], bool] = lambda cls: True) -> Planned:
    """How one guest instruction runs in a block; CannotMove if it can't. `emulable(cls)`
    says whether the runtime can emulate an exit of that class."""
    op = isa.decode(insn)
    if op.cls is not None:
        row = isa.by_name(op.cls)
        rule = rules.rule_for(op)
        if rule is not None:
            ctx.new_chunk()
            code = rule.emit(op, ctx)
            if code is None:
                raise CannotMove(f"{op.text}: only as a one-byte INT3 replacement")
            stuck = [e.cls for e in code.exits if e.cls is None or not emulable(e.cls)]
            if (stuck or (code.exits and not row.exit_adds_fidelity)) and not row.exits_unpatched:
                # Runs natively, exactly as it would unpatched: a class that never exits does
                # not gain an exit here (the patch manager's guard, patchmgr/manager.py).
                moved = relocate(insn, f"R{insn.address:x}")
                return Planned(insn.address, moved.asm, moved.raw, (), moved.ends_window, False, None)
            if stuck:
                raise CannotMove(f"{op.text}: the runtime cannot emulate {', '.join(map(str, stuck))}")
            return Planned(insn.address, code.asm, b"", code.exits, code.ends_window, code.may_unmask,
                           rule.name, code.before_pop, after_push=code.after_push, shadow=code.shadow,
                           may_mask=code.may_mask)
        if row.handling is not isa.Handling.NONE:
            raise CannotMove(f"{op.text}: class {op.cls} has no enabled rule and must trap in place")
    moved = relocate(insn, f"R{insn.address:x}")
    reg = op.operands[0].name if len(op.operands) == 1 and isinstance(op.operands[0], Reg) \
        and op.operands[0].name in _GPR32 else None
    return Planned(insn.address, moved.asm, moved.raw, (), moved.ends_window, False, None, (),
                   reg if insn.mnemonic == "pop" else None,
                   pushes=reg if insn.mnemonic == "push" else None)


_GPR32 = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp")


def _int3s(code: bytes, address: int) -> list[int]:
    return [i.address for i in _cs.disasm(code, address) if i.bytes == b"\xcc"]


def build(items: Sequence[Planned], start: int, end: int, address: int, ctx: EmitContext) -> Block:
    """Assemble `items` (guest window [start, end)) as a block at `address`."""
    for it in items[:-1]:
        if it.ends_window:
            raise CannotMove(f"instruction at {it.guest:#x} must end its window")
    code = bytearray()
    chunks: list[Chunk] = []
    exits: list[tuple[int, ExitRecord]] = []
    fused: list[int] = []       # chunks assembled with their after_push code
    mid_exit = False
    checks = _early_checks(items)
    for n, it in enumerate(items):
        here = address + len(code)
        asm = it.asm
        after = items[n + 1].pops if n + 1 < len(items) else None
        before = items[n - 1].pushes if n > 0 else None
        if after is not None and after in dict(it.before_pop):
            asm = dict(it.before_pop)[after]
        elif before is not None and before in dict(it.after_push) and not it.exits:
            asm = dict(it.after_push)[before]
            fused.append(n)
        part = it.raw if it.raw else assemble(asm, here)
        chunks.append(Chunk(here, it.guest, it.rule))
        found = _int3s(part, here) if it.exits else []
        if len(found) != len(it.exits):
            raise PatchError(f"rule {it.rule} emitted {len(found)} int3 for {len(it.exits)} exits "
                             f"at guest {it.guest:#x}")
        last = n == len(items) - 1
        for where, op in zip(found, it.exits, strict=True):
            at_end = last and where == here + len(part) - 1
            # An exit that ends the block resumes straight in guest code, where the
            # runtime may deliver interrupts; one inside the block resumes after itself.
            exits.append((where, ExitRecord(op, end if at_end else where + 1)))
            mid_exit = mid_exit or not at_end
        code += part
        if n in checks:
            code += _tail_check(address + len(code), items[n + 1].guest, ctx, exits)
            mid_exit = True
    tail = address + len(code)
    unmask = any(it.may_unmask for it in items)
    last_exits_at_end = bool(exits) and exits[-1][1].resume == end
    gate = check = None
    gate_on = gate_off = b""
    if (unmask and not (last_exits_at_end and items[-1].may_unmask)) or mid_exit:
        if items[-1].ends_window and not items[-1].exits and not mid_exit:
            # A code gate: the block leaves by its own last instruction (the window ran on
            # to the RET), so nothing runs between the unmasking and that instruction while
            # no interrupt is pending; while one is, a JMP over it leads to the check, which
            # exits at that instruction's guest address or runs a copy of it.
            gate = chunks[-1].patch
            code += INT3 * (gate + JMP_LEN - (address + len(code)))
            tail = check = address + len(code)
            code += _tail_check(check, items[-1].guest, ctx, exits)
            leave = items[-1]
            code += leave.raw if leave.raw else assemble(leave.asm, address + len(code))
            gate_off = bytes(code[gate - address:gate - address + JMP_LEN])
            gate_on = jmp(gate, check)
        else:
            # A data gate: jmp dword ptr [gate]; check code; jmp end; the gate word, aligned.
            check = tail + 6
            body = _tail_check(check, end, ctx, exits)
            body += jmp(check + len(body), end)
            gate = (check + len(body) + 3) & ~3
            code += b"\xff\x25" + gate.to_bytes(4, "little") + body
            code += bytes(gate - (address + len(code))) + end.to_bytes(4, "little")
            gate_on, gate_off = check.to_bytes(4, "little"), end.to_bytes(4, "little")
    else:
        code += jmp(address + len(code), end)
    for n in fused:
        # The stand-alone translation, for a guest entering at this instruction.
        stub = address + len(code)
        code += assemble(items[n].asm, stub)
        code += jmp(address + len(code), chunks[n + 1].patch if n + 1 < len(chunks) else tail)
        chunks[n] = replace(chunks[n], entry=stub)
    return Block(address, bytes(code), start, end, tuple(chunks), tail, tuple(exits), gate, check,
                 gate_on, gate_off)


def _early_checks(items: Sequence[Planned]) -> set[int]:
    """Chunks after which the block must look for a pending interrupt before it goes on:
    where an unmasking instruction lets interrupts in (after STI's shadow instruction, right
    after POPF) when a later instruction of the block may mask them again before the block's
    own check at its end ("sti; nop; cli": hardware takes the interrupt after the NOP). Only
    then: the check at the end is enough otherwise, and costs nothing while none waits."""
    out: set[int] = set()
    for n, it in enumerate(items):
        if not it.may_unmask:
            continue
        k = n + 1 if it.shadow else n
        if k < len(items) - 1 and not items[k].exits and any(later.may_mask for later in items[k + 1:]):
            out.add(k)
    return out


def _tail_check(here: int, resume: int, ctx: EmitContext, exits: list[tuple[int, ExitRecord]]) -> bytes:
    """Exit to guest address `resume` if an interrupt is pending and the virtual IF is set.
    JECXZ is the one conditional jump that reads no flag, so EFLAGS stay the guest's."""
    vf1, pending, s0 = ctx.state("vflags") + 1, ctx.state("pending"), ctx.scratch(0)
    ctx.new_chunk()
    no = ctx.label("nopending")
    src = "\n".join([f"mov dword ptr [{s0:#x}], ecx",
                     f"mov ecx, dword ptr [{pending:#x}]",      # JECXZ tests all 32 bits
                     f"jecxz {no}",
                     f"movzx ecx, byte ptr [{vf1:#x}]",
                     f"movzx ecx, byte ptr [{ctx.table('if_set'):#x} + ecx]",
                     f"jecxz {no}",
                     f"mov ecx, dword ptr [{s0:#x}]",
                     "int3",
                     f"{no}:",
                     f"mov ecx, dword ptr [{s0:#x}]"])
    code = assemble(src, here)
    (where,) = _int3s(code, here)
    exits.append((where, ExitRecord(None, resume)))
    return code
