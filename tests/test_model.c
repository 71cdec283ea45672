/* tests/test_model.c — ioupos.h sections 16-17 (tensor table, backend, Swin encoder, SSL heads,
   checkpoints) against tests/fixtures/model/, written by tests/reference/model_fixture.py from
   MONAI 1.6.1 / lightly 1.6.0 / torch 2.15.0:
     swin2d, swin3d   a whole MONAI SwinTransformer (C 6, heads 3-6-12-24, window padding,
                      shifted and unshifted windows, odd-size merging, all four stages): the
                      five normalised stage outputs, the feature, and every parameter gradient
                      and the input gradient of L = sum_k <out_k, R_k>; the weights are a
                      safetensors state dict written by PyTorch (so this is also the
                      PyTorch -> ioupos checkpoint test).
     simsiam          the research code's SimSiam (backbone + lightly heads, batch norm in train
                      mode per view): z, p, loss, every gradient; then two SGD steps with the
                      research parameter groups and every state-dict entry after them.
     dino             the DINO reference step: student and teacher outputs, loss with centring,
                      every student gradient, centre update, per-parameter clipping, AdamW, EMA.
   The references were computed in float64 (encoders) or float32 (steps) by PyTorch; each
   comparison's tolerance is written beside it with its reason, and the worst element is printed.
   Also: token maps of size 1 along an axis (no fixture: the forward against the same operations
   in buffers of their own, the gradients against finite differences), checkpoint round trips
   (ours -> ours byte-identical, prefixes), and the load errors. */
#include "ioupos.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/test_util.h"

#define FIXDIR "tests/fixtures/model/"

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
  if (t->dtype == IOUPOS_ST_I64) {
    size_t i;
    for (i = 0; i < k; ++i) {
      int64_t v;
      memcpy(&v, (const char *)t->data + 8 * i, 8);
      x[i] = (float)v;
    }
  } else if (ioupos_st_to_f32(t, x) != 0) {
    CHECK(0, "fixture tensor '%s' is not a float", name);
  }
  if (n) *n = k;
  return x;
}

/* worst |got - ref| against atol + rtol |ref|; prints the worst element; returns bad count */
static long compare(const char *label, const float *got, const float *ref, size_t n, double atol,
                    double rtol, int verbose) {
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
  if (verbose || bad)
    printf("  %-44s worst |d| %.3g at %zu (ref %.6g, got %.6g) = %.2f of tolerance%s\n", label,
           n ? fabs((double)got[worst] - ref[worst]) : 0.0, worst, n ? ref[worst] : 0.0,
           n ? got[worst] : 0.0, wr, bad ? "  FAIL" : "");
  return bad;
}

/* channels-first [B, C, S] -> channels-last [B, S, C] */
static void to_last(float *dst, const float *src, int B, int C, size_t S) {
  int b, c;
  size_t s;
  for (b = 0; b < B; ++b)
    for (c = 0; c < C; ++c)
      for (s = 0; s < S; ++s) dst[((size_t)b * S + s) * C + c] = src[((size_t)b * C + c) * S + s];
}

static void swin_cfg(ioupos_swin_config *c, int nd) {
  ioupos_swin_config_default(c, nd);
  c->embed_dim = 6;
  c->drop_path_rate = 0.0f;
  if (nd == 3) c->window[0] = c->window[1] = c->window[2] = 3;
}

/* the max |x| of a tensor, for gradient tolerances relative to the tensor's scale */
static double maxabs(const float *x, size_t n) {
  double m = 0.0;
  size_t i;
  for (i = 0; i < n; ++i)
    if (fabs(x[i]) > m) m = fabs(x[i]);
  return m;
}

/* every F32 parameter gradient of p against "grad.<theirs><name minus ours>"; tolerance
   atol = rel * max|ref| of that tensor + rtol |ref| */
static void compare_grads(const ioupos_params *p, const ioupos_st_file *f, const char *label,
                          double rel, double rtol) {
  int i, nbad = 0, n = 0;
  for (i = 0; i < p->table.n; ++i) {
    const ioupos_tensor_info *t = &p->table.t[i];
    char name[256];
    float *ref, *got;
    size_t k;
    if (t->dtype != IOUPOS_ST_F32 || (t->flags & (IOUPOS_TENSOR_BUFFER | IOUPOS_TENSOR_FROZEN)))
      continue;
    snprintf(name, sizeof name, "grad.%s", t->name);
    ref = st_get(f, name, &k);
    if (!ref) continue;
    got = ioupos_params_grad(p, i);
    CHECK(k == t->numel, "%s: %zu elements vs %zu", name, k, t->numel);
    /* SwinUNETR's encoder1.layer.conv3 (a 1 -> C 1x1 conv feeding an instance norm) cancels its
       own scale: its true gradient is only the norm's eps term, a small difference of large
       numbers; PyTorch's float32 gets it within 1.4e-2 of its largest element (measured by
       swinunetr_fixture.py), so it gets 5e-2 */
    if (k == t->numel &&
        compare(name, got, ref, k, (strstr(t->name, "encoder1.layer.conv3") ? 5e-2 : rel) * maxabs(ref, k),
                rtol, 0))
      ++nbad;
    ++n;
    free(ref);
  }
  CHECK(nbad == 0, "%s: %d of %d parameter gradients out of tolerance", label, nbad, n);
  printf("  %s: %d parameter gradients compared, %d out of tolerance\n", label, n, nbad);
}

/* every tensor of p (params and buffers) against "<prefix><name>" */
static void compare_state(const ioupos_params *p, const ioupos_st_file *f, const char *prefix,
                          const char *label, double atol, double rtol) {
  int i, nbad = 0, n = 0;
  float *host = (float *)calloc(p->table.total + 1, sizeof(float));
  memcpy(host, p->value, p->table.total * sizeof(float));
  for (i = 0; i < p->table.n; ++i) {
    const ioupos_tensor_info *t = &p->table.t[i];
    char name[256];
    float *ref, *got;
    size_t k, j;
    snprintf(name, sizeof name, "%s%s", prefix, t->name);
    /* the DINO fixture leaves out the constant relative_position_index buffers */
    if (t->dtype == IOUPOS_ST_I64 && !ioupos_safetensors_find(f, name)) continue;
    ref = st_get(f, name, &k);
    if (!ref) continue;
    got = (float *)calloc(t->numel, sizeof(float));
    for (j = 0; j < t->numel; ++j)
      got[j] = t->dtype == IOUPOS_ST_F32 ? host[t->offset + j] : (float)p->ivalue[t->offset + j];
    if (k != t->numel || compare(name, got, ref, k, atol, rtol, 0)) ++nbad;
    ++n;
    free(ref);
    free(got);
  }
  free(host);
  CHECK(nbad == 0, "%s: %d of %d tensors out of tolerance", label, nbad, n);
  printf("  %s: %d tensors compared, %d out of tolerance\n", label, n, nbad);
}

static int load_into(ioupos_params *p, const char *path, const char *ours, const char *theirs) {
  ioupos_st_file f;
  int rc, nl = 0, no = 0;
  rc = ioupos_safetensors_read(path, &f);
  CHECK(rc == 0, "read %s: %s", path, ioupos_failure_reason());
  if (rc) return rc;
  rc = ioupos_params_load(p, &f, ours, theirs, &nl, &no);
  CHECK(rc == 0, "load %s: %s", path, ioupos_failure_reason());
  ioupos_safetensors_free(&f);
  return rc;
}

