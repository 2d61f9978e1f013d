"""The VGA's text mode as small OSes use it: the text buffer at 0xB8000 and the registers.

The text buffer is plain guest RAM (80x25 character/attribute pairs from 0xB8000): a
store there is an ordinary store, with no exit and no hook, so a kernel printing to the
screen runs at full speed. `screen_text` reads the buffer when the run ends (`bt run
--screen FILE`).

The registers are those of the VGA in colour text mode 3, as QEMU's hw/display/vga.c
answers them after SeaBIOS's VGA BIOS set the mode (values measured with
tests/data/pcprobe.S): the CRT controller at 0x3D4/0x3D5 (cursor start/end 0x0A/0x0B,
start address 0x0C/0x0D, cursor location 0x0E/0x0F; registers 0-7 write-protected while
bit 7 of register 0x11 is set, but for bit 4 of register 7), input status 1 at 0x3DA
(bits 0 and 3 toggle on every read, as QEMU's retrace emulation does, so polling loops
end; reading it resets the attribute controller's flip-flop), the attribute controller
(0x3C0/0x3C1), miscellaneous output (write 0x3C2, read 0x3CC), the sequencer
(0x3C4/0x3C5), the DAC (0x3C7-0x3C9, stored, not shown), feature control (read 0x3CA,
write 0x3DA) and the graphics controller (0x3CE/0x3CF). The monochrome ports 0x3B4,
0x3B5 and 0x3BA read 0xFF while the misc register selects colour, as in QEMU. Nothing is
drawn: ring1 has no display; modes other than text are stored, not rendered.

`--screen` format (shared with the QEMU capture of samples/minios): 25 lines, each the 80
characters of a row from the displayed start address, decoded as code page 437 glyphs
(0x01-0x1F and 0x7F as their CP437 pictures, not control characters), NUL shown as a
space, trailing spaces (U+0020 only) stripped, each line ending in "\\n".
"""

from __future__ import annotations

TEXT_BASE = 0xB8000
TEXT_WINDOW = 0x8000            # 0xB8000-0xBFFFF: the start address wraps inside it
COLUMNS, ROWS = 80, 25
CRTC_INDEX, CRTC_DATA, STATUS1 = 0x3D4, 0x3D5, 0x3DA
MONO_INDEX, MONO_DATA, MONO_STATUS1 = 0x3B4, 0x3B5, 0x3BA
ATTR, ATTR_READ, MISC_WRITE, SEQ_INDEX, SEQ_DATA = 0x3C0, 0x3C1, 0x3C2, 0x3C4, 0x3C5
DAC_READ_INDEX, DAC_WRITE_INDEX, DAC_DATA = 0x3C7, 0x3C8, 0x3C9
FEATURE_READ, MISC_READ, GFX_INDEX, GFX_DATA = 0x3CA, 0x3CC, 0x3CE, 0x3CF

#: Mode 3 as SeaBIOS's VGA BIOS leaves it: CRTC registers 0x00-0x18 (measured), sequencer,
#: graphics and attribute registers (the VGA BIOS's mode 3 table), misc output 0x67.
CRTC_MODE3 = bytes.fromhex("5f4f50825581bf1f004f0d0e00000280 9c8e8f281f96b9a3ff".replace(" ", ""))
SEQ_MODE3 = bytes.fromhex("0300030002")
GFX_MODE3 = bytes.fromhex("000000000010 0e00ff".replace(" ", ""))
ATTR_MODE3 = bytes.fromhex("000102030405140738393a3b3c3d3e3f0c000f0800")
MISC_MODE3 = 0x67
ST01_TOGGLE = 0x09              # vertical retrace and display enable

#: Code page 437's pictures for 0x00-0x1F and 0x7F (Python's cp437 codec gives control
#: characters there); 0x00 is shown as a space.
_LOW_GLYPHS = " ☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼"
CP437 = tuple(_LOW_GLYPHS) + tuple(bytes(range(0x20, 0x7F)).decode("ascii")) + ("⌂",) + \
    tuple(bytes(range(0x80, 0x100)).decode("cp437"))


def render_screen(cells: bytes) -> str:
    """The `--screen` text of 80x25 character/attribute pairs."""
    lines = []
    for row in range(ROWS):
        chars = cells[2 * COLUMNS * row:2 * COLUMNS * (row + 1):2]
        lines.append("".join(CP437[c] for c in chars).rstrip(" ") + "\n")
    return "".join(lines)


