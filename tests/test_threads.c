/* tests/test_threads.c — results do not depend on the OpenMP thread count, and the SIMD paths
   (this test is built like the benches and drivers: -mavx2 -mfma when the CPU has them, and
   -fopenmp) agree with the references:
     1. the swin2d and swin3d fixture encoders (tests/fixtures/model/, see tests/test_model.c):
        forward + backward of L = sum_k <out_k, R_k> on 1, 2 and 3 threads give bit-identical
        stage outputs, feature, parameter gradients and input gradient; and those agree with the
        MONAI float64 reference within tests/test_model.c's tolerances;
     2. a C=48 encoder (the research width, window 7, heads 3-6-12-24) on 3 x 1 x 72 x 60 in
        train mode with drop-path 0.1 (padding, shifted and shrunk windows in every stage):
        forward + backward from dfeature on 1, 2 and 3 threads, bit-identical;
     3. window attention with head dim 16 (the direct kernels' unpadded path, the research
        shapes: 49 tokens, 3 heads, shifted-window mask) against a float64 reference, forward
        and every gradient;
     4. GELU: forward within 1 ulp of the float64 erf formula for x > -5.5 (below, that formula
        loses its relative precision to 1 + erf cancelling), the derivative within 1 ulp where
        it is not near its zero (x ~ -0.75); and the MLP backward that recomputes GELU(h_pre)
        (h_act NULL, as the encoder calls it) equals the one given the forward's h_act, bit for
        bit.
     5. without memory for their partial sums, the layer norm backward and the bias gradient
        take their serial fallbacks and give the same bits; the window attention reports
        IOUPOS_ENOMEM.
   Built with -DIOUPOS_PAR_MIN_WORK=64, so that even the fixtures' small tensors take the
   parallel loops. Without OpenMP, 1 is the only thread count and part 1-2 compare runs only. */
#include <stdlib.h>
/* an allocator that can be told to fail (part 5) */
static int tt_fail;
static void *tt_malloc(size_t n) { return tt_fail ? NULL : malloc(n); }
#define IOUPOS_MALLOC(sz) tt_malloc(sz)
#define IOUPOS_FREE(p) free(p)
#define IOUPOS_IMPLEMENTATION
#include "ioupos.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "tests/test_util.h"

#define FIXDIR "tests/fixtures/model/"

static void set_threads(int n) {
#ifdef _OPENMP
  omp_set_num_threads(n);
#else
  (void)n;
#endif
}

static float *st_get(const ioupos_st_file *f, const char *name, size_t *n) {
  const ioupos_st_tensor *t = ioupos_safetensors_find(f, name);
  float *x;
  size_t k;
  if (!t) {
    CHECK(0, "fixture tensor '%s' missing", name);
    return NULL;
  }
  k = t->nbytes / ioupos_st_dtype_size(t->dtype);
  x = (float *)calloc(k ? k : 1, sizeof(float));
  if (ioupos_st_to_f32(t, x) != 0) CHECK(0, "fixture tensor '%s' is not a float", name);
  if (n) *n = k;
  return x;
}

/* worst |got - ref| against atol + rtol |ref|; returns the count out of tolerance */
static long compare(const char *label, const float *got, const float *ref, size_t n, double atol,
                    double rtol) {
  size_t i, worst = 0;
  long bad = 0;
  double wr = -1.0;
  for (i = 0; i < n; ++i) {
    double d = fabs((double)got[i] - ref[i]), tol = atol + rtol * fabs(ref[i]);
    if (!(d <= tol)) ++bad;
    if (!(d / tol <= wr)) {
      wr = d / tol;
      worst = i;
    }
  }
  if (bad)
    printf("  %-44s worst |d| %.3g at %zu (ref %.6g, got %.6g) = %.2f of tolerance  FAIL\n", label,
           n ? fabs((double)got[worst] - ref[worst]) : 0.0, worst, n ? ref[worst] : 0.0,
           n ? got[worst] : 0.0, wr);
  return bad;
}

static double maxabs(const float *x, size_t n) {
  double m = 0.0;
  size_t i;
  for (i = 0; i < n; ++i)
    if (fabs(x[i]) > m) m = fabs(x[i]);
  return m;
}

/* channels-first [B, C, S] -> channels-last [B, S, C] */
static void to_last(float *dst, const float *src, int B, int C, size_t S) {
  int b, c;
  size_t s;
  for (b = 0; b < B; ++b)
    for (c = 0; c < C; ++c)
      for (s = 0; s < S; ++s) dst[((size_t)b * S + s) * C + c] = src[((size_t)b * C + c) * S + s];
}