/* ---- the whole encoder --------------------------------------------------------------------- */
static void test_encoder(const char *name, int nd) {
  char path[256];
  ioupos_swin_config cfg;
  ioupos_swin_encoder enc;
  ioupos_params p;
  ioupos_st_file io;
  int B = 2, shape[3], k, rc, d;
  size_t n, S;
  float *x, *dx, *dout[5], *tmp, *ref, *f32;
  const int64_t *xs;
  printf("%s:\n", name);
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
  {
    ioupos_st_file f;
    int nl = -1, no = -1;
    rc = ioupos_safetensors_read(path, &f);
    CHECK(rc == 0, "read weights");
    rc = ioupos_params_load(&p, &f, "", "", &nl, &no);
    CHECK(rc == 0, "strict load of PyTorch's state dict: %s", ioupos_failure_reason());
    CHECK(nl == p.table.n && nl == f.n && no == 0, "loaded %d of %d tensors (file %d, other %d)",
          nl, p.table.n, f.n, no);
    ioupos_safetensors_free(&f);
  }
  x = st_get(&io, "x", &n);
  rc = ioupos_swin_encoder_forward(&enc, &p, x, 0, NULL);
  CHECK(rc == 0, "forward: %s", ioupos_failure_reason());
  /* Outputs: the reference is float64 math on the float32 weights. PyTorch's own float32
     forward differs from it by up to ~5e-6 on these O(3) values (printed as "torch f32" below:
     20+ layers of float32 sums); we allow 3e-5 + 3e-5 |ref|, a few times that. */
  for (k = 0; k <= 5; ++k) {
    char nm[32], nm32[40];
    int C = k < 5 ? cfg.embed_dim << k : 16 * cfg.embed_dim;
    const float *got = k < 5 ? ioupos_swin_encoder_output(&enc, k) : ioupos_swin_encoder_feature(&enc);
    if (k < 5) snprintf(nm, sizeof nm, "out%d", k);
    else snprintf(nm, sizeof nm, "feature");
    snprintf(nm32, sizeof nm32, "f32.%s", nm);
    ref = st_get(&io, nm, &n);
    f32 = st_get(&io, nm32, NULL);
    S = n / (size_t)B / (size_t)C;
    tmp = (float *)calloc(n, sizeof(float));
    to_last(tmp, ref, B, C, S);
    CHECK(compare(nm, got, tmp, n, 3e-5, 3e-5, 1) == 0, "%s %s", name, nm);
    to_last(ref, f32, B, C, S);
    compare("  (torch f32 vs the same reference)", ref, tmp, n, 3e-5, 3e-5, 1);
    free(tmp);
    free(ref);
    free(f32);
  }
  /* backward of L = sum_k <out_k, R_k> */
  for (k = 0; k < 5; ++k) {
    char nm[8];
    int C = cfg.embed_dim << k;
    snprintf(nm, sizeof nm, "R%d", k);
    ref = st_get(&io, nm, &n);
    dout[k] = (float *)calloc(n, sizeof(float));
    to_last(dout[k], ref, B, C, n / (size_t)B / (size_t)C);
    free(ref);
  }
  dx = (float *)calloc(enc.in_shape[0] * enc.in_shape[1] * enc.in_shape[2] * (size_t)B, sizeof(float));
  rc = ioupos_swin_encoder_backward(&enc, &p, (const float *const *)dout, NULL, dx);
  CHECK(rc == 0, "backward: %s", ioupos_failure_reason());
  /* Gradients: sums over up to ~10^4 products in float32; PyTorch's float32 gradients differ
     from the float64 ones by up to 3e-6 relative. Tolerance 2e-5 of the tensor's largest
     element + 1e-4 |ref|. */
  compare_grads(&p, &io, name, 2e-5, 1e-4);
  ref = st_get(&io, "dx", &n);
  CHECK(compare("dx", dx, ref, n, 2e-5 * maxabs(ref, n), 1e-4, 1) == 0, "%s dx", name);
  free(ref);
  /* a second backward accumulates: every gradient doubles */
  {
    float *g1 = (float *)malloc(p.table.total * sizeof(float));
    size_t i, bad = 0;
    memcpy(g1, p.grad, p.table.total * sizeof(float));
    rc = ioupos_swin_encoder_backward(&enc, &p, (const float *const *)dout, NULL, NULL);
    /* the GEMM adds its partial sums into the existing gradient (beta = 1), so the second sum
       rounds differently from 2 x the first: 1e-5 relative + 1e-7 of the largest gradient */
    double gmax = maxabs(g1, p.table.total);
    for (i = 0; i < p.table.total; ++i)
      if (!(fabs(p.grad[i] - 2.0 * g1[i]) <= 1e-5 * fabs(2.0 * g1[i]) + 1e-7 * gmax)) ++bad;
    CHECK(rc == 0 && bad == 0, "second backward is not 2x the first at %zu elements", bad);
    free(g1);
  }
  for (k = 0; k < 5; ++k) free(dout[k]);
  free(dx);
  free(x);
  /* our checkpoint of these weights, for `make check-monai` (MONAI load_state_dict(strict=True)
     with tests/reference/check_ioupos_checkpoint.py) */
  snprintf(path, sizeof path, "build/ioupos_%s.safetensors", name);
  rc = ioupos_params_save(&p, path, "", "", 0, NULL);
  CHECK(rc == 0, "save %s: %s", path, ioupos_failure_reason());
  ioupos_safetensors_free(&io);
  ioupos_swin_encoder_free(&enc);
  ioupos_params_free(&p);
}

/* ---- token maps of size 1 along an axis ------------------------------------------------------ */
/* Where the map is 1 along an axis, patch merging (which pads odd sizes, as MONAI's PatchMerging
   does) no longer halves the token count while it doubles the width, so a later stage's token
   map can hold more floats than stage 0's (2D 2x6 with patch 2: maps 1x3, 1x2, 1x1, 1x1, 1x1, so
   3C, 4C, 4C, 8C, 16C floats): the scratch's buffers must be spaced by the largest map, not
   stage 0's. No MONAI fixture covers these shapes; the references are the same backend
   operations recomposed in buffers of their own (the outputs, bit for bit) and finite
   differences of L = sum_k <out_k, R_k> + <feature, R_f> (double sums of the float forward)
   at every input element and three elements of every parameter tensor (the gradients). 8x8
   (maps 16, 4, 1, 1, 1 tokens: stage 0's 16C floats are the largest) is the control. */
static ioupos_swin_encoder tm_enc;
static ioupos_params tm_p;
static float *tm_x, *tm_r[6];
static size_t tm_n[6];

static double tm_loss(void) {
  double L = 0.0;
  size_t i;
  int k, rc = ioupos_swin_encoder_forward(&tm_enc, &tm_p, tm_x, 0, NULL);
  if (rc != 0) CHECK(rc == 0, "forward: %s", ioupos_failure_reason()); /* counts failures only */
  for (k = 0; k < 6; ++k) {
    const float *o = k < 5 ? ioupos_swin_encoder_output(&tm_enc, k)
                           : ioupos_swin_encoder_feature(&tm_enc);
    for (i = 0; i < tm_n[k]; ++i) L += (double)o[i] * tm_r[k][i];
  }
  return L;
}

/* d tm_loss / d v[i] by the five-point stencil (8 (L(h) - L(-h)) - (L(2h) - L(-2h))) / 12h: its
   truncation error is O(h^4), so h can be large enough for the float32 forward's rounding noise
   to fade (a central difference's h^2 term was 15 % at h = 1e-2 on a few elements). The stored
   steps are off the multiples of h by half an ulp of v[i] at most (1e-6 of h here); v[i] is
   restored. */
