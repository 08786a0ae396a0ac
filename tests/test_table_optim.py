"""Sparse table gradients and the table optimizers (fastme/train/table_optim.py)."""

import copy
import math

import pytest
import torch

from fastme import ops
from fastme.models import build
from fastme.train.table_optim import (
    SPARSE_OPTIMIZERS,
    DenseGradient,
    ModelOptimizer,
    touched_rows,
)

DIMS = [3, 5, 7, 4]  # 19 rows
ROWS = sum(DIMS)


def _indices(seed, batch=9):
    g = torch.Generator().manual_seed(seed)
    x = torch.stack([torch.randint(0, d, (batch,), generator=g) for d in DIMS], dim=1)
    x[1] = x[0]  # duplicate rows within a batch
    return x


def _offsets():
    return torch.tensor([0, *DIMS[:-1]]).cumsum(0)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_sparse_grad_lookup_equals_the_dense_lookup_and_its_gradient(backend):
    """On the CPU the table gets the raw pairs (uncoalesced, one per sample and field, in pair
    order), whose sum is the dense gradient; the forward is the backend's."""
    torch.manual_seed(0)
    table = torch.randn(ROWS, 3, 2, dtype=torch.float64, requires_grad=True)
    x, offsets = _indices(1), _offsets()
    dense_out = ops.multi_embedding_lookup(table, x, offsets, backend=backend)
    sparse_out = ops.multi_embedding_lookup(table, x, offsets, backend=backend, sparse_grad=True)
    assert torch.equal(dense_out, sparse_out)
    weight = torch.randn_like(dense_out)
    (dense_grad,) = torch.autograd.grad((dense_out * weight).sum(), table)
    (sparse_grad,) = torch.autograd.grad((sparse_out * weight).sum(), table)
    assert sparse_grad.is_sparse and not sparse_grad.is_coalesced()
    assert torch.equal(sparse_grad._indices()[0], (x + offsets).flatten())
    assert torch.equal(sparse_grad._values(), weight.permute(0, 2, 1, 3).reshape(-1, 3, 2))
    coalesced = sparse_grad.coalesce()
    assert torch.equal(coalesced._indices()[0], (x + offsets).unique())  # touched rows only
    torch.testing.assert_close(coalesced.to_dense(), dense_grad, rtol=1e-14, atol=1e-14)
    rows, values = touched_rows(sparse_grad)
    assert torch.equal(rows, (x + offsets).unique())


@pytest.mark.skipif("cpu" not in ops.available_backends("cpu"), reason="needs the CPU kernels")
def test_sparse_grad_lookup_runs_the_cpu_kernel_forward(monkeypatch):
    from fastme.ops import _backend, reference

    calls = []
    resolve = _backend.resolve

    def spy(op, backend, device):
        calls.append(resolve(op, backend, device))
        return calls[-1]

    monkeypatch.setattr(_backend, "resolve", spy)
    table = torch.randn(ROWS, 3, 2, requires_grad=True)
    ops.multi_embedding_lookup(table, _indices(1), _offsets(), sparse_grad=True).sum().backward()
    assert calls == [resolve("multi_embedding_lookup", "cpu", table.device)]
    assert calls[0] is not reference.multi_embedding_lookup and table.grad.is_sparse


@pytest.mark.filterwarnings("ignore:Dynamo does not know how to trace")
def test_sparse_grad_lookup_under_torch_compile():
    torch.manual_seed(0)
    table = torch.randn(ROWS, 3, 2, dtype=torch.float64, requires_grad=True)
    x, offsets = _indices(1), _offsets()

    def loss(t):
        return ops.multi_embedding_lookup(t, x, offsets, sparse_grad=True).pow(2).sum()

    (eager,) = torch.autograd.grad(loss(table), table)
    (compiled,) = torch.autograd.grad(torch.compile(loss, backend="aot_eager")(table), table)
    torch.testing.assert_close(compiled.coalesce().to_dense(), eager.coalesce().to_dense())


@pytest.mark.parametrize("model_name", ["dcnv2", "nfwfm", "dnn"])
def test_a_sparse_table_model_computes_the_same_logits(model_name):
    torch.manual_seed(0)
    model = build(model_name, DIMS, 2, multi=True).double().eval()
    x = _indices(2)
    dense = model(x)
    model.sparse_table = True
    assert torch.equal(model(x), dense)
    model.train()
    model(x).sum().backward()
    assert model.embedding.weight.grad.is_sparse


