"""PROMISE12 (prostate MR): raw MetaImage release -> nnU-Net v2 raw -> prepared dataset.

Input: the ``TrainingData_Part1..3`` folders (any depth below ``raw``), holding
``CaseNN.mhd`` (+ ``.raw`` or ``.zraw``) and ``CaseNN_segmentation.mhd``. Grids,
pixel types, origins and directions differ between centres; all of them are read
from the headers and kept.

1. :func:`convert_to_nnunet` reads and checks the cases with SimpleITK (a truncated
   ``.raw``, a corrupt ``.zraw``, a missing mask, a mask of another size: an
   :class:`~medl2b.errors.InputError` naming the file) and writes them, as nnU-Net's own
   conversion scripts do, to a temporary nnU-Net v2 raw folder: ``imagesTr/CaseNN_0000.nii.gz``
   (as stored), ``labelsTr/CaseNN.nii.gz`` (uint8 0/1: any non-zero mask value is prostate),
   ``dataset.json`` (channel ``T2``; ``background`` 0, ``prostate`` 1).
2. :func:`medl2b.data.msd.prepare_msd` prepares that folder like any segmentation release
   (intensity, one target spacing for every case over its own field of view, noise calibration, manifest,
   atomic writing: see there), with the PROMISE12 choices: the stored orientation (slices
   along the third stored axis), the raw headers' full-precision geometry, the binary mask
   noise of :data:`medl2b.noise.masks.DEFAULT_CONFIG`, task ``prostate-seg``, and the split:
   the packaged one (``medl2b/splits/promise12.json``) when the cases are exactly the 50
   public ones ``Case00..Case49`` and the default counts (10 test, 3 meta) are asked for,
   a given ``split_file``, or else a seeded draw.

A case's ``original`` in the manifest is its raw ``.mhd`` geometry (with ``pixel_type``),
``source`` names the raw files; :func:`to_original_grid` maps a prepared-grid mask back
onto the raw grid (the NIfTI files overlay the raw case, see :mod:`medl2b.data.nifti`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zlib
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medl2b.data.grid import geometry_of, normalise_intensity, spacing_geometry, to_original_grid
from medl2b.data.msd import check_prepare_args, prepare_msd
from medl2b.data.nifti import Geometry
from medl2b.data.splits import split_cases as _split_cases
from medl2b.errors import InputError
from medl2b.noise.masks import DEFAULT_CONFIG
from medl2b.progress import progress_bar

__all__ = [
    "convert_to_nnunet",
    "find_cases",
    "normalise_intensity",
    "prepare_promise12",
    "spacing_geometry",
    "read_case",
    "read_metaimage",
    "split_cases",
    "to_original_grid",
]

_CASE_RE = re.compile(r"^(Case\d+)\.mhd$")
_MASK_RE = re.compile(r"^(Case\d+)_segmentation\.mhd$")
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}
PUBLIC_CASES = tuple(f"Case{i:02d}" for i in range(50))


# --------------------------------------------------------------------------- reading

def _parse_header(path: Path) -> dict[str, str]:
    """Key/value pairs of a MetaImage header, up to ``ElementDataFile``."""
    fields: dict[str, str] = {}
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError as exc:
        raise InputError(path, f"cannot open ({exc.strerror})") from None
    for raw_line in head.decode("latin-1").splitlines():
        key, sep, value = raw_line.partition("=")
        if not sep:
            continue
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    if "ElementDataFile" not in fields or "DimSize" not in fields:
        raise InputError(path, "not a MetaImage header (no DimSize/ElementDataFile line)")
    return fields


def _check_pixel_data(path: Path) -> None:
    """Check that the pixel-data file named by a header exists and is not truncated."""
    fields = _parse_header(path)
    data_name = fields["ElementDataFile"]
    if data_name.upper() in ("LOCAL", "LIST") or "%" in data_name or " " in data_name:
        return  # inline or multi-file data: leave it to SimpleITK
    data = path.parent / data_name
    if not data.is_file():
        raise InputError(data, f"pixel data file missing (named in {path.name})")
    found = data.stat().st_size
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        header_size = int(fields.get("HeaderSize", "0"))
    except ValueError:
        raise InputError(path, "unreadable DimSize/ElementNumberOfChannels/HeaderSize in header") from None
    nbytes = _MET_BYTES.get(fields.get("ElementType", ""))
    if fields.get("CompressedData", "False").lower() == "true":
        expected = fields.get("CompressedDataSize", "")
        if expected.isdigit() and found < int(expected):
            raise InputError(data, f"truncated compressed pixel data (expected {expected} bytes, found {found})")
        if nbytes is not None:
            _check_zlib(data, int(np.prod(dims)) * channels * nbytes)
        return
    if nbytes is None or header_size < 0:
        return
    expected = int(np.prod(dims)) * channels * nbytes + header_size
    if found < expected:
        raise InputError(data, f"truncated pixel data (expected {expected} bytes, found {found})")


def _check_zlib(data: Path, expected: int) -> None:
    """Inflate a ``.zraw`` file: MetaIO reports a corrupt stream only on stderr and returns zeros."""
    inflater = zlib.decompressobj()
    size = 0
    try:
        with open(data, "rb") as fh:
            while chunk := fh.read(1 << 20):
                size += len(inflater.decompress(chunk))
        size += len(inflater.flush())
    except zlib.error as exc:
        raise InputError(data, f"corrupt compressed pixel data (zlib: {exc})") from None
    if size < expected:
        raise InputError(data, f"truncated compressed pixel data (expected {expected} bytes after inflating, "
                               f"found {size})")


def read_metaimage(path: str | os.PathLike):
    """Read a MetaImage file with SimpleITK, turning every failure into :class:`InputError`.

    The header is checked first: a missing or truncated ``.raw``/``.zraw`` is reported
    with the name of that file and the expected and found byte counts.

    Returns:
        ``SimpleITK.Image`` with its spacing, origin and direction as stored.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    _check_pixel_data(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())
        reason = reason.split("ITK ERROR:", 1)[-1].strip()
        raise InputError(path, f"cannot read MetaImage ({reason[:300]})") from None


