/* tests/consumer/data_only.c — the data path without the neural core: IOUPOS_ONLY_DATA keeps
   sections 1-9 (sampler, PNG I/O, NIfTI and preprocessing, augmentations, phantom, data sets
   and the threaded loader) and leaves out 10-22. It needs what the data path needs (stb,
   POSIX, pthreads) and nothing more: no OpenMP, no -mavx2. Built by the Makefile as C99 and as
   C++11:
       cc  -std=c99   -Wall -Wextra -Werror -D_POSIX_C_SOURCE=200809L -I/usr/include/stb \
           tests/consumer/data_only.c -lm -lpthread
       c++ -std=c++11 ... -x c++ tests/consumer/data_only.c -lm -lpthread
   It writes PNGs to a fresh temporary folder, loads them back, scans the folder and streams
   IoU-constrained crop pairs through the loader with and without worker threads. */
#define IOUPOS_ONLY_DATA
#define IOUPOS_IMPLEMENTATION
#include "../../ioupos.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../test_util.h"

/* sections 10-22 are not declared: their macros are absent */
#if defined(IOUPOS_TENSOR_MAX_DIMS) || defined(IOUPOS_SWIN_STAGES) || \
    defined(IOUPOS_ST_MAX_DIMS) || defined(IOUPOS_SEG_MAX_CLASSES)
#error "IOUPOS_ONLY_DATA declared more than sections 1-9"
#endif

#define N_IMG 5
static const int img_h[N_IMG] = {80, 64, 72, 96, 60}, img_w[N_IMG] = {72, 64, 90, 50, 60};

/* the grey value of image i at (y, x), 0..255 */
static int pixel(int i, int y, int x) { return (7 * y + 3 * x + 11 * i + (x * y) % 13) & 255; }

/* the crop box of a view against image i's pixels: 1 if every value is pixel / 255 */
static int crop_matches(const float *v, const ioupos_box *b, int i, int h, int w) {
  int y, x;
  for (y = 0; y < h; ++y)
    for (x = 0; x < w; ++x)
      if (v[y * w + x] != (float)pixel(i, b->lo[0] + y, b->lo[1] + x) / 255.0f) return 0;
  return 1;
}

/* the loader's stream for n_batches with num_workers; checks each batch, keeps a digest */
static int stream(const ioupos_dataset *ds, int workers, ioupos_augment_fn aug, int n_batches,
                  double *digest) {
  ioupos_loader_config cfg;
  ioupos_loader l;
  ioupos_batch b;
  int k, i, bad_iou = 0, bad_pix = 0, bad_val = 0, rc;
  ioupos_loader_config_default(&cfg, ds, IOUPOS_LOADER_SSL);
  cfg.batch_size = 2;
  cfg.crop[0] = cfg.crop[1] = 48;
  cfg.min_iou = 0.3;
  cfg.max_iou = 0.6;
  cfg.seed = 77;
  cfg.num_workers = workers;
  cfg.augment = aug;
  memset(&l, 0, sizeof l);
  rc = ioupos_loader_open(&l, &cfg);
  CHECK(rc == 0, "loader open (%d workers): %s", workers, ioupos_failure_reason());
  if (rc) return 1;
  CHECK(l.batches_per_epoch == N_IMG / 2, "batches per epoch %d", l.batches_per_epoch);
  *digest = 0;
  for (k = 0; k < n_batches; ++k) {
    rc = ioupos_loader_next(&l, &b);
    CHECK(rc == 0, "batch %d: %s", k, ioupos_failure_reason());
    if (rc) break;
    CHECK(b.epoch == k / l.batches_per_epoch && b.n == 2 && b.h == 48 && b.w == 48,
          "batch %d: epoch %d n %d %dx%d", k, b.epoch, b.n, b.h, b.w);
    for (i = 0; i < b.n; ++i) {
      double iou = ioupos_box_iou(&b.box[0][i], &b.box[1][i]);
      int v, s = b.source[i], p;
      bad_iou += !(iou >= 0.3 && iou <= 0.6);
      for (v = 0; v < 2; ++v) {
        const float *px = b.views[v] + (size_t)i * 48 * 48;
        if (!aug) bad_pix += !crop_matches(px, &b.box[v][i], s, 48, 48);
        for (p = 0; p < 48 * 48; ++p) {
          bad_val += !isfinite(px[p]);
          *digest += px[p] * (double)(p % 97 + 1) * (v + 1);
        }
        *digest += b.box[v][i].lo[0] * 1e3 + b.box[v][i].lo[1] * 1e5 + s;
      }
    }
  }
  CHECK(bad_iou == 0, "%d pairs outside [0.3, 0.6] (%d workers)", bad_iou, workers);
  CHECK(bad_pix == 0, "%d views differ from the PNG's pixels at their box", bad_pix);
  CHECK(bad_val == 0, "%d non-finite values", bad_val);
  ioupos_loader_close(&l);
  return 0;
}

