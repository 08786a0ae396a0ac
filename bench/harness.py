"""What every bench_*.py shares: sizes, input pools, the variants measured for a case, the
correctness check, timing, the device-peak probe and the run's results.

A *case* is one thing to time (an op forward, an op forward+backward, a model's training step or
inference). A *variant* is one way of computing it: ``eager`` (the reference backend), ``compile``
(``torch.compile`` of the reference), every kernel backend that ``fastme.ops.available_backends``
lists for the device (Triton only on CUDA: its CPU interpreter is a correctness tool), and
``fbgemm`` for the plain lookup when ``fbgemm_gpu`` imports. See bench/README.md.
"""

from __future__ import annotations

import copy
import functools
import gc
import itertools
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import costs
import fastme
import fastme.models
from fastme import ops
from fastme.ops import reference

# ---- device and sizes ------------------------------------------------------------------------

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FULL = DEVICE.type == "cuda" or os.environ.get("FASTME_BENCH_FULL", "") == "1"

# Approximate Kaggle Criteo cardinalities after the reference pipeline's frequency threshold of 10
# (13 bucketised integer fields, then 26 categorical; sum about 1.09M rows).
CRITEO_FIELD_DIMS = (
    49, 101, 126, 45, 223, 118, 84, 76, 95, 9, 30, 40, 75,
    1458, 555, 193949, 138801, 306, 19, 11970, 634, 4, 42646, 5178, 192773, 3175, 27, 11422,
    181075, 11, 4654, 2032, 5, 189657, 18, 16, 59697, 86, 45571,
)
# On a CPU the same 39 fields with every cardinality divided by 100 (at least 2): ~11k rows.
FIELD_DIMS = CRITEO_FIELD_DIMS if FULL else tuple(max(2, d // 100) for d in CRITEO_FIELD_DIMS)
NUM_FIELDS = len(FIELD_DIMS)
NUM_ROWS = sum(FIELD_DIMS)
EMBED_DIM = 10
CROSS_LAYERS = 4
OP_BATCH = 4096 if FULL else 256
MODEL_BATCH = 4096 if FULL else 256
OP_SETS = (1, 4, 10) if FULL else (4,)  # M for the op cases
MODEL_SCALES = (1, 4, 10)  # ME scale: M sets of the backbone's base size
BENCH_MODELS = {"dcnv2": "ME-DCNv2", "nfwfm": "ME-NFwFM", "dnn": "ME-DNN"}

# A pool holds enough independent input sets that, rotated call after call, they cover this many
# times the last-level cache (L2 on a GPU), so no call finds its inputs already cached.
POOL_CACHE_MULTIPLE = 3
POOL_MIN, POOL_MAX = 2, 16
CPU_CACHE_BYTES = 32 * 2**20  # assumed last-level cache on a CPU

# CUDA-event timing: repeats sized to about this many seconds of measured time, within bounds.
CUDA_TIME_BUDGET_S = 1.0
CUDA_MIN_REPS, CUDA_MAX_REPS = 50, 1000
CUDA_MIN_WARMUP = 10

PEERS = ("eager", "compile")
OPTIONAL_PEERS = ("compile", "fbgemm")  # if these fail to build or run: "unavailable", no error

# Bounds checks cost a device->host sync per call ('error' mode); inputs here are generated in
# range, and tuned training loops run with the check off, so every variant runs without it.
ops.set_bounds_check("off")


def cache_bytes() -> int:
    if DEVICE.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(DEVICE), "L2_cache_size", 50 * 2**20))
    return CPU_CACHE_BYTES


def pool_size(set_bytes: int) -> int:
    want = math.ceil(POOL_CACHE_MULTIPLE * cache_bytes() / max(set_bytes, 1))
    return max(POOL_MIN, min(POOL_MAX, want))


def kernel_backends() -> list[str]:
    """Kernel backends to measure here: Triton only on CUDA (never the CPU interpreter)."""
    return [b for b in ops.available_backends(DEVICE)
            if b != "reference" and (b != "triton" or DEVICE.type == "cuda")]


class Unavailable(Exception):
    """This variant cannot run this case here (reported in the summary, the test is skipped)."""


# ---- the run's results -----------------------------------------------------------------------

RESULTS: list[dict] = []  # one per timed (case, variant)
UNAVAILABLE: list[dict] = []  # one per skipped (case, variant), with the reason


