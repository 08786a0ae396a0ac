"""The models' per-set projection in eval mode (BatchNorm folded into the Linear): the mean over
the sets of ReLU(Linear), [B, M, in] -> [B, out]. A kernel backend may supply the epilogue
(bias, ReLU, mean over sets) as one pass after bias-free GEMMs; it is used only when no gradient
is needed, otherwise (and on backends without it) the reference composition runs."""

from __future__ import annotations

import torch

from fastme.ops import _backend, reference
from fastme.ops._kernel_ops import BackendOps, needs_grad
from fastme.ops._validation import FLOAT_DTYPES, check_shape, check_tensor


def set_projection_mean(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """mean over m of relu(x[:, m] @ weight[m].T + bias[m]).

    x [B, M, in], weight [M, out, in], bias [M, out] -> [B, out] in the GEMMs' dtype (x's, or
    autocast's); the sets are summed in float32 (float64 for float64) and rounded once.
    """
    check_tensor(x, "x", ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor(weight, "weight", ndim=3, dtypes=FLOAT_DTYPES, device=x.device)
    sets, out, _ = weight.shape
    if sets < 1:
        raise ValueError("weight must hold at least one set ([M, out, in] with M >= 1)")
    check_shape(weight, "weight", (x.shape[1], out, x.shape[2]))
    check_tensor(bias, "bias", ndim=2, dtypes=FLOAT_DTYPES, device=x.device)
    check_shape(bias, "bias", (sets, out))
    fn = _backend.resolve("set_projection_mean", backend, x.device)
    return fn(x, weight, bias)


_backend.register("set_projection_mean", "reference")(reference.set_projection_mean)


def kernel_ops(kernels: BackendOps) -> dict:
    """One backend's fused epilogue, ``<backend>_set_relu_mean(z, bias)``: z the M bias-free
    GEMM outputs [B, out] (one dtype), bias [M, out] -> mean_m relu(z_m + bias_m) [B, out]."""
    relu_mean = kernels.define(
        "set_relu_mean",
        "(Tensor[] z, Tensor bias) -> Tensor",
        lambda z, bias: z[0].new_empty(z[0].shape),
    )
    if relu_mean is None:
        return {}

    def set_projection_mean(x, weight, bias):
        if needs_grad(x, weight, bias):  # the kernel has no backward: the reference's autograd
            return reference.set_projection_mean(x, weight, bias)
        # torch's GEMMs per set on x's strided rows (under autocast in its dtype), no bias
        z = [torch.mm(x[:, m], weight[m].t()) for m in range(weight.shape[0])]
        return relu_mean(z, bias)

    return {"set_projection_mean": set_projection_mean}
