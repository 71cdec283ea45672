/* tests/test_comm.c — section 16b: the communication between processes.
   Built twice: build/test_comm (the one-process table, run by make test) and, with mpicc and
   -DIOUPOS_WITH_MPI, build/test_comm_mpi, which tests/test_comm.sh runs under mpirun:
     test_comm_mpi            the one-process table only, as build/test_comm
     test_comm_mpi --mpi      also the MPI table: all-reduce bits against the rank-order sum,
                              the ranks of this machine (ioupos_comm_mpi_local),
                              every rank the same bits, n = 0, 1, 3M + 7 (several chunks),
                              broadcast from every root, barrier, argument errors
     test_comm_mpi --mpi --die   rank 1 exits with status 3 after the first all-reduce while the
                              other ranks wait in the next one: mpirun must end the job
   Each rank prints "test_comm[ rank R]: N checks passed, N failed" and exits 1 on a failure. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "ioupos.h"
#include "test_util.h"

#ifdef IOUPOS_WITH_MPI
#include <mpi.h>

#include "comm_util.h"
#endif

static void test_single(void) {
  const ioupos_comm *c = ioupos_comm_single();
  float buf[5] = {1.5f, -0.0f, 1e8f, 3.0f, -7.25f}, copy[5];
  unsigned char b[3] = {1, 2, 3};
  int rc;
  CHECK(c != NULL, "ioupos_comm_single returned NULL");
  if (!c) return;
  CHECK(c->rank == 0 && c->size == 1, "rank %d size %d", c->rank, c->size);
  CHECK(c->name && strcmp(c->name, "single") == 0, "name %s", c->name ? c->name : "(null)");
  CHECK(c == ioupos_comm_single(), "a second call returns another table");
  memcpy(copy, buf, sizeof buf);
  rc = c->allreduce_sum(c, buf, 5);
  CHECK(rc == 0, "allreduce_sum: %d %s", rc, ioupos_failure_reason());
  CHECK(memcmp(buf, copy, sizeof buf) == 0, "allreduce_sum changed the buffer");
  rc = c->allreduce_sum(c, NULL, 0);
  CHECK(rc == 0, "allreduce_sum n 0: %d %s", rc, ioupos_failure_reason());
  rc = c->allreduce_sum(c, NULL, 4);
  CHECK(rc == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "allreduce_sum"),
        "allreduce_sum NULL: %d '%s'", rc, ioupos_failure_reason());
  rc = c->broadcast(c, b, sizeof b, 0);
  CHECK(rc == 0 && b[0] == 1 && b[2] == 3, "broadcast: %d %s", rc, ioupos_failure_reason());
  rc = c->broadcast(c, b, sizeof b, 1);
  CHECK(rc == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "broadcast") &&
            strstr(ioupos_failure_reason(), "root is 1"),
        "broadcast root 1: %d '%s'", rc, ioupos_failure_reason());
  rc = c->barrier(c);
  CHECK(rc == 0, "barrier: %d %s", rc, ioupos_failure_reason());
  memset(copy, 0, sizeof copy);
  rc = c->allgather(c, buf, 5, copy);
  CHECK(rc == 0 && memcmp(buf, copy, sizeof buf) == 0, "allgather: %d %s", rc,
        ioupos_failure_reason());
  rc = c->allgather(c, buf, 5, NULL);
  CHECK(rc == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "allgather"),
        "allgather NULL: %d '%s'", rc, ioupos_failure_reason());
}

#ifdef IOUPOS_WITH_MPI
/* the sum over ranks 0..size-1 in rank order, as allreduce_sum documents */
static float ref_sum(int size, size_t i) {
  float s = value(0, size, i);
  int r;
  for (r = 1; r < size; ++r) s += value(r, size, i);
  return s;
}

