"""The eager reference ops against straightforward loop implementations, in float64."""

import itertools

import pytest
import torch

from fastme.ops import reference

from kernel_backends import lookup_inputs

pytestmark = pytest.mark.usefixtures("float64_default")

SHAPES = [  # batch, field_dims, num_sets, dim
    (1, [1], 1, 1),
    (5, [3, 7, 2], 2, 5),
    (9, [4, 1, 6, 3], 3, 10),
    (4, [2, 2], 4, 7),
]


def loop_lookup(table, indices, offsets):
    b, n = indices.shape
    m, k = table.shape[1:]
    out = torch.zeros(b, m, n, k, dtype=table.dtype)
    for bi, i, s in itertools.product(range(b), range(n), range(m)):
        out[bi, s, i] = table[offsets[i] + indices[bi, i], s]
    return out


@pytest.mark.parametrize("batch,field_dims,num_sets,dim", SHAPES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_lookup_matches_loop(batch, field_dims, num_sets, dim, index_dtype):
    table, indices, offsets = lookup_inputs(
        batch, field_dims, num_sets, dim, seed=0, index_dtype=index_dtype, device="cpu"
    )
    torch.testing.assert_close(
        reference.multi_embedding_lookup(table, indices, offsets),
        loop_lookup(table, indices, offsets),
    )


def test_lookup_gradient_sums_duplicates():
    table = torch.randn(5, 2, 3, requires_grad=True)
    indices = torch.tensor([[1], [1], [1], [4]])
    out = reference.multi_embedding_lookup(table, indices, torch.tensor([0]))
    out.sum().backward()
    expected = torch.zeros(5, 2, 3)
    expected[1] = 3.0
    expected[4] = 1.0
    torch.testing.assert_close(table.grad, expected)


@pytest.mark.parametrize("batch,field_dims,num_sets,dim", SHAPES)
def test_fm_pooling_matches_pairwise_sum(batch, field_dims, num_sets, dim):
    table, indices, offsets = lookup_inputs(batch, field_dims, num_sets, dim, seed=1, device="cpu")
    emb = reference.multi_embedding_lookup(table, indices, offsets)
    expected = torch.zeros(batch, num_sets, dim)
    n = len(field_dims)
    for i, j in itertools.combinations(range(n), 2):
        expected += emb[:, :, i] * emb[:, :, j]
    torch.testing.assert_close(reference.fm_pooling(emb), expected)
    torch.testing.assert_close(reference.pooled_lookup(table, indices, offsets), expected)


@pytest.mark.parametrize("batch,field_dims,num_sets,dim", SHAPES)
def test_fwfm_pooling_matches_loop_over_all_pairs(batch, field_dims, num_sets, dim):
    table, indices, offsets = lookup_inputs(batch, field_dims, num_sets, dim, seed=2, device="cpu")
    emb = reference.multi_embedding_lookup(table, indices, offsets)
    n = len(field_dims)
    r = torch.randn(num_sets, n, n)
    expected = torch.zeros(batch, num_sets, dim)
    for s, i, j in itertools.product(range(num_sets), range(n), range(n)):
        expected[:, s] += r[s, i, j] * emb[:, s, i] * emb[:, s, j]
    torch.testing.assert_close(reference.fwfm_pooling(emb, r), expected)
    torch.testing.assert_close(reference.pooled_lookup(table, indices, offsets, r), expected)


def test_fwfm_with_ones_off_diagonal_upper_is_fm():
    emb = torch.randn(3, 2, 4, 5)
    r = torch.ones(2, 4, 4).triu(1)
    torch.testing.assert_close(reference.fwfm_pooling(emb, r), reference.fm_pooling(emb))


@pytest.mark.parametrize(
    "batch,num_sets,dim,layers",
    [(1, 1, 1, 1), (3, 2, 6, 4), (5, 3, 11, 2), (4, 1, 9, 3), (2, 1, 7, 0)],
)
def test_cross_network_matches_per_example_loop(batch, num_sets, dim, layers):
    """Output and gradients (float64) against the formula written per example and set; one set
    (SE) takes its own 2-D matmul path, several sets the batched one."""
    g = torch.Generator().manual_seed(batch + num_sets + dim + layers)
    x0 = torch.randn(batch, num_sets, dim, generator=g, dtype=torch.float64, requires_grad=True)
    weight = (
        torch.randn(layers, num_sets, dim, dim, generator=g, dtype=torch.float64) / dim
    ).requires_grad_()
    bias = torch.randn(layers, num_sets, dim, generator=g, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(batch, num_sets, dim, generator=g, dtype=torch.float64)

    def per_example_loop(x0, weight, bias):
        rows = []
        for b in range(batch):
            sets = []
            for s in range(num_sets):
                x = x0[b, s]
                for layer in range(layers):
                    x = x0[b, s] * (weight[layer, s] @ x + bias[layer, s]) + x
                sets.append(x)
            rows.append(torch.stack(sets))
        return torch.stack(rows)

    def with_grads(fn):
        out = fn(x0, weight, bias)
        return out, *torch.autograd.grad(
            out, [x0, weight, bias], grad_out, allow_unused=True, materialize_grads=True
        )

    got, expected = with_grads(reference.cross_network), with_grads(per_example_loop)
    assert got[0].shape == (batch, num_sets, dim)
    for g_, e in zip(got, expected):
        torch.testing.assert_close(g_, e, rtol=1e-12, atol=1e-12)


def test_lookup_cross_network_is_composition():
    table, indices, offsets = lookup_inputs(4, [3, 5], 2, 3, seed=3, device="cpu")
    weight = torch.randn(2, 2, 6, 6) / 6
    bias = torch.randn(2, 2, 6)
    x0 = reference.multi_embedding_lookup(table, indices, offsets).reshape(4, 2, 6)
    torch.testing.assert_close(
        reference.lookup_cross_network(table, indices, offsets, weight, bias),
        reference.cross_network(x0, weight, bias),
    )
