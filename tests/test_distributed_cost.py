"""The step cost model (fastme.distributed.cost) against what 2 CPU ranks really send."""

import importlib.util

import pytest

from distributed_helpers import spawn
from fastme.distributed import cost

HAS_TORCHREC = importlib.util.find_spec("torchrec") is not None


def test_ddp_reduces_the_whole_dense_table_gradient_every_step():
    dense = cost.dense_parameter_count("dcnv2", 39, 10, multi=True)
    est = cost.step_cost(cost.CRITEO_KAGGLE_FIELD_DIMS, 10, 10, dense, 2048, 8, "ddp")
    table = sum(cost.CRITEO_KAGGLE_FIELD_DIMS) * 10 * 10 * 4
    assert est.allreduce_bytes == table + dense * 4
    assert 430e6 < table < 440e6  # ME x10 on Criteo: ~436 MB a step
    assert est.memory_per_rank == 4 * est.allreduce_bytes  # weights, grads, two Adam moments
    sharded = cost.step_cost(cost.CRITEO_KAGGLE_FIELD_DIMS, 10, 10, dense, 2048, 8, "column_wise")
    assert sharded.allreduce_bytes == dense * 4
    assert sharded.table_bytes_per_rank == pytest.approx(table / 8)


def test_table_wise_ranks_are_bounded_by_the_largest_table():
    est = cost.step_cost([1000, 10, 10, 10], 2, 4, 0, 16, 2, "table_wise")
    assert est.table_bytes_per_rank == 1000 * 8 * 4


def test_default_column_shards_split_every_table_over_the_ranks():
    assert cost.default_column_shard_dim(10, 10, 2) == 20  # 100 columns: 5 shards of 20
    assert cost.default_column_shard_dim(2, 10, 2) == 4
    assert cost.default_column_shard_dim(4, 16, 4) == 16
    with pytest.raises(ValueError, match="cannot split"):
        cost.default_column_shard_dim(1, 10, 2)
    with pytest.raises(ValueError, match="strategy"):
        cost.step_cost([3], 1, 4, 0, 8, 2, "diagonal")


def _measured_matches_estimate(rank, world, strategies):
    from fastme.distributed.measure import measure_step

    dims = [40, 7, 25, 3, 12]
    for strategy in strategies:
        result = measure_step("dcnv2", dims, 2, 24, strategy, hidden_dim=8)
        measured, estimated = result["measured"], result["estimated"]
        assert measured["allreduce_bytes"] == estimated["allreduce_bytes"], strategy
        row, held = 2 * 10 * 4, measured["table_bytes_per_rank"]
        if strategy == "table_wise":  # the planner places tables its own way: check the bounds
            assert max(dims) * row <= held < sum(dims) * row
        elif strategy == "column_wise":  # 5 shards of 4 columns a table: 3 on one rank at most
            assert estimated["table_bytes_per_rank"] == sum(dims) * row / 2
            assert sum(dims) * row / 2 <= held <= sum(dims) * row * 3 / 5
        else:
            assert held == estimated["table_bytes_per_rank"]
        # The all-to-alls also carry a few split counts that the estimate leaves out.
        assert (
            estimated["alltoall_bytes"]
            <= measured["alltoall_bytes"]
            <= 1.05 * estimated["alltoall_bytes"]
        ), strategy


def test_measured_ddp_traffic_matches_the_estimate():
    spawn(_measured_matches_estimate, 2, ["ddp"])


@pytest.mark.skipif(
    not HAS_TORCHREC,
    reason="TorchRec is not installed (the `distributed` install in docs/distributed.md)",
)
def test_measured_sharded_traffic_matches_the_estimate():
    spawn(_measured_matches_estimate, 2, ["table_wise", "column_wise"])
