"""The L2B meta step: learned weights for the given label and the pseudo-label.

:func:`meta_weights` works for losses of any shape, ``(B,)`` per sample or
``(B, H, W)`` per pixel, and serves every meta-learning method (``l2rw``, ``l2b``,
``l2b-sum1``). It imports nothing from training, data or the CLI.
"""

from medl2b.meta.step import MetaWeights, meta_weights, normalise_weights

__all__ = ["MetaWeights", "meta_weights", "normalise_weights"]
