"""The training methods as one weighted loss over two terms.

Every method trains on ``Σ_i α_i ℓ(f(x_i), y_i) + β_i ℓ(f(x_i), ŷ_i)`` (docs/METHOD.md, eq. 3)
and differs only in where α and β come from, and in what it trains on:

=============  ==================================================  ===============  ====================
method         weights                                             meta step        trains on
=============  ==================================================  ===============  ====================
``ce``         α = 1/N, β = 0                                      no               train
``bootstrap``  α = b/N, β = (1−b)/N (Reed et al., hard; b = 0.8)   no               train
``l2rw``       α from the meta gradient, no β term (Ren et al.)    yes, 1 term      train
``l2b``        α, β from the meta gradient, normalised per batch   yes, 2 terms     train + trusted
               (Σα + Σβ = 1) or per element (config                                 (meta_set clean);
               ``meta_normalise``); its clean meta cases also                       train (meta_set gmm)
               train, trusted: α = 1/N, β = 0, and stay the meta set
``l2b-pure``   ``l2b`` as the paper has it: the clean meta cases   yes, 2 terms     train
               only take the meta step
``l2b-sum1``   α, β from the meta gradient, α_i + β_i = 1          yes, 2 terms     train
``ce+clean``   ``ce`` on the noisy training data plus the clean    no               train + meta
               meta cases as ordinary training data
``meta-only``  ``ce`` on the clean meta cases alone (the paper's   no               meta
               Table 5 "UNet++ meta")
=============  ==================================================  ===============  ====================

N is the number of elements (samples, or pixels for segmentation). During warm-up every method trains
with ``ce``. ``l2b`` trains on its trusted cases because on the hippocampus benchmark that beat the
paper's pure form on 5 of 5 paired seeds (BENCHMARKS.md, issue 37); with ``meta_set: gmm`` there are no
trusted cases (the meta set is picked from the training data itself) and it trains on the train split
alone. ``l2b+clean``, its name before it was the default, is an alias (:data:`ALIASES`), resolved when a
config is made (:class:`medl2b.config.TrainConfig`), so old configs and run folders still load.

``ce+clean`` and ``meta-only`` are the first things anyone with a few clean cases would try; they differ
from ``ce`` only in the training set (``Method.train_on``), so they are no loss on a batch and not in the
public API (:data:`STEP_METHODS`). The validation cases of every method that trains on its clean cases
are then training data too, so the "best" checkpoint it selects is not chosen on held-out data
(config ``val_holdout`` keeps some out).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ALIASES", "META_IMPLS", "META_LOSSES", "META_METHODS", "METHODS", "Method", "NORMALISATIONS",
           "PURE_BEFORE", "STEP_METHODS", "TRAINING_SETS", "canonical_method", "fixed_weights", "floor_weights",
           "get_method", "make_loss_terms", "trust_weights"]

#: what a method can train on (:meth:`Method.training_set`)
TRAINING_SETS: tuple[str, ...] = ("train", "train+trusted", "train+meta", "meta")


@dataclass(frozen=True)
class Method:
    """How a method turns per-element losses into weights."""

    name: str
    uses_meta: bool
    n_terms: int           # 1: given label only; 2: given label and pseudo-label
    normalise: str = "batch"
    train_on: str = "train"  # training set: train (noisy) | train+meta (noisy + clean meta) | meta (clean only)
    #: also trains on its clean meta cases where it has them (``meta_set: clean``), as trusted samples: their
    #: given label at full weight (α = 1/N, β = 0, :func:`trust_weights`); they stay the meta set. Still a loss
    #: on a batch (``train_on`` is ``train``): the trusted samples are a mask over the batch.
    trusted: bool = False

    def training_set(self, meta_set: str = "clean") -> str:
        """What it trains on with config ``meta_set`` (one of :data:`TRAINING_SETS`): ``train`` (the noisy train
        split), ``train+trusted`` (and the clean meta cases, marked trusted), ``train+meta`` (and the clean meta
        cases as ordinary samples) or ``meta`` (the clean meta cases alone). With ``meta_set: gmm`` there are
        no trusted cases: the online meta set is training data already."""
        if self.trusted and meta_set == "clean":
            return "train+trusted"
        return self.train_on


METHODS: dict[str, Method] = {
    "ce": Method("ce", uses_meta=False, n_terms=1),
    "bootstrap": Method("bootstrap", uses_meta=False, n_terms=2),
    "l2rw": Method("l2rw", uses_meta=True, n_terms=1),
    "l2b": Method("l2b", uses_meta=True, n_terms=2, trusted=True),
    "l2b-pure": Method("l2b-pure", uses_meta=True, n_terms=2),
    "l2b-sum1": Method("l2b-sum1", uses_meta=True, n_terms=2, normalise="element"),
    "ce+clean": Method("ce+clean", uses_meta=False, n_terms=1, train_on="train+meta"),
    "meta-only": Method("meta-only", uses_meta=False, n_terms=1, train_on="meta"),
}
#: old method names -> the method they name now; accepted wherever a config is made (and so in saved run folders)
ALIASES: dict[str, str] = {"l2b+clean": "l2b"}  # l2b+clean: l2b on train + trusted, before that was l2b itself
#: the one-line remedy for a run folder of ``l2b`` from before ``l2b`` trained on its trusted cases
PURE_BEFORE = ("a run of l2b started before l2b trained on its trusted cases is the paper's pure form, now called "
               "l2b-pure: write method: l2b-pure into {config} to continue it as it was trained")


#: the methods that take a meta step (derived from the table)
META_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.uses_meta)
#: the methods that are a loss on a batch (the public API's methods): ``ce+clean`` and ``meta-only`` only change the
#: training data; ``l2b``'s trusted cases are samples of the caller's batch, marked by a mask
STEP_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.train_on == "train")
#: the clean objectives a meta step can learn the weights for (``dice``: segmentation only)
META_LOSSES: tuple[str, ...] = ("ce", "dice", "ce+dice")
#: how a two-term meta method normalises its weights
NORMALISATIONS: tuple[str, ...] = ("batch", "element")
#: implementations of the meta gradient (:func:`medl2b.meta.step.meta_weights`)
META_IMPLS: tuple[str, ...] = ("fast", "fast-lowmem", "reference")


def canonical_method(name):
    """The method an old name (:data:`ALIASES`) stands for now; any other value as it is."""
    return ALIASES.get(name, name) if isinstance(name, str) else name


def get_method(name: str, *, normalise: str | None = None) -> Method:
    """The method called ``name``. ``normalise`` (``"batch"`` | ``"element"``) overrides how
    ``l2b`` and ``l2b-pure`` normalise their weights (config key ``meta_normalise``); ``l2b-sum1``
    is always ``"element"`` and ``l2rw`` (one term) always ``"batch"``, so it is ignored for them.
    An alias is not resolved here: a config has resolved it already (:func:`canonical_method`)."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {name!r}")
    if normalise is not None and normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {', '.join(NORMALISATIONS)}, got {normalise!r}")
    method = METHODS[name]
    if name in ("l2b", "l2b-pure") and normalise is not None:
        method = dataclasses.replace(method, normalise=normalise)
    return method


