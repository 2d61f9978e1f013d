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
from unicorn import x86_const as ux

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
#: The CPU every engine models, the guest's: QEMU's default for qemu-system-i386 (`qemu32`:
#: family 6, model 6, stepping 3, "QEMU Virtual CPU version 2.5+"), which Unicorn shares with
#: QEMU, so CPUID, run natively at any CPL (bt/isa.py, row `cpuid`), answers what it answers
#: under the reference (a scratch engine asks it for the CPUID emulator). Unicorn's own
#: default for 32-bit mode is a Haswell (NX, long mode, x2APIC, AVX), which the PC ring1
#: gives (no x2APIC, 32-bit paging only) does not back.
CPU_MODEL = ux.UC_CPU_X86_QEMU32


def new_engine(tcg_buffer: int = TCG_BUFFER) -> Uc:
    """An x86-32 engine of the guest's CPU model whose translation buffer is `tcg_buffer` bytes
    (both set before the engine's first use)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.ctl_set_tcg_buffer_size(tcg_buffer)   # type: ignore[attr-defined]  # not in the stubs
    uc.ctl_set_cpu_model(CPU_MODEL)
    return uc
