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
* **nnU-Net v2 2-D images** (``"file_ending"`` one of :data:`NATURAL_ENDINGS`: ``.png``, ``.bmp``,
  ``.tif``/``.tiff``, ``.jpg``/``.jpeg``; ``"overwrite_image_reader_writer"`` is accepted and ignored):
  each case is one 2-D image, read with SimpleITK (:func:`load_natural_image`). A multi-component
  pixel gives the channels, so an RGB image is ONE file ``CASE_0000.png`` holding the three channels
  ``channel_names`` declares (RGBA: the alpha is dropped); a grayscale image is one channel (several
  files ``CASE_0000``, ``CASE_0001``, ... add their channels up). Arrays are ``(x, y, 1)`` with x = the
  columns (width) and y = the rows (height), as ITK indexes them, so a prediction written back as PNG
  overlays the input pixel for pixel. Spacing 1 x 1 unless the image file carries one, a dummy third
  axis of spacing 1; only the sizes of image and label must agree (PNG labels rarely carry a spacing).
  No reorientation: ``slice_axis`` is ignored and the manifest records ``"slice_axis": null`` and
  ``"image_2d": true``. The default ``size`` (median larger side rounded up to 16) never downsamples.

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
3. **Grid and intensity** (:mod:`medl2b.data.grid`): every case is resampled to the dataset's
   target spacing (the median spacing of the training cases, or ``spacing``; in-plane coarsened only
   if the largest case would exceed ``size`` pixels) over its own field of view, aspect ratio kept,
   Gaussian anti-aliasing along downsampled axes; label maps by nearest neighbour. CT channels
   (``channel_names`` ``"CT"``) are clipped to the training cases' foreground 0.5..99.5th percentiles
   and z-scored with their foreground mean/std; other channels per case (own percentiles, z-score).
   The manifest records ``spacing``, ``spacing_source`` and the per-channel records
   (``intensity_normalisation.channels``), which ``medl2b predict`` reuses. The raw label files are
   copied to ``labelsRaw/`` (the reference of native-resolution evaluation).
4. **Labels** are stored as consecutive indices ``0..K-1`` in the order of the declared
   values (``labels`` in the manifest maps name -> index, ``label_values`` index -> raw
   value); :func:`prediction_to_raw` maps a prediction back onto the raw grid and values.
5. **Noise** on the train cases only: every foreground class is corrupted by the mask
   noise family of :mod:`medl2b.noise.masks`, no two classes claiming one voxel, with the
   strength calibrated so that the mean over cases of the mean over foreground classes
   of the per-case Dice meets ``noise_dice``. Achieved per-case, per-class and mean Dice
   go into the manifest. **Given noisy labels** (``noisy_labels=DIR``, e.g. a second human
   observer): the train cases' noisy labels are read from ``DIR/<label file name>`` instead,
   with the checks and the resampling (nearest neighbour) of ``labelsTr``; the manifest's
   ``noise`` record then says ``"given": true`` with the source folder, and the achieved Dice
   of given vs clean as for synthesised noise.

Output (``out``), nnU-Net-like::

    imagesTr/CASE_0000.nii.gz ...   float32, one file per channel
    labelsTr/CASE.nii.gz            uint8 clean label map (indices)
    labelsNoisy/CASE.nii.gz         uint8 noisy label map (train cases only)
    labelsRaw/CASE<ending>          the raw label file as given (raw grid and values)
    arrays/CASE_*.npy               the same prepared arrays uncompressed, read lazily in training
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
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import nibabel as nib
import SimpleITK as sitk
from nibabel import orientations as ornt

from medl2b.data.grid import (CT_CHANNELS, PERCENTILES, foreground_sample, image_from_xyz, intensity_plan,
                              prediction_to_raw, prepare_volume, prepared_geometry, resample, target_spacing, to_xyz)
from medl2b.data.nifti import Geometry, affine_from_geometry, geometry_from_affine, write_nifti
from medl2b.data.splits import split_cases, trusted_split
from medl2b.data.store import write_case_arrays
from medl2b.errors import InputError, atomic_dir, atomic_file
from medl2b.noise.masks import (DEFAULT_CONFIG, MaskNoiseConfig, calibrate_strength, corrupt_volumes,
                                 per_class_dice, pick_noisy_cases)
from medl2b.progress import progress_bar

__all__ = ["AFFINE_TOL", "IMAGE_ENDINGS", "NATURAL_ENDINGS", "SLICE_AXES", "MsdCase", "MsdDataset",
           "check_prepare_args", "find_msd_dataset", "find_test_cases", "find_trusted_labels", "is_natural_image",
           "load_file", "load_natural_image",
           "orient_case", "prediction_to_raw", "prepare_msd", "preprocess_image", "read_image", "read_labels",
           "read_msd_case", "sitk_array", "stack_channels", "to_prepared_grid", "write_mask"]

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
#: File endings of 2-D natural images (nnU-Net v2's NaturalImage2DIO layout; JPEG read as well).
NATURAL_ENDINGS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")


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

    @property
    def image_2d(self) -> bool:
        """Whether the cases are 2-D natural images (PNG, BMP, TIFF, JPEG)."""
        return is_natural_image(self.file_ending)


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
    listed = {c.images[0].resolve() for c in cases}
    for image in _image_files(root / "imagesTr", _NIFTI):
        if image.resolve() not in listed:
            raise InputError(image, f"has no label: {path.name} 'training' does not list it; add it with its label "
                                    "or move it out of imagesTr/ (an unlabelled image is never dropped in silence)")
    return MsdDataset(root, "msd", str(meta.get("name", root.name)), labels, channels, ".nii.gz",
                      sorted(cases, key=lambda c: c.case_id))


