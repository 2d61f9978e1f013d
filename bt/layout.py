"""Every fixed guest address ring1 uses, and why it has its value.

One module, so that the runtime, the patch manager and the static patcher agree
(Firecracker's `arch::layout` is the model). It lives in `bt`, the lowest layer,
because both `patchmgr` (static patching writes the patch segment) and `runtime`
need it and neither may import the other's private knowledge.

Physical memory seen by the guest
---------------------------------
Guest RAM starts at 0 and is `RAM_DEFAULT` bytes unless the user asks for more.
Multiboot kernels load at 1 MiB and allocate upward from their `end` symbol, so
nothing of the VMM's may sit in low memory.

The VMM area
------------
The VMM's own 4 MiB: the real GDT, IDT, TSS and LDT, VMM code, the state block, the
shadow page directory, the VMM page table and patch memory. It lives in host memory
mapped at its *home*, the top 4 MiB of the physical address space (0xFFC00000-4 GiB,
above any guest RAM: VMware kept its monitor in the top 4 MiB too). The constants below
are home addresses: physical addresses, and linear ones while the area is at home.

Where the area sits in the guest's *linear* space can change. While guest paging is off,
linear == physical and the area is at home. Once the guest turns paging on, the CPU runs
on a shadow page directory (`VMM_SHADOW_PD`, runtime/shadowpd.py): the guest's own
entries, plus one entry, in a 4 MiB slot the guest does not use, that points at the VMM's
page table (`VMM_PT`). When the guest maps that slot itself (xv6 maps 0xFE000000-4 GiB
for its LAPIC and I/O APIC, Linux puts its fixmap there), the VMM moves to a free slot
and carries on, as VirtualBox's PGM relocated its hypervisor area on a mapping conflict:
`VmmArea` says where the area is now, and everything that holds a linear VMM address
(GDTR/IDTR/TR/LDTR bases, the TSS, the call gate, patch code) is rewritten
(runtime/relocate.py). Physical addresses never change.

In the area, guest ring 1 can reach what it must (patch code runs there and reads the
state block without exiting) and guest ring 3 nothing but `VMM_USER_PAGE`, read-only,
because a transition from guest ring 3 to ring 1 goes through a call gate whose far CALL
has to be fetched at CPL 3 (runtime/machine.py).

Reachable from ring 1 is not writable from ring 1: the runtime write-protects every
page of the area in Unicorn except `PATCH_STATE_BASE` (runtime/guard.py), so a guest
store anywhere else in it is dropped and reported. That is why the state block is two
pages: the fields only the VMM writes (`STATE_BASE`, read-only for the guest and for
patch code) and the fields patch code stores to at full speed (`PATCH_STATE_BASE`,
writable at CPL 1 and so by the guest kernel too: patch code and the kernel share CPL 1
and flat segments, and ring1 does not truncate segments as VMware and Xen did).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB

PAGE_SIZE = 4 * KiB

#: Default guest RAM: enough for every sample and for a small real kernel's early boot.
RAM_DEFAULT = 64 * MiB
#: Where multiboot kernels are loaded; ring1 refuses segments below it only if they overlap BIOS areas.
KERNEL_LOAD_MIN = 1 * MiB
#: Multiboot information structure and its memory map, in conventional memory below
#: 640 KiB, at the addresses QEMU's -kernel loader uses (hw/i386/multiboot.c: the e820
#: map at 0x9000, the info structure at 0x9000 + 0x500), so a guest that prints EBX or
#: mmap_addr prints what it prints under QEMU. The command line and the boot loader
#: name go after the kernel image (page-aligned end), also as QEMU does: runtime/boot.py.
MULTIBOOT_MMAP = 0x9000
MULTIBOOT_INFO = 0x9500
#: What QEMU's multiboot loader (its option ROM) leaves the kernel at entry, measured
#: with a probe kernel under qemu-system-i386 7.2: the loader's GDT (5 descriptors: null,
#: flat 32-bit code 0x08, flat data 0x10, 16-bit code 0x18 and data 0x20) at this address
#: with limit 0x27, the real-mode IDTR (base 0, limit 0x3FF), ESP and EFLAGS (PF set).
#: ring1 leaves the same (runtime/boot.py `LOADER_GDT`), so a kernel that reloads CS 0x08
#: or DS 0x10 before its own LGDT, or prints what it finds, sees what it sees under QEMU.
LOADER_GDT_BASE = 0xCB2B8
ENTRY_ESP = 0x6F08
ENTRY_EFLAGS = 0x6

#: Where ring1's Linux loader (runtime/linuxboot.py) puts what a boot loader hands a Linux
#: kernel, at the addresses QEMU's -kernel loader uses for a protocol 2.02+ bzImage
#: (hw/i386/x86.c x86_load_linux: real_addr 0x10000, cmdline_addr 0x20000, prot_addr 1 MiB):
#: the zero page (struct boot_params) where QEMU puts the setup sectors, which hold the
#: header the zero page starts from; the boot GDT right after it (the setup code's own GDT
#: lives in those sectors too); the command line. All below 640 KiB, in RAM the kernel
#: reserves at boot (it keeps the first 1 MiB to itself).
LINUX_ZERO_PAGE = 0x10000
LINUX_BOOT_GDT = 0x11000
LINUX_CMDLINE = 0x20000
#: Where the protected-mode part of a bzImage goes (QEMU's prot_addr; the header's code32_start).
LINUX_PROT_ADDR = 0x100000

#: The VMM area's home: the top 4 MiB of the physical address space, one page-directory
#: slot (index 1023) of the linear space while the area is at home.
VMM_BASE = 0xFFC00000
VMM_SIZE = 4 * MiB
VMM_PDE_INDEX = VMM_BASE >> 22
#: Linear slots are 4 MiB (one page-directory entry of 32-bit paging).
SLOT_SIZE = 4 * MiB

#: The real GDT the CPU uses: a shadow of the guest's GDT (same indexes, DPL 0
#: descriptors compressed to DPL 1) followed by the VMM's own descriptors. 64 KiB
#: holds all 8192 descriptors a GDT can have, so any guest GDT fits.
VMM_GDT = VMM_BASE + 0x00000
VMM_GDT_SIZE = 64 * KiB
#: The VMM's own descriptors occupy the last slots of the shadow GDT, which guests
#: almost never use (a guest GDT that reaches them is refused with a diagnosis).
VMM_GDT_FIRST_SLOT = 8192 - 16

#: The real IDT. Unicorn hands every exception to the VMM's interrupt hook and never
#: reads this table, but the CPU state must hold a valid one, all gates not present.
VMM_IDT = VMM_BASE + 0x10000
VMM_IDT_SIZE = 256 * 8

#: The real TSS: ss1:esp1 holds the guest's ss0:esp0 (compressed to RPL 1) so that a
#: transition from guest ring 3 lands on the guest kernel stack in ring 1. Its I/O
#: bitmap is all ones so that every port faults on hardware with IOPL 0.
VMM_TSS = VMM_BASE + 0x11000
VMM_TSS_SIZE = 104 + 8 * KiB + 1

#: VMM code the guest's CPU runs: the IRETD that first enters ring 1, trampolines.
VMM_CODE = VMM_BASE + 0x14000
#: The one user-readable page (see module docstring): the ring 3 -> ring 1 trampoline.
VMM_USER_PAGE = VMM_BASE + 0x15000

#: The state block's protected page: fields only the VMM writes, patch code reads
#: (`STATE_FIELDS` with `patch_writes` False). Write-protected against the guest.
STATE_BASE = VMM_BASE + 0x16000
STATE_SIZE = PAGE_SIZE

#: Stacks the VMM itself uses: ring 0 for the first IRETD into the guest, ring 1
#: scratch for building frames. Guest stacks are the guest's own.
VMM_STACK0_TOP = VMM_BASE + 0x18000
VMM_STACK1_TOP = VMM_BASE + 0x1A000
#: One page each: the state block sits right below stack 0, so two pages would overlap it.
VMM_STACK_SIZE = PAGE_SIZE

#: The page table that maps the VMM area when the guest enables paging: page i of the
#: slot -> home + i * 4 KiB, wherever the slot is (so it never changes on a move).
VMM_PT = VMM_BASE + 0x1A000

#: The state block's patch-writable page: the fields patch code stores to (virtual IF/
#: IOPL, scratch words, its private stack, rule data). The one page of the VMM area the
#: guest can write; in its own page so that protecting the rest costs patch code nothing.
PATCH_STATE_BASE = VMM_BASE + 0x1B000
PATCH_STATE_SIZE = PAGE_SIZE

#: The shadow page directory the CPU walks while guest paging is on (real CR3): the guest's
#: entries copied, the VMM's slot pointing at `VMM_PT` (runtime/shadowpd.py).
VMM_SHADOW_PD = VMM_BASE + 0x1C000

#: The shadow LDT: the guest's LDT with DPL 0 compressed to 1 like the GDT (a guest
#: LLDT loads the real LDTR with a VMM descriptor pointing here). 64 KiB: any LDT fits.
VMM_LDT = VMM_BASE + 0x20000
VMM_LDT_SIZE = 64 * KiB

#: Ring 3 only (`bt run --guest-ring 3`, runtime/ring3/): the kernel view's shadow page
#: directory and a pool of shadow page tables (a virtual TLB, filled on page faults). The CPU
#: walks them in the VMM's host memory, write-protected like the rest of the area: the guest
#: names physical pages in its own entries, never these.
VMM_RING3_PD = VMM_BASE + 0x30000
VMM_RING3_PT = VMM_BASE + 0x31000
VMM_RING3_PT_PAGES = 256

#: Patch memory: patch blocks and hypercall stubs (2 MiB, as PATM had).
PATCH_BASE = VMM_BASE + 2 * MiB
PATCH_SIZE = 2 * MiB


@dataclass(frozen=True)
class StateField:
    name: str
    offset: int
    size: int
    why: str
    #: True: patch code stores to it, so it lives in the writable page `PATCH_STATE_BASE`;
    #: False: only the VMM writes it, in the write-protected page `STATE_BASE`.
    patch_writes: bool = False

    @property
    def address(self) -> int:
        return (PATCH_STATE_BASE if self.patch_writes else STATE_BASE) + self.offset


#: The state block: the one truth about virtual CPU state that patch code reads (and
#: partly writes) without exiting and the runtime reads and writes on every exit.
#: Offsets are within the field's page (`StateField.address`).
STATE_FIELDS: tuple[StateField, ...] = (
    # -- STATE_BASE: the VMM writes these (at exits); patch code and the guest only read them.
    StateField("pending", 0x00, 4,
               "non-zero while an interrupt waits for virtual IF = 1: STI/POPF exit only then"),
    StateField("cr0", 0x04, 4, "virtual CR0 (MOV r,CR0 and SMSW read it)"),
    StateField("cr2", 0x08, 4, "virtual CR2, the last page-fault address delivered to the guest"),
    StateField("cr3", 0x0C, 4, "virtual CR3"),
    StateField("cr4", 0x10, 4, "virtual CR4"),
    StateField("in_patch", 0x14, 4, "reserved: non-zero while patch code runs (nothing sets it yet)"),
    StateField("gdtr", 0x18, 6, "guest GDTR as SGDT stores it: limit (2 bytes) then base (4)"),
    StateField("idtr", 0x20, 6, "guest IDTR as SIDT stores it"),
    StateField("ldtr", 0x28, 2, "guest LDTR selector (SLDT)"),
    StateField("tr", 0x2A, 2, "guest TR selector (STR)"),
    # -- PATCH_STATE_BASE: patch code stores to these (the emitted CLI/STI/POPF/IRET code,
    # EmitContext.scratch/flags_saved/data in patchmgr/rule.py).
    StateField("vflags", 0x00, 4,
               "virtual IF at bit 9, alone in byte 1 (0x02 or 0x00) so that CLI/STI are one flag-free byte "
               "store; virtual IOPL (0-3) at bits 4-5 of byte 0, whose bit 1 is set; bytes 2-3 zero. So "
               "PUSHF and POPF read and write both as one aligned 16-bit word (an unaligned one takes "
               "Unicorn's byte-by-byte slow path). runtime/vcpu.py converts to and from the EFLAGS "
               "layout and checks the fixed bits",
               patch_writes=True),
    StateField("scratch", 0x10, 16, "scratch words for patch code (saved registers)", patch_writes=True),
    StateField("saved_esp", 0x20, 4,
               "guest ESP while patch code saves EFLAGS on its private stack (never below the guest's ESP)",
               patch_writes=True),
    StateField("pstack", 0x24, 28, "patch code's private stack: room for the EFLAGS pushes of one bracket",
               patch_writes=True),
    StateField("rule_data", 0x40, 96,
               "words patch rules (plugins too) own, e.g. a virtual TSC; patchmgr hands them out",
               patch_writes=True),
)

_FIELDS = {f.name: f for f in STATE_FIELDS}


def state(name: str) -> int:
    """Guest address of a state-block field, e.g. `state("vflags")`."""
    return _FIELDS[name].address


def state_field(name: str) -> StateField:
    return _FIELDS[name]


@dataclass(frozen=True)
class Region:
    """A named part of the VMM area (what guard reports name)."""

    name: str
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


#: Every part of the VMM area, in address order; the pages between them are unused.
VMM_REGIONS: tuple[Region, ...] = (
    Region("gdt", VMM_GDT, VMM_GDT_SIZE),
    Region("idt", VMM_IDT, VMM_IDT_SIZE),
    Region("tss", VMM_TSS, VMM_TSS_SIZE),
    Region("vmm code", VMM_CODE, PAGE_SIZE),
    Region("user page", VMM_USER_PAGE, PAGE_SIZE),
    Region("state", STATE_BASE, STATE_SIZE),
    Region("stack0", VMM_STACK0_TOP - VMM_STACK_SIZE, VMM_STACK_SIZE),
    Region("stack1", VMM_STACK1_TOP - VMM_STACK_SIZE, VMM_STACK_SIZE),
    Region("page table", VMM_PT, PAGE_SIZE),
    Region("patch state", PATCH_STATE_BASE, PATCH_STATE_SIZE),
    Region("shadow page directory", VMM_SHADOW_PD, PAGE_SIZE),
    Region("ldt", VMM_LDT, VMM_LDT_SIZE),
    Region("ring 3 kernel view", VMM_RING3_PD, PAGE_SIZE * (1 + VMM_RING3_PT_PAGES)),
    Region("patch memory", PATCH_BASE, PATCH_SIZE),
)


def region_at(address: int) -> str:
    """The name of the VMM region holding home address `address` ("unused" between regions)."""
    for r in VMM_REGIONS:
        if r.start <= address < r.end:
            return r.name
    return "unused"


@dataclass(frozen=True)
class VmmArea:
    """Where the VMM area is in the guest's linear space: `base`, a 4 MiB-aligned slot.

    The module's constants are home addresses; `linear(home)` gives where one of them is
    now, `home(linear)` the way back (for a linear address inside the area). Physical
    addresses are always the home ones.
    """

    base: int = VMM_BASE

    def __post_init__(self) -> None:
        if self.base % SLOT_SIZE or not 0 <= self.base <= 0x100000000 - SLOT_SIZE:
            raise ValueError(f"VMM area base {self.base:#x} is not a 4 MiB slot")

    @property
    def delta(self) -> int:
        """How far the area is from home (linear - home)."""
        return self.base - VMM_BASE

    @property
    def end(self) -> int:
        return self.base + VMM_SIZE

    @property
    def pde_index(self) -> int:
        return self.base >> 22

    def contains(self, linear: int) -> bool:
        return self.base <= linear < self.base + VMM_SIZE

    def linear(self, home: int) -> int:
        """The linear address of home address `home` now."""
        return home + self.base - VMM_BASE

    def home(self, linear: int) -> int:
        """The home (and physical) address of a linear address in the area."""
        return linear - self.base + VMM_BASE

    def carry(self, linear: int, to: VmmArea) -> int:
        """`linear`, an address in this area, where it is when the area sits at `to`
        (other addresses are returned as they are)."""
        return to.linear(self.home(linear)) if self.contains(linear) else linear

    def state(self, name: str) -> int:
        """Linear address of a state-block field now."""
        return self.linear(_FIELDS[name].address)

    @property
    def patch_base(self) -> int:
        return self.linear(PATCH_BASE)

    def in_patch_memory(self, linear: int) -> bool:
        return self.linear(PATCH_BASE) <= linear < self.linear(PATCH_BASE) + PATCH_SIZE


#: The area at home, where it starts every run.
HOME = VmmArea()


def _check() -> None:
    for a, b in itertools.pairwise(VMM_REGIONS):
        assert a.end <= b.start, f"layout overlap or disorder: {a.name} and {b.name}"
    assert VMM_REGIONS[0].start >= VMM_BASE and VMM_REGIONS[-1].end <= VMM_BASE + VMM_SIZE
    # The write guard works on whole pages: the writable state page shares its page with nothing.
    assert PATCH_STATE_BASE % PAGE_SIZE == 0 and PATCH_STATE_SIZE == PAGE_SIZE
    for writes, base, size in ((False, STATE_BASE, STATE_SIZE), (True, PATCH_STATE_BASE, PATCH_STATE_SIZE)):
        end = 0
        for f in sorted((f for f in STATE_FIELDS if f.patch_writes == writes), key=lambda f: f.offset):
            assert f.offset >= end, f"state field {f.name} overlaps"
            end = f.offset + f.size
        assert end <= size, f"state page at {base:#x} overflows"
    assert len(_FIELDS) == len(STATE_FIELDS), "state field names repeat"


_check()
