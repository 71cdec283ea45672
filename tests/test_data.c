/* tests/test_data.c — data sets and the loader (ioupos.h section 9).

   Every test writes its own PNGs (ioupos_png_write) into a fresh temporary folder and removes
   it at the end.
   1. Scan: strcmp order, only regular *.png files (any case of the extension; no dot-files,
      folders or other files), errors naming a missing or an empty folder, image/label pairing
      by file name (never by order: images {a, c} and labels {b, c} is an error), a missing
      label or an extra label named with both sides.
   2. SSL loader: every pair's boxes have the crop size, lie inside the image and satisfy the
      IoU interval; without augmentation each view equals the image's pixels in its box; each
      image exactly once per epoch (and n - n mod B with drop_last); epochs differ in order.
   3. Determinism: the same seed gives bit-identical batches (views, sources, boxes) for
      num_workers 0, 1, 2, 3 and a small prefetch, with an augmentation callback that draws
      from its rng; resume at (epoch, batch), by a fresh loader and by seeking back, gives the
      batches of the uninterrupted run; position fields follow the stream.
   3b. n_local = 0 is the loader before multi-crop, bit for bit: a hash of 6 SSL batches (views,
      boxes, sources, with aug_test) recorded before the change; n_local 3 leaves it unchanged.
   3c. Multi-crop: every local box has the local size, lies inside the image and has IoU with
      view 0's box in the interval; local crops equal the image at their boxes; identical
      batches for 0, 1, 3 workers (and a one-slot ring), with and without augmentation; another
      seed differs; boxes and views follow split(S, 100) / split(S, 3 + k); padding when the
      local crop is wider than the crop; pad_small 0, an image with no local position for its
      view-0 box, and bad n_local / local crop / interval (incl. an interval no local crop can
      meet, refused at open naming --local_min_iou / --local_max_iou) are errors.
   4. Images smaller than the crop: zero padding (symmetric) and boxes in source coordinates,
      or an error naming the file with pad_small = 0.
   5. Fine-tuning crops: label crops aligned with image crops (the image's pixel value encodes
      the label), n = images * num_samples, boxes inside the image, pos-only crops contain
      foreground and neg-only crops background, same batches for every worker count, label of
      another size is an error naming both files.
   6. Errors: a corrupt PNG in the middle of the data gives one failed batch whose reason names
      the file, the other batches are fine, with 0 and 2 workers; an augmentation failure names
      the file; a data set smaller than one batch with drop_last is an error at open; closing a
      loader whose workers are blocked on a full ring returns at once. */
#include "ioupos.h"
#include "test_util.h"

#include <dirent.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- temporary folders --------------------------------------------------------------------- */

#include "tests/tmp_tree.h"

static void write_png(const char *rel, int h, int w, const uint8_t *px) {
  char p[512];
  path_of(p, sizeof p, rel);
  if (ioupos_png_write(p, w, h, 1, px) != 0) {
    printf("test_data: %s\n", ioupos_failure_reason());
    exit(1);
  }
}

/* Image k of the SSL data: h x w with a pattern that identifies every pixel (mod 256). */
static uint8_t ssl_pixel(int k, int y, int x) { return (uint8_t)((y * 7 + x * 13 + k * 31) & 255); }

static void make_ssl_image(const char *rel, int k, int h, int w) {
  uint8_t *px = (uint8_t *)malloc((size_t)h * w);
  int y, x;
  for (y = 0; y < h; ++y)
    for (x = 0; x < w; ++x) px[(size_t)y * w + x] = ssl_pixel(k, y, x);
  write_png(rel, h, w, px);
  free(px);
}

static int contains(const char *hay, const char *needle) { return strstr(hay, needle) != NULL; }

/* ---- 1. scan --------------------------------------------------------------------------------- */

static void test_scan(void) {
  ioupos_dataset ds;
  char dir[512], ldir[512], p[600];
  uint8_t px[16] = {0};
  int st;

  make_dir("scan");
  write_png("scan/b.png", 4, 4, px);
  write_png("scan/a.PNG", 4, 4, px);
  write_png("scan/c.Png", 4, 4, px);
  write_png("scan/Z.png", 4, 4, px);
  write_png("scan/.hidden.png", 4, 4, px);
  write_bytes("scan/notes.txt", "x", 1);
  write_bytes("scan/x.png.bak", "x", 1);
  write_bytes("scan/png", "x", 1);
  make_dir("scan/folder.png");
  path_of(dir, sizeof dir, "scan");
  st = ioupos_dataset_scan(dir, NULL, &ds);
  CHECK(st == 0, "scan: %s", ioupos_failure_reason());
  CHECK(ds.n == 4, "n = %d, want 4 (Z.png a.PNG b.png c.Png)", ds.n);
  if (ds.n == 4) {
    const char *want[4] = {"Z.png", "a.PNG", "b.png", "c.Png"};
    int i;
    for (i = 0; i < 4; ++i) {
      snprintf(p, sizeof p, "%s/%s", dir, want[i]);
      CHECK(!strcmp(ds.images[i], p), "images[%d] = %s, want %s", i, ds.images[i], p);
    }
  }
  CHECK(ds.labels == NULL, "no labels expected");
  ioupos_dataset_free(&ds);
  CHECK(ds.n == 0 && ds.images == NULL, "free resets");

  /* a trailing slash gives no double slash */
  snprintf(p, sizeof p, "%s/", dir);
  st = ioupos_dataset_scan(p, NULL, &ds);
  CHECK(st == 0 && ds.n == 4 && !contains(ds.images[0], "//"), "trailing slash: %s",
        st ? ioupos_failure_reason() : ds.images[0]);
  ioupos_dataset_free(&ds);

  /* missing and empty folders */
  path_of(p, sizeof p, "no_such_folder");
  st = ioupos_dataset_scan(p, NULL, &ds);
  CHECK(st == IOUPOS_EIO && contains(ioupos_failure_reason(), p), "missing folder: %d %s", st,
        ioupos_failure_reason());
  CHECK(ds.n == 0 && ds.images == NULL, "failed scan leaves an empty data set");
  make_dir("empty");
  write_bytes("empty/readme.txt", "x", 1);
  path_of(p, sizeof p, "empty");
  st = ioupos_dataset_scan(p, NULL, &ds);
  CHECK(st == IOUPOS_EINVAL && contains(ioupos_failure_reason(), p), "empty folder: %d %s", st,
        ioupos_failure_reason());
  /* a missing / empty label folder is named too */
  st = ioupos_dataset_scan(dir, p, &ds);
  CHECK(st == IOUPOS_EINVAL && contains(ioupos_failure_reason(), p) &&
            contains(ioupos_failure_reason(), "label"),
        "empty label folder: %d %s", st, ioupos_failure_reason());

  /* pairing */
  make_dir("pi");
  make_dir("pl");
  write_png("pi/case1_000.png", 4, 4, px);
  write_png("pi/case1_001.png", 4, 4, px);
  write_png("pi/case2_000.png", 4, 4, px);
  write_png("pl/case1_000.png", 4, 4, px);
  write_png("pl/case1_001.png", 4, 4, px);
  write_png("pl/case2_000.png", 4, 4, px);
  path_of(dir, sizeof dir, "pi");
  path_of(ldir, sizeof ldir, "pl");
  st = ioupos_dataset_scan(dir, ldir, &ds);
  CHECK(st == 0 && ds.n == 3 && ds.labels, "paired scan: %s", ioupos_failure_reason());
  if (st == 0 && ds.labels) {
    int i;
    for (i = 0; i < ds.n; ++i) {
      const char *a = strrchr(ds.images[i], '/'), *b = strrchr(ds.labels[i], '/');
      CHECK(a && b && !strcmp(a, b) && !strncmp(ds.labels[i], ldir, strlen(ldir)),
            "pair %d: %s / %s", i, ds.images[i], ds.labels[i]);
    }
  }
  ioupos_dataset_free(&ds);

  /* an extra label */
  write_png("pl/case3_000.png", 4, 4, px);
  st = ioupos_dataset_scan(dir, ldir, &ds);
  CHECK(st == IOUPOS_EINVAL && contains(ioupos_failure_reason(), "case3_000.png") &&
            contains(ioupos_failure_reason(), ldir) && contains(ioupos_failure_reason(), dir),
        "extra label: %d %s", st, ioupos_failure_reason());
  CHECK(ds.n == 0 && ds.images == NULL && ds.labels == NULL, "failed scan is empty");
  /* a missing label, with equal counts: pairing by order would have "worked" */
  path_of(p, sizeof p, "pl/case1_001.png");
  remove(p);
  st = ioupos_dataset_scan(dir, ldir, &ds);
  CHECK(st == IOUPOS_EINVAL && contains(ioupos_failure_reason(), "case1_001.png") &&
            contains(ioupos_failure_reason(), ldir) && contains(ioupos_failure_reason(), dir),
        "missing label: %d %s", st, ioupos_failure_reason());
}

/* ---- batch records for comparisons -------------------------------------------------------- */

typedef struct rec {
  int status, epoch, index, n;
  size_t nf;
  float *f; /* views or image + label */
  int *src;
  ioupos_box *box; /* 2 per sample (SSL) or 1 */
  int n_local;      /* SSL multi-crop: local views (0 none), lf = their floats */
  size_t nlf;
  float *lf;
  ioupos_box *lbox;
} rec;

static void rec_take(rec *r, int status, const ioupos_batch *b) {
  size_t hw, nb;
  memset(r, 0, sizeof *r);
  r->status = status;
  if (status) return;
  r->epoch = b->epoch;
  r->index = b->index;
  r->n = b->n;
  hw = (size_t)b->h * b->w;
  r->nf = 2 * (size_t)b->n * hw;
  r->f = (float *)malloc(r->nf * sizeof(float) + 1);
  memcpy(r->f, b->kind == IOUPOS_LOADER_SSL ? b->views[0] : b->image, r->nf / 2 * sizeof(float));
  memcpy(r->f + r->nf / 2, b->kind == IOUPOS_LOADER_SSL ? b->views[1] : b->label,
         r->nf / 2 * sizeof(float));
  r->src = (int *)malloc((size_t)b->n * sizeof(int) + 1);
  memcpy(r->src, b->source, (size_t)b->n * sizeof(int));
  nb = b->kind == IOUPOS_LOADER_SSL ? 2 : 1;
  r->box = (ioupos_box *)calloc((size_t)b->n * nb + 1, sizeof(ioupos_box));
  memcpy(r->box, b->box[0], (size_t)b->n * sizeof(ioupos_box));
  if (nb == 2) memcpy(r->box + b->n, b->box[1], (size_t)b->n * sizeof(ioupos_box));
  r->n_local = b->n_local;
  if (b->n_local > 0) {
    size_t nl = (size_t)b->n_local * (size_t)b->n;
    r->nlf = nl * (size_t)b->lh * (size_t)b->lw;
    r->lf = (float *)malloc(r->nlf * sizeof(float) + 1);
    memcpy(r->lf, b->local, r->nlf * sizeof(float));
    r->lbox = (ioupos_box *)malloc(nl * sizeof(ioupos_box) + 1);
    memcpy(r->lbox, b->local_box, nl * sizeof(ioupos_box));
  }
}

