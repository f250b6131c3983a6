"""Where the precision of the L2B meta step goes under mixed precision (issue 38), on the CPU.

    OMP_NUM_THREADS=1 python benchmarks/meta_precision.py [--nets unetpp2d,unetpp3d,resnet50,efficientnet-lite0]
                                                          [--resnet-width 0.25] [--warmup N] [--groups]

For each registered network (UNet++ 2-D and 3-D, and every classification backbone of
``medl2b.models.backbone_names()``), at initialisation or after ``--warmup`` plain CE steps (SGD, lr 0.05,
momentum 0.9; a third of them for the 3-D UNet++) on a learnable synthetic task with 40 % wrong labels
(classification: a smooth colour prototype per class under 88 % uniform noise; segmentation: a brighter box
on Gaussian noise, a wrong label map being another image's box), one fast meta step (``meta_weights(..., impl="fast")``, two loss
terms, pseudo-labels fixed beforehand) is taken on one batch in float64 (the reference: the fast step is
exact there, ``tests/test_meta_step.py``) and in each precision below, on a copy of the same network:

* ``float32``: no autocast;
* ``bf16 (meta_amp)``: the step under ``torch.autocast("cpu", dtype=torch.bfloat16)`` as ``meta_amp`` runs it
  since issue 38: ``v = ∇_θ L_meta`` in float32, the forward-mode pass in bf16 with float32 tangents;
* ``bf16 v, bf16 tangents``: the step before issue 38 (``v`` from a bf16 meta forward and backward, every
  layer's tangent rounded to its bf16 primal);
* ``bf16 v, float32 tangents`` and ``float32 v, bf16 tangents``: one of the two changes alone;
* ``float64, bf16 v``: the float64 forward-mode pass weighed with the bf16 ``v``: only ``v`` is bf16;
* ``tf32 (emulated)``: float32, with the inputs of every 2-D convolution (and their gradients) rounded to
  TF32's 10-bit mantissa: what a "float32" meta step computes on CUDA, where cuDNN's TF32 is on by default;
* ``bf16, BN eval``: the ``bf16 (meta_amp)`` step with batch norms on running statistics (reference: float64,
  also in eval mode).

Each row gives the cosine and the Spearman rank correlation (ties averaged) of the weights and of the raw
meta gradients ``∂L_meta/∂ε`` with the float64 ones. ``--groups`` adds, per parameter group (the first two
parts of the parameter names), the group's share ``|c_g| / |Σ_g c_g|`` of the float64 meta gradient, where
``c_g,i = −η ⟨v_g, ∇_{θ_g} ℓ_i⟩`` (``v`` restricted to the group), the cosine of the group's ``v_g`` in bf16
(a bf16 meta backward) with float64, and the cosine of its contribution (bf16 ``v_g``, the bf16 forward-mode pass
with float32 tangents) with the float64 one. Sizes are small (seconds to two minutes per network on one thread).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

import medl2b.meta.jvp as jvp
from medl2b.meta import meta_objective, meta_weights
from medl2b.meta.methods import make_loss_terms
from medl2b.models import backbone_names, build_classifier, build_unetpp

SEG = {"unetpp2d": {"dims": 2, "features": (8, 8, 16, 16, 32, 8), "batch": 4, "size": 64},
       "unetpp3d": {"dims": 3, "features": (4, 4, 8, 8, 16, 4), "batch": 2, "size": 32}}
CLS = {"batch": 16, "size": 64, "classes": 8}
PRETRAINED = {"efficientnet-lite0": "imagenet"}  # backbones whose packaged ImageNet weights are loaded
VARIANTS = ("float32", "bf16 (meta_amp)", "bf16 v, bf16 tangents", "bf16 v, float32 tangents",
            "float32 v, bf16 tangents", "float64, bf16 v", "tf32 (emulated)", "bf16, BN eval")


def _batch(name: str, n: int, gen: torch.Generator, protos: torch.Tensor, clean: bool = False):
    """A batch ``(x, y)`` of the synthetic task (see the module docstring); ``clean``: no wrong labels."""
    wrong = torch.zeros(n, dtype=torch.bool) if clean else torch.rand(n, generator=gen) < 0.4
    if name not in SEG:
        y = torch.randint(0, CLS["classes"], (n,), generator=gen)
        x = 0.12 * protos[y] + 0.88 * torch.rand(n, 3, CLS["size"], CLS["size"], generator=gen)
        return x, torch.where(wrong, torch.randint(0, CLS["classes"], (n,), generator=gen), y)
    spec = SEG[name]
    shape = (spec["size"],) * spec["dims"]
    y = torch.zeros(n, *shape, dtype=torch.long)
    for i in range(n):
        corner = torch.randint(0, spec["size"] // 2, (spec["dims"],), generator=gen).tolist()
        y[(i, *(slice(c, c + spec["size"] * 3 // 8) for c in corner))] = 1
    x = torch.randn(n, 1, *shape, generator=gen) + y[:, None].float()
    return x, torch.where(wrong.view(-1, *[1] * spec["dims"]), y.roll(1, 0), y)


def network_case(name: str, *, resnet_width: float = 0.25, warmup: int = 0, seed: int = 0):
    """A small network of the kind ``name`` after ``warmup`` CE steps, a training batch and a clean meta batch,
    with fixed pseudo-labels.

    Returns:
        ``(model, x, y, xm, ym, pseudo)``: the float32 network in train mode; ``x`` ``(B, C, *S)``,
        labels ``y`` ``(B,)`` or ``(B, *S)``, the meta batch likewise, pseudo-labels of ``y``'s shape
        (argmax of the float32 forward, so every precision weighs the same two terms).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    protos = F.interpolate(torch.rand(CLS["classes"], 3, 4, 4, generator=gen), size=(CLS["size"],) * 2,
                           mode="bilinear")
    if name in SEG:
        spec = SEG[name]
        model, n = build_unetpp(features=spec["features"], spatial_dims=spec["dims"]), spec["batch"]
    else:
        width = resnet_width if name == "resnet50" else 1.0
        model = build_classifier(name, num_classes=CLS["classes"], image_size=CLS["size"], width=width,
                                 pretrained=PRETRAINED.get(name))
        n = CLS["batch"]
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(warmup // 3 if name == "unetpp3d" else warmup):
        x, y = _batch(name, n, gen, protos)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    (x, y), (xm, ym) = _batch(name, n, gen, protos), _batch(name, n, gen, protos, clean=True)
    with torch.no_grad():
        pseudo = copy.deepcopy(model)(x).argmax(1)
    return model, x, y, xm, ym, pseudo


@contextlib.contextmanager
def bf16_tangents():
    """Every tangent rounded to its primal's dtype, as :mod:`medl2b.meta.jvp` did before issue 38."""
    keep = jvp._tangent_dtype
    jvp._tangent_dtype = lambda primal: primal.dtype
    try:
        yield
    finally:
        jvp._tangent_dtype = keep


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """Round float32 to TF32 (10 explicit mantissa bits, to nearest even); other dtypes pass through."""
    if t.dtype != torch.float32:
        return t
    bits = t.contiguous().view(torch.int32)
    bits = (bits + 0x0FFF + ((bits >> 13) & 1)) & ~0x1FFF
    return bits.view(torch.float32)


class _RoundTF32(torch.autograd.Function):
    """TF32 rounding in the forward and of the gradient in the backward (a tensor-core convolution's inputs)."""

    @staticmethod
    def forward(ctx, t):
        return _tf32(t)

    @staticmethod
    def backward(ctx, grad):
        return _tf32(grad)


_CONV2D = F.conv2d


def _tf32_conv2d(x, w, b=None, *args, **kwargs):
    return _CONV2D(_RoundTF32.apply(x), _RoundTF32.apply(w), b, *args, **kwargs)


@contextlib.contextmanager
def emulated_tf32():
    """Every ``F.conv2d`` (the modules' and the tangent rules') with TF32-rounded inputs, for the block."""
    F.conv2d, jvp._CONV[nn.Conv2d] = _tf32_conv2d, _tf32_conv2d
    try:
        yield
    finally:
        F.conv2d, jvp._CONV[nn.Conv2d] = _CONV2D, _CONV2D


def meta_step(case, dtype: torch.dtype, *, bf16: bool = False, v=None, eval_norm: bool = False):
    """One fast meta step on a copy of the case's network in ``dtype`` (under CPU bf16 autocast if ``bf16``).

    Returns:
        The :class:`~medl2b.meta.MetaWeights` (``meta_grad`` holds the ``v`` used).
    """
    model, x, y, xm, ym, pseudo = case
    net = copy.deepcopy(model).to(dtype).train(not eval_norm)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        return meta_weights(net, x.to(dtype), make_loss_terms(y, n_terms=2, pseudo=pseudo), xm.to(dtype),
                            meta_objective("ce", ym), lr=0.01, impl="fast",
                            meta_grad=None if v is None else [t.to(dtype) for t in v])


def bf16_meta_grad(case) -> list[torch.Tensor]:
    """``v = ∇_θ L_meta`` from a meta forward and backward under bf16 autocast (float32 parameters, so the
    gradients are float32 tensors carrying bf16's rounding), one per trainable parameter."""
    model, _x, _y, xm, ym, _pseudo = case
    net = copy.deepcopy(model)
    params = [p for p in net.parameters() if p.requires_grad]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = meta_objective("ce", ym)(net(xm))
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]


