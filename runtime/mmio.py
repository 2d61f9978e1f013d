"""MMIO exits: loads and stores that reach a memory-mapped device (the APICs).

Each range of the `MmioBus` is mapped into Unicorn with `mmio_map`, so an access there
calls back into the VMM while every other guest access stays plain RAM at full speed.
Under VirtualBox's raw mode an MMIO page was not present in the shadow tables and each
access was a #PF exit emulated by IOM; here each is counted the same way, as an `io`
exit of class `mmio` at the guest EIP (virtual time: one exit).

The hook runs in the middle of the guest's instruction. Measured with unicorn 2.1.4
(counted slices, which ring1 always runs): EIP in the callback is the accessing
instruction's; `emu_stop()` from a *store* callback leaves EIP at that instruction, to be
executed again on resume, although the store already reached the device. So a store
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

from unicorn import Uc, UcError

from bt.errors import InternalError
from bt.operation import Mem
from runtime.context import Ctx
from runtime.cpu import EIP
from runtime.devices.bus import MmioBus
from runtime.traps import Traps


class MmioExits:
    def __init__(self, ctx: Ctx, traps: Traps, bus: MmioBus) -> None:
        self.ctx = ctx
        self.traps = traps
        self.bus = bus
        #: Set by a store that ended the slice: where the guest continues (after the MOV).
        self.resume: int | None = None

    def attach(self, uc: Uc) -> None:
        for start, size in self.bus.windows:
            try:
                uc.mmio_map(start, size, self._read, start, self._write, start)
            except UcError as err:
                raise InternalError(f"cannot map MMIO at {start:#x}+{size:#x}: {err}") from err

    def take_resume(self) -> int | None:
        resume, self.resume = self.resume, None
        return resume

    def _account(self, addr: int, write: bool) -> int:
        eip = self.ctx.cpu.read(EIP)
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
        dt = time.perf_counter_ns() - t0
        self.ctx.stats.vmm_ns += dt
        self.ctx.stats.vmm_ns_by_kind["io"] += dt
