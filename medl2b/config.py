"""Run configuration: YAML in ``configs/`` validated into one dataclass.

A task file (``configs/segmentation.yaml``) states where the task departs from the
dataclass defaults, at the top level, and named profiles under ``profiles:`` (``cpu`` is a
small profile that finishes in minutes on a 2-core machine). Precedence, lowest first:
dataclass defaults < task YAML < profile < ``--config`` file < command-line flags.

The keys are flat (in YAML and ``--set key=value``) and belong to five groups (:data:`GROUPS`):
data, model, method, optimisation, runtime. Each group is checked by its own validator
(:data:`VALIDATORS`); :meth:`TrainConfig.group` reads one group's values.

An unknown key anywhere is an :class:`~medl2b.errors.InputError` naming the key
and the file it came from.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from medl2b.data.datasets import TASK_KINDS
from medl2b.device import DEVICES
from medl2b.errors import InputError, atomic_file
from medl2b.meta.methods import META_IMPLS, META_LOSSES, META_METHODS, NORMALISATIONS, canonical_method
from medl2b.meta.methods import METHODS as METHOD_TABLE
from medl2b.models.registry import backbone_names, get_backbone
from medl2b.models.unetpp_encoder import SEGMENTATION_ARCHS
import medl2b.models  # noqa: F401,E402  (registers the backbones)

__all__ = ["GROUPS", "METHODS", "SEG_TASKS", "TASKS", "TASK_ALIASES", "VALIDATORS", "TrainConfig", "load_config",
           "load_config_file", "save_config", "task_config_path"]

#: Every task name (:data:`medl2b.data.datasets.TASK_KINDS`, the one table of them).
TASKS = tuple(TASK_KINDS)
SEG_TASKS = tuple(t for t, kind in TASK_KINDS.items() if kind == "segmentation")
#: The YAML of each kind of task (``configs/<name>.yaml``).
KIND_CONFIGS = {"segmentation": "segmentation", "classification": "skin-lesion-cls"}
#: Task names that read another task's YAML (derived): ``prostate-seg`` (PROMISE12, the name users know) reads
#: ``segmentation``'s; ``cfg.task`` keeps the name given, so its datasets and run folders still match.
TASK_ALIASES = {t: KIND_CONFIGS[kind] for t, kind in TASK_KINDS.items() if t != KIND_CONFIGS[kind]}
#: Profiles of an alias that have another name in the YAML it reads.
ALIAS_PROFILES = {"prostate-seg": {"cpu": "prostate-cpu"}}
METHODS = tuple(METHOD_TABLE)  # every list of allowed values comes from the method table


@dataclass
class TrainConfig:
    """Every knob of a training run. See ``configs/*.yaml`` for the per-task defaults."""

    task: str = "prostate-seg"
    data: str | None = None            # prepared dataset folder
    out: str | None = None             # run folder
    method: str = "l2b"                # ce | bootstrap | l2rw | l2b | l2b-pure | l2b-sum1 | ce+clean | meta-only
                                        # (l2b+clean, the old name of l2b, is read as l2b: ALIASES)
    meta_set: str = "clean"            # clean (trusted meta split) | gmm (online, no trusted set)
    label_source: str = "noisy"        # noisy | clean (clean = the oracle ceiling)
    # optimisation (paper: SGD, momentum 0.9, wd 5e-4, cosine annealing, gradient clipping)
    epochs: int = 30
    warmup_epochs: int = 1             # at least this many epochs of plain CE before a meta method starts
    warmup_until_score: float | None = None  # ...and, if set, until the clean validation score reaches this
    warmup_max_epochs: int | None = None     # cap on the score-gated warm-up; None = half the epochs
    batch_size: int = 64
    meta_batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip_grad: float = 0.8
    steps_per_epoch: int | None = None  # None = one pass over the training set
    # method knobs
    bootstrap_beta: float = 0.8         # weight of the given label in `bootstrap`
    meta_impl: str = "fast"             # fast (forward-mode JVP) | fast-lowmem | reference (double backward)
    meta_scope: str = "all"             # all | last (FaMUS-style: virtual step on the head only)
    meta_every: int = 1                 # a new meta gradient v every k steps, reused in between (fast impls)
    pseudo_label_tta: bool = False      # segmentation: average flipped predictions first
    gmm_threshold: float = 0.5          # P(clean) above which a sample joins the online meta set
    meta_foreground: bool = True        # segmentation: meta batches only from slices with foreground
    meta_balance: bool = False          # classification: class-balanced meta batches (every class in every batch)
    train_balance: bool = False         # classification: draw training images with probability 1/(count of their
                                        # given class), with replacement: every given class equally often
    val_metric: str = "accuracy"        # classification: accuracy | balanced_accuracy on the clean meta split
                                        # (chooses checkpoint_best and the score-gated warm-up)
    val_holdout: float = 0.0            # share of the clean meta split held out for validation only: neither in
                                        # the meta step nor trained on (by case; by lesion and class for ISIC);
                                        # 0 = validate on the meta set itself, as the paper does
    meta_loss: str = "ce"               # ce | dice | ce+dice (dice: segmentation only; see medl2b.meta.losses.meta_objective)
    meta_normalise: str = "batch"       # l2b: batch (Σα + Σβ = 1 over the batch) | element (α_i + β_i = 1)
    meta_smooth: int = 1                # segmentation: average each pixel's meta evidence over this odd-sized
                                        # neighbourhood before normalising (1 = per pixel)
    pseudo_floor: float = 0.0           # l2b (meta methods): the pseudo-label term only where the network's
                                        # confidence (largest softmax probability) is at least this; below it an
                                        # element gets no β (0 = everywhere, the paper)
    # model
    features: list[int] = field(default_factory=lambda: [32, 32, 64, 128, 256, 32])  # UNet++ widths
    spatial_dims: int = 2               # segmentation: 2 = UNet++ on slices, 3 = on whole (padded) volumes
    patch_size: list[int] = field(default_factory=lambda: [96, 96, 96])  # 3-D: larger volumes train on patches
    patch_size_2d: list[int] = field(default_factory=lambda: [256, 256])  # 2-D: the training window; slices
                                        # larger than it (e.g. 1008 px fundus images) train on random patches of
                                        # it and are predicted by sliding windows; slices no larger (hippocampus
                                        # 48 px, PROMISE12 144 px) train whole, as before
    patch_fg: float = 0.33              # patches (2-D and 3-D): share centred on a foreground pixel (nnU-Net's 1/3)
    cache_mb: float = 2048.0            # segmentation: the most MiB of decoded prepared cases kept in memory
                                        # (per process); the rest is read from the prepared arrays on demand, so
                                        # a dataset larger than memory trains (medl2b.data.store)
    patches_per_slice: int = 1          # patch training: random patches drawn from each training slice (volume)
                                        # per epoch; 1 = one pass over the samples, as without patches
    arch: str = "efficientnet-lite0"    # classification: a registered backbone (medl2b.models.BACKBONES);
                                        # segmentation: unetpp (MONAI UNet++, 2-D/3-D) | unetpp-lite0 (2-D UNet++
                                        # over the ImageNet-pretrained EfficientNet-Lite0 encoder)
    width: float = 1.0                  # ResNet-50 widen factor (resnet50 only)
    image_size: int | None = None       # classification: crop/resize side; None = prepared size
    pretrained: str | None = "imagenet"  # classification (and segmentation arch unetpp-lite0, its encoder): imagenet
                                        # (weights an installed package ships) | a local state dict in the
                                        # backbone's layout | null (from scratch)
    # run
    augment: bool = True
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda
    amp: bool = True                    # bf16 autocast on CUDA only
    meta_amp: bool = True               # ...also for the meta step, after the first epoch (issue 38: with v and the
                                        # tangents in float32, bf16 weights keep cosine >= 0.99 with float64 ones once
                                        # CE has trained; at initialisation batch-norm classifiers lose them)
    num_workers: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        # the one place an old method name (medl2b.meta.methods.ALIASES) is resolved: every config, made from
        # YAML, flags, a saved run folder or dataclasses.replace, holds the method's name of today
        self.method = canonical_method(self.method)

    def validate(self, where: str = "config") -> "TrainConfig":
        """Check values group by group (:data:`VALIDATORS`); raise :class:`InputError` naming the key."""
        if isinstance(self.pretrained, str) and self.pretrained.strip().lower() in ("", "none", "null"):
            self.pretrained = None  # --pretrained none: from scratch
        for check in VALIDATORS.values():
            check(self, where)
        return self

    def group(self, name: str) -> dict[str, Any]:
        """The values of one group of keys (:data:`GROUPS`), e.g. ``cfg.group("optimisation")``."""
        return {key: getattr(self, key) for key in GROUPS[name]}

    def in_warmup(self, epoch: int, scores: list[float]) -> bool:
        """Whether 0-based ``epoch`` is still warm-up (plain CE), given the validation scores of the
        epochs before it. Fixed: the first ``warmup_epochs``. Score-gated (``warmup_until_score``):
        also every later epoch until some earlier epoch scored at least the threshold on the clean
        meta cases, but never past ``warmup_max_epochs`` (default: half the run), so a network that
        never gets there still meets the meta step."""
        if epoch < self.warmup_epochs:
            return True
        if self.warmup_until_score is None:
            return False
        cap = self.epochs // 2 if self.warmup_max_epochs is None else self.warmup_max_epochs
        reached = any(s >= self.warmup_until_score for s in scores[:epoch])
        return epoch < max(cap, self.warmup_epochs) and not reached

    @property
    def is_segmentation(self) -> bool:
        return self.task in SEG_TASKS

    @property
    def uses_meta(self) -> bool:
        return self.method in META_METHODS

    @property
    def training_set(self) -> str:
        """What the method trains on with this ``meta_set`` (:meth:`medl2b.meta.methods.Method.training_set`):
        ``train``, ``train+trusted``, ``train+meta`` or ``meta``."""
        return METHOD_TABLE[self.method].training_set(self.meta_set)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

#: The config's keys by the part of medl2b that reads them. Each key is in exactly one group.
GROUPS: dict[str, tuple[str, ...]] = {
    "data": ("task", "data", "label_source", "val_holdout", "image_size", "augment", "cache_mb", "patch_size",
             "patch_size_2d", "patch_fg", "patches_per_slice", "train_balance"),
    "model": ("arch", "features", "spatial_dims", "width", "pretrained"),
    "method": ("method", "meta_set", "meta_batch_size", "bootstrap_beta", "meta_impl", "meta_scope", "meta_every",
               "pseudo_label_tta", "gmm_threshold", "meta_foreground", "meta_balance", "meta_loss", "meta_normalise",
               "meta_smooth", "pseudo_floor"),
    "optimisation": ("epochs", "warmup_epochs", "warmup_until_score", "warmup_max_epochs", "batch_size", "lr",
                     "momentum", "weight_decay", "clip_grad", "steps_per_epoch", "val_metric"),
    "runtime": ("out", "seed", "device", "amp", "meta_amp", "num_workers", "log_every"),
}


def _choose(cfg: TrainConfig, where: str, choices: dict[str, tuple]) -> None:
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise InputError(where, f"{key} must be one of {', '.join(allowed)}, got {getattr(cfg, key)!r}")


def _positive(cfg: TrainConfig, where: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        if not getattr(cfg, key) > 0:
            raise InputError(where, f"{key} must be > 0, got {getattr(cfg, key)!r}")


def _only_for_classification(cfg: TrainConfig, where: str, checks: dict[str, tuple[bool, str]]) -> None:
    """``checks``: key -> (whether it is set away from its segmentation value, the message)."""
    for key, (set_, message) in checks.items():
        if set_ and cfg.is_segmentation:
            raise InputError(where, message)


def validate_data(cfg: TrainConfig, where: str) -> None:
    """The dataset, its labels and how samples are read (patches, cache, hold-out)."""
    _choose(cfg, where, {"task": TASKS, "label_source": ("noisy", "clean")})
    if len(cfg.patch_size) != 3 or any(p <= 0 or p % 16 for p in cfg.patch_size):
        raise InputError(where, f"patch_size must be three positive multiples of 16, got {cfg.patch_size}")
    if len(cfg.patch_size_2d) != 2 or any(p < 32 or p % 16 for p in cfg.patch_size_2d):
        raise InputError(where, f"patch_size_2d must be two multiples of 16 of at least 32, got {cfg.patch_size_2d}")
    if cfg.patches_per_slice < 1:
        raise InputError(where, f"patches_per_slice must be >= 1, got {cfg.patches_per_slice}")
    if not cfg.cache_mb >= 0:
        raise InputError(where, f"cache_mb must be >= 0, got {cfg.cache_mb}")
    if not 0.0 <= cfg.patch_fg <= 1.0:
        raise InputError(where, f"patch_fg must be in [0, 1], got {cfg.patch_fg}")
    if not 0.0 <= cfg.val_holdout < 1.0:
        raise InputError(where, f"val_holdout must be in [0, 1), got {cfg.val_holdout}")
    _only_for_classification(cfg, where, {"train_balance": (cfg.train_balance, "train_balance applies to "
                                                                               "classification")})


def validate_model(cfg: TrainConfig, where: str) -> None:
    """The network: a segmentation architecture (2-D or 3-D) or a registered classification backbone."""
    if cfg.spatial_dims not in (2, 3):
        raise InputError(where, f"spatial_dims must be 2 or 3, got {cfg.spatial_dims}")
    if cfg.spatial_dims == 3 and not cfg.is_segmentation:
        raise InputError(where, f"spatial_dims 3 needs a segmentation task, not {cfg.task}")
    if cfg.is_segmentation:
        if cfg.arch not in SEGMENTATION_ARCHS:
            raise InputError(where, f"arch must be one of {', '.join(SEGMENTATION_ARCHS)} for segmentation, "
                                    f"got {cfg.arch!r}")
        if cfg.arch != "unetpp" and cfg.spatial_dims != 2:
            raise InputError(where, f"arch {cfg.arch} is 2-D only; use arch unetpp for spatial_dims 3")
        return
    if cfg.arch not in backbone_names():
        raise InputError(where, f"arch must be one of {', '.join(backbone_names())}, got {cfg.arch!r}")
    if cfg.width != 1.0 and cfg.arch != "resnet50":
        raise InputError(where, f"width applies to arch resnet50 only, not {cfg.arch}")
    if cfg.pretrained == "imagenet" and not get_backbone(cfg.arch).packaged_weights:
        raise InputError(where, f"no installed package ships ImageNet weights for {cfg.arch}; set pretrained "
                                "to a local weights file, or null to train from scratch")


def validate_method(cfg: TrainConfig, where: str) -> None:
    """The method and its meta step (allowed values from the method table, :mod:`medl2b.meta.methods`)."""
    _choose(cfg, where, {"method": METHODS, "meta_set": ("clean", "gmm"), "meta_impl": META_IMPLS,
                         "meta_scope": ("all", "last"), "meta_loss": META_LOSSES, "meta_normalise": NORMALISATIONS})
    _positive(cfg, where, ("meta_batch_size", "meta_every"))
    if cfg.meta_every > 1 and cfg.meta_impl == "reference":
        raise InputError(where, "meta_every > 1 reuses the meta gradient of the fast step; use meta_impl fast")
    if not 0.0 <= cfg.bootstrap_beta <= 1.0:
        raise InputError(where, f"bootstrap_beta must be in [0, 1], got {cfg.bootstrap_beta}")
    if not 0.0 < cfg.gmm_threshold < 1.0:
        raise InputError(where, f"gmm_threshold must be in (0, 1), got {cfg.gmm_threshold}")
    if cfg.meta_loss != "ce" and not cfg.is_segmentation:
        raise InputError(where, f"meta_loss {cfg.meta_loss} needs a segmentation task; use ce for {cfg.task}")
    _only_for_classification(cfg, where, {"meta_balance": (cfg.meta_balance, "meta_balance applies to "
                                                           "classification; segmentation uses meta_foreground")})
    if cfg.meta_smooth < 1 or cfg.meta_smooth % 2 == 0:
        raise InputError(where, f"meta_smooth must be an odd size >= 1, got {cfg.meta_smooth}")
    if cfg.meta_smooth > 1 and not cfg.is_segmentation:
        raise InputError(where, "meta_smooth applies to segmentation (per-pixel weights)")
    if not 0.0 <= cfg.pseudo_floor < 1.0:
        raise InputError(where, f"pseudo_floor must be in [0, 1), got {cfg.pseudo_floor}")
    if cfg.meta_set == "gmm" and not cfg.uses_meta:
        raise InputError(where, f"meta_set gmm only applies to meta-learning methods, not {cfg.method!r}")


def validate_optimisation(cfg: TrainConfig, where: str) -> None:
    """The schedule: epochs, warm-up, batches, SGD, and the validation score that picks the best checkpoint."""
    _positive(cfg, where, ("epochs", "batch_size", "lr"))
    if not 0 <= cfg.warmup_epochs <= cfg.epochs:
        raise InputError(where, f"warmup_epochs must be in [0, epochs], got {cfg.warmup_epochs}")
    if cfg.warmup_until_score is not None:
        if cfg.meta_set != "clean":
            raise InputError(where, "warmup_until_score needs the clean meta set to score on (meta_set clean)")
        if not 0.0 < cfg.warmup_until_score <= 1.0:
            raise InputError(where, f"warmup_until_score must be in (0, 1], got {cfg.warmup_until_score}")
    if cfg.warmup_max_epochs is not None and not cfg.warmup_epochs <= cfg.warmup_max_epochs <= cfg.epochs:
        raise InputError(where, f"warmup_max_epochs must be in [warmup_epochs, epochs], got {cfg.warmup_max_epochs}")
    if cfg.val_metric not in ("accuracy", "balanced_accuracy"):
        raise InputError(where, f"val_metric must be accuracy or balanced_accuracy, got {cfg.val_metric!r}")
    _only_for_classification(cfg, where, {"val_metric": (cfg.val_metric != "accuracy", "val_metric applies to "
                                          "classification; segmentation validates on Dice")})


def validate_runtime(cfg: TrainConfig, where: str) -> None:
    """Where and how the run executes."""
    _choose(cfg, where, {"device": DEVICES})


#: The validator of each group, in the order they run.
VALIDATORS = {"data": validate_data, "model": validate_model, "method": validate_method,
              "optimisation": validate_optimisation, "runtime": validate_runtime}


def task_config_path(task: str) -> Path:
    """The packaged YAML of a task (``configs/`` at the repo top level links to the same files)."""
    if task not in TASKS:
        raise InputError("--task", f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return Path(str(resources.files("medl2b") / "configs" / f"{KIND_CONFIGS[TASK_KINDS[task]]}.yaml"))


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise InputError(path, "config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(path, "a config must be a mapping of keys to values")
    return data


def _coerce(key: str, value: Any, where: str) -> Any:
    """Check that ``key`` exists and convert ``value`` (maybe a CLI string) to the field's type."""
    if key not in _FIELDS:
        raise InputError(where, f"unknown config key {key!r}")
    kind = str(_FIELDS[key].type).split("|")[0].strip()  # 'int', 'float', 'bool', 'str', 'list[int]'
    if value is None:
        return None
    if isinstance(value, str) and kind != "str":
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise InputError(where, f"{key} has the wrong type: {value!r}") from None
    try:
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError
        elif kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value)
        elif kind == "float":
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        elif kind == "str":
            value = str(value)
        elif kind.startswith("list"):
            if not isinstance(value, (list, tuple)):
                raise ValueError
            value = [int(v) for v in value]
    except (TypeError, ValueError):
        raise InputError(where, f"{key} has the wrong type: {value!r}") from None
    return value


def _apply(values: dict, overrides: dict, where: str) -> None:
    for key, value in overrides.items():
        key = key.replace("-", "_")
        values[key] = _coerce(key, value, where)


def load_config(task: str, *, profile: str | None = None, config_file: str | os.PathLike | None = None,
                overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Resolve a run configuration.

    Args:
        task: ``segmentation`` (``prostate-seg`` is an alias, see :data:`TASK_ALIASES`) or ``skin-lesion-cls``.
        profile: a profile name from the task YAML (e.g. ``cpu``).
        config_file: an extra YAML file of keys, applied after the profile.
        overrides: keys from command-line flags, applied last (``None`` values are skipped).
    """
    path = task_config_path(task)
    base = _read_yaml(path)
    profiles = base.pop("profiles", {}) or {}
    profile = ALIAS_PROFILES.get(task, {}).get(profile, profile)
    values: dict[str, Any] = {}
    _apply(values, base, str(path))
    if profile is not None:
        if profile not in profiles:
            raise InputError(path, f"unknown profile {profile!r}; available: {', '.join(profiles) or 'none'}")
        _apply(values, profiles[profile], f"{path} (profile {profile})")
    if config_file is not None:
        extra = _read_yaml(Path(config_file))
        extra.pop("profiles", None)
        _apply(values, extra, str(config_file))
    _apply(values, {k: v for k, v in (overrides or {}).items() if v is not None}, "command line")
    values["task"] = task
    return TrainConfig(**values).validate()


def load_config_file(path: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """Read a resolved ``config.yaml`` (as saved in a run folder), with optional overrides."""
    values: dict[str, Any] = {}
    _apply(values, _read_yaml(Path(path)), str(path))
    if values.get("task") in SEG_TASKS and values.get("arch") not in SEGMENTATION_ARCHS:
        values["arch"] = "unetpp"  # saved before issue 37, when arch named a classification backbone only
    _apply(values, {k: v for k, v in overrides.items() if v is not None}, "command line")
    return TrainConfig(**values).validate(str(path))


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically)."""
    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
