"""`bt bench watch`: what a store into a write-monitored guest descriptor table costs
(runtime/tablewatch.py), against the same store into an ordinary page, in one run.

Linux i386 rewrites its three TLS descriptors in the GDT on every context switch (six
4-byte stores, or three 8-byte ones); under ring1 each such store is a write-protect hook
call that makes the store and shadows the descriptors again (VirtualBox's SELM paid a
page fault for it). Two guests assembled with Keystone, entered at CPL 1:

* `gdt`: LGDT of a 4-slot table, then N iterations of two stores into its slot 3 (a flat
  data descriptor, as a TLS slot holds), DEC, JNZ;
* `base`: the same loop storing into a page no table lives on.

Cost of one monitored store = (time(gdt) - time(base)) / (2 N). Wall-clock figures:
printed, never asserted on.
"""

from __future__ import annotations

import io
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.bench import LOAD, assemble
from runtime.config import RunConfig
from runtime.vm import RawImage, Vm

GDT = 0x20000
PLAIN = 0x30000
_DESC = GDT + 0xF00
#: null, flat ring-0 code (0x08) and data (0x10) as the loader's, slot 3 the "TLS" slot.
_TABLE = struct.pack("<4Q", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF, 0x00CF92000000FFFF)
_EXIT = "xor eax, eax\nout 0xf4, al\nhlt\n"


def _guest(target: int, n: int) -> RawImage:
    src = (f"lgdt [{_DESC:#x}]\nmov eax, 0xffff\nmov ebx, 0xcf9200\nmov ecx, {n}\ntop:\n"
           f"mov dword ptr [{target:#x}], eax\nmov dword ptr [{target + 4:#x}], ebx\n"
           "dec ecx\njnz top\n" + _EXIT)
    return RawImage(((LOAD, assemble(src)), (GDT, _TABLE), (_DESC, struct.pack("<HI", len(_TABLE) - 1, GDT))),
                    LOAD)


def _run(image: RawImage) -> tuple[Vm, float]:
    vm = Vm(RunConfig(kernel=Path("<bench>"), serial=io.BytesIO()), image=image)
    t0 = time.perf_counter()
    result = vm.run()
    elapsed = time.perf_counter() - t0
    if result.exit_status != 1:
        raise RuntimeError(f"bench guest exited {result.exit_status}")
    return vm, elapsed


@dataclass(frozen=True)
class WatchBench:
    stores: int              #: monitored stores the VMM counted (RunStats.table_writes)
    gdt_s: float
    base_s: float

    @property
    def us_per_store(self) -> float:
        return (self.gdt_s - self.base_s) / max(1, self.stores) * 1e6


def watch_bench(iters: int = 5_000) -> WatchBench:
    vm, t_gdt = _run(_guest(GDT + 3 * 8, iters))
    _vm, t_base = _run(_guest(PLAIN + 3 * 8, iters))
    return WatchBench(stores=vm.stats.table_writes, gdt_s=t_gdt, base_s=t_base)
