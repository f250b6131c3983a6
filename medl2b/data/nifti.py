"""NIfTI read/write with ITK-style geometry, through nibabel.

Arrays are indexed ``(x, y, z)`` (NIfTI order). Geometry is given the ITK way,
in LPS physical space, as SimpleITK reports it for the raw MetaImage files:
``spacing`` (3,), ``origin`` (3,), ``direction`` (9,) row-major. NIfTI stores
RAS, so the affine is ``diag(-1, -1, 1) @ [direction * spacing | origin]``. A file
written here overlays the raw ``.mhd`` in 3D Slicer or ITK-SNAP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medl2b.errors import InputError, atomic_file

__all__ = ["Geometry", "affine_from_geometry", "geometry_from_affine", "read_nifti", "write_nifti"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Geometry:
    """Voxel grid in ITK/LPS terms. ``size`` is (x, y, z)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major

    def to_dict(self) -> dict:
        return {"size": list(map(int, self.size)), "spacing": list(map(float, self.spacing)),
                "origin": list(map(float, self.origin)), "direction": list(map(float, self.direction))}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(int(v) for v in d["size"]), tuple(float(v) for v in d["spacing"]),
                   tuple(float(v) for v in d["origin"]), tuple(float(v) for v in d["direction"]))


def affine_from_geometry(spacing, origin, direction) -> np.ndarray:
    """4x4 RAS affine of a grid given in ITK/LPS terms."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = _LPS_TO_RAS @ d @ np.diag(np.asarray(spacing, dtype=float))
    a[:3, 3] = _LPS_TO_RAS @ np.asarray(origin, dtype=float)
    return a


def geometry_from_affine(affine: np.ndarray, shape) -> Geometry:
    """Inverse of :func:`affine_from_geometry`."""
    m = _LPS_TO_RAS @ np.asarray(affine, dtype=float)[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    direction = m / spacing
    origin = _LPS_TO_RAS @ np.asarray(affine, dtype=float)[:3, 3]
    return Geometry(tuple(int(s) for s in shape[:3]), tuple(spacing.tolist()), tuple(origin.tolist()),
                    tuple(direction.reshape(-1).tolist()))


def write_nifti(array: np.ndarray, path: str | os.PathLike, *, spacing=None, origin=None, direction=None,
                affine=None) -> Path:
    """Write ``array`` (x, y, z) to ``path`` (.nii.gz) atomically, with the given ITK geometry
    (``spacing``, ``origin``, ``direction``) or a 4x4 RAS ``affine`` (e.g. a raw file's own)."""
    path = Path(path)
    if affine is None:
        affine = affine_from_geometry(spacing, origin, direction)
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=float))
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with atomic_file(path) as tmp:
        nib.save(img, str(tmp))
    return path


def read_nifti(path: str | os.PathLike, *, dtype=None) -> tuple[np.ndarray, Geometry]:
    """Read a NIfTI file; return the (x, y, z) array and its ITK geometry.

    Raises :class:`InputError` naming the file if it is missing or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for damaged files
        raise InputError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    if dtype is not None:
        data = data.astype(dtype)
    return data, geometry_from_affine(img.affine, data.shape)
