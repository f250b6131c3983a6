"""``medl2b eval --pred FOLDER --ref FOLDER``: score any folder of predicted label maps.

Each prediction image (NIfTI, MetaImage, NRRD, or a 2-D PNG, BMP, TIFF) is matched by case name (the file
name without its ending) to a reference in ``ref``, which must lie on the same grid (shape and affine; for
2-D image files, which rarely carry a geometry, the size only). Per case and per class: Dice, HD95 and ASD
in mm with the reference's voxel spacing (2-D images: in pixels, unless the reference file carries a
spacing; a one-slice map is scored as a 2-D image), the same metrics
(:mod:`medl2b.evaluate.metrics`) and the same files (``summary.json``, ``metrics.csv``, ``report.md``,
:func:`medl2b.evaluate.report.write_seg_report`) as ``medl2b eval RUN``; the empty-mask policy is
``worst``. References without a prediction are left out (and counted); a prediction without a
reference is an error.

Classes: ``labels`` is a ``dataset.json`` (MSD v1, nnU-Net v2 or a prepared one) whose label values and
names are used; without it, every non-zero value found in the references is a class named by its value.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from medl2b.data.msd import (AFFINE_TOL, IMAGE_ENDINGS, NATURAL_ENDINGS, is_natural_image, load_file,
                              load_natural_image, read_labels)
from medl2b.data.nifti import geometry_from_affine
from medl2b.errors import InputError
from medl2b.evaluate.metrics import compute_case_metrics, compute_multiclass_case_metrics
from medl2b.evaluate.report import write_seg_report
from medl2b.progress import progress_bar

__all__ = ["LABEL_ENDINGS", "NATIVE_GRID", "PREPARED_GRID", "evaluate_folder", "prepared_classes", "raw_classes",
           "read_label_map", "read_label_names", "score_case"]

#: File endings of the label maps read (JPEG is lossy: no label maps).
LABEL_ENDINGS = IMAGE_ENDINGS + tuple(e for e in NATURAL_ENDINGS if e not in (".jpg", ".jpeg"))
#: ``summary.json``'s ``"metric_grid"`` of ``medl2b eval RUN``: native resolution (the default) ...
NATIVE_GRID = ("native: the prediction resampled back to the raw grid (nearest neighbour), against the raw "
               "reference label, raw spacing (mm)")
#: ... or, for a dataset prepared before ``labelsRaw/`` existed, the prepared grid.
PREPARED_GRID = "prepared grid, prepared spacing (mm); not comparable with native-resolution results"


def _images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        ending = next((e for e in LABEL_ENDINGS if p.name.lower().endswith(e)), None)
        if p.is_file() and ending and not p.name.startswith("."):
            case = p.name[: -len(ending)]
            if case in found:
                raise InputError(p, f"case {case} has two files here ({found[case].name}, {p.name})")
            found[case] = p
    return found


def read_label_names(path: str | os.PathLike) -> dict[int, str]:
    """Foreground label value -> name from a ``dataset.json``: a prepared one (``labels`` name -> index and
    ``label_values`` index -> raw value) or a raw MSD v1 / nnU-Net v2 one."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read ({exc})") from None
    if not isinstance(meta, dict):
        raise InputError(path, "must hold a JSON object")
    if isinstance(meta.get("label_values"), dict) and isinstance(meta.get("labels"), dict):  # prepared
        values = meta["label_values"]
        labels = {int(values[str(i)]): str(n) for n, i in meta["labels"].items()}
    else:
        labels = read_labels(meta, path)
    return {v: n for v, n in sorted(labels.items()) if v != 0}


def raw_classes(manifest: dict) -> dict[int, str]:
    """A prepared dataset's foreground classes as raw label value -> name."""
    values = manifest.get("label_values") or {}
    return {int(values.get(str(i), i)): n for n, i in manifest["labels"].items() if int(i) != 0}


def prepared_classes(manifest: dict) -> dict[int, str]:
    """A prepared dataset's foreground classes as index -> name."""
    return {int(i): n for n, i in sorted(manifest["labels"].items(), key=lambda kv: kv[1]) if int(i) != 0}


