"""The torch side of the prepared datasets: manifests, in-memory slice sets, Dataset classes.

Segmentation (PROMISE12, MSD, nnU-Net v2): :func:`load_slices` reads the NIfTI volumes of some cases
into one :class:`SliceSet` of 2-D axial slices (``volume[:, :, z]``), and
:class:`SegSliceDataset` serves them plain, or as random patches (3-D training on volumes
larger than the window); segmentation augmentation happens on whole batches on the device
(:class:`medl2b.data.augment.BatchAugment`). Classification (ISIC 2019): :func:`load_isic`
memory-maps ``images.npy`` for one split (:class:`ImageSet`) and :class:`IsicDataset` serves
it plain; classification augmentation also happens on whole batches on the device
(:class:`medl2b.data.augment.SquareAugment`).

Each item carries both the training label (noisy for train cases/images when
``label="noisy"``) and the clean one, plus ``index``, the item's position in the
dataset, so a trainer can keep per-sample state.

Randomness of the random patches: MONAI's random transforms keep
their own ``numpy.random.RandomState`` that neither ``torch.manual_seed`` nor
``monai.utils.set_determinism`` touches. So each ``__getitem__`` draws one integer
from torch's global generator (``torch.randint``) and re-seeds the transform chain
with it (``Compose.set_random_state``). Hence ``torch.manual_seed(s)`` alone makes
the draws reproducible with ``num_workers=0``; with workers, torch seeds each
worker from the loader's base seed (``base_seed + worker_id``), which again follows
``torch.manual_seed`` in the main process, so no ``worker_init_fn`` is needed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, RandCropByPosNegLabeld
from torch.utils.data import Dataset

from medl2b.data.nifti import read_nifti
from medl2b.errors import InputError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageSet",
    "IsicDataset",
    "SegSliceDataset",
    "SliceSet",
    "load_volumes",
    "volume_shape",
    "train_window",
    "case_image_paths",
    "load_isic",
    "load_manifest",
    "load_slices",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SPLITS = ("train", "meta", "test")
_SEG_TASKS = ("segmentation", "prostate-seg")


def load_manifest(prepared_dir: str | os.PathLike, *, task: str | None = None) -> dict:
    """Read ``prepared_dir/dataset.json``.

    Args:
        prepared_dir: A folder written by ``medl2b prepare``.
        task: If given, the manifest's ``task`` must equal it (``"prostate-seg"`` or
            ``"skin-lesion-cls"``); ``"segmentation"`` accepts any segmentation dataset.

    Raises:
        InputError: the folder or ``dataset.json`` is missing, unreadable, of an unknown
            format version, or of another task.
    """
    path = Path(prepared_dir) / "dataset.json"
    if not Path(prepared_dir).is_dir():
        raise InputError(prepared_dir, "folder not found")
    if not path.is_file():
        raise InputError(path, "missing: not a prepared dataset (run `medl2b prepare ...` first)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != 1:
        raise InputError(path, "unknown format (expected format_version 1)")
    found = manifest.get("task")
    if task == "segmentation":  # the general segmentation task reads any segmentation dataset
        if found not in _SEG_TASKS:
            raise InputError(path, f"holds task {found!r}, not a segmentation dataset")
    elif task is not None and found != task:
        hint = "; train it with --task segmentation" if found == "segmentation" else ""
        raise InputError(path, f"holds task {found!r}, expected {task!r}{hint}")
    return manifest


def case_image_paths(entry: dict) -> list[str]:
    """The channel files of one manifest case entry (``images``, or the single ``image``)."""
    return list(entry.get("images") or [entry["image"]])


def _check_label(label: str) -> None:
    if label not in ("noisy", "clean"):
        raise ValueError(f"label must be 'noisy' or 'clean', got {label!r}")


# --------------------------------------------------------------------------- segmentation

@dataclass
class SliceSet:
    """2-D axial slices of some cases, in memory.

    Attributes:
        image: float32 (N, C, H, W); C input channels, H, W the prepared in-plane x, y.
        label: int64 (N, H, W) class indices; the noisy map for train cases when loaded
            with ``label="noisy"``, the clean one otherwise.
        clean: int64 (N, H, W); the clean map.
        case: Case id of each slice, length N.
        slice_index: Axial index z of each slice in its volume, length N.
        trusted: bool (N,); True for clean meta cases trained on (``l2b+clean``): their given label
            is known to be right and keeps its full weight. Default all False.
    """

    image: torch.Tensor
    label: torch.Tensor
    clean: torch.Tensor
    case: list[str] = field(default_factory=list)
    slice_index: list[int] = field(default_factory=list)
    trusted: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.trusted is None:
            self.trusted = torch.zeros(len(self), dtype=torch.bool)

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def as_trusted(self) -> "SliceSet":
        """The same slices, every one marked trusted."""
        return dataclasses.replace(self, trusted=torch.ones(len(self), dtype=torch.bool))

    def concat(self, other: "SliceSet") -> "SliceSet":
        """This set's slices followed by ``other``'s (same image size and channels)."""
        if len(other) == 0:
            return self
        if len(self) == 0:
            return other
        return SliceSet(torch.cat([self.image, other.image]), torch.cat([self.label, other.label]),
                        torch.cat([self.clean, other.clean]), self.case + other.case,
                        self.slice_index + other.slice_index, torch.cat([self.trusted, other.trusted]))


def load_slices(prepared_dir: str | os.PathLike, cases: str | Sequence[str], *, label: str = "noisy") -> SliceSet:
    """Load every 2-D slice of some cases of a prepared segmentation dataset (any channels, classes).

    Args:
        prepared_dir: Prepared segmentation folder (``prepare promise12`` or ``prepare msd``).
        cases: Case ids, or a split name (``"train"``, ``"meta"``, ``"test"``).
        label: ``"noisy"``: train cases get their noisy masks as ``label`` (meta and
            test cases have none and always get the clean mask); ``"clean"``: clean
            masks everywhere.

    Returns:
        A :class:`SliceSet`; slices in case order, then z order.
    """
    _check_label(label)
    root = Path(prepared_dir)
    manifest = load_manifest(root, task="segmentation")
    if isinstance(cases, str):
        if cases not in _SPLITS:
            raise ValueError(f"cases must be a split name {_SPLITS} or a list of case ids, got {cases!r}")
        cases = manifest["splits"][cases]
    images, labels, cleans, case_ids, z_ids = [], [], [], [], []
    for case in cases:
        entry = manifest["cases"].get(case)
        if entry is None:
            raise InputError(root / "dataset.json", f"has no case {case!r}")
        channels = [read_nifti(root / rel, dtype=np.float32)[0] for rel in case_image_paths(entry)]
        if any(c.shape != channels[0].shape for c in channels):
            raise InputError(root / case_image_paths(entry)[0], "channels of one case differ in shape")
        img = np.stack(channels, axis=-1)  # (X, Y, Z, C)
        clean, _ = read_nifti(root / entry["label"], dtype=np.int64)
        noisy_rel = entry.get("noisy_label")
        lab = read_nifti(root / noisy_rel, dtype=np.int64)[0] if (label == "noisy" and noisy_rel) else clean
        if img.shape[:3] != clean.shape or lab.shape != clean.shape:
            raise InputError(root / entry["label"], f"shape {clean.shape} differs from its image {img.shape[:3]}")
        # (X, Y, Z, C) -> (Z, C, X, Y): slice z is volume[:, :, z]
        images.append(np.transpose(img, (2, 3, 0, 1)))
        cleans.append(np.moveaxis(clean, 2, 0))
        labels.append(np.moveaxis(lab, 2, 0))
        case_ids += [case] * img.shape[2]
        z_ids += list(range(img.shape[2]))
    if not images:
        empty = torch.zeros((0, 1, 0, 0))
        return SliceSet(empty, torch.zeros((0, 0, 0), dtype=torch.long), torch.zeros((0, 0, 0), dtype=torch.long))
    return SliceSet(image=torch.from_numpy(np.ascontiguousarray(np.concatenate(images))),
                    label=torch.from_numpy(np.ascontiguousarray(np.concatenate(labels))),
                    clean=torch.from_numpy(np.ascontiguousarray(np.concatenate(cleans))),
                    case=case_ids, slice_index=z_ids)


def volume_shape(prepared_dir: str | os.PathLike, multiple: int = 16) -> tuple[int, int, int]:
    """The common padded shape ``(X, Y, Z)`` of a prepared dataset's volumes for 3-D training: the
    largest extent of any case on each axis, rounded up to ``multiple`` (UNet++ halves four times)."""
    manifest = load_manifest(prepared_dir, task="segmentation")
    sizes = np.array([e["prepared"]["size"] for e in manifest["cases"].values()], dtype=np.int64)
    return tuple(int(-(-int(v) // multiple) * multiple) for v in sizes.max(0))


def train_window(prepared_dir: str | os.PathLike, patch_size: Sequence[int] = (96, 96, 96)) -> tuple[int, int, int]:
    """The 3-D training window ``(X, Y, Z)``: :func:`volume_shape` capped on each axis at ``patch_size``
    (multiples of 16). Equal to :func:`volume_shape` when the volumes fit: they are trained whole; otherwise
    training takes random patches of this size, and inference slides windows of it."""
    return tuple(min(v, int(p)) for v, p in zip(volume_shape(prepared_dir), patch_size))


def load_volumes(prepared_dir: str | os.PathLike, cases: str | Sequence[str], *, label: str = "noisy",
                 shape: Sequence[int] | None = None) -> SliceSet:
    """Whole volumes of some cases for 3-D training, zero-padded at the far end of each axis to
    ``shape`` (default :func:`volume_shape`): a :class:`SliceSet` whose items are volumes,
    ``image`` (N, C, X, Y, Z), ``label``/``clean`` (N, X, Y, Z); ``slice_index`` is -1."""
    slices = load_slices(prepared_dir, cases, label=label)
    shape = tuple(shape) if shape is not None else volume_shape(prepared_dir)
    images, labels, cleans, case_ids = [], [], [], []
    for case in dict.fromkeys(slices.case):
        rows = [i for i, c in enumerate(slices.case) if c == case]
        vol = slices.image[rows].permute(1, 2, 3, 0)                     # (Z, C, X, Y) -> (C, X, Y, Z)
        extent = vol.shape[1:]
        if any(e > t for e, t in zip(extent, shape)):
            raise InputError(Path(prepared_dir) / "dataset.json", f"case {case} of shape {tuple(extent)} does not "
                                                                  f"fit the 3-D training shape {shape}")
        pad = [p for e, t in zip(reversed(extent), reversed(shape)) for p in (0, t - e)]
        images.append(F.pad(vol, pad))
        labels.append(F.pad(slices.label[rows].permute(1, 2, 0), pad))
        cleans.append(F.pad(slices.clean[rows].permute(1, 2, 0), pad))
        case_ids.append(case)
    if not images:
        return SliceSet(torch.zeros((0, 1, *shape)), torch.zeros((0, *shape), dtype=torch.long),
                        torch.zeros((0, *shape), dtype=torch.long))
    return SliceSet(torch.stack(images).contiguous(), torch.stack(labels).contiguous(),
                    torch.stack(cleans).contiguous(), case=case_ids, slice_index=[-1] * len(case_ids))


def _plain(x) -> torch.Tensor:
    """A plain ``torch.Tensor`` (MONAI returns ``MetaTensor``, which collates slowly)."""
    return torch.as_tensor(x).as_subclass(torch.Tensor)


class _Augmented(Dataset):
    """Holds an optional MONAI Compose re-seeded from torch's RNG on every item."""

    def __init__(self, transform) -> None:
        self._transform = transform

    def _apply(self, data: dict) -> dict:
        if self._transform is None:
            return data
        self._transform.set_random_state(seed=int(torch.randint(0, 2**31 - 1, (1,)).item()))
        out = self._transform(data)
        return out[0] if isinstance(out, list) else out  # a random crop returns a list of one sample


