"""``medl2b train --resume`` never ignores a flag.

A resumed run continues with the configuration it was started with (``RUN/config.yaml``). A flag given
with ``--resume`` is compared with it:

* the same value, or a key that does not change the run (``device``, ``num_workers``, ``log_every``):
  accepted;
* ``--epochs N``: applied. It extends a finished run (or lengthens or shortens an unfinished one, to no
  fewer epochs than it has trained): training continues from the last checkpoint to epoch N, with the
  cosine learning-rate schedule re-planned over N epochs from the current one (the learning rate of
  epoch e becomes ``lr · (1 + cos(π e / N)) / 2``; a finished run restarts from that value, not from 0);
  ``config.yaml`` records the new N;
* ``--data`` naming another folder: accepted only when the run's own dataset folder no longer exists (the
  dataset moved);
* anything else that differs (``--method``, ``--set lr=...``, a profile's or ``--config`` file's keys):
  refused with one line naming the key, its value in the run and the value asked for. Start a new run
  (another ``--out``) to change it.

A run folder without a checkpoint yet (killed before its first epoch ended) has trained nothing, so
every flag applies to it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from medl2b.config import TrainConfig, load_config, load_config_file
from medl2b.errors import InputError

__all__ = ["NEUTRAL_KEYS", "explicit_settings", "resume_config"]

#: Keys that do not change what a run computes: a resume may set them freely.
NEUTRAL_KEYS = ("device", "out", "num_workers", "log_every")
_FLAGS = {"epochs": "--epochs", "method": "--method", "meta_set": "--meta-set", "seed": "--seed",
          "data": "--data", "arch": "--arch", "pretrained": "--pretrained", "meta_impl": "--meta-impl",
          "meta_scope": "--meta-scope", "label_source": "--label-source", "spatial_dims": "--spatial-dims",
          "task": "--task"}


def explicit_settings(task: str, run_config: str | os.PathLike, *, profile: str | None = None,
                      config_file: str | os.PathLike | None = None,
                      overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config keys a resuming command line sets explicitly (its flags, ``--set``, the keys ``--profile``
    changes and those of ``--config``), resolved on top of the run's own ``run_config``: what
    :func:`resume_config` compares with the run. The result must be a valid configuration (``--epochs 3``
    with the run's ``warmup_epochs: 5`` is an :class:`InputError`)."""
    asked: dict[str, Any] = {}
    if profile is not None:  # the keys the profile changes, with its values
        base, chosen = load_config(task).to_dict(), load_config(task, profile=profile).to_dict()
        asked.update({k: v for k, v in chosen.items() if base.get(k) != v and k != "task"})
    if config_file is not None:
        if not Path(config_file).is_file():
            raise InputError(config_file, "config file not found")
        extra = yaml.safe_load(Path(config_file).read_text()) or {}
        if not isinstance(extra, dict):
            raise InputError(config_file, "a config must be a mapping of keys to values")
        asked.update({str(k).replace("-", "_"): v for k, v in extra.items() if k != "profiles"})
    asked.update({k.replace("-", "_"): v for k, v in (overrides or {}).items() if v is not None})
    asked["task"] = task
    cfg = load_config_file(run_config, **asked)
    return {k: getattr(cfg, k) for k in sorted(asked) if hasattr(cfg, k)}


def resume_config(saved: TrainConfig, asked: dict[str, Any], *, started: bool, where: str | os.PathLike
                  ) -> TrainConfig:
    """The configuration a resumed run continues with (see the module docstring).

    Args:
        saved: The run's own configuration (``RUN/config.yaml``).
        asked: :func:`explicit_settings` of the resuming command line.
        started: Whether the run has a checkpoint (has trained at least one epoch).
        where: The run folder, for the messages.

    Raises:
        InputError: one line naming the first setting a resume cannot change.
    """
    neutral = {k: v for k, v in asked.items() if k in NEUTRAL_KEYS and k != "out"}
    saved = dataclasses.replace(saved, **neutral) if neutral else saved  # they change nothing the run computes
    changes = {k: v for k, v in asked.items() if k not in NEUTRAL_KEYS and _differs(k, getattr(saved, k, None), v)}
    if "task" in changes and changes["task"] in ("prostate-seg", "segmentation") and saved.task in (
            "prostate-seg", "segmentation"):
        changes.pop("task")  # one task under two names
    if not started:  # nothing trained yet: every flag applies
        values = {**saved.to_dict(), **{k: v for k, v in asked.items() if k in saved.to_dict()}}
        return TrainConfig(**values).validate("command line")
    if "data" in changes:
        if saved.data is not None and Path(saved.data).exists():
            raise InputError("--data", f"{where} was trained on {saved.data}, which still exists; --resume continues "
                                       f"on it (start a new --out to train on {changes['data']})")
    for key, value in changes.items():
        if key in ("epochs", "data"):
            continue
        flag = _FLAGS.get(key, f"--set {key}")
        raise InputError(flag, f"{where} was trained with {key} {getattr(saved, key)!r}, not {value!r}; --resume "
                               "continues a run as it was started (only --epochs may change: it extends the run); "
                               "start a new --out to change it")
    keep = {k: changes[k] for k in ("epochs", "data") if k in changes}
    return dataclasses.replace(saved, **keep).validate("--epochs") if keep else saved


def _differs(key: str, old: Any, new: Any) -> bool:
    if key == "data" and old is not None and new is not None:
        return Path(old).resolve() != Path(new).resolve()
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return list(old) != list(new)
    return old != new
