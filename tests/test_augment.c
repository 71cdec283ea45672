/* tests/test_augment.c — the augmentations of ioupos.h section 7.

   1. Deterministic building blocks against MONAI 1.6.1 fixtures (tests/fixtures/augment, written
      by tests/reference/augment_fixture.py): bilinear zoom at 0.8, 0.93, 1.0, 1.17, 1.2 on a
      24x20 and a 96x96 image, nearest zoom of a label map, Gaussian blur at several sigma pairs,
      flips, rot90 k = 1, 2, 3, one whole pretraining view (noise left out), and
      RandCropByPosNegLabel's centres and crops for scripted fg/bg choices. Each comparison has
      its tolerance and the reason next to it; the worst element is printed.
   2. The random parts, statistically, with fixed seeds (so deterministic): each transform fires
      with its probability (binomial z < 5), drawn values lie in their ranges with the right
      mean and variance (z < 5), rot90's k is uniform on {1, 2, 3}, the noise std is U[0, 0.01)
      and the noise is N(0, std); pos/neg crop centres are foreground with probability 0.5 and
      uniform within their set, and every crop lies inside the image.
   3. Replay from parameters is bit-identical; label maps keep their values (no interpolation of
      ids) and stay aligned with the image; invalid requests fail and leave the image untouched.
   4. Volumes (shape {X, Y, Z}, z fastest): the 3D building blocks against MONAI fixtures (vol_*:
      trilinear and nearest zoom on 9x8x7 and 12x12x10, flips on each axis, rot90 k 1..3 on the
      non-square 9x8x7, blur with three sigmas, a whole 3D view with its label, pos/neg crop
      centres), the 3D draw (every transform at its probability, z flip and z sigma included) and
      the unchanged 2D draw (a hash of 1000 records written before 3D existed), a volume with
      z extent 1 against the 2D view of the same image, replay, label values and errors.
   Run from the repository root (fixture paths are relative to it). */
#include "ioupos.h"
#include "test_util.h"
#include "npy.h"

#include <math.h>
#include <string.h>

#define FIX "tests/fixtures/augment/"

static int load(const char *name, tu_npy *a) {
  char path[256];
  snprintf(path, sizeof path, FIX "%s.npy", name);
  return tu_npy_load(path, a);
}

/* image fixture -> floats; returns NULL (and counts a failure) if missing */
static float *load_f(const char *name, int *h, int *w) {
  tu_npy a;
  float *x;
  long i;
  if (load(name, &a) != 0) {
    CHECK(0, "fixture %s missing: run .venv/bin/python tests/reference/augment_fixture.py", name);
    return NULL;
  }
  x = (float *)malloc(sizeof(float) * (size_t)a.count);
  for (i = 0; i < a.count; ++i) x[i] = (float)a.data[i];
  *h = (int)a.shape[0];
  *w = a.ndim > 1 ? (int)a.shape[1] : 1;
  tu_npy_free(&a);
  return x;
}

/* compare out (count values) with fixture name */
static void compare(const char *name, const float *out, long count, double atol, double rtol) {
  tu_npy ref;
  if (load(name, &ref) != 0) {
    CHECK(0, "fixture %s missing", name);
    return;
  }
  CHECK(ref.count == count, "%s: %ld values, fixture has %ld", name, count, ref.count);
  if (ref.count == count) {
    long bad = tu_compare(name, out, ref.data, count, atol, rtol);
    CHECK(bad == 0, "%s: %ld values out of tolerance", name, bad);
  }
  tu_npy_free(&ref);
}

static double zscore_binom(long hits, long n, double p) {
  double var = n * p * (1 - p);
  if (var <= 0) return hits == (long)(n * p + 0.5) ? 0.0 : 1e9;
  return fabs(hits - n * p) / sqrt(var);
}

/* ---- 1. fixtures ----------------------------------------------------------------------------- */

