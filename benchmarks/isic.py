"""The paper's ISIC 2019 experiment on real dermoscopy: per-sample L2B against CE and the baselines.

Data: the 8,014 real ISIC 2019 images (HAM10000 part) in ``../shared/data/ISIC2019_HAM10000``
(``--raw``), prepared with ``medl2b prepare isic2019 --split-file data_prep/isic2019/split.json``:
a lesion-grouped, class-stratified split of 1,600 test, 320 clean meta (4 %) and 6,094 noisy
training images (see data_prep/isic2019/README.md for why 4 % and not the paper's 2.5 %).
Symmetric noise at 20 % and 40 % on the training split, one noisy label set per level (noise
seed 0) shared by every method and seed: the runs are paired.

Methods (``medl2b train --task skin-lesion-cls --profile cpu --method ...``): ``ce``,
``bootstrap``, ``l2rw``, ``l2b`` (the defaults, class-balanced meta batches, in the paper's pure form:
``--method l2b-pure``, see :data:`METHOD`), ``ce+clean``
(noisy train + the clean meta images), ``meta-only`` (the clean meta images alone),
``oracle`` (``ce`` on the clean labels; the same at every level), and ``l2b-nobal``
(``l2b`` with ``meta_balance: false``, the meta batches of the old default).

Runs go in priority order, every seed of a block before the next block:

1. 40 %: ce, l2b, oracle;
2. 20 %: ce, l2b;
3. 40 %: ce+clean, meta-only; 20 %: ce+clean;
4. 40 %: bootstrap, l2rw;
5. 40 %: l2b-nobal (an ablation, only with ``--blocks 5``);
6. 40 %: ce-holdout, l2b-holdout: ``val_holdout: 0.25``, a quarter of the clean meta images (whole lesions,
   per class) validates only and leaves the meta set (only with ``--blocks 6``).
7. 40 %: l2b-floor7: ``pseudo_floor: 0.7``, the pseudo-label term only where the network's confidence is at
   least 0.7 (only with ``--blocks 7``).

Each run trains with the ``cpu`` profile of ``skin-lesion-cls``, is evaluated on the 1,600
test images with its best checkpoint (chosen on the clean meta images' balanced accuracy, never on
test), and is appended to ``--work/results.jsonl`` with its weight statistics (from the
run's per-sample record: mean N·α and β share on wrongly and rightly labelled images, per
class). Finished runs are skipped when the script is started again; ``--report-only``
writes the tables from what has finished, between the ``isic`` markers of BENCHMARKS.md.

    python benchmarks/isic.py --workers 2      # blocks 1-4, 3 seeds: the tables in BENCHMARKS.md (~2 h on 2 cores)
    python benchmarks/isic.py --blocks 1       # block 1 only
    python benchmarks/isic.py --report-only    # tables from the finished runs
    python benchmarks/isic.py                  # the same in one process

``--setup pretrained`` (the default) runs the shipped ``cpu`` profile (ImageNet-pretrained EfficientNet-Lite0,
64 px) into ``bench_runs/isic_pretrained``; its finished runs are committed in
``benchmarks/results/isic_pretrained_results.jsonl`` (copy it to ``bench_runs/isic_pretrained/results.jsonl`` to
continue). ``--setup scratch`` is the record before pretrained backbones (``cpu-scratch``: ResNet-50 x 0.25 from
scratch at 32 px), committed in ``benchmarks/results/isic_results.jsonl`` (copy it to
``bench_runs/isic/results.jsonl``). Earlier profiles' runs are kept, each readable with
``--report-only`` from a ``--work`` folder holding it as results.jsonl:
``isic_results_6epochs.jsonl`` (6 epochs, per-image augmentation) and ``isic_results_unbalanced.jsonl``
(6 epochs, before ``train_balance`` became the default).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accuracy import fmt, mean_std, paired, times, write_benchmarks_md

from medl2b.config import load_config, load_config_file
from medl2b.data.datasets import IsicDataset, load_isic
from medl2b.data.isic2019 import CLASSES, prepare_isic2019
from medl2b.evaluate.metrics import classification_metrics
from medl2b.evaluate.run import evaluate_run, load_run
from medl2b.tasks import build_task
from medl2b.train.record import FIELDS
from medl2b.runlock import run_lock
from medl2b.train.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
#: the profile, prepared image size, work folder and BENCHMARKS.md section of each record
SETUPS = {"pretrained": {"profile": "cpu", "size": 64, "work": "isic_pretrained", "section": "isic-pretrained",
                         "what": "EfficientNet-Lite0, ImageNet-pretrained, at 64 px"},
          "scratch": {"profile": "cpu-scratch", "size": 32, "work": "isic", "section": "isic",
                      "what": "ResNet-50 × 0.25 from scratch at 32 px"}}
SETUP = SETUPS["pretrained"]
SHARED = {"meta-only", "oracle"}  # independent of the noise level
#: row name -> (config method, overrides); other rows run the method they name. The rows named ``l2b...`` are the
#: paper's pure form: ``--method l2b-pure`` since ``--method l2b`` trains on its trusted cases (issue 37)
METHOD = {"oracle": ("ce", {"label_source": "clean"}), "l2b": ("l2b-pure", {}),
          "l2b-nobal": ("l2b-pure", {"meta_balance": False}),
          "ce-holdout": ("ce", {"val_holdout": 0.25}), "l2b-holdout": ("l2b-pure", {"val_holdout": 0.25}),
          "l2b-floor7": ("l2b-pure", {"pseudo_floor": 0.7})}
BLOCKS = [
    [(0.4, m) for m in ("ce", "l2b", "oracle")],
    [(0.2, m) for m in ("ce", "l2b")],
    [(0.4, "ce+clean"), (0.4, "meta-only"), (0.2, "ce+clean")],
    [(0.4, m) for m in ("bootstrap", "l2rw")],
    [(0.4, "l2b-nobal")],
    [(0.4, "ce-holdout"), (0.4, "l2b-holdout")],
    [(0.4, "l2b-floor7")],
]
ORDER = ("ce", "bootstrap", "l2rw", "ce+clean", "meta-only", "l2b-nobal", "ce-holdout", "l2b-holdout", "l2b-floor7", "l2b",
         "oracle")
PAPER = {"ce": {0.2: 79.4, 0.3: 77.5, 0.4: 75.3, 0.5: 73.7}, "l2b": {0.2: 81.1, 0.3: 80.2, 0.4: 78.6, 0.5: 76.8}}


def prepare(raw: Path, work: Path, levels) -> dict[float, Path]:
    data = {}
    for level in levels:
        out = work / f"isic_{SETUP['size']}px_noise{level}"
        if not (out / "dataset.json").exists():
            prepare_isic2019(raw, out, size=SETUP["size"], noise=level, split_file=ROOT / "data_prep/isic2019/split.json",
                             seed=0, progress=False)
        data[level] = out
    return data


def weight_stats(run: Path, data: Path) -> dict:
    """Mean N·α and β share over the run's meta steps, on wrongly vs rightly labelled training images,
    overall and per class of the clean label (from the per-sample record of the last checkpoint)."""
    state = torch.load(run / "checkpoint_latest.pt", map_location="cpu", weights_only=False)
    totals = state["record"]["totals"].numpy()
    rec = dict(zip(FIELDS, totals))
    manifest = json.loads((data / "dataset.json").read_text())
    train_idx = manifest["splits"]["train"]
    cfg = state["config"]
    if cfg["method"] == "ce+clean":  # its training set is not the train split
        return {}
    images = manifest["images"]
    label_key = "label" if cfg["label_source"] == "clean" else "noisy_label"
    given = np.array([images[i][label_key] for i in train_idx])
    clean = np.array([images[i]["label"] for i in train_idx])
    seen = rec["meta_seen"][: len(train_idx)]
    if not seen.sum():
        return {}
    alpha = rec["alpha"][: len(train_idx)] / np.maximum(seen, 1)
    beta = rec["beta"][: len(train_idx)] / np.maximum(seen, 1)
    share = beta / np.maximum(alpha + beta, 1e-12)
    wrong = given != clean
    ok = seen > 0

    def part(mask):
        mask = mask & ok
        return {"n": int(mask.sum()), "alpha": float(alpha[mask].mean()) if mask.any() else None,
                "beta_share": float(share[mask].mean()) if mask.any() else None}

    return {"all": {"wrong": part(wrong), "right": part(~wrong)},
            "per_class": {c: {"wrong": part(wrong & (clean == k)), "right": part(~wrong & (clean == k))}
                          for k, c in enumerate(CLASSES)}}


def run_one(level: float, name: str, seed: int, data: Path, work: Path) -> dict:
    run = work / "runs" / f"{name}_{level}_s{seed}"
    method, extra = METHOD.get(name, (name, {}))
    cfg = load_config("skin-lesion-cls", profile=SETUP["profile"], overrides={
        "data": str(data), "out": str(run), "method": method, "seed": seed, "device": "auto", **extra})
    if _finished(run, cfg):  # trained before the benchmark stopped, not yet evaluated: its own epoch times
        train_s = sum(float(h["time_s"]) for h in _history(run))
    else:
        shutil.rmtree(run, ignore_errors=True)  # an unfinished run from an interrupted benchmark
        t = time.time()
        with run_lock(run, what="train"):
            trainer = TestCurveTrainer(cfg, progress=False)
            trainer.fit()
        train_s = time.time() - t - trainer.test_curve_s
        (run / "test_curve.json").write_text(json.dumps(trainer.test_curve))
    summary = evaluate_run(run, split="test", checkpoint="best", figures=False)
    hist = _history(run)
    return {"level": level, "method": name, "seed": seed, "train_s": round(train_s, 1), "run": str(run),
            "accuracy": summary["accuracy"], "balanced_accuracy": summary["balanced_accuracy"],
            "auroc": summary["auroc_macro"], "recall": summary["per_class_recall"],
            "val_best": max(float(h["val_score"]) for h in hist),
            "epochs": [{k: h[k] for k in ("epoch", "val_score", "beta_share_on_wrong", "beta_share_on_right",
                                           "alpha_on_wrong", "alpha_on_right")} for h in hist],
            "weights": weight_stats(run, data),
            "test_curve": json.loads((run / "test_curve.json").read_text()) if (run / "test_curve.json").exists()
            else None}


class TestCurveTrainer(Trainer):
    """The trainer, scoring the test images after every epoch: the benchmark's own record of whether a
    method memorises the noise over training. Never used to choose anything (the checkpoint is chosen on
    the clean meta images); its time is left out of the run's training time."""

    def on_epoch_end(self, stats, score, seconds):
        row = super().on_epoch_end(stats, score, seconds)
        t = time.time()
        if not hasattr(self, "test_curve"):
            self.test_curve, self.test_curve_s = [], 0.0
            self._test_set = IsicDataset(load_isic(self.cfg.data, "test"))
        logits, _, clean = self.task._predict(self.model, self._test_set, self.device)
        m = classification_metrics(clean.numpy(), logits.argmax(1).numpy(), n_classes=len(CLASSES))
        self.test_curve.append({"epoch": self.epoch, "accuracy": float(m["accuracy"]),
                                "balanced_accuracy": float(m["balanced_accuracy"])})
        self.test_curve_s += time.time() - t
        return row


