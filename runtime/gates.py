"""Far CALL and JMP through the guest's call gates, emulated with the guest's own rules.

A guest call gate copied into the shadow GDT as it is would be taken by the CPU with
the wrong privileges: its DPL-0 gates are out of the guest kernel's reach at CPL 1, a
DPL-3 gate to kernel code makes the CPU switch to the *real* TSS's ss1:esp1 (whatever the
VMM last put there, or its own stack), and CS is pushed with RPL 1 (issue 11, item 11).
So the shadow holds every call gate not present (runtime/segments.py `compress`): the CPU
never follows one, and raises #NP(gate selector) instead, after its own DPL check on the
shadow (DPL 0 -> 1, so that CPL 1 gets as far as the #NP). Here the VMM does what the CPU
would have done at the guest's CPL (0 for real CPL 1, 3 for 3) with the guest's own
descriptors (SDM vol. 2 CALL/JMP "call gate"; vol. 3 §5.8.4-5.8.6):

* the gate's DPL against CPL and RPL (#GP(gate)), the gate present (#NP(gate), the guest's
  own: only then does the guest see one), the target code segment (#GP(target) if it is
  not code or its DPL is wrong for CALL/JMP, #NP(target) if not present), the offset
  within its limit (#GP(0));
* a CALL to a more privileged non-conforming segment (guest ring 3 -> 0) switches to the
  guest TSS's ss0:esp0 (its checks: #TS(ss0)), copies the gate's parameter count of
  dwords and pushes SS, ESP, the parameters, CS, EIP there, through the VMM's call gate
  as an interrupt from ring 3 does (runtime/deliver.py `call_inward`): the CPL change is
  the CPU's own;
* otherwise CS:EIP are pushed on the current stack (CALL) with the guest's view of CS (RPL
  0 for its kernel, as in interrupt frames), and CS:EIP are loaded.

Not supported (a clean stop): 16-bit call gates, gates to guest rings 1 and 2 (ring1
compresses the guest's ring 0 into ring 1), and hardware task switches (far JMP/CALL to a
TSS or task gate).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from bt.errors import GuestStop
from bt.operation import Imm, Mem, Operation
from runtime.context import Ctx, EmulationFault
from runtime.cpu import CS, EIP, ESP
from runtime.paging import PageFault
from runtime.segments import TYPE_CALL_GATE, TYPE_CALL_GATE16, Descriptor

VEC_TS, VEC_NP, VEC_SS, VEC_GP, VEC_PF = 10, 11, 12, 13, 14
#: Legacy prefix bytes (SDM vol. 2 §2.1.1).
_PREFIXES = frozenset({0x66, 0x67, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0xF0, 0xF2, 0xF3})
#: TSS (16/32-bit, available/busy) and task-gate descriptor types.
_TASK_TYPES = frozenset({0x1, 0x3, 0x5, 0x9, 0xB})


class Gates:
    def __init__(self, ctx: Ctx, decode: Callable[[int], Operation]) -> None:
        self.ctx = ctx
        self.decode = decode
        #: Far transfers emulated through guest call gates.
        self.calls = 0

    def refuse_task_switch(self, op: Operation, error: int) -> None:
        """A far JMP/CALL the CPU refused because its selector names a TSS or a task gate
        (shadowed null): a hardware task switch, which ring1 does not emulate."""
        if op.cls not in ("far_jmp", "far_call") or error & 3 or not error & 0xFFFC:
            return
        try:
            d = self.ctx.gdt.guest_descriptor(error & 0xFFFC)
        except PageFault:
            return
        if d is not None and d.present and d.is_system and d.type in _TASK_TYPES:
            raise GuestStop("hardware task switch (far JMP/CALL to a TSS or task gate) is not supported",
                            op.address, f"selector {error & 0xFFFC:#x}")

    def through_gate(self, eip: int, error: int) -> bool:
        """A #NP at `eip` with `error`: True if it was the CPU refusing a guest call gate,
        now emulated (or its own fault delivered); False: an ordinary #NP."""
        if error & 3:
            return False            # raised while delivering an event, not by a selector
        sel = error & 0xFFFC
        try:
            gate = self.ctx.gdt.guest_descriptor(sel)
        except PageFault:
            return False
        if gate is None or not gate.is_system or gate.type not in (TYPE_CALL_GATE, TYPE_CALL_GATE16):
            return False
        try:
            op = self.decode(eip)
        except PageFault:
            return False
        if op.cls not in ("far_call", "far_jmp"):
            return False
        try:
            named = self._selector(op)
            if named & 0xFFFC != sel:
                return False
            self._transfer(op, named, gate)
        except EmulationFault as fault:
            self._deliver(fault.vector, eip, fault.error_code)
        except PageFault as pf:
            self.ctx.vcpu.set_cr(2, pf.linear)
            self.ctx.cpu.write_name("cr2", pf.linear)
            self._deliver(VEC_PF, eip, pf.error_code)
        else:
            self.calls += 1
            self.ctx.stats.exit("trap", op.cls, eip)
        return True

    def _deliver(self, vector: int, eip: int, error: int | None) -> None:
        stats = self.ctx.stats
        stats.exit("interrupt", None, eip)
        stats.vectors[vector] += 1
        self.ctx.inject.deliver(vector, eip, error, False)

    def _selector(self, op: Operation) -> int:
        """The selector the far CALL/JMP names: its immediate, or the word after the
        offset in its memory operand (m16:32)."""
        ops = op.operands
        if len(ops) == 2 and isinstance(ops[0], Imm):
            return ops[0].value & 0xFFFF
        if len(ops) == 1 and isinstance(ops[0], Mem):
            # m16:32, or m16:16 with an operand-size prefix (Capstone's operand size for
            # FF /3 is not reliable: it says 4 for m16:32).
            user = self.ctx.user()
            raw = self.ctx.mmu.read(op.address, min(op.length, 4), user=user, fetch=True)
            width = 4
            for b in raw:
                if b == 0x66:
                    width = 2
                elif b not in _PREFIXES:
                    break
            addr = self.ctx.address(ops[0])
            return int.from_bytes(self.ctx.mmu.read(addr + width, 2, user=user), "little")
        raise EmulationFault(VEC_GP, 0)

    def _transfer(self, op: Operation, sel: int, gate: Descriptor) -> None:
        ctx = self.ctx
        cpu = ctx.cpu
        real_cs = cpu.read(CS)
        real_cpl = real_cs & 3
        cpl = 0 if real_cpl == 1 else 3          # the guest's CPL (ring 1 is its ring 0)
        rpl = sel & 3
        call = op.cls == "far_call"
        if gate.dpl < cpl or gate.dpl < rpl:
            raise EmulationFault(VEC_GP, sel & 0xFFFC)
        if not gate.present:
            raise EmulationFault(VEC_NP, sel & 0xFFFC)
        if gate.type == TYPE_CALL_GATE16:
            raise GuestStop("16-bit call gates are not supported", op.address, f"selector {sel:#x}")
        raw = gate.raw
        offset = (raw & 0xFFFF) | ((raw >> 48) & 0xFFFF) << 16
        target = (raw >> 16) & 0xFFFF
        params = (raw >> 32) & 0x1F
        if not target & 0xFFFC:
            raise EmulationFault(VEC_GP, 0)
        code = ctx.gdt.guest_descriptor(target)
        if code is None or not code.is_code:
            raise EmulationFault(VEC_GP, target & 0xFFFC)
        conforming = bool(code.type & 0x4)
        if code.dpl > cpl or (not call and not conforming and code.dpl != cpl):
            raise EmulationFault(VEC_GP, target & 0xFFFC)
        if not code.present:
            raise EmulationFault(VEC_NP, target & 0xFFFC)
        if offset > code.limit:
            raise EmulationFault(VEC_GP, 0)
        back = op.next_address
        if call and not conforming and code.dpl < cpl:
            if code.dpl != 0:
                raise GuestStop("a call gate into guest ring 1 or 2 (ring1 runs only guest rings 0 and 3)",
                                op.address, f"target {target:#x}")
            self._call_inward(real_cs, back, target, offset, params)
            return
        new_cs = (target & ~3) | real_cpl        # the CPL stays (conforming or same level)
        if call:
            shown = real_cs & ~3 if real_cpl == 1 else real_cs
            esp = (cpu.read(ESP) - 8) & 0xFFFFFFFF
            ctx.mmu.write(esp, struct.pack("<II", back, shown), user=real_cpl == 3)
            cpu.write(ESP, esp)
        ctx.m.load_cs(new_cs)
        cpu.write(EIP, offset)

    def _call_inward(self, user_cs: int, back: int, target: int, offset: int, params: int) -> None:
        ctx = self.ctx
        cpu = ctx.cpu
        ss0, esp0 = ctx.inject.guest_ring0_stack()
        if not ss0 & 0xFFFC:
            raise EmulationFault(VEC_TS, 0)
        stack = ctx.gdt.guest_descriptor(ss0)
        if stack is None or ss0 & 3 != 0 or stack.is_system or stack.is_code or not stack.type & 2 \
                or stack.dpl != 0:
            raise EmulationFault(VEC_TS, ss0 & 0xFFFC)
        if not stack.present:
            raise EmulationFault(VEC_SS, ss0 & 0xFFFC)
        user_esp = cpu.read(ESP)
        copied = struct.unpack(f"<{params}I", ctx.mmu.read(user_esp, 4 * params, user=True)) if params else ()
        frame = (cpu.read_name("ss"), user_esp, *reversed(copied), user_cs, back)
        ctx.inject.call_inward((target & ~3) | 1, offset, frame, ss0, esp0)
