"""Prepared grids: one target spacing, intensity by modality, resampling, and the way back to raw.

Shared by every segmentation release (:mod:`medl2b.data.promise12`, :mod:`medl2b.data.msd`).
Images are ``SimpleITK.Image`` objects with ITK (LPS) geometry; arrays are ``(x, y, z)``
and 2-D slices are ``volume[:, :, z]``.

As nnU-Net plans a dataset (``/work/shared/docs/DATA.md``, "Geometry and intensity"):

* :func:`target_spacing`: the dataset's spacing, the median over the training cases per axis (or
  one given), in-plane coarsened only when the largest case would exceed a cap of ``size`` pixels.
* :func:`spacing_geometry`: a case's grid at that spacing over the same physical extent (the outer
  edges stay put within half a voxel, centred; the aspect ratio is kept), so slices of different
  cases differ in size, never in millimetres per pixel.
* :func:`intensity_plan` / :func:`normalise_intensity`: CT channels (``channel_names`` ``"CT"``) are
  clipped to the 0.5..99.5th percentiles of the training cases' foreground voxels and z-scored with
  the foreground mean and std (Hounsfield units keep their meaning across cases); every other
  channel per case: clipped to its own percentiles and z-scored with the clipped volume's mean/std.
* :func:`prepare_volume`: both, with Gaussian anti-aliasing along every axis that is downsampled;
  linear for images, nearest neighbour for label maps.
* :func:`to_original_grid`: a prepared-grid label map back onto the raw grid (nearest neighbour,
  in physical space, so any direction matrix works).

Resampling is SimpleITK's ``Resample`` (physical space, float64 geometry). MONAI's ``Spacingd`` was
measured against it and not used: it has no anti-aliasing (a 0.27 -> 0.6 mm PROMISE12 slice aliases)
and centres its output grid on the first voxel rather than on the field of view
(``tests/test_geometry.py::test_monai_spacingd_differs``).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from monai.transforms import NormalizeIntensity
from scipy import ndimage

from medl2b.data.nifti import Geometry, affine_from_geometry

__all__ = ["CT_CHANNELS", "FOREGROUND_SAMPLES", "PERCENTILES", "apply_intensity", "foreground_sample",
           "geometry_of", "intensity_plan", "normalise_intensity", "prepare_volume", "prepared_geometry",
           "image_from_xyz", "prediction_to_raw", "raw_label_values", "resample", "spacing_geometry",
           "target_spacing", "to_original_grid", "to_xyz"]

PERCENTILES = (0.5, 99.5)
#: ``channel_names`` (case-insensitive) normalised with the dataset's foreground statistics, as nnU-Net does.
CT_CHANNELS = ("ct",)
#: Physical shift (mm, far below any voxel, far above rounding) that breaks nearest-neighbour ties on the way back.
TIE_BREAK_MM = 1e-6
#: Foreground voxels drawn per training case for the dataset's CT statistics (nnU-Net draws 10,000).
FOREGROUND_SAMPLES = 10_000


def apply_intensity(array: np.ndarray, stats: dict) -> np.ndarray:
    """Clip to ``[stats["lo"], stats["hi"]]``, then z-score with ``stats["mean"]`` and ``stats["std"]``
    (MONAI ``NormalizeIntensity``); float32 of the same shape, zeros where ``std`` is 0."""
    clipped = np.clip(np.asarray(array, dtype=np.float32), stats["lo"], stats["hi"])
    if not stats["std"] > 0:
        return np.zeros_like(clipped)
    out = NormalizeIntensity(subtrahend=float(stats["mean"]), divisor=float(stats["std"]))(clipped)
    return np.asarray(out, dtype=np.float32)


def normalise_intensity(array: np.ndarray, stats: dict | None = None) -> tuple[np.ndarray, dict]:
    """Per case (``stats=None``): clip to the array's 0.5..99.5th percentiles, z-score with the clipped
    array's mean/std. With ``stats`` (a CT channel's dataset record): clip and z-score with those.

    Returns:
        ``(float32 array of the same shape, {"lo", "hi", "mean", "std"})`` (the statistics used).
    """
    data = np.asarray(array, dtype=np.float32)
    if stats is None:
        lo, hi = (float(v) for v in np.percentile(data, PERCENTILES))
        clipped = np.clip(data, lo, hi)
        stats = {"lo": lo, "hi": hi, "mean": float(clipped.mean()), "std": float(clipped.std())}
    stats = {k: float(stats[k]) for k in ("lo", "hi", "mean", "std")}
    return apply_intensity(data, stats), stats


def foreground_sample(array: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                      n: int = FOREGROUND_SAMPLES) -> np.ndarray:
    """Up to ``n`` intensities of ``array`` where ``mask > 0``, drawn without replacement (float64)."""
    values = np.asarray(array)[np.asarray(mask) > 0]
    if values.size > n:
        values = rng.choice(values, n, replace=False)
    return values.astype(np.float64)


def intensity_plan(channel_names, foreground: dict[int, list[np.ndarray]]) -> list[dict]:
    """The manifest's per-channel intensity records.

    Args:
        channel_names: The channels' names, in order (``dataset.json`` ``channel_names`` / ``modality``).
        foreground: Channel index -> foreground samples of the training cases (:func:`foreground_sample`);
            used for the CT channels only.

    Returns:
        One record per channel: ``{"channel", "scheme": "ct"|"per case", ...}``; a CT record adds the
        dataset's ``lo``/``hi`` (foreground percentiles), ``mean``/``std`` (foreground) and ``n_voxels``.
    """
    plan = []
    for c, name in enumerate(channel_names):
        if str(name).strip().lower() not in CT_CHANNELS:
            plan.append({"channel": str(name), "scheme": "per case"})
            continue
        values = np.concatenate(foreground.get(c) or [np.zeros(0)])
        if values.size == 0:
            raise ValueError(f"channel {name!r} is CT but the training cases hold no foreground voxel")
        lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
        plan.append({"channel": str(name), "scheme": "ct", "lo": lo, "hi": hi, "mean": float(values.mean()),
                     "std": float(values.std()), "n_voxels": int(values.size)})
    return plan


def target_spacing(spacings, extents_mm, *, spacing=None, size: int | None = None) -> tuple[tuple[float, ...], str]:
    """The dataset's target spacing ``(sx, sy, sz)`` in mm and a sentence saying where it came from.

    Args:
        spacings: The training cases' spacings ``(sx, sy, sz)``.
        extents_mm: The physical extents ``(n * s)`` of every case to prepare (for the cap).
        spacing: A given spacing (3 values, or 2 = in-plane only: the third is the median), instead of
            the median.
        size: Cap on the in-plane extent in pixels: when the largest case at the spacing would exceed it,
            both in-plane spacings are coarsened by one factor until it fits (one spacing for every case).
    """
    median = np.median(np.asarray(spacings, dtype=float).reshape(-1, 3), axis=0)
    if spacing is None:
        target, source = median, "median spacing of the training cases"
    else:
        given = [float(v) for v in spacing]
        target = np.array(given + [median[2]] if len(given) == 2 else given, dtype=float)
        source = "given (--spacing)" if len(given) == 3 else "given in-plane (--spacing), median through-plane"
    if size is not None:
        largest = float(np.max(np.asarray(extents_mm, dtype=float).reshape(-1, 3)[:, :2] / target[:2]))
        if largest > size + 1e-6:
            target = target * np.array([largest / size, largest / size, 1.0])
            source += f"; in-plane coarsened x{largest / size:.4g} so the largest case fits {size} px (--size)"
    return tuple(float(v) for v in target), source


def spacing_geometry(original: dict | Geometry, spacing) -> Geometry:
    """``original``'s field of view on a grid of ``spacing``: ``round(n * s / spacing)`` voxels per axis (at
    least 1), centred on the same physical extent (so the outer edges move by less than half a voxel)."""
    geo = Geometry.from_dict(original) if isinstance(original, dict) else original
    n = np.asarray(geo.size, dtype=float)
    sp = np.asarray(geo.spacing, dtype=float)
    new_sp = np.asarray(spacing, dtype=float)
    size = np.maximum(1, np.round(n * sp / new_sp)).astype(int)
    d = np.asarray(geo.direction, dtype=float).reshape(3, 3)
    # first voxel centre: the old outer edge, half a new voxel in, plus half the rounding remainder
    shift = (new_sp - sp) / 2.0 + (n * sp - size * new_sp) / 2.0
    origin = np.asarray(geo.origin, dtype=float) + d @ shift
    return Geometry(tuple(int(v) for v in size), tuple(new_sp.tolist()), tuple(origin.tolist()), geo.direction)


def geometry_of(image) -> Geometry:
    return Geometry(tuple(int(v) for v in image.GetSize()), tuple(float(v) for v in image.GetSpacing()),
                    tuple(float(v) for v in image.GetOrigin()), tuple(float(v) for v in image.GetDirection()))


def prepared_geometry(original: dict | Geometry, size: int) -> Geometry:
    """Grid with ``size × size`` axial pixels over the same field of view as ``original`` (stretched).

    The grid of datasets prepared before target spacings (manifests without ``"spacing"``), kept so that
    their runs still predict; new datasets use :func:`spacing_geometry`.
    Spacing ``(sx·Nx/size, sy·Ny/size, sz)``; origin moved by half the spacing change
    along the first two direction axes so that the pixel edges span the same extent.
    """
    geo = Geometry.from_dict(original) if isinstance(original, dict) else original
    n = np.asarray(geo.size, dtype=float)
    sp = np.asarray(geo.spacing, dtype=float)
    new_sp = np.array([sp[0] * n[0] / size, sp[1] * n[1] / size, sp[2]])
    d = np.asarray(geo.direction, dtype=float).reshape(3, 3)
    origin = np.asarray(geo.origin, dtype=float) + d @ ((new_sp - sp) / 2.0 * np.array([1.0, 1.0, 0.0]))
    return Geometry((size, size, geo.size[2]), tuple(new_sp.tolist()), tuple(origin.tolist()), geo.direction)


def resample(image, geo: Geometry, *, linear: bool):
    return sitk.Resample(image, list(geo.size), sitk.Transform(),
                         sitk.sitkLinear if linear else sitk.sitkNearestNeighbor,
                         list(geo.origin), list(geo.spacing), list(geo.direction), 0.0,
                         sitk.sitkFloat32 if linear else sitk.sitkUInt8)


def to_xyz(image) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)))


def to_original_grid(array_xyz: np.ndarray, prepared: dict, original: dict, *, linear: bool = False) -> np.ndarray:
    """Resample a prepared-grid label volume back onto the raw case's grid (nearest neighbour).

    Use it to write predictions that overlay the raw ``CaseNN.mhd`` in 3D Slicer.

    Args:
        array_xyz: Labels on the prepared grid, shape ``prepared["size"]`` = (X', Y', Z).
        prepared: ``dataset.json`` ``cases[id]["prepared"]`` (size, spacing, origin, direction).
        original: ``dataset.json`` ``cases[id]["original"]``.
        linear: Linear interpolation instead (a float map, e.g. a class probability; 0 outside the
            prepared grid); the result is float32.

    Returns:
        Array of shape ``original["size"]`` (X, Y, Z), same dtype as the input (bool -> uint8).
    """
    arr = np.asarray(array_xyz)
    src, dst = Geometry.from_dict(prepared), Geometry.from_dict(original)
    if tuple(arr.shape) != tuple(src.size):
        raise ValueError(f"array_xyz has shape {arr.shape}, but the prepared grid is {list(src.size)}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if linear:
        arr = arr.astype(np.float32, copy=False)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr, (2, 1, 0))))
    img.SetSpacing(src.spacing)
    # A raw voxel centre can lie exactly on the edge between two prepared voxels (1 mm raw, 1.625 mm prepared:
    # every 13 mm); rounding then picks one by floating-point noise that depends on the stored orientation
    # (tests/test_predict.py). The shift breaks such ties the same way in physical space, whatever the order.
    img.SetOrigin(tuple(float(v) + TIE_BREAK_MM for v in src.origin))
    img.SetDirection(src.direction)
    out = sitk.Resample(img, list(dst.size), sitk.Transform(), sitk.sitkLinear if linear else sitk.sitkNearestNeighbor,
                        list(dst.origin), list(dst.spacing), list(dst.direction), 0, img.GetPixelID())
    return to_xyz(out).astype(arr.dtype, copy=False)


def image_from_xyz(array_xyz: np.ndarray, geo: Geometry):
    """A ``SimpleITK.Image`` from an ``(x, y, z)`` array and its ITK geometry."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array_xyz, (2, 1, 0))))
    img.SetSpacing([float(v) for v in geo.spacing])
    img.SetOrigin([float(v) for v in geo.origin])
    img.SetDirection([float(v) for v in geo.direction])
    return img


