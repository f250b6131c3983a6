"""Classification from any image folder: JPEG/PNG images + CSVs of labels -> the prepared image store.

This is the prepared classification layout; ``prepare isic2019`` (:mod:`medl2b.data.isic2019`) is one
converter into it, :func:`prepare_images` the one for a user's own labels.

Input of :func:`prepare_images`::

    RAW/...                  .jpg / .jpeg / .png images, at any depth
    labels.csv               image,label: the given label of every training image (the labels you have)
    trusted.csv (optional)   image,label: checked labels of some images; they become the clean meta set
    test.csv (optional)      image,label: held-out images with reference labels (the test set)

``image`` is a file name with or without its extension (or a path relative to RAW where names repeat);
``label`` is a class name. The classes are the names found, sorted. An image listed in ``labels.csv`` and
``trusted.csv`` is a trusted image (its given label is kept to measure the given labels on the trusted
ones); a test image may be in no other CSV. Every problem with a CSV is one :class:`InputError` naming the
file and the line: a missing column, an empty cell, an image listed twice, an image not in RAW, an image in
two splits, a class with no trusted image (the meta set needs every class).

Output (``out``)::

    images.npy      uint8 (N, size, size, 3): shorter side resized to ``size`` (bicubic), centre crop, RGB
    dataset.json    classes, splits (indices into images.npy), per-image labels; ``"train_truth": false``:
                    a training image has only its given label (``"label": null``), so nothing downstream
                    compares with a clean label of it
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from medl2b.errors import InputError, atomic_dir
from medl2b.progress import progress_bar

__all__ = ["IMAGE_ENDINGS", "load_square_image", "open_csv", "prepare_images", "read_label_csv", "square_image",
           "write_image_store"]

#: Image files :func:`prepare_images` reads.
IMAGE_ENDINGS = (".jpg", ".jpeg", ".png")
#: The preprocessing every prepared classification image went through (recorded in the manifest).
PREPROCESSING = "RGB; shorter side resized to size (bicubic, antialiased), centre crop to size x size; uint8"


def open_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(line number, fields)`` rows of a CSV; blank lines skipped."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [(i + 1, row) for i, row in enumerate(csv.reader(fh))]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot read CSV ({exc})") from None
    rows = [(n, row) for n, row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise InputError(path, "empty CSV (no header)")
    return [h.strip() for h in rows[0][1]], rows[1:]


def load_square_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (bicubic, antialiased), then centre-crop.

    Uses the JPEG decoder's draft mode to decode large images at a reduced scale
    that is still at least ``size`` on the shorter side.

    Returns:
        uint8 array (size, size, 3), RGB.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            scale = size / min(w, h)
            im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
            return square_image(im, size)
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(path, f"cannot read image ({exc})") from None


def square_image(im: Image.Image, size: int) -> np.ndarray:
    """The resize and centre crop of :func:`load_square_image`, on an open ``PIL.Image``: uint8 (size, size, 3)."""
    im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def write_image_store(folder: Path, files: list[Path], size: int, *, progress: bool = False,
                      description: str = "images") -> None:
    """``folder/images.npy``: every file through :func:`load_square_image`, in order, (N, size, size, 3) uint8."""
    store = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8,
                                      shape=(len(files), size, size, 3))
    with progress_bar(progress, len(files), description) as advance:
        for i, path in enumerate(files):
            store[i] = load_square_image(path, size)
            advance()
    store.flush()
    del store


def read_label_csv(path: str | os.PathLike) -> list[tuple[int, str, str]]:
    """The ``(line, image, label)`` rows of an ``image,label`` CSV (other columns ignored).

    Raises:
        InputError: naming the file (and line): unreadable, a missing column, an empty cell, an image
            listed twice, no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "CSV file not found")
    header, rows = open_csv(path)
    missing = [c for c in ("image", "label") if c not in header]
    if missing:
        raise InputError(path, f"line 1: missing column {' and '.join(repr(m) for m in missing)} (the header must "
                               f"name the columns image,label; found {','.join(header)})")
    i_img, i_lab = header.index("image"), header.index("label")
    out, seen = [], {}
    for line, row in rows:
        if len(row) <= max(i_img, i_lab):
            raise InputError(path, f"line {line}: expected {len(header)} fields, found {len(row)}")
        image, label = row[i_img].strip(), row[i_lab].strip()
        if not image:
            raise InputError(path, f"line {line}: empty image name")
        if not label:
            raise InputError(path, f"line {line}: image {image} has an empty label")
        if image in seen:
            raise InputError(path, f"line {line}: image {image} is listed twice (also line {seen[image]})")
        seen[image] = line
        out.append((line, image, label))
    if not out:
        raise InputError(path, "lists no images (only a header)")
    return out


def _index_images(raw: Path) -> dict[str, list[Path]]:
    """Every name an image of ``raw`` may be listed by (path relative to ``raw``, file name, both without
    the extension) -> the files it names."""
    index: dict[str, list[Path]] = {}
    for path in sorted(raw.rglob("*")):
        if not path.is_file() or path.name.startswith(".") or not path.name.lower().endswith(IMAGE_ENDINGS):
            continue
        rel = path.relative_to(raw).as_posix()
        for key in dict.fromkeys((rel, os.path.splitext(rel)[0], path.name, path.stem)):
            index.setdefault(key, []).append(path)
    return index


