"""The evidence probe of a finished L2B run: what its meta step knows about each training pixel, and what the
weights it trains with make of it. Shared by ``hippocampus.py`` (whole 48-64 px slices) and ``annotators.py``
(CHASE_DB1: 512 px RGB images, probed on patches of the run's training window).

    from probe import evidence_probe     # benchmarks/ on sys.path, as the benchmark scripts have it
    evidence_probe("bench_runs/.../l2b_observers_s0", patch=96, batches=16)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

__all__ = ["evidence_probe", "crop", "unit_ranks"]


def unit_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks of ``values`` (ties averaged, :func:`scipy.stats.rankdata`) scaled to [0, 1]: 0 the smallest, 1 the
    largest; all 0 for fewer than two values."""
    from scipy.stats import rankdata

    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return np.zeros(len(values))
    return (rankdata(values) - 1.0) / (len(values) - 1.0)


def crop(sample, size: tuple[int, int], rng: np.random.Generator, centre: Sequence[int] | None = None):
    """A ``size`` crop ``(image (C, *size), label size, clean size)`` of one sample ``(image, label, clean)``
    (:meth:`SliceSet.sample`): at a uniformly random place, or centred on the pixel ``centre`` (moved inside the
    sample where it is near an edge). A sample smaller than ``size`` is first zero-padded at the far end (as the
    training patches are; label 0 = background)."""
    import torch.nn.functional as F

    image, label, clean = sample
    pad_x, pad_y = max(0, size[0] - label.shape[0]), max(0, size[1] - label.shape[1])
    if pad_x or pad_y:
        image = F.pad(image, (0, pad_y, 0, pad_x))
        label, clean = (F.pad(t, (0, pad_y, 0, pad_x)) for t in (label, clean))
    corner = []
    for axis in (0, 1):
        room = label.shape[axis] - size[axis]
        start = rng.integers(0, room + 1) if centre is None else centre[axis] - size[axis] // 2
        corner.append(int(np.clip(start, 0, room)))
    window = (slice(corner[0], corner[0] + size[0]), slice(corner[1], corner[1] + size[1]))
    return image[(slice(None), *window)], label[window], clean[window]