static void rec_free(rec *r) {
  free(r->f);
  free(r->src);
  free(r->box);
  free(r->lf);
  free(r->lbox);
  memset(r, 0, sizeof *r);
}

static int rec_equal(const rec *a, const rec *b, int ssl) {
  if (a->status != b->status) return 0;
  if (a->status) return 1;
  return a->epoch == b->epoch && a->index == b->index && a->n == b->n && a->nf == b->nf &&
         !memcmp(a->f, b->f, a->nf * sizeof(float)) &&
         !memcmp(a->src, b->src, (size_t)a->n * sizeof(int)) &&
         !memcmp(a->box, b->box, (size_t)a->n * (ssl ? 2 : 1) * sizeof(ioupos_box)) &&
         a->n_local == b->n_local && a->nlf == b->nlf &&
         (a->n_local == 0 ||
          (!memcmp(a->lf, b->lf, a->nlf * sizeof(float)) &&
           !memcmp(a->lbox, b->lbox, (size_t)a->n_local * (size_t)a->n * sizeof(ioupos_box))));
}

/* Run count batches from the current position into recs. */
static void run_batches(ioupos_loader *l, int count, rec *recs) {
  int i;
  for (i = 0; i < count; ++i) {
    ioupos_batch b;
    int st = ioupos_loader_next(l, &b);
    rec_take(&recs[i], st, &b);
  }
}

/* A test augmentation that uses its rng: adds one draw to every pixel and flips the crop when
   a second draw says so; counts calls (atomically enough for a check: under the ctx mutex). */
static int aug_test(void *ctx, ioupos_rng *rng, float *img, float *label, int h, int w,
                    float *scratch) {
  size_t i, n = (size_t)h * w;
  float add = (float)ioupos_rng_uniform(rng) * 0.01f;
  int flip = (int)ioupos_rng_below(rng, 2);
  (void)ctx;
  for (i = 0; i < n; ++i) scratch[i] = img[i] + add;
  for (i = 0; i < n; ++i) img[i] = flip ? scratch[n - 1 - i] : scratch[i];
  if (label && flip) {
    for (i = 0; i < n; ++i) scratch[i] = label[n - 1 - i];
    memcpy(label, scratch, n * sizeof(float));
  }
  return 0;
}

/* An augmentation that fails on one image (its first pixel encodes the image). */
static int aug_fail(void *ctx, ioupos_rng *rng, float *img, float *label, int h, int w,
                    float *scratch) {
  (void)rng, (void)label, (void)h, (void)w, (void)scratch;
  if (ctx && img[0] == *(const float *)ctx) {
    /* fail with a reason, as a user's augmentation can: through a library call that fails
       ("test failure: not a PNG file ..."); the loader must keep that reason */
    ioupos_image im;
    return ioupos_image_load_memory(NULL, 0, "test failure", &im);
  }
  return 0;
}

/* ---- 2. SSL pairs --------------------------------------------------------------------------- */

#define SSL_N 11
static const int ssl_shape[SSL_N][2] = {{128, 160}, {100, 100}, {96, 96},  {200, 120},
                                        {128, 160}, {128, 160}, {140, 97}, {97, 140},
                                        {160, 160}, {128, 160}, {110, 130}};
static int ssl_k_of_path(const char *path) { /* files are "ssl/img_<k>.png" */
  const char *p = strrchr(path, '_');
  return p ? atoi(p + 1) : -1;
}

static void make_ssl_data(void) {
  int k;
  make_dir("ssl");
  for (k = 0; k < SSL_N; ++k) {
    char rel[64];
    snprintf(rel, sizeof rel, "ssl/img_%02d.png", k);
    make_ssl_image(rel, k, ssl_shape[k][0], ssl_shape[k][1]);
  }
}

static ioupos_loader_config ssl_config(const ioupos_dataset *ds) {
  ioupos_loader_config c;
  ioupos_loader_config_default(&c, ds, IOUPOS_LOADER_SSL);
  c.batch_size = 4;
  c.crop[0] = 64;
  c.crop[1] = 48;
  c.min_iou = 0.3;
  c.max_iou = 0.6;
  c.seed = 12345;
  c.drop_last = 0;
  return c;
}

static void test_ssl(const ioupos_dataset *ds) {
  ioupos_loader l;
  ioupos_loader_config c = ssl_config(ds);
  int epoch, st, bad_box = 0, bad_pix = 0, bad_iou = 0, orders_differ = 0;
  int first_order[3][SSL_N];
  size_t hw = (size_t)c.crop[0] * c.crop[1];

  st = ioupos_loader_open(&l, &c);
  CHECK(st == 0, "open: %s", ioupos_failure_reason());
  if (st) return;
  CHECK(l.batches_per_epoch == 3, "batches/epoch %d, want ceil(11/4) = 3", l.batches_per_epoch);
  for (epoch = 0; epoch < 3; ++epoch) {
    int seen[SSL_N] = {0}, b, pos = 0, i, v;
    CHECK(l.epoch == epoch && l.batch == 0, "position (%d, %d) at the start of epoch %d", l.epoch,
          l.batch, epoch);
    for (b = 0; b < l.batches_per_epoch; ++b) {
      ioupos_batch bt;
      st = ioupos_loader_next(&l, &bt);
      CHECK(st == 0, "next: %s", ioupos_failure_reason());
      if (st) continue;
      CHECK(bt.epoch == epoch && bt.index == b && bt.last_in_epoch == (b == 2),
            "batch says (%d, %d, last %d), want (%d, %d)", bt.epoch, bt.index, bt.last_in_epoch,
            epoch, b);
      CHECK(bt.n == (b < 2 ? 4 : 3) && bt.n_images == bt.n, "batch %d has %d pairs", b, bt.n);
      CHECK(bt.h == 64 && bt.w == 48 && bt.views[0] && bt.views[1] && !bt.image && !bt.label,
            "batch layout");
      for (i = 0; i < bt.n; ++i) {
        int d = bt.source[i], k, H, W;
        double iou;
        CHECK(d >= 0 && d < SSL_N, "source %d", d);
        if (d < 0 || d >= SSL_N) continue;
        ++seen[d];
        first_order[epoch][pos++] = d;
        k = ssl_k_of_path(ds->images[d]);
        H = ssl_shape[k][0];
        W = ssl_shape[k][1];
        for (v = 0; v < 2; ++v) {
          const ioupos_box *bx = &bt.box[v][i];
          size_t y, x;
          if (!(bx->dims == 2 && bx->lo[0] >= 0 && bx->lo[1] >= 0 && bx->hi[0] <= H &&
                bx->hi[1] <= W && bx->hi[0] - bx->lo[0] == 64 && bx->hi[1] - bx->lo[1] == 48))
            ++bad_box;
          for (y = 0; y < 64; ++y)
            for (x = 0; x < 48; ++x) {
              float want = (float)(ssl_pixel(k, bx->lo[0] + (int)y, bx->lo[1] + (int)x) / 255.0);
              if (bt.views[v][(size_t)i * hw + y * 48 + x] != want) ++bad_pix;
            }
        }
        iou = ioupos_box_iou(&bt.box[0][i], &bt.box[1][i]);
        if (!(iou >= 0.3 && iou <= 0.6)) ++bad_iou;
      }
    }
    for (i = 0; i < SSL_N; ++i) CHECK(seen[i] == 1, "epoch %d: image %d seen %d times", epoch, i, seen[i]);
    if (epoch > 0 && memcmp(first_order[epoch], first_order[0], sizeof first_order[0]) != 0)
      ++orders_differ;
  }
  CHECK(l.epoch == 3 && l.batch == 0, "position after 3 epochs (%d, %d)", l.epoch, l.batch);
  CHECK(bad_box == 0, "%d boxes outside the image or of the wrong size", bad_box);
  CHECK(bad_iou == 0, "%d pairs outside [0.3, 0.6]", bad_iou);
  CHECK(bad_pix == 0, "%d view pixels differ from the image in the box", bad_pix);
  CHECK(orders_differ == 2, "epochs 1 and 2 must shuffle differently from epoch 0 (%d differ)",
        orders_differ);
  ioupos_loader_close(&l);
  CHECK(l.st == NULL, "close clears the state");
  ioupos_loader_close(&l); /* twice is harmless */

  /* drop_last: 2 batches of 4, 8 distinct images per epoch */
  c.drop_last = 1;
  c.num_workers = 2;
  st = ioupos_loader_open(&l, &c);
  CHECK(st == 0 && l.batches_per_epoch == 2, "drop_last open: %s", ioupos_failure_reason());
  if (st == 0) {
    int seen[SSL_N] = {0}, b, i, total = 0, distinct = 0;
    for (b = 0; b < 2; ++b) {
      ioupos_batch bt;
      if (ioupos_loader_next(&l, &bt) == 0)
        for (i = 0; i < bt.n; ++i) ++seen[bt.source[i]], ++total;
    }
    for (i = 0; i < SSL_N; ++i) distinct += seen[i] == 1;
    CHECK(total == 8 && distinct == 8, "drop_last epoch: %d samples, %d distinct", total, distinct);
    ioupos_loader_close(&l);
  }
}

/* ---- 3. determinism and resume --------------------------------------------------------------- */

