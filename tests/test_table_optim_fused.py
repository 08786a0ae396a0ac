"""The fused CPU kernel of the sparse table optimizers (kernels/cpu/table_optim.cpp, called by
fastme/ops/cpu/table_optim.py) against the torch path of fastme/train/table_optim.py and a plain
float64 formula: odd M/K, duplicate and unsorted rows, weight decay on and off, several steps,
every ISA this processor runs, 1 and 3 threads."""

import math

import pytest
import torch
from kernel_backends import cpu_isas, use_cpu_isa

from fastme.ops.cpu import table_optim as fused
from fastme.train.table_optim import SPARSE_OPTIMIZERS

ISAS = cpu_isas()
pytestmark = pytest.mark.skipif(not ISAS, reason="needs fastme's compiled CPU kernels")

R, M, K = 23, 3, 7
KINDS = sorted(SPARSE_OPTIMIZERS)


def _grads(dtype, steps=3, pairs=17, rows=R, seed=0):
    """Raw (uncoalesced) table gradients: unsorted rows with duplicates, rows >= 16 never drawn."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        r = torch.randint(0, min(rows, 16), (pairs,), generator=g)
        r[-4:] = r[:4].flip(0)  # duplicates, some far apart
        values = torch.randn(pairs, M, K, generator=g, dtype=torch.float64).to(dtype)
        out.append(torch.sparse_coo_tensor(r[None], values, (rows, M, K), check_invariants=True))
    return out


def _table(dtype, rows=R, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, M, K, generator=g, dtype=torch.float64).to(dtype)


def _run(kind, table, grads, *, fused_kernel, weight_decay=0.0, lr=0.05):
    """The table, the optimizer's state and its row -> slot map after stepping on ``grads``."""
    param = torch.nn.Parameter(table.clone())
    opt = SPARSE_OPTIMIZERS[kind](param, lr=lr, weight_decay=weight_decay, fused=fused_kernel)
    for grad in grads:
        param.grad = grad.clone()
        opt.step()
        opt.zero_grad()
    return param.detach(), opt.state, opt._slots


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("kind", KINDS)
def test_fused_kernel_equals_the_torch_path(kind, weight_decay, dtype, isa):
    table, grads = _table(dtype), _grads(dtype)
    expected, expected_state, _ = _run(
        kind, table, grads, fused_kernel=False, weight_decay=weight_decay
    )
    with use_cpu_isa(isa):
        ours, state, slots = _run(kind, table, grads, fused_kernel=True, weight_decay=weight_decay)
    tol = {"rtol": 1e-12, "atol": 1e-13} if dtype == torch.float64 else {}
    torch.testing.assert_close(ours, expected, **tol)
    for name in expected_state:
        torch.testing.assert_close(state[name], expected_state[name], **tol, msg=name)
    assert (slots == -1).all()  # the map is clean again for the next step


def _formula(kind, table, grads, lr, weight_decay):
    """Each kind's update, row by row in float64 Python arithmetic (torch's formulas: Adagrad,
    Adam with the global step in the bias correction, SGD; coupled weight decay)."""
    w = table.double().clone()
    s0, s1 = torch.zeros_like(w), torch.zeros_like(w)
    b1, b2 = 0.9, 0.999
    for t, grad in enumerate(grads, start=1):
        dense = grad.double().to_dense()
        for r in sorted(set(grad._indices()[0].tolist())):
            for m in range(M):
                for k in range(K):
                    g = float(dense[r, m, k]) + weight_decay * float(w[r, m, k])
                    if kind == "sgd":
                        w[r, m, k] -= lr * g
                    elif kind == "adagrad":
                        s0[r, m, k] += g * g
                        w[r, m, k] -= lr * g / (math.sqrt(s0[r, m, k]) + 1e-10)
                    else:
                        s0[r, m, k] = b1 * s0[r, m, k] + (1 - b1) * g
                        s1[r, m, k] = b2 * s1[r, m, k] + (1 - b2) * g * g
                        denom = math.sqrt(s1[r, m, k]) / math.sqrt(1 - b2**t) + 1e-8
                        w[r, m, k] -= lr / (1 - b1**t) * s0[r, m, k] / denom
    return w


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("kind", ["lazy_adam", "adagrad", "sgd"])
def test_fused_kernel_equals_the_plain_formula_in_float64(kind, weight_decay):
    table, grads = _table(torch.float64), _grads(torch.float64)
    ours, _, _ = _run(kind, table, grads, fused_kernel=True, weight_decay=weight_decay, lr=0.05)
    expected = _formula(kind, table, grads, 0.05, weight_decay)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", KINDS)
