"""The learned α and β maps of one meta step, for :func:`medl2b.evaluate.figures.plot_weight_maps`: on 2-D
training slices (:func:`slice_weight_maps`) or as three views of a training volume (:func:`volume_weight_maps`).

Each takes the training samples whose given label disagrees most with the clean one (without truth: the most
given foreground), or the training samples ``indices`` (an audit's suspects), and one meta step of a copy of
the model against a batch of clean meta samples with foreground.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from medl2b.data.datasets import SliceSet
from medl2b.meta import get_method, weighted_losses

__all__ = ["foreground", "in_memory", "slice_weight_maps", "upright", "volume_weight_maps"]


def foreground(slices: SliceSet, *, clean: bool) -> np.ndarray:
    """Per sample (read one at a time): does its clean (``clean``) or given label hold foreground?"""
    return np.array([bool(slices.sample(i)[2 if clean else 1].any()) for i in range(len(slices))], dtype=bool)


def in_memory(slices: SliceSet, rows) -> SliceSet:
    """The samples ``rows`` of a (lazy) set as a small in-memory set, padded to one shape."""
    rows = [int(r) for r in rows]
    return SliceSet(*slices.batch(rows), case=[slices.case[r] for r in rows],
                    slice_index=[slices.slice_index[r] for r in rows])


def upright(a) -> np.ndarray:
    """Slices are (x, y); show them as the volume overlays do, rows = y: ``(n, X, Y)`` -> ``(n, Y, X)``."""
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 1))


def _inputs(task, n: int, indices, view):
    """Training samples (the ``n`` most wrongly labelled, or ``indices``) and clean meta samples with
    foreground, each through ``view``, for one meta step; None without meta cases."""
    splits = task.manifest["splits"]
    if not splits["meta"]:
        return None
    train = task.load(splits["train"], label="noisy")
    meta = task.load(task.clean_cases()[0], label="clean")
    if indices is None:  # read one sample at a time: the training set may be larger than memory
        # the most wrongly labelled samples; without truth (a user's own labels), the most given foreground
        wrong = np.array([int((s[1] != s[2]).sum() if task.train_truth else (s[1] > 0).sum())
                          for s in map(train.sample, range(len(train)))])
        rows = np.argsort(-wrong, kind="stable")[:n]
    else:
        rows = np.asarray(indices, dtype=np.int64)
    mrows = np.flatnonzero(foreground(meta, clean=True))[: max(n, 4)]
    if len(mrows) == 0:
        mrows = np.arange(min(len(meta), 4))
    train, meta = (view(in_memory(s, r)) for s, r in ((train, rows), (meta, mrows)))
    return train, meta, torch.arange(len(rows)), torch.arange(len(mrows))


def _weights(task, model, device, train, meta, idx, midx):
    """α and β (scaled by the element count, so 0.5 = uniform) and the pseudo-label of one meta step, arrays
    ``(n, *spatial)``."""
    cfg = task.cfg
    method = get_method(cfg.method, normalise=cfg.meta_normalise)
    net = copy.deepcopy(model).train()
    x, y = train.image[idx].to(device), train.label[idx].to(device)
    weights, _, _ = weighted_losses(net, method, x, y, meta.image[midx].to(device), meta.clean[midx].to(device),
                                    meta_loss=cfg.meta_loss, lr=cfg.lr, meta_smooth=cfg.meta_smooth,
                                    pseudo_floor=cfg.pseudo_floor)
    count = weights[0].numel()
    alpha = (weights[0] * count).cpu().numpy()
    beta = (weights[1] * count).cpu().numpy() if len(weights) > 1 else np.zeros_like(alpha)
    with torch.no_grad():
        pseudo = net.eval()(x).argmax(1).cpu().numpy()
    return alpha, beta, pseudo


def slice_weight_maps(task, model, device, *, n: int = 4, indices=None) -> dict | None:
    """α and β maps on ``n`` training slices (or ``indices``): arrays ``(n, H, W)``. Slices larger than the
    training window are shown as their central crop of it, so that the step costs what a training step does."""

    def central(slices: SliceSet) -> SliceSet:
        if task.window is None:
            return slices
        (h, w), (wx, wy) = slices.image.shape[-2:], task.window
        x0, y0 = max(0, (h - wx) // 2), max(0, (w - wy) // 2)
        crop = (..., slice(x0, x0 + wx), slice(y0, y0 + wy))
        return SliceSet(slices.image[crop].contiguous(), slices.label[crop].contiguous(),
                        slices.clean[crop].contiguous(), list(slices.case), list(slices.slice_index))

    inputs = _inputs(task, n, indices, central)
    if inputs is None:
        return None
    train, meta, idx, midx = inputs
    alpha, beta, pseudo = _weights(task, model, device, train, meta, idx, midx)
    return {"images": upright(train.image[idx, 0]), "noisy": upright(train.label[idx]),
            "clean": upright(train.clean[idx]), "pseudo": upright(pseudo), "alpha": upright(alpha),
            "beta": upright(beta), "titles": [f"{train.case[i]} z={train.slice_index[i]}" for i in idx.tolist()]}


def volume_weight_maps(task, model, device, *, n: int = 4, indices=None) -> dict | None:
    """The training volume with the most wrong voxels (or ``indices[0]``; ``n`` is not used: one volume), as
    its axial, coronal and sagittal slices through the clean structure's centre: arrays ``(3, side, side)``."""
    inputs = _inputs(task, 1, indices, lambda volumes: volumes)
    if inputs is None:
        return None
    train, meta, idx, midx = inputs
    alpha, beta, pseudo = _weights(task, model, device, train, meta, idx, midx)
    clean_vol = train.clean[idx[0]].numpy()
    centre = ([int(round(c.mean())) for c in np.nonzero(clean_vol)] if clean_vol.any()
              else [s // 2 for s in clean_vol.shape])
    side = max(clean_vol.shape)
    views = {k: _three_views(np.asarray(v)[0], centre, side) for k, v in (
        ("images", train.image[idx, 0]), ("noisy", train.label[idx]), ("clean", train.clean[idx]),
        ("pseudo", pseudo), ("alpha", alpha), ("beta", beta))}
    titles = [f"{train.case[int(idx[0])]} {name}" for name in
              (f"axial z={centre[2]}", f"coronal y={centre[1]}", f"sagittal x={centre[0]}")]
    return {**{k: upright(v) for k, v in views.items()}, "titles": titles}


def _three_views(volume: np.ndarray, centre, side: int) -> np.ndarray:
    """Axial (x, y), coronal (x, z) and sagittal (y, z) slices of ``volume`` (X, Y, Z) through ``centre``,
    zero-padded to ``side × side``: ``(3, side, side)``."""
    cx, cy, cz = centre
    out = np.zeros((3, side, side), dtype=volume.dtype)
    for i, view in enumerate((volume[:, :, cz], volume[:, cy, :], volume[cx, :, :])):
        out[i, :view.shape[0], :view.shape[1]] = view
    return out
