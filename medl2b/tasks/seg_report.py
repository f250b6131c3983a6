"""Evaluation of a segmentation run: each test case's prediction written on its raw grid, a metric row per
case (:func:`case_row`), the report (:func:`medl2b.evaluate.report.write_seg_report`) and the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.progress import track

from medl2b.data.grid import prediction_to_raw
from medl2b.data.msd import write_mask
from medl2b.data.nifti import geometry_from_affine, read_nifti
from medl2b.evaluate import figures as fig
from medl2b.evaluate.folder import (NATIVE_GRID, PREPARED_GRID, prepared_classes, raw_classes, read_label_map,
                                    score_case)
from medl2b.evaluate.report import write_seg_report
from medl2b.tasks.base import split_items

__all__ = ["case_row", "evaluate_cases"]


def case_row(manifest: dict, data: Path, case: str, pred: np.ndarray, clean: np.ndarray, raw_pred: np.ndarray,
             *, native: bool) -> dict:
    """The metrics of one case (:func:`medl2b.evaluate.folder.score_case`, with clDice): ``raw_pred`` (the
    prediction on the raw grid) against the raw reference label with the raw spacing when ``native``, else
    ``pred`` against the prepared clean label ``clean`` (both ``(X, Y, Z)`` uint8) with the prepared spacing."""
    info = manifest["cases"][case]
    if native:
        ref, ref_affine = read_label_map(data / info["raw_label"])
        return score_case(raw_pred, ref, geometry_from_affine(ref_affine, ref.shape).spacing, raw_classes(manifest),
                          where=data / info["raw_label"], centreline=True)
    return score_case(pred, clean, info["prepared"]["spacing"], prepared_classes(manifest),
                      where=data / info["label"], centreline=True)


def evaluate_cases(task, model, split: str, out: Path, device, *, checkpoint: str, figures: bool, progress: bool,
                   extra: dict, run: Path) -> dict:
    """Predict ``split`` with ``task`` (a :class:`~medl2b.tasks.segmentation.SegmentationTask`); write each
    prediction on its raw grid (``predictions/``) and score it there against the raw reference label with the
    raw spacing (``"metric_grid"``: native), as nnU-Net and the challenges do. A dataset prepared without
    ``labelsRaw/`` is scored on the prepared grid, and ``"metric_grid"`` says so. Returns the summary."""
    manifest, data = task.manifest, task.data
    cases = split_items(manifest, split)
    native = all(manifest["cases"][c].get("raw_label") for c in cases)
    per_case, volumes = [], {}
    for case in (track(cases, description="predicting") if progress else cases):
        info = manifest["cases"][case]
        pred, clean = task.predict_case(model, case, device)
        raw_pred, affine = prediction_to_raw(pred, manifest, case)
        ending = ".png" if manifest.get("image_2d") else ".nii.gz"  # a 2-D image dataset: PNG, as its labels
        write_mask(raw_pred, affine, out / "predictions" / f"{case}{ending}")
        per_case.append({"case": case, **case_row(manifest, data, case, pred, clean, raw_pred, native=native)})
        volumes[case] = (info["image"], clean, pred, info.get("noisy_label"))
    grid = NATIVE_GRID if native else PREPARED_GRID
    summary = write_seg_report(out, per_case=per_case, split=split, checkpoint=checkpoint,
                               empty_policy="worst", extra={**extra, "metric_grid": grid})
    if figures:
        _figures(task, model, run, out, volumes, device)
    return summary


def _figures(task, model, run: Path, out: Path, volumes: dict, device) -> None:
    """Overlays of the first four cases, the learning curves, and (meta methods) the α/β weight maps."""
    for case, (image_path, clean, pred, noisy_path) in list(volumes.items())[:4]:
        image = read_nifti(task.data / image_path)[0]
        noisy = read_nifti(task.data / noisy_path)[0] if noisy_path else None
        fig.plot_case_overlays(image, clean, pred, out / "figures" / f"overlay_{case}.png", noisy=noisy,
                               title=f"{case}: clean (green), prediction (red)")
    if (run / "metrics.csv").exists():
        fig.plot_learning_curves(run / "metrics.csv", out / "figures" / "learning_curves.png")
    if task.cfg.uses_meta:
        ex = task.weight_map_examples(model, device)
        if ex is not None:
            fig.plot_weight_maps(out / "figures" / "weight_maps.png", **ex)