static void test_allreduce(const ioupos_comm *c, size_t n) {
  float *buf = (float *)malloc((n ? n : 1) * sizeof(float));
  size_t i, bad = 0, first = 0;
  int rc;
  if (!buf) {
    CHECK(0, "malloc of %zu floats", n);
    return;
  }
  for (i = 0; i < n; ++i) buf[i] = value(c->rank, c->size, i);
  rc = c->allreduce_sum(c, n ? buf : NULL, n);
  CHECK(rc == 0, "allreduce_sum n %zu: %d %s", n, rc, ioupos_failure_reason());
  for (i = 0; i < n; ++i)
    if (bits(buf[i]) != bits(ref_sum(c->size, i)) && bad++ == 0) first = i;
  CHECK(bad == 0,
        "n %zu: %zu sums differ from the rank-order sum, first [%zu]: %.9g (0x%08x), want %.9g "
        "(0x%08x)",
        n, bad, first, bad ? buf[first] : 0.0, bad ? bits(buf[first]) : 0u,
        bad ? ref_sum(c->size, first) : 0.0, bad ? bits(ref_sum(c->size, first)) : 0u);
  CHECK(same_everywhere(c, fnv(buf, n * sizeof(float))), "n %zu: the ranks' sums differ", n);
  free(buf);
}

static void test_mpi(const ioupos_comm *c, int die) {
  unsigned char msg[1000];
  size_t i;
  int root, rc;
  CHECK(strcmp(c->name, "mpi") == 0, "name %s", c->name);
  CHECK(c->size >= 1 && c->rank >= 0 && c->rank < c->size, "rank %d size %d", c->rank, c->size);
  {
    int wr = -1, ws = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &wr);
    MPI_Comm_size(MPI_COMM_WORLD, &ws);
    CHECK(wr == c->rank && ws == c->size, "rank %d size %d, MPI_COMM_WORLD's %d %d", c->rank,
          c->size, wr, ws);
  }
  {
    const ioupos_comm *again = NULL;
    rc = ioupos_comm_mpi_init(NULL, NULL, &again);
    CHECK(rc == 0 && again == c, "a second ioupos_comm_mpi_init: %d, %p vs %p", rc,
          (const void *)again, (const void *)c);
  }
  /* the ranks of this machine: the test runs on one machine, so all of them, in rank order */
  {
    int lr = -1, ls = -1;
    rc = ioupos_comm_mpi_local(&lr, &ls);
    CHECK(rc == 0, "ioupos_comm_mpi_local: %d %s", rc, ioupos_failure_reason());
    CHECK(lr == c->rank && ls == c->size, "local rank %d of %d, want %d of %d (one machine)", lr,
          ls, c->rank, c->size);
    rc = ioupos_comm_mpi_local(&lr, NULL);
    CHECK(rc == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "ioupos_comm_mpi_local"),
          "ioupos_comm_mpi_local NULL: %d '%s'", rc, ioupos_failure_reason());
  }
  /* the values are meaningful: with 3 ranks their float sum depends on the order */
  {
    float a = 1e8f, b = 3.0f, left = (a + b) + b, right = a + (b + b);
    CHECK(bits(left) != bits(right), "(1e8 + 3) + 3 and 1e8 + (3 + 3) are both %.9g", left);
  }
  test_allreduce(c, 0);
  if (die && c->rank == 1) {
    fprintf(stderr,
            "test_comm rank 1: exits with status 3 while the others are in allreduce_sum\n");
    fflush(stderr);
    exit(3);
  }
  test_allreduce(c, 1);
  test_allreduce(c, 6);
  /* several chunks (IOUPOS_COMM_CHUNK_BYTES over the ranks), the last one short */
  test_allreduce(c, (size_t)3000000 + 7);
  if (die) {
    CHECK(0, "rank %d: the job went on after rank 1 exited", c->rank);
    return;
  }
  /* broadcast from each root: the root's bytes everywhere, the others' overwritten */
  for (root = 0; root < c->size; ++root) {
    for (i = 0; i < sizeof msg; ++i) msg[i] = (unsigned char)(i * 7 + (size_t)c->rank * 31 + 1);
    rc = c->broadcast(c, msg, sizeof msg, root);
    CHECK(rc == 0, "broadcast from %d: %d %s", root, rc, ioupos_failure_reason());
    for (i = 0; i < sizeof msg; ++i)
      if (msg[i] != (unsigned char)(i * 7 + (size_t)root * 31 + 1)) break;
    CHECK(i == sizeof msg, "broadcast from %d: byte %zu is %u on rank %d", root, i,
          i < sizeof msg ? msg[i] : 0u, c->rank);
  }
  rc = c->broadcast(c, NULL, 0, c->size - 1);
  CHECK(rc == 0, "broadcast of 0 bytes: %d %s", rc, ioupos_failure_reason());
  /* argument errors, found before anything is sent (so every rank fails and none waits) */
  rc = c->broadcast(c, msg, sizeof msg, c->size);
  CHECK(rc == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "broadcast (mpi): root is"),
        "broadcast root %d: %d '%s'", c->size, rc, ioupos_failure_reason());
  rc = c->broadcast(c, msg, sizeof msg, -1);
  CHECK(rc == IOUPOS_EINVAL, "broadcast root -1: %d '%s'", rc, ioupos_failure_reason());
  rc = c->allreduce_sum(c, NULL, 3);
  CHECK(rc == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "allreduce_sum (mpi)"),
        "allreduce_sum NULL: %d '%s'", rc, ioupos_failure_reason());
  /* allgather: rank r's block at r * n on every rank, for n = 1 and a few thousand */
  {
    size_t ns[2] = {1, 4099}, k, i;
    int r, bad = 0;
    for (k = 0; k < 2; ++k) {
      size_t n = ns[k];
      float *send = (float *)malloc(n * sizeof(float));
      float *recv = (float *)malloc(n * (size_t)c->size * sizeof(float));
      if (!send || !recv) { CHECK(0, "out of memory"); free(send); free(recv); return; }
      for (i = 0; i < n; ++i) send[i] = (float)c->rank * 1000.0f + (float)i * 0.5f;
      rc = c->allgather(c, send, n, recv);
      CHECK(rc == 0, "allgather n %zu: %d %s", n, rc, ioupos_failure_reason());
      for (r = 0; r < c->size; ++r)
        for (i = 0; i < n; ++i)
          if (recv[(size_t)r * n + i] != (float)r * 1000.0f + (float)i * 0.5f) ++bad;
      CHECK(bad == 0, "allgather n %zu: %d floats out of place", n, bad);
      free(send);
      free(recv);
    }
    rc = c->allgather(c, NULL, 2, NULL);
    CHECK(rc == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "allgather (mpi)"),
          "allgather NULL: %d '%s'", rc, ioupos_failure_reason());
  }
  check_barrier(c, c);
  rc = c->barrier(c);
  CHECK(rc == 0, "second barrier: %d %s", rc, ioupos_failure_reason());
}
#endif

