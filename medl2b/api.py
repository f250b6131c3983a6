"""The public library API: L2B in your own training loop, and inside MONAI's ``SupervisedTrainer``.

Everything here is re-exported from the top level (``from medl2b import l2b_step``) and is
covered by :data:`medl2b.API_VERSION`; every other module of the package is internal.

Notation as in :mod:`medl2b.meta.step`: a training batch ``x`` with given (possibly wrong)
labels ``y``, a small clean meta batch ``x_meta, y_meta``, per-element losses of shape ``S``
(``(B,)`` for classification, ``(B, H, W)`` for 2-D segmentation), α the weights of the
given labels and β the weights of the model's own pseudo-labels (the argmax of the
detached logits of this very forward). The step to take is
``loss = Σ_i α_i ℓ(f(x_i), y_i) + β_i ℓ(f(x_i), ŷ_i)``; the meta step picks α, β so that
one virtual SGD step of that loss lowers the clean meta loss most.

* :func:`l2b_step`: one call per training batch, returns an :class:`L2BStep` with the scalar
  ``loss`` to back-propagate and the weights ``alpha``, ``beta``.
* :class:`L2B`: the same, with the options held once (``L2B(method="l2b").step(model, ...)``).
  ``trusted`` marks samples of the batch whose given label is known right (clean cases trained on, as
  ``medl2b train --method l2b`` does with its trusted cases): they keep plain CE's weight.
  ``L2B()`` is the paper's step (weights normalised over the batch, CE meta loss);
  ``L2B.for_segmentation()`` and ``L2B.for_classification()`` are the options ``medl2b train``
  ships for each task (read from the same task YAML), which is what BENCHMARKS.md measures.
* :func:`monai_iteration`: an ``iteration_update`` for ``monai.engines.SupervisedTrainer``
  that draws one meta batch per iteration from an iterable you give and takes the L2B step.

This module is a thin layer over :func:`medl2b.meta.losses.weighted_losses` (the one code
path of the ``medl2b train`` command): the weights are the same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from medl2b.config import load_config
from medl2b.meta.losses import weighted_losses
from medl2b.meta.methods import META_IMPLS, META_LOSSES, NORMALISATIONS, STEP_METHODS, get_method
from medl2b.models import head_parameter_names

__all__ = ["L2B", "L2BStep", "l2b_step", "monai_iteration"]

API_METHODS = STEP_METHODS  # the methods that are a loss on a batch (ce+clean / meta-only change the data)
#: the methods that take a ``trusted`` mask (the rest never train on trusted samples)
TRUSTED_METHODS = tuple(name for name in API_METHODS if get_method(name).trusted)


@dataclass
class L2BStep:
    """Result of one training step.

    Attributes:
        loss: scalar tensor ``Σ_i α_i ℓ_i + β_i ℓ̂_i``, attached to the graph: call
            ``loss.backward()``, then ``optimizer.step()`` unless ``skipped``.
        alpha: weights of the given labels, detached, shape ``S`` (``(B,)`` or ``(B, H, W)``).
        beta: weights of the pseudo-labels, detached, shape ``S``; all zeros for the
            one-term steps (``ce``, ``l2rw``, and every method while ``warm``).
        losses: the per-element cross-entropies, attached, shape ``S`` each: ``[given]`` for
            one-term steps, ``[given, pseudo]`` for two-term steps.
        meta_loss: the clean meta loss at the current parameters (a float), or ``None`` when
            the step had no meta step (``ce``, ``bootstrap``, warm-up).
        skipped: True when no element of the batch helped the meta set: all weights are 0 and
            ``loss`` is 0; do not call ``optimizer.step()`` (momentum and weight decay would
            still move the parameters).
    """

    loss: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    losses: list[torch.Tensor]
    meta_loss: float | None
    skipped: bool

    def detached(self) -> L2BStep:
        """A copy holding no autograd graph (for logging and engine state)."""
        return dataclasses.replace(self, loss=self.loss.detach(), losses=[l.detach() for l in self.losses])


@dataclass(frozen=True)
class L2B:
    """The options of the L2B step, held once; :meth:`step` (or calling the object) takes one step.

    Args:
        method: ``"l2b"`` (α, β from the meta step, Σα + Σβ = 1 per batch; default; the samples a
            ``trusted`` mask marks keep α = 1/N, β = 0), ``"l2b-pure"`` (the same step, the paper's: it takes
            no ``trusted`` mask, its clean samples only take the meta step), ``"l2b-sum1"``
            (α_i + β_i = 1 per element), ``"l2rw"`` (α only, Ren et al.), ``"ce"`` (α = 1/N) or
            ``"bootstrap"`` (α = b/N, β = (1−b)/N, Reed et al.). The last two take no meta batch:
            baselines through the same code path. Without a ``trusted`` mask ``l2b`` and ``l2b-pure``
            are the same step; which data the batches hold is the caller's choice.
        meta_loss: the clean objective the weights are learned for: ``"ce"`` (mean cross-entropy,
            the paper's), ``"dice"`` (soft foreground Dice over the meta batch; segmentation only)
            or ``"ce+dice"``. Small structures favour ``"dice"``: a pixel-mean CE is dominated by
            background.
        impl: ``"fast"`` (forward-mode meta gradient, default), ``"fast-lowmem"`` (same, lower
            peak memory, one forward more) or ``"reference"`` (double backward). All give the
            same weights to float precision.
        scope: parameters of the virtual step: ``"all"`` (every trainable parameter, exact L2B),
            ``"last"`` (the head only, cheaper and approximate; known for medl2b's UNet++ and for
            models whose head is ``.fc``) or an explicit sequence of parameter names as in
            ``model.named_parameters()``.
        normalise: ``None`` = the method's own (``"batch"`` for ``l2b``/``l2b-pure``/``l2rw``, ``"element"``
            for ``l2b-sum1``); ``"batch"``: all weights of the batch sum to 1; ``"element"``:
            α_i + β_i = 1 per element, divided by the number of elements. Meta methods only.
        bootstrap_beta: b of ``method="bootstrap"``.
        pseudo_floor: meta methods: the pseudo-label term only where the model's confidence
            (largest softmax probability) is at least this; 0 = everywhere (the paper).
    """

    method: str = "l2b"
    meta_loss: str = "ce"
    impl: str = "fast"
    scope: str | Sequence[str] = "all"
    normalise: str | None = None
    bootstrap_beta: float = 0.8
    pseudo_floor: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in API_METHODS:
            hint = (" (it is plain 'ce' on another training set: pass those samples yourself)"
                    if self.method in ("ce+clean", "meta-only") else "")
            raise ValueError(f"method must be one of {', '.join(API_METHODS)}, got {self.method!r}{hint}")
        if self.meta_loss not in META_LOSSES:
            raise ValueError(f"meta_loss must be one of {', '.join(META_LOSSES)}, got {self.meta_loss!r}")
        if self.impl not in META_IMPLS:
            raise ValueError(f"impl must be one of {', '.join(META_IMPLS)}, got {self.impl!r}")
        if isinstance(self.scope, str):
            if self.scope not in ("all", "last"):
                raise ValueError(f"scope must be 'all', 'last' or a list of parameter names, got {self.scope!r}")
        else:
            object.__setattr__(self, "scope", tuple(self.scope))
            if not self.scope:
                raise ValueError("scope: the list of parameter names is empty")
        if not 0.0 <= self.pseudo_floor < 1.0:
            raise ValueError(f"pseudo_floor must be in [0, 1), got {self.pseudo_floor}")
        if self.normalise is not None:
            if self.normalise not in NORMALISATIONS:
                raise ValueError(f"normalise must be None or one of {', '.join(NORMALISATIONS)}, got {self.normalise!r}")
            if not get_method(self.method).uses_meta:
                raise ValueError(f"normalise applies to the meta methods, not to {self.method!r}")
            if self.normalise == "element" and self.method == "l2rw":
                raise ValueError("normalise 'element' needs two terms (l2b), not l2rw")
        if not 0.0 <= self.bootstrap_beta <= 1.0:
            raise ValueError(f"bootstrap_beta must be in [0, 1], got {self.bootstrap_beta}")

    @classmethod
    def for_task(cls, task: str, **overrides: Any) -> "L2B":
        """The options ``medl2b train --task TASK`` ships with (read from the same task YAML), then
        ``overrides``: ``L2B.for_task("segmentation")`` learns α_i + β_i = 1 per pixel for a
        CE + Dice meta loss, ``L2B.for_task("skin-lesion-cls")`` per-sample weights normalised over
        the batch for a CE meta loss."""
        cfg = load_config(task)
        method = get_method(cfg.method)
        two_term_meta = method.uses_meta and method.n_terms == 2  # only these take a normalisation
        options = {"method": cfg.method if cfg.method in API_METHODS else "l2b", "meta_loss": cfg.meta_loss,
                   "impl": cfg.meta_impl, "scope": cfg.meta_scope, "bootstrap_beta": cfg.bootstrap_beta,
                   "normalise": cfg.meta_normalise if two_term_meta else None}
        return cls(**{**options, **overrides})

    @classmethod
    def for_segmentation(cls, **overrides: Any) -> "L2B":
        """:meth:`for_task` of ``segmentation`` (pixel- or voxel-wise α/β, the CLI's defaults)."""
        return cls.for_task("segmentation", **overrides)

    @classmethod
    def for_classification(cls, **overrides: Any) -> "L2B":
        """:meth:`for_task` of ``skin-lesion-cls`` (per-sample α/β, the CLI's defaults)."""
        return cls.for_task("skin-lesion-cls", **overrides)

    def param_names(self, model: nn.Module) -> list[str] | None:
        """The parameter names of the virtual step for ``model`` (``None`` = all trainable)."""
        if self.scope == "all":
            return None
        if self.scope == "last":
            try:
                return head_parameter_names(model)
            except ValueError as exc:
                raise ValueError(f"scope='last': {exc}; pass the head's parameter names instead, e.g. "
                                 "scope=[n for n, _ in model.named_parameters() if n.startswith('head.')]"
                                 ) from None
        return list(self.scope)

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_meta: torch.Tensor | None = None,
             y_meta: torch.Tensor | None = None, *, lr: float, warm: bool = False,
             trusted: torch.Tensor | None = None) -> L2BStep:
        """One training step's weights and weighted loss. Does not touch gradients or the optimiser.

        Args:
            model: the network in train mode, ``(B, C_in, ...) -> logits (B, K, ...)``. Its BatchNorm
                running statistics move once, as in a plain training forward.
            x: training batch, ``(B, C_in)`` + spatial dims (or any input ``model`` takes).
            y: given labels, integer class indices ``(B,)`` or ``(B, H, W)``; a channel axis of size 1
                (MONAI's ``(B, 1, H, W)``) is dropped, float labels are rounded to ``long``.
            x_meta, y_meta: a clean meta batch in the same layouts (any batch size); required for
                ``l2rw``, ``l2b``, ``l2b-pure``, ``l2b-sum1`` unless ``warm``, ignored otherwise.
            lr: the virtual step size η: the optimiser's current learning rate.
            warm: warm-up: plain CE on the given labels for every method, no meta step.
            trusted: ``l2b`` only (since API 1.2): bool ``(B,)``, the samples of ``x`` whose given label is
                known right (e.g. your clean meta samples, also trained on). After the meta step their every
                element gets α = 1/N, β = 0 (N: elements in the batch) and the others are rescaled to the rest
                of the batch's share (per element: keep their weights); a batch with a trusted sample is never
                skipped. ``None``: no sample is trusted.

        Returns:
            :class:`L2BStep`; ``alpha``, ``beta`` and ``losses[k]`` have the shape of ``y`` (after
            dropping a channel axis).
        """
        method = get_method(self.method)
        if self.normalise is not None:
            method = dataclasses.replace(method, normalise=self.normalise)
        x, y = _plain(x), _class_indices(y, x)
        if x_meta is not None:
            x_meta = _plain(x_meta)
        if y_meta is not None:
            y_meta = _class_indices(y_meta, x_meta)
        if method.uses_meta and not warm and (x_meta is None or y_meta is None):
            raise ValueError(f"method {self.method!r} needs a meta batch: pass x_meta and y_meta (or warm=True)")
        if trusted is not None:
            if not method.trusted:
                raise ValueError(f"trusted: method {self.method!r} never trains on trusted samples; use one of "
                                 f"{', '.join(TRUSTED_METHODS)}")
            trusted = torch.as_tensor(_plain(trusted), device=y.device).bool().reshape(-1)
            if trusted.numel() != y.shape[0]:
                raise ValueError(f"trusted must hold one flag per sample of the batch ({y.shape[0]}), got "
                                 f"{trusted.numel()}")
        weights, losses, meta = weighted_losses(
            model, method, x, y, x_meta, y_meta, lr=lr, warm=warm, bootstrap_beta=self.bootstrap_beta,
            meta_impl=self.impl, param_names=self.param_names(model), meta_loss=self.meta_loss,
            pseudo_floor=self.pseudo_floor, trusted=trusted)
        loss = sum((w * l.float()).sum() for w, l in zip(weights, losses))
        alpha = weights[0]
        beta = weights[1] if len(weights) > 1 else torch.zeros_like(alpha)
        return L2BStep(loss=loss, alpha=alpha, beta=beta, losses=list(losses),
                       meta_loss=None if meta is None else meta.meta_loss,
                       skipped=bool(meta is not None and meta.skipped))

    __call__ = step


