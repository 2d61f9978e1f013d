"""The PS/2 controller (8042, ports 0x60/0x64) with its keyboard (IRQ 1) and a mouse (IRQ 12).

Reference: the IBM PC/AT technical reference (keyboard controller commands 0x20-0xFF,
status and command byte) and the PS/2 keyboard command set; QEMU's hw/input/pckbd.c and
ps2.c (7.2) where a guest can tell the difference:

* status: output buffer full (0x01), system flag after self test (0x04), last write was a
  command (0x08, set from reset and never cleared, as QEMU), keyboard not inhibited (0x10),
  mouse data (0x20); the input buffer is never busy;
* the command byte ("mode", read by 0x20, written by 0x60) as SeaBIOS leaves it: 0x61
  (keyboard interrupt on, mouse off, translation to scan code set 1 on);
* controller commands: 0xAA self test -> 0x55, 0xAB / 0xA9 interface tests -> 0x00,
  0xAD / 0xAE disable / enable the keyboard, 0xA7 / 0xA8 the mouse, 0xC0 input port,
  0xD0 / 0xD1 output port (a write with bit 0 clear resets the machine: `on_reset`),
  0xD2 / 0xD3 write the output buffer as keyboard / mouse, 0xD4 write to the mouse,
  0xDD / 0xDF A20, 0xF0-0xFF pulse (0xFE: reset);
* keyboard commands: 0xFF reset (0xFA 0xAA), 0xF5 / 0xF4 / 0xF6 disable / enable /
  defaults, 0xF2 identify (0xFA 0xAB, then 0x41 translated or 0x83), 0xF0 scan code set
  (0 queries it), 0xED LEDs and 0xF3 typematic (each byte ACKed), 0xEE echo; anything else
  0xFE (resend); the mouse ACKs every byte and answers reset (0xFA 0xAA 0x00), identify
  (0xFA 0x00) and status (0xFA 0x00 0x02 0x64);
* reading 0x60 takes the next byte (or repeats the last when empty) and lowers the
  interrupt line, which rises again if more is waiting: one edge per byte;
* a byte written to the keyboard (or the mouse) first drops the answers to its earlier
  commands that the guest has not read (QEMU 7.2's ps2_cqueue_reset): "F0 00" written
  back to back answers FA 02, not FA FA 02.

Typed input (`bt run --keys FILE`, and the terminal) is deterministic in virtual time:

* each character becomes its key strokes (runtime/devices/keymap.py: Shift around
  shifted characters, Ctrl for control characters, Enter for "\\n"), each stroke its scan
  code bytes in the set the guest sees (set 1 while the command byte translates, else the
  keyboard's set);
* the keyboard is *ready* once scanning is enabled, the controller's keyboard interface
  is enabled and the guest can take IRQ 1 (command byte bit 0, and the line unmasked at
  the 8259 or the I/O APIC: `irq_enabled`). SeaBIOS leaves all of that so, so a kernel
  that polls port 0x64 and never touches the 8259 is ready from the start; one that masks
  IRQ 1 gets no key until it unmasks it (a driver's initialisation, which polls too, is
  never typed into);
* the first byte arrives `start_delay_ns` of virtual time after the keyboard was first
  seen ready, every next byte `BYTE_GAP_NS` after the guest read the previous one (a PS/2
  byte takes about a millisecond on the wire); while the guest is not ready, typing waits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from runtime.devices import keymap
from runtime.devices.base import IrqLine, no_irq

DATA_PORT, STATUS_PORT = 0x60, 0x64
KBD_IRQ, AUX_IRQ = 1, 12
BYTE_GAP_NS = 1_000_000

ST_OBF, ST_SELFTEST, ST_CMD, ST_UNLOCKED, ST_AUX_OBF = 0x01, 0x04, 0x08, 0x10, 0x20
MODE_KBD_INT, MODE_AUX_INT, MODE_DISABLE_KBD, MODE_DISABLE_AUX, MODE_TRANSLATE = 0x01, 0x02, 0x10, 0x20, 0x40
OUT_RESET, OUT_A20 = 0x01, 0x02
#: What SeaBIOS leaves (measured): status 0x1C, command byte 0x61, output port 0xCF.
BIOS_STATUS = ST_SELFTEST | ST_CMD | ST_UNLOCKED
BIOS_MODE = MODE_KBD_INT | MODE_DISABLE_AUX | MODE_TRANSLATE
BIOS_OUTPORT = 0xCF
ACK, RESEND, POR = 0xFA, 0xFE, 0xAA
#: Scan code set numbers as the translated `F0 00` query reports them.
_TRANSLATED_SET = {1: 0x43, 2: 0x41, 3: 0x3F}


def _none() -> None:
    return None


class I8042:
    def __init__(self, irq: IrqLine = no_irq, clock: Callable[[], int] = lambda: 0, *,
                 irq_enabled: Callable[[int], bool] = lambda line: True,
                 on_reset: Callable[[], None] = _none, start_delay_ns: int = 0,
                 name: str = "i8042") -> None:
        self.name = name
        self.ports = (range(DATA_PORT, DATA_PORT + 1), range(STATUS_PORT, STATUS_PORT + 1))
        self._irq = irq
        self.clock = clock
        self.irq_enabled = irq_enabled
        self.on_reset = on_reset
        self.start_delay_ns = start_delay_ns
        self.status = BIOS_STATUS
        self.mode = BIOS_MODE
        self.outport = BIOS_OUTPORT
        self.write_cmd = 0
        #: The output buffer and what waits behind it: (byte, from the mouse?, an answer to a
        #: keyboard or mouse command?).
        self.queue: deque[tuple[int, bool, bool]] = deque()
        self.last = 0
        self._levels = [False, False]            # IRQ 1 and IRQ 12 as last driven
        # The keyboard.
        self.scanning = True
        self.scan_set = 2
        self.kbd_cmd = 0                         # a command waiting for its argument byte
        # The mouse: commands that take an argument byte (set resolution, set sample rate).
        self.aux_cmd = 0
        # Typing.
        self.typed: deque[keymap.KeyEvent] = deque()
        self._pending: deque[int] = deque()     # bytes of the stroke being typed
        self.ready_since: int | None = None
        self.next_byte_ns = 0
        #: Statistics: scan code bytes typed into the guest, bytes it read from port 0x60.
        self.typed_bytes = 0
        self.reads = 0

    # -- host input ------------------------------------------------------------------------------
    def type_text(self, text: str) -> int:
        """Queue `text` to be typed; returns how many characters no key types (dropped)."""
        dropped = 0
        for ch in text:
            events = keymap.strokes(ch)
            dropped += not events
            self.typed.extend(events)
        return dropped

    @property
    def typing(self) -> bool:
        return bool(self.typed or self._pending)

    def ready(self) -> bool:
        if not self.scanning or self.mode & MODE_DISABLE_KBD:
            return False
        return bool(self.mode & MODE_KBD_INT) and self.irq_enabled(KBD_IRQ)

    def next_event_ns(self) -> int | None:
        """When the next typed byte arrives, None while nothing can arrive."""
        if not self.typing or self.queue or self.ready_since is None:
            return None
        return max(self.next_byte_ns, self.ready_since + self.start_delay_ns)

    def tick(self, now_ns: int) -> None:
        if not self.typing:
            return
        if self.ready_since is None:
            if not self.ready():
                return
            self.ready_since = now_ns
        event = self.next_event_ns()
        if event is None or event > now_ns or not self.ready():
            return
        if not self._pending:
            translated = bool(self.mode & MODE_TRANSLATE) or self.scan_set == 1
            self._pending.extend(keymap.scan_bytes(self.typed.popleft(), translated))
        self.typed_bytes += 1
        self._queue(self._pending.popleft())

    # -- ports -----------------------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        if port == STATUS_PORT:
            status = self.status & ~(ST_OBF | ST_AUX_OBF)
            if self.queue:
                status |= ST_OBF | (ST_AUX_OBF if self.queue[0][1] else 0)
            return status
        self.reads += 1
        if self.queue:
            self.last = self.queue.popleft()[0]
            self.next_byte_ns = self.clock() + BYTE_GAP_NS
            # The line drops with the byte read, and rises again for the next one.
            self._drive(False, False)
        self._update_irq()
        return self.last

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == STATUS_PORT:
            self._command(value)
            return
        cmd, self.write_cmd = self.write_cmd, 0
        if cmd == 0:
            self._drop_replies(aux=False)
            self._keyboard(value)
        elif cmd == 0x60:
            self.mode = value
            self._update_irq()
        elif cmd == 0xD1:
            self._write_outport(value)
        elif cmd in (0xD2, 0xD3):
            self._queue(value, aux=cmd == 0xD3)
        elif cmd == 0xD4:
            self._drop_replies(aux=True)
            self._mouse(value)

    def _command(self, cmd: int) -> None:
        if cmd & 0xF0 == 0xF0:                   # pulse output port bits: bit 0 low = reset
            if not cmd & 1:
                self.on_reset()
            return
        if cmd == 0x20:
            self._queue(self.mode)
        elif cmd in (0x60, 0xD1, 0xD2, 0xD3, 0xD4):
            self.write_cmd = cmd
        elif cmd == 0xA7:
            self.mode |= MODE_DISABLE_AUX
        elif cmd == 0xA8:
            self.mode &= ~MODE_DISABLE_AUX
        elif cmd in (0xA9, 0xAB):
            self._queue(0x00)
        elif cmd == 0xAA:
            self.status |= ST_SELFTEST
            self._queue(0x55)
        elif cmd == 0xAD:
            self.mode |= MODE_DISABLE_KBD
            self._update_irq()
        elif cmd == 0xAE:
            self.mode &= ~MODE_DISABLE_KBD
            self._update_irq()
        elif cmd == 0xC0:
            self._queue(0x80)
        elif cmd == 0xD0:
            self._queue(self.outport)
        elif cmd == 0xDD:
            self.outport &= ~OUT_A20
        elif cmd == 0xDF:
            self.outport |= OUT_A20
        # Anything else is ignored, as QEMU logs and ignores it.

    def _write_outport(self, value: int) -> None:
        self.outport = value
        if not value & OUT_RESET:
            self.on_reset()

    def _keyboard(self, byte: int) -> None:
        arg_of, self.kbd_cmd = self.kbd_cmd, 0
        if arg_of == 0xF0:                       # scan code set: 0 asks, 1-3 select
            if byte == 0:
                self._reply(ACK)
                self._reply(_TRANSLATED_SET[self.scan_set] if self.mode & MODE_TRANSLATE else self.scan_set)
            else:
                if byte in (1, 2, 3):
                    self.scan_set = byte
                self._reply(ACK)
            return
        if arg_of in (0xED, 0xF3):               # LED state, typematic rate: the argument is ACKed
            self._reply(ACK)
            return
        if byte in (0xED, 0xF3, 0xF0):
            self.kbd_cmd = byte
            self._reply(ACK)
        elif byte == 0xEE:
            self._reply(0xEE)
        elif byte == 0xF2:
            self._reply(ACK)
            self._reply(0xAB)
            self._reply(0x41 if self.mode & MODE_TRANSLATE else 0x83)
        elif byte == 0xF4:
            self.scanning = True
            self._reply(ACK)
        elif byte == 0xF5:
            self.scanning = False
            self.scan_set = 2
            self._reply(ACK)
        elif byte == 0xF6:
            self.scan_set = 2
            self._reply(ACK)
        elif byte == 0xFF:
            self.scanning = True
            self.scan_set = 2
            self._reply(ACK)
            self._reply(POR)
        elif 0xF7 <= byte <= 0xFD:
            self._reply(ACK)
        else:
            self._reply(RESEND)

    def _mouse(self, byte: int) -> None:
        if self.aux_cmd:
            self.aux_cmd = 0
            self._reply(ACK, aux=True)
            return
        self._reply(ACK, aux=True)
        if byte in (0xE8, 0xF3):
            self.aux_cmd = byte
        elif byte == 0xFF:
            self._reply(POR, aux=True)
            self._reply(0x00, aux=True)
        elif byte == 0xF2:
            self._reply(0x00, aux=True)
        elif byte == 0xE9:
            for b in (0x00, 0x02, 0x64):
                self._reply(b, aux=True)

    # -- interrupt lines ---------------------------------------------------------------------------
    def _queue(self, byte: int, aux: bool = False) -> None:
        self.queue.append((byte & 0xFF, aux, False))
        self._update_irq()

    def _reply(self, byte: int, aux: bool = False) -> None:
        self.queue.append((byte & 0xFF, aux, True))
        self._update_irq()

    def _drop_replies(self, aux: bool) -> None:
        if any(reply and a == aux for _, a, reply in self.queue):
            self.queue = deque(e for e in self.queue if not (e[2] and e[1] == aux))
            self._update_irq()

    def _update_irq(self) -> None:
        kbd = aux = False
        if self.queue:
            if self.queue[0][1]:
                aux = bool(self.mode & MODE_AUX_INT)
            else:
                kbd = bool(self.mode & MODE_KBD_INT) and not self.mode & MODE_DISABLE_KBD
        self._drive(kbd, aux)

    def _drive(self, kbd: bool, aux: bool) -> None:
        if kbd != self._levels[0]:
            self._levels[0] = kbd
            self._irq(KBD_IRQ, kbd)
        if aux != self._levels[1]:
            self._levels[1] = aux
            self._irq(AUX_IRQ, aux)
