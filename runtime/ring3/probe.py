"""What the guest can reach at the end of a run, measured on the tables the CPU walks.

The security half of `bt compare --rings` (issue 13). Two questions, answered by walking the
real page tables (not by asserting what the design intends):

* **Guest user code -> guest kernel memory.** Pages the guest's own tables map present and
  supervisor-only (U/S = 0 at either level) that the tables the CPU walks while the guest is
  in user mode map user-accessible (U/S = 1 at both levels, SDM vol. 3 §4.6). Ring 1 and ring
  3 split walk the guest's own tables in user mode (runtime/shadowpd.py): none. Ring 3 flat
  walks the kernel view (runtime/ring3/vtlb.py): every supervisor page the kernel touched
  since its last CR3 load.
* **Guest kernel -> the VMM area.** VMM pages the guest kernel can read at its real CPL in the
  tables it runs on (ring 1: CPL 1, every present page of the VMM's slot; ring 3: CPL 3, only
  user pages), and of those the ones it can write: the guard write-protects all but the
  state block's patch-writable page (runtime/guard.py), and at CPL 3 a page must be writable
  at both levels too.

With guest paging off there are no tables: the answer is "no paging" (the whole linear space
is reachable, the guard still drops stores into the VMM area).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bt import layout
from runtime.paging import CR0_PG, CR4_PSE

if TYPE_CHECKING:
    from runtime.vm import Vm

P, W, U, PS = 0x1, 0x2, 0x4, 0x80


def _words(vm: Vm, phys: int) -> np.ndarray | None:
    try:
        return np.frombuffer(vm.cpu.phys_read(phys & 0xFFFFF000, layout.PAGE_SIZE), dtype="<u4")
    except Exception:       # a hostile entry naming no memory: nothing reachable through it
        return None


def _leaves(vm: Vm, pde: int, pse: bool) -> tuple[np.ndarray, np.ndarray]:
    """(flags ANDed over both levels, present) for the 1024 pages of one directory entry."""
    if not pde & P:
        zero = np.zeros(1024, dtype=np.uint32)
        return zero, zero.astype(bool)
    if pde & PS and pse:
        flags = np.full(1024, pde & (P | W | U), dtype=np.uint32)
        return flags, np.ones(1024, dtype=bool)
    table = _words(vm, pde)
    if table is None:
        zero = np.zeros(1024, dtype=np.uint32)
        return zero, zero.astype(bool)
    return (table & (pde & (P | W | U))).astype(np.uint32), (table & P) != 0


def _user_view(vm: Vm) -> int:
    ring3 = vm.ring3
    if ring3 is not None and ring3.view == "flat":
        return layout.VMM_RING3_PD
    return layout.VMM_SHADOW_PD


def _kernel_view(vm: Vm) -> int:
    return layout.VMM_RING3_PD if vm.ring3 is not None else layout.VMM_SHADOW_PD


def reach(vm: Vm) -> dict[str, Any]:
    """The two measurements (module docstring), for `bt compare --rings`."""
    cr0, cr3, cr4 = vm.vcpu.paging_regs()
    if not cr0 & CR0_PG:
        return {"paging": False, "user_reads_kernel_pages": None, "kernel_reads_vmm_pages": None,
                "kernel_writes_vmm_pages": None}
    pse = bool(cr4 & CR4_PSE)
    vmm_index = vm.machine.vmm.pde_index
    guest_pd = _words(vm, cr3)
    user_pd = _words(vm, _user_view(vm))
    assert guest_pd is not None and user_pd is not None
    exposed = 0
    for i in range(1024):
        if i == vmm_index or not guest_pd[i] & P:
            continue
        gflags, gpresent = _leaves(vm, int(guest_pd[i]), pse)
        supervisor = gpresent & ((gflags & U) == 0)
        if not supervisor.any():
            continue
        rflags, rpresent = _leaves(vm, int(user_pd[i]), pse)
        exposed += int(np.count_nonzero(supervisor & rpresent & ((rflags & U) != 0)))
    kernel_pd = _words(vm, _kernel_view(vm))
    assert kernel_pd is not None
    flags, present = _leaves(vm, int(kernel_pd[vmm_index]), False)
    cpl3 = vm.ring3 is not None
    readable = present & (((flags & U) != 0) if cpl3 else True)
    if cpl3:
        writable = readable & ((flags & W) != 0)
    else:
        pages = np.arange(1024) * layout.PAGE_SIZE + layout.VMM_BASE
        writable = readable & (pages == layout.PATCH_STATE_BASE)
    return {"paging": True, "user_reads_kernel_pages": exposed,
            "kernel_reads_vmm_pages": int(np.count_nonzero(readable)),
            "kernel_writes_vmm_pages": int(np.count_nonzero(writable))}
