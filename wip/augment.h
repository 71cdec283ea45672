/* wip/augment.h — augmentations (issue 3, item 3; owner "augment"). Fragment format: wip/API.md.

   The research code's MONAI augmentations (monai 1.6.1, torch 2.15.0), split into
     (a) a parameter record drawn from an explicit ioupos_rng (ioupos_view_params_draw*,
         ioupos_posneg_crops_draw), and
     (b) a deterministic apply (ioupos_view_apply*, ioupos_aug_* building blocks),
   so that every sample can be replayed from its parameters. Images are 2D float arrays,
   row-major, h rows x w columns (axis 0 = rows, axis 1 = columns, as MONAI's spatial axes of
   a channel-first (1, H, W) tensor). The parameter records keep per-axis fields for three axes
   and a dims field so that 3D (d x h x w, axis 0 slowest) can be added without changing them;
   only dims == 2 is implemented.

   Semantics, each checked against MONAI on fixtures (tests/reference/augment_fixture.py):
   - Zoom (RandZoomd: mode bilinear, padding_mode constant, keep_size, align_corners None):
     the zoomed size is floor(n * zoom) per axis; values come from
     torch.nn.functional.interpolate(recompute_scale_factor=True), i.e. half-pixel bilinear
     with scale in/out computed in float32, source index clamped at 0, the upper neighbour
     clamped to n - 1, and an exact copy along an axis whose size does not change; then the
     result is centre-cropped (start floor(zn/2) - floor(n/2)) or zero-padded (floor((n-zn)/2)
     before, the rest after) back to n. Labels use torch's "nearest" (floor(dst * in/out) in
     float32; dst >> 1 when doubling).
   - Flip along axis a: reverse that axis (torch.flip).
   - Rot90 by k in the plane (0, 1): torch.rot90(x, k, (0, 1)), i.e. counter-clockwise when
     rows go down: k = 1 gives out[i][j] = in[j][w-1-i] with shape (w, h).
   - Intensity scale: v * (1 + f) in float32 (MONAI's factor f); shift: v + o.
   - Gaussian blur (GaussianSmooth, approx "erf", truncated 4, separable, zero padding, rows
     first then columns): per axis sigma s (rounded to float32 first), tail
     t = (int)(max(4 s, 0.5) + 0.5), taps x = -t..t with weight
     0.5 (erf(c (x + 0.5)) - erf(c (x - 0.5))), c = 0.70710678 / s, NOT normalised (sum
     erf((t + 0.5) c), up to 1.6e-5 below 1 at s = 1.5). Kernel size 2t + 1 (3..13 taps for
     s in [0.25, 1.5]).
   - Gaussian noise (RandGaussianNoised, sample_std True by default in 1.6.1): std drawn
     uniformly in [0, std), then per pixel N(mean, std) added in float32 (MONAI draws it in
     double and rounds to float32 first: the same to float precision). Generated from an
     ioupos_rng seeded with the stored noise_seed (Marsaglia's polar method, single precision,
     on 32-bit uniforms), so a replay on the same libm gives bit-identical noise; MONAI's numpy
     stream is of course not reproduced, only its distribution.
   - Probabilities: a transform fires when a uniform draw in [0, 1) is < prob (MONAI's
     R.rand() < prob); value ranges are uniform in [lo, hi) (R.uniform); rot90's k is
     1 + uniform integer in [0, max_k) (R.randint(max_k) + 1). Every draw consumes the same
     number of random numbers whatever fires (values are drawn also for transforms that do not
     fire), so changing one probability does not shift the others' streams.
   - RandCropByPosNegLabeld (fine-tuning): foreground = label != 0, background = label == 0
     (and, if an image is given, image > image_threshold; MONAI's image_key restricts only the
     background). Each of num_samples crops picks foreground with probability pos / (pos + neg)
     (1 if there is no background, 0 if there is no foreground), then a uniformly chosen voxel of
     that set as its centre; the centre is moved per axis into [floor(c/2), n - ceil(c/2)] (MONAI
     correct_crop_centers) and the crop starts at centre - floor(c/2), so it always lies inside
     the image. A crop larger than the image is an error (allow_smaller False).

   Order of application (ioupos_view_params.intensity_first):
     0, pretraining (research transforms.py:282-345 / thesis p.29):
        zoom, flip axis 0, flip axis 1, rot90, scale, shift, blur, noise
     1, fine-tuning (research code order, intensity first):
        blur, scale, shift, noise, zoom (off in the research setting), flip 0, flip 1, rot90
   Label maps get only the spatial transforms (zoom by nearest, flips, rot90), so their values
   are only ever copied, never interpolated.
*/
#ifndef IOUPOS_WIP_AUGMENT_H
#define IOUPOS_WIP_AUGMENT_H
#include "ioupos.h"
#ifdef __cplusplus
extern "C" {
#endif

/* Largest Gaussian tail the blur supports (kernel of 2 * tail + 1 taps on the stack): sigma up
   to about 31.9. */
#ifndef IOUPOS_AUG_MAX_TAIL
#define IOUPOS_AUG_MAX_TAIL 128
#endif

/* Probabilities and ranges of the random augmentations. Fill with one of the two presets and
   change fields as needed. Ranges are [lo, hi); a probability of 0 disables a transform. */
typedef struct ioupos_aug_config {
  double zoom_prob, zoom_min, zoom_max;     /* isotropic factor */
  double flip_prob[3];                      /* per axis, 0 = rows */
  double rot90_prob;                        /* plane (0, 1) */
  int rot90_max_k;                          /* k = 1 + uniform integer in [0, max_k), >= 1 */
  double scale_prob, scale_min, scale_max;  /* v * (1 + f) */
  double shift_prob, shift_min, shift_max;  /* v + o */
  double blur_prob, blur_sigma_min[3], blur_sigma_max[3]; /* sigma per axis, independent */
  double noise_prob, noise_mean, noise_std; /* N(mean, s), s = noise_std or U[0, noise_std) */
  int noise_sample_std;                     /* 1: s ~ U[0, noise_std) (MONAI's default) */
  int intensity_first;                      /* order, see the top of this file */
} ioupos_aug_config;

/* Pretraining views (research): zoom 0.8-1.2 p 0.75, flips p 0.5 per axis, rot90 p 0.5
   (k in 1..3), scale f in [-0.1, 0.1) p 0.75, shift [-0.1, 0.1) p 0.75, blur sigma per axis
   in [0.25, 1.5) p 0.25, noise std 0.01 (sampled) p 0.25; spatial first. */
IOUPOS_DEF void ioupos_aug_config_pretrain(ioupos_aug_config *c);
/* Fine-tuning (research): no zoom; blur, scale 0.1, shift 0.1, noise 0.01 at p 0.15 each;
   flips per axis and rot90 at p 0.25; intensity first. */
IOUPOS_DEF void ioupos_aug_config_finetune(ioupos_aug_config *c);

/* One view's drawn augmentation: enough to replay it exactly. */
typedef struct ioupos_view_params {
  int dims;              /* 2 (3 reserved) */
  int intensity_first;   /* order, see the top of this file */
  int zoom_on;
  double zoom;           /* isotropic factor */
  int flip[3];           /* flip axis k (0 = rows, 1 = columns) */
  int rot90_k;           /* 0 = none, else 1..3 quarter turns in the plane (0, 1) */
  int scale_on;
  double scale;          /* MONAI's factor f: v * (1 + f) */
  int shift_on;
  double shift;          /* v + shift */
  int blur_on;
  double blur_sigma[3];  /* per axis */
  int noise_on;
  double noise_mean, noise_std; /* the std actually used (already sampled) */
  uint64_t noise_seed;   /* seeds the ioupos_rng that generates the noise */
} ioupos_view_params;

/* Draw a pretraining view's parameters (ioupos_aug_config_pretrain). */
IOUPOS_DEF void ioupos_view_params_draw(ioupos_rng *rng, ioupos_view_params *p);
/* Draw with a given configuration (its values are not checked here; apply checks them). */
IOUPOS_DEF void ioupos_view_params_draw_config(const ioupos_aug_config *c, ioupos_rng *rng,
                                               ioupos_view_params *p);
/* All transforms off (identity). */
IOUPOS_DEF void ioupos_view_params_identity(ioupos_view_params *p);

/* Apply p to img (h x w, in place); tmp is scratch of h * w floats. No allocation. Fails
   (IOUPOS_EINVAL, img untouched) on a NULL pointer, h or w < 1, dims != 2, an odd rot90_k on a
   non-square image (use square crops), zoom not > 0, a blur sigma not in (0, ~31.9], or a
   non-finite parameter. */
IOUPOS_DEF int ioupos_view_apply(const ioupos_view_params *p, float *img, int h, int w,
                                 float *tmp);
/* Same, and the spatial transforms also on label (h x w, in place; zoom by nearest), which may
   be NULL. tmp is h * w floats, used for the image and then the label. */
IOUPOS_DEF int ioupos_view_apply_labelled(const ioupos_view_params *p, float *img, float *label,
                                          int h, int w, float *tmp);

/* ---- deterministic building blocks (2D, row-major h x w) ---------------------------------- */

/* out[h][w] = in[h][w] zoomed by zoom > 0 and centre-cropped / zero-padded back to h x w
   (bilinear, MONAI Zoom keep_size). If floor(n * zoom) is 0 on an axis the output is all 0
   (MONAI raises). in and out must not overlap. Returns 0 or IOUPOS_EINVAL (zoom not > 0). */
IOUPOS_DEF int ioupos_aug_zoom(const float *in, int h, int w, double zoom, float *out);
/* The same with torch's "nearest" (for label maps: values are copied, never mixed). */
IOUPOS_DEF int ioupos_aug_zoom_nearest(const float *in, int h, int w, double zoom, float *out);
/* img[h][w] reversed along axis (0 = rows, 1 = columns), in place. */
IOUPOS_DEF void ioupos_aug_flip(float *img, int h, int w, int axis);
/* out = torch.rot90(in, k, (0, 1)); in is h x w, out is w x h for odd k, h x w for even k
   (k taken mod 4; k = 0 copies). in and out must not overlap. */
IOUPOS_DEF void ioupos_aug_rot90(const float *in, int h, int w, int k, float *out);
/* MONAI's unnormalised erf kernel for sigma (see the top): writes 2 * tail + 1 weights to
   kernel (cap >= that many) and returns tail, or -1 if sigma is not in (0, ~31.9] or cap is
   too small. */
IOUPOS_DEF int ioupos_aug_gaussian_kernel(double sigma, float *kernel, int cap);
/* img[h][w] blurred with sigma0 along rows (axis 0) and sigma1 along columns, zero padding,
   in place; tmp is h * w floats. Returns 0 or IOUPOS_EINVAL (a sigma out of range). */
IOUPOS_DEF int ioupos_aug_gaussian_blur(float *img, int h, int w, double sigma0, double sigma1,
                                        float *tmp);
/* img[n] += N(mean, std) from an ioupos_rng seeded with seed (deterministic). */
IOUPOS_DEF void ioupos_aug_gaussian_noise(float *img, size_t n, double mean, double std,
                                          uint64_t seed);
/* img[n] = img[n] * (float)(1 + f) */
IOUPOS_DEF void ioupos_aug_scale(float *img, size_t n, double f);
/* img[n] = img[n] + (float)o */
IOUPOS_DEF void ioupos_aug_shift(float *img, size_t n, double o);
/* out[box extent] = in[h][w] restricted to box (dims 2, inside the image). */
IOUPOS_DEF void ioupos_aug_crop(const float *in, int h, int w, const ioupos_box *box,
                                float *out);

/* ---- fine-tuning crops: MONAI RandCropByPosNegLabeld ------------------------------------- */

typedef struct ioupos_posneg_crop {
  int fg;          /* 1 if the centre was drawn from the foreground */
  uint64_t rank;   /* index of the centre voxel within its set, in row-major order */
  int center[3];   /* the corrected centre (rows, columns) */
  ioupos_box box;  /* the crop, dims 2, always inside the image */
} ioupos_posneg_crop;

/* Number of foreground (label != 0) and background (label == 0 and, if image is not NULL,
   image > image_threshold) pixels of an h x w label map. */
IOUPOS_DEF void ioupos_posneg_count(const float *label, const float *image,
                                    double image_threshold, int h, int w, uint64_t *n_fg,
                                    uint64_t *n_bg);
/* Deterministic part: the crop (crop[0] x crop[1]) centred on the rank-th foreground (fg = 1) or
   background voxel, corrected to lie inside the image. Fails (IOUPOS_EINVAL) if the crop is
   larger than the image or not positive, or rank is not below the set's size. */
IOUPOS_DEF int ioupos_posneg_locate(const float *label, const float *image,
                                    double image_threshold, int h, int w, const int crop[2],
                                    int fg, uint64_t rank, ioupos_posneg_crop *out);
/* Draw num_samples crops (pos, neg >= 0, not both 0; research: pos = neg = 1, 2 samples,
   96 x 96). image may be NULL (no image_key). Fails with IOUPOS_EINVAL on bad arguments,
   IOUPOS_EINFEASIBLE when there is neither foreground nor background. */
IOUPOS_DEF int ioupos_posneg_crops_draw(ioupos_rng *rng, const float *label, const float *image,
                                        double image_threshold, int h, int w, const int crop[2],
                                        double pos, double neg, int num_samples,
                                        ioupos_posneg_crop *out);

#ifdef __cplusplus
}
#endif
#endif /* IOUPOS_WIP_AUGMENT_H */