static void test_fixtures(void) {
  static const double zooms[5] = {0.8, 0.93, 1.0, 1.17, 1.2};
  static const double sig[5][2] = {{0.25, 0.25}, {0.25, 0.7}, {0.7, 1.5}, {1.5, 0.25}, {1.375, 1.12}};
  int h, w, bh, bw, lh, lw, k, i;
  float *small = load_f("small", &h, &w), *big = load_f("big", &bh, &bw);
  float *label = load_f("label_small", &lh, &lw);
  float *out, *tmp;
  char name[64];
  if (!small || !big || !label) return;
  out = (float *)malloc(sizeof(float) * 96 * 96);
  tmp = (float *)malloc(sizeof(float) * 96 * 96);
  printf("MONAI fixtures:\n");

  /* Zoom, bilinear: the same float32 formula as torch's upsample_bilinear2d (scale in/out,
     half-pixel source index, two-tap weights); only the evaluation order of the two products
     and FMA contraction can differ: a few ulp of values in [0, 1]. atol 2e-6. */
  for (k = 0; k < 5; ++k) {
    snprintf(name, sizeof name, "zoom_small_%g", zooms[k]);
    CHECK(ioupos_aug_zoom(small, h, w, zooms[k], out) == 0, "%s", name);
    compare(name, out, (long)h * w, 2e-6, 0);
  }
  for (k = 0; k < 2; ++k) {
    double z = k ? 1.17 : 0.93;
    snprintf(name, sizeof name, "zoom_big_%g", z);
    CHECK(ioupos_aug_zoom(big, bh, bw, z, out) == 0, "%s", name);
    compare(name, out, (long)bh * bw, 2e-6, 0);
  }
  /* Zoom, nearest, label map: indices only, values copied: exact. */
  for (k = 0; k < 5; ++k) {
    snprintf(name, sizeof name, "zoomnn_label_%g", zooms[k]);
    CHECK(ioupos_aug_zoom_nearest(label, lh, lw, zooms[k], out) == 0, "%s", name);
    compare(name, out, (long)lh * lw, 0, 0);
  }
  /* Gaussian blur: kernel weights from erf (glibc double erf rounded to float vs torch's float32
     erf: <= 1 ulp each) and a different accumulation order of up to 13 + 13 float products:
     atol 1e-6 on values in [0, 1]. */
  for (k = 0; k < 5; ++k) {
    snprintf(name, sizeof name, "blur_small_%g_%g", sig[k][0], sig[k][1]);
    memcpy(out, small, sizeof(float) * (size_t)h * w);
    CHECK(ioupos_aug_gaussian_blur(out, h, w, sig[k][0], sig[k][1], tmp) == 0, "%s", name);
    compare(name, out, (long)h * w, 1e-6, 0);
  }
  memcpy(out, big, sizeof(float) * (size_t)bh * bw);
  CHECK(ioupos_aug_gaussian_blur(out, bh, bw, 0.9, 1.3, tmp) == 0, "blur big");
  compare("blur_big_0.9_1.3", out, (long)bh * bw, 1e-6, 0);
  /* Flips and rot90 move values: exact. */
  for (k = 0; k < 2; ++k) {
    snprintf(name, sizeof name, "flip_small_%d", k);
    memcpy(out, small, sizeof(float) * (size_t)h * w);
    ioupos_aug_flip(out, h, w, k);
    compare(name, out, (long)h * w, 0, 0);
  }
  for (k = 1; k <= 3; ++k) {
    tu_npy ref;
    snprintf(name, sizeof name, "rot90_small_%d", k);
    ioupos_aug_rot90(small, h, w, k, out);
    if (load(name, &ref) == 0) {
      int rh = (k & 1) ? w : h, rw = (k & 1) ? h : w;
      CHECK(ref.shape[0] == rh && ref.shape[1] == rw, "%s: shape %ldx%ld, expected %dx%d", name,
            ref.shape[0], ref.shape[1], rh, rw);
      tu_npy_free(&ref);
    }
    compare(name, out, (long)h * w, 0, 0);
  }
  /* A whole pretraining view (Zoom 1.13, flips 0 and 1, rot90 k 3, scale -0.07, shift 0.045,
     blur (0.6, 1.1)), research order: the zoom and blur tolerances add up: atol 3e-6. */
  {
    ioupos_view_params p;
    ioupos_view_params_identity(&p);
    p.zoom_on = 1, p.zoom = 1.13;
    p.flip[0] = p.flip[1] = 1;
    p.rot90_k = 3;
    p.scale_on = 1, p.scale = -0.07;
    p.shift_on = 1, p.shift = 0.045;
    p.blur_on = 1, p.blur_sigma[0] = 0.6, p.blur_sigma[1] = 1.1;
    memcpy(out, big, sizeof(float) * (size_t)bh * bw);
    CHECK(ioupos_view_apply(&p, out, bh, bw, tmp) == 0, "view: %s", ioupos_failure_reason());
    compare("view_big", out, (long)bh * bw, 3e-6, 0);
  }
  /* RandCropByPosNegLabel: integer centres and crop starts, exact. */
  {
    static const char *cases[3] = {"posneg_a", "posneg_b", "posneg_c"};
    static const int crops[3][2] = {{16, 12}, {9, 7}, {96, 96}};
    for (k = 0; k < 3; ++k) {
      tu_npy rows;
      float *lab, *img = NULL;
      int ph, pw, ih, iw;
      long bad = 0;
      snprintf(name, sizeof name, "%s_label", cases[k]);
      lab = load_f(name, &ph, &pw);
      if (k == 1) {
        snprintf(name, sizeof name, "%s_image", cases[k]);
        img = load_f(name, &ih, &iw);
      }
      snprintf(name, sizeof name, "%s_crops", cases[k]);
      if (!lab || (k == 1 && !img) || load(name, &rows) != 0) {
        CHECK(0, "fixture %s missing", name);
        free(lab), free(img);
        continue;
      }
      for (i = 0; i < rows.shape[0]; ++i) {
        const double *r = rows.data + i * 6;
        ioupos_posneg_crop c;
        int st = ioupos_posneg_locate(lab, img, 0.0, ph, pw, crops[k], (int)r[0], (uint64_t)r[1], &c);
        if (st != 0 || c.center[0] != (int)r[2] || c.center[1] != (int)r[3] ||
            c.box.lo[0] != (int)r[4] || c.box.lo[1] != (int)r[5] ||
            c.box.hi[0] != (int)r[4] + crops[k][0] || c.box.hi[1] != (int)r[5] + crops[k][1]) {
          ++bad;
          printf("  %s row %d: fg %g index %g: got centre (%d, %d) start (%d, %d), MONAI (%g, %g) "
                 "(%g, %g)\n", cases[k], i, r[0], r[1], c.center[0], c.center[1], c.box.lo[0],
                 c.box.lo[1], r[2], r[3], r[4], r[5]);
        }
      }
      printf("  %-40s %ld crops, %ld differ\n", name, rows.shape[0], bad);
      CHECK(bad == 0, "%s: %ld crops differ from MONAI", name, bad);
      tu_npy_free(&rows);
      free(lab), free(img);
    }
  }
  /* kernel sizes: tail int(max(4 sigma, 0.5) + 0.5) */
  {
    float kern[2 * IOUPOS_AUG_MAX_TAIL + 1];
    CHECK(ioupos_aug_gaussian_kernel(0.25, kern, 3) == 1, "sigma 0.25: tail 1");
    CHECK(ioupos_aug_gaussian_kernel(1.5, kern, 13) == 6, "sigma 1.5: tail 6");
    CHECK(ioupos_aug_gaussian_kernel(1.5, kern, 12) == -1, "cap too small");
    CHECK(ioupos_aug_gaussian_kernel(0.0, kern, 13) == -1, "sigma 0");
    CHECK(ioupos_aug_gaussian_kernel(NAN, kern, 13) == -1, "sigma NaN");
    CHECK(ioupos_aug_gaussian_kernel(1e9, kern, 13) == -1, "sigma huge");
  }
  free(small), free(big), free(label), free(out), free(tmp);
}

/* ---- 2. random parts ------------------------------------------------------------------------- */

typedef struct moments {
  long n;
  double s, ss, lo, hi;
} moments;
static void mom_add(moments *m, double x) {
  if (m->n == 0 || x < m->lo) m->lo = x;
  if (m->n == 0 || x > m->hi) m->hi = x;
  ++m->n, m->s += x, m->ss += x * x;
}
/* uniform [a, b): range, and z of mean and variance against (a+b)/2, (b-a)^2/12 */
static void check_uniform(const char *name, const moments *m, double a, double b) {
  double mean = m->s / m->n, var = m->ss / m->n - mean * mean;
  double w = b - a, mu = (a + b) / 2, v = w * w / 12;
  double z_mean = fabs(mean - mu) / sqrt(v / m->n);
  double z_var = fabs(var - v) / sqrt(w * w * w * w / 180.0 / m->n); /* Var(X^2-ish) of U: w^4/180 */
  CHECK(m->lo >= a && m->hi < b, "%s: drawn range [%g, %g] outside [%g, %g)", name, m->lo, m->hi, a, b);
  CHECK(z_mean < 5 && z_var < 5, "%s: mean %g (expected %g, z %.2f), var %g (expected %g, z %.2f)",
        name, mean, mu, z_mean, var, v, z_var);
}

