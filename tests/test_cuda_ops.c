/* tests/test_cuda_ops.c — every operation of the CUDA backend against the CPU backend, on the
   same seeded inputs (the model of ggml's test-backend-ops).

   Built two ways from this one file:
     - `make test` (build/test_cuda_ops): linked with the HOST BUILD of ioupos_cuda.cu
       (IOUPOS_CUDA_HOST: kernels as host loops, cuBLAS through the column-major reference of
       tests/cuda_host/cublas_ref.h), so it runs on any machine;
     - `make test-cuda` (build/test_cuda_ops_gpu, IOUPOS_TEST_CUDA_GPU): linked with the nvcc
       object and cudart / cuBLAS; without a usable GPU it prints SKIP with the reason and exits 0.

   For each case (an operation and a shape / NULL-pointer variant):
     - every buffer is allocated through the backend with GUARD floats on each side, filled with
       a NaN pattern no operation writes; after the call the guards must be intact (out-of-bounds
       writes), inputs must be unchanged (bit for bit), and gradient outputs start from random
       values, so that += accumulation is checked as well as the values;
     - the case runs on the CPU backend, then twice on the CUDA backend: the two CUDA runs must
       agree bit for bit (determinism; in the host build the second run executes every grid's
       blocks and every block's threads in reverse order, so a kernel whose result depends on
       thread order, i.e. a race, fails here), and each output must match the CPU's within the case's
       tolerance |got - ref| <= atol + rtol |ref| (set beside each case, with its reason); a NaN
       or an infinity where the other backend has none fails; the report gives the worst element,
       the largest absolute and relative errors and the first element out of tolerance;
     - scalar results (losses, norms) and statuses are compared the same way;
     - an operation that the CUDA table leaves NULL is reported "unsupported": a skip, counted,
       never a pass.
   The host build also checks the backend's failure paths (no driver, no device, device out of
   range, out of device memory at start-up and in alloc, errors reported by sync).
   Exits 1 on any failure.
   The CPU backend is the implementation's portable build (build/ioupos_portable.o: no SIMD
   kernel, no OpenMP), linked, not compiled here. */
#include "ioupos.h"
#include "tests/test_util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GUARD 64
#define GUARD_BITS 0x7fa5a5a5u /* a quiet NaN with a payload that no operation produces */
#define MAXB 32

enum { IN, OUT, SCR }; /* input (unchanged), output (compared), scratch (guards only) */

typedef struct {
  char name[48];
  int role, isint;
  size_t n;
  void *dev;        /* this pass's allocation: GUARD + n + GUARD 4-byte elements */
  uint32_t *init;   /* initial values, n */
  uint32_t *res[3]; /* values after the case, per pass */
  double atol, rtol;
} buf;

typedef struct {
  const char *name;
  const ioupos_backend *be;
  int pass, cur, nb, unsupported, has_ret;
  uint64_t seed;
  double atol, rtol;
  double ret[3];
  int status[3];
  buf b[MAXB];
} tc;

static const ioupos_backend *cpu_be, *cuda_be;
#ifndef IOUPOS_TEST_CUDA_GPU
int ioupos_cuda_host_row_threads(void); /* in the host build of ioupos_cuda.cu */
#endif
static int n_cases, n_unsupported;
static char unsupported_list[4096];

/* ---- seeded values ---- */
static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  while (*s) h = (h ^ (unsigned char)*s++) * 1099511628211ull;
  return h;
}