/* One forward + backward; returns every result concatenated: stage outputs 0..4, the feature,
   the parameter gradients, dx. drop-path draws from seed when train. */
static float *run_encoder(ioupos_swin_encoder *e, ioupos_params *p, const float *x, int train,
                          uint64_t seed, float *const *dout, const float *dfeature, size_t nx,
                          size_t *len) {
  ioupos_rng rng;
  size_t n = 0, sz[6];
  float *all, *dx = (float *)calloc(nx, sizeof(float));
  int rc, s;
  ioupos_rng_seed(&rng, seed);
  memset(p->grad, 0, p->table.total * sizeof(float));
  rc = ioupos_swin_encoder_forward(e, p, x, train, &rng);
  CHECK(rc == 0, "forward: %s", ioupos_failure_reason());
  rc = ioupos_swin_encoder_backward(e, p, (const float *const *)dout, dfeature, dx);
  CHECK(rc == 0, "backward: %s", ioupos_failure_reason());
  for (s = 0; s < 5; ++s) sz[s] = e->ntok[s] * (size_t)(e->cfg.embed_dim << s);
  sz[5] = (size_t)e->batch * 16 * (size_t)e->cfg.embed_dim;
  for (s = 0; s < 6; ++s) n += sz[s];
  n += p->table.total + nx;
  all = (float *)malloc(n * sizeof(float));
  n = 0;
  for (s = 0; s < 6; ++s) {
    memcpy(all + n, s < 5 ? ioupos_swin_encoder_output(e, s) : ioupos_swin_encoder_feature(e),
           sz[s] * sizeof(float));
    n += sz[s];
  }
  memcpy(all + n, p->grad, p->table.total * sizeof(float));
  n += p->table.total;
  memcpy(all + n, dx, nx * sizeof(float));
  n += nx;
  free(dx);
  *len = n;
  return all;
}

/* runs on 1, 2, 3 threads must agree bit for bit; returns the 1-thread run */
static float *runs_agree(const char *label, ioupos_swin_encoder *e, ioupos_params *p,
                         const float *x, int train, float *const *dout, const float *dfeature,
                         size_t nx, size_t *len) {
  float *first = NULL;
  size_t n0 = 0;
  int t;
  for (t = 1; t <= 3; ++t) {
    size_t n;
    float *r;
    set_threads(t);
    r = run_encoder(e, p, x, train, 11, dout, dfeature, nx, &n);
    if (t == 1) {
      first = r;
      n0 = n;
    } else {
      size_t i, ndiff = 0, at = 0;
      for (i = 0; i < n && n == n0; ++i)
        if (memcmp(&r[i], &first[i], sizeof(float)) != 0) {
          if (!ndiff) at = i;
          ++ndiff;
        }
      CHECK(n == n0 && ndiff == 0, "%s: %d threads differ from 1 thread at %zu of %zu values "
            "(first at %zu: %.9g vs %.9g)", label, t, ndiff, n, at, ndiff ? r[at] : 0.0,
            ndiff ? first[at] : 0.0);
      if (n == n0 && ndiff == 0) printf("  %s: %d threads bit-identical to 1 (%zu values)\n", label, t, n);
      free(r);
    }
  }
  set_threads(1);
  *len = n0;
  return first;
}

static void swin_cfg(ioupos_swin_config *c, int nd) {
  ioupos_swin_config_default(c, nd);
  c->embed_dim = 6;
  c->drop_path_rate = 0.0f;
  if (nd == 3) c->window[0] = c->window[1] = c->window[2] = 3;
}

