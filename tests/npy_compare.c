/* tests/npy_compare.c — compare a float .npy with a reference .npy (tests/test_embed.sh).

   usage: npy_compare GOT.npy EXPECTED.npy ATOL RTOL
   Both files are read with tests/npy.h (any of its dtypes, converted to double). The shapes must
   be equal and every element must satisfy |got - expected| <= ATOL + RTOL * |expected| (NaN
   fails). Prints one line: the shape, the worst absolute error (with its row and column for a
   matrix), the worst error relative to the tolerance, and the count out of tolerance.
   Exit status 0 when all elements are within tolerance, 1 otherwise, 2 on a usage error. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "tests/npy.h"

int main(int argc, char **argv) {
  tu_npy a, b;
  double atol, rtol, worst_abs = 0.0, worst_ratio = 0.0;
  long i, worst = 0, bad = 0, cols;
  int d, same;
  if (argc != 5) {
    fprintf(stderr, "usage: npy_compare GOT.npy EXPECTED.npy ATOL RTOL\n");
    return 2;
  }
  atol = atof(argv[3]);
  rtol = atof(argv[4]);
  if (tu_npy_load(argv[1], &a) != 0) return 1;
  if (tu_npy_load(argv[2], &b) != 0) {
    tu_npy_free(&a);
    return 1;
  }
  same = a.ndim == b.ndim;
  for (d = 0; same && d < a.ndim; ++d) same = a.shape[d] == b.shape[d];
  if (!same) {
    printf("shape mismatch: %s has %d dims (%ld x %ld ...), %s has %d dims (%ld x %ld ...)\n",
           argv[1], a.ndim, a.shape[0], a.ndim > 1 ? a.shape[1] : 1L, argv[2], b.ndim, b.shape[0],
           b.ndim > 1 ? b.shape[1] : 1L);
    tu_npy_free(&a);
    tu_npy_free(&b);
    return 1;
  }
  for (i = 0; i < a.count; ++i) {
    double err = fabs(a.data[i] - b.data[i]), lim = atol + rtol * fabs(b.data[i]);
    double ratio = lim > 0.0 ? err / lim : err > 0.0 ? HUGE_VAL : 0.0;
    if (!(err <= lim)) ++bad;
    if (isnan(err) || err > worst_abs) {
      if (!isnan(worst_abs)) worst = i;
      worst_abs = err;
    }
    if (isnan(ratio) || ratio > worst_ratio) worst_ratio = ratio;
  }
  cols = a.ndim >= 2 ? a.count / (a.shape[0] ? a.shape[0] : 1) : 1;
  printf("%ld elements (%ld x %ld): worst |got - expected| %.3e at [%ld, %ld] (%.8g vs %.8g), "
         "worst error / tolerance %.3f (atol %g rtol %g), %ld out of tolerance\n",
         a.count, a.ndim ? a.shape[0] : 1L, cols, worst_abs, worst / cols, worst % cols,
         a.count ? a.data[worst] : 0.0, a.count ? b.data[worst] : 0.0, worst_ratio, atol, rtol,
         bad);
  tu_npy_free(&a);
  tu_npy_free(&b);
  return bad ? 1 : 0;
}
