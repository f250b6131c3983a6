"""A running record per training sample of what the meta step thought of its label (for ``medl2b audit``).

For every training sample (a 2-D slice for segmentation, an image for classification) the
trainer adds, at every step that sees it:

* ``seen``, ``loss``: how often, and the sum of its mean per-element loss on the given label;
* ``meta_seen``: how often a meta step weighed it (after warm-up, meta methods only);
* ``alpha``, ``beta``: the sums of its mean weight on the given label and on the pseudo-label,
  in units of an average element's weight (``N·α``: 1 = average; with ``α_i + β_i = 1`` per
  pixel, α + β = 1);
* ``prefer_pseudo``: the sum of its mean ``max(N·β − N·α, 0)``: how much of it the meta step
  moved from the given label to the model's own. Where the pseudo-label equals the given
  label both terms are the same loss and get the same weight, so only pixels where the two
  disagree *and* the clean meta set sides with the model count.

The cost is one ``index_add_`` of a few numbers per sample and step, on the batch's device (no
copy to the host per step). The epoch's sums move to the CPU totals (float64) when the epoch ends,
are saved in every checkpoint (an exact resume continues them), and under DDP each
process adds its own samples and the sums are all-reduced once per epoch.
"""

from __future__ import annotations

import torch

__all__ = ["FIELDS", "SampleRecord"]

FIELDS = ("seen", "loss", "meta_seen", "alpha", "beta", "prefer_pseudo")


class SampleRecord:
    """Per-sample running sums over a training run (see the module docstring)."""

    def __init__(self, n: int):
        self.totals = torch.zeros(len(FIELDS), n, dtype=torch.float64)   # finished epochs (all processes)
        self._epoch = torch.zeros_like(self.totals)                      # this process, this epoch

    def __len__(self) -> int:
        return self.totals.shape[1]

    def add(self, index: torch.Tensor, given_loss: torch.Tensor, weights: list[torch.Tensor] | None) -> None:
        """One step: ``index`` (B,) sample ids; ``given_loss`` (B, ...) per-element loss on the given
        label; ``weights`` the step's α (and β) of the same shape when a meta step weighed the batch.
        The sums stay on the batch's device until the epoch ends: no copy to the host per step."""
        with torch.no_grad():
            dev = given_loss.device
            if self._epoch.device != dev:
                self._epoch = self._epoch.to(dev)
            index = index.detach().to(dev, torch.long, non_blocking=True)
            dims = tuple(range(1, given_loss.ndim))
            rows = torch.zeros(len(FIELDS), index.numel(), dtype=torch.float64, device=dev)
            rows[0] = 1.0
            rows[1] = _mean(given_loss, dims)
            if weights is not None:
                count = weights[0].numel()  # N: α·N = 1 for an average element of the batch
                a = weights[0].detach().double() * count
                b = weights[1].detach().double() * count if len(weights) > 1 else torch.zeros_like(a)
                rows[2] = 1.0
                rows[3] = _mean(a, dims)
                rows[4] = _mean(b, dims)
                rows[5] = _mean((b - a).clamp_min(0), dims)
            self._epoch.index_add_(1, index, rows)

    def end_epoch(self, reduce=None) -> None:
        """Fold this epoch's sums into the totals; ``reduce`` (DDP) sums them over processes first."""
        if reduce is not None:
            reduce(self._epoch)
        self.totals += self._epoch.cpu()
        self._epoch.zero_()

    def epoch_state(self) -> torch.Tensor:
        """This process's sums of the epoch so far, ``(len(FIELDS), N)`` float64, a copy on the CPU (saved by an
        interrupted epoch, so that its resume adds in the same order)."""
        return self._epoch.detach().cpu().clone()

    def load_epoch_state(self, sums: torch.Tensor) -> None:
        """Continue an epoch from :meth:`epoch_state`'s sums."""
        if sums.shape != self.totals.shape:
            raise ValueError(f"epoch sums of shape {tuple(sums.shape)}; the record has {tuple(self.totals.shape)}")
        self._epoch = sums.clone()

    def state_dict(self) -> dict:
        return {"fields": list(FIELDS), "totals": self.totals.clone()}

    def load_state_dict(self, state: dict) -> None:
        if list(state["fields"]) != list(FIELDS) or state["totals"].shape != self.totals.shape:
            raise ValueError(f"sample record of another shape: {state['fields']} {tuple(state['totals'].shape)}")
        self.totals.copy_(state["totals"])
        self._epoch.zero_()

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {name: self.totals[i].clone() for i, name in enumerate(FIELDS)}


def _mean(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    x = x.detach().double()
    return x.mean(dims) if dims else x