def _image_files(folder: Path, endings) -> list[Path]:
    """The image files of a folder (hidden files such as macOS ``._*`` skipped); none if it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.lower().endswith(tuple(e.lower() for e in endings)))


def _channel_files(folder: Path, case_id: str, ending: str, channels: list[str]) -> list[Path]:
    """The nnU-Net channel files ``CASE_0000<ending>``, ``CASE_0001``, ... of a case in ``folder``, checked
    (a 2-D image file may hold several channels: RGB is one file)."""
    images = [folder / f"{case_id}_{c:04d}{ending}" for c in range(len(channels))]
    if is_natural_image(ending):  # 2-D: one file may hold several channels (RGB): the files present
        present = [images[0]]
        for extra_channel in images[1:]:
            if not extra_channel.is_file():
                break
            present.append(extra_channel)
        images = present
    for c, image in enumerate(images):
        if not image.is_file():
            raise InputError(image, f"channel {c} ({channels[c]}) of case {case_id} not found")
    extra = folder / f"{case_id}_{len(channels):04d}{ending}"
    if extra.is_file():
        raise InputError(extra, f"case {case_id} has more channels than the {len(channels)} in channel_names")
    return images


def _unlabelled_images(folder: Path, ending: str, labelled: set[str], labels: Path) -> None:
    """An nnU-Net image ``CASE_XXXX<ending>`` in ``folder`` whose case has no label in ``labels`` is an error."""
    for image in _image_files(folder, (ending,)):
        stem = image.name[: -len(ending)]
        case_id = stem[:-5] if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit() else stem
        if case_id not in labelled:
            raise InputError(image, f"has no label {labels.name}/{case_id}{ending}; add it, or move the image out of "
                                    f"{folder.name}/ (an unlabelled image is never dropped in silence)")


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
        cases.append(MsdCase(case_id, _channel_files(root / "imagesTr", case_id, ending, channels), label))
    _unlabelled_images(root / "imagesTr", ending, {c.case_id for c in cases}, label_dir)
    return MsdDataset(root, "nnunetv2", str(meta.get("name", root.name)), labels, channels, ending, cases)


def find_test_cases(ds: MsdDataset) -> list[MsdCase]:
    """The held-out cases of ``imagesTs/`` that have a reference label in ``labelsTs/`` (nnU-Net's names; MSD
    v1 ships no ``labelsTs``). None without a ``labelsTs/`` folder; with one, an image of ``imagesTs/``
    without its label is an :class:`InputError` naming the image."""
    label_dir, image_dir = ds.root / "labelsTs", ds.root / "imagesTs"
    if not label_dir.is_dir():
        return []
    cases = []
    for label in _image_files(label_dir, (ds.file_ending,)):
        case_id = _strip_ending(label.name, ds.file_ending)
        if ds.layout == "msd":
            images = [image_dir / label.name]
            if not images[0].is_file():
                raise InputError(label, f"has no image {image_dir.name}/{label.name}")
        else:
            images = _channel_files(image_dir, case_id, ds.file_ending, ds.channel_names)
        cases.append(MsdCase(case_id, images, label))
    labelled = {c.case_id for c in cases}
    if ds.layout == "msd":
        for image in _image_files(image_dir, _NIFTI):
            if _strip_ending(image.name, ".nii.gz") not in labelled:
                raise InputError(image, f"has no label {label_dir.name}/{image.name}; add it, or move the image out "
                                        f"of {image_dir.name}/ (an unlabelled image is never dropped in silence)")
    else:
        _unlabelled_images(image_dir, ds.file_ending, labelled, label_dir)
    return cases


def find_trusted_labels(ds: MsdDataset, folder: str | os.PathLike) -> dict[str, Path]:
    """Case id -> trusted label file of ``folder`` (named as in ``labelsTr/``); each must be a training case."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "folder of trusted labels not found")
    known = {c.case_id: c for c in ds.cases}
    found = {}
    for path in _image_files(folder, (ds.file_ending,)):
        case_id = _strip_ending(path.name, ds.file_ending)
        if case_id not in known:
            raise InputError(path, f"trusted label of no training case: {ds.root.name} has no case {case_id} with an "
                                   f"image in imagesTr/ and a given label in labelsTr/ (names as in labelsTr/)")
        found[case_id] = path
    if not found:
        raise InputError(folder, f"holds no trusted label files (*{ds.file_ending}, named as in labelsTr/)")
    return found


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


def is_natural_image(name) -> bool:
    """Whether a file name (or ending) is a 2-D natural image (:data:`NATURAL_ENDINGS`)."""
    return str(name).lower().endswith(NATURAL_ENDINGS)


