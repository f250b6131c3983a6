"""Annotation audit benchmark: does ``medl2b audit`` find the wrong annotations, and better than cleanlab?

Datasets with known synthetic corruption (one noisy label set each, noise seed 0):

* ``hippocampus``: the real MSD Task04 cases of ``data_prep/hippocampus/split.json`` (24 train
  cases), 48 px, **30 % of the train cases corrupted** at noise Dice 0.6 (``--noisy-fraction``);
  the unit ranked is the case;
* ``promise12``: phantom PROMISE12 (12 cases, 7 train), half of the train cases corrupted at 0.6;
* ``isic20`` / ``isic40``: phantom ISIC 2019 (480 images, 64 px), 20 % / 40 % symmetric noise; the
  unit is the image;
* ``isic-real40-pretrained``: the **real** ISIC 2019 images (HAM10000 part, ``--raw-isic``) of
  ``benchmarks/isic.py``: its committed lesion-grouped split (6,094 train images), 64 px, 40 %
  symmetric noise, noise seed 0, the shipped ``cpu`` profile (ImageNet-pretrained EfficientNet-Lite0).
  The ``l2b`` and ``ce`` runs of that benchmark (``bench_runs/isic_pretrained/runs/{l2b,ce}_0.4_s{seed}``)
  are audited as they are when they exist, so both benchmarks describe the same runs; the cleanlab
  folds are trained here;
* ``isic-real40``: the record before pretrained backbones: the same at 32 px with ``cpu-scratch``
  (ResNet-50 × 0.25 from scratch), runs of ``bench_runs/isic``.

Rankers, per seed (``--seeds``, default 3):

* **medl2b**: ``medl2b audit`` of an ``l2b`` run (the task's cpu profile; the paper's pure form,
  ``--method l2b-pure`` since ``--method l2b`` trains on its trusted cases, issue 37);
* **cleanlab**: cleanlab 2.9 on out-of-sample predicted probabilities, as cleanlab asks:
  ``--folds`` (default 3) ``ce`` runs, each trained without one fold of the train samples and
  predicting it; ``cleanlab.segmentation.rank.get_label_quality_scores`` per slice (a case's
  score is the mean over its slices) or ``cleanlab.rank.get_label_quality_scores`` per image;
* **loss**: the mean training loss on the given label of a plain ``ce`` run (from its record).

Metrics: AUROC and precision at K (K = the number of truly corrupted units), mean ± std over
seeds. cleanlab is an optional extra (``pip install -e '.[audit-bench]'``), never a core dependency.

    python benchmarks/audit.py                         # everything (hours on 2 CPU cores)
    python benchmarks/audit.py --datasets isic40 --seeds 1 --epochs 2   # a quick smoke run
    python benchmarks/audit.py --report-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
from accuracy import mean_std, write_benchmarks_md

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ("hippocampus", "promise12", "isic20", "isic40", "isic-real40", "isic-real40-pretrained")
#: the real ISIC rows: benchmarks/isic.py's work folder, prepared size and profile
REAL_ISIC = {"isic-real40": ("isic", 32, "cpu-scratch"), "isic-real40-pretrained": ("isic_pretrained", 64, "cpu")}
RANKERS = ("medl2b", "cleanlab", "loss")


def prepare(name: str, work: Path, raw_hippocampus: Path, raw_isic: Path, isic_work: Path) -> Path:
    out = work / f"data_{name}"
    if name in REAL_ISIC:  # the prepared data of benchmarks/isic.py (the same call, so the same arrays)
        isic_work = isic_work or ROOT / "bench_runs" / REAL_ISIC[name][0]
        size = REAL_ISIC[name][1]
        out = isic_work / f"isic_{size}px_noise0.4"
    if (out / "dataset.json").exists():
        return out
    if name in REAL_ISIC:
        from medl2b.data.isic2019 import prepare_isic2019

        prepare_isic2019(raw_isic, out, size=size, noise=0.4, split_file=ROOT / "data_prep/isic2019/split.json",
                         seed=0, progress=False)
    elif name == "hippocampus":
        from medl2b.data.msd import prepare_msd

        prepare_msd(raw_hippocampus, out, size=48, noise_dice=0.6, noisy_fraction=0.3, seed=0, progress=False,
                    split_file=ROOT / "data_prep/hippocampus/split.json")
    elif name == "promise12":
        from medl2b.data.phantoms import synth_promise12
        from medl2b.data.promise12 import prepare_promise12

        raw = work / "raw_promise12"
        if not raw.exists():
            synth_promise12(raw, n_cases=12, seed=0, grid_scale=0.5)
        prepare_promise12(raw, out, size=64, noise_dice=0.6, meta_cases=2, test_cases=3, noisy_fraction=0.5, seed=0,
                          progress=False)
    else:
        from medl2b.data.isic2019 import prepare_isic2019
        from medl2b.data.phantoms import synth_isic2019

        raw = work / "raw_isic2019"
        if not raw.exists():
            synth_isic2019(raw, n_images=480, seed=0)
        prepare_isic2019(raw, out, size=64, noise=int(name[4:]) / 100, n_meta=48, n_test=96, seed=0, progress=False)
    return out


def _task(data: Path) -> str:
    return json.loads((data / "dataset.json").read_text())["task"]


def _train(data: Path, run: Path, method: str, seed: int, epochs: int | None, profile: str = "cpu") -> None:
    from medl2b.config import load_config
    from medl2b.train.trainer import train

    if (run / "checkpoint_latest.pt").exists() and ((run / "done").exists() or _trained_out(run)):
        return  # finished (a run of benchmarks/isic.py has no "done"): an l2b run from before issue 37 that says
                # method l2b is the pure form, which a resume under today's l2b would refuse
    extra = {} if epochs is None else {"epochs": epochs, "warmup_epochs": max(1, epochs // 3)}
    cfg = load_config(_task(data), profile=profile, overrides={"data": str(data), "out": str(run), "method": method,
                                                             "seed": seed, "device": "auto", **extra})
    train(cfg, resume=True, progress=False)  # continues an interrupted run; a finished one is left as it is
    (run / "done").write_text("")


def _trained_out(run: Path) -> bool:
    """Whether ``run`` trained every epoch of its own ``config.yaml``."""
    import csv

    import yaml

    if not (run / "config.yaml").exists() or not (run / "metrics.csv").exists():
        return False
    epochs = int(yaml.safe_load((run / "config.yaml").read_text())["epochs"])
    with open(run / "metrics.csv") as fh:
        return len(list(csv.DictReader(fh))) >= epochs


def _fold_dataset(data: Path, keep: list, out: Path) -> Path:
    """A view of ``data`` whose train split is ``keep`` (the other files are symlinked, not copied)."""
    manifest = json.loads((data / "dataset.json").read_text())
    manifest["splits"] = {**manifest["splits"], "train": keep}
    out.mkdir(parents=True, exist_ok=True)
    for item in data.iterdir():
        if item.name != "dataset.json" and not (out / item.name).exists():
            os.symlink(item.resolve(), out / item.name)
    (out / "dataset.json").write_text(json.dumps(manifest))
    return out


def units_truth(data: Path) -> tuple[list, np.ndarray]:
    """The ranked units (train cases or train image indices) and whether each is corrupted."""
    from medl2b.data.nifti import read_nifti

    manifest = json.loads((data / "dataset.json").read_text())
    train = manifest["splits"]["train"]
    if manifest["task"] == "skin-lesion-cls":
        entries = manifest["images"]
        return train, np.array([entries[i]["label"] != entries[i]["noisy_label"] for i in train])
    truth = []
    for case in train:
        e = manifest["cases"][case]
        truth.append(not np.array_equal(read_nifti(data / e["noisy_label"])[0], read_nifti(data / e["label"])[0]))
    return train, np.array(truth)


def cleanlab_scores(data: Path, work: Path, seed: int, folds: int, epochs: int | None,
                    profile: str = "cpu") -> np.ndarray:
    """Suspicion (1 − cleanlab label quality) per unit, from out-of-fold probabilities of ``ce`` runs."""
    import torch.nn.functional as F

    from medl2b.evaluate.run import load_run
    from medl2b.inference import predict_logits

    units, _ = units_truth(data)
    order = np.random.default_rng([seed, 5]).permutation(len(units))
    quality = np.full(len(units), np.nan)
    for f in range(folds):
        held = sorted(order[f::folds].tolist())
        keep = [units[i] for i in range(len(units)) if i not in set(held)]
        view = _fold_dataset(data, keep, work / f"fold{f}_s{seed}_data")
        run = work / f"fold{f}_s{seed}"
        _train(view, run, "ce", seed, epochs, profile)
        model, cfg = load_run(run, checkpoint="best")
        if _task(data) == "skin-lesion-cls":
            from cleanlab.rank import get_label_quality_scores

            from medl2b.data.datasets import IsicDataset, load_isic
            from medl2b.inference import predict_dataset

            images = load_isic(data, "train")
            sub = type(images)(images.images, images.index[held], images.label[held], images.clean[held],
                               images.classes)
            logits, given, _ = predict_dataset(model, IsicDataset(sub), batch_size=64,
                                               transform=lambda b: b)
            quality[held] = get_label_quality_scores(given.numpy(), F.softmax(logits.float(), 1).numpy())
        else:
            from cleanlab.segmentation.rank import get_label_quality_scores

            from medl2b.data.datasets import load_slices

            for i in held:
                sl = load_slices(data, [units[i]], label="noisy")
                probs = F.softmax(predict_logits(model, sl.image, batch_size=64).float(), 1).numpy()
                scores, _ = get_label_quality_scores(sl.label.numpy(), probs, verbose=False)
                quality[i] = float(np.mean(scores))
    return 1.0 - quality


def run_seed(name: str, data: Path, work: Path, seed: int, folds: int, epochs: int | None,
             isic_work: Path | None = None) -> dict:
    from medl2b.audit import audit_run, ranking_quality

    units, truth = units_truth(data)
    row = {"dataset": name, "seed": seed, "n": len(units), "n_corrupted": int(truth.sum())}
    t = time.time()
    l2b_run, ce_run = work / f"l2b_s{seed}", work / f"ce_s{seed}"
    profile = REAL_ISIC[name][2] if name in REAL_ISIC else "cpu"
    if name in REAL_ISIC and epochs is None:  # the runs of benchmarks/isic.py
        isic_work = isic_work or ROOT / "bench_runs" / REAL_ISIC[name][0]
        l2b_run, ce_run = (isic_work / "runs" / f"{m}_0.4_s{seed}" for m in ("l2b", "ce"))
    _train(data, l2b_run, "l2b-pure", seed, epochs, profile)  # the rows' l2b: the pure form (issue 37)
    audit_run(l2b_run, figures=False)
    ours = _scores_from_ranking(l2b_run / "audit" / "ranking.csv", units, "score", data)
    row["medl2b"] = ranking_quality(ours, truth)
    _train(data, ce_run, "ce", seed, epochs, profile)
    audit_run(ce_run, out=ce_run / "audit", figures=False)
    # a run without meta steps records no weights: its audit's first signal is the mean training loss
    loss = _scores_from_ranking(ce_run / "audit" / "ranking.csv", units, "meta_signal", data)
    row["loss_unscored"] = int((~np.isfinite(loss)).sum())  # never drawn by a class-balanced sampler: no loss
    row["loss"] = ranking_quality(_lowest_if_unscored(loss), truth)
    row["cleanlab"] = ranking_quality(cleanlab_scores(data, work, seed, folds, epochs, profile), truth)
    row["seconds"] = round(time.time() - t, 1)
    return row


def _lowest_if_unscored(scores: np.ndarray) -> np.ndarray:
    """Units without a score (−inf: e.g. never drawn by ``train_balance``'s sampler, so no training loss)
    rank below every scored unit."""
    finite = np.isfinite(scores)
    if finite.all() or not finite.any():
        return scores if finite.all() else np.zeros_like(scores)
    return np.where(finite, scores, scores[finite].min() - 1.0)


def _scores_from_ranking(path: Path, units: list, column: str, data: Path) -> np.ndarray:
    """One column of an audit's ranking.csv, in the order of ``units`` (unscored = −inf)."""
    import csv

    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    key = "case" if "case" in rows[0] else "image"
    by = {r[key]: float(r[column]) if r[column] != "" else -math.inf for r in rows}
    if key == "image":  # ranking.csv names images; the units are their indices in the store
        names = [e["image"] for e in json.loads((data / "dataset.json").read_text())["images"]]
        units = [names[u] for u in units]
    return np.array([by[u] for u in units])


def table(rows: list[dict]) -> str:
    out = ["### Annotation audit (known synthetic corruption; mean ± std over seeds)", "",
           "| dataset | units | corrupted | seeds | " + " | ".join(f"{r} AUROC | {r} P@K" for r in RANKERS) + " |",
           "|---|---|---|---|" + "---|---|" * len(RANKERS)]
    for name in DATASETS:
        rs = [r for r in rows if r["dataset"] == name]
        if not rs:
            continue
        cells = []
        for ranker in RANKERS:
            for metric in ("auroc", "precision_at_k"):
                m, s = mean_std([r[ranker][metric] for r in rs if r[ranker][metric] is not None])
                cells.append(f"{m:.3f} ± {s:.3f}" if math.isfinite(m) else "–")
        out.append(f"| {name} | {rs[0]['n']} | {rs[0]['n_corrupted']} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "bench_runs" / "audit")
    ap.add_argument("--raw", type=Path, default=ROOT.parent / "shared" / "data" / "Task04_Hippocampus")
    ap.add_argument("--raw-isic", type=Path, default=ROOT.parent / "shared" / "data" / "ISIC2019_HAM10000")
    ap.add_argument("--isic-work", type=Path, default=None,
                    help="benchmarks/isic.py's --work (default: bench_runs/isic_pretrained for isic-real40-pretrained, "
                         "bench_runs/isic for isic-real40): its prepared data and runs are audited")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="override the cpu profile's epochs (smoke runs)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = args.work / "results.jsonl"
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    finished = {(r["dataset"], r["seed"]) for r in done}
    for name in args.datasets.split(","):
        if args.report_only:
            break
        if name not in DATASETS:
            ap.error(f"unknown dataset {name}; choose from {DATASETS}")
        data = prepare(name, args.work, args.raw, args.raw_isic, args.isic_work)
        for seed in range(args.seeds):
            if (name, seed) in finished:
                continue
            row = run_seed(name, data, args.work / name, seed, args.folds, args.epochs, args.isic_work)
            done.append(row)
            with open(results, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{name} seed {seed}: " + ", ".join(f"{r} AUROC {row[r]['auroc']}" for r in RANKERS), flush=True)
    text = table(done) + f"\n\nCommand: `python benchmarks/audit.py --seeds {args.seeds}`."
    print(text)
    if not args.no_write and done and args.epochs is None:
        write_benchmarks_md(text, section="audit")


if __name__ == "__main__":
    main()
