"""CHASE_DB1 (flat release folder) -> an nnU-Net v2 2-D raw dataset that ``medl2b prepare msd`` reads.

The release holds, for each of 28 fundus images (both eyes of 14 children; NN = child 01..14, X = eye L/R)::

    Image_NNX.jpg          999 x 960 RGB (JPEG)
    Image_NNX_1stHO.png    observer 1's vessel mask (0/255; 0/1 is accepted too)
    Image_NNX_2ndHO.png    observer 2's vessel mask

``convert_chasedb1(raw, out)`` writes (atomically: nothing half-written stays)::

    out/imagesTr/Image_NNX_0000.png       the RGB image, ONE file with three channels
    out/labelsTr/Image_NNX.png            observer 1, values 0/1 (the clean reference)
    out/labelsTr_observer2/Image_NNX.png  observer 2, values 0/1 (given noisy labels: --noisy-labels)
    out/dataset.json                      channel_names R, G, B; labels background 0, vessel 1;
                                          file_ending ".png"; licence and attribution
    out/<README/licence files of the release, if any, copied as they are>

The JPEG is re-encoded as PNG: the PNG stores exactly the pixels the JPEG decodes to (nothing further is lost),
and nnU-Net v2 has one ``file_ending`` for images and labels alike, while label maps must be lossless. The PNG
also pins the pixel values: JPEG decoders (libjpeg versions) may differ by a grey level.

Usage::

    python data_prep/chasedb1/convert.py /path/to/CHASEDB1 raw_chase [--overwrite]
    medl2b prepare msd raw_chase prepared_chase --split-file data_prep/chasedb1/split.json \\
        --noisy-labels raw_chase/labelsTr_observer2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medl2b.errors import InputError, atomic_dir

__all__ = ["ATTRIBUTION", "LICENCE", "SPLIT_SEED", "convert_chasedb1", "draw_split"]

#: The release's licence and attribution (from the data's README; keep them with any copy).
LICENCE = "CC BY 4.0"
ATTRIBUTION = ("CHASE_DB1: Fraz et al., \"An ensemble classification-based approach applied to retinal blood vessel "
               "segmentation\", IEEE TBME 59(9), 2012; Owen et al., IOVS 2009 (the CHASE study). Made available by "
               "Kingston University London with St George's, University of London. Licence: CC BY 4.0 - keep this "
               "attribution with any copy.")
#: Seed of the child-level split draw that made ``split.json`` (:func:`draw_split`).
SPLIT_SEED = 0
_IMAGE = re.compile(r"Image_(\d{2})([LR])\.jpg")
_OBSERVERS = {"labelsTr": "1stHO", "labelsTr_observer2": "2ndHO"}
_RELEASE_NOTES = re.compile(r"(readme|licen[cs]e|copying)", re.IGNORECASE)


def _read(path: Path) -> sitk.Image:
    if not path.is_file():
        raise InputError(path, "not found (every Image_NNX.jpg needs Image_NNX_1stHO.png and Image_NNX_2ndHO.png)")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = " ".join(str(exc).split()).split("ITK ERROR:", 1)[-1].strip()
        raise InputError(path, f"cannot read image ({reason[:200]})") from None


def _binary_mask(path: Path, size: tuple[int, int]) -> sitk.Image:
    """An observer's mask as a uint8 0/1 image; 0/255 and 0/1 are accepted."""
    img = _read(path)
    if img.GetDimension() != 2 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"expected a one-channel 2-D mask, got {img.GetDimension()}-D with "
                               f"{img.GetNumberOfComponentsPerPixel()} components")
    if tuple(img.GetSize()) != size:
        raise InputError(path, f"size {list(img.GetSize())} differs from the image's {list(size)}")
    arr = sitk.GetArrayFromImage(img)
    values = set(np.unique(arr).tolist())
    if values <= {0, 255}:
        arr = (arr == 255).astype(np.uint8)
    elif values <= {0, 1}:
        arr = arr.astype(np.uint8)
    else:
        raise InputError(path, f"holds values {sorted(values)[:10]}; a vessel mask holds 0/255 or 0/1")
    return sitk.GetImageFromArray(arr)


