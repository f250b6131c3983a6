"""Checkpoints of a run: what one holds, and how it reaches the disk so that a kill never loses the last one.

A checkpoint (:func:`checkpoint_state`) holds the weights, the optimiser and scheduler, the epoch, the best
validation score, the history (``metrics.csv``'s rows), the resolved config, the network's class and channel
counts, the online meta set, the per-sample record of :mod:`medl2b.train.record`, the RNG states, and,
after Ctrl-C / SIGTERM, the position inside the interrupted epoch (``partial``).

Writing (:func:`save_durably`): ``torch.save`` to ``PATH.tmp``, fsync, read back (zip CRCs), the current file
moved to ``checkpoint_previous.pt``, the new one renamed into place, the folder fsync'ed. A kill at any
moment leaves the latest or the previous checkpoint intact; a full disk is one :class:`DiskFullError`
naming the file, with the one already there untouched.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from medl2b.errors import DiskFullError, InputError, TrainingError, no_space

__all__ = ["BEST", "LATEST", "PREVIOUS", "checkpoint_state", "copy_durably", "get_rng_state", "read_checkpoint",
           "remove_leftovers", "save_durably", "set_rng_state"]

LATEST, PREVIOUS, BEST = "checkpoint_latest.pt", "checkpoint_previous.pt", "checkpoint_best.pt"


def checkpoint_state(*, model, optimizer, scheduler, epoch: int, best_score: float, history: list[dict],
                     config: dict, num_classes: int, in_channels: int, online_meta: np.ndarray | None,
                     record: dict, partial: dict | None) -> dict:
    """The state a checkpoint holds (see the module docstring), with the RNG states of this moment."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch, "best_score": best_score, "history": history, "config": config,
            "num_classes": num_classes, "in_channels": in_channels,
            "online_meta": None if online_meta is None else online_meta.tolist(), "record": record,
            "rng": get_rng_state(), "partial": partial}


def read_checkpoint(path: Path, device) -> dict:
    """A checkpoint's state, its tensors on ``device``; an :class:`InputError` naming it when it does not read."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        raise InputError(path, f"cannot read checkpoint ({type(exc).__name__})") from None


def get_rng_state() -> dict:
    """The torch, NumPy and Python RNG states (and CUDA's, once it is in use)."""
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict) -> None:
    """Restore :func:`get_rng_state`'s states (CUDA's only onto as many devices as it was saved from)."""
    torch.set_rng_state(rng["torch"].cpu())  # a checkpoint loaded with map_location=cuda moved it
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.cpu() for state in rng["cuda"]])


def _fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (where the platform allows)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _disk_full(path: Path) -> DiskFullError:
    kept = "; the one already there is intact" if path.exists() else ""
    return DiskFullError(f"no space left on device writing {path}{kept}")


@contextlib.contextmanager
def _through_temp(tmp: Path, path: Path):
    """On any failure inside: remove ``tmp``; a full disk becomes one :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if no_space(exc):
            raise _disk_full(path) from None
        raise


def save_durably(state: dict, path: Path, *, previous: Path | None = None) -> None:
    """``torch.save`` to ``PATH.tmp``, fsync, read it back (zip CRCs), move the current ``path`` to
    ``previous`` (if given), rename the new file to ``path``. A kill at any moment leaves ``path`` or
    ``previous`` intact; a full disk raises :class:`DiskFullError` with ``path`` untouched."""
    tmp = path.with_name(path.name + ".tmp")
    with _through_temp(tmp, path):
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            with zipfile.ZipFile(tmp) as zf:
                bad = zf.testzip()
        except zipfile.BadZipFile as exc:
            bad = str(exc)
        if bad is not None:
            raise TrainingError(f"{path}: the checkpoint just written does not read back ({bad}); "
                                f"the one before is kept")
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
        _fsync_dir(path.parent)


def copy_durably(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through ``DST.tmp`` (fsync'ed, then renamed)."""
    tmp = dst.with_name(dst.name + ".tmp")
    with _through_temp(tmp, dst):
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)


def remove_leftovers(out: Path) -> None:
    """Temporary files of writes that a killed run never finished (the caller holds the run lock)."""
    for pattern in ("checkpoint_*.pt.tmp", ".*.tmp-*"):
        for path in out.glob(pattern):
            if path.is_file():
                with contextlib.suppress(OSError):
                    path.unlink()
