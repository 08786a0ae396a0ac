#!/usr/bin/env bash
# One-shot GPU validation of fastme on an H100/H200 (sm_90) device machine (docs/ops.md,
# "The GPU check"). Run once, on a bare machine (torch 2.11+cu130, Triton 3.6, pybind11, cmake,
# ninja, nvcc; no network):
#     bash bench/gpu_check.sh          # results in $OUT (default ./gpu_check_out)
# Everything is time-boxed; the whole run stays under GPU_CHECK_BUDGET seconds (default 470).
# Without a visible CUDA device it is a dry run that checks every command: the build (done by the
# install) and every GPU step are skipped and recorded as such, the gpu-marked tests are
# collected (they skip) and one CPU benchmark case runs. A step that errors fails the run.
# At most 8 files are written to $OUT:
#   summary.md  build.log  checks.log  pytest.log  pytest.xml  sanitizer.log  bench.log  bench.json
# Nothing in the repository is modified except the build outputs of `pip install -e .`
# (build/, fastme/_C*.so, *.egg-info).
set -u
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-470}
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/fastme_gpu_check.XXXXXX)
SUMMARY=$OUT/summary.md
export PATH="$PATH:/usr/local/cuda/bin:/usr/local/cuda/compute-sanitizer"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# sm_90 only: halves the CUDA build; test_cuda_build accepts it because the variable is set.
export FASTME_CUDA_ARCHS=${FASTME_CUDA_ARCHS:-90}
export FASTME_CUDA=${FASTME_CUDA:-1}

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(date +%s) + START )); }
# cap NAME WANT: seconds a step may take: WANT, or what is left minus a reserve for later steps.
cap() {
  local want=$1 reserve=${2:-15} l
  l=$(( $(left) - reserve ))
  (( l < want )) && want=$l
  (( want < 5 )) && want=0
  echo "$want"
}
declare -a ROWS
# step NAME SECONDS LOGFILE CMD...: run CMD under timeout, append output to LOGFILE, record a row.
step() {
  local name=$1 secs=$2 log=$3; shift 3
  if (( secs <= 0 )); then
    ROWS+=("| $name | skipped (no time left) | 0 |"); echo "== $name: skipped (no time left)" >>"$log"; return 99
  fi
  local t0=$(date +%s) rc
  echo "== $name (limit ${secs}s, at +$(elapsed)s): $*" >>"$log"
  timeout -k 10 "$secs" "$@" >>"$log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local what="rc=$rc"; (( rc == 124 || rc == 137 )) && what="TIMED OUT (rc=$rc)"
  echo "== $name: $what after ${dt}s" >>"$log"
  ROWS+=("| $name | $what | $dt |")
  return $rc
}

# ---- 0. environment -----------------------------------------------------------------------------
{
  echo "# environment"; date -u; uname -a; nproc
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | head -5
  "$PY" - <<'EOF' 2>&1
import sys, torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "cc", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count,
          "L2", getattr(p, "L2_cache_size", "?"))
try:
    import triton; print("triton", triton.__version__)
except Exception as e: print("triton import failed:", e)
import sysconfig, os
inc = sysconfig.get_paths()["include"]
print("Python.h", inc, os.path.exists(os.path.join(inc, "Python.h")))
EOF
  which nvcc cmake ninja compute-sanitizer 2>&1; nvcc --version 2>&1 | tail -1
} >"$OUT/build.log" 2>&1

