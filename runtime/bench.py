"""`bt bench trap`: what one trap-and-emulate exit costs, and how fast exit-free
guest code runs under the VMM compared with bare Unicorn, measured in one run.

Three guests assembled with Keystone, each a counted loop:

* `trap`: N iterations of CLI (traps at CPL 1, decoded, emulated, EIP advanced,
  Unicorn's old_exception cleared), DEC, JNZ; run twice, with each way of
  clearing old_exception (runtime/latch.py);
* `base`: the same loop with a NOP instead of the CLI, under the VMM;
* `plain`: an exit-free arithmetic loop of M iterations, run under the VMM
  (ring 1, counted slices, hooks installed), on a bare Unicorn engine (ring 0,
  no hooks, one `emu_start`), and under the VMM with Unicorn's own instruction
  count instead of the block clock (runtime/clock.py): virtual time needs one of the
  two, and that is where the difference from bare Unicorn goes.

Cost of one exit = (time(trap) - time(base)) / N. Figures are wall-clock and
machine-dependent: they are printed, never asserted on.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

from keystone import KS_ARCH_X86, KS_MODE_32, Ks, KsError

from bt.errors import AssembleError
from runtime.config import RunConfig
from runtime.engine import TCG_BUFFER, new_engine
from runtime.vm import RawImage, Vm

LOAD = 0x100000
_EXIT = "xor eax, eax\nout 0xf4, al\nhlt\n"


def assemble(src: str, addr: int = LOAD) -> bytes:
    try:
        encoding, _ = Ks(KS_ARCH_X86, KS_MODE_32).asm(src, addr)
    except KsError as err:
        raise AssembleError(f"keystone: {err}") from err
    return bytes(encoding or b"")


def _loop(body: str, n: int) -> str:
    return f"mov ecx, {n}\nloop_top:\n{body}\ndec ecx\njnz loop_top\n"


def run_guest(src: str, max_insns: int | None = None, latch: str = "direct",
              clock: str = "block") -> tuple[Vm, float]:
    """Run `src` (assembled at 1 MiB, entered at CPL 1) to its isa-debug-exit."""
    image = RawImage(((LOAD, assemble(src)),), LOAD)
    vm = Vm(RunConfig(kernel=Path("<bench>"), serial=io.BytesIO(), max_insns=max_insns,
                      old_exception=latch, clock=clock), image=image)
    t0 = time.perf_counter()
    vm.run()
    return vm, time.perf_counter() - t0


def bare_unicorn(src: str) -> float:
    """Seconds a bare engine (flat ring 0, no hooks) takes for `src` up to its OUT."""
    code = assemble(src)
    uc = new_engine(TCG_BUFFER)
    uc.mem_map(0, 4 << 20)
    uc.mem_write(LOAD, code)
    uc.reg_write(__import__("unicorn.x86_const", fromlist=["x"]).UC_X86_REG_ESP, 0x80000)
    end = LOAD + len(assemble(src.split("xor eax, eax")[0]))
    t0 = time.perf_counter()
    uc.emu_start(LOAD, end)
    return time.perf_counter() - t0


@dataclass(frozen=True)
class TrapBench:
    traps: int
    trap_s: float
    base_s: float
    plain_insns: int
    vmm_plain_s: float
    bare_plain_s: float
    clock: str               #: the clock of the `plain` run under the VMM (runtime/clock.py)
    count_plain_s: float     #: the same run with Unicorn's own instruction count
    vmm_ns_per_trap: float
    latch: str               #: how old_exception was cleared in the `trap` run
    context_trap_s: float    #: the same trap loop with the context-save/restore latch

    @property
    def us_per_exit(self) -> float:
        return (self.trap_s - self.base_s) / self.traps * 1e6

    @property
    def us_per_exit_context(self) -> float:
        return (self.context_trap_s - self.base_s) / self.traps * 1e6

    @property
    def slowdown(self) -> float:
        return self.vmm_plain_s / self.bare_plain_s


def trap_bench(traps: int = 20_000, plain_iters: int = 2_000_000) -> TrapBench:
    vm_t, t_trap = run_guest(_loop("cli", traps) + _EXIT)
    _vm_c, t_ctx = run_guest(_loop("cli", traps) + _EXIT, latch="context")
    _vm_b, t_base = run_guest(_loop("nop", traps) + _EXIT)
    plain = _loop("add eax, ecx\nxor ebx, eax", plain_iters) + _EXIT
    vm_p, t_plain = run_guest(plain)
    t_bare = bare_unicorn(plain)
    _vm_n, t_count = run_guest(plain, clock="count")
    stats = vm_t.stats
    return TrapBench(traps=stats.by_class["cli"], trap_s=t_trap, base_s=t_base,
                     plain_insns=vm_p.stats.guest_insns, vmm_plain_s=t_plain, bare_plain_s=t_bare,
                     clock=vm_p.insn_clock.name, count_plain_s=t_count,
                     vmm_ns_per_trap=stats.vmm_ns_by_kind["trap"] / max(1, stats.exits["trap"]),
                     latch=vm_t.traps.latch.method, context_trap_s=t_ctx)