@functools.lru_cache(maxsize=None)
def device_peaks() -> dict:
    """Peak memory bandwidth (large copy) and matmul throughput, measured once per run."""
    cuda = DEVICE.type == "cuda"
    n_copy = (256 if cuda else 64) * 2**20  # floats: 1 GiB per buffer on a GPU, 256 MiB on a CPU
    src = torch.empty(n_copy, device=DEVICE).uniform_()
    dst = torch.empty_like(src)
    copy_s = _median_seconds(lambda: dst.copy_(src))
    peaks = {"copy_bytes": 2 * src.nbytes, "copy_gbps": 2 * src.nbytes / copy_s / 1e9}
    del src, dst
    n = 8192 if cuda else 2048
    a, b = (torch.randn(n, n, device=DEVICE) for _ in range(2))
    out = torch.empty_like(a)
    peaks["matmul_n"] = n
    peaks["matmul_fp32_tflops"] = 2 * n**3 / _median_seconds(lambda: torch.mm(a, b, out=out)) / 1e12
    peaks["matmul_tf32_tflops"] = None
    if cuda:  # the fastest float32-input matmul the device has: tensor cores in TF32
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            peaks["matmul_tf32_tflops"] = (
                2 * n**3 / _median_seconds(lambda: torch.mm(a, b, out=out)) / 1e12)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
    peaks["peak_gbps"] = peaks["copy_gbps"]
    peaks["peak_tflops"] = max(v for v in (peaks["matmul_fp32_tflops"],
                                           peaks["matmul_tf32_tflops"]) if v is not None)
    return peaks


def run_metadata() -> dict:
    """Device, versions, sizes and peaks of this run (written into the JSON, rendered on top)."""
    if DEVICE.type == "cuda":
        device = torch.cuda.get_device_name(DEVICE)
    else:
        cpu = platform.processor() or platform.machine()
        device = f"CPU ({cpu}, {torch.get_num_threads()} threads)"
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "fastme": fastme.__version__}
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    for name in ("triton", "fbgemm_gpu", "pytest_benchmark"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # not installed, or fails to load: simply not part of this run
            pass
    return {
        "device": device,
        "device_type": DEVICE.type,
        "full_shapes": FULL,
        "versions": versions,
        "settings": {
            "fields": NUM_FIELDS, "rows": NUM_ROWS, "embed_dim": EMBED_DIM,
            "cross_layers": CROSS_LAYERS, "op_batch": OP_BATCH, "model_batch": MODEL_BATCH,
            "op_sets": list(OP_SETS), "model_scales": list(MODEL_SCALES),
            "kernel_backends": kernel_backends(), "bounds_check": ops.get_bounds_check(),
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "timing": "CUDA events, median" if DEVICE.type == "cuda"
                      else "pytest-benchmark rounds, median",
        },
        "peaks": device_peaks() if RESULTS else None,
        "unavailable": list(UNAVAILABLE),
    }


# ---- timing ----------------------------------------------------------------------------------

_event_clock_now = 0.0


def cuda_event_clock() -> float:
    """pytest-benchmark timer for CUDA cases: reads 0 before a round, the round's CUDA-event
    duration after it.

    The times are measured first (see ``_cuda_event_times``), then replayed through
    ``benchmark.pedantic`` so that pytest-benchmark's statistics and JSON hold them exactly.
    """
    return _event_clock_now


def _set_event_clock(seconds: float) -> None:
    global _event_clock_now
    _event_clock_now = seconds


def _cuda_event_times(call: Callable[[Any], Any], pool: list) -> list[float]:
    """Per-call GPU time in seconds: warm-up, then many calls, each bracketed by CUDA events.

    Calls rotate through ``pool`` so no call finds its inputs in L2 from the previous one. Events
    are read only after the last call, so the host never stalls the queue between calls.
    """
    n = len(pool)
    for i in range(max(n, CUDA_MIN_WARMUP)):  # every input set at least once: compiles, autotunes
        call(pool[i % n])
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    probe = 5
    for i in range(probe):
        call(pool[i % n])
    end.record()
    end.synchronize()
    estimate = start.elapsed_time(end) / 1e3 / probe
    reps = int(min(CUDA_MAX_REPS, max(CUDA_MIN_REPS, CUDA_TIME_BUDGET_S / max(estimate, 1e-7))))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for r in range(reps):
        starts[r].record()
        call(pool[r % n])
        ends[r].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]