def l2b_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_meta: torch.Tensor | None = None,
             y_meta: torch.Tensor | None = None, *, lr: float, method: str = "l2b", meta_loss: str = "ce",
             impl: str = "fast", scope: str | Sequence[str] = "all", normalise: str | None = None,
             warm: bool = False, trusted: torch.Tensor | None = None) -> L2BStep:
    """The α/β weights and the weighted loss of one training batch: ``L2B(...).step(...)`` in one call.

    Typical loop::

        out = l2b_step(model, x, y, x_meta, y_meta, lr=optimizer.param_groups[0]["lr"])
        optimizer.zero_grad()
        if not out.skipped:
            out.loss.backward()
            optimizer.step()

    Arguments as in :class:`L2B` (options) and :meth:`L2B.step` (tensors, ``lr``, ``warm``, ``trusted``).
    """
    return L2B(method=method, meta_loss=meta_loss, impl=impl, scope=scope, normalise=normalise).step(
        model, x, y, x_meta, y_meta, lr=lr, warm=warm, trusted=trusted)


def monai_iteration(meta_data: Iterable, l2b: L2B | None = None, *, warmup_epochs: int = 0,
                    lr: float | None = None) -> Callable[[Any, Any], dict]:
    """An ``iteration_update`` for ``monai.engines.SupervisedTrainer`` that trains with L2B.

    ::

        trainer = SupervisedTrainer(device=device, max_epochs=20, train_data_loader=noisy_loader,
                                    network=net, optimizer=opt, loss_function=torch.nn.CrossEntropyLoss(),
                                    iteration_update=monai_iteration(clean_loader, L2B(meta_loss="dice")))
        trainer.run()

    Each iteration parses the training batch and one batch of ``meta_data`` with the trainer's own
    ``prepare_batch`` (so dicts with ``"image"``/``"label"`` keys, MONAI's default, or whatever your
    ``prepare_batch`` reads), takes :meth:`L2B.step` on ``engine.network`` and, unless the step was
    skipped, back-propagates and calls ``engine.optimizer.step()``. The trainer's ``loss_function``
    and ``inferer`` are not used.

    Args:
        meta_data: the clean meta batches, e.g. a ``DataLoader`` (shuffled or not); drawn one per
            iteration and started again when exhausted (a one-shot iterator raises then).
        l2b: the options (default ``L2B()``: method ``l2b``, CE meta objective, exact scope).
        warmup_epochs: the first ``warmup_epochs`` epochs are plain CE (no meta batch is drawn).
        lr: the virtual step size; ``None`` = ``engine.optimizer.param_groups[0]["lr"]`` at each
            iteration (follows LR schedulers).

    Returns:
        ``update(engine, batchdata) -> dict``. The dict (``engine.state.output``) holds ``"image"``,
        ``"label"``, ``"loss"`` (detached scalar), ``"alpha"``, ``"beta"``; there is no ``"pred"``
        (the forward runs inside the meta step), so attach metrics needing predictions to an
        evaluator. With the trainer's ``decollate=True`` (MONAI's default) the dict is split into a list of
        per-sample dicts after the iteration, as for the stock trainer. ``engine.state.l2b`` holds the
        iteration's :class:`L2BStep` without its graph: read the weights there.
        Raises ``ValueError`` for ``amp=True`` or ``accumulation_steps > 1``, which it does not support.
    """
    options = L2B() if l2b is None else l2b
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    meta_iter: list = [None]

    def next_meta():
        if meta_iter[0] is not None:
            try:
                return next(meta_iter[0])
            except StopIteration:
                pass
        meta_iter[0] = iter(meta_data)
        try:
            return next(meta_iter[0])
        except StopIteration:
            raise ValueError("meta_data gave no batch (empty, or a one-shot iterator that is used up)") from None

    def update(engine, batchdata) -> dict:

        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if getattr(engine, "amp", False):
            raise ValueError("monai_iteration does not support amp=True")
        if getattr(engine, "accumulation_steps", 1) > 1:
            raise ValueError("monai_iteration does not support accumulation_steps > 1")
        x, y = _inputs_targets(engine, batchdata)
        warm = engine.state.epoch <= warmup_epochs
        xm = ym = None
        if get_method(options.method).uses_meta and not warm:
            xm, ym = _inputs_targets(engine, next_meta())
        engine.state.output = {Keys.IMAGE: x, Keys.LABEL: y}
        engine.network.train()
        step_lr = engine.optimizer.param_groups[0]["lr"] if lr is None else lr
        out = options.step(engine.network, x, y, xm, ym, lr=step_lr, warm=warm)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.optimizer.zero_grad(set_to_none=getattr(engine, "optim_set_to_none", False))
        if not out.skipped:
            out.loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.state.l2b = out.detached()
        engine.state.output.update({Keys.LOSS: out.loss.detach(), "alpha": out.alpha, "beta": out.beta})
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    return update


def _inputs_targets(engine, batchdata) -> tuple[torch.Tensor, torch.Tensor]:
    batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
    return batch[0], batch[1]


def _plain(x: torch.Tensor) -> torch.Tensor:
    """A plain tensor (MONAI's MetaTensor and other subclasses are unwrapped, sharing storage)."""
    return x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) and type(x) is not torch.Tensor else x


def _class_indices(y: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
    """Labels as ``long`` class indices, without MONAI's channel axis of size 1."""
    y = _plain(y)
    if x is not None and y.ndim >= 2 and y.shape[1] == 1 and y.ndim in (x.ndim, 2):  # (B, 1, ...) or (B, 1)
        y = y[:, 0]
    if y.is_floating_point():
        y = y.round()
    return y.long()
