/* tests/test_attention.c — ioupos.h section 12 (shifted-window attention) against MONAI 1.6.1.

   Fixtures: tests/fixtures/attention/ (.npy files) written by tests/reference/attention_fixture.py
   (SwinTransformerBlock.forward_part1 with norm1 = identity: pad, roll, partition,
   WindowAttention, reverse, roll back, crop; L = sum(out * G) and its gradients). Cases:
     shift  B 2, 14x14, C 12, 3 heads, window 7, shift 3     (shifted windows)
     pad    B 1, 9x11,  C 12, 3 heads, window 7, shift 3     (padding to 14x14 + shift)
     small  B 2, 5x6,   C 12, 3 heads, window 7 -> 5x6, shift 0 (index[:n, :n] quirk)
     3d     B 2, 4x5x2, C 6,  2 heads, window 3 -> 3x3x2, shift 1x1x0 (3D, padding)
     block_shift, block_noshift (1, 9x11, C 12, 3 heads, window 7, shift 3 / 0), block_3d
                (1, 4x5x2, C 6, 2 heads, window 3, shift 1): the whole SwinTransformerBlock
   Checks: geometry, relative position index and mask (exact), partition (exact), reverse of
   partition is the identity (exact), forward output and every gradient (tu_compare, tolerances
   below), backward accumulates (+=), a central finite-difference check of every gradient on
   random elements against an independent double-precision forward written here, and the whole
   block (with temporary test-only layer norm / GELU, see run_block).

   The window attention's plain reference (ioupos__window_attention_forward_ref / _backward_ref)
   runs in the portable build, its fast path (register-tiled kernels, threads) in the SIMD and
   OpenMP build; tests/test_threads.c, part 6, runs the fast path against the reference.

   Build: make build/test_attention (linked with the implementation build/ioupos.o, SIMD and
          OpenMP as the commands) and build/test_attention_portable (build/ioupos_portable.o).
   Run from the repository root (the fixture paths are relative). */
#include "ioupos.h"
#include "tests/test_util.h"
#include "tests/npy.h"

#include <math.h>
#include <string.h>

#define FIX "tests/fixtures/attention/"

/* Tolerances (|x - ref| <= atol + rtol * |ref|), with reasons:
   - windows, index, mask, reverse(partition(x)): exact (0, 0): pure data movement / integers.
   - out: atol 2e-6, rtol 1e-5. Values are O(1); each output is a chain of three float32
     GEMMs of length <= 49 plus a softmax; PyTorch and we round differently (MONAI scales q
     before q k^T, we pass the scale as alpha; FMA or not; sum orders): a few ulp of O(1)
     terms per stage, ~1e-7 observed; the limit is ~10x that.
   - gradients: atol 1e-4, rtol 1e-4 (biases and table, which sum over every token of the
     batch: atol 2e-4). Weight gradients are sums over all tokens (up to 392) of products of
     O(1) activations with O(1) upstream gradients, accumulated in float in an order unlike
     PyTorch's; observed errors are 1e-6 .. 1e-5 (they fail at 1e-6 + 1e-6 |ref|, pass at
     1e-5 + 1e-5 |ref|), so the limit is 10x above what we see and 100x below |grad| ~ 1e-2..1.
   - finite differences: central, h = 1e-4 on the double forward below; truncation error
     h^2 |L'''| / 6 ~ 1e-9 and rounding ~ 1e-16 |L| / h ~ 1e-10, so the difference measures
     the float32 error of the analytic gradient: |g - fd| <= 1e-5 + 1e-4 |fd| (observed worst
     ratio to this limit ~0.4, on a k-bias gradient that is mathematically 0). */
#define TOL_OUT_ATOL 2e-6
#define TOL_OUT_RTOL 1e-5
#define TOL_GRAD_ATOL 1e-4
#define TOL_GRAD_RTOL 1e-4
#define TOL_SUM_ATOL 2e-4
/* whole block (run_block): out atol 1e-5, rtol 1e-5: layer norm divides by the token's
   standard deviation and the MLP adds a 4C-long float sum, so the float error of out is a few
   times that of the attention alone (~1e-6 observed on values up to ~5); gradients as above. */
