"""benchmarks/isic.py --workers: two copies of the benchmark never train the same run, and a run claimed by
an interrupted benchmark is taken over."""

from __future__ import annotations

import os
import subprocess
import sys

from bench_scripts import load_benchmark


def test_claims_are_exclusive_and_stale_ones_are_taken_over(tmp_path):
    isic = load_benchmark("isic")
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
