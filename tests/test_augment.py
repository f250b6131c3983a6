"""BatchAugment: one spatial draw for image and labels; SquareAugment: the symmetries of the square and a
brightness scale. Both reproducible from torch's seed."""

from __future__ import annotations

import pytest
import torch

from medl2b.data.augment import BatchAugment, SquareAugment


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


def test_square_augment_draws_every_symmetry_keeps_pixels_and_repeats():
    aug = SquareAugment(max_gain=0.0)  # symmetries only: pixel values are kept exactly
    base = torch.arange(3 * 5 * 5, dtype=torch.float32).view(1, 3, 5, 5) / 75
    image = base.repeat(256, 1, 1, 1)
    torch.manual_seed(0)
    out = aug(image)
    assert out.shape == image.shape and out.dtype == image.dtype
    symmetries = []
    for k in range(4):
        rot = torch.rot90(base, k, (-2, -1))
        symmetries += [rot, rot.flip(-1)]
    seen = [next(i for i, s in enumerate(symmetries) if torch.allclose(o[None], s, atol=1e-5)) for o in out]
    counts = torch.bincount(torch.tensor(seen), minlength=8)
    assert (counts > 15).all(), counts  # all 8 symmetries, each about 32 times in 256
    torch.manual_seed(0)
    assert torch.equal(aug(image), out)
    torch.manual_seed(1)
    assert not torch.equal(aug(image), out)


def test_square_augment_scales_brightness_of_the_unnormalised_pixels():
    image = torch.full((400, 3, 4, 4), 0.5)  # a flat image: symmetries do not change it
    torch.manual_seed(2)
    back = SquareAugment(max_gain=0.1)(image)
    gain = back[:, 0, 0, 0] / 0.5
    assert torch.allclose(back, gain.view(-1, 1, 1, 1) * 0.5, atol=1e-5)  # one gain per image, all channels
    assert float(gain.min()) >= 0.9 - 1e-5 and float(gain.max()) <= 1.1 + 1e-5
    unchanged = (gain - 1).abs() < 1e-6
    assert 0.4 < float(unchanged.float().mean()) < 0.6  # p = 0.5
    with pytest.raises(ValueError, match="S, S"):
        SquareAugment()(torch.zeros(2, 3, 4, 5))
