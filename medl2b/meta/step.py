"""One meta step of L2B (Zhou et al.), in two implementations that give the same weights.

Notation (``docs/METHOD.md``, eqs. 3-9): per-element training losses ``ℓ_k(θ)``
for K terms (k = given label, pseudo-label), each of shape ``S`` (``(B,)`` or
``(B, H, W)``); perturbations ``ε_k`` of the same shapes;
``L(θ; ε) = Σ_k Σ_i ε_k,i ℓ_k,i(θ)``; a virtual SGD step
``θ'(ε) = θ − η ∇_θ L(θ; ε)``; the clean meta loss ``L_meta(θ')``. The weights are
``w = max(−∂L_meta/∂ε |_{ε=0}, 0)``, normalised.

* ``impl="reference"``: the textbook double backward. Builds ``θ'`` with
  ``create_graph=True`` and differentiates the meta loss back to ``ε``.
* ``impl="fast"``: the same numbers without second-order graphs. At ``ε = 0``
  the virtual parameters equal ``θ``, so
  ``∂L_meta/∂ε_k,i = −η ⟨∇_θ L_meta(θ), ∇_θ ℓ_k,i(θ)⟩``. One backward of the meta
  batch gives ``v = ∇_θ L_meta(θ)``; one forward-mode pass of the training batch
  with tangent ``v`` (``torch.autograd.forward_ad``) gives every ⟨v, ∇ℓ_k,i⟩ at
  once, and its primal output is the training forward that the real step
  back-propagates through.
  The heavy layers use the hand-written tangent rules of :mod:`medl2b.meta.jvp`
  (same numbers as PyTorch's generic ones, less time, and no tangent outlives its layer).
  Under autocast (config ``meta_amp``), the forward-mode pass runs in bf16 like the training forward it is,
  with float32 tangents, while ``v`` is computed in float32 (issue 38, ``benchmarks/meta_precision.py``).
* ``impl="fast-lowmem"``: as ``fast``, but the forward-mode pass runs without an
  autograd graph and the real step takes its own plain forward: one forward more, for
  a peak that never holds the training graph and the tangents at once (measured in
  ``BENCHMARKS.md``).

BatchNorm: the meta forward (and the dual forward) run on *cloned* buffers, so
running statistics are not updated three times per step. The training forward
at ``θ`` updates the real statistics exactly once, as a plain step would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad as fwad
from torch.func import functional_call

from medl2b.meta.jvp import lean_tangents
from medl2b.meta.methods import META_IMPLS

__all__ = ["MetaWeights", "meta_weights", "normalise_weights", "smooth_evidence"]

LossTerms = Callable[[torch.Tensor], Sequence[torch.Tensor]]


@dataclass
class MetaWeights:
    """Result of one meta step.

    Attributes:
        weights: one detached tensor per loss term, each the shape of its losses,
            rectified and normalised. All zeros when ``skipped``.
        losses: the per-element training losses at ``θ``, still attached to the
            graph: the real step is ``sum((w * l).sum() for w, l in zip(weights, losses))``.
        meta_grads: the raw ``∂L_meta/∂ε`` per term (detached), for diagnostics.
        meta_loss: the clean meta loss at ``θ`` (equal to its value at ``θ'(0)``).
        skipped: True when no element of the batch helps the meta set (all weights 0):
            the caller must not update the parameters.
        meta_grad: fast implementations: ``v = ∇_θ L_meta`` that weighed this batch (detached),
            to pass back as ``meta_grad`` for the next steps (``meta_every``); ``None`` otherwise.
        fresh: False when ``v`` was passed in (reused) rather than computed; ``meta_loss`` is
            then ``None``.
    """

    weights: list[torch.Tensor]
    losses: list[torch.Tensor]
    meta_grads: list[torch.Tensor]
    meta_loss: float | None
    skipped: bool
    meta_grad: list[torch.Tensor] | None = None
    fresh: bool = True


def smooth_evidence(neg_grads: Sequence[torch.Tensor], size: int) -> list[torch.Tensor]:
    """Average each term's meta evidence ``−∂L_meta/∂ε`` over a ``size``-wide box of neighbouring
    pixels (voxels) of the same image, before it is rectified and normalised.

    One pixel's evidence is a single dot product ⟨v, ∇ℓ_i⟩ with a noisy meta gradient ``v``; label
    errors come in connected regions whose pixels carry the same kind of evidence, so pooling it
    over a neighbourhood averages the noise. Shapes ``(B, H, W)`` or ``(B, D, H, W)``; ``size`` odd;
    borders average over the pixels inside the image (``count_include_pad=False``).
    """
    if size <= 1:
        return list(neg_grads)
    if size % 2 == 0:
        raise ValueError(f"smoothing size must be odd, got {size}")
    out = []
    for g in neg_grads:
        if g.ndim not in (3, 4):
            raise ValueError(f"smoothing needs per-pixel evidence (B, H, W) or (B, D, H, W), got shape {tuple(g.shape)}")
        pool = F.avg_pool2d if g.ndim == 3 else F.avg_pool3d
        out.append(pool(g[:, None].float(), size, stride=1, padding=size // 2, count_include_pad=False)[:, 0].to(g.dtype))
    return out


def normalise_weights(neg_grads: Sequence[torch.Tensor], *, mode: str = "batch",
                      smooth: int = 1) -> tuple[list[torch.Tensor], bool]:
    """Rectify and normalise meta-gradients into weights.

    Args:
        neg_grads: ``−∂L_meta/∂ε`` per term, tensors of equal shape ``S``.
        mode: ``"batch"``: ``w = max(−g, 0) / Σ_all max(−g, 0)``, summing over every
            entry of every term (L2B, L2RW). ``"element"``: per element the terms sum to
            one, ``α_i + β_i = 1`` (the ``l2b-sum1`` ablation); an element whose terms are
            all ≤ 0 gets an equal split; the result is divided by the number of elements so
            the batch total is 1, like a mean.
        smooth: segmentation: first average the evidence over a ``smooth``-wide neighbourhood
            (:func:`smooth_evidence`; config ``meta_smooth``); 1 = per pixel, as is.

    Returns:
        The weights (detached) and whether the batch was skipped (batch mode, total 0).
    """
    if mode not in ("batch", "element"):
        raise ValueError(f"mode must be 'batch' or 'element', got {mode!r}")
    rect = [g.detach().clamp_min(0) for g in smooth_evidence([g.detach() for g in neg_grads], smooth)]
    if mode == "batch":
        total = sum(r.sum() for r in rect)
        if not torch.isfinite(total) or float(total) <= 0.0:
            return [torch.zeros_like(r) for r in rect], True
        return [r / total for r in rect], False
    if len(rect) < 2:
        raise ValueError("mode 'element' needs at least two loss terms")
    stacked = torch.stack(rect)                      # (K, *S)
    per_elem = stacked.sum(0, keepdim=True)
    k = stacked.shape[0]
    share = torch.where(per_elem > 0, stacked / per_elem.clamp_min(torch.finfo(stacked.dtype).tiny),
                        torch.full_like(stacked, 1.0 / k))
    n = share[0].numel()
    return [s / n for s in share], False


def _selected_params(model: nn.Module, names: Sequence[str] | None) -> dict[str, torch.Tensor]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if names is None:
        return params
    unknown = set(names) - set(params)
    if unknown:
        raise ValueError(f"param_names not trainable parameters of the model: {sorted(unknown)[:3]}")
    return {n: params[n] for n in names}


def _cloned_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers()}


def meta_weights(
    model: nn.Module,
    inputs: torch.Tensor,
    loss_terms: LossTerms,
    meta_inputs: torch.Tensor,
    meta_loss: Callable[[torch.Tensor], torch.Tensor],
    *,
    lr: float,
    normalise: str = "batch",
    impl: str = "fast",
    param_names: Sequence[str] | None = None,
    reduce_meta_grad: Callable[[list[torch.Tensor]], None] | None = None,
    lean: bool = True,
    meta_grad: Sequence[torch.Tensor] | None = None,
    smooth: int = 1,
) -> MetaWeights:
    """Compute L2B/L2RW weights for one training batch.

    Args:
        model: the network, in train mode; returns logits ``(B, C, ...)``.
        inputs: the training batch ``(B, ...)``.
        loss_terms: maps the training logits to K per-element loss tensors of one
            shape ``S`` (K = 1 for L2RW, 2 for L2B). Pseudo-labels are computed inside
            from detached logits, so they carry no gradient.
        meta_inputs: the clean meta batch.
        meta_loss: maps the meta logits to the scalar clean loss (a mean).
        lr: the virtual step size η (the current learning rate).
        normalise: ``"batch"`` or ``"element"``, see :func:`normalise_weights`.
        impl: ``"fast"`` (forward-mode, default), ``"fast-lowmem"`` (forward-mode, no shared
            forward) or ``"reference"`` (double backward).
        param_names: restrict the virtual step to these parameters (``--meta-scope last``);
            ``None`` = every trainable parameter.
        reduce_meta_grad: fast implementation only: called in place on ``v = ∇_θ L_meta``
            before the forward-mode pass. Distributed runs average ``v`` over processes
            here, so every process weighs its batch against the meta batches of all.
        lean: fast implementations: use the hand-written tangent rules of :mod:`medl2b.meta.jvp`
            for convolutions, norms and ReLUs (default); ``False`` = PyTorch's generic forward-mode
            rules everywhere (same numbers, slower, more memory; kept for tests and benchmarks).
        meta_grad: fast implementations: a ``v`` from an earlier step (its ``MetaWeights.meta_grad``)
            to weigh this batch with, instead of a new meta forward and backward (the amortised
            step, config ``meta_every``). ``meta_inputs`` and ``meta_loss`` are then unused.
        smooth: segmentation: average each pixel's evidence over a ``smooth``-wide neighbourhood
            before normalising (:func:`smooth_evidence`); 1 = off.
    """
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if impl not in META_IMPLS:
        raise ValueError(f"impl must be one of {', '.join(META_IMPLS)}, got {impl!r}")
    params = _selected_params(model, param_names)
    if impl == "reference":
        if meta_grad is not None:
            raise ValueError("meta_grad (a reused v) needs impl 'fast' or 'fast-lowmem'")
        return _reference(model, params, inputs, loss_terms, meta_inputs, meta_loss, lr, normalise, smooth)
    if meta_grad is not None and len(meta_grad) != len(params):
        raise ValueError(f"meta_grad has {len(meta_grad)} tensors for {len(params)} parameters")
    return _fast(model, params, inputs, loss_terms, meta_inputs, meta_loss, lr, normalise, reduce_meta_grad,
                 share_forward=impl == "fast", lean=lean, v=meta_grad, smooth=smooth)


def _reference(model, params, inputs, loss_terms, meta_inputs, meta_loss, lr, normalise, smooth=1) -> MetaWeights:
    names, tensors = list(params), list(params.values())
    losses = list(loss_terms(model(inputs)))  # real forward at θ: real BN statistics move once
    eps = [torch.zeros_like(l, requires_grad=True) for l in losses]
    weighted = sum((e * l).sum() for e, l in zip(eps, losses))
    grads = torch.autograd.grad(weighted, tensors, create_graph=True, allow_unused=True)
    virtual = {n: p if g is None else p - lr * g for n, p, g in zip(names, tensors, grads)}
    meta_out = functional_call(model, {**_cloned_buffers(model), **virtual}, (meta_inputs,), strict=False)
    m_loss = meta_loss(meta_out)
    g_eps = torch.autograd.grad(m_loss, eps, retain_graph=True, allow_unused=True)
    g_eps = [torch.zeros_like(e) if g is None else g.detach() for e, g in zip(eps, g_eps)]
    weights, skipped = normalise_weights([-g for g in g_eps], mode=normalise, smooth=smooth)
    return MetaWeights(weights, losses, g_eps, float(m_loss.detach()), skipped)


def _fast(model, params, inputs, loss_terms, meta_inputs, meta_loss, lr, normalise, reduce_meta_grad=None,
          share_forward: bool = True, lean: bool = True, v=None, smooth: int = 1) -> MetaWeights:
    names, tensors = list(params), list(params.values())
    fresh = v is None
    m_value = None
    if fresh:
        # v in float32 even under autocast: in bf16, the weight gradient of a convolution before a norm is a sum
        # over every pixel (voxel) that cancels to almost nothing, and its rounding is what remains (UNet++ 3-D:
        # weights' cosine with float64 0.34 from a bf16 v; benchmarks/meta_precision.py, issue 38)
        with torch.autocast(meta_inputs.device.type, enabled=False):
            meta_out = functional_call(model, _cloned_buffers(model), (meta_inputs,), strict=False)
            m_loss = meta_loss(meta_out)
            v = torch.autograd.grad(m_loss, tensors, allow_unused=True)
        m_value = float(m_loss.detach())
        # with a restricted scope (--meta-scope last) the backward stopped at the head: the rest of the
        # meta graph is still alive and would sit beside the training graph
        del meta_out, m_loss
        v = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(tensors, v)]
        if reduce_meta_grad is not None:
            reduce_meta_grad(v)
    else:
        v = [t.to(dtype=p.dtype) for t, p in zip(v, tensors)]
    buffers = _cloned_buffers(model)
    lean_rules = lean_tangents(model) if lean else contextlib.nullcontext()
    with torch.set_grad_enabled(share_forward and torch.is_grad_enabled()), fwad.dual_level(), lean_rules:
        duals = {n: fwad.make_dual(p, t) for n, p, t in zip(names, tensors, v)}
        out = functional_call(model, {**buffers, **duals}, (inputs,), strict=False)
        unpacked = [fwad.unpack_dual(l) for l in loss_terms(out)]
        losses = [u.primal for u in unpacked]
        tangents = [torch.zeros_like(u.primal) if u.tangent is None else u.tangent.detach() for u in unpacked]
        new_buffers = {n: fwad.unpack_dual(b).primal.detach() for n, b in buffers.items()}
        del duals, out, unpacked
    if share_forward:
        with torch.no_grad():  # the dual forward was the training forward: move the real statistics once
            for n, b in model.named_buffers():
                b.copy_(new_buffers[n])
    else:
        losses = list(loss_terms(model(inputs)))  # a plain training forward for the real step
    g_eps = [-lr * t for t in tangents]
    weights, skipped = normalise_weights([-g for g in g_eps], mode=normalise, smooth=smooth)
    return MetaWeights(weights, losses, g_eps, m_value, skipped, meta_grad=v, fresh=fresh)
