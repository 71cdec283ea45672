/* tests/test_memory.c — section 21b (the memory of a step) against the real allocations.

   A counting backend is the CPU backend with alloc and release wrapped: each block carries its
   requested size in a 64-byte header (64, so that the CPU's alignment of the block is kept), and
   the wrapper keeps the bytes in use and their peak. Each case then builds the model on it, runs
   init and one whole step (forward, backward, optimiser step; for inference the predictions of
   whole images) and requires

       estimate.device == measured peak of the backend's requested bytes    (exactly)

   The tolerance is zero because the estimate is not a model of the memory but the same
   arithmetic the allocations use (aligned tensor tables, plans, step buffers), so any difference
   is a bug: an allocation added, resized or removed without its estimate, which an inexact
   bound would let drift. The parts are checked too where the model exposes them (the parameter
   arena, the I64 buffers), the peak must equal the bytes still in use after the step (nothing is
   allocated and freed inside a step, so the estimate IS the peak), and every allocation must
   have happened in init or in the first step: a second step allocates nothing.
   Host memory is counted too, through the library's IOUPOS_MALLOC (see below): the loader's
   buffers exactly, and for the training steps the whole peak, host and backend together, against
   `total`: never under it and at most 5 % + 8 MiB over it (compare_total says why). Sliding-window
   inference is checked on its backend part only: its host part (the window batches) is the
   bound for images of at least sw_batch windows.

   Cases: SimSiam 2D and 3D, DINO 2D and 3D with local crops, a SwinUNETR fine-tuning step 2D
   and 3D, sliding-window inference 2D through ioupos_seg_predictor (images whose window count
   makes both model instances exist) and, in 3D, the same two plans made directly. Embedding
   C 12 (MONAI's smallest useful feature size) and the published C 48 at reduced sizes.
   Then argument errors, ioupos_mem_largest_part, the RAM helpers, and for the record the
   estimates at the published scale (printed, not checked). */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The library's host allocator, counted: this file includes the implementation itself, every
   function static (IOUPOS_STATIC), with IOUPOS_MALLOC / IOUPOS_FREE below, so host memory is
   measured by requested bytes as the backend's is (the loader's buffers). stb comes from the
   linked ioupos.o; the Makefile compiles this file with the drivers' SIMD flags (the steps' GEMMs
   would otherwise run the scalar kernels). Each block carries its size in a 64-byte header; a mutex, because worker
   threads and OpenMP threads allocate too. */
static pthread_mutex_t host_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t host_in_use, host_peak;
static void *host_malloc(size_t bytes) {
  unsigned char *p = (unsigned char *)malloc(bytes + 64);
  if (!p) return NULL;
  memcpy(p, &bytes, sizeof bytes);
  pthread_mutex_lock(&host_mu);
  host_in_use += bytes;
  if (host_in_use > host_peak) host_peak = host_in_use;
  pthread_mutex_unlock(&host_mu);
  return p + 64;
}
static void host_free(void *q) {
  size_t bytes;
  if (!q) return;
  memcpy(&bytes, (unsigned char *)q - 64, sizeof bytes);
  pthread_mutex_lock(&host_mu);
  host_in_use -= bytes;
  pthread_mutex_unlock(&host_mu);
  free((unsigned char *)q - 64);
}
#define IOUPOS_MALLOC(sz) host_malloc(sz)
#define IOUPOS_FREE(p) host_free(p)
#define IOUPOS_STATIC
#define IOUPOS_NO_STB_IMPLEMENTATION
#define IOUPOS_IMPLEMENTATION
#include "ioupos.h"

#include "tests/test_util.h"

/* ---- the counting backend ---- */
#define HDR 64
static ioupos_backend cnt_be;
static const ioupos_backend *cpu_be;
static uint64_t cnt_in_use, cnt_peak, cnt_allocs;

static void *cnt_alloc(size_t bytes) {
  unsigned char *p = (unsigned char *)cpu_be->alloc(bytes + HDR);
  if (!p) return NULL;
  memcpy(p, &bytes, sizeof bytes);
  cnt_in_use += bytes;
  ++cnt_allocs;
  if (cnt_in_use > cnt_peak) cnt_peak = cnt_in_use;
  return p + HDR;
}

static void cnt_release(void *q) {
  unsigned char *p;
  size_t bytes;
  if (!q) return;
  p = (unsigned char *)q - HDR;
  memcpy(&bytes, p, sizeof bytes);
  cnt_in_use -= bytes;
  cpu_be->release(p);
}

static uint64_t host_base;
static void cnt_reset(void) {
  cnt_in_use = cnt_peak = cnt_allocs = 0;
  pthread_mutex_lock(&host_mu);
  host_base = host_peak = host_in_use;
  pthread_mutex_unlock(&host_mu);
}

static const ioupos_backend *counting_backend(void) {
  cpu_be = ioupos_backend_cpu();
  cnt_be = *cpu_be;
  cnt_be.name = "cpu-counting";
  cnt_be.alloc = cnt_alloc;
  cnt_be.release = cnt_release;
  return &cnt_be;
}

static void fill(float *x, size_t n, ioupos_rng *r) {
  size_t i;
  for (i = 0; i < n; ++i) x[i] = (float)ioupos_rng_uniform(r);
}

static float *rnd(size_t n, ioupos_rng *r) {
  float *x = (float *)malloc((n ? n : 1) * sizeof(float));
  if (!x) {
    printf("out of memory\n");
    exit(2);
  }
  fill(x, n, r);
  return x;
}

