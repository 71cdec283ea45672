/* tests/test_local_crop.c — local crops for DINO multi-crop (ioupos.h section 4):
   ioupos_local_crop_count / _draw / _feasible.

   1. Exhaustive enumeration on small 2D and 3D images (crop smaller, larger and equal to the
      fixed box A, per axis; A at the corners, the centre and off-centre; intervals [0, 0],
      [0, 1], narrow ones, ones that hit an IoU value exactly, infeasible ones): the count equals
      the enumerated number of positions whose ioupos_box_iou with A lies in the interval, every
      draw is one of them, and a chi-square goodness-of-fit test against the uniform target passes
      (Wilson-Hilferty z < 5, fixed seeds). Where it has the power, the same statistic rejects a
      plausible wrong target (a uniform overlap vector, then a uniform position). When nothing is
      valid, draw fails with IOUPOS_EINFEASIBLE and a reason naming shape, sizes, A, interval.
   2. Counts for EVERY position of A on the small cases, and randomised small requests, against
      enumeration.
   3. Feasibility: ioupos_local_crop_feasible against brute force over all (A, B) placements,
      shape-independent (shape NULL) against a large image, and consistency with the counts.
   4. Zero violations at realistic sizes (2D 512x512, 3D 160x320x288; A from the IoU pair
      sampler), boxes inside the image with the crop size; draws per second are printed.
   5. Same seed, same boxes; different seeds differ.
   6. Malformed requests fail with IOUPOS_EINVAL / IOUPOS_ERANGE and leave out untouched. */
#include "ioupos.h"
#include "test_util.h"

#include <math.h>
#include <string.h>
#include <time.h>

/* ---- helpers --------------------------------------------------------------------------------- */

static ioupos_box mkbox(int dims, const int lo[], const int size[]) {
  ioupos_box b;
  int k;
  memset(&b, 0, sizeof b);
  b.dims = dims;
  for (k = 0; k < dims; ++k) {
    b.lo[k] = lo[k];
    b.hi[k] = lo[k] + size[k];
  }
  return b;
}

/* positions of a crop b in shape: n[k] = shape - b + 1; returns the product */
static long n_positions(int dims, const int shape[], const int b[], int n[3]) {
  long total = 1;
  int k;
  for (k = 0; k < 3; ++k) {
    n[k] = k < dims ? shape[k] - b[k] + 1 : 1;
    total *= n[k];
  }
  return total;
}

static void position_at(int dims, const int n[3], long idx, int lo[3]) {
  int k;
  lo[0] = lo[1] = lo[2] = 0;
  for (k = dims - 1; k >= 0; --k) {
    lo[k] = (int)(idx % n[k]);
    idx /= n[k];
  }
}

static long position_index(int dims, const int n[3], const ioupos_box *b) {
  long idx = 0;
  int k;
  for (k = 0; k < dims; ++k) idx = idx * n[k] + b->lo[k];
  return idx;
}

static int contains(const char *hay, const char *needle) { return strstr(hay, needle) != NULL; }

/* Chi-square of observed counts against probabilities as a Wilson-Hilferty z score (cells with
   probability 0 are skipped; the caller checks they are empty). */
static double chi_square_z(const long *obs, const double *prob, long cells, long draws, int *df) {
  double x2 = 0.0;
  long i, used = 0;
  for (i = 0; i < cells; ++i) {
    double e;
    if (prob[i] <= 0.0) continue;
    e = prob[i] * (double)draws;
    x2 += ((double)obs[i] - e) * ((double)obs[i] - e) / e;
    ++used;
  }
  *df = (int)used - 1;
  if (*df < 1) return 0.0;
  {
    double k = *df, t = 2.0 / (9.0 * k);
    return (pow(x2 / k, 1.0 / 3.0) - (1.0 - t)) / sqrt(t);
  }
}

/* The enumerated valid positions of crop b around A (valid[] of size n_positions), their
   number, and the per-position overlap-vector key. */
static long enumerate(int dims, const int shape[], const ioupos_box *A, const int b[], double lo,
                      double hi, char *valid, long *key) {
  int n[3], pos[3];
  long np = n_positions(dims, shape, b, n), i, count = 0;
  for (i = 0; i < np; ++i) {
    ioupos_box B;
    double iou;
    int k;
    position_at(dims, n, i, pos);
    B = mkbox(dims, pos, b);
    iou = ioupos_box_iou(A, &B);
    valid[i] = iou >= lo && iou <= hi;
    count += valid[i];
    if (key) {
      long kk = 0;
      for (k = 0; k < dims; ++k) {
        int l = A->lo[k] > B.lo[k] ? A->lo[k] : B.lo[k], h = A->hi[k] < B.hi[k] ? A->hi[k] : B.hi[k];
        kk = kk * 1000 + (h > l ? h - l : 0);
      }
      key[i] = kk;
    }
  }
  return count;
}

/* ---- 1. exhaustive enumeration and goodness of fit ------------------------------------------ */

