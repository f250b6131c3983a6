"""``medl2b prepare msd``: MSD v1 and nnU-Net v2 raw datasets -> prepared segmentation datasets.

Real data: a few cases of the Medical Segmentation Decathlon Task04_Hippocampus (CC-BY-SA 4.0),
copied once per session from ``../shared/data`` (next to the repository root, never written to) into
pytest's tmp folder; skipped when it is missing. Everything else (multi-channel nnU-Net v2, 4-D MSD v1,
storage orientations) is synthetic, written here with nibabel.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cli_checks import one_line_error
from medl2b.cli import app
from medl2b.data.grid import prediction_to_raw
from medl2b.data.msd import prepare_msd
from medl2b.noise.masks import mask_dice, per_class_dice
from conftest import SHARED_DATA

HIPPOCAMPUS = SHARED_DATA / "Task04_Hippocampus"
N_REAL = 10                                  # real cases copied for the session
HIPPO_LABELS = {"background": 0, "Anterior": 1, "Posterior": 2}

runner = CliRunner()


def _run(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=float)


def _manifest(prepared: Path) -> dict:
    return json.loads((prepared / "dataset.json").read_text())


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- real data fixtures

def _copy_msd_subset(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` training cases of an MSD v1 task, with a dataset.json listing only them."""
    meta = json.loads((src / "dataset.json").read_text())
    training = meta["training"][:n]
    (dst / "imagesTr").mkdir(parents=True)
    (dst / "labelsTr").mkdir()
    for entry in training:
        for key in ("image", "label"):
            shutil.copyfile(src / entry[key], dst / entry[key])  # copyfile: writable copies, not r/o modes
    meta["training"] = training
    meta["numTraining"] = len(training)
    (dst / "dataset.json").write_text(json.dumps(meta, indent=4))
    return dst


@pytest.fixture(scope="session")
def hippo_raw(tmp_path_factory) -> Path:
    """10 real Task04_Hippocampus cases (read-only for the tests: copy before damaging)."""
    if not (HIPPOCAMPUS / "dataset.json").is_file():
        pytest.skip(f"{HIPPOCAMPUS} not available")
    return _copy_msd_subset(HIPPOCAMPUS, tmp_path_factory.mktemp("hippo") / "Task04_Hippocampus", N_REAL)


@pytest.fixture(scope="session")
def hippo_prepared(hippo_raw, tmp_path_factory) -> tuple[Path, dict]:
    """Prepared with a 64 px cap (every case's in-plane sides are <= 52 at the median 1 mm: the cap does not bite)."""
    out = tmp_path_factory.mktemp("hippo_prep") / "prepared"
    manifest = prepare_msd(hippo_raw, out, size=64, noise_dice=0.6, meta_cases=2, test_cases=2, seed=0,
                           progress=False)
    return out, manifest


# --------------------------------------------------------------------------- synthetic data

def _blobs(shape, centre, radii) -> np.ndarray:
    """uint8 label map: class 2 an inner ellipsoid, class 1 the concentric shell around it."""
    grid = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))
    label = np.zeros(shape, np.uint8)
    label[r2 <= 1.0] = 1
    label[r2 <= 0.35] = 2
    return label


