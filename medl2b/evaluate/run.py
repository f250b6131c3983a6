"""``medl2b eval``: load a run's checkpoint, predict a split, write metrics, predictions and figures.

Evaluation reads the run folder (``config.yaml`` and a checkpoint), never the
trainer. Output goes to ``RUN/eval/`` (or ``--out``)::

    summary.json, metrics.csv, report.md          (see medl2b.evaluate.report)
    predictions/CaseNN.nii.gz                     segmentation, on the raw case's original grid
    figures/overlay_CaseNN.png                    image + clean / noisy / predicted contours
    figures/weight_maps.png                       L2B-family runs: learned α and β maps
    figures/learning_curves.png                   from the run's metrics.csv
    confusion_matrix.png                          classification

Segmentation metrics are computed per case in 3-D on the prepared grid, with
the prepared voxel spacing (mm) from the dataset manifest.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medl2b.device import resolve_device
from medl2b.errors import InputError
from medl2b.meta import get_method, weighted_losses

__all__ = ["load_run", "evaluate_run", "weight_map_examples"]

log = logging.getLogger("medl2b")


def load_run(run: str | Path, *, checkpoint: str = "best", device: str = "cpu"):
    """Return ``(model, cfg)`` of a run folder's ``checkpoint_{best|latest}.pt`` in eval mode."""
    from medl2b.config import load_config_file
    from medl2b.models import build_model

    run = Path(run)
    if checkpoint not in ("best", "latest"):
        raise InputError("--checkpoint", f"must be best or latest, got {checkpoint!r}")
    cfg_path, ckpt_path = run / "config.yaml", run / f"checkpoint_{checkpoint}.pt"
    if not cfg_path.exists():
        raise InputError(run, "not a run folder (no config.yaml)")
    if not ckpt_path.exists():
        raise InputError(ckpt_path, "checkpoint not found; train the run first")
    cfg = load_config_file(cfg_path)
    try:
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
    except Exception as exc:
        raise InputError(ckpt_path, f"cannot read checkpoint ({type(exc).__name__})") from None
    cfg.pretrained = None  # the weights come from the checkpoint
    model = build_model(cfg, num_classes=int(state["num_classes"]), in_channels=int(state.get("in_channels", 1)))
    model = model.to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg


def evaluate_run(run: str | Path, *, data: str | Path | None = None, split: str = "test", checkpoint: str = "best",
                 out: str | Path | None = None, device: str = "auto", figures: bool = True,
                 progress: bool = False) -> dict:
    """Evaluate one run folder on a split of its prepared dataset; return the summary dict."""
    run = Path(run)
    dev = resolve_device(device)
    model, cfg = load_run(run, checkpoint=checkpoint, device=str(dev))
    data = Path(data or cfg.data or "")
    if not (data / "dataset.json").exists():
        raise InputError(data, "no prepared dataset here (dataset.json missing); pass --data")
    out = Path(out) if out else run / "eval"
    if cfg.is_segmentation:
        return _evaluate_seg(model, cfg, run, data, split, checkpoint, out, dev, figures, progress)
    return _evaluate_cls(model, cfg, run, data, split, checkpoint, out, dev, figures)


def _split_cases(manifest: dict, split: str) -> list:
    if split not in manifest["splits"]:
        raise InputError("--split", f"unknown split {split!r}; the dataset has {', '.join(manifest['splits'])}")
    items = manifest["splits"][split]
    if not items:
        raise InputError("--split", f"split {split!r} is empty in this dataset")
    return items


