"""TorchRec-sharded ME tables (fastme.distributed.torchrec): the sharded model equals the plain
one, forward and backward, and plain checkpoints go in and come back unchanged."""

import pytest
import torch

pytest.importorskip(
    "torchrec",
    reason="TorchRec is not installed (the `distributed` install in docs/distributed.md)",
)

import fastme.models as fm  # noqa: E402
from distributed_helpers import spawn  # noqa: E402
from fastme.distributed import torchrec as ftr  # noqa: E402

FIELD_DIMS = [5, 7, 3, 11, 2]


def plain_model(name="dcnv2", seed=0):
    torch.manual_seed(seed)
    return fm.build(name, FIELD_DIMS, 2, multi=True, hidden_dim=8)


def random_batch(batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.stack([torch.randint(0, d, (batch,), generator=g) for d in FIELD_DIMS], 1)
    x[1] = x[0]  # a repeated sample: duplicate ids in every table
    return x, torch.randn(batch, generator=g)


@pytest.mark.parametrize("name", sorted(fm.MODELS))
def test_unsharded_torchrec_model_equals_the_plain_model(name):
    plain = plain_model(name).eval()
    model = ftr.TorchRecModel(plain_model(name, seed=5), device="cpu").eval()
    model.load_state_dict(ftr.to_torchrec_state_dict(plain.state_dict(), FIELD_DIMS))
    x, _ = random_batch(7)
    torch.testing.assert_close(model(x), plain(x), rtol=1e-5, atol=1e-6)
    back = ftr.to_plain_state_dict(model.state_dict(), FIELD_DIMS, plain.num_sets, plain.embed_dim)
    for key, value in plain.state_dict().items():
        assert torch.equal(back[key], value), key


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="sharding must be one of"):
        ftr.shard(ftr.TorchRecModel(plain_model()), "diagonal")
    with pytest.raises(ValueError, match="row_wise sharding needs CUDA"):
        ftr.shard(ftr.TorchRecModel(plain_model()), "row_wise", device="cpu")
    with pytest.raises(TypeError, match="fastme model"):
        ftr.TorchRecModel(torch.nn.Linear(2, 2))
    model = ftr.TorchRecModel(plain_model(), device="cpu")
    with pytest.raises(IndexError, match="out of range for field 2"):
        model(torch.tensor([[0, 0, 3, 0, 0]]))
    with pytest.raises(ValueError, match="rows but field_dims"):
        ftr.to_torchrec_state_dict(plain_model().state_dict(), FIELD_DIMS[:-1])


def _sharded_equals_plain(rank, world, sharding):
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    plain = plain_model().eval()
    x, r = random_batch(6)
    # Fresh tables and a different dense init: everything must come from the checkpoint.
    lr = 0.5
    sharded = ftr.shard(
        ftr.TorchRecModel(plain_model(seed=3)),
        sharding,
        fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": lr},
    )
    sharded.eval()

    # The planner really split the tables as asked.
    widths = {}
    for key, value in sharded.state_dict().items():
        if hasattr(value, "local_shards"):
            widths[key] = [s.tensor.shape[1] for s in value.local_shards()]
    full = plain.num_sets * plain.embed_dim
    if sharding == "table_wise":
        assert all(w in ([], [full]) for w in widths.values())
        assert 0 < sum(map(len, widths.values())) < len(FIELD_DIMS)  # some tables, not all
    else:
        assert all(0 < w < full for ws in widths.values() for w in ws)

    ftr.load_plain_state_dict(sharded, plain.state_dict())
    back = ftr.gather_plain_state_dict(sharded)
    if rank == 0:
        assert back.keys() == plain.state_dict().keys()
        for key, value in plain.state_dict().items():
            assert torch.equal(back[key], value), key

    # Forward: each rank its own part of the batch.
    xs, rs = x.chunk(world)[rank], r.chunk(world)[rank]
    out = sharded(xs)
    expected = plain(x)
    torch.testing.assert_close(out, expected.chunk(world)[rank], rtol=1e-5, atol=1e-6)

    # Backward: the dense gradients (all-reduced mean over ranks) and the tables' fused SGD step
    # both follow the gradient of the joined batch's loss / world size.
    (out * rs).sum().backward()
    (expected * r).sum().div(world).backward()
    grads = {
        k[len(ftr.BACKBONE_PREFIX) :]: p.grad
        for k, p in sharded.named_parameters()
        if k.startswith(ftr.BACKBONE_PREFIX)
    }
    for key, p in plain.named_parameters():
        if key != ftr.PLAIN_TABLE_KEY:
            torch.testing.assert_close(grads[key], p.grad, rtol=1e-4, atol=1e-6, msg=key)
    stepped = ftr.gather_plain_state_dict(sharded)
    if rank == 0:
        table = plain.embedding.weight
        torch.testing.assert_close(
            stepped[ftr.PLAIN_TABLE_KEY], table - lr * table.grad, rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("sharding", ["table_wise", "column_wise"])
def test_sharded_me_dcnv2_equals_the_plain_model_forward_and_backward(sharding):
    spawn(_sharded_equals_plain, 2, sharding)
