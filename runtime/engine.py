"""Every Unicorn engine ring1 makes, with its translation buffer sized on purpose.

Unicorn 2.1.4 reserves 1 GiB of address space per engine for translated code unless told
otherwise (`UC_CTL_TCG_BUFFER_SIZE`, before the engine's first use), and when it cannot map
it, it prints "Could not allocate dynamic translator buffer" and calls exit(1): the status
of a guest that wrote 0 to isa-debug-exit. The VMM's engine gets `TCG_BUFFER`; the scratch
engines that probe Unicorn once at start-up (runtime/latch.py, insncount.py, the CPUID of
emulate/misc.py) run a few instructions and get `SCRATCH_TCG_BUFFER`. Measurements:
docs/robustness.md.
"""

from __future__ import annotations

from unicorn import UC_ARCH_X86, UC_MODE_32, Uc

from bt.layout import MiB

#: The VMM's engine. Unicorn 2.1.4 translates the block at `begin` afresh on every
#: `emu_start` (about 340 bytes each, never reused) and only flushes the buffer when it is
#: full; at its default of 1 GiB, a run that starts many slices (a guest that exits often,
#: or rewrites patched code forever) grew by about 1 KB per rewrite up to that size. 32 MiB
#: bounds it: measured on bare Unicorn, 1,000,000 emu_start calls grew the process by 358 MB
#: with the default and by 35 MB with 32 MiB, at no cost per call (4.1 vs 3.6 µs). It also
#: keeps an engine's address space small enough to check against a limit (docs/robustness.md).
TCG_BUFFER = 32 * MiB
#: A scratch engine that runs a handful of instructions once.
SCRATCH_TCG_BUFFER = 1 * MiB


def new_engine(tcg_buffer: int = TCG_BUFFER) -> Uc:
    """An x86-32 engine whose translation buffer is `tcg_buffer` bytes."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.ctl_set_tcg_buffer_size(tcg_buffer)   # type: ignore[attr-defined]  # not in the stubs
    return uc
