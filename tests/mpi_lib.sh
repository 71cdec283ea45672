# tests/mpi_lib.sh — what the MPI scripts share (test_comm.sh, test_comm_nccl.sh,
# test_parallel.sh). Sourced, not run, after `build`, `me` and `prog` are set and before
# tests/cli_lib.sh:
#   - without mpirun, or with a build made without MPI (make MPI=0 or no mpicc: `make test` says
#     so in IOUPOS_MPI=0, and $build/$prog is missing), the script prints "SKIP: <reason>" and
#     succeeds, unless IOUPOS_REQUIRE_MPI=1 (CI), which makes that a failure;
#   - `timeout` (coreutils) is required: every mpirun is bounded, a hang is a failure;
#   - as root (containers, CI) Open MPI needs OMPI_ALLOW_RUN_AS_ROOT=1 and
#     OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; an ASan build (make test-asan) must not report Open
#     MPI's own allocations that it never frees, so leak detection is off under mpirun.
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
