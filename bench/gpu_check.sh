#!/usr/bin/env bash
# One-shot GPU validation of fastme on an H100/H200 (sm_90) device machine (docs/ops.md,
# "The GPU check"). Run once, on a bare machine (torch 2.11+cu130, Triton 3.6, pybind11, cmake,
# ninja, nvcc; no network):
#     bash bench/gpu_check.sh          # results in $OUT (default ./gpu_check_out)
# It builds the extension, then runs the targeted checks (tests/gpu) next to the kernel test
# suite, compute-sanitizer on a subset and a short benchmark.
# Everything is time-boxed; the whole run stays under GPU_CHECK_BUDGET seconds (default 470).
# Without a visible CUDA device it is a dry run that checks every command: the build (done by the
# install) and every GPU step are skipped and recorded as such, the targeted checks and the
# gpu-marked tests are collected (they skip) and one CPU benchmark case runs. A step that errors
# fails the run. At most 8 files are written to $OUT:
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
    ROWS+=("| $name | skipped (no time left) | 0 |")
    echo "== $name: skipped (no time left)" >>"$log"; return 99
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
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available())
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
"$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null && HAVE_GPU=1
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

# ---- 2. targeted checks (tests/gpu: races, 64-bit indexing, alignment, streams, big batch) ----
# On a GPU they run in the background, next to the test suite (16 cores; both are mostly Triton
# compiles); a check that would start after FASTME_GPU_CHECK_SECONDS skips. Dry run: they skip.
CHECKS=("$PY" -m pytest -v -rA -p no:cacheprovider --durations=0 tests/gpu)
CHECKS_PID=
if (( SMOKE_OK && HAVE_GPU )); then
  CHECKS_LIMIT=$(cap 220 170)
  export FASTME_GPU_CHECK_SECONDS=$(( CHECKS_LIMIT - 30 ))
  ( step "targeted checks (tests/gpu, parallel to pytest)" "$CHECKS_LIMIT" "$OUT/checks.log" \
      "${CHECKS[@]}"; echo "$? ${ROWS[-1]}" >"$WORK/checks.row" ) &
  CHECKS_PID=$!
elif (( HAVE_GPU )); then
  echo "targeted checks not run: the build or the smoke test failed" >"$OUT/checks.log"
  ROWS+=("| targeted checks | not run (no build) | 0 |")
else
  step "targeted checks (dry run: tests/gpu skip)" 60 "$OUT/checks.log" "${CHECKS[@]}" || FAILED=1
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
  read -r crc row <"$WORK/checks.row" 2>/dev/null || { crc=?; row="| targeted checks | ? | |"; }
  ROWS+=("$row")
  [ "$crc" = 0 ] || FAILED=1
fi

# ---- 4. compute-sanitizer on a small subset -----------------------------------------------------
SAN=$(command -v compute-sanitizer || true)
if [ -n "$SAN" ] && (( SMOKE_OK && HAVE_GPU )); then
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1  # so that out-of-bounds accesses leave the allocation
  SLOG=$OUT/sanitizer.log
  KTESTS="tests/test_embedding_lookup.py tests/test_pooling.py tests/test_cross_network.py"
  step "memcheck: cuda backend (float64 lookup/pooling/cross, wild indices)" "$(cap 55 120)" \
    "$SLOG" \
    "$SAN" --tool memcheck --print-limit 20 "$PY" -m pytest -q -p no:cacheprovider $KTESTS \
    -k "cuda and (match_reference_float64 or out_of_range or bounds_check_modes)"
  step "memcheck: triton backend (float64 lookup/pooling/cross, wild indices)" "$(cap 40 100)" \
    "$SLOG" \
    "$SAN" --tool memcheck --print-limit 20 "$PY" -m pytest -q -p no:cacheprovider $KTESTS \
    -k "triton and (match_reference_float64 or out_of_range or bounds_check_modes)"
  step "racecheck: cuda fwfm + cross GEMMs (shared memory)" "$(cap 35 80)" "$SLOG" \
    "$SAN" --tool racecheck --print-limit 20 "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_pooling.py tests/test_cross_network.py \
    -k "cuda and (match_reference_float64 and (fwfm or cross) or tf32)"
  unset PYTORCH_NO_CUDA_MEMORY_CACHING
else
  echo "compute-sanitizer not run: found='$SAN', build/smoke ok=$SMOKE_OK, GPU=$HAVE_GPU" \
    >"$OUT/sanitizer.log"
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
[ -s "$OUT/bench.json" ] &&
  "$PY" bench/render_results.py "$OUT/bench.json" -o - >>"$OUT/bench.log" 2>&1

# ---- summary -----------------------------------------------------------------------------------
{
  echo "# fastme GPU check — $(date -u '+%F %T') UTC, $(elapsed)s of ${BUDGET}s"
  echo
  grep -E "^(device|torch|triton|python) " "$OUT/build.log" | sed 's/^/    /'
  echo
  echo "| step | result | seconds |"; echo "| --- | --- | --- |"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "## targeted checks"; sed -n '/short test summary info/,$p' "$OUT/checks.log" | tail -n +2
  echo
  echo "## pytest"
  grep -E "^(FAILED|ERROR) " "$OUT/pytest.log" | cut -c1-240 | head -60
  tail -n 3 "$OUT/pytest.log" 2>/dev/null
  echo
  echo "## compute-sanitizer"
  grep -E "ERROR SUMMARY|==.*(Invalid|Race|Hazard|error)|Device not supported|passed|failed" \
    "$OUT/sanitizer.log" 2>/dev/null | head -20
  echo
  echo "## benchmarks"
  sed -n '/fastme benchmark summary/,$p' "$OUT/bench.log" 2>/dev/null | head -60
} >"$SUMMARY" 2>&1
rm -rf "$WORK"
echo "done in $(elapsed)s; summary: $SUMMARY"
exit $FAILED
