"""Text to PS/2 key strokes: which keys a US keyboard presses to type a character, and the
scan codes of those keys in sets 1 and 2.

A key is named by its set-1 make code (what a PC sees through the 8042's translation,
the IBM PC/AT scan codes); `SET2` gives the code the keyboard itself sends in set 2 (the
set the 8042 translates from). A break code is the make code | 0x80 in set 1 and 0xF0
followed by the make code in set 2. Only keys that typed text needs are listed.
"""

from __future__ import annotations

ESC, BACKSPACE, TAB, ENTER, LCTRL, LSHIFT, SPACE = 0x01, 0x0E, 0x0F, 0x1C, 0x1D, 0x2A, 0x39

#: Unshifted and shifted characters of each key, by set-1 make code (US layout).
_KEYS: dict[int, str] = {
    0x02: "1!", 0x03: "2@", 0x04: "3#", 0x05: "4$", 0x06: "5%", 0x07: "6^", 0x08: "7&", 0x09: "8*",
    0x0A: "9(", 0x0B: "0)", 0x0C: "-_", 0x0D: "=+",
    0x10: "qQ", 0x11: "wW", 0x12: "eE", 0x13: "rR", 0x14: "tT", 0x15: "yY", 0x16: "uU", 0x17: "iI",
    0x18: "oO", 0x19: "pP", 0x1A: "[{", 0x1B: "]}",
    0x1E: "aA", 0x1F: "sS", 0x20: "dD", 0x21: "fF", 0x22: "gG", 0x23: "hH", 0x24: "jJ", 0x25: "kK",
    0x26: "lL", 0x27: ";:", 0x28: "'\"", 0x29: "`~", 0x2B: "\\|",
    0x2C: "zZ", 0x2D: "xX", 0x2E: "cC", 0x2F: "vV", 0x30: "bB", 0x31: "nN", 0x32: "mM",
    0x33: ",<", 0x34: ".>", 0x35: "/?", 0x39: "  ",
}

#: Set-1 make code -> set-2 make code (the 8042 translation table read backwards).
SET2: dict[int, int] = {
    ESC: 0x76, 0x02: 0x16, 0x03: 0x1E, 0x04: 0x26, 0x05: 0x25, 0x06: 0x2E, 0x07: 0x36, 0x08: 0x3D,
    0x09: 0x3E, 0x0A: 0x46, 0x0B: 0x45, 0x0C: 0x4E, 0x0D: 0x55, BACKSPACE: 0x66, TAB: 0x0D,
    0x10: 0x15, 0x11: 0x1D, 0x12: 0x24, 0x13: 0x2D, 0x14: 0x2C, 0x15: 0x35, 0x16: 0x3C, 0x17: 0x43,
    0x18: 0x44, 0x19: 0x4D, 0x1A: 0x54, 0x1B: 0x5B, ENTER: 0x5A, LCTRL: 0x14,
    0x1E: 0x1C, 0x1F: 0x1B, 0x20: 0x23, 0x21: 0x2B, 0x22: 0x34, 0x23: 0x33, 0x24: 0x3B, 0x25: 0x42,
    0x26: 0x4B, 0x27: 0x4C, 0x28: 0x52, 0x29: 0x0E, LSHIFT: 0x12, 0x2B: 0x5D,
    0x2C: 0x1A, 0x2D: 0x22, 0x2E: 0x21, 0x2F: 0x2A, 0x30: 0x32, 0x31: 0x31, 0x32: 0x3A,
    0x33: 0x41, 0x34: 0x49, 0x35: 0x4A, 0x36: 0x59, SPACE: 0x29,
}

_CHAR: dict[str, tuple[int, bool]] = {}
for _code, _pair in _KEYS.items():
    _CHAR.setdefault(_pair[0], (_code, False))
    _CHAR.setdefault(_pair[1], (_code, True))
_CHAR.update({"\n": (ENTER, False), "\r": (ENTER, False), "\t": (TAB, False), "\b": (BACKSPACE, False),
              "\x7f": (BACKSPACE, False), "\x1b": (ESC, False)})
_LETTERS = {ch: code for code, pair in _KEYS.items() for ch in pair[0] if ch.isalpha()}

#: A key event: (set-1 make code, released?).
KeyEvent = tuple[int, bool]


def strokes(ch: str) -> list[KeyEvent]:
    """The key presses and releases that type `ch`; [] for a character no key types.
    Shifted characters hold Shift around the key; control characters 0x01-0x1A (but the
    ones with their own key: Tab, Enter, Backspace) hold Ctrl with the letter."""
    hit = _CHAR.get(ch)
    if hit is not None:
        code, shift = hit
        events = [(code, False), (code, True)]
        return [(LSHIFT, False), *events, (LSHIFT, True)] if shift else events
    if 1 <= ord(ch) <= 26:
        letter = chr(ord(ch) + 0x60)
        code = _LETTERS[letter]
        return [(LCTRL, False), (code, False), (code, True), (LCTRL, True)]
    return []


def scan_bytes(event: KeyEvent, set1: bool) -> bytes:
    """The bytes the guest reads for one key event: set 1 (through translation) or set 2."""
    code, released = event
    if set1:
        return bytes((code | 0x80,)) if released else bytes((code,))
    return bytes((0xF0, SET2[code])) if released else bytes((SET2[code],))
