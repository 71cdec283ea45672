/* tests/test_losses.c — ioupos.h section 14 against lightly 1.6.0 / PyTorch 2.15.0 (fixtures written by
   tests/reference/losses_fixture.py into tests/fixtures/losses), plus finite differences.

   For every loss / layer:
     1. the forward value and every gradient are compared with torch via tu_compare, per-tensor
        |x - ref| <= atol + rtol |ref|; the tolerances and their reasons are next to each
        comparison (torch computes in float32, we accumulate in double, so the tolerances are
        float32 rounding of the reference, a few ulps times the reduction length);
     2. backward ACCUMULATES: a second backward call must give exactly twice the first
        (|g2 - 2 g1| <= 1e-6 |2 g1| + 1e-30);
     3. finite differences in double: for up to FD_SAMPLES elements of each differentiated input,
        (L(x + h) - L(x - h)) / (x+h - x-h) with h = 1e-3 (1e-4 for DINO) applied to the float tensor (the
        denominator is the difference actually stored); L is the double the forward returns
        (losses) or sum(out * G) accumulated in double (weight-normalised linear). Tolerances
        per case, with reasons, at each fd_check call.
   Prints the worst element of each comparison and "test_losses: N checks passed, M failed";
   exits 1 on any failure. Run from the repository root (fixture paths are relative). */
#include "ioupos.h"
#include "tests/npy.h"
#include "tests/test_util.h"

#include <math.h>
#include <string.h>

#define FIX "tests/fixtures/losses/"
#define FD_SAMPLES 12

#include "tests/fixture_util.h"
#include "tests/fd_check.h"

/* ---- finite differences (tests/fd_check.h): L is fd_loss, set per case ---- */
static double (*fd_loss)(void);
static fd_opts tol(double h, double atol, double rtol) {
  return fd_opts_make(fd_loss, FD_SAMPLES, h, atol, rtol);
}

/* ============================================================================================ */
/* ---- SimSiam: symmetric negative cosine, stop-gradient on z ---- */
enum { SB = 6, SD = 16 };
static float *ss_p1, *ss_p2, *ss_z1, *ss_z2;
static double ss_fwd(void) { return ioupos_simsiam_loss_forward(ss_p1, ss_p2, ss_z1, ss_z2, SB, SD); }

static void test_simsiam(const char *c, int do_fd) {
  float loss, *dp1, *dp2, *cs1, *cs2, *dout, *dq1;
  long n = SB * SD, i;
  printf("%s\n", c);
  ss_p1 = ld(c, "p1", n), ss_p2 = ld(c, "p2", n), ss_z1 = ld(c, "z1", n), ss_z2 = ld(c, "z2", n);
  dp1 = talloc(n), dp2 = talloc(n);
  loss = (float)ss_fwd();
  /* mean of 2 x 6 cosines in [-1, 1]; torch's float32 sums: a few ulps of O(1) */
  cmp(c, "loss", &loss, 1, 1e-6, 1e-5);
  ioupos_simsiam_loss_backward(dp1, dp2, 1.0f, ss_p1, ss_p2, ss_z1, ss_z2, SB, SD);
  /* 16-term float dot products and norms in torch; the eps rows reach ~1e7, hence rtol */
  cmp(c, "dp1", dp1, n, 1e-7, 1e-4);
  cmp(c, "dp2", dp2, n, 1e-7, 1e-4);
  {
    float *g1 = copyf(dp1, n), *g2 = copyf(dp2, n);
    ioupos_simsiam_loss_backward(dp1, dp2, 1.0f, ss_p1, ss_p2, ss_z1, ss_z2, SB, SD);
    acc_check("simsiam dp1", dp1, g1, n);
    acc_check("simsiam dp2", dp2, g2, n);
    if (do_fd) {
      fd_loss = ss_fwd;
      /* L is exact in double; central-difference truncation h^2 |L'''| / 6 with |L'''| ~
         1 / (N |p|^3) ~ 1e-3 gives ~1e-10; the float perturbation is exact in the
         denominator. 1e-6 absolute leaves room for the double sums' rounding / 2h. */
      fd_check("simsiam p1", ss_p1, g1, n, tol(1e-3, 1e-6, 1e-3));
      fd_check("simsiam p2", ss_p2, g2, n, tol(1e-3, 1e-6, 1e-3));
    }
  }
  /* the public cosine similarity gives the same: L = -(mean cos(p1,z2) + mean cos(p2,z1)) / 2,
     dp1 = cosine backward with dout = -1 / (2N) */
  cs1 = talloc(SB), cs2 = talloc(SB), dout = talloc(SB), dq1 = talloc(n);
  ioupos_cosine_similarity_forward(cs1, ss_p1, ss_z2, SB, SD, 1e-8f);
  ioupos_cosine_similarity_forward(cs2, ss_p2, ss_z1, SB, SD, 1e-8f);
  {
    double s = 0.0;
    for (i = 0; i < SB; ++i) s += (double)cs1[i] + cs2[i];
    loss = (float)(-s / (2.0 * SB));
    /* same as above plus the float rounding of 12 cosines */
    cmp(c, "loss", &loss, 1, 1e-6, 1e-5);
  }
  for (i = 0; i < SB; ++i) dout[i] = (float)(-1.0 / (2.0 * SB));
  ioupos_cosine_similarity_backward(dq1, dout, ss_p1, ss_z2, SB, SD, 1e-8f);
  cmp(c, "dp1", dq1, n, 1e-7, 1e-4); /* as dp1 above */
}

