/* tests/test_segeval.c — section 20 of ioupos.h against MONAI 1.6.1 / PyTorch 2.15.0 (fixtures written by
   tests/reference/segeval_fixture.py into tests/fixtures/segeval), plus finite differences,
   hand-computed metric cases and argument checks.

     1. DiceCE (5 fixture cases): the loss, its Dice and cross-entropy parts and d loss / d logits
        against MONAI's DiceCELoss + autograd (tolerances with their reasons at each cmp); the
        cross-entropy part against ioupos_crossentropy_forward on the transposed logits; backward
        ACCUMULATES (a second call gives exactly twice the first); finite differences in double
        ((L(x + h) - L(x - h)) / (x+h - x-h), h = 1e-3, on the float logits; L is the double the
        forward returns).
     2. Sliding window (6 fixture cases, 2D and 3D, padding, roi fall-back, the research roi 96):
        the window starts, intervals and predictor call sizes against MONAI, the blended output
        against sliding_window_inference with the same deterministic predictor; independence of
        sw_batch_size (bit-identical), constant and identity predictors (the count map), the
        predictor's failure status, bad arguments.
     3. Metrics: MONAI DiceMetric per slice (ignore_empty) per (slice, class), per slice and
        aggregated; per-case DSC against MONAI compute_dice; the data-set averages against numpy;
        the FLARE22 both-empty = 1 policy; hand-computed cases (perfect, shifted, empty in one or
        both, all-background slices); argmax against torch.argmax (ties, NaN).
     4. The table and JSON writers: the buffer protocol, a JSON syntax check, the numbers.
     5. ioupos_seg_predict (section 22): a small SwinUNETR over an image of many windows gives
        bit-identical logits for sw_batch_size 1 (each window alone), 3, 5 and 64 (the windows
        of a call chunked through the model IOUPOS_SEG_MODEL_BATCH at a time), equal to
        ioupos_swinunetr_forward on one window where the image is one window; bad arguments.
   Prints the worst element of each comparison and "test_segeval: N checks passed, M failed";
   exits 1 on any failure. Run from the repository root (fixture paths are relative). */
#include "ioupos.h"
#include "tests/npy.h"
#include "tests/test_util.h"

#include <math.h>
#include <string.h>

#define FIX "tests/fixtures/segeval/"
#define FD_SAMPLES 12

#include "tests/fixture_util.h"
#include "tests/fd_check.h"

static int *ialloc(long n) { return (int *)(void *)talloc(n); }

static int *ld_int(const char *c, const char *name, long n) {
  float *f = ld(c, name, n);
  int *p = ialloc(n);
  long i;
  for (i = 0; i < n; ++i) p[i] = (int)f[i];
  return p;
}

