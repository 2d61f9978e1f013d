"""The flag-free tables of patchmgr/tables.py agree with the virtual flags word that
runtime/vcpu.py reads and writes, for every IF/IOPL and every real byte 1."""

from __future__ import annotations

import itertools

from bt import layout
from patchmgr import tables

IMAGE = tables.image()


def _u(name: str, index: int, size: int) -> int:
    at = tables.address(name) - tables.BASE + index * size
    return int.from_bytes(IMAGE[at:at + size], "little")


def test_popf_then_pushf_round_trips_if_and_iopl() -> None:
    # Real byte 1 at CPL 1: IF set, IOPL 0; TF (bit 0), DF (bit 2), OF (bit 3), NT (bit 6) any.
    reals = [0x02 | tf | df << 2 | of << 3 | nt << 6
             for tf, df, of, nt in itertools.product((0, 1), repeat=4)]
    for vif, iopl in itertools.product((0, 1), range(4)):
        popped = vif << 1 | iopl << 4 | 0x4D                 # byte 1 of a POPF image
        word = _u("popf_word", popped, 2)
        assert word == 0x02 | vif << 9 | iopl << 4           # the flags word's low 16 bits
        row = _u("pushf_rows", word, 4)
        for real in reals:
            guest = _u("pushf_merge", row + real, 1)
            assert guest == (real & ~0x32) | vif << 1 | iopl << 4


def test_the_flags_word_is_aligned() -> None:
    assert layout.state("vflags") % 4 == 0
