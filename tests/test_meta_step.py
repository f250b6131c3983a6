"""The meta step: exact gradients, equal implementations, BatchNorm bookkeeping, skipped batches."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from medl2b.meta import meta_weights, normalise_weights
from medl2b.models import (backbone_names, build_classifier, build_resnet50, build_unetpp, build_unetpp_lite0,
                           head_parameter_names)
from tiny_nets import TinyCls, TinySeg


def two_terms(target):
    def terms(logits):
        pseudo = logits.detach().argmax(1)
        return [F.cross_entropy(logits, target, reduction="none"), F.cross_entropy(logits, pseudo, reduction="none")]
    return terms


def meta_ce(target):
    return lambda logits: F.cross_entropy(logits, target)


def fd_meta_grad(model, x, y, xm, ym, lr, term, index, h=1e-4):
    """Central finite difference of L_meta(θ'(ε)) w.r.t. one ε entry, all in float64."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}

    def f(e_val):
        bufs = {n: b.clone() for n, b in model.named_buffers()}
        logits = functional_call(model, {**params, **bufs}, (x,))
        losses = two_terms(y)(logits)
        eps = [torch.zeros_like(l) for l in losses]
        eps[term][index] = e_val
        total = sum((e * l).sum() for e, l in zip(eps, losses))
        grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
        new = {n: p - lr * (0 if g is None else g) for (n, p), g in zip(params.items(), grads)}
        bufs = {n: b.clone() for n, b in model.named_buffers()}
        return F.cross_entropy(functional_call(model, {**new, **bufs}, (xm,)), ym).item()

    return (f(h) - f(-h)) / (2 * h)


@pytest.mark.parametrize("kind", ["cls", "seg"])
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_meta_gradient_matches_finite_differences(kind, impl):
    torch.manual_seed(0)
    if kind == "cls":
        model = TinyCls().double().train()
        x, y = torch.randn(6, 3, 5, 5, dtype=torch.float64), torch.randint(0, 4, (6,))
        xm, ym = torch.randn(4, 3, 5, 5, dtype=torch.float64), torch.randint(0, 4, (4,))
        indices = [(0,), (3,), (5,)]
    else:
        model = TinySeg().double().train()
        x, y = torch.randn(2, 1, 6, 6, dtype=torch.float64), torch.randint(0, 2, (2, 6, 6))
        xm, ym = torch.randn(2, 1, 6, 6, dtype=torch.float64), torch.randint(0, 2, (2, 6, 6))
        indices = [(0, 1, 2), (1, 4, 4), (1, 0, 5)]
    lr = 0.5
    out = meta_weights(model, x, two_terms(y), xm, meta_ce(ym), lr=lr, impl=impl)
    for term in (0, 1):
        for idx in indices:
            expected = fd_meta_grad(model, x, y, xm, ym, lr, term, idx)
            got = float(out.meta_grads[term][idx])
            assert got == pytest.approx(expected, rel=1e-4, abs=1e-9), (term, idx)


def _network_cases(name: str):
    """A small network of every kind medl2b trains, with a batch and a meta batch."""
    if name == "unetpp":
        return (build_unetpp(features=(4, 4, 8, 8, 16, 4)), torch.randn(2, 1, 32, 32), torch.randint(0, 2, (2, 32, 32)),
                torch.randn(2, 1, 32, 32), torch.randint(0, 2, (2, 32, 32)))
    if name == "unetpp-lite0":  # the pretrained encoder's UNet++ (random weights here: the numbers are what matter)
        return (build_unetpp_lite0(features=(4, 4, 8, 8, 16, 4), in_channels=3, pretrained=None),
                torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64)), torch.randn(2, 3, 64, 64),
                torch.randint(0, 2, (2, 64, 64)))
    width = 0.125 if name == "resnet50" else 1.0
    model = build_classifier(name, num_classes=3, image_size=32, width=width, pretrained=None)
    return model, torch.rand(4, 3, 32, 32), torch.randint(0, 3, (4,)), torch.rand(3, 3, 32, 32), torch.randint(0, 3, (3,))


