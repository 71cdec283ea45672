#!/bin/sh
# scripts/gpu_check.sh — the CUDA backend's checks on a machine with a GPU, prepared as one run:
#   1. the machine: nvidia-smi, nvcc version;
#   2. build: $(BUILD)/test_cuda_ops_gpu with nvcc (make; sm_80, sm_90 + PTX), the ptxas report;
#   3. the op test against the CPU backend (every operation, guards, determinism, tolerances);
#   3a. cuBLAS opened when the backend starts, not at the program's start ($(BUILD)/test_cublas_load);
#   3b. the NCCL table (section 16b): $(BUILD)/test_comm_nccl_gpu under `mpirun -np 1` (needs
#      mpicc, mpirun, and make's "with NCCL"; otherwise "skipped" with the reason);
#   4. compute-sanitizer on the op cases (IOUPOS_TEST_OPS_ONLY=1: the whole-model steps would take
#      too long under it), when installed: the tools in $SAN_TOOLS (default memcheck racecheck;
#      synccheck and initcheck also work), each under $SAN_LIMIT seconds (default 90);
#   5. the GPU benchmark, `make bench-cuda` (built in step 2): the SimSiam step at C 48, batch
#      128, 96 x 96; the fine-tuning step (batch 64) and the sliding-window inference of a case;
#      each beside PyTorch + MONAI doing the same on this GPU (bench/bench_torch.py --device
#      cuda), with the ratios and the device memory. Its time limit is what is left of
#      $TOTAL_LIMIT seconds (default 480: the whole script within 8 minutes) when it starts,
#      less 15 s, or $BENCH_LIMIT if smaller; reaching it is reported (the figures printed so far
#      are kept), not a failure. A failing step of ours is a failure; a missing baseline is not.
# Expected duration on an H100 machine: build about 1 min, op test seconds, sanitizers up to
# 3 min, the benchmark the rest.
# Results go to $OUT (default build/gpu_check): one log per step (bench_cuda.txt: the
# benchmark's whole output) and summary.txt (with the benchmark's tables), which also ends the
# script's output. Exits 1 if any step failed, including "no usable GPU" (a SKIP of the op test
# is a failure here: this script is meant for a GPU machine).
# The baseline: .venv/bin/python when it exists, else $IOUPOS_BENCH_PYTHON, else python3 (a GPU
# machine's own PyTorch). It needs torch and MONAI (and einops, which MONAI's Swin needs);
# lightly is optional (bench_torch.py writes its two heads in plain torch). A machine without
# network gets MONAI as a wheel brought along: before the run, on a machine with network,
#     pip download monai==1.6.1 einops --no-deps -d .carry/wheels
# (.carry/ is ignored by git: name it in the device tool's `carry`, or copy it over); this
# script unpacks every $WHEELS/*.whl (default .carry/wheels; pure-Python wheels) into
# $BUILD/wheels and puts that on PYTHONPATH. Without torch or MONAI the benchmark prints our
# figures alone and says why.
# Usage: OUT=/some/dir sh scripts/gpu_check.sh      (from the repository root)
# The GPU machine may have no network and no stb headers (Debian's libstb-dev): the build then
# uses $STB_DIR, else build/stb (copy /usr/include/stb there beforehand and bring it along).
# Without nvcc on that machine, a $BUILD/test_cuda_ops_gpu built elsewhere (same CUDA major
# version) is run as it is.
set -u
OUT=${OUT:-build/gpu_check}
BUILD=${BUILD:-build}
SAN_LIMIT=${SAN_LIMIT:-90}
SAN_TOOLS=${SAN_TOOLS:-memcheck racecheck}
TOTAL_LIMIT=${TOTAL_LIMIT:-480}
WHEELS=${WHEELS:-.carry/wheels}
t_start=$(date +%s)
mkdir -p "$OUT" || exit 2
summary="$OUT/summary.txt"
: >"$summary"
failed=0
note() { echo "$1" | tee -a "$summary"; }

# 1. the machine
{ date; uname -a; nvidia-smi 2>&1; command -v nvcc && nvcc --version; } >"$OUT/machine.txt" 2>&1
note "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"