#define TOL_BLOCK_OUT_ATOL 1e-5
#define TOL_BLOCK_OUT_RTOL 1e-5
#define FD_H 1e-4
#define FD_ATOL 1e-5
#define FD_RTOL 1e-4
#define FD_PER_TENSOR 6

typedef struct attn_case {
  const char *name;
  int ndim, batch, size[3], C, NH, window[3], shift[3];
} attn_case;

static const attn_case cases[] = {
    {"shift", 2, 2, {14, 14, 1}, 12, 3, {7, 7, 1}, {3, 3, 0}},
    {"pad", 2, 1, {9, 11, 1}, 12, 3, {7, 7, 1}, {3, 3, 0}},
    {"small", 2, 2, {5, 6, 1}, 12, 3, {7, 7, 1}, {3, 3, 0}},
    {"3d", 3, 2, {4, 5, 2}, 6, 2, {3, 3, 3}, {1, 1, 1}},
};

static ioupos_rng rng;

/* Loads FIX<case>_<what>.npy; returns NULL (and counts a failure) when missing. n: count. */
static double *load(const char *cname, const char *what, long *n, int required) {
  char path[256];
  tu_npy a;
  FILE *f;
  snprintf(path, sizeof path, FIX "%s_%s.npy", cname, what);
  if (!required) {
    f = fopen(path, "rb");
    if (!f) return NULL;
    fclose(f);
  }
  if (tu_npy_load(path, &a) != 0) {
    CHECK(0, "fixture %s missing or unreadable (run tests/reference/attention_fixture.py)", path);
    return NULL;
  }
  if (n) *n = a.count;
  return a.data;
}

static float *to_float(const double *d, long n) {
  float *f = (float *)malloc(sizeof(float) * (size_t)(n ? n : 1));
  long i;
  for (i = 0; i < n; ++i) f[i] = (float)d[i];
  return f;
}

static float *zeros(size_t n) { return (float *)calloc(n ? n : 1, sizeof(float)); }

/* Independent double forward of the whole path: L = sum(out * G). Uses only the geometry (the
   token -> source map is re-derived here from pad + roll), the index and the mask (both checked
   exactly against MONAI). */
typedef struct dparams {
  double *x, *qw, *qb, *pw, *pb, *table, *G;
} dparams;

static long ref_source(const ioupos_swin_geom *g, int wg, int t) {
  int d, p[3], w = wg % g->nwin, b = wg / g->nwin;
  long row = b;
  for (d = g->ndim - 1; d >= 0; --d) {
    p[d] = (w % g->grid[d]) * g->window[d] + t % g->window[d];
    w /= g->grid[d];
    t /= g->window[d];
  }
  for (d = 0; d < g->ndim; ++d) {
    int q = ((p[d] + g->shift[d]) % g->padded[d] + g->padded[d]) % g->padded[d];
    if (q >= g->size[d]) return -1;
    row = row * g->size[d] + q;
  }
  return row;
}

