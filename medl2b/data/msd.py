"""Medical Segmentation Decathlon and nnU-Net v2 raw datasets -> prepared dataset.

Two layouts are read, told apart by their ``dataset.json``:

* **MSD v1** (``Task04_Hippocampus/``): ``labels`` maps ``"0"`` -> name, ``modality``
  names the channels, ``training`` lists ``{"image": "./imagesTr/X.nii.gz", "label":
  "./labelsTr/X.nii.gz"}``. Multi-modal images are one 4-D NIfTI with the channels on
  the last axis (Task05 Prostate: T2, ADC). Files the list does not name (macOS
  ``._*`` files, ``imagesTs/``) are ignored.
* **nnU-Net v2 raw** (``DatasetNNN_Name/``): ``labels`` maps name -> value,
  ``channel_names`` names the channels, ``file_ending`` is the extension; cases are
  found from ``labelsTr/CASE<file_ending>`` and their channels are
  ``imagesTr/CASE_0000<file_ending>``, ``CASE_0001...``. NIfTI is read with nibabel,
  any other ending (``.mha``, ``.nrrd``) with SimpleITK. Region-based labels (a list of
  values) are not supported.

Preparation of a case:

1. **Checks** (each failure is an :class:`~medl2b.errors.InputError` naming the file):
   readable files, the label map's shape equal to the image's spatial shape, image and
   label (and all channels) on one grid (affines equal within ``AFFINE_TOL``), the
   declared channel count, integer label values that ``labels`` declares.
2. **Orientation**: the arrays are turned to the closest RAS+ orientation (a permutation
   and flips of the axes, no resampling, nibabel's ``as_closest_canonical``), then the
   chosen ``slice_axis`` (axial = S, coronal = A, sagittal = R) is put last. Every case
   is thus sliced along the same anatomical axis whatever its stored orientation.
   ``slice_axis=None`` keeps the stored voxel order and slices along the third stored axis
   (as nnU-Net does; PROMISE12 uses it).
3. **Grid and intensity** (:mod:`medl2b.data.grid`): each channel is
   clipped to its 0.5..99.5th percentiles and z-scored, then resampled to ``size ×
   size`` in-plane over the same field of view; label maps by nearest neighbour.
4. **Labels** are stored as consecutive indices ``0..K-1`` in the order of the declared
   values (``labels`` in the manifest maps name -> index, ``label_values`` index -> raw
   value); :func:`prediction_to_raw` maps a prediction back onto the raw grid and values.
5. **Noise** on the train cases only: every foreground class is corrupted by the mask
   noise family of :mod:`medl2b.noise.masks`, no two classes claiming one voxel, with the
   strength calibrated so that the mean over cases of the mean over foreground classes
   of the per-case Dice meets ``noise_dice``. Achieved per-case, per-class and mean Dice
   go into the manifest.

Output (``out``), nnU-Net-like::

    imagesTr/CASE_0000.nii.gz ...   float32, one file per channel
    labelsTr/CASE.nii.gz            uint8 clean label map (indices)
    labelsNoisy/CASE.nii.gz         uint8 noisy label map (train cases only)
    dataset.json                    manifest (task "segmentation")

PROMISE12 comes through here as well: :mod:`medl2b.data.promise12` converts its MetaImage
release to an nnU-Net v2 raw folder and calls :func:`prepare_msd` on it.

Steps 2 and 3 of a case are :func:`orient_case` and :func:`to_prepared_grid`; ``medl2b predict``
runs the same two on a new image (:func:`read_image`, :func:`preprocess_image`) with the
settings the manifest records (``slice_axis``, ``size``, ``intensity_normalisation``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import nibabel as nib
import SimpleITK as sitk
from nibabel import orientations as ornt

from medl2b.data.grid import PERCENTILES, image_from_xyz, prediction_to_raw, prepare_volume
from medl2b.data.nifti import Geometry, affine_from_geometry, geometry_from_affine, write_nifti
from medl2b.data.splits import split_cases
from medl2b.errors import InputError, atomic_dir
from medl2b.noise.masks import (DEFAULT_CONFIG, MaskNoiseConfig, calibrate_strength, corrupt_volumes,
                                 per_class_dice, pick_noisy_cases)
from medl2b.progress import progress_bar

__all__ = ["AFFINE_TOL", "IMAGE_ENDINGS", "SLICE_AXES", "MsdCase", "MsdDataset", "check_prepare_args",
           "find_msd_dataset", "load_file", "orient_case", "prediction_to_raw", "prepare_msd", "preprocess_image",
           "read_image", "read_labels", "read_msd_case", "sitk_array", "stack_channels", "to_prepared_grid"]

#: Largest difference allowed between two affines of one case (mm and direction cosines).
AFFINE_TOL = 1e-3
#: Smallest prepared slice side UNet++ trains on (four halvings leave 2 x 2).
MIN_SIZE = 32
#: Slice axis name -> the RAS axis it runs along.
SLICE_AXES = {"axial": 2, "coronal": 1, "sagittal": 0}
#: Mask noise for MSD data: the default family without the minimum slice area (structures
#: such as the hippocampus are a few mm² per slice; the strength calibration sets the level).
MSD_NOISE_CONFIG = dataclasses.replace(DEFAULT_CONFIG, min_area_mm2=0.0)
_NIFTI = (".nii.gz", ".nii")


@dataclass
class MsdCase:
    """One labelled case of a raw dataset: channel files (one 4-D file, or one per channel) and its label."""

    case_id: str
    images: list[Path]
    label: Path


@dataclass
class MsdDataset:
    """What a raw ``dataset.json`` declares, plus the labelled cases found."""

    root: Path
    layout: str                       # "msd" or "nnunetv2"
    name: str
    labels: dict[int, str]            # raw value -> name, background (0) included, sorted by value
    channel_names: list[str]
    file_ending: str
    cases: list[MsdCase] = field(default_factory=list)
    licence: str | None = None
    reference: str | None = None


# --------------------------------------------------------------------------- dataset.json

def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(path, "missing: expected an MSD or nnU-Net v2 dataset.json here")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise InputError(path, "must hold a JSON object")
    return data


def _int_value(value, where: Path, what: str) -> int:
    if isinstance(value, bool):
        raise InputError(where, f"{what}: {value!r} is not an integer label value")
    if isinstance(value, list):
        raise InputError(where, f"{what}: region-based labels (a list of values) are not supported")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(where, f"{what}: {value!r} is not an integer label value") from None
    if not number.is_integer() or not 0 <= number <= 255:
        raise InputError(where, f"{what}: {value!r} is not an integer label value in 0..255")
    return int(number)


def _channel_list(mapping, where: Path, key: str) -> list[str]:
    if not isinstance(mapping, dict) or not mapping:
        raise InputError(where, f"'{key}' must be a non-empty object of channel index -> name")
    try:
        order = sorted(mapping, key=int)
    except ValueError:
        raise InputError(where, f"'{key}' keys must be channel indices \"0\", \"1\", ...") from None
    if [int(k) for k in order] != list(range(len(order))):
        raise InputError(where, f"'{key}' keys must be 0..{len(order) - 1}, got {order}")
    return [str(mapping[k]) for k in order]


def find_msd_dataset(raw: str | os.PathLike) -> MsdDataset:
    """Read ``raw/dataset.json`` (MSD v1 or nnU-Net v2) and list the labelled cases.

    Raises:
        InputError: the folder or ``dataset.json`` is missing or malformed, or a listed
            image or label file does not exist.
    """
    root = Path(raw)
    if not root.is_dir():
        raise InputError(root, "folder not found")
    path = root / "dataset.json"
    meta = _read_json(path)
    nnunet = "channel_names" in meta or "file_ending" in meta
    labels = read_labels(meta, path)
    if nnunet:
        ds = _find_nnunet(root, path, meta, labels)
    else:
        ds = _find_msd(root, path, meta, labels)
    if not ds.cases:
        raise InputError(path, "lists no labelled training cases")
    ds.licence = meta.get("licence") or meta.get("license")
    ds.reference = meta.get("reference")
    return ds


def read_labels(meta: dict, path: Path) -> dict[int, str]:
    """The ``labels`` of an MSD v1 (value -> name) or nnU-Net v2 (name -> value) ``dataset.json``, checked:
    raw value -> name, background (0) included, sorted by value."""
    labels_raw = meta.get("labels")
    if not isinstance(labels_raw, dict) or not labels_raw:
        raise InputError(path, "'labels' must be a non-empty object")
    nnunet = "channel_names" in meta or "file_ending" in meta
    labels: dict[int, str] = {}
    for key, value in labels_raw.items():
        name, number = (key, value) if nnunet else (value, key)
        number = _int_value(number, path, f"label {key!r}")
        if number in labels:
            raise InputError(path, f"label value {number} is declared twice")
        labels[number] = str(name)
    names = list(labels.values())
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(path, f"label name {twice[0]!r} is declared for more than one value")
    if 0 not in labels:
        raise InputError(path, "'labels' must declare the background value 0")
    if len(labels) < 2:
        raise InputError(path, "'labels' declares no foreground class")
    return dict(sorted(labels.items()))


def _find_msd(root: Path, path: Path, meta: dict, labels: dict[int, str]) -> MsdDataset:
    channels = _channel_list(meta.get("modality"), path, "modality")
    training = meta.get("training")
    if not isinstance(training, list):
        raise InputError(path, "'training' must be a list of {\"image\", \"label\"} entries")
    cases, seen = [], set()
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) \
                or not isinstance(entry.get("label"), str):
            raise InputError(path, f"training[{i}] must be an object with string 'image' and 'label'")
        image, label = root / entry["image"], root / entry["label"]
        for f in (image, label):
            if not f.is_file():
                raise InputError(f, f"listed in {path.name} (training[{i}]) but not found")
        case_id = _strip_ending(label.name, ".nii.gz")
        if case_id in seen:
            raise InputError(path, f"case {case_id} is listed twice in 'training'")
        seen.add(case_id)
        cases.append(MsdCase(case_id, [image], label))
    return MsdDataset(root, "msd", str(meta.get("name", root.name)), labels, channels, ".nii.gz",
                      sorted(cases, key=lambda c: c.case_id))


def _find_nnunet(root: Path, path: Path, meta: dict, labels: dict[int, str]) -> MsdDataset:
    channels = _channel_list(meta.get("channel_names"), path, "channel_names")
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise InputError(path, "'file_ending' must be a string such as \".nii.gz\"")
    label_dir = root / "labelsTr"
    if not label_dir.is_dir():
        raise InputError(label_dir, "folder not found (nnU-Net v2 keeps the training labels here)")
    cases = []
    for label in sorted(label_dir.iterdir()):
        if label.name.startswith(".") or not label.name.endswith(ending):
            continue
        case_id = _strip_ending(label.name, ending)
        images = [root / "imagesTr" / f"{case_id}_{c:04d}{ending}" for c in range(len(channels))]
        for c, image in enumerate(images):
            if not image.is_file():
                raise InputError(image, f"channel {c} ({channels[c]}) of case {case_id} not found")
        extra = root / "imagesTr" / f"{case_id}_{len(channels):04d}{ending}"
        if extra.is_file():
            raise InputError(extra, f"case {case_id} has more channels than the {len(channels)} in channel_names")
        cases.append(MsdCase(case_id, images, label))
    return MsdDataset(root, "nnunetv2", str(meta.get("name", root.name)), labels, channels, ending, cases)


def _strip_ending(name: str, ending: str) -> str:
    return name[: -len(ending)] if name.endswith(ending) else name.split(".")[0]


# --------------------------------------------------------------------------- reading one case

def load_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Array (x, y, z[, c]) and 4x4 RAS affine of one file; any failure names the file."""
    if path.name.endswith(_NIFTI):
        try:
            img = nib.load(str(path))
            return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=float)
        except Exception as exc:  # nibabel raises many types for damaged or truncated files
            raise InputError(path, f"cannot read NIfTI ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
                             ) from None
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = " ".join(str(exc).split()).split("ITK ERROR:", 1)[-1].strip()
        raise InputError(path, f"cannot read image ({reason[:200]})") from None
    return sitk_array(img, path)