@pytest.mark.parametrize("name", ["unetpp", "unetpp-lite0", *backbone_names()])
def test_fast_equals_reference_with_batchnorm_for_every_network(name):
    torch.manual_seed(1)
    for model, x, y, xm, ym in [_network_cases(name)]:
        model = model.double().train()
        x, xm = x.double(), xm.double()
        ref_model = copy.deepcopy(model)
        ref = meta_weights(ref_model, x, two_terms(y), xm, meta_ce(ym), lr=0.1, impl="reference")
        sum((w * l).sum() for w, l in zip(ref.weights, ref.losses)).backward()
        for impl, lean in (("fast", True), ("fast-lowmem", True), ("fast", False)):
            m = copy.deepcopy(model)
            fast = meta_weights(m, x, two_terms(y), xm, meta_ce(ym), lr=0.1, impl=impl, lean=lean)
            for a, b in zip(fast.meta_grads, ref.meta_grads):
                assert torch.allclose(a, b, rtol=1e-6, atol=1e-12 * float(b.abs().max()) + 1e-18), impl
            for a, b in zip(fast.weights, ref.weights):
                assert torch.allclose(a, b, rtol=1e-6, atol=1e-9), impl
            # the real step's gradients and the BN statistics agree as well
            sum((w * l).sum() for w, l in zip(fast.weights, fast.losses)).backward()
            for (n, p), (_, q) in zip(m.named_parameters(), ref_model.named_parameters()):
                assert (p.grad is None) == (q.grad is None), (impl, n)
                if p.grad is not None:
                    assert torch.allclose(p.grad, q.grad, rtol=1e-6, atol=1e-12), (impl, n)
            for (n, b), (_, c) in zip(m.named_buffers(), ref_model.named_buffers()):
                assert torch.allclose(b.double(), c.double()), (impl, n)


