"""Finding or fetching a real x86-64 Linux kernel (vmlinux ELF) for the scanner benchmark.

Cache: $RING1_CACHE or ~/.cache/ring1/, files named `vmlinux-<version>`. When none is
cached, Debian's current `linux-image-*-amd64` package is fetched with
`apt-get download` (after `apt-get update` when apt knows no such package), its
/boot/vmlinuz taken out of the .deb, and the ELF extracted from that bzImage
(`bt.bzimage`). Debian ships no vmlinux with symbols outside its debug archive, so
the scan of this kernel starts from the entry point alone.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from bt import bzimage
from bt.cache import cache_dir
from bt.errors import InputError

METAPACKAGE = "linux-image-amd64"


def cached() -> Path | None:
    """The newest cached vmlinux, if any."""
    found = sorted((p for p in cache_dir().glob("vmlinux-*") if not p.name.endswith(".partial")),
                   key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def run_tool(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as err:
        raise InputError(f"cannot fetch a kernel: {cmd[0]} is not installed") from err
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise InputError(f"cannot fetch a kernel: {' '.join(cmd)} failed: {last}")
    return proc.stdout


def kernel_package(metapackage: str = METAPACKAGE, flavour: str = "amd64", arch: str = "") -> str:
    """The versioned image package a metapackage depends on (e.g. linux-image-6.1.0-50-amd64
    for linux-image-amd64; with `arch` "i386", linux-image-6.1.0-50-686:i386 for
    linux-image-686): the newest one apt knows, by name, as `apt-get download` takes it."""
    qual = f":{arch}" if arch else ""
    for attempt in range(2):
        try:
            out = run_tool(["apt-cache", "depends", metapackage + qual])
        except InputError:
            out = ""
        m = re.search(rf"Depends:\s*(linux-image-\S+-{re.escape(flavour)})\b", out)
        if m and run_tool(["apt-cache", "policy", m.group(1) + qual]).find("Candidate: (none)") < 0:
            return m.group(1) + qual
        if attempt == 0:
            run_tool(["apt-get", "update"])
    hint = (f" (for {arch} packages: dpkg --add-architecture {arch} && apt-get update)" if arch else "")
    raise InputError(f"cannot fetch a kernel: apt knows no {metapackage + qual} package{hint}")


def fetch(say: Callable[[str], None] = print) -> Path:
    """Download, extract and cache a vmlinux; returns its path."""
    package = kernel_package()
    version = package.removeprefix("linux-image-")
    target = cache_dir() / f"vmlinux-{version}"
    with tempfile.TemporaryDirectory(prefix="ring1-kernel-") as tmp:
        work = Path(tmp)
        say(f"fetching {package} with apt-get download ...")
        run_tool(["apt-get", "download", package], cwd=work)
        debs = sorted(work.glob("*.deb"))
        if not debs:
            raise InputError(f"cannot fetch a kernel: apt-get download {package} left no .deb")
        image = vmlinuz_from_deb(debs[0])
    say(f"extracting vmlinux from the bzImage ({len(image):,} bytes) ...")
    elf_bytes = bzimage.extract_vmlinux(image, f"{package} vmlinuz")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f"{target.name}.partial"
    partial.write_bytes(elf_bytes)
    partial.replace(target)
    say(f"cached {target} ({len(elf_bytes):,} bytes)")
    return target


def vmlinuz_from_deb(deb: Path) -> bytes:
    """/boot/vmlinuz-* out of a .deb, streaming dpkg-deb's tar without unpacking the modules."""
    if shutil.which("dpkg-deb") is None:
        raise InputError("cannot fetch a kernel: dpkg-deb is not installed")
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if re.fullmatch(r"(\./)?boot/vmlinuz-.*", member.name) and member.isfile():
                    f = tar.extractfile(member)
                    if f is not None:
                        data = f.read()
                        proc.kill()
                        return data
    raise InputError(f"cannot fetch a kernel: no /boot/vmlinuz-* in {deb.name}")
