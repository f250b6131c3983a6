"""BatchAugment: one spatial draw for image and labels, reproducible from torch's seed."""

from __future__ import annotations

import torch

from medl2b.data.augment import BatchAugment


def _batch():
    g = torch.Generator().manual_seed(3)
    labels = torch.zeros(16, 40, 40, dtype=torch.long)
    for i in range(16):  # two off-centre blocks per slice, so flips and rotations move them
        x0, y0 = (int(v) for v in torch.randint(2, 20, (2,), generator=g))
        labels[i, x0:x0 + 12, y0:y0 + 6] = 1
        labels[i, x0 + 12:x0 + 16, y0:y0 + 10] = 2
    return labels


def test_image_and_labels_move_together_and_runs_repeat():
    labels = _batch()
    image = (labels.float() * 100.0)[:, None]  # the image encodes the labels
    aug = BatchAugment()
    torch.manual_seed(7)
    img, lab, lab2 = aug(image, labels, labels.clone())
    assert img.shape == image.shape and lab.shape == labels.shape and lab.dtype == torch.long
    assert torch.equal(lab, lab2)
    assert set(torch.unique(lab).tolist()) <= {0, 1, 2}
    moved = (lab != labels).flatten(1).any(1)
    assert int(moved.sum()) >= 8  # most slices are flipped, rotated or scaled
    decoded = torch.round(img[:, 0] / 100.0).clamp(0, 2).long()
    assert float((decoded == lab).float().mean()) > 0.97  # bilinear vs nearest differ only at edges
    torch.manual_seed(7)
    again = aug(image, labels, labels.clone())
    assert all(torch.equal(a, b) for a, b in zip((img, lab, lab2), again))
    torch.manual_seed(8)
    assert not torch.equal(aug(image, labels)[1], lab)