def load_natural_image(path: Path, n_channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D natural image (PNG, BMP, TIFF, JPEG) read with SimpleITK: array ``(x, y, 1, c)`` (x = columns,
    y = rows; the pixel components are the channels) and its 4x4 RAS affine (the file's spacing, 1 x 1 if it
    carries none, and spacing 1 on the dummy third axis).

    An alpha component (RGBA, gray + alpha) is dropped unless ``n_channels`` asks for exactly the file's
    component count.

    Raises:
        InputError: naming the file: unreadable, or not a 2-D image.
    """
    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = " ".join(str(exc).split()).split("ITK ERROR:", 1)[-1].strip()
        raise InputError(path, f"cannot read image ({reason[:200]})") from None
    if img.GetDimension() == 3 and img.GetSize()[2] == 1:
        img = img[:, :, 0]
    if img.GetDimension() != 2:
        raise InputError(path, f"expected a 2-D image, got a {img.GetDimension()}-D one of size {list(img.GetSize())}")
    arr = sitk.GetArrayFromImage(img)  # (rows, columns[, components])
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] in (2, 4) and n_channels != arr.shape[-1]:
        arr = arr[..., :-1]  # gray + alpha, RGBA: drop the alpha
    data = np.ascontiguousarray(np.transpose(arr, (1, 0, 2))[:, :, None, :])
    d2 = np.asarray(img.GetDirection(), dtype=float).reshape(2, 2)
    direction = np.eye(3)
    direction[:2, :2] = d2
    affine = affine_from_geometry((*img.GetSpacing(), 1.0), (*img.GetOrigin(), 0.0), direction.reshape(-1))
    return data, affine


def _channel_kind(n: int) -> str:
    """``"a grayscale image"``, ``"an RGB image"``, ``"an image of n components"``."""
    return {1: "a grayscale image", 3: "an RGB image"}.get(n, f"an image of {n} components")


def _label_indices(label: np.ndarray, where: Path, labels: dict[int, str]) -> np.ndarray:
    """Raw integer label values -> uint8 indices ``0..K-1`` in the order of the declared values."""
    if not np.issubdtype(label.dtype, np.integer):
        if not np.all(np.isfinite(label)) or not np.all(np.mod(label, 1) == 0):
            raise InputError(where, "holds non-integer label values")
    values = np.unique(label).astype(np.int64)
    undeclared = [int(v) for v in values if int(v) not in labels]
    if undeclared:
        raise InputError(where, f"holds label value(s) {undeclared[:10]} not declared in dataset.json labels "
                                f"{sorted(labels)}")
    lut = np.zeros(int(max(labels)) + 1, dtype=np.uint8)
    for index, value in enumerate(labels):
        lut[value] = index
    return lut[label.astype(np.int64)]


def _read_label_3d(path: Path, shape, affine: np.ndarray, against: Path, labels: dict[int, str]) -> np.ndarray:
    """A 3-D label map on the grid (``shape``, ``affine``) of the file ``against``, as indices."""
    label, label_affine = load_file(path)
    if label.ndim == 4 and label.shape[3] == 1:
        label = label[..., 0]
    if label.ndim != 3:
        raise InputError(path, f"expected a 3-D label map, got shape {tuple(label.shape)}")
    if tuple(label.shape) != tuple(shape):
        raise InputError(path, f"label shape {list(label.shape)} differs from shape {list(shape)} of {against.name}")
    if not np.allclose(affine, label_affine, atol=AFFINE_TOL, rtol=0):
        diff = float(np.abs(affine - label_affine).max())
        raise InputError(path, f"affine differs from that of {against.name} by up to {diff:.4g} "
                               f"(tolerance {AFFINE_TOL})")
    return _label_indices(label, path, labels)


def _read_label_2d(path: Path, shape, against: Path, labels: dict[int, str]) -> np.ndarray:
    """A 2-D label image (one component) of the size of the image ``against``, as indices ``(x, y, 1)``."""
    label, _ = load_natural_image(path, 1)
    if label.shape[3] != 1:
        raise InputError(path, f"label image has {label.shape[3]} channels ({_channel_kind(label.shape[3])}); "
                               "expected one channel of integer label values (0, 1, ...)")
    label = label[..., 0]
    if tuple(label.shape[:2]) != tuple(shape[:2]):
        raise InputError(path, f"label size {list(label.shape[:2])} (width x height) differs from size "
                               f"{list(shape[:2])} of the image {against.name}")
    return _label_indices(label, path, labels)


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


def read_msd_case(ds: MsdDataset, case: MsdCase, *, slice_axis: str | None = "axial",
                  noisy_label: Path | None = None) -> dict:
    """Read and check one case (``slice_axis=None``: keep the stored orientation; 2-D image datasets are
    never reoriented).

    Args:
        noisy_label: A given noisy label file of the case, read with the same checks as its label.

    Returns:
        ``{"channels": [float32 (x, y, z) arrays in the oriented frame], "label": uint8 index map,
        "geometry": Geometry of the oriented frame (ITK/LPS), "raw_affine": 4x4, "raw_shape": (X, Y, Z)}``,
        and ``"noisy_label"`` (uint8 index map, oriented like ``label``) when ``noisy_label`` is given.

    Raises:
        InputError: naming the file, for every check listed in the module docstring.
    """
    if ds.image_2d:
        return _read_2d_case(ds, case, noisy_label)
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
    index_map = _label_indices(label, case.label, ds.labels)
    noisy = None if noisy_label is None else _read_label_3d(noisy_label, label.shape, label_affine, case.label,
                                                            ds.labels)
    stack = np.stack([np.asarray(c, dtype=np.float32) for c in channels], axis=-1)
    for c in range(stack.shape[-1]):
        if not np.all(np.isfinite(stack[..., c])):
            raise InputError(case.images[min(c, len(case.images) - 1)], "holds NaN or infinite intensities")
    oriented, geo = orient_case(stack, label_affine, slice_axis)

    def orient_label(index: np.ndarray) -> np.ndarray:
        return index if slice_axis is None else _orient(index, label_affine, slice_axis)[0]

    item = {"channels": [oriented[..., c] for c in range(oriented.shape[-1])], "label": orient_label(index_map),
            "geometry": geo, "raw_affine": label_affine, "raw_shape": tuple(int(s) for s in label.shape)}
    if noisy is not None:
        item["noisy_label"] = orient_label(noisy)
    return item


def _read_2d_case(ds: MsdDataset, case: MsdCase, noisy_label: Path | None) -> dict:
    """:func:`read_msd_case` of a 2-D natural-image case: the image's own grid, no reorientation."""
    n_ch = len(ds.channel_names)
    first = case.images[0]
    parts = [load_natural_image(p, n_ch if len(case.images) == 1 else None) for p in case.images]
    shape, affine = parts[0][0].shape[:3], parts[0][1]
    for path, (data, _) in zip(case.images[1:], parts[1:]):
        if data.shape[:3] != shape:
            raise InputError(path, f"size {list(data.shape[:2])} differs from size {list(shape[:2])} of {first.name}")
    found = sum(data.shape[3] for data, _ in parts)
    if found != n_ch:
        what = f"{found} channel(s)" if len(parts) > 1 else f"{found} channel(s) ({_channel_kind(found)})"
        hint = ""
        if n_ch == 3 and found == 1:
            hint = "; an RGB image is one file CASE_0000" + ds.file_ending
        elif found == 3:
            hint = "; declare 3 channel_names (e.g. R, G, B) or give grayscale images"
        raise InputError(first, f"has {what}, but dataset.json declares {n_ch} ({', '.join(ds.channel_names)})"
                                + hint)
    label = _read_label_2d(case.label, shape, first, ds.labels)
    noisy = None if noisy_label is None else _read_label_2d(noisy_label, shape, first, ds.labels)
    stack = np.concatenate([np.asarray(data, dtype=np.float32) for data, _ in parts], axis=3)
    for c in range(stack.shape[-1]):
        if not np.all(np.isfinite(stack[..., c])):
            raise InputError(first, "holds NaN or infinite intensities")
    item = {"channels": [stack[..., c] for c in range(stack.shape[-1])], "label": label,
            "geometry": geometry_from_affine(affine, shape), "raw_affine": affine,
            "raw_shape": tuple(int(s) for s in shape)}
    if noisy is not None:
        item["noisy_label"] = noisy
    return item


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


def to_prepared_grid(channels, geo: Geometry, spacing, *, label: np.ndarray | None = None,
                     intensity: list[dict] | None = None):
    """Step 3 of the module docstring: oriented ``(x, y, z)`` channel arrays (and label map) on ``geo`` ->
    the prepared grid at the target ``spacing`` with the manifest's per-channel ``intensity`` records
    (:func:`medl2b.data.grid.prepare_volume`): ``(images, mask or None, geometry, intensity)``."""
    images = [image_from_xyz(c, geo) for c in channels]
    mask = None if label is None else image_from_xyz(label.astype(np.uint8), geo)
    return prepare_volume(images, mask, spacing, intensity)


#: File endings of the raw images :func:`read_image` reads (NIfTI with nibabel, the rest with SimpleITK).
IMAGE_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


def read_image(paths, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a raw image to predict: one file per channel (nnU-Net ``CASE_0000``, ``CASE_0001``, ...) or one
    file (3-D, or 4-D with the channels last as in MSD v1), in any stored orientation; see :func:`stack_channels`.
    A 2-D natural image (PNG, BMP, TIFF, JPEG) gives its components as channels (:func:`load_natural_image`:
    RGB in one file; alpha dropped)."""
    paths = [Path(p) for p in paths]
    parts = []
    for p in paths:
        if is_natural_image(p.name):
            data, affine = load_natural_image(p, n_channels if len(paths) == 1 else None)
            if len(paths) == 1 and data.shape[3] != n_channels:
                raise InputError(p, f"has {data.shape[3]} channel(s) ({_channel_kind(data.shape[3])}), but "
                                    f"the model takes {n_channels} channel(s)")
            parts.append((data[..., 0] if data.shape[3] == 1 else data, affine, p))
        else:
            parts.append((*load_file(p), p))
    return stack_channels(parts, n_channels)


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
    its cases, with the manifest's own settings (``slice_axis``, ``spacing``, the per-channel intensity records:
    a CT channel gets the dataset's foreground statistics). A manifest without ``spacing`` (prepared before
    target spacings) gets its ``size × size`` grid (:func:`medl2b.data.grid.prepared_geometry`).

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
    if manifest.get("spacing") is not None:
        images, _, target, _ = to_prepared_grid(channels, geo, manifest["spacing"], intensity=norm.get("channels"))
    else:
        images, _, target, _ = to_prepared_grid(channels, geo, prepared_geometry(geo, int(manifest["size"])))
    return {"image": np.stack(images), "prepared": target, "oriented": geo,
            "raw": geometry_from_affine(affine, stack.shape[:3])}


# --------------------------------------------------------------------------- main

def _plan(ds: MsdDataset, loaded: dict, split_of: dict, *, spacing, size: int | None, seed: int
          ) -> tuple[dict, list[dict]]:
    """The dataset's grid ``{"spacing", "source"}`` (:func:`medl2b.data.grid.target_spacing` over the training
    cases, the cap over every case) and its per-channel intensity records (CT: foreground samples of the
    training cases' labels, :func:`medl2b.data.grid.intensity_plan`)."""
    training = [c for c in loaded if split_of[c] in ("train", "meta")] or list(loaded)
    extents = [np.asarray(v["geometry"].size) * np.asarray(v["geometry"].spacing) for v in loaded.values()]
    target, source = target_spacing([loaded[c]["geometry"].spacing for c in training], extents, spacing=spacing,
                                    size=size)
    rng = np.random.default_rng([seed, 39])
    ct = [c for c, name in enumerate(ds.channel_names) if name.strip().lower() in CT_CHANNELS]
    foreground = {c: [foreground_sample(loaded[case]["channels"][c], loaded[case]["label"], rng) for case in training]
                  for c in ct}
    try:
        plan = intensity_plan(ds.channel_names, foreground)
    except ValueError as exc:
        raise InputError(ds.root / "dataset.json", str(exc)) from None
    return {"spacing": target, "source": source}, plan


def _copy_raw_label(case: MsdCase, folder: Path, ending: str) -> str:
    """Copy the case's raw label file (its own grid and values: the reference of native-resolution
    evaluation) into ``folder``; its path relative to the prepared folder."""
    suffix = case.label.name[len(case.case_id):] if case.label.name.startswith(case.case_id) else ending
    target = folder / f"{case.case_id}{suffix}"
    shutil.copyfile(case.label, target)
    return f"{folder.name}/{target.name}"


def check_prepare_args(*, size: int | None, noise_dice: float, noisy_fraction: float, meta_cases: int,
                       test_cases: int, seed: int, slice_axis: str | None, min_size: int = MIN_SIZE,
                       spacing=None) -> None:
    """The argument checks of :func:`prepare_msd`, for callers that want them before slow work of their own."""
    if spacing is not None:
        values = list(spacing)
        if len(values) not in (2, 3) or not all(np.isfinite(float(v)) and float(v) > 0 for v in values):
            raise InputError("--spacing", f"must be 2 (in-plane) or 3 positive sizes in mm, got {values}")
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
                noise_dice: float = 0.6, meta_cases: int | None = None, test_cases: int | None = None,
                split_file: str | os.PathLike | None = None, seed: int = 0, slice_axis: str | None = "axial",
                noisy_fraction: float = 1.0, overwrite: bool = False, progress: bool = True,
                splits: tuple[dict[str, list[str]], str] | None = None,
                noise_config: MaskNoiseConfig = MSD_NOISE_CONFIG, min_size: int = MIN_SIZE,
                geometry: dict[str, Geometry] | None = None, extra: dict | None = None,
                noisy_labels: str | os.PathLike | None = None,
                trusted_labels: str | os.PathLike | None = None, spacing=None) -> dict:
    """Convert an MSD v1 or nnU-Net v2 raw dataset into a prepared dataset (see the module docstring).

    Two modes. **Own labels** (``trusted_labels``): ``labelsTr/`` holds the given labels, the only labels
    most cases have; ``trusted_labels`` holds checked labels of a few cases (same file names). The trusted
    cases are the clean meta set (their given labels are read only to measure how far the given labels are
    from the trusted ones), every other case trains on its given label, ``imagesTs/`` + ``labelsTs/`` (when
    present) are the test set, and nothing is synthesised: the manifest says ``"train_truth": false``, so
    nothing downstream compares with a clean label of a train case. **Benchmark** (the default):
    ``labelsTr/`` is the clean truth; noise is synthesised (or read from ``noisy_labels``) on the train
    cases of a seeded (or given) split.

    Args:
        raw: Folder holding ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
        out: Prepared dataset folder; written atomically (nothing half-written stays).
        size: Cap on the in-plane extent of the prepared slices in pixels: when the largest case at the
            target spacing would exceed it, the in-plane target spacing is coarsened (one spacing for every
            case, aspect ratios kept); ``None`` = no cap.
        spacing: Target spacing in mm, ``(sx, sy, sz)`` or in-plane ``(sx, sy)``; ``None`` = the median
            spacing of the training cases (train and meta splits) per axis (:func:`medl2b.data.grid.target_spacing`).
        noise_dice: Target mean (over train cases) of the mean over foreground classes of the
            per-case 3-D Dice of noisy vs clean; ``>= 1`` = no noise.
        meta_cases: Clean meta cases of a seeded split (default 3; benchmark mode only).
        test_cases: Held-out evaluation cases of a seeded split (default 10). With ``trusted_labels``: 0 = no
            test set; None = the labelled cases of ``imagesTs/`` + ``labelsTs/``.
        split_file: JSON ``{"train", "meta", "test"[, "unused"]}`` to use instead.
        seed: Seed of the split draw and of the noise.
        slice_axis: ``axial``, ``coronal`` or ``sagittal``: the anatomical axis 2-D slices are cut along;
            ``None``: no reorientation, slices along the third stored axis. Ignored (``None``) for 2-D
            image datasets.
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
        noisy_labels: A folder of given noisy training labels (the same file names as ``labelsTr``, e.g.
            a second observer's) to use instead of synthesised noise; every train case needs one.
            ``noise_dice`` is then not used and ``noisy_fraction`` must be 1.
        trusted_labels: A folder of trusted labels of some cases: the own-labels mode above.

    Returns:
        The manifest, as written to ``out/dataset.json``.
    """
    own = trusted_labels is not None
    if own and (noisy_labels is not None or split_file is not None or splits is not None or noisy_fraction != 1.0
                or meta_cases is not None or (test_cases or 0) > 0):
        raise InputError("--trusted-labels", "takes the split from your labels (trusted cases = meta set, imagesTs/ + "
                                             "labelsTs/ = test set); it does not combine with --noisy-labels, "
                                             "--split-file, --noisy-fraction, --meta-cases or --test-cases N > 0")
    meta_cases = 3 if meta_cases is None else meta_cases
    if test_cases is None and not own:
        test_cases = 10
    check_prepare_args(size=size, noise_dice=noise_dice, noisy_fraction=noisy_fraction, meta_cases=meta_cases,
                       test_cases=test_cases or 0, seed=seed, slice_axis=slice_axis, min_size=min_size,
                       spacing=spacing)
    if geometry is not None and slice_axis is not None:
        raise ValueError("geometry is the stored one: it needs slice_axis=None")
    ds = find_msd_dataset(raw)
    if ds.image_2d:
        slice_axis = None  # a 2-D image has one slice: nothing to reorient
    given_dir = None
    if noisy_labels is not None:
        given_dir = Path(noisy_labels)
        if not given_dir.is_dir():
            raise InputError(given_dir, "folder of given noisy labels not found")
        if noisy_fraction != 1.0:
            raise InputError("--noisy-fraction", "does not apply to given --noisy-labels (every train case has its "
                                                 "given label)")
    trusted, given_of = None, {}
    if own:  # labelsTr holds the given labels; the trusted ones replace them as the labels of their cases
        trusted = find_trusted_labels(ds, trusted_labels)
        test = [] if test_cases == 0 else find_test_cases(ds)
        train_ids = {c.case_id for c in ds.cases}
        for c in test:
            if c.case_id in train_ids:
                raise InputError(c.label, f"test case {c.case_id} is also a training case (labelsTr/)")
        given_of = {c.case_id: c.label for c in ds.cases if c.case_id in trusted}
        ds.cases = [dataclasses.replace(c, label=trusted[c.case_id]) if c.case_id in trusted else c
                    for c in ds.cases] + test
        if len(trusted) == len(train_ids):
            raise InputError(trusted_labels, f"trusts every case of {ds.root.name}: no case is left to train on "
                                             "its given label; train with --method ce on a benchmark preparation")
        splits = trusted_split(sorted(train_ids), sorted(trusted), [c.case_id for c in test])
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
        given: dict[str, np.ndarray] | None = None if given_dir is None else {}
        with progress_bar(progress, 2 * len(used) + 1, ds.name) as advance:
            loaded = {}
            for case in used:  # read and check everything before the (slower) resampling
                noisy_path = None
                if given_dir is not None and split_of[case.case_id] == "train":
                    noisy_path = given_dir / case.label.name
                    if not noisy_path.is_file():
                        raise InputError(noisy_path, f"given noisy label of train case {case.case_id} not found")
                noisy_path = given_of.get(case.case_id, noisy_path)  # a trusted case's given label
                loaded[case.case_id] = read_msd_case(ds, case, slice_axis=slice_axis, noisy_label=noisy_path)
                if geometry is not None:
                    loaded[case.case_id]["geometry"] = _given_geometry(geometry[case.case_id], loaded[case.case_id],
                                                                       case)
                advance(f"{ds.name} reading {case.case_id}")
            _check_not_empty(ds, {c: v["label"] for c, v in loaded.items()}, split_of, trusted_labels)
            grid, plan = _plan(ds, loaded, split_of, spacing=spacing, size=size, seed=seed)
            (tmp / "labelsRaw").mkdir()
            for case in used:
                item = loaded.pop(case.case_id)
                geo = item["geometry"]
                images, mask_xyz, target, intensity = to_prepared_grid(item["channels"], geo, grid["spacing"],
                                                                       label=item["label"], intensity=plan)
                kw = {"spacing": target.spacing, "origin": target.origin, "direction": target.direction}
                names = []
                for c, img in enumerate(images):
                    names.append(f"imagesTr/{case.case_id}_{c:04d}.nii.gz")
                    write_nifti(img, tmp / names[-1], **kw)
                given_only = own and split_of[case.case_id] == "train"  # no clean label exists for it
                label_rel = f"{'labelsNoisy' if given_only else 'labelsTr'}/{case.case_id}.nii.gz"
                write_nifti(mask_xyz, tmp / label_rel, **kw)
                raw_geo = geometry_from_affine(item["raw_affine"], item["raw_shape"])
                original = {**raw_geo.to_dict(), "affine": np.asarray(item["raw_affine"]).tolist()}
                entries[case.case_id] = {
                    "image": names[0], "images": names, "label": None if given_only else label_rel,
                    "noisy_label": label_rel if given_only else None, "split": split_of[case.case_id],
                    "original": original,
                    "oriented": geo.to_dict(), "prepared": target.to_dict(), "noise_dice": None,
                    "noise_dice_per_class": None, "intensity": intensity,
                    "raw_label": _copy_raw_label(case, tmp / "labelsRaw", ds.file_ending),
                    "source": {"images": [p.relative_to(ds.root).as_posix() for p in case.images],
                               "label": _relative(case.label, ds.root)},
                }
                if split_of[case.case_id] == "train" and not own:
                    train_masks[case.case_id] = (mask_xyz, target.spacing)
                if "noisy_label" in item:
                    noisy_xyz = to_xyz(resample(image_from_xyz(item["noisy_label"].astype(np.uint8), geo),
                                                target, linear=False)).astype(np.uint8)
                    if own:  # a trusted case's given label, kept only to measure given against trusted
                        dices = per_class_dice(noisy_xyz, mask_xyz, classes)
                        entries[case.case_id]["given_vs_trusted_dice"] = round(float(np.mean(dices)), 6)
                        entries[case.case_id]["given_vs_trusted_dice_per_class"] = {
                            n: round(d, 6) for n, d in zip(class_names, dices)}
                        entries[case.case_id]["source"]["given_label"] = _relative(given_of[case.case_id], ds.root)
                    else:
                        given[case.case_id] = noisy_xyz
                        entries[case.case_id]["source"]["noisy_label"] = _relative(given_dir / case.label.name,
                                                                                   ds.root)
                advance(f"{ds.name} {case.case_id}")

            advance(f"{ds.name} noise calibration" if given is None else f"{ds.name} given noisy labels")
            if own:
                noise = _own_labels_record(entries, splits, class_names, _relative(trusted_labels, ds.root), seed)
            else:
                noise = _noise(tmp, entries, train_masks, noise_dice, seed, classes, class_names, noisy_fraction,
                               noise_config, given=given,
                               given_source=None if given_dir is None else _relative(given_dir, ds.root))

        manifest = {
            "name": ds.name, "task": "segmentation", "format_version": 1, "source_layout": ds.layout,
            "channel_names": {str(i): n for i, n in enumerate(ds.channel_names)},
            "labels": {name: i for i, name in enumerate(ds.labels.values())},
            "label_values": {str(i): int(v) for i, v in enumerate(ds.labels)},
            "file_ending": ".nii.gz", "source_file_ending": ds.file_ending, "image_2d": ds.image_2d,
            "size": None if size is None else int(size), "spacing": list(grid["spacing"]),
            "spacing_source": grid["source"], "slice_axis": slice_axis, "seed": int(seed),
            "orientation": ("2-D images as stored (x = columns, y = rows), no reorientation" if ds.image_2d
                            else "as stored (no reorientation)" if slice_axis is None
                            else "closest RAS+, slice axis last (see medl2b.data.msd)"),
            "splits": splits, "split_source": split_source,
            "intensity_normalisation": {"method": "CT channels: clip to the training cases' foreground "
                                                  "percentiles, z-score with their foreground mean/std; other "
                                                  "channels per case: clip to percentiles, then z-score",
                                        "percentiles": list(PERCENTILES), "channels": plan},
            "licence": ds.licence, "reference": ds.reference,
            "cases": entries, "noise": noise,
        }
        if own:  # nothing downstream may read a clean label of a train case: there is none
            manifest["train_truth"] = False
        extra = dict(extra or {})
        for case_id, keys in extra.pop("cases", {}).items():
            if case_id in entries:
                entries[case_id].update(keys)
        manifest.update(extra)
        for case_id, entry in entries.items():  # uncompressed copies, read lazily in training (medl2b.data.store)
            write_case_arrays(tmp, case_id, entry)
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _check_not_empty(ds: MsdDataset, labels: dict[str, np.ndarray], split_of: dict[str, str],
                     trusted_labels) -> None:
    """A dataset whose training labels (or trusted labels) are all background has nothing to learn: one
    :class:`InputError` naming the label folder (the dataset)."""
    train = [c for c in labels if split_of[c] == "train"]
    if train and not any(labels[c].any() for c in train):
        raise InputError(ds.root / "labelsTr", f"every training label map of {ds.name} is empty (background only, "
                                               f"{len(train)} cases): nothing to learn from; check the label files "
                                               "and the 'labels' of dataset.json")
    meta = [c for c in labels if split_of[c] == "meta"]
    if trusted_labels is not None and meta and not any(labels[c].any() for c in meta):
        raise InputError(trusted_labels, f"every trusted label map is empty (background only, {len(meta)} cases): "
                                         "the meta set would teach only background")


def _own_labels_record(entries: dict, splits: dict, class_names: list[str], trusted_source: str, seed: int) -> dict:
    """The manifest's ``noise`` record of the own-labels mode: nothing synthesised, no clean label of a train
    case; on the trusted cases, the agreement of their given label with the trusted one (the one measure of
    the given labels' quality there is)."""
    meta = [c for c in splits["meta"] if entries[c].get("given_vs_trusted_dice") is not None]
    per_case = {c: entries[c]["given_vs_trusted_dice"] for c in meta}
    per_class = {n: round(float(np.mean([entries[c]["given_vs_trusted_dice_per_class"][n] for c in meta])), 6)
                 for n in class_names} if meta else {}
    return {"given": True, "source": "labelsTr", "trusted": trusted_source, "target_dice": None,
            "achieved_mean_dice": None, "noisy_fraction": None, "noisy_cases": None,
            "given_vs_trusted_mean_dice": round(float(np.mean(list(per_case.values()))), 6) if per_case else None,
            "given_vs_trusted_per_class_dice": per_class, "given_vs_trusted_per_case_dice": per_case,
            "params": {"given": "the train cases' labels of labelsTr/, as given: no clean label exists for them, and "
                                "nothing is synthesised",
                       "trusted": f"the labels of {trusted_source}: the clean meta (and validation) cases"},
            "seed": int(seed)}


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (POSIX form), else absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def _given_geometry(geo: Geometry, item: dict, case: MsdCase) -> Geometry:
    """A caller's full-precision geometry of a case, checked against the one read from its file."""
    affine = affine_from_geometry(geo.spacing, geo.origin, geo.direction)
    if tuple(geo.size) != tuple(item["geometry"].size) or not np.allclose(affine, item["raw_affine"],
                                                                          atol=AFFINE_TOL, rtol=0):
        raise ValueError(f"the geometry given for {case.case_id} is not that of {case.label}")
    return geo


def _noise(tmp: Path, entries: dict, train_masks: dict, noise_dice: float, seed: int, classes: list[int],
           class_names: list[str], noisy_fraction: float = 1.0, config: MaskNoiseConfig = MSD_NOISE_CONFIG, *,
           given: dict[str, np.ndarray] | None = None, given_source: str | None = None) -> dict:
    """Calibrate, write the noisy train label maps, and return the manifest's ``noise`` record.

    ``given``: train case -> its given noisy label map on the prepared grid, used instead of synthesised noise.
    """
    names = sorted(train_masks)
    pairs = [train_masks[n] for n in names]
    corrupt = set(names) if given is not None else pick_noisy_cases(names, noisy_fraction, seed)
    chosen = [train_masks[n] for n in names if n in corrupt]
    strength = 0.0
    noisy_of = {}
    if given is not None:
        noisy_of = {n: given[n] for n in names}
    elif chosen and noise_dice < 1:
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
    if given is not None:
        differ = sorted(n for n, (m, _) in zip(names, pairs) if not np.array_equal(noisy_of[n], m))
        return {"given": True, "source": given_source, "target_dice": None, "achieved_mean_dice": round(mean, 6),
                "noisy_fraction": 1.0, "noisy_cases": differ, "achieved_per_class_dice": per_class_mean,
                "per_case_dice": per_case, "per_case_class_dice": per_case_class,
                "params": {"given": f"the train cases' labels of {given_source} (same file names as labelsTr), "
                                    "checked and resampled (nearest neighbour) as labelsTr; no synthesised noise",
                           "noisy_cases": "train cases whose given label differs from the clean one anywhere"},
                "seed": int(seed)}
    return {"target_dice": float(noise_dice), "achieved_mean_dice": round(mean, 6),
            "noisy_fraction": float(noisy_fraction), "noisy_cases": sorted(corrupt),
            "achieved_per_class_dice": per_class_mean, "per_case_dice": per_case,
            "per_case_class_dice": per_case_class,
            "params": {"strength": float(strength), **config.to_dict(),
                       "classes": "each foreground class corrupted on its own; contested voxels go to the class "
                                  "with the highest per-slice priority",
                       "streams": "numpy.random.default_rng([seed, i]) for the i-th train case in sorted order"},
            "seed": int(seed)}


# --------------------------------------------------------------------------- writing label maps

def write_mask(mask: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a label map ``(x, y, z)`` with its 4x4 RAS affine, atomically; the format follows the ending
    (NIfTI through nibabel, the rest through SimpleITK, compressed). A 2-D image format (PNG, BMP, TIFF) takes
    a one-slice map ``(x, y, 1)`` as a uint8 image of width x and height y."""
    path = Path(path)
    if path.name.endswith((".nii.gz", ".nii")):
        return write_nifti(mask, path, affine=affine)
    if is_natural_image(path.name):
        return _write_mask_2d(np.asarray(mask), affine, path)
    img = image_from_xyz(np.asarray(mask), geometry_from_affine(affine, mask.shape))
    with atomic_file(path) as tmp:
        sitk.WriteImage(img, str(tmp), True)
    return path


def _write_mask_2d(mask: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2:
        raise InputError(path, f"a {path.suffix} file holds one 2-D label map; this one has shape {list(mask.shape)}: "
                               "choose --format nii.gz")
    if mask.min(initial=0) < 0 or mask.max(initial=0) > 255:
        raise InputError(path, "label values outside 0..255 do not fit an 8-bit image")
    img = sitk.GetImageFromArray(np.ascontiguousarray(mask.T.astype(np.uint8)))  # (rows = y, columns = x)
    geo = geometry_from_affine(affine, (*mask.shape, 1))
    img.SetSpacing([float(v) for v in geo.spacing[:2]])
    with atomic_file(path) as tmp:
        sitk.WriteImage(img, str(tmp))
    return path
