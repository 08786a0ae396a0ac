"""Optimizers of the embedding table that read its sparse gradient (docs/training.md).

A batch touches few of the table's rows, yet a dense gradient is a table-sized tensor built and
zero-filled every step. With ``model.sparse_table`` the lookup hands the table a COO gradient of
the touched rows only (``ops.multi_embedding_lookup(sparse_grad=True)``; on the CPU the raw,
uncoalesced pairs, one per sample and field), and:

- ``adam`` (the default, the paper's): torch's Adam over every parameter, exact. The table's
  sparse gradient is written into a persistent zero buffer, which Adam's one fused pass reads
  (zero for untouched rows, which still get the coupled weight decay ``wd * param`` and their
  moments' decay), and the touched rows are zeroed again afterwards. The same kernel on the same
  dense gradient as before, without a fresh table-sized tensor every step; the optimizer state
  keeps torch's layout, so runs of earlier versions resume.
- ``lazy_adam``, ``rowwise_adagrad``, ``adagrad``, ``sgd``: the table is updated in place on the
  touched rows only (rows never seen by a batch keep their values and state); the rest of the
  model keeps torch's Adam. Coupled L2 weight decay, when set, applies to the touched rows.

On the CPU (float32 / float64 tables, with the compiled extension) the sparse kinds run a fused
C++ kernel (kernels/cpu/table_optim.cpp): it reads the gradient's (row, values) pairs as they
are, sums each touched row's duplicates in ascending pair order (deterministic, the same bits for
every thread count) and updates the row and its state in place in one pass, with no coalescing.
Elsewhere, and as the reference, the updates are vectorised torch index ops (index_select /
index_copy_ / index_add_) on the coalesced gradient, which run on any device.
"""

from __future__ import annotations

import contextlib
import math

import torch

from fastme.ops.cpu import table_optim as cpu_table_optim

#: ``--table-optimizer`` values; the first is the default.
TABLE_OPTIMIZERS = ("adam", "lazy_adam", "rowwise_adagrad", "adagrad", "sgd")

_BETAS = (0.9, 0.999)  # torch's Adam defaults, as the paper's code uses
_ADAM_EPS = 1e-8
_ADAGRAD_EPS = 1e-10  # torch.optim.Adagrad's
_ROWWISE_EPS = 1e-8  # FBGEMM's row-wise Adagrad's


def embedding_table(model) -> torch.nn.Parameter | None:
    """The model's embedding table when it can take a sparse gradient (a ``fastme.models``
    model with ``sparse_table``), else None."""
    embedding = getattr(model, "embedding", None)
    weight = getattr(embedding, "weight", None)
    if not hasattr(model, "sparse_table") or not isinstance(weight, torch.nn.Parameter):
        return None
    return weight if weight.dim() == 3 else None


def gradient_pairs(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [P] int64, their gradients [P, M*K]) of a table gradient as it holds them: a sparse
    gradient's pairs uncoalesced (duplicate rows kept, in their order), a dense one's every row."""
    if not grad.is_sparse:
        return torch.arange(grad.shape[0], device=grad.device), grad.reshape(grad.shape[0], -1)
    values = grad._values()
    return grad._indices()[0], values.reshape(values.shape[0], -1)


def touched_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [U] int64, unique and sorted; their gradients [U, M*K]) of a table gradient. A
    sparse gradient is coalesced first unless its rows are already strictly increasing (autograd
    drops the coalesced flag of the gradient it stores); a dense one touches every row."""
    rows, values = gradient_pairs(grad)
    if grad.is_sparse and not grad.is_coalesced() and rows.numel() > 1:
        if not bool((rows[1:] > rows[:-1]).all()):
            return gradient_pairs(grad.coalesce())
    return rows, values