/* ---- DINO ---- */
static float *dn_t, *dn_s, *dn_c, *dn_tp, *dn_sl;
static int dn_NT, dn_NS, dn_B, dn_D;
static float dn_T;
static double dn_fwd(void) {
  return ioupos_dino_loss_forward(dn_tp, dn_sl, dn_t, dn_s, dn_c, dn_NT, dn_NS, dn_B, dn_D, dn_T,
                                  0.1f);
}

static void test_dino(const char *c) {
  float *meta = ld(c, "meta", 5), *ds, *c1, loss;
  long nt, ns;
  printf("%s\n", c);
  dn_NT = (int)meta[0], dn_NS = (int)meta[1], dn_B = (int)meta[2], dn_D = (int)meta[3];
  dn_T = meta[4];
  printf("  views teacher %d student %d, batch %d, dim %d, teacher temp %g\n", dn_NT, dn_NS, dn_B,
         dn_D, dn_T);
  nt = (long)dn_NT * dn_B * dn_D, ns = (long)dn_NS * dn_B * dn_D;
  dn_t = ld(c, "teacher", nt), dn_s = ld(c, "student", ns), dn_c = ld(c, "center0", dn_D);
  dn_tp = talloc(nt), dn_sl = talloc(ns), ds = talloc(ns);
  loss = (float)dn_fwd();
  /* O(3) cross-entropy averaged over 6 x (pairs) rows; torch's float32 log_softmax and einsum */
  cmp(c, "loss", &loss, 1, 1e-5, 1e-5);
  ioupos_dino_loss_backward(ds, 1.0f, dn_tp, dn_sl, dn_NT, dn_NS, dn_B, dn_D, 0.1f);
  /* values ~1e-2; torch's float softmax of logits / 0.04 (relative error ~ |x| / T * 2^-24
     ~ 1e-6) and its float einsum / sums over <= 3 teacher views */
  cmp(c, "dstudent", ds, ns, 1e-7, 1e-4);
  {
    float *g1 = copyf(ds, ns);
    ioupos_dino_loss_backward(ds, 1.0f, dn_tp, dn_sl, dn_NT, dn_NS, dn_B, dn_D, 0.1f);
    acc_check("dino dstudent", ds, g1, ns);
    fd_loss = dn_fwd;
    /* L is accumulated in double from double log-softmax values (noise ~1e-15, ~1e-11 after
       / 2h); the logits are divided by T_s = 0.1, so |L'''| ~ 1 / (T_s^3 n_pairs B) ~ 100 and
       h = 1e-4 keeps the truncation h^2 |L'''| / 6 ~ 2e-7 (h = 1e-3 would give ~2e-5, the size of
       the smallest gradients); the float perturbation x +- h is exact in the denominator. */
    fd_check("dino student", dn_s, g1, ns, tol(1e-4, 1e-6, 1e-3));
  }
  /* the centre update, after the loss, with the same (uncentred) teacher logits */
  c1 = copyf(dn_c, dn_D);
  ioupos_dino_center_update(c1, dn_t, dn_NT, dn_B, dn_D, 0.9f);
  /* 0.9 c + 0.1 mean: torch rounds the float mean over 12 rows and two float products */
  cmp(c, "center1", c1, dn_D, 1e-7, 1e-5);
}

/* ---- weight-normalised linear ---- */
enum { WN = 6, WC = 16, WO = 32 };
static float *wn_x, *wn_v, *wn_g, *wn_out, *wn_G, *wn_w, *wn_nrm;
static int wn_frozen;
static double wn_fwd(void) {
  double s = 0.0;
  long i;
  ioupos_wnlinear_forward(wn_out, wn_w, wn_nrm, wn_x, wn_v, wn_frozen ? NULL : wn_g, WN, WC, WO);
  for (i = 0; i < WN * WO; ++i) s += (double)wn_out[i] * wn_G[i];
  return s;
}

