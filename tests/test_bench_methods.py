"""The benchmark scripts keep the meaning of their committed rows: a row named ``l2b...`` is the paper's pure form
(config ``l2b-pure`` since ``--method l2b`` trains on its trusted cases) and a row named ``l2b+clean...`` is that
form (config ``l2b``). Checked on each script's map from row name to training config, without training."""

from __future__ import annotations

import pytest

from bench_scripts import load_benchmark
from medl2b.config import METHODS


def _expected(row: str) -> str | None:
    """The config method a row of this name must train with, where its name says (None: any)."""
    if row.startswith("l2b+clean"):
        return "l2b"
    if row.startswith("l2b"):
        return "l2b-pure"
    return None


def _check(rows, config_method) -> None:
    rows = sorted(set(rows))
    assert any(r.startswith("l2b") for r in rows)
    for row in rows:
        method = config_method(row)
        assert method in METHODS, (row, method)
        if _expected(row) is not None:
            assert method == _expected(row), (row, method)


@pytest.mark.parametrize("name", ["hippocampus", "annotators", "isic"])
def test_row_names_map_to_the_config_method_they_meant(name):
    bench = load_benchmark(name)
    blocks = list(bench.BLOCKS) + list(getattr(bench, "PRETRAINED_BLOCKS", []))
    rows = [row for block in blocks for _, row in block]
    _check(rows, lambda row: bench.METHOD.get(row, (row, {}))[0])
    if name == "annotators":
        assert {"l2b", "l2b+clean"} <= set(rows)


def test_accuracy_and_gpu_check_rows():
    acc = load_benchmark("accuracy")
    plan = acc.seg_plan(acc.SEG_LEVELS) + acc.cls_plan(acc.CLS_LEVELS)
    extra = {name: e for _, _, name, e in plan}
    _check([name for _, _, name, _ in plan],
           lambda row: extra[row].get("method", acc.CONFIG_METHOD.get(row, row if row in METHODS else "l2b-pure")))
    gpu = load_benchmark("gpu_check")
    assert gpu.CLI_METHOD == {"l2b": "l2b-pure"}
