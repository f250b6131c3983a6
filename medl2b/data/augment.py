"""Batched augmentation on the device: one call per batch, not per slice or image.

A per-slice MONAI transform chain in the Dataset would be a large share of a CE step on a
CPU (numbers in ``BENCHMARKS.md``) and on a GPU it would starve the network.
:class:`BatchAugment` draws the same family of transforms for every slice of a batch at
once, with torch ops that run wherever the batch is (``affine_grid`` + ``grid_sample``),
and applies one spatial draw to the image and to every label map of a slice:

* flips along each in-plane axis, p = 0.5 each;
* with p = 0.5, a rotation in ±15° and an independent scaling in ±10 % per axis about the
  centre (bilinear for the image, nearest neighbour for labels, zero padding);
* intensity: with p = 0.5 a scaling ``x · (1 + U(−0.1, 0.1))``, with p = 0.5 a shift
  ``x + U(−0.1, 0.1)``, with p = 0.3 Gaussian noise of std 0.05 (as MONAI's
  ``RandScaleIntensity``, ``RandShiftIntensity``, ``RandGaussianNoise`` with those settings).

Classification (ISIC) uses :class:`SquareAugment`: a uniformly random symmetry of the square
(flips and 90° rotations; a dermoscopy image has no up or left) and, with p = 0.5, a brightness
scale ``x · (1 + U(−0.1, 0.1))`` of the [0, 1] pixels. As a MONAI chain per image
(``RandFlip``, ``RandRotate90``, ``RandScaleIntensity``) it cost 24.6 s of item loading per epoch on one
CPU thread at 32 px, more than the network's own 16.5 s; batched, the median CE epoch fell from 33.8 s
to 15.4 s (``BENCHMARKS.md``).

Every draw comes from torch's global generator (on the CPU), so ``torch.manual_seed``
makes it reproducible, and the trainer's per-epoch reseeding makes ``--resume`` exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["BatchAugment", "SquareAugment"]


class BatchAugment:
    """Random flips, rotation/scaling and intensity changes of a batch of 2-D slices or 3-D volumes.

    Args:
        max_rotation: Largest rotation in radians.
        max_scale: Largest relative scaling per axis.
    """

    def __init__(self, *, max_rotation: float = math.pi / 12, max_scale: float = 0.1):
        self.max_rotation = float(max_rotation)
        self.max_scale = float(max_scale)

    def __call__(self, image: torch.Tensor, *labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Augment ``image`` (B, C, H, W) or (B, C, X, Y, Z) and label maps (B, H, W) / (B, X, Y, Z) with
        one spatial draw per sample. 3-D: flips along each axis, the rotation in the plane of the first
        two axes (the slice plane), scaling per axis.

        Returns:
            ``(image, *labels)``, same shapes and dtypes.
        """
        if image.ndim not in (4, 5):
            raise ValueError(f"image must be (B, C, H, W) or (B, C, X, Y, Z), got shape {tuple(image.shape)}")
        b, d = image.shape[0], image.ndim - 2
        # every draw at once, on the CPU: the stream does not depend on the device. Columns: flips (d),
        # affine on, angle, scales (d), gain (2), shift (2), noise; 2-D draws 12 (the last one unused)
        # so that a seed gives the same 2-D augmentations as in the published 2-D runs
        r = torch.rand(b, 12 if d == 2 else 2 * d + 7)
        dev, dtype = image.device, image.dtype
        # flips and the affine part, as one sampling grid: output (x, y[, z]) samples input at theta @ (x, y[, z], 1)
        flip = torch.where(r[:, 0:d] < 0.5, -1.0, 1.0)
        affine_on = r[:, d] < 0.5
        angle = torch.where(affine_on, (2 * r[:, d + 1] - 1) * self.max_rotation, torch.zeros(b))
        scale = torch.where(affine_on[:, None], 1 + (2 * r[:, d + 2:2 * d + 2] - 1) * self.max_scale,
                            torch.ones(b, d))
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.eye(d).repeat(b, 1, 1)
        # grid coordinates run over the tensor's axes in reverse: the slice plane (the first two spatial
        # axes) is the last two grid coordinates
        i, j = d - 2, d - 1
        rot[:, i, i], rot[:, i, j], rot[:, j, i], rot[:, j, j] = cos, -sin, sin, cos
        mat = rot / scale[:, None, :] * flip[:, None, :]
        theta = torch.cat([mat, torch.zeros(b, d, 1)], 2).to(dev, torch.float32)
        grid = F.affine_grid(theta, [b, 1, *image.shape[2:]], align_corners=False)
        out = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        warped = [F.grid_sample(lab[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                                align_corners=False)[:, 0].round().to(lab.dtype) for lab in labels]
        # intensity
        shape = (b,) + (1,) * (image.ndim - 1)
        k = 2 * d + 2
        gain = torch.where(r[:, k] < 0.5, 1 + (2 * r[:, k + 1] - 1) * 0.1, torch.ones(b)).to(dev)
        shift = torch.where(r[:, k + 2] < 0.5, (2 * r[:, k + 3] - 1) * 0.1, torch.zeros(b)).to(dev)
        out = out * gain.view(shape) + shift.view(shape)
        noisy = (r[:, k + 4] < 0.3).to(dev)
        if bool(noisy.any()):
            noise = torch.randn(image.shape, generator=None).to(dev) * 0.05
            out = out + noise * noisy.view(shape)
        return (out.to(dtype), *warped)


class SquareAugment:
    """Random symmetries of the square and a brightness scale, for a batch of RGB images in [0, 1].

    Each image gets one of the 8 symmetries of the square (transpose, then flips along each axis, each
    with p = 0.5: all 8 equally likely) and, with p = 0.5, its pixels scaled by
    ``1 + U(−max_gain, max_gain)``. The datasets serve un-normalised pixels (the network normalises
    them with its backbone's statistics), so the scale applies to the pixels directly.

    Args:
        max_gain: Largest relative brightness change.
    """

    def __init__(self, *, max_gain: float = 0.1, channels: int = 3):
        self.max_gain = float(max_gain)
        self.channels = int(channels)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Augment ``image`` (B, C, S, S); returns the same shape and dtype."""
        if image.ndim != 4 or image.shape[-1] != image.shape[-2] or image.shape[1] != self.channels:
            raise ValueError(f"image must be (B, {self.channels}, S, S), got shape {tuple(image.shape)}")
        b = image.shape[0]
        r = torch.rand(b, 5)  # transpose, flip rows, flip columns, gain on, gain
        dev = image.device

        def where(col: int, changed: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            return torch.where((r[:, col] < 0.5).to(dev).view(b, 1, 1, 1), changed, out)

        out = where(0, image.transpose(-1, -2), image)
        out = where(1, out.flip(-2), out)
        out = where(2, out.flip(-1), out)
        gain = torch.where(r[:, 3] < 0.5, 1 + (2 * r[:, 4] - 1) * self.max_gain, torch.ones(b)).to(dev)
        return (out.float() * gain.view(b, 1, 1, 1)).to(image.dtype)
