"""Bad input through the CLI: one line `error: <file>: <problem>`, exit code 2, nothing half-written."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from cli_checks import one_line_error
from medl2b.cli import app

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _assert_clean_failure(result, out: Path, *needles: str) -> None:
    """Exit 2, one `error:` line naming the file and the problem, no traceback, OUT untouched."""
    one_line_error(result, *needles)
    assert not (out / "dataset.json").exists()
    assert not out.exists() or not any(out.iterdir())
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


@pytest.fixture
def two_cases(promise12_raw, copy_cases, tmp_path) -> Path:
    """Case00 (MET_SHORT, .raw), Case01 (MET_FLOAT) and Case02 (.zraw), copied to be damaged."""
    return copy_cases(promise12_raw, tmp_path / "raw", ["Case00", "Case01", "Case02"])


def _prepare_p12(raw: Path, out: Path):
    return _run("prepare", "promise12", raw, out, "--size", "16", "--test-cases", "1", "--meta-cases", "0")


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("victim", ["Case00.raw", "Case00_segmentation.raw", "Case02.zraw"])
def test_truncated_pixel_data(two_cases, tmp_path, victim):
    _truncate(two_cases / victim)
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_p12(two_cases, out), out, victim, "truncated", "expected")


def test_corrupt_compressed_data(two_cases, tmp_path):
    """Right size but not zlib data: SimpleITK would only print to stderr and return zeros."""
    path = two_cases / "Case02.zraw"
    path.write_bytes(b"\0" * path.stat().st_size)
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_p12(two_cases, out), out, "Case02.zraw", "corrupt compressed pixel data")


def test_unreadable_header(two_cases, tmp_path):
    (two_cases / "Case01.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4\n"
                                         "ElementType = MET_SHORT\nElementDataFile = Case01.raw\n")
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_p12(two_cases, out), out, "Case01.mhd", "cannot read MetaImage")


def test_missing_pixel_file(two_cases, tmp_path):
    (two_cases / "Case01.raw").unlink()
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_p12(two_cases, out), out, "Case01.raw", "missing")


def test_image_and_mask_of_different_shapes(two_cases, tmp_path):
    wrong = sitk.GetImageFromArray(np.zeros((5, 20, 20), np.uint8))
    sitk.WriteImage(wrong, str(two_cases / "Case01_segmentation.mhd"))
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_p12(two_cases, out), out, "Case01_segmentation.mhd", "differs from image size")


def test_case_without_mask(two_cases, tmp_path):
    for path in two_cases.glob("Case01_segmentation.*"):
        path.unlink()
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_p12(two_cases, out), out, "Case01.mhd", "no mask")


def test_no_cases_at_all(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_p12(tmp_path / "empty", out), out, "empty", "no CaseNN.mhd")


def test_too_few_cases_for_the_split(two_cases, tmp_path):
    out = tmp_path / "out"
    result = _run("prepare", "promise12", two_cases, out, "--test-cases", "3", "--meta-cases", "1")
    _assert_clean_failure(result, out, "found 3 cases", "needs 5")


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_out_already_prepared_needs_overwrite(promise12_raw, promise12_prepared):
    before = _digest(promise12_prepared)
    result = _run("prepare", "promise12", promise12_raw, promise12_prepared, "--size", "16", "--test-cases", "3",
                  "--meta-cases", "2")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert str(promise12_prepared) in result.output and "already holds a prepared dataset" in result.output
    assert "--overwrite" in result.output
    assert _digest(promise12_prepared) == before


def test_overwrite_replaces_a_prepared_dataset(two_cases, tmp_path):
    out = tmp_path / "out"
    assert _prepare_p12(two_cases, out).exit_code == 0
    first = (out / "dataset.json").read_text()
    result = _run("prepare", "promise12", two_cases, out, "--size", "24", "--test-cases", "1", "--meta-cases", "0",
                  "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "dataset.json").read_text() != first and '"size": 24' in (out / "dataset.json").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


# --------------------------------------------------------------------------- ISIC 2019

@pytest.fixture
def isic_copy(isic_raw, tmp_path) -> Path:
    raw = tmp_path / "isic"
    shutil.copytree(isic_raw, raw)
    return raw


def _prepare_isic(raw: Path, out: Path):
    return _run("prepare", "isic2019", raw, out, "--size", "16")


def test_csv_missing_a_class_column(isic_copy, tmp_path):
    gt = isic_copy / "ISIC_2019_Training_GroundTruth.csv"
    rows = [line.split(",") for line in gt.read_text().splitlines()]
    gt.write_text("\n".join(",".join(r[:6] + r[7:]) for r in rows) + "\n")  # drop DF
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_isic(isic_copy, out), out, "ISIC_2019_Training_GroundTruth.csv", "missing column",
                          "'DF'")


def test_csv_missing_the_image_column(isic_copy, tmp_path):
    gt = isic_copy / "ISIC_2019_Training_GroundTruth.csv"
    gt.write_text(gt.read_text().replace("image,", "name,", 1))
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_isic(isic_copy, out), out, "ISIC_2019_Training_GroundTruth.csv", "'image'")


@pytest.mark.parametrize("fill, problem", [("0", "no positive class"), ("1", "several positive classes")])
def test_csv_row_without_exactly_one_class(isic_copy, tmp_path, fill, problem):
    gt = isic_copy / "ISIC_2019_Training_GroundTruth.csv"
    lines = gt.read_text().splitlines()
    name = lines[3].split(",")[0]
    lines[3] = ",".join([name] + [fill] * 8 + ["0"])
    gt.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_isic(isic_copy, out), out, "ISIC_2019_Training_GroundTruth.csv", "line 4", name,
                          problem)


def test_listed_image_missing_on_disk(isic_copy, tmp_path):
    victim = sorted((isic_copy / "ISIC_2019_Training_Input").glob("*.jpg"))[5]
    victim.unlink()
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_isic(isic_copy, out), out, victim.name, "missing on disk")


def test_unreadable_image(isic_copy, tmp_path):
    victim = sorted((isic_copy / "ISIC_2019_Training_Input").glob("*.jpg"))[7]
    victim.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    _assert_clean_failure(_prepare_isic(isic_copy, out), out, victim.name, "cannot read image")


def test_isic_out_already_prepared(isic_raw, isic_prepared):
    before = _digest(isic_prepared)
    result = _prepare_isic(isic_raw, isic_prepared)
    assert result.exit_code == 2 and "already holds a prepared dataset" in result.output
    assert "Traceback" not in result.output and _digest(isic_prepared) == before
