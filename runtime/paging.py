"""Guest paging as the VMM sees it: linear -> physical walks, and the VMM's PDE.

Unicorn walks the guest's page tables itself (real CR3 = the guest's CR3), but its
`mem_read`/`mem_write` take physical addresses, so whenever the VMM touches guest
memory by linear address (frames on the guest stack, the guest IDT, GDT and TSS,
instruction bytes at a trap) it walks the tables here, as the CPU would
(Intel SDM vol. 3 §4.3, 32-bit paging: 4 KiB pages and, with CR4.PSE, 4 MiB pages;
CR0.WP makes read-only pages read-only for supervisor writes too).

A failed walk raises `PageFault` with the error code the CPU would push (§4.7):
P (bit 0) set if the page was present and a protection check failed, W/R (bit 1)
for writes, U/S (bit 2) for accesses at CPL 3 (no I/D: see `translate`).

The CPU itself walks a shadow of the guest's page directory (runtime/shadowpd.py) in
which one 4 MiB slot maps the VMM area (bt/layout.py). The walks here follow the guest's
own directory and see that slot the same way the CPU does: the VMM's pages, supervisor
only but for the user trampoline page, read-only. An emulated guest store that lands on
a VMM page (through that slot, or through a guest mapping of a VMM physical page) is
dropped and reported, as the VMM guard does for the CPU's own stores (runtime/guard.py).
"""

from __future__ import annotations

from collections.abc import Callable

from bt import layout
from runtime.cpu import Cpu

PTE_P, PTE_W, PTE_U, PTE_A, PTE_D, PTE_PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
CR0_PG, CR0_WP = 1 << 31, 1 << 16
CR4_PSE = 1 << 4

PF_P, PF_W, PF_U, PF_I = 0x1, 0x2, 0x4, 0x10
_PATCH_STATE_END = layout.PATCH_STATE_BASE + layout.PATCH_STATE_SIZE


class PageFault(Exception):
    """A guest-linear access the guest's page tables refuse (delivered as #PF)."""

    def __init__(self, linear: int, error_code: int) -> None:
        super().__init__(f"#PF at {linear:#x} (error code {error_code:#x})")
        self.linear = linear
        self.error_code = error_code


