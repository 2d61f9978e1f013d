"""Virtual time from the per-block C hook (runtime/clock.py) against Unicorn's own count.

Both clocks must give every sample the same output, deterministic counts, and instruction
counts that agree; the Unicorn behaviours the block clock relies on are pinned on a bare
engine, so a Unicorn upgrade that changes them fails here first.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from keystone import KS_ARCH_X86, KS_MODE_32, Ks
from qemu import SAMPLES, Sample
from unicorn import UC_ARCH_X86, UC_HOOK_BLOCK, UC_HOOK_INSN, UC_MODE_32, Uc
from unicorn import x86_const as ux

from patchmgr.manager import PatchConfig
from runtime.clock import BlockClock, native_available
from runtime.config import RunConfig
from runtime.vm import Vm


def test_the_block_clock_is_built() -> None:
    if not native_available():
        if os.environ.get("CI"):
            pytest.fail("runtime._native is not built (pip install -e . compiles it)")
        pytest.skip("runtime._native is not built: runs use Unicorn's count")


def _run(sample: Sample, clock: str, patched: bool) -> tuple[Vm, bytes]:
    out = io.BytesIO()
    vm = Vm(RunConfig(kernel=sample.elf, cmdline=sample.cmdline, serial=out, clock=clock,
                      patch=PatchConfig() if patched else PatchConfig(enabled=False)))
    result = vm.run()
    assert result.exit_status == sample.exit_code
    return vm, out.getvalue()


@pytest.mark.skipif(not native_available(), reason="runtime._native is not built")
@pytest.mark.parametrize("patched", [False, True], ids=["unpatched", "patched"])
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.key)
def test_block_and_count_clocks_agree(sample: Sample, patched: bool) -> None:
    block, out_block = _run(sample, "block", patched)
    count, out_count = _run(sample, "count", patched)
    assert isinstance(block.insn_clock, BlockClock)
    assert out_block == out_count
    if not patched:
        assert out_block == sample.expected_serial() or sample.name == "zoo"
    # Slices end on block boundaries instead of exact counts, so a timer interrupt may come a
    # few instructions later and patches be made in another order: the totals stay close.
    a, b = block.stats.guest_insns, count.stats.guest_insns
    assert abs(a - b) <= max(300, b // 100), (a, b)
    again, out_again = _run(sample, "block", patched)
    assert (again.stats.counts(), out_again) == (block.stats.counts(), out_block)    # deterministic


def _engine(src: str) -> tuple[Uc, int]:
    code = bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(src, 0x1000)[0] or b"")
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, code)
    return uc, 0x1000 + len(code) - 1


LOOP = "mov dx, 0x3f8\nmov ecx, 4\ntop:\ninc eax\nnop\nin al, dx\ninc ebx\nout dx, al\ndec ecx\njnz top\nhlt"


def test_unicorn_stops_before_the_block_whose_hook_asked_it() -> None:
    uc, end = _engine("mov ecx, 5\ntop:\ninc eax\ninc ebx\ndec ecx\njnz top\nhlt")
    entered: list[int] = []

    def hook(u: Uc, address: int, _size: int, _data: object) -> None:
        entered.append(address)
        if len(entered) == 3:
            u.emu_stop()

    uc.hook_add(UC_HOOK_BLOCK, hook)
    uc.emu_start(0x1000, end)
    assert uc.reg_read(ux.UC_X86_REG_EIP) == entered[2]      # stopped at the third block's start
    assert uc.reg_read(ux.UC_X86_REG_EAX) == 2               # which did not run


def test_a_stop_from_an_io_hook_lets_the_block_run_to_its_end() -> None:
    uc, end = _engine(LOOP)
    calls: list[int] = []

    def hook(u: Uc, _port: int, _size: int, _data: object) -> int:
        calls.append(u.reg_read(ux.UC_X86_REG_EIP))
        if len(calls) == 1:
            u.emu_stop()
        return 0

    uc.hook_add(UC_HOOK_BLOCK, lambda *a: None)
    uc.hook_add(UC_HOOK_INSN, hook, None, 1, 0, ux.UC_X86_INS_IN)
    uc.emu_start(0x1000, end)
    assert uc.reg_read(ux.UC_X86_REG_EBX) == 1                # the INC after the IN ran
    assert uc.reg_read(ux.UC_X86_REG_EIP) == calls[0] - 2     # back at `top`, the block's next run


def test_the_vm_counts_exact_instructions_around_exits() -> None:
    """A guest whose instruction count is known: the block clock gives it exactly, through a
    trap (CLI), I/O exits and its isa-debug-exit in the middle of a block."""
    from runtime.bench import assemble
    from runtime.vm import RawImage

    src = ("mov ecx, 10\ntop:\ncli\nmov dx, 0x80\nin al, dx\nsti\ndec ecx\njnz top\n"
           "mov al, 0\nout 0xf4, al\nnop\nnop\nhlt\n")
    code = assemble(src)
    counts = []
    for clock in ("block", "count"):
        vm = Vm(RunConfig(kernel=Path("<n>"), serial=io.BytesIO(), clock=clock),
                image=RawImage(((0x100000, code),), 0x100000))
        assert vm.run().exit_status == 1
        counts.append(vm.stats.guest_insns)
    assert counts[0] == 1 + 10 * 6 + 2              # to the OUT that ends the guest, exactly
    assert counts[1] - counts[0] in (0, 1)          # Unicorn's count takes the next one too


@pytest.mark.skipif(not native_available(), reason="runtime._native is not built")
def test_a_one_instruction_slice_in_overlapping_exact_blocks_runs_one_instruction() -> None:
    # Two exact blocks, one entered in the middle of the other (ring 3 stepping through a
    # patched window does this: runtime/userstep.py): one code hook per address, or a step
    # counts the instruction twice and stops before it runs, forever.
    uc, end = _engine("inc eax\ninc ebx\ninc ecx\ninc edx\nnop")
    clock = BlockClock(uc, lambda a, b: b - a)          # every instruction here is one byte
    for at in (0x1000, 0x1001):
        clock.state.exact_at, clock.state.exact_size = at, end - at
        clock.begin(2)                                  # makes it exact
        clock.end(at, False)
    for _ in range(3):                                  # as the run loop: until it moves
        clock.begin(1)
        uc.emu_start(0x1001, end)
        eip = uc.reg_read(ux.UC_X86_REG_EIP)
        ran = clock.end(eip, False)
        if eip != 0x1001:
            break
    assert (eip, ran) == (0x1002, 1)
    assert [uc.reg_read(r) for r in (ux.UC_X86_REG_EBX, ux.UC_X86_REG_ECX)] == [1, 0]
