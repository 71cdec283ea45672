/* tests/test_layers.c — ioupos.h section 11 against PyTorch / MONAI 1.6.1 (fixtures written by
   tests/reference/layers_fixture.py into tests/fixtures/layers), plus finite differences.

   For every layer:
     1. forward output and every gradient of L = sum(out * G) (G fixed, from the fixture) are
        compared with torch via tu_compare, per-tensor |x - ref| <= atol + rtol |ref|; the
        tolerances and their reasons are next to each comparison;
     2. backward ACCUMULATES: a second backward call must give exactly twice the first
        (|g2 - 2 g1| <= 1e-6 |2 g1| + 1e-30: both calls compute the same float values, so the
        sum is 2 g1 up to the one rounding of the addition);
     3. finite differences: for up to FD_SAMPLES elements of each input and parameter,
        (L(x + h) - L(x - h)) / (x+h - x-h) with h = 1e-3, where the perturbation is applied to
        the float tensor (the denominator is the difference actually stored) and L is
        accumulated in double from the float forward output. Tolerance |fd - g| <= 5e-3 +
        1e-2 |g|: the float forward rounds each output to ~6e-8 relative, which over a few
        hundred outputs of O(1) gives a noise in L of ~1e-6, i.e. ~1e-3 after dividing by 2h;
        the central difference's truncation error is O(h^2 f''') ~ 1e-6.
   This build has no SIMD and no OpenMP, so the layers with fast paths run their plain
   references (section 11 of ioupos.h); the linear layer, whose fast path is the GEMM in every
   build, also runs its reference against the fixture (test_threads, part 6, runs the fast paths
   against the references).
   Prints the worst element of each comparison and "test_layers: N checks passed, M failed";
   exits 1 on any failure. Run from the repository root (fixture paths are relative). */
#include "ioupos.h"
#include "tests/npy.h"
#include "tests/test_util.h"

#include <math.h>
#include <string.h>

#define FIX "tests/fixtures/layers/"
#define FD_SAMPLES 12
#define FD_H 1e-3
#define FD_ATOL 5e-3
#define FD_RTOL 1e-2

#include "tests/fixture_util.h"
#include "tests/fd_check.h"

/* ---- finite differences ---- */
static void (*fd_fwd)(void);
static const float *fd_out;
static const float *fd_G;
static long fd_nout;

static double fd_loss(void) {
  double s = 0.0;
  long i;
  fd_fwd();
  for (i = 0; i < fd_nout; ++i) s += (double)fd_out[i] * fd_G[i];
  return s;
}

/* L = sum(out * G) through fd_loss; at a ReLU (fd_relu) elements within 2h of 0 are skipped */
static fd_opts fd_o, fd_relu;

static void fd_setup(void (*f)(void), const float *out, const float *G, long nout) {
  fd_fwd = f, fd_out = out, fd_G = G, fd_nout = nout;
}

/* ============================================================================================ */
enum { N = 37, C = 20, OC = 12 };

