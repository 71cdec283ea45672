/* tests/test_comm_nccl.c — section 16b's NCCL table (ioupos_comm_nccl_init, ioupos_cuda.cu) under
   mpirun, against the MPI table on the same data. Built twice:
     build/test_comm_nccl      the host build of the CUDA backend with NCCL's calls done over MPI
                               on host memory (tests/cuda_host/nccl_host.h) and allreduce_sum's
                               chunk at 96 bytes (many rounds); tests/test_comm_nccl.sh runs it
                               on 2 and 3 processes
     build/test_comm_nccl_gpu  the nvcc object with the real NCCL (scripts/gpu_check.sh, one
                               process per GPU)
   On every rank: the device count (ioupos_cuda_device_count; in the host build also its
   IOUPOS_CUDA_HOST_DEVICES answers, and the "more local ranks than GPUs" numbers a program
   checks), init's argument errors, ioupos_backend_cuda(0) then the table; allreduce_sum on device
   buffers must give the bits of the MPI table's allreduce_sum on the same host values (with 3
   ranks the float sums depend on the order), every rank the same, nothing written past n, for
   n = 0, 1, several chunks; allgather and broadcast from each root against the MPI table;
   barrier; NULL arguments; the table's finalize. Each rank prints
   "test_comm_nccl rank R of N: N checks passed, N failed" and exits 1 on a failure. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ioupos.h"
#include "test_util.h"
#include "comm_util.h"

static const ioupos_comm *mpi; /* the MPI table: the reference, and the hashes' broadcasts */
static const ioupos_backend *be;

#define GUARD 5 /* floats after each device buffer that no collective may write */
static const float guard_val = -12345.5f;

/* n floats of device memory followed by GUARD guard floats, holding host[0..n) */
static float *dev_with(const float *host, size_t n) {
  float *d = (float *)be->alloc((n + GUARD) * sizeof(float));
  float g[GUARD];
  int k;
  if (!d) return NULL;
  for (k = 0; k < GUARD; ++k) g[k] = guard_val;
  if (n) be->upload(d, host, n * sizeof(float));
  be->upload(d + n, g, sizeof g);
  return d;
}
static int guards_ok(const float *d, size_t n) {
  float g[GUARD];
  int k;
  be->download(g, d + n, sizeof g);
  for (k = 0; k < GUARD; ++k)
    if (bits(g[k]) != bits(guard_val)) return 0;
  return 1;
}

static void test_allreduce(const ioupos_comm *c, size_t n) {
  float *want = (float *)calloc(n + 1, sizeof(float));
  float *got = (float *)calloc(n + 1, sizeof(float));
  float *d;
  size_t i, bad = 0, first = 0;
  int rc;
  if (!want || !got) {
    CHECK(0, "out of memory");
    free(want), free(got);
    return;
  }
  for (i = 0; i < n; ++i) want[i] = got[i] = value(c->rank, c->size, i);
  d = dev_with(got, n);
  CHECK(d != NULL, "alloc of %zu floats: %s", n, ioupos_failure_reason());
  if (!d) {
    free(want), free(got);
    return;
  }
  rc = mpi->allreduce_sum(mpi, n ? want : NULL, n);
  CHECK(rc == 0, "the MPI table's allreduce_sum n %zu: %d %s", n, rc, ioupos_failure_reason());
  rc = c->allreduce_sum(c, d, n);
  CHECK(rc == 0, "allreduce_sum n %zu: %d %s", n, rc, ioupos_failure_reason());
  memset(got, 0, (n + 1) * sizeof(float));
  if (n) be->download(got, d, n * sizeof(float));
  for (i = 0; i < n; ++i)
    if (bits(got[i]) != bits(want[i]) && bad++ == 0) first = i;
  CHECK(bad == 0,
        "n %zu: %zu sums differ from the MPI table's, first [%zu]: %.9g (0x%08x), want %.9g "
        "(0x%08x)",
        n, bad, first, bad ? got[first] : 0.0, bad ? bits(got[first]) : 0u,
        bad ? want[first] : 0.0, bad ? bits(want[first]) : 0u);
  CHECK(guards_ok(d, n), "n %zu: allreduce_sum wrote past the buffer", n);
  CHECK(same_everywhere(mpi, fnv(got, n * sizeof(float))), "n %zu: the ranks' sums differ", n);
  be->release(d);
  free(want);
  free(got);
}

