/* tests/test_sampler.c — the exact IoU crop-pair sampler, the RNG and box IoU.

   1. Exhaustive enumeration on small 2D and 3D shapes (per-axis crops, axes with a single
      placement, thin, empty and full intervals), both modes: the sampler's pair and
      first-placement counts equal the enumerated ones, every draw is valid, and a chi-square
      goodness-of-fit test of the drawn cell counts against the exact target distribution
      passes (Wilson-Hilferty z < 5, i.e. p > 3e-7; seeds are fixed, so this is deterministic).
      The same statistic must reject the other mode's target where the two differ, which shows
      the test has the power to fail.
   2. The exact slow path (max_tries = 0) passes the same goodness-of-fit test.
   3. Zero violations over IOUPOS_TEST_DRAWS draws (default 1,000,000) per case at realistic
      sizes: 2D 512x448 and 3D 160x320x288 with crop 96 (and a 48x96x96 3D crop), intervals
      [0,0], [0.0001,0.3], [0.3,0.6], [0.6,1], [0.8,1], [0.45,0.46], both modes.
   4. Every malformed or infeasible request fails with the right status and a reason that names
      shape, crop and interval; draw on an unusable sampler fails.
   5. Same seed, same pairs; RNG below() is uniform; split() is deterministic and independent.
   6. Box IoU on hand-computed cases. */
#include "ioupos.h"
#include "test_util.h"

#include <math.h>
#include <string.h>

/* ---- exhaustive enumeration -------------------------------------------------------------- */

typedef struct enum_case {
  int dims, shape[3], crop[3];
  double lo, hi;
} enum_case;

static int n_positions(const enum_case *c, int n[3]) {
  int k, total = 1;
  for (k = 0; k < 3; ++k) {
    n[k] = k < c->dims ? c->shape[k] - c->crop[k] + 1 : 1;
    total *= n[k];
  }
  return total;
}

static void box_at(const enum_case *c, const int n[3], int idx, ioupos_box *b) {
  int k;
  memset(b, 0, sizeof *b);
  b->dims = c->dims;
  for (k = c->dims - 1; k >= 0; --k) {
    b->lo[k] = idx % n[k];
    b->hi[k] = b->lo[k] + c->crop[k];
    idx /= n[k];
  }
}

static int box_index(const enum_case *c, const int n[3], const ioupos_box *b) {
  int k, idx = 0;
  for (k = 0; k < c->dims; ++k) idx = idx * n[k] + b->lo[k];
  return idx;
}

/* Chi-square of observed counts against probabilities (cells with prob 0 must be empty),
   as a Wilson-Hilferty z score. */
static double chi_square_z(const long *obs, const double *prob, int cells, long draws, int *df) {
  double x2 = 0.0;
  int i, used = 0;
  for (i = 0; i < cells; ++i) {
    double e;
    if (prob[i] <= 0.0) continue;
    e = prob[i] * (double)draws;
    x2 += ((double)obs[i] - e) * ((double)obs[i] - e) / e;
    ++used;
  }
  *df = used - 1;
  if (*df < 1) return 0.0;
  {
    double k = *df, t = 2.0 / (9.0 * k);
    return (pow(x2 / k, 1.0 / 3.0) - (1.0 - t)) / sqrt(t);
  }
}

