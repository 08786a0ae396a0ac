"""torch.compile(model, fullgraph=True) of whole models, forward and backward, as the first use
of fastme in a fresh process, for every backend usable here: kernel backends must be imported
and resolved outside the traced region (nothing can be imported inside a Dynamo graph)."""

import os
import subprocess
import sys

import pytest

from kernel_backends import DEVICE

import fastme.ops as ops

# Runs in a new interpreter. A model per fused op: DNN (lookup), NFwFM (lookup + FwFM pooling),
# DCNv2 (lookup + cross network). Compiled logits and gradients must equal eager ones (float64).
SCRIPT = r"""
import sys
import torch
from fastme.models import MODELS

backend, device = sys.argv[1], sys.argv[2]
compiler = "inductor" if device == "cuda" else "aot_eager"
field_dims = [3, 5, 2, 4]
g = torch.Generator().manual_seed(1)
x = torch.stack([torch.randint(0, d, (6,), generator=g) for d in field_dims], 1).to(device)
for name, options in [("dnn", {}), ("nfwfm", {}), ("dcnv2", dict(num_cross_layers=2))]:
    torch.manual_seed(0)
    model = MODELS[name](field_dims, embed_dim=3, num_sets=2, backend=backend, hidden_dim=8,
                         **options).double().to(device).eval()
    compiled = torch.compile(model, fullgraph=True, backend=compiler)
    logits = compiled(x)                       # the first call of any fastme op in this process
    logits.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    eager = model(x)
    eager.sum().backward()
    torch.testing.assert_close(logits, eager, rtol=1e-9, atol=1e-9)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-9, atol=1e-9, msg=n)
    print(name, backend, "ok")
"""


# "auto" picks a kernel backend on CUDA tensors, and on CPU tensors when the CPU kernels are built
# (else the reference, already covered).
@pytest.mark.parametrize(
    "backend",
    ops.available_backends(DEVICE)
    + ["auto"] * ("cpu" in ops.available_backends("cpu") or DEVICE == "cuda"),
)
def test_compiled_model_in_fresh_process(backend):
    env = dict(os.environ)
    if DEVICE == "cpu":
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, backend, DEVICE],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count(" ok") == 3
