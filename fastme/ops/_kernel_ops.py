"""The custom-op wiring every kernel backend shares: schemas, fake (meta) implementations,
autograd formulas and the registration of the public ops' implementations.

A backend (fastme/ops/triton/, fastme/ops/cuda/) supplies only host functions that launch its
kernels on contiguous tensors; :func:`define_backend` turns them into
``torch.library.custom_op``s named ``fastme::<backend>_<op>`` that run in eager mode, under
``torch.compile(fullgraph=True)`` and in ``gradcheck``, and registers them with
fastme.ops._backend. Adding a backend is one call; adding an op is one function here.

Host functions a backend supplies (shapes as in fastme/ops/reference.py):
  lookup      (table, indices, offsets) -> emb [B, M, N, K]
  lookup_grad (grad, indices, offsets, num_rows) -> dense table gradient, duplicates summed
  fm          (table, indices, offsets) -> [B, M, K]
  fm_grad     (grad, table, indices, offsets) -> table gradient
  fwfm        (table, indices, offsets, field_weights) -> [B, M, K]
  fwfm_grad   (grad, table, indices, offsets, field_weights) -> (table grad, field-weight grad)
  cross       (x0, weight, bias, save) -> (x_L, states [S, B, M, D])
  cross_grad  (grad, x0, weight, bias, states) -> (grad x0, grad weight, grad bias)
  cross_states(layers, save) -> S, the number of [B, M, D] planes of ``states``
  lookup_cross(table, indices, offsets, weight, bias, save) -> (x_L, x_0, states), optional:
              by default the lookup writes x_0, then the cross network runs.
``states`` is whatever the backend's backward needs (activations saved by the forward); with
``save=False`` (no gradient will be asked for) a backend may keep less.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor

from fastme.ops import _backend
from fastme.ops._policy import check_nonempty_table


def _contiguous(*args):
    return tuple(a.contiguous() if isinstance(a, Tensor) else a for a in args)


def _gather(host_fn, table, indices, *rest):
    """Runs a forward that gathers table rows. Its kernels clamp every row into the table (the
    bounds check may be off), which needs a row to clamp into."""
    check_nonempty_table(table, indices)
    return host_fn(*_contiguous(table, indices, *rest))


def _op(backend: str, name: str, device_types):
    return torch.library.custom_op(f"fastme::{backend}_{name}", mutates_args=(),
                                   device_types=device_types)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _lookup_ops(backend, device_types, forward, backward):
    @_op(backend, "multi_embedding_lookup", device_types)
    def lookup(table: Tensor, indices: Tensor, offsets: Tensor) -> Tensor:
        return _gather(forward, table, indices, offsets)

    @_op(backend, "multi_embedding_lookup_backward", device_types)
    def lookup_backward(grad: Tensor, indices: Tensor, offsets: Tensor, num_rows: int) -> Tensor:
        return backward(*_contiguous(grad, indices, offsets), num_rows)

    @lookup.register_fake
    def _(table, indices, offsets):
        return table.new_empty((indices.shape[0], table.shape[1], indices.shape[1], table.shape[2]))

    @lookup_backward.register_fake
    def _(grad, indices, offsets, num_rows):
        return grad.new_empty((num_rows, grad.shape[1], grad.shape[3]))

    def setup_context(ctx, inputs, output):
        table, indices, offsets = inputs
        ctx.save_for_backward(indices, offsets)
        ctx.num_rows = table.shape[0]

    def grad_fn(ctx, grad):
        indices, offsets = ctx.saved_tensors
        return lookup_backward(grad, indices, offsets, ctx.num_rows), None, None

    lookup.register_autograd(grad_fn, setup_context=setup_context)
    return lookup, lookup_backward


def _as_lookup(emb):
    """Already-gathered embeddings [B, M, N, K] as a lookup of distinct rows, so that the fused
    pooled-lookup kernels pool them: row b*N + i of the [B*N, M, K] table is e_{b,i}, and the
    table gradient is the gradient of ``emb`` (reached through the copy)."""
    b, m, n, k = emb.shape
    table = emb.transpose(1, 2).reshape(b * n, m, k)
    indices = (torch.arange(b, device=emb.device) * n).unsqueeze(1).expand(b, n)
    return table, indices, torch.arange(n, device=emb.device)


def _pooled_fake(table, indices, offsets, *rest):
    return table.new_empty((indices.shape[0], table.shape[1], table.shape[2]))


def _pooling_ops(backend, device_types, fm_forward, fm_backward, fwfm_forward, fwfm_backward):
    @_op(backend, "fm_pooled_lookup", device_types)
    def fm(table: Tensor, indices: Tensor, offsets: Tensor) -> Tensor:
        return _gather(fm_forward, table, indices, offsets)

    @_op(backend, "fm_pooled_lookup_backward", device_types)
    def fm_backward_op(grad: Tensor, table: Tensor, indices: Tensor, offsets: Tensor) -> Tensor:
        return fm_backward(*_contiguous(grad, table, indices, offsets))

    @_op(backend, "fwfm_pooled_lookup", device_types)
    def fwfm(table: Tensor, indices: Tensor, offsets: Tensor, field_weights: Tensor) -> Tensor:
        return _gather(fwfm_forward, table, indices, offsets, field_weights)

    @_op(backend, "fwfm_pooled_lookup_backward", device_types)
    def fwfm_backward_op(grad: Tensor, table: Tensor, indices: Tensor, offsets: Tensor,
                         field_weights: Tensor) -> tuple[Tensor, Tensor]:
        return fwfm_backward(*_contiguous(grad, table, indices, offsets, field_weights))

    fm.register_fake(_pooled_fake)
    fwfm.register_fake(_pooled_fake)

    @fm_backward_op.register_fake
    def _(grad, table, indices, offsets):
        return torch.empty_like(table)

    @fwfm_backward_op.register_fake
    def _(grad, table, indices, offsets, field_weights):
        return torch.empty_like(table), torch.empty_like(field_weights)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def fm_grad(ctx, grad):
        table, indices, offsets = ctx.saved_tensors
        dtable = fm_backward_op(grad, table, indices, offsets) if ctx.needs_input_grad[0] else None
        return dtable, None, None

    def fwfm_grad(ctx, grad):
        table, indices, offsets, field_weights = ctx.saved_tensors
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[3]):
            return None, None, None, None
        dtable, dweights = fwfm_backward_op(grad, table, indices, offsets, field_weights)
        return dtable, None, None, dweights

    fm.register_autograd(fm_grad, setup_context=setup_context)
    fwfm.register_autograd(fwfm_grad, setup_context=setup_context)

    def pooled_lookup(table, indices, offsets, field_weights=None):
        if field_weights is None:
            return fm(table, indices, offsets)
        return fwfm(table, indices, offsets, field_weights)

    def fm_pooling(emb):
        return fm(*_as_lookup(emb))

    def fwfm_pooling(emb, field_weights):
        return fwfm(*_as_lookup(emb), field_weights)

    return SimpleNamespace(fm=fm, fm_backward=fm_backward_op, fwfm=fwfm,
                           fwfm_backward=fwfm_backward_op, pooled_lookup=pooled_lookup,
                           fm_pooling=fm_pooling, fwfm_pooling=fwfm_pooling)


def _cross_ops(backend, device_types, forward, backward, state_planes, lookup_cross_forward,
               lookup_forward, lookup_backward_op):
    def states_fake(x0, layers, save):
        return x0.new_empty((state_planes(layers, save), *x0.shape))

    @_op(backend, "cross_network", device_types)
    def cross(x0: Tensor, weight: Tensor, bias: Tensor, save: bool) -> tuple[Tensor, Tensor]:
        """Returns (x_L, states); the states only feed the backward."""
        return forward(*_contiguous(x0, weight, bias), save)

    @_op(backend, "cross_network_backward", device_types)
    def cross_backward(grad: Tensor, x0: Tensor, weight: Tensor, bias: Tensor,
                       states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return backward(*_contiguous(grad, x0, weight, bias, states))

    if lookup_cross_forward is None:
        def lookup_cross_forward(table, indices, offsets, weight, bias, save):
            (b, n), (_, m, k) = indices.shape, table.shape
            x0 = lookup_forward(table, indices, offsets).reshape(b, m, n * k)
            out, states = forward(x0, weight, bias, save)
            return out, x0, states

    @_op(backend, "lookup_cross_network", device_types)
    def lookup_cross(table: Tensor, indices: Tensor, offsets: Tensor, weight: Tensor,
                     bias: Tensor, save: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (x_L, the gathered x_0, states); x_0 and the states feed the backward."""
        return _gather(lookup_cross_forward, table, indices, offsets, weight, bias, save)

    @cross.register_fake
    def _(x0, weight, bias, save):
        return torch.empty_like(x0), states_fake(x0, weight.shape[0], save)

    @cross_backward.register_fake
    def _(grad, x0, weight, bias, states):
        return torch.empty_like(x0), torch.empty_like(weight), torch.empty_like(bias)

    @lookup_cross.register_fake
    def _(table, indices, offsets, weight, bias, save):
        x0 = table.new_empty((indices.shape[0], table.shape[1], indices.shape[1] * table.shape[2]))
        return torch.empty_like(x0), torch.empty_like(x0), states_fake(x0, weight.shape[0], save)

    def cross_setup(ctx, inputs, output):
        x0, weight, bias, save = inputs
        ctx.saved = save
        if save:
            ctx.save_for_backward(x0, weight, bias, output[1])
        ctx.mark_non_differentiable(output[1])

    def saved_or_raise(ctx):
        if not ctx.saved:
            raise RuntimeError(f"fastme {backend} cross network: the forward ran without saving "
                               "activations (save=False) but a gradient was requested")
        return ctx.saved_tensors

    def cross_grad(ctx, grad, _grad_states):
        x0, weight, bias, states = saved_or_raise(ctx)
        return (*cross_backward(grad, x0, weight, bias, states), None)

    def lookup_cross_setup(ctx, inputs, output):
        table, indices, offsets, weight, bias, save = inputs
        ctx.saved = save
        if save:
            ctx.save_for_backward(indices, offsets, weight, bias, output[1], output[2])
        ctx.num_rows, ctx.row_shape = table.shape[0], table.shape[1:]
        ctx.mark_non_differentiable(output[1], output[2])

    def lookup_cross_grad(ctx, grad, _grad_x0, _grad_states):
        indices, offsets, weight, bias, x0, states = saved_or_raise(ctx)
        dx0, dweight, dbias = cross_backward(grad, x0, weight, bias, states)
        dtable = None
        if ctx.needs_input_grad[0]:
            b, n = indices.shape
            emb_grad = dx0.reshape(b, ctx.row_shape[0], n, ctx.row_shape[1])  # [B, M, N, K]
            dtable = lookup_backward_op(emb_grad, indices, offsets, ctx.num_rows)
        return dtable, None, None, dweight, dbias, None

    cross.register_autograd(cross_grad, setup_context=cross_setup)
    lookup_cross.register_autograd(lookup_cross_grad, setup_context=lookup_cross_setup)

    def cross_network(x0, weight, bias):
        return cross(x0, weight, bias, _needs_grad(x0, weight, bias))[0]

    def lookup_cross_network(table, indices, offsets, weight, bias):
        save = _needs_grad(table, weight, bias)
        return lookup_cross(table, indices, offsets, weight, bias, save)[0]

    return SimpleNamespace(cross=cross, cross_backward=cross_backward, lookup_cross=lookup_cross,
                           cross_network=cross_network, lookup_cross_network=lookup_cross_network)


