"""The pipeline's direction: no module imports a layer above its own (data → noise → models → meta →
train → evaluate / audit / predict → cli). Read from the source with ``ast``, so an upward import added
anywhere fails here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "medl2b"

#: layer of each top-level module or package of medl2b; an import may go to the same layer or below.
#: ``data`` sits above ``noise`` because its converters (``prepare``) synthesise noise; the Dice that noise
#: calibration and the metrics share sits at the bottom (``medl2b.dice``).
LAYERS = {
    "errors": 0, "device": 0, "progress": 0, "runlock": 0, "dice": 0,
    "noise": 1,
    "data": 2, "models": 2, "inference": 2,
    "meta": 3,
    "config": 4,
    "tasks": 5, "evaluate": 5,
    "train": 6,
    "audit": 7, "predict": 7, "api": 7, "demo": 7,
    "cli": 8,
}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medl2b."):
            found.append((node.lineno, node.module.split(".")[1]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("medl2b.")]
    return found


def test_no_import_runs_back_up_the_pipeline():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        own = rel.parts[0].removesuffix(".py")
        if own == "__init__" or own == "__main__":
            continue
        assert own in LAYERS, f"medl2b/{rel}: a new top-level module; give it a layer in LAYERS"
        for line, target in _imports(path):
            assert target in LAYERS, f"medl2b/{rel}:{line} imports unknown medl2b.{target}"
            if LAYERS[target] > LAYERS[own]:
                upward.append(f"medl2b/{rel}:{line} ({own}, layer {LAYERS[own]}) imports {target} "
                              f"(layer {LAYERS[target]})")
    assert not upward, "imports against the pipeline's direction:\n" + "\n".join(upward)