static double tm_fd(float *v, size_t i, double h) {
  float v0 = v[i];
  double l[4];
  int k;
  for (k = 0; k < 4; ++k) {
    v[i] = (float)(v0 + (k < 2 ? 1.0 : -1.0) * (k % 2 ? 2.0 : 1.0) * h);
    l[k] = tm_loss();
  }
  v[i] = v0;
  return (8.0 * (l[0] - l[2]) - (l[1] - l[3])) / (12.0 * h);
}

/* The encoder's forward recomposed from the CPU backend's operations, every intermediate in a
   buffer of its own (no shared scratch), the outputs LayerNorm(x_k) into out[k]: the same
   operations on the same inputs, so the encoder's outputs must equal these bit for bit. Reads
   the plan's geometry, relative position index and masks, which the scratch does not touch. */
static void tm_ref_forward(float *out[5]) {
  const ioupos_swin_encoder *e = &tm_enc;
  const ioupos_backend *be = ioupos_backend_cpu();
  const ioupos_swin_config *c = &e->cfg;
  int B = e->batch, nd = c->spatial_dims, bi, k, rc;
  size_t n0 = e->ntok[0] * (size_t)c->embed_dim;
  float *x = (float *)malloc(n0 * sizeof(float)), *y, *col, *st[2];
  col = (float *)malloc(ioupos_patch_embed_col_size(nd, B, c->in_chans, e->in_shape,
                                                    c->patch_size) * sizeof(float));
  rc = be->patch_embed_forward(x, col, tm_x, ioupos_params_value(&tm_p, e->patch_w),
                               ioupos_params_value(&tm_p, e->patch_b), nd, B, c->in_chans,
                               e->in_shape, c->patch_size, c->embed_dim);
  CHECK(rc == 0, "reference patch embedding");
  free(col);
  for (k = 0; k < 5; ++k) {
    int C = c->embed_dim << k;
    size_t N = e->ntok[k], NC = N * (size_t)C;
    /* out_k = LayerNorm(x_k), x_k the input of stage k (MONAI's proj_out of x0 .. x4) */
    {
      float *mean = (float *)malloc(N * sizeof(float)), *rstd = (float *)malloc(N * sizeof(float));
      be->layernorm_forward(out[k], mean, rstd, x, NULL, NULL, (int)N, C, 1e-5f);
      free(mean), free(rstd);
    }
    for (bi = 0; k < 4 && bi < e->n_blocks; ++bi) {
      const ioupos_swin_block *b = &e->blocks[bi];
      const ioupos_swin_geom *g = &e->geom[k][b->shifted];
      int NH = c->num_heads[k];
      float *ln = (float *)malloc(NC * sizeof(float)), *br = (float *)malloc(NC * sizeof(float));
      float *mid = (float *)malloc(NC * sizeof(float)), *nx = (float *)malloc(NC * sizeof(float));
      float *mean = (float *)malloc(N * sizeof(float)), *rstd = (float *)malloc(N * sizeof(float));
      float *acts = (float *)malloc(ioupos_swin_attention_acts_size(g, C, NH) * sizeof(float));
      float *scr = (float *)malloc(ioupos_swin_attention_scratch_size(g, C, NH) * sizeof(float));
      float *h = (float *)malloc(NC * 4 * sizeof(float));
      float *scr2 = (float *)malloc(NC * 8 * sizeof(float));
      if (b->stage != k) goto next;
      be->layernorm_forward(ln, mean, rstd, x, ioupos_params_value(&tm_p, b->norm1_w),
                            ioupos_params_value(&tm_p, b->norm1_b), (int)N, C, 1e-5f);
      rc = be->swin_attention_forward(br, acts, scr, ln, ioupos_params_value(&tm_p, b->qkv_w),
                                      ioupos_params_value(&tm_p, b->qkv_b),
                                      ioupos_params_value(&tm_p, b->proj_w),
                                      ioupos_params_value(&tm_p, b->proj_b),
                                      ioupos_params_value(&tm_p, b->table),
                                      e->index + e->index_off[k],
                                      g->shifted ? e->act + e->mask_off[k] : NULL, g, C, NH);
      CHECK(rc == 0, "reference attention");
      be->residual_forward(mid, x, br, NULL, B, N / (size_t)B * (size_t)C);
      be->layernorm_forward(ln, mean, rstd, mid, ioupos_params_value(&tm_p, b->norm2_w),
                            ioupos_params_value(&tm_p, b->norm2_b), (int)N, C, 1e-5f);
      rc = be->mlp_forward(br, h, scr2, ln, ioupos_params_value(&tm_p, b->fc1_w),
                           ioupos_params_value(&tm_p, b->fc1_b),
                           ioupos_params_value(&tm_p, b->fc2_w),
                           ioupos_params_value(&tm_p, b->fc2_b), (int)N, C, 4 * C);
      CHECK(rc == 0, "reference MLP");
      be->residual_forward(nx, mid, br, NULL, B, N / (size_t)B * (size_t)C);
      memcpy(x, nx, NC * sizeof(float));
    next:
      free(ln), free(br), free(mid), free(nx), free(mean), free(rstd), free(acts), free(scr);
      free(h), free(scr2);
    }
    if (k == 4) break;
    {
      size_t M = e->ntok[k + 1], K = (size_t)(1 << nd) * (size_t)C;
      st[0] = (float *)malloc(2 * M * K * sizeof(float));
      st[1] = (float *)malloc(2 * M * sizeof(float));
      y = (float *)malloc(M * 2 * (size_t)C * sizeof(float));
      rc = be->patch_merging_forward(y, st[0], st[0] + M * K, st[1], st[1] + M, x,
                                     ioupos_params_value(&tm_p, e->merge_norm_w[k]),
                                     ioupos_params_value(&tm_p, e->merge_norm_b[k]),
                                     ioupos_params_value(&tm_p, e->merge_red[k]), nd, B,
                                     e->map[k], C);
      CHECK(rc == 0, "reference patch merging");
      free(st[0]), free(st[1]), free(x);
      x = y;
    }
  }
  free(x);
}

