#!/bin/sh
# tests/test_comm.sh — section 16b's MPI table under mpirun: build/test_comm_mpi --mpi on 2 and
# on 3 processes (with 3 the float sums depend on the order of the additions: every rank must
# hold the rank-order sum, bit for bit), and a job whose rank 1 exits with status 3 while rank 0
# waits in a collective: mpirun must end it, non-zero, with a message, within 60 s.
# Usage: sh tests/test_comm.sh BUILD_DIR   (run by tests/run.sh)
# Without mpirun or an MPI build it prints "SKIP: <reason>" (tests/mpi_lib.sh: the skip rules,
# mpirun's flags, root). Prints "FAIL: ..." for each failed check, then
# "test_comm: N checks passed, M failed"; exits 1 if any check failed. About 3 s. `timeout 60`
# bounds every run: a hang is a failure, not a stuck test.

build=${1:-build}
me=test_comm
prog=test_comm_mpi

. "$(dirname "$0")/mpi_lib.sh"
. "$(dirname "$0")/cli_lib.sh"

# One thread per rank (the test has no OpenMP work), and no spinning for a descheduled rank.
export OMP_NUM_THREADS=1

for np in 2 3; do
  mpi_all_pass "$np" test_comm --mpi
done

# A rank that dies: rank 1 exits 3 after the first all-reduce, rank 0 is in the next one.
mpi_run die 2 --mpi --die
check "rank 1 dies: mpirun exits non-zero (got $rc)" [ "$rc" -ne 0 ]
check "rank 1 dies: mpirun ends the job, no hang (status $rc, $el s; timeout 60 s)" not_hung
check "rank 1 dies: rank 1 exited as told" \
  grep -q "test_comm rank 1: exits with status 3" die.out
check "rank 1 dies: mpirun says why (got: $(cat die.out))" \
  grep -qi "exit code: *3\|non-zero status\|exited on signal\|aborted" die.out
check "rank 1 dies: rank 0 did not go on" sh -c "! grep -q 'test_comm rank 0 of 2' die.out"
echo "  rank 1 dies: mpirun ended the job in $el s with status $rc"

finish
