"""Segment descriptors and the shadow GDT (ring compression, VirtualBox's SELM).

The CPU runs on the VMM's GDT at `bt.layout.VMM_GDT`. Slots below
`VMM_GDT_FIRST_SLOT` shadow the guest's GDT index for index, so the guest's own
selectors work unchanged; what differs (Intel SDM vol. 3 §3.4.5, §5.5):

- code/data descriptors with DPL 0 become DPL 1: the guest kernel runs at CPL 1
  and must be able to load its own segments (a data load needs max(CPL, RPL) <=
  DPL; a far JMP to non-conforming code needs DPL == CPL);
- DPL 3 (guest user) descriptors stay DPL 3;
- TSS and LDT descriptors are not shadowed (marked not present): the VMM's own
  TSS stays loaded, the guest's TSS is virtual (`VirtualCpu.tr`), read only for
  its ss0:esp0 on user -> kernel transitions;
- gates keep their fields (their target selectors name shadowed segments).

The VMM's own descriptors live in the last 16 slots (guests almost never reach them;
one that does is refused by `ShadowGdt.sync`). The real GDTR's limit is the guest's, so
those slots are beyond it: no guest selector, gate or far transfer can name them. The VMM
opens them only for its own few instructions (runtime/machine.py `open_vmm_slots`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from bt import layout
from bt.errors import GuestStop

# The VMM's slots, by index from VMM_GDT_FIRST_SLOT.
_F = layout.VMM_GDT_FIRST_SLOT
VMM_CS0 = (_F + 0) << 3          #: ring-0 flat code: the first IRETD into the guest
VMM_DS0 = (_F + 1) << 3          #: ring-0 flat data/stack for that IRETD
VMM_CS1 = ((_F + 2) << 3) | 1    #: ring-1 flat code: the guest's CS at multiboot entry, VMM stubs
VMM_DS1 = ((_F + 3) << 3) | 1    #: ring-1 flat data: the guest's DS/ES/SS at multiboot entry
VMM_CS3 = ((_F + 4) << 3) | 3    #: ring-3 flat code: runs the user -> kernel trampoline
VMM_TSS = (_F + 5) << 3          #: the VMM's TSS (ss1:esp1 = guest ss0|1:esp0)
VMM_GATE = ((_F + 6) << 3) | 3   #: DPL-3 call gate to the ring-1 completion stub
VMM_LDT = (_F + 7) << 3          #: the shadow LDT (bt.layout.VMM_LDT), loaded on guest LLDT
TYPE_LDT = 0x2

ACCESS_PRESENT = 0x80
ACCESS_S = 0x10                  # 1: code/data, 0: system
ACCESS_CODE = 0x08
TYPE_TSS_AVAIL, TYPE_TSS_BUSY = 0x9, 0xB
TYPE_CALL_GATE = 0xC


@dataclass(frozen=True)
class Descriptor:
    """An 8-byte GDT/LDT entry, decoded (SDM vol. 3 §3.4.5, figure 3-8)."""

    raw: int

    @classmethod
    def from_bytes(cls, b: bytes) -> Descriptor:
        return cls(int.from_bytes(b[:8], "little"))

    @property
    def access(self) -> int:
        return (self.raw >> 40) & 0xFF

    @property
    def present(self) -> bool:
        return bool(self.access & ACCESS_PRESENT)

    @property
    def dpl(self) -> int:
        return (self.access >> 5) & 3

    @property
    def is_system(self) -> bool:
        return not self.access & ACCESS_S

    @property
    def type(self) -> int:
        return self.access & 0xF

    @property
    def is_code(self) -> bool:
        return not self.is_system and bool(self.access & ACCESS_CODE)

    @property
    def base(self) -> int:
        r = self.raw
        return ((r >> 16) & 0xFFFFFF) | (((r >> 56) & 0xFF) << 24)

    @property
    def limit(self) -> int:
        r = self.raw
        lim = (r & 0xFFFF) | (((r >> 48) & 0xF) << 16)
        if (r >> 55) & 1:  # G: 4 KiB granularity
            lim = (lim << 12) | 0xFFF
        return lim

    def with_dpl(self, dpl: int) -> Descriptor:
        return Descriptor((self.raw & ~(3 << 45)) | (dpl << 45))

    def with_access(self, access: int) -> Descriptor:
        return Descriptor((self.raw & ~(0xFF << 40)) | (access << 40))

    def to_bytes(self) -> bytes:
        return self.raw.to_bytes(8, "little")


def segment(base: int, limit: int, access: int, flags: int = 0xC) -> Descriptor:
    """A code/data/system descriptor; `flags` is G D/B L AVL (0xC: 4 KiB pages, 32-bit)."""
    if flags & 0x8:
        limit >>= 12
    raw = struct.pack("<HHBBBB", limit & 0xFFFF, base & 0xFFFF, (base >> 16) & 0xFF, access,
                      (flags << 4) | ((limit >> 16) & 0xF), (base >> 24) & 0xFF)
    return Descriptor.from_bytes(raw)


def call_gate(selector: int, offset: int, dpl: int) -> Descriptor:
    """A 32-bit call gate (SDM vol. 3 §5.8.3, figure 5-8), no parameters copied."""
    raw = struct.pack("<HHBBH", offset & 0xFFFF, selector, 0,
                      ACCESS_PRESENT | (dpl << 5) | TYPE_CALL_GATE, offset >> 16)
    return Descriptor.from_bytes(raw)


def compress(d: Descriptor, ring: int = 1) -> Descriptor:
    """The shadow of one guest descriptor (module docstring). `ring` is the real ring of
    the guest kernel: 1, or 3 under `bt run --guest-ring 3` (runtime/ring3/), where every
    code/data descriptor below DPL 3 becomes DPL 3."""
    if not d.present:
        return d
    if d.is_system:
        if d.type in (0x1, 0x3, 0x9, 0xB, 0x2, 0x5):  # TSS (16/32-bit), LDT, task gate
            return Descriptor(0)
        return d
    if ring == 3:
        return d.with_dpl(3) if d.dpl < 3 else d
    return d.with_dpl(1) if d.dpl == 0 else d


def vmm_descriptors(area: layout.VmmArea = layout.HOME) -> dict[int, Descriptor]:
    """The VMM's own slots (selector -> descriptor), for the VMM area at `area`."""
    flat = 0xFFFFFFFF
    return {
        VMM_CS0: segment(0, flat, 0x9A),
        VMM_DS0: segment(0, flat, 0x92),
        VMM_CS1 & ~3: segment(0, flat, 0xBA),
        VMM_DS1 & ~3: segment(0, flat, 0xB2),
        VMM_CS3 & ~3: segment(0, flat, 0xFA),
        VMM_TSS: segment(area.linear(layout.VMM_TSS), layout.VMM_TSS_SIZE - 1, 0x80 | TYPE_TSS_AVAIL, 0x0),
        VMM_GATE & ~3: call_gate(VMM_CS1 & ~3, 0, 3),  # offset patched in by the machine
    }