static void test_tiny_maps(int nd, const int *shape) {
  ioupos_swin_config cfg;
  ioupos_rng rng;
  int B = 2, k, i, rc, nbad = 0, ntried = 0, nbits = 0;
  size_t nx = (size_t)B, j;
  float *dx, *g;
  double worst = 0.0, wfd = 0.0, wg = 0.0, tol;
  char label[64];
  snprintf(label, sizeof label, "%dD %dx%d%s%.0d", nd, shape[0], shape[1], nd == 3 ? "x" : "",
           nd == 3 ? shape[2] : 0);
  memset(&tm_p, 0, sizeof tm_p);
  swin_cfg(&cfg, nd);
  rc = ioupos_swin_encoder_init(&tm_enc, &cfg, &tm_p.table, "");
  CHECK(rc == 0, "init: %s", ioupos_failure_reason());
  rc = ioupos_params_alloc(&tm_p, ioupos_backend_cpu(), 1);
  CHECK(rc == 0, "alloc");
  rc = ioupos_swin_encoder_plan(&tm_enc, &tm_p, B, shape);
  CHECK(rc == 0, "plan %s: %s", label, ioupos_failure_reason());
  if (rc) return;
  ioupos_rng_seed(&rng, 12345);
  /* parameters O(1) in effect, as the fixtures' (ioupos_params_init's 0.02 would leave the
     blocks' branches negligible beside the residual path): U(-1, 1) / sqrt(fan_in) for matrices,
     1 + 0.2 U(-1, 1) for norm weights, 0.2 U(-1, 1) for the rest */
  for (i = 0; i < tm_p.table.n; ++i) {
    const ioupos_tensor_info *t = &tm_p.table.t[i];
    float *v = ioupos_params_value(&tm_p, i);
    double sc = 0.2, base = 0.0;
    if (t->dtype != IOUPOS_ST_F32) continue;
    if (t->ndim >= 2) sc = 1.0 / sqrt((double)(t->numel / (size_t)t->shape[0]));
    else if (strstr(t->name, "norm") && strstr(t->name, "weight")) base = 1.0;
    if (strstr(t->name, "relative_position_bias_table")) sc = 0.5;
    for (j = 0; j < t->numel; ++j)
      v[j] = (float)(base + sc * (2.0 * ioupos_rng_uniform(&rng) - 1.0));
  }
  for (k = 0; k < nd; ++k) nx *= (size_t)shape[k];
  tm_x = (float *)malloc(nx * sizeof(float));
  dx = (float *)calloc(nx, sizeof(float));
  for (j = 0; j < nx; ++j) tm_x[j] = (float)(2.0 * ioupos_rng_uniform(&rng) - 1.0);
  for (k = 0; k < 6; ++k) {
    tm_n[k] = k < 5 ? tm_enc.ntok[k] * (size_t)(cfg.embed_dim << k)
                    : (size_t)B * 16 * cfg.embed_dim;
    tm_r[k] = (float *)malloc(tm_n[k] * sizeof(float));
    for (j = 0; j < tm_n[k]; ++j) tm_r[k][j] = (float)(2.0 * ioupos_rng_uniform(&rng) - 1.0);
  }
  tm_loss();
  {
    float *ref[5];
    for (k = 0; k < 5; ++k) ref[k] = (float *)malloc(tm_n[k] * sizeof(float));
    tm_ref_forward(ref);
    for (k = 0; k < 5; ++k) {
      const float *o = ioupos_swin_encoder_output(&tm_enc, k);
      for (j = 0; j < tm_n[k]; ++j) {
        if (memcmp(&o[j], &ref[k][j], sizeof(float)) == 0) continue;
        if (++nbits <= 3)
          printf("    out%d[%zu]: %.9g, the recomposed forward %.9g\n", k, j, (double)o[j],
                 (double)ref[k][j]);
      }
      free(ref[k]);
    }
    CHECK(nbits == 0, "%s: %d outputs differ from the recomposed forward", label, nbits);
  }
  memset(tm_p.grad, 0, tm_p.table.total * sizeof(float));
  rc = ioupos_swin_encoder_backward(&tm_enc, &tm_p, (const float *const *)tm_r, tm_r[5], dx);
  CHECK(rc == 0, "backward: %s", ioupos_failure_reason());
  g = (float *)malloc(tm_p.table.total * sizeof(float));
  memcpy(g, tm_p.grad, tm_p.table.total * sizeof(float));
  /* float32 forward, O(1) values and gradients: at h = 2e-2 the five-point stencil's error is
     the rounding noise of L over 12h, which stays within 0.3 of the tolerance 2e-3 + 2e-2 |g|
     (measured on these cases; the overlapping scratch was off by up to 5000 times it) */
  for (i = -1; i < tm_p.table.n; ++i) {
    const ioupos_tensor_info *t = i < 0 ? NULL : &tm_p.table.t[i];
    float *v = t ? ioupos_params_value(&tm_p, i) : tm_x;
    const float *gv = t ? g + t->offset : dx;
    size_t n = t ? t->numel : nx, m = t ? 3 : nx;
    if (t && (t->dtype != IOUPOS_ST_F32 || (t->flags & IOUPOS_TENSOR_BUFFER))) continue;
    for (j = 0; j < m && j < n; ++j) {
      size_t e = m >= n ? j : (size_t)ioupos_rng_below(&rng, n);
      double fd = tm_fd(v, e, 2e-2), ex;
      tol = 2e-3 + 2e-2 * fabs(gv[e]);
      ex = fabs(fd - gv[e]) / tol;
      ++ntried;
      if (!(ex <= 1.0)) {
        if (nbad < 5)
          printf("    %s[%zu]: fd %.6g vs analytic %.6g\n", t ? t->name : "dx", e, fd,
                 (double)gv[e]);
        ++nbad;
      }
      if (!(ex <= worst)) worst = ex, wfd = fd, wg = gv[e];
    }
  }
  printf("  tiny map %-10s maps", label);
  for (k = 0; k < 5; ++k) printf(" %zu", tm_enc.ntok[k] / (size_t)B);
  printf(": outputs %s; %d finite differences, %d bad, worst fd %.6g vs %.6g (%.2f of "
         "tolerance)\n", nbits ? "DIFFER" : "bit-identical", ntried, nbad, wfd, wg, worst);
  CHECK(nbad == 0, "%s: %d of %d gradients disagree with finite differences", label, nbad, ntried);
  for (k = 0; k < 6; ++k) free(tm_r[k]);
  free(tm_x);
  free(dx);
  free(g);
  ioupos_swin_encoder_free(&tm_enc);
  ioupos_params_free(&tm_p);
}

