"""Segment descriptors and the shadow GDT (ring compression, VirtualBox's SELM).

The CPU runs on the VMM's GDT at `bt.layout.VMM_GDT`. Slots below
`VMM_GDT_FIRST_SLOT` shadow the guest's GDT index for index, so the guest's own
selectors work unchanged; what differs (Intel SDM vol. 3 §3.4.5, §5.5):

- code/data descriptors with DPL 0 become DPL 1: the guest kernel runs at CPL 1
  and must be able to load its own segments (a data load needs max(CPL, RPL) <=
  DPL; a far JMP to non-conforming code needs DPL == CPL);
  (present or not: the CPU checks DPL before P, and a not-present one must give #NP);
- DPL 3 (guest user) descriptors stay DPL 3;
- TSS, LDT descriptors and task gates are not shadowed (null): the VMM's own TSS stays
  loaded, the guest's TSS is virtual (`VirtualCpu.tr`), read only for its ss0:esp0 on
  user -> kernel transitions; no hardware task switch ever runs on a guest descriptor;
- call gates are shadowed not present (DPL 0 -> 1): the CPU never takes one; the #NP it
  raises instead lets the VMM emulate the call with the guest's own rules
  (runtime/gates.py), so no guest gate can lead anywhere the guest's could not.

The VMM's own descriptors live in the last 16 slots. The real GDTR's limit is the
guest's, but never beyond the slot before them, so no guest selector, gate or far transfer
can name them; a guest GDT that reaches them must keep them null (`ShadowGdt.sync`). The
VMM opens them only for its own few instructions (runtime/machine.py `open_vmm_slots`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from bt import layout
from bt.errors import GuestStop
from runtime.paging import PageFault

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
TYPE_CALL_GATE16 = 0x4


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
    code/data descriptor (and call gate) below DPL 3 becomes DPL 3."""
    if d.is_system:
        if d.type in (0x1, 0x3, 0x9, 0xB, 0x2, 0x5):  # TSS (16/32-bit), LDT, task gate
            return Descriptor(0)
        if d.type in (TYPE_CALL_GATE16, TYPE_CALL_GATE):
            # Never used by the CPU: not present, so that any far CALL/JMP through it is a #NP
            # the VMM emulates with the guest's rules (runtime/gates.py). DPL 0 becomes 1 so
            # the CPU's own DPL check lets the guest kernel (CPL 1) reach that #NP.
            d = d.with_access(d.access & ~ACCESS_PRESENT)
            return _raise_dpl(d, ring)
        return d
    # Not-present ones too: the CPU checks DPL before P, and the guest must get #NP.
    return _raise_dpl(d, ring)


