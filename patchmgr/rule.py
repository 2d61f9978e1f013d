"""The patch-rule API: how an instruction becomes patch code (PATM's recompiler, one family at a time).

A rule is a class with

* `name`: stable, lower-case; `bt patch --disable-rule NAME` and the table's `rule`
  column (`bt.isa.InsnClass.rule`) refer to it;
* `classes`: the instruction classes (`bt.isa` row names) it translates. Built-in
  rules take them from the table (every row whose `rule` is the rule's name), so the
  table stays the one truth; a plugin may claim classes no built-in handles (for
  example `rdtsc`, which the table leaves native);
* `emit(op, ctx)`: Keystone assembly for one instruction, placed in a patch block.
  It runs in guest ring 1 with the guest's registers, on the guest's stack, at the
  block's address in patch memory; it must leave every register, every flag and
  every byte of guest memory exactly as the original instruction would have at
  CPL 0, reading and writing the virtual CPU state in the state block instead of
  the real one. Return None when the instruction can only be emulated by the
  runtime: the site then gets PATM's one-byte INT3 replacement.

A hypercall is one `int3` line in the emitted source with the `Operation` it carries
listed in `PatchCode.exits` (in the order of the `int3` lines). The runtime emulates
that `Operation` exactly as it would have on a trap and resumes after the `int3`; no
Capstone on that path, the operands were decoded when the patch was made.

Third-party rules are found through the entry-point group `ring1.patch_rules`
(see patchmgr/registry.py and samples/plugins/vtsc for a complete example).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from bt import layout
from bt.errors import PatchError
from bt.operation import Mem, Operand, Operation, Reg


@dataclass(frozen=True)
class PatchCode:
    """What a rule emits for one instruction.

    `asm`: Keystone source (Intel syntax; labels from `EmitContext.label` only).
    `exits`: the Operation each `int3` line in `asm` carries, in order.
    `ends_window`: control never falls through to the next guest instruction inside
    the patch block (IRET), or must resume in guest code (HLT: the interrupt that
    wakes it has to be taken before the next guest instruction runs), so the
    instruction can only be the last one of a patch window.
    `may_unmask`: the code may set the virtual IF (STI, POPF, IRET): the block checks
    the state block's `pending` word before it returns to guest code and exits there
    if an interrupt waits, so that the runtime can deliver it at a guest address.
    `shadow`: with `may_unmask`, interrupts may come only after the next instruction (STI's
    one-instruction shadow, SDM STI); without it, right after this one (POPF).
    `may_mask`: the code may clear the virtual IF (CLI, POPF): an interrupt an earlier
    instruction of the block let in must be looked for before it (patchmgr/block.py).
    `before_pop`: (register, asm) pairs: code to use instead of `asm` when the next
    instruction of the window is `pop register` (32-bit), which then runs as it is: the
    code may leave anything in that register, since the POP overwrites it (PUSHF; POP
    EAX, Linux's save_flags, needs no scratch store then).
    `after_push`: (register, asm) pairs: code to use instead of `asm` when the previous
    instruction of the window is `push register` (32-bit): the register's value is then
    also at [esp], so the code may use the register and reload it from there (PUSH EAX;
    POPFD, Linux's restore_flags, needs no scratch store then). The block keeps `asm`
    for a guest that enters at this instruction from elsewhere (patchmgr/block.py).
    """

    asm: str
    exits: tuple[Operation, ...] = ()
    ends_window: bool = False
    may_unmask: bool = False
    before_pop: tuple[tuple[str, str], ...] = ()
    after_push: tuple[tuple[str, str], ...] = ()
    shadow: bool = False
    may_mask: bool = False


class EmitContext:
    """What a rule may ask for while it emits code: state-block addresses, unique
    labels, scratch registers, memory-operand text and the flags-preserving bracket."""

    def __init__(self, data_slots: dict[str, int] | None = None, area: layout.VmmArea = layout.HOME) -> None:
        self._data = data_slots if data_slots is not None else {}
        self._labels = itertools.count()
        #: Where the VMM area is: every address handed out below is linear, in it.
        self.area = area

    def new_chunk(self) -> None:
        """Labels need only be unique within one instruction's code (it is assembled on
        its own), so each instruction numbers them from 0: equal code, equal text, and
        the assembler can reuse what it assembled before."""
        self._labels = itertools.count()

    # -- the state block ---------------------------------------------------------------------
    def state(self, name: str) -> int:
        """Guest address of a state-block field (bt.layout.STATE_FIELDS). Patch code may
        store only to fields with `patch_writes` (the writable page); the others are
        write-protected and a store there is dropped by the runtime."""
        return self.area.state(name)

    def scratch(self, index: int) -> int:
        """Guest address of scratch word `index` (0-3): registers saved by patch code."""
        if not 0 <= index < layout.state_field("scratch").size // 4:
            raise PatchError(f"scratch word {index} does not exist")
        return self.area.state("scratch") + 4 * index

    def data(self, key: str, size: int) -> int:
        """Guest address of `size` bytes in the state block's rule-data area (in its
        patch-writable page) owned by `key` (for example a plugin's virtual TSC). The same
        key always gets the same address within one process; the runtime zeroes the area
        at boot."""
        field = layout.state_field("rule_data")
        if key not in self._data:
            used = sum(self._data.values()) if self._data else 0
            if used + size > field.size:
                raise PatchError(f"rule data area full ({field.size} bytes), {key!r} wants {size}")
            self._data[key] = size
        offset = 0
        for k, n in self._data.items():
            if k == key:
                return self.area.linear(field.address) + offset
            offset += n
        raise PatchError(f"rule data {key!r} lost")  # pragma: no cover - dict order is stable

    def table(self, name: str) -> int:
        """Guest address of a flag-free lookup table or of the interior bitmap
        ("interior"; patchmgr/tables.py)."""
        from patchmgr import tables

        return self.area.linear(tables.address(name))

    def data_slots(self) -> dict[str, int]:
        """Rule-data keys and sizes handed out so far, in order (recorded by `bt patch`)."""
        return dict(self._data)

    # -- assembly helpers --------------------------------------------------------------------
    def label(self, stem: str) -> str:
        """A label no other emitted code uses."""
        return f"L{next(self._labels)}_{stem}"

    def flags_saved(self, body: str) -> str:
        """`body` wrapped so that EFLAGS are what they were before it: PUSHFD/POPFD on the
        state block's private stack, never below the guest's ESP (PATM saved flags in its
        own state page too). POPFD at CPL 1 / IOPL 0 restores every arithmetic flag and
        cannot change the real IF or IOPL (SDM POPF operation), which is what we want.
        `body` must not use ESP."""
        top = self.state("pstack") + layout.state_field("pstack").size
        return (f"mov dword ptr [{self.state('saved_esp'):#x}], esp\n"
                f"mov esp, {top:#x}\n"
                "pushfd\n"
                f"{body}\n"
                "popfd\n"
                f"mov esp, dword ptr [{self.state('saved_esp'):#x}]")

    @staticmethod
    def registers_of(operands: Iterable[Operand]) -> set[str]:
        """32-bit names of every general register the operands mention."""
        out: set[str] = set()
        for o in operands:
            names: tuple[str | None, ...] = ()
            if isinstance(o, Reg):
                names = (o.name,)
            elif isinstance(o, Mem):
                names = (o.base, o.index)
            for n in names:
                if n is not None and n in _FULL:
                    out.add(_FULL[n])
        return out

    def free_reg(self, op: Operation, avoid: Iterable[str] = ()) -> str:
        """A 32-bit general register neither the operands nor `avoid` use, for patch code
        to borrow (saved to a scratch word and restored)."""
        busy = self.registers_of(op.operands) | set(avoid)
        for r in ("eax", "ecx", "edx", "ebx", "esi", "edi"):
            if r not in busy:
                return r
        raise PatchError(f"no free register for {op.text}")

    @staticmethod
    def mem(m: Mem, extra: int = 0, size: int | None = None) -> str:
        """Keystone text for memory operand `m`, `extra` bytes further, `size` bytes wide."""
        width = {1: "byte", 2: "word", 4: "dword", 6: "fword", 8: "qword"}[size or m.size]
        parts = []
        if m.base:
            parts.append(m.base)
        if m.index:
            parts.append(f"{m.index}*{m.scale}")
        disp = (m.disp + extra) & 0xFFFFFFFF
        if disp or not parts:
            parts.append(f"{disp:#x}")
        seg = f"{m.seg}:" if m.seg else ""
        return f"{width} ptr {seg}[{' + '.join(parts)}]"

    @staticmethod
    def hypercall(op: Operation) -> PatchCode:
        """The whole translation of an instruction the runtime must emulate: one exit."""
        return PatchCode("int3", exits=(op,))


#: Sub-registers to the 32-bit register that holds them.
_FULL = {r: r for r in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")}
_FULL.update({"ax": "eax", "al": "eax", "ah": "eax", "cx": "ecx", "cl": "ecx", "ch": "ecx",
              "dx": "edx", "dl": "edx", "dh": "edx", "bx": "ebx", "bl": "ebx", "bh": "ebx",
              "sp": "esp", "bp": "ebp", "si": "esi", "di": "edi"})

#: 32-bit register to its 16-bit half.
REG16 = {"eax": "ax", "ecx": "cx", "edx": "dx", "ebx": "bx", "esi": "si", "edi": "di",
         "ebp": "bp", "esp": "sp"}


def full_reg(name: str) -> str:
    """The 32-bit register holding `name` ("ax" -> "eax")."""
    return _FULL[name]


class PatchRule(ABC):
    """One family of instructions and how to translate them (see the module docstring)."""

    #: Stable name; the table's `rule` column and `--disable-rule` use it.
    name: ClassVar[str]
    #: One line for `bt patch --list-rules`.
    description: ClassVar[str] = ""
    #: Classes this rule translates. None: every `bt.isa` row whose `rule` is `name`.
    claims: ClassVar[frozenset[str] | None] = None

    def classes(self) -> frozenset[str]:
        cached: frozenset[str] | None = self.__dict__.get("_classes")
        if cached is None:
            if self.claims is not None:
                cached = self.claims
            else:
                from bt.isa import CLASSES

                cached = frozenset(c.name for c in CLASSES if c.rule == self.name)
            self.__dict__["_classes"] = cached
        return cached

    def matches(self, op: Operation) -> bool:
        return op.cls is not None and op.cls in self.classes()

    @abstractmethod
    def emit(self, op: Operation, ctx: EmitContext) -> PatchCode | None:
        """Patch code for `op`, or None for the INT3 replacement (see module docstring)."""
