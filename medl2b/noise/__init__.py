"""Label noise: corrupted masks for segmentation, symmetric flips for classification."""

from __future__ import annotations

from medl2b.noise.labels import symmetric_noise
from medl2b.noise.masks import (
    MaskNoiseConfig,
    SliceNoise,
    apply_slice_noise,
    calibrate_strength,
    corrupt_volume,
    corrupt_volumes,
    label_dice,
    mask_dice,
    per_class_dice,
    sample_slice_noise,
)

__all__ = [
    "MaskNoiseConfig",
    "SliceNoise",
    "apply_slice_noise",
    "calibrate_strength",
    "corrupt_volume",
    "corrupt_volumes",
    "label_dice",
    "mask_dice",
    "per_class_dice",
    "sample_slice_noise",
    "symmetric_noise",
]
