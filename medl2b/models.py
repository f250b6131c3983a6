"""Network factories: MONAI UNet++ for segmentation, MONAI ResNet-50 for classification.

Nothing here downloads weights. ImageNet weights come from a local state-dict
file in torchvision's key layout (``--pretrained PATH``); without one the
ResNet trains from scratch and the run log says so.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from monai.networks.nets import BasicUNetPlusPlus, ResNet
from monai.networks.nets.resnet import get_inplanes
from torch import nn

from medl2b.errors import InputError

__all__ = ["SegmentationNet", "build_model", "build_unetpp", "build_resnet50", "head_parameter_names",
           "load_pretrained_resnet"]

log = logging.getLogger("medl2b")


class SegmentationNet(nn.Module):
    """``BasicUNetPlusPlus`` (2-D or 3-D) returning plain logits ``(B, C, H, W[, D])``.

    MONAI's UNet++ always returns a list (one item per supervision head); with
    ``deep_supervision=False`` only the last head is trained. The three unused
    heads are frozen here so that they never enter the optimiser or the meta step.
    """

    def __init__(self, *, in_channels: int = 1, num_classes: int = 2, features=(32, 32, 64, 128, 256, 32),
                 spatial_dims: int = 2):
        super().__init__()
        if len(features) != 6:
            raise ValueError(f"features must have 6 entries, got {len(features)}")
        self.spatial_dims = int(spatial_dims)
        self.net = BasicUNetPlusPlus(spatial_dims=self.spatial_dims, in_channels=in_channels, out_channels=num_classes,
                                     features=tuple(features), deep_supervision=False)
        for name in ("final_conv_0_1", "final_conv_0_2", "final_conv_0_3"):
            getattr(self.net, name).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[-1] if isinstance(out, (list, tuple)) else out


def build_unetpp(*, features=(32, 32, 64, 128, 256, 32), in_channels: int = 1, num_classes: int = 2,
                 spatial_dims: int = 2) -> nn.Module:
    """UNet++ (Zhou et al. 2018) for 2-D slices or 3-D volumes, background + foreground channels."""
    return SegmentationNet(in_channels=in_channels, num_classes=num_classes, features=features,
                           spatial_dims=spatial_dims)


def build_resnet50(*, num_classes: int = 8, width: float = 1.0, pretrained: str | os.PathLike | None = None
                   ) -> nn.Module:
    """2-D ResNet-50 in torchvision's layout (stride-2 stem, bias-free downsample).

    Args:
        num_classes: size of the new classification head.
        width: widen factor (1.0 = the standard ResNet-50; the CPU profile uses 0.25).
        pretrained: a local ImageNet state dict with torchvision keys; loaded strictly
            before the head is replaced. Only valid with ``width == 1``.
    """
    model = ResNet(block="bottleneck", layers=[3, 4, 6, 3], block_inplanes=get_inplanes(), spatial_dims=2,
                   n_input_channels=3, conv1_t_size=7, conv1_t_stride=2, widen_factor=width,
                   num_classes=1000 if pretrained else num_classes, bias_downsample=False)
    if pretrained:
        if width != 1.0:
            raise InputError(pretrained, f"ImageNet weights need width 1.0, the config has width {width}")
        load_pretrained_resnet(model, pretrained)
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        log.info("ResNet-50 trains from scratch (no --pretrained weights given)")
    return model


def load_pretrained_resnet(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a torchvision-layout ResNet-50 state dict into ``model`` strictly.

    Raises:
        InputError: naming the file, if it cannot be read or its keys/shapes do not fit.
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
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise InputError(path, f"keys do not fit a torchvision ResNet-50 ({len(missing)} missing, "
                               f"{len(unexpected)} unexpected, e.g. {example!r})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise InputError(path, f"shape of {key!r} is {tuple(value.shape)}, expected {tuple(own[key].shape)}")
    model.load_state_dict(state, strict=True)
    log.info("loaded ImageNet weights from %s", path)


def build_model(cfg, *, num_classes: int, in_channels: int = 1) -> nn.Module:
    """The network of a :class:`~medl2b.config.TrainConfig` (``in_channels``: segmentation only)."""
    if cfg.is_segmentation:
        return build_unetpp(features=cfg.features, num_classes=num_classes, in_channels=in_channels,
                            spatial_dims=cfg.spatial_dims)
    return build_resnet50(num_classes=num_classes, width=cfg.width, pretrained=cfg.pretrained)


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the last layer's parameters: the scope of ``--meta-scope last`` (FaMUS-style)."""
    if isinstance(model, SegmentationNet):
        prefix = "net.final_conv_0_4."
    elif hasattr(model, "fc"):
        prefix = "fc."
    else:
        raise ValueError(f"no known head for {type(model).__name__}")
    names = [n for n, p in model.named_parameters() if n.startswith(prefix) and p.requires_grad]
    if not names:
        raise ValueError(f"no trainable parameters under {prefix!r}")
    return names
