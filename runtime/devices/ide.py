"""The IDE channels with PIO disks: primary (ports 0x1F0-0x1F7 and 0x3F6, IRQ 14) with
`--disk` images, and an empty secondary (0x170-0x177, 0x376, IRQ 15) that answers as
QEMU's does to a probe (every register reads 0).

Reference: ATA/ATAPI-6 (T13/1410D): the command block and control block registers,
the PIO data-in and data-out protocols, IDENTIFY DEVICE, READ/WRITE SECTORS (0x20/0x21,
0x30/0x31) and their MULTIPLE variants (0xC4/0xC5, SET MULTIPLE MODE 0xC6), 28-bit LBA
and CHS addressing, nIEN and SRST in the device control register. What a guest can see
follows QEMU's hw/ide/core.c (7.2), ring1's reference:

* writes to the task file reach both devices, reads come from the selected one; with no
  disk at all, or the missing slave selected, every register but the device register
  reads 0 and commands are ignored (xv6 finds its second disk this way);
* IDENTIFY DEVICE returns QEMU's words (model "QEMU HARDDISK", serial "QM0000n", firmware
  "2.5+", 16 sectors per READ/WRITE MULTIPLE, the CHS geometry QEMU guesses);
* a read command makes the drive busy for `latency_ns` of virtual time, then shows the
  first block (one sector, or the multiple count) with DRQ and raises IRQ 14; each block
  the guest has read starts the next the same way; sector count and address registers
  advance as each block is loaded; a write command asks for the first block at once (DRQ,
  no interrupt), and each block written is busy for `latency_ns`, then interrupts;
* reading the status register or writing a command lowers the interrupt line, the
  alternate status does not;
  nIEN masks the raise; SRST sets busy, and its release resets both devices (DRDY, error
  register 1, the signature, CHS addressing);
* an address beyond the disk, a command the drive does not know (IDENTIFY PACKET
  included, as for a disk) or READ/WRITE MULTIPLE without a multiple count is aborted:
  ERR and ABRT, with an interrupt; data port reads without DRQ return 0.

The state at entry is SeaBIOS's (measured with tests/data/pcprobe.S): status READY|DSC,
the slave selected (device register 0xB0), the other registers 0.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from runtime.devices.base import IrqLine, no_irq
from runtime.devices.disk import SECTOR, DiskImage, chs_geometry

BASE, CONTROL = 0x1F0, 0x3F6
IDE_IRQ = 14
SECONDARY_BASE, SECONDARY_CONTROL, SECONDARY_IRQ = 0x170, 0x376, 15
#: Virtual time a sector transfer keeps the drive busy before it interrupts.
LATENCY_NS = 10_000
MAX_MULT_SECTORS = 16

ST_ERR, ST_DRQ, ST_DSC, ST_DRDY, ST_BSY = 0x01, 0x08, 0x10, 0x40, 0x80
ERR_ABRT = 0x04
CTRL_NIEN, CTRL_SRST = 0x02, 0x04
DEV_LBA, DEV_SLAVE = 0x40, 0x10

CMD_READ = (0x20, 0x21)
CMD_WRITE = (0x30, 0x31)
CMD_READ_MULTIPLE, CMD_WRITE_MULTIPLE, CMD_SET_MULTIPLE = 0xC4, 0xC5, 0xC6
CMD_IDENTIFY, CMD_CHECK_POWER = 0xEC, 0xE5
#: Commands with no data that simply complete (QEMU answers them without an error):
#: RECALIBRATE, READ VERIFY (both forms), INITIALIZE DEVICE PARAMETERS, SEEK, STANDBY /
#: IDLE (immediate and not), SLEEP, FLUSH CACHE (and EXT), SET FEATURES.
_NO_DATA = frozenset({0x10, 0x40, 0x41, 0x91, 0x70, 0xE0, 0xE1, 0xE2, 0xE3, 0xE6, 0xE7, 0xEA, 0xEF})


def _padded(text: str, size: int) -> bytes:
    """QEMU's padstr: ASCII padded with spaces, bytes swapped in each 16-bit word (ATA strings)."""
    raw = text.encode("ascii").ljust(size)[:size]
    return bytes(raw[i ^ 1] for i in range(size))