def test_fused_kernel_leaves_untouched_rows_and_their_state_bit_identical(kind, isa):
    table, grads = _table(torch.float32), _grads(torch.float32)
    param = torch.nn.Parameter(table.clone())
    opt = SPARSE_OPTIMIZERS[kind](param, lr=0.05, weight_decay=0.01, fused=True)
    # nonzero state, so that "left alone" is not "still zero"
    for tensor in opt.state.values():
        tensor.copy_(torch.rand(tensor.shape, generator=torch.Generator().manual_seed(2)))
    before = {name: t.clone() for name, t in opt.state.items()}
    with use_cpu_isa(isa):
        for grad in grads:
            param.grad = grad
            opt.step()
    touched = torch.zeros(R, dtype=torch.bool)
    touched[torch.cat([g._indices()[0] for g in grads])] = True
    assert 0 < touched.sum() < R
    assert torch.equal(param.detach()[~touched], table[~touched])
    assert (param.detach()[touched] != table[touched]).flatten(1).any(1).all()
    for name, tensor in opt.state.items():
        assert torch.equal(tensor[~touched], before[name][~touched]), name


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", KINDS)
def test_fused_kernel_gives_the_same_bits_on_1_and_3_threads(kind, isa):
    """Enough pairs (>= 2048 a thread) for the rows to be split between threads; each row's sum
    runs in ascending pair order whatever the split. The thread count changes between calls
    (the kernel's per-thread buffers must follow)."""
    rows = 700
    table, grads = _table(torch.float32, rows=rows), _grads(torch.float32, pairs=9000, rows=rows)
    grads = [
        torch.sparse_coo_tensor(
            torch.randint(0, rows, (9000,), generator=torch.Generator().manual_seed(s))[None],
            g._values(),
            (rows, M, K),
            check_invariants=True,
        )
        for s, g in enumerate(grads)
    ]
    before = torch.get_num_threads()
    results = []
    try:
        with use_cpu_isa(isa):
            for threads in (1, 3, 1, 3):
                torch.set_num_threads(threads)
                results.append(_run(kind, table, grads, fused_kernel=True, weight_decay=0.01))
    finally:
        torch.set_num_threads(before)
    for out, state, _ in results[1:]:
        assert torch.equal(out, results[0][0])
        for name, tensor in state.items():
            assert torch.equal(tensor, results[0][1][name]), name


def test_fused_kernel_sums_raw_pairs_as_the_coalesced_gradient():
    """The kernel reads the uncoalesced pairs as they are: the same update as on the coalesced
    gradient (float64; the sums' order differs only in rounding)."""
    table, grads = _table(torch.float64), _grads(torch.float64)
    raw, _, _ = _run("lazy_adam", table, grads, fused_kernel=True)
    coalesced, _, _ = _run("lazy_adam", table, [g.coalesce() for g in grads], fused_kernel=True)
    torch.testing.assert_close(raw, coalesced, rtol=1e-12, atol=1e-13)


