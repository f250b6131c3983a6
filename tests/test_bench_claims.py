"""benchmarks/isic.py --workers: two copies of the benchmark never train the same run, and a run claimed by
an interrupted benchmark is taken over."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _isic():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # it imports its sibling accuracy.py
    try:
        spec = importlib.util.spec_from_file_location("bench_isic", ROOT / "benchmarks" / "isic.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_claims_are_exclusive_and_stale_ones_are_taken_over(tmp_path):
    isic = _isic()
    key = (0.4, "l2b", 1)
    assert isic.claim(tmp_path, key)
    path = tmp_path / "claims" / "0.4_l2b_1.pid"
    assert path.read_text() == str(os.getpid())
    assert not isic.claim(tmp_path, key)  # held by a live process (this one)
    assert isic.claim(tmp_path, (None, "oracle", 1))  # another run is free

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path.write_text(str(gone.pid))  # its worker has exited
    assert isic.claim(tmp_path, key)
    assert path.read_text() == str(os.getpid())