def sitk_array(img, where) -> tuple[np.ndarray, np.ndarray]:
    """Array (x, y, z[, c]) and 4x4 RAS affine of a ``SimpleITK.Image`` (a 2-D one as one slice)."""
    if img.GetDimension() == 2:  # one slice: a 3-D grid of depth 1 (spacing 1, direction extended)
        img = sitk.JoinSeries(img)
    if img.GetDimension() != 3:
        raise InputError(where, f"expected a 2-D or 3-D image, got {img.GetDimension()} dimensions")
    arr = sitk.GetArrayFromImage(img)
    arr = np.transpose(arr, tuple(range(arr.ndim - 1, -1, -1))) if img.GetNumberOfComponentsPerPixel() == 1 \
        else np.transpose(arr, (2, 1, 0, 3))
    return arr, affine_from_geometry(img.GetSpacing(), img.GetOrigin(), img.GetDirection())


def _orient(array: np.ndarray, affine: np.ndarray, slice_axis: str) -> tuple[np.ndarray, np.ndarray]:
    """Closest RAS+ orientation, then the slice axis last: array (x, y, z[, c]) and its affine."""
    current = ornt.io_orientation(affine)
    to_ras = ornt.ornt_transform(current, ornt.axcodes2ornt(("R", "A", "S")))
    data = ornt.apply_orientation(array, to_ras)
    aff = affine @ ornt.inv_ornt_aff(to_ras, array.shape[:3])
    axis = SLICE_AXES[slice_axis]
    perm = [a for a in range(3) if a != axis] + [axis]
    data = np.transpose(data, perm + list(range(3, data.ndim)))
    new = aff.copy()
    new[:, :3] = aff[:, perm]
    return np.ascontiguousarray(data), new