def evidence_probe(run: str, *, batches: int = 32, seed: int = 0, patch: int | Sequence[int] | None = None,
                   device: str = "cpu") -> dict:
    """How much the meta step knows about each pixel, measured with the run's last network (``checkpoint_latest``).

    On training pixels whose pseudo-label (the last network's argmax, eval mode) differs from the given label,
    each summary gives the AUROC at ranking the wrongly labelled ones (given ≠ clean) first of:

    * ``evidence_auroc``: the meta evidence for the pseudo-label, (−∂L_meta/∂ε_β) − (−∂L_meta/∂ε_α), of a meta
      step without a floor (every pixel's pseudo-label term counts);
    * ``confidence_auroc``: the network's own confidence margin p(pseudo) − p(given);
    * ``beta_auroc``: the β share β/(α+β) the run's own method gives each pixel: its ``method``,
      ``meta_normalise``, ``meta_smooth``, ``pseudo_floor``, ``pseudo_label_tta`` and ``meta_scope``, i.e. the
      weights the trainer uses (under a floor, β = 0 where the confidence is below it; ties rank alike, so
      β = 0 everywhere gives 0.5). ``None`` for a run whose method has no pseudo-label term;
    * ``combined_auroc``: the mean of the evidence's and the margin's ranks (:func:`unit_ranks`), one way of
      "evidence weighted by confidence";

    with ``n`` (pixels), ``wrong_share`` (of them, wrongly labelled) and how often the meta step picks the
    pseudo-label (its evidence is positive) on wrong and on right given labels; ``all`` and per (given, pseudo)
    class pair. Also ``pixels`` (every training pixel probed) and ``patch``.

    ``batches`` random training batches of the run's ``batch_size`` (numpy ``default_rng(seed)``), each with a
    random meta batch of ``meta_batch_size`` clean meta samples that hold foreground; the virtual step at the
    run's base ``lr`` and ``meta_loss``. ``patch`` (default None: whole slices, padded to one shape): when the
    training slices are larger than it, each training sample is a random ``patch × patch`` crop and each meta
    sample a crop centred on a random foreground pixel of its clean label, so that a step costs what a training
    step does (CHASE_DB1: 512 px images, 96 px windows).
    """
    import torch

    from medl2b.data.datasets import load_slices
    from medl2b.evaluate.ranking import ranking_quality
    from medl2b.evaluate.run import load_run
    from medl2b.meta.losses import weighted_losses
    from medl2b.meta.methods import get_method
    from medl2b.models import head_parameter_names
    from medl2b.tasks.weightmaps import foreground

    model, cfg = load_run(run, checkpoint="latest", device=device)
    train = load_slices(cfg.data, "train", label="noisy")
    meta = load_slices(cfg.data, "meta", label="clean")
    fg = np.flatnonzero(foreground(meta, clean=True))
    if not len(fg):
        raise ValueError(f"{run}: no clean meta slice holds foreground; the probe's meta batches need it")
    size = None
    if patch is not None:
        size = (int(patch), int(patch)) if np.isscalar(patch) else tuple(int(p) for p in patch)
        extent = np.max([train.extent(i) for i in range(len(train))], axis=0)
        if all(e <= s for e, s in zip(extent, size)):
            size = None  # the slices fit the patch: whole slices, as training has them
    rng = np.random.default_rng(seed)
    # the evidence: a meta step on every pixel (no floor). The raw meta gradients do not depend on the
    # normalisation or smoothing, so the run's own method, normalise and smooth give the same evidence and,
    # where the run has no floor, TTA pseudo-labels or head-only scope, exactly the weights it trains with.
    trainer = get_method(cfg.method, normalise=cfg.meta_normalise)
    trained = trainer.uses_meta and trainer.n_terms == 2
    probe_method = trainer if trained else get_method("l2b", normalise="element")
    head = head_parameter_names(model) if cfg.meta_scope == "last" else None
    second = trained and (cfg.pseudo_floor > 0 or cfg.pseudo_label_tta or head is not None)
    parts = {"evidence": [], "confidence": [], "wrong": [], "pair": [], "share": []}
    pixels = 0
    for _ in range(batches):
        idx = rng.choice(len(train), cfg.batch_size, replace=len(train) < cfg.batch_size)
        midx = rng.choice(fg, cfg.meta_batch_size, replace=len(fg) < cfg.meta_batch_size)
        if size is None:
            x, y, clean = train.image[idx], train.label[idx], train.clean[idx]
            xm, ym = meta.image[midx], meta.clean[midx]
        else:
            x, y, clean = (torch.stack(t) for t in zip(*(crop(train.sample(i), size, rng) for i in idx)))
            metas = []
            for i in midx:
                sample = meta.sample(i)
                on = np.argwhere(sample[2].numpy() > 0)
                metas.append(crop(sample, size, rng, centre=on[rng.integers(len(on))]))
            xm, _, ym = (torch.stack(t) for t in zip(*metas))
        x, y, xm, ym = (t.to(device) for t in (x, y, xm, ym))
        out = weighted_losses(copy.deepcopy(model).train(), probe_method, x, y, xm, ym, lr=cfg.lr,
                              meta_loss=cfg.meta_loss, meta_smooth=cfg.meta_smooth)
        weights = out[0]
        if second:  # the trainer's own step: same batch and meta gradient v, its floor / TTA / scope
            weights = weighted_losses(copy.deepcopy(model).train(), trainer, x, y, xm, ym, lr=cfg.lr,
                                      meta_loss=cfg.meta_loss, meta_smooth=cfg.meta_smooth,
                                      pseudo_floor=cfg.pseudo_floor,
                                      pseudo_tta=cfg.pseudo_label_tta, param_names=head,
                                      meta_grad=out[2].meta_grad if head is None else None)[0]
        with torch.no_grad():
            prob = model.eval()(x).softmax(1)
        pseudo = prob.argmax(1)
        differ = pseudo != y
        margin = prob.gather(1, pseudo[:, None])[:, 0] - prob.gather(1, y[:, None])[:, 0]
        total = weights[0] + weights[1]
        share = weights[1] / total.clamp_min(torch.finfo(total.dtype).tiny)
        grads = out[2].meta_grads
        parts["evidence"].append((grads[0] - grads[1])[differ].cpu().numpy())
        parts["confidence"].append(margin[differ].cpu().numpy())
        parts["share"].append(share[differ].cpu().numpy())
        parts["wrong"].append((y != clean.to(device))[differ].cpu().numpy())
        parts["pair"].append(np.stack([y[differ].cpu().numpy(), pseudo[differ].cpu().numpy()], 1))
        pixels += y.numel()
    ev, conf, share, wrong, pair = (np.concatenate(parts[k])
                                    for k in ("evidence", "confidence", "share", "wrong", "pair"))

    def summary(m):
        return {"n": int(m.sum()), "wrong_share": float(wrong[m].mean()) if m.any() else None,
                "evidence_auroc": ranking_quality(ev[m], wrong[m])["auroc"],
                "confidence_auroc": ranking_quality(conf[m], wrong[m])["auroc"],
                "beta_auroc": ranking_quality(share[m], wrong[m])["auroc"] if trained else None,
                "combined_auroc": ranking_quality((unit_ranks(ev[m]) + unit_ranks(conf[m])) / 2, wrong[m])["auroc"],
                "picks_pseudo_on_wrong": float((ev[m & wrong] > 0).mean()) if (m & wrong).any() else None,
                "picks_pseudo_on_right": float((ev[m & ~wrong] > 0).mean()) if (m & ~wrong).any() else None}
    pairs = {f"{g}->{p}": summary((pair[:, 0] == g) & (pair[:, 1] == p)) for g, p in sorted({tuple(r) for r in pair})}
    return {"all": summary(np.ones(len(ev), dtype=bool)), "pairs": pairs, "pixels": pixels,
            "patch": None if size is None else list(size)}
