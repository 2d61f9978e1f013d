"""How numbers read in the text and HTML reports (JSON keeps raw values)."""

from __future__ import annotations

from collections.abc import Mapping

from runtime.report.record import BASELINE

#: Shown where a run did not measure a figure; never a made-up number.
NOT_MEASURED = "not measured"


def count(n: int) -> str:
    return f"{n:,}"


def reduction(r: float | None) -> str:
    """Share of exits removed: "99.9%", "-12.0%" when a patched run exits more, "-" with no baseline."""
    if r is None:
        return "-"
    pct = r * 100
    # Never round a partial reduction up to 100%, nor a small change down to 0%:
    # "100%" must mean every exit is gone, "0.0%" that the count did not change.
    if 0 < r < 1 and pct > 99.9:
        return ">99.9%"
    if 0 < abs(pct) < 0.1:
        return "<0.1%" if pct > 0 else "-<0.1%"
    return f"{pct:.1f}%"


def change(counts: Mapping[str, int], mode: str) -> str:
    """What `mode` did to a row of exit counts: the share removed ("99.9%"), or, when the
    patched run exits more often than the baseline, the exits it added ("+5,000"): a
    percentage of a small baseline (3 -> 5,003 is "-166666.7%") says nothing useful."""
    before, after = counts[BASELINE], counts[mode]
    if after > before:
        return f"+{after - before:,}"
    return reduction(None if before == 0 else 1.0 - after / before)


def seconds(s: float | None) -> str:
    if s is None:
        return NOT_MEASURED
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def micros(us: float | None) -> str:
    return NOT_MEASURED if us is None else f"{us:.1f} µs"


def factor(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def maybe_count(n: int | None) -> str:
    return NOT_MEASURED if n is None else count(n)


def address(a: int) -> str:
    return f"{a:#010x}"