typedef struct lcase {
  int dims, shape[3], a[3], b[3];
  double lo, hi;
} lcase;

static int g_fit_cases, g_infeasible_cases, g_power_checks;

static void fit_case(const lcase *c, const int alo[3]) {
  int n[3], k;
  long np = n_positions(c->dims, c->shape, c->b, n), count, i, j, draws, d, bad = 0;
  char *valid = (char *)calloc((size_t)np, 1);
  long *key = (long *)calloc((size_t)np, sizeof(long));
  long *obs = (long *)calloc((size_t)np, sizeof(long));
  double *target = (double *)calloc((size_t)np, sizeof(double));
  double *other = (double *)calloc((size_t)np, sizeof(double));
  ioupos_box A = mkbox(c->dims, alo, c->a), B;
  uint64_t got = 0;
  ioupos_rng rng;
  char label[200];
  int st;
  snprintf(label, sizeof label, "%dD %dx%dx%d A %dx%dx%d at %d,%d,%d crop %dx%dx%d [%g, %g]",
           c->dims, c->shape[0], c->shape[1], c->dims == 3 ? c->shape[2] : 1, c->a[0], c->a[1],
           c->dims == 3 ? c->a[2] : 1, alo[0], alo[1], c->dims == 3 ? alo[2] : 0, c->b[0],
           c->b[1], c->dims == 3 ? c->b[2] : 1, c->lo, c->hi);
  count = enumerate(c->dims, c->shape, &A, c->b, c->lo, c->hi, valid, key);
  st = ioupos_local_crop_count(c->dims, c->shape, &A, c->b, c->lo, c->hi, &got);
  CHECK(st == 0 && (long)got == count, "%s: count %llu (status %d %s), enumerated %ld", label,
        (unsigned long long)got, st, ioupos_failure_reason(), count);
  ioupos_rng_seed(&rng, 2024u);
  if (count == 0) {
    ioupos_box keep;
    memset(&B, 0x5a, sizeof B);
    keep = B;
    st = ioupos_local_crop_draw(c->dims, c->shape, &A, c->b, c->lo, c->hi, &rng, &B);
    {
      char sh[64], bs[64], iv[64];
      ioupos_format_shape(sh, sizeof sh, c->dims, c->shape);
      ioupos_format_shape(bs, sizeof bs, c->dims, c->b);
      snprintf(iv, sizeof iv, "[%g, %g]", c->lo, c->hi);
      CHECK(st == IOUPOS_EINFEASIBLE && contains(ioupos_failure_reason(), sh) &&
                contains(ioupos_failure_reason(), bs) && contains(ioupos_failure_reason(), iv) &&
                contains(ioupos_failure_reason(), "A = "),
            "%s: nothing valid, draw returned %d (%s)", label, st, ioupos_failure_reason());
    }
    CHECK(!memcmp(&keep, &B, sizeof B), "%s: a failed draw wrote its output", label);
    printf("  %-78s no valid position: EINFEASIBLE\n", label);
    ++g_infeasible_cases;
    goto done;
  }
  /* targets: uniform over the valid positions; the wrong one: uniform over the valid overlap
     vectors, then uniform over the positions with that vector */
  {
    long vectors = 0;
    for (i = 0; i < np; ++i) {
      long same = 0, first = 1;
      if (!valid[i]) continue;
      target[i] = 1.0 / (double)count;
      for (j = 0; j < np; ++j)
        if (valid[j] && key[j] == key[i]) {
          ++same;
          if (j < i) first = 0;
        }
      vectors += first;
      other[i] = 1.0 / (double)same; /* divided by the number of vectors below */
    }
    for (i = 0; i < np; ++i) other[i] /= (double)vectors;
  }
  draws = 40 * count;
  if (draws < 100000) draws = 100000;
  if (draws > 4000000) draws = 4000000;
  for (d = 0; d < draws; ++d) {
    long idx;
    st = ioupos_local_crop_draw(c->dims, c->shape, &A, c->b, c->lo, c->hi, &rng, &B);
    if (st) {
      ++bad;
      continue;
    }
    idx = position_index(c->dims, n, &B);
    for (k = 0; k < c->dims; ++k)
      if (B.lo[k] < 0 || B.hi[k] > c->shape[k] || B.hi[k] - B.lo[k] != c->b[k]) idx = -1;
    if (B.dims != c->dims || idx < 0 || idx >= np || !valid[idx]) {
      ++bad;
      continue;
    }
    ++obs[idx];
  }
  CHECK(bad == 0, "%s: %ld of %ld draws failed or were invalid", label, bad, draws);
  {
    int df, df2, power;
    double z = chi_square_z(obs, target, np, draws, &df);
    double z_other = chi_square_z(obs, other, np, draws, &df2), lambda = 0.0;
    for (i = 0; i < np; ++i)
      if (other[i] > 0.0)
        lambda += (double)draws * (target[i] - other[i]) * (target[i] - other[i]) / other[i];
    power = lambda > 10.0 * sqrt(2.0 * (df > 0 ? df : 1));
    printf("  %-78s valid %5ld draws %7ld z %+5.2f (df %4d)", label, count, draws, z, df);
    if (power) printf("  wrong target: z %+.0f", z_other);
    printf("\n");
    CHECK(z < 5.0, "%s: goodness of fit z = %.2f (df %d) against the uniform target", label, z,
          df);
    if (power) {
      CHECK(z_other > 5.0, "%s: the wrong target was not rejected (z = %.2f)", label, z_other);
      ++g_power_checks;
    }
  }
  ++g_fit_cases;
done:
  free(valid);
  free(key);
  free(obs);
  free(target);
  free(other);
}

