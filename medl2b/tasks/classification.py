"""Image classification (ISIC 2019 or a user's own images, ``prepare images``): per-image labels; validation =
accuracy or balanced accuracy (config ``val_metric``) on the clean meta split; the unit of evaluation and audit
is the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medl2b.data.augment import SquareAugment
from medl2b.data.datasets import ImageSet, IsicDataset, load_isic
from medl2b.evaluate import figures as fig
from medl2b.evaluate.metrics import classification_metrics, one_vs_rest_auroc
from medl2b.evaluate.report import write_cls_report
from medl2b.inference import flip_averaged_probs, predict_dataset, predict_logits
from medl2b.tasks.base import AuditTable, Task, compose, held_out, split_items, trusted_count

__all__ = ["ClassificationTask"]


class ClassificationTask(Task):
    """Classification of RGB images prepared square (``images.npy`` and ``dataset.json``)."""

    kind = "classification"

    def __init__(self, cfg, manifest: dict) -> None:
        super().__init__(cfg, manifest)
        self.score_name = "val_bacc" if cfg.val_metric == "balanced_accuracy" else "val_acc"
        self.classes = list(manifest["classes"])
        self.num_classes = len(self.classes)
        self.channels = ["R", "G", "B"]
        self.in_channels = 3
        self.size = cfg.image_size or int(manifest["size"])
        self._augment = SquareAugment() if cfg.augment else None

    def setup_training(self, *, use_meta_cases: bool, trusted: bool = True) -> None:
        cfg = self.cfg
        clean = load_isic(self.data, "meta")
        entries = self.manifest["images"]
        # a lesion's images stay on one side (its id, else the image's own name)
        lesions = [entries[i].get("lesion_id") or entries[i]["image"] for i in clean.index]
        held = held_out(cfg, lesions, clean.clean)
        self.meta_images = clean.subset(~held)
        self.val_images = clean.subset(held) if held.any() else self.meta_images
        train = compose(cfg, lambda: load_isic(self.data, "train", label=cfg.label_source), self.meta_images,
                        trusted=trusted)
        self.train_images = train
        self.meta_set = IsicDataset(self.meta_images) if use_meta_cases else None
        self.train_set = self.train_plain = IsicDataset(train)  # served plain; augment_batch augments on the device

    def trusted_samples(self) -> int:
        return trusted_count(self.cfg, self.meta_images)

    def input_transform(self, x: torch.Tensor) -> torch.Tensor:
        """The run's image size (the prepared images may be larger): ``(B, 3, S, S)`` -> ``(B, 3, s, s)``."""
        if x.shape[-1] == self.size and x.shape[-2] == self.size:
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)

    def augment_batch(self, batch: dict) -> dict:
        if self._augment is None:
            return batch
        return {**batch, "image": self._augment(batch["image"])}

    def _predict(self, model, dataset, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``(N, K)``, given and clean labels ``(N,)`` of a dataset of prepared images."""
        return predict_dataset(model, dataset, batch_size=self.batch_size, device=device,
                               transform=self.input_transform)

    def predict(self, model, image: np.ndarray, device, *, tta: bool = False) -> torch.Tensor:
        """Logits ``(K,)`` of an RGB image ``(S, S, 3)`` uint8 at the prepared size (a new image through
        :func:`medl2b.data.images.load_square_image`), normalised as the prepared ones are. ``tta``: the log of
        the softmax averaged over the image and its vertical and horizontal flips."""
        images = ImageSet(images=np.asarray(image)[None], index=np.arange(1), label=np.zeros(1, dtype=np.int64),
                          clean=np.zeros(1, dtype=np.int64), classes=list(self.classes))
        x = IsicDataset(images)[0]["image"][None]
        run = lambda b: predict_logits(model, b, batch_size=1, device=device,  # noqa: E731
                                       transform=self.input_transform)
        return (flip_averaged_probs(run, x, (2, 3), dense=False).log() if tta else run(x))[0]

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

    def sample_losses(self, model, device) -> np.ndarray:
        logits, given, _ = self._predict(model, self.train_plain, device)
        return F.cross_entropy(logits, given, reduction="none").numpy()

    def clean_mask(self) -> np.ndarray:
        return np.asarray(self.train_images.label) == np.asarray(self.train_images.clean)

    def evaluate(self, model, split, out, device, *, checkpoint, figures, progress, extra, run) -> dict:
        """Predict ``split``; write accuracy, balanced accuracy, per-class recall, the confusion matrix and the
        one-vs-rest AUROC (:func:`medl2b.evaluate.report.write_cls_report`); return the summary."""
        split_items(self.manifest, split)
        logits, _, clean = self._predict(model, IsicDataset(load_isic(self.data, split)), device)
        pred, y = logits.argmax(1).numpy(), clean.numpy()
        classes = self.classes
        metrics = classification_metrics(y, pred, n_classes=len(classes), class_names=classes)
        auroc = one_vs_rest_auroc(torch.softmax(logits, 1).numpy(), y, n_classes=len(classes))
        summary = write_cls_report(out, metrics=metrics, split=split, checkpoint=checkpoint,
                                   class_names=classes, extra={**extra, **auroc})
        if figures:
            fig.plot_confusion(np.asarray(metrics["confusion"]), classes, out / "confusion_matrix.png")
            if (run / "metrics.csv").exists():
                fig.plot_learning_curves(run / "metrics.csv", out / "figures" / "learning_curves.png")
        return summary

    def audit_tables(self, model, signal, has_meta, device) -> dict[str, AuditTable]:
        """One row per training image: the meta signal, ``1 - p(given class)``, and the clean class."""
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
        return {"images": AuditTable("ranking.csv", ["image"], after=["given", "predicted"],
                                     truth=["clean", "corrupted"], rows=rows)}

    def audit_figure(self, model, tables, suspects: list[str], out: Path, device) -> None:
        """The top suspects' images, each titled with its given and predicted class."""
        shown = sorted(tables["images"].rows, key=lambda r: -r["score"])[:len(suspects)]
        images = self.train_images
        pics = np.stack([np.asarray(images.images[int(images.index[r["i"]])]) for r in shown])
        fig.plot_suspect_images(out / "figures" / "suspects.png", pics,
                                [f"#{j + 1} {r['image']}\ngiven {r['given']}, model {r['predicted']}"
                                 for j, r in enumerate(shown)])
