"""`bt patch`: write a statically patched ELF (PATM)."""

from __future__ import annotations

import argparse
from typing import Any

from bt.cli._notyet import not_built


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "patch", help="write a statically patched ELF (PATM)")
    p.set_defaults(handler=not_built("patch", 5))
