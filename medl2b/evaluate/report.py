"""Evaluation reports in nnU-Net's shape: ``summary.json``, ``metrics.csv``, ``report.md``.

Layout written by :func:`write_seg_report` into ``out_dir`` (usually ``RUN/eval``)::

    summary.json   split, checkpoint, per-case rows, mean/std/median, n_failed, n_nan, policy
    metrics.csv    case,dice,hd95,asd,status  (one row per case; empty cell = not finite)
    report.md      per-case table, mean ± std, the empty-mask policy, failures

Multi-class segmentation: rows from
:func:`~medl2b.evaluate.metrics.compute_multiclass_case_metrics` carry a
``per_class`` dict. ``summary.json`` then also holds ``classes`` (the names, in
order) and ``per_class`` (mean/std/median, n_failed, n_nan per class);
``metrics.csv`` gains ``dice_<name>,hd95_<name>,asd_<name>,status_<name>`` per
class after the columns above; ``report.md`` gains per-class Dice columns and a
per-class table, and labels the case Dice as the mean over the foreground
classes. Rows without ``per_class`` give exactly the binary files.

Rows that all carry ``cldice`` (centreline Dice, ``compute_case_metrics(...,
centreline=True)``; ``medl2b eval`` scores it) get a ``cldice`` column after
``asd`` (and ``cldice_<name>`` per class), a ``cldice`` entry in the mean, std and
median of ``summary.json``, and a clDice column and mean in ``report.md``.

:func:`write_cls_report` writes ``summary.json``, ``metrics.csv`` (per class),
``confusion_matrix.csv`` and ``report.md``. :func:`compare_runs` reads several
``RUN/eval/summary.json`` + ``RUN/config.yaml`` and returns one markdown table.

Every file is written atomically (:func:`medl2b.errors.atomic_file`). JSON never
holds ``NaN`` or ``Infinity`` tokens: non-finite numbers are written as ``null``.
Dice and accuracies are stored as fractions in [0, 1] and shown as percentages
in markdown; distances are in mm.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medl2b.errors import InputError, atomic_file
from medl2b.evaluate.metrics import SEG_KEYS, SEG_OPTIONAL_KEYS, EmptyPolicy, summarize_cases

__all__ = ["compare_runs", "empty_policy_sentence", "write_cls_report", "write_csv", "write_json",
           "write_seg_report", "write_text"]

_SEG_LABELS = {"dice": "Dice (%)", "hd95": "HD95 (mm)", "asd": "ASD (mm)", "cldice": "clDice (%)"}
_PERCENT = ("dice", "cldice")  # fractions shown as percentages


def _seg_keys(per_case: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The metric keys of the rows: :data:`SEG_KEYS`, plus each optional key that every row carries."""
    rows = [r for r in per_case if isinstance(r, Mapping)]
    return (*SEG_KEYS, *(k for k in SEG_OPTIONAL_KEYS if rows and all(k in r for r in rows)))


# --- small writers ----------------------------------------------------------------------------------

