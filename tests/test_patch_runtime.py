"""The patch manager inside the real VMM (runtime/patching.py's adapter): self-modifying
code caught by write-protected pages, and a guest patched on its first trap."""

from __future__ import annotations

import io
from pathlib import Path

import runtime_guest as guest
from capstone import CS_ARCH_X86, CS_GRP_JUMP, CS_MODE_32, Cs, CsInsn
from capstone.x86 import X86_OP_IMM

from patchmgr.manager import PatchConfig, PatchManager
from runtime.bench import LOAD, assemble
from runtime.config import RunConfig
from runtime.patching import _VmMemory
from runtime.ruletest import LinearCode
from runtime.vm import RawImage, Vm

# Pass 1: STI traps and is patched. Between passes the guest rewrites the immediate of the
# displaced `mov ebx, 1` (refresh), then, on pass 3, the STI itself (removal).
GUEST = """
again:
sti
mov ebx, 1
add esi, ebx
dec edx
jz done
cmp edx, 1
je kill
mov byte ptr [{imm:#x}], 2
jmp again
kill:
mov byte ptr [{sti:#x}], 0x90
jmp again
done:
xor eax, eax
out 0xf4, al
hlt
"""


def test_self_modifying_code_under_the_vmm() -> None:
    src = GUEST.format(imm=LOAD + 2, sti=LOAD)
    code = assemble(src)
    vm = Vm(RunConfig(kernel=Path("<smc>"), serial=io.BytesIO()), image=RawImage(((LOAD, code),), LOAD))
    memory = _VmMemory(vm)
    cs = Cs(CS_ARCH_X86, CS_MODE_32)
    cs.detail = True
    targets = {i.operands[0].imm for i in cs.disasm(code, LOAD)
               if i.group(CS_GRP_JUMP) and i.operands[0].type == X86_OP_IMM}
    manager = PatchManager(PatchConfig(), memory, LinearCode(LOAD, LOAD + len(code), targets), watch=memory)
    memory.manager = manager
    vm.traps.patcher = manager
    vm.cpu.write_name("edx", 3)
    vm.cpu.write_name("esi", 0)
    result = vm.run()
    assert result.exit_status == 1
    # ebx was 1, then 2 (refreshed patch), then 2 again with the STI gone.
    assert vm.cpu.read_name("esi") == 1 + 2 + 2
    assert manager.stats.smc_refreshed == 1
    assert manager.stats.smc_removed == 1
    assert vm.stats.exits["trap"] == 2           # the first STI, and the STI after the refresh


def test_guest_store_into_patch_memory_is_dropped_and_reported() -> None:
    from bt import layout
    target = layout.PATCH_BASE + 0x10
    src = f"mov dword ptr [{target:#x}], 0x41414141\nxor eax, eax\nout 0xf4, al\nhlt\n"
    code = assemble(src)
    vm = Vm(RunConfig(kernel=Path("<w>"), serial=io.BytesIO()), image=RawImage(((LOAD, code),), LOAD))
    memory = _VmMemory(vm)
    manager = PatchManager(PatchConfig(), memory, LinearCode(LOAD, LOAD + len(code)), watch=memory)
    memory.manager = manager
    vm.traps.patcher = manager
    before = memory.read(target, 4)
    assert vm.run().exit_status == 1
    assert memory.read(target, 4) == before
    assert vm.stats.vmm_writes == 1
    assert vm.stats.vmm_writers == [(LOAD, target, 4, "patch memory")]


# A #DE raised by a displaced DIV inside a patch block: the guest's handler must see the
# DIV's guest address in its frame, and its IRET back to that address (inside the patched
# window) must continue in the patch block.
FAULT = """
mov ecx, 0
mov eax, 10
jmp window
window:
cli
xor edx, edx
div ecx
mov esi, eax
xor eax, eax
out 0xf4, al
hlt
"""
HANDLER = "mov ebx, dword ptr [esp]\nmov ecx, 1\niretd\n"


def test_fault_in_patch_code_is_reported_at_the_guest_eip() -> None:
    image = guest.kernel(FAULT, handlers={0: (HANDLER, 0, False)})
    vm = Vm(RunConfig(kernel=Path("<de>"), serial=io.BytesIO()), image=image)
    code = dict(image.chunks)[guest.KERNEL]
    cs = Cs(CS_ARCH_X86, CS_MODE_32)
    cs.detail = True
    insns = list(cs.disasm(code, guest.KERNEL))
    window = next(i.operands[0].imm for i in insns if i.mnemonic == "jmp")
    div = next(i.address for i in insns if i.mnemonic == "div")
    memory = _VmMemory(vm)
    manager = PatchManager(PatchConfig(), memory, LinearCode(window, div + 8, {window, div + 2}),
                           watch=memory)
    memory.manager = manager
    vm.traps.patcher = manager
    assert vm.run().exit_status == 1
    cli = manager.patches[window]
    assert cli.kind == "jmp" and cli.covers(div)          # the DIV ran from patch memory
    assert vm.cpu.read_name("ebx") == div                 # the frame showed the guest address
    assert vm.cpu.read_name("esi") == 10                  # and the DIV was re-run, by 1
    assert vm.stats.vectors[0] == 1


