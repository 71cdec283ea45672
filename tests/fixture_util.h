/* tests/fixture_util.h — the helpers of the fixture-based tests (test_layers, test_losses,
   test_optim): tracked float allocations freed at exit (clean under LeakSanitizer), loading
   fixture tensors <FIX><case>_<name>.npy as float, comparing with tu_compare, and the check that a
   backward accumulates. Define FIX (the fixture folder with a trailing '/') before including. */
#ifndef IOUPOS_TEST_FIXTURE_UTIL_H
#define IOUPOS_TEST_FIXTURE_UTIL_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tests/npy.h"
#include "tests/test_util.h"

/* ---- memory: every test allocation is freed at exit (clean under LeakSanitizer) ---- */
static void *tmem[4096];
static int ntmem;
static inline float *talloc(long n) {
  float *p = (float *)calloc((size_t)(n > 0 ? n : 1), sizeof(float));
  if (!p || ntmem >= 4096) {
    printf("out of memory\n");
    exit(1);
  }
  tmem[ntmem++] = p;
  return p;
}
static inline void tfree_all(void) {
  while (ntmem > 0) free(tmem[--ntmem]);
}

/* Load a fixture tensor as float; n (if >= 0) is the expected element count. */
static inline float *ld(const char *layer, const char *name, long n) {
  char path[256];
  tu_npy a;
  float *p;
  long i;
  snprintf(path, sizeof path, FIX "%s_%s.npy", layer, name);
  if (tu_npy_load(path, &a) != 0) {
    CHECK(0, "cannot load %s", path);
    return talloc(n);
  }
  CHECK(n < 0 || a.count == n, "%s: %ld elements, expected %ld", path, a.count, n);
  p = talloc(a.count > n ? a.count : n);
  for (i = 0; i < a.count; ++i) p[i] = (float)a.data[i];
  tu_npy_free(&a);
  return p;
}

/* Compare x[n] with fixture <layer>_<name>.npy. */
static inline void cmp(const char *layer, const char *name, const float *x, long n, double atol,
                double rtol) {
  char path[256], label[96];
  tu_npy a;
  snprintf(path, sizeof path, FIX "%s_%s.npy", layer, name);
  snprintf(label, sizeof label, "%s %s", layer, name);
  if (tu_npy_load(path, &a) != 0) {
    CHECK(0, "cannot load %s", path);
    return;
  }
  CHECK(a.count == n, "%s: %ld elements, expected %ld", path, a.count, n);
  if (a.count == n) {
    long bad = tu_compare(label, x, a.data, n, atol, rtol);
    CHECK(bad == 0, "%s: %ld elements out of tolerance", label, bad);
  }
  tu_npy_free(&a);
}

/* Backward accumulates: g2 (after a second call) == 2 * g1 (after the first). */
static inline void acc_check(const char *label, const float *g2, const float *g1, long n) {
  long i, bad = 0;
  for (i = 0; i < n; ++i) {
    double want = 2.0 * (double)g1[i];
    if (!(fabs(g2[i] - want) <= 1e-6 * fabs(want) + 1e-30)) ++bad;
  }
  CHECK(bad == 0, "%s: second backward is not 2x the first at %ld elements", label, bad);
}

static inline float *copyf(const float *x, long n) {
  float *p = talloc(n);
  memcpy(p, x, sizeof(float) * (size_t)n);
  return p;
}
#endif
