"""What differs between segmenting 2-D slices and 3-D volumes, as data (:data:`SLICES`, :data:`VOLUMES`).

===========================  ===============================  ===============================
                             :data:`SLICES` (2-D)             :data:`VOLUMES` (3-D)
===========================  ===============================  ===============================
training sample              a slice (larger than the 2-D     a volume (larger than the 3-D
                             window: a random patch of it)    window: a random patch of it)
prediction of a case         its slices as one batch, each    the volume by sliding windows
                             whole or by 2-D sliding windows  of the 3-D training window
audit units                  cases and slices                 cases
weight-map figure            training slices                  three views of a training volume
===========================  ===============================  ===============================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from medl2b.data.datasets import load_slices, load_volumes
from medl2b.tasks.weightmaps import slice_weight_maps, volume_weight_maps

__all__ = ["GEOMETRIES", "SLICES", "VOLUMES", "Geometry"]


@dataclass(frozen=True)
class Geometry:
    """One sample geometry of segmentation.

    Attributes:
        spatial_dims: 2 or 3.
        load: Reads cases as samples (:func:`medl2b.data.datasets.load_slices` / ``load_volumes``).
        flip_dims: The spatial axes of a prediction batch, flipped by test-time augmentation.
        audit_units: The audit's units, the case first.
        sw_batch_size: Windows per forward of sliding-window prediction (None: the task's batch size).
        predict_by_windows: A case is always predicted by sliding windows of the training window, even when the
            samples fit it (3-D); otherwise whole when they fit.
        weight_maps: The α/β figure's examples (:mod:`medl2b.tasks.weightmaps`).
        to_batch: A case ``(C, X, Y, Z)`` as a prediction batch: its slices ``(Z, C, X, Y)``, or
            ``(1, C, X, Y, Z)``.
        from_batch: The logits of that batch as the case's ``(K, X, Y, Z)``.
    """

    spatial_dims: int
    load: Callable
    flip_dims: tuple[int, ...]
    audit_units: tuple[str, ...]
    sw_batch_size: int | None
    predict_by_windows: bool
    weight_maps: Callable
    to_batch: Callable[[torch.Tensor], torch.Tensor]
    from_batch: Callable[[torch.Tensor], torch.Tensor]


def _slices(image: torch.Tensor) -> torch.Tensor:
    return image.permute(3, 0, 1, 2).contiguous()  # (C, X, Y, Z) -> (Z, C, X, Y)


def _from_slices(logits: torch.Tensor) -> torch.Tensor:
    return logits.permute(1, 2, 3, 0)  # (Z, K, X, Y) -> (K, X, Y, Z)


def _volume(image: torch.Tensor) -> torch.Tensor:
    return image[None]


def _from_volume(logits: torch.Tensor) -> torch.Tensor:
    return logits[0]


SLICES = Geometry(spatial_dims=2, load=load_slices, flip_dims=(2, 3), audit_units=("cases", "slices"),
                  sw_batch_size=None, predict_by_windows=False, weight_maps=slice_weight_maps,
                  to_batch=_slices, from_batch=_from_slices)
VOLUMES = Geometry(spatial_dims=3, load=load_volumes, flip_dims=(2, 3, 4), audit_units=("cases",),
                   sw_batch_size=2, predict_by_windows=True, weight_maps=volume_weight_maps,
                   to_batch=_volume, from_batch=_from_volume)
#: The geometry of each ``spatial_dims``.
GEOMETRIES = {2: SLICES, 3: VOLUMES}
