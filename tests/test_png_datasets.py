"""2-D image datasets (nnU-Net v2 natural-image layout) in ``prepare msd``, given noisy labels
(``--noisy-labels``), the CHASE_DB1 converter and its split, and 2-D images in ``predict`` / ``eval --pred``.

The synthetic datasets are tiny PNGs written with SimpleITK: RGB (one file, three channels) and grayscale,
with images of two sizes (square 48 x 48 and 40 wide x 32 high), labels 0/1/2.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from conftest import SHARED_DATA
from medl2b.cli import app
from medl2b.config import load_config
from medl2b.data.grid import normalise_intensity, prediction_to_raw
from medl2b.data.msd import load_natural_image, prepare_msd, read_image, write_mask
from medl2b.errors import InputError
from medl2b.dice import mask_dice
from medl2b.evaluate.run import evaluate_run
from medl2b.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
CHASE = SHARED_DATA / "CHASEDB1"
runner = CliRunner()
#: (height, width) of the synthetic cases: three square ones (the default size is then 48) and two smaller.
SHAPES = {"c0": (48, 48), "c1": (32, 40), "c2": (48, 48), "c3": (32, 40), "c4": (48, 48)}


def _write(array: np.ndarray, path: Path) -> None:
    """Write a (rows, columns[, components]) uint8 array as a 2-D image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=array.ndim == 3), str(path))


def _label(h: int, w: int, shift: int = 0) -> np.ndarray:
    """A (rows, columns) label map, not symmetric in its axes: class 1 a wide bar, class 2 a small block."""
    lab = np.zeros((h, w), np.uint8)
    lab[4:12, 3 + shift:30 + shift] = 1
    lab[18:26, 5:11] = 2
    return lab


def _dataset(root: Path, *, rgb: bool, noisy: bool = False, ending: str = ".png") -> Path:
    rng = np.random.default_rng(0)
    for case, (h, w) in SHAPES.items():
        image = rng.integers(0, 256, (h, w, 3) if rgb else (h, w), dtype=np.uint8)
        _write(image, root / "imagesTr" / f"{case}_0000{ending}")
        _write(_label(h, w), root / "labelsTr" / f"{case}{ending}")
        if noisy:
            _write(_label(h, w, shift=int(case[1]) % 3), root / "noisy" / f"{case}{ending}")
    channels = {"0": "R", "1": "G", "2": "B"} if rgb else {"0": "gray"}
    meta = {"name": "Dataset900_Tiny2D", "channel_names": channels, "labels": {"background": 0, "bar": 1, "block": 2},
            "numTraining": len(SHAPES), "file_ending": ending, "overwrite_image_reader_writer": "NaturalImage2DIO"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _nii(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _prepare(raw: Path, out: Path, **kw) -> dict:
    return prepare_msd(raw, out, meta_cases=1, test_cases=1, seed=0, progress=False, **kw)


# ------------------------------------------------------------------------------------------ prepare

@pytest.mark.parametrize("rgb", [True, False], ids=["rgb", "gray"])
def test_2d_dataset_prepares_and_round_trips(tmp_path, rgb):
    raw = _dataset(tmp_path / "raw", rgb=rgb)
    m = _prepare(raw, tmp_path / "out")
    assert m["image_2d"] is True and m["slice_axis"] is None and m["source_file_ending"] == ".png"
    assert m["size"] is None and m["spacing"] == [1.0, 1.0, 1.0]  # no cap, the median spacing: no resampling
    assert list(m["channel_names"].values()) == (["R", "G", "B"] if rgb else ["gray"])
    for case, (h, w) in SHAPES.items():
        entry = m["cases"][case]
        assert entry["original"]["size"] == [w, h, 1] and entry["original"]["spacing"] == [1.0, 1.0, 1.0]
        assert len(entry["images"]) == (3 if rgb else 1)
        label = _nii(tmp_path / "out" / entry["label"])
        assert label.shape == (w, h, 1)  # issue 39: every image at its own size (was stretched to 48 x 48)
        raw_label = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{case}.png")))
        # the way back onto the raw grid gives the raw label exactly (x = columns, y = rows)
        back, _ = prediction_to_raw(label, m, case)
        assert back.shape == (w, h, 1)
        assert np.array_equal(back[:, :, 0].T, raw_label), case
        # prepared at the raw size (every image since issue 39, the 48 x 48 ones before): the arrays themselves
        assert np.array_equal(label[:, :, 0].T, raw_label)
        pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTr" / f"{case}_0000.png")))
        pixels = pixels.reshape(h, w, -1)
        for c, name in enumerate(entry["images"]):
            expected = normalise_intensity(pixels[..., c].T[:, :, None].astype(np.float32))[0]
            np.testing.assert_allclose(_nii(tmp_path / "out" / name), expected, atol=1e-5)
    assert m["noise"]["achieved_mean_dice"] < 1.0 and "given" not in m["noise"]  # calibrated noise works in 2-D
    for case in m["splits"]["train"]:
        h, w = SHAPES[case]
        assert _nii(tmp_path / "out" / "labelsNoisy" / f"{case}.nii.gz").shape == (w, h, 1)


def test_rgba_drops_alpha_and_tif_reads(tmp_path):
    raw = _dataset(tmp_path / "raw", rgb=True, ending=".tif")
    rgba = np.random.default_rng(1).integers(0, 256, (48, 48, 4), dtype=np.uint8)
    _write(rgba, raw / "imagesTr" / "c0_0000.tif")
    data, _ = load_natural_image(raw / "imagesTr" / "c0_0000.tif", 3)
    assert data.shape == (48, 48, 1, 3) and np.array_equal(data[:, :, 0, :], np.transpose(rgba[..., :3], (1, 0, 2)))
    m = _prepare(raw, tmp_path / "out")
    assert len(m["cases"]["c0"]["images"]) == 3


def test_given_noisy_labels_2d(tmp_path):
    raw = _dataset(tmp_path / "raw", rgb=True, noisy=True)
    m = _prepare(raw, tmp_path / "out", noisy_labels=raw / "noisy")
    noise = m["noise"]
    assert noise["given"] is True and noise["source"] == "noisy" and noise["target_dice"] is None
    train = m["splits"]["train"]
    assert sorted(noise["per_case_dice"]) == sorted(train)
    for case in train:
        clean = _nii(tmp_path / "out" / m["cases"][case]["label"])
        given = _nii(tmp_path / "out" / m["cases"][case]["noisy_label"])
        h, w = SHAPES[case]
        if (h, w) == (48, 48):
            raw_noisy = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "noisy" / f"{case}.png")))
            assert np.array_equal(given[:, :, 0].T, raw_noisy)
        dices = [mask_dice(given == k, clean == k) for k in (1, 2)]
        assert noise["per_case_dice"][case] == pytest.approx(float(np.mean(dices)), abs=1e-5)
        assert m["cases"][case]["source"]["noisy_label"] == f"noisy/{case}.png"
    shifted = [c for c in train if int(c[1]) % 3]
    assert sorted(noise["noisy_cases"]) == sorted(shifted)
    assert noise["achieved_mean_dice"] == pytest.approx(np.mean(list(noise["per_case_dice"].values())), abs=1e-5)


