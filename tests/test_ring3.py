"""`bt run --guest-ring 3` (runtime/ring3/): the guest kernel at real CPL 3, against QEMU.

Both paging views print what QEMU prints on every sample but two observations that are the
point of the comparison: zoo's RPL/DPL lines (ring compression to 3 shows RPL 3 where ring 1
shows RPL 1) and, under the flat view only, guest user code reading guest kernel memory
(usermode's supervisor-page read, minios's `fault kernel`), which QEMU, ring 1 and the split
view refuse with a #PF.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from qemu import MINIOS, SAMPLES_BY_NAME

from bt import layout
from runtime.boot import BootModule
from runtime.config import RunConfig
from runtime.cpu import CS
from runtime.ring3.vtlb import FILLED, REPLACED, UNCHANGED, KernelView
from runtime.vm import RunResult, Vm

#: Samples whose output under ring 3 must be QEMU's, byte for byte, in both views.
SAME_IN_BOTH = ("hello", "irqsave", "irqsave-pv", "timer", "higherhalf")


def _run(name: str, view: str, ring: int = 3) -> tuple[Vm, RunResult, bytes]:
    sample = SAMPLES_BY_NAME[name]
    out = io.BytesIO()
    vm = Vm(RunConfig(kernel=sample.elf, cmdline=sample.cmdline, serial=out, max_insns=50_000_000,
                      guest_ring=ring, ring3_view=view))
    result = vm.run()
    return vm, result, out.getvalue()


@pytest.mark.parametrize("view", ["split", "flat"])
@pytest.mark.parametrize("name", SAME_IN_BOTH)
def test_samples_print_what_qemu_prints(name: str, view: str) -> None:
    vm, result, serial = _run(name, view)
    sample = SAMPLES_BY_NAME[name]
    assert serial == sample.expected_serial()
    assert result.exit_status == sample.exit_code
    # Really deprivileged: the guest kernel ended at real CPL 3 and no patch was made.
    assert vm.cpu.read(CS) & 3 == 3 and vm.patches is None


def test_usermode_split_is_qemu_and_counts_exits_by_cause() -> None:
    _vm, result, serial = _run("usermode", "split")
    assert serial == SAMPLES_BY_NAME["usermode"].expected_serial()
    r3 = result.stats.ring3
    # user.S makes 8 system calls (INT 0x80); its supervisor-page read is the one exception
    # from user mode; every return to user mode is an IRET the VMM emulates (one to enter).
    assert r3["bounce syscall"] == 8 and r3["bounce exception"] == 1
    assert r3["bounce iret to user"] == 9
    # Split: a view switch on every transition (the first entry included).
    assert r3["view switches"] == r3["bounce syscall"] + r3["bounce exception"] + r3["bounce iret to user"]
    assert r3["view faults"] > 0 and result.stats.exits["paging"] >= r3["view faults"]
    assert result.stats.to_dict()["ring3"] == dict(sorted(r3.items()))


def test_flat_lets_guest_user_code_read_guest_kernel_memory() -> None:
    """The security property measured: under QEMU (the golden), ring 1 and ring 3 split, the
    user task's read of the supervisor-only 4 MiB page faults; under ring 3 flat it reads it."""
    golden = SAMPLES_BY_NAME["usermode"].expected_serial()
    refused = b"#PF cr2=0x00800000 err=0x5\n#PF from ring 3, at the user load: yes\n"
    assert refused in golden
    for ring, view in ((1, "split"), (3, "split")):
        _vm, _result, serial = _run("usermode", view, ring)
        assert serial == golden
    _vm, result, serial = _run("usermode", "flat")
    assert refused not in serial
    assert serial.endswith(b"user: reading a supervisor-only page\nuser: the read did not fault\n"
                           b"kernel: user exit 1\n")
    assert result.stats.ring3["view switches"] == 0


