"""bt.bzimage (vmlinux out of a bzImage) and `bt bench scan` (figures printed, never asserted)."""

from __future__ import annotations

import gzip
import json
import lzma
import struct
from pathlib import Path

import pytest

from bt import bzimage
from bt.cli import main
from bt.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "data" / "scan" / "patchcases.elf"


def _bzimage(payload: bytes, setup_sects: int = 2) -> bytes:
    """A minimal bzImage: boot sector + setup sectors with the 2.08+ header, then the payload."""
    head = bytearray((setup_sects + 1) * 512)
    head[0x1F1] = setup_sects
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, 0x20F)
    struct.pack_into("<II", head, 0x248, 0x40, len(payload))
    return bytes(head) + bytes(0x40) + payload + struct.pack("<I", 12345)


@pytest.mark.parametrize("compress", [gzip.compress, lambda d: lzma.compress(d, format=lzma.FORMAT_XZ)],
                         ids=["gzip", "xz"])
def test_extract_vmlinux(compress):
    elf = FIXTURE.read_bytes()
    assert bzimage.extract_vmlinux(_bzimage(compress(elf))) == elf


def test_not_a_bzimage():
    with pytest.raises(InputError, match="not a bzImage"):
        bzimage.extract_vmlinux(b"\0" * 4096)
    with pytest.raises(InputError, match="unknown payload compression"):
        bzimage.extract_vmlinux(_bzimage(b"\0\1\2\3" * 8))


def test_cache_lookup(tmp_path, monkeypatch):
    from bt.cli import vmlinux

    monkeypatch.setenv("RING1_CACHE", str(tmp_path))
    assert vmlinux.cached() is None
    (tmp_path / "vmlinux-6.1.0-2-amd64.partial").write_bytes(b"x")     # an interrupted fetch
    assert vmlinux.cached() is None
    (tmp_path / "vmlinux-6.1.0-1-amd64").write_bytes(b"x")
    assert vmlinux.cached() == tmp_path / "vmlinux-6.1.0-1-amd64"


def test_bench_scan_prints_figures(capsys):
    assert main(["bench", "scan", str(FIXTURE), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["instructions"] > 0 and figures["objdump_seconds"] > 0 and figures["ratio"] > 0
    assert main(["bench", "scan", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    assert "ratio ring1/objdump" in out and "instructions/s" in out and "peak RSS" in out
