"""UNet++ (Zhou et al. 2018) over an ImageNet-pretrained encoder, for 2-D images: ``arch: unetpp-lite0``.

Encoder: the stem and MBConv blocks of EfficientNet-Lite0, built by the backbone registry's builder
(:func:`medl2b.models.efficientnet.build_efficientnet_lite0`) with the ImageNet weights its installed
package ships (nothing is downloaded); its classification head (1×1 conv to 1280, pooling, linear)
is dropped. Features are taken after the last block at each stride 2, 4, 8, 16, 32 (16, 24, 40,
112, 320 channels).

Decoder: written here over MONAI's blocks (``TwoConv``, ``UpCat``: a transposed-convolution
upsampling, concatenation, two conv–instance-norm–LeakyReLU layers), as MONAI's ``FlexibleUNet``
puts a UNet decoder on a registered encoder; MONAI's ``BasicUNetPlusPlus`` has no pretrained encoder.
Node ``x[i][j]`` sits at stride ``2**i``; ``x[i][0]`` is the encoder's feature (``x[0][0]``, at
full resolution, is a small non-pretrained ``TwoConv`` on the input, so thin structures such as 1-px
vessels keep a full-resolution path) and every nested node is::

    x[i][j] = TwoConv(cat(x[i][0], ..., x[i][j-1], up(x[i+1][j-1])))     for j ≥ 1, i + j ≤ 5

The logits come from a 1×1 conv (``head``, the scope of ``meta_scope: last``) on ``x[0][5]``.

Why not ``segmentation-models-pytorch``'s ``UnetPlusPlus``: it pulls ``timm`` (and its hub code),
names its encoder weights for a hub that cannot be reached here, and its Lite0 would need a second
weight mapping from this package's layout; the decoder is ~100 lines over MONAI's blocks, and the
encoder stays the registry's network (same convolution classes, so the same hand-written tangent
rules of :mod:`medl2b.meta.jvp`, checked fast == reference in float64).

Input: ``(B, C, H, W)`` with ``C`` 1 (replicated to RGB) or 3 (RGB), z-scored per case and channel
as the prepared datasets serve them. The network reads a z-scored pixel as an ImageNet-standardised
one (``p = μ_ImageNet + σ_ImageNet · z``, per channel) and applies Lite's own scaling of [0, 1]
pixels, ``(p·255 − 127)/128``: one fixed affine map per channel (buffers ``in_scale``, ``in_shift``),
so a case with ImageNet-like contrast reaches the encoder on the scale its weights were trained
on. Sides that are not multiples of 32 are zero-padded (0 = the case mean) and the logits cropped
back.

Static "same" padding: EfficientNet's convolutions pad by amounts fixed at construction. For a
stride-1 convolution the amount is ``k − 1`` whatever the size; for a stride-2 one it is ``k − 2``
on every even side. Built for a side that is a multiple of 32, the padding is TensorFlow's "same"
for every input whose sides are multiples of 32, which the forward guarantees.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.nets.basic_unet import TwoConv, UpCat
from torch import nn

from medl2b.errors import InputError
from medl2b.models.efficientnet import LITE_MEAN, LITE_STD
from medl2b.models.registry import get_backbone
from medl2b.models.resnet import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["EncoderUNetPlusPlus", "LiteEncoder", "build_unetpp_lite0", "SEGMENTATION_ARCHS"]

#: ``arch:`` values of the segmentation task: MONAI's UNet++ (2-D / 3-D, from scratch) and this one.
SEGMENTATION_ARCHS = ("unetpp", "unetpp-lite0")

_ACT = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})  # MONAI's UNet++ defaults
_NORM = ("instance", {"affine": True})
_BUILD_SIDE = 224  # a multiple of 32: the static "same" padding fits every input side that is one
_LEVELS = 5  # encoder levels, at strides 2, 4, 8, 16, 32


class LiteEncoder(nn.Module):
    """EfficientNet-Lite0's stem and blocks, returning the features at strides 2, 4, 8, 16 and 32.

    Args:
        pretrained: ``"imagenet"`` (the packaged weights), a local state dict in the package's layout,
            or ``None`` (random initialisation).

    ``forward(x)``: ``x`` (B, 3, H, W), already on Lite's input scale, H and W multiples of 32 →
    a list of 5 tensors, the ``i``-th (B, ``channels[i]``, H / 2^(i+1), W / 2^(i+1)).
    """

    def __init__(self, pretrained: str | None = "imagenet"):
        super().__init__()
        net = get_backbone("efficientnet-lite0").build(num_classes=1, image_size=_BUILD_SIDE, pretrained=pretrained)
        self._conv_stem, self._bn0, self._blocks, self._swish = net._conv_stem, net._bn0, net._blocks, net._swish
        # the last block at each stride (the stem halves the input; a block of stride 2 halves again)
        stride, last = 2, {}
        for index, block in enumerate(self._blocks):
            block_stride = block._block_args.stride
            stride *= block_stride[0] if isinstance(block_stride, (list, tuple)) else int(block_stride)
            last[stride] = index
        self.taps = tuple(last[2 ** (i + 1)] for i in range(_LEVELS))
        self.channels = tuple(int(self._blocks[i]._bn2.num_features) for i in self.taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self._swish(self._bn0(self._conv_stem(x)))
        features = []
        for index, block in enumerate(self._blocks):
            x = block(x)  # drop-connect is off (the registry's builder), so no rate is passed
            if index in self.taps:
                features.append(x)
        return features


class EncoderUNetPlusPlus(nn.Module):
    """UNet++ decoder over :class:`LiteEncoder` (see the module docstring).

    Args:
        in_channels: 1 (grayscale, replicated to RGB) or 3 (RGB).
        num_classes: output channels (background + foreground classes).
        decoder_channels: widths of the decoder nodes at strides 1, 2, 4, 8 and 16.
        pretrained: the encoder's weights (see :class:`LiteEncoder`).

    ``forward(x)``: ``x`` (B, in_channels, H, W), z-scored per case and channel → logits
    (B, num_classes, H, W).
    """

    head_prefix = "head."

    def __init__(self, *, in_channels: int = 3, num_classes: int = 2, decoder_channels=(16, 16, 32, 64, 128),
                 pretrained: str | None = "imagenet"):
        super().__init__()
        if in_channels not in (1, 3):
            raise InputError("arch", f"unetpp-lite0 takes 1 (grayscale) or 3 (RGB) input channels, got {in_channels}")
        if len(decoder_channels) != _LEVELS:
            raise ValueError(f"decoder_channels must have {_LEVELS} entries, got {len(decoder_channels)}")
        self.in_channels = int(in_channels)
        self.spatial_dims = 2
        # z (ImageNet-standardised reading) -> p in [0, 1] -> Lite's scale: x = z·σ/s + (μ − m)/s
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        lite_mean, lite_std = torch.tensor(LITE_MEAN), torch.tensor(LITE_STD)
        self.register_buffer("in_scale", (std / lite_std).view(1, 3, 1, 1))
        self.register_buffer("in_shift", ((mean - lite_mean) / lite_std).view(1, 3, 1, 1))
        self.encoder = LiteEncoder(pretrained)
        d = [int(c) for c in decoder_channels]
        skips = [d[0], *self.encoder.channels]  # channels of x[i][0], i = 0..5
        self.full = TwoConv(2, 3, d[0], _ACT, _NORM, True, None)  # x[0][0]: full resolution, not pretrained
        self.nodes = nn.ModuleDict()
        for j in range(1, _LEVELS + 1):
            for i in range(_LEVELS + 1 - j):
                below = skips[i + 1] if j == 1 else d[i + 1]  # x[i+1][j-1]: the encoder's, or a decoder node
                self.nodes[f"x{i}_{j}"] = UpCat(2, below, skips[i] + (j - 1) * d[i], d[i], _ACT, _NORM, True, None,
                                                upsample="deconv", halves=i > 0)
        self.head = nn.Conv2d(d[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = (math.ceil(s / 32) * 32 - s for s in (h, w))
        if pad_h or pad_w:  # zero = the case mean of a z-scored image
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        x = x * self.in_scale.to(x.dtype) + self.in_shift.to(x.dtype)
        grid = [[node] for node in (self.full(x), *self.encoder(x))]  # grid[i][j] = x[i][j]
        for j in range(1, _LEVELS + 1):
            for i in range(_LEVELS + 1 - j):
                skip = grid[i][0] if j == 1 else torch.cat(grid[i], dim=1)
                grid[i].append(self.nodes[f"x{i}_{j}"](grid[i + 1][j - 1], skip))
        out = self.head(grid[0][_LEVELS])
        if pad_h or pad_w:
            out = out[..., pad_h // 2: pad_h // 2 + h, pad_w // 2: pad_w // 2 + w]
        return out


def build_unetpp_lite0(*, features=(16, 16, 32, 64, 128, 16), in_channels: int = 3, num_classes: int = 2,
                       pretrained: str | None = "imagenet") -> EncoderUNetPlusPlus:
    """``arch: unetpp-lite0``: the config's ``features`` give the decoder widths at strides 1 to 16
    (the first five entries; the sixth, the MONAI UNet++'s last upsampling width, has no use here)."""
    return EncoderUNetPlusPlus(in_channels=in_channels, num_classes=num_classes,
                               decoder_channels=tuple(features)[:_LEVELS], pretrained=pretrained)