static void exhaustive_case(const enum_case *c, int mode, int force_exact) {
  int n[3], np = n_positions(c, n), i, j, cells = np * np;
  char *valid = (char *)calloc((size_t)cells, 1);
  double *target = (double *)calloc((size_t)cells, sizeof(double));
  double *other = (double *)calloc((size_t)cells, sizeof(double));
  long *obs = (long *)calloc((size_t)cells, sizeof(long));
  long *partners = (long *)calloc((size_t)np, sizeof(long));
  long n_pairs = 0, n_first = 0, draws, d, bad = 0;
  double pmin = 1.0;
  ioupos_iou_sampler s;
  ioupos_rng rng;
  char label[160];
  int st;
  snprintf(label, sizeof label, "%dD shape %dx%dx%d crop %dx%dx%d [%g, %g] %s%s", c->dims,
           c->shape[0], c->shape[1], c->dims == 3 ? c->shape[2] : 1, c->crop[0], c->crop[1],
           c->dims == 3 ? c->crop[2] : 1, c->lo, c->hi,
           mode == IOUPOS_PAIR_JOINT ? "joint" : "anchored", force_exact ? " (exact path)" : "");

  for (i = 0; i < np; ++i)
    for (j = 0; j < np; ++j) {
      ioupos_box a, b;
      double iou;
      box_at(c, n, i, &a);
      box_at(c, n, j, &b);
      iou = ioupos_box_iou(&a, &b);
      if (iou >= c->lo && iou <= c->hi) {
        valid[i * np + j] = 1;
        ++partners[i];
        ++n_pairs;
      }
    }
  for (i = 0; i < np; ++i) n_first += partners[i] > 0;

  st = ioupos_iou_sampler_init(&s, c->dims, c->shape, c->crop, c->lo, c->hi, mode);
  if (n_pairs == 0) {
    printf("  %-60s no valid pair: init must refuse\n", label);
    CHECK(st == IOUPOS_EINFEASIBLE, "%s: no valid pair exists, init returned %d (%s)", label, st,
          ioupos_failure_reason());
    goto done;
  }
  CHECK(st == IOUPOS_OK, "%s: init failed: %s", label, ioupos_failure_reason());
  if (st != IOUPOS_OK) goto done;
  CHECK((long)s.n_pairs == n_pairs, "%s: n_pairs %llu, enumerated %ld", label,
        (unsigned long long)s.n_pairs, n_pairs);
  if (mode == IOUPOS_PAIR_ANCHORED)
    CHECK((long)s.n_first == n_first, "%s: n_first %llu, enumerated %ld", label,
          (unsigned long long)s.n_first, n_first);
  if (force_exact) s.max_tries = 0;

  for (i = 0; i < np; ++i)
    for (j = 0; j < np; ++j) {
      double joint = 0.0, anchored = 0.0;
      if (!valid[i * np + j]) continue;
      joint = 1.0 / (double)n_pairs;
      anchored = 1.0 / ((double)n_first * (double)partners[i]);
      target[i * np + j] = mode == IOUPOS_PAIR_JOINT ? joint : anchored;
      other[i * np + j] = mode == IOUPOS_PAIR_JOINT ? anchored : joint;
      if (target[i * np + j] < pmin) pmin = target[i * np + j];
    }
  /* at least 40 expected draws in the rarest cell */
  draws = (long)(40.0 / pmin) + 1;
  if (draws < 100000) draws = 100000;
  if (force_exact && draws > 200000) draws = 200000;
  if (draws > 4000000) draws = 4000000;
  ioupos_rng_seed(&rng, 12345u + (uint64_t)mode);
  for (d = 0; d < draws; ++d) {
    ioupos_box a, b;
    int ia, ib;
    ioupos_iou_sampler_draw(&s, &rng, &a, &b);
    ia = box_index(c, n, &a);
    ib = box_index(c, n, &b);
    if (ia < 0 || ia >= np || ib < 0 || ib >= np || !valid[ia * np + ib]) {
      ++bad;
      continue;
    }
    ++obs[ia * np + ib];
  }
  CHECK(bad == 0, "%s: %ld of %ld draws were invalid pairs", label, bad, draws);
  {
    int df, df2;
    double z = chi_square_z(obs, target, cells, draws, &df);
    double z_other = chi_square_z(obs, other, cells, draws, &df2);
    /* noncentrality of the chi-square against the other target: its expected excess over df */
    double lambda = 0.0;
    int power;
    for (i = 0; i < cells; ++i)
      if (other[i] > 0.0)
        lambda += (double)draws * (target[i] - other[i]) * (target[i] - other[i]) / other[i];
    power = lambda > 10.0 * sqrt(2.0 * (df > 0 ? df : 1));
    printf("  %-60s pairs %5ld draws %7ld  z %+5.2f (df %4d)", label, n_pairs, draws, z, df);
    if (power) printf("  other mode's target: z %+.0f", z_other);
    printf("\n");
    CHECK(z < 5.0, "%s: goodness of fit z = %.2f (df %d) against the exact target", label, z, df);
    /* power: where the other mode's target is far enough (its expected statistic exceeds df by
       10 standard deviations), the statistic must reject it */
    if (power)
      CHECK(z_other > 5.0, "%s: the other mode's target was not rejected (z = %.2f)", label,
            z_other);
  }
  ioupos_iou_sampler_free(&s);
done:
  free(valid);
  free(target);
  free(other);
  free(obs);
  free(partners);
}

