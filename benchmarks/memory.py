"""Peak memory of training data, before and after lazy prepared cases (issue 39).

Two datasets, each prepared and trained by two versions of medl2b (``--before``: a checkout of an earlier
commit, e.g. ``git worktree add /tmp/before a139676``; ``--after``: this checkout):

* ``hippocampus``: the hippocampus benchmark's data shape. The 200 real cases are not on this machine, so
  the 20 bundled real cases (``medl2b/demo_data/hippocampus``) are copied ten times under new names
  (200 cases of the real sizes, ~35 x 50 x 35 at 1 mm), prepared as ``benchmarks/hippocampus.py`` does
  (``size=48``), and trained 2-D with the segmentation ``cpu`` profile.
* ``synthetic3d``: ``--cases`` synthetic volumes of ``--shape`` voxels at 1 mm (a body, an organ), trained 3-D
  (``cpu-3d`` profile, patches of 96^3).

Each training runs in its own process: build the Trainer (which loads the training data) and take
``--steps`` steps of one epoch; the child reports its peak resident memory (``ru_maxrss``). ``--data-limit``
(MiB) runs the child under ``RLIMIT_DATA`` (private writable memory: what a dataset held in memory needs,
not the read-only mapped files), standing in for a machine with less memory.

    python benchmarks/memory.py --before /tmp/before --work /tmp/mem            # both datasets, both versions
    python benchmarks/memory.py --before /tmp/before --work /tmp/mem --only synthetic3d --patch 64 --data-limit 4096
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "medl2b" / "demo_data" / "hippocampus"

CHILD = r"""
import json, resource, sys, time
from medl2b.config import load_config
from medl2b.train.trainer import Trainer
data, out, profile, steps, cache, patch = sys.argv[1:4] + [int(sys.argv[4])] + sys.argv[5:7]
over = {"data": data, "out": out, "epochs": 1, "warmup_epochs": 1, "device": "cpu", "steps_per_epoch": steps,
        "method": "ce", "num_workers": 0}
if patch != "default":
    over["patch_size"] = [int(patch)] * 3
if cache != "none":
    over["cache_mb"] = float(cache)
t0 = time.time()
trainer = Trainer(load_config("segmentation", profile=profile, overrides=over), progress=False)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
trainer.fit()
print(json.dumps({"peak_after_loading_mib": round(loaded), "peak_mib": round(
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "seconds": round(time.time() - t0, 1),
    "train_samples": len(trainer.task.train_set)}))
"""

PREPARE = r"""
import sys
from medl2b.data.msd import prepare_msd
prepare_msd(sys.argv[1], sys.argv[2], size=int(sys.argv[3]), noise_dice=float(sys.argv[4]), meta_cases=3,
            test_cases=10, seed=0, progress=False)
"""


def hippocampus_raw(dst: Path, copies: int = 10) -> Path:
    """The bundled cases ``copies`` times under new names: an MSD v1 folder of the real benchmark's size."""
    if (dst / "dataset.json").exists():
        return dst
    meta = json.loads((BUNDLED / "dataset.json").read_text())
    (dst / "imagesTr").mkdir(parents=True)
    (dst / "labelsTr").mkdir()
    training = []
    for k in range(copies):
        for entry in meta["training"]:
            name = Path(entry["label"]).name.replace(".nii.gz", f"_{k}.nii.gz")
            shutil.copyfile(BUNDLED / entry["image"], dst / "imagesTr" / name)
            shutil.copyfile(BUNDLED / entry["label"], dst / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (dst / "dataset.json").write_text(json.dumps({**meta, "training": training, "numTraining": len(training)}))
    return dst


def synthetic3d_raw(dst: Path, n: int, shape: tuple[int, int, int]) -> Path:
    """``n`` volumes of ``shape`` at 1 mm: a body of soft tissue and an organ (label 1) inside it."""
    if (dst / "dataset.json").exists():
        return dst
    (dst / "imagesTr").mkdir(parents=True)
    (dst / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    training = []
    for i in range(n):
        centre = [s / 2 + rng.uniform(-s / 8, s / 8) for s in shape]
        r2 = sum(((g - c) / (s / 6)) ** 2 for g, c, s in zip(grid, centre, shape))
        label = (r2 <= 1.0).astype(np.uint8)
        image = (200.0 * (r2 <= 6.0) + 150.0 * label + rng.normal(0, 20, shape)).astype(np.float32)
        name = f"synth_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(dst / "imagesTr" / name))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(dst / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (dst / "dataset.json").write_text(json.dumps({
        "name": "Synthetic3D", "labels": {"0": "background", "1": "organ"}, "modality": {"0": "MRI"},
        "training": training, "numTraining": n}))
    return dst


def _run(code: str, args: list[str], source: Path, limit_mib: int | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}

    def cap():
        if limit_mib:
            resource.setrlimit(resource.RLIMIT_DATA, (limit_mib * 2**20, limit_mib * 2**20))

    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=source, capture_output=True, text=True,
                          preexec_fn=cap)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return json.dumps({"failed": tail[:200]})
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else "{}"


def measure(name: str, raw: Path, size: int, noise: float, profile: str, versions: dict[str, Path], work: Path,
            steps: int, caches: dict[str, list[str]], limit: int | None, patch: str = "default") -> list[dict]:
    rows = []
    for version, source in versions.items():
        prep = work / f"{name}-{version}"
        if not (prep / "dataset.json").exists():
            out = _run(PREPARE, [str(raw), str(prep), str(size), str(noise)], source)
            if "failed" in out:
                raise SystemExit(f"prepare {name} with {version}: {out}")
        for cache in caches[version]:
            result = json.loads(_run(CHILD, [str(prep), str(work / f"run-{name}-{version}-{cache}-{limit}-{patch}"),
                                             profile, str(steps), cache, patch], source, limit))
            disk = sum(p.stat().st_size for p in (prep / "arrays").iterdir()) if (prep / "arrays").is_dir() else 0
            rows.append({"dataset": name, "version": version, "cache_mb": cache, "data_limit_mib": limit,
                         "patch": patch,
                         "arrays_mib": round(disk / 2**20), **result})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="checkout of the version before (a git worktree)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--only", choices=["hippocampus", "synthetic3d"])
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--shape", type=int, nargs=3, default=(160, 160, 128))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--data-limit", type=int, default=None, help="RLIMIT_DATA of the training child (MiB)")
    ap.add_argument("--patch", default="default", help="3-D patch side (default: the profile's 96)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    versions = {"before": args.before.resolve(), "after": ROOT}
    rows = []
    if args.only in (None, "hippocampus"):
        raw = hippocampus_raw(args.work / "Task04_Hippocampus200")
        rows += measure("hippocampus", raw, 48, 0.8, "cpu", versions, args.work, args.steps,
                        {"before": ["none"], "after": ["2048", "64"]}, args.data_limit)
    if args.only in (None, "synthetic3d"):
        raw = synthetic3d_raw(args.work / "Synthetic3D", args.cases, tuple(args.shape))
        rows += measure("synthetic3d", raw, max(args.shape[:2]), 1.0, "cpu-3d", versions, args.work, args.steps,
                        {"before": ["none"], "after": ["512"]}, args.data_limit, args.patch)
    with open(args.work / "memory.jsonl", "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