def score_case(pred: np.ndarray, ref: np.ndarray, spacing, classes: dict[int, str], *, where,
               centreline: bool = False) -> dict:
    """Metrics of one predicted label map against its reference on the same grid (``spacing`` in mm): the
    binary view for one class, else per class and their mean (:mod:`medl2b.evaluate.metrics`). A one-slice
    map ``(x, y, 1)`` is scored as a 2-D image (in-plane spacing)."""
    if pred.shape != ref.shape:
        raise InputError(where, f"shape {list(ref.shape)} differs from the prediction's {list(pred.shape)}")
    spacing = tuple(float(s) for s in spacing)
    if ref.ndim == 3 and ref.shape[2] == 1:  # one slice: surfaces in-plane, distances with the in-plane spacing
        pred, ref, spacing = pred[:, :, 0], ref[:, :, 0], spacing[:2]
    if len(classes) == 1:  # binary: the plain view
        value = next(iter(classes))
        return compute_case_metrics(pred == value, ref == value, spacing, centreline=centreline)
    return compute_multiclass_case_metrics(pred, ref, spacing, classes=classes, centreline=centreline)


def read_label_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An integer label map ``(x, y, z)`` (a 2-D image: ``(x, y, 1)``) and its 4x4 RAS affine, read from any
    :data:`LABEL_ENDINGS` file; an :class:`InputError` naming the file otherwise."""
    if is_natural_image(path.name):
        data, affine = load_natural_image(path, 1)
        if data.shape[3] != 1:
            raise InputError(path, f"has {data.shape[3]} channels; a label map has one (integer label values)")
        return _integer_labels(data[..., 0], path), affine
    data, affine = load_file(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3-D label map, got shape {tuple(data.shape)}")
    return _integer_labels(data, path), affine


def _integer_labels(data: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(data.dtype, np.integer):
        if not (np.all(np.isfinite(data)) and np.all(np.mod(data, 1) == 0)):
            raise InputError(path, "holds non-integer label values")
    return data.astype(np.int64)


def evaluate_folder(pred: str | os.PathLike, ref: str | os.PathLike, *, labels: str | os.PathLike | None = None,
                    out: str | os.PathLike | None = None, progress: bool = False) -> dict:
    """Score the label maps in ``pred`` against those in ``ref``; write the report into ``out`` (default
    ``pred``) and return the summary (see the module docstring)."""
    pred, ref = Path(pred), Path(ref)
    preds, refs = _images(pred), _images(ref)
    if not preds:
        raise InputError(pred, f"holds no label maps ({', '.join(LABEL_ENDINGS)})")
    missing = [c for c in preds if c not in refs]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(preds[missing[0]], f"has no reference {missing[0]}.* in {ref}{more}")
    if labels is not None:
        classes = read_label_names(labels)
    else:  # every value present in the references
        values: set[int] = set()
        for case in preds:
            values |= set(np.unique(read_label_map(refs[case])[0]).tolist())
        classes = {int(v): str(v) for v in sorted(values) if v != 0}
        if not classes:
            raise InputError(ref, "the references hold no foreground label; pass --labels dataset.json")
    allowed = np.array([0, *classes], dtype=np.int64)
    per_case = []
    with progress_bar(progress, len(preds), "scoring") as advance:
        for case in sorted(preds):
            p, p_aff = read_label_map(preds[case])
            t, t_aff = read_label_map(refs[case])
            if p.shape != t.shape:
                raise InputError(preds[case], f"shape {list(p.shape)} differs from that of its reference "
                                              f"{refs[case]} {list(t.shape)}")
            flat = is_natural_image(preds[case].name) or is_natural_image(refs[case].name)  # no geometry to compare
            if not flat and not np.allclose(p_aff, t_aff, atol=AFFINE_TOL, rtol=0):
                diff = float(np.abs(p_aff - t_aff).max())
                raise InputError(preds[case], f"lies on another grid than its reference {refs[case]} (affines "
                                              f"differ by up to {diff:.4g})")
            for path, arr in ((preds[case], p), (refs[case], t)):
                bad = np.unique(arr[~np.isin(arr, allowed)])
                if bad.size:
                    raise InputError(path, f"holds label value(s) {bad[:10].tolist()} that are neither 0 nor a "
                                           f"class {sorted(classes)}")
            spacing = geometry_from_affine(t_aff, t.shape).spacing
            per_case.append({"case": case, **score_case(p, t, spacing, classes, where=refs[case])})
            advance(f"scoring {case}")
    out = Path(out) if out is not None else pred
    extra = {"pred": str(pred), "ref": str(ref), "labels": {str(v): n for v, n in classes.items()},
             "n_references_unused": len(set(refs) - set(preds)),
             "metric_grid": "reference grid, reference spacing (mm; 2-D images without a spacing: pixels)"}
    return write_seg_report(out, per_case=per_case, split="folder", checkpoint=str(pred), empty_policy="worst",
                            extra=extra)