static size_t prod(int nd, const int *s) {
  size_t n = 1;
  int d;
  for (d = 0; d < nd; ++d) n *= (size_t)s[d];
  return n;
}

static void print_est(const char *what, const ioupos_mem_estimate *e) {
  printf("  %-46s total %9.2f MiB (device %9.2f: params %.2f grads %.2f optimiser %.2f "
         "activations %.2f workspace %.2f inputs %.2f; host %.2f) largest %s\n",
         what, e->total / 1048576.0, e->device / 1048576.0, e->params / 1048576.0,
         e->grads / 1048576.0, e->optimiser / 1048576.0, e->activations / 1048576.0,
         e->workspace / 1048576.0, e->inputs / 1048576.0, e->host / 1048576.0,
         ioupos_mem_largest_part(e));
}

static void check_sum(const char *what, const ioupos_mem_estimate *e) {
  CHECK(e->device == e->params + e->grads + e->optimiser + e->activations + e->workspace +
                         e->inputs && e->total == e->device + e->host && e->device > 0,
        "%s: the parts do not add up", what);
}

/* The whole step's peak, host and backend together (on the CPU backend every backend block is
   an IOUPOS_MALLOC block too, so the host counter sees both), against `total`: never under it,
   since every part the estimate names is allocated and held through the step; over it by at
   most TOTAL_REL of it + TOTAL_ABS, because of the transient host copies the estimate leaves out
   (section 21b's list): the GEMM's packing panels (at most 256 x 3072 floats shared + 256 x 144
   per thread, about 3.2 MiB with 2 threads), params_init's staging copy of the largest tensor,
   the plan's host mask and index before their upload (at 96^3 the mask of stage 0, 161 MB of a
   14 GB step), the tensor tables. At the published scale the largest of these is under 2 % of
   the total; the small cases here are dominated by the absolute term. */
#define TOTAL_REL 0.05
#define TOTAL_ABS ((uint64_t)8 << 20)
static void compare_total(const char *what, const ioupos_mem_estimate *e, uint64_t host_peak_step) {
  uint64_t m = host_peak_step;
  printf("  %-46s   whole step (host + backend) peak %12llu B, total estimated %12llu B "
         "(%+.2f %%)\n", "", (unsigned long long)m, (unsigned long long)e->total,
         e->total ? 100.0 * ((double)m - (double)e->total) / (double)e->total : 0.0);
  CHECK(m >= e->total && (double)m <= (double)e->total * (1.0 + TOTAL_REL) + (double)TOTAL_ABS,
        "%s: the step's whole peak %llu bytes, total estimated %llu (allowed: +%.0f %% + %llu)",
        what, (unsigned long long)m, (unsigned long long)e->total, 100.0 * TOTAL_REL,
        (unsigned long long)TOTAL_ABS);
}

/* measured vs estimated: exact */
static void compare(const char *what, const ioupos_mem_estimate *e, uint64_t peak_after_step,
                    uint64_t in_use, uint64_t allocs_step1, uint64_t allocs_step2) {
  printf("  %-46s measured %12llu B, estimated %12llu B (%s)\n", what,
         (unsigned long long)peak_after_step, (unsigned long long)e->device,
         peak_after_step == e->device ? "exact" : "DIFFERENT");
  check_sum(what, e);
  CHECK(e->device == peak_after_step, "%s: estimated %llu bytes, the backend peaked at %llu (%+lld)",
        what, (unsigned long long)e->device, (unsigned long long)peak_after_step,
        (long long)peak_after_step - (long long)e->device);
  CHECK(in_use == peak_after_step, "%s: %llu bytes in use after the step, peak %llu", what,
        (unsigned long long)in_use, (unsigned long long)peak_after_step);
  CHECK(allocs_step2 == allocs_step1, "%s: the second step allocated %llu more blocks", what,
        (unsigned long long)(allocs_step2 - allocs_step1));
}

/* ---- SimSiam ---- */
static void case_simsiam(const char *what, int nd, int C, int batch, const int *shape) {
  ioupos_simsiam_config cfg;
  ioupos_simsiam m;
  ioupos_mem_estimate e;
  ioupos_rng r;
  const ioupos_backend *be = counting_backend();
  size_t npix = prod(nd, shape) * (size_t)batch;
  float *v1, *v2;
  uint64_t peak, use, a1, hpeak;
  int rc;
  ioupos_simsiam_config_default(&cfg, nd);
  cfg.enc.embed_dim = C;
  cfg.proj_hidden = 64;
  cfg.proj_out = 48;
  cfg.pred_hidden = 16;
  rc = ioupos_simsiam_step_bytes(&cfg, batch, shape, &e);
  CHECK(rc == 0, "%s: estimate failed: %s", what, ioupos_failure_reason());
  ioupos_rng_seed(&r, 7);
  v1 = rnd(npix, &r);
  v2 = rnd(npix, &r);
  cnt_reset();
  rc = ioupos_simsiam_init(&m, &cfg, be, 1);
  CHECK(rc == 0, "%s: init: %s", what, ioupos_failure_reason());
  if (rc == 0) {
    CHECK(e.params == m.p.table.total * sizeof(float), "%s: params %llu vs the table's %zu floats",
          what, (unsigned long long)e.params, m.p.table.total);
    CHECK(e.host == (m.p.table.itotal + 1) * sizeof(int64_t), "%s: host %llu vs %zu I64", what,
          (unsigned long long)e.host, m.p.table.itotal);
    ioupos_simsiam_zero_grad(&m);
    rc = ioupos_simsiam_accumulate(&m, v1, v2, batch, shape, 1.0f, &r, NULL);
    CHECK(rc == 0, "%s: accumulate: %s", what, ioupos_failure_reason());
    rc = ioupos_simsiam_step(&m, 0.01, 0.01, 0.9, 1e-5);
    peak = cnt_peak, use = cnt_in_use, a1 = cnt_allocs, hpeak = host_peak - host_base;
    ioupos_simsiam_zero_grad(&m);
    rc |= ioupos_simsiam_accumulate(&m, v1, v2, batch, shape, 1.0f, &r, NULL);
    rc |= ioupos_simsiam_step(&m, 0.01, 0.01, 0.9, 1e-5);
    CHECK(rc == 0, "%s: step: %s", what, ioupos_failure_reason());
    compare(what, &e, peak, use, a1, cnt_allocs);
    compare_total(what, &e, hpeak);
    ioupos_simsiam_free(&m);
    CHECK(cnt_in_use == 0, "%s: %llu bytes left after free", what, (unsigned long long)cnt_in_use);
  }
  free(v1);
  free(v2);
}