#if defined(IOUPOS_IMPLEMENTATION) && !defined(IOUPOS_WIP_AUGMENT_IMPL)
#define IOUPOS_WIP_AUGMENT_IMPL

IOUPOS_DEF void ioupos_aug_config_pretrain(ioupos_aug_config *c) {
  int k;
  memset(c, 0, sizeof *c);
  c->zoom_prob = 0.75, c->zoom_min = 0.8, c->zoom_max = 1.2;
  c->flip_prob[0] = c->flip_prob[1] = 0.5;
  c->rot90_prob = 0.5, c->rot90_max_k = 3;
  c->scale_prob = 0.75, c->scale_min = -0.1, c->scale_max = 0.1;
  c->shift_prob = 0.75, c->shift_min = -0.1, c->shift_max = 0.1;
  c->blur_prob = 0.25;
  for (k = 0; k < 3; ++k) c->blur_sigma_min[k] = 0.25, c->blur_sigma_max[k] = 1.5;
  c->noise_prob = 0.25, c->noise_mean = 0.0, c->noise_std = 0.01, c->noise_sample_std = 1;
  c->intensity_first = 0;
}

IOUPOS_DEF void ioupos_aug_config_finetune(ioupos_aug_config *c) {
  ioupos_aug_config_pretrain(c);
  c->zoom_prob = 0.0;
  c->flip_prob[0] = c->flip_prob[1] = 0.25;
  c->rot90_prob = 0.25;
  c->scale_prob = c->shift_prob = c->blur_prob = c->noise_prob = 0.15;
  c->intensity_first = 1;
}