def _channels(label: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Two contrasts: 'T2' bright in the foreground, 'ADC' dark in the inner class."""
    t2 = 100.0 + 200.0 * (label > 0) + rng.normal(0, 10, label.shape)
    adc = 1000.0 - 600.0 * (label == 2) + rng.normal(0, 20, label.shape)
    return [t2.astype(np.float32), adc.astype(np.float32)]


def _affine(spacing, origin, angle_deg: float = 0.0, flip_x: bool = False) -> np.ndarray:
    theta = np.radians(angle_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0.0], [np.sin(theta), np.cos(theta), 0.0], [0.0, 0.0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(spacing)
    if flip_x:
        a[:3, 0] *= -1
    a[:3, 3] = origin
    return a


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def _write_nnunet(root: Path, n_cases: int, *, seed: int = 0) -> Path:
    """nnU-Net v2 raw dataset: CASE_0000/CASE_0001 channels, labels PZ (shell) and TZ (core)."""
    rng = np.random.default_rng(seed)
    for i in range(n_cases):
        case = f"prostate_{i:03d}"
        shape = (26 + 2 * (i % 3), 22 + (i % 2) * 4, 10 + i % 4)
        centre = (shape[0] * 0.45 + i % 2, shape[1] * 0.55, shape[2] / 2)
        label = _blobs(shape, centre, (7.0 + i % 3, 6.0, 4.0))
        affine = _affine((0.9, 1.1, 2.5), (-20.0 + i, 15.0, 30.0 - 2 * i), angle_deg=8.0 * (i % 3 - 1),
                         flip_x=bool(i % 2))
        for c, channel in enumerate(_channels(label, rng)):
            _save(channel, affine, root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        _save(label, affine, root / "labelsTr" / f"{case}.nii.gz")
    meta = {"name": "SynthProstate", "channel_names": {"0": "T2", "1": "ADC"},
            "labels": {"background": 0, "PZ": 1, "TZ": 2}, "numTraining": n_cases, "file_ending": ".nii.gz",
            "licence": "synthetic"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def _write_msd_v1(root: Path, cases: dict[str, tuple[list[np.ndarray], np.ndarray, np.ndarray]],
                  modality: dict[str, str], labels: dict[str, str]) -> Path:
    """MSD v1 task: ``cases[id] = (channels, label, affine)``; several channels go into one 4-D file."""
    training = []
    for case, (channels, label, affine) in cases.items():
        image = channels[0] if len(channels) == 1 else np.stack(channels, axis=-1)
        _save(image, affine, root / "imagesTr" / f"{case}.nii.gz")
        _save(label, affine, root / "labelsTr" / f"{case}.nii.gz")
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    meta = {"name": "Synth", "modality": modality, "labels": labels, "numTraining": len(training),
            "numTest": 0, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta, indent=4))
    return root


# --------------------------------------------------------------------------- 1. real MSD v1 cases

def test_msd_v1_manifest_on_real_hippocampus_cases(hippo_raw, hippo_prepared):
    out, manifest = hippo_prepared
    assert manifest == _manifest(out)
    assert manifest["task"] == "segmentation" and manifest["source_layout"] == "msd"
    assert manifest["name"] == "Hippocampus" and manifest["licence"] == "CC-BY-SA 4.0"
    assert manifest["labels"] == HIPPO_LABELS
    assert manifest["label_values"] == {"0": 0, "1": 1, "2": 2}
    assert manifest["channel_names"] == {"0": "MRI"}
    assert manifest["size"] == 64 and manifest["slice_axis"] == "axial" and manifest["file_ending"] == ".nii.gz"
    splits = manifest["splits"]
    assert (len(splits["train"]), len(splits["meta"]), len(splits["test"])) == (6, 2, 2)
    listed = [Path(e["label"]).name[: -len(".nii.gz")]
              for e in json.loads((hippo_raw / "dataset.json").read_text())["training"]]
    assert sorted(splits["train"] + splits["meta"] + splits["test"]) == sorted(listed) == sorted(manifest["cases"])
    for case, entry in manifest["cases"].items():
        assert entry["images"] == [f"imagesTr/{case}_0000.nii.gz"] and entry["image"] == entry["images"][0]
        assert entry["label"] == f"labelsTr/{case}.nii.gz"
        assert entry["source"] == {"images": [f"imagesTr/{case}.nii.gz"], "label": f"labelsTr/{case}.nii.gz"}
        image, _ = _load(out / entry["image"])
        label, _ = _load(out / entry["label"])
        raw_label, _ = _load(hippo_raw / "labelsTr" / f"{case}.nii.gz")
        # axial slicing of an RAS case at the median spacing, 1 mm like every case: the raw grid itself
        # (issue 39; was stretched to 64 x 64 in plane)
        assert manifest["spacing"] == [1.0, 1.0, 1.0] and entry["prepared"]["spacing"] == [1.0, 1.0, 1.0]
        assert image.dtype == np.float32 and image.shape == raw_label.shape
        assert label.dtype == np.uint8 and label.shape == image.shape
        assert set(np.unique(label).tolist()) == {0, 1, 2}
        noisy = out / "labelsNoisy" / f"{case}.nii.gz"
        if entry["split"] == "train":
            assert entry["noisy_label"] == f"labelsNoisy/{case}.nii.gz" and noisy.is_file()
            assert set(np.unique(_load(noisy)[0]).tolist()) <= {0, 1, 2}
            assert set(entry["noise_dice_per_class"]) == {"Anterior", "Posterior"}
            assert entry["noise_dice"] == manifest["noise"]["per_case_dice"][case]
        else:
            assert entry["noisy_label"] is None and entry["noise_dice"] is None and not noisy.exists()
    assert sorted(p.name for p in (out / "labelsNoisy").iterdir()) == sorted(f"{c}.nii.gz" for c in splits["train"])
    assert sorted(manifest["noise"]["per_case_dice"]) == splits["train"]


def test_prediction_to_raw_restores_the_real_labels_exactly(hippo_raw, hippo_prepared):
    """The prepared grid is the raw one (1 mm, the median): nearest neighbour there and back is the identity."""
    out, manifest = hippo_prepared
    for case, entry in manifest["cases"].items():
        label, _ = _load(out / entry["label"])
        back, affine = prediction_to_raw(label, manifest, case)
        raw_label, raw_affine = _load(hippo_raw / "labelsTr" / f"{case}.nii.gz")
        assert back.dtype == np.uint8 and back.shape == raw_label.shape
        np.testing.assert_allclose(affine, raw_affine, atol=1e-6)
        assert per_class_dice(back, raw_label, [1, 2]) == [1.0, 1.0]
        assert np.array_equal(back, raw_label.astype(np.uint8))


# --------------------------------------------------------------------------- 2. nnU-Net v2, two channels

@pytest.fixture(scope="module")
def nnunet_raw(tmp_path_factory) -> Path:
    return _write_nnunet(tmp_path_factory.mktemp("nnunet") / "Dataset901_SynthProstate", 8)


def test_nnunet_v2_two_channels(nnunet_raw, tmp_path):
    from medl2b.data.datasets import load_slices

    out = tmp_path / "prep"
    result = _run("prepare", "msd", nnunet_raw, out, "--size", "32", "--meta-cases", "1", "--test-cases", "1",
                  "--noise-dice", "0.8")
    assert result.exit_code == 0, result.output
    assert "prepared 8 cases" in result.output and "PZ" in result.output and "TZ" in result.output
    manifest = _manifest(out)
    assert manifest["source_layout"] == "nnunetv2" and manifest["task"] == "segmentation"
    assert manifest["channel_names"] == {"0": "T2", "1": "ADC"}
    assert manifest["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    assert abs(manifest["noise"]["achieved_mean_dice"] - 0.8) <= 0.03
    for case, entry in manifest["cases"].items():
        assert entry["images"] == [f"imagesTr/{case}_0000.nii.gz", f"imagesTr/{case}_0001.nii.gz"]
        t2, t2_affine = _load(out / entry["images"][0])
        adc, adc_affine = _load(out / entry["images"][1])
        label, label_affine = _load(out / entry["label"])
        # issue 39: each case at the dataset's one spacing, its own field of view (was 32 x 32 in plane)
        assert t2.shape == adc.shape == label.shape == tuple(entry["prepared"]["size"])
        assert entry["prepared"]["spacing"] == manifest["spacing"] and max(entry["prepared"]["size"][:2]) <= 32
        np.testing.assert_allclose(t2_affine, label_affine, atol=1e-6)
        np.testing.assert_allclose(adc_affine, label_affine, atol=1e-6)
        # the channels are not swapped: T2 bright over the gland, ADC dark over the core (TZ)
        assert t2[label > 0].mean() > t2[label == 0].mean() + 1.0
        assert adc[label == 2].mean() < adc[label != 2].mean() - 1.0
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == sorted(
        f"{c}_{k:04d}.nii.gz" for c in manifest["cases"] for k in (0, 1))
    train = load_slices(out, "train")
    n_slices = sum(manifest["cases"][c]["prepared"]["size"][2] for c in manifest["splits"]["train"])
    assert tuple(train.image.shape) == (n_slices, 2, 32, 32)  # padded to the largest slice (<= the 32 px cap)
    assert tuple(train.label.shape) == (n_slices, 32, 32)
    assert set(train.label.unique().tolist()) <= {0, 1, 2} and set(train.clean.unique().tolist()) == {0, 1, 2}
    assert not np.array_equal(train.label.numpy(), train.clean.numpy())  # noisy labels for train cases


# --------------------------------------------------------------------------- 3. MSD v1, 4-D multi-modal

def test_msd_v1_four_d_multimodal_image(tmp_path):
    rng = np.random.default_rng(3)
    cases = {}
    for i in range(3):
        shape = (24, 20 + 2 * i, 8)
        label = _blobs(shape, (11.0, 9.0 + i, 4.0), (7.0, 6.0, 3.0))
        cases[f"prostate_{i:02d}"] = (_channels(label, rng), label, _affine((0.6, 0.6, 3.0), (5.0, -3.0, 2.0 * i)))
    raw = _write_msd_v1(tmp_path / "Task05_Synth", cases, {"0": "T2", "1": "ADC"},
                        {"0": "background", "1": "PZ", "2": "TZ"})
    assert nib.load(str(raw / "imagesTr" / "prostate_00.nii.gz")).shape == (24, 20, 8, 2)
    out = tmp_path / "prep"
    manifest = prepare_msd(raw, out, size=32, noise_dice=1.0, meta_cases=0, test_cases=1, progress=False)
    assert manifest["source_layout"] == "msd" and manifest["channel_names"] == {"0": "T2", "1": "ADC"}
    assert manifest["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    for case, entry in manifest["cases"].items():
        assert entry["images"] == [f"imagesTr/{case}_0000.nii.gz", f"imagesTr/{case}_0001.nii.gz"]
        assert entry["source"]["images"] == [f"imagesTr/{case}.nii.gz"]
        t2, _ = _load(out / entry["images"][0])
        adc, _ = _load(out / entry["images"][1])
        label, _ = _load(out / entry["label"])
        # issue 39: the raw 0.6 mm grid is the median one and fits the 32 px cap: kept (was stretched to 32 x 32)
        assert t2.ndim == adc.ndim == 3 and t2.shape == adc.shape == label.shape == cases[case][1].shape
        assert t2[label > 0].mean() > t2[label == 0].mean() + 1.0
        assert adc[label == 2].mean() < adc[label != 2].mean() - 1.0
        assert len(entry["intensity"]) == 2
    assert len(list((out / "imagesTr").glob("*.nii.gz"))) == 2 * len(cases)


def test_non_consecutive_label_values_map_to_indices_and_back(tmp_path):
    rng = np.random.default_rng(5)
    cases = {}
    for i in range(3):
        label = _blobs((24, 20, 6), (10.0 + i, 9.0, 3.0), (7.0, 6.0, 2.5))
        label[label == 2] = 4
        cases[f"case_{i}"] = ([_channels(label, rng)[0]], label, _affine((0.8, 0.8, 3.0), (1.0, 2.0, 3.0)))
    raw = _write_msd_v1(tmp_path / "Task98_Gaps", cases, {"0": "MRI"}, {"0": "background", "1": "outer", "4": "inner"})
    out = tmp_path / "prep"
    manifest = prepare_msd(raw, out, size=32, noise_dice=1.0, meta_cases=0, test_cases=1, progress=False)
    assert manifest["labels"] == {"background": 0, "outer": 1, "inner": 2}
    assert manifest["label_values"] == {"0": 0, "1": 1, "2": 4}
    for case, entry in manifest["cases"].items():
        label, _ = _load(out / entry["label"])
        assert set(np.unique(label).tolist()) == {0, 1, 2}
        back, _ = prediction_to_raw(label, manifest, case)
        assert np.array_equal(back, cases[case][1])  # values 0/1/4 again, on the raw 24 x 20 x 6 grid


# --------------------------------------------------------------------------- 4. orientation

def _storage_variants() -> dict[str, tuple[list[np.ndarray], np.ndarray, np.ndarray]]:
    """One anatomy (24 x 20 x 10 RAS voxels, off-centre blobs) stored four ways."""
    shape = (24, 20, 10)
    label = _blobs(shape, (8.0, 12.0, 6.0), (6.0, 5.0, 3.0))
    label[18:21, 2:5, 1:3] = 1  # a small corner blob: no flip symmetry at all
    channels = _channels(label, np.random.default_rng(7))
    ras = _affine((1.0, 1.2, 2.5), (-10.0, 20.0, -5.0))
    flip = np.array([[-1.0, 0, 0, shape[0] - 1], [0, -1.0, 0, shape[1] - 1], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    lps = ras @ flip  # stored voxel (i', j', k) = RAS voxel (X-1-i', Y-1-j', k)
    perm = ras.copy()
    perm[:, :3] = ras[:, [2, 0, 1]]  # stored voxel (k, i, j) = RAS voxel (i, j, k)
    perm_lps = lps.copy()
    perm_lps[:, :3] = lps[:, [1, 2, 0]]  # stored (j', k, i') of the LPS array

    def flip01(a):
        return np.ascontiguousarray(a[::-1, ::-1, :])

    def to_kij(a):
        return np.ascontiguousarray(np.transpose(a, (2, 0, 1)))

    def to_jki(a):
        return np.ascontiguousarray(np.transpose(a, (1, 2, 0)))

    return {
        "case_ras": (channels, label, ras),
        "case_lps": ([flip01(c) for c in channels], flip01(label), lps),
        "case_perm": ([to_kij(c) for c in channels], to_kij(label), perm),
        "case_perm_lps": ([to_jki(flip01(c)) for c in channels], to_jki(flip01(label)), perm_lps),
    }


@pytest.fixture(scope="module")
def orientation_raw(tmp_path_factory) -> Path:
    variants = _storage_variants()
    root = tmp_path_factory.mktemp("orient") / "Task99_Orientation"
    _write_msd_v1(root, {k: ([v[0][0]], v[1], v[2]) for k, v in variants.items()}, {"0": "MRI"},
                  {"0": "background", "1": "outer", "2": "inner"})
    # the raw files really are stored differently, yet hold the same voxels in physical space
    codes = {c: "".join(nib.aff2axcodes(nib.load(str(root / "labelsTr" / f"{c}.nii.gz")).affine)) for c in variants}
    assert codes == {"case_ras": "RAS", "case_lps": "LPS", "case_perm": "SRA", "case_perm_lps": "PSL"}
    return root


@pytest.mark.parametrize("slice_axis, n_slices", [("axial", 10), ("coronal", 20)])
def test_slicing_follows_the_anatomical_axis_not_the_storage_order(orientation_raw, tmp_path, slice_axis,
                                                                   n_slices):
    out = tmp_path / slice_axis
    result = _run("prepare", "msd", orientation_raw, out, "--size", "32", "--slice-axis", slice_axis,
                  "--meta-cases", "0", "--test-cases", "1", "--noise-dice", "1")
    assert result.exit_code == 0, result.output
    manifest = _manifest(out)
    assert manifest["slice_axis"] == slice_axis
    labels, images, affines = {}, {}, {}
    for case, entry in manifest["cases"].items():
        labels[case], affines[case] = _load(out / entry["label"])
        images[case], _ = _load(out / entry["image"])
        assert entry["prepared"]["size"][2] == n_slices  # issue 39: the raw in-plane grid (was 32 x 32)
        assert entry["prepared"]["size"] == manifest["cases"]["case_ras"]["prepared"]["size"]
    ref = labels["case_ras"]
    assert ref.shape[2] == n_slices and set(np.unique(ref).tolist()) == {0, 1, 2}
    assert not np.array_equal(ref, ref[::-1, ::-1, :]) and not np.array_equal(ref, ref[:, :, ::-1])
    for case in ("case_lps", "case_perm", "case_perm_lps"):
        assert np.array_equal(labels[case], ref), case
        np.testing.assert_allclose(images[case], images["case_ras"], atol=1e-4, err_msg=case)
        np.testing.assert_allclose(affines[case], affines["case_ras"], atol=1e-6, err_msg=case)
    # and the way back lands on each case's own stored grid
    variants = _storage_variants()
    for case, entry in manifest["cases"].items():
        back, affine = prediction_to_raw(labels[case], manifest, case)
        np.testing.assert_allclose(affine, variants[case][2], atol=1e-6)
        assert back.shape == variants[case][1].shape
        assert mask_dice(back == 2, variants[case][1] == 2) > 0.9


# --------------------------------------------------------------------------- 5. multi-class calibration

@pytest.mark.parametrize("target", [0.8, 0.6, 0.4])
def test_multiclass_noise_calibration_on_real_cases(hippo_raw, tmp_path, target):
    out = tmp_path / "prep"
    manifest = prepare_msd(hippo_raw, out, size=32, noise_dice=target, meta_cases=1, test_cases=1, seed=0,
                           progress=False)
    noise = manifest["noise"]
    train = manifest["splits"]["train"]
    assert len(train) == 8
    assert noise["target_dice"] == target and abs(noise["achieved_mean_dice"] - target) <= 0.03
    assert noise["params"]["strength"] > 0
    assert set(noise["achieved_per_class_dice"]) == {"Anterior", "Posterior"}
    assert sorted(noise["per_case_class_dice"]) == train
    present = 0
    recomputed = []
    for case in train:
        clean, _ = _load(out / "labelsTr" / f"{case}.nii.gz")
        noisy, _ = _load(out / "labelsNoisy" / f"{case}.nii.gz")
        assert noisy.dtype == np.uint8 and noisy.shape == clean.shape
        assert set(np.unique(noisy).tolist()) <= {0, 1, 2}
        dices = per_class_dice(noisy, clean, [1, 2])
        recorded = noise["per_case_class_dice"][case]
        assert set(recorded) == {"Anterior", "Posterior"}
        assert recorded["Anterior"] == pytest.approx(dices[0], abs=1e-5)
        assert recorded["Posterior"] == pytest.approx(dices[1], abs=1e-5)
        assert noise["per_case_dice"][case] == pytest.approx(np.mean(dices), abs=1e-5)
        recomputed.append(np.mean(dices))
        present += int({1, 2} <= set(np.unique(noisy).tolist()))
    assert np.mean(recomputed) == pytest.approx(noise["achieved_mean_dice"], abs=1e-5)
    for name in ("Anterior", "Posterior"):
        mean = np.mean([noise["per_case_class_dice"][c][name] for c in train])
        assert noise["achieved_per_class_dice"][name] == pytest.approx(mean, abs=1e-5)
        assert 0.0 < noise["achieved_per_class_dice"][name] < 1.0
    if target == 0.8:
        assert present >= 0.75 * len(train)


# --------------------------------------------------------------------------- 6. bad input through the CLI

def _assert_clean_failure(result, out: Path, *needles: str) -> None:
    """Exit 2, exactly one `error:` line naming the file, no traceback, OUT not created."""
    one_line_error(result, *needles)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture
def small_raw(hippo_raw, tmp_path) -> Path:
    """Three real cases, copied to be damaged."""
    return _copy_msd_subset(hippo_raw, tmp_path / "raw", 3)


def _prepare_small(raw: Path, out: Path):
    return _run("prepare", "msd", raw, out, "--size", "32", "--test-cases", "1", "--meta-cases", "0",
                "--noise-dice", "1")


def _victim(raw: Path, kind: str, index: int = 1) -> Path:
    entry = json.loads((raw / "dataset.json").read_text())["training"][index]
    return raw / entry[kind]  # pathlib drops the "./" of the entry, as the reader does


def test_small_raw_prepares_cleanly(small_raw, tmp_path):
    """The baseline the damaged copies below start from."""
    out = tmp_path / "out"
    result = _prepare_small(small_raw, out)
    assert result.exit_code == 0, result.output
    assert len(_manifest(out)["cases"]) == 3


def test_dataset_json_missing(small_raw, tmp_path):
    (small_raw / "dataset.json").unlink()
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_small(small_raw, out), out, str(small_raw / "dataset.json"), "missing")


def test_dataset_json_malformed(small_raw, tmp_path):
    path = small_raw / "dataset.json"
    path.write_text(path.read_text()[:-40])
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_small(small_raw, out), out, str(path), "not valid JSON")


def test_listed_image_missing(small_raw, tmp_path):
    victim = _victim(small_raw, "image")
    victim.unlink()
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_small(small_raw, out), out, str(victim), "not found")


def test_undeclared_label_value(small_raw, tmp_path):
    victim = _victim(small_raw, "label")
    label, affine = _load(victim)
    label = label.astype(np.uint8)
    label[tuple(np.argwhere(label == 2)[0])] = 3
    _save(label, affine, victim)
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_small(small_raw, out), out, str(victim), "[3]", "not declared")


def test_image_and_label_shapes_differ(small_raw, tmp_path):
    victim = _victim(small_raw, "label")
    label, affine = _load(victim)
    _save(np.ascontiguousarray(label[:, :, :-1]), affine, victim)
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_small(small_raw, out), out, str(victim), "shape", "differs")


def test_image_and_label_affines_differ(small_raw, tmp_path):
    victim = _victim(small_raw, "label")
    label, affine = _load(victim)
    affine[0, 3] += 5.0
    _save(label, affine, victim)
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_small(small_raw, out), out, str(victim), "affine differs", "5")


def test_msd_v1_modality_declares_more_channels_than_the_image_has(small_raw, tmp_path):
    path = small_raw / "dataset.json"
    meta = json.loads(path.read_text())
    meta["modality"] = {"0": "T2", "1": "ADC"}
    path.write_text(json.dumps(meta))
    out = tmp_path / "out"
    first = _victim(small_raw, "image", 0)
    _assert_clean_failure(_prepare_small(small_raw, out), out, str(first), "1 channel(s)", "declares 2")


def test_nnunet_v2_case_missing_a_channel(tmp_path):
    raw = _write_nnunet(tmp_path / "Dataset902_Missing", 3)
    victim = raw / "imagesTr" / "prostate_001_0001.nii.gz"
    victim.unlink()
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_small(raw, out), out, str(victim), "channel 1 (ADC)", "not found")


@pytest.mark.parametrize("kind", ["image", "label"])
def test_truncated_nifti(small_raw, tmp_path, kind):
    victim = _victim(small_raw, kind)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_small(small_raw, out), out, str(victim), "cannot read NIfTI")


def test_unknown_slice_axis(small_raw, tmp_path):
    out = tmp_path / "out"
    result = _run("prepare", "msd", small_raw, out, "--size", "32", "--test-cases", "1", "--slice-axis", "oblique")
    _assert_clean_failure(result, out, "--slice-axis", "axial, coronal, sagittal", "'oblique'")


def test_duplicate_class_names_are_rejected(small_raw, tmp_path):
    path = small_raw / "dataset.json"
    meta = json.loads(path.read_text())
    meta["labels"] = {"0": "background", "1": "hippocampus", "2": "hippocampus"}
    path.write_text(json.dumps(meta))
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_small(small_raw, out), out, str(path), "hippocampus")


def test_out_already_prepared_needs_overwrite(small_raw, tmp_path):
    out = tmp_path / "out"
    assert _prepare_small(small_raw, out).exit_code == 0
    before = _digest(out)
    result = _run("prepare", "msd", small_raw, out, "--size", "48", "--test-cases", "1", "--meta-cases", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}: already holds a prepared dataset"), result.output
    assert "--overwrite" in lines[0]
    assert _digest(out) == before and _manifest(out)["size"] == 32
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


# --------------------------------------------------------------------------- 7. train + eval end to end

def test_train_and_eval_write_predictions_on_the_raw_grid(hippo_raw, tmp_path):
    raw = _copy_msd_subset(hippo_raw, tmp_path / "raw", 7)
    prep, run = tmp_path / "prep", tmp_path / "run"
    result = _run("prepare", "msd", raw, prep, "--size", "32", "--test-cases", "2", "--meta-cases", "1")
    assert result.exit_code == 0, result.output
    assert "prepared 7 cases" in result.output and " mm" in result.output  # the target spacing (issue 39)
    result = _run("train", "--data", prep, "--out", run, "--method", "ce", "--profile", "cpu", "--epochs", "1",
                  "--device", "cpu", "--set", "warmup_epochs=0", "--set", "features=[4,4,8,16,32,4]",
                  "--set", "steps_per_epoch=4")
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["task"] == "segmentation" and config["epochs"] == 1 and config["features"] == [4, 4, 8, 16, 32, 4]
    result = _run("eval", run, "--no-figures", "--device", "cpu")
    assert result.exit_code == 0, result.output
    manifest = _manifest(prep)
    test_cases = manifest["splits"]["test"]
    assert len(test_cases) == 2
    assert sorted(p.name for p in (run / "eval" / "predictions").iterdir()) == [f"{c}.nii.gz" for c in test_cases]
    for case in test_cases:
        pred = nib.load(str(run / "eval" / "predictions" / f"{case}.nii.gz"))
        raw_label = nib.load(str(raw / "labelsTr" / f"{case}.nii.gz"))
        data = np.asanyarray(pred.dataobj)
        assert data.dtype == np.uint8 and data.shape == raw_label.shape
        assert np.allclose(pred.affine, raw_label.affine, atol=1e-5)
        assert set(np.unique(data).tolist()) <= {0, 1, 2}
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["classes"] == ["Anterior", "Posterior"]
    assert set(summary["per_class"]) == {"Anterior", "Posterior"}
    assert [row["case"] for row in summary["per_case"]] == test_cases
    for row in summary["per_case"]:
        assert set(row["per_class"]) == {"Anterior", "Posterior"}
        assert 0.0 <= row["per_class"]["Anterior"]["dice"] <= 1.0
    header = (run / "eval" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"dice_Anterior", "dice_Posterior", "hd95_Anterior"} <= set(header)


def test_too_small_size_is_refused_before_anything_is_written(small_raw, tmp_path):
    out = tmp_path / "out"
    result = _run("prepare", "msd", small_raw, out, "--size", "16", "--test-cases", "1", "--meta-cases", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output and not out.exists()
