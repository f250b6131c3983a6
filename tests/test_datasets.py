"""The torch side: manifests, slice sets, image sets, Dataset items and their seeding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medl2b.data.datasets import (
    IsicDataset,
    SegSliceDataset,
    load_isic,
    load_manifest,
    load_slices,
    pad_collate,
    padded_shape,
)
from medl2b.data.nifti import read_nifti
from medl2b.errors import InputError


def test_load_manifest_errors(promise12_prepared, tmp_path):
    assert load_manifest(promise12_prepared, task="prostate-seg")["name"] == "PROMISE12"
    with pytest.raises(InputError, match="dataset.json: missing"):
        load_manifest(tmp_path)
    with pytest.raises(InputError, match="folder not found"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(InputError, match="expected 'skin-lesion-cls'"):
        load_manifest(promise12_prepared, task="skin-lesion-cls")
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        load_manifest(tmp_path)


@pytest.fixture(scope="module")
def train_slices(promise12_prepared):
    return load_slices(promise12_prepared, "train", label="noisy")


def test_slice_set_shapes_and_order(promise12_prepared, train_slices):
    manifest = load_manifest(promise12_prepared)
    cases = manifest["splits"]["train"]
    depth = {c: manifest["cases"][c]["prepared"]["size"][2] for c in cases}
    s = train_slices
    n = sum(depth.values())
    # issue 39: each case keeps its own field of view at the dataset's spacing (<= the 64 px cap); the whole
    # set comes padded to its largest slice (was n x 64 x 64, every case stretched)
    extents = {c: tuple(manifest["cases"][c]["prepared"]["size"][:2]) for c in cases}
    assert len(set(extents.values())) > 1 and max(max(e) for e in extents.values()) <= 64
    assert len(s) == n and s.image.shape == (n, 1, *padded_shape(list(extents.values())))
    assert s.image.dtype == torch.float32 and s.label.shape == s.clean.shape == (n, *s.image.shape[2:])
    assert s.label.dtype == s.clean.dtype == torch.int64
    assert s.case == [c for c in cases for _ in range(depth[c])]
    assert s.slice_index == [z for c in cases for z in range(depth[c])]
    # slice i is volume[:, :, z] of its case
    i = s.case.index(cases[1]) + 3
    volume, _ = read_nifti(promise12_prepared / manifest["cases"][cases[1]]["image"])
    assert np.array_equal(s.sample(i)[0][0].numpy(), volume[:, :, 3])
    x, y = volume.shape[:2]
    assert np.array_equal(s.image[i, 0, :x, :y].numpy(), volume[:, :, 3]) and not s.image[i, 0, x:].any()


def test_noisy_for_train_clean_elsewhere(promise12_prepared, train_slices):
    assert (train_slices.label != train_slices.clean).any()
    clean_train = load_slices(promise12_prepared, "train", label="clean")
    assert torch.equal(clean_train.label, clean_train.clean) and torch.equal(clean_train.clean, train_slices.clean)
    meta = load_slices(promise12_prepared, "meta", label="noisy")  # meta cases have no noisy mask
    assert len(meta) > 0 and torch.equal(meta.label, meta.clean)
    one = load_slices(promise12_prepared, ["Case00"], label="clean")
    assert set(one.case) == {"Case00"}
    with pytest.raises(InputError, match="no case 'Case99'"):
        load_slices(promise12_prepared, ["Case99"])
    with pytest.raises(ValueError, match="label"):
        load_slices(promise12_prepared, "train", label="soft")


def test_seg_dataset_items(train_slices):
    plain = SegSliceDataset(train_slices)
    item = plain[5]
    assert set(item) == {"image", "label", "clean", "trusted", "index"} and item["index"] == 5 and not item["trusted"]
    image, label, clean = train_slices.sample(5)
    assert torch.equal(item["image"], image) and torch.equal(item["label"], label)
    assert torch.equal(item["clean"], clean) and type(item["image"]) is torch.Tensor
    # whole slices of different cases batch together padded, not stretched (pad_collate)
    rows = [0, len(train_slices) - 1]
    assert train_slices.extent(rows[0]) != train_slices.extent(rows[1])
    batch = pad_collate([plain[r] for r in rows])
    assert batch["image"].shape == (2, 1, *padded_shape([train_slices.extent(r) for r in rows]))
    for k, r in enumerate(rows):
        x, y = train_slices.extent(r)
        assert torch.equal(batch["image"][k, :, :x, :y], plain[r]["image"]) and not batch["label"][k, x:].any()
    patches = SegSliceDataset(train_slices, crop=(32, 32), crop_fg=1.0)
    fg = int(torch.nonzero(train_slices.clean.flatten(1).sum(1) > 100)[0])
    item = patches[fg]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].shape == item["clean"].shape == (32, 32) and item["label"].dtype == torch.int64
    assert set(item["clean"].unique().tolist()) <= {0, 1} and type(item["image"]) is torch.Tensor
    batch = next(iter(DataLoader(patches, batch_size=4)))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["label"].shape == (4, 32, 32)
    with pytest.raises(TypeError):  # items are never augmented here: BatchAugment augments batches on the device
        SegSliceDataset(train_slices, augment=True)


def _patch_offset(patch: torch.Tensor, image: torch.Tensor) -> tuple[int, int]:
    h, w = patch.shape[-2:]
    for ox in range(image.shape[-2] - h + 1):
        for oy in range(image.shape[-1] - w + 1):
            if torch.equal(image[..., ox:ox + h, oy:oy + w], patch):
                return ox, oy
    raise AssertionError("the patch is not a sub-block of its slice")


def test_seg_patches_are_seeded_by_torch(train_slices):
    ds = SegSliceDataset(train_slices, crop=(32, 32), crop_fg=0.5)
    idx = [int(i) for i in torch.nonzero(train_slices.clean.flatten(1).sum(1) > 100).flatten()[:6]]

    def draw(seed):
        torch.manual_seed(seed)
        return [ds[i] for i in idx]

    a, b, c = draw(0), draw(0), draw(1)
    assert all(torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"]) for x, y in zip(a, b))
    assert not all(torch.equal(x["image"], y["image"]) for x, y in zip(a, c))
    # image, label and clean are cut at the same place
    for i, item in zip(idx, a):
        image, label, clean = train_slices.sample(i)
        ox, oy = _patch_offset(item["image"], image)
        block = (slice(ox, ox + 32), slice(oy, oy + 32))
        assert torch.equal(item["label"], label[block]) and torch.equal(item["clean"], clean[block])


def test_isic_image_set_and_items(isic_prepared):
    manifest = json.loads((isic_prepared / "dataset.json").read_text())
    train = load_isic(isic_prepared, "train")
    assert isinstance(train.images, np.memmap) and train.images.shape == (64, 32, 32, 3)
    assert len(train) == len(manifest["splits"]["train"]) and train.index.tolist() == manifest["splits"]["train"]
    assert train.label.dtype == train.clean.dtype == np.int64
    assert (train.label != train.clean).sum() == manifest["noise"]["n_flipped"]
    assert np.array_equal(load_isic(isic_prepared, "train", label="clean").label, train.clean)
    meta = load_isic(isic_prepared, "meta")
    assert np.array_equal(meta.label, meta.clean)

    item = IsicDataset(train)[2]
    assert set(item) == {"image", "label", "clean", "trusted", "index"} and item["index"] == 2 and not item["trusted"]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
    # served as [0, 1] pixels: the network (medl2b.models.Classifier) normalises with its backbone's statistics
    expected = torch.from_numpy(np.array(train.images[train.index[2]])).permute(2, 0, 1).float() / 255
    assert torch.allclose(item["image"], expected, atol=1e-6)
    assert int(item["label"]) == train.label[2] and int(item["clean"]) == train.clean[2]
    with pytest.raises(ValueError, match="split"):
        load_isic(isic_prepared, "val")