def _resolve(name: str, index: dict[str, list[Path]], raw: Path, where: Path, line: int) -> Path:
    hits = index.get(name.replace("\\", "/"), [])
    if not hits:
        raise InputError(where, f"line {line}: image {name} not found in {raw} (.jpg, .jpeg or .png)")
    if len(hits) > 1:
        names = ", ".join(p.relative_to(raw).as_posix() for p in hits[:3])
        raise InputError(where, f"line {line}: image {name} names several files ({names}); give the path relative "
                                f"to {raw}")
    return hits[0]


def prepare_images(raw: str | os.PathLike, out: str | os.PathLike, *, labels: str | os.PathLike,
                   trusted: str | os.PathLike | None = None, test: str | os.PathLike | None = None,
                   size: int = 224, seed: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """A folder of images with your own labels -> the prepared classification dataset (module docstring).

    Args:
        raw: Folder of the images (any depth).
        out: Prepared dataset folder; written atomically.
        labels: CSV of the given label of every training image.
        trusted: CSV of checked labels of some images: the clean meta set (at least one image per class).
        test: CSV of held-out images and their reference labels.
        size: Side of the square prepared images.
        seed: Recorded in the manifest (``val_holdout`` draws from it; nothing else is random here).
        overwrite: Replace an existing prepared dataset in ``out``.
        progress: Show a progress bar on stderr.

    Returns:
        The manifest, as written to ``out/dataset.json``.
    """
    if size < 8:
        raise InputError("--size", f"must be at least 8, got {size}")
    raw = Path(raw)
    if not raw.is_dir():
        raise InputError(raw, "folder of images not found")
    index = _index_images(raw)
    if not index:
        raise InputError(raw, "holds no .jpg, .jpeg or .png images")
    tables = {"train": (Path(labels), read_label_csv(labels))}
    for key, csv_path in (("meta", trusted), ("test", test)):
        if csv_path is not None:
            tables[key] = (Path(csv_path), read_label_csv(csv_path))
    # file -> (split key -> (csv, line, label))
    found: dict[Path, dict[str, tuple[Path, int, str]]] = {}
    for key, (path, rows) in tables.items():
        for line, name, label in rows:
            file = _resolve(name, index, raw, path, line)
            if key in found.get(file, {}):
                first = found[file][key]
                raise InputError(path, f"line {line}: image {name} is listed twice (also line {first[1]})")
            found.setdefault(file, {})[key] = (path, line, label)
    for file, by in found.items():
        if "test" in by and len(by) > 1:
            other = next(v for k, v in by.items() if k != "test")
            path, line, _ = by["test"]
            raise InputError(path, f"line {line}: image {file.relative_to(raw).as_posix()} is in two splits: test and "
                                   f"{other[0].name} line {other[1]} (a test image must not be trained on)")
    classes = sorted({label for by in found.values() for key, (_, _, label) in by.items() if key != "test"})
    for file, by in found.items():
        if "test" in by and by["test"][2] not in classes:
            path, line, label = by["test"]
            raise InputError(path, f"line {line}: class {label!r} has no training image (labels.csv, trusted.csv); "
                                   "the model cannot predict it")
    if len(classes) < 2:
        raise InputError(labels, f"names {len(classes)} class ({', '.join(classes)}); classification needs at least 2")
    if trusted is not None:
        have = {by["meta"][2] for by in found.values() if "meta" in by}
        for cls in classes:
            if cls not in have:
                first = min((by["train"][1] for by in found.values() if "train" in by and by["train"][2] == cls),
                            default=None)
                where = f" (first given in {Path(labels).name} line {first})" if first is not None else ""
                raise InputError(trusted, f"no trusted image of class {cls!r}{where}: the meta set needs at least "
                                          "one trusted image per class")

    files = sorted(found)
    k = {c: i for i, c in enumerate(classes)}
    entries, split = [], []
    for i, file in enumerate(files):
        by = found[file]
        key = "test" if "test" in by else "meta" if "meta" in by else "train"
        given = by.get("train", by[key])[2]
        entries.append({"image": file.relative_to(raw).as_posix(), "index": i,
                        "label": None if key == "train" else k[by[key][2]], "noisy_label": k[given],
                        "split": key, "lesion_id": None, "file": file.relative_to(raw).as_posix()})
        split.append(key)
    split = np.asarray(split)
    unused = len({p for v in index.values() for p in v} - set(files))  # in RAW, in no CSV
    meta = [e for e in entries if e["split"] == "meta"]
    both = [e for e in meta if "train" in found[raw / e["file"]]]
    agreement = (round(float(np.mean([e["label"] == e["noisy_label"] for e in both])), 6) if both else None)

    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_image_store(tmp, files, size, progress=progress, description=raw.name)
        manifest = {
            "name": raw.name, "task": "classification", "format_version": 1, "classes": classes,
            "size": int(size), "seed": int(seed), "image_store": "images.npy", "preprocessing": PREPROCESSING,
            "splits": {s: [int(i) for i in np.nonzero(split == s)[0]] for s in ("train", "meta", "test")},
            "class_counts": {s: {c: int(sum(1 for e in entries if e["split"] == s and
                                            (e["noisy_label"] if s == "train" else e["label"]) == j))
                                 for j, c in enumerate(classes)} for s in ("train", "meta", "test")},
            "images": entries, "train_truth": False, "unused_images": int(unused),
            "noise": {"given": True, "source": str(Path(labels)), "trusted": str(trusted) if trusted else None,
                      "test": str(test) if test else None, "rate": None, "realised_rate": None,
                      "given_vs_trusted_agreement": agreement, "n_given_and_trusted": len(both),
                      "kind": "given labels (nothing synthesised); no clean label of a training image exists"},
        }
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
