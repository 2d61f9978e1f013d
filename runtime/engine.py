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

import ctypes
from collections.abc import Callable
from typing import Any

from unicorn import UC_ARCH_X86, UC_ERR_OK, UC_MODE_32, Uc, UcError
from unicorn import x86_const as ux
from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

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


#: Unicorn's hook prototypes (unicorn.h: uc_cb_hookintr_t, uc_cb_insn_in_t, uc_cb_insn_out_t).
HOOK_INTR = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
HOOK_IN = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p)
HOOK_OUT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32,
                            ctypes.c_void_p)


def hook_raw(uc: Uc, htype: int, prototype: Any, fn: Callable[..., Any], *extra: int) -> int:
    """Register `fn` as a hook called straight from C, with Unicorn's own arguments (the
    engine handle first, the user-data pointer last).

    The binding's `hook_add` runs each call through two Python frames of its own (one
    turns the handle back into the `Uc`, one catches exceptions): ~0.3 µs on every exit.
    `fn` must therefore catch every exception itself: one escaping a ctypes callback is
    printed and dropped, and the guest would run on."""
    fptr = prototype(fn)
    handle = uc_hook_h()
    args = [ctypes.c_int(x) for x in extra]
    status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), htype, fptr, None,
                               ctypes.c_uint64(1), ctypes.c_uint64(0), *args)
    if status != UC_ERR_OK:
        raise UcError(status)
    uc._callbacks[handle.value] = fptr    # kept alive with the engine
    return int(handle.value)


def hook_native(uc: Uc, htype: int, address: int, data: int | None, begin: int = 1, end: int = 0) -> int:
    """Register the C function at `address` (runtime/native) as a hook over [begin, end]
    (begin > end: everywhere), with `data` (a pointer, or None) as its user data. The caller
    keeps `data`'s memory alive as long as the engine."""
    handle = uc_hook_h()
    status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), htype, ctypes.c_void_p(address),
                               ctypes.c_void_p(data), ctypes.c_uint64(begin), ctypes.c_uint64(end))
    if status != UC_ERR_OK:
        raise UcError(status)
    return int(handle.value)