/* ---- 1. the fixture encoders ---------------------------------------------------------------- */
static void test_fixture(const char *name, int nd) {
  char path[256];
  ioupos_swin_config cfg;
  ioupos_swin_encoder enc;
  ioupos_params p;
  ioupos_st_file io, wf;
  int B = 2, shape[3] = {1, 1, 1}, k, rc, d, nl = 0, no = 0;
  size_t n, nx, len, off = 0, S, i;
  float *x, *dout[5], *all, *ref, *tmp;
  const int64_t *xs;
  printf("%s fixture:\n", name);
  memset(&p, 0, sizeof p);
  swin_cfg(&cfg, nd);
  rc = ioupos_swin_encoder_init(&enc, &cfg, &p.table, "");
  CHECK(rc == 0, "init: %s", ioupos_failure_reason());
  rc = ioupos_params_alloc(&p, ioupos_backend_cpu(), 1);
  CHECK(rc == 0, "alloc");
  snprintf(path, sizeof path, FIXDIR "%s_io.safetensors", name);
  rc = ioupos_safetensors_read(path, &io);
  CHECK(rc == 0, "read %s: %s", path, ioupos_failure_reason());
  if (rc) return;
  xs = ioupos_safetensors_find(&io, "x")->shape;
  for (d = 0; d < nd; ++d) shape[d] = (int)xs[2 + d];
  rc = ioupos_swin_encoder_plan(&enc, &p, B, shape);
  CHECK(rc == 0, "plan: %s", ioupos_failure_reason());
  snprintf(path, sizeof path, FIXDIR "%s_weights.safetensors", name);
  rc = ioupos_safetensors_read(path, &wf);
  CHECK(rc == 0, "read weights");
  if (rc) return;
  rc = ioupos_params_load(&p, &wf, "", "", &nl, &no);
  CHECK(rc == 0, "load: %s", ioupos_failure_reason());
  ioupos_safetensors_free(&wf);
  x = st_get(&io, "x", &nx);
  for (k = 0; k < 5; ++k) {
    char nm[8];
    int C = cfg.embed_dim << k;
    snprintf(nm, sizeof nm, "R%d", k);
    ref = st_get(&io, nm, &n);
    dout[k] = (float *)calloc(n, sizeof(float));
    to_last(dout[k], ref, B, C, n / (size_t)B / (size_t)C);
    free(ref);
  }
  all = runs_agree(name, &enc, &p, x, 0, dout, NULL, nx, &len);
  /* against the reference, with tests/test_model.c's tolerances */
  for (k = 0; k <= 5; ++k) {
    char nm[16];
    int C = k < 5 ? cfg.embed_dim << k : 16 * cfg.embed_dim;
    if (k < 5) snprintf(nm, sizeof nm, "out%d", k);
    else snprintf(nm, sizeof nm, "feature");
    ref = st_get(&io, nm, &n);
    S = n / (size_t)B / (size_t)C;
    tmp = (float *)calloc(n, sizeof(float));
    to_last(tmp, ref, B, C, S);
    CHECK(compare(nm, all + off, tmp, n, 3e-5, 3e-5) == 0, "%s %s against the reference", name, nm);
    off += n;
    free(tmp);
    free(ref);
  }
  {
    int nbad = 0, ti;
    for (ti = 0; ti < p.table.n; ++ti) {
      const ioupos_tensor_info *t = &p.table.t[ti];
      char nm[160];
      if (t->dtype != IOUPOS_ST_F32) continue;
      snprintf(nm, sizeof nm, "grad.%s", t->name);
      ref = st_get(&io, nm, &n);
      if (ref && n == t->numel &&
          compare(nm, all + off + t->offset, ref, n, 2e-5 * maxabs(ref, n), 1e-4))
        ++nbad;
      free(ref);
    }
    CHECK(nbad == 0, "%s: %d parameter gradients out of tolerance", name, nbad);
    off += p.table.total;
  }
  ref = st_get(&io, "dx", &n);
  CHECK(n == nx && compare("dx", all + off, ref, n, 2e-5 * maxabs(ref, n), 1e-4) == 0, "%s dx", name);
  free(ref);
  for (i = 0; i < 5; ++i) free(dout[i]);
  free(all);
  free(x);
  ioupos_safetensors_free(&io);
  ioupos_swin_encoder_free(&enc);
  ioupos_params_free(&p);
}

/* ---- 2. the research width, train mode ------------------------------------------------------ */
static void test_c48(void) {
  ioupos_swin_config cfg;
  ioupos_swin_encoder enc;
  ioupos_params p;
  ioupos_rng rng;
  int B = 3, shape[2] = {72, 60}, rc;
  size_t nx = (size_t)B * 72 * 60, nf, i, len;
  float *x, *df, *all;
  printf("C=48 encoder, 3 x 1 x 72 x 60, train, drop-path 0.1:\n");
  memset(&p, 0, sizeof p);
  ioupos_swin_config_default(&cfg, 2);
  rc = ioupos_swin_encoder_init(&enc, &cfg, &p.table, "");
  if (!rc) rc = ioupos_params_alloc(&p, ioupos_backend_cpu(), 1);
  ioupos_rng_seed(&rng, 4);
  if (!rc) rc = ioupos_params_init(&p, &rng);
  if (!rc) rc = ioupos_swin_encoder_plan(&enc, &p, B, shape);
  CHECK(rc == 0, "setup: %s", ioupos_failure_reason());
  if (rc) return;
  nf = (size_t)B * 16 * 48;
  x = (float *)malloc(nx * sizeof(float));
  df = (float *)malloc(nf * sizeof(float));
  for (i = 0; i < nx; ++i) x[i] = (float)ioupos_rng_uniform(&rng);
  for (i = 0; i < nf; ++i) df[i] = (float)ioupos_rng_uniform(&rng) - 0.5f;
  all = runs_agree("C=48 train", &enc, &p, x, 1, NULL, df, nx, &len);
  {
    int finite = 1;
    for (i = 0; i < len; ++i)
      if (!(all[i] == all[i]) || fabs(all[i]) > 1e30) finite = 0;
    CHECK(finite, "C=48: non-finite results");
  }
  free(all);
  free(x);
  free(df);
  ioupos_swin_encoder_free(&enc);
  ioupos_params_free(&p);
}