/* ---- checkpoints: round trips and errors --------------------------------------------------- */
static void test_checkpoints(void) {
  ioupos_swin_config cfg;
  ioupos_swin_encoder enc, enc2;
  ioupos_params p, q;
  ioupos_st_file f;
  ioupos_rng rng;
  const char *tmp = "build/test_model_ckpt.safetensors";
  int rc, nl, no, shape[2] = {40, 36};
  ioupos_st_pair meta[1];
  printf("checkpoints:\n");
  memset(&p, 0, sizeof p);
  memset(&q, 0, sizeof q);
  swin_cfg(&cfg, 2);
  ioupos_swin_encoder_init(&enc, &cfg, &p.table, "backbone.");
  ioupos_params_alloc(&p, ioupos_backend_cpu(), 0);
  ioupos_rng_seed(&rng, 5);
  rc = ioupos_params_init(&p, &rng);
  CHECK(rc == 0, "init");
  ioupos_swin_encoder_plan(&enc, &p, 1, shape);
  /* init rules: norms 1 / 0, linear weights within +-1/sqrt(fan_in), tables ~N(0, 0.02) */
  {
    int i = ioupos_tensor_find(&p.table, "backbone.layers1.0.blocks.0.norm1.weight");
    int j = ioupos_tensor_find(&p.table, "backbone.layers2.0.blocks.1.mlp.linear1.weight");
    int t = ioupos_tensor_find(&p.table, "backbone.layers1.0.blocks.0.attn.relative_position_bias_table");
    double m = maxabs(ioupos_params_value(&p, j), p.table.t[j].numel), s2 = 0.0;
    size_t k, n = p.table.t[t].numel;
    const float *tv = ioupos_params_value(&p, t);
    CHECK(i >= 0 && ioupos_params_value(&p, i)[0] == 1.0f, "layer norm weight init 1");
    CHECK(m <= 1.0 / sqrt(12.0) && m > 0.8 / sqrt(12.0), "linear init bound: max %g", m);
    for (k = 0; k < n; ++k) s2 += (double)tv[k] * tv[k];
    CHECK(fabs(sqrt(s2 / n) - 0.02) < 0.006, "table init std %g", sqrt(s2 / n));
    CHECK(p.table.t[j].flags == 0 && (p.table.t[i].flags & IOUPOS_TENSOR_NO_DECAY) &&
              (p.table.t[t].flags & IOUPOS_TENSOR_NO_DECAY) == 0,
          "no weight decay on 1-D tensors and biases only");
  }
  meta[0].key = "format";
  meta[0].value = "pt";
  /* ours -> file with prefix swapped -> a model with another prefix: identical values */
  rc = ioupos_params_save(&p, tmp, "backbone.", "swinViT.", 1, meta);
  CHECK(rc == 0, "save: %s", ioupos_failure_reason());
  ioupos_swin_encoder_init(&enc2, &cfg, &q.table, "");
  ioupos_params_alloc(&q, ioupos_backend_cpu(), 0);
  ioupos_swin_encoder_plan(&enc2, &q, 1, shape);
  rc = ioupos_safetensors_read(tmp, &f);
  CHECK(rc == 0, "read back");
  CHECK(rc == 0 && strcmp(ioupos_swin_find_prefix(&f), "swinViT.") == 0, "prefix detection");
  rc = ioupos_params_load(&q, &f, "", "swinViT.", &nl, &no);
  CHECK(rc == 0 && nl == q.table.n && no == 0, "load renamed: %s", ioupos_failure_reason());
  CHECK(memcmp(p.value, q.value, p.table.total * sizeof(float)) == 0 &&
            memcmp(p.ivalue, q.ivalue, p.table.itotal * sizeof(int64_t)) == 0,
        "round trip is exact");
  /* unexpected: loading with prefix "" sees every tensor as foreign */
  rc = ioupos_params_load(&q, &f, "", "", &nl, &no);
  CHECK(rc == IOUPOS_EFORMAT && strstr(ioupos_failure_reason(), "does not have"),
        "foreign names: %s", ioupos_failure_reason());
  ioupos_safetensors_free(&f);
  /* a tampered relative_position_index (another window) */
  p.ivalue[p.table.t[ioupos_tensor_find(&p.table, "backbone.layers3.0.blocks.1.attn.relative_position_index")].offset + 7] += 1;
  ioupos_params_save(&p, tmp, "backbone.", "", 0, NULL);
  ioupos_safetensors_read(tmp, &f);
  rc = ioupos_params_load(&q, &f, "", "", &nl, &no);
  CHECK(rc == IOUPOS_EFORMAT && strstr(ioupos_failure_reason(), "layers3.0.blocks.1.attn.relative_position_index") &&
            strstr(ioupos_failure_reason(), "window"),
        "index mismatch: %s", ioupos_failure_reason());
  ioupos_safetensors_free(&f);
  /* the file lacks a tensor: save only layers1..., load everything */
  ioupos_params_save(&q, tmp, "layers1.", "layers1.", 0, NULL);
  ioupos_safetensors_read(tmp, &f);
  rc = ioupos_params_load(&q, &f, "", "", &nl, &no);
  CHECK(rc == IOUPOS_EFORMAT && strstr(ioupos_failure_reason(), "lacks tensor 'patch_embed.proj.weight'"),
        "missing tensor: %s", ioupos_failure_reason());
  /* ... but loading just that part works and leaves the rest alone */
  rc = ioupos_params_load(&q, &f, "layers1.", "layers1.", &nl, &no);
  CHECK(rc == 0 && nl > 0 && no == 0, "partial load: %s", ioupos_failure_reason());
  ioupos_safetensors_free(&f);
  ioupos_swin_encoder_free(&enc2);
  ioupos_params_free(&q);
  /* another width: shapes differ; the message names tensor and both shapes */
  memset(&q, 0, sizeof q);
  cfg.embed_dim = 12;
  ioupos_swin_encoder_init(&enc2, &cfg, &q.table, "");
  ioupos_params_alloc(&q, ioupos_backend_cpu(), 0);
  ioupos_safetensors_read(FIXDIR "swin2d_weights.safetensors", &f);
  rc = ioupos_params_load(&q, &f, "", "", &nl, &no);
  CHECK(rc == IOUPOS_EFORMAT && strstr(ioupos_failure_reason(), "[6, 1, 2, 2]") &&
            strstr(ioupos_failure_reason(), "[12, 1, 2, 2]"),
        "shape mismatch: %s", ioupos_failure_reason());
  ioupos_safetensors_free(&f);
  /* bad configurations */
  cfg.num_heads[2] = 5;
  {
    ioupos_tensor_table tt;
    memset(&tt, 0, sizeof tt);
    rc = ioupos_swin_encoder_init(&enc2, &cfg, &tt, "");
    CHECK(rc == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "`num_heads`"), "heads: %s",
          ioupos_failure_reason());
    ioupos_tensor_table_free(&tt);
  }
  ioupos_swin_encoder_free(&enc2);
  ioupos_params_free(&q);
  ioupos_swin_encoder_free(&enc);
  ioupos_params_free(&p);
  remove(tmp);
}

/* ---- one SimSiam training step (two, for momentum), through section 18's ioupos_simsiam ---- */
/* Data-parallel drop-path (ioupos_swin_encoder_shard): a batch of 2 segments of 3 rows (two
   views of 3 samples) with drop_path 0.5, forward in training; then each shard (rows 0, 1 and
   2 of each segment, one process's share) alone from the same generator: its features must be
   the whole batch's rows, bit for bit (drop-path draws for the global rows; a row's forward
   does not depend on the other rows). Without the shard the masks would be drawn for 2 rows. */
static void test_encoder_shard(void) {
  ioupos_swin_config cfg;
  ioupos_swin_encoder enc;
  ioupos_params p;
  ioupos_rng r0, r;
  int shape[2] = {32, 32}, G = 3, F, rc, first, seg;
  size_t npix = 32 * 32, i;
  float *x, *xs, *whole;
  int bad = 0, masked = 0;
  printf("encoder shard:\n");
  memset(&p, 0, sizeof p);
  swin_cfg(&cfg, 2);
  cfg.drop_path_rate = 0.5f;
  F = ioupos_swin_feature_dim(&cfg);
  rc = ioupos_swin_encoder_init(&enc, &cfg, &p.table, "");
  if (rc == 0) rc = ioupos_params_alloc(&p, ioupos_backend_cpu(), 1);
  ioupos_rng_seed(&r0, 5);
  if (rc == 0) rc = ioupos_params_init(&p, &r0);
  if (rc == 0) rc = ioupos_swin_encoder_plan(&enc, &p, 2 * G, shape);
  CHECK(rc == 0, "build: %s", ioupos_failure_reason());
  if (rc) return;
  x = (float *)malloc(2 * G * npix * sizeof(float));
  xs = (float *)malloc(2 * npix * sizeof(float));
  whole = (float *)malloc(2 * G * (size_t)F * sizeof(float));
  for (i = 0; i < 2 * G * npix; ++i) x[i] = (float)sin(0.37 * (double)i);
  ioupos_rng_seed(&r0, 77);
  r = r0;
  rc = ioupos_swin_encoder_forward(&enc, &p, x, 1, &r);
  CHECK(rc == 0, "whole forward: %s", ioupos_failure_reason());
  memcpy(whole, ioupos_swin_encoder_feature(&enc), 2 * G * (size_t)F * sizeof(float));
  rc = ioupos_swin_encoder_plan(&enc, &p, 2, shape);
  for (first = 0; rc == 0 && first < G; ++first) {
    for (seg = 0; seg < 2; ++seg)
      memcpy(xs + seg * npix, x + ((size_t)seg * G + first) * npix, npix * sizeof(float));
    rc = ioupos_swin_encoder_shard(&enc, G, 1, first);
    r = r0;
    if (rc == 0) rc = ioupos_swin_encoder_forward(&enc, &p, xs, 1, &r);
    CHECK(rc == 0, "shard %d forward: %s", first, ioupos_failure_reason());
    for (seg = 0; rc == 0 && seg < 2; ++seg)
      bad += memcmp(ioupos_swin_encoder_feature(&enc) + (size_t)seg * F,
                    whole + ((size_t)seg * G + first) * F, (size_t)F * sizeof(float)) != 0;
  }
  CHECK(bad == 0, "%d shard rows differ from the whole batch's", bad);
  /* the check has teeth: without the shard the same rows draw other masks */
  ioupos_swin_encoder_shard(&enc, 0, 0, 0);
  for (seg = 0; seg < 2; ++seg)
    memcpy(xs + seg * npix, x + ((size_t)seg * G + 2) * npix, npix * sizeof(float));
  r = r0;
  if (ioupos_swin_encoder_forward(&enc, &p, xs, 1, &r) == 0)
    for (seg = 0; seg < 2; ++seg)
      masked += memcmp(ioupos_swin_encoder_feature(&enc) + (size_t)seg * F,
                       whole + ((size_t)seg * G + 2) * F, (size_t)F * sizeof(float)) != 0;
  CHECK(masked > 0, "unsharded rows 2 and 5 drew the whole batch's masks: the test cannot tell");
  rc = ioupos_swin_encoder_shard(&enc, 3, 2, 2);
  CHECK(rc == IOUPOS_EINVAL, "rows 2 .. 3 of 3 accepted");
  free(x), free(xs), free(whole);
  ioupos_swin_encoder_free(&enc);
  ioupos_params_free(&p);
}