def _train(model, optimizer_step, batches, sparse):
    model.sparse_table = sparse
    for x in batches:
        loss = model(x).pow(2).mean()
        optimizer_step(loss)


def test_adam_on_the_sparse_gradient_equals_torch_adam_on_the_dense_one():
    """The paper's Adam, exact: coupled weight decay and moment decay on untouched rows too."""
    torch.manual_seed(0)
    reference = build("dcnv2", DIMS, 2, multi=True, dropout=0.0).double()
    ours = build("dcnv2", DIMS, 2, multi=True, dropout=0.0).double()
    ours.load_state_dict(reference.state_dict())
    initial = ours.embedding.weight.detach().clone()
    # with duplicates; values above 2 are never drawn, so 6 of the 19 rows are never touched
    batches = [_indices(seed).clamp(max=2) for seed in range(4)]
    torch_adam = torch.optim.Adam(reference.parameters(), lr=1e-2, weight_decay=0.1)
    optimizer = ModelOptimizer(ours, "adam", lr=1e-2, weight_decay=0.1)

    def step_with(opt):
        def step(loss):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    _train(reference, step_with(torch_adam), batches, sparse=False)
    with optimizer.sparse_gradients():
        _train(ours, step_with(optimizer), batches, sparse=True)
    for (name, a), b in zip(reference.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(b, a), name  # the same bits: the same sums in the same order
    table = ours.embedding.weight
    touched = torch.zeros(ROWS, dtype=torch.bool)
    touched[torch.cat([x + _offsets() for x in batches]).flatten()] = True
    assert not touched.all()  # rows no batch touched moved all the same (decay, moments)
    assert (table.detach() != initial).flatten(1).all(dim=1).all()
    # the persistent buffer is zero again and no longer the table's gradient
    assert table.grad is None and not optimizer._dense_grad.buffer.any()


def test_dense_gradient_buffer_is_zero_after_each_step():
    table = torch.nn.Parameter(torch.zeros(6, 2, 1))
    holder = DenseGradient(table)
    table.grad = torch.sparse_coo_tensor(
        torch.tensor([[4, 1]]), torch.ones(2, 2, 1), (6, 2, 1), check_invariants=True
    ).coalesce()
    holder.densify()
    assert table.grad is holder.buffer and holder.buffer[[1, 4]].eq(1).all()
    holder.clear()
    assert table.grad is None and not holder.buffer.any()


def _table_and_grads(steps=3, all_rows=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(ROWS, 2, 3, dtype=torch.float64, generator=g)
    grads = []
    for _ in range(steps):
        rows = torch.arange(ROWS) if all_rows else torch.randint(0, ROWS, (12,), generator=g)
        rows = torch.cat([rows, rows[:3]])  # duplicates
        values = torch.randn(len(rows), 2, 3, dtype=torch.float64, generator=g)
        grads.append(
            torch.sparse_coo_tensor(rows[None], values, table.shape, check_invariants=True)
        )
    return table, grads


def _run(opt_factory, table, grads):
    param = torch.nn.Parameter(table.clone())
    opt = opt_factory(param)
    for grad in grads:
        param.grad = grad.clone()
        opt.step()
        opt.zero_grad()
    return param.detach()


@pytest.mark.parametrize(
    "kind, torch_optimizer",
    [
        ("lazy_adam", lambda p: torch.optim.Adam([p], lr=0.05, weight_decay=0.01)),
        ("adagrad", lambda p: torch.optim.Adagrad([p], lr=0.05, weight_decay=0.01)),
        ("sgd", lambda p: torch.optim.SGD([p], lr=0.05, weight_decay=0.01)),
    ],
)
def test_sparse_optimizers_equal_torch_when_every_row_is_touched(kind, torch_optimizer):
    table, grads = _table_and_grads(all_rows=True)
    dense_grads = [g.to_dense() for g in grads]
    expected = table.clone().requires_grad_()
    opt = torch_optimizer(expected)
    for grad in dense_grads:
        expected.grad = grad
        opt.step()
    ours = _run(lambda p: SPARSE_OPTIMIZERS[kind](p, lr=0.05, weight_decay=0.01), table, grads)
    torch.testing.assert_close(ours, expected.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", sorted(SPARSE_OPTIMIZERS))
def test_sparse_optimizers_leave_untouched_rows_and_their_state_alone(kind):
    table, grads = _table_and_grads()
    param = torch.nn.Parameter(table.clone())
    opt = SPARSE_OPTIMIZERS[kind](param, lr=0.05, weight_decay=0.01)
    touched = torch.zeros(ROWS, dtype=torch.bool)
    for grad in grads:
        touched[grad.coalesce()._indices()[0]] = True
        param.grad = grad
        opt.step()
    assert not touched.all()
    assert torch.equal(param.detach()[~touched], table[~touched])
    assert not torch.equal(param.detach()[touched], table[touched])
    for state in opt.state.values():
        assert not state[~touched].any()


def test_rowwise_adagrad_keeps_one_accumulator_per_row_and_set():
    table, grads = _table_and_grads()
    lr, eps = 0.05, 1e-8
    expected = table.clone()
    acc = torch.zeros(ROWS, 2, dtype=torch.float64)
    for grad in grads:
        dense = grad.to_dense()
        for r in grad.coalesce()._indices()[0].tolist():
            for m in range(2):
                acc[r, m] += (dense[r, m] ** 2).mean()
                expected[r, m] -= lr * dense[r, m] / (math.sqrt(acc[r, m]) + eps)
    ours = _run(lambda p: SPARSE_OPTIMIZERS["rowwise_adagrad"](p, lr=lr), table, grads)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)


def test_touched_rows_coalesces_an_accumulated_gradient():
    a = torch.sparse_coo_tensor(
        torch.tensor([[2, 5]]), torch.ones(2, 1, 1), (7, 1, 1), check_invariants=True
    )
    b = torch.sparse_coo_tensor(
        torch.tensor([[5, 1]]), torch.ones(2, 1, 1), (7, 1, 1), check_invariants=True
    )
    rows, values = touched_rows((a.coalesce() + b.coalesce()))
    assert rows.tolist() == [1, 2, 5] and values.flatten().tolist() == [1.0, 1.0, 2.0]


@pytest.mark.parametrize("kind", ["adam", *sorted(SPARSE_OPTIMIZERS)])
def test_model_optimizer_state_round_trip_continues_exactly(kind):
    torch.manual_seed(0)
    model = build("dnn", DIMS, 2, multi=True, dropout=0.0, hidden_dim=8)
    batches = [_indices(seed) for seed in range(3)]

    def run(optimizer, xs):
        with optimizer.sparse_gradients():
            for x in xs:
                optimizer.zero_grad()
                model(x).pow(2).mean().backward()
                optimizer.step()

    first = ModelOptimizer(model, kind, lr=1e-2, weight_decay=1e-3)
    run(first, batches[:2])
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = copy.deepcopy(first.state_dict())  # torch's state dicts hold live tensors
    run(first, batches[2:])
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    model.load_state_dict(saved_model)
    second = ModelOptimizer(model, kind, lr=1e-2, weight_decay=1e-3)
    second.load_state_dict(saved_opt)
    run(second, batches[2:])
    for k, v in model.state_dict().items():
        assert torch.equal(v, straight[k]), k
    assert model.sparse_table is False  # only while training


def test_model_optimizer_refuses_a_state_of_another_kind_and_models_without_a_table():
    model = build("dnn", DIMS, 1, hidden_dim=8)
    adam = ModelOptimizer(model, "adam", lr=1e-3, weight_decay=0.0)
    with pytest.raises(ValueError, match="table optimizer adam, not sgd"):
        ModelOptimizer(model, "sgd", lr=1e-3, weight_decay=0.0).load_state_dict(adam.state_dict())
    with pytest.raises(ValueError, match="table_optimizer must be one of"):
        ModelOptimizer(model, "adamw", lr=1e-3, weight_decay=0.0)
    plain = torch.nn.Linear(3, 1)
    with pytest.raises(ValueError, match="needs a fastme model with one embedding table"):
        ModelOptimizer(plain, "rowwise_adagrad", lr=1e-3, weight_decay=0.0)
    ModelOptimizer(plain, "adam", lr=1e-3, weight_decay=0.0).step()  # adam: any module