static void test_determinism(const ioupos_dataset *ds) {
  enum { EPOCHS = 3, BPE = 3, TOTAL = EPOCHS * BPE };
  rec ref[TOTAL], got[TOTAL];
  ioupos_loader_config c = ssl_config(ds);
  ioupos_loader l;
  int workers, i, st, aug;
  for (aug = 0; aug < 2; ++aug) {
    c.augment = aug ? aug_test : NULL;
    c.num_workers = 0;
    c.prefetch = 0;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open: %s", ioupos_failure_reason());
    if (st) return;
    run_batches(&l, TOTAL, ref);
    ioupos_loader_close(&l);
    for (i = 0; i < TOTAL; ++i) CHECK(ref[i].status == 0, "reference batch %d failed", i);
    for (workers = 1; workers <= 4; ++workers) {
      int same = 1;
      c.num_workers = workers == 4 ? 3 : workers;
      c.prefetch = workers == 4 ? 1 : 0; /* 3 workers sharing a one-batch ring */
      st = ioupos_loader_open(&l, &c);
      CHECK(st == 0, "open with %d workers: %s", c.num_workers, ioupos_failure_reason());
      if (st) continue;
      run_batches(&l, TOTAL, got);
      ioupos_loader_close(&l);
      for (i = 0; i < TOTAL; ++i) {
        if (!rec_equal(&ref[i], &got[i], 1)) same = 0;
        rec_free(&got[i]);
      }
      CHECK(same, "augment %d: %d workers (prefetch %d) give other batches than 0 workers", aug,
            c.num_workers, c.prefetch);
    }
    /* a different seed gives different batches */
    if (aug) {
      c.seed = 999;
      c.num_workers = 2;
      st = ioupos_loader_open(&l, &c);
      if (st == 0) {
        run_batches(&l, 1, got);
        CHECK(!rec_equal(&ref[0], &got[0], 1), "seed 999 gives the batches of seed 12345");
        rec_free(&got[0]);
        ioupos_loader_close(&l);
      }
      c.seed = 12345;
    }
    /* resume at (1, 2) with a fresh loader; then seek back to (0, 1) on the same loader */
    for (workers = 0; workers <= 2; workers += 2) {
      int same = 1, n;
      c.num_workers = workers;
      st = ioupos_loader_open(&l, &c);
      CHECK(st == 0, "open: %s", ioupos_failure_reason());
      if (st) continue;
      st = ioupos_loader_seek(&l, 1, 2);
      CHECK(st == 0 && l.epoch == 1 && l.batch == 2, "seek(1, 2): %s", ioupos_failure_reason());
      n = TOTAL - (1 * BPE + 2);
      run_batches(&l, n, got);
      for (i = 0; i < n; ++i) {
        if (!rec_equal(&ref[1 * BPE + 2 + i], &got[i], 1)) same = 0;
        rec_free(&got[i]);
      }
      CHECK(same, "aug %d, %d workers: resume at (1, 2) differs from the uninterrupted run", aug,
            workers);
      st = ioupos_loader_seek(&l, 0, 1);
      CHECK(st == 0 && l.epoch == 0 && l.batch == 1, "seek back");
      run_batches(&l, 4, got);
      same = 1;
      for (i = 0; i < 4; ++i) {
        if (!rec_equal(&ref[1 + i], &got[i], 1)) same = 0;
        rec_free(&got[i]);
      }
      CHECK(same, "aug %d, %d workers: seek back to (0, 1) differs", aug, workers);
      CHECK(l.epoch == 1 && l.batch == 2, "position after 4 batches from (0, 1): (%d, %d)",
            l.epoch, l.batch);
      /* epoch(e) at the position the stream is at keeps the prefetched batches */
      st = ioupos_loader_epoch(&l, 1);
      CHECK(st == 0, "epoch(1)");
      run_batches(&l, 1, got);
      CHECK(rec_equal(&ref[BPE], &got[0], 1), "epoch(1) then next gives batch (1, 0)");
      rec_free(&got[0]);
      st = ioupos_loader_seek(&l, 0, 3);
      CHECK(st == IOUPOS_EINVAL, "seek to batch 3 of 3 must fail");
      st = ioupos_loader_seek(&l, -1, 0);
      CHECK(st == IOUPOS_EINVAL, "seek to epoch -1 must fail");
      ioupos_loader_close(&l);
    }
    for (i = 0; i < TOTAL; ++i) rec_free(&ref[i]);
  }
}


/* The documented randomness: S = split(split(seed(seed), epoch), d); crops from split(S, 0),
   the augmentation of crop j from split(S, 1 + j). */
static ioupos_rng sample_rng(uint64_t seed, int epoch, int d, uint64_t key) {
  ioupos_rng root, E, S;
  ioupos_rng_seed(&root, seed);
  E = ioupos_rng_split(&root, (uint64_t)epoch);
  S = ioupos_rng_split(&E, (uint64_t)d);
  return ioupos_rng_split(&S, key);
}

/* SSL: every pair equals the sampler's draw from split(S, 0) on the image's shape, and every
   view equals aug_test applied to the raw crop with split(S, 1 + v). */
static void test_contract_ssl(const ioupos_dataset *ds) {
  ioupos_loader_config c = ssl_config(ds);
  ioupos_loader l;
  int st, b, bad_box = 0, bad_view = 0, checked = 0;
  size_t hw = (size_t)c.crop[0] * c.crop[1];
  float *want = (float *)malloc(hw * sizeof(float)), *scratch = (float *)malloc(4 * hw * sizeof(float));
  c.augment = aug_test;
  c.num_workers = 2;
  st = ioupos_loader_open(&l, &c);
  CHECK(st == 0, "open: %s", ioupos_failure_reason());
  for (b = 0; st == 0 && b < 2 * l.batches_per_epoch; ++b) {
    ioupos_batch bt;
    int i, v;
    if (ioupos_loader_next(&l, &bt) != 0) { CHECK(0, "next: %s", ioupos_failure_reason()); continue; }
    for (i = 0; i < bt.n; ++i) {
      int d = bt.source[i], k = ssl_k_of_path(ds->images[d]);
      ioupos_iou_sampler smp;
      ioupos_box a[2];
      ioupos_rng r = sample_rng(c.seed, bt.epoch, d, 0);
      if (ioupos_iou_sampler_init(&smp, 2, ssl_shape[k], c.crop, c.min_iou, c.max_iou,
                                  c.pair_mode) != 0) { ++bad_box; continue; }
      ioupos_iou_sampler_draw(&smp, &r, &a[0], &a[1]);
      ioupos_iou_sampler_free(&smp);
      for (v = 0; v < 2; ++v) {
        size_t y, x;
        if (memcmp(&a[v], &bt.box[v][i], sizeof a[v]) != 0) ++bad_box;
        for (y = 0; y < (size_t)c.crop[0]; ++y)
          for (x = 0; x < (size_t)c.crop[1]; ++x)
            want[y * c.crop[1] + x] = (float)(ssl_pixel(k, a[v].lo[0] + (int)y, a[v].lo[1] + (int)x) / 255.0);
        r = sample_rng(c.seed, bt.epoch, d, 1u + (uint64_t)v);
        aug_test(NULL, &r, want, NULL, c.crop[0], c.crop[1], scratch);
        if (memcmp(want, bt.views[v] + (size_t)i * hw, hw * sizeof(float)) != 0) ++bad_view;
        ++checked;
      }
    }
  }
  CHECK(checked > 0 && bad_box == 0 && bad_view == 0, "documented randomness: %d of %d boxes and "
        "%d views differ from split(S, 0) / split(S, 1 + v)", bad_box, checked, bad_view);
  if (st == 0) ioupos_loader_close(&l);
  free(want);
  free(scratch);
}

