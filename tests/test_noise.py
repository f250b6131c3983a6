"""Mask noise (rotation/erosion/dilation/ellipse, calibration) and symmetric label noise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medl2b.data.nifti import read_nifti
from medl2b.noise import (
    SliceNoise,
    apply_slice_noise,
    calibrate_strength,
    corrupt_volume,
    corrupt_volumes,
    mask_dice,
    sample_slice_noise,
    symmetric_noise,
)


@pytest.fixture(scope="module")
def clean_masks(promise12_prepared):
    """All 12 prepared clean masks with their spacing: [(mask_xyz, spacing), ...]."""
    manifest = json.loads((promise12_prepared / "dataset.json").read_text())
    pairs = []
    for entry in manifest["cases"].values():
        mask, geo = read_nifti(promise12_prepared / entry["label"], dtype=np.uint8)
        pairs.append((mask, geo.spacing))
    assert len(pairs) >= 10
    return pairs


def _disc(n: int = 64, r: float = 14.0, centre=(32.0, 30.0)) -> np.ndarray:
    x, y = np.mgrid[:n, :n]
    return (((x - centre[0]) ** 2 + (y - centre[1]) ** 2) <= r * r).astype(np.uint8)


# --------------------------------------------------------------------------- the deterministic twin

def test_identity_params_change_nothing():
    mask = _disc()
    out = apply_slice_noise(mask, SliceNoise(0.0, "none", 0.0, False), (1.0, 1.0))
    assert out.dtype == np.uint8 and np.array_equal(out, mask)


def test_erode_is_subset_and_dilate_is_superset():
    mask = _disc()
    eroded = apply_slice_noise(mask, SliceNoise(0.0, "erode", 5.0, False), (1.0, 1.0))
    dilated = apply_slice_noise(mask, SliceNoise(0.0, "dilate", 5.0, False), (1.0, 1.0))
    assert eroded.sum() < mask.sum() < dilated.sum()
    assert not np.any(eroded & ~mask.astype(bool))
    assert not np.any(mask.astype(bool) & ~dilated.astype(bool))
    # a 5 mm square kernel at 1 mm/px removes/adds 2 px on each side of a rectangle (odd kernel: no shift)
    box = np.zeros((40, 40), np.uint8)
    box[10:30, 12:20] = 1
    eroded = apply_slice_noise(box, SliceNoise(0.0, "erode", 5.0, False), (1.0, 1.0))
    dilated = apply_slice_noise(box, SliceNoise(0.0, "dilate", 5.0, False), (1.0, 1.0))
    assert eroded.sum() == 16 * 4 and eroded[12:28, 14:18].all()
    assert dilated.sum() == 24 * 12 and dilated[8:32, 10:22].all()


def test_kernel_is_in_millimetres_not_pixels():
    """The same kernel_mm on the same disc sampled at half the resolution gives about the same Dice."""
    fine = _disc(128, 28.0, (64.0, 60.0))
    coarse = _disc(64, 14.0, (32.0, 30.0))
    params = SliceNoise(0.0, "erode", 9.0, False)
    d_fine = mask_dice(apply_slice_noise(fine, params, (0.5, 0.5)), fine)
    d_coarse = mask_dice(apply_slice_noise(coarse, params, (1.0, 1.0)), coarse)
    assert abs(d_fine - d_coarse) < 0.05
    assert d_fine < 0.9  # the kernel did something


def test_ellipse_replacement_is_inscribed_in_the_bounding_box():
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 5:15] = 1
    mask[10:14, 15:35] = 1  # an L shape
    out = apply_slice_noise(mask, SliceNoise(0.0, "none", 0.0, True), (1.0, 1.0))
    xs, ys = np.nonzero(out)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 29, 5, 34)
    assert out[20, 20] == 1 and out[10, 5] == 0  # centre in, corner out


def test_rotation_about_the_image_centre():
    mask = np.zeros((41, 41), np.uint8)
    mask[20, 25:35] = 1  # a bar to the right of the centre pixel (20, 20)
    out = apply_slice_noise(mask, SliceNoise(90.0, "none", 0.0, False), (1.0, 1.0))
    xs, ys = np.nonzero(out)
    assert set(ys.tolist()) == {20} and sorted(xs.tolist()) in (list(range(25, 35)), list(range(6, 16)))


def test_sample_at_zero_strength_is_identity_and_draws_a_fixed_amount():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    p0 = sample_slice_noise(rng_a, strength=0.0)
    assert p0 == SliceNoise(0.0, "none", 0.0, False)
    sample_slice_noise(rng_b, strength=2.0)
    assert rng_a.random() == rng_b.random()  # same number of draws whatever the strength


# --------------------------------------------------------------------------- volumes and calibration

def test_small_slices_get_an_empty_noisy_mask():
    vol = np.zeros((64, 64, 3), np.uint8)
    vol[:, :, 0] = _disc()
    vol[30:32, 30:32, 1] = 1  # 4 mm² < the 20 mm² minimum
    noisy = corrupt_volume(vol, (1.0, 1.0, 3.0), strength=0.0, rng=np.random.default_rng(0))
    assert np.array_equal(noisy[:, :, 0], vol[:, :, 0])
    assert noisy[:, :, 1].sum() == 0 and noisy[:, :, 2].sum() == 0


def test_dice_falls_with_strength(clean_masks):
    means = []
    for strength in (0.0, 0.3, 0.8, 1.6):
        noisy = corrupt_volumes(clean_masks, strength=strength, seed=0)
        means.append(np.mean([mask_dice(n, m) for n, (m, _) in zip(noisy, clean_masks)]))
    assert means[0] > 0.97
    assert means[0] > means[1] > means[2] > means[3]


@pytest.mark.parametrize("target", [0.8, 0.6, 0.4])
def test_calibration_hits_the_target(clean_masks, target):
    strength, achieved, per_case = calibrate_strength(clean_masks, target, seed=0)
    print(f"target {target}: strength {strength:.3f}, achieved mean Dice {achieved:.4f}")
    assert abs(achieved - target) <= 0.03
    assert len(per_case) == len(clean_masks)
    assert achieved == pytest.approx(np.mean(per_case))
    # the reported per-case Dice is what corrupt_volumes gives at that strength
    noisy = corrupt_volumes(clean_masks, strength=strength, seed=0)
    assert [mask_dice(n, m) for n, (m, _) in zip(noisy, clean_masks)] == pytest.approx(per_case)


def test_target_one_means_no_noise(clean_masks):
    assert calibrate_strength(clean_masks, 1.0, seed=0) == (0.0, 1.0, [1.0] * len(clean_masks))
    noisy = corrupt_volumes(clean_masks[:2], strength=0.0, seed=0)
    assert mask_dice(noisy[0], clean_masks[0][0]) > 0.97


def test_seeded_determinism(clean_masks):
    subset = clean_masks[:4]
    a = corrupt_volumes(subset, strength=0.7, seed=5)
    b = corrupt_volumes(subset, strength=0.7, seed=5)
    c = corrupt_volumes(subset, strength=0.7, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert calibrate_strength(subset, 0.6, seed=5) == calibrate_strength(subset, 0.6, seed=5)


def test_bad_arguments_raise_value_error(clean_masks):
    with pytest.raises(ValueError, match="strength"):
        corrupt_volume(clean_masks[0][0], clean_masks[0][1], strength=-1.0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="3-D"):
        corrupt_volume(np.zeros((4, 4)), (1.0, 1.0, 1.0), strength=1.0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="masks"):
        calibrate_strength([], 0.6, seed=0)
    with pytest.raises(ValueError, match="op"):
        SliceNoise(0.0, "blur", 1.0, False)


# --------------------------------------------------------------------------- symmetric label noise

def test_symmetric_noise_flips_exactly_and_never_keeps_the_label():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, size=1001)
    noisy = symmetric_noise(labels, 0.3, 8, rng=np.random.default_rng(1))
    flipped = noisy != labels
    assert flipped.sum() == round(0.3 * 1001)
    assert noisy.dtype == labels.dtype and noisy.min() >= 0 and noisy.max() < 8
    assert np.array_equal(symmetric_noise(labels, 0.0, 8, rng=0), labels)
    assert np.all(symmetric_noise(labels, 1.0, 8, rng=0) != labels)


def test_symmetric_noise_is_uniform_over_the_other_classes():
    labels = np.zeros(18000, dtype=np.int64)
    noisy = symmetric_noise(labels, 0.5, 10, rng=np.random.default_rng(2))
    counts = np.bincount(noisy, minlength=10)
    assert counts[0] == 9000
    assert np.all(np.abs(counts[1:] - 1000) < 120)  # ~3.8 sigma of a binomial(9000, 1/9)


def test_symmetric_noise_is_seeded():
    labels = np.arange(200) % 5
    a = symmetric_noise(labels, 0.4, 5, rng=np.random.default_rng(7))
    b = symmetric_noise(labels, 0.4, 5, rng=np.random.default_rng(7))
    c = symmetric_noise(labels, 0.4, 5, rng=np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("kwargs, match", [
    ({"rate": 1.5}, "rate"), ({"n_classes": 1}, "n_classes"), ({"labels": np.array([0, 9])}, "labels"),
    ({"labels": np.zeros((2, 2), int)}, "1-D"),
])
def test_symmetric_noise_checks_arguments(kwargs, match):
    args = {"labels": np.array([0, 1, 2]), "rate": 0.2, "n_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        symmetric_noise(args["labels"], args["rate"], args["n_classes"], rng=0)