/* ---- 3. window attention at head dim 16 against float64 ------------------------------------ */
static void test_attention_hd16(void) {
  const int C = 48, NH = 3, hd = 16, C3 = 144, size[2] = {14, 14}, win[2] = {7, 7}, sh[2] = {3, 3};
  ioupos_swin_geom g;
  ioupos_rng rng;
  int BW, N, rows, *index, i, j, b, h, d, c, t, o, st;
  float *x, *qw, *qb, *pw, *pb, *tab, *mask, *out, *acts, *scratch, *G;
  float *dx, *dqw, *dqb, *dpw, *dpb, *dtab;
  double *qkv, *P, *y, *rout, *dy, *dqkv, *rdx, *rdqw, *rdqb, *rdpw, *rdpb, *rdtab, scale;
  printf("window attention, head dim 16:\n");
  ioupos_swin_geom_init(&g, 2, 1, size, win, sh);
  BW = g.nwin, N = g.ntok, rows = ioupos_swin_table_rows(&g);
  scale = 1.0 / sqrt((double)hd);
  ioupos_rng_seed(&rng, 9);
  index = (int *)malloc(sizeof(int) * (size_t)N * N);
  ioupos_swin_relative_index(index, &g);
  mask = (float *)malloc(sizeof(float) * (size_t)g.nwin * N * N);
  ioupos_swin_attn_mask(mask, &g);
  x = (float *)malloc(sizeof(float) * (size_t)BW * N * C);
  qw = (float *)malloc(sizeof(float) * C3 * C);
  qb = (float *)malloc(sizeof(float) * C3);
  pw = (float *)malloc(sizeof(float) * C * C);
  pb = (float *)malloc(sizeof(float) * C);
  tab = (float *)malloc(sizeof(float) * (size_t)rows * NH);
  G = (float *)malloc(sizeof(float) * (size_t)BW * N * C);
  for (i = 0; i < BW * N * C; ++i) x[i] = (float)ioupos_rng_uniform(&rng) * 2 - 1;
  for (i = 0; i < C3 * C; ++i) qw[i] = ((float)ioupos_rng_uniform(&rng) * 2 - 1) * 0.3f;
  for (i = 0; i < C3; ++i) qb[i] = ((float)ioupos_rng_uniform(&rng) * 2 - 1) * 0.1f;
  for (i = 0; i < C * C; ++i) pw[i] = ((float)ioupos_rng_uniform(&rng) * 2 - 1) * 0.15f;
  for (i = 0; i < C; ++i) pb[i] = ((float)ioupos_rng_uniform(&rng) * 2 - 1) * 0.1f;
  for (i = 0; i < rows * NH; ++i) tab[i] = ((float)ioupos_rng_uniform(&rng) * 2 - 1) * 0.5f;
  for (i = 0; i < BW * N * C; ++i) G[i] = (float)ioupos_rng_uniform(&rng) * 2 - 1;
  out = (float *)calloc((size_t)BW * N * C, sizeof(float));
  acts = (float *)calloc(ioupos_window_attention_acts_size(BW, N, C, NH), sizeof(float));
  scratch = (float *)calloc(ioupos_window_attention_scratch_size(BW, N, C, NH), sizeof(float));
  dx = (float *)calloc((size_t)BW * N * C, sizeof(float));
  dqw = (float *)calloc(C3 * C, sizeof(float));
  dqb = (float *)calloc(C3, sizeof(float));
  dpw = (float *)calloc(C * C, sizeof(float));
  dpb = (float *)calloc(C, sizeof(float));
  dtab = (float *)calloc((size_t)rows * NH, sizeof(float));
  st = ioupos_window_attention_forward(out, acts, x, qw, qb, pw, pb, tab, index, mask, BW, N, C, NH,
                                       g.nwin);
  CHECK(st == 0, "forward: %s", ioupos_failure_reason());
  st = ioupos_window_attention_backward(dx, dqw, dqb, dpw, dpb, dtab, scratch, G, acts, x, qw, pw,
                                        index, BW, N, C, NH);
  CHECK(st == 0, "backward: %s", ioupos_failure_reason());
  /* float64 reference */
  qkv = (double *)calloc((size_t)BW * N * C3, sizeof(double));
  P = (double *)calloc((size_t)BW * NH * N * N, sizeof(double));
  y = (double *)calloc((size_t)BW * N * C, sizeof(double));
  rout = (double *)calloc((size_t)BW * N * C, sizeof(double));
  dy = (double *)calloc((size_t)BW * N * C, sizeof(double));
  dqkv = (double *)calloc((size_t)BW * N * C3, sizeof(double));
  rdx = (double *)calloc((size_t)BW * N * C, sizeof(double));
  rdqw = (double *)calloc(C3 * C, sizeof(double));
  rdqb = (double *)calloc(C3, sizeof(double));
  rdpw = (double *)calloc(C * C, sizeof(double));
  rdpb = (double *)calloc(C, sizeof(double));
  rdtab = (double *)calloc((size_t)rows * NH, sizeof(double));
  for (t = 0; t < BW * N; ++t)
    for (o = 0; o < C3; ++o) {
      double s = qb[o];
      for (c = 0; c < C; ++c) s += (double)x[t * C + c] * qw[o * C + c];
      qkv[t * C3 + o] = s;
    }
  for (b = 0; b < BW; ++b)
    for (h = 0; h < NH; ++h)
      for (i = 0; i < N; ++i) {
        double *row = P + (((size_t)b * NH + h) * N + i) * N, mx = -1e300, sum = 0;
        for (j = 0; j < N; ++j) {
          double s = 0;
          for (d = 0; d < hd; ++d)
            s += qkv[(b * N + i) * C3 + h * hd + d] * scale * qkv[(b * N + j) * C3 + C + h * hd + d];
          s += tab[index[i * N + j] * NH + h] + mask[((size_t)(b % g.nwin) * N + i) * N + j];
          row[j] = s;
          if (s > mx) mx = s;
        }
        for (j = 0; j < N; ++j) sum += (row[j] = exp(row[j] - mx));
        for (j = 0; j < N; ++j) row[j] /= sum;
        for (d = 0; d < hd; ++d) {
          double s = 0;
          for (j = 0; j < N; ++j) s += row[j] * qkv[(b * N + j) * C3 + 2 * C + h * hd + d];
          y[(b * N + i) * C + h * hd + d] = s;
        }
      }
  for (t = 0; t < BW * N; ++t)
    for (o = 0; o < C; ++o) {
      double s = pb[o];
      for (c = 0; c < C; ++c) s += y[t * C + c] * pw[o * C + c];
      rout[t * C + o] = s;
    }
  /* backward */
  for (t = 0; t < BW * N; ++t)
    for (c = 0; c < C; ++c) {
      double s = 0;
      for (o = 0; o < C; ++o) s += (double)G[t * C + o] * pw[o * C + c];
      dy[t * C + c] = s;
    }
  for (o = 0; o < C; ++o) {
    for (t = 0; t < BW * N; ++t) rdpb[o] += G[t * C + o];
    for (c = 0; c < C; ++c)
      for (t = 0; t < BW * N; ++t) rdpw[o * C + c] += (double)G[t * C + o] * y[t * C + c];
  }
  for (b = 0; b < BW; ++b)
    for (h = 0; h < NH; ++h) {
      const double *Pb = P + ((size_t)b * NH + h) * N * N;
      double *dS = (double *)calloc((size_t)N * N, sizeof(double));
      for (i = 0; i < N; ++i) {
        double dot = 0;
        for (j = 0; j < N; ++j) {
          double s = 0;
          for (d = 0; d < hd; ++d)
            s += dy[(b * N + i) * C + h * hd + d] * qkv[(b * N + j) * C3 + 2 * C + h * hd + d];
          dS[i * N + j] = s;
          dot += Pb[i * N + j] * s;
        }
        for (j = 0; j < N; ++j) {
          dS[i * N + j] = Pb[i * N + j] * (dS[i * N + j] - dot);
          rdtab[index[i * N + j] * NH + h] += dS[i * N + j];
        }
      }
      for (i = 0; i < N; ++i)
        for (d = 0; d < hd; ++d) {
          double sq = 0, sk = 0, sv = 0;
          for (j = 0; j < N; ++j) {
            sq += dS[i * N + j] * qkv[(b * N + j) * C3 + C + h * hd + d] * scale;
            sk += dS[j * N + i] * qkv[(b * N + j) * C3 + h * hd + d] * scale;
            sv += Pb[j * N + i] * dy[(b * N + j) * C + h * hd + d];
          }
          dqkv[(b * N + i) * C3 + h * hd + d] = sq;
          dqkv[(b * N + i) * C3 + C + h * hd + d] = sk;
          dqkv[(b * N + i) * C3 + 2 * C + h * hd + d] = sv;
        }
      free(dS);
    }
  for (t = 0; t < BW * N; ++t)
    for (c = 0; c < C; ++c) {
      double s = 0;
      for (o = 0; o < C3; ++o) s += dqkv[t * C3 + o] * qw[o * C + c];
      rdx[t * C + c] = s;
    }
  for (o = 0; o < C3; ++o) {
    for (t = 0; t < BW * N; ++t) rdqb[o] += dqkv[t * C3 + o];
    for (c = 0; c < C; ++c)
      for (t = 0; t < BW * N; ++t) rdqw[o * C + c] += dqkv[t * C3 + o] * x[t * C + c];
  }
  {
    /* float32 sums of up to 196 terms: 2e-5 of the tensor's largest value + 1e-4 relative */
    struct { const char *name; const float *got; const double *ref; long n; } cs[7];
    int q;
    cs[0].name = "out", cs[0].got = out, cs[0].ref = rout, cs[0].n = BW * N * C;
    cs[1].name = "dx", cs[1].got = dx, cs[1].ref = rdx, cs[1].n = BW * N * C;
    cs[2].name = "dqkv_w", cs[2].got = dqw, cs[2].ref = rdqw, cs[2].n = C3 * C;
    cs[3].name = "dqkv_b", cs[3].got = dqb, cs[3].ref = rdqb, cs[3].n = C3;
    cs[4].name = "dproj_w", cs[4].got = dpw, cs[4].ref = rdpw, cs[4].n = C * C;
    cs[5].name = "dproj_b", cs[5].got = dpb, cs[5].ref = rdpb, cs[5].n = C;
    cs[6].name = "dtable", cs[6].got = dtab, cs[6].ref = rdtab, cs[6].n = rows * NH;
    for (q = 0; q < 7; ++q) {
      double m = 0, worst = 0;
      long k, nb = 0;
      for (k = 0; k < cs[q].n; ++k)
        if (fabs(cs[q].ref[k]) > m) m = fabs(cs[q].ref[k]);
      for (k = 0; k < cs[q].n; ++k) {
        double dd = fabs(cs[q].got[k] - cs[q].ref[k]), tol = 2e-5 * m + 1e-4 * fabs(cs[q].ref[k]);
        if (!(dd <= tol)) ++nb;
        if (dd / tol > worst) worst = dd / tol;
      }
      printf("  %-8s worst %.2f of tolerance\n", cs[q].name, worst);
      CHECK(nb == 0, "attention hd 16 %s: %ld of %ld out of tolerance", cs[q].name, nb, cs[q].n);
    }
  }
  free(index), free(mask), free(x), free(qw), free(qb), free(pw), free(pb), free(tab), free(G);
  free(out), free(acts), free(scratch), free(dx), free(dqw), free(dqb), free(dpw), free(dpb);
  free(dtab), free(qkv), free(P), free(y), free(rout), free(dy), free(dqkv), free(rdx);
  free(rdqw), free(rdqb), free(rdpw), free(rdpb), free(rdtab);
}