# 2. build (make finds nvcc on PATH or in /usr/local/cuda/bin)
STB_DIR=${STB_DIR:-/usr/include/stb}
[ -f "$STB_DIR/stb_image.h" ] || STB_DIR=$(pwd)/build/stb
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  # the op test and the benchmark's programs in one parallel make (-k: the op test runs even
  # if a benchmark program fails to build; make bench-cuda then says so)
  make -k --no-print-directory BUILD="$BUILD" STB_DIR="$STB_DIR" "$BUILD/test_cuda_ops_gpu" \
    "$BUILD/test_cublas_load" "$BUILD/bench_simsiam_cuda" "$BUILD/bench_finetune_cuda" \
    >"$OUT/build.txt" 2>&1
  if [ -x "$BUILD/test_cuda_ops_gpu" ]; then
    note "build: ok ($BUILD/test_cuda_ops_gpu, stb from $STB_DIR; $(( $(date +%s) - t_start )) s)"
    [ -x "$BUILD/bench_simsiam_cuda" ] && [ -x "$BUILD/bench_finetune_cuda" ] ||
      note "build: the benchmark's programs FAILED to build (see $OUT/build.txt)"
    cp "$BUILD/ioupos_cuda.ptxas.txt" "$OUT/" 2>/dev/null
  else
    note "build: FAILED (see $OUT/build.txt)"
    tail -n 30 "$OUT/build.txt"
    exit 1
  fi
elif [ -x "$BUILD/test_cuda_ops_gpu" ]; then
  note "build: no nvcc here; running the $BUILD/test_cuda_ops_gpu brought along"
else
  note "build: FAILED: no nvcc and no $BUILD/test_cuda_ops_gpu"
  exit 1
fi

# 3. the op test
t0=$(date +%s)
"$BUILD/test_cuda_ops_gpu" >"$OUT/test_cuda_ops.txt" 2>&1
rc=$?
secs=$(( $(date +%s) - t0 ))
if grep -q "SKIP" "$OUT/test_cuda_ops.txt"; then
  note "op test: FAILED: $(grep SKIP "$OUT/test_cuda_ops.txt")"
  failed=1
elif [ $rc -ne 0 ]; then
  note "op test: FAILED (exit $rc, ${secs} s): $(tail -n 1 "$OUT/test_cuda_ops.txt")"
  grep "^FAIL" "$OUT/test_cuda_ops.txt" | head -n 20 | tee -a "$summary"
  failed=1
else
  note "op test: ok (${secs} s): $(tail -n 1 "$OUT/test_cuda_ops.txt")"
fi
cases=$(grep "cases:" "$OUT/test_cuda_ops.txt")
[ -n "$cases" ] && note "$cases"

# 3a. cuBLAS is opened when the backend starts on this GPU, not when the program starts
if [ -x "$BUILD/test_cublas_load" ]; then
  if "$BUILD/test_cublas_load" >"$OUT/test_cublas_load.txt" 2>&1; then
    note "cublas load: ok: $(tail -n 1 "$OUT/test_cublas_load.txt")"
  else
    note "cublas load: FAILED (see $OUT/test_cublas_load.txt)"
    grep "^FAIL" "$OUT/test_cublas_load.txt" | head -n 10 | tee -a "$summary"
    failed=1
  fi
elif command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  note "cublas load: FAILED: $BUILD/test_cublas_load was not built (see $OUT/build.txt)"
  failed=1
else
  note "cublas load: skipped (no nvcc here and no $BUILD/test_cublas_load brought along)"
fi

# 3b. the NCCL table on this GPU: one rank (NCCL's all-gather, the rank-order sum kernel,
# broadcast, barrier and the errors; the sums' bits against the MPI table's)
if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1; then
  note "nccl: skipped (no mpirun or no mpicc here)"
elif ! make -n --no-print-directory BUILD="$BUILD" all 2>/dev/null | grep -q "with NCCL"; then
  note "nccl: skipped ($(make -n --no-print-directory BUILD="$BUILD" all 2>/dev/null |
    grep -o 'without NCCL[^"]*' | head -n 1))"
elif ! make --no-print-directory BUILD="$BUILD" STB_DIR="$STB_DIR" "$BUILD/test_comm_nccl_gpu" \
    >"$OUT/nccl_build.txt" 2>&1; then
  note "nccl: build FAILED (see $OUT/nccl_build.txt)"
  failed=1