class LayerZoo(nn.Module):
    """Every layer kind the hand-written tangent rules cover, in their awkward variants."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect")
        self.inorm = nn.InstanceNorm2d(4)                 # no affine parameters
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.down = nn.Conv2d(8, 6, 3, stride=2, bias=False, groups=2)
        self.bn = nn.BatchNorm2d(6, momentum=None)        # cumulative running average
        self.relu = nn.ReLU(inplace=True)
        self.up = nn.ConvTranspose2d(6, 3, 3, stride=2, padding=1, output_padding=1)
        self.inorm_affine = nn.InstanceNorm2d(3, affine=True)
        self.head = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        h = self.pool(self.act(self.inorm(self.conv(x))))
        h = F.pad(h, (1, 1, 1, 1), mode="constant", value=0.5)
        h = torch.cat([h, F.pad(h * 2, (0, 0, 0, 0), mode="replicate")], 1)   # an op-made dual into a conv
        h = self.relu(self.bn(self.down(h)))
        return self.head(torch.tanh(self.inorm_affine(self.up(h))))


def test_hand_written_tangent_rules_equal_the_reference():
    torch.manual_seed(5)
    model = LayerZoo().double().train()
    with torch.no_grad():  # non-trivial affine parameters
        model.inorm_affine.weight.uniform_(0.5, 1.5)
        model.inorm_affine.bias.uniform_(-0.5, 0.5)
    x, y = torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.randint(0, 2, (3, 8, 8))
    xm, ym = torch.randn(2, 2, 8, 8, dtype=torch.float64), torch.randint(0, 2, (2, 8, 8))
    ref_model = copy.deepcopy(model)
    ref = meta_weights(ref_model, x, two_terms(y), xm, meta_ce(ym), lr=0.3, impl="reference")
    sum((w * l).sum() for w, l in zip(ref.weights, ref.losses)).backward()
    m = copy.deepcopy(model)
    fast = meta_weights(m, x, two_terms(y), xm, meta_ce(ym), lr=0.3, impl="fast", lean=True)
    for a, b in zip(fast.meta_grads, ref.meta_grads):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-12 * float(b.abs().max())), "tangents differ"
    sum((w * l).sum() for w, l in zip(fast.weights, fast.losses)).backward()
    for (n, p), (_, q) in zip(m.named_parameters(), ref_model.named_parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-7, atol=1e-13), n
    for (n, b), (_, c) in zip(m.named_buffers(), ref_model.named_buffers()):
        assert torch.equal(b, c), n
    assert all("forward" not in vars(mod) for mod in m.modules()), "the layers were not restored"


@pytest.mark.parametrize("impl", ["reference", "fast", "fast-lowmem"])
def test_batchnorm_statistics_move_exactly_as_one_plain_step(impl):
    torch.manual_seed(2)
    model = build_resnet50(num_classes=3, width=0.125).train()
    plain = copy.deepcopy(model)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))
    xm, ym = torch.randn(3, 3, 32, 32), torch.randint(0, 3, (3,))
    F.cross_entropy(plain(x), y).backward()  # one plain CE step's forward
    meta_weights(model, x, two_terms(y), xm, meta_ce(ym), lr=0.1, impl=impl)
    n_checked = 0
    for (n, b), (_, c) in zip(model.named_buffers(), plain.named_buffers()):
        if n.endswith("num_batches_tracked"):
            assert int(b) == int(c) == 1, n
        else:
            assert torch.allclose(b, c, atol=1e-6), n
        n_checked += 1
    assert n_checked > 100


def test_all_zero_weights_skip():
    ws, skipped = normalise_weights([torch.tensor([-1.0, 0.0]), torch.tensor([-0.5, -2.0])], mode="batch")
    assert skipped and all(float(w.abs().sum()) == 0 for w in ws)
    ws, skipped = normalise_weights([torch.tensor([1.0, -1.0]), torch.tensor([3.0, 0.0])], mode="batch")
    assert not skipped
    assert torch.allclose(ws[0], torch.tensor([0.25, 0.0])) and torch.allclose(ws[1], torch.tensor([0.75, 0.0]))


def test_element_normalisation_sums_to_one_per_element():
    ga, gb = torch.tensor([1.0, -1.0, 0.0, 2.0]), torch.tensor([3.0, 2.0, -1.0, 2.0])
    (a, b), skipped = normalise_weights([ga, gb], mode="element")
    assert not skipped
    assert torch.allclose((a + b) * 4, torch.ones(4))
    assert torch.allclose(a * 4, torch.tensor([0.25, 0.0, 0.5, 0.5]))


def test_meta_scope_last_only_uses_the_head():
    torch.manual_seed(3)
    model = build_unetpp(features=(4, 4, 8, 8, 16, 4)).double().train()
    x, y = torch.randn(2, 1, 32, 32, dtype=torch.float64), torch.randint(0, 2, (2, 32, 32))
    xm, ym = torch.randn(2, 1, 32, 32, dtype=torch.float64), torch.randint(0, 2, (2, 32, 32))
    head = head_parameter_names(model)
    assert head == ["net.final_conv_0_4.weight", "net.final_conv_0_4.bias"]
    fast = meta_weights(copy.deepcopy(model), x, two_terms(y), xm, meta_ce(ym), lr=0.1, impl="fast", param_names=head)
    ref = meta_weights(copy.deepcopy(model), x, two_terms(y), xm, meta_ce(ym), lr=0.1, impl="reference",
                       param_names=head)
    full = meta_weights(copy.deepcopy(model), x, two_terms(y), xm, meta_ce(ym), lr=0.1, impl="fast")
    for a, b, c in zip(fast.meta_grads, ref.meta_grads, full.meta_grads):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-15)
        assert not torch.allclose(a, c)


@pytest.mark.parametrize("net", ["unetpp", "resnet50"])
def test_hand_written_rules_run_under_bf16_autocast(net):
    """Trainer runs the step under autocast on CUDA; CPU autocast exercises the same mixed dtypes."""
    torch.manual_seed(6)
    if net == "unetpp":
        model = build_unetpp(features=(4, 4, 8, 8, 16, 4)).train()
        x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 2, (2, 32, 32))
        xm, ym = torch.randn(2, 1, 32, 32), torch.randint(0, 2, (2, 32, 32))
    else:
        model = build_resnet50(num_classes=3, width=0.125).train()
        x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))
        xm, ym = torch.randn(3, 3, 32, 32), torch.randint(0, 3, (3,))
    grads = {}
    for lean in (True, False):
        m = copy.deepcopy(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = meta_weights(m, x, two_terms(y), xm, lambda z: F.cross_entropy(z.float(), ym), lr=0.1,
                               impl="fast", lean=lean)
        sum((w * l.float()).sum() for w, l in zip(out.weights, out.losses)).backward()
        grads[lean] = torch.cat([g.flatten() for g in out.meta_grads]).float()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)
    cosine = F.cosine_similarity(grads[True], grads[False], dim=0)
    assert cosine > 0.98, float(cosine)


@pytest.mark.parametrize("name", ["dice", "ce+dice"])
def test_dice_meta_objective_fast_equals_reference(name):
    """The Dice meta objective (segmentation default) gives the same weights in both implementations."""
    from medl2b.meta.methods import make_loss_terms
    from medl2b.meta.losses import meta_objective

    torch.manual_seed(0)
    model = build_unetpp(features=[4, 4, 8, 8, 16, 4], num_classes=3).double()
    x, xm = torch.randn(2, 1, 32, 32).double(), torch.randn(2, 1, 32, 32).double()
    y, ym = torch.randint(0, 3, (2, 32, 32)), torch.zeros(2, 32, 32, dtype=torch.long)
    ym[:, 10:14, 12:20] = 1  # small structures, as in the hippocampus
    ym[:, 20:23, 5:9] = 2
    out = {impl: meta_weights(copy.deepcopy(model), x, make_loss_terms(y, n_terms=2), xm, meta_objective(name, ym),
                              lr=0.1, impl=impl) for impl in ("reference", "fast")}
    for ref, fast in zip(out["reference"].meta_grads, out["fast"].meta_grads):
        assert torch.allclose(ref, fast, rtol=1e-9, atol=1e-12 * float(ref.abs().max()))
    dice_only = meta_objective("dice", ym)(torch.zeros(2, 3, 32, 32, dtype=torch.float64))
    ce_only = meta_objective("ce", ym)(torch.zeros(2, 3, 32, 32, dtype=torch.float64))
    assert 0.0 < float(dice_only) < 1.0 and float(ce_only) == pytest.approx(float(torch.log(torch.tensor(3.0))))
    with pytest.raises(ValueError, match="needs segmentation labels"):
        meta_objective("dice", torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("impl", ["fast", "fast-lowmem"])
def test_reused_meta_gradient_weighs_a_new_batch_like_the_fresh_one_would(impl):
    """``meta_grad`` (the amortised step) skips the meta forward and backward: with the same v it
    gives the fresh step's weights on any batch, and without a meta batch at all."""
    torch.manual_seed(5)
    model = TinySeg().double().train()
    x1, x2 = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.randn(3, 1, 8, 8, dtype=torch.float64)
    y1, y2 = torch.randint(0, 2, (3, 8, 8)), torch.randint(0, 2, (3, 8, 8))
    xm, ym = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.randint(0, 2, (2, 8, 8))
    first = meta_weights(copy.deepcopy(model), x1, two_terms(y1), xm, meta_ce(ym), lr=0.1, impl=impl)
    assert first.fresh and isinstance(first.meta_loss, float) and len(first.meta_grad) == len(list(model.parameters()))
    fresh = meta_weights(copy.deepcopy(model), x2, two_terms(y2), xm, meta_ce(ym), lr=0.1, impl=impl)
    reused = meta_weights(copy.deepcopy(model), x2, two_terms(y2), None, None, lr=0.1, impl=impl,
                          meta_grad=first.meta_grad)
    assert not reused.fresh and reused.meta_loss is None
    for a, b in zip(reused.weights, fresh.weights):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-15)
    # a stale v (from other parameters) gives other weights: the reuse is not a no-op
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.3 * torch.randn_like(p))
    stale = meta_weights(copy.deepcopy(moved), x2, two_terms(y2), None, None, lr=0.1, impl=impl,
                         meta_grad=first.meta_grad)
    now = meta_weights(copy.deepcopy(moved), x2, two_terms(y2), xm, meta_ce(ym), lr=0.1, impl=impl)
    assert not torch.allclose(stale.meta_grads[0], now.meta_grads[0])
    with pytest.raises(ValueError, match="fast"):
        meta_weights(model, x2, two_terms(y2), xm, meta_ce(ym), lr=0.1, impl="reference", meta_grad=first.meta_grad)


