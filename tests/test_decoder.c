/* tests/test_decoder.c — wip/decoder.h (the SwinUNETR decoder's layers) against PyTorch / MONAI
   1.6.1 (fixtures written by tests/reference/decoder_fixture.py into tests/fixtures/decoder),
   against direct double-precision loops, and by finite differences.

   For every layer (transposes, conv k 1 / 3 / 5, transposed conv k2 s2, instance norm, leaky
   ReLU, channel concat, UnetResBlock, UnetrUpBlock, UnetOutBlock; 2D and 3D):
     1. forward output and every gradient of L = sum(out * G) (G fixed, from the fixture) are
        compared with torch via tu_compare, per-tensor |x - ref| <= atol + rtol |ref|; the
        tolerances and their reasons are next to each case;
     2. backward ACCUMULATES: a second backward call must give twice the first (acc_check_s);
     3. finite differences: for up to FD_SAMPLES elements of each input and parameter,
        (L(x + h) - L(x - h)) / (x+h - x-h), h = 1e-3, the perturbation applied to the float
        tensor (the denominator is the difference actually stored) and L accumulated in double
        from the float forward output; |fd - g| <= 5e-3 + 1e-2 |g| as tests/test_layers.c (float
        forward noise ~1e-6 in L, i.e. ~1e-3 after dividing by 2h; truncation O(h^2)). The
        simple layers use the fixture tensors; the composite blocks use tiny shapes drawn here
        (fewer outputs, less noise). Where the layer has leaky ReLUs, a sample whose +-h
        forward flips the sign of any leaky ReLU input is skipped (the central difference
        straddles the kink there) and counted; at least half the samples must remain.
   The convolutions' plain references (ioupos__conv_forward_ref and the others: direct loops,
   double sums) run the same fixture cases with the same tolerances.
   Then: the im2col / GEMM blocking (4096 positions) on sizes above one block against direct
   double loops, and the plain references within the same bound of those loops (their bias
   gradients bit-identical to the fast path's), NULL-gradient and bias-NULL variants, and
   argument errors.
   Prints the worst element of each comparison and "test_decoder: N checks passed, M failed";
   exits 1 on any failure. Run from the repository root (fixture paths are relative). */
#include "ioupos.h"

#include <math.h>
#include <string.h>

#define FIX "tests/fixtures/decoder/"
#define FD_SAMPLES 16
#define FD_H 1e-3
#define FD_ATOL 5e-3
#define FD_RTOL 1e-2

#include "tests/fixture_util.h"
#include "tests/fd_check.h"

/* ============================================================================================
   The case under test: up to 8 differentiable tensors (inputs then parameters), the output,
   G, and the layer's forward / backward on them.
   ============================================================================================ */
enum { MAXP = 8 };
static struct {
  const char *name;
  int np;
  const char *pn[MAXP]; /* fixture names: "x", "w", ... ; gradients are "d" + name */
  long psz[MAXP];
  float *p[MAXP], *g[MAXP];
  long nout;
  float *out, *G;
  /* the leaky ReLU inputs (sign pattern) for the finite differences' kink test */
  const float *kink[2];
  long nkink[2];
} T;

/* layer configuration */
static struct {
  int dims, B, Cin, Cout, k, shape[3], C2;
  size_t n; /* positions per plane of the input shape */
  int bias; /* the last parameter is a bias */
  int ref;  /* run the plain reference (ioupos__conv*_ref) instead of the public function */
  float *scratch, *acts, *mean, *rstd;
} Kf;

static void (*T_fwd)(void);
static void (*T_bwd)(void);

static void st_ok(int st, const char *what) {
  if (st) CHECK(0, "%s returned %d (%s)", what, st, ioupos_failure_reason());
}

/* ---- finite differences (tests/fd_check.h): L = sum(out * G); a sample whose +-h forward
   flips the sign of a leaky ReLU input (T.kink) is skipped ---- */
static double fd_loss(void) {
  double s = 0.0;
  long i;
  T_fwd();
  for (i = 0; i < T.nout; ++i) s += (double)T.out[i] * T.G[i];
  return s;
}
static fd_opts fd_T(void) {
  fd_opts o = fd_opts_make(fd_loss, FD_SAMPLES, FD_H, FD_ATOL, FD_RTOL);
  o.kink[0] = T.kink[0], o.kink[1] = T.kink[1];
  o.nkink[0] = T.nkink[0], o.nkink[1] = T.nkink[1];
  return o;
}

/* ---- backward accumulates: a second call gives twice the first ----
   Not bit-exact here (unlike tests/fixture_util.h's acc_check): a gradient element is built by
   several float additions into the destination (the conv's k^dims taps, the samples of a batch,
   the GEMM's K blocks, the resblock's two branches), and adding them onto g1 instead of 0 rounds
   each by up to u = 6e-8 times the running sum, which exceeds |g1| where the partials cancel.
   Tolerance |g2 - 2 g1| <= 1e-6 |2 g1| + 1e-6 max|g1| (about 16 u of the tensor's scale); a
   backward that overwrote (=) instead of accumulating would be off by |g1| itself. */
static void acc_check_s(const char *label, const float *g2, const float *g1, long n) {
  long i, bad = 0, wi = 0;
  double mx = 0.0, wex = -1e300;
  for (i = 0; i < n; ++i) mx = fabs(g1[i]) > mx ? fabs(g1[i]) : mx;
  for (i = 0; i < n; ++i) {
    double want = 2.0 * (double)g1[i], ex = fabs(g2[i] - want) - (1e-6 * fabs(want) + 1e-6 * mx);
    if (!(ex <= 0)) ++bad;
    if (ex > wex || ex != ex) wex = ex, wi = i;
  }
  if (g2[wi] != 2.0f * g1[wi]) /* print where it is not bit-exact */
    printf("  %-36s accumulate not bit-exact: worst [%ld] %.9g vs 2 x %.9g (max |g| %.4g)\n",
           label, wi, (double)g2[wi], (double)g1[wi], mx);
  CHECK(bad == 0, "%s: second backward is not 2x the first at %ld elements", label, bad);
}

