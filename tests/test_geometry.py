"""Issue 39: one target spacing, CT intensities, native-resolution metrics, datasets larger than the cache."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Spacing

from medl2b.config import load_config
from medl2b.data.grid import image_from_xyz, prepare_volume, spacing_geometry
from medl2b.data.msd import preprocess_image, prepare_msd, read_image
from medl2b.data.nifti import Geometry, affine_from_geometry
from medl2b.evaluate.run import evaluate_run
from medl2b.tasks import SegmentationTask
from medl2b.train.trainer import Trainer

TINY = {"features": [2, 2, 4, 4, 8, 2], "epochs": 1, "warmup_epochs": 0, "steps_per_epoch": 2, "batch_size": 4,
        "meta_batch_size": 2, "device": "cpu", "augment": False, "method": "ce"}


def _write_raw(root: Path, cases: dict, channel: str = "MRI") -> Path:
    """An nnU-Net v2 raw dataset: case -> (image (x, y, z), label (x, y, z), spacing, origin), RAS axes."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case, (image, label, spacing, origin) in cases.items():
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = origin
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(root / "imagesTr" / f"{case}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(root / "labelsTr" / f"{case}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": channel}, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, "organ": 1},
                                                   "numTraining": len(cases)}))
    return root


def _centre(geo: dict) -> np.ndarray:
    """Physical (LPS) centre of a grid."""
    d = np.asarray(geo["direction"]).reshape(3, 3)
    return np.asarray(geo["origin"]) + d @ ((np.asarray(geo["size"]) - 1) / 2 * np.asarray(geo["spacing"]))


def _ball(shape, spacing, centre_mm, radius_mm) -> np.ndarray:
    grid = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    return (sum((g - c) ** 2 for g, c in zip(grid, centre_mm)) <= radius_mm ** 2).astype(np.uint8)


# three scanners: fields of view 60 x 40, 72 x 54 and 90 x 66 mm (none square), three spacings
SCANNERS = {"a": ((0.5, 0.5, 2.0), (120, 80, 12)), "b": ((0.8, 0.8, 3.0), (90, 68, 8)),
            "c": ((1.2, 1.2, 4.0), (75, 55, 6))}