class LayerZoo3d(nn.Module):
    """The 3-D layers of a volumetric UNet++ and their awkward variants (issue: voxel-wise L2B)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1)
        self.inorm = nn.InstanceNorm3d(4, affine=True)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.pool = nn.MaxPool3d(2)
        self.down = nn.Conv3d(4, 6, 3, stride=1, padding=1, bias=False, groups=2)
        self.bn = nn.BatchNorm3d(6)
        self.relu = nn.ReLU(inplace=True)
        self.up = nn.ConvTranspose3d(6, 3, 2, stride=2)
        self.head = nn.Conv3d(3 + 4, 2, 1)

    def forward(self, x):
        skip = self.act(self.inorm(self.conv(x)))
        h = self.relu(self.bn(self.down(self.pool(skip))))
        return self.head(torch.cat([self.up(h), skip], 1))


@pytest.mark.parametrize("net", ["zoo", "unetpp"])
def test_fast_step_equals_the_reference_in_3d(net):
    """Voxel-wise weights: conv3d, transposed conv3d, 3-D batch/instance norm and 3-D max pooling
    through the hand-written tangent rules give the double backward's numbers (float64)."""
    torch.manual_seed(11)
    if net == "zoo":
        model, shape, k = LayerZoo3d(), (2, 8, 8, 8), 2
    else:
        model, shape, k = build_unetpp(features=(2, 2, 4, 4, 8, 2), spatial_dims=3, num_classes=3), (1, 32, 16, 16), 3
    model = model.double().train()
    x, y = torch.randn(2, *shape, dtype=torch.float64), torch.randint(0, k, (2, *shape[1:]))
    xm, ym = torch.randn(2, *shape, dtype=torch.float64), torch.randint(0, k, (2, *shape[1:]))
    ref_model = copy.deepcopy(model)
    ref = meta_weights(ref_model, x, two_terms(y), xm, meta_ce(ym), lr=0.3, impl="reference")
    assert ref.weights[0].shape == (2, *shape[1:])  # one weight per voxel
    for impl in ("fast", "fast-lowmem"):
        fast = meta_weights(copy.deepcopy(model), x, two_terms(y), xm, meta_ce(ym), lr=0.3, impl=impl)
        for a, b in zip(fast.meta_grads, ref.meta_grads):
            assert torch.allclose(a, b, rtol=1e-7, atol=1e-12 * float(b.abs().max())), (net, impl)
        for a, b in zip(fast.weights, ref.weights):
            assert torch.allclose(a, b, rtol=1e-7, atol=1e-12), (net, impl)