static int has(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

/* ============================================================================================ */
/* ---- 1. DiceCE ---- */
static float *dc_x, *dc_p;
static double *dc_st;
static int *dc_t;
static int dc_B, dc_K;
static long dc_S;
static ioupos_dicece_opts dc_o;
static double dc_fwd(void) {
  return ioupos_dicece_forward(dc_p, dc_st, dc_x, dc_t, dc_B, dc_K, dc_S, &dc_o);
}

static void test_dicece(const char *c) {
  float *meta = ld(c, "meta", 9), *dx, *g1, f;
  long n, i;
  int nd, b, k;
  printf("%s\n", c);
  dc_B = (int)meta[0], dc_K = (int)meta[1], nd = (int)meta[2];
  dc_S = (long)meta[3] * (long)meta[4] * (long)meta[5];
  ioupos_dicece_defaults(&dc_o);
  dc_o.include_background = (int)meta[6];
  dc_o.lambda_dice = meta[7];
  dc_o.lambda_ce = meta[8];
  printf("  B %d K %d %dD S %ld include_background %d lambda %g %g\n", dc_B, dc_K, nd, dc_S,
         dc_o.include_background, dc_o.lambda_dice, dc_o.lambda_ce);
  n = (long)dc_B * dc_K * dc_S;
  dc_x = ld(c, "logits", n);
  dc_t = ld_int(c, "target", (long)dc_B * dc_S);
  dc_p = talloc(n);
  dc_st = (double *)(void *)talloc((long)(2 * IOUPOS_DICECE_STATS(dc_B, dc_K)));
  dx = talloc(n);
  f = (float)dc_fwd();
  /* O(1) values from torch's float32 softmax and <= 60-term float sums: a few ulps */
  cmp(c, "loss", &f, 1, 1e-6, 1e-6);
  f = (float)dc_st[3 * (size_t)dc_B * dc_K];
  cmp(c, "dice", &f, 1, 1e-6, 1e-6); /* as the loss */
  f = (float)dc_st[3 * (size_t)dc_B * dc_K + 1];
  cmp(c, "ce", &f, 1, 1e-6, 1e-6); /* as the loss */
  {
    /* the cross-entropy part is ioupos.h's cross-entropy on channels-last logits */
    float *xt = talloc(n), *pt = talloc(n);
    int *tt = ialloc((long)dc_B * dc_S);
    double ce;
    for (b = 0; b < dc_B; ++b)
      for (i = 0; i < dc_S; ++i) {
        for (k = 0; k < dc_K; ++k)
          xt[((size_t)b * dc_S + i) * dc_K + k] = dc_x[((size_t)b * dc_K + k) * dc_S + i];
        tt[(size_t)b * dc_S + i] = dc_t[(size_t)b * dc_S + i];
      }
    ce = ioupos_crossentropy_forward(pt, xt, tt, (int)(dc_B * dc_S), dc_K);
    CHECK(fabs(ce - dc_st[3 * (size_t)dc_B * dc_K + 1]) <= 1e-12 * fabs(ce),
          "%s: CE part %.17g vs ioupos_crossentropy_forward %.17g", c,
          dc_st[3 * (size_t)dc_B * dc_K + 1], ce);
  }
  ioupos_dicece_backward(dx, 1.0f, dc_p, dc_st, dc_t, dc_B, dc_K, dc_S, &dc_o);
  /* gradients ~1e-3..1e-2 (1 / (B S) and 1 / (B K D)); torch's float32 softmax backward
     and its float sums over <= 60 voxels: ~1e-9 absolute, relative 1e-5 of the largest terms */
  cmp(c, "dlogits", dx, n, 2e-8, 1e-4);
  g1 = copyf(dx, n);
  ioupos_dicece_backward(dx, 1.0f, dc_p, dc_st, dc_t, dc_B, dc_K, dc_S, &dc_o);
  acc_check("dicece dlogits", dx, g1, n);
  /* L is exact in double up to ~1e-16 relative (~1e-13 after / 2h); truncation h^2 |L'''| / 6
     with |L'''| <= ~1 (a softmax of O(1) logits over B S >= 12 voxels) gives <= 2e-7; the float
     perturbation x +- h is exact in the denominator; the analytic gradient uses the float prob
     (relative 6e-8). */
  fd_check("dicece logits", dc_x, g1, n, fd_opts_make(dc_fwd, FD_SAMPLES, 1e-3, 3e-7, 1e-4));
}

static void test_dicece_args(void) {
  float x[2 * 3 * 4], p[2 * 3 * 4], dx[2 * 3 * 4];
  double st[IOUPOS_DICECE_STATS(2, 3)];
  int t[2 * 4] = {0, 1, 2, 1, 0, 0, 2, 2}, i;
  ioupos_dicece_opts o;
  double L;
  printf("dicece arguments\n");
  for (i = 0; i < 24; ++i) x[i] = (float)((i * 7) % 5) * 0.3f - 0.5f;
  L = ioupos_dicece_forward(p, st, x, t, 2, 3, 4, NULL);
  CHECK(L == L && L > 0, "defaults (opts NULL) give a finite loss, got %g", L);
  {
    /* dloss scales the gradient: dloss 0.5 gives half of dloss 1 (0.5 exact in float) */
    float d1[24], d2[24];
    int bad = 0;
    memset(d1, 0, sizeof d1), memset(d2, 0, sizeof d2);
    ioupos_dicece_backward(d1, 1.0f, p, st, t, 2, 3, 4, NULL);
    ioupos_dicece_backward(d2, 0.5f, p, st, t, 2, 3, 4, NULL);
    for (i = 0; i < 24; ++i) bad += fabsf(d2[i] - 0.5f * d1[i]) > 1e-7f * fabsf(d1[i]) + 1e-30f;
    CHECK(bad == 0, "dloss 0.5 gives half the gradient (%d bad)", bad);
    /* the gradient of the mean loss sums to 0 over classes at every voxel (softmax) */
    bad = 0;
    for (i = 0; i < 8; ++i) {
      int b = i / 4, s = i % 4;
      double sum = 0.0;
      int k;
      for (k = 0; k < 3; ++k) sum += d1[(b * 3 + k) * 4 + s];
      bad += fabs(sum) > 1e-8;
    }
    CHECK(bad == 0, "gradient sums to 0 over classes (%d bad voxels)", bad);
  }
  t[5] = 3;
  L = ioupos_dicece_forward(p, st, x, t, 2, 3, 4, NULL);
  CHECK(L != L && has(ioupos_failure_reason(), "target[1][1] = 3"),
        "target out of range: NaN and the voxel named (%g, \"%s\")", L, ioupos_failure_reason());
  t[5] = -1;
  L = ioupos_dicece_forward(p, st, x, t, 2, 3, 4, NULL);
  CHECK(L != L, "negative target gives NaN");
  t[5] = 0;
  L = ioupos_dicece_forward(p, st, x, t, 2, 1, 4, NULL);
  CHECK(L != L && has(ioupos_failure_reason(), "K >= 2"), "K 1 refused: \"%s\"",
        ioupos_failure_reason());
  ioupos_dicece_defaults(&o);
  o.lambda_ce = -1.0;
  L = ioupos_dicece_forward(p, st, x, t, 2, 3, 4, &o);
  CHECK(L != L && has(ioupos_failure_reason(), "lambda"), "negative lambda refused: \"%s\"",
        ioupos_failure_reason());
  ioupos_dicece_defaults(&o);
  o.smooth_dr = 0.0;
  L = ioupos_dicece_forward(p, st, x, t, 2, 3, 4, &o);
  CHECK(L != L, "smooth_dr 0 refused");
  L = ioupos_dicece_forward(NULL, st, x, t, 2, 3, 4, NULL);
  CHECK(L != L, "NULL prob refused");
  /* a perfect, confident prediction: Dice part -> 0 (up to smooth), CE -> 0 */
  {
    float xs[2 * 4];
    int ts[4] = {0, 1, 1, 0};
    double st2[IOUPOS_DICECE_STATS(1, 2)];
    float p2[8];
    for (i = 0; i < 4; ++i) xs[i] = ts[i] == 0 ? 30.0f : -30.0f, xs[4 + i] = -xs[i];
    L = ioupos_dicece_forward(p2, st2, xs, ts, 1, 2, 4, NULL);
    CHECK(L >= 0 && L < 1e-12, "perfect confident prediction: L %g ~ 0", L);
  }
  (void)dx;
}

/* ============================================================================================ */
/* ---- 2. sliding window ---- */
typedef struct sw_ctx {
  int C, K, dims, roi[3];
  const float *W, *b;
  int calls[256], ncalls;
  int fail_on_call; /* > 0: return IOUPOS_EIO on that call (1-based) */
  int mode;         /* 0 the fixture predictor, 1 constant 1, 2 identity (K = C) */
} sw_ctx;

static int sw_predict(void *vctx, float *in, int n, float *out) {
  sw_ctx *x = (sw_ctx *)vctx;
  long wv = (long)x->roi[0] * x->roi[1] * (x->dims == 3 ? x->roi[2] : 1);
  int r0 = x->roi[0], r1 = x->roi[1], r2 = x->dims == 3 ? x->roi[2] : 1;
  int j, k, c;
  if (x->ncalls < 256) x->calls[x->ncalls] = n;
  ++x->ncalls;
  if (x->fail_on_call > 0 && x->ncalls == x->fail_on_call) {
    /* leave a reason, as a user's predictor can: a library call that fails ("test predictor:
       disk on fire: not a PNG file ..."); ioupos_sliding_window must keep it */
    ioupos_image im;
    ioupos_image_load_memory(NULL, 0, "test predictor: disk on fire", &im);
    return IOUPOS_EIO;
  }
  for (j = 0; j < n; ++j) {
    const float *xi = in + (size_t)j * x->C * wv;
    float *o = out + (size_t)j * x->K * wv;
    double mean[8];
    if (x->mode == 1) {
      for (k = 0; k < x->K * wv; ++k) o[k] = 1.0f;
      continue;
    }
    if (x->mode == 2) {
      memcpy(o, xi, sizeof(float) * (size_t)x->C * wv);
      continue;
    }
    for (c = 0; c < x->C; ++c) {
      double s = 0.0;
      long p;
      for (p = 0; p < wv; ++p) s += xi[(size_t)c * wv + p];
      mean[c] = s / (double)wv;
    }
    for (k = 0; k < x->K; ++k) {
      int p0, p1, p2;
      long p = 0;
      for (p0 = 0; p0 < r0; ++p0)
        for (p1 = 0; p1 < r1; ++p1)
          for (p2 = 0; p2 < r2; ++p2, ++p) {
            double acc = (double)x->b[k];
            for (c = 0; c < x->C; ++c) acc = acc + (double)x->W[k * x->C + c] * xi[(size_t)c * wv + p];
            acc = acc + 0.01 * (k + 1) * (double)(p0 - 2 * p1 + (x->dims == 3 ? 3 * p2 : 0));
            acc = acc + mean[k % x->C];
            o[(size_t)k * wv + p] = (float)acc;
          }
    }
  }
  return 0;
}

static void test_sw(const char *c) {
  float *meta = ld(c, "meta", 11), *img, *out, *out2, *starts, *iv, *calls;
  int dims, C, K, swb, shape[3], roi[3], k, nwin, ncalls;
  long vol, w, bad;
  double overlap;
  sw_ctx ctx;
  ioupos_sw_plan pl;
  tu_npy a;
  char path[256];
  printf("%s\n", c);
  dims = (int)meta[0], C = (int)meta[1], K = (int)meta[2], swb = (int)meta[3];
  overlap = meta[4];
  snprintf(path, sizeof path, FIX "%s_overlap.npy", c); /* float64: the exact Python value */
  if (tu_npy_load(path, &a) == 0) {
    if (a.count == 1) overlap = a.data[0];
    tu_npy_free(&a);
  } else {
    CHECK(0, "cannot load %s", path);
  }
  for (k = 0; k < 3; ++k) shape[k] = (int)meta[5 + k], roi[k] = (int)meta[8 + k];
  vol = (long)shape[0] * shape[1] * (dims == 3 ? shape[2] : 1);
  printf("  %dD C %d K %d image %d x %d x %d roi %d x %d x %d overlap %g sw_batch %d\n", dims, C,
         K, shape[0], shape[1], dims == 3 ? shape[2] : 1, roi[0], roi[1], dims == 3 ? roi[2] : 1,
         overlap, swb);
  CHECK(ioupos_sw_plan_make(&pl, dims, shape, roi, overlap) == 0, "%s plan: %s", c,
        ioupos_failure_reason());
  snprintf(path, sizeof path, FIX "%s_starts.npy", c);
  nwin = 0;
  if (tu_npy_load(path, &a) == 0) {
    nwin = (int)a.shape[0];
    tu_npy_free(&a);
  }
  CHECK(pl.n_windows == nwin, "%s: %ld windows, MONAI %d", c, pl.n_windows, nwin);
  starts = ld(c, "starts", (long)nwin * dims);
  iv = ld(c, "interval", dims);
  bad = 0;
  for (k = 0; k < dims; ++k) bad += pl.interval[k] != (int)iv[k];
  CHECK(bad == 0, "%s: scan intervals differ from MONAI's", c);
  bad = 0;
  for (w = 0; w < nwin && w < pl.n_windows; ++w) {
    int st[3];
    ioupos_sw_plan_start(&pl, w, st);
    for (k = 0; k < dims; ++k) bad += st[k] != (int)starts[w * dims + k];
  }
  CHECK(bad == 0, "%s: window starts differ from MONAI's dense_patch_slices (%ld)", c, bad);
  printf("  plan: %ld windows (%d x %d x %d), interval %d %d %d, pad before %d %d %d\n",
         pl.n_windows, pl.n_axis[0], pl.n_axis[1], pl.n_axis[2], pl.interval[0], pl.interval[1],
         dims == 3 ? pl.interval[2] : 0, pl.pad_before[0], pl.pad_before[1],
         dims == 3 ? pl.pad_before[2] : 0);

  memset(&ctx, 0, sizeof ctx);
  ctx.C = C, ctx.K = K, ctx.dims = dims;
  for (k = 0; k < 3; ++k) ctx.roi[k] = pl.roi[k < dims ? k : 0];
  ctx.W = ld(c, "W", (long)K * C);
  ctx.b = ld(c, "b", K);
  img = ld(c, "img", (long)C * vol);
  out = talloc((long)K * vol);
  CHECK(ioupos_sliding_window(out, K, img, C, dims, shape, roi, overlap, swb, sw_predict, &ctx) ==
            0,
        "%s: %s", c, ioupos_failure_reason());
  calls = NULL;
  snprintf(path, sizeof path, FIX "%s_calls.npy", c);
  ncalls = 0;
  if (tu_npy_load(path, &a) == 0) {
    ncalls = (int)a.count;
    tu_npy_free(&a);
  }
  calls = ld(c, "calls", ncalls);
  bad = ctx.ncalls != ncalls;
  for (k = 0; k < ncalls && k < ctx.ncalls; ++k) bad += ctx.calls[k] != (int)calls[k];
  CHECK(bad == 0, "%s: predictor calls (%d) differ from MONAI's (%d) in number or size", c,
        ctx.ncalls, ncalls);
  /* MONAI sums float32 window outputs in window order and divides by the float count, as we do:
     bit-identical for identical predictor outputs. The predictor's outputs are float roundings
     of double sums whose order differs only in the window mean (torch's double mean vs ours), so
     a rare output may differ by 1 ulp (values O(3): 2.4e-7); 1e-6 allows a few such ulps. */
  cmp(c, "out", out, (long)K * vol, 1e-6, 1e-6);
  {
    tu_npy r;
    long same = 0, i;
    snprintf(path, sizeof path, FIX "%s_out.npy", c);
    if (tu_npy_load(path, &r) == 0) {
      for (i = 0; i < r.count && i < (long)K * vol; ++i) same += (double)out[i] == r.data[i];
      printf("  %ld of %ld outputs bit-identical to MONAI\n", same, r.count);
      tu_npy_free(&r);
    }
  }
  /* the window batch size changes nothing (same order of sums) */
  out2 = talloc((long)K * vol);
  ctx.ncalls = 0;
  CHECK(ioupos_sliding_window(out2, K, img, C, dims, shape, roi, overlap, 1, sw_predict, &ctx) == 0,
        "%s sw_batch 1", c);
  CHECK(memcmp(out, out2, sizeof(float) * (size_t)K * vol) == 0 && ctx.ncalls == pl.n_windows,
        "%s: sw_batch_size 1 is bit-identical, one call per window", c);
  ctx.ncalls = 0;
  CHECK(ioupos_sliding_window(out2, K, img, C, dims, shape, roi, overlap, 1000, sw_predict, &ctx) ==
            0,
        "%s sw_batch 1000", c);
  CHECK(memcmp(out, out2, sizeof(float) * (size_t)K * vol) == 0 && ctx.ncalls == 1,
        "%s: sw_batch_size 1000 is bit-identical, one call", c);
  /* constant 1 predictor: every voxel is n / n = 1 exactly (the count map is right) */
  ctx.mode = 1;
  CHECK(ioupos_sliding_window(out2, K, img, C, dims, shape, roi, overlap, swb, sw_predict, &ctx) ==
            0,
        "%s constant", c);
  bad = 0;
  for (w = 0; w < (long)K * vol; ++w) bad += out2[w] != 1.0f;
  CHECK(bad == 0, "%s: constant predictor gives 1 everywhere (%ld voxels differ)", c, bad);
  /* identity predictor: the average of n copies of a value (within 1 ulp: 3v may round) */
  ctx.mode = 2;
  ctx.K = C;
  CHECK(ioupos_sliding_window(out2, C, img, C, dims, shape, roi, overlap, swb, sw_predict, &ctx) ==
            0,
        "%s identity", c);
  bad = 0;
  for (w = 0; w < (long)C * vol; ++w) bad += fabsf(out2[w] - img[w]) > 2.4e-7f * fabsf(img[w]);
  CHECK(bad == 0, "%s: identity predictor returns the image (%ld voxels differ)", c, bad);
}

static void test_sw_args(void) {
  ioupos_sw_plan pl;
  int shape2[2] = {40, 50}, roi2[2] = {16, 16}, rc, st[3];
  float img[40 * 50], out[2 * 40 * 50];
  sw_ctx ctx;
  int i;
  printf("sliding window arguments and edge cases\n");
  for (i = 0; i < 40 * 50; ++i) img[i] = (float)(i % 17) * 0.25f;
  CHECK(ioupos_sw_plan_make(&pl, 4, shape2, roi2, 0.25) == IOUPOS_EINVAL, "dims 4 refused");
  CHECK(ioupos_sw_plan_make(&pl, 2, shape2, roi2, 1.0) == IOUPOS_EINVAL, "overlap 1 refused");
  CHECK(ioupos_sw_plan_make(&pl, 2, shape2, roi2, -0.1) == IOUPOS_EINVAL, "overlap < 0 refused");
  CHECK(ioupos_sw_plan_make(&pl, 2, shape2, roi2, NAN) == IOUPOS_EINVAL, "overlap NaN refused");
  {
    int bad_shape[2] = {0, 5};
    CHECK(ioupos_sw_plan_make(&pl, 2, bad_shape, roi2, 0.25) == IOUPOS_EINVAL, "size 0 refused");
  }
  /* roi NULL: 96 per axis (the research default); 40 x 50 is padded to 96 x 96, one window */
  CHECK(ioupos_sw_plan_make(&pl, 2, shape2, NULL, 0.25) == 0 && pl.roi[0] == 96 &&
            pl.roi[1] == 96 && pl.n_windows == 1 && pl.pad_before[0] == 28 &&
            pl.pad_before[1] == 23 && pl.interval[0] == 96,
        "roi NULL: 96, padded 96 x 96 with (28, 28) and (23, 23), one window");
  /* overlap 0: interval = roi, and the last window still ends at the image end */
  CHECK(ioupos_sw_plan_make(&pl, 2, shape2, roi2, 0.0) == 0 && pl.interval[0] == 16 &&
            pl.n_axis[0] == 3 && pl.n_axis[1] == 4,
        "overlap 0: 3 x 4 windows");
  ioupos_sw_plan_start(&pl, 11, st);
  CHECK(st[0] == 24 && st[1] == 34, "last window at (24, 34), got (%d, %d)", st[0], st[1]);
  /* (1 - 0.7) * 10 = 3.0000000000000004 -> 3; int(roi * (1 - o)) as Python */
  {
    int s1[2] = {30, 30}, r1[2] = {10, 10};
    CHECK(ioupos_sw_plan_make(&pl, 2, s1, r1, 0.7) == 0 && pl.interval[0] == 3 &&
              pl.n_axis[0] == 8,
          "overlap 0.7, roi 10: interval 3, 8 windows (got %d, %d)", pl.interval[0], pl.n_axis[0]);
    CHECK(ioupos_sw_plan_make(&pl, 2, s1, r1, 0.99) == 0 && pl.interval[0] == 1 &&
              pl.n_axis[0] == 21,
          "overlap 0.99: interval at least 1 (got %d, %d windows)", pl.interval[0], pl.n_axis[0]);
  }
  memset(&ctx, 0, sizeof ctx);
  ctx.C = 1, ctx.K = 2, ctx.dims = 2, ctx.roi[0] = 16, ctx.roi[1] = 16, ctx.roi[2] = 16;
  ctx.mode = 1;
  ctx.fail_on_call = 2;
  rc = ioupos_sliding_window(out, 2, img, 1, 2, shape2, roi2, 0.25, 3, sw_predict, &ctx);
  CHECK(rc == IOUPOS_EIO && has(ioupos_failure_reason(), "predictor returned") &&
            has(ioupos_failure_reason(), "disk on fire"),
        "predictor failure returned with its reason: %d \"%s\"", rc, ioupos_failure_reason());
  CHECK(ioupos_sliding_window(out, 0, img, 1, 2, shape2, roi2, 0.25, 3, sw_predict, &ctx) ==
            IOUPOS_EINVAL,
        "K 0 refused");
  CHECK(ioupos_sliding_window(out, 2, img, 1, 2, shape2, roi2, 0.25, 0, sw_predict, &ctx) ==
            IOUPOS_EINVAL,
        "sw_batch_size 0 refused");
  CHECK(ioupos_sliding_window(out, 2, img, 1, 2, shape2, roi2, 0.25, 3, NULL, &ctx) ==
            IOUPOS_EINVAL,
        "NULL predictor refused");
  /* 3D image smaller than the roi on every axis: one padded window, identity gives the image */
  {
    int s3[3] = {3, 4, 5}, r3[3] = {6, 6, 6}, bad = 0;
    float im3[60], o3[60];
    for (i = 0; i < 60; ++i) im3[i] = (float)i - 20.0f;
    memset(&ctx, 0, sizeof ctx);
    ctx.C = 1, ctx.K = 1, ctx.dims = 3, ctx.roi[0] = ctx.roi[1] = ctx.roi[2] = 6, ctx.mode = 2;
    CHECK(ioupos_sliding_window(o3, 1, im3, 1, 3, s3, r3, 0.25, 4, sw_predict, &ctx) == 0 &&
              ctx.ncalls == 1 && ctx.calls[0] == 1,
          "3D smaller than roi: one call of one window");
    for (i = 0; i < 60; ++i) bad += o3[i] != im3[i];
    CHECK(bad == 0, "3D padded identity returns the image exactly (%d differ)", bad);
  }
}

/* ============================================================================================ */
/* ---- 3. metrics ---- */
static void test_slice_dice_fixture(void) {
  const char *c = "met";
  float *meta = ld(c, "meta", 4), *buf;
  int D, H, W, K, *truth, *pred, z, k;
  long HW, bad;
  ioupos_slice_dice a, a2;
  double sm[64], m;
  float f[64];
  printf("%s (MONAI DiceMetric per slice)\n", c);
  D = (int)meta[0], H = (int)meta[1], W = (int)meta[2], K = (int)meta[3];
  HW = (long)H * W;
  truth = ld_int(c, "truth", D * HW);
  pred = ld_int(c, "pred", D * HW);
  buf = ld(c, "slicebuf", (long)D * K);
  CHECK(ioupos_slice_dice_init(&a, K) == 0, "init");
  /* the research code's batches: 3, 3, 2 slices */
  CHECK(ioupos_slice_dice_add(&a, pred, truth, 3, HW, sm) == 0 &&
            ioupos_slice_dice_add(&a, pred + 3 * HW, truth + 3 * HW, 3, HW, sm + 3) == 0 &&
            ioupos_slice_dice_add(&a, pred + 6 * HW, truth + 6 * HW, 2, HW, sm + 6) == 0,
        "add: %s", ioupos_failure_reason());
  /* per (slice, class): MONAI's value where the truth has the class, NaN where it has not
     (whatever the prediction: slice 1 predicts class 3 that its truth lacks) */
  bad = 0;
  for (z = 0; z < D; ++z) {
    ioupos_dsc_case r;
    ioupos_dsc_case_compute(&r, pred + z * HW, truth + z * HW, HW, K);
    for (k = 0; k < K; ++k) {
      double ref = buf[z * K + k];
      if (r.n_truth[k] == 0) bad += ref == ref;
      else bad += !(fabs(r.dsc[k] - ref) <= 1e-7 * fabs(ref) + 1e-12);
    }
  }
  CHECK(bad == 0, "per (slice, class) Dice / NaN pattern matches MONAI's buffer (%ld differ)", bad);
  CHECK(buf[1 * K + 3] != buf[1 * K + 3], "fixture: slice 1 class 3 (predicted, not in truth) NaN");
  /* float32 ratios of exact counts in MONAI, then numpy's double nanmean: 1e-7 relative */
  for (z = 0; z < D; ++z) f[z] = (float)sm[z];
  cmp(c, "slicemean", f, D, 1e-7, 2e-7);
  m = ioupos_slice_dice_mean(&a);
  f[0] = (float)m;
  /* MONAI's float32 channel and batch averages of 8 slices: a few ulps */
  cmp(c, "mean", f, 1, 1e-7, 1e-6);
  for (k = 0; k < K; ++k) f[k] = (float)ioupos_slice_dice_class_mean(&a, k);
  cmp(c, "meanbatch", f, K, 1e-7, 1e-6); /* as the mean */
  /* all 8 slices in one call: the same sums in the same order */
  ioupos_slice_dice_init(&a2, K);
  ioupos_slice_dice_add(&a2, pred, truth, D, HW, NULL);
  CHECK(ioupos_slice_dice_mean(&a2) == m && a2.n_slices == D && a2.n_valid == D,
        "one batch of 8 slices gives the same mean bit for bit");
  /* a bad label adds nothing */
  truth[5] = K;
  CHECK(ioupos_slice_dice_add(&a2, pred, truth, 1, HW, NULL) == IOUPOS_EINVAL &&
            a2.n_slices == D && has(ioupos_failure_reason(), "pixel 5"),
        "label K refused, nothing added: \"%s\"", ioupos_failure_reason());
  truth[5] = 0;
}

static void test_case_fixture(void) {
  const char *c = "case";
  float *meta = ld(c, "meta", 8), *om, f[16];
  int K = (int)meta[0], ncase = (int)meta[1], i, k, bad = 0;
  ioupos_dsc_eval e, e1;
  double monai_sum[16] = {0};
  printf("%s (per-case DSC, data-set averages)\n", c);
  CHECK(ioupos_dsc_eval_init(&e, K, IOUPOS_DSC_EMPTY_SKIP) == 0 &&
            ioupos_dsc_eval_init(&e1, K, IOUPOS_DSC_EMPTY_ONE) == 0,
        "init");
  for (i = 0; i < ncase; ++i) {
    char nm[32];
    long n = (long)meta[2 + 3 * i] * (long)meta[3 + 3 * i] * (long)meta[4 + 3 * i];
    int *truth, *pred;
    float *dsc, *def;
    ioupos_dsc_case r;
    snprintf(nm, sizeof nm, "truth%d", i);
    truth = ld_int(c, nm, n);
    snprintf(nm, sizeof nm, "pred%d", i);
    pred = ld_int(c, nm, n);
    snprintf(nm, sizeof nm, "dsc%d", i);
    dsc = ld(c, nm, K);
    snprintf(nm, sizeof nm, "defined%d", i);
    def = ld(c, nm, K);
    CHECK(ioupos_dsc_case_compute(&r, pred, truth, n, K) == 0, "case %d: %s", i,
          ioupos_failure_reason());
    for (k = 0; k < K; ++k) {
      if ((int)def[k] != r.defined[k]) ++bad;
      else if (r.defined[k]) bad += !(fabs(r.dsc[k] - dsc[k]) <= 1e-7 * fabs(dsc[k]) + 1e-12);
      else bad += !(r.dsc[k] != r.dsc[k] && dsc[k] == 1.0f); /* MONAI ignore_empty=False: 1 */
      monai_sum[k] += dsc[k];
    }
    printf("  case %d: %d organs defined, mean %.6f; organ 7 %g (predicted only in case 0), "
           "organ 8 %g (absent from both), organ 9 %g (never predicted)\n",
           i, r.n_defined, r.mean, r.dsc[7], r.dsc[8], r.dsc[9]);
    CHECK(ioupos_dsc_eval_add(&e, &r) == 0 && ioupos_dsc_eval_add(&e1, &r) == 0, "add");
  }
  CHECK(bad == 0, "per-case DSC and defined flags match MONAI compute_dice (%d differ)", bad);
  /* organ means: NaN exactly where numpy has NaN (background, organ 8), else float32 rounding of
     numpy's float64 means */
  om = ld(c, "organmean", K);
  bad = 0;
  for (k = 0; k < K; ++k) {
    double v = ioupos_dsc_eval_organ_mean(&e, k);
    if (om[k] != om[k] || v != v) bad += !(om[k] != om[k] && v != v);
    else bad += !(fabs(v - om[k]) <= 1e-7 * fabs(om[k]) + 1e-12);
    if (k == 1 || k == 7) printf("  organ %d mean %.9f (numpy %.9f)\n", k, v, om[k]);
  }
  CHECK(bad == 0, "organ means match numpy (NaN pattern and values; %d differ)", bad);
  f[0] = (float)ioupos_dsc_eval_mean(&e, NULL);
  cmp(c, "meanorgans", f, 1, 0, 1e-7);
  f[0] = (float)ioupos_dsc_eval_case_mean(&e, NULL);
  cmp(c, "meancases", f, 1, 0, 1e-7);
  CHECK(e.count[8] == 0 && e.n_empty[8] == 2 && ioupos_dsc_eval_organ_mean(&e, 8) !=
                                                    ioupos_dsc_eval_organ_mean(&e, 8),
        "organ absent from both in every case: no value, 2 empties");
  /* EMPTY_ONE: every organ counts in every case, both-empty = 1 = MONAI ignore_empty=False */
  {
    double ref = 0.0, got;
    int n;
    for (k = 1; k < K; ++k) ref += monai_sum[k] / ncase;
    ref /= K - 1;
    got = ioupos_dsc_eval_mean(&e1, &n);
    CHECK(fabs(got - ref) <= 1e-7 && n == K - 1 && ioupos_dsc_eval_organ_mean(&e1, 8) == 1.0,
          "EMPTY_ONE mean %.9f vs MONAI ignore_empty=False organ means %.9f", got, ref);
  }
}

static void set_box(int *v, int D, int H, int W, int z0, int z1, int y0, int y1, int x0, int x1,
                    int val) {
  int z, y, x;
  for (z = z0; z < z1 && z < D; ++z)
    for (y = y0; y < y1 && y < H; ++y)
      for (x = x0; x < x1 && x < W; ++x) v[(z * H + y) * W + x] = val;
}

static void test_metric_hand(void) {
  enum { D = 6, H = 10, W = 10, N = D * H * W };
  static int t[N], p[N];
  ioupos_dsc_case r;
  ioupos_slice_dice a;
  double sm[D];
  printf("metrics: hand-computed cases\n");
  /* perfect prediction: every defined organ 1, case mean 1, slice Dice 1 */
  memset(t, 0, sizeof t);
  set_box(t, D, H, W, 1, 5, 2, 6, 2, 6, 1);
  set_box(t, D, H, W, 2, 4, 6, 9, 6, 9, 4);
  memcpy(p, t, sizeof t);
  CHECK(ioupos_dsc_case_compute(&r, p, t, N, 14) == 0, "perfect: %s", ioupos_failure_reason());
  CHECK(r.mean == 1.0 && r.n_defined == 2 && r.dsc[1] == 1.0 && r.dsc[4] == 1.0 &&
            r.dsc[0] == 1.0 && r.dsc[2] != r.dsc[2] && !r.defined[2],
        "perfect: mean 1 over 2 organs, absent organs NaN and not defined");
  ioupos_slice_dice_init(&a, 14);
  ioupos_slice_dice_add(&a, p, t, D, H * W, sm);
  CHECK(ioupos_slice_dice_mean(&a) == 1.0 && sm[0] == 1.0,
        "perfect: research Dice 1 (all-background slice 0 scores 1: only background present)");
  /* shift by one voxel along x: the 4 x 4 x 4 cube keeps 3 x 4 x 4 = 48 of 64: 96 / 128 = 0.75 */
  memset(p, 0, sizeof p);
  set_box(p, D, H, W, 1, 5, 2, 6, 3, 7, 1);
  set_box(p, D, H, W, 2, 4, 6, 9, 6, 9, 4);
  ioupos_dsc_case_compute(&r, p, t, N, 14);
  CHECK(r.dsc[1] == 0.75 && r.dsc[4] == 1.0 && r.mean == 0.875 && r.n_inter[1] == 48,
        "shift x by 1: DSC 0.75 (got %.17g), mean 0.875", r.dsc[1]);
  /* shift by (1, 1) in y, x: 4 x 3 x 3 = 36 of 64: 72 / 128 = 0.5625 */
  memset(p, 0, sizeof p);
  set_box(p, D, H, W, 1, 5, 3, 7, 3, 7, 1);
  ioupos_dsc_case_compute(&r, p, t, N, 14);
  CHECK(r.dsc[1] == 0.5625 && r.dsc[4] == 0.0 && r.defined[4] && r.n_pred[4] == 0 &&
            r.mean == 0.5625 / 2,
        "shift (1, 1): 0.5625 (got %.17g); organ 4 in truth, not predicted: 0 and counted",
        r.dsc[1]);
  /* research per-slice on the (1, 1) shift: slice 1 has background and organ 1:
     organ 1 slice: 16 truth, 16 pred, 9 shared: 18 / 32; background: 100 - 16 - 7 = 77 shared of
     84 + 84: 154 / 168; slice mean (18/32 + 154/168) / 2 */
  ioupos_slice_dice_init(&a, 14);
  ioupos_slice_dice_add(&a, p, t, D, H * W, sm);
  CHECK(fabs(sm[1] - (18.0 / 32 + 154.0 / 168) / 2) < 1e-15, "slice 1 mean %.17g", sm[1]);
  /* slice 2 also has organ 4 (3 x 3 at y, x 6..8, not predicted): it scores 0 and counts.
     Background: truth 100 - 16 - 9 = 75, pred 100 - 16 = 84; the predicted organ 1 (y, x 3..6)
     covers 9 of truth organ 1 and 1 pixel (6, 6) of truth organ 4, so the background shared is
     100 - (25 + 16 - 10) = 69: 138 / 159 */
  {
    double bg = 2.0 * 69 / (75.0 + 84.0);
    CHECK(fabs(sm[2] - (bg + 18.0 / 32 + 0.0) / 3) < 1e-15, "slice 2 mean %.17g vs %.17g", sm[2],
          (bg + 18.0 / 32) / 3);
  }
  /* organ predicted but absent from the truth: 0 and counted (per case); NaN per slice */
  memcpy(p, t, sizeof t);
  set_box(p, D, H, W, 0, 1, 0, 2, 0, 2, 9);
  ioupos_dsc_case_compute(&r, p, t, N, 14);
  CHECK(r.dsc[9] == 0.0 && r.defined[9] && r.n_defined == 3 && fabs(r.mean - 2.0 / 3) < 1e-15,
        "false-positive organ: DSC 0, counted: mean 2/3 (got %.17g)", r.mean);
  ioupos_slice_dice_init(&a, 14);
  ioupos_slice_dice_add(&a, p, t, D, H * W, sm);
  /* slice 0: truth all background; pred 4 pixels of organ 9: bg 2 * 96 / 196, organ 9 NaN */
  CHECK(fabs(sm[0] - 2.0 * 96 / 196) < 1e-15, "all-background truth slice with FP: %.17g vs %.17g",
        sm[0], 2.0 * 96 / 196);
  /* nothing defined at all: truth and prediction all background */
  memset(t, 0, sizeof t);
  memset(p, 0, sizeof p);
  ioupos_dsc_case_compute(&r, p, t, N, 14);
  CHECK(r.n_defined == 0 && r.mean != r.mean && r.dsc[0] == 1.0,
        "empty case: no organ defined, mean NaN");
  {
    ioupos_dsc_eval e;
    ioupos_dsc_eval_init(&e, 14, IOUPOS_DSC_EMPTY_SKIP);
    ioupos_dsc_eval_add(&e, &r);
    CHECK(e.n_case_means == 0 && ioupos_dsc_eval_mean(&e, NULL) != ioupos_dsc_eval_mean(&e, NULL),
          "an empty case adds no case mean; nothing to average: NaN");
  }
  /* errors */
  t[7] = 14;
  CHECK(ioupos_dsc_case_compute(&r, p, t, N, 14) == IOUPOS_EINVAL &&
            has(ioupos_failure_reason(), "voxel 7"),
        "label 14 with K 14 refused: \"%s\"", ioupos_failure_reason());
  t[7] = 0;
  CHECK(ioupos_dsc_case_compute(&r, p, t, N, IOUPOS_SEG_MAX_CLASSES + 1) == IOUPOS_EINVAL,
        "K above IOUPOS_SEG_MAX_CLASSES refused");
  CHECK(ioupos_dsc_eval_init(NULL, 14, 0) == IOUPOS_EINVAL, "NULL accumulator refused");
  {
    ioupos_dsc_eval e;
    CHECK(ioupos_dsc_eval_init(&e, 14, 2) == IOUPOS_EINVAL, "unknown empty policy refused");
    ioupos_dsc_eval_init(&e, 5, 0);
    ioupos_dsc_case_compute(&r, p, t, N, 14);
    CHECK(ioupos_dsc_eval_add(&e, &r) == IOUPOS_EINVAL, "case K 14 into accumulator K 5 refused");
  }
  ioupos_slice_dice_init(&a, 14);
  CHECK(ioupos_slice_dice_mean(&a) != ioupos_slice_dice_mean(&a), "no slices: NaN");
}

static void test_argmax(void) {
  const char *c = "am";
  float *s = ld(c, "scores", 2 * 5 * 40), f[80];
  int lab[80], i;
  printf("%s (torch.argmax)\n", c);
  CHECK(ioupos_argmax_classes(lab, s, 2, 5, 40) == 0, "argmax");
  for (i = 0; i < 80; ++i) f[i] = (float)lab[i];
  cmp(c, "labels", f, 80, 0, 0); /* exact: ties -> first, NaN -> first NaN */
  CHECK(lab[1 * 40 + 9] == 1, "two NaNs: the first wins (got %d)", lab[1 * 40 + 9]);
  CHECK(ioupos_argmax_classes(lab, s, 2, 0, 40) == IOUPOS_EINVAL, "K 0 refused");
}

/* ============================================================================================ */
/* ---- 4. table and JSON ---- */

/* a minimal JSON syntax check (RFC 8259 values; no semantic checks) */
static const char *js_value(const char *s);
static const char *js_ws(const char *s) {
  while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') ++s;
  return s;
}
static const char *js_string(const char *s) {
  if (*s++ != '"') return NULL;
  while (*s && *s != '"') {
    if ((unsigned char)*s < 0x20) return NULL;
    if (*s == '\\') {
      ++s;
      if (*s == 'u') {
        int k;
        for (k = 1; k <= 4; ++k)
          if (!strchr("0123456789abcdefABCDEF", s[k]) || !s[k]) return NULL;
        s += 4;
      } else if (!*s || !strchr("\"\\/bfnrt", *s)) {
        return NULL;
      }
    }
    ++s;
  }
  return *s == '"' ? s + 1 : NULL;
}
static const char *js_number(const char *s) {
  const char *st = s;
  if (*s == '-') ++s;
  if (*s == '0') ++s;
  else if (*s >= '1' && *s <= '9')
    while (*s >= '0' && *s <= '9') ++s;
  else return NULL;
  if (*s == '.') {
    ++s;
    if (!(*s >= '0' && *s <= '9')) return NULL;
    while (*s >= '0' && *s <= '9') ++s;
  }
  if (*s == 'e' || *s == 'E') {
    ++s;
    if (*s == '+' || *s == '-') ++s;
    if (!(*s >= '0' && *s <= '9')) return NULL;
    while (*s >= '0' && *s <= '9') ++s;
  }
  return s > st ? s : NULL;
}
static const char *js_value(const char *s) {
  s = js_ws(s);
  if (*s == '{' || *s == '[') {
    char close = *s == '{' ? '}' : ']';
    int obj = *s == '{';
    s = js_ws(s + 1);
    if (*s == close) return s + 1;
    for (;;) {
      if (obj) {
        s = js_string(js_ws(s));
        if (!s) return NULL;
        s = js_ws(s);
        if (*s++ != ':') return NULL;
      }
      s = js_value(s);
      if (!s) return NULL;
      s = js_ws(s);
      if (*s == ',') {
        ++s;
        continue;
      }
      return *s == close ? s + 1 : NULL;
    }
  }
  if (*s == '"') return js_string(s);
  if (!strncmp(s, "true", 4)) return s + 4;
  if (!strncmp(s, "false", 5)) return s + 5;
  if (!strncmp(s, "null", 4)) return s + 4;
  return js_number(s);
}
static int json_ok(const char *s) {
  const char *e = js_value(s);
  return e && *js_ws(e) == '\0';
}

static void test_tables(void) {
  enum { D = 4, H = 8, W = 8, N = D * H * W };
  static int t[N], p[N];
  static char buf[8192];
  ioupos_dsc_case r;
  ioupos_dsc_eval e;
  ioupos_slice_dice a;
  size_t len = 0, len2 = 0;
  int rc, i;
  const char *names[5] = {"bg", "li\"ver", "kid\\ney", "spl\teen", "x"};
  printf("tables\n");
  ioupos_dsc_eval_init(&e, 14, IOUPOS_DSC_EMPTY_SKIP);
  ioupos_slice_dice_init(&a, 14);
  for (i = 0; i < 2; ++i) {
    memset(t, 0, sizeof t);
    set_box(t, D, H, W, 0, 3, 1, 5, 1, 5, 1);
    set_box(t, D, H, W, 1, 3, 5, 8, 5, 8, 13);
    memcpy(p, t, sizeof t);
    set_box(p, D, H, W, 0, 3, 1, 5, 1 + i, 5 + i, 1);
    ioupos_dsc_case_compute(&r, p, t, N, 14);
    ioupos_dsc_eval_add(&e, &r);
    ioupos_slice_dice_add(&a, p, t, D, H * W, NULL);
  }
  rc = ioupos_dsc_table_json(NULL, 0, &len, &e, &a, NULL);
  CHECK(rc == IOUPOS_ERANGE && len > 100, "NULL buffer: ERANGE with the length needed (%zu)", len);
  rc = ioupos_dsc_table_json(buf, len, &len2, &e, &a, NULL);
  CHECK(rc == IOUPOS_ERANGE && buf[0] == '\0', "one byte short: ERANGE, empty string");
  rc = ioupos_dsc_table_json(buf, len + 1, &len2, &e, &a, NULL);
  CHECK(rc == 0 && len2 == len && strlen(buf) == len, "exact size fits (%zu)", len2);
  printf("  %s\n", buf);
  CHECK(json_ok(buf), "the JSON parses");
  CHECK(has(buf, "\"name\":\"liver\"") && has(buf, "\"name\":\"left kidney\"") &&
            has(buf, "\"id\":6,\"name\":\"inferior vena cava\",\"dsc\":null,\"std\":null,"
                     "\"cases\":0,\"empty\":2}") &&
            has(buf, "\"research\":{") && has(buf, "\"organs_averaged\":2"),
        "FLARE22 names, null for never-present organs, the research block");
  {
    /* mean_dsc: organ 1 is perfect in case 0; in case 1 the prediction adds a 3 x 4 column
       (48 truth, 60 predicted, 48 shared: 96 / 108 = 8 / 9), so its mean is 17 / 18; organ 13
       is perfect: (17 / 18 + 1) / 2 = 35 / 36 */
    const char *m = strstr(buf, "\"mean_dsc\":");
    double v = m ? strtod(m + 11, NULL) : -1;
    CHECK(fabs(v - 35.0 / 36) < 1e-9, "mean_dsc %.10g == 35 / 36", v);
  }
  rc = ioupos_dsc_table(buf, sizeof buf, &len, &e, &a, NULL);
  CHECK(rc == 0 && strlen(buf) == len && has(buf, "liver") && has(buf, "n/a") &&
            has(buf, "mean over organs") && has(buf, "research slice Dice"),
        "text table");
  printf("%s", buf);
  /* caller names with characters JSON must escape; K 5 */
  ioupos_dsc_eval_init(&e, 5, IOUPOS_DSC_EMPTY_ONE);
  for (i = 0; i < N; ++i) t[i] = i % 5, p[i] = (i / 2) % 5;
  ioupos_dsc_case_compute(&r, p, t, N, 5);
  ioupos_dsc_eval_add(&e, &r);
  rc = ioupos_dsc_table_json(buf, sizeof buf, &len, &e, NULL, names);
  CHECK(rc == 0 && json_ok(buf) && has(buf, "li\\\"ver") && has(buf, "kid\\\\ney") &&
            has(buf, "spl\\u0009een") && has(buf, "\"empty_policy\":\"one\"") &&
            !has(buf, "research"),
        "escaped names, no research block: %s", buf);
  rc = ioupos_dsc_case_json(buf, sizeof buf, &len, &r, "FLARE22_Tr_0001\"", NULL);
  CHECK(rc == 0 && json_ok(buf) && has(buf, "\"case\":\"FLARE22_Tr_0001\\\"\"") &&
            has(buf, "\"spleen\":"),
        "case JSON: %s", buf);
  printf("  %s\n", buf);
  rc = ioupos_dsc_case_json(buf, 8, &len, &r, NULL, NULL);
  CHECK(rc == IOUPOS_ERANGE && len > 8, "case JSON: small buffer ERANGE, needs %zu", len);
}

/* 5. sliding-window prediction with a SwinUNETR */
static void test_seg_predictor(void) {
  ioupos_swinunetr_config cfg, other;
  ioupos_swinunetr m;
  ioupos_params p, q;
  ioupos_seg_predictor pr;
  ioupos_rng rng;
  const int H = 100, W = 170, roi[2] = {64, 64}, bad_roi[2] = {64, 48}, sws[4] = {1, 3, 5, 64};
  const long n = (long)H * W;
  float *img = talloc(n), *ref = NULL, *out = NULL, *one;
  double worst = 0.0;
  long i;
  int k, rc, K;
  printf("seg predictor:\n");
  ioupos_swinunetr_config_default(&cfg, 2);
  cfg.enc.embed_dim = 12;
  cfg.out_channels = K = 3;
  memset(&p, 0, sizeof p);
  memset(&m, 0, sizeof m);
  ioupos_rng_seed(&rng, 11);
  rc = ioupos_swinunetr_init(&m, &cfg, &p.table, "");
  if (!rc) rc = ioupos_params_alloc(&p, ioupos_backend_cpu(), 0);
  if (!rc) rc = ioupos_params_init(&p, &rng);
  if (!rc) rc = ioupos_swin_encoder_buffers(&m.enc, &p);
  CHECK(rc == 0, "model: %s", ioupos_failure_reason());
  if (rc) return;
  for (i = 0; i < n; ++i) img[i] = (float)ioupos_rng_uniform(&rng);
  ref = talloc(n * K);
  out = talloc(n * K);
  for (k = 0; k < 4; ++k) {
    rc = ioupos_seg_predictor_init(&pr, &cfg, &p, roi, 0.25, sws[k]);
    if (!rc) rc = ioupos_seg_predict(&pr, k == 0 ? ref : out, img, H, W);
    CHECK(rc == 0, "predict, sw_batch_size %d: %s", sws[k], ioupos_failure_reason());
    ioupos_seg_predictor_free(&pr);
    if (k > 0)
      CHECK(rc == 0 && memcmp(ref, out, sizeof(float) * (size_t)(n * K)) == 0,
            "sw_batch_size %d (chunks of %d) gives the logits of sw_batch_size 1 bit for bit",
            sws[k], IOUPOS_SEG_MODEL_BATCH);
  }
  /* a 64 x 64 image is one window: the blended output is the model's own output */
  one = talloc(64 * 64);
  memcpy(one, img, sizeof(float) * 64 * 64);
  rc = ioupos_seg_predictor_init(&pr, &cfg, &p, roi, 0.25, 4);
  if (!rc) rc = ioupos_seg_predict(&pr, out, one, 64, 64);
  ioupos_seg_predictor_free(&pr);
  if (!rc) rc = ioupos_swinunetr_plan(&m, &p, 1, roi);
  if (!rc) rc = ioupos_swinunetr_forward(&m, &p, one, 0, NULL);
  CHECK(rc == 0, "one window: %s", ioupos_failure_reason());
  if (!rc) {
    const float *lg = ioupos_swinunetr_logits(&m);
    for (i = 0; i < 64 * 64 * K; ++i) {
      double d = fabs((double)out[i] - (double)lg[i]);
      if (d > worst) worst = d;
    }
    /* the constant blend divides the sum by the count 1: exact */
    CHECK(worst == 0.0, "one window: the prediction is the forward's logits (worst %g)", worst);
  }
  /* bad arguments */
  rc = ioupos_seg_predictor_init(&pr, &cfg, &p, bad_roi, 0.25, 4);
  CHECK(rc == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "multiples of 32"),
        "a 64 x 48 window is refused: %s", ioupos_failure_reason());
  rc = ioupos_seg_predictor_init(&pr, &cfg, &p, roi, 0.25, 0);
  CHECK(rc == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "sw_batch_size"),
        "sw_batch_size 0 is refused: %s", ioupos_failure_reason());
  other = cfg;
  other.out_channels = 4;
  rc = ioupos_seg_predictor_init(&pr, &other, &p, roi, 0.25, 4);
  CHECK(rc == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "'out.conv.conv.weight'"),
        "parameters of another configuration (4 classes) are refused: %s",
        ioupos_failure_reason());
  memset(&q, 0, sizeof q);
  rc = ioupos_seg_predictor_init(&pr, &cfg, &q, roi, 0.25, 4);
  CHECK(rc == IOUPOS_EINVAL, "an empty parameter table is refused: %s", ioupos_failure_reason());
  rc = ioupos_seg_predict(&pr, out, img, H, W);
  CHECK(rc == IOUPOS_EINVAL, "predicting with a failed predictor is refused: %s",
        ioupos_failure_reason());
  ioupos_swinunetr_free(&m);
  ioupos_params_free(&p);
}

int main(void) {
  ioupos_rng_seed(&fd_rng, 20261201u);
  test_dicece("dce2d");
  test_dicece("dce3d");
  test_dicece("dceallbg");
  test_dicece("dcenobg");
  test_dicece("dcelam");
  test_dicece_args();
  test_sw("sw2d");
  test_sw("sw2dpad");
  test_sw("sw2dfb");
  test_sw("sw2d96");
  test_sw("sw3d");
  test_sw("sw3dpad");
  test_sw_args();
  test_slice_dice_fixture();
  test_case_fixture();
  test_metric_hand();
  test_argmax();
  test_tables();
  test_seg_predictor();
  tfree_all();
  return tu_finish("test_segeval");
}
