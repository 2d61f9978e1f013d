"""The kernel a comparison is about: its identity (path, SHA-256) and its functions.

Function symbols (read by `bt.elf`) turn a guest address into `symbol+offset` for
the site table and give the exit map of the HTML report its regions. Only what the
report needs is kept, so a `KernelInfo` pickles to worker processes and round-trips
through JSON fixtures.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from bt import elf
from bt.symbols import Function, FunctionMap

__all__ = ["Function", "KernelInfo", "load_kernel"]


@dataclass(frozen=True)
class KernelInfo:
    path: str
    sha256: str
    functions: tuple[Function, ...]  # sorted by start address

    @property
    def name(self) -> str:
        return Path(self.path).stem

    @cached_property
    def _map(self) -> FunctionMap:
        return FunctionMap(self.functions)

    def function_at(self, address: int) -> Function | None:
        return self._map.function_at(address)

    def describe(self, address: int) -> str:
        """`symbol+0xoff`, or the bare address when no function covers it: the same name
        `bt run --stats` gives the address (bt/symbols.py)."""
        return self._map.describe(address)

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
