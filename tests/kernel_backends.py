"""What the kernel tests share: the device and the kernel backends available there, the markers,
random inputs, "forward then gradients" and the relative error.

Without a GPU the kernel backends are "triton" (Triton's CPU interpreter) and "cpu" (the C++ CPU
kernels, every ISA this processor runs: ``cpu_isas`` / ``use_cpu_isa``); on a GPU machine
"triton" and "cuda". Ops a backend has no kernels for run the reference, so every backend runs
every test."""

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastme.ops as ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [b for b in ops.available_backends(DEVICE) if b != "reference"]


def cpu_isas() -> list[str]:
    """The ISAs the CPU kernels can run with here (none without the compiled extension)."""
    if "cpu" not in ops.available_backends("cpu"):
        return []
    from fastme import _extension

    return list(_extension.load().cpu_supported_isas())


@contextlib.contextmanager
def use_cpu_isa(name):
    """Run the CPU kernels with ISA ``name`` inside the block."""
    from fastme import _extension

    ext = _extension.load()
    previous = ext.cpu_isa()
    ext.cpu_set_isa(name)
    try:
        yield
    finally:
        ext.cpu_set_isa(previous)


_requires_kernel_backend = pytest.mark.skipif(
    not BACKENDS,
    reason=f"no kernel backend can run on {DEVICE} here (install triton, or run on a GPU)",
)
# The marks of a module of kernel tests: on a GPU machine its tests run on CUDA tensors, so they
# carry the `gpu` marker (`pytest -m gpu` selects every test that needs a GPU, `-m "not gpu"`
# none); without a GPU they run through Triton's CPU interpreter and need none.
KERNEL_TESTS = [_requires_kernel_backend] + ([pytest.mark.gpu] if DEVICE == "cuda" else [])
# Larger shapes, every dtype: too slow for the interpreter, run on a GPU only.
on_gpu = [pytest.mark.gpu, pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")]
# Table gradients summed with float atomics on a GPU may differ in the last bits between two
# backward passes, which gradcheck checks for.
NONDET_TOL = 1e-10
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def gpu_test(test):
    for decorator in on_gpu:
        test = decorator(test)
    return test


def criteo_shapes_on_gpu(test):
    """Runs ``test(backend, dtype, num_sets)`` at Criteo size on a GPU, for every kernel backend."""
    for decorator in (
        pytest.mark.parametrize("num_sets", [1, 4, 10]),
        pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16]),
        pytest.mark.parametrize("backend", BACKENDS),
    ):
        test = decorator(test)
    return gpu_test(test)


def criteo_like_field_dims(num_fields=39, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [int(d) for d in torch.randint(2, 5000, (num_fields,), generator=g)]


def lookup_inputs(
    batch,
    field_dims,
    num_sets,
    dim,
    *,
    dtype=torch.float64,
    index_dtype=torch.int64,
    offsets_dtype=None,
    seed=0,
    device=DEVICE,
):
    """(table, indices, offsets): few values per field (heavy duplication), and row 0 of the
    batch takes every field's largest index (the table's last row among them)."""
    g = torch.Generator().manual_seed(seed)
    dims = torch.tensor(field_dims, dtype=torch.int64)
    table = torch.randn(int(dims.sum()), num_sets, dim, generator=g, dtype=torch.float64)
    indices = torch.stack([torch.randint(0, d, (batch,), generator=g) for d in field_dims], 1)
    if batch:
        indices[0] = dims - 1
    offsets = torch.cumsum(dims, 0) - dims
    return (
        table.to(device, dtype),
        indices.to(device, index_dtype),
        offsets.to(device, offsets_dtype or index_dtype),
    )


def field_weights(num_sets, num_fields, *, dtype=torch.float64, seed=3, device=DEVICE):
    """[M, N, N] field weights ~ N(0, 1) as in NFwFM."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_sets, num_fields, num_fields, generator=g, dtype=torch.float64).to(
        device, dtype
    )


def cross_params(batch, num_sets, dim, layers, *, dtype=torch.float64, seed=5, device=DEVICE):
    """(x0, weight, bias) of the cross network, weights scaled like DCNv2's Xavier init so that
    x_L stays O(1)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, num_sets, dim, generator=g, dtype=torch.float64)
    weight = (
        torch.randn(layers, num_sets, dim, dim, generator=g, dtype=torch.float64)
        / max(dim, 1) ** 0.5
    )
    bias = torch.randn(layers, num_sets, dim, generator=g, dtype=torch.float64)
    return tuple(t.to(device, dtype) for t in (x0, weight, bias))


