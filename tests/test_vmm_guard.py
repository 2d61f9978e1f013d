"""The VMM area guard (runtime/guard.py): guest stores into the VMM's pages are dropped,
counted and reported with the guest EIP, patched or not; what the CPU itself writes for
the VMM (the TSS busy bit, descriptor accessed bits) still happens; patch code's own
stores into the patch-writable state page run untouched."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
import runtime_guest as guest
from capstone import CS_ARCH_X86, CS_GRP_JUMP, CS_MODE_32, Cs
from capstone.x86 import X86_OP_IMM
from test_runtime_stops import tiny_elf

from bt import layout
from bt.cli import main
from bt.cli.run import _report_guard
from patchmgr.manager import PatchConfig, PatchManager
from runtime import guard, segments
from runtime.bench import LOAD, assemble
from runtime.config import RunConfig
from runtime.patching import _VmMemory
from runtime.ruletest import LinearCode
from runtime.stats import RunStats
from runtime.vm import RawImage, Vm

CODE_TARGET = layout.VMM_CODE + 0x100          # the VMM's own code page
PT_TARGET = layout.VMM_PT + 4 * 0x16           # the PTE that maps the state block
STATE_TARGET = layout.state("cr0")             # a field only the VMM writes

STORES = f"""
mov dword ptr [{STATE_TARGET:#x}], 0x41414141
mov dword ptr [{CODE_TARGET:#x}], 0x42424242
mov byte ptr [{PT_TARGET:#x}], 0x43
xor eax, eax
out 0xf4, al
hlt
"""


def _vm(src: str) -> tuple[Vm, bytes]:
    code = assemble(src)
    vm = Vm(RunConfig(kernel=Path("<guard>"), serial=io.BytesIO()), image=RawImage(((LOAD, code),), LOAD))
    return vm, code


def _store_eips(code: bytes, base: int = LOAD) -> list[int]:
    cs = Cs(CS_ARCH_X86, CS_MODE_32)
    return [i.address for i in cs.disasm(code, base) if i.mnemonic == "mov" and "ptr [0x" in i.op_str]


def _snapshot(vm: Vm) -> list[bytes]:
    return [vm.cpu.phys_read(a, 4) for a in (STATE_TARGET, CODE_TARGET, PT_TARGET)]


def test_unpatched_guest_stores_into_the_vmm_area_are_dropped_and_reported() -> None:
    vm, code = _vm(STORES)
    before = _snapshot(vm)
    assert vm.run().exit_status == 1
    assert _snapshot(vm) == before
    eips = _store_eips(code)
    assert vm.stats.vmm_writes == 3
    assert vm.stats.vmm_writers == [(eips[0], STATE_TARGET, 4, "state"),
                                    (eips[1], CODE_TARGET, 4, "vmm code"),
                                    (eips[2], PT_TARGET, 1, "page table")]
    assert vm.vcpu.cr(0) == 0x11              # the virtual CR0 the VMM keeps, untouched
    data = vm.stats.to_dict()
    assert data["vmm_writes"] == 3
    assert [w["region"] for w in data["vmm_writers"]] == ["state", "vmm code", "page table"]
    assert data["vmm_writers"][0] == {"eip": eips[0], "symbol": f"{eips[0]:#x}", "address": STATE_TARGET,
                                      "size": 4, "region": "state"}


def test_every_page_but_the_patch_writable_state_page_is_protected() -> None:
    ranges = guard.protected_ranges()
    covered = sum(size for _, size in ranges)
    assert covered == layout.VMM_SIZE - layout.PATCH_STATE_SIZE
    for start, size in ranges:
        assert not start <= layout.PATCH_STATE_BASE < start + size
    for f in layout.STATE_FIELDS:
        writable = layout.PATCH_STATE_BASE <= f.address < layout.PATCH_STATE_BASE + layout.PATCH_STATE_SIZE
        assert writable == f.patch_writes, f.name


def test_stores_into_the_patch_writable_state_page_go_through() -> None:
    scratch = layout.state("scratch")
    vm, _ = _vm(f"mov dword ptr [{scratch:#x}], 0x44444444\nxor eax, eax\nout 0xf4, al\nhlt\n")
    assert vm.run().exit_status == 1
    assert vm.cpu.phys_read(scratch, 4) == b"DDDD"
    assert vm.stats.vmm_writes == 0


def test_a_corrupted_flags_word_is_counted_and_repaired() -> None:
    vflags = layout.state("vflags")
    vm, _ = _vm(f"mov dword ptr [{vflags:#x}], 0xfffffdff\nxor eax, eax\nout 0xf4, al\nhlt\n")
    assert vm.run().exit_status == 1
    assert vm.stats.vflags_corrupted == 1
    assert vm.stats.vflags_bad == [0xFFFFFDFF]
    # Invariant bytes back; the IF (clear) and IOPL (3) it held are kept.
    assert vm.cpu.phys_u32(vflags) == 0x00000032
    assert not vm.vcpu.vif and vm.vcpu.vflags & (3 << 12) == 3 << 12


def test_the_cpu_still_sets_busy_and_accessed_bits_for_the_vmm() -> None:
    # The guest loads its own GDT (descriptors with the accessed bit clear) and reloads DS,
    # ES, SS: the CPU sets the shadows' accessed bits, which the guard lets through.
    image = guest.kernel("mov ax, 0x10\nmov fs, ax\n" + guest.exit_with(0))
    vm, result = guest.run(image)
    assert not isinstance(result, Exception) and result.exit_status == 1
    assert vm.stats.vmm_writes == 0
    data = vm.cpu.phys_read(layout.VMM_GDT + guest.KDATA, 8)
    assert data[5] & 1, "accessed bit of the shadow kernel data descriptor"
    tss = vm.cpu.phys_read(layout.VMM_GDT + segments.VMM_TSS, 8)
    assert tss[5] & 0xF == segments.TYPE_TSS_BUSY     # BOOT's LTR at CPL 0


def test_a_guest_store_that_sets_more_than_the_accessed_bit_is_dropped() -> None:
    slot = layout.VMM_GDT + guest.KDATA + 4
    image = guest.kernel(f"mov dword ptr [{slot:#x}], 0x00cf9300\n"        # accessed, but DPL 0
                         f"mov dword ptr [{layout.VMM_LDT:#x}], 1\n" + guest.exit_with(0))
    vm, result = guest.run(image)
    assert not isinstance(result, Exception) and result.exit_status == 1
    assert [w[1:] for w in vm.stats.vmm_writers] == [(slot, 4, "gdt"), (layout.VMM_LDT, 4, "ldt")]
    assert vm.cpu.phys_u32(slot) & 0x6000 == 0x2000       # still the DPL-1 shadow


def test_a_low_alias_of_a_vmm_page_is_caught_too() -> None:
    # The guest's own page table maps linear 0x400000 onto the state block's protected page.
    pd, pt, pt2 = 0x30000, 0x31000, 0x32000
    table = bytearray(4096)
    for i in range(1024):
        struct.pack_into("<I", table, i * 4, (i << 12) | 0x3)
    chunks = ((pd, struct.pack("<II", pt | 0x3, pt2 | 0x3)), (pt, bytes(table)),
              (pt2, struct.pack("<I", layout.STATE_BASE | 0x3)))
    src = (f"mov eax, {pd:#x}\nmov cr3, eax\nmov eax, cr0\nor eax, 0x80000000\nmov cr0, eax\n"
           "mov dword ptr [0x400000], 0x45454545\n" + guest.exit_with(0))
    vm, result = guest.run(guest.kernel(src, chunks=chunks))
    assert not isinstance(result, Exception) and result.exit_status == 1
    assert vm.cpu.phys_u32(layout.STATE_BASE) == 0
    # Reported at the physical address, the one Unicorn gives the hook (runtime/guard.py).
    assert [w[1:] for w in vm.stats.vmm_writers] == [(layout.STATE_BASE, 4, "state")]


# With the patch manager: the STI traps and is patched; the store after it is displaced into
# the patch block and runs from patch memory, where it must be reported at its guest EIP.
PATCHED = f"""
mov ecx, 2
again:
sti
mov dword ptr [{CODE_TARGET:#x}], 0x46464646
cli
dec ecx
jnz again
mov dword ptr [{layout.PATCH_BASE + 0x10:#x}], 0x47474747
mov dword ptr [{STATE_TARGET:#x}], 0x48484848
xor eax, eax
out 0xf4, al
hlt
"""


def test_patched_guest_stores_are_dropped_and_reported_at_the_guest_eip() -> None:
    vm, code = _vm(PATCHED)
    memory = _VmMemory(vm)
    cs = Cs(CS_ARCH_X86, CS_MODE_32)
    cs.detail = True
    insns = list(cs.disasm(code, LOAD))
    targets = {i.operands[0].imm for i in insns if i.group(CS_GRP_JUMP) and i.operands[0].type == X86_OP_IMM}
    manager = PatchManager(PatchConfig(), memory, LinearCode(LOAD, LOAD + len(code), targets), watch=memory)
    memory.manager = manager
    vm.traps.patcher = manager
    vm.vcpu.on_pending = manager.set_pending
    patch_word = memory.read(layout.PATCH_BASE + 0x10, 4)
    before = _snapshot(vm)
    assert vm.run().exit_status == 1
    (sti,) = [i.address for i in insns if i.mnemonic == "sti"]
    assert manager.patches[sti].block is not None     # the STI was patched: its code wrote vflags
    in_code, in_patch, in_state = _store_eips(code)
    assert vm.stats.vmm_writers == [(in_code, CODE_TARGET, 4, "vmm code"),     # first pass: trapped STI
                                    (in_code, CODE_TARGET, 4, "vmm code"),     # second: from the block
                                    (in_patch, layout.PATCH_BASE + 0x10, 4, "patch memory"),
                                    (in_state, STATE_TARGET, 4, "state")]
    assert _snapshot(vm) == before
    assert memory.read(layout.PATCH_BASE + 0x10, 4) == patch_word
    assert vm.stats.vmm_writes == 4
    assert vm.stats.vflags_corrupted == 0


def test_bt_run_reports_the_dropped_stores() -> None:
    stats = RunStats(vmm_writes=2, vmm_writers=[(0x100000, STATE_TARGET, 4, "state"),
                                                (0x10000a, CODE_TARGET, 1, "vmm code")],
                     vflags_corrupted=1, vflags_bad=[0xFFFFFFFF])
    out = io.StringIO()
    _report_guard(stats, out)
    assert out.getvalue().splitlines() == [
        f"guest stores into the VMM area (dropped): 2, from EIP 0x100000 -> {STATE_TARGET:#x} (state), "
        f"0x10000a -> {CODE_TARGET:#x} (vmm code)",
        "virtual flags word corrupted by the guest (repaired): 1 (0xffffffff)"]


class _Recorder:
    def __init__(self) -> None:
        self.writes: list[tuple[int, int]] = []

    def on_guest_write(self, address: int, size: int) -> None:
        self.writes.append((address, size))


def test_the_code_watch_reports_linear_addresses_under_paging() -> None:
    # The guard's hook gets physical addresses; the patch manager's watch must get back the
    # linear address it watched (here linear 0x400000 is physical 0x50000).
    pd, pt, pt2 = 0x30000, 0x31000, 0x32000
    vm, _ = _vm("hlt\n")
    vm.cpu.phys_write(pd, struct.pack("<II", pt | 0x3, pt2 | 0x3))
    vm.cpu.phys_write(pt2, struct.pack("<I", 0x50000 | 0x3))
    vm.vcpu.set_cr(3, pd)
    vm.vcpu.set_cr(0, vm.vcpu.cr(0) | 0x80000000)
    memory = _VmMemory(vm)
    recorder = _Recorder()
    memory.manager = recorder  # type: ignore[assignment]
    memory.watch(0x400010, 0x400015)
    assert vm.guard.ram_writes is not None
    assert vm.guard.ram_writes(0x50012, 2, 0x4949)
    assert recorder.writes == [(0x400012, 2)]
    assert vm.cpu.phys_read(0x50012, 2) == b"II"
    assert not vm.guard.ram_writes(0x60000, 4, 0)      # a page nobody watches: not handled


@pytest.mark.parametrize("mode", [["--no-patch"], []])
def test_bt_run_stats_and_json_name_the_stores(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               mode: list[str]) -> None:
    code = assemble(f"mov dword ptr [{STATE_TARGET:#x}], 1\n"
                    f"mov dword ptr [{layout.PATCH_BASE + 0x20:#x}], 2\n"
                    "mov eax, 0\nout 0xf4, eax\n")
    elf = tiny_elf(code, tmp_path / "guard.elf")
    out_json = tmp_path / "stats.json"
    assert main(["run", str(elf), *mode, "--stats", "--json", str(out_json)]) == 1
    err = capsys.readouterr().err
    first, second = _store_eips(code)
    assert (f"guest stores into the VMM area (dropped): 2, from EIP {first:#x} -> {STATE_TARGET:#x} (state), "
            f"{second:#x} -> {layout.PATCH_BASE + 0x20:#x} (patch memory)") in err
    data = json.loads(out_json.read_text())
    assert data["vmm_writes"] == 2 and data["vflags_corrupted"] == 0


def test_a_kernel_patched_before_the_state_block_split_is_refused() -> None:
    # Its patch code addresses the old single-page state block (record version 1).
    from bt.errors import InputError
    from patchmgr import record

    old = json.dumps({"version": 1, "patch_base": layout.PATCH_BASE, "patch_top": layout.PATCH_BASE,
                      "rule_data": {}, "patches": [], "refusals": []}).encode()
    with pytest.raises(InputError, match=r"record version 1 \(this ring1 reads 2\)"):
        record.load(old, b"")


class _LetGo:
    """A watcher that stops watching its page on the first store into it (as the patch
    manager does when a store lands on a patch)."""

    def __init__(self, owner: guard.VmmGuard) -> None:
        self.guard = owner
        self.pending_seen: dict[int, int] = {}

    def before_store(self, phys: int, size: int) -> None:
        self.guard.unwatch(phys & ~0xFFF, self)
        self.pending_seen = dict(self.guard.pending)

    def after_store(self, phys: int, size: int) -> None:
        return None


def test_rights_asked_for_inside_the_store_hook_wait_for_the_end_of_the_slice() -> None:
    # Unicorn 2.1.4 restarts a store (or crashes later) whose hook changes page rights
    # (Linux's boot, issue 15): the change waits in `pending`; a store into the page before
    # then is made by the guard as it will be once the page is writable.
    from unicorn import UC_PROT_ALL

    vm, _ = _vm("hlt\n")
    g = vm.guard
    watcher = _LetGo(g)
    g.watch(0x50000, watcher)
    g._in_store = True            # as `_on_write` sets it around `ram_writes`
    try:
        assert g.ram_writes(0x50010, 4, 0x41414141)
        assert watcher.pending_seen == {0x50000: UC_PROT_ALL}
        assert g.ram_writes(0x50020, 4, 0x42424242)     # no watcher, rights still pending
    finally:
        g._in_store = False
    assert vm.cpu.phys_read(0x50010, 4) == b"AAAA" and vm.cpu.phys_read(0x50020, 4) == b"BBBB"
    assert g.apply_pending() and g.pending == {}
    assert not g.ram_writes(0x50030, 4, 0)           # applied: an ordinary page again
