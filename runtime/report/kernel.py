"""The kernel a comparison is about: its identity (path, SHA-256) and its functions.

Function symbols (read by `bt.elf`) turn a guest address into `symbol+offset` for
the site table and give the exit map of the HTML report its regions. Only what the
report needs is kept, so a `KernelInfo` pickles to worker processes and round-trips
through JSON fixtures.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from bt import elf


@dataclass(frozen=True)
class Function:
    name: str
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class KernelInfo:
    path: str
    sha256: str
    functions: tuple[Function, ...]  # sorted by start address

    @property
    def name(self) -> str:
        return Path(self.path).stem

    @cached_property
    def _starts(self) -> list[int]:
        return [f.start for f in self.functions]

    def function_at(self, address: int) -> Function | None:
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        f = self.functions[i]
        # A zero-size symbol (common for assembly labels) covers up to the next symbol.
        end = f.end if f.size else (self.functions[i + 1].start if i + 1 < len(self.functions) else f.start)
        return f if f.start <= address < max(end, f.start + 1) else None

    def describe(self, address: int) -> str:
        """`symbol+0xoff`, or the bare address when no function covers it."""
        f = self.function_at(address)
        if f is None:
            return f"{address:#x}"
        off = address - f.start
        return f"{f.name}+{off:#x}" if off else f.name

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256,
                "functions": [vars(f) for f in self.functions]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KernelInfo:
        return cls(data["path"], data["sha256"], _sorted(Function(**f) for f in data["functions"]))


def _sorted(functions: Iterable[Function]) -> tuple[Function, ...]:
    return tuple(sorted(functions, key=lambda f: (f.start, f.name)))


def load_kernel(path: str | Path) -> KernelInfo:
    """The file's hash and function symbols, as `bt.elf` read them (an ELF without symbols gives none)."""
    image = elf.load(path)
    functions = (Function(s.name, s.address, s.size) for s in image.symbols if s.is_function)
    return KernelInfo(str(path), image.sha256, _sorted(functions))
