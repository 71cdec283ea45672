/* tests/test_volume_loader.c — volume data sets and the loader in 3D (ioupos.h section 9).

   Every test writes its own NIfTI volumes (ioupos_nifti_write; one set made with
   ioupos_phantom_make) into a fresh temporary folder and removes it at the end. A pattern
   volume's voxel (x, y, z) of case k holds 1 + k 10^6 + x 10^4 + y 100 + z (exact in float32),
   so any crop can be checked voxel by voxel against its box (0: padding).
   1. Scan: *.nii and *.nii.gz (any case of the extension) in strcmp order, dot-files, folders
      and other files skipped, spatial_dims 3; an empty folder, a missing label and an extra
      label are errors naming them; a 2D loader on a volume set and a 3D loader on a PNG set
      are refused at open, naming spatial_dims.
   2. SSL pairs in 3D: every pair's boxes have the crop size (per axis), lie inside the volume
      padded to the crop, and have an IoU in [min_iou, max_iou]; every view equals the volume at
      its box in (X, Y, Z) order, z fastest, 0 outside; each volume once per epoch; the batch
      says spatial_dims 3 and the crop sizes; augment3 gets each view's shape.
   3. Determinism: bit-identical batches for 0, 1, 3 workers (and a one-slot ring), with an
      augmentation that draws from its rng; resume at (epoch, batch) with a fresh loader and by
      seeking back gives the uninterrupted run's batches; another seed differs.
   4. The volume cache: budgets of 0, 1 byte, one volume and 1 GiB give the same batches; with
      the files moved away after one epoch, a loader whose budget holds every volume still
      makes the next epoch (the cache serves it, bit-identical), one with no budget fails
      naming the file, one whose budget holds one volume fails on some.
   5. Multi-crop in 3D: local boxes of the local size, inside the padded volume, IoU with view
      0's box in the local interval, values equal to the volume; same for 0 and 2 workers.
   5b. The contract: fine-tuning boxes are MONAI's RandCropByPosNegLabeld draws (an
      independent reference over the padded volume, raster order z fastest) from split(S, 0);
      SSL pairs the 3D sampler's draw on the padded shape from split(S, 0), views augment3
      of the raw crop with split(S, 1 + v).
   6. Fine-tuning crops in 3D: label crops aligned with image crops, boxes inside the padded
      volume, pos-only crops hold foreground, neg-only crops background; same for 0 and 2
      workers; on the phantom, pos-only crops hold organ voxels; on real CT ($IOUPOS_DATA,
      skipped when absent) crops equal the volume read by ioupos_nifti_read at their boxes.
   7. Errors: a corrupt .nii.gz gives failed batches naming it and the others are good (0 and 2
      workers); pad_small 0 with a volume smaller than the crop names the file and both shapes;
      a label of another shape names both files and shapes; a failing augment3 names the file;
      the pre-flight check names the corrupt file, the small volume and the bad label at once. */
#include "ioupos.h"
#include "test_util.h"

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/tmp_tree.h"

static int contains(const char *hay, const char *needle) { return strstr(hay, needle) != NULL; }

static float pattern(int k, int x, int y, int z) {
  return (float)(1 + k * 1000000 + x * 10000 + y * 100 + z);
}

/* label of the fine-tuning cases: a small block of ids 1, 2 (about 3 % of the voxels) */
static int ft_label(int x, int y, int z) {
  return (x >= 10 && x < 16 && y >= 8 && y < 14 && z >= 4 && z < 10) ? 1 + (z & 1) : 0;
}

/* ft_label on a volume of shape[], 0 outside (padding) */
static int padded_label(int x, int y, int z, const int shape[3]) {
  if (x < 0 || y < 0 || z < 0 || x >= shape[0] || y >= shape[1] || z >= shape[2]) return 0;
  return ft_label(x, y, z);
}

static void write_volume(const char *rel, int nx, int ny, int nz, int k, int label) {
  ioupos_volume v;
  char p[512];
  int x, y, z;
  path_of(p, sizeof p, rel);
  if (ioupos_volume_alloc(&v, nx, ny, nz) != 0) {
    printf("test_volume_loader: %s\n", ioupos_failure_reason());
    exit(1);
  }
  for (z = 0; z < nz; ++z)
    for (y = 0; y < ny; ++y)
      for (x = 0; x < nx; ++x)
        v.data[((size_t)z * ny + y) * nx + x] = label ? (float)ft_label(x, y, z) : pattern(k, x, y, z);
  if (ioupos_nifti_write(p, &v, label ? IOUPOS_NIFTI_UINT8 : IOUPOS_NIFTI_FLOAT32) != 0) {
    printf("test_volume_loader: %s\n", ioupos_failure_reason());
    exit(1);
  }
  ioupos_volume_free(&v);
}

static int case_of(const char *path) { /* files are ".../v_<k>.nii[.gz]" */
  const char *p = strrchr(path, '_');
  return p ? atoi(p + 1) : -1;
}

/* Does out (c[0] x c[1] x c[2], z fastest) equal case k's volume of shape[] at box lo[]? */
static int crop_matches(const float *out, int k, const int shape[3], const int lo[3],
                        const int c[3], int label) {
  int x, y, z;
  for (x = 0; x < c[0]; ++x)
    for (y = 0; y < c[1]; ++y)
      for (z = 0; z < c[2]; ++z) {
        int sx = lo[0] + x, sy = lo[1] + y, sz = lo[2] + z;
        int in = sx >= 0 && sx < shape[0] && sy >= 0 && sy < shape[1] && sz >= 0 && sz < shape[2];
        float want = !in ? 0.0f : label ? (float)ft_label(sx, sy, sz) : pattern(k, sx, sy, sz);
        if (out[((size_t)x * c[1] + y) * c[2] + z] != want) return 0;
      }
  return 1;
}

/* box of size c inside the volume padded to at least pad[] (floor(d / 2) before) */
static int box_ok(const ioupos_box *b, const int shape[3], const int c[3], const int pad[3]) {
  int k;
  if (b->dims != 3) return 0;
  for (k = 0; k < 3; ++k) {
    int P = shape[k] > pad[k] ? shape[k] : pad[k], off = (P - shape[k]) / 2;
    if (b->hi[k] - b->lo[k] != c[k] || b->lo[k] < -off || b->hi[k] > P - off) return 0;
  }
  return 1;
}

/* ---- batch records ------------------------------------------------------------------------- */

typedef struct rec {
  int status, epoch, index, n;
  size_t nf, nlf, nl; /* floats of the views, of the local views; local boxes */
  float *f, *lf;
  int *src;
  ioupos_box *box, *lbox;
  char reason[640];
} rec;

static void rec_take(rec *r, int status, const ioupos_batch *b) {
  size_t vox, nl;
  int ssl;
  memset(r, 0, sizeof *r);
  r->status = status;
  if (status) {
    snprintf(r->reason, sizeof r->reason, "%s", ioupos_failure_reason());
    return;
  }
  ssl = b->kind == IOUPOS_LOADER_SSL;
  r->epoch = b->epoch;
  r->index = b->index;
  r->n = b->n;
  vox = (size_t)b->crop[0] * b->crop[1] * b->crop[2];
  r->nf = 2 * (size_t)b->n * vox;
  r->f = (float *)malloc(r->nf * sizeof(float) + 1);
  memcpy(r->f, ssl ? b->views[0] : b->image, r->nf / 2 * sizeof(float));
  memcpy(r->f + r->nf / 2, ssl ? b->views[1] : b->label, r->nf / 2 * sizeof(float));
  r->src = (int *)malloc((size_t)b->n * sizeof(int) + 1);
  memcpy(r->src, b->source, (size_t)b->n * sizeof(int));
  r->box = (ioupos_box *)calloc(2 * (size_t)b->n + 1, sizeof(ioupos_box));
  memcpy(r->box, b->box[0], (size_t)b->n * sizeof(ioupos_box));
  if (ssl) memcpy(r->box + b->n, b->box[1], (size_t)b->n * sizeof(ioupos_box));
  nl = (size_t)b->n_local * (size_t)b->n;
  r->nl = nl;
  if (nl) {
    r->nlf = nl * (size_t)b->local_crop[0] * b->local_crop[1] * b->local_crop[2];
    r->lf = (float *)malloc(r->nlf * sizeof(float));
    memcpy(r->lf, b->local, r->nlf * sizeof(float));
    r->lbox = (ioupos_box *)malloc(nl * sizeof(ioupos_box));
    memcpy(r->lbox, b->local_box, nl * sizeof(ioupos_box));
  }
}

