"""The meta step under bf16 autocast keeps the meaning of its weights, for every registered network (issue 38).

One fast meta step (``meta_weights(..., impl="fast")``, two loss terms, pseudo-labels fixed beforehand)
under ``torch.autocast("cpu", dtype=torch.bfloat16)`` against the same step in float64 (where the fast
step is exact, ``test_meta_step.py``), same network, same batch: the weights' cosine must be ≥ 0.99 and
their Spearman rank correlation ≥ 0.95 (the target of issue 38; float32 reaches ≥ 0.999 on every
network here).

Networks with batch norm on batch statistics (the classification backbones, and UNet++ over the
EfficientNet-Lite0 encoder) are expected to fail (``xfail``, strict): there, any bf16 rounding in the
forward pass is amplified by the train-mode batch norms (at 2^-9 relative noise on every convolution
output, the logits of ResNet-50 move by ~15-20 %), the meta gradient is dominated by the stem's exploding
gradient, and no float32 placement short of a float32 forward restores it (``benchmarks/meta_precision.py``,
``BENCHMARKS.md``, "Mixed-precision meta step (issue 38)"). Were a fix to land, the strict ``xfail`` turns
into a failure that asks for the marker to go (and ``meta_amp`` to be reconsidered).
"""

from __future__ import annotations

import copy

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from medl2b.meta import meta_objective, meta_weights
from medl2b.meta.methods import make_loss_terms
from medl2b.models import SEGMENTATION_ARCHS, backbone_names, build_classifier, build_unetpp, build_unetpp_lite0

MIN_COSINE = 0.99
MIN_RANK = 0.95
PRETRAINED = {"efficientnet-lite0": "imagenet", "unetpp-lite0": "imagenet"}  # packaged ImageNet weights
# UNet++ 2-D and 3-D (MONAI's, instance norm), any other registered segmentation network, every backbone
NETWORKS = ["unetpp2d", "unetpp3d", *(a for a in SEGMENTATION_ARCHS if a != "unetpp"), *backbone_names()]
BN_REASON = ("batch norm on batch statistics amplifies bf16 rounding of the forward pass (chaotic at init); "
             "see BENCHMARKS.md, Mixed-precision meta step (issue 38)")


def _case(name: str):
    """A small network of kind ``name`` (train mode), a batch ``(x, y)``, a meta batch ``(xm, ym)``."""
    torch.manual_seed(0)
    if name in ("unetpp2d", "unetpp3d"):
        dims = 2 if name == "unetpp2d" else 3
        model = build_unetpp(features=(4, 4, 8, 8, 16, 4), spatial_dims=dims)
        batch, shape = (2, (32, 32)) if dims == 2 else (1, (32, 32, 32))
        x, xm = torch.randn(batch, 1, *shape), torch.randn(batch, 1, *shape)
        y, ym = torch.randint(0, 2, (batch, *shape)), torch.randint(0, 2, (batch, *shape))
    elif name in SEGMENTATION_ARCHS:
        model = build_unetpp_lite0(features=(8, 8, 16, 16, 32, 8), in_channels=1, pretrained=PRETRAINED.get(name))
        x, xm = torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32)
        y, ym = torch.randint(0, 2, (4, 32, 32)), torch.randint(0, 2, (4, 32, 32))
    else:
        model = build_classifier(name, num_classes=4, image_size=32, width=0.125 if name == "resnet50" else 1.0,
                                 pretrained=PRETRAINED.get(name))
        x, xm = torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32)
        y, ym = torch.randint(0, 4, (8,)), torch.randint(0, 4, (8,))
    return model.train(), x, y, xm, ym


def _weights(model, x, y, xm, ym, pseudo, dtype: torch.dtype, bf16: bool) -> torch.Tensor:
    """The flat weights (float64) of one fast meta step on a copy of ``model`` in ``dtype``."""
    net = copy.deepcopy(model).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = meta_weights(net, x.to(dtype), make_loss_terms(y, n_terms=2, pseudo=pseudo), xm.to(dtype),
                           meta_objective("ce", ym), lr=0.01, impl="fast")
    assert not out.skipped
    return torch.cat([w.detach().double().flatten() for w in out.weights])


def _has_batch_statistics(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name", NETWORKS)
def test_bf16_meta_weights_keep_their_meaning(name, request):
    model, x, y, xm, ym = _case(name)
    if _has_batch_statistics(model):
        request.applymarker(pytest.mark.xfail(strict=True, reason=BN_REASON))
    with torch.no_grad():
        pseudo = copy.deepcopy(model)(x).argmax(1)  # one set of pseudo-labels for both precisions
    exact = _weights(model, x, y, xm, ym, pseudo, torch.float64, bf16=False)
    mixed = _weights(model, x, y, xm, ym, pseudo, torch.float32, bf16=True)
    cosine = float(mixed @ exact) / float(mixed.norm() * exact.norm())
    rank = float(spearmanr(mixed.numpy(), exact.numpy()).statistic)
    assert cosine >= MIN_COSINE and rank >= MIN_RANK, f"{name}: cosine {cosine:.4f}, rank correlation {rank:.4f}"


@pytest.mark.parametrize("name", ["unetpp2d", "resnet50"])
def test_float32_meta_weights_keep_their_meaning(name):
    """The limits are reachable: float32 meets them on a network with and one without batch statistics."""
    model, x, y, xm, ym = _case(name)
    with torch.no_grad():
        pseudo = copy.deepcopy(model)(x).argmax(1)
    exact = _weights(model, x, y, xm, ym, pseudo, torch.float64, bf16=False)
    single = _weights(model, x, y, xm, ym, pseudo, torch.float32, bf16=False)
    cosine = float(single @ exact) / float(single.norm() * exact.norm())
    rank = float(spearmanr(single.numpy(), exact.numpy()).statistic)
    assert cosine >= 0.999 and rank >= MIN_RANK, f"{name}: cosine {cosine:.4f}, rank correlation {rank:.4f}"
