"""The local APIC of the one virtual CPU (MMIO 0xFEE00000).

Reference: Intel SDM vol. 3A chapter 10 ("Advanced Programmable Interrupt Controller":
§10.4 registers, §10.5.1 LVT, §10.5.4 the timer, §10.6 ICR, §10.8 IRR/ISR/TMR, TPR and
PPR, EOI). Where the SDM leaves room or QEMU differs, QEMU's hw/intc/apic.c and
apic_common.c (7.2) are followed, since QEMU is the reference guests are compared with:

* registers are read and written as aligned 32-bit words; narrower loads read 0 and
  narrower stores are ignored; reading a register that does not exist reads 0 and sets
  ESR bit 7 (illegal register address), which accumulates (writes to ESR are ignored);
* version 0x00050014 (version 0x14, six LVT entries); DFR reads (model << 28) | 0x0FFFFFFF;
* the timer counts virtual ns divided by the divide configuration (a 1 GHz APIC bus
  clock); a periodic timer's period is (initial count + 1) << shift, one-shot fires once
  `initial count` ticks after the load; a masked timer is not armed (unmasking it arms
  it again from the load time); missed periods coalesce into one interrupt;
* PPR = max(TPR, highest ISR class); an IRR vector is delivered when its class is above
  PPR's; EOI clears the highest ISR bit and, for a level-triggered vector (TMR), tells
  the I/O APIC (`on_eoi`);
* ICR: fixed and lowest-priority IPIs to this CPU (by shorthand, physical ID, broadcast or
  logical destination) set IRR; INIT (level de-assert: arbitration sync) and STARTUP
  (SIPI) find no other CPU and do nothing; the delivery-status bit always reads idle.

State at entry is what SeaBIOS leaves (measured, tests/data/pcprobe.S): the APIC enabled
(SVR 0x1FF), LINT0 ExtINT level (0x8700, the 8259 in virtual wire mode), LINT1 NMI
(0x8400), the other LVT entries masked, its last IPI in the ICR (0x000C4610). One
difference follows the SDM on purpose: the divide configuration register's reset value 0
means divide by 2 (QEMU counts undivided until the guest writes it).
"""

from __future__ import annotations

from collections.abc import Callable

LAPIC_BASE = 0xFEE00000
LAPIC_SIZE = 0x1000
VERSION = 0x00050014
#: IA32_APIC_BASE at reset: the default base, enabled (bit 11), bootstrap processor (bit 8).
BASE_MSR_RESET = 0xFEE00900
BASE_ENABLE = 1 << 11

# Register indexes (offset >> 4).
R_ID, R_VERSION, R_TPR, R_APR, R_PPR, R_EOI, R_RRD, R_LDR, R_DFR, R_SVR = (
    0x02, 0x03, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F)
R_ISR, R_TMR, R_IRR = 0x10, 0x18, 0x20
R_ESR, R_ICR_LO, R_ICR_HI = 0x28, 0x30, 0x31
R_LVT_FIRST, R_LVT_LAST = 0x32, 0x37
R_INITIAL, R_CURRENT, R_DIVIDE = 0x38, 0x39, 0x3E
# LVT entries in register order.
LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = range(6)

SVR_ENABLE = 1 << 8
LVT_MASKED = 1 << 16
LVT_LEVEL = 1 << 15
LVT_PERIODIC = 1 << 17
ICR_DELIVERY_STATUS = 1 << 12
ESR_ILLEGAL_ADDRESS = 1 << 7
# Delivery modes (bits 8-10 of an LVT entry, the ICR, an I/O APIC redirection entry).
DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_SIPI, DM_EXTINT = 0, 1, 2, 4, 5, 6, 7

#: What SeaBIOS leaves: enabled, LINT0 ExtINT (level), LINT1 NMI (level), and in the ICR
#: its last IPI (INIT-SIPI to all others, looking for application processors).
BIOS_SVR = 0x1FF
BIOS_ICR = 0x000C4610
BIOS_LINT0 = 0x8700
BIOS_LINT1 = 0x8400


def _highest(bits: int) -> int:
    return bits.bit_length() - 1


def count_shift(divide_conf: int) -> int:
    """SDM §10.5.4 figure 10-10: bits 0, 1 and 3 select divide by 2, 4, ... 128, or 1."""
    return (((divide_conf & 3) | ((divide_conf >> 1) & 4)) + 1) & 7