/* ---- DINO ---- */
static void case_dino(const char *what, int nd, int C, int batch, const int *shape, int n_local,
                      const int *lshape) {
  ioupos_dino_config cfg;
  ioupos_dino m;
  ioupos_mem_estimate e;
  ioupos_rng r;
  const ioupos_backend *be = counting_backend();
  size_t np = prod(nd, shape) * (size_t)batch;
  size_t nl = n_local ? prod(nd, lshape) * (size_t)batch * n_local : 0;
  float *g1, *g2, *lo;
  uint64_t peak, use, a1, hpeak;
  int rc;
  ioupos_dino_config_default(&cfg, nd);
  cfg.enc.embed_dim = C;
  cfg.hidden = 64;
  cfg.bottleneck = 16;
  cfg.out_dim = 40;
  rc = ioupos_dino_step_bytes(&cfg, batch, shape, n_local, lshape, &e);
  CHECK(rc == 0, "%s: estimate failed: %s", what, ioupos_failure_reason());
  ioupos_rng_seed(&r, 9);
  g1 = rnd(np, &r);
  g2 = rnd(np, &r);
  lo = rnd(nl, &r);
  cnt_reset();
  rc = ioupos_dino_init(&m, &cfg, be, 3);
  CHECK(rc == 0, "%s: init: %s", what, ioupos_failure_reason());
  if (rc == 0) {
    CHECK(e.params == m.s.table.total * sizeof(float), "%s: params %llu vs the table's %zu floats",
          what, (unsigned long long)e.params, m.s.table.total);
    CHECK(e.host == (2 * (m.s.table.itotal + 1) + (size_t)m.s.table.n + 1) * sizeof(int64_t),
          "%s: host %llu vs %zu I64, %d tensors", what, (unsigned long long)e.host,
          m.s.table.itotal, m.s.table.n);
    ioupos_dino_zero_grad(&m);
    rc = ioupos_dino_accumulate(&m, g1, g2, lo, n_local, batch, shape, lshape, 0.04f, 1.0f, &r,
                                NULL);
    CHECK(rc == 0, "%s: accumulate: %s", what, ioupos_failure_reason());
    rc = ioupos_dino_step(&m, 1e-4, 0.04, 0, 1, 3.0f, 0.996);
    peak = cnt_peak, use = cnt_in_use, a1 = cnt_allocs, hpeak = host_peak - host_base;
    ioupos_dino_zero_grad(&m);
    rc |= ioupos_dino_accumulate(&m, g1, g2, lo, n_local, batch, shape, lshape, 0.04f, 1.0f, &r,
                                 NULL);
    rc |= ioupos_dino_step(&m, 1e-4, 0.04, 0, 1, 3.0f, 0.996);
    CHECK(rc == 0, "%s: step: %s", what, ioupos_failure_reason());
    compare(what, &e, peak, use, a1, cnt_allocs);
    compare_total(what, &e, hpeak);
    ioupos_dino_free(&m);
    CHECK(cnt_in_use == 0, "%s: %llu bytes left after free", what, (unsigned long long)cnt_in_use);
  }
  free(g1);
  free(g2);
  free(lo);
}

/* ---- SwinUNETR: section 22's step, its backend allocations in its order ---- */
static int unetr_step(ioupos_swinunetr *m, ioupos_params *p, float *x, float *ddev, float *m1,
                      float *m2, const float *hx, const float *hd, size_t nx, size_t nlog,
                      int64_t step) {
  const ioupos_backend *be = p->be;
  int rc, i;
  be->zero(p->grad, p->table.total * sizeof(float));
  be->upload(x, hx, nx * sizeof(float));
  if ((rc = ioupos_swinunetr_forward(m, p, x, 1, NULL)) != 0) return rc;
  be->upload(ddev, hd, nlog * sizeof(float));
  if ((rc = ioupos_swinunetr_backward(m, p, ddev, NULL)) != 0) return rc;
  for (i = 0; i < p->table.n; ++i) {
    const ioupos_tensor_info *t = &p->table.t[i];
    if (t->dtype != IOUPOS_ST_F32 || (t->flags & IOUPOS_TENSOR_BUFFER)) continue;
    be->adamw_step(p->value + t->offset, p->grad + t->offset, m1 + t->offset, m2 + t->offset,
                   t->numel, 1e-4f, 0.9f, 0.999f, 1e-8f, 1e-5f, (int)step);
  }
  return be->sync();
}

