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

__all__ = ["LABEL_ENDINGS", "evaluate_folder", "read_label_names"]

#: File endings of the label maps read (JPEG is lossy: no label maps).
LABEL_ENDINGS = IMAGE_ENDINGS + tuple(e for e in NATURAL_ENDINGS if e not in (".jpg", ".jpeg"))


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


def _label_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
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
            values |= set(np.unique(_label_map(refs[case])[0]).tolist())
        classes = {int(v): str(v) for v in sorted(values) if v != 0}
        if not classes:
            raise InputError(ref, "the references hold no foreground label; pass --labels dataset.json")
    allowed = np.array([0, *classes], dtype=np.int64)
    per_case = []
    with progress_bar(progress, len(preds), "scoring") as advance:
        for case in sorted(preds):
            p, p_aff = _label_map(preds[case])
            t, t_aff = _label_map(refs[case])
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
            if t.shape[2] == 1:  # one slice: a 2-D image (surfaces in-plane, distances with the in-plane spacing)
                p, t, spacing = p[:, :, 0], t[:, :, 0], spacing[:2]
            if len(classes) == 1:  # binary: the plain view, as `medl2b eval RUN`
                row = {"case": case, **compute_case_metrics(p > 0, t > 0, spacing)}
            else:
                row = {"case": case, **compute_multiclass_case_metrics(p, t, spacing, classes=classes)}
            per_case.append(row)
            advance(f"scoring {case}")
    out = Path(out) if out is not None else pred
    extra = {"pred": str(pred), "ref": str(ref), "labels": {str(v): n for v, n in classes.items()},
             "n_references_unused": len(set(refs) - set(preds)),
             "metric_grid": "reference grid, reference spacing (mm; 2-D images without a spacing: pixels)"}
    return write_seg_report(out, per_case=per_case, split="folder", checkpoint=str(pred), empty_policy="worst",
                            extra=extra)
