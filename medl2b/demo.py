"""``make demo`` / ``medl2b demo``: the whole pipeline end to end, on real anatomy by default.

Default (``data="hippocampus"``): 20 real hippocampus MRI cases of the Medical Segmentation
Decathlon bundled with medl2b (``medl2b/demo_data/hippocampus``, CC-BY-SA 4.0, see its
README) -> ``prepare msd`` at noise Dice 0.6 -> train ``ce`` and ``l2b`` with the
``segmentation`` CPU profile -> evaluate both on the test cases -> print the comparison,
next to the multi-seed benchmark on 40 held-out cases (one seed on a few test cases is a
smoke test, not evidence; another CPU takes another float path and moves it). The demo's
``l2b`` is the product default: it also trains on its 3 trusted (clean meta) cases. The bundled
benchmark line's ``l2b`` is still the paper's pure form (``l2b-pure``, the runs named ``l2b-floor6``;
``DEFAULT_L2B`` of ``benchmarks/hippocampus.py``), and its caveat says so.

``data="phantoms"``: the same on synthetic PROMISE12-like MetaImage phantoms.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from importlib import resources
from pathlib import Path

from medl2b.config import load_config
from medl2b.data.msd import prepare_msd
from medl2b.data.phantoms import synth_promise12
from medl2b.data.promise12 import prepare_promise12
from medl2b.errors import InputError
from medl2b.evaluate.report import compare_runs
from medl2b.evaluate.run import evaluate_run
from medl2b.train.trainer import train

__all__ = ["run_demo"]

log = logging.getLogger("medl2b")
_MARKER = "medl2b-demo.txt"


DEMO_DATA = "demo_data/hippocampus"
BENCHMARK_SUMMARY = "demo_data/hippocampus_benchmark.json"


def run_demo(out: str | Path, *, data: str = "hippocampus", cases: int | None = None, size: int | None = None,
             epochs: int | None = None, methods: tuple[str, ...] = ("ce", "l2b"), seed: int = 0,
             grid_scale: float = 0.5, echo=print) -> str:
    """Run the demo into ``out`` and return the comparison table (markdown).

    ``out`` must be new, empty, or a previous demo folder (which is replaced).
    ``data``: ``"hippocampus"`` (bundled real cases; ``cases`` of the 20, default all) or
    ``"phantoms"`` (``cases`` synthetic PROMISE12 cases, default 12).
    """
    if data not in ("hippocampus", "phantoms"):
        raise InputError("--data", f"must be hippocampus or phantoms, got {data!r}")

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / _MARKER).exists():
            raise InputError(out, "exists, is not empty and is not a demo folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / _MARKER).write_text("Folder written by `medl2b demo`; it is replaced by the next demo run.\n")
    t0 = time.time()
    if data == "phantoms":
        cases, size, task = cases or 12, size or 64, "prostate-seg"
        echo(f"[1/4] synthesising {cases} phantom PROMISE12 cases (MetaImage) in {out / 'raw'}")
        synth_promise12(out / "raw", n_cases=cases, seed=seed, grid_scale=grid_scale)
        echo(f"[2/4] preparing at one spacing (the cases' median, at most {size} px in plane), noisy masks "
             "calibrated to mean Dice 0.6")
        manifest = prepare_promise12(out / "raw", out / "prepared", size=size, noise_dice=0.6, meta_cases=2,
                                     test_cases=3, seed=seed, progress=True)
    else:
        # 64 px caps nothing here (the cases' median spacing is 1 mm, their slices at most 52 px), as nnU-Net keeps
        # the median spacing; a cap of 48 px coarsened every case to 1.08 mm and the demo's validation Dice on its 3
        # clean meta cases fell (ce 0.488 -> 0.415, l2b 0.539 -> 0.398; BENCHMARKS.md, issue 39)
        size, task = size or 64, "segmentation"
        raw = _bundled_subset(out / "raw", cases)
        n = len(json.loads((raw / "dataset.json").read_text())["training"])
        echo(f"[1/4] {n} real hippocampus MRI cases of the Medical Segmentation Decathlon (CC-BY-SA 4.0, "
             f"medl2b/{DEMO_DATA}/README.md)")
        echo(f"[2/4] preparing at one spacing (the cases' median, at most {size} px in plane), noisy labels "
             "calibrated to mean foreground Dice 0.6")
        manifest = prepare_msd(raw, out / "prepared", size=size, noise_dice=0.6, meta_cases=3,
                               test_cases=max(2, n // 4), seed=seed, progress=True)
    echo(f"      spacing {' x '.join(f'{v:.3g}' for v in manifest['spacing'])} mm; "
         f"achieved mean noisy-vs-clean Dice {manifest['noise']['achieved_mean_dice']:.3f}; "
         f"train {len(manifest['splits']['train'])} / meta {len(manifest['splits']['meta'])} / "
         f"test {len(manifest['splits']['test'])} cases")
    runs = []
    for i, method in enumerate(methods):
        run = out / "runs" / method
        echo(f"[3/4] training {method} ({i + 1}/{len(methods)}), CPU profile -> {run}")
        cfg = load_config(task, profile="cpu",
                          overrides={"data": str(out / "prepared"), "out": str(run), "method": method,
                                     "seed": seed, "epochs": epochs, "device": "cpu",
                                     "warmup_epochs": None if epochs is None else epochs // 3})
        t = time.time()
        row = train(cfg)
        echo(f"      {method}: best validation Dice on the meta cases "
             f"{max(r['val_score'] for r in _history(run)):.3f} (last {row['val_score']:.3f}), {time.time() - t:.0f}s")
        runs.append(run)
    echo("[4/4] evaluating on the test cases")
    for run in runs:
        evaluate_run(run, split="test", checkpoint="best", device="cpu", progress=False)
    table = compare_runs(runs, out / "comparison.md")
    echo("")
    echo(table)
    if data == "hippocampus":
        echo("")
        echo(_benchmark_line())
    echo(f"\nreports: {out / 'comparison.md'} and {out}/runs/*/eval/report.md (figures in eval/figures/)")
    echo(f"total time {time.time() - t0:.0f}s")
    return table


def _bundled_subset(dst: Path, cases: int | None) -> Path:
    """Copy the bundled cases (the first ``cases`` of them, default all) with a matching dataset.json."""
    src = Path(str(resources.files("medl2b") / DEMO_DATA))
    meta = json.loads((src / "dataset.json").read_text())
    meta["training"] = meta["training"][:cases] if cases else meta["training"]
    meta["numTraining"] = len(meta["training"])
    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for entry in meta["training"]:
        for key in ("image", "label"):
            shutil.copyfile(src / entry[key], dst / entry[key])
    shutil.copyfile(src / "README.md", dst / "README.md")
    (dst / "dataset.json").write_text(json.dumps(meta, indent=4))
    return dst


def _benchmark_line() -> str:
    """The multi-seed benchmark the one-seed demo must be read against."""
    path = resources.files("medl2b") / BENCHMARK_SUMMARY
    try:
        bench = json.loads(path.read_text())
    except (OSError, ValueError):
        return "No multi-seed benchmark summary is bundled; see BENCHMARKS.md."
    parts = [f"{m} {v['mean']:.2f} ± {v['std']:.2f}" for m, v in bench["dice"].items()]
    return (f"Benchmark ({bench['command']}; {bench['seeds']} seeds, {bench['test_cases']} held-out test cases, "
            f"noise Dice {bench['level']}), test Dice %, mean ± std over seeds: " + ", ".join(parts)
            + (f" ({bench['caveat']})" if bench.get("caveat") else "")
            + ". The demo above is one seed on a few cases: read it against that spread.")


def _history(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as fh:
        return [{"val_score": float(r["val_score"] or "nan")} for r in csv.DictReader(fh)]
