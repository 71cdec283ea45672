/* tests/comm_util.h — what the communication tests share (tests/test_comm.c, the MPI table;
   tests/test_comm_nccl.c, the NCCL table): the values whose sum depends on the order of the
   additions, a hash to compare the ranks' results, a clock, and the barrier's check.
   Include after ioupos.h and test_util.h. */
#ifndef IOUPOS_TEST_COMM_UTIL_H
#define IOUPOS_TEST_COMM_UTIL_H
#include <stdint.h>
#include <string.h>
#include <time.h>

/* 64-bit FNV-1a of n bytes */
static uint64_t fnv(const void *p, size_t n) {
  const unsigned char *b = (const unsigned char *)p;
  uint64_t h = 1469598103934665603ull;
  size_t i;
  for (i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

static uint32_t bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
}

/* Rank r's value at index i, among `size` ranks: a mix whose float sum depends on the order of
   the additions (1e8 with small numbers), signed zeros (-0 + -0 is -0, +0 + -0 is +0),
   and index-dependent values, so a chunk gathered at the wrong offset shows. */
static float value(int r, int size, size_t i) {
  uint32_t h = (uint32_t)(i * 2654435761u) ^ (uint32_t)(r * 40503u + 17u);
  switch (i % 6) {
    case 0: return r == 0 ? 1e8f : 3.0f;                     /* (1e8 + 3) + 3 != 1e8 + (3 + 3) */
    case 1: return r == size - 1 ? 1e8f : (r == 0 ? -1e8f : 1.0f);
    case 2: return -0.0f;                                    /* the sum stays -0 */
    case 3: return r == 0 ? 0.0f : -0.0f;                    /* +0 first: +0 */
    case 4: return (float)(int32_t)(h % 2001u - 1000) * 0.001f * (float)(1u << (h % 20));
    default: return (float)i * 0.5f + (float)r;
  }
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* every rank's h equal: h broadcast from each root in turn over host (a table on host memory)
   and compared */
static int same_everywhere(const ioupos_comm *host, uint64_t h) {
  int root, same = 1;
  for (root = 0; root < host->size; ++root) {
    uint64_t x = h;
    int rc = host->broadcast(host, &x, sizeof x, root);
    CHECK(rc == 0, "broadcast of a hash from %d: %d %s", root, rc, ioupos_failure_reason());
    if (x != h) same = 0;
  }
  return same;
}

/* c's barrier: rank 0 enters it 0.2 s late; every rank must leave it after rank 0 entered (the
   times are CLOCK_MONOTONIC, one clock for the processes of one machine, where the tests run;
   rank 0's time goes to the others over host, a table on host memory) */
static void check_barrier(const ioupos_comm *c, const ioupos_comm *host) {
  double t_enter0 = 0, t_exit;
  int rc;
  if (c->rank == 0) {
    struct timespec ts = {0, 200000000L};
    nanosleep(&ts, NULL);
    t_enter0 = now();
  }
  rc = c->barrier(c);
  t_exit = now();
  CHECK(rc == 0, "barrier: %d %s", rc, ioupos_failure_reason());
  rc = host->broadcast(host, &t_enter0, sizeof t_enter0, 0);
  CHECK(rc == 0, "broadcast of the barrier time: %d %s", rc, ioupos_failure_reason());
  CHECK(t_exit >= t_enter0, "rank %d left the barrier %.3f s before rank 0 entered it", c->rank,
        t_enter0 - t_exit);
}

#endif /* IOUPOS_TEST_COMM_UTIL_H */
