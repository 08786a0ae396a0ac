"""The runner every bench_*.py shares: device and sizes, input pools, the correctness check,
interleaved timing, the machine checks and the run's record.

A *case* is one thing to time (an op forward, an op forward+backward, a model's training step).
Each bench_<op>.py defines its cases (a subclass of :class:`Case`: inputs, output shape, cost,
tolerance, title, and the variants that compute it). A *variant* is one way of computing a case:
fastme's ``eager`` reference, ``compile`` (``torch.compile`` of it), every kernel backend that
``fastme.ops.available_backends`` lists for the device (Triton only on CUDA: its CPU interpreter
is a correctness tool), and outside peers (FBGEMM, TorchRec, DeepCTR-Torch, the paper's code
style), each named in the table. See bench/README.md.

All variants of one case are timed in the same stretch of time, interleaved: round r runs every
variant once (a batch of calls), in an order rotated by r, so a change of machine load hits all
of them alike. Each round gives a per-call time per variant and, per round, the ratio of every
variant to the baseline (``eager``). A row names a winner only when every round's ratio lies on
the same side of 1 (render_results.py).
"""

from __future__ import annotations

import gc
import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch

import costs
import fastme
import machine
from fastme import ops
from fastme.distributed.cost import CRITEO_KAGGLE_FIELD_DIMS
from fastme.ops import reference
from render_results import verdict  # noqa: F401 - the one rule, also for the rendering

# ---- device and sizes ------------------------------------------------------------------------

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FULL = DEVICE.type == "cuda" or os.environ.get("FASTME_BENCH_FULL", "") == "1"

# Approximate Kaggle Criteo cardinalities after the reference pipeline's frequency threshold of 10
# (13 bucketised integer fields, then 26 categorical; sum about 1.09M rows).
CRITEO_FIELD_DIMS = CRITEO_KAGGLE_FIELD_DIMS
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

# A pool holds enough independent input sets that, rotated call after call, they cover this many
# times the last-level cache (L2 on a GPU), so no call finds its inputs already cached.
POOL_CACHE_MULTIPLE = 3
POOL_MIN, POOL_MAX = 2, 16
CPU_CACHE_BYTES = 32 * 2**20  # assumed last-level cache on a CPU

# Interleaved timing: ROUNDS rounds; in each, every variant runs a batch of calls lasting about
# ROUND_SECONDS (at least one call). More rounds narrow the ratio intervals, at the cost of time.
ROUNDS = int(os.environ.get("FASTME_BENCH_ROUNDS", "7"))
ROUND_SECONDS = float(
    os.environ.get("FASTME_BENCH_ROUND_SECONDS", "0.1" if DEVICE.type == "cuda" else "0.03")
)
WARMUP_CALLS = 3 if DEVICE.type == "cpu" else 10
# On a CPU, "wall" times the elapsed time; "cpu" this process's CPU time (all its threads), which
# on a machine shared with other work leaves out the time spent waiting for a core. With one
# torch thread (FASTME_BENCH_THREADS=1) it is then close to the work done; with several it also
# counts the threads' spin-waiting. CUDA cases always use CUDA events.
CLOCK = os.environ.get("FASTME_BENCH_CLOCK", "wall")
if CLOCK not in ("wall", "cpu"):
    raise ValueError(f"FASTME_BENCH_CLOCK must be 'wall' or 'cpu', got {CLOCK!r}")
if os.environ.get("FASTME_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["FASTME_BENCH_THREADS"]))

BASELINE = "eager"
# Variants that may fail to build or run here (missing package, no compiler): "unavailable",
# with the reason, instead of an error. fastme's own variants must run.
OWN_VARIANTS = ("eager",)
# Comma-separated variant names to time (others are skipped); default all.
ONLY_VARIANTS = tuple(v for v in os.environ.get("FASTME_BENCH_VARIANTS", "").split(",") if v)
REQUIRE_QUIET = os.environ.get("FASTME_BENCH_REQUIRE_QUIET", "") == "1"


def cache_bytes() -> int:
    if DEVICE.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(DEVICE), "L2_cache_size", 50 * 2**20))
    return CPU_CACHE_BYTES