/* ---- 4. GELU -------------------------------------------------------------------------------- */
static int64_t ord(float f) { /* floats in order on the integers: ulp distance is a difference */
  int32_t i;
  memcpy(&i, &f, 4);
  return i < 0 ? -(int64_t)(i & 0x7fffffff) : (int64_t)i;
}

static void test_gelu(void) {
  const size_t n = (size_t)1 << 22;
  float *x = (float *)malloc(n * 4), *y = (float *)malloc(n * 4), *g = (float *)malloc(n * 4),
        *one = (float *)malloc(n * 4);
  int64_t worst[2] = {0, 0};
  float wx[2] = {0, 0};
  double low = 0.0, nearzero = 0.0;
  long differ[2] = {0, 0};
  ioupos_rng rng;
  size_t i;
  int pass;
  printf("GELU (%s):\n", ioupos_gemm_simd() ? "SIMD lanes" : "libm erf / exp");
  ioupos_rng_seed(&rng, 1);
  for (pass = 0; pass < 4; ++pass) {
    static const double span[4] = {10.0, 1.0, 1e-3, 20.0};
    for (i = 0; i < n; ++i) {
      x[i] = (float)((ioupos_rng_uniform(&rng) * 2 - 1) * span[pass]);
      one[i] = 1.0f;
      g[i] = 0.0f;
    }
    ioupos_gelu_forward(y, x, n);
    ioupos_gelu_backward(g, x, one, n);
    for (i = 0; i < n; ++i) {
      double v = x[i], cdf = 0.5 * (1.0 + erf(v * 0.70710678118654752440));
      float ry = (float)(v * cdf);
      float rg = (float)(cdf + v * (0.39894228040143267794 * exp(-0.5 * v * v)));
      int64_t d0 = ord(y[i]) - ord(ry), d1 = ord(g[i]) - ord(rg);
      d0 = d0 < 0 ? -d0 : d0;
      d1 = d1 < 0 ? -d1 : d1;
      if (v > -5.5) {
        if (d0 > worst[0]) worst[0] = d0, wx[0] = x[i];
        if (d0) ++differ[0];
        if (fabs(rg) > 1e-6) {
          if (d1 > worst[1]) worst[1] = d1, wx[1] = x[i];
          if (d1) ++differ[1];
        } else if (fabs((double)g[i] - rg) > nearzero) {
          nearzero = fabs((double)g[i] - rg);
        }
      } else if (fabs((double)y[i] - ry) > low) {
        low = fabs((double)y[i] - ry);
      }
    }
  }
  printf("  forward: worst %lld ulp (at %g), %ld of %zu differ; derivative: worst %lld ulp (at "
         "%g), %ld differ, |d| <= %.3g where |gelu'| <= 1e-6; x <= -5.5: |d| <= %.3g\n",
         (long long)worst[0], wx[0], differ[0], 4 * n, (long long)worst[1], wx[1], differ[1],
         nearzero, low);
  CHECK(worst[0] <= 1 && worst[1] <= 1, "GELU beyond 1 ulp: forward %lld, derivative %lld",
        (long long)worst[0], (long long)worst[1]);
  CHECK(nearzero < 1e-12 && low < 1e-12, "GELU absolute differences %g, %g", nearzero, low);
  {
    float sx[6] = {0.0f, -0.0f, 1e30f, -1e30f, 1e-40f, -1e-40f}, sy[6], sg[6] = {0, 0, 0, 0, 0, 0};
    ioupos_gelu_forward(sy, sx, 6);
    ioupos_gelu_backward(sg, sx, one, 6);
    CHECK(sy[0] == 0.0f && sy[1] == 0.0f && sy[2] == 1e30f && sy[3] == 0.0f && sy[4] == 5e-41f &&
          sg[0] == 0.5f && sg[2] == 1.0f && sg[3] == 0.0f && sg[4] == 0.5f,
          "GELU(0, -0, 1e30, -1e30, 1e-40) = %g %g %g %g %g; GELU'(0, 1e30, -1e30, 1e-40) = %g %g "
          "%g %g", sy[0], sy[1], sy[2], sy[3], sy[4], sg[0], sg[2], sg[3], sg[4]);
  }
  free(x), free(y), free(g), free(one);
  /* the MLP backward's recomputed GELU equals the forward's h_act */
  {
    const int N = 300, C = 24, H = 96;
    float *in = (float *)malloc(sizeof(float) * N * C), *w1 = (float *)malloc(sizeof(float) * H * C),
          *b1 = (float *)malloc(sizeof(float) * H), *w2 = (float *)malloc(sizeof(float) * C * H),
          *b2 = (float *)malloc(sizeof(float) * C), *out = (float *)malloc(sizeof(float) * N * C),
          *hp = (float *)malloc(sizeof(float) * N * H), *ha = (float *)malloc(sizeof(float) * N * H),
          *dout = (float *)malloc(sizeof(float) * N * C),
          *sc = (float *)malloc(sizeof(float) * 2 * N * H), *gr[2][5];
    int k, q, same = 1, rc;
    long sz[5];
    sz[0] = (long)N * C, sz[1] = (long)H * C, sz[2] = H, sz[3] = (long)C * H, sz[4] = C;
    for (k = 0; k < N * C; ++k) in[k] = (float)ioupos_rng_uniform(&rng) * 4 - 2;
    for (k = 0; k < H * C; ++k) w1[k] = (float)ioupos_rng_uniform(&rng) - 0.5f;
    for (k = 0; k < C * H; ++k) w2[k] = (float)ioupos_rng_uniform(&rng) - 0.5f;
    for (k = 0; k < H; ++k) b1[k] = (float)ioupos_rng_uniform(&rng) - 0.5f;
    for (k = 0; k < C; ++k) b2[k] = (float)ioupos_rng_uniform(&rng) - 0.5f;
    for (k = 0; k < N * C; ++k) dout[k] = (float)ioupos_rng_uniform(&rng) - 0.5f;
    rc = ioupos_mlp_forward(out, hp, ha, in, w1, b1, w2, b2, N, C, H);
    for (q = 0; q < 2; ++q) {
      for (k = 0; k < 5; ++k) gr[q][k] = (float *)calloc((size_t)sz[k], sizeof(float));
      rc |= ioupos_mlp_backward(gr[q][0], gr[q][1], gr[q][2], gr[q][3], gr[q][4], sc, dout, in, hp,
                                q ? NULL : ha, w1, w2, N, C, H);
    }
    for (k = 0; k < 5; ++k) same = same && !memcmp(gr[0][k], gr[1][k], sizeof(float) * (size_t)sz[k]);
    CHECK(rc == 0 && same, "MLP backward with GELU recomputed differs from the one given h_act");
    for (q = 0; q < 2; ++q)
      for (k = 0; k < 5; ++k) free(gr[q][k]);
    free(in), free(w1), free(b1), free(w2), free(b2), free(out), free(hp), free(ha), free(dout);
    free(sc);
  }
}