def test_given_noisy_labels_3d(tmp_path, bundled_hippocampus):
    raw = bundled_hippocampus(tmp_path / "raw", 4)
    noisy = tmp_path / "noisy"
    shutil.copytree(raw / "labelsTr", noisy)
    first = sorted(noisy.glob("*.nii.gz"))[0]
    img = nib.load(str(first))
    data = np.asanyarray(img.dataobj).copy()
    data[data == 2] = 0  # this observer never draws the posterior part
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(first))
    m = prepare_msd(raw, tmp_path / "out", size=32, meta_cases=1, test_cases=1, seed=0, progress=False,
                    noisy_labels=noisy)
    noise = m["noise"]
    case = first.name[: -len(".nii.gz")]
    assert noise["given"] is True and sorted(noise["per_case_dice"]) == m["splits"]["train"]
    for name, dice in noise["per_case_dice"].items():
        if name == case:
            assert noise["per_case_class_dice"][name]["Posterior"] == 0.0 and name in noise["noisy_cases"]
        else:
            assert dice == 1.0 and name not in noise["noisy_cases"]


# ------------------------------------------------------------------------------------------ bad inputs

def _bad_size(raw: Path) -> Path:
    _write(_label(40, 48), raw / "labelsTr" / "c0.png")
    return raw / "labelsTr" / "c0.png"


