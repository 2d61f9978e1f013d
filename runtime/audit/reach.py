"""What of the VMM area the guest can reach: found by walking what the CPU walks.

Two walks, both over the tables of the run at the audit point (never over what the
layout says should be there):

* the CPU's: the real CR3 while the real CR0.PG is set (the shadow page directory,
  runtime/shadowpd.py, and below it the VMM page table for the VMM's slot and the guest's
  own page tables for the rest), or linear == physical while it is not;
* the guest's own page directory (`ShadowPd.guest_pd`): an entry the guest made present
  that the shadow has not copied yet (copied on first use, runtime/shadowpd.py) is a
  mapping the guest reaches at its next access.

Every linear page whose physical page lies in the VMM area (home 0xFFC00000-4 GiB,
bt/layout.py) is a row: the VMM's own slot, and any guest PDE or PTE that names a VMM
physical page (xv6's device window at 0xFE000000 does, for the pages its PTEs cover).

Protection is what the CPU would enforce (Intel SDM vol. 3 §4.6, 32-bit paging: U/S and
R/W at both levels, CR0.WP for supervisor writes; no execute-disable without PAE) from
guest ring 1 (the guest kernel, a supervisor access like CPL 0) and from guest ring 3
(guest user code), then what Unicorn does with the physical page (`mem_regions`: the
VMM guard write-protects every VMM page but one, runtime/guard.py): a write the tables
allow on a page Unicorn has read-only is "dropped" (the guard's hook drops and counts it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from unicorn import UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE

from bt import layout
from runtime.cpu import CR0, CR3, CR4, UnmappedPhys
from runtime.paging import CR0_PG, CR0_WP, CR4_PSE, PTE_P, PTE_PS, PTE_U, PTE_W

if TYPE_CHECKING:
    from unicorn import Uc

    from runtime.vm import Vm

Read = Callable[[int, int], bytes]

_VMM_END = layout.VMM_BASE + layout.VMM_SIZE
_PAGE = layout.PAGE_SIZE

#: How a mapping was found (`Mapping.via`).
VIA_SLOT = "vmm slot"  # the shadow directory's entry for the VMM's slot
VIA_GUEST = "guest mapping"  # a guest entry the CPU walks (copied in the shadow)
VIA_GUEST_UNUSED = "guest mapping, not yet used"  # only in the guest's own directory
VIA_NO_PAGING = "paging off"  # linear == physical


@dataclass(frozen=True)
class Access:
    """What one CPL may do to a page: write is "yes", "dropped" (the tables allow it, the
    guard drops it) or "no"."""

    read: bool
    write: str
    execute: bool

    def text(self) -> str:
        if not self.read:
            return "none"
        out = "r" + ("w" if self.write == "yes" else "-") + ("x" if self.execute else "-")
        return out + (", writes dropped" if self.write == "dropped" else "")

    def to_dict(self) -> dict[str, object]:
        return {"read": self.read, "write": self.write, "execute": self.execute}


NONE = Access(False, "no", False)


@dataclass(frozen=True)
class Mapping:
    """A run of linear pages onto consecutive VMM physical pages, all of one region with
    the same protection."""

    region: str
    linear: int
    physical: int
    size: int
    via: str
    ring1: Access
    ring3: Access

    def to_dict(self, kernel: str = "ring1") -> dict[str, object]:
        """`kernel` names the guest kernel's column: "ring1", or "ring3_kernel" in an audit
        of `--guest-ring 3` (where `ring1` holds the guest kernel's access at CPL 3)."""
        return {
            "region": self.region,
            "linear": f"{self.linear:#010x}",
            "physical": f"{self.physical:#010x}",
            "pages": self.size // _PAGE,
            "via": self.via,
            kernel: self.ring1.to_dict(),
            "ring3_user": self.ring3.to_dict(),
        }


class _Phys:
    """Unicorn's protection of each physical VMM page (what the guard left), and reads."""

    def __init__(self, uc: Uc) -> None:
        self._regions = [(b, e, p) for b, e, p in uc.mem_regions() if e >= layout.VMM_BASE]

    def perms(self, phys: int) -> int:
        for begin, end, perms in self._regions:
            if begin <= phys <= end:
                return int(perms)
        return 0


def _access(phys: _Phys, page: int, allowed: bool, writable: bool) -> Access:
    if not allowed:
        return NONE
    perms = phys.perms(page)
    write = "no" if not writable else "yes" if perms & UC_PROT_WRITE else "dropped"
    return Access(bool(perms & UC_PROT_READ), write, bool(perms & UC_PROT_EXEC))


def _u32s(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]


def _walk(read: Read, pd: int, pse: bool) -> list[tuple[int, int, int, int]]:
    """(linear page, physical page, pde, pte) of every present mapping onto the VMM area in
    directory `pd` (a 4 MiB page: pte == pde)."""
    out: list[tuple[int, int, int, int]] = []
    for i, pde in enumerate(_u32s(read(pd, 4096))):
        if not pde & PTE_P:
            continue
        if pde & PTE_PS and pse:
            base = pde & 0xFFC00000
            if base == layout.VMM_BASE:
                out += [((i << 22) + k * _PAGE, base + k * _PAGE, pde, pde) for k in range(1024)]
            continue
        try:
            ptes = np.frombuffer(read(pde & 0xFFFFF000, 4096), dtype="<u4")
        except UnmappedPhys:  # a page table outside RAM: the CPU would fault there, nothing maps
            continue
        # Vectorised: a big guest has hundreds of page tables, few (if any) entries onto the VMM.
        for k in np.flatnonzero((ptes & PTE_P != 0) & ((ptes & 0xFFFFF000) >= layout.VMM_BASE)):
            pte = int(ptes[k])
            out.append(((i << 22) + (int(k) << 12), pte & 0xFFFFF000, pde, pte))
    return out


def mappings(vm: Vm) -> tuple[bool, list[Mapping]]:
    """(paging on, every mapping of a VMM page) at this point of run `vm` ."""
    cpu = vm.cpu
    phys = _Phys(vm.machine.uc)
    cr0, cr3, cr4 = cpu.read(CR0), cpu.read(CR3), cpu.read(CR4)
    pages: list[tuple[int, int, str, Access, Access]] = []
    if not cr0 & CR0_PG:
        # No paging: linear == physical, and no page protection for any CPL.
        for page in range(layout.VMM_BASE, _VMM_END, _PAGE):
            acc = _access(phys, page, True, True)
            pages.append((page, page, VIA_NO_PAGING, acc, acc))
        return False, _merge(pages)
    pse, wp = bool(cr4 & CR4_PSE), bool(cr0 & CR0_WP)
    slot = vm.machine.vmm.pde_index
    seen: set[int] = set()
    walks = [(cr3 & 0xFFFFF000, False)]
    guest_pd = vm.shadow.guest_pd
    if guest_pd is not None:
        walks.append((guest_pd, True))
    for pd, unused in walks:
        for lin, page, pde, pte in _walk(cpu.phys_read, pd, pse):
            if lin in seen:
                continue
            seen.add(lin)
            via = VIA_GUEST_UNUSED if unused else VIA_SLOT if lin >> 22 == slot else VIA_GUEST
            w, u = bool(pde & pte & PTE_W), bool(pde & pte & PTE_U)
            pages.append((lin, page, via, _access(phys, page, True, w or not wp), _access(phys, page, u, w)))
    return True, _merge(sorted(pages))


def mappings_ring3(vm: Vm) -> tuple[bool, list[Mapping]]:
    """The same under `--guest-ring 3`, where guest kernel and guest user code both run at
    real CPL 3 and differ only in the tables the CPU walks (runtime/ring3/mode.py): the
    kernel view (`VMM_RING3_PD`) in kernel mode; in user mode the guest's own tables through
    the shadow page directory (split) or the kernel view again (flat). With guest paging off
    both walk the identity shadow. Each view is walked as a user access (U/S and R/W at both
    levels; CR0.WP does not matter at CPL 3), so `Mapping.ring1` holds what the guest kernel
    at ring 3 gets and `Mapping.ring3` what guest user code gets. An entry only in the guest's
    own directory reaches user code once split's shadow copies it; the kernel view maps a VMM
    frame supervisor-only (runtime/ring3/vtlb.py), so the guest kernel never gets it."""
    cpu, ring3 = vm.cpu, vm.ring3
    assert ring3 is not None
    phys = _Phys(vm.machine.uc)
    pse = bool(cpu.read(CR4) & CR4_PSE)
    if vm.vcpu.cr(0) & CR0_PG:
        kernel_pd = layout.VMM_RING3_PD
        user_pd = layout.VMM_SHADOW_PD if ring3.view == "split" else kernel_pd
    else:
        kernel_pd = user_pd = cpu.read(CR3) & 0xFFFFF000
    slot = vm.machine.vmm.pde_index
    found: dict[int, tuple[int, str, Access, Access]] = {}  # linear -> physical, via, kernel, user
    for pd, user_side in ((kernel_pd, False), (user_pd, True)):
        for lin, page, pde, pte in _walk(cpu.phys_read, pd, pse):
            via = VIA_SLOT if lin >> 22 == slot else VIA_GUEST
            _, _, kernel, user = found.get(lin, (page, via, NONE, NONE))
            acc = _access(phys, page, bool(pde & pte & PTE_U), bool(pde & pte & PTE_W))
            found[lin] = (page, via, kernel, acc) if user_side else (page, via, acc, user)
    guest_pd = vm.shadow.guest_pd
    if guest_pd is not None and ring3.view == "split":
        for lin, page, pde, pte in _walk(cpu.phys_read, guest_pd, pse):
            if lin not in found:
                user = _access(phys, page, bool(pde & pte & PTE_U), bool(pde & pte & PTE_W))
                found[lin] = (page, VIA_GUEST_UNUSED, NONE, user)
    return True, _merge([(lin, *row) for lin, row in sorted(found.items())])


def _merge(pages: list[tuple[int, int, str, Access, Access]]) -> list[Mapping]:
    out: list[Mapping] = []
    for lin, page, via, r1, r3 in pages:
        region = layout.region_at(page)
        last = out[-1] if out else None
        if (
            last is not None
            and last.region == region
            and last.via == via
            and last.ring1 == r1
            and last.ring3 == r3
            and last.linear + last.size == lin
            and last.physical + last.size == page
        ):
            out[-1] = Mapping(region, last.linear, last.physical, last.size + _PAGE, via, r1, r3)
        else:
            out.append(Mapping(region, lin, page, _PAGE, via, r1, r3))
    return out
