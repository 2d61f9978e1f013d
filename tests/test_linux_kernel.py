"""Debian's 32-bit kernel (bt/cli/linuxkernel.py): found in the cache by its ABI number,
fetched by package name; its own symbol table (bt/kallsyms.py) read out of the bzImage."""

from __future__ import annotations

from pathlib import Path

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
