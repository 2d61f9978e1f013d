"""The VMM's own GDT slots are out of the guest's reach (runtime/machine.py: the real GDTR's
limit is the guest's), so every way a hostile guest could name them faults as the guest's
own table says: a selector beyond its GDT limit is #GP(selector) on hardware (SDM vol. 3
§5.4.1). Before, CPL 1 could load the VMM's ring-1 data selector, ring 3 could far-jump
to the VMM's DPL-3 code selector or far-call the VMM's call gate (which stopped the VM),
and a guest call gate naming the VMM's ring-0 code selector ran guest code at real CPL 0.
"""

from __future__ import annotations

import struct

import pytest
from runtime_guest import GDT, KCODE, RESULTS, UCODE, USER, gdt_bytes, kernel, run, to_user, words

from runtime import segments
from runtime.segments import call_gate
from runtime.vm import RunResult

# #GP handler: record the error code and the faulting CS:EIP, then exit 0.
RECORD_GP = f"""
    mov eax, [esp]
    mov [{RESULTS:#x}], eax
    mov eax, [esp + 4]
    mov [{RESULTS + 4:#x}], eax
    mov eax, [esp + 8]
    mov [{RESULTS + 8:#x}], eax
    mov al, 0
    out 0xf4, al
    hlt
"""

VMM_SELECTORS = {
    "ring-0 code": segments.VMM_CS0,
    "ring-0 data": segments.VMM_DS0,
    "ring-1 code": segments.VMM_CS1,
    "ring-1 data": segments.VMM_DS1,
    "ring-3 code": segments.VMM_CS3,
    "TSS": segments.VMM_TSS,
    "gate": segments.VMM_GATE,
}


def _gp(vm) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    error, eip, cs = words(vm, RESULTS, 3)
    return error, eip, cs


@pytest.mark.parametrize("name", ["ring-0 data", "ring-1 data", "ring-3 code"])
def test_the_guest_kernel_cannot_load_a_vmm_selector(name: str) -> None:
    sel = VMM_SELECTORS[name]
    vm, result = run(kernel(f"mov ax, {sel | 1:#x}\nmov ds, ax\nmov al, 1\nout 0xf4, al\n",
                            handlers={13: (RECORD_GP, 0, False)}))
    assert isinstance(result, RunResult) and result.exit_status == 1, result
    error, _eip, cs = _gp(vm)
    assert error == sel & 0xFFF8 and cs == KCODE


@pytest.mark.parametrize("name", ["ring-3 code", "gate", "ring-1 code"])
def test_user_mode_cannot_far_jump_or_call_into_the_vmm(name: str) -> None:
    sel = VMM_SELECTORS[name] | 3
    user = f".byte 0x9a\n.long 0\n.word {sel:#x}\nhlt\n"          # lcall sel:0
    vm, result = run(kernel(to_user(), handlers={13: (RECORD_GP, 0, False)}, user=user))
    assert isinstance(result, RunResult) and result.exit_status == 1, result
    _error, eip, cs = _gp(vm)
    assert (eip, cs) == (USER, UCODE)          # the guest's own #GP, at its own instruction


def test_a_guest_call_gate_to_the_vmm_ring0_code_never_reaches_cpl0() -> None:
    # The guest adds a DPL-3 call gate (slot 6) naming the VMM's ring-0 code selector, then
    # far-calls it from ring 3: the selector is beyond the guest's GDT, so #GP, not CPL 0.
    gate = call_gate(segments.VMM_CS0, 0x100000, 3).to_bytes()
    table = gdt_bytes() + gate
    src = f"""
        mov dword ptr [{GDT + 0x30:#x}], {struct.unpack('<I', gate[:4])[0]:#x}
        mov dword ptr [{GDT + 0x34:#x}], {struct.unpack('<I', gate[4:])[0]:#x}
        mov word ptr [0x20f00], {len(table) - 1}
        .byte 0x0f, 0x01, 0x15
        .long 0x20f00
    """ + to_user()
    user = ".byte 0x9a\n.long 0\n.word 0x33\nhlt\n"             # lcall 0x33:0 (gate, RPL 3)
    vm, result = run(kernel(src, handlers={13: (RECORD_GP, 0, False)}, user=user))
    assert isinstance(result, RunResult) and result.exit_status == 1, result
    _error, eip, cs = _gp(vm)
    assert (eip, cs) == (USER, UCODE)
    assert vm.cpu.read_name("cs") & 3 != 0