/* ---- 3b. n_local = 0 is today's loader, bit for bit ------------------------------------------ */

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
  const unsigned char *p = (const unsigned char *)data;
  size_t i;
  for (i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

/* Hash of the first 6 batches (2 epochs) of ssl_config with aug_test: views, boxes, sources. */
static uint64_t ssl_stream_hash(const ioupos_dataset *ds, int n_local, int workers) {
  ioupos_loader_config c = ssl_config(ds);
  ioupos_loader l;
  uint64_t h = 1469598103934665603ull;
  int b;
  c.augment = aug_test;
  c.num_workers = workers;
  c.n_local = n_local;
  if (ioupos_loader_open(&l, &c) != 0) return 0;
  for (b = 0; b < 6; ++b) {
    ioupos_batch bt;
    size_t hw;
    int i, v;
    if (ioupos_loader_next(&l, &bt) != 0) { h = 0; break; }
    hw = (size_t)bt.h * (size_t)bt.w;
    for (v = 0; v < 2; ++v) {
      h = fnv1a(h, bt.views[v], (size_t)bt.n * hw * sizeof(float));
      for (i = 0; i < bt.n; ++i) {
        const ioupos_box *x = &bt.box[v][i];
        int q[7];
        q[0] = x->dims, q[1] = x->lo[0], q[2] = x->lo[1], q[3] = x->lo[2];
        q[4] = x->hi[0], q[5] = x->hi[1], q[6] = x->hi[2];
        h = fnv1a(h, q, sizeof q);
      }
    }
    h = fnv1a(h, bt.source, (size_t)bt.n * sizeof(int));
  }
  ioupos_loader_close(&l);
  return h;
}

/* The SSL stream recorded before multi-crop existed (same data, seed and aug_test). */
#define SSL_GOLDEN_HASH 0xbf567743cc2996ecull

static void test_golden(const ioupos_dataset *ds) {
  uint64_t h0 = ssl_stream_hash(ds, 0, 0), h2 = ssl_stream_hash(ds, 0, 2);
  uint64_t hl = ssl_stream_hash(ds, 3, 2);
  printf("SSL stream hash: n_local 0: %016llx (2 workers %016llx), n_local 3: %016llx\n",
         (unsigned long long)h0, (unsigned long long)h2, (unsigned long long)hl);
  CHECK(h0 == SSL_GOLDEN_HASH, "n_local 0: SSL stream hash %016llx, recorded %016llx",
        (unsigned long long)h0, (unsigned long long)SSL_GOLDEN_HASH);
  CHECK(h2 == h0, "n_local 0: 2 workers hash %016llx, 0 workers %016llx", (unsigned long long)h2,
        (unsigned long long)h0);
  /* the pair and views 0, 1 do not depend on n_local (local crops use their own streams) */
  CHECK(hl == h0, "n_local 3: pair and views hash %016llx, n_local 0 %016llx",
        (unsigned long long)hl, (unsigned long long)h0);
}

/* ---- 3c. multi-crop (DINO local crops) ------------------------------------------------------- */

static ioupos_loader_config mc_config(const ioupos_dataset *ds) {
  ioupos_loader_config c = ssl_config(ds); /* crop 64 x 48, [0.3, 0.6] */
  c.n_local = 2;
  c.local_crop[0] = 32;
  c.local_crop[1] = 24;
  c.local_min_iou = 0.05; /* a 32x24 crop has IoU at most 768 / 3072 = 0.25 with view 0 */
  c.local_max_iou = 0.2;
  return c;
}

/* Every local box: the local size, inside the image (shape H x W, no padding here), IoU with
   view 0's box in the interval; without augmentation its pixels are the image's at the box. */
static void check_locals(const ioupos_dataset *ds, const ioupos_loader_config *c,
                         const ioupos_batch *bt, int *bad_box, int *bad_iou, int *bad_pix,
                         int *checked) {
  int i, k, lh = c->local_crop[0], lw = c->local_crop[1];
  size_t lhw = (size_t)lh * (size_t)lw;
  for (k = 0; k < bt->n_local; ++k)
    for (i = 0; i < bt->n; ++i) {
      int d = bt->source[i], kk = ssl_k_of_path(ds->images[d]), H = ssl_shape[kk][0],
          W = ssl_shape[kk][1];
      const ioupos_box *L = &bt->local_box[(size_t)k * bt->n + i];
      const float *v = bt->local + ((size_t)k * bt->n + i) * lhw;
      double iou = ioupos_box_iou(L, &bt->box[0][i]);
      size_t y, x;
      if (!(L->dims == 2 && L->lo[0] >= 0 && L->lo[1] >= 0 && L->hi[0] <= H && L->hi[1] <= W &&
            L->hi[0] - L->lo[0] == lh && L->hi[1] - L->lo[1] == lw))
        ++*bad_box;
      if (!(iou >= c->local_min_iou && iou <= c->local_max_iou)) ++*bad_iou;
      if (!c->augment)
        for (y = 0; y < (size_t)lh; ++y)
          for (x = 0; x < (size_t)lw; ++x)
            if (v[y * lw + x] != (float)(ssl_pixel(kk, L->lo[0] + (int)y, L->lo[1] + (int)x) / 255.0))
              ++*bad_pix;
      ++*checked;
    }
}

static void test_multicrop(const ioupos_dataset *ds) {
  enum { TOTAL = 6 };
  ioupos_loader_config c = mc_config(ds), c0;
  ioupos_loader l;
  rec ref[TOTAL], got[TOTAL], plain[TOTAL];
  int st, i, b, bad_box = 0, bad_iou = 0, bad_pix = 0, checked = 0, layout = 1, same_pair = 1;
  int aug, workers;

  /* layout, interval, content; the pair and views 0, 1 equal the n_local 0 run */
  c0 = c;
  c0.n_local = 0;
  st = ioupos_loader_open(&l, &c0);
  CHECK(st == 0, "open n_local 0: %s", ioupos_failure_reason());
  if (st) return;
  run_batches(&l, TOTAL, plain);
  ioupos_loader_close(&l);
  st = ioupos_loader_open(&l, &c);
  CHECK(st == 0, "open n_local 2: %s", ioupos_failure_reason());
  if (st) return;
  for (b = 0; b < TOTAL; ++b) {
    ioupos_batch bt;
    rec r;
    st = ioupos_loader_next(&l, &bt);
    CHECK(st == 0, "next: %s", ioupos_failure_reason());
    if (st) continue;
    layout &= bt.n_local == 2 && bt.lh == 32 && bt.lw == 24 && bt.local && bt.local_box;
    check_locals(ds, &c, &bt, &bad_box, &bad_iou, &bad_pix, &checked);
    rec_take(&r, 0, &bt);
    free(r.lf), free(r.lbox);
    r.lf = NULL, r.lbox = NULL, r.n_local = 0, r.nlf = 0;
    same_pair &= rec_equal(&plain[b], &r, 1);
    rec_free(&r);
  }
  ioupos_loader_close(&l);
  CHECK(checked == 2 * (4 + 4 + 3) * 2, "checked %d local crops", checked);
  CHECK(layout, "batch layout: n_local, lh, lw, local, local_box");
  CHECK(bad_box == 0, "%d local boxes outside the image or of the wrong size", bad_box);
  CHECK(bad_iou == 0, "%d local boxes outside [0.05, 0.2] with view 0", bad_iou);
  CHECK(bad_pix == 0, "%d local pixels differ from the image in the box", bad_pix);
  CHECK(same_pair, "n_local 2 changed the pair, views 0, 1 or sources of n_local 0");
  for (i = 0; i < TOTAL; ++i) {
    CHECK(plain[i].n_local == 0 && plain[i].lf == NULL, "n_local 0: the batch has local views");
    rec_free(&plain[i]);
  }

  /* n_local 0 ignores the local fields, even nonsense ones */
  c0.local_crop[0] = -5;
  c0.local_min_iou = NAN;
  st = ioupos_loader_open(&l, &c0);
  CHECK(st == 0, "n_local 0 with nonsense local fields: %s", ioupos_failure_reason());
  if (st == 0) {
    ioupos_batch bt;
    st = ioupos_loader_next(&l, &bt);
    CHECK(st == 0 && bt.n_local == 0 && bt.lh == 0 && bt.lw == 0 && !bt.local && !bt.local_box,
          "n_local 0 batch: %d local views %dx%d", bt.n_local, bt.lh, bt.lw);
    ioupos_loader_close(&l);
  }

  /* the same batches for 0, 1, 3 workers (and a one-slot ring), with and without augmentation;
     a second run is identical; another seed differs */
  for (aug = 0; aug < 2; ++aug) {
    c = mc_config(ds);
    c.n_local = 3;
    c.augment = aug ? aug_test : NULL;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open: %s", ioupos_failure_reason());
    if (st) return;
    run_batches(&l, TOTAL, ref);
    ioupos_loader_close(&l);
    for (workers = 0; workers < 4; ++workers) {
      int same = 1;
      c.num_workers = workers == 2 ? 3 : workers == 3 ? 3 : workers;
      c.prefetch = workers == 3 ? 1 : 0;
      st = ioupos_loader_open(&l, &c);
      CHECK(st == 0, "open: %s", ioupos_failure_reason());
      if (st) continue;
      run_batches(&l, TOTAL, got);
      ioupos_loader_close(&l);
      for (i = 0; i < TOTAL; ++i) {
        if (ref[i].status || !rec_equal(&ref[i], &got[i], 1) || got[i].n_local != 3) same = 0;
        rec_free(&got[i]);
      }
      CHECK(same, "augment %d: %d workers (prefetch %d) give other multi-crop batches than a "
            "synchronous run", aug, c.num_workers, c.prefetch);
    }
    c.seed = 777;
    c.num_workers = 2;
    c.prefetch = 0;
    st = ioupos_loader_open(&l, &c);
    if (st == 0) {
      run_batches(&l, 1, got);
      CHECK(got[0].status == 0 && memcmp(got[0].lbox, ref[0].lbox, 3 * (size_t)got[0].n *
                                                                       sizeof(ioupos_box)) != 0,
            "seed 777 gives the local boxes of seed 12345");
      rec_free(&got[0]);
      ioupos_loader_close(&l);
    }
    for (i = 0; i < TOTAL; ++i) rec_free(&ref[i]);
  }

  /* the documented randomness: local boxes from split(S, 100) in order k = 0, 1, 2 on the image
     shape; local view k's augmentation from split(S, 3 + k) */
  {
    size_t lhw = 32 * 24;
    float *want = (float *)malloc(lhw * sizeof(float)), *scratch = (float *)malloc(4 * lhw * sizeof(float));
    int bad = 0, n = 0;
    c = mc_config(ds);
    c.n_local = 3;
    c.augment = aug_test;
    c.num_workers = 2;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open: %s", ioupos_failure_reason());
    for (b = 0; st == 0 && b < 2 * l.batches_per_epoch; ++b) {
      ioupos_batch bt;
      if (ioupos_loader_next(&l, &bt) != 0) { CHECK(0, "next: %s", ioupos_failure_reason()); continue; }
      for (i = 0; i < bt.n; ++i) {
        int d = bt.source[i], kk = ssl_k_of_path(ds->images[d]), k;
        ioupos_rng r = sample_rng(c.seed, bt.epoch, d, 100);
        for (k = 0; k < 3; ++k) {
          ioupos_box L;
          ioupos_rng ra;
          size_t y, x, o = (size_t)k * bt.n + i;
          if (ioupos_local_crop_draw(2, ssl_shape[kk], &bt.box[0][i], c.local_crop,
                                     c.local_min_iou, c.local_max_iou, &r, &L) != 0 ||
              memcmp(&L, &bt.local_box[o], sizeof L) != 0) {
            ++bad;
            continue;
          }
          for (y = 0; y < 32; ++y)
            for (x = 0; x < 24; ++x)
              want[y * 24 + x] = (float)(ssl_pixel(kk, L.lo[0] + (int)y, L.lo[1] + (int)x) / 255.0);
          ra = sample_rng(c.seed, bt.epoch, d, 3u + (uint64_t)k);
          aug_test(NULL, &ra, want, NULL, 32, 24, scratch);
          if (memcmp(want, bt.local + o * lhw, lhw * sizeof(float)) != 0) ++bad;
          ++n;
        }
      }
    }
    if (st == 0) ioupos_loader_close(&l);
    CHECK(n > 0 && bad == 0, "documented randomness: %d of %d local crops differ from "
          "split(S, 100) / split(S, 3 + k)", bad, n);
    free(want);
    free(scratch);
  }
}

/* Local crops with padding (local larger than the crop on one axis, images smaller than both),
   per-image infeasibility, and the errors at open. */
/* Shards (data parallel): for 2 and 4 shards, every shard's batch is its slice of the whole
   batch, bit for bit: views, boxes, sources, local views (laid out k * n + i in each), and for
   fine-tuning the crops and labels; a shard past a short last batch gets n 0. Then the errors:
   a batch not divisible by the count, a shard out of range. */
static int shard_same(const ioupos_batch *w, const ioupos_batch *s, int lo, size_t px, size_t lpx) {
  int i, k, v, ok = s->epoch == w->epoch && s->index == w->index;
  for (i = 0; ok && i < s->n; ++i) {
    ok &= s->source[i] == w->source[lo + i];
    for (v = 0; v < 2; ++v) {
      if (w->views[v])
        ok &= memcmp(s->views[v] + i * px, w->views[v] + (lo + i) * px, px * sizeof(float)) == 0;
      if (w->box[v]) ok &= memcmp(&s->box[v][i], &w->box[v][lo + i], sizeof(ioupos_box)) == 0;
    }
    if (w->image)
      ok &= memcmp(s->image + i * px, w->image + (lo + i) * px, px * sizeof(float)) == 0 &&
            memcmp(s->label + i * px, w->label + (lo + i) * px, px * sizeof(float)) == 0;
    for (k = 0; k < w->n_local; ++k)
      ok &= memcmp(s->local + ((size_t)k * s->n + i) * lpx, w->local + ((size_t)k * w->n + lo + i) * lpx,
                   lpx * sizeof(float)) == 0;
  }
  return ok;
}

static void test_shards(const ioupos_loader_config *base, const char *what) {
  enum { MAXS = 4 };
  ioupos_loader whole, sh[MAXS];
  ioupos_loader_config c = *base;
  size_t px = (size_t)c.crop[0] * c.crop[1] * (c.spatial_dims == 3 ? c.crop[2] : 1);
  size_t lpx = (size_t)c.local_crop[0] * c.local_crop[1];
  int counts[2] = {2, 4}, ci, r, b, st, per, sample = c.kind == IOUPOS_LOADER_FINETUNE ? c.num_samples : 1;
  for (ci = 0; ci < 2; ++ci) {
    int N = counts[ci], bad = 0, empty = 0, opened = 0;
    c = *base;
    st = ioupos_loader_open(&whole, &c);
    CHECK(st == 0, "%s: open whole: %s", what, ioupos_failure_reason());
    if (st) return;
    for (r = 0; r < N; ++r) {
      c.shard_rank = r;
      c.shard_count = N;
      c.num_workers = r % 2; /* shards with and without workers */
      st = ioupos_loader_open(&sh[r], &c);
      CHECK(st == 0, "%s: open shard %d of %d: %s", what, r, N, ioupos_failure_reason());
      if (st) break;
      ++opened;
    }
    per = base->batch_size / N;
    for (b = 0; opened == N && b < 2 * whole.batches_per_epoch; ++b) {
      ioupos_batch wb, sb;
      int total = 0;
      st = ioupos_loader_next(&whole, &wb);
      CHECK(st == 0, "%s: whole next: %s", what, ioupos_failure_reason());
      if (st) break;
      for (r = 0; r < N; ++r) {
        st = ioupos_loader_next(&sh[r], &sb);
        CHECK(st == 0, "%s: shard %d next: %s", what, r, ioupos_failure_reason());
        if (st) continue;
        if (!shard_same(&wb, &sb, r * per * sample, px, lpx)) ++bad;
        if (sb.n == 0) ++empty;
        total += sb.n;
      }
      CHECK(total == wb.n, "%s, %d shards, batch %d: the shards hold %d samples, the batch %d",
            what, N, b, total, wb.n);
    }
    CHECK(bad == 0, "%s, %d shards: %d shard batches differ from their slice of the whole", what,
          N, bad);
    if (N == 4 && base->drop_last == 0 && base->kind == IOUPOS_LOADER_SSL)
      CHECK(empty > 0, "%s: no shard was past the short last batch (the test needs one)", what);
    for (r = 0; r < opened; ++r) ioupos_loader_close(&sh[r]);
    ioupos_loader_close(&whole);
  }
  c = *base;
  c.shard_count = 3; /* 4 is not a multiple of 3 */
  st = ioupos_loader_open(&whole, &c);
  CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "multiple of the count"),
        "%s: batch 4 over 3 shards: %d '%s'", what, st, ioupos_failure_reason());
  if (st == 0) ioupos_loader_close(&whole);
  c.shard_count = 2;
  c.shard_rank = 2;
  st = ioupos_loader_open(&whole, &c);
  CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "shard 2 of 2"),
        "%s: shard 2 of 2: %d '%s'", what, st, ioupos_failure_reason());
  if (st == 0) ioupos_loader_close(&whole);
}

