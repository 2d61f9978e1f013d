"""Debian's 32-bit kernel (bt/cli/linuxkernel.py): found in the cache by its ABI number,
fetched by package name; its own symbol table (bt/kallsyms.py) read out of the bzImage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bt.cli import linuxkernel, vmlinux
from bt.errors import InputError
from tests.requires import require_tool, unavailable


def test_cache_lookup_newest_abi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RING1_CACHE", str(tmp_path))
    assert linuxkernel.cached() is None
    for name in ("vmlinuz-6.1.0-9-686", "vmlinuz-6.1.0-50-686", "vmlinuz-6.1.0-50-686-pae",
                 "vmlinuz-6.1.0-51-686.partial"):
        (tmp_path / name).write_bytes(b"x")
    assert linuxkernel.cached() == tmp_path / "vmlinuz-6.1.0-50-686"     # 50 > 9: by number


def test_linux_kernel_command_prints_the_cached_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from bt.cli import main

    monkeypatch.setenv("RING1_CACHE", str(tmp_path))
    (tmp_path / "vmlinuz-6.1.0-50-686").write_bytes(b"x")
    assert main(["linux-kernel"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'vmlinuz-6.1.0-50-686'}\n"


def test_package_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[str]] = []

    def tool(cmd: list[str], cwd: Path | None = None) -> str:
        asked.append(cmd)
        if cmd[:2] == ["apt-cache", "depends"]:
            return "linux-image-686:i386\n  Depends: linux-image-6.1.0-50-686\n"
        return "Candidate: 6.1.176-1\n"

    monkeypatch.setattr(vmlinux, "run_tool", tool)
    assert vmlinux.kernel_package("linux-image-686", "686", "i386") == "linux-image-6.1.0-50-686:i386"
    assert ["apt-cache", "depends", "linux-image-686:i386"] in asked


def test_no_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmlinux, "run_tool", lambda cmd, cwd=None: "")
    with pytest.raises(InputError, match="dpkg --add-architecture i386") as info:
        vmlinux.kernel_package("linux-image-686", "686", "i386")
    assert "\n" not in str(info.value)


@pytest.fixture(scope="session")
def debian_kernel() -> Path:
    """The cached bzImage, fetched (CI: `.ci/run` adds the i386 architecture to apt)."""
    found = linuxkernel.cached()
    if found is not None:
        return found
    require_tool("dpkg-deb")
    try:
        return linuxkernel.fetch(lambda line: None)
    except InputError as err:
        unavailable(f"cannot fetch Debian's i386 kernel: {err}")


def test_kallsyms_of_the_stripped_kernel(debian_kernel: Path) -> None:
    from bt import elf

    image = elf.load(debian_kernel)         # the vmlinux inside the bzImage, no ELF symbols
    names = {s.name: s for s in image.symbols}
    for name in ("start_kernel", "native_flush_tlb_one_user", "quick_pit_calibrate"):
        assert names[name].is_function and 0xC1000000 <= names[name].address < 0xC2000000
    assert image.describe(names["start_kernel"].address + 4) == "start_kernel+0x4"


#: The milestones' command line: the serial console; the kernel where it is linked (KASLR would
#: move it, and the patch manager scans the kernel as linked); `panic=-1` reboots at the panic,
#: which ends the run cleanly ("guest reset the machine"), as QEMU -no-reboot ends there;
#: `cryptomgr.notests`: the crypto self-tests' Diffie-Hellman runs 3.7 G of the kernel's 4.0 G
#: instructions (docs/linux.md).
CMDLINE = "console=ttyS0 nokaslr panic=-1 cryptomgr.notests"
ROOTFS_PANIC = b"Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"
INITRAMFS = Path(__file__).resolve().parent.parent / "samples" / "linux" / "initramfs.cpio.gz"
#: init's lines as the console's tty sends them (its ONLCR output flag: CR LF).
USER_SPACE = (b"ring1-init: hello from user space\r\n"
              b"ring1-init: /proc/cmdline: " + CMDLINE.encode() + b"\r\n"
              b"ring1-init: powering off\r\n")


def _rules_off() -> list[str]:
    """The example plugin's RDTSC counter does not follow virtual time: Linux cannot boot with it
    (samples/plugins/vtsc/README.md)."""
    from importlib.metadata import entry_points

    from patchmgr.registry import ENTRY_POINT_GROUP

    return (["--disable-rule", "vtsc"]
            if any(ep.name == "vtsc" for ep in entry_points(group=ENTRY_POINT_GROUP)) else [])


@pytest.fixture(scope="module")
def linux_runs(debian_kernel: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[int, str], Any]]:
    """`bt run bzImage` to both milestones, patched and with only the never-faulting leaks
    patched (pure trap-and-emulate deadlocks Linux: PUSHF reads the real IF): four processes
    started together, each test waits for its own two."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    tmp = tmp_path_factory.mktemp("linux")
    runs = {}
    for milestone, initrd in ((1, []), (2, ["--initrd", str(INITRAMFS)])):
        for mode, extra in (("patched", _rules_off()), ("leaks", ["--leaks-only"])):
            serial = tmp / f"m{milestone}-{mode}.serial"
            cmd = [sys.executable, "-m", "bt", "run", str(debian_kernel), "--cmdline", CMDLINE,
                   "--ram", "128", *initrd, "--serial", str(serial), "--stats", *extra]
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            runs[(milestone, mode)] = (serial, proc)
    yield runs
    for _serial, proc in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


