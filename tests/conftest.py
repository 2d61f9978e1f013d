"""Options for the test run. `--fuzz N` runs N cases of the input fuzzer (tests/fuzz.py)
instead of the bounded number CI runs; `--fuzz-seed S` picks another seed."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fuzz", "the input fuzzer (tests/test_fuzz.py)")
    group.addoption("--fuzz", type=int, default=None, metavar="N",
                    help="run N fuzz cases instead of the bounded CI number")
    group.addoption("--fuzz-seed", type=int, default=None, metavar="S", help="the fuzzer's seed (default 1)")