static void test_allgather(const ioupos_comm *c, size_t n) {
  size_t tot = n * (size_t)c->size, i;
  float *send = (float *)malloc((n + 1) * sizeof(float));
  float *want = (float *)malloc((tot + 1) * sizeof(float));
  float *got = (float *)malloc((tot + 1) * sizeof(float));
  float *ds, *dr;
  int rc;
  if (!send || !want || !got) {
    CHECK(0, "out of memory");
    free(send), free(want), free(got);
    return;
  }
  for (i = 0; i < n; ++i) send[i] = value(c->rank, c->size, i) + (float)c->rank * 0.25f;
  for (i = 0; i < tot; ++i) got[i] = 7.0f;
  ds = dev_with(send, n);
  dr = dev_with(got, tot);
  CHECK(ds && dr, "alloc: %s", ioupos_failure_reason());
  if (ds && dr) {
    rc = mpi->allgather(mpi, send, n, want);
    CHECK(rc == 0, "the MPI table's allgather n %zu: %d %s", n, rc, ioupos_failure_reason());
    rc = c->allgather(c, ds, n, dr);
    CHECK(rc == 0, "allgather n %zu: %d %s", n, rc, ioupos_failure_reason());
    if (tot) be->download(got, dr, tot * sizeof(float));
    CHECK(tot == 0 || memcmp(got, want, tot * sizeof(float)) == 0,
          "allgather n %zu: not the MPI table's result", n);
    CHECK(guards_ok(dr, tot), "allgather n %zu: wrote past recv", n);
  }
  if (ds) be->release(ds);
  if (dr) be->release(dr);
  free(send), free(want), free(got);
}

static void test_broadcast(const ioupos_comm *c) {
  unsigned char msg[1001];
  unsigned char *d = (unsigned char *)be->alloc(sizeof msg + 8), tail[8];
  size_t i;
  int root, rc;
  CHECK(d != NULL, "alloc: %s", ioupos_failure_reason());
  if (!d) return;
  memset(tail, 0xEE, sizeof tail);
  be->upload(d + sizeof msg, tail, sizeof tail);
  for (root = 0; root < c->size; ++root) {
    for (i = 0; i < sizeof msg; ++i) msg[i] = (unsigned char)(i * 7 + (size_t)c->rank * 31 + 1);
    be->upload(d, msg, sizeof msg);
    memset(msg, 0, sizeof msg);
    rc = c->broadcast(c, d, sizeof msg, root);
    CHECK(rc == 0, "broadcast from %d: %d %s", root, rc, ioupos_failure_reason());
    be->download(msg, d, sizeof msg);
    for (i = 0; i < sizeof msg; ++i)
      if (msg[i] != (unsigned char)(i * 7 + (size_t)root * 31 + 1)) break;
    CHECK(i == sizeof msg, "broadcast from %d: byte %zu is %u on rank %d", root, i,
          i < sizeof msg ? msg[i] : 0u, c->rank);
  }
  be->download(tail, d + sizeof msg, sizeof tail);
  for (i = 0; i < sizeof tail; ++i)
    if (tail[i] != 0xEE) break;
  CHECK(i == sizeof tail, "broadcast wrote past the buffer");
  rc = c->broadcast(c, NULL, 0, c->size - 1);
  CHECK(rc == 0, "broadcast of 0 bytes: %d %s", rc, ioupos_failure_reason());
  be->release(d);
}

/* argument errors, found before anything is sent: every rank fails alike and none waits */
static void test_errors(const ioupos_comm *c) {
  float host[4] = {1, 2, 3, 4}, *d = (float *)be->alloc(4 * sizeof(float));
  int rc;
  rc = c->allreduce_sum(c, NULL, 3);
  CHECK(rc == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "allreduce_sum (nccl)"),
        "allreduce_sum NULL: %d '%s'", rc, ioupos_failure_reason());
  rc = c->allgather(c, d, 2, NULL);
  CHECK(rc == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "allgather (nccl)"),
        "allgather NULL: %d '%s'", rc, ioupos_failure_reason());
  rc = c->broadcast(c, NULL, 4, 0);
  CHECK(rc == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "broadcast (nccl)"),
        "broadcast NULL: %d '%s'", rc, ioupos_failure_reason());
  rc = c->broadcast(c, d, 4, c->size);
  CHECK(rc == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "broadcast (nccl): root is"),
        "broadcast root %d: %d '%s'", c->size, rc, ioupos_failure_reason());
  rc = c->broadcast(c, d, 4, -1);
  CHECK(rc == IOUPOS_EINVAL, "broadcast root -1: %d '%s'", rc, ioupos_failure_reason());
