"""The PC platform flags `bt run` and `bt compare` share: multiboot modules, IDE disks,
typed keys, guest RAM. Checked here, before any run starts: a missing or unreadable file
is one line and exit 2 (`InputError`), a bad value exit 2 (`UsageError`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bt.cli.args import finite
from bt.errors import InputError, UsageError
from bt.infile import Unreadable, read_input
from runtime.config import KEY_DELAY_NS
from runtime.devices import keymap
from runtime.devices.disk import SECTOR

#: IDE primary channel: master and slave.
MAX_DISKS = 2
RAM_MIN_MIB, RAM_MAX_MIB = 2, 3072


def add_arguments(group: Any, *, ram_default: int | None = 64, writable: bool = True) -> None:
    group.add_argument("--ram", type=int, default=ram_default, metavar="MIB",
                       help="guest RAM in MiB (default 64)")
    group.add_argument("--module", action="append", default=None, metavar="FILE[,ARGS]",
                       help="a multiboot module, in order (repeatable; QEMU's -initrd \"FILE ARGS\"): the "
                            "kernel sees the string \"FILE ARGS\"")
    group.add_argument("--disk", action="append", default=None, metavar="FILE",
                       help="a raw disk image on the primary IDE channel: master, then slave (repeatable, "
                            "at most 2); the file is never modified unless --disk-writable")
    if writable:
        group.add_argument("--disk-writable", action="store_true", default=None,
                           help="write the guest's disk writes to the image files (default: kept in memory)")
    group.add_argument("--keys", metavar="FILE",
                       help="type the text of FILE on the PS/2 keyboard (one key per character, \"\\n\" is "
                            "Enter), starting --key-delay virtual ms after the guest enabled the keyboard")
    group.add_argument("--key-delay", type=finite, default=None, metavar="MS",
                       help=f"virtual ms before the first key (default {KEY_DELAY_NS // 1_000_000})")


def check_ram(mib: int) -> int:
    if not RAM_MIN_MIB <= mib <= RAM_MAX_MIB:
        raise UsageError(f"--ram {mib}: between {RAM_MIN_MIB} and {RAM_MAX_MIB} MiB")
    return mib << 20


def read_keys(path: str) -> str:
    try:
        text = read_input(path).decode("utf-8")     # read_input: a device (/dev/zero) never ends
    except Unreadable as err:
        raise InputError(f"{path} (--keys): {err}") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (--keys): {err.reason} at byte {err.start}") from err
    bad = sorted({ch for ch in text if not keymap.strokes(ch)})
    if bad:
        shown = ", ".join(repr(ch) for ch in bad[:5])
        raise InputError(f"{path}: characters no key of a US keyboard types (--keys): {shown}")
    return text


def _check_file(path: str, flag: str) -> None:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file ({flag})")
    if not p.is_file():
        raise InputError(f"{path}: not a regular file ({flag})")


def run_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The `RunConfig` fields these flags set, checked."""
    from runtime.boot import BootModule  # here: the boot loader pulls in the scanner (NumPy)

    modules = tuple(BootModule.parse(spec) for spec in args.module or ())
    for m in modules:
        if not m.path:
            raise UsageError(f"--module {m.cmdline!r}: no file name")
        _check_file(m.path, "--module")
    disks = tuple(Path(d) for d in args.disk or ())
    if len(disks) > MAX_DISKS:
        raise UsageError(f"--disk given {len(disks)} times: the primary IDE channel has {MAX_DISKS} drives")
    for d in disks:
        _check_file(str(d), "--disk")
        if d.stat().st_size < SECTOR:
            raise InputError(f"{d}: a disk image needs at least one 512-byte sector (--disk)")
    writable = bool(getattr(args, "disk_writable", False))
    if writable and not disks:
        raise UsageError("--disk-writable without --disk")
    fields: dict[str, Any] = {"modules": modules, "disks": disks, "disk_writable": writable}
    if args.keys is not None:
        fields["keys"] = read_keys(args.keys)
    if args.key_delay is not None:
        if args.key_delay < 0:
            raise UsageError("--key-delay must not be negative")
        fields["key_delay_ns"] = int(args.key_delay * 1_000_000)
    if args.ram is not None:
        fields["ram_size"] = check_ram(args.ram)
    return fields