def _finished(run: Path, cfg) -> bool:
    """A run folder holding a finished run of exactly ``cfg`` (its saved config, but for the folder)."""
    if not (run / "checkpoint_latest.pt").exists() or not (run / "metrics.csv").exists():
        return False
    def key(c):
        return {**{k: v for k, v in vars(c).items() if k != "out"}, "data": str(Path(c.data).resolve())}

    same = key(load_config_file(run / "config.yaml")) == key(cfg)
    return same and len(_history(run)) == cfg.epochs


def _history(run: Path) -> list[dict]:
    import csv

    with open(run / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def _pick(rows, level, method):
    lv = None if method in SHARED else level
    return [r for r in rows if r["method"] == method and (lv is None or math.isclose(r["level"], lv))]


def tables(rows: list[dict], fits: dict[str, dict] | None = None) -> str:
    levels = sorted({r["level"] for r in rows if r["method"] not in SHARED})
    epochs = "/".join(str(n) for n in sorted({len(r["epochs"]) for r in rows if r["method"] != "meta-only"}))
    out = [(f"### ISIC 2019 (real HAM10000 dermoscopy, 1,600 lesion-grouped test images; {SETUP['what']}, "
            f"{epochs} epochs, the `{SETUP['profile']}` profile; mean ± std over seeds)"), "",
           ("| noise | method | seeds | accuracy (%) | balanced accuracy (%) | macro AUROC (%) | "
            + " | ".join(f"recall {c}" for c in CLASSES) + " | best val score (%) | train time (s), min / median |"),
           "|---|---|---|---|---|---|" + "---|" * len(CLASSES) + "---|---|"]
    for level in levels:
        for method in ORDER:
            rs = _pick(rows, level, method)
            if not rs:
                continue
            shared = " (level-free)" if method in SHARED else ""
            out.append(f"| {level:.0%} | {method}{shared} | {len(rs)} | {fmt([r['accuracy'] for r in rs], 100, 1)} | "
                       f"{fmt([r['balanced_accuracy'] for r in rs], 100, 1)} | {fmt([r['auroc'] for r in rs], 100, 1)} | "
                       + " | ".join(fmt([r['recall'][c] for r in rs if r['recall'][c] is not None], 100, 0)
                                    for c in CLASSES)
                       + f" | {fmt([r['val_best'] for r in rs], 100, 1)} | {times(rs)} |")
    out += ["", ("Paired comparison (same seeds, split and noisy labels); gap closed = (L2B − CE) / (oracle − CE) in "
                 "balanced accuracy; – = not run yet:"), "",
            ("| noise | metric | CE (%) | L2B (%) | L2B − CE per seed | L2B − CE | ce+clean | l2rw | bootstrap | "
             "oracle | gap closed |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for level in levels:
        for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced acc."), ("auroc", "AUROC")):
            p = paired(lambda method, level=level: _pick(rows, level, method), key)
            gap = p["gap"] if key == "balanced_accuracy" else float("nan")
            out.append(f"| {level:.0%} | {label} | {_num(p['ce'])} | {_num(p['l2b'])} | "
                       f"{', '.join(f'{d:+.1f}' for d in p['diffs'])} | {p['diff']:+.1f} ± {p['diff_std']:.1f} | "
                       f"{_num(p['mean']('ce+clean'))} | {_num(p['mean']('l2rw'))} | {_num(p['mean']('bootstrap'))} | "
                       f"{_num(p['oracle'])} | {'–' if math.isnan(gap) else f'{gap:.0%}'} |")
    out += weight_table(rows)
    out += curve_table(rows)
    out += fit_table(rows, fits or {})
    out += ["", "The paper (ImageNet-pretrained ResNet-50 at 224 px; 20,400 train / 640 meta / 4,291 test), accuracy:",
            "", "| noise | CE | L2B |", "|---|---|---|"]
    out += [f"| {lv:.0%} | {PAPER['ce'][lv]} | {PAPER['l2b'][lv]} |" for lv in sorted(PAPER["ce"])]
    return "\n".join(out)


def _num(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:.1f}"


def curve_table(rows: list[dict]) -> list[str]:
    """Test accuracy / balanced accuracy after every epoch (mean over seeds): does a method memorise the noise?
    Recorded for the reader only; checkpoints are chosen on the clean meta images."""
    lines = ["", ("Test scores after every epoch (mean over seeds; accuracy / balanced accuracy, %): where a curve falls "
                  "after its peak, the method is fitting the noise. For the reader only: checkpoints are chosen on "
                  "the clean meta images."), ""]
    curves = [r for r in rows if r.get("test_curve")]
    if not curves:
        return []
    n = max(len(r["test_curve"]) for r in curves)
    lines += ["| noise | method | seeds | " + " | ".join(f"epoch {e + 1}" for e in range(n)) + " |",
              "|---|---|---|" + "---|" * n]
    for level in sorted({r["level"] for r in curves if r["method"] not in SHARED}):
        for method in ORDER:
            rs = [r for r in _pick(curves, level, method) if r.get("test_curve")]
            if not rs:
                continue
            cells = []
            for e in range(n):
                pts = [r["test_curve"][e] for r in rs if len(r["test_curve"]) > e]
                cells.append(f"{100 * np.mean([p['accuracy'] for p in pts]):.1f} / "
                             f"{100 * np.mean([p['balanced_accuracy'] for p in pts]):.1f}" if pts else "–")
            shared = " (level-free)" if method in SHARED else ""
            lines.append(f"| {level:.0%} | {method}{shared} | {len(rs)} | " + " | ".join(cells) + " |")
    return lines


def weight_table(rows: list[dict]) -> list[str]:
    """β share and N·α on wrongly vs rightly labelled images (mean over seeds), overall and per class."""
    lines = ["", ("What the meta step did, over the run's meta steps (mean over seeds): N·α (1 = an average image's "
                  "weight on its given label) and the β share β/(α+β), on training images whose given label is "
                  "wrong vs right, by clean class:"), "",
             "| noise | method | class | n wrong / right | N·α wrong | N·α right | β share wrong | β share right |",
             "|---|---|---|---|---|---|---|---|"]
    any_rows = False
    for level in sorted({r["level"] for r in rows}):
        for method in ("l2rw", "l2b-nobal", "l2b-floor7", "l2b"):
            rs = [r for r in _pick(rows, level, method) if r.get("weights")]
            if not rs:
                continue
            any_rows = True
            for cls in ("all", *CLASSES):
                parts = [r["weights"]["all"] if cls == "all" else r["weights"]["per_class"][cls] for r in rs]

                def v(side, key, parts=parts):
                    vals = [p[side][key] for p in parts if p[side][key] is not None]
                    return f"{mean_std(vals)[0]:.2f}" if vals else "–"

                lines.append(f"| {level:.0%} | {method} | {cls} | {parts[0]['wrong']['n']} / {parts[0]['right']['n']} | "
                             f"{v('wrong', 'alpha')} | {v('right', 'alpha')} | {v('wrong', 'beta_share')} | "
                             f"{v('right', 'beta_share')} |")
    return lines if any_rows else []


def claim(work: Path, key) -> bool:
    """Claim a run for this process (a file created exclusively); False when a live process holds it.
    A claim whose process is gone (an interrupted benchmark) is taken over."""
    claims = work / "claims"
    claims.mkdir(exist_ok=True)
    path = claims / ("_".join(str(k) for k in key) + ".pid")
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(path.read_text() or 0), 0)
                return False  # held by a live worker
            except (ProcessLookupError, ValueError):
                path.unlink(missing_ok=True)  # stale: its worker is gone
                continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def spawn_workers(n: int) -> None:
    """Run ``n`` copies of this command, one thread each (two small trainings share 2 cores better
    than one training uses both), and wait for them."""
    argv, skip = [], False
    for a in sys.argv[1:]:
        if not skip and not a.startswith("--workers"):
            argv.append(a)
        skip = a == "--workers"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, *argv], env=env) for _ in range(n)]
    for p in procs:
        p.wait()