/* ---- the generic case runner ---- */
static void case_begin(const char *name, long nout) {
  memset(&T, 0, sizeof T);
  T.name = name;
  T.nout = nout;
  T.out = talloc(nout);
}
static void case_param(const char *pn, long n) {
  T.pn[T.np] = pn;
  T.psz[T.np] = n;
  T.g[T.np] = talloc(n);
  T.np++;
}
static void zero_grads(void) {
  int j;
  for (j = 0; j < T.np; ++j) memset(T.g[j], 0, sizeof(float) * (size_t)T.psz[j]);
}

/* Fixture case: load the tensors and G, compare forward and backward (tolerances atol / rtol
   for the output and per gradient), check that backward accumulates, and finite differences. */
static void run_fixture(double atol_out, double rtol_out, const double *atol_g,
                        const double *rtol_g, int do_fd) {
  int j;
  float *g1[MAXP];
  char label[96];
  printf("%s\n", T.name);
  for (j = 0; j < T.np; ++j) T.p[j] = ld(T.name, T.pn[j], T.psz[j]);
  T.G = ld(T.name, "G", T.nout);
  T_fwd();
  cmp(T.name, "out", T.out, T.nout, atol_out, rtol_out);
  zero_grads();
  T_bwd();
  for (j = 0; j < T.np; ++j) {
    char dn[16];
    snprintf(dn, sizeof dn, "d%s", T.pn[j]);
    cmp(T.name, dn, T.g[j], T.psz[j], atol_g[j], rtol_g[j]);
    g1[j] = copyf(T.g[j], T.psz[j]);
  }
  T_bwd();
  for (j = 0; j < T.np; ++j) {
    snprintf(label, sizeof label, "%s d%s", T.name, T.pn[j]);
    acc_check_s(label, T.g[j], g1[j], T.psz[j]);
  }
  if (do_fd)
    for (j = 0; j < T.np; ++j) {
      snprintf(label, sizeof label, "%s %s", T.name, T.pn[j]);
      fd_check(label, T.p[j], g1[j], T.psz[j], fd_T());
    }
}

/* Tiny generated case: uniform inputs / parameters (scale[j]) and G, one backward, the
   accumulate check, then finite differences of every tensor. */
static void run_tiny(const float *scale) {
  int j;
  long i;
  float *g1[MAXP];
  char label[96];
  ioupos_rng r;
  printf("%s (tiny, generated)\n", T.name);
  ioupos_rng_seed(&r, 99);
  for (j = 0; j < T.np; ++j) {
    T.p[j] = talloc(T.psz[j]);
    for (i = 0; i < T.psz[j]; ++i) T.p[j][i] = (float)((ioupos_rng_uniform(&r) * 2 - 1) * scale[j]);
  }
  T.G = talloc(T.nout);
  for (i = 0; i < T.nout; ++i) T.G[i] = (float)(ioupos_rng_uniform(&r) * 2 - 1);
  T_fwd();
  zero_grads();
  T_bwd();
  for (j = 0; j < T.np; ++j) g1[j] = copyf(T.g[j], T.psz[j]);
  T_bwd();
  for (j = 0; j < T.np; ++j) {
    snprintf(label, sizeof label, "%s tiny d%s", T.name, T.pn[j]);
    acc_check_s(label, T.g[j], g1[j], T.psz[j]);
  }
  for (j = 0; j < T.np; ++j) {
    snprintf(label, sizeof label, "%s tiny %s", T.name, T.pn[j]);
    fd_check(label, T.p[j], g1[j], T.psz[j], fd_T());
  }
}

static void cfg(int dims, int B, int Cin, int Cout, int k, const int *shape) {
  int d;
  memset(&Kf, 0, sizeof Kf);
  Kf.dims = dims, Kf.B = B, Kf.Cin = Cin, Kf.Cout = Cout, Kf.k = k, Kf.n = 1;
  for (d = 0; d < dims; ++d) Kf.shape[d] = shape[d], Kf.n *= (size_t)shape[d];
}

/* ============================================================================================
   Layers as (forward, backward) on T and Kf
   ============================================================================================ */

/* ---- transposes: p0 = x ---- */
static int tr_first;
static void tr_fwd(void) {
  if (tr_first) ioupos_to_channels_first(T.out, T.p[0], Kf.B, Kf.n, Kf.Cin);
  else ioupos_to_channels_last(T.out, T.p[0], Kf.B, Kf.n, Kf.Cin);
}
static void tr_bwd(void) {
  if (tr_first) ioupos_to_channels_first_backward(T.g[0], T.G, Kf.B, Kf.n, Kf.Cin);
  else ioupos_to_channels_last_backward(T.g[0], T.G, Kf.B, Kf.n, Kf.Cin);
}
static void test_transpose(const char *name, int first, int dims, int C, const int *shape) {
  static const double at[1] = {0.0}, rt[1] = {0.0};
  long nx;
  cfg(dims, 2, C, C, 1, shape);
  tr_first = first;
  nx = (long)Kf.B * C * (long)Kf.n;
  case_begin(name, nx);
  case_param("x", nx);
  T_fwd = tr_fwd, T_bwd = tr_bwd;
  /* a permutation copies: exact; its backward adds each G once into zeros: exact */
  run_fixture(0.0, 0.0, at, rt, 1);
}