def define_backend(backend: str, *, device_types=None, lookup, lookup_grad, fm, fm_grad, fwfm,
                   fwfm_grad, cross, cross_grad, cross_states, lookup_cross=None):
    """Define every custom op of ``backend`` from its host functions (see the module docstring)
    and register the public ops' implementations. Returns the ops by name (for tests)."""
    lookup_op, lookup_backward_op = _lookup_ops(backend, device_types, lookup, lookup_grad)
    pooling = _pooling_ops(backend, device_types, fm, fm_grad, fwfm, fwfm_grad)
    crossing = _cross_ops(backend, device_types, cross, cross_grad, cross_states, lookup_cross,
                          lookup, lookup_backward_op)
    _backend.register("multi_embedding_lookup", backend)(lookup_op)
    _backend.register("pooled_lookup", backend)(pooling.pooled_lookup)
    _backend.register("fm_pooling", backend)(pooling.fm_pooling)
    _backend.register("fwfm_pooling", backend)(pooling.fwfm_pooling)
    _backend.register("cross_network", backend)(crossing.cross_network)
    _backend.register("lookup_cross_network", backend)(crossing.lookup_cross_network)
    return SimpleNamespace(lookup=lookup_op, lookup_backward=lookup_backward_op,
                           **vars(pooling), **vars(crossing))


def define_unavailable_backend(backend: str, reason: str, *, device_types=None, cross_states):
    """The custom ops of a backend whose package cannot be imported here (e.g. Triton is not
    installed): the same schemas and fake implementations as :func:`define_backend`, so that a
    program traced with that backend (``torch.export``) still loads in this process; running
    one of its ops raises BackendUnavailable with ``reason``. Nothing is registered with the
    public ops, which never dispatch to it."""

    def unavailable(*args):
        raise _backend.BackendUnavailable(
            f"this program calls fastme's {backend} kernels, which cannot run here ({reason})")

    lookup_op, lookup_backward_op = _lookup_ops(backend, device_types, unavailable, unavailable)
    _pooling_ops(backend, device_types, unavailable, unavailable, unavailable, unavailable)
    _cross_ops(backend, device_types, unavailable, unavailable, cross_states, None, unavailable,
               lookup_backward_op)
    return lookup_op