def convert_chasedb1(raw: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """Convert the CHASE_DB1 release folder ``raw`` into the nnU-Net v2 2-D raw dataset ``out`` (module docstring).

    Returns:
        The ``dataset.json`` written.

    Raises:
        InputError: naming the file: no images, a missing or unreadable mask, a mask of another size or with
            values other than 0/255 (0/1), ``out`` exists (without ``overwrite``).
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise InputError(raw, "folder not found")
    images = sorted(p for p in raw.iterdir() if _IMAGE.fullmatch(p.name))
    if not images:
        raise InputError(raw, "holds no Image_NNX.jpg (NN = child 01..14, X = eye L/R): not the CHASE_DB1 release")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for sub in ("imagesTr", *_OBSERVERS):
            (tmp / sub).mkdir()
        for path in images:
            case = path.name[: -len(".jpg")]
            img = _read(path)
            if img.GetDimension() != 2 or img.GetNumberOfComponentsPerPixel() != 3:
                raise InputError(path, f"expected a 2-D RGB image, got {img.GetDimension()}-D with "
                                       f"{img.GetNumberOfComponentsPerPixel()} components")
            size = tuple(img.GetSize())
            masks = {sub: _binary_mask(raw / f"{case}_{tag}.png", size) for sub, tag in _OBSERVERS.items()}
            sitk.WriteImage(img, str(tmp / "imagesTr" / f"{case}_0000.png"))  # lossless: the decoded pixels
            for sub, mask in masks.items():
                sitk.WriteImage(mask, str(tmp / sub / f"{case}.png"))
        copied = []
        for note in sorted(raw.iterdir()):
            if note.is_file() and _RELEASE_NOTES.search(note.name):
                shutil.copy2(note, tmp / note.name)
                copied.append(note.name)
        meta = {
            "name": "CHASE_DB1",
            "description": "Retinal vessels in colour fundus images of both eyes of 14 children (the CHASE study); "
                           "labelsTr = observer 1 (1stHO), labelsTr_observer2 = observer 2 (2ndHO).",
            "channel_names": {"0": "R", "1": "G", "2": "B"},
            "labels": {"background": 0, "vessel": 1},
            "numTraining": len(images),
            "file_ending": ".png",
            "overwrite_image_reader_writer": "NaturalImage2DIO",
            "licence": LICENCE,
            "reference": ATTRIBUTION,
            "observers": {"labelsTr": "Image_NNX_1stHO.png", "labelsTr_observer2": "Image_NNX_2ndHO.png"},
            "converted_by": "data_prep/chasedb1/convert.py (JPEG re-encoded losslessly as PNG; masks 0/255 -> 0/1)",
            "release_notes_copied": copied,
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def draw_split(seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """The child-level split of ``split.json``: the 14 children permuted by ``numpy.random.default_rng(seed)``;
    the first 9 are train, the next 1 meta, the last 4 test; both eyes of a child go together."""
    children = [f"{n:02d}" for n in range(1, 15)]
    order = [children[i] for i in np.random.default_rng(seed).permutation(len(children))]
    groups = {"train": order[:9], "meta": order[9:10], "test": order[10:]}
    return {key: sorted(f"Image_{child}{eye}" for child in kids for eye in "LR") for key, kids in groups.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path, help="the CHASE_DB1 release folder (Image_NNX.jpg, *_1stHO.png, *_2ndHO.png)")
    parser.add_argument("out", type=Path, help="nnU-Net v2 raw dataset folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    args = parser.parse_args(argv)
    try:
        meta = convert_chasedb1(args.raw, args.out, overwrite=args.overwrite)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"converted {meta['numTraining']} CHASE_DB1 images into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
