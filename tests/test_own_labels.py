"""Your own noisy labels (issue 35): a dataset with no clean label for its training cases, only the labels
given plus a few trusted ones, through prepare -> train (l2b) -> eval -> audit -> predict with the prepared
folder deleted; for segmentation (nnU-Net v2 layout, NIfTI written with nibabel) and classification (PNG
and JPEG images written with PIL, three CSVs). Also every bad CSV, the two broken segmentation datasets
(an image without its label, all labels empty) and what ``--resume`` does with a flag.

Everything is tiny (a few 40 x 40 x 6 volumes, 32 px images, 2 epochs of 2 steps, real MONAI networks of a
few channels), so each test takes seconds.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli_checks import one_line_error
from medl2b.cli import app

runner = CliRunner()
LABELS = {"background": 0, "left": 1, "right": 2}
TINY_SEG = ["--profile", "cpu", "--epochs", "2", "--set", "warmup_epochs=1", "--set", "steps_per_epoch=2",
            "--set", "batch_size=4", "--set", "meta_batch_size=4", "--set", "features=[4,4,8,8,16,4]",
            "--device", "cpu"]
TINY_CLS = ["--epochs", "2", "--set", "warmup_epochs=1", "--set", "steps_per_epoch=2", "--set", "batch_size=8",
            "--set", "meta_batch_size=6", "--set", "arch=resnet50", "--set", "pretrained=null", "--set", "width=0.0625",
            "--set", "image_size=32", "--device", "cpu"]


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _ok(result):
    assert result.exit_code == 0, result.output
    return result.output


_one_line_error = one_line_error


# --------------------------------------------------------------------------- segmentation data

def _volume(rng, shift: int = 0):
    """An image with two bright blobs and their label map (1 left, 2 right), 40 x 40 x 6 at 1 x 1 x 2 mm."""
    x, y = np.mgrid[:40, :40]
    label = np.zeros((40, 40, 6), dtype=np.uint8)
    for z in range(1, 5):
        label[..., z][(x - 20) ** 2 + (y - 12 - shift) ** 2 < 30] = 1
        label[..., z][(x - 20) ** 2 + (y - 28 - shift) ** 2 < 30] = 2
    image = (label > 0) * 100.0 + rng.normal(0, 10, label.shape)
    return image.astype(np.float32), label


def _write(path: Path, array, affine) -> None:
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))


@pytest.fixture(scope="module")
def seg_raw(tmp_path_factory) -> Path:
    """nnU-Net v2 raw dataset, your own labels: 8 training cases whose given labels are the only labels
    (two of them drawn shifted by 3 px), trusted labels of 2 cases in labelsTrusted/, 2 test cases in
    imagesTs/ + labelsTs/."""
    root = tmp_path_factory.mktemp("own_seg") / "Dataset001_Blobs"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "labelsTrusted"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    for i in range(8):
        image, label = _volume(rng)
        _write(root / "imagesTr" / f"case{i:02d}_0000.nii.gz", image, affine)
        given = _volume(rng, shift=3)[1] if i in (0, 3) else label  # the given label of case 0 is off
        _write(root / "labelsTr" / f"case{i:02d}.nii.gz", given, affine)
        if i in (0, 1):
            _write(root / "labelsTrusted" / f"case{i:02d}.nii.gz", label, affine)
    for i in range(2):
        image, label = _volume(rng)
        _write(root / "imagesTs" / f"test{i:02d}_0000.nii.gz", image, affine)
        _write(root / "labelsTs" / f"test{i:02d}.nii.gz", label, affine)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": LABELS,
                                                   "numTraining": 8, "file_ending": ".nii.gz"}))
    return root


def test_segmentation_own_labels_prepare_train_eval_audit_predict(seg_raw, tmp_path):
    prepared, run = tmp_path / "prepared", tmp_path / "runs" / "l2b"
    printed = _ok(_run("prepare", "msd", seg_raw, prepared, "--trusted-labels", seg_raw / "labelsTrusted",
                       "--size", "32"))
    assert "6 train on their given labels, 2 trusted, 2 test" in printed
    manifest = json.loads((prepared / "dataset.json").read_text())
    assert manifest["train_truth"] is False
    assert manifest["splits"] == {"train": [f"case{i:02d}" for i in range(2, 8)], "meta": ["case00", "case01"],
                                  "test": ["test00", "test01"]}
    for case in manifest["splits"]["train"]:  # no clean label exists for a training case, and none is invented
        assert manifest["cases"][case]["label"] is None
        assert (prepared / manifest["cases"][case]["noisy_label"]).is_file()
    # case00's given label is shifted: the trusted cases measure the given labels (case01's agrees)
    dice = manifest["noise"]["given_vs_trusted_per_case_dice"]
    assert dice["case01"] == 1.0 and dice["case00"] < 0.8
    assert f"Dice {np.mean(list(dice.values())):.3f}" in printed

    _ok(_run("train", "--data", prepared, "--out", run, "--method", "l2b", *TINY_SEG))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 2 and float(rows[1]["alpha_sum"]) > 0  # the meta step ran in epoch 2
    # no truth: the diagnostics against clean labels are left empty instead of comparing with the given labels
    assert all(rows[1][k] == "" for k in ("alpha_on_wrong", "beta_share_on_right", "pseudo_differs_on_wrong"))
    record = json.loads((run / "preprocessing.json").read_text())
    assert record["labels"] == {"background": 0, "left": 1, "right": 2} and record["slice_axis"] == "axial"

    out = _ok(_run("eval", run, "--split", "test", "--no-figures"))
    assert "Dice" in out and json.loads((run / "eval" / "summary.json").read_text())["n_cases"] == 2
    _one_line_error(_run("eval", run, "--split", "train", "--no-figures"), "--split", "given labels")
    _one_line_error(_run("train", "--data", prepared, "--out", tmp_path / "oracle", "--label-source", "clean",
                         *TINY_SEG), "--label-source", "given labels")

    out = _ok(_run("audit", run, "--no-figures"))
    assert "most suspect" in out and "AUROC" not in out
    with open(run / "audit" / "ranking.csv") as fh:
        ranking = list(csv.DictReader(fh))
    assert sorted(r["case"] for r in ranking) == manifest["splits"]["train"]
    assert "corrupted" not in ranking[0] and "given_vs_clean_dice" not in ranking[0]
    assert json.loads((run / "audit" / "summary.json").read_text())["quality"] == {}

    shutil.rmtree(prepared)  # the run folder alone must predict
    masks = tmp_path / "masks"
    _ok(_run("predict", run, seg_raw / "imagesTs", masks))
    for i in range(2):
        pred = nib.load(str(masks / f"test{i:02d}.nii.gz"))
        ref = nib.load(str(seg_raw / "imagesTs" / f"test{i:02d}_0000.nii.gz"))
        assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
        assert set(np.unique(np.asanyarray(pred.dataobj))) <= {0, 1, 2}


def test_test_cases_zero_leaves_labelsTs_out(seg_raw, tmp_path):
    printed = _ok(_run("prepare", "msd", seg_raw, tmp_path / "p", "--trusted-labels", seg_raw / "labelsTrusted",
                       "--size", "32", "--test-cases", "0"))
    assert "6 train on their given labels, 2 trusted, 0 test" in printed
    _one_line_error(_run("prepare", "msd", seg_raw, tmp_path / "q", "--trusted-labels", seg_raw / "labelsTrusted",
                         "--test-cases", "3"), "--trusted-labels")


def _broken_copy(seg_raw: Path, dst: Path) -> Path:
    shutil.copytree(seg_raw, dst)
    return dst


def test_an_image_without_its_label_fails_naming_the_image(seg_raw, tmp_path):
    raw = _broken_copy(seg_raw, tmp_path / "raw")
    (raw / "labelsTr" / "case05.nii.gz").unlink()
    for mode in (["--test-cases", "1"], ["--trusted-labels", raw / "labelsTrusted"]):  # benchmark, own labels
        _one_line_error(_run("prepare", "msd", raw, tmp_path / "out", "--size", "32", *mode),
                        "imagesTr/case05_0000.nii.gz", "has no label")
    assert not (tmp_path / "out").exists()


def test_an_image_of_imagesTs_without_its_label_fails(seg_raw, tmp_path):
    raw = _broken_copy(seg_raw, tmp_path / "raw")
    (raw / "labelsTs" / "test01.nii.gz").unlink()
    _one_line_error(_run("prepare", "msd", raw, tmp_path / "out", "--trusted-labels", raw / "labelsTrusted"),
                    "imagesTs/test01_0000.nii.gz", "has no label")


def test_a_dataset_whose_labels_are_all_empty_fails_naming_it(seg_raw, tmp_path):
    raw = _broken_copy(seg_raw, tmp_path / "raw")
    for path in [*(raw / "labelsTr").iterdir(), *(raw / "labelsTrusted").iterdir()]:
        img = nib.load(str(path))
        _write(path, np.zeros(img.shape, dtype=np.uint8), img.affine)
    _one_line_error(_run("prepare", "msd", raw, tmp_path / "out", "--size", "32", "--test-cases", "1",
                         "--noise-dice", "1"), "labelsTr", "empty")
    _one_line_error(_run("prepare", "msd", raw, tmp_path / "out", "--size", "32",
                         "--trusted-labels", raw / "labelsTrusted"), "labelsTr", "empty")


def test_a_trusted_label_of_no_training_case_fails(seg_raw, tmp_path):
    raw = _broken_copy(seg_raw, tmp_path / "raw")
    shutil.copy(raw / "labelsTs" / "test00.nii.gz", raw / "labelsTrusted" / "test00.nii.gz")
    _one_line_error(_run("prepare", "msd", raw, tmp_path / "out", "--trusted-labels", raw / "labelsTrusted"),
                    "labelsTrusted/test00.nii.gz", "no training case")


# --------------------------------------------------------------------------- --resume never ignores a flag

def test_resume_extends_with_epochs_and_refuses_other_changes(seg_raw, tmp_path):
    prepared, run = tmp_path / "prepared", tmp_path / "run"
    _ok(_run("prepare", "msd", seg_raw, prepared, "--trusted-labels", seg_raw / "labelsTrusted", "--size", "32"))
    base = ["train", "--data", prepared, "--out", run, "--method", "ce", *TINY_SEG]
    _ok(_run(*base))
    line = _one_line_error(_run(*base, "--set", "lr=0.5", "--resume"), "lr 0.1", "0.5")
    assert "--resume" in line
    _one_line_error(_run("train", "--out", run, "--method", "l2b", "--resume"), "--method", "ce")
    assert len(list(csv.DictReader(open(run / "metrics.csv")))) == 2  # nothing ran
    out = _ok(_run(*base[:-len(TINY_SEG)], "--epochs", "3", "--resume"))  # extend the finished run by an epoch
    assert "finished 3 epochs" in out
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and float(rows[2]["lr"]) > 0
    assert "epochs: 3" in (run / "config.yaml").read_text()
    _one_line_error(_run("train", "--out", run, "--epochs", "2", "--resume"), "--epochs", "3 epochs already")


# --------------------------------------------------------------------------- classification data

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def _write_csv(path: Path, rows, header=("image", "label")) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def cls_raw(tmp_path_factory) -> dict:
    """30 images of 3 colours (PNG and JPEG, two sizes, in two folders); labels.csv gives 24 of them labels,
    4 of them wrong; trusted.csv checks one image per class (one given wrongly); test.csv holds 6 others."""
    root = tmp_path_factory.mktemp("own_cls")
    raw = root / "photos"
    (raw / "a").mkdir(parents=True)
    (raw / "b").mkdir()
    rng = np.random.default_rng(0)
    names, truth = [], {}
    for i in range(30):
        colour = list(COLOURS)[i % 3]
        size = (40, 30) if i % 2 else (30, 30)
        pixels = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255)
        ext = ".png" if i % 4 else ".jpg"
        path = raw / ("a" if i < 15 else "b") / f"img{i:02d}{ext}"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        names.append(path.stem)
        truth[path.stem] = colour
    wrong = {names[0]: "green", names[4]: "red", names[8]: "green", names[13]: "blue"}
    given = [(n if i % 2 else f"{n}{'.png' if i % 4 else '.jpg'}", wrong.get(n, truth[n]))
             for i, n in enumerate(names[:24])]
    return {"raw": raw, "truth": truth, "names": names,
            "labels": _write_csv(root / "labels.csv", given),
            "trusted": _write_csv(root / "trusted.csv", [(n, truth[n]) for n in names[:3]]),
            "test": _write_csv(root / "test.csv", [(n, truth[n]) for n in names[24:]])}


def test_classification_own_labels_prepare_train_eval_audit_predict(cls_raw, tmp_path):
    prepared, run = tmp_path / "prepared", tmp_path / "runs" / "l2b"
    printed = _ok(_run("prepare", "images", cls_raw["raw"], prepared, "--labels", cls_raw["labels"],
                       "--trusted", cls_raw["trusted"], "--test", cls_raw["test"], "--size", "32"))
    assert "21 train on their given labels, 3 trusted, 6 test" in printed
    manifest = json.loads((prepared / "dataset.json").read_text())
    assert manifest["classes"] == ["blue", "green", "red"] and manifest["train_truth"] is False
    assert np.load(prepared / "images.npy").shape == (30, 32, 32, 3)
    train = [manifest["images"][i] for i in manifest["splits"]["train"]]
    assert all(e["label"] is None for e in train)  # nothing claims to know the truth of a training image
    # img00 was given "green" but trusted as red: 2 of the 3 trusted images agree with their given label
    assert manifest["noise"]["given_vs_trusted_agreement"] == pytest.approx(2 / 3)

    _ok(_run("train", "--data", prepared, "--out", run, "--method", "l2b", *TINY_CLS))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 2 and rows[1]["alpha_on_wrong"] == "" and rows[1]["val_score"] != ""
    out = _ok(_run("eval", run, "--split", "test", "--no-figures"))
    assert "accuracy" in out and json.loads((run / "eval" / "summary.json").read_text())["n"] == 6
    out = _ok(_run("audit", run, "--no-figures"))
    assert "AUROC" not in out
    with open(run / "audit" / "ranking.csv") as fh:
        ranking = list(csv.DictReader(fh))
    assert len(ranking) == 21 and "corrupted" not in ranking[0] and "clean" not in ranking[0]

    shutil.rmtree(prepared)
    photos = tmp_path / "new"
    photos.mkdir()
    for n in cls_raw["names"][24:]:
        src = next(cls_raw["raw"].rglob(f"{n}.*"))
        shutil.copy(src, photos / src.name)
    _ok(_run("predict", run, photos, tmp_path / "pred"))
    with open(tmp_path / "pred" / "predictions.csv") as fh:
        pred = list(csv.DictReader(fh))
    assert len(pred) == 6 and {r["predicted"] for r in pred} <= set(COLOURS)
    assert set(pred[0]) == {"image", "predicted", "p_blue", "p_green", "p_red"}


def test_prepare_images_without_trusted_or_test(cls_raw, tmp_path):
    printed = _ok(_run("prepare", "images", cls_raw["raw"], tmp_path / "p", "--labels", cls_raw["labels"],
                       "--size", "16"))
    assert "24 train on their given labels, 0 trusted, 0 test" in printed and "6 images of" in printed
    # a meta method needs trusted images: one line, before any training
    _one_line_error(_run("train", "--data", tmp_path / "p", "--out", tmp_path / "r", "--method", "l2b", *TINY_CLS),
                    "trusted")


@pytest.mark.parametrize("case", ["missing column", "unknown image", "two splits", "class without trusted",
                                  "listed twice", "empty label"])
def test_a_bad_csv_is_one_line_naming_the_file_and_row(cls_raw, tmp_path, case):
    labels, trusted, test = cls_raw["labels"], cls_raw["trusted"], cls_raw["test"]
    names, truth = cls_raw["names"], cls_raw["truth"]
    good = [(n, truth[n]) for n in names[:24]]
    if case == "missing column":
        labels = _write_csv(tmp_path / "labels.csv", good, header=("image", "class"))
        needles = ["labels.csv", "line 1", "'label'"]
    elif case == "unknown image":
        labels = _write_csv(tmp_path / "labels.csv", good[:5] + [("nosuch", "red")] + good[5:])
        needles = ["labels.csv", "line 7", "nosuch", "not found"]
    elif case == "two splits":
        test = _write_csv(tmp_path / "test.csv", [(n, truth[n]) for n in names[24:]] + [(names[5], truth[names[5]])])
        needles = ["test.csv", "line 8", names[5], "two splits", "labels.csv line 7"]
    elif case == "class without trusted":
        trusted = _write_csv(tmp_path / "trusted.csv", [(n, truth[n]) for n in names[:2]])
        needles = ["trusted.csv", "'blue'", "labels.csv line 4"]
    elif case == "listed twice":
        labels = _write_csv(tmp_path / "labels.csv", good + [(names[2], "red")])
        needles = ["labels.csv", "line 26", "listed twice", "line 4"]
    else:
        labels = _write_csv(tmp_path / "labels.csv", good[:9] + [(names[9], "")] + good[10:])
        needles = ["labels.csv", "line 11", "empty label"]
    out = tmp_path / "prepared"
    _one_line_error(_run("prepare", "images", cls_raw["raw"], out, "--labels", labels, "--trusted", trusted,
                         "--test", test, "--size", "16"), *needles)
    assert not out.exists()