static void test_multicrop_errors(const ioupos_dataset *ssl) {
  ioupos_dataset ds;
  ioupos_loader_config c;
  ioupos_loader l;
  ioupos_batch bt;
  char dir[512];
  int st, i;

  /* padding: s_0 50x70 (rows short of the crop 64), s_1 64x41 (columns short of the local 56) */
  make_dir("mc_small");
  make_ssl_image("mc_small/s_0.png", 0, 50, 70);
  make_ssl_image("mc_small/s_1.png", 1, 64, 41);
  path_of(dir, sizeof dir, "mc_small");
  st = ioupos_dataset_scan(dir, NULL, &ds);
  CHECK(st == 0, "scan: %s", ioupos_failure_reason());
  if (st) return;
  c = ssl_config(&ds);
  c.batch_size = 1;
  c.min_iou = 0.0;
  c.max_iou = 1.0;
  c.n_local = 3;
  c.local_crop[0] = 40;
  c.local_crop[1] = 56; /* wider than the crop (48) */
  c.local_min_iou = 0.1; /* s_1: A spans the padded image's rows, so IoU >= 0.566 there */
  c.local_max_iou = 0.6;
  c.num_workers = 1;
  st = ioupos_loader_open(&l, &c);
  CHECK(st == 0, "open: %s", ioupos_failure_reason());
  for (i = 0; st == 0 && i < 20; ++i) {
    int k, y, x, bad = 0, kk, H, W, fy, fx;
    st = ioupos_loader_next(&l, &bt);
    CHECK(st == 0, "padded multi-crop next: %s", ioupos_failure_reason());
    if (st) break;
    kk = ssl_k_of_path(ds.images[bt.source[0]]);
    H = kk ? 64 : 50, W = kk ? 41 : 70;
    /* local frame: s_0 padded to 64 rows (7 before), s_1 to 56 columns (7 before) */
    fy = kk ? 0 : 7, fx = kk ? 7 : 0;
    for (k = 0; k < 3; ++k) {
      const ioupos_box *L = &bt.local_box[k];
      double iou = ioupos_box_iou(L, &bt.box[0][0]);
      if (!(iou >= 0.1 && iou <= 0.6)) ++bad;
      if (L->hi[0] - L->lo[0] != 40 || L->hi[1] - L->lo[1] != 56 || L->lo[0] < -fy ||
          L->lo[1] < -fx || L->hi[0] > (kk ? 64 : 57) || L->hi[1] > (kk ? 49 : 70))
        ++bad;
      for (y = 0; y < 40; ++y)
        for (x = 0; x < 56; ++x) {
          int sy = L->lo[0] + y, sx = L->lo[1] + x;
          float want = (sy < 0 || sy >= H || sx < 0 || sx >= W) ? 0.0f
                                                                 : (float)(ssl_pixel(kk, sy, sx) / 255.0);
          if (bt.local[(size_t)k * 40 * 56 + (size_t)y * 56 + x] != want) ++bad;
        }
    }
    CHECK(bad == 0, "padded local crops, sample %d (image %d): %d bad boxes / pixels", i, kk, bad);
  }
  ioupos_loader_close(&l);
  /* pad_small 0: s_1 (64x41) is as large as the crop in rows but narrower than the local 56;
     use a crop it fits (32 x 32) */
  c.pad_small = 0;
  c.crop[0] = c.crop[1] = 32;
  c.num_workers = 0;
  c.batch_size = 2;
  st = ioupos_loader_open(&l, &c);
  CHECK(st == 0, "open: %s", ioupos_failure_reason());
  if (st == 0) {
    st = ioupos_loader_next(&l, &bt);
    CHECK(st == IOUPOS_EINVAL && contains(ioupos_failure_reason(), "s_1.png") &&
              contains(ioupos_failure_reason(), "64x41") &&
              contains(ioupos_failure_reason(), "40x56"),
          "pad_small 0, image narrower than the local crop: %d %s", st, ioupos_failure_reason());
    ioupos_loader_close(&l);
  }
  ioupos_dataset_free(&ds);

  /* an image whose view-0 box admits no local crop: the crop is the whole image (A fixed), a
     32x24 local crop inside it has IoU 0.25, [0, 0.2] needs one reaching outside: impossible */
  make_dir("mc_whole");
  make_ssl_image("mc_whole/w_0.png", 0, 64, 48);
  path_of(dir, sizeof dir, "mc_whole");
  st = ioupos_dataset_scan(dir, NULL, &ds);
  CHECK(st == 0, "scan: %s", ioupos_failure_reason());
  if (st) return;
  c = mc_config(&ds);
  c.batch_size = 1;
  c.min_iou = c.max_iou = 1.0;
  c.local_min_iou = 0.0;
  c.local_max_iou = 0.2;
  st = ioupos_loader_open(&l, &c);
  CHECK(st == 0, "open (feasible in a larger image): %s", ioupos_failure_reason());
  if (st == 0) {
    st = ioupos_loader_next(&l, &bt);
    CHECK(st == IOUPOS_EINFEASIBLE && contains(ioupos_failure_reason(), "w_0.png") &&
              contains(ioupos_failure_reason(), "64x48") &&
              contains(ioupos_failure_reason(), "[0, 0.2]") &&
              contains(ioupos_failure_reason(), "epoch"),
          "no local position for this image: %d %s", st, ioupos_failure_reason());
    ioupos_loader_close(&l);
  }
  ioupos_dataset_free(&ds);

  /* errors at open */
  c = mc_config(ssl);
  {
    ioupos_loader_config b = c;
    b.n_local = -1;
    CHECK(ioupos_loader_open(&l, &b) == IOUPOS_EINVAL && contains(ioupos_failure_reason(), "-1"),
          "n_local -1: %s", ioupos_failure_reason());
    b = c, b.n_local = 257;
    CHECK(ioupos_loader_open(&l, &b) == IOUPOS_EINVAL && contains(ioupos_failure_reason(), "257"),
          "n_local 257: %s", ioupos_failure_reason());
    b = c, b.local_crop[1] = 0;
    CHECK(ioupos_loader_open(&l, &b) == IOUPOS_EINVAL && contains(ioupos_failure_reason(), "32x0"),
          "local crop 32x0: %s", ioupos_failure_reason());
    b = c, b.local_min_iou = 0.3, b.local_max_iou = 0.1;
    CHECK(ioupos_loader_open(&l, &b) == IOUPOS_EINVAL &&
              contains(ioupos_failure_reason(), "`local_min_iou` 0.3") &&
              contains(ioupos_failure_reason(), "`local_max_iou` 0.1"),
          "reversed local interval: %s", ioupos_failure_reason());
    b = c, b.local_max_iou = NAN;
    CHECK(ioupos_loader_open(&l, &b) == IOUPOS_EINVAL &&
              contains(ioupos_failure_reason(), "`local_max_iou`"),
          "NaN local interval: %s", ioupos_failure_reason());
    b = c, b.local_max_iou = 1.5;
    CHECK(ioupos_loader_open(&l, &b) == IOUPOS_EINVAL, "local interval above 1");
    /* a 32x24 crop has IoU at most 0.25 with a 64x48 one: [0.3, 0.6] is refused at open */
    b = c, b.local_min_iou = 0.3, b.local_max_iou = 0.6;
    st = ioupos_loader_open(&l, &b);
    CHECK(st == IOUPOS_EINFEASIBLE && contains(ioupos_failure_reason(), "`local_min_iou` 0.3") &&
              contains(ioupos_failure_reason(), "`local_max_iou` 0.6") &&
              contains(ioupos_failure_reason(), "32x24") &&
              contains(ioupos_failure_reason(), "64x48") &&
              contains(ioupos_failure_reason(), "0.25"),
          "infeasible local interval: %d %s", st, ioupos_failure_reason());
    ioupos_loader_close(&l);
    /* a thin interval between two achievable values (I = 767 and 768 of 3072 + 768: 0.2497..
       and 0.25): none in (0.2498, 0.2499) */
    b = c, b.local_min_iou = 0.2498, b.local_max_iou = 0.2499;
    CHECK(ioupos_loader_open(&l, &b) == IOUPOS_EINFEASIBLE, "thin gap: %s",
          ioupos_failure_reason());
    b = c, b.local_min_iou = 0.25, b.local_max_iou = 0.25;
    st = ioupos_loader_open(&l, &b);
    CHECK(st == 0, "the maximum 0.25 exactly: %s", ioupos_failure_reason());
    if (st == 0) ioupos_loader_close(&l);
  }
  { /* fine-tuning has no local crops */
    ioupos_dataset fd;
    char idir[512], ldir[512];
    path_of(idir, sizeof idir, "fti");
    path_of(ldir, sizeof ldir, "ftl");
    if (ioupos_dataset_scan(idir, ldir, &fd) == 0) {
      ioupos_loader_config_default(&c, &fd, IOUPOS_LOADER_FINETUNE);
      c.crop[0] = c.crop[1] = 48;
      c.batch_size = 2;
      c.n_local = 2;
      CHECK(ioupos_loader_open(&l, &c) == IOUPOS_EINVAL &&
                contains(ioupos_failure_reason(), "fine-tuning"),
            "fine-tuning with n_local 2: %s", ioupos_failure_reason());
      ioupos_dataset_free(&fd);
    }
  }
  { /* the defaults */
    ioupos_loader_config_default(&c, ssl, IOUPOS_LOADER_SSL);
    CHECK(c.n_local == 0 && c.local_crop[0] == 48 && c.local_crop[1] == 48 &&
              c.local_min_iou == 0.0 && c.local_max_iou == 1.0,
          "defaults: n_local %d, local %dx%d, [%g, %g]", c.n_local, c.local_crop[0],
          c.local_crop[1], c.local_min_iou, c.local_max_iou);
  }
}