/* ---- convolution: p0 = x, p1 = w, p2 = b (when bias) ---- */
static void conv_fwd(void) {
  if (Kf.ref)
    ioupos__conv_forward_ref(T.out, T.p[0], T.p[1], Kf.bias ? T.p[2] : NULL, Kf.dims, Kf.B, Kf.Cin,
                             Kf.shape, Kf.k, Kf.Cout);
  else
    st_ok(ioupos_conv_forward(T.out, Kf.scratch, T.p[0], T.p[1], Kf.bias ? T.p[2] : NULL, Kf.dims,
                              Kf.B, Kf.Cin, Kf.shape, Kf.k, Kf.Cout), "conv forward");
}
static void conv_bwd(void) {
  if (Kf.ref)
    ioupos__conv_backward_ref(T.g[0], T.g[1], Kf.bias ? T.g[2] : NULL, T.G, T.p[0], T.p[1],
                              Kf.dims, Kf.B, Kf.Cin, Kf.shape, Kf.k, Kf.Cout);
  else
    st_ok(ioupos_conv_backward(T.g[0], T.g[1], Kf.bias ? T.g[2] : NULL, Kf.scratch, T.G, T.p[0],
                               T.p[1], Kf.dims, Kf.B, Kf.Cin, Kf.shape, Kf.k, Kf.Cout),
          "conv backward");
}
static void setup_conv(const char *name, int dims, int B, int Cin, int Cout, int k,
                       const int *shape, int bias) {
  long kv = 1, d;
  cfg(dims, B, Cin, Cout, k, shape);
  for (d = 0; d < dims; ++d) kv *= k;
  Kf.bias = bias;
  Kf.scratch = talloc((long)ioupos_conv_scratch_size(dims, Cin, shape, k));
  case_begin(name, (long)B * Cout * (long)Kf.n);
  case_param("x", (long)B * Cin * (long)Kf.n);
  case_param("w", (long)Cout * Cin * kv);
  if (bias) case_param("b", Cout);
  T_fwd = conv_fwd, T_bwd = conv_bwd;
}
static void test_conv(const char *name, int dims, int Cin, int Cout, int k, const int *shape,
                      int bias) {
  /* out: sums of Cin k^dims <= 108 float products of O(1) (GEMM in float; torch in float),
     values up to ~10: atol 2e-5, rtol 1e-4. dx: Cout k^dims <= 100 terms; dw: sums over
     B n <= 240 positions, values O(10-30): atol 1e-4, rtol 1e-4; db: 126-240 terms of O(1). */
  static const double at[3] = {2e-5, 1e-4, 1e-4}, rt[3] = {1e-4, 1e-4, 1e-4};
  setup_conv(name, dims, 2, Cin, Cout, k, shape, bias);
  run_fixture(2e-5, 1e-4, at, rt, 1);
  /* the plain reference (direct loops, double sums) against the same fixture and tolerances */
  printf("(plain reference) ");
  setup_conv(name, dims, 2, Cin, Cout, k, shape, bias);
  Kf.ref = 1;
  run_fixture(2e-5, 1e-4, at, rt, 1);
}

/* ---- transposed convolution: p0 = x, p1 = w, p2 = b ---- */
static void tconv_fwd(void) {
  if (Kf.ref)
    ioupos__conv_transpose_forward_ref(T.out, T.p[0], T.p[1], Kf.bias ? T.p[2] : NULL, Kf.dims,
                                       Kf.B, Kf.Cin, Kf.shape, Kf.Cout);
  else
    st_ok(ioupos_conv_transpose_forward(T.out, Kf.scratch, T.p[0], T.p[1],
                                        Kf.bias ? T.p[2] : NULL, Kf.dims, Kf.B, Kf.Cin, Kf.shape,
                                        Kf.Cout), "conv transpose forward");
}
static void tconv_bwd(void) {
  if (Kf.ref)
    ioupos__conv_transpose_backward_ref(T.g[0], T.g[1], Kf.bias ? T.g[2] : NULL, T.G, T.p[0],
                                        T.p[1], Kf.dims, Kf.B, Kf.Cin, Kf.shape, Kf.Cout);
  else
    st_ok(ioupos_conv_transpose_backward(T.g[0], T.g[1], Kf.bias ? T.g[2] : NULL, Kf.scratch,
                                         T.G, T.p[0], T.p[1], Kf.dims, Kf.B, Kf.Cin, Kf.shape,
                                         Kf.Cout), "conv transpose backward");
}
static void setup_tconv(const char *name, int dims, int B, int Cin, int Cout, const int *shape,
                        int bias) {
  long kv = dims == 3 ? 8 : 4;
  cfg(dims, B, Cin, Cout, 2, shape);
  Kf.bias = bias;
  Kf.scratch = talloc((long)ioupos_conv_transpose_scratch_size(dims, shape, Cout));
  case_begin(name, (long)B * Cout * (long)Kf.n * kv);
  case_param("x", (long)B * Cin * (long)Kf.n);
  case_param("w", (long)Cin * Cout * kv);
  if (bias) case_param("b", Cout);
  T_fwd = tconv_fwd, T_bwd = tconv_bwd;
}
static void test_tconv(const char *name, int dims, int Cin, int Cout, const int *shape, int bias) {
  /* out: Cin <= 6 products; dx: Cout 2^dims <= 24 terms; dw / db: sums over B n <= 40
     positions (of O(1) products), values O(10) */
  static const double at[3] = {1e-5, 1e-5, 1e-4}, rt[3] = {1e-4, 1e-4, 1e-4};
  setup_tconv(name, dims, 2, Cin, Cout, shape, bias);
  run_fixture(1e-5, 1e-4, at, rt, 1);
  printf("(plain reference) "); /* the same fixture and tolerances */
  setup_tconv(name, dims, 2, Cin, Cout, shape, bias);
  Kf.ref = 1;
  run_fixture(1e-5, 1e-4, at, rt, 1);
}

/* ---- instance norm: p0 = x (, p1 = w, p2 = b) ---- */
static void in_fwd(void) {
  ioupos_instnorm_forward(T.out, Kf.mean, Kf.rstd, T.p[0], Kf.bias ? T.p[1] : NULL,
                          Kf.bias ? T.p[2] : NULL, Kf.B, Kf.Cin, Kf.n, 1e-5f);
}
static void in_bwd(void) {
  ioupos_instnorm_backward(T.g[0], Kf.bias ? T.g[1] : NULL, Kf.bias ? T.g[2] : NULL, T.G, T.p[0],
                           Kf.bias ? T.p[1] : NULL, Kf.mean, Kf.rstd, Kf.B, Kf.Cin, Kf.n);
}
static void test_inorm(const char *name, int dims, int C, const int *shape, int affine) {
  /* statistics over n = 63 / 120 positions in double here, float in torch: a few float ulps of
     O(1) values; dx: O(1) values from 63-120-term plane sums (float in torch); dw / db: sums
     over B n positions, values O(10) */
  static const double at[3] = {1e-5, 1e-5, 1e-4}, rt[3] = {1e-4, 1e-4, 1e-4};
  cfg(dims, 2, C, C, 1, shape);
  Kf.bias = affine;
  Kf.mean = talloc(2 * C), Kf.rstd = talloc(2 * C);
  case_begin(name, 2L * C * (long)Kf.n);
  case_param("x", 2L * C * (long)Kf.n);
  if (affine) case_param("w", C), case_param("b", C);
  T_fwd = in_fwd, T_bwd = in_bwd;
  run_fixture(1e-5, 1e-4, at, rt, 1);
}

