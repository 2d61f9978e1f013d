"""CPUID runs natively (bt/isa.py, row `cpuid`): ring1's virtual CPU is Unicorn's CPU model,
so what CPUID returns at CPL 1 is what the runtime's emulator answers. Checked for every
basic and extended leaf, the leaves whose answer depends on ECX, and leaves out of range."""

from __future__ import annotations

import io
import struct
from pathlib import Path

from runtime_guest import RESULTS, exit_with, kernel, run

from patchmgr.manager import PatchConfig
from runtime.config import RunConfig
from runtime.emulate.misc import guest_cpuid
from runtime.vm import Vm
from tests.scan_helpers import build_elf

LEAVES = ([(leaf, 0) for leaf in range(0x20)] + [(0x80000000 + leaf, 0) for leaf in range(0x20)]
          + [(4, sub) for sub in range(4)] + [(7, sub) for sub in range(3)] + [(0xB, sub) for sub in range(3)]
          + [(0xD, sub) for sub in range(4)] + [(0x40000000, 0), (0xC0000000, 0), (0x12345678, 0)])


def test_native_cpuid_at_cpl1_is_what_the_emulator_answers() -> None:
    src = ""
    for k, (leaf, sub) in enumerate(LEAVES):
        at = RESULTS + 16 * k
        src += (f"mov eax, {leaf:#x}\nmov ecx, {sub}\ncpuid\nmov [{at:#x}], eax\nmov [{at + 4:#x}], ebx\n"
                f"mov [{at + 8:#x}], ecx\nmov [{at + 12:#x}], edx\n")
    vm, result = run(kernel(src + exit_with(0)))
    assert not isinstance(result, Exception) and result.exit_status == 1
    assert vm.stats.by_class["cpuid"] == 0               # no exit: nothing traps or patches it
    for k, (leaf, sub) in enumerate(LEAVES):
        got = struct.unpack("<4I", vm.cpu.phys_read(RESULTS + 16 * k, 16))
        assert got == guest_cpuid(leaf, sub, vm.vcpu.cr(4)), (hex(leaf), sub)


CPUID_LOOP = """
.text
.globl _start
.type _start, @function
_start:
    movl $5000, %esi
1:  xorl %eax, %eax
    cpuid
    decl %esi
    jnz 1b
    movl $0, %eax
    outl %eax, $0xf4
2:  jmp 2b
.section .note.GNU-stack, "", @progbits
"""


def test_patching_adds_no_exit_to_a_cpuid_loop(tmp_path: Path) -> None:
    """Issue 17: the CPUID patch made a 5,000-CPUID loop go from 3 exits to 5,003."""
    path = build_elf(tmp_path, CPUID_LOOP, ld_flags=("-N",))
    exits = {}
    for name, patch in (("unpatched", None), ("dynamic", PatchConfig()), ("eager", PatchConfig(eager=True))):
        vm = Vm(RunConfig(kernel=path, serial=io.BytesIO(), patch=patch))
        assert vm.run().exit_status == 1
        exits[name] = vm.stats.exit_count
    assert exits["dynamic"] <= exits["unpatched"] and exits["eager"] <= exits["unpatched"], exits
    assert exits["unpatched"] < 10, exits