static double ref_loss(const ioupos_swin_geom *g, const dparams *P, const int *index,
                       const float *mask, int C, int NH) {
  int N = g->ntok, hd = C / NH, wg, t, o, c, h, i, j, d;
  double *xw = (double *)malloc(sizeof(double) * (size_t)N * C);
  double *qkv = (double *)malloc(sizeof(double) * (size_t)N * 3 * C);
  double *y = (double *)malloc(sizeof(double) * (size_t)N * C);
  double *s = (double *)malloc(sizeof(double) * (size_t)N);
  long *src = (long *)malloc(sizeof(long) * (size_t)N);
  double L = 0.0, scale = 1.0 / sqrt((double)hd);
  for (wg = 0; wg < g->batch * g->nwin; ++wg) {
    for (t = 0; t < N; ++t) {
      src[t] = ref_source(g, wg, t);
      for (c = 0; c < C; ++c) xw[t * C + c] = src[t] >= 0 ? P->x[src[t] * C + c] : 0.0;
      for (o = 0; o < 3 * C; ++o) {
        double a = P->qb[o];
        for (c = 0; c < C; ++c) a += P->qw[o * C + c] * xw[t * C + c];
        qkv[t * 3 * C + o] = a;
      }
    }
    for (h = 0; h < NH; ++h)
      for (i = 0; i < N; ++i) {
        double mx = -1e300, sum = 0.0;
        for (j = 0; j < N; ++j) {
          double a = 0.0;
          for (d = 0; d < hd; ++d)
            a += qkv[i * 3 * C + h * hd + d] * scale * qkv[j * 3 * C + C + h * hd + d];
          a += P->table[index[i * N + j] * NH + h];
          if (mask) a += mask[((size_t)(wg % g->nwin) * N + i) * N + j];
          s[j] = a;
          if (a > mx) mx = a;
        }
        for (j = 0; j < N; ++j) sum += (s[j] = exp(s[j] - mx));
        for (d = 0; d < hd; ++d) {
          double a = 0.0;
          for (j = 0; j < N; ++j) a += s[j] / sum * qkv[j * 3 * C + 2 * C + h * hd + d];
          y[i * C + h * hd + d] = a;
        }
      }
    for (t = 0; t < N; ++t) {
      if (src[t] < 0) continue;
      for (c = 0; c < C; ++c) {
        double a = P->pb[c];
        for (o = 0; o < C; ++o) a += P->pw[c * C + o] * y[t * C + o];
        L += a * P->G[src[t] * C + c];
      }
    }
  }
  free(xw), free(qkv), free(y), free(s), free(src);
  return L;
}