def flat(tensors) -> torch.Tensor:
    """Concatenate detached tensors as one float64 vector."""
    return torch.cat([t.detach().double().flatten() for t in tensors])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(a @ b) / (na * nb)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two vectors (ties get their average rank)."""
    return float(spearmanr(a.numpy(), b.numpy()).statistic)


def agreement(out, ref) -> dict:
    """Cosine and rank correlation of weights and meta gradients of ``out`` with ``ref``."""
    w, w0, g, g0 = flat(out.weights), flat(ref.weights), flat(out.meta_grads), flat(ref.meta_grads)
    return {"w_cos": cosine(w, w0), "w_rank": rank_correlation(w, w0),
            "g_cos": cosine(g, g0), "g_rank": rank_correlation(g, g0)}


def measure(name: str, *, resnet_width: float = 0.25, warmup: int = 0) -> dict:
    """Every variant of :data:`VARIANTS` against float64, for one network."""
    case = network_case(name, resnet_width=resnet_width, warmup=warmup)
    ref = meta_step(case, torch.float64)
    v_bf16 = bf16_meta_grad(case)
    with emulated_tf32():
        tf32 = meta_step(case, torch.float32)
    with bf16_tangents():
        before = meta_step(case, torch.float32, bf16=True, v=v_bf16)
        tangents_only = meta_step(case, torch.float32, bf16=True)
    rows = {"float32": agreement(meta_step(case, torch.float32), ref),
            "bf16 (meta_amp)": agreement(meta_step(case, torch.float32, bf16=True), ref),
            "bf16 v, bf16 tangents": agreement(before, ref),
            "bf16 v, float32 tangents": agreement(meta_step(case, torch.float32, bf16=True, v=v_bf16), ref),
            "float32 v, bf16 tangents": agreement(tangents_only, ref),
            "float64, bf16 v": agreement(meta_step(case, torch.float64, v=v_bf16), ref),
            "tf32 (emulated)": agreement(tf32, ref)}
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in case[0].modules())
    if has_bn:
        rows["bf16, BN eval"] = agreement(meta_step(case, torch.float32, bf16=True, eval_norm=True),
                                          meta_step(case, torch.float64, eval_norm=True))
    return {"case": case, "ref": ref, "v_bf16": v_bf16, "rows": rows}


def group_contributions(result: dict, depth: int = 2) -> list[dict]:
    """Per parameter group: share of the float64 meta gradient, bf16 ``v_g`` and contribution cosines."""
    case, ref, v_bf16 = result["case"], result["ref"], result["v_bf16"]
    names = [n for n, p in case[0].named_parameters() if p.requires_grad]
    group_of = [".".join(n.split(".")[:depth]) for n in names]
    total = flat(ref.meta_grads)
    rows = []
    for group in dict.fromkeys(group_of):
        mask = [g == group for g in group_of]
        v64 = [t if m else torch.zeros_like(t) for t, m in zip(ref.meta_grad, mask)]
        vbf = [t if m else torch.zeros_like(t) for t, m in zip(v_bf16, mask)]
        c64 = flat(meta_step(case, torch.float64, v=v64).meta_grads)
        cbf = flat(meta_step(case, torch.float32, bf16=True, v=vbf).meta_grads)
        rows.append({"group": group, "share": float(c64.norm() / total.norm()),
                     "v_cos": cosine(flat(t for t, m in zip(v_bf16, mask) if m),
                                     flat(t for t, m in zip(ref.meta_grad, mask) if m)),
                     "contribution_cos": cosine(cbf, c64)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default=",".join(["unetpp2d", "unetpp3d", *backbone_names()]))
    ap.add_argument("--resnet-width", type=float, default=0.25)
    ap.add_argument("--warmup", type=int, default=0, help="plain CE steps before the meta step (0: at initialisation)")
    ap.add_argument("--groups", action="store_true", help="per-parameter-group contributions (bf16 vs float64)")
    args = ap.parse_args(argv)
    print("| network | precision | weights cosine | weights rank corr. | meta-grad cosine | meta-grad rank corr. |")
    print("|---|---|---|---|---|---|")
    groups = {}
    for name in args.nets.split(","):
        start = time.perf_counter()
        result = measure(name, resnet_width=args.resnet_width, warmup=args.warmup)
        label = f"{name} (width {args.resnet_width:g})" if name == "resnet50" else name
        if name in PRETRAINED:
            label += f" ({PRETRAINED[name]})"
        for variant, r in result["rows"].items():
            print(f"| {label} | {variant} | {r['w_cos']:.4f} | {r['w_rank']:.4f} | {r['g_cos']:.4f} | "
                  f"{r['g_rank']:.4f} |", flush=True)
        if args.groups:
            groups[label] = group_contributions(result)
        print(f"<!-- {name}: {time.perf_counter() - start:.1f} s -->", flush=True)
    for label, rows in groups.items():
        print(f"\n{label}: per parameter group (float64 share of the meta gradient; bf16 vs float64 cosines)")
        print("| group | share | v_g cosine | contribution cosine |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['group']} | {r['share']:.3f} | {r['v_cos']:.4f} | {r['contribution_cos']:.4f} |")


if __name__ == "__main__":
    main()
