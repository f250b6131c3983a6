"""Multi-process training through PyTorch's own engine: ``torchrun`` + ``DistributedDataParallel``.

Launch as usual::

    torchrun --nproc_per_node=4 $(which medl2b) train --task prostate-seg --data ... --out ...

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`setup` then joins the
process group (NCCL on CUDA, Gloo on CPU). What the trainer does with several processes:

* the training set is split with ``DistributedSampler``; ``batch_size`` is per process;
* the whole step (meta step included) is DDP's forward (:class:`~medl2b.train.step.StepModule`),
  so DDP averages the real step's gradients;
* the fast meta step averages the meta gradient ``v`` over processes
  (:func:`average_in_place`); the reference implementation uses each process's own meta batch;
* a step is skipped only when every process's weights are all zero; a NaN on any process
  stops all of them;
* only rank 0 writes the run folder and logs;
* with ``torchrun --max-restarts N`` a run whose worker died resumes from its last checkpoint
  (the trainer sees ``TORCHELASTIC_RESTART_COUNT`` > 0), each restart on its own store prefix.
"""

from __future__ import annotations

import os
from datetime import timedelta
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "setup", "average_in_place", "any_flags", "cleanup"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``world == 1`` means a plain single-process run."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> DistInfo:
    """Join the process group if launched by ``torchrun`` (``WORLD_SIZE > 1``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", "0")), world=world)
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            dist.init_process_group(backend=backend, store=_restart_store(world), rank=info.rank, world_size=world)
        else:
            dist.init_process_group(backend=backend)
    return info


def _restart_store(world: int) -> dist.Store:
    """torchrun's own store, under a prefix per restart. torchrun shares its rendezvous store with the
    workers and keeps it over ``--max-restarts`` restarts, so restarted workers would read the keys
    of the killed ones (the peers' old addresses: Gloo then hangs in its connect)."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timedelta(minutes=30))
    return dist.PrefixStore(f"medl2b/restart_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def average_in_place(tensors: list[torch.Tensor]) -> None:
    """All-reduce and average a list of tensors over the process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def sum_in_place(tensor: torch.Tensor, device: torch.device) -> None:
    """All-reduce (sum) one tensor over the process group, through ``device`` (NCCL needs CUDA tensors)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    buf = tensor.to(device)
    dist.all_reduce(buf)
    tensor.copy_(buf.to(tensor.device))


def any_flags(*flags: bool, device: torch.device) -> list[int]:
    """Sum boolean flags over processes (how many processes raised each one)."""
    values = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return [int(v) for v in values.tolist()]


def cleanup() -> None:
    """Leave the process group together: a barrier first, so that no process tears down its Gloo
    pairs while another still talks to it (seen as a rare SIGABRT at exit under load)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