class ShadowGdt:
    """Keeps the real GDT's guest slots equal to `compress` of the guest's GDT.

    VirtualBox write-protected the guest GDT to resync on writes; ring1 resyncs on
    LGDT, LTR, and whenever a segment load faults (then retries), which is enough
    for kernels that build their GDT before loading it."""

    def __init__(self, write_phys: Callable[[int, bytes], None],
                 read_linear: Callable[[int, int], bytes],
                 load_ldtr: Callable[[int, int, int], None],
                 area: Callable[[], layout.VmmArea] = lambda: layout.HOME,
                 set_limit: Callable[[int], None] = lambda limit: None, ring: int = 1) -> None:
        #: The real ring of the guest kernel (`compress`).
        self.ring = ring
        self._write = write_phys   # (phys, bytes) -> None
        self._area = area          # where the VMM area (so the shadow LDT) is now
        self._set_limit = set_limit  # the real GDTR's limit: the guest's (runtime/machine.py)
        self._read = read_linear   # (linear, size) -> bytes
        self._load_ldtr = load_ldtr  # (selector, base, limit) -> None: the real LDTR
        self.guest_base = 0
        self.guest_limit = 0
        self.synced = 0             #: number of guest slots currently shadowed
        self.ldt_selector = 0       #: the guest's LDTR (0: none)
        self.ldt_synced = 0

    def load(self, base: int, limit: int) -> None:
        """LGDT: shadow the guest's table; the real GDTR gets the guest's limit, so that a
        selector beyond it faults as the guest's table says and the VMM's slots stay out of
        reach (runtime/machine.py)."""
        self.guest_base, self.guest_limit = base, limit
        self.sync()
        self._set_limit(limit)

    def guest_descriptor(self, selector: int) -> Descriptor | None:
        """The guest's own descriptor for `selector` (GDT or LDT), or None if outside."""
        index = selector >> 3
        if selector & 4:
            ldt = self._guest_ldt()
            if ldt is None or index * 8 + 7 > ldt.limit:
                return None
            return Descriptor.from_bytes(self._read(ldt.base + index * 8, 8))
        if index == 0 or index * 8 + 7 > self.guest_limit:
            return None
        return Descriptor.from_bytes(self._read(self.guest_base + index * 8, 8))

    def _guest_ldt(self) -> Descriptor | None:
        if not self.ldt_selector:
            return None
        d = self.guest_descriptor(self.ldt_selector & ~4)
        if d is None or not d.present or not d.is_system or d.type != TYPE_LDT:
            return None
        return d

    def load_ldt(self, selector: int) -> bool:
        """LLDT: shadow the guest's LDT and load the real LDTR with the VMM's
        descriptor for the shadow; False if `selector` names no LDT."""
        self.ldt_selector = selector & 0xFFFC
        if not self.ldt_selector:
            self._load_ldtr(0, 0, 0)
            return True
        ldt = self._guest_ldt()
        if ldt is None:
            self.ldt_selector = 0
            return False
        self._sync_ldt(ldt)
        return True

    def _sync_ldt(self, ldt: Descriptor) -> None:
        count = min(ldt.limit + 1, layout.VMM_LDT_SIZE) // 8
        raw = self._read(ldt.base, count * 8) if count else b""
        out = bytearray()
        for i in range(count):
            out += compress(Descriptor.from_bytes(raw[i * 8:i * 8 + 8]), self.ring).to_bytes()
        if self.ldt_synced > count:
            out += bytes(8 * (self.ldt_synced - count))
        self._write(layout.VMM_LDT, bytes(out))
        self.ldt_synced = count
        self._point_ldtr(count * 8 - 1)

    def _point_ldtr(self, limit: int) -> None:
        """The real LDTR and its descriptor at the shadow LDT, wherever the VMM area is."""
        base = self._area().linear(layout.VMM_LDT)
        self._write(layout.VMM_GDT + VMM_LDT, segment(base, limit, 0x80 | TYPE_LDT, 0x0).to_bytes())
        self._load_ldtr(VMM_LDT, base, limit)

    def moved(self) -> None:
        """The VMM area moved (runtime/relocate.py): the shadow LDT's linear base with it."""
        if self.ldt_selector and self.ldt_synced:
            self._point_ldtr(self.ldt_synced * 8 - 1)

    def sync(self) -> None:
        count = (self.guest_limit + 1) // 8
        if count > layout.VMM_GDT_FIRST_SLOT:
            raise GuestStop("guest GDT reaches the VMM's descriptor slots",
                            detail=f"limit {self.guest_limit:#x}")
        raw = self._read(self.guest_base, count * 8) if count else b""
        out = bytearray(8)  # slot 0 stays null
        for i in range(1, count):
            out += compress(Descriptor.from_bytes(raw[i * 8:i * 8 + 8]), self.ring).to_bytes()
        # Slots the previous guest GDT used and this one does not become null.
        if self.synced > count:
            out += bytes(8 * (self.synced - count))
        self._write(layout.VMM_GDT, bytes(out))
        self.synced = count
        ldt = self._guest_ldt()
        if ldt is not None:
            self._sync_ldt(ldt)
