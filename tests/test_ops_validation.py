"""Public-op input validation and dispatch, on the always-available reference backend."""

import pytest
import torch

import fastme.ops as ops
from fastme._extension import ExtensionUnavailable
from fastme.ops import bounds_check

from kernel_backends import lookup_inputs

# Validation runs before dispatch; every backend that runs on CPU tensors here checks it.
CPU_BACKENDS = ops.available_backends("cpu")


def inputs(batch=4):
    """A [10, 2, 3] table of two fields with 4 and 6 values."""
    return lookup_inputs(batch, [4, 6], 2, 3, dtype=torch.float32, device="cpu")


def lookup_ops(backend):
    """Every lookup-based op, as fn(table, indices, offsets, field_dims)."""
    weight, bias = torch.zeros(1, 2, 6, 6), torch.zeros(1, 2, 6)
    return [
        lambda t, x, o, d: ops.multi_embedding_lookup(t, x, o, field_dims=d, backend=backend),
        lambda t, x, o, d: ops.pooled_lookup(t, x, o, field_dims=d, backend=backend),
        lambda t, x, o, d: ops.lookup_cross_network(
            t, x, o, weight, bias, field_dims=d, backend=backend
        ),
    ]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "offsets,field_dims,match",
    [
        ([-2, 4], None, r"offsets\[0\] = -2 is negative"),
        ([-2, 4], [4, 6], r"offsets\[0\] = -2 is negative"),
        ([0, 18], None, r"offsets\[1\] = 18 is past the table's 10 rows"),
        ([5, 3], None, r"offsets must not decrease"),
        (
            [0, 4],
            [4, 100],
            r"field_dims\[1\] = 100 with offsets\[1\] = 4 needs table rows up to 104 "
            r"but the table has 10 rows",
        ),
        ([0, 4], [4, -1], r"field_dims\[1\] = -1 is negative"),
    ],
    ids=[
        "negative",
        "negative-with-field-dims",
        "past-the-table",
        "decreasing",
        "field-dims-past-the-table",
        "negative-field-dims",
    ],
)
def test_offsets_and_field_dims_are_checked_against_the_table(backend, offsets, field_dims, match):
    table, indices, _ = inputs()
    indices = indices.clamp(0, 3)  # in range of every field of every case
    offsets = torch.tensor(offsets)
    field_dims = None if field_dims is None else torch.tensor(field_dims)
    for op in lookup_ops(backend):
        with pytest.raises(ValueError, match=match):
            op(table, indices, offsets, field_dims)


def test_offsets_check_is_skipped_with_bounds_check_off():
    table, indices, _ = inputs()
    with bounds_check("off"):  # kernels and the reference then read clamped rows
        out = ops.multi_embedding_lookup(
            table, indices.clamp(0, 3), torch.tensor([0, 4]), field_dims=torch.tensor([4, 100])
        )
    assert out.shape == (4, 2, 2, 3)
    assert ops.get_bounds_check() == "error"  # restored after the block


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda t, x, o: (t[0], x, o), ValueError, "table must have 3 dimensions"),
        (lambda t, x, o: (t.int(), x, o), TypeError, "table must have dtype"),
        (lambda t, x, o: (t, x.float(), o), TypeError, "indices must have dtype"),
        (lambda t, x, o: (t, x[0], o), ValueError, "indices must have 2 dimensions"),
        (lambda t, x, o: (t, x, o[:1]), ValueError, "offsets has 1 entries"),
        (lambda t, x, o: ("table", x, o), TypeError, "table must be a torch.Tensor"),
    ],
)
def test_lookup_rejects_bad_arguments(mutate, exc, match):
    with pytest.raises(exc, match=match):
        ops.multi_embedding_lookup(*mutate(*inputs()))


def test_out_of_range_and_negative_indices_name_the_argument():
    table, indices, offsets = inputs()
    indices[2, 1] = 6  # field 1 has 6 values: 0..5
    with pytest.raises(IndexError, match=r"indices\[2, 1\] = 6 is out of range for field 1"):
        ops.multi_embedding_lookup(table, indices, offsets)
    indices[2, 1] = -1
    with pytest.raises(IndexError, match="out of range"):
        ops.pooled_lookup(table, indices, offsets)


def test_bounds_check_clamp_and_off_modes():
    table, indices, offsets = inputs()
    indices[0, 0] = 9
    try:
        ops.set_bounds_check("clamp")
        with pytest.warns(RuntimeWarning, match="clamped"):
            out = ops.multi_embedding_lookup(table, indices, offsets)
        torch.testing.assert_close(out[0, :, 0], table[3])
        ops.set_bounds_check("off")
        ops.multi_embedding_lookup(table, indices[1:], offsets)
        with pytest.raises(ValueError, match="bounds check mode"):
            ops.set_bounds_check("ignore")
    finally:
        ops.set_bounds_check("error")


