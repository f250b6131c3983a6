"""One training step of any method as a module, so that DDP sees the whole step as one forward.

:class:`StepModule` wraps :func:`medl2b.meta.losses.weighted_losses` (the one code path of every
method); ``DistributedDataParallel`` then averages the gradients of its backward across processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from medl2b.meta.losses import weighted_losses
from medl2b.meta.methods import Method

__all__ = ["StepModule"]


class StepModule(nn.Module):
    """The weighted loss of one step as a module: ``forward`` returns ``(loss, weights, losses, meta)``.

    ``loss = Σ_k (weights[k] * losses[k]).sum()`` is the scalar to back-propagate.
    Wrapping this module (not the bare network) in DDP makes the meta step part of
    DDP's forward, so the real step's backward is the one DDP synchronises.

    The amortised step: ``forward(..., refresh=False)`` weighs the batch with the ``v`` of the
    last refreshed meta step (held here, detached) instead of a new meta batch; warm-up steps
    drop it. The trainer refreshes on every ``meta_every``-th step of an epoch, the first included,
    so a run resumed at an epoch boundary recomputes exactly what the uninterrupted one did.
    """

    def __init__(self, net: nn.Module, method: Method, *, bootstrap_beta: float = 0.8, meta_impl: str = "fast",
                 param_names: Sequence[str] | None = None, pseudo_tta: bool = False,
                 reduce_meta_grad: Callable[[list[torch.Tensor]], None] | None = None, meta_loss: str = "ce",
                 meta_smooth: int = 1, pseudo_floor: float = 0.0):
        super().__init__()
        self.net = net
        self.method = method
        self.options = {"bootstrap_beta": bootstrap_beta, "meta_impl": meta_impl, "param_names": param_names,
                        "pseudo_tta": pseudo_tta, "reduce_meta_grad": reduce_meta_grad, "meta_loss": meta_loss,
                        "meta_smooth": meta_smooth, "pseudo_floor": pseudo_floor}
        self._meta_grad: list[torch.Tensor] | None = None

    def forward(self, x, y, xm=None, ym=None, *, lr: float, warm: bool = False, refresh: bool = True,
                trusted: torch.Tensor | None = None):
        reuse = None if (refresh or warm) else self._meta_grad
        if not refresh and reuse is None and self.method.uses_meta and not warm:
            raise ValueError("refresh=False before any meta step: there is no v to reuse")
        weights, losses, meta = weighted_losses(self.net, self.method, x, y, xm, ym, lr=lr, warm=warm,
                                                meta_grad=reuse, trusted=trusted, **self.options)
        self._meta_grad = None if meta is None else meta.meta_grad
        loss = sum((w * l.float()).sum() for w, l in zip(weights, losses))
        return loss, weights, losses, meta

    def meta_grad_state(self) -> list[torch.Tensor] | None:
        """The reused meta gradient ``v`` (one tensor per weighed parameter), copied to the CPU; None before any
        meta step or after a warm-up step."""
        return None if self._meta_grad is None else [t.detach().cpu().clone() for t in self._meta_grad]

    def load_meta_grad_state(self, grad: list[torch.Tensor] | None, device) -> None:
        """Reuse ``grad`` (from :meth:`meta_grad_state`) on ``device`` until the next refreshed meta step."""
        self._meta_grad = None if grad is None else [t.to(device) for t in grad]