/* ---- leaky ReLU: p0 = x ---- */
static void lr_fwd(void) {
  ioupos_leaky_relu_forward(T.out, T.p[0], (size_t)T.nout, IOUPOS_UNET_LRELU_SLOPE);
}
static void lr_bwd(void) {
  ioupos_leaky_relu_backward(T.g[0], T.p[0], T.G, (size_t)T.nout, IOUPOS_UNET_LRELU_SLOPE);
}
static void test_lrelu(void) {
  /* one float multiplication (x 0.01 rounds like torch's) or a copy */
  static const double at[1] = {1e-7}, rt[1] = {1e-6};
  static const int s2[2] = {9, 7};
  long n, i, bad = 0;
  float *o2, *d2;
  cfg(2, 2, 4, 4, 1, s2);
  n = 2L * 4 * 63;
  case_begin("lrelu", n);
  case_param("x", n);
  T_fwd = lr_fwd, T_bwd = lr_bwd;
  run_fixture(1e-7, 1e-6, at, rt, 0);
  /* finite differences: the kink test uses x itself (a sample flipping its sign is skipped) */
  T.kink[0] = T.p[0], T.nkink[0] = n;
  {
    float *g1 = talloc(n);
    ioupos_leaky_relu_backward(g1, T.p[0], T.G, (size_t)n, IOUPOS_UNET_LRELU_SLOPE);
    fd_check("lrelu x", T.p[0], g1, n, fd_T());
    /* in place, and backward from the output (MONAI's inplace=True) */
    o2 = copyf(T.p[0], n), d2 = talloc(n);
    ioupos_leaky_relu_forward(o2, o2, (size_t)n, IOUPOS_UNET_LRELU_SLOPE);
    ioupos_leaky_relu_backward(d2, o2, T.G, (size_t)n, IOUPOS_UNET_LRELU_SLOPE);
    for (i = 0; i < n; ++i) bad += o2[i] != T.out[i] || d2[i] != g1[i];
    CHECK(bad == 0, "lrelu: in-place forward or backward from the output differs at %ld", bad);
  }
}

/* ---- channel concatenation: p0 = a, p1 = b ---- */
static void cat_fwd(void) {
  ioupos_cat_channels_forward(T.out, T.p[0], T.p[1], Kf.B, Kf.Cin, Kf.C2, Kf.n);
}
static void cat_bwd(void) {
  ioupos_cat_channels_backward(T.g[0], T.g[1], T.G, Kf.B, Kf.Cin, Kf.C2, Kf.n);
}
static void test_cat(void) {
  static const double at[2] = {0, 0}, rt[2] = {0, 0}; /* copies: exact */
  static const int s2[2] = {9, 7};
  cfg(2, 2, 3, 7, 1, s2);
  Kf.C2 = 4;
  case_begin("cat2d", 2L * 7 * 63);
  case_param("a", 2L * 3 * 63);
  case_param("b", 2L * 4 * 63);
  T_fwd = cat_fwd, T_bwd = cat_bwd;
  run_fixture(0, 0, at, rt, 1);
}

/* ---- UnetResBlock: p0 = x, p1 = w1, p2 = w2, p3 = w3 (Cin != Cout) ---- */
static void res_fwd(void) {
  st_ok(ioupos_unet_resblock_forward(T.out, Kf.acts, Kf.scratch, T.p[0], T.p[1], T.p[2],
                                     Kf.Cin != Kf.Cout ? T.p[3] : NULL, Kf.dims, Kf.B, Kf.Cin,
                                     Kf.shape, Kf.k, Kf.Cout),
        "resblock forward");
}
static void res_bwd(void) {
  int h3 = Kf.Cin != Kf.Cout;
  st_ok(ioupos_unet_resblock_backward(T.g[0], T.g[1], T.g[2], h3 ? T.g[3] : NULL, Kf.scratch, T.G,
                                      Kf.acts, T.p[0], T.p[1], T.p[2], h3 ? T.p[3] : NULL,
                                      Kf.dims, Kf.B, Kf.Cin, Kf.shape, Kf.k, Kf.Cout),
        "resblock backward");
}
/* acts layout (API doc): [h1 | a1 | h2 | s | ...], N each: the leaky ReLU inputs are a1's sign
   (the output of an in-place leaky ReLU) and s. */
static void res_kinks(float *acts, long N) {
  T.kink[0] = acts + N, T.nkink[0] = N;
  T.kink[1] = acts + 3 * N, T.nkink[1] = N;
}
static void setup_res(const char *name, int dims, int B, int Cin, int Cout, const int *shape) {
  long kv = dims == 3 ? 27 : 9, N;
  cfg(dims, B, Cin, Cout, 3, shape);
  N = (long)B * Cout * (long)Kf.n;
  Kf.acts = talloc((long)ioupos_unet_resblock_acts_size(dims, B, Cin, shape, 3, Cout));
  Kf.scratch = talloc((long)ioupos_unet_resblock_scratch_size(dims, B, Cin, shape, 3, Cout));
  case_begin(name, N);
  case_param("x", (long)B * Cin * (long)Kf.n);
  case_param("w1", (long)Cout * Cin * kv);
  case_param("w2", (long)Cout * Cout * kv);
  if (Cin != Cout) case_param("w3", (long)Cout * Cin);
  T_fwd = res_fwd, T_bwd = res_bwd;
  res_kinks(Kf.acts, N);
}
static void test_res(const char *name, int dims, int Cin, int Cout, const int *shape,
                     const int *tiny_shape) {
  /* out: two conv + instance-norm stages; each norm divides by its plane's std, so the output
     is O(1) with the float conv's relative error: atol 2e-5 rtol 1e-4. dx: Cout k^dims-term
     sums of gradients that went through two norms (values up to ~10): atol 5e-5 rtol 2e-4.
     dw: sums over B n <= 240 positions of O(1-10) products: atol 2e-4 rtol 2e-4. */
  static const double at[4] = {5e-5, 2e-4, 2e-4, 2e-4}, rt[4] = {2e-4, 2e-4, 2e-4, 2e-4};
  static const float sc[4] = {2.0f, 0.5f, 0.5f, 0.5f};
  setup_res(name, dims, 2, Cin, Cout, shape);
  run_fixture(2e-5, 1e-4, at, rt, 0);
  /* tiny: 3 -> 2 channels (conv3 branch) or 2 -> 2 (identity residual) like the fixture */
  setup_res(name, dims, dims == 3 ? 1 : 2, Cin != Cout ? 3 : 2, 2, tiny_shape);
  run_tiny(sc);
}

