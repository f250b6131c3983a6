"""Shared fixtures: tiny phantom releases of PROMISE12 and ISIC 2019, raw and prepared.

All are built once per test session under ``tmp_path_factory`` and must be treated
as read-only; tests that damage data copy what they need first (fixture ``copy_cases``).

* ``promise12_raw``: 12 MetaImage cases at ``grid_scale=0.25`` (64..128 px in-plane).
* ``promise12_prepared``: prepared at 64 px, target Dice 0.6, 3 test + 2 meta cases.
* ``isic_raw``: 64 JPEG images with both CSVs.
* ``isic_prepared``: prepared at 32 px, symmetric noise 0.4.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

PROMISE12_CASES = 12
PROMISE12_SIZE = 64
ISIC_IMAGES = 64
ISIC_SIZE = 32


def _copy_cases(src: Path, dst: Path, cases: list[str]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for case in cases:
        for path in src.glob(f"{case}*"):
            if path.name.startswith(f"{case}.") or path.name.startswith(f"{case}_segmentation."):
                shutil.copy2(path, dst / path.name)
    return dst


@pytest.fixture(scope="session")
def copy_cases():
    """``copy_cases(src, dst, ["Case00", ...])`` copies those cases' MetaImage files into ``dst``."""
    return _copy_cases


@pytest.fixture(scope="session")
def promise12_raw(tmp_path_factory) -> Path:
    from medl2b.data.phantoms import synth_promise12

    out = tmp_path_factory.mktemp("promise12_raw")
    synth_promise12(out, n_cases=PROMISE12_CASES, seed=0, grid_scale=0.25)
    return out


@pytest.fixture(scope="session")
def promise12_prepared(tmp_path_factory, promise12_raw) -> Path:
    from medl2b.data.promise12 import prepare_promise12

    out = tmp_path_factory.mktemp("promise12_prepared_parent") / "prepared"
    prepare_promise12(promise12_raw, out, size=PROMISE12_SIZE, noise_dice=0.6, meta_cases=2, test_cases=3,
                      seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def isic_raw(tmp_path_factory) -> Path:
    from medl2b.data.phantoms import synth_isic2019

    out = tmp_path_factory.mktemp("isic_raw")
    synth_isic2019(out, n_images=ISIC_IMAGES, seed=0)
    return out


@pytest.fixture(scope="session")
def isic_prepared(tmp_path_factory, isic_raw) -> Path:
    from medl2b.data.isic2019 import prepare_isic2019

    out = tmp_path_factory.mktemp("isic_prepared_parent") / "prepared"
    prepare_isic2019(isic_raw, out, size=ISIC_SIZE, noise=0.4, seed=0, progress=False)
    return out


BUNDLED_HIPPOCAMPUS = Path(__file__).resolve().parent.parent / "medl2b" / "demo_data" / "hippocampus"

# Real data shared between projects: ``../shared/data`` next to the repository root. Tests that use it
# skip when a data set is missing there; they never write to it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def bundled_hippocampus():
    """``bundled_hippocampus(dst, n)``: the first ``n`` real cases shipped with the demo, as an MSD task
    folder at ``dst`` (writable copies, a dataset.json listing only them)."""
    import json

    def copy(dst: Path, n: int) -> Path:
        meta = json.loads((BUNDLED_HIPPOCAMPUS / "dataset.json").read_text())
        meta["training"] = meta["training"][:n]
        meta["numTraining"] = n
        (dst / "imagesTr").mkdir(parents=True)
        (dst / "labelsTr").mkdir()
        for entry in meta["training"]:
            for key in ("image", "label"):
                shutil.copyfile(BUNDLED_HIPPOCAMPUS / entry[key], dst / entry[key])
        (dst / "dataset.json").write_text(json.dumps(meta))
        return dst

    return copy
