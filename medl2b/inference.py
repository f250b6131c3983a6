"""Batched prediction shared by validation, pseudo-labels and evaluation."""

from __future__ import annotations

import torch
from monai.inferers import sliding_window_inference
from torch import nn
from torch.utils.data import DataLoader

__all__ = ["predict_logits", "predict_dataset", "predict_volume", "flip_averaged_probs"]


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, *, batch_size: int = 32,
                   device: torch.device | str = "cpu", transform=None) -> torch.Tensor:
    """Logits of ``images`` ``(N, C, ...)`` in eval mode, on the CPU, ``(N, K, ...)``.

    ``transform`` (optional) maps a batch on ``device`` to network input (e.g. resizing).
    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    outs = []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device, non_blocking=True)
            if transform is not None:
                batch = transform(batch)
            outs.append(model(batch).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


@torch.no_grad()
def predict_volume(model: nn.Module, volume: torch.Tensor, roi_size, *, device: torch.device | str = "cpu",
                   overlap: float = 0.5, sw_batch_size: int = 2) -> torch.Tensor:
    """Logits ``(1, K, X, Y, Z)`` of a 3-D network on a whole volume ``(1, C, X, Y, Z)`` of any size:
    MONAI's sliding-window inference, windows of ``roi_size`` (the training shape; a smaller volume
    is padded, and cropped back), ``overlap``, Gaussian blending. On the CPU."""
    was_training = model.training
    model.eval()
    try:
        out = sliding_window_inference(volume.to(device), roi_size=tuple(int(v) for v in roi_size),
                                       sw_batch_size=sw_batch_size, predictor=model, overlap=overlap,
                                       mode="gaussian")
    finally:
        model.train(was_training)
    return torch.as_tensor(out).as_subclass(torch.Tensor).float().cpu()


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset, *, batch_size: int = 32, device: torch.device | str = "cpu",
                    transform=None, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, given labels and clean labels of a whole dataset of ``{"image", "label", "clean"}`` items.

    Streams the dataset in batches, so only the logits are held in memory (a 20k-image
    ISIC split would not fit as one tensor of images).
    """
    logits, labels, cleans = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            if transform is not None:
                x = transform(x)
            logits.append(model(x).float().cpu())
            labels.append(batch["label"])
            cleans.append(batch["clean"])
    finally:
        model.train(was_training)
    return torch.cat(logits), torch.cat(labels), torch.cat(cleans)


@torch.no_grad()
def flip_averaged_probs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax averaged over the identity and the two in-plane flips, ``(B, K, H, W)``.

    The flipped predictions are flipped back before averaging. Used for
    segmentation pseudo-labels (``pseudo_label_tta``); runs in eval mode.
    """
    was_training = model.training
    model.eval()
    try:
        probs = model(images).softmax(1)
        for dim in (2, 3):
            probs = probs + model(images.flip(dim)).softmax(1).flip(dim)
    finally:
        model.train(was_training)
    return probs / 3.0
