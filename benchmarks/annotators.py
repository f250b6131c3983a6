"""Real annotator disagreement as label noise: CHASE_DB1 retinal vessels, observer 2 given, observer 1 clean.

Data: the 28 CHASE_DB1 fundus images in ``../shared/data/CHASEDB1`` (``--raw``), two human vessel
annotations each, converted by ``data_prep/chasedb1/convert.py`` (``convert_chasedb1``: observer 1 in
``labelsTr``, observer 2 in ``labelsTr_observer2``) and prepared twice with the committed split by child
``data_prep/chasedb1/split.json`` (18 train, 2 clean meta, 8 test images):

* ``observers``: the given training labels are observer 2's (``prepare_msd(noisy_labels=...)``): real
  disagreement, mean Dice 0.78 against observer 1. The clean meta images and the test images are scored
  against observer 1.
* ``synthetic``: the same split and images with medl2b's synthetic mask noise calibrated to the
  observers' Dice (``noise_dice=0.78``), so one can see whether L2B behaves alike on real and on
  simulated disagreement of the same strength.

Methods: ``ce``, ``ce+clean`` (the noisy train images plus the 2 clean meta images as training data),
``meta-only`` (the 2 clean images alone), ``l2b`` (the default, α_i + β_i = 1 per pixel) and ``oracle``
(``ce`` on observer 1's labels). ``meta-only`` and ``oracle`` do not see the given labels, so they are
the same runs for both label sources: they run once per seed and serve both. ``--seeds`` paired seeds
(default 3): every method of a seed sees the same split and the same given labels.

Runs go in priority order, every seed of a block before the next block:

1. observers: ce, l2b, ce+clean, meta-only, oracle;
2. synthetic: ce, l2b, ce+clean.

Sized for a 2-core CPU (every setting chosen from wall time and the clean meta images' validation
Dice, never from test results; BENCHMARKS.md "Annotators" has the measurements):

* prepared at **512 px** (``SIZE``), not at the native 1008 px: at 1008 px the sliding-window
  prediction of one image takes ~9 s at 1 thread, so the 8 test images alone cost ~75 s and the 2
  validation images ~18 s an epoch, leaving too little of a ~2.5 min run to train. 512 px halves the
  vessel widths (0.5–5 px): the thinnest capillaries are partly lost, for every method alike;
* the ``segmentation`` ``cpu`` profile (lr 0.1, clip 1.0, batch 8, meta batch 8) with the
  :data:`OVERRIDES`: UNet++ widths [8, 8, 16, 32, 64, 8], 96 × 96 training patches (a third
  centred on a vessel pixel; meta patches always on vessels), 8 patches per image and epoch
  (18 steps an epoch on the 18 train images), 6 epochs of which 2 (a third, as in the profile) are
  CE warm-up; validation and test prediction by 96 × 96 sliding windows (overlap 0.5). Measured at 1
  thread beside another benchmark on the second core: an ``l2b`` run 112 s training + 18 s
  evaluation, so the 24 distinct runs of 3 seeds take 40 to 65 min by the load; 8 epochs had cost 200 s + 19 s
  (``l2b``) and 172 s + 18 s (``ce``) under a heavier load, over the 2.5 min a run this budget allows.

Each run is evaluated on the 8 test images with its best checkpoint (chosen on the clean meta images,
never on test): Dice, HD95, ASD and clDice (centreline Dice) on the 512 px prepared grid, and is
appended to ``--work/results.jsonl`` with its training and evaluation wall time. Finished runs are
skipped when the script is started again; ``--report-only`` writes the tables from what has finished,
between the ``annotators`` markers of BENCHMARKS.md.

    python benchmarks/annotators.py                      # everything, 3 seeds (40-65 min on 2 CPU cores)
    python benchmarks/annotators.py --blocks 1 --seeds 1
    python benchmarks/annotators.py --report-only        # tables from the finished runs
    python benchmarks/annotators.py --smoke              # 1 seed, ce and l2b, 1 short epoch: a check, not a result
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from accuracy import fmt, mean_std, paired, times, weight_figures, write_benchmarks_md
from isic import _finished, _history, load_rows

from medl2b.config import load_config
from medl2b.data.msd import prepare_msd
from medl2b.evaluate.run import evaluate_run
from medl2b.train.trainer import train

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "data_prep" / "chasedb1"))
from convert import convert_chasedb1  # noqa: E402  (a script folder, not a package)

SIZE = 512
NOISE_DICE = 0.78  # the observers' mean Dice on the train images (the observers copy's manifest says 0.780)
SPLIT = ROOT / "data_prep" / "chasedb1" / "split.json"
SOURCES = ("observers", "synthetic")
OVERRIDES = {"features": [8, 8, 16, 32, 64, 8], "patch_size_2d": [96, 96], "patches_per_slice": 8,
             "epochs": 6, "warmup_epochs": 2}
SMOKE = {"epochs": 1, "warmup_epochs": 0, "patches_per_slice": 1, "steps_per_epoch": 2}
SHARED = {"meta-only", "oracle"}  # independent of the given labels: run once per seed, on the observers copy
METHOD = {"oracle": ("ce", {"label_source": "clean"})}
BLOCKS = [
    [("observers", m) for m in ("ce", "l2b", "ce+clean", "meta-only", "oracle")],
    [("synthetic", m) for m in ("ce", "l2b", "ce+clean")],
]
ORDER = ("ce", "ce+clean", "meta-only", "l2b", "oracle")
KEYS = ("dice", "cldice", "hd95", "asd")


def prepare(raw: Path, work: Path, size: int = SIZE) -> dict[str, Path]:
    """The raw nnU-Net dataset (both observers) and its two prepared copies, made once in ``work``."""
    chase = work / "raw_chase"
    if not (chase / "dataset.json").exists():
        convert_chasedb1(raw, chase, overwrite=chase.exists())
    data = {}
    for source in SOURCES:
        out = work / f"chase_{size}px_{source}"
        if not (out / "dataset.json").exists():
            given = ({"noisy_labels": chase / "labelsTr_observer2"} if source == "observers"
                     else {"noise_dice": NOISE_DICE})
            prepare_msd(chase, out, split_file=SPLIT, size=size, seed=0, progress=False, overwrite=out.exists(),
                        **given)
        data[source] = out
    return data


def given_dice(data: Path) -> float:
    """Mean Dice of the given training labels against observer 1, from the prepared manifest."""
    return float(json.loads((data / "dataset.json").read_text())["noise"]["achieved_mean_dice"])


def run_one(source: str, name: str, seed: int, data: Path, work: Path, overrides: dict) -> dict:
    run = work / "runs" / f"{name}_{source}_s{seed}"
    method, extra = METHOD.get(name, (name, {}))
    cfg = load_config("segmentation", profile="cpu", overrides={
        "data": str(data), "out": str(run), "method": method, "seed": seed, "device": "auto", **OVERRIDES,
        **extra, **overrides})
    if _finished(run, cfg):  # trained before the benchmark stopped, not yet evaluated: its own epoch times
        train_s = sum(float(h["time_s"]) for h in _history(run))
    else:
        shutil.rmtree(run, ignore_errors=True)  # an unfinished run from an interrupted benchmark
        t = time.time()
        train(cfg, progress=False)
        train_s = time.time() - t
    t = time.time()
    summary = evaluate_run(run, split="test", checkpoint="best", figures=False)
    eval_s = time.time() - t
    return {"source": source, "method": name, "seed": seed, "train_s": round(train_s, 1),
            "eval_s": round(eval_s, 1), "run": str(run), **{k: summary["mean"][k] for k in KEYS},
            "n_failed": summary["n_failed"], "given_dice": given_dice(data),
            "val_best": max(float(h["val_score"]) for h in _history(run))}


def _pick(rows: list[dict], source: str, method: str) -> list[dict]:
    return [r for r in rows if r["method"] == method and (method in SHARED or r["source"] == source)]


def _wall(rs: list[dict]) -> str:
    """Training + evaluation wall time of one run, min / median over seeds."""
    return times([{"train_s": r["train_s"] + r.get("eval_s", 0.0)} for r in rs])


def tables(rows: list[dict], command: str, given: dict[str, float], settings: dict) -> str:
    sources = [s for s in SOURCES if any(r["source"] == s and r["method"] not in SHARED for r in rows)]
    out = [(f"### CHASE_DB1 retinal vessels, 8 test images (4 children), observer 1 as reference; {SIZE} px, "
            f"{settings['patch_size_2d'][0]} px patches, UNet++ {settings['features']}, {settings['epochs']} epochs; "
            "mean ± std over seeds of the per-run mean over images"), "",
           ("Given training labels: `observers` = observer 2 (Dice "
            f"{given.get('observers', math.nan):.3f} against observer 1), `synthetic` = medl2b's mask noise at noise "
            f"Dice {NOISE_DICE} (achieved {given.get('synthetic', math.nan):.3f}). `meta-only` and `oracle` never see the given labels: "
            "one set of runs serves both sources."), "",
           ("| given labels | method | seeds | Dice (%) | clDice (%) | HD95 (raw px) | ASD (raw px) | failed images | "
            "best val Dice (%) | wall time per run (s), train + eval, min / median |"),
           "|---|---|---|---|---|---|---|---|---|---|"]
    for source in sources:
        for method in ORDER:
            rs = _pick(rows, source, method)
            if not rs:
                continue
            shared = " (source-free)" if method in SHARED else ""
            out.append(f"| {source} | {method}{shared} | {len(rs)} | {fmt([r['dice'] for r in rs], 100)} | "
                       f"{fmt([r['cldice'] for r in rs], 100)} | {fmt([r['hd95'] for r in rs])} | "
                       f"{fmt([r['asd'] for r in rs])} | {sum(r['n_failed'] for r in rs)} | "
                       f"{fmt([r['val_best'] for r in rs], 100)} | {_wall(rs)} |")
    out += ["", ("Paired comparison (same seeds, split and given labels), in points; gap closed = (L2B − CE) / "
                 "(oracle − CE); – = not run yet:"), "",
            ("| given labels | metric | CE (%) | L2B (%) | L2B − CE per seed | L2B − CE | ce+clean (%) | "
             "meta-only (%) | oracle (%) | gap closed |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for source in sources:
        for key, label in (("dice", "Dice"), ("cldice", "clDice")):
            p = paired(lambda method, source=source: _pick(rows, source, method), key)
            gap = p["gap"]
            out.append(f"| {source} | {label} | {_num(p['ce'])} | {_num(p['l2b'])} | "
                       f"{', '.join(f'{d:+.2f}' for d in p['diffs']) or '–'} | {_num(p['diff'], '+.2f')} ± "
                       f"{_num(p['diff_std'])} | {_num(p['mean']('ce+clean'))} | {_num(p['mean']('meta-only'))} | "
                       f"{_num(p['oracle'])} | {'–' if math.isnan(gap) else f'{gap:.0%}'} |")
    out += separation_table(rows, sources)
    out += ["", f"Command: `{command}`; {len(rows)} runs finished."]
    return "\n".join(out)


def separation_table(rows: list[dict], sources) -> list[str]:
    """How the L2B weights split the pixels whose given label is wrong (vs observer 1) from the right ones:
    the pseudo-label's share β/(α+β), mean over the last third of the epochs (from each run's metrics.csv)."""
    lines = ["", ("L2B's weights on training pixels whose given label disagrees with observer 1 (wrong) and agrees "
                  "(right): the pseudo-label's share β/(α+β), mean over the last third of the epochs, per seed:"), "",
             "| given labels | seeds | β share on wrong | β share on right | per seed (wrong / right) |", "|---|---|---|---|---|"]
    for source in sources:
        parts = []
        for r in _pick(rows, source, "l2b"):
            hist = [h for h in _history(Path(r["run"])) if h.get("warmup") in ("0", "False", "false")]
            tail = hist[len(hist) - max(1, len(hist) // 3):]
            if tail:
                parts.append(tuple(float(np.mean([float(h[k]) for h in tail]))
                                   for k in ("beta_share_on_wrong", "beta_share_on_right")))
        if parts:
            w, r_ = zip(*parts)
            lines.append(f"| {source} | {len(parts)} | {np.mean(w):.2f} | {np.mean(r_):.2f} | "
                         + ", ".join(f"{a:.2f} / {b:.2f}" for a, b in parts) + " |")
    return lines if len(lines) > 4 else []


def _num(v: float, spec: str = ".2f") -> str:
    return "–" if not math.isfinite(v) else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, default=ROOT.parent / "shared" / "data" / "CHASEDB1")
    ap.add_argument("--work", type=Path, default=None, help="default bench_runs/annotators (--smoke: annotators_smoke)")
    ap.add_argument("--seeds", type=int, default=None, help="paired seeds (default 3; --smoke: 1)")
    ap.add_argument("--blocks", default=",".join(str(i + 1) for i in range(len(BLOCKS))),
                    help="which blocks of the plan to run, in order")
    ap.add_argument("--methods", default=None, help="only these methods of the blocks, e.g. ce,l2b")
    ap.add_argument("--set", action="append", default=[], help="extra config KEY=VALUE for every run")
    ap.add_argument("--smoke", action="store_true",
                    help="1 seed, ce and l2b on observer 2, 1 epoch of 2 steps: proves the pipeline, writes no tables "
                         "into BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true", help="print the tables only")
    ap.add_argument("--report-only", action="store_true", help="write the tables from the finished runs, train nothing")
    args = ap.parse_args()
    work = args.work or ROOT / "bench_runs" / ("annotators_smoke" if args.smoke else "annotators")
    seeds = args.seeds or (1 if args.smoke else 3)
    methods = set((args.methods or ("ce,l2b" if args.smoke else ",".join(ORDER))).split(","))
    overrides = {**(SMOKE if args.smoke else {}), **dict(item.split("=", 1) for item in args.set)}
    blocks = [[(s, m) for s, m in BLOCKS[int(b) - 1] if m in methods]
              for b in ("1" if args.smoke else args.blocks).split(",")]
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.jsonl"
    rows = load_rows(results)
    command = "python benchmarks/annotators.py" + (" --smoke" if args.smoke else
                                                   f" --seeds {seeds}" if seeds != 3 else "")
    if not args.report_only:
        data = prepare(args.raw, work)
        done = {(None if r["method"] in SHARED else r["source"], r["method"], r["seed"]) for r in rows}
        t0 = time.time()
        for block in blocks:
            for seed in range(seeds):
                for source, name in block:
                    key = (None if name in SHARED else source, name, seed)
                    if key in done:
                        continue
                    print(f"[annotators] {source} {name} seed {seed}", flush=True)
                    row = run_one(source, name, seed, data[source], work, overrides)
                    with open(results, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    rows.append(row)
                    done.add(key)
                    print(f"[annotators]   Dice {row['dice']:.4f} clDice {row['cldice']:.4f} (val {row['val_best']:.4f}; "
                          f"{row['train_s']:.0f} s train, {row['eval_s']:.0f} s eval, {time.time() - t0:.0f} s total)",
                          flush=True)
    given = {s: given_dice(work / f"chase_{SIZE}px_{s}") for s in SOURCES
             if (work / f"chase_{SIZE}px_{s}" / "dataset.json").exists()}
    text = tables(rows, command, given, {**OVERRIDES, **overrides})
    if not (args.smoke or args.no_write):
        figs = weight_figures([{**r, "task": "seg", "level": r["source"]} for r in rows if r["method"] == "l2b"],
                              ROOT / "benchmarks" / "figures", prefix="annotators")
        text += "\n\n" + "\n".join(f"![{p.stem}](benchmarks/figures/{p.name})" for p in figs)
        write_benchmarks_md(text, section="annotators")
    print(text)


if __name__ == "__main__":
    main()