static const lcase g_cases[] = {
    /* 2D, crop smaller than A */
    {2, {9, 11, 0}, {4, 5, 0}, {2, 3, 0}, 0.0, 0.0},
    {2, {9, 11, 0}, {4, 5, 0}, {2, 3, 0}, 0.0, 1.0},
    {2, {9, 11, 0}, {4, 5, 0}, {2, 3, 0}, 0.05, 0.2},
    {2, {9, 11, 0}, {4, 5, 0}, {2, 3, 0}, 0.3, 0.3},       /* = 6/20 exactly: B inside A */
    {2, {9, 11, 0}, {4, 5, 0}, {2, 3, 0}, 0.3, 1.0},       /* the maximum only */
    {2, {9, 11, 0}, {4, 5, 0}, {2, 3, 0}, 0.31, 1.0},      /* above the maximum: infeasible */
    {2, {9, 11, 0}, {4, 5, 0}, {2, 3, 0}, 0.0001, 0.1},
    {2, {9, 11, 0}, {4, 5, 0}, {2, 3, 0}, 0.111, 0.112},   /* thin, 2/18 = 0.1111 inside */
    {2, {9, 11, 0}, {4, 5, 0}, {2, 3, 0}, 0.13, 0.14},     /* thin, no value: infeasible */
    /* 2D, crop larger than A on one axis, smaller on the other */
    {2, {10, 8, 0}, {3, 6, 0}, {5, 2, 0}, 0.0, 0.0},
    {2, {10, 8, 0}, {3, 6, 0}, {5, 2, 0}, 0.1, 0.3},
    {2, {10, 8, 0}, {3, 6, 0}, {5, 2, 0}, 0.0, 1.0},
    /* 2D, crop equal to A, and the crop filling an axis (one position) */
    {2, {8, 9, 0}, {4, 4, 0}, {4, 4, 0}, 0.2, 0.6},
    {2, {6, 12, 0}, {3, 4, 0}, {6, 3, 0}, 0.1, 0.4},
    {2, {6, 12, 0}, {3, 4, 0}, {6, 3, 0}, 0.0, 0.0},
    /* 2D, crop larger than A on both axes */
    {2, {9, 9, 0}, {2, 3, 0}, {5, 4, 0}, 0.15, 0.3},
    /* 3D */
    {3, {5, 7, 8}, {3, 4, 4}, {2, 2, 3}, 0.0, 0.0},
    {3, {5, 7, 8}, {3, 4, 4}, {2, 2, 3}, 0.0, 1.0},
    {3, {5, 7, 8}, {3, 4, 4}, {2, 2, 3}, 0.05, 0.2},
    {3, {5, 7, 8}, {3, 4, 4}, {2, 2, 3}, 0.25, 0.25},     /* = 12/48: B inside A */
    {3, {5, 7, 8}, {3, 4, 4}, {2, 2, 3}, 0.26, 1.0},      /* infeasible */
    {3, {6, 5, 7}, {2, 3, 3}, {3, 2, 4}, 0.1, 0.35},
    {3, {6, 5, 7}, {2, 3, 3}, {3, 2, 4}, 0.0, 0.05},
    {3, {4, 6, 6}, {4, 3, 2}, {4, 2, 3}, 0.2, 0.5},       /* axis 0: one position for both */
};
#define N_CASES ((int)(sizeof g_cases / sizeof g_cases[0]))

/* A at the corners, the centre and one off-centre place (clipped to valid placements). */
static int a_places(const lcase *c, int places[][3]) {
  int np = 0, k, i;
  int span[3];
  for (k = 0; k < 3; ++k) span[k] = k < c->dims ? c->shape[k] - c->a[k] : 0;
  for (i = 0; i < 4; ++i) {
    for (k = 0; k < 3; ++k) {
      int v = 0;
      if (i == 0) v = 0;                                   /* low corner */
      else if (i == 1) v = span[k];                        /* high corner */
      else if (i == 2) v = span[k] / 2;                    /* centre */
      else v = (k % 2) ? span[k] : span[k] / 3;            /* mixed */
      places[np][k] = v;
    }
    ++np;
  }
  return np;
}

