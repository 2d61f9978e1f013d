"""The VMM area moves when the guest maps its slot (runtime/relocate.py), patched or not.

Two page directories map the two top slots in turn (A: 0xFFC00000 onto physical 4 MiB, B:
0xFF800000 onto physical 8 MiB), so that every CR3 load conflicts with the slot the VMM
sits in and moves it: 1023 -> 1022 on A, 1022 -> 1023 on B. Under patching, those CR3
loads come from patch code (MOV CR3 is a hypercall of the `crs` rule), so the area moves
while EIP is inside a patch block, and the CLI/STI patch code around them must keep using
the state block where it now is.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
import runtime_guest as guest
from capstone import CS_ARCH_X86, CS_GRP_JUMP, CS_MODE_32, Cs
from capstone.x86 import X86_OP_IMM

from bt import layout
from bt.errors import GuestStop
from patchmgr.manager import PatchConfig, PatchManager
from runtime.config import RunConfig
from runtime.patching import _VmMemory
from runtime.ruletest import LinearCode
from runtime.vm import RunResult, Vm

PD_A, PD_B, PT0 = 0x30000, 0x31000, 0x32000
PASSES = 3
# Slot 1023 (0xFFC00000) in A, slot 1022 (0xFF800000) in B: 4 MiB pages onto 4 and 8 MiB.
PAGE_A, PAGE_B = 0x00400000, 0x00800000


def _tables(pd_a_extra: dict[int, int] | None = None) -> tuple[tuple[int, bytes], ...]:
    pt = b"".join(struct.pack("<I", (i << 12) | 0x7) for i in range(1024))
    pds = []
    for base, slot, page in ((PD_A, 1023, PAGE_A), (PD_B, 1022, PAGE_B)):
        pd = bytearray(4096)
        struct.pack_into("<I", pd, 0, PT0 | 0x7)
        struct.pack_into("<I", pd, slot * 4, page | 0x83)
        if base == PD_A:
            for i, v in (pd_a_extra or {}).items():
                struct.pack_into("<I", pd, i * 4, v)
        pds.append((base, bytes(pd)))
    return ((PT0, pt), *pds)


PAGING_ON = f"""
    mov eax, cr4
    or eax, 0x10
    mov cr4, eax
    mov eax, {PD_A:#x}
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80010000
    mov cr0, eax
"""

LOOP = f"""
    mov ebx, {PASSES}
again:
    cli
    mov eax, {PD_A:#x}
    mov cr3, eax
    sti
    mov dword ptr [0xffc00010], ebx
    cli
    mov eax, {PD_B:#x}
    mov cr3, eax
    sti
    mov dword ptr [0xff800010], ebx
    add dword ptr [0x23000], ebx
    dec ebx
    jnz again
    mov al, 0
    out 0xf4, al
    hlt
"""


def _vm(patched: bool, src: str = PAGING_ON + LOOP, chunks: tuple[tuple[int, bytes], ...] | None = None,
        vmm_base: int | None = None) -> tuple[Vm, PatchManager | None]:
    image = guest.kernel(src, chunks=_tables() if chunks is None else chunks)
    vm = Vm(RunConfig(kernel=Path("<move>"), serial=io.BytesIO(), max_insns=2_000_000, vmm_base=vmm_base),
            image=image)
    if not patched:
        return vm, None
    code = dict(image.chunks)[guest.KERNEL]
    cs = Cs(CS_ARCH_X86, CS_MODE_32)
    cs.detail = True
    insns = list(cs.disasm(code, guest.KERNEL))
    targets = {i.operands[0].imm for i in insns if i.group(CS_GRP_JUMP) and i.operands[0].type == X86_OP_IMM}
    targets |= {i.address + i.size for i in insns if i.group(CS_GRP_JUMP)}
    memory = _VmMemory(vm)
    manager = PatchManager(PatchConfig(), memory, LinearCode(guest.KERNEL, guest.KERNEL + len(code), targets),
                           watch=memory, area=vm.machine.vmm, live=memory.live)
    memory.manager = manager
    vm.traps.patcher = manager
    vm.patches = manager
    vm.vcpu.on_pending = manager.set_pending
    return vm, manager


@pytest.mark.parametrize("patched", [False, True], ids=["unpatched", "patched"])
def test_every_cr3_load_moves_the_vmm_area_and_the_guest_keeps_its_own_mappings(patched: bool) -> None:
    vm, manager = _vm(patched)
    result = vm.run()
    assert isinstance(result, RunResult) and result.exit_status == 1
    moves = [(m.old, m.new) for m in vm.stats.vmm_moves]
    # Paging on with A: 1023 -> 1022; A again (no conflict), then every load of B or A
    # conflicts with where the area just went.
    assert moves[0] == (0xFFC00000, 0xFF800000)
    assert len(moves) == 2 * PASSES
    assert all(m in ((0xFFC00000, 0xFF800000), (0xFF800000, 0xFFC00000)) for m in moves)
    # The guest's stores went to its own pages, none to the VMM area.
    assert vm.cpu.phys_read(PAGE_A + 0x10, 4) == struct.pack("<I", 1)
    assert vm.cpu.phys_read(PAGE_B + 0x10, 4) == struct.pack("<I", 1)
    assert vm.cpu.phys_read(guest.RESULTS, 4) == struct.pack("<I", sum(range(1, PASSES + 1)))
    assert vm.stats.vmm_writes == 0 and vm.stats.vflags_corrupted == 0
    if manager is not None:
        kinds = {p.op.cls: p.kind for p in manager.patches.values()}
        assert kinds.get("mov_to_cr") == "jmp"
        assert manager.stats.dropped_on_move == 0
        # After the first pass the CR3 loads run from patch code: hypercalls, not traps.
        assert vm.stats.by_class["mov_to_cr"] >= 2 * PASSES
        assert sum(n for (kind, cls, _), n in vm.stats.hits.items()
                   if kind == "hypercall" and cls == "mov_to_cr") >= 2 * (PASSES - 1)
        # Every block's patch code addresses the state block where the area is now.
        area = vm.machine.vmm
        assert manager.area == area and manager.patch_memory.base == area.patch_base
        for block in manager.blocks():
            assert area.in_patch_memory(block.address)


def test_a_guest_that_maps_every_slot_stops_the_run_with_the_reason() -> None:
    full = {i: (i << 22) | 0x83 for i in range(1, 1023)}     # with PT0 and slot 1023: all of it
    vm, _ = _vm(False, chunks=_tables(full))
    with pytest.raises(GuestStop) as stop:
        vm.run()
    assert "no free 4 MiB slot" in stop.value.reason


def test_vmm_base_pins_the_area_and_a_guest_mapping_it_stops_the_run() -> None:
    src = PAGING_ON + "mov dword ptr [0xffc00010], 7\nmov al, 0\nout 0xf4, al\nhlt\n"
    vm, _ = _vm(False, src=src, vmm_base=0xC0000000)
    result = vm.run()
    assert isinstance(result, RunResult) and result.exit_status == 1
    assert vm.machine.vmm.base == 0xC0000000
    assert [(m.old, m.new) for m in vm.stats.vmm_moves] == [(0xFFC00000, 0xC0000000)]
    assert vm.cpu.phys_read(PAGE_A + 0x10, 4) == struct.pack("<I", 7)

    vm, _ = _vm(False, src=src, vmm_base=0xFFC00000)
    with pytest.raises(GuestStop) as stop:
        vm.run()
    assert "pinned" in stop.value.reason


def test_paging_off_brings_the_area_home() -> None:
    src = PAGING_ON + """
        mov eax, cr0
        and eax, 0x7fffffff
        mov cr0, eax
        mov al, 0
        out 0xf4, al
        hlt
    """
    vm, _ = _vm(False, src=src)
    result = vm.run()
    assert isinstance(result, RunResult) and result.exit_status == 1
    moves = [(m.old, m.new) for m in vm.stats.vmm_moves]
    assert moves == [(0xFFC00000, 0xFF800000), (0xFF800000, 0xFFC00000)]
    assert vm.machine.vmm == layout.HOME


def test_a_page_directory_entry_written_without_a_flush_is_seen_on_first_use() -> None:
    # PD A maps slot 1 nowhere; the guest adds a 4 MiB page there and uses it at once
    # (allowed on hardware: nothing not-present is cached). The directory's page is
    # write-monitored, so the shadow follows the store itself; an entry the guest has not
    # marked accessed stays out of it until its first use faults and sets A, as the CPU would.
    src = PAGING_ON + f"""
        mov dword ptr [{PD_A + 4 * 1:#x}], {PAGE_B | 0x83:#x}
        mov dword ptr [0x00400020], 0x51515151
        mov al, 0
        out 0xf4, al
        hlt
    """
    vm, _ = _vm(False, src=src)
    result = vm.run()
    assert isinstance(result, RunResult) and result.exit_status == 1
    assert vm.cpu.phys_read(PAGE_B + 0x20, 4) == b"QQQQ"
    assert vm.stats.exits["paging"] >= 1 and vm.stats.vectors[14] == 0
    # The CPU marked the new entry accessed and its 4 MiB page dirty, as on hardware.
    assert struct.unpack("<I", vm.cpu.phys_read(PD_A + 4, 4))[0] == PAGE_B | 0x83 | 0x60
    assert vm.directory.writes >= 1     # the store itself was seen (runtime/tablewatch.py)