/* ---- linear ---- */
static float *li_x, *li_w, *li_b, *li_out;
static void li_fwd(void) { ioupos_linear_forward(li_out, li_x, li_w, li_b, N, C, OC); }
static void test_linear(void) {
  const char *L = "linear";
  float *G, *dx, *dw, *db;
  printf("linear\n");
  li_x = ld(L, "x", N * C), li_w = ld(L, "w", OC * C), li_b = ld(L, "b", OC);
  G = ld(L, "G", N * OC);
  li_out = talloc(N * OC), dx = talloc(N * C), dw = talloc(OC * C), db = talloc(OC);
  CHECK(ioupos_linear_forward(li_out, li_x, li_w, li_b, N, C, OC) == 0, "linear forward");
  /* C = 20 products in float (GEMM error bound ~ 24 * 2^-23 * sum|x w|) vs torch's float */
  cmp(L, "out", li_out, N * OC, 1e-5, 1e-4);
  CHECK(ioupos_linear_backward(dx, dw, db, G, li_x, li_w, N, C, OC) == 0, "linear backward");
  cmp(L, "dx", dx, N * C, 1e-5, 1e-4);  /* 12-term sums, values O(1) */
  cmp(L, "dw", dw, OC * C, 1e-4, 1e-4); /* 37-term sums, values O(10) */
  cmp(L, "db", db, OC, 1e-4, 1e-4);     /* 37-term sums */
  {
    float *dx1 = copyf(dx, N * C), *dw1 = copyf(dw, OC * C), *db1 = copyf(db, OC);
    ioupos_linear_backward(dx, dw, db, G, li_x, li_w, N, C, OC);
    acc_check("linear dx", dx, dx1, N * C);
    acc_check("linear dw", dw, dw1, OC * C);
    acc_check("linear db", db, db1, OC);
    fd_setup(li_fwd, li_out, G, N * OC);
    fd_check("linear x", li_x, dx1, N * C, fd_o);
    fd_check("linear w", li_w, dw1, OC * C, fd_o);
    fd_check("linear b", li_b, db1, OC, fd_o);
  }
  /* the plain reference (ioupos__linear_forward_ref / _backward_ref: double dot products; the
     public layer is the GEMM in every build) against the same fixture and tolerances */
  {
    float *o2 = talloc(N * OC), *dx2 = talloc(N * C), *dw2 = talloc(OC * C), *db2 = talloc(OC);
    printf("linear (plain reference)\n");
    ioupos__linear_forward_ref(o2, li_x, li_w, li_b, N, C, OC);
    cmp(L, "out", o2, N * OC, 1e-5, 1e-4);
    ioupos__linear_backward_ref(dx2, dw2, db2, G, li_x, li_w, N, C, OC);
    cmp(L, "dx", dx2, N * C, 1e-5, 1e-4);
    cmp(L, "dw", dw2, OC * C, 1e-4, 1e-4);
    cmp(L, "db", db2, OC, 1e-4, 1e-4);
  }
  /* bias NULL: out = x W^T exactly the biased output minus b (within rounding) */
  {
    float *o2 = talloc(N * OC);
    long i, bad = 0;
    ioupos_linear_forward(o2, li_x, li_w, NULL, N, C, OC);
    for (i = 0; i < N * OC; ++i)
      if (!(fabs(o2[i] + li_b[i % OC] - li_out[i]) <= 1e-5 * (1 + fabs(li_out[i])))) ++bad;
    CHECK(bad == 0, "linear without bias: %ld elements differ", bad);
  }
}

/* ---- layer norm ---- */
static float *ln_x, *ln_w, *ln_b, *ln_out, *ln_mean, *ln_rstd;
static void ln_fwd(void) {
  ioupos_layernorm_forward(ln_out, ln_mean, ln_rstd, ln_x, ln_w, ln_b, N, C, 1e-5f);
}
static void test_layernorm(void) {
  const char *L = "layernorm";
  float *G, *dx, *dw, *db;
  printf("layernorm\n");
  ln_x = ld(L, "x", N * C), ln_w = ld(L, "w", C), ln_b = ld(L, "b", C), G = ld(L, "G", N * C);
  ln_out = talloc(N * C), ln_mean = talloc(N), ln_rstd = talloc(N);
  dx = talloc(N * C), dw = talloc(C), db = talloc(C);
  ln_fwd();
  /* statistics in double here, float in torch: differences of a few float ulps of O(1) values */
  cmp(L, "out", ln_out, N * C, 1e-5, 1e-4);
  ioupos_layernorm_backward(dx, dw, db, G, ln_x, ln_w, ln_mean, ln_rstd, N, C);
  cmp(L, "dx", dx, N * C, 1e-5, 1e-4); /* O(1) values, 20-term row sums in float in torch */
  cmp(L, "dw", dw, C, 1e-4, 1e-4);     /* 37-term sums */
  cmp(L, "db", db, C, 1e-4, 1e-4);
  {
    float *dx1 = copyf(dx, N * C), *dw1 = copyf(dw, C), *db1 = copyf(db, C);
    ioupos_layernorm_backward(dx, dw, db, G, ln_x, ln_w, ln_mean, ln_rstd, N, C);
    acc_check("layernorm dx", dx, dx1, N * C);
    acc_check("layernorm dw", dw, dw1, C);
    acc_check("layernorm db", db, db1, C);
    fd_setup(ln_fwd, ln_out, G, N * C);
    fd_check("layernorm x", ln_x, dx1, N * C, fd_o);
    fd_check("layernorm w", ln_w, dw1, C, fd_o);
    fd_check("layernorm b", ln_b, db1, C, fd_o);
  }
}

