"""``medl2b predict`` / ``medl2b.load_run`` on raw images, and ``medl2b eval --pred --ref``.

Tiny runs trained for one short epoch on the real hippocampus cases bundled with the demo (and on the
ISIC phantoms): the weights are meaningless, but prediction is deterministic, so what is checked is
the plumbing: the training's own preprocessing, the input's grid and format, the raw label values,
the equality with what ``medl2b eval`` writes, and the errors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

import medl2b
from medl2b.cli import app
from medl2b.config import load_config
from medl2b.data.datasets import ImageSet, IsicDataset
from medl2b.data.images import load_square_image
from medl2b.data.msd import prepare_msd
from medl2b.evaluate.run import evaluate_run
from medl2b.train.trainer import train

runner = CliRunner()
TINY = {"features": [2, 2, 4, 4, 8, 2], "epochs": 1, "warmup_epochs": 0, "steps_per_epoch": 2, "batch_size": 8,
        "meta_batch_size": 4, "device": "cpu", "augment": False, "method": "ce"}


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _array(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=float)


@pytest.fixture(scope="module")
def hippo(tmp_path_factory, bundled_hippocampus):
    """6 bundled real cases prepared at 32 px (2 test cases) and a tiny 2-D run, evaluated on the test split."""
    root = tmp_path_factory.mktemp("predict")
    raw = bundled_hippocampus(root / "raw", 6)
    prepare_msd(raw, root / "prepared", size=32, noise_dice=0.6, meta_cases=1, test_cases=2, seed=0, progress=False)
    cfg = load_config("segmentation", profile="cpu", overrides={"data": str(root / "prepared"),
                                                                "out": str(root / "run"), **TINY})
    train(cfg, progress=False)
    evaluate_run(root / "run", split="test", figures=False, device="cpu")
    manifest = json.loads((root / "prepared" / "dataset.json").read_text())
    inputs = root / "inputs"  # the raw images of the test cases, as a user would have them
    inputs.mkdir()
    for case in manifest["splits"]["test"]:
        shutil.copyfile(raw / "imagesTr" / f"{case}.nii.gz", inputs / f"{case}.nii.gz")
    return {"root": root, "raw": raw, "run": root / "run", "inputs": inputs, "test": manifest["splits"]["test"],
            "manifest": manifest}


def test_new_images_are_preprocessed_exactly_as_prepare_did(hippo):
    from medl2b.data.msd import preprocess_image, read_image

    for case, entry in hippo["manifest"]["cases"].items():
        stack, affine = read_image([hippo["raw"] / "imagesTr" / f"{case}.nii.gz"], 1)
        pre = preprocess_image(stack, affine, hippo["manifest"])
        prepared, _ = _array(hippo["root"] / "prepared" / entry["images"][0])
        assert np.array_equal(pre["image"][0], prepared), case
        assert pre["prepared"].to_dict() == entry["prepared"]


def test_predict_raw_nifti_gives_the_masks_eval_wrote(hippo, tmp_path):
    out = tmp_path / "masks"
    result = _cli("predict", hippo["run"], hippo["inputs"], out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"predicted {len(hippo['test'])} of {len(hippo['test'])} case(s)" in result.output
    assert "s per case" in result.output
    for case in hippo["test"]:
        mask, affine = _array(out / f"{case}.nii.gz")
        image, image_affine = _array(hippo["inputs"] / f"{case}.nii.gz")
        assert mask.shape == image.shape and np.allclose(affine, image_affine)      # the input's own grid
        assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) <= {0, 1, 2}  # raw label values
        written, _ = _array(hippo["run"] / "eval" / "predictions" / f"{case}.nii.gz")
        assert np.array_equal(mask, written), case  # the same preprocessing as prepare + eval
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    # the Python API: the same mask, from a path or from an in-memory nibabel image
    predictor = medl2b.load_run(hippo["run"], device="cpu")
    case = hippo["test"][0]
    mask, _ = _array(out / f"{case}.nii.gz")
    seg = predictor.predict(hippo["inputs"] / f"{case}.nii.gz", probabilities=True)
    assert np.array_equal(seg.mask, mask) and seg.classes == ["background", "Anterior", "Posterior"]
    assert np.array_equal(predictor.predict(nib.load(str(hippo["inputs"] / f"{case}.nii.gz"))).mask, mask)
    assert seg.probabilities.shape == (3, *mask.shape) and seg.probabilities.dtype == np.float32
    inside = seg.probabilities.sum(0)
    assert np.allclose(inside[inside > 0.5], 1.0, atol=1e-4)


def test_one_case_in_two_orientations_gives_one_mask(hippo, tmp_path):
    case = hippo["test"][0]
    img = nib.load(str(hippo["inputs"] / f"{case}.nii.gz"))
    flipped = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine).as_reoriented([[2, -1], [0, 1], [1, -1]])
    assert nib.aff2axcodes(flipped.affine) != nib.aff2axcodes(img.affine)
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(img, str(inputs / "stored.nii.gz"))
    nib.save(flipped, str(inputs / "turned.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(inputs / "stored.nii.gz")), str(inputs / "meta.mha"))
    out = tmp_path / "out"
    result = _cli("predict", hippo["run"], inputs, out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    stored, _ = _array(out / "stored.nii.gz")
    turned = nib.load(str(out / "turned.nii.gz"))
    assert turned.shape == flipped.shape and np.allclose(turned.affine, flipped.affine)
    back = turned.as_reoriented(nib.orientations.ornt_transform(nib.io_orientation(turned.affine),
                                                                nib.io_orientation(img.affine)))
    assert np.allclose(back.affine, img.affine, atol=1e-4)
    assert np.array_equal(np.asanyarray(back.dataobj), stored)
    # MetaImage in -> MetaImage out, on the input's grid
    mha, src = sitk.ReadImage(str(out / "meta.mha")), sitk.ReadImage(str(inputs / "meta.mha"))
    assert mha.GetSize() == src.GetSize() and np.allclose(mha.GetOrigin(), src.GetOrigin(), atol=1e-4)
    assert np.allclose(mha.GetDirection(), src.GetDirection()) and np.allclose(mha.GetSpacing(), src.GetSpacing())
    assert (np.transpose(sitk.GetArrayFromImage(mha), (2, 1, 0)) == stored).mean() > 0.99


def test_outputs_are_kept_unless_overwrite_and_format_and_probabilities(hippo, tmp_path):
    out = tmp_path / "out"
    case = hippo["test"][0]
    one = hippo["inputs"] / f"{case}.nii.gz"
    assert _cli("predict", hippo["run"], one, out, "--device", "cpu").exit_code == 0
    (out / f"{case}.nii.gz").write_bytes(b"mine")
    result = _cli("predict", hippo["run"], one, out, "--device", "cpu")
    assert result.exit_code == 2 and len(_errors(result.output)) == 1 and "--overwrite" in result.output
    assert (out / f"{case}.nii.gz").read_bytes() == b"mine"
    result = _cli("predict", hippo["run"], one, out, "--device", "cpu", "--overwrite", "--format", "nrrd",
                  "--save-probabilities", "--tta")
    assert result.exit_code == 0, result.output
    nrrd = sitk.ReadImage(str(out / f"{case}.nrrd"))
    assert nrrd.GetSize() == nib.load(str(one)).shape
    probs = np.load(out / f"{case}.npz")
    assert probs["probabilities"].shape == (3, *nib.load(str(one)).shape)
    assert list(probs["classes"]) == ["background", "Anterior", "Posterior"]
    assert list(probs["label_values"]) == [0, 1, 2]


def test_bad_inputs_are_one_line_each_and_the_rest_is_predicted(hippo, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = hippo["test"][0]
    shutil.copyfile(hippo["inputs"] / f"{good}.nii.gz", inputs / f"{good}.nii.gz")
    data = (hippo["inputs"] / f"{good}.nii.gz").read_bytes()
    (inputs / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    img = nib.load(str(hippo["inputs"] / f"{good}.nii.gz"))
    two = np.stack([np.asanyarray(img.dataobj)] * 2, axis=-1)
    nib.save(nib.Nifti1Image(two, img.affine), str(inputs / "twochannels.nii.gz"))
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = _cli("predict", hippo["run"], inputs, out, "--device", "cpu")
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = _errors(result.output)
    assert len(errors) == 2, result.output
    assert any("truncated.nii.gz: cannot read NIfTI" in e for e in errors)
    assert any("twochannels.nii.gz: has 2 channel(s), but the model takes 1" in e for e in errors)
    assert "predicted 1 of 3 case(s)" in result.output and "skipped 1 other file" in result.output
    assert sorted(p.name for p in out.iterdir()) == [f"{good}.nii.gz"]
    # problems that concern every input: one line, nothing written
    for args, message in (((hippo["run"], tmp_path / "nowhere", tmp_path / "o2"), "not found"),
                          ((tmp_path, inputs, tmp_path / "o3"), "not a run folder"),
                          ((hippo["run"], inputs, inputs), "is the input folder"),
                          ((hippo["run"], inputs, tmp_path / "o4", "--format", "png"), "--format")):
        result = _cli("predict", *args)
        assert result.exit_code == 2 and len(_errors(result.output)) == 1 and message in result.output, args
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_eval_scores_a_prediction_folder(hippo, tmp_path):
    pred = tmp_path / "pred"
    assert _cli("predict", hippo["run"], hippo["inputs"], pred, "--device", "cpu").exit_code == 0
    ref = hippo["raw"] / "labelsTr"
    result = _cli("eval", "--pred", pred, "--ref", ref, "--labels", hippo["raw"] / "dataset.json")
    assert result.exit_code == 0, result.output
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["classes"] == ["Anterior", "Posterior"] and summary["n_cases"] == len(hippo["test"])
    assert summary["n_references_unused"] == 6 - len(hippo["test"])
    assert (pred / "metrics.csv").read_text().count("\n") == len(hippo["test"]) + 1
    assert "Dice Anterior" in (pred / "report.md").read_text()
    case = summary["per_case"][0]
    p, _ = _array(pred / f"{case['case']}.nii.gz")
    t, _ = _array(ref / f"{case['case']}.nii.gz")
    for value, name in ((1, "Anterior"), (2, "Posterior")):
        a, b = p == value, t == value
        dice = 2 * (a & b).sum() / (a.sum() + b.sum()) if (a.sum() + b.sum()) else 1.0
        assert case["per_class"][name]["dice"] == pytest.approx(dice)
    # without --labels the classes are the reference values; a report folder elsewhere
    result = _cli("eval", "--pred", pred, "--ref", ref, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["classes"] == ["1", "2"]
    # a prediction without a reference, half the arguments: one line, exit 2
    shutil.copyfile(pred / f"{case['case']}.nii.gz", pred / "stranger.nii.gz")
    result = _cli("eval", "--pred", pred, "--ref", ref)
    assert result.exit_code == 2 and len(_errors(result.output)) == 1 and "stranger.nii.gz" in result.output
    result = _cli("eval", "--pred", pred)
    assert result.exit_code == 2 and "--ref" in result.output


def test_two_channel_run_reads_nnunet_channel_files_and_4d_files(hippo, tmp_path):
    """nnU-Net v2 raw data with two channels (the image and its square root): CASE_0000/CASE_0001 or one 4-D file."""
    raw = tmp_path / "Dataset001_Two"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    cases = sorted(p.name[:-7] for p in (hippo["raw"] / "labelsTr").iterdir())
    for case in cases:
        img = nib.load(str(hippo["raw"] / "imagesTr" / f"{case}.nii.gz"))
        data = np.asanyarray(img.dataobj).astype(np.float32)
        nib.save(nib.Nifti1Image(data, img.affine), str(raw / "imagesTr" / f"{case}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(np.sqrt(np.abs(data)), img.affine), str(raw / "imagesTr" / f"{case}_0001.nii.gz"))
        shutil.copyfile(hippo["raw"] / "labelsTr" / f"{case}.nii.gz", raw / "labelsTr" / f"{case}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "sqrtT1"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": len(cases), "file_ending": ".nii.gz"}))
    prepare_msd(raw, tmp_path / "prepared", size=32, meta_cases=1, test_cases=2, seed=0, progress=False)
    cfg = load_config("segmentation", profile="cpu", overrides={"data": str(tmp_path / "prepared"),
                                                                "out": str(tmp_path / "run"), **TINY})
    train(cfg, progress=False)
    evaluate_run(tmp_path / "run", split="test", figures=False, device="cpu")
    test = json.loads((tmp_path / "prepared" / "dataset.json").read_text())["splits"]["test"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in test:
        for c in (0, 1):
            shutil.copyfile(raw / "imagesTr" / f"{case}_{c:04d}.nii.gz", inputs / f"{case}_{c:04d}.nii.gz")
    first = nib.load(str(inputs / f"{test[0]}_0000.nii.gz"))
    both = np.stack([np.asanyarray(nib.load(str(inputs / f"{test[0]}_{c:04d}.nii.gz")).dataobj) for c in (0, 1)], -1)
    nib.save(nib.Nifti1Image(both, first.affine), str(inputs / "fourd.nii.gz"))
    shutil.copyfile(raw / "imagesTr" / f"{test[1]}_0000.nii.gz", inputs / "lonely_0000.nii.gz")
    result = _cli("predict", tmp_path / "run", inputs, tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 2, result.output
    errors = _errors(result.output)
    assert len(errors) == 1 and "lonely_0000.nii.gz: has 1 channel(s), but the model takes 2" in errors[0]
    for case in test:  # named after the case, equal to what eval wrote from the prepared channels
        mask, _ = _array(tmp_path / "out" / f"{case}.nii.gz")
        assert np.array_equal(mask, _array(tmp_path / "run" / "eval" / "predictions" / f"{case}.nii.gz")[0])
    assert np.array_equal(_array(tmp_path / "out" / "fourd.nii.gz")[0],
                          _array(tmp_path / "out" / f"{test[0]}.nii.gz")[0])


def test_3d_run_predicts_by_sliding_windows_and_refuses_2d_images(hippo, tmp_path):
    cfg = load_config("segmentation", profile="cpu-3d", overrides={
        "data": str(hippo["root"] / "prepared"), "out": str(tmp_path / "run3d"), **TINY, "batch_size": 2,
        "meta_batch_size": 1, "patch_size": [32, 32, 16]})
    train(cfg, progress=False)
    evaluate_run(tmp_path / "run3d", split="test", figures=False, device="cpu")
    inputs = tmp_path / "in"
    shutil.copytree(hippo["inputs"], inputs)
    img = nib.load(str(inputs / f"{hippo['test'][0]}.nii.gz"))
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, 10], img.affine), str(inputs / "slice.nii.gz"))
    result = _cli("predict", tmp_path / "run3d", inputs, tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = _errors(result.output)
    assert len(errors) == 1 and "slice.nii.gz: is a 2-D image" in errors[0] and "3-D model" in errors[0]
    for case in hippo["test"]:
        mask, _ = _array(tmp_path / "out" / f"{case}.nii.gz")
        assert np.array_equal(mask, _array(tmp_path / "run3d" / "eval" / "predictions" / f"{case}.nii.gz")[0])
    # the 2-D run takes the same slice: an axial slice, predicted as a one-slice volume
    result = _cli("predict", hippo["run"], inputs / "slice.nii.gz", tmp_path / "out2d", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert nib.load(str(tmp_path / "out2d" / "slice.nii.gz")).shape[:2] == img.shape[:2]


def test_classification_run_writes_predictions_csv(isic_raw, isic_prepared, tmp_path):
    cfg = load_config("skin-lesion-cls", profile="cpu", overrides={
        "data": str(isic_prepared), "out": str(tmp_path / "run"), "method": "ce", "epochs": 1, "warmup_epochs": 0,
        "arch": "resnet50", "pretrained": "none", "width": 0.0625, "image_size": 32, "batch_size": 8, "meta_batch_size": 8, "steps_per_epoch": 1,
        "device": "cpu"})
    train(cfg, progress=False)
    inputs = tmp_path / "in"
    inputs.mkdir()
    images = sorted((isic_raw / "ISIC_2019_Training_Input").glob("*.jpg"))[:3]
    for p in images:
        shutil.copyfile(p, inputs / p.name)
    from PIL import Image

    Image.open(images[0]).save(inputs / "as_png.png")
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    result = _cli("predict", tmp_path / "run", inputs, out, "--device", "cpu")
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = _errors(result.output)
    assert len(errors) == 1 and "broken.jpg: cannot read image" in errors[0]
    lines = (out / "predictions.csv").read_text().splitlines()
    classes = json.loads((isic_prepared / "dataset.json").read_text())["classes"]
    assert lines[0] == ",".join(["image", "predicted", *(f"p_{c}" for c in classes)])
    rows = [line.split(",") for line in lines[1:]]
    assert sorted(r[0] for r in rows) == sorted([p.name for p in images] + ["as_png.png"])
    for r in rows:
        assert r[1] in classes and sum(float(v) for v in r[2:]) == pytest.approx(1.0, abs=1e-4)
    result = _cli("predict", tmp_path / "run", inputs, out, "--device", "cpu")  # the CSV is kept
    assert result.exit_code == 2 and "predictions.csv: exists" in result.output
    got = medl2b.load_run(tmp_path / "run", device="cpu").predict(inputs / images[0].name)
    row = next(r for r in rows if r[0] == images[0].name)
    assert got.label == row[1] and got.probabilities[classes[0]] == pytest.approx(float(row[2]), abs=1e-5)
    # one predict signature for every task: tta averages the softmax over the image and its two flips
    predictor = medl2b.load_run(tmp_path / "run", device="cpu")
    flipped = predictor.predict(inputs / images[0].name, tta=True)
    n = 1
    pixels = load_square_image(inputs / images[0].name, int(predictor.manifest["size"]))[None]
    x = IsicDataset(ImageSet(images=pixels, index=np.arange(n), label=np.zeros(n, dtype=np.int64),
                             clean=np.zeros(n, dtype=np.int64), classes=classes))[0]["image"][None]
    with torch.no_grad():
        run = lambda v: predictor.model(predictor._task.input_transform(v)).softmax(1)[0]  # noqa: E731
        expected = ((run(x) + run(x.flip(2)) + run(x.flip(3))) / 3).numpy()
    assert list(flipped.probabilities.values()) == pytest.approx(expected.tolist(), abs=1e-6)
    assert not np.allclose(expected, list(got.probabilities.values()), atol=1e-7)  # the flips change it