def _jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays, paths and tuples made JSON-native, non-finite floats as None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and callable(obj.item):  # 0-d torch tensor
        return _jsonable(obj.item())
    raise ValueError(f"cannot write {type(obj).__name__} to JSON: {obj!r}")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (a NaN is an error)."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV file of a ``header`` row and ``rows`` (UTF-8) atomically."""
    with atomic_file(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return v


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _num(v: Any, *, scale: float = 1.0, digits: int = 2) -> str:
    f = _finite(v)
    return "n/a" if f is None else f"{f * scale:.{digits}f}"


def _pm(mean: Any, std: Any, *, scale: float = 1.0) -> str:
    m, s = _num(mean, scale=scale), _num(std, scale=scale)
    return m if m == "n/a" or s == "n/a" else f"{m} ± {s}"


def _md_cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _check_common(split: Any, checkpoint: Any, extra: Mapping | None, reserved: Sequence[str]) -> dict:
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string, got {split!r}")
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise ValueError(f"checkpoint must be a path or string, got {checkpoint!r}")
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise ValueError(f"extra must be a dict, got {type(extra).__name__}")
    clash = sorted(set(map(str, extra)) & set(reserved))
    if clash:
        raise ValueError(f"extra must not redefine report keys: {clash}")
    return dict(extra)


# --- segmentation -----------------------------------------------------------------------------------

def empty_policy_sentence(empty_policy: str | EmptyPolicy) -> str:
    """One sentence stating how empty masks were scored, for reports."""
    policy = EmptyPolicy(empty_policy)
    if policy is EmptyPolicy.WORST:
        return ("Empty masks (policy `worst`): a missed structure (empty prediction) or a false positive "
                "(empty ground truth) scores Dice 0 and HD95 = ASD = the diagonal of the volume in mm, "
                "and two empty masks score Dice 1 and HD95 = ASD = 0.")
    return ("Empty masks (policy `nan`): a missed structure or a false positive scores Dice 0 and two empty "
            "masks score Dice 1, while HD95 and ASD are undefined (NaN) whenever a mask is empty; those "
            "values are left out of the means and counted as excluded.")


def _seg_classes(per_case: Sequence[Mapping[str, Any]]) -> list[str] | None:
    """The class names of multi-class rows (each with ``per_class``), or None if no row has one.

    Raises:
        ValueError: if only some rows have ``per_class``, or the rows' class names
            or their order differ.
    """
    has = [isinstance(row, Mapping) and "per_class" in row for row in per_case]
    if not any(has):
        return None
    names: list[str] | None = None
    for i, row in enumerate(per_case):
        case = row.get("case", i) if isinstance(row, Mapping) else i
        if not has[i]:
            raise ValueError(f"per_case[{i}] (case {case!r}) has no 'per_class' while other rows have one; "
                             "score every case with the same classes")
        pc = row["per_class"]
        if not isinstance(pc, Mapping) or not pc:
            raise ValueError(f"per_case[{i}] (case {case!r}): per_class must be a non-empty dict of "
                             f"class name -> metrics, got {pc!r}")
        row_names = [str(k) for k in pc]
        if any(not n for n in row_names) or len(set(row_names)) != len(row_names):
            raise ValueError(f"per_case[{i}] (case {case!r}): per_class names must be unique and non-empty, "
                             f"got {row_names}")
        for n, v in pc.items():
            if not isinstance(v, Mapping):
                raise ValueError(f"per_case[{i}] (case {case!r}): per_class[{n!r}] must be a dict of metrics")
        if names is None:
            names = row_names
        elif row_names != names:
            raise ValueError(f"per_case[{i}] (case {case!r}) has classes {row_names}, but per_case[0] has "
                             f"{names}; every case must carry the same class names in the same order")
    return names


def _per_class_rows(per_case: Sequence[Mapping[str, Any]], index: int) -> list[dict[str, Any]]:
    """The metrics of class number ``index`` of every row, named by case, for ``summarize_cases``."""
    out = []
    for row in per_case:
        values = list(row["per_class"].values())[index]
        out.append({**values, "case": row["case"]})
    return out


def write_seg_report(
    out_dir: str | os.PathLike,
    *,
    per_case: Sequence[Mapping[str, Any]],
    split: str,
    checkpoint: str | os.PathLike,
    extra: Mapping[str, Any] | None = None,
    empty_policy: str | EmptyPolicy = EmptyPolicy.WORST,
) -> dict[str, Any]:
    """Write ``summary.json``, ``metrics.csv`` and ``report.md`` for a segmentation evaluation.

    Args:
        out_dir: folder to write into (created if needed), e.g. ``RUN/eval``.
        per_case: one row per case with ``"case"`` (unique name), ``"dice"``,
            ``"hd95"``, ``"asd"`` and ``"status"``, as from
            :func:`~medl2b.evaluate.metrics.compute_case_metrics` plus the name.
            Rows from :func:`~medl2b.evaluate.metrics.compute_multiclass_case_metrics`
            also carry ``"per_class"`` (``{name: {"dice", "hd95", "asd",
            "status"}}``); then every row must carry it, with the same class names
            in the same order. Further keys are kept in ``summary.json`` only.
        split: the evaluated split, e.g. ``"test"``.
        checkpoint: the checkpoint evaluated.
        extra: more top-level keys for ``summary.json`` (e.g. the dataset); they
            must not redefine the report's own keys.
        empty_policy: the policy the rows were computed with; stated in the report.
            Pass the one given to ``compute_case_metrics``.

    Returns:
        The summary as written to ``summary.json`` (non-finite numbers as ``None``):
        ``{"task": "segmentation", "split", "checkpoint", "empty_policy",
        "per_case": [...], "mean": {"dice", "hd95", "asd"}, "std": {...},
        "median": {...}, "n_cases", "n_failed", "n_nan": {...}, "status_counts",
        **extra}``. With ``per_class`` rows it also holds ``"classes": [name, ...]``
        and ``"per_class": {name: {"mean": {"dice", "hd95", "asd"}, "std": {...},
        "median": {...}, "n_failed": int, "n_nan": {...}}}``, and each
        ``per_case`` row keeps its ``per_class`` dict.

    Raises:
        ValueError: on duplicate case names, rows lacking a metric or with an
            unknown status, mismatched ``per_class`` names, an invalid
            ``empty_policy``, or ``extra`` redefining a report key.
    """
    out = Path(out_dir)
    try:
        policy = EmptyPolicy(empty_policy)
    except ValueError:
        raise ValueError(f"empty_policy must be 'worst' or 'nan', got {empty_policy!r}") from None
    if isinstance(per_case, Mapping) or not isinstance(per_case, Sequence):
        raise ValueError(f"per_case must be a list of dicts, got {type(per_case).__name__}")
    classes = _seg_classes(per_case)
    keys = _seg_keys(per_case)
    core = ("case", *keys, "status")
    reserved = ("task", "split", "checkpoint", "empty_policy", "per_case", "mean", "std", "median",
                "n_cases", "n_failed", "n_nan", "status_counts")
    if classes is not None:
        reserved += ("classes", "per_class")
    extra_d = _check_common(split, checkpoint, extra, reserved)
    names = []
    for i, row in enumerate(per_case):
        if not isinstance(row, Mapping) or "case" not in row:
            raise ValueError(f"per_case[{i}] must be a dict with a 'case' name")
        names.append(str(row["case"]))
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"per_case has duplicate case names: {dup}")
    stats = summarize_cases(per_case, keys=keys)  # validates keys and statuses
    class_stats = {}
    for j, name in enumerate(classes or []):
        try:
            class_stats[name] = summarize_cases(_per_class_rows(per_case, j), keys=keys)
        except ValueError as e:
            raise ValueError(f"per_class {name!r}: {e}") from None

    rows = []
    for row in per_case:
        clean = {"case": str(row["case"]), **{k: _finite(row[k]) for k in keys}, "status": row["status"]}
        clean.update({str(k): v for k, v in row.items() if k not in core})
        if classes is not None:
            clean["per_class"] = {
                name: {**{k: _finite(v[k]) for k in keys}, "status": v["status"],
                       **{str(k): x for k, x in v.items() if k not in core}}
                for name, v in zip(classes, row["per_class"].values())
            }
        rows.append(clean)
    multi: dict[str, Any] = {}
    if classes is not None:
        multi = {
            "classes": classes,
            "per_class": {name: {key: st[key] for key in ("mean", "std", "median", "n_failed", "n_nan")}
                          for name, st in class_stats.items()},
        }
    summary = _jsonable({
        "task": "segmentation",
        "split": split,
        "checkpoint": os.fspath(checkpoint),
        "empty_policy": policy.value,
        "per_case": rows,
        "mean": stats["mean"],
        "std": stats["std"],
        "median": stats["median"],
        "n_cases": stats["n"],
        "n_failed": stats["n_failed"],
        "n_nan": stats["n_nan"],
        "status_counts": stats["status_counts"],
        **multi,
        **extra_d,
    })

    header = list(core)
    csv_rows = [[_csv_cell(r[k]) for k in core] for r in summary["per_case"]]
    for name in classes or []:
        header += [f"{k}_{name}" for k in (*keys, "status")]
        for r, cells in zip(summary["per_case"], csv_rows):
            cells += [_csv_cell(r["per_class"][name][k]) for k in (*keys, "status")]
    write_json(out / "summary.json", summary)
    write_csv(out / "metrics.csv", header, csv_rows)
    write_text(out / "report.md", _seg_markdown(summary))
    return summary