static void case_unetr(const char *what, int nd, int C, int K, int batch, const int *shape) {
  ioupos_swinunetr_config cfg;
  ioupos_swinunetr m;
  ioupos_params p;
  ioupos_mem_estimate e;
  ioupos_rng r;
  const ioupos_backend *be = counting_backend();
  size_t vol = prod(nd, shape), nx = vol * (size_t)batch, nlog = nx * (size_t)K;
  float *hx, *hd, *x = NULL, *ddev = NULL, *m1 = NULL, *m2 = NULL;
  float *hlog = NULL, *prob = NULL, *dlog = NULL;
  int *target = NULL;
  double *stats = NULL;
  uint64_t peak, use, a1, hpeak;
  int rc;
  ioupos_swinunetr_config_default(&cfg, nd);
  cfg.enc.embed_dim = C;
  cfg.out_channels = K;
  rc = ioupos_swinunetr_step_bytes(&cfg, batch, shape, &e);
  CHECK(rc == 0, "%s: estimate failed: %s", what, ioupos_failure_reason());
  ioupos_rng_seed(&r, 11);
  hx = rnd(nx, &r);
  hd = rnd(nlog, &r);
  memset(&p, 0, sizeof p);
  cnt_reset();
  rc = ioupos_swinunetr_init(&m, &cfg, &p.table, "");
  if (rc == 0) rc = ioupos_params_alloc(&p, be, 1);
  if (rc == 0) rc = ioupos_params_init(&p, &r);
  if (rc == 0) rc = ioupos_swin_encoder_buffers(&m.enc, &p);
  CHECK(rc == 0, "%s: init: %s", what, ioupos_failure_reason());
  if (rc == 0) {
    CHECK(e.params == p.table.total * sizeof(float), "%s: params %llu vs the table's %zu floats",
          what, (unsigned long long)e.params, p.table.total);
    /* as ioupos_finetune_run and ioupos__ft_alloc_batch */
    m1 = (float *)be->alloc(p.table.total * sizeof(float) + 1);
    m2 = (float *)be->alloc(p.table.total * sizeof(float) + 1);
    rc = ioupos_swinunetr_plan(&m, &p, batch, shape);
    x = (float *)be->alloc(nx * sizeof(float));
    ddev = (float *)be->alloc(nlog * sizeof(float));
    /* section 22's host buffers of the Dice-CE loss */
    hlog = (float *)ioupos__calloc(nlog, sizeof(float));
    prob = (float *)ioupos__calloc(nlog, sizeof(float));
    dlog = (float *)ioupos__calloc(nlog, sizeof(float));
    target = (int *)ioupos__calloc(nx, sizeof(int));
    stats = (double *)ioupos__calloc(IOUPOS_DICECE_STATS(batch, K), sizeof(double));
    CHECK(rc == 0 && m1 && m2 && x && ddev && hlog && prob && dlog && target && stats,
          "%s: plan: %s", what, ioupos_failure_reason());
    if (rc == 0) rc = unetr_step(&m, &p, x, ddev, m1, m2, hx, hd, nx, nlog, 1);
    peak = cnt_peak, use = cnt_in_use, a1 = cnt_allocs, hpeak = host_peak - host_base;
    if (rc == 0) rc = ioupos_swinunetr_plan(&m, &p, batch, shape);
    if (rc == 0) rc = unetr_step(&m, &p, x, ddev, m1, m2, hx, hd, nx, nlog, 2);
    CHECK(rc == 0, "%s: step: %s", what, ioupos_failure_reason());
    compare(what, &e, peak, use, a1, cnt_allocs);
    compare_total(what, &e, hpeak);
  }
  IOUPOS_FREE(hlog);
  IOUPOS_FREE(prob);
  IOUPOS_FREE(dlog);
  IOUPOS_FREE(target);
  IOUPOS_FREE(stats);
  be->release(x);
  be->release(ddev);
  be->release(m1);
  be->release(m2);
  ioupos_swinunetr_free(&m);
  ioupos_params_free(&p);
  CHECK(cnt_in_use == 0, "%s: %llu bytes left after free", what, (unsigned long long)cnt_in_use);
  free(hx);
  free(hd);
}

/* ---- sliding-window inference, 2D: the predictor itself on an image of n_win windows ---- */
static void case_infer2d(const char *what, int C, int K, int roi_sz, int sw, int n_win) {
  ioupos_swinunetr_config cfg;
  ioupos_seg_predictor pr;
  ioupos_params p;
  ioupos_swinunetr tmp;
  ioupos_mem_estimate e;
  ioupos_rng r;
  const ioupos_backend *be = counting_backend();
  const int roi[3] = {roi_sz, roi_sz, 0};
  int h = roi_sz, w = roi_sz * n_win, rc; /* overlap 0: n_win windows side by side */
  float *img, *logits;
  uint64_t peak, use, a1;
  ioupos_swinunetr_config_default(&cfg, 2);
  cfg.enc.embed_dim = C;
  cfg.out_channels = K;
  rc = ioupos_swinunetr_infer_bytes(&cfg, roi, sw, &e);
  CHECK(rc == 0, "%s: estimate failed: %s", what, ioupos_failure_reason());
  ioupos_rng_seed(&r, 13);
  img = rnd((size_t)h * w, &r);
  logits = (float *)malloc(sizeof(float) * (size_t)K * h * w);
  memset(&p, 0, sizeof p);
  cnt_reset();
  rc = ioupos_swinunetr_init(&tmp, &cfg, &p.table, "");
  if (rc == 0) rc = ioupos_params_alloc(&p, be, 0);
  if (rc == 0) rc = ioupos_params_init(&p, &r);
  if (rc == 0) rc = ioupos_swin_encoder_buffers(&tmp.enc, &p);
  if (rc == 0) rc = ioupos_seg_predictor_init(&pr, &cfg, &p, roi, 0.0, sw);
  CHECK(rc == 0, "%s: init: %s", what, ioupos_failure_reason());
  if (rc == 0) {
    rc = ioupos_seg_predict(&pr, logits, img, h, w);
    peak = cnt_peak, use = cnt_in_use, a1 = cnt_allocs;
    rc |= ioupos_seg_predict(&pr, logits, img, h, w);
    CHECK(rc == 0, "%s: predict: %s", what, ioupos_failure_reason());
    compare(what, &e, peak, use, a1, cnt_allocs);
    ioupos_seg_predictor_free(&pr);
  }
  ioupos_params_free(&p);
  CHECK(cnt_in_use == 0, "%s: %llu bytes left after free", what, (unsigned long long)cnt_in_use);
  free(img);
  free(logits);
}