/* ---- elementwise and row-wise: gelu, relu, softmax, l2norm ---- */
static float *ew_x, *ew_out, *ew_aux;
static int ew_kind;
static void ew_fwd(void) {
  if (ew_kind == 0) ioupos_gelu_forward(ew_out, ew_x, (size_t)N * C);
  else if (ew_kind == 1) ioupos_relu_forward(ew_out, ew_x, (size_t)N * C);
  else if (ew_kind == 2) ioupos_softmax_forward(ew_out, ew_x, N, C);
  else ioupos_l2norm_forward(ew_out, ew_aux, ew_x, N, C, 1e-12f);
}
static void ew_bwd(float *dx, const float *G) {
  if (ew_kind == 0) ioupos_gelu_backward(dx, ew_x, G, (size_t)N * C);
  else if (ew_kind == 1) ioupos_relu_backward(dx, ew_x, G, (size_t)N * C);
  else if (ew_kind == 2) ioupos_softmax_backward(dx, ew_out, G, N, C);
  else ioupos_l2norm_backward(dx, ew_out, ew_aux, G, N, C, 1e-12f);
}
static void test_elementwise(const char *L, int kind) {
  float *G, *dx, *dx1;
  char label[64];
  printf("%s\n", L);
  ew_kind = kind;
  ew_x = ld(L, "x", N * C), G = ld(L, "G", N * C);
  ew_out = talloc(N * C), ew_aux = talloc(N), dx = talloc(N * C);
  ew_fwd();
  /* erf / exp / sqrt in double then rounded, vs torch's float libm (a few ulps) */
  cmp(L, "out", ew_out, N * C, 1e-6, 1e-5);
  ew_bwd(dx, G);
  /* one rounding per term; softmax / l2norm's row sums of 20 terms in float in torch; the l2norm
     row scaled by 1e-3 has gradients ~1e3, covered by rtol */
  cmp(L, "dx", dx, N * C, 1e-6, 1e-5);
  dx1 = copyf(dx, N * C);
  ew_bwd(dx, G);
  snprintf(label, sizeof label, "%s dx", L);
  acc_check(label, dx, dx1, N * C);
  fd_setup(ew_fwd, ew_out, G, N * C);
  snprintf(label, sizeof label, "%s x", L);
  fd_check(label, ew_x, dx1, N * C, kind == 1 ? fd_relu : fd_o);
}

/* ---- global average pooling ---- */
enum { AP_B = 3, AP_T = 7 };
static float *ap_x, *ap_out;
static void ap_fwd(void) { ioupos_avgpool_forward(ap_out, ap_x, AP_B, AP_T, C); }
static void test_avgpool(void) {
  const char *L = "avgpool";
  float *G, *dx, *dx1;
  printf("avgpool\n");
  ap_x = ld(L, "x", AP_B * AP_T * C), G = ld(L, "G", AP_B * C);
  ap_out = talloc(AP_B * C), dx = talloc(AP_B * AP_T * C);
  ap_fwd();
  cmp(L, "out", ap_out, AP_B * C, 1e-6, 1e-5); /* 7-term means */
  ioupos_avgpool_backward(dx, G, AP_B, AP_T, C);
  cmp(L, "dx", dx, AP_B * AP_T * C, 1e-7, 1e-6); /* dout / 7, one rounding */
  dx1 = copyf(dx, AP_B * AP_T * C);
  ioupos_avgpool_backward(dx, G, AP_B, AP_T, C);
  acc_check("avgpool dx", dx, dx1, AP_B * AP_T * C);
  fd_setup(ap_fwd, ap_out, G, AP_B * C);
  fd_check("avgpool x", ap_x, dx1, AP_B * AP_T * C, fd_o);
}

