"""Batched prediction shared by validation, pseudo-labels and evaluation, and the inferers of each geometry.

A task predicts whole samples (:class:`WholeInferer`: padded for the network, MONAI's ``SimpleInferer``) or,
when they are larger than its training window, by sliding windows of it (:class:`WindowInferer`: MONAI's
``SlidingWindowInferer``, Gaussian blending). Slice-by-slice prediction of a volume is the 2-D inferer on
its slices as a batch (:mod:`medl2b.tasks.segmentation`). MONAI's ``SliceInferer`` is not used: it batches
windows across slices and pads to the window, where these pad each case to :func:`padded_shape` and
predict the slices of a case as one batch, the numerics training validated with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer
from torch import nn
from torch.utils.data import DataLoader

from medl2b.data.datasets import pad_batch, padded_shape

__all__ = ["WholeInferer", "WindowInferer", "flip_averaged_probs", "predict_dataset", "predict_logits",
           "predict_volume"]


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
    inferer = SimpleInferer()
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device, non_blocking=True)
            if transform is not None:
                batch = transform(batch)
            outs.append(inferer(batch, model).float().cpu())
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
    inferer = SlidingWindowInferer(roi_size=tuple(int(v) for v in roi_size), sw_batch_size=sw_batch_size,
                                   overlap=overlap, mode="gaussian")
    try:
        out = inferer(volume.to(device), model)
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
def flip_averaged_probs(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                        dims: Sequence[int] = (2, 3), *, dense: bool = True) -> torch.Tensor:
    """Softmax averaged over the identity and one flip of ``images`` ``(B, C, *spatial)`` along each of ``dims``:
    ``(B, K, *spatial)``, or ``(B, K)`` for a classifier (``dense=False``).

    Dense predictions of the flipped images are flipped back before averaging; a classifier's are not (its
    class does not move). Used for segmentation pseudo-labels (``pseudo_label_tta``: the two in-plane flips)
    and test-time augmentation. A module runs in eval mode; any other callable (an inferer) as it is.
    """
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()
    try:
        probs = model(images).softmax(1)
        for dim in dims:
            flipped = model(images.flip(dim)).softmax(1)
            probs = probs + (flipped.flip(dim) if dense else flipped)
    finally:
        if was_training:
            model.train(True)
    return probs / (len(dims) + 1)


class WholeInferer:
    """Logits of whole samples ``(N, C, *extent)`` -> ``(N, K, *extent)`` on the CPU: zero-padded to
    :func:`padded_shape` (what the network takes), predicted ``batch_size`` at a time, cropped back.

    Args:
        batch_size: Samples per forward.
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def __call__(self, model: nn.Module, images: torch.Tensor, device) -> torch.Tensor:
        extent = tuple(images.shape[2:])
        padded = pad_batch(images, padded_shape([extent]))
        logits = predict_logits(model, padded, batch_size=self.batch_size, device=device)
        return logits[(slice(None), slice(None), *(slice(0, e) for e in extent))]


class WindowInferer:
    """Logits of samples larger than the training window, ``(N, C, *extent)`` -> ``(N, K, *extent)`` on the
    CPU: each sample by sliding windows of ``window`` (:func:`predict_volume`: overlap 0.5, Gaussian blending).

    Args:
        window: The training window, one size per spatial axis.
        sw_batch_size: Windows per forward.
    """

    def __init__(self, window: Sequence[int], sw_batch_size: int) -> None:
        self.window = tuple(int(v) for v in window)
        self.sw_batch_size = sw_batch_size

    def __call__(self, model: nn.Module, images: torch.Tensor, device) -> torch.Tensor:
        return torch.cat([predict_volume(model, images[i:i + 1], self.window, device=device,
                                         sw_batch_size=self.sw_batch_size) for i in range(images.shape[0])])