static void rec_free(rec *r) {
  free(r->f);
  free(r->lf);
  free(r->src);
  free(r->box);
  free(r->lbox);
  memset(r, 0, sizeof *r);
}

static int rec_equal(const rec *a, const rec *b) {
  if (a->status != b->status) return 0;
  if (a->status) return 1;
  return a->epoch == b->epoch && a->index == b->index && a->n == b->n && a->nf == b->nf &&
         a->nlf == b->nlf && a->nl == b->nl && !memcmp(a->f, b->f, a->nf * sizeof(float)) &&
         !memcmp(a->src, b->src, (size_t)a->n * sizeof(int)) &&
         !memcmp(a->box, b->box, 2 * (size_t)a->n * sizeof(ioupos_box)) &&
         (a->nlf == 0 || (!memcmp(a->lf, b->lf, a->nlf * sizeof(float)) &&
                          !memcmp(a->lbox, b->lbox, a->nl * sizeof(ioupos_box))));
}

static void run_batches(ioupos_loader *l, int count, rec *recs) {
  int i;
  for (i = 0; i < count; ++i) {
    ioupos_batch b;
    int st = ioupos_loader_next(l, &b);
    rec_take(&recs[i], st, &b);
  }
}

/* Runs cfg from (0, 0) for count batches and compares with ref; 1 when all equal. */
static int same_stream(const ioupos_loader_config *cfg, const rec *ref, int count) {
  ioupos_loader l;
  rec *got = (rec *)calloc((size_t)count, sizeof(rec));
  int i, same = 1;
  if (ioupos_loader_open(&l, cfg) != 0) {
    printf("open: %s\n", ioupos_failure_reason());
    free(got);
    return 0;
  }
  run_batches(&l, count, got);
  ioupos_loader_close(&l);
  for (i = 0; i < count; ++i) {
    if (!rec_equal(&ref[i], &got[i])) same = 0;
    rec_free(&got[i]);
  }
  free(got);
  return same;
}

/* A 3D test augmentation that uses its rng: adds one draw to every voxel and reverses the
   crop (and its label) when a second draw says so. It also checks that the shape it is given
   is one the loader should pass (ctx: the allowed shapes, 2 of them), counting mismatches. */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_bad_shape, g_calls;
static int aug3_test(void *ctx, ioupos_rng *rng, float *img, float *label, const int shape[3],
                     float *scratch) {
  const int *ok = (const int *)ctx;
  size_t i, n = (size_t)shape[0] * shape[1] * shape[2];
  float add = (float)ioupos_rng_uniform(rng) * 0.01f;
  int flip = (int)ioupos_rng_below(rng, 2);
  int good = !ok || (shape[0] == ok[0] && shape[1] == ok[1] && shape[2] == ok[2]) ||
             (shape[0] == ok[3] && shape[1] == ok[4] && shape[2] == ok[5]);
  pthread_mutex_lock(&g_mu);
  g_bad_shape += !good;
  ++g_calls;
  pthread_mutex_unlock(&g_mu);
  for (i = 0; i < n; ++i) scratch[i] = img[i] + add;
  for (i = 0; i < n; ++i) img[i] = flip ? scratch[n - 1 - i] : scratch[i];
  if (label && flip) {
    for (i = 0; i < n; ++i) scratch[i] = label[n - 1 - i];
    memcpy(label, scratch, n * sizeof(float));
  }
  return 0;
}

/* fails on case *ctx's views (the first voxel of an unpadded crop names its case) */
static int aug3_fail(void *ctx, ioupos_rng *rng, float *img, float *label, const int shape[3],
                     float *scratch) {
  (void)rng, (void)label, (void)shape, (void)scratch;
  if ((int)((img[0] - 1.0f) / 1000000.0f) == *(const int *)ctx && img[0] != 0.0f) {
    ioupos_volume v;
    return ioupos_nifti_read_memory("x", 1, "test failure", &v);
  }
  return 0;
}

/* ---- 1. Scan -------------------------------------------------------------------------------- */

static void test_scan(void) {
  ioupos_dataset ds;
  ioupos_loader_config c;
  ioupos_loader l;
  char dir[512], lab[512];
  int st;
  make_dir("scan");
  make_dir("scan/labels");
  make_dir("scan/sub.nii"); /* a folder: skipped */
  make_dir("empty");
  write_volume("scan/b.nii.gz", 4, 4, 4, 0, 0);
  write_volume("scan/a.nii", 4, 4, 4, 0, 0);
  write_volume("scan/C.NII.GZ", 4, 4, 4, 0, 0);
  write_volume("scan/.hidden.nii.gz", 4, 4, 4, 0, 0);
  write_bytes("scan/notes.txt", "x", 1);
  write_bytes("scan/x.nii.gz.bak", "x", 1);
  write_volume("scan/labels/a.nii", 4, 4, 4, 0, 1);
  write_volume("scan/labels/b.nii.gz", 4, 4, 4, 0, 1);
  path_of(dir, sizeof dir, "scan");
  st = ioupos_dataset_scan_volumes(dir, NULL, &ds);
  CHECK(st == 0 && ds.n == 3 && ds.spatial_dims == 3 && !ds.labels,
        "scan: st %d n %d dims %d: %s", st, ds.n, ds.spatial_dims, ioupos_failure_reason());
  if (st == 0 && ds.n == 3)
    CHECK(contains(ds.images[0], "/C.NII.GZ") && contains(ds.images[1], "/a.nii") &&
              contains(ds.images[2], "/b.nii.gz"),
          "strcmp order: %s %s %s", ds.images[0], ds.images[1], ds.images[2]);
  ioupos_dataset_free(&ds);
  /* C has no label: named with both sides */
  path_of(lab, sizeof lab, "scan/labels");
  st = ioupos_dataset_scan_volumes(dir, lab, &ds);
  CHECK(st == IOUPOS_EINVAL && contains(ioupos_failure_reason(), "C.NII.GZ has no label") &&
            ds.n == 0,
        "missing label: %d %s", st, ioupos_failure_reason());
  write_volume("scan/labels/C.NII.GZ", 4, 4, 4, 0, 1);
  write_volume("scan/labels/d.nii.gz", 4, 4, 4, 0, 1);
  st = ioupos_dataset_scan_volumes(dir, lab, &ds);
  CHECK(st == IOUPOS_EINVAL && contains(ioupos_failure_reason(), "d.nii.gz has no image"),
        "extra label: %d %s", st, ioupos_failure_reason());
  path_of(dir, sizeof dir, "empty");
  st = ioupos_dataset_scan_volumes(dir, NULL, &ds);
  CHECK(st == IOUPOS_EINVAL && contains(ioupos_failure_reason(), dir) &&
            contains(ioupos_failure_reason(), ".nii"),
        "empty folder: %d %s", st, ioupos_failure_reason());
  /* a 3D loader refuses a PNG set, a 2D loader a volume set */
  {
    unsigned char px[16 * 16] = {0};
    char p[512];
    path_of(p, sizeof p, "empty/s.png");
    ioupos_png_write(p, 16, 16, 1, px);
    st = ioupos_dataset_scan(dir, NULL, &ds);
    CHECK(st == 0 && ds.spatial_dims == 2, "png scan: %s", ioupos_failure_reason());
    ioupos_loader_config_default(&c, &ds, IOUPOS_LOADER_SSL);
    c.spatial_dims = 3;
    c.batch_size = 1;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == IOUPOS_EINVAL && contains(ioupos_failure_reason(), "spatial_dims"),
          "3D loader on PNGs: %d %s", st, ioupos_failure_reason());
    ioupos_dataset_free(&ds);
    path_of(dir, sizeof dir, "scan");
    ioupos_dataset_scan_volumes(dir, NULL, &ds);
    ioupos_loader_config_default(&c, &ds, IOUPOS_LOADER_SSL);
    c.batch_size = 1;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == IOUPOS_EINVAL && contains(ioupos_failure_reason(), "spatial_dims"),
          "2D loader on volumes: %d %s", st, ioupos_failure_reason());
    c.spatial_dims = 4;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == IOUPOS_EINVAL, "spatial_dims 4 must be refused");
    c.spatial_dims = 3;
    c.crop[2] = 0;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == IOUPOS_EINVAL && contains(ioupos_failure_reason(), "crop"),
          "crop z 0: %d %s", st, ioupos_failure_reason());
    ioupos_dataset_free(&ds);
  }
}

