"""The host terminal as the guest's PS/2 keyboard (`bt run` when stdin is a terminal).

The terminal is put in cbreak mode (no line buffering, no echo: the guest echoes what it
wants) and keeps ISIG, so Ctrl-C still interrupts ring1 rather than reaching the guest.
Its mode is restored when the run ends, whatever ended it (`close`, called from the run
loop's `finally`, and registered with `atexit` as a second line of defence). Keys typed
here arrive in wall-clock time, so an interactive run is not reproducible; `--keys FILE`
is.
"""

from __future__ import annotations

import atexit
import os
import select
import sys
import termios
import tty
from typing import Any, TextIO


class Terminal:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdin
        self.fd = self.stream.fileno()
        self._saved: list[Any] | None = None

    @staticmethod
    def available(stream: TextIO | None = None) -> bool:
        stream = stream if stream is not None else sys.stdin
        try:
            return stream.isatty()
        except (ValueError, OSError):
            return False

    def open(self) -> None:
        if self._saved is not None:
            return
        self._saved = termios.tcgetattr(self.fd)
        atexit.register(self.close)
        tty.setcbreak(self.fd)

    def close(self) -> None:
        saved, self._saved = self._saved, None
        if saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)

    def read(self, timeout: float = 0.0) -> str:
        """What was typed, waiting up to `timeout` seconds for something ("" if nothing)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return ""
        data = os.read(self.fd, 256)
        return data.decode("latin-1")