int main(void) {
  char dir[4096], path[4200];
  const char *tmp = getenv("TMPDIR");
  ioupos_dataset ds;
  int i, rc;
  memset(&ds, 0, sizeof ds);
  snprintf(dir, sizeof dir, "%s/ioupos_data_only.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(dir)) {
    printf("data_only: cannot create a temporary folder under %s\n", dir);
    return 1;
  }

  /* 1. PNG write and load (section 5) */
  for (i = 0; i < N_IMG; ++i) {
    uint8_t px[96 * 90];
    ioupos_image img;
    int y, x, bad = 0;
    for (y = 0; y < img_h[i]; ++y)
      for (x = 0; x < img_w[i]; ++x) px[y * img_w[i] + x] = (uint8_t)pixel(i, y, x);
    snprintf(path, sizeof path, "%s/img%d.png", dir, i);
    rc = ioupos_png_write(path, img_w[i], img_h[i], 1, px);
    CHECK(rc == 0, "write %s: %s", path, ioupos_failure_reason());
    rc = ioupos_image_load(path, &img);
    CHECK(rc == 0 && img.h == img_h[i] && img.w == img_w[i], "load %s: %s", path,
          ioupos_failure_reason());
    if (rc) continue;
    for (y = 0; y < img.h; ++y)
      for (x = 0; x < img.w; ++x)
        bad += img.data[y * img.w + x] != (float)pixel(i, y, x) / 255.0f;
    CHECK(bad == 0, "%s: %d pixels differ after the round trip", path, bad);
    ioupos_image_free(&img);
  }

  /* 2. the data set scan, the loader in the caller's thread and with 2 workers (section 9):
     every pair in the interval, every view the PNG's pixels at its box, the same batches */
  rc = ioupos_dataset_scan(dir, NULL, &ds);
  CHECK(rc == 0 && ds.n == N_IMG, "scan %s: %d images, %s", dir, ds.n, ioupos_failure_reason());
  if (rc == 0) {
    double d0 = 0, d2 = -1, a0 = 0, a2 = -1;
    for (i = 0; i < ds.n; ++i) {
      snprintf(path, sizeof path, "%s/img%d.png", dir, i);
      CHECK(strcmp(ds.images[i], path) == 0, "image %d: %s", i, ds.images[i]);
    }
    stream(&ds, 0, NULL, 6, &d0);
    stream(&ds, 2, NULL, 6, &d2);
    CHECK(d0 == d2, "0 and 2 workers give other batches (%.17g vs %.17g)", d0, d2);
    /* 3. the default augmentations as the loader's callback (section 7) */
    stream(&ds, 0, ioupos_augment_pretrain_view, 4, &a0);
    stream(&ds, 2, ioupos_augment_pretrain_view, 4, &a2);
    CHECK(a0 == a2, "augmented batches depend on the workers (%.17g vs %.17g)", a0, a2);
  }
  ioupos_dataset_free(&ds);

  /* 4. a small phantom (section 8) through NIfTI encode and decode (section 6) */
  {
    ioupos_phantom_opts o;
    ioupos_volume img, lab, back;
    unsigned char *bytes = NULL;
    size_t n = 0, v, nv, bad = 0;
    int organs = 0, seen[IOUPOS_LABEL_COUNT] = {0};
    ioupos_phantom_defaults(&o);
    o.nx = 48, o.ny = 40, o.nz = 16;
    o.spacing[0] = o.spacing[1] = 8.0, o.spacing[2] = 10.0;
    rc = ioupos_phantom_make(&o, &img, &lab);
    CHECK(rc == 0, "phantom: %s", ioupos_failure_reason());
    if (rc == 0) {
      nv = (size_t)o.nx * o.ny * o.nz;
      for (v = 0; v < nv; ++v) seen[(int)lab.data[v]] = 1;
      for (i = 1; i < IOUPOS_LABEL_COUNT; ++i) organs += seen[i];
      CHECK(organs >= 8, "only %d organs on a coarse phantom", organs);
      rc = ioupos_nifti_encode(&img, IOUPOS_NIFTI_INT16, 1, &bytes, &n);
      CHECK(rc == 0, "encode: %s", ioupos_failure_reason());
      rc = rc ? rc : ioupos_nifti_read_memory(bytes, n, "phantom.nii.gz", &back);
      CHECK(rc == 0, "decode: %s", ioupos_failure_reason());
      if (rc == 0) {
        for (v = 0; v < nv; ++v) bad += back.data[v] != img.data[v];
        CHECK(bad == 0 && back.dim[2] == o.nz, "%lu voxels differ after NIfTI", (unsigned long)bad);
        ioupos_volume_free(&back);
      }
      IOUPOS_FREE(bytes);
      ioupos_volume_free(&img);
      ioupos_volume_free(&lab);
    }
  }

  for (i = 0; i < N_IMG; ++i) {
    snprintf(path, sizeof path, "%s/img%d.png", dir, i);
    remove(path);
  }
  CHECK(rmdir(dir) == 0, "%s is not empty after the test", dir);
  return tu_finish("data_only");
}
