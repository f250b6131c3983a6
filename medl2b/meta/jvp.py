"""Hand-written forward-mode rules for the layers that dominate the fast meta step.

``torch.autograd.forward_ad`` computes every tangent with differentiable operations.
When the same pass is also the training forward (``impl="fast"``), each tangent
operation that touches a parameter or an activation that requires grad is recorded
in the autograd graph and keeps its inputs alive until the real backward: the
tangent of every convolution saves a second copy of the layer's activations.
Normalisation and in-place activations also go through slow generic rules (a clone
per in-place ReLU, a chain of broadcasts per norm).

Inside :func:`lean_tangents`, convolutions, transposed convolutions, batch/instance
norms that use batch statistics and (leaky) ReLUs compute their primal output with
the ordinary functional op (recorded for the real backward, exactly as in a plain
step) and their tangent separately under ``torch.no_grad()`` from the textbook rules:

* conv (and a linear head):  ``ẏ = conv(ẋ, W) + conv(x, Ẇ) + ḃ``
* norm:  ``x̂ = (x − μ)/σ``, ``ẏ = γ̇ x̂ + ḃ + γ (ẋ − mean(ẋ) − x̂ · mean(ẋ x̂)) / σ``
  (means over the normalised dimensions; ``σ² = var + eps``, biased variance), which is
  the batch-norm backward formula applied to ``ẋ``: two fused kernels
* (leaky) ReLU: ``ẏ = ẋ · (1 if x > 0 else slope)`` (in place when the layer is); ReLU6 / hardtanh:
  ``ẏ = ẋ`` inside the clamp's range, else 0
* EfficientNet's static-"same"-padding convolution: its ``ZeroPad2d`` (the ``F.pad`` rule), then the
  convolution rule
* max pooling: the tangent at the argmax; ``F.pad``: the same pad of the tangent

then join them with ``forward_ad.make_dual``. Under autocast the primals are bf16 but the tangents stay
float32 (the tangent convolutions themselves run in bf16): see :func:`_join`. The tangents are the same numbers
(tested against the double-backward reference) and every other layer keeps PyTorch's
own rule.

Memory: a tangent must die with the layer that consumed it. Three things kept them
alive until the end of the pass, i.e. a second copy of the activations: tangent ops
recorded in the graph (above), generic ops that save their dual input for the backward
(``F.pad``, max pooling), and the primal of a dual made by an operation (``cat``, a
residual sum), which is a *view of the dual*: saving it saves the dual. Such primals
are re-issued through :class:`_Detached` (same storage and version counter, no view
link). Measured on UNet++: the memory held at the end of the dual forward equals
the plain forward's graph (``BENCHMARKS.md``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad as fwad

__all__ = ["lean_tangents"]

_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
_DECONV = {nn.ConvTranspose1d: F.conv_transpose1d, nn.ConvTranspose2d: F.conv_transpose2d,
           nn.ConvTranspose3d: F.conv_transpose3d}


class _Detached(torch.autograd.Function):
    """Identity for autograd whose output shares storage with, but is not a view of, its input."""

    @staticmethod
    def forward(ctx, x):
        return x.detach()

    @staticmethod
    def backward(ctx, grad):
        return grad


def _split(t: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Primal and tangent of a dual tensor.

    The primal of a dual made by an operation (cat, pooling, a residual sum) is a view of
    the dual itself, so saving it for the backward would keep the tangent alive until the
    end of the pass. Such primals are re-issued through :class:`_Detached`, which the
    autograd graph can save without holding on to the dual.
    """
    if t is None:
        return None, None
    primal, tangent = fwad.unpack_dual(t)
    if tangent is not None and primal._base is t:
        primal = _Detached.apply(primal)
    return primal, tangent


def _tangent_dtype(primal: torch.Tensor) -> torch.dtype:
    """float32 for a bf16 / float16 primal (autocast), else the primal's own dtype (see :func:`_join`)."""
    return torch.float32 if primal.dtype in (torch.bfloat16, torch.float16) else primal.dtype


def _join(primal: torch.Tensor, tangent: torch.Tensor | None) -> torch.Tensor:
    """The dual of a primal and its tangent. Under autocast the primal may be bf16; its tangent stays float32:
    rounded to bf16 between layers, a tangent loses the small differences the weights are made of (a UNet++
    after a few CE steps: weights' cosine with float64 0.33 with bf16 tangents, 0.996 with float32 ones;
    ``benchmarks/meta_precision.py``). The convolutions of the tangent still run in bf16 (autocast)."""
    if tangent is None:
        return primal
    return fwad.make_dual(primal, tangent.to(_tangent_dtype(primal)))


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a.add_(b)


def _bias_shape(bias: torch.Tensor, ndim: int) -> torch.Tensor:
    return bias.view(1, -1, *([1] * (ndim - 2)))


