"""Data: your own labels (MSD / nnU-Net with trusted labels, image folders with CSVs), phantoms, the PROMISE12
and ISIC 2019 preparation, and the torch datasets.

Submodules are imported on first use, so importing :mod:`medl2b.data.nifti` does
not pull in torch or SimpleITK.
"""

from __future__ import annotations

import importlib

__all__ = [
    "IsicDataset",
    "SegSliceDataset",
    "load_isic",
    "load_manifest",
    "load_slices",
    "prepare_images",
    "prepare_isic2019",
    "prepare_msd",
    "prepare_promise12",
    "synth_isic2019",
    "synth_promise12",
    "to_original_grid",
]

_WHERE = {
    "IsicDataset": "datasets", "SegSliceDataset": "datasets", "load_isic": "datasets",
    "load_manifest": "datasets", "load_slices": "datasets", "prepare_images": "images", "prepare_isic2019": "isic2019", "prepare_msd": "msd",
    "prepare_promise12": "promise12", "synth_isic2019": "phantoms", "synth_promise12": "phantoms",
    "to_original_grid": "promise12",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"medl2b.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'medl2b.data' has no attribute {name!r}")