def outputs_and_grads(fn, *args, grad_seed=1):
    """fn(*args) and the gradients of every floating-point argument for a random grad_out
    (zeros where the output does not depend on one; none when the output is empty)."""
    args = [
        a.detach().requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a
        for a in args
    ]
    leaves = [a for a in args if torch.is_tensor(a) and a.requires_grad]
    out = fn(*args)
    if not out.numel():
        return out.detach(), ()
    g = torch.Generator().manual_seed(grad_seed)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    return out.detach(), tuple(
        torch.zeros_like(a) if d is None else d for a, d in zip(leaves, grads, strict=True)
    )


def with_backend(op, backend):
    """``op`` with ``backend=backend`` bound."""
    return lambda *args: op(*args, backend=backend)


def assert_close_to_reference(fn, ref, args, ref_args=None, **tolerance):
    """fn(*args) and its gradients against ``ref`` on ``ref_args`` (default: the same ``args``)
    with ``torch.testing.assert_close``; returns fn's (output, gradients)."""
    out, grads = outputs_and_grads(fn, *args)
    ref_out, ref_grads = outputs_and_grads(ref, *(args if ref_args is None else ref_args))
    torch.testing.assert_close(out, ref_out, **tolerance)
    torch.testing.assert_close(grads, ref_grads, **tolerance)
    return out, grads


def relative_error(actual, expected, floor=0.0):
    """||actual - expected|| / ||expected|| (Frobenius). ``floor`` (per element) keeps a tiny
    expected value that is the difference of O(1) terms from demanding 16-bit accuracy of itself."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.detach().double(), expected.detach().double()
    assert torch.isfinite(actual).all(), "non-finite values"
    scale = max(float(expected.norm()), floor * expected.numel() ** 0.5, 1e-30)
    return float((actual - expected).norm()) / scale


def assert_matches_reference(fn, ref, args, tol, floor=0.0):
    """fn(*args) and its gradients against ``ref`` evaluated in float64 on the same (rounded)
    values: dtypes kept, relative error below ``tol``. Returns fn's output."""
    out, grads = outputs_and_grads(fn, *args)
    ref_out, ref_grads = outputs_and_grads(
        ref, *[a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    )
    dtype = next(a.dtype for a in args if torch.is_tensor(a) and a.is_floating_point())
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert relative_error(out, ref_out, floor) <= tol, "forward"
    for i, (grad, ref_grad) in enumerate(zip(grads, ref_grads, strict=True)):
        assert relative_error(grad, ref_grad, floor) <= tol, f"gradient of argument {i}"
    return out


def check_registration(backend, kind, args, expected):
    """Schema, fake implementation and autograd registration of the custom op
    ``fastme::<backend>_<kind>`` (see fastme/ops/_kernel_ops.py): ``torch.library.opcheck`` where
    the backend runs; elsewhere (the CUDA ops without a GPU) its fake kernel on device="cuda"
    under FakeTensorMode. Its leading outputs must have the shapes and dtypes of the ``expected``
    tensors."""
    op = getattr(torch.ops.fastme, f"{backend}_{kind}").default
    if backend == "cpu" and DEVICE != "cpu":  # the CPU kernels run on CPU tensors anywhere
        args = tuple(
            a.detach().cpu().requires_grad_(a.requires_grad) if torch.is_tensor(a) else a
            for a in args
        )
        expected = [e.cpu() for e in expected]
    if backend in BACKENDS or (backend == "cpu" and cpu_isas()):
        torch.library.opcheck(
            op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor")
        )
        outputs = op(*args)
        device = args[0].device
    else:
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode():
            outputs = op(
                *[
                    torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device="cuda")
                    if torch.is_tensor(a)
                    else a
                    for a in args
                ]
            )
        device = torch.device("cuda", 0)
    outputs = (outputs,) if torch.is_tensor(outputs) else outputs
    for out, want in zip(outputs, expected):
        assert (out.shape, out.dtype) == (want.shape, want.dtype)
    assert all(out.device == device for out in outputs)


class OpCalls(TorchDispatchMode):
    """Counts the calls of the custom ops whose names contain ``name`` inside the block."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.name in str(func):
            self.count += 1
        return func(*args, **(kwargs or {}))
