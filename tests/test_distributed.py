"""Two-process training through torchrun + DDP (Gloo, CPU)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow  # two processes each training: tens of seconds a test (`make test-all`)


@pytest.mark.parametrize("method", ["l2b", "bootstrap"])
def test_torchrun_two_processes(method, promise12_prepared, tmp_path):
    run = tmp_path / f"ddp-{method}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "medl2b.cli", "train", "--task", "prostate-seg", "--data", str(promise12_prepared),
           "--out", str(run), "--method", method, "--profile", "cpu", "--epochs", "2", "--device", "cpu",
           "--set", "warmup_epochs=1", "--set", "features=[4,4,8,8,16,4]", "--set", "batch_size=4",
           "--set", "meta_batch_size=4", "--set", "steps_per_epoch=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    log = (run / "train.log").read_text()
    assert "all 2 processes hold identical weights" in log
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and int(rows[1]["steps"]) == 3
    state = torch.load(run / "checkpoint_latest.pt", weights_only=False)
    assert state["epoch"] == 2
    assert not any(k.startswith("module.") or k.startswith("net.net.") for k in state["model"])
    # the audit record holds both processes' samples: 2 processes x 2 epochs x 3 steps x batch 4
    record = state["record"]["totals"]
    assert float(record[0].sum()) == 2 * 2 * 3 * 4
    if method == "l2b":  # epoch 2 had meta steps on both processes
        assert float(record[2].sum()) == 2 * 3 * 4