/* ---- 2-5. SSL ------------------------------------------------------------------------------- */

#define VN 7
static const int vshape[VN][3] = {{40, 36, 30}, {32, 32, 24}, {48, 40, 12}, {16, 30, 20},
                                  {36, 30, 28}, {24, 44, 18}, {40, 36, 30}};

static void make_vol_data(void) {
  int k;
  make_dir("vol");
  for (k = 0; k < VN; ++k) {
    char rel[64];
    snprintf(rel, sizeof rel, k % 2 ? "vol/v_%d.nii" : "vol/v_%d.nii.gz", k);
    write_volume(rel, vshape[k][0], vshape[k][1], vshape[k][2], k, 0);
  }
}

static ioupos_loader_config vol_config(const ioupos_dataset *ds) {
  ioupos_loader_config c;
  ioupos_loader_config_default(&c, ds, IOUPOS_LOADER_SSL);
  c.spatial_dims = 3;
  c.batch_size = 3;
  c.crop[0] = 20;
  c.crop[1] = 20;
  c.crop[2] = 16; /* case 2 (z 12) is zero-padded in z */
  c.min_iou = 0.3;
  c.max_iou = 0.6;
  c.seed = 4242;
  c.drop_last = 0;
  return c;
}

static void test_ssl(const ioupos_dataset *ds) {
  ioupos_loader_config c = vol_config(ds);
  ioupos_loader l;
  int st, e, bad_box = 0, bad_iou = 0, bad_view = 0, pairs = 0, bad_count = 0, k;
  int seen[2][VN];
  memset(seen, 0, sizeof seen);
  st = ioupos_loader_open(&l, &c);
  CHECK(st == 0, "open 3D SSL: %s", ioupos_failure_reason());
  if (st) return;
  CHECK(l.batches_per_epoch == 3, "batches per epoch %d, want 3", l.batches_per_epoch);
  for (e = 0; e < 2; ++e) {
    int b;
    for (b = 0; b < l.batches_per_epoch; ++b) {
      ioupos_batch bt;
      int i;
      st = ioupos_loader_next(&l, &bt);
      CHECK(st == 0, "batch (%d, %d): %s", e, b, ioupos_failure_reason());
      if (st) continue;
      CHECK(bt.spatial_dims == 3 && bt.crop[0] == 20 && bt.crop[1] == 20 && bt.crop[2] == 16 &&
                bt.n == bt.n_images && bt.views[0] && bt.views[1] && !bt.image,
            "batch fields: dims %d crop %dx%dx%d", bt.spatial_dims, bt.crop[0], bt.crop[1],
            bt.crop[2]);
      for (i = 0; i < bt.n; ++i) {
        int d = bt.source[i], v;
        double iou = ioupos_box_iou(&bt.box[0][i], &bt.box[1][i]);
        k = case_of(ds->images[d]);
        ++pairs;
        if (k >= 0 && k < VN) ++seen[e][k];
        if (iou < c.min_iou || iou > c.max_iou) ++bad_iou;
        for (v = 0; v < 2; ++v) {
          if (!box_ok(&bt.box[v][i], vshape[k], c.crop, c.crop)) ++bad_box;
          if (!crop_matches(bt.views[v] + (size_t)i * 20 * 20 * 16, k, vshape[k],
                            bt.box[v][i].lo, c.crop, 0))
            ++bad_view;
        }
      }
    }
  }
  for (e = 0; e < 2; ++e)
    for (k = 0; k < VN; ++k) bad_count += seen[e][k] != 1;
  CHECK(pairs == 2 * VN, "%d pairs in 2 epochs, want %d", pairs, 2 * VN);
  CHECK(bad_iou == 0, "%d of %d pairs outside [%g, %g]", bad_iou, pairs, c.min_iou, c.max_iou);
  CHECK(bad_box == 0, "%d boxes of the wrong size or outside the (padded) volume", bad_box);
  CHECK(bad_view == 0, "%d views differ from the volume at their box", bad_view);
  CHECK(bad_count == 0, "%d (epoch, volume) seen other than once", bad_count);
  ioupos_loader_close(&l);
  /* many pairs on one volume: every one in the interval (the exact sampler, never a fallback) */
  {
    int viol = 0, n = 0, e2;
    c.batch_size = VN;
    c.min_iou = 0.5;
    c.max_iou = 0.7;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open: %s", ioupos_failure_reason());
    for (e2 = 0; st == 0 && e2 < 40; ++e2) {
      ioupos_batch bt;
      int i;
      if (ioupos_loader_next(&l, &bt) != 0) {
        ++viol;
        continue;
      }
      for (i = 0; i < bt.n; ++i, ++n) {
        double iou = ioupos_box_iou(&bt.box[0][i], &bt.box[1][i]);
        if (!(iou >= 0.5 && iou <= 0.7)) ++viol;
      }
    }
    CHECK(viol == 0 && n == 40 * VN, "[0.5, 0.7]: %d violations or failed batches in %d pairs",
          viol, n);
    ioupos_loader_close(&l);
  }
}

static void test_determinism(const ioupos_dataset *ds) {
  enum { TOTAL = 9 }; /* 3 epochs of 3 batches */
  const int shapes[6] = {20, 20, 16, 20, 20, 16};
  ioupos_loader_config c = vol_config(ds);
  rec ref[TOTAL], got[TOTAL];
  ioupos_loader l;
  int st, i, aug;
  for (aug = 0; aug < 2; ++aug) {
    int w;
    c.augment3 = aug ? aug3_test : NULL;
    c.augment3_ctx = (void *)shapes;
    c.num_workers = 0;
    c.prefetch = 0;
    g_bad_shape = g_calls = 0;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open: %s", ioupos_failure_reason());
    if (st) return;
    run_batches(&l, TOTAL, ref);
    ioupos_loader_close(&l);
    for (i = 0; i < TOTAL; ++i) CHECK(ref[i].status == 0, "reference batch %d: %s", i, ref[i].reason);
    if (aug)
      CHECK(g_calls == 2 * 3 * VN && g_bad_shape == 0,
            "augment3 called %d times (want %d), %d with another shape", g_calls, 2 * 3 * VN,
            g_bad_shape);
    for (w = 0; w < 3; ++w) {
      c.num_workers = w == 0 ? 1 : 3;
      c.prefetch = w == 2 ? 1 : 0;
      CHECK(same_stream(&c, ref, TOTAL), "aug %d: %d workers (prefetch %d) differ from 0 workers",
            aug, c.num_workers, c.prefetch);
    }
    /* the cache changes nothing: no cache, 1 byte, one volume's worth, 1 GiB */
    {
      const size_t budgets[3] = {0, 1, 40 * 36 * 30 * sizeof(float)};
      int bi;
      for (bi = 0; bi < 3; ++bi) {
        c.cache_bytes = budgets[bi];
        c.num_workers = bi == 2 ? 2 : 0;
        CHECK(same_stream(&c, ref, TOTAL), "aug %d: cache_bytes %zu (%d workers) gives other "
              "batches than 1 GiB", aug, budgets[bi], c.num_workers);
      }
      c.cache_bytes = (size_t)1 << 30;
    }
    if (aug) { /* another seed differs */
      c.seed = 7;
      c.num_workers = 0;
      CHECK(!same_stream(&c, ref, 1), "seed 7 gives the batches of seed 4242");
      c.seed = 4242;
    }
    /* resume at (1, 2) with a fresh loader; seek back to (0, 1) */
    for (w = 0; w <= 2; w += 2) {
      int same = 1;
      c.num_workers = w;
      st = ioupos_loader_open(&l, &c);
      CHECK(st == 0, "open: %s", ioupos_failure_reason());
      if (st) continue;
      st = ioupos_loader_seek(&l, 1, 2);
      CHECK(st == 0 && l.epoch == 1 && l.batch == 2, "seek(1, 2)");
      run_batches(&l, TOTAL - 5, got);
      for (i = 0; i < TOTAL - 5; ++i) {
        same &= rec_equal(&ref[5 + i], &got[i]);
        rec_free(&got[i]);
      }
      CHECK(same, "aug %d, %d workers: resume at (1, 2) differs", aug, w);
      st = ioupos_loader_seek(&l, 0, 1);
      run_batches(&l, 4, got);
      same = st == 0;
      for (i = 0; i < 4; ++i) {
        same &= rec_equal(&ref[1 + i], &got[i]);
        rec_free(&got[i]);
      }
      CHECK(same, "aug %d, %d workers: seek back to (0, 1) differs", aug, w);
      ioupos_loader_close(&l);
    }
    for (i = 0; i < TOTAL; ++i) rec_free(&ref[i]);
  }
}