def _evaluate_seg(model, cfg, run, data, split, checkpoint, out, dev, figures, progress) -> dict:
    from medl2b.data.datasets import load_manifest, load_slices, train_window
    from medl2b.data.grid import prediction_to_raw
    from medl2b.data.nifti import read_nifti, write_nifti
    from medl2b.evaluate.metrics import compute_case_metrics, compute_multiclass_case_metrics
    from medl2b.evaluate.report import write_seg_report
    from medl2b.inference import predict_logits, predict_volume

    manifest = load_manifest(data, task="segmentation")
    cases = _split_cases(manifest, split)
    names = sorted(manifest["labels"], key=lambda n: manifest["labels"][n])
    classes = {manifest["labels"][n]: n for n in names[1:]}  # foreground index -> name
    per_case, volumes = [], {}
    roi = train_window(data, cfg.patch_size) if cfg.spatial_dims == 3 else None  # 3-D: the training window
    for case in _iterate(cases, progress, "predicting"):
        info = manifest["cases"][case]
        slices = load_slices(data, [case], label="clean")
        image, _ = read_nifti(data / info["image"])
        if cfg.spatial_dims == 3:  # sliding windows over the whole volume
            volume = slices.image.permute(1, 2, 3, 0)[None]  # (Z, C, X, Y) -> (1, C, X, Y, Z)
            pred = predict_volume(model, volume, roi, device=dev).argmax(1)[0].numpy().astype(np.uint8)
            clean = slices.clean.permute(1, 2, 0).numpy().astype(np.uint8)
        else:
            pred2d = predict_logits(model, slices.image, batch_size=cfg.batch_size, device=dev).argmax(1).numpy()
            pred = np.zeros(image.shape, dtype=np.uint8)
            clean = np.zeros(image.shape, dtype=np.uint8)
            for i, z in enumerate(slices.slice_index):
                pred[:, :, z] = pred2d[i]
                clean[:, :, z] = slices.clean[i].numpy()
        spacing = info["prepared"]["spacing"]
        if len(classes) == 1:  # binary: the plain view
            row = {"case": case, **compute_case_metrics(pred > 0, clean > 0, spacing)}
        else:  # per class, and their mean over the foreground classes
            row = {"case": case, **compute_multiclass_case_metrics(pred, clean, spacing, classes=classes)}
        per_case.append(row)
        raw_pred, affine = prediction_to_raw(pred, manifest, case)
        write_nifti(raw_pred, out / "predictions" / f"{case}.nii.gz", affine=affine)
        volumes[case] = (image, clean, pred, info.get("noisy_label"))
    summary = write_seg_report(out, per_case=per_case, split=split, checkpoint=checkpoint, empty_policy="worst",
                               extra={"run": str(run), "method": cfg.method, "data": str(data),
                                      "metric_grid": "prepared grid, prepared spacing (mm)"})
    if figures:
        _seg_figures(model, cfg, run, data, out, volumes, dev)
    return summary


def _iterate(items, progress: bool, label: str):
    if not progress:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=label)


def _seg_figures(model, cfg, run, data, out, volumes, dev) -> None:
    from medl2b.data.nifti import read_nifti
    from medl2b.evaluate import figures as fig

    for case, (image, clean, pred, noisy_path) in list(volumes.items())[:4]:
        noisy = read_nifti(data / noisy_path)[0] if noisy_path else None
        fig.plot_case_overlays(image, clean, pred, out / "figures" / f"overlay_{case}.png", noisy=noisy,
                               title=f"{case}: clean (green), prediction (red)")
    if (run / "metrics.csv").exists():
        fig.plot_learning_curves(run / "metrics.csv", out / "figures" / "learning_curves.png")
    if cfg.uses_meta:  # 3-D: three orthogonal mid-slices of one volume
        ex = weight_map_examples(model, cfg, data, dev)
        if ex is not None:
            fig.plot_weight_maps(out / "figures" / "weight_maps.png", **ex)