def _seg_markdown(s: Mapping[str, Any]) -> str:
    classes = s.get("classes") or []
    several = len(classes) > 1
    keys = [k for k in (*SEG_KEYS, *SEG_OPTIONAL_KEYS) if k in s["mean"]]
    optional = [k for k in keys if k in SEG_OPTIONAL_KEYS]
    dice_header = "Dice, mean fg (%)" if several else "Dice (%)"
    table = _md_table(
        ["Case", dice_header, *(f"Dice {c} (%)" for c in classes), "HD95 (mm)", "ASD (mm)",
         *(_SEG_LABELS[k] for k in optional), "Status"],
        [[r["case"], _num(r["dice"], scale=100),
          *(_num(r["per_class"][c]["dice"], scale=100) for c in classes),
          _num(r["hd95"]), _num(r["asd"]), *(_num(r[k], scale=100) for k in optional), r["status"]]
         for r in s["per_case"]],
    )
    if "pred" in s and "ref" in s:  # a prediction folder (medl2b eval --pred --ref)
        lines = [
            "# Segmentation evaluation of a prediction folder",
            "",
            f"Predictions: `{s['pred']}`; references: `{s['ref']}` (metrics on the reference grid, in mm)",
            "",
        ]
    else:
        lines = [
            f"# Segmentation evaluation: split `{s['split']}`",
            "",
            f"Checkpoint: `{s['checkpoint']}`",
            "",
        ]
    if several:
        named = "Dice, HD95, ASD and clDice" if optional else "Dice, HD95 and ASD"
        lines += [
            (f"Foreground classes: {', '.join(classes)}. A case's {named} are the means over its "
             f"{len(classes)} foreground classes (finite values only); its status is `missed` if any class is "
             "missed, else `false_positive` if any class is one, else `both_empty` if every class is, else `ok`."),
            "",
        ]
    lines += [
        table,
        f"Mean ± std over {s['n_cases']} cases:",
        "",
    ]
    for k in keys:
        scale = 100 if k in _PERCENT else 1
        label = _SEG_LABELS[k]
        if several:
            label = label.replace(" (", ", mean over foreground classes (")
        line = f"- {label}: {_pm(s['mean'][k], s['std'][k], scale=scale)}" \
               f" (median {_num(s['median'][k], scale=scale)})"
        if s["n_nan"][k]:
            line += f"; {s['n_nan'][k]} non-finite value(s) excluded"
        lines.append(line)
    if classes:
        per_class_rows = []
        for c in classes:
            st = s["per_class"][c]
            row = [c]
            for k in keys:
                cell = _pm(st["mean"][k], st["std"][k], scale=100 if k in _PERCENT else 1)
                if st["n_nan"][k]:
                    cell += f" ({st['n_nan'][k]} NaN excluded)"
                row.append(cell)
            row.append(f"{st['n_failed']}/{s['n_cases']}")
            per_class_rows.append(row)
        lines += [
            "",
            f"Per class, mean ± std over {s['n_cases']} cases:",
            "",
            _md_table(["Class", *(_SEG_LABELS[k] for k in keys), "failed"], per_class_rows).rstrip("\n"),
        ]
    failed = "Failed cases (missed or false positive"
    failed += " in any class)" if classes else ")"
    lines += [
        "",
        f"{failed}: {s['n_failed']} of {s['n_cases']}.",
        "",
        empty_policy_sentence(s["empty_policy"]),
        "",
    ]
    return "\n".join(lines)


