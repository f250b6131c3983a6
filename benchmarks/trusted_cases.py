"""When trusted cases exist, what should L2B do with them? (issue 37) — tables from committed runs, no training.

Reads the hippocampus runs committed in ``benchmarks/results/hippocampus_issue25/results.jsonl`` (the
issue-25 section of BENCHMARKS.md: 40 test cases, one thread beside another run) and compares, paired
by seed at each noise level:

* ``l2b+clean``: L2B whose 4 clean meta cases also train, at full weight on their labels (``pseudo_floor``
  0: it ran before the floor became the default);
* ``l2b``: the paper's pure form with the same floor (0), the clean cases used only by the meta step
  (``--method l2b-pure`` since ``--method l2b`` trains on its trusted cases);
* ``l2b-floor6``: the shipped default until then (``pseudo_floor: 0.6``, the pure form);
* ``ce+clean``: CE on the noisy cases plus the clean ones; ``ce``.

* ``l2b+clean-floor6``: ``l2b+clean`` with the default floor, what ``--method l2b`` ships since it trains on
  its trusted cases (``benchmarks/hippocampus.py --blocks 24,25``; not run when this was written).

The CHASE_DB1 counterpart is the ``l2b+clean`` table of ``benchmarks/annotators.py --setup pretrained``. The
tables go between the ``trusted-cases`` markers of BENCHMARKS.md; ``--hippocampus`` reads another results file
(e.g. ``bench_runs/hippocampus/results.jsonl`` after blocks 24-25).

    python benchmarks/trusted_cases.py              # print and write the tables
    python benchmarks/trusted_cases.py --no-write
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from accuracy import write_benchmarks_md

ROOT = Path(__file__).resolve().parent.parent
HIPPO = ROOT / "benchmarks" / "results" / "hippocampus_issue25" / "results.jsonl"
LEVELS = (0.8, 0.6, 0.4)
METHODS = ("ce", "ce+clean", "l2b", "l2b-floor6", "l2b+clean", "l2b+clean-floor8", "l2b+clean-floor6")
#: (a, b): the paired differences a − b reported per level
PAIRS = (("l2b+clean", "l2b"), ("l2b+clean", "l2b-floor6"), ("l2b+clean", "ce+clean"), ("l2b+clean", "ce"),
         ("ce+clean", "ce"), ("l2b+clean-floor6", "l2b-floor6"), ("l2b+clean-floor6", "ce+clean"))


def _load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.2f} ± {sd:.2f}"


def hippocampus_tables(rows: list[dict]) -> list[str]:
    by = {(r["level"], r["method"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    out = ["Test Dice (%, mean foreground class, 40 cases) per seed; best validation Dice on the 4 clean cases in "
           "brackets (for `l2b+clean` and `ce+clean` those cases are also training data, so not held out); – = not run:",
           "", "| noise Dice | seed | " + " | ".join(f"`{m}`" for m in METHODS) + " |",
           "|---|---|" + "---|" * len(METHODS)]
    for level in LEVELS:
        for seed in seeds:
            cells = []
            for m in METHODS:
                r = by.get((level, m, seed))
                cells.append("–" if r is None else f"{100 * r['dice']:.2f} ({r['val_best']:.3f})")
            if any(c != "–" for c in cells):
                out.append(f"| {level} | {seed} | " + " | ".join(cells) + " |")
    out += ["", "Paired differences in test Dice points (per seed where both ran; mean ± std; wins):", "",
            "| noise Dice | " + " | ".join(f"`{a}` − `{b}`" for a, b in PAIRS) + " |", "|---|" + "---|" * len(PAIRS)]
    totals = {p: [] for p in PAIRS}
    for level in LEVELS:
        cells = []
        for a, b in PAIRS:
            diffs = [100 * (by[(level, a, s)]["dice"] - by[(level, b, s)]["dice"]) for s in seeds
                     if (level, a, s) in by and (level, b, s) in by]
            totals[(a, b)] += diffs
            cells.append("–" if not diffs else f"{', '.join(f'{d:+.2f}' for d in diffs)} ({_mean_std(diffs)}; "
                                               f"{sum(d > 0 for d in diffs)}/{len(diffs)})")
        out.append(f"| {level} | " + " | ".join(cells) + " |")
    out.append("| all | " + " | ".join(f"{_mean_std(d)}; {sum(x > 0 for x in d)}/{len(d)}" if d else "–"
                                      for d in totals.values()) + " |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hippocampus", type=Path, default=HIPPO)
    ap.add_argument("--no-write", action="store_true", help="print the tables only")
    args = ap.parse_args()
    lines = hippocampus_tables(_load(args.hippocampus))
    command = "python benchmarks/trusted_cases.py" + ("" if args.hippocampus == HIPPO else f" --hippocampus {args.hippocampus}")
    lines += ["", f"Command: `{command}` (no training: the committed runs)."]
    text = "\n".join(lines)
    if not args.no_write:
        write_benchmarks_md(text, section="trusted-cases")
    print(text)


if __name__ == "__main__":
    main()