@pytest.fixture(scope="module")
def three_scanners(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    cases = {}
    for name, (spacing, shape) in SCANNERS.items():
        extent = np.asarray(shape) * np.asarray(spacing)
        label = _ball(shape, spacing, extent / 2, 12.0)
        image = 100.0 + 300.0 * label + rng.normal(0, 5, shape)
        cases[name] = (image, label, spacing, (10.0, -20.0, 5.0))
    return _write_raw(tmp_path_factory.mktemp("scanners") / "Dataset950_Scanners", cases)


def test_three_spacings_prepare_to_one_spacing_with_physical_extents_kept(three_scanners, tmp_path):
    manifest = prepare_msd(three_scanners, tmp_path / "prep", noise_dice=1.0, meta_cases=0, test_cases=0,
                           slice_axis=None, progress=False)
    assert manifest["spacing"] == pytest.approx([0.8, 0.8, 3.0]) and manifest["spacing_source"].startswith("median")
    for case, entry in manifest["cases"].items():
        original, prepared = entry["original"], entry["prepared"]
        assert prepared["spacing"] == manifest["spacing"]
        extent_o = np.asarray(original["size"]) * np.asarray(original["spacing"])
        extent_p = np.asarray(prepared["size"]) * np.asarray(prepared["spacing"])
        # the physical extent is kept to within half a target voxel at each edge, centred, aspect ratio kept
        assert np.all(np.abs(extent_p - extent_o) <= np.asarray(prepared["spacing"]) / 2 + 1e-6), case
        np.testing.assert_allclose(_centre(prepared), _centre(original), atol=1e-5)
        assert abs(extent_p[0] / extent_p[1] - extent_o[0] / extent_o[1]) < 0.05
        # and so is the physical size of what is in it: the 12 mm ball keeps its volume (4/3 pi r^3 = 7238 mm^3)
        label = np.asanyarray(nib.load(str(tmp_path / "prep" / entry["label"])).dataobj)
        assert abs(label.sum() * np.prod(prepared["spacing"]) / 7238.2 - 1.0) < 0.15, case
        img = nib.load(str(tmp_path / "prep" / entry["image"]))
        np.testing.assert_allclose(img.header.get_zooms(), manifest["spacing"], rtol=1e-5)
    given = prepare_msd(three_scanners, tmp_path / "given", noise_dice=1.0, meta_cases=0, test_cases=0,
                        slice_axis=None, spacing=(1.0, 1.0), size=64, progress=False)
    # --spacing in-plane (through-plane the median), then --size caps the largest case (90 mm) at 64 px
    assert given["spacing"] == pytest.approx([90 / 64, 90 / 64, 3.0])
    assert "given in-plane" in given["spacing_source"] and "--size" in given["spacing_source"]
    assert max(max(e["prepared"]["size"][:2]) for e in given["cases"].values()) == 64


def test_monai_spacingd_differs():
    """Why grid.py resamples with SimpleITK and not MONAI ``Spacing``: measured on 2-voxel stripes at 0.27 mm
    resampled to 0.6 mm, MONAI aliases (no anti-aliasing) and grows its grid from the first voxel centre
    instead of keeping the field of view centred."""
    shape, spacing = (120, 40, 3), (0.27, 0.27, 2.0)
    stripes = np.broadcast_to(100.0 + 100.0 * (np.arange(shape[0]) % 2 == 0)[:, None, None], shape).astype(np.float32)
    geo = Geometry(shape, spacing, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    monai = Spacing(pixdim=(0.6, 0.6, 2.0), mode="bilinear")(MetaTensor(
        torch.from_numpy(stripes)[None], affine=torch.as_tensor(affine_from_geometry(spacing, geo.origin,
                                                                                     geo.direction))))
    ours, _, target, _ = prepare_volume([image_from_xyz(stripes, geo)], None, (0.6, 0.6, 2.0),
                                        [{"scheme": "ct", "lo": 0.0, "hi": 1e9, "mean": 0.0, "std": 1.0}])
    assert float(monai[0, 2:-2, 10, 1].std()) > 2.5 * float(ours[0][2:-2, 10, 1].std())  # aliasing
    raw_centre = (np.asarray(shape) - 1) / 2 * np.asarray(spacing)
    monai_centre = (np.asarray(monai.shape[1:]) - 1) / 2 * 0.6 + np.asarray(monai.affine[:3, 3])
    ours_centre = np.asarray(target.origin) + (np.asarray(target.size) - 1) / 2 * np.asarray(target.spacing)
    assert abs(monai_centre[0] - raw_centre[0]) > 0.1 and abs(ours_centre[0] - raw_centre[0]) < 1e-9
    assert target == spacing_geometry(geo, (0.6, 0.6, 2.0))


def test_ct_phantom_keeps_its_window(tmp_path):
    """Hounsfield units mean the same in every case: the organ (60 +- 10 HU) maps to the same normalised values
    whether the case is mostly air or mostly bone, where a per-case z-score would move it."""
    rng = np.random.default_rng(1)
    cases = {}
    for i, bone in enumerate((0.0, 0.2, 0.5, 0.0)):
        shape = (40, 40, 8)
        label = _ball(shape, (1.0, 1.0, 1.0), (20.0, 20.0, 4.0), 6.0 + i)
        hu = np.full(shape, -1000.0)                                   # air
        hu[4:36, 4:36] = 40.0                                          # soft tissue
        hu[4:4 + int(32 * bone), 4:36] = 1200.0                        # bone: a different share per case
        hu[label > 0] = 60.0 + rng.normal(0, 10, int(label.sum()))     # the organ
        cases[f"ct_{i}"] = (hu, label, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    raw = _write_raw(tmp_path / "Dataset951_CT", cases, channel="CT")
    manifest = prepare_msd(raw, tmp_path / "prep", noise_dice=1.0, meta_cases=1, test_cases=1, seed=0,
                           progress=False)
    plan = manifest["intensity_normalisation"]["channels"][0]
    assert plan["scheme"] == "ct" and plan["channel"] == "CT"
    assert 20 < plan["lo"] < 45 and 75 < plan["hi"] < 100 and abs(plan["mean"] - 60) < 2 and 8 < plan["std"] < 12
    for case, entry in manifest["cases"].items():
        image = np.asanyarray(nib.load(str(tmp_path / "prep" / entry["image"])).dataobj)
        hu = cases[case][0]
        expected = (np.clip(hu, plan["lo"], plan["hi"]) - plan["mean"]) / plan["std"]
        np.testing.assert_allclose(image, expected, atol=1e-4)         # one window for every case
        assert entry["intensity"][0] == {k: plan[k] for k in ("lo", "hi", "mean", "std")}
        # predict repeats it from the manifest on the raw file
        stack, affine = read_image([raw / "imagesTr" / f"{case}_0000.nii.gz"], 1)
        np.testing.assert_allclose(preprocess_image(stack, affine, manifest)["image"][0], image, atol=1e-6)


@pytest.fixture(scope="module")
def coarsened(tmp_path_factory, bundled_hippocampus) -> tuple[Path, Path, dict]:
    """6 bundled real hippocampus cases capped at 32 px: prepared at 1.625 mm in plane, not their raw 1 mm."""
    raw = bundled_hippocampus(tmp_path_factory.mktemp("raw39") / "Task04", 6)
    prep = tmp_path_factory.mktemp("prep39") / "prepared"
    manifest = prepare_msd(raw, prep, size=32, noise_dice=0.6, meta_cases=1, test_cases=2, seed=0, progress=False)
    assert manifest["spacing"][0] > 1.5
    return raw, prep, manifest


def _numpy_dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def test_eval_native_dice_is_the_dice_of_the_written_prediction_against_the_raw_label(coarsened, tmp_path,
                                                                                      monkeypatch):
    raw, prep, manifest = coarsened
    run = tmp_path / "run"
    Trainer(load_config("segmentation", profile="cpu", overrides={"data": str(prep), "out": str(run), **TINY}),
            progress=False).fit()

    def oracle(self, model, case, device):  # the prepared clean label as the prediction: a Dice far from 0
        _, _, clean = self.store.read(case, -1, noisy=False)
        return clean.astype(np.uint8), clean.astype(np.uint8)

    monkeypatch.setattr(SegmentationTask, "predict_case", oracle)
    summary = evaluate_run(run, split="test", device="cpu", figures=False)
    assert summary["metric_grid"].startswith("native")
    for row in summary["per_case"]:
        case = row["case"]
        pred = nib.load(str(run / "eval" / "predictions" / f"{case}.nii.gz"))
        ref = nib.load(str(raw / "labelsTr" / f"{case}.nii.gz"))
        p, t = np.asanyarray(pred.dataobj), np.asanyarray(ref.dataobj)
        assert p.shape == t.shape and np.allclose(pred.affine, ref.affine, atol=1e-5)
        for value, name in ((1, "Anterior"), (2, "Posterior")):
            dice = _numpy_dice(p == value, t == value)
            assert 0.5 < dice < 1.0                    # the 1.625 mm round trip loses a little of each structure
            assert row["per_class"][name]["dice"] == pytest.approx(dice, abs=1e-12)


@pytest.mark.parametrize("dims, cache_mb", [(2, 0.3), (2, 0.0), (3, 0.3)])
def test_a_dataset_larger_than_the_cache_trains(coarsened, tmp_path, dims, cache_mb):
    _, prep, manifest = coarsened
    total = sum(p.stat().st_size for p in (prep / "arrays").iterdir())
    assert total > 2 * 0.3 * 2**20                                      # the prepared arrays do not fit the cache
    run = tmp_path / "run"
    trainer = Trainer(load_config("segmentation", profile="cpu", overrides={
        "data": str(prep), "out": str(run), "spatial_dims": dims, "cache_mb": cache_mb, **TINY,
        "steps_per_epoch": 4}), progress=False)
    trainer.fit()
    store = trainer.task.store
    # a cache of 0.3 MiB holds two of these cases (each ~0.15 MiB), evicting the rest; without one every slice is
    # read through a memory map
    assert 0 < store.peak_cached_bytes <= cache_mb * 2**20 if cache_mb else store.peak_cached_bytes == 0
    assert (run / "checkpoint_latest.pt").is_file()
