"""What differs between segmentation and classification, behind one small interface.

A task loads the prepared dataset into the training, meta and validation sets,
scores the model on the clean validation cases, gives per-sample losses for the
online meta set, and says which elements of a batch are truly noisy (known on
phantoms and on synthesised noise). The trainer never branches on the task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from medl2b.data.augment import BatchAugment
from medl2b.evaluate.metrics import mean_foreground_dice
from medl2b.inference import predict_dataset, predict_logits, predict_volume

__all__ = ["Task", "SegmentationTask", "ClassificationTask", "build_task"]


@dataclass
class Task:
    """Datasets and scoring of one task (see subclasses)."""

    train_set: Dataset          # augmented, labels = given (noisy) labels
    train_plain: Dataset        # the same samples, no augmentation (for the online meta set)
    meta_set: Dataset | None    # trusted clean meta samples (augmented), None in gmm mode
    num_classes: int
    score_name: str
    in_channels: int = 1

    def input_transform(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def augment_batch(self, batch: dict) -> dict:
        """Augmentation applied to a whole batch on the device (default: none; items are augmented)."""
        return batch

    def validate(self, model, device) -> float:
        raise NotImplementedError

    def sample_losses(self, model, device, batch_size: int) -> np.ndarray:
        """Per-sample losses on the given labels in eval mode, ``(N,)`` (per slice for segmentation)."""
        raise NotImplementedError

    def meta_classes(self) -> np.ndarray | None:
        """Class per trusted meta sample, for class-balanced meta batches (None: the task has none)."""
        return None

    def meta_candidates(self) -> np.ndarray:
        """Indices of the training samples the online meta set may be chosen from (default: all)."""
        return np.arange(len(self.train_plain))

    def selection_quality(self, indices: np.ndarray, candidates: np.ndarray) -> dict[str, float]:
        """How clean an online meta set is, from the known clean labels (precision vs the candidates' rate)."""
        good = self._clean_mask()
        return {"meta_size": int(len(indices)),
                "meta_precision": float(good[indices].mean()) if len(indices) else float("nan"),
                "meta_base_rate": float(good[candidates].mean()) if len(candidates) else float("nan")}

    def _clean_mask(self) -> np.ndarray:
        """Per training sample: is its given label (nearly) right?"""
        raise NotImplementedError


class SegmentationTask(Task):
    """2-D slices of any prepared segmentation dataset (any channels and classes); validation =
    mean over the meta cases of the mean foreground-class 3-D Dice."""

    def __init__(self, cfg, *, use_meta_cases: bool):
        from medl2b.data.datasets import SegSliceDataset, load_manifest, load_slices, load_volumes

        manifest = load_manifest(cfg.data, task=cfg.task)
        splits = manifest["splits"]
        # 2-D: every slice is a sample; 3-D: every (padded) volume is one
        load = load_volumes if cfg.spatial_dims == 3 else load_slices
        self.val_slices = load(cfg.data, splits["meta"], label="clean") if splits["meta"] else None
        train = _compose(cfg, lambda: load(cfg.data, splits["train"], label=cfg.label_source), self.val_slices)
        self.train_slices = train
        if len(train) and cfg.spatial_dims == 2 and min(train.image.shape[-2:]) < 32:
            from medl2b.errors import InputError

            raise InputError(cfg.data, f"slices of {list(train.image.shape[-2:])} px are too small for UNet++ "
                                       "(four halvings); prepare the dataset with --size 32 or more")
        # 3-D: volumes larger than patch_size on some axis are trained on random patches (the window)
        self.window = None
        train_crop, meta_crop = {}, {}
        if cfg.spatial_dims == 3:
            from medl2b.data.datasets import train_window

            window = train_window(cfg.data, cfg.patch_size)
            if len(train) and window != tuple(train.image.shape[2:]):
                self.window = window
                train_crop = {"crop": self.window, "crop_fg": cfg.patch_fg}
                meta_crop = {"crop": self.window, "crop_fg": 1.0 if cfg.meta_foreground else cfg.patch_fg}
        # items are served plain; BatchAugment transforms whole batches on the device (augment_batch)
        meta = (SegSliceDataset(self.val_slices, augment=False, **meta_crop)
                if (use_meta_cases and self.val_slices) else None)
        if meta is not None and cfg.meta_foreground:
            # A meta batch of background-only slices rewards predicting background everywhere; draw meta
            # batches from the clean slices that hold foreground (all slices if none does).
            has_fg = np.flatnonzero(self.val_slices.clean.flatten(1).sum(1).numpy() > 0)
            if len(has_fg):
                meta = Subset(meta, has_fg.tolist())
        super().__init__(train_set=SegSliceDataset(train, augment=False, **train_crop),
                         train_plain=SegSliceDataset(train, augment=False), meta_set=meta,
                         num_classes=len(manifest["labels"]), score_name="val_dice",
                         in_channels=len(manifest.get("channel_names") or {"0": ""}))
        self.batch_size = cfg.batch_size
        self._augment = BatchAugment() if cfg.augment else None  # 2-D or 3-D by the batch's shape

    def augment_batch(self, batch: dict) -> dict:
        if self._augment is None:
            return batch
        image, label, clean = self._augment(batch["image"], batch["label"], batch["clean"])
        return {**batch, "image": image, "label": label, "clean": clean}

    def validate(self, model, device) -> float:
        if self.val_slices is None:
            return float("nan")
        pred = self._logits(model, self.val_slices.image, device, self.batch_size).argmax(1)
        cases = np.asarray(self.val_slices.case)
        scores = [mean_foreground_dice(pred[cases == c].numpy(), self.val_slices.clean[cases == c].numpy(),
                                       self.num_classes) for c in dict.fromkeys(self.val_slices.case)]
        return float(np.mean(scores))

    def sample_losses(self, model, device, batch_size: int) -> np.ndarray:
        logits = self._logits(model, self.train_slices.image, device, batch_size)
        return F.cross_entropy(logits, self.train_slices.label, reduction="none").flatten(1).mean(1).numpy()

    def _logits(self, model, images: torch.Tensor, device, batch_size: int) -> torch.Tensor:
        """Logits of whole slices or volumes; volumes trained on patches: sliding windows of the patch size."""
        if self.window is None:
            return predict_logits(model, images, batch_size=batch_size, device=device)
        return torch.cat([predict_volume(model, images[i:i + 1], self.window, device=device)
                          for i in range(images.shape[0])])

    def meta_candidates(self) -> np.ndarray:
        """Slices whose given mask has foreground.

        Empty slices have almost no loss, so a mixture fitted on every slice puts them in
        the clean component, and a meta set of empty slices teaches only background
        (measured on phantoms at noise Dice 0.6: test Dice 0.014, the network collapses).
        """
        has_fg = np.flatnonzero(self.train_slices.label.flatten(1).sum(1).numpy() > 0)
        return has_fg if len(has_fg) >= 4 else np.arange(len(self.train_plain))

    def _clean_mask(self) -> np.ndarray:
        """A slice counts as clean when its given map has mean foreground Dice >= 0.9 with the clean one."""
        lab, clean = self.train_slices.label.numpy(), self.train_slices.clean.numpy()
        return np.array([mean_foreground_dice(lab[i], clean[i], self.num_classes) >= 0.9
                         for i in range(lab.shape[0])])


class ClassificationTask(Task):
    """ISIC 2019-style: per-image labels, validation = accuracy on the clean meta split."""

    def __init__(self, cfg, *, use_meta_cases: bool):
        from medl2b.data.datasets import IsicDataset, load_isic, load_manifest

        manifest = load_manifest(cfg.data, task="skin-lesion-cls")
        self.val_images = load_isic(cfg.data, "meta")
        train = _compose(cfg, lambda: load_isic(cfg.data, "train", label=cfg.label_source), self.val_images)
        self.train_images = train
        meta = IsicDataset(self.val_images, augment=cfg.augment) if use_meta_cases else None
        super().__init__(train_set=IsicDataset(train, augment=cfg.augment), train_plain=IsicDataset(train, augment=False),
                         meta_set=meta, num_classes=len(manifest["classes"]), score_name="val_acc")
        self.size = cfg.image_size or int(manifest["size"])
        self.batch_size = cfg.batch_size

    def input_transform(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.size and x.shape[-2] == self.size:
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)

    def validate(self, model, device) -> float:
        from medl2b.data.datasets import IsicDataset

        logits, _, clean = predict_dataset(model, IsicDataset(self.val_images, augment=False),
                                           batch_size=self.batch_size, device=device, transform=self.input_transform)
        return float((logits.argmax(1) == clean).float().mean())

    def meta_classes(self) -> np.ndarray | None:
        return None if self.meta_set is None else np.asarray(self.val_images.clean)

    def sample_losses(self, model, device, batch_size: int) -> np.ndarray:
        logits, given, _ = predict_dataset(model, self.train_plain, batch_size=batch_size, device=device,
                                           transform=self.input_transform)
        return F.cross_entropy(logits, given, reduction="none").numpy()

    def _clean_mask(self) -> np.ndarray:
        return np.asarray(self.train_images.label) == np.asarray(self.train_images.clean)


def _compose(cfg, load_train, clean_meta):
    """The training samples of a method: the (noisy) train split, plus or instead of the clean meta cases."""
    from medl2b.errors import InputError
    from medl2b.meta.methods import get_method

    train_on = get_method(cfg.method).train_on
    if train_on == "train":
        return load_train()
    if clean_meta is None or len(clean_meta) == 0:
        raise InputError(cfg.data, f"method {cfg.method} trains on the clean meta cases, but the dataset has none")
    return clean_meta if train_on == "meta" else load_train().concat(clean_meta)


def build_task(cfg) -> Task:
    """The task object of a config; the trusted meta cases are used unless ``meta_set == 'gmm'``."""
    cls = SegmentationTask if cfg.is_segmentation else ClassificationTask
    return cls(cfg, use_meta_cases=cfg.uses_meta and cfg.meta_set == "clean")