static void test_draws(int finetune, long n) {
  ioupos_aug_config c;
  ioupos_rng rng;
  long fire[8] = {0}, kcount[4] = {0}, i, bad_hdr = 0;
  moments zoom = {0, 0, 0, 0, 0}, scale = zoom, shift = zoom, sig0 = zoom, sig1 = zoom, nstd = zoom;
  const char *tag = finetune ? "finetune" : "pretrain";
  double probs[8];
  static const char *names[8] = {"zoom", "flip0", "flip1", "rot90", "scale", "shift", "blur", "noise"};
  if (finetune) ioupos_aug_config_finetune(&c);
  else ioupos_aug_config_pretrain(&c);
  probs[0] = c.zoom_prob, probs[1] = c.flip_prob[0], probs[2] = c.flip_prob[1];
  probs[3] = c.rot90_prob, probs[4] = c.scale_prob, probs[5] = c.shift_prob;
  probs[6] = c.blur_prob, probs[7] = c.noise_prob;
  ioupos_rng_seed(&rng, finetune ? 77 : 42);
  for (i = 0; i < n; ++i) {
    ioupos_view_params p;
    ioupos_view_params_draw_config(&c, &rng, &p);
    fire[0] += p.zoom_on, fire[1] += p.flip[0], fire[2] += p.flip[1], fire[3] += p.rot90_k != 0;
    fire[4] += p.scale_on, fire[5] += p.shift_on, fire[6] += p.blur_on, fire[7] += p.noise_on;
    kcount[p.rot90_k]++;
    if (p.zoom_on) mom_add(&zoom, p.zoom);
    if (p.scale_on) mom_add(&scale, p.scale);
    if (p.shift_on) mom_add(&shift, p.shift);
    if (p.blur_on) mom_add(&sig0, p.blur_sigma[0]), mom_add(&sig1, p.blur_sigma[1]);
    if (p.noise_on) mom_add(&nstd, p.noise_std);
    bad_hdr += !(p.dims == 2 && p.intensity_first == finetune);
  }
  CHECK(bad_hdr == 0, "%s: %ld draws with wrong dims or order", tag, bad_hdr);
  printf("%s draws (%ld): firing frequency vs probability\n", tag, n);
  for (i = 0; i < 8; ++i) {
    double z = zscore_binom(fire[i], n, probs[i]);
    printf("  %-6s %.4f (p %.2f, z %.2f)\n", names[i], (double)fire[i] / n, probs[i], z);
    CHECK(z < 5, "%s %s fires %ld / %ld, probability %g (z %.2f)", tag, names[i], fire[i], n, probs[i], z);
  }
  for (i = 1; i <= 3; ++i) { /* k | fired uniform on {1, 2, 3} */
    double z = zscore_binom(kcount[i], fire[3], 1.0 / 3);
    CHECK(z < 5, "%s rot90 k = %ld drawn %ld of %ld (z %.2f)", tag, i, kcount[i], fire[3], z);
  }
  if (!finetune) check_uniform("zoom", &zoom, 0.8, 1.2);
  else CHECK(zoom.n == 0, "finetune: zoom fired %ld times", zoom.n);
  check_uniform("scale factor", &scale, -0.1, 0.1);
  check_uniform("shift", &shift, -0.1, 0.1);
  check_uniform("blur sigma 0", &sig0, 0.25, 1.5);
  check_uniform("blur sigma 1", &sig1, 0.25, 1.5);
  check_uniform("noise std (sample_std: U[0, 0.01))", &nstd, 0.0, 0.01);
  { /* the two sigmas are drawn independently */
    ioupos_rng r2;
    double sxy = 0, sx = 0, sy = 0;
    long m = 0;
    ioupos_rng_seed(&r2, 5);
    for (i = 0; i < 20000; ++i) {
      ioupos_view_params p;
      ioupos_view_params_draw_config(&c, &r2, &p);
      sxy += p.blur_sigma[0] * p.blur_sigma[1], sx += p.blur_sigma[0], sy += p.blur_sigma[1], ++m;
    }
    { double cov = sxy / m - (sx / m) * (sy / m), v = 1.25 * 1.25 / 12;
      CHECK(fabs(cov) / (v / sqrt((double)m)) < 5, "blur sigmas correlated: cov %g", cov); }
  }
}

static void test_noise(void) {
  enum { N = 96 * 96 };
  static float img[N], img2[N];
  double s = 0, ss = 0, s4 = 0, in1 = 0;
  long i;
  ioupos_rng rng;
  ioupos_view_params p;
  int m, bad = 0;
  /* the generator: N(0, 1) moments and the 1-sigma mass over 40 images */
  for (m = 0; m < 40; ++m) {
    memset(img, 0, sizeof img);
    ioupos_aug_gaussian_noise(img, N, 0.0, 1.0, 1000 + m);
    for (i = 0; i < N; ++i) {
      double x = img[i];
      s += x, ss += x * x, s4 += x * x * x * x, in1 += fabs(x) < 1.0;
    }
  }
  {
    double n = 40.0 * N, mean = s / n, var = ss / n - mean * mean, kurt = s4 / n / (var * var);
    double p1 = in1 / n;
    printf("noise N(0,1): mean %.5f var %.5f kurtosis %.4f P(|z|<1) %.5f over %.0f values\n", mean,
           var, kurt, p1, n);
    CHECK(fabs(mean) / sqrt(1.0 / n) < 5, "noise mean %g", mean);
    CHECK(fabs(var - 1.0) / sqrt(2.0 / n) < 5, "noise variance %g", var);
    CHECK(fabs(kurt - 3.0) / sqrt(24.0 / n) < 5, "noise kurtosis %g", kurt);
    CHECK(fabs(p1 - 0.682689492) / sqrt(0.2166 / n) < 5, "noise P(|z|<1) %g", p1);
  }
  /* through the pipeline: each view's empirical std matches its drawn std (MONAI:
     std ~ U[0, 0.01), then N(0, std) per pixel) */
  ioupos_rng_seed(&rng, 9);
  for (m = 0; m < 200; ++m) {
    double a = 0, b = 0, sd;
    ioupos_view_params_identity(&p);
    p.noise_on = 1;
    ioupos_view_params_draw(&rng, &p); /* redraw, then force only the noise */
    p.zoom_on = p.scale_on = p.shift_on = p.blur_on = 0, p.rot90_k = 0, p.flip[0] = p.flip[1] = 0;
    p.noise_on = 1;
    for (i = 0; i < N; ++i) img[i] = 0.5f;
    ioupos_view_apply(&p, img, 96, 96, img2);
    for (i = 0; i < N; ++i) a += img[i] - 0.5, b += (img[i] - 0.5) * (img[i] - 0.5);
    sd = sqrt(b / N - (a / N) * (a / N));
    if (!(p.noise_std >= 0 && p.noise_std < 0.01) ||
        fabs(sd - p.noise_std) > 5 * p.noise_std / sqrt(2.0 * N) + 1e-7)
      ++bad;
  }
  CHECK(bad == 0, "%d of 200 views: noise std does not match the drawn std", bad);
}

