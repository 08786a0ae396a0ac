"""Model-parallel ME tables through TorchRec: any fastme backbone whose embedding is a TorchRec
:class:`~torchrec.EmbeddingCollection`, sharded over ranks by ``DistributedModelParallel``.

fastme's interleaved table ``[rows, M, K]`` is, per field, exactly a TorchRec table of
``num_embeddings = D_i`` and ``embedding_dim = M*K`` (row v of field i holds its M sets one after
the other). :class:`TorchRecModel` holds N such tables (one per field, named ``field_<i>``) and
the backbone without its own table; its forward gathers ``[B, N, M*K]`` through TorchRec (one id
per field and sample), views it as the ``[B, M, N, K]`` that ``model.lookup`` returns and runs the
backbone's interaction on it (:meth:`fastme.models.MultiEmbeddingModel.forward_embeddings`), so the
dense part keeps fastme's ops (cross network, FwFM pooling on gathered embeddings).

Typical use, in every rank of a ``torchrun`` job (docs/distributed.md)::

    model = TorchRecModel(fastme.models.build("dcnv2", field_dims, 10, multi=True))
    sharded = shard(model, "column_wise")                  # planner + DistributedModelParallel
    load_plain_state_dict(sharded, torch.load("best.pt")["model"])   # a single-process checkpoint
    ...
    plain = gather_plain_state_dict(sharded)              # on rank 0: loads into the plain model

Needs the optional ``distributed`` install (torchrec with fbgemm-gpu; see docs/distributed.md).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.distributed as dist
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingEnv

from fastme.distributed.cost import default_column_shard_dim
from fastme.models import MultiEmbeddingModel

#: Sharding types offered: each table whole on one rank, split by columns, split by rows.
SHARDINGS = ("table_wise", "column_wise", "row_wise")
#: Where the plain model keeps its table, and the prefix of the per-field TorchRec tables.
PLAIN_TABLE_KEY = "embedding.weight"
TABLE_PREFIX = "embeddings.embeddings."
BACKBONE_PREFIX = "backbone."


def table_name(field: int) -> str:
    return f"field_{field}"


class TorchRecModel(nn.Module):
    """A fastme backbone with its table replaced by a TorchRec EmbeddingCollection of N tables of
    dimension M*K. Maps LongTensor [B, N] -> logits [B], like the backbone.

    The backbone is taken over: its own table (``backbone.embedding``) is removed, so build it on
    the host and hand it over before sharding. The TorchRec tables are created on ``device``
    (default ``meta``: nothing allocated; :func:`shard` materialises each rank's shards only),
    initialised as fastme initialises its table (uniform in +-sqrt(6 / (rows + K))) when
    materialised. Weights of a trained plain model come in through :func:`load_plain_state_dict`.
    """

    def __init__(self, backbone: MultiEmbeddingModel, *, device: torch.device | str = "meta"):
        super().__init__()
        if not isinstance(backbone, MultiEmbeddingModel):
            raise TypeError(f"backbone must be a fastme model, got {type(backbone).__name__}")
        if backbone.embedding is None:
            raise ValueError("backbone has no table: it already belongs to a TorchRecModel")
        self.field_dims = backbone.field_dims
        self.num_sets, self.embed_dim = backbone.num_sets, backbone.embed_dim
        self.feature_names = [table_name(i) for i in range(len(self.field_dims))]
        bound = math.sqrt(6.0 / (sum(self.field_dims) + self.embed_dim))
        self.embeddings = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name=name,
                    feature_names=[name],
                    num_embeddings=dim,
                    embedding_dim=self.num_sets * self.embed_dim,
                    init_fn=partial(nn.init.uniform_, a=-bound, b=bound),
                )
                for name, dim in zip(self.feature_names, self.field_dims)
            ],
            device=torch.device(device),
        )
        backbone.embedding = None  # the collection replaces it; keeping it would cost a full table
        self.backbone = backbone
        self.register_buffer("_field_dims", torch.tensor(self.field_dims), persistent=False)

    def _features(self, x: torch.Tensor) -> KeyedJaggedTensor:
        """[B, N] per-field ids -> one id per (field, sample), fields as keys (key-major)."""
        outside = ((x < 0) | (x >= self._field_dims.to(x.device))).any(0)
        if outside.any():  # the plain model's bounds check, with its message
            bad = outside.nonzero()[0, 0].item()
            raise IndexError(
                f"x holds an index out of range for field {bad} "
                f"(cardinality {self.field_dims[bad]})"
            )
        b, n = x.shape
        return KeyedJaggedTensor(
            keys=self.feature_names,
            values=x.t().reshape(-1).long(),
            lengths=torch.ones(n * b, dtype=torch.int32, device=x.device),
        )

    def lookup(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N] -> [B, M, N, K], the layout of ``MultiEmbeddingModel.lookup``."""
        self.backbone._check_input(x)
        b, n = x.shape
        out = self.embeddings(self._features(x))
        # Gathered by name: the sharded collection's outputs do not come in field order.
        flat = torch.stack([out[name].values() for name in self.feature_names], dim=1)
        return flat.reshape(b, n, self.num_sets, self.embed_dim).transpose(1, 2).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_embeddings(self.lookup(x))


# ---- state dicts: plain fastme <-> TorchRecModel ---------------------------------------------


def to_torchrec_state_dict(plain: dict, field_dims) -> dict:
    """A plain fastme model's state dict -> the (unsharded) keys and shapes of TorchRecModel."""
    if PLAIN_TABLE_KEY not in plain:
        raise KeyError(f"state dict has no {PLAIN_TABLE_KEY!r}: not a fastme model's")
    table = plain[PLAIN_TABLE_KEY]
    out = {BACKBONE_PREFIX + k: v for k, v in plain.items() if k != PLAIN_TABLE_KEY}
    start = 0
    for i, dim in enumerate(field_dims):
        out[f"{TABLE_PREFIX}{table_name(i)}.weight"] = table[start : start + dim].reshape(dim, -1)
        start += dim
    if start != table.shape[0]:
        raise ValueError(f"the table has {table.shape[0]} rows but field_dims sum to {start}")
    return out


def to_plain_state_dict(torchrec_state: dict, field_dims, num_sets: int, embed_dim: int) -> dict:
    """The inverse of :func:`to_torchrec_state_dict` (full tensors, not sharded ones)."""
    out = {
        k[len(BACKBONE_PREFIX) :]: v
        for k, v in torchrec_state.items()
        if k.startswith(BACKBONE_PREFIX)
    }
    tables = [
        torchrec_state[f"{TABLE_PREFIX}{table_name(i)}.weight"] for i in range(len(field_dims))
    ]
    out[PLAIN_TABLE_KEY] = torch.cat(tables).reshape(-1, num_sets, embed_dim)
    return out


def _unwrapped(model: nn.Module) -> TorchRecModel:
    inner = model.module if isinstance(model, DistributedModelParallel) else model
    while not isinstance(inner, TorchRecModel) and hasattr(inner, "module"):
        inner = inner.module  # DMP wraps its dense part in DistributedDataParallel
    if not isinstance(inner, TorchRecModel):
        raise TypeError(f"expected a (sharded) TorchRecModel, got {type(model).__name__}")
    return inner


def load_plain_state_dict(sharded: nn.Module, plain: dict) -> None:
    """Load a plain fastme state dict (e.g. a single-process checkpoint's ``"model"``) into a
    sharded TorchRecModel. DistributedModelParallel initialises its shards itself, so the weights
    are copied into the sharded state dict: every rank copies the slices it holds. Call it on every
    rank with the same ``plain``."""
    inner = _unwrapped(sharded)
    source = to_torchrec_state_dict(plain, inner.field_dims)
    target = sharded.state_dict()
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    if missing or unexpected:
        raise KeyError(
            f"state dict does not fit the model: missing {missing}, unexpected {unexpected}"
        )
    with torch.no_grad():
        for key, dst in target.items():
            src = source[key]
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(
                    f"{key}: shape {tuple(src.shape)} in the state dict, "
                    f"{tuple(dst.shape)} in the model"
                )
            if hasattr(dst, "local_shards"):  # ShardedTensor: this rank's pieces only
                for piece in dst.local_shards():
                    rows, cols = piece.metadata.shard_offsets
                    h, w = piece.tensor.shape
                    piece.tensor.copy_(src[rows : rows + h, cols : cols + w])
            else:
                dst.copy_(src)


def gather_plain_state_dict(sharded: nn.Module, dst: int = 0) -> dict | None:
    """The plain fastme state dict of a sharded TorchRecModel, gathered on rank ``dst`` (None on
    the other ranks); a collective, so call it on every rank. It holds the full table on ``dst``."""
    inner = _unwrapped(sharded)
    rank = dist.get_rank()
    full = {}
    for key, value in sharded.state_dict().items():
        if hasattr(value, "local_shards"):
            out = torch.empty(value.shape, dtype=value.dtype) if rank == dst else None
            value.gather(dst=dst, out=out)
            full[key] = out
        else:
            full[key] = value.detach().cpu()
    if rank != dst:
        return None
    return to_plain_state_dict(full, inner.field_dims, inner.num_sets, inner.embed_dim)


# ---- sharding ---------------------------------------------------------------------------------


def shard(
    model: TorchRecModel,
    sharding: str = "table_wise",
    *,
    device: torch.device | None = None,
    process_group=None,
    fused_params: dict | None = None,
    column_shard_dim: int | None = None,
) -> DistributedModelParallel:
    """Shard every table of ``model`` with ``sharding`` over the ranks of ``process_group``
    (default: the world) by TorchRec's planner and ``DistributedModelParallel``; the dense part is
    replicated and its gradients all-reduced (DDP).

    ``device``: this rank's device (default ``cuda:<local rank>`` when CUDA is available, else
    CPU). Row-wise sharding needs CUDA: FBGEMM has no CPU kernel for it. ``fused_params`` go to
    FBGEMM's table-batched kernel, whose optimizer updates the shards inside the backward (there
    is no table gradient to step); default EXACT_SGD with learning rate 0.01, e.g.
    ``{"optimizer": EmbOptimType.EXACT_ADAGRAD, "learning_rate": 0.05}``. ``column_shard_dim``:
    the width of a column-wise shard (default :func:`default_column_shard_dim`).
    """
    if not isinstance(model, TorchRecModel):
        raise TypeError(f"model must be a TorchRecModel, got {type(model).__name__}")
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {SHARDINGS}, got {sharding!r}")
    if device is None:
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    device = torch.device(device)
    if sharding == "row_wise" and device.type != "cuda":
        raise ValueError(
            "row_wise sharding needs CUDA devices (FBGEMM has no CPU kernel for it); "
            "use table_wise or column_wise on CPU"
        )
    if not dist.is_initialized():
        raise RuntimeError(
            "shard needs torch.distributed initialised (run under torchrun and "
            "call torch.distributed.init_process_group first)"
        )
    group = process_group or dist.GroupMember.WORLD
    world_size = dist.get_world_size(group)
    if column_shard_dim is None:
        column_shard_dim = default_column_shard_dim(model.num_sets, model.embed_dim, world_size)
    constraints = {
        name: ParameterConstraints(sharding_types=[sharding], min_partition=column_shard_dim)
        for name in model.feature_names
    }
    topology = Topology(world_size=world_size, compute_device=device.type)
    sharders = [EmbeddingCollectionSharder(fused_params=fused_params)]
    plan = EmbeddingShardingPlanner(topology=topology, constraints=constraints).collective_plan(
        model, sharders, group
    )
    return DistributedModelParallel(
        model,
        env=ShardingEnv.from_process_group(group),
        device=device,
        plan=plan,
        sharders=sharders,
    )