def test_pooling_and_cross_network_check_parameter_shapes():
    table, indices, offsets = inputs()
    with pytest.raises(ValueError, match=r"field_weights must have shape \(2, 2, 2\)"):
        ops.pooled_lookup(table, indices, offsets, torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match=r"weight must have shape"):
        ops.lookup_cross_network(
            table, indices, offsets, torch.randn(1, 2, 5, 5), torch.randn(1, 2, 6)
        )
    with pytest.raises(ValueError, match=r"bias must have shape"):
        ops.cross_network(torch.randn(4, 2, 6), torch.randn(3, 2, 6, 6), torch.randn(3, 2, 5))


def test_empty_batch_gives_empty_results():
    table, indices, offsets = inputs(batch=0)
    assert ops.multi_embedding_lookup(table, indices, offsets).shape == (0, 2, 2, 3)
    assert ops.pooled_lookup(table, indices, offsets).shape == (0, 2, 3)
    out = ops.lookup_cross_network(
        table, indices, offsets, torch.randn(2, 2, 6, 6), torch.zeros(2, 2, 6)
    )
    assert out.shape == (0, 2, 6)


def test_unknown_and_unavailable_backends_raise_clearly():
    table, indices, offsets = inputs()
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.multi_embedding_lookup(table, indices, offsets, backend="fast")
    with pytest.raises((ops.BackendUnavailable, ExtensionUnavailable), match="CUDA"):
        ops.multi_embedding_lookup(table, indices, offsets, backend="cuda")
    assert "reference" in ops.available_backends("cpu")


def test_auto_backend_on_cpu_is_the_reference():
    table, indices, offsets = inputs()
    torch.testing.assert_close(
        ops.multi_embedding_lookup(table, indices, offsets),
        ops.reference.multi_embedding_lookup(table, indices, offsets),
    )


def test_a_backend_implements_only_some_ops_and_the_rest_run_the_reference(monkeypatch):
    """A backend record with host functions for the lookup only: the lookup runs its custom op,
    every other op the reference; "auto" picks it on the devices it names."""
    import sys
    import types

    from fastme.ops import _backend, _kernel_ops
    from fastme.ops.cross_network import kernel_ops as cross_ops
    from fastme.ops.embedding_lookup import kernel_ops as lookup_ops
    from fastme.ops.pooling import kernel_ops as pooling_ops

    calls = []
    kernels = types.ModuleType("fastme_partial_backend.kernels")
    kernels.forward = lambda *args: (
        calls.append("forward") or ops.reference.multi_embedding_lookup(*args)
    )
    kernels.backward = lambda grad, indices, offsets, num_rows: torch.zeros(
        num_rows, grad.shape[1], grad.shape[3]
    ).index_add_(
        0,
        (indices + offsets).reshape(-1),
        grad.permute(0, 2, 1, 3).reshape(-1, grad.shape[1], grad.shape[3]),
    )
    package = types.ModuleType("fastme_partial_backend")
    package.BACKEND = _kernel_ops.KernelBackend(
        name="partial",
        package="fastme_partial_backend",
        devices=("cpu",),
        auto=("cpu",),
        needs="nothing",
        why_not_here=lambda device: "",
        cross_states=lambda layers, save: 0,
        host_functions={
            "fastme::partial_multi_embedding_lookup": "kernels.forward",
            "fastme::partial_multi_embedding_lookup_backward": "kernels.backward",
        },
    )
    monkeypatch.setitem(sys.modules, "fastme_partial_backend", package)
    monkeypatch.setitem(sys.modules, "fastme_partial_backend.kernels", kernels)
    # without the backends "auto" would try first on CPU tensors (the "cpu" backend)
    monkeypatch.setattr(
        _backend,
        "_KERNEL_BACKENDS",
        {n: b for n, b in _backend._KERNEL_BACKENDS.items() if "cpu" not in b.auto},
    )
    monkeypatch.setattr(_backend, "_IMPLEMENTATIONS", dict(_backend._IMPLEMENTATIONS))
    _backend.load(["fastme_partial_backend"], (lookup_ops, pooling_ops, cross_ops))
    assert "partial" in ops.available_backends("cpu")

    table, indices, offsets = inputs()
    table.requires_grad_()
    for backend in ("partial", "auto"):
        out = ops.multi_embedding_lookup(table, indices, offsets, backend=backend)
        torch.testing.assert_close(
            out, ops.reference.multi_embedding_lookup(table, indices, offsets)
        )
        (grad,) = torch.autograd.grad(out.sum(), table)
        (ref_grad,) = torch.autograd.grad(
            ops.reference.multi_embedding_lookup(table, indices, offsets).sum(), table
        )
        torch.testing.assert_close(grad, ref_grad)
    assert calls == ["forward", "forward"]
    torch.testing.assert_close(
        ops.pooled_lookup(table, indices, offsets, backend="partial"),
        ops.reference.pooled_lookup(table, indices, offsets),
    )
    assert calls == ["forward", "forward"]


