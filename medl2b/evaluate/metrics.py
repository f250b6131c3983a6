"""Evaluation metrics: Dice / HD95 / ASD / clDice per 3-D case, and classification accuracy.

Segmentation
    :func:`compute_case_metrics` scores one binary case on its voxel grid, in mm,
    with MONAI's surface-distance functions (``compute_hausdorff_distance``
    with ``percentile=95``, ``compute_average_surface_distance`` with
    ``symmetric=True``). The voxel spacing is passed per axis, so anisotropic
    grids (PROMISE12: ~0.27 x 0.27 x 2.2 mm) are measured in millimetres.

    Empty masks are decided here, never by MONAI. In MONAI 1.6.1, an empty
    prediction or an empty ground truth makes ``compute_hausdorff_distance``
    return NaN and ``compute_average_surface_distance`` return inf (NaN when
    both are empty); ``compute_dice`` returns NaN for an empty ground truth with
    its default ``ignore_empty=True``; and the metric classes' ``aggregate()``
    drops NaN from the mean without saying so (MONAI issue #9095). A missed
    prostate would then simply vanish from the mean HD95. The policy
    (:class:`EmptyPolicy`) is therefore explicit:

    - ``ok`` (both masks non-empty): Dice, HD95 and ASD from MONAI.
    - ``missed`` (empty prediction, non-empty truth): Dice 0; HD95 = ASD = the
      volume diagonal under ``"worst"``.
    - ``false_positive`` (empty truth, non-empty prediction): Dice 0; HD95 = ASD =
      the volume diagonal under ``"worst"``.
    - ``both_empty``: Dice 1; HD95 = ASD = 0 under ``"worst"``.

    The diagonal is that of the whole volume in mm,
    ``sqrt(sum((shape * spacing) ** 2))``, an upper bound on the distance between
    any two voxels of the case. With ``empty_policy="nan"`` HD95 and ASD are NaN in all three empty
    cases (Dice is as above), and :func:`summarize_cases` counts them.

    :func:`compute_multiclass_case_metrics` scores one case of a label map with
    several foreground classes (e.g. the Decathlon hippocampus: 0 background,
    1 Anterior, 2 Posterior). Each foreground class ``k`` is scored as the binary
    case ``pred == k`` vs ``truth == k`` by :func:`compute_case_metrics`, so the
    empty-mask policy applies per class: a class absent from both maps is
    ``both_empty``, a class predicted nowhere but present in the truth is
    ``missed``. The case's Dice, HD95 and ASD are the means over the foreground
    classes (over the finite values only: under ``"nan"`` a class with an empty
    mask leaves its HD95 and ASD out, and the mean is NaN if no class has a
    finite value). The case's status is the worst of its classes: ``missed`` if
    any class is missed, else ``false_positive`` if any class is a false
    positive, else ``both_empty`` if every class is, else ``ok``. With a single
    foreground class the case values are exactly the binary ones.

    :func:`centreline_dice` is clDice (Shit et al., CVPR 2021), the Dice of the masks' centrelines,
    for thin tubular structures (vessels), where a missed capillary costs little voxel overlap but
    breaks the tree. With ``S`` the skeleton (scikit-image ``skeletonize``, 2-D or 3-D)::

        Tprec = |S(P) ∩ L| / |S(P)|,  Tsens = |S(L) ∩ P| / |S(L)|,  clDice = 2·Tprec·Tsens / (Tprec + Tsens)

    It counts voxels, so the spacing does not enter. Empty masks follow Dice: 1 when both are empty,
    0 when one is. ``compute_case_metrics(..., centreline=True)`` (and the multi-class version) add it
    as ``"cldice"``; ``medl2b eval`` reports it for every segmentation case and class.

    :func:`summarize_cases` reports the mean, std and median of each metric over
    the finite values, with ``n_nan`` counting the values left out, and
    ``n_failed`` counting the ``missed`` and ``false_positive`` cases.

Classification
    :func:`confusion_matrix` (rows = truth) and :func:`classification_metrics`:
    accuracy, and balanced accuracy (the mean recall over the classes present in
    ``y_true``, the ISIC challenge metric).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_roc_auc
from skimage.morphology import skeletonize

from medl2b.dice import mask_dice, mean_foreground_dice

__all__ = [
    "mask_dice",
    "mean_foreground_dice",
    "one_vs_rest_auroc",
    "CASE_STATUSES",
    "SEG_OPTIONAL_KEYS",
    "centreline_dice",
    "EmptyPolicy",
    "FAILED_STATUSES",
    "SEG_KEYS",
    "classification_metrics",
    "compute_case_metrics",
    "compute_multiclass_case_metrics",
    "confusion_matrix",
    "summarize_cases",
    "volume_diagonal",
]

#: Metric keys of one segmentation case, in report order.
SEG_KEYS: tuple[str, ...] = ("dice", "hd95", "asd")
#: Metric keys a case may also carry (``centreline=True``); reports show them when every case has them.
SEG_OPTIONAL_KEYS: tuple[str, ...] = ("cldice",)
#: Every value ``compute_case_metrics(...)["status"]`` can take.
CASE_STATUSES: tuple[str, ...] = ("ok", "missed", "false_positive", "both_empty")
#: Statuses counted as failures in ``n_failed``.
FAILED_STATUSES: tuple[str, ...] = ("missed", "false_positive")


class EmptyPolicy(str, Enum):
    """What HD95 and ASD are when a mask is empty (see the module docstring).

    - ``WORST`` (``"worst"``): a missed structure or a false positive scores the
      volume diagonal in mm; two empty masks score 0.
    - ``NAN`` (``"nan"``): HD95 and ASD are NaN whenever a mask is empty; summaries
      count them in ``n_nan``.

    Dice is the same under both: 0 for ``missed`` and ``false_positive``, 1 for
    ``both_empty``.
    """

    WORST = "worst"
    NAN = "nan"


def _empty_policy(value: str | EmptyPolicy) -> EmptyPolicy:
    try:
        return EmptyPolicy(value)
    except ValueError:
        choices = ", ".join(repr(p.value) for p in EmptyPolicy)
        raise ValueError(f"empty_policy must be one of {choices}, got {value!r}") from None


def _as_mask(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a boolean array; it must hold only 0 and 1 (or bools)."""
    if hasattr(x, "detach"):  # torch tensor, possibly on an accelerator
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name} must be a boolean or 0/1 numeric array, got dtype {arr.dtype}")
    if arr.size and not ((arr == 0) | (arr == 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1 (threshold or argmax it first); "
                         f"found values in [{arr.min()}, {arr.max()}]")
    return arr.astype(bool)


def _mask_pair(pred: Any, truth: Any, *, read=None, what: str = "mask") -> tuple[np.ndarray, np.ndarray]:
    """Both arrays read with ``read`` (default :func:`_as_mask`: bool masks), checked: the same shape,
    2-D or 3-D (``what`` names them in the message)."""
    read = read or _as_mask
    p = read(pred, "pred")
    t = read(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred and truth must have the same shape, got {p.shape} and {t.shape}")
    if p.ndim not in (2, 3):
        raise ValueError(f"pred must be a 3-D (X, Y, Z) or 2-D (X, Y) {what}, got shape {p.shape}")
    return p, t


def _as_spacing(spacing: Any, ndim: int) -> np.ndarray:
    """Return the spacing as a float array of shape (ndim,), checked finite and positive."""
    if spacing is None:
        raise ValueError("spacing is required (voxel size in mm per axis, in the array's axis order)")
    try:
        sp = np.asarray(spacing, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be numbers, got {spacing!r}") from None
    if sp.ndim == 0:
        sp = np.full(ndim, float(sp))
    if sp.shape != (ndim,):
        raise ValueError(f"spacing must have one value per axis ({ndim}), got {spacing!r}")
    if not (np.isfinite(sp).all() and (sp > 0).all()):
        raise ValueError(f"spacing must be finite and positive, got {spacing!r}")
    return sp


def volume_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the diagonal of a voxel grid: ``sqrt(sum((shape * spacing) ** 2))``.

    Args:
        shape: grid size per axis, e.g. (X, Y, Z).
        spacing: voxel size in mm per axis, same order as ``shape``.
    """
    shape_arr = np.asarray(shape, dtype=float)
    sp = _as_spacing(spacing, shape_arr.size)
    return float(np.sqrt(np.sum((shape_arr * sp) ** 2)))


def _monai_scores(pred: np.ndarray, truth: np.ndarray, spacing: np.ndarray) -> tuple[float, float, float]:
    """Dice, HD95 (mm) and symmetric ASD (mm) from MONAI for two non-empty masks."""
    # One foreground channel, shape (B=1, C=1, *spatial); background is not scored.
    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[None, None]
    t = torch.from_numpy(np.ascontiguousarray(truth, dtype=np.float32))[None, None]
    sp = tuple(float(s) for s in spacing)
    with warnings.catch_warnings():
        # MONAI 1.5-1.6 warn about an internal deprecated argument on every call.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd95 = compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=sp)
        asd = compute_average_surface_distance(p, t, include_background=True, symmetric=True, spacing=sp)
    return mask_dice(pred, truth), float(hd95.reshape(-1)[0]), float(asd.reshape(-1)[0])


def _skeleton(mask: np.ndarray) -> np.ndarray:
    """The skeleton of a boolean mask (scikit-image ``skeletonize``). A 3-D mask with a singleton axis (a 2-D
    image stored as an ``(X, Y, 1)`` volume) is thinned in 2-D: 3-D thinning of one layer is not the 2-D one."""
    if mask.ndim == 3 and 1 in mask.shape:
        axis = mask.shape.index(1)
        return np.expand_dims(skeletonize(np.squeeze(mask, axis)), axis)
    return skeletonize(mask)


def centreline_dice(pred: Any, truth: Any) -> float:
    """clDice of two binary masks (see the module docstring): 2-D ``(X, Y)`` or 3-D ``(X, Y, Z)``.

    ``Tprec`` is the share of the prediction's skeleton inside the truth, ``Tsens`` the share of the
    truth's skeleton inside the prediction; clDice is their harmonic mean (0 when both are 0). Two empty
    masks score 1, one empty mask 0.

    Raises:
        ValueError: if the masks differ in shape, are not 2-D/3-D or not binary.
    """
    p, t = _mask_pair(pred, truth)
    p_any, t_any = bool(p.any()), bool(t.any())
    if not (p_any and t_any):
        return 1.0 if p_any == t_any else 0.0
    sp, st = _skeleton(p), _skeleton(t)
    tprec = float((sp & t).sum()) / max(int(sp.sum()), 1)
    tsens = float((st & p).sum()) / max(int(st.sum()), 1)
    return 0.0 if tprec + tsens == 0 else 2.0 * tprec * tsens / (tprec + tsens)


def compute_case_metrics(
    pred: Any,
    truth: Any,
    spacing: Sequence[float] | float,
    *,
    empty_policy: str | EmptyPolicy = EmptyPolicy.WORST,
    centreline: bool = False,
) -> dict[str, Any]:
    """Dice, HD95 and ASD of one binary case on its voxel grid, in mm.

    HD95 is MONAI's percentile Hausdorff distance: the larger of the two directed
    95th percentiles of the distances between the surface voxels of ``pred`` and
    ``truth``. ASD is the symmetric average surface distance: the mean over the
    surface voxels of both masks of the distance to the other mask's surface.

    Args:
        pred: predicted mask, shape (X, Y, Z) (or (X, Y)), bool or 0/1. A one-slice ``(X, Y, 1)`` mask is
            scored as the 2-D image it is, with the in-plane spacing.
        truth: ground-truth mask, same shape as ``pred``.
        spacing: voxel size in mm per axis, in the arrays' axis order, e.g.
            (sx, sy, sz) for (X, Y, Z) arrays; a single number means isotropic.
        empty_policy: ``"worst"`` (default) or ``"nan"``; see :class:`EmptyPolicy`.
        centreline: also return ``"cldice"``, :func:`centreline_dice`.

    Returns:
        ``{"dice": float, "hd95": float, "asd": float, "status": str}`` (and ``"cldice"``) with
        ``status`` one of ``"ok"``, ``"missed"`` (empty prediction, non-empty
        truth), ``"false_positive"`` (empty truth, non-empty prediction) and
        ``"both_empty"``. Dice is a fraction in [0, 1]; distances are in mm.

    Raises:
        ValueError: if the masks differ in shape, are not 2-D/3-D, are not binary,
            or ``spacing`` / ``empty_policy`` is invalid.
    """
    policy = _empty_policy(empty_policy)
    p, t = _mask_pair(pred, truth)
    if p.ndim == 3 and p.shape[2] == 1:  # a 2-D image stored as one slice: distances in its plane (in 3-D
        p, t = p[..., 0], t[..., 0]      # every pixel of a one-slice mask would be surface)
        spacing = spacing if np.ndim(spacing) == 0 else tuple(spacing)[:2]
    sp = _as_spacing(spacing, p.ndim)

    extra = {"cldice": centreline_dice(p, t)} if centreline else {}
    p_any, t_any = bool(p.any()), bool(t.any())
    if p_any and t_any:
        dice, hd95, asd = _monai_scores(p, t, sp)
        return {"dice": dice, "hd95": hd95, "asd": asd, **extra, "status": "ok"}

    if not p_any and not t_any:
        status, dice, worst = "both_empty", 1.0, 0.0
    else:
        status = "missed" if t_any else "false_positive"
        dice, worst = 0.0, volume_diagonal(p.shape, sp)
    dist = worst if policy is EmptyPolicy.WORST else math.nan
    return {"dice": dice, "hd95": dist, "asd": dist, **extra, "status": status}


def _as_label_map(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as an int64 label map; bools count as 0/1, floats must be whole numbers."""
    if hasattr(x, "detach"):  # torch tensor, possibly on an accelerator
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.integer) and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise ValueError(f"{name} must hold integer class indices (argmax the scores first)")
    return arr.astype(np.int64)


def _check_classes(classes: Any) -> dict[int, str]:
    """Return ``classes`` as an ordered ``{index: name}`` dict, checked (indices >= 1, unique names)."""
    if not isinstance(classes, Mapping) or not classes:
        raise ValueError(f"classes must be a non-empty mapping of foreground index -> name, got {classes!r}")
    out: dict[int, str] = {}
    for k, v in classes.items():
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"classes keys must be foreground class indices >= 1 (0 is background), got {k!r}")
        if not isinstance(v, str) or not v:
            raise ValueError(f"classes[{k}] must be a non-empty name, got {v!r}")
        out[int(k)] = v
    names = list(out.values())
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"classes must have unique names, got duplicates {dup}")
    return out