static void test_exhaustive(void) {
  int i, j;
  printf("exhaustive enumeration and goodness of fit:\n");
  for (i = 0; i < N_CASES; ++i) {
    int places[4][3], np = a_places(&g_cases[i], places);
    for (j = 0; j < np; ++j) fit_case(&g_cases[i], places[j]);
  }
  printf("  %d goodness-of-fit cases (%d with a power check), %d infeasible placements\n",
         g_fit_cases, g_power_checks, g_infeasible_cases);
  CHECK(g_power_checks >= 10, "only %d cases could check the power", g_power_checks);
  CHECK(g_infeasible_cases >= 10, "only %d infeasible placements", g_infeasible_cases);
}

/* ---- 2. counts for every A, and random requests ------------------------------------------- */

static int check_count(int dims, const int shape[], const ioupos_box *A, const int b[], double lo,
                       double hi) {
  int n[3];
  long np = n_positions(dims, shape, b, n), want;
  char *valid = (char *)calloc((size_t)np, 1);
  uint64_t got = 0;
  int st = ioupos_local_crop_count(dims, shape, A, b, lo, hi, &got), ok;
  want = enumerate(dims, shape, A, b, lo, hi, valid, NULL);
  ok = st == 0 && (long)got == want;
  free(valid);
  return ok;
}

static void test_all_placements(void) {
  int i, total = 0, bad = 0;
  printf("counts for every placement of A:\n");
  for (i = 0; i < N_CASES; ++i) {
    const lcase *c = &g_cases[i];
    int n[3], pos[3];
    long na = n_positions(c->dims, c->shape, c->a, n), j;
    for (j = 0; j < na; ++j) {
      ioupos_box A;
      position_at(c->dims, n, j, pos);
      A = mkbox(c->dims, pos, c->a);
      if (!check_count(c->dims, c->shape, &A, c->b, c->lo, c->hi)) {
        if (bad < 5)
          printf("  case %d, A at %d,%d,%d: count differs from enumeration\n", i, pos[0], pos[1],
                 pos[2]);
        ++bad;
      }
      ++total;
    }
  }
  printf("  %d placements\n", total);
  CHECK(bad == 0, "%d of %d placements: count differs from enumeration", bad, total);
}

/* Interval ends: random, or an exact IoU value of the sizes, or 0 / 1. */
static double random_bound(ioupos_rng *r, long va, long vb) {
  uint32_t kind = ioupos_rng_u32(r) % 4;
  long m = va < vb ? va : vb, I;
  if (kind == 0) return ioupos_rng_uniform(r) * 0.6;
  if (kind == 1) return ioupos_rng_u32(r) % 2 ? 0.0 : 1.0;
  I = (long)ioupos_rng_below(r, (uint64_t)m + 1);
  return (double)I / (double)(va + vb - I);
}

static void test_random(void) {
  ioupos_rng r;
  int t, bad = 0, bad_draw = 0, trials = 3000, draws = 0;
  printf("random small requests against enumeration:\n");
  ioupos_rng_seed(&r, 77);
  for (t = 0; t < trials; ++t) {
    int dims = 2 + (int)ioupos_rng_below(&r, 2), shape[3] = {0, 0, 0}, a[3] = {0, 0, 0},
        b[3] = {0, 0, 0}, lo3[3] = {0, 0, 0}, k;
    long va = 1, vb = 1;
    double lo, hi, tmp;
    ioupos_box A;
    for (k = 0; k < dims; ++k) {
      shape[k] = 1 + (int)ioupos_rng_below(&r, dims == 2 ? 14 : 8);
      a[k] = 1 + (int)ioupos_rng_below(&r, (uint64_t)shape[k]);
      b[k] = 1 + (int)ioupos_rng_below(&r, (uint64_t)shape[k]);
      lo3[k] = (int)ioupos_rng_below(&r, (uint64_t)(shape[k] - a[k] + 1));
      va *= a[k];
      vb *= b[k];
    }
    lo = random_bound(&r, va, vb);
    hi = random_bound(&r, va, vb);
    if (lo > hi) tmp = lo, lo = hi, hi = tmp;
    A = mkbox(dims, lo3, a);
    if (!check_count(dims, shape, &A, b, lo, hi)) {
      if (bad < 5) printf("  trial %d: count differs\n", t);
      ++bad;
    }
    { /* a few draws, each valid */
      int j;
      for (j = 0; j < 4; ++j) {
        ioupos_box B;
        double iou;
        int st = ioupos_local_crop_draw(dims, shape, &A, b, lo, hi, &r, &B);
        if (st == IOUPOS_EINFEASIBLE) break;
        iou = ioupos_box_iou(&A, &B);
        ++draws;
        for (k = 0; k < dims; ++k)
          if (B.lo[k] < 0 || B.hi[k] > shape[k] || B.hi[k] - B.lo[k] != b[k]) st = -100;
        if (st || !(iou >= lo && iou <= hi)) ++bad_draw;
      }
    }
  }
  printf("  %d requests, %d draws\n", trials, draws);
  CHECK(bad == 0, "%d of %d random requests: count differs from enumeration", bad, trials);
  CHECK(bad_draw == 0, "%d of %d random draws invalid", bad_draw, draws);
}