CUDA_STATES_WITHOUT_ITS_HOST_FUNCTIONS = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "fastme.ops.cuda._lib":
            raise ImportError("blocked for the test")
sys.meta_path.insert(0, Block())
import torch
import fastme.ops as ops
from torch._subclasses.fake_tensor import FakeTensorMode
with FakeTensorMode():
    x0 = torch.empty(4, 2, 3, device="cuda")
    out, states = torch.ops.fastme.cuda_cross_network(
        x0, torch.empty(2, 2, 3, 3, device="cuda"), torch.empty(2, 2, 3, device="cuda"), True)
print(states.shape[0])
"""


def test_a_backend_that_cannot_load_keeps_its_own_cross_state_layout():
    """The CUDA custom ops without their host functions (as without Triton for the Triton ones)
    still trace, with the CUDA layout: 2L - 1 state planes with save=True, not Triton's L - 1."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", CUDA_STATES_WITHOUT_ITS_HOST_FUNCTIONS],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["3"]


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dims_dtype", [torch.int32, torch.int64])
def test_cpu_bounds_check_kernel_finds_what_the_torch_check_finds(index_dtype, dims_dtype):
    """On CPU tensors the bounds check runs as one pass of a C++ kernel
    (``cpu_check_indices``, several threads on large batches): the same first bad pair in
    row-major order and the same count as the torch expression, wherever the bad pairs are."""
    from fastme.ops import _validation

    if _validation._cpu_bad_pairs(torch.zeros(1, 1, dtype=torch.long), torch.ones(1)) is None:
        pytest.skip("CPU kernels unavailable")
    g = torch.Generator().manual_seed(0)
    dims = torch.randint(1, 50, (37,), generator=g).to(dims_dtype)
    batch = 9000  # 333k pairs: the kernel splits them over threads
    ok = (torch.rand(batch, 37, generator=g) * dims).long()
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            for bad_at in ([], [(8999, 36)], [(5000, 3), (7000, 0)], [(0, 5), (4500, 2)]):
                x = ok.clone()
                for b, i in bad_at:
                    x[b, i] = int(dims[i]) if b % 2 else -1
                x = x.to(index_dtype)
                first, count = _validation._cpu_bad_pairs(x, dims)
                bad = (x < 0) | (x >= dims.to(x.dtype))
                assert count == int(bad.sum()) == len(bad_at)
                where = bad.nonzero()
                assert first == (int(where[0, 0]) * 37 + int(where[0, 1]) if count else -1)
    finally:
        torch.set_num_threads(threads)


def test_bounds_check_names_the_first_bad_pair_and_counts_the_clamped():
    table, indices, offsets = inputs()
    indices[3, 0], indices[1, 1] = -1, 6
    with pytest.raises(IndexError, match=r"indices\[1, 1\] = 6 is out of range for field 1"):
        ops.multi_embedding_lookup(table, indices, offsets)
    with bounds_check("clamp"):
        with pytest.warns(RuntimeWarning, match="^2 out-of-range entries in indices were clamped"):
            out = ops.multi_embedding_lookup(table, indices.int(), offsets)
    torch.testing.assert_close(out[1, :, 1], table[4 + 5])
    torch.testing.assert_close(out[3, :, 0], table[0])


def test_an_extension_older_than_the_cpu_entry_points_falls_back_to_torch(monkeypatch):
    """An extension built from older sources (a CPU lookup, but no bounds-check kernel) is
    reported as predating the CPU kernels; the bounds check then runs the torch expression, with
    the same error."""
    import types

    from fastme import _extension
    from fastme.ops import _validation

    stale = types.SimpleNamespace(cpu_lookup_forward=None, cpu_isa=lambda: "generic")
    monkeypatch.setattr(_extension, "load", lambda: stale)
    _extension._cpu_problem_uncached.cache_clear()
    try:
        assert "predates the CPU kernels" in _extension.cpu_problem()
        table, indices, offsets = inputs()
        indices[2, 1] = 6
        assert _validation._cpu_bad_pairs(indices, torch.tensor([4, 6])) is None
        with pytest.raises(IndexError, match=r"indices\[2, 1\] = 6 is out of range for field 1"):
            ops.multi_embedding_lookup(table, indices, offsets, backend="reference")
    finally:
        monkeypatch.undo()
        _extension._cpu_problem_uncached.cache_clear()