static void test_posneg_stats(void) {
  enum { H = 40, W = 30 };
  static float lab[H * W], img[H * W];
  static long hits[H * W];
  const int crop[2] = {16, 12};
  ioupos_posneg_crop c[2];
  ioupos_rng rng;
  uint64_t nf, nb;
  long i, n = 100000, fg = 0, outside = 0, wrong = 0;
  int r, q, st;
  memset(lab, 0, sizeof lab);
  for (r = 2; r < 6; ++r) for (q = 3; q < 7; ++q) lab[r * W + q] = 1;
  for (r = 30; r < 38; ++r) for (q = 20; q < 29; ++q) lab[r * W + q] = 2;
  ioupos_posneg_count(lab, NULL, 0, H, W, &nf, &nb);
  CHECK(nf == 16 + 72 && nb == H * W - nf, "count: fg %llu bg %llu", (unsigned long long)nf,
        (unsigned long long)nb);
  ioupos_rng_seed(&rng, 3);
  for (i = 0; i < n / 2; ++i) {
    int s;
    st = ioupos_posneg_crops_draw(&rng, lab, NULL, 0.0, H, W, crop, 1.0, 1.0, 2, c);
    if (st != 0) { CHECK(0, "draw failed: %s", ioupos_failure_reason()); return; }
    for (s = 0; s < 2; ++s) {
      const ioupos_posneg_crop *k = c + s;
      long idx = -1, seen = 0, j;
      fg += k->fg;
      outside += k->box.lo[0] < 0 || k->box.lo[1] < 0 || k->box.hi[0] > H || k->box.hi[1] > W ||
                 k->box.hi[0] - k->box.lo[0] != crop[0] || k->box.hi[1] - k->box.lo[1] != crop[1];
      for (j = 0; j < H * W; ++j)
        if ((lab[j] != 0) == k->fg && seen++ == (long)k->rank) { idx = j; break; }
      if (idx < 0) { ++wrong; continue; }
      hits[idx]++;
      /* the corrected centre is the voxel clamped into the valid range */
      wrong += k->center[0] != (idx / W < crop[0] / 2 ? crop[0] / 2 : idx / W > H - (crop[0] + 1) / 2 ? H - (crop[0] + 1) / 2 : idx / W);
    }
  }
  {
    double z = zscore_binom(fg, n, 0.5), chi = 0;
    long j;
    int df = 0;
    for (j = 0; j < H * W; ++j) { /* uniform within each set: expected n/2 / size */
      double e = (lab[j] != 0 ? 0.5 * n / nf : 0.5 * n / nb);
      chi += (hits[j] - e) * (hits[j] - e) / e, ++df;
    }
    df -= 2;
    {
      double zc = (pow(chi / df, 1.0 / 3) - (1 - 2.0 / (9 * df))) / sqrt(2.0 / (9 * df));
      printf("pos/neg crops: %ld, foreground %.4f (z %.2f), uniformity chi2 %.1f df %d (z %.2f)\n",
             n, (double)fg / n, z, chi, df, zc);
      CHECK(z < 5, "foreground fraction %g (z %.2f)", (double)fg / n, z);
      CHECK(zc < 5, "centre voxels not uniform within fg / bg: chi2 %g df %d", chi, df);
    }
  }
  CHECK(outside == 0, "%ld crops outside the image or of the wrong size", outside);
  CHECK(wrong == 0, "%ld crops with a wrong centre", wrong);
  /* degenerate sets: no foreground -> all background; no background -> all foreground */
  {
    static float zero[H * W], ones[H * W];
    long f0 = 0, f1 = 0;
    for (i = 0; i < H * W; ++i) ones[i] = 3;
    for (i = 0; i < 500; ++i) {
      ioupos_posneg_crops_draw(&rng, zero, NULL, 0, H, W, crop, 1, 1, 1, c), f0 += c[0].fg;
      ioupos_posneg_crops_draw(&rng, ones, NULL, 0, H, W, crop, 1, 1, 1, c), f1 += c[0].fg;
    }
    CHECK(f0 == 0 && f1 == 500, "degenerate: fg %ld of 500 (no fg), %ld of 500 (no bg)", f0, f1);
    /* image restricts the background: image 0 everywhere and no label -> nothing to draw */
    st = ioupos_posneg_crops_draw(&rng, zero, zero, 0, H, W, crop, 1, 1, 1, c);
    CHECK(st == IOUPOS_EINFEASIBLE, "empty fg and bg: status %d", st);
    for (i = 0; i < H * W; ++i) img[i] = (i % W) < 10 ? 1.0f : 0.0f;
    for (i = 0; i < 300; ++i) {
      ioupos_posneg_crops_draw(&rng, lab, img, 0, H, W, crop, 0, 1, 1, c);
      if (c[0].fg) ++wrong;
    }
    CHECK(wrong == 0, "neg only gave foreground");
    {
      int big[2] = {H + 1, 4};
      st = ioupos_posneg_crops_draw(&rng, lab, NULL, 0, H, W, big, 1, 1, 1, c);
      CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "41x4"), "crop too big: %d %s",
            st, ioupos_failure_reason());
      st = ioupos_posneg_locate(lab, NULL, 0, H, W, crop, 1, nf, c);
      CHECK(st == IOUPOS_EINVAL, "rank out of range: %d", st);
      st = ioupos_posneg_crops_draw(&rng, lab, NULL, 0, H, W, crop, 0, 0, 1, c);
      CHECK(st == IOUPOS_EINVAL, "pos = neg = 0: %d", st);
    }
  }
}

/* ---- 3. replay, labels, errors ---------------------------------------------------------------- */

static void test_replay_and_labels(void) {
  enum { S = 96, N = S * S };
  static float base[N], a[N], b[N], tmp[N], la[N], lb[N], ids[N];
  ioupos_rng r1, r2;
  ioupos_aug_config cf;
  int v, bad_replay = 0, bad_params = 0, bad_label = 0, bad_align = 0;
  long i;
  for (i = 0; i < N; ++i) {
    base[i] = (float)((i * 2654435761u) % 1000u) / 1000.0f;
    ids[i] = (float)(((i / S) / 12 + (i % S) / 16) % 14); /* organ ids 0..13 */
  }
  ioupos_rng_seed(&r1, 123);
  ioupos_rng_seed(&r2, 123);
  ioupos_aug_config_finetune(&cf);
  cf.zoom_prob = 0.5; /* exercise the label's nearest zoom too */
  for (v = 0; v < 400; ++v) {
    ioupos_view_params p, q;
    int present[14] = {0}, k;
    if (v & 1) ioupos_view_params_draw_config(&cf, &r1, &p), ioupos_view_params_draw_config(&cf, &r2, &q);
    else ioupos_view_params_draw(&r1, &p), ioupos_view_params_draw(&r2, &q);
    bad_params += memcmp(&p, &q, sizeof p) != 0;
    memcpy(a, base, sizeof a), memcpy(b, base, sizeof b);
    memcpy(la, ids, sizeof la), memcpy(lb, ids, sizeof lb);
    if (ioupos_view_apply_labelled(&p, a, la, S, S, tmp) != 0 ||
        ioupos_view_apply_labelled(&q, b, lb, S, S, tmp) != 0) {
      CHECK(0, "apply failed: %s", ioupos_failure_reason());
      return;
    }
    bad_replay += memcmp(a, b, sizeof a) != 0 || memcmp(la, lb, sizeof la) != 0;
    for (i = 0; i < N; ++i) {
      float x = la[i];
      if (!(x >= 0 && x <= 13 && x == floorf(x))) ++bad_label;
      else present[(int)x] = 1;
    }
    for (k = 0; k < 14; ++k) (void)present[k];
    /* alignment: the same spatial transforms on an image equal to the label map, intensity off */
    if (!p.zoom_on) {
      ioupos_view_params s = p;
      s.scale_on = s.shift_on = s.blur_on = s.noise_on = 0;
      memcpy(a, ids, sizeof a);
      ioupos_view_apply(&s, a, S, S, tmp);
      bad_align += memcmp(a, la, sizeof a) != 0;
    }
  }
  CHECK(bad_params == 0, "%d of 400: same seed gave different parameters", bad_params);
  CHECK(bad_replay == 0, "%d of 400 views: replay from parameters not bit-identical", bad_replay);
  CHECK(bad_label == 0, "%d label values not among the input ids", bad_label);
  CHECK(bad_align == 0, "%d of the views: label not aligned with the image", bad_align);

  /* errors leave the image untouched */
  {
    ioupos_view_params p;
    float rect[6 * 4], keep[6 * 4], t2[6 * 4];
    int st;
    for (i = 0; i < 24; ++i) rect[i] = keep[i] = (float)i;
    ioupos_view_params_identity(&p);
    p.rot90_k = 1, p.scale_on = 1, p.scale = 0.5;
    st = ioupos_view_apply(&p, rect, 6, 4, t2);
    CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "6x4") && !memcmp(rect, keep, sizeof rect),
          "odd rot90 on 6x4: status %d reason '%s'", st, ioupos_failure_reason());
    p.rot90_k = 2;
    st = ioupos_view_apply(&p, rect, 6, 4, t2);
    CHECK(st == 0 && rect[0] == 23 * 1.5f, "k 2 on 6x4: %d, %g", st, rect[0]);
    ioupos_view_params_identity(&p);
    p.zoom_on = 1, p.zoom = 0;
    memcpy(rect, keep, sizeof rect);
    st = ioupos_view_apply(&p, rect, 6, 4, t2);
    CHECK(st == IOUPOS_EINVAL && !memcmp(rect, keep, sizeof rect), "zoom 0: %d", st);
    ioupos_view_params_identity(&p);
    p.blur_on = 1, p.blur_sigma[1] = -1;
    st = ioupos_view_apply(&p, rect, 6, 4, t2);
    CHECK(st == IOUPOS_EINVAL && !memcmp(rect, keep, sizeof rect), "blur sigma -1: %d", st);
    ioupos_view_params_identity(&p);
    p.dims = 3;
    st = ioupos_view_apply(&p, rect, 6, 4, t2);
    CHECK(st == IOUPOS_EINVAL, "dims 3: %d", st);
    ioupos_view_params_identity(&p);
    st = ioupos_view_apply(&p, rect, 6, 4, t2);
    CHECK(st == 0 && !memcmp(rect, keep, sizeof rect), "identity changed the image");
    /* zoom that rounds to zero rows */
    CHECK(ioupos_aug_zoom(keep, 6, 4, 0.1, t2) == 0 && t2[0] == 0 && t2[23] == 0, "zoom to 0 rows");
  }
}