/* ---- 3. feasibility ------------------------------------------------------------------------ */

/* Brute force: any A of size a and B of size b inside shape with IoU in [lo, hi]? */
static int brute_feasible(int dims, const int shape[], const int a[], const int b[], double lo,
                          double hi) {
  int na[3], nb[3], pa[3], pb[3];
  long ca = n_positions(dims, shape, a, na), cb = n_positions(dims, shape, b, nb), i, j;
  for (i = 0; i < ca; ++i) {
    ioupos_box A;
    position_at(dims, na, i, pa);
    A = mkbox(dims, pa, a);
    for (j = 0; j < cb; ++j) {
      ioupos_box B;
      double iou;
      position_at(dims, nb, j, pb);
      B = mkbox(dims, pb, b);
      iou = ioupos_box_iou(&A, &B);
      if (iou >= lo && iou <= hi) return 1;
    }
  }
  return 0;
}

static void test_feasible(void) {
  ioupos_rng r;
  int t, bad = 0, bad_any = 0, bad_cons = 0, n_yes = 0, n_no = 0, i;
  printf("feasibility against brute force:\n");
  ioupos_rng_seed(&r, 31);
  for (t = 0; t < 4000; ++t) {
    int dims = 2 + (int)ioupos_rng_below(&r, 2), shape[3] = {0, 0, 0}, a[3] = {0, 0, 0},
        b[3] = {0, 0, 0}, big[3] = {0, 0, 0}, k, st, want;
    long va = 1, vb = 1;
    double lo, hi, tmp;
    for (k = 0; k < dims; ++k) {
      shape[k] = 1 + (int)ioupos_rng_below(&r, dims == 2 ? 10 : 6);
      a[k] = 1 + (int)ioupos_rng_below(&r, (uint64_t)shape[k]);
      b[k] = 1 + (int)ioupos_rng_below(&r, (uint64_t)shape[k]);
      big[k] = a[k] + b[k];
      va *= a[k];
      vb *= b[k];
    }
    lo = random_bound(&r, va, vb);
    hi = random_bound(&r, va, vb);
    if (lo > hi) tmp = lo, lo = hi, hi = tmp;
    want = brute_feasible(dims, shape, a, b, lo, hi);
    st = ioupos_local_crop_feasible(dims, shape, a, b, lo, hi);
    if (st != (want ? IOUPOS_OK : IOUPOS_EINFEASIBLE)) {
      if (bad < 5) printf("  trial %d: feasible returned %d, brute force %d\n", t, st, want);
      ++bad;
    }
    n_yes += want;
    n_no += !want;
    /* shape-independent: as an image a + b on every axis (room for every overlap) */
    want = brute_feasible(dims, big, a, b, lo, hi);
    st = ioupos_local_crop_feasible(dims, NULL, a, b, lo, hi);
    if (st != (want ? IOUPOS_OK : IOUPOS_EINFEASIBLE)) ++bad_any;
  }
  printf("  4000 requests (%d feasible, %d not)\n", n_yes, n_no);
  CHECK(bad == 0, "%d requests: feasible differs from brute force", bad);
  CHECK(bad_any == 0, "%d requests: feasible(shape NULL) differs from brute force", bad_any);
  CHECK(n_yes > 500 && n_no > 500, "feasible %d / infeasible %d: too one-sided", n_yes, n_no);
  /* consistency with the counts: feasible iff some A has a valid position */
  for (i = 0; i < N_CASES; ++i) {
    const lcase *c = &g_cases[i];
    int n[3], pos[3], any = 0, st;
    long na = n_positions(c->dims, c->shape, c->a, n), j;
    for (j = 0; j < na && !any; ++j) {
      ioupos_box A;
      uint64_t cnt = 0;
      position_at(c->dims, n, j, pos);
      A = mkbox(c->dims, pos, c->a);
      ioupos_local_crop_count(c->dims, c->shape, &A, c->b, c->lo, c->hi, &cnt);
      any = cnt > 0;
    }
    st = ioupos_local_crop_feasible(c->dims, c->shape, c->a, c->b, c->lo, c->hi);
    if (st != (any ? IOUPOS_OK : IOUPOS_EINFEASIBLE)) ++bad_cons;
  }
  CHECK(bad_cons == 0, "%d cases: feasible disagrees with the counts", bad_cons);
  { /* the reason names sizes, interval and the achievable range */
    const int a[2] = {96, 96}, b[2] = {48, 48}, s[2] = {96, 96};
    int st = ioupos_local_crop_feasible(2, NULL, a, b, 0.3, 0.6);
    CHECK(st == IOUPOS_EINFEASIBLE && contains(ioupos_failure_reason(), "48x48") &&
              contains(ioupos_failure_reason(), "96x96") &&
              contains(ioupos_failure_reason(), "[0.3, 0.6]") &&
              contains(ioupos_failure_reason(), "0.25"),
          "48 in 96, [0.3, 0.6]: %d %s", st, ioupos_failure_reason());
    CHECK(ioupos_local_crop_feasible(2, NULL, a, b, 0.25, 0.25) == 0, "the maximum 0.25: %s",
          ioupos_failure_reason());
    CHECK(ioupos_local_crop_feasible(2, NULL, a, b, 0.0, 0.0) == 0, "[0, 0] in any image");
    /* in a 96x96 image A is the whole image: the local crop is inside, IoU exactly 0.25 */
    st = ioupos_local_crop_feasible(2, s, a, b, 0.0, 0.2);
    CHECK(st == IOUPOS_EINFEASIBLE && contains(ioupos_failure_reason(), "96x96"),
          "96x96 image, [0, 0.2]: %d %s", st, ioupos_failure_reason());
  }
}

