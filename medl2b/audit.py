"""``medl2b audit``: rank a run's training annotations by how likely they are wrong.

Two signals per training sample, both from the run itself (no extra training):

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

Where the dataset knows the truth (synthesised noise: the prepared clean labels), the rankings
carry it (``given_vs_clean_dice`` / ``corrupted``) and the report gives AUROC and precision at K
(K = the number of corrupted samples). On a dataset with no known truth it just ranks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medl2b.errors import InputError
from medl2b.evaluate.metrics import mean_foreground_dice

__all__ = ["audit_run", "percentile_ranks", "ranking_quality"]

log = logging.getLogger("medl2b")


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (ties share their mean rank; NaN ranks 0, the least suspect)."""
    from scipy.stats import rankdata

    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isfinite(v), v, -np.inf)
    if len(v) < 2:
        return np.zeros(len(v))
    return (rankdata(v) - 1.0) / (len(v) - 1.0)


def ranking_quality(score: np.ndarray, corrupted: np.ndarray) -> dict:
    """AUROC and precision at K (K = number of corrupted samples) of a suspicion score."""
    from sklearn.metrics import roc_auc_score

    corrupted = np.asarray(corrupted).astype(bool)
    k = int(corrupted.sum())
    if k == 0 or k == len(corrupted):
        return {"n": int(len(corrupted)), "n_corrupted": k, "auroc": None, "precision_at_k": None}
    top = np.argsort(-np.asarray(score), kind="stable")[:k]
    return {"n": int(len(corrupted)), "n_corrupted": k, "auroc": float(roc_auc_score(corrupted, score)),
            "precision_at_k": float(corrupted[top].mean())}


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

    Returns the summary (also ``summary.json``): the ranking quality where the truth is known.
    """
    from medl2b.evaluate.run import load_run
    from medl2b.tasks import build_task

    run = Path(run)
    model, cfg = load_run(run, checkpoint="latest", device=device)
    if data is not None:
        cfg.data = str(data)
    if cfg.data is None or not Path(cfg.data).exists():
        raise InputError(cfg.data or "--data", "the run's prepared dataset is not there; pass --data")
    if top < 1:
        raise InputError("--top", f"must be >= 1, got {top}")
    record = _load_record(run)
    task = build_task(cfg)
    n = len(task.train_set)
    if len(record["seen"]) != n:
        raise InputError(cfg.data, f"holds {n} training samples but the run recorded {len(record['seen'])}; "
                                   "is it the dataset the run trained on?")
    out = Path(out) if out is not None else run / "audit"
    out.mkdir(parents=True, exist_ok=True)
    if cfg.is_segmentation:
        summary = _audit_seg(model, cfg, task, record, out, top, device, figures)
    else:
        summary = _audit_cls(model, cfg, task, record, out, top, device, figures)
    summary.update(run=str(run), data=str(cfg.data), method=cfg.method)
    from medl2b.evaluate.report import _write_json, _write_text

    _write_json(out / "summary.json", summary)
    _write_text(out / "report.md", _report(summary))
    return summary


def _first_signal(record: dict) -> tuple[np.ndarray, bool]:
    """Per sample: the mean pseudo-label preference over its meta steps (NaN where it had none), and
    True; or, for a run without meta steps, the mean training loss on the given label, and False."""
    if record["meta_seen"].sum() > 0:
        total, count, has_meta = record["prefer_pseudo"], record["meta_seen"], True
    else:
        total, count, has_meta = record["loss"], record["seen"], False
    return np.where(count > 0, total / np.maximum(count, 1), np.nan), has_meta


def _audit_seg(model, cfg, task, record, out, top, device, figures) -> dict:
    from medl2b.evaluate.report import _write_csv
    from medl2b.inference import predict_logits

    slices = task.train_slices
    k = task.num_classes
    pred = predict_logits(model, slices.image, batch_size=cfg.batch_size, device=device).argmax(1).numpy()
    given, clean = slices.label.numpy(), slices.clean.numpy()
    first, has_meta = _first_signal(record)
    pixels = int(np.prod(given.shape[1:]))
    cases = np.asarray(slices.case)
    units = {"cases": [np.flatnonzero(cases == c) for c in dict.fromkeys(slices.case)]}
    if cfg.spatial_dims == 2:  # 3-D runs train on whole volumes: the case is the only unit
        units["slices"] = [np.array([i]) for i in range(len(cases))]
    tables, quality = {}, {}
    for level, groups in units.items():
        rows = []
        for g in groups:
            region = int(((given[g] > 0) | (pred[g] > 0)).sum())
            # the preference summed over the unit's pixels, as a fraction of its structure
            signal = (np.nansum(first[g]) * pixels / max(region, 1) if has_meta else float(np.nanmean(first[g])))
            if has_meta and np.isnan(first[g]).all():
                signal = float("nan")
            rows.append({"case": str(cases[g[0]]),
                         "slice": int(slices.slice_index[g[0]]) if level == "slices" else "",
                         "index": int(g[0]) if level == "slices" else "",
                         "meta_signal": float(signal),
                         "disagreement": 1.0 - mean_foreground_dice(pred[g], given[g], k, absent="skip"),
                         "given_vs_clean_dice": mean_foreground_dice(given[g], clean[g], k, absent="skip"),
                         "corrupted": bool((given[g] != clean[g]).any())})
        score = _score(rows)
        tables[level] = rows
        quality[level] = _quality(rows, score)
    header = ["rank", "case", "slice", "score", "meta_signal", "disagreement", "given_vs_clean_dice", "corrupted"]
    for level, name in (("cases", "ranking.csv"), ("slices", "ranking_slices.csv"))[:len(tables)]:
        rows = sorted(tables[level], key=lambda r: -r["score"])
        _write_csv(out / name, header if level == "slices" else [h for h in header if h != "slice"],
                   [[i + 1, r["case"], *([r["slice"]] if level == "slices" else []), f"{r['score']:.6f}",
                     _cell(r["meta_signal"]), f"{r['disagreement']:.6f}", f"{r['given_vs_clean_dice']:.6f}",
                     int(r["corrupted"])] for i, r in enumerate(rows)])
    suspects = [r["case"] for r in sorted(tables["cases"], key=lambda r: -r["score"])[:top]]
    if figures and cfg.spatial_dims == 2:
        _seg_figure(model, cfg, tables["slices"], suspects, out, device)
    return {"task": "segmentation", "signal": "meta + model" if has_meta else "loss + model",
            "top": suspects, "quality": quality, "known_truth": bool((given != clean).any())}


def _score(rows: list[dict]) -> np.ndarray:
    meta = np.array([r["meta_signal"] for r in rows], dtype=np.float64)
    model = np.array([r["disagreement"] for r in rows], dtype=np.float64)
    score = (percentile_ranks(meta) + percentile_ranks(model)) / 2.0
    for r, s in zip(rows, score):
        r["score"] = float(s)
    return score


def _quality(rows: list[dict], score: np.ndarray) -> dict:
    """Ranking quality of the score and of each signal alone (unscored samples rank lowest)."""
    truth = np.array([r["corrupted"] for r in rows])
    quality = ranking_quality(score, truth)
    for name in ("meta_signal", "disagreement"):
        quality[f"{name}_auroc"] = ranking_quality(percentile_ranks(np.array([r[name] for r in rows], dtype=float)),
                                                   truth)["auroc"]
    return quality


def _cell(v: float) -> str:
    return "" if not np.isfinite(v) else f"{v:.6f}"


def _seg_figure(model, cfg, slice_rows, suspects, out, device) -> None:
    """The most suspect slice of each top case: image, given vs clean, pseudo-label, α, β."""
    from medl2b.evaluate import figures as fig
    from medl2b.evaluate.run import weight_map_examples

    best = {}
    for r in slice_rows:
        if r["case"] in suspects and (r["case"] not in best or r["score"] > best[r["case"]]["score"]):
            best[r["case"]] = r
    idx = [best[c]["index"] for c in suspects if c in best]
    ex = weight_map_examples(model, cfg, Path(cfg.data), torch.device(device), indices=idx) if idx else None
    if ex is not None:
        ex["titles"] = [f"#{i + 1} {best[c]['case']} z={best[c]['slice']}" for i, c in enumerate(suspects)
                        if c in best]
        fig.plot_weight_maps(out / "figures" / "suspects.png", **ex)


def _audit_cls(model, cfg, task, record, out, top, device, figures) -> dict:
    from medl2b.evaluate.report import _write_csv
    from medl2b.inference import predict_dataset

    images = task.train_images
    logits, given, clean = predict_dataset(model, task.train_plain, batch_size=cfg.batch_size, device=device,
                                           transform=task.input_transform)
    prob = F.softmax(logits.float(), 1)
    p_given = prob.gather(1, given[:, None])[:, 0].numpy()
    first, has_meta = _first_signal(record)
    from medl2b.data.datasets import load_manifest

    names = [e["image"] for e in load_manifest(cfg.data, task="skin-lesion-cls")["images"]]
    classes = images.classes
    rows = [{"image": names[int(images.index[i])], "given": classes[int(given[i])],
             "predicted": classes[int(prob[i].argmax())], "meta_signal": float(first[i]),
             "disagreement": float(1.0 - p_given[i]), "corrupted": bool(given[i] != clean[i]),
             "clean": classes[int(clean[i])], "i": i} for i in range(len(images))]
    score = _score(rows)
    truth = np.array([r["corrupted"] for r in rows])
    quality = {"images": _quality(rows, score)}
    ordered = sorted(rows, key=lambda r: -r["score"])
    _write_csv(out / "ranking.csv", ["rank", "image", "score", "meta_signal", "disagreement", "given", "predicted",
                                     "clean", "corrupted"],
               [[i + 1, r["image"], f"{r['score']:.6f}", _cell(r["meta_signal"]), f"{r['disagreement']:.6f}",
                 r["given"], r["predicted"], r["clean"], int(r["corrupted"])] for i, r in enumerate(ordered)])
    if figures:
        from medl2b.evaluate import figures as fig

        shown = ordered[:top]
        pics = np.stack([np.asarray(images.images[int(images.index[r["i"]])]) for r in shown])
        fig.plot_suspect_images(out / "figures" / "suspects.png", pics,
                                [f"#{j + 1} {r['image']}\ngiven {r['given']}, model {r['predicted']}"
                                 for j, r in enumerate(shown)])
    return {"task": "classification", "signal": "meta + model" if has_meta else "loss + model",
            "top": [r["image"] for r in ordered[:top]], "quality": quality,
            "known_truth": bool(truth.any())}


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
    else:
        lines.append("The dataset's given labels equal its clean ones: there is no known corruption to score against.")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"