int main(int argc, char **argv) {
  int use_mpi = 0, die = 0, i;
  char name[64];
  for (i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--mpi") == 0)
      use_mpi = 1;
    else if (strcmp(argv[i], "--die") == 0)
      die = 1;
    else {
      fprintf(stderr, "usage: %s [--mpi [--die]]\n", argv[0]);
      return 2;
    }
  }
  strcpy(name, "test_comm");
  test_single();
#ifdef IOUPOS_WITH_MPI
  if (use_mpi) {
    const ioupos_comm *c = NULL;
    int lr, ls, rc = ioupos_comm_mpi_local(&lr, &ls);
    CHECK(rc == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "ioupos_comm_mpi_init first"),
          "ioupos_comm_mpi_local before ioupos_comm_mpi_init: %d '%s'", rc,
          ioupos_failure_reason());
    rc = ioupos_comm_mpi_init(&argc, &argv, &c);
    if (rc != 0 || !c) {
      printf("FAIL: ioupos_comm_mpi_init: %d %s\n", rc, ioupos_failure_reason());
      return 1;
    }
    snprintf(name, sizeof name, "test_comm rank %d of %d", c->rank, c->size);
    test_mpi(c, die);
    rc = ioupos_comm_mpi_finalize();
    CHECK(rc == 0, "ioupos_comm_mpi_finalize: %d %s", rc, ioupos_failure_reason());
    rc = ioupos_comm_mpi_finalize();
    CHECK(rc == 0, "a second ioupos_comm_mpi_finalize: %d %s", rc, ioupos_failure_reason());
    rc = ioupos_comm_mpi_local(&lr, &ls);
    CHECK(rc == IOUPOS_EINVAL, "ioupos_comm_mpi_local after finalize: %d '%s'", rc,
          ioupos_failure_reason());
  }
#else
  if (use_mpi || die) {
    printf("FAIL: --mpi: this build has no MPI (build/test_comm_mpi has)\n");
    return 1;
  }
#endif
  return tu_finish(name);
}
