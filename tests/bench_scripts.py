"""The one loader of a benchmark script (``benchmarks/NAME.py``) as a module, for the tests that check one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """``benchmarks/NAME.py`` as a module; ``benchmarks/`` is on ``sys.path`` while it loads, as the scripts
    import their siblings (``accuracy.py``, ``probe.py``, ``isic.py``)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))
