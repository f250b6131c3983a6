"""``medl2b predict`` and ``medl2b.load_run``: a trained run applied to new raw images.

A run folder holds its own copy of the prepared dataset's ``dataset.json`` (``RUN/preprocessing.json``,
:mod:`medl2b.data.record`), which records how its cases were preprocessed, so prediction needs nothing
but the run (runs from before the copy read the dataset ``config.yaml`` names); a new image goes through
the same code
(:func:`medl2b.data.msd.preprocess_image`, which ``prepare msd`` / ``prepare promise12`` call too):

* **Segmentation.** Read (NIfTI with nibabel; MetaImage, NRRD with SimpleITK; any stored
  orientation), turned to the recorded orientation and slice axis, each channel clipped to its
  0.5..99.5th percentiles and z-scored, resampled to the recorded in-plane size. The run's task
  predicts it (:meth:`medl2b.tasks.SegmentationTask.predict`: 2-D runs slice by slice, 3-D runs by
  sliding windows). The label map goes back onto the input's own grid (nearest neighbour, in
  physical space) with the dataset's raw label values, as ``medl2b eval`` writes its predictions.
  ``probabilities``: per class, linearly resampled onto the input's grid (their argmax can differ
  from the mask at boundaries: the mask is the nearest neighbour of the prepared-grid argmax).
* **Classification.** A JPEG/PNG is resized and centre-cropped to the prepared size as ``prepare
  isic2019`` and ``prepare images`` do (:func:`medl2b.data.images.load_square_image`), then normalised as in
  training.

Multi-channel images: one file per channel named the nnU-Net way (``CASE_0000.nii.gz``,
``CASE_0001.nii.gz``, ...) or one 4-D file with the channels last (MSD v1); the channel count must be
the run's.

2-D images (a run on a prepared 2-D image dataset, ``"image_2d"`` in its manifest): PNG, BMP, TIFF and
JPEG inputs are read as ``prepare msd`` reads them (:func:`medl2b.data.msd.load_natural_image`: an RGB
image is one file with three channels, alpha dropped; x = columns, y = rows), and each mask is written
back at the image's own size with the raw label values, in the input's format (JPEG -> PNG: JPEG is
lossy and would change label values), so it overlays the input pixel for pixel.

``medl2b predict RUN INPUT OUTPUT`` writes, one case at a time (bounded memory)::

    OUTPUT/CASE.nii.gz (.nii, .mha, .nrrd, .png, .bmp, .tif)   label map on the input's grid, in the input's
                                             format or --format
    OUTPUT/CASE.npz                          --save-probabilities: ``probabilities`` (K, x, y, z) float32,
                                             ``classes``, ``label_values``
    OUTPUT/predictions.csv                   classification: image, predicted, p_<class> per class

Every file is written under a temporary name and renamed; an existing output is kept unless
``overwrite``. A bad input (unreadable, wrong channel count, a 2-D image for a 3-D run) is one
error line naming the file; the other inputs are still predicted.
"""

from __future__ import annotations

import csv
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from PIL import Image

from medl2b.data.grid import raw_label_values, to_original_grid
from medl2b.data.images import load_square_image, square_image
from medl2b.data.msd import (IMAGE_ENDINGS, NATURAL_ENDINGS, preprocess_image, read_image,
                              sitk_array, stack_channels, write_mask)
from medl2b.data.record import RECORD_NAME, load_record
from medl2b.device import resolve_device
from medl2b.errors import InputError, atomic_file
from medl2b.evaluate.run import load_run as load_model
from medl2b.progress import progress_bar
from medl2b.tasks import build_task

__all__ = ["CLASSIFICATION_ENDINGS", "FORMATS", "Classification", "Predictor", "Segmentation", "find_inputs",
           "load_run", "predict_files", "write_mask"]

#: Images a classification run reads.
CLASSIFICATION_ENDINGS = (".jpg", ".jpeg", ".png")
#: ``--format`` -> file ending of the written label maps (``same``: the input's; .mhd -> .mha, .nhdr -> .nrrd,
#: .jpg/.jpeg -> .png; ``png``: 2-D masks only).
FORMATS = {"same": None, "nii.gz": ".nii.gz", "nii": ".nii", "mha": ".mha", "nrrd": ".nrrd", "png": ".png"}
_SAME = {".nii.gz": ".nii.gz", ".nii": ".nii", ".mha": ".mha", ".mhd": ".mha", ".nrrd": ".nrrd", ".nhdr": ".nrrd",
         ".png": ".png", ".bmp": ".bmp", ".tif": ".tif", ".tiff": ".tiff", ".jpg": ".png", ".jpeg": ".png"}