/* ---- 5. allocation failures ---------------------------------------------------------------- */
static void test_no_memory(void) {
  const int N = 700, C = 40; /* three row chunks */
  size_t n = (size_t)N * C, i;
  float *x = (float *)malloc(n * 4), *dy = (float *)malloc(n * 4), *y = (float *)malloc(n * 4);
  float *w = (float *)malloc(C * 4), *bb = (float *)malloc(C * 4), *mean = (float *)malloc(N * 4);
  float *rstd = (float *)malloc(N * 4), *g[2][4];
  ioupos_rng rng;
  int q, k, same = 1;
  printf("allocation failures:\n");
  ioupos_rng_seed(&rng, 5);
  for (i = 0; i < n; ++i) x[i] = (float)ioupos_rng_uniform(&rng) * 2 - 1;
  for (i = 0; i < n; ++i) dy[i] = (float)ioupos_rng_uniform(&rng) * 2 - 1;
  for (k = 0; k < C; ++k) w[k] = (float)ioupos_rng_uniform(&rng) + 0.5f, bb[k] = 0.1f * (float)k;
  ioupos_layernorm_forward(y, mean, rstd, x, w, bb, N, C, 1e-5f);
  for (q = 0; q < 2; ++q) {
    g[q][0] = (float *)calloc(n, 4);
    g[q][1] = (float *)calloc(C, 4);
    g[q][2] = (float *)calloc(C, 4);
    g[q][3] = (float *)calloc(C, 4);
    for (i = 0; i < (size_t)C; ++i) g[q][1][i] = g[q][2][i] = g[q][3][i] = 0.25f;
    tt_fail = q;
    ioupos_layernorm_backward(g[q][0], g[q][1], g[q][2], dy, x, w, mean, rstd, N, C);
    CHECK(ioupos_linear_backward(NULL, NULL, g[q][3], dy, x, w, N, 1, C) == 0, "bias sums");
    tt_fail = 0;
  }
  for (k = 0; k < 4; ++k) same = same && !memcmp(g[0][k], g[1][k], (k ? C : n) * 4);
  CHECK(same, "the serial fallbacks give other bits than the chunked sums");
  {
    int index[4] = {0, 1, 1, 0}, st;
    float in[2 * 2 * 4] = {0}, wq[12 * 4] = {0}, wp[16] = {0}, tab[2 * 2] = {0}, out[16], acts[96];
    tt_fail = 1;
    st = ioupos_window_attention_forward(out, acts, in, wq, NULL, wp, NULL, tab, index, NULL, 2, 2,
                                         4, 2, 1);
    tt_fail = 0;
    CHECK(st == IOUPOS_ENOMEM, "window attention without memory: %d", st);
  }
  for (q = 0; q < 2; ++q)
    for (k = 0; k < 4; ++k) free(g[q][k]);
  free(x), free(dy), free(y), free(w), free(bb), free(mean), free(rstd);
}

int main(void) {
  int maxt = 1;
#ifdef _OPENMP
  maxt = omp_get_max_threads();
#endif
  printf("test_threads: GEMM %s, %s (the machine offers %d thread(s); runs use 1, 2 and 3)\n",
         ioupos_gemm_kernel(),
#ifdef _OPENMP
         "OpenMP",
#else
         "no OpenMP: thread counts cannot differ",
#endif
         maxt);
  test_fixture("swin2d", 2);
  test_fixture("swin3d", 3);
  test_c48();
  test_attention_hd16();
  test_gelu();
  test_no_memory();
  return tu_finish("test_threads");
}
