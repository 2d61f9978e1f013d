"""How the reference systems handled each fact `bt audit` reports, and whether ring
compression alone can hide it.

From the project's raw-mode reference note (shared/notes/raw-mode-reference.md, which
summarises the VirtualBox OSE raw-mode sources, the VMware and Xen papers and the Intel
SDM) and the instruction table (bt/isa.py: Robin & Irvine 2000). Where the note says
nothing about a system, the entry says so instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Handled:
    """One row's reference columns."""

    #: Can ring compression (guest kernel at CPL 1, DPL 0 -> 1) hide it by itself?
    compression: str
    virtualbox: str
    vmware: str
    xen: str

    def to_dict(self) -> dict[str, str]:
        return {
            "ring_compression_hides": self.compression,
            "virtualbox": self.virtualbox,
            "vmware": self.vmware,
            "xen": self.xen,
        }


_NOT_IN_NOTE = "not covered by the reference note"

#: The VMM area mapped in the guest's linear space (any region).
AREA = Handled(
    "no: paging treats CPL 1 as supervisor (SDM vol. 3 §4.6), so ring 1 reads every "
    "supervisor page the CPU walks to, the VMM's included",
    "hypervisor area in 4 MiB slots of the guest's space, moved on a mapping conflict (PGM); "
    "patch memory and the state page writable from ring 1",
    "segment truncation: guest segments end below its top-4 MiB monitor area",
    "segment truncation: guest segments end below the top 64 MiB Xen keeps",
)

#: A guest PDE/PTE naming a VMM physical page.
ALIAS = Handled(
    "no: a guest page table entry names any physical page",
    "shadow page tables built by the VMM: a guest PTE never reaches a VMM page",
    "shadow page tables built by the VMM: a guest PTE never reaches a VMM page",
    _NOT_IN_NOTE,
)

_TABLE_REG = Handled(
    "no: unprivileged at every CPL, it reads the real register",
    "PATM reads the guest's virtual copy (listed as a raw-mode leak in VirtualBox's docs)",
    "binary translation of guest kernel code",
    _NOT_IN_NOTE,
)

#: bt.isa class -> how each system handled it.
LEAKS: dict[str, Handled] = {
    "pushf": Handled(
        "no: PUSHF shows the real IF = 1 and IOPL = 0",
        "PATM: PUSHF/POPF work on a virtual flags word",
        "binary translation of guest kernel code",
        _NOT_IN_NOTE,
    ),
    "sgdt": _TABLE_REG,
    "sidt": _TABLE_REG,
    "sldt": _TABLE_REG,
    "str": _TABLE_REG,
    "smsw": Handled(
        "no: unprivileged at every CPL, it reads the real CR0",
        "PATM int3 replacement, emulated (listed as a raw-mode leak)",
        "binary translation of guest kernel code",
        _NOT_IN_NOTE,
    ),
    "lar": Handled(
        "no: the shadow descriptor's DPL 1 shows (and visibility is judged at CPL 1)",
        "PATM int3 replacement, emulated",
        "binary translation of guest kernel code",
        _NOT_IN_NOTE,
    ),
    "lsl": Handled(
        "no: visibility is judged at CPL 1",
        "PATM int3 replacement, emulated",
        "binary translation of guest kernel code",
        _NOT_IN_NOTE,
    ),
    "verr": Handled(
        "no: checked at CPL 1, not the guest's CPL 0",
        "PATM int3 replacement, emulated",
        "binary translation of guest kernel code",
        _NOT_IN_NOTE,
    ),
    "verw": Handled(
        "no: checked at CPL 1, not the guest's CPL 0",
        "PATM int3 replacement, emulated",
        "binary translation of guest kernel code",
        _NOT_IN_NOTE,
    ),
    "push_sreg": Handled(
        "no: the selector's RPL shows CPL 1",
        "PATM strips the RPL (listed as a raw-mode leak)",
        "binary translation of guest kernel code",
        _NOT_IN_NOTE,
    ),
    "mov_from_sreg": Handled(
        "no: the selector's RPL shows CPL 1",
        "PATM strips the RPL (listed as a raw-mode leak)",
        "binary translation of guest kernel code",
        _NOT_IN_NOTE,
    ),
    "rdtsc": Handled(
        "no: unprivileged while CR4.TSD = 0", "left native in raw mode", _NOT_IN_NOTE, _NOT_IN_NOTE
    ),
    "rdtscp": Handled(
        "no: unprivileged while CR4.TSD = 0", "left native in raw mode", _NOT_IN_NOTE, _NOT_IN_NOTE
    ),
    "cpuid": Handled(
        "no: unprivileged, it reports the CPU model",
        "PATM int3 replacement (listed as a raw-mode leak)",
        _NOT_IN_NOTE,
        _NOT_IN_NOTE,
    ),
}

#: Guard event kind -> how each system handled it.
GUARD: dict[str, Handled] = {
    "dropped stores": Handled(
        "no: ring 1 passes the supervisor check; only the VMM guard's page protection drops them",
        "state page and patch memory writable from ring 1; other hypervisor pages: " + _NOT_IN_NOTE,
        "segment truncation stops the store before the monitor area",
        "segment truncation stops the store before Xen's area",
    ),
    "vmm moves": Handled(
        "not a ring question: the guest maps the VMM's slot at any CPL",
        "PGM relocated the hypervisor area on a mapping conflict",
        "fixed top 4 MiB, kept out of guest segments",
        "fixed top 64 MiB; Linux's reservetop= leaves room for it",
    ),
    "table writes": Handled(
        "no: the guest kernel writes its own GDT and LDT at any CPL; the shadows must follow",
        "SELM write-monitored the guest's GDT and LDT pages and re-shadowed written descriptors",
        _NOT_IN_NOTE,
        _NOT_IN_NOTE,
    ),
    "vflags repairs": Handled(
        "no: the patch-writable state page is writable at CPL 1, the guest kernel's CPL",
        "the state page was writable from ring 1 (as here)",
        "segment truncation keeps the guest out of the monitor area",
        "segment truncation keeps the guest out of Xen's area",
    ),
}
