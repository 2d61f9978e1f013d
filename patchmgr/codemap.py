"""The scanner's view of the code (bt.scan.ScanResult) as the `CodeMap` window choice needs."""

from __future__ import annotations

import numpy as np

from bt.scan import ScanResult


class ScanCodeMap:
    def __init__(self, scan: ScanResult) -> None:
        self.scan = scan

    def block_of(self, address: int) -> tuple[int, int] | None:
        starts, ends = self.scan.block_starts, self.scan.block_ends
        i = int(np.searchsorted(starts, address, side="right")) - 1
        # Blocks decoded from overlapping code sit among the others: look a few back.
        for k in range(i, max(i - 8, -1), -1):
            if int(starts[k]) <= address < int(ends[k]):
                return int(starts[k]), int(ends[k])
        return None

    def is_branch_target(self, address: int) -> bool:
        return self.scan.is_branch_target(address)