/* ---- 4. volumes --------------------------------------------------------------------------- */

/* volume fixture -> floats and its shape (3 axes); NULL (and a failure) if missing or not 3D */
static float *load_v(const char *name, int shape[3]) {
  tu_npy a;
  float *x;
  long i;
  if (load(name, &a) != 0 || a.ndim != 3) {
    CHECK(0, "fixture %s missing or not 3D: run tests/reference/augment_fixture.py", name);
    if (a.data) tu_npy_free(&a);
    return NULL;
  }
  x = (float *)malloc(sizeof(float) * (size_t)a.count);
  for (i = 0; i < a.count; ++i) x[i] = (float)a.data[i];
  for (i = 0; i < 3; ++i) shape[i] = (int)a.shape[i];
  tu_npy_free(&a);
  return x;
}

/* compare with a 3D fixture, its shape included */
static void compare3(const char *name, const float *out, const int shape[3], double atol) {
  tu_npy ref;
  if (load(name, &ref) != 0) {
    CHECK(0, "fixture %s missing", name);
    return;
  }
  CHECK(ref.ndim == 3 && ref.shape[0] == shape[0] && ref.shape[1] == shape[1] &&
        ref.shape[2] == shape[2], "%s: fixture shape is not %dx%dx%d", name, shape[0], shape[1],
        shape[2]);
  tu_npy_free(&ref);
  compare(name, out, (long)shape[0] * shape[1] * shape[2], atol, 0);
}

static void test_fixtures3(void) {
  static const double zooms[5] = {0.8, 0.93, 1.0, 1.17, 1.2};
  static const double sig[4][3] = {{0.25, 0.7, 1.5}, {1.5, 0.25, 0.7}, {0.9, 1.2, 0.4}, {1.375, 0.5, 1.12}};
  int sa[3], sb[3], sl[3], slb[3], k, i;
  float *va = load_v("vol_a", sa), *vb = load_v("vol_b", sb), *la = load_v("vol_label_a", sl);
  float *lb = load_v("vol_label_b", slb), *out, *tmp;
  char name[80];
  if (!va || !vb || !la || !lb) {
    free(va), free(vb), free(la), free(lb);
    return;
  }
  CHECK(sa[0] == 9 && sa[1] == 8 && sa[2] == 7 && sb[0] == 12 && sb[1] == 12 && sb[2] == 10 &&
        sl[0] == 9 && sl[1] == 8 && sl[2] == 7 && slb[0] == 12 && slb[1] == 12 && slb[2] == 10,
        "volume fixture shapes");
  out = (float *)malloc(sizeof(float) * 12 * 12 * 10);
  tmp = (float *)malloc(sizeof(float) * 12 * 12 * 10);
  printf("MONAI fixtures, volumes:\n");
  /* Zoom, trilinear: torch's per-axis float32 indices and weights and its nesting (z, then y,
     then x); one blend level more than bilinear, still a few ulp of values in [0, 1]: the 2D
     tolerance, atol 2e-6. */
  for (k = 0; k < 5; ++k) {
    snprintf(name, sizeof name, "vol_zoom_a_%g", zooms[k]);
    CHECK(ioupos_aug_zoom3(va, sa, zooms[k], out) == 0, "%s", name);
    compare3(name, out, sa, 2e-6);
  }
  for (k = 0; k < 2; ++k) {
    double z = k ? 1.17 : 0.93;
    snprintf(name, sizeof name, "vol_zoom_b_%g", z);
    CHECK(ioupos_aug_zoom3(vb, sb, z, out) == 0, "%s", name);
    compare3(name, out, sb, 2e-6);
  }
  /* Zoom, nearest, label volume: values copied: exact. */
  for (k = 0; k < 5; ++k) {
    snprintf(name, sizeof name, "vol_zoomnn_label_%g", zooms[k]);
    CHECK(ioupos_aug_zoom3_nearest(la, sl, zooms[k], out) == 0, "%s", name);
    compare3(name, out, sl, 0);
  }
  /* Blur: the 2D reasoning per pass (erf weights within 1 ulp, another summation order), now
     three passes of up to 13 taps: the 2D tolerance atol 1e-6 holds. */
  for (k = 0; k < 4; ++k) {
    snprintf(name, sizeof name, "vol_blur_a_%g_%g_%g", sig[k][0], sig[k][1], sig[k][2]);
    memcpy(out, va, sizeof(float) * 9 * 8 * 7);
    CHECK(ioupos_aug_gaussian_blur3(out, sa, sig[k], tmp) == 0, "%s", name);
    compare3(name, out, sa, 1e-6);
  }
  {
    const double s3[3] = {0.9, 1.3, 0.6};
    memcpy(out, vb, sizeof(float) * 12 * 12 * 10);
    CHECK(ioupos_aug_gaussian_blur3(out, sb, s3, tmp) == 0, "blur 3D big");
    compare3("vol_blur_b_0.9_1.3_0.6", out, sb, 1e-6);
  }
  /* Flips and rot90 move values: exact; odd k swaps x and y. */
  for (k = 0; k < 3; ++k) {
    snprintf(name, sizeof name, "vol_flip_a_%d", k);
    memcpy(out, va, sizeof(float) * 9 * 8 * 7);
    ioupos_aug_flip3(out, sa, k);
    compare3(name, out, sa, 0);
  }
  for (k = 1; k <= 3; ++k) {
    int rs[3];
    rs[0] = (k & 1) ? sa[1] : sa[0], rs[1] = (k & 1) ? sa[0] : sa[1], rs[2] = sa[2];
    snprintf(name, sizeof name, "vol_rot90_a_%d", k);
    ioupos_aug_rot90_3(va, sa, k, out);
    compare3(name, out, rs, 0);
  }
  /* A whole 3D pretraining view (zoom 1.13, flips 0, 1, 2, rot90 k 3, scale -0.07, shift 0.045,
     blur (0.6, 1.1, 0.8)) and its label (nearest zoom, flips, rot90): atol 3e-6 as in 2D; the
     label exactly. */
  {
    ioupos_view_params p;
    float *lab = (float *)malloc(sizeof(float) * 12 * 12 * 10);
    ioupos_view_params_identity(&p);
    p.dims = 3;
    p.zoom_on = 1, p.zoom = 1.13;
    p.flip[0] = p.flip[1] = p.flip[2] = 1;
    p.rot90_k = 3;
    p.scale_on = 1, p.scale = -0.07;
    p.shift_on = 1, p.shift = 0.045;
    p.blur_on = 1, p.blur_sigma[0] = 0.6, p.blur_sigma[1] = 1.1, p.blur_sigma[2] = 0.8;
    memcpy(out, vb, sizeof(float) * 12 * 12 * 10);
    memcpy(lab, lb, sizeof(float) * 12 * 12 * 10);
    CHECK(ioupos_view_apply3(&p, out, lab, sb, tmp) == 0, "view 3D: %s", ioupos_failure_reason());
    compare3("vol_view_b", out, sb, 3e-6);
    compare3("vol_view_label_b", lab, sb, 0);
    free(lab);
  }
  /* RandCropByPosNegLabel on volumes: integer centres and starts, exact. */
  {
    static const char *cases[3] = {"vol_posneg_a", "vol_posneg_b", "vol_posneg_c"};
    static const int crops[3][3] = {{8, 6, 5}, {5, 4, 3}, {16, 7, 10}};
    for (k = 0; k < 3; ++k) {
      tu_npy rows;
      float *lab, *img = NULL;
      int ps[3], is[3];
      long bad = 0;
      snprintf(name, sizeof name, "%s_label", cases[k]);
      lab = load_v(name, ps);
      if (k == 1) {
        snprintf(name, sizeof name, "%s_image", cases[k]);
        img = load_v(name, is);
      }
      snprintf(name, sizeof name, "%s_crops", cases[k]);
      if (!lab || (k == 1 && !img) || load(name, &rows) != 0) {
        CHECK(0, "fixture %s missing", name);
        free(lab), free(img);
        continue;
      }
      CHECK(rows.ndim == 2 && rows.shape[1] == 8, "%s: 8 columns", name);
      for (i = 0; i < rows.shape[0] && rows.shape[1] == 8; ++i) {
        const double *r = rows.data + i * 8;
        ioupos_posneg_crop c;
        int st = ioupos_posneg_locate3(lab, img, 0.0, ps, crops[k], (int)r[0], (uint64_t)r[1], &c);
        int a, ok = st == 0 && c.box.dims == 3 && c.fg == (int)r[0];
        for (a = 0; a < 3 && ok; ++a)
          ok = c.center[a] == (int)r[2 + a] && c.box.lo[a] == (int)r[5 + a] &&
               c.box.hi[a] == (int)r[5 + a] + crops[k][a];
        if (!ok) {
          ++bad;
          printf("  %s row %d: fg %g index %g: got centre (%d, %d, %d) start (%d, %d, %d), MONAI "
                 "(%g, %g, %g) (%g, %g, %g)\n", cases[k], i, r[0], r[1], c.center[0], c.center[1],
                 c.center[2], c.box.lo[0], c.box.lo[1], c.box.lo[2], r[2], r[3], r[4], r[5], r[6],
                 r[7]);
        }
      }
      printf("  %-40s %ld crops, %ld differ\n", name, rows.shape[0], bad);
      CHECK(bad == 0 && rows.shape[0] == 12, "%s: %ld of %ld crops differ from MONAI", name, bad,
            rows.shape[0]);
      tu_npy_free(&rows);
      free(lab), free(img);
    }
  }
  free(va), free(vb), free(la), free(lb), free(out), free(tmp);
}

