"""The sample kernels under QEMU, the reference: serial output byte for byte
against samples/<name>/expected.serial, and the debug-exit status.

The committed ELFs are what runs (no compiler needed). To regenerate the golden
files: `RING1_UPDATE_GOLDEN=1 python3 -m pytest -q tests/test_samples_qemu.py` or
`python -m tests.qemu --update`.
"""

from __future__ import annotations

import difflib

import pytest
from qemu import GOLDEN_BOOTS, SAMPLES, SAMPLES_BY_NAME, Sample, run_qemu, update_requested
from requires import require_tool

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFDATA2LSB = 1
EM_386 = 3
ET_EXEC = 2

IDS = [s.name for s in SAMPLES]


@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
def test_elf_is_committed_elf32_i386(sample: Sample):
    head = sample.elf.read_bytes()[:20]
    assert head[:4] == ELF_MAGIC, f"{sample.elf} is not an ELF file"
    assert head[4] == ELFCLASS32 and head[5] == ELFDATA2LSB, "not a little-endian ELF32"
    assert int.from_bytes(head[16:18], "little") == ET_EXEC
    assert int.from_bytes(head[18:20], "little") == EM_386


@pytest.mark.parametrize("sample", GOLDEN_BOOTS, ids=[s.key for s in GOLDEN_BOOTS])
def test_qemu_serial_matches_golden(sample: Sample):
    require_tool("qemu")
    serial, code = run_qemu(sample.elf, sample.cmdline)
    if update_requested():
        assert code == sample.exit_code, f"QEMU exited {code}; golden not written"
        sample.golden.write_bytes(serial)
        pytest.skip(f"golden rewritten: {sample.golden}")
    expected = sample.expected_serial()
    if serial != expected:
        diff = difflib.unified_diff(expected.decode(errors="replace").splitlines(),
                                    serial.decode(errors="replace").splitlines(),
                                    "expected.serial", "qemu", lineterm="")
        pytest.fail("serial output differs from the golden file:\n" + "\n".join(diff))
    assert code == sample.exit_code, f"QEMU exited {code}, expected {sample.exit_code}"


def test_irqsave_pv_golden_is_irqsave_golden():
    """The paravirtual twin runs the same workload; only its flag operations differ."""
    plain, pv = SAMPLES_BY_NAME["irqsave"], SAMPLES_BY_NAME["irqsave-pv"]
    assert plain.cmdline == pv.cmdline
    assert plain.expected_serial() == pv.expected_serial()


def test_irqsave_and_pv_agree_for_another_n():
    require_tool("qemu")
    plain, plain_code = run_qemu(SAMPLES_BY_NAME["irqsave"].elf, "iters=777")
    pv, pv_code = run_qemu(SAMPLES_BY_NAME["irqsave-pv"].elf, "iters=777")
    assert b"irqsave: iters=777\n" in plain
    assert plain == pv
    assert plain_code == pv_code == 1
