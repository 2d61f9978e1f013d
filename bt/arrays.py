"""The two NumPy set operations the scanner needs, without `np.unique`.

NumPy 2.x's `np.unique` (and `np.isin`, which calls it on its sorting path, taken for an
empty or short first array) imports `numpy.ma` on its first call: about 15 ms of every
`bt run`'s start-up (issue 14, runtime/README.md "Performance"). These give the same
results for the integer arrays the scanner has.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def unique(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values (`np.unique(values)` for a 1-D integer array)."""
    out = np.sort(values)
    if out.shape[0] < 2:
        return out
    keep = np.empty(out.shape[0], dtype=bool)
    keep[0] = True
    np.not_equal(out[1:], out[:-1], out=keep[1:])
    return out[keep]


def isin(values: np.ndarray, choices: Iterable[int]) -> np.ndarray:
    """Where `values` is one of a few `choices` (`np.isin(values, choices)`); one comparison
    per choice, as NumPy itself does for a short list."""
    mask = np.zeros(values.shape, dtype=bool)
    for choice in choices:
        mask |= values == choice
    return mask