#ifndef IOUPOS_TEST_CUDA_GPU
  /* host memory where device memory is due: NCCL's error, named, on every rank (the host
     build's NCCL checks every pointer against the device allocations before sending) */
  rc = c->allreduce_sum(c, host, 4);
  CHECK(rc == IOUPOS_EIO && strstr(ioupos_failure_reason(), "ncclAllGather") &&
            strstr(ioupos_failure_reason(), "invalid argument"),
        "allreduce_sum on host memory: %d '%s'", rc, ioupos_failure_reason());
  rc = c->broadcast(c, host, sizeof host, 0);
  CHECK(rc == IOUPOS_EIO && strstr(ioupos_failure_reason(), "ncclBroadcast"),
        "broadcast on host memory: %d '%s'", rc, ioupos_failure_reason());
#else
  (void)host;
#endif
  be->release(d);
}

/* ioupos_cuda_device_count, and what a program compares it with */
static void test_device_count(void) {
  int lr = -1, ls = -1, n, rc;
  rc = ioupos_comm_mpi_local(&lr, &ls);
  CHECK(rc == 0 && lr == mpi->rank && ls == mpi->size, "ioupos_comm_mpi_local: %d, %d of %d",
        rc, lr, ls);
  n = ioupos_cuda_device_count();
#ifdef IOUPOS_TEST_CUDA_GPU
  CHECK(n >= 1, "ioupos_cuda_device_count: %d (%s)", n, ioupos_failure_reason());
#else
  /* the host build answers IOUPOS_CUDA_HOST_DEVICES, read at each call (default 1) */
  {
    const char *was = getenv("IOUPOS_CUDA_HOST_DEVICES");
    char keep[32] = "";
    if (was) snprintf(keep, sizeof keep, "%s", was);
    unsetenv("IOUPOS_CUDA_HOST_DEVICES");
    n = ioupos_cuda_device_count();
    CHECK(n == 1, "device count without IOUPOS_CUDA_HOST_DEVICES: %d", n);
    setenv("IOUPOS_CUDA_HOST_DEVICES", "3", 1);
    n = ioupos_cuda_device_count();
    CHECK(n == 3, "device count with IOUPOS_CUDA_HOST_DEVICES=3: %d", n);
    setenv("IOUPOS_CUDA_HOST_DEVICES", "0", 1);
    n = ioupos_cuda_device_count();
    CHECK(n == 0 && strstr(ioupos_failure_reason(), "no usable CUDA device") &&
              strstr(ioupos_failure_reason(), "cudaErrorNoDevice"),
          "no device: %d '%s'", n, ioupos_failure_reason());
    setenv("IOUPOS_CUDA_HOST_DEVICES", "-1", 1);
    n = ioupos_cuda_device_count();
    CHECK(n == 0 && strstr(ioupos_failure_reason(), "no usable CUDA device") &&
              strstr(ioupos_failure_reason(), "cudaErrorInsufficientDriver"),
          "no driver: %d '%s'", n, ioupos_failure_reason());
    if (was)
      setenv("IOUPOS_CUDA_HOST_DEVICES", keep, 1);
    else
      unsetenv("IOUPOS_CUDA_HOST_DEVICES");
    n = ioupos_cuda_device_count();
    /* on one machine with one (emulated) GPU, 2 or 3 local ranks are more than the GPUs: what
       a data-parallel program must refuse before NCCL does */
    if (!was) CHECK(n == 1 && (ls > n) == (mpi->size > 1), "%d local ranks, %d GPUs", ls, n);
  }
#endif
  if (mpi->rank == 0) printf("ranks on this machine %d, CUDA devices %d\n", ls, n);
}

