"""What the kernel tests share: the device they run on, the kernel backends available there, and
the decorator of the Criteo-sized GPU tests."""

import pytest
import torch

import fastme.ops as ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [b for b in ops.available_backends(DEVICE) if b != "reference"]
requires_kernel_backend = pytest.mark.skipif(
    not BACKENDS, reason=f"no kernel backend can run on {DEVICE} here (install triton, or run on a GPU)")
# Table gradients summed with float atomics on a GPU may differ in the last bits between two
# backward passes, which gradcheck checks for.
NONDET_TOL = 1e-10


def criteo_shapes_on_gpu(test):
    """Runs ``test(backend, dtype, num_sets)`` at Criteo size on a GPU, for every kernel backend."""
    for decorator in (pytest.mark.parametrize("num_sets", [1, 4, 10]),
                      pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16]),
                      pytest.mark.parametrize("backend", BACKENDS),
                      pytest.mark.skipif(not torch.cuda.is_available(),
                                         reason="Criteo-sized shapes need a CUDA GPU"),
                      pytest.mark.gpu):
        test = decorator(test)
    return test


def criteo_like_field_dims(num_fields=39, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [int(d) for d in torch.randint(2, 5000, (num_fields,), generator=g)]
