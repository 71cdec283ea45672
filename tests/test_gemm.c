/* tests/test_gemm.c — ioupos_gemm and ioupos_gemm_batched_strided against a double-precision
   reference: all four transpose cases, odd sizes, the Swin-T (C=48) layer shapes, alpha / beta
   variants (beta 0 over a NaN-filled C), leading dimensions above the minimum (the padding must
   stay untouched), batched strided attention shapes, argument errors; with -fopenmp also
   bit-identical results for 1 and 2 threads. Linked with build/ioupos.o (-mavx2 -mfma where the
   CPU has them, OpenMP) as build/test_gemm and with build/ioupos_portable.o as
   build/test_gemm_portable, it covers both micro-kernels (the first line printed says which one
   ran).

   Tolerance, per element: |C - ref| <= (K + 4) * 2^-23 * (|alpha| * sum_k |a_ik b_kj| + |beta c|)
   + 1e-30. Why: ref is exact to double rounding; the float result accumulates K products with
   one rounding each (u = 2^-24 per step, or fewer with FMA), plus one per K block and 2 for
   alpha and beta: the classical dot-product bound gamma_n <= n u sum|a||b|. The factor 2 (2^-23
   instead of 2^-24) and the + 4 are slack for the alpha/beta and K-block roundings. */
#include "ioupos.h"
#include "tests/test_util.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static ioupos_rng rng;

static float frand(void) { return (float)(ioupos_rng_uniform(&rng) * 2.0 - 1.0); }

static float *alloc_fill(size_t n) {
  float *p = (float *)malloc((n ? n : 1) * sizeof(float));
  size_t i;
  for (i = 0; i < n; ++i) p[i] = frand();
  return p;
}

static double opa(int ta, const float *A, int lda, int i, int k) {
  return ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
}
static double opb(int tb, const float *B, int ldb, int k, int j) {
  return tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
}

/* Worst |C - ref| / tol over the M x N elements (<= 1 passes); C0 is C before the call. */
static double worst_ratio(int ta, int tb, int M, int N, int K, float alpha, const float *A,
                          int lda, const float *B, int ldb, float beta, const float *C0,
                          const float *C, int ldc, int *wi, int *wj) {
  double worst = 0.0;
  int i, j, k;
  *wi = *wj = -1;
  for (i = 0; i < M; ++i)
    for (j = 0; j < N; ++j) {
      double s = 0.0, sa = 0.0, ref, tol, err, c0;
      for (k = 0; k < K; ++k) {
        double p = opa(ta, A, lda, i, k) * opb(tb, B, ldb, k, j);
        s += p;
        sa += fabs(p);
      }
      c0 = beta == 0.0f ? 0.0 : (double)beta * C0[(size_t)i * ldc + j];
      ref = (double)alpha * s + c0;
      tol = (K + 4) * ldexp(1.0, -23) * (fabs((double)alpha) * sa + fabs(c0)) + 1e-30;
      err = fabs((double)C[(size_t)i * ldc + j] - ref);
      if (!(err <= tol)) err = isnan(err) ? 1e300 : err;
      if (err / tol > worst) worst = err / tol, *wi = i, *wj = j;
    }
  return worst;
}

