"""`bt bench trap`: what one trap-and-emulate exit costs, and how fast exit-free
guest code runs under the VMM compared with bare Unicorn, measured in one run.

Three guests assembled with Keystone, each a counted loop:

* `trap`: N iterations of CLI (traps at CPL 1, emulated, EIP advanced, Unicorn's
  old_exception cleared), DEC, JNZ; run with the fast exits (runtime/fastexit.py: the
  C hook takes the CLI after the first), with every exit through Python, and through
  Python with the other way of clearing old_exception (runtime/latch.py);
* `rdtsc`: the same loop with RDTSC (a fault at CPL 1: the VMM sets CR4.TSD), with the fast
  exits and through Python;
* `cr0`: the same loop with MOV EAX, CR0, an exit the fast exits leave to Python, with
  them installed (what every other exit costs);
* `base`: the same loop with a NOP instead of the CLI, under the VMM;
* `plain`: an exit-free arithmetic loop of M iterations, run under the VMM
  (ring 1, counted slices, hooks installed), on a bare Unicorn engine (ring 0,
  no hooks, one `emu_start`), on a bare engine with a block hook that does nothing
  (Unicorn's own cost per block once any block hook exists: the floor of every exact
  per-block count), and under the VMM with Unicorn's own instruction count instead of the
  block clock (runtime/clock.py): virtual time needs one of the two.

Cost of one exit = (time(loop) - time(base)) / N. Figures are wall-clock and
machine-dependent: they are printed, never asserted on.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

from keystone import KS_ARCH_X86, KS_MODE_32, Ks, KsError
from unicorn import x86_const as ux

from bt.errors import AssembleError
from runtime.clock import native_module
from runtime.config import RunConfig
from runtime.engine import TCG_BUFFER, new_engine
from runtime.floor import add_noop_block_hook
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
              clock: str = "block", fast: bool = True) -> tuple[Vm, float]:
    """Run `src` (assembled at 1 MiB, entered at CPL 1) to its isa-debug-exit."""
    image = RawImage(((LOAD, assemble(src)),), LOAD)
    vm = Vm(RunConfig(kernel=Path("<bench>"), serial=io.BytesIO(), max_insns=max_insns,
                      old_exception=latch, clock=clock, fast_exits=fast), image=image)
    t0 = time.perf_counter()
    vm.run()
    return vm, time.perf_counter() - t0


def bare_unicorn(src: str, block_hook: bool = False) -> float:
    """Seconds a bare engine (flat ring 0, no hooks; or only a C block hook that does
    nothing, runtime/floor.py) takes for `src` up to its OUT."""
    code = assemble(src)
    uc = new_engine(TCG_BUFFER)
    uc.mem_map(0, 4 << 20)
    uc.mem_write(LOAD, code)
    uc.reg_write(ux.UC_X86_REG_ESP, 0x80000)
    end = LOAD + len(assemble(src.split("xor eax, eax")[0]))
    if block_hook:
        add_noop_block_hook(uc)
    t0 = time.perf_counter()
    uc.emu_start(LOAD, end)
    return time.perf_counter() - t0


@dataclass(frozen=True)
class TrapBench:
    traps: int
    trap_s: float            #: the CLI loop, default run (the fast exits take the CLI)
    fast: int                #: exits the fast exits took in it (0: the run has none)
    python_trap_s: float     #: the CLI loop with every exit through Python
    cr0_s: float             #: the MOV EAX, CR0 loop (Python's exit, fast exits installed)
    rdtsc_s: float           #: the RDTSC loop, default run
    python_rdtsc_s: float    #: the RDTSC loop with every exit through Python
    base_s: float
    plain_insns: int
    vmm_plain_s: float
    bare_plain_s: float
    hooked_plain_s: float | None  #: bare Unicorn with a no-op C block hook (None: not built)
    clock: str               #: the clock of the `plain` run under the VMM (runtime/clock.py)
    count_plain_s: float     #: the same run with Unicorn's own instruction count
    vmm_ns_per_trap: float   #: in the VMM's handler, default run
    python_vmm_ns_per_trap: float  #: the same, every exit through Python
    latch: str               #: how old_exception was cleared in the `trap` run
    context_trap_s: float    #: the Python CLI loop with the context-save/restore latch

    @property
    def us_per_exit(self) -> float:
        return (self.trap_s - self.base_s) / self.traps * 1e6

    @property
    def us_per_python_exit(self) -> float:
        return (self.python_trap_s - self.base_s) / self.traps * 1e6

    @property
    def us_per_rdtsc_exit(self) -> float:
        return (self.rdtsc_s - self.base_s) / self.traps * 1e6

    @property
    def us_per_python_rdtsc_exit(self) -> float:
        return (self.python_rdtsc_s - self.base_s) / self.traps * 1e6

    @property
    def us_per_cr0_exit(self) -> float:
        return (self.cr0_s - self.base_s) / self.traps * 1e6

    @property
    def us_per_exit_context(self) -> float:
        return (self.context_trap_s - self.base_s) / self.traps * 1e6

    @property
    def slowdown(self) -> float:
        return self.vmm_plain_s / self.bare_plain_s

    @property
    def hooked_slowdown(self) -> float | None:
        return None if self.hooked_plain_s is None else self.hooked_plain_s / self.bare_plain_s


def _per_trap(vm: Vm) -> float:
    stats = vm.stats
    return stats.vmm_ns_by_kind["trap"] / max(1, stats.exits["trap"])


def trap_bench(traps: int = 20_000, plain_iters: int = 2_000_000) -> TrapBench:
    vm_t, t_trap = run_guest(_loop("cli", traps) + _EXIT)
    vm_py, t_py = run_guest(_loop("cli", traps) + _EXIT, fast=False)
    _vm_c, t_ctx = run_guest(_loop("cli", traps) + _EXIT, latch="context", fast=False)
    _vm_r, t_cr0 = run_guest(_loop("mov eax, cr0", traps) + _EXIT)
    _vm_t, t_rdtsc = run_guest(_loop("rdtsc", traps) + _EXIT)
    _vm_tp, t_py_rdtsc = run_guest(_loop("rdtsc", traps) + _EXIT, fast=False)
    _vm_b, t_base = run_guest(_loop("nop", traps) + _EXIT)
    plain = _loop("add eax, ecx\nxor ebx, eax", plain_iters) + _EXIT
    vm_p, t_plain = run_guest(plain)
    t_bare = bare_unicorn(plain)
    t_hooked = bare_unicorn(plain, block_hook=True) if native_module() is not None else None
    _vm_n, t_count = run_guest(plain, clock="count")
    return TrapBench(traps=vm_t.stats.by_class["cli"], trap_s=t_trap,
                     fast=vm_t.traps.fast.taken if vm_t.traps.fast is not None else 0,
                     python_trap_s=t_py, cr0_s=t_cr0, rdtsc_s=t_rdtsc, python_rdtsc_s=t_py_rdtsc,
                     base_s=t_base,
                     plain_insns=vm_p.stats.guest_insns, vmm_plain_s=t_plain, bare_plain_s=t_bare,
                     hooked_plain_s=t_hooked, clock=vm_p.insn_clock.name, count_plain_s=t_count,
                     vmm_ns_per_trap=_per_trap(vm_t), python_vmm_ns_per_trap=_per_trap(vm_py),
                     latch=vm_t.traps.latch.method, context_trap_s=t_ctx)