/* FNV-1a over the words of n drawn records and the generator's next output */
static uint64_t fnv_word(uint64_t h, uint64_t v) {
  int b;
  for (b = 0; b < 8; ++b) h = (h ^ ((v >> (8 * b)) & 0xff)) * 1099511628211ULL;
  return h;
}
static uint64_t dbits(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}
static uint64_t draw_hash(int dims, int finetune, int n) {
  ioupos_aug_config c;
  ioupos_rng rng;
  uint64_t h = 14695981039346656037ULL;
  int i, k;
  if (finetune) ioupos_aug_config_finetune(&c);
  else ioupos_aug_config_pretrain(&c);
  ioupos_rng_seed(&rng, 2024);
  for (i = 0; i < n; ++i) {
    ioupos_view_params p;
    if (dims == 3) ioupos_view_params_draw_config3(&c, &rng, &p);
    else ioupos_view_params_draw_config(&c, &rng, &p);
    h = fnv_word(h, (uint64_t)p.dims), h = fnv_word(h, (uint64_t)p.intensity_first);
    h = fnv_word(h, (uint64_t)p.zoom_on), h = fnv_word(h, dbits(p.zoom));
    for (k = 0; k < 3; ++k) h = fnv_word(h, (uint64_t)p.flip[k]);
    h = fnv_word(h, (uint64_t)p.rot90_k);
    h = fnv_word(h, (uint64_t)p.scale_on), h = fnv_word(h, dbits(p.scale));
    h = fnv_word(h, (uint64_t)p.shift_on), h = fnv_word(h, dbits(p.shift));
    h = fnv_word(h, (uint64_t)p.blur_on);
    for (k = 0; k < 3; ++k) h = fnv_word(h, dbits(p.blur_sigma[k]));
    h = fnv_word(h, (uint64_t)p.noise_on), h = fnv_word(h, dbits(p.noise_mean));
    h = fnv_word(h, dbits(p.noise_std)), h = fnv_word(h, p.noise_seed);
  }
  return fnv_word(h, ioupos_rng_u64(&rng));
}

static void test_draws3(long n) {
  ioupos_aug_config c;
  ioupos_rng rng, r2;
  long fire[9] = {0}, i, bad = 0;
  int used;
  moments s2 = {0, 0, 0, 0, 0};
  double probs[9];
  static const char *names[9] = {"zoom", "flip0", "flip1", "flip2", "rot90", "scale", "shift",
                                 "blur", "noise"};
  /* The 2D stream is the one recorded before the 3D draw existed (commit e699e60): the same
     records from the same seed, and the generator left at the same place. */
  CHECK(draw_hash(2, 0, 1000) == 0x1fab2a36ff5b4dcfULL, "2D pretraining draws changed: %016llx",
        (unsigned long long)draw_hash(2, 0, 1000));
  CHECK(draw_hash(2, 1, 1000) == 0x9cd74a0133972cf8ULL, "2D fine-tuning draws changed: %016llx",
        (unsigned long long)draw_hash(2, 1, 1000));
  CHECK(draw_hash(3, 0, 1000) != draw_hash(2, 0, 1000), "3D draw identical to 2D");
  ioupos_aug_config_pretrain(&c);
  probs[0] = c.zoom_prob, probs[1] = c.flip_prob[0], probs[2] = c.flip_prob[1];
  probs[3] = c.flip_prob[2], probs[4] = c.rot90_prob, probs[5] = c.scale_prob;
  probs[6] = c.shift_prob, probs[7] = c.blur_prob, probs[8] = c.noise_prob;
  CHECK(c.flip_prob[2] == 0.5 && c.blur_sigma_min[2] == 0.25 && c.blur_sigma_max[2] == 1.5,
        "pretraining preset on z: flip p %g, sigma [%g, %g)", c.flip_prob[2], c.blur_sigma_min[2],
        c.blur_sigma_max[2]);
  ioupos_rng_seed(&rng, 31);
  for (i = 0; i < n; ++i) {
    ioupos_view_params p;
    ioupos_view_params_draw_config3(&c, &rng, &p);
    fire[0] += p.zoom_on, fire[1] += p.flip[0], fire[2] += p.flip[1], fire[3] += p.flip[2];
    fire[4] += p.rot90_k != 0, fire[5] += p.scale_on, fire[6] += p.shift_on;
    fire[7] += p.blur_on, fire[8] += p.noise_on;
    if (p.blur_on) mom_add(&s2, p.blur_sigma[2]);
    bad += p.dims != 3 || p.intensity_first != 0;
  }
  CHECK(bad == 0, "3D draws: %ld with dims != 3 or the wrong order", bad);
  printf("3D pretraining draws (%ld): firing frequency vs probability\n", n);
  for (i = 0; i < 9; ++i) {
    double z = zscore_binom(fire[i], n, probs[i]);
    printf("  %-6s %.4f (p %.2f, z %.2f)\n", names[i], (double)fire[i] / n, probs[i], z);
    CHECK(z < 5, "3D %s fires %ld / %ld, probability %g (z %.2f)", names[i], fire[i], n, probs[i], z);
  }
  check_uniform("3D blur sigma 2", &s2, 0.25, 1.5);
  /* 18 draws per record whatever fires: 16 uniforms (two 32-bit outputs each), rot90's k (one;
     Lemire's rejection for n = 3 happens only on a zero low word, never for this seed) and the
     noise seed (two): after m records the generator is 35 m outputs further on */
  ioupos_rng_seed(&rng, 77), ioupos_rng_seed(&r2, 77);
  for (i = 0; i < 50; ++i) {
    ioupos_view_params p;
    int j;
    ioupos_view_params_draw_config3(&c, &rng, &p);
    for (j = 0; j < 35; ++j) (void)ioupos_rng_u32(&r2);
  }
  used = ioupos_rng_u64(&rng) == ioupos_rng_u64(&r2);
  CHECK(used, "3D draw does not consume 35 generator outputs per record");
  /* fine-tuning preset on z */
  ioupos_aug_config_finetune(&c);
  CHECK(c.flip_prob[2] == 0.25 && c.zoom_prob == 0 && c.intensity_first == 1,
        "fine-tuning preset: flip z p %g", c.flip_prob[2]);
}

