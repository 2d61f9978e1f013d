"""Choosing the guest bytes a 5-byte JMP may overwrite (PATM's patch-jump safety rules).

The window is a run of whole instructions holding the site, at least 5 bytes, inside
one basic block and one page, with no branch target strictly inside it (a jump there
would land in the middle of the JMP), every instruction of it translatable or
relocatable, and only its last instruction allowed to leave for good. Among safe
windows the one that ends at the site is preferred: an exit of the site then resumes
in guest code; then the shortest. When none is safe the site gets the one-byte INT3
replacement, and a reason is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from bt import layout
from patchmgr.block import Planned
from patchmgr.patch import JMP_LEN
from patchmgr.relocate import CannotMove

if TYPE_CHECKING:
    from capstone import CsInsn


class CodeMap(Protocol):
    """What the scanner knows about the guest's code (bt.scan provides it)."""

    def block_of(self, address: int) -> tuple[int, int] | None:
        """The basic block [start, end) holding the instruction that starts at `address`."""

    def is_branch_target(self, address: int) -> bool:
        """True if any known jump, call, entry point or vector lands at `address`."""


@runtime_checkable
class LearningCodeMap(CodeMap, Protocol):
    """A code map that can learn code the guest runs but the scan never reached
    (patchmgr/codemap.py)."""

    def scanned(self, address: int) -> bool:
        """True if the static scan reached the instruction at `address`."""

    def learn(self, site: int, read: Callable[[int, int], bytes]) -> tuple[int, int] | None:
        """The block of `site` (which the guest is running), learned from `read` if need be."""


@dataclass(frozen=True)
class Window:
    start: int
    end: int
    items: tuple[Planned, ...]


class NoWindow(Exception):
    """No safe 5-byte window; `str()` says why (for the refusal record)."""


def choose(site: int, insns: Sequence[CsInsn], code: CodeMap,
           plan_one: Callable[[CsInsn], Planned], free: Callable[[int, int], bool]) -> Window:
    """A safe window over `insns` (the site's basic block, decoded) holding `site`;
    `free(start, end)` says whether no other patch holds any of those bytes."""
    index = next((i for i, ins in enumerate(insns) if ins.address == site), None)
    if index is None:
        raise NoWindow("site is not an instruction start of its basic block")
    plans: dict[int, Planned | str] = {}

    def planned(i: int) -> Planned | str:
        if i not in plans:
            try:
                plans[i] = plan_one(insns[i])
            except CannotMove as why:
                plans[i] = str(why)
        return plans[i]

    site_plan = planned(index)
    if isinstance(site_plan, str):
        raise NoWindow(site_plan)
    reasons: list[str] = []
    n = len(insns)
    # Candidates by preference: site last (after = 0) first, then fewer instructions after it.
    for after in range(0, n - index):
        last = index + after
        for first in range(index, -1, -1):
            start = insns[first].address
            end = insns[last].address + insns[last].size
            if end - start < JMP_LEN:
                continue
            why = (_unsafe(first, last, insns, code, planned) if free(start, end)
                   else "window overlaps another patch")
            if why is None:
                last = _through_exit(first, last, insns, code, planned, free)
                end = insns[last].address + insns[last].size
                items = tuple(p for p in (planned(i) for i in range(first, last + 1))
                              if not isinstance(p, str))
                return Window(start, end, items)
            reasons.append(why)
            break   # a longer window backwards only adds the same obstacle
    raise NoWindow(reasons[0] if reasons else "basic block shorter than 5 bytes")


#: How many instructions a window may grow by to end at its basic block's RET or JMP.
REACH = 4


def _through_exit(first: int, last: int, insns: Sequence[CsInsn], code: CodeMap,
                  planned: Callable[[int], Planned | str], free: Callable[[int, int], bool]) -> int:
    """`last`, or the index of the RET/JMP that ends the basic block a few instructions
    further when the window may grow to it: the block then leaves for the guest's next
    target itself instead of JMPing back to guest code that leaves at once (one Unicorn
    translation block and one instruction fewer on every pass). Only windows that never
    exit: a block that may unmask then checks for a pending interrupt at that last
    instruction, through a code gate (patchmgr/block.py)."""
    def quiet(i: int) -> bool:
        p = planned(i)
        return not isinstance(p, str) and not p.exits

    if not all(quiet(i) for i in range(first, last + 1)):
        return last
    for grow in range(last + 1, min(len(insns), last + 1 + REACH)):
        if not quiet(grow):
            return last
        p = planned(grow)
        assert not isinstance(p, str)
        if p.ends_window:
            end = insns[grow].address + insns[grow].size
            if free(insns[first].address, end) and _unsafe(first, grow, insns, code, planned) is None:
                return grow
            return last
    return last


def _unsafe(first: int, last: int, insns: Sequence[CsInsn], code: CodeMap,
            planned: Callable[[int], Planned | str]) -> str | None:
    start = insns[first].address
    end = insns[last].address + insns[last].size
    if start // layout.PAGE_SIZE != (end - 1) // layout.PAGE_SIZE:
        return "window would cross a page"
    for i in range(first + 1, last + 1):
        if code.is_branch_target(insns[i].address):
            return f"branch target {insns[i].address:#x} inside the window"
    for i in range(first, last + 1):
        p = planned(i)
        if isinstance(p, str):
            return f"cannot move {insns[i].mnemonic} at {insns[i].address:#x}: {p}"
        if p.ends_window and i != last:
            return f"{insns[i].mnemonic} at {insns[i].address:#x} must end the window (block end)"
    return None
