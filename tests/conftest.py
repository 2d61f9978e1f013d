"""Under CI (`CI` set, as `.ci/run` does) no test may skip: a skip is reported as a failure.

A skip means something the test needs was missing (tests/requires.py lists what) or that
it decided it could not check anything; either way a CI run that skipped has not shown
what the suite claims. Expected failures (`xfail`) are not skips and stay as they are.

`--fuzz N` runs N cases of the input fuzzer (tests/fuzz.py) instead of the bounded number CI
runs; `--fuzz-seed S` picks another seed.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
from requires import CI_ENV, in_ci


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI ({CI_ENV} is set), which fails the run: {reason}"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fuzz", "the input fuzzer (tests/test_fuzz.py)")
    group.addoption("--fuzz", type=int, default=None, metavar="N",
                    help="run N fuzz cases instead of the bounded CI number")
    group.addoption("--fuzz-seed", type=int, default=None, metavar="S", help="the fuzzer's seed (default 1)")