class Vga:
    def __init__(self, *, name: str = "vga") -> None:
        self.name = name
        self.ports = (range(0x3B4, 0x3B6), range(0x3BA, 0x3BB), range(0x3C0, 0x3D0),
                      range(0x3D4, 0x3D6), range(0x3DA, 0x3DB))
        self.crtc = bytearray(CRTC_MODE3) + bytes(0x40 - len(CRTC_MODE3))
        self.crtc_index = 0x0F
        self.seq = bytearray(SEQ_MODE3) + bytes(3)
        self.seq_index = 0
        self.gfx = bytearray(GFX_MODE3) + bytes(16 - len(GFX_MODE3))
        self.gfx_index = 0x05
        self.attr = bytearray(ATTR_MODE3)
        self.attr_index = 0x20          # bit 5: palette address source = display on
        self.attr_flip = False
        self.misc = MISC_MODE3
        self.feature = 0
        self.st01 = 0
        self.dac = bytearray(768)
        self.dac_read = self.dac_write = self.dac_sub = 0
        self.dac_state = 0

    # -- what the VMM reads --------------------------------------------------------------------
    @property
    def start_address(self) -> int:
        return (self.crtc[0x0C] << 8) | self.crtc[0x0D]

    @property
    def cursor(self) -> int:
        """Cursor location (character offset from the buffer start)."""
        return (self.crtc[0x0E] << 8) | self.crtc[0x0F]

    def visible_cells(self, read: bytes) -> bytes:
        """The 4000 bytes on screen, out of the 32 KiB text window `read` (from 0xB8000)."""
        start = 2 * self.start_address % TEXT_WINDOW
        size = 2 * COLUMNS * ROWS
        if start + size > TEXT_WINDOW:
            return (read[start:] + read[:start])[:size]
        return read[start:start + size]

    # -- ports ----------------------------------------------------------------------------------
    def _mono(self) -> bool:
        return not self.misc & 1

    def io_read(self, port: int, size: int) -> int:
        if port in (MONO_INDEX, MONO_DATA, MONO_STATUS1) and not self._mono():
            return 0xFF
        if port in (CRTC_INDEX, CRTC_DATA, STATUS1) and self._mono():
            return 0xFF
        if port in (CRTC_INDEX, MONO_INDEX):
            return self.crtc_index
        if port in (CRTC_DATA, MONO_DATA):
            return self.crtc[self.crtc_index] if self.crtc_index < len(self.crtc) else 0
        if port in (STATUS1, MONO_STATUS1):
            self.attr_flip = False
            self.st01 ^= ST01_TOGGLE
            return self.st01
        if port == ATTR:
            return 0 if self.attr_flip else self.attr_index
        if port == ATTR_READ:
            index = self.attr_index & 0x1F
            return self.attr[index] if index < len(self.attr) else 0
        if port == SEQ_INDEX:
            return self.seq_index
        if port == SEQ_DATA:
            return self.seq[self.seq_index]
        if port == GFX_INDEX:
            return self.gfx_index
        if port == GFX_DATA:
            return self.gfx[self.gfx_index]
        if port == MISC_READ:
            return self.misc
        if port == FEATURE_READ:
            return self.feature
        if port == DAC_READ_INDEX:
            return self.dac_state
        if port == DAC_WRITE_INDEX:
            return self.dac_write
        if port == DAC_DATA:
            value = self.dac[(self.dac_read * 3 + self.dac_sub) % 768]
            self._dac_step("read")
            return value
        return 0     # 0x3C2 input status 0, 0x3C3, 0x3C6 (PEL mask), 0x3CB, 0x3CD

    def io_write(self, port: int, size: int, value: int) -> None:
        if size == 2 and port in (CRTC_INDEX, MONO_INDEX, SEQ_INDEX, GFX_INDEX):
            # OUTW to an index port: index in the low byte, data in the high byte.
            self.io_write(port, 1, value & 0xFF)
            self.io_write(port + 1, 1, value >> 8)
            return
        value &= 0xFF
        if port in (MONO_INDEX, MONO_DATA, MONO_STATUS1) and not self._mono():
            return
        if port in (CRTC_INDEX, CRTC_DATA, STATUS1) and self._mono():
            return
        if port in (CRTC_INDEX, MONO_INDEX):
            self.crtc_index = value
        elif port in (CRTC_DATA, MONO_DATA):
            index = self.crtc_index
            if index >= len(self.crtc):
                return
            if index <= 7 and self.crtc[0x11] & 0x80:
                if index == 7:           # the protect bit leaves only bit 4 of register 7 writable
                    self.crtc[7] = (self.crtc[7] & ~0x10) | (value & 0x10)
                return
            self.crtc[index] = value
        elif port in (STATUS1, MONO_STATUS1):
            self.feature = value & 0x10
        elif port == ATTR:
            if not self.attr_flip:
                self.attr_index = value & 0x3F
            elif (self.attr_index & 0x1F) < len(self.attr):
                self.attr[self.attr_index & 0x1F] = value
            self.attr_flip = not self.attr_flip
        elif port == MISC_WRITE:
            self.misc = value & ~0x10
        elif port == SEQ_INDEX:
            self.seq_index = value & 7
        elif port == SEQ_DATA:
            self.seq[self.seq_index] = value
        elif port == GFX_INDEX:
            self.gfx_index = value & 0x0F
        elif port == GFX_DATA:
            self.gfx[self.gfx_index] = value
        elif port == DAC_READ_INDEX:
            self.dac_read, self.dac_sub, self.dac_state = value, 0, 3
        elif port == DAC_WRITE_INDEX:
            self.dac_write, self.dac_sub, self.dac_state = value, 0, 0
        elif port == DAC_DATA:
            self.dac[(self.dac_write * 3 + self.dac_sub) % 768] = value & 0x3F
            self._dac_step("write")

    def _dac_step(self, which: str) -> None:
        self.dac_sub += 1
        if self.dac_sub == 3:
            self.dac_sub = 0
            if which == "read":
                self.dac_read = (self.dac_read + 1) & 0xFF
            else:
                self.dac_write = (self.dac_write + 1) & 0xFF

    def tick(self, now_ns: int) -> None:
        """Not timed: the retrace bits toggle per read instead."""