IOUPOS_DEF void ioupos_view_params_identity(ioupos_view_params *p) {
  memset(p, 0, sizeof *p);
  p->dims = 2;
  p->zoom = 1.0;
  p->blur_sigma[0] = p->blur_sigma[1] = p->blur_sigma[2] = 1.0;
}

/* fires with probability prob; the value draw happens whatever the outcome */
static int ioupos__aug_fire(ioupos_rng *rng, double prob) { return ioupos_rng_uniform(rng) < prob; }
static double ioupos__aug_range(ioupos_rng *rng, double lo, double hi) {
  return lo + (hi - lo) * ioupos_rng_uniform(rng);
}

IOUPOS_DEF void ioupos_view_params_draw_config(const ioupos_aug_config *c, ioupos_rng *rng,
                                               ioupos_view_params *p) {
  int k;
  double s;
  ioupos_view_params_identity(p);
  p->intensity_first = c->intensity_first;
  p->zoom_on = ioupos__aug_fire(rng, c->zoom_prob);
  p->zoom = ioupos__aug_range(rng, c->zoom_min, c->zoom_max);
  for (k = 0; k < 2; ++k) p->flip[k] = ioupos__aug_fire(rng, c->flip_prob[k]);
  k = 1 + (int)ioupos_rng_below(rng, (uint64_t)(c->rot90_max_k > 1 ? c->rot90_max_k : 1));
  p->rot90_k = ioupos__aug_fire(rng, c->rot90_prob) ? k : 0;
  p->scale_on = ioupos__aug_fire(rng, c->scale_prob);
  p->scale = ioupos__aug_range(rng, c->scale_min, c->scale_max);
  p->shift_on = ioupos__aug_fire(rng, c->shift_prob);
  p->shift = ioupos__aug_range(rng, c->shift_min, c->shift_max);
  p->blur_on = ioupos__aug_fire(rng, c->blur_prob);
  for (k = 0; k < 2; ++k) p->blur_sigma[k] = ioupos__aug_range(rng, c->blur_sigma_min[k], c->blur_sigma_max[k]);
  p->noise_on = ioupos__aug_fire(rng, c->noise_prob);
  s = ioupos_rng_uniform(rng);
  p->noise_mean = c->noise_mean;
  p->noise_std = c->noise_sample_std ? s * c->noise_std : c->noise_std;
  p->noise_seed = ioupos_rng_u64(rng);
}

