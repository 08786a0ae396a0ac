"""Loads the compiled extension ``fastme._C`` lazily, with errors a user can act on.

The availability checks run inside the public ops, so they must also trace under
``torch.compile(fullgraph=True)``: Dynamo cannot call into the extension, so the checks read a
cached result that the compiler treats as a constant (``assume_constant_result``).
"""

from __future__ import annotations

import functools

import torch


class ExtensionUnavailable(RuntimeError):
    """The compiled extension cannot serve this call."""


_module = None


def load():
    """Return the ``fastme._C`` module, or raise ExtensionUnavailable saying why."""
    global _module
    if _module is None:
        try:
            from fastme import _C
        except ImportError as exc:  # not built (e.g. installed without a compiler)
            raise ExtensionUnavailable(
                "fastme's compiled extension is not built; reinstall with `pip install -e .` "
                f"on a machine with a C++ compiler ({exc})"
            ) from exc
        _module = _C
    return _module


@functools.lru_cache(maxsize=None)
def _cuda_problem_uncached() -> str:
    try:
        ext = load()
    except ExtensionUnavailable as exc:
        return str(exc)
    if not getattr(ext, "built_with_cuda", False):
        return (
            "fastme was built without CUDA kernels (no nvcc at build time, or FASTME_CUDA=0); "
            "rebuild with nvcc on PATH to use backend='cuda'"
        )
    if ext.cuda_device_count() == 0:
        # The extension's own (static) CUDA runtime says why: no device, or a driver older than
        # the toolkit the extension was built with.
        return (
            f"backend='cuda' needs a CUDA device, and none is visible ({ext.cuda_runtime_status()})"
        )
    return ""


@torch.compiler.assume_constant_result
def cuda_problem() -> str:
    """Why the CUDA kernels cannot run in this process ("" when they can); evaluated once."""
    return _cuda_problem_uncached()


def cuda_kernels_available() -> bool:
    """True when the extension was compiled with CUDA and a CUDA device is visible."""
    return cuda_problem() == ""


def require_cuda_kernels():
    """Return the extension, or raise a clear error when the CUDA kernels cannot run here."""
    problem = cuda_problem()
    if problem:
        raise ExtensionUnavailable(problem)
    return load()


@functools.lru_cache(maxsize=None)
def _cpu_problem_uncached() -> str:
    try:
        ext = load()
    except ExtensionUnavailable as exc:
        return str(exc)
    # the newest CPU entry points: an extension built from older sources lacks them
    newest = (
        "cpu_lookup_forward_to",
        "cpu_check_indices",
        "cpu_table_optim_step",
        "cpu_set_relu_mean",
        "cpu_table_pairs_scatter",
        "cpu_dropout",
    )
    if not all(hasattr(ext, name) for name in newest):
        return "fastme's compiled extension predates the CPU kernels; rebuild it (pip install -e .)"
    return ""


@torch.compiler.assume_constant_result
def cpu_problem() -> str:
    """Why the CPU kernels cannot run in this process ("" when they can); evaluated once."""
    return _cpu_problem_uncached()


def require_cpu_kernels():
    """Return the extension, or raise a clear error when the CPU kernels cannot run here."""
    problem = cpu_problem()
    if problem:
        raise ExtensionUnavailable(problem)
    return load()