/* The cache at work: after one epoch the files are moved away. */
static void test_cache(const ioupos_dataset *ds) {
  ioupos_loader_config c = vol_config(ds);
  rec ref[3];
  ioupos_loader l;
  char from[512], to[512];
  int st, i, b;
  c.batch_size = 1; /* 7 batches per epoch */
  c.seed = 99;
  st = ioupos_loader_open(&l, &c);
  CHECK(st == 0, "open: %s", ioupos_failure_reason());
  if (st) return;
  ioupos_loader_seek(&l, 1, 0);
  run_batches(&l, 3, ref); /* the first 3 batches of epoch 1, files present */
  ioupos_loader_close(&l);
  path_of(from, sizeof from, "vol");
  path_of(to, sizeof to, "vol_away");
  for (i = 0; i < 3; ++i) {
    /* budget: every volume / none / one volume (the size of v_2; no two fit) */
    size_t budget = i == 0 ? (size_t)1 << 30 : i == 1 ? 0 : 48 * 40 * 12 * sizeof(float);
    int failed = 0, named = 0, same = 1;
    c.cache_bytes = budget;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open: %s", ioupos_failure_reason());
    if (st) continue;
    for (b = 0; b < 7; ++b) { /* epoch 0 decodes (and caches) every volume */
      ioupos_batch bt;
      st = ioupos_loader_next(&l, &bt);
      CHECK(st == 0, "epoch 0 batch %d: %s", b, ioupos_failure_reason());
    }
    if (rename(from, to) != 0) {
      CHECK(0, "cannot move %s away", from);
      ioupos_loader_close(&l);
      return;
    }
    for (b = 0; b < 3; ++b) {
      ioupos_batch bt;
      rec r;
      st = ioupos_loader_next(&l, &bt);
      if (st) {
        ++failed;
        named += contains(ioupos_failure_reason(), "/vol/v_");
      }
      rec_take(&r, st, &bt);
      if (st == 0) same &= rec_equal(&ref[b], &r);
      rec_free(&r);
    }
    if (rename(to, from) != 0) {
      CHECK(0, "cannot move %s back", to);
      exit(1);
    }
    if (i == 0)
      CHECK(failed == 0 && same, "1 GiB cache: epoch 1 without the files: %d failed batches "
            "(want 0), same as with the files: %d", failed, same);
    else if (i == 1)
      CHECK(failed == 3 && named == 3, "no cache: %d of 3 batches failed (%d naming the file), "
            "want 3", failed, named);
    else
      CHECK(failed >= 2 && failed == named && same,
            "one-volume cache: %d of 3 batches failed naming the file (want >= 2), good ones "
            "the same: %d", failed, same);
    ioupos_loader_close(&l);
  }
  for (i = 0; i < 3; ++i) rec_free(&ref[i]);
}

static ioupos_rng sample_rng(uint64_t seed, int epoch, int d, uint64_t key);

static void test_multicrop(const ioupos_dataset *ds) {
  ioupos_loader_config c = vol_config(ds);
  ioupos_loader l;
  rec ref[4];
  int st, b, bad_box = 0, bad_iou = 0, bad_view = 0, n = 0;
  const int lc[3] = {12, 10, 8};
  c.n_local = 3;
  memcpy(c.local_crop, lc, sizeof lc);
  c.local_min_iou = 0.05;
  c.local_max_iou = 0.4;
  st = ioupos_loader_open(&l, &c);
  CHECK(st == 0, "open multi-crop: %s", ioupos_failure_reason());
  if (st) return;
  for (b = 0; b < 3; ++b) {
    ioupos_batch bt;
    int i, j;
    st = ioupos_loader_next(&l, &bt);
    CHECK(st == 0, "batch %d: %s", b, ioupos_failure_reason());
    if (st) continue;
    CHECK(bt.n_local == 3 && bt.local_crop[0] == 12 && bt.local_crop[1] == 10 &&
              bt.local_crop[2] == 8 && bt.local && bt.local_box,
          "local fields");
    for (j = 0; j < 3; ++j)
      for (i = 0; i < bt.n; ++i) {
        const ioupos_box *L = &bt.local_box[j * bt.n + i];
        int k = case_of(ds->images[bt.source[i]]);
        double iou = ioupos_box_iou(L, &bt.box[0][i]);
        int need[3] = {20, 20, 16}; /* max(crop, local crop) */
        ++n;
        if (!box_ok(L, vshape[k], lc, need)) ++bad_box;
        if (!(iou >= 0.05 && iou <= 0.4)) ++bad_iou;
        if (!crop_matches(bt.local + (size_t)(j * bt.n + i) * 12 * 10 * 8, k, vshape[k], L->lo,
                          lc, 0))
          ++bad_view;
      }
  }
  ioupos_loader_close(&l);
  CHECK(n == 3 * VN && bad_box == 0 && bad_iou == 0 && bad_view == 0,
        "%d local crops: %d bad boxes, %d outside the IoU interval, %d wrong values", n, bad_box,
        bad_iou, bad_view);
  /* the same with 2 workers and an augmentation; n_local does not change the pair */
  {
    const int shapes[6] = {20, 20, 16, 12, 10, 8};
    c.augment3 = aug3_test;
    c.augment3_ctx = (void *)shapes;
    g_bad_shape = 0;
    st = ioupos_loader_open(&l, &c);
    if (st == 0) {
      run_batches(&l, 4, ref);
      ioupos_loader_close(&l);
      c.num_workers = 2;
      CHECK(same_stream(&c, ref, 4), "multi-crop: 2 workers differ from 0");
      CHECK(g_bad_shape == 0, "augment3 got %d views of another shape", g_bad_shape);
      { /* local boxes: ioupos_local_crop_draw(3, ...) on split(S, 100) around view 0's box in
           the volume padded to max(crop, local crop); the pair and views as without locals */
        ioupos_loader_config c0 = c;
        rec plain[4];
        int i, j, bad_l = 0, bad_p = 0, ax;
        c0.n_local = 0;
        c0.num_workers = 0;
        if (ioupos_loader_open(&l, &c0) == 0) {
          run_batches(&l, 4, plain);
          ioupos_loader_close(&l);
          for (b = 0; b < 4; ++b) {
            bad_p += plain[b].status || ref[b].status || plain[b].nf != ref[b].nf ||
                     memcmp(plain[b].f, ref[b].f, ref[b].nf * sizeof(float)) ||
                     memcmp(plain[b].box, ref[b].box, 2 * (size_t)ref[b].n * sizeof(ioupos_box));
            rec_free(&plain[b]);
          }
        } else {
          ++bad_p;
        }
        CHECK(bad_p == 0, "n_local 3 changes %d of 4 batches' pairs or views", bad_p);
        for (b = 0; b < 4; ++b)
          for (i = 0; !ref[b].status && i < ref[b].n; ++i) {
            int d = ref[b].src[i], k = case_of(ds->images[d]), P[3], off[3];
            ioupos_box A = ref[b].box[i], L;
            ioupos_rng r = sample_rng(c.seed, ref[b].epoch, d, 100);
            for (ax = 0; ax < 3; ++ax) {
              int need = c.crop[ax] > lc[ax] ? c.crop[ax] : lc[ax];
              P[ax] = vshape[k][ax] > need ? vshape[k][ax] : need;
              off[ax] = (P[ax] - vshape[k][ax]) / 2;
              A.lo[ax] += off[ax], A.hi[ax] += off[ax];
            }
            for (j = 0; j < 3; ++j) {
              if (ioupos_local_crop_draw(3, P, &A, lc, c.local_min_iou, c.local_max_iou, &r, &L)) {
                ++bad_l;
                continue;
              }
              for (ax = 0; ax < 3; ++ax) L.lo[ax] -= off[ax], L.hi[ax] -= off[ax];
              bad_l += memcmp(&L, &ref[b].lbox[j * ref[b].n + i], sizeof L) != 0;
            }
          }
        CHECK(bad_l == 0, "%d local boxes are not ioupos_local_crop_draw's on split(S, 100)",
              bad_l);
      }
      for (b = 0; b < 4; ++b) rec_free(&ref[b]);
    }
  }
  { /* infeasible local interval: refused at open naming the flags */
    c.local_crop[0] = c.local_crop[1] = c.local_crop[2] = 1;
    c.local_min_iou = 0.5;
    c.local_max_iou = 0.9;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == IOUPOS_EINFEASIBLE && contains(ioupos_failure_reason(), "local_min_iou"),
          "infeasible local interval: %d %s", st, ioupos_failure_reason());
  }
}