class SegSliceDataset(_Augmented):
    """2-D slices (or 3-D volumes) as a torch Dataset, served plain or as random patches.

    Items: ``{"image": float32 (1, H, W), "label": int64 (H, W), "clean": int64 (H, W),
    "index": int}`` (3-D volumes: ``(1, X, Y, Z)`` and ``(X, Y, Z)``). With ``crop``:
    a random patch of that spatial size, centred with probability ``crop_fg`` on a foreground
    voxel of the given label (MONAI ``RandCropByPosNegLabeld``; a sample without foreground gets a
    random patch), the same patch of image, label and clean label. See the module docstring for
    what seeds the randomness. Items are never augmented here: training augments whole batches
    on the device with :class:`medl2b.data.augment.BatchAugment`.

    Args:
        slices: A :class:`SliceSet`.
        crop: Patch size, or None for whole items.
        crop_fg: Share of patches centred on foreground.
    """

    def __init__(self, slices: SliceSet, *, crop: Sequence[int] | None = None,
                 crop_fg: float = 0.33) -> None:
        if not isinstance(slices, SliceSet):
            raise TypeError(f"slices must be a SliceSet, got {type(slices).__name__}")
        crop_step = None
        if crop is not None:
            crop_step = RandCropByPosNegLabeld(("image", "label", "clean"), label_key="label",
                                               spatial_size=tuple(int(c) for c in crop), pos=crop_fg,
                                               neg=1.0 - crop_fg, num_samples=1, allow_smaller=False)
        super().__init__(Compose([crop_step]) if crop_step is not None else None)
        self.slices = slices

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> dict:
        s = self.slices
        data = {"image": s.image[index], "label": s.label[index][None].float(), "clean": s.clean[index][None].float()}
        data = self._apply(data)
        return {"image": _plain(data["image"]).float().contiguous(),
                "label": _plain(data["label"])[0].round().long(),
                "clean": _plain(data["clean"])[0].round().long(),
                "trusted": bool(s.trusted[index]), "index": int(index)}