def weight_map_examples(model, cfg, data, dev, *, n: int = 4, indices=None) -> dict | None:
    """α and β maps (scaled by the element count, so 0.5 = uniform) on training slices.

    Picks the training slices where the noisy mask disagrees most with the clean
    one (or the training slices ``indices``, e.g. an audit's suspects), takes one meta
    step with the given model against a batch of clean meta slices, and returns arrays
    ``(n, H, W)`` for :func:`plot_weight_maps`. 3-D runs: the training volume with the most
    wrong voxels, as its axial, coronal and sagittal slices through the clean structure's centre.
    """
    from medl2b.data.datasets import load_manifest, load_slices

    manifest = load_manifest(data, task="segmentation")
    if not manifest["splits"]["meta"]:
        return None
    three_d = cfg.spatial_dims == 3
    if three_d:  # one training volume, drawn as three orthogonal mid-slices through its structure
        from medl2b.data.datasets import load_volumes

        load, n = load_volumes, 1
    else:
        load = load_slices
    train = load(data, manifest["splits"]["train"], label="noisy")
    meta = load(data, manifest["splits"]["meta"], label="clean")
    if indices is None:
        wrong = (train.label != train.clean).flatten(1).sum(1)
        idx = torch.argsort(wrong, descending=True)[:n]
    else:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    fg = meta.clean.flatten(1).sum(1) > 0
    midx = torch.nonzero(fg).flatten()[: max(n, 4)]
    if len(midx) == 0:
        midx = torch.arange(min(len(meta.clean), 4))
    method = get_method(cfg.method, normalise=cfg.meta_normalise)
    net = copy.deepcopy(model).train()
    x, y = train.image[idx].to(dev), train.label[idx].to(dev)
    weights, _, _ = weighted_losses(net, method, x, y, meta.image[midx].to(dev), meta.clean[midx].to(dev),
                                    meta_loss=cfg.meta_loss,
                                    lr=cfg.lr)
    count = weights[0].numel()
    alpha = (weights[0] * count).cpu().numpy()
    beta = (weights[1] * count).cpu().numpy() if len(weights) > 1 else np.zeros_like(alpha)
    with torch.no_grad():
        pseudo = net.eval()(x).argmax(1).cpu().numpy()
    def upright(a):  # slices are (x, y); show them as the volume overlays do, rows = y
        return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 1))

    if three_d:
        clean_vol = train.clean[idx[0]].numpy()
        centre = [int(round(c.mean())) for c in np.nonzero(clean_vol)] if clean_vol.any() else \
            [s // 2 for s in clean_vol.shape]
        side = max(clean_vol.shape)
        views = {k: _three_views(np.asarray(v)[0], centre, side) for k, v in (
            ("images", train.image[idx, 0]), ("noisy", train.label[idx]), ("clean", train.clean[idx]),
            ("pseudo", pseudo), ("alpha", alpha), ("beta", beta))}
        titles = [f"{train.case[int(idx[0])]} {name}" for name in
                  (f"axial z={centre[2]}", f"coronal y={centre[1]}", f"sagittal x={centre[0]}")]
        return {**{k: upright(v) for k, v in views.items()}, "titles": titles}
    return {"images": upright(train.image[idx, 0]), "noisy": upright(train.label[idx]),
            "clean": upright(train.clean[idx]), "pseudo": upright(pseudo), "alpha": upright(alpha),
            "beta": upright(beta),
            "titles": [f"{train.case[i]} z={train.slice_index[i]}" for i in idx.tolist()]}


def _three_views(volume: np.ndarray, centre, side: int) -> np.ndarray:
    """Axial (x, y), coronal (x, z) and sagittal (y, z) slices of ``volume`` (X, Y, Z) through ``centre``,
    zero-padded to ``side × side``: ``(3, side, side)``."""
    cx, cy, cz = centre
    out = np.zeros((3, side, side), dtype=volume.dtype)
    for i, view in enumerate((volume[:, :, cz], volume[:, cy, :], volume[cx, :, :])):
        out[i, :view.shape[0], :view.shape[1]] = view
    return out


def _evaluate_cls(model, cfg, run, data, split, checkpoint, out, dev, figures) -> dict:
    from medl2b.data.datasets import IsicDataset, load_isic, load_manifest
    from medl2b.evaluate.metrics import classification_metrics, one_vs_rest_auroc
    from medl2b.evaluate.report import write_cls_report
    from medl2b.inference import predict_dataset

    manifest = load_manifest(data, task="skin-lesion-cls")
    _split_cases(manifest, split)
    ds = IsicDataset(load_isic(data, split), augment=False)
    size = cfg.image_size or int(manifest["size"])

    def resize(b):
        if b.shape[-1] == size:
            return b
        return F.interpolate(b, size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    logits, _, clean = predict_dataset(model, ds, batch_size=cfg.batch_size, device=dev, transform=resize)
    pred, y = logits.argmax(1).numpy(), clean.numpy()
    classes = manifest["classes"]
    metrics = classification_metrics(y, pred, n_classes=len(classes), class_names=classes)
    auroc = one_vs_rest_auroc(torch.softmax(logits, 1).numpy(), y, n_classes=len(classes))
    summary = write_cls_report(out, metrics=metrics, split=split, checkpoint=checkpoint, class_names=classes,
                               extra={"run": str(run), "method": cfg.method, "data": str(data), **auroc})
    if figures:
        from medl2b.evaluate import figures as fig

        fig.plot_confusion(np.asarray(metrics["confusion"]), classes, out / "confusion_matrix.png")
        if (run / "metrics.csv").exists():
            fig.plot_learning_curves(run / "metrics.csv", out / "figures" / "learning_curves.png")
    return summary