# ---- 1. build -----------------------------------------------------------------------------------
HAVE_GPU=0
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && HAVE_GPU=1
echo "HAVE_GPU=$HAVE_GPU" >>"$OUT/build.log"
FAILED=0   # a step that errors (not one skipped for lack of a GPU or of time)
BUILD_OK=0
if (( HAVE_GPU )); then
  step "build (pip install -e .)" "$(cap 240 200)" "$OUT/build.log" \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e . && BUILD_OK=1
  if (( BUILD_OK == 0 )); then
    # Fallback: CMake directly (e.g. when pip cannot build editable installs here); a copy of the
    # Python 3.12 headers may be shipped at ./py312inc if the image has none.
    INC_ARGS=()
    [ -f py312inc/Python.h ] && INC_ARGS=(-DPython_INCLUDE_DIR="$PWD/py312inc")
    step "build (cmake fallback)" "$(cap 200 180)" "$OUT/build.log" bash -c "
      cmake -S . -B build/gpu_check -GNinja -DCMAKE_BUILD_TYPE=Release -DFASTME_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=$FASTME_CUDA_ARCHS -DFASTME_PTXAS_VERBOSE=ON \
        -DPython_EXECUTABLE=\$(command -v $PY) -Dpybind11_DIR=\$($PY -m pybind11 --cmakedir) \
        -DCMAKE_LIBRARY_OUTPUT_DIRECTORY=$PWD/fastme ${INC_ARGS[*]} &&
      cmake --build build/gpu_check --parallel \$(nproc)" && BUILD_OK=1 || FAILED=1
  fi
else
  ROWS+=("| build | skipped (dry run: no GPU; the install built it) | 0 |")
fi
SMOKE_OK=0
if (( HAVE_GPU )); then
  step "extension smoke" 60 "$OUT/build.log" "$PY" -c "
import torch, fastme._C as c
print('built_with_cuda', c.built_with_cuda, 'archs', getattr(c, 'cuda_archs', None),
      'devices', c.cuda_device_count() if c.built_with_cuda else None,
      'status', repr(c.cuda_runtime_status()) if c.built_with_cuda else None)
import fastme.ops as ops
print('available backends on cuda:', ops.available_backends('cuda'))
assert c.built_with_cuda and c.cuda_device_count() > 0
" && SMOKE_OK=1 || FAILED=1
else
  step "import (dry run)" 60 "$OUT/build.log" "$PY" -c "
import fastme.ops as ops
print('available backends on cpu:', ops.available_backends('cpu'))" || FAILED=1
fi

# ---- 2. targeted checks (race, 64-bit indexing, alignment, streams, big batch) -------------------
cat >"$WORK/checks.py" <<'EOF'
"""Checks the test suite does not make: see the brief of this script. Each prints PASS/FAIL."""
import os, sys, time, traceback
import torch
import fastme.ops as ops
from fastme.ops import reference

ops.set_bounds_check("off")
DEV = "cuda"
BACKENDS = [b for b in ops.available_backends(DEV) if b != "reference"]
print("backends", BACKENDS, flush=True)
RESULTS = []
T0 = time.time()
LIMIT = float(os.environ.get("CHECKS_SECONDS", "100"))


def check(name):
    def deco(fn):
        if time.time() - T0 > LIMIT:
            RESULTS.append((name, "SKIP (time)")); print("SKIP", name, flush=True); return fn
        t = time.time()
        try:
            fn()
            torch.cuda.synchronize()
            RESULTS.append((name, "PASS")); print(f"PASS {name} ({time.time()-t:.1f}s)", flush=True)
        except Exception as e:  # noqa: BLE001
            RESULTS.append((name, f"FAIL {type(e).__name__}: {str(e)[:300]}"))
            print(f"FAIL {name} ({time.time()-t:.1f}s)", flush=True); traceback.print_exc()
            try:
                torch.cuda.synchronize()
            except Exception:
                print("CUDA context broken; stopping checks", flush=True); report(); sys.exit(2)
        return fn
    return deco


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def report():
    print("\n# checks summary")
    for n, r in RESULTS:
        print(f"- {n}: {r}")