/* A volume whose z extent is 1 is, in memory, the 2D image: its 3D view must be the 2D view
   wherever the z axis cannot matter. Zoom below 1 is not such a case (floor(1 * zoom) = 0: the
   zoomed volume is empty, all 0; MONAI raises), so those records zoom by 1 / zoom instead; the
   z blur is not one either (a lone tap weighs erf(0.707 / s) < 1, the 2D image does not get it),
   so the z sigma is set to 0.05, whose kernel is exactly (0, 1, 0) in float32; and the blur
   alone is checked as 2D times that centre weight, bit for bit. */
static void test_flat_volume(void) {
  enum { S = 24, N = S * S };
  static float base[N], ids[N], a[N], b[N], la[N], lb[N], tmp[N];
  const int shape[3] = {S, S, 1};
  ioupos_aug_config c;
  ioupos_rng rng;
  int v, bad = 0, bad_label = 0, n_zoom = 0, n_rot = 0, n_blur = 0;
  long i;
  for (i = 0; i < N; ++i) {
    base[i] = (float)((i * 2654435761u) % 1000u) / 1000.0f;
    ids[i] = (float)(((i / S) / 5 + (i % S) / 7) % 14);
  }
  ioupos_aug_config_pretrain(&c);
  c.blur_prob = c.noise_prob = 0.5;
  ioupos_rng_seed(&rng, 4242);
  for (v = 0; v < 300; ++v) {
    ioupos_view_params p3, p2;
    c.intensity_first = v & 1;
    ioupos_view_params_draw_config3(&c, &rng, &p3);
    if (p3.zoom < 1.0) p3.zoom = 1.0 / p3.zoom;
    p3.blur_sigma[2] = 0.05;
    p2 = p3;
    p2.dims = 2;
    n_zoom += p3.zoom_on, n_rot += p3.rot90_k != 0, n_blur += p3.blur_on;
    memcpy(a, base, sizeof a), memcpy(b, base, sizeof b);
    memcpy(la, ids, sizeof la), memcpy(lb, ids, sizeof lb);
    if (ioupos_view_apply3(&p3, a, la, shape, tmp) != 0 ||
        ioupos_view_apply_labelled(&p2, b, lb, S, S, tmp) != 0) {
      CHECK(0, "flat volume: apply failed: %s", ioupos_failure_reason());
      return;
    }
    bad += memcmp(a, b, sizeof a) != 0;
    bad_label += memcmp(la, lb, sizeof la) != 0;
  }
  printf("z extent 1 vs 2D: 300 views (%d zoomed, %d rotated, %d blurred), %d images and %d "
         "labels differ\n", n_zoom, n_rot, n_blur, bad, bad_label);
  CHECK(n_zoom > 100 && n_rot > 100 && n_blur > 100, "flat volume: too few transforms exercised");
  CHECK(bad == 0 && bad_label == 0, "z extent 1: %d images, %d labels differ from the 2D view",
        bad, bad_label);
  {
    const double s3[3] = {0.7, 1.3, 0.9};
    float kern[2 * IOUPOS_AUG_MAX_TAIL + 1];
    int t = ioupos_aug_gaussian_kernel(0.9, kern, 2 * IOUPOS_AUG_MAX_TAIL + 1);
    memcpy(a, base, sizeof a), memcpy(b, base, sizeof b);
    CHECK(ioupos_aug_gaussian_blur3(a, shape, s3, tmp) == 0 &&
          ioupos_aug_gaussian_blur(b, S, S, 0.7, 1.3, tmp) == 0, "blur");
    for (i = 0; i < N; ++i) b[i] *= kern[t];
    CHECK(kern[t] < 1.0f && memcmp(a, b, sizeof a) == 0,
          "z extent 1: 3D blur is not the 2D blur times the lone z tap %g", kern[t]);
  }
}

/* Replay, label values and alignment on a 16x16x12 volume through the callbacks and apply3;
   posneg crops on volumes: inside, right size, centre from the right set; errors. */