def _raise_dpl(d: Descriptor, ring: int) -> Descriptor:
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
    """Keeps the real GDT's guest slots equal to `compress` of the guest's GDT, and the
    shadow LDT equal to `compress` of the guest's LDT.

    Shadowed on LGDT and LLDT, and again, descriptor by descriptor, whenever the guest
    writes its GDT or LDT afterwards: their pages are write-monitored
    (runtime/tablewatch.py), as VirtualBox's SELM did (Linux rewrites its TLS descriptors
    on every context switch). `on_tables` is told whenever the tables' places change."""

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
        self.ldt_base = 0           #: the guest LDT's base and limit when it was shadowed
        self.ldt_limit = 0
        #: Told after LGDT, LLDT or a change of the LDT's descriptor (runtime/tablewatch.py).
        self.on_tables: Callable[[], None] = lambda: None

    def load(self, base: int, limit: int) -> None:
        """LGDT: shadow the guest's table; the real GDTR gets the guest's limit, so that a
        selector beyond it faults as the guest's table says and the VMM's slots stay out of
        reach (runtime/machine.py). A guest limit that reaches the VMM's slots (some kernels
        load 0xFFFF whatever their table's size) is cut below them: selectors there fault
        #GP(selector), which is what the guest's own null descriptors there give (`sync`)."""
        self.guest_base, self.guest_limit = base, limit
        self.sync()
        self._set_limit(min(limit, layout.VMM_GDT_FIRST_SLOT * 8 - 1))
        self.on_tables()

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
        try:
            d = self.guest_descriptor(self.ldt_selector & ~4)
        except PageFault:
            return None
        if d is None or not d.present or not d.is_system or d.type != TYPE_LDT:
            return None
        return d

    def load_ldt(self, selector: int) -> bool:
        """LLDT: shadow the guest's LDT and load the real LDTR with the VMM's
        descriptor for the shadow; False if `selector` names no LDT."""
        self.ldt_selector = selector & 0xFFFC
        if not self.ldt_selector:
            self._load_ldtr(0, 0, 0)
            self.ldt_synced = 0
            self.on_tables()
            return True
        ldt = self._guest_ldt()
        if ldt is None:
            self.ldt_selector = 0
            return False
        self._sync_ldt(ldt)
        self.on_tables()
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
        self.ldt_base = ldt.base
        self.ldt_limit = min(ldt.limit, layout.VMM_LDT_SIZE - 1)
        self._point_ldtr(self.ldt_limit)

    def _point_ldtr(self, limit: int) -> None:
        """The real LDTR and its descriptor at the shadow LDT, wherever the VMM area is."""
        base = self._area().linear(layout.VMM_LDT)
        self._write(layout.VMM_GDT + VMM_LDT, segment(base, limit, 0x80 | TYPE_LDT, 0x0).to_bytes())
        self._load_ldtr(VMM_LDT, base, limit)

    def moved(self) -> None:
        """The VMM area moved (runtime/relocate.py): the shadow LDT's linear base with it."""
        if self.ldt_selector:
            self._point_ldtr(self.ldt_limit)

    def sync(self) -> None:
        """Shadow the whole guest GDT (and LDT)."""
        count = (self.guest_limit + 1) // 8
        shadowed = min(count, layout.VMM_GDT_FIRST_SLOT)
        raw = self._read(self.guest_base, count * 8) if count else b""
        self._check_vmm_slots(raw[shadowed * 8:])
        out = bytearray(8)  # slot 0 stays null
        for i in range(1, shadowed):
            out += compress(Descriptor.from_bytes(raw[i * 8:i * 8 + 8]), self.ring).to_bytes()
        # Slots the previous guest GDT used and this one does not become null.
        if self.synced > shadowed:
            out += bytes(8 * (self.synced - shadowed))
        self._write(layout.VMM_GDT, bytes(out))
        self.synced = shadowed
        ldt = self._guest_ldt()
        if ldt is not None:
            self._sync_ldt(ldt)

    def _check_vmm_slots(self, raw: bytes) -> None:
        """The guest's descriptors in the slots the VMM keeps for itself must be null: the
        real GDT's limit ends before them, so the CPU refuses their selectors with #GP, as
        it refuses a null descriptor's. Anything else there the VMM cannot give the guest."""
        if any(raw):
            raise GuestStop("guest GDT holds descriptors in the VMM's slots",
                            detail=f"entries {layout.VMM_GDT_FIRST_SLOT}-8191 must stay null; "
                                   f"limit {self.guest_limit:#x}")

    def write_seen(self, ldt: bool, offset: int, size: int) -> None:
        """The guest wrote `size` bytes at byte `offset` of its GDT (`ldt` False) or LDT:
        re-shadow the descriptors they touch (runtime/tablewatch.py). A table page the
        guest's mapping lost since is left as it was (its next load re-shadows it)."""
        try:
            self._write_seen(ldt, offset, size)
        except PageFault:
            pass

    def _write_seen(self, ldt: bool, offset: int, size: int) -> None:
        first, last = offset // 8, (offset + size - 1) // 8
        if ldt:
            if not self.ldt_synced:
                return
            last = min(last, self.ldt_synced - 1)
            if first > last:
                return
            raw = self._read(self.ldt_base + first * 8, (last - first + 1) * 8)
            out = b"".join(compress(Descriptor.from_bytes(raw[i:i + 8]), self.ring).to_bytes()
                           for i in range(0, len(raw), 8))
            self._write(layout.VMM_LDT + first * 8, out)
            return
        count = (self.guest_limit + 1) // 8
        last = min(last, count - 1)
        if first > last:
            return
        raw = self._read(self.guest_base + first * 8, (last - first + 1) * 8)
        if last >= layout.VMM_GDT_FIRST_SLOT:
            self._check_vmm_slots(raw[max(0, layout.VMM_GDT_FIRST_SLOT - first) * 8:])
        for i in range(first, min(last + 1, self.synced)):
            if i == 0:
                continue
            d = Descriptor.from_bytes(raw[(i - first) * 8:(i - first) * 8 + 8])
            self._write(layout.VMM_GDT + i * 8, compress(d, self.ring).to_bytes())
        if self.ldt_selector and first <= self.ldt_selector >> 3 <= last:
            # The descriptor of the loaded LDT changed: LLDT's cached copy would keep the old
            # one on hardware, but a guest that does this reloads LDTR next; follow the table.
            table = self._guest_ldt()
            if table is not None:
                self._sync_ldt(table)
            self.on_tables()