IOUPOS_DEF void ioupos_view_params_draw(ioupos_rng *rng, ioupos_view_params *p) {
  ioupos_aug_config c;
  ioupos_aug_config_pretrain(&c);
  ioupos_view_params_draw_config(&c, rng, p);
}

/* ---- zoom ---------------------------------------------------------------------------------- */

/* Size of the zoomed axis (MONAI / torch: floor(n * zoom) in double), and where output index i
   of the kept-size axis reads in it: zi = i + off (off = crop start or minus pad before). */
static int ioupos__zoom_size(int n, double zoom, int *off) {
  double zd = floor((double)n * zoom);
  int zn = zd > (double)INT32_MAX ? INT32_MAX : (int)zd;
  if (zn > n) *off = zn / 2 - n / 2;         /* CenterSpatialCrop */
  else *off = -((n - zn) / 2);               /* SpatialPad, symmetric */
  return zn;
}

/* torch's linear source index for output index dst (align_corners False, scale in / out in
   float32, HelperInterpLinear::compute_indices_weights / compute_source_index_and_lambda). */
static void ioupos__lin_src(int in, int out, int dst, int *i0, int *i1, float *l0, float *l1) {
  float scale, src, lam;
  int i;
  if (in == out) {
    *i0 = *i1 = dst;
    *l0 = 1.0f, *l1 = 0.0f;
    return;
  }
  scale = (float)in / (float)out;
  src = scale * ((float)dst + 0.5f) - 0.5f;
  if (src < 0.0f) src = 0.0f;
  i = (int)src; /* src >= 0: truncation is floor */
  if (i > in - 1) i = in - 1;
  lam = src - (float)i;
  if (lam < 0.0f) lam = 0.0f;
  if (lam > 1.0f) lam = 1.0f;
  *i0 = i;
  *i1 = i + (i < in - 1 ? 1 : 0);
  *l1 = lam;
  *l0 = 1.0f - lam;
}

/* torch's "nearest" source index (nearest_idx). */
static int ioupos__nn_src(int in, int out, int dst) {
  float scale;
  int i;
  if (in == out) return dst;
  if (out == 2 * in) return dst >> 1;
  scale = (float)in / (float)out;
  i = (int)((float)dst * scale); /* >= 0: truncation is floor */
  return i < in - 1 ? i : in - 1;
}

static int ioupos__zoom_check(double zoom) {
  if (!(zoom > 0.0) || zoom > 1e6)
    return ioupos__fail(IOUPOS_EINVAL, "zoom: factor %g is not in (0, 1e6]", zoom);
  return IOUPOS_OK;
}

IOUPOS_DEF int ioupos_aug_zoom(const float *in, int h, int w, double zoom, float *out) {
  enum { B = 128 }; /* columns per block of precomputed source indices and weights */
  int c0[B], c1[B], zh, zw, oh, ow, i, j, j0;
  float b0[B], b1[B];
  if (ioupos__zoom_check(zoom) != IOUPOS_OK) return IOUPOS_EINVAL;
  zh = ioupos__zoom_size(h, zoom, &oh);
  zw = ioupos__zoom_size(w, zoom, &ow);
  for (j0 = 0; j0 < w; j0 += B) {
    int nb = w - j0 < B ? w - j0 : B;
    for (j = 0; j < nb; ++j) { /* columns outside the zoomed image read 0: weights 0 */
      int zj = j0 + j + ow;
      if (zj < 0 || zj >= zw) c0[j] = c1[j] = 0, b0[j] = b1[j] = 0.0f;
      else ioupos__lin_src(w, zw, zj, c0 + j, c1 + j, b0 + j, b1 + j);
    }
    for (i = 0; i < h; ++i) {
      float *o = out + (size_t)i * w + j0;
      int zi = i + oh, r0, r1;
      float a0, a1;
      const float *x0, *x1;
      if (zi < 0 || zi >= zh) {
        for (j = 0; j < nb; ++j) o[j] = 0.0f;
        continue;
      }
      ioupos__lin_src(h, zh, zi, &r0, &r1, &a0, &a1);
      x0 = in + (size_t)r0 * w, x1 = in + (size_t)r1 * w;
      for (j = 0; j < nb; ++j) {
        float t0 = x0[c0[j]] * b0[j] + x0[c1[j]] * b1[j];
        float t1 = x1[c0[j]] * b0[j] + x1[c1[j]] * b1[j];
        o[j] = t0 * a0 + t1 * a1;
      }
    }
  }
  return IOUPOS_OK;
}