def test_trusted_samples_keep_plain_ce_weights():
    """l2b (its trusted cases): a trusted sample's every pixel gets α = 1/N, β = 0; the others keep their meta weights
    (per-element normalisation) or share what is left (batch normalisation)."""
    from medl2b.meta.methods import trust_weights

    torch.manual_seed(0)
    grads = [torch.randn(3, 4, 4), torch.randn(3, 4, 4)]
    trusted = torch.tensor([False, True, False])
    (a, b), _ = normalise_weights(grads, mode="element")
    ta, tb = trust_weights([a, b], trusted, mode="element")
    n = a.numel()
    assert torch.allclose(ta[1], torch.full((4, 4), 1.0 / n)) and float(tb[1].abs().sum()) == 0.0
    assert torch.equal(ta[0], a[0]) and torch.equal(tb[2], b[2])
    assert torch.isclose((ta + tb).sum(), torch.tensor(1.0))
    (a, b), _ = normalise_weights(grads, mode="batch")
    ta, tb = trust_weights([a, b], trusted, mode="batch")
    assert torch.isclose((ta + tb).sum(), torch.tensor(1.0))
    left = float(a[0].sum() + b[0].sum() + a[2].sum() + b[2].sum())
    assert torch.allclose(ta[0], a[0] * (2 / 3) / left) and torch.allclose(tb[2], b[2] * (2 / 3) / left)