def criteo(batch, m, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = torch.randint(2, 5000, (39,), generator=g)
    idx = torch.stack([torch.randint(0, int(d), (batch,), generator=g) for d in dims], 1)
    offs = torch.cumsum(dims, 0) - dims
    table = torch.randn(int(dims.sum()), m, k, generator=g)
    return table.to(DEV, dtype), idx.to(DEV), offs.to(DEV)


# (a) The Triton cross network passes x_l between the warps of one program through global memory
# (store, tl.debug_barrier, .cg load). A missing/ineffective barrier shows as run-to-run
# differences of a computation that has no atomics: forward and the x0/weight/bias gradients.
for backend in BACKENDS:
    for dtype in (torch.float32, torch.bfloat16):
        @check(f"cross network bitwise repeatable x20 + matches fp64 ({backend}, {dtype})")
        def _():
            table, idx, offs = criteo(4096, 10, 10, dtype)
            d = 390
            w = (torch.randn(4, 10, d, d, device=DEV) / d ** 0.5).to(dtype).requires_grad_()
            b = (torch.randn(4, 10, d, device=DEV) * 0.1).to(dtype).requires_grad_()
            x0 = ops.multi_embedding_lookup(table, idx, offs, backend="reference").reshape(4096, 10, d)
            x0 = x0.detach().requires_grad_()
            gout = torch.randn(4096, 10, d, device=DEV).to(dtype)
            runs = []
            for _ in range(20):
                out = ops.cross_network(x0, w, b, backend=backend)
                gx, gw, gb = torch.autograd.grad(out, (x0, w, b), gout)
                runs.append((out, gx, gw, gb))
            for r in runs[1:]:
                for a, e, what in zip(r, runs[0], ("out", "dx0", "dW", "db")):
                    assert torch.equal(a, e), f"{what} differs between runs (race?)"
            ref = reference.cross_network(x0.double(), w.double(), b.double())
            rg = torch.autograd.grad(ref, (x0, w, b), gout.double())
            tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
            errs = [rel(runs[0][0], ref)] + [rel(a, e) for a, e in zip(runs[0][1:], rg)]
            print("   rel errors out/dx0/dW/db:", ["%.2e" % e for e in errs])
            assert max(errs) < tol, errs

        @check(f"lookup_cross_network bitwise repeatable x10 ({backend}, {dtype})")
        def _():
            table, idx, offs = criteo(4096, 4, 10, dtype, seed=1)
            d = 390
            w = (torch.randn(3, 4, d, d, device=DEV) / d ** 0.5).to(dtype)
            b = torch.zeros(3, 4, d, device=DEV, dtype=dtype)
            outs = [ops.lookup_cross_network(table, idx, offs, w, b, backend=backend) for _ in range(10)]
            assert all(torch.equal(o, outs[0]) for o in outs[1:]), "forward differs between runs"
            ref = reference.lookup_cross_network(table.double(), idx, offs, w.double(), b.double())
            e = rel(outs[0], ref); print("   rel error", "%.2e" % e)
            assert e < (3e-2 if dtype == torch.bfloat16 else 1e-4)

# (b) 64-bit row arithmetic: a table of more than 2^31 elements, rows read/written past 2^31.
BIG_M, BIG_K = 4, 16
BIG_ROWS = (1 << 31) // (BIG_M * BIG_K) + 4096  # element offset of the last rows > 2^31
for dtype in (torch.float32, torch.bfloat16):
    @check(f"table > 2^31 elements: lookup/FM/FwFM fwd+bwd on the last rows ({dtype})")
    def _():
        torch.cuda.empty_cache()
        table = torch.empty(BIG_ROWS, BIG_M, BIG_K, device=DEV, dtype=dtype)
        table[-8192:].normal_(); table[:8].normal_()
        dims = torch.tensor([4, BIG_ROWS - 4 - 1000, 1000])
        offs = (torch.cumsum(dims, 0) - dims).to(DEV)
        g = torch.Generator().manual_seed(0)
        idx = torch.stack([torch.randint(0, 4, (64,), generator=g),
                           torch.randint(int(dims[1]) - 3000, int(dims[1]), (64,), generator=g),
                           torch.randint(0, 1000, (64,), generator=g)], 1).to(DEV)
        rows = (idx + offs).reshape(-1)
        assert int(rows.max()) * BIG_M * BIG_K > (1 << 31)
        fw = torch.randn(BIG_M, 3, 3, device=DEV, dtype=dtype)
        for backend in BACKENDS:
            out = ops.multi_embedding_lookup(table, idx, offs, backend=backend)
            exp = table[rows].reshape(64, 3, BIG_M, BIG_K).permute(0, 2, 1, 3)
            assert torch.equal(out, exp), f"{backend}: lookup wrong past 2^31"
            fm = ops.pooled_lookup(table, idx, offs, backend=backend)
            assert rel(fm, reference.fm_pooling(exp.double())) < 2e-2, f"{backend}: FM wrong"
            fwfm = ops.pooled_lookup(table, idx, offs, fw, backend=backend)
            assert rel(fwfm, reference.fwfm_pooling(exp.double(), fw.double())) < 3e-2, \
                f"{backend}: FwFM wrong"
            t = table.detach().requires_grad_()
            gout = torch.randn(64, BIG_M, 3, BIG_K, device=DEV, dtype=dtype)
            (gt,) = torch.autograd.grad(ops.multi_embedding_lookup(t, idx, offs, backend=backend),
                                        t, gout)
            exp_g = torch.zeros(BIG_ROWS, BIG_M, BIG_K, device=DEV)
            exp_g.index_add_(0, rows, gout.permute(0, 2, 1, 3).reshape(-1, BIG_M, BIG_K).float())
            ur = rows.unique()
            assert rel(gt[ur], exp_g[ur]) < 1e-2, f"{backend}: table gradient wrong past 2^31"
            if dtype == torch.float32:
                assert float(gt[8:-8192].abs().max()) == 0, f"{backend}: rows no pair touched changed"
            (gt,) = torch.autograd.grad(ops.pooled_lookup(t, idx, offs, backend=backend).sum(), t)
            assert torch.isfinite(gt[ur]).all() and float(gt[ur].abs().sum()) > 0
            del gt, exp_g, t
        del table
        torch.cuda.empty_cache()

# (c) Misaligned (offset but contiguous) views: 16-byte vector paths must not assume alignment.
@check("offset views (data_ptr % 16 != 0) on every op")
def _():
    for dtype in (torch.float32, torch.bfloat16):
        rows, m, k = 500, 2, 8  # K*4 = 32 B runs: vectorisable, but the base is off by one element
        flat = torch.randn(rows * m * k + 1, device=DEV).to(dtype)
        table = flat[1:].view(rows, m, k)
        assert table.is_contiguous() and table.data_ptr() % 16 != 0
        dims = torch.tensor([100, 250, 150]); offs = (torch.cumsum(dims, 0) - dims).to(DEV)
        idx = torch.stack([torch.randint(0, int(d), (33,)) for d in dims], 1).to(DEV)
        fw = torch.randn(m, 3, 3, device=DEV).to(dtype)
        d = 3 * k
        xflat = torch.randn(33 * m * d + 1, device=DEV).to(dtype)
        x0 = xflat[1:].view(33, m, d)
        w = (torch.randn(2, m, d, d, device=DEV) / d ** 0.5).to(dtype)
        b = torch.randn(2, m, d, device=DEV).to(dtype)
        tol = 3e-2 if dtype == torch.bfloat16 else 1e-5
        for backend in BACKENDS:
            t = table.detach().requires_grad_()
            for name, f, ref in [
                ("lookup", lambda be, t: ops.multi_embedding_lookup(t, idx, offs, backend=be),
                 lambda t: reference.multi_embedding_lookup(t, idx, offs)),
                ("fm", lambda be, t: ops.pooled_lookup(t, idx, offs, backend=be),
                 lambda t: reference.pooled_lookup(t, idx, offs)),
                ("fwfm", lambda be, t: ops.pooled_lookup(t, idx, offs, fw, backend=be),
                 lambda t: reference.pooled_lookup(t, idx, offs, fw.double())),
                ("lookup_cross", lambda be, t: ops.lookup_cross_network(t, idx, offs, w, b, backend=be),
                 lambda t: reference.lookup_cross_network(t, idx, offs, w.double(), b.double())),
            ]:
                out = f(backend, t)
                tr = table.detach().double().requires_grad_()
                r = ref(tr)
                assert rel(out, r) < tol, f"{backend} {name} {dtype}: forward"
                go = torch.randn_like(r)
                (g1,) = torch.autograd.grad(out, t, go.to(dtype))
                (g2,) = torch.autograd.grad(r, tr, go)
                assert rel(g1, g2) < tol, f"{backend} {name} {dtype}: table gradient"
            out = ops.cross_network(x0, w, b, backend=backend)
            assert rel(out, reference.cross_network(x0.double(), w.double(), b.double())) < tol

# (d) Streams: a side stream whose producer is still running; a kernel launched on any other
# stream than torch's current one would read the stale table. Nothing in a call may synchronise
# (bounds check off), or the bug would hide.
@check("ops run on torch's current (non-default) stream")
def _():
    table, idx, offs = criteo(2048, 4, 10, torch.float32, seed=2)
    fd = torch.cat([offs[1:], offs.new_tensor([table.shape[0]])]) - offs
    src = table.clone()
    d = 390
    w = (torch.randn(2, 4, d, d, device=DEV) / d ** 0.5); b = torch.zeros(2, 4, d, device=DEV)
    fw = torch.randn(4, 39, 39, device=DEV) / 39
    exp = {"lookup": reference.multi_embedding_lookup(src, idx, offs),
           "fm": reference.pooled_lookup(src, idx, offs),
           "fwfm": reference.pooled_lookup(src, idx, offs, fw),
           "cross": reference.lookup_cross_network(src, idx, offs, w, b)}
    s = torch.cuda.Stream()
    for backend in BACKENDS:
        for _ in range(2):  # the first round compiles/autotunes (host time), the second is the test
            torch.cuda.synchronize()
            table.zero_()
            torch.cuda.synchronize()
            with torch.cuda.stream(s):
                torch.cuda._sleep(400_000_000)  # ~0.2 s of spinning before the table is filled
                table.copy_(src)
                t = time.time()
                got = {"lookup": ops.multi_embedding_lookup(table, idx, offs, field_dims=fd, backend=backend),
                       "fm": ops.pooled_lookup(table, idx, offs, field_dims=fd, backend=backend),
                       "fwfm": ops.pooled_lookup(table, idx, offs, fw, field_dims=fd, backend=backend),
                       "cross": ops.lookup_cross_network(table, idx, offs, w, b, field_dims=fd,
                                                         backend=backend)}
                host = time.time() - t
            s.synchronize()
        print(f"   {backend}: host time of the 4 launches {host*1e3:.1f} ms (sleep ~200 ms)")
        for k_, v in got.items():
            assert rel(v, exp[k_]) < 1e-4, f"{backend} {k_}: launched on the wrong stream?"


@check("a lookup call without field_dims does not block the host (bounds check off)")
def _():
    table, idx, offs = criteo(256, 1, 10, torch.float32, seed=4)
    for backend in BACKENDS:
        ops.multi_embedding_lookup(table, idx, offs, backend=backend)
        torch.cuda.synchronize()
        torch.cuda._sleep(400_000_000)
        t = time.time()
        ops.multi_embedding_lookup(table, idx, offs, backend=backend)
        dt = time.time() - t
        torch.cuda.synchronize()
        print(f"   {backend}: call returned after {dt*1e3:.1f} ms with ~200 ms queued")
        assert dt < 0.1, f"{backend}: the call waited for the device ({dt*1e3:.0f} ms)"


# (e) Large batch: the lookup output has more than 2^31 elements (B=2^20, N=39, K=64, bf16), so
# its offsets need 64 bits; spot-checked against direct indexing. FM and cross at large B too.
@check("large batch: lookup output > 2^31 elements (B=2^20, K=64), FM, cross B=2^18")
def _():
    for backend in BACKENDS:
        table, idx, offs = criteo(1 << 20, 1, 64, torch.bfloat16, seed=3)
        out = ops.multi_embedding_lookup(table, idx, offs, backend=backend)
        assert out.numel() > (1 << 31)
        pick = torch.cat([torch.arange(64), torch.randint(0, 1 << 20, (256,)),
                          torch.arange((1 << 20) - 64, 1 << 20)]).to(DEV)
        rows = (idx[pick] + offs).reshape(-1)
        exp = table[rows].reshape(pick.numel(), 39, 1, 64).permute(0, 2, 1, 3)
        assert torch.equal(out[pick], exp), f"{backend}: lookup wrong for a > 2^31-element output"
        del out
        torch.cuda.empty_cache()
        fm = ops.pooled_lookup(table, idx, offs, backend=backend)
        assert rel(fm[pick], reference.fm_pooling(exp.double())) < 2e-2, backend
        del fm
        x0 = torch.randn(1 << 18, 2, 64, device=DEV)
        w = torch.randn(2, 2, 64, 64, device=DEV) / 8; b = torch.zeros(2, 2, 64, device=DEV)
        assert rel(ops.cross_network(x0, w, b, backend=backend),
                   reference.cross_network(x0, w, b)) < 1e-4, backend
        del table, idx, x0
        torch.cuda.empty_cache()


# (f) FwFM with more than 64 fields: the Triton kernels tile the fields (blocks of 64 or 32);
# N = 70 and N = 256 take the multi-tile paths, which the interpreter checks but never times.
for n_fields, dtype in ((70, torch.float32), (70, torch.bfloat16), (256, torch.float32)):
    @check(f"FwFM pooling with N={n_fields} fields, fwd+bwd ({dtype})")
    def _(n_fields=n_fields, dtype=dtype):
        g = torch.Generator().manual_seed(5)
        dims = torch.randint(2, 50, (n_fields,), generator=g)
        idx = torch.stack([torch.randint(0, int(d), (512,), generator=g) for d in dims], 1).to(DEV)
        offs = (torch.cumsum(dims, 0) - dims).to(DEV)
        table = torch.randn(int(dims.sum()), 2, 10, device=DEV).to(dtype)
        fw = (torch.randn(2, n_fields, n_fields, device=DEV) / n_fields).to(dtype)
        errs = []
        for backend in BACKENDS:
            try:
                t = table.detach().requires_grad_(); r = fw.detach().requires_grad_()
                out = ops.pooled_lookup(t, idx, offs, r, backend=backend)
                gt, gr = torch.autograd.grad(out, (t, r), torch.ones_like(out))
                tr = table.detach().double().requires_grad_(); rr = fw.detach().double().requires_grad_()
                ref = reference.pooled_lookup(tr, idx, offs, rr)
                et, er = torch.autograd.grad(ref, (tr, rr), torch.ones_like(ref))
                tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
                e = [rel(out, ref), rel(gt, et), rel(gr, er)]
                print(f"   {backend}: rel errors out/dtable/dR", ["%.1e" % x for x in e])
                if max(e) > tol:
                    errs.append(f"{backend}: error {max(e):.2e}")
            except Exception as exc:  # noqa: BLE001
                errs.append(f"{backend}: {type(exc).__name__}: {str(exc)[:160]}")
                print("   ", errs[-1])
        assert not errs, "; ".join(errs)


report()
sys.exit(0 if all(r == "PASS" or r.startswith("SKIP") for _, r in RESULTS) else 1)
EOF
# They run in the background, next to the test suite (16 cores; both are mostly Triton compiles).
CHECKS_PID=
CHECKS_LIMIT=$(cap 220 170)
if (( SMOKE_OK && HAVE_GPU )); then
  export CHECKS_SECONDS=$(( CHECKS_LIMIT - 30 ))
  ( t0=$(date +%s); echo "== targeted checks (limit ${CHECKS_LIMIT}s, at +$(elapsed)s)"
    timeout -k 10 "$CHECKS_LIMIT" "$PY" "$WORK/checks.py"; rc=$?
    echo "== targeted checks: rc=$rc after $(( $(date +%s) - t0 ))s"; echo "$rc" >"$WORK/checks.rc"
  ) >"$OUT/checks.log" 2>&1 &
  CHECKS_PID=$!
else
  echo "targeted checks not run: build/smoke ok=$SMOKE_OK, GPU=$HAVE_GPU" >"$OUT/checks.log"
  ROWS+=("| targeted checks | not run (no GPU or no build) | 0 |")
fi

# ---- 3. the GPU test suite ----------------------------------------------------------------------
# On a GPU the kernel tests (not only those marked gpu) run both backends on CUDA tensors, so the
# whole kernel suite is run, in parallel workers when pytest-xdist is there.
XDIST=()
"$PY" -c "import xdist" 2>/dev/null && (( HAVE_GPU )) && XDIST=(-n 8)
TIMEOUT_ARGS=()
"$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT_ARGS=(--timeout 240)
KERNEL_TESTS="tests/test_cuda_build.py tests/test_embedding_lookup.py tests/test_pooling.py
  tests/test_cross_network.py tests/test_models_backends.py tests/test_ops_validation.py
  tests/test_compile_fresh_process.py tests/test_train.py"
SELECT=(); (( HAVE_GPU )) || SELECT=(-m gpu)   # dry run: the gpu-marked tests, which must skip
step "pytest kernel suite${SELECT:+ (dry run: -m gpu)}" "$(cap 210 170)" "$OUT/pytest.log" \
  "$PY" -m pytest -q -rfEs -p no:cacheprovider --maxfail=150 "${XDIST[@]}" "${TIMEOUT_ARGS[@]}" \
  "${SELECT[@]}" --junitxml="$OUT/pytest.xml" $KERNEL_TESTS || FAILED=1
if [ -n "$CHECKS_PID" ]; then
  wait "$CHECKS_PID"
  crc=$(cat "$WORK/checks.rc" 2>/dev/null || echo "?")
  what="rc=$crc"; [ "$crc" = 124 ] || [ "$crc" = 137 ] && what="TIMED OUT (rc=$crc)"
  ROWS+=("| targeted checks (parallel to pytest) | $what | see checks.log |")
  [ "$crc" = 0 ] || FAILED=1
fi

# ---- 4. compute-sanitizer on a small subset -----------------------------------------------------
SAN=$(command -v compute-sanitizer || true)
if [ -n "$SAN" ] && (( SMOKE_OK && HAVE_GPU )); then
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1  # so that out-of-bounds accesses leave the allocation
  KTESTS="tests/test_embedding_lookup.py tests/test_pooling.py tests/test_cross_network.py"
  step "memcheck: cuda backend (float64 lookup/pooling/cross, wild indices)" "$(cap 55 120)" "$OUT/sanitizer.log" \
    "$SAN" --tool memcheck --print-limit 20 "$PY" -m pytest -q -p no:cacheprovider $KTESTS \
    -k "cuda and (match_reference_float64 or out_of_range or bounds_check_modes)"
  step "memcheck: triton backend (float64 lookup/pooling/cross, wild indices)" "$(cap 40 100)" "$OUT/sanitizer.log" \
    "$SAN" --tool memcheck --print-limit 20 "$PY" -m pytest -q -p no:cacheprovider $KTESTS \
    -k "triton and (match_reference_float64 or out_of_range or bounds_check_modes)"
  step "racecheck: cuda fwfm + cross GEMMs (shared memory)" "$(cap 35 80)" "$OUT/sanitizer.log" \
    "$SAN" --tool racecheck --print-limit 20 "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_pooling.py tests/test_cross_network.py \
    -k "cuda and (match_reference_float64 and (fwfm or cross) or tf32)"
  unset PYTORCH_NO_CUDA_MEMORY_CACHING
else
  echo "compute-sanitizer not run: found='$SAN', build/smoke ok=$SMOKE_OK, GPU=$HAVE_GPU" >"$OUT/sanitizer.log"
  ROWS+=("| compute-sanitizer | not run (missing, no GPU or no build) | 0 |")
fi

# ---- 5. benchmarks, short -----------------------------------------------------------------------
# On CUDA the suite uses the full shapes; keep the M=4 / x4 cases, drop the torch.compile peer
# (inductor compiles dominate a first run), and time fewer, shorter rounds.
# The harness probes the machine's peaks before and after (a CPU takes its time over those).
if (( HAVE_GPU )); then BENCH_K=${BENCH_K:-"(M4 or x4) and not compile"}; ROUNDS=3; BENCH_S=120
else BENCH_K=${BENCH_K:-"lookup-fwd-M4"}; ROUNDS=1; BENCH_S=240; fi   # dry run: one CPU case
step "bench (short: $BENCH_K)" "$(cap $BENCH_S 5)" "$OUT/bench.log" \
  env FASTME_BENCH_ROUNDS=$ROUNDS FASTME_BENCH_ROUND_SECONDS=0.05 \
  "$PY" -m pytest bench/ --benchmark-only -q -p no:cacheprovider -k "$BENCH_K" \
  --fastme-record="$OUT/bench.json" || FAILED=1
[ -s "$OUT/bench.json" ] && "$PY" bench/render_results.py "$OUT/bench.json" -o - >>"$OUT/bench.log" 2>&1

# ---- summary --------------------------------------------------------------------------------------
{
  echo "# fastme GPU check — $(date -u '+%F %T') UTC, $(elapsed)s of ${BUDGET}s"
  echo
  grep -E "^(device|torch|triton|python) " "$OUT/build.log" | sed 's/^/    /'
  echo
  echo "| step | result | seconds |"; echo "| --- | --- | --- |"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "## targeted checks"; sed -n '/^# checks summary/,$p' "$OUT/checks.log" 2>/dev/null | tail -n +2
  echo
  echo "## pytest"
  "$PY" - "$OUT/pytest.xml" <<'EOF' 2>&1
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception as e:
    print("no junit xml:", e); sys.exit()
suites = [root] if root.tag == "testsuite" else list(root)
tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
print("tests {tests}, failures {failures}, errors {errors}, skipped {skipped}".format(**tot))
bad = []
for s in suites:
    for c in s.iter("testcase"):
        for tag in ("failure", "error"):
            e = c.find(tag)
            if e is not None:
                msg = (e.get("message") or "").strip().splitlines()
                bad.append(f"- {tag.upper()} {c.get('classname')}::{c.get('name')}: "
                           + (msg[0][:200] if msg else ""))
print("\n".join(bad[:60]) or "no failures")
EOF
  tail -n 3 "$OUT/pytest.log" 2>/dev/null
  echo
  echo "## compute-sanitizer"
  grep -E "ERROR SUMMARY|==.*(Invalid|Race|Hazard|error)|Device not supported|passed|failed" "$OUT/sanitizer.log" 2>/dev/null | head -20
  echo
  echo "## benchmarks"
  sed -n '/fastme benchmark summary/,$p' "$OUT/bench.log" 2>/dev/null | head -60
} >"$SUMMARY" 2>&1
rm -rf "$WORK"
echo "done in $(elapsed)s; summary: $SUMMARY"
exit $FAILED