/* One problem: leading dimensions padded by pa, pb, pc; beta 0 cases fill C with NaN. */
static void check_case(int ta, int tb, int M, int N, int K, float alpha, float beta, int pa,
                       int pb, int pc) {
  int lda = (ta ? M : K) + pa, ldb = (tb ? K : N) + pb, ldc = N + pc;
  size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb,
         nc = (size_t)M * ldc;
  float *A = alloc_fill(na), *B = alloc_fill(nb), *C0 = alloc_fill(nc);
  float *C = (float *)malloc((nc ? nc : 1) * sizeof(float));
  size_t e;
  int i, j, wi, wj, st, pad_ok = 1;
  double w;
  if (beta == 0.0f)
    for (e = 0; e < nc; ++e) C0[e] = NAN;
  for (i = 0; i < M; ++i) /* padding sentinel: must survive */
    for (j = N; j < ldc; ++j) C0[(size_t)i * ldc + j] = 12345.0f;
  memcpy(C, C0, nc * sizeof(float));
  st = ioupos_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  CHECK(st == IOUPOS_OK, "gemm(%d,%d,%d,%d,%d): %s", ta, tb, M, N, K, ioupos_failure_reason());
  w = worst_ratio(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C0, C, ldc, &wi, &wj);
  CHECK(w <= 1.0, "ta %d tb %d M %d N %d K %d alpha %g beta %g: worst err/tol %.3g at (%d, %d) "
        "C %.9g", ta, tb, M, N, K, alpha, beta, w, wi, wj,
        wi >= 0 ? C[(size_t)wi * ldc + wj] : 0.0);
  for (i = 0; i < M; ++i)
    for (j = N; j < ldc; ++j) pad_ok &= C[(size_t)i * ldc + j] == 12345.0f;
  CHECK(pad_ok, "ta %d tb %d M %d N %d K %d: C padding (ldc %d) was written", ta, tb, M, N, K,
        ldc);
#ifdef _OPENMP
  { /* bit-identical for 1 and 2 threads */
    float *C1 = (float *)malloc((nc ? nc : 1) * sizeof(float));
    memcpy(C1, C0, nc * sizeof(float));
    memcpy(C, C0, nc * sizeof(float));
    omp_set_num_threads(1);
    ioupos_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C1, ldc);
    omp_set_num_threads(2);
    ioupos_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    CHECK(memcmp(C1, C, nc * sizeof(float)) == 0,
          "ta %d tb %d M %d N %d K %d: 1 and 2 threads differ", ta, tb, M, N, K);
    free(C1);
  }
#endif
  free(A), free(B), free(C0), free(C);
}

/* Batched strided: each item equals ioupos_gemm on it bit for bit, and the reference. */
static void check_batched(int ta, int tb, int M, int N, int K, int batch, int share_b,
                          float alpha, float beta) {
  int lda = ta ? M : K, ldb = tb ? K : N, ldc = N;
  long long sa = (long long)(ta ? K : M) * lda, sb = share_b ? 0 : (long long)(tb ? N : K) * ldb,
            sc = (long long)M * ldc + 3; /* a gap between the C items */
  float *A = alloc_fill((size_t)sa * batch), *B = alloc_fill((size_t)(share_b ? (tb ? N : K) * ldb
                                                                          : sb * batch));
  size_t nc = (size_t)sc * batch;
  float *C0 = alloc_fill(nc), *C = (float *)malloc(nc * sizeof(float));
  float *Ci = (float *)malloc(nc * sizeof(float));
  double w, worst = 0.0;
  int b, st, same = 1, wi, wj, nth;
  if (beta == 0.0f)
    for (b = 0; b < (int)nc; ++b) C0[b] = NAN;
  for (nth = 1; nth <= 2; ++nth) {
#ifdef _OPENMP
    omp_set_num_threads(nth);
#else
    if (nth > 1) break;
#endif
    memcpy(C, C0, nc * sizeof(float));
    memcpy(Ci, C0, nc * sizeof(float));
    st = ioupos_gemm_batched_strided(ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C,
                                     ldc, sc, batch);
    CHECK(st == IOUPOS_OK, "batched: %s", ioupos_failure_reason());
    for (b = 0; b < batch; ++b)
      ioupos_gemm(ta, tb, M, N, K, alpha, A + b * sa, lda, B + b * sb, ldb, beta, Ci + b * sc,
                  ldc);
    same = memcmp(C, Ci, nc * sizeof(float)) == 0;
    CHECK(same, "batched ta %d tb %d %dx%dx%d x%d (%d threads): differs from per-item gemm", ta,
          tb, M, N, K, batch, nth);
  }
  for (b = 0; b < batch; ++b) {
    w = worst_ratio(ta, tb, M, N, K, alpha, A + b * sa, lda, B + b * sb, ldb, beta, C0 + b * sc,
                    C + b * sc, ldc, &wi, &wj);
    if (w > worst) worst = w;
  }
  CHECK(worst <= 1.0, "batched ta %d tb %d %dx%dx%d x%d: worst err/tol %.3g", ta, tb, M, N, K,
        batch, worst);
  for (b = 0; b + 1 < batch; ++b) /* the gaps between items are untouched */
    CHECK(memcmp(C + b * sc + (size_t)M * ldc, C0 + b * sc + (size_t)M * ldc, 3 * sizeof(float)) ==
              0 || beta == 0.0f,
          "batched: gap after item %d written", b);
  free(A), free(B), free(C0), free(C), free(Ci);
}

