"""Segmentation of any prepared dataset (any channels and classes), on 2-D slices or 3-D volumes
(:mod:`medl2b.tasks.geometry`); validation = mean over the validation cases of the mean foreground-class
3-D Dice on the prepared grid.

Samples no larger than the training window (config ``patch_size_2d`` for slices, ``patch_size`` for
volumes) train whole and are predicted whole. Larger ones (a 1008 px fundus image) train on random patches
of the window, ``patch_fg`` of them centred on a foreground pixel of the given label (meta patches always on
foreground under ``meta_foreground``), ``patches_per_slice`` per sample and epoch, and are validated and
predicted by sliding windows of the window (:attr:`SegmentationTask.window`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from medl2b.data.augment import BatchAugment
from medl2b.data.datasets import (SegSliceDataset, SliceSet, pad_collate, padded_shape, train_window,
                                  volume_shape)
from medl2b.data.store import CaseStore
from medl2b.dice import mean_foreground_dice
from medl2b.evaluate import figures as fig
from medl2b.inference import WholeInferer, WindowInferer, flip_averaged_probs
from medl2b.tasks.base import AuditTable, Task, compose, held_out, trusted_count
from medl2b.tasks.geometry import GEOMETRIES
from medl2b.tasks.seg_report import evaluate_cases
from medl2b.tasks.weightmaps import foreground

__all__ = ["SegmentationTask"]


class SegmentationTask(Task):
    """Segmentation of a prepared dataset; its :attr:`geometry` (slices or volumes) follows ``spatial_dims``.

    Attributes:
        window: The training window ``(X, Y[, Z])``; None when the samples fit it (trained and validated whole).
        inferer: Logits of whole samples ``(N, C, *extent)`` (validation, losses, the audit).
        case_inferer: Logits of a case's prediction batch (:meth:`predict`).
    """

    kind = "segmentation"
    score_name = "val_dice"
    collate = staticmethod(pad_collate)  # items differ in size: each batch is padded to its largest item

    def __init__(self, cfg, manifest: dict) -> None:
        super().__init__(cfg, manifest)
        labels = manifest["labels"]
        self.num_classes = len(labels)
        self.classes = sorted(labels, key=labels.get)
        values = manifest.get("label_values") or {}
        self.label_values = [int(values.get(str(labels[n]), labels[n])) for n in self.classes]
        names = manifest.get("channel_names") or {"0": "image"}
        self.channels = [str(names[k]) for k in sorted(names, key=int)]
        self.in_channels = len(self.channels)
        self.image_2d = bool(manifest.get("image_2d"))
        self.geometry = GEOMETRIES[cfg.spatial_dims]
        self.spatial_dims = self.geometry.spatial_dims
        self.window, predict_window = self._windows()
        sw = self.geometry.sw_batch_size or self.batch_size
        self.inferer = WindowInferer(self.window, sw) if self.window else WholeInferer(self.batch_size)
        self.case_inferer = WindowInferer(predict_window, sw) if predict_window else self.inferer
        self._augment = BatchAugment() if cfg.augment else None  # 2-D or 3-D by the batch's shape
        # every set of the run reads its cases through one bounded cache (cfg.cache_mb)
        self.store = CaseStore(self.data, manifest, cfg.cache_mb)

    def _windows(self) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
        """The training window (None: the samples fit it) and the window a case is predicted by (None: whole)."""
        if self.geometry.spatial_dims == 3:
            window = train_window(self.data, self.cfg.patch_size, manifest=self.manifest)
            fits = window == volume_shape(self.data, manifest=self.manifest)
            return (None if fits else window), window
        sizes = [e["prepared"]["size"][:2] for e in self.manifest["cases"].values()]
        if not sizes:
            return None, None
        extent = tuple(int(v) for v in np.max(np.asarray(sizes, dtype=np.int64), axis=0))
        window = tuple(min(v, int(p)) for v, p in zip(extent, self.cfg.patch_size_2d))
        return (None, None) if window == extent else (window, window)

    # ------------------------------------------------------------- training
    def load(self, cases, *, label: str) -> SliceSet:
        """The samples (slices or volumes) of ``cases`` with their ``label`` (noisy or clean), lazily."""
        return self.geometry.load(self.data, cases, label=label, store=self.store)

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
        held = held_out(self.cfg, cases, None)
        if not held.any():
            return cases, cases
        return [c for c, h in zip(cases, held) if not h], [c for c, h in zip(cases, held) if h]

    def setup_training(self, *, use_meta_cases: bool, trusted: bool = True) -> None:
        cfg, splits = self.cfg, self.manifest["splits"]
        meta_cases, val_cases = self.clean_cases()
        self.meta_slices = self.load(meta_cases, label="clean") if meta_cases else None
        self.val_slices = (self.meta_slices if val_cases == meta_cases
                           else self.load(val_cases, label="clean"))
        train = compose(cfg, lambda: self.load(splits["train"], label=cfg.label_source), self.meta_slices,
                        trusted=trusted)
        self.train_slices = train
        train_crop, meta_crop = self._crops(train)
        # items are served plain; BatchAugment transforms whole batches on the device (augment_batch)
        meta = (SegSliceDataset(self.meta_slices, **meta_crop)
                if (use_meta_cases and self.meta_slices) else None)
        if meta is not None and cfg.meta_foreground:
            # A meta batch of background-only slices rewards predicting background everywhere; draw meta
            # batches from the clean slices that hold foreground (all slices if none does).
            has_fg = np.flatnonzero(foreground(self.meta_slices, clean=True))
            if len(has_fg):
                meta = Subset(meta, has_fg.tolist())
        self.train_set = SegSliceDataset(train, **train_crop)
        if train_crop and cfg.patches_per_slice > 1:  # several random patches of every sample per epoch
            self.train_set = Subset(self.train_set, list(range(len(train))) * cfg.patches_per_slice)
        self.train_plain = SegSliceDataset(train)
        self.meta_set = meta

    def trusted_samples(self) -> int:
        return trusted_count(self.cfg, self.meta_slices)

    def augment_batch(self, batch: dict) -> dict:
        if self._augment is None:
            return batch
        image, label, clean = self._augment(batch["image"], batch["label"], batch["clean"])
        return {**batch, "image": image, "label": label, "clean": clean}

    def validate(self, model, device) -> float:
        if self.val_slices is None:
            return float("nan")
        scores = [mean_foreground_dice(logits.argmax(1).numpy(), clean.numpy(), self.num_classes)
                  for _, _, logits, _, clean in self.case_logits(model, self.val_slices, device)]
        return float(np.mean(scores))

    def sample_losses(self, model, device) -> np.ndarray:
        out = np.zeros(len(self.train_slices), dtype=np.float64)
        for _, rows, logits, label, _ in self.case_logits(model, self.train_slices, device):
            out[rows] = F.cross_entropy(logits, label, reduction="none").flatten(1).mean(1).numpy()
        return out

    def case_logits(self, model, slices: SliceSet, device):
        """For each case of ``slices``, one case in memory at a time: ``(case, its rows, logits (n, K, *extent),
        given label (n, *extent), clean label (n, *extent))``, cropped to the case's own extent."""
        for case in dict.fromkeys(slices.case):
            rows = slices.rows_of(case)
            image, label, clean = slices.batch(rows)
            ext = tuple(slice(0, e) for e in slices.extent(rows[0]))
            logits = self.inferer(model, image, device)[(slice(None), slice(None), *ext)]
            yield case, rows, logits, label[(slice(None), *ext)], clean[(slice(None), *ext)]

    def meta_candidates(self) -> np.ndarray:
        """Samples whose given mask has foreground.

        Empty slices have almost no loss, so a mixture fitted on every slice puts them in
        the clean component, and a meta set of empty slices teaches only background.
        """
        has_fg = np.flatnonzero(foreground(self.train_slices, clean=False))
        return has_fg if len(has_fg) >= 4 else np.arange(len(self.train_plain))

    def clean_mask(self) -> np.ndarray:
        """A sample counts as clean when its given map has mean foreground Dice >= 0.9 with the clean one."""
        s = self.train_slices
        return np.array([mean_foreground_dice(*(t.numpy() for t in s.sample(i)[1:]), self.num_classes) >= 0.9
                         for i in range(len(s))])

    # ------------------------------------------------------------ prediction
    def predict(self, model, image: torch.Tensor, device, *, tta: bool = False) -> torch.Tensor:
        """Logits ``(K, X, Y, Z)`` of a preprocessed image ``(C, X, Y, Z)`` on the prepared grid (a prepared
        case, or a new image through :func:`medl2b.data.msd.preprocess_image`): slice by slice, each whole or
        by 2-D sliding windows of the training window; or the volume by sliding windows (overlap 0.5,
        Gaussian blending).

        ``tta``: the log of the softmax averaged over the identity and one flip per spatial axis (flipped
        back), so that ``argmax`` and ``softmax`` apply as to plain logits.
        """
        batch = self.geometry.to_batch(image)
        run = lambda x: self.case_inferer(model, x, device)  # noqa: E731
        logits = flip_averaged_probs(run, batch, self.geometry.flip_dims).log() if tta else run(batch)
        return self.geometry.from_batch(logits)

    def predict_case(self, model, case: str, device) -> tuple[np.ndarray, np.ndarray]:
        """Prediction and clean label map of a prepared case, ``(X, Y, Z)`` uint8 on the prepared grid."""
        image, _, clean = self.store.read(case, -1, noisy=False)
        pred = self.predict(model, torch.from_numpy(image), device).argmax(0).numpy().astype(np.uint8)
        return pred, clean.astype(np.uint8)

    def evaluate(self, model, split, out, device, *, checkpoint, figures, progress, extra, run) -> dict:
        """Predict ``split`` and score it (:func:`medl2b.tasks.seg_report.evaluate_cases`)."""
        return evaluate_cases(self, model, split, out, device, checkpoint=checkpoint, figures=figures,
                              progress=progress, extra=extra, run=run)

    def weight_map_examples(self, model, device, *, n: int = 4, indices=None) -> dict | None:
        """α and β maps of one meta step on training samples (:mod:`medl2b.tasks.weightmaps`)."""
        return self.geometry.weight_maps(self, model, device, n=n, indices=indices)

    # ---------------------------------------------------------------- audit
    def audit_tables(self, model, signal, has_meta, device) -> dict[str, AuditTable]:
        """Cases (and, on slices, slices): the meta signal as a fraction of the unit's structure, the model's
        ``1 - Dice`` against the given mask, and against the clean mask where it is known."""
        slices = self.train_slices
        k = self.num_classes
        pred, given, clean = self._audit_maps(model, slices, device)
        pixels = np.array([int(np.prod(slices.extent(i))) for i in range(len(slices))])  # each sample's own
        cases = np.asarray(slices.case)
        groups = {"cases": [np.flatnonzero(cases == c) for c in dict.fromkeys(slices.case)],
                  "slices": [np.array([i]) for i in range(len(cases))]}
        truth = ["given_vs_clean_dice", "corrupted"]
        tables = {"cases": AuditTable("ranking.csv", ["case"], truth=truth),
                  "slices": AuditTable("ranking_slices.csv", ["case", "slice"], truth=truth)}
        for level in self.geometry.audit_units:
            for g in groups[level]:
                region = int(((given[g] > 0) | (pred[g] > 0)).sum())
                # the preference summed over the unit's pixels, as a fraction of its structure
                value = (np.nansum(signal[g]) * pixels[g[0]] / max(region, 1) if has_meta
                         else float(np.nanmean(signal[g])))
                if has_meta and np.isnan(signal[g]).all():
                    value = float("nan")
                tables[level].rows.append({
                    "case": str(cases[g[0]]), "slice": int(slices.slice_index[g[0]]) if level == "slices" else "",
                    "index": int(g[0]) if level == "slices" else "", "meta_signal": float(value),
                    "disagreement": 1.0 - mean_foreground_dice(pred[g], given[g], k, absent="skip"),
                    "given_vs_clean_dice": mean_foreground_dice(given[g], clean[g], k, absent="skip"),
                    "corrupted": bool((given[g] != clean[g]).any())})
        return {level: tables[level] for level in self.geometry.audit_units}

    def _audit_maps(self, model, slices: SliceSet, device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Prediction, given and clean label of every sample, uint8, zero-padded to one shape (the padding is
        background in all three, so it adds nothing to a Dice or a count); predicted one case at a time."""
        shape = padded_shape([slices.extent(i) for i in range(len(slices))]) if len(slices) else (0, 0)
        maps = np.zeros((3, len(slices), *shape), dtype=np.uint8)
        for _, rows, logits, label, clean in self.case_logits(model, slices, device):
            region = (rows, *(slice(0, e) for e in label.shape[1:]))
            for m, values in zip(maps, (logits.argmax(1), label, clean)):
                m[region] = values.numpy()
        return maps[0], maps[1], maps[2]

    def audit_figure(self, model, tables, suspects: list[str], out: Path, device) -> None:
        """The most suspect slice of each top case: image, given vs clean, pseudo-label, α, β (slices only: a
        volume's figure would need the slices the volumes' audit does not rank)."""
        if "slices" not in tables:
            return
        best = {}
        for r in tables["slices"].rows:
            if r["case"] in suspects and (r["case"] not in best or r["score"] > best[r["case"]]["score"]):
                best[r["case"]] = r
        idx = [best[c]["index"] for c in suspects if c in best]
        ex = self.weight_map_examples(model, torch.device(device), indices=idx) if idx else None
        if ex is not None:
            ex["titles"] = [f"#{i + 1} {best[c]['case']} z={best[c]['slice']}" for i, c in enumerate(suspects)
                            if c in best]
            fig.plot_weight_maps(out / "figures" / "suspects.png", **ex)