static void test_exhaustive(void) {
  static const enum_case cases[] = {
      {2, {7, 9, 0}, {3, 4, 0}, 0.0, 0.0},
      {2, {7, 9, 0}, {3, 4, 0}, 0.0, 1.0},
      {2, {7, 9, 0}, {3, 4, 0}, 0.3, 0.6},
      {2, {7, 9, 0}, {3, 4, 0}, 0.0001, 0.3},
      {2, {7, 9, 0}, {3, 4, 0}, 0.6, 1.0},
      {2, {7, 9, 0}, {3, 4, 0}, 1.0, 1.0},
      {2, {7, 9, 0}, {3, 4, 0}, 0.2, 0.2},   /* 2/10 exactly: I = 4 gives 4/20 */
      {2, {7, 9, 0}, {3, 4, 0}, 0.45, 0.46}, /* thin, no volume hits it: infeasible */
      {2, {10, 6, 0}, {4, 4, 0}, 0.0, 0.0},  /* axis 1 too short for zero overlap */
      {2, {10, 6, 0}, {4, 4, 0}, 0.1, 0.5},
      {2, {5, 12, 0}, {5, 3, 0}, 0.0, 0.0},  /* axis 0 has a single placement */
      {2, {5, 12, 0}, {5, 3, 0}, 0.3, 0.6},
      {2, {6, 6, 0}, {4, 4, 0}, 0.0, 0.0},   /* impossible: every pair overlaps */
      {2, {12, 11, 0}, {3, 5, 0}, 0.8, 1.0},
      {3, {4, 6, 7}, {2, 3, 3}, 0.0, 0.0},
      {3, {4, 6, 7}, {2, 3, 3}, 0.0, 1.0},
      {3, {4, 6, 7}, {2, 3, 3}, 0.3, 0.6},
      {3, {4, 6, 7}, {2, 3, 3}, 0.0001, 0.3},
      {3, {4, 6, 7}, {2, 3, 3}, 0.6, 1.0},
      {3, {5, 5, 8}, {3, 2, 4}, 0.1, 0.35},
      {3, {3, 6, 6}, {3, 3, 2}, 0.0, 0.0},   /* axis 0 has a single placement */
      {3, {3, 6, 6}, {3, 3, 2}, 0.25, 0.5},
      {3, {5, 5, 5}, {4, 4, 4}, 0.0, 0.0},   /* impossible */
      {3, {6, 9, 5}, {2, 4, 3}, 0.0, 0.25},  /* zero and nonzero overlaps both valid */
      {3, {6, 9, 5}, {2, 4, 3}, 0.5, 1.0},
  };
  size_t i;
  printf("exhaustive enumeration and goodness of fit:\n");
  for (i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
    exhaustive_case(&cases[i], IOUPOS_PAIR_ANCHORED, 0);
    exhaustive_case(&cases[i], IOUPOS_PAIR_JOINT, 0);
  }
  printf("exact slow path (max_tries = 0):\n");
  exhaustive_case(&cases[2], IOUPOS_PAIR_ANCHORED, 1);
  exhaustive_case(&cases[0], IOUPOS_PAIR_ANCHORED, 1);
  exhaustive_case(&cases[16], IOUPOS_PAIR_ANCHORED, 1);
  exhaustive_case(&cases[14], IOUPOS_PAIR_ANCHORED, 1);
}

/* ---- realistic sizes: zero violations ---------------------------------------------------- */

static void realistic_case(int dims, const int shape[], const int crop[], double lo, double hi,
                           int mode, long draws) {
  ioupos_iou_sampler s;
  ioupos_rng rng;
  long d, bad = 0, outside = 0;
  double mean = 0.0;
  int st = ioupos_iou_sampler_init(&s, dims, shape, crop, lo, hi, mode);
  CHECK(st == IOUPOS_OK, "%dD [%g, %g]: init failed: %s", dims, lo, hi, ioupos_failure_reason());
  if (st) return;
  ioupos_rng_seed(&rng, 7u);
  for (d = 0; d < draws; ++d) {
    ioupos_box a, b;
    double iou;
    int k;
    ioupos_iou_sampler_draw(&s, &rng, &a, &b);
    iou = ioupos_box_iou(&a, &b);
    if (!(iou >= lo && iou <= hi)) ++bad;
    for (k = 0; k < dims; ++k)
      if (a.lo[k] < 0 || b.lo[k] < 0 || a.hi[k] > shape[k] || b.hi[k] > shape[k] ||
          a.hi[k] - a.lo[k] != crop[k] || b.hi[k] - b.lo[k] != crop[k])
        ++outside;
    mean += iou;
  }
  printf("  %dD %-12s crop %-9s [%-6g, %-4g] %-8s %ld draws, mean IoU %.4f, violations %ld\n",
         dims, dims == 2 ? "512x448" : "160x320x288", crop[0] == 48 ? "48x96x96" : "96",
         lo, hi, mode ? "joint" : "anchored", draws, mean / (double)draws, bad);
  CHECK(bad == 0, "%dD [%g, %g] mode %d: %ld of %ld pairs violate the interval", dims, lo, hi,
        mode, bad, draws);
  CHECK(outside == 0, "%dD [%g, %g] mode %d: %ld boxes outside the image or of the wrong size",
        dims, lo, hi, mode, outside);
  ioupos_iou_sampler_free(&s);
}