/* ---- 4. images smaller than the crop --------------------------------------------------------- */

static void test_small(void) {
  ioupos_dataset ds;
  ioupos_loader_config c;
  ioupos_loader l;
  ioupos_batch b;
  char dir[512];
  int st, i;
  make_dir("small");
  make_ssl_image("small/s_0.png", 0, 50, 70); /* crop 64 x 48: rows too short, columns fine */
  make_ssl_image("small/s_1.png", 1, 64, 41); /* columns too short: 3 before, 4 after */
  path_of(dir, sizeof dir, "small");
  st = ioupos_dataset_scan(dir, NULL, &ds);
  CHECK(st == 0, "scan small: %s", ioupos_failure_reason());
  if (st) return;
  c = ssl_config(&ds);
  c.batch_size = 1;
  c.min_iou = 0.0;
  c.max_iou = 1.0;
  st = ioupos_loader_open(&l, &c);
  CHECK(st == 0, "open: %s", ioupos_failure_reason());
  for (i = 0; st == 0 && i < 20; ++i) {
    int v, y, x, bad = 0, k;
    st = ioupos_loader_next(&l, &b);
    CHECK(st == 0, "padded next: %s", ioupos_failure_reason());
    if (st) break;
    k = ssl_k_of_path(ds.images[b.source[0]]);
    for (v = 0; v < 2; ++v) {
      const ioupos_box *bx = &b.box[v][0];
      int H = k ? 64 : 50, W = k ? 41 : 70;
      /* s_0: padded to 64 rows, 7 before -> rows -7 .. 56 in source coordinates;
         s_1: padded to 48 columns, 3 before -> columns -3 .. 44 */
      if (k == 0 && !(bx->lo[0] == -7 && bx->hi[0] == 57 && bx->lo[1] >= 0 && bx->hi[1] <= 70)) ++bad;
      if (k == 1 && !(bx->lo[1] == -3 && bx->hi[1] == 45 && bx->lo[0] == 0 && bx->hi[0] == 64)) ++bad;
      for (y = 0; y < 64; ++y)
        for (x = 0; x < 48; ++x) {
          int sy = bx->lo[0] + y, sx = bx->lo[1] + x;
          float want = (sy < 0 || sy >= H || sx < 0 || sx >= W) ? 0.0f
                                                                 : (float)(ssl_pixel(k, sy, sx) / 255.0);
          if (b.views[v][y * 48 + x] != want) ++bad;
        }
    }
    CHECK(bad == 0, "padded pair %d (image %d): %d bad boxes / pixels (box %d..%d x %d..%d)", i, k,
          bad, b.box[0][0].lo[0], b.box[0][0].hi[0], b.box[0][0].lo[1], b.box[0][0].hi[1]);
  }
  ioupos_loader_close(&l);
  c.pad_small = 0;
  st = ioupos_loader_open(&l, &c);
  CHECK(st == 0, "open: %s", ioupos_failure_reason());
  if (st == 0) {
    st = ioupos_loader_next(&l, &b);
    CHECK(st == IOUPOS_EINVAL && ((contains(ioupos_failure_reason(), "s_0.png") &&
              contains(ioupos_failure_reason(), "50x70")) || (contains(ioupos_failure_reason(),
              "s_1.png") && contains(ioupos_failure_reason(), "64x41"))),
          "pad_small 0: %d %s", st, ioupos_failure_reason());
    ioupos_loader_close(&l);
  }
  ioupos_dataset_free(&ds);
}

/* ---- 5. fine-tuning crops -------------------------------------------------------------------- */

#define FT_N 6
/* label of image k at (y, x): a few rectangles with ids 1..13; image byte = 17 * label + 3 */
static int ft_label(int k, int y, int x) {
  if (k == 5) return 0; /* one slice with no foreground at all */
  if (y >= 20 + 3 * k && y < 50 + 3 * k && x >= 30 && x < 60) return 1 + k;
  if (y >= 90 && y < 100 && x >= 100 + k && x < 120 + k) return 13 - k;
  return 0;
}

static void make_ft_data(void) {
  int k, y, x, h = 128, w = 144;
  uint8_t *im = (uint8_t *)malloc((size_t)h * w), *lb = (uint8_t *)malloc((size_t)h * w);
  make_dir("fti");
  make_dir("ftl");
  for (k = 0; k < FT_N; ++k) {
    char rel[64];
    for (y = 0; y < h; ++y)
      for (x = 0; x < w; ++x) {
        int L = ft_label(k, y, x);
        lb[(size_t)y * w + x] = (uint8_t)L;
        im[(size_t)y * w + x] = (uint8_t)(17 * L + 3);
      }
    snprintf(rel, sizeof rel, "fti/case_%d.png", k);
    write_png(rel, h, w, im);
    snprintf(rel, sizeof rel, "ftl/case_%d.png", k);
    write_png(rel, h, w, lb);
  }
  free(im);
  free(lb);
}


/* MONAI RandCropByPosNegLabeld, written out independently: from r = split(S, 0), per crop
   fg = uniform < ratio, rank = below(count), the rank-th such pixel in raster order is the
   centre, corrected by correct_crop_centers: [s // 2, (int)(len + 1 - s / 2.0) - 1]; the crop
   starts at centre - s // 2. */
static void ref_posneg(int k, int H, int W, int s, double pos, double neg, ioupos_rng *r,
                       int out_lo[2]) {
  long nf = 0, nb = 0, rank, seen = -1, i;
  double ratio;
  int fg, ax, cen[2];
  for (i = 0; i < (long)H * W; ++i) {
    if (ft_label(k, (int)(i / W), (int)(i % W))) ++nf; else ++nb;
  }
  ratio = nf == 0 ? 0.0 : nb == 0 ? 1.0 : pos / (pos + neg);
  fg = ioupos_rng_uniform(r) < ratio;
  rank = (long)ioupos_rng_below(r, (uint64_t)(fg ? nf : nb));
  for (i = 0; i < (long)H * W; ++i)
    if ((ft_label(k, (int)(i / W), (int)(i % W)) != 0) == fg && ++seen == rank) break;
  cen[0] = (int)(i / W);
  cen[1] = (int)(i % W);
  for (ax = 0; ax < 2; ++ax) {
    int len = ax ? W : H, vs = s / 2, ve = (int)(len + 1 - s / 2.0);
    int c = cen[ax] < vs ? vs : cen[ax] > ve - 1 ? ve - 1 : cen[ax];
    out_lo[ax] = c - s / 2;
  }
}

