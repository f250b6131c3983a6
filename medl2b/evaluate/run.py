"""``medl2b eval``: load a run's checkpoint, predict a split, write metrics, predictions and figures.

Evaluation reads the run folder (``config.yaml`` and a checkpoint), never the
trainer. Output goes to ``RUN/eval/`` (or ``--out``)::

    summary.json, metrics.csv, report.md          (see medl2b.evaluate.report)
    predictions/CaseNN.nii.gz                     segmentation, on the raw case's original grid
    figures/overlay_CaseNN.png                    image + clean / noisy / predicted contours
    figures/weight_maps.png                       L2B-family runs: learned α and β maps
    figures/learning_curves.png                   from the run's metrics.csv
    confusion_matrix.png                          classification

Segmentation metrics are computed per case in 3-D at native resolution: the prediction
resampled back to the raw grid (the file in ``predictions/``) against the raw reference
label the prepared dataset keeps in ``labelsRaw/``, with the raw spacing (mm), as nnU-Net's
``summary.json`` and the challenges do; ``summary.json``'s ``"metric_grid"`` says so. A dataset
prepared before ``labelsRaw/`` existed is scored on the prepared grid, and ``"metric_grid"``
says that instead (:data:`medl2b.evaluate.folder.PREPARED_GRID`). Validation during training
stays on the prepared grid (it is a model-selection signal, not a reported result).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from medl2b.config import load_config_file
from medl2b.device import resolve_device
from medl2b.errors import InputError
from medl2b.models import build_model
from medl2b.runlock import run_lock
from medl2b.tasks import build_task

__all__ = ["load_run", "evaluate_run"]

log = logging.getLogger("medl2b")


def load_run(run: str | Path, *, checkpoint: str = "best", device: str = "cpu"):
    """Return ``(model, cfg)`` of a run folder's ``checkpoint_{best|latest}.pt`` in eval mode."""
    run = Path(run)
    if checkpoint not in ("best", "latest"):
        raise InputError("--checkpoint", f"must be best or latest, got {checkpoint!r}")
    cfg_path, ckpt_path = run / "config.yaml", run / f"checkpoint_{checkpoint}.pt"
    if not cfg_path.exists():
        raise InputError(run, "not a run folder (no config.yaml)")
    if not ckpt_path.exists():
        raise InputError(ckpt_path, "checkpoint not found; train the run first")
    cfg = load_config_file(cfg_path)
    try:
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
    except Exception as exc:
        raise InputError(ckpt_path, f"cannot read checkpoint ({type(exc).__name__})") from None
    cfg.pretrained = None  # the weights come from the checkpoint
    model = build_model(cfg, num_classes=int(state["num_classes"]), in_channels=int(state.get("in_channels", 1)))
    model = model.to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg


def evaluate_run(run: str | Path, *, data: str | Path | None = None, split: str = "test", checkpoint: str = "best",
                 out: str | Path | None = None, device: str = "auto", figures: bool = True,
                 progress: bool = False) -> dict:
    """Evaluate one run folder on a split of its prepared dataset; return the summary dict.

    The run's task predicts the split (slices, sliding windows or images) and writes the report.
    """
    run = Path(run)
    with run_lock(run, what="eval", create=False):  # no training (or other eval) writes it meanwhile
        dev = resolve_device(device)
        model, cfg = load_run(run, checkpoint=checkpoint, device=str(dev))
        data = Path(data or cfg.data or "")
        if not (data / "dataset.json").exists():
            raise InputError(data, "no prepared dataset here (dataset.json missing); pass --data")
        cfg.data = str(data)
        out = Path(out) if out else run / "eval"
        task = build_task(cfg, training=False)
        return task.evaluate(model, split, out, dev, checkpoint=checkpoint, figures=figures, progress=progress, run=run,
                             extra={"run": str(run), "method": cfg.method, "data": str(data)})
