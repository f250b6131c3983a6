"""A Task per data modality: everything that differs between them, behind one interface.

===========================  ========================  ===================  ========================
                             :class:`SliceTask`        :class:`VolumeTask`  :class:`ClassificationTask`
===========================  ========================  ===================  ========================
training sample              a 2-D slice (large: a     a 3-D volume/patch   an image
                             random patch)
prediction of a case         slice by slice (large:    sliding windows      one forward per image
                             2-D sliding windows)
validation score             mean fg 3-D Dice          mean fg 3-D Dice     accuracy
evaluation unit              case (per class)          case (per class)     image
case metrics                 Dice, HD95, ASD, clDice   the same             accuracy, AUROC
audit units                  cases and slices          cases                images
===========================  ========================  ===================  ========================

A task is built from a run's config (:func:`build_task`). ``training=True`` loads the
training, meta and validation sets (the trainer and the audit need them); without it the
task only predicts and evaluates. The trainer, :mod:`medl2b.evaluate.run` and
:mod:`medl2b.audit` ask the task and never branch on the modality.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import track
from torch.utils.data import Dataset, Subset

from medl2b.data.augment import BatchAugment, SquareAugment
from medl2b.data.datasets import (ImageSet, IsicDataset, SegSliceDataset, SliceSet, load_isic, load_manifest,
                                  load_slices, load_volumes, pad_batch, pad_collate, padded_shape, train_window,
                                  volume_shape)
from medl2b.data.grid import prediction_to_raw
from medl2b.data.msd import write_mask
from medl2b.data.nifti import geometry_from_affine, read_nifti
from medl2b.data.store import CaseStore
from medl2b.data.splits import hold_out
from medl2b.errors import InputError
from medl2b.evaluate import figures as fig
from medl2b.dice import mean_foreground_dice
from medl2b.evaluate.folder import (NATIVE_GRID, PREPARED_GRID, prepared_classes, raw_classes, read_label_map,
                                    score_case)
from medl2b.evaluate.metrics import classification_metrics, one_vs_rest_auroc
from medl2b.evaluate.ranking import cell, ranking_table_quality, score_rows
from medl2b.evaluate.report import _write_csv, write_cls_report, write_seg_report
from medl2b.inference import predict_dataset, predict_logits, predict_volume
from medl2b.meta import get_method, weighted_losses

__all__ = ["ClassificationTask", "SliceTask", "Task", "VolumeTask", "build_task", "split_items"]


class Task:
    """One data modality: loading, training sets, prediction, evaluation and audit units.

    After :meth:`setup_training`: ``train_set`` (labels = given labels; augmented on the device
    by :meth:`augment_batch`), ``train_plain`` (the same samples, plain), ``meta_set`` (trusted
    clean meta samples, or None).
    """

    score_name: str = "val_score"
    train_set: Dataset
    train_plain: Dataset
    meta_set: Dataset | None = None

    def __init__(self, cfg, manifest: dict) -> None:
        self.cfg = cfg
        self.data = Path(cfg.data)
        self.manifest = manifest
        self.batch_size = cfg.batch_size
        self.num_classes = 0
        self.in_channels = 1
        #: whether the training samples' clean labels are known (benchmark mode); False for a user's own labels,
        #: where the ``clean`` of a training sample is its given label and must never be read as truth
        self.train_truth = bool(manifest.get("train_truth", True))

    # ------------------------------------------------------------- training
    def setup_training(self, *, use_meta_cases: bool) -> None:
        raise NotImplementedError

    def input_transform(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def augment_batch(self, batch: dict) -> dict:
        """Augmentation applied to a whole batch on the device (default: none). Datasets serve items plain."""
        return batch

    def validate(self, model, device) -> float:
        raise NotImplementedError

    def sample_losses(self, model, device, batch_size: int) -> np.ndarray:
        """Per-sample losses on the given labels in eval mode, ``(N,)`` (per slice for segmentation)."""
        raise NotImplementedError

    def train_classes(self) -> np.ndarray | None:
        """Given class per training sample, for class-balanced training draws (None: the task has none)."""
        return None

    def meta_classes(self) -> np.ndarray | None:
        """Class per trusted meta sample, for class-balanced meta batches (None: the task has none)."""
        return None

    def meta_candidates(self) -> np.ndarray:
        """Indices of the training samples the online meta set may be chosen from (default: all)."""
        return np.arange(len(self.train_plain))

    def selection_quality(self, indices: np.ndarray, candidates: np.ndarray) -> dict[str, float]:
        """How clean an online meta set is, from the known clean labels (precision vs the candidates' rate);
        NaN where no clean label of a training sample exists (a user's own labels)."""
        if not self.train_truth:
            return {"meta_size": int(len(indices)), "meta_precision": float("nan"), "meta_base_rate": float("nan")}
        good = self._clean_mask()
        return {"meta_size": int(len(indices)),
                "meta_precision": float(good[indices].mean()) if len(indices) else float("nan"),
                "meta_base_rate": float(good[candidates].mean()) if len(candidates) else float("nan")}

    def _clean_mask(self) -> np.ndarray:
        """Per training sample: is its given label (nearly) right?"""
        raise NotImplementedError

    # ------------------------------------------------------ evaluate, audit
    def evaluate(self, model, split: str, out: Path, device, *, checkpoint: str, figures: bool, progress: bool,
                 extra: dict, run: Path) -> dict:
        """Predict ``split``, score it, write the report (and figures) into ``out``; return the summary."""
        raise NotImplementedError

    def audit(self, model, signal: np.ndarray, has_meta: bool, out: Path, device, *, top: int,
              figures: bool) -> dict:
        """Rank the training annotations (``signal``: the per-sample meta or loss signal); write the
        rankings into ``out``; return the summary's task part."""
        raise NotImplementedError


# ---------------------------------------------------------------- segmentation
class SliceTask(Task):
    """Segmentation on 2-D slices of any prepared dataset (any channels and classes); validation =
    mean over the meta cases of the mean foreground-class 3-D Dice.

    Slices no larger than the 2-D training window (config ``patch_size_2d``, default 256 × 256) train
    whole and are predicted whole. Larger slices (a 1008 px fundus image) train on random patches of
    the window, ``patch_fg`` of them centred on a foreground pixel of the given label (meta patches
    always on foreground under ``meta_foreground``), ``patches_per_slice`` per slice and epoch, and are
    validated and predicted by 2-D sliding windows of the window (:attr:`window`).
    """

    score_name = "val_dice"
    audit_units = ("cases", "slices")

    def __init__(self, cfg, manifest: dict) -> None:
        super().__init__(cfg, manifest)
        self.num_classes = len(manifest["labels"])
        self.in_channels = len(manifest.get("channel_names") or {"0": ""})
        self.window: tuple[int, ...] | None = self._slice_window()  # trained on patches: the patch size
        self._augment = BatchAugment() if cfg.augment else None  # 2-D or 3-D by the batch's shape
        # every set of the run reads its cases through one bounded cache (cfg.cache_mb)
        self.store = CaseStore(self.data, manifest, cfg.cache_mb)
        self.collate = pad_collate  # items differ in size: each batch is padded to its largest item

    #: windows per forward of the sliding-window prediction (None: the batch size)
    sw_batch_size: int | None = None

    def _slice_window(self) -> tuple[int, int] | None:
        """The 2-D training window ``(X, Y)``: the prepared slice size capped on each axis at ``patch_size_2d``;
        None when the slices fit in it (whole slices, no sliding windows)."""
        sizes = [e["prepared"]["size"][:2] for e in self.manifest["cases"].values()]
        if not sizes:
            return None
        extent = tuple(int(v) for v in np.max(np.asarray(sizes, dtype=np.int64), axis=0))
        window = tuple(min(v, int(p)) for v, p in zip(extent, self.cfg.patch_size_2d))
        return None if window == extent else window

    def _load(self, cases, *, label: str) -> SliceSet:
        return load_slices(self.data, cases, label=label, store=self.store)

    def _crops(self, train: SliceSet) -> tuple[dict, dict]:
        """Keyword arguments of the training and meta datasets' random crops (none: whole samples)."""
        if self.window is None or not len(train):
            return {}, {}
        fg = 1.0 if self.cfg.meta_foreground else self.cfg.patch_fg
        return {"crop": self.window, "crop_fg": self.cfg.patch_fg}, {"crop": self.window, "crop_fg": fg}

    def clean_cases(self) -> tuple[list[str], list[str]]:
        """The clean meta split as ``(meta cases, validation cases)``: the same list unless ``val_holdout``
        holds some cases out for validation only."""
        cases = list(self.manifest["splits"]["meta"])
        held = _held_out(self.cfg, cases, None)
        if not held.any():
            return cases, cases
        return [c for c, h in zip(cases, held) if not h], [c for c, h in zip(cases, held) if h]

    def setup_training(self, *, use_meta_cases: bool) -> None:
        cfg, splits = self.cfg, self.manifest["splits"]
        meta_cases, val_cases = self.clean_cases()
        self.meta_slices = self._load(meta_cases, label="clean") if meta_cases else None
        self.val_slices = (self.meta_slices if val_cases == meta_cases
                           else self._load(val_cases, label="clean"))
        train = _compose(cfg, lambda: self._load(splits["train"], label=cfg.label_source), self.meta_slices)
        self.train_slices = train
        train_crop, meta_crop = self._crops(train)
        # items are served plain; BatchAugment transforms whole batches on the device (augment_batch)
        meta = (SegSliceDataset(self.meta_slices, **meta_crop)
                if (use_meta_cases and self.meta_slices) else None)
        if meta is not None and cfg.meta_foreground:
            # A meta batch of background-only slices rewards predicting background everywhere; draw meta
            # batches from the clean slices that hold foreground (all slices if none does).
            has_fg = np.flatnonzero(_foreground(self.meta_slices, clean=True))
            if len(has_fg):
                meta = Subset(meta, has_fg.tolist())
        self.train_set = SegSliceDataset(train, **train_crop)
        if train_crop and cfg.patches_per_slice > 1:  # several random patches of every sample per epoch
            self.train_set = Subset(self.train_set, list(range(len(train))) * cfg.patches_per_slice)
        self.train_plain = SegSliceDataset(train)
        self.meta_set = meta

    def augment_batch(self, batch: dict) -> dict:
        if self._augment is None:
            return batch
        image, label, clean = self._augment(batch["image"], batch["label"], batch["clean"])
        return {**batch, "image": image, "label": label, "clean": clean}

    def validate(self, model, device) -> float:
        if self.val_slices is None:
            return float("nan")
        scores = [mean_foreground_dice(logits.argmax(1).numpy(), clean.numpy(), self.num_classes)
                  for _, _, logits, _, clean in self._per_case_logits(model, self.val_slices, device,
                                                                      self.batch_size)]
        return float(np.mean(scores))

    def sample_losses(self, model, device, batch_size: int) -> np.ndarray:
        out = np.zeros(len(self.train_slices), dtype=np.float64)
        for _, rows, logits, label, _ in self._per_case_logits(model, self.train_slices, device, batch_size):
            out[rows] = F.cross_entropy(logits, label, reduction="none").flatten(1).mean(1).numpy()
        return out

    def _per_case_logits(self, model, slices: SliceSet, device, batch_size: int):
        """For each case of ``slices``, one case in memory at a time: ``(case, its rows, logits (n, K, *extent),
        given label (n, *extent), clean label (n, *extent))``, cropped to the case's own extent."""
        for case in dict.fromkeys(slices.case):
            rows = slices.rows_of(case)
            image, label, clean = slices.batch(rows)
            ext = tuple(slice(0, e) for e in slices.extent(rows[0]))
            logits = self._logits(model, image, device, batch_size)[(slice(None), slice(None), *ext)]
            yield case, rows, logits, label[(slice(None), *ext)], clean[(slice(None), *ext)]

    def _logits(self, model, images: torch.Tensor, device, batch_size: int) -> torch.Tensor:
        """Logits of whole samples of any size (slices or volumes; padded for the network and cropped back;
        trained on patches: by sliding windows of :attr:`window`, one sample at a time)."""
        if self.window is None:
            extent = tuple(images.shape[2:])
            padded = pad_batch(images, padded_shape([extent]))
            logits = predict_logits(model, padded, batch_size=batch_size, device=device)
            return logits[(slice(None), slice(None), *(slice(0, e) for e in extent))]
        sw = self.sw_batch_size or batch_size
        return torch.cat([predict_volume(model, images[i:i + 1], self.window, device=device, sw_batch_size=sw)
                          for i in range(images.shape[0])])

    def meta_candidates(self) -> np.ndarray:
        """Slices whose given mask has foreground.

        Empty slices have almost no loss, so a mixture fitted on every slice puts them in
        the clean component, and a meta set of empty slices teaches only background.
        """
        has_fg = np.flatnonzero(_foreground(self.train_slices, clean=False))
        return has_fg if len(has_fg) >= 4 else np.arange(len(self.train_plain))

    def _clean_mask(self) -> np.ndarray:
        """A slice counts as clean when its given map has mean foreground Dice >= 0.9 with the clean one."""
        s = self.train_slices
        return np.array([mean_foreground_dice(*(t.numpy() for t in s.sample(i)[1:]), self.num_classes) >= 0.9
                         for i in range(len(s))])

    # ------------------------------------------------------------ prediction
    flip_dims = (2, 3)  # test-time flips of predict_image: the in-plane axes of a (Z, C, X, Y) slice batch

    def predict_image(self, model, image: torch.Tensor, device, *, tta: bool = False) -> torch.Tensor:
        """Logits ``(K, X, Y, Z)`` of a preprocessed image ``(C, X, Y, Z)`` on the prepared grid (a prepared
        case, or a new image through :func:`medl2b.data.msd.preprocess_image`), slice by slice (slices larger
        than the training window: each by 2-D sliding windows of it, overlap 0.5, Gaussian blending).

        ``tta``: the log of the softmax averaged over the identity and one flip per axis of :attr:`flip_dims`
        (flipped back), so that ``argmax`` and ``softmax`` apply as to plain logits.
        """
        batch = image.permute(3, 0, 1, 2).contiguous()  # (C, X, Y, Z) -> (Z, C, X, Y)
        run = lambda x: self._logits(model, x, device, self.batch_size)  # noqa: E731
        return _tta(run, batch, self.flip_dims if tta else ()).permute(1, 2, 3, 0)

    def predict_case(self, model, case: str, device) -> tuple[np.ndarray, np.ndarray]:
        """Prediction and clean label map of a prepared case, ``(X, Y, Z)`` uint8 on the prepared grid."""
        image, _, clean = self.store.read(case, -1, noisy=False)
        pred = self.predict_image(model, torch.from_numpy(image), device).argmax(0).numpy().astype(np.uint8)
        return pred, clean.astype(np.uint8)

    def evaluate(self, model, split, out, device, *, checkpoint, figures, progress, extra, run) -> dict:
        """Predict ``split``; write each prediction on its raw grid (``predictions/``) and score it there
        against the raw reference label with the raw spacing (``"metric_grid"``: native), as nnU-Net and the
        challenges do. A dataset prepared without ``labelsRaw/`` is scored on the prepared grid, and
        ``"metric_grid"`` says so."""
        manifest = self.manifest
        cases = split_items(manifest, split)
        native = all(manifest["cases"][c].get("raw_label") for c in cases)
        per_case, volumes = [], {}
        for case in (track(cases, description="predicting") if progress else cases):
            info = manifest["cases"][case]
            pred, clean = self.predict_case(model, case, device)
            raw_pred, affine = prediction_to_raw(pred, manifest, case)
            ending = ".png" if manifest.get("image_2d") else ".nii.gz"  # a 2-D image dataset: PNG, as its labels
            write_mask(raw_pred, affine, out / "predictions" / f"{case}{ending}")
            if native:
                ref, ref_affine = read_label_map(self.data / info["raw_label"])
                row = score_case(raw_pred, ref, geometry_from_affine(ref_affine, ref.shape).spacing,
                                 raw_classes(manifest), where=self.data / info["raw_label"], centreline=True)
            else:
                row = score_case(pred, clean, info["prepared"]["spacing"], prepared_classes(manifest),
                                 where=self.data / info["label"], centreline=True)
            per_case.append({"case": case, **row})
            volumes[case] = (info["image"], clean, pred, info.get("noisy_label"))
        grid = NATIVE_GRID if native else PREPARED_GRID
        summary = write_seg_report(out, per_case=per_case, split=split, checkpoint=checkpoint,
                                   empty_policy="worst", extra={**extra, "metric_grid": grid})
        if figures:
            self._figures(model, run, out, volumes, device)
        return summary

    def _figures(self, model, run: Path, out: Path, volumes: dict, device) -> None:
        for case, (image_path, clean, pred, noisy_path) in list(volumes.items())[:4]:
            image = read_nifti(self.data / image_path)[0]
            noisy = read_nifti(self.data / noisy_path)[0] if noisy_path else None
            fig.plot_case_overlays(image, clean, pred, out / "figures" / f"overlay_{case}.png", noisy=noisy,
                                   title=f"{case}: clean (green), prediction (red)")
        if (run / "metrics.csv").exists():
            fig.plot_learning_curves(run / "metrics.csv", out / "figures" / "learning_curves.png")
        if self.cfg.uses_meta:
            ex = self.weight_map_examples(model, device)
            if ex is not None:
                fig.plot_weight_maps(out / "figures" / "weight_maps.png", **ex)

    # -------------------------------------------------------------- weights
    def _weight_inputs(self, n: int, indices):
        """Training samples (the ``n`` most wrongly labelled, or ``indices``) and clean meta samples
        with foreground, for one meta step; None without meta cases."""
        splits = self.manifest["splits"]
        if not splits["meta"]:
            return None
        train = self._load(splits["train"], label="noisy")
        meta = self._load(self.clean_cases()[0], label="clean")
        if indices is None:  # read one sample at a time: the training set may be larger than memory
            # the most wrongly labelled samples; without truth (a user's own labels), the most given foreground
            wrong = np.array([int((s[1] != s[2]).sum() if self.train_truth else (s[1] > 0).sum())
                              for s in map(train.sample, range(len(train)))])
            rows = np.argsort(-wrong, kind="stable")[:n]
        else:
            rows = np.asarray(indices, dtype=np.int64)
        mrows = np.flatnonzero(_foreground(meta, clean=True))[: max(n, 4)]
        if len(mrows) == 0:
            mrows = np.arange(min(len(meta), 4))
        train, meta = (self._weight_view(_in_memory(s, r)) for s, r in ((train, rows), (meta, mrows)))
        return train, meta, torch.arange(len(rows)), torch.arange(len(mrows))

    def _weight_view(self, slices: SliceSet) -> SliceSet:
        """What one meta step of the weight maps sees: whole slices, or (trained on patches) their central
        crop of the training window, so that the step costs what a training step does."""
        if self.window is None:
            return slices
        (h, w), (wx, wy) = slices.image.shape[-2:], self.window
        x0, y0 = max(0, (h - wx) // 2), max(0, (w - wy) // 2)
        crop = (..., slice(x0, x0 + wx), slice(y0, y0 + wy))
        return SliceSet(slices.image[crop].contiguous(), slices.label[crop].contiguous(),
                        slices.clean[crop].contiguous(), list(slices.case), list(slices.slice_index))

    def _weights(self, model, device, train, meta, idx, midx):
        """α and β (scaled by the element count, so 0.5 = uniform) and the pseudo-label of one meta step."""
        cfg = self.cfg
        method = get_method(cfg.method, normalise=cfg.meta_normalise)
        net = copy.deepcopy(model).train()
        x, y = train.image[idx].to(device), train.label[idx].to(device)
        weights, _, _ = weighted_losses(net, method, x, y, meta.image[midx].to(device), meta.clean[midx].to(device),
                                        meta_loss=cfg.meta_loss, lr=cfg.lr, meta_smooth=cfg.meta_smooth,
                                        pseudo_floor=cfg.pseudo_floor)
        count = weights[0].numel()
        alpha = (weights[0] * count).cpu().numpy()
        beta = (weights[1] * count).cpu().numpy() if len(weights) > 1 else np.zeros_like(alpha)
        with torch.no_grad():
            pseudo = net.eval()(x).argmax(1).cpu().numpy()
        return alpha, beta, pseudo

    def weight_map_examples(self, model, device, *, n: int = 4, indices=None) -> dict | None:
        """α and β maps on training slices, for :func:`medl2b.evaluate.figures.plot_weight_maps`.

        Slices larger than the training window are shown as their central crop of it (:meth:`_weight_view`).
        Picks the training slices where the noisy mask disagrees most with the clean one (or
        the training slices ``indices``, e.g. an audit's suspects) and takes one meta step with
        the given model against a batch of clean meta slices: arrays ``(n, H, W)``.
        """
        inputs = self._weight_inputs(n, indices)
        if inputs is None:
            return None
        train, meta, idx, midx = inputs
        alpha, beta, pseudo = self._weights(model, device, train, meta, idx, midx)
        return {"images": _upright(train.image[idx, 0]), "noisy": _upright(train.label[idx]),
                "clean": _upright(train.clean[idx]), "pseudo": _upright(pseudo), "alpha": _upright(alpha),
                "beta": _upright(beta),
                "titles": [f"{train.case[i]} z={train.slice_index[i]}" for i in idx.tolist()]}

    # ---------------------------------------------------------------- audit
    def audit(self, model, signal, has_meta, out, device, *, top, figures) -> dict:
        slices = self.train_slices
        k = self.num_classes
        pred, given, clean = self._audit_maps(model, slices, device)
        pixels = np.array([int(np.prod(slices.extent(i))) for i in range(len(slices))])  # each sample's own
        cases = np.asarray(slices.case)
        groups = {"cases": [np.flatnonzero(cases == c) for c in dict.fromkeys(slices.case)],
                  "slices": [np.array([i]) for i in range(len(cases))]}
        tables, quality = {}, {}
        for level in self.audit_units:
            rows = []
            for g in groups[level]:
                region = int(((given[g] > 0) | (pred[g] > 0)).sum())
                # the preference summed over the unit's pixels, as a fraction of its structure
                value = (np.nansum(signal[g]) * pixels[g[0]] / max(region, 1) if has_meta
                         else float(np.nanmean(signal[g])))
                if has_meta and np.isnan(signal[g]).all():
                    value = float("nan")
                rows.append({"case": str(cases[g[0]]),
                             "slice": int(slices.slice_index[g[0]]) if level == "slices" else "",
                             "index": int(g[0]) if level == "slices" else "",
                             "meta_signal": float(value),
                             "disagreement": 1.0 - mean_foreground_dice(pred[g], given[g], k, absent="skip"),
                             "given_vs_clean_dice": mean_foreground_dice(given[g], clean[g], k, absent="skip"),
                             "corrupted": bool((given[g] != clean[g]).any())})
            score = score_rows(rows)
            tables[level] = rows
            if self.train_truth:  # a user's own labels: no truth to score the ranking against, it just ranks
                quality[level] = ranking_table_quality(rows, score)
        header = ["rank", "case", "slice", "score", "meta_signal", "disagreement"]
        truth = ["given_vs_clean_dice", "corrupted"] if self.train_truth else []
        for level, name in (("cases", "ranking.csv"), ("slices", "ranking_slices.csv")):
            if level not in tables:
                continue
            rows = sorted(tables[level], key=lambda r: -r["score"])
            _write_csv(out / name, (header if level == "slices" else [h for h in header if h != "slice"]) + truth,
                       [[i + 1, r["case"], *([r["slice"]] if level == "slices" else []), f"{r['score']:.6f}",
                         cell(r["meta_signal"]), f"{r['disagreement']:.6f}",
                         *([f"{r['given_vs_clean_dice']:.6f}", int(r["corrupted"])] if truth else [])]
                        for i, r in enumerate(rows)])
        suspects = [r["case"] for r in sorted(tables["cases"], key=lambda r: -r["score"])[:top]]
        if figures:
            self._audit_figure(model, tables, suspects, out, device)
        return {"task": "segmentation", "top": suspects, "quality": quality,
                "known_truth": self.train_truth and bool((given != clean).any())}

    def _audit_maps(self, model, slices: SliceSet, device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Prediction, given and clean label of every sample, uint8, zero-padded to one shape (the padding is
        background in all three, so it adds nothing to a Dice or a count); predicted one case at a time."""
        shape = padded_shape([slices.extent(i) for i in range(len(slices))]) if len(slices) else (0, 0)
        maps = np.zeros((3, len(slices), *shape), dtype=np.uint8)
        for _, rows, logits, label, clean in self._per_case_logits(model, slices, device, self.batch_size):
            region = (rows, *(slice(0, e) for e in label.shape[1:]))
            for m, values in zip(maps, (logits.argmax(1), label, clean)):
                m[region] = values.numpy()
        return maps[0], maps[1], maps[2]

    def _audit_figure(self, model, tables: dict, suspects: list[str], out: Path, device) -> None:
        """The most suspect slice of each top case: image, given vs clean, pseudo-label, α, β."""
        best = {}
        for r in tables["slices"]:
            if r["case"] in suspects and (r["case"] not in best or r["score"] > best[r["case"]]["score"]):
                best[r["case"]] = r
        idx = [best[c]["index"] for c in suspects if c in best]
        ex = self.weight_map_examples(model, torch.device(device), indices=idx) if idx else None
        if ex is not None:
            ex["titles"] = [f"#{i + 1} {best[c]['case']} z={best[c]['slice']}" for i, c in enumerate(suspects)
                            if c in best]
            fig.plot_weight_maps(out / "figures" / "suspects.png", **ex)


class VolumeTask(SliceTask):
    """Segmentation on whole 3-D volumes (zero-padded), or on random patches of the training window
    with foreground oversampling when the volumes are larger; prediction by sliding windows."""

    audit_units = ("cases",)  # a volume is one training sample: the case is the only unit
    sw_batch_size = 2

    def _slice_window(self) -> None:
        return None  # set by _crops when the volumes are larger than the 3-D window

    def _weight_view(self, slices: SliceSet) -> SliceSet:
        return slices

    def _load(self, cases, *, label: str) -> SliceSet:
        return load_volumes(self.data, cases, label=label, store=self.store)

    def _crops(self, train: SliceSet) -> tuple[dict, dict]:
        window = train_window(self.data, self.cfg.patch_size, manifest=self.manifest)
        if not len(train) or window == volume_shape(self.data, manifest=self.manifest):
            return {}, {}
        self.window = window
        return super()._crops(train)

    flip_dims = (2, 3, 4)  # the three spatial axes of a (1, C, X, Y, Z) volume

    def predict_image(self, model, image: torch.Tensor, device, *, tta: bool = False) -> torch.Tensor:
        """Logits ``(K, X, Y, Z)`` of a preprocessed image ``(C, X, Y, Z)`` by sliding windows of the training
        window (see :meth:`SliceTask.predict_image` for ``tta``)."""
        roi = train_window(self.data, self.cfg.patch_size, manifest=self.manifest)
        run = lambda x: predict_volume(model, x, roi, device=device)  # noqa: E731
        return _tta(run, image[None], self.flip_dims if tta else ())[0]

    def weight_map_examples(self, model, device, *, n: int = 4, indices=None) -> dict | None:
        """The training volume with the most wrong voxels (or ``indices[0]``), as its axial, coronal
        and sagittal slices through the clean structure's centre."""
        inputs = self._weight_inputs(1, indices)
        if inputs is None:
            return None
        train, meta, idx, midx = inputs
        alpha, beta, pseudo = self._weights(model, device, train, meta, idx, midx)
        clean_vol = train.clean[idx[0]].numpy()
        centre = ([int(round(c.mean())) for c in np.nonzero(clean_vol)] if clean_vol.any()
                  else [s // 2 for s in clean_vol.shape])
        side = max(clean_vol.shape)
        views = {k: _three_views(np.asarray(v)[0], centre, side) for k, v in (
            ("images", train.image[idx, 0]), ("noisy", train.label[idx]), ("clean", train.clean[idx]),
            ("pseudo", pseudo), ("alpha", alpha), ("beta", beta))}
        titles = [f"{train.case[int(idx[0])]} {name}" for name in
                  (f"axial z={centre[2]}", f"coronal y={centre[1]}", f"sagittal x={centre[0]}")]
        return {**{k: _upright(v) for k, v in views.items()}, "titles": titles}

    def _audit_figure(self, model, tables, suspects, out, device) -> None:
        return None  # the slice figure needs slices; 3-D runs rank cases only


def _tta(run, x: torch.Tensor, flip_dims) -> torch.Tensor:
    """``run(x)``, or with flips: the log of the softmax of ``run`` averaged over ``x`` and its flips along each
    of ``flip_dims`` (each flipped back); class axis 1."""
    if not flip_dims:
        return run(x)
    probs = run(x).softmax(1)
    for d in flip_dims:
        probs += run(x.flip(d)).softmax(1).flip(d)
    return (probs / (len(flip_dims) + 1)).log()


def _foreground(slices: SliceSet, *, clean: bool) -> np.ndarray:
    """Per sample (read one at a time): does its clean (``clean``) or given label hold foreground?"""
    return np.array([bool(slices.sample(i)[2 if clean else 1].any()) for i in range(len(slices))], dtype=bool)


def _in_memory(slices: SliceSet, rows) -> SliceSet:
    """The samples ``rows`` of a (lazy) set as a small in-memory set, padded to one shape."""
    rows = [int(r) for r in rows]
    return SliceSet(*slices.batch(rows), case=[slices.case[r] for r in rows],
                    slice_index=[slices.slice_index[r] for r in rows])


def _upright(a) -> np.ndarray:
    """Slices are (x, y); show them as the volume overlays do, rows = y."""
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 1))


def _three_views(volume: np.ndarray, centre, side: int) -> np.ndarray:
    """Axial (x, y), coronal (x, z) and sagittal (y, z) slices of ``volume`` (X, Y, Z) through ``centre``,
    zero-padded to ``side × side``: ``(3, side, side)``."""
    cx, cy, cz = centre
    out = np.zeros((3, side, side), dtype=volume.dtype)
    for i, view in enumerate((volume[:, :, cz], volume[:, cy, :], volume[cx, :, :])):
        out[i, :view.shape[0], :view.shape[1]] = view
    return out


# -------------------------------------------------------------- classification
class ClassificationTask(Task):
    """ISIC 2019-style: per-image labels; validation = accuracy or balanced accuracy (config
    ``val_metric``) on the clean meta split."""

    def __init__(self, cfg, manifest: dict) -> None:
        super().__init__(cfg, manifest)
        self.score_name = "val_bacc" if cfg.val_metric == "balanced_accuracy" else "val_acc"
        self.num_classes = len(manifest["classes"])
        self.in_channels = 3
        self.size = cfg.image_size or int(manifest["size"])
        self._augment = SquareAugment() if cfg.augment else None

    def setup_training(self, *, use_meta_cases: bool) -> None:
        cfg = self.cfg
        clean = load_isic(self.data, "meta")
        entries = self.manifest["images"]
        # a lesion's images stay on one side (its id, else the image's own name)
        lesions = [entries[i].get("lesion_id") or entries[i]["image"] for i in clean.index]
        held = _held_out(cfg, lesions, clean.clean)
        self.meta_images = clean.subset(~held)
        self.val_images = clean.subset(held) if held.any() else self.meta_images
        train = _compose(cfg, lambda: load_isic(self.data, "train", label=cfg.label_source), self.meta_images)
        self.train_images = train
        self.meta_set = IsicDataset(self.meta_images) if use_meta_cases else None
        self.train_set = self.train_plain = IsicDataset(train)  # served plain; augment_batch augments on the device

    def input_transform(self, x: torch.Tensor) -> torch.Tensor:
        """The run's image size (the prepared images may be larger)."""
        if x.shape[-1] == self.size and x.shape[-2] == self.size:
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)

    def augment_batch(self, batch: dict) -> dict:
        if self._augment is None:
            return batch
        return {**batch, "image": self._augment(batch["image"])}

    def _predict(self, model, dataset, device):
        return predict_dataset(model, dataset, batch_size=self.batch_size, device=device,
                               transform=self.input_transform)

    def predict_images(self, model, pixels: np.ndarray, device) -> torch.Tensor:
        """Logits ``(N, K)`` of RGB images ``(N, S, S, 3)`` uint8 at the prepared size (new images through
        :func:`medl2b.data.isic2019.load_square_image`), normalised as the prepared ones are."""
        n = len(pixels)
        images = ImageSet(images=pixels, index=np.arange(n), label=np.zeros(n, dtype=np.int64),
                          clean=np.zeros(n, dtype=np.int64), classes=list(self.manifest["classes"]))
        return self._predict(model, IsicDataset(images), device)[0]

    def validate(self, model, device) -> float:
        if len(self.val_images) == 0:  # no trusted images: nothing clean to validate on
            return float("nan")
        logits, _, clean = self._predict(model, IsicDataset(self.val_images), device)
        metrics = classification_metrics(clean.numpy(), logits.argmax(1).numpy(), n_classes=self.num_classes)
        return float(metrics[self.cfg.val_metric])

    def meta_classes(self) -> np.ndarray | None:
        return None if self.meta_set is None else np.asarray(self.meta_images.clean)

    def train_classes(self) -> np.ndarray | None:
        return np.asarray(self.train_images.label)

    def sample_losses(self, model, device, batch_size: int) -> np.ndarray:
        logits, given, _ = predict_dataset(model, self.train_plain, batch_size=batch_size, device=device,
                                           transform=self.input_transform)
        return F.cross_entropy(logits, given, reduction="none").numpy()

    def _clean_mask(self) -> np.ndarray:
        return np.asarray(self.train_images.label) == np.asarray(self.train_images.clean)

    def evaluate(self, model, split, out, device, *, checkpoint, figures, progress, extra, run) -> dict:
        split_items(self.manifest, split)
        logits, _, clean = self._predict(model, IsicDataset(load_isic(self.data, split)), device)
        pred, y = logits.argmax(1).numpy(), clean.numpy()
        classes = self.manifest["classes"]
        metrics = classification_metrics(y, pred, n_classes=len(classes), class_names=classes)
        auroc = one_vs_rest_auroc(torch.softmax(logits, 1).numpy(), y, n_classes=len(classes))
        summary = write_cls_report(out, metrics=metrics, split=split, checkpoint=checkpoint,
                                   class_names=classes, extra={**extra, **auroc})
        if figures:
            fig.plot_confusion(np.asarray(metrics["confusion"]), classes, out / "confusion_matrix.png")
            if (run / "metrics.csv").exists():
                fig.plot_learning_curves(run / "metrics.csv", out / "figures" / "learning_curves.png")
        return summary

    def audit(self, model, signal, has_meta, out, device, *, top, figures) -> dict:
        images = self.train_images
        logits, given, clean = self._predict(model, self.train_plain, device)
        prob = F.softmax(logits.float(), 1)
        p_given = prob.gather(1, given[:, None])[:, 0].numpy()
        names = [e["image"] for e in self.manifest["images"]]
        classes = images.classes
        rows = [{"image": names[int(images.index[i])], "given": classes[int(given[i])],
                 "predicted": classes[int(prob[i].argmax())], "meta_signal": float(signal[i]),
                 "disagreement": float(1.0 - p_given[i]), "corrupted": bool(given[i] != clean[i]),
                 "clean": classes[int(clean[i])], "i": i} for i in range(len(images))]
        score = score_rows(rows)
        truth = np.array([r["corrupted"] for r in rows]) if self.train_truth else np.zeros(len(rows), dtype=bool)
        known = ["clean", "corrupted"] if self.train_truth else []  # a user's own labels: no truth, it just ranks
        ordered = sorted(rows, key=lambda r: -r["score"])
        _write_csv(out / "ranking.csv", ["rank", "image", "score", "meta_signal", "disagreement", "given",
                                         "predicted", *known],
                   [[i + 1, r["image"], f"{r['score']:.6f}", cell(r["meta_signal"]), f"{r['disagreement']:.6f}",
                     r["given"], r["predicted"], *([r["clean"], int(r["corrupted"])] if known else [])]
                    for i, r in enumerate(ordered)])
        if figures:
            shown = ordered[:top]
            pics = np.stack([np.asarray(images.images[int(images.index[r["i"]])]) for r in shown])
            fig.plot_suspect_images(out / "figures" / "suspects.png", pics,
                                    [f"#{j + 1} {r['image']}\ngiven {r['given']}, model {r['predicted']}"
                                     for j, r in enumerate(shown)])
        return {"task": "classification", "top": [r["image"] for r in ordered[:top]],
                "quality": {"images": ranking_table_quality(rows, score)} if self.train_truth else {},
                "known_truth": bool(truth.any())}


# ---------------------------------------------------------------- helpers
def split_items(manifest: dict, split: str) -> list:
    """The cases (or image indices) of a split; an :class:`InputError` for an unknown or empty one."""
    if split not in manifest["splits"]:
        raise InputError("--split", f"unknown split {split!r}; the dataset has {', '.join(manifest['splits'])}")
    items = manifest["splits"][split]
    if not items:
        raise InputError("--split", f"split {split!r} is empty in this dataset")
    if split == "train" and manifest.get("train_truth") is False:
        raise InputError("--split", "the train cases have only their given labels (your own labels): there is no "
                                    "clean reference to score them against; evaluate on test (or meta, the trusted "
                                    "cases), and rank the given labels with medl2b audit")
    return items


def _held_out(cfg, groups, strata) -> np.ndarray:
    """The ``val_holdout`` mask over the clean meta samples (``groups``: case or lesion per sample); an
    :class:`InputError` when the split is too small to hold any out."""
    held = hold_out(groups, cfg.val_holdout, strata=strata)
    if cfg.val_holdout > 0 and not held.any():
        raise InputError(cfg.data, f"val_holdout {cfg.val_holdout} needs at least 2 clean meta cases (lesions) in "
                                   f"a class; the meta split has {len(groups)} sample(s)")
    return held


def _compose(cfg, load_train, clean_meta):
    """The training samples of a method: the (noisy) train split, plus or instead of the clean meta cases.
    A meta method that also trains on the clean cases (``l2b+clean``) marks them trusted: the meta step
    leaves their given labels at full weight."""
    method = get_method(cfg.method)
    if method.train_on == "train":
        return load_train()
    if clean_meta is None or len(clean_meta) == 0:
        raise InputError(cfg.data, f"method {cfg.method} trains on the clean meta cases, but the dataset has none")
    if method.train_on == "meta":
        return clean_meta
    return load_train().concat(clean_meta.as_trusted() if method.uses_meta else clean_meta)


def build_task(cfg, *, training: bool = True, manifest: dict | None = None) -> Task:
    """The task object of a config. ``training``: also load the training sets (the trusted meta
    cases are used unless ``meta_set == 'gmm'`` or the method takes no meta step). ``manifest``: the
    prepared dataset's manifest, or a run's own copy of it (:mod:`medl2b.data.record`), instead of
    reading ``cfg.data`` (prediction needs nothing else)."""
    if cfg.is_segmentation:
        manifest = manifest or load_manifest(cfg.data, task=cfg.task)
        task: Task = (VolumeTask if cfg.spatial_dims == 3 else SliceTask)(cfg, manifest)
    else:
        task = ClassificationTask(cfg, manifest or load_manifest(cfg.data, task="classification"))
    if training:
        if cfg.label_source == "clean" and not task.train_truth:
            raise InputError("--label-source", "clean (the oracle) needs the training cases' clean labels; this "
                                               "dataset has only their given labels (your own labels)")
        use_meta = cfg.uses_meta and cfg.meta_set == "clean"
        if use_meta and not task.manifest["splits"]["meta"]:
            raise InputError(task.data / "dataset.json", f"has no trusted (clean meta) cases, which method "
                                                         f"{cfg.method} learns its weights on: prepare it with trusted "
                                                         "labels, or train with --meta-set gmm or --method ce")
        task.setup_training(use_meta_cases=use_meta)
    return task