static void test_finetune(void) {
  ioupos_dataset ds;
  ioupos_loader_config c;
  ioupos_loader l;
  char idir[512], ldir[512];
  int st, pass;
  path_of(idir, sizeof idir, "fti");
  path_of(ldir, sizeof ldir, "ftl");
  st = ioupos_dataset_scan(idir, ldir, &ds);
  CHECK(st == 0 && ds.n == FT_N, "ft scan: %s", ioupos_failure_reason());
  if (st) return;
  ioupos_loader_config_default(&c, &ds, IOUPOS_LOADER_FINETUNE);
  c.batch_size = 4;
  c.crop[0] = c.crop[1] = 32;
  c.num_samples = 3;
  c.drop_last = 0;
  c.seed = 7;
  /* pass 0: pos = neg = 1; pass 1: pos only; pass 2: neg only; pass 3: with augmentation */
  for (pass = 0; pass < 4; ++pass) {
    int b, bad_align = 0, bad_box = 0, bad_fg = 0, bad_bg = 0, fg_crops = 0, crops = 0, bad_ref = 0, bad_aug = 0;
    c.pos = pass == 2 ? 0 : 1;
    c.neg = pass == 1 ? 0 : 1;
    c.augment = pass == 3 ? aug_test : NULL;
    c.num_workers = pass % 2 ? 2 : 0;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "ft open: %s", ioupos_failure_reason());
    if (st) continue;
    for (b = 0; b < 2 * l.batches_per_epoch; ++b) {
      ioupos_batch bt;
      int i;
      st = ioupos_loader_next(&l, &bt);
      CHECK(st == 0, "ft next: %s", ioupos_failure_reason());
      if (st) continue;
      CHECK(bt.n == bt.n_images * 3 && bt.image && bt.label && !bt.views[0] && !bt.box[1],
            "ft batch layout: n %d, images %d", bt.n, bt.n_images);
      for (i = 0; i < bt.n; ++i) {
        const float *im = bt.image + (size_t)i * 32 * 32, *lb = bt.label + (size_t)i * 32 * 32;
        const ioupos_box *bx = &bt.box[0][i];
        int j, any_fg = 0, any_bg = 0;
        int k = ssl_k_of_path(ds.images[bt.source[i]]);
        if (!(bx->lo[0] >= 0 && bx->lo[1] >= 0 && bx->hi[0] <= 128 && bx->hi[1] <= 144 &&
              bx->hi[0] - bx->lo[0] == 32 && bx->hi[1] - bx->lo[1] == 32))
          ++bad_box;
        if (i % 3 == 0) {
          ioupos_rng r = sample_rng(c.seed, bt.epoch, bt.source[i], 0);
          int j2, lo[2];
          for (j2 = 0; j2 < 3 && i + j2 < bt.n; ++j2) {
            ref_posneg(k, 128, 144, 32, c.pos, c.neg, &r, lo);
            if (bt.box[0][i + j2].lo[0] != lo[0] || bt.box[0][i + j2].lo[1] != lo[1]) ++bad_ref;
          }
        }
        if (i % 3 == 0 && pass < 3) { /* the augment fragment's RandCropByPosNegLabeld agrees */
          ioupos_rng r = sample_rng(c.seed, bt.epoch, bt.source[i], 0);
          ioupos_posneg_crop pc[3];
          const int cr[2] = {32, 32};
          float *lab = (float *)malloc(128 * 144 * sizeof(float));
          int y, x, j2;
          for (y = 0; y < 128; ++y)
            for (x = 0; x < 144; ++x) lab[y * 144 + x] = (float)ft_label(k, y, x);
          if (ioupos_posneg_crops_draw(&r, lab, NULL, 0.0, 128, 144, cr, c.pos, c.neg, 3, pc) != 0)
            ++bad_aug;
          else
            for (j2 = 0; j2 < 3 && i + j2 < bt.n; ++j2)
              if (memcmp(&pc[j2].box, &bt.box[0][i + j2], sizeof pc[j2].box) != 0) ++bad_aug;
          free(lab);
        }
        if (i % 3 == 0 && i + 2 < bt.n)
          CHECK(bt.source[i] == bt.source[i + 1] && bt.source[i] == bt.source[i + 2],
                "the 3 crops of one image are consecutive");
        for (j = 0; j < 32 * 32; ++j) {
          double v = (double)(pass == 3 ? im[j] : im[j]) * 255.0;
          int L = (int)lb[j];
          /* pass 3 adds < 0.01 to the image: the byte is still recognisable */
          if (fabs(v - (17.0 * L + 3.0)) > (pass == 3 ? 2.6 : 1e-3) || (float)L != lb[j]) ++bad_align;
          if (pass != 3) {
            int y = bx->lo[0] + j / 32, x = bx->lo[1] + j % 32;
            if (ft_label(k, y, x) != L) ++bad_align;
          }
          any_fg |= L > 0;
          any_bg |= L == 0;
        }
        ++crops;
        fg_crops += any_fg;
        if (pass == 1 && !any_fg && k != 5) ++bad_fg; /* image 5 has no foreground */
        if (pass == 2 && !any_bg) ++bad_bg;
      }
    }
    CHECK(bad_align == 0, "pass %d: %d label pixels not aligned with their image pixels", pass,
          bad_align);
    CHECK(bad_box == 0, "pass %d: %d crop boxes outside the image", pass, bad_box);
    CHECK(bad_ref == 0, "pass %d: %d crops differ from MONAI's centre rule on split(S, 0)", pass,
          bad_ref);
    CHECK(bad_aug == 0, "pass %d: %d crops differ from ioupos_posneg_crops_draw (ioupos.h section 7)",
          pass, bad_aug);
    CHECK(bad_fg == 0 && bad_bg == 0, "pass %d: %d pos crops without foreground, %d neg crops "
          "without background", pass, bad_fg, bad_bg);
    if (pass == 0)
      CHECK(fg_crops > crops / 4 && fg_crops < crops, "pos = neg = 1: %d of %d crops show "
            "foreground", fg_crops, crops);
    ioupos_loader_close(&l);
  }
  c.pos = c.neg = 1; /* fine-tuning shards: 6 images, batches 4 and 2 */
  c.augment = aug_test;
  c.num_workers = 0;
  test_shards(&c, "fine-tuning shards");
  /* same batches for 0 and 3 workers (with augmentation on image and label) */
  {
    rec a[4], g[4];
    int i, same = 1;
    c.pos = c.neg = 1;
    c.augment = aug_test;
    c.num_workers = 0;
    if (ioupos_loader_open(&l, &c) == 0) {
      run_batches(&l, 4, a);
      ioupos_loader_close(&l);
      c.num_workers = 3;
      if (ioupos_loader_open(&l, &c) == 0) {
        run_batches(&l, 4, g);
        ioupos_loader_close(&l);
        for (i = 0; i < 4; ++i) {
          if (!rec_equal(&a[i], &g[i], 0) || a[i].status) same = 0;
          rec_free(&g[i]);
        }
      } else same = 0;
      for (i = 0; i < 4; ++i) rec_free(&a[i]);
    } else same = 0;
    CHECK(same, "fine-tuning batches differ between 0 and 3 workers");
  }
  /* a label of another size is an error naming both files */
  {
    uint8_t px[64 * 64] = {0};
    ioupos_batch bt;
    int b, errors = 0;
    write_png("ftl/case_2.png", 64, 64, px);
    c.num_workers = 1;
    c.augment = NULL;
    st = ioupos_loader_open(&l, &c);
    for (b = 0; st == 0 && b < l.batches_per_epoch; ++b) {
      if (ioupos_loader_next(&l, &bt) != 0) {
        ++errors;
        CHECK(contains(ioupos_failure_reason(), "fti/case_2.png") &&
                  contains(ioupos_failure_reason(), "ftl/case_2.png") &&
                  contains(ioupos_failure_reason(), "64x64"),
              "label size error: %s", ioupos_failure_reason());
      }
    }
    CHECK(errors == 1, "label of another size: %d failed batches, want 1", errors);
    if (st == 0) ioupos_loader_close(&l);
  }
  /* fine-tuning without labels */
  {
    ioupos_dataset nol = ds;
    nol.labels = NULL;
    c.dataset = &nol;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == IOUPOS_EINVAL && contains(ioupos_failure_reason(), "label"),
          "fine-tuning without labels: %d %s", st, ioupos_failure_reason());
  }
  ioupos_dataset_free(&ds);
}

/* ---- 6. errors ----------------------------------------------------------------------------- */

/* ioupos_loader_close, timed: its seconds */
static double close_seconds(ioupos_loader *l) {
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  ioupos_loader_close(l);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
}

static void test_errors(void) {
  ioupos_dataset ds;
  ioupos_loader_config c;
  ioupos_loader l;
  char dir[512];
  int st, k, workers;
  make_dir("bad");
  for (k = 0; k < 12; ++k) {
    char rel[64];
    snprintf(rel, sizeof rel, "bad/img_%02d.png", k);
    make_ssl_image(rel, k, 100, 90);
  }
  { /* a truncated PNG in the middle (by name) */
    void *data;
    size_t size;
    char p[512];
    path_of(p, sizeof p, "bad/img_06.png");
    if (ioupos_read_file(p, &data, &size) == 0) {
      write_bytes("bad/img_06.png", data, size / 2);
      free(data);
    }
  }
  path_of(dir, sizeof dir, "bad");
  st = ioupos_dataset_scan(dir, NULL, &ds);
  CHECK(st == 0 && ds.n == 12, "scan bad: %s", ioupos_failure_reason());
  if (st) return;
  ioupos_loader_config_default(&c, &ds, IOUPOS_LOADER_SSL);
  c.batch_size = 3;
  c.crop[0] = c.crop[1] = 32;
  for (workers = 0; workers <= 2; workers += 2) {
    int b, errors = 0, ok = 0, named = 0, epoch;
    c.num_workers = workers;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open: %s", ioupos_failure_reason());
    if (st) continue;
    for (epoch = 0; epoch < 2; ++epoch)
      for (b = 0; b < l.batches_per_epoch; ++b) {
        ioupos_batch bt;
        st = ioupos_loader_next(&l, &bt);
        if (st) {
          ++errors;
          named += st == IOUPOS_EFORMAT && contains(ioupos_failure_reason(), "img_06.png") &&
                   contains(ioupos_failure_reason(), "epoch");
        } else {
          ++ok;
        }
      }
    CHECK(errors == 2 && named == 2 && ok == 6,
          "%d workers: corrupt PNG gave %d failed batches (%d naming it), %d good; want 2, 2, 6; "
          "last reason: %s", workers, errors, named, ok, ioupos_failure_reason());
    ioupos_loader_close(&l);
  }
  /* the augmentation fails on image 3 (its first pixel has value 3 * 31 / 255): named */
  {
    float v;
    int b, errors = 0;
    path_of(dir, sizeof dir, "bad/img_06.png");
    remove(dir);
    path_of(dir, sizeof dir, "bad");
    ioupos_dataset_free(&ds);
    st = ioupos_dataset_scan(dir, NULL, &ds);
    c.dataset = &ds;
    c.augment = aug_fail;
    c.augment_ctx = &v;
    c.num_workers = 2;
    v = -1.0f; /* never matches: all fine */
    if (st == 0 && ioupos_loader_open(&l, &c) == 0) {
      for (b = 0; b < l.batches_per_epoch; ++b) {
        ioupos_batch bt;
        errors += ioupos_loader_next(&l, &bt) != 0;
      }
      CHECK(errors == 0, "aug_fail with no match: %d errors", errors);
      ioupos_loader_close(&l);
    }
    /* crop 32 at any place of image k: fail when the first pixel is ssl_pixel(3, y, x) for the
       pixel at the box corner; simpler: crop the whole image so the corner is (0, 0) */
    c.crop[0] = 100;
    c.crop[1] = 90;
    c.min_iou = c.max_iou = 1.0;
    v = (float)(ssl_pixel(3, 0, 0) / 255.0);
    errors = 0;
    if (st == 0 && ioupos_loader_open(&l, &c) == 0) {
      for (b = 0; b < l.batches_per_epoch; ++b) {
        ioupos_batch bt;
        if (ioupos_loader_next(&l, &bt) != 0) {
          ++errors;
          CHECK(contains(ioupos_failure_reason(), "img_03.png") &&
                    contains(ioupos_failure_reason(), "test failure"),
                "augmentation failure reason: %s", ioupos_failure_reason());
        }
      }
      CHECK(errors == 1, "augmentation failure: %d failed batches, want 1", errors);
      ioupos_loader_close(&l);
    }
    c.augment = NULL;
    c.augment_ctx = NULL;
    c.crop[0] = c.crop[1] = 32;
    c.min_iou = 0.3;
    c.max_iou = 0.6;
  }
  /* an interval no pair of this image can satisfy: error naming the file and the shapes */
  {
    ioupos_batch bt;
    c.crop[0] = 80;
    c.crop[1] = 80;
    c.min_iou = c.max_iou = 0.0; /* 100x90 with 80x80 crops: crops always overlap */
    c.num_workers = 0;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open");
    if (st == 0) {
      st = ioupos_loader_next(&l, &bt);
      CHECK(st == IOUPOS_EINFEASIBLE && contains(ioupos_failure_reason(), ".png") &&
                contains(ioupos_failure_reason(), "100x90"),
            "infeasible interval: %d %s", st, ioupos_failure_reason());
      ioupos_loader_close(&l);
    }
    c.crop[0] = c.crop[1] = 32;
    c.min_iou = 0.3;
    c.max_iou = 0.6;
  }
  /* smaller than one batch with drop_last: error at open, not a crash */
  c.batch_size = 64;
  c.drop_last = 1;
  st = ioupos_loader_open(&l, &c);
  CHECK(st == IOUPOS_EINVAL && contains(ioupos_failure_reason(), "11 images") &&
            contains(ioupos_failure_reason(), "64"),
        "smaller than a batch: %d %s", st, ioupos_failure_reason());
  ioupos_loader_close(&l); /* harmless on a failed open */
  c.drop_last = 0;
  st = ioupos_loader_open(&l, &c);
  CHECK(st == 0 && l.batches_per_epoch == 1, "without drop_last one short batch");
  if (st == 0) {
    ioupos_batch bt;
    st = ioupos_loader_next(&l, &bt);
    CHECK(st == 0 && bt.n == 11, "short batch: %d pairs", bt.n);
    ioupos_loader_close(&l);
  }
  /* bad configurations */
  {
    ioupos_loader_config b = c;
    b.batch_size = 0;
    CHECK(ioupos_loader_open(&l, &b) == IOUPOS_EINVAL, "batch 0");
    b = c, b.min_iou = 0.7, b.max_iou = 0.6;
    CHECK(ioupos_loader_open(&l, &b) == IOUPOS_EINVAL && contains(ioupos_failure_reason(), "0.7"),
          "reversed interval: %s", ioupos_failure_reason());
    b = c, b.num_workers = -1;
    CHECK(ioupos_loader_open(&l, &b) == IOUPOS_EINVAL, "negative workers");
    b = c, b.kind = 7;
    CHECK(ioupos_loader_open(&l, &b) == IOUPOS_EINVAL, "unknown kind");
    b = c, b.dataset = NULL;
    CHECK(ioupos_loader_open(&l, &b) == IOUPOS_EINVAL, "no data set");
  }
  /* close with workers blocked on a full ring, after one batch, and right after open: each
     returns at once (a close that never returns is caught by tests/run.sh's time limit, which
     names this test) */
  {
    ioupos_batch bt;
    double el;
    c.batch_size = 2;
    c.num_workers = 3;
    c.prefetch = 2;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open");
    if (st == 0) {
      struct timespec ts = {0, 50000000};
      nanosleep(&ts, NULL); /* let the ring fill: 3 workers, 2 slots */
      el = close_seconds(&l);
      CHECK(el < 10.0, "close with workers blocked on a full ring took %.1f s", el);
    }
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open after a close");
    if (st == 0) {
      CHECK(ioupos_loader_next(&l, &bt) == 0, "next");
      el = close_seconds(&l);
      CHECK(el < 10.0, "close after one batch took %.1f s", el);
    }
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open after two closes");
    if (st == 0) {
      el = close_seconds(&l);
      CHECK(el < 10.0, "close right after open took %.1f s", el);
    }
  }
  ioupos_dataset_free(&ds);
}


