"""`bt scan`: find privileged and sensitive instructions in an ELF kernel (CSAM)."""

from __future__ import annotations

import argparse
from typing import Any

from bt.cli._notyet import not_built


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "scan", help="find privileged and sensitive instructions in an ELF kernel (CSAM)")
    p.set_defaults(handler=not_built("scan", 3))
