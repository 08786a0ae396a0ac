"""Measure what one training step really communicates, next to :mod:`fastme.distributed.cost`'s
estimate: DDP's all-reduced gradient bytes (a communication hook counts every bucket), the bytes
TorchRec's all-to-alls send to other ranks (every ``all_to_all_single`` call counted) and the
table bytes each rank holds.

Run on any number of CPU ranks (or GPUs)::

    torchrun --nproc_per_node 2 -m fastme.distributed.measure --model dcnv2 --scale 4

The vocabulary is small (``--rows-per-field``); the estimate is evaluated at the same sizes, so
the two columns compare like for like. docs/distributed.md has the numbers measured with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fastme.distributed import cost
from fastme.distributed import data_parallel as dp
from fastme.models import build


@contextlib.contextmanager
def count_all_to_all(counter: list):
    """Add to ``counter[0]`` the bytes this rank sends to *other* ranks in every
    ``torch.distributed.all_to_all_single`` while the context is open."""
    original = dist.all_to_all_single

    def counting(
        output, input, output_split_sizes=None, input_split_sizes=None, group=None, async_op=False
    ):
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        row = input.element_size() * (input[0].numel() if input.dim() > 1 else 1)
        splits = input_split_sizes or [input.shape[0] // world] * world
        counter[0] += row * (sum(splits) - splits[rank])
        return original(output, input, output_split_sizes, input_split_sizes, group, async_op)

    dist.all_to_all_single = counting
    try:
        yield counter
    finally:
        dist.all_to_all_single = original


def _counting_allreduce_hook(counter: list):
    def hook(state, bucket):
        counter[0] += bucket.buffer().numel() * bucket.buffer().element_size()
        fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
        world = dist.get_world_size()
        return fut.then(lambda f: f.value()[0].div_(world))

    return hook


def _batch(field_dims, batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.stack([torch.randint(0, d, (batch_size,), generator=g) for d in field_dims], 1)
    return x, torch.randint(0, 2, (batch_size,), generator=g).float()


def measure_step(
    name: str, field_dims, scale: int, batch_size: int, strategy: str, **model_options
) -> dict:
    """One forward+backward step of the ME model on this group; every rank gets the same dict:
    measured bytes (summed over ranks where it says so) and the estimate at the same sizes."""
    ranks, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build(name, field_dims, scale, multi=True, **model_options)
    dense = sum(p.numel() for p in model.parameters()) - model.embedding.weight.numel()
    x, y = _batch(field_dims, batch_size, seed=1)
    part = dp.batch_part(batch_size, ranks, world)
    allreduced, alltoall = [0], [0]
    if strategy == "ddp":
        wrapped = dp.wrap(model, device)
        wrapped.register_comm_hook(None, _counting_allreduce_hook(allreduced))
        table = model.embedding.weight.numel() * model.embedding.weight.element_size()
    else:
        from fastme.distributed import torchrec as ftr  # needs the optional TorchRec install

        wrapped = ftr.shard(ftr.TorchRecModel(model), strategy, device=device)
        wrapped._dmp_wrapped_module.register_comm_hook(None, _counting_allreduce_hook(allreduced))
        table = sum(
            s.tensor.numel() * s.tensor.element_size()
            for v in wrapped.state_dict().values()
            if hasattr(v, "local_shards")
            for s in v.local_shards()
        )
    with count_all_to_all(alltoall):
        F.binary_cross_entropy_with_logits(wrapped(x[part]), y[part]).backward()
    sent = dp.all_reduce_sum(torch.tensor([float(alltoall[0])]))
    tables = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(tables, torch.tensor([float(table)]))
    estimate = cost.step_cost(
        field_dims, model.num_sets, model.embed_dim, dense, batch_size, world, strategy
    )
    return {
        "strategy": strategy,
        "world_size": world,
        "model": name,
        "scale": scale,
        "batch_size": batch_size,
        "measured": {
            "allreduce_bytes": float(allreduced[0]),
            "alltoall_bytes": float(sent.item()),
            "table_bytes_per_rank": float(max(t.item() for t in tables)),
        },
        "estimated": {
            k: getattr(estimate, k)
            for k in ("allreduce_bytes", "alltoall_bytes", "table_bytes_per_rank")
        },
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fastme.distributed.measure", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--model", default="dcnv2")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--fields", type=int, default=39)
    p.add_argument("--rows-per-field", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden-dim", type=int, default=400)
    p.add_argument("--strategies", default="ddp,table_wise,column_wise")
    args = p.parse_args(argv)
    dp.init("cpu")
    field_dims = [args.rows_per_field] * args.fields
    for strategy in args.strategies.split(","):
        result = measure_step(
            args.model,
            field_dims,
            args.scale,
            args.batch_size,
            strategy,
            hidden_dim=args.hidden_dim,
        )
        if dist.get_rank() == 0:
            print(json.dumps(result), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