/* ---- 3D inference: the predictor is 2D today, so its allocations are made here as it makes
   them (parameters without gradients, the staging buffer of IOUPOS_SEG_MODEL_BATCH windows, an
   instance planned for full chunks and one for the remainder) with one eval forward each ---- */
static void case_infer3d(const char *what, int C, int K, const int *roi, int sw) {
  ioupos_swinunetr_config cfg;
  ioupos_swinunetr m[2];
  ioupos_params p;
  ioupos_mem_estimate e;
  ioupos_rng r;
  const ioupos_backend *be = counting_backend();
  size_t vol = prod(3, roi);
  int c1 = sw < IOUPOS_SEG_MODEL_BATCH ? sw : IOUPOS_SEG_MODEL_BATCH, k, rc;
  float *hx, *x = NULL;
  uint64_t peak, use, a1;
  ioupos_swinunetr_config_default(&cfg, 3);
  cfg.enc.embed_dim = C;
  cfg.out_channels = K;
  rc = ioupos_swinunetr_infer_bytes(&cfg, roi, sw, &e);
  CHECK(rc == 0, "%s: estimate failed: %s", what, ioupos_failure_reason());
  ioupos_rng_seed(&r, 17);
  hx = rnd(vol * IOUPOS_SEG_MODEL_BATCH, &r);
  memset(&p, 0, sizeof p);
  memset(m, 0, sizeof m);
  cnt_reset();
  rc = ioupos_swinunetr_init(&m[0], &cfg, &p.table, "");
  if (rc == 0) {
    ioupos_tensor_table tt;
    memset(&tt, 0, sizeof tt);
    rc = ioupos_swinunetr_init(&m[1], &cfg, &tt, "");
    ioupos_tensor_table_free(&tt);
  }
  if (rc == 0) rc = ioupos_params_alloc(&p, be, 0);
  if (rc == 0) rc = ioupos_params_init(&p, &r);
  if (rc == 0) rc = ioupos_swin_encoder_buffers(&m[0].enc, &p);
  if (rc == 0) x = (float *)be->alloc((size_t)IOUPOS_SEG_MODEL_BATCH * vol * sizeof(float));
  CHECK(rc == 0 && x, "%s: init: %s", what, ioupos_failure_reason());
  for (k = 0; rc == 0 && k < (c1 > 1 ? 2 : 1); ++k) {
    rc = ioupos_swinunetr_plan(&m[k], &p, c1 - k, roi);
    if (rc == 0) {
      be->upload(x, hx, (size_t)(c1 - k) * vol * sizeof(float));
      rc = ioupos_swinunetr_forward(&m[k], &p, x, 0, NULL);
    }
  }
  CHECK(rc == 0, "%s: forward: %s", what, ioupos_failure_reason());
  peak = cnt_peak, use = cnt_in_use, a1 = cnt_allocs;
  compare(what, &e, peak, use, a1, a1);
  be->release(x);
  ioupos_swinunetr_free(&m[0]);
  ioupos_swinunetr_free(&m[1]);
  ioupos_params_free(&p);
  CHECK(cnt_in_use == 0, "%s: %llu bytes left after free", what, (unsigned long long)cnt_in_use);
  free(hx);
}


/* ---- the loader: ioupos_loader_bytes against the host bytes ioupos_loader_open allocates
   (counted by IOUPOS_MALLOC), exactly, for the same reason as the steps. Without workers, so no
   thread allocates beside the measurement; open reads no image, so the paths need not exist. */