IOUPOS_DEF int ioupos_aug_zoom_nearest(const float *in, int h, int w, double zoom, float *out) {
  int zh, zw, oh, ow, i, j;
  if (ioupos__zoom_check(zoom) != IOUPOS_OK) return IOUPOS_EINVAL;
  zh = ioupos__zoom_size(h, zoom, &oh);
  zw = ioupos__zoom_size(w, zoom, &ow);
  for (i = 0; i < h; ++i) {
    float *o = out + (size_t)i * w;
    int zi = i + oh;
    const float *x;
    if (zi < 0 || zi >= zh) {
      for (j = 0; j < w; ++j) o[j] = 0.0f;
      continue;
    }
    x = in + (size_t)ioupos__nn_src(h, zh, zi) * w;
    for (j = 0; j < w; ++j) {
      int zj = j + ow;
      o[j] = (zj < 0 || zj >= zw) ? 0.0f : x[ioupos__nn_src(w, zw, zj)];
    }
  }
  return IOUPOS_OK;
}

/* ---- flip, rot90 --------------------------------------------------------------------------- */

IOUPOS_DEF void ioupos_aug_flip(float *img, int h, int w, int axis) {
  int i, j;
  if (axis == 0) {
    for (i = 0; i < h / 2; ++i) {
      float *a = img + (size_t)i * w, *b = img + (size_t)(h - 1 - i) * w;
      for (j = 0; j < w; ++j) {
        float t = a[j];
        a[j] = b[j];
        b[j] = t;
      }
    }
  } else {
    for (i = 0; i < h; ++i) {
      float *a = img + (size_t)i * w;
      for (j = 0; j < w / 2; ++j) {
        float t = a[j];
        a[j] = a[w - 1 - j];
        a[w - 1 - j] = t;
      }
    }
  }
}

IOUPOS_DEF void ioupos_aug_rot90(const float *in, int h, int w, int k, float *out) {
  int i, j;
  k = ((k % 4) + 4) % 4;
  if (k == 0) {
    memcpy(out, in, sizeof(float) * (size_t)h * (size_t)w);
  } else if (k == 2) { /* out[i][j] = in[h-1-i][w-1-j] */
    for (i = 0; i < h; ++i) {
      const float *s = in + (size_t)(h - 1 - i) * w;
      float *o = out + (size_t)i * w;
      for (j = 0; j < w; ++j) o[j] = s[w - 1 - j];
    }
  } else if (k == 1) { /* out is w x h: out[i][j] = in[j][w-1-i] */
    for (i = 0; i < w; ++i) {
      float *o = out + (size_t)i * h;
      for (j = 0; j < h; ++j) o[j] = in[(size_t)j * w + (size_t)(w - 1 - i)];
    }
  } else { /* k == 3, out is w x h: out[i][j] = in[h-1-j][i] */
    for (i = 0; i < w; ++i) {
      float *o = out + (size_t)i * h;
      for (j = 0; j < h; ++j) o[j] = in[(size_t)(h - 1 - j) * w + (size_t)i];
    }
  }
}

/* ---- Gaussian blur ------------------------------------------------------------------------- */

IOUPOS_DEF int ioupos_aug_gaussian_kernel(double sigma, float *kernel, int cap) {
  float s = (float)sigma, c;
  double st;
  int tail, x;
  if (!(sigma > 0.0) || !(s > 0.0f)) return -1;
  st = (double)s * 4.0;
  if (!(st < IOUPOS_AUG_MAX_TAIL)) return -1;
  tail = (int)((st > 0.5 ? st : 0.5) + 0.5);
  if (tail > IOUPOS_AUG_MAX_TAIL || cap < 2 * tail + 1) return -1;
  c = 0.70710678f / s;
  for (x = -tail; x <= tail; ++x) {
    float hi = (float)erf((double)(c * ((float)x + 0.5f)));
    float lo = (float)erf((double)(c * ((float)x - 0.5f)));
    float v = 0.5f * (hi - lo);
    kernel[x + tail] = v > 0.0f ? v : 0.0f;
  }
  return tail;
}

