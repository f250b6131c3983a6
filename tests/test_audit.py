"""The per-sample record, ``prepare msd --noisy-fraction`` and ``medl2b audit`` on real bundled cases."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medl2b.audit import percentile_ranks, ranking_quality
from medl2b.cli import app
from medl2b.config import load_config
from medl2b.data.nifti import read_nifti
from medl2b.train.record import FIELDS, SampleRecord
from medl2b.train.trainer import train

runner = CliRunner()
TINY = {"features": [4, 4, 8, 8, 16, 4], "batch_size": 8, "meta_batch_size": 4, "epochs": 2, "warmup_epochs": 1,
        "device": "cpu"}


def _rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_record_sums_weights_per_sample_and_round_trips():
    rec = SampleRecord(4)
    loss = torch.tensor([[[1.0, 3.0]], [[2.0, 2.0]]])                 # (B=2, 1, 2): 4 elements
    alpha = torch.tensor([[[0.25, 0.0]], [[0.125, 0.125]]])            # N·α = [[1, 0], [.5, .5]]
    beta = torch.tensor([[[0.0, 0.25]], [[0.125, 0.125]]])             # N·β = [[0, 1], [.5, .5]]
    rec.add(torch.tensor([3, 1]), loss, [alpha, beta])
    rec.add(torch.tensor([3]), loss[:1], None)                          # a warm-up step: loss only
    assert not rec.totals.any()                                         # nothing counts before the epoch ends
    seen = []
    rec.end_epoch(reduce=lambda t: seen.append(t.clone()))
    assert len(seen) == 1
    got = rec.as_dict()
    assert got["seen"].tolist() == [0, 1, 0, 2] and got["meta_seen"].tolist() == [0, 1, 0, 1]
    assert got["loss"].tolist() == [0, 2.0, 0, 4.0]
    assert got["alpha"][3] == pytest.approx(0.5) and got["beta"][3] == pytest.approx(0.5)
    assert got["prefer_pseudo"][3] == pytest.approx(0.5) and got["prefer_pseudo"][1] == 0.0  # β > α on one of 2
    other = SampleRecord(4)
    other.load_state_dict(rec.state_dict())
    assert torch.equal(other.totals, rec.totals)
    with pytest.raises(ValueError, match="another shape"):
        SampleRecord(5).load_state_dict(rec.state_dict())
    assert list(FIELDS)[0] == "seen"


def test_ranking_quality_and_percentile_ranks():
    truth = np.array([1, 1, 0, 0, 0], bool)
    q = ranking_quality(np.array([0.9, 0.8, 0.1, 0.2, 0.3]), truth)
    assert q["auroc"] == 1.0 and q["precision_at_k"] == 1.0 and q["n_corrupted"] == 2
    q = ranking_quality(np.array([0.1, 0.9, 0.8, 0.2, 0.3]), truth)
    assert q["auroc"] == pytest.approx(3 / 6) and q["precision_at_k"] == 0.5
    assert ranking_quality(np.ones(3), np.zeros(3, bool))["auroc"] is None
    assert percentile_ranks(np.array([3.0, np.nan, 1.0])).tolist() == [1.0, 0.0, 0.5]


@pytest.fixture(scope="module")
def half_noisy(tmp_path_factory, bundled_hippocampus) -> Path:
    """Bundled real hippocampus cases, 6 train of which half are corrupted (the rest keep clean masks)."""
    raw = bundled_hippocampus(tmp_path_factory.mktemp("audit_raw") / "Task04", 9)
    out = tmp_path_factory.mktemp("audit_prep") / "prepared"
    result = runner.invoke(app, ["prepare", "msd", str(raw), str(out), "--size", "32", "--meta-cases", "2",
                                 "--test-cases", "1", "--noise-dice", "0.6", "--noisy-fraction", "0.5"])
    assert result.exit_code == 0, result.output
    return out


def test_noisy_fraction_corrupts_only_the_drawn_cases(half_noisy):
    manifest = json.loads((half_noisy / "dataset.json").read_text())
    train_cases = manifest["splits"]["train"]
    noisy = manifest["noise"]["noisy_cases"]
    assert len(train_cases) == 6 and len(noisy) == 3 and set(noisy) <= set(train_cases)
    for case in train_cases:
        entry = manifest["cases"][case]
        given = read_nifti(half_noisy / entry["noisy_label"])[0]
        clean = read_nifti(half_noisy / entry["label"])[0]
        assert np.array_equal(given, clean) == (case not in noisy), case
    assert abs(manifest["noise"]["achieved_mean_dice"] - 0.6) <= 0.05  # met on the corrupted cases
    bad = runner.invoke(app, ["prepare", "msd", str(half_noisy), str(half_noisy.parent / "x"),
                              "--noisy-fraction", "0"])
    assert bad.exit_code != 0 and "--noisy-fraction" in bad.output and "Traceback" not in bad.output


@pytest.mark.slow
def test_audit_ranks_the_cases_of_a_segmentation_run(half_noisy, tmp_path):
    run = tmp_path / "run"
    train(load_config("segmentation", profile="cpu", overrides={"data": str(half_noisy), "out": str(run), **TINY}),
          progress=False)
    state = torch.load(run / "checkpoint_latest.pt", weights_only=False)
    totals = state["record"]["totals"]
    n_slices = totals.shape[1]
    assert totals[0].sum() > 0 and totals[2].sum() > 0          # every epoch saw slices; epoch 2 had meta steps
    assert totals[0].sum() == 2 * (n_slices // 8) * 8          # drop_last batches of 8, two epochs
    result = runner.invoke(app, ["audit", str(run), "--top", "3"])
    assert result.exit_code == 0, result.output
    assert "AUROC" in result.output
    manifest = json.loads((half_noisy / "dataset.json").read_text())
    cases = _rows(run / "audit" / "ranking.csv")
    assert sorted(r["case"] for r in cases) == sorted(manifest["splits"]["train"])
    assert [int(r["rank"]) for r in cases] == list(range(1, 7))
    assert [float(r["score"]) for r in cases] == sorted((float(r["score"]) for r in cases), reverse=True)
    assert {r["case"] for r in cases if r["corrupted"] == "1"} == set(manifest["noise"]["noisy_cases"])
    for r in cases:
        assert (float(r["given_vs_clean_dice"]) == 1.0) == (r["corrupted"] == "0")
    slices = _rows(run / "audit" / "ranking_slices.csv")
    from medl2b.data.datasets import load_slices

    n_train = len(load_slices(half_noisy, "train"))  # l2b also trained on the 2 trusted cases: not ranked
    assert len(slices) == n_train == n_slices - len(load_slices(half_noisy, "meta"))
    assert {r["case"] for r in slices} == set(manifest["splits"]["train"])
    summary = json.loads((run / "audit" / "summary.json").read_text())
    assert summary["quality"]["cases"]["n_corrupted"] == 3
    assert 0.0 <= summary["quality"]["cases"]["auroc"] <= 1.0
    assert summary["top"] == [r["case"] for r in cases[:3]]
    assert (run / "audit" / "figures" / "suspects.png").stat().st_size > 0
    assert "| cases | 6 | 3 |" in (run / "audit" / "report.md").read_text()


def test_audit_ranks_the_images_of_a_classification_run(isic_prepared, tmp_path):
    run = tmp_path / "run"
    train(load_config("skin-lesion-cls", profile="cpu", overrides={
        "data": str(isic_prepared), "out": str(run), "arch": "resnet50", "pretrained": "none", "width": 0.0625, "image_size": 32, "batch_size": 8,
        "meta_batch_size": 8, "steps_per_epoch": 2, "epochs": 2, "warmup_epochs": 1, "device": "cpu"}),
        progress=False)
    result = runner.invoke(app, ["audit", str(run), "--no-figures"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((isic_prepared / "dataset.json").read_text())
    rows = _rows(run / "audit" / "ranking.csv")
    assert len(rows) == len(manifest["splits"]["train"])
    names = {e["image"]: e for e in manifest["images"]}
    for r in rows:
        entry = names[r["image"]]
        assert (r["corrupted"] == "1") == (entry["label"] != entry["noisy_label"])
    assert any(r["meta_signal"] for r in rows) and any(not r["meta_signal"] for r in rows)  # 2 steps saw 16 images
    # l2b trained on the trusted images too (the record holds them after the train split): they are not ranked
    record = torch.load(run / "checkpoint_latest.pt", weights_only=False)["record"]["totals"]
    assert record.shape[1] == len(manifest["splits"]["train"]) + len(manifest["splits"]["meta"])
    # a run of l2b from before it trained on its trusted cases says method l2b and recorded the train split
    # alone: it is audited the same
    old = tmp_path / "old"
    train(load_config("skin-lesion-cls", profile="cpu", overrides={
        "data": str(isic_prepared), "out": str(old), "method": "l2b-pure", "arch": "resnet50", "pretrained": "none",
        "width": 0.0625, "image_size": 32, "batch_size": 8, "meta_batch_size": 8, "steps_per_epoch": 2, "epochs": 2,
        "warmup_epochs": 1, "device": "cpu"}), progress=False)
    (old / "config.yaml").write_text((old / "config.yaml").read_text().replace("method: l2b-pure\n", "method: l2b\n"))
    result = runner.invoke(app, ["audit", str(old), "--no-figures"])
    assert result.exit_code == 0, result.output
    assert sorted(r["image"] for r in _rows(old / "audit" / "ranking.csv")) == sorted(r["image"] for r in rows)


@pytest.mark.slow
def test_audit_errors_are_one_line(tmp_path, half_noisy):
    result = runner.invoke(app, ["audit", str(tmp_path)])
    assert result.exit_code != 0 and "no config.yaml" in result.output and "Traceback" not in result.output
    run = tmp_path / "old"
    train(load_config("segmentation", profile="cpu", overrides={"data": str(half_noisy), "out": str(run), **TINY,
                                                                   "epochs": 1, "method": "ce"}), progress=False)
    state = torch.load(run / "checkpoint_latest.pt", weights_only=False)
    del state["record"]
    torch.save(state, run / "checkpoint_latest.pt")
    result = runner.invoke(app, ["audit", str(run)])
    assert result.exit_code != 0 and "no per-sample record" in result.output and "Traceback" not in result.output


def test_promise12_noisy_fraction(promise12_raw, tmp_path):
    from medl2b.data.promise12 import prepare_promise12

    manifest = prepare_promise12(promise12_raw, tmp_path / "p", size=32, noise_dice=0.6, meta_cases=1, test_cases=1,
                                 noisy_fraction=0.5, seed=1, progress=False)
    noisy = manifest["noise"]["noisy_cases"]
    train_cases = manifest["splits"]["train"]
    assert len(noisy) == round(0.5 * len(train_cases)) and set(noisy) < set(train_cases)
    for case in train_cases:
        assert (manifest["noise"]["per_case_dice"][case] == 1.0) == (case not in noisy), case
