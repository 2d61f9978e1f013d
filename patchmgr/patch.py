"""Patch records: what was patched where, what was refused and why, and the exits.

A `Patch` is one guest site rewritten: `kind` "jmp" (a 5-byte JMP over the window
[start, end) into a patch block) or "int3" (PATM's one-byte replacement, emulated on
the int3 exit). `original` holds the guest bytes the patch replaced, so the patch can
be removed (self-modifying code) and the window decoded as the guest wrote it. A
`Refusal` records a site that could not be patched and the reason, as PATM did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bt.operation import Operation

JMP_LEN = 5


@dataclass(frozen=True)
class ExitRecord:
    """What the runtime does at a patch exit (an int3 in patch memory or at a guest site):
    emulate `op` as on a trap, then continue at `resume` if the emulation fell through
    (left EIP at `op.next_address`). `op` None: nothing to emulate, the exit only lets the
    runtime deliver a pending interrupt at `resume`, a guest address."""

    op: Operation | None
    resume: int


@dataclass(frozen=True)
class Chunk:
    """One guest instruction's translation inside a block: patch address <-> guest address."""

    patch: int
    guest: int
    rule: str | None        # the rule that translated it; None: relocated as is
    #: Where to resume when the guest continues at `guest` from outside the block (an
    #: IRET to it, an emulated exit): 0 means `patch`. Code fused with the instruction
    #: before it in the window (PatchCode.after_push) is only right when entered from that
    #: instruction, so a block entered at such a chunk starts at a stub after its tail
    #: that runs the stand-alone translation, then joins the block.
    entry: int = 0

    @property
    def resume(self) -> int:
        return self.entry or self.patch


@dataclass(frozen=True)
class Block:
    """A patch block: code at `address` in patch memory standing for guest [start, end)."""

    address: int
    code: bytes = field(repr=False)
    start: int
    end: int
    chunks: tuple[Chunk, ...]
    tail: int                               # patch address from which the block only returns
    exits: tuple[tuple[int, ExitRecord], ...]
    #: Blocks that must look for a pending interrupt before they return are switched by
    #: the patch manager while one is pending (patchmgr/block.py): it writes `gate_on` at
    #: `gate` then, `gate_off` otherwise. A data gate is the word an indirect JMP at the
    #: tail goes through (`end`, or `check`: the code that exits when the virtual IF
    #: allows it); a code gate is the block's last instruction itself (its RET), which a
    #: JMP to `check` replaces.
    gate: int | None = None
    check: int | None = None
    gate_on: bytes = b""
    gate_off: bytes = b""

    @property
    def limit(self) -> int:
        return self.address + len(self.code)

    def guest_of(self, eip: int) -> int:
        """The guest instruction whose translation holds patch address `eip`."""
        if eip >= self.tail:
            stubs = [c for c in self.chunks if c.entry and c.entry <= eip]
            if stubs:
                return stubs[-1].guest
            # Behind a code gate the check ends with a copy of the last instruction: a fault
            # there (a RET's stack read) is that instruction's.
            return self.chunks[-1].guest if self.gate == self.chunks[-1].patch else self.end
        best = self.chunks[0]
        for c in self.chunks:
            if c.patch <= eip:
                best = c
        return best.guest


@dataclass
class Patch:
    site: int
    op: Operation
    kind: str               # "jmp" or "int3"
    start: int
    end: int
    original: bytes = field(repr=False)
    block: Block | None = None
    exits: int = 0          # exits taken through this patch (hypercalls, int3)
    writes: int = 0         # guest writes into its window or displaced code

    def covers(self, address: int) -> bool:
        return self.start <= address < self.end


@dataclass(frozen=True)
class Refusal:
    site: int
    op: Operation
    reason: str
