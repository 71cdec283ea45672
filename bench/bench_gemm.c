/* bench/bench_gemm.c — GFLOP/s of ioupos_gemm / ioupos_gemm_batched_strided at the Swin-T
   (C=48, 96x96 input, patch 2, window 7) shapes for a batch of 8 images, beside OpenBLAS's
   cblas_sgemm on the same inputs, the same machine, in the same run, on 1 and 2 threads; then
   the ratio (ours / OpenBLAS; the target is >= 0.5).

   Build with OpenBLAS (Debian's libopenblas-dev) as the baseline: `make build/bench_gemm` adds
   -DIOUPOS_BENCH_OPENBLAS -lopenblas when cblas.h is installed; this file is linked with the
   implementation build/ioupos.o (-mavx2 -mfma where the CPU has them, -fopenmp).
   Without -DIOUPOS_BENCH_OPENBLAS it prints our figures and says the baseline is absent.
   Threads: ours through omp_set_num_threads, OpenBLAS through openblas_set_num_threads.
   Batched attention: OpenBLAS has no strided-batched sgemm in its CBLAS, so the baseline is a
   loop of cblas_sgemm calls (OpenBLAS decides itself how to use its threads on each).

   Shapes (tokens T = 8 images x H x W of the stage): forward out = in . W^T is (0, 1, T, out,
   in); the weight gradient dW += dout^T . in is (1, 0, out, in, T) with beta 1; the input
   gradient dinput = dout . W is (0, 0, T, in, out).
   Timing: CLOCK_MONOTONIC; each case doubles its repetitions until one run takes >= 0.15 s and
   reports the best of two such runs, after a 0.3 s pause (see measure). Exit status 1 only on an error from ioupos_gemm. */
#include "ioupos.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef IOUPOS_BENCH_OPENBLAS
#include <cblas.h>
#endif

#define MIN_SECONDS 0.15

typedef struct shape {
  const char *name;
  int ta, tb, M, N, K, batch;
  float beta;
} shape;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const shape *g_s;
static float *g_A, *g_B, *g_C;
static int g_err;

static void run_ours(void) {
  const shape *s = g_s;
  int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
  int st;
  if (s->batch == 1)
    st = ioupos_gemm(s->ta, s->tb, s->M, s->N, s->K, 1.0f, g_A, lda, g_B, ldb, s->beta, g_C, s->N);
  else
    st = ioupos_gemm_batched_strided(s->ta, s->tb, s->M, s->N, s->K, 1.0f, g_A, lda,
                                     (long long)s->M * s->K, g_B, ldb, (long long)s->K * s->N,
                                     s->beta, g_C, s->N, (long long)s->M * s->N, s->batch);
  if (st) {
    fprintf(stderr, "bench_gemm: %s: %s\n", s->name, ioupos_failure_reason());
    g_err = 1;
  }
}

#ifdef IOUPOS_BENCH_OPENBLAS
static void run_openblas(void) {
  const shape *s = g_s;
  int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N, b;
  for (b = 0; b < s->batch; ++b)
    cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans,
                s->tb ? CblasTrans : CblasNoTrans, s->M, s->N, s->K, 1.0f,
                g_A + (size_t)b * s->M * s->K, lda, g_B + (size_t)b * s->K * s->N, ldb, s->beta,
                g_C + (size_t)b * s->M * s->N, s->N);
}
#endif

/* GFLOP/s of fn on the current shape. Both runtimes' idle worker threads busy-wait for a while
   after a call (OpenBLAS for up to ~0.1 s); on a 2-core machine that spinning steals a core from
   the other library, so each measurement starts after a pause that lets them go to sleep. */
static double measure(void (*fn)(void)) {
  const shape *s = g_s;
  double flops = 2.0 * s->M * s->N * s->K * s->batch, best = 0.0;
  struct timespec pause = {0, 300000000L};
  int rep;
  nanosleep(&pause, NULL);
  fn(); /* warm-up: page faults, thread start */
  for (rep = 0; rep < 2; ++rep) {
    long n = 1, i;
    double t;
    for (;;) {
      double t0 = now_s();
      for (i = 0; i < n; ++i) fn();
      t = now_s() - t0;
      if (t >= MIN_SECONDS) break;
      n *= 2;
    }
    if (flops * n / t > best) best = flops * n / t;
  }
  return best * 1e-9;
}

static void set_threads(int nt) {
#ifdef _OPENMP
  omp_set_num_threads(nt);
#endif
#ifdef IOUPOS_BENCH_OPENBLAS
  openblas_set_num_threads(nt);
#endif
  (void)nt;
}

