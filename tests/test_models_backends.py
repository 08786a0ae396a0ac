"""Every backbone gives the same logits and the same gradient for every parameter on each kernel
backend as on the eager reference (float64, eval mode, tiny sizes).

DNN, IPNN, xDeepFM, FinalMLP and AutoInt go through multi_embedding_lookup, NFwFM through
pooled_lookup (FwFM pooling) and DCNv2 through lookup_cross_network.
"""

import pytest
import torch

from fastme.models import MODELS

from kernel_backends import BACKENDS, DEVICE, KERNEL_TESTS, gpu_test

pytestmark = KERNEL_TESTS

FIELD_DIMS = [3, 5, 2, 4]
OPTIONS = {  # small sub-modules so that the interpreter stays fast
    "xdeepfm": dict(cin_layer_sizes=(4, 3)),
    "autoint": dict(attention_dim=4, num_heads=2, num_attention_layers=1),
    "dcnv2": dict(num_cross_layers=2),
}
VARIANTS = [(name, {}) for name in sorted(MODELS)] + [("nfwfm", dict(field_pairs="upper"))]


def logits_and_grads(model, x, weights):
    model.zero_grad(set_to_none=True)
    logits = model(x)
    (logits * weights).sum().backward()
    return logits.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_sets", [1, 2], ids=["SE", "ME"])
@pytest.mark.parametrize(
    "name,options",
    VARIANTS,
    ids=lambda v: (
        v if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()) or "default"
    ),
)
def test_same_logits_and_gradients_as_reference(name, options, num_sets, backend):
    torch.manual_seed(0)
    model = MODELS[name](
        FIELD_DIMS,
        embed_dim=3,
        num_sets=num_sets,
        backend="reference",
        hidden_dim=8,
        **OPTIONS.get(name, {}),
        **options,
    )
    model = model.double().to(DEVICE).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.stack([torch.randint(0, d, (6,), generator=g) for d in FIELD_DIMS], 1).to(DEVICE)
    weights = torch.randn(6, generator=g, dtype=torch.float64).to(DEVICE)

    ref_logits, ref_grads = logits_and_grads(model, x, weights)
    model.backend = backend
    logits, grads = logits_and_grads(model, x, weights)

    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-10)
    assert grads.keys() == ref_grads.keys() and "embedding.weight" in grads
    for key, ref_grad in ref_grads.items():
        torch.testing.assert_close(grads[key], ref_grad, rtol=1e-10, atol=1e-10, msg=key)


@gpu_test
@pytest.mark.parametrize("backend", BACKENDS)
def test_model_trains_in_float32(backend):
    torch.manual_seed(0)
    model = MODELS["dcnv2"](FIELD_DIMS, embed_dim=3, num_sets=2, backend=backend, hidden_dim=16).to(
        DEVICE
    )
    x = torch.stack([torch.randint(0, d, (64,)) for d in FIELD_DIMS], 1).to(DEVICE)
    y = (x[:, 0] % 2).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
