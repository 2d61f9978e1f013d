"""Virtual CPU state: what the guest believes its (ring-0) CPU holds.

IF/IOPL, CR0/2/3/4, GDTR/IDTR/LDTR/TR live in the state block in guest memory
(`bt.layout.STATE_FIELDS`), because patch code reads and writes them without
exiting: the block is the one truth, and these properties read and write it
(physical == linear in the VMM area). Debug registers and MSRs are only touched
by trapping instructions, so they live here in Python.

The virtual flags word sits in the state block's patch-writable page, which the guest
kernel can write too (bt/layout.py). The VMM only ever takes IF and IOPL from it, so a
corrupted word cannot hand it an impossible value; `check_vflags` (once per time slice,
runtime/vm.py) still catches a word patch code could never have produced, counts it and
rewrites its invariant bytes, so that the guest's damage is reported instead of carried.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable

from bt import layout
from runtime.cpu import CS, Cpu

IF = 1 << 9
IOPL_MASK = 3 << 12
#: EFLAGS bits the virtual flags word owns; all others are the real ones.
VIRTUAL_FLAGS = IF | IOPL_MASK

# MSRs 32-bit kernels touch (Intel SDM vol. 4, table 2-2).
MSR_TSC = 0x10
MSR_APIC_BASE = 0x1B
MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = 0x174, 0x175, 0x176
MSR_EFER = 0xC0000080
MSR_PAT = 0x277
MSR_MISC_ENABLE = 0x1A0
#: IA32_BIOS_SIGN_ID: the microcode revision in the high half after a WRMSR of 0 and CPUID
#: (Linux's intel_get_microcode_revision). QEMU's qemu32 reads 0x1_00000000 (revision 1).
MSR_UCODE_REV = 0x8B
UCODE_REV = 0x1_00000000

_VFLAGS = layout.state("vflags")
_PENDING = layout.state("pending")
_CR = {0: layout.state("cr0"), 2: layout.state("cr2"), 3: layout.state("cr3"), 4: layout.state("cr4")}
_GDTR, _IDTR = layout.state("gdtr"), layout.state("idtr")
_VFLAGS_W = layout.state_field("vflags").offset // 4   # in the patch-writable page
_PENDING_W = layout.state_field("pending").offset // 4
_CR_W = {n: layout.state_field(f"cr{n}").offset // 4 for n in (0, 2, 3, 4)}
_LDTR, _TR = layout.state("ldtr"), layout.state("tr")

#: The flags word's bits that vary (IF at bit 9, IOPL at bits 4-5) and its fixed value
#: elsewhere (bit 1, as in EFLAGS): what `check_vflags` verifies.
_VFLAGS_VARIABLE = IF | (3 << 4)
_VFLAGS_FIXED = 0x2

#: Bits of DR6/DR7 that always read 1 (SDM §17.2.3-4).
DR6_FIXED = 0xFFFF0FF0
DR7_FIXED = 0x00000400

#: CR0 at multiboot entry: PE and ET (what QEMU's CPU shows after its loader).
CR0_RESET = 0x00000011


class VirtualCpu:
    def __init__(self, cpu: Cpu) -> None:
        self.cpu = cpu
        self.dr = [0, 0, 0, 0, 0, 0, DR6_FIXED, DR7_FIXED]  # DR0-7 reset values (SDM §17.2)
        self.msr: dict[int, int] = {
            MSR_APIC_BASE: 0xFEE00900,  # BSP, enabled, default base (SDM §10.4.4)
            MSR_SYSENTER_CS: 0, MSR_SYSENTER_ESP: 0, MSR_SYSENTER_EIP: 0,
            MSR_EFER: 0, MSR_PAT: 0x0007040600070406, MSR_MISC_ENABLE: 1, MSR_UCODE_REV: UCODE_REV,
            -1: 1,   # XCR0 (XSETBV/XGETBV), x87 only; -1 is no MSR index RDMSR could name
        }

        # The state block's two pages as 32-bit words: index = field offset / 4.
        self._w = cpu.words(layout.STATE_BASE, layout.STATE_SIZE // 4)
        self._pw = cpu.words(layout.PATCH_STATE_BASE, layout.PATCH_STATE_SIZE // 4)
        #: Python mirror of CR0/CR3/CR4 for page walks: CR writes always exit
        #: (bt.isa: mov_to_cr is a hypercall), so the mirror cannot go stale.
        self._paging = (CR0_RESET, 0, 0)
        #: Told when `pending` turns non-zero or zero (the patch manager's gates:
        #: runtime/patching.py).
        self.on_pending: Callable[[bool], None] | None = None
        #: True while the guest runs in user mode entered by a return the VMM emulated
        #: (IRET, RETF, SYSEXIT: patched, the IRET rule exits on every return to user mode),
        #: so that the virtual IF and IOPL are the user's, from the frame. False after every
        #: entry into the guest kernel: a native IRET to ring 3 at CPL 1 is legal, never seen,
        #: and silently keeps the real IF = 1 and IOPL = 0 (the unpatched raw-mode leak:
        #: docs/threat-model.md).
        self.user_flags = False
        #: The real ring of the guest kernel: 1, or 3 under `bt run --guest-ring 3`.
        self.ring = 1
        #: Ring 3 only: whether the guest is in its kernel (the VMM sets it on every
        #: transition, runtime/ring3/); in ring 1 the real CPL says it.
        self.kernel_mode = True

    def guest_cpl(self, cs: int | None = None) -> int:
        """The CPL the guest believes it runs at: 0 (its kernel) or 3 (its user code). In ring
        1 the real CPL tells (real 1 is the guest's 0; `cs` saves the read when the caller has
        it); in ring 3 the real CPL is 3 for both and `kernel_mode` tells. The one question
        every "guest kernel or guest user?" decision asks (traps, delivery, I/O checks)."""
        if self.ring == 3:
            return 0 if self.kernel_mode else 3
        rpl = (self.cpu.read(CS) if cs is None else cs) & 3
        return 0 if rpl == 1 else rpl

    def ring1_cpl(self, cs: int | None = None) -> int:
        """The real CPL the guest would run at in ring 1: 1 for its kernel, 3 for its user code
        (the real CPL itself in ring 1). Code written in ring 1's terms (delivery's privilege
        checks, the exits) asks this and works unchanged under --guest-ring 3."""
        if self.ring == 3:
            return 1 if self.kernel_mode else 3
        return (self.cpu.read(CS) if cs is None else cs) & 3

    def reset(self) -> None:
        self.cpu.phys_write(layout.STATE_BASE, bytes(layout.STATE_SIZE))
        self.cpu.phys_write(layout.PATCH_STATE_BASE, bytes(layout.PATCH_STATE_SIZE))
        self.vflags = 0x2            # IF = 0, IOPL = 0: multiboot entry state
        self.set_cr(0, CR0_RESET)

    # -- the state block ----------------------------------------------------------------------
    # The word keeps IF at bit 9 alone in its byte and IOPL at bits 4-5 (bt.layout `vflags`:
    # CLI/STI patch code is one byte store, PUSHF/POPF one aligned word access); these give
    # and take the EFLAGS layout.
    @property
    def vflags(self) -> int:
        w = int(self._pw[_VFLAGS_W])
        return (w & (IF | 0x2)) | ((w << 8) & IOPL_MASK)

    @vflags.setter
    def vflags(self, value: int) -> None:
        self._pw[_VFLAGS_W] = 0x2 | (value & IF) | ((value & IOPL_MASK) >> 8)

    @property
    def vif(self) -> bool:
        return bool(self._pw[_VFLAGS_W] & IF)

    def vflags_address(self) -> int:
        """Host address of the flags word (runtime/native/fastexit.c writes IF there)."""
        return ctypes.addressof(self._pw) + 4 * _VFLAGS_W

    def set_vif(self, on: bool) -> None:
        w = self._pw
        w[_VFLAGS_W] = (w[_VFLAGS_W] | IF) if on else (w[_VFLAGS_W] & ~IF)

    def check_vflags(self) -> int | None:
        """None if the flags word holds only what the VMM and patch code write (byte 0
        0x02 with the IOPL at bits 4-5, byte 1 0x00 or 0x02, bytes 2-3 zero); otherwise the bad word,
        after rewriting it to 0x02 with its IF and IOPL bits kept. A handful of ns: called
        once per slice, not per instruction."""
        w = int(self._pw[_VFLAGS_W])
        if w & ~_VFLAGS_VARIABLE == _VFLAGS_FIXED:
            return None
        self._pw[_VFLAGS_W] = _VFLAGS_FIXED | (w & _VFLAGS_VARIABLE)
        return w

    @property
    def pending(self) -> int:
        return int(self._w[_PENDING_W])

    @pending.setter
    def pending(self, value: int) -> None:
        was = self._w[_PENDING_W]
        self._w[_PENDING_W] = value
        if bool(was) != bool(value) and self.on_pending is not None:
            self.on_pending(bool(value))

    def cr(self, n: int) -> int:
        return int(self._w[_CR_W[n]])

    def set_cr(self, n: int, value: int) -> None:
        self._w[_CR_W[n]] = value & 0xFFFFFFFF
        if n != 2:
            w = self._w
            self._paging = (int(w[_CR_W[0]]), int(w[_CR_W[3]]), int(w[_CR_W[4]]))

    def paging_regs(self) -> tuple[int, int, int]:
        return self._paging

    def table(self, which: str) -> tuple[int, int]:
        """(base, limit) of "gdtr" or "idtr"."""
        limit, base = struct.unpack("<HI", self.cpu.phys_read(_GDTR if which == "gdtr" else _IDTR, 6))
        return base, limit

    def set_table(self, which: str, base: int, limit: int) -> None:
        self.cpu.phys_write(_GDTR if which == "gdtr" else _IDTR, struct.pack("<HI", limit, base))

    @property
    def ldtr(self) -> int:
        return int.from_bytes(self.cpu.phys_read(_LDTR, 2), "little")

    @ldtr.setter
    def ldtr(self, sel: int) -> None:
        self.cpu.phys_write(_LDTR, (sel & 0xFFFF).to_bytes(2, "little"))

    @property
    def tr(self) -> int:
        return int.from_bytes(self.cpu.phys_read(_TR, 2), "little")

    @tr.setter
    def tr(self, sel: int) -> None:
        self.cpu.phys_write(_TR, (sel & 0xFFFF).to_bytes(2, "little"))

    def guest_eflags(self, real: int) -> int:
        """EFLAGS as the guest must see them: real bits, virtual IF and IOPL."""
        return (real & ~VIRTUAL_FLAGS) | (self.vflags & VIRTUAL_FLAGS)

    def user_eflags(self, real: int) -> int:
        """EFLAGS of guest user mode as a frame must show them: the virtual IOPL, and the
        virtual IF when a return the VMM emulated set it (`user_flags`), else the real IF,
        which is what user mode ran with."""
        eflags = self.guest_eflags(real)
        return eflags if self.user_flags else (eflags & ~IF) | (real & IF)

    def user_if(self) -> bool:
        """Whether guest user mode takes interrupts now (see `user_flags`)."""
        return self.vif if self.user_flags else True
