"""ISIC 2019 (dermoscopy classification): raw release -> image store + manifest.

Input (``raw``)::

    ISIC_2019_Training_Input/ISIC_XXXXXXX.jpg    (some ISIC_XXXXXXX_downsampled.jpg)
    ISIC_2019_Training_GroundTruth.csv           image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK (one-hot)
    ISIC_2019_Training_Metadata.csv              optional; its lesion_id groups images of one lesion

Output (``out``): the prepared classification layout of :mod:`medl2b.data.images` (which
``prepare images`` writes from a user's own labels too)::

    images.npy      uint8 (N, size, size, 3): shorter side resized to ``size``, centre crop
    dataset.json    classes, splits (indices into images.npy), per-image labels, noise

The 8 diagnostic classes are used (UNK has no training image). The split follows
the paper's proportions (20,400 train / 640 clean meta / 4,291 test of 25,331),
scaled to the number of images; it keeps every ``lesion_id`` inside one split
(images without one are their own group) and is stratified by class, with at
least one meta image per class where possible. Symmetric label noise
(:func:`medl2b.noise.labels.symmetric_noise`) is applied to the train split only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from medl2b.data.images import PREPROCESSING, load_square_image, square_image, write_image_store
from medl2b.data.images import open_csv as _open_csv
from medl2b.data.splits import load_split
from medl2b.errors import InputError, atomic_dir
from medl2b.noise.labels import symmetric_noise

__all__ = ["CLASSES", "grouped_stratified_split", "load_square_image", "prepare_isic2019", "read_ground_truth",
           "square_image"]

CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
GT_NAME = "ISIC_2019_Training_GroundTruth.csv"
META_NAME = "ISIC_2019_Training_Metadata.csv"
INPUT_NAME = "ISIC_2019_Training_Input"
PAPER_COUNTS = {"train": 20400, "meta": 640, "test": 4291}
_SUFFIX = "_downsampled"


def read_ground_truth(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read ``ISIC_2019_Training_GroundTruth.csv``.

    Values may be written ``1.0``/``0.0`` or ``1``/``0``. ``UNK`` is optional and ignored
    unless it is the only positive column (an error).

    Returns:
        ``(image_names, labels)``; labels int64 (N,) indexing :data:`CLASSES`.

    Raises:
        InputError: naming the CSV and the missing column, or the line and problem.
    """
    path = Path(path)
    header, rows = _open_csv(path)
    missing = [c for c in ("image", *CLASSES) if c not in header]
    if missing:
        kind = "column" if len(missing) == 1 else "columns"
        raise InputError(path, f"missing {kind} {', '.join(repr(m) for m in missing)} "
                               f"(expected header image,{','.join(CLASSES)},UNK)")
    col = {name: header.index(name) for name in header}
    names: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    for line, row in rows:
        if len(row) != len(header):
            raise InputError(path, f"line {line}: expected {len(header)} fields, found {len(row)}")
        name = row[col["image"]].strip()
        if not name:
            raise InputError(path, f"line {line}: empty image name")
        if name in seen:
            raise InputError(path, f"line {line}: image {name} listed twice")
        seen.add(name)
        values = []
        for c in CLASSES:
            cell = row[col[c]].strip()
            try:
                v = float(cell)
            except ValueError:
                v = float("nan")
            if v not in (0.0, 1.0):
                raise InputError(path, f"line {line} ({name}): {c} is {cell!r}, expected 0/1 or 0.0/1.0")
            values.append(v)
        positive = [c for c, v in zip(CLASSES, values) if v == 1.0]
        if len(positive) != 1:
            what = (f"several positive classes ({', '.join(positive)})" if positive
                    else "no positive class among the 8")
            raise InputError(path, f"line {line} ({name}): {what}")
        names.append(name)
        labels.append(CLASSES.index(positive[0]))
    if not names:
        raise InputError(path, "no images listed")
    return names, np.asarray(labels, dtype=np.int64)


def _strip(name: str) -> str:
    return name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else name


def _read_lesions(path: Path, names: list[str]) -> list[str | None]:
    """lesion_id per image from the metadata CSV (None when absent or empty)."""
    header, rows = _open_csv(path)
    if "image" not in header:
        raise InputError(path, "missing column 'image'")
    if "lesion_id" not in header:
        return [None] * len(names)
    i_img, i_les = header.index("image"), header.index("lesion_id")
    by_name: dict[str, str] = {}
    for line, row in rows:
        if len(row) <= max(i_img, i_les):
            raise InputError(path, f"line {line}: expected {len(header)} fields, found {len(row)}")
        lesion = row[i_les].strip()
        if lesion:
            by_name[row[i_img].strip()] = lesion
            by_name.setdefault(_strip(row[i_img].strip()), lesion)
    return [by_name.get(n, by_name.get(_strip(n))) for n in names]


