"""The runnable examples in examples/: each runs with --tiny and ends with its parseable result line."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LAST_LINE = re.compile(r"^CE (\d\.\d{3}) vs L2B (\d\.\d{3}) \((dice|accuracy)\)$")


@pytest.mark.parametrize("script,metric", [
    ("segmentation_loop.py", "dice"),
    ("segmentation_monai_trainer.py", "dice"),
    ("classification_loop.py", "accuracy"),
])
def test_example_runs_tiny_and_prints_the_result_line(script, metric):
    if script == "segmentation_monai_trainer.py" and importlib.util.find_spec("ignite") is None:
        pytest.skip("monai.engines needs pytorch-ignite")
    path = EXAMPLES / script
    assert len(path.read_text().splitlines()) <= 80, f"{script} should stay a short example"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors: one thread, no contention
    proc = subprocess.run([sys.executable, str(path), "--tiny"], check=False, cwd=EXAMPLES.parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    match = LAST_LINE.match(last)
    assert match, f"last line {last!r}"
    assert match.group(3) == metric
    assert all(0.0 <= float(match.group(i)) <= 1.0 for i in (1, 2))