# --- classification ---------------------------------------------------------------------------------

def write_cls_report(
    out_dir: str | os.PathLike,
    *,
    metrics: Mapping[str, Any],
    split: str,
    checkpoint: str | os.PathLike,
    class_names: Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``summary.json``, ``metrics.csv``, ``confusion_matrix.csv`` and ``report.md``.

    Args:
        out_dir: folder to write into (created if needed), e.g. ``RUN/eval``.
        metrics: the output of :func:`~medl2b.evaluate.metrics.classification_metrics`;
            ``"accuracy"``, ``"balanced_accuracy"``, ``"confusion"`` (C x C, rows =
            truth) and ``"n"`` are used. Per-class recall and support are taken
            from the confusion matrix, in ``class_names`` order.
        split: the evaluated split.
        checkpoint: the checkpoint evaluated.
        class_names: the C class names, in index order.
        extra: more top-level keys for ``summary.json``.

    Returns:
        The summary as written: ``{"task": "classification", "split", "checkpoint",
        "accuracy", "balanced_accuracy", "per_class_recall": {name: float | None},
        "support": {name: int}, "confusion", "class_names", "n", **extra}``.
    """
    out = Path(out_dir)
    reserved = ("task", "split", "checkpoint", "accuracy", "balanced_accuracy", "per_class_recall",
                "support", "confusion", "class_names", "n")
    extra_d = _check_common(split, checkpoint, extra, reserved)
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must be a dict, got {type(metrics).__name__}")
    missing = [k for k in ("accuracy", "balanced_accuracy", "confusion", "n") if k not in metrics]
    if missing:
        raise ValueError(f"metrics lacks {missing}; pass the output of classification_metrics")
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise ValueError("class_names must be a sequence of names")
    names = [str(c) for c in class_names]
    cm = np.asarray(metrics["confusion"], dtype=np.int64)
    if cm.shape != (len(names), len(names)):
        raise ValueError(f"metrics['confusion'] has shape {cm.shape}, expected ({len(names)}, {len(names)}) "
                         f"for {len(names)} class_names")
    support = cm.sum(axis=1)
    recall = {n: (float(cm[i, i] / support[i]) if support[i] else None) for i, n in enumerate(names)}

    summary = _jsonable({
        "task": "classification",
        "split": split,
        "checkpoint": os.fspath(checkpoint),
        "accuracy": float(metrics["accuracy"]),
        "balanced_accuracy": float(metrics["balanced_accuracy"]),
        "per_class_recall": recall,
        "support": {n: int(s) for n, s in zip(names, support)},
        "confusion": cm.tolist(),
        "class_names": names,
        "n": int(metrics["n"]),
        **extra_d,
    })

    write_json(out / "summary.json", summary)
    write_csv(out / "metrics.csv", ["class", "n_true", "recall"],
               [[n, int(s), _csv_cell(recall[n])] for n, s in zip(names, support)])
    write_csv(out / "confusion_matrix.csv", ["true\\pred", *names],
               [[n, *row] for n, row in zip(names, cm.tolist())])
    write_text(out / "report.md", _cls_markdown(summary))
    return summary


def _cls_markdown(s: Mapping[str, Any]) -> str:
    names = s["class_names"]
    per_class = _md_table(
        ["Class", "n (true)", "Recall (%)"],
        [[n, s["support"][n], _num(s["per_class_recall"][n], scale=100)] for n in names],
    )
    confusion = _md_table(["true \\ pred", *names], [[n, *row] for n, row in zip(names, s["confusion"])])
    absent = [n for n in names if s["per_class_recall"][n] is None]
    lines = [
        f"# Classification evaluation: split `{s['split']}`",
        "",
        f"Checkpoint: `{s['checkpoint']}`",
        "",
        f"- Accuracy: {_num(s['accuracy'], scale=100)} % (n = {s['n']})",
        f"- Balanced accuracy (mean per-class recall): {_num(s['balanced_accuracy'], scale=100)} %",
    ]
    if absent:
        lines.append(f"- Classes absent from the ground truth, left out of the balanced accuracy: {', '.join(absent)}")
    lines += ["", "## Per class", "", per_class, "## Confusion matrix (rows = truth)", "", confusion]
    return "\n".join(lines)


# --- comparison across runs -------------------------------------------------------------------------

def _lookup(cfg: Mapping[str, Any], key: str) -> Any:
    """``cfg[key]`` at the top level, else in a nested section one level down."""
    if key in cfg:
        return cfg[key]
    for section in cfg.values():
        if isinstance(section, Mapping) and key in section:
            return section[key]
    return None


def _run_info(run: Path, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Name, method, data and noise level of a run.

    From ``RUN/config.yaml``: ``name`` (top level), ``method`` (top level or one
    section down), ``data`` (a string, shown by its last path part, or a section
    with ``name``/``dataset``/``root``) and ``noise_dice`` (top level, one section
    down, or ``noise.dice``). A missing method falls back to the summary's
    ``method``, then to the folder name; a missing name to the folder name.
    """
    info: dict[str, Any] = {"name": run.name, "method": None, "data": None, "noise_dice": None}
    cfg: Mapping[str, Any] = {}
    cfg_path = run / "config.yaml"
    if cfg_path.is_file():
        try:
            loaded = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise InputError(cfg_path, f"not valid YAML ({str(e).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, Mapping):
            raise InputError(cfg_path, "must be a YAML mapping of config keys")
        cfg = loaded or {}

    def text(value: Any) -> str | None:
        return str(value) if isinstance(value, (str, int, float)) and str(value) else None

    info["name"] = text(cfg.get("name")) or run.name
    info["method"] = text(_lookup(cfg, "method")) or text(summary.get("method")) or run.name
    data = cfg.get("data")
    if isinstance(data, Mapping):
        data = data.get("name") or data.get("dataset") or data.get("root")
    if isinstance(data, str) and data:
        info["data"] = Path(data).name or data
    noise = _lookup(cfg, "noise_dice")
    if noise is None and isinstance(cfg.get("noise"), Mapping):
        noise = cfg["noise"].get("dice")
    info["noise_dice"] = _finite(noise)
    return info


def _read_summary(run: Path) -> tuple[str, dict[str, Any]]:
    path = run / "eval" / "summary.json"
    if not path.is_file():
        raise InputError(run, "has no eval/summary.json; run `medl2b eval` first")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not valid JSON ({e})") from None
    if not isinstance(summary, Mapping):
        raise InputError(path, "must hold a JSON object")
    task = summary.get("task")
    if task is None:
        if "accuracy" in summary:
            task = "classification"
        elif isinstance(summary.get("mean"), Mapping) and "dice" in summary["mean"]:
            task = "segmentation"
    if task not in ("segmentation", "classification"):
        raise InputError(path, "is neither a segmentation nor a classification summary")
    return task, dict(summary)


def compare_runs(run_dirs: Sequence[str | os.PathLike], out_path: str | os.PathLike | None = None) -> str:
    """Markdown table comparing the evaluations of several runs.

    Each ``RUN`` must hold ``eval/summary.json`` (written by :func:`write_seg_report`
    or :func:`write_cls_report`); ``RUN/config.yaml`` gives the ``method`` and, if
    present, ``name``, ``data`` and ``noise_dice``; the folder name stands in for a
    missing name or method (see ``_run_info``).

    Segmentation runs give one row each with ``Dice (%) | HD95 (mm) | ASD (mm) |
    failed`` as mean ± std over cases; classification runs give ``Accuracy (%) |
    Balanced acc. (%)``. A mix gives one table per task. When every segmentation
    summary has the same ``classes`` list with more than one class, the Dice
    column reads ``Dice, mean fg (%)`` (the mean over the foreground classes) and
    is followed by one ``Dice <name> (%)`` column per class.

    Args:
        run_dirs: the run folders, in row order.
        out_path: if given, the markdown is also written there (atomically).

    Returns:
        The markdown text.

    Raises:
        InputError: naming the run folder whose ``eval/summary.json`` is missing,
            or the file that cannot be read.
    """
    if isinstance(run_dirs, (str, os.PathLike)) or not isinstance(run_dirs, Sequence) or not run_dirs:
        raise ValueError("run_dirs must be a non-empty list of run folders")
    seg_runs, cls_runs = [], []
    for rd in run_dirs:
        run = Path(rd)
        if not run.is_dir():
            raise InputError(run, "is not a run folder")
        task, summary = _read_summary(run)
        (seg_runs if task == "segmentation" else cls_runs).append((_run_info(run, summary), summary))

    blocks = []
    if seg_runs:
        blocks.append(_compare_table(seg_runs, seg=True))
    if cls_runs:
        blocks.append(_compare_table(cls_runs, seg=False))
    text = "\n".join(blocks)
    if out_path is not None:
        write_text(Path(out_path), text)
    return text


def _shared_classes(runs: list[tuple[dict, dict]]) -> list[str]:
    """The ``classes`` list shared by every summary if it names more than one class, else ``[]``."""
    first = runs[0][1].get("classes")
    if not isinstance(first, list) or len(first) < 2 or not all(isinstance(c, str) for c in first):
        return []
    return list(first) if all(s.get("classes") == first for _, s in runs) else []


def _class_dice(s: Mapping[str, Any], name: str) -> str:
    """``mean ± std`` of one class's Dice in a summary, in %; ``n/a`` if the summary lacks it."""
    per_class = s.get("per_class")
    st = per_class.get(name) if isinstance(per_class, Mapping) else None
    if not isinstance(st, Mapping):
        return "n/a"

    def part(key: str) -> Any:
        section = st.get(key)
        return section.get("dice") if isinstance(section, Mapping) else None

    cell = _pm(part("mean"), part("std"), scale=100)
    if part("n_nan"):
        cell += f" ({part('n_nan')} NaN excluded)"
    return cell


def _compare_table(runs: list[tuple[dict, dict]], *, seg: bool) -> str:
    show_data = any(info["data"] for info, _ in runs)
    show_noise = any(info["noise_dice"] is not None for info, _ in runs)
    classes = _shared_classes(runs) if seg else []
    header = ["Run", "Method"] + (["Data"] if show_data else []) + (["Noise Dice"] if show_noise else [])
    if seg:
        header += ["Dice, mean fg (%)" if classes else "Dice (%)", *(f"Dice {c} (%)" for c in classes),
                   "HD95 (mm)", "ASD (mm)", "failed"]
    else:
        header += ["Accuracy (%)", "Balanced acc. (%)"]
    rows = []
    for info, s in runs:
        row = [info["name"], info["method"]]
        if show_data:
            row.append(info["data"] or "")
        if show_noise:
            row.append(_num(info["noise_dice"]) if info["noise_dice"] is not None else "")
        if seg:
            mean, std = s.get("mean") or {}, s.get("std") or {}
            n_nan = s.get("n_nan") or {}
            for k in SEG_KEYS:
                cell = _pm(mean.get(k), std.get(k), scale=100 if k == "dice" else 1)
                if n_nan.get(k):
                    cell += f" ({n_nan[k]} NaN excluded)"
                row.append(cell)
                if k == "dice":
                    row += [_class_dice(s, c) for c in classes]
            n_failed, n_cases = s.get("n_failed"), s.get("n_cases")
            row.append(f"{n_failed}/{n_cases}" if n_failed is not None and n_cases is not None else "n/a")
        else:
            row += [_num(s.get("accuracy"), scale=100), _num(s.get("balanced_accuracy"), scale=100)]
        rows.append(row)
    title = "Segmentation (mean ± std over cases)" if seg else "Classification"
    return f"### {title}\n\n" + _md_table(header, rows)
