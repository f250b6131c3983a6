"""PNG figures for evaluations and runs, drawn with matplotlib's Agg canvas.

Every function draws on its own :class:`~matplotlib.figure.Figure` with an explicit
Agg canvas (no pyplot, no global backend switch, no display needed), writes the
PNG atomically and returns its path.

- :func:`plot_case_overlays`: axial slices of a case with clean / noisy / predicted contours.
- :func:`plot_weight_maps`: image, label noise, pseudo-label and the α / β maps per
  sample, as in the L2B paper's Figures 2 and 5 (β is high where the pseudo-label
  corrects a wrong noisy label).
- :func:`plot_learning_curves`: losses, validation score and the α / β statistics per epoch.
- :func:`plot_confusion`: a (row-normalised) confusion matrix.

Volumes are indexed (X, Y, Z) as in :mod:`medl2b.data.nifti`; an axial slice is
shown as ``array[:, :, z].T`` so that rows run along y and the slice appears upright.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from medl2b.errors import InputError, atomic_file

__all__ = [
    "plot_suspect_images",
    "plot_case_overlays",
    "plot_confusion",
    "plot_learning_curves",
    "plot_weight_maps",
]

_CLEAN, _NOISY, _PRED, _WRONG = "lime", "yellow", "red", "magenta"
_MAX_WEIGHT_ROWS = 6


# --- plumbing ---------------------------------------------------------------------------------------

def _new_figure(width: float, height: float):
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, bbox_inches="tight")
    return path


def _array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    return arr


def _check_n_slices(n_slices: Any) -> int:
    if isinstance(n_slices, bool) or not isinstance(n_slices, (int, np.integer)) or n_slices < 1:
        raise ValueError(f"n_slices must be a positive integer, got {n_slices!r}")
    return int(n_slices)


def _window(image: np.ndarray) -> tuple[float, float]:
    """Display window: the 1st-99th percentile of the finite intensities."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _contour(ax, mask2d: np.ndarray, color: str, *, lw: float = 1.2, ls: str = "-") -> None:
    if mask2d.any() and not mask2d.all():
        ax.contour(mask2d.astype(np.float32), levels=[0.5], colors=[color], linewidths=lw, linestyles=ls)