def _median_seconds(fn: Callable[[], Any]) -> float:
    """Median time of ``fn`` for the peak probe (CUDA events on a GPU, wall clock on a CPU)."""
    if DEVICE.type == "cuda":
        return statistics.median(_cuda_event_times(lambda _: fn(), [None]))
    fn()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(benchmark, call: Callable[[Any], Any], pool: list) -> float | None:
    """Time ``call`` over the rotating ``pool``; returns the median seconds per call (None when
    pytest-benchmark is disabled: the case then only runs its correctness check)."""
    if not benchmark.enabled:
        benchmark(call, pool[0])  # disabled: pytest-benchmark just runs it once
        return None
    if DEVICE.type == "cuda":
        times = _cuda_event_times(call, pool)
        replay = iter(times)
        benchmark.pedantic(lambda: _set_event_clock(next(replay)),
                           setup=lambda: _set_event_clock(0.0),
                           rounds=len(times), iterations=1, warmup_rounds=0)
        median = float(benchmark.stats["median"])
        if median != statistics.median(times):
            raise RuntimeError("pytest-benchmark did not time with harness.cuda_event_clock; "
                               "CUDA cases must be parametrized through harness.params()")
        return median
    items = itertools.cycle(pool)
    call(next(items))  # warm-up outside pytest-benchmark's calibration (e.g. a recompile)
    benchmark(lambda: call(next(items)))
    return float(benchmark.stats["median"])


# ---- correctness -----------------------------------------------------------------------------

NEGLIGIBLE = 1e-4  # relative to the largest reference norm of a check


def mismatches(got, expected, tol: float) -> list[str]:
    """Outputs of ``got`` that differ from ``expected``: relative Frobenius error above ``tol``.

    A reference tensor whose norm is below NEGLIGIBLE times the largest reference norm of the
    check (e.g. the gradient of a bias that BatchNorm cancels: zero in exact arithmetic, rounding
    noise in practice) is compared absolutely instead: |got - ref| must stay below that bound.
    """
    if len(got) != len(expected):
        return [f"{len(got)} outputs, the reference has {len(expected)}"]
    floor = NEGLIGIBLE * max((float(e.detach().float().norm()) for e in expected), default=0.0)
    bad = []
    for i, (g, e) in enumerate(zip(got, expected)):
        if tuple(g.shape) != tuple(e.shape):
            bad.append(f"output {i}: shape {tuple(g.shape)}, reference {tuple(e.shape)}")
            continue
        g, e = g.detach().float(), e.detach().float()
        diff, ref = float((g - e).norm()), float(e.norm())
        if ref <= floor:
            if not diff <= floor:  # `not <=` also catches NaN
                bad.append(f"output {i} {tuple(e.shape)}: |got - ref| = {diff:.2e} where the "
                           f"reference is ~0 (|ref| = {ref:.1e} <= {floor:.1e})")
        elif not diff / ref <= tol:
            bad.append(f"output {i} {tuple(e.shape)}: relative error {diff / ref:.2e} > {tol:.0e}")
    return bad


# ---- cases -----------------------------------------------------------------------------------

@dataclass
class CaseData:
    """Everything a case's variants share: inputs, the reference result, the cost."""
    pool: list
    expected: tuple
    cost: costs.Cost
    tol: float
    model: nn.Module | None = None


@dataclass
class Runner:
    """One variant of one case: ``call`` is what gets timed, ``check`` gives the tensors compared
    with the reference (same order and layout as the reference's)."""
    call: Callable[[Any], Any]
    pool: list
    check: Callable[[], tuple]


_OP_ARGS = {
    "multi_embedding_lookup": ("table", "indices", "offsets"),
    "pooled_lookup": ("table", "indices", "offsets", "field_weights"),
    "cross_network": ("x0", "weight", "bias"),
    "lookup_cross_network": ("table", "indices", "offsets", "weight", "bias"),
}
_OP_SHORT = {"multi_embedding_lookup": "lookup", "cross_network": "cross",
             "lookup_cross_network": "lookup_cross"}


