"""MMIO exits: loads and stores that reach a memory-mapped device (the APICs).

Each range of the `MmioBus` is mapped into Unicorn with `mmio_map`, so an access there
calls back into the VMM while every other guest access stays plain RAM at full speed.
Under VirtualBox's raw mode an MMIO page was not present in the shadow tables and each
access was a #PF exit emulated by IOM; here each is counted the same way, as an `io`
exit of class `mmio` at the guest EIP (virtual time: one exit).

The hook runs in the middle of the guest's instruction. Unicorn does not sync EIP for an
MMIO callback: it holds the start of the translated block (with Unicorn's instruction
count, which syncs EIP before every instruction, it held the instruction's own). So the
accessing instruction is found in the block the instruction clock says the CPU is in
(runtime/clock.py): the one whose memory operand, with the registers as they are now,
lands on the accessed address (`_accessor`). Measured with unicorn 2.1.4: `emu_stop()`
from a *store* callback leaves EIP at that instruction, to be executed again on resume,
although the store already reached the device (with or without the block clock: Unicorn
stops a memory access exactly). So a store
that makes an interrupt deliverable (an EOI, a TPR lowered, an I/O APIC pin unmasked
with its line high) ends the slice only when the instruction is a plain MOV to memory,
whose only effect is the store just made: the run loop then continues after it
(`take_resume`) and delivers the interrupt where the CPU would take it, right after the
store. Any other instruction (an RMW, a string store) finishes its slice, and the
interrupt comes at the slice end.
"""

from __future__ import annotations

import time
from typing import Any

from capstone import CS_ARCH_X86, CS_MODE_32, Cs
from unicorn import Uc, UcError

from bt import isa
from bt.errors import InternalError
from bt.operation import Mem
from runtime.context import Ctx
from runtime.cpu import EIP
from runtime.devices.bus import MmioBus
from runtime.paging import PageFault
from runtime.traps import Traps


class MmioExits:
    def __init__(self, ctx: Ctx, traps: Traps, bus: MmioBus) -> None:
        self.ctx = ctx
        self.traps = traps
        self.bus = bus
        #: Set by a store that ended the slice: where the guest continues (after the MOV).
        self.resume: int | None = None
        #: ((block start, entry), EIP) of the last access found (`_accessor`).
        self._last: tuple[tuple[int, int], int] | None = None
        #: Per translated block (start, size): its instructions with memory operands.
        self._blocks: dict[tuple[int, int], list[tuple[int, tuple[Mem, ...]]]] = {}
        self._cs = Cs(CS_ARCH_X86, CS_MODE_32)
        self._cs.detail = True

    def attach(self, uc: Uc) -> None:
        for start, size in self.bus.windows:
            try:
                uc.mmio_map(start, size, self._read, start, self._write, start)
            except UcError as err:
                raise InternalError(f"cannot map MMIO at {start:#x}+{size:#x}: {err}") from err

    def take_resume(self) -> int | None:
        resume, self.resume = self.resume, None
        return resume

    def _accessor(self, phys: int) -> int:
        """EIP of the instruction making this access (module docstring): where the clock's
        block has one instruction whose memory operand reaches `phys` now; Unicorn's EIP
        when there is no block clock (it is right then) or no single such instruction."""
        eip = self.ctx.cpu.read(EIP)
        block = getattr(self.traps.clock, "current_block", None)
        if block is None:
            return eip
        start, size, entry = block
        # Accesses run in program order within one run of a block: look past the last one.
        after = self._last[1] if self._last is not None and self._last[0] == (start, entry) else start - 1
        for at, mems in self._memory_operands(start, size):
            if at <= after:
                continue
            for mem in mems:
                try:
                    if self.ctx.mmu.translate(self.ctx.address(mem)) == phys:
                        self._last = ((start, entry), at)
                        return at
                except PageFault:
                    continue
        return eip

    def _memory_operands(self, start: int, size: int) -> list[tuple[int, tuple[Mem, ...]]]:
        key = (start, size)
        found = self._blocks.get(key)
        if found is None:
            try:
                code = self.ctx.mmu.read(start, size, fetch=True)
            except PageFault:
                return []
            found = []
            for insn in self._cs.disasm(code, start):
                op = isa.decode(insn)
                mems = tuple(o for o in op.operands if isinstance(o, Mem))
                if mems:
                    found.append((insn.address, mems))
            self._blocks[key] = found
        return found

    def _account(self, addr: int, write: bool) -> int:
        if self.traps.fast is not None:
            self.traps.fast.enter()      # C's exits first (runtime/fastexit.py)
        eip = self._accessor(addr)
        site = self.traps.patcher.to_guest_eip(eip)
        self.ctx.stats.exit("io", "mmio", site)
        self.traps.last.append(("io", f"mmio {'w' if write else 'r'} {addr:#x}", site))
        return eip

    def _read(self, uc: Uc, offset: int, size: int, base: Any) -> int:
        t0 = time.perf_counter_ns()
        try:
            addr = base + offset
            self._account(addr, False)
            return self.bus.read(addr, size)
        except BaseException as err:     # stored and re-raised by the run loop
            self.traps.error = err
            uc.emu_stop()
            return 0
        finally:
            self._time(t0)

    def _write(self, uc: Uc, offset: int, size: int, value: int, base: Any) -> None:
        t0 = time.perf_counter_ns()
        try:
            addr = base + offset
            eip = self._account(addr, True)
            self.bus.write(addr, size, value)
            if self.ctx.irq_deliverable():
                op = self.traps.decode(eip)
                if op.mnemonic == "mov" and op.operands and isinstance(op.operands[0], Mem):
                    self.resume = op.next_address
                    uc.emu_stop()
        except BaseException as err:
            self.traps.error = err
            uc.emu_stop()
        finally:
            self._time(t0)

    def _time(self, t0: int) -> None:
        if self.traps.fast is not None:
            self.traps.fast.leave()
        dt = time.perf_counter_ns() - t0
        self.ctx.stats.vmm_ns += dt
        self.ctx.stats.vmm_ns_by_kind["io"] += dt
