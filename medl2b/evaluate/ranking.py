"""How good is a ranking of suspect annotations: percentile ranks, a combined score, AUROC and precision at K."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

__all__ = ["cell", "percentile_ranks", "ranking_quality", "ranking_table_quality", "score_rows"]


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (ties share their mean rank; NaN ranks 0, the least suspect)."""
    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isfinite(v), v, -np.inf)
    if len(v) < 2:
        return np.zeros(len(v))
    return (rankdata(v) - 1.0) / (len(v) - 1.0)


def ranking_quality(score: np.ndarray, corrupted: np.ndarray) -> dict:
    """AUROC and precision at K (K = number of corrupted samples) of a suspicion score."""
    corrupted = np.asarray(corrupted).astype(bool)
    k = int(corrupted.sum())
    if k == 0 or k == len(corrupted):
        return {"n": int(len(corrupted)), "n_corrupted": k, "auroc": None, "precision_at_k": None}
    top = np.argsort(-np.asarray(score), kind="stable")[:k]
    return {"n": int(len(corrupted)), "n_corrupted": k, "auroc": float(roc_auc_score(corrupted, score)),
            "precision_at_k": float(corrupted[top].mean())}


def score_rows(rows: list[dict]) -> np.ndarray:
    """The score of each row (``meta_signal``, ``disagreement``): the mean of the two percentile ranks;
    also stored in the rows as ``score``."""
    meta = np.array([r["meta_signal"] for r in rows], dtype=np.float64)
    model = np.array([r["disagreement"] for r in rows], dtype=np.float64)
    score = (percentile_ranks(meta) + percentile_ranks(model)) / 2.0
    for r, s in zip(rows, score):
        r["score"] = float(s)
    return score


def ranking_table_quality(rows: list[dict], score: np.ndarray) -> dict:
    """Ranking quality of the score and of each signal alone (unscored samples rank lowest)."""
    truth = np.array([r["corrupted"] for r in rows])
    quality = ranking_quality(score, truth)
    for name in ("meta_signal", "disagreement"):
        quality[f"{name}_auroc"] = ranking_quality(percentile_ranks(np.array([r[name] for r in rows], dtype=float)),
                                                   truth)["auroc"]
    return quality


def cell(v: float) -> str:
    """A CSV cell of a float: empty where it is not finite."""
    return "" if not np.isfinite(v) else f"{v:.6f}"