@dataclass(frozen=True)
class OpCase:
    op: str
    sets: int
    backward: bool
    weighted: bool = False  # pooled_lookup only: field-weighted (FwFM) instead of FM pooling

    @property
    def id(self) -> str:
        if self.op == "pooled_lookup":
            short = "fwfm" if self.weighted else "fm"
        else:
            short = _OP_SHORT[self.op]
        return f"{short}-{'fwdbwd' if self.backward else 'fwd'}-M{self.sets}"

    @property
    def title(self) -> str:
        pooling = (" FwFM" if self.weighted else " FM") if self.op == "pooled_lookup" else ""
        return f"{self.op}{pooling} {'fwd+bwd' if self.backward else 'fwd'} M={self.sets}"

    @property
    def kind(self) -> str:
        return "op"

    def variants(self) -> list[str]:
        extra = ["fbgemm"] if self.op == "multi_embedding_lookup" else []
        return [*PEERS, *kernel_backends(), *extra]

    def out_shape(self) -> tuple[int, ...]:
        B, N, M, K = OP_BATCH, NUM_FIELDS, self.sets, EMBED_DIM
        return {"multi_embedding_lookup": (B, M, N, K), "pooled_lookup": (B, M, K)}.get(
            self.op, (B, M, N * K))

    def cost(self) -> costs.Cost:
        B, N, M, K, L, R = OP_BATCH, NUM_FIELDS, self.sets, EMBED_DIM, CROSS_LAYERS, NUM_ROWS
        if self.op == "multi_embedding_lookup":
            return costs.multi_embedding_lookup(B, N, M, K, R, backward=self.backward)
        if self.op == "pooled_lookup":
            return costs.pooled_lookup(B, N, M, K, R, weighted=self.weighted,
                                       backward=self.backward)
        if self.op == "cross_network":
            return costs.cross_network(B, M, N * K, L, backward=self.backward)
        return costs.lookup_cross_network(B, N, M, K, L, R, backward=self.backward)

    def tolerance(self) -> float:
        # A pure gather is exact; reductions and matmuls may run in another order, and on CUDA a
        # kernel may use TF32 tensor cores. A real bug gives errors of order 1e-1 or more.
        if self.op == "multi_embedding_lookup":
            return 1e-4
        return 1e-2 if DEVICE.type == "cuda" else 1e-4

    def inputs(self, seed: int) -> dict:
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        B, N, M, K, L = OP_BATCH, NUM_FIELDS, self.sets, EMBED_DIM, CROSS_LAYERS
        D = N * K
        grad = self.backward

        def randn(*shape, scale=1.0, leaf=False):
            t = torch.randn(*shape, generator=g, device=DEVICE) * scale
            return t.requires_grad_(grad and leaf)

        x: dict[str, torch.Tensor | None] = {}
        if self.op != "cross_network":
            dims = torch.tensor(FIELD_DIMS, device=DEVICE)
            x["table"] = randn(NUM_ROWS, M, K, scale=0.1, leaf=True)
            # float64 so that u * d never rounds up to d: indices stay inside their field
            u = torch.rand(B, N, generator=g, device=DEVICE, dtype=torch.float64)
            x["indices"] = (u * dims).long()
            x["offsets"] = torch.cumsum(dims, 0) - dims
        if self.op == "pooled_lookup":
            x["field_weights"] = randn(M, N, N, leaf=True) if self.weighted else None
        if self.op == "cross_network":
            x["x0"] = randn(B, M, D, scale=0.1, leaf=True)
        if self.op in ("cross_network", "lookup_cross_network"):
            x["weight"] = randn(L, M, D, D, scale=D ** -0.5, leaf=True)  # std of the model's init
            x["bias"] = randn(L, M, D, scale=0.01, leaf=True)
        if grad:
            x["grad_out"] = randn(*self.out_shape())
        return x

    def prepare(self) -> CaseData:
        first = self.inputs(seed=0)
        set_bytes = sum(t.nbytes for t in first.values() if t is not None)
        pool = [first] + [self.inputs(seed=i) for i in range(1, pool_size(set_bytes))]
        data = CaseData(pool=pool, expected=(), cost=self.cost(), tol=self.tolerance())
        data.expected = tuple(t.detach() for t in self.runner("eager", data).check())
        return data

    def runner(self, variant: str, data: CaseData) -> Runner:
        if variant == "fbgemm":
            return _fbgemm_lookup_runner(self, data)
        names = _OP_ARGS[self.op]
        if variant == "compile":
            torch._dynamo.reset()  # a fresh compile per case: static shapes, no recompile limit
            fn = torch.compile(getattr(reference, self.op), dynamic=False)
        else:
            fn = functools.partial(getattr(ops, self.op),
                                   backend="reference" if variant == "eager" else variant)

        def call(s):
            out = fn(*(s[n] for n in names))
            if not self.backward:
                return (out,)
            leaves = [s[n] for n in names if s[n] is not None and s[n].requires_grad]
            return (out, *torch.autograd.grad(out, leaves, s["grad_out"]))

        return Runner(call=call, pool=data.pool, check=lambda: call(data.pool[0]))


