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
``meta-only`` (the 2 clean images alone), ``l2b`` (the defaults, α_i + β_i = 1 per pixel, in the paper's pure
form: ``--method l2b-pure``, see :data:`METHOD`) and ``oracle``
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

**``--setup pretrained``** (issue 37): the same split and given labels with ``arch: unetpp-lite0`` (the UNet++
decoder over EfficientNet-Lite0's ImageNet-pretrained encoder, decoder widths [16, 16, 32, 64, 128]), the
methods ``ce``, ``l2b``, ``l2b+clean`` (the 2 clean images also trained on), ``ce+clean``, ``meta-only`` and
``oracle``, in ``bench_runs/annotators_pretrained`` and the ``annotators-pretrained`` section. Resolution,
patch size, epochs and learning rate are chosen on the 2 clean validation images only, never on test:

1. ``--tune`` trains ``ce`` on observer 2's labels (seed 0) for each of the :data:`CANDIDATES` and records
   only its best validation Dice (the 2 clean images against observer 1); nothing is evaluated on test;
2. the benchmark then runs with the candidate of the highest validation Dice (``--candidate NAME``
   overrides the choice; it is recorded in every row and in the tables).

    python benchmarks/annotators.py --setup pretrained --tune        # 6 runs, ~18 min on 2 idle cores
    python benchmarks/annotators.py --setup pretrained --blocks 1    # 3 seeds with the chosen candidate
    python benchmarks/annotators.py --setup pretrained --smoke       # 1 seed, ce and l2b, 2 steps

**``--probe``** (with ``--report-only``: nothing is trained) measures, with each finished ``l2b`` and
``l2b+clean`` run's last network, how well the meta step's evidence, the network's confidence margin, the β
share the run's own settings give (floor included) and their rank mean rank the training pixels whose given
label is wrong (vs observer 1) among those whose pseudo-label differs from it (``benchmarks/probe.py``), and
caches it in ``WORK/probe.jsonl`` for the tables:

    python benchmarks/annotators.py --setup pretrained --report-only --probe
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
from probe import evidence_probe

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
#: row name -> (config method, overrides); other rows run the method they name. The ``l2b`` rows are the paper's pure
#: form (``--method l2b-pure`` since ``--method l2b`` trains on its trusted cases, issue 37); ``l2b+clean`` is that
METHOD = {"oracle": ("ce", {"label_source": "clean"}), "l2b": ("l2b-pure", {}), "l2b+clean": ("l2b", {})}
BLOCKS = [
    [("observers", m) for m in ("ce", "l2b", "ce+clean", "meta-only", "oracle")],
    [("synthetic", m) for m in ("ce", "l2b", "ce+clean")],
]
ORDER = ("ce", "ce+clean", "meta-only", "l2b", "oracle")
KEYS = ("dice", "cldice", "hd95", "asd")

#: --setup pretrained: UNet++ over the ImageNet-pretrained EfficientNet-Lite0 encoder (issue 37)
PRETRAINED = {"arch": "unetpp-lite0", "pretrained": "imagenet", "features": [16, 16, 32, 64, 128, 16],
              "patches_per_slice": 8}
PRETRAINED_ORDER = ("ce", "ce+clean", "meta-only", "l2b", "l2b+clean", "oracle")
PRETRAINED_BLOCKS = [
    [("observers", m) for m in ("ce", "l2b", "l2b+clean", "ce+clean", "meta-only", "oracle")],
    [("synthetic", m) for m in ("ce", "l2b", "l2b+clean", "ce+clean")],
]
#: Candidates of --tune: (prepared side in px, overrides). A third of the epochs is CE warm-up, as in the profile.
#: Cost at 1 thread beside another run (measured: a CE step at 96 px, batch 8, 1.5 s; L2B 3.7 s; 128 px 3.7 s
#: and 9.9 s; 512 px sliding-window prediction 6.5 s an image by 96 px windows, 8.9 s by 128 px):
CANDIDATES = {
    "512px-p96-e6-lr0.1": (512, {"patch_size_2d": [96, 96], "epochs": 6, "warmup_epochs": 2, "lr": 0.1}),
    "512px-p96-e6-lr0.01": (512, {"patch_size_2d": [96, 96], "epochs": 6, "warmup_epochs": 2, "lr": 0.01}),
    "512px-p96-e12-lr0.01": (512, {"patch_size_2d": [96, 96], "epochs": 12, "warmup_epochs": 4, "lr": 0.01}),
    "512px-p128-e6-lr0.01": (512, {"patch_size_2d": [128, 128], "epochs": 6, "warmup_epochs": 2, "lr": 0.01}),
    "768px-p96-e6-lr0.01": (768, {"patch_size_2d": [96, 96], "epochs": 6, "warmup_epochs": 2, "lr": 0.01}),
    # added after the first two: lr 0.1 led on validation and a run took ~100 s, not ~4 min (longer
    # schedules do not fit three seeds of six methods in one session's lane)
    "512px-p96-e12-lr0.1": (512, {"patch_size_2d": [96, 96], "epochs": 12, "warmup_epochs": 4, "lr": 0.1}),
}
SETUPS = {  # name -> run-folder name, BENCHMARKS.md section, blocks, method order, fixed overrides
    "scratch": {"folder": "annotators", "section": "annotators", "blocks": BLOCKS, "order": ORDER,
                "overrides": OVERRIDES, "net": "UNet++ [8, 8, 16, 32, 64, 8]"},
    "pretrained": {"folder": "annotators_pretrained", "section": "annotators-pretrained", "blocks": PRETRAINED_BLOCKS,
                   "order": PRETRAINED_ORDER, "overrides": PRETRAINED,
                   "net": "UNet++ over ImageNet-pretrained EfficientNet-Lite0 (`unetpp-lite0`), decoder [16, 16, 32, 64, 128]"},
}


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


def run_one(source: str, name: str, seed: int, data: Path, work: Path, overrides: dict, *,
            fixed: dict = OVERRIDES, run: Path | None = None, test: bool = True) -> dict:
    """Train one run (or reuse its finished folder) and evaluate it on the test images; ``test=False``
    (``--tune``): the best validation Dice only, nothing evaluated on test."""
    run = run or work / "runs" / f"{name}_{source}_s{seed}"
    method, extra = METHOD.get(name, (name, {}))
    cfg = load_config("segmentation", profile="cpu", overrides={
        "data": str(data), "out": str(run), "method": method, "seed": seed, "device": "auto", **fixed,
        **extra, **overrides})
    if _finished(run, cfg):  # trained before the benchmark stopped, not yet evaluated: its own epoch times
        train_s = sum(float(h["time_s"]) for h in _history(run))
    else:
        shutil.rmtree(run, ignore_errors=True)  # an unfinished run from an interrupted benchmark
        t = time.time()
        train(cfg, progress=False)
        train_s = time.time() - t
    val_best = max(float(h["val_score"]) for h in _history(run))
    if not test:
        return {"source": source, "method": name, "seed": seed, "train_s": round(train_s, 1), "run": str(run),
                "val_best": val_best}
    t = time.time()
    summary = evaluate_run(run, split="test", checkpoint="best", figures=False)
    eval_s = time.time() - t
    return {"source": source, "method": name, "seed": seed, "train_s": round(train_s, 1),
            "eval_s": round(eval_s, 1), "run": str(run), **{k: summary["mean"][k] for k in KEYS},
            "n_failed": summary["n_failed"], "given_dice": given_dice(data), "val_best": val_best}


def _pick(rows: list[dict], source: str, method: str) -> list[dict]:
    return [r for r in rows if r["method"] == method and (method in SHARED or r["source"] == source)]


def _wall(rs: list[dict]) -> str:
    """Training + evaluation wall time of one run, min / median over seeds."""
    return times([{"train_s": r["train_s"] + r.get("eval_s", 0.0)} for r in rs])


def tables(rows: list[dict], command: str, given: dict[str, float], settings: dict, *, size: int = SIZE,
           net: str | None = None, order=ORDER, probe: dict[str, dict] | None = None) -> str:
    sources = [s for s in SOURCES if any(r["source"] == s and r["method"] not in SHARED for r in rows)]
    net = net or f"UNet++ {settings['features']}"
    out = [(f"### CHASE_DB1 retinal vessels, 8 test images (4 children), observer 1 as reference; {size} px, "
            f"{settings['patch_size_2d'][0]} px patches, {net}, {settings['epochs']} epochs"
            + (f", lr {settings['lr']}" if "lr" in settings else "")
            + "; mean ± std over seeds of the per-run mean over images"), "",
           ("Given training labels: `observers` = observer 2 (Dice "
            f"{given.get('observers', math.nan):.3f} against observer 1), `synthetic` = medl2b's mask noise at noise "
            f"Dice {NOISE_DICE} (achieved {given.get('synthetic', math.nan):.3f}). `meta-only` and `oracle` never see the given labels: "
            "one set of runs serves both sources."), "",
           ("| given labels | method | seeds | Dice (%) | clDice (%) | HD95 (raw px) | ASD (raw px) | failed images | "
            "best val Dice (%) | wall time per run (s), train + eval, min / median |"),
           "|---|---|---|---|---|---|---|---|---|---|"]
    for source in sources:
        for method in order:
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
    out += trusted_table(rows, sources)
    out += separation_table(rows, sources)
    out += probe_table(rows, sources, probe or {})
    out += ["", f"Command: `{command}`; {len(rows)} runs finished."]
    return "\n".join(out)


def trusted_table(rows: list[dict], sources) -> list[str]:
    """``l2b+clean`` (the clean images also trained on) against ``l2b`` and ``ce+clean``, paired by seed."""
    lines = ["", "The trusted images trained on: `l2b+clean` against `l2b` and `ce+clean`, paired by seed, in points:", "",
             "| given labels | metric | l2b+clean (%) | − l2b per seed | − l2b | − ce+clean per seed | − ce+clean |",
             "|---|---|---|---|---|---|---|"]
    for source in sources:
        mine = {r["seed"]: r for r in _pick(rows, source, "l2b+clean")}
        if not mine:
            continue
        for key, label in (("dice", "Dice"), ("cldice", "clDice")):
            cells = [fmt([r[key] for r in mine.values()], 100)]
            for other in ("l2b", "ce+clean"):
                theirs = {r["seed"]: r for r in _pick(rows, source, other)}
                diffs = [100 * (mine[s][key] - theirs[s][key]) for s in sorted(set(mine) & set(theirs))]
                m, sd = mean_std(diffs)
                cells += [", ".join(f"{d:+.2f}" for d in diffs) or "–", f"{m:+.2f} ± {sd:.2f}" if diffs else "–"]
            lines.append(f"| {source} | {label} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 5 else []


def separation_table(rows: list[dict], sources) -> list[str]:
    """How the L2B weights split the pixels whose given label is wrong (vs observer 1) from the right ones:
    the pseudo-label's share β/(α+β), mean over the last third of the epochs (from each run's metrics.csv).
    ``l2b+clean``'s trusted images are left out of both means (the trainer's diagnostics)."""
    lines = ["", ("L2B's weights on training pixels whose given label disagrees with observer 1 (wrong, disputed) and "
                  "agrees (right, agreed): the pseudo-label's share β/(α+β), mean over the last third of the epochs, "
                  "per seed:"), "",
             "| given labels | method | seeds | β share on wrong | β share on right | per seed (wrong / right) |",
             "|---|---|---|---|---|---|"]
    for source, method in ((s, m) for s in sources for m in ("l2b", "l2b+clean")):
        parts = []
        for r in _pick(rows, source, method):
            hist = [h for h in _history(Path(r["run"])) if h.get("warmup") in ("0", "False", "false")]
            tail = hist[len(hist) - max(1, len(hist) // 3):]
            if tail:
                parts.append(tuple(float(np.mean([float(h[k]) for h in tail]))
                                   for k in ("beta_share_on_wrong", "beta_share_on_right")))
        if parts:
            w, r_ = zip(*parts)
            lines.append(f"| {source} | {method} | {len(parts)} | {np.mean(w):.2f} | {np.mean(r_):.2f} | "
                         + ", ".join(f"{a:.2f} / {b:.2f}" for a, b in parts) + " |")
    return lines if len(lines) > 4 else []


#: the methods the evidence probe measures (--probe), its batches per run and its seed
PROBE_METHODS, PROBE_BATCHES, PROBE_SEED = ("l2b", "l2b+clean"), 16, 0


def probes(rows: list[dict], work: Path, *, compute: bool = False) -> dict[str, dict]:
    """The evidence probe (``benchmarks/probe.py``) of every ``l2b`` / ``l2b+clean`` row, by run folder, from the
    cache ``work/probe.jsonl`` (one line per run, never rewritten: results.jsonl holds the runs only).
    ``compute`` (``--probe``): first probe every such run that is not cached and whose folder is here, on
    random patches of its own training window, :data:`PROBE_BATCHES` batches (at 1 thread beside another run,
    about a minute or two a run for ``unetpp-lite0``). Without it nothing is computed."""
    from medl2b.config import load_config_file

    path = work / "probe.jsonl"
    cache = {e["run"]: e for e in load_rows(path)}
    if not compute:
        return cache
    for r in rows:
        if r["method"] not in PROBE_METHODS or r["run"] in cache:
            continue
        run = Path(r["run"])
        if not (run / "checkpoint_latest.pt").exists():
            print(f"[annotators] probe: {run} has no checkpoint_latest.pt here, skipped", flush=True)
            continue
        patch = int(load_config_file(run / "config.yaml").patch_size_2d[0])
        t = time.time()
        entry = {"run": r["run"], "batches": PROBE_BATCHES, "seed": PROBE_SEED,
                 **evidence_probe(str(run), batches=PROBE_BATCHES, seed=PROBE_SEED, patch=patch)}
        entry["probe_s"] = round(time.time() - t, 1)
        with open(path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        cache[r["run"]] = entry
        auc = {k: "–" if v is None else f"{v:.2f}" for k, v in entry["all"].items() if k.endswith("_auroc")}
        print(f"[annotators] probe {r['source']} {r['method']} seed {r['seed']}: AUROC evidence "
              f"{auc['evidence_auroc']}, margin {auc['confidence_auroc']}, β as trained {auc['beta_auroc']}, "
              f"combined {auc['combined_auroc']} ({entry['probe_s']:.0f} s)", flush=True)
    return cache


def probe_table(rows: list[dict], sources, cache: dict[str, dict]) -> list[str]:
    """The evidence probe of the ``l2b`` and ``l2b+clean`` runs (:func:`probes`' cache), mean over seeds."""
    lines = []
    for source, method in ((s, m) for s in sources for m in PROBE_METHODS):
        found = [cache[r["run"]] for r in _pick(rows, source, method) if r["run"] in cache]
        if not found:
            continue

        def avg(key, found=found):
            vals = [e["all"][key] for e in found if e["all"].get(key) is not None]
            return f"{np.mean(vals):.2f}" if vals else "–"
        n = np.mean([e["all"]["n"] for e in found])
        lines.append(f"| {source} | {method} | {len(found)} | {n:,.0f} / {avg('wrong_share')} | "
                     f"{avg('evidence_auroc')} | {avg('confidence_auroc')} | {avg('beta_auroc')} | "
                     f"{avg('combined_auroc')} | {avg('picks_pseudo_on_wrong')} / {avg('picks_pseudo_on_right')} |")
    if not lines:
        return []
    e = next(iter(cache[r["run"]] for r in rows if r["run"] in cache))
    drawn = (f"{e['patch'][0]} px patches of the training images, meta patches centred on a vessel" if e.get("patch")
             else "whole training images")
    return ["", ("Evidence probe (`benchmarks/probe.py`, `--probe`): the last network of each run, "
                 f"{e['batches']} batches of {drawn}, seed {e['seed']}. Pixels: the training pixels whose pseudo-label "
                 "(the last network's argmax) differs from the given label, mean count per run; wrong: the given "
                 "label disagrees with observer 1 (its share of those pixels). AUROC at ranking the wrong ones first "
                 "(0.5 = chance) of: the meta evidence for the pseudo-label, (−∂L_meta/∂ε_β) − (−∂L_meta/∂ε_α), "
                 "without a floor; the network's confidence margin p(pseudo) − p(given); the β share β/(α+β) the "
                 "run's own meta step trains with (its `pseudo_floor` and `meta_normalise`: β = 0 below the floor, "
                 "so a floor that closes every such pixel gives 0.5); and the mean of the evidence's and the margin's "
                 "ranks (evidence weighted by confidence). Picks pseudo: the share of those pixels whose meta evidence "
                 "for the pseudo-label is positive, on wrong / right given labels. Mean over seeds:"), "",
            ("| given labels | method | seeds | pixels / wrong share | AUROC meta evidence | AUROC confidence margin | "
             "AUROC β share as trained | AUROC combined | picks pseudo on wrong / right |"),
            "|---|---|---|---|---|---|---|---|---|", *lines]


def _num(v: float, spec: str = ".2f") -> str:
    return "–" if not math.isfinite(v) else format(v, spec)


def tune_table(tuned: list[dict], chosen: str | None) -> list[str]:
    """The --tune candidates: best validation Dice of ``ce`` on observer 2's labels (the 2 clean images against
    observer 1); the benchmark runs with the highest."""
    lines = ["", "Chosen on the 2 clean validation images (`--tune`: `ce` on observer 2's labels; no test image "
                 "seen), best validation Dice per candidate:", "",
             "| candidate | seeds | best val Dice (%) | train s, min / median |", "|---|---|---|---|"]
    for name in CANDIDATES:
        rs = [r for r in tuned if r["candidate"] == name]
        if rs:
            mark = "**" if name == chosen else ""
            lines.append(f"| {mark}{name}{mark} | {len(rs)} | {fmt([r['val_best'] for r in rs], 100)} | {times(rs)} |")
    return lines if len(lines) > 5 else []


def choose(tuned: list[dict], asked: str | None) -> str | None:
    """The candidate of the highest mean validation Dice (or ``asked``)."""
    if asked is not None:
        if asked not in CANDIDATES:
            raise SystemExit(f"unknown candidate {asked!r}; choose from {', '.join(CANDIDATES)}")
        return asked
    means = {n: np.mean([r["val_best"] for r in tuned if r["candidate"] == n]) for n in CANDIDATES
             if any(r["candidate"] == n for r in tuned)}
    return max(means, key=means.get) if means else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, default=ROOT.parent / "shared" / "data" / "CHASEDB1")
    ap.add_argument("--setup", choices=sorted(SETUPS), default="scratch",
                    help="scratch: UNet++ from scratch (issue 23's record); pretrained: unetpp-lite0 (issue 37)")
    ap.add_argument("--work", type=Path, default=None,
                    help="default bench_runs/<the setup's folder> (--smoke: <folder>_smoke)")
    ap.add_argument("--seeds", type=int, default=None, help="paired seeds (default 3; --smoke and --tune: 1)")
    ap.add_argument("--blocks", default="1,2", help="which blocks of the plan to run, in order")
    ap.add_argument("--methods", default=None, help="only these methods of the blocks, e.g. ce,l2b")
    ap.add_argument("--set", action="append", default=[], help="extra config KEY=VALUE for every run")
    ap.add_argument("--tune", action="store_true",
                    help="pretrained: train ce on observer 2's labels for every candidate and record the validation "
                         "Dice only (what chooses the candidate)")
    ap.add_argument("--candidate", default=None, help="pretrained: run this candidate instead of the best-validated")
    ap.add_argument("--smoke", action="store_true",
                    help="1 seed, ce and l2b on observer 2, 1 epoch of 2 steps: proves the pipeline, writes no tables "
                         "into BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true", help="print the tables only")
    ap.add_argument("--report-only", action="store_true", help="write the tables from the finished runs, train nothing")
    ap.add_argument("--probe", action="store_true",
                    help="first compute the evidence probe (benchmarks/probe.py) of every finished l2b and l2b+clean "
                         "run missing from WORK/probe.jsonl (a minute or two a run), then write the tables; without "
                         "it the probe table reads that cache only. With --report-only: probe, train nothing")
    args = ap.parse_args()
    setup = SETUPS[args.setup]
    pretrained = args.setup == "pretrained"
    if (args.tune or args.candidate) and not pretrained:
        ap.error("--tune and --candidate belong to --setup pretrained")
    work = args.work or ROOT / "bench_runs" / (setup["folder"] + ("_smoke" if args.smoke else ""))
    seeds = args.seeds or (1 if args.smoke or args.tune else 3)
    methods = set((args.methods or ("ce,l2b" if args.smoke else ",".join(setup["order"]))).split(","))
    extra = dict(item.split("=", 1) for item in args.set)
    work.mkdir(parents=True, exist_ok=True)
    tune_file = work / "tune.jsonl"
    tuned = load_rows(tune_file)
    if args.tune and not args.report_only:
        for name, (size, cand) in CANDIDATES.items():
            for seed in range(seeds):
                if any(r["candidate"] == name and r["seed"] == seed for r in tuned):
                    continue
                print(f"[annotators] tune {name} seed {seed}", flush=True)
                data = prepare(args.raw, work, size)
                row = {"candidate": name, "size": size, **run_one(
                    "observers", "ce", seed, data["observers"], work, {**cand, **extra}, fixed=setup["overrides"],
                    run=work / "tune" / f"{name}_s{seed}", test=False)}
                with open(tune_file, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                tuned.append(row)
                print(f"[annotators]   val {row['val_best']:.4f} ({row['train_s']:.0f} s)", flush=True)
        print("\n".join(tune_table(tuned, choose(tuned, None))))
        return
    chosen = choose(tuned, args.candidate) if pretrained else None
    if pretrained and chosen is None and not args.smoke:
        raise SystemExit(f"no tuned candidate in {tune_file}: run --setup pretrained --tune first, or name one "
                         "with --candidate")
    size, fixed = SIZE, setup["overrides"]
    if pretrained:
        size, cand = CANDIDATES[chosen or next(iter(CANDIDATES))]
        fixed = {**fixed, **cand}
    overrides = {**(SMOKE if args.smoke else {}), **extra}
    blocks = [[(s, m) for s, m in setup["blocks"][int(b) - 1] if m in methods]
              for b in ("1" if args.smoke else args.blocks).split(",")]
    results = work / "results.jsonl"
    rows = load_rows(results)
    if pretrained:  # the runs of the chosen candidate only (an earlier choice's rows stay in the file)
        rows = [r for r in rows if r.get("candidate") == chosen]
    command = ("python benchmarks/annotators.py" + (f" --setup {args.setup}" if pretrained else "")
               + (" --smoke" if args.smoke else f" --seeds {seeds}" if seeds != 3 else ""))
    if not args.report_only:
        data = prepare(args.raw, work, size)
        done = {(None if r["method"] in SHARED else r["source"], r["method"], r["seed"]) for r in rows}
        t0 = time.time()
        for block in blocks:
            for seed in range(seeds):
                for source, name in block:
                    key = (None if name in SHARED else source, name, seed)
                    if key in done:
                        continue
                    print(f"[annotators] {source} {name} seed {seed}", flush=True)
                    run = work / "runs" / (chosen or "") / f"{name}_{source}_s{seed}"
                    row = run_one(source, name, seed, data[source], work, overrides, fixed=fixed, run=run)
                    if pretrained:
                        row["candidate"] = chosen
                    with open(results, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    rows.append(row)
                    done.add(key)
                    print(f"[annotators]   Dice {row['dice']:.4f} clDice {row['cldice']:.4f} (val {row['val_best']:.4f}; "
                          f"{row['train_s']:.0f} s train, {row['eval_s']:.0f} s eval, {time.time() - t0:.0f} s total)",
                          flush=True)
    given = {s: given_dice(work / f"chase_{size}px_{s}") for s in SOURCES
             if (work / f"chase_{size}px_{s}" / "dataset.json").exists()}
    probe = probes(rows, work, compute=args.probe)
    text = tables(rows, command, given, {**fixed, **overrides}, size=size, order=setup["order"],
                  net=setup["net"] if pretrained else None, probe=probe)
    if pretrained:
        text += "\n" + "\n".join(tune_table(tuned, chosen))
    if not (args.smoke or args.no_write):
        figs = weight_figures([{**r, "task": "seg", "level": r["source"]} for r in rows if r["method"] == "l2b"],
                              ROOT / "benchmarks" / "figures", prefix=setup["section"])
        text += "\n\n" + "\n".join(f"![{p.stem}](benchmarks/figures/{p.name})" for p in figs)
        write_benchmarks_md(text, section=setup["section"])
    print(text)


if __name__ == "__main__":
    main()
