"""Which torch device a run uses."""

from __future__ import annotations

import torch

from medl2b.errors import InputError

__all__ = ["DEVICES", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when available, else the CPU; asking for ``cuda`` without one is an :class:`InputError`."""
    if name not in DEVICES:
        raise InputError("--device", f"must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "cuda was asked for but no CUDA device is available")
    return torch.device(name)