def _fbgemm_lookup_runner(case: OpCase, data: CaseData) -> Runner:
    """FBGEMM's table-batched embedding (the kernel under TorchRec), one table per field.

    With one [D_i, M*K] table per field, FBGEMM's flat weight is exactly fastme's [rows, M, K]
    table. FBGEMM takes feature-major indices and returns the rows either batch-major
    [B, N*M*K] or feature-major [N*B, M*K] (depending on the build); it is timed in its own
    layouts (inputs converted once per input set, outside the timing) and its result is permuted
    to [B, M, N, K] only for the check.
    """
    try:
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            DenseTableBatchedEmbeddingBagsCodegen, PoolingMode)
    except Exception as exc:  # not installed, or built for another torch
        raise Unavailable(f"fbgemm_gpu not importable ({type(exc).__name__})") from None
    B, N, M, K = OP_BATCH, NUM_FIELDS, case.sets, EMBED_DIM
    specs = [(d, M * K) for d in FIELD_DIMS]
    pool = []
    for s in data.pool:
        tbe = DenseTableBatchedEmbeddingBagsCodegen(specs, pooling_mode=PoolingMode.NONE,
                                                    use_cpu=DEVICE.type == "cpu")
        with torch.no_grad():
            tbe.weights.copy_(s["table"].detach().reshape(-1))
        tbe.weights.requires_grad_(case.backward)
        pool.append({"tbe": tbe, "indices": s["indices"].t().reshape(-1).contiguous(),
                     "offsets": torch.arange(N * B + 1, device=DEVICE)})

    with torch.no_grad():
        shape = tuple(pool[0]["tbe"](pool[0]["indices"], pool[0]["offsets"]).shape)
    if shape == (B, N * M * K):  # batch-major
        def to_reference(out):
            return out.reshape(B, N, M, K).permute(0, 2, 1, 3)

        def from_reference(t):
            return t.permute(0, 2, 1, 3).reshape(B, N * M * K).contiguous()
    elif shape == (N * B, M * K):  # feature-major
        def to_reference(out):
            return out.reshape(N, B, M, K).permute(1, 2, 0, 3)

        def from_reference(t):
            return t.permute(2, 0, 1, 3).reshape(N * B, M * K).contiguous()
    else:
        raise Unavailable(f"unexpected FBGEMM output shape {shape}")
    if case.backward:
        for item, s in zip(pool, data.pool):
            item["grad_out"] = from_reference(s["grad_out"])

    def call(item):
        out = item["tbe"](item["indices"], item["offsets"])
        if not case.backward:
            return (out,)
        return (out, *torch.autograd.grad(out, [item["tbe"].weights], item["grad_out"]))

    def check():
        result = call(pool[0])
        return (to_reference(result[0]), *(g.reshape(NUM_ROWS, M, K) for g in result[1:]))

    return Runner(call=call, pool=pool, check=check)


def _loss(model, logits, y):
    loss = F.binary_cross_entropy_with_logits(logits, y)
    reg = model.regularization_loss()
    return loss if reg is None else loss + reg