static void test_simsiam(void) {
  ioupos_simsiam m;
  ioupos_simsiam_config cfg;
  ioupos_ssl_stats st1, st2;
  ioupos_st_file st;
  int B = 4, shape[2], rc;
  size_t n;
  float *x1, *x2, *ref, lossf;
  printf("simsiam step:\n");
  ioupos_simsiam_config_default(&cfg, 2);
  swin_cfg(&cfg.enc, 2);
  cfg.proj_hidden = 32;
  cfg.proj_out = 32;
  cfg.pred_hidden = 8;
  rc = ioupos_simsiam_init(&m, &cfg, ioupos_backend_cpu(), 1);
  CHECK(rc == 0, "build: %s", ioupos_failure_reason());
  if (rc) return;
  if (ioupos_safetensors_read(FIXDIR "simsiam_step.safetensors", &st) != 0) {
    CHECK(0, "read simsiam_step: %s", ioupos_failure_reason());
    return;
  }
  x1 = st_get(&st, "x1", NULL);
  x2 = st_get(&st, "x2", NULL);
  shape[0] = (int)ioupos_safetensors_find(&st, "x1")->shape[2];
  shape[1] = (int)ioupos_safetensors_find(&st, "x1")->shape[3];
  /* every state-dict entry (BN running statistics and num_batches_tracked included) loads */
  load_into(&m.p, FIXDIR "simsiam_weights.safetensors", "", "");
  ioupos_simsiam_zero_grad(&m);
  rc = ioupos_simsiam_accumulate(&m, x1, x2, B, shape, 1.0f, NULL, &st1);
  CHECK(rc == 0, "accumulate: %s", ioupos_failure_reason());
  /* z, p: float32 PyTorch itself differs from float64 by up to 5e-5 here (batch norm over 4
     rows amplifies rounding), so 2e-4 absolute on these O(1) values */
  {
    static const char *names[4] = {"z1", "z2", "p1", "p2"};
    int v;
    for (v = 0; v < 4; ++v) {
      const float *got = ioupos_head_output(v < 2 ? &m.proj : &m.pred, v % 2);
      ref = st_get(&st, names[v], &n);
      CHECK(compare(names[v], got, ref, n, 2e-4, 1e-4, 1) == 0, "simsiam %s", names[v]);
      free(ref);
    }
  }
  ref = st_get(&st, "loss", NULL);
  lossf = (float)st1.loss;
  CHECK(compare("loss", &lossf, ref, 1, 2e-6, 0, 1) == 0, "simsiam loss %.9g vs %.9g", st1.loss,
        ref[0]);
  free(ref);
  CHECK(st1.z_std > 0.0 && st1.z_std < 1.0 && st1.p_std > 0.0 && st1.p_std < 1.0,
        "monitors %g %g", st1.z_std, st1.p_std);
  /* gradients: float32 PyTorch vs float64 differ by 2.5e-5 relative (BN over 4 rows); allow
     5e-4 of each tensor's largest element + 1e-3 |ref| */
  compare_grads(&m.p, &st, "simsiam", 5e-4, 1e-3);
  /* SGD momentum 0.9, wd 1e-5 except biases and 1-D tensors, lr 0.0125 (backbone, projection;
     what a cosine would give) and 0.025 (predictor, held at the base lr): the fixture's groups */
  rc = ioupos_simsiam_step(&m, 0.0125, 0.025, 0.9, 1e-5);
  ioupos_simsiam_zero_grad(&m);
  if (rc == 0) rc = ioupos_simsiam_accumulate(&m, x1, x2, B, shape, 1.0f, NULL, &st2);
  if (rc == 0) rc = ioupos_simsiam_step(&m, 0.0125, 0.025, 0.9, 1e-5);
  CHECK(rc == 0 && m.steps == 2, "two steps: %s", ioupos_failure_reason());
  ref = st_get(&st, "loss2", NULL);
  lossf = (float)st2.loss;
  CHECK(compare("loss2", &lossf, ref, 1, 1e-5, 0, 1) == 0, "simsiam loss2");
  free(ref);
  /* after two steps: parameters move by lr * grad ~ 1e-3, so gradient differences of 1e-3
     relative leave ~1e-6; running statistics follow the batch statistics (4 rows) */
  compare_state(&m.p, &st, "after.", "simsiam after 2 SGD steps", 2e-5, 1e-4);
  /* gradient accumulation: two half-scaled micro-batches give the full gradient */
  {
    float *g1 = (float *)malloc(m.p.table.total * sizeof(float));
    size_t i, bad = 0;
    double gmax;
    ioupos_simsiam_zero_grad(&m);
    ioupos_simsiam_accumulate(&m, x1, x2, B, shape, 1.0f, NULL, NULL);
    memcpy(g1, m.p.grad, m.p.table.total * sizeof(float));
    gmax = maxabs(g1, m.p.table.total);
    ioupos_simsiam_zero_grad(&m);
    ioupos_simsiam_accumulate(&m, x1, x2, B, shape, 0.5f, NULL, NULL);
    ioupos_simsiam_accumulate(&m, x1, x2, B, shape, 0.5f, NULL, NULL);
    /* (batch-norm running statistics move between the calls, but the batch statistics that the
       gradient uses do not) */
    for (i = 0; i < m.p.table.total; ++i)
      if (!(fabs(m.p.grad[i] - g1[i]) <= 1e-5 * fabs(g1[i]) + 1e-7 * gmax)) ++bad;
    CHECK(bad == 0, "accumulated half + half != full at %zu elements", bad);
    free(g1);
  }
  free(x1);
  free(x2);
  ioupos_safetensors_free(&st);
  ioupos_simsiam_free(&m);
}