def read_msd_case(ds: MsdDataset, case: MsdCase, *, slice_axis: str | None = "axial") -> dict:
    """Read and check one case (``slice_axis=None``: keep the stored orientation).

    Returns:
        ``{"channels": [float32 (x, y, z) arrays in the oriented frame], "label": uint8 index map,
        "geometry": Geometry of the oriented frame (ITK/LPS), "raw_affine": 4x4, "raw_shape": (X, Y, Z)}``.

    Raises:
        InputError: naming the file, for every check listed in the module docstring.
    """
    label, label_affine = load_file(case.label)
    if label.ndim == 4 and label.shape[3] == 1:
        label = label[..., 0]
    if label.ndim != 3:
        raise InputError(case.label, f"expected a 3-D label map, got shape {tuple(label.shape)}")
    n_ch = len(ds.channel_names)
    channels: list[np.ndarray] = []
    for path in case.images:
        data, affine = load_file(path)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim not in (3, 4):
            raise InputError(path, f"expected a 3-D or 4-D image, got shape {tuple(data.shape)}")
        if tuple(data.shape[:3]) != tuple(label.shape):
            raise InputError(case.label, f"label shape {list(label.shape)} differs from image shape "
                                         f"{list(data.shape[:3])} of {path.name}")
        if not np.allclose(affine, label_affine, atol=AFFINE_TOL, rtol=0):
            diff = float(np.abs(affine - label_affine).max())
            raise InputError(case.label, f"affine differs from that of {path.name} by up to {diff:.4g} "
                                         f"(tolerance {AFFINE_TOL})")
        parts = [data[..., c] for c in range(data.shape[3])] if data.ndim == 4 else [data]
        channels += parts
    if len(channels) != n_ch:
        raise InputError(case.images[0], f"has {len(channels)} channel(s), but dataset.json declares {n_ch} "
                                         f"({', '.join(ds.channel_names)})")
    if not np.issubdtype(label.dtype, np.integer):
        if not np.all(np.isfinite(label)) or not np.all(np.mod(label, 1) == 0):
            raise InputError(case.label, "holds non-integer label values")
    values = np.unique(label).astype(np.int64)
    undeclared = [int(v) for v in values if int(v) not in ds.labels]
    if undeclared:
        raise InputError(case.label, f"holds label value(s) {undeclared} not declared in dataset.json labels "
                                     f"{sorted(ds.labels)}")
    lut = np.zeros(int(max(ds.labels)) + 1, dtype=np.uint8)
    for index, value in enumerate(ds.labels):
        lut[value] = index
    index_map = lut[label.astype(np.int64)]
    stack = np.stack([np.asarray(c, dtype=np.float32) for c in channels], axis=-1)
    for c in range(stack.shape[-1]):
        if not np.all(np.isfinite(stack[..., c])):
            raise InputError(case.images[min(c, len(case.images) - 1)], "holds NaN or infinite intensities")
    oriented, geo = orient_case(stack, label_affine, slice_axis)
    oriented_label = index_map if slice_axis is None else _orient(index_map, label_affine, slice_axis)[0]
    return {"channels": [oriented[..., c] for c in range(oriented.shape[-1])], "label": oriented_label,
            "geometry": geo, "raw_affine": label_affine, "raw_shape": tuple(int(s) for s in label.shape)}