def prepare_volume(channels, mask, spacing, intensity: list[dict] | None = None
                   ) -> tuple[list[np.ndarray], np.ndarray | None, Geometry, list[dict]]:
    """Normalise and resample one case onto its prepared grid (see :func:`spacing_geometry`).

    Args:
        channels: ``SimpleITK.Image`` (one channel) or a list of them on one grid.
        mask: ``SimpleITK.Image`` label map (uint8 values) on the same grid, or None (an image
            to predict).
        spacing: The dataset's target spacing ``(sx, sy, sz)`` (:func:`target_spacing`); a ``Geometry``
            is taken as the prepared grid itself (the legacy ``size × size`` grid).
        intensity: The manifest's per-channel records (:func:`intensity_plan`); default: every channel
            per case.

    Returns:
        ``(images, mask, geometry, intensity)``: one float32 ``(x, y, z)`` array per channel,
        the uint8 label map (None without ``mask``), the prepared geometry and one intensity
        record per channel (the statistics used).
    """
    channels = channels if isinstance(channels, (list, tuple)) else [channels]
    geo = geometry_of(channels[0])
    target = spacing if isinstance(spacing, Geometry) else spacing_geometry(geo, spacing)
    factor = np.asarray(target.spacing) / np.asarray(geo.spacing)
    sigma = np.maximum(0.0, (factor - 1.0) / 2.0)  # anti-aliasing (voxels) along each downsampled axis
    images, used = [], []
    for c, image in enumerate(channels):
        plan = (intensity or [{}] * len(channels))[c]
        dataset_stats = plan if plan.get("scheme") == "ct" else None  # CT: the dataset's; else the case's own
        zyx, stats = normalise_intensity(sitk.GetArrayViewFromImage(image), dataset_stats)
        if sigma.max() > 0:
            zyx = ndimage.gaussian_filter(zyx, sigma=tuple(sigma[::-1]), mode="nearest")
        smooth = sitk.GetImageFromArray(zyx)
        smooth.CopyInformation(image)
        images.append(to_xyz(resample(smooth, target, linear=True)).astype(np.float32))
        used.append(stats)
    mask_xyz = None if mask is None else to_xyz(resample(mask, target, linear=False)).astype(np.uint8)
    return images, mask_xyz, target, used


