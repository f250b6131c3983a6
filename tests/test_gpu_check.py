"""benchmarks/gpu_check.py at toy sizes on the CPU, so that the GPU acceptance check cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{proc.stderr[-3000:]}"
    return proc, json.loads(lines[-1])


def test_tiny_cpu_run_passes_every_check():
    proc, summary = _run("--device", "cpu", "--tiny", timeout=420)
    assert proc.returncode == 0, f"exit {proc.returncode}; stdout tail:\n{proc.stdout[-3000:]}\nstderr tail:\n" \
                                 f"{proc.stderr[-3000:]}"
    assert summary["ok"] is True and summary["failures"] == []
    assert summary["mode"] == "tiny" and summary["device"] == "cpu"
    assert "## step cost unetpp2d" in proc.stdout  # the human-readable table comes before the JSON line

    env = summary["env"]
    for key in ("torch", "monai", "python", "cpu_count"):
        assert env[key], key

    eq = summary["equality"]
    checked = [name for name, e in eq.items() if "errors" in e]
    assert {f"{net}_{dtype}" for net in ("unetpp2d_ce", "unetpp2d_dice", "unetpp2d_ce+dice", "resnet50_ce")
            for dtype in ("fp32", "bf16")} <= set(checked)
    for name in checked:
        e = eq[name]
        assert e["ok"] is True, name
        for key, err in e["errors"].items():
            assert err is not None and 0 <= err <= e["limits"][key], (name, key, err, e["limits"][key])
            assert e["limits"][key] >= e["tol"], (name, key)
        if "float64" in e:  # float32 entries also compare the two implementations in float64
            for key, err in e["float64"]["errors"].items():
                assert 0 <= err <= e["float64"]["tol"] <= 1e-8, (name, key, err)
            assert set(e["errors"]) == {"meta_grad", "weights", "param_grad"}
            assert e["tol"] == 1e-4
        else:
            assert e["cosine"] >= e["min_cosine"], name
    assert {"unetpp3d_ce+dice_fp32", "unetpp3d_ce+dice_bf16"} <= set(checked)  # voxel-wise, float32 and bf16
    assert eq["unetpp3d_ce+dice_fp32"]["input"] == [1, 32, 32, 32]

    for net in ("unetpp2d", "resnet50", "unetpp3d", "efficientnet-lite0"):
        variants = summary["timing"][net]["variants"]
        assert set(variants) == {"ce", "l2b_fast", "l2b_fast_lowmem", "l2b_last", "l2b_fp32_meta"}
        for key, v in variants.items():
            assert v["step_ms"] > 0 and v["x_ce"] > 0 and v["samples_per_s"] > 0, (net, key)
            assert v["peak_mb"] is None  # CUDA only
        assert variants["ce"]["x_ce"] == pytest.approx(1.0)

    pipe = summary["pipeline"]
    assert pipe["loader_samples_per_s"] > 0
    assert set(pipe["step_samples_per_s"]) == {"ce", "l2b_fast"} and min(pipe["step_samples_per_s"].values()) > 0

    cli = summary["cli"]
    assert list(cli["stages"]) == ["synth", "prepare", "train_ce", "train_l2b", "eval"]
    for name, stage in cli["stages"].items():
        assert stage["rc"] == 0 and stage["seconds"] > 0, name
    for method in ("ce", "l2b"):
        run = cli["runs"][method]
        assert run["epochs"] == 2 and 0.0 <= run["test_dice"] <= 1.0 and run["test_failed"] == 0
        assert len(run["images_per_s"]) == 2 and min(run["images_per_s"]) > 0  # end-to-end epoch throughput
    assert cli["l2b_epoch_x_ce"] > 0
    assert cli["runs"]["l2b"]["meta_loss_last"] is not None  # the meta step ran after the warm-up epoch
    assert not Path(cli["work"]).exists()  # the temporary folder is removed
    assert summary["total_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_a_failure_with_a_json_line():
    proc, summary = _run("--device", "cuda", "--tiny", timeout=120)
    assert proc.returncode == 1
    assert summary["ok"] is False and any("CUDA" in f for f in summary["failures"])
