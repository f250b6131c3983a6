"""``medl2b audit``: rank a run's training annotations by how likely they are wrong.

Two signals per training sample with a given label, both from the run itself (no extra training); the trusted
cases a method also trains on (``l2b``) are checked already and not ranked:

1. **What the meta step did** (the L2B record, :mod:`medl2b.train.record`): over every meta
   step that weighed the sample, the weight it moved from the given label to the model's own
   label, ``max(N·β − N·α, 0)``, averaged over the steps. Where the given and the pseudo-label
   agree the two terms are one loss and get one weight, so this counts only the pixels (or
   images) where they disagree and the clean meta set sided with the model. For a case it is
   turned into a fraction of the structure: the summed per-pixel preference over its slices
   divided by the pixels that are foreground in the given or the predicted mask.
2. **What the final model says** (``checkpoint_latest.pt``): for a segmentation case or slice,
   ``1 − Dice`` (mean over foreground classes) of the model's prediction against the given mask;
   for an image, ``1 − p(given class)``.

The **score** is the mean of the two signals' percentile ranks (0 = least, 1 = most suspect):
ranks, because the two live on different scales, and a mean, because each alone misses cases
the other finds (a model that fitted a wrong mask agrees with it; a meta step that never saw
an image has nothing to say). Runs without meta steps (``ce``, ``bootstrap``) are ranked by the
second signal alone, with the mean training loss on the given label in place of the first.

Output, ``RUN/audit/`` (or ``--out``)::

    ranking.csv           segmentation: one row per training case; classification: per image
    ranking_slices.csv    segmentation: one row per training slice
    report.md, summary.json
    figures/suspects.png  the top-K suspects: image, given label, prediction, α and β maps

Where the dataset knows the truth (benchmark mode, synthesised noise: the prepared clean labels), the
rankings carry it (``given_vs_clean_dice`` / ``corrupted``) and the report gives AUROC and precision at K
(K = the number of corrupted samples). On a user's own labels (``"train_truth": false``: no clean label of
a training sample exists) it just ranks, and the truth columns are left out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from medl2b.errors import InputError
from medl2b.evaluate.ranking import cell, percentile_ranks, ranking_quality, ranking_table_quality, score_rows
from medl2b.evaluate.report import write_csv, write_json, write_text
from medl2b.evaluate.run import load_run
from medl2b.runlock import run_lock
from medl2b.tasks import AuditTable, build_task

__all__ = ["audit_run", "percentile_ranks", "rank_tables", "ranking_quality"]

log = logging.getLogger("medl2b")


def _load_record(run: Path) -> dict[str, np.ndarray]:
    path = run / "checkpoint_latest.pt"
    if not path.exists():
        raise InputError(path, "checkpoint not found; train the run first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(path, f"cannot read checkpoint ({type(exc).__name__})") from None
    if "record" not in state:
        raise InputError(path, "this run has no per-sample record (trained before medl2b audit existed); train it again")
    return {name: state["record"]["totals"][i].numpy() for i, name in enumerate(state["record"]["fields"])}


def audit_run(run: str | Path, *, data: str | Path | None = None, out: str | Path | None = None, top: int = 6,
              device: str = "cpu", figures: bool = True) -> dict:
    """Rank the training annotations of a finished (or interrupted) run; write ``RUN/audit/``.

    The run's task chooses the units (cases and slices, cases, or images) and writes the rankings.
    Returns the summary (also ``summary.json``): the ranking quality where the truth is known.
    """
    run = Path(run)
    with run_lock(run, what="audit", create=False):  # no training (or other audit) writes it meanwhile
        model, cfg = load_run(run, checkpoint="latest", device=device)
        if data is not None:
            cfg.data = str(data)
        if cfg.data is None or not Path(cfg.data).exists():
            raise InputError(cfg.data or "--data", "the run's prepared dataset is not there; pass --data")
        if top < 1:
            raise InputError("--top", f"must be >= 1, got {top}")
        record = _load_record(run)
        task = build_task(cfg, trusted=False)  # the given labels: trusted cases a method trains on are not in question
        n = len(task.train_plain)
        # the record holds the train split, then any trusted cases (l2b); a run of l2b from before it trained
        # on them (the pure form) holds the train split alone, and is audited the same
        if len(record["seen"]) not in (n, n + task.trusted_samples()):
            raise InputError(cfg.data, f"holds {n} training samples but the run recorded {len(record['seen'])}; "
                                       "is it the dataset the run trained on?")
        record = {name: values[:n] for name, values in record.items()}
        out = Path(out) if out is not None else run / "audit"
        out.mkdir(parents=True, exist_ok=True)
        signal, has_meta = _first_signal(record)
        tables = task.audit_tables(model, signal, has_meta, device)
        summary = rank_tables(tables, out, top=top, train_truth=task.train_truth)
        if figures:
            task.audit_figure(model, tables, summary["top"], out, device)
        summary = {"task": task.kind, **summary, "signal": "meta + model" if has_meta else "loss + model",
                   "run": str(run), "data": str(cfg.data), "method": cfg.method, "train_truth": task.train_truth}
        write_json(out / "summary.json", summary)
        write_text(out / "report.md", _report(summary))
        return summary


def rank_tables(tables: dict[str, AuditTable], out: Path, *, top: int, train_truth: bool) -> dict:
    """Score each unit's rows (the mean of the two signals' percentile ranks), write each as a CSV, most suspect
    first, into ``out``; return ``{"top": the first table's top ids, "quality": per unit (with truth),
    "known_truth": whether any unit is known corrupted}``. Without ``train_truth`` (a user's own labels) the
    truth columns are left out and nothing is scored against them: it just ranks."""
    quality = {}
    for level, table in tables.items():
        score = score_rows(table.rows)
        if train_truth:
            quality[level] = ranking_table_quality(table.rows, score)
        ordered = sorted(table.rows, key=lambda r: -r["score"])
        truth = table.truth if train_truth else []
        write_csv(out / table.file, ["rank", *table.ids, "score", "meta_signal", "disagreement", *table.after, *truth],
                  [[i + 1, *(r[c] for c in table.ids), f"{r['score']:.6f}", cell(r["meta_signal"]),
                    f"{r['disagreement']:.6f}", *(r[c] for c in table.after), *(_cell(r, c) for c in truth)]
                   for i, r in enumerate(ordered)])
    first = next(iter(tables.values()))
    suspects = [r[first.ids[0]] for r in sorted(first.rows, key=lambda r: -r["score"])[:top]]
    return {"top": suspects, "quality": quality,
            "known_truth": train_truth and any(r["corrupted"] for r in first.rows)}


def _cell(row: dict, column: str):
    """A truth column's CSV cell: ``corrupted`` as 0/1, a float to six places, anything else as it is."""
    value = row[column]
    if isinstance(value, bool):
        return int(value)
    return f"{value:.6f}" if isinstance(value, float) else value


def _first_signal(record: dict) -> tuple[np.ndarray, bool]:
    """Per sample: the mean pseudo-label preference over its meta steps (NaN where it had none), and
    True; or, for a run without meta steps, the mean training loss on the given label, and False."""
    if record["meta_seen"].sum() > 0:
        total, count, has_meta = record["prefer_pseudo"], record["meta_seen"], True
    else:
        total, count, has_meta = record["loss"], record["seen"], False
    return np.where(count > 0, total / np.maximum(count, 1), np.nan), has_meta


def _report(summary: dict) -> str:
    lines = [f"# Annotation audit of {summary['run']}", "",
             f"Method {summary['method']}; data {summary['data']}; signals: {summary['signal']} "
             "(score = mean of their percentile ranks; see `medl2b.audit`).", "",
             "Most suspect first: " + ", ".join(summary["top"]), ""]
    if summary["known_truth"]:
        lines += ["Against the known corruption (the prepared clean labels):", "",
                  "| unit | samples | corrupted | AUROC | precision at K | AUROC, meta signal alone | "
                  "AUROC, model alone |", "|---|---|---|---|---|---|---|"]
        for unit, q in summary["quality"].items():
            lines.append(f"| {unit} | {q['n']} | {q['n_corrupted']} | {_fmt(q['auroc'])} | "
                         f"{_fmt(q['precision_at_k'])} | {_fmt(q.get('meta_signal_auroc'))} | "
                         f"{_fmt(q.get('disagreement_auroc'))} |")
    elif not summary.get("train_truth", True):
        lines.append("The training samples have only their given labels (your own labels): there is no truth to "
                     "score the ranking against. Check the top suspects first.")
    else:
        lines.append("The dataset's given labels equal its clean ones: there is no known corruption to score against.")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"