class Mmu:
    """Walks the guest's page tables; `regs()` returns the virtual (CR0, CR3, CR4),
    `area()` where the VMM area is, `vmm_store(phys, size)` is told of an emulated guest
    store into it (which is not made)."""

    def __init__(self, cpu: Cpu, regs: Callable[[], tuple[int, int, int]],
                 area: Callable[[], layout.VmmArea] = lambda: layout.HOME,
                 vmm_store: Callable[[int, int], None] | None = None,
                 watched: Callable[[int], bool] = lambda phys: False,
                 ram_store: Callable[[int, bytes], None] | None = None) -> None:
        self.cpu = cpu
        self.regs = regs
        self.area = area
        self.vmm_store = vmm_store
        #: A guest RAM page someone write-monitors (runtime/guard.py): emulated guest stores
        #: into it go through `ram_store`, which tells the watchers, as the CPU's do.
        self.watched = watched
        self.ram_store = ram_store

    def translate(self, linear: int, write: bool = False, user: bool = False,
                  fetch: bool = False) -> int:
        cr0, cr3, cr4 = self.regs()
        linear &= 0xFFFFFFFF
        if not cr0 & CR0_PG:
            return linear
        # No I/D bit: 32-bit paging sets it only with PAE + EFER.NXE or CR4.SMEP (SDM vol. 3
        # §4.7), which ring1's guests never have (QEMU: target/i386 mmu_translate agrees).
        code = (PF_W if write else 0) | (PF_U if user else 0)
        area = self.area()
        if area.contains(linear):
            # The VMM's slot of the shadow directory (runtime/shadowpd.py), as `VMM_PT` maps it.
            home = area.home(linear)
            if user and (write or home & ~0xFFF != layout.VMM_USER_PAGE):
                raise PageFault(linear, code | PF_P)
            return home
        pde = self.cpu.phys_u32((cr3 & 0xFFFFF000) + ((linear >> 22) << 2))
        if not pde & PTE_P:
            raise PageFault(linear, code)
        if pde & PTE_PS and cr4 & CR4_PSE:
            self._check(pde, pde, linear, code, write, user, cr0)
            return (pde & 0xFFC00000) | (linear & 0x3FFFFF)
        pte = self.cpu.phys_u32((pde & 0xFFFFF000) + (((linear >> 12) & 0x3FF) << 2))
        if not pte & PTE_P:
            raise PageFault(linear, code)
        self._check(pde, pte, linear, code, write, user, cr0)
        return (pte & 0xFFFFF000) | (linear & 0xFFF)

    @staticmethod
    def _check(pde: int, pte: int, linear: int, code: int, write: bool, user: bool, cr0: int) -> None:
        # SDM §4.6: user accesses need U/S at both levels; writes need R/W at both
        # levels for users, and for supervisors too when CR0.WP = 1.
        if user and not (pde & pte & PTE_U):
            raise PageFault(linear, code | PF_P)
        if write and not (pde & pte & PTE_W) and (user or cr0 & CR0_WP):
            raise PageFault(linear, code | PF_P)

    def read(self, linear: int, size: int, user: bool = False, fetch: bool = False) -> bytes:
        if (linear & 0xFFF) + size <= layout.PAGE_SIZE:
            return self.cpu.phys_read(self.translate(linear, False, user, fetch), size)
        out = b""
        while size:
            chunk = min(size, layout.PAGE_SIZE - (linear & 0xFFF))
            out += self.cpu.phys_read(self.translate(linear, False, user, fetch), chunk)
            linear, size = linear + chunk, size - chunk
        return out

    def write(self, linear: int, data: bytes, user: bool = False) -> None:
        # Translate every page first, so a fault leaves memory untouched (as the
        # CPU's frame pushes check the whole frame before writing).
        parts = []
        pos = 0
        while pos < len(data):
            chunk = min(len(data) - pos, layout.PAGE_SIZE - ((linear + pos) & 0xFFF))
            parts.append((self.translate(linear + pos, True, user), data[pos:pos + chunk]))
            pos += chunk
        for phys, piece in parts:
            if layout.VMM_BASE <= phys and not layout.PATCH_STATE_BASE <= phys < _PATCH_STATE_END:
                # The guard's rule for the CPU's stores, applied to the VMM's emulation of the
                # guest's: the one page patch code writes stays writable, nothing else.
                if self.vmm_store is not None:
                    self.vmm_store(phys, len(piece))
                continue
            if self.ram_store is not None and self.watched(phys):
                self.ram_store(phys, piece)
                continue
            self.cpu.phys_write(phys, piece)

    def read_u32(self, linear: int, user: bool = False) -> int:
        return int.from_bytes(self.read(linear, 4, user), "little")


def vmm_page_table() -> bytes:
    """The contents of `VMM_PT`: page i of the VMM's slot -> home page i (wherever the
    slot is), supervisor only, except the user trampoline page (user, read-only).

    Accessed and dirty are set from the start: the CPU's page walker then never writes
    the table, which the VMM guard keeps write-protected (runtime/guard.py; measured with
    unicorn 2.1.4: a walker's A/D update of a protected page is dropped without a hook
    call, so it would be retried on every TLB fill)."""
    out = bytearray()
    for i in range(1024):
        addr = layout.VMM_BASE + i * layout.PAGE_SIZE
        flags = PTE_P | PTE_W | PTE_A | PTE_D
        if addr == layout.VMM_USER_PAGE:
            flags = PTE_P | PTE_U | PTE_A | PTE_D
        out += (addr | flags).to_bytes(4, "little")
    return bytes(out)
