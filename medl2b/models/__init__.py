"""Networks: UNet++ for segmentation; a registry of classification backbones.

* :mod:`~medl2b.models.unetpp`: MONAI's UNet++ (2-D / 3-D), ``arch: unetpp``.
* :mod:`~medl2b.models.unetpp_encoder`: a UNet++ decoder over the ImageNet-pretrained EfficientNet-Lite0
  encoder (2-D), ``arch: unetpp-lite0``.
* :mod:`~medl2b.models.registry`: :class:`Backbone` entries (build, weights, head, normalisation) and the
  :class:`Classifier` wrapper that normalises the input with the entry's statistics.
* :mod:`~medl2b.models.resnet` (``resnet50``) and :mod:`~medl2b.models.efficientnet`
  (``efficientnet-lite0``, ImageNet weights installed from the package index).

Nothing here downloads weights.
"""

from __future__ import annotations

import logging

from torch import nn

from medl2b.models import efficientnet as _efficientnet  # noqa: F401  (registers efficientnet-lite0)
from medl2b.models import resnet as _resnet  # noqa: F401  (registers resnet50)
from medl2b.models.efficientnet import build_efficientnet_lite0
from medl2b.models.registry import BACKBONES, Backbone, Classifier, backbone_names, get_backbone
from medl2b.models.resnet import build_resnet50, load_pretrained_resnet
from medl2b.models.unetpp import SegmentationNet, build_unetpp
from medl2b.models.unetpp_encoder import SEGMENTATION_ARCHS, EncoderUNetPlusPlus, build_unetpp_lite0

__all__ = ["SegmentationNet", "Classifier", "Backbone", "BACKBONES", "backbone_names", "get_backbone",
           "build_model", "build_classifier", "build_unetpp", "build_resnet50", "build_efficientnet_lite0",
           "head_parameter_names", "load_pretrained_resnet", "EncoderUNetPlusPlus", "build_unetpp_lite0",
           "SEGMENTATION_ARCHS"]

log = logging.getLogger("medl2b")


def build_classifier(arch: str, *, num_classes: int, image_size: int | None = None, width: float = 1.0,
                     pretrained: str | None = None) -> Classifier:
    """The registered network ``arch`` behind its input normalisation: [0, 1] RGB in, logits out."""
    entry = get_backbone(arch)
    body = entry.build(num_classes=num_classes, image_size=image_size, width=width, pretrained=pretrained)
    return Classifier(body, arch=arch, head=entry.head, mean=entry.mean, std=entry.std)


def build_model(cfg, *, num_classes: int, in_channels: int = 1) -> nn.Module:
    """The network of a :class:`~medl2b.config.TrainConfig` (``in_channels``: segmentation only)."""
    if cfg.is_segmentation:
        if cfg.arch == "unetpp-lite0":
            return build_unetpp_lite0(features=cfg.features, num_classes=num_classes, in_channels=in_channels,
                                      pretrained=cfg.pretrained)
        return build_unetpp(features=cfg.features, num_classes=num_classes, in_channels=in_channels,
                            spatial_dims=cfg.spatial_dims)
    return build_classifier(cfg.arch, num_classes=num_classes, image_size=cfg.image_size, width=cfg.width,
                            pretrained=cfg.pretrained)


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the last layer's parameters: the scope of ``--meta-scope last`` (FaMUS-style).

    A model names its head with a ``head_prefix`` attribute (every medl2b network does); a plain
    network with an ``fc`` layer (torchvision / MONAI ResNets) is understood too.
    """
    prefix = getattr(model, "head_prefix", None) or ("fc." if hasattr(model, "fc") else None)
    if prefix is None:
        raise ValueError(f"no known head for {type(model).__name__}")
    names = [n for n, p in model.named_parameters() if n.startswith(prefix) and p.requires_grad]
    if not names:
        raise ValueError(f"no trainable parameters under {prefix!r}")
    return names