def _linear_layer(module: nn.Module, op, x: torch.Tensor, **kw) -> torch.Tensor:
    """conv / transposed conv / linear: bilinear in (x, W), plus a bias (on dim 1; a linear's on the last)."""
    x_p, x_t = _split(x)
    w_p, w_t = _split(module.weight)
    b_p, b_t = _split(module.bias)
    y = op(x_p, w_p, b_p, **kw)
    with torch.no_grad():
        y_t = None if x_t is None else op(x_t, w_p.detach(), None, **kw)
        if w_t is not None:
            y_t = _add(y_t, op(x_p.detach(), w_t, None, **kw))
        if y_t is not None:
            y_t = y_t.to(_tangent_dtype(y))  # the bias tangent is added in float32 under autocast
        if b_t is not None:
            bias_t = (b_t if op is F.linear else _bias_shape(b_t, y.dim())).to(_tangent_dtype(y))  # linear: last dim
            y_t = bias_t.expand_as(y).clone() if y_t is None else y_t.add_(bias_t)
    return _join(y, y_t)


def _conv(module, op):
    static_padding = getattr(module, "static_padding", None)  # TensorFlow "same", fixed at construction

    def forward(x):
        if static_padding is not None:  # a ZeroPad2d (the F.pad rule below) or an identity
            x = static_padding(x)
        kw = dict(stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups)
        if module.padding_mode != "zeros":  # padded explicitly (the F.pad rule below), then a valid conv
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
            kw["padding"] = 0
        return _linear_layer(module, op, x, **kw)
    return forward


def _deconv(module, op):
    def forward(x, output_size=None):
        pad = module._output_padding(x, output_size, module.stride, module.padding, module.kernel_size,
                                     len(module.kernel_size), module.dilation)
        return _linear_layer(module, op, x, stride=module.stride, padding=module.padding, output_padding=pad,
                             groups=module.groups, dilation=module.dilation)
    return forward


def _norm(module, instance: bool):
    original = module.forward

    def forward(x):
        x_p, x_t = _split(x)
        w_p, w_t = _split(module.weight)
        b_p, b_t = _split(module.bias)
        if x_t is None and w_t is None and b_t is None:
            return original(x)
        # primal: the module's own forward on primals (updates the (cloned) running statistics)
        y = _primal_call(module, original, x_p)
        with torch.no_grad():  # in one dtype: autocast may hand a bf16 input to an fp32 norm
            dtype = x_p.dtype if w_p is None else torch.promote_types(x_p.dtype, w_p.dtype)
            cast = (lambda t: None if t is None else t.detach().to(dtype))  # noqa: E731
            y_t = _norm_tangent(cast(x_p), cast(x_t), cast(w_p), cast(w_t), cast(b_t), module.eps, instance)
        return _join(y, y_t)
    return forward


def _norm_tangent(x, x_t, w, w_t, b_t, eps: float, instance: bool) -> torch.Tensor | None:
    """Tangent of ``y = w · x̂ + b`` with batch statistics (per channel, or per sample and channel).

    The map ``x → x̂`` has a symmetric Jacobian, so its JVP is its VJP: PyTorch's fused
    batch-norm backward kernel, fed the tangent as the output gradient. ``ẇ · x̂ + ḃ`` is a
    batch norm of ``x`` with ``ẇ`` and ``ḃ`` as affine parameters, which also yields the
    statistics. An instance norm is a batch norm of the ``(1, B·C, ...)`` reshape.
    """
    shape = x.shape
    if instance:
        b, c = shape[:2]
        x = x.reshape(1, b * c, *shape[2:])
        x_t = None if x_t is None else x_t.reshape(x.shape)
        w, w_t, b_t = (None if t is None else t.repeat(b) for t in (w, w_t, b_t))
    affine_t, mean, invstd = torch.native_batch_norm(x, w_t, b_t, None, None, True, 0.0, eps)
    y_t = affine_t if (w_t is not None or b_t is not None) else None
    if x_t is not None:
        dx = torch.ops.aten.native_batch_norm_backward(x_t.contiguous(), x, w, None, None, mean, invstd, True, eps,
                                                       [True, False, False])[0]
        y_t = _add(y_t, dx)
    return None if y_t is None else y_t.reshape(shape)


def _primal_call(module: nn.Module, original, x_p: torch.Tensor) -> torch.Tensor:
    """The module's forward with its parameters (dual inside ``functional_call``) seen as primals."""
    saved = {}
    for name in ("weight", "bias"):
        value = getattr(module, name, None)
        if isinstance(value, torch.Tensor):
            saved[name] = value
            module.__dict__[name] = fwad.unpack_dual(value).primal  # shadows the registered tensor
    try:
        return original(x_p)
    finally:
        for name in saved:
            del module.__dict__[name]


