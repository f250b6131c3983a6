"""A run's own copy of its prepared dataset's preprocessing record, so that a run folder is self-contained.

As nnU-Net copies ``dataset.json`` and ``plans.json`` into its results folders, ``medl2b train`` copies the
prepared dataset's manifest into the run as ``RUN/preprocessing.json`` when the run starts: orientation and
slice axis, the prepared grid, the intensity normalisation, label names and raw label values, channel names
(segmentation), class names and image size (classification). ``medl2b predict`` and ``medl2b.load_run``
read it, so prediction works with the prepared dataset moved or deleted, on another machine.

Per-image lists of a classification dataset (``images``, ``splits``, ``class_counts``) stay out: they can be
large (25k ISIC images) and prediction does not need them. A segmentation record keeps the per-case
entries: their prepared sizes fix the sliding-window size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from medl2b.errors import InputError, atomic_file

__all__ = ["RECORD_NAME", "load_record", "preprocessing_record", "save_record"]

RECORD_NAME = "preprocessing.json"
_PER_IMAGE = ("images", "splits", "class_counts")


def preprocessing_record(manifest: dict, data: str | os.PathLike | None = None) -> dict:
    """The part of a prepared dataset's manifest a prediction needs, with where it came from."""
    segmentation = manifest.get("task") in ("segmentation", "prostate-seg")
    record = {k: v for k, v in manifest.items() if segmentation or k not in _PER_IMAGE}
    record["record_of"] = {"data": None if data is None else str(Path(data).resolve()),
                           "note": "the prepared dataset's dataset.json, copied when the run started (medl2b "
                                   "predict reads this copy; per-image lists left out for classification)"}
    return record


def save_record(run: str | os.PathLike, manifest: dict, data: str | os.PathLike | None = None) -> Path:
    """Write ``RUN/preprocessing.json`` atomically."""
    path = Path(run) / RECORD_NAME
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(preprocessing_record(manifest, data), indent=1) + "\n")
    return path


def load_record(run: str | os.PathLike) -> dict | None:
    """A run's preprocessing record; None for a run trained before runs kept one."""
    path = Path(run) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read the run's preprocessing record ({exc})") from None
    if not isinstance(record, dict) or record.get("format_version") != 1:
        raise InputError(path, "not a preprocessing record of this medl2b (format_version 1)")
    return record