# --------------------------------------------------------------------------- classification

@dataclass
class ImageSet:
    """One split of a prepared ISIC 2019 dataset.

    Attributes:
        images: uint8 memory map of the whole store, (N_all, S, S, 3).
        index: int64 (N,), rows of ``images`` in this split.
        label: int64 (N,), noisy labels for the train split with ``label="noisy"``, else clean.
        clean: int64 (N,), clean labels.
        classes: Class names, label ``k`` is ``classes[k]``.
        trusted: bool (N,); True for clean meta images trained on (``l2b+clean``). Default all False.
    """

    images: np.ndarray
    index: np.ndarray
    label: np.ndarray
    clean: np.ndarray
    classes: list[str] = field(default_factory=list)
    trusted: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.trusted is None:
            self.trusted = np.zeros(len(self), dtype=bool)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def as_trusted(self) -> "ImageSet":
        """The same images, every one marked trusted."""
        return dataclasses.replace(self, trusted=np.ones(len(self), dtype=bool))

    def subset(self, mask: np.ndarray) -> "ImageSet":
        """The images where ``mask`` (bool, (N,)) is True, in order."""
        mask = np.asarray(mask, dtype=bool)
        return ImageSet(self.images, self.index[mask], self.label[mask], self.clean[mask], self.classes,
                        self.trusted[mask])

    def concat(self, other: "ImageSet") -> "ImageSet":
        """This split's images followed by ``other``'s (same store)."""
        return ImageSet(self.images, np.concatenate([self.index, other.index]),
                        np.concatenate([self.label, other.label]), np.concatenate([self.clean, other.clean]),
                        self.classes, np.concatenate([self.trusted, other.trusted]))


