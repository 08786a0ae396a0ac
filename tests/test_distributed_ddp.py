"""Data parallel (fastme.distributed.data_parallel) on 2 CPU processes (gloo)."""

import pytest
import torch
import torch.nn.functional as F

import fastme.models as fm
from distributed_helpers import spawn
from fastme.distributed import data_parallel as dp

FIELD_DIMS = [4, 9, 3, 6]


#: Every expert kind, one set each, small.
HETERO = dict(
    experts=("dnn", "ipnn", "nfwfm", "dcnv2", "xdeepfm", "autoint", "finalmlp"),
    expert_options={
        "dcnv2": {"num_cross_layers": 2},
        "xdeepfm": {"cin_layer_sizes": (3, 2)},
        "autoint": {"attention_dim": 4, "num_attention_layers": 2},
    },
)


def _model(name):
    torch.manual_seed(0)
    if name == "nfwfm":
        return fm.NFwFM(FIELD_DIMS, embed_dim=4, num_sets=2, hidden_dim=8).double()
    if name == "hetero":
        model = fm.build(name, FIELD_DIMS, 7, hidden_dim=8, **HETERO).double()
        with torch.no_grad():  # off its uniform start, so that the gate's weights differ per row
            model.gate_layer.weight.normal_(0, 0.1)
        return model
    return fm.build(name, FIELD_DIMS, 2, multi=True, hidden_dim=8).double()


def _ddp_grads_equal_joined_batch(rank, world, name):
    g = torch.Generator().manual_seed(7)
    x = torch.stack([torch.randint(0, d, (7,), generator=g) for d in FIELD_DIMS], 1)
    x[2] = x[1]  # duplicate ids
    y = torch.randint(0, 2, (7,), generator=g).double()

    single = _model(name).eval()  # eval: BatchNorm running statistics, no dropout
    F.binary_cross_entropy_with_logits(single(x), y).backward()

    ddp = dp.wrap(_model(name).eval(), torch.device("cpu"))
    part = dp.batch_part(len(x), rank, world)  # 4 rows on rank 0, 3 on rank 1
    loss = F.binary_cross_entropy_with_logits(ddp(x[part]), y[part])
    (loss * dp.loss_weight(len(x[part]), len(x), world)).backward()
    grads = dict(dp.unwrap(ddp).named_parameters())
    for key, p in single.named_parameters():
        torch.testing.assert_close(grads[key].grad, p.grad, msg=key)
    assert list(dp.unwrap(ddp).state_dict()) == list(single.state_dict())  # no "module." prefix


# fused lookup+cross / lookup+pooling ops; every expert kind behind a gate
@pytest.mark.parametrize("name", ["dcnv2", "nfwfm", "hetero"])
def test_ddp_gradients_equal_single_process_gradients_on_the_joined_batch(name):
    spawn(_ddp_grads_equal_joined_batch, 2, name)


def _collectives(rank, world):
    part = torch.arange(rank * 10, rank * 10 + 3 - rank, dtype=torch.float32)  # lengths 3 and 2
    torch.testing.assert_close(dp.gather_concat(part), torch.tensor([0.0, 1, 2, 10, 11]))
    torch.testing.assert_close(dp.all_reduce_sum(torch.tensor([rank + 1.0])), torch.tensor([3.0]))


def test_gather_concat_and_sum_over_ranks():
    spawn(_collectives, 2)


def test_batch_parts_cover_the_batch_in_order():
    for length in (0, 1, 5, 8):
        for world in (1, 2, 3):
            parts = [dp.batch_part(length, r, world) for r in range(world)]
            assert [i for p in parts for i in range(length)[p]] == list(range(length))
            assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1
    # Averaging the weighted per-rank means gives the mean over the whole (uneven) batch.
    losses = torch.arange(7.0) ** 2
    parts = [losses[dp.batch_part(7, r, 2)] for r in range(2)]
    averaged = sum(dp.loss_weight(len(p), 7, 2) * p.mean() for p in parts) / 2
    torch.testing.assert_close(averaged, losses.mean())
