"""ResNet-50 (He et al. 2016), the paper's classification network, from MONAI in torchvision's layout.

No package on the index ships its ImageNet weights, so ``pretrained`` is a local state dict in
torchvision's key layout (``conv1.weight``, ``layer1.0.downsample.0.weight``, ``fc.bias``, ...).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from monai.networks.nets import ResNet
from monai.networks.nets.resnet import get_inplanes
from torch import nn

from medl2b.errors import InputError
from medl2b.models.registry import Backbone, register

__all__ = ["build_resnet50", "load_pretrained_resnet", "IMAGENET_MEAN", "IMAGENET_STD"]

log = logging.getLogger("medl2b")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_resnet50(*, num_classes: int = 8, width: float = 1.0, pretrained: str | os.PathLike | None = None,
                   image_size: int | None = None) -> nn.Module:
    """2-D ResNet-50 in torchvision's layout (stride-2 stem, bias-free downsample).

    Args:
        num_classes: size of the new classification head.
        width: widen factor (1.0 = the standard ResNet-50).
        pretrained: a local ImageNet state dict with torchvision keys, loaded strictly before the head
            is replaced (width 1.0 only). ``"imagenet"`` is refused: no installed package ships it.
        image_size: unused (the network is size-agnostic); accepted for the registry's signature.
    """
    if pretrained == "imagenet":
        raise InputError("pretrained", "no installed package ships ResNet-50's ImageNet weights; pass a local "
                                       "torchvision-layout state dict (--pretrained PATH) or use arch "
                                       "efficientnet-lite0")
    model = ResNet(block="bottleneck", layers=[3, 4, 6, 3], block_inplanes=get_inplanes(), spatial_dims=2,
                   n_input_channels=3, conv1_t_size=7, conv1_t_stride=2, widen_factor=width,
                   num_classes=1000 if pretrained else num_classes, bias_downsample=False)
    if pretrained:
        if width != 1.0:
            raise InputError(pretrained, f"ImageNet weights need width 1.0, the config has width {width}")
        load_pretrained_resnet(model, pretrained)
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        log.debug("ResNet-50 built without ImageNet weights (pretrained: null)")
    return model


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """A state dict from a local file (``state_dict`` wrappers and DDP's ``module.`` prefix removed).

    Raises:
        InputError: naming the file, if it is missing, unreadable or not a state dict.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "pretrained weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise InputError(path, f"cannot read weights ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(path, "is not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_strict(model: nn.Module, state: dict, path, what: str) -> None:
    """Load ``state`` into ``model`` strictly; an :class:`InputError` naming ``path`` on any misfit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise InputError(path, f"keys do not fit {what} ({len(missing)} missing, {len(unexpected)} unexpected, "
                               f"e.g. {example!r})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise InputError(path, f"shape of {key!r} is {tuple(value.shape)}, expected {tuple(own[key].shape)}")
    model.load_state_dict(state, strict=True)


def load_pretrained_resnet(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a torchvision-layout ResNet-50 state dict into ``model`` strictly.

    Raises:
        InputError: naming the file, if it cannot be read or its keys/shapes do not fit.
    """
    load_strict(model, load_state_dict_file(path), path, "a torchvision ResNet-50")
    log.info("loaded ImageNet weights from %s", path)


register(Backbone(name="resnet50", build=build_resnet50, head="fc", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  packaged_weights=False,
                  description="ResNet-50 (the paper's); ImageNet weights from a local torchvision-layout file"))
