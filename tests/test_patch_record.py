"""The patch record `bt patch` writes and `bt run` reads back (patchmgr/record.py): a
round trip keeps every map, exit and gate; anything else is a one-line InputError."""

from __future__ import annotations

import json

import pytest

from bt.errors import InputError
from bt.layout import PATCH_BASE
from patchmgr import record
from runtime.ruletest import run_patched


def _patched() -> tuple[list[record.Patch], bytes, int]:
    # A code gate (STI ... RET) and an entry stub (PUSH EBX; POPFD) in one guest.
    src = ("call f\nmov ebx, 0x202\npush ebx\npopfd\nnop\nnop\nnop\nnop\njmp done\n"
           "f: sti\ninc dword ptr [0x90000]\nret\ndone: nop")
    _, mgr = run_patched(src, {"eax": 1, "ebx": 2}, 0, 0)
    top = mgr.patch_memory.top
    return list(mgr.patches.values()), mgr.memory.read(PATCH_BASE, top - PATCH_BASE), top


def test_round_trip_keeps_blocks_entries_and_gates() -> None:
    patches, code, top = _patched()
    assert any(p.block and p.block.gate_on for p in patches)
    assert any(p.block and any(c.entry for c in p.block.chunks) for p in patches)
    back = record.load(record.dump(patches, [], PATCH_BASE, top, {}), code)
    assert [p.block for p in back.patches] == [p.block for p in patches]
    assert [(p.site, p.kind, p.start, p.end, p.original) for p in back.patches] == \
        [(p.site, p.kind, p.start, p.end, p.original) for p in patches]


@pytest.mark.parametrize("mangle", [
    lambda d: d.pop("patches"),
    lambda d: d["patches"][0]["block"].pop("gate_on"),
    lambda d: d["patches"][0]["block"].__setitem__("chunks", [[1, 2]]),
    lambda d: d["patches"][0].__setitem__("original", "zz"),
    lambda d: d["patches"][0]["block"].__setitem__("exits", 7),
])
def test_malformed_record_is_an_input_error(mangle: object) -> None:
    patches, code, top = _patched()
    doc = json.loads(record.dump(patches, [], PATCH_BASE, top, {}))
    mangle(doc)  # type: ignore[operator]
    with pytest.raises(InputError, match="malformed patch record"):
        record.load(json.dumps(doc).encode(), code)


@pytest.mark.parametrize("raw", [b"[]", b"3", b"\xff", b"{"])
def test_not_a_record(raw: bytes) -> None:
    with pytest.raises(InputError, match="not a patch record"):
        record.load(raw, b"")