/* ---- 4. realistic sizes --------------------------------------------------------------------- */

static void realistic(int dims, const int shape[], const int a[], const int b[], double lo,
                      double hi, long draws) {
  ioupos_iou_sampler s;
  ioupos_rng rng;
  long d, bad = 0, outside = 0, infeasible = 0;
  double mean = 0.0, secs;
  clock_t t0;
  char sh[64], bs[64];
  int st = ioupos_iou_sampler_init(&s, dims, shape, a, 0.3, 0.6, IOUPOS_PAIR_ANCHORED);
  ioupos_format_shape(sh, sizeof sh, dims, shape);
  ioupos_format_shape(bs, sizeof bs, dims, b);
  CHECK(st == 0, "pair sampler: %s", ioupos_failure_reason());
  if (st) return;
  ioupos_rng_seed(&rng, 5);
  t0 = clock();
  for (d = 0; d < draws; ++d) {
    ioupos_box A, A2, B;
    double iou;
    int k;
    if (d % 16 == 0) ioupos_iou_sampler_draw(&s, &rng, &A, &A2); /* a new A now and then */
    st = ioupos_local_crop_draw(dims, shape, &A, b, lo, hi, &rng, &B);
    if (st) {
      ++infeasible;
      continue;
    }
    iou = ioupos_box_iou(&A, &B);
    if (!(iou >= lo && iou <= hi)) ++bad;
    for (k = 0; k < dims; ++k)
      if (B.lo[k] < 0 || B.hi[k] > shape[k] || B.hi[k] - B.lo[k] != b[k]) ++outside;
    mean += iou;
  }
  secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
  printf("  %dD %-11s A %-8s crop %-8s [%-5g, %-5g] %7ld draws, mean IoU %.4f, violations %ld, "
         "%.0f draws/s\n", dims, sh, dims == 2 ? "96x96" : "96^3", bs, lo, hi, draws,
         mean / (double)(draws - infeasible > 0 ? draws - infeasible : 1), bad,
         (double)draws / (secs > 0 ? secs : 1e-9));
  CHECK(bad == 0 && outside == 0 && infeasible == 0,
        "%dD crop %s [%g, %g]: %ld violations, %ld outside, %ld infeasible of %ld", dims, bs, lo,
        hi, bad, outside, infeasible, draws);
  ioupos_iou_sampler_free(&s);
}

static void test_realistic(void) {
  static const double iv[][2] = {{0, 1}, {0, 0.1}, {0.05, 0.2}, {0.1, 0.25}, {0.2, 0.25},
                                 {0.25, 0.25}, {0.0001, 0.0002}};
  static const double iv3[][2] = {{0, 1}, {0, 0.05}, {0.02, 0.1}, {0.1, 0.125}, {0.125, 0.125},
                                  {0.0001, 0.0002}};
  const int s2[2] = {512, 512}, a2[2] = {96, 96}, b2[2] = {48, 48};
  const int s3[3] = {160, 320, 288}, a3[3] = {96, 96, 96}, b3[3] = {48, 48, 48};
  const int b3b[3] = {32, 64, 64};
  long draws = tu_env_long("IOUPOS_TEST_DRAWS", 1000000);
  int i;
  printf("zero violations at realistic sizes (A from the [0.3, 0.6] pair sampler):\n");
  for (i = 0; i < 7; ++i) realistic(2, s2, a2, b2, iv[i][0], iv[i][1], draws);
  /* 3D: a 48^3 crop has IoU at most 1/8 with a 96^3 box */
  for (i = 0; i < 6; ++i) realistic(3, s3, a3, b3, iv3[i][0], iv3[i][1], draws / 50);
  realistic(3, s3, a3, b3b, 0.05, 0.2, draws / 50);
  { /* [0, 0]: the 512 image has room outside A on some axis for every A */
    realistic(2, s2, a2, b2, 0.0, 0.0, draws / 4);
  }
}