@dataclass(frozen=True)
class ModelCase:
    model: str
    scale: int
    train: bool

    @property
    def id(self) -> str:
        return f"{self.model}-x{self.scale}-{'train' if self.train else 'infer'}"

    @property
    def title(self) -> str:
        what = "train step" if self.train else "inference"
        return f"{BENCH_MODELS[self.model]} x{self.scale} {what}"

    @property
    def kind(self) -> str:
        return "model"

    def variants(self) -> list[str]:
        return [*PEERS, *kernel_backends()]

    def prepare(self) -> CaseData:
        torch.manual_seed(0)
        model = fastme.models.build(self.model, FIELD_DIMS, self.scale, multi=True,
                                    backend="reference").to(DEVICE)
        dims = torch.tensor(FIELD_DIMS, device=DEVICE)
        g = torch.Generator(device=DEVICE).manual_seed(0)

        def batch():
            u = torch.rand(MODEL_BATCH, NUM_FIELDS, generator=g, device=DEVICE, dtype=torch.float64)
            y = torch.rand(MODEL_BATCH, generator=g, device=DEVICE).round()
            return (u * dims).long(), y

        first = batch()
        pool = [first] + [batch() for _ in range(1, pool_size(sum(t.nbytes for t in first)))]
        # 1e-2: besides TF32 kernels on CUDA, torch.compile's float32 code for this BatchNorm
        # network gives gradients a few 1e-3 off the float64 truth on a CPU (eager: 1e-6).
        data = CaseData(pool=pool, expected=(), model=model, tol=1e-2,
                        cost=costs.model_step(model, MODEL_BATCH, train=self.train))
        data.expected = tuple(t.detach() for t in self.runner("eager", data).check())
        return data

    def runner(self, variant: str, data: CaseData) -> Runner:
        model = copy.deepcopy(data.model)  # every variant starts from the same weights
        model.backend = variant if variant not in PEERS else "reference"
        if variant == "compile":
            torch._dynamo.reset()
            forward = torch.compile(model, dynamic=False)
        else:
            forward = model
        if not self.train:
            model.eval()

            def infer(s):
                with torch.no_grad():
                    return forward(s[0])

            return Runner(call=infer, pool=data.pool, check=lambda: (infer(data.pool[0]),))

        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6,
                                     fused=DEVICE.type == "cuda")  # as fastme.train does

        def step(s):
            x, y = s
            optimizer.zero_grad(set_to_none=True)
            loss = _loss(model, forward(x), y)
            loss.backward()
            optimizer.step()
            return loss

        def check():
            # One forward+backward without the optimizer step. Dropout is switched off for it:
            # its masks depend on how the random numbers are drawn (compiled code draws them
            # differently), so only without it do all variants compute the same function.
            # BatchNorm stays in training mode.
            x, y = data.pool[0]
            dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
            for m in dropouts:
                m.eval()
            try:
                logits = forward(x)
                loss = _loss(model, logits, y)
                grads = torch.autograd.grad(loss, list(model.parameters()))
            finally:
                for m in dropouts:
                    m.train()
            return (logits, loss, *grads)

        return Runner(call=step, pool=data.pool, check=check)


# ---- running one (case, variant) -------------------------------------------------------------

_current: tuple[Any, CaseData] | None = None


def case_data(case) -> CaseData:
    """The case's shared data, built once for all its variants (only one case kept alive)."""
    global _current
    if _current is None or _current[0] != case:
        _current = None
        torch._dynamo.reset()  # compiled code of the previous case may hold its tensors
        gc.collect()
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
        _current = (case, case.prepare())
    return _current[1]


def params(cases) -> list:
    """pytest parameters (case, variant) with ids ``<case>-<variant>``; every variant of a case is
    in one pytest-benchmark group, and CUDA cases are timed on the CUDA-event clock."""
    out = []
    for case in cases:
        mark = pytest.mark.benchmark(group=case.id)
        if DEVICE.type == "cuda":
            mark = pytest.mark.benchmark(group=case.id, timer=cuda_event_clock)
        for variant in case.variants():
            out.append(pytest.param(case, variant, id=f"{case.id}-{variant}", marks=mark))
    return out


def _skip(benchmark, case, variant: str, reason: str):
    benchmark.skipped = True  # tells pytest-benchmark the unused fixture is expected
    UNAVAILABLE.append({"case": case.title, "kind": case.kind, "variant": variant,
                        "reason": reason})
    pytest.skip(f"{variant} unavailable: {reason}")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def run(benchmark, case, variant: str) -> None:
    """Check one variant against the reference, then time it and record the result."""
    data = case_data(case)
    try:
        runner = case.runner(variant, data)
        got = runner.check()
    except Unavailable as exc:
        _skip(benchmark, case, variant, str(exc))
    except (ops.BackendUnavailable, NotImplementedError) as exc:
        _skip(benchmark, case, variant, _short(exc))
    except Exception as exc:
        if variant not in OPTIONAL_PEERS:
            raise
        _skip(benchmark, case, variant, _short(exc))
    bad = mismatches(got, data.expected, data.tol)
    assert not bad, f"{case.title} [{variant}] does not match the reference: " + "; ".join(bad)
    del got

    benchmark.extra_info.update(case=case.title, case_id=case.id, kind=case.kind,
                                variant=variant, bytes=data.cost.bytes, flops=data.cost.flops,
                                pool=len(runner.pool))
    if benchmark.enabled:
        device_peaks()  # measured once, before the first timing
    try:
        median = measure(benchmark, runner.call, runner.pool)
    except Exception as exc:
        if variant not in OPTIONAL_PEERS:
            raise
        _skip(benchmark, case, variant, _short(exc))
    if median is not None:
        RESULTS.append({"case": case.title, "kind": case.kind, "variant": variant,
                        "seconds": median, "bytes": data.cost.bytes, "flops": data.cost.flops})
