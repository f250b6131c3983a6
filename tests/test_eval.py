"""medl2b eval / compare / demo on tiny phantom runs: files, grids, metrics, figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from medl2b.cli import app
from medl2b.config import load_config
from medl2b.train.trainer import train


@pytest.fixture(scope="module")
def seg_runs(promise12_prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("seg_runs")
    runs = []
    for method in ("ce", "l2b"):
        cfg = load_config("prostate-seg", profile="cpu", overrides={
            "data": str(promise12_prepared), "out": str(root / method), "method": method, "epochs": 2,
            "warmup_epochs": 1, "features": [4, 4, 8, 8, 16, 4], "batch_size": 4, "meta_batch_size": 4,
            "steps_per_epoch": 3, "device": "cpu"})
        train(cfg, progress=False)
        runs.append(root / method)
    return runs


def test_eval_writes_nnunet_like_outputs(seg_runs, promise12_prepared):
    result = CliRunner().invoke(app, ["eval", *map(str, seg_runs), "--split", "test", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((promise12_prepared / "dataset.json").read_text())
    test_cases = manifest["splits"]["test"]
    for run in seg_runs:
        summary = json.loads((run / "eval" / "summary.json").read_text())
        assert summary["split"] == "test" and summary["checkpoint"] == "best"
        assert [r["case"] for r in summary["per_case"]] == test_cases
        for row in summary["per_case"]:
            assert 0.0 <= row["dice"] <= 1.0 and row["hd95"] >= 0.0 and row["asd"] >= 0.0
        assert set(summary["mean"]) >= {"dice", "hd95", "asd"} and "n_failed" in summary
        assert (run / "eval" / "metrics.csv").read_text().count("\n") == len(test_cases) + 1
        assert "| " in (run / "eval" / "report.md").read_text()
        assert (run / "eval" / "figures" / "learning_curves.png").stat().st_size > 1000
        assert any((run / "eval" / "figures").glob("overlay_*.png"))
    assert (seg_runs[1] / "eval" / "figures" / "weight_maps.png").stat().st_size > 1000  # l2b only
    assert not (seg_runs[0] / "eval" / "figures" / "weight_maps.png").exists()
    assert "| ce |" in result.output and "| l2b |" in result.output


def test_prediction_nifti_lies_on_the_raw_case_grid(seg_runs, promise12_prepared, promise12_raw):
    run = seg_runs[0]
    if not (run / "eval" / "summary.json").exists():
        CliRunner().invoke(app, ["eval", str(run), "--no-figures", "--device", "cpu"])
    manifest = json.loads((promise12_prepared / "dataset.json").read_text())
    checked = 0
    for case in manifest["splits"]["test"]:
        raw = sitk.ReadImage(str(promise12_raw / f"{case}.mhd"))
        pred = sitk.ReadImage(str(run / "eval" / "predictions" / f"{case}.nii.gz"))  # ITK reads NIfTI in LPS
        assert pred.GetSize() == raw.GetSize()
        assert np.allclose(pred.GetSpacing(), raw.GetSpacing(), atol=1e-4)
        assert np.allclose(pred.GetOrigin(), raw.GetOrigin(), atol=1e-3)
        assert np.allclose(pred.GetDirection(), raw.GetDirection(), atol=1e-5)
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1}
        checked += 1
    assert checked == len(manifest["splits"]["test"])


def test_eval_classification_and_compare(isic_prepared, tmp_path):
    runs = []
    for method in ("ce", "l2rw"):
        cfg = load_config("skin-lesion-cls", profile="cpu", overrides={
            "data": str(isic_prepared), "out": str(tmp_path / method), "method": method, "epochs": 2,
            "warmup_epochs": 1, "arch": "resnet50", "pretrained": "none", "width": 0.0625, "image_size": 32, "batch_size": 8, "meta_batch_size": 8,
            "steps_per_epoch": 2, "device": "cpu"})
        train(cfg, progress=False)
        runs.append(tmp_path / method)
    result = CliRunner().invoke(app, ["eval", *map(str, runs), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads((runs[0] / "eval" / "summary.json").read_text())
    assert 0.0 <= summary["accuracy"] <= 1.0 and 0.0 <= summary["balanced_accuracy"] <= 1.0
    cm = np.asarray(summary["confusion"])
    manifest = json.loads((isic_prepared / "dataset.json").read_text())
    assert cm.shape == (8, 8) and cm.sum() == len(manifest["splits"]["test"])
    assert summary["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert (runs[0] / "eval" / "confusion_matrix.png").stat().st_size > 1000
    out = tmp_path / "table.md"
    result = CliRunner().invoke(app, ["compare", *map(str, runs), "--out", str(out)])
    assert result.exit_code == 0 and "| ce |" in out.read_text() and "| l2rw |" in out.read_text()


def test_eval_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "not a run folder" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["compare", str(tmp_path)])
    assert result.exit_code == 2 and "medl2b eval" in result.output


@pytest.mark.slow
def test_demo_runs_end_to_end_at_toy_size(tmp_path):
    out = tmp_path / "demo"
    # the default demo: bundled real hippocampus cases (a few of them at toy size)
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--cases", "8", "--size", "32", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    table = (out / "comparison.md").read_text()
    assert "| ce |" in table and "| l2b |" in table and "Dice Anterior" in table
    assert "Benchmark (" in result.output or "No multi-seed benchmark" in result.output
    for method in ("ce", "l2b"):
        assert (out / "runs" / method / "eval" / "summary.json").exists()
    assert "CC-BY-SA" in (out / "raw" / "README.md").read_text()
    # a second demo (on phantoms) replaces its own folder, and refuses a folder that is not a demo
    assert CliRunner().invoke(app, ["demo", "--out", str(out), "--data", "phantoms", "--cases", "6", "--size", "32",
                                    "--epochs", "1"]).exit_code == 0
    assert "| ce |" in (out / "comparison.md").read_text() and not (out / "raw" / "README.md").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    result = CliRunner().invoke(app, ["demo", "--out", str(other)])
    assert result.exit_code == 2 and (other / "precious.txt").read_text() == "keep"
