"""Accuracy benchmark v2 on real anatomy: MSD Task04 hippocampus MRI, paired seeds, the paper's baselines.

Data: the 200 real cases in ``../shared/data/Task04_Hippocampus`` (``--raw``), prepared with
``medl2b prepare msd`` and the committed split ``data_prep/hippocampus/split.json``: 40 test
cases, 4 clean meta cases, 24 noisy training cases (the other 132 are not used; see
data_prep/hippocampus/README.md for why). Slices are 48 × 48 px (about the native 1 mm),
noisy labels at mean foreground Dice 0.8, 0.6 and 0.4, one noisy label set per level (noise
seed 0) shared by every method and seed: the runs are paired.

Methods (``medl2b train --task segmentation --profile cpu --method ...``):
``ce``, ``ce+clean`` (noisy train + the clean meta cases as training data), ``meta-only``
(the clean cases alone), ``bootstrap``, ``l2rw``, ``l2b`` (α_i + β_i = 1 per pixel,
``meta_normalise: element``, and no confidence floor: ``pseudo_floor: 0``, the default until issue 25), ``l2b-batch`` (``l2b`` with the weights normalised over
the batch, ``--set meta_normalise=batch``: the default until the diagnosis in BENCHMARKS.md),
``l2b-gmm`` (``l2b`` with ``--meta-set gmm``) and ``oracle`` (``ce`` on the clean labels).
``meta-only`` and ``oracle`` do not depend on the noise level: they run once per seed and
serve every level. Every row named ``l2b...`` is the paper's pure form, the clean cases used by the meta step
only: ``--method l2b-pure`` since ``--method l2b`` trains on its trusted cases (issue 37), which is what the rows
named ``l2b+clean...`` run (``METHOD``).

Runs go in priority order, every seed of a block before the next block:

1. noise 0.6: ce, l2b, ce+clean, meta-only, oracle;
2. noise 0.6: l2b-batch;
3. noise 0.4: ce, l2b, ce+clean (where L2B should help most);
4. noise 0.8: ce, l2b, ce+clean;
5. noise 0.6: bootstrap, l2rw, l2b-gmm;
6. noise 0.6: l2b-k2, l2b-k4 (``l2b`` with ``--set meta_every=2`` / ``4``: the amortised meta
   step, a new meta gradient every k steps). Its table compares training wall time × CE and
   test Dice with the exact step (k = 1, block 1), paired by seed.
7. noise 0.6: ce-3d, l2b-3d: ``ce`` and ``l2b`` with the ``cpu-3d`` profile (a 3-D UNet++ on whole
   volumes, voxel-wise α/β; evaluated by sliding windows). Its table sets them beside the 2-D rows
   of block 1, paired by seed.
8. issue 25, noise 0.6 (run with ``--seeds 1``): ce, l2b, ce+clean, oracle and the variants
   ``l2b-smooth5`` (``meta_smooth: 5``), ``l2b+clean`` (the clean cases trained on as trusted samples)
   and ``l2b-mb16`` (meta batch 16).
9. issue 25, noise 0.8: ce, ce+clean, l2b, l2b+clean.
10. issue 25, noise 0.8 and 0.6: ``l2b-floor8`` (``pseudo_floor: 0.8``: the pseudo-label term only where the
    network's confidence is at least 0.8).
11. issue 25, noise 0.8 and 0.6: ``l2b+clean-floor8`` (``l2b+clean`` with that floor).
12. issue 25, every level: ``l2b-floor8``; 13. noise 0.6 and 0.4: ``ce``, ``ce+clean`` (with block 9, the
    baselines of every level in this section's machine state).
14. issue 25: ``l2b-floor6`` (``pseudo_floor: 0.6``, the segmentation default since) at 0.6, 0.8 and 0.4;
    15. the same at 0.6 and 0.8 only; 16. ``ce``, ``ce+clean`` at 0.6 (blocks 15-16 order the runs for a short
    session: the seeds of two levels before a third).
17. issue 25, noise 0.6: ``ce-3d`` and ``l2b-3d-floor6`` (the ``cpu-3d`` profile with the default floor), paired
    with the 2-D ``ce`` and ``l2b-floor6``; 18. ``oracle`` (so every seed has its own gap closed).
19. issue 25, the budget (run with ``--seeds 1``): ``ce-e36``, ``l2b-floor6-e36`` at noise 0.8, 36 epochs (12 of
    warm-up) instead of 12 (4), set beside the 12-epoch runs of the same seed; 21. ``ce+clean-e36`` the same;
    22. ``l2b-floor6-e36`` and 23. ``ce-e36`` alone (two lanes for a second seed: ``--blocks 22 --seeds 2``).
20. issue 25, noise 0.4: ``l2b`` (no floor), paired with the default ``l2b-floor6``: does the floor cost at
    heavy noise, where it was not chosen?
24. issue 37, every level: ``l2b+clean-floor6`` (the trusted cases trained on, with the default floor: what
    ``--method l2b`` does with a clean meta set since issue 37); 25. ``l2b+clean``
    (no floor) at 0.6 and 0.4, completing its seeds (``benchmarks/trusted_cases.py`` tabulates them).

Issue 25's runs go to their own tables: ``--section hippocampus-issue25`` (and their own ``--work``).
Each L2B variant's row also gets, from its run folder, the weight separation over the last third of
training, the last network's pseudo-labels on wrong pixels and the evidence probe
(:func:`probe.evidence_probe`, whole slices), cached in ``--work/enrich.jsonl``.

Each run trains with the ``segmentation`` task's ``cpu`` profile (block 7: ``cpu-3d``), is
evaluated on the 40 test cases with its best checkpoint (chosen on the clean meta cases, never
on test), and is appended to ``--work/results.jsonl``. Finished runs are skipped when the
script is started again, so it can be stopped and resumed; ``--report-only`` writes the
tables from what has finished. Tables go to BENCHMARKS.md between the ``hippocampus`` markers.

    python benchmarks/hippocampus.py                  # everything, 3 seeds (hours on 2 CPU cores)
    python benchmarks/hippocampus.py --report-only    # tables from the finished runs
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

from accuracy import fmt, mean_std, paired, times, weight_figures, write_benchmarks_md
from probe import evidence_probe  # the one implementation, shared with annotators.py

ROOT = Path(__file__).resolve().parent.parent
LEVELS = (0.8, 0.6, 0.4)
SIZE = 48  # the recorded tables' size (each slice stretched to 48 px before issue 39); a re-run at one spacing
           # should use 64, which caps nothing (1 mm): 48 coarsens every case to 1.08 mm (BENCHMARKS.md, issue 39)
SHARED = {"meta-only", "oracle"}  # independent of the noise level
#: rows named without a floor ran before ``pseudo_floor: 0.6`` became the default; re-runs keep them floorless
NOFLOOR = {"pseudo_floor": 0.0}
#: row name -> (config method, overrides). The rows named ``l2b...`` are the paper's pure form, config ``l2b-pure``
#: since ``--method l2b`` trains on its trusted cases (issue 37); the rows named ``l2b+clean...`` are that: ``l2b``
METHOD = {"oracle": ("ce", {"label_source": "clean"}), "l2b": ("l2b-pure", NOFLOOR), "l2b-gmm": ("l2b-pure", {"meta_set": "gmm", **NOFLOOR}),
          "l2b-batch": ("l2b-pure", {"meta_normalise": "batch", **NOFLOOR}),
          "l2b-k2": ("l2b-pure", {"meta_every": 2, **NOFLOOR}), "l2b-k4": ("l2b-pure", {"meta_every": 4, **NOFLOOR}),
          "ce-3d": ("ce", {}), "l2b-3d": ("l2b-pure", NOFLOOR),
          "l2b-smooth5": ("l2b-pure", {"meta_smooth": 5, **NOFLOOR}), "l2b-mb16": ("l2b-pure", {"meta_batch_size": 16, **NOFLOOR}),
          "l2b+clean": ("l2b", NOFLOOR), "l2b-floor8": ("l2b-pure", {"pseudo_floor": 0.8}), "l2b+clean-floor8": ("l2b", {"pseudo_floor": 0.8}),
          "l2b-floor6": ("l2b-pure", {"pseudo_floor": 0.6}), "l2b-3d-floor6": ("l2b-pure", {"pseudo_floor": 0.6}),
          "l2b+clean-floor6": ("l2b", {"pseudo_floor": 0.6}),
          "ce-e36": ("ce", {"epochs": 36, "warmup_epochs": 12}),
          "ce+clean-e36": ("ce+clean", {"epochs": 36, "warmup_epochs": 12}),
          "l2b-floor6-e36": ("l2b-pure", {"pseudo_floor": 0.6, "epochs": 36, "warmup_epochs": 12})}
PROFILE = {"ce-3d": "cpu-3d", "l2b-3d": "cpu-3d", "l2b-3d-floor6": "cpu-3d"}  # 3-D UNet++ on whole volumes; the rest: 2-D slices, cpu
BLOCKS = [
    [(0.6, m) for m in ("ce", "l2b", "ce+clean", "meta-only", "oracle")],
    [(0.6, "l2b-batch")],
    [(0.4, m) for m in ("ce", "l2b", "ce+clean")],
    [(0.8, m) for m in ("ce", "l2b", "ce+clean")],
    [(0.6, m) for m in ("bootstrap", "l2rw", "l2b-gmm")],
    [(0.6, m) for m in ("l2b-k2", "l2b-k4")],
    [(0.6, m) for m in ("ce-3d", "l2b-3d")],
    [(0.6, m) for m in ("ce", "l2b", "ce+clean", "oracle", "l2b-smooth5", "l2b+clean", "l2b-mb16")],
    [(0.8, m) for m in ("ce", "ce+clean", "l2b", "l2b+clean")],
    [(0.8, "l2b-floor8"), (0.6, "l2b-floor8")],
    [(0.8, "l2b+clean-floor8"), (0.6, "l2b+clean-floor8")],
    [(level, "l2b-floor8") for level in LEVELS],
    [(level, m) for level in (0.6, 0.4) for m in ("ce", "ce+clean")],
    [(0.6, "l2b-floor6"), (0.8, "l2b-floor6"), (0.4, "l2b-floor6")],
    [(0.6, "l2b-floor6"), (0.8, "l2b-floor6")],
    [(0.6, "ce"), (0.6, "ce+clean")],
    [(0.6, "ce-3d"), (0.6, "l2b-3d-floor6")],
    [(0.6, "oracle")],
    [(0.8, "ce-e36"), (0.8, "l2b-floor6-e36")],
    [(0.4, "l2b")],
    [(0.8, "ce+clean-e36")],
    [(0.8, "l2b-floor6-e36")],
    [(0.8, "ce-e36")],
    [(level, "l2b+clean-floor6") for level in LEVELS],
    [(0.6, "l2b+clean"), (0.4, "l2b+clean")],
]
ORDER = ("ce", "ce+clean", "meta-only", "bootstrap", "l2rw", "l2b-batch", "l2b", "l2b-k2", "l2b-k4", "l2b-gmm",
         "l2b-smooth5", "l2b-mb16", "l2b+clean", "l2b-floor8", "l2b+clean-floor8", "l2b-floor6", "l2b+clean-floor6", "oracle", "ce-3d", "l2b-3d", "l2b-3d-floor6",
         "ce-e36", "ce+clean-e36", "l2b-floor6-e36")
#: issue 25: the L2B variants compared on weight separation, validation and test (one table)
VARIANTS = ("l2b", "l2b-smooth5", "l2b-mb16", "l2b-floor8", "l2b-floor6", "l2b+clean", "l2b+clean-floor8",
            "l2b+clean-floor6")


def prepare(raw: Path, work: Path) -> dict[float, Path]:
    from medl2b.data.msd import prepare_msd

    data = {}
    for level in LEVELS:
        out = work / f"hippocampus_{SIZE}px_dice{level}"
        if not (out / "dataset.json").exists():
            prepare_msd(raw, out, size=SIZE, noise_dice=level, split_file=ROOT / "data_prep/hippocampus/split.json",
                        seed=0, progress=False)
        data[level] = out
    return data


def run_one(level: float, name: str, seed: int, data: Path, work: Path, overrides: dict) -> dict:
    from medl2b.config import load_config
    from medl2b.evaluate.run import evaluate_run
    from medl2b.train.trainer import train

    run = work / "runs" / f"{name}_{level}_s{seed}"
    if run.exists():
        shutil.rmtree(run)  # an unfinished run from an interrupted benchmark
    method, extra = METHOD.get(name, (name, {}))
    cfg = load_config("segmentation", profile=PROFILE.get(name, "cpu"), overrides={
        "data": str(data), "out": str(run), "method": method, "seed": seed, "device": "auto", **extra, **overrides})
    t = time.time()
    train(cfg, progress=False)
    train_s = time.time() - t
    summary = evaluate_run(run, split="test", checkpoint="best", figures=False)
    row = {"level": level, "method": name, "seed": seed, "train_s": round(train_s, 1), "run": str(run),
           **{k: summary["mean"][k] for k in ("dice", "hd95", "asd")}, "n_failed": summary["n_failed"],
           "per_class": {c: v["mean"]["dice"] for c, v in summary.get("per_class", {}).items()},
           "val_best": max(float(h["val_score"]) for h in _history(run))}
    return row


def _history(run: Path) -> list[dict]:
    import csv

    with open(run / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def tables(rows: list[dict]) -> str:
    def pick(level, method):
        lv = 0.6 if method in SHARED else level
        return [r for r in rows if r["method"] == method and math.isclose(r["level"], lv)]

    classes = sorted({c for r in rows for c in r.get("per_class", {})})
    out = [("### Hippocampus (real MSD Task04 MRI, 40 test cases; mean ± std over seeds of the per-run mean over "
           "cases)"), "",
           "| noise Dice | method | seeds | Dice, mean fg (%) | " + " | ".join(f"Dice {c} (%)" for c in classes)
           + " | HD95 (mm) | ASD (mm) | failed cases | train time (s), min / median |",
           "|---|---|---|---|" + "---|" * len(classes) + "---|---|---|---|"]
    levels = sorted({r["level"] for r in rows if r["method"] not in SHARED}, reverse=True)
    for level in levels:
        for method in ORDER:
            rs = pick(level, method)
            if not rs:
                continue
            shared = " (level-free)" if method in SHARED else ""
            out.append(f"| {level} | {method}{shared} | {len(rs)} | {fmt([r['dice'] for r in rs], 100)} | "
                       + " | ".join(fmt([r['per_class'].get(c) for r in rs], 100) for c in classes)
                       + f" | {fmt([r['hd95'] for r in rs])} | {fmt([r['asd'] for r in rs])} | "
                       f"{sum(r['n_failed'] for r in rs)} | {times(rs)} |")
    out += ["", "Paired comparison (same seeds, split and noisy labels); gap closed = (L2B − CE) / (oracle − CE):", "",
            ("| noise Dice | CE (%) | L2B (%) | L2B − CE per seed | L2B − CE | ce+clean (%) | meta-only (%) | "
            "oracle (%) | gap closed |"), "|---|---|---|---|---|---|---|---|---|"]
    for level in levels:
        p = paired(lambda method, level=level: pick(level, method), "dice")
        out.append(f"| {level} | {p['ce']:.2f} | {p['l2b']:.2f} | {', '.join(f'{d:+.2f}' for d in p['diffs'])} | "
                   f"{p['diff']:+.2f} ± {p['diff_std']:.2f} | {p['mean']('ce+clean'):.2f} | "
                   f"{p['mean']('meta-only'):.2f} | {p['oracle']:.2f} | {p['gap']:.0%} |")
    out += defaults_table(rows)
    out += variants_table(rows)
    out += amortised_table(rows)
    out += dims_table(rows)
    out += budget_table(rows)
    return "\n".join(out)


def defaults_table(rows: list[dict], l2b: str = "l2b-floor6") -> list[str]:
    """Issue 25's headline: L2B as the shipped segmentation defaults ran it before issue 37 (``l2b``, now
    ``l2b-pure``, which names the run ``l2b-floor6``) against ``ce`` and ``ce+clean`` at every level, paired by
    seed, with the gap closed."""
    oracle = {r["seed"]: r["dice"] for r in rows if r["method"] == "oracle"}
    lines = []
    for level in sorted({r["level"] for r in rows if r["method"] == l2b}, reverse=True):
        by = {m: {r["seed"]: r for r in rows if r["method"] == m and math.isclose(r["level"], level)}
              for m in ("ce", "ce+clean", l2b)}
        seeds = sorted(set(by[l2b]) & set(by["ce"]) & set(by["ce+clean"]))
        if not seeds:
            continue

        def d(other, seeds=seeds, by=by):
            diffs = [100 * (by[l2b][s]["dice"] - by[other][s]["dice"]) for s in seeds]
            m, sd = mean_std(diffs)
            return f"{', '.join(f'{x:+.2f}' for x in diffs)} ({m:+.2f} ± {sd:.2f})"
        gap = [(by[l2b][s]["dice"] - by["ce"][s]["dice"]) / (oracle[s] - by["ce"][s]["dice"]) for s in seeds if s in oracle]
        lines.append(f"| {level} | {len(seeds)} | "
                     + " | ".join(fmt([by[m][s]["dice"] for s in seeds], 100) for m in ("ce", "ce+clean", l2b))
                     + f" | {d('ce')} | {d('ce+clean')} | "
                     + (f"{fmt([100 * oracle[s] for s in seeds if s in oracle])} | {sum(gap) / len(gap):.0%} ({len(gap)})"
                        if gap else "– | –")
                     + f" | {fmt([by[l2b][s]['val_best'] for s in seeds], digits=3)} | "
                     + "; ".join(times([by[m][s] for s in seeds]) for m in ("ce", "ce+clean", l2b)) + " |")
    if not lines:
        return []
    return ["", (f"**The shipped defaults** before issue 37 (``medl2b train --task segmentation --profile cpu --method "
                 f"l2b-pure``, then ``--method l2b``: ``pseudo_floor: 0.6``; the runs are named ``{l2b}``), paired by "
                 "seed with ``ce`` and ``ce+clean``; "
                 "test Dice on the 40 cases, mean ± std over the seeds all three ran; gap closed = (L2B − CE) / "
                 "(oracle − CE) per seed, mean (seeds with an oracle run in brackets):"), "",
            ("| noise Dice | seeds | ce (%) | ce+clean (%) | L2B (%) | L2B − CE per seed (mean ± std) | "
             "L2B − ce+clean per seed (mean ± std) | oracle (%) | gap closed | L2B validation Dice | "
             "train s, min / median: ce; ce+clean; L2B |"),
            "|---|---|---|---|---|---|---|---|---|---|---|", *lines]


def separation(run: str) -> tuple[float, float]:
    """The pseudo-label's weight share β/(α+β) on wrongly and on rightly labelled training pixels, mean over
    the last third of the run's epochs (its metrics.csv; trusted clean cases are not counted)."""
    rows = _history(Path(run))
    last = rows[len(rows) - max(1, len(rows) // 3):]
    return tuple(sum(float(r[f"beta_share_on_{part}"]) for r in last) / len(last) for part in ("wrong", "right"))


def pseudo_on_wrong(run: str) -> dict:
    """What the run's last network predicts on the wrongly labelled pixels of its noisy training slices:
    the share where it gives the right (clean) class and where it repeats the wrong given one. With
    α + β = 1 per pixel, a pixel whose pseudo-label equals its given label always splits 50/50, so
    ``right + 0.5 · same`` bounds the β share any meta step could reach on wrong pixels with this network."""
    import torch

    from medl2b.data.datasets import load_slices
    from medl2b.evaluate.run import load_run
    from medl2b.inference import predict_logits

    model, cfg = load_run(run, checkpoint="latest")
    train = load_slices(cfg.data, "train", label="noisy")
    with torch.no_grad():
        pred = predict_logits(model, train.image, batch_size=64).argmax(1)
    wrong = train.label != train.clean
    n = max(int(wrong.sum()), 1)
    return {"right": float((pred[wrong] == train.clean[wrong]).sum()) / n,
            "same": float((pred[wrong] == train.label[wrong]).sum()) / n}


def variants_table(rows: list[dict]) -> list[str]:
    """Issue 25: every L2B variant at every level, paired by seed with ce and ce+clean, with its validation
    score (the 4 clean cases; for l2b+clean they are training data too) and its weight separation."""
    lines = []
    for level in sorted({r["level"] for r in rows}, reverse=True):
        ce = {r["seed"]: r for r in rows if r["method"] == "ce" and math.isclose(r["level"], level)}
        clean = {r["seed"]: r for r in rows if r["method"] == "ce+clean" and math.isclose(r["level"], level)}
        oracle = {r["seed"]: r for r in rows if r["method"] == "oracle"}
        for method in VARIANTS:
            runs = {r["seed"]: r for r in rows if r["method"] == method and math.isclose(r["level"], level)}
            if not runs:
                continue
            seeds = sorted(runs)
            sep = [runs[s].get("separation") or separation(runs[s]["run"]) for s in seeds]
            pse = [runs[s]["pseudo_on_wrong"] for s in seeds if "pseudo_on_wrong" in runs[s]]
            right = sum(p["right"] for p in pse) / len(pse) if pse else math.nan
            same = sum(p["same"] for p in pse) / len(pse) if pse else math.nan
            evs = [runs[s]["evidence"]["all"] for s in seeds if "evidence" in runs[s]]

            def avg(key):
                return f"{sum(e[key] for e in evs) / len(evs):.2f}" if evs else "–"

            def diff(other):
                d = [100 * (runs[s]["dice"] - other[s]["dice"]) for s in seeds if s in other]
                return f"{fmt(d)} ({len(d)})" if d else "–"
            gap = [(runs[s]["dice"] - ce[s]["dice"]) / (oracle[s]["dice"] - ce[s]["dice"])
                   for s in seeds if s in ce and s in oracle]
            closed = f"{sum(gap) / len(gap):.0%}" if gap else "–"
            lines.append(f"| {level} | {method} | {len(seeds)} | {fmt([runs[s]['val_best'] for s in seeds], digits=3)} | "
                         f"{sum(w for w, _ in sep) / len(sep):.2f} / {sum(r for _, r in sep) / len(sep):.2f} | "
                         f"{right:.2f} / {same:.2f} / {right + 0.5 * same:.2f} | "
                         f"{avg('evidence_auroc')} / {avg('confidence_auroc')} | "
                         f"{avg('picks_pseudo_on_wrong')} / {avg('picks_pseudo_on_right')} | "
                         f"{fmt([runs[s]['dice'] for s in seeds], 100)} | {diff(ce)} | {diff(clean)} | {closed} |")
    if not lines:
        return []
    return ["", ("L2B variants (issue 25), paired by seed. Validation: best Dice on the 4 clean meta cases (for "
            "``l2b+clean`` also its training data, so not a held-out score). β share: the pseudo-label's share of the "
            "weight on wrongly / rightly labelled training pixels, mean over the last third of training. Last network "
            "on wrong pixels: the share it predicts right, the share where it repeats the wrong label, and the β share "
            "an ideal meta step could reach with it (right + ½ same: equal labels always split 50/50). Evidence probe "
            "(``evidence_probe``, the last network, pixels whose pseudo-label differs from the given one): AUROC of "
            "the meta evidence for the pseudo-label against the network's own confidence margin at telling wrong "
            "given labels from right ones, and how often the meta step picks the pseudo-label on wrong / right "
            "given labels. − CE and "
            "− ce+clean: Dice points, paired seeds in brackets; gap closed: (L2B − CE) / (oracle − CE), mean over "
            "seeds:"), "",
            ("| noise Dice | method | seeds | validation Dice | β share wrong / right | last network on wrong pixels: "
            "right / same / ideal β share | AUROC meta evidence / confidence | picks pseudo on wrong / right | "
            "test Dice (%) | − CE | − ce+clean | gap closed |"),
            "|---|---|---|---|---|---|---|---|---|---|---|---|", *lines]


def by_seed_06(rows: list[dict], method: str) -> dict[int, dict]:
    """The runs of ``method`` at noise 0.6, by seed."""
    return {r["seed"]: r for r in rows if r["method"] == method and math.isclose(r["level"], 0.6)}


#: the 2-D and 3-D twins the dims table pairs (issue 12's rows, and issue 25's with the default floor)
DIMS = (("ce", "ce-3d"), ("l2b", "l2b-3d"), ("l2b-floor6", "l2b-3d-floor6"))


def dims_table(rows: list[dict]) -> list[str]:
    """Issues 12 and 25: 3-D UNet++ on whole volumes against the 2-D slice UNet++ at noise 0.6, paired by seed."""
    runs = {m: by_seed_06(rows, m) for pair in DIMS for m in pair}
    pairs = [(two, three) for two, three in DIMS if runs[two] and runs[three]]
    if not pairs:
        return []
    lines = ["", ("2-D slices against 3-D volumes at noise 0.6 (same cases, noisy labels and seeds; the 3-D rows use the "
             "``cpu-3d`` profile). Paired differences per seed:"), "",
             ("| method | 2-D Dice (%) | 3-D Dice (%) | 3-D − 2-D per seed | 3-D − 2-D | 2-D HD95 (mm) | 3-D HD95 (mm) | "
             "train time 2-D (s, min / median) | 3-D |"), "|---|---|---|---|---|---|---|---|---|"]
    for two, three in pairs:
        a, b = runs[two], runs[three]
        seeds = sorted(set(a) & set(b))
        diffs = [100 * (b[s]["dice"] - a[s]["dice"]) for s in seeds]
        dm, ds = mean_std(diffs)
        lines.append(f"| {two} | {fmt([r['dice'] for r in a.values()], 100)} | {fmt([r['dice'] for r in b.values()], 100)}"
                     f" | {', '.join(f'{d:+.2f}' for d in diffs)} | {dm:+.2f} ± {ds:.2f} | "
                     f"{fmt([r['hd95'] for r in a.values()])} | {fmt([r['hd95'] for r in b.values()])} | "
                     f"{times(list(a.values()))} | {times(list(b.values()))} |")
    ce3d = runs["ce-3d"]
    for three in (three for two, three in pairs if two != "ce"):
        seeds = sorted(set(ce3d) & set(runs[three]))
        diffs = [100 * (runs[three][s]["dice"] - ce3d[s]["dice"]) for s in seeds]
        if diffs:
            dm, ds = mean_std(diffs)
            lines += ["", (f"3-D L2B (``{three}``) − 3-D CE, paired: {', '.join(f'{d:+.2f}' for d in diffs)} "
                      f"(mean {dm:+.2f} ± {ds:.2f} Dice points; validation {fmt([runs[three][s]['val_best'] for s in seeds], digits=3)} "
                      f"against {fmt([ce3d[s]['val_best'] for s in seeds], digits=3)}).")]
    return lines


#: issue 25's budget study: each 36-epoch run and its 12-epoch twin
BUDGET = (("ce", "ce-e36"), ("ce+clean", "ce+clean-e36"), ("l2b-floor6", "l2b-floor6-e36"))


def budget_table(rows: list[dict]) -> list[str]:
    """Issue 25: does CE memorise the noise after 12 epochs? Each method at 12 and at 36 epochs (same seeds),
    with the epoch of its best validation Dice and how far the last epoch's validation Dice fell from it."""
    lines = []
    for level in sorted({r["level"] for r in rows}, reverse=True):
        for short, long in BUDGET:
            b = {r["seed"]: r for r in rows if r["method"] == long and math.isclose(r["level"], level)}
            a = {r["seed"]: r for r in rows if r["method"] == short and math.isclose(r["level"], level)}
            seeds = sorted(set(a) & set(b))
            if not seeds:
                continue
            cells = []
            for runs in (a, b):
                hist = [_history(Path(runs[s]["run"])) for s in seeds if Path(runs[s]["run"]).exists()]
                peak = [max(range(len(h)), key=lambda i, h=h: float(h[i]["val_score"])) + 1 for h in hist]
                drop = [max(float(e["val_score"]) for e in h) - float(h[-1]["val_score"]) for h in hist]
                cells += [fmt([runs[s]["val_best"] for s in seeds], digits=3),
                          ", ".join(map(str, peak)) or "–", fmt(drop, digits=3) if drop else "–",
                          fmt([runs[s]["dice"] for s in seeds], 100), times([runs[s] for s in seeds])]
            diffs = [100 * (b[s]["dice"] - a[s]["dice"]) for s in seeds]
            lines.append(f"| {level} | {short} | {len(seeds)} | " + " | ".join(cells) + f" | {fmt(diffs)} |")
    if not lines:
        return []
    head = ("best val | best epoch | val drop to last | test Dice (%) | train s, min / median")
    return ["", ("The budget (issue 25): each method at 12 epochs (4 of warm-up) and at 36 (12), same seeds. "
            "Validation: the 4 clean cases (for ce+clean also training data). A CE run that memorises the noise "
            "peaks early and falls by the last epoch:"), "",
            f"| noise Dice | method | seeds | 12 ep: {head.replace(' | ', ' | 12 ep: ')} | "
            f"36 ep: {head.replace(' | ', ' | 36 ep: ')} | 36 − 12 (test points) |",
            "|---|---|---|" + "---|" * 10 + "---|", *lines]


def epoch_ratios(run: str) -> tuple[float, float]:
    """Cost × CE measured inside one run, immune to what else the machine did between runs: its CE
    warm-up epochs are the CE reference. Returns (median meta-epoch time / median warm-up epoch time,
    whole training time / (epochs × median warm-up epoch time))."""
    import statistics

    rows = _history(Path(run))
    warm = [float(r["time_s"]) for r in rows if r["warmup"] == "1"]
    meta = [float(r["time_s"]) for r in rows if r["warmup"] != "1"]
    if not warm or not meta:
        return float("nan"), float("nan")
    ref = statistics.median(warm)
    return statistics.median(meta) / ref, sum(warm + meta) / (len(rows) * ref)


def amortised_table(rows: list[dict]) -> list[str]:
    """Issue 14's trade-off at 0.6: ``meta_every`` k against the exact step (k = 1) and CE, paired by seed."""
    ce = by_seed_06(rows, "ce")
    exact = by_seed_06(rows, "l2b")
    lines = []
    for k, method in ((1, "l2b"), (2, "l2b-k2"), (4, "l2b-k4")):
        runs = by_seed_06(rows, method)
        seeds = sorted(set(runs) & set(ce))
        if not seeds:
            continue
        ratios = [epoch_ratios(runs[s]["run"]) for s in seeds]
        epoch_x, total_x = (sorted(r[i] for r in ratios) for i in (0, 1))
        wall = sorted(runs[s]["train_s"] / ce[s]["train_s"] for s in seeds)
        diffs = [100 * (runs[s]["dice"] - exact[s]["dice"]) for s in seeds if s in exact]
        dm, ds = mean_std(diffs)
        mid = len(seeds) // 2
        lines.append(f"| {k} | {len(seeds)} | {epoch_x[mid]:.2f} | {total_x[mid]:.2f} "
                     f"({', '.join(f'{r:.2f}' for r in total_x)}) | {wall[mid]:.2f} | "
                     f"{fmt([runs[s]['dice'] for s in seeds], 100)} | {dm:+.2f} ± {ds:.2f} | "
                     f"{fmt([100 * (runs[s]['dice'] - ce[s]['dice']) for s in seeds])} |")
    if len(lines) < 2:
        return []
    return ["", ("Amortised meta step at noise 0.6 (``meta_every`` = k; k = 1 is the exact step). Cost × CE is "
            "measured inside each run against its own 4 CE warm-up epochs (same process, same machine state): "
            "per meta epoch, and for the whole 12-epoch training; medians over seeds (all seeds in brackets). "
            "The last time column divides by the CE run of the same seed instead, which other work on the "
            "machine between runs disturbs:"), "",
            ("| k | seeds | meta epoch × CE | training × CE | training × CE run | Dice (%) | − exact L2B "
            "(points, paired) | − CE (points, paired) |"),
            "|---|---|---|---|---|---|---|---|", *lines]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, default=ROOT.parent / "shared" / "data" / "Task04_Hippocampus")
    ap.add_argument("--work", type=Path, default=ROOT / "bench_runs" / "hippocampus")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--blocks", default="1,2,3,4,5,7", help="which blocks of the plan to run, in order")
    ap.add_argument("--set", action="append", default=[], help="extra config KEY=VALUE for every run")
    ap.add_argument("--no-write", action="store_true", help="print the tables only")
    ap.add_argument("--report-only", action="store_true", help="write the tables from the finished runs, train nothing")
    ap.add_argument("--section", default="hippocampus",
                    help="the BENCHMARKS.md markers to write between (issue 25's runs: hippocampus-issue25)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = args.work / "results.jsonl"
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    finished = {(r["level"], r["method"], r["seed"]) for r in done}
    overrides = dict(item.split("=", 1) for item in args.set)
    schedule = [(seed, level, name) for b in args.blocks.split(",") for seed in range(args.seeds)
                for level, name in BLOCKS[int(b) - 1]]
    data = prepare(args.raw, args.work) if not args.report_only else {}
    t0 = time.time()
    for i, (seed, level, name) in enumerate(schedule, 1):
        if (level, name, seed) in finished or args.report_only:
            continue
        row = run_one(level, name, seed, data[level], args.work, overrides)
        done.append(row)
        with open(results, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"[{i}/{len(schedule)}] {level} {name} seed {seed}: Dice {row['dice']:.4f} "
              f"(val {row['val_best']:.4f}; {row['train_s']:.0f}s train, {time.time() - t0:.0f}s total)", flush=True)
    enrich(done, args.work)
    text = tables(done)
    figs = weight_figures([{**r, "task": "seg"} for r in done], ROOT / "benchmarks" / "figures", prefix=args.section)
    text += "\n\n" + "\n".join(f"![{p.stem}](benchmarks/figures/{p.name})" for p in figs)
    plan = {(level, name, seed) for seed in range(args.seeds) for block in BLOCKS for level, name in block}
    finished_now = len(plan & {(r["level"], r["method"], r["seed"]) for r in done})
    flag = "" if args.section == "hippocampus" else f" --section {args.section}"
    text += (f"\n\nCommand: `python benchmarks/hippocampus.py --seeds {args.seeds}{flag}`; {finished_now} of "
             f"{len(plan)} runs of the whole plan finished.")
    print(text)
    if not args.no_write:
        write_benchmarks_md(text, section=args.section)
        if args.section in DEFAULT_L2B:
            write_demo_summary(done, args.seeds, args.section)


def enrich(rows: list[dict], work: Path) -> None:
    """Add the weight separation, the last network's pseudo-labels on wrong pixels and the evidence probe to
    the L2B variants' rows. Computed once per run folder that is here and cached in ``work/enrich.jsonl``
    (results.jsonl is only ever appended to, by the runs), so rows keep them once the folders are gone."""
    cache_path = work / "enrich.jsonl"
    cache = {}
    if cache_path.exists():
        cache = {e["run"]: e for e in map(json.loads, cache_path.read_text().splitlines())}
    for r in rows:
        if r["method"] not in VARIANTS:
            continue
        if r["run"] not in cache and Path(r["run"]).exists():
            entry = {"run": r["run"], "separation": list(separation(r["run"])),
                     "pseudo_on_wrong": pseudo_on_wrong(r["run"]), "evidence": evidence_probe(r["run"])}
            with open(cache_path, "a") as fh:
                fh.write(json.dumps(entry) + "\n")
            cache[r["run"]] = entry
        r.update({k: v for k, v in cache.get(r["run"], {}).items() if k != "run"})


#: per BENCHMARKS.md section, the run name the demo prints as l2b: L2B with the shipped segmentation defaults as
#: they were until ``--method l2b`` trained on its trusted cases (issue 37), i.e. ``l2b-pure`` with the default floor;
#: the shipped form since is ``l2b+clean-floor6`` (blocks 24-25), not yet run on every level and seed
DEFAULT_L2B = {"hippocampus-issue25": "l2b-floor6"}  # the main section's l2b rows predate the floor


def write_demo_summary(rows: list[dict], seeds: int, section: str) -> None:
    """The 0.6 results the demo prints next to its one-seed run (medl2b/demo_data/hippocampus_benchmark.json),
    with L2B as the shipped defaults run it."""
    dice = {}
    for shown, method in (("ce", "ce"), ("l2b", DEFAULT_L2B[section]), ("ce+clean", "ce+clean"),
                          ("meta-only", "meta-only"), ("oracle", "oracle")):
        rs = [r for r in rows if r["method"] == method and math.isclose(r["level"], 0.6) and r["seed"] < seeds]
        if rs:
            m, s = mean_std([100 * r["dice"] for r in rs])
            dice[shown] = {"mean": round(m, 2), "std": round(s, 2), "seeds": len(rs)}
    if not dice:
        return
    summary = {"command": f"python benchmarks/hippocampus.py --section {section}", "level": 0.6, "test_cases": 40,
               "seeds": max(v["seeds"] for v in dice.values()), "dice": dice}
    path = ROOT / "medl2b" / "demo_data" / "hippocampus_benchmark.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
