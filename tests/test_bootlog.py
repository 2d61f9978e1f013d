"""Linux boot logs compared line by line (bt/bootlog.py) and in `bt compare` (runtime/report/model.py)."""

from __future__ import annotations

import dataclasses
import io

from bt import bootlog
from runtime.report.kernel import KernelInfo
from runtime.report.model import compare_kernel
from runtime.report.record import RunRecord, Timing

#: Two runs of one kernel: printk's clock and the TSC calibration differ (an exit costs
#: virtual time), the audit line comes from another thread and falls elsewhere.
PATCHED = (b"[    0.000000] Linux version 6.1.0-50-686 (debian-kernel@lists.debian.org)\r\n"
           b"[    0.000000] tsc: Detected 999.946 MHz processor\r\n"
           b"[    0.364000] audit: type=2000 audit(946684800.364:1): state=initialized\r\n"
           b"[    0.372100] NET: Registered PF_NETLINK/PF_ROUTE protocol family\r\n"
           b"[    3.5] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n")
LEAKS = (b"[    0.000000] Linux version 6.1.0-50-686 (debian-kernel@lists.debian.org)\r\n"
         b"[    0.000000] tsc: Detected 1000.004 MHz processor\r\n"
         b"[    0.371234] NET: Registered PF_NETLINK/PF_ROUTE protocol family\r\n"
         b"[    0.372000] audit: type=2000 audit(946684800.372:1): state=initialized\r\n"
         b"[    3.6] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n")


def test_lines_drop_timestamps_line_ends_and_timing():
    assert bootlog.lines(PATCHED) == [b"Linux version 6.1.0-50-686 (debian-kernel@lists.debian.org)",
                                      b"NET: Registered PF_NETLINK/PF_ROUTE protocol family",
                                      b"Kernel panic - not syncing: VFS: Unable to mount root fs"]
    assert bootlog.first_difference(PATCHED, LEAKS) is None
    assert bootlog.is_linux(PATCHED) and not bootlog.is_linux(b"hello from ring1\n")


def test_a_line_that_is_not_about_time_is_a_difference():
    other = LEAKS.replace(b"PF_ROUTE", b"PF_KEY")
    assert bootlog.first_difference(PATCHED, other) == (
        2, b"NET: Registered PF_NETLINK/PF_ROUTE protocol family",
        b"NET: Registered PF_NETLINK/PF_KEY protocol family")
    assert bootlog.first_difference(PATCHED, LEAKS[:LEAKS.index(b"[    3.6]")]) == (
        3, b"Kernel panic - not syncing: VFS: Unable to mount root fs", b"")


def test_a_line_from_another_thread_may_move_but_not_go():
    unpack = b"[    0.9] Trying to unpack rootfs image as initramfs...\r\n"
    early = PATCHED.replace(b"[    0.372100] NET", unpack + b"[    0.372100] NET")
    late = LEAKS + unpack
    assert bootlog.first_difference(early, late) is None
    gone = bootlog.first_difference(early, LEAKS)
    assert gone == (0, b"Trying to unpack rootfs image as initramfs...", b"")


def test_machine_lines_only_where_the_machine_is_compared():
    qemu = PATCHED.replace(b"Linux version 6.1.0-50-686 (debian-kernel@lists.debian.org)\r\n",
                           b"Linux version 6.1.0-50-686 (debian-kernel@lists.debian.org)\r\n"
                           b"[    0.000000] SMBIOS 2.8 present.\r\n")
    assert bootlog.first_difference(PATCHED, qemu) is not None
    assert bootlog.first_difference(PATCHED, qemu, bootlog.MACHINE) is None


def _run(mode: str, serial: bytes) -> RunRecord:
    return RunRecord(mode, None, "guest reset the machine", serial, {"trap": 1}, {"cli": 1}, (), (), None,
                     Timing(1.0))


def test_compare_agrees_on_two_boot_logs_of_one_kernel():
    k = compare_kernel(KernelInfo("vmlinuz", "0" * 64, ()), {"unpatched": _run("unpatched", LEAKS),
                                                            "dynamic": _run("dynamic", PATCHED)})
    assert k.agree and k.linux_log


def test_compare_names_the_line_where_boot_logs_part():
    other = PATCHED.replace(b"PF_ROUTE", b"PF_KEY")
    k = compare_kernel(KernelInfo("vmlinuz", "0" * 64, ()), {"unpatched": _run("unpatched", LEAKS),
                                                            "dynamic": _run("dynamic", other)})
    assert not k.agree
    (mm,) = k.mismatches
    assert mm.what == "serial" and mm.expected.startswith("line 2: b'NET: Registered PF_NETLINK/PF_ROUTE")


def test_other_output_is_still_compared_byte_for_byte():
    k = compare_kernel(KernelInfo("k.elf", "0" * 64, ()), {"unpatched": _run("unpatched", b"a\r\n"),
                                                          "dynamic": _run("dynamic", b"a\n")})
    assert not k.agree and not k.linux_log


def test_a_linux_sized_patch_table_lists_what_is_not_a_plain_jump():
    """Past `PATCH_ROWS` patches the terminal shows the exceptions with their reasons and
    counts the rest by rule; the HTML and JSON keep every row."""
    from runtime.report import text
    from runtime.report.record import Patch

    plain = [Patch(0xC1000000 + 16 * i, "irqflags", "jump", 5, "active", text="cli") for i in range(300)]
    refused = "no enabled rule for class rdtsc (table: trap)"
    odd = [Patch(0xC2000000, "-", "-", 0, "refused", refused, "rdtsc"),
           Patch(0xC2000010, "io", "int3", 1, "active", "window overlaps another patch", "out dx, al")]
    runs = {"unpatched": _run("unpatched", LEAKS),
            "dynamic": dataclasses.replace(_run("dynamic", PATCHED), patches=(*plain, *odd))}
    k = compare_kernel(KernelInfo("vmlinuz", "0" * 64, ()), runs)
    out = io.StringIO()
    text.plain_console(out).print(text.describe_patches(k, "dynamic"))
    shown = out.getvalue()
    assert "301 active of 302; the 2 refused, unpatched or with a reason" in shown
    assert refused in shown and "window overlaps another patch" in shown
    assert "0xc1000010" not in shown
    assert "active by rule: irqflags 300, io 1" in shown
