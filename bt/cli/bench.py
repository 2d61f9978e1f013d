"""`bt bench`: benchmarks (scanner, trap cost, patch speedup)."""

from __future__ import annotations

import argparse
from typing import Any

from bt.cli._notyet import not_built


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "bench", help="benchmarks (scanner, trap cost, patch speedup)")
    p.set_defaults(handler=not_built("bench", 3))