class TableOptimizer:
    """Updates one embedding table [rows, M, K] in place from its gradient, touched rows only.

    Subclasses define ``kind``, the state tensors (:meth:`_init_state`), :meth:`_update` (the
    torch path) and :meth:`_fused_state` (the fused CPU kernel's state arguments). ``step``
    counts the steps taken (Adam's bias correction). ``fused``: None runs the fused CPU kernel
    whenever it can (:func:`fastme.ops.cpu.table_optim.fused_available`), False never, True
    always (an error where it cannot). The state dict holds the kind, the hyper-parameters, the
    step and the state tensors; loading refuses another kind or shape.
    """

    kind = ""
    eps = 0.0

    def __init__(
        self,
        table: torch.nn.Parameter,
        lr: float,
        weight_decay: float = 0.0,
        *,
        fused: bool | None = None,
    ):
        if table.dim() != 3:
            raise ValueError(f"the table must be [rows, M, K], got {list(table.shape)}")
        if not lr > 0:
            raise ValueError(f"table lr must be positive, got {lr!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.table, self.lr, self.weight_decay = table, float(lr), float(weight_decay)
        self.step_count = 0
        self.state: dict[str, torch.Tensor] = self._init_state()
        self.fused = fused
        self._slots: torch.Tensor | None = None  # the fused kernel's row -> slot map

    def _use_fused(self) -> bool:
        if self.fused is False:
            return False
        ok = cpu_table_optim.fused_available(self.table) and all(
            t.is_contiguous() for t in self.state.values()
        )
        if self.fused and not ok:
            raise ValueError(
                f"the fused {self.kind} kernel needs a contiguous float32/float64 CPU table and "
                f"fastme's compiled extension; got a {self.table.dtype} table on "
                f"{self.table.device}"
            )
        return ok

    def _fused_state(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return None, None

    def _init_state(self) -> dict[str, torch.Tensor]:
        return {}

    def _flat(self) -> torch.Tensor:
        return self.table.detach().view(self.table.shape[0], -1)  # [rows, M*K], shares storage

    @torch.no_grad()
    def step(self) -> None:
        grad = self.table.grad
        if grad is None:
            return
        if self._use_fused():
            self._fused_step(grad)
            return
        rows, g = touched_rows(grad)
        self.step_count += 1
        if rows.numel() == 0:
            return
        w = self._flat()
        if self.weight_decay:
            g = g.add(w.index_select(0, rows), alpha=self.weight_decay)
        self._update(w, rows, g)

    def _fused_step(self, grad: torch.Tensor) -> None:
        """The fused CPU kernel on the gradient's pairs as they are (no coalescing)."""
        rows, values = gradient_pairs(grad)
        self.step_count += 1
        if rows.numel() == 0:
            return
        if self._slots is None:
            self._slots = cpu_table_optim.new_slots(self.table.shape[0])
        cpu_table_optim.sparse_step(
            self.kind,
            self.table.detach(),
            rows,
            values,
            self._fused_state(),
            self._slots,
            lr=self.lr,
            weight_decay=self.weight_decay,
            eps=self.eps,
            betas=_BETAS,
            step=self.step_count,
        )

    def _update(self, w: torch.Tensor, rows: torch.Tensor, g: torch.Tensor) -> None:
        raise NotImplementedError

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.table.grad = None

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "step": self.step_count,
            "state": dict(self.state),  # live tensors, as torch's optimizers give
        }

    def load_state_dict(self, saved: dict) -> None:
        if saved.get("kind") != self.kind:
            raise ValueError(
                f"the saved table optimizer is {saved.get('kind')!r}, this one is {self.kind!r}"
            )
        for name, tensor in self.state.items():
            got = saved["state"].get(name)
            if got is None or got.shape != tensor.shape:
                shape = None if got is None else list(got.shape)
                raise ValueError(
                    f"the saved {self.kind} state {name} is {shape}, this table needs "
                    f"{list(tensor.shape)}"
                )
            tensor.copy_(got)
        self.step_count = int(saved["step"])


class SGD(TableOptimizer):
    """w_r -= lr * g_r on the touched rows."""

    kind = "sgd"

    def _update(self, w, rows, g):
        w.index_add_(0, rows, g, alpha=-self.lr)


class Adagrad(TableOptimizer):
    """torch.optim.Adagrad's update on the touched rows: s_r += g_r^2; w_r -= lr g_r / (sqrt(s_r)
    + eps), one accumulator per table element."""

    kind = "adagrad"
    eps = _ADAGRAD_EPS

    def _init_state(self):
        return {"sum": torch.zeros_like(self._flat())}

    def _update(self, w, rows, g):
        s = self.state["sum"].index_select(0, rows).addcmul_(g, g)
        self.state["sum"].index_copy_(0, rows, s)
        w.index_add_(0, rows, g / s.sqrt_().add_(_ADAGRAD_EPS), alpha=-self.lr)

    def _fused_state(self):
        return self.state["sum"], None


class RowwiseAdagrad(TableOptimizer):
    """FBGEMM's row-wise Adagrad with one accumulator per embedding vector: per row and set,
    s += mean_k(g^2); w -= lr g / (sqrt(s) + eps). Each set is its own embedding, so the sets'
    step sizes are not coupled; the state is [rows, M], 1/K of Adagrad's."""

    kind = "rowwise_adagrad"
    eps = _ROWWISE_EPS

    def _init_state(self):
        rows, m, _ = self.table.shape
        return {"sum": self.table.new_zeros((rows, m))}

    def _update(self, w, rows, g):
        u, (m, k) = rows.numel(), self.table.shape[1:]
        g3 = g.view(u, m, k)
        s = self.state["sum"].index_select(0, rows).add_(g3.square().mean(dim=2))
        self.state["sum"].index_copy_(0, rows, s)
        step = g3 / s.sqrt_().add_(_ROWWISE_EPS).unsqueeze(2)
        w.index_add_(0, rows, step.view(u, m * k), alpha=-self.lr)

    def _fused_state(self):
        return self.state["sum"], None


class LazyAdam(TableOptimizer):
    """Adam whose moments and weights move on the touched rows only (torch.optim.Adam's formula,
    with the global step count in the bias correction, as torch's SparseAdam): an untouched row
    keeps its value and moments instead of decaying them."""

    kind = "lazy_adam"
    eps = _ADAM_EPS

    def _init_state(self):
        flat = self._flat()
        return {"exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat)}

    def _update(self, w, rows, g):
        b1, b2 = _BETAS
        m = self.state["exp_avg"].index_select(0, rows).lerp_(g, 1 - b1)
        v = self.state["exp_avg_sq"].index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
        self.state["exp_avg"].index_copy_(0, rows, m)
        self.state["exp_avg_sq"].index_copy_(0, rows, v)
        t = self.step_count
        bias1, bias2_sqrt = 1 - b1**t, math.sqrt(1 - b2**t)
        denom = v.sqrt_().div_(bias2_sqrt).add_(_ADAM_EPS)
        w.index_add_(0, rows, m.div_(denom), alpha=-self.lr / bias1)

    def _fused_state(self):
        return self.state["exp_avg"], self.state["exp_avg_sq"]


SPARSE_OPTIMIZERS = {cls.kind: cls for cls in (LazyAdam, RowwiseAdagrad, Adagrad, SGD)}


class DenseGradient:
    """The table's sparse gradient as a dense one, in a persistent buffer: zero except the rows
    of the last :meth:`densify`, which :meth:`clear` zeroes again. An exact dense optimizer reads
    it without a fresh table-sized tensor being allocated and zero-filled every step."""

    def __init__(self, table: torch.nn.Parameter):
        self.table = table
        self.buffer: torch.Tensor | None = None  # allocated on first use, on the table's device
        self.rows: torch.Tensor | None = None

    def densify(self) -> None:
        grad = self.table.grad
        if grad is None or not grad.is_sparse:
            return
        if self.buffer is None or self.buffer.device != self.table.device:
            self.buffer = torch.zeros_like(self.table)
        flat = self.buffer.view(self.buffer.shape[0], -1)
        if grad.device.type == "cpu":
            # The pairs as they are, duplicates summed in pair order: the bits of the dense
            # lookup's backward (index_add_), without a sort; the fused kernel splits the rows
            # between threads (index_add_ runs on one).
            rows, values = gradient_pairs(grad)
            if cpu_table_optim.fused_available(flat):
                cpu_table_optim.scatter_pairs(flat, rows, values)
            else:
                flat.index_add_(0, rows, values.to(flat.dtype))
        else:  # index_add_ would sum duplicates with atomics there
            rows, values = touched_rows(grad)
            flat.index_copy_(0, rows, values.to(flat.dtype))
        self.rows = rows
        self.table.grad = self.buffer

    def clear(self) -> None:
        """Zero the rows written by :meth:`densify` and take the buffer back from ``.grad`` (a
        later backward then starts a new sparse gradient instead of adding into the buffer)."""
        if self.rows is not None:
            flat = self.buffer.view(self.buffer.shape[0], -1)
            if cpu_table_optim.fused_available(flat):
                cpu_table_optim.scatter_pairs(flat, self.rows, None)
            else:
                flat.index_fill_(0, self.rows, 0)
            self.rows = None
            if self.table.grad is self.buffer:
                self.table.grad = None


class ModelOptimizer:
    """The trainer's optimizer: torch's Adam (coupled L2 weight decay) for the dense part and
    the table optimizer ``kind`` for the embedding table (see the module's doc).

    The state dict of ``adam`` is torch's Adam's; that of a sparse kind is
    ``{"table_optimizer": kind, "dense": Adam's, "table": TableOptimizer's}``.
    """

    def __init__(
        self,
        model,
        kind: str = "adam",
        *,
        lr: float,
        weight_decay: float,
        fused: bool | None = None,
        table_lr: float | None = None,
        sparse: bool = True,
    ):
        if kind not in TABLE_OPTIMIZERS:
            raise ValueError(
                f"table_optimizer must be one of {', '.join(TABLE_OPTIMIZERS)}, got {kind!r}"
            )
        self.model, self.kind, self.fused = model, kind, fused
        table = embedding_table(model)
        if kind != "adam" and table is None:
            raise ValueError(
                f"table_optimizer {kind} needs a fastme model with one embedding table "
                f"(model.embedding.weight [rows, M, K]); {type(model).__name__} has none: use adam"
            )
        if kind != "adam" and not sparse:
            raise ValueError(f"table_optimizer {kind} needs sparse table gradients")
        #: Whether the table gets sparse gradients while :meth:`sparse_gradients` is entered.
        self.sparse = sparse and table is not None
        if kind == "adam":
            dense_params, self.table = list(model.parameters()), None
        else:
            dense_params = [p for p in model.parameters() if p is not table]
            self.table = SPARSE_OPTIMIZERS[kind](table, table_lr or lr, weight_decay)
        self.dense = torch.optim.Adam(dense_params, lr=lr, weight_decay=weight_decay, fused=fused)
        self._dense_grad = DenseGradient(table) if kind == "adam" and self.sparse else None

    @contextlib.contextmanager
    def sparse_gradients(self):
        """Within: the model's table gets sparse gradients (when this optimizer reads them)."""
        if not self.sparse:
            yield
            return
        before, self.model.sparse_table = self.model.sparse_table, True
        try:
            yield
        finally:
            self.model.sparse_table = before

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none)
        if self.table is not None:
            self.table.zero_grad(set_to_none)

    def step(self) -> None:
        if self._dense_grad is not None:
            self._dense_grad.densify()
        self.dense.step()
        if self._dense_grad is not None:
            self._dense_grad.clear()
        if self.table is not None:
            self.table.step()

    def state_dict(self) -> dict:
        if self.table is None:
            return self.dense.state_dict()
        return {
            "table_optimizer": self.kind,
            "dense": self.dense.state_dict(),
            "table": self.table.state_dict(),
        }

    def load_state_dict(self, saved: dict) -> None:
        saved_kind = saved.get("table_optimizer", "adam")
        if saved_kind != self.kind:
            raise ValueError(
                f"the saved optimizer state is for table optimizer {saved_kind}, not {self.kind}"
            )
        dense = saved if self.table is None else saved["dense"]
        # The saved run may have used another device: load with this run's kernel choice, so
        # that torch places Adam's step counters where the fused kernel expects them.
        dense = {**dense, "param_groups": [dict(g) for g in dense["param_groups"]]}
        for group in dense["param_groups"]:
            group["fused"] = self.fused
            group["foreach"] = None
        self.dense.load_state_dict(dense)
        if self.table is not None:
            self.table.load_state_dict(saved["table"])
