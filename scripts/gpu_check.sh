#!/bin/sh
# scripts/gpu_check.sh — the CUDA backend's checks on a machine with a GPU, prepared as one run:
#   1. the machine: nvidia-smi, nvcc version;
#   2. build: $(BUILD)/test_cuda_ops_gpu with nvcc (make; sm_80, sm_90 + PTX), the ptxas report;
#   3. the op test against the CPU backend (every operation, guards, determinism, tolerances);
#   4. compute-sanitizer on the op cases (IOUPOS_TEST_OPS_ONLY=1: the whole-model steps would take
#      too long under it), when installed: the tools in $SAN_TOOLS (default memcheck racecheck;
#      synccheck and initcheck also work), each under $SAN_LIMIT seconds (default 90).
# Expected duration on an H100 machine: build about 1 min, op test seconds, sanitizers up to
# 3 min.
# Results go to $OUT (default build/gpu_check): one log per step and summary.txt, which also
# ends the script's output. Exits 1 if any step failed, including "no usable GPU" (a SKIP of
# the op test is a failure here: this script is meant for a GPU machine).
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
  if make --no-print-directory BUILD="$BUILD" STB_DIR="$STB_DIR" "$BUILD/test_cuda_ops_gpu" \
      >"$OUT/build.txt" 2>&1; then
    note "build: ok ($BUILD/test_cuda_ops_gpu, stb from $STB_DIR)"
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

note "gpu_check: $([ $failed -eq 0 ] && echo ok || echo FAILED); results in $OUT"
exit $failed