/* ---- batch norm 1d ---- */
static float *bn_x, *bn_w, *bn_b, *bn_out, *bn_mean, *bn_rstd, *bn_rm, *bn_rv;
static int bn_eval;
static void bn_fwd(void) {
  if (bn_eval)
    ioupos_batchnorm_forward_eval(bn_out, bn_x, bn_rm, bn_rv, bn_w, bn_b, N, C, 1e-5f);
  else /* running stats NULL: finite differences must not keep updating them */
    ioupos_batchnorm_forward_train(bn_out, bn_mean, bn_rstd, NULL, NULL, bn_x, bn_w, bn_b, N, C,
                                   0.1f, 1e-5f);
}
static void test_batchnorm(int eval) {
  const char *L = eval ? "batchnormeval" : "batchnorm";
  float *G, *dx, *dw, *db, *dx1, *dw1, *db1;
  char label[64];
  printf("%s\n", L);
  bn_eval = eval;
  bn_x = ld(L, "x", N * C), bn_w = ld(L, "w", C), bn_b = ld(L, "b", C), G = ld(L, "G", N * C);
  bn_out = talloc(N * C), bn_mean = talloc(C), bn_rstd = talloc(C);
  dx = talloc(N * C), dw = talloc(C), db = talloc(C);
  if (eval) { /* eval uses the running statistics after the train step */
    bn_rm = ld("batchnorm", "running_mean_after", C), bn_rv = ld("batchnorm", "running_var_after", C);
    ioupos_batchnorm_forward_eval(bn_out, bn_x, bn_rm, bn_rv, bn_w, bn_b, N, C, 1e-5f);
  } else {
    bn_rm = ld("batchnorm", "running_mean_before", C);
    bn_rv = ld("batchnorm", "running_var_before", C);
    ioupos_batchnorm_forward_train(bn_out, bn_mean, bn_rstd, bn_rm, bn_rv, bn_x, bn_w, bn_b, N, C,
                                   0.1f, 1e-5f);
    /* running stats: one momentum blend of 37-term statistics, unbiased var (x 37/36) */
    cmp("batchnorm", "running_mean_after", bn_rm, C, 1e-6, 1e-5);
    cmp("batchnorm", "running_var_after", bn_rv, C, 1e-6, 1e-5);
  }
  /* statistics over 37 rows in double here, float in torch */
  cmp(L, "out", bn_out, N * C, 1e-5, 1e-4);
  if (eval)
    ioupos_batchnorm_backward_eval(dx, dw, db, G, bn_x, bn_rm, bn_rv, bn_w, N, C, 1e-5f);
  else
    ioupos_batchnorm_backward_train(dx, dw, db, G, bn_x, bn_w, bn_mean, bn_rstd, N, C);
  cmp(L, "dx", dx, N * C, 1e-5, 1e-4); /* O(1) values from 37-term column sums */
  cmp(L, "dw", dw, C, 1e-4, 1e-4);     /* 37-term sums of O(1) */
  cmp(L, "db", db, C, 1e-4, 1e-4);
  dx1 = copyf(dx, N * C), dw1 = copyf(dw, C), db1 = copyf(db, C);
  if (eval)
    ioupos_batchnorm_backward_eval(dx, dw, db, G, bn_x, bn_rm, bn_rv, bn_w, N, C, 1e-5f);
  else
    ioupos_batchnorm_backward_train(dx, dw, db, G, bn_x, bn_w, bn_mean, bn_rstd, N, C);
  snprintf(label, sizeof label, "%s dx", L), acc_check(label, dx, dx1, N * C);
  snprintf(label, sizeof label, "%s dw", L), acc_check(label, dw, dw1, C);
  snprintf(label, sizeof label, "%s db", L), acc_check(label, db, db1, C);
  fd_setup(bn_fwd, bn_out, G, N * C);
  snprintf(label, sizeof label, "%s x", L), fd_check(label, bn_x, dx1, N * C, fd_o);
  snprintf(label, sizeof label, "%s w", L), fd_check(label, bn_w, dw1, C, fd_o);
  snprintf(label, sizeof label, "%s b", L), fd_check(label, bn_b, db1, C, fd_o);
}

