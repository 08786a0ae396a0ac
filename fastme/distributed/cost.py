"""What one training step costs in communication and memory under data parallel (DDP) and under
TorchRec model-parallel tables, so a user can choose before buying GPUs (docs/distributed.md).

Conventions (the same as :mod:`fastme.ops.cost`: ``elem`` float bytes, ``index`` index bytes):
- ``batch_size`` is the *global* batch (all ranks together); W is the world size.
- ``allreduce_bytes``: the gradient payload DDP all-reduces each step. fastme's table gradient is
  dense ([rows, M, K], see fastme.ops.cost), so under DDP the whole table's gradient is reduced
  every step whatever the batch touched. Under sharding only the dense (non-embedding) part is.
  A ring all-reduce sends ``2 (W - 1) / W`` times the payload out of every rank.
- ``alltoall_bytes``: what the embedding all-to-alls move between ranks each step, all ranks
  together: the ids to the ranks owning the tables (forward), the gathered embeddings back to the
  ranks owning the samples (forward) and their gradients the other way (backward). Every column
  shard needs the ids of every sample of its table, so ids go to each shard (M*K / shard width of
  them, :func:`default_column_shard_dim`).
- ``memory_per_rank``: parameters, their gradients and Adam's two moments (the trainer's
  optimizer) of what the fullest rank holds, activations not counted. With TorchRec's fused
  kernel the table shard's gradient is never materialised (the update happens in the backward);
  with its "dense" kernel it is. Table-wise placement is greedy largest-first bin packing, a
  stand-in for the planner (which also balances compute), so the biggest table bounds a rank.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fastme.models import build

STRATEGIES = ("ddp", "table_wise", "column_wise", "row_wise")

#: Criteo (Kaggle) after the reference pipeline's frequency threshold of 10, 13 bucketised integer
#: fields then 26 categorical; approximate, sum about 1.09M rows (the paper's Table 4: 1.08M).
CRITEO_KAGGLE_FIELD_DIMS = (
    49,
    101,
    126,
    45,
    223,
    118,
    84,
    76,
    95,
    9,
    30,
    40,
    75,
    1458,
    555,
    193949,
    138801,
    306,
    19,
    11970,
    634,
    4,
    42646,
    5178,
    192773,
    3175,
    27,
    11422,
    181075,
    11,
    4654,
    2032,
    5,
    189657,
    18,
    16,
    59697,
    86,
    45571,
)
#: Criteo 1TB: the 26 categorical vocabularies TorchRec's DLRM example uses (about 178M rows),
#: after the same 13 bucketised integer fields as above.
CRITEO_1TB_FIELD_DIMS = CRITEO_KAGGLE_FIELD_DIMS[:13] + (
    45833188,
    36746,
    17245,
    7413,
    20243,
    3,
    7114,
    1441,
    62,
    29275261,
    1572176,
    345138,
    10,
    2209,
    11267,
    128,
    4,
    974,
    14,
    48937457,
    11316796,
    40094537,
    452104,
    12606,
    104,
    35,
)


@dataclass(frozen=True)
class StepCost:
    strategy: str
    world_size: int
    allreduce_bytes: float  # gradient payload all-reduced per step
    alltoall_bytes: float  # embedding all-to-all traffic per step, all ranks together
    sent_bytes_per_rank: float  # what one rank sends per step (ring all-reduce + its a2a share)
    table_bytes_per_rank: float  # embedding weights on the fullest rank
    memory_per_rank: float  # params + grads + Adam moments on the fullest rank

    def as_dict(self) -> dict:
        return asdict(self)


def dense_parameter_count(
    name: str, num_fields: int, scale: int = 1, multi: bool = False, **options
) -> int:
    """Parameters of a backbone outside its embedding table (they do not depend on the
    vocabulary, so the backbone is built with one row per field)."""
    model = build(name, [1] * num_fields, scale, multi, **options)
    table = model.embedding.weight.numel()
    return sum(p.numel() for p in model.parameters()) - table


def default_column_shard_dim(num_sets: int, embed_dim: int, world_size: int) -> int:
    """The column shard width fastme.distributed.torchrec asks the planner for: the widest that
    still gives every rank a shard, i.e. the largest width <= M*K / W that divides M*K and is a
    multiple of 4 (TorchRec's alignment for column shards). TorchRec's own default, 128 columns,
    would leave every ME table of M*K <= 128 unsplit."""
    dim = num_sets * embed_dim
    widths = [w for w in range(4, -(-dim // world_size) + 1, 4) if dim % w == 0]
    if not widths:
        raise ValueError(
            f"column_wise sharding cannot split a table of dimension M*K = {dim} over "
            f"{world_size} ranks (shards must be multiples of 4 columns that divide "
            "it); use table_wise"
        )
    return widths[-1]


def _table_wise_largest_rank(table_sizes, world_size: int) -> int:
    loads = [0] * world_size
    for size in sorted(table_sizes, reverse=True):
        loads[loads.index(min(loads))] += size
    return max(loads)


def step_cost(
    field_dims,
    num_sets: int,
    embed_dim: int,
    dense_params: int,
    batch_size: int,
    world_size: int,
    strategy: str = "ddp",
    *,
    fused_table_update: bool = True,
    column_shard_dim: int | None = None,
    elem: int = 4,
    index: int = 8,
) -> StepCost:
    """The estimate for one step of an SE/ME model (M = ``num_sets``, K = ``embed_dim``) with
    ``dense_params`` non-embedding parameters. See the module doc for what each number counts."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    for arg, value in (
        ("num_sets", num_sets),
        ("embed_dim", embed_dim),
        ("batch_size", batch_size),
        ("world_size", world_size),
    ):
        if int(value) != value or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    w, n, mk = int(world_size), len(field_dims), num_sets * embed_dim
    rows = sum(int(d) for d in field_dims)
    dense_bytes = dense_params * elem
    ring = 2 * (w - 1) / w  # a ring all-reduce sends this many payloads out of each rank
    adam = 2  # Adam's first and second moments
    if strategy == "ddp":
        table_bytes = rows * mk * elem
        payload = table_bytes + dense_bytes
        return StepCost(
            strategy,
            w,
            float(payload),
            0.0,
            ring * payload,
            float(table_bytes),
            float((1 + 1 + adam) * payload),
        )
    remote = (w - 1) / w  # share of the samples living on other ranks
    gathered = batch_size * n * mk * elem
    id_copies = remote  # every table's ids go to its owner
    if strategy == "column_wise":  # ... and to every column shard's owner
        width = column_shard_dim or default_column_shard_dim(num_sets, embed_dim, w)
        id_copies = remote * (mk // width)
    ids = batch_size * n * (index + 4) * id_copies  # ids and their per-sample lengths (int32)
    alltoall = ids + 2 * remote * gathered  # forward embeddings + backward gradients
    if strategy == "table_wise":
        shard = _table_wise_largest_rank([int(d) * mk * elem for d in field_dims], w)
    else:  # column-wise / row-wise: every table split evenly (the planner's goal)
        shard = rows * mk * elem / w
    table_copies = 1 + adam + (0 if fused_table_update else 1)
    memory = table_copies * shard + (1 + 1 + adam) * dense_bytes
    return StepCost(
        strategy,
        w,
        float(dense_bytes),
        float(alltoall),
        ring * dense_bytes + alltoall / w,
        float(shard),
        float(memory),
    )


def scaling_table(
    field_dims,
    name: str = "dcnv2",
    world_size: int = 8,
    batch_size: int = 2048,
    scales=range(1, 11),
) -> str:
    """A markdown table of the estimate for the ME model ``name`` at each scale M (K = the
    backbone's base size): DDP against column-wise (table-wise where the table cannot be split)
    sharding over ``world_size`` ranks."""
    mb, gb = 1e6, 1e9
    lines = [
        "| M | DDP all-reduce MB | DDP sent/rank MB | DDP memory/rank GB | sharding | "
        "sharded all-reduce MB | all-to-all MB | sharded sent/rank MB | "
        "sharded memory/rank GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in scales:
        dense = dense_parameter_count(name, len(field_dims), m, multi=True)
        k = build(name, [1], 1).base_embed_dim
        ddp = step_cost(field_dims, m, k, dense, batch_size, world_size, "ddp")
        try:
            sharded = step_cost(field_dims, m, k, dense, batch_size, world_size, "column_wise")
        except ValueError:  # M*K cannot be split into columns
            sharded = step_cost(field_dims, m, k, dense, batch_size, world_size, "table_wise")
        lines.append(
            f"| {m} | {ddp.allreduce_bytes / mb:,.0f} | {ddp.sent_bytes_per_rank / mb:,.0f} | "
            f"{ddp.memory_per_rank / gb:,.1f} | {sharded.strategy} | "
            f"{sharded.allreduce_bytes / mb:,.0f} | {sharded.alltoall_bytes / mb:,.1f} | "
            f"{sharded.sent_bytes_per_rank / mb:,.0f} | {sharded.memory_per_rank / gb:,.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    for title, dims in (
        ("Criteo (Kaggle)", CRITEO_KAGGLE_FIELD_DIMS),
        ("Criteo 1TB", CRITEO_1TB_FIELD_DIMS),
    ):
        print(
            f"{title}: {sum(dims):,} rows, ME DCNv2 (K=10, 4 cross layers, hidden 400), "
            f"global batch 2048, 8 ranks\n"
        )
        print(scaling_table(dims), "\n")