class LocalApic:
    def __init__(self, clock: Callable[[], int], *, apic_id: int = 0, name: str = "lapic") -> None:
        self.name = name
        self.mmio = (range(LAPIC_BASE, LAPIC_BASE + LAPIC_SIZE),)
        self.clock = clock
        #: Told the vector of each EOI of a level-triggered interrupt (the I/O APIC's remote IRR).
        self.on_eoi: Callable[[int], None] = lambda vector: None
        #: The IA32_APIC_BASE MSR as the guest last wrote it (the VMM points this at the
        #: virtual CPU's MSR). Only bit 11 (global enable) is honoured: a guest that clears it
        #: gets the 8259 straight to the CPU, as with no APIC (runtime/devices/intc.py); moving
        #: the APIC elsewhere is not modelled (the registers stay at 0xFEE00000).
        self.base_msr: Callable[[], int] = lambda: BASE_MSR_RESET
        self.apic_id = apic_id
        self.tpr = 0
        self.svr = BIOS_SVR
        self.log_dest = 0
        self.dest_model = 0xF
        self.isr = self.irr = self.tmr = 0       # 256-bit vector sets
        self.esr = 0
        self.icr_lo, self.icr_hi = BIOS_ICR, 0
        self.lvt = [LVT_MASKED] * 6
        self.lvt[LVT_LINT0] = BIOS_LINT0
        self.lvt[LVT_LINT1] = BIOS_LINT1
        self.initial_count = 0
        self.load_ns = 0
        self.divide_conf = 0
        self.shift = count_shift(0)
        #: Virtual time of the next timer interrupt, None when the timer is not armed.
        self.next_timer_ns: int | None = None
        #: Statistics: interrupts accepted (IRR set), by source.
        self.timer_irqs = 0
        self.ipis = 0
        self.eois = 0

    # -- the interrupt side ----------------------------------------------------------------------
    @property
    def globally_enabled(self) -> bool:
        return bool(self.base_msr() & BASE_ENABLE)

    @property
    def software_enabled(self) -> bool:
        return bool(self.svr & SVR_ENABLE)

    def accept(self, vector: int, level: bool = False) -> None:
        """A fixed interrupt reaches this APIC (from the I/O APIC, an IPI, the LVT): IRR, and
        TMR for a level-triggered one (SDM §10.8.4)."""
        bit = 1 << (vector & 0xFF)
        self.irr |= bit
        if level:
            self.tmr |= bit
        else:
            self.tmr &= ~bit

    def ppr(self) -> int:
        isrv = max(_highest(self.isr), 0) >> 4
        return self.tpr if (self.tpr >> 4) >= isrv else isrv << 4

    def pending_vector(self) -> int:
        """QEMU's apic_irq_pending: the vector to deliver now (> 0), 0 for none, -1 for one
        held back by the processor priority. Nothing while software-disabled."""
        if not self.svr & SVR_ENABLE or not self.irr:
            return 0
        irrv = _highest(self.irr)
        ppr = self.ppr()
        if ppr and (irrv & 0xF0) <= (ppr & 0xF0):
            return -1
        return irrv

    def acknowledge(self) -> int:
        """The INTA cycle for an APIC interrupt: IRR -> ISR; the spurious vector if the
        priority held it back meanwhile (SDM §10.9)."""
        vector = self.pending_vector()
        if vector <= 0:
            return self.svr & 0xFF
        bit = 1 << vector
        self.irr &= ~bit
        self.isr |= bit
        return vector

    def accepts_pic(self) -> bool:
        """Whether the 8259's INTR reaches the CPU (QEMU's apic_accept_pic_intr): the APIC
        is globally disabled, or LINT0 is unmasked (virtual wire mode)."""
        return not self.globally_enabled or not self.lvt[LVT_LINT0] & LVT_MASKED

    def eoi(self) -> None:
        if not self.isr:
            return
        vector = _highest(self.isr)
        self.isr &= ~(1 << vector)
        self.eois += 1
        if self.tmr >> vector & 1:
            self.on_eoi(vector)

    def matches(self, dest: int, logical: bool) -> bool:
        """Whether a message for `dest` (8 bits) in physical or logical mode is for this CPU
        (SDM §10.6.2; QEMU's apic_get_delivery_bitmask)."""
        if not logical:
            return dest == 0xFF or dest == self.apic_id
        if self.dest_model == 0xF:              # flat model
            return bool(dest & self.log_dest)
        return (dest & 0xF0) == (self.log_dest & 0xF0) and bool(dest & self.log_dest & 0x0F)

    # -- the timer (SDM §10.5.4) ---------------------------------------------------------------
    def current_count(self, now_ns: int) -> int:
        d = (now_ns - self.load_ns) >> self.shift
        if self.lvt[LVT_TIMER] & LVT_PERIODIC:
            return self.initial_count - d % (self.initial_count + 1)
        return 0 if d >= self.initial_count else self.initial_count - d

    def _arm(self, now_ns: int) -> None:
        """QEMU's apic_next_timer: the first expiry after `now_ns`, or None."""
        self.next_timer_ns = None
        if self.lvt[LVT_TIMER] & LVT_MASKED:
            return
        d = (now_ns - self.load_ns) >> self.shift
        if self.lvt[LVT_TIMER] & LVT_PERIODIC:
            if not self.initial_count:
                return
            period = self.initial_count + 1
            d = (d // period + 1) * period
        else:
            if d >= self.initial_count:
                return
            d = self.initial_count + 1
        self.next_timer_ns = self.load_ns + (d << self.shift)

    def next_event_ns(self) -> int | None:
        return self.next_timer_ns

    def tick(self, now_ns: int) -> None:
        due = self.next_timer_ns
        if due is None or due > now_ns:
            return
        # Periods the VMM stepped over coalesce into one interrupt, as one IRR bit holds them.
        lvt = self.lvt[LVT_TIMER]
        if not lvt & LVT_MASKED and (lvt >> 8) & 7 == DM_FIXED:
            self.accept(lvt & 0xFF)
            self.timer_irqs += 1
        self._arm(max(now_ns, due))

    # -- MMIO ------------------------------------------------------------------------------------
    def mmio_read(self, addr: int, size: int) -> int:
        if size < 4:
            return 0
        index = ((addr - LAPIC_BASE) >> 4) & 0xFF
        if index == R_ID:
            return self.apic_id << 24
        if index == R_VERSION:
            return VERSION
        if index == R_TPR:
            return self.tpr
        if index == R_APR:
            return 0
        if index == R_PPR:
            return self.ppr()
        if index == R_EOI:
            return 0
        if index == R_LDR:
            return self.log_dest << 24
        if index == R_DFR:
            return (self.dest_model << 28) | 0x0FFFFFFF
        if index == R_SVR:
            return self.svr
        if R_ISR <= index < R_ISR + 8:
            return (self.isr >> (32 * (index - R_ISR))) & 0xFFFFFFFF
        if R_TMR <= index < R_TMR + 8:
            return (self.tmr >> (32 * (index - R_TMR))) & 0xFFFFFFFF
        if R_IRR <= index < R_IRR + 8:
            return (self.irr >> (32 * (index - R_IRR))) & 0xFFFFFFFF
        if index == R_ESR:
            return self.esr
        if index == R_ICR_LO:
            return self.icr_lo
        if index == R_ICR_HI:
            return self.icr_hi
        if R_LVT_FIRST <= index <= R_LVT_LAST:
            return self.lvt[index - R_LVT_FIRST]
        if index == R_INITIAL:
            return self.initial_count
        if index == R_CURRENT:
            return self.current_count(self.clock())
        if index == R_DIVIDE:
            return self.divide_conf
        self.esr |= ESR_ILLEGAL_ADDRESS
        return 0

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        if size < 4:
            return
        value &= 0xFFFFFFFF
        index = ((addr - LAPIC_BASE) >> 4) & 0xFF
        if index == R_ID:
            self.apic_id = value >> 24
        elif index == R_TPR:
            self.tpr = value & 0xFF
        elif index == R_EOI:
            self.eoi()
        elif index == R_LDR:
            self.log_dest = value >> 24
        elif index == R_DFR:
            self.dest_model = value >> 28
        elif index == R_SVR:
            self.svr = value & 0x1FF
        elif index == R_ICR_LO:
            self.icr_lo = value & ~ICR_DELIVERY_STATUS
            self._ipi()
        elif index == R_ICR_HI:
            self.icr_hi = value
        elif R_LVT_FIRST <= index <= R_LVT_LAST:
            n = index - R_LVT_FIRST
            self.lvt[n] = value
            if n == LVT_TIMER:
                self._arm(self.clock())
        elif index == R_INITIAL:
            self.initial_count = value
            self.load_ns = self.clock()
            self._arm(self.load_ns)
        elif index == R_DIVIDE:
            self.divide_conf = value & 0xB
            self.shift = count_shift(self.divide_conf)
        elif index in (R_VERSION, R_APR, R_PPR, R_RRD, R_ESR, R_CURRENT) or R_ISR <= index < R_IRR + 8:
            pass                                   # read-only (QEMU ignores these writes)
        else:
            self.esr |= ESR_ILLEGAL_ADDRESS

    def _ipi(self) -> None:
        """An ICR write (SDM §10.6.1): the one CPU is the only possible destination."""
        icr = self.icr_lo
        mode = (icr >> 8) & 7
        shorthand = (icr >> 18) & 3
        if shorthand == 0:
            to_me = self.matches(self.icr_hi >> 24, bool(icr & (1 << 11)))
        else:
            to_me = shorthand in (1, 2)            # self, all including self; 3 = all but self
        if to_me and mode in (DM_FIXED, DM_LOWEST):
            self.ipis += 1
            self.accept(icr & 0xFF, bool(icr & LVT_LEVEL))
        # INIT (reset or arbitration-ID sync), STARTUP, NMI, SMI: no other CPU exists to start
        # or interrupt; INIT or NMI to this CPU itself is not modelled.
