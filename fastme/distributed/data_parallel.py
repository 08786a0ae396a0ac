"""Data-parallel training with torch.distributed (DDP): every rank holds the whole model and
trains on its part of every batch; gradients are averaged across ranks after each backward.

Batch semantics (the same as one process): the epoch's row order is the global one of
:meth:`fastme.train.trainer.Trainer.epoch_rows`, cut into global batches of ``batch_size`` rows;
global batch t is split into ``world_size`` contiguous parts (:func:`batch_part`) and rank r
trains on part r only. Each rank weights its mean loss by its share of the batch
(:func:`loss_weight`), so DDP's average of the ranks' gradients is exactly the gradient of the
global batch's mean loss, the last (short) batch included. What differs from one process:
BatchNorm in train mode normalises each rank's part with that part's statistics unless it is a
SyncBatchNorm, which torch provides for CUDA only (:func:`wrap` converts on GPU), and each rank
draws its own dropout masks (:func:`rank_seed`). The ranks' BatchNorm running statistics are
averaged before every evaluation (:func:`average_buffers`), so one model is scored and saved.

Validation and test are split the same way; the logits are gathered so that AUC and log loss are
those of the whole set, computed identically on every rank (early stopping agrees everywhere).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

#: Set by torchrun (and by any launcher following its convention).
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0, the only one that writes files."""
        return self.rank == 0


def launched_distributed() -> bool:
    """True in a process started by torchrun (or anything setting WORLD_SIZE) with more than one
    process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str | torch.device = "auto") -> Ranks:
    """Join the job described by torchrun's environment: process group with gloo (CPU) or nccl
    (CUDA), and this rank's device (``cuda:<LOCAL_RANK>`` on GPU). ``device``: "auto", "cpu" or
    "cuda" (a device index is replaced by the local rank)."""
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing and not dist.is_initialized():
        raise ValueError(
            f"not started by torchrun: {', '.join(missing)} unset; launch with "
            "`torchrun --nproc_per_node N -m fastme train ...`"
        )
    kind = (
        torch.device(device).type
        if str(device) != "auto"
        else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda requested but CUDA is not available here")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"local rank {local} but only {torch.cuda.device_count()} CUDA "
                "device(s): use --nproc_per_node <= the GPU count"
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    elif kind == "cpu":
        dev = torch.device("cpu")
    else:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if kind == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), dev)


def batch_part(length: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous part of a global batch of ``length`` rows; the first
    ``length % world_size`` ranks get one row more. A rank's part may be empty."""
    base, extra = divmod(length, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def loss_weight(local_rows: int, global_rows: int, world_size: int) -> float:
    """Factor on a rank's mean loss so that the average over ranks of the gradients (what DDP
    computes) is the gradient of the global batch's mean loss."""
    return local_rows * world_size / global_rows


def wrap(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``model`` (already on ``device``) in DDP. On CUDA its BatchNorms become SyncBatchNorm first
    (in place: same parameters and state-dict keys), so train-mode statistics are over the global
    batch; CPU has no SyncBatchNorm in torch."""
    if device.type == "cuda":
        # Replaces the BatchNorm children in place when the root is not itself a BatchNorm.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index], **_RANK_LOCAL_BUFFERS)
    return DistributedDataParallel(model, **_RANK_LOCAL_BUFFERS)


# Each rank keeps the running statistics of its own parts of the batches, and
# :func:`average_buffers` makes them one model before it is evaluated or saved. DDP's default
# overwrites them with rank 0's before every step: the statistics of rank 0's parts alone. (torch
# 2.13 renamed the option; the GPU machine's torch 2.11 knows only the old name.)
_RANK_LOCAL_BUFFERS = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)


def rank_seed(single_process_seed: int, seed: int, epoch: int, rank: int) -> int:
    """The seed of rank ``rank``'s random draws (dropout) in ``epoch``: rank 0 keeps the single
    process's, every other rank gets a stream of its own from (seed, epoch, rank)."""
    if rank == 0:
        return int(single_process_seed)
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1)[0])


def average_buffers(model: nn.Module) -> None:
    """Replace every floating-point buffer (BatchNorm running mean and variance) by its mean over
    ranks, in place. The running mean is an exponential average, linear in the batch means, so
    the mean over ranks of parts of equal size is the running mean of the whole batches."""
    if not dist.is_initialized():
        return
    world = dist.get_world_size()
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(world)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper (its state dict has no ``module.`` prefix)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` over ranks (a new tensor; no-op without a process group)."""
    out = value.clone()
    if dist.is_initialized():
        dist.all_reduce(out)
    return out


def gather_concat(part: torch.Tensor) -> torch.Tensor:
    """The ranks' 1-D ``part``s (any lengths) concatenated in rank order, on every rank."""
    if not dist.is_initialized():
        return part
    world = dist.get_world_size()
    length = torch.tensor([len(part)], device=part.device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    longest = int(max(n.item() for n in lengths))
    padded = part.new_zeros(longest)
    padded[: len(part)] = part
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(n.item())] for p, n in zip(parts, lengths)])


class main_rank_first:
    """``with main_rank_first(ranks): ...`` runs the block on rank 0 before the other ranks (e.g.
    building a data cache that the others then read). ``ranks`` None: just runs it."""

    def __init__(self, ranks: Ranks | None):
        self.ranks = ranks

    def __enter__(self):
        if self.ranks is not None and not self.ranks.is_main:
            dist.barrier()

    def __exit__(self, *exc):
        if self.ranks is not None and self.ranks.is_main and exc[0] is None:
            dist.barrier()
        return False
