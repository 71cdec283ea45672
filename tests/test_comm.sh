#!/bin/sh
# tests/test_comm.sh — section 16b's MPI table under mpirun: build/test_comm_mpi --mpi on 2 and
# on 3 processes (with 3 the float sums depend on the order of the additions: every rank must
# hold the rank-order sum, bit for bit), and a job whose rank 1 exits with status 3 while rank 0
# waits in a collective: mpirun must end it, non-zero, with a message, within 60 s.
# Usage: sh tests/test_comm.sh BUILD_DIR   (run by tests/run.sh)
# Without mpirun, or with a build made without MPI (make MPI=0, no mpicc: `make test` says so in
# IOUPOS_MPI=0), it prints "SKIP: <reason>" and succeeds, unless IOUPOS_REQUIRE_MPI=1 (CI), which
# makes that a failure. Prints "FAIL: ..." for each failed check, then
# "test_comm: N checks passed, M failed"; exits 1 if any check failed. About 3 s.
#
# mpirun's flags: --oversubscribe (more processes than cores: 3 on a 2-core machine is allowed),
# and as root (containers, CI) OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1, without
# which Open MPI refuses to start. `timeout 60` bounds every run: a hang is a failure, not a stuck
# test. IOUPOS_MPIRUN_FLAGS adds flags (e.g. "--mca btl self,vader" where a container has no
# network interfaces that Open MPI accepts).

build=${1:-build}
me=test_comm
prog=test_comm_mpi

skip_or_fail() { # skip_or_fail REASON: SKIP (exit 0), or a failure with IOUPOS_REQUIRE_MPI=1
  if [ "${IOUPOS_REQUIRE_MPI:-0}" = 1 ]; then
    echo "FAIL: $1 (IOUPOS_REQUIRE_MPI=1: the MPI test must run)"
    echo "$me: 0 checks passed, 1 failed"
    exit 1
  fi
  echo "SKIP: $1"
  exit 0
}

command -v mpirun >/dev/null 2>&1 ||
  skip_or_fail "no mpirun (Debian: apt-get install openmpi-bin libopenmpi-dev)"
if [ ! -x "$build/$prog" ]; then
  if [ "${IOUPOS_MPI:-}" = 0 ]; then
    skip_or_fail "built without MPI (make MPI=0, or mpicc not found): no $build/$prog"
  elif ! command -v mpicc >/dev/null 2>&1; then
    skip_or_fail "no mpicc (Debian: apt-get install libopenmpi-dev): no $build/$prog"
  fi
fi
command -v timeout >/dev/null 2>&1 || { echo "FAIL: no 'timeout' command (coreutils)"; exit 1; }
# the checks, bin (the program's absolute path; a missing one fails here) and a temporary folder
. "$(dirname "$0")/cli_lib.sh"

not_hung() { [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ]; } # timeout's statuses

if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# An ASan build (make test-asan): Open MPI's own allocations that it never frees are not ours.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
# One thread per rank (the test has no OpenMP work), and no spinning for a descheduled rank.
export OMP_NUM_THREADS=1

# mpi_run NAME NP ARGS...: mpirun -np NP PROG ARGS under timeout 60; output in NAME.out,
# status in rc
mpi_run() {
  name=$1; np=$2; shift 2
  # shellcheck disable=SC2086 # IOUPOS_MPIRUN_FLAGS is split into flags on purpose
  timeout -k 5 60 mpirun --oversubscribe ${IOUPOS_MPIRUN_FLAGS:-} -np "$np" "$bin" "$@" \
    >"$name.out" 2>&1
  rc=$?
}

for np in 2 3; do
  t0=$(date +%s)
  mpi_run np$np "$np" --mpi
  el=$(( $(date +%s) - t0 ))
  sed 's/^/  /' np$np.out | grep -v '^  $'
  check "mpirun -np $np: exits 0 (got $rc)" [ "$rc" -eq 0 ]
  check "mpirun -np $np: no hang (timeout 60 s)" not_hung
  r=0
  while [ $r -lt "$np" ]; do
    check "mpirun -np $np: rank $r passed" \
      grep -q "^test_comm rank $r of $np: [0-9]* checks passed, 0 failed" np$np.out
    r=$((r + 1))
  done
  check "mpirun -np $np: no FAIL line" sh -c "! grep -q FAIL np$np.out"
  echo "  mpirun -np $np: $el s"
done

# A rank that dies: rank 1 exits 3 after the first all-reduce, rank 0 is in the next one.
t0=$(date +%s)
mpi_run die 2 --mpi --die
el=$(( $(date +%s) - t0 ))
check "rank 1 dies: mpirun exits non-zero (got $rc)" [ "$rc" -ne 0 ]
check "rank 1 dies: mpirun ends the job, no hang (status $rc, $el s; timeout 60 s)" not_hung
check "rank 1 dies: rank 1 exited as told" \
  grep -q "test_comm rank 1: exits with status 3" die.out
check "rank 1 dies: mpirun says why (got: $(cat die.out))" \
  grep -qi "exit code: *3\|non-zero status\|exited on signal\|aborted" die.out
check "rank 1 dies: rank 0 did not go on" sh -c "! grep -q 'test_comm rank 0 of 2' die.out"
echo "  rank 1 dies: mpirun ended the job in $el s with status $rc"

finish