/* ---- patch embedding ---- */
static float *pe_x, *pe_w, *pe_b, *pe_out, *pe_col;
static int pe_dims, pe_B, pe_Cin, pe_p, pe_Cout, pe_shape[3];
static void pe_fwd(void) {
  ioupos_patch_embed_forward(pe_out, pe_col, pe_x, pe_w, pe_b, pe_dims, pe_B, pe_Cin, pe_shape,
                             pe_p, pe_Cout);
}
static void test_patch_embed(const char *L, int dims, int B, int Cin, const int *shape, int p,
                             int Cout) {
  long nx = (long)B * Cin, ntok = B, K = Cin, k;
  float *G, *dx, *dw, *db, *dx1, *dw1, *db1, *scratch;
  char label[64];
  printf("%s\n", L);
  for (k = 0; k < dims; ++k) {
    nx *= shape[k], ntok *= (shape[k] + p - 1) / p, K *= p;
    pe_shape[k] = shape[k];
  }
  pe_dims = dims, pe_B = B, pe_Cin = Cin, pe_p = p, pe_Cout = Cout;
  pe_x = ld(L, "x", nx), pe_w = ld(L, "w", Cout * K), pe_b = ld(L, "b", Cout);
  G = ld(L, "G", ntok * Cout);
  CHECK(ioupos_patch_embed_col_size(dims, B, Cin, shape, p) == (size_t)(ntok * K), "%s col size",
        L);
  pe_out = talloc(ntok * Cout), pe_col = talloc(ntok * K), scratch = talloc(ntok * K);
  dx = talloc(nx), dw = talloc(Cout * K), db = talloc(Cout);
  pe_fwd();
  cmp(L, "out", pe_out, ntok * Cout, 1e-5, 1e-4); /* K <= 8 products per output */
  CHECK(ioupos_patch_embed_backward(dx, dw, db, scratch, G, pe_col, pe_w, dims, B, Cin, shape, p,
                                    Cout) == 0, "%s backward", L);
  cmp(L, "dx", dx, nx, 1e-5, 1e-4);         /* Cout-term sums; 0 exactly in no padding case */
  cmp(L, "dw", dw, Cout * K, 1e-4, 1e-4);   /* sums over up to 96 patches */
  cmp(L, "db", db, Cout, 1e-4, 1e-4);
  dx1 = copyf(dx, nx), dw1 = copyf(dw, Cout * K), db1 = copyf(db, Cout);
  ioupos_patch_embed_backward(dx, dw, db, scratch, G, pe_col, pe_w, dims, B, Cin, shape, p, Cout);
  snprintf(label, sizeof label, "%s dx", L), acc_check(label, dx, dx1, nx);
  snprintf(label, sizeof label, "%s dw", L), acc_check(label, dw, dw1, Cout * K);
  snprintf(label, sizeof label, "%s db", L), acc_check(label, db, db1, Cout);
  fd_setup(pe_fwd, pe_out, G, ntok * Cout);
  snprintf(label, sizeof label, "%s x", L), fd_check(label, pe_x, dx1, nx, fd_o);
  snprintf(label, sizeof label, "%s w", L), fd_check(label, pe_w, dw1, Cout * K, fd_o);
  snprintf(label, sizeof label, "%s b", L), fd_check(label, pe_b, db1, Cout, fd_o);
}

