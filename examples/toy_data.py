"""Synthetic data for the examples: no downloads, seconds to make, deterministic per seed.

* :func:`blobs`: 2-D images of 1-3 bright ellipses on a smooth, noisy background, with
  their exact masks. :func:`noisy_masks` degrades masks like careless annotators
  (dilation, erosion, shift).
* :func:`patterns`: 4-class images (where the bright spot is) and :func:`symmetric_noise`.
* :func:`dice`: mean foreground Dice per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def blobs(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 1, size, size)`` float and their clean masks ``(n, size, size)`` long."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            cy, cx = (torch.rand(2, generator=g) * 0.6 + 0.2) * size
            ry, rx = (torch.rand(2, generator=g) * 0.12 + 0.08) * size
            t = float(torch.rand(1, generator=g)) * math.pi
            u, v = (xx - cx) * math.cos(t) + (yy - cy) * math.sin(t), -(xx - cx) * math.sin(t) + (yy - cy) * math.cos(t)
            masks[i] |= (u / rx) ** 2 + (v / ry) ** 2 <= 1
    background = F.avg_pool2d(torch.randn(n, 1, size, size, generator=g), 7, 1, 3) * 2.0
    contrast = torch.rand(n, 1, 1, 1, generator=g) * 0.5 + 0.5
    images = masks[:, None].float() * contrast + background + 0.3 * torch.randn(n, 1, size, size, generator=g)
    return images, masks.long()


def noisy_masks(masks: torch.Tensor, seed: int, radius: int = 3, shift: int = 3) -> torch.Tensor:
    """Per mask: dilation (p = 1/2) or erosion (p = 1/4) by 1..``radius`` px, or none; then a random shift."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for m in masks.float()[:, None]:
        r, kind = int(torch.randint(1, radius + 1, (1,), generator=g)), float(torch.rand(1, generator=g))
        if kind < 0.5:
            m = F.max_pool2d(m[None], 2 * r + 1, 1, r)[0]
        elif kind < 0.75:
            m = -F.max_pool2d(-m[None], 2 * r + 1, 1, r)[0]
        dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=g))
        out.append(torch.roll(m, (dy, dx), dims=(1, 2)))
    return torch.cat(out).long()


def dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over images of the foreground Dice of label maps ``(n, H, W)`` (1 when both are empty)."""
    p, t = (pred == 1).flatten(1).float(), (target == 1).flatten(1).float()
    inter, total = (p * t).sum(1), p.sum(1) + t.sum(1)
    return float(torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total)).mean())


def patterns(n: int, size: int, seed: int, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 1, size, size)``: a spot in one of ``classes`` places, in noise; labels ``(n,)``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    angle = labels.float() * 2 * math.pi / classes
    cy = size / 2 + size / 4 * torch.sin(angle) + torch.randn(n, generator=g)
    cx = size / 2 + size / 4 * torch.cos(angle) + torch.randn(n, generator=g)
    spot = torch.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (size / 8) ** 2)
    return (1.5 * spot + torch.randn(n, size, size, generator=g))[:, None], labels


def symmetric_noise(labels: torch.Tensor, rate: float, seed: int, classes: int = 4) -> torch.Tensor:
    """Each label replaced, with probability ``rate``, by one of the *other* classes at random."""
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(labels.shape, generator=g) < rate
    other = (labels + torch.randint(1, classes, labels.shape, generator=g)) % classes
    return torch.where(flip, other, labels)