static void test_wn(const char *c, int frozen) {
  float *dx, *dv, *dg, *dW;
  printf("%s\n", c);
  wn_frozen = frozen;
  wn_x = ld(c, "x", WN * WC), wn_v = ld(c, "v", WO * WC), wn_g = ld(c, "g", WO);
  wn_G = ld(c, "G", WN * WO);
  wn_out = talloc(WN * WO), wn_w = talloc(WO * WC), wn_nrm = talloc(WO);
  dx = talloc(WN * WC), dv = talloc(WO * WC), dg = talloc(WO), dW = talloc(WO * WC);
  if (frozen) {
    long i, bad = 0;
    for (i = 0; i < WO; ++i) bad += wn_g[i] != 1.0f;
    CHECK(bad == 0, "%s: fixture g is not all 1", c);
  }
  CHECK(ioupos_wnlinear_forward(wn_out, wn_w, wn_nrm, wn_x, wn_v, frozen ? NULL : wn_g, WN, WC,
                                WO) == 0,
        "wnlinear forward");
  /* 16-term float products of O(1) inputs with unit-norm (times g) weight rows */
  cmp(c, "out", wn_out, WN * WO, 1e-5, 1e-4);
  CHECK(ioupos_wnlinear_backward(dx, dv, frozen ? NULL : dg, dW, wn_G, wn_x, wn_v,
                                 frozen ? NULL : wn_g, wn_w, wn_nrm, WN, WC, WO) == 0,
        "wnlinear backward");
  cmp(c, "dx", dx, WN * WC, 1e-5, 1e-4); /* 32-term sums of O(1) values */
  cmp(c, "dv", dv, WO * WC, 1e-5, 1e-4); /* 6-term dW then a 16-term projection, / |v| ~ 2 */
  if (!frozen) cmp(c, "dg", dg, WO, 1e-5, 1e-4); /* 16-term dot of vhat with dW */
  {
    float *dx1 = copyf(dx, WN * WC), *dv1 = copyf(dv, WO * WC), *dg1 = copyf(dg, WO);
    ioupos_wnlinear_backward(dx, dv, frozen ? NULL : dg, dW, wn_G, wn_x, wn_v,
                             frozen ? NULL : wn_g, wn_w, wn_nrm, WN, WC, WO);
    acc_check("wnlinear dx", dx, dx1, WN * WC);
    acc_check("wnlinear dv", dv, dv1, WO * WC);
    if (!frozen) acc_check("wnlinear dg", dg, dg1, WO);
    fd_loss = wn_fwd;
    /* L = sum(out * G) from the float output: 192 outputs of O(1) rounded to 6e-8 relative give
       L noise ~1e-6, ~1e-3 after / 2h (as test_layers.c) */
    fd_check("wnlinear x", wn_x, dx1, WN * WC, tol(1e-3, 5e-3, 1e-2));
    fd_check("wnlinear v", wn_v, dv1, WO * WC, tol(1e-3, 5e-3, 1e-2));
    if (!frozen) fd_check("wnlinear g", wn_g, dg1, WO, tol(1e-3, 5e-3, 1e-2));
  }
}

/* ---- cross-entropy ---- */
enum { CN = 10, CK = 5 };
static float *ce_x, *ce_p;
static int ce_t[CN];
static double ce_fwd(void) { return ioupos_crossentropy_forward(ce_p, ce_x, ce_t, CN, CK); }

static void test_ce(void) {
  const char *c = "ce";
  float *tf, *dx, loss;
  int i;
  printf("%s\n", c);
  ce_x = ld(c, "logits", CN * CK), tf = ld(c, "targets", CN);
  for (i = 0; i < CN; ++i) ce_t[i] = (int)tf[i];
  ce_p = talloc(CN * CK), dx = talloc(CN * CK);
  loss = (float)ce_fwd();
  cmp(c, "loss", &loss, 1, 1e-6, 1e-5); /* mean of 10 float log-softmax values O(1) */
  ioupos_crossentropy_backward(dx, 1.0f, ce_p, ce_t, CN, CK);
  cmp(c, "dlogits", dx, CN * CK, 1e-7, 1e-5); /* (softmax - onehot) / 10 in float */
  {
    float *g1 = copyf(dx, CN * CK);
    ioupos_crossentropy_backward(dx, 1.0f, ce_p, ce_t, CN, CK);
    acc_check("ce dlogits", dx, g1, CN * CK);
    fd_loss = ce_fwd;
    /* L exact in double from the float logits; truncation h^2 |L'''| / 6 ~ 1e-8 */
    fd_check("ce logits", ce_x, g1, CN * CK, tol(1e-3, 1e-6, 1e-3));
  }
}

int main(void) {
  ioupos_rng_seed(&fd_rng, 20261125u);
  test_simsiam("simsiam", 1);
  test_simsiam("simsiameps", 0); /* norms below eps: compared with torch, no finite differences */
  test_dino("dino");
  test_dino("dino2");
  test_wn("wnfrozen", 1);
  test_wn("wn", 0);
  test_ce();
  tfree_all();
  return tu_finish("test_losses");
}
