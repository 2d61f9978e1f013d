"""Moved to `runtime/ruletest.py` (installed with ring1, so a rule author's tests import it
without a path hack). This name stays for tests written against the old path."""

from __future__ import annotations

from runtime.ruletest import (
    ARITH,
    CODE,
    DATA,
    STACK_TOP,
    LinearCode,
    Outcome,
    UcMemory,
    asm,
    machine,
    run_native,
    run_patched,
)

__all__ = ["ARITH", "CODE", "DATA", "STACK_TOP", "LinearCode", "Outcome", "UcMemory", "asm", "machine",
           "run_native", "run_patched"]