def test_smoothed_evidence_pools_neighbours():
    from medl2b.meta.step import smooth_evidence

    flat = torch.full((2, 6, 6), 0.3)
    assert torch.allclose(smooth_evidence([flat], 3)[0], flat)  # borders average inside the image only
    spike = torch.zeros(1, 5, 5)
    spike[0, 2, 2] = 9.0
    out = smooth_evidence([spike], 3)[0]
    assert torch.allclose(out[0, 1:4, 1:4], torch.ones(3, 3)) and float(out[0, 0].abs().sum()) == 0.0
    vol = torch.zeros(1, 3, 3, 3)
    vol[0, 1, 1, 1] = 27.0
    assert torch.allclose(smooth_evidence([vol], 3)[0][0, 1, 1, 1], torch.tensor(1.0))
    # a lone wrong-signed pixel in a region of agreeing evidence is outvoted: its split follows the region
    ga = torch.full((1, 5, 5), -1.0)
    gb = torch.full((1, 5, 5), 1.0)
    ga[0, 2, 2], gb[0, 2, 2] = 1.0, -1.0
    (a, _), _ = normalise_weights([ga, gb], mode="element")
    (sa, _), _ = normalise_weights([ga, gb], mode="element", smooth=3)
    assert float(a[0, 2, 2]) > 0 and float(sa[0, 2, 2]) == 0.0
    with pytest.raises(ValueError, match="odd"):
        smooth_evidence([flat], 2)
    with pytest.raises(ValueError, match="per-pixel"):
        smooth_evidence([torch.zeros(4)], 3)


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_smoothing_is_the_same_in_both_implementations(impl):
    torch.manual_seed(5)
    model = TinySeg().double().train()
    x, y = torch.randn(2, 1, 6, 6, dtype=torch.float64), torch.randint(0, 2, (2, 6, 6))
    xm, ym = torch.randn(2, 1, 6, 6, dtype=torch.float64), torch.randint(0, 2, (2, 6, 6))
    plain = meta_weights(copy.deepcopy(model), x, two_terms(y), xm, meta_ce(ym), lr=0.1, impl=impl, normalise="element")
    smooth = meta_weights(copy.deepcopy(model), x, two_terms(y), xm, meta_ce(ym), lr=0.1, impl=impl,
                          normalise="element", smooth=3)
    expected, _ = normalise_weights([-g for g in plain.meta_grads], mode="element", smooth=3)
    assert all(torch.allclose(w, e) for w, e in zip(smooth.weights, expected))
    assert not torch.allclose(smooth.weights[0], plain.weights[0])


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_pseudo_floor_removes_beta_below_the_confidence_floor(impl):
    """pseudo_floor: an element whose confidence is below the floor has a zero pseudo-label loss, no meta
    evidence for it and so β = 0; elements above the floor keep exactly the weights of the plain step."""
    from medl2b.meta.losses import weighted_losses
    from medl2b.meta.methods import get_method

    torch.manual_seed(7)
    model = TinySeg().double().train()
    x, y = torch.randn(2, 1, 6, 6, dtype=torch.float64), torch.randint(0, 2, (2, 6, 6))
    xm, ym = torch.randn(2, 1, 6, 6, dtype=torch.float64), torch.randint(0, 2, (2, 6, 6))
    with torch.no_grad():
        conf = torch.softmax(copy.deepcopy(model)(x), 1).amax(1)
    floor = float(conf.median())
    low = conf < floor
    assert low.any() and (~low).any()
    method = get_method("l2b", normalise="element")
    plain, losses0, m0 = weighted_losses(copy.deepcopy(model), method, x, y, xm, ym, lr=0.1, meta_impl=impl)
    gated, losses1, m1 = weighted_losses(copy.deepcopy(model), method, x, y, xm, ym, lr=0.1, meta_impl=impl,
                                         pseudo_floor=floor)
    assert float(losses1[1][low].abs().sum()) == 0.0 and float(m1.meta_grads[1][low].abs().sum()) == 0.0
    assert float(gated[1][low].abs().sum()) == 0.0
    assert torch.allclose(gated[0][~low], plain[0][~low]) and torch.allclose(gated[1][~low], plain[1][~low])
    assert torch.allclose(losses1[0], losses0[0])
    # α absorbs the pixel: where the given label helps the meta set it takes the whole element weight
    helps = low & (m1.meta_grads[0] < 0)
    assert helps.any() and torch.allclose(gated[0][helps], torch.full_like(gated[0][helps], 1.0 / y.numel()))


def test_pseudo_floor_with_flip_averaged_pseudo_labels_and_bad_values():
    from medl2b.meta.methods import make_loss_terms

    logits = torch.tensor([[2.0, 0.0], [0.1, 0.0]])  # confidences 0.88 and 0.52
    y = torch.tensor([1, 1])
    given, pseudo = make_loss_terms(y, n_terms=2, floor=0.6)(logits)
    assert float(pseudo[0]) > 0 and float(pseudo[1]) == 0.0 and float(given[1]) > 0
    pre = make_loss_terms(y, n_terms=2, pseudo=torch.tensor([0, 0]), confidence=torch.tensor([0.5, 0.9]), floor=0.6)
    assert [float(v) == 0.0 for v in pre(logits)[1]] == [True, False]
    with pytest.raises(ValueError, match="confidence"):
        make_loss_terms(y, n_terms=2, pseudo=torch.tensor([0, 0]), floor=0.6)(logits)
    with pytest.raises(ValueError, match="floor"):
        make_loss_terms(y, n_terms=2, floor=1.0)


def test_lean_rules_cover_every_heavy_layer_of_efficientnet_lite0():
    """The static-"same"-padding convolutions and ReLU6 of EfficientNet-Lite take the hand-written rules,
    not PyTorch's generic forward-mode ones (fast == reference is tested above)."""
    from medl2b.meta.jvp import lean_tangents

    model = build_classifier("efficientnet-lite0", num_classes=3, image_size=32, pretrained=None)
    heavy = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ReLU6, nn.BatchNorm2d))]
    assert len(heavy) > 100
    with lean_tangents(model):
        assert all("forward" in vars(m) for m in heavy)
    assert not any("forward" in vars(m) for m in heavy)