static void case_loader(const char *what, int dims, int kind, int batch, int crop, int n_local,
                        int lcrop, int num_samples) {
  ioupos_dataset ds;
  ioupos_loader ld;
  ioupos_loader_config lc;
  char *names[12], buf[12][32];
  uint64_t est = 0, cache = 0, before, after;
  int i, rc, d;
  for (i = 0; i < 12; ++i) {
    snprintf(buf[i], sizeof buf[i], dims == 3 ? "v%02d.nii.gz" : "s%02d.png", i);
    names[i] = buf[i];
  }
  ds.n = 12;
  ds.images = names;
  ds.labels = kind == IOUPOS_LOADER_FINETUNE ? names : NULL;
  ds.spatial_dims = dims;
  ioupos_loader_config_default(&lc, &ds, kind);
  lc.spatial_dims = dims;
  lc.batch_size = batch;
  for (d = 0; d < 3; ++d) {
    lc.crop[d] = crop;
    lc.local_crop[d] = lcrop;
  }
  lc.n_local = n_local;
  lc.num_samples = num_samples;
  lc.num_workers = 0;
  rc = ioupos_loader_bytes(&lc, ds.n, &est, &cache);
  CHECK(rc == 0 && est > 0, "%s: estimate failed: %s", what, ioupos_failure_reason());
  CHECK(cache == (dims == 3 ? (uint64_t)lc.cache_bytes : 0), "%s: cache %llu", what,
        (unsigned long long)cache);
  before = host_in_use;
  rc = ioupos_loader_open(&ld, &lc);
  after = host_in_use;
  CHECK(rc == 0, "%s: open: %s", what, ioupos_failure_reason());
  if (rc == 0) {
    printf("  %-46s measured %12llu B, estimated %12llu B (%s)\n", what,
           (unsigned long long)(after - before), (unsigned long long)est,
           after - before == est ? "exact" : "DIFFERENT");
    CHECK(after - before == est, "%s: open allocated %llu host bytes, estimated %llu", what,
          (unsigned long long)(after - before), (unsigned long long)est);
    ioupos_loader_close(&ld);
  }
  /* the formula's scaling with workers: 2 per worker slots by default, prefetch otherwise */
  {
    uint64_t e2 = 0, e3 = 0, slot, wk;
    lc.num_workers = 2;
    ioupos_loader_bytes(&lc, ds.n, &e2, NULL);
    lc.num_workers = 3;
    ioupos_loader_bytes(&lc, ds.n, &e3, NULL);
    /* 3 workers: 2 more slots and 1 more context than 2 workers */
    slot = 0, wk = 0;
    lc.prefetch = 5;
    {
      uint64_t e5 = 0, e6 = 0;
      ioupos_loader_bytes(&lc, ds.n, &e5, NULL);
      lc.prefetch = 6;
      ioupos_loader_bytes(&lc, ds.n, &e6, NULL);
      slot = e6 - e5;
    }
    wk = e3 - e2 - 2 * slot;
    CHECK(slot > 0 && wk > 0 && wk < slot + 1 + (uint64_t)4 * crop * crop * (dims == 3 ? crop : 1) * 4 +
                                        (uint64_t)ds.n * 4 + 4096,
          "%s: slot %llu, worker %llu bytes", what, (unsigned long long)slot,
          (unsigned long long)wk);
  }
}

/* A run's options to its estimate: ioupos_pretrain_step_bytes is its method's model estimate
   (plus the 3D cache budget, host), ioupos_finetune_step_bytes the training step with the
   validation's sliding window beside it (its parameters and host part not counted twice), or
   the sliding window alone when nothing is trained. */
static int same_mem(const ioupos_mem_estimate *a, const ioupos_mem_estimate *b) {
  return a->params == b->params && a->grads == b->grads && a->optimiser == b->optimiser &&
         a->activations == b->activations && a->workspace == b->workspace &&
         a->inputs == b->inputs && a->host == b->host && a->device == b->device &&
         a->total == b->total;
}

static void case_run_opts(void) {
  ioupos_pretrain_opts po;
  ioupos_finetune_opts fo;
  ioupos_simsiam_config sc;
  ioupos_dino_config dc;
  ioupos_swinunetr_config uc;
  ioupos_mem_estimate got, want, inf;
  int k, sh[3];
  printf("a run's options (ioupos_pretrain_step_bytes, ioupos_finetune_step_bytes):\n");
  ioupos_pretrain_opts_default(&po, IOUPOS_SSL_SIMSIAM);
  po.enc.embed_dim = 12, po.batch_size = 2, po.proj_hidden = 64, po.proj_out = 32;
  po.pred_hidden = 16, po.crop[0] = po.crop[1] = 32;
  sc.enc = po.enc, sc.proj_hidden = 64, sc.proj_out = 32, sc.pred_hidden = 16;
  sh[0] = sh[1] = 32, sh[2] = 1;
  CHECK(ioupos_pretrain_step_bytes(&po, &got) == 0 &&
        ioupos_simsiam_step_bytes(&sc, 2, sh, &want) == 0 && same_mem(&got, &want),
        "SimSiam 2D options: %llu bytes, the model's estimate %llu",
        (unsigned long long)got.total, (unsigned long long)want.total);
  /* 3D: the volume cache's budget on top, on the host */
  ioupos_pretrain_opts_default(&po, IOUPOS_SSL_DINO);
  ioupos_swin_config_default(&po.enc, 3);
  po.enc.embed_dim = 12, po.batch_size = 1, po.n_local = 2, po.hidden = 32, po.bottleneck = 16;
  po.out_dim = 40, po.cache_bytes = 5u << 20;
  for (k = 0; k < 3; ++k) po.crop[k] = 16, po.local_crop[k] = 8, sh[k] = 16;
  ioupos_dino_config_default(&dc, 3);
  dc.enc = po.enc, dc.hidden = 32, dc.bottleneck = 16, dc.out_dim = 40;
  dc.norm_last_layer = po.norm_last_layer;
  {
    const int l3[3] = {8, 8, 8};
    CHECK(ioupos_pretrain_step_bytes(&po, &got) == 0 &&
          ioupos_dino_step_bytes(&dc, 1, sh, 2, l3, &want) == 0 &&
          got.host == want.host + (5u << 20) && got.total == want.total + (5u << 20) &&
          got.device == want.device,
          "DINO 3D options: %llu bytes, the model's %llu + the 5 MiB cache",
          (unsigned long long)got.total, (unsigned long long)want.total);
  }
  /* fine-tuning, 2D: evaluation only, then training with validation */
  ioupos_finetune_opts_default(&fo);
  fo.enc.embed_dim = 12, fo.n_classes = 4, fo.crop = 32, fo.sw_batch_size = 2;
  fo.batch_size = 2, fo.n_crops_per_ct = 2, fo.n_epochs = 0;
  ioupos_swinunetr_config_default(&uc, 2);
  uc.enc = fo.enc, uc.out_channels = 4;
  sh[0] = sh[1] = 32, sh[2] = 1;
  CHECK(ioupos_finetune_step_bytes(&fo, &got) == 0 &&
        ioupos_swinunetr_infer_bytes(&uc, sh, 2, &inf) == 0 && same_mem(&got, &inf),
        "fine-tuning, n_epochs 0: %llu bytes, the sliding window's %llu",
        (unsigned long long)got.total, (unsigned long long)inf.total);
  fo.n_epochs = 1;
  CHECK(ioupos_finetune_step_bytes(&fo, &got) == 0 &&
        ioupos_swinunetr_step_bytes(&uc, 4, sh, &want) == 0 &&
        got.params == want.params && got.host == want.host &&
        got.total == want.total + inf.total - inf.params - inf.host,
        "fine-tuning, training: %llu bytes, the step's %llu + the window's %llu less its "
        "parameters and host part", (unsigned long long)got.total,
        (unsigned long long)want.total, (unsigned long long)inf.total);
}

