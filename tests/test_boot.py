"""The multiboot loader (runtime/boot.py): what a kernel is handed, against QEMU.

`tests/data/mbprobe.S` is a tiny multiboot kernel that prints EAX, EBX and the bytes
of everything the loader handed it; `mbprobe.qemu-m64.txt` is what it printed under
`qemu-system-i386 -m 64 -kernel mbprobe.elf -append "a=1 b=2"` (run from the folder
holding the ELF, so that the command line's first word is "mbprobe.elf"). The loader
must hand over the same bytes at the same addresses. With QEMU installed the
comparison is also made live. Bad kernels are built here with `as` and `ld`.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from qemu import qemu_command
from requires import require_tool, unavailable

from bt.errors import ElfError, InputError, Ring1Error, UsageError
from bt.layout import MULTIBOOT_INFO, MULTIBOOT_MMAP, VMM_BASE, MiB
from runtime.boot import BOOT_MAGIC, BootImage, find_header, load_boot_image, load_kernel, memory_map

DATA = Path(__file__).resolve().parent / "data"
SAMPLES = Path(__file__).resolve().parent.parent / "samples"
PROBE_CMDLINE = "a=1 b=2"


@pytest.fixture
def binutils() -> None:
    require_tool("binutils")


needs_tools = pytest.mark.usefixtures("binutils")

LINKER_SCRIPT = """ENTRY(_start)
SECTIONS {{ . = {base:#x}; .text : AT({phys:#x}) {{ *(.multiboot) *(.text) }}
           .data : {{ *(.data) }} .bss : {{ *(.bss) }} }}
"""
TINY = """
    .text
    .globl _start
_start:
    mov $0xF4, %dx
    out %eax, %dx
    hlt
    .section .note.GNU-stack, "", @progbits
"""
MB_HEADER = """
    .section .multiboot, "a"
    .align 4
    .long 0x1BADB002, {flags:#x}, -(0x1BADB002 + {flags:#x})
"""


def build(tmp: Path, name: str, source: str, script: str | None = None, *, flat: bool = False) -> Path:
    """Assemble and link `source` (i386) into tmp/name, an ELF or (flat) a raw binary."""
    src, obj, out = tmp / f"{name}.S", tmp / f"{name}.o", tmp / name
    src.write_text(source)
    subprocess.run(["as", "--32", str(src), "-o", str(obj)], check=True, capture_output=True)
    cmd = ["ld", "-m", "elf_i386", "-z", "noexecstack", "-o", str(out), str(obj)]
    if script is not None:
        (tmp / f"{name}.ld").write_text(script)
        cmd += ["-T", str(tmp / f"{name}.ld")]
    if flat:
        cmd += ["--oformat", "binary"]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def tiny(tmp: Path, name: str, base: int = 0x100000, phys: int | None = None, *,
         flags: int | None = 0x3) -> Path:
    header = MB_HEADER.format(flags=flags) if flags is not None else ""
    script = LINKER_SCRIPT.format(base=base, phys=base if phys is None else phys)
    return build(tmp, name, header + TINY, script)


def memory(image: BootImage, address: int, length: int) -> bytes:
    """The bytes the VMM would put at `address` (RAM starts zeroed)."""
    out = bytearray(length)
    for start, data in image.chunks:
        lo, hi = max(start, address), min(start + len(data), address + length)
        if lo < hi:
            out[lo - address:hi - address] = data[lo - start:hi - start]
    return bytes(out)


def parse_probe(text: str) -> tuple[int, int, list[tuple[int, bytes]]]:
    eax = ebx = 0
    regions = []
    for line in text.splitlines():
        word = line.split()
        if word[0] == "A":
            eax = int(word[1], 16)
        elif word[0] == "B":
            ebx = int(word[1], 16)
        elif word[0] == "R":             # "R addr lenBYTES": the bytes follow the length directly
            data = bytes.fromhex(word[2][8:])
            assert len(data) == int(word[2][:8], 16)
            regions.append((int(word[1], 16), data))
    return eax, ebx, regions


def check_against_probe(image: BootImage, text: str) -> None:
    eax, ebx, regions = parse_probe(text)
    assert (image.eax, image.ebx) == (eax, ebx)
    assert len(regions) == 4     # info structure, memory map, command line, loader name
    for address, data in regions:
        assert memory(image, address, len(data)) == data, f"bytes at {address:#x} differ from QEMU's"


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tool("binutils")
    tmp = tmp_path_factory.mktemp("probe")
    return build(tmp, "mbprobe.elf", (DATA / "mbprobe.S").read_text(), (DATA / "mbprobe.ld").read_text())


# -- matching QEMU -------------------------------------------------------------------

def test_boot_information_matches_qemu_golden(probe: Path) -> None:
    image = load_boot_image(probe, ram_size=64 * MiB, cmdline=PROBE_CMDLINE, image_name="mbprobe.elf")
    check_against_probe(image, (DATA / "mbprobe.qemu-m64.txt").read_text())
    assert image.cmdline == "mbprobe.elf a=1 b=2"
    assert (image.mem_lower, image.mem_upper) == (639, 64384)


@pytest.mark.parametrize("mib", [16, 64, 256])
def test_boot_information_matches_live_qemu(probe: Path, mib: int) -> None:
    require_tool("qemu")
    serial = probe.parent / f"serial-{mib}.txt"
    cmd = qemu_command(Path(probe.name), PROBE_CMDLINE, serial)
    cmd[cmd.index("-m") + 1] = str(mib)
    subprocess.run(cmd, cwd=probe.parent, capture_output=True, timeout=30, check=False)
    image = load_boot_image(probe, ram_size=mib * MiB, cmdline=PROBE_CMDLINE, image_name=probe.name)
    check_against_probe(image, serial.read_text())


def test_memory_map_is_seabios_e820() -> None:
    regions = [(r.base, r.length, r.type) for r in memory_map(64 * MiB)]
    assert regions == [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2),
                       (0x100000, 0x3EE0000, 1), (0x3FE0000, 0x20000, 2), (0xFFFC0000, 0x40000, 2)]


def test_sample_kernel() -> None:
    elf = SAMPLES / "hello" / "hello.elf"
    image = load_boot_image(elf, cmdline="mode=test")
    assert image.multiboot and image.eax == BOOT_MAGIC == 0x2BADB002 and image.ebx == MULTIBOOT_INFO
    assert image.kernel is not None and image.entry == image.kernel.entry
    assert image.symbolize(image.entry) == "_start"
    assert image.cmdline == f"{elf} mode=test"
    flags, _, _, _, cmdline_addr = struct.unpack_from("<5I", memory(image, MULTIBOOT_INFO, 20))
    assert flags == 0x24F
    assert memory(image, cmdline_addr, len(image.cmdline) + 1) == image.cmdline.encode() + b"\0"
    mmap_length, mmap_addr = struct.unpack_from("<II", memory(image, MULTIBOOT_INFO + 44, 8))
    assert (mmap_length, mmap_addr) == (6 * 24, MULTIBOOT_MMAP)
    # bss is loaded as zeros, up to the kernel's end
    bss = [(a, d) for a, d in image.chunks if a >= 0x100000 and not any(d)]
    assert bss and image.kernel_end == max(a + len(d) for a, d in image.chunks if a < 0x105000)


def test_load_kernel_positional_shape() -> None:
    elf = SAMPLES / "hello" / "hello.elf"
    assert load_kernel(str(elf), "x=1", 32 * MiB) == load_boot_image(elf, ram_size=32 * MiB, cmdline="x=1")


@needs_tools
def test_empty_append_gives_path_and_space(tmp_path: Path) -> None:
    image = load_boot_image(tiny(tmp_path, "k.elf"))
    assert image.cmdline == f"{tmp_path / 'k.elf'} "     # QEMU's "%s %s" with nothing appended


# -- other kernel shapes -------------------------------------------------------------

@needs_tools
def test_plain_elf_starts_at_entry_with_zero_registers(tmp_path: Path) -> None:
    image = load_boot_image(tiny(tmp_path, "plain.elf", flags=None))
    assert not image.multiboot and image.cmdline is None
    assert (image.eax, image.ebx) == (0, 0)
    assert image.entry == 0x100000
    assert all(a >= 0x100000 for a, _ in image.chunks)   # no information structure


@needs_tools
def test_higher_half_entry_is_translated_to_physical(tmp_path: Path) -> None:
    image = load_boot_image(tiny(tmp_path, "hh.elf", base=0xC0100000, phys=0x100000))
    assert image.kernel is not None and image.kernel.entry >= 0xC0100000
    assert image.entry == image.kernel.entry - 0xC0000000
    assert image.kernel_start == 0x100000


@needs_tools
def test_aout_kludge_flat_binary(tmp_path: Path) -> None:
    source = """
    .text
    .globl _start
header:
    .long 0x1BADB002, 0x00010003, -(0x1BADB002 + 0x00010003)
    .long header, header, load_end, bss_end, _start
_start:
    mov $0xF4, %dx
    out %eax, %dx
    hlt
    .align 4
load_end:
    .skip 64
    .section .note.GNU-stack, "", @progbits
"""
    script = "SECTIONS { . = 0x200000; .text : { *(.text) } bss_end = . ; }"
    path = build(tmp_path, "kludge.bin", source, script, flat=True)
    image = load_boot_image(path)
    assert image.header is not None and image.header.aout_kludge and image.kernel is None
    raw = path.read_bytes()
    load_size = image.header.load_end_addr - 0x200000
    assert image.entry == image.header.entry_addr == 0x200020
    assert memory(image, 0x200000, len(raw)) == raw[:load_size] + bytes(len(raw) - load_size)
    assert image.kernel_end == image.header.bss_end_addr
    assert image.symbolize(0x200020) == "0x200020"


def test_find_header_rules() -> None:
    good = struct.pack("<III", 0x1BADB002, 3, (-(0x1BADB002 + 3)) & 0xFFFFFFFF)
    assert find_header(bytes(8) + good) is not None
    assert find_header(bytes(6) + good) is None                      # not 4-byte aligned
    assert find_header(bytes(8192) + good) is None                   # past the first 8 KiB
    assert find_header(bytes(8) + good[:8] + b"\0\0\0\0") is None    # bad checksum


# -- refusals: one line each ---------------------------------------------------------

def one_line(err: pytest.ExceptionInfo[Ring1Error]) -> str:
    text = str(err.value)
    assert "\n" not in text and isinstance(err.value, InputError)
    return text


def test_not_an_elf(tmp_path: Path) -> None:
    path = tmp_path / "text.bin"
    path.write_bytes(b"hello, not a kernel\n" * 10)
    with pytest.raises(ElfError) as err:
        load_boot_image(path)
    assert "not an ELF" in one_line(err)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ElfError) as err:
        load_boot_image(tmp_path / "nope.elf")
    assert "no such file" in one_line(err)


@needs_tools
def test_segment_outside_ram(tmp_path: Path) -> None:
    path = tiny(tmp_path, "high.elf", base=0x8000000)
    with pytest.raises(InputError) as err:
        load_boot_image(path, ram_size=64 * MiB)
    text = one_line(err)
    assert "outside guest RAM" in text and "0x8000000" in text and str(path) in text
    assert load_boot_image(path, ram_size=256 * MiB).entry == 0x8000000 + 12   # after the header


@needs_tools
def test_segment_in_vmm_area(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        load_boot_image(tiny(tmp_path, "vmm.elf", base=VMM_BASE + 0x1000))
    assert "VMM area" in one_line(err)


@needs_tools
def test_segment_over_boot_information_or_legacy_hole(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        load_boot_image(tiny(tmp_path, "low.elf", base=0x9400))
    assert "multiboot information" in one_line(err)
    assert load_boot_image(tiny(tmp_path, "low-plain.elf", base=0x9400, flags=None)).entry == 0x9400
    with pytest.raises(InputError) as err:
        load_boot_image(tiny(tmp_path, "vga.elf", base=0xB8000))
    assert "VGA/BIOS hole" in one_line(err)


@needs_tools
def test_unknown_required_flag(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        load_boot_image(tiny(tmp_path, "flags.elf", flags=0x13))
    assert "0x0010" in one_line(err)


@needs_tools
def test_video_mode_flag_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = load_boot_image(tiny(tmp_path, "vbe.elf", flags=0x7))
    assert image.multiboot and "video" in caplog.text


def test_x86_64_refused() -> None:
    elf64 = next((p for p in (Path("/bin/true"), Path("/usr/bin/true")) if p.exists()), None)
    if elf64 is None or elf64.read_bytes()[4] != 2:
        unavailable("no x86-64 ELF at hand (/bin/true)")
    with pytest.raises(ElfError) as err:
        load_boot_image(elf64)
    assert "x86-64" in one_line(err)


def test_ram_size_checked() -> None:
    with pytest.raises(UsageError):
        load_boot_image(SAMPLES / "hello" / "hello.elf", ram_size=1 * MiB)