/* ---- patch merging ---- */
static float *pm_x, *pm_lnw, *pm_lnb, *pm_w, *pm_out, *pm_cat, *pm_lnout, *pm_mean, *pm_rstd;
static int pm_dims, pm_B, pm_C, pm_shape[3];
static void pm_fwd(void) {
  ioupos_patch_merging_forward(pm_out, pm_cat, pm_lnout, pm_mean, pm_rstd, pm_x, pm_lnw, pm_lnb,
                               pm_w, pm_dims, pm_B, pm_shape, pm_C);
}
static void test_patch_merging(const char *L, int dims, int B, const int *shape, int Cc) {
  long nx = (long)B * Cc, M = B, K = (dims == 3 ? 8 : 4) * Cc, k;
  float *G, *dx, *dlnw, *dlnb, *dw, *dx1, *dlnw1, *dlnb1, *dw1, *scratch;
  char label[64];
  printf("%s\n", L);
  for (k = 0; k < dims; ++k) nx *= shape[k], M *= (shape[k] + 1) / 2, pm_shape[k] = shape[k];
  pm_dims = dims, pm_B = B, pm_C = Cc;
  pm_x = ld(L, "x", nx), pm_lnw = ld(L, "lnw", K), pm_lnb = ld(L, "lnb", K);
  pm_w = ld(L, "w", 2 * Cc * K), G = ld(L, "G", M * 2 * Cc);
  pm_out = talloc(M * 2 * Cc), pm_cat = talloc(M * K), pm_lnout = talloc(M * K);
  pm_mean = talloc(M), pm_rstd = talloc(M), scratch = talloc(2 * M * K);
  dx = talloc(nx), dlnw = talloc(K), dlnb = talloc(K), dw = talloc(2 * Cc * K);
  pm_fwd();
  /* layer norm then a K-term (24 or 32) product sum with O(1) values */
  cmp(L, "out", pm_out, M * 2 * Cc, 1e-5, 1e-4);
  CHECK(ioupos_patch_merging_backward(dx, dlnw, dlnb, dw, scratch, G, pm_cat, pm_lnout, pm_mean,
                                      pm_rstd, pm_lnw, pm_w, dims, B, pm_shape, Cc) == 0,
        "%s backward", L);
  cmp(L, "dx", dx, nx, 1e-5, 1e-4);
  cmp(L, "dlnw", dlnw, K, 1e-4, 1e-4); /* sums over M <= 32 rows */
  cmp(L, "dlnb", dlnb, K, 1e-4, 1e-4);
  cmp(L, "dw", dw, 2 * Cc * K, 1e-4, 1e-4);
  dx1 = copyf(dx, nx), dlnw1 = copyf(dlnw, K), dlnb1 = copyf(dlnb, K), dw1 = copyf(dw, 2 * Cc * K);
  ioupos_patch_merging_backward(dx, dlnw, dlnb, dw, scratch, G, pm_cat, pm_lnout, pm_mean,
                                pm_rstd, pm_lnw, pm_w, dims, B, pm_shape, Cc);
  snprintf(label, sizeof label, "%s dx", L), acc_check(label, dx, dx1, nx);
  snprintf(label, sizeof label, "%s dlnw", L), acc_check(label, dlnw, dlnw1, K);
  snprintf(label, sizeof label, "%s dlnb", L), acc_check(label, dlnb, dlnb1, K);
  snprintf(label, sizeof label, "%s dw", L), acc_check(label, dw, dw1, 2 * Cc * K);
  fd_setup(pm_fwd, pm_out, G, M * 2 * Cc);
  snprintf(label, sizeof label, "%s x", L), fd_check(label, pm_x, dx1, nx, fd_o);
  snprintf(label, sizeof label, "%s lnw", L), fd_check(label, pm_lnw, dlnw1, K, fd_o);
  snprintf(label, sizeof label, "%s lnb", L), fd_check(label, pm_lnb, dlnb1, K, fd_o);
  snprintf(label, sizeof label, "%s w", L), fd_check(label, pm_w, dw1, 2 * Cc * K, fd_o);
}