/* ---- 5. determinism -------------------------------------------------------------------------- */

static void test_determinism(void) {
  const int s3[3] = {40, 50, 60}, a3[3] = {20, 24, 30}, b3[3] = {10, 12, 9}, lo3[3] = {7, 3, 20};
  ioupos_box A = mkbox(3, lo3, a3);
  ioupos_rng r1, r2, r3;
  int i, same12 = 1, same13 = 1, ok = 1;
  printf("determinism:\n");
  ioupos_rng_seed(&r1, 11);
  ioupos_rng_seed(&r2, 11);
  ioupos_rng_seed(&r3, 12);
  for (i = 0; i < 3000; ++i) {
    ioupos_box b1, b2, b3x;
    ok &= ioupos_local_crop_draw(3, s3, &A, b3, 0.02, 0.15, &r1, &b1) == 0;
    ok &= ioupos_local_crop_draw(3, s3, &A, b3, 0.02, 0.15, &r2, &b2) == 0;
    ok &= ioupos_local_crop_draw(3, s3, &A, b3, 0.02, 0.15, &r3, &b3x) == 0;
    same12 &= !memcmp(&b1, &b2, sizeof b1);
    same13 &= !memcmp(&b1, &b3x, sizeof b1);
  }
  CHECK(ok, "draws failed: %s", ioupos_failure_reason());
  CHECK(same12, "the same seed gave different boxes");
  CHECK(!same13, "different seeds gave the same 3000 boxes");
  { /* one draw is one ioupos_rng_below(count) (documented) */
    ioupos_rng a, b;
    ioupos_box B;
    uint64_t cnt = 0;
    int same = 1;
    ioupos_local_crop_count(3, s3, &A, b3, 0.02, 0.15, &cnt);
    ioupos_rng_seed(&a, 9);
    b = a;
    for (i = 0; i < 100; ++i) {
      ioupos_local_crop_draw(3, s3, &A, b3, 0.02, 0.15, &a, &B);
      ioupos_rng_below(&b, cnt);
      same &= a.state == b.state && a.inc == b.inc;
    }
    CHECK(cnt > 0 && same, "a draw is not one below(count = %llu)", (unsigned long long)cnt);
  }
}

/* ---- 6. malformed requests -------------------------------------------------------------------- */

static void expect_draw(int dims, const int *shape, const ioupos_box *A, const int *b, double lo,
                        double hi, int want, const char *must1, const char *must2) {
  ioupos_rng rng;
  ioupos_box out, keep;
  uint64_t cnt = 1;
  int st, st2;
  ioupos_rng_seed(&rng, 1);
  memset(&out, 0x33, sizeof out);
  keep = out;
  st = ioupos_local_crop_draw(dims, shape, A, b, lo, hi, &rng, &out);
  CHECK(st == want, "draw(dims %d, [%g, %g]) returned %s, want %s (%s)", dims, lo, hi,
        ioupos_status_name(st), ioupos_status_name(want), ioupos_failure_reason());
  if (must1) CHECK(contains(ioupos_failure_reason(), must1), "reason \"%s\" lacks \"%s\"",
                   ioupos_failure_reason(), must1);
  if (must2) CHECK(contains(ioupos_failure_reason(), must2), "reason \"%s\" lacks \"%s\"",
                   ioupos_failure_reason(), must2);
  CHECK(!memcmp(&out, &keep, sizeof out), "failed draw wrote its output");
  if (want != IOUPOS_EINFEASIBLE) {
    st2 = ioupos_local_crop_count(dims, shape, A, b, lo, hi, &cnt);
    CHECK(st2 == want && cnt == 0, "count: %s, want %s", ioupos_status_name(st2),
          ioupos_status_name(want));
  }
}

