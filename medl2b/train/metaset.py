"""The online meta set for L2B without a trusted set (paper §4.4).

Per-sample (or per-slice) losses of the training set, computed in eval mode,
are min-max normalised and fitted with a two-component 1-D Gaussian mixture
(scikit-learn). Samples whose posterior of the low-mean component exceeds a
threshold are taken as likely clean and form the meta set of the next epoch,
with their given labels.

For segmentation the unit is a slice (its mean pixel loss), and only slices whose
given mask has foreground are candidates (``Task.meta_candidates``): empty slices
have almost no loss and would otherwise fill the clean component.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from torch.utils.data import Sampler

__all__ = ["ClassBalancedBatches", "select_clean"]


def select_clean(losses: np.ndarray, *, threshold: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pick likely-clean samples from their losses.

    Args:
        losses: ``(N,)`` per-sample losses (for segmentation: each slice's mean pixel loss).
        threshold: P(clean) above which a sample is selected.
        seed: random state of the mixture fit.

    Returns:
        ``(indices, p_clean)``: the selected indices (sorted) and P(clean) for every sample.
    """
    losses = np.asarray(losses, dtype=np.float64).reshape(-1)
    if losses.size < 4:
        raise ValueError(f"need at least 4 losses to fit a mixture, got {losses.size}")
    if not np.all(np.isfinite(losses)):
        raise ValueError("losses contain NaN or inf")
    span = losses.max() - losses.min()
    if span <= 0:
        p_clean = np.ones_like(losses)
        return np.arange(losses.size), p_clean
    z = ((losses - losses.min()) / span).reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=50, tol=1e-3, reg_covar=5e-4, random_state=seed).fit(z)
    clean = int(np.argmin(gmm.means_.reshape(-1)))
    p_clean = gmm.predict_proba(z)[:, clean]
    return np.flatnonzero(p_clean > threshold), p_clean


class ClassBalancedBatches(Sampler[list[int]]):
    """Endless meta batches with every class in every batch, in equal shares.

    A batch of ``batch_size`` holds ``batch_size // C`` samples of each of the ``C`` classes
    present in ``classes``, plus one more of the first ``batch_size % C`` classes of a fresh
    random order of the classes. Within a class, samples are drawn without replacement until
    the class is used up, then reshuffled, so a class of four meta images shows all four before
    it repeats. A random meta batch of 32 from 320 ISIC images holds a class of 4 images 0.4
    times on average; here every batch holds it 4 times.

    Args:
        classes: int class per meta sample.
        batch_size: samples per batch.
        generator: the torch generator that seeds the draw (the trainer's per-epoch one).
    """

    def __init__(self, classes, batch_size: int, *, generator: torch.Generator) -> None:
        classes = np.asarray(classes)
        self.members = [np.flatnonzero(classes == c) for c in np.unique(classes)]
        self.batch_size = int(batch_size)
        self.generator = generator

    def _perm(self, n: int) -> list[int]:
        return torch.randperm(n, generator=self.generator).tolist()

    def __iter__(self):
        queues: list[list[int]] = [[] for _ in self.members]
        n_cls = len(self.members)
        while True:
            counts = [self.batch_size // n_cls] * n_cls
            for c in self._perm(n_cls)[: self.batch_size % n_cls]:
                counts[c] += 1
            batch = []
            for c, k in enumerate(counts):
                for _ in range(k):
                    if not queues[c]:
                        queues[c] = [int(self.members[c][i]) for i in self._perm(len(self.members[c]))]
                    batch.append(queues[c].pop())
            yield batch