static void test_realistic(void) {
  static const double iv[][2] = {{0, 0}, {0.0001, 0.3}, {0.3, 0.6}, {0.6, 1}, {0.8, 1},
                                 {0.45, 0.46}};
  const int s2[2] = {512, 448}, c2[2] = {96, 96};
  const int s3[3] = {160, 320, 288}, c3[3] = {96, 96, 96}, c3b[3] = {48, 96, 96};
  long draws = tu_env_long("IOUPOS_TEST_DRAWS", 1000000);
  int i, mode;
  printf("zero violations at realistic sizes:\n");
  for (mode = 0; mode < 2; ++mode)
    for (i = 0; i < 6; ++i) {
      realistic_case(2, s2, c2, iv[i][0], iv[i][1], mode, draws);
      realistic_case(3, s3, c3, iv[i][0], iv[i][1], mode, draws);
    }
  for (mode = 0; mode < 2; ++mode) realistic_case(3, s3, c3b, 0.3, 0.6, mode, draws / 4);
}

/* ---- malformed and infeasible requests ---------------------------------------------------- */

static void expect_fail(int dims, const int *shape, const int *crop, double lo, double hi,
                        int mode, int want, const char *must1, const char *must2) {
  ioupos_iou_sampler s;
  int st = ioupos_iou_sampler_init(&s, dims, shape, crop, lo, hi, mode);
  const char *why = ioupos_failure_reason();
  CHECK(st == want, "init(dims %d, [%g, %g], mode %d) returned %s, want %s (%s)", dims, lo, hi,
        mode, ioupos_status_name(st), ioupos_status_name(want), why);
  if (must1) CHECK(strstr(why, must1) != NULL, "reason \"%s\" does not mention \"%s\"", why, must1);
  if (must2) CHECK(strstr(why, must2) != NULL, "reason \"%s\" does not mention \"%s\"", why, must2);
  if (st == IOUPOS_OK) ioupos_iou_sampler_free(&s);
}

