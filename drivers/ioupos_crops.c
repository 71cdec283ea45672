/* ioupos-crops — see what an IoU interval means.

   Self-supervised pretraining on CT takes two crops of a slice as a positive pair; ioupos draws
   the two crops so that their IoU lies in [min_iou, max_iou]. This command makes that concrete:
   it reads a PNG slice (or, without --input, draws a synthetic CT-like one), draws a few pairs
   and writes a picture with each pair's two crops outlined in one colour (first crop: solid
   2-px line, second crop: dashed 1-px line), then prints a histogram of the IoU of many draws
   and a summary (valid pairs, valid first placements, intersection-volume range, mean IoU and
   the number of draws outside the interval, which must be 0).

   Exit status: 0 on success, 1 when the library refuses (unreadable image, crop larger than the
   image, an interval no pair can satisfy, ...), 2 for a malformed command line. On a non-zero
   exit no output file is written. Run with --help for the flags. */
#include "ioupos.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROG "ioupos-crops"
#include "cli.h"

#define MAX_PAIRS 1000
#define MAX_HIST 1000000000LL
#define MAX_CROP (1 << 24)
#define HIST_BINS 15
#define BAR_WIDTH 50

typedef struct options {
  const char *input, *output;
  double min_iou, max_iou;
  int crop[2]; /* {H, W} */
  long long n_pairs, n_hist;
  int mode;
  uint64_t seed;
} options;

static void usage(FILE *f) {
  fprintf(f,
          "usage: " PROG " [flags]\n"
          "Draw crop pairs whose IoU lies in [min_iou, max_iou], outline them on the image and\n"
          "print a histogram of the IoU of many draws.\n"
          "\n"
          "  --input PNG        image to crop (8/16-bit, grey or colour; shown in grey);\n"
          "                     default: a synthetic 512x448 CT-like slice\n"
          "  --output PNG       picture to write (default crops.png)\n"
          "  --min_iou X        lower IoU bound in [0, 1] (default 0.3)\n"
          "  --max_iou X        upper IoU bound in [0, 1] (default 0.6)\n"
          "  --crop_size N|HxW  crop size in pixels, one number for both axes or rows x columns\n"
          "                     (default 96)\n"
          "  --n_pairs N        pairs drawn in the picture, 0..%d (default 8); pair i gets colour\n"
          "                     i of a 12-colour palette, first crop solid, second dashed\n"
          "  --n_hist N         draws for the IoU histogram, 0..%lld (default 100000)\n"
          "  --pair_mode M      anchored (first crop uniform over those with a partner, then a\n"
          "                     uniform partner) or joint (uniform over all valid pairs)\n"
          "                     (default anchored)\n"
          "  --seed S           random seed, unsigned 64-bit (default 0); same seed, same output\n"
          "  --help             show this text and exit\n"
          "\n"
          "Flags take their value as '--flag value' or '--flag=value'. Exit status: 0 success,\n"
          "1 the request cannot be met (bad image, crop too large, impossible interval), 2 bad\n"
          "command line. Nothing is written on failure.\n",
          MAX_PAIRS, MAX_HIST);
}

/* "96" (both axes) or "64x96" (rows x columns). */
static void parse_crop(const char *flag, const char *s, int crop[2]) {
  const char *p = s;
  crop[0] = crop[1] = (int)cli_int_prefix(flag, s, &p, 1, MAX_CROP, NULL);
  if (*p == 'x') {
    ++p;
    crop[1] = (int)cli_int_prefix(flag, s, &p, 1, MAX_CROP, NULL);
  }
  if (*p) cli_bad_value(flag, s, "expected N or HxW with positive integers, e.g. 96 or 64x96");
}

