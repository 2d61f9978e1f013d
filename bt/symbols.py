"""Naming guest addresses after the kernel's functions: one rule for every report.

`bt run --stats`, its stop report and `bt compare` all name a site `function+0xoff`
through `FunctionMap.describe`, so the same address reads the same everywhere. Only
function symbols count, each over its own extent: `[start, start + size)`, or, for a
symbol of size 0 (an assembly label), up to the next function. Anything else is the
bare hex address: an address in patch memory (or in any other place the kernel has no
code) is never named after the last guest symbol below it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Function:
    name: str
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


class FunctionMap:
    def __init__(self, functions: Iterable[Function]) -> None:
        self.functions = tuple(sorted(functions, key=lambda f: (f.start, f.name)))
        self._starts = [f.start for f in self.functions]

    def function_at(self, address: int) -> Function | None:
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        f = self.functions[i]
        nxt = self.functions[i + 1].start if i + 1 < len(self.functions) else f.start
        end = f.end if f.size else nxt
        return f if f.start <= address < max(end, f.start + 1) else None

    def describe(self, address: int) -> str:
        """`function+0xoff` (`function` at its start), or the hex address outside every function."""
        f = self.function_at(address)
        if f is None:
            return f"{address:#x}"
        off = address - f.start
        return f"{f.name}+{off:#x}" if off else f.name