def identify_words(sectors: int, unit_index: int, mult_sectors: int) -> bytes:
    """The 512 bytes of IDENTIFY DEVICE as QEMU's ide_identify fills them."""
    cylinders, heads, spt = chs_geometry(sectors)
    w = [0] * 256
    w[0] = 0x0040
    w[1], w[3], w[4], w[5], w[6] = cylinders, heads, 512 * spt, 512, spt
    w[20], w[21], w[22] = 3, 512, 4
    w[47] = 0x8000 | MAX_MULT_SECTORS
    w[48] = 1
    w[49] = (1 << 11) | (1 << 9) | (1 << 8)
    w[51] = w[52] = 0x200
    w[53] = 0x7
    w[54], w[55], w[56] = cylinders, heads, spt
    old = cylinders * heads * spt
    w[57], w[58] = old & 0xFFFF, (old >> 16) & 0xFFFF
    if mult_sectors:
        w[59] = 0x100 | mult_sectors
    lba28 = min(sectors, (1 << 28) - 1)
    w[60], w[61] = lba28 & 0xFFFF, lba28 >> 16
    w[62] = w[63] = 0x07
    w[64] = 0x03
    w[65] = w[66] = w[67] = w[68] = 120
    w[69] = 1 << 14                 # deterministic TRIM (QEMU's default discard granularity)
    w[80], w[81] = 0xF0, 0x16
    w[82] = (1 << 14) | (1 << 5) | 1
    w[83] = (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10)
    w[84] = 1 << 14
    w[85] = (1 << 14) | (1 << 5) | 1
    w[86] = (1 << 13) | (1 << 12) | (1 << 10)
    w[87] = 1 << 14
    w[88] = 0x3F | (1 << 13)
    w[93] = 1 | (1 << 14) | 0x2000
    for i in range(4):
        w[100 + i] = (sectors >> (16 * i)) & 0xFFFF
    w[106] = 0x6000
    w[169] = 1
    data = bytearray(struct.pack("<256H", *w))
    data[20:40] = _padded(f"QM{unit_index + 1:05d}", 20)
    data[46:54] = _padded("2.5+", 8)
    data[54:94] = _padded("QEMU HARDDISK", 40)
    return bytes(data)


class Drive:
    """One device's task file and its disk (None: no device at this position)."""

    def __init__(self, disk: DiskImage | None, unit: int) -> None:
        self.disk = disk
        self.unit = unit
        self.status = ST_DRDY | ST_DSC if disk is not None else 0
        self.error = 0
        self.feature = 0
        self.nsector = self.sector = self.lcyl = self.hcyl = 0
        self.select = 0xA0 | (DEV_SLAVE if unit else 0)
        self.mult_sectors = MAX_MULT_SECTORS

    def address(self) -> int:
        if self.select & DEV_LBA:
            return ((self.select & 0x0F) << 24) | (self.hcyl << 16) | (self.lcyl << 8) | self.sector
        assert self.disk is not None
        _, heads, spt = chs_geometry(self.disk.sectors)
        return (((self.hcyl << 8) | self.lcyl) * heads + (self.select & 0x0F)) * spt + (self.sector - 1)

    def set_address(self, lba: int) -> None:
        if self.select & DEV_LBA:
            self.select = (self.select & 0xF0) | ((lba >> 24) & 0x0F)
            self.hcyl, self.lcyl, self.sector = (lba >> 16) & 0xFF, (lba >> 8) & 0xFF, lba & 0xFF
            return
        assert self.disk is not None
        _, heads, spt = chs_geometry(self.disk.sectors)
        cylinder, rest = divmod(lba, heads * spt)
        head, sector = divmod(rest, spt)
        self.hcyl, self.lcyl = (cylinder >> 8) & 0xFF, cylinder & 0xFF
        self.select = (self.select & 0xF0) | (head & 0x0F)
        self.sector = sector + 1

    def reset(self) -> None:
        """A software reset: registers as at power-on (CHS, head 0), DRDY|DSC, diagnostic code
        1 in the error register, the ATA signature, 16 sectors per multiple block."""
        self.select = 0xA0 | (DEV_SLAVE if self.unit else 0)
        self.status = ST_DRDY | ST_DSC if self.disk is not None else 0
        self.error = 0x01
        self.feature = 0
        self.mult_sectors = MAX_MULT_SECTORS
        self.signature()

    def signature(self) -> None:
        """ATA signature after reset: sector count 1, sector 1, cylinder 0 (a disk)."""
        self.select &= 0xF0
        self.nsector, self.sector = 1, 1
        self.lcyl = self.hcyl = 0 if self.disk is not None else 0xFF