else
  [ "$(id -u)" = 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  t0=$(date +%s)
  timeout -k 5 60 mpirun -np 1 "$BUILD/test_comm_nccl_gpu" >"$OUT/test_comm_nccl.txt" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && grep -q "rank 0 of 1: [0-9]* checks passed, 0 failed" "$OUT/test_comm_nccl.txt"; then
    note "nccl: ok ($(( $(date +%s) - t0 )) s): $(grep 'checks passed' "$OUT/test_comm_nccl.txt")"
  else
    note "nccl: FAILED (exit $rc; see $OUT/test_comm_nccl.txt)"
    grep "^FAIL" "$OUT/test_comm_nccl.txt" | head -n 10 | tee -a "$summary"
    failed=1
  fi
fi

# 4. compute-sanitizer
SAN=$(command -v compute-sanitizer 2>/dev/null || { [ -x /usr/local/cuda/bin/compute-sanitizer ] &&
  echo /usr/local/cuda/bin/compute-sanitizer; })
if [ -z "$SAN" ]; then
  note "compute-sanitizer: not installed (skipped)"
else
  for tool in $SAN_TOOLS; do
    t0=$(date +%s)
    IOUPOS_TEST_OPS_ONLY=1 timeout "$SAN_LIMIT" "$SAN" --tool "$tool" --error-exitcode 3 \
      "$BUILD/test_cuda_ops_gpu" >"$OUT/sanitizer_$tool.txt" 2>&1
    rc=$?
    secs=$(( $(date +%s) - t0 ))
    case $rc in
      0) note "compute-sanitizer $tool: ok (${secs} s)" ;;
      124) note "compute-sanitizer $tool: time limit ${SAN_LIMIT} s reached (not a verdict)" ;;
      *) note "compute-sanitizer $tool: FAILED (exit $rc, ${secs} s; see $OUT/sanitizer_$tool.txt)"
         grep -m 5 "=========" "$OUT/sanitizer_$tool.txt" | tee -a "$summary"
         failed=1 ;;
    esac
  done
fi

# 5. the GPU benchmark
left=$(( TOTAL_LIMIT - ($(date +%s) - t_start) - 15 ))
limit=${BENCH_LIMIT:-$left}
[ "$limit" -gt "$left" ] && limit=$left
if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  note "bench-cuda: not run (no nvcc here: make bench-cuda builds with it)"
elif [ "$limit" -lt 60 ]; then
  note "bench-cuda: not run (${limit} s left of TOTAL_LIMIT ${TOTAL_LIMIT} s)"
else
  # the baseline's Python, and MONAI / einops from the wheels brought along
  if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    mkdir -p "$BUILD/wheels"
    for w in "$WHEELS"/*.whl; do
      python3 -m zipfile -e "$w" "$BUILD/wheels" >/dev/null 2>&1 || note "wheels: cannot unpack $w"
    done
    PYTHONPATH="$(pwd)/$BUILD/wheels${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONPATH
    note "wheels: $(ls "$WHEELS" | tr '\n' ' ')unpacked into $BUILD/wheels (on PYTHONPATH)"
  fi
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=${IOUPOS_BENCH_PYTHON:-python3}; fi
  IOUPOS_BENCH_PYTHON=$py
  export IOUPOS_BENCH_PYTHON
  base=$("$py" -c 'import sys
try:
    import torch
except ImportError as e:
    print("no torch (%s)" % e); sys.exit(0)
s = "torch %s (CUDA %s, device %s)" % (torch.__version__, torch.version.cuda,
    torch.cuda.is_available())
for m in ("monai", "einops", "lightly"):
    try:
        s += ", %s %s" % (m, getattr(__import__(m), "__version__", "?"))
    except ImportError:
        s += ", no %s" % m + (" (plain torch heads)" if m == "lightly" else "")
print(s)' 2>&1 | tail -n 1)
  note "bench-cuda baseline: $py: $base"
  t0=$(date +%s)
  timeout -k 10 "$limit" make --no-print-directory BUILD="$BUILD" STB_DIR="$STB_DIR" bench-cuda \
    >"$OUT/bench_cuda.txt" 2>&1
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  if grep -q "^bench-cuda: SKIP" "$OUT/bench_cuda.txt"; then
    note "bench-cuda: FAILED: $(grep "^bench-cuda: SKIP" "$OUT/bench_cuda.txt")"
    failed=1
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    note "bench-cuda: time limit ${limit} s reached (not a verdict; the figures so far are in $OUT/bench_cuda.txt)"
  elif [ $rc -ne 0 ]; then
    note "bench-cuda: FAILED (exit $rc, ${secs} s; see $OUT/bench_cuda.txt)"
    grep -E "FAILED|error" "$OUT/bench_cuda.txt" | head -n 10 | tee -a "$summary"
    failed=1
  else
    note "bench-cuda: ok (${secs} s, limit ${limit} s)"
  fi
  # the figures: the device, what was skipped and why, each program's table
  grep -E "^bench-cuda: cuda|baseline skipped|ours FAILED|^\| |^config |^train: |^infer: " \
    "$OUT/bench_cuda.txt" | tee -a "$summary"
fi

note "gpu_check: $([ $failed -eq 0 ] && echo ok || echo FAILED); results in $OUT (total $(( $(date +%s) - t_start )) s)"
exit $failed
