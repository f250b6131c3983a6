"""Prepared grids: intensity normalisation, in-plane resampling over the same field of view, and back.

Shared by every segmentation release (:mod:`medl2b.data.promise12`, :mod:`medl2b.data.msd`).
Images are ``SimpleITK.Image`` objects with ITK (LPS) geometry; arrays are ``(x, y, z)``
and 2-D slices are ``volume[:, :, z]``.

* :func:`normalise_intensity`: clip to the case's 0.5th..99.5th percentiles, z-score.
* :func:`prepared_geometry`: ``size × size`` in-plane pixels over the same physical
  field of view (the outer edges of the edge pixels stay put); slices unchanged.
* :func:`prepare_volume`: both, with in-plane Gaussian anti-aliasing before
  downsampling; linear for images, nearest neighbour for label maps.
* :func:`to_original_grid`: a prepared-grid label map back onto the raw grid
  (nearest neighbour, in physical space, so any direction matrix works).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medl2b.data.nifti import Geometry, affine_from_geometry

__all__ = ["PERCENTILES", "geometry_of", "normalise_intensity", "prepare_volume", "prepared_geometry",
           "image_from_xyz", "prediction_to_raw", "raw_label_values", "resample", "to_original_grid", "to_xyz"]

PERCENTILES = (0.5, 99.5)

def normalise_intensity(array: np.ndarray) -> tuple[np.ndarray, dict]:
    """Clip to the 0.5..99.5th percentiles, then z-score with the clipped volume's mean/std.

    Args:
        array: Image of any shape.

    Returns:
        ``(float32 array of the same shape, {"lo", "hi", "mean", "std"})``.
    """
    data = np.asarray(array, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(data, PERCENTILES))
    clipped = np.clip(data, lo, hi)
    mean, std = float(clipped.mean()), float(clipped.std())
    out = (clipped - mean) / std if std > 0 else np.zeros_like(clipped)
    return out.astype(np.float32), {"lo": lo, "hi": hi, "mean": mean, "std": std}


def geometry_of(image) -> Geometry:
    return Geometry(tuple(int(v) for v in image.GetSize()), tuple(float(v) for v in image.GetSpacing()),
                    tuple(float(v) for v in image.GetOrigin()), tuple(float(v) for v in image.GetDirection()))


def prepared_geometry(original: dict | Geometry, size: int) -> Geometry:
    """Grid with ``size × size`` axial pixels over the same field of view as ``original``.

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
    img.SetOrigin(src.origin)
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


def prepare_volume(channels, mask, size: int) -> tuple[list[np.ndarray], np.ndarray | None, Geometry, list[dict]]:
    """Normalise and resample one case onto its prepared grid (see :func:`prepared_geometry`).

    Args:
        channels: ``SimpleITK.Image`` (one channel) or a list of them on one grid.
        mask: ``SimpleITK.Image`` label map (uint8 values) on the same grid, or None (an image
            to predict).
        size: In-plane size of the prepared grid.

    Returns:
        ``(images, mask, geometry, intensity)``: one float32 ``(x, y, z)`` array per channel,
        the uint8 label map (None without ``mask``), the prepared geometry and one intensity
        record per channel.
    """
    channels = channels if isinstance(channels, (list, tuple)) else [channels]
    geo = geometry_of(channels[0])
    target = prepared_geometry(geo, size)
    sigma = [max(0.0, (n / size - 1.0) / 2.0) for n in geo.size[:2]]  # in-plane anti-aliasing (x, y)
    images, intensity = [], []
    for image in channels:
        zyx, stats = normalise_intensity(sitk.GetArrayViewFromImage(image))
        if max(sigma) > 0:
            zyx = ndimage.gaussian_filter(zyx, sigma=(0.0, sigma[1], sigma[0]), mode="nearest")
        smooth = sitk.GetImageFromArray(zyx)
        smooth.CopyInformation(image)
        images.append(to_xyz(resample(smooth, target, linear=True)).astype(np.float32))
        intensity.append(stats)
    mask_xyz = None if mask is None else to_xyz(resample(mask, target, linear=False)).astype(np.uint8)
    return images, mask_xyz, target, intensity


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
