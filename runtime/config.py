"""How one `bt run` is configured: a frozen dataclass, not a keyword list."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from bt import layout

if TYPE_CHECKING:      # types only: `bt` parses its command line without importing the VMM
    from patchmgr.manager import PatchConfig
    from runtime.boot import BootModule

#: Virtual time rate: one guest instruction is 10 virtual ns (a 100-MIPS CPU).
#: Fixed so that virtual time, and with it every timer interrupt, depends only on
#: what the guest executed: two runs give the same output and the same counts.
NS_PER_INSN = 10
#: Longest slice of guest instructions between two looks at the devices.
SLICE_INSNS = 100_000
#: Virtual ns one exit costs the guest (an exit is not free on hardware either).
NS_PER_EXIT = 1_000
#: Virtual time between the keyboard becoming ready and the first key of `--keys`
#: (runtime/devices/i8042.py says when it is ready and how the rest follow).
KEY_DELAY_NS = 100_000_000


@dataclass(frozen=True)
class RunConfig:
    kernel: Path
    cmdline: str = ""
    ram_size: int = layout.RAM_DEFAULT
    #: Stop after this many guest instructions (None: no limit).
    max_insns: int | None = None
    #: Stop after this many wall-clock seconds (None: no limit). Not deterministic.
    timeout: float | None = None
    #: Where COM1 output goes (None: discarded).
    serial: BinaryIO | None = None
    slice_insns: int = SLICE_INSNS
    #: How many recent exits a stop report shows.
    last_exits: int = 16
    #: How Unicorn's stale old_exception is cleared after a fault: "direct" (write the
    #: live field, falls back to "context" if it cannot be located) or "context"
    #: (uc_context_save/restore). See runtime/latch.py; `bt bench trap` compares them.
    old_exception: str = "direct"
    #: How the patch manager patches (`--hot`, `--eager`, `--no-patch`); None: unpatched VMM.
    patch: PatchConfig | None = None
    #: How guest instructions are counted for virtual time (runtime/clock.py): "block" (a C
    #: hook per translated block; falls back to "count" when the module is not built) or
    #: "count" (Unicorn's own count, a helper call per instruction).
    clock: str = "block"
    #: CLI/STI traps at sites the patcher leaves alone emulated in C (runtime/fastexit.py);
    #: False: every exit through Python (`bt bench trap` measures both).
    fast_exits: bool = True
    #: Multiboot modules, in order (`--module FILE[,ARGS]`, QEMU's -initrd).
    modules: tuple[BootModule, ...] = ()
    #: Disk images on the primary IDE channel: master, then slave (`--disk FILE`).
    disks: tuple[Path, ...] = ()
    #: Write guest disk writes through to the image files (`--disk-writable`); otherwise
    #: they stay in memory and the files are never modified.
    disk_writable: bool = False
    #: Text typed on the PS/2 keyboard (`--keys FILE`), and when the first key comes.
    keys: str = ""
    key_delay_ns: int = KEY_DELAY_NS
    #: Use the host terminal (stdin) as the keyboard too (interactive, not reproducible).
    terminal: bool = False
    #: The initrd of a Linux kernel (`--initrd FILE`, QEMU's -initrd): runtime/linuxboot.py.
    initrd: Path | None = None
    #: The kernel's name on its multiboot command line, as QEMU shows the `-kernel` argument
    #: as typed (None: `kernel` as given). A run from a copy of the file (a static patch, a
    #: campaign cell on another machine) keeps the name the guest would otherwise see.
    image_name: str | None = None
    #: `--vmm-base`: the 4 MiB slot of the guest's linear space the VMM area takes while
    #: guest paging is on, never to move (runtime/relocate.py); None: it floats.
    vmm_base: int | None = None
    #: The real ring the guest kernel runs in: 1 (raw mode, ring1's way) or 3 (deprivileged
    #: for comparison, `bt run --guest-ring 3`: runtime/ring3/); ring 3 runs unpatched.
    guest_ring: int = 1
    #: Ring 3's paging views (`--ring3`): "split" (a kernel view and the guest's own tables
    #: for user mode, switched on every transition) or "flat" (one view, guest supervisor
    #: pages user-accessible). Ignored in ring 1.
    ring3_view: str = "split"