static void test_errors(void) {
  const int sh[2] = {100, 90}, b[2] = {40, 30}, big[2] = {101, 30}, neg[2] = {40, 0};
  const int lo0[2] = {10, 20}, sz[2] = {50, 40}, out_lo[2] = {60, 20};
  const int huge[3] = {2000000000, 2000000000, 2000000000}, h3b[3] = {2, 2, 2};
  const int sh3[3] = {10, 10, 10};
  ioupos_box A = mkbox(2, lo0, sz), Aout = mkbox(2, out_lo, sz), A3, Aempty = A, Ah;
  ioupos_rng rng;
  ioupos_box o;
  uint64_t cnt;
  printf("malformed requests:\n");
  {
    int z[3] = {0, 0, 0}, one[3] = {1, 1, 1};
    A3 = mkbox(3, z, one);
    Ah = mkbox(3, z, h3b);
  }
  Aempty.hi[1] = Aempty.lo[1];
  expect_draw(1, sh, &A, b, 0.1, 0.5, IOUPOS_EINVAL, "dims", NULL);
  expect_draw(4, sh, &A, b, 0.1, 0.5, IOUPOS_EINVAL, "dims", NULL);
  expect_draw(3, sh3, &A, h3b, 0.1, 0.5, IOUPOS_EINVAL, "dims", NULL); /* A is 2D */
  expect_draw(2, NULL, &A, b, 0.1, 0.5, IOUPOS_EINVAL, "NULL", NULL);
  expect_draw(2, sh, NULL, b, 0.1, 0.5, IOUPOS_EINVAL, "NULL", NULL);
  expect_draw(2, sh, &A, NULL, 0.1, 0.5, IOUPOS_EINVAL, "NULL", NULL);
  expect_draw(2, sh, &Aout, b, 0.1, 0.5, IOUPOS_EINVAL, "60..110", "100x90");
  expect_draw(2, sh, &Aempty, b, 0.1, 0.5, IOUPOS_EINVAL, "non-empty", NULL);
  expect_draw(2, sh, &A, big, 0.1, 0.5, IOUPOS_EINVAL, "101x30", "100x90");
  expect_draw(2, sh, &A, neg, 0.1, 0.5, IOUPOS_EINVAL, "40x0", "positive");
  expect_draw(2, sh, &A, b, NAN, 0.5, IOUPOS_EINVAL, "nan", "40x30");
  expect_draw(2, sh, &A, b, 0.1, NAN, IOUPOS_EINVAL, "nan", NULL);
  expect_draw(2, sh, &A, b, -0.1, 0.5, IOUPOS_EINVAL, "[-0.1, 0.5]", NULL);
  expect_draw(2, sh, &A, b, 0.1, 1.5, IOUPOS_EINVAL, "[0.1, 1.5]", NULL);
  expect_draw(2, sh, &A, b, 0.5, 0.1, IOUPOS_EINVAL, "reversed", "[0.5, 0.1]");
  expect_draw(3, huge, &Ah, h3b, 0.1, 0.5, IOUPOS_ERANGE, "2000000000", "2^61");
  (void)A3;
  /* infeasible for this A: 50x40 at 10..60 x 20..60 in 100x90, crop 40x30, [0, 0]: room on
     axis 0 after A (40 rows) -> feasible; make A central on both axes with no room */
  {
    const int c_lo[2] = {30, 25}, c_sz[2] = {40, 40}, s2[2] = {100, 90};
    ioupos_box Ac = mkbox(2, c_lo, c_sz);
    expect_draw(2, s2, &Ac, b, 0.0, 0.0, IOUPOS_EINFEASIBLE, "30..70 x 25..65", "[0, 0]");
    CHECK(contains(ioupos_failure_reason(), "100x90") && contains(ioupos_failure_reason(), "40x30"),
          "infeasible reason names the image and the crop: %s", ioupos_failure_reason());
    CHECK(ioupos_local_crop_count(2, s2, &Ac, b, 0.0, 0.0, &cnt) == 0 && cnt == 0,
          "count 0 is not an error");
  }
  ioupos_rng_seed(&rng, 1);
  CHECK(ioupos_local_crop_draw(2, sh, &A, b, 0.1, 0.5, NULL, &o) == IOUPOS_EINVAL, "NULL rng");
  CHECK(ioupos_local_crop_draw(2, sh, &A, b, 0.1, 0.5, &rng, NULL) == IOUPOS_EINVAL, "NULL out");
  CHECK(ioupos_local_crop_count(2, sh, &A, b, 0.1, 0.5, NULL) == IOUPOS_EINVAL, "NULL count");
  /* feasibility: malformed */
  CHECK(ioupos_local_crop_feasible(1, sh, sz, b, 0.1, 0.5) == IOUPOS_EINVAL, "feasible dims");
  CHECK(ioupos_local_crop_feasible(2, sh, NULL, b, 0.1, 0.5) == IOUPOS_EINVAL, "feasible NULL a");
  CHECK(ioupos_local_crop_feasible(2, sh, sz, big, 0.1, 0.5) == IOUPOS_EINVAL &&
            contains(ioupos_failure_reason(), "101x30"),
        "feasible: crop larger than the image: %s", ioupos_failure_reason());
  CHECK(ioupos_local_crop_feasible(2, NULL, sz, big, 0.1, 0.5) == 0,
        "feasible(shape NULL) has no image to be larger than: %s", ioupos_failure_reason());
  CHECK(ioupos_local_crop_feasible(2, sh, sz, b, 0.6, 0.5) == IOUPOS_EINVAL, "feasible reversed");
  CHECK(ioupos_local_crop_feasible(2, sh, sz, b, NAN, 0.5) == IOUPOS_EINVAL, "feasible NaN");
  CHECK(ioupos_local_crop_feasible(3, huge, h3b, h3b, 0.1, 0.5) == IOUPOS_ERANGE,
        "feasible huge image");
}

int main(void) {
  test_errors();
  test_determinism();
  test_exhaustive();
  test_all_placements();
  test_random();
  test_feasible();
  test_realistic();
  return tu_finish("test_local_crop");
}
