"""Symmetric label noise for classification.

Follows the symmetric-noise protocol used by L2B (Zhou et al.) for ISIC 2019: a
noisy label is drawn uniformly from the *other* classes. Unlike per-sample coin
flips, exactly ``round(rate * N)`` samples, chosen at random, are flipped, so the
realised rate equals the requested one up to rounding.
"""

from __future__ import annotations

import numpy as np

__all__ = ["symmetric_noise"]


def symmetric_noise(labels: np.ndarray, rate: float, n_classes: int, *,
                    rng: np.random.Generator | int | None) -> np.ndarray:
    """Flip ``round(rate * N)`` labels, each to a class drawn uniformly among the others.

    Args:
        labels: Integer class labels, shape (N,), values in ``[0, n_classes)``.
        rate: Fraction of samples to flip, in ``[0, 1]``.
        n_classes: Number of classes, >= 2.
        rng: A :class:`numpy.random.Generator` or a seed for one.

    Returns:
        Noisy labels, shape (N,), same dtype as ``labels``. A flipped sample never
        keeps its label; the others are unchanged.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must lie in [0, 1], got {rate}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got range [{labels.min()}, {labels.max()}]")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    noisy = labels.copy()
    n_flip = int(round(rate * labels.size))
    if n_flip == 0:
        return noisy
    flip = rng.choice(labels.size, size=n_flip, replace=False)
    shift = rng.integers(1, n_classes, size=n_flip)  # 1..K-1: never the same class
    noisy[flip] = ((labels[flip].astype(np.int64) + shift) % n_classes).astype(labels.dtype)
    return noisy
