"""Finding or fetching the Linux kernel ring1 boots (issue 15): Debian's 32-bit
linux-image-6.1.0-*-686 (non-PAE), the bzImage from its .deb.

Cache: $RING1_CACHE or ~/.cache/ring1/ (bt/cache.py), files named `vmlinuz-<version>`
(the bzImage; the vmlinux inside is extracted next to it on first use, bt/bzimage.py).
When none is cached, the versioned package the metapackage `linux-image-686:i386` depends
on (the newest Debian has) is fetched with `apt-get download`, as `bt bench scan` fetches
its x86-64 vmlinux (bt/cli/vmlinux.py). apt must know i386 packages: on a fresh Debian,
`dpkg --add-architecture i386 && apt-get update` first (.ci/run does).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bt.cache import cache_dir, write_atomic
from bt.errors import InputError

METAPACKAGE = "linux-image-686"
FLAVOUR = "686"
ARCH = "i386"
#: The release whose boot ring1's docs and tests describe.
SERIES = "6.1.0"


def cached() -> Path | None:
    """The newest cached 6.1.0-*-686 bzImage, by its ABI number."""
    found = [p for p in cache_dir().glob(f"vmlinuz-{SERIES}-*-{FLAVOUR}") if p.is_file()]

    def abi(p: Path) -> int:
        m = re.search(rf"{re.escape(SERIES)}-(\d+)-", p.name)
        return int(m.group(1)) if m else -1

    return max(found, key=abi) if found else None


def fetch(say: Callable[[str], None] = print) -> Path:
    """Download Debian's current 686 kernel package and cache its bzImage; returns its path."""
    from bt.cli import vmlinux  # its bzImage reader imports NumPy: not for `bt --help`

    package = vmlinux.kernel_package(METAPACKAGE, FLAVOUR, ARCH)
    version = package.removeprefix("linux-image-").split(":")[0]
    if not version.startswith(SERIES + "-"):
        raise InputError(f"cannot fetch a kernel: {package} is not a {SERIES} kernel (ring1's Linux "
                         "milestones are described for Debian 12's 6.1)")
    target = cache_dir() / f"vmlinuz-{version}"
    with tempfile.TemporaryDirectory(prefix="ring1-kernel-") as tmp:
        work = Path(tmp)
        say(f"fetching {package} with apt-get download ...")
        vmlinux.run_tool(["apt-get", "download", package], cwd=work)
        debs = sorted(work.glob("*.deb"))
        if not debs:
            raise InputError(f"cannot fetch a kernel: apt-get download {package} left no .deb")
        image = vmlinux.vmlinuz_from_deb(debs[0])
    write_atomic(target, image)
    say(f"cached {target} ({len(image):,} bytes)")
    return target


def kernel(say: Callable[[str], None] = print) -> Path:
    """The cached bzImage, fetched first if there is none."""
    return cached() or fetch(say)


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "linux-kernel",
        help="print the path of Debian's 32-bit kernel, fetched into the cache first if needed",
        description="Print the path of Debian 12's linux-image-6.1.0-*-686 bzImage in ring1's cache "
                    "($RING1_CACHE or ~/.cache/ring1), fetching it with apt-get download when none is "
                    "cached (apt must know i386: dpkg --add-architecture i386 && apt-get update). "
                    "Use: bt run \"$(bt linux-kernel)\" --ram 128 --cmdline ...")
    p.add_argument("--fetch", action="store_true", help="fetch the newest package even if one is cached")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, file=sys.stderr)

    path = fetch(say) if args.fetch else kernel(say)
    print(path)
    return 0