def _bad_values(raw: Path) -> Path:
    _write(_label(48, 48) * 255 // 2, raw / "labelsTr" / "c2.png")  # 0/127/255 instead of 0/1/2
    return raw / "labelsTr" / "c2.png"


def _rgb_for_gray(raw: Path) -> Path:
    _write(np.zeros((48, 48, 3), np.uint8), raw / "imagesTr" / "c4_0000.png")
    return raw / "imagesTr" / "c4_0000.png"


def _gray_for_rgb(raw: Path) -> Path:
    _write(np.zeros((48, 48), np.uint8), raw / "imagesTr" / "c4_0000.png")
    return raw / "imagesTr" / "c4_0000.png"


def _noisy_bad_size(raw: Path) -> Path:
    for case in SHAPES:
        _write(_label(40, 48), raw / "noisy" / f"{case}.png")
    return raw / "noisy"


def _noisy_missing(raw: Path) -> Path:
    for case in SHAPES:
        (raw / "noisy" / f"{case}.png").unlink()
    return raw / "noisy" / "c0.png"


BAD = {  # name -> (rgb dataset?, damage, problem in the message)
    "label size": (False, _bad_size, "differs from size"),
    "label values": (False, _bad_values, "not declared in dataset.json labels"),
    "rgb declared gray": (False, _rgb_for_gray, "an RGB image), but dataset.json declares 1"),
    "gray declared rgb": (True, _gray_for_rgb, "a grayscale image), but dataset.json declares 3"),
    "noisy label size": (False, _noisy_bad_size, "differs from size"),
    "noisy label missing": (False, _noisy_missing, "given noisy label of train case"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_2d_inputs_name_the_file(tmp_path, name):
    rgb, damage, problem = BAD[name]
    raw = _dataset(tmp_path / "raw", rgb=rgb, noisy=True)
    where = damage(raw)
    kw = {"noisy_labels": raw / "noisy"} if name.startswith("noisy") else {}
    with pytest.raises(InputError) as info:
        _prepare(raw, tmp_path / "out", **kw)
    message = str(info.value)
    assert problem in message, message
    if where.suffix:  # a file: its name is in the message
        assert where.name in message
    assert not (tmp_path / "out").exists()
    args = ["prepare", "msd", str(raw), str(tmp_path / "cli_out"), "--meta-cases", "1", "--test-cases", "1"]
    if kw:
        args += ["--noisy-labels", str(raw / "noisy")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and problem in lines[0], result.output
    assert not (tmp_path / "cli_out").exists()


def test_cli_noisy_labels(tmp_path):
    raw = _dataset(tmp_path / "raw", rgb=True, noisy=True)
    result = runner.invoke(app, ["prepare", "msd", str(raw), str(tmp_path / "out"), "--meta-cases", "1",
                                 "--test-cases", "1", "--noisy-labels", str(raw / "noisy")])
    assert result.exit_code == 0, result.output
    assert "given noisy labels (noisy) vs clean: Dice" in result.output
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["noise"]["given"] is True


# ------------------------------------------------------------------------------------------ CHASE_DB1

def _convert_module():
    sys.path.insert(0, str(ROOT / "data_prep" / "chasedb1"))
    try:
        import convert
    finally:
        sys.path.pop(0)
    return convert


@pytest.mark.skipif(not CHASE.is_dir(), reason="CHASE_DB1 not found next to the repository (../shared/data)")
def test_chasedb1_converter_on_two_real_images(tmp_path):
    convert = _convert_module()
    release = tmp_path / "CHASEDB1"
    release.mkdir()
    cases = ["Image_05L", "Image_05R"]
    for case in cases:
        for suffix in (".jpg", "_1stHO.png", "_2ndHO.png"):
            shutil.copyfile(CHASE / f"{case}{suffix}", release / f"{case}{suffix}")
    meta = convert.convert_chasedb1(release, tmp_path / "raw")
    raw = tmp_path / "raw"
    assert meta == json.loads((raw / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"} and meta["labels"] == {"background": 0, "vessel": 1}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".png" and meta["licence"] == "CC BY 4.0"
    for case in cases:
        jpeg = sitk.GetArrayFromImage(sitk.ReadImage(str(release / f"{case}.jpg")))
        png = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTr" / f"{case}_0000.png")))
        assert png.shape == (960, 999, 3) and np.array_equal(png, jpeg)  # lossless: the decoded pixels
        for sub, tag in (("labelsTr", "1stHO"), ("labelsTr_observer2", "2ndHO")):
            mask = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / sub / f"{case}.png")))
            source = sitk.GetArrayFromImage(sitk.ReadImage(str(release / f"{case}_{tag}.png")))
            assert set(np.unique(mask).tolist()) == {0, 1} and np.array_equal(mask, (source > 0).astype(np.uint8))
    m = prepare_msd(raw, tmp_path / "prepared", size=64, meta_cases=0, test_cases=1, seed=0, progress=False,
                    noisy_labels=raw / "labelsTr_observer2")
    assert m["noise"]["given"] and m["noise"]["source"] == "labelsTr_observer2"
    assert 0.6 < m["noise"]["achieved_mean_dice"] < 0.95  # two human observers: real disagreement
    # a missing observer mask: one error naming it, nothing written
    (release / "Image_05R_2ndHO.png").unlink()
    with pytest.raises(InputError, match="Image_05R_2ndHO.png"):
        convert.convert_chasedb1(release, tmp_path / "raw2")
    assert not (tmp_path / "raw2").exists()


def test_chasedb1_split_is_by_child_and_covers_every_image():
    convert = _convert_module()
    split = json.loads((ROOT / "data_prep" / "chasedb1" / "split.json").read_text())
    images = [f"Image_{n:02d}{eye}" for n in range(1, 15) for eye in "LR"]
    listed = split["train"] + split["meta"] + split["test"]
    assert sorted(listed) == sorted(images) and len(listed) == 28
    assert (len(split["train"]), len(split["meta"]), len(split["test"])) == (18, 2, 8)
    side = {}
    for key in ("train", "meta", "test"):
        for image in split[key]:
            assert side.setdefault(image[6:8], key) == key, f"child {image[6:8]} on two sides"
    assert {k: split[k] for k in ("train", "meta", "test")} == convert.draw_split(convert.SPLIT_SEED)


# ------------------------------------------------------------------------------------------ predict / eval

def test_png_mask_write_read_round_trip(tmp_path):
    mask = np.zeros((40, 32, 1), np.uint8)  # x = 40 columns, y = 32 rows
    mask[3:9, 20:30, 0] = 2
    mask[30:38, 1:4, 0] = 1
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    path = write_mask(mask, affine, tmp_path / "case.png")
    img = sitk.ReadImage(str(path))
    assert img.GetSize() == (40, 32) and img.GetNumberOfComponentsPerPixel() == 1
    back, back_affine = load_natural_image(path)
    assert np.array_equal(back[..., 0], mask) and np.allclose(back_affine, affine)
    stack, _ = read_image([path], 1)
    assert stack.shape == (40, 32, 1, 1)
    with pytest.raises(InputError, match="one 2-D label map"):
        write_mask(np.zeros((4, 4, 2), np.uint8), affine, tmp_path / "volume.png")


def test_predict_and_eval_on_png_images(tmp_path):
    """An RGB PNG dataset trains with L2B, predicts and evaluates at the raw size."""
    raw = _dataset(tmp_path / "raw", rgb=True)
    m = _prepare(raw, tmp_path / "prepared")
    cfg = load_config("segmentation", profile="cpu", overrides={
        "data": str(tmp_path / "prepared"), "out": str(tmp_path / "run"), "features": [2, 2, 4, 4, 8, 2],
        "epochs": 1, "warmup_epochs": 0, "steps_per_epoch": 1, "batch_size": 4, "meta_batch_size": 2,
        "device": "cpu", "augment": False, "method": "l2b"})  # a meta step on PNG data
    train(cfg, progress=False)
    last = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header, row = last[0].split(","), last[-1].split(",")
    assert math.isfinite(float(row[header.index("meta_loss")]))  # the meta step ran
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    test = m["splits"]["test"][0]
    shutil.copyfile(raw / "imagesTr" / f"{test}_0000.png", inputs / f"{test}.png")
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTr" / "c1_0000.png")))
    sitk.WriteImage(sitk.GetImageFromArray(pixels, isVector=True), str(inputs / "photo.jpg"))  # JPEG -> PNG out
    result = runner.invoke(app, ["predict", str(tmp_path / "run"), str(inputs), str(tmp_path / "masks"),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for case, source in ((test, inputs / f"{test}.png"), ("photo", inputs / "photo.jpg")):
        out = tmp_path / "masks" / f"{case}.png"
        img, src = sitk.ReadImage(str(out)), sitk.ReadImage(str(source))
        assert img.GetSize() == src.GetSize() and img.GetNumberOfComponentsPerPixel() == 1
        assert set(np.unique(sitk.GetArrayFromImage(img)).tolist()) <= {0, 1, 2}
    assert not (tmp_path / "masks" / "photo.jpg").exists()
    (tmp_path / "masks" / "photo.png").unlink()
    # a grayscale PNG to this RGB run: one error line naming it, exit 2
    _write(np.zeros((32, 40), np.uint8), tmp_path / "gray" / "g.png")
    bad = runner.invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / "gray"), str(tmp_path / "m2"),
                              "--device", "cpu"])
    assert bad.exit_code == 2 and "g.png" in bad.output and "grayscale" in bad.output, bad.output
    # PNG folders score against PNG references, distances in pixels
    scored = runner.invoke(app, ["eval", "--pred", str(tmp_path / "masks"), "--ref", str(raw / "labelsTr"),
                                 "--labels", str(raw / "dataset.json"), "--out", str(tmp_path / "report")])
    assert scored.exit_code == 0, scored.output
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert "pixels" in summary["metric_grid"]
    rows = (tmp_path / "report" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(test)
    # eval of the run writes its predictions as PNG at the raw size, the same masks predict wrote
    evaluate_run(tmp_path / "run", split="test", figures=False)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "run" / "eval" / "predictions" / f"{test}.png")))
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "masks" / f"{test}.png")))
    assert np.array_equal(written, predicted)
