"""Backend selection: which implementation of a public op runs for ``backend=`` and a device.

Every public op has one eager ``reference`` implementation (fastme/ops/reference.py) and may have
one per kernel backend. :func:`load` (``import fastme.ops`` calls it) reads each kernel backend
package's record (fastme/ops/_kernel_ops.py:KernelBackend), imports its host functions and lets
every op module define that backend's custom ops, so that resolving an op is a dictionary lookup:
ops are resolved inside the traced code of ``torch.compile(fullgraph=True)``, where nothing can
be imported. A backend whose host functions cannot be imported (no Triton) still gets its custom
ops' schemas and fake kernels, so that a saved ``torch.export`` program that calls them loads;
running one raises BackendUnavailable with the reason. ``import fastme.ops`` never needs Triton
or the compiled extension. The Triton kernels pick GPU or interpreter launch configurations when
imported, so TRITON_INTERPRET must be set before fastme.ops is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

import torch

from fastme.ops._kernel_ops import BackendOps, KernelBackend

# Kernel backends by name, in the order "auto" tries them.
_KERNEL_BACKENDS: dict[str, KernelBackend] = {}
# Kernel backend -> why its host functions could not be imported here.
_LOAD_ERRORS: dict[str, str] = {}
_IMPLEMENTATIONS: dict[tuple[str, str], Callable] = {}


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run this op on these tensors."""


def backends() -> tuple[str, ...]:
    """Every value ``backend=`` accepts."""
    return ("auto", "reference", *_KERNEL_BACKENDS)


def register(op: str, backend: str):
    """Decorator: register ``fn`` as the ``backend`` implementation of ``op``."""

    def decorator(fn):
        _IMPLEMENTATIONS[(op, backend)] = fn
        return fn

    return decorator


def load(packages: Iterable[str], op_modules: Iterable[Callable]) -> None:
    """Read each kernel backend package's ``BACKEND`` record and define its custom ops with
    every op module's ``kernel_ops``; register the public ops each backend implements."""
    for package in packages:
        backend: KernelBackend = importlib.import_module(package).BACKEND
        if backend.name in _KERNEL_BACKENDS:
            continue
        _KERNEL_BACKENDS[backend.name] = backend
        try:
            host = backend.load()
        except ImportError as exc:
            _LOAD_ERRORS[backend.name] = f"{type(exc).__name__}: {exc}"
            host = {name: _unavailable(backend.name) for name in backend.host_functions}
        kernels = BackendOps(backend, host)
        implemented = {}
        for kernel_ops in op_modules:
            implemented.update(kernel_ops(kernels))
        unknown = set(backend.ops()) - kernels.used
        if unknown:
            raise ValueError(
                f"backend {backend.name!r} declares host functions of unknown ops: "
                f"{sorted(unknown)}"
            )
        if backend.name not in _LOAD_ERRORS:
            for op, fn in implemented.items():
                register(op, backend.name)(fn)


def _unavailable(name: str) -> Callable:
    def unavailable(*args):
        raise BackendUnavailable(
            f"this program calls fastme's {name} kernels, which cannot run "
            f"here ({_LOAD_ERRORS[name]})"
        )

    return unavailable


def _why_not(backend: KernelBackend, device: torch.device) -> str:
    """Why ``backend`` cannot run on ``device`` here ("" when it can)."""
    return _LOAD_ERRORS.get(backend.name) or backend.why_not_here(device)


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on ``device`` here (reference always can)."""
    device = torch.device(device)
    return ["reference"] + [
        name for name, backend in _KERNEL_BACKENDS.items() if not _why_not(backend, device)
    ]


def resolve(op: str, backend: str, device: torch.device) -> Callable:
    """Return the implementation of ``op`` for ``backend`` on ``device``, or raise clearly. A
    kernel backend without an implementation of ``op`` runs the reference."""
    reference = _IMPLEMENTATIONS[(op, "reference")]
    if backend == "auto":
        for name, kernels in _KERNEL_BACKENDS.items():
            fn = _IMPLEMENTATIONS.get((op, name))
            if device.type in kernels.auto and fn is not None and not _why_not(kernels, device):
                return fn
        return reference
    if backend == "reference":
        return reference
    kernels = _KERNEL_BACKENDS.get(backend)
    if kernels is None:
        raise ValueError(f"backend must be one of {backends()}, got {backend!r}")
    why = _why_not(kernels, device)
    if why:
        raise BackendUnavailable(f"backend={backend!r} needs {kernels.needs}: {why}")
    return _IMPLEMENTATIONS.get((op, backend), reference)