def prediction_to_raw(pred_xyz: np.ndarray, manifest: dict, case: str) -> tuple[np.ndarray, np.ndarray]:
    """A prepared-grid prediction (label indices) on the raw case's grid, with the raw label values.

    Returns:
        ``(uint8 array of the raw label's shape, the raw label's 4x4 affine)``: write it with
        :func:`medl2b.data.nifti.write_nifti` ``(affine=...)`` and it overlays the raw image in
        3D Slicer and is a valid nnU-Net prediction.
    """
    info = manifest["cases"][case]
    original = info["original"]
    raw = to_original_grid(np.asarray(pred_xyz, dtype=np.uint8), info["prepared"], original)
    if "affine" in original:
        affine = np.asarray(original["affine"], dtype=float)
    else:
        affine = affine_from_geometry(original["spacing"], original["origin"], original["direction"])
    return raw_label_values(raw, manifest), affine


def raw_label_values(indices: np.ndarray, manifest: dict) -> np.ndarray:
    """Label indices ``0..K-1`` -> the raw dataset's label values (the manifest's ``label_values``), uint8."""
    lut = np.arange(256, dtype=np.uint8)
    for index, value in (manifest.get("label_values") or {}).items():
        lut[int(index)] = int(value)
    return lut[np.asarray(indices, dtype=np.uint8)]