def load_isic(prepared_dir: str | os.PathLike, split: str, *, label: str = "noisy") -> ImageSet:
    """Memory-map the image store and collect one split's labels.

    Args:
        prepared_dir: Prepared ISIC 2019 folder.
        split: ``"train"``, ``"meta"`` or ``"test"``.
        label: ``"noisy"`` (train gets noisy labels; meta/test are always clean) or ``"clean"``.
    """
    _check_label(label)
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    root = Path(prepared_dir)
    manifest = load_manifest(root, task="skin-lesion-cls")
    store = root / manifest.get("image_store", "images.npy")
    if not store.is_file():
        raise InputError(store, "image store missing")
    try:
        images = np.load(store, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise InputError(store, f"cannot read ({exc})") from None
    if images.ndim != 4 or images.shape[3] != 3 or images.shape[0] != len(manifest["images"]):
        raise InputError(store, f"shape {images.shape} does not match {len(manifest['images'])} images (N, S, S, 3)")
    idx = np.asarray(manifest["splits"][split], dtype=np.int64)
    entries = manifest["images"]
    clean = np.asarray([entries[i]["label"] for i in idx], dtype=np.int64)
    noisy = np.asarray([entries[i]["noisy_label"] for i in idx], dtype=np.int64)
    return ImageSet(images=images, index=idx, label=noisy if (label == "noisy" and split == "train") else clean,
                    clean=clean, classes=list(manifest["classes"]))


class IsicDataset(Dataset):
    """ISIC images as a torch Dataset, served plain.

    Items: ``{"image": float32 (3, S, S) normalised with ImageNet mean/std,
    "label": int64 scalar, "clean": int64 scalar, "index": int}`` where ``index`` is
    the item's position in this dataset (``images.index[index]`` is its row in the
    store). Items are never augmented here: training augments whole batches on the device with
    :class:`medl2b.data.augment.SquareAugment`.

    Args:
        images: An :class:`ImageSet`.
    """

    def __init__(self, images: ImageSet) -> None:
        if not isinstance(images, ImageSet):
            raise TypeError(f"images must be an ImageSet, got {type(images).__name__}")
        self.images = images
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        row = int(self.images.index[index])
        pixels = torch.from_numpy(np.array(self.images.images[row])).permute(2, 0, 1).float().div_(255.0)
        return {"image": ((pixels - self._mean) / self._std).contiguous(),
                "label": torch.tensor(int(self.images.label[index]), dtype=torch.long),
                "clean": torch.tensor(int(self.images.clean[index]), dtype=torch.long),
                "trusted": bool(self.images.trusted[index]), "index": int(index)}