def _spread_slices(candidates: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` indices spread evenly over ``candidates`` (centres of n equal bins)."""
    if candidates.size <= n:
        return candidates.tolist()
    pos = ((np.arange(n) + 0.5) * candidates.size / n).astype(int)
    return candidates[np.unique(pos)].tolist()


def _overlay_slices(
    image: np.ndarray,
    layers: list[tuple[np.ndarray, str, str]],
    path: str | os.PathLike,
    *,
    select: list[np.ndarray],
    n_slices: int,
    title: str | None,
) -> Path:
    """Axial slices of ``image`` (X, Y, Z) with one contour per (mask, colour, label) layer."""
    fg = np.zeros(image.shape[2], dtype=np.bool_)
    for m in select:
        fg |= m.any(axis=(0, 1))
    candidates = np.flatnonzero(fg) if fg.any() else np.arange(image.shape[2])
    zs = _spread_slices(candidates, n_slices)
    vmin, vmax = _window(image)

    aspect = image.shape[1] / max(image.shape[0], 1)
    fig = _new_figure(3.0 * len(zs), 3.0 * aspect + 0.9)
    axes = fig.subplots(1, len(zs), squeeze=False)[0]
    for ax, z in zip(axes, zs):
        ax.imshow(image[:, :, z].T, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        for mask, color, _ in layers:
            _contour(ax, mask[:, :, z].T, color)
        ax.set_title(f"z = {z}", fontsize=9)
        ax.set_axis_off()
    handles = [Line2D([], [], color=c, lw=2, label=label) for _, c, label in layers]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(bottom=0.12)
    return _save(fig, path)


def _volume_inputs(image: Any, masks: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    img = _array(image, "image").astype(np.float32)
    if img.ndim != 3:
        raise ValueError(f"image must be a 3-D (X, Y, Z) volume, got shape {img.shape}")
    out = {}
    for name, m in masks.items():
        arr = _array(m, name)
        if arr.shape != img.shape:
            raise ValueError(f"{name} must have the image's shape {img.shape}, got {arr.shape}")
        out[name] = arr > 0.5 if arr.dtype != bool else arr
    return img, out


# --- volumes ----------------------------------------------------------------------------------------

def plot_case_overlays(
    image: Any,
    clean: Any,
    pred: Any,
    path: str | os.PathLike,
    *,
    noisy: Any | None = None,
    n_slices: int = 4,
    title: str | None = None,
) -> Path:
    """Axial slices of one case with contours: clean (green), noisy (yellow), prediction (red).

    Up to ``n_slices`` slices are spread over those where ``clean`` or ``pred`` has
    foreground (over all slices if neither has any).

    Args:
        image: intensities, shape (X, Y, Z).
        clean: ground-truth mask, shape (X, Y, Z).
        pred: predicted mask, shape (X, Y, Z).
        path: the PNG to write.
        noisy: optional noisy training mask, shape (X, Y, Z).
        n_slices: how many slices to show.
        title: figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    n_slices = _check_n_slices(n_slices)
    masks = {"clean": clean, "pred": pred}
    if noisy is not None:
        masks["noisy"] = noisy
    img, m = _volume_inputs(image, masks)
    layers = [(m["clean"], _CLEAN, "clean")]
    if noisy is not None:
        layers.append((m["noisy"], _NOISY, "noisy"))
    layers.append((m["pred"], _PRED, "prediction"))
    return _overlay_slices(img, layers, path, select=[m["clean"], m["pred"]], n_slices=n_slices, title=title)


# --- α / β weight maps ------------------------------------------------------------------------------

def _stack(x: Any, name: str, *, image: bool = False) -> np.ndarray:
    arr = _array(x, name)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if image and arr.ndim == 4 and arr.shape[1] == 3:
        return arr.astype(np.float32)
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W), got {arr.shape}")
    return arr.astype(np.float32)


def _show_image(ax, img: np.ndarray) -> None:
    if img.ndim == 3:  # (3, H, W) colour
        rgb = np.moveaxis(img, 0, -1)
        lo, hi = float(rgb.min()), float(rgb.max())
        ax.imshow((rgb - lo) / (hi - lo) if hi > lo else np.zeros_like(rgb), interpolation="nearest")
    else:
        vmin, vmax = _window(img)
        ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")


def plot_weight_maps(
    path: str | os.PathLike,
    *,
    images: Any,
    noisy: Any,
    clean: Any,
    pseudo: Any,
    alpha: Any,
    beta: Any,
    titles: Sequence[str] | None = None,
) -> Path:
    """Per-sample image, label noise, pseudo-label and the L2B weight maps α and β.

    One row per sample (the first 6). Columns: the image; the noisy (yellow) and
    clean (green) contours with the wrongly labelled pixels (noisy != clean) in
    magenta; the pseudo-label (red) with the clean contour; α; β. α and β of a row
    share one colour scale, [0, max(α, β)], with a colourbar; β's caption gives its
    mean over the wrong pixels and over the rest. Arrays are shown as given
    (rows = H).

    Args:
        path: the PNG to write.
        images: shape (N, H, W), or (N, 1, H, W) / (N, 3, H, W).
        noisy: noisy labels, shape (N, H, W), 0/1.
        clean: clean labels, shape (N, H, W), 0/1.
        pseudo: pseudo-labels, shape (N, H, W), 0/1.
        alpha: α maps, shape (N, H, W).
        beta: β maps, shape (N, H, W).
        titles: optional row titles (one per sample, at least as many as shown).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    imgs = _stack(images, "images", image=True)
    maps = {name: _stack(v, name) for name, v in
            (("noisy", noisy), ("clean", clean), ("pseudo", pseudo), ("alpha", alpha), ("beta", beta))}
    n, hw = imgs.shape[0], imgs.shape[-2:]
    for name, arr in maps.items():
        if arr.shape != (n, *hw):
            raise ValueError(f"{name} must have shape {(n, *hw)} like images, got {arr.shape}")
    if n == 0:
        raise ValueError("images is empty: there is no sample to plot")
    rows = min(n, _MAX_WEIGHT_ROWS)
    if titles is not None:
        titles = [str(t) for t in titles]
        if len(titles) < rows:
            raise ValueError(f"titles must name at least {rows} samples, got {len(titles)}")
    noisy_m, clean_m, pseudo_m = (maps[k] > 0.5 for k in ("noisy", "clean", "pseudo"))

    col_titles = ["image", "noisy (yellow) vs clean (green)", "pseudo-label (red)", "α", "β"]
    fig = _new_figure(15.0, 3.0 * rows + 0.4)
    axes = fig.subplots(rows, 5, squeeze=False)
    for i in range(rows):
        img = imgs[i]
        gray = img.mean(axis=0) if img.ndim == 3 else img
        ax = axes[i]
        _show_image(ax[0], img)
        if titles is not None:
            ax[0].set_ylabel(titles[i], fontsize=9)

        wrong = noisy_m[i] != clean_m[i]
        _show_image(ax[1], gray)
        overlay = np.zeros((*hw, 4), dtype=np.float32)
        overlay[wrong] = (1.0, 0.0, 1.0, 0.55)
        ax[1].imshow(overlay, interpolation="nearest")
        _contour(ax[1], clean_m[i], _CLEAN)
        _contour(ax[1], noisy_m[i], _NOISY, ls="--")
        ax[1].set_xlabel(f"wrong pixels: {100 * wrong.mean():.1f} %", fontsize=8)

        _show_image(ax[2], gray)
        fill = np.zeros((*hw, 4), dtype=np.float32)
        fill[pseudo_m[i]] = (1.0, 0.0, 0.0, 0.35)
        ax[2].imshow(fill, interpolation="nearest")
        _contour(ax[2], pseudo_m[i], _PRED)
        _contour(ax[2], clean_m[i], _CLEAN, lw=0.8)
        agree = (pseudo_m[i] == clean_m[i])[wrong]
        ax[2].set_xlabel(f"pseudo right on wrong px: {100 * agree.mean():.0f} %" if agree.size
                         else "no wrong pixels", fontsize=8)

        a, b = maps["alpha"][i], maps["beta"][i]
        finite = np.concatenate([a[np.isfinite(a)], b[np.isfinite(b)]])
        top = float(finite.max()) if finite.size else 0.0
        top = top if top > 0 else 1e-12  # an all-zero row (a skipped step) still draws
        ax[3].imshow(a, cmap="magma", vmin=0.0, vmax=top, interpolation="nearest")
        ax[3].set_xlabel(f"mean {np.nanmean(a):.3g}" if np.isfinite(a).any() else "no values", fontsize=8)
        im = ax[4].imshow(b, cmap="magma", vmin=0.0, vmax=top, interpolation="nearest")
        if wrong.any() and (~wrong).any():
            ax[4].set_xlabel(f"mean on wrong px {np.nanmean(b[wrong]):.3g}, rest {np.nanmean(b[~wrong]):.3g}",
                             fontsize=8)
        fig.colorbar(im, ax=[ax[3], ax[4]], fraction=0.046, pad=0.02)
        for j, axis in enumerate(ax):
            axis.set_xticks([])
            axis.set_yticks([])
            if i == 0:
                axis.set_title(col_titles[j], fontsize=10)
    return _save(fig, path)


# --- learning curves --------------------------------------------------------------------------------

def _read_numeric_csv(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError(path, "not found")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise InputError(path, "is empty (no header row)")
            fields = [h.strip() for h in reader.fieldnames if h is not None]
            cols: dict[str, list[float]] = {h: [] for h in fields}
            for line, row in enumerate(reader, start=2):
                for raw_key, h in zip(reader.fieldnames, fields):
                    cell = (row.get(raw_key) or "").strip()
                    if cell == "" or cell.lower() in ("nan", "none", "null"):
                        cols[h].append(math.nan)
                        continue
                    try:
                        cols[h].append(float(cell))
                    except ValueError:
                        cols[h].append(math.nan)  # a text column (e.g. a timestamp); not plotted
    except UnicodeDecodeError:
        raise InputError(path, "is not a UTF-8 text CSV") from None
    return {h: np.asarray(v, dtype=float) for h, v in cols.items()}


def _plot_series(ax, x: np.ndarray, y: np.ndarray, label: str, **kw) -> None:
    ax.plot(x, y, marker="o", markersize=3, label=label, **kw)


_WEIGHT_COLUMN = re.compile(r"^(mean_)?(alpha|beta)(_(sum|mean|on_wrong|on_right))?$")
_VAL_COLUMNS = ("val_score", "meta_precision")


def _weight_style(name: str) -> dict[str, Any]:
    color = "tab:blue" if "alpha" in name else "tab:orange"
    ls = "--" if name.endswith("on_wrong") else ":" if name.endswith("on_right") else "-"
    return {"color": color, "linestyle": ls}


def _weight_label(name: str) -> str:
    label = name.replace("mean_", "mean ").replace("alpha", "α").replace("beta", "β")
    return label.replace("_on_", " on ").replace("_sum", " (sum)").replace("_mean", " (mean)")


def plot_learning_curves(metrics_csv: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Plot a run's per-epoch ``metrics.csv``: losses, validation score, α / β.

    Columns used when present: ``epoch`` (else the row number); every ``*_loss``
    (e.g. ``train_loss``, ``meta_loss``); ``val_score`` and ``meta_precision``;
    the weight columns ``mean_alpha``, ``mean_beta``, ``alpha_sum``, ``beta_sum``,
    ``alpha_on_wrong``, ``beta_on_right``, ... (α blue, β orange; dashed on wrongly
    labelled pixels, dotted on right ones); ``skipped_steps`` as grey bars on a
    second axis of the weight panel. Empty cells are NaN; a panel with no finite
    value is left out; other columns are ignored.

    Args:
        metrics_csv: the run's ``metrics.csv`` (one row per epoch, with a header).
        path: the PNG to write.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: if ``metrics_csv`` is missing or has no header.
    """
    cols = _read_numeric_csv(Path(metrics_csv))
    n_rows = len(next(iter(cols.values()))) if cols else 0
    x = cols["epoch"] if "epoch" in cols and np.isfinite(cols["epoch"]).all() else np.arange(n_rows, dtype=float)

    def has(name: str) -> bool:
        return name in cols and bool(np.isfinite(cols[name]).any())

    losses = [h for h in cols if h.endswith("_loss") and has(h)]
    scores = [h for h in _VAL_COLUMNS if has(h)]
    weights = [h for h in cols if _WEIGHT_COLUMN.match(h) and has(h)]
    skipped = has("skipped_steps")
    panels = [p for p, on in (("loss", losses), ("val", scores), ("weights", weights or skipped)) if on]

    fig = _new_figure(5.0 * max(len(panels), 1), 3.6)
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    if not panels:
        axes[0].text(0.5, 0.5, "no values recorded yet", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for ax, panel in zip(axes, panels):
        extra_handles: list = []
        if panel == "loss":
            for h in losses:
                _plot_series(ax, x, cols[h], h)
            ax.set_ylabel("loss")
            ax.set_title("losses", fontsize=10)
        elif panel == "val":
            for h, color in zip(scores, ("tab:green", "tab:purple")):
                _plot_series(ax, x, cols[h], h, color=color)
            ax.set_ylabel("score")
            ax.set_title("validation", fontsize=10)
        else:
            for h in weights:
                _plot_series(ax, x, cols[h], _weight_label(h), **_weight_style(h))
            ax.set_ylabel("weight")
            ax.set_title("L2B weights", fontsize=10)
            if skipped:
                twin = ax.twinx()
                bars = twin.bar(x, np.nan_to_num(cols["skipped_steps"]), width=0.6, alpha=0.25, color="gray",
                                label="skipped steps")
                twin.set_ylabel("skipped steps")
                extra_handles.append(bars)
                ax.set_zorder(twin.get_zorder() + 1)
                ax.patch.set_visible(False)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        handles += extra_handles
        labels += [h.get_label() for h in extra_handles]
        if handles:
            ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# --- confusion matrix -------------------------------------------------------------------------------

def plot_confusion(
    cm: Any,
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    normalize: bool = True,
) -> Path:
    """Draw a confusion matrix (rows = truth, columns = prediction).

    Args:
        cm: counts, shape (C, C).
        class_names: the C class names.
        path: the PNG to write.
        normalize: show each row as fractions of its true class (rows with no
            sample stay 0); otherwise show counts.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    m = _array(cm, "cm").astype(float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"cm must be a square (C, C) matrix, got shape {m.shape}")
    if isinstance(class_names, str) or len(class_names) != m.shape[0]:
        raise ValueError(f"class_names must have {m.shape[0]} names, got {class_names!r}")
    names = [str(c) for c in class_names]
    c = m.shape[0]
    if normalize:
        rows = m.sum(axis=1, keepdims=True)
        shown = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
        vmax = 1.0
    else:
        shown, vmax = m, max(float(m.max()), 1.0)

    size = max(4.0, 0.55 * c + 2.5)
    fig = _new_figure(size + 1.0, size)
    ax = fig.subplots()
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""), fontsize=10)
    if c <= 15:
        for i in range(c):
            for j in range(c):
                text = f"{shown[i, j]:.2f}" if normalize else f"{int(m[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if shown[i, j] > 0.6 * vmax else "black")
    fig.tight_layout()
    return _save(fig, path)


def plot_suspect_images(path: str | os.PathLike, images: Any, titles: Sequence[str]) -> Path:
    """A row of images (``(N, H, W, 3)`` uint8 or ``(N, H, W)``) with one caption each: an audit's top suspects."""
    pics = _array(images, "images")
    if pics.ndim not in (3, 4) or len(pics) == 0 or len(titles) != len(pics):
        raise ValueError(f"images must be (N, H, W[, 3]) with N = len(titles) > 0, got {pics.shape} and {len(titles)}")
    n = len(pics)
    fig = _new_figure(2.4 * n, 2.9)
    for j, (img, title) in enumerate(zip(pics, titles)):
        ax = fig.add_subplot(1, n, j + 1)
        ax.imshow(img, cmap=None if img.ndim == 3 else "gray")
        ax.set_title(str(title), fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)