static void run_case(const attn_case *k) {
  ioupos_swin_geom g;
  long nx = 0, nqw = 0, nqb = 0, npw = 0, npb = 0, nt = 0, n;
  double *x, *G, *qw, *qb, *pw, *pb, *table, *ref;
  float *fx, *fG, *fqw, *fqb, *fpw, *fpb, *ftab, *mask = NULL, *win, *wout, *acts, *scratch, *out;
  float *dx, *dqw, *dqb, *dpw, *dpb, *dtab, *dwin_in, *dwin_out, *back;
  int *index, rows, BW, N, C = k->C, NH = k->NH, st;
  size_t nwtok;
  long i;
  printf("case %s\n", k->name);
  st = ioupos_swin_geom_init(&g, k->ndim, k->batch, k->size, k->window, k->shift);
  CHECK(st == 0, "%s: geom_init: %s", k->name, ioupos_failure_reason());
  if (st) return;
  x = load(k->name, "x", &nx, 1);
  G = load(k->name, "G", NULL, 1);
  qw = load(k->name, "qkv_w", &nqw, 1);
  qb = load(k->name, "qkv_b", &nqb, 1);
  pw = load(k->name, "proj_w", &npw, 1);
  pb = load(k->name, "proj_b", &npb, 1);
  table = load(k->name, "table", &nt, 1);
  if (!x || !G || !qw || !qb || !pw || !pb || !table) return;
  rows = ioupos_swin_table_rows(&g);
  CHECK(nt == (long)rows * NH, "%s: table has %ld values, expected %d x %d", k->name, nt, rows, NH);
  CHECK(nqw == 3L * C * C && nqb == 3L * C && npw == (long)C * C && npb == C,
        "%s: weight shapes", k->name);
  BW = g.batch * g.nwin;
  N = g.ntok;
  nwtok = (size_t)BW * N * C;
  fx = to_float(x, nx), fG = to_float(G, nx), fqw = to_float(qw, nqw), fqb = to_float(qb, nqb);
  fpw = to_float(pw, npw), fpb = to_float(pb, npb), ftab = to_float(table, nt);

  /* relative position index: exact */
  index = (int *)malloc(sizeof(int) * (size_t)N * N);
  ioupos_swin_relative_index(index, &g);
  ref = load(k->name, "relidx", &n, 0);
  if (ref) {
    long bad = 0;
    CHECK(n == (long)N * N, "%s: relidx has %ld values, expected %d^2", k->name, n, N);
    for (i = 0; i < n && i < (long)N * N; ++i) bad += index[i] != (int)ref[i];
    CHECK(bad == 0, "%s: %ld relative index entries differ", k->name, bad);
    free(ref);
  }
  /* mask: exact (0 / -100) */
  if (g.shifted) {
    mask = zeros((size_t)g.nwin * N * N);
    ioupos_swin_attn_mask(mask, &g);
    ref = load(k->name, "mask", &n, 0);
    if (ref) {
      CHECK(n == (long)g.nwin * N * N, "%s: mask size %ld", k->name, n);
      if (n == (long)g.nwin * N * N)
        CHECK(tu_compare("mask", mask, ref, n, 0.0, 0.0) == 0, "%s: mask", k->name);
      free(ref);
    }
  }
  /* partition: exact; reverse(partition(x)) == x exactly */
  win = zeros(nwtok);
  ioupos_window_partition_forward(win, fx, &g, C);
  ref = load(k->name, "windows", &n, 0);
  if (ref) {
    CHECK(n == (long)nwtok, "%s: windows size %ld vs %lu", k->name, n, (unsigned long)nwtok);
    if (n == (long)nwtok)
      CHECK(tu_compare("windows", win, ref, n, 0.0, 0.0) == 0, "%s: windows", k->name);
    free(ref);
  }
  back = zeros((size_t)nx);
  ioupos_window_reverse_forward(back, win, &g, C);
  CHECK(memcmp(back, fx, sizeof(float) * (size_t)nx) == 0, "%s: reverse(partition(x)) != x",
        k->name);

  /* forward */
  acts = zeros(ioupos_window_attention_acts_size(BW, N, C, NH));
  scratch = zeros(ioupos_window_attention_scratch_size(BW, N, C, NH));
  wout = zeros(nwtok);
  out = zeros((size_t)nx);
  st = ioupos_window_attention_forward(wout, acts, win, fqw, fqb, fpw, fpb, ftab, index, mask, BW,
                                       N, C, NH, g.nwin);
  CHECK(st == 0, "%s: forward: %s", k->name, ioupos_failure_reason());
  ioupos_window_reverse_forward(out, wout, &g, C);
  ref = load(k->name, "out", &n, 1);
  if (ref) {
    CHECK(tu_compare("out", out, ref, nx, TOL_OUT_ATOL, TOL_OUT_RTOL) == 0, "%s: out", k->name);
    free(ref);
  }

  /* backward of L = sum(out * G); gradients accumulate, so start from zero */
  dwin_out = zeros(nwtok), dwin_in = zeros(nwtok), dx = zeros((size_t)nx);
  dqw = zeros((size_t)nqw), dqb = zeros((size_t)nqb), dpw = zeros((size_t)npw);
  dpb = zeros((size_t)npb), dtab = zeros((size_t)nt);
  ioupos_window_reverse_backward(dwin_out, fG, &g, C);
  st = ioupos_window_attention_backward(dwin_in, dqw, dqb, dpw, dpb, dtab, scratch, dwin_out, acts,
                                        win, fqw, fpw, index, BW, N, C, NH);
  CHECK(st == 0, "%s: backward: %s", k->name, ioupos_failure_reason());
  ioupos_window_partition_backward(dx, dwin_in, &g, C);
  {
    struct {
      const char *what;
      const float *got;
      long n;
      double atol;
    } grads[] = {{"dx", dx, nx, TOL_GRAD_ATOL},          {"dqkv_w", dqw, nqw, TOL_GRAD_ATOL},
                 {"dqkv_b", dqb, nqb, TOL_SUM_ATOL},     {"dproj_w", dpw, npw, TOL_GRAD_ATOL},
                 {"dproj_b", dpb, npb, TOL_SUM_ATOL},    {"dtable", dtab, nt, TOL_SUM_ATOL}};
    size_t q;
    for (q = 0; q < sizeof grads / sizeof grads[0]; ++q) {
      long m = 0;
      ref = load(k->name, grads[q].what, &m, 1);
      if (!ref) continue;
      CHECK(m == grads[q].n, "%s: %s size %ld vs %ld", k->name, grads[q].what, m, grads[q].n);
      if (m == grads[q].n)
        CHECK(tu_compare(grads[q].what, grads[q].got, ref, m, grads[q].atol, TOL_GRAD_RTOL) == 0,
              "%s: %s", k->name, grads[q].what);
      free(ref);
    }
  }

  /* backward ACCUMULATES: a second call adds the gradients again, giving 2 g up to rounding
     (the GEMM adds into C inside its kernel, the table sums over windows in float), so the
     limit is 1e-5 (|2 g| + max |g| of the tensor): a call that overwrote (=) instead of adding
     would be off by |g|, about 4 orders of magnitude more. */
  {
    float *gs[6];
    float *keep[6];
    long ns[6];
    int q;
    long bad = 0;
    gs[0] = dwin_in, gs[1] = dqw, gs[2] = dqb, gs[3] = dpw, gs[4] = dpb, gs[5] = dtab;
    ns[0] = (long)nwtok, ns[1] = nqw, ns[2] = nqb, ns[3] = npw, ns[4] = npb, ns[5] = nt;
    for (q = 0; q < 6; ++q) {
      keep[q] = zeros((size_t)ns[q]);
      memcpy(keep[q], gs[q], sizeof(float) * (size_t)ns[q]);
    }
    st = ioupos_window_attention_backward(dwin_in, dqw, dqb, dpw, dpb, dtab, scratch, dwin_out,
                                          acts, win, fqw, fpw, index, BW, N, C, NH);
    CHECK(st == 0, "%s: second backward: %s", k->name, ioupos_failure_reason());
    for (q = 0; q < 6; ++q) {
      double mx = 0.0;
      for (i = 0; i < ns[q]; ++i) mx = fabs(keep[q][i]) > mx ? fabs(keep[q][i]) : mx;
      for (i = 0; i < ns[q]; ++i)
        bad += !(fabs(gs[q][i] - 2.0 * keep[q][i]) <= 1e-5 * (fabs(2.0 * keep[q][i]) + mx));
      memcpy(gs[q], keep[q], sizeof(float) * (size_t)ns[q]);
      free(keep[q]);
    }
    CHECK(bad == 0, "%s: %ld gradient elements are not doubled by a second backward", k->name,
          bad);
  }

  /* finite differences on a double forward */
  {
    dparams P;
    struct {
      const char *what;
      double *p;
      const float *g;
      long n;
    } fd[6];
    int q, e;
    double worst = 0.0;
    const char *worst_what = "";
    P.x = x, P.qw = qw, P.qb = qb, P.pw = pw, P.pb = pb, P.table = table, P.G = G;
    fd[0].what = "x", fd[0].p = x, fd[0].g = dx, fd[0].n = nx;
    fd[1].what = "qkv_w", fd[1].p = qw, fd[1].g = dqw, fd[1].n = nqw;
    fd[2].what = "qkv_b", fd[2].p = qb, fd[2].g = dqb, fd[2].n = nqb;
    fd[3].what = "proj_w", fd[3].p = pw, fd[3].g = dpw, fd[3].n = npw;
    fd[4].what = "proj_b", fd[4].p = pb, fd[4].g = dpb, fd[4].n = npb;
    fd[5].what = "table", fd[5].p = table, fd[5].g = dtab, fd[5].n = nt;
    for (q = 0; q < 6; ++q)
      for (e = 0; e < FD_PER_TENSOR; ++e) {
        long at = (long)ioupos_rng_below(&rng, (uint64_t)fd[q].n);
        double keep = fd[q].p[at], lp, lm, num, err;
        if (fd[q].p == table && e < FD_PER_TENSOR / 2) /* half on rows the index uses */
          at = (long)index[ioupos_rng_below(&rng, (uint64_t)N * N)] * NH +
               (long)ioupos_rng_below(&rng, (uint64_t)NH),
          keep = fd[q].p[at];
        fd[q].p[at] = keep + FD_H;
        lp = ref_loss(&g, &P, index, mask, C, NH);
        fd[q].p[at] = keep - FD_H;
        lm = ref_loss(&g, &P, index, mask, C, NH);
        fd[q].p[at] = keep;
        num = (lp - lm) / (2 * FD_H);
        err = fabs(fd[q].g[at] - num);
        CHECK(err <= FD_ATOL + FD_RTOL * fabs(num), "%s: fd %s[%ld]: analytic %.8g vs fd %.8g",
              k->name, fd[q].what, at, (double)fd[q].g[at], num);
        if (err / (FD_ATOL + FD_RTOL * fabs(num)) > worst)
          worst = err / (FD_ATOL + FD_RTOL * fabs(num)), worst_what = fd[q].what;
      }
    printf("  finite differences: %d elements, worst error / tolerance %.3g (%s)\n",
           6 * FD_PER_TENSOR, worst, worst_what);
  }

  free(x), free(G), free(qw), free(qb), free(pw), free(pb), free(table);
  free(fx), free(fG), free(fqw), free(fqb), free(fpw), free(fpb), free(ftab), free(mask);
  free(index), free(win), free(back), free(acts), free(scratch), free(wout), free(out);
  free(dwin_out), free(dwin_in), free(dx), free(dqw), free(dqb), free(dpw), free(dpb), free(dtab);
}