def test_ring1_has_no_ring3_figures() -> None:
    _vm, result, serial = _run("hello", "split", ring=1)
    assert serial == SAMPLES_BY_NAME["hello"].expected_serial()
    assert not result.stats.ring3 and "ring3" not in result.stats.to_dict()


def test_zoo_differs_from_ring1_only_in_what_ring_compression_shows() -> None:
    _vm, _r, ring3 = _run("zoo", "split")
    _vm, _r, ring1 = _run("zoo", "split", ring=1)
    diff = {(a, b) for a, b in zip(ring1.decode().splitlines(), ring3.decode().splitlines(), strict=True)
            if a != b}
    keys = {a.split(":")[0] for a, _b in diff}
    assert keys == {"cs.rpl", "ss.rpl", "push cs rpl", "push ss rpl", "lar 0x08", "lar 0x10", "lar 0x0c"}


def _minios(view: str, tmp_path: Path) -> bytes:
    out = io.BytesIO()
    modules = tuple(BootModule(str(p), a) for p, a in MINIOS.module_paths)
    vm = Vm(RunConfig(kernel=MINIOS.elf, modules=modules, disks=(MINIOS.disk_path,), keys=MINIOS.keys(),
                      serial=out, max_insns=50_000_000, guest_ring=3, ring3_view=view))
    result = vm.run()
    assert result.exit_status == MINIOS.exit_code
    if view == "split":
        assert vm.screen_text() == MINIOS.expected_screen()
    return out.getvalue()


def test_minios_split_is_qemu_and_flat_differs_only_in_the_kernel_read(tmp_path: Path) -> None:
    golden = MINIOS.expected_serial()
    assert _minios("split", tmp_path) == golden
    flat = _minios("flat", tmp_path).splitlines()
    lines = golden.splitlines()
    at = lines.index(b"minios: pid 2 (fault) killed by #PF at 0x00100000, error 0x5, eip 0x40000052")
    # `fault kernel` read the kernel's first word and returned it as its status.
    assert flat[:at] == lines[:at] and flat[at].startswith(b"sh: fault (pid 2) exited with status ")
    assert flat[at] != lines[at + 1] and flat[at + 1:] == lines[at + 2:]


# -- the kernel view's shadow tables, on their own -------------------------------------------------
class _View:
    def __init__(self, wp: bool = True) -> None:
        self.vmm = bytearray(layout.VMM_SIZE)
        self.ram = bytearray(1 << 20)
        self.wp = wp
        self.view = KernelView(memoryview(self.vmm), memoryview(self.ram), lambda: layout.HOME,
                               wp=lambda: self.wp, pse=lambda: True)
        self.guest = np.frombuffer(self.ram, dtype="<u4")
        self.pd = 0x1000 >> 2
        self.pt = 0x2000 >> 2
        self.guest[self.pd] = 0x2000 | 0x3            # PT for 0-4 MiB, supervisor, writable
        self.view.load(0x1000)

    def shadow_pte(self, page: int) -> int:
        pde = int(np.frombuffer(self.vmm, dtype="<u4")[(layout.VMM_RING3_PD - layout.VMM_BASE) >> 2])
        table = (pde & ~0xFFF) - layout.VMM_BASE
        return int(np.frombuffer(self.vmm, dtype="<u4")[(table >> 2) + page])


