"""Loads the compiled extension ``fastme._C`` lazily, with errors a user can act on."""

from __future__ import annotations

import functools


class ExtensionUnavailable(RuntimeError):
    """The compiled CUDA extension cannot serve this call."""


@functools.lru_cache(maxsize=None)
def load():
    """Return the ``fastme._C`` module, or raise ExtensionUnavailable saying why."""
    try:
        from fastme import _C
    except ImportError as exc:  # not built (e.g. installed without a compiler)
        raise ExtensionUnavailable(
            "fastme's compiled extension is not built; reinstall with `pip install -e .` "
            f"on a machine with a C++ compiler ({exc})"
        ) from exc
    return _C


def built_with_cuda() -> bool:
    """True when the extension exists and was compiled with the CUDA kernels."""
    try:
        return bool(getattr(load(), "built_with_cuda", False))
    except ExtensionUnavailable:
        return False


def cuda_kernels_available() -> bool:
    """True when the extension was compiled with CUDA and a CUDA device is visible."""
    return built_with_cuda() and load().cuda_device_count() > 0


def require_cuda_kernels():
    """Return the extension, or raise a clear error when the CUDA kernels cannot run here."""
    ext = load()
    if not getattr(ext, "built_with_cuda", False):
        raise ExtensionUnavailable(
            "fastme was built without CUDA kernels (no nvcc at build time, or FASTME_CUDA=0); "
            "rebuild with nvcc on PATH to use backend='cuda'"
        )
    if ext.cuda_device_count() == 0:
        # The extension's own (static) CUDA runtime says why: no device, or a driver older than
        # the toolkit the extension was built with.
        raise ExtensionUnavailable(
            f"backend='cuda' needs a CUDA device, and none is visible ({ext.cuda_runtime_status()})")
    return ext
