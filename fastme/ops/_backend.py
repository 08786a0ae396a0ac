"""Backend selection and the registry of op implementations.

Every public op has one eager ``reference`` implementation (fastme/ops/reference.py) and may have
``triton`` (fastme/ops/triton/) and ``cuda`` (kernels/ via fastme/ops/cuda/) implementations,
registered with :func:`register`. ``import fastme.ops`` imports every kernel package that can be
imported here (:func:`load_kernel_backends`), so that resolving an op is a dictionary lookup:
ops are resolved inside the traced code of ``torch.compile(fullgraph=True)``, where nothing can
be imported. A package that cannot be imported (no Triton) leaves its backend unavailable, with
the reason kept for the error message; ``import fastme.ops`` never needs Triton or the compiled
extension. The Triton package picks GPU or interpreter launch configurations when imported, so
TRITON_INTERPRET must be set before fastme.ops is imported.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable

import torch

from fastme import _extension

BACKENDS = ("auto", "reference", "triton", "cuda")

# Order in which "auto" tries kernel backends on a CUDA device: Triton first, as it runs wherever
# Triton does; the two have not been timed against each other on a GPU yet.
AUTO_ORDER = ("triton", "cuda")

_IMPLEMENTATIONS: dict[tuple[str, str], Callable] = {}


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run this op on these tensors."""


def register(op: str, backend: str):
    """Decorator: register ``fn`` as the ``backend`` implementation of ``op``."""
    if backend not in BACKENDS[1:]:
        raise ValueError(f"unknown backend {backend!r}")

    def decorator(fn):
        _IMPLEMENTATIONS[(op, backend)] = fn
        return fn

    return decorator


# Kernel backend -> the package whose import defines its custom ops and implementations.
KERNEL_PACKAGES = {"triton": "fastme.ops.triton", "cuda": "fastme.ops.cuda"}
# Kernel backend -> why its package could not be imported here.
_IMPORT_ERRORS: dict[str, str] = {}


def load_kernel_backends() -> None:
    """Import every kernel package once (``import fastme.ops`` calls this), so that every
    ``fastme::`` custom op exists in this process and a saved ``torch.export`` program that calls
    one loads. A package that cannot be imported (Triton not installed) still gets its ops'
    schemas and fake kernels; running them raises BackendUnavailable with the reason."""
    from fastme.ops import _kernel_ops

    for backend, package in KERNEL_PACKAGES.items():
        if backend in _IMPORT_ERRORS:
            continue
        try:
            importlib.import_module(package)
        except ImportError as exc:
            _IMPORT_ERRORS[backend] = f"{type(exc).__name__}: {exc}"
            # the Triton backend keeps x_1..x_{L-1} for its backward (fastme/ops/triton/__init__)
            _kernel_ops.define_unavailable_backend(
                backend, _IMPORT_ERRORS[backend],
                device_types="cuda" if backend == "cuda" else None,
                cross_states=lambda layers, save: max(layers - 1, 0))


def _usable(backend: str, device: torch.device) -> bool:
    """Whether the kernel backend ``backend`` can run on ``device`` here."""
    if backend == "triton":
        return ((device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
                and "triton" not in _IMPORT_ERRORS)
    return device.type == "cuda" and _extension.cuda_kernels_available()


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on ``device`` here (reference always can)."""
    device = torch.device(device)
    return ["reference"] + [b for b in KERNEL_PACKAGES if _usable(b, device)]


def resolve(op: str, backend: str, device: torch.device) -> Callable:
    """Return the implementation of ``op`` for ``backend`` on ``device``, or raise clearly."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            for candidate in AUTO_ORDER:
                fn = _IMPLEMENTATIONS.get((op, candidate)) if _usable(candidate, device) else None
                if fn is not None:
                    return fn
        return _IMPLEMENTATIONS[(op, "reference")]
    if backend == "triton" and not _usable("triton", device):
        why = _IMPORT_ERRORS.get("triton", f"got tensors on {device}")
        raise BackendUnavailable(
            f"backend='triton' needs CUDA tensors and the triton package (or TRITON_INTERPRET=1 "
            f"for the CPU interpreter; in a fastme checkout: pip install -e '.[triton]'): {why}")
    if backend == "cuda":
        if device.type != "cuda":
            raise BackendUnavailable(f"backend='cuda' needs CUDA tensors, got tensors on {device}")
        _extension.require_cuda_kernels()
    fn = _IMPLEMENTATIONS.get((op, backend))
    if fn is None:
        why = f" ({_IMPORT_ERRORS[backend]})" if backend in _IMPORT_ERRORS else ""
        raise BackendUnavailable(f"op {op!r} has no {backend!r} implementation in this build{why}")
    return fn