def make_loss_terms(target: torch.Tensor, *, n_terms: int, pseudo: torch.Tensor | None = None,
                    floor: float = 0.0, confidence: torch.Tensor | None = None
                    ) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """Build ``logits -> [ℓ(logits, y), ℓ(logits, ŷ)]`` (per-element cross-entropy).

    Args:
        target: given labels, ``(B,)`` or ``(B, H, W)`` integer classes.
        n_terms: 1 (given label only) or 2 (and the pseudo-label).
        pseudo: precomputed pseudo-labels (e.g. flip-averaged); when ``None`` they are
            the argmax of the detached logits of this very forward.
        floor: the pseudo-label floor (config ``pseudo_floor``): the pseudo-label term of an element
            whose confidence (its largest softmax probability) is below ``floor`` is zero, so it has no
            gradient, no meta evidence and therefore no weight β. 0 = every element (the paper).
        confidence: the confidence of a precomputed ``pseudo`` (same shape); by default the largest
            softmax probability of this very forward.
    """
    if n_terms not in (1, 2):
        raise ValueError(f"n_terms must be 1 or 2, got {n_terms}")
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor must be in [0, 1), got {floor}")
    return _LossTerms(target, n_terms, pseudo, floor, confidence)


class _LossTerms:
    """The callable of :func:`make_loss_terms`. After a call, ``gate`` holds where the pseudo-label term
    counts (bool, the losses' shape), or ``None`` without a floor."""

    def __init__(self, target, n_terms, pseudo, floor, confidence):
        self.target, self.n_terms, self.pseudo, self.floor, self.confidence = target, n_terms, pseudo, floor, confidence
        self.gate: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor) -> list[torch.Tensor]:
        given = F.cross_entropy(logits, self.target, reduction="none")
        if self.n_terms == 1:
            return [given]
        p = logits.detach().argmax(1) if self.pseudo is None else self.pseudo
        second = F.cross_entropy(logits, p, reduction="none")
        if self.floor > 0.0:
            if self.pseudo is None:
                conf = torch.softmax(logits.detach().float(), 1).amax(1)
            elif self.confidence is None:
                raise ValueError("a floor on precomputed pseudo-labels needs their confidence")
            else:
                conf = self.confidence
            self.gate = conf >= self.floor
            second = second * self.gate.to(second.dtype)
        return [given, second]