/* ---- UnetrUpBlock: p0 = x, p1 = skip, p2 = wt, p3 = w1, p4 = w2, p5 = w3 ---- */
static int up_shape[3];
static void up_fwd(void) {
  st_ok(ioupos_unetr_upblock_forward(T.out, Kf.acts, Kf.scratch, T.p[0], T.p[1], T.p[2], T.p[3],
                                     T.p[4], T.p[5], Kf.dims, Kf.B, Kf.Cin, Kf.shape, Kf.k,
                                     Kf.Cout),
        "upblock forward");
}
static void up_bwd(void) {
  st_ok(ioupos_unetr_upblock_backward(T.g[0], T.g[1], T.g[2], T.g[3], T.g[4], T.g[5], Kf.scratch,
                                      T.G, Kf.acts, T.p[0], T.p[2], T.p[3], T.p[4], T.p[5],
                                      Kf.dims, Kf.B, Kf.Cin, Kf.shape, Kf.k, Kf.Cout),
        "upblock backward");
}
static void setup_up(const char *name, int dims, int B, int Cin, int Cout, const int *shape) {
  long kv = dims == 3 ? 27 : 9, tv = dims == 3 ? 8 : 4, n2, N, d;
  cfg(dims, B, Cin, Cout, 3, shape);
  for (d = 0; d < dims; ++d) up_shape[d] = 2 * shape[d];
  n2 = (long)Kf.n * tv, N = (long)B * Cout * n2;
  Kf.acts = talloc((long)ioupos_unetr_upblock_acts_size(dims, B, shape, 3, Cout));
  Kf.scratch = talloc((long)ioupos_unetr_upblock_scratch_size(dims, B, Cin, shape, 3, Cout));
  case_begin(name, N);
  case_param("x", (long)B * Cin * (long)Kf.n);
  case_param("skip", N);
  case_param("wt", (long)Cin * Cout * tv);
  case_param("w1", (long)Cout * 2 * Cout * kv);
  case_param("w2", (long)Cout * Cout * kv);
  case_param("w3", (long)Cout * 2 * Cout);
  T_fwd = up_fwd, T_bwd = up_bwd;
  /* acts = [cat (B 2Cout n2) | the resblock's acts] */
  res_kinks(Kf.acts + 2 * N, N);
}
static void test_up(const char *name, int dims, int Cin, int Cout, const int *shape,
                    const int *tiny_shape) {
  /* as the resblock, plus the transposed conv in front: dx sums Cout 2^dims terms of the
     resblock's input gradient; dwt sums over B n positions */
  static const double at[6] = {5e-5, 5e-5, 2e-4, 2e-4, 2e-4, 2e-4};
  static const double rt[6] = {2e-4, 2e-4, 2e-4, 2e-4, 2e-4, 2e-4};
  static const float sc[6] = {2.0f, 2.0f, 0.5f, 0.5f, 0.5f, 0.5f};
  setup_up(name, dims, 2, Cin, Cout, shape);
  run_fixture(2e-5, 1e-4, at, rt, 0);
  setup_up(name, dims, dims == 3 ? 1 : 2, 3, 2, tiny_shape);
  run_tiny(sc);
}

/* ---- UnetOutBlock: p0 = x, p1 = w, p2 = b ---- */
static void ob_fwd(void) {
  st_ok(ioupos_unet_outblock_forward(T.out, T.p[0], T.p[1], T.p[2], Kf.dims, Kf.B, Kf.Cin,
                                     Kf.shape, Kf.Cout), "outblock forward");
}
static void ob_bwd(void) {
  st_ok(ioupos_unet_outblock_backward(T.g[0], T.g[1], T.g[2], T.G, T.p[0], T.p[1], Kf.dims, Kf.B,
                                      Kf.Cin, Kf.shape, Kf.Cout), "outblock backward");
}
static void test_outblock(const char *name, int dims, int Cin, int Cout, const int *shape) {
  /* Cin = 4 products; dw / db sums over B n <= 240 positions, values O(10) */
  static const double at[3] = {1e-5, 1e-4, 1e-4}, rt[3] = {1e-4, 1e-4, 1e-4};
  cfg(dims, 2, Cin, Cout, 1, shape);
  case_begin(name, 2L * Cout * (long)Kf.n);
  case_param("x", 2L * Cin * (long)Kf.n);
  case_param("w", (long)Cout * Cin);
  case_param("b", Cout);
  T_fwd = ob_fwd, T_bwd = ob_bwd;
  run_fixture(1e-5, 1e-4, at, rt, 1);
}

/* ============================================================================================
   Above one im2col / GEMM block (4096 positions): against direct double loops.
   ============================================================================================ */

/* |x - ref| <= tol * mag + 1e-6 where mag = sum of |terms| of that element: the float GEMM's
   rounding grows like u * sum|terms| (u = 6e-8) on random data; tol 1e-5 leaves a wide margin
   for the blocked float accumulation over up to ~9000 terms. */
static void cmp_mag(const char *label, const float *x, const double *ref, const double *mag,
                    long n, double tol) {
  long i, bad = 0, wi = 0;
  double wex = -1e300;
  for (i = 0; i < n; ++i) {
    double ex = fabs(x[i] - ref[i]) - (tol * mag[i] + 1e-6);
    if (!(ex <= 0)) ++bad;
    if (ex > wex || ex != ex) wex = ex, wi = i;
  }
  printf("  %-36s n %ld, out of tolerance %ld, worst [%ld] %.8g vs %.8g (|terms| %.4g)\n", label,
         n, bad, wi, (double)x[wi], ref[wi], mag[wi]);
  CHECK(bad == 0, "%s: %ld elements out of tolerance", label, bad);
}

static double *dalloc(long n) {
  double *p = (double *)calloc((size_t)n, sizeof(double));
  if (!p) {
    printf("out of memory\n");
    exit(1);
  }
  return p;
}