# --------------------------------------------------------------------------- one case's preprocessing
# prepare_msd and prediction on new images (medl2b.predict) both go through these two steps, so a model
# sees at prediction exactly what it was trained on.

def orient_case(stack: np.ndarray, affine: np.ndarray, slice_axis: str | None) -> tuple[np.ndarray, Geometry]:
    """Step 2 of the module docstring: channels ``(x, y, z, c)`` stored with the 4x4 RAS ``affine`` ->
    the oriented array (closest RAS+, ``slice_axis`` last; ``None``: as stored) and its ITK geometry."""
    if slice_axis is None:
        oriented, oriented_affine = stack, affine
    else:
        oriented, oriented_affine = _orient(stack, affine, slice_axis)
    return oriented, geometry_from_affine(oriented_affine, oriented.shape[:3])


def to_prepared_grid(channels, geo: Geometry, size: int, *, label: np.ndarray | None = None):
    """Step 3 of the module docstring: oriented ``(x, y, z)`` channel arrays (and label map) on ``geo`` ->
    the prepared grid (:func:`medl2b.data.grid.prepare_volume`): ``(images, mask or None, geometry, intensity)``."""
    images = [image_from_xyz(c, geo) for c in channels]
    mask = None if label is None else image_from_xyz(label.astype(np.uint8), geo)
    return prepare_volume(images, mask, size)