def _find_layout(raw: Path) -> tuple[Path, Path, Path | None]:
    if not raw.is_dir():
        raise InputError(raw, "folder not found")

    def find(name: str, want_dir: bool) -> Path | None:
        direct = raw / name
        hits = [direct] if direct.exists() else []
        hits += sorted(p for p in raw.rglob(name) if p != direct)
        hits = [p for p in hits if (p.is_dir() if want_dir else p.is_file())]
        if want_dir:
            hits = [p for p in hits if any(p.glob("*.jpg")) or any(p.glob("*.JPG"))]
        return hits[0] if hits else None

    gt = find(GT_NAME, False)
    if gt is None:
        raise InputError(raw, f"{GT_NAME} not found")
    images = find(INPUT_NAME, True)
    if images is None:
        raise InputError(raw, f"no {INPUT_NAME}/ folder with .jpg images found")
    return gt, images, find(META_NAME, False)


def _resolve_files(names: list[str], folder: Path, gt: Path) -> list[Path]:
    """Image file per CSV name, accepting a ``_downsampled`` suffix on either side."""
    present = {p.name for p in folder.iterdir()}
    files = []
    for name in names:
        for candidate in (name, _strip(name), name + _SUFFIX):
            hit = next((candidate + ext for ext in (".jpg", ".JPG", ".jpeg") if candidate + ext in present), None)
            if hit:
                files.append(folder / hit)
                break
        else:
            raise InputError(folder / f"{name}.jpg", f"listed in {gt.name} but missing on disk")
    return files


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` summing to ``total`` (largest remainder)."""
    weights = np.asarray(weights, dtype=float)
    if total <= 0 or weights.sum() <= 0:
        return np.zeros(len(weights), dtype=int)
    exact = total * weights / weights.sum()
    base = np.floor(exact).astype(int)
    order = np.argsort(-(exact - base), kind="stable")
    base[order[: total - base.sum()]] += 1
    return base


def grouped_stratified_split(labels: np.ndarray, groups: list[str | None], *, n_meta: int, n_test: int,
                             n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Split images into train/meta/test, keeping groups together, stratified by class.

    A group (one lesion) takes the majority class of its images. Per class, meta and
    test quotas proportional to the class sizes (meta at least 1 per class with >= 2
    images when ``n_meta`` allows) are filled with whole groups in random order,
    taking a group only if it fits the quota; a remaining shortfall is closed with the
    smallest group that gets nearer, and a total shortfall with groups that fit
    from the classes with the most images left.
    Approximate when groups are large.

    Args:
        labels: int (N,) class per image.
        groups: Group key per image (None = the image is its own group).
        n_meta: Requested meta images.
        n_test: Requested test images.
        n_classes: Number of classes.
        rng: Source of randomness.

    Returns:
        Array of str (N,) with values ``"train"``, ``"meta"``, ``"test"``.
    """
    labels = np.asarray(labels)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(f"lesion:{g}" if g else f"image:{i}", []).append(i)
    keys = list(members)
    group_label = {k: int(np.bincount(labels[members[k]], minlength=n_classes).argmax()) for k in keys}
    counts = np.bincount(labels, minlength=n_classes)

    meta_q = _apportion(n_meta, counts)
    if n_meta >= int((counts >= 2).sum()):
        for c in np.nonzero((meta_q == 0) & (counts >= 2))[0]:
            donor = int(np.argmax(meta_q))
            if meta_q[donor] > 1:
                meta_q[donor] -= 1
                meta_q[c] += 1
    test_q = _apportion(n_test, counts)

    split = np.full(len(labels), "train", dtype=object)
    free = [keys[i] for i in rng.permutation(len(keys))]
    for name, quota in (("meta", meta_q), ("test", test_q)):
        for c in range(n_classes):
            want, taken = int(quota[c]), 0
            candidates = [k for k in free if group_label[k] == c]
            chosen = []
            for k in candidates:
                if taken >= want:
                    break
                if taken + len(members[k]) <= want:
                    chosen.append(k)
                    taken += len(members[k])
            if taken < want:
                picked = set(chosen)
                rest = sorted((k for k in candidates if k not in picked), key=lambda k: len(members[k]))
                if rest and abs(taken + len(members[rest[0]]) - want) < want - taken:
                    chosen.append(rest[0])
            for k in chosen:
                split[members[k]] = name
            chosen_set = set(chosen)
            free = [k for k in free if k not in chosen_set]
        # Groups too large for their class quota: close the total with any groups that fit.
        short = int(quota.sum()) - int((split == name).sum())
        left = np.bincount([group_label[k] for k in free], weights=[len(members[k]) for k in free],
                           minlength=n_classes) if free else np.zeros(n_classes)
        for k in sorted(free, key=lambda k: -left[group_label[k]]):  # stable: random within a class
            if short <= 0:
                break
            if len(members[k]) <= short:
                split[members[k]] = name
                short -= len(members[k])
                free.remove(k)
    return split.astype(str)


def _split_from_file(names: list[str], split_file: str | os.PathLike, gt_path: Path) -> np.ndarray:
    """Per image ``"train"``/``"meta"``/``"test"``/``"unused"`` from a split file of image names."""
    chosen = load_split(split_file)
    where = {_strip(name): key for key, members in chosen.items() for name in members}
    missing = sorted(set(where) - {_strip(n) for n in names})
    if missing:
        raise InputError(split_file, f"lists images not in {gt_path.name}: {', '.join(missing[:5])}")
    unlisted = [n for n in names if _strip(n) not in where]
    if unlisted:
        raise InputError(split_file, f"does not list these images of {gt_path.name}: {', '.join(unlisted[:5])}"
                                     + (" ..." if len(unlisted) > 5 else ""))
    return np.array([where[_strip(n)] for n in names], dtype=object).astype(str)


def prepare_isic2019(raw: str | os.PathLike, out: str | os.PathLike, *, size: int = 224, noise: float = 0.2,
                     n_meta: int | None = None, n_test: int | None = None, seed: int = 0,
                     split_file: str | os.PathLike | None = None, overwrite: bool = False,
                     progress: bool = True) -> dict:
    """Convert the raw ISIC 2019 training release into ``images.npy`` + ``dataset.json``.

    Args:
        raw: Folder with ``ISIC_2019_Training_Input/`` and the CSVs (at any depth).
        out: Prepared dataset folder; written atomically.
        size: Side of the square prepared images.
        noise: Symmetric label-noise rate on the train split, in [0, 1).
        n_meta: Clean meta images; default ``round(N * 640 / 25331)``, at least one per class.
        n_test: Test images; default ``round(N * 4291 / 25331)``.
        seed: Seed of the split and of the noise.
        split_file: JSON ``{"train", "meta", "test"[, "unused"]}`` of image names (as in the CSV) to use
            instead of a seeded split; it must list every image of the CSV (``unused`` ones are stored
            but belong to no split). ``n_meta`` and ``n_test`` are then ignored.
        overwrite: Replace an existing prepared dataset in ``out``.
        progress: Show a rich progress bar on stderr.

    Returns:
        The manifest, as written to ``out/dataset.json``.
    """
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must lie in [0, 1), got {noise}")
    if (n_meta is not None and n_meta < 0) or (n_test is not None and n_test < 0):
        raise ValueError(f"n_meta and n_test must be >= 0, got {n_meta}, {n_test}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    raw = Path(raw)
    gt_path, image_dir, meta_path = _find_layout(raw)
    names, labels = read_ground_truth(gt_path)
    files = _resolve_files(names, image_dir, gt_path)
    lesions = _read_lesions(meta_path, names) if meta_path is not None else [None] * len(names)

    n = len(names)
    total = sum(PAPER_COUNTS.values())
    present = int((np.bincount(labels, minlength=len(CLASSES)) >= 2).sum())
    if n_meta is None:
        n_meta = max(int(round(n * PAPER_COUNTS["meta"] / total)), present)
    if n_test is None:
        n_test = max(1, int(round(n * PAPER_COUNTS["test"] / total)))
    if n_meta + n_test >= n:
        raise InputError(gt_path, f"{n} images are too few for {n_meta} meta + {n_test} test images and a train split")
    if split_file is not None:
        split = _split_from_file(names, split_file, gt_path)
    else:
        split = grouped_stratified_split(labels, lesions, n_meta=n_meta, n_test=n_test, n_classes=len(CLASSES),
                                         rng=np.random.default_rng([seed, 2019]))
    train_idx = np.nonzero(split == "train")[0]
    noisy = labels.copy()
    noisy[train_idx] = symmetric_noise(labels[train_idx], noise, len(CLASSES), rng=np.random.default_rng([seed, 7]))
    n_flipped = int((noisy != labels).sum())

    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_image_store(tmp, files, size, progress=progress, description="ISIC 2019")
        manifest = {
            "name": "ISIC2019", "task": "skin-lesion-cls", "format_version": 1, "classes": list(CLASSES),
            "size": int(size), "seed": int(seed), "image_store": "images.npy", "preprocessing": PREPROCESSING,
            "splits": {k: [int(i) for i in np.nonzero(split == k)[0]] for k in ("train", "meta", "test")},
            "class_counts": {k: {c: int(((split == k) & (labels == j)).sum()) for j, c in enumerate(CLASSES)}
                             for k in ("train", "meta", "test")},
            "images": [{"image": name, "index": i, "label": int(labels[i]), "noisy_label": int(noisy[i]),
                        "split": str(split[i]), "lesion_id": lesions[i], "file": files[i].name}
                       for i, name in enumerate(names)],
            "noise": {"rate": float(noise),
                      "realised_rate": round(n_flipped / len(train_idx), 6) if len(train_idx) else 0.0,
                      "n_flipped": n_flipped, "seed": int(seed), "kind": "symmetric (uniform over the other classes)"},
        }
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