#: Every file ending a segmentation run can read (2-D images only for runs on 2-D image datasets).
_SEG_ENDINGS = IMAGE_ENDINGS + NATURAL_ENDINGS
_CHANNEL = re.compile(r"(.+)_(\d{4})")


@dataclass
class Segmentation:
    """A predicted label map on the input's own grid.

    Attributes:
        mask: uint8 ``(x, y, z)`` in the input's voxel order, the dataset's raw label values.
        affine: 4x4 RAS affine of the input's grid (write ``mask`` with it and it overlays the input).
        classes: Class names, background first, in index order.
        label_values: Raw label value of each class.
        probabilities: float32 ``(K, x, y, z)`` per class on the input's grid, if asked for.
    """

    mask: np.ndarray
    affine: np.ndarray
    classes: list[str]
    label_values: list[int]
    probabilities: np.ndarray | None = None


@dataclass
class Classification:
    """A predicted class and the probability of every class (in the run's class order)."""

    label: str
    probabilities: dict[str, float] = field(default_factory=dict)


class Predictor:
    """A trained run ready to predict new raw images; made by :func:`load_run`.

    Attributes:
        task: ``"segmentation"`` or ``"classification"``.
        classes: Class names (segmentation: background first).
        channels: Input channel names (segmentation).
        spatial_dims: 2 (slice by slice) or 3 (sliding windows) for segmentation runs.
    """

    def __init__(self, run: str | os.PathLike, *, checkpoint: str = "best", device: str = "auto",
                 data: str | os.PathLike | None = None) -> None:
        self.run = Path(run)
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        self.model, self.cfg = load_model(self.run, checkpoint=checkpoint, device=str(self.device))
        record = None if data else load_record(self.run)  # the run's own copy: the prepared folder may be gone
        if record is None:
            folder = Path(data) if data else Path(self.cfg.data or "")
            if not (folder / "dataset.json").is_file():
                where = folder if data else self.run / "config.yaml"
                what = "" if data else f"names the prepared dataset {str(self.cfg.data)!r}, which "
                raise InputError(where, f"{what}holds no dataset.json, and the run has no {RECORD_NAME} (trained "
                                        "by an older medl2b): the prediction needs the dataset's recorded "
                                        "preprocessing; pass --data PREPARED")
            self.cfg.data = str(folder)
        self._task = build_task(self.cfg, training=False, manifest=record)
        self.manifest = self._task.manifest
        self.task = self._task.kind
        self.classes = list(self._task.classes)
        self.label_values = list(self._task.label_values)
        self.channels = list(self._task.channels)
        self.spatial_dims = self._task.spatial_dims
        self.image_2d = self._task.image_2d
        self._predict_one = {"segmentation": self._segment_input, "classification": self._classify}[self.task]

    def __repr__(self) -> str:
        return (f"Predictor(run={str(self.run)!r}, task={self.task!r}, classes={self.classes}, "
                f"checkpoint={self.checkpoint!r}, device={str(self.device)!r})")

    # ---------------------------------------------------------------- public
    def predict(self, image, *, affine=None, tta: bool = False, probabilities: bool = False
                ) -> Segmentation | Classification:
        """Predict one image.

        Args:
            image: A path (a list of paths: one file per channel), a nibabel image, a ``SimpleITK.Image``
                or an array: segmentation ``(x, y, z[, c])`` (with ``affine``, 4x4 RAS; default identity);
                classification: a JPEG/PNG path, a PIL image or a uint8 ``(H, W, 3)`` RGB array.
            affine: The array's 4x4 RAS affine (arrays only).
            tta: Average the softmax over flips of each spatial axis (flipped back).
            probabilities: Segmentation: also return the per-class probabilities on the input's grid.

        Raises:
            InputError: naming the file (or ``image``): unreadable, wrong channel count, a 2-D image for a
                3-D run, not an image this run takes.
        """
        return self._predict_one(image, affine=affine, tta=tta, probabilities=probabilities)

    def _segment_input(self, image, *, affine, tta: bool, probabilities: bool) -> Segmentation:
        stack, aff, where = self._read(image, affine)
        return self.segment(stack, aff, where, tta=tta, probabilities=probabilities)

    def segment(self, stack: np.ndarray, affine: np.ndarray, where="image", *, tta: bool = False,
                probabilities: bool = False) -> Segmentation:
        """Segment a checked raw image ``(x, y, z, c)`` float32 with its 4x4 RAS ``affine``."""
        if self.spatial_dims == 3 and min(stack.shape[:3]) == 1:
            raise InputError(where, f"is a 2-D image (shape {list(stack.shape[:3])}); this run is a 3-D model: "
                                    "give it volumes")
        pre = preprocess_image(stack, affine, self.manifest)
        if min(pre["oriented"].size[:2]) == 1:
            axis = self.manifest["slice_axis"] or "third stored"
            raise InputError(where, f"is a 2-D image (shape {list(stack.shape[:3])}) that is not a slice along the "
                                    f"{axis} axis the run was trained on")
        logits = self._task.predict(self.model, torch.from_numpy(pre["image"]), self.device, tta=tta)
        prepared, raw = pre["prepared"].to_dict(), pre["raw"].to_dict()
        index = logits.argmax(0).numpy().astype(np.uint8)
        mask = raw_label_values(to_original_grid(index, prepared, raw), self.manifest)
        probs = None
        if probabilities:
            soft = logits.softmax(0).numpy()
            probs = np.stack([to_original_grid(soft[k], prepared, raw, linear=True) for k in range(soft.shape[0])])
        return Segmentation(mask=mask, affine=np.asarray(affine, dtype=float), classes=list(self.classes),
                            label_values=list(self.label_values), probabilities=probs)

    # --------------------------------------------------------------- inputs
    def _read(self, image, affine) -> tuple[np.ndarray, np.ndarray, object]:
        n = len(self.channels)
        if isinstance(image, (str, os.PathLike)):
            return (*read_image([image], n), Path(image))
        if isinstance(image, (list, tuple)) and image and all(isinstance(p, (str, os.PathLike)) for p in image):
            return (*read_image(image, n), Path(image[0]))
        if isinstance(image, sitk.Image):
            return (*stack_channels([(*sitk_array(image, "image"), "image")], n), "image")
        if hasattr(image, "affine") and hasattr(image, "dataobj"):  # a nibabel image
            return (*stack_channels([(np.asanyarray(image.dataobj), image.affine, "image")], n), "image")
        if isinstance(image, (np.ndarray, torch.Tensor)):
            data = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image
            aff = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
            if aff.shape != (4, 4):
                raise InputError("affine", f"must be a 4x4 matrix, got shape {list(aff.shape)}")
            return (*stack_channels([(data, aff, "image")], n), "image")
        raise InputError("image", f"cannot predict a {type(image).__name__}: give a path, a nibabel or SimpleITK "
                                  "image, or an array with its affine")

    def _classify(self, image, *, affine=None, tta: bool = False, probabilities: bool = True) -> Classification:
        """Classify a JPEG/PNG path, a PIL image or a uint8 ``(H, W, 3)`` array (``affine`` does not apply; the
        class probabilities are always returned)."""
        size = int(self.manifest["size"])
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            if not path.name.lower().endswith(CLASSIFICATION_ENDINGS):
                raise InputError(path, "is not a JPEG or PNG image; this run classifies RGB images")
            pixels = load_square_image(path, size)
        else:
            if isinstance(image, np.ndarray):
                if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                    raise InputError("image", f"expected a uint8 (H, W, 3) RGB array, got {image.dtype} "
                                              f"{list(image.shape)}")
                image = Image.fromarray(image)
            if not isinstance(image, Image.Image):
                raise InputError("image", f"cannot classify a {type(image).__name__}: give a path, a PIL image or "
                                          "a uint8 (H, W, 3) array")
            pixels = square_image(image, size)
        prob = self._task.predict(self.model, pixels, self.device, tta=tta).softmax(0).numpy()
        return Classification(label=self.classes[int(prob.argmax())],
                              probabilities={c: float(p) for c, p in zip(self.classes, prob)})