def read_case(image_path: str | os.PathLike, mask_path: str | os.PathLike | None = None):
    """Read one PROMISE12 case and check that image and mask belong together.

    Args:
        image_path: ``CaseNN.mhd``.
        mask_path: ``CaseNN_segmentation.mhd``; default: beside the image.

    Returns:
        ``(image, mask)`` as ``SimpleITK.Image``; the mask is uint8 0/1 (any non-zero
        value counts as prostate) and carries the image's geometry.

    Raises:
        InputError: the mask is missing, either file is unreadable or truncated, the
            image is not 3-D, or the two sizes differ.
    """
    image_path = Path(image_path)
    if mask_path is None:
        mask_path = image_path.with_name(f"{image_path.stem}_segmentation.mhd")
    mask_path = Path(mask_path)
    if not mask_path.is_file():
        raise InputError(image_path, f"no mask: expected {mask_path.name} beside it")
    image = read_metaimage(image_path)
    mask = read_metaimage(mask_path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(image_path, f"expected a 3-D single-channel image, got {image.GetDimension()}-D "
                                     f"with {image.GetNumberOfComponentsPerPixel()} channel(s)")
    if tuple(mask.GetSize()) != tuple(image.GetSize()):
        raise InputError(mask_path, f"mask size {list(mask.GetSize())} differs from image size "
                                    f"{list(image.GetSize())} of {image_path.name}")
    if min(image.GetSpacing()) <= 0 or not np.all(np.isfinite(image.GetSpacing())):
        raise InputError(image_path, f"invalid spacing {list(image.GetSpacing())}")
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    binary.CopyInformation(image)
    return image, binary


def find_cases(raw: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """Find ``CaseNN.mhd`` and their masks anywhere below ``raw``.

    Returns:
        ``[(case_id, image_path, mask_path), ...]`` sorted by case id.

    Raises:
        InputError: ``raw`` is missing, holds no cases, a case has no mask (or a mask
            no image), or a case id occurs twice.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise InputError(raw, "folder not found")
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for path in sorted(raw.rglob("*.mhd")):
        for regex, found in ((_CASE_RE, images), (_MASK_RE, masks)):
            match = regex.match(path.name)
            if match:
                case = match.group(1)
                if case in found:
                    raise InputError(path, f"duplicate {case} (also {found[case]})")
                found[case] = path
    if not images:
        raise InputError(raw, "no CaseNN.mhd found (expected PROMISE12 CaseNN.mhd + CaseNN_segmentation.mhd)")
    for case, path in sorted(images.items()):
        if case not in masks:
            raise InputError(path, f"no mask: expected {case}_segmentation.mhd")
    for case, path in sorted(masks.items()):
        if case not in images:
            raise InputError(path, f"mask without image: {case}.mhd not found")
    return [(case, images[case], masks[case]) for case in sorted(images)]


# --------------------------------------------------------------------------- splits

def split_cases(cases: Sequence[str], *, meta_cases: int = 3, test_cases: int = 10,
                split_file: str | os.PathLike | None = None, seed: int = 0,
                raw: str | os.PathLike = ".") -> tuple[dict[str, list[str]], str]:
    """Split PROMISE12 case ids into train/meta/test (see :func:`medl2b.data.splits.split_cases`).

    Cases exactly ``Case00..Case49`` with the default counts (3 meta, 10 test) get the
    packaged split ``medl2b/splits/promise12.json`` (meta = the paper's 05, 14, 29).
    """
    return _split_cases(cases, meta_cases=meta_cases, test_cases=test_cases, split_file=split_file, seed=seed,
                        raw=raw, packaged=("promise12", frozenset(PUBLIC_CASES), (3, 10)))


# --------------------------------------------------------------------------- nnU-Net v2 raw

def convert_to_nnunet(raw: str | os.PathLike, target: str | os.PathLike, *, cases: Collection[str] | None = None,
                      progress: bool = False) -> dict[str, dict]:
    """Write the PROMISE12 cases below ``raw`` as an nnU-Net v2 raw dataset in ``target``
    (image as stored: pixel type, spacing, origin, direction; mask uint8 0/1 on its grid).

    Args:
        raw: Folder holding ``CaseNN.mhd`` and ``CaseNN_segmentation.mhd`` at any depth.
        target: Folder to write into (created; should be empty).
        cases: Convert only these case ids (default: all found).
        progress: Show a rich progress bar on stderr.

    Returns:
        Per case id, what the NIfTI files do not say: ``{"original": raw geometry and
        ``pixel_type``, "source": {"image", "mask"} paths relative to raw}``.

    Raises:
        InputError: naming the file, for every problem :func:`find_cases` and :func:`read_case` report.
    """
    raw, target = Path(raw), Path(target)
    found = [c for c in find_cases(raw) if cases is None or c[0] in cases]
    for sub in ("imagesTr", "labelsTr"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    with progress_bar(progress, len(found), "PROMISE12 to nnU-Net v2") as advance:
        for case, image_path, mask_path in found:
            image, mask = read_case(image_path, mask_path)
            sitk.WriteImage(image, str(target / "imagesTr" / f"{case}_0000.nii.gz"))
            sitk.WriteImage(mask, str(target / "labelsTr" / f"{case}.nii.gz"))
            original = geometry_of(image).to_dict()
            original["pixel_type"] = image.GetPixelIDTypeAsString()
            records[case] = {"original": original, "source": {"image": image_path.relative_to(raw).as_posix(),
                                                              "mask": mask_path.relative_to(raw).as_posix()}}
            advance(f"PROMISE12 to nnU-Net v2: {case}")
    dataset = {"name": "PROMISE12", "channel_names": {"0": "T2"}, "labels": {"background": 0, "prostate": 1},
               "numTraining": len(found), "file_ending": ".nii.gz"}
    (target / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    return records


# --------------------------------------------------------------------------- main

def prepare_promise12(raw: str | os.PathLike, out: str | os.PathLike, *, size: int = 144, noise_dice: float = 0.6,
                      meta_cases: int = 3, test_cases: int = 10, split_file: str | os.PathLike | None = None,
                      seed: int = 0, noisy_fraction: float = 1.0, overwrite: bool = False,
                      progress: bool = True, spacing=None) -> dict:
    """Convert a raw PROMISE12 release into a prepared dataset (see the module docstring).

    Args:
        raw: Folder holding ``CaseNN.mhd`` and ``CaseNN_segmentation.mhd`` at any depth.
        out: Prepared dataset folder; written atomically (nothing half-written stays).
        size: Cap on the in-plane extent of the prepared slices in pixels (at least 8; the paper's public code
            used 144 x 144): the in-plane target spacing is coarsened if the largest case would exceed it.
        spacing: Target spacing in mm (3 values, or 2 in-plane); default: the median of the training cases,
            so the three scanner families (0.27, 0.6, 0.625 mm) meet at one millimetres-per-pixel.
        noise_dice: Target mean 3-D Dice of noisy vs clean train masks; ``>= 1`` = no noise.
        meta_cases: Clean meta cases (drawn from the non-test cases).
        test_cases: Held-out evaluation cases.
        split_file: JSON ``{"train": [...], "meta": [...], "test": [...]}`` to use instead.
        seed: Seed of the split draw and of the noise.
        noisy_fraction: Corrupt only this fraction of the train cases (seeded; the rest keep their
            clean masks), for ``medl2b audit``; ``noise_dice`` is then met on the corrupted ones.
        overwrite: Replace an existing prepared dataset in ``out``.
        progress: Show rich progress bars on stderr.

    Returns:
        The manifest, as written to ``out/dataset.json``.
    """
    check_prepare_args(size=size, noise_dice=noise_dice, noisy_fraction=noisy_fraction, meta_cases=meta_cases,
                       test_cases=test_cases, seed=seed, slice_axis=None, min_size=8, spacing=spacing)
    raw, out = Path(raw), Path(out)
    found = find_cases(raw)
    for _case, image_path, mask_path in found:  # every file, unused cases too, before any slow work
        _check_pixel_data(image_path)
        _check_pixel_data(mask_path)
    splits, split_source = split_cases([case for case, _, _ in found], meta_cases=meta_cases, test_cases=test_cases,
                                       split_file=split_file, seed=seed, raw=raw)
    if (out / "dataset.json").exists() and not overwrite:  # prepare_msd would say so only after the conversion
        raise InputError(out, "already holds a prepared dataset (dataset.json); pass --overwrite to replace it")
    used = {case for key, cases in splits.items() if key != "unused" for case in cases}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.nnunet-raw-", dir=out.parent) as tmp:
        records = convert_to_nnunet(raw, tmp, cases=used, progress=progress)
        return prepare_msd(tmp, out, size=size, spacing=spacing, noise_dice=noise_dice, seed=seed, slice_axis=None,
                           noisy_fraction=noisy_fraction, overwrite=overwrite, progress=progress,
                           splits=(splits, split_source), noise_config=DEFAULT_CONFIG, min_size=8,
                           geometry={case: Geometry.from_dict(r["original"]) for case, r in records.items()},
                           extra={"task": "prostate-seg", "source_layout": "promise12", "cases": records})