static void rand_fill(float *p, long n, ioupos_rng *r, double scale) {
  long i;
  for (i = 0; i < n; ++i) p[i] = (float)((ioupos_rng_uniform(r) * 2 - 1) * scale);
}

static void test_conv_blocks(int dims, int B, int Cin, int Cout, const int *shape) {
  int S[3] = {1, 1, 1}, kk[3] = {1, 3, 3}, d, b, ci, co, z, y, x, a, e, f;
  long n, nx, no, nw, K;
  float *xv, *w, *bias, *out, *G, *dx, *dw, *db, *scratch;
  double *ro, *mo, *rdx, *mdx, *rdw, *mdw, *rdb, *mdb;
  char label[64];
  ioupos_rng r;
  for (d = 0; d < dims; ++d) S[3 - dims + d] = shape[d];
  if (dims == 3) kk[0] = 3;
  n = (long)S[0] * S[1] * S[2], K = (long)Cin * kk[0] * kk[1] * kk[2];
  nx = B * Cin * n, no = B * Cout * n, nw = Cout * K;
  printf("conv%dd k3 over %ld positions (%ld blocks of 4096), B %d\n", dims, n, (n + 4095) / 4096,
         B);
  ioupos_rng_seed(&r, 5);
  xv = talloc(nx), w = talloc(nw), bias = talloc(Cout), out = talloc(no), G = talloc(no);
  dx = talloc(nx), dw = talloc(nw), db = talloc(Cout);
  scratch = talloc((long)ioupos_conv_scratch_size(dims, Cin, shape, 3));
  CHECK(ioupos_conv_scratch_size(dims, Cin, shape, 3) == (size_t)(K * 4096),
        "conv scratch is one block");
  rand_fill(xv, nx, &r, 1.0), rand_fill(w, nw, &r, 0.5), rand_fill(bias, Cout, &r, 0.5);
  rand_fill(G, no, &r, 1.0);
  ro = dalloc(no), mo = dalloc(no), rdx = dalloc(nx), mdx = dalloc(nx);
  rdw = dalloc(nw), mdw = dalloc(nw), rdb = dalloc(Cout), mdb = dalloc(Cout);
  for (b = 0; b < B; ++b)
    for (co = 0; co < Cout; ++co)
      for (z = 0; z < S[0]; ++z)
        for (y = 0; y < S[1]; ++y)
          for (x = 0; x < S[2]; ++x) {
            long o = (((long)b * Cout + co) * S[0] + z) * S[1] * S[2] + (long)y * S[2] + x;
            double gv = G[o];
            ro[o] = bias[co], mo[o] = fabs(bias[co]);
            rdb[co] += gv, mdb[co] += fabs(gv);
            for (ci = 0; ci < Cin; ++ci)
              for (a = 0; a < kk[0]; ++a)
                for (e = 0; e < kk[1]; ++e)
                  for (f = 0; f < kk[2]; ++f) {
                    int zz = z + a - kk[0] / 2, yy = y + e - kk[1] / 2, xx = x + f - kk[2] / 2;
                    long wi = (long)co * K + ((long)(ci * kk[0] + a) * kk[1] + e) * kk[2] + f, xi;
                    if (zz < 0 || zz >= S[0] || yy < 0 || yy >= S[1] || xx < 0 || xx >= S[2])
                      continue;
                    xi = (((long)b * Cin + ci) * S[0] + zz) * S[1] * S[2] + (long)yy * S[2] + xx;
                    ro[o] += (double)w[wi] * xv[xi], mo[o] += fabs((double)w[wi] * xv[xi]);
                    rdx[xi] += gv * w[wi], mdx[xi] += fabs(gv * w[wi]);
                    rdw[wi] += gv * xv[xi], mdw[wi] += fabs(gv * xv[xi]);
                  }
          }
  st_ok(ioupos_conv_forward(out, scratch, xv, w, bias, dims, B, Cin, shape, 3, Cout), "conv fwd");
  st_ok(ioupos_conv_backward(dx, dw, db, scratch, G, xv, w, dims, B, Cin, shape, 3, Cout),
        "conv bwd");
  snprintf(label, sizeof label, "conv%dd blocks out", dims), cmp_mag(label, out, ro, mo, no, 1e-5);
  snprintf(label, sizeof label, "conv%dd blocks dx", dims), cmp_mag(label, dx, rdx, mdx, nx, 1e-5);
  snprintf(label, sizeof label, "conv%dd blocks dw", dims), cmp_mag(label, dw, rdw, mdw, nw, 1e-5);
  snprintf(label, sizeof label, "conv%dd blocks db", dims), cmp_mag(label, db, rdb, mdb, Cout, 1e-5);
  /* the plain reference (ioupos__conv_*_ref: direct loops, double sums, rounded once) within the
     same bound of these loops; its bias gradient adds in the fast path's order: bit-identical */
  {
    float *o2 = talloc(no), *dx2 = talloc(nx), *dw2 = talloc(nw), *db2 = talloc(Cout);
    ioupos__conv_forward_ref(o2, xv, w, bias, dims, B, Cin, shape, 3, Cout);
    ioupos__conv_backward_ref(dx2, dw2, db2, G, xv, w, dims, B, Cin, shape, 3, Cout);
    snprintf(label, sizeof label, "conv%dd reference out", dims);
    cmp_mag(label, o2, ro, mo, no, 1e-5);
    snprintf(label, sizeof label, "conv%dd reference dx", dims);
    cmp_mag(label, dx2, rdx, mdx, nx, 1e-5);
    snprintf(label, sizeof label, "conv%dd reference dw", dims);
    cmp_mag(label, dw2, rdw, mdw, nw, 1e-5);
    CHECK(memcmp(db2, db, sizeof(float) * (size_t)Cout) == 0, "conv db: reference bits differ");
  }
  /* NULL gradients: each gradient alone equals the one computed together, bit for bit */
  {
    float *dx2 = talloc(nx), *dw2 = talloc(nw), *db2 = talloc(Cout);
    st_ok(ioupos_conv_backward(dx2, NULL, NULL, scratch, G, NULL, w, dims, B, Cin, shape, 3, Cout),
          "conv bwd dx only");
    st_ok(ioupos_conv_backward(NULL, dw2, NULL, scratch, G, xv, NULL, dims, B, Cin, shape, 3,
                               Cout), "conv bwd dw only");
    st_ok(ioupos_conv_backward(NULL, NULL, db2, NULL, G, NULL, NULL, dims, B, Cin, shape, 3, Cout),
          "conv bwd db only");
    CHECK(memcmp(dx2, dx, sizeof(float) * (size_t)nx) == 0, "conv dx alone differs");
    CHECK(memcmp(dw2, dw, sizeof(float) * (size_t)nw) == 0, "conv dw alone differs");
    CHECK(memcmp(db2, db, sizeof(float) * (size_t)Cout) == 0, "conv db alone differs");
  }
  free(ro), free(mo), free(rdx), free(mdx), free(rdw), free(mdw), free(rdb), free(mdb);
}

