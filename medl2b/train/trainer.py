"""The training loop: one flat epoch loop, hooks a variant can override, exact resume.

Run folder (``cfg.out``)::

    config.yaml            resolved configuration
    train.log              the log
    metrics.csv            one row per epoch
    checkpoint_latest.pt   end of the last finished epoch (weights, optimiser, scheduler, RNG, history,
                           the per-sample record of train.record for ``medl2b audit``), or, after
                           Ctrl-C / SIGTERM, the exact state at a step boundary inside an epoch
    checkpoint_previous.pt the checkpoint before it, kept until the new one is written and verified
    checkpoint_best.pt     best on the clean validation (meta) cases, never on test
    tb/                    TensorBoard events, if tensorboard is installed
    .medl2b.lock           while a command works on the folder (medl2b.runlock)

Every epoch reseeds torch, NumPy and ``random`` from ``(seed, epoch)`` (the MONAI
augmentations draw their seeds from torch's generator, item by item), so a run resumed from ``checkpoint_latest.pt`` follows exactly
the path of an uninterrupted one.

Crashes (:mod:`medl2b.train.checkpoint`): a checkpoint is written to ``checkpoint_latest.pt.tmp``,
fsync'ed and read back (zip CRCs) before the old one moves to ``checkpoint_previous.pt`` and the new
one takes its name, so a kill at any moment leaves at least one intact checkpoint; ``--resume`` falls back to the previous one when
the latest does not read, and rebuilds ``metrics.csv`` from the history of the checkpoint it
resumes from. Ctrl-C or SIGTERM (single process) finishes the current step, saves the state at
that step boundary (RNG states, the epoch's running sums and sample record, the reused meta
gradient, the number of training and meta batches drawn), and raises :class:`RunInterrupted`; the
resume replays the epoch's loaders to that point, so it stays exact. Under ``torchrun`` a stopped
or killed run resumes from the last finished epoch (redone exactly, as every epoch reseeds), and
a worker restarted by ``torchrun --max-restarts`` resumes on its own
(``TORCHELASTIC_RESTART_COUNT`` > 0).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset, WeightedRandomSampler
from torch.utils.data.distributed import DistributedSampler

from medl2b.config import TrainConfig, load_config_file, save_config
from medl2b.data.record import RECORD_NAME, save_record
from medl2b.device import resolve_device
from medl2b.errors import InputError, RunInterrupted, TrainingError, atomic_file
from medl2b.meta.methods import PURE_BEFORE, get_method
from medl2b.models import build_model, head_parameter_names
from medl2b.runlock import run_lock
from medl2b.tasks import build_task
from medl2b.train import distributed
from medl2b.train.checkpoint import (BEST, LATEST, PREVIOUS, checkpoint_state, copy_durably,
                                     read_checkpoint, remove_leftovers, save_durably, set_rng_state)
from medl2b.train.metaset import ClassBalancedBatches, select_clean
from medl2b.train.record import SampleRecord
from medl2b.train.resume import resume_config
from medl2b.train.step import StepModule

__all__ = ["Trainer", "train", "METRIC_COLUMNS", "LATEST", "PREVIOUS", "BEST"]

log = logging.getLogger("medl2b")

METRIC_COLUMNS = ["epoch", "warmup", "lr", "train_loss", "meta_loss", "alpha_sum", "beta_sum", "alpha_on_wrong",
                  "alpha_on_right", "beta_on_wrong", "beta_on_right", "beta_share_on_wrong", "beta_share_on_right",
                  "pseudo_differs_on_wrong", "beta_share_on_wrong_differ", "skipped_steps", "steps", "val_score", "meta_size", "meta_precision", "meta_base_rate", "time_s"]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _forever(loader):
    while True:
        yield from loader


@dataclass
class EpochStats:
    """Running sums over one epoch."""

    warmup: bool = False
    steps: int = 0
    skipped: int = 0
    loss: float = 0.0
    meta_loss: float = 0.0
    meta_steps: int = 0
    alpha_sum: float = 0.0
    beta_sum: float = 0.0
    split: dict = field(default_factory=lambda: {k: [0.0, 0] for k in (
        "alpha_on_wrong", "alpha_on_right", "beta_on_wrong", "beta_on_right", "beta_share_on_wrong",
        "beta_share_on_right", "pseudo_differs_on_wrong", "beta_share_on_wrong_differ")})


class Trainer:
    """L2B and its baselines in one engine. Hooks: :meth:`train_step`, :meth:`validate`,
    :meth:`on_epoch_end`, :meth:`save_checkpoint`, :meth:`load_checkpoint`."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, progress: bool | None = None):
        if cfg.data is None:
            raise InputError("--data", "a prepared dataset folder is required")
        if cfg.out is None:
            raise InputError("--out", "a run folder is required")
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.resume = resume
        self.progress = sys.stdout.isatty() if progress is None else progress
        if not resume and ((self.out / LATEST).exists() or (self.out / PREVIOUS).exists()):
            raise InputError(self.out, "already holds a run; pass --resume to continue it or choose another --out")
        self.device = resolve_device(cfg.device)
        self.dist = distributed.setup(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self._setup_logging()
        self.method = get_method(cfg.method, normalise=cfg.meta_normalise)
        # only a method that trains on its trusted cases has them; the others skip the check (a host sync)
        self._trusts = cfg.training_set == "train+trusted"
        _seed_everything(cfg.seed)
        self.task = build_task(cfg)
        self.model = build_model(cfg, num_classes=self.task.num_classes,
                                 in_channels=self.task.in_channels).to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
        self.head = head_parameter_names(self.model) if cfg.meta_scope == "last" else None
        self.step_module = StepModule(self.model, self.method, bootstrap_beta=cfg.bootstrap_beta,
                                      meta_impl=cfg.meta_impl, param_names=self.head,
                                      pseudo_tta=cfg.pseudo_label_tta and cfg.is_segmentation,
                                      reduce_meta_grad=distributed.average_in_place if self.dist.enabled else None,
                                      meta_loss=cfg.meta_loss, meta_smooth=cfg.meta_smooth,
                                      pseudo_floor=cfg.pseudo_floor)
        self.engine = self.step_module
        if self.dist.enabled:
            self.engine = DistributedDataParallel(
                self.step_module, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None)
        self.amp_dtype = (torch.bfloat16 if self.device.type == "cuda" and cfg.amp and torch.cuda.is_bf16_supported()
                          else None)
        self.epoch = 0
        self.best_score = -math.inf
        self.history: list[dict] = []
        self.online_meta: np.ndarray | None = None
        self.record = SampleRecord(len(self.task.train_plain))  # per-sample weights and losses, for `audit`
        self._stop: int | None = None       # the signal that asked to stop at the next step boundary
        self._partial: dict | None = None   # the state inside an epoch that a resume continues from
        self._rotate = True                 # keep the current latest as previous on the next save
        self._diagnostics: _Diagnostics | None = None  # this epoch's weight sums, on the device
        self._replanned: int | None = None  # the epochs the run had before --epochs changed them on --resume
        resumed = resume and self._resume()
        if self.dist.is_main and (not resumed or self._replanned is not None):
            save_config(cfg, self.out / "config.yaml")
        if self.dist.is_main and not (self.out / RECORD_NAME).exists():  # the run folder is self-contained
            save_record(self.out, self.task.manifest, cfg.data)
        self.tb = self._tensorboard() if self.dist.is_main and self.epoch < cfg.epochs else None

    def _resume(self) -> bool:
        """Load the newest intact checkpoint (latest, else previous); False when there is none yet."""
        candidates = [p for p in (self.out / LATEST, self.out / PREVIOUS) if p.exists()]
        if not candidates:
            log.warning("%s: no checkpoint to resume from yet; starting the run from the beginning", self.out)
            return False
        problems = []
        for path in candidates:
            try:
                self.load_checkpoint(path)
            except InputError as exc:
                if exc.where in ("--epochs", "--method"):  # the run refuses them, not an unreadable checkpoint
                    raise
                problems.append(str(exc))
                continue
            if problems or path.name != LATEST:
                log.warning("%s; resuming from %s (epoch %d) instead", "; ".join(problems) or
                            f"{self.out / LATEST}: missing", path, self.epoch)
                self._rotate = False  # the unreadable latest must not push the good previous out
            break
        else:
            raise InputError(self.out, "no intact checkpoint to resume from: " + "; ".join(problems))
        if self._trained_for != self.cfg.epochs:  # --epochs on --resume (medl2b.train.resume)
            self._replan(self._trained_for)
        if self.dist.is_main:
            self._write_metrics()  # metrics.csv follows the history of the checkpoint resumed from
        return True

    # ----------------------------------------------------------------- set-up
    def _setup_logging(self) -> None:
        log.setLevel(logging.INFO)
        for h in list(log.handlers):
            if getattr(h, "_medl2b", False):
                log.removeHandler(h)
                h.close()
        log.propagate = False
        if not self.dist.is_main:  # only rank 0 logs
            return
        fh = logging.FileHandler(self.out / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        fh._medl2b = True  # type: ignore[attr-defined]
        log.addHandler(fh)
        sh = logging.StreamHandler(sys.stdout)  # epoch summaries; step lines only when there is no bar
        sh.setFormatter(logging.Formatter("%(message)s"))
        sh.addFilter(lambda record: not getattr(record, "file_only", False))
        sh._medl2b = True  # type: ignore[attr-defined]
        log.addHandler(sh)
        log.propagate = False

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.out / "tb"))

    # ------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train from ``self.epoch`` to ``cfg.epochs``; return the last epoch's metrics row."""
        cfg = self.cfg
        if self.epoch >= cfg.epochs:
            return self._finished_already()
        trusted = self.task.trusted_samples()
        log.info("task %s, network %s, method %s, meta set %s, %d training samples%s, device %s, seed %d",
                 cfg.task, _network_name(cfg), cfg.method, cfg.meta_set if self.method.uses_meta else "-",
                 len(self.task.train_set), f" ({trusted} of them trusted)" if trusted else "", self.device, cfg.seed)
        row: dict = {}
        try:
            with self._stop_on_signals():
                while self.epoch < cfg.epochs:
                    if self._stop is not None:  # arrived during validation or the epoch's checkpoint
                        self._interrupted(None)
                    start = time.time()
                    seed = cfg.seed * 100_003 + self.epoch
                    partial, self._partial = self._partial, None
                    _seed_everything(seed)  # a partial epoch replays its loaders from here, then restores its RNG
                    stats = self.train_epoch(seed, partial=partial)
                    score = self.validate()
                    row = self.on_epoch_end(stats, score, time.time() - start + (partial or {}).get("seconds", 0.0))
        finally:
            if self.tb is not None:
                self.tb.close()
        if self.dist.enabled:
            self._check_replicas()
            distributed.cleanup()
        return row

    def _finished_already(self) -> dict:
        """``--resume`` of a finished run: report its numbers, change nothing."""
        scores = [r["val_score"] for r in self.history if math.isfinite(r.get("val_score", math.nan))]
        row = self.history[-1] if self.history else {}
        best = self.best_score if math.isfinite(self.best_score) else max(scores, default=math.nan)
        log.info("%s already finished its %d epochs: last %s %.4f, best %.4f; nothing to do",
                 self.out, self.cfg.epochs, self.task.score_name, row.get("val_score", math.nan), best)
        if self.dist.enabled:
            distributed.cleanup()
        return row

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """SIGINT/SIGTERM set :attr:`_stop`; the loop stops at the next step boundary with a checkpoint.
        A second signal stops at once (the last checkpoint on disk stays intact). Single process in
        the main thread only: under torchrun the signals keep their default effect and the run
        resumes from its last finished epoch."""
        if self.dist.enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop is not None:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            self._stop = signum
            with contextlib.suppress(OSError):
                os.write(2, f"\n{signal.Signals(signum).name}: finishing the current step, then saving a "
                            f"checkpoint (send it again to stop at once)\n".encode())

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                if h is not None:
                    signal.signal(s, h)

    def _interrupted(self, state: dict | None) -> None:
        """Save ``state`` (the position inside an epoch; None: the checkpoint on disk is current), raise."""
        latest = self.out / LATEST
        if state is not None and self.dist.is_main:
            self.save_checkpoint(latest, partial=state)
            where = (f"saved the state at epoch {self.epoch + 1}, step {state['step']}/{state['total']} "
                     f"to {latest}")
        elif latest.exists():
            where = f"{latest} holds the state to resume from"
        else:
            where = "no checkpoint yet: --resume starts the run from the beginning"
        log.info("interrupted: %s; resume with: medl2b train --out %s --resume", where, shlex.quote(str(self.out)),
                 extra={"file_only": True})  # the caller (the CLI) tells the user
        raise RunInterrupted(self._stop or signal.SIGINT, latest, where)

    def _check_replicas(self) -> None:
        """After a distributed run, every process must hold the same weights."""
        checksum = torch.tensor([sum(float(p.detach().double().sum()) for p in self.model.parameters())],
                                dtype=torch.float64, device=self.device)
        gathered = [torch.zeros_like(checksum) for _ in range(self.dist.world)]
        dist.all_gather(gathered, checksum)
        values = [float(g) for g in gathered]
        if max(values) - min(values) > 1e-6 * max(1.0, abs(values[0])):
            raise TrainingError(f"distributed replicas diverged: weight checksums {values}")
        log.info("all %d processes hold identical weights (checksum %.6f)", self.dist.world, values[0])

    def _loaders(self, seed: int):
        cfg = self.cfg
        gen = torch.Generator().manual_seed(seed)
        n = len(self.task.train_set)
        sampler = None
        if self.dist.enabled and cfg.train_balance:
            raise InputError("config", "train_balance is not supported under torchrun yet; train on one process")
        if self.dist.enabled:  # every process takes its own share; batch_size is per process
            sampler = DistributedSampler(self.task.train_set, num_replicas=self.dist.world, rank=self.dist.rank,
                                         shuffle=True, seed=seed, drop_last=True)
        elif cfg.train_balance:  # every given class drawn equally often, with replacement
            classes = self.task.train_classes()
            counts = np.bincount(classes)
            sampler = WeightedRandomSampler(torch.as_tensor(1.0 / counts[classes], dtype=torch.double), n,
                                            replacement=True, generator=gen)
        pin = self.device.type == "cuda"  # page-locked batches, copied with non_blocking=True in train_step
        collate = getattr(self.task, "collate", None)  # segmentation: items differ in size, padded per batch
        train = DataLoader(self.task.train_set, batch_size=min(cfg.batch_size, n), shuffle=sampler is None,
                           sampler=sampler, drop_last=True, generator=gen, num_workers=cfg.num_workers,
                           pin_memory=pin, persistent_workers=cfg.num_workers > 0, collate_fn=collate)
        meta_ds = self.task.meta_set
        if cfg.meta_set == "gmm" and self.online_meta is not None:
            meta_ds = Subset(self.task.train_set, self.online_meta.tolist())
        meta = None
        classes = self.task.meta_classes() if cfg.meta_balance and meta_ds is self.task.meta_set else None
        if classes is not None and len(classes) > 0:  # every class in every meta batch
            batches = ClassBalancedBatches(classes, cfg.meta_batch_size, generator=torch.Generator().manual_seed(
                seed + 3 + 7919 * self.dist.rank))
            meta = iter(DataLoader(meta_ds, batch_sampler=batches, num_workers=cfg.num_workers, pin_memory=pin,
                                   collate_fn=collate))
        elif meta_ds is not None and len(meta_ds) > 0:
            meta = _forever(DataLoader(meta_ds, batch_size=min(cfg.meta_batch_size, len(meta_ds)), shuffle=True,
                                       generator=torch.Generator().manual_seed(seed + 3 + 7919 * self.dist.rank),
                                       num_workers=cfg.num_workers, pin_memory=pin, collate_fn=collate))
        return train, meta

    def train_epoch(self, seed: int, partial: dict | None = None) -> EpochStats:
        """One epoch; ``partial`` (from an interrupted run's checkpoint) continues it at a step boundary."""
        cfg = self.cfg
        started = time.time()
        train, meta = self._loaders(seed)
        warm = cfg.in_warmup(self.epoch, [row["val_score"] for row in self.history])
        if self.method.uses_meta and not warm and self.history and self.history[-1].get("warmup") and not partial:
            log.info("epoch %d: warm-up over, the meta step starts", self.epoch + 1)
        use_meta = self.method.uses_meta and not warm
        if use_meta and meta is None:
            raise TrainingError(f"{cfg.method} needs a meta set, but it is empty (meta_set={cfg.meta_set})")
        total = len(train) if cfg.steps_per_epoch is None else min(cfg.steps_per_epoch, len(train))
        stats = EpochStats(warmup=warm)
        batches = iter(train)
        first = drawn = 0
        if partial is not None:
            first, drawn = self._continue_epoch(partial, stats, batches, meta)
        self._diagnostics = _Diagnostics(stats, self.device)  # the weight sums, on the device until the epoch ends
        self.model.train()
        bar = self._progress(total, first)
        for step in range(first, total):
            if self._stop is not None:  # a step boundary: save the exact state here and stop
                if bar is not None:
                    bar[0].stop()
                self._diagnostics.read_into(stats)
                self._interrupted(None if step == first else {
                    "step": step, "total": total, "meta_drawn": drawn, "stats": dataclasses.asdict(stats),
                    "record_epoch": self.record.epoch_state(), "meta_grad": self.step_module.meta_grad_state(),
                    "seconds": time.time() - started + (partial or {}).get("seconds", 0.0)})
            batch = next(batches)
            refresh = step % cfg.meta_every == 0
            meta_batch = None
            if use_meta and refresh:
                meta_batch = next(meta)
                drawn += 1
            self.train_step(batch, meta_batch, stats, warm=warm, step=step, refresh=refresh)
            if bar is not None:
                bar[0].update(bar[1], advance=1, description=self._describe(stats))
            elif (step + 1) % cfg.log_every == 0 or step + 1 == total:
                log.info("epoch %d step %d/%d %s", self.epoch + 1, step + 1, total, self._describe(stats))
        if bar is not None:
            bar[0].stop()
        self._diagnostics.read_into(stats)  # once per epoch: the only host sync of the weight diagnostics
        return stats

    def _continue_epoch(self, partial: dict, stats: EpochStats, batches, meta) -> tuple[int, int]:
        """Bring a fresh epoch to the step where an interrupted one stopped: replay the loaders' first
        batches (same seeds, same order), then restore the running sums, the reused meta gradient and
        the RNG states saved at that step. Returns ``(first step, meta batches drawn)``."""
        first, drawn = int(partial["step"]), int(partial["meta_drawn"])
        for _ in range(first):
            next(batches)
        for _ in range(drawn):
            next(meta)
        for key, value in partial["stats"].items():
            setattr(stats, key, value)
        self.record.load_epoch_state(partial["record_epoch"])
        self.step_module.load_meta_grad_state(partial["meta_grad"], self.device)
        set_rng_state(partial["rng"])
        log.info("epoch %d continues at step %d/%d", self.epoch + 1, first + 1, partial["total"])
        return first, drawn

    def _progress(self, total: int, done: int = 0):
        if not self.progress or not self.dist.is_main:
            return None
        progress = Progress(TextColumn(f"epoch {self.epoch + 1}/{self.cfg.epochs}"), BarColumn(),
                            MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.description}"),
                            transient=False)
        progress.start()
        return progress, progress.add_task("", total=total, completed=done)

    def _describe(self, s: EpochStats) -> str:
        text = f"loss {s.loss / max(s.steps, 1):.4f}"
        if s.meta_steps:
            text += f" meta {s.meta_loss / s.meta_steps:.4f} skipped {s.skipped}"
        return text

    def _autocast(self, *, meta: bool = False):
        """bf16 autocast on CUDA; for a meta step only with ``meta_amp`` and never in the first epoch: at
        initialisation, train-mode batch norms amplify bf16 rounding until the weights are noise (ResNet-50,
        EfficientNet-Lite0; BENCHMARKS.md, issue 38). The CPU runs float32 throughout."""
        if self.amp_dtype is None or (meta and (not self.cfg.meta_amp or self.epoch == 0)):
            return torch.autocast("cpu", enabled=False)
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def train_step(self, batch: dict, meta_batch: dict | None, stats: EpochStats, *, warm: bool, step: int,
                   refresh: bool = True) -> None:
        """One optimisation step of the configured method (plain CE during warm-up). ``refresh=False``
        (``meta_every`` > 1): weigh the batch with the last meta gradient, without a meta batch."""
        cfg = self.cfg
        index = batch.get("index")
        batch = self.task.augment_batch({k: v.to(self.device, non_blocking=True) for k, v in batch.items()
                                         if k != "index"})
        x = self.task.input_transform(batch["image"])
        y = batch["label"]
        xm = ym = None
        if meta_batch is not None:
            meta_batch = self.task.augment_batch({k: v.to(self.device, non_blocking=True)
                                                  for k, v in meta_batch.items() if k != "index"})
            xm = self.task.input_transform(meta_batch["image"])
            ym = meta_batch["label"]
        trusted = batch.get("trusted") if self._trusts else None
        with self._autocast(meta=self.method.uses_meta and not warm):
            loss, weights, losses, meta_out = self.engine(x, y, xm, ym, lr=self.optimizer.param_groups[0]["lr"],
                                                          warm=warm, refresh=refresh, trusted=trusted)
        skipped = meta_out is not None and meta_out.skipped
        if meta_out is not None and meta_out.fresh:
            stats.meta_loss += meta_out.meta_loss
            stats.meta_steps += 1
        plain = float(losses[0].detach().float().mean())
        bad = not (math.isfinite(plain) and math.isfinite(float(loss.detach())))
        if self.dist.enabled:  # agree across processes before DDP's backward
            n_bad, n_skipped = distributed.any_flags(bad, skipped, device=self.device)
            bad, skipped = n_bad > 0, n_skipped == self.dist.world
        if bad:
            raise TrainingError(f"loss is NaN/inf at epoch {self.epoch + 1} step {step + 1}; training stopped. "
                                f"The last good checkpoint is {self.out / 'checkpoint_latest.pt'}")
        self.optimizer.zero_grad(set_to_none=True)
        stats.steps += 1
        stats.loss += plain
        self._record_weights(stats, weights, y, batch["clean"], trusted, losses)
        if index is not None:
            self.record.add(index, losses[0], weights if meta_out is not None else None)
        if skipped and not self.dist.enabled:
            stats.skipped += 1
            return
        loss.backward()  # under DDP every process joins the gradient all-reduce, even with zero weights
        if skipped:
            stats.skipped += 1
            return
        if cfg.clip_grad and cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], cfg.clip_grad)
        self.optimizer.step()

    def _record_weights(self, stats: EpochStats, weights, given, clean, trusted=None, losses=None) -> None:
        """Per epoch: Σα and Σβ per batch; on elements whose given label is wrong vs right (known on
        synthesised noise, so only where the dataset has the training samples' clean labels:
        ``task.train_truth``), the mean of N·α and N·β (1 = an average element's weight) and the mean
        β/(α+β) share over elements with any weight (how far the target moved to the pseudo-label).
        With two loss terms, also on wrong elements: the share whose pseudo-label differs from the given
        label (equal labels have equal losses, and α + β = 1 splits them 50/50 whatever the meta step
        says), and the β share on those alone: the meta step's own choice where it has one.
        Trusted samples (clean cases trained on, fixed weights) are left out of the wrong/right means.

        Off the step's hot path: the sums stay on the device (:class:`_Diagnostics`, no host sync per
        step) and are read once per epoch. A user's own labels have no truth: the wrong/right columns
        are then left empty rather than computed against the given labels."""
        if self._diagnostics is None:  # a step outside train_epoch (tests)
            self._diagnostics = _Diagnostics(stats, self.device)
        acc = self._diagnostics
        with torch.no_grad():
            n = weights[0].numel()
            alpha = weights[0].float()
            beta = weights[1].float() if len(weights) > 1 else torch.zeros_like(alpha)
            acc.add("alpha_sum", alpha.sum())
            acc.add("beta_sum", beta.sum())
            if not self.task.train_truth:
                return
            total = alpha + beta
            share = beta / total.clamp_min(torch.finfo(total.dtype).tiny)
            wrong = given != clean
            noisy = torch.ones_like(wrong)
            if trusted is not None:
                noisy = ~trusted.to(wrong.device).bool().reshape(-1, *([1] * (wrong.ndim - 1))).expand_as(wrong)
            for name, w, valid in (("alpha", alpha * n, None), ("beta", beta * n, None),
                                   ("beta_share", share, total > 0)):
                for part, mask in (("wrong", wrong & noisy), ("right", ~wrong & noisy)):
                    if valid is not None:
                        mask = mask & valid
                    acc.add(f"{name}_on_{part}", w, mask)
            if losses is not None and len(losses) > 1:
                differ = (losses[0].detach() != losses[1].detach()) & wrong & noisy
                acc.add("pseudo_differs_on_wrong", differ, wrong & noisy)
                acc.add("beta_share_on_wrong_differ", share, differ & (total > 0))

    def validate(self) -> float:
        """Score on the clean validation (meta) cases: mean 3-D Dice or accuracy."""
        return self.task.validate(self.model, self.device)

    def on_epoch_end(self, stats: EpochStats, score: float, seconds: float) -> dict:
        cfg = self.cfg
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.epoch += 1
        self.record.end_epoch(
            reduce=(lambda t: distributed.sum_in_place(t, self.device)) if self.dist.enabled else None)
        quality: dict = {}
        if cfg.uses_meta and cfg.meta_set == "gmm" and self.epoch >= cfg.warmup_epochs and self.epoch < cfg.epochs:
            losses = self.task.sample_losses(self.model, self.device)
            candidates = self.task.meta_candidates()
            chosen, _ = select_clean(losses[candidates], threshold=cfg.gmm_threshold, seed=cfg.seed + self.epoch)
            self.online_meta = candidates[chosen]
            quality = self.task.selection_quality(self.online_meta, candidates)
            log.info("online meta set: %d of %d candidate samples, precision %.3f (candidates' rate %.3f)",
                     quality["meta_size"], len(candidates), quality["meta_precision"], quality["meta_base_rate"])
        steps = max(stats.steps, 1)
        row = {"epoch": self.epoch, "warmup": int(stats.warmup), "lr": lr, "train_loss": stats.loss / steps,
               "meta_loss": stats.meta_loss / stats.meta_steps if stats.meta_steps else float("nan"),
               "alpha_sum": stats.alpha_sum / steps, "beta_sum": stats.beta_sum / steps,
               **{k: (v[0] / v[1] if v[1] else float("nan")) for k, v in stats.split.items()},
               "skipped_steps": stats.skipped, "steps": stats.steps, "val_score": score,
               "meta_size": quality.get("meta_size", float("nan")),
               "meta_precision": quality.get("meta_precision", float("nan")),
               "meta_base_rate": quality.get("meta_base_rate", float("nan")), "time_s": seconds}
        self.history.append(row)
        select = cfg.meta_set == "clean" and math.isfinite(score)
        improved = select and score > self.best_score
        if improved:
            self.best_score = score
        if not self.dist.is_main:
            return row
        self.save_checkpoint(self.out / LATEST)
        self._write_metrics()
        if improved or not select:
            copy_durably(self.out / LATEST, self.out / BEST)
        log.info("epoch %d/%d  loss %.4f  meta %.4f  alpha %.3f beta %.3f  skipped %d  %s %.4f%s  %.1fs",
                 self.epoch, cfg.epochs, row["train_loss"], row["meta_loss"], row["alpha_sum"], row["beta_sum"],
                 stats.skipped, self.task.score_name, score, " *" if improved else "", seconds)
        if self.tb is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key, value, self.epoch)
        return row

    def _write_metrics(self) -> None:
        with atomic_file(self.out / "metrics.csv") as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            for row in self.history:
                writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: Path, partial: dict | None = None) -> None:
        """Write the state durably (:mod:`medl2b.train.checkpoint`); ``partial``: the position inside an
        epoch of an interrupted run (None at an epoch's end)."""
        state = checkpoint_state(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                 epoch=self.epoch, best_score=self.best_score, history=self.history,
                                 config=self.cfg.to_dict(), num_classes=self.task.num_classes,
                                 in_channels=self.task.in_channels, online_meta=self.online_meta,
                                 record=self.record.state_dict(), partial=partial)
        rotate = path.name == LATEST and self._rotate
        save_durably(state, path, previous=path.with_name(PREVIOUS) if rotate else None)
        self._rotate = True

    def _replan(self, trained_for: int) -> None:
        """``--epochs`` on ``--resume`` (:mod:`medl2b.train.resume`): continue to ``cfg.epochs`` instead of the
        ``trained_for`` the run was started with; the cosine schedule is re-planned over the new total from
        the current epoch."""
        new = self.cfg.epochs
        sched = self.scheduler
        sched.T_max = new
        for group, base in zip(self.optimizer.param_groups, sched.base_lrs):
            group["lr"] = _closed_form_lr(base, sched.eta_min, self.epoch, new)
        sched._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self._replanned = trained_for
        log.info("--epochs %d: the run had %d epochs and has trained %d; it continues to %d, the cosine schedule "
                 "re-planned over %d epochs (lr now %.4g)", new, trained_for, self.epoch, new, new,
                 self.optimizer.param_groups[0]["lr"])

    def load_checkpoint(self, path: Path) -> None:
        """Continue from the checkpoint at ``path`` (an :class:`InputError` naming it when it does not read)."""
        state = read_checkpoint(path, self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.best_score = float(state["best_score"])
        self.history = list(state["history"])
        self.online_meta = None if state["online_meta"] is None else np.asarray(state["online_meta"])
        if "record" in state:  # runs from before the record start a fresh one
            recorded = int(state["record"]["totals"].shape[1])
            if recorded != len(self.record):
                message = (f"recorded {recorded} training samples, but method {self.cfg.method} trains on "
                           f"{len(self.record)} here")
                if recorded == len(self.record) - self.task.trusted_samples():  # all but its trusted cases
                    raise InputError("--method", f"{path} {message}; "
                                                 + PURE_BEFORE.format(config=self.out / "config.yaml"))
                raise InputError(path, f"{message}: is it the dataset the run trained on?")
            self.record.load_state_dict(state["record"])
        set_rng_state(state["rng"])
        self._trained_for = int((state.get("config") or {}).get("epochs", self.cfg.epochs))
        if self._trained_for != self.cfg.epochs and self.cfg.epochs < self.epoch:
            raise InputError("--epochs", f"{self.out} has trained {self.epoch} epochs already; --epochs "
                                         f"{self.cfg.epochs} would take them back (give at least that many)")
        partial = state.get("partial")
        self._partial = None if partial is None else {**partial, "rng": state["rng"]}
        log.info("resumed from %s at epoch %d%s", path, self.epoch,
                 "" if partial is None else f", step {partial['step']}/{partial['total']}")


class _Diagnostics:
    """The per-epoch weight diagnostics of :meth:`Trainer._record_weights` as running float64 sums on the
    device: no host sync per step; :meth:`read_into` copies them into the epoch's stats once (at the
    epoch's end, or when an interrupted epoch saves its state). Started from the stats' own values, so an
    epoch resumed mid-way adds in the same order as an uninterrupted one."""

    def __init__(self, stats: EpochStats, device) -> None:
        self.keys = ["alpha_sum", "beta_sum", *stats.split]
        values = [[stats.alpha_sum, 0.0], [stats.beta_sum, 0.0], *([float(v[0]), float(v[1])]
                                                                   for v in stats.split.values())]
        self.sums = torch.tensor(values, dtype=torch.float64, device=device)
        self.row = {k: i for i, k in enumerate(self.keys)}

    def add(self, key: str, values: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add ``values.sum()`` (where ``mask``; the float32 sum of each step, as a plain sum would give it)
        and the count of elements summed."""
        row = self.sums[self.row[key]]
        if mask is None:
            row[0] += values.sum().double()
            return
        row[0] += torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum().double()
        row[1] += mask.sum().double()

    def read_into(self, stats: EpochStats) -> None:
        values = self.sums.tolist()
        stats.alpha_sum, stats.beta_sum = values[0][0], values[1][0]
        for key, (total, count) in zip(self.keys[2:], values[2:]):
            stats.split[key] = [total, int(count)]


def _network_name(cfg: TrainConfig) -> str:
    """``efficientnet-lite0 (ImageNet weights: imagenet)`` / ``resnet50 (from scratch)``, for the run log."""
    if cfg.is_segmentation and cfg.arch == "unetpp":  # MONAI's UNet++, always from scratch
        return cfg.arch
    return f"{cfg.arch} ({'ImageNet weights: ' + str(cfg.pretrained) if cfg.pretrained else 'from scratch'})"


def _closed_form_lr(base: float, eta_min: float, epoch: int, epochs: int) -> float:
    """The cosine schedule's learning rate at ``epoch`` of ``epochs``."""
    return eta_min + (base - eta_min) * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool | None = None,
          asked: dict | None = None) -> dict:
    """Train one run, holding the run folder's lock; return the final epoch's metrics row.

    ``resume``: continue from the run's last intact checkpoint; with none yet, start from the
    beginning (a warning); on a finished run, report it and do nothing. A process restarted by
    ``torchrun --max-restarts`` (``TORCHELASTIC_RESTART_COUNT`` > 0) resumes on its own.
    ``asked``: the settings the resuming command line gives explicitly
    (:func:`medl2b.train.resume.explicit_settings`): each is applied where that is safe (``epochs``
    extends the run) or refused with one line (:func:`medl2b.train.resume.resume_config`); None: the
    run's own configuration, unchanged.
    """
    if cfg.out is None:
        raise InputError("--out", "a run folder is required")
    if not resume and int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0) > 0:
        resume = True  # torchrun restarted the workers after a failure: continue from the last checkpoint
    out = Path(cfg.out)
    with run_lock(out, what="train"):
        if os.environ.get("RANK", "0") == "0":
            remove_leftovers(out)
        if resume and (out / "config.yaml").exists():
            saved = load_config_file(out / "config.yaml", device=cfg.device)
            started = (out / LATEST).exists() or (out / PREVIOUS).exists()
            cfg = saved if asked is None else resume_config(saved, asked, started=started, where=out)
        return Trainer(cfg, resume=resume, progress=progress).fit()
