"""The seam the patch manager plugs into (runtime/patching.py): an INT3 in patch
memory is a hypercall whose pre-decoded Operation runs through the same emulator
as a trap of its class; traps are reported to `on_trap`; patch addresses are
reported as guest addresses."""

from __future__ import annotations

import io
from pathlib import Path

from runtime_guest import RESULTS, asm, exit_with, kernel, words

from bt import layout
from bt.operation import Operation
from runtime.config import RunConfig
from runtime.patching import PatchExit
from runtime.vm import RunResult, Vm

STUB = layout.PATCH_BASE + 0x100


class FakePatcher:
    def __init__(self, resume: int) -> None:
        self.resume = resume
        self.trapped: list[Operation] = []
        self.asked: list[int] = []

    def on_trap(self, op: Operation) -> bool | None:
        self.trapped.append(op)
        return None

    def exit_at(self, address: int) -> PatchExit | None:
        self.asked.append(address)
        if address != STUB:
            return None
        op = Operation(cls="cli", address=0x100000, length=1, mnemonic="cli", operands=(), text="cli")
        return PatchExit(op, self.resume)

    def to_guest_eip(self, eip: int) -> int:
        return 0x100000 if layout.PATCH_BASE <= eip < layout.PATCH_BASE + layout.PATCH_SIZE else eip

    def resume_at(self, eip: int) -> int:
        return eip

    def window_at(self, address: int) -> tuple[int, int] | None:
        return None


def test_hypercall_runs_the_operation_and_resumes():
    vflags = layout.state("vflags")
    src = (f"sti\nmov eax, {STUB:#x}\njmp eax\n")
    image = kernel(src)
    back = layout.PATCH_BASE + 0x200
    vm = Vm(RunConfig(kernel=Path("<test>"), serial=io.BytesIO()), patcher=FakePatcher(back), image=image)
    vm.cpu.phys_write(STUB, b"\xcc")                                      # the hypercall
    vm.cpu.phys_write(back, asm(f"mov eax, [{vflags:#x}]\nmov [{RESULTS:#x}], eax\n" + exit_with(0), back))
    result = vm.run()
    assert isinstance(result, RunResult) and result.exit_status == 1
    assert not words(vm, RESULTS, 1)[0] & 0x200                          # CLI emulated: virtual IF off
    patcher = vm.traps.patcher
    assert isinstance(patcher, FakePatcher)
    assert patcher.asked == [STUB]
    assert [op.cls for op in patcher.trapped][:5] == ["lgdt", "lidt", "mov_to_sreg", "ltr", "sti"]
    assert vm.stats.exits["hypercall"] == 1
    assert vm.stats.hits[("hypercall", "cli", 0x100000)] == 1           # reported at the guest site


def test_hypercall_iret_back_to_ring3_lets_the_cpu_return_outward():
    from runtime_guest import UCODE, UDATA, USER, USTACK

    class IretPatcher(FakePatcher):
        def exit_at(self, address: int) -> PatchExit | None:
            self.asked.append(address)
            op = Operation(cls="iret", address=0x100000, length=1, mnemonic="iretd", operands=(),
                           text="iretd")
            return PatchExit(op, 0) if address == STUB else None

    src = (f"push {UDATA}\npush {USTACK:#x}\npush 0x202\npush {UCODE}\npush {USER:#x}\n"
           f"mov eax, {STUB:#x}\njmp eax\n")
    user = f"mov eax, cs\nmov [{RESULTS:#x}], eax\nmov eax, ss\nmov [{RESULTS + 4:#x}], eax\n" + exit_with(0)
    vm = Vm(RunConfig(kernel=Path("<test>"), serial=io.BytesIO()), patcher=IretPatcher(0),
            image=kernel(src, user=user))
    vm.cpu.phys_write(STUB, b"\xcc")
    result = vm.run()
    assert isinstance(result, RunResult) and result.exit_status == 1
    assert words(vm, RESULTS, 2) == (UCODE, UDATA)