def pool_size(set_bytes: int) -> int:
    want = math.ceil(POOL_CACHE_MULTIPLE * cache_bytes() / max(set_bytes, 1))
    return max(POOL_MIN, min(POOL_MAX, want))


def build_pool(make: Callable[[int], Any], nbytes: Callable[[Any], int]) -> list:
    """Input sets ``make(0), make(1), ...``: as many as :func:`pool_size` asks for."""
    first = make(0)
    return [first] + [make(seed) for seed in range(1, pool_size(nbytes(first)))]


def tensor_bytes(item) -> int:
    values = item.values() if isinstance(item, dict) else item
    return sum(t.nbytes for t in values if isinstance(t, torch.Tensor))


def kernel_backends() -> list[str]:
    """Kernel backends to measure here: Triton only on CUDA (never the CPU interpreter)."""
    return [
        b
        for b in ops.available_backends(DEVICE)
        if b != "reference" and (b != "triton" or DEVICE.type == "cuda")
    ]


def random_indices(g: torch.Generator, batch: int) -> torch.Tensor:
    """[batch, N] per-field indices, uniform within each field's cardinality."""
    dims = torch.tensor(FIELD_DIMS, device=DEVICE)
    # float64 so that u * d never rounds up to d: indices stay inside their field
    u = torch.rand(batch, NUM_FIELDS, generator=g, device=DEVICE, dtype=torch.float64)
    return (u * dims).long()


def field_offsets() -> torch.Tensor:
    dims = torch.tensor(FIELD_DIMS, device=DEVICE)
    return torch.cumsum(dims, 0) - dims


class Unavailable(Exception):
    """This variant cannot run this case here (reported in the summary and the record)."""


def require(module: str, what: str):
    """Import an outside peer's module, or say why the variant is unavailable."""
    try:
        return __import__(module, fromlist=["_"])
    except Exception as exc:  # not installed, or built for another torch
        raise Unavailable(
            f"{what} not importable ({type(exc).__name__}); "
            f"pip install -e '.[bench]' (bench/README.md)"
        ) from None


# ---- cases -----------------------------------------------------------------------------------


@dataclass
class CaseData:
    """What a case's variants share: input pool, the reference result, cost, tolerance."""

    pool: list
    cost: costs.Cost
    tol: float
    expected: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # case-specific (e.g. the model all variants copy)


@dataclass
class Runner:
    """One variant of one case: ``call`` is what gets timed (one item of ``pool`` per call);
    ``check`` returns named tensors to compare with the reference's tensors of the same name."""

    call: Callable[[Any], Any]
    pool: list
    check: Callable[[], dict]


