"""What it takes to reproduce a report: versions, platform, the exact options.

Kernel hashes live with each kernel (`KernelInfo.sha256`); this block holds what
is common to all of them.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

#: Distributions whose version changes what a run measures (the CPU model, the
#: decoder, the assembler, the ELF reader) or how the report looks.
DEPENDENCIES = ("unicorn", "capstone", "keystone-engine", "numpy", "rich", "jinja2")


@dataclass(frozen=True)
class Reproducibility:
    ring1: str
    python: str
    platform: str
    dependencies: Mapping[str, str]
    command: tuple[str, ...]  # the command line as typed (argv after `bt`)
    options: Mapping[str, Any] = field(default_factory=dict)  # the run options every run used

    def to_json(self) -> dict[str, Any]:
        return {"ring1": self.ring1, "python": self.python, "platform": self.platform,
                "dependencies": dict(self.dependencies), "command": list(self.command),
                "options": dict(self.options)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reproducibility:
        return cls(data["ring1"], data["python"], data["platform"], dict(data["dependencies"]),
                   tuple(data["command"]), dict(data.get("options", {})))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def collect(command: Sequence[str], options: Mapping[str, Any]) -> Reproducibility:
    return Reproducibility(
        ring1=_version("ring1"),
        python=sys.version.split()[0] + f" ({platform.python_implementation()})",
        platform=platform.platform(),
        dependencies={d: _version(d) for d in DEPENDENCIES},
        command=tuple(command),
        options=dict(options),
    )
