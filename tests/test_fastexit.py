"""The fast exits (runtime/fastexit.py, runtime/native/fastexit.c): CLI and STI of the guest
kernel emulated in C must leave the guest, the statistics, virtual time and the trap history
exactly as the Python path leaves them. Each test runs the same guest both ways."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from runtime_guest import KERNEL, TICK_PENDING, kernel, run

from bt.cli import main
from bt.errors import GuestStop
from runtime import vm as vm_module
from runtime.clock import native_available
from runtime.fastexit import FastExits
from runtime.vm import RunResult, Vm

pytestmark = pytest.mark.skipif(not native_available(), reason="runtime._native is not built")

ROOT = Path(__file__).resolve().parent.parent


def _same_runs(src: str) -> tuple[Vm, Vm]:
    """Run `src` with and without the fast exits; both must end alike, counted alike."""
    image = kernel(src)
    fast_vm, fast = run(image)
    slow_vm, slow = run(image, fast=False)
    assert type(fast) is type(slow)
    if isinstance(fast, RunResult):
        assert isinstance(slow, RunResult)
        assert fast.exit_status == slow.exit_status
        assert fast.last_exits == slow.last_exits
    else:
        assert isinstance(fast, GuestStop) and isinstance(slow, GuestStop)
        assert (fast.reason, fast.eip, fast.last_exits) == (slow.reason, slow.eip, slow.last_exits)
    a, b = fast_vm.stats, slow_vm.stats
    assert a.hits == b.hits
    assert a.exit_count == b.exit_count
    assert a.guest_insns == b.guest_insns
    assert a.virtual_ns == b.virtual_ns
    assert fast_vm.traps.latch.clears == slow_vm.traps.latch.clears
    assert fast_vm.vcpu.vflags == slow_vm.vcpu.vflags
    assert slow_vm.traps.fast is None
    return fast_vm, slow_vm


def test_cli_sti_in_a_loop_are_taken_in_c_after_their_first_trap():
    fast_vm, _ = _same_runs("mov ecx, 100\nl: cli\nsti\ndec ecx\njnz l\ncli\nmov al, 0\nout 0xf4, al\n")
    assert fast_vm.traps.fast is not None
    assert fast_vm.traps.fast.taken == 2 * 99     # the first CLI and STI go through Python
    assert not fast_vm.vcpu.vif
    assert fast_vm.stats.by_class["cli"] == 101 and fast_vm.stats.by_class["sti"] == 100


def test_a_site_the_guest_rewrites_goes_back_to_python():
    # The CLI at `site` becomes an STI after five calls (the guest writes its own code):
    # C sees the byte is no longer the site's and leaves the trap to Python, which decodes STI.
    src = ("mov ecx, 10\nl: call site\ncmp ecx, 6\njne keep\nmov byte ptr [site], 0xfb\n"
           "keep: dec ecx\njnz l\nmov al, 0\nout 0xf4, al\nsite: cli\nret\n")
    fast_vm, _ = _same_runs(src)
    assert fast_vm.stats.by_class["cli"] == 5 and fast_vm.stats.by_class["sti"] == 5
    assert fast_vm.vcpu.vif
    assert fast_vm.traps.fast is not None and fast_vm.traps.fast.taken == 4


def test_the_trap_history_keeps_its_order_across_c_and_python_exits():
    # CLIs taken in C between OUTs taken in Python, then a stop: the stop report's last exits
    # are the same, in the same order, as when Python takes every exit.
    fast_vm, _ = _same_runs("mov ecx, 30\nl: cli\nout 0x80, al\ncli\ncli\ndec ecx\njnz l\nud2\n")
    assert fast_vm.traps.fast is not None and fast_vm.traps.fast.taken > 0


def test_int_13_and_other_faults_at_cpl_1_stay_with_python():
    # INT 0x0D (a software interrupt with #GP's vector) and a real #GP with an error code
    # (a bad selector) go through Python: the C hook takes only #GP(0) of a registered site.
    handlers = {13: ("add dword ptr [0x23000], 1\nadd dword ptr [esp], 4\niretd\n", 0, False)}
    src = ("mov ecx, 3\nl: cli\nint 0x0d\nsti\ndec ecx\njnz l\nmov al, 0\nout 0xf4, al\n")
    image = kernel(src, handlers)
    fast_vm, fast = run(image)
    slow_vm, slow = run(image, fast=False)
    assert isinstance(fast, RunResult) and isinstance(slow, RunResult)
    assert fast.last_exits == slow.last_exits and fast_vm.stats.hits == slow_vm.stats.hits
    assert fast_vm.stats.vectors == slow_vm.stats.vectors


def test_an_sti_with_an_interrupt_waiting_goes_to_python_and_the_interrupt_comes_after_its_shadow():
    # The STI at `site` runs three times: twice with nothing waiting (the second in C), then
    # with IRQ 0 latched while the virtual IF is clear. That one must deliver the interrupt
    # after the instruction in STI's shadow (the RET), so the frame returns to `marker`.
    handler = "mov eax, [esp]\nmov [0x23000], eax\nmov al, 0x20\nout 0xf4, al\n"
    src = ("cli\ncall site\ncli\ncall site\ncli\n" + TICK_PENDING
           + "call site\nmarker:\nnop\nhlt\nsite: sti\nret\n")
    image = kernel(src, {0x20: (handler, 0, False)})
    fast_vm, fast = run(image)
    slow_vm, slow = run(image, fast=False)
    assert isinstance(fast, RunResult) and isinstance(slow, RunResult)
    assert fast.exit_status == slow.exit_status == (0x20 << 1) | 1
    assert fast.last_exits == slow.last_exits and fast_vm.stats.hits == slow_vm.stats.hits
    assert fast_vm.stats.virtual_ns == slow_vm.stats.virtual_ns
    returned = int.from_bytes(fast_vm.cpu.phys_read(0x23000, 4), "little")
    assert returned == int.from_bytes(slow_vm.cpu.phys_read(0x23000, 4), "little")
    code = next(data for addr, data in image.chunks if addr == KERNEL)
    assert code[returned - KERNEL] == 0x90 and code[returned - KERNEL + 1] == 0xF4    # marker: NOP; HLT
    assert fast_vm.traps.fast is not None and fast_vm.traps.fast.taken == 1      # the second STI


def test_rdtsc_in_c_reads_the_same_virtual_time_as_python():
    # RDTSC at two sites, between Python exits (an OUT) and HLTs woken by the PIT (a HLT moves
    # virtual time inside its hook): every value the guest reads is the same both ways.
    handler = "push eax\nmov al, 0x20\nout 0x20, al\npop eax\niretd\n"
    src = (TICK_PENDING + "mov ecx, 12\nmov edi, 0x24000\n"
           "l: rdtsc\nmov [edi], eax\nmov [edi+4], edx\nout 0x80, al\nrdtsc\nmov [edi+8], eax\n"
           "sti\nhlt\ncli\nrdtsc\nmov [edi+12], eax\nadd edi, 16\ndec ecx\njnz l\n"
           "mov al, 0\nout 0xf4, al\n")
    image = kernel(src, {0x20: (handler, 0, False)})
    fast_vm, fast = run(image)
    slow_vm, slow = run(image, fast=False)
    assert isinstance(fast, RunResult) and isinstance(slow, RunResult)
    assert fast.last_exits == slow.last_exits and fast_vm.stats.hits == slow_vm.stats.hits
    assert fast_vm.stats.virtual_ns == slow_vm.stats.virtual_ns
    values = fast_vm.cpu.phys_read(0x24000, 12 * 16)
    assert values == slow_vm.cpu.phys_read(0x24000, 12 * 16)
    tsc = [int.from_bytes(values[i:i + 4], "little") for i in range(0, len(values), 4)]
    assert tsc[0] < tsc[2] < tsc[3] < tsc[4]           # it advances, across the HLT too
    assert fast_vm.traps.fast is not None and fast_vm.traps.fast.taken >= 3 * 11


def test_invalidate_folds_and_forgets_every_site():
    fast_vm, _ = _same_runs("mov ecx, 5\nl: cli\nsti\ndec ecx\njnz l\nmov al, 0\nout 0xf4, al\n")
    fast = fast_vm.traps.fast
    assert fast is not None
    assert len(fast._registered) == 2          # the CLI and the STI
    assert all(site > KERNEL for site in fast._registered)
    fast.invalidate()
    assert not fast._registered and fast.state.exits == 0


@pytest.mark.parametrize("sample, flags", [
    ("irqsave", ["--no-patch"]), ("irqsave", ["--leaks-only"]), ("higherhalf", ["--no-patch"]),
    # Sites the patch manager refuses (a disabled class) are the fast exits' in a patched run;
    ("irqsave", ["--disable-class", "cli"]),
    # sites it patches after their 50th trap are not, until then: `quiet` says so.
    ("irqsave", ["--hot", "50", "--disable-class", "sti"]),
])
def test_samples_count_the_same_with_and_without_fast_exits(sample: str, flags: list[str],
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    kernel_elf = ROOT / "samples" / sample / f"{sample}.elf"
    made: list[FastExits] = []
    fast_exits = vm_module.Vm._fast_exits

    def counted(self: Vm) -> FastExits | None:
        fast = fast_exits(self)
        if fast is not None:
            made.append(fast)
        return fast

    outputs = []
    for name, hook in (("fast", counted), ("python", lambda self: None)):
        monkeypatch.setattr(vm_module.Vm, "_fast_exits", hook)
        js, serial = tmp_path / f"{name}.json", tmp_path / f"{name}.serial"
        with contextlib.redirect_stderr(io.StringIO()):
            code = main(["run", str(kernel_elf), *flags, "--json", str(js), "--serial", str(serial)])
        stats = json.loads(js.read_text())
        for key in [k for k in stats if "ns" in k or "wall" in k or "startup" in k]:
            del stats[key]
        outputs.append((code, serial.read_bytes(), stats))
    assert outputs[0][0] in (1, 3)
    assert outputs[0] == outputs[1]
    assert made and made[0].taken > 0


def test_exits_after_the_guests_isa_debug_exit_are_inert_in_c_too():
    # The guest writes isa-debug-exit and traps again in the same block (a CLI the C side
    # knows, then RDTSC): Python leaves such exits alone, so must C (no count, no effect).
    src = ("mov ecx, 3\nl: cli\nrdtsc\nsti\ndec ecx\njnz l\nmov al, 0\nout 0xf4, al\ncli\nrdtsc\nsti\nhlt\n")
    fast_vm, _slow_vm = _same_runs(src)
    assert fast_vm.stats.by_class["cli"] == 3 and fast_vm.stats.by_class["rdtsc"] == 3