static void parse_args(int argc, char **argv, options *o) {
  static const char *const names[] = {"input",  "output",  "min_iou",   "max_iou", "crop_size",
                                      "n_pairs", "n_hist", "pair_mode", "seed"};
  cli c;
  int k;
  cli_init(&c, argc, argv, names, CLI_COUNT(names), 0, usage);
  while ((k = cli_next_flag(&c)) >= 0) {
    const char *flag = c.flag, *val = c.value;
    switch (k) {
      case 0: o->input = cli_nonempty(flag, val, "expected a file name"); break;
      case 1: o->output = cli_nonempty(flag, val, "expected a file name"); break;
      case 2: o->min_iou = cli_double(flag, val, 0.0, 1.0, 0); break;
      case 3: o->max_iou = cli_double(flag, val, 0.0, 1.0, 0); break;
      case 4: parse_crop(flag, val, o->crop); break;
      case 5: o->n_pairs = cli_int(flag, val, 0, MAX_PAIRS); break;
      case 6: o->n_hist = cli_int(flag, val, 0, MAX_HIST); break;
      case 7:
        if (!strcmp(val, "anchored")) o->mode = IOUPOS_PAIR_ANCHORED;
        else if (!strcmp(val, "joint")) o->mode = IOUPOS_PAIR_JOINT;
        else cli_bad_value(flag, val, "expected anchored or joint");
        break;
      default: o->seed = cli_u64(flag, val); break;
    }
  }
}

/* ---- a synthetic CT-like axial slice (deterministic, independent of --seed) --------------- */

typedef struct blob {
  double cx, cy, rx, ry, angle, value; /* centre and radii as fractions of width / height */
} blob;

/* Painted in order, later over earlier: air is the background, posterior is at the bottom. */
static const blob slice_blobs[] = {
    {0.50, 0.50, 0.46, 0.36, 0.0, 0.30},  /* body outline: subcutaneous fat */
    {0.50, 0.50, 0.41, 0.31, 0.0, 0.50},  /* soft tissue / muscle */
    {0.32, 0.43, 0.19, 0.13, 0.35, 0.62}, /* liver */
    {0.67, 0.40, 0.11, 0.07, -0.5, 0.44}, /* stomach */
    {0.69, 0.37, 0.05, 0.025, -0.5, 0.06}, /* gas in the stomach */
    {0.72, 0.52, 0.06, 0.05, 0.2, 0.57},  /* spleen */
    {0.36, 0.62, 0.05, 0.07, 0.45, 0.68}, /* right kidney */
    {0.64, 0.62, 0.05, 0.07, -0.45, 0.68}, /* left kidney */
    {0.45, 0.30, 0.07, 0.04, 0.1, 0.40},  /* bowel loops */
    {0.58, 0.27, 0.06, 0.035, -0.3, 0.47},
    {0.53, 0.56, 0.028, 0.024, 0.0, 0.78}, /* aorta */
    {0.50, 0.79, 0.09, 0.045, 0.0, 0.88}, /* vertebral arch */
    {0.50, 0.69, 0.075, 0.06, 0.0, 0.95}, /* vertebral body */
    {0.50, 0.69, 0.05, 0.04, 0.0, 0.82},  /* cancellous bone */
    {0.50, 0.775, 0.03, 0.025, 0.0, 0.45}, /* spinal canal */
};

static int make_slice(ioupos_image *img, int h, int w) {
  ioupos_rng rng;
  size_t b, nb = sizeof slice_blobs / sizeof slice_blobs[0];
  int x, y;
  img->h = h;
  img->w = w;
  img->data = (float *)malloc((size_t)h * (size_t)w * sizeof(float));
  if (!img->data) return 0;
  ioupos_rng_seed(&rng, 0x5EED511CEull);
  for (y = 0; y < h; ++y)
    for (x = 0; x < w; ++x) {
      double v = 0.03, noise;
      for (b = 0; b < nb; ++b) {
        const blob *e = &slice_blobs[b];
        double dx = (x + 0.5) / w - e->cx, dy = (y + 0.5) / h - e->cy;
        double u = (dx * cos(e->angle) + dy * sin(e->angle)) / e->rx;
        double t = (-dx * sin(e->angle) + dy * cos(e->angle)) / e->ry;
        if (u * u + t * t <= 1.0) v = e->value;
      }
      noise = (ioupos_rng_uniform(&rng) - 0.5) * (v > 0.1 ? 0.06 : 0.02);
      v += noise;
      img->data[(size_t)y * w + x] = (float)(v < 0 ? 0 : v > 1 ? 1 : v);
    }
  return 1;
}

/* ---- drawing ----------------------------------------------------------------------------- */

static const uint8_t palette[12][3] = {
    {230, 25, 75},  {60, 180, 75},  {255, 225, 25}, {0, 130, 200},  {245, 130, 48}, {145, 30, 180},
    {70, 240, 240}, {240, 50, 230}, {210, 245, 60}, {250, 190, 212}, {0, 128, 128}, {170, 110, 40}};