/* ---- 6. Fine-tuning ------------------------------------------------------------------------- */

#define FN 4
static const int fshape[FN][3] = {{24, 20, 16}, {20, 24, 12}, {30, 20, 16}, {16, 16, 20}};

static void make_ft_data(void) {
  int k;
  make_dir("ft");
  make_dir("ft/labels");
  for (k = 0; k < FN; ++k) {
    char rel[64];
    snprintf(rel, sizeof rel, "ft/v_%d.nii.gz", k);
    write_volume(rel, fshape[k][0], fshape[k][1], fshape[k][2], k, 0);
    snprintf(rel, sizeof rel, "ft/labels/v_%d.nii.gz", k);
    write_volume(rel, fshape[k][0], fshape[k][1], fshape[k][2], k, 1);
  }
}

static void test_finetune(void) {
  ioupos_dataset ds;
  ioupos_loader_config c;
  ioupos_loader l;
  char dir[512], lab[512];
  int st, mode;
  path_of(dir, sizeof dir, "ft");
  path_of(lab, sizeof lab, "ft/labels");
  st = ioupos_dataset_scan_volumes(dir, lab, &ds);
  CHECK(st == 0 && ds.n == FN && ds.labels, "scan ft: %s", ioupos_failure_reason());
  if (st) return;
  ioupos_loader_config_default(&c, &ds, IOUPOS_LOADER_FINETUNE);
  c.spatial_dims = 3;
  c.batch_size = 2;
  c.num_samples = 3;
  c.crop[0] = c.crop[1] = 16;
  c.crop[2] = 14; /* case 1 (z 12) is padded in z */
  c.seed = 5;
  for (mode = 0; mode < 3; ++mode) { /* pos 1 neg 1, pos only, neg only */
    int b, bad_box = 0, bad_img = 0, bad_lab = 0, bad_cls = 0, n = 0;
    c.pos = mode == 2 ? 0 : 1;
    c.neg = mode == 1 ? 0 : 1;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open ft: %s", ioupos_failure_reason());
    if (st) continue;
    for (b = 0; b < 2 * l.batches_per_epoch; ++b) {
      ioupos_batch bt;
      int i;
      st = ioupos_loader_next(&l, &bt);
      CHECK(st == 0, "ft batch %d: %s", b, ioupos_failure_reason());
      if (st) continue;
      CHECK(bt.n == bt.n_images * 3 && bt.image && bt.label && !bt.views[0] && !bt.box[1],
            "ft batch fields: n %d images %d", bt.n, bt.n_images);
      for (i = 0; i < bt.n; ++i) {
        int k = case_of(ds.images[bt.source[i]]);
        size_t vox = 16 * 16 * 14, q, fg = 0;
        const float *lb = bt.label + (size_t)i * vox;
        ++n;
        if (!box_ok(&bt.box[0][i], fshape[k], c.crop, c.crop)) ++bad_box;
        if (!crop_matches(bt.image + (size_t)i * vox, k, fshape[k], bt.box[0][i].lo, c.crop, 0))
          ++bad_img;
        if (!crop_matches(lb, k, fshape[k], bt.box[0][i].lo, c.crop, 1)) ++bad_lab;
        for (q = 0; q < vox; ++q) fg += lb[q] > 0.0f;
        if ((mode == 1 && fg == 0) || (mode == 2 && fg == vox)) ++bad_cls;
      }
    }
    CHECK(n == 2 * FN * 3 && bad_box == 0 && bad_img == 0 && bad_lab == 0 && bad_cls == 0,
          "ft pos %d neg %d: %d crops, %d bad boxes, %d image and %d label crops wrong, %d "
          "without the class asked for", c.pos, c.neg, n, bad_box, bad_img, bad_lab, bad_cls);
    ioupos_loader_close(&l);
  }
  { /* same batches for 0 and 2 workers, with an augmentation (label too) */
    rec ref[4];
    c.pos = c.neg = 1;
    c.augment3 = aug3_test;
    c.augment3_ctx = NULL;
    c.num_workers = 0;
    st = ioupos_loader_open(&l, &c);
    if (st == 0) {
      run_batches(&l, 4, ref);
      ioupos_loader_close(&l);
      c.num_workers = 2;
      CHECK(same_stream(&c, ref, 4), "ft: 2 workers differ from 0");
      c.cache_bytes = 0;
      CHECK(same_stream(&c, ref, 4), "ft: no cache differs from the cache");
      for (st = 0; st < 4; ++st) rec_free(&ref[st]);
    }
  }
  ioupos_dataset_free(&ds);
}

/* The documented randomness: S = split(split(seed(seed), epoch), d); boxes from split(S, 0),
   the augmentation of view / crop j from split(S, 1 + j). */
static ioupos_rng sample_rng(uint64_t seed, int epoch, int d, uint64_t key) {
  ioupos_rng root, E, S;
  ioupos_rng_seed(&root, seed);
  E = ioupos_rng_split(&root, (uint64_t)epoch);
  S = ioupos_rng_split(&E, (uint64_t)d);
  return ioupos_rng_split(&S, key);
}

/* MONAI's RandCropByPosNegLabeld for one crop of size s[] in a volume of shape[] (ft_label),
   zero-padded to at least s[] (floor(d / 2) before): fg / bg voxels of the padded volume in
   raster order (z fastest); the centre is the rank-th of its class, then moved as MONAI's
   correct_crop_centers does (valid centres [s / 2, len + 1 - s / 2) per axis). lo[] in the
   source volume's coordinates. */
static void ref_posneg3(const int shape[3], const int s[3], double pos, double neg, ioupos_rng *r,
                        int lo[3]) {
  int P[3], off[3], ax, cen[3], fg;
  long nf = 0, nb = 0, i, n, rank, seen = -1;
  double ratio;
  for (ax = 0; ax < 3; ++ax) {
    P[ax] = shape[ax] > s[ax] ? shape[ax] : s[ax];
    off[ax] = (P[ax] - shape[ax]) / 2;
  }
  n = (long)P[0] * P[1] * P[2];
#define REF_LAB(i)                                                                             \
  padded_label((int)((i) / ((long)P[1] * P[2])) - off[0], (int)((i) / P[2] % P[1]) - off[1],    \
               (int)((i) % P[2]) - off[2], shape)
  for (i = 0; i < n; ++i) {
    if (REF_LAB(i)) ++nf; else ++nb;
  }
  ratio = nf == 0 ? 0.0 : nb == 0 ? 1.0 : pos / (pos + neg);
  fg = ioupos_rng_uniform(r) < ratio;
  rank = (long)ioupos_rng_below(r, (uint64_t)(fg ? nf : nb));
  for (i = 0; i < n; ++i)
    if ((REF_LAB(i) != 0) == fg && ++seen == rank) break;
#undef REF_LAB
  cen[0] = (int)(i / ((long)P[1] * P[2]));
  cen[1] = (int)(i / P[2] % P[1]);
  cen[2] = (int)(i % P[2]);
  for (ax = 0; ax < 3; ++ax) {
    int vs = s[ax] / 2, ve = (int)(P[ax] + 1 - s[ax] / 2.0);
    int c = cen[ax] < vs ? vs : cen[ax] > ve - 1 ? ve - 1 : cen[ax];
    lo[ax] = c - s[ax] / 2 - off[ax];
  }
}

/* Boxes and views are the documented draws: fine-tuning boxes from ref_posneg3 on split(S, 0);
   SSL pairs from the 3D sampler on the padded shape with split(S, 0), each view aug3_test of
   the raw crop with split(S, 1 + v). */
