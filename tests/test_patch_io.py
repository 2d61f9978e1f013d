"""A string I/O instruction patched at its own first trap must not lose or repeat an
element (seen on minios: IDENTIFY data shifted by one dword when the `rep insd` whose
trap made the patch was the first one run). Unicorn calls the IN hook in the middle of
the instruction; a patch written then, with the code cache dropped under the running
instruction, made Unicorn restart it after the device had already given an element."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import runtime_guest as guest
from capstone import CS_ARCH_X86, CS_MODE_32, Cs
from patch_harness import LinearCode

from patchmgr.manager import PatchConfig, PatchManager
from runtime.config import RunConfig
from runtime.patching import _VmMemory
from runtime.vm import RunResult, Vm

#: A port no device of the PC claims (the IDE data port 0x1F0 is the disk's since the platform).
PORT = 0x2F0
BUF = 0x23100


class Counter:
    """A read-only data port that hands out 1, 2, 3, ... (like a disk's data register)."""

    name = "counter"
    ports = (range(PORT, PORT + 1),)

    def __init__(self) -> None:
        self.next = 1

    def io_read(self, port: int, size: int) -> int:
        value, self.next = self.next, self.next + 1
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        pass

    def tick(self, now_ns: int) -> None:
        pass


SRC = f"""
    mov ebx, 2
again:
    mov dx, {PORT:#x}
    mov edi, {BUF:#x}
    mov ecx, 8
    cld
    rep insd
    add dword ptr [{guest.RESULTS:#x}], 1
    mov esi, {BUF:#x}
    add esi, 0
    dec ebx
    jnz again
    mov al, 0
    out 0xf4, al
    hlt
"""


def _run(patched: bool) -> tuple[Vm, bytes]:
    image = guest.kernel(SRC)
    vm = Vm(RunConfig(kernel=Path("<ins>"), serial=io.BytesIO(), max_insns=100_000), image=image)
    device = vm.devices.bus.register(Counter())
    if patched:
        code = dict(image.chunks)[guest.KERNEL]
        memory = _VmMemory(vm)
        cs = Cs(CS_ARCH_X86, CS_MODE_32)
        again = next(i.address + i.size for i in cs.disasm(code, guest.KERNEL)
                     if i.mnemonic == "mov" and i.op_str == "ebx, 2")
        code_map = LinearCode(again, guest.KERNEL + len(code), {again})
        manager = PatchManager(PatchConfig(), memory, code_map, watch=memory, area=vm.machine.vmm,
                               live=memory.live)
        memory.manager = manager
        vm.traps.patcher = manager
        vm.patches = manager
    result = vm.run()
    assert isinstance(result, RunResult) and result.exit_status == 1
    assert device.next == 17            # 16 elements read, each exactly once
    return vm, vm.cpu.phys_read(BUF, 32)


def test_rep_insd_patched_at_its_first_trap_keeps_every_element() -> None:
    _vm, plain = _run(False)
    vm, patched = _run(True)
    assert plain == struct.pack("<8I", *range(9, 17))
    assert patched == plain
    assert vm.patches is not None and any(p.op.cls == "ins" for p in vm.patches.patches.values())


def test_unicorn_stopped_in_a_rep_ins_hook_leaves_the_element_stored_but_uncounted() -> None:
    """What runtime/traps.py `stop_in_io` makes up for, pinned on a bare engine (rerun on a
    Unicorn upgrade): emu_stop in the IN hook of a REP INSD stores the element but leaves
    ECX, EDI and EIP as they were before it."""
    from keystone import KS_ARCH_X86, KS_MODE_32, Ks
    from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_32, Uc
    from unicorn import x86_const as ux

    code = bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(
        f"mov dx, {PORT:#x}\nmov edi, 0x3000\nmov ecx, 4\nrep insd\nhlt", 0x1000)[0] or b"")
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, code)
    calls: list[int] = []

    def hook(uc: Uc, port: int, size: int, _data: object) -> int:
        calls.append(uc.reg_read(ux.UC_X86_REG_ECX))
        if len(calls) == 2:
            uc.emu_stop()
        return 0xA0 + len(calls)

    uc.hook_add(UC_HOOK_INSN, hook, None, 1, 0, ux.UC_X86_INS_IN)
    uc.emu_start(0x1000, 0x1000 + len(code) - 1)
    assert calls == [4, 3]
    assert uc.mem_read(0x3000, 8) == struct.pack("<II", 0xA1, 0xA2)       # both stored
    assert (uc.reg_read(ux.UC_X86_REG_ECX), uc.reg_read(ux.UC_X86_REG_EDI)) == (3, 0x3004)   # one counted


def test_code_pages_are_protected_between_slices_not_inside_an_io_hook() -> None:
    """A patch made at an IN/OUT's first exit write-protects its code page. Inside the hook,
    Unicorn 2.1.4 is in the middle of a translated block: a protection change there left a
    #PF pending (CR2 0) that it raised at the next instruction, and xv6's ideinit, its IN
    patched at the first exit, triple-faulted. The change waits for the slice's end."""
    from runtime.vm import Vm

    samples = Path(__file__).resolve().parents[1] / "samples"
    vm = Vm(RunConfig(kernel=samples / "hello" / "hello.elf", serial=io.BytesIO(), patch=PatchConfig()))
    uc = vm.machine.uc
    calls: list[tuple[int, bool]] = []
    protect = uc.mem_protect

    def spy(address: int, size: int, perms: int) -> None:
        calls.append((address, vm.traps.in_io_hook))
        protect(address, size, perms)

    uc.mem_protect = spy  # type: ignore[method-assign]
    assert vm.run().exit_status is not None
    assert vm.patches is not None
    io_sites = [s for s, p in vm.patches.patches.items() if p.op.cls in ("in", "out")]
    assert io_sites, "hello's IN/OUT sites are patched at their first exit"
    assert not any(in_hook for _, in_hook in calls)
    # Protected between slices, or before the run: the kernel's code pages are monitored
    # from the start (CSAM, runtime/monitored.py), so a patch there changes nothing.
    monitor = vm.patches.memory.monitor  # type: ignore[attr-defined]
    monitored = set(monitor.monitored)
    assert {s & ~0xFFF for s in io_sites} <= {a for a, _ in calls} | monitored
    assert vm.guard.pending == {}
