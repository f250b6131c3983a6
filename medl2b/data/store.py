"""Prepared segmentation cases as uncompressed NumPy arrays, read lazily through a bounded cache.

The NIfTI files of a prepared dataset are gzip-compressed: a case can only be read whole, and reading
every case into memory (as training once did) does not scale to a few hundred CT volumes. ``prepare``
therefore also writes each case uncompressed (as nnU-Net unpacks its ``.npz`` files to ``.npy``)::

    arrays/CASE_image.npy   float32 (Z, C, X, Y): slice z of every channel is one contiguous block
    arrays/CASE_clean.npy   uint8 (Z, X, Y), the clean label map (own labels: the given one)
    arrays/CASE_noisy.npy   uint8 (Z, X, Y), the noisy label map (train cases with one)

A dataset prepared before holds no ``arrays/``: :class:`CaseStore` writes a case's arrays there on its
first use (atomically; NumPy only, so preparing data does not load torch).

:class:`CaseStore` serves a slice or a whole volume. A case is kept whole in an LRU cache while the
cache holds at most ``cache_mb`` MiB; a case larger than the whole cache is never cached: its slice is
read from a memory map and copied (the map is dropped at once, so the process holds only the slice).
The cache (per process: every DataLoader worker has its own) bounds the memory of a dataset of any size.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from medl2b.data.nifti import read_nifti
from medl2b.errors import InputError, atomic_file

__all__ = ["ARRAYS", "CaseStore", "write_case_arrays"]

#: The folder of the uncompressed arrays inside a prepared dataset.
ARRAYS = "arrays"
_KINDS = ("image", "clean", "noisy")


def _paths(root: Path, case: str) -> dict[str, Path]:
    return {k: root / ARRAYS / f"{case}_{k}.npy" for k in _KINDS}


def _channel_files(entry: dict) -> list[str]:
    return list(entry.get("images") or [entry["image"]])


def write_case_arrays(root: str | os.PathLike, case: str, entry: dict) -> None:
    """Write one case's uncompressed arrays (see the module docstring) from its NIfTI files, atomically."""
    root = Path(root)
    channels = [read_nifti(root / rel, dtype=np.float32)[0] for rel in _channel_files(entry)]
    if any(c.shape != channels[0].shape for c in channels):
        raise InputError(root / _channel_files(entry)[0], "channels of one case differ in shape")
    noisy_rel = entry.get("noisy_label")
    clean_rel = entry.get("label") or noisy_rel  # own labels: a train case has only its given label
    clean = read_nifti(root / clean_rel)[0]
    noisy = read_nifti(root / noisy_rel)[0] if noisy_rel else None
    for name, lab in (("label", clean), ("noisy label", noisy)):
        if lab is not None and lab.shape != channels[0].shape:
            raise InputError(root / clean_rel, f"{name} shape {list(lab.shape)} differs from its image "
                                               f"{list(channels[0].shape)}")
    arrays = {"image": np.ascontiguousarray(np.stack(channels).transpose(3, 0, 1, 2)),  # (C,X,Y,Z) -> (Z,C,X,Y)
              "clean": np.ascontiguousarray(np.moveaxis(clean, 2, 0).astype(np.uint8))}
    if noisy is not None:
        arrays["noisy"] = np.ascontiguousarray(np.moveaxis(noisy, 2, 0).astype(np.uint8))
    paths = _paths(root, case)
    paths["image"].parent.mkdir(exist_ok=True)
    for kind, array in arrays.items():
        with atomic_file(paths[kind]) as tmp, open(tmp, "wb") as fh:
            np.save(fh, array)


class CaseStore:
    """Lazy reads of a prepared segmentation dataset's cases (see the module docstring).

    Args:
        root: The prepared dataset folder.
        manifest: Its ``dataset.json``.
        cache_mb: Largest total size of the cases kept in memory (MiB); 0 = no cache.
    """

    def __init__(self, root: str | os.PathLike, manifest: dict, cache_mb: float = 2048.0) -> None:
        if not cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.root = Path(root)
        self.manifest = manifest
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self.cached_bytes = 0
        self.peak_cached_bytes = 0  # the most the cache ever held (tests and measurements read it)

    def entry(self, case: str) -> dict:
        entry = self.manifest["cases"].get(case)
        if entry is None:
            raise InputError(self.root / "dataset.json", f"has no case {case!r}")
        return entry

    def shape(self, case: str) -> tuple[int, int, int]:
        """The case's prepared ``(X, Y, Z)``."""
        return tuple(int(v) for v in self.entry(case)["prepared"]["size"])

    def has_noisy(self, case: str) -> bool:
        return bool(self.entry(case).get("noisy_label"))

    def _files(self, case: str) -> dict[str, Path]:
        paths = _paths(self.root, case)
        if not paths["image"].is_file() or (self.has_noisy(case) and not paths["noisy"].is_file()):
            write_case_arrays(self.root, case, self.entry(case))
        return paths

    def _load(self, path: Path, mmap: bool) -> np.ndarray:
        try:
            return np.load(path, mmap_mode="r" if mmap else None)
        except (OSError, ValueError) as exc:
            raise InputError(path, f"cannot read ({exc}); prepare the dataset again") from None

    def _case(self, case: str) -> dict[str, np.ndarray] | None:
        """The case's arrays from the cache (loaded into it if it fits), or None when it is larger than the cache."""
        if case in self._cache:
            self._cache.move_to_end(case)
            return self._cache[case]
        paths = self._files(case)
        kinds = [k for k in _KINDS if k != "noisy" or self.has_noisy(case)]
        nbytes = sum(int(np.prod(self._load(paths[k], True).shape)) * (4 if k == "image" else 1) for k in kinds)
        if nbytes > self.cache_bytes:
            return None
        while self._cache and self.cached_bytes + nbytes > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self.cached_bytes -= sum(a.nbytes for a in old.values())
        arrays = {k: self._load(paths[k], False) for k in kinds}
        self._cache[case] = arrays
        self.cached_bytes += nbytes
        self.peak_cached_bytes = max(self.peak_cached_bytes, self.cached_bytes)
        return arrays

    def read(self, case: str, z: int, *, noisy: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(image, label, clean)`` of slice ``z`` (``(C, X, Y)``, ``(X, Y)``, ``(X, Y)``), or of the whole
        volume for ``z = -1`` (``(C, X, Y, Z)``, ``(X, Y, Z)``, ``(X, Y, Z)``); copies, never views of the cache.
        ``noisy``: the label is the noisy map where the case has one, else the clean one."""
        arrays = self._case(case)
        if arrays is None:  # larger than the cache: read just what is asked, through a memory map
            paths = self._files(case)
            kinds = ["image", "clean"] + (["noisy"] if self.has_noisy(case) else [])
            arrays = {k: self._load(paths[k], True) for k in kinds}
        key = "noisy" if noisy and "noisy" in arrays else "clean"
        if z >= 0:
            return (np.array(arrays["image"][z]), np.array(arrays[key][z]), np.array(arrays["clean"][z]))
        return (np.ascontiguousarray(np.moveaxis(arrays["image"], 0, -1)),
                np.ascontiguousarray(np.moveaxis(arrays[key], 0, -1)),
                np.ascontiguousarray(np.moveaxis(arrays["clean"], 0, -1)))