def floor_weights(weights: list[torch.Tensor], gate: torch.Tensor) -> list[torch.Tensor]:
    """Move the β of elements below the pseudo-label floor (``~gate``) to their α, so β is exactly 0 there and
    every element keeps its total weight. Batch normalisation already gives them β = 0 (their pseudo-label
    term has no meta evidence); per-element normalisation splits an element without positive evidence
    equally, and that half moves to the given label here."""
    closed = ~gate.to(device=weights[0].device, dtype=torch.bool)
    return [weights[0] + weights[1] * closed, weights[1] * ~closed]


def fixed_weights(method: Method, losses: list[torch.Tensor], *, bootstrap_beta: float = 0.8) -> list[torch.Tensor]:
    """The constant weights of ``ce`` (α = 1/N) and ``bootstrap`` (α = b/N, β = (1−b)/N)."""
    n = losses[0].numel()
    first = torch.full_like(losses[0], 1.0 / n).detach()
    if method.name == "bootstrap":
        return [first * bootstrap_beta, first * (1.0 - bootstrap_beta)]
    if method.n_terms == 2:  # a meta method during warm-up: plain CE on the given labels
        return [first, torch.zeros_like(first)]
    return [first]


def trust_weights(weights: list[torch.Tensor], trusted: torch.Tensor, *, mode: str = "batch") -> list[torch.Tensor]:
    """Give the elements of trusted samples (clean cases trained on, ``l2b``) plain CE's weight.

    Args:
        weights: the meta step's weights per term, each of shape ``(B, ...)``.
        trusted: bool ``(B,)``, one flag per sample (a segmentation sample's every pixel).
        mode: the weights' normalisation. ``"element"``: every element already weighs 1/N in all,
            so a trusted one just moves all of it to its given label. ``"batch"``: the others'
            weights are renormalised to sum to their fraction of the batch.

    Returns:
        Weights with α = 1/N and β = 0 on trusted elements (N: elements in the batch).
    """
    mask = trusted.to(device=weights[0].device, dtype=torch.bool).reshape(-1, *([1] * (weights[0].ndim - 1)))
    mask = mask.expand_as(weights[0])
    n = weights[0].numel()
    scale = 1.0
    if mode == "batch":  # the others' weights, renormalised to their share of the batch
        left = float(sum(w.masked_fill(mask, 0.0).sum() for w in weights))
        scale = (1.0 - float(mask.float().mean())) / left if left > 0 else 0.0
    out = []
    for k, w in enumerate(weights):
        fixed = torch.full_like(w, 1.0 / n if k == 0 else 0.0)
        out.append(torch.where(mask, fixed, w * scale))
    return out