def fit_stats(row: dict) -> dict:
    """How the run's best checkpoint fits its own training images, against their clean labels (training data,
    never test): balanced accuracy and accuracy, and the share of wrongly labelled images it predicts as
    their given (wrong) label, i.e. the noise it memorised; with the clean meta images' score (its
    validation score) beside them."""
    run = Path(row["run"])
    model, cfg = load_run(run, checkpoint="best")
    task = build_task(cfg, training=False)
    images = load_isic(cfg.data, "train", label="noisy")
    logits = task._predict(model, IsicDataset(images), torch.device("cpu"))[0]
    pred = logits.argmax(1).numpy()
    m = classification_metrics(images.clean, pred, n_classes=len(CLASSES))
    wrong = images.label != images.clean
    # the last epoch's checkpoint on test, reported beside the chosen one (never used to choose anything)
    last = evaluate_run(run, split="test", checkpoint="latest", out=run / "eval_latest", figures=False)
    return {"run": str(run), "train_clean_bacc": float(m["balanced_accuracy"]), "train_clean_acc": float(m["accuracy"]),
            "memorised": float((pred[wrong] == images.label[wrong]).mean()) if wrong.any() else float("nan"),
            "last_acc": float(last["accuracy"]), "last_bacc": float(last["balanced_accuracy"])}