static void test_errors(void) {
  const int sh[3] = {150, 150, 150}, cr[3] = {96, 96, 96};
  const int zero[3] = {0, 150, 150}, neg[3] = {96, -1, 96}, big[3] = {200, 96, 96};
  const int huge[3] = {2000000000, 2000000000, 2000000000}, tiny[3] = {10, 10, 10},
            two[3] = {2, 2, 2};
  ioupos_iou_sampler s;
  ioupos_box a, b;
  ioupos_rng rng;
  printf("malformed and infeasible requests:\n");
  expect_fail(1, sh, cr, 0.3, 0.6, 0, IOUPOS_EINVAL, "dims", NULL);
  expect_fail(4, sh, cr, 0.3, 0.6, 0, IOUPOS_EINVAL, "dims", NULL);
  expect_fail(2, zero, cr, 0.3, 0.6, 0, IOUPOS_EINVAL, "0x150", "96x96");
  expect_fail(2, sh, neg, 0.3, 0.6, 0, IOUPOS_EINVAL, "150x150", "96x-1");
  expect_fail(2, sh, big, 0.3, 0.6, 0, IOUPOS_EINVAL, "larger", "200x96");
  expect_fail(3, sh, big, 0.3, 0.6, 1, IOUPOS_EINVAL, "150x150x150", "200x96x96");
  expect_fail(2, sh, cr, NAN, 0.6, 0, IOUPOS_EINVAL, "nan", "150x150");
  expect_fail(2, sh, cr, 0.3, NAN, 0, IOUPOS_EINVAL, "nan", NULL);
  expect_fail(2, sh, cr, -0.1, 0.6, 0, IOUPOS_EINVAL, "[-0.1, 0.6]", "96x96");
  expect_fail(2, sh, cr, 0.3, 1.5, 0, IOUPOS_EINVAL, "[0.3, 1.5]", NULL);
  expect_fail(2, sh, cr, 0.6, 0.3, 0, IOUPOS_EINVAL, "reversed", "[0.6, 0.3]");
  expect_fail(2, sh, cr, 0.3, 0.6, 2, IOUPOS_EINVAL, "mode", NULL);
  /* the research code's 100% fallback case: [0, 0] with 96 crops in 150x150 */
  expect_fail(2, sh, cr, 0.0, 0.0, 0, IOUPOS_EINFEASIBLE, "96x96 crops in a 150x150", "[0, 0]");
  expect_fail(3, sh, cr, 0.0, 0.0, 1, IOUPOS_EINFEASIBLE, "150x150x150", "[0, 0]");
  /* no intersection volume of 2x2x2 crops has IoU in [0.45, 0.46] */
  expect_fail(3, tiny, two, 0.45, 0.46, 0, IOUPOS_EINFEASIBLE, "2x2x2", "[0.45, 0.46]");
  expect_fail(3, huge, two, 0.3, 0.6, 0, IOUPOS_ERANGE, "2000000000", "too large");
  expect_fail(3, NULL, cr, 0.3, 0.6, 0, IOUPOS_EINVAL, "NULL", NULL);
  CHECK(ioupos_iou_sampler_init(NULL, 2, sh, cr, 0.3, 0.6, 0) == IOUPOS_EINVAL, "NULL sampler");
  /* draw on an unusable sampler */
  memset(&s, 0, sizeof s);
  ioupos_rng_seed(&rng, 1);
  CHECK(ioupos_iou_sampler_draw(&s, &rng, &a, &b) == IOUPOS_EINVAL, "draw on a zeroed sampler");
  CHECK(ioupos_iou_sampler_init(&s, 2, sh, cr, 0.0, 0.0, 0) == IOUPOS_EINFEASIBLE, "infeasible");
  CHECK(ioupos_iou_sampler_draw(&s, &rng, &a, &b) == IOUPOS_EINVAL, "draw after failed init");
  ioupos_iou_sampler_free(&s); /* free after a failed init is safe */
  ioupos_iou_sampler_free(NULL);
}

/* ---- determinism and the RNG ---------------------------------------------------------------- */

static void test_determinism(void) {
  const int sh[3] = {64, 80, 72}, cr[3] = {32, 40, 24};
  ioupos_iou_sampler s;
  ioupos_rng r1, r2, r3;
  int i, mode, same12 = 1, same13 = 1;
  printf("determinism and RNG:\n");
  for (mode = 0; mode < 2; ++mode) {
    CHECK(ioupos_iou_sampler_init(&s, 3, sh, cr, 0.2, 0.7, mode) == 0, "%s",
          ioupos_failure_reason());
    ioupos_rng_seed(&r1, 99);
    ioupos_rng_seed(&r2, 99);
    ioupos_rng_seed(&r3, 100);
    same12 = same13 = 1;
    for (i = 0; i < 2000; ++i) {
      ioupos_box a1, b1, a2, b2, a3, b3;
      ioupos_iou_sampler_draw(&s, &r1, &a1, &b1);
      ioupos_iou_sampler_draw(&s, &r2, &a2, &b2);
      ioupos_iou_sampler_draw(&s, &r3, &a3, &b3);
      same12 &= !memcmp(&a1, &a2, sizeof a1) && !memcmp(&b1, &b2, sizeof b1);
      same13 &= !memcmp(&a1, &a3, sizeof a1) && !memcmp(&b1, &b3, sizeof b1);
    }
    CHECK(same12, "mode %d: the same seed gave different pairs", mode);
    CHECK(!same13, "mode %d: different seeds gave the same 2000 pairs", mode);
    ioupos_iou_sampler_free(&s);
  }
  { /* below(): uniform for a small n (32-bit path) and a huge n (64-bit path, top bucket) */
    long counts[7] = {0};
    long top = 0, n = 700000, out = 0;
    double x2 = 0.0;
    uint64_t big = 3ull << 62;
    ioupos_rng_seed(&r1, 5);
    for (i = 0; i < n; ++i) ++counts[ioupos_rng_below(&r1, 7)];
    for (i = 0; i < 7; ++i) x2 += (counts[i] - n / 7.0) * (counts[i] - n / 7.0) / (n / 7.0);
    CHECK(x2 < 40.0, "below(7) chi-square %.1f with 6 df", x2);
    for (i = 0; i < 200000; ++i) {
      uint64_t v = ioupos_rng_below(&r1, big);
      out += v >= big;
      top += v >= (2ull << 62);
    }
    CHECK(out == 0, "below(3*2^62) returned %ld values out of range", out);
    /* a modulo-biased reduction would put 1/2 of the mass in the top third */
    CHECK(fabs(top / 200000.0 - 1.0 / 3.0) < 0.01, "below(3*2^62) top third has %.4f",
          top / 200000.0);
  }
  { /* split(): deterministic, independent of the parent's later use, distinct per key */
    ioupos_rng parent, c1, c2, c3;
    ioupos_rng_seed(&parent, 42);
    c1 = ioupos_rng_split(&parent, 7);
    c2 = ioupos_rng_split(&parent, 7);
    c3 = ioupos_rng_split(&parent, 8);
    CHECK(c1.state == c2.state && c1.inc == c2.inc, "split is not deterministic");
    CHECK(ioupos_rng_u64(&c1) != ioupos_rng_u64(&c3), "keys 7 and 8 gave the same stream");
    {
      ioupos_rng p2;
      ioupos_rng_seed(&p2, 42);
      CHECK(p2.state == parent.state, "split advanced the parent");
    }
  }
  { /* uniform() lies in [0, 1) with mean 1/2 */
    double sum = 0.0, mn = 1.0, mx = 0.0;
    ioupos_rng_seed(&r1, 3);
    for (i = 0; i < 100000; ++i) {
      double u = ioupos_rng_uniform(&r1);
      sum += u;
      if (u < mn) mn = u;
      if (u > mx) mx = u;
    }
    CHECK(mn >= 0.0 && mx < 1.0 && fabs(sum / 100000.0 - 0.5) < 0.005,
          "uniform(): min %g max %g mean %g", mn, mx, sum / 100000.0);
  }
}