IOUPOS_DEF int ioupos_aug_gaussian_blur(float *img, int h, int w, double sigma0, double sigma1,
                                        float *tmp) {
  float k0[2 * IOUPOS_AUG_MAX_TAIL + 1], k1[2 * IOUPOS_AUG_MAX_TAIL + 1];
  int t0 = ioupos_aug_gaussian_kernel(sigma0, k0, 2 * IOUPOS_AUG_MAX_TAIL + 1);
  int t1 = ioupos_aug_gaussian_kernel(sigma1, k1, 2 * IOUPOS_AUG_MAX_TAIL + 1);
  int i, j, q;
  if (t0 < 0 || t1 < 0)
    return ioupos__fail(IOUPOS_EINVAL, "Gaussian blur: sigma (%g, %g) not in (0, %g]", sigma0,
                        sigma1, (IOUPOS_AUG_MAX_TAIL - 0.5) / 4.0);
  /* Blocks of 16 columns with 16 independent accumulators (vectorised by GCC's SLP pass at
     -O2); every output still sums its taps in kernel order. */
  /* along rows (axis 0): tmp[i][j] = sum_q k0[q] img[i + q - t0][j], zero outside */
  for (i = 0; i < h; ++i) {
    int qlo = t0 - i > 0 ? t0 - i : 0, qhi = h - 1 - i + t0 < 2 * t0 ? h - 1 - i + t0 : 2 * t0;
    for (j = 0; j < w; j += 16) {
      float acc[16];
      int nb = w - j < 16 ? w - j : 16, m;
      if (nb == 16) {
        for (m = 0; m < 16; ++m) acc[m] = 0.0f;
        for (q = qlo; q <= qhi; ++q) {
          const float *s = img + (size_t)(i + q - t0) * w + j;
          float kq = k0[q];
          for (m = 0; m < 16; ++m) acc[m] += kq * s[m];
        }
        for (m = 0; m < 16; ++m) tmp[(size_t)i * w + j + m] = acc[m];
      } else {
        for (m = 0; m < nb; ++m) {
          float a = 0.0f;
          for (q = qlo; q <= qhi; ++q) a += k0[q] * img[(size_t)(i + q - t0) * w + j + m];
          tmp[(size_t)i * w + j + m] = a;
        }
      }
    }
  }
  /* along columns (axis 1): img[i][j] = sum_q k1[q] tmp[i][j + q - t1], zero outside */
  for (i = 0; i < h; ++i) {
    float *o = img + (size_t)i * w;
    const float *s = tmp + (size_t)i * w;
    for (j = 0; j < w; j += 16) {
      float acc[16];
      int nb = w - j < 16 ? w - j : 16, m;
      if (nb == 16 && j >= t1 && j + 16 + t1 <= w) {
        for (m = 0; m < 16; ++m) acc[m] = 0.0f;
        for (q = 0; q <= 2 * t1; ++q) {
          const float *sq = s + j + q - t1;
          float kq = k1[q];
          for (m = 0; m < 16; ++m) acc[m] += kq * sq[m];
        }
        for (m = 0; m < 16; ++m) o[j + m] = acc[m];
      } else { /* near the borders */
        for (m = 0; m < nb; ++m) {
          int jj = j + m, qlo = t1 - jj > 0 ? t1 - jj : 0;
          int qhi = w - 1 - jj + t1 < 2 * t1 ? w - 1 - jj + t1 : 2 * t1;
          float a = 0.0f;
          for (q = qlo; q <= qhi; ++q) a += k1[q] * s[jj + q - t1];
          o[jj] = a;
        }
      }
    }
  }
  return IOUPOS_OK;
}

/* ---- noise, intensity ---------------------------------------------------------------------- */

IOUPOS_DEF void ioupos_aug_gaussian_noise(float *img, size_t n, double mean, double std,
                                          uint64_t seed) {
  /* Marsaglia's polar method in single precision on 32-bit uniforms: two independent N(0, 1)
     per accepted point (acceptance pi/4). float is plenty for noise added to float32 pixels
     (|z| reaches about 9.4), and logf keeps the cost near 4 ns a value. */
  ioupos_rng rng;
  size_t i = 0;
  float fm = (float)mean, fs = (float)std;
  ioupos_rng_seed(&rng, seed);
  while (i < n) {
    float u, v, s, f;
    do { /* u, v uniform on [-1, 1) with 2^-31 spacing (rounded to float) */
      u = (float)((int64_t)ioupos_rng_u32(&rng) - 2147483648) * 4.656612873077392578125e-10f;
      v = (float)((int64_t)ioupos_rng_u32(&rng) - 2147483648) * 4.656612873077392578125e-10f;
      s = u * u + v * v;
    } while (s >= 1.0f || s == 0.0f);
    f = sqrtf(-2.0f * logf(s) / s);
    img[i] += fm + fs * (u * f);
    if (++i < n) img[i] += fm + fs * (v * f), ++i;
  }
}

IOUPOS_DEF void ioupos_aug_scale(float *img, size_t n, double f) {
  float m = (float)(1.0 + f);
  size_t i;
  for (i = 0; i < n; ++i) img[i] *= m;
}

IOUPOS_DEF void ioupos_aug_shift(float *img, size_t n, double o) {
  float a = (float)o;
  size_t i;
  for (i = 0; i < n; ++i) img[i] += a;
}

IOUPOS_DEF void ioupos_aug_crop(const float *in, int h, int w, const ioupos_box *box,
                                float *out) {
  int ch = box->hi[0] - box->lo[0], cw = box->hi[1] - box->lo[1], i;
  IOUPOS_ASSERT(box->lo[0] >= 0 && box->hi[0] <= h && box->lo[1] >= 0 && box->hi[1] <= w);
  (void)h;
  for (i = 0; i < ch; ++i)
    memcpy(out + (size_t)i * cw, in + (size_t)(box->lo[0] + i) * w + box->lo[1],
           sizeof(float) * (size_t)cw);
}