int main(int argc, char **argv) {
  const ioupos_comm *c = NULL, *again = NULL;
  char name[64] = "test_comm_nccl";
  int rc;
  size_t ns[] = {0, 1, 7, 8, 9, 25, 1000, 4099}, k, mem0;
  rc = ioupos_comm_mpi_init(&argc, &argv, &mpi);
  if (rc != 0 || !mpi) {
    printf("FAIL: ioupos_comm_mpi_init: %d %s\n", rc, ioupos_failure_reason());
    return 1;
  }
  snprintf(name, sizeof name, "test_comm_nccl rank %d of %d", mpi->rank, mpi->size);
  test_device_count();
  /* init's argument errors, and no backend yet */
  rc = ioupos_comm_nccl_init(mpi, NULL);
  CHECK(rc == IOUPOS_EINVAL, "init with out NULL: %d", rc);
  rc = ioupos_comm_nccl_init(NULL, &c);
  CHECK(rc == IOUPOS_EINVAL && c == NULL, "init with mpi NULL: %d", rc);
  rc = ioupos_comm_nccl_init(mpi, &c);
  CHECK(rc == IOUPOS_EINVAL && c == NULL && strstr(ioupos_failure_reason(), "ioupos_backend_cuda"),
        "init before the backend: %d '%s'", rc, ioupos_failure_reason());
  be = ioupos_backend_cuda(0);
  if (!be) {
    printf("FAIL: ioupos_backend_cuda(0): %s\n", ioupos_failure_reason());
    return 1;
  }
  mem0 = ioupos_cuda_mem_in_use();
  rc = ioupos_comm_nccl_init(mpi, &c);
  CHECK(rc == 0 && c != NULL, "ioupos_comm_nccl_init: %d %s", rc, ioupos_failure_reason());
  /* the staging buffer, counted as the backend's device memory */
  CHECK(ioupos_cuda_mem_in_use() > mem0, "device memory in use %zu after init, %zu before",
        ioupos_cuda_mem_in_use(), mem0);
  if (rc != 0 || !c) {
    ioupos_comm_mpi_finalize();
    return tu_finish(name);
  }
  CHECK(strcmp(c->name, "nccl") == 0 && c->device_buffers == 1 && c->rank == mpi->rank &&
            c->size == mpi->size,
        "table: name %s, device_buffers %d, rank %d of %d", c->name, c->device_buffers, c->rank,
        c->size);
  rc = ioupos_comm_nccl_init(mpi, &again);
  CHECK(rc == 0 && again == c, "a second init: %d, %p vs %p", rc, (const void *)again,
        (const void *)c);
  /* with 96-byte chunks (host build): 8 floats per rank and round with 3 ranks, 12 with 2 */
  for (k = 0; k < sizeof ns / sizeof ns[0]; ++k) test_allreduce(c, ns[k]);
  test_allgather(c, 0);
  test_allgather(c, 1);
  test_allgather(c, 37);
  test_broadcast(c);
  test_errors(c);
  check_barrier(c, mpi); /* rank 0's time over MPI: NCCL's broadcast moves device memory */
  rc = be->sync();
  CHECK(rc == 0, "the backend's sync after the collectives: %d %s", rc, ioupos_failure_reason());
  rc = ioupos_comm_nccl_finalize();
  CHECK(rc == 0, "ioupos_comm_nccl_finalize: %d %s", rc, ioupos_failure_reason());
  CHECK(ioupos_cuda_mem_in_use() == mem0, "device memory in use %zu after finalize, %zu before "
        "init", ioupos_cuda_mem_in_use(), mem0);
  rc = ioupos_comm_nccl_finalize();
  CHECK(rc == 0, "a second ioupos_comm_nccl_finalize: %d %s", rc, ioupos_failure_reason());
  /* a new communicator after finalize */
  rc = ioupos_comm_nccl_init(mpi, &c);
  CHECK(rc == 0 && c != NULL, "init after finalize: %d %s", rc, ioupos_failure_reason());
  if (rc == 0 && c) {
    test_allreduce(c, 30);
    rc = ioupos_comm_nccl_finalize();
    CHECK(rc == 0, "finalize: %d %s", rc, ioupos_failure_reason());
  }
  rc = ioupos_comm_mpi_finalize();
  CHECK(rc == 0, "ioupos_comm_mpi_finalize: %d %s", rc, ioupos_failure_reason());
  return tu_finish(name);
}