_DONE: dict[tuple[int, str], tuple[int, str, bytes]] = {}


def _finished(runs: dict[tuple[int, str], Any], milestone: int, mode: str) -> tuple[int, str, bytes]:
    """The run's exit code, stderr and serial output, once it has ended."""
    if (milestone, mode) not in _DONE:
        serial, proc = runs[(milestone, mode)]
        _out, err = proc.communicate(timeout=1800)
        _DONE[(milestone, mode)] = (proc.returncode, err.decode(errors="replace"), serial.read_bytes())
    return _DONE[(milestone, mode)]


def test_a_bzimage_without_nokaslr_is_refused_when_patched(debian_kernel: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Without `nokaslr` the kernel moves itself away from the patched code and loops with no
    output until --timeout (measured): a one-line usage error instead, before it runs."""
    from bt.cli import main

    assert main(["run", str(debian_kernel), "--ram", "128", "--cmdline", "console=ttyS0 panic=-1"]) == 2
    err = capsys.readouterr().err
    assert "needs `nokaslr`" in err and err.count("\n") == 1


@pytest.mark.parametrize("mode", ["patched", "leaks"])
def test_milestone1_rootfs_panic(linux_runs: dict[tuple[int, str], Any], mode: str) -> None:
    code, err, log = _finished(linux_runs, 1, mode)
    assert code == 4, err[-2000:]
    assert "guest reset the machine" in err, err[-2000:]
    assert ROOTFS_PANIC in log, log[-1500:]
    assert b"Run /init" not in log


@pytest.mark.parametrize("mode", ["patched", "leaks"])
def test_milestone2_user_space_prints_reads_cmdline_and_powers_off(linux_runs: dict[tuple[int, str], Any],
                                                                    mode: str) -> None:
    """The initramfs's init (samples/linux/init.S) at CPL 3: its lines, then isa-debug-exit
    with 0, which ends the run with exit code 1 (QEMU's convention) and no stop."""
    code, err, log = _finished(linux_runs, 2, mode)
    assert code == 1, err[-2000:]
    assert "guest status 0 (success)" in err, err[-2000:]
    assert log.endswith(USER_SPACE), log[-1500:]
    assert b"Run /init as init process" in log
    assert b"Kernel panic" not in log


@pytest.mark.parametrize("milestone", [1, 2])
def test_the_boot_log_is_qemus(linux_runs: dict[tuple[int, str], Any], debian_kernel: Path, tmp_path: Path,
                               milestone: int) -> None:
    """QEMU is the reference: the same kernel, command line and initramfs under
    qemu-system-i386 (`bt bench linux`'s command, its clock from the instruction count, as
    ring1's is: a loaded CI machine must not change what the kernel sees), line by line without
    timestamps; only the lines bt/bootlog.py lists as the machine's or time's may differ."""
    import subprocess

    from bt import bootlog
    from bt.cli import bench_linux

    require_tool("qemu")
    serial = tmp_path / "qemu.serial"
    subprocess.run(bench_linux._command(debian_kernel, milestone, "qemu", serial, icount=True), check=False,
                   capture_output=True, timeout=600)
    qemu = serial.read_bytes()
    assert (ROOTFS_PANIC if milestone == 1 else USER_SPACE) in qemu, qemu[-1500:]
    for mode in ("patched", "leaks"):
        log = _finished(linux_runs, milestone, mode)[2]
        assert bootlog.first_difference(qemu, log, bootlog.MACHINE) is None, mode


def test_bench_linux_runs_the_same_machine_under_qemu(tmp_path: Path) -> None:
    from bt.cli import bench_linux

    k, serial = tmp_path / "bzImage", tmp_path / "serial"
    qemu = bench_linux._command(k, 2, "qemu", serial)
    assert qemu[0] == "qemu-system-i386" and "pc,acpi=off" in qemu and "-no-reboot" in qemu
    assert qemu[qemu.index("-append") + 1] == bench_linux.CMDLINE
    assert qemu[qemu.index("-initrd") + 1] == str(bench_linux.INITRAMFS)
    ring1 = bench_linux._command(k, 1, "unpatched", serial)
    assert ring1[1:4] == ["-m", "bt", "run"] and "--leaks-only" in ring1 and "--initrd" not in ring1
    assert ring1[ring1.index("--cmdline") + 1] == bench_linux.CMDLINE