/* ---- one DINO step, through section 18's ioupos_dino ------------------------------------- */
static void test_dino(void) {
  ioupos_dino m;
  ioupos_dino_config cfg;
  ioupos_ssl_stats sst;
  ioupos_st_file st;
  int B = 4, shape[2], rc, i, D = 64;
  size_t n;
  float *x1, *x2, *ref, *center, lossf;
  printf("dino step:\n");
  ioupos_dino_config_default(&cfg, 2);
  swin_cfg(&cfg.enc, 2);
  cfg.hidden = 32;
  cfg.bottleneck = 16;
  cfg.out_dim = D;
  rc = ioupos_dino_init(&m, &cfg, ioupos_backend_cpu(), 1);
  CHECK(rc == 0, "build: %s", ioupos_failure_reason());
  if (rc) return;
  if (ioupos_safetensors_read(FIXDIR "dino_step.safetensors", &st) != 0) {
    CHECK(0, "read dino_step: %s", ioupos_failure_reason());
    return;
  }
  x1 = st_get(&st, "x1", NULL);
  x2 = st_get(&st, "x2", NULL);
  shape[0] = (int)ioupos_safetensors_find(&st, "x1")->shape[2];
  shape[1] = (int)ioupos_safetensors_find(&st, "x1")->shape[3];
  load_into(&m.s, FIXDIR "dino_weights.safetensors", "", "");
  rc = ioupos_params_copy(&m.t, &m.s);
  CHECK(rc == 0, "teacher copy");
  center = st_get(&st, "center", NULL);
  memcpy(m.center, center, (size_t)D * sizeof(float)); /* the fixture's centre (CPU backend) */
  /* student and teacher on [x1; x2] (the DINO reference's view order), loss, backward, centre */
  ioupos_dino_zero_grad(&m);
  rc = ioupos_dino_accumulate(&m, x1, x2, NULL, 0, B, shape, NULL, 0.04f, 1.0f, NULL, &sst);
  CHECK(rc == 0, "accumulate: %s", ioupos_failure_reason());
  /* head outputs: float32 on both sides through encoder + head; 1e-4 on O(1) values */
  ref = st_get(&st, "student_out", &n);
  CHECK(compare("student_out", ioupos_head_output(&m.head_s, 0), ref, n, 1e-4, 1e-4, 1) == 0,
        "dino student_out");
  free(ref);
  ref = st_get(&st, "teacher_out", &n);
  CHECK(compare("teacher_out", ioupos_head_output(&m.head_t, 0), ref, n, 1e-4, 1e-4, 1) == 0,
        "dino teacher_out");
  free(ref);
  ref = st_get(&st, "loss", NULL);
  lossf = (float)sst.loss;
  CHECK(compare("loss", &lossf, ref, 1, 1e-5, 0, 1) == 0, "dino loss");
  free(ref);
  /* gradients through temperature 0.1 / 0.04 softmaxes: 1e-3 of each tensor's scale */
  compare_grads(&m.s, &st, "dino", 1e-3, 1e-3);
  ref = st_get(&st, "center_after", &n);
  CHECK(compare("center_after", m.center, ref, n, 1e-6, 1e-5, 1) == 0, "dino centre update");
  free(ref);
  /* clip each gradient at 3.0, AdamW (lr 1e-3, wd 0.04 except biases and 1-D; epoch 1, so the
     last layer is not frozen); the teacher EMA comes after the patch below (momentum 1 = none) */
  rc = ioupos_dino_step(&m, 1e-3, 0.04, 1, 1, 3.0f, 1.0);
  CHECK(rc == 0, "step");
  /* AdamW's first step is ~lr * sign(grad) whatever the gradient's size (|grad| >> eps 1e-8),
     so an element whose gradient is rounding noise on both sides moves by +-1e-3 in a direction
     that no tolerance can match.
     (a) The key part of each qkv bias, qkv.bias[C:2C], has an exactly zero gradient in exact
     arithmetic (the softmax over keys ignores adding q.b_k to every score): check that our
     key-bias gradients are noise-sized, then take those elements from the reference.
     (b) Elsewhere, in every tensor, an element whose reference gradient is below 1e-6 of that
     tensor's largest is noise of the same kind (e.g. 3e-8 where the largest is O(1): the order
     of summation, SIMD or not, decides its sign): take it from the reference too, count them,
     and check that they are few (under 1% of the elements). Everything else, exact zeros
     included, is compared tightly. */
  {
    long n_noise = 0, n_all = 0;
    for (i = 0; i < m.s.table.n; ++i) {
      const ioupos_tensor_info *ti = &m.s.table.t[i];
      char name[160];
      size_t C = 0, c, k = 0, nt = 0;
      float *gref, *vref;
      double gmax;
      int kbias = strstr(ti->name, "attn.qkv.bias") != NULL;
      snprintf(name, sizeof name, "grad.%s", ti->name);
      if (ti->dtype != IOUPOS_ST_F32 || !ioupos_safetensors_find(&st, name)) continue;
      gref = st_get(&st, name, &k);
      snprintf(name, sizeof name, "after.%s", ti->name);
      vref = st_get(&st, name, NULL);
      if (!gref || !vref || k != ti->numel) {
        CHECK(0, "%s: no reference gradient / value of %zu elements", ti->name, ti->numel);
        free(gref);
        free(vref);
        continue;
      }
      if (kbias) {
        double gk, gall;
        C = ti->numel / 3;
        gk = maxabs(ioupos_params_grad(&m.s, i) + C, C);
        gall = maxabs(ioupos_params_grad(&m.s, i), ti->numel);
        CHECK(gk <= 1e-5 * gall, "%s: key-bias gradient %g vs %g", ti->name, gk, gall);
        for (c = C; c < 2 * C; ++c) ioupos_params_value(&m.s, i)[c] = vref[c];
      }
      gmax = maxabs(gref, k);
      for (c = 0; c < k; ++c) {
        if (kbias && c >= C && c < 2 * C) continue;
        ++n_all;
        /* (an element with an exactly zero gradient on both sides, e.g. a relative position a
           small feature map never has, takes the same exact step: compared as it is) */
        if (fabs(gref[c]) < 1e-6 * gmax &&
            (gref[c] != 0.0f || ioupos_params_grad(&m.s, i)[c] != 0.0f)) {
          ioupos_params_value(&m.s, i)[c] = vref[c];
          ++nt;
        }
      }
      if (nt)
        printf("  %-44s %zu of %zu elements with a noise-sized reference gradient (< 1e-6 of "
               "%.3g) taken from the reference\n", ti->name, nt, k, gmax);
      n_noise += (long)nt;
      free(gref);
      free(vref);
    }
    printf("  dino AdamW: %ld of %ld elements (key biases aside) taken from the reference as "
           "gradient noise\n", n_noise, n_all);
    CHECK(n_all > 0 && n_noise * 100 < n_all, "dino AdamW: %ld of %ld elements are gradient noise",
          n_noise, n_all);
  }
  compare_state(&m.s, &st, "after.", "dino student after AdamW", 2e-5, 1e-4);
  ioupos_ema_update(m.t.value, m.s.value, m.t.table.total, 0.996);
  compare_state(&m.t, &st, "teacher_after.", "dino teacher after EMA", 1e-6, 1e-5);
  /* epoch 0 with freeze_last_layer 1: the last layer takes no step (nor a step count) */
  {
    int v = ioupos_tensor_find(&m.s.table, "head.last_layer.weight_v");
    int w = ioupos_tensor_find(&m.s.table, "head.mlp.0.weight");
    size_t nv = m.s.table.t[v].numel;
    float *before = (float *)malloc(nv * sizeof(float));
    int64_t sv = m.adam_steps[v], sw = m.adam_steps[w];
    memcpy(before, ioupos_params_value(&m.s, v), nv * sizeof(float));
    ioupos_dino_zero_grad(&m);
    rc = ioupos_dino_accumulate(&m, x1, x2, NULL, 0, B, shape, NULL, 0.04f, 1.0f, NULL, &sst);
    if (rc == 0) rc = ioupos_dino_step(&m, 1e-3, 0.04, 0, 1, 3.0f, 0.996);
    CHECK(rc == 0 && memcmp(before, ioupos_params_value(&m.s, v), nv * sizeof(float)) == 0 &&
              m.adam_steps[v] == sv && m.adam_steps[w] == sw + 1,
          "frozen last layer in epoch 0");
    free(before);
  }
  free(x1);
  free(x2);
  free(center);
  ioupos_safetensors_free(&st);
  ioupos_dino_free(&m);
}

