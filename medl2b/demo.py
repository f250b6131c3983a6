"""``make demo`` / ``medl2b demo``: the whole pipeline on phantoms the project generates.

synthesise PROMISE12-like raw data -> prepare at noise Dice 0.6 -> train ``ce``
and ``l2b`` with the CPU profile -> evaluate both on the test cases -> print the
comparison table and where the reports are.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from medl2b.errors import InputError

__all__ = ["run_demo"]

log = logging.getLogger("medl2b")
_MARKER = "medl2b-demo.txt"


def run_demo(out: str | Path, *, cases: int = 12, size: int = 64, epochs: int | None = None,
             methods: tuple[str, ...] = ("ce", "l2b"), seed: int = 0, grid_scale: float = 0.5,
             echo=print) -> str:
    """Run the demo into ``out`` and return the comparison table (markdown).

    ``out`` must be new, empty, or a previous demo folder (which is replaced).
    """
    from medl2b.config import load_config
    from medl2b.data.phantoms import synth_promise12
    from medl2b.data.promise12 import prepare_promise12
    from medl2b.evaluate.report import compare_runs
    from medl2b.evaluate.run import evaluate_run
    from medl2b.train.trainer import train

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / _MARKER).exists():
            raise InputError(out, "exists, is not empty and is not a demo folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / _MARKER).write_text("Folder written by `medl2b demo`; it is replaced by the next demo run.\n")
    t0 = time.time()
    echo(f"[1/4] synthesising {cases} phantom PROMISE12 cases (MetaImage) in {out / 'raw'}")
    synth_promise12(out / "raw", n_cases=cases, seed=seed, grid_scale=grid_scale)
    echo(f"[2/4] preparing at {size}x{size}, noisy masks calibrated to mean Dice 0.6")
    manifest = prepare_promise12(out / "raw", out / "prepared", size=size, noise_dice=0.6, meta_cases=2,
                                 test_cases=3, seed=seed, progress=True)
    echo(f"      achieved mean noisy-vs-clean Dice {manifest['noise']['achieved_mean_dice']:.3f}; "
         f"train {len(manifest['splits']['train'])} / meta {len(manifest['splits']['meta'])} / "
         f"test {len(manifest['splits']['test'])} cases")
    runs = []
    for i, method in enumerate(methods):
        run = out / "runs" / method
        echo(f"[3/4] training {method} ({i + 1}/{len(methods)}), CPU profile -> {run}")
        cfg = load_config("prostate-seg", profile="cpu",
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
    echo(f"\nreports: {out / 'comparison.md'} and {out}/runs/*/eval/report.md (figures in eval/figures/)")
    echo(f"total time {time.time() - t0:.0f}s")
    return table


def _history(run: Path) -> list[dict]:
    import csv

    with open(run / "metrics.csv") as fh:
        return [{"val_score": float(r["val_score"] or "nan")} for r in csv.DictReader(fh)]
