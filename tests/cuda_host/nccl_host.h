/* tests/cuda_host/nccl_host.h — NCCL for the host build of ioupos_cuda.cu (IOUPOS_CUDA_HOST with
   IOUPOS_WITH_NCCL): the calls that section 16b's NCCL table makes, with NCCL's signatures,
   done over MPI on the host build's "device" memory (host memory, cuda_host.h), so that the
   NCCL table runs under mpirun on machines without a GPU (tests/test_comm_nccl.sh).

   - Like every call of cuda_host.h a collective is synchronous: it has moved the data when it
     returns, which is what the stream's order promises on a GPU (streams are ignored there).
   - Each buffer must lie inside one cudaMalloc allocation, as NCCL requires device memory:
     host memory from malloc is refused with ncclInvalidArgument (NCCL checks its pointers).
   - ncclGetUniqueId writes an id that is unique to the call (process id, time, a counter);
     ncclCommInitRank duplicates MPI_COMM_WORLD, checks that rank and nranks are that
     communicator's and that every rank was given the same id (ncclInvalidUsage otherwise: a
     program that does not share rank 0's id fails here, where real NCCL would hang).
   - Errors: ncclGetErrorString gives NCCL's texts. MPI errors become ncclSystemError.
   Only what ioupos_cuda.cu uses is here. The translation unit must have MPI's headers (mpicc
   -x c++, or mpicxx). */
#ifndef IOUPOS_NCCL_HOST_H
#define IOUPOS_NCCL_HOST_H

#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <limits.h>
#include <mpi.h>
#include <time.h>
#include <unistd.h>

#define NCCL_UNIQUE_ID_BYTES 128
typedef struct { char internal[NCCL_UNIQUE_ID_BYTES]; } ncclUniqueId;
typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7
} ncclResult_t;
typedef enum { ncclUint8 = 1, ncclFloat = 7 } ncclDataType_t;
struct ncclComm {
  MPI_Comm comm;
  int rank, size;
};
typedef struct ncclComm *ncclComm_t;

static inline const char *ncclGetErrorString(ncclResult_t r) {
  switch (r) { /* NCCL 2.28's texts */
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
  }
  return "unknown result code";
}

namespace ioupos_ncclhost {
static size_t type_bytes(ncclDataType_t t) { return t == ncclFloat ? 4 : t == ncclUint8 ? 1 : 0; }
/* count elements of type t at p: inside one device allocation, and within MPI's int counts */
static ncclResult_t check(const void *p, size_t count, ncclDataType_t t, size_t times) {
  size_t b = type_bytes(t);
  if (!b || !p) return ncclInvalidArgument;
  if (count > (size_t)INT_MAX / b / times) return ncclInvalidArgument;
  return ioupos_cuhost::inside(p, count * b * times) ? ncclSuccess : ncclInvalidArgument;
}
} // namespace ioupos_ncclhost

static inline ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
  static unsigned counter = 0;
  struct timespec ts;
  if (!id) return ncclInvalidArgument;
  memset(id, 0, sizeof *id);
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(id->internal, sizeof id->internal, "nccl_host %ld %lld.%09ld %u", (long)getpid(),
           (long long)ts.tv_sec, ts.tv_nsec, ++counter);
  return ncclSuccess;
}

static inline ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id,
                                            int rank) {
  ncclComm_t c;
  int r = -1, n = -1, same = 1, all_same = 0;
  ncclUniqueId id0;
  if (!comm) return ncclInvalidArgument;
  *comm = NULL;
  c = (ncclComm_t)calloc(1, sizeof *c);
  if (!c) return ncclSystemError;
  if (MPI_Comm_dup(MPI_COMM_WORLD, &c->comm) != MPI_SUCCESS) {
    free(c);
    return ncclSystemError;
  }
  MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(c->comm, &r);
  MPI_Comm_size(c->comm, &n);
  /* rank 0's id against everyone's (all ranks take part, whatever they were given) */
  memcpy(&id0, &id, sizeof id);
  int err = MPI_Bcast(&id0, (int)sizeof id0, MPI_BYTE, 0, c->comm);
  if (err == MPI_SUCCESS) {
    same = memcmp(&id0, &id, sizeof id) == 0;
    err = MPI_Allreduce(&same, &all_same, 1, MPI_INT, MPI_LAND, c->comm);
  }
  if (err != MPI_SUCCESS) {
    MPI_Comm_free(&c->comm);
    free(c);
    return ncclSystemError;
  }
  if (r != rank || n != nranks || !all_same) {
    MPI_Comm_free(&c->comm);
    free(c);
    return r != rank || n != nranks ? ncclInvalidArgument : ncclInvalidUsage;
  }
  c->rank = r, c->size = n;
  *comm = c;
  return ncclSuccess;
}

static inline ncclResult_t ncclAllGather(const void *send, void *recv, size_t count,
                                         ncclDataType_t t, ncclComm_t comm, cudaStream_t s) {
  ncclResult_t e;
  (void)s;
  if (!comm) return ncclInvalidArgument;
  if ((e = ioupos_ncclhost::check(send, count, t, 1)) != ncclSuccess ||
      (e = ioupos_ncclhost::check(recv, count, t, (size_t)comm->size)) != ncclSuccess)
    return e;
  int b = (int)(count * ioupos_ncclhost::type_bytes(t));
  /* in place when send is recv's own block, as NCCL allows */
  const void *src = (const char *)send == (char *)recv + (size_t)comm->rank * (size_t)b
                        ? MPI_IN_PLACE : send;
  return MPI_Allgather(src, b, MPI_BYTE, recv, b, MPI_BYTE, comm->comm) == MPI_SUCCESS
             ? ncclSuccess : ncclSystemError;
}

static inline ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count,
                                         ncclDataType_t t, int root, ncclComm_t comm,
                                         cudaStream_t s) {
  ncclResult_t e;
  (void)s;
  if (!comm || root < 0 || root >= comm->size) return ncclInvalidArgument;
  if ((e = ioupos_ncclhost::check(recv, count, t, 1)) != ncclSuccess) return e;
  if (comm->rank == root) {
    if ((e = ioupos_ncclhost::check(send, count, t, 1)) != ncclSuccess) return e;
    if (send != recv) memmove(recv, send, count * ioupos_ncclhost::type_bytes(t));
  }
  return MPI_Bcast(recv, (int)(count * ioupos_ncclhost::type_bytes(t)), MPI_BYTE, root,
                   comm->comm) == MPI_SUCCESS ? ncclSuccess : ncclSystemError;
}

static inline ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async) {
  if (!comm || !async) return ncclInvalidArgument;
  *async = ncclSuccess; /* every call is synchronous: its error was returned */
  return ncclSuccess;
}

static inline ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  return comm ? ncclSuccess : ncclInvalidArgument;
}

static inline ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm) return ncclInvalidArgument;
  MPI_Comm_free(&comm->comm);
  free(comm);
  return ncclSuccess;
}

#endif
