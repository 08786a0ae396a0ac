"""Is the machine quiet enough to time on, and what are its peaks?

Two independent signals say a measurement was disturbed:
- other processes' CPU use while a case was timed: the machine's busy time (``/proc/stat``,
  including time the hypervisor stole from this VM) minus this process's own CPU time, as a
  fraction of all cores (Linux only; elsewhere the 1-minute load average is all there is);
- the peak probe's stability: the copy-bandwidth and matmul probes are repeated at the start and
  at the end of the run; a quiet machine gives the same best-of both times.

The thresholds are deliberately loose: a table is marked disturbed only when the evidence is
clear, and then no row of it names a winner by itself (see ``render_results.py``).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

# Other processes using more than this fraction of all cores while a case was timed.
FOREIGN_CPU_LIMIT = 0.10
# Load average per core at the start of the run (before this process got busy) above this.
LOADAVG_PER_CORE_LIMIT = 0.5
# Best-of peak probes differing by more than this between the start and the end of the run, or
# the repeats of one probe spreading by more than this (max/min - 1).
PROBE_DRIFT_LIMIT = 0.20
PROBE_REPEATS = 7


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None


def _busy_seconds() -> float | None:
    """CPU-seconds all cores spent busy since boot (user, nice, system, irq, softirq, steal)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:]]
    busy = sum(ticks[i] for i in (0, 1, 2, 5, 6, 7) if i < len(ticks))
    return busy / os.sysconf("SC_CLK_TCK")


class ForeignLoad:
    """Measures other processes' CPU use between ``start()`` and ``stop()``.

    ``stop()`` returns the fraction of the machine's cores that something other than this process
    kept busy (0 = quiet, 1 = every core taken), or None where ``/proc/stat`` is missing.
    """

    def __init__(self):
        self.cores = os.cpu_count() or 1
        self._start: tuple | None = None

    def start(self) -> None:
        self._start = (time.perf_counter(), _busy_seconds(), time.process_time())

    def stop(self) -> float | None:
        wall0, busy0, own0 = self._start
        wall, busy, own = time.perf_counter() - wall0, _busy_seconds(), time.process_time() - own0
        if busy is None or busy0 is None or wall <= 0:
            return None
        # Tick granularity makes tiny negative values possible; clamp them.
        return max(0.0, (busy - busy0 - own) / (wall * self.cores))


@dataclass
class Probe:
    """A repeated measurement: its best (the machine's capability), median and spread."""

    best: float
    median: float
    spread: float  # max / min - 1 over the repeats
    repeats: int


def _repeat(rate: Callable[[], float], repeats: int) -> Probe:
    values = [rate() for _ in range(repeats)]
    return Probe(
        best=max(values),
        median=statistics.median(values),
        spread=max(values) / min(values) - 1.0,
        repeats=repeats,
    )


def seconds(fn: Callable[[], Any], device: torch.device, clock=time.perf_counter) -> float:
    """Seconds ``fn()`` takes: CUDA events on a GPU, ``clock`` on a CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = clock()
    fn()
    return clock() - t0


def _copy_probe(n_copy: int, device: torch.device, repeats: int, clock) -> tuple[int, Probe]:
    """Bytes moved by one copy of ``n_copy`` floats, and its GB/s; the buffers are freed on
    return, before the matmul probe allocates its own."""
    src = torch.empty(n_copy, device=device).uniform_()
    dst = torch.empty_like(src)
    moved = 2 * src.nbytes
    dst.copy_(src)
    return moved, _repeat(
        lambda: moved / seconds(lambda: dst.copy_(src), device, clock) / 1e9, repeats
    )


def measure_peaks(
    device: torch.device, repeats: int = PROBE_REPEATS, clock=time.perf_counter
) -> dict:
    """Memory bandwidth (a large copy, read + write counted) and float32 matmul throughput, each
    the best of ``repeats`` timed runs after a warm-up; on CUDA also TF32 matmuls. On a CPU
    ``clock`` is the one the cases are timed with (wall or process CPU time)."""
    cuda = device.type == "cuda"
    n_copy = (256 if cuda else 64) * 2**20  # floats: 1 GiB per buffer on a GPU, 256 MiB on a CPU
    moved, copy = _copy_probe(n_copy, device, repeats, clock)
    n = 8192 if cuda else 2048
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    out = torch.empty_like(a)
    torch.mm(a, b, out=out)

    def tflops():
        return 2 * n**3 / seconds(lambda: torch.mm(a, b, out=out), device, clock) / 1e12

    fp32 = _repeat(tflops, repeats)
    peaks = {
        "copy_bytes": moved,
        "copy_gbps": asdict(copy),
        "matmul_n": n,
        "matmul_fp32_tflops": asdict(fp32),
        "matmul_tf32_tflops": None,
    }
    if cuda:  # the fastest float32-input matmul the device has: tensor cores in TF32
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            peaks["matmul_tf32_tflops"] = asdict(_repeat(tflops, repeats))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
    peaks["peak_gbps"] = copy.best
    peaks["peak_tflops"] = max(
        p["best"] for p in (peaks["matmul_fp32_tflops"], peaks["matmul_tf32_tflops"]) if p
    )
    return peaks


def probe_problems(start: dict | None, end: dict | None) -> list[str]:
    """Why the peak probes say the machine was unstable (empty: they agree)."""
    problems = []
    for when, peaks in (("start", start), ("end", end)):
        for key in ("copy_gbps", "matmul_fp32_tflops"):
            if peaks and peaks[key]["spread"] > PROBE_DRIFT_LIMIT:
                problems.append(
                    f"{key} probe at the {when} spread {peaks[key]['spread']:.0%} "
                    f"over {peaks[key]['repeats']} repeats"
                )
    if start and end:
        for key in ("copy_gbps", "matmul_fp32_tflops"):
            a, b = start[key]["best"], end[key]["best"]
            drift = max(a, b) / min(a, b) - 1.0
            if drift > PROBE_DRIFT_LIMIT:
                problems.append(
                    f"{key} best-of moved {drift:.0%} between start ({a:.3g}) and "
                    f"end ({b:.3g}) of the run"
                )
    return problems
