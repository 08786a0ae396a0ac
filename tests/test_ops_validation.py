"""Public-op input validation and dispatch, on the always-available reference backend."""

import pytest
import torch

import fastme.ops as ops
from fastme._extension import ExtensionUnavailable


def inputs(batch=4):
    table = torch.randn(10, 2, 3)
    offsets = torch.tensor([0, 4])
    indices = torch.stack([torch.randint(0, 4, (batch,)), torch.randint(0, 6, (batch,))], 1)
    return table, indices, offsets


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda t, x, o: (t[0], x, o), ValueError, "table must have 3 dimensions"),
    (lambda t, x, o: (t.int(), x, o), TypeError, "table must have dtype"),
    (lambda t, x, o: (t, x.float(), o), TypeError, "indices must have dtype"),
    (lambda t, x, o: (t, x[0], o), ValueError, "indices must have 2 dimensions"),
    (lambda t, x, o: (t, x, o[:1]), ValueError, "offsets has 1 entries"),
    (lambda t, x, o: ("table", x, o), TypeError, "table must be a torch.Tensor"),
])
def test_lookup_rejects_bad_arguments(mutate, exc, match):
    with pytest.raises(exc, match=match):
        ops.multi_embedding_lookup(*mutate(*inputs()))


def test_out_of_range_and_negative_indices_name_the_argument():
    table, indices, offsets = inputs()
    indices[2, 1] = 6  # field 1 has 6 values: 0..5
    with pytest.raises(IndexError, match=r"indices\[2, 1\] = 6 is out of range for field 1"):
        ops.multi_embedding_lookup(table, indices, offsets)
    indices[2, 1] = -1
    with pytest.raises(IndexError, match="out of range"):
        ops.pooled_lookup(table, indices, offsets)


def test_bounds_check_clamp_and_off_modes():
    table, indices, offsets = inputs()
    indices[0, 0] = 9
    try:
        ops.set_bounds_check("clamp")
        with pytest.warns(RuntimeWarning, match="clamped"):
            out = ops.multi_embedding_lookup(table, indices, offsets)
        torch.testing.assert_close(out[0, :, 0], table[3])
        ops.set_bounds_check("off")
        ops.multi_embedding_lookup(table, indices[1:], offsets)
        with pytest.raises(ValueError, match="bounds check mode"):
            ops.set_bounds_check("ignore")
    finally:
        ops.set_bounds_check("error")


def test_pooling_and_cross_network_check_parameter_shapes():
    table, indices, offsets = inputs()
    with pytest.raises(ValueError, match=r"field_weights must have shape \(2, 2, 2\)"):
        ops.pooled_lookup(table, indices, offsets, torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match=r"weight must have shape"):
        ops.lookup_cross_network(table, indices, offsets, torch.randn(1, 2, 5, 5), torch.randn(1, 2, 6))
    with pytest.raises(ValueError, match=r"bias must have shape"):
        ops.cross_network(torch.randn(4, 2, 6), torch.randn(3, 2, 6, 6), torch.randn(3, 2, 5))


def test_empty_batch_gives_empty_results():
    table, indices, offsets = inputs(batch=0)
    assert ops.multi_embedding_lookup(table, indices, offsets).shape == (0, 2, 2, 3)
    assert ops.pooled_lookup(table, indices, offsets).shape == (0, 2, 3)
    out = ops.lookup_cross_network(table, indices, offsets, torch.randn(2, 2, 6, 6), torch.zeros(2, 2, 6))
    assert out.shape == (0, 2, 6)


def test_unknown_and_unavailable_backends_raise_clearly():
    table, indices, offsets = inputs()
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.multi_embedding_lookup(table, indices, offsets, backend="fast")
    with pytest.raises((ops.BackendUnavailable, ExtensionUnavailable), match="CUDA"):
        ops.multi_embedding_lookup(table, indices, offsets, backend="cuda")
    assert "reference" in ops.available_backends("cpu")


def test_auto_backend_on_cpu_is_the_reference():
    table, indices, offsets = inputs()
    torch.testing.assert_close(ops.multi_embedding_lookup(table, indices, offsets),
                               ops.reference.multi_embedding_lookup(table, indices, offsets))
