"""benchmarks/probe.py, the evidence probe shared by hippocampus.py and annotators.py, on a tiny real 2-D run:
the 3-channel 96 px "fundus" set of test_patches_2d.py (CHASE_DB1's shape in small), l2b for two steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench_scripts import load_benchmark
from medl2b.config import load_config_file
from medl2b.train.trainer import train
from test_patches_2d import SIZE, _cfg, fundus  # noqa: F401  (fundus: the fixture, used by name)

ROOT = Path(__file__).resolve().parents[1]
BATCH = 4  # _cfg's batch_size and meta_batch_size


@pytest.fixture(scope="module")
def probe():
    return load_benchmark("probe")


@pytest.fixture(scope="module")
def runs(fundus, tmp_path_factory):  # noqa: F811
    """An l2b run without a floor (2 steps) and the same network with ``pseudo_floor: 0.999`` in its config."""
    root = tmp_path_factory.mktemp("probe_runs")
    torch.set_num_threads(1)
    run = root / "l2b"
    train(_cfg(fundus, run, epochs=1, warmup_epochs=0, steps_per_epoch=2, pseudo_floor=0.0,
               meta_normalise="element"), progress=False)
    floor = root / "l2b_floor999"
    shutil.copytree(run, floor)
    cfg = yaml.safe_load((floor / "config.yaml").read_text())
    cfg["pseudo_floor"], cfg["out"] = 0.999, str(floor)
    (floor / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert load_config_file(floor / "config.yaml").pseudo_floor == 0.999
    return run, floor


AUROCS = ("evidence_auroc", "confidence_auroc", "beta_auroc", "combined_auroc")


def test_probe_on_patches_gives_aurocs_and_the_floor_sets_every_beta_to_zero(runs, probe):
    run, floor = runs
    out = probe.evidence_probe(str(run), batches=2, patch=32)
    assert out["patch"] == [32, 32] and out["pixels"] == 2 * BATCH * 32 * 32  # patches, not the 96 px images
    a = out["all"]
    assert 0 < a["n"] <= out["pixels"] and 0 < a["wrong_share"] < 1
    assert all(0.0 <= a[k] <= 1.0 for k in AUROCS), a
    assert abs(a["beta_auroc"] - 0.5) > 1e-6  # without a floor the β shares differ between pixels
    assert sum(p["n"] for p in out["pairs"].values()) == a["n"]

    same = probe.evidence_probe(str(floor), batches=2, patch=32)["all"]
    # the same network and draws: evidence and margin are unchanged; under the floor β = 0 on every pixel
    assert {k: same[k] for k in ("n", "evidence_auroc", "confidence_auroc", "combined_auroc")} == \
        {k: a[k] for k in ("n", "evidence_auroc", "confidence_auroc", "combined_auroc")}
    assert same["beta_auroc"] == 0.5


def test_whole_slices_by_default_and_when_they_fit_the_patch(runs, probe):
    run, _ = runs
    for patch in (None, 128):
        out = probe.evidence_probe(str(run), batches=1, patch=patch)
        assert out["patch"] is None and out["pixels"] == BATCH * SIZE * SIZE


def test_crops_and_unit_ranks(probe):
    rng = np.random.default_rng(0)
    label = torch.zeros(40, 20, dtype=torch.long)
    label[37, 3] = 1
    sample = (torch.rand(3, 40, 20), label, label.clone())
    image, lab, clean = probe.crop(sample, (32, 32), rng, centre=(37, 3))  # near the corner: moved inside
    assert image.shape == (3, 32, 32) and lab.shape == clean.shape == (32, 32)
    assert lab.sum() == 1 and lab[29, 3] == 1  # rows 8..39, columns 0..31 (12 zero-padded)
    assert (image[:, :, 20:] == 0).all()
    assert all(probe.crop(sample, (16, 16), rng)[0].shape == (3, 16, 16) for _ in range(5))
    assert probe.unit_ranks(np.array([3.0, 1.0, 2.0, 2.0])).tolist() == [1.0, 0.0, 0.5, 0.5]


def test_hippocampus_uses_the_shared_probe():
    hippocampus = load_benchmark("hippocampus")
    assert hippocampus.evidence_probe.__module__ == "probe"
    assert hippocampus.evidence_probe.__code__.co_filename == str(ROOT / "benchmarks" / "probe.py")


def test_annotators_probes_only_when_asked_and_caches_by_run(runs, tmp_path, monkeypatch):
    annotators = load_benchmark("annotators")
    run, _ = runs
    rows = [{"source": "observers", "method": m, "seed": 0, "run": str(run)} for m in ("l2b", "ce")]
    assert annotators.probes(rows, tmp_path) == {}  # the default reads the cache only
    assert not (tmp_path / "probe.jsonl").exists()
    monkeypatch.setattr(annotators, "PROBE_BATCHES", 2)
    cache = annotators.probes(rows, tmp_path, compute=True)
    entry = json.loads((tmp_path / "probe.jsonl").read_text())
    assert list(cache) == [str(run)] and entry["run"] == str(run) and entry["patch"] == [32, 32]
    assert annotators.probes(rows, tmp_path) == cache  # read back
    table = annotators.probe_table(rows, ["observers"], cache)
    assert "pseudo-label (the last network's argmax) differs from the given label" in table[1]
    assert "observer 1" in table[1] and "2 batches of 32 px patches" in table[1]
    cells = table[-1].split(" | ")
    assert cells[:3] == ["| observers", "l2b", "1"]
    assert cells[6] == f"{entry['all']['beta_auroc']:.2f}"