# An IRQ that arrives inside a CLI section waits (`pending`) and is let in by the patched
# STI's block at the guest address after its window: the gate (patchmgr/block.py) is
# switched by the runtime when `pending` turns on, and back when the IRQ is taken.
PIT_GUEST = """
mov al, 0x11
out 0x20, al
mov al, 0x20
out 0x21, al
mov al, 4
out 0x21, al
mov al, 1
out 0x21, al
mov al, 0xfe
out 0x21, al
mov al, 0x34
out 0x43, al
mov al, 0xa9
out 0x40, al
mov al, 0x04
out 0x40, al
mov edi, 5
outer:
cli
mov ecx, 60000
spin:
dec ecx
jnz spin
sti
mov ebx, 1
mov ebx, 2
dec edi
jnz outer
cli
xor eax, eax
out 0xf4, al
hlt
"""
PIT_HANDLER = f"""
inc dword ptr [{guest.RESULTS:#x}]
push eax
mov eax, [esp + 4]
mov [{guest.RESULTS + 4:#x}], eax
mov al, 0x20
out 0x20, al
pop eax
iretd
"""


def _with_patch_manager(image: RawImage) -> tuple[Vm, PatchManager, list[CsInsn]]:
    """A VM for a test kernel with a patch manager wired in as runtime/patching.py does,
    the kernel's code as one straight block (its jump targets known)."""
    (code,) = [c for a, c in image.chunks if a == guest.KERNEL]
    vm = Vm(RunConfig(kernel=Path("<pit>"), serial=io.BytesIO(), max_insns=5_000_000), image=image)
    memory = _VmMemory(vm)
    cs = Cs(CS_ARCH_X86, CS_MODE_32)
    cs.detail = True
    insns = list(cs.disasm(code, guest.KERNEL))
    targets = {i.operands[0].imm for i in insns if i.group(CS_GRP_JUMP) and i.operands[0].type == X86_OP_IMM}
    manager = PatchManager(PatchConfig(), memory, LinearCode(guest.KERNEL, guest.KERNEL + len(code), targets),
                           watch=memory)
    memory.manager = manager
    vm.traps.patcher = manager
    vm.vcpu.on_pending = manager.set_pending
    return vm, manager, insns


def test_irq_pending_in_a_cli_section_enters_at_the_patched_sti_window_end() -> None:
    image = guest.kernel(PIT_GUEST, handlers={0x20: (PIT_HANDLER, 0, False)})
    vm, manager, insns = _with_patch_manager(image)
    result = vm.run()
    assert result.exit_status == 1
    (sti,) = [i.address for i in insns if i.mnemonic == "sti"]
    patch = manager.patches[sti]
    assert patch.block is not None and patch.block.gate is not None
    ticks, last_return = guest.words(vm, guest.RESULTS, 2)
    assert ticks >= 4
    assert last_return == patch.end                      # let in right after the STI's window
    assert vm.stats.exits["hypercall"] >= 4
    assert vm.vcpu.pending == 0
    assert vm.cpu.phys_read(patch.block.gate, 4) == patch.end.to_bytes(4, "little")   # gate back


def test_irq_unmasked_by_a_patched_out_arrives_at_the_window_end() -> None:
    """The OUT that unmasks a waiting IRQ0 is a hypercall in a patch block: the interrupt
    comes in at the guest address where the block leaves, not a time slice later."""
    from test_runtime_deliver import SAVE_EIP_AND_EXIT, UNMASK_LATE

    vm, manager, insns = _with_patch_manager(
        guest.kernel(UNMASK_LATE, handlers={0x20: (SAVE_EIP_AND_EXIT, 0, False)}))
    unmask = [i.address for i in insns if i.mnemonic == "out" and i.op_str == "0x21, al"][-1]
    manager.patch_all([unmask])
    patch = manager.patches[unmask]
    assert patch.block is not None
    result = vm.run()
    assert result.exit_status == 1
    (frame_eip,) = guest.words(vm, guest.RESULTS, 1)
    assert frame_eip == patch.end
    assert vm.cpu.phys_read(frame_eip, 2) == b"\x90\x90"        # right after the OUT