/* The block's parameters, in the order of its fixture files (<case>_<name>.npy, gradients
   <case>_d_<name>.npy): MONAI's state-dict names within one SwinTransformerBlock. */
enum {
  P_N1W, P_N1B, P_QW, P_QB, P_PW, P_PB, P_TAB, P_N2W, P_N2B, P_F1W, P_F1B, P_F2W, P_F2B, P_COUNT
};
static const char *const pnames[P_COUNT] = {
    "norm1.weight",     "norm1.bias",       "attn.qkv.weight",
    "attn.qkv.bias",    "attn.proj.weight", "attn.proj.bias",
    "attn.relative_position_bias_table",    "norm2.weight",
    "norm2.bias",       "mlp.linear1.weight", "mlp.linear1.bias",
    "mlp.linear2.weight", "mlp.linear2.bias"};

/* ---------------------------------------------------------------------------------------------
   The whole SwinTransformerBlock (MONAI), composed from ioupos_swin_attention_* and the layer norm and
   GELU of section 11. Tolerances: TOL_BLOCK_OUT_* for out, the gradient ones above
   for every gradient (the block's sums are of the same length or shorter). */

static void run_block(const attn_case *k) {
  ioupos_swin_geom g;
  char what[96];
  double *dp[P_COUNT], *x, *G, *ref;
  float *p[P_COUNT], *dpar[P_COUNT], *fx, *fG, *h1, *m1, *r1, *a, *x1, *h2, *m2, *r2, *f1, *f1g,
      *out, *acts, *scratch, *mask = NULL, *dx, *dx1, *dh1, *dh2, *df1, *df1g, *dm;
  long np[P_COUNT], nx = 0, n;
  int *index, q, C = k->C, NH = k->NH, H4 = 4 * k->C, T, st, ok = 1;
  printf("case %s (whole block)\n", k->name);
  if (ioupos_swin_geom_init(&g, k->ndim, k->batch, k->size, k->window, k->shift)) {
    CHECK(0, "%s: geom_init: %s", k->name, ioupos_failure_reason());
    return;
  }
  x = load(k->name, "x", &nx, 1);
  G = load(k->name, "G", NULL, 1);
  for (q = 0; q < P_COUNT; ++q) {
    dp[q] = load(k->name, pnames[q], &np[q], 1);
    ok = ok && dp[q];
  }
  if (!x || !G || !ok) return;
  T = (int)(nx / C);
  for (q = 0; q < P_COUNT; ++q) p[q] = to_float(dp[q], np[q]), dpar[q] = zeros((size_t)np[q]);
  fx = to_float(x, nx), fG = to_float(G, nx);
  index = (int *)malloc(sizeof(int) * (size_t)g.ntok * g.ntok);
  ioupos_swin_relative_index(index, &g);
  if (g.shifted) {
    mask = zeros((size_t)g.nwin * g.ntok * g.ntok);
    ioupos_swin_attn_mask(mask, &g);
  }
  h1 = zeros((size_t)nx), m1 = zeros((size_t)T), r1 = zeros((size_t)T), a = zeros((size_t)nx);
  x1 = zeros((size_t)nx), h2 = zeros((size_t)nx), m2 = zeros((size_t)T), r2 = zeros((size_t)T);
  f1 = zeros((size_t)T * H4), f1g = zeros((size_t)T * H4), out = zeros((size_t)nx);
  acts = zeros(ioupos_swin_attention_acts_size(&g, C, NH));
  scratch = zeros(ioupos_swin_attention_scratch_size(&g, C, NH));
  /* forward: x1 = x + attn(norm1(x)); out = x1 + fc2(gelu(fc1(norm2(x1)))) */
  ioupos_layernorm_forward(h1, m1, r1, fx, p[P_N1W], p[P_N1B], T, C, 1e-5f);
  st = ioupos_swin_attention_forward(a, acts, scratch, h1, p[P_QW], p[P_QB], p[P_PW], p[P_PB],
                                     p[P_TAB], index, mask, &g, C, NH);
  CHECK(st == 0, "%s: attention forward: %s", k->name, ioupos_failure_reason());
  for (n = 0; n < nx; ++n) x1[n] = fx[n] + a[n];
  ioupos_layernorm_forward(h2, m2, r2, x1, p[P_N2W], p[P_N2B], T, C, 1e-5f);
  st = ioupos_linear_forward(f1, h2, p[P_F1W], p[P_F1B], T, C, H4);
  ioupos_gelu_forward(f1g, f1, (size_t)T * H4);
  if (!st) st = ioupos_linear_forward(out, f1g, p[P_F2W], p[P_F2B], T, H4, C);
  CHECK(st == 0, "%s: mlp forward", k->name);
  for (n = 0; n < nx; ++n) out[n] += x1[n];
  ref = load(k->name, "out", &n, 1);
  if (ref) {
    CHECK(tu_compare("out", out, ref, nx, TOL_BLOCK_OUT_ATOL, TOL_BLOCK_OUT_RTOL) == 0,
          "%s: out", k->name);
    free(ref);
  }
  /* backward of L = sum(out * G) */
  dx = zeros((size_t)nx), dx1 = zeros((size_t)nx), dh1 = zeros((size_t)nx), dh2 = zeros((size_t)nx);
  df1 = zeros((size_t)T * H4), df1g = zeros((size_t)T * H4), dm = zeros((size_t)nx);
  memcpy(dx1, fG, sizeof(float) * (size_t)nx); /* residual */
  st = ioupos_linear_backward(df1g, dpar[P_F2W], dpar[P_F2B], fG, f1g, p[P_F2W], T, H4, C);
  ioupos_gelu_backward(df1, f1, df1g, (size_t)T * H4);
  if (!st) st = ioupos_linear_backward(dh2, dpar[P_F1W], dpar[P_F1B], df1, h2, p[P_F1W], T, C, H4);
  ioupos_layernorm_backward(dx1, dpar[P_N2W], dpar[P_N2B], dh2, x1, p[P_N2W], m2, r2, T, C);
  memcpy(dx, dx1, sizeof(float) * (size_t)nx); /* residual */
  if (!st)
    st = ioupos_swin_attention_backward(dh1, dpar[P_QW], dpar[P_QB], dpar[P_PW], dpar[P_PB],
                                        dpar[P_TAB], scratch, dx1, acts, p[P_QW], p[P_PW], index,
                                        &g, C, NH);
  CHECK(st == 0, "%s: backward: %s", k->name, ioupos_failure_reason());
  ioupos_layernorm_backward(dx, dpar[P_N1W], dpar[P_N1B], dh1, fx, p[P_N1W], m1, r1, T, C);
  ref = load(k->name, "dx", &n, 1);
  if (ref) {
    CHECK(tu_compare("dx", dx, ref, nx, TOL_GRAD_ATOL, TOL_GRAD_RTOL) == 0, "%s: dx", k->name);
    free(ref);
  }
  for (q = 0; q < P_COUNT; ++q) {
    /* 1-D parameters (biases, norm weights) and the table sum over every token: TOL_SUM_ATOL */
    int sums = q == P_TAB || strstr(pnames[q], "bias") || strstr(pnames[q], "norm");
    snprintf(what, sizeof what, "d_%s", pnames[q]);
    ref = load(k->name, what, &n, 1);
    if (!ref) continue;
    CHECK(n == np[q], "%s: %s size", k->name, what);
    if (n == np[q])
      CHECK(tu_compare(what, dpar[q], ref, n, sums ? TOL_SUM_ATOL : TOL_GRAD_ATOL, TOL_GRAD_RTOL)
                == 0, "%s: %s", k->name, what);
    free(ref);
  }
  for (q = 0; q < P_COUNT; ++q) free(dp[q]), free(p[q]), free(dpar[q]);
  free(x), free(G), free(fx), free(fG), free(index), free(mask), free(h1), free(m1), free(r1);
  free(a), free(x1), free(h2), free(m2), free(r2), free(f1), free(f1g), free(out), free(acts);
  free(scratch), free(dx), free(dx1), free(dh1), free(dh2), free(df1), free(df1g), free(dm);
}

