"""The GPU checks: what the kernel tests cannot check through Triton's CPU interpreter (races,
sizes past 2^31 elements, alignment, streams, host blocking). Every test here carries the `gpu`
marker and skips without a CUDA device. bench/gpu_check.sh runs them; by hand: `pytest tests/gpu`.
"""

import gc
import os
import sys
import time

import pytest
import torch
from kernel_backends import BACKENDS, DEVICE, criteo_like_field_dims, lookup_inputs

import fastme.ops as ops

_START = time.monotonic()
# bench/gpu_check.sh gives the checks a time box (seconds from collection): a check that would
# start after it skips, so that the script's later steps still get their time.
_SECONDS = float(os.environ.get("FASTME_GPU_CHECK_SECONDS", "inf"))


def pytest_report_header(config):
    if DEVICE != "cuda":
        return "GPU checks: no CUDA device, every check skips"
    p = torch.cuda.get_device_properties(0)
    return (
        f"GPU checks on {p.name} (cc {p.major}.{p.minor}, {p.multi_processor_count} SMs), "
        f"kernel backends {BACKENDS}"
    )


@pytest.fixture(autouse=True)
def gpu_check(request):
    """Each check: within the time box, bounds check off (a call that synchronised would hide a
    stream bug), seeded; afterwards the device's errors are the check's and its memory freed."""
    if time.monotonic() - _START > _SECONDS:
        pytest.skip(f"the checks' time box of {_SECONDS:.0f}s is spent")
    previous = ops.get_bounds_check()
    ops.set_bounds_check("off")
    torch.manual_seed(0)
    yield
    ops.set_bounds_check(previous)
    # pytest keeps a failed test's traceback (and so its tensors, GBs here) for post-mortem
    # debugging: drop it so that the next check has the device's memory.
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            setattr(sys, name, None)
    try:
        torch.cuda.synchronize()  # an asynchronous kernel error belongs to this check
    except Exception:
        request.session.shouldstop = "the CUDA context is broken: no later check can run"
        raise
    gc.collect()
    torch.cuda.empty_cache()


@pytest.fixture
def criteo():
    """criteo(batch, num_sets, dim, dtype, seed=0): (table, indices, offsets) on the GPU for 39
    fields of Criteo-like sizes."""

    def make(batch, num_sets, dim, dtype, seed=0):
        return lookup_inputs(
            batch,
            criteo_like_field_dims(seed=seed),
            num_sets,
            dim,
            dtype=dtype,
            seed=seed,
            device="cuda",
        )

    return make