class IdeChannel:
    def __init__(self, disks: tuple[DiskImage, ...] = (), irq: IrqLine = no_irq,
                 clock: Callable[[], int] = lambda: 0, *, latency_ns: int = LATENCY_NS,
                 base: int = BASE, control: int = CONTROL, irq_line: int = IDE_IRQ,
                 name: str = "ide") -> None:
        self.name = name
        self.base, self.control_port, self.irq_line = base, control, irq_line
        self.ports = (range(base, base + 8), range(control, control + 1))
        self.drives = (Drive(disks[0] if disks else None, 0), Drive(disks[1] if len(disks) > 1 else None, 1))
        self._irq = irq
        self.clock = clock
        self.latency_ns = latency_ns
        self.control = 0
        self.unit = 1 if any(d.disk for d in self.drives) else 0    # SeaBIOS probed the slave last
        self._level = False
        # PIO transfer in progress: the buffer, the position, what to do once it is consumed.
        self.buffer = bytearray()
        self.pos = 0
        self._after: Callable[[], None] | None = None
        self._writing = False
        # A timed completion: (virtual time, action).
        self._due: tuple[int, Callable[[], None]] | None = None
        self._remaining = 0          # sectors still to transfer in this command
        self._block = 1              # sectors per DRQ block
        #: Statistics.
        self.commands = 0
        self.irqs = 0

    @property
    def selected(self) -> Drive:
        return self.drives[self.unit]

    def _absent(self) -> bool:
        return (self.drives[0].disk is None and self.drives[1].disk is None) or self.selected.disk is None

    # -- interrupt ---------------------------------------------------------------------------------
    def _raise(self) -> None:
        if self.control & CTRL_NIEN:
            return
        self.irqs += 1
        if not self._level:
            self._level = True
            self._irq(self.irq_line, True)

    def _lower(self) -> None:
        if self._level:
            self._level = False
            self._irq(self.irq_line, False)

    # -- time -----------------------------------------------------------------------------------------
    def next_event_ns(self) -> int | None:
        return None if self._due is None else self._due[0]

    def tick(self, now_ns: int) -> None:
        if self._due is not None and self._due[0] <= now_ns:
            action = self._due[1]
            self._due = None
            action()

    def _later(self, action: Callable[[], None]) -> None:
        self._due = (self.clock() + self.latency_ns, action)

    # -- ports ----------------------------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        self.tick(self.clock())           # a completion that fell due inside the slice
        if port == self.base:
            return self._data_in(size)
        drive = self.selected
        reg = port - self.base
        if port == self.control_port:
            return 0 if self._absent() else drive.status
        if reg == 6:
            return 0 if all(d.disk is None for d in self.drives) else drive.select
        if self._absent():
            if reg == 7:
                self._lower()
            return 0
        if reg == 1:
            return drive.error
        if reg == 2:
            return drive.nsector & 0xFF
        if reg == 3:
            return drive.sector
        if reg == 4:
            return drive.lcyl
        if reg == 5:
            return drive.hcyl
        self._lower()                     # reading status acknowledges the interrupt
        return drive.status

    def io_write(self, port: int, size: int, value: int) -> None:
        self.tick(self.clock())
        if port == self.base:
            self._data_out(size, value)
            return
        if port == self.control_port:
            self._device_control(value & 0xFF)
            return
        value &= 0xFF
        reg = port - self.base
        if reg == 7:
            self._lower()                 # writing the command register clears INTRQ (ATA; QEMU)
            self._command(value)
            return
        for d in self.drives:             # the task file is written in both devices
            if reg == 1:
                d.feature = value
            elif reg == 2:
                d.nsector = value
            elif reg == 3:
                d.sector = value
            elif reg == 4:
                d.lcyl = value
            elif reg == 5:
                d.hcyl = value
            elif reg == 6:
                d.select = (value & ~DEV_SLAVE) | (DEV_SLAVE if d.unit else 0)
        if reg == 6:
            self.unit = (value >> 4) & 1

    def _device_control(self, value: int) -> None:
        if value & CTRL_SRST and not self.control & CTRL_SRST:
            for d in self.drives:          # busy while SRST is held; the rest is kept (QEMU 7.2)
                d.status |= ST_BSY
            self._stop()
            self._due = None
        elif self.control & CTRL_SRST and not value & CTRL_SRST:
            for d in self.drives:          # the reset happens: QEMU's ide_perform_srst
                d.reset()
        self.control = value

    # -- data port ------------------------------------------------------------------------------------
    # The data port has 16- and 32-bit handlers only (QEMU's ide portio list): a byte access
    # is made as a 16-bit one, of which the bus keeps the low byte.
    def _data_in(self, size: int) -> int:
        drive = self.selected
        size = max(size, 2)
        if not drive.status & ST_DRQ or self._writing:
            return 0
        value = int.from_bytes(self.buffer[self.pos:self.pos + size], "little")
        self.pos += size
        if self.pos >= len(self.buffer):
            self._consumed()
        return value

    def _data_out(self, size: int, value: int) -> None:
        drive = self.selected
        size = max(size, 2)
        if not drive.status & ST_DRQ or not self._writing:
            return
        self.buffer[self.pos:self.pos + size] = value.to_bytes(size, "little")
        self.pos += size
        if self.pos >= len(self.buffer):
            self._consumed()

    def _start(self, data: bytes | bytearray, after: Callable[[], None], writing: bool) -> None:
        self.buffer = bytearray(data)
        self.pos = 0
        self._after = after
        self._writing = writing
        self.selected.status |= ST_DRQ

    def _consumed(self) -> None:
        after, self._after = self._after, None
        self.selected.status &= ~ST_DRQ
        if after is not None:
            after()

    def _stop(self) -> None:
        """End of a transfer (QEMU's ide_transfer_stop)."""
        self.buffer = bytearray()
        self.pos = 0
        self._after = None
        self._writing = False
        for d in self.drives:
            d.status &= ~ST_DRQ

    # -- commands ---------------------------------------------------------------------------------------
    def _command(self, cmd: int) -> None:
        drive = self.selected
        if drive.disk is None:
            return                        # no device answers: the command is ignored
        self.commands += 1
        self._due = None
        self._stop()
        if cmd == CMD_IDENTIFY:
            drive.status = ST_DRDY | ST_DSC
            self._start(identify_words(drive.disk.sectors, drive.unit, drive.mult_sectors), self._stop, False)
            self._raise()
        elif cmd in CMD_READ or cmd == CMD_READ_MULTIPLE:
            if cmd == CMD_READ_MULTIPLE and not drive.mult_sectors:
                self._abort()
                return
            self._begin(drive, drive.mult_sectors if cmd == CMD_READ_MULTIPLE else 1)
            self._read_block()
        elif cmd in CMD_WRITE or cmd == CMD_WRITE_MULTIPLE:
            if cmd == CMD_WRITE_MULTIPLE and not drive.mult_sectors:
                self._abort()
                return
            self._begin(drive, drive.mult_sectors if cmd == CMD_WRITE_MULTIPLE else 1)
            drive.status = ST_DRDY | ST_DSC
            self._start(bytes(SECTOR * min(self._remaining, self._block)), self._write_block, True)
        elif cmd == CMD_SET_MULTIPLE:
            n = drive.nsector
            if n > MAX_MULT_SECTORS or n & (n - 1):
                self._abort()
                return
            drive.mult_sectors = n
            self._complete()
        elif cmd == CMD_CHECK_POWER:
            drive.nsector = 0xFF          # active or idle
            self._complete()
        elif cmd in _NO_DATA:
            self._complete()
        else:
            self._abort()

    def _begin(self, drive: Drive, block: int) -> None:
        self._remaining = drive.nsector or 256
        drive.nsector = self._remaining
        self._block = block

    def _complete(self) -> None:
        self.selected.status = ST_DRDY | ST_DSC
        self.selected.error = 0
        self._raise()

    def _abort(self) -> None:
        self._stop()
        self.selected.status = ST_DRDY | ST_ERR
        self.selected.error = ERR_ABRT
        self._raise()

    def _in_range(self, drive: Drive, count: int) -> bool:
        assert drive.disk is not None
        lba = drive.address()
        return 0 <= lba and lba + count <= drive.disk.sectors

    # PIO data-in: busy, then a block with DRQ and an interrupt; the next block once it is read.
    def _read_block(self) -> None:
        drive = self.selected
        drive.status = ST_DRDY | ST_DSC
        drive.error = 0
        if self._remaining == 0:
            self._stop()
            return
        count = min(self._remaining, self._block)
        if not self._in_range(drive, count):
            self._abort()
            return
        drive.status |= ST_BSY
        self._later(lambda: self._read_loaded(drive, count))

    def _read_loaded(self, drive: Drive, count: int) -> None:
        assert drive.disk is not None
        lba = drive.address()
        data = drive.disk.read(lba, count)
        self._remaining -= count
        drive.nsector = self._remaining
        drive.set_address(lba + count)
        drive.status = ST_DRDY | ST_DSC
        self._start(data, self._read_block, False)
        self._raise()

    # PIO data-out: the guest fills a block; busy while it is written, then an interrupt.
    def _write_block(self) -> None:
        drive = self.selected
        count = min(self._remaining, self._block)
        data = bytes(self.buffer)
        if not self._in_range(drive, count):
            self._abort()
            return
        drive.status = ST_DRDY | ST_DSC | ST_BSY
        self._later(lambda: self._write_done(drive, count, data))

    def _write_done(self, drive: Drive, count: int, data: bytes) -> None:
        assert drive.disk is not None
        lba = drive.address()
        drive.disk.write(lba, data[:count * SECTOR])
        self._remaining -= count
        drive.nsector = self._remaining
        drive.set_address(lba + count)
        drive.status = ST_DRDY | ST_DSC
        if self._remaining:
            self._start(bytes(SECTOR * min(self._remaining, self._block)), self._write_block, True)
        else:
            self._stop()
        self._raise()

    def close(self) -> None:
        for d in self.drives:
            if d.disk is not None:
                d.disk.close()
