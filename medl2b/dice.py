"""The one Dice of medl2b, in NumPy only (so that preparing data does not load torch).

Validation, noise calibration, the audit and the per-case metrics all use it; MONAI's
``compute_dice`` gives the same number (NaN where both masks are empty).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["mask_dice", "mean_foreground_dice"]


def mask_dice(a: Any, b: Any) -> float:
    """Dice of two binary masks of equal shape (any dimension); 1.0 when both are empty.

    The one Dice of medl2b: validation, noise calibration, the audit and the per-case metrics
    all use it (MONAI's ``compute_dice`` gives the same number, NaN where both are empty).
    """
    a = np.asarray(a) > 0
    b = np.asarray(b) > 0
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def mean_foreground_dice(pred: Any, truth: Any, classes: Sequence[int] | int, *, absent: str = "one") -> float:
    """Mean of :func:`mask_dice` over the foreground classes of two label maps.

    Args:
        pred, truth: integer label maps of equal shape.
        classes: the foreground class values, or the number of classes ``C`` (= ``1..C-1``).
        absent: ``"one"``: a class absent from both maps scores 1.0 and counts; ``"skip"``: it
            does not count (1.0 when no class is present at all).
    """
    if absent not in ("one", "skip"):
        raise ValueError(f"absent must be 'one' or 'skip', got {absent!r}")
    pred, truth = np.asarray(pred), np.asarray(truth)
    values = range(1, classes) if isinstance(classes, (int, np.integer)) else classes
    scores = [mask_dice(pred == c, truth == c) for c in values
              if absent == "one" or (pred == c).any() or (truth == c).any()]
    return float(np.mean(scores)) if scores else 1.0
