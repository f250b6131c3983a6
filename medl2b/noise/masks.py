"""Noisy segmentation masks: per-slice rotation, erosion/dilation and ellipse replacement.

Follows the mask-noise protocol of L2B (Zhou et al., "Learning to Bootstrap for
Combating Label Noise", §4.3, Table 6), which acts on each axial slice whose
foreground is large enough (smaller ones get an empty noisy mask):

1. rotate by a random angle in ±20° about the image centre (nearest neighbour);
2. erode or dilate (p = 0.5 each) with a square kernel of random size;
3. with p = 0.5, replace the mask by the filled ellipse inscribed in its bounding box.

Differences from the public generator, on purpose:

* Every draw comes from a seeded :class:`numpy.random.Generator`.
* Kernel sizes and the minimum area are physical (millimetres, mm²), so a level
  means the same thing at any resolution. The side of the square kernel is
  ``strength * u`` mm with ``u`` uniform in :attr:`MaskNoiseConfig.kernel_mm`.
* One scalar ``strength`` sets the level. At ``strength = 0`` nothing changes; the
  rotation range and the ellipse probability ramp up linearly until
  ``strength = MaskNoiseConfig.ramp`` and stay at ±20° and 0.5 beyond. With the
  uniform draws held fixed, the noisy masks change monotonically with the
  strength, so :func:`calibrate_strength` can search it for a requested mean
  3-D Dice and write the achieved value to the manifest.

The TorchIO pattern is kept: :func:`sample_slice_noise` draws the parameters
(:class:`SliceNoise`), :func:`apply_slice_noise` applies them deterministically.

Arrays are indexed ``(x, y)`` for slices and ``(x, y, z)`` for volumes; axial
slices are ``volume[:, :, z]``. ``spacing`` is given in the same axis order (mm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

# The one Dice of medl2b (mask_dice is re-exported here for the preparation code and medl2b.noise).
from medl2b.dice import mask_dice, mean_foreground_dice

__all__ = [
    "pick_noisy_cases",
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
]

Op = Literal["erode", "dilate", "none"]


@dataclass(frozen=True)
class MaskNoiseConfig:
    """The fixed shape of the mask noise; the level is set separately by ``strength``.

    Attributes:
        max_angle_deg: Largest rotation (degrees) once ``strength >= ramp``.
        kernel_mm: Range ``(lo, hi)`` of the kernel side in mm at ``strength = 1``; the
            side is ``strength * U(lo, hi)``. At about 1.1 mm/px (PROMISE12 at 144 px)
            the default spans roughly the public 7..35 px of the 0.6 level.
        p_erode: Probability of erosion (dilation otherwise).
        p_ellipse: Probability of the ellipse replacement once ``strength >= ramp``.
        ramp: Strength at which rotation range and ellipse probability reach their
            full values (linear from 0). Must be > 0.
        min_area_mm2: Slices with less foreground than this get an empty noisy mask.
    """

    max_angle_deg: float = 20.0
    kernel_mm: tuple[float, float] = (6.0, 30.0)
    p_erode: float = 0.5
    p_ellipse: float = 0.5
    ramp: float = 0.25
    min_area_mm2: float = 20.0

    def __post_init__(self) -> None:
        lo, hi = self.kernel_mm
        if not 0 <= lo <= hi:
            raise ValueError(f"kernel_mm must satisfy 0 <= lo <= hi, got {self.kernel_mm}")
        if not 0 <= self.p_erode <= 1 or not 0 <= self.p_ellipse <= 1:
            raise ValueError("p_erode and p_ellipse must lie in [0, 1]")
        if self.ramp <= 0:
            raise ValueError(f"ramp must be > 0, got {self.ramp}")
        if self.max_angle_deg < 0 or self.min_area_mm2 < 0:
            raise ValueError("max_angle_deg and min_area_mm2 must be >= 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kernel_mm"] = list(self.kernel_mm)
        return d


DEFAULT_CONFIG = MaskNoiseConfig()


@dataclass(frozen=True)
class SliceNoise:
    """Deterministic parameters of one slice's corruption.

    Attributes:
        angle_deg: Rotation about the image centre, in degrees (physical, not pixel, angle).
        op: ``"erode"``, ``"dilate"`` or ``"none"``.
        kernel_mm: Side of the square structuring element in mm.
        ellipse: Replace the result by the filled ellipse inscribed in its bounding box.
    """

    angle_deg: float
    op: Op
    kernel_mm: float
    ellipse: bool

    def __post_init__(self) -> None:
        if self.op not in ("erode", "dilate", "none"):
            raise ValueError(f"op must be 'erode', 'dilate' or 'none', got {self.op!r}")
        if self.kernel_mm < 0:
            raise ValueError(f"kernel_mm must be >= 0, got {self.kernel_mm}")


def sample_slice_noise(rng: np.random.Generator, *, strength: float,
                       config: MaskNoiseConfig = DEFAULT_CONFIG) -> SliceNoise:
    """Draw one slice's :class:`SliceNoise` at the given ``strength``.

    Exactly four uniforms are drawn whatever the strength, so the random stream of
    a volume does not depend on the level, and for a fixed stream the result grows
    monotonically with ``strength``.

    Args:
        rng: Source of randomness.
        strength: Noise level, >= 0 (0 = no change).
        config: Shape of the noise.
    """
    if strength < 0 or not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number >= 0, got {strength}")
    u_angle, u_op, u_kernel, u_ellipse = rng.random(4)
    ramp = min(1.0, strength / config.ramp)
    lo, hi = config.kernel_mm
    kernel_mm = float(strength * (lo + (hi - lo) * u_kernel))
    op: Op = "none" if kernel_mm <= 0 else ("erode" if u_op < config.p_erode else "dilate")
    return SliceNoise(angle_deg=float((2.0 * u_angle - 1.0) * config.max_angle_deg * ramp), op=op,
                      kernel_mm=kernel_mm, ellipse=bool(u_ellipse < config.p_ellipse * ramp))


def _odd_kernel(kernel_mm: float, spacing: float) -> int:
    """Nearest odd pixel count to ``kernel_mm / spacing`` (odd: no half-pixel shift)."""
    return max(1, 2 * int(round((kernel_mm / spacing - 1.0) / 2.0)) + 1)


def _rotate(mask: np.ndarray, angle_deg: float, spacing2d: tuple[float, float]) -> np.ndarray:
    """Rotate a 2-D mask about the array centre by a physical angle, nearest neighbour."""
    theta = math.radians(angle_deg)
    rot_inv = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    s = np.diag(np.asarray(spacing2d, dtype=float))
    matrix = np.linalg.inv(s) @ rot_inv @ s  # output index -> input index, about the centre
    centre = (np.asarray(mask.shape, dtype=float) - 1.0) / 2.0
    return ndimage.affine_transform(mask, matrix, offset=centre - matrix @ centre, order=0,
                                    mode="constant", cval=0)


def _inscribed_ellipse(mask: np.ndarray) -> np.ndarray:
    """Filled ellipse inscribed in the bounding box of a non-empty 2-D mask."""
    xs, ys = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    ax, ay = (x1 - x0 + 1) / 2.0, (y1 - y0 + 1) / 2.0
    gx = (np.arange(mask.shape[0]) - cx)[:, None] / ax
    gy = (np.arange(mask.shape[1]) - cy)[None, :] / ay
    return (gx * gx + gy * gy <= 1.0).astype(np.uint8)


def apply_slice_noise(mask2d: np.ndarray, params: SliceNoise, spacing2d: Sequence[float]) -> np.ndarray:
    """Apply :class:`SliceNoise` to one slice: rotation, erosion/dilation, ellipse.

    Args:
        mask2d: Binary mask, shape (X, Y); any non-zero value is foreground.
        params: What to apply.
        spacing2d: Pixel spacing (sx, sy) in mm; the kernel is square in mm and the
            rotation is a physical rotation, also for anisotropic pixels.

    Returns:
        uint8 mask of shape (X, Y) with values 0/1.
    """
    mask2d = np.asarray(mask2d)
    if mask2d.ndim != 2:
        raise ValueError(f"mask2d must be 2-D (X, Y), got shape {mask2d.shape}")
    if len(spacing2d) != 2 or min(spacing2d) <= 0:
        raise ValueError(f"spacing2d must be two positive numbers, got {spacing2d}")
    sx, sy = float(spacing2d[0]), float(spacing2d[1])
    out = (mask2d > 0).astype(np.uint8)
    if not out.any():
        return out
    if params.angle_deg != 0.0:
        out = _rotate(out, params.angle_deg, (sx, sy))
    if params.op != "none":
        size = (_odd_kernel(params.kernel_mm, sx), _odd_kernel(params.kernel_mm, sy))
        if size != (1, 1):
            morph = ndimage.minimum_filter if params.op == "erode" else ndimage.maximum_filter
            out = morph(out, size=size, mode="constant", cval=0)
    if params.ellipse and out.any():
        out = _inscribed_ellipse(out)
    return out


def corrupt_volume(mask_xyz: np.ndarray, spacing: Sequence[float], *, strength: float,
                   rng: np.random.Generator, config: MaskNoiseConfig = DEFAULT_CONFIG,
                   classes: Sequence[int] | None = None) -> np.ndarray:
    """Corrupt every axial slice of a 3-D mask independently.

    Parameters are drawn for every slice, empty or not, so the random stream is
    the same for any ``strength``. Slices with less than ``config.min_area_mm2`` of
    foreground become empty.

    Args:
        mask_xyz: Binary mask, shape (X, Y, Z).
        spacing: Voxel spacing (sx, sy, sz) in mm; only (sx, sy) is used.
        strength: Noise level, >= 0.
        rng: Source of randomness (e.g. ``np.random.default_rng([seed, case_index])``).
        config: Shape of the noise.
        classes: Foreground label values of a multi-class label map. ``None`` (default):
            binary, any non-zero value is foreground and the result is 0/1. Otherwise each
            class is corrupted on its own (its own slice parameters, drawn for every class
            on every slice) and the results are merged: where several noisy classes claim
            one voxel, the class with the highest priority on that slice wins (priorities
            are uniforms drawn per slice, so no class always swallows another).

    Returns:
        uint8 noisy mask of shape (X, Y, Z): values 0/1, or 0 and ``classes``.
    """
    if classes is not None and len(classes) > 1:
        return _corrupt_multiclass(mask_xyz, spacing, strength=strength, rng=rng, config=config,
                                   classes=[int(c) for c in classes])
    if classes is not None:  # one foreground class: the binary stream, labelled with its value
        value = int(classes[0])
        noisy = corrupt_volume(np.asarray(mask_xyz) == value, spacing, strength=strength, rng=rng, config=config)
        return noisy * np.uint8(value)
    mask_xyz, sx, sy = _checked_volume(mask_xyz, spacing)
    noisy = np.zeros(mask_xyz.shape, dtype=np.uint8)
    for z in range(mask_xyz.shape[2]):
        params = sample_slice_noise(rng, strength=strength, config=config)
        slice_ = mask_xyz[:, :, z] > 0
        area = float(np.count_nonzero(slice_)) * sx * sy
        if area == 0 or area < config.min_area_mm2:
            continue
        noisy[:, :, z] = apply_slice_noise(slice_, params, (sx, sy))
    return noisy


def _checked_volume(mask_xyz, spacing) -> tuple[np.ndarray, float, float]:
    """The mask as a 3-D array and its in-plane spacing (sx, sy), checked."""
    mask_xyz = np.asarray(mask_xyz)
    if mask_xyz.ndim != 3:
        raise ValueError(f"mask_xyz must be 3-D (X, Y, Z), got shape {mask_xyz.shape}")
    if len(spacing) < 2 or min(spacing[:2]) <= 0:
        raise ValueError(f"spacing must hold positive (sx, sy[, sz]), got {spacing}")
    return mask_xyz, float(spacing[0]), float(spacing[1])


def _corrupt_multiclass(mask_xyz, spacing, *, strength: float, rng: np.random.Generator, config: MaskNoiseConfig,
                        classes: list[int]) -> np.ndarray:
    """Per class, per slice corruption with a per-slice priority for contested voxels."""
    mask_xyz, sx, sy = _checked_volume(mask_xyz, spacing)
    noisy = np.zeros(mask_xyz.shape, dtype=np.uint8)
    for z in range(mask_xyz.shape[2]):
        params = [sample_slice_noise(rng, strength=strength, config=config) for _ in classes]
        priority = rng.random(len(classes))
        best = np.full(mask_xyz.shape[:2], -1.0)
        for value, p, prio in zip(classes, params, priority):
            slice_ = mask_xyz[:, :, z] == value
            area = float(np.count_nonzero(slice_)) * sx * sy
            if area == 0 or area < config.min_area_mm2:
                continue
            claim = apply_slice_noise(slice_, p, (sx, sy)) > 0
            win = claim & (prio > best)
            noisy[:, :, z][win] = value
            best[win] = prio
    return noisy


def label_dice(noisy: np.ndarray, clean: np.ndarray, classes: Sequence[int] | None = None) -> float:
    """Mean over the foreground ``classes`` of the per-class 3-D Dice (binary :func:`mask_dice` if None)."""
    if classes is None:
        return mask_dice(noisy, clean)
    return mean_foreground_dice(noisy, clean, classes)


def per_class_dice(noisy: np.ndarray, clean: np.ndarray, classes: Sequence[int]) -> list[float]:
    """3-D Dice of each foreground class (1.0 where a class is absent from both)."""
    noisy, clean = np.asarray(noisy), np.asarray(clean)
    return [mask_dice(noisy == c, clean == c) for c in classes]


def _case_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def corrupt_volumes(masks: Sequence[tuple[np.ndarray, Sequence[float]]], *, strength: float, seed: int,
                    config: MaskNoiseConfig = DEFAULT_CONFIG, classes: Sequence[int] | None = None
                    ) -> list[np.ndarray]:
    """Corrupt several volumes; volume ``i`` uses ``np.random.default_rng([seed, i])``.

    Args:
        masks: ``[(mask_xyz, spacing), ...]``, each mask of shape (X, Y, Z).
        strength: Noise level, >= 0.
        seed: Non-negative integer seed.
        config: Shape of the noise.
        classes: Foreground values of multi-class label maps (see :func:`corrupt_volume`).

    Returns:
        One uint8 noisy mask (X, Y, Z) per input, in order.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return [corrupt_volume(m, sp, strength=strength, rng=_case_rng(seed, i), config=config, classes=classes)
            for i, (m, sp) in enumerate(masks)]