static void test_tconv_blocks(int dims, int B, int Cin, int Cout, const int *shape) {
  int S[3] = {1, 1, 1}, kk[3] = {1, 2, 2}, d, b, ci, co, z, y, x, a, e, f, O[3];
  long n, nx, no, nw, M;
  float *xv, *w, *bias, *out, *G, *dx, *dw, *db, *scratch;
  double *ro, *mo, *rdx, *mdx, *rdw, *mdw, *rdb, *mdb;
  char label[64];
  ioupos_rng r;
  for (d = 0; d < dims; ++d) S[3 - dims + d] = shape[d];
  if (dims == 3) kk[0] = 2;
  for (d = 0; d < 3; ++d) O[d] = S[d] * kk[d];
  n = (long)S[0] * S[1] * S[2], M = (long)Cout * kk[0] * kk[1] * kk[2];
  nx = B * Cin * n, no = B * M * n, nw = Cin * M;
  printf("conv_transpose%dd over %ld input positions (%ld blocks of 4096), B %d\n", dims, n,
         (n + 4095) / 4096, B);
  ioupos_rng_seed(&r, 6);
  xv = talloc(nx), w = talloc(nw), bias = talloc(Cout), out = talloc(no), G = talloc(no);
  dx = talloc(nx), dw = talloc(nw), db = talloc(Cout);
  scratch = talloc((long)ioupos_conv_transpose_scratch_size(dims, shape, Cout));
  rand_fill(xv, nx, &r, 1.0), rand_fill(w, nw, &r, 0.5), rand_fill(bias, Cout, &r, 0.5);
  rand_fill(G, no, &r, 1.0);
  ro = dalloc(no), mo = dalloc(no), rdx = dalloc(nx), mdx = dalloc(nx);
  rdw = dalloc(nw), mdw = dalloc(nw), rdb = dalloc(Cout), mdb = dalloc(Cout);
  for (b = 0; b < B; ++b)
    for (co = 0; co < Cout; ++co)
      for (z = 0; z < O[0]; ++z)
        for (y = 0; y < O[1]; ++y)
          for (x = 0; x < O[2]; ++x) {
            long o = (((long)b * Cout + co) * O[0] + z) * O[1] * O[2] + (long)y * O[2] + x;
            double gv = G[o];
            a = z % kk[0], e = y % 2, f = x % 2;
            ro[o] = bias[co], mo[o] = fabs(bias[co]);
            rdb[co] += gv, mdb[co] += fabs(gv);
            for (ci = 0; ci < Cin; ++ci) {
              long xi = (((long)b * Cin + ci) * S[0] + z / kk[0]) * S[1] * S[2] +
                        (long)(y / 2) * S[2] + x / 2;
              long wi = ((long)ci * Cout + co) * kk[0] * 4 + (long)a * 4 + e * 2 + f;
              ro[o] += (double)w[wi] * xv[xi], mo[o] += fabs((double)w[wi] * xv[xi]);
              rdx[xi] += gv * w[wi], mdx[xi] += fabs(gv * w[wi]);
              rdw[wi] += gv * xv[xi], mdw[wi] += fabs(gv * xv[xi]);
            }
          }
  st_ok(ioupos_conv_transpose_forward(out, scratch, xv, w, bias, dims, B, Cin, shape, Cout),
        "tconv fwd");
  st_ok(ioupos_conv_transpose_backward(dx, dw, db, scratch, G, xv, w, dims, B, Cin, shape, Cout),
        "tconv bwd");
  snprintf(label, sizeof label, "tconv%dd blocks out", dims), cmp_mag(label, out, ro, mo, no, 1e-5);
  snprintf(label, sizeof label, "tconv%dd blocks dx", dims), cmp_mag(label, dx, rdx, mdx, nx, 1e-5);
  snprintf(label, sizeof label, "tconv%dd blocks dw", dims), cmp_mag(label, dw, rdw, mdw, nw, 1e-5);
  snprintf(label, sizeof label, "tconv%dd blocks db", dims),
      cmp_mag(label, db, rdb, mdb, Cout, 1e-5);
  /* the plain reference: as for the convolution above */
  {
    float *o2 = talloc(no), *dx2 = talloc(nx), *dw2 = talloc(nw), *db2 = talloc(Cout);
    ioupos__conv_transpose_forward_ref(o2, xv, w, bias, dims, B, Cin, shape, Cout);
    ioupos__conv_transpose_backward_ref(dx2, dw2, db2, G, xv, w, dims, B, Cin, shape, Cout);
    snprintf(label, sizeof label, "tconv%dd reference out", dims);
    cmp_mag(label, o2, ro, mo, no, 1e-5);
    snprintf(label, sizeof label, "tconv%dd reference dx", dims);
    cmp_mag(label, dx2, rdx, mdx, nx, 1e-5);
    snprintf(label, sizeof label, "tconv%dd reference dw", dims);
    cmp_mag(label, dw2, rdw, mdw, nw, 1e-5);
    CHECK(memcmp(db2, db, sizeof(float) * (size_t)Cout) == 0, "tconv db: reference bits differ");
  }
  free(ro), free(mo), free(rdx), free(mdx), free(rdw), free(mdw), free(rdb), free(mdb);
}

/* ============================================================================================
   Variants and argument errors
   ============================================================================================ */
