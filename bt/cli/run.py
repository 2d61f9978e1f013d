"""`bt run`: run a kernel in ring 1 on the VMM."""

from __future__ import annotations

import argparse
from typing import Any

from bt.cli._notyet import not_built


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "run", help="run a kernel in ring 1 on the VMM")
    p.set_defaults(handler=not_built("run", 4))