def enrich(rows: list[dict], cache: Path) -> dict[str, dict]:
    """fit_stats of every row whose run folder exists, cached in ``cache`` (jsonl) by run folder."""
    have = {r["run"]: r for r in load_rows(cache) if "last_bacc" in r}  # older entries lack the last epoch
    for row in rows:
        if row["run"] not in have and (Path(row["run"]) / "checkpoint_best.pt").exists() and row["method"] != "meta-only":
            have[row["run"]] = fit_stats(row)
            with open(cache, "a") as fh:
                fh.write(json.dumps(have[row["run"]]) + "\n")
    return have


def fit_table(rows: list[dict], fits: dict[str, dict]) -> list[str]:
    """Validation (clean meta images) against the fit of the training images' clean labels, per method."""
    lines = ["", ("How each best checkpoint fits (mean over seeds): its score on the clean meta images (which the meta "
                  "methods also learn from), its balanced accuracy on the training images' clean labels, and the "
                  "share of wrongly labelled training images it predicts as their wrong given label (memorised); and, "
                  "for comparison only, the test scores of the chosen (best) checkpoint and of the last epoch's. "
                  "`-holdout` rows validate on their held-out quarter of the meta images:"), "",
             "| noise | method | seeds | val bacc (meta images) | train bacc (clean labels) | memorised | "
             "test bacc, best / last | test acc, best / last |",
             "|---|---|---|---|---|---|---|---|"]
    n = 0
    for level in sorted({r["level"] for r in rows if r["method"] not in SHARED}):
        for method in ORDER:
            rs = [r for r in _pick(rows, level, method) if r["run"] in fits]
            if not rs:
                continue
            f = [fits[r["run"]] for r in rs]
            val = mean_std([100 * r["val_best"] for r in rs])[0]
            tr = mean_std([100 * x["train_clean_bacc"] for x in f])[0]
            mem = mean_std([100 * x["memorised"] for x in f if math.isfinite(x["memorised"])])[0]
            shared = " (level-free)" if method in SHARED else ""
            def m(vals):
                return _num(100 * mean_std(vals)[0])

            lines.append(f"| {level:.0%} | {method}{shared} | {len(rs)} | {val:.1f} | {tr:.1f} | {_num(mem)} | "
                         f"{m([r['balanced_accuracy'] for r in rs])} / {m([x['last_bacc'] for x in f])} | "
                         f"{m([r['accuracy'] for r in rs])} / {m([x['last_acc'] for x in f])} |")
            n += 1
    return lines if n else []