/* ---- MLP ---- */
enum { MLP_H = 48 };
static float *ml_x, *ml_w1, *ml_b1, *ml_w2, *ml_b2, *ml_out, *ml_hpre, *ml_hact;
static void ml_fwd(void) {
  ioupos_mlp_forward(ml_out, ml_hpre, ml_hact, ml_x, ml_w1, ml_b1, ml_w2, ml_b2, N, C, MLP_H);
}
static void test_mlp(void) {
  const char *L = "mlp";
  float *G, *dx, *dw1, *db1, *dw2, *db2, *scratch, *s[5], *c1[5];
  long sz[5] = {N * C, MLP_H * C, MLP_H, C * MLP_H, C};
  const char *nm[5] = {"dx", "dw1", "db1", "dw2", "db2"};
  int k;
  printf("mlp\n");
  ml_x = ld(L, "x", N * C), ml_w1 = ld(L, "w1", MLP_H * C), ml_b1 = ld(L, "b1", MLP_H);
  ml_w2 = ld(L, "w2", C * MLP_H), ml_b2 = ld(L, "b2", C), G = ld(L, "G", N * C);
  ml_out = talloc(N * C), ml_hpre = talloc(N * MLP_H), ml_hact = talloc(N * MLP_H);
  scratch = talloc(N * MLP_H);
  dx = talloc(N * C), dw1 = talloc(MLP_H * C), db1 = talloc(MLP_H), dw2 = talloc(C * MLP_H);
  db2 = talloc(C);
  s[0] = dx, s[1] = dw1, s[2] = db1, s[3] = dw2, s[4] = db2;
  ml_fwd();
  cmp(L, "out", ml_out, N * C, 1e-5, 1e-4); /* two GEMMs of 20 and 48 terms */
  CHECK(ioupos_mlp_backward(dx, dw1, db1, dw2, db2, scratch, G, ml_x, ml_hpre, ml_hact, ml_w1,
                            ml_w2, N, C, MLP_H) == 0, "mlp backward");
  cmp(L, "dx", dx, N * C, 1e-5, 1e-4);
  cmp(L, "dw1", dw1, MLP_H * C, 1e-4, 1e-4); /* 37-term sums of O(1) */
  cmp(L, "db1", db1, MLP_H, 1e-4, 1e-4);
  cmp(L, "dw2", dw2, C * MLP_H, 1e-4, 1e-4);
  cmp(L, "db2", db2, C, 1e-4, 1e-4);
  for (k = 0; k < 5; ++k) c1[k] = copyf(s[k], sz[k]);
  ioupos_mlp_backward(dx, dw1, db1, dw2, db2, scratch, G, ml_x, ml_hpre, ml_hact, ml_w1, ml_w2, N,
                      C, MLP_H);
  for (k = 0; k < 5; ++k) {
    char label[32];
    snprintf(label, sizeof label, "mlp %s", nm[k]);
    acc_check(label, s[k], c1[k], sz[k]);
  }
  fd_setup(ml_fwd, ml_out, G, N * C);
  fd_check("mlp x", ml_x, c1[0], N * C, fd_o);
  fd_check("mlp w1", ml_w1, c1[1], MLP_H * C, fd_o);
  fd_check("mlp b1", ml_b1, c1[2], MLP_H, fd_o);
  fd_check("mlp w2", ml_w2, c1[3], C * MLP_H, fd_o);
  fd_check("mlp b2", ml_b2, c1[4], C, fd_o);
}