static void test_contract(const ioupos_dataset *vol) {
  ioupos_dataset ds;
  ioupos_loader_config c;
  ioupos_loader l;
  char dir[512], lab[512];
  int st, b, bad = 0, n = 0, mode;
  path_of(dir, sizeof dir, "ft");
  path_of(lab, sizeof lab, "ft/labels");
  if (ioupos_dataset_scan_volumes(dir, lab, &ds) != 0) return;
  ioupos_loader_config_default(&c, &ds, IOUPOS_LOADER_FINETUNE);
  c.spatial_dims = 3;
  c.batch_size = 3;
  c.num_samples = 2;
  c.crop[0] = 12;
  c.crop[1] = 18;
  c.crop[2] = 14; /* case 1 (z 12) is padded in z */
  c.seed = 77;
  c.drop_last = 0;
  for (mode = 0; mode < 2; ++mode) {
    c.pos = mode ? 2 : 1;
    c.neg = 1;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open: %s", ioupos_failure_reason());
    for (b = 0; st == 0 && b < 2 * l.batches_per_epoch; ++b) {
      ioupos_batch bt;
      int i, j;
      if (ioupos_loader_next(&l, &bt) != 0) {
        ++bad;
        continue;
      }
      for (i = 0; i < bt.n_images; ++i) {
        int d = bt.source[i * 2], k = case_of(ds.images[d]);
        ioupos_rng r = sample_rng(c.seed, bt.epoch, d, 0);
        for (j = 0; j < 2; ++j, ++n) {
          int lo[3], ax, ok = 1;
          ref_posneg3(fshape[k], c.crop, c.pos, c.neg, &r, lo);
          for (ax = 0; ax < 3; ++ax) ok &= bt.box[0][i * 2 + j].lo[ax] == lo[ax];
          bad += !ok;
        }
      }
    }
    if (st == 0) ioupos_loader_close(&l);
  }
  CHECK(bad == 0 && n == 2 * 2 * FN * 2, "fine-tuning: %d of %d boxes are not MONAI's posneg "
        "draws from split(S, 0)", bad, n);
  ioupos_dataset_free(&ds);
  { /* SSL */
    float *want = NULL, *tmp = NULL;
    int bad_box = 0, bad_view = 0;
    size_t vox = 20 * 20 * 16;
    c = vol_config(vol);
    c.augment3 = aug3_test;
    c.augment3_ctx = NULL;
    want = (float *)malloc(vox * sizeof(float));
    tmp = (float *)malloc(vox * sizeof(float)); /* aug3_test uses vox scratch floats */
    n = 0;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open: %s", ioupos_failure_reason());
    for (b = 0; st == 0 && b < 2 * l.batches_per_epoch; ++b) {
      ioupos_batch bt;
      int i, v;
      if (ioupos_loader_next(&l, &bt) != 0) {
        ++bad_box;
        continue;
      }
      for (i = 0; i < bt.n; ++i, ++n) {
        int d = bt.source[i], k = case_of(vol->images[d]), P[3], off[3], ax;
        ioupos_iou_sampler smp;
        ioupos_box bx[2];
        ioupos_rng r = sample_rng(c.seed, bt.epoch, d, 0);
        for (ax = 0; ax < 3; ++ax) {
          P[ax] = vshape[k][ax] > c.crop[ax] ? vshape[k][ax] : c.crop[ax];
          off[ax] = (P[ax] - vshape[k][ax]) / 2;
        }
        if (ioupos_iou_sampler_init(&smp, 3, P, c.crop, c.min_iou, c.max_iou, c.pair_mode) ||
            ioupos_iou_sampler_draw(&smp, &r, &bx[0], &bx[1])) {
          ++bad_box;
          continue;
        }
        ioupos_iou_sampler_free(&smp);
        for (v = 0; v < 2; ++v) {
          int x, y, z, same = 1;
          for (ax = 0; ax < 3; ++ax) bx[v].lo[ax] -= off[ax], bx[v].hi[ax] -= off[ax];
          if (memcmp(&bx[v], &bt.box[v][i], sizeof bx[v])) ++bad_box;
          for (x = 0; x < 20; ++x) /* the raw crop, then aug3_test with split(S, 1 + v) */
            for (y = 0; y < 20; ++y)
              for (z = 0; z < 16; ++z) {
                int sx = bx[v].lo[0] + x, sy = bx[v].lo[1] + y, sz = bx[v].lo[2] + z;
                int in = sx >= 0 && sx < vshape[k][0] && sy >= 0 && sy < vshape[k][1] &&
                         sz >= 0 && sz < vshape[k][2];
                want[((size_t)x * 20 + y) * 16 + z] = in ? pattern(k, sx, sy, sz) : 0.0f;
              }
          r = sample_rng(c.seed, bt.epoch, d, 1u + (uint64_t)v);
          aug3_test(NULL, &r, want, NULL, c.crop, tmp);
          for (x = 0; x < (int)vox && same; ++x) same = want[x] == bt.views[v][i * vox + x];
          bad_view += !same;
        }
      }
    }
    if (st == 0) ioupos_loader_close(&l);
    CHECK(bad_box == 0 && bad_view == 0 && n == 2 * VN, "SSL: of %d pairs, %d boxes are not "
          "the sampler's draw from split(S, 0), %d views not aug3_test(split(S, 1 + v))", n,
          bad_box, bad_view);
    free(want);
    free(tmp);
  }
}

/* The phantom: pos-only 3D crops hold organ voxels; values are the phantom's. */
static void test_phantom(void) {
  ioupos_phantom_opts o;
  ioupos_volume im, lb;
  ioupos_dataset ds;
  ioupos_loader_config c;
  ioupos_loader l;
  char p[512], dir[512], lab[512];
  int st, b, bad = 0, n = 0;
  ioupos_phantom_defaults(&o);
  o.nx = 48, o.ny = 40, o.nz = 24;
  o.spacing[0] = o.spacing[1] = 8.0, o.spacing[2] = 6.7;
  o.seed = 3;
  make_dir("ph");
  make_dir("ph/labels");
  st = ioupos_phantom_make(&o, &im, &lb);
  CHECK(st == 0, "phantom: %s", ioupos_failure_reason());
  if (st) return;
  path_of(p, sizeof p, "ph/case_0.nii.gz");
  st = ioupos_nifti_write(p, &im, IOUPOS_NIFTI_INT16);
  path_of(p, sizeof p, "ph/labels/case_0.nii.gz");
  st |= ioupos_nifti_write(p, &lb, IOUPOS_NIFTI_UINT8);
  ioupos_volume_free(&im);
  ioupos_volume_free(&lb);
  CHECK(st == 0, "write phantom: %s", ioupos_failure_reason());
  path_of(dir, sizeof dir, "ph");
  path_of(lab, sizeof lab, "ph/labels");
  if (ioupos_dataset_scan_volumes(dir, lab, &ds) != 0) {
    CHECK(0, "scan phantom: %s", ioupos_failure_reason());
    return;
  }
  ioupos_loader_config_default(&c, &ds, IOUPOS_LOADER_FINETUNE);
  c.spatial_dims = 3;
  c.batch_size = 1;
  c.num_samples = 4;
  c.crop[0] = c.crop[1] = c.crop[2] = 8;
  c.pos = 1;
  c.neg = 0;
  st = ioupos_loader_open(&l, &c);
  CHECK(st == 0, "open phantom: %s", ioupos_failure_reason());
  for (b = 0; st == 0 && b < 5; ++b) {
    ioupos_batch bt;
    int i;
    if (ioupos_loader_next(&l, &bt) != 0) {
      ++bad;
      continue;
    }
    for (i = 0; i < bt.n; ++i, ++n) {
      size_t q, fg = 0;
      for (q = 0; q < 512; ++q) fg += bt.label[(size_t)i * 512 + q] >= 1.0f;
      if (fg == 0) ++bad;
    }
  }
  if (st == 0) ioupos_loader_close(&l);
  CHECK(bad == 0 && n == 20, "phantom: %d of %d pos-only crops without organ voxels", bad, n);
  ioupos_dataset_free(&ds);
}