static void case_errors(void) {
  ioupos_simsiam_config sc;
  ioupos_dino_config dc;
  ioupos_swinunetr_config uc;
  ioupos_mem_estimate e, small, big;
  const int s96[3] = {96, 96, 96}, s40[3] = {40, 40, 40}, s48[3] = {48, 48, 48};
  ioupos_simsiam_config_default(&sc, 2);
  ioupos_dino_config_default(&dc, 3);
  ioupos_swinunetr_config_default(&uc, 3);
  memset(&e, 0xff, sizeof e);
  CHECK(ioupos_simsiam_step_bytes(&sc, 1, s96, &e) == IOUPOS_EINVAL && e.total == 0,
        "SimSiam batch 1 accepted (batch norm needs 2)");
  CHECK(ioupos_simsiam_step_bytes(&sc, 2, s96, NULL) == IOUPOS_EINVAL, "NULL out accepted");
  {
    const int s0[3] = {0, 96, 96};
    memset(&e, 0xff, sizeof e);
    CHECK(ioupos_simsiam_step_bytes(&sc, 2, s0, &e) == IOUPOS_EINVAL && e.total == 0 &&
              e.params == 0, "a view of size 0 accepted");
  }
  sc.enc.num_heads[1] = 5;
  CHECK(ioupos_simsiam_step_bytes(&sc, 2, s96, &e) == IOUPOS_EINVAL, "5 heads of width 96 accepted");
  memset(&e, 0xff, sizeof e);
  CHECK(ioupos_swinunetr_step_bytes(&uc, 1, s40, &e) == IOUPOS_EINVAL && e.total == 0,
        "SwinUNETR crop 40 (not a multiple of 32) accepted");
  CHECK(ioupos_swinunetr_infer_bytes(&uc, s40, 4, &e) == IOUPOS_EINVAL, "roi 40 accepted");
  CHECK(ioupos_swinunetr_infer_bytes(&uc, s96, 0, &e) == IOUPOS_EINVAL, "sw_batch 0 accepted");
  CHECK(ioupos_dino_step_bytes(&dc, 2, s96, -1, s48, &e) == IOUPOS_EINVAL, "-1 local views");
  CHECK(ioupos_dino_step_bytes(&dc, 2, s96, 2, NULL, &e) == IOUPOS_EINVAL, "NULL local shape");
  /* monotone: more batch, more activations; parameters unchanged */
  ioupos_swinunetr_step_bytes(&uc, 1, s96, &small);
  ioupos_swinunetr_step_bytes(&uc, 2, s96, &big);
  CHECK(big.activations > small.activations && big.params == small.params &&
            big.total > small.total, "batch 2 does not cost more than batch 1");
  /* DINO with local views costs more than without */
  ioupos_dino_step_bytes(&dc, 2, s96, 0, NULL, &small);
  ioupos_dino_step_bytes(&dc, 2, s96, 2, s48, &big);
  CHECK(big.activations > small.activations && big.params == small.params,
        "local views cost nothing");
  /* the largest part's name */
  memset(&e, 0, sizeof e);
  e.optimiser = 5;
  e.host = 4;
  CHECK(strcmp(ioupos_mem_largest_part(&e), "optimiser") == 0, "largest part %s",
        ioupos_mem_largest_part(&e));
  e.host = 6;
  CHECK(strcmp(ioupos_mem_largest_part(&e), "host") == 0, "largest part %s",
        ioupos_mem_largest_part(&e));
  CHECK(ioupos_swinunetr_step_bytes(&uc, 2, s96, &e) == 0 &&
            strcmp(ioupos_mem_largest_part(&e), "activations") == 0,
        "a 96^3 SwinUNETR step is not dominated by its activations (%s)",
        ioupos_mem_largest_part(&e));
}

static void case_ram(void) {
  uint64_t phys = ioupos_mem_physical_bytes(), avail = ioupos_mem_available_bytes(),
           lim = ioupos_mem_default_limit_bytes();
  printf("  RAM: physical %.2f GiB, available %.2f GiB, default limit %.2f GiB\n",
         phys / 1073741824.0, avail / 1073741824.0, lim / 1073741824.0);
  /* this test runs on Linux / POSIX systems, which all report their RAM */
  CHECK(phys >= (uint64_t)64 << 20, "physical memory %llu bytes", (unsigned long long)phys);
  CHECK(avail > 0 && avail <= phys, "available %llu of %llu bytes", (unsigned long long)avail,
        (unsigned long long)phys);
  CHECK(lim == phys / 10 * 9, "default limit %llu, physical %llu", (unsigned long long)lim,
        (unsigned long long)phys);
}