/* ---- drop path: no torch fixture (torch's RNG is not ours); semantics checked directly ---- */
enum { DP_B = 5, DP_S = 6 };
static float *dp_x, *dp_out, *dp_mask;
static void dp_fwd(void) { ioupos_drop_path_forward(dp_out, dp_x, dp_mask, DP_B, DP_S); }
static void test_drop_path(void) {
  ioupos_rng r1, r2;
  enum { NB = 100000 };
  float *m = talloc(NB), *m2 = talloc(NB), *G, *dx, *dx1;
  long i, kept = 0, bad = 0;
  double p_keep = 0.9, sd;
  printf("drop_path\n");
  ioupos_rng_seed(&r1, 42), ioupos_rng_seed(&r2, 42);
  ioupos_drop_path_mask(m, NB, 0.1f, &r1);
  ioupos_drop_path_mask(m2, NB, 0.1f, &r2);
  CHECK(memcmp(m, m2, sizeof(float) * NB) == 0, "drop path mask not reproducible from the seed");
  for (i = 0; i < NB; ++i) {
    if (m[i] == 0.0f) continue;
    ++kept;
    if (m[i] != (float)(1.0 / (1.0 - (double)0.1f))) ++bad;
  }
  /* binomial: |kept - n p| within 5 standard deviations */
  sd = sqrt(NB * p_keep * (1 - p_keep));
  printf("  drop_path keep fraction %.5f (expected %.5f), 5 sd %.5f\n", (double)kept / NB,
         1 - (double)0.1f, 5 * sd / NB);
  CHECK(fabs(kept - NB * (1 - (double)0.1f)) <= 5 * sd, "kept %ld of %d", kept, (int)NB);
  CHECK(bad == 0, "%ld kept samples not scaled by 1/keep", bad);
  ioupos_drop_path_mask(m, 4, 0.0f, &r1);
  CHECK(m[0] == 1 && m[1] == 1 && m[2] == 1 && m[3] == 1, "drop_prob 0 must keep all");
  ioupos_drop_path_mask(m, 4, 1.0f, &r1);
  CHECK(m[0] == 0 && m[1] == 0 && m[2] == 0 && m[3] == 0, "drop_prob 1 must drop all");
  /* forward / backward against a direct computation, and finite differences */
  dp_x = talloc(DP_B * DP_S), dp_out = talloc(DP_B * DP_S), dp_mask = talloc(DP_B);
  G = talloc(DP_B * DP_S), dx = talloc(DP_B * DP_S);
  for (i = 0; i < DP_B * DP_S; ++i)
    dp_x[i] = (float)(ioupos_rng_uniform(&r1) * 2 - 1), G[i] = (float)(ioupos_rng_uniform(&r1) - 0.5);
  for (i = 0; i < DP_B; ++i) dp_mask[i] = (i % 2) ? 0.0f : 1.0f / 0.75f;
  dp_fwd();
  bad = 0;
  for (i = 0; i < DP_B * DP_S; ++i)
    if (dp_out[i] != dp_x[i] * dp_mask[i / DP_S]) ++bad;
  CHECK(bad == 0, "drop path forward differs at %ld elements", bad);
  ioupos_drop_path_backward(dx, G, dp_mask, DP_B, DP_S);
  dx1 = copyf(dx, DP_B * DP_S);
  ioupos_drop_path_backward(dx, G, dp_mask, DP_B, DP_S);
  acc_check("drop_path dx", dx, dx1, DP_B * DP_S);
  fd_setup(dp_fwd, dp_out, G, DP_B * DP_S);
  fd_check("drop_path x", dp_x, dx1, DP_B * DP_S, fd_o);
}

int main(void) {
  static const int pe2[2] = {12, 16}, pe2pad[2] = {13, 15}, pe3[3] = {4, 6, 5};
  static const int pm2[2] = {5, 7}, pm3[3] = {3, 4, 5};
  ioupos_rng_seed(&fd_rng, 7);
  fd_o = fd_opts_make(fd_loss, FD_SAMPLES, FD_H, FD_ATOL, FD_RTOL);
  fd_relu = fd_o;
  fd_relu.skip_near_zero = 2 * FD_H;
  printf("GEMM kernel: %s\n", ioupos_gemm_simd() ? "AVX2+FMA" : "portable");
  test_linear();
  test_layernorm();
  test_elementwise("gelu", 0);
  test_elementwise("relu", 1);
  test_elementwise("softmax", 2);
  test_elementwise("l2norm", 3);
  test_avgpool();
  test_batchnorm(0);
  test_batchnorm(1);
  test_patch_embed("patchembed2d", 2, 2, 2, pe2, 2, 8);
  test_patch_embed("patchembed2dpad", 2, 2, 1, pe2pad, 2, 8);
  test_patch_embed("patchembed3d", 3, 1, 1, pe3, 2, 6);
  test_patch_merging("merging2d", 2, 2, pm2, 6);
  test_patch_merging("merging3d", 3, 1, pm3, 4);
  test_drop_path();
  test_mlp();
  tfree_all();
  return tu_finish("test_layers");
}
