"""`bt compare`: run unpatched and patched and report what patching changed."""

from __future__ import annotations

import argparse
from typing import Any

from bt.cli._notyet import not_built


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "compare", help="run unpatched and patched and report what patching changed")
    p.set_defaults(handler=not_built("compare", 6))