static void put(uint8_t *rgb, int w, int h, int x, int y, const uint8_t c[3]) {
  uint8_t *p;
  if (x < 0 || y < 0 || x >= w || y >= h) return;
  p = rgb + ((size_t)y * w + x) * 3;
  p[0] = c[0];
  p[1] = c[1];
  p[2] = c[2];
}

/* Outline of a box on the pixels just inside it: `thick` px wide; dashed when dash > 0
   (dash px on, dash/2 px off along each edge). */
static void outline(uint8_t *rgb, int w, int h, const ioupos_box *bx, const uint8_t c[3],
                    int thick, int dash) {
  int y0 = bx->lo[0], y1 = bx->hi[0] - 1, x0 = bx->lo[1], x1 = bx->hi[1] - 1, t, x, y;
  int period = dash + dash / 2;
  for (t = 0; t < thick; ++t) {
    for (x = x0; x <= x1; ++x)
      if (!dash || (x - x0) % period < dash) {
        put(rgb, w, h, x, y0 + t, c);
        put(rgb, w, h, x, y1 - t, c);
      }
    for (y = y0; y <= y1; ++y)
      if (!dash || (y - y0) % period < dash) {
        put(rgb, w, h, x0 + t, y, c);
        put(rgb, w, h, x1 - t, y, c);
      }
  }
}

/* A draw is a violation if its IoU is outside the interval or a box is not a crop-sized box
   inside the image. */
static int violates(const options *o, const ioupos_image *img, const ioupos_box *a,
                    const ioupos_box *b, double iou) {
  const ioupos_box *bx[2] = {a, b};
  int i, k, shape[2] = {img->h, img->w};
  if (!(iou >= o->min_iou && iou <= o->max_iou)) return 1;
  for (i = 0; i < 2; ++i)
    for (k = 0; k < 2; ++k)
      if (bx[i]->dims != 2 || bx[i]->lo[k] < 0 || bx[i]->hi[k] > shape[k] ||
          bx[i]->hi[k] - bx[i]->lo[k] != o->crop[k])
        return 1;
  return 0;
}

static int fail_lib(void) {
  fprintf(stderr, PROG ": %s\n", ioupos_failure_reason());
  return 1;
}

