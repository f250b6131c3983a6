"""ISIC 2019 preparation: image store, manifest, lesion-grouped stratified split, symmetric noise."""

from __future__ import annotations

import collections
import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from medl2b.cli import app
from medl2b.data.isic2019 import CLASSES, grouped_stratified_split, load_square_image, prepare_isic2019

TOP_KEYS = {"name", "task", "format_version", "classes", "size", "seed", "image_store", "splits", "images", "noise"}


@pytest.fixture(scope="module")
def manifest(isic_prepared) -> dict:
    return json.loads((isic_prepared / "dataset.json").read_text())


def test_manifest_and_store(isic_prepared, manifest):
    assert TOP_KEYS <= set(manifest)
    assert manifest["name"] == "ISIC2019" and manifest["task"] == "skin-lesion-cls" and manifest["format_version"] == 1
    assert manifest["classes"] == ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    assert manifest["size"] == 32 and manifest["image_store"] == "images.npy"
    store = np.load(isic_prepared / "images.npy", mmap_mode="r")
    assert store.shape == (64, 32, 32, 3) and store.dtype == np.uint8
    images = manifest["images"]
    assert [e["index"] for e in images] == list(range(64))
    for e in images:
        assert set(e) >= {"image", "index", "label", "noisy_label", "split", "lesion_id"}
        assert 0 <= e["label"] < 8 and 0 <= e["noisy_label"] < 8
    assert store[:, :, :, 0].std() > 5  # real pixels, not zeros


def test_store_rows_are_the_images(isic_raw, isic_prepared, manifest):
    store = np.load(isic_prepared / "images.npy", mmap_mode="r")
    for e in manifest["images"][:5]:
        expected = load_square_image(isic_raw / "ISIC_2019_Training_Input" / e["file"], 32)
        assert np.array_equal(store[e["index"]], expected)


def test_labels_match_the_csv(isic_raw, manifest):
    with open(isic_raw / "ISIC_2019_Training_GroundTruth.csv", newline="") as fh:
        rows = {r["image"]: r for r in csv.DictReader(fh)}
    assert [e["image"] for e in manifest["images"]] == list(rows)
    for e in manifest["images"]:
        assert float(rows[e["image"]][CLASSES[e["label"]]]) == 1.0
    assert any(e["image"].endswith("_downsampled") for e in manifest["images"])


def test_split_is_disjoint_grouped_and_stratified(manifest):
    splits = manifest["splits"]
    idx = splits["train"] + splits["meta"] + splits["test"]
    assert sorted(idx) == list(range(64))
    n = 64
    assert len(splits["test"]) == round(n * 4291 / 25331)  # 11
    assert len(splits["meta"]) == 8  # at least one per class
    for key, members in splits.items():
        assert all(manifest["images"][i]["split"] == key for i in members)
    by_lesion = collections.defaultdict(set)
    for e in manifest["images"]:
        if e["lesion_id"]:
            by_lesion[e["lesion_id"]].add(e["split"])
    assert by_lesion and all(len(s) == 1 for s in by_lesion.values())
    assert any(len([e for e in manifest["images"] if e["lesion_id"] == k]) > 1 for k in by_lesion)
    meta_classes = {manifest["images"][i]["label"] for i in splits["meta"]}
    assert len(meta_classes) >= 6


def test_symmetric_noise_on_train_only(manifest):
    train = set(manifest["splits"]["train"])
    flipped = [e for e in manifest["images"] if e["noisy_label"] != e["label"]]
    assert all(e["index"] in train for e in flipped)
    noise = manifest["noise"]
    assert noise["rate"] == 0.4 and noise["n_flipped"] == len(flipped) == round(0.4 * len(train))
    assert noise["realised_rate"] == pytest.approx(len(flipped) / len(train), abs=1e-6)
    assert abs(noise["realised_rate"] - 0.4) < 0.02


def test_grouped_split_at_full_scale():
    """Paper counts on a 25,331-image label set with shared lesions: exact totals, lesions kept together."""
    rng = np.random.default_rng(0)
    counts = [4522, 12875, 3323, 867, 2624, 239, 253, 628]
    labels = rng.permutation(np.repeat(np.arange(8), counts))
    groups = [None if rng.random() < 0.3 else f"L{lab}_{rng.integers(0, counts[lab] // 2)}" for lab in labels]
    split = grouped_stratified_split(labels, groups, n_meta=640, n_test=4291, n_classes=8, rng=rng)
    sizes = {k: int((split == k).sum()) for k in ("train", "meta", "test")}
    assert sizes == {"train": 20400, "meta": 640, "test": 4291}
    per_group = collections.defaultdict(set)
    for g, s in zip(groups, split):
        if g:
            per_group[g].add(s)
    assert all(len(s) == 1 for s in per_group.values())
    test_share = np.bincount(labels[split == "test"], minlength=8) / 4291
    np.testing.assert_allclose(test_share, np.asarray(counts) / 25331, atol=0.01)
    assert np.all(np.bincount(labels[split == "meta"], minlength=8) >= 1)


def test_without_metadata_and_with_stripped_names(isic_raw, tmp_path):
    """Metadata is optional; a CSV name without `_downsampled` finds the `_downsampled` file."""
    raw = tmp_path / "raw"
    shutil.copytree(isic_raw / "ISIC_2019_Training_Input", raw / "ISIC_2019_Training_Input")
    text = (isic_raw / "ISIC_2019_Training_GroundTruth.csv").read_text().replace("_downsampled", "")
    (raw / "ISIC_2019_Training_GroundTruth.csv").write_text(text)
    manifest = prepare_isic2019(raw, tmp_path / "out", size=16, noise=0.0, seed=1, progress=False)
    assert all(e["lesion_id"] is None for e in manifest["images"])
    assert any(e["file"].endswith("_downsampled.jpg") for e in manifest["images"])
    assert manifest["noise"]["n_flipped"] == 0
    assert np.load(tmp_path / "out" / "images.npy").shape == (64, 16, 16, 3)


def test_cli_prepare(isic_raw, tmp_path):
    out = tmp_path / "prep"
    result = CliRunner().invoke(app, ["prepare", "isic2019", str(isic_raw), str(out), "--size", "16",
                                      "--noise", "0.2", "--meta", "8", "--test", "12", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "prepared 64 images" in result.output and "realised noise rate" in result.output
    manifest = json.loads((out / "dataset.json").read_text())
    assert len(manifest["splits"]["test"]) == 12 and len(manifest["splits"]["meta"]) == 8
    assert manifest["seed"] == 3 and manifest["size"] == 16
