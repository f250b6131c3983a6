"""2-D patch training on slices larger than the training window, and 2-D sliding-window prediction.

A tiny synthetic 2-D "fundus" dataset: 96 x 96 px RGB images stored as (X, Y, 1) NIfTI, one small
blob with a thin vessel per image, trained with a 32 x 32 window (``patch_size_2d``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medl2b.audit import audit_run
from medl2b.config import load_config
from medl2b.evaluate.run import evaluate_run, load_run
from medl2b.tasks import build_task
from medl2b.train.trainer import Trainer

SIZE, WINDOW = 96, 32


@pytest.fixture(scope="module")
def fundus(tmp_path_factory) -> Path:
    from medl2b.data.msd import prepare_msd

    raw = tmp_path_factory.mktemp("fundus_raw")
    (raw / "imagesTr").mkdir()
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        label = np.zeros((SIZE, SIZE, 1), np.uint8)
        cx, cy = 12 + 3 * i, 70 - 2 * i
        label[cx - 4:cx + 4, cy - 4:cy + 4] = 1     # a small blob far from the centre...
        label[cx, cy - 16:cy - 4] = 1                 # ...with a 1-px vessel
        for c in range(3):
            image = (50 + 100 * label + rng.normal(0, 10, label.shape)).astype(np.float32)
            nib.save(nib.Nifti1Image(image, np.eye(4)), str(raw / "imagesTr" / f"fundus_{i:03d}_{c:04d}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(raw / "labelsTr" / f"fundus_{i:03d}.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({
        "name": "Synth2D", "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "vessel": 1},
        "numTraining": 8, "file_ending": ".nii.gz"}))
    out = tmp_path_factory.mktemp("fundus_prep") / "prepared"
    prepare_msd(raw, out, size=SIZE, noise_dice=0.8, meta_cases=2, test_cases=1, seed=0, progress=False)
    return out


def _cfg(data: Path, out: Path, **over):
    values = {"data": str(data), "out": str(out), "method": "l2b", "epochs": 1, "warmup_epochs": 0,
              "batch_size": 4, "meta_batch_size": 4, "features": [4, 4, 8, 16, 32, 4], "device": "cpu",
              "patch_size_2d": [WINDOW, WINDOW], "patches_per_slice": 4, "patch_fg": 0.5, **over}
    return load_config("segmentation", profile="cpu", overrides=values)


def _has_fg(dataset) -> np.ndarray:
    return np.array([bool(dataset[i]["label"].any()) for i in range(len(dataset))])


def test_large_slices_train_on_patches_with_foreground_oversampling(fundus, tmp_path):
    assert build_task(_cfg(fundus, tmp_path / "w", patch_size_2d=[256, 256])).window is None  # fits: whole slices
    task = build_task(_cfg(fundus, tmp_path / "r"))
    assert task.window == (WINDOW, WINDOW)
    n = len(task.train_plain)
    assert n == 5 + 2 and task.trusted_samples() == 2     # l2b: the 5 train slices and the 2 trusted ones
    assert len(task.train_set) == 4 * n                   # patches_per_slice random patches of every slice
    torch.manual_seed(0)
    items = [task.train_set[i] for i in range(len(task.train_set))]
    assert all(it["image"].shape == (3, WINDOW, WINDOW) and it["label"].shape == (WINDOW, WINDOW) for it in items)
    assert sorted({it["index"] for it in items}) == list(range(n))  # the slice's index: the audit record's unit
    fg = np.mean([bool(it["label"].any()) for it in items])
    assert fg >= 0.5                                      # patch_fg = 0.5 centred on a foreground pixel
    torch.manual_seed(0)
    random_fg = _has_fg(build_task(_cfg(fundus, tmp_path / "z", patch_fg=0.0)).train_set).mean()
    assert random_fg < fg - 0.3                          # the blob is small: plain random patches rarely hold it
    assert _has_fg(task.meta_set).all()                   # meta patches: always on foreground (meta_foreground)
    assert task.meta_set[0]["image"].shape == (3, WINDOW, WINDOW)


def test_patch_run_trains_validates_predicts_and_audits_by_sliding_windows(fundus, tmp_path):
    run = tmp_path / "run"
    Trainer(_cfg(fundus, run), progress=False).fit()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 1 and int(rows[0]["steps"]) == 7 and rows[0]["meta_loss"] != ""  # 7 slices x 4 patches / 4
    summary = evaluate_run(run, split="test", figures=True, device="cpu")
    assert summary["n_cases"] == 1 and 0.0 <= summary["mean"]["cldice"] <= 1.0
    assert (run / "eval" / "figures" / "weight_maps.png").exists()   # the central crop of the window
    assert "cldice" in (run / "eval" / "metrics.csv").read_text().splitlines()[0]
    model, cfg = load_run(run)
    task = build_task(cfg, training=False)
    assert task.window == (WINDOW, WINDOW)
    case = json.loads((fundus / "dataset.json").read_text())["splits"]["test"][0]
    pred, clean = task.predict_case(model, case, torch.device("cpu"))
    assert pred.shape == clean.shape == (SIZE, SIZE, 1)
    image = torch.randn(3, SIZE, SIZE, 1)
    logits = task.predict(model, image, torch.device("cpu"))
    assert logits.shape == (2, SIZE, SIZE, 1)
    whole = model(image.permute(3, 0, 1, 2))                  # not what a sliding window predicts
    assert not torch.allclose(logits.permute(3, 0, 1, 2), whole, atol=1e-4)
    summary = audit_run(run, top=2, figures=True, device="cpu")
    assert len(summary["top"]) == 2 and (run / "audit" / "figures" / "suspects.png").exists()


def test_patch_training_resumes_exactly(fundus, tmp_path):
    straight = Trainer(_cfg(fundus, tmp_path / "a", epochs=2), progress=False)
    straight.fit()
    killed = Trainer(_cfg(fundus, tmp_path / "b", epochs=2), progress=False)
    end = killed.on_epoch_end

    def die_after_one(*args, **kwargs):
        row = end(*args, **kwargs)
        raise KeyboardInterrupt

    killed.on_epoch_end = die_after_one
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    resumed = Trainer(_cfg(fundus, tmp_path / "b", epochs=2), resume=True, progress=False)
    assert resumed.epoch == 1
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(straight.record.totals, resumed.record.totals)