def test_table_optimizers_pick_the_fused_kernel_on_the_cpu_and_fall_back_elsewhere(monkeypatch):
    table = torch.nn.Parameter(_table(torch.float32))
    assert SPARSE_OPTIMIZERS["rowwise_adagrad"](table, lr=0.1)._use_fused()
    assert not SPARSE_OPTIMIZERS["rowwise_adagrad"](table, lr=0.1, fused=False)._use_fused()
    half = torch.nn.Parameter(_table(torch.bfloat16))
    assert not SPARSE_OPTIMIZERS["sgd"](half, lr=0.1)._use_fused()  # torch path
    half.grad = _grads(torch.bfloat16)[0]
    with pytest.raises(ValueError, match="needs a contiguous float32/float64 CPU table"):
        SPARSE_OPTIMIZERS["sgd"](half, lr=0.1, fused=True).step()
    monkeypatch.setattr(fused, "fused_available", lambda table: False)
    opt = SPARSE_OPTIMIZERS["adagrad"](table, lr=0.1)
    assert not opt._use_fused()
    called = []
    monkeypatch.setattr(fused, "sparse_step", lambda *a, **k: called.append(1))
    table.grad = _grads(torch.float32)[0]
    opt.step()
    assert not called and opt.state["sum"].any()  # the torch path ran


def _args(kind="lazy_adam", dtype=torch.float32):
    table = _table(dtype)
    grad = _grads(dtype)[0]
    state = (torch.zeros(R, M * K, dtype=dtype), torch.zeros(R, M * K, dtype=dtype))
    if kind == "rowwise_adagrad":
        state = (torch.zeros(R, M, dtype=dtype), None)
    return table, grad._indices()[0], grad._values(), state, fused.new_slots(R)


def _step(kind, table, rows, values, state, slots):
    fused.sparse_step(
        kind,
        table,
        rows,
        values,
        state,
        slots,
        lr=0.1,
        weight_decay=0.0,
        eps=1e-8,
        betas=(0.9, 0.999),
        step=1,
    )


@pytest.mark.parametrize(
    "kind, change, match",
    [
        ("lazy_adam", lambda a: (a[0].half(), *a[1:]), "table must be float32 or float64"),
        ("lazy_adam", lambda a: (a[0].transpose(1, 2), *a[1:]), "table must be a contiguous"),
        ("lazy_adam", lambda a: (a[0], a[1].float(), *a[2:]), "rows must be a 1-D int"),
        ("lazy_adam", lambda a: (a[0], a[1] + R - 2, *a[2:]), r"rows must be in \[0, 23\)"),
        ("lazy_adam", lambda a: (a[0], a[1] - 100, *a[2:]), r"rows must be in \[0, 23\)"),
        ("lazy_adam", lambda a: (*a[:2], a[2][:-1], *a[3:]), "values must be float"),
        ("lazy_adam", lambda a: (*a[:3], (a[3][0], None), a[4]), r"needs state\[1\]"),
        (
            "lazy_adam",
            lambda a: (*a[:3], (a[3][0].double(), a[3][1]), a[4]),
            r"state\[0\] must be a contiguous torch.float32",
        ),
        (
            "adagrad",
            lambda a: (*a[:3], (a[3][0][:-1], None), a[4]),
            r"state\[0\] must be .* \[23, 21\]",
        ),
        (
            "rowwise_adagrad",
            lambda a: (*a[:3], (torch.zeros(R, M * K), None), a[4]),
            r"state\[0\] must be .* \[23, 3\]",
        ),
        ("lazy_adam", lambda a: (*a[:4], a[4].long()), r"slots must be a contiguous int32"),
        ("lazy_adam", lambda a: (*a[:4], a[4][:-1]), r"slots must be .* \[23\]"),
        ("adam", lambda a: a, "kind must be one of"),
    ],
)
def test_sparse_step_refuses_bad_arguments_naming_them(kind, change, match):
    args = change(_args("rowwise_adagrad" if kind == "rowwise_adagrad" else "lazy_adam"))
    table_before = args[0].clone()
    with pytest.raises(ValueError, match=match):
        _step(kind, *args)
    assert torch.equal(args[0], table_before)  # nothing written


