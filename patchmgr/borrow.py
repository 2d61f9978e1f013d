"""What patch code has borrowed from the guest at a given patch address (issue 11, item 9).

A translation may borrow a general register (saved to a scratch word of the state block,
`EmitContext.scratch`, and reloaded before it leaves), the stack pointer (saved to
`saved_esp` while EFLAGS go onto the private stack, `EmitContext.flags_saved`) and push or
pop on the guest's stack. When an instruction inside the translation faults (the store of
an SGDT to a page the guest demand-pages, a stack read), the guest must see the fault at
its own instruction with its registers as they were before it (SDM vol. 3 §6.5: faults are
restartable): the runtime puts back what is borrowed at that point and re-runs the guest
instruction from the start (PATM kept the same patch <-> guest state maps for its traps).

The analysis follows the conventions every rule's code uses: it walks the chunk's code from
its start to the faulting instruction (rule code is straight-line up to any fault: its
branches skip forward over code that cannot fault) and tracks

* `mov dword ptr [S], r32` / `mov r32, dword ptr [S]` with S a scratch word or `saved_esp`:
  r borrowed / given back;
* `mov esp, imm32` after ESP was saved: ESP on the private stack; PUSHFD/POPFD there save and
  restore EFLAGS (their image is what the guest had);
* otherwise PUSH/POP/PUSHFD/POPFD on the guest stack: ESP moved by the translation so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from capstone import CS_ARCH_X86, CS_MODE_32, Cs
from capstone import x86_const as x

_cs = Cs(CS_ARCH_X86, CS_MODE_32)
_cs.detail = True

_GPR = ("eax", "ecx", "edx", "ebx", "esi", "edi", "ebp", "esp")


@dataclass
class Borrowed:
    """At one patch address: where each borrowed register's guest value is, and how far the
    translation moved the guest's ESP (to be undone)."""

    #: register name ("eax"... "esp") -> linear address of the word holding its guest value.
    saved: dict[str, int] = field(default_factory=dict)
    #: Linear address of the word holding the guest's EFLAGS (pushed on the private stack).
    eflags_at: int | None = None
    #: Bytes the translation pushed (negative: popped) on the guest's stack so far.
    pushed: int = 0


def borrowed(code: bytes, start: int, stop: int, words: set[int], saved_esp: int) -> Borrowed:
    """What is borrowed just before the instruction at `stop`, for patch code `code` at
    `start` (the chunk's first instruction); `words`: the scratch words' addresses."""
    out = Borrowed()
    private: int | None = None          # ESP while it points at the private stack
    for insn in _cs.disasm(code, start):
        if insn.address >= stop:
            break
        ops = insn.operands
        m = insn.mnemonic
        if m == "mov" and len(ops) == 2:
            dst, src = ops
            if dst.type == x.X86_OP_MEM and src.type == x.X86_OP_REG and _absolute(dst):
                name = insn.reg_name(src.reg)
                where = dst.mem.disp & 0xFFFFFFFF
                if name in _GPR and (where in words or where == saved_esp) and name not in out.saved:
                    out.saved[name] = where
                continue
            if dst.type == x.X86_OP_REG and src.type == x.X86_OP_MEM and _absolute(src):
                name = insn.reg_name(dst.reg)
                where = src.mem.disp & 0xFFFFFFFF
                if out.saved.get(name) == where:
                    del out.saved[name]
                    if name == "esp":
                        private = None
                continue
            if dst.type == x.X86_OP_REG and insn.reg_name(dst.reg) == "esp" and src.type == x.X86_OP_IMM \
                    and "esp" in out.saved:
                private = src.imm & 0xFFFFFFFF
                continue
        if m in ("pushfd", "pushf", "push", "popfd", "popf", "pop"):
            size = 2 if m in ("pushf", "popf") or (ops and ops[0].size == 2) else 4
            delta = -size if m.startswith("push") else size
            if private is not None:
                private += delta
                if m in ("pushfd", "pushf"):
                    out.eflags_at = private
                elif m in ("popfd", "popf"):
                    out.eflags_at = None
            else:
                out.pushed -= delta
    return out


def _absolute(op: object) -> bool:
    mem = op.mem  # type: ignore[attr-defined]
    return not mem.base and not mem.index