/* ---- box IoU --------------------------------------------------------------------------------- */

static ioupos_box mk(int dims, int l0, int h0, int l1, int h1, int l2, int h2) {
  ioupos_box b;
  memset(&b, 0, sizeof b);
  b.dims = dims;
  b.lo[0] = l0; b.hi[0] = h0;
  b.lo[1] = l1; b.hi[1] = h1;
  b.lo[2] = l2; b.hi[2] = h2;
  return b;
}

static void test_box_iou(void) {
  ioupos_box a = mk(2, 0, 2, 0, 2, 0, 0), b = mk(2, 1, 3, 1, 3, 0, 0);
  ioupos_box big = mk(2, 0, 4, 0, 4, 0, 0), in = mk(2, 1, 3, 1, 3, 0, 0);
  ioupos_box far = mk(2, 5, 7, 0, 2, 0, 0), touch = mk(2, 2, 4, 0, 2, 0, 0);
  ioupos_box c3 = mk(3, 0, 2, 0, 3, 0, 4), d3 = mk(3, 1, 3, 1, 4, 2, 6);
  ioupos_box e1 = mk(2, 3, 3, 0, 1, 0, 0), e2 = mk(2, 4, 4, 0, 1, 0, 0);
  printf("box IoU:\n");
  CHECK(ioupos_box_iou(&a, &b) == 1.0 / 7.0, "overlap 1 of 7: %.17g", ioupos_box_iou(&a, &b));
  CHECK(ioupos_box_iou(&big, &in) == 0.25, "containment: %.17g", ioupos_box_iou(&big, &in));
  CHECK(ioupos_box_iou(&a, &a) == 1.0, "identity");
  CHECK(ioupos_box_iou(&a, &far) == 0.0, "disjoint");
  CHECK(ioupos_box_iou(&a, &touch) == 0.0, "touching half-open boxes do not intersect");
  /* 3D: I = 1*2*2 = 4, volumes 24 and 24, union 44 */
  CHECK(ioupos_box_iou(&c3, &d3) == 4.0 / 44.0, "3D: %.17g", ioupos_box_iou(&c3, &d3));
  CHECK(ioupos_box_iou(&e1, &e2) == 0.0, "two empty boxes");
  CHECK(isnan(ioupos_box_iou(&a, &c3)), "mismatched dims give NaN");
  CHECK(ioupos_box_iou(&a, &b) == ioupos_box_iou(&b, &a), "symmetric");
}

int main(void) {
  test_box_iou();
  test_errors();
  test_determinism();
  test_exhaustive();
  test_realistic();
  return tu_finish("test_sampler");
}