int main(void) {
  static const int sizes[] = {1, 3, 7, 17, 33, 65, 97, 129, 200};
  static const int ns = (int)(sizeof sizes / sizeof sizes[0]);
  /* Swin-T C=48 on 96x96 with patch 2: stage s has 48/2^s tokens per side and 48*2^s
     channels; one image (stage 1: 2304 tokens). {tokens, in, out}: qkv, proj, mlp fc1, fc2,
     patch merging (4C -> 2C). */
  static const int swin[][3] = {
      {2304, 48, 144}, {2304, 48, 48},  {2304, 48, 192},  {2304, 192, 48},  {576, 192, 96},
      {576, 96, 288},  {576, 96, 384},  {576, 384, 96},   {144, 384, 192},  {144, 192, 576},
      {144, 192, 768}, {144, 768, 192}, {36, 768, 384},   {36, 384, 1152},  {36, 384, 1536},
      {36, 1536, 384}};
  int ta, tb, i, t, st;
  float x[4] = {0, 0, 0, 0};
  ioupos_rng_seed(&rng, 20240601);
  printf("test_gemm: %s micro-kernel", ioupos_gemm_simd() ? "AVX2+FMA" : "portable");
#ifdef _OPENMP
  printf(", OpenMP (max %d threads; comparing 1 and 2)\n", omp_get_max_threads());
#else
  printf(", no OpenMP\n");
#endif

  /* every transpose case, equal odd sizes and mixed triples */
  for (ta = 0; ta < 2; ++ta)
    for (tb = 0; tb < 2; ++tb) {
      for (i = 0; i < ns; ++i) check_case(ta, tb, sizes[i], sizes[i], sizes[i], 1.0f, 0.0f, 0, 0, 0);
      for (t = 0; t < 24; ++t) {
        int M = sizes[ioupos_rng_below(&rng, ns)], N = sizes[ioupos_rng_below(&rng, ns)];
        int K = sizes[ioupos_rng_below(&rng, ns)];
        static const float al[] = {1.0f, -0.5f, 2.0f, 1.0f}, be[] = {0.0f, 1.0f, 0.25f, -1.5f};
        check_case(ta, tb, M, N, K, al[t % 4], be[(t / 4) % 4], t % 3, (t + 1) % 5, t % 7);
      }
      /* K larger than one K block (256): the dweight shape of the backward pass */
      check_case(ta, tb, 65, 48, 600, 1.0f, 1.0f, 1, 2, 3);
      check_case(ta, tb, 7, 3100, 20, 1.0f, 0.0f, 0, 0, 0); /* N over one NC panel (3072) */
    }
  /* the model's layers: forward (0, 1), dinput (0, 0), dweight (1, 0) accumulating */
  for (i = 0; i < (int)(sizeof swin / sizeof swin[0]); ++i) {
    int T = swin[i][0], Cin = swin[i][1], Cout = swin[i][2];
    check_case(0, 1, T, Cout, Cin, 1.0f, 0.0f, 0, 0, 0);
    if (i % 4 == 0) {
      check_case(0, 0, T, Cin, Cout, 1.0f, 0.0f, 0, 0, 0);
      check_case(1, 0, Cout, Cin, T, 1.0f, 1.0f, 0, 0, 0);
    }
  }
  /* alpha 0: A and B are not read (NaN there does not reach C); K 0: C = beta C */
  {
    float A[6] = {NAN, NAN, NAN, NAN, NAN, NAN}, C[4] = {1, 2, 3, 4};
    st = ioupos_gemm(0, 0, 2, 2, 3, 0.0f, A, 3, A, 2, 0.5f, C, 2);
    CHECK(st == 0 && C[0] == 0.5f && C[3] == 2.0f, "alpha 0: C = %g %g", C[0], C[3]);
    st = ioupos_gemm(0, 0, 2, 2, 0, 1.0f, NULL, 1, NULL, 2, 0.0f, C, 2);
    CHECK(st == 0 && C[0] == 0.0f && C[3] == 0.0f, "K 0 beta 0: C = %g %g", C[0], C[3]);
  }

  /* batched: window attention (7x7 windows, head dim 16 and 32), q k^T and attn v */
  for (ta = 0; ta < 2; ++ta)
    for (tb = 0; tb < 2; ++tb) check_batched(ta, tb, 49, 49, 32, 7, 0, 1.0f, 0.0f);
  check_batched(0, 1, 49, 49, 16, 24, 0, 0.25f, 0.0f); /* scores = scale q k^T */
  check_batched(0, 0, 49, 16, 49, 24, 0, 1.0f, 0.0f);  /* out = attn v */
  check_batched(0, 1, 49, 49, 32, 5, 0, 1.0f, 1.0f);
  check_batched(0, 1, 300, 200, 100, 3, 1, 1.0f, 0.5f); /* few large items, shared B */
  check_batched(1, 0, 3, 2, 2, 9, 1, 1.0f, 0.0f);      /* tiny items */

  /* argument errors */
  CHECK(ioupos_gemm(2, 0, 1, 1, 1, 1.0f, x, 1, x, 1, 0.0f, x, 1) == IOUPOS_EINVAL, "transa 2");
  CHECK(ioupos_gemm(0, 0, -1, 1, 1, 1.0f, x, 1, x, 1, 0.0f, x, 1) == IOUPOS_EINVAL, "M -1");
  CHECK(ioupos_gemm(0, 0, 2, 2, 3, 1.0f, x, 2, x, 2, 0.0f, x, 2) == IOUPOS_EINVAL, "lda 2 < K 3");
  CHECK(strstr(ioupos_failure_reason(), "lda 2") != NULL, "reason: %s", ioupos_failure_reason());
  CHECK(ioupos_gemm(1, 1, 2, 2, 3, 1.0f, x, 2, x, 2, 0.0f, x, 2) == IOUPOS_EINVAL, "ldb 2 < K 3");
  CHECK(ioupos_gemm(0, 0, 2, 2, 2, 1.0f, NULL, 2, x, 2, 0.0f, x, 2) == IOUPOS_EINVAL, "A NULL");
  CHECK(ioupos_gemm(0, 0, 0, 2, 2, 1.0f, NULL, 2, NULL, 2, 0.0f, NULL, 2) == IOUPOS_OK, "M 0");
  CHECK(ioupos_gemm_batched_strided(0, 0, 2, 2, 1, 1.0f, x, 1, 2, x, 2, 2, 0.0f, x, 2, 3, 2) ==
            IOUPOS_EINVAL,
        "overlapping C items");
  CHECK(ioupos_gemm_batched_strided(0, 0, 1, 1, 1, 1.0f, x, 1, 1, x, 1, 1, 0.0f, x, 1, 1, -1) ==
            IOUPOS_EINVAL,
        "batch -1");
  return tu_finish("test_gemm");
}
