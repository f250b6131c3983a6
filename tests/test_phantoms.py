"""Phantoms: the files must look like the real releases, and their content must be learnable."""

from __future__ import annotations

import collections
import csv
import hashlib

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from medl2b.data.phantoms import ISIC_CLASSES, synth_isic2019, synth_promise12


def _header(path) -> dict[str, str]:
    return dict(line.split(" = ", 1) for line in path.read_text().splitlines() if " = " in line)


def _xyz(path) -> np.ndarray:
    return np.transpose(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), (2, 1, 0))


# --------------------------------------------------------------------------- PROMISE12

def test_promise12_layout_and_header_variety(promise12_raw):
    headers = {p.stem: _header(p) for p in sorted(promise12_raw.glob("Case??.mhd"))}
    assert list(headers) == [f"Case{i:02d}" for i in range(12)]
    for case, h in headers.items():
        mask_h = _header(promise12_raw / f"{case}_segmentation.mhd")
        assert mask_h["ElementType"] == "MET_UCHAR" and mask_h["DimSize"] == h["DimSize"]
        assert (promise12_raw / h["ElementDataFile"]).is_file()
        assert (promise12_raw / mask_h["ElementDataFile"]).is_file()
    assert {h["ElementType"] for h in headers.values()} == {"MET_SHORT", "MET_FLOAT"}
    compressed = [c for c, h in headers.items() if h["CompressedData"] == "True"]
    assert compressed and all(headers[c]["ElementDataFile"] == f"{c}.zraw" for c in compressed)
    assert any(h["TransformMatrix"].split()[0] == "-1" for h in headers.values())  # flipped x
    assert len({h["TransformMatrix"] for h in headers.values()}) >= 3  # identity, flipped, oblique
    assert len({h["Offset"] for h in headers.values()}) == 12
    assert len({h["DimSize"].split()[0] for h in headers.values()}) == 3  # three grid families


def test_promise12_full_resolution_grids_and_grid_scale(tmp_path):
    """grid_scale shrinks voxel counts but keeps the physical field of view."""
    full = tmp_path / "full"
    small = tmp_path / "small"
    synth_promise12(full, n_cases=3, seed=4, grid_scale=1.0)
    synth_promise12(small, n_cases=3, seed=4, grid_scale=0.25)
    sizes = []
    for i in range(3):
        a, b = _header(full / f"Case0{i}.mhd"), _header(small / f"Case0{i}.mhd")
        na, nb = np.array(a["DimSize"].split(), int), np.array(b["DimSize"].split(), int)
        sa, sb = np.array(a["ElementSpacing"].split(), float), np.array(b["ElementSpacing"].split(), float)
        np.testing.assert_allclose(na * sa, nb * sb, rtol=1e-6)
        assert np.all(nb < na)
        sizes.append((tuple(na[:2]), round(float(sa[0]), 1), round(float(sa[2]), 1)))
    assert sizes[0][0] == (512, 512) and sizes[0][1] == 0.3 and 2.2 <= sizes[0][2] <= 3.0
    assert sizes[1][0] == (320, 320) and sizes[1][1] == 0.6 and sizes[1][2] == 3.6
    assert sizes[2][0] == (256, 256) and sizes[2][1] == 0.6 and sizes[2][2] == 4.0


def test_promise12_masks_are_binary_central_and_tapering(promise12_raw):
    for i in range(12):
        mask = _xyz(promise12_raw / f"Case{i:02d}_segmentation.mhd")
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
        area = mask.sum(axis=(0, 1))
        present = np.nonzero(area)[0]
        assert area[0] == 0 and area[-1] == 0  # only a central range of slices
        assert len(present) >= 3 and np.all(np.diff(present) == 1)
        peak = int(np.argmax(area))
        assert present[0] < peak < present[-1] and area[present[0]] < area[peak] > area[present[-1]]
        assert ndimage.label(mask)[1] == 1  # one connected gland


def test_promise12_gland_is_visible(promise12_raw):
    """The gland is darker than its immediate surroundings by well over its own noise."""
    for i in range(12):
        image = _xyz(promise12_raw / f"Case{i:02d}.mhd").astype(float)
        mask = _xyz(promise12_raw / f"Case{i:02d}_segmentation.mhd") > 0
        ring = ndimage.binary_dilation(mask, np.ones((7, 7, 1))) & ~mask
        assert (image[ring].mean() - image[mask].mean()) / image[mask].std() > 1.0


