"""The input fuzzer as a property test (tests/fuzz.py says what must hold and how).

CI runs `CI_CASES` cases of seed 1 (docs/robustness.md has the time it takes).
`pytest tests/test_fuzz.py --fuzz 5000 --fuzz-seed 7` runs more; every finding names its
case, and `python -m tests.fuzz --seed S --case N` replays it alone.
"""

from __future__ import annotations

import pytest

from tests.fuzz import describe, run_cases

CI_CASES = 300
CI_SEED = 1


def test_fuzz(request: pytest.FixtureRequest) -> None:
    cases = request.config.getoption("--fuzz") or CI_CASES
    seed = request.config.getoption("--fuzz-seed") or CI_SEED
    found = run_cases(seed, 0, cases)
    report = [f"case {n} of seed {seed} ({describe(seed, n)}): " + "; ".join(what)
              for n, what in sorted(found.items())]
    assert not found, f"{len(found)} of {cases} cases broke a rule; replay one with " \
                      f"`python -m tests.fuzz --seed {seed} --case N`:\n" + "\n".join(report)
