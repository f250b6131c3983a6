"""Voxel-wise L2B in 3-D: whole-volume training on real bundled hippocampus cases, sliding-window eval."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medl2b.config import load_config
from medl2b.data.augment import BatchAugment
from medl2b.data.datasets import load_volumes, padded_shape, volume_shape
from medl2b.data.msd import prepare_msd
from medl2b.errors import InputError
from medl2b.evaluate.run import evaluate_run
from medl2b.train.trainer import Trainer



@pytest.fixture(scope="module")
def hippo3d(tmp_path_factory, bundled_hippocampus) -> Path:
    raw = bundled_hippocampus(tmp_path_factory.mktemp("raw3d") / "Task04", 6)
    out = tmp_path_factory.mktemp("prep3d") / "prepared"
    prepare_msd(raw, out, size=32, noise_dice=0.6, meta_cases=1, test_cases=1, seed=0, progress=False)
    return out


def test_volumes_are_padded_to_one_shape_that_unetpp_accepts(hippo3d):
    shape = volume_shape(hippo3d)
    assert all(s % 16 == 0 for s in shape) and shape[:2] == (32, 32)
    manifest = json.loads((hippo3d / "dataset.json").read_text())
    vols = load_volumes(hippo3d, "train")
    # issue 39: volumes are padded per batch to the batch's largest (was: to the dataset's, at load time)
    extents = [tuple(manifest["cases"][c]["prepared"]["size"]) for c in vols.case]
    assert vols.image.shape == (4, 1, *padded_shape(extents)) and vols.label.shape == (4, *padded_shape(extents))
    assert all(s <= v for s, v in zip(padded_shape(extents), shape))
    for i, case in enumerate(vols.case):  # the original extent is kept, the rest is background padding
        x, y, z = manifest["cases"][case]["prepared"]["size"]
        assert vols.clean[i, :x, :y, :z].sum() > 0 and not vols.clean[i, :, :, z:].any()
        assert not vols.image[i, :, :, :, z:].any() and not vols.image[i, :, x:].any()
        assert tuple(vols.sample(i)[0].shape) == (1, x, y, z)


def test_3d_augmentation_moves_image_and_labels_together():
    labels = torch.zeros(3, 16, 16, 16, dtype=torch.long)
    labels[:, 2:9, 3:7, 1:12] = 1
    labels[:, 9:12, 3:10, 1:5] = 2
    image = labels.float()[:, None] * 100.0
    torch.manual_seed(2)
    img, lab = BatchAugment()(image, labels)
    assert img.shape == image.shape and lab.shape == labels.shape and lab.dtype == torch.long
    assert not torch.equal(lab, labels)                          # something moved
    # the image still encodes the labels (bilinear vs nearest disagree only on edges); against the
    # labels before augmentation it would not
    together = float(((img[:, 0] - 100.0 * lab.float()).abs() > 30).float().mean())
    apart = float(((img[:, 0] - 100.0 * labels.float()).abs() > 30).float().mean())
    assert together < 0.05 and apart > 3 * together


@pytest.mark.slow
def test_3d_l2b_trains_on_volumes_and_evaluates_with_sliding_windows(hippo3d, tmp_path):
    run = tmp_path / "run3d"
    cfg = load_config("segmentation", profile="cpu-3d", overrides={    # the profile sets spatial_dims 3
        "data": str(hippo3d), "out": str(run), "features": [2, 2, 4, 4, 8, 2],
        "meta_batch_size": 1, "epochs": 2, "warmup_epochs": 1, "device": "cpu"})
    assert cfg.spatial_dims == 3 and cfg.batch_size == 2
    trainer = Trainer(cfg, progress=False)
    assert trainer.model.net.conv_0_0.conv_0.conv.weight.ndim == 5   # a 3-D UNet++
    assert len(trainer.task.train_set) == 4 + 1     # one sample per volume: 4 train volumes, the trusted one (l2b)
    trainer.fit()
    state = torch.load(run / "checkpoint_latest.pt", weights_only=False)
    assert state["record"]["totals"][2].sum() == 4                     # epoch 2: both batches weighed voxel-wise
    summary = evaluate_run(run, split="test", figures=True)
    assert summary["n_cases"] == 1 and 0.0 <= summary["mean"]["dice"] <= 1.0
    assert (run / "eval" / "figures" / "weight_maps.png").stat().st_size > 0   # three orthogonal mid-slices
    manifest = json.loads((hippo3d / "dataset.json").read_text())
    case = manifest["splits"]["test"][0]
    pred = nib.load(str(run / "eval" / "predictions" / f"{case}.nii.gz"))
    assert list(pred.shape) == manifest["cases"][case]["original"]["size"]  # back on the raw grid
    assert set(np.unique(np.asanyarray(pred.dataobj)).tolist()) <= {0, 1, 2}
    with pytest.raises(InputError, match="spatial_dims"):
        load_config("skin-lesion-cls", overrides={"spatial_dims": 3})


def _offset_of(crop: torch.Tensor, volume: torch.Tensor) -> tuple[int, int, int]:
    """Where the patch ``crop`` (C, x, y, z) sits in ``volume`` (C, X, Y, Z); exact match required."""
    size = crop.shape[1:]
    for ox in range(volume.shape[1] - size[0] + 1):
        for oy in range(volume.shape[2] - size[1] + 1):
            for oz in range(volume.shape[3] - size[2] + 1):
                if torch.equal(volume[:, ox:ox + size[0], oy:oy + size[1], oz:oz + size[2]], crop):
                    return ox, oy, oz
    raise AssertionError("the patch is not a sub-block of its volume")


def test_patches_cut_image_and_labels_together_and_oversample_foreground(hippo3d):
    from medl2b.data.datasets import SegSliceDataset, train_window

    vols = load_volumes(hippo3d, "train")
    window = train_window(hippo3d, (32, 32, 16))
    assert window == (32, 32, 16) and train_window(hippo3d) == volume_shape(hippo3d)  # default: whole volumes
    torch.manual_seed(0)
    offsets = set()
    for draw in range(4):
        item = SegSliceDataset(vols, crop=window, crop_fg=0.33)[draw]
        assert item["image"].shape == (1, *window) and item["label"].shape == window
        ox, oy, oz = _offset_of(item["image"], vols.image[item["index"]])
        block = (item["index"], slice(ox, ox + 32), slice(oy, oy + 32), slice(oz, oz + 16))
        assert torch.equal(item["label"], vols.label[block]) and torch.equal(item["clean"], vols.clean[block])
        offsets.add(oz)
    # small patches: centred on a foreground voxel they always hold foreground, uniform ones not always
    with_fg = {fg: sum(int(SegSliceDataset(vols, crop=(6, 6, 6), crop_fg=fg)[i % 4]["label"].any())
                       for i in range(16)) for fg in (1.0, 0.0)}
    assert with_fg[1.0] == 16 and with_fg[0.0] < 12
    assert len(offsets) > 1             # random positions


@pytest.mark.slow
def test_3d_training_on_patches_is_reproducible_and_evaluates_with_sliding_windows(hippo3d, tmp_path):
    def fit(out):
        cfg = load_config("segmentation", profile="cpu", overrides={
            "data": str(hippo3d), "out": str(out), "spatial_dims": 3, "patch_size": [32, 32, 16],
            "features": [2, 2, 4, 4, 8, 2], "batch_size": 2, "meta_batch_size": 1, "epochs": 2, "warmup_epochs": 1,
            "device": "cpu"})
        trainer = Trainer(cfg, progress=False)
        trainer.fit()
        return trainer

    a, b = fit(tmp_path / "a"), fit(tmp_path / "b")
    assert a.task.window == (32, 32, 16) and a.task.train_set[0]["image"].shape == (1, 32, 32, 16)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    summary = evaluate_run(tmp_path / "a", split="test", figures=False)
    manifest = json.loads((hippo3d / "dataset.json").read_text())
    case = manifest["splits"]["test"][0]
    pred = nib.load(str(tmp_path / "a" / "eval" / "predictions" / f"{case}.nii.gz"))
    assert summary["n_cases"] == 1 and list(pred.shape) == manifest["cases"][case]["original"]["size"]
    with pytest.raises(InputError, match="patch_size"):
        load_config("segmentation", overrides={"patch_size": [32, 32, 20]})