static uint32_t f2u(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
static float u2f(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* a buffer of the case on this pass's backend; its values: vals (n of them) or uniform in
   [lo, hi] from the case's seed (the same on every pass) */
static void *mk(tc *t, const char *name, int role, int isint, size_t n, const void *vals,
                float lo, float hi) {
  buf *b;
  uint32_t *h;
  size_t i, bytes = (n + 2 * GUARD) * 4;
  if (t->cur >= MAXB) {
    printf("test_cuda_ops: too many buffers in %s\n", t->name);
    exit(2);
  }
  b = &t->b[t->cur++];
  if (t->pass == 0) {
    uint64_t s = t->seed ^ (0x51ED27ull * (uint64_t)t->cur);
    snprintf(b->name, sizeof b->name, "%s", name);
    b->role = role, b->isint = isint, b->n = n;
    b->atol = t->atol, b->rtol = t->rtol;
    b->init = (uint32_t *)malloc((n ? n : 1) * 4);
    if (vals) memcpy(b->init, vals, n * 4);
    else
      for (i = 0; i < n; ++i)
        b->init[i] = f2u(lo + (hi - lo) * (float)((splitmix(&s) >> 40) * (1.0 / 16777216.0)));
    t->nb = t->cur;
  } else if (strcmp(b->name, name) != 0 || b->n != n) {
    printf("test_cuda_ops: %s: buffer %d differs between passes (a bug of the test)\n", t->name,
           t->cur - 1);
    exit(2);
  }
  h = (uint32_t *)malloc(bytes);
  for (i = 0; i < GUARD; ++i) h[i] = h[GUARD + n + i] = GUARD_BITS;
  memcpy(h + GUARD, b->init, n * 4);
  b->dev = t->be->alloc(bytes);
  if (!b->dev) {
    printf("test_cuda_ops: %s: alloc of %zu bytes failed: %s\n", t->name, bytes,
           ioupos_failure_reason());
    exit(2);
  }
  t->be->upload(b->dev, h, bytes);
  free(h);
  return (uint32_t *)b->dev + GUARD;
}

#define F(name, role, n, lo, hi) ((float *)mk(t, name, role, 0, (size_t)(n), NULL, lo, hi))
#define FV(name, role, n, vals) ((float *)mk(t, name, role, 0, (size_t)(n), vals, 0.0f, 0.0f))
#define IV(name, n, vals) ((int *)mk(t, name, IN, 1, (size_t)(n), vals, 0.0f, 0.0f))
/* the host values of the buffer made last */
#define HOST() ((const float *)t->b[t->cur - 1].init)
/* the tolerance of the buffer made last (default: the case's) */
#define TOL(a, r) (t->b[t->cur - 1].atol = (a), t->b[t->cur - 1].rtol = (r))
/* a weight gradient: a sum over K rows or positions (the buffer just made), see GEMM_TOL */
#define WG(buf, K) wg_tol(t, (buf), (double)(K))
#define NEED(op)               \
  do {                         \
    if (!t->be->op) {          \
      t->unsupported = 1;      \
      return;                  \
    }                          \
  } while (0)
#define RET(x) (t->ret[t->pass] = (double)(x), t->has_ret = 1)
#define ST(x) (t->status[t->pass] = (x))

static float *wg_tol(tc *t, float *buf, double K) {
  t->b[t->cur - 1].atol = 1e-6 * K + 1e-6; /* GEMM_TOL(K) */
  t->b[t->cur - 1].rtol = 1e-5 > t->rtol ? 1e-5 : t->rtol;
  return buf;
}

/* ---- comparison ---- */
typedef struct {
  double max_abs, max_rel, worst_ratio;
  size_t worst, first_bad, n_bad;
} cmp_stats;

static cmp_stats compare(const uint32_t *ref, const uint32_t *got, size_t n, int isint,
                         double atol, double rtol) {
  cmp_stats s;
  size_t i;
  memset(&s, 0, sizeof s);
  s.first_bad = (size_t)-1;
  for (i = 0; i < n; ++i) {
    int bad;
    double r, g, e, ratio;
    if (isint) {
      bad = ref[i] != got[i];
      e = bad ? 1.0 : 0.0;
      ratio = e;
      r = 1.0;
    } else {
      r = u2f(ref[i]), g = u2f(got[i]);
      if (isnan(r) || isnan(g) || isinf(r) || isinf(g)) {
        bad = !((isnan(r) && isnan(g)) || (isinf(r) && isinf(g) && (r > 0) == (g > 0)));
        e = bad ? INFINITY : 0.0;
        ratio = e;
      } else {
        e = fabs(g - r);
        ratio = e == 0.0 ? 0.0 : e / (atol + rtol * fabs(r));
        bad = e > atol + rtol * fabs(r);
      }
    }
    if (e > s.max_abs) s.max_abs = e;
    if (!isint && fabs(r) > 0 && e / fabs(r) > s.max_rel) s.max_rel = e / fabs(r);
    if (ratio > s.worst_ratio || i == 0) s.worst_ratio = ratio, s.worst = i;
    if (bad) {
      if (s.first_bad == (size_t)-1) s.first_bad = i;
      ++s.n_bad;
    }
  }
  return s;
}

static void report(const tc *t, const char *what, const uint32_t *ref, const uint32_t *got,
                   size_t n, int isint, double atol, double rtol) {
  cmp_stats s = compare(ref, got, n, isint, atol, rtol);
  CHECK(s.n_bad == 0, "%s.%s: %zu of %zu elements out of tolerance (atol %.1e, rtol %.1e); first "
        "bad [%zu] cpu %.9g cuda %.9g; max abs err %.3e, max rel err %.3e", t->name, what,
        s.n_bad, n, atol, rtol, s.first_bad,
        s.first_bad < n ? (isint ? (double)(int32_t)ref[s.first_bad] : (double)u2f(ref[s.first_bad])) : 0.0,
        s.first_bad < n ? (isint ? (double)(int32_t)got[s.first_bad] : (double)u2f(got[s.first_bad])) : 0.0,
        s.max_abs, s.max_rel);
  if (s.n_bad == 0 && n > 0)
    printf("  %-44s n %-7zu max abs %.2e  max rel %.2e  worst [%zu] %.3f of tol\n", what, n,
           s.max_abs, s.max_rel, s.worst, s.worst_ratio);
}

/* runs the case on the CPU, then twice on the CUDA backend, and compares */
static void run_case(const char *name, void (*fn)(tc *), double atol, double rtol) {
  tc *t = (tc *)calloc(1, sizeof(tc));
  int pass, i;
  t->name = name;
  t->seed = hash_str(name);
  t->atol = atol, t->rtol = rtol;
  ++n_cases;
  printf("%s (atol %.1e, rtol %.1e)\n", name, atol, rtol);
  for (pass = 0; pass < 3; ++pass) {
    int st;
    t->pass = pass;
    t->be = pass ? cuda_be : cpu_be;
    t->cur = 0;
#ifndef IOUPOS_TEST_CUDA_GPU
    /* host build: the second CUDA run goes through every grid and block in reverse order */
    if (pass == 2) setenv("IOUPOS_CUDA_HOST_ORDER", "reverse", 1);
#endif
    fn(t);
#ifndef IOUPOS_TEST_CUDA_GPU
    unsetenv("IOUPOS_CUDA_HOST_ORDER");
#endif
    st = t->be->sync();
    CHECK(st == 0, "%s: pass %d: sync returned %d (%s)", name, pass, st, ioupos_failure_reason());
    for (i = 0; i < t->cur; ++i) {
      buf *b = &t->b[i];
      size_t k, bytes = (b->n + 2 * GUARD) * 4;
      uint32_t *h = (uint32_t *)malloc(bytes);
      int guards_ok = 1;
      t->be->download(h, b->dev, bytes);
      t->be->release(b->dev);
      for (k = 0; k < GUARD; ++k)
        if (h[k] != GUARD_BITS || h[GUARD + b->n + k] != GUARD_BITS) guards_ok = 0;
      CHECK(guards_ok, "%s: pass %d (%s): a write outside buffer %s (guard bytes changed)", name,
            pass, pass ? "cuda" : "cpu", b->name);
      b->res[pass] = (uint32_t *)malloc((b->n ? b->n : 1) * 4);
      memcpy(b->res[pass], h + GUARD, b->n * 4);
      free(h);
      if (b->role == IN)
        CHECK(memcmp(b->res[pass], b->init, b->n * 4) == 0, "%s: pass %d (%s): input %s changed",
              name, pass, pass ? "cuda" : "cpu", b->name);
    }
    if (t->unsupported) break;
  }
  if (t->unsupported) {
    printf("  unsupported by the CUDA backend (skipped)\n");
    ++n_unsupported;
    if (strlen(unsupported_list) + strlen(name) + 3 < sizeof unsupported_list) {
      if (unsupported_list[0]) strcat(unsupported_list, ", ");
      strcat(unsupported_list, name);
    }
  } else {
    for (pass = 0; pass < 3; ++pass)
      CHECK(t->status[pass] == 0, "%s: pass %d returned status %d (%s)", name, pass,
            t->status[pass], ioupos_failure_reason());
    for (i = 0; i < t->nb; ++i) {
      buf *b = &t->b[i];
      if (b->role != OUT) continue;
      report(t, b->name, b->res[0], b->res[1], b->n, b->isint, b->atol, b->rtol);
      CHECK(memcmp(b->res[1], b->res[2], b->n * 4) == 0,
            "%s.%s: two CUDA runs differ (not deterministic)", name, b->name);
    }
    if (t->has_ret) {
      double r = t->ret[0], g = t->ret[1];
      int bad = (isnan(r) != isnan(g)) || (!isnan(r) && !(fabs(g - r) <= atol + rtol * fabs(r)));
      CHECK(!bad, "%s: returned value cpu %.17g cuda %.17g (atol %.1e, rtol %.1e)", name, r, g,
            atol, rtol);
      CHECK(memcmp(&t->ret[1], &t->ret[2], sizeof(double)) == 0,
            "%s: returned values of two CUDA runs differ: %.17g %.17g", name, t->ret[1],
            t->ret[2]);
      if (!bad) printf("  %-44s cpu %.10g cuda %.10g (abs err %.2e)\n", "returned", r, g,
                       fabs(g - r));
    }
  }
  for (i = 0; i < t->nb; ++i) {
    free(t->b[i].init);
    for (pass = 0; pass < 3; ++pass) free(t->b[i].res[pass]);
  }
  free(t);
}

/* host-side helpers for cases whose inputs must be consistent (saved statistics, activations) */
static float *hmalloc(size_t n) { return (float *)calloc(n ? n : 1, sizeof(float)); }

/* ---- tolerances (the case's, for its activations; weight gradients get WG(K) with K the rows
   or positions they sum over) ----
   GEMM_TOL(K): outputs of float matrix products with K-term sums of values in [-1, 1] (inputs
     in [-1, 1] or O(1)): cuBLAS and ioupos_gemm sum in different orders (and cuBLAS may split K),
     each rounding adds < 2^-24 of the partial sum; 1e-6 K absolute covers K roundings of sums up
     to ~16 with room, while a wrong index, transpose or leading dimension gives O(0.1) errors.
   ROW_TOL: element-wise and reduction kernels computed in double and rounded once to float (as
     the CPU): at most one float ulp apart (different summation order in double, or the device's
     double exp / erf / log within 2 double ulps); 3e-7 relative is 2.5 ulps, 1e-7 absolute
     covers results that are differences of nearly equal O(1) terms.
   EXACT: the same float operations in the same order (optimiser steps with explicit fmaf and
     round-to-nearest intrinsics, copies, gathers): bit for bit. */
#define GEMM_TOL(K) (1e-6 * (K) + 1e-6)
#define ROW_ATOL 1e-7
#define ROW_RTOL 3e-7

/* =============================================================================================
   Section 11
   ============================================================================================= */

static void c_linear_fwd_bias(tc *t) {
  int N = 300, C = 37, OC = 19;
  NEED(linear_forward);
  {
    float *out = F("out", OUT, N * OC, -1, 1), *inp = F("inp", IN, N * C, -1, 1);
    float *w = F("weight", IN, OC * C, -1, 1), *b = F("bias", IN, OC, -1, 1);
    ST(t->be->linear_forward(out, inp, w, b, N, C, OC));
  }
}
static void c_linear_fwd_nobias(tc *t) {
  int N = 7, C = 1, OC = 300;
  NEED(linear_forward);
  {
    float *out = F("out", OUT, N * OC, -1, 1), *inp = F("inp", IN, N * C, -1, 1);
    float *w = F("weight", IN, OC * C, -1, 1);
    ST(t->be->linear_forward(out, inp, w, NULL, N, C, OC));
  }
}
static void c_linear_bwd_all(tc *t) {
  int N = 300, C = 37, OC = 19;
  NEED(linear_backward);
  {
    float *dinp = F("dinp", OUT, N * C, -1, 1), *dw = WG(F("dweight", OUT, OC * C, -1, 1), N);
    float *db = F("dbias", OUT, OC, -1, 1), *dout = F("dout", IN, N * OC, -1, 1);
    float *inp = F("inp", IN, N * C, -1, 1), *w = F("weight", IN, OC * C, -1, 1);
    ST(t->be->linear_backward(dinp, dw, db, dout, inp, w, N, C, OC));
  }
}
static void c_linear_bwd_some(tc *t) { /* dinp NULL; dweight only, then dbias only */
  int N = 530, C = 5, OC = 3;
  NEED(linear_backward);
  {
    float *dw = WG(F("dweight", OUT, OC * C, -1, 1), N), *db = F("dbias", OUT, OC, -1, 1);
    float *dout = F("dout", IN, N * OC, -1, 1), *inp = F("inp", IN, N * C, -1, 1);
    float *w = F("weight", IN, OC * C, -1, 1);
    ST(t->be->linear_backward(NULL, dw, NULL, dout, inp, w, N, C, OC));
    if (!t->status[t->pass]) ST(t->be->linear_backward(NULL, NULL, db, dout, inp, w, N, C, OC));
  }
}

static void ln_case(tc *t, int N, int C, int affine) {
  float *out = F("out", OUT, N * C, -1, 1), *mean = F("mean", OUT, N, -1, 1);
  float *rstd = F("rstd", OUT, N, -1, 1), *inp = F("inp", IN, N * C, -3, 2);
  float *w = affine ? F("weight", IN, C, -2, 2) : NULL, *b = affine ? F("bias", IN, C, -1, 1) : NULL;
  t->be->layernorm_forward(out, mean, rstd, inp, w, b, N, C, 1e-5f);
}
static void c_ln_fwd(tc *t) {
  NEED(layernorm_forward);
  ln_case(t, 70, 37, 1);
}
static void c_ln_fwd_wide(tc *t) {
  NEED(layernorm_forward);
  ln_case(t, 9, 300, 1);
}
static void c_ln_fwd_plain(tc *t) {
  NEED(layernorm_forward);
  ln_case(t, 33, 16, 0);
}

static void ln_bwd_case(tc *t, int N, int C, int affine, int with_dinp) {
  float *hm = hmalloc(N), *hr = hmalloc(N), *ho = hmalloc((size_t)N * C);
  float *inp, *w = NULL, *mean, *rstd, *dinp, *dw, *db, *dout;
  inp = F("inp", IN, N * C, -3, 2);
  ioupos_layernorm_forward(ho, hm, hr, HOST(), NULL, NULL, N, C, 1e-5f);
  if (affine) w = F("weight", IN, C, -2, 2);
  mean = FV("mean", IN, N, hm);
  rstd = FV("rstd", IN, N, hr);
  dout = F("dout", IN, N * C, -1, 1);
  dinp = with_dinp ? F("dinp", OUT, N * C, -1, 1) : NULL;
  dw = affine ? F("dweight", OUT, C, -1, 1) : NULL;
  db = affine ? F("dbias", OUT, C, -1, 1) : NULL;
  t->be->layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
  free(hm), free(hr), free(ho);
}
static void c_ln_bwd(tc *t) {
  NEED(layernorm_backward);
  ln_bwd_case(t, 300, 37, 1, 1);
}
static void c_ln_bwd_params(tc *t) {
  NEED(layernorm_backward);
  ln_bwd_case(t, 520, 200, 1, 0);
}
static void c_ln_bwd_plain(tc *t) {
  NEED(layernorm_backward);
  ln_bwd_case(t, 40, 24, 0, 1);
}

static void c_gelu_fwd(tc *t) {
  NEED(gelu_forward);
  {
    float *out = F("out", OUT, 3000, -1, 1), *inp = F("inp", IN, 3000, -7, 7);
    t->be->gelu_forward(out, inp, 3000);
  }
}
static void c_gelu_bwd(tc *t) {
  NEED(gelu_backward);
  {
    float *dinp = F("dinp", OUT, 3000, -1, 1), *inp = F("inp", IN, 3000, -7, 7);
    float *dout = F("dout", IN, 3000, -2, 2);
    t->be->gelu_backward(dinp, inp, dout, 3000);
  }
}

static void c_relu(tc *t) {
  float x[600];
  int i;
  NEED(relu_forward);
  NEED(relu_backward);
  for (i = 0; i < 600; ++i) x[i] = i % 7 == 0 ? 0.0f : (float)((i * 37) % 101 - 50) / 25.0f;
  x[1] = -0.0f;
  {
    float *out = F("out", OUT, 600, -1, 1), *inp = FV("inp", IN, 600, x);
    float *dinp = F("dinp", OUT, 600, -1, 1), *dout = F("dout", IN, 600, -1, 1);
    t->be->relu_forward(out, inp, 600);
    t->be->relu_backward(dinp, inp, dout, 600);
  }
}

static void c_l2norm(tc *t) {
  int N = 20, C = 150, i;
  float *x = hmalloc((size_t)N * C), *y = hmalloc((size_t)N * C), *d = hmalloc(N);
  NEED(l2norm_forward);
  NEED(l2norm_backward);
  for (i = 0; i < N * C; ++i) x[i] = (float)sin(0.37 * i);
  for (i = 0; i < C; ++i) x[3 * C + i] = 0.0f;   /* a zero row: the clamp */
  for (i = 0; i < C; ++i) x[5 * C + i] = 1e-15f; /* norm below eps */
  ioupos_l2norm_forward(y, d, x, N, C, 1e-12f);
  {
    float *out = F("out", OUT, N * C, -1, 1), *den = F("denom", OUT, N, -1, 1);
    float *inp = FV("inp", IN, N * C, x), *dinp = F("dinp", OUT, N * C, -1, 1);
    float *yo = FV("y (cpu)", IN, N * C, y), *dd = FV("denom (cpu)", IN, N, d);
    float *dout = F("dout", IN, N * C, -1, 1);
    t->be->l2norm_forward(out, den, inp, N, C, 1e-12f);
    t->be->l2norm_backward(dinp, yo, dd, dout, N, C, 1e-12f);
  }
  free(x), free(y), free(d);
}

static void c_avgpool(tc *t) {
  int B = 3, T = 49, C = 40;
  NEED(avgpool_forward);
  NEED(avgpool_backward);
  {
    float *out = F("out", OUT, B * C, -1, 1), *inp = F("inp", IN, B * T * C, -2, 2);
    float *dinp = F("dinp", OUT, B * T * C, -1, 1), *dout = F("dout", IN, B * C, -1, 1);
    t->be->avgpool_forward(out, inp, B, T, C);
    t->be->avgpool_backward(dinp, dout, B, T, C);
  }
}

static void c_bn_train(tc *t) {
  int N = 33, C = 150;
  float *hm = hmalloc(C), *hr = hmalloc(C), *ho = hmalloc((size_t)N * C);
  NEED(batchnorm_forward_train);
  NEED(batchnorm_backward_train);
  {
    float *out = F("out", OUT, N * C, -1, 1), *mean = F("mean", OUT, C, -1, 1);
    float *rstd = F("rstd", OUT, C, -1, 1), *rm = F("running_mean", OUT, C, -1, 1);
    float *rv = F("running_var", OUT, C, 0.5f, 2), *inp = F("inp", IN, N * C, -2, 3);
    const float *hinp = HOST();
    float *w = F("weight", IN, C, -2, 2), *b = F("bias", IN, C, -1, 1), *m2, *r2;
    float *dinp = F("dinp", OUT, N * C, -1, 1), *dw = F("dweight", OUT, C, -1, 1);
    float *db = F("dbias", OUT, C, -1, 1), *dout = F("dout", IN, N * C, -1, 1);
    float *out2 = F("out (no affine, no running)", OUT, N * C, -1, 1);
    ioupos_batchnorm_forward_train(ho, hm, hr, NULL, NULL, hinp, NULL, NULL, N, C, 0.1f, 1e-5f);
    m2 = FV("mean (cpu)", IN, C, hm);
    r2 = FV("rstd (cpu)", IN, C, hr);
    t->be->batchnorm_forward_train(out, mean, rstd, rm, rv, inp, w, b, N, C, 0.1f, 1e-5f);
    t->be->batchnorm_forward_train(out2, mean, rstd, NULL, NULL, inp, NULL, NULL, N, C, 0.1f,
                                   1e-5f);
    t->be->batchnorm_backward_train(dinp, dw, db, dout, inp, w, m2, r2, N, C);
  }
  free(hm), free(hr), free(ho);
}

static void c_bn_eval(tc *t) {
  int N = 17, C = 70;
  NEED(batchnorm_forward_eval);
  NEED(batchnorm_backward_eval);
  {
    float *out = F("out", OUT, N * C, -1, 1), *inp = F("inp", IN, N * C, -2, 3);
    float *rm = F("running_mean", IN, C, -1, 1), *rv = F("running_var", IN, C, 0.2f, 3);
    float *w = F("weight", IN, C, -2, 2), *b = F("bias", IN, C, -1, 1);
    float *dinp = F("dinp", OUT, N * C, -1, 1), *dw = F("dweight", OUT, C, -1, 1);
    float *db = F("dbias", OUT, C, -1, 1), *dout = F("dout", IN, N * C, -1, 1);
    float *dinp2 = F("dinp (no weight)", OUT, N * C, -1, 1);
    t->be->batchnorm_forward_eval(out, inp, rm, rv, w, b, N, C, 1e-5f);
    t->be->batchnorm_backward_eval(dinp, dw, db, dout, inp, rm, rv, w, N, C, 1e-5f);
    t->be->batchnorm_backward_eval(dinp2, NULL, NULL, dout, inp, rm, rv, NULL, N, C, 1e-5f);
  }
}

static void pe_case(tc *t, int dims, int B, int Cin, const int *shape, int p, int Cout, int bias) {
  int k, g = 1, S = 1;
  size_t M, K, colsz = ioupos_patch_embed_col_size(dims, B, Cin, shape, p);
  float *hcol = hmalloc(colsz), *hout;
  for (k = 0; k < dims; ++k) g *= (shape[k] + p - 1) / p, S *= shape[k];
  M = (size_t)B * g;
  K = colsz / M;
  hout = hmalloc(M * Cout);
  {
    float *out = F("out", OUT, M * Cout, -1, 1), *col = F("col", OUT, colsz, -1, 1);
    float *inp = F("inp", IN, (size_t)B * Cin * S, -1, 1);
    const float *hinp = HOST();
    float *w = F("weight", IN, (size_t)Cout * K, -1, 1), *hw = (float *)HOST();
    float *b = bias ? F("bias", IN, Cout, -1, 1) : NULL;
    float *dinp = F("dinp", OUT, (size_t)B * Cin * S, -1, 1), *dw = WG(F("dweight", OUT, Cout * K, -1, 1), M);
    float *db = bias ? F("dbias", OUT, Cout, -1, 1) : NULL, *scr = F("scratch", SCR, colsz, 0, 0);
    float *dout = F("dout", IN, M * Cout, -1, 1), *c2;
    ioupos_patch_embed_forward(hout, hcol, hinp, hw, NULL, dims, B, Cin, shape, p, Cout);
    c2 = FV("col (cpu)", IN, colsz, hcol);
    ST(t->be->patch_embed_forward(out, col, inp, w, b, dims, B, Cin, shape, p, Cout));
    if (!t->status[t->pass])
      ST(t->be->patch_embed_backward(dinp, dw, db, scr, dout, c2, w, dims, B, Cin, shape, p, Cout));
  }
  free(hcol), free(hout);
}
static void c_pe_2d(tc *t) {
  int shape[2] = {10, 9};
  NEED(patch_embed_forward);
  NEED(patch_embed_backward);
  pe_case(t, 2, 2, 2, shape, 4, 5, 1);
}
static void c_pe_3d(tc *t) {
  int shape[3] = {5, 6, 4};
  NEED(patch_embed_forward);
  NEED(patch_embed_backward);
  pe_case(t, 3, 2, 1, shape, 2, 6, 0);
}

static void pm_case(tc *t, int dims, int B, const int *shape, int C, int with_dinp) {
  int k, S = 1, nq = dims == 3 ? 8 : 4, Kd = nq * C;
  size_t M = (size_t)B;
  float *hcat, *hln, *hm, *hr, *ho;
  for (k = 0; k < dims; ++k) M *= (size_t)(shape[k] + 1) / 2, S *= shape[k];
  hcat = hmalloc(M * Kd), hln = hmalloc(M * Kd), hm = hmalloc(M), hr = hmalloc(M);
  ho = hmalloc(M * 2 * C);
  {
    float *out = F("out", OUT, M * 2 * C, -1, 1), *cat = F("cat", OUT, M * Kd, -1, 1);
    float *ln = F("lnout", OUT, M * Kd, -1, 1), *mean = F("mean", OUT, M, -1, 1);
    float *rstd = F("rstd", OUT, M, -1, 1), *inp = F("inp", IN, (size_t)B * S * C, -2, 2);
    const float *hinp = HOST();
    float *lw = F("ln_w", IN, Kd, 0.5f, 1.5f), *hlw = (float *)HOST();
    float *lb = F("ln_b", IN, Kd, -0.5f, 0.5f), *hlb = (float *)HOST();
    float *rw = F("red_w", IN, 2 * C * Kd, -1, 1), *hrw = (float *)HOST();
    float *dinp = with_dinp ? F("dinp", OUT, (size_t)B * S * C, -1, 1) : NULL;
    float *dlw = WG(F("dln_w", OUT, Kd, -1, 1), M), *dlb = WG(F("dln_b", OUT, Kd, -1, 1), M);
    float *drw = WG(F("dred_w", OUT, 2 * C * Kd, -1, 1), M), *scr = F("scratch", SCR, 2 * M * Kd, 0, 0);
    float *dout = F("dout", IN, M * 2 * C, -1, 1), *c2, *l2, *m2, *r2;
    ioupos_patch_merging_forward(ho, hcat, hln, hm, hr, hinp, hlw, hlb, hrw, dims, B, shape, C);
    c2 = FV("cat (cpu)", IN, M * Kd, hcat);
    l2 = FV("lnout (cpu)", IN, M * Kd, hln);
    m2 = FV("mean (cpu)", IN, M, hm);
    r2 = FV("rstd (cpu)", IN, M, hr);
    ST(t->be->patch_merging_forward(out, cat, ln, mean, rstd, inp, lw, lb, rw, dims, B, shape, C));
    if (!t->status[t->pass])
      ST(t->be->patch_merging_backward(dinp, dlw, dlb, drw, scr, dout, c2, l2, m2, r2, lw, rw, dims,
                                       B, shape, C));
  }
  free(hcat), free(hln), free(hm), free(hr), free(ho);
}
static void c_pm_2d(tc *t) {
  int shape[2] = {5, 6};
  NEED(patch_merging_forward);
  NEED(patch_merging_backward);
  pm_case(t, 2, 2, shape, 3, 1);
}
static void c_pm_3d(tc *t) {
  int shape[3] = {3, 4, 5};
  NEED(patch_merging_forward);
  NEED(patch_merging_backward);
  pm_case(t, 3, 1, shape, 2, 1);
}
static void c_pm_2d_nodinp(tc *t) {
  int shape[2] = {4, 4};
  NEED(patch_merging_forward);
  NEED(patch_merging_backward);
  pm_case(t, 2, 3, shape, 4, 0);
}

static void c_residual(tc *t) {
  int B = 3;
  size_t S = 5000;
  float mask[3] = {1.25f, 0.0f, 1.25f};
  NEED(residual_forward);
  NEED(residual_backward);
  {
    float *out = F("out (mask)", OUT, B * S, -1, 1), *out2 = F("out (no mask)", OUT, B * S, -1, 1);
    float *x = F("x", IN, B * S, -1, 1), *y = F("y", IN, B * S, -1, 1);
    float *m = FV("mask", IN, B, mask);
    float *dy = F("dy (mask)", OUT, B * S, -1, 1), *dy2 = F("dy (no mask)", OUT, B * S, -1, 1);
    float *dout = F("dout", IN, B * S, -1, 1);
    t->be->residual_forward(out, x, y, m, B, S);
    t->be->residual_forward(out2, x, y, NULL, B, S);
    t->be->residual_backward(dy, dout, m, B, S);
    t->be->residual_backward(dy2, dout, NULL, 1, B * S);
  }
}

static void mlp_case(tc *t, int N, int C, int Hd, int keep_act) {
  float *hpre = hmalloc((size_t)N * Hd), *hact = hmalloc((size_t)N * Hd), *hout = hmalloc((size_t)N * C);
  {
    float *out = F("out", OUT, N * C, -1, 1), *pre = F("h_pre", OUT, N * Hd, -1, 1);
    float *act = F("h_act", OUT, N * Hd, -1, 1), *inp = F("inp", IN, N * C, -1, 1);
    const float *hinp = HOST();
    float *w1 = F("w1", IN, Hd * C, -1, 1), *hw1 = (float *)HOST();
    float *b1 = F("b1", IN, Hd, -1, 1), *hb1 = (float *)HOST();
    float *w2 = F("w2", IN, C * Hd, -0.5f, 0.5f), *hw2 = (float *)HOST();
    float *b2 = F("b2", IN, C, -1, 1), *hb2 = (float *)HOST();
    float *dinp = F("dinp", OUT, N * C, -1, 1), *dw1 = WG(F("dw1", OUT, Hd * C, -1, 1), N);
    float *db1 = WG(F("db1", OUT, Hd, -1, 1), N), *dw2 = WG(F("dw2", OUT, C * Hd, -1, 1), N);
    float *db2 = WG(F("db2", OUT, C, -1, 1), N), *dout = F("dout", IN, N * C, -1, 1);
    float *scr = F("scratch", SCR, (keep_act ? 1 : 2) * N * Hd, 0, 0), *p2, *a2;
    ioupos_mlp_forward(hout, hpre, hact, hinp, hw1, hb1, hw2, hb2, N, C, Hd);
    p2 = FV("h_pre (cpu)", IN, N * Hd, hpre);
    a2 = keep_act ? FV("h_act (cpu)", IN, N * Hd, hact) : NULL;
    ST(t->be->mlp_forward(out, pre, act, inp, w1, b1, w2, b2, N, C, Hd));
    if (!t->status[t->pass])
      ST(t->be->mlp_backward(dinp, dw1, db1, dw2, db2, scr, dout, inp, p2, a2, w1, w2, N, C, Hd));
  }
  free(hpre), free(hact), free(hout);
}
static void c_mlp(tc *t) {
  NEED(mlp_forward);
  NEED(mlp_backward);
  mlp_case(t, 270, 12, 48, 1);
}
static void c_mlp_recompute(tc *t) {
  NEED(mlp_forward);
  NEED(mlp_backward);
  mlp_case(t, 50, 8, 32, 0);
}

/* =============================================================================================
   Section 12
   ============================================================================================= */

static void swin_case(tc *t, int nd, int batch, const int *size, const int *window,
                      const int *shift, int C, int NH) {
  ioupos_swin_geom g;
  size_t nx, na, ns, nm;
  int rows, d;
  int *hidx;
  float *hmask, *hacts, *hscr, *hout;
  if (ioupos_swin_geom_init(&g, nd, batch, size, window, shift) != 0) {
    printf("test_cuda_ops: %s: bad geometry (a bug of the test)\n", t->name);
    exit(2);
  }
  nx = (size_t)batch * C;
  for (d = 0; d < nd; ++d) nx *= (size_t)size[d];
  na = ioupos_swin_attention_acts_size(&g, C, NH);
  ns = ioupos_swin_attention_scratch_size(&g, C, NH);
  nm = (size_t)g.nwin * g.ntok * g.ntok;
  rows = ioupos_swin_table_rows(&g);
  hidx = (int *)calloc((size_t)g.ntok * g.ntok, sizeof(int));
  hmask = hmalloc(nm), hacts = hmalloc(na), hscr = hmalloc(ns), hout = hmalloc(nx);
  ioupos_swin_relative_index(hidx, &g);
  if (g.shifted) ioupos_swin_attn_mask(hmask, &g);
  {
    float *out = F("out", OUT, nx, -1, 1), *acts = F("acts", OUT, na, -1, 1);
    float *scr = F("scratch", SCR, ns, 0, 0), *x = F("x", IN, nx, -1, 1);
    const float *hx = HOST();
    float *qw = F("qkv_w", IN, 3 * C * C, -0.5f, 0.5f), *hqw = (float *)HOST();
    float *qb = F("qkv_b", IN, 3 * C, -0.5f, 0.5f), *hqb = (float *)HOST();
    float *pw = F("proj_w", IN, C * C, -0.5f, 0.5f), *hpw = (float *)HOST();
    float *pb = F("proj_b", IN, C, -0.5f, 0.5f), *hpb = (float *)HOST();
    float *tab = F("table", IN, rows * NH, -1, 1), *htab = (float *)HOST();
    int *idx = IV("index", g.ntok * g.ntok, hidx);
    float *mask = g.shifted ? FV("mask", IN, nm, hmask) : NULL;
    int T = g.batch * g.nwin * g.ntok; /* the weight gradients sum over every window token */
    float *dx = F("dx", OUT, nx, -1, 1), *dqw = WG(F("dqkv_w", OUT, 3 * C * C, -1, 1), T);
    float *dqb = WG(F("dqkv_b", OUT, 3 * C, -1, 1), T), *dpw = WG(F("dproj_w", OUT, C * C, -1, 1), T);
    float *dpb = WG(F("dproj_b", OUT, C, -1, 1), T), *dtab = F("dtable", OUT, rows * NH, -1, 1);
    float *dout = F("dout", IN, nx, -1, 1), *a2;
    ioupos_swin_attention_forward(hout, hacts, hscr, hx, hqw, hqb, hpw, hpb, htab, hidx,
                                  g.shifted ? hmask : NULL, &g, C, NH);
    a2 = FV("acts (cpu)", IN, na, hacts);
    ST(t->be->swin_attention_forward(out, acts, scr, x, qw, qb, pw, pb, tab, idx, mask, &g, C, NH));
    if (!t->status[t->pass])
      ST(t->be->swin_attention_backward(dx, dqw, dqb, dpw, dpb, dtab, scr, dout, a2, qw, pw, idx, &g,
                                        C, NH));
  }
  free(hidx), free(hmask), free(hacts), free(hscr), free(hout);
}
static void c_swin_2d_shift(tc *t) {
  int size[2] = {6, 6}, win[2] = {3, 3}, sh[2] = {1, 1};
  NEED(swin_attention_forward);
  NEED(swin_attention_backward);
  swin_case(t, 2, 2, size, win, sh, 8, 2);
}
static void c_swin_2d_pad(tc *t) {
  int size[2] = {5, 7}, win[2] = {3, 3};
  NEED(swin_attention_forward);
  NEED(swin_attention_backward);
  swin_case(t, 2, 1, size, win, NULL, 6, 3);
}
static void c_swin_3d_shift(tc *t) {
  int size[3] = {4, 4, 3}, win[3] = {2, 2, 2}, sh[3] = {1, 1, 1};
  NEED(swin_attention_forward);
  NEED(swin_attention_backward);
  swin_case(t, 3, 1, size, win, sh, 4, 1);
}
static void c_swin_2d_small_map(tc *t) { /* window shrinks on axis 0: the index's [:n, :n] */
  int size[2] = {2, 5}, win[2] = {3, 3}, sh[2] = {1, 1};
  NEED(swin_attention_forward);
  NEED(swin_attention_backward);
  swin_case(t, 2, 2, size, win, sh, 4, 2);
}
static void c_swin_2d_swin(tc *t) { /* Swin's own shape: 49 tokens, head dim 16, shift 3 */
  int size[2] = {7, 14}, win[2] = {7, 7}, sh[2] = {3, 3};
  NEED(swin_attention_forward);
  NEED(swin_attention_backward);
  swin_case(t, 2, 1, size, win, sh, 32, 2);
}

/* =============================================================================================
   Section 14
   ============================================================================================= */

static void wn_case(tc *t, int N, int C, int OC, int with_g) {
  float *hw = hmalloc((size_t)OC * C), *hn = hmalloc(OC), *ho = hmalloc((size_t)N * OC);
  {
    float *out = F("out", OUT, N * OC, -1, 1), *w = F("weight", OUT, OC * C, -1, 1);
    float *vn = F("vnorm", OUT, OC, -1, 1), *inp = F("inp", IN, N * C, -1, 1);
    const float *hinp = HOST();
    float *v = F("v", IN, OC * C, -1, 1), *hv = (float *)HOST();
    float *g = with_g ? F("g", IN, OC, 0.5f, 2) : NULL, *hg = with_g ? (float *)HOST() : NULL;
    float *dinp = F("dinp", OUT, N * C, -1, 1), *dv = WG(F("dv", OUT, OC * C, -1, 1), N);
    float *dg = with_g ? WG(F("dg", OUT, OC, -1, 1), N) : NULL;
    float *dw = WG(F("dweight", OUT, OC * C, 0, 0), N), *dout = F("dout", IN, N * OC, -1, 1);
    float *w2, *n2;
    ioupos_wnlinear_forward(ho, hw, hn, hinp, hv, hg, N, C, OC);
    w2 = FV("weight (cpu)", IN, OC * C, hw);
    n2 = FV("vnorm (cpu)", IN, OC, hn);
    ST(t->be->wnlinear_forward(out, w, vn, inp, v, g, N, C, OC));
    if (!t->status[t->pass])
      ST(t->be->wnlinear_backward(dinp, dv, dg, dw, dout, inp, v, g, w2, n2, N, C, OC));
  }
  free(hw), free(hn), free(ho);
}
static void c_wn(tc *t) {
  NEED(wnlinear_forward);
  NEED(wnlinear_backward);
  wn_case(t, 40, 33, 70, 1);
}
static void c_wn_nog(tc *t) {
  NEED(wnlinear_forward);
  NEED(wnlinear_backward);
  wn_case(t, 9, 150, 20, 0);
}

static void c_simsiam(tc *t) {
  int N = 12, C = 200, i;
  float *p1 = hmalloc((size_t)N * C), *p2 = hmalloc((size_t)N * C), *z1 = hmalloc((size_t)N * C);
  float *z2 = hmalloc((size_t)N * C);
  NEED(simsiam_loss_forward);
  NEED(simsiam_loss_backward);
  for (i = 0; i < N * C; ++i) {
    p1[i] = (float)sin(0.1 * i), p2[i] = (float)cos(0.37 * i);
    z1[i] = (float)sin(0.05 * i + 1), z2[i] = (float)cos(0.011 * i * i);
  }
  for (i = 0; i < C; ++i) p2[2 * C + i] = 0.0f, z1[4 * C + i] = 1e-12f; /* clamped norms */
  {
    float *a = FV("p1", IN, N * C, p1), *b = FV("p2", IN, N * C, p2);
    float *c = FV("z1", IN, N * C, z1), *d = FV("z2", IN, N * C, z2);
    float *dp1 = F("dp1", OUT, N * C, -1, 1), *dp2 = F("dp2", OUT, N * C, -1, 1);
    float *dp1b = F("dp1 (dp2 NULL)", OUT, N * C, -1, 1);
    RET(t->be->simsiam_loss_forward(a, b, c, d, N, C));
    t->be->simsiam_loss_backward(dp1, dp2, 0.75f, a, b, c, d, N, C);
    t->be->simsiam_loss_backward(dp1b, NULL, 1.0f, a, b, c, d, N, C);
  }
  free(p1), free(p2), free(z1), free(z2);
}

static void dino_case(tc *t, int NT, int NS, int B, int D) {
  size_t nt = (size_t)NT * B * D, ns = (size_t)NS * B * D;
  float *hq = hmalloc(nt), *hl = hmalloc(ns);
  {
    float *tp = F("tprob", OUT, nt, -1, 1), *sl = F("slogp", OUT, ns, -1, 1);
    float *te = F("teacher", IN, nt, -3, 3), *hte = (float *)HOST();
    float *st = F("student", IN, ns, -3, 3), *hst = (float *)HOST();
    float *ce = F("center", IN, D, -0.5f, 0.5f), *hce = (float *)HOST();
    float *ce2 = F("center (updated)", OUT, D, -0.5f, 0.5f);
    float *ds = F("dstudent", OUT, ns, -1, 1), *q2, *l2;
    ioupos_dino_loss_forward(hq, hl, hte, hst, hce, NT, NS, B, D, 0.04f, 0.1f);
    q2 = FV("tprob (cpu)", IN, nt, hq);
    l2 = FV("slogp (cpu)", IN, ns, hl);
    RET(t->be->dino_loss_forward(tp, sl, te, st, ce, NT, NS, B, D, 0.04f, 0.1f));
    t->be->dino_loss_backward(ds, 0.5f, q2, l2, NT, NS, B, D, 0.1f);
    t->be->dino_center_update(ce2, te, NT, B, D, 0.9f);
  }
  free(hq), free(hl);
}
static void c_dino(tc *t) {
  NEED(dino_loss_forward);
  NEED(dino_loss_backward);
  NEED(dino_center_update);
  dino_case(t, 2, 4, 3, 300);
}
static void c_dino_one_view(tc *t) { /* NT 1, NS 2: one pair */
  NEED(dino_loss_forward);
  NEED(dino_loss_backward);
  NEED(dino_center_update);
  dino_case(t, 1, 2, 5, 17);
}

/* =============================================================================================
   Section 15
   ============================================================================================= */

static void c_sgd(tc *t) {
  size_t n = 3000;
  NEED(sgd_step);
  {
    float *p1 = F("param (first step, wd)", OUT, n, -1, 1), *b1 = F("buf (first step)", OUT, n, 0, 0);
    float *p2 = F("param (momentum, wd)", OUT, n, -1, 1), *b2 = F("buf", OUT, n, -1, 1);
    float *p3 = F("param (plain)", OUT, n, -1, 1), *g = F("grad", IN, n, -1, 1);
    t->be->sgd_step(p1, g, b1, n, 0.05f, 0.9f, 1e-4f, 1);
    t->be->sgd_step(p2, g, b2, n, 0.05f, 0.9f, 1e-4f, 0);
    t->be->sgd_step(p2, g, b2, n, 0.03f, 0.9f, 1e-4f, 0);
    t->be->sgd_step(p3, g, NULL, n, 0.1f, 0.0f, 0.0f, 0);
  }
}

static void c_adamw(tc *t) {
  size_t n = 3000;
  NEED(adamw_step);
  {
    float *p = F("param (step 1..3, wd)", OUT, n, -1, 1), *m = F("m", OUT, n, 0, 0);
    float *v = F("v", OUT, n, 0, 0), *g = F("grad", IN, n, -1, 1);
    float *p2 = F("param (beta1 0.3, no wd, step 7)", OUT, n, -1, 1);
    float *m2 = F("m (beta1 0.3)", OUT, n, -0.1f, 0.1f), *v2 = F("v (beta1 0.3)", OUT, n, 0, 0.01f);
    t->be->adamw_step(p, g, m, v, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.04f, 1);
    t->be->adamw_step(p, g, m, v, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.04f, 2);
    t->be->adamw_step(p, g, m, v, n, 5e-4f, 0.9f, 0.999f, 1e-8f, 0.4f, 3);
    t->be->adamw_step(p2, g, m2, v2, n, 1e-2f, 0.3f, 0.99f, 1e-6f, 0.0f, 7);
  }
}

static void c_ema(tc *t) {
  size_t n = 3000;
  NEED(ema_update);
  {
    float *te = F("teacher", OUT, n, -1, 1), *st = F("student", IN, n, -1, 1);
    t->be->ema_update(te, st, n, 0.9995);
    t->be->ema_update(te, st, n, 0.996);
  }
}

static void c_clip_scaled(tc *t) {
  size_t n = 20000;
  NEED(clip_grad_per_param);
  {
    float *g = F("grad", OUT, n, -1, 1);
    RET(t->be->clip_grad_per_param(g, n, 3.0f));
  }
}
static void c_clip_kept(tc *t) {
  size_t n = 777;
  NEED(clip_grad_per_param);
  {
    float *g = F("grad", OUT, n, -1, 1);
    RET(t->be->clip_grad_per_param(g, n, 1000.0f));
  }
}

/* =============================================================================================
   Section 19
   ============================================================================================= */

static void c_channels_first(tc *t) {
  int B = 2, C = 37;
  size_t S = 100;
  NEED(to_channels_first);
  NEED(to_channels_first_backward);
  {
    float *out = F("out", OUT, B * S * C, -1, 1), *inp = F("inp", IN, B * S * C, -1, 1);
    float *dinp = F("dinp", OUT, B * S * C, -1, 1), *dout = F("dout", IN, B * S * C, -1, 1);
    t->be->to_channels_first(out, inp, B, S, C);
    t->be->to_channels_first_backward(dinp, dout, B, S, C);
  }
}

static size_t prod_shape(int dims, const int *shape) {
  size_t n = 1;
  int d;
  for (d = 0; d < dims; ++d) n *= (size_t)shape[d];
  return n;
}

static void resblock_case(tc *t, int dims, int B, int Cin, const int *shape, int k, int Cout) {
  size_t n = prod_shape(dims, shape), na = ioupos_unet_resblock_acts_size(dims, B, Cin, shape, k, Cout);
  size_t ns = ioupos_unet_resblock_scratch_size(dims, B, Cin, shape, k, Cout), kv = 1;
  int has3 = Cin != Cout, d;
  float *hacts = hmalloc(na), *hscr = hmalloc(ns), *hout = hmalloc((size_t)B * Cout * n);
  for (d = 0; d < dims; ++d) kv *= (size_t)k;
  {
    float *out = F("out", OUT, B * Cout * n, -1, 1), *acts = F("acts", OUT, na, -1, 1);
    float *scr = F("scratch", SCR, ns, 0, 0), *inp = F("inp", IN, B * Cin * n, -2, 2);
    const float *hinp = HOST();
    float *w1 = F("w1", IN, Cout * Cin * kv, -0.3f, 0.3f), *hw1 = (float *)HOST();
    float *w2 = F("w2", IN, Cout * Cout * kv, -0.3f, 0.3f), *hw2 = (float *)HOST();
    float *w3 = has3 ? F("w3", IN, Cout * Cin, -0.5f, 0.5f) : NULL;
    const float *hw3 = has3 ? HOST() : NULL;
    float *dinp = F("dinp", OUT, B * Cin * n, -1, 1);
    float *dw1 = WG(F("dw1", OUT, Cout * Cin * kv, -1, 1), B * n);
    float *dw2 = WG(F("dw2", OUT, Cout * Cout * kv, -1, 1), B * n);
    float *dw3 = has3 ? WG(F("dw3", OUT, Cout * Cin, -1, 1), B * n) : NULL;
    float *dout = F("dout", IN, B * Cout * n, -1, 1), *a2;
    ioupos_unet_resblock_forward(hout, hacts, hscr, hinp, hw1, hw2, hw3, dims, B, Cin, shape, k,
                                 Cout);
    a2 = FV("acts (cpu)", IN, na, hacts);
    ST(t->be->unet_resblock_forward(out, acts, scr, inp, w1, w2, w3, dims, B, Cin, shape, k, Cout));
    if (!t->status[t->pass])
      ST(t->be->unet_resblock_backward(dinp, dw1, dw2, dw3, scr, dout, a2, inp, w1, w2, w3, dims,
                                       B, Cin, shape, k, Cout));
  }
  free(hacts), free(hscr), free(hout);
}
static void c_resblock_2d(tc *t) {
  int shape[2] = {9, 10};
  NEED(unet_resblock_forward);
  NEED(unet_resblock_backward);
  resblock_case(t, 2, 2, 3, shape, 3, 4);
}
static void c_resblock_3d(tc *t) {
  int shape[3] = {4, 5, 3};
  NEED(unet_resblock_forward);
  NEED(unet_resblock_backward);
  resblock_case(t, 3, 1, 2, shape, 3, 2);
}
static void c_resblock_blocks(tc *t) { /* 4550 positions: two im2col blocks of the CPU's 4096 */
  int shape[2] = {70, 65};
  NEED(unet_resblock_forward);
  NEED(unet_resblock_backward);
  resblock_case(t, 2, 1, 2, shape, 3, 3);
}

static void upblock_case(tc *t, int dims, int B, int Cin, const int *shape, int k, int Cout) {
  int up[3], d;
  size_t nin = prod_shape(dims, shape), n2, kv = 1, tv = 1;
  size_t na = ioupos_unetr_upblock_acts_size(dims, B, shape, k, Cout);
  size_t ns = ioupos_unetr_upblock_scratch_size(dims, B, Cin, shape, k, Cout);
  float *hacts = hmalloc(na), *hscr = hmalloc(ns), *hout;
  for (d = 0; d < dims; ++d) up[d] = 2 * shape[d], kv *= (size_t)k, tv *= 2;
  n2 = prod_shape(dims, up);
  hout = hmalloc((size_t)B * Cout * n2);
  {
    float *out = F("out", OUT, B * Cout * n2, -1, 1), *acts = F("acts", OUT, na, -1, 1);
    float *scr = F("scratch", SCR, ns, 0, 0), *inp = F("inp", IN, B * Cin * nin, -2, 2);
    const float *hinp = HOST();
    float *skip = F("skip", IN, B * Cout * n2, -2, 2), *hskip = (float *)HOST();
    float *wt = F("wt", IN, Cin * Cout * tv, -0.5f, 0.5f), *hwt = (float *)HOST();
    float *w1 = F("w1", IN, Cout * 2 * Cout * kv, -0.3f, 0.3f), *hw1 = (float *)HOST();
    float *w2 = F("w2", IN, Cout * Cout * kv, -0.3f, 0.3f), *hw2 = (float *)HOST();
    float *w3 = F("w3", IN, Cout * 2 * Cout, -0.5f, 0.5f), *hw3 = (float *)HOST();
    float *dinp = F("dinp", OUT, B * Cin * nin, -1, 1), *dskip = F("dskip", OUT, B * Cout * n2, -1, 1);
    float *dwt = WG(F("dwt", OUT, Cin * Cout * tv, -1, 1), B * nin);
    float *dw1 = WG(F("dw1", OUT, Cout * 2 * Cout * kv, -1, 1), B * n2);
    float *dw2 = WG(F("dw2", OUT, Cout * Cout * kv, -1, 1), B * n2);
    float *dw3 = WG(F("dw3", OUT, Cout * 2 * Cout, -1, 1), B * n2), *dout = F("dout", IN, B * Cout * n2, -1, 1);
    float *a2;
    ioupos_unetr_upblock_forward(hout, hacts, hscr, hinp, hskip, hwt, hw1, hw2, hw3, dims, B, Cin,
                                 shape, k, Cout);
    a2 = FV("acts (cpu)", IN, na, hacts);
    ST(t->be->unetr_upblock_forward(out, acts, scr, inp, skip, wt, w1, w2, w3, dims, B, Cin, shape,
                                    k, Cout));
    if (!t->status[t->pass])
      ST(t->be->unetr_upblock_backward(dinp, dskip, dwt, dw1, dw2, dw3, scr, dout, a2, inp, wt, w1,
                                       w2, w3, dims, B, Cin, shape, k, Cout));
  }
  free(hacts), free(hscr), free(hout);
}
static void c_upblock_2d(tc *t) {
  int shape[2] = {3, 4};
  NEED(unetr_upblock_forward);
  NEED(unetr_upblock_backward);
  upblock_case(t, 2, 2, 5, shape, 3, 3);
}
static void c_upblock_3d(tc *t) {
  int shape[3] = {2, 2, 3};
  NEED(unetr_upblock_forward);
  NEED(unetr_upblock_backward);
  upblock_case(t, 3, 1, 2, shape, 3, 2);
}

static void c_outblock(tc *t) {
  int shape[2] = {7, 9}, B = 2, Cin = 6, Cout = 4;
  size_t n = 63;
  NEED(unet_outblock_forward);
  NEED(unet_outblock_backward);
  {
    float *out = F("out", OUT, B * Cout * n, -1, 1), *inp = F("inp", IN, B * Cin * n, -1, 1);
    float *w = F("weight", IN, Cout * Cin, -1, 1), *b = F("bias", IN, Cout, -1, 1);
    float *dinp = F("dinp", OUT, B * Cin * n, -1, 1), *dw = WG(F("dweight", OUT, Cout * Cin, -1, 1), B * n);
    float *db = F("dbias", OUT, Cout, -1, 1), *dout = F("dout", IN, B * Cout * n, -1, 1);
    ST(t->be->unet_outblock_forward(out, inp, w, b, 2, B, Cin, shape, Cout));
    if (!t->status[t->pass])
      ST(t->be->unet_outblock_backward(dinp, dw, db, dout, inp, w, 2, B, Cin, shape, Cout));
  }
}

/* =============================================================================================
   Memory operations and failure paths
   ============================================================================================= */

static void test_memory(void) {
  const ioupos_backend *be = cuda_be;
  size_t n = 1000, i;
  unsigned char *h = (unsigned char *)malloc(n), *g = (unsigned char *)malloc(n);
  size_t use0 = ioupos_cuda_mem_in_use(), peak0 = ioupos_cuda_mem_peak(), use1, peak1;
  unsigned char *a = (unsigned char *)be->alloc(n), *b = (unsigned char *)be->alloc(n);
  void *z = be->alloc(0);
  int zeros = 1, same = 1;
  printf("memory operations\n");
  CHECK(a && b && z, "alloc returned NULL: %s", ioupos_failure_reason());
  if (!a || !b || !z) return;
  /* the memory counter: the two blocks and the 0-byte one (1 byte) are counted, the peak
     follows; releasing b gives its bytes back and leaves the peak */
  use1 = ioupos_cuda_mem_in_use(), peak1 = ioupos_cuda_mem_peak();
  CHECK(use0 > 0 && peak0 >= use0, "memory counter after start-up: in use %zu, peak %zu", use0,
        peak0);
  CHECK(use1 == use0 + 2 * n + 1, "memory counter: in use %zu after allocating %zu + %zu + 0 "
        "bytes from %zu", use1, n, n, use0);
  CHECK(peak1 >= use1 && peak1 >= peak0, "memory counter: peak %zu, in use %zu (before: peak "
        "%zu)", peak1, use1, peak0);
  be->download(g, a, n);
  for (i = 0; i < n; ++i) zeros &= g[i] == 0;
  CHECK(zeros, "alloc: memory not zero-filled");
  for (i = 0; i < n; ++i) h[i] = (unsigned char)(i * 7 + 3);
  be->upload(a, h, n);
  be->download(g, a, n);
  CHECK(memcmp(g, h, n) == 0, "upload / download: the bytes differ");
  be->copy(b, a, n);
  be->zero(b + 100, 50);
  be->download(g, b, n);
  for (i = 0; i < n; ++i) same &= g[i] == (i >= 100 && i < 150 ? 0 : h[i]);
  CHECK(same, "copy / zero: wrong bytes");
  CHECK(be->sync() == 0, "sync after the memory operations: %s", ioupos_failure_reason());
  be->release(a);
  be->release(b);
  CHECK(ioupos_cuda_mem_in_use() == use1 - 2 * n && ioupos_cuda_mem_peak() == peak1,
        "memory counter after releasing %zu + %zu bytes: in use %zu (expected %zu), peak %zu "
        "(expected %zu)", n, n, ioupos_cuda_mem_in_use(), use1 - 2 * n, ioupos_cuda_mem_peak(),
        peak1);
  be->release(z);
  be->release(NULL);
  CHECK(ioupos_cuda_mem_in_use() == use0, "memory counter after releasing everything: %zu, "
        "expected %zu", ioupos_cuda_mem_in_use(), use0);
  free(h), free(g);
}

#ifndef IOUPOS_TEST_CUDA_GPU
static int reason_has(const char *s) { return strstr(ioupos_failure_reason(), s) != NULL; }

/* the host emulation's switches (tests/cuda_host/cuda_host.h): no driver, no device, memory cap */
static void test_failures_before_start(void) {
  printf("failure paths at start-up (host emulation)\n");
  setenv("IOUPOS_CUDA_HOST_DEVICES", "-1", 1);
  CHECK(ioupos_backend_cuda(0) == NULL && reason_has("no usable CUDA device") &&
        reason_has("InsufficientDriver"), "no driver: %s", ioupos_failure_reason());
  setenv("IOUPOS_CUDA_HOST_DEVICES", "0", 1);
  CHECK(ioupos_backend_cuda(0) == NULL && reason_has("no usable CUDA device") &&
        reason_has("NoDevice"), "no device: %s", ioupos_failure_reason());
  unsetenv("IOUPOS_CUDA_HOST_DEVICES");
  CHECK(ioupos_backend_cuda(3) == NULL && reason_has("out of range"), "device 3 of 1: %s",
        ioupos_failure_reason());
  setenv("IOUPOS_CUDA_HOST_MEM", "16", 1);
  CHECK(ioupos_backend_cuda(0) == NULL && reason_has("out of device memory"),
        "out of memory at start-up: %s", ioupos_failure_reason());
  unsetenv("IOUPOS_CUDA_HOST_MEM");
}

static void test_failures_after_start(void) {
  const ioupos_backend *be = cuda_be;
  float host[16];
  void *p;
  int st;
  printf("failure paths after start-up (host emulation)\n");
  setenv("IOUPOS_CUDA_HOST_DEVICES", "2", 1);
  CHECK(ioupos_backend_cuda(1) == NULL && reason_has("already uses CUDA device 0"),
        "a second device: %s", ioupos_failure_reason());
  CHECK(ioupos_backend_cuda(0) == be, "the same device again must give the same table");
  unsetenv("IOUPOS_CUDA_HOST_DEVICES");
  setenv("IOUPOS_CUDA_HOST_MEM", "1048576", 1);
  p = be->alloc(2u << 20);
  CHECK(p == NULL && reason_has("out of device memory"), "alloc beyond the memory: %s",
        ioupos_failure_reason());
  unsetenv("IOUPOS_CUDA_HOST_MEM");
  CHECK(be->sync() == 0, "a failed alloc is reported by its NULL, not by sync");
  /* an invalid argument: recorded, returned by the int op and by the next sync, then cleared */
  st = be->linear_forward(NULL, NULL, NULL, NULL, -1, 2, 2);
  CHECK(st == IOUPOS_EINVAL, "linear_forward with N = -1 returned %d", st);
  st = be->sync();
  CHECK(st == IOUPOS_EINVAL && reason_has("negative size"), "sync after a failure: %d (%s)", st,
        ioupos_failure_reason());
  CHECK(be->sync() == 0, "the failure must be cleared by the sync that reported it");
  /* host memory given as device memory: the cuBLAS reference refuses it */
  p = be->alloc(64 * sizeof(float));
  printf("  (the cublas_ref message on stderr below is expected)\n");
  fflush(stdout);
  st = be->linear_forward((float *)p, host, host, NULL, 4, 4, 4);
  CHECK(st != 0 && be->sync() != 0 && reason_has("cublasSgemm"),
        "a GEMM on host memory must fail: status %d (%s)", st, ioupos_failure_reason());
  be->release(p);
  CHECK(be->sync() == 0, "sync after the cleared failure");
}
#endif

/* =============================================================================================
   A whole training step: the models call every operation through the table, so one SimSiam
   step (Swin encoder with shifted windows, padding and drop-path, projection and prediction
   heads with batch norm, the loss, SGD) on the CUDA backend must give the CPU's loss, gradients
   and updated parameters. Compared per tensor by the error relative to the tensor's largest
   magnitude: max |cuda - cpu| / max |cpu| <= 5e-3. The step is ill-conditioned at this size
   (batch norm over 2 samples in the heads, a loss of cosines near 0): on the CPU alone, moving
   every 7th input pixel by one float ulp changes the loss by 5e-7 (2.5e-5 relative) and the
   worst gradient tensor by 6e-4 of its maximum, the same size as the CPU / host-build
   difference (3e-4), so the bound leaves room for cuBLAS's other summation orders while a wrong
   operation gives O(1). The loss: 1e-4 relative + 2e-6.
   ============================================================================================= */

static void simsiam_cfg(ioupos_simsiam_config *c) {
  int s;
  ioupos_simsiam_config_default(c, 2);
  c->enc.embed_dim = 12;
  c->enc.window[0] = c->enc.window[1] = 4;
  for (s = 0; s < 4; ++s) c->enc.depths[s] = s == 0 ? 2 : 1, c->enc.num_heads[s] = 3;
  c->enc.drop_path_rate = 0.2f;
  c->proj_hidden = 24, c->proj_out = 20, c->pred_hidden = 10;
}

static int simsiam_run(const ioupos_backend *be, float *grad, float *value, double *loss) {
  ioupos_simsiam_config c;
  ioupos_simsiam m;
  ioupos_ssl_stats st;
  ioupos_rng rng;
  int shape[2] = {18, 16}, B = 2, rc;
  size_t i, npix = 18 * 16;
  float *v1 = hmalloc(B * npix), *v2 = hmalloc(B * npix);
  for (i = 0; i < B * npix; ++i) v1[i] = (float)sin(0.3 * i), v2[i] = (float)cos(0.17 * i + 0.5);
  simsiam_cfg(&c);
  rc = ioupos_simsiam_init(&m, &c, be, 7);
  if (rc) return rc;
  ioupos_rng_seed(&rng, 11);
  ioupos_simsiam_zero_grad(&m);
  rc = ioupos_simsiam_accumulate(&m, v1, v2, B, shape, 1.0f, &rng, &st);
  if (!rc) {
    be->download(grad, m.p.grad, m.p.table.total * sizeof(float));
    rc = ioupos_simsiam_step(&m, 0.05, 0.05, 0.9, 1e-4);
  }
  if (!rc) be->download(value, m.p.value, m.p.table.total * sizeof(float));
  *loss = st.loss;
  ioupos_simsiam_free(&m);
  free(v1), free(v2);
  return rc ? rc : be->sync();
}

/* max |got - ref| / max |ref| per F32 tensor of the table must be <= tol; prints the worst */
static void compare_params(const char *what, const ioupos_tensor_table *tt, const float *ref,
                           const float *got, double tol) {
  double worst = 0.0;
  const char *wname = "";
  int i, bad = 0;
  for (i = 0; i < tt->n; ++i) {
    const ioupos_tensor_info *ti = &tt->t[i];
    const float *r = ref + ti->offset, *g = got + ti->offset;
    double mx = 0.0, err = 0.0, rel;
    size_t e;
    if (ti->dtype != IOUPOS_ST_F32) continue;
    for (e = 0; e < ti->numel; ++e) {
      double d = fabs((double)g[e] - r[e]);
      if (fabs(r[e]) > mx) mx = fabs(r[e]);
      if (!(d <= err)) err = d; /* NaN wins */
    }
    rel = err / (mx > 1e-30 ? mx : 1e-30);
    if (!(rel <= tol)) {
      ++bad;
      CHECK(0, "%s of %s: max error %.3e of max |cpu| %.3e (tolerance %.1e of it)", what,
            ti->name, err, mx, tol);
    }
    if (!(rel <= worst)) worst = rel, wname = ti->name;
  }
  CHECK(bad == 0, "%s: %d tensors out of tolerance", what, bad);
  printf("  %-28s worst tensor error %.2e of its max |cpu| (%s)\n", what, worst, wname);
}

static void test_simsiam_step(void) {
  ioupos_simsiam_config c;
  ioupos_simsiam m;
  size_t total;
  float *g[2], *v[2];
  double loss[2];
  int rc[2], k;
  simsiam_cfg(&c); /* the parameter table (the same for both backends) */
  if (ioupos_simsiam_init(&m, &c, cpu_be, 7)) {
    CHECK(0, "simsiam init: %s", ioupos_failure_reason());
    return;
  }
  total = m.p.table.total;
  printf("one SimSiam step (2D 18x16, C 12, window 4, drop-path 0.2), %zu parameters\n", total);
  for (k = 0; k < 2; ++k) g[k] = hmalloc(total), v[k] = hmalloc(total);
  rc[0] = simsiam_run(cpu_be, g[0], v[0], &loss[0]);
  rc[1] = simsiam_run(cuda_be, g[1], v[1], &loss[1]);
  CHECK(rc[0] == 0 && rc[1] == 0, "simsiam step: cpu %d, cuda %d (%s)", rc[0], rc[1],
        ioupos_failure_reason());
  if (rc[0] == 0 && rc[1] == 0) {
    CHECK(fabs(loss[1] - loss[0]) <= 1e-4 * fabs(loss[0]) + 2e-6, "simsiam loss cpu %.9g cuda %.9g",
          loss[0], loss[1]);
    printf("  loss cpu %.9g cuda %.9g\n", loss[0], loss[1]);
    compare_params("gradients", &m.p.table, g[0], g[1], 5e-3);
    compare_params("parameters after SGD", &m.p.table, v[0], v[1], 5e-3);
  }
  for (k = 0; k < 2; ++k) free(g[k]), free(v[k]);
  ioupos_simsiam_free(&m);
}

/* A 10-step SimSiam training trajectory, the CUDA backend against the CPU: batch 8, SGD with
   momentum 0.9 (SimSiam's optimiser), lr 1e-3, drop-path 0.2, the same views every step, so the
   loss falls steadily (from 0.011 to -0.228). Each step's loss must agree with the CPU's within
   1e-4 relative + 1e-5. Why this configuration: a trajectory tests the backend only where the
   training itself is stable. With batch 4 (batch norm over 4 samples), lr 1e-2 and new views
   each step, the CPU alone, with 1 ulp added to every 7th pixel of the first views, changed the
   loss by 1e-3 relative by step 4 and its sign by step 8: any two correct backends drift apart
   there. Here the same perturbation moves no step's loss by more than 1e-6, and the host build
   stays within 4e-7 of the CPU over the 10 steps. The tolerance leaves room for a GPU's other
   summation orders (cuBLAS, FMA), while an update wrong by 1 % already moves step 2's loss by
   about 7e-4. (The CPU's losses are the same bits for any thread count.)
   Then save / reload: 3 steps at batch 4, lr 1e-2, no momentum, new views each step; the model
   saved after step 2 (ioupos_params_save), reloaded into a fresh model on the same backend and
   run one more step must repeat step 3's loss and the parameters after it bit for bit: nothing
   but the parameters carries over (no momentum), and every kernel is deterministic. */
typedef struct {
  int batch, same_views;
  double lr, momentum;
} traj_opts;

static int traj_run(const ioupos_backend *be, const traj_opts *o, int first, int steps,
                    const char *save_after2, const char *load, double *loss, float *value) {
  ioupos_simsiam_config c;
  ioupos_simsiam m;
  ioupos_ssl_stats st;
  ioupos_rng rng;
  int shape[2] = {18, 16}, B = o->batch, rc, k;
  size_t i, npix = 18 * 16;
  float *v1 = hmalloc(B * npix), *v2 = hmalloc(B * npix);
  simsiam_cfg(&c);
  rc = ioupos_simsiam_init(&m, &c, be, 7);
  if (rc) return rc;
  if (load) {
    ioupos_st_file f;
    rc = ioupos_safetensors_read(load, &f);
    if (!rc) {
      rc = ioupos_params_load(&m.p, &f, "", "", NULL, NULL);
      ioupos_safetensors_free(&f);
    }
  }
  for (k = first; k < first + steps && !rc; ++k) { /* step k's views and draws */
    int kv = o->same_views ? 0 : k;
    for (i = 0; i < B * npix; ++i)
      v1[i] = (float)sin(0.3 * i + kv), v2[i] = (float)cos(0.17 * i + 0.5 * kv);
    ioupos_rng_seed(&rng, 11 + (uint64_t)kv);
    ioupos_simsiam_zero_grad(&m);
    rc = ioupos_simsiam_accumulate(&m, v1, v2, B, shape, 1.0f, &rng, &st);
    if (!rc) rc = ioupos_simsiam_step(&m, o->lr, o->lr, o->momentum, 1e-4);
    loss[k - first] = st.loss;
    if (!rc && save_after2 && k == 1) rc = ioupos_params_save(&m.p, save_after2, "", "", 0, NULL);
  }
  if (!rc && value) be->download(value, m.p.value, m.p.table.total * sizeof(float));
  ioupos_simsiam_free(&m);
  free(v1), free(v2);
  return rc ? rc : be->sync();
}

static void test_trajectory(void) {
  enum { STEPS = 10 };
  const traj_opts train = {8, 1, 1e-3, 0.9}, plain = {4, 0, 1e-2, 0.0};
  double lc[STEPS], lg[STEPS], lr[1], worst = 0.0;
  char path[64];
  float *va, *vb;
  size_t total, i;
  int rc, s;
  ioupos_simsiam_config c;
  ioupos_simsiam m;
  simsiam_cfg(&c);
  if (ioupos_simsiam_init(&m, &c, cpu_be, 7)) return;
  total = m.p.table.total;
  ioupos_simsiam_free(&m);
  printf("%d SimSiam steps (batch 8, SGD momentum 0.9), the CUDA backend against the CPU\n", STEPS);
  rc = traj_run(cpu_be, &train, 0, STEPS, NULL, NULL, lc, NULL);
  CHECK(rc == 0, "cpu steps: %s", ioupos_failure_reason());
  rc = traj_run(cuda_be, &train, 0, STEPS, NULL, NULL, lg, NULL);
  CHECK(rc == 0, "cuda steps: %s", ioupos_failure_reason());
  for (s = 0; s < STEPS; ++s) {
    double d = fabs(lg[s] - lc[s]);
    CHECK(d <= 1e-4 * fabs(lc[s]) + 1e-5, "step %d: loss cpu %.9g cuda %.9g", s + 1, lc[s], lg[s]);
    if (!(d <= worst)) worst = d;
    printf("  step %2d loss cpu %12.8f cuda %12.8f\n", s + 1, lc[s], lg[s]);
  }
  printf("  worst |difference| %.2e\n", worst);
  CHECK(lc[STEPS - 1] < lc[0] - 0.1, "the loss hardly fell (%.9g -> %.9g): the test is blind",
        lc[0], lc[STEPS - 1]);
  /* saved after step 2, reloaded, step 3: bit for bit */
  snprintf(path, sizeof path, "/tmp/ioupos_traj_%d.safetensors", (int)getpid());
  va = hmalloc(total), vb = hmalloc(total);
  rc = traj_run(cuda_be, &plain, 0, 3, path, NULL, lg, va);
  CHECK(rc == 0, "cuda steps: %s", ioupos_failure_reason());
  if (rc == 0) rc = traj_run(cuda_be, &plain, 2, 1, NULL, path, lr, vb);
  CHECK(rc == 0, "save / reload: %s", ioupos_failure_reason());
  CHECK(rc == 0 && memcmp(&lr[0], &lg[2], sizeof lr[0]) == 0,
        "saved after step 2, reloaded, step 3: loss %.9g, the uninterrupted run's %.9g", lr[0], lg[2]);
  for (i = 0; i < total && !rc; ++i)
    if (memcmp(&va[i], &vb[i], sizeof(float))) break;
  CHECK(rc == 0 && i == total, "... parameters differ at element %zu of %zu", i, total);
  if (rc == 0 && i == total && lr[0] == lg[2])
    printf("  saved after step 2, reloaded, step 3: bit-identical loss and %zu parameters\n", total);
  remove(path);
  free(va), free(vb);
}

/* One DINO step (student on 2 global and 2 local views, teacher, weight-normalised last layer
   with a trained g, the loss and centre, per-tensor clipping, AdamW, the teacher EMA): the same
   comparison and tolerance (the heads' batch norm over 2 samples again), except for the student
   after AdamW: its first step moves each parameter by lr g / (|g| + eps), about lr whatever |g|,
   so where |g| is near eps (1e-8) the move depends on the gradient's last bits. Zero-initialised
   biases then differ by 2e-3 of their largest value (which is lr itself), with gradients that
   agree to 3e-6; 2e-2 keeps a margin, and a wrong sign or a missed step still gives 1 to 2. */
static void dino_cfg(ioupos_dino_config *c) {
  int s;
  ioupos_dino_config_default(c, 2);
  c->enc.embed_dim = 12;
  c->enc.window[0] = c->enc.window[1] = 4;
  for (s = 0; s < 4; ++s) c->enc.depths[s] = s == 0 ? 2 : 1, c->enc.num_heads[s] = 3;
  c->enc.drop_path_rate = 0.1f;
  c->hidden = 24, c->bottleneck = 8, c->out_dim = 40, c->norm_last_layer = 0;
}

typedef struct {
  float *sgrad, *svalue, *tvalue, *center;
  double loss;
} dino_result;

static int dino_run(const ioupos_backend *be, dino_result *r) {
  ioupos_dino_config c;
  ioupos_dino m;
  ioupos_ssl_stats st;
  ioupos_rng rng;
  int shape[2] = {16, 16}, lshape[2] = {10, 8}, B = 2, rc;
  size_t i, npix = 256, nl = 80;
  float *g1 = hmalloc(B * npix), *g2 = hmalloc(B * npix), *loc = hmalloc(2 * B * nl);
  for (i = 0; i < B * npix; ++i) g1[i] = (float)sin(0.21 * i), g2[i] = (float)cos(0.13 * i + 1);
  for (i = 0; i < 2 * B * nl; ++i) loc[i] = (float)sin(0.7 * i + 0.2);
  dino_cfg(&c);
  rc = ioupos_dino_init(&m, &c, be, 5);
  if (rc) return rc;
  ioupos_rng_seed(&rng, 3);
  ioupos_dino_zero_grad(&m);
  rc = ioupos_dino_accumulate(&m, g1, g2, loc, 2, B, shape, lshape, 0.04f, 1.0f, &rng, &st);
  if (!rc) {
    be->download(r->sgrad, m.s.grad, m.s.table.total * sizeof(float));
    rc = ioupos_dino_step(&m, 1e-3, 0.04, 0, 0, 3.0f, 0.996);
  }
  if (!rc) {
    be->download(r->svalue, m.s.value, m.s.table.total * sizeof(float));
    be->download(r->tvalue, m.t.value, m.t.table.total * sizeof(float));
    be->download(r->center, m.center, (size_t)c.out_dim * sizeof(float));
  }
  r->loss = st.loss;
  ioupos_dino_free(&m);
  free(g1), free(g2), free(loc);
  return rc ? rc : be->sync();
}

static void test_dino_step(void) {
  ioupos_dino_config c;
  ioupos_dino m;
  dino_result r[2];
  size_t total;
  int rc[2], k;
  dino_cfg(&c);
  if (ioupos_dino_init(&m, &c, cpu_be, 5)) {
    CHECK(0, "dino init: %s", ioupos_failure_reason());
    return;
  }
  total = m.s.table.total;
  printf("one DINO step (2 global 16x16 + 2 local 10x8 views, out_dim 40, trained g), %zu "
         "parameters\n", total);
  for (k = 0; k < 2; ++k) {
    r[k].sgrad = hmalloc(total), r[k].svalue = hmalloc(total), r[k].tvalue = hmalloc(total);
    r[k].center = hmalloc((size_t)c.out_dim);
  }
  rc[0] = dino_run(cpu_be, &r[0]);
  rc[1] = dino_run(cuda_be, &r[1]);
  CHECK(rc[0] == 0 && rc[1] == 0, "dino step: cpu %d, cuda %d (%s)", rc[0], rc[1],
        ioupos_failure_reason());
  if (rc[0] == 0 && rc[1] == 0) {
    cmp_stats cs = compare((const uint32_t *)r[0].center, (const uint32_t *)r[1].center,
                           (size_t)c.out_dim, 0, 1e-6, 1e-5);
    CHECK(fabs(r[1].loss - r[0].loss) <= 1e-4 * fabs(r[0].loss) + 2e-6,
          "dino loss cpu %.9g cuda %.9g", r[0].loss, r[1].loss);
    printf("  loss cpu %.9g cuda %.9g\n", r[0].loss, r[1].loss);
    CHECK(cs.n_bad == 0, "dino centre: %zu of %d elements out of tolerance, max abs err %.3e",
          cs.n_bad, c.out_dim, cs.max_abs);
    compare_params("student gradients", &m.s.table, r[0].sgrad, r[1].sgrad, 5e-3);
    compare_params("student after AdamW", &m.s.table, r[0].svalue, r[1].svalue, 2e-2);
    compare_params("teacher after the EMA", &m.t.table, r[0].tvalue, r[1].tvalue, 5e-3);
  }
  for (k = 0; k < 2; ++k) free(r[k].sgrad), free(r[k].svalue), free(r[k].tvalue), free(r[k].center);
  ioupos_dino_free(&m);
}

/* One SwinUNETR fine-tuning step (the model of section 21: the encoder, every decoder block
   of section 19, channels-first transposes, the 1x1 output block) as ioupos_finetune_run takes
   it: a training forward (drop-path 0.1), MONAI's Dice-CE on the host against a fixed label
   map, its gradient back up, the backward, AdamW (lr 1e-3, weight decay 1e-5 except biases and
   1-D tensors) on every tensor. Logits, the loss, dx and every parameter gradient against the
   CPU's (no batch norm here: 1e-3 of each tensor's largest value); the parameters after AdamW
   within 5e-3 (3e-4 in the host build; AdamW's first step moves each parameter by about lr
   whatever |g|, so where |g| is tiny its last bits show: see the DINO step below). */
typedef struct {
  float *logits, *dx, *grad, *value;
  double loss;
} unetr_result;

static int unetr_run(const ioupos_backend *be, const ioupos_swinunetr_config *cfg, int B,
                     const int *shape, unetr_result *r) {
  ioupos_swinunetr m;
  ioupos_params p;
  ioupos_rng rng, drop;
  int K = cfg->out_channels, rc, t;
  size_t i, S = (size_t)shape[0] * shape[1], nx = (size_t)B * cfg->enc.in_chans * S;
  size_t nl = (size_t)B * K * S;
  float *hx = hmalloc(nx), *hg = hmalloc(nl), *prob = hmalloc(nl), *x = NULL, *g = NULL;
  float *dx = NULL, *m1 = NULL, *m2 = NULL;
  double *stats = (double *)calloc(IOUPOS_DICECE_STATS(B, K), sizeof(double));
  int *target = (int *)calloc((size_t)B * S, sizeof(int));
  for (i = 0; i < nx; ++i) hx[i] = (float)sin(0.05 * i) + 0.3f * (float)cos(0.7 * i);
  for (i = 0; i < (size_t)B * S; ++i) /* three blobs of classes, some background */
    target[i] = (int)((i % shape[1]) / 11 + (i / shape[1] % shape[0]) / 13) % K;
  memset(&p, 0, sizeof p);
  rc = ioupos_swinunetr_init(&m, cfg, &p.table, "");
  if (!rc) rc = ioupos_params_alloc(&p, be, 1);
  ioupos_rng_seed(&rng, 9);
  ioupos_rng_seed(&drop, 4);
  if (!rc) rc = ioupos_params_init(&p, &rng);
  if (!rc) rc = ioupos_swinunetr_plan(&m, &p, B, shape);
  if (!rc) {
    size_t pb = p.table.total * sizeof(float);
    x = (float *)be->alloc(nx * sizeof(float)), g = (float *)be->alloc(nl * sizeof(float));
    dx = (float *)be->alloc(nx * sizeof(float));
    m1 = (float *)be->alloc(pb), m2 = (float *)be->alloc(pb);
    if (!x || !g || !dx || !m1 || !m2 || !stats || !target) rc = IOUPOS_ENOMEM;
    else be->zero(m1, pb), be->zero(m2, pb), be->zero(p.grad, pb);
  }
  if (!rc) {
    be->upload(x, hx, nx * sizeof(float));
    rc = ioupos_swinunetr_forward(&m, &p, x, 1, &drop);
  }
  if (!rc) {
    be->download(r->logits, ioupos_swinunetr_logits(&m), nl * sizeof(float));
    r->loss = ioupos_dicece_forward(prob, stats, r->logits, target, B, K, (long)S, NULL);
    memset(hg, 0, nl * sizeof(float));
    ioupos_dicece_backward(hg, 1.0f, prob, stats, target, B, K, (long)S, NULL);
    be->upload(g, hg, nl * sizeof(float));
    rc = ioupos_swinunetr_backward(&m, &p, g, dx);
  }
  if (!rc) {
    be->download(r->dx, dx, nx * sizeof(float));
    be->download(r->grad, p.grad, p.table.total * sizeof(float));
    for (t = 0; t < p.table.n; ++t) {
      const ioupos_tensor_info *ti = &p.table.t[t];
      if (ti->dtype != IOUPOS_ST_F32 || (ti->flags & (IOUPOS_TENSOR_BUFFER | IOUPOS_TENSOR_FROZEN)))
        continue;
      be->adamw_step(p.value + ti->offset, p.grad + ti->offset, m1 + ti->offset, m2 + ti->offset,
                     ti->numel, 1e-3f, 0.9f, 0.999f, 1e-8f,
                     (ti->flags & IOUPOS_TENSOR_NO_DECAY) ? 0.0f : 1e-5f, 1);
    }
    be->download(r->value, p.value, p.table.total * sizeof(float));
    rc = be->sync();
  }
  be->release(x), be->release(g), be->release(dx), be->release(m1), be->release(m2);
  ioupos_swinunetr_free(&m);
  ioupos_params_free(&p);
  free(hx), free(hg), free(prob), free(stats), free(target);
  return rc;
}

static void test_swinunetr(void) {
  ioupos_swinunetr_config cfg;
  ioupos_swinunetr m;
  ioupos_tensor_table tt;
  unetr_result r[2];
  int shape[2] = {32, 32}, B = 2, rc[2], k;
  size_t nx = (size_t)B * 32 * 32, nl;
  ioupos_swinunetr_config_default(&cfg, 2);
  cfg.enc.embed_dim = 6;
  cfg.enc.drop_path_rate = 0.1f;
  cfg.out_channels = 3;
  nl = (size_t)B * cfg.out_channels * 32 * 32;
  memset(&tt, 0, sizeof tt);
  if (ioupos_swinunetr_init(&m, &cfg, &tt, "")) {
    CHECK(0, "swinunetr init: %s", ioupos_failure_reason());
    return;
  }
  printf("one SwinUNETR fine-tuning step (2D 32x32, batch 2, C 6, window 7, 3 classes, Dice-CE, "
         "AdamW), %zu parameters\n", tt.total);
  for (k = 0; k < 2; ++k) {
    r[k].logits = hmalloc(nl), r[k].dx = hmalloc(nx), r[k].grad = hmalloc(tt.total);
    r[k].value = hmalloc(tt.total);
  }
  rc[0] = unetr_run(cpu_be, &cfg, B, shape, &r[0]);
  rc[1] = unetr_run(cuda_be, &cfg, B, shape, &r[1]);
  CHECK(rc[0] == 0 && rc[1] == 0, "swinunetr: cpu %d, cuda %d (%s)", rc[0], rc[1],
        ioupos_failure_reason());
  if (rc[0] == 0 && rc[1] == 0) {
    double mx = 0.0;
    size_t i;
    cmp_stats cs;
    for (i = 0; i < nl; ++i) mx = fabs(r[0].logits[i]) > mx ? fabs(r[0].logits[i]) : mx;
    cs = compare((const uint32_t *)r[0].logits, (const uint32_t *)r[1].logits, nl, 0, 1e-4 * mx, 1e-4);
    CHECK(cs.n_bad == 0, "swinunetr logits: %zu of %zu out of tolerance, max abs err %.3e",
          cs.n_bad, nl, cs.max_abs);
    printf("  %-28s max abs err %.2e (max |cpu| %.2e)\n", "logits", cs.max_abs, mx);
    for (mx = 0.0, i = 0; i < nx; ++i) mx = fabs(r[0].dx[i]) > mx ? fabs(r[0].dx[i]) : mx;
    cs = compare((const uint32_t *)r[0].dx, (const uint32_t *)r[1].dx, nx, 0, 1e-3 * mx, 1e-3);
    CHECK(cs.n_bad == 0, "swinunetr dx: %zu of %zu out of tolerance, max abs err %.3e",
          cs.n_bad, nx, cs.max_abs);
    printf("  %-28s max abs err %.2e (max |cpu| %.2e)\n", "dx", cs.max_abs, mx);
    CHECK(fabs(r[1].loss - r[0].loss) <= 1e-4 * fabs(r[0].loss) + 2e-6,
          "swinunetr Dice-CE loss cpu %.9g cuda %.9g", r[0].loss, r[1].loss);
    printf("  Dice-CE loss cpu %.9g cuda %.9g\n", r[0].loss, r[1].loss);
    compare_params("parameter gradients", &tt, r[0].grad, r[1].grad, 1e-3);
    compare_params("parameters after AdamW", &tt, r[0].value, r[1].value, 5e-3);
  }
  for (k = 0; k < 2; ++k) free(r[k].logits), free(r[k].dx), free(r[k].grad), free(r[k].value);
  ioupos_swinunetr_free(&m);
  ioupos_tensor_table_free(&tt);
}

/* =============================================================================================
   The cases
   ============================================================================================= */

typedef struct {
  const char *name;
  void (*fn)(tc *);
  double atol, rtol;
} case_def;

static const case_def cases[] = {
    /* section 11 */
    {"linear_forward[bias, N 300 C 37 OC 19]", c_linear_fwd_bias, GEMM_TOL(37), 1e-5},
    {"linear_forward[no bias, C 1]", c_linear_fwd_nobias, GEMM_TOL(1), 1e-5},
    {"linear_backward[all, N 300]", c_linear_bwd_all, GEMM_TOL(19), 1e-5},
    {"linear_backward[dweight; dbias; N 530]", c_linear_bwd_some, GEMM_TOL(5), 1e-5},
    {"layernorm_forward[N 70 C 37]", c_ln_fwd, ROW_ATOL, ROW_RTOL},
    {"layernorm_forward[C 300 > threads]", c_ln_fwd_wide, ROW_ATOL, ROW_RTOL},
    {"layernorm_forward[no affine]", c_ln_fwd_plain, ROW_ATOL, ROW_RTOL},
    /* the parameter gradients are sums of N terms rounded once: 1e-6 relative covers the
       double-order differences (the column sums use the CPU's order, usually bit-identical) */
    {"layernorm_backward[N 300 C 37]", c_ln_bwd, 1e-6, 1e-6},
    {"layernorm_backward[params only, N 520 C 200]", c_ln_bwd_params, 1e-6, 1e-6},
    {"layernorm_backward[no affine]", c_ln_bwd_plain, 1e-6, 1e-6},
    {"gelu_forward", c_gelu_fwd, ROW_ATOL, ROW_RTOL},
    {"gelu_backward", c_gelu_bwd, ROW_ATOL, ROW_RTOL},
    {"relu_forward/backward", c_relu, 0, 0},
    {"l2norm_forward/backward[zero rows]", c_l2norm, ROW_ATOL, ROW_RTOL},
    {"avgpool_forward/backward", c_avgpool, ROW_ATOL, ROW_RTOL},
    {"batchnorm train forward/backward", c_bn_train, 1e-6, 1e-6},
    {"batchnorm eval forward/backward", c_bn_eval, 1e-6, 1e-6},
    {"patch_embed 2D[pad, bias]", c_pe_2d, GEMM_TOL(32), 1e-5},
    {"patch_embed 3D[pad, no bias]", c_pe_3d, GEMM_TOL(32), 1e-5},
    {"patch_merging 2D[odd sizes]", c_pm_2d, GEMM_TOL(12), 1e-5},
    {"patch_merging 3D[odd sizes]", c_pm_3d, GEMM_TOL(40), 1e-5},
    {"patch_merging 2D[no dinp]", c_pm_2d_nodinp, GEMM_TOL(16), 1e-5},
    {"residual forward/backward[mask, none]", c_residual, 0, 0},
    {"mlp forward/backward[h_act kept]", c_mlp, GEMM_TOL(48), 1e-5},
    {"mlp forward/backward[h_act recomputed]", c_mlp_recompute, GEMM_TOL(32), 1e-5},
    /* section 12: products of up to C (qkv, proj), head-dim (scores) and N (P v, dv, dk, dq)
       terms and the weight gradients over every token (BW N rows); the attention probabilities
       come from scores with GEMM rounding, through exp: relative 1e-4 */
    {"swin_attention 2D[shift 1, 2 heads]", c_swin_2d_shift, GEMM_TOL(72), 1e-4},
    {"swin_attention 2D[padding, no shift, head dim 2]", c_swin_2d_pad, GEMM_TOL(54), 1e-4},
    {"swin_attention 3D[shift 1, padding]", c_swin_3d_shift, GEMM_TOL(64), 1e-4},
    {"swin_attention 2D[map smaller than the window]", c_swin_2d_small_map, GEMM_TOL(24), 1e-4},
    {"swin_attention 2D[7x7 windows, 49 tokens, head dim 16]", c_swin_2d_swin, GEMM_TOL(98), 1e-4},
    /* section 14: weight norm (row norms in double; the products are GEMMs over N or C) */
    {"wnlinear forward/backward[g]", c_wn, GEMM_TOL(70), 1e-5},
    {"wnlinear forward/backward[g = 1, C 150]", c_wn_nog, GEMM_TOL(150), 1e-5},
    /* the losses: per-row values in double, the rows in order (the returned double differs
       from the CPU's by a different order of double sums, ~1e-15 relative); ROW_* for all */
    {"simsiam_loss forward/backward[clamped norms]", c_simsiam, ROW_ATOL, ROW_RTOL},
    {"dino_loss forward/backward, center update", c_dino, ROW_ATOL, ROW_RTOL},
    {"dino_loss[one teacher view]", c_dino_one_view, ROW_ATOL, ROW_RTOL},
    /* section 15: the CPU's float operations in its order: bit-identical */
    {"sgd_step[first, momentum, plain]", c_sgd, 0, 0},
    {"adamw_step[steps 1-3 wd, beta1 0.3 step 7]", c_adamw, 0, 0},
    {"ema_update", c_ema, 0, 0},
    /* the norm is a double sum in another order, rounded to float: at most one ulp apart,
       which can move the coefficient (and the scaled gradient) by a few ulps */
    {"clip_grad_per_param[clipped, 3 blocks]", c_clip_scaled, ROW_ATOL, 5e-7},
    {"clip_grad_per_param[not clipped]", c_clip_kept, 0, 0},
    /* section 19 */
    {"to_channels_first forward/backward", c_channels_first, 0, 0},
    /* the decoder blocks: convolutions as GEMMs (K = Cin k^dims for the activations; the weight
       gradients, WG, sum over every position of every sample), instance norms in double; the
       residual block's chain of six operations carries the GEMM rounding through the norms,
       hence rtol 1e-4 */
    {"unet_resblock 2D[Cin != Cout: conv3]", c_resblock_2d, GEMM_TOL(36), 1e-4},
    {"unet_resblock 3D[Cin == Cout]", c_resblock_3d, GEMM_TOL(54), 1e-4},
    {"unet_resblock 2D[4550 positions: two im2col blocks]", c_resblock_blocks, GEMM_TOL(27), 1e-4},
    {"unetr_upblock 2D", c_upblock_2d, GEMM_TOL(54), 1e-4},
    {"unetr_upblock 3D", c_upblock_3d, GEMM_TOL(108), 1e-4},
    {"unet_outblock forward/backward", c_outblock, GEMM_TOL(6), 1e-5},
};

int main(void) {
  size_t k;
  int full = 1;
  cpu_be = ioupos_backend_cpu();
#ifndef IOUPOS_TEST_CUDA_GPU
  test_failures_before_start();
#endif
  cuda_be = ioupos_backend_cuda(0);
  if (!cuda_be) {
#ifdef IOUPOS_TEST_CUDA_GPU
    if (strncmp(ioupos_failure_reason(), "no usable CUDA device", 21) == 0) {
      printf("test_cuda_ops_gpu: SKIP: %s\n", ioupos_failure_reason());
      return 0;
    }
#endif
    printf("test_cuda_ops: FAIL: ioupos_backend_cuda(0): %s\n", ioupos_failure_reason());
    return 1;
  }
  CHECK(strncmp(cuda_be->name, "cuda:0 (", 8) == 0, "backend name %s", cuda_be->name);
  test_memory();
#ifndef IOUPOS_TEST_CUDA_GPU
  test_failures_after_start();
#endif
#ifndef IOUPOS_TEST_CUDA_GPU
  /* The host build runs the reducing kernels' threads as fibers: with 32 threads per block
     (build/test_cuda_ops) everything runs; with the GPU's block sizes
     (build/test_cuda_ops_gpublocks, IOUPOS_CUDA_HOST_GPU_BLOCKS) the op cases run and the
     whole-model steps, four times slower there, are left to the first. */
  printf("host build of ioupos_cuda.cu: row kernels with %d threads per block\n",
         ioupos_cuda_host_row_threads());
  full = ioupos_cuda_host_row_threads() == 32;
#endif
  /* IOUPOS_TEST_OPS_ONLY=1: the op cases only (scripts/gpu_check.sh under compute-sanitizer) */
  if (getenv("IOUPOS_TEST_OPS_ONLY") && strcmp(getenv("IOUPOS_TEST_OPS_ONLY"), "1") == 0) full = 0;
  for (k = 0; k < sizeof cases / sizeof cases[0]; ++k)
    run_case(cases[k].name, cases[k].fn, cases[k].atol, cases[k].rtol);
  if (full && n_unsupported) { /* the models call every operation without looking */
    printf("whole-model steps: SKIPPED (not passed): the models need every operation, %d are "
           "unsupported\n", n_unsupported);
  } else if (full) {
    test_simsiam_step();
    test_trajectory();
    test_dino_step();
    test_swinunetr();
  } else {
    printf("whole-model steps: not run (IOUPOS_TEST_OPS_ONLY=1, or the GPU's block sizes in the "
           "host build: see build/test_cuda_ops)\n");
  }
  printf("%d cases: %d run, %d unsupported by the CUDA backend (skipped, not passed)%s%s\n",
         n_cases, n_cases - n_unsupported, n_unsupported, n_unsupported ? ": " : "",
         unsupported_list);
#ifdef IOUPOS_TEST_CUDA_GPU
  return tu_finish("test_cuda_ops_gpu");
#else
  return tu_finish(full ? "test_cuda_ops (host build of ioupos_cuda.cu)"
                        : "test_cuda_ops (host build of ioupos_cuda.cu, op cases)");
#endif
}
