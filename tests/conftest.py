"""Under CI (`CI` set, as `.ci/run` does) no test may skip: a skip is reported as a failure.

A skip means something the test needs was missing (tests/requires.py lists what) or that
it decided it could not check anything; either way a CI run that skipped has not shown
what the suite claims. Expected failures (`xfail`) are not skips and stay as they are.
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