def calibrate_strength(masks: Sequence[tuple[np.ndarray, Sequence[float]]], target_dice: float, *, seed: int,
                       tol: float = 0.01, max_iter: int = 30, config: MaskNoiseConfig = DEFAULT_CONFIG,
                       classes: Sequence[int] | None = None) -> tuple[float, float, list[float]]:
    """Find the ``strength`` whose noisy masks have the requested mean 3-D Dice.

    The mean over cases of Dice(noisy, clean) (for multi-class ``classes``: of the
    mean over the foreground classes of the per-class Dice) falls from about 1 at strength 0
    towards 0. The same per-case random streams are used at every evaluation
    (see :func:`corrupt_volumes`), so the curve is a fixed, nearly monotone step
    function; it is bracketed by doubling, then searched with the Illinois
    variant of regula falsi. The best evaluation seen is returned.

    Args:
        masks: ``[(mask_xyz, spacing), ...]`` clean masks (X, Y, Z) with their spacing in mm.
        target_dice: Requested mean Dice; ``>= 1`` means no noise (strength 0, noisy = clean).
        seed: Seed of the per-case streams; pass the same to :func:`corrupt_volumes`.
        tol: Stop once ``|achieved - target| <= tol``.
        max_iter: Largest number of evaluations in the search phase.
        config: Shape of the noise.
        classes: Foreground values of multi-class label maps; ``None`` = binary.

    Returns:
        ``(strength, achieved_mean_dice, per_case_dice)``.
    """
    masks = list(masks)
    if not masks:
        raise ValueError("masks is empty: need at least one (mask_xyz, spacing) pair")
    if not 0 <= target_dice or not math.isfinite(target_dice):
        raise ValueError(f"target_dice must be a finite number >= 0, got {target_dice}")
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if target_dice >= 1:
        return 0.0, 1.0, [1.0] * len(masks)

    cache: dict[float, tuple[float, list[float]]] = {}

    def evaluate(strength: float) -> float:
        if strength not in cache:
            noisy = corrupt_volumes(masks, strength=strength, seed=seed, config=config, classes=classes)
            per_case = [label_dice(n, m, classes) for n, (m, _) in zip(noisy, masks)]
            cache[strength] = (float(np.mean(per_case)), per_case)
        return cache[strength][0] - target_dice

    def best() -> tuple[float, float, list[float]]:
        s = min(cache, key=lambda k: (abs(cache[k][0] - target_dice), k))
        return s, cache[s][0], cache[s][1]

    lo, g_lo = 0.0, evaluate(0.0)
    if g_lo <= tol:  # even no noise is at or below the target
        return best()
    hi, g_hi = 1.0, evaluate(1.0)
    while g_hi > 0 and hi < 256.0:
        lo, g_lo = hi, g_hi
        hi *= 2.0
        g_hi = evaluate(hi)
    if g_hi > 0:  # the target is below anything reachable
        return best()
    side = 0
    for _ in range(max_iter):
        if abs(best()[1] - target_dice) <= tol or hi - lo < 1e-6:
            break
        s = hi - g_hi * (hi - lo) / (g_hi - g_lo)
        s = min(max(s, lo + 0.02 * (hi - lo)), hi - 0.02 * (hi - lo))
        g = evaluate(s)
        if g > 0:
            lo, g_lo = s, g
            if side == -1:
                g_hi /= 2.0
            side = -1
        else:
            hi, g_hi = s, g
            if side == 1:
                g_lo /= 2.0
            side = 1
    return best()


def pick_noisy_cases(names, fraction: float, seed: int) -> set[str]:
    """The train cases to corrupt: all of them (``fraction`` 1), or a seeded draw of
    ``round(fraction · n)`` (``prepare --noisy-fraction``; the rest keep their clean masks)."""
    names = sorted(names)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"noisy fraction must be in (0, 1], got {fraction}")
    if fraction >= 1.0:
        return set(names)
    k = int(round(fraction * len(names)))
    return set(np.random.default_rng([seed, 13]).choice(names, size=k, replace=False).tolist()) if k else set()
