"""The trainer, data parallel: :class:`DataParallelTrainer` runs in every rank of a torchrun job
and replaces the parts of :class:`fastme.train.trainer.Trainer` that depend on there being
several processes (batch and metric semantics: :mod:`fastme.distributed.data_parallel`).

- Training: rank r reads and trains on part r of every global batch (``batch_size`` rows, the
  single-process order) through DDP; ranks that run out of rows in the last batch join the
  remaining all-reduces with zeros (``DistributedDataParallel.join``).
- Validation and test: every rank scores a contiguous part of the set; the logits are gathered
  so AUC and log loss are over the whole set and identical on every rank.
- Files: rank 0 alone writes last.pt, best.pt and results.json (which records ``world_size``).
  Checkpoints hold the plain model's state dict (no ``module.`` prefix), so a run resumes with any
  world size and its checkpoints load into a plain model. Callbacks (the per-epoch information
  abundance) get the plain model.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch
import torch.distributed as dist

from fastme.data.dataset import CTRData
from fastme.distributed import data_parallel as dp
from fastme.train.batches import batch_bounds, iterate_batches
from fastme.train.precision import autocast
from fastme.train.trainer import Trainer, predict_logits, scores


class DataParallelTrainer(Trainer):
    """:class:`Trainer` for one rank of a data-parallel job; ``ranks`` from
    :func:`fastme.distributed.data_parallel.init`. ``config.device`` is replaced by the rank's
    device. Same arguments and results otherwise.

    The embedding table's gradient stays dense: DDP all-reduces a sparse gradient only through
    gloo (NCCL has no sparse all-reduce, pytorch#22400) and only for ``nn.Embedding(sparse=True)``
    modules, so the sparse table optimizers are refused and ``adam`` runs on the dense gradient
    (the same update)."""

    sparse_table_gradients = False

    def __init__(self, model, data, config, *, ranks: dp.Ranks, **kwargs):
        if config.table_optimizer != "adam":
            raise ValueError(
                f"table_optimizer {config.table_optimizer} is not supported in data-parallel "
                f"training (DDP cannot all-reduce the table's sparse gradient over NCCL); use "
                f"adam, or train in one process"
            )
        if config.batch_size % ranks.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} must be a multiple of the world size "
                f"{ranks.world_size} (each rank trains on an equal part of a batch)"
            )
        self.ranks = ranks
        config = dataclasses.replace(
            config,
            device=str(ranks.device),
            verbose=config.verbose and ranks.is_main,
            progress=config.progress and ranks.is_main,
        )
        super().__init__(model, data, config, **kwargs)
        self.train_module = dp.wrap(self.model, self.device)

    def describe(self) -> dict:
        return {**super().describe(), "world_size": self.ranks.world_size}  # processes in the job

    # -- training ---------------------------------------------------------------------------------
    def train_batches(self, rows: np.ndarray):
        """This rank's part of every global batch (the single-process batches, a last batch of one
        row merged into the one before), weighted so that DDP's gradient average is the global
        batch's gradient. Reads only this rank's rows."""
        rank, world = self.ranks.rank, self.ranks.world_size
        bounds = batch_bounds(len(rows), self.config.batch_size, merge_single_tail=True)
        parts, sizes = [], []
        for start, stop in zip(bounds, bounds[1:]):
            part = rows[start:stop][dp.batch_part(stop - start, rank, world)]
            if len(part):  # empty only in a last batch of fewer rows than ranks: join() covers it
                parts.append(part)
                sizes.append(stop - start)
        if not parts:
            return
        # Every full batch splits into equal parts of batch_size // world rows (batch_size is a
        # multiple of the world size), so the parts read back to back in steps of that size come
        # out one by one. A part of one row can only end the epoch; it is merged into this
        # rank's previous part, as one process merges a last batch of one row (BatchNorm cannot
        # train on one sample).
        local = np.concatenate(parts)
        local_bounds = batch_bounds(len(local), self.config.batch_size // world, True)
        batches = iterate_batches(
            self.train_set,
            local,
            self.config.batch_size // world,
            self.device,
            merge_single_tail=True,
        )
        for step, (xb, yb) in enumerate(batches):
            rows_in_step = local_bounds[step + 1] - local_bounds[step]
            yield xb, yb, dp.loss_weight(rows_in_step, sizes[step], world)

    def dropout_seed(self, epoch: int) -> int:
        """Rank 0 draws the single-process masks; every other rank its own stream. One seed for
        all ranks would give the rows of every rank's part the same masks as rank 0's."""
        single = super().dropout_seed(epoch)
        return dp.rank_seed(single, self.config.seed, epoch, self.ranks.rank)

    def train_pass(self, rows: np.ndarray, desc: str) -> float:
        with self.train_module.join():
            return super().train_pass(rows, desc)

    def sum_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        return dp.all_reduce_sum(value)

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, data: CTRData) -> dict:
        # One model scores every part (and is saved): the ranks' BatchNorm running statistics,
        # each updated from its own part of every batch, are averaged first.
        dp.average_buffers(self.model)
        if len(data) == 0:
            raise ValueError(f"cannot evaluate on {data.name}: it has no rows")
        rows = np.sort(data.row_numbers())
        mine = rows[dp.batch_part(len(rows), self.ranks.rank, self.ranks.world_size)]
        with autocast(self.config.precision, self.device):  # as the model is trained
            logits = predict_logits(
                self.model, data, mine, self.device, self.eval_batch_size, self.config.progress
            )
        gathered = dp.gather_concat(torch.from_numpy(logits).to(self.device))
        return scores(data, rows, gathered.cpu().numpy())

    # -- files: rank 0 writes, everyone reads ------------------------------------------------------
    def start_or_resume(self) -> None:
        if self.ranks.is_main or self.config.resume:
            super().start_or_resume()
        dist.barrier()  # nobody trains before rank 0 has cleared (or everyone has read) the files

    def save(self, kind: str) -> None:
        if self.ranks.is_main:
            super().save(kind)

    def test(self) -> dict:
        dist.barrier()  # rank 0's last best.pt is on disk before anyone loads it
        return super().test()

    def results(self, test: dict) -> dict:
        if self.ranks.is_main:
            return super().results(test)
        out, self.out = self.out, None  # the other ranks build the same results, write nothing
        try:
            return super().results(test)
        finally:
            self.out = out

    def lock(self):
        """Rank 0 holds the run directory's lock for the whole job."""
        return super().lock() if self.ranks.is_main else contextlib.nullcontext()


def train(model, data, config, *, ranks: dp.Ranks, lock: bool = True, **kwargs) -> dict:
    """:func:`fastme.train.train` for one rank of a data-parallel job (every rank calls it; every
    rank gets the results, rank 0 writes them)."""
    return DataParallelTrainer(model, data, config, ranks=ranks, **kwargs).run(lock)
