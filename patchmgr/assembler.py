"""Keystone, wrapped: patch rules speak Intel-syntax assembly, patch memory wants bytes.

Keystone errors are a bug in a patch rule (or in a third-party plugin), never the
guest's fault, so they become `bt.errors.AssembleError` carrying the source text.
One engine per process: Keystone engines are not cheap to open and assembling is
only done when a patch is made, never on an exit path.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from bt.errors import AssembleError

if TYPE_CHECKING:
    from keystone import Ks


@lru_cache(maxsize=1)
def _engine() -> Ks:
    from keystone import KS_ARCH_X86, KS_MODE_32, Ks

    return Ks(KS_ARCH_X86, KS_MODE_32)


#: Sources whose bytes do not depend on where they are assembled (no branch out of them):
#: most patch code is, and Keystone costs a third of a millisecond a call, which a
#: patch made while the guest runs pays.
_position_independent: dict[str, bytes] = {}


def assemble(source: str, address: int) -> bytes:
    """Assemble `source` (Intel syntax, `;`-free, one instruction per line) at `address`."""
    text = "\n".join(line.strip() for line in source.splitlines() if line.strip())
    if not text:
        return b""
    cached = _position_independent.get(text)
    if cached is not None:
        return cached
    code = _asm(text, address)
    if _asm(text, address ^ 0x10000) == code:
        _position_independent[text] = code
    return code


def _asm(text: str, address: int) -> bytes:
    from keystone import KsError

    try:
        encoding, _count = _engine().asm(text, address)
    except KsError as err:
        raise AssembleError(f"keystone: {err} assembling at {address:#x}:\n{text}") from err
    if encoding is None:
        raise AssembleError(f"keystone produced nothing at {address:#x}:\n{text}")
    return bytes(encoding)


def jmp(source: int, target: int) -> bytes:
    """JMP rel32 at `source` to `target` (32-bit wrap-around, as the CPU computes it)."""
    return b"\xe9" + ((target - (source + 5)) & 0xFFFFFFFF).to_bytes(4, "little")