@pytest.mark.parametrize("kind", KINDS)
def test_model_optimizer_runs_the_fused_kernel_on_the_raw_pairs(kind, monkeypatch):
    """The trainer's optimizer on a CPU model: the lookup's raw pairs reach the kernel as they
    are (no coalescing), and the step equals the torch path's."""
    from fastme.models import build
    from fastme.train.table_optim import ModelOptimizer

    dims = [3, 5, 7, 4]
    x = torch.stack([torch.arange(9) % d for d in dims], dim=1)  # duplicate rows
    torch.manual_seed(0)
    model = build("dnn", dims, 2, multi=True, dropout=0.0, hidden_dim=8).double()
    twin = build("dnn", dims, 2, multi=True, dropout=0.0, hidden_dim=8).double()
    twin.load_state_dict(model.state_dict())
    seen = []
    original = fused.sparse_step

    def spy(kind_, table, rows, values, *args, **kwargs):
        seen.append(rows.clone())
        return original(kind_, table, rows, values, *args, **kwargs)

    monkeypatch.setattr(fused, "sparse_step", spy)
    ours = ModelOptimizer(model, kind, lr=1e-2, weight_decay=1e-3)
    reference = ModelOptimizer(twin, kind, lr=1e-2, weight_decay=1e-3)
    reference.table.fused = False
    for net, opt in ((model, ours), (twin, reference)):
        with opt.sparse_gradients():
            for _ in range(2):
                opt.zero_grad()
                net(x).pow(2).mean().backward()
                opt.step()
    offsets = torch.tensor([0, *dims[:-1]]).cumsum(0)
    assert len(seen) == 2 and torch.equal(seen[0], (x + offsets).flatten())
    for (name, a), b in zip(twin.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-13, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scatter_pairs_gives_index_add_bits_on_1_and_3_threads_and_clears_the_rows(dtype):
    """The exact Adam's gradient buffer: the pairs added in ascending pair order (the bits of
    index_add_ into a zero buffer) whatever the thread count, with enough pairs (>= 2048 a
    thread) for the rows to be split; clearing writes zeros to exactly those rows."""
    g = torch.Generator().manual_seed(3)
    rows_count, pairs = 701, 9001
    rows = torch.randint(0, rows_count - 50, (pairs,), generator=g)  # the last 50 never touched
    rows[-300:] = rows[:300].flip(0)
    values = torch.randn(pairs, M, K, generator=g, dtype=torch.float64).to(dtype)
    expected = torch.zeros(rows_count, M * K, dtype=dtype)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected.index_add_(0, rows, values.view(pairs, -1))
        for threads in (1, 3):
            torch.set_num_threads(threads)
            buffer = torch.zeros(rows_count, M * K, dtype=dtype)
            buffer[-1] = 5.0  # untouched rows keep their values through add and clear
            fused.scatter_pairs(buffer, rows, values)
            assert torch.equal(buffer[:-1], expected[:-1])
            assert buffer[-1].eq(5.0).all()
            fused.scatter_pairs(buffer, rows, None)
            assert not buffer[:-1].any() and buffer[-1].eq(5.0).all()
    finally:
        torch.set_num_threads(before)


def test_scatter_pairs_refuses_bad_arguments_naming_them():
    buffer = torch.zeros(5, 3)
    with pytest.raises(ValueError, match="buffer"):
        fused.scatter_pairs(buffer.to(torch.bfloat16), torch.tensor([1]), torch.ones(1, 3))
    with pytest.raises(ValueError, match="rows"):
        fused.scatter_pairs(buffer, torch.tensor([[1]]), torch.ones(1, 3))
    with pytest.raises(ValueError, match="values"):
        fused.scatter_pairs(buffer, torch.tensor([1]), torch.ones(1, 4))
    with pytest.raises(ValueError, match="rows must be in"):
        fused.scatter_pairs(buffer, torch.tensor([5]), torch.ones(1, 3))
