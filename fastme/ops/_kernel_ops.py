"""What a kernel backend declares, and the custom-op machinery every backend shares.

A backend package (fastme/ops/triton/, fastme/ops/cuda/) declares one :class:`KernelBackend`
record, ``BACKEND``: its name, where it runs, why it cannot run here, its cross-network state
layout and its host functions, each keyed by the literal name of the ``torch.library.custom_op``
it becomes (``"fastme::triton_fm_pooled_lookup"``, so that grep finds it). Host functions launch
kernels on contiguous tensors; shapes as in fastme/ops/reference.py:

  multi_embedding_lookup          (table, indices, offsets) -> emb [B, M, N, K]
  multi_embedding_lookup_backward (grad, indices, offsets, num_rows) -> dense table gradient
  fm_pooled_lookup                (table, indices, offsets) -> [B, M, K]
  fm_pooled_lookup_backward       (grad, table, indices, offsets) -> table gradient
  fwfm_pooled_lookup              (table, indices, offsets, field_weights) -> [B, M, K]
  fwfm_pooled_lookup_backward     (grad, table, indices, offsets, field_weights)
                                  -> (table gradient, field-weight gradient)
  cross_network                   (x0, weight, bias, save) -> (x_L, states [S, B, M, D])
  cross_network_backward          (grad, x0, weight, bias, states) -> (grad x0, weight, bias)
  lookup_cross_network            (table, indices, offsets, weight, bias, save)
                                  -> (x_L, x_0, states)

``states`` is whatever the backend's backward needs, ``cross_states(layers, save)`` planes of
[B, M, D]; with ``save=False`` (no gradient will be asked for) a backend may keep less. A public
op whose host functions a backend leaves out runs the reference composition on that backend.

The op modules (embedding_lookup.py, pooling.py, cross_network.py) turn host functions into
custom ops through :class:`BackendOps`, with the schema, fake implementation and autograd of each
op written once there, for every backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fastme.ops._policy import check_nonempty_table


@dataclass(frozen=True)
class KernelBackend:
    """One kernel backend, as its package declares it."""

    name: str  # the value of ``backend=``
    package: str  # the package whose modules hold the host functions
    devices: tuple[str, ...]  # device types its custom ops have kernels for
    auto: tuple[str, ...]  # device types on which backend="auto" picks it
    needs: str  # what it needs, for the error message
    why_not_here: Callable[[torch.device], str]  # "" when it can run on that device here
    cross_states: Callable[[int, bool], int]  # planes of the cross network's ``states``
    # literal custom-op name -> "module.function" of the host function, relative to ``package``
    host_functions: Mapping[str, str] = field(default_factory=dict)
    # Its lookup_cross_network takes weights in autocast's dtype with the (float32) table and
    # gathers x_0 straight into that dtype: under autocast, when no gradient is needed
    # (inference), the fused op runs instead of a float32 lookup, a cast and the cross network.
    mixed_lookup_cross: bool = False

    def ops(self) -> dict[str, str]:
        """Op kind (the name after ``fastme::<backend>_``) -> custom-op name."""
        prefix = f"fastme::{self.name}_"
        bad = [name for name in self.host_functions if not name.startswith(prefix)]
        if bad:
            raise ValueError(
                f"backend {self.name!r}: custom-op names must start with {prefix!r}, got {bad}"
            )
        return {name[len(prefix) :]: name for name in self.host_functions}

    def load(self) -> dict[str, Callable]:
        """Import the host functions (ImportError when the backend's dependency is missing)."""
        loaded = {}
        for name, where in self.host_functions.items():
            module, function = where.rsplit(".", 1)
            loaded[name] = getattr(importlib.import_module(f"{self.package}.{module}"), function)
        return loaded


def contiguous(*args):
    return tuple(a.contiguous() if isinstance(a, Tensor) else a for a in args)


def needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class BackendOps:
    """One backend's host functions while the op modules define its custom ops."""

    def __init__(self, backend: KernelBackend, host: Mapping[str, Callable]):
        self.backend = backend
        self._names = backend.ops()
        self._host = host
        self.used: set[str] = set()
        self.defined: dict[str, object] = {}  # kind -> custom op, for the op modules after

    def host(self, kind: str) -> Callable | None:
        """The host function of op ``kind`` (None when the backend leaves it out)."""
        self.used.add(kind)
        name = self._names.get(kind)
        return None if name is None else self._host[name]

    def define(self, kind: str, schema: str, fake: Callable, *, gathers: bool = False):
        """The custom op of ``kind`` running the backend's host function, with the fake
        implementation ``fake``; None when the backend has no host function for it.
        ``gathers``: the op reads table rows, which its kernels clamp into the table, which
        needs a row to clamp into."""
        fn = self.host(kind)
        if fn is None:
            return None

        def run(*args):
            if gathers:
                check_nonempty_table(args[0], args[1])
            return fn(*contiguous(*args))

        op = torch.library.custom_op(
            self._names[kind],
            run,
            mutates_args=(),
            schema=schema,
            device_types=self.backend.devices,
        )
        op.register_fake(fake)
        self.defined[kind] = op
        return op
