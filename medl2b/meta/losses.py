"""The weighted losses of one training step, for every method, and the clean meta objective.

:func:`weighted_losses` is the single code path of all methods: it returns the per-element
losses and their weights, from the meta step (``l2rw``, ``l2b``, ``l2b-sum1``) or fixed
(``ce``, ``bootstrap``, and every method during warm-up). :func:`meta_objective` is the clean
loss the weights are learned for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from medl2b.inference import flip_averaged_probs
from medl2b.meta.methods import (META_LOSSES, Method, fixed_weights, floor_weights, get_method, make_loss_terms,
                                 trust_weights)
from medl2b.meta.step import meta_weights

__all__ = ["meta_objective", "weighted_losses"]


def weighted_losses(model, method: Method, x: torch.Tensor, y: torch.Tensor, xm: torch.Tensor | None = None,
                    ym: torch.Tensor | None = None, *, lr: float, warm: bool = False, bootstrap_beta: float = 0.8,
                    meta_impl: str = "fast", param_names: Sequence[str] | None = None, pseudo_tta: bool = False,
                    reduce_meta_grad: Callable[[list[torch.Tensor]], None] | None = None, lean: bool = True,
                    meta_loss: str = "ce", meta_grad: Sequence[torch.Tensor] | None = None,
                    trusted: torch.Tensor | None = None, meta_smooth: int = 1, pseudo_floor: float = 0.0):
    """Weights and per-element losses of one training step, for any method: the one shared code path.

    Returns ``(weights, losses, meta)``: the real step is ``Σ_k (weights[k] * losses[k]).sum()``;
    ``meta`` is the :class:`~medl2b.meta.MetaWeights` of a meta step (``None`` without one).
    During warm-up (``warm=True``) every method is plain CE on the given labels.
    ``reduce_meta_grad`` (distributed runs) averages the meta gradient over processes;
    ``lean=False`` uses PyTorch's generic forward-mode rules (benchmarks compare the two).
    ``meta_loss`` is the clean objective the weights are learned for (:func:`meta_objective`).
    ``meta_grad``: reuse this ``v = ∇_θ L_meta`` of an earlier step instead of a new meta batch
    (the amortised step, config ``meta_every``; ``xm``/``ym`` may then be ``None``).
    ``trusted``: bool ``(B,)``, samples whose given label is known right (``l2b`` trains on its clean
    meta cases): a meta step gives them plain CE's weight (:func:`~medl2b.meta.methods.trust_weights`).
    ``meta_smooth``: segmentation, average each pixel's meta evidence over that neighbourhood first.
    ``pseudo_floor``: meta methods: the pseudo-label term counts only where the network's confidence is at
    least this (:func:`~medl2b.meta.methods.make_loss_terms`); 0 = everywhere. ``bootstrap`` ignores it.
    """
    n_terms = 1 if warm else method.n_terms
    pseudo = confidence = None
    if n_terms == 2 and pseudo_tta:
        confidence, pseudo = flip_averaged_probs(model, x).max(1)
    floor = pseudo_floor if method.uses_meta else 0.0  # bootstrap stays Reed et al.'s, whatever the config
    terms = make_loss_terms(y, n_terms=n_terms, pseudo=pseudo, floor=floor, confidence=confidence)
    if method.uses_meta and not warm:
        if meta_grad is None and (xm is None or ym is None):
            raise ValueError(f"{method.name} needs a meta batch")
        objective = meta_objective(meta_loss, ym) if meta_grad is None else None
        out = meta_weights(model, x, terms, xm, objective, lr=lr,
                           normalise=method.normalise, impl=meta_impl, param_names=param_names,
                           reduce_meta_grad=reduce_meta_grad, lean=lean, meta_grad=meta_grad, smooth=meta_smooth)
        if terms.gate is not None:  # set only for two terms under a floor
            out.weights = floor_weights(out.weights, terms.gate)
        if trusted is not None and bool(trusted.any()):
            out.weights = trust_weights(out.weights, trusted, mode=method.normalise)
            out.skipped = False  # the trusted samples still train
        return out.weights, out.losses, out
    losses = terms(model(x))
    return fixed_weights(get_method("ce") if warm else method, losses, bootstrap_beta=bootstrap_beta), losses, None


def meta_objective(name: str, target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The clean meta loss ``logits -> scalar`` of a meta batch with labels ``target``.

    * ``"ce"``: mean cross-entropy over every element (docs/METHOD.md, eq. 5; the paper's choice).
    * ``"dice"``: segmentation only, soft Dice loss over the foreground classes, pooled over
      the whole meta batch (MONAI ``DiceLoss``, ``include_background=False``, ``batch=True``).
      A pixel-mean CE is dominated by background when the structures are small (the
      hippocampus is ~3 % of a slice), so the weights it learns favour background pixels;
      the Dice objective counts every class equally, whatever its size.
    * ``"ce+dice"``: their sum.
    """
    if name == "ce":
        return lambda logits: F.cross_entropy(logits.float(), target)
    if name not in META_LOSSES:
        raise ValueError(f"meta_loss must be one of {', '.join(META_LOSSES)}, got {name!r}")
    if target.ndim < 2:
        raise ValueError(f"meta_loss {name!r} needs segmentation labels (B, H, W), got shape {tuple(target.shape)}")
    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)

    def loss(logits: torch.Tensor) -> torch.Tensor:
        value = dice(logits.float(), target[:, None])
        return value + F.cross_entropy(logits.float(), target) if name == "ce+dice" else value

    return loss