/* ---- the view pipeline --------------------------------------------------------------------- */

static int ioupos__view_check(const ioupos_view_params *p, const void *img, int h, int w,
                              const void *tmp) {
  float kern[2 * IOUPOS_AUG_MAX_TAIL + 1];
  if (!p || !img || !tmp)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_view_apply: NULL argument");
  if (p->dims != 2)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_view_apply: dims %d (only 2D is implemented)",
                        p->dims);
  if (h < 1 || w < 1)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_view_apply: image %dx%d is empty", h, w);
  if (p->rot90_k < 0 || p->rot90_k > 3)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_view_apply: rot90_k %d not in 0..3", p->rot90_k);
  if ((p->rot90_k & 1) && h != w)
    return ioupos__fail(IOUPOS_EINVAL,
                        "ioupos_view_apply: rot90 by k = %d of a %dx%d image changes its shape; "
                        "use square crops", p->rot90_k, h, w);
  if (p->zoom_on && ioupos__zoom_check(p->zoom) != IOUPOS_OK)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_view_apply: zoom %g not in (0, 1e6]", p->zoom);
  if (p->blur_on && (ioupos_aug_gaussian_kernel(p->blur_sigma[0], kern, 2 * IOUPOS_AUG_MAX_TAIL + 1) < 0 ||
                     ioupos_aug_gaussian_kernel(p->blur_sigma[1], kern, 2 * IOUPOS_AUG_MAX_TAIL + 1) < 0))
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_view_apply: blur sigma (%g, %g) not in (0, %g]",
                        p->blur_sigma[0], p->blur_sigma[1], (IOUPOS_AUG_MAX_TAIL - 0.5) / 4.0);
  if ((p->scale_on && !isfinite(p->scale)) || (p->shift_on && !isfinite(p->shift)) ||
      (p->noise_on && (!isfinite(p->noise_mean) || !isfinite(p->noise_std))))
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_view_apply: non-finite intensity parameter "
                        "(scale %g, shift %g, noise mean %g std %g)", p->scale, p->shift,
                        p->noise_mean, p->noise_std);
  return IOUPOS_OK;
}

/* spatial part on *cur (h x w), using *other as scratch; swaps the two when the result lands
   in the scratch. nearest: label map. */
static void ioupos__view_spatial(const ioupos_view_params *p, float **cur, float **other, int h,
                                 int w, int nearest) {
  float *t;
  if (p->zoom_on) {
    if (nearest) ioupos_aug_zoom_nearest(*cur, h, w, p->zoom, *other);
    else ioupos_aug_zoom(*cur, h, w, p->zoom, *other);
    t = *cur, *cur = *other, *other = t;
  }
  if (p->flip[0]) ioupos_aug_flip(*cur, h, w, 0);
  if (p->flip[1]) ioupos_aug_flip(*cur, h, w, 1);
  if (p->rot90_k) {
    ioupos_aug_rot90(*cur, h, w, p->rot90_k, *other);
    t = *cur, *cur = *other, *other = t;
  }
}

/* intensity part on cur (h x w), other as the blur's scratch; image only. Pretraining order:
   scale, shift, blur, noise; fine-tuning (intensity_first): blur, scale, shift, noise. */
static void ioupos__view_intensity(const ioupos_view_params *p, float *cur, float *other, int h,
                                   int w) {
  size_t n = (size_t)h * (size_t)w;
  if (p->blur_on && p->intensity_first)
    ioupos_aug_gaussian_blur(cur, h, w, p->blur_sigma[0], p->blur_sigma[1], other);
  if (p->scale_on) ioupos_aug_scale(cur, n, p->scale);
  if (p->shift_on) ioupos_aug_shift(cur, n, p->shift);
  if (p->blur_on && !p->intensity_first)
    ioupos_aug_gaussian_blur(cur, h, w, p->blur_sigma[0], p->blur_sigma[1], other);
  if (p->noise_on) ioupos_aug_gaussian_noise(cur, n, p->noise_mean, p->noise_std, p->noise_seed);
}

IOUPOS_DEF int ioupos_view_apply_labelled(const ioupos_view_params *p, float *img, float *label,
                                          int h, int w, float *tmp) {
  float *cur = img, *other = tmp;
  int st = ioupos__view_check(p, img, h, w, tmp);
  if (st != IOUPOS_OK) return st;
  if (p->intensity_first) {
    ioupos__view_intensity(p, cur, other, h, w);
    ioupos__view_spatial(p, &cur, &other, h, w, 0);
  } else {
    ioupos__view_spatial(p, &cur, &other, h, w, 0);
    ioupos__view_intensity(p, cur, other, h, w);
  }
  if (cur != img) memcpy(img, cur, sizeof(float) * (size_t)h * (size_t)w);
  if (label) { /* the image is done with tmp: reuse it */
    cur = label, other = tmp;
    ioupos__view_spatial(p, &cur, &other, h, w, 1);
    if (cur != label) memcpy(label, cur, sizeof(float) * (size_t)h * (size_t)w);
  }
  return IOUPOS_OK;
}

