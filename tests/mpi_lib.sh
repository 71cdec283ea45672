# tests/mpi_lib.sh — what the MPI scripts share (test_comm.sh, test_comm_nccl.sh,
# test_parallel.sh). Sourced, not run, after `build`, `me` and `prog` are set and before
# tests/cli_lib.sh (whose `check` and `bin` its functions use):
#   - without mpirun, or with a build made without MPI (make MPI=0 or no mpicc: `make test` says
#     so in IOUPOS_MPI=0, and $build/$prog is missing), the script prints "SKIP: <reason>" and
#     succeeds, unless IOUPOS_REQUIRE_MPI=1 (CI), which makes that a failure;
#   - `timeout` (coreutils) is required: every mpirun is bounded, a hang is a failure;
#   - as root (containers, CI) Open MPI needs OMPI_ALLOW_RUN_AS_ROOT=1 and
#     OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; an ASan build (make test-asan) must not report Open
#     MPI's own allocations that it never frees, so leak detection is off under mpirun;
#   - mpi_run and mpi_all_pass: a test program under mpirun, bounded by `timeout 60`.
# mpirun's flags in the scripts: --oversubscribe (more processes than cores: 3 on a 2-core
# machine) and IOUPOS_MPIRUN_FLAGS (e.g. "--mca btl self,vader" where a container has no network
# interface that Open MPI accepts).

skip_or_fail() { # skip_or_fail REASON: SKIP (exit 0), or a failure with IOUPOS_REQUIRE_MPI=1
  if [ "${IOUPOS_REQUIRE_MPI:-0}" = 1 ]; then
    echo "FAIL: $1 (IOUPOS_REQUIRE_MPI=1: the MPI tests must run)"
    echo "$me: 0 checks passed, 1 failed"
    exit 1
  fi
  echo "SKIP: $1"
  exit 0
}

command -v mpirun >/dev/null 2>&1 ||
  skip_or_fail "no mpirun (Debian: apt-get install openmpi-bin libopenmpi-dev)"
if [ ! -x "$build/$prog" ] || [ "${IOUPOS_MPI:-}" = 0 ]; then
  if [ "${IOUPOS_MPI:-}" = 0 ]; then
    skip_or_fail "built without MPI (make MPI=0, or mpicc not found): no $build/$prog"
  elif ! command -v mpicc >/dev/null 2>&1; then
    skip_or_fail "no mpicc (Debian: apt-get install libopenmpi-dev): no $build/$prog"
  fi
fi
command -v timeout >/dev/null 2>&1 || { echo "FAIL: no 'timeout' command (coreutils)"; exit 1; }

if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"

not_hung() { [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ]; } # timeout's statuses

# mpi_run NAME NP ARGS...: mpirun -np NP $bin ARGS under timeout 60; output in NAME.out, status
# in rc, seconds in el
mpi_run() {
  name=$1; np=$2; shift 2
  t0=$(date +%s)
  # shellcheck disable=SC2086 # IOUPOS_MPIRUN_FLAGS is split into flags on purpose
  timeout -k 5 60 mpirun --oversubscribe ${IOUPOS_MPIRUN_FLAGS:-} -np "$np" "$bin" "$@" \
    >"$name.out" 2>&1
  rc=$?
  el=$(( $(date +%s) - t0 ))
}

# mpi_all_pass NP TAG ARGS...: $bin ARGS on NP processes (output shown) exits 0 without hanging,
# every rank r printed "TAG rank r of NP: N checks passed, 0 failed", and no line says FAIL
mpi_all_pass() {
  np=$1; tag=$2; shift 2
  mpi_run "np$np" "$np" "$@"
  sed 's/^/  /' "np$np.out" | grep -v '^  $'
  check "mpirun -np $np: exits 0 (got $rc)" [ "$rc" -eq 0 ]
  check "mpirun -np $np: no hang (timeout 60 s)" not_hung
  r=0
  while [ $r -lt "$np" ]; do
    check "mpirun -np $np: rank $r passed" \
      grep -q "^$tag rank $r of $np: [0-9]* checks passed, 0 failed" "np$np.out"
    r=$((r + 1))
  done
  check "mpirun -np $np: no FAIL line" sh -c "! grep -q FAIL np$np.out"
  echo "  mpirun -np $np: $el s"
}