class Case:
    """One thing to time. Subclasses (one family per bench_<op>.py) define ``id``, ``title``,
    ``kind`` ("op" or "model"), :meth:`variants`, :meth:`prepare` and :meth:`runner`."""

    id: str
    title: str
    kind: str
    #: variant name -> what it is, for outside peers (shown in the table)
    peers: dict[str, str] = {}

    def variants(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> CaseData:
        """Build the inputs and the cost; ``run`` fills ``expected`` from the baseline."""
        raise NotImplementedError

    def runner(self, variant: str, data: CaseData) -> Runner:
        raise NotImplementedError


def own_variants() -> list[str]:
    """fastme's variants of every case: the eager reference, its torch.compile, the kernels."""
    return [BASELINE, "compile", *kernel_backends()]


def op_runner(fn: Callable, args: tuple[str, ...], pool: list, backward: bool) -> Runner:
    """Runner of an op ``fn(*(item[a] for a in args))`` over ``pool``: forward, or forward and
    ``torch.autograd.grad`` of every differentiable input against the item's ``grad_out`` (so no
    gradient accumulates between calls). Checked tensors: ``out`` and ``grad_<arg>``."""

    def call(item):
        out = fn(*(item[a] for a in args))
        if not backward:
            return {"out": out}
        leaves = [a for a in args if item[a] is not None and item[a].requires_grad]
        grads = torch.autograd.grad(out, [item[a] for a in leaves], item["grad_out"])
        return {"out": out, **{f"grad_{a}": g for a, g in zip(leaves, grads)}}

    return Runner(call=call, pool=pool, check=lambda: call(pool[0]))


def compiled(fn):
    torch._dynamo.reset()  # a fresh compile per case: static shapes, no recompile limit
    return torch.compile(fn, dynamic=False)


def own_op_runner(
    variant: str, op: str, args: tuple[str, ...], pool: list, backward: bool
) -> Runner:
    """:func:`op_runner` of fastme's variant ``variant`` of the op named ``op``: "compile" is
    torch.compile of the reference maths, "eager" the public op's reference backend, any other
    a kernel backend."""
    if variant == "compile":
        return op_runner(compiled(getattr(reference, op)), args, pool, backward)
    public, backend = getattr(ops, op), "reference" if variant == BASELINE else variant
    return op_runner(lambda *a: public(*a, backend=backend), args, pool, backward)


# ---- correctness -----------------------------------------------------------------------------

NEGLIGIBLE = 1e-4  # relative to the largest reference norm of a check


def mismatches(got: dict, expected: dict, tol: float) -> list[str]:
    """Tensors of ``got`` that differ from ``expected``'s of the same name: relative Frobenius
    error above ``tol``. A variant may check a subset of the names (an outside peer has no
    counterpart of some parameters), but always ``out``.

    A reference tensor whose norm is below NEGLIGIBLE times the largest reference norm of the
    check (e.g. the gradient of a bias that BatchNorm cancels: zero in exact arithmetic, rounding
    noise in practice) is compared absolutely instead: |got - ref| must stay below that bound.
    """
    if "out" not in got:
        return ["no 'out' tensor to compare"]
    unknown = sorted(set(got) - set(expected))
    if unknown:
        return [f"the reference has no {', '.join(unknown)}"]
    floor = NEGLIGIBLE * max(
        (float(e.detach().float().norm()) for e in expected.values()), default=0.0
    )
    bad = []
    for name, g in got.items():
        e = expected[name]
        if tuple(g.shape) != tuple(e.shape):
            bad.append(f"{name}: shape {tuple(g.shape)}, reference {tuple(e.shape)}")
            continue
        g, e = g.detach().float(), e.detach().float()
        diff, ref = float((g - e).norm()), float(e.norm())
        if ref <= floor:
            if not diff <= floor:  # `not <=` also catches NaN
                bad.append(
                    f"{name} {tuple(e.shape)}: |got - ref| = {diff:.2e} where the "
                    f"reference is ~0 (|ref| = {ref:.1e} <= {floor:.1e})"
                )
        elif not diff / ref <= tol:
            bad.append(f"{name} {tuple(e.shape)}: relative error {diff / ref:.2e} > {tol:.0e}")
    return bad


# ---- interleaved timing ----------------------------------------------------------------------


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _clock():
    return time.process_time if CLOCK == "cpu" else time.perf_counter


def _timed_calls(runner: Runner, calls: int, start: int) -> float:
    """Seconds per call of ``calls`` calls (pool items from ``start`` on)."""
    pool, n = runner.pool, len(runner.pool)

    def run():
        for i in range(calls):
            runner.call(pool[(start + i) % n])

    return machine.seconds(run, DEVICE, _clock()) / calls


def interleaved(
    runners: dict[str, Runner], rounds: int = ROUNDS, round_seconds: float = ROUND_SECONDS
) -> dict[str, list[float]]:
    """Per-call seconds of every variant in each of ``rounds`` rounds, variants interleaved.

    Warm-up: every variant runs its whole pool (compiles, autotunes, fills caches), then a few
    calls estimate its time, which sets how many calls make one of its rounds. Round r runs the
    variants in the order rotated by r (A B C, B C A, C A B, ...).
    """
    names = list(runners)
    calls = {}
    for name in names:
        r = runners[name]
        for i in range(max(len(r.pool), WARMUP_CALLS)):
            r.call(r.pool[i % len(r.pool)])
        _sync()
        estimate = _timed_calls(r, 2, 0)
        calls[name] = max(1, int(round_seconds / max(estimate, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in names}
    for rnd in range(rounds):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for name in order:
            times[name].append(_timed_calls(runners[name], calls[name], rnd * calls[name]))
    return times


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (no numpy needed for a handful of values)."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(times: list[float]) -> dict:
    """Median per-call time and its spread over rounds: (p90 - p10) / median, and min/max."""
    median = statistics.median(times)
    return {
        "median": median,
        "rounds": times,
        "spread": (quantile(times, 0.9) - quantile(times, 0.1)) / median,
        "min": min(times),
        "max": max(times),
    }


def ratios(baseline: list[float], variant: list[float]) -> dict:
    """Per-round speed-up of ``variant`` over ``baseline`` (baseline time / variant time; above
    1 = faster), its median and its 10-90% interval over the rounds."""
    per_round = [b / v for b, v in zip(baseline, variant)]
    return {
        "median": statistics.median(per_round),
        "rounds": per_round,
        "low": quantile(per_round, 0.1),
        "high": quantile(per_round, 0.9),
    }


# ---- the run's record ------------------------------------------------------------------------

RECORDS: list[dict] = []  # one per case
UNAVAILABLE: list[dict] = []  # one per skipped (case, variant), with the reason
PROBES: dict[str, Any] = {"start": None, "end": None}
LOAD: dict[str, Any] = {"loadavg_start": None, "loadavg_end": None}
COMMIT: dict[str, str | None] = {"start": None}  # the code measured: taken before the first case


def start_run() -> None:
    """Before the first timing: the load average, then the peak probe."""
    if PROBES["start"] is None:
        COMMIT["start"] = _commit()
        LOAD["loadavg_start"] = machine.load_average()
        PROBES["start"] = machine.measure_peaks(DEVICE, clock=_clock())


def finish_run() -> None:
    """After the last timing (only if something was timed): the probe again, the load average."""
    if PROBES["start"] is not None and PROBES["end"] is None:
        PROBES["end"] = machine.measure_peaks(DEVICE, clock=_clock())
        LOAD["loadavg_end"] = machine.load_average()


def disturbance() -> list[str]:
    """Why this run's numbers are not those of a quiet machine (empty: no sign of it)."""
    problems = machine.probe_problems(PROBES["start"], PROBES["end"])
    cores = os.cpu_count() or 1
    start = LOAD["loadavg_start"]
    if start is not None and start / cores > machine.LOADAVG_PER_CORE_LIMIT:
        problems.append(f"1-minute load average {start:.1f} on {cores} cores before the run")
    busy = [r for r in RECORDS if r.get("disturbed")]
    if busy:
        worst = max(r["foreign_cpu"] for r in busy)
        problems.append(
            f"{len(busy)} of {len(RECORDS)} cases timed while other processes used "
            f"more than {machine.FOREIGN_CPU_LIMIT:.0%} of the CPU (up to {worst:.0%})"
        )
    return problems


def _version(distribution: str) -> str | None:
    # From the installed metadata: importing some peers has side effects (network checks).
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:  # simply not part of this run
        return None


def _commit() -> str | None:
    """The checkout's commit (with "+dirty" when files differ from it), None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def record() -> dict:
    """Everything this run measured, and on what: the machine-readable record of the run."""
    if DEVICE.type == "cuda":
        device = torch.cuda.get_device_name(DEVICE)
    else:
        cpu = platform.processor() or platform.machine()
        device = f"CPU ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "fastme": fastme.__version__,
    }
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    versions.update(
        {
            name: v
            for name in (
                "triton",
                "fbgemm-gpu-cpu",
                "fbgemm-gpu",
                "torchrec",
                "deepctr-torch",
                "pytest-benchmark",
            )
            if (v := _version(name))
        }
    )
    problems = disturbance()
    return {
        "schema": 1,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "commit": COMMIT["start"] or _commit(),
        "device": device,
        "device_type": DEVICE.type,
        "full_shapes": FULL,
        "versions": versions,
        "config": {
            "fields": NUM_FIELDS,
            "rows": NUM_ROWS,
            "embed_dim": EMBED_DIM,
            "cross_layers": CROSS_LAYERS,
            "op_batch": OP_BATCH,
            "model_batch": MODEL_BATCH,
            "op_sets": list(OP_SETS),
            "model_scales": list(MODEL_SCALES),
            "kernel_backends": kernel_backends(),
            "bounds_check": "off",
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "rounds": ROUNDS,
            "round_seconds": ROUND_SECONDS,
            "baseline": BASELINE,
            "torch_threads": torch.get_num_threads(),
            "clock": "cuda events" if DEVICE.type == "cuda" else CLOCK,
            "timing": (
                "CUDA events"
                if DEVICE.type == "cuda"
                else "process CPU time"
                if CLOCK == "cpu"
                else "wall clock"
            )
            + ", variants interleaved per round, median over rounds",
        },
        "machine": {
            "loadavg_start": LOAD["loadavg_start"],
            "loadavg_end": LOAD["loadavg_end"],
            "cores": os.cpu_count(),
            "probe_start": PROBES["start"],
            "probe_end": PROBES["end"],
            "disturbed": bool(problems),
            "problems": problems,
        },
        "cases": list(RECORDS),
        "unavailable": list(UNAVAILABLE),
    }


# ---- running one case ------------------------------------------------------------------------


def params(cases: list[Case]) -> list:
    """pytest parameters, one per case, with the case id as test id."""
    return [pytest.param(case, id=case.id) for case in cases]


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _unavailable(case: Case, variant: str, reason: str) -> None:
    UNAVAILABLE.append(
        {
            "case": case.title,
            "case_id": case.id,
            "kind": case.kind,
            "variant": variant,
            "peer": case.peers.get(variant),
            "reason": reason,
        }
    )


def _checked_runners(case: Case, data: CaseData) -> dict[str, Runner]:
    """Every variant's runner, each checked against the baseline's result first."""
    baseline = case.runner(BASELINE, data)
    data.expected = {k: v.detach() for k, v in baseline.check().items()}
    runners = {BASELINE: baseline}
    for variant in case.variants():
        if variant == BASELINE or (ONLY_VARIANTS and variant not in ONLY_VARIANTS):
            continue
        try:
            runner = case.runner(variant, data)
            got = runner.check()
        except Exception as exc:
            expected = isinstance(exc, (Unavailable, ops.BackendUnavailable, NotImplementedError))
            if variant in OWN_VARIANTS and not expected:
                raise
            _unavailable(case, variant, str(exc) if isinstance(exc, Unavailable) else _short(exc))
            continue
        bad = mismatches(got, data.expected, data.tol)
        assert not bad, f"{case.title} [{variant}] does not match the reference: " + "; ".join(bad)
        runners[variant] = runner
    return runners


def run(benchmark, case: Case) -> None:
    """Check every variant of ``case`` against the baseline, then time them interleaved and
    record the result. With ``--benchmark-disable`` only the checks run."""
    # Bounds checks cost a device->host sync per call ('error' mode); inputs here are generated
    # in range, and tuned training loops run with the check off, so every variant runs without.
    ops.set_bounds_check("off")
    torch._dynamo.reset()  # compiled code of the previous case may hold its tensors
    gc.collect()
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
    data = case.prepare()
    runners = _checked_runners(case, data)
    if not benchmark.enabled:
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)
        return
    start_run()
    load = machine.ForeignLoad()

    def measure():
        load.start()
        times = interleaved(runners)
        return times, load.stop()

    # pytest-benchmark's own table then shows how long each case's whole measurement took.
    times, foreign = benchmark.pedantic(measure, rounds=1, iterations=1)
    base = times[BASELINE]
    disturbed = foreign is not None and foreign > machine.FOREIGN_CPU_LIMIT
    RECORDS.append(
        {
            "case": case.title,
            "case_id": case.id,
            "kind": case.kind,
            "bytes": data.cost.bytes,
            "flops": data.cost.flops,
            "pool": len(data.pool),
            "foreign_cpu": foreign,
            "disturbed": disturbed,
            "variants": {
                name: {"peer": case.peers.get(name), **summarize(t), "vs_baseline": ratios(base, t)}
                for name, t in times.items()
            },
        }
    )
    if disturbed and REQUIRE_QUIET:
        pytest.fail(
            f"{case.title}: other processes used {foreign:.0%} of the CPU while it was "
            "timed (FASTME_BENCH_REQUIRE_QUIET=1 refuses a disturbed measurement)"
        )