/* Real CT ($IOUPOS_DATA, default ../shared/data; skipped, saying so, when absent): the labelled
   TotalSegmentator case (122x101x30, int16 HU, FLARE22 ids), linked into a set under one case
   name. Fine-tuning crops equal the volume at their boxes (as ioupos_nifti_read gives it, in
   (X, Y, Z) order), pos-only crops hold organ ids 1..13; SSL pairs meet the interval and are the
   same for 0 and 3 workers. */
static void test_real(void) {
  const char *data = getenv("IOUPOS_DATA");
  char ct[1024], lb[1024], p[512], dir[512], lab[512];
  ioupos_volume v, vl;
  ioupos_dataset ds;
  ioupos_loader_config c;
  ioupos_loader l;
  struct stat sb;
  int st, b, bad_img = 0, bad_lab = 0, n = 0;
  if (!data || !*data) data = "../shared/data";
  snprintf(ct, sizeof ct, "%s/ct/labelled/totalseg_sm_ct.nii.gz", data);
  snprintf(lb, sizeof lb, "%s/ct/labelled/totalseg_sm_label.nii.gz", data);
  if (stat(ct, &sb) != 0 || stat(lb, &sb) != 0) {
    if (tu_env_long("IOUPOS_REQUIRE_DATA", 0))
      CHECK(0, "real CT: %s not found, and IOUPOS_REQUIRE_DATA is set", ct);
    else
      printf("SKIP real CT checks: %s not found (set IOUPOS_DATA)\n", ct);
    return;
  }
  if (ct[0] != '/') { /* the links live in the temporary folder: make the paths absolute */
    char cwd[512];
    if (!getcwd(cwd, sizeof cwd)) return;
    snprintf(ct, sizeof ct, "%s/%s/ct/labelled/totalseg_sm_ct.nii.gz", cwd, data);
    snprintf(lb, sizeof lb, "%s/%s/ct/labelled/totalseg_sm_label.nii.gz", cwd, data);
  }
  make_dir("real");
  make_dir("real/labels");
  path_of(p, sizeof p, "real/sm.nii.gz");
  st = symlink(ct, p);
  path_of(p, sizeof p, "real/labels/sm.nii.gz");
  st |= symlink(lb, p);
  CHECK(st == 0, "cannot link the real CT into %s", g_root);
  if (st) return;
  if (ioupos_nifti_read(ct, &v) != 0 || ioupos_nifti_read(lb, &vl) != 0) {
    CHECK(0, "read real CT: %s", ioupos_failure_reason());
    return;
  }
  path_of(dir, sizeof dir, "real");
  path_of(lab, sizeof lab, "real/labels");
  st = ioupos_dataset_scan_volumes(dir, lab, &ds);
  CHECK(st == 0 && ds.n == 1, "scan real: %s", ioupos_failure_reason());
  ioupos_loader_config_default(&c, &ds, IOUPOS_LOADER_FINETUNE);
  c.spatial_dims = 3;
  c.batch_size = 1;
  c.num_samples = 4;
  c.crop[0] = c.crop[1] = 48;
  c.crop[2] = 16;
  c.pos = 1;
  c.neg = 0;
  c.num_workers = 2;
  st = st ? st : ioupos_loader_open(&l, &c);
  CHECK(st == 0, "open real: %s", ioupos_failure_reason());
  for (b = 0; st == 0 && b < 4; ++b) {
    ioupos_batch bt;
    int i;
    if (ioupos_loader_next(&l, &bt) != 0) {
      CHECK(0, "real batch %d: %s", b, ioupos_failure_reason());
      continue;
    }
    for (i = 0; i < bt.n; ++i, ++n) {
      const int *lo = bt.box[0][i].lo;
      size_t vox = 48 * 48 * 16, fg = 0, q;
      int x, y, z, wrong = 0, wrongl = 0;
      for (x = 0; x < 48; ++x)
        for (y = 0; y < 48; ++y)
          for (z = 0; z < 16; ++z) {
            size_t o = ((size_t)x * 48 + y) * 16 + z;
            size_t s = ((size_t)(lo[2] + z) * v.dim[1] + (lo[1] + y)) * v.dim[0] + (lo[0] + x);
            wrong += bt.image[i * vox + o] != v.data[s];
            wrongl += bt.label[i * vox + o] != vl.data[s];
          }
      for (q = 0; q < vox; ++q) {
        float id = bt.label[i * vox + q];
        fg += id >= 1.0f && id <= 13.0f;
      }
      bad_img += wrong != 0;
      bad_lab += wrongl != 0 || fg == 0;
    }
  }
  if (st == 0) ioupos_loader_close(&l);
  CHECK(n == 16 && bad_img == 0 && bad_lab == 0, "real CT: %d crops, %d image crops differ from "
        "the volume, %d label crops differ or hold no organ", n, bad_img, bad_lab);
  { /* SSL on the real volume: 0 and 3 workers alike, every pair in the interval */
    rec ref[4];
    int i, viol = 0;
    ioupos_loader_config_default(&c, &ds, IOUPOS_LOADER_SSL);
    c.spatial_dims = 3;
    c.batch_size = 1;
    c.crop[0] = c.crop[1] = 64;
    c.crop[2] = 16;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open real SSL: %s", ioupos_failure_reason());
    if (st == 0) {
      run_batches(&l, 4, ref);
      ioupos_loader_close(&l);
      for (i = 0; i < 4; ++i) {
        double iou = ref[i].status ? -1 : ioupos_box_iou(&ref[i].box[0], &ref[i].box[1]);
        viol += !(iou >= 0.3 && iou <= 0.6);
      }
      CHECK(viol == 0, "real SSL: %d of 4 pairs failed or outside [0.3, 0.6]", viol);
      c.num_workers = 3;
      CHECK(same_stream(&c, ref, 4), "real SSL: 3 workers differ from 0");
      for (i = 0; i < 4; ++i) rec_free(&ref[i]);
    }
  }
  ioupos_volume_free(&v);
  ioupos_volume_free(&vl);
  ioupos_dataset_free(&ds);
}

/* ---- 7. Errors and the pre-flight check ------------------------------------------------------ */