static const attn_case block_cases[] = {
    {"block_shift", 2, 1, {9, 11, 1}, 12, 3, {7, 7, 1}, {3, 3, 0}},
    {"block_noshift", 2, 1, {9, 11, 1}, 12, 3, {7, 7, 1}, {0, 0, 0}},
    {"block_3d", 3, 1, {4, 5, 2}, 6, 2, {3, 3, 3}, {1, 1, 1}},
};

/* get_window_size / padding rules and argument errors, without fixtures */
static void geometry_rules(void) {
  ioupos_swin_geom g;
  int s96[2] = {24, 24}, w7[2] = {7, 7}, sh3[2] = {3, 3}, s3[2] = {3, 3}, s7[2] = {7, 9};
  int bad_shift[2] = {7, 3};
  CHECK(ioupos_swin_geom_init(&g, 2, 1, s96, w7, sh3) == 0, "24x24");
  CHECK(g.padded[0] == 28 && g.nwin == 16 && g.ntok == 49 && g.shifted, "24x24 padded to 28");
  CHECK(ioupos_swin_geom_init(&g, 2, 1, s3, w7, sh3) == 0, "3x3");
  CHECK(g.window[0] == 3 && g.shift[0] == 0 && g.nwin == 1 && g.ntok == 9 && !g.shifted,
        "3x3 map: window 3, no shift");
  CHECK(ioupos_swin_geom_init(&g, 2, 1, s7, w7, sh3) == 0, "7x9");
  CHECK(g.window[0] == 7 && g.shift[0] == 0 && g.shift[1] == 3 && g.shifted && g.padded[1] == 14,
        "7x9: size == window gives no shift on that axis only");
  CHECK(ioupos_swin_geom_init(&g, 4, 1, s7, w7, sh3) == IOUPOS_EINVAL, "ndim 4 refused");
  CHECK(ioupos_swin_geom_init(&g, 2, 1, s7, w7, bad_shift) == IOUPOS_EINVAL, "shift >= window");
}

int main(void) {
  size_t c;
  ioupos_rng_seed(&rng, 20260601);
  printf("gemm kernel: %s\n", ioupos_gemm_simd() ? "AVX2+FMA" : "portable");
  geometry_rules();
  for (c = 0; c < sizeof cases / sizeof cases[0]; ++c) run_case(&cases[c]);
  for (c = 0; c < sizeof block_cases / sizeof block_cases[0]; ++c) run_block(&block_cases[c]);
  return tu_finish("test_attention");
}
