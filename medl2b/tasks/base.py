"""What every task shares: the interface the trainer, evaluation, prediction and the audit call, and the
helpers that choose its samples (a split's items, the validation hold-out, a method's training set)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from medl2b.data.splits import hold_out
from medl2b.errors import InputError

__all__ = ["AuditTable", "Task", "compose", "held_out", "split_items", "trusted_count"]


@dataclass
class AuditTable:
    """One unit of an audit (cases, slices or images): its rows, unscored, and how they are written.

    Attributes:
        file: The CSV's name in the audit folder (``ranking.csv``, ``ranking_slices.csv``).
        ids: The columns naming a row (``case``, ``slice``; ``image``), written after ``rank``.
        after: Columns written after ``disagreement`` whatever the truth (``given``, ``predicted``).
        truth: Columns that need the known truth, written only with it (``given_vs_clean_dice``, ``corrupted``).
        rows: One dict per unit with ``meta_signal``, ``disagreement``, ``corrupted`` and the columns above.
    """

    file: str
    ids: list[str]
    after: list[str] = field(default_factory=list)
    truth: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)


class Task:
    """One data modality: its datasets, its inferer, its metric rows and report, its audit units.

    After :meth:`setup_training`: ``train_set`` (labels = given labels; augmented on the device by
    :meth:`augment_batch`), ``train_plain`` (the same samples, plain), ``meta_set`` (trusted clean meta
    samples, or None).

    Attributes:
        kind: ``"segmentation"`` or ``"classification"`` (the summary's and the predictor's ``task``).
        classes: Class names in index order (segmentation: background first).
        label_values: The raw label value of each class (segmentation; classification: empty).
        channels: Input channel names.
        spatial_dims: 2 (images, slices) or 3 (volumes).
        image_2d: Whether the inputs are 2-D image files (PNG, JPEG) rather than volumes.
        score_name: The validation score's name in the log (``val_dice``, ``val_acc``, ``val_bacc``).
        collate: The batch collation of its datasets (None: PyTorch's default).
    """

    kind: str = ""
    score_name: str = "val_score"
    collate = None
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
        self.classes: list[str] = []
        self.label_values: list[int] = []
        self.channels: list[str] = []
        self.spatial_dims = 2
        self.image_2d = True
        #: whether the training samples' clean labels are known (benchmark mode); False for a user's own labels,
        #: where the ``clean`` of a training sample is its given label and must never be read as truth
        self.train_truth = bool(manifest.get("train_truth", True))

    # ------------------------------------------------------------- training
    def setup_training(self, *, use_meta_cases: bool, trusted: bool = True) -> None:
        """Load the training, meta and validation sets (``use_meta_cases``: the trusted meta samples too).
        ``trusted=False``: the training set without the trusted cases a method trains on (:func:`compose`)."""
        raise NotImplementedError

    def trusted_samples(self) -> int:
        """How many trusted samples (clean meta cases, ``l2b``) follow the train split in the method's training
        set, whether :meth:`setup_training` left them out or not."""
        raise NotImplementedError

    def input_transform(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch on the device to network input (default: as it is)."""
        return x

    def augment_batch(self, batch: dict) -> dict:
        """Augmentation applied to a whole batch on the device (default: none). Datasets serve items plain."""
        return batch

    def validate(self, model, device) -> float:
        """The validation score on the clean validation samples (NaN without any)."""
        raise NotImplementedError

    def sample_losses(self, model, device) -> np.ndarray:
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

    def clean_mask(self) -> np.ndarray:
        """Per training sample: is its given label (nearly) right? (Only with ``train_truth``.)"""
        raise NotImplementedError

    def selection_quality(self, indices: np.ndarray, candidates: np.ndarray) -> dict[str, float]:
        """How clean an online meta set is, from the known clean labels (precision vs the candidates' rate);
        NaN where no clean label of a training sample exists (a user's own labels)."""
        if not self.train_truth:
            return {"meta_size": int(len(indices)), "meta_precision": float("nan"), "meta_base_rate": float("nan")}
        good = self.clean_mask()
        return {"meta_size": int(len(indices)),
                "meta_precision": float(good[indices].mean()) if len(indices) else float("nan"),
                "meta_base_rate": float(good[candidates].mean()) if len(candidates) else float("nan")}

    # ------------------------------------------------ predict, evaluate, audit
    def predict(self, model, image, device, *, tta: bool = False) -> torch.Tensor:
        """Logits of one preprocessed input, class axis first (segmentation: ``(C, X, Y, Z)`` ->
        ``(K, X, Y, Z)``; classification: an RGB image ``(S, S, 3)`` uint8 -> ``(K,)``). ``tta``: the log of
        the softmax averaged over the input and its flips (flipped back)."""
        raise NotImplementedError

    def evaluate(self, model, split: str, out: Path, device, *, checkpoint: str, figures: bool, progress: bool,
                 extra: dict, run: Path) -> dict:
        """Predict ``split``, score it, write the report (and figures) into ``out``; return the summary."""
        raise NotImplementedError

    def audit_tables(self, model, signal: np.ndarray, has_meta: bool, device) -> dict[str, AuditTable]:
        """The audit's units (``signal``: the per-sample meta or loss signal), unscored, first the one whose
        top rows name the suspects; :mod:`medl2b.audit` scores, ranks and writes them."""
        raise NotImplementedError

    def audit_figure(self, model, tables: dict[str, AuditTable], suspects: list[str], out: Path, device) -> None:
        """Draw the top suspects into ``out/figures/`` (default: no figure)."""


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


def held_out(cfg, groups, strata) -> np.ndarray:
    """The ``val_holdout`` mask over the clean meta samples (``groups``: case or lesion per sample); an
    :class:`InputError` when the split is too small to hold any out."""
    held = hold_out(groups, cfg.val_holdout, strata=strata)
    if cfg.val_holdout > 0 and not held.any():
        raise InputError(cfg.data, f"val_holdout {cfg.val_holdout} needs at least 2 clean meta cases (lesions) in "
                                   f"a class; the meta split has {len(groups)} sample(s)")
    return held


def compose(cfg, load_train, clean_meta, *, trusted: bool = True):
    """The training samples of a method (``cfg.training_set``): the (noisy) train split, plus or instead of the
    clean meta cases, always after it. A meta method that also trains on the clean cases (``l2b`` with
    ``meta_set: clean``) marks them trusted: the meta step leaves their given labels at full weight.
    ``trusted=False``: the train split alone for such a method (the audit ranks the given labels only)."""
    training_set = cfg.training_set
    if training_set == "train" or (training_set == "train+trusted" and not trusted):
        return load_train()
    if clean_meta is None or len(clean_meta) == 0:
        raise InputError(cfg.data, f"method {cfg.method} trains on the clean meta cases, but the dataset has none")
    if training_set == "meta":
        return clean_meta
    return load_train().concat(clean_meta.as_trusted() if training_set == "train+trusted" else clean_meta)


def trusted_count(cfg, clean_meta) -> int:
    """How many trusted samples :func:`compose` appends to the train split for ``cfg`` (with ``trusted=True``)."""
    return len(clean_meta) if cfg.training_set == "train+trusted" and clean_meta is not None else 0