def _finite_mean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN if there is none. One value is returned as is."""
    if len(values) == 1:
        return float(values[0])
    finite = [v for v in values if math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def _worst_status(statuses: Sequence[str]) -> str:
    """The case status of a multi-class case from the statuses of its classes."""
    if "missed" in statuses:
        return "missed"
    if "false_positive" in statuses:
        return "false_positive"
    if all(s == "both_empty" for s in statuses):
        return "both_empty"
    return "ok"


def compute_multiclass_case_metrics(
    pred: Any,
    truth: Any,
    spacing: Sequence[float] | float,
    *,
    classes: Mapping[int, str],
    empty_policy: str | EmptyPolicy = EmptyPolicy.WORST,
    centreline: bool = False,
) -> dict[str, Any]:
    """Dice, HD95 and ASD of one multi-class case, per foreground class and averaged.

    Each foreground class ``k`` of ``classes`` is scored as the binary case
    ``pred == k`` vs ``truth == k`` with :func:`compute_case_metrics` (the
    empty-mask policy applies per class). The case's values are the means over
    the foreground classes of the finite per-class values (NaN if none is finite);
    its status is the worst per-class status (see the module docstring). With one
    foreground class, the case values equal :func:`compute_case_metrics` of the
    binary masks exactly.

    Args:
        pred: predicted label map, shape (X, Y, Z) (or (X, Y)), integer class
            indices: 0 (background) or a key of ``classes``.
        truth: ground-truth label map, same shape and values as ``pred``.
        spacing: voxel size in mm per axis, in the arrays' axis order; a single
            number means isotropic.
        classes: foreground index -> name, e.g. ``{1: "Anterior", 2: "Posterior"}``;
            the order given is the order of ``per_class``. Names must be unique.
        empty_policy: ``"worst"`` (default) or ``"nan"``; see :class:`EmptyPolicy`.
        centreline: also score ``"cldice"`` (:func:`centreline_dice`) per class, and its mean.

    Returns:
        ``{"dice": float, "hd95": float, "asd": float, "status": str,
        "per_class": {name: {"dice", "hd95", "asd", "status"}}}`` (and ``"cldice"``) with the
        top-level values the means over the foreground classes and ``status`` as
        in :func:`compute_case_metrics`.

    Raises:
        ValueError: if the maps differ in shape, are not 2-D/3-D, hold a value
            that is neither 0 nor a key of ``classes``, or ``classes`` /
            ``spacing`` / ``empty_policy`` is invalid.
    """
    policy = _empty_policy(empty_policy)
    cls = _check_classes(classes)
    p, t = _mask_pair(pred, truth, read=_as_label_map, what="label map")
    sp = _as_spacing(spacing, p.ndim)
    allowed = np.array([0, *cls], dtype=np.int64)
    for name, arr in (("pred", p), ("truth", t)):
        bad = np.unique(arr[~np.isin(arr, allowed)])
        if bad.size:
            raise ValueError(f"{name} holds label values {bad[:10].tolist()} that are neither background (0) "
                             f"nor a class in classes {sorted(cls)}")

    per_class = {name: compute_case_metrics(p == k, t == k, sp, empty_policy=policy, centreline=centreline)
                 for k, name in cls.items()}
    rows = list(per_class.values())
    keys = (*SEG_KEYS, *SEG_OPTIONAL_KEYS) if centreline else SEG_KEYS
    result: dict[str, Any] = {k: _finite_mean([r[k] for r in rows]) for k in keys}
    result["status"] = _worst_status([r["status"] for r in rows])
    result["per_class"] = per_class
    return result


def _to_float(value: Any, where: str) -> float:
    if value is None:  # JSON null
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number or None, got {value!r}") from None


def summarize_cases(per_case: Sequence[Mapping[str, Any]], *, keys: Sequence[str] = SEG_KEYS) -> dict[str, Any]:
    """Mean, std and median of per-case metrics, never dropping NaN silently.

    Non-finite values (NaN, inf, or ``None`` as read back from JSON) are left out
    of the statistics and counted in ``n_nan``. The std is the population std
    (``ddof=0``) over the same finite values.

    Args:
        per_case: one mapping per case with each of ``keys`` and a ``"status"``
            from :data:`CASE_STATUSES` (the output of :func:`compute_case_metrics`,
            possibly with a ``"case"`` name).
        keys: the metric keys to summarise.

    Returns:
        ``{"mean": {key: float}, "std": {...}, "median": {...}, "n": int,
        "n_failed": int, "n_nan": {key: int}, "status_counts": {status: int}}``.
        ``n`` is the number of cases; a statistic is NaN when a key has no
        finite value at all. ``n_failed`` counts ``missed`` and
        ``false_positive`` cases.

    Raises:
        ValueError: if ``per_case`` is empty, or a case lacks a key or has an
            unknown status.
    """
    if isinstance(per_case, Mapping) or not isinstance(per_case, Sequence):
        raise ValueError(f"per_case must be a list of dicts, got {type(per_case).__name__}")
    if len(per_case) == 0:
        raise ValueError("per_case is empty: there is nothing to summarise")
    keys = tuple(keys)
    if not keys:
        raise ValueError("keys must name at least one metric")

    values = {k: np.empty(len(per_case)) for k in keys}
    status_counts = {s: 0 for s in CASE_STATUSES}
    for i, case in enumerate(per_case):
        if not isinstance(case, Mapping):
            raise ValueError(f"per_case[{i}] must be a dict, got {type(case).__name__}")
        name = case.get("case", i)
        status = case.get("status")
        if status not in status_counts:
            raise ValueError(f"per_case[{i}] (case {name!r}): status must be one of {CASE_STATUSES}, got {status!r}")
        status_counts[status] += 1
        for k in keys:
            if k not in case:
                raise ValueError(f"per_case[{i}] (case {name!r}) has no {k!r}")
            values[k][i] = _to_float(case[k], f"per_case[{i}][{k!r}]")

    mean, std, median, n_nan = {}, {}, {}, {}
    for k in keys:
        v = values[k]
        finite = v[np.isfinite(v)]
        n_nan[k] = int(v.size - finite.size)
        if finite.size:
            mean[k], std[k], median[k] = float(finite.mean()), float(finite.std()), float(np.median(finite))
        else:
            mean[k] = std[k] = median[k] = math.nan
    return {
        "mean": mean,
        "std": std,
        "median": median,
        "n": len(per_case),
        "n_failed": sum(status_counts[s] for s in FAILED_STATUSES),
        "n_nan": n_nan,
        "status_counts": status_counts,
    }


def _as_labels(y: Any, name: str) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices (N,), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise ValueError(f"{name} must hold integer class indices (argmax the scores first)")
    return arr.astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """Confusion matrix with rows = true class, columns = predicted class.

    Args:
        y_true: true class indices, shape (N,), values in [0, n_classes).
        y_pred: predicted class indices, shape (N,).
        n_classes: number of classes C.

    Returns:
        Integer array (C, C); entry [i, j] counts samples of class i predicted as j.
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    n_classes = int(n_classes)
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {t.size} and {p.size}")
    for name, arr in (("y_true", t), ("y_pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ValueError(f"{name} has class indices outside [0, {n_classes}): "
                             f"found [{arr.min()}, {arr.max()}]")
    counts = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)