def load_run(run: str | os.PathLike, *, checkpoint: str = "best", device: str = "auto",
             data: str | os.PathLike | None = None) -> Predictor:
    """A trained run folder as a :class:`Predictor`: ``medl2b.load_run("runs/l2b").predict("case.nii.gz")``.

    Args:
        run: Run folder (``config.yaml`` and ``checkpoint_{best,latest}.pt``).
        checkpoint: ``best`` or ``latest``.
        device: ``auto``, ``cpu`` or ``cuda``.
        data: A prepared dataset whose ``dataset.json`` holds the preprocessing to repeat, instead of the run's
            own copy (``RUN/preprocessing.json``; runs from before the copy read the dataset ``config.yaml``
            names).
    """
    return Predictor(run, checkpoint=checkpoint, device=device, data=data)


# ------------------------------------------------------------------ files
def _ending(name: str, endings) -> str | None:
    low = name.lower()
    return next((e for e in endings if low.endswith(e)), None)


def find_inputs(path: str | os.PathLike, endings, n_channels: int = 1, *, channels: bool = True
                ) -> tuple[list[tuple[str, list[Path]]], int]:
    """The cases of an input file or folder: ``([(case name, channel files in order)], files skipped)``.

    With ``channels`` (segmentation), a file ``CASE_0000<ending>`` (nnU-Net naming) opens case ``CASE`` and
    ``CASE_0001``, ... are its further channels; any other image file is a case of its own, named after the
    file. Hidden files and files of other types are skipped (counted). A case whose channel files are not
    ``0..k-1`` comes back with them all; :func:`predict_files` reports it.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "not found")
    if path.is_file():
        if _ending(path.name, endings) is None:
            raise InputError(path, f"is not an image this run reads ({', '.join(endings)})")
        files, skipped = [path], 0
        stem = path.name[: -len(_ending(path.name, endings))]
        match = _CHANNEL.fullmatch(stem)
        if match and channels and n_channels > 1:  # the case's other channel files beside it
            files = sorted(p for p in path.parent.iterdir() if p.is_file() and _ending(p.name, endings)
                           and _CHANNEL.fullmatch(p.name[: -len(_ending(p.name, endings))])
                           and _CHANNEL.fullmatch(p.name[: -len(_ending(p.name, endings))])[1] == match[1])
    else:
        files, skipped = [], 0
        for p in sorted(path.iterdir()):
            if p.is_file() and not p.name.startswith(".") and _ending(p.name, endings):
                files.append(p)
            elif not p.name.startswith("."):
                skipped += 1
    stems = {p: p.name[: -len(_ending(p.name, endings))] for p in files}
    openers = {s[:-5] for s in stems.values() if s.endswith("_0000") and len(s) > 5} if channels else set()
    groups: dict[str, list[tuple[int, Path]]] = {}
    for p, stem in stems.items():
        match = _CHANNEL.fullmatch(stem)
        if match and match[1] in openers:
            groups.setdefault(match[1], []).append((int(match[2]), p))
        else:
            groups.setdefault(stem, []).append((-1, p))
    return [(case, [p for _, p in sorted(members)]) for case, members in sorted(groups.items())], skipped


def _check_channel_files(case: str, files: list[Path]) -> None:
    """Several files of one case must be its channel files ``CASE_0000``, ``CASE_0001``, ... with no gap."""
    stems = [_CHANNEL.fullmatch(p.name[: -len(_ending(p.name, _SEG_ENDINGS))]) for p in files]
    if not all(stems) or len({_ending(p.name, _SEG_ENDINGS) for p in files}) > 1:
        raise InputError(files[0], f"case {case} is given by several files ({', '.join(p.name for p in files)})")
    found = [int(m[2]) for m in stems]
    if found != list(range(len(found))):
        missing = min(set(range(max(found) + 1)) - set(found))
        raise InputError(files[0].with_name(f"{case}_{missing:04d}{_ending(files[0].name, _SEG_ENDINGS)}"),
                         f"channel {missing} of case {case} is missing (found channels {found})")


def _write_probabilities(seg: Segmentation, path: Path) -> None:
    with atomic_file(path) as tmp:
        np.savez_compressed(tmp, probabilities=seg.probabilities.astype(np.float32), classes=np.array(seg.classes),
                            label_values=np.array(seg.label_values, dtype=np.int64))


def predict_files(run: str | os.PathLike, inputs: str | os.PathLike, output: str | os.PathLike, *,
                  checkpoint: str = "best", device: str = "auto", tta: bool = False,
                  save_probabilities: bool = False, overwrite: bool = False, fmt: str = "same",
                  data: str | os.PathLike | None = None, progress: bool = False,
                  echo: Callable[[str], None] = print) -> dict:
    """``medl2b predict``: predict every image of ``inputs`` (a file or folder) into the folder ``output``.

    A bad input is reported through ``echo`` as one ``error: FILE: problem`` line and the rest are still
    predicted. Returns ``{"predicted": [written paths], "failed": [error lines], "skipped": int,
    "seconds_per_case": float}``.

    Raises:
        InputError: before any prediction, for problems that concern every input (run, dataset, folders,
            ``fmt``, an existing ``predictions.csv``).
    """
    if fmt not in FORMATS:
        raise InputError("--format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    predictor = load_run(run, checkpoint=checkpoint, device=device, data=data)
    output = Path(output)
    writer = _WRITERS[predictor.task](predictor, output, fmt=fmt, tta=tta, save_probabilities=save_probabilities,
                                      overwrite=overwrite)
    cases, skipped = find_inputs(inputs, writer.endings, len(predictor.channels), channels=writer.channels)
    if not cases:
        raise InputError(inputs, f"holds no images this run reads ({', '.join(writer.endings)})")
    if output.exists() and not output.is_dir():
        raise InputError(output, "exists and is not a folder")
    source = Path(inputs) if Path(inputs).is_dir() else Path(inputs).parent
    if output.resolve() == source.resolve():
        raise InputError(output, "is the input folder; choose another OUTPUT (masks are named after the cases)")
    writer.check()
    output.mkdir(parents=True, exist_ok=True)

    written, failed = [], []
    t0 = time.perf_counter()
    with progress_bar(progress, len(cases), "predicting") as advance:
        for case, files in cases:
            try:
                written += writer.add(case, files)
            except InputError as exc:
                failed.append(f"error: {exc}")
                echo(failed[-1])
            advance(f"predicting {case}")
    written += writer.finish()
    done = len(cases) - len(failed)
    return {"predicted": written, "cases": done, "failed": failed, "skipped": skipped,
            "seconds_per_case": (time.perf_counter() - t0) / max(done, 1)}


class _MaskWriter:
    """Segmentation: one label map per case in ``output``, in the input's format or ``fmt`` (and, with
    ``save_probabilities``, ``CASE.npz``)."""

    channels = True  # CASE_0000, CASE_0001, ... are the channel files of one case

    def __init__(self, predictor: Predictor, output: Path, *, fmt: str, tta: bool, save_probabilities: bool,
                 overwrite: bool) -> None:
        if fmt == "png" and not predictor.image_2d:
            raise InputError("--format", "png applies to runs on 2-D image datasets; this run's masks are volumes: "
                                         "choose nii.gz, nii, mha or nrrd")
        self.endings = _SEG_ENDINGS if predictor.image_2d else IMAGE_ENDINGS
        self.predictor, self.output = predictor, output
        self.options = {"fmt": fmt, "tta": tta, "save_probabilities": save_probabilities, "overwrite": overwrite}

    def check(self) -> None:
        """Nothing to check before predicting: each mask is checked as it is written."""

    def add(self, case: str, files: list[Path]) -> list[Path]:
        return _segment_case(self.predictor, case, files, self.output, **self.options)

    def finish(self) -> list[Path]:
        return []


class _TableWriter:
    """Classification: one row per image (image, predicted, p_<class> per class) in ``output/predictions.csv``,
    written once all are predicted."""

    channels = False
    endings = CLASSIFICATION_ENDINGS

    def __init__(self, predictor: Predictor, output: Path, *, fmt: str, tta: bool, save_probabilities: bool,
                 overwrite: bool) -> None:
        if fmt != "same":
            raise InputError("--format", "applies to segmentation runs; a classification run writes predictions.csv")
        self.predictor, self.table, self.overwrite = predictor, output / "predictions.csv", overwrite
        self.rows: list[list[str]] = []

    def check(self) -> None:
        if self.table.exists() and not self.overwrite:
            raise InputError(self.table, "exists; pass --overwrite to replace it")

    def add(self, case: str, files: list[Path]) -> list[Path]:
        result = self.predictor.predict(files[0])
        self.rows.append([files[0].name, result.label, *(f"{p:.6f}" for p in result.probabilities.values())])
        return []

    def finish(self) -> list[Path]:
        if not self.rows:
            return []
        with atomic_file(self.table) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "predicted", *(f"p_{c}" for c in self.predictor.classes)])
            writer.writerows(self.rows)
        return [self.table]


#: How ``medl2b predict`` writes each kind of run's predictions.
_WRITERS = {"segmentation": _MaskWriter, "classification": _TableWriter}


def _segment_case(predictor: Predictor, case: str, files: list[Path], output: Path, *, fmt: str, tta: bool,
                  save_probabilities: bool, overwrite: bool) -> list[Path]:
    if len(files) > 1:
        _check_channel_files(case, files)
    ending = FORMATS[fmt] or _SAME[_ending(files[0].name, _SEG_ENDINGS)]
    target = output / f"{case}{ending}"
    outputs = [target] + ([output / f"{case}.npz"] if save_probabilities else [])
    for path in outputs:
        if path.exists() and not overwrite:
            raise InputError(path, "exists; pass --overwrite to replace it")
    stack, affine = read_image(files, len(predictor.channels))
    result = predictor.segment(stack, affine, files[0], tta=tta, probabilities=save_probabilities)
    write_mask(result.mask, result.affine, target)
    if save_probabilities:
        _write_probabilities(result, outputs[1])
    return outputs