def _done(rows: list[dict]) -> set:
    return {(r["level"] if r["method"] not in SHARED else None, r["method"], r["seed"]) for r in rows}


def load_rows(results: Path) -> list[dict]:
    if not results.exists():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, default=ROOT.parent / "shared" / "data" / "ISIC2019_HAM10000")
    ap.add_argument("--setup", choices=sorted(SETUPS), default="pretrained",
                    help="pretrained: the shipped cpu profile; scratch: the from-scratch record (cpu-scratch)")
    ap.add_argument("--work", type=Path, default=None, help="default: bench_runs/<the setup's folder>")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--blocks", default="1,2,3,4", help="comma-separated, from 1-7 (5-7: ablations)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--no-fit", action="store_true",
                    help="skip the fit table (it predicts every run's training images: minutes per run)")
    ap.add_argument("--workers", type=int, default=1,
                    help="start this many copies of the script, one thread each; they share the runs through claims")
    args = ap.parse_args()
    SETUP.update(SETUPS[args.setup])
    args.work = args.work or ROOT / "bench_runs" / SETUP["work"]
    args.work.mkdir(parents=True, exist_ok=True)
    results = args.work / "results.jsonl"
    rows = load_rows(results)
    if not args.report_only:
        blocks = [BLOCKS[int(b) - 1] for b in args.blocks.split(",")]
        data = prepare(args.raw, args.work, sorted({lv for b in blocks for lv, _ in b}))  # before any worker starts
        if args.workers > 1:
            spawn_workers(args.workers)
            blocks = []
        done = _done(rows)
        for block in blocks:
            for seed in range(args.seeds):
                for level, name in block:
                    key = (level if name not in SHARED else None, name, seed)
                    if key in done or not claim(args.work, key):
                        continue
                    # another worker may have finished it and exited since this one read the results
                    done |= _done(load_rows(results))
                    if key in done:
                        continue
                    print(f"[isic] noise {level} {name} seed {seed}", flush=True)
                    row = run_one(level, name, seed, data[level], args.work)
                    with open(results, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    rows = load_rows(results)  # with the other workers' runs
                    done.add(key)
                    print(f"[isic]   acc {row['accuracy']:.3f} bacc {row['balanced_accuracy']:.3f} "
                          f"auroc {row['auroc']:.3f} ({row['train_s']:.0f} s)", flush=True)
                    write_benchmarks_md(tables(rows), section=SETUP["section"])
    rows = load_rows(results)
    fits = {} if args.no_fit else enrich(rows, args.work / "enrich.jsonl")
    write_benchmarks_md(tables(rows, fits), section=SETUP["section"])
    print(tables(rows, fits))


if __name__ == "__main__":
    main()
