"""The models' interaction primitives against straightforward loop implementations and
torch.nn.MultiheadAttention, in float64."""

import itertools

import pytest
import torch

from fastme.models import interactions

pytestmark = pytest.mark.usefixtures("float64_default")


def test_inner_products_order_and_values():
    emb = torch.randn(2, 3, 4, 5)
    out = interactions.inner_products(emb)
    pairs = list(itertools.combinations(range(4), 2))  # i outer, j inner
    assert out.shape == (2, 3, len(pairs))
    for p, (i, j) in enumerate(pairs):
        torch.testing.assert_close(out[..., p], (emb[:, :, i] * emb[:, :, j]).sum(-1))


def test_cin_matches_loop():
    b, m, n, k, sizes = 2, 2, 3, 4, (5, 2)
    emb = torch.randn(b, m, n, k)
    weights, biases, prev = [], [], n
    for size in sizes:
        weights.append(torch.randn(m, size, n * prev))
        biases.append(torch.randn(m, size))
        prev = size
    out = interactions.cin(emb, weights, biases)
    for bi, s in itertools.product(range(b), range(m)):
        h, pooled = emb[bi, s], []
        for w, bias in zip(weights, biases):
            new = torch.empty(w.shape[1], k)
            for c in range(w.shape[1]):
                acc = bias[s, c].repeat(k)
                for i, j in itertools.product(range(n), range(h.shape[0])):
                    acc = acc + w[s, c, i * h.shape[0] + j] * emb[bi, s, i] * h[j]
                new[c] = torch.relu(acc)
            h = new
            pooled.append(h.sum(-1))
        torch.testing.assert_close(out[bi, s], torch.cat(pooled))


def test_set_self_attention_matches_torch_multihead_attention_per_set():
    b, m, n, h, heads = 3, 2, 5, 8, 2
    x = torch.randn(b, m, n, h)
    in_w, in_b = torch.randn(m, 3 * h, h), torch.randn(m, 3 * h)
    out_w, out_b = torch.randn(m, h, h), torch.randn(m, h)
    out = interactions.set_self_attention(x, in_w, in_b, out_w, out_b, heads)
    for s in range(m):
        mha = torch.nn.MultiheadAttention(h, heads, batch_first=True, dtype=torch.float64)
        with torch.no_grad():
            mha.in_proj_weight.copy_(in_w[s])
            mha.in_proj_bias.copy_(in_b[s])
            mha.out_proj.weight.copy_(out_w[s])
            mha.out_proj.bias.copy_(out_b[s])
        expected, _ = mha(x[:, s], x[:, s], x[:, s], need_weights=False)
        torch.testing.assert_close(out[:, s], expected)


def test_bilinear_fusion():
    o1, o2 = torch.randn(4, 6), torch.randn(4, 6)
    w1, w2, w12 = torch.randn(6), torch.randn(6), torch.randn(6, 6)
    out = interactions.bilinear_fusion(o1, o2, w1, torch.tensor(0.5), w2, torch.tensor(-1.0), w12)
    expected = torch.stack(
        [o1[b] @ w1 + 0.5 + o2[b] @ w2 - 1.0 + o1[b] @ w12 @ o2[b] for b in range(4)]
    )
    torch.testing.assert_close(out, expected)