IOUPOS_DEF int ioupos_view_apply(const ioupos_view_params *p, float *img, int h, int w,
                                 float *tmp) {
  return ioupos_view_apply_labelled(p, img, NULL, h, w, tmp);
}

/* ---- RandCropByPosNegLabeld ---------------------------------------------------------------- */

static int ioupos__posneg_is(const float *label, const float *image, double thr, size_t i, int fg) {
  if (label[i] != 0.0f) return fg; /* NaN counts as foreground, as numpy's nonzero does */
  return !fg && (!image || (double)image[i] > thr);
}

IOUPOS_DEF void ioupos_posneg_count(const float *label, const float *image,
                                    double image_threshold, int h, int w, uint64_t *n_fg,
                                    uint64_t *n_bg) {
  size_t i, n = (size_t)h * (size_t)w;
  uint64_t f = 0, b = 0;
  for (i = 0; i < n; ++i) {
    if (label[i] != 0.0f) ++f;
    else if (!image || (double)image[i] > image_threshold) ++b;
  }
  *n_fg = f;
  *n_bg = b;
}

static int ioupos__posneg_check(const float *label, int h, int w, const int crop[2]) {
  if (!label || !crop)
    return ioupos__fail(IOUPOS_EINVAL, "pos/neg crop: NULL argument");
  if (h < 1 || w < 1 || crop[0] < 1 || crop[1] < 1 || crop[0] > h || crop[1] > w)
    return ioupos__fail(IOUPOS_EINVAL,
                        "pos/neg crop: crop %dx%d does not fit in the %dx%d label map", crop[0],
                        crop[1], h, w);
  return IOUPOS_OK;
}

/* correct_crop_centers on one axis: centre c of a crop of size s in n voxels */
static int ioupos__posneg_center(int c, int s, int n) {
  int start = s / 2, end = n + 1 - (s + 1) / 2; /* (int)(n + 1 - s / 2.0) */
  if (end == start) ++end;
  return c < start ? start : c > end - 1 ? end - 1 : c;
}

IOUPOS_DEF int ioupos_posneg_locate(const float *label, const float *image,
                                    double image_threshold, int h, int w, const int crop[2],
                                    int fg, uint64_t rank, ioupos_posneg_crop *out) {
  size_t i, n = (size_t)h * (size_t)w;
  uint64_t seen = 0;
  int k;
  if (ioupos__posneg_check(label, h, w, crop) != IOUPOS_OK || !out) return IOUPOS_EINVAL;
  fg = fg != 0;
  for (i = 0; i < n; ++i) {
    if (!ioupos__posneg_is(label, image, image_threshold, i, fg)) continue;
    if (seen++ == rank) break;
  }
  if (i == n)
    return ioupos__fail(IOUPOS_EINVAL, "pos/neg crop: %s index %llu out of range (%llu voxels)",
                        fg ? "foreground" : "background", (unsigned long long)rank,
                        (unsigned long long)seen);
  memset(out, 0, sizeof *out);
  out->fg = fg;
  out->rank = rank;
  out->center[0] = ioupos__posneg_center((int)(i / (size_t)w), crop[0], h);
  out->center[1] = ioupos__posneg_center((int)(i % (size_t)w), crop[1], w);
  out->box.dims = 2;
  for (k = 0; k < 2; ++k) {
    int lo = out->center[k] - crop[k] / 2;
    out->box.lo[k] = lo > 0 ? lo : 0;
    out->box.hi[k] = out->box.lo[k] + crop[k];
    IOUPOS_ASSERT(out->box.hi[k] <= (k ? w : h));
  }
  return IOUPOS_OK;
}

IOUPOS_DEF int ioupos_posneg_crops_draw(ioupos_rng *rng, const float *label, const float *image,
                                        double image_threshold, int h, int w, const int crop[2],
                                        double pos, double neg, int num_samples,
                                        ioupos_posneg_crop *out) {
  uint64_t nf, nb;
  double ratio;
  int s;
  if (ioupos__posneg_check(label, h, w, crop) != IOUPOS_OK) return IOUPOS_EINVAL;
  if (!rng || !out || num_samples < 0 || !(pos >= 0.0) || !(neg >= 0.0) || !(pos + neg > 0.0) ||
      !isfinite(pos + neg))
    return ioupos__fail(IOUPOS_EINVAL, "pos/neg crop: bad arguments (pos %g, neg %g, %d samples)",
                        pos, neg, num_samples);
  ioupos_posneg_count(label, image, image_threshold, h, w, &nf, &nb);
  if (nf == 0 && nb == 0)
    return ioupos__fail(IOUPOS_EINFEASIBLE, "pos/neg crop: the %dx%d label map has no foreground "
                        "and no background above the image threshold %g", h, w, image_threshold);
  ratio = nf == 0 ? 0.0 : nb == 0 ? 1.0 : pos / (pos + neg);
  for (s = 0; s < num_samples; ++s) {
    int fg = ioupos_rng_uniform(rng) < ratio;
    uint64_t rank = ioupos_rng_below(rng, fg ? nf : nb);
    int st = ioupos_posneg_locate(label, image, image_threshold, h, w, crop, fg, rank, out + s);
    if (st != IOUPOS_OK) return st;
  }
  return IOUPOS_OK;
}

#endif /* IOUPOS_WIP_AUGMENT_IMPL */
