"""Placeholder for subcommands that are not built yet: say so and exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def not_built(name: str, issue: int) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        print(f"bt {name}: not built yet (see issue {issue})", file=sys.stderr)
        return 2
    return handler
