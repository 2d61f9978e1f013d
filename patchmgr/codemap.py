"""The scanner's view of the code (bt.scan.ScanResult) as the window choice needs it, plus
the code the guest ran that the scan never reached, learned when it first matters.

A site outside every scanned basic block used to get the INT3 replacement ("site is
outside every scanned basic block"). Now the patch manager asks `learn(site, read)`
when the guest actually runs such a site (it trapped, or its first-execution hook
fired): a recursive descent from it over guest memory (`bt.discover`, after CSAM,
which scanned a page the first time it ran) adds its blocks and branch targets here,
and the site gets a JMP window like any other. What is learned is bounded
(`MAX_LEARNED_BLOCKS`): a guest that keeps generating new code cannot grow the map
without limit; past the bound a site keeps the INT3 replacement, with that reason.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from bt import discover
from bt.scan import ScanResult, search

#: Blocks learned at run time, at most (each is two ints and a few targets).
MAX_LEARNED_BLOCKS = 1 << 16


class ScanCodeMap:
    def __init__(self, scan: ScanResult) -> None:
        self.scan = scan
        self._starts: list[int] = []            # learned blocks, sorted by start
        self._ends: list[int] = []
        self._targets: set[int] = set()
        self.learned_blocks = 0
        self.full = False

    def block_of(self, address: int) -> tuple[int, int] | None:
        found = self._scanned_block(address)
        if found is not None:
            return found
        i = bisect.bisect_right(self._starts, address) - 1
        # Learned blocks may overlap (two descents met in one block): look a few back.
        for k in range(i, max(i - 8, -1), -1):
            if self._starts[k] <= address < self._ends[k]:
                return self._starts[k], self._ends[k]
        return None

    def _scanned_block(self, address: int) -> tuple[int, int] | None:
        starts, ends = self.scan.block_starts, self.scan.block_ends
        i = search(starts, address, side="right") - 1
        # Blocks decoded from overlapping code sit among the others: look a few back.
        for k in range(i, max(i - 8, -1), -1):
            if int(starts[k]) <= address < int(ends[k]):
                return int(starts[k]), int(ends[k])
        return None

    def is_branch_target(self, address: int) -> bool:
        return self.scan.is_branch_target(address) or address in self._targets

    def scanned(self, address: int) -> bool:
        """True if the static scan reached the instruction at `address`."""
        return self._scanned_block(address) is not None

    def learn(self, site: int, read: Callable[[int, int], bytes]) -> tuple[int, int] | None:
        """The block of `site`, which the guest is running, learning it (and the code it
        leads to) by recursive descent over `read` if no block holds it yet."""
        found = self.block_of(site)
        if found is not None or self.full:
            return found
        result = discover.descend(read, site, lambda a: self.block_of(a) is not None,
                                  bits=self.scan.image.bits)
        for start, end in result.blocks:
            if self.learned_blocks >= MAX_LEARNED_BLOCKS:
                self.full = True
                break
            i = bisect.bisect_right(self._starts, start)
            self._starts.insert(i, start)
            self._ends.insert(i, end)
            self.learned_blocks += 1
        if len(self._targets) < 4 * MAX_LEARNED_BLOCKS:
            self._targets.update(result.targets)
        else:
            self.full = True
        return self.block_of(site)