def test_promise12_is_seeded(tmp_path):
    def digest(folder):
        return [hashlib.sha1((folder / f"Case0{i}.raw").read_bytes()).hexdigest() for i in (0, 1)]

    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        synth_promise12(tmp_path / name, n_cases=2, seed=seed, grid_scale=0.1)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_promise12_checks_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_cases"):
        synth_promise12(tmp_path, n_cases=0)
    with pytest.raises(ValueError, match="grid_scale"):
        synth_promise12(tmp_path, grid_scale=2.0)


# --------------------------------------------------------------------------- ISIC 2019

def _gt_rows(raw):
    with open(raw / "ISIC_2019_Training_GroundTruth.csv", newline="") as fh:
        return list(csv.reader(fh))


def test_isic_layout_and_csv_quirks(isic_raw):
    rows = _gt_rows(isic_raw)
    assert rows[0] == ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    body = rows[1:]
    assert len(body) == 64
    assert {r[1] for r in body} & {"0.0", "1.0"} and {r[1] for r in body} & {"0", "1"}
    assert all(float(r[9]) == 0 for r in body)
    assert all(sum(float(v) for v in r[1:9]) == 1 for r in body)
    files = {p.stem for p in (isic_raw / "ISIC_2019_Training_Input").glob("*.jpg")}
    assert files == {r[0] for r in body}
    assert any(name.endswith("_downsampled") for name in files)
    assert all(len(name.split("_")[1]) == 7 for name in files)
    with open(isic_raw / "ISIC_2019_Training_Metadata.csv", newline="") as fh:
        meta = list(csv.DictReader(fh))
    assert list(meta[0]) == ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]
    assert [m["image"] for m in meta] == [r[0] for r in body]
    lesions = collections.Counter(m["lesion_id"] for m in meta if m["lesion_id"])
    assert max(lesions.values()) >= 2 and any(not m["lesion_id"] for m in meta)
    label = {r[0]: r[1:9].index(next(v for v in r[1:9] if float(v) == 1)) for r in body}
    for lesion in lesions:  # one lesion, one diagnosis
        assert len({label[m["image"]] for m in meta if m["lesion_id"] == lesion}) == 1


def test_isic_class_imbalance_and_sizes(isic_raw):
    counts = collections.Counter()
    for r in _gt_rows(isic_raw)[1:]:
        counts[ISIC_CLASSES[[float(v) for v in r[1:9]].index(1.0)]] += 1
    assert all(counts[c] >= 3 for c in ISIC_CLASSES)
    assert counts["NV"] == max(counts.values()) and counts["NV"] > 2 * counts["MEL"]
    assert counts["MEL"] >= counts["BCC"] >= counts["BKL"] >= counts["AK"]
    sizes = collections.Counter(Image.open(p).size for p in (isic_raw / "ISIC_2019_Training_Input").glob("*.jpg"))
    assert (600, 450) in sizes and (1024, 1024) in sizes and len(sizes) >= 3


def test_isic_classes_are_visible(isic_raw):
    """Leave-one-out nearest centroid on mean/std colour of the centre beats the majority baseline."""
    feats, labels = [], []
    for r in _gt_rows(isic_raw)[1:]:
        im = Image.open(isic_raw / "ISIC_2019_Training_Input" / f"{r[0]}.jpg").convert("RGB").resize((64, 64))
        centre = np.asarray(im, dtype=float)[16:48, 16:48].reshape(-1, 3) / 255
        feats.append(np.concatenate([centre.mean(0), centre.std(0)]))
        labels.append([float(v) for v in r[1:9]].index(1.0))
    feats, labels = np.array(feats), np.array(labels)
    hits = 0
    for i in range(len(labels)):
        keep = np.arange(len(labels)) != i
        cents = {c: feats[keep & (labels == c)].mean(0) for c in np.unique(labels[keep])}
        hits += min(cents, key=lambda c: np.linalg.norm(feats[i] - cents[c])) == labels[i]
    majority = np.bincount(labels).max() / len(labels)
    assert hits / len(labels) > majority + 0.15


def test_isic_is_seeded(tmp_path):
    synth_isic2019(tmp_path / "a", n_images=16, seed=3)
    synth_isic2019(tmp_path / "b", n_images=16, seed=3)
    synth_isic2019(tmp_path / "c", n_images=16, seed=4)
    read = lambda d: (d / "ISIC_2019_Training_GroundTruth.csv").read_text()  # noqa: E731
    assert read(tmp_path / "a") == read(tmp_path / "b") != read(tmp_path / "c")
    first = sorted((tmp_path / "a" / "ISIC_2019_Training_Input").glob("*.jpg"))[0]
    assert first.read_bytes() == (tmp_path / "b" / "ISIC_2019_Training_Input" / first.name).read_bytes()
