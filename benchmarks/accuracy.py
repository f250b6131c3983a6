"""Accuracy benchmark: the paper's Table 6 (PROMISE12) and Table 1 (ISIC 2019) in miniature.

On phantom data the project generates (default), with the CPU profiles and the shipped defaults:

* segmentation: ``ce`` and ``l2b`` at noise Dice 0.8, 0.6 and 0.4; at 0.6 also ``bootstrap``,
  ``l2rw`` and the oracle (``ce`` on clean labels);
* classification: ``ce``, ``l2rw`` and ``l2b`` at 20 % and 50 % symmetric noise, and the oracle;

each with ``--seeds`` seeds (default 3), paired (same seeds, same data, same noisy labels). Every
run is trained, then evaluated on the test split with its best checkpoint (chosen on the clean
meta cases, never on test). Results go to ``--work/results.jsonl`` (finished runs are skipped
when the script is run again), the tables to ``BENCHMARKS.md`` between the ``accuracy``
markers, and the α/β figures to ``benchmarks/figures/``. The real-anatomy benchmark, with the
``ce+clean`` and ``meta-only`` baselines, is ``benchmarks/hippocampus.py``.

    python benchmarks/accuracy.py                      # phantoms, about 75 min on 2 CPU cores
    python benchmarks/accuracy.py --tasks cls          # the classification table only
    python benchmarks/accuracy.py --data PREPARED --task prostate-seg --paper-schedule   # real data

With ``--data``, the same protocol runs on a real prepared dataset (one noise level: the one it
was prepared with; the oracle uses its clean labels), with the paper's schedule
(``--paper-schedule``, the task YAML without the cpu profile) for users with a GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEG_LEVELS = (0.8, 0.6, 0.4)
CLS_LEVELS = (0.2, 0.5)
PAPER_SEG = {0.8: (80.03, 82.01), 0.6: (73.74, 80.83), 0.4: (59.77, 77.70)}


ORACLE = {"label_source": "clean", "method": "ce"}
#: row name -> config method where they differ: the ``l2b`` rows are the paper's pure form, ``--method l2b-pure``
#: since ``--method l2b`` trains on its trusted cases (issue 37)
CONFIG_METHOD = {"l2b": "l2b-pure"}


def seg_plan(levels):
    plan = []
    for level in levels:
        plan += [("seg", level, "ce", {}), ("seg", level, "l2b", {})]
        if math.isclose(level, 0.6) or len(levels) == 1:
            plan += [("seg", level, "bootstrap", {}), ("seg", level, "l2rw", {}),
                     ("seg", level, "oracle", ORACLE)]
    return plan


def cls_plan(levels):
    plan = [("cls", level, m, {}) for level in levels for m in ("ce", "l2rw", "l2b")]
    return plan + [("cls", levels[0], "oracle", ORACLE)]


def prepare_phantoms(work: Path, tasks: list[str]) -> dict:
    from medl2b.data.isic2019 import prepare_isic2019
    from medl2b.data.phantoms import synth_isic2019, synth_promise12
    from medl2b.data.promise12 import prepare_promise12

    data = {}
    if "seg" in tasks:
        raw = work / "raw_promise12"
        if not raw.exists():
            synth_promise12(raw, n_cases=12, seed=0, grid_scale=0.5)
        for level in SEG_LEVELS:
            out = work / f"promise12_dice{level}"
            if not (out / "dataset.json").exists():
                prepare_promise12(raw, out, size=64, noise_dice=level, meta_cases=2, test_cases=3, seed=0,
                                  progress=False)
            data[("seg", level)] = out
    if "cls" in tasks:
        raw = work / "raw_isic2019"
        if not raw.exists():
            synth_isic2019(raw, n_images=480, seed=0)
        for level in CLS_LEVELS:
            out = work / f"isic_noise{level}"
            if not (out / "dataset.json").exists():
                prepare_isic2019(raw, out, size=64, noise=level, n_meta=48, n_test=96, seed=0, progress=False)
            data[("cls", level)] = out
    return data


def run_one(task, level, name, extra, seed, data: Path, work: Path, paper_schedule: bool) -> dict:
    from medl2b.config import METHODS, load_config
    from medl2b.evaluate.run import evaluate_run
    from medl2b.train.trainer import train

    run = work / "runs" / f"{task}_{level}_{name}_s{seed}"
    if run.exists():
        import shutil

        shutil.rmtree(run)  # an unfinished run from an interrupted benchmark
    method = CONFIG_METHOD.get(name, name if name in METHODS else "l2b-pure")
    overrides = {"data": str(data), "out": str(run), "method": method, "seed": seed, "device": "auto", **extra}
    cfg = load_config("prostate-seg" if task == "seg" else "skin-lesion-cls",
                      profile=None if paper_schedule else "cpu", overrides=overrides)
    t = time.time()
    train(cfg, progress=False)
    train_s = time.time() - t
    summary = evaluate_run(run, split="test", checkpoint="best", figures=False)
    row = {"task": task, "level": level, "method": name, "seed": seed, "train_s": round(train_s, 1), "run": str(run)}
    if task == "seg":
        row.update({k: summary["mean"][k] for k in ("dice", "hd95", "asd")}, n_failed=summary["n_failed"])
    else:
        row.update(accuracy=summary["accuracy"], balanced_accuracy=summary["balanced_accuracy"])
    return row


def mean_std(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired(pick, key: str, scale: float = 100.0) -> dict:
    """The paired L2B − CE comparison of one setting. ``pick(method)``: that method's result rows there.

    Returns the means (× ``scale``) of ``ce``, ``l2b`` and ``oracle``, ``mean(method)`` for any other, the
    per-seed differences L2B − CE over the seeds both ran, their mean and std, and the gap closed
    (L2B − CE) / (oracle − CE) (NaN where undefined)."""
    ce = {r["seed"]: r[key] for r in pick("ce")}
    l2b = {r["seed"]: r[key] for r in pick("l2b")}
    diffs = [scale * (l2b[s] - ce[s]) for s in sorted(set(ce) & set(l2b))]

    def mean(method: str) -> float:
        return scale * mean_std([r[key] for r in pick(method)])[0]

    o, c, b = mean("oracle"), mean("ce"), mean("l2b")
    gap = (b - c) / (o - c) if all(math.isfinite(v) for v in (o, c, b)) and o - c > 1e-9 else float("nan")
    d_m, d_s = mean_std(diffs)
    return {"ce": c, "l2b": b, "oracle": o, "mean": mean, "diffs": diffs, "diff": d_m, "diff_std": d_s, "gap": gap}


def fmt(values, scale=1.0, digits=2):
    m, s = mean_std([v * scale for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def times(rs) -> str:
    """Wall time of training: the minimum is the closest to a run that had the machine to itself."""
    values = [r["train_s"] for r in rs]
    return f"{min(values):.0f} / {statistics.median(values):.0f}"


def tables(rows: list[dict]) -> str:
    out = []
    seg = [r for r in rows if r["task"] == "seg"]
    if seg:
        levels = sorted({r["level"] for r in seg}, reverse=True)
        oracle = [r["dice"] for r in seg if r["method"] == "oracle"]
        out += [("### Segmentation (phantom PROMISE12, UNet++ CPU profile, test cases, mean over seeds of the "
                "per-run mean over cases)"), "",
                "| noise Dice | method | seeds | Dice (%) | HD95 (mm) | ASD (mm) | failed cases | train time (s), min / median |",
                "|---|---|---|---|---|---|---|---|"]
        for level in levels:
            for method in ("ce", "bootstrap", "l2rw", "l2b", "oracle"):
                rs = [r for r in seg if r["level"] == level and r["method"] == method]
                if not rs:
                    continue
                out.append(f"| {level} | {method} | {len(rs)} | {fmt([r['dice'] for r in rs], 100)} | "
                           f"{fmt([r['hd95'] for r in rs])} | {fmt([r['asd'] for r in rs])} | "
                           f"{sum(r['n_failed'] for r in rs)} | {times(rs)} |")
        out += ["", ("| noise Dice | CE Dice (%) | L2B Dice (%) | L2B − CE | oracle (%) | gap closed | "
                "paired L2B − CE per seed | paper CE → L2B |"),
                "|---|---|---|---|---|---|---|---|"]
        o = mean_std(oracle)[0]

        def dice(level, method):
            return mean_std([r["dice"] for r in seg if r["level"] == level and r["method"] == method])[0]

        def gap(value, ce):
            return (value - ce) / (o - ce) if math.isfinite(o) and o - ce > 1e-9 else float("nan")

        for level in levels:
            ce, l2b = dice(level, "ce"), dice(level, "l2b")
            per_seed = {r["seed"]: r["dice"] for r in seg if r["level"] == level and r["method"] == "ce"}
            diffs = [100 * (r["dice"] - per_seed[r["seed"]]) for r in seg
                     if r["level"] == level and r["method"] == "l2b" and r["seed"] in per_seed]
            paper = PAPER_SEG.get(level)
            out.append(f"| {level} | {100 * ce:.2f} | {100 * l2b:.2f} | {100 * (l2b - ce):+.2f} | {100 * o:.2f} | "
                       f"{gap(l2b, ce):.0%} | {' / '.join(f'{d:+.1f}' for d in diffs)} | "
                       + (f"{paper[0]} → {paper[1]} |" if paper else "– |"))
    cls = [r for r in rows if r["task"] == "cls"]
    if cls:
        out += ["", "### Classification (phantom ISIC 2019, ResNet-50 CPU profile, test split)", "",
                "| symmetric noise | method | seeds | accuracy (%) | balanced accuracy (%) | train time (s), min / median |",
                "|---|---|---|---|---|---|"]
        for level in sorted({r["level"] for r in cls}):
            for method in ("ce", "l2rw", "l2b", "oracle"):
                rs = [r for r in cls if r["level"] == level and r["method"] == method]
                if rs:
                    out.append(f"| {level:.0%} | {method} | {len(rs)} | {fmt([r['accuracy'] for r in rs], 100)} | "
                               f"{fmt([r['balanced_accuracy'] for r in rs], 100)} | "
                               f"{times(rs)} |")
    return "\n".join(out)


def weight_figures(rows: list[dict], fig_dir: Path, *, prefix: str = "weights") -> list[Path]:
    """Mean N·α, N·β and the β share per epoch, on wrong vs right given labels, for the l2b runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for task in ("seg", "cls"):
        rs = [r for r in rows if r["task"] == task and r["method"] == "l2b"]
        levels = sorted({r["level"] for r in rs})
        if not rs:
            continue
        fig, axes = plt.subplots(len(levels), 3, figsize=(13, 3.2 * len(levels)), squeeze=False)
        for i, level in enumerate(levels):
            for r in [r for r in rs if r["level"] == level]:
                with open(Path(r["run"]) / "metrics.csv") as fh:
                    hist = list(csv.DictReader(fh))
                ep = [int(h["epoch"]) for h in hist]

                def col(k):
                    return [float(h[k]) if h[k] not in ("", None) else float("nan") for h in hist]

                for j, (key, title) in enumerate((("alpha", "N·α (given label)"), ("beta", "N·β (pseudo-label)"),
                                                  ("beta_share", "β / (α + β)"))):
                    ax = axes[i, j]
                    ax.plot(ep, col(f"{key}_on_wrong"), color="tab:red", alpha=0.8,
                            label="given label wrong" if r["seed"] == 0 else None)
                    ax.plot(ep, col(f"{key}_on_right"), color="tab:green", alpha=0.8,
                            label="given label right" if r["seed"] == 0 else None)
                    ax.set_title(f"{task} noise {level}: {title}", fontsize=9)
                    ax.set_xlabel("epoch")
                    if key != "beta_share":
                        ax.set_yscale("log")
            axes[i, 0].legend(fontsize=8)
        fig.tight_layout()
        path = fig_dir / f"{prefix}_{task}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def write_benchmarks_md(text: str, *, section: str = "accuracy") -> None:
    """Replace the text between ``<!-- {section}:start -->`` and ``<!-- {section}:end -->`` in BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    doc = path.read_text() if path.exists() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in doc:
        doc += f"\n{start}\n{end}\n"
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "bench_runs" / "accuracy")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tasks", default="seg,cls")
    ap.add_argument("--data", type=Path, default=None, help="a real prepared dataset (runs one task)")
    ap.add_argument("--task", default=None, help="with --data: prostate-seg or skin-lesion-cls")
    ap.add_argument("--paper-schedule", action="store_true", help="the task YAML's full schedule, not the cpu profile")
    ap.add_argument("--no-write", action="store_true", help="print the tables only")
    ap.add_argument("--report-only", action="store_true", help="write the tables from the finished runs, train nothing")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = args.work / "results.jsonl"
    done = [json.loads(l) for l in results.read_text().splitlines()] if results.exists() else []
    key = lambda r: (r["task"], r["level"], r["method"], r["seed"])
    finished = {key(r) for r in done}

    if args.data is not None:
        task = "seg" if args.task == "prostate-seg" else "cls"
        manifest = json.loads((args.data / "dataset.json").read_text())
        level = manifest["noise"].get("target_dice", manifest["noise"].get("rate"))
        plan = seg_plan([level]) if task == "seg" else cls_plan([level])
        data = {(task, level): args.data}
    else:
        tasks = args.tasks.split(",")
        data = prepare_phantoms(args.work, tasks)
        plan = (seg_plan(SEG_LEVELS) if "seg" in tasks else []) + (cls_plan(CLS_LEVELS) if "cls" in tasks else [])
    schedule = [(seed, p) for seed in range(args.seeds) for p in plan]
    total = len(schedule)
    t0 = time.time()
    i = 0
    for seed, (task, level, name, extra) in schedule:
        i += 1
        if (task, level, name, seed) in finished or args.report_only:
            continue
        data_dir = data[(task, level)]
        if name == "oracle":  # clean labels do not depend on the noise level
            data_dir = data.get((task, 0.6), data_dir)
        row = run_one(task, level, name, extra, seed, data_dir, args.work, args.paper_schedule)
        done.append(row)
        with open(results, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        score = row.get("dice", row.get("accuracy"))
        print(f"[{i}/{total}] {task} {level} {name} seed {seed}: {score:.4f} "
              f"({row['train_s']:.0f}s train, {time.time() - t0:.0f}s total)", flush=True)
    text = tables(done)
    figs = weight_figures(done, ROOT / "benchmarks" / "figures")
    text += "\n\n" + "\n".join(f"![{p.stem}](benchmarks/figures/{p.name})" for p in figs)
    text += (f"\n\nCommand: `python benchmarks/accuracy.py --seeds {args.seeds}`"
             + (f" --data {args.data}" if args.data else "") + f"; {len(done)} of {total} runs finished.")
    print(text)
    if not args.no_write:
        write_benchmarks_md(text)


if __name__ == "__main__":
    main()
