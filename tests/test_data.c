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
#define IOUPOS_IMPLEMENTATION
#include "ioupos.h"
#include "test_util.h"

#include <dirent.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- temporary folders --------------------------------------------------------------------- */

static char g_root[256];

static void path_of(char *buf, size_t cap, const char *rel) {
  snprintf(buf, cap, "%s/%s", g_root, rel);
}

static void make_dir(const char *rel) {
  char p[512];
  path_of(p, sizeof p, rel);
  if (mkdir(p, 0755) != 0) {
    printf("test_data: cannot create %s\n", p);
    exit(1);
  }
}

static void remove_tree(const char *path) {
  DIR *d = opendir(path);
  struct dirent *e;
  if (!d) {
    remove(path);
    return;
  }
  while ((e = readdir(d)) != NULL) {
    char p[1024];
    struct stat sb;
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    snprintf(p, sizeof p, "%s/%s", path, e->d_name);
    if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) remove_tree(p);
    else remove(p);
  }
  closedir(d);
  rmdir(path);
}

static void write_bytes(const char *rel, const void *data, size_t n) {
  char p[512];
  FILE *f;
  path_of(p, sizeof p, rel);
  f = fopen(p, "wb");
  if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
    printf("test_data: cannot write %s\n", p);
    exit(1);
  }
}

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
}

static void rec_free(rec *r) {
  free(r->f);
  free(r->src);
  free(r->box);
  memset(r, 0, sizeof *r);
}

static int rec_equal(const rec *a, const rec *b, int ssl) {
  if (a->status != b->status) return 0;
  if (a->status) return 1;
  return a->epoch == b->epoch && a->index == b->index && a->n == b->n && a->nf == b->nf &&
         !memcmp(a->f, b->f, a->nf * sizeof(float)) &&
         !memcmp(a->src, b->src, (size_t)a->n * sizeof(int)) &&
         !memcmp(a->box, b->box, (size_t)a->n * (ssl ? 2 : 1) * sizeof(ioupos_box));
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
    char tag[32];
    snprintf(tag, sizeof tag, "%s", "test failure");
    return ioupos__fail(IOUPOS_EINVAL, "%s", tag);
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
  /* close with workers blocked on a full ring, and close right after open: no hang */
  {
    ioupos_batch bt;
    c.batch_size = 2;
    c.num_workers = 3;
    c.prefetch = 2;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open");
    if (st == 0) {
      struct timespec ts = {0, 50000000};
      nanosleep(&ts, NULL); /* let the ring fill: 3 workers, 2 slots */
      ioupos_loader_close(&l);
    }
    st = ioupos_loader_open(&l, &c);
    if (st == 0) {
      CHECK(ioupos_loader_next(&l, &bt) == 0, "next");
      ioupos_loader_close(&l);
    }
    st = ioupos_loader_open(&l, &c);
    if (st == 0) ioupos_loader_close(&l);
    CHECK(1, "closing never hangs");
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
    ioupos_dataset_free(&ds);
  }
  test_errors();
  remove_tree(g_root);
  return tu_finish("test_data");
}
