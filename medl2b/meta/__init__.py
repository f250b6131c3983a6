"""The L2B step core, shared by every task and method.

* :mod:`medl2b.meta.methods`: the method table (``ce``, ``bootstrap``, ``l2rw``, ``l2b``,
  ``l2b-pure``, ``l2b-sum1``, ``ce+clean``, ``meta-only``) and every list of allowed values derived from it;
* :mod:`medl2b.meta.step`: the meta gradient and the learned weights (:func:`meta_weights`),
  for losses of any shape, ``(B,)`` per sample or ``(B, H, W[, D])`` per pixel or voxel;
* :mod:`medl2b.meta.losses`: the weighted losses of one step for any method
  (:func:`weighted_losses`) and the clean meta objective (:func:`meta_objective`);
* :mod:`medl2b.meta.jvp`: the forward-mode tangent rules of the fast meta gradient.

It imports nothing from training, data or the CLI.
"""

from medl2b.meta.losses import meta_objective, weighted_losses
from medl2b.meta.methods import METHODS, Method, get_method
from medl2b.meta.step import MetaWeights, meta_weights, normalise_weights

__all__ = ["METHODS", "Method", "MetaWeights", "get_method", "meta_objective", "meta_weights", "normalise_weights",
           "weighted_losses"]
