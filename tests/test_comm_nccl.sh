#!/bin/sh
# tests/test_comm_nccl.sh — section 16b's NCCL table (ioupos_comm_nccl_init) in the host build
# of the CUDA backend, under mpirun: build/test_comm_nccl on 2 and on 3 processes (NCCL's calls
# done over MPI on host memory, tests/cuda_host/nccl_host.h; allreduce_sum's chunk 96 bytes, so
# that the sums go in many rounds). Every rank's sums must be the MPI table's bits (with 3 ranks
# the float sums depend on the order of the additions); allgather, broadcast, barrier, argument
# errors, the device count. The real NCCL on a GPU: scripts/gpu_check.sh.
# Usage: sh tests/test_comm_nccl.sh BUILD_DIR   (run by tests/run.sh)
# Skips and fails as the other MPI scripts (tests/mpi_lib.sh): without mpirun or an MPI build, it
# prints "SKIP: <reason>" and succeeds, unless IOUPOS_REQUIRE_MPI=1 (then a failure).
# IOUPOS_MPIRUN_FLAGS adds flags to mpirun. Prints "FAIL: ..." for each failed check, then
# "test_comm_nccl: N checks passed, M failed"; exits 1 if any check failed. About 2 s.

build=${1:-build}
me=test_comm_nccl
prog=test_comm_nccl

. "$(dirname "$0")/mpi_lib.sh"
. "$(dirname "$0")/cli_lib.sh"

export OMP_NUM_THREADS=1
# the emulated device count is the test's to set (it checks the default of 1)
unset IOUPOS_CUDA_HOST_DEVICES IOUPOS_CUDA_HOST_MEM IOUPOS_CUDA_HOST_ORDER

for np in 2 3; do
  mpi_all_pass "$np" "$me"
done

finish
