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
        run their plain references and give the same bits; the window attention reports
        IOUPOS_ENOMEM;
     6. every fast path of sections 11 and 12 against its plain reference on awkward sizes:
        bias sums and layer norm bit-identical (the same order of sums), GELU within 1 ulp,
        the linear layer's GEMM within its error bound, window attention within a stated
        tolerance (bit-identical without AVX2); the tolerances and reasons are in part 6.
   It links build/ioupos.o as the commands do (the tests' build, IOUPOS_REFERENCE_API: the fast
   paths and references come as two tables, ioupos__layer_paths_fast and _ref) and lowers the
   parallel loops' threshold to 64 (ioupos__set_par_min_work), so that even the fixtures' small
   tensors take the parallel loops. Without OpenMP, 1 is the only thread count and part 1-2
   compare runs only. */
#include <stdlib.h>

#include "ioupos.h"

/* An allocator that can be told to fail (part 5): the Makefile links this test with
   -Wl,--wrap=malloc, so the library's malloc calls (IOUPOS_MALLOC's default) come here. */
static int tt_fail;
void *__real_malloc(size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_malloc(size_t n) { return tt_fail ? NULL : __real_malloc(n); }

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

/* the sizes of run_encoder's pieces (stage outputs 0..4, feature, gradients, dx), to say where
   a difference lies */
static size_t g_seg[8];
static const ioupos_params *g_params;

/* "stage 2 output", "gradient of <tensor>", ... for value i of run_encoder's result */
static const char *where(size_t i, char *buf, size_t cap) {
  static const char *names[8] = {"stage 0 output", "stage 1 output", "stage 2 output",
                                 "stage 3 output", "stage 4 output", "feature", "gradient", "dx"};
  int s;
  for (s = 0; s < 8; ++s) {
    if (i < g_seg[s]) break;
    i -= g_seg[s];
  }
  if (s == 6 && g_params) {
    int k;
    for (k = 0; k < g_params->table.n; ++k) {
      const ioupos_tensor_info *t = &g_params->table.t[k];
      if (t->dtype == IOUPOS_ST_F32 && i >= t->offset && i < t->offset + t->numel) {
        snprintf(buf, cap, "gradient of %s [%zu]", t->name, i - t->offset);
        return buf;
      }
    }
  }
  snprintf(buf, cap, "%s [%zu]", s < 8 ? names[s] : "?", i);
  return buf;
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
  for (s = 0; s < 6; ++s) g_seg[s] = sz[s];
  g_seg[6] = p->table.total;
  g_seg[7] = nx;
  g_params = p;
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
      char buf[160];
      CHECK(n == n0 && ndiff == 0, "%s: %d threads differ from 1 thread at %zu of %zu values "
            "(first at %zu, %s: %.9g vs %.9g)", label, t, ndiff, n, at,
            where(at, buf, sizeof buf), ndiff ? r[at] : 0.0, ndiff ? first[at] : 0.0);
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
  CHECK(same, "the references (no memory) give other bits than the chunked sums");
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

/* ---- 6. fast paths against their plain references ------------------------------------------
   Each layer of sections 11 and 12 that has a fast path (ioupos__<layer>_fast: SIMD lanes, rows
   and chunks on the threads) is run beside its plain reference (ioupos__<layer>_ref) on random
   inputs of awkward sizes (1, primes, one past a vector width or a row chunk). */
/* this build's two versions of each layer (fast: non-NULL in the test) */
static const ioupos__layer_paths *fast, *ref;

static float *rndv(ioupos_rng *rng, size_t n, double lo, double hi) {
  float *x = (float *)malloc((n ? n : 1) * sizeof(float));
  size_t i;
  for (i = 0; i < n; ++i) x[i] = (float)(lo + (hi - lo) * ioupos_rng_uniform(rng));
  return x;
}

static float *fdup(const float *x, size_t n) {
  float *y = (float *)malloc((n ? n : 1) * sizeof(float));
  memcpy(y, x, n * sizeof(float));
  return y;
}

/* elements whose bits differ */
static size_t bits_differ(const float *a, const float *b, size_t n) {
  size_t i, k = 0;
  for (i = 0; i < n; ++i) k += memcmp(a + i, b + i, sizeof(float)) != 0;
  return k;
}

/* the bias sums and the layer norm add in the reference's order: bit-identical */
static void fast_sums(ioupos_rng *rng) {
  static const int Ns[] = {1, 3, 257, 700}, Cs[] = {1, 3, 5, 7, 9, 13, 37, 383};
  size_t bad[4] = {0, 0, 0, 0};
  int a, b, aff, v, cases = 0;
  for (a = 0; a < 4; ++a)
    for (b = 0; b < 8; ++b) {
      int N = Ns[a], C = Cs[b];
      size_t n = (size_t)N * C;
      float *x = rndv(rng, n, -2, 2), *dy = rndv(rng, n, -1, 1), *w = rndv(rng, C, 0.5, 1.5);
      float *bb = rndv(rng, C, -1, 1), *g0 = rndv(rng, n + 2 * (size_t)C, -1, 1);
      float *y[2], *m[2], *r[2], *g[2];
      int k, q;
      for (k = 0; k < C && N > 1; ++k) x[C + k] += 3.0f; /* a row far from 0 */
      /* bias sums over N rows of C columns */
      g[0] = fdup(g0, C), g[1] = fdup(g0, C);
      fast->colsum_add(g[0], dy, (size_t)N, C);
      ref->colsum_add(g[1], dy, (size_t)N, C);
      bad[0] += bits_differ(g[0], g[1], C);
      free(g[0]), free(g[1]);
      for (aff = 0; aff < 3; ++aff) { /* weight and bias, weight only, neither */
        const float *wa = aff < 2 ? w : NULL, *ba = aff < 1 ? bb : NULL;
        for (q = 0; q < 2; ++q) {
          y[q] = (float *)calloc(n, sizeof(float)), m[q] = (float *)calloc(N, sizeof(float));
          r[q] = (float *)calloc(N, sizeof(float));
        }
        fast->layernorm_forward(y[0], m[0], r[0], x, wa, ba, N, C, 1e-5f);
        ref->layernorm_forward(y[1], m[1], r[1], x, wa, ba, N, C, 1e-5f);
        bad[1] += bits_differ(y[0], y[1], n) + bits_differ(m[0], m[1], N) +
                  bits_differ(r[0], r[1], N);
        for (v = 0; v < 3; ++v) { /* all gradients, dinp only, parameters only (ACCUMULATE) */
          for (q = 0; q < 2; ++q) {
            float *gi = fdup(g0, n + 2 * (size_t)C);
            (q ? ref : fast)->layernorm_backward(
                v < 2 ? gi : NULL, v != 1 ? gi + n : NULL, v != 1 ? gi + n + C : NULL, dy, x, wa,
                m[0], r[0], N, C);
            g[q] = gi;
          }
          bad[2 + (v == 2)] += bits_differ(g[0], g[1], n + 2 * (size_t)C);
          free(g[0]), free(g[1]);
          ++cases;
        }
        for (q = 0; q < 2; ++q) free(y[q]), free(m[q]), free(r[q]);
      }
      free(x), free(dy), free(w), free(bb), free(g0);
    }
  printf("  bias sums (%d shapes), layer norm forward and backward (%d cases): %zu, %zu, %zu, %zu "
         "values differ from the reference\n", 4 * 8, cases, bad[0], bad[1], bad[2], bad[3]);
  CHECK(bad[0] == 0, "bias sums: %zu values differ from the reference", bad[0]);
  CHECK(bad[1] == 0, "layer norm forward: %zu values differ from the reference", bad[1]);
  CHECK(bad[2] + bad[3] == 0, "layer norm backward: %zu values differ from the reference",
        bad[2] + bad[3]);
}

/* GELU: the SIMD kernel is our own erfc / exp, the reference libm's erf / exp. Tolerance, as part
   4 states it: 1 ulp where the reference formula is accurate (x > -5.5 and |value| > 1e-6),
   1e-12 absolute elsewhere (tiny values: the formula's own cancellation, gelu' near its zero).
   Without AVX2 the fast path runs the reference's loops: bit-identical. Also, bit for bit: the
   short tail's lanes equal full lanes (a value does not depend on its position) and the MLP's
   in-place backward equals the forward and the backward. */
static void fast_gelu(ioupos_rng *rng) {
  static const size_t ns[] = {1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 4095, 4097, 3 * 4096 + 5};
  size_t k, worst = 0, nbad = 0, nshift = 0, nmode = 0, total = 0;
  for (k = 0; k < sizeof ns / sizeof ns[0]; ++k) {
    size_t n = ns[k], i;
    float *x = rndv(rng, n + 1, -8, 8), *y[2], *g[2], *one = rndv(rng, n + 1, 1, 1), *dh, *act;
    int q;
    if (n > 4) x[0] = 0.0f, x[1] = -0.0f, x[2] = -6.0f, x[3] = -0.75f;
    for (q = 0; q < 2; ++q) {
      y[q] = (float *)calloc(n + 1, sizeof(float)), g[q] = (float *)calloc(n + 1, sizeof(float));
    }
    fast->gelu_forward(y[0], x, n);
    ref->gelu_forward(y[1], x, n);
    fast->gelu_backward(g[0], x, one, n);
    ref->gelu_backward(g[1], x, one, n);
    for (i = 0; i < 2 * n; ++i) {
      float f = i < n ? y[0][i] : g[0][i - n], r = i < n ? y[1][i] : g[1][i - n];
      int64_t d = ord(f) - ord(r);
      d = d < 0 ? -d : d;
      if (!ioupos_gemm_simd() && d) ++nbad;
      else if (x[i % n] > -5.5f && fabs(r) > 1e-6)
        nbad += d > 1, worst = (size_t)d > worst ? (size_t)d : worst;
      else nbad += !(fabs((double)f - r) <= 1e-12);
    }
    /* x + 1: every element one lane over, the tail shorter or longer */
    if (n > 1) {
      float *ys = (float *)calloc(n, sizeof(float));
      fast->gelu_forward(ys, x + 1, n - 1);
      nshift += bits_differ(ys, y[0] + 1, n - 1);
      free(ys);
    }
    dh = fdup(one, n), act = (float *)calloc(n + 1, sizeof(float));
    fast->gelu_backward_inplace(dh, act, x, n);
    nmode += bits_differ(dh, g[0], n) + bits_differ(act, y[0], n);
    memcpy(dh, one, n * sizeof(float));
    ref->gelu_backward_inplace(dh, act, x, n);
    nmode += bits_differ(dh, g[1], n) + bits_differ(act, y[1], n);
    total += 2 * n;
    free(x), free(one), free(dh), free(act);
    for (q = 0; q < 2; ++q) free(y[q]), free(g[q]);
  }
  printf("  GELU (13 sizes, %zu values): worst %zu ulp from the reference, %zu beyond tolerance; "
         "%zu shifted, %zu in-place values differ\n", total, worst, nbad, nshift, nmode);
  CHECK(nbad == 0, "GELU: %zu values beyond the tolerance", nbad);
  CHECK(nshift == 0 && nmode == 0, "GELU: a value depends on its lane (%zu) or the in-place "
        "backward differs (%zu)", nshift, nmode);
}

/* linear: the GEMM (section 10) against the reference's double dot products. Tolerance per
   element: the GEMM's float sum of K products (and the bias) is within (K + 5) 2^-24 S of the
   exact value, S = sum of |products| (test_gemm's bound with one more rounding for the bias),
   the reference within 2^-24 |ref|. The bias gradient sums as the reference: bit-identical. */
static void fast_linear(ioupos_rng *rng) {
  static const int sh[][3] = {{1, 1, 1}, {7, 5, 3}, {300, 37, 29}, {257, 13, 48}};
  long bad = 0, bits = 0;
  double worst = 0.0;
  int k;
  for (k = 0; k < 4; ++k) {
    int N = sh[k][0], C = sh[k][1], OC = sh[k][2], n, c, o;
    float *x = rndv(rng, (size_t)N * C, -1, 1), *w = rndv(rng, (size_t)OC * C, -1, 1);
    float *b = rndv(rng, OC, -1, 1), *dy = rndv(rng, (size_t)N * OC, -1, 1);
    float *y[2], *dx[2], *dw[2], *db[2];
    int q;
    for (q = 0; q < 2; ++q) {
      y[q] = (float *)calloc((size_t)N * OC, 4), dx[q] = (float *)calloc((size_t)N * C, 4);
      dw[q] = (float *)calloc((size_t)OC * C, 4), db[q] = (float *)calloc(OC, 4);
    }
    CHECK(ioupos_linear_forward(y[0], x, w, b, N, C, OC) == 0, "linear forward");
    CHECK(ioupos_linear_backward(dx[0], dw[0], db[0], dy, x, w, N, C, OC) == 0, "linear backward");
    ioupos__linear_forward_ref(y[1], x, w, b, N, C, OC);
    ioupos__linear_backward_ref(dx[1], dw[1], db[1], dy, x, w, N, C, OC);
#define LIN_CHECK(got, ref, K, S)                                                         \
  do {                                                                                    \
    double d_ = fabs((double)(got) - (ref)), t_ = ((K) + 5) * ldexp(1, -24) * (S) +        \
                                                  ldexp(1, -24) * fabs(ref);             \
    if (!(d_ <= t_)) ++bad;                                                               \
    if (d_ / t_ > worst) worst = d_ / t_;                                                 \
  } while (0)
    for (n = 0; n < N; ++n)
      for (o = 0; o < OC; ++o) {
        double S = fabs(b[o]);
        for (c = 0; c < C; ++c) S += fabs((double)x[n * C + c] * w[o * C + c]);
        LIN_CHECK(y[0][n * OC + o], y[1][n * OC + o], C, S);
      }
    for (n = 0; n < N; ++n)
      for (c = 0; c < C; ++c) {
        double S = 0.0;
        for (o = 0; o < OC; ++o) S += fabs((double)dy[n * OC + o] * w[o * C + c]);
        LIN_CHECK(dx[0][n * C + c], dx[1][n * C + c], OC, S);
      }
    for (o = 0; o < OC; ++o)
      for (c = 0; c < C; ++c) {
        double S = 0.0;
        for (n = 0; n < N; ++n) S += fabs((double)dy[n * OC + o] * x[n * C + c]);
        LIN_CHECK(dw[0][o * C + c], dw[1][o * C + c], N, S);
      }
#undef LIN_CHECK
    bits += (long)bits_differ(db[0], db[1], OC);
    for (q = 0; q < 2; ++q) free(y[q]), free(dx[q]), free(dw[q]), free(db[q]);
    free(x), free(w), free(b), free(dy);
  }
  printf("  linear (4 shapes): worst %.2f of the GEMM's error bound, %ld beyond it; bias "
         "gradient: %ld values differ from the reference\n", worst, bad, bits);
  CHECK(bad == 0 && bits == 0, "linear: %ld beyond the bound, %ld bias values differ", bad, bits);
}

/* Window attention: fast against reference on window geometries of the encoder's kinds. The two
   compute the same sums in the same order; with AVX2 the fast kernels' products are FMAs (one
   rounding instead of two) and their exp is the vector one (within 1 ulp of expf), so each float
   sum of K <= 49 terms may differ by about K 2^-24 of its terms' magnitude (3e-6 at K = 49),
   and the differences pass through the softmax and the projections (the same GEMMs in both).
   Tolerance per tensor: |fast - ref| <= 1e-5 max|ref| + 1e-4 |ref| (observed below 1e-6 max|ref|;
   the table gradient sums dS over every window: the same bound relative to its largest value).
   Without AVX2 the fast path's portable kernels do the reference's arithmetic: bit-identical.
   qkv (the same GEMM in both) is bit-identical either way. */
static void fast_attention(ioupos_rng *rng) {
  static const int geo[][9] = {
      /* ndim, batch, size[3], window, shift, C, NH */
      {2, 3, 28, 28, 0, 7, 3, 48, 3}, /* N 49, hd 16, 48 windows: two chunks, mask */
      {2, 2, 9, 11, 0, 7, 3, 12, 3},  /* N 49, hd 4 (padded), mask */
      {2, 2, 12, 12, 0, 6, 0, 24, 4}, /* N 36, hd 6, no mask */
      {3, 2, 4, 5, 6, 3, 1, 30, 2},   /* 3D: N 27, hd 15, mask */
      {2, 2, 5, 6, 0, 7, 3, 40, 5},   /* shrunk windows: N 30, hd 8, no shift */
  };
  double worst = 0.0;
  long bad = 0, bits = 0;
  int k;
  for (k = 0; k < 5; ++k) {
    const int *q = geo[k];
    int size[3] = {q[2], q[3], q[4]}, win[3] = {q[5], q[5], q[5]}, sh[3] = {q[6], q[6], q[6]};
    int C = q[7], NH = q[8], C3 = 3 * C, BW, N, rows, *index, v, t;
    ioupos_swin_geom g;
    float *x, *qw, *qb, *pw, *pb, *tab, *mask, *dout, *g0, *out[2], *acts[2], *sc[2], *gr[2];
    size_t nx, na, ns, ng, off[7];
    ioupos_swin_geom_init(&g, q[0], q[1], size, win, sh);
    BW = g.batch * g.nwin, N = g.ntok, rows = ioupos_swin_table_rows(&g);
    index = (int *)malloc(sizeof(int) * (size_t)N * N);
    ioupos_swin_relative_index(index, &g);
    mask = g.shifted ? (float *)malloc(sizeof(float) * (size_t)g.nwin * N * N) : NULL;
    if (mask) ioupos_swin_attn_mask(mask, &g);
    nx = (size_t)BW * N * C;
    x = rndv(rng, nx, -1, 1), qw = rndv(rng, (size_t)C3 * C, -0.3, 0.3);
    qb = rndv(rng, C3, -0.1, 0.1), pw = rndv(rng, (size_t)C * C, -0.2, 0.2);
    pb = rndv(rng, C, -0.1, 0.1), tab = rndv(rng, (size_t)rows * NH, -0.5, 0.5);
    dout = rndv(rng, nx, -1, 1);
    /* gradients, one block: dx, dqkv_w, dqkv_b, dproj_w, dproj_b, dtable (ACCUMULATE onto g0) */
    off[0] = 0, off[1] = nx, off[2] = off[1] + (size_t)C3 * C, off[3] = off[2] + C3;
    off[4] = off[3] + (size_t)C * C, off[5] = off[4] + C, off[6] = off[5] + (size_t)rows * NH;
    ng = off[6], g0 = rndv(rng, ng, -0.1, 0.1);
    na = ioupos_window_attention_acts_size(BW, N, C, NH);
    ns = ioupos_window_attention_scratch_size(BW, N, C, NH);
    for (v = 0; v < 2; ++v) {
      int st;
      out[v] = (float *)calloc(nx, 4), acts[v] = (float *)calloc(na, 4);
      sc[v] = (float *)calloc(ns, 4), gr[v] = fdup(g0, ng);
      st = (v ? ref : fast)->window_attention_forward(
          out[v], acts[v], x, qw, qb, pw, pb, tab, index, mask, BW, N, C, NH, g.nwin);
      if (!st)
        st = (v ? ref : fast)->window_attention_backward(
            gr[v], gr[v] + off[1], gr[v] + off[2], gr[v] + off[3], gr[v] + off[4], gr[v] + off[5],
            sc[v], dout, acts[v], x, qw, pw, index, BW, N, C, NH);
      CHECK(st == 0, "attention %d: %s", k, ioupos_failure_reason());
    }
    bits += (long)bits_differ(acts[0], acts[1], (size_t)BW * N * C3);
    {
      struct { const float *f, *r; size_t n; } ts[8];
      ts[0].f = out[0], ts[0].r = out[1], ts[0].n = nx;
      ts[1].f = acts[0] + (size_t)BW * N * C3, ts[1].r = acts[1] + (size_t)BW * N * C3;
      ts[1].n = na - (size_t)BW * N * C3; /* P and y */
      for (t = 0; t < 6; ++t)
        ts[2 + t].f = gr[0] + off[t], ts[2 + t].r = gr[1] + off[t],
        ts[2 + t].n = off[t + 1] - off[t];
      for (t = 0; t < 8; ++t) {
        double m = maxabs(ts[t].r, ts[t].n);
        size_t i;
        if (!ioupos_gemm_simd()) {
          bits += (long)bits_differ(ts[t].f, ts[t].r, ts[t].n);
          continue;
        }
        for (i = 0; i < ts[t].n; ++i) {
          double d = fabs((double)ts[t].f[i] - ts[t].r[i]);
          double tol = 1e-5 * m + 1e-4 * fabs(ts[t].r[i]);
          if (!(d <= tol)) ++bad;
          if (m > 0 && d / m > worst) worst = d / m;
        }
      }
    }
    for (v = 0; v < 2; ++v) free(out[v]), free(acts[v]), free(sc[v]), free(gr[v]);
    free(index), free(mask), free(x), free(qw), free(qb), free(pw), free(pb), free(tab), free(dout);
    free(g0);
  }
  printf("  window attention (5 geometries): %s; worst |fast - ref| = %.2g of the tensor's largest "
         "value, %ld beyond tolerance; %ld values differ where bits must agree\n",
         ioupos_gemm_simd() ? "SIMD kernels" : "portable kernels (bit-identical)", worst, bad,
         bits);
  CHECK(bad == 0 && bits == 0, "window attention: %ld beyond tolerance, %ld bits differ", bad,
        bits);
}

static void test_fast_paths(void) {
  ioupos_rng rng;
  fast = ioupos__layer_paths_fast(), ref = ioupos__layer_paths_ref();
  if (!fast) {
    printf("fast paths: none in this build (the references run)\n");
    return;
  }
  printf("fast paths against their plain references:\n");
  ioupos_rng_seed(&rng, 6);
  fast_sums(&rng);
  fast_gelu(&rng);
  fast_linear(&rng);
  fast_attention(&rng);
}

int main(void) {
  int maxt = 1;
  ioupos__set_par_min_work(64);
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
  test_fast_paths();
  return tu_finish("test_threads");
}