def _hardtanh(module):
    """ReLU6 and other clamps: ``ẏ = ẋ`` where ``min < x < max``, else 0."""
    original, inplace = module.forward, module.inplace
    lo, hi = float(module.min_val), float(module.max_val)

    def forward(x):
        x_p, x_t = _split(x)
        if x_t is None:
            return original(x)
        y = F.hardtanh(x_p, lo, hi, inplace=inplace)
        with torch.no_grad():  # y lies strictly inside (lo, hi) exactly where x does
            y_t = torch.ops.aten.hardtanh_backward(x_t, y.detach().to(x_t.dtype), lo, hi)
        return _join(y, y_t)
    return forward


def _relu(module, slope: float):
    original, inplace = module.forward, module.inplace

    def forward(x):
        x_p, x_t = _split(x)
        if x_t is None:
            return original(x)
        # in place when the layer is: the plain step keeps one buffer here, not two
        y = F.leaky_relu(x_p, slope, inplace=inplace) if slope else F.relu(x_p, inplace=inplace)
        with torch.no_grad():  # elementwise, so the JVP is the (fused) VJP kernel
            y_mask = y.detach().to(x_t.dtype)  # a bf16 primal (autocast) under a float32 tangent
            y_t = (torch.ops.aten.leaky_relu_backward(x_t, y_mask, slope, True) if slope
                   else torch.ops.aten.threshold_backward(x_t, y_mask, 0))
        return _join(y, y_t)  # outside no_grad: the dual must stay on the graph
    return forward


_POOL = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}


def _max_pool(module, op):
    original = module.forward

    def forward(x):
        x_p, x_t = _split(x)
        if x_t is None or module.return_indices:
            return original(x)
        y, idx = op(x_p, module.kernel_size, module.stride, module.padding, module.dilation,
                    ceil_mode=module.ceil_mode, return_indices=True)
        with torch.no_grad():  # the tangent of the maximum is the tangent at the argmax
            y_t = x_t.flatten(2).gather(2, idx.flatten(2)).view_as(y)
        return _join(y, y_t)
    return forward


_F_PAD = F.pad


def _pad(input, pad, mode="constant", value=None):  # noqa: A002 (F.pad's own signature)
    """``F.pad`` (linear in its input) on a dual: the primal pad saves a primal, not the dual."""
    x_p, x_t = _split(input)
    if x_t is None:
        return _F_PAD(input, pad, mode, value)
    y = _F_PAD(x_p, pad, mode, value)
    with torch.no_grad():  # a constant fills the primal only: its tangent is 0
        y_t = _F_PAD(x_t, pad, mode, 0.0 if mode == "constant" else None)
    return _join(y, y_t)


def _conv_op(module: nn.Module):
    """The functional op of a plain convolution, or of a subclass that only pads before it (EfficientNet's
    ``Conv2dStaticSamePadding``); ``None`` for any other subclass (its forward may do anything)."""
    kind = type(module)
    if kind in _CONV:
        return _CONV[kind]
    base = next((c for c in _CONV if isinstance(module, c)), None)
    pad = getattr(module, "static_padding", None)
    if base is not None and (isinstance(pad, (nn.ZeroPad2d, nn.Identity)) or type(pad).__name__ == "Identity"):
        return _CONV[base]
    return None


def _rule(module: nn.Module):
    kind = type(module)
    if kind in _POOL:
        return _max_pool(module, _POOL[kind])
    conv = _conv_op(module)
    if conv is not None:
        return _conv(module, conv)
    if kind in _DECONV:
        return _deconv(module, _DECONV[kind])
    if kind is nn.Linear:  # a classifier's head: its tangent in float32 under autocast, as every other layer's
        return lambda x: _linear_layer(module, F.linear, x)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or module.running_mean is None):
        return _norm(module, instance=False)
    if isinstance(module, nn.modules.instancenorm._InstanceNorm) and (module.training or not module.track_running_stats):
        return _norm(module, instance=True)
    if kind is nn.ReLU:
        return _relu(module, 0.0)
    if kind in (nn.ReLU6, nn.Hardtanh):
        return _hardtanh(module)
    if kind is nn.LeakyReLU and module.negative_slope > 0:
        return _relu(module, module.negative_slope)
    return None


@contextmanager
def lean_tangents(model: nn.Module) -> Iterator[None]:
    """Within the block, the model's heavy layers use the rules above (see the module docstring)."""
    patched = []
    for module in model.modules():
        rule = _rule(module)
        if rule is not None:
            module.forward = rule
            patched.append(module)
    # F.pad is called as a function (MONAI's UpCat), so its rule replaces the function for the
    # duration of the pass. (A TorchFunctionMode would be the tidy way, but with one active, a
    # torchrun/DDP process aborted at exit in ~1 of 3 runs: "terminate called without an active
    # exception".)
    F.pad = _pad
    try:
        yield
    finally:
        F.pad = _F_PAD
        for module in patched:
            del module.forward