int main(void) {
  /* 8 images: stage s has T = 8 * (48 >> s)^2 tokens and 48 << s channels */
  static const shape shapes[] = {
      {"s1 qkv     fwd", 0, 1, 18432, 144, 48, 1, 0.0f},
      {"s1 proj    fwd", 0, 1, 18432, 48, 48, 1, 0.0f},
      {"s1 fc1     fwd", 0, 1, 18432, 192, 48, 1, 0.0f},
      {"s1 fc2     fwd", 0, 1, 18432, 48, 192, 1, 0.0f},
      {"s1 fc1     dW ", 1, 0, 192, 48, 18432, 1, 1.0f},
      {"s1 fc1     dX ", 0, 0, 18432, 48, 192, 1, 0.0f},
      {"s2 qkv     fwd", 0, 1, 4608, 288, 96, 1, 0.0f},
      {"s2 fc1     fwd", 0, 1, 4608, 384, 96, 1, 0.0f},
      {"s2 fc2     fwd", 0, 1, 4608, 96, 384, 1, 0.0f},
      {"s3 qkv     fwd", 0, 1, 1152, 576, 192, 1, 0.0f},
      {"s3 fc1     fwd", 0, 1, 1152, 768, 192, 1, 0.0f},
      {"s3 fc2     fwd", 0, 1, 1152, 192, 768, 1, 0.0f},
      {"s4 qkv     fwd", 0, 1, 288, 1152, 384, 1, 0.0f},
      {"s4 fc1     fwd", 0, 1, 288, 1536, 384, 1, 0.0f},
      {"s4 fc2     fwd", 0, 1, 288, 384, 1536, 1, 0.0f},
      {"s4 fc2     dW ", 1, 0, 384, 1536, 288, 1, 1.0f},
      /* window attention, stage 1: 8 images x 49 windows x 3 heads, head dim 16 */
      {"s1 attn qk^T  ", 0, 1, 49, 49, 16, 8 * 49 * 3, 0.0f},
      {"s1 attn a.v   ", 0, 0, 49, 16, 49, 8 * 49 * 3, 0.0f},
      {"s1 attn dq    ", 0, 0, 49, 16, 49, 8 * 49 * 3, 0.0f},
      {"s1 attn dk    ", 1, 0, 49, 16, 49, 8 * 49 * 3, 0.0f},
      {"square 1024   ", 0, 0, 1024, 1024, 1024, 1, 0.0f}};
  const int nshape = (int)(sizeof shapes / sizeof shapes[0]);
  size_t maxa = 0, maxb = 0, maxc = 0, i;
  int si, nt;
  ioupos_rng rng;
  double logsum[3] = {0, 0, 0};
  int nlog[3] = {0, 0, 0};

  for (si = 0; si < nshape; ++si) {
    const shape *s = &shapes[si];
    size_t a = (size_t)s->M * s->K * s->batch, b = (size_t)s->K * s->N * s->batch,
           c = (size_t)s->M * s->N * s->batch;
    if (a > maxa) maxa = a;
    if (b > maxb) maxb = b;
    if (c > maxc) maxc = c;
  }
  g_A = (float *)malloc(maxa * sizeof(float));
  g_B = (float *)malloc(maxb * sizeof(float));
  g_C = (float *)malloc(maxc * sizeof(float));
  if (!g_A || !g_B || !g_C) return fprintf(stderr, "bench_gemm: out of memory\n"), 1;
  ioupos_rng_seed(&rng, 7);
  for (i = 0; i < maxa; ++i) g_A[i] = (float)ioupos_rng_uniform(&rng) - 0.5f;
  for (i = 0; i < maxb; ++i) g_B[i] = (float)ioupos_rng_uniform(&rng) - 0.5f;
  for (i = 0; i < maxc; ++i) g_C[i] = 0.0f;

  printf("bench_gemm: %s micro-kernel, %s\n", ioupos_gemm_kernel(),
#ifdef _OPENMP
         "OpenMP"
#else
         "no OpenMP (threads = 1 only)"
#endif
  );
#ifdef IOUPOS_BENCH_OPENBLAS
  printf("baseline: OpenBLAS %s\n", openblas_get_config());
#else
  printf("baseline: none (built without -DIOUPOS_BENCH_OPENBLAS; install libopenblas-dev)\n");
#endif
  printf("%-15s %2s %2s %6s %5s %6s %5s %3s %9s %9s %6s\n", "case", "tA", "tB", "M", "N", "K",
         "batch", "thr", "ioupos", "openblas", "ratio");
  for (nt = 1; nt <= 2; ++nt) {
#ifndef _OPENMP
    if (nt > 1) break;
#endif
    set_threads(nt);
    for (si = 0; si < nshape; ++si) {
      double ours, base = 0.0;
      g_s = &shapes[si];
      ours = measure(run_ours);
#ifdef IOUPOS_BENCH_OPENBLAS
      base = measure(run_openblas);
#endif
      printf("%-15s %2d %2d %6d %5d %6d %5d %3d %9.1f ", g_s->name, g_s->ta, g_s->tb, g_s->M,
             g_s->N, g_s->K, g_s->batch, nt, ours);
      if (base > 0.0) {
        printf("%9.1f %6.2f\n", base, ours / base);
        logsum[nt] += log(ours / base);
        ++nlog[nt];
      } else {
        printf("%9s %6s\n", "-", "-");
      }
      fflush(stdout);
    }
  }
  for (nt = 1; nt <= 2; ++nt)
    if (nlog[nt])
      printf("geometric mean ratio, %d thread%s: %.2f (target >= 0.5)\n", nt, nt > 1 ? "s" : "",
             exp(logsum[nt] / nlog[nt]));
  free(g_A), free(g_B), free(g_C);
  return g_err;
}
