/* tests/fd_check.h — the finite-difference gradient check of the C tests (test_layers,
   test_losses, test_segeval, test_decoder).

   fd_check(label, p, grad, n, o) compares grad[0..n) (the analytic gradient of L with respect to
   the float tensor p[0..n), from one backward into zeros) with central differences
       fd = (L(p + h) - L(p - h)) / (p+h - p-h)
   at up to o.samples elements of p: all of them when n <= o.samples, else o.samples drawn with
   fd_rng (seed it in main). The perturbation is applied to the float element and the
   denominator is the difference actually stored. L is o.loss(), a double (a loss value, or
   sum(out * G) accumulated in double from the float forward output); it is called once more at
   the end to leave the forward state as it was. A sample fails when
   |fd - g| > o.atol + o.rtol |g| (or either is NaN); the check fails if any sample fails.

   Kinks (where L is not differentiable, the central difference straddles one): an element with
   |p[i]| < o.skip_near_zero is skipped (a ReLU applied to p itself), and so is one whose +-h
   forward changes the sign pattern (> 0 or not) of o.kink[0..1] (o.nkink[0..1] floats that the
   forward writes, e.g. the inputs of leaky ReLUs) from the unperturbed forward's. Where skipping
   is possible, at least half of the samples must remain.

   Prints one line per call: the label, the samples tried and skipped, the failures and the worst
   sample. Include after tests/test_util.h and ioupos.h. */
#ifndef IOUPOS_TEST_FD_CHECK_H
#define IOUPOS_TEST_FD_CHECK_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "tests/test_util.h"

typedef struct fd_opts {
  double (*loss)(void); /* L at the current values of the tensors */
  long samples;         /* elements tried per tensor at most */
  double h;             /* the step */
  double atol, rtol;    /* |fd - g| <= atol + rtol |g| */
  double skip_near_zero;
  const float *kink[2];
  long nkink[2];
} fd_opts;

static ioupos_rng fd_rng;

/* The options without kinks. */
static inline fd_opts fd_opts_make(double (*loss)(void), long samples, double h, double atol,
                                   double rtol) {
  fd_opts o;
  o.loss = loss, o.samples = samples, o.h = h, o.atol = atol, o.rtol = rtol;
  o.skip_near_zero = 0.0;
  o.kink[0] = o.kink[1] = NULL;
  o.nkink[0] = o.nkink[1] = 0;
  return o;
}

/* the signs (> 0) of the kink arrays: saved into ref (save), else compared with ref */
static inline int fd__kinks(const fd_opts *o, unsigned char *ref, int save) {
  long r, i, j = 0;
  for (r = 0; r < 2; ++r)
    for (i = 0; i < o->nkink[r]; ++i, ++j) {
      unsigned char s = o->kink[r][i] > 0.0f;
      if (save) ref[j] = s;
      else if (s != ref[j]) return 0;
    }
  return 1;
}

static inline void fd_check(const char *label, float *p, const float *grad, long n, fd_opts o) {
  long k, worst_i = -1, bad = 0, tried = 0, skipped = 0, ns = n < o.samples ? n : o.samples;
  long nk = o.nkink[0] + o.nkink[1];
  int can_skip = o.skip_near_zero > 0.0 || nk > 0;
  double worst_ex = -1e300, worst_fd = 0, worst_g = 0;
  unsigned char *kink_ref = (unsigned char *)calloc((size_t)(nk > 0 ? nk : 1), 1);
  if (!kink_ref) {
    CHECK(0, "%s: out of memory", label);
    return;
  }
  if (nk > 0) {
    o.loss(); /* the unperturbed kink pattern */
    fd__kinks(&o, kink_ref, 1);
  }
  for (k = 0; k < ns; ++k) {
    long i = n <= o.samples ? k : (long)ioupos_rng_below(&fd_rng, (uint64_t)n);
    float v = p[i], vp = (float)(v + o.h), vm = (float)(v - o.h);
    double lp, lm, fd, ex;
    int same;
    if (o.skip_near_zero > 0.0 && fabs(v) < o.skip_near_zero) {
      ++skipped;
      continue;
    }
    p[i] = vp;
    lp = o.loss();
    same = nk == 0 || fd__kinks(&o, kink_ref, 0);
    p[i] = vm;
    lm = o.loss();
    same = same && (nk == 0 || fd__kinks(&o, kink_ref, 0));
    p[i] = v;
    if (!same) {
      ++skipped;
      continue;
    }
    fd = (lp - lm) / ((double)vp - (double)vm);
    ex = fabs(fd - grad[i]) - (o.atol + o.rtol * fabs(grad[i]));
    ++tried;
    if (!(ex <= 0)) ++bad;
    if (ex > worst_ex || ex != ex) worst_ex = ex, worst_i = i, worst_fd = fd, worst_g = grad[i];
  }
  o.loss(); /* leave the forward state as it was */
  free(kink_ref);
  printf("  %-40s fd %ld samples", label, tried);
  if (can_skip) printf(" (%ld skipped at a kink)", skipped);
  printf(", bad %ld, worst [%ld] fd %.10g vs analytic %.10g\n", bad, worst_i, worst_fd, worst_g);
  CHECK(bad == 0, "%s: finite differences disagree at %ld elements", label, bad);
  if (can_skip)
    CHECK(2 * tried >= ns, "%s: only %ld of %ld samples away from a kink", label, tried, ns);
}
#endif