#: File endings of the raw images :func:`read_image` reads (NIfTI with nibabel, the rest with SimpleITK).
IMAGE_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


def read_image(paths, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a raw image to predict: one file per channel (nnU-Net ``CASE_0000``, ``CASE_0001``, ...) or one
    file (3-D, or 4-D with the channels last as in MSD v1), in any stored orientation; see :func:`stack_channels`."""
    paths = [Path(p) for p in paths]
    return stack_channels([(*load_file(p), p) for p in paths], n_channels)


def stack_channels(parts, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The channels of one image, checked, from ``(array (x, y[, z[, c]]), 4x4 RAS affine, where)`` parts
    (one per channel file, or one holding every channel on its last axis).

    Returns:
        ``(float32 (x, y, z, c) array, the first part's affine)``. A 2-D image comes back as one slice
        ``(x, y, 1, c)``.

    Raises:
        InputError: naming ``where``: not 2-D/3-D/4-D, channel files on different grids, a channel count
            other than ``n_channels``, NaN or infinite intensities.
    """
    arrays, first_affine, first_shape, first = [], None, None, parts[0][2]
    for data, affine, where in parts:
        data = np.asanyarray(data)
        if data.ndim == 2:
            data = data[:, :, None]
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim not in (3, 4) or (data.ndim == 4 and len(parts) > 1):
            raise InputError(where, f"expected a {'3-D' if len(parts) > 1 else '2-D, 3-D or 4-D'} image, "
                                    f"got shape {tuple(data.shape)}")
        if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
            raise InputError(where, f"holds {data.dtype} values, not intensities")
        if first_affine is None:
            first_affine, first_shape = np.asarray(affine, dtype=float), tuple(data.shape[:3])
        elif tuple(data.shape[:3]) != first_shape:
            raise InputError(where, f"shape {list(data.shape[:3])} differs from {list(first_shape)} of "
                                    f"{getattr(first, 'name', first)}")
        elif not np.allclose(affine, first_affine, atol=AFFINE_TOL, rtol=0):
            diff = float(np.abs(np.asarray(affine) - first_affine).max())
            raise InputError(where, f"affine differs from that of {getattr(first, 'name', first)} by up to "
                                    f"{diff:.4g} (tolerance {AFFINE_TOL})")
        arrays += [data[..., c] for c in range(data.shape[3])] if data.ndim == 4 else [data]
    if len(arrays) != n_channels:
        found = f"{len(parts)} channel files" if len(parts) > 1 else f"{len(arrays)} channel(s)"
        raise InputError(first, f"has {found}, but the model takes {n_channels} channel(s): give CASE_0000, "
                                "CASE_0001, ... files or one 4-D file with the channels last")
    stack = np.stack([np.asarray(c, dtype=np.float32) for c in arrays], axis=-1)
    for c in range(stack.shape[-1]):
        if not np.all(np.isfinite(stack[..., c])):
            raise InputError(parts[min(c, len(parts) - 1)][2], "holds NaN or infinite intensities")
    return stack, first_affine


def preprocess_image(stack: np.ndarray, affine: np.ndarray, manifest: dict) -> dict:
    """A raw image ``(x, y, z, c)`` -> the prepared grid of a prepared dataset, as :func:`prepare_msd` did for
    its cases, with the manifest's own settings (``slice_axis``, ``size``, intensity percentiles).

    Returns:
        ``{"image": float32 (c, X, Y, Z) on the prepared grid, "prepared": its Geometry, "oriented": Geometry
        of the oriented raw grid, "raw": Geometry of the stored raw grid}``.
    """
    if "slice_axis" not in manifest or "size" not in manifest:
        raise InputError("dataset.json", "was prepared by an older medl2b (no slice_axis/size recorded); "
                                         "prepare the dataset again")
    norm = manifest.get("intensity_normalisation") or {}
    if [float(v) for v in norm.get("percentiles", ())] != [float(v) for v in PERCENTILES]:
        raise InputError("dataset.json", f"records intensity normalisation {norm!r}, which this medl2b does "
                                         f"not implement (percentiles {list(PERCENTILES)})")
    oriented, geo = orient_case(stack, affine, manifest["slice_axis"])
    channels = [oriented[..., c] for c in range(oriented.shape[-1])]
    images, _, target, _ = to_prepared_grid(channels, geo, int(manifest["size"]))
    return {"image": np.stack(images), "prepared": target, "oriented": geo,
            "raw": geometry_from_affine(affine, stack.shape[:3])}


# --------------------------------------------------------------------------- main

def _default_size(sizes: list[tuple[int, int]]) -> int:
    """Median of the larger in-plane side over the cases, rounded up to a multiple of 16 (at least 32)."""
    side = float(np.median([max(s) for s in sizes]))
    return int(max(32, 16 * int(np.ceil(side / 16.0))))


def check_prepare_args(*, size: int | None, noise_dice: float, noisy_fraction: float, meta_cases: int,
                       test_cases: int, seed: int, slice_axis: str | None, min_size: int = MIN_SIZE) -> None:
    """The argument checks of :func:`prepare_msd`, for callers that want them before slow work of their own."""
    if size is not None and size < min_size:
        why = " (UNet++ halves the slices four times)" if min_size == MIN_SIZE else ""
        raise InputError("--size", f"must be at least {min_size}{why}, got {size}")
    if not 0.0 <= noise_dice or not np.isfinite(noise_dice):
        raise ValueError(f"noise_dice must be a finite number >= 0, got {noise_dice}")
    if not 0.0 < noisy_fraction <= 1.0:
        raise InputError("--noisy-fraction", f"must be in (0, 1], got {noisy_fraction}")
    if meta_cases < 0 or test_cases < 0:
        raise ValueError(f"meta_cases and test_cases must be >= 0, got {meta_cases}, {test_cases}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if slice_axis is not None and slice_axis not in SLICE_AXES:
        raise InputError("--slice-axis", f"must be one of {', '.join(SLICE_AXES)}, got {slice_axis!r}")


def prepare_msd(raw: str | os.PathLike, out: str | os.PathLike, *, size: int | None = None,
                noise_dice: float = 0.6, meta_cases: int = 3, test_cases: int = 10,
                split_file: str | os.PathLike | None = None, seed: int = 0, slice_axis: str | None = "axial",
                noisy_fraction: float = 1.0, overwrite: bool = False, progress: bool = True,
                splits: tuple[dict[str, list[str]], str] | None = None,
                noise_config: MaskNoiseConfig = MSD_NOISE_CONFIG, min_size: int = MIN_SIZE,
                geometry: dict[str, Geometry] | None = None, extra: dict | None = None) -> dict:
    """Convert an MSD v1 or nnU-Net v2 raw dataset into a prepared dataset (see the module docstring).

    Args:
        raw: Folder holding ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
        out: Prepared dataset folder; written atomically (nothing half-written stays).
        size: In-plane size of the prepared slices; ``None`` = the median larger in-plane side
            of the cases, rounded up to a multiple of 16.
        noise_dice: Target mean (over train cases) of the mean over foreground classes of the
            per-case 3-D Dice of noisy vs clean; ``>= 1`` = no noise.
        meta_cases: Clean meta cases of a seeded split.
        test_cases: Held-out evaluation cases of a seeded split.
        split_file: JSON ``{"train", "meta", "test"[, "unused"]}`` to use instead.
        seed: Seed of the split draw and of the noise.
        slice_axis: ``axial``, ``coronal`` or ``sagittal``: the anatomical axis 2-D slices are cut along;
            ``None``: no reorientation, slices along the third stored axis.
        noisy_fraction: Corrupt only this fraction of the train cases (a seeded draw; the rest keep
            their clean masks as the given ones), so that "which cases are wrong" has an answer
            (``medl2b audit``). ``noise_dice`` is then met on the corrupted cases.
        overwrite: Replace an existing prepared dataset in ``out``.
        progress: Show a rich progress bar on stderr.
        splits: ``(splits, source)`` already decided by the caller (as
            :func:`medl2b.data.splits.split_cases` returns them), instead of ``split_file`` or the
            seeded draw; cases under ``unused`` need not be in ``raw``.
        noise_config: Shape of the mask noise (default: :data:`MSD_NOISE_CONFIG`).
        min_size: Smallest ``size`` accepted.
        geometry: Case id -> its ITK geometry at full precision, used instead of the one read from
            the file (a NIfTI header holds float32), for a caller that converted the files from a
            more precise format; needs ``slice_axis=None`` and must agree with the file's affine.
        extra: Manifest keys to set or replace; its ``"cases"`` maps case id -> keys of that case.

    Returns:
        The manifest, as written to ``out/dataset.json``.
    """
    check_prepare_args(size=size, noise_dice=noise_dice, noisy_fraction=noisy_fraction, meta_cases=meta_cases,
                       test_cases=test_cases, seed=seed, slice_axis=slice_axis, min_size=min_size)
    if geometry is not None and slice_axis is not None:
        raise ValueError("geometry is the stored one: it needs slice_axis=None")
    ds = find_msd_dataset(raw)
    by_id = {c.case_id: c for c in ds.cases}
    if splits is None:
        splits, split_source = split_cases(list(by_id), meta_cases=meta_cases, test_cases=test_cases,
                                           split_file=split_file, seed=seed, raw=ds.root)
    else:
        splits, split_source = splits
        if {c for key, cases in splits.items() if key != "unused" for c in cases} != set(by_id):
            raise ValueError("splits must list exactly the cases found (other than the unused ones)")
    split_of = {case: key for key, cases in splits.items() for case in cases}
    used = [c for c in ds.cases if split_of[c.case_id] != "unused"]
    classes = list(range(1, len(ds.labels)))
    class_names = [ds.labels[v] for v in list(ds.labels)[1:]]

    with atomic_dir(out, overwrite=overwrite) as tmp:
        for sub in ("imagesTr", "labelsTr", "labelsNoisy"):
            (tmp / sub).mkdir()
        entries: dict[str, dict] = {}
        train_masks: dict[str, tuple[np.ndarray, tuple[float, ...]]] = {}
        with progress_bar(progress, 2 * len(used) + 1, ds.name) as advance:
            loaded = {}
            for case in used:  # read and check everything before the (slower) resampling
                loaded[case.case_id] = read_msd_case(ds, case, slice_axis=slice_axis)
                if geometry is not None:
                    loaded[case.case_id]["geometry"] = _given_geometry(geometry[case.case_id], loaded[case.case_id],
                                                                       case)
                advance(f"{ds.name} reading {case.case_id}")
            if size is None:
                size = _default_size([v["geometry"].size[:2] for v in loaded.values()])
            for case in used:
                item = loaded.pop(case.case_id)
                geo = item["geometry"]
                images, mask_xyz, target, intensity = to_prepared_grid(item["channels"], geo, size, label=item["label"])
                kw = {"spacing": target.spacing, "origin": target.origin, "direction": target.direction}
                names = []
                for c, img in enumerate(images):
                    names.append(f"imagesTr/{case.case_id}_{c:04d}.nii.gz")
                    write_nifti(img, tmp / names[-1], **kw)
                write_nifti(mask_xyz, tmp / "labelsTr" / f"{case.case_id}.nii.gz", **kw)
                raw_geo = geometry_from_affine(item["raw_affine"], item["raw_shape"])
                original = {**raw_geo.to_dict(), "affine": np.asarray(item["raw_affine"]).tolist()}
                entries[case.case_id] = {
                    "image": names[0], "images": names, "label": f"labelsTr/{case.case_id}.nii.gz",
                    "noisy_label": None, "split": split_of[case.case_id], "original": original,
                    "oriented": geo.to_dict(), "prepared": target.to_dict(), "noise_dice": None,
                    "noise_dice_per_class": None, "intensity": intensity,
                    "source": {"images": [p.relative_to(ds.root).as_posix() for p in case.images],
                               "label": case.label.relative_to(ds.root).as_posix()},
                }
                if split_of[case.case_id] == "train":
                    train_masks[case.case_id] = (mask_xyz, target.spacing)
                advance(f"{ds.name} {case.case_id}")

            advance(f"{ds.name} noise calibration")
            noise = _noise(tmp, entries, train_masks, noise_dice, seed, classes, class_names, noisy_fraction,
                           noise_config)

        manifest = {
            "name": ds.name, "task": "segmentation", "format_version": 1, "source_layout": ds.layout,
            "channel_names": {str(i): n for i, n in enumerate(ds.channel_names)},
            "labels": {name: i for i, name in enumerate(ds.labels.values())},
            "label_values": {str(i): int(v) for i, v in enumerate(ds.labels)},
            "file_ending": ".nii.gz", "size": int(size), "slice_axis": slice_axis, "seed": int(seed),
            "orientation": "as stored (no reorientation)" if slice_axis is None
            else "closest RAS+, slice axis last (see medl2b.data.msd)",
            "splits": splits, "split_source": split_source,
            "intensity_normalisation": {"method": "per channel: clip to percentiles, then z-score",
                                        "percentiles": list(PERCENTILES)},
            "licence": ds.licence, "reference": ds.reference,
            "cases": entries, "noise": noise,
        }
        extra = dict(extra or {})
        for case_id, keys in extra.pop("cases", {}).items():
            if case_id in entries:
                entries[case_id].update(keys)
        manifest.update(extra)
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _given_geometry(geo: Geometry, item: dict, case: MsdCase) -> Geometry:
    """A caller's full-precision geometry of a case, checked against the one read from its file."""
    affine = affine_from_geometry(geo.spacing, geo.origin, geo.direction)
    if tuple(geo.size) != tuple(item["geometry"].size) or not np.allclose(affine, item["raw_affine"],
                                                                          atol=AFFINE_TOL, rtol=0):
        raise ValueError(f"the geometry given for {case.case_id} is not that of {case.label}")
    return geo


def _noise(tmp: Path, entries: dict, train_masks: dict, noise_dice: float, seed: int, classes: list[int],
           class_names: list[str], noisy_fraction: float = 1.0, config: MaskNoiseConfig = MSD_NOISE_CONFIG) -> dict:
    """Calibrate, write the noisy train label maps, and return the manifest's ``noise`` record."""
    names = sorted(train_masks)
    pairs = [train_masks[n] for n in names]
    corrupt = pick_noisy_cases(names, noisy_fraction, seed)
    chosen = [train_masks[n] for n in names if n in corrupt]
    strength = 0.0
    noisy_of = {}
    if chosen and noise_dice < 1:
        strength, _, _ = calibrate_strength(chosen, noise_dice, seed=seed, config=config, classes=classes)
        done = corrupt_volumes(chosen, strength=strength, seed=seed, config=config, classes=classes)
        noisy_of = dict(zip([n for n in names if n in corrupt], done))
    noisy = [noisy_of[n] if n in noisy_of else m.copy() for n, (m, _) in zip(names, pairs)]
    per_case, per_case_class = {}, {}
    for name, noisy_xyz, (clean_xyz, _sp) in zip(names, noisy, pairs):
        geo = Geometry.from_dict(entries[name]["prepared"])
        write_nifti(noisy_xyz, tmp / "labelsNoisy" / f"{name}.nii.gz", spacing=geo.spacing, origin=geo.origin,
                    direction=geo.direction)
        dices = per_class_dice(noisy_xyz, clean_xyz, classes)
        per_case_class[name] = {n: round(d, 6) for n, d in zip(class_names, dices)}
        per_case[name] = round(float(np.mean(dices)), 6)
        entries[name]["noisy_label"] = f"labelsNoisy/{name}.nii.gz"
        entries[name]["noise_dice"] = per_case[name]
        entries[name]["noise_dice_per_class"] = per_case_class[name]
    scored = [n for n in per_case if n in corrupt] or list(per_case)  # the target applies to the corrupted cases
    mean = float(np.mean([per_case[n] for n in scored])) if scored else 1.0
    per_class_mean = {c: round(float(np.mean([per_case_class[n][c] for n in scored])), 6) if scored else 1.0
                      for c in class_names}
    return {"target_dice": float(noise_dice), "achieved_mean_dice": round(mean, 6),
            "noisy_fraction": float(noisy_fraction), "noisy_cases": sorted(corrupt),
            "achieved_per_class_dice": per_class_mean, "per_case_dice": per_case,
            "per_case_class_dice": per_case_class,
            "params": {"strength": float(strength), **config.to_dict(),
                       "classes": "each foreground class corrupted on its own; contested voxels go to the class "
                                  "with the highest per-slice priority",
                       "streams": "numpy.random.default_rng([seed, i]) for the i-th train case in sorted order"},
            "seed": int(seed)}
