"""UNet++ (Zhou et al. 2018) from MONAI for 2-D slices or 3-D volumes."""

from __future__ import annotations

import torch
from monai.networks.nets import BasicUNetPlusPlus
from torch import nn

__all__ = ["SegmentationNet", "build_unetpp"]


class SegmentationNet(nn.Module):
    """``BasicUNetPlusPlus`` (2-D or 3-D) returning plain logits ``(B, C, H, W[, D])``.

    MONAI's UNet++ always returns a list (one item per supervision head); with
    ``deep_supervision=False`` only the last head is trained. The three unused
    heads are frozen here so that they never enter the optimiser or the meta step.
    """

    head_prefix = "net.final_conv_0_4."

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
    """UNet++ for 2-D slices or 3-D volumes, background + foreground channels."""
    return SegmentationNet(in_channels=in_channels, num_classes=num_classes, features=features,
                           spatial_dims=spatial_dims)