static void test_errors(void) {
  ioupos_dataset ds, dl;
  ioupos_loader_config c;
  ioupos_loader l;
  char dir[512], lab[512];
  int st, k, w;
  make_dir("bad");
  make_dir("bad/labels");
  for (k = 0; k < 6; ++k) {
    char rel[64];
    snprintf(rel, sizeof rel, "bad/v_%d.nii.gz", k);
    write_volume(rel, 24, 24, 20, k, 0);
    snprintf(rel, sizeof rel, "bad/labels/v_%d.nii.gz", k);
    write_volume(rel, 24, k == 4 ? 22 : 24, 20, k, 1); /* label 4: 24x22x20 */
  }
  { /* v_2: cut in half (a corrupt gzip stream) */
    void *data;
    size_t size;
    char p[512];
    path_of(p, sizeof p, "bad/v_2.nii.gz");
    if (ioupos_read_file(p, &data, &size) == 0) {
      write_bytes("bad/v_2.nii.gz", data, size / 2);
      free(data);
    }
  }
  path_of(dir, sizeof dir, "bad");
  st = ioupos_dataset_scan_volumes(dir, NULL, &ds);
  CHECK(st == 0 && ds.n == 6, "scan bad: %s", ioupos_failure_reason());
  if (st) return;
  ioupos_loader_config_default(&c, &ds, IOUPOS_LOADER_SSL);
  c.spatial_dims = 3;
  c.batch_size = 2;
  c.crop[0] = c.crop[1] = 16;
  c.crop[2] = 12;
  for (w = 0; w <= 2; w += 2) {
    int b, errors = 0, named = 0, ok = 0;
    c.num_workers = w;
    st = ioupos_loader_open(&l, &c);
    CHECK(st == 0, "open: %s", ioupos_failure_reason());
    if (st) continue;
    for (b = 0; b < 2 * l.batches_per_epoch; ++b) {
      ioupos_batch bt;
      st = ioupos_loader_next(&l, &bt);
      if (st) {
        ++errors;
        named += contains(ioupos_failure_reason(), "v_2.nii.gz") &&
                 contains(ioupos_failure_reason(), "epoch");
      } else {
        ++ok;
      }
    }
    CHECK(errors == 2 && named == 2 && ok == 4, "%d workers: corrupt volume: %d failed batches "
          "(%d naming it), %d good; want 2, 2, 4; %s", w, errors, named, ok,
          ioupos_failure_reason());
    ioupos_loader_close(&l);
  }
  { /* a failing augment3 names the file */
    int which = 3, b, named = 0;
    c.num_workers = 0;
    c.augment3 = aug3_fail;
    c.augment3_ctx = &which;
    st = ioupos_loader_open(&l, &c);
    for (b = 0; st == 0 && b < l.batches_per_epoch; ++b) {
      ioupos_batch bt;
      if (ioupos_loader_next(&l, &bt) != 0)
        named += contains(ioupos_failure_reason(), "v_3.nii.gz") &&
                 contains(ioupos_failure_reason(), "augmentation failed") &&
                 contains(ioupos_failure_reason(), "test failure");
    }
    if (st == 0) ioupos_loader_close(&l);
    CHECK(named == 1, "augment3 failure on v_3 named %d times, want 1: %s", named,
          ioupos_failure_reason());
    c.augment3 = NULL;
  }
  { /* pad_small 0: a volume smaller than the crop names the file and both shapes (the batch
       that meets the corrupt v_2 first may fail on it instead) */
    int b, named = 0, errors = 0;
    c.pad_small = 0;
    c.crop[2] = 24;
    st = ioupos_loader_open(&l, &c);
    for (b = 0; st == 0 && b < l.batches_per_epoch; ++b) {
      ioupos_batch bt;
      if (ioupos_loader_next(&l, &bt) != 0 && ++errors)
        named += contains(ioupos_failure_reason(), "24x24x20") &&
                 contains(ioupos_failure_reason(), "16x16x24") &&
                 contains(ioupos_failure_reason(), "pad_small");
    }
    if (st == 0) ioupos_loader_close(&l);
    CHECK(errors == 3 && named >= 2, "pad_small 0: %d of 3 batches failed, %d naming the small "
          "volume, crop and flag (want >= 2): %s", errors, named, ioupos_failure_reason());
    c.pad_small = 1;
    c.crop[2] = 12;
  }
  ioupos_dataset_free(&ds);
  /* labels: v_4's is 24x22x20 (and v_2 is corrupt) */
  path_of(lab, sizeof lab, "bad/labels");
  st = ioupos_dataset_scan_volumes(dir, lab, &dl);
  CHECK(st == 0 && dl.n == 6, "scan bad with labels: %s", ioupos_failure_reason());
  if (st) return;
  {
    int b, named = 0;
    ioupos_loader_config_default(&c, &dl, IOUPOS_LOADER_FINETUNE);
    c.spatial_dims = 3;
    c.batch_size = 1;
    c.crop[0] = c.crop[1] = 16;
    c.crop[2] = 12;
    st = ioupos_loader_open(&l, &c);
    for (b = 0; st == 0 && b < l.batches_per_epoch; ++b) {
      ioupos_batch bt;
      if (ioupos_loader_next(&l, &bt) != 0)
        named += contains(ioupos_failure_reason(), "labels/v_4.nii.gz is 24x22x20") &&
                 contains(ioupos_failure_reason(), "bad/v_4.nii.gz is 24x24x20");
    }
    if (st == 0) ioupos_loader_close(&l);
    CHECK(named == 1, "label of another shape named %d times, want 1: %s", named,
          ioupos_failure_reason());
  }
  { /* the pre-flight check names every bad file at once */
    const ioupos_dataset *sets[1];
    ioupos_dataset_check_opts o;
    char *report = NULL;
    sets[0] = &dl;
    memset(&o, 0, sizeof o);
    c.pad_small = 0;
    c.crop[2] = 24;
    o.loader = &c;
    o.n_classes = 3;
    o.num_threads = 2;
    st = ioupos_dataset_check(sets, 1, &o, &report);
    CHECK(st != 0 && report && contains(report, "v_2.nii.gz") &&
              contains(report, "labels/v_4.nii.gz is 24x22x20") &&
              contains(report, "volume 24x24x20 is smaller than the 16x16x24 crop") &&
              contains(ioupos_failure_reason(), "v_2.nii.gz"),
          "pre-flight: %d, report:\n%s\nreason: %s", st, report ? report : "(none)",
          ioupos_failure_reason());
    free(report); /* IOUPOS_FREE is free() in this build */
    report = NULL;
    /* the good sizes with pad_small 1 and ids below 2: only the corrupt file, the label of
       another shape and the id 2 voxels are named */
    c.pad_small = 1;
    o.n_classes = 2;
    st = ioupos_dataset_check(sets, 1, &o, &report);
    CHECK(st != 0 && report && contains(report, "v_2.nii.gz") &&
              contains(report, "labels/v_4.nii.gz is 24x22x20") &&
              contains(report, "outside [0, 2)") && !contains(report, "smaller"),
          "pre-flight 2: %d, report:\n%s", st, report ? report : "(none)");
    free(report); /* IOUPOS_FREE is free() in this build */
    /* an interval no two 1x1x1 crops can meet, and a loader of another dims */
    c.kind = IOUPOS_LOADER_SSL;
    c.crop[0] = c.crop[1] = c.crop[2] = 1;
    c.min_iou = 0.3;
    c.max_iou = 0.6;
    st = ioupos_dataset_check(sets, 1, &o, NULL);
    CHECK(st == IOUPOS_EINFEASIBLE && contains(ioupos_failure_reason(), "`crop` 1,1,1"),
          "infeasible 3D crop: %d %s", st, ioupos_failure_reason());
    /* nearest IoUs: 16x16x12 crops (3072 voxels) one voxel apart on an axis: 2880 / 3264 */
    c.crop[0] = c.crop[1] = 16;
    c.crop[2] = 12;
    c.min_iou = 0.95;
    c.max_iou = 0.96;
    st = ioupos_dataset_check(sets, 1, &o, NULL);
    CHECK(st == IOUPOS_EINFEASIBLE && contains(ioupos_failure_reason(), "0.8824 and 1") &&
              contains(ioupos_failure_reason(), "any size"),
          "infeasible 3D interval: %d %s", st, ioupos_failure_reason());
    /* crops as large as the volumes: only IoU 1 there, named per size with the interval */
    c.crop[0] = c.crop[1] = 24;
    c.crop[2] = 20;
    c.min_iou = 0.3;
    c.max_iou = 0.6;
    o.n_classes = 0;
    st = ioupos_dataset_check(sets, 1, &o, &report);
    CHECK(st != 0 && report &&
              contains(report, "(and 4 more volumes of 24x24x20): volume 24x24x20 has no pair of "
                               "24x24x20 crops") &&
              contains(report, "nearest IoU such crops can have is 1"),
          "volume size with no pair: %d, report:\n%s", st, report ? report : "(none)");
    free(report); /* IOUPOS_FREE is free() in this build */
    c.spatial_dims = 2;
    st = ioupos_dataset_check(sets, 1, &o, NULL);
    CHECK(st == IOUPOS_EINVAL && contains(ioupos_failure_reason(), "spatial_dims"),
          "2D loader with volumes: %d %s", st, ioupos_failure_reason());
  }
  ioupos_dataset_free(&dl);
}

int main(void) {
  ioupos_dataset ds;
  char dir[512];
  const char *tmp = getenv("TMPDIR");
  snprintf(g_root, sizeof g_root, "%s/ioupos_test_volume.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g_root)) {
    printf("test_volume_loader: cannot create a temporary folder %s\n", g_root);
    return 1;
  }
  test_scan();
  make_vol_data();
  path_of(dir, sizeof dir, "vol");
  if (ioupos_dataset_scan_volumes(dir, NULL, &ds) == 0) {
    CHECK(ds.n == VN, "vol set: %d volumes", ds.n);
    test_ssl(&ds);
    test_determinism(&ds);
    test_cache(&ds);
    test_multicrop(&ds);
    ioupos_dataset_free(&ds);
  } else {
    CHECK(0, "scan vol: %s", ioupos_failure_reason());
  }
  make_ft_data();
  test_finetune();
  path_of(dir, sizeof dir, "vol");
  if (ioupos_dataset_scan_volumes(dir, NULL, &ds) == 0) {
    test_contract(&ds);
    ioupos_dataset_free(&ds);
  }
  test_phantom();
  test_real();
  test_errors();
  remove_tree(g_root);
  return tu_finish("test_volume_loader");
}
