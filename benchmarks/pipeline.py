"""Time ``prepare`` per case and ``eval`` per case on phantom PROMISE12 data.

    python benchmarks/pipeline.py [--cases 12] [--size 144] [--grid-scale 1.0]

Synthesises ``--cases`` phantom cases at the real grids (``--grid-scale 1``: 512², 320², 256²
in-plane), prepares them, trains a tiny ``ce`` run for one short epoch (only so there is a
checkpoint to evaluate) and evaluates the test split with figures off and on. Prints one
markdown table of seconds per case.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--size", type=int, default=144)
    ap.add_argument("--grid-scale", type=float, default=1.0)
    ap.add_argument("--test-cases", type=int, default=4)
    args = ap.parse_args()

    from medl2b.config import load_config
    from medl2b.data.phantoms import synth_promise12
    from medl2b.data.promise12 import prepare_promise12
    from medl2b.evaluate.run import evaluate_run
    from medl2b.train.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        synth_promise12(tmp / "raw", n_cases=args.cases, grid_scale=args.grid_scale)
        t_synth = time.perf_counter() - t
        t = time.perf_counter()
        manifest = prepare_promise12(tmp / "raw", tmp / "prep", size=args.size, noise_dice=0.6, meta_cases=2,
                                     test_cases=args.test_cases, progress=False)
        t_prep = time.perf_counter() - t
        cfg = load_config("prostate-seg", profile="cpu", overrides={
            "data": str(tmp / "prep"), "out": str(tmp / "run"), "method": "ce", "epochs": 1, "warmup_epochs": 0,
            "steps_per_epoch": 2, "device": "cpu"})
        train(cfg, progress=False)
        t = time.perf_counter()
        evaluate_run(tmp / "run", split="test", figures=False, out=tmp / "eval1", device="cpu")
        t_eval = time.perf_counter() - t
        t = time.perf_counter()
        evaluate_run(tmp / "run", split="test", figures=True, out=tmp / "eval2", device="cpu")
        t_eval_fig = time.perf_counter() - t
    n, n_test = args.cases, len(manifest["splits"]["test"])
    print(f"{n} phantom cases, grid scale {args.grid_scale}, prepared at {args.size}x{args.size}, "
          f"{n_test} test cases, noise calibration included in prepare")
    print()
    print("| stage | total (s) | per case (s) |")
    print("|---|---|---|")
    print(f"| synth promise12 | {t_synth:.1f} | {t_synth / n:.2f} |")
    print(f"| prepare promise12 | {t_prep:.1f} | {t_prep / n:.2f} |")
    print(f"| eval (metrics + NIfTI) | {t_eval:.1f} | {t_eval / n_test:.2f} |")
    print(f"| eval (+ figures) | {t_eval_fig:.1f} | {t_eval_fig / n_test:.2f} |")


if __name__ == "__main__":
    main()
