"""Are the network's pseudo-labels better than the given labels, and where? (issues 25 and 26)

For each run folder, with its best checkpoint: on the training samples whose pseudo-label (the network's
prediction) differs from the given noisy label, the share where the pseudo-label is right and the share where
the given label is right, by the network's confidence (largest softmax probability). This uses the training
data's clean labels, which a user does not have: it is a diagnosis, not a way to choose a setting. The
second table is what a user can measure: the pseudo-labels' precision on the clean meta samples, by the same
confidence bands; ``pseudo_floor`` is chosen from it (segmentation: the non-trivial pixels, those predicted
or labelled foreground or with confidence below 0.99).

    python benchmarks/pseudo_calibration.py bench_runs/hippocampus/runs/ce_0.8_s0 ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from medl2b.data.datasets import IsicDataset
from medl2b.evaluate.run import load_run
from medl2b.tasks import build_task

BANDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.01)


def _seg_probs(model, slices, batch: int = 64) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([torch.softmax(model(slices.image[i:i + batch].float()), 1)
                          for i in range(0, len(slices.image), batch)])


def predictions(run: Path) -> tuple[dict[str, tuple[np.ndarray, ...]], bool]:
    """``({"train": (confidence, pseudo, given, clean), "meta": (...)}, segmentation?)``, flattened over samples
    (pixels)."""
    model, cfg = load_run(run, checkpoint="best")
    cfg.method = "ce"  # the plain noisy training set, whatever the run trained on
    cfg.val_holdout = 0.0
    task = build_task(cfg, training=True)
    out = {}
    if cfg.is_segmentation:
        sets = {"train": task.train_slices, "meta": task.meta_slices}
        for name, s in sets.items():
            conf, pred = _seg_probs(model, s).max(1)
            label = s.label if name == "train" else s.clean
            out[name] = (conf.numpy().ravel(), pred.numpy().ravel(), label.numpy().ravel(), s.clean.numpy().ravel())
    else:
        for name, images in (("train", task.train_images), ("meta", task.meta_images)):
            logits = task._predict(model, IsicDataset(images), torch.device("cpu"))[0]
            conf, pred = torch.softmax(logits.float(), 1).max(1)
            out[name] = (conf.numpy(), pred.numpy(), np.asarray(images.label), np.asarray(images.clean))
    return out, cfg.is_segmentation


def tables(run: Path) -> str:
    p, segmentation = predictions(run)
    conf, pred, given, clean = p["train"]
    differ = pred != given
    lines = [f"\n{run.name}: training samples where the pseudo-label differs from the given one: "
             f"{differ.mean():.1%}; pseudo-label right on {np.mean(pred[differ] == clean[differ]):.1%} of them, "
             f"given label on {np.mean(given[differ] == clean[differ]):.1%}",
             "| confidence | share of those | pseudo right | given right |", "|---|---|---|---|"]
    for lo, hi in zip(BANDS[:-1], BANDS[1:]):
        m = differ & (conf >= lo) & (conf < hi)
        if m.any():
            lines.append(f"| [{lo:.2f}, {min(hi, 1.0):.2f}) | {m.sum() / differ.sum():.3f} | "
                         f"{np.mean(pred[m] == clean[m]):.3f} | {np.mean(given[m] == clean[m]):.3f} |")
    conf, pred, _, clean = p["meta"]
    keep = ((pred > 0) | (clean > 0) | (conf < 0.99)) if segmentation else np.ones_like(pred, dtype=bool)
    lines += ["", "| confidence | clean meta samples | pseudo-label precision |", "|---|---|---|"]
    for lo, hi in zip(BANDS[:-1], BANDS[1:]):
        m = keep & (conf >= lo) & (conf < hi)
        if m.any():
            lines.append(f"| [{lo:.2f}, {min(hi, 1.0):.2f}) | {m.sum()} | {np.mean(pred[m] == clean[m]):.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        print(tables(run), flush=True)


if __name__ == "__main__":
    main()