static void published(void) {
  ioupos_simsiam_config sc;
  ioupos_dino_config dc;
  ioupos_swinunetr_config uc;
  ioupos_mem_estimate e;
  const int s96[3] = {96, 96, 96}, s48[3] = {48, 48, 48};
  printf("published scale (for the record):\n");
  ioupos_simsiam_config_default(&sc, 2);
  CHECK(ioupos_simsiam_step_bytes(&sc, 128, s96, &e) == 0, "SimSiam 2D published");
  print_est("SimSiam 2D C 48, batch 128, 96^2", &e);
  ioupos_simsiam_config_default(&sc, 3);
  CHECK(ioupos_simsiam_step_bytes(&sc, 2, s96, &e) == 0, "SimSiam 3D");
  print_est("SimSiam 3D C 48, batch 2, 96^3", &e);
  ioupos_dino_config_default(&dc, 2);
  CHECK(ioupos_dino_step_bytes(&dc, 128, s96, 6, s48, &e) == 0, "DINO 2D");
  print_est("DINO 2D C 48, batch 128, 96^2 + 6 x 48^2", &e);
  ioupos_swinunetr_config_default(&uc, 2);
  CHECK(ioupos_swinunetr_step_bytes(&uc, 64, s96, &e) == 0, "SwinUNETR 2D");
  print_est("SwinUNETR 2D C 48, batch 64 (32 x 2), 96^2", &e);
  ioupos_swinunetr_config_default(&uc, 3);
  CHECK(ioupos_swinunetr_step_bytes(&uc, 2, s96, &e) == 0, "SwinUNETR 3D");
  print_est("SwinUNETR 3D C 48, batch 2, 96^3", &e);
  CHECK(e.total > ((uint64_t)4 << 30), "a 96^3 batch-2 step estimated under 4 GiB");
  CHECK(ioupos_swinunetr_infer_bytes(&uc, s96, 4, &e) == 0, "sliding window 3D");
  print_est("sliding window 3D C 48, roi 96^3, sw_batch 4", &e);
}

int main(void) {
  const int s2a[2] = {64, 48}, s2b[2] = {40, 36}, s3a[3] = {24, 20, 16}, s3b[3] = {24, 20, 16};
  const int l2[2] = {24, 20}, l3[3] = {12, 12, 8};
  const int u2[2] = {64, 96}, u2b[2] = {32, 64}, u3[3] = {32, 32, 32}, r3[3] = {32, 32, 32};
  printf("measured (counting CPU backend) vs estimated:\n");
  case_simsiam("SimSiam 2D C 12 batch 4 64x48", 2, 12, 4, s2a);
  case_simsiam("SimSiam 2D C 48 batch 2 40x36", 2, 48, 2, s2b);
  case_simsiam("SimSiam 3D C 12 batch 2 24x20x16", 3, 12, 2, s3a);
  case_dino("DINO 2D C 12 batch 2 40x36 + 3 x 24x20", 2, 12, 2, s2b, 3, l2);
  case_dino("DINO 2D C 12 batch 3 40x36, no locals", 2, 12, 3, s2b, 0, NULL);
  case_dino("DINO 3D C 12 batch 1 24x20x16 + 2 x 12x12x8", 3, 12, 1, s3b, 2, l3);
  case_unetr("SwinUNETR step 2D C 12 K 5 batch 2 64x96", 2, 12, 5, 2, u2);
  case_unetr("SwinUNETR step 2D C 48 K 14 batch 1 32x64", 2, 48, 14, 1, u2b);
  case_unetr("SwinUNETR step 3D C 12 K 4 batch 1 32^3", 3, 12, 4, 1, u3);
  case_infer2d("sliding window 2D C 12 roi 32 sw 4, 7 windows", 12, 5, 32, 4, 7);
  case_infer2d("sliding window 2D C 12 roi 64 sw 2, 3 windows", 12, 3, 64, 2, 3);
  case_infer2d("sliding window 2D C 12 roi 32 sw 1, 2 windows", 12, 3, 32, 1, 2);
  case_infer2d("sliding window 2D C 12 roi 32 sw 9, 7 windows", 12, 3, 32, 9, 7);
  case_infer3d("sliding window 3D C 12 roi 32^3 sw 2 (plans)", 12, 4, r3, 2);
  case_loader("loader 2D SSL batch 8 96^2", 2, IOUPOS_LOADER_SSL, 8, 96, 0, 48, 1);
  case_loader("loader 2D SSL batch 8 96^2 + 4 x 48^2", 2, IOUPOS_LOADER_SSL, 8, 96, 4, 48, 1);
  case_loader("loader 2D fine-tuning batch 8 x 2 crops 96^2", 2, IOUPOS_LOADER_FINETUNE, 8, 96, 0,
              48, 2);
  case_loader("loader 3D SSL batch 2 48^3 + 2 x 24^3", 3, IOUPOS_LOADER_SSL, 2, 48, 2, 24, 1);
  case_loader("loader 3D fine-tuning batch 2 x 2 crops 48^3", 3, IOUPOS_LOADER_FINETUNE, 2, 48, 0,
              24, 2);
  case_run_opts();
  case_errors();
  case_ram();
  published();
  return tu_finish("test_memory");
}
