"""The torch side of the prepared datasets: manifests, lazy slice sets, Dataset classes.

Segmentation (PROMISE12, MSD, nnU-Net v2): :func:`load_slices` lists the 2-D axial slices
(``volume[:, :, z]``) of some cases as a lazy :class:`SliceSet` (:func:`load_volumes`: whole volumes),
read on demand from the prepared dataset's uncompressed arrays through a bounded cache
(:class:`medl2b.data.store.CaseStore`, config ``cache_mb``), so a dataset may be larger than memory.
Every case keeps its own field of view at the dataset's spacing, so items differ in size:
:func:`pad_collate` pads each batch to its own largest item (MONAI ``SpatialPad``, zeros at the far end),
never stretching. :class:`SegSliceDataset` serves items plain, or as random patches (slices or volumes
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
from monai.transforms import Compose, RandCropByPosNegLabeld, SpatialPad, SpatialPadd
from torch.utils.data import Dataset, default_collate

from medl2b.data.store import CaseStore
from medl2b.errors import InputError

__all__ = [
    "TASK_KINDS",
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
    "pad_batch",
    "pad_collate",
    "padded_shape",
]

_SPLITS = ("train", "meta", "test")
#: Every task name a prepared dataset or a run carries, and its kind: the general ``segmentation`` and
#: ``classification``, and the names of the benchmark datasets users know, ``prostate-seg`` (PROMISE12) and
#: ``skin-lesion-cls`` (ISIC 2019). The one table of task names (:mod:`medl2b.config` derives its own from it).
TASK_KINDS = {"segmentation": "segmentation", "prostate-seg": "segmentation",
              "skin-lesion-cls": "classification", "classification": "classification"}


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
    if task in ("segmentation", "classification"):  # a general task reads any dataset of its kind
        if TASK_KINDS.get(found) != task:
            raise InputError(path, f"holds task {found!r}, not a {task} dataset")
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

#: Default bound of a :class:`~medl2b.data.store.CaseStore`'s cache (MiB); config ``cache_mb``.
DEFAULT_CACHE_MB = 2048.0
#: The sides of a padded batch are multiples of this, and at least :data:`MIN_SIDE` (UNet++ halves four times).
PAD_MULTIPLE = 16
MIN_SIDE = 32


def padded_shape(extents, multiple: int = PAD_MULTIPLE, minimum: int = MIN_SIDE) -> tuple[int, ...]:
    """The shape a batch of items of these spatial ``extents`` is padded to: the largest extent on each axis,
    rounded up to ``multiple``, at least ``minimum``."""
    top = np.max(np.asarray(list(extents), dtype=np.int64).reshape(-1, len(next(iter(extents)))), axis=0)
    return tuple(int(max(minimum, -(-int(v) // multiple) * multiple)) for v in top)


def pad_batch(x: torch.Tensor, shape) -> torch.Tensor:
    """A batch ``(B, C, *spatial)`` zero-padded at the far end of each spatial axis to ``shape``."""
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    flat = _pad(x.reshape(-1, *x.shape[2:]), shape, channels=True)
    return flat.reshape(*x.shape[:2], *flat.shape[1:])


def _pad(x: torch.Tensor, shape, *, channels: bool) -> torch.Tensor:
    """``x`` zero-padded at the far end of each spatial axis to ``shape`` (MONAI ``SpatialPad``)."""
    if tuple(x.shape[1 if channels else 0:]) == tuple(shape):
        return x
    out = SpatialPad(tuple(shape), method="end", mode="constant")(x if channels else x[None])
    return _plain(out if channels else out[0])


class SliceSet:
    """2-D axial slices (``slice_index`` z >= 0) or whole 3-D volumes (``slice_index`` -1) of some cases.

    Lazy (``store``): items are read from the prepared dataset's arrays on demand through the store's
    bounded cache (:class:`medl2b.data.store.CaseStore`), so a set may be larger than memory. In memory:
    ``image``, ``label`` and ``clean`` tensors of equal spatial size are given.

    Items differ in size (every case keeps its own field of view at the dataset's spacing): :meth:`sample`
    serves one as it is; :meth:`batch` pads some to a common shape (:func:`padded_shape`, zeros at the far
    end: background for the labels), as the training batches are (:func:`pad_collate`). ``image``,
    ``label`` and ``clean`` are the whole set padded so: a lazy set reads every item once and then holds them
    in memory (small sets; scripts that want the sets as they were before they were lazy).

    Attributes:
        case: Case id of each item.
        slice_index: Axial index z of each slice in its volume; -1 for a whole volume.
        trusted: bool (N,); True for clean meta cases trained on (``l2b``): their given label
            is known to be right and keeps its full weight. Default all False.
        noisy: Per item of a lazy set: its label is the noisy map where the case has one (else the clean one).
    """

    def __init__(self, image: torch.Tensor | None = None, label: torch.Tensor | None = None,
                 clean: torch.Tensor | None = None, case=None, slice_index=None, trusted: torch.Tensor | None = None,
                 *, store: CaseStore | None = None, noisy=True) -> None:
        self.store = store
        self._tensors = None if store is not None else (image, label, clean)
        n = len(case or []) if store is not None else int(image.shape[0])
        self.case = list(case) if case is not None else []
        self.slice_index = list(slice_index) if slice_index is not None else []
        self.trusted = trusted if trusted is not None else torch.zeros(n, dtype=torch.bool)
        self.noisy = [bool(noisy)] * n if isinstance(noisy, bool) else [bool(v) for v in noisy]

    def __len__(self) -> int:
        return int(self.trusted.shape[0])

    def extent(self, i: int) -> tuple[int, ...]:
        """Spatial shape of item ``i`` (``(X, Y)`` of a slice, ``(X, Y, Z)`` of a volume)."""
        if self.store is None:
            return tuple(self._tensors[1].shape[1:])
        shape = self.store.shape(self.case[i])
        return shape if self.slice_index[i] < 0 else shape[:2]

    def sample(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Item ``i`` as it is: ``image`` float32 ``(C, *extent)``, ``label`` and ``clean`` int64 ``extent``."""
        if self.store is None:
            return tuple(t[i] for t in self._tensors)
        image, label, clean = self.store.read(self.case[i], self.slice_index[i], noisy=self.noisy[i])
        return (torch.from_numpy(image).float(), torch.from_numpy(label.astype(np.int64)),
                torch.from_numpy(clean.astype(np.int64)))

    def batch(self, rows, shape=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Items ``rows`` padded to ``shape`` (default :func:`padded_shape` of theirs) and stacked."""
        rows = [int(r) for r in rows]
        if self.store is None and shape is None:
            return tuple(t[rows] for t in self._tensors)
        items = [self.sample(r) for r in rows]
        if not items:
            return self._empty()
        shape = tuple(shape) if shape is not None else padded_shape([tuple(lab.shape) for _, lab, _ in items])
        return (torch.stack([_pad(im, shape, channels=True) for im, _, _ in items]),
                torch.stack([_pad(lab, shape, channels=False) for _, lab, _ in items]),
                torch.stack([_pad(cl, shape, channels=False) for _, _, cl in items]))

    def _empty(self):
        return torch.zeros((0, 1, 0, 0)), torch.zeros((0, 0, 0), dtype=torch.long), torch.zeros((0, 0, 0),
                                                                                               dtype=torch.long)

    def rows_of(self, case: str) -> list[int]:
        """The items of one case, in order."""
        return [i for i, c in enumerate(self.case) if c == case]

    def _whole(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._tensors is None:  # a lazy set read whole: kept, as the sets were before they were lazy
            self._tensors = self.batch(range(len(self)))
        return self._tensors

    @property
    def image(self) -> torch.Tensor:
        return self._whole()[0]

    @property
    def label(self) -> torch.Tensor:
        return self._whole()[1]

    @property
    def clean(self) -> torch.Tensor:
        return self._whole()[2]

    def as_trusted(self) -> "SliceSet":
        """The same items, every one marked trusted."""
        return self._with(self.case, self.slice_index, torch.ones(len(self), dtype=torch.bool))

    def _with(self, case, slice_index, trusted) -> "SliceSet":
        if self.store is not None:
            return SliceSet(case=case, slice_index=slice_index, trusted=trusted, store=self.store, noisy=self.noisy)
        return SliceSet(*self._tensors, case=case, slice_index=slice_index, trusted=trusted)

    def concat(self, other: "SliceSet") -> "SliceSet":
        """This set's items followed by ``other``'s (one store, or both in memory with equal item sizes)."""
        if len(other) == 0:
            return self
        if len(self) == 0:
            return other
        trusted = torch.cat([self.trusted, other.trusted])
        if self.store is not None and other.store is self.store:
            return SliceSet(case=self.case + other.case, slice_index=self.slice_index + other.slice_index,
                            trusted=trusted, store=self.store, noisy=self.noisy + other.noisy)
        a, b = (self._tensors, other._tensors) if self.store is None and other.store is None else (
            self.batch(range(len(self))), other.batch(range(len(other))))
        return SliceSet(*(torch.cat([x, y]) for x, y in zip(a, b)), case=self.case + other.case,
                        slice_index=self.slice_index + other.slice_index, trusted=trusted)


def _store(prepared_dir, manifest: dict, cache_mb: float | None) -> CaseStore:
    return CaseStore(prepared_dir, manifest, DEFAULT_CACHE_MB if cache_mb is None else cache_mb)


def _cases(root: Path, manifest: dict, cases) -> list[str]:
    if isinstance(cases, str):
        if cases not in _SPLITS:
            raise ValueError(f"cases must be a split name {_SPLITS} or a list of case ids, got {cases!r}")
        return list(manifest["splits"][cases])
    for case in cases:
        if case not in manifest["cases"]:
            raise InputError(root / "dataset.json", f"has no case {case!r}")
    return list(cases)


def load_slices(prepared_dir: str | os.PathLike, cases: str | Sequence[str], *, label: str = "noisy",
                cache_mb: float | None = None, store: CaseStore | None = None) -> SliceSet:
    """Every 2-D slice of some cases of a prepared segmentation dataset (any channels, classes), lazily.

    Args:
        prepared_dir: Prepared segmentation folder (``prepare promise12`` or ``prepare msd``).
        cases: Case ids, or a split name (``"train"``, ``"meta"``, ``"test"``).
        label: ``"noisy"``: train cases get their noisy masks as ``label`` (meta and
            test cases have none and always get the clean mask); ``"clean"``: clean
            masks everywhere.
        cache_mb: Bound of the cache of decoded cases (MiB; default :data:`DEFAULT_CACHE_MB`).
        store: A store to share (sets of one dataset then share one cache); ``cache_mb`` is then unused.

    A train case of a dataset prepared from the user's own labels (``"train_truth": false``) has no clean
    mask (``"label": null``): its ``clean`` is its given mask, and nothing may read it as truth.

    Returns:
        A lazy :class:`SliceSet`; slices in case order, then z order.
    """
    _check_label(label)
    root = Path(prepared_dir)
    manifest = store.manifest if store is not None else load_manifest(root, task="segmentation")
    store = store or _store(root, manifest, cache_mb)
    ids = _cases(root, manifest, cases)
    case_ids, z_ids = [], []
    for case in ids:
        depth = store.shape(case)[2]
        case_ids += [case] * depth
        z_ids += list(range(depth))
    return SliceSet(case=case_ids, slice_index=z_ids, store=store, noisy=label == "noisy")


def volume_shape(prepared_dir: str | os.PathLike, multiple: int = PAD_MULTIPLE, *,
                 manifest: dict | None = None) -> tuple[int, int, int]:
    """The padded shape ``(X, Y, Z)`` of a prepared dataset's largest volume (:func:`padded_shape`): what a
    batch holding it is padded to, and the 3-D window when the volumes fit :func:`train_window`. ``manifest``:
    the dataset's ``dataset.json`` already read (then ``prepared_dir`` is not read)."""
    manifest = manifest if manifest is not None else load_manifest(prepared_dir, task="segmentation")
    sizes = [tuple(e["prepared"]["size"]) for e in manifest["cases"].values()]
    return padded_shape(sizes, multiple)


def train_window(prepared_dir: str | os.PathLike, patch_size: Sequence[int] = (96, 96, 96), *,
                 manifest: dict | None = None) -> tuple[int, int, int]:
    """The 3-D training window ``(X, Y, Z)``: :func:`volume_shape` capped on each axis at ``patch_size``
    (multiples of 16). Equal to :func:`volume_shape` when the volumes fit: they are trained whole; otherwise
    training takes random patches of this size, and inference slides windows of it."""
    return tuple(min(v, int(p)) for v, p in zip(volume_shape(prepared_dir, manifest=manifest), patch_size))


def load_volumes(prepared_dir: str | os.PathLike, cases: str | Sequence[str], *, label: str = "noisy",
                 cache_mb: float | None = None, store: CaseStore | None = None) -> SliceSet:
    """Whole volumes of some cases for 3-D training, lazily: a :class:`SliceSet` whose items are volumes
    (``slice_index`` -1), each of its own prepared size; :meth:`SliceSet.batch` pads them (``image``
    (N, C, X, Y, Z), ``label``/``clean`` (N, X, Y, Z))."""
    _check_label(label)
    root = Path(prepared_dir)
    manifest = store.manifest if store is not None else load_manifest(root, task="segmentation")
    store = store or _store(root, manifest, cache_mb)
    ids = _cases(root, manifest, cases)
    return SliceSet(case=ids, slice_index=[-1] * len(ids), store=store, noisy=label == "noisy")


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

    Items: ``{"image": float32 (C, X, Y), "label": int64 (X, Y), "clean": int64 (X, Y),
    "index": int}`` (3-D volumes: ``(C, X, Y, Z)`` and ``(X, Y, Z)``), each of its own size: batch them
    with :func:`pad_collate`. With ``crop``: a random patch of that spatial size (an item smaller than it is
    first zero-padded at the far end, MONAI ``SpatialPadd``), centred with probability ``crop_fg`` on a
    foreground voxel of the given label (MONAI ``RandCropByPosNegLabeld``; a sample without foreground gets a
    random patch), the same patch of image,
    label and clean label. See the module docstring for what seeds the randomness. Items are never
    augmented here: training augments whole batches on the device with
    :class:`medl2b.data.augment.BatchAugment`.

    Args:
        slices: A :class:`SliceSet`.
        crop: Patch size, or None for whole items.
        crop_fg: Share of patches centred on foreground.
    """

    def __init__(self, slices: SliceSet, *, crop: Sequence[int] | None = None,
                 crop_fg: float = 0.33) -> None:
        if not isinstance(slices, SliceSet):
            raise TypeError(f"slices must be a SliceSet, got {type(slices).__name__}")
        steps = None
        if crop is not None:
            keys, size = ("image", "label", "clean"), tuple(int(c) for c in crop)
            steps = [SpatialPadd(keys, spatial_size=size, method="end"),  # an item smaller than the patch: padded
                     RandCropByPosNegLabeld(keys, label_key="label", spatial_size=size, pos=crop_fg,
                                            neg=1.0 - crop_fg, num_samples=1, allow_smaller=False)]
        super().__init__(Compose(steps) if steps is not None else None)
        self.slices = slices

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> dict:
        s = self.slices
        image, label, clean = s.sample(index)
        data = {"image": image, "label": label[None].float(), "clean": clean[None].float()}
        data = self._apply(data)
        return {"image": _plain(data["image"]).float().contiguous(),
                "label": _plain(data["label"])[0].round().long(),
                "clean": _plain(data["clean"])[0].round().long(),
                "trusted": bool(s.trusted[index]), "index": int(index)}


def pad_collate(items: list[dict]) -> dict:
    """Collate items of different sizes: ``image``, ``label`` and ``clean`` padded (zeros at the far end)
    to the :func:`padded_shape` of this batch, the other keys as torch's default collate does."""
    shape = padded_shape([tuple(it["label"].shape) for it in items])
    out = default_collate([{k: v for k, v in it.items() if k not in ("image", "label", "clean")} for it in items])
    out["image"] = torch.stack([_pad(it["image"], shape, channels=True) for it in items])
    out["label"] = torch.stack([_pad(it["label"], shape, channels=False) for it in items])
    out["clean"] = torch.stack([_pad(it["clean"], shape, channels=False) for it in items])
    return out


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
        trusted: bool (N,); True for clean meta images trained on (``l2b``). Default all False.
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
    manifest = load_manifest(root, task="classification")
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
    noisy = np.asarray([entries[i]["noisy_label"] for i in idx], dtype=np.int64)
    # own labels: a training image has only its given label ("label": null), which stands in for the clean one
    clean = np.asarray([entries[i]["noisy_label"] if entries[i]["label"] is None else entries[i]["label"]
                        for i in idx], dtype=np.int64)
    return ImageSet(images=images, index=idx, label=noisy if (label == "noisy" and split == "train") else clean,
                    clean=clean, classes=list(manifest["classes"]))


class IsicDataset(Dataset):
    """ISIC images as a torch Dataset, served plain.

    Items: ``{"image": float32 (3, S, S) RGB in [0, 1] (the network normalises it: each registered
    backbone carries its own statistics, :class:`medl2b.models.Classifier`),
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

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        row = int(self.images.index[index])
        pixels = torch.from_numpy(np.array(self.images.images[row])).permute(2, 0, 1).float().div_(255.0)
        return {"image": pixels.contiguous(),
                "label": torch.tensor(int(self.images.label[index]), dtype=torch.long),
                "clean": torch.tensor(int(self.images.clean[index]), dtype=torch.long),
                "trusted": bool(self.images.trusted[index]), "index": int(index)}