static void test_misc(void) {
  static const int s2[2] = {9, 7}, s3[3] = {5, 6, 4}, bad2[2] = {0, 3};
  float one = 1.0f, buf[64];
  printf("variants and errors\n");
  /* conv without bias = conv with bias minus the bias (conv2dk3 fixture) */
  {
    float *x = ld("conv2dk3", "x", 2 * 4 * 63), *w = ld("conv2dk3", "w", 5 * 4 * 9);
    float *b = ld("conv2dk3", "b", 5), *o1 = talloc(2 * 5 * 63), *o2 = talloc(2 * 5 * 63);
    float *sc = talloc((long)ioupos_conv_scratch_size(2, 4, s2, 3));
    long i, bad = 0;
    st_ok(ioupos_conv_forward(o1, sc, x, w, b, 2, 2, 4, s2, 3, 5), "conv with bias");
    st_ok(ioupos_conv_forward(o2, sc, x, w, NULL, 2, 2, 4, s2, 3, 5), "conv without bias");
    for (i = 0; i < 2 * 5 * 63; ++i)
      if (!(fabs(o2[i] + b[(i / 63) % 5] - o1[i]) <= 1e-5 * (1 + fabs(o1[i])))) ++bad;
    CHECK(bad == 0, "conv without bias: %ld elements differ", bad);
  }
  /* sizes */
  CHECK(ioupos_conv_scratch_size(2, 4, s2, 1) == 0, "k = 1 needs no scratch");
  CHECK(ioupos_conv_scratch_size(3, 4, s3, 3) == (size_t)4 * 27 * 120, "conv scratch 3D");
  CHECK(ioupos_conv_transpose_scratch_size(3, s3, 3) == (size_t)3 * 8 * 120, "tconv scratch 3D");
  CHECK(ioupos_unet_resblock_acts_size(2, 2, 6, s2, 3, 4) == (size_t)5 * 2 * 4 * 63 + 6 * 8,
        "resblock acts with conv3");
  CHECK(ioupos_unet_resblock_acts_size(2, 2, 4, s2, 3, 4) == (size_t)4 * 2 * 4 * 63 + 4 * 8,
        "resblock acts without conv3");
  CHECK(ioupos_unet_resblock_scratch_size(2, 2, 6, s2, 3, 4) ==
            (size_t)2 * 2 * 4 * 63 + 6 * 9 * 63, "resblock scratch");
  CHECK(ioupos_unet_resblock_acts_size(2, 2, 6, s2, 2, 4) == 0, "even k: size 0");
  CHECK(ioupos_unetr_upblock_acts_size(4, 2, s2, 3, 4) == 0, "dims 4: size 0");
  /* argument errors */
  CHECK(ioupos_conv_forward(buf, buf, buf, buf, NULL, 2, 1, 1, s2, 2, 1) == IOUPOS_EINVAL,
        "even kernel refused");
  CHECK(ioupos_conv_forward(buf, buf, buf, buf, NULL, 4, 1, 1, s2, 3, 1) == IOUPOS_EINVAL,
        "dims 4 refused");
  CHECK(ioupos_conv_forward(buf, buf, buf, buf, NULL, 2, 1, 1, bad2, 3, 1) == IOUPOS_EINVAL,
        "zero size refused");
  CHECK(ioupos_conv_forward(buf, NULL, buf, buf, NULL, 2, 1, 1, s2, 3, 1) == IOUPOS_EINVAL,
        "k 3 without scratch refused");
  CHECK(ioupos_conv_transpose_forward(buf, buf, buf, buf, NULL, 2, 1, 0, s2, 1) == IOUPOS_EINVAL,
        "Cin 0 refused");
  CHECK(ioupos_unet_resblock_forward(buf, buf, buf, buf, buf, buf, NULL, 2, 1, 2, s2, 3, 1) ==
            IOUPOS_EINVAL, "resblock Cin != Cout without w3 refused");
  CHECK(ioupos_unet_resblock_forward(buf, buf, buf, buf, buf, buf, &one, 2, 1, 1, s2, 3, 1) ==
            IOUPOS_EINVAL, "resblock Cin == Cout with w3 refused");
  printf("  last failure reason: %s\n", ioupos_failure_reason());
}

int main(void) {
  static const int s2[2] = {9, 7}, s3[3] = {5, 6, 4};
  static const int u2[2] = {5, 4}, u3[3] = {3, 3, 2};
  static const int t2[2] = {4, 3}, t3[3] = {3, 2, 3}, tu2[2] = {2, 3}, tu3[3] = {2, 1, 2};
  static const int big2[2] = {70, 61}, big3[3] = {17, 16, 17}, bigt2[2] = {66, 64};
  static const int bigt3[3] = {9, 24, 20};
  ioupos_rng_seed(&fd_rng, 7);
  printf("GEMM kernel: %s\n", ioupos_gemm_simd() ? "AVX2+FMA" : "portable");
  test_transpose("tcf2d", 1, 2, 5, s2);
  test_transpose("tcl3d", 0, 3, 4, s3);
  test_conv("conv2dk3", 2, 4, 5, 3, s2, 1);
  test_conv("conv2dk1", 2, 6, 4, 1, s2, 1);
  test_conv("conv2dk5", 2, 3, 4, 5, s2, 0);
  test_conv("conv3dk1", 3, 4, 3, 1, s3, 1);
  test_conv("conv3dk3", 3, 3, 4, 3, s3, 0);
  test_tconv("tconv2d", 2, 6, 4, u2, 0);
  test_tconv("tconv3d", 3, 4, 3, u3, 1);
  test_inorm("inorm2d", 2, 5, s2, 0);
  test_inorm("inorm2daff", 2, 4, s2, 1);
  test_inorm("inorm3d", 3, 4, s3, 0);
  test_lrelu();
  test_cat();
  test_res("res2d", 2, 6, 4, s2, t2);
  test_res("res2dsame", 2, 4, 4, s2, t2);
  test_res("res3d", 3, 4, 3, s3, t3);
  test_up("up2d", 2, 8, 4, u2, tu2);
  test_up("up3d", 3, 6, 3, u3, tu3);
  test_outblock("out2d", 2, 4, 3, s2);
  test_outblock("out3d", 3, 4, 3, s3);
  test_conv_blocks(2, 2, 2, 3, big2);
  test_conv_blocks(3, 1, 2, 2, big3);
  test_tconv_blocks(2, 2, 3, 2, bigt2);
  test_tconv_blocks(3, 1, 2, 2, bigt3);
  test_misc();
  tfree_all();
  return tu_finish("test_decoder");
}