def classification_metrics(
    y_true: Any,
    y_pred: Any,
    *,
    n_classes: int,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class recall and the confusion matrix.

    Balanced accuracy is the mean of the per-class recalls over the classes
    present in ``y_true`` (the ISIC 2019 challenge metric, as
    ``sklearn.metrics.balanced_accuracy_score``). A class absent from ``y_true``
    has recall ``None`` and does not enter the mean.

    Args:
        y_true: true class indices, shape (N,).
        y_pred: predicted class indices, shape (N,).
        n_classes: number of classes C.
        class_names: C unique names; defaults to ``"0"``, ``"1"``, ...

    Returns:
        ``{"accuracy": float, "balanced_accuracy": float,
        "per_class_recall": {name: float | None}, "support": {name: int},
        "confusion": list of C lists of C ints (rows = truth), "n": int,
        "class_names": list[str]}``. Accuracies are fractions in [0, 1].
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)
    if class_names is None:
        names = [str(i) for i in range(cm.shape[0])]
    else:
        if isinstance(class_names, str):
            raise ValueError("class_names must be a sequence of names, not one string")
        names = [str(c) for c in class_names]
        if len(names) != cm.shape[0]:
            raise ValueError(f"class_names must have n_classes={cm.shape[0]} names, got {len(names)}")
        if len(set(names)) != len(names):
            raise ValueError(f"class_names must be unique, got {names}")
    n = int(cm.sum())
    if n == 0:
        raise ValueError("y_true is empty: there is nothing to score")
    support = cm.sum(axis=1)
    recall = {name: (float(cm[i, i] / support[i]) if support[i] else None) for i, name in enumerate(names)}
    present = [r for r in recall.values() if r is not None]
    return {
        "accuracy": float(np.trace(cm) / n),
        "balanced_accuracy": float(np.mean(present)),
        "per_class_recall": recall,
        "support": {name: int(s) for name, s in zip(names, support)},
        "confusion": cm.tolist(),
        "n": n,
        "class_names": names,
    }


def one_vs_rest_auroc(probabilities: Any, y_true: Any, *, n_classes: int) -> dict[str, Any]:
    """Per-class one-vs-rest AUROC and their macro mean (MONAI's ``compute_roc_auc``).

    A class absent from ``y_true`` has no AUROC (``None``) and does not enter the mean.

    Returns:
        ``{"auroc_macro": float, "auroc_per_class": [float | None] * n_classes}``.
    """
    probs = torch.as_tensor(np.asarray(probabilities), dtype=torch.float64)
    truth = torch.as_tensor(np.asarray(y_true), dtype=torch.long)
    onehot = torch.nn.functional.one_hot(truth, n_classes)
    present = onehot.sum(0) > 0
    per_class: list[float | None] = [None] * n_classes
    for c in torch.nonzero(present).flatten().tolist():
        per_class[c] = float(compute_roc_auc(probs[:, c], onehot[:, c]))
    values = [v for v in per_class if v is not None]
    return {"auroc_macro": float(np.mean(values)) if values else float("nan"), "auroc_per_class": per_class}
