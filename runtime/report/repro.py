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
    #: Every patch rule loaded, in the order rules are asked: name, distribution, version and
    #: the classes it gets with every rule enabled. Plugins change what a patched run does.
    rules: tuple[Mapping[str, Any], ...] = ()
    #: What loading the rules warned about (a plugin skipped, a shadowed rule...).
    rule_warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"ring1": self.ring1, "python": self.python, "platform": self.platform,
                "dependencies": dict(self.dependencies), "command": list(self.command),
                "options": dict(self.options), "rules": [dict(r) for r in self.rules],
                "rule_warnings": list(self.rule_warnings)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reproducibility:
        return cls(data["ring1"], data["python"], data["platform"], dict(data["dependencies"]),
                   tuple(data["command"]), dict(data.get("options", {})),
                   tuple(dict(r) for r in data.get("rules", ())), tuple(data.get("rule_warnings", ())))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def rules() -> tuple[tuple[dict[str, Any], ...], tuple[str, ...]]:
    """Every loaded patch rule (patchmgr/registry.py) and the loader's warnings."""
    from patchmgr import registry

    loaded = registry.load()
    gets = loaded.assignment()
    return tuple({"name": i.rule.name, "distribution": i.origin, "version": i.version,
                  "classes": sorted(gets[i.rule.name].gets)} for i in loaded.infos), loaded.warnings


def collect(command: Sequence[str], options: Mapping[str, Any]) -> Reproducibility:
    loaded, warnings = rules()
    return Reproducibility(
        ring1=_version("ring1"),
        python=sys.version.split()[0] + f" ({platform.python_implementation()})",
        platform=platform.platform(),
        dependencies={d: _version(d) for d in DEPENDENCIES},
        command=tuple(command),
        options=dict(options),
        rules=loaded,
        rule_warnings=warnings,
    )