def test_kernel_view_fills_user_and_emulates_accessed_and_dirty() -> None:
    v = _View()
    v.guest[v.pt + 5] = 0x5000 | 0x3               # supervisor, writable, clean, not accessed
    assert v.view.fault(0x5123) == FILLED
    assert v.guest[v.pt + 5] & 0x20 and not v.guest[v.pt + 5] & 0x40     # A set, D not yet
    assert v.guest[v.pd] & 0x20
    assert v.shadow_pte(5) == 0x5000 | 0x1 | 0x4 | 0x20 | 0x40           # user, read-only until D
    assert v.view.fault(0x5123) == REPLACED                              # the first write
    assert v.guest[v.pt + 5] & 0x40 and v.shadow_pte(5) & 0x2
    assert v.view.fault(0x5123) == UNCHANGED                             # now the guest's own
    v.guest[v.pt + 6] = 0x6000 | 0x1 | 0x20 | 0x40                       # read-only
    assert v.view.fault(0x6000) == FILLED and not v.shadow_pte(6) & 0x2
    assert v.view.fault(0x6000) == UNCHANGED                             # CR0.WP: the kernel's #PF
    assert v.view.fault(0x7000) == UNCHANGED                             # not present


def test_kernel_view_without_wp_and_vmm_frames() -> None:
    v = _View(wp=False)
    v.guest[v.pt + 6] = 0x6000 | 0x1 | 0x20 | 0x40                       # read-only, dirty
    assert v.view.fault(0x6000) == FILLED and v.shadow_pte(6) & 0x2      # CR0.WP = 0: writable
    v.guest[v.pt + 7] = layout.VMM_BASE | 0x3 | 0x20 | 0x40             # the VMM's own page
    assert v.view.fault(0x7000) == FILLED and not v.shadow_pte(7) & 0x4  # supervisor: out of reach
    v.view.invlpg(0x6000)
    assert v.view.fault(0x6000) == FILLED                                # dropped, filled again


def test_compare_rings_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from bt.cli import main

    sample = SAMPLES_BY_NAME["usermode"]
    out = tmp_path / "rings.json"
    code = main(["compare", "--rings", str(sample.elf), "--expect", str(sample.golden), "--json", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "ring1.compare-rings/1" and doc["kernels"][0]["agree"]
    runs = doc["kernels"][0]["runs"]
    assert [runs[w]["output_as_expected"] for w in doc["ways"]] == [True, False, True, True]
    assert runs["ring3-flat"]["reach"]["user_reads_kernel_pages"] > 0
    assert runs["ring3-split"]["reach"]["user_reads_kernel_pages"] == 0 == runs["ring1"]["reach"][
        "user_reads_kernel_pages"]
    assert runs["ring1"]["reach"]["kernel_reads_vmm_pages"] == 1024
    assert runs["ring3-split"]["reach"] == {"paging": True, "user_reads_kernel_pages": 0,
                                            "kernel_reads_vmm_pages": 1, "kernel_writes_vmm_pages": 0}
    assert runs["ring1"]["ring3"] == {} and runs["ring3-split"]["ring3"]["view switches"] == 18
    assert "ring3-flat differs from ring1" in capsys.readouterr().out


def test_compare_rings_refuses_what_it_does_not_do(tmp_path: Path) -> None:
    from bt.cli import main

    assert main(["compare", "--rings", str(SAMPLES_BY_NAME["hello"].elf), "--static"]) == 2
    page = tmp_path / "x.html"
    assert main(["compare", "--rings", str(SAMPLES_BY_NAME["hello"].elf), "--html", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text and "ring3-flat" in text


def test_an_iret_the_scanner_did_not_see_stops_cleanly() -> None:
    """Without its INT3 the kernel's IRET to ring 3 runs at real CPL 3 as a same-level return
    the VMM never sees: the run stops with that reason instead of going on in the wrong mode."""
    from bt.errors import GuestStop
    from runtime.ring3 import mode

    sample = SAMPLES_BY_NAME["usermode"]
    plant = mode.Ring3.plant_irets
    mode.Ring3.plant_irets = lambda self, kernel: 0          # type: ignore[method-assign]
    try:
        vm = Vm(RunConfig(kernel=sample.elf, serial=io.BytesIO(), max_insns=5_000_000, guest_ring=3))
        with pytest.raises(GuestStop, match="the scanner did not see"):
            vm.run()
    finally:
        mode.Ring3.plant_irets = plant                       # type: ignore[method-assign]