/* ---- 7. the default augmentation adapters (ioupos.h section 7) ------------------------------------ */

static void test_adapters(const ioupos_dataset *ssl) {
  ioupos_loader_config c = ssl_config(ssl);
  ioupos_loader l;
  rec a[3], g[3];
  int st, b, i, bad = 0, checked = 0, same = 1;
  size_t hw;
  float *want, *tmp;
  c.crop[0] = c.crop[1] = 48;
  hw = 48 * 48;
  want = (float *)malloc(hw * sizeof(float));
  tmp = (float *)malloc(4 * hw * sizeof(float));
  c.augment = ioupos_augment_pretrain_view;
  c.num_workers = 2;
  st = ioupos_loader_open(&l, &c);
  CHECK(st == 0, "open: %s", ioupos_failure_reason());
  for (b = 0; st == 0 && b < 3; ++b) {
    ioupos_batch bt;
    if (ioupos_loader_next(&l, &bt) != 0) { CHECK(0, "next: %s", ioupos_failure_reason()); continue; }
    rec_take(&a[b], 0, &bt);
    for (i = 0; i < bt.n; ++i) {
      int v, d = bt.source[i], k = ssl_k_of_path(ssl->images[d]);
      for (v = 0; v < 2; ++v) {
        const ioupos_box *bx = &bt.box[v][i];
        ioupos_view_params p;
        ioupos_rng r = sample_rng(c.seed, bt.epoch, d, 1u + (uint64_t)v);
        size_t y, x;
        for (y = 0; y < 48; ++y)
          for (x = 0; x < 48; ++x)
            want[y * 48 + x] = (float)(ssl_pixel(k, bx->lo[0] + (int)y, bx->lo[1] + (int)x) / 255.0);
        ioupos_view_params_draw(&r, &p);
        if (ioupos_view_apply(&p, want, 48, 48, tmp) != 0 ||
            memcmp(want, bt.views[v] + (size_t)i * hw, hw * sizeof(float)) != 0)
          ++bad;
        ++checked;
      }
    }
  }
  if (st == 0) ioupos_loader_close(&l);
  CHECK(checked > 0 && bad == 0, "pretrain adapter: %d of %d views differ from "
        "ioupos_view_params_draw + ioupos_view_apply on split(S, 1 + v)", bad, checked);
  c.num_workers = 0;
  if (ioupos_loader_open(&l, &c) == 0) {
    run_batches(&l, 3, g);
    ioupos_loader_close(&l);
    for (i = 0; i < 3; ++i) {
      if (!rec_equal(&a[i], &g[i], 1)) same = 0;
      rec_free(&g[i]);
    }
  } else same = 0;
  for (i = 0; i < 3; ++i) rec_free(&a[i]);
  CHECK(same, "pretrain adapter: 0 and 2 workers differ");

  { /* fine-tuning adapter: label crops are the raw label crops through the same spatial draws */
    ioupos_dataset ds;
    char idir[512], ldir[512];
    float *wl = (float *)malloc(hw * sizeof(float));
    int bad_l = 0, n = 0;
    path_of(idir, sizeof idir, "fti");
    path_of(ldir, sizeof ldir, "ftl");
    /* ftl/case_2.png was replaced by a 64x64 label in test_finetune: rewrite it */
    {
      uint8_t *lb = (uint8_t *)malloc(128 * 144);
      int y, x;
      for (y = 0; y < 128; ++y)
        for (x = 0; x < 144; ++x) lb[y * 144 + x] = (uint8_t)ft_label(2, y, x);
      write_png("ftl/case_2.png", 128, 144, lb);
      free(lb);
    }
    if (ioupos_dataset_scan(idir, ldir, &ds) == 0) {
      ioupos_loader_config_default(&c, &ds, IOUPOS_LOADER_FINETUNE);
      c.batch_size = 3;
      c.crop[0] = c.crop[1] = 48;
      c.seed = 3;
      c.augment = ioupos_augment_finetune_crop;
      c.num_workers = 1;
      st = ioupos_loader_open(&l, &c);
      CHECK(st == 0, "ft adapter open: %s", ioupos_failure_reason());
      for (b = 0; st == 0 && b < 4; ++b) {
        ioupos_batch bt;
        if (ioupos_loader_next(&l, &bt) != 0) { CHECK(0, "next: %s", ioupos_failure_reason()); continue; }
        for (i = 0; i < bt.n; ++i) {
          int d = bt.source[i], k = ssl_k_of_path(ds.images[d]);
          const ioupos_box *bx = &bt.box[0][i];
          ioupos_view_params p;
          ioupos_aug_config cf;
          ioupos_rng r = sample_rng(c.seed, bt.epoch, d, 1u + (uint64_t)(i % 2));
          size_t y, x;
          for (y = 0; y < 48; ++y)
            for (x = 0; x < 48; ++x) {
              int L = ft_label(k, bx->lo[0] + (int)y, bx->lo[1] + (int)x);
              wl[y * 48 + x] = (float)L;
              want[y * 48 + x] = (float)((17 * L + 3) / 255.0);
            }
          ioupos_aug_config_finetune(&cf);
          ioupos_view_params_draw_config(&cf, &r, &p);
          if (ioupos_view_apply_labelled(&p, want, wl, 48, 48, tmp) != 0 ||
              memcmp(wl, bt.label + (size_t)i * hw, hw * sizeof(float)) != 0 ||
              memcmp(want, bt.image + (size_t)i * hw, hw * sizeof(float)) != 0)
            ++bad_l;
          ++n;
        }
      }
      if (st == 0) ioupos_loader_close(&l);
      ioupos_dataset_free(&ds);
    }
    CHECK(n > 0 && bad_l == 0, "fine-tuning adapter: %d of %d crops differ from "
          "ioupos_view_apply_labelled on split(S, 1 + j)", bad_l, n);
    free(wl);
  }
  free(want);
  free(tmp);
}

int main(void) {
  ioupos_dataset ds;
  char dir[512];
  const char *tmp = getenv("TMPDIR");
  snprintf(g_root, sizeof g_root, "%s/ioupos_test_data.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g_root)) {
    printf("test_data: cannot create a temporary folder %s\n", g_root);
    return 1;
  }
  test_scan();
  make_ssl_data();
  path_of(dir, sizeof dir, "ssl");
  if (ioupos_dataset_scan(dir, NULL, &ds) == 0) {
    test_ssl(&ds);
    test_determinism(&ds);
    test_contract_ssl(&ds);
    test_golden(&ds);
    test_multicrop(&ds);
    {
      ioupos_loader_config c = mc_config(&ds); /* 11 images: batches 4, 4, 3 */
      c.augment = aug_test;
      test_shards(&c, "SSL shards");
    }
    ioupos_dataset_free(&ds);
  } else {
    CHECK(0, "scan ssl: %s", ioupos_failure_reason());
  }
  test_small();
  make_ft_data();
  test_finetune();
  path_of(dir, sizeof dir, "ssl");
  if (ioupos_dataset_scan(dir, NULL, &ds) == 0) {
    test_adapters(&ds);
    test_multicrop_errors(&ds);
    ioupos_dataset_free(&ds);
  }
  test_errors();
  remove_tree(g_root);
  return tu_finish("test_data");
}