/* ---- SwinUNETR: logits and every gradient of L = sum(logits * G) -------------------------- */
/* ---- section 18's run checks: refused before anything is written --------------------------- */
static void run_refused(const ioupos_pretrain_opts *o, const char *what, const char *want1,
                        const char *want2) {
  struct stat sb;
  int rc = ioupos_pretrain_run(o);
  const char *why = ioupos_failure_reason();
  CHECK(rc == IOUPOS_EINVAL, "%s: status %d, want EINVAL", what, rc);
  CHECK(why && strstr(why, want1) && (!want2 || strstr(why, want2)), "%s: reason '%s' lacks '%s'%s%s",
        what, why ? why : "", want1, want2 ? " / " : "", want2 ? want2 : "");
  CHECK(stat(o->chkpt_dir, &sb) != 0, "%s: %s was created", what, o->chkpt_dir);
  printf("  %-44s refused: %s\n", what, why ? why : "");
}

static void test_run_checks(void) {
  ioupos_pretrain_opts o;
  printf("pretraining run checks:\n");
  ioupos_pretrain_opts_default(&o, IOUPOS_SSL_SIMSIAM);
  o.data_dir = "no_such_data_dir";
  o.chkpt_dir = "test_model_run_checks.tmp";
  o.crop[0] = 32;
  o.crop[1] = 24;
  run_refused(&o, "simsiam crop 32,24", "`crop` 32,24", "square");
  ioupos_pretrain_opts_default(&o, IOUPOS_SSL_DINO);
  o.data_dir = "no_such_data_dir";
  o.chkpt_dir = "test_model_run_checks.tmp";
  o.crop[0] = 24;
  o.crop[1] = 32;
  run_refused(&o, "dino crop 24,32", "`crop` 24,32", "square");
  o.crop[1] = 24;
  o.n_local = 2;
  o.local_crop[0] = 16;
  o.local_crop[1] = 12;
  run_refused(&o, "dino local_crop 16,12", "`local_crop` 16,12", "square");
  o.local_crop[1] = 16;
  o.n_epochs = 10; /* the default --warmup_epochs is 10 */
  run_refused(&o, "dino warmup_epochs 10, n_epochs 10", "`warmup_epochs` 10", "`n_epochs` 10");
  /* without local crops their size is not used, so not checked; a warm-up inside the run is
     fine: both get as far as the data folder */
  o.n_local = 0;
  o.local_crop[1] = 12;
  o.n_epochs = 11;
  CHECK(ioupos_pretrain_run(&o) == IOUPOS_EIO || strstr(ioupos_failure_reason(), "no_such_data_dir"),
        "dino with valid flags fails at the data folder: %s", ioupos_failure_reason());
}

static void test_unetr(const char *name, int nd) {
  char path[256];
  ioupos_swinunetr_config cfg;
  ioupos_swinunetr m;
  ioupos_params p;
  ioupos_st_file io;
  const ioupos_st_tensor *xt;
  int B, shape[3] = {1, 1, 1}, d, rc;
  size_t n, nx;
  float *x, *dx, *G, *ref;
  printf("%s:\n", name);
  snprintf(path, sizeof path, FIXDIR "%s_io.safetensors", name);
  if (ioupos_safetensors_read(path, &io) != 0) {
    CHECK(0, "read %s: %s", path, ioupos_failure_reason());
    return;
  }
  memset(&p, 0, sizeof p);
  ioupos_swinunetr_config_default(&cfg, nd);
  CHECK(cfg.enc.drop_path_rate == 0.0f && cfg.enc.embed_dim == 48 && cfg.out_channels == 14,
        "the default SwinUNETR is MONAI's: drop-path %g (0), C %d (48), %d classes (14)",
        (double)cfg.enc.drop_path_rate, cfg.enc.embed_dim, cfg.out_channels);
  cfg.enc.embed_dim = 6;
  if (nd == 3) { /* the 3D fixture is kept small: feature size 3, window 3, 2 classes */
    cfg.enc.embed_dim = 3;
    cfg.enc.window[0] = cfg.enc.window[1] = cfg.enc.window[2] = 3;
    cfg.out_channels = 2;
  }
  rc = ioupos_swinunetr_init(&m, &cfg, &p.table, "");
  CHECK(rc == 0, "init: %s", ioupos_failure_reason());
  ioupos_params_alloc(&p, ioupos_backend_cpu(), 1);
  xt = ioupos_safetensors_find(&io, "x");
  B = (int)xt->shape[0];
  for (d = 0; d < nd; ++d) shape[d] = (int)xt->shape[2 + d];
  rc = ioupos_swinunetr_plan(&m, &p, B, shape);
  CHECK(rc == 0, "plan: %s", ioupos_failure_reason());
  snprintf(path, sizeof path, FIXDIR "%s_weights.safetensors", name);
  load_into(&p, path, "", "");
  x = st_get(&io, "x", &nx);
  rc = ioupos_swinunetr_forward(&m, &p, x, 0, NULL);
  CHECK(rc == 0, "forward: %s", ioupos_failure_reason());
  /* logits after ~30 layers: the reference is float64 math; PyTorch's float32 is printed beside
     ours; 1e-4 + 1e-4 |ref| on O(1) logits */
  ref = st_get(&io, "logits", &n);
  CHECK(compare("logits", ioupos_swinunetr_logits(&m), ref, n, 1e-4, 1e-4, 1) == 0, "%s logits",
        name);
  {
    float *f32 = st_get(&io, "f32.logits", NULL);
    compare("  (torch f32 vs the same reference)", f32, ref, n, 1e-4, 1e-4, 1);
    free(f32);
  }
  free(ref);
  G = st_get(&io, "G", &n);
  dx = (float *)calloc(nx, sizeof(float));
  rc = ioupos_swinunetr_backward(&m, &p, G, dx);
  CHECK(rc == 0, "backward: %s", ioupos_failure_reason());
  /* gradients: instance norm over small planes and 3x3 convs summing thousands of products;
     2e-4 of each tensor's largest element + 1e-3 |ref| */
  compare_grads(&p, &io, name, 2e-4, 1e-3);
  ref = st_get(&io, "dx", &n);
  CHECK(compare("dx", dx, ref, n, 2e-4 * maxabs(ref, n), 1e-3, 1) == 0, "%s dx", name);
  free(ref);
  free(G);
  free(dx);
  free(x);
  ioupos_safetensors_free(&io);
  ioupos_swinunetr_free(&m);
  ioupos_params_free(&p);
}

int main(void) {
  test_encoder("swin2d", 2);
  test_encoder("swin3d", 3);
  {
    static const int s2[][2] = {{2, 6}, {4, 12}, {2, 2}, {4, 4}, {8, 8}};
    static const int s3[][3] = {{2, 2, 6}, {2, 2, 2}};
    size_t t;
    printf("tiny token maps:\n");
    for (t = 0; t < sizeof s2 / sizeof s2[0]; ++t) test_tiny_maps(2, s2[t]);
    for (t = 0; t < sizeof s3 / sizeof s3[0]; ++t) test_tiny_maps(3, s3[t]);
  }
  test_checkpoints();
  test_encoder_shard();
  test_simsiam();
  test_dino();
  test_run_checks();
  test_unetr("unetr2d", 2);
  test_unetr("unetr3d", 3);
  return tu_finish("test_model");
}
