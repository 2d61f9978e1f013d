"""A Linux boot log compared line by line: timestamps removed, and the lines that honestly
depend on the machine or on time left out, each with the reason (docs/linux.md).

Two logs of one kernel agree when what is left is equal. `TIMING` is what differs between any
two runs of the same kernel whose virtual time differs: ring1's patched and unpatched runs
(an exit costs virtual time), or two QEMU runs. `MACHINE` is, in addition, what differs
between ring1's machine and QEMU's `pc` machine: the firmware tables ring1 does not have, the
PCI bus it does not model, the host's wall clock. Every pattern matches whole lines (after
the timestamp); none matches a line that says what the kernel did with ring1's CPU, memory,
interrupts or devices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: printk's "[    0.123456] " prefix.
_TIMESTAMP = re.compile(rb"^\[ *\d+\.\d+\] ")


@dataclass(frozen=True)
class Mask:
    pattern: re.Pattern[bytes]
    why: str
    #: The line itself must be in both logs, but where it falls is not compared: another
    #: thread printed it (`first_difference`).
    moves: bool = False


def _mask(pattern: str, why: str, moves: bool = False) -> Mask:
    return Mask(re.compile(pattern.encode()), why, moves)


TIMING: tuple[Mask, ...] = (
    _mask(r"tsc: (Detected|Refined TSC clocksource calibration:) [\d.]+ MHz.*",
          "TSC calibration against the PIT: measures virtual time"),
    _mask(r"clocksource: tsc(-early)?: mask: .*", "derived from the calibrated TSC frequency"),
    _mask(r"Calibrating delay loop.*BogoMIPS.*", "derived from the calibrated TSC frequency"),
    _mask(r"smpboot: Total of \d+ processors activated \(.*BogoMIPS\)", "BogoMIPS again"),
    _mask(r"sched_clock: Marking stable .*", "clock readings at that moment"),
    _mask(r"audit: type=2000 audit\(.*", "printed by another thread: where it falls depends on timing"),
    _mask(r"rtc_cmos rtc_cmos: setting system clock to .*", "the wall-clock time it was read at"),
    _mask(r"Trying to unpack rootfs image as initramfs\.\.\.|Freeing initrd memory: \d+K",
          "the initramfs is unpacked beside the initcalls (async): where the line falls depends on timing",
          moves=True),
    _mask(r"input: AT Translated Set 2 keyboard as .*", "the keyboard is probed by the serio thread: where "
                                                        "the line falls depends on timing", moves=True),
)

MACHINE: tuple[Mask, ...] = (
    *TIMING,
    # The CPU and clocks: QEMU TCG calibrates the host's TSC, its PIT calibration fails.
    _mask(r"tsc: (Fast TSC calibration|Unable to calibrate|No reference|Marking TSC unstable"
          r"|Using PIT calibration).*", "QEMU TCG's TSC runs at the host's rate"),
    _mask(r"(clocksource: (Checking clocksource tsc|Switched to clocksource|timekeeping watchdog"
          r"|\s*'|'tsc' |tsc: mask|pit:)|tsc: Marking TSC unstable).*",
          "QEMU's clocksource watchdog finds its TSC unstable"),
    _mask(r"(TSC found unstable after boot, most likely due to broken BIOS\. Use 'tsc=unstable'\."
          r"|sched_clock: Marking unstable .*)", "QEMU's clocksource watchdog finds its TSC unstable"),
    _mask(r"(Unstable clock detected, switching default tracing clock.*|If you want to keep using the local"
          r" clock, then add:|  \"trace_clock=local\"|on the kernel command line)",
          "QEMU's tracing clock switched"),
    # Firmware tables ring1 does not have (SMBIOS, PnP BIOS, the PCI BIOS).
    _mask(r"(SMBIOS \S+ present\.|DMI: .*|DMI not present or invalid\.)", "no SMBIOS table under ring1"),
    _mask(r"PnPBIOS: .*", "no PnP BIOS under ring1"),
    _mask(r"Hardware name: .*", "the DMI product name in a panic"),
    _mask(r"Memory: \d+K/\d+K available .*", "QEMU's DMI tables are copied into the kernel's brk: one page"),
    # The PCI bus: ring1's configuration ports read all ones.
    _mask(r"(PCI|pci|pci_bus|vgaarb|PCI-DMA|pci 0000:|clocksource: Switched to clocksource pit).*",
          "no PCI bus under ring1"),
    _mask(r"APIC timer disabled due to verification failure", "QEMU's LAPIC timer runs at host speed"),
)


def lines(log: bytes, masks: tuple[Mask, ...] = TIMING) -> list[bytes]:
    """The log's lines without timestamps or line ends, less those a mask matches."""
    return _split(log, masks)[0]


def _split(log: bytes, masks: tuple[Mask, ...]) -> tuple[list[bytes], list[bytes]]:
    """(the lines no mask matches, the lines a `moves` mask matches), timestamps removed."""
    kept, moved = [], []
    for raw in log.splitlines():
        line = _TIMESTAMP.sub(b"", raw.rstrip(b"\r"))
        mask = next((m for m in masks if m.pattern.fullmatch(line)), None)
        if mask is None:
            kept.append(line)
        elif mask.moves:
            moved.append(line)
    return kept, moved


def is_linux(log: bytes) -> bool:
    """A Linux boot log: printk's first line names the kernel."""
    return _TIMESTAMP.sub(b"", log[:200]).startswith(b"Linux version ")


def first_difference(a: bytes, b: bytes, masks: tuple[Mask, ...] = TIMING) -> tuple[int, bytes, bytes] | None:
    """Where two logs part, after `lines`: (line number from 1, the line in a, the line in b),
    an empty line for the log that ended; (0, ...) for a line another thread printed (a
    `moves` mask) that is in one log only; None when they agree."""
    (la, ma), (lb, mb) = _split(a, masks), _split(b, masks)
    for i in range(max(len(la), len(lb))):
        x = la[i] if i < len(la) else b""
        y = lb[i] if i < len(lb) else b""
        if x != y:
            return i + 1, x, y
    if sorted(ma) != sorted(mb):
        only_a = [x for x in ma if x not in mb]
        only_b = [y for y in mb if y not in ma]
        return 0, only_a[0] if only_a else b"", only_b[0] if only_b else b""
    return None