static void test_volumes_misc(void) {
  enum { X = 16, Y = 16, Z = 12, N = X * Y * Z };
  static float base[N], ids[N], a[N], b[N], la[N], lb[N], tmp[N];
  const int shape[3] = {X, Y, Z};
  ioupos_rng r1, r2;
  ioupos_aug_config cf;
  int v, bad_replay = 0, bad_label = 0, bad_align = 0, st;
  long i;
  CHECK(IOUPOS_AUGMENT_SCRATCH3(X, Y, Z) == (size_t)N, "IOUPOS_AUGMENT_SCRATCH3 %zu",
        IOUPOS_AUGMENT_SCRATCH3(X, Y, Z));
  for (i = 0; i < N; ++i) {
    base[i] = (float)((i * 2654435761u) % 1000u) / 1000.0f;
    ids[i] = (float)(((i / (Y * Z)) / 4 + (i / Z % Y) / 5 + (i % Z) / 3) % 14);
  }
  ioupos_aug_config_finetune(&cf);
  cf.zoom_prob = 0.5; /* the label's nearest zoom too */
  ioupos_rng_seed(&r1, 99), ioupos_rng_seed(&r2, 99);
  /* the callbacks against draw + apply by hand: pretraining with ctx NULL (the preset, label
     ignored), fine-tuning with a configuration, fine-tuning with ctx NULL */
  for (v = 0; v < 60; ++v) {
    ioupos_view_params p;
    ioupos_aug_config preset;
    int labelled = v % 3 != 0;
    memcpy(a, base, sizeof a), memcpy(b, base, sizeof b);
    memcpy(la, ids, sizeof la), memcpy(lb, ids, sizeof lb);
    if (v % 3 == 0) {
      st = ioupos_augment_pretrain_volume(NULL, &r1, a, la, shape, tmp);
      ioupos_aug_config_pretrain(&preset);
      ioupos_view_params_draw_config3(&preset, &r2, &p);
    } else if (v % 3 == 1) {
      st = ioupos_augment_finetune_volume(&cf, &r1, a, la, shape, tmp);
      ioupos_view_params_draw_config3(&cf, &r2, &p);
    } else {
      st = ioupos_augment_finetune_volume(NULL, &r1, a, la, shape, tmp);
      ioupos_aug_config_finetune(&preset);
      ioupos_view_params_draw_config3(&preset, &r2, &p);
    }
    if (st != 0 || ioupos_view_apply3(&p, b, labelled ? lb : NULL, shape, tmp) != 0) {
      CHECK(0, "volume apply failed: %s", ioupos_failure_reason());
      return;
    }
    bad_replay += memcmp(a, b, sizeof a) != 0 || memcmp(la, lb, sizeof la) != 0;
    for (i = 0; i < N; ++i)
      if (!(la[i] >= 0 && la[i] <= 13 && la[i] == floorf(la[i]))) ++bad_label;
    if (labelled) { /* the same spatial part on an image equal to the label map */
      ioupos_view_params s = p;
      s.scale_on = s.shift_on = s.blur_on = s.noise_on = 0;
      memcpy(a, ids, sizeof a);
      if (!s.zoom_on) { /* trilinear mixes ids; nearest only matches without zoom */
        ioupos_view_apply3(&s, a, NULL, shape, tmp);
        bad_align += memcmp(a, la, sizeof a) != 0;
      }
    }
  }
  CHECK(bad_replay == 0, "%d of 60 volumes: callback and replay from parameters differ", bad_replay);
  CHECK(bad_label == 0, "%d label voxels not among the input ids", bad_label);
  CHECK(bad_align == 0, "%d volumes: label not aligned with the image", bad_align);

  /* errors: named, nothing written */
  {
    ioupos_view_params p;
    const int rect[3] = {6, 4, 3}, empty[3] = {6, 0, 3};
    float img[72], keep[72], t2[72];
    for (i = 0; i < 72; ++i) img[i] = keep[i] = (float)i;
    ioupos_view_params_identity(&p);
    p.dims = 3, p.rot90_k = 1, p.scale_on = 1, p.scale = 0.5;
    st = ioupos_view_apply3(&p, img, NULL, rect, t2);
    CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "6x4x3") &&
          strstr(ioupos_failure_reason(), "4x6x3") && !memcmp(img, keep, sizeof img),
          "odd rot90 on 6x4x3: status %d reason '%s'", st, ioupos_failure_reason());
    p.rot90_k = 2;
    st = ioupos_view_apply3(&p, img, NULL, rect, t2);
    /* (x, y) -> (5 - x, 3 - y), z kept: voxel (0, 0, 0) gets (5, 3, 0) = 69 */
    CHECK(st == 0 && img[0] == 69 * 1.5f && img[2] == 71 * 1.5f, "k 2 on 6x4x3: %d, %g", st, img[0]);
    memcpy(img, keep, sizeof img);
    ioupos_view_params_identity(&p);
    st = ioupos_view_apply3(&p, img, NULL, rect, t2);
    CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "dims 2"), "dims 2 record: %d %s",
          st, ioupos_failure_reason());
    p.dims = 3;
    st = ioupos_view_apply3(&p, img, NULL, empty, t2);
    CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "6x0x3"), "empty volume: %d %s", st,
          ioupos_failure_reason());
    p.blur_on = 1, p.blur_sigma[2] = 0;
    st = ioupos_view_apply3(&p, img, NULL, rect, t2);
    CHECK(st == IOUPOS_EINVAL && !memcmp(img, keep, sizeof img), "blur sigma z 0: %d", st);
    ioupos_view_params_identity(&p);
    p.dims = 3, p.zoom_on = 1, p.zoom = NAN;
    st = ioupos_view_apply3(&p, img, NULL, rect, t2);
    CHECK(st == IOUPOS_EINVAL && !memcmp(img, keep, sizeof img), "zoom NaN: %d", st);
    p.zoom_on = 0;
    st = ioupos_view_apply3(&p, img, NULL, rect, t2);
    CHECK(st == 0 && !memcmp(img, keep, sizeof img), "3D identity changed the volume");
    CHECK(ioupos_aug_zoom3(keep, rect, 0.1, t2) == 0 && t2[0] == 0 && t2[71] == 0, "zoom to 0 rows");
    CHECK(ioupos_aug_zoom3(keep, rect, -1, t2) == IOUPOS_EINVAL, "zoom -1 accepted");
  }

  /* posneg on a volume: statistics and checks */
  {
    static float lab[N];
    const int crop[3] = {8, 6, 5};
    ioupos_posneg_crop c[2];
    uint64_t nf, nb;
    long fg = 0, outside = 0, wrong = 0, m = 20000;
    int x, y, z;
    memset(lab, 0, sizeof lab);
    for (x = 1; x < 4; ++x) for (y = 2; y < 5; ++y) for (z = 0; z < 2; ++z) lab[(x * Y + y) * Z + z] = 1;
    for (x = 10; x < 16; ++x) for (y = 12; y < 16; ++y) for (z = 8; z < 12; ++z) lab[(x * Y + y) * Z + z] = 2;
    ioupos_posneg_count3(lab, NULL, 0, shape, &nf, &nb);
    CHECK(nf == 18 + 96 && nb == (uint64_t)N - nf, "count3: fg %llu bg %llu",
          (unsigned long long)nf, (unsigned long long)nb);
    ioupos_rng_seed(&r1, 8);
    for (i = 0; i < m / 2; ++i) {
      int s, a;
      st = ioupos_posneg_crops_draw3(&r1, lab, NULL, 0.0, shape, crop, 1.0, 1.0, 2, c);
      if (st != 0) { CHECK(0, "draw3 failed: %s", ioupos_failure_reason()); return; }
      for (s = 0; s < 2; ++s) {
        const ioupos_posneg_crop *k = c + s;
        long idx = -1, seen = 0, j;
        fg += k->fg;
        for (a = 0; a < 3; ++a)
          outside += k->box.lo[a] < 0 || k->box.hi[a] > shape[a] || k->box.hi[a] - k->box.lo[a] != crop[a];
        for (j = 0; j < N; ++j)
          if ((lab[j] != 0) == k->fg && seen++ == (long)k->rank) { idx = j; break; }
        if (idx < 0 || k->box.dims != 3) { ++wrong; continue; }
        { /* centre = voxel clamped into [crop / 2, n - ceil(crop / 2)] per axis */
          int vx[3];
          vx[0] = (int)(idx / (Y * Z)), vx[1] = (int)(idx / Z % Y), vx[2] = (int)(idx % Z);
          for (a = 0; a < 3; ++a) {
            int lo = crop[a] / 2, hi = shape[a] - (crop[a] + 1) / 2;
            wrong += k->center[a] != (vx[a] < lo ? lo : vx[a] > hi ? hi : vx[a]);
          }
        }
      }
    }
    {
      double zf = zscore_binom(fg, m, 0.5);
      printf("3D pos/neg crops: %ld, foreground %.4f (z %.2f)\n", m, (double)fg / m, zf);
      CHECK(zf < 5, "3D foreground fraction %g", (double)fg / m);
    }
    CHECK(outside == 0 && wrong == 0, "3D pos/neg: %ld outside or wrong size, %ld wrong centres",
          outside, wrong);
    {
      int big[3] = {8, 6, Z + 1};
      st = ioupos_posneg_crops_draw3(&r1, lab, NULL, 0, shape, big, 1, 1, 1, c);
      CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "8x6x13") &&
            strstr(ioupos_failure_reason(), "16x16x12"), "3D crop too big: %d %s", st,
            ioupos_failure_reason());
      st = ioupos_posneg_locate3(lab, NULL, 0, shape, crop, 1, nf, c);
      CHECK(st == IOUPOS_EINVAL, "3D rank out of range: %d", st);
      memset(a, 0, sizeof a);
      st = ioupos_posneg_crops_draw3(&r1, a, a, 0, shape, crop, 1, 1, 1, c);
      CHECK(st == IOUPOS_EINFEASIBLE, "3D empty fg and bg: %d", st);
    }
  }
}

int main(void) {
  long n = tu_env_long("IOUPOS_TEST_DRAWS", 1000000);
  if (n > 200000) n = 200000;
  test_fixtures();
  test_draws(0, n);
  test_draws(1, n);
  test_noise();
  test_posneg_stats();
  test_replay_and_labels();
  test_fixtures3();
  test_draws3(n);
  test_flat_volume();
  test_volumes_misc();
  return tu_finish("test_augment");
}