int main(int argc, char **argv) {
  options o = {NULL, "crops.png", 0.3, 0.6, {96, 96}, 8, 100000, IOUPOS_PAIR_ANCHORED, 0};
  ioupos_image img = {0, 0, NULL};
  ioupos_iou_sampler s;
  ioupos_rng root, rng;
  ioupos_box *pa = NULL, *pb = NULL;
  uint8_t *rgb = NULL;
  uint64_t hist[HIST_BINS] = {0}, peak = 0, violations = 0;
  double lo, hi, sum = 0.0, *pair_iou = NULL;
  char shape_txt[64], crop_txt[64];
  int shape[2], st, bin;
  long long i;
  size_t px, npx;

  parse_args(argc, argv, &o);

  if (o.input) {
    if (ioupos_image_load(o.input, &img) != IOUPOS_OK) return fail_lib();
  } else if (!make_slice(&img, 512, 448)) {
    fprintf(stderr, PROG ": out of memory for the synthetic slice\n");
    return 1;
  }
  shape[0] = img.h;
  shape[1] = img.w;
  ioupos_format_shape(shape_txt, sizeof shape_txt, 2, shape);
  ioupos_format_shape(crop_txt, sizeof crop_txt, 2, o.crop);
  st = ioupos_iou_sampler_init(&s, 2, shape, o.crop, o.min_iou, o.max_iou, o.mode);
  if (st != IOUPOS_OK) {
    ioupos_image_free(&img);
    return fail_lib();
  }

  /* Independent streams for the picture and the histogram: the picture does not depend on
     --n_hist. */
  ioupos_rng_seed(&root, o.seed);
  pa = (ioupos_box *)calloc((size_t)o.n_pairs + 1, sizeof *pa);
  pb = (ioupos_box *)calloc((size_t)o.n_pairs + 1, sizeof *pb);
  pair_iou = (double *)calloc((size_t)o.n_pairs + 1, sizeof *pair_iou);
  npx = (size_t)img.h * (size_t)img.w;
  rgb = (uint8_t *)malloc(npx * 3);
  if (!pa || !pb || !pair_iou || !rgb) {
    fprintf(stderr, PROG ": out of memory\n");
    return 1;
  }
  rng = ioupos_rng_split(&root, 0);
  for (i = 0; i < o.n_pairs; ++i) {
    if (ioupos_iou_sampler_draw(&s, &rng, &pa[i], &pb[i]) != IOUPOS_OK) return fail_lib();
    pair_iou[i] = ioupos_box_iou(&pa[i], &pb[i]);
    violations += (uint64_t)violates(&o, &img, &pa[i], &pb[i], pair_iou[i]);
  }

  /* Histogram over [min_iou, max_iou], or over [0, 1] when the interval is a single point. */
  lo = o.min_iou;
  hi = o.max_iou;
  if (hi - lo < 1e-9) lo = 0.0, hi = 1.0;
  rng = ioupos_rng_split(&root, 1);
  for (i = 0; i < o.n_hist; ++i) {
    ioupos_box a, b;
    double iou;
    if (ioupos_iou_sampler_draw(&s, &rng, &a, &b) != IOUPOS_OK) return fail_lib();
    iou = ioupos_box_iou(&a, &b);
    violations += (uint64_t)violates(&o, &img, &a, &b, iou);
    sum += iou;
    bin = (int)floor((iou - lo) / (hi - lo) * HIST_BINS);
    bin = bin < 0 ? 0 : bin >= HIST_BINS ? HIST_BINS - 1 : bin;
    if (++hist[bin] > peak) peak = hist[bin];
  }
  if (violations) {
    fprintf(stderr, PROG ": %llu draws violate the interval [%g, %g]: this is a bug in ioupos; "
                    "no picture written\n", (unsigned long long)violations, o.min_iou, o.max_iou);
    return 1;
  }

  /* The picture: the image in grey, then each pair in its colour. */
  for (px = 0; px < npx; ++px) {
    uint8_t g = (uint8_t)(img.data[px] * 255.0f + 0.5f);
    rgb[3 * px] = rgb[3 * px + 1] = rgb[3 * px + 2] = g;
  }
  for (i = 0; i < o.n_pairs; ++i) {
    const uint8_t *c = palette[i % 12];
    outline(rgb, img.w, img.h, &pb[i], c, 1, 6);
    outline(rgb, img.w, img.h, &pa[i], c, 2, 0);
  }
  if (ioupos_png_write(o.output, img.w, img.h, 3, rgb) != IOUPOS_OK) return fail_lib();

  printf("image %s%s, crop %s, IoU in [%g, %g], pair mode %s, seed %llu\n", shape_txt,
         o.input ? "" : " (synthetic CT-like slice)", crop_txt, o.min_iou, o.max_iou,
         o.mode == IOUPOS_PAIR_JOINT ? "joint" : "anchored", (unsigned long long)o.seed);
  for (i = 0; i < o.n_pairs; ++i)
    printf("pair %2lld (colour %2d): first at (y=%d, x=%d), second at (y=%d, x=%d), IoU %.4f\n",
           i, (int)(i % 12), pa[i].lo[0], pa[i].lo[1], pb[i].lo[0], pb[i].lo[1], pair_iou[i]);
  if (o.n_hist > 0) {
    printf("IoU of %lld draws:\n", o.n_hist);
    for (bin = 0; bin < HIST_BINS; ++bin) {
      int bar = (int)((hist[bin] * BAR_WIDTH + peak - 1) / peak);
      printf("  [%.3f, %.3f%c %9llu %.*s\n", lo + (hi - lo) * bin / HIST_BINS,
             lo + (hi - lo) * (bin + 1) / HIST_BINS, bin == HIST_BINS - 1 ? ']' : ')',
             (unsigned long long)hist[bin], bar,
             "##################################################");
    }
  }
  printf("valid pairs: %llu, valid first crops: %llu, intersection volume: %lld..%lld of %lld, "
         "mean IoU: ",
         (unsigned long long)s.n_pairs, (unsigned long long)s.n_first, (long long)s.inter_lo,
         (long long)s.inter_hi, (long long)o.crop[0] * o.crop[1]);
  if (o.n_hist > 0) printf("%.4f", sum / (double)o.n_hist);
  else printf("n/a");
  printf(", violations: %llu\n", (unsigned long long)violations);
  printf("wrote %s\n", o.output);

  free(rgb);
  free(pair_iou);
  free(pb);
  free(pa);
  ioupos_iou_sampler_free(&s);
  ioupos_image_free(&img);
  return 0;
}
