/* bench/bench_loader.c — throughput of the data loader (ioupos.h section 9), each figure beside a
   baseline measured in the same run, and the ratio. Built by `make build/bench_loader`, run by
   `make bench`.

   Data: N_IMAGES synthetic CT-like 512 x 512 8-bit grey PNG slices (body ellipse, organs, fat,
   spine, noise; written with ioupos_png_write, i.e. stb_image_write's zlib, into a temporary
   folder that is removed at the end; they sit in the page cache, as a warm data set would).

   Figures (SSL pairs: PNG decode + exact IoU pair [0.3, 0.6] of 96 x 96 crops + both views'
   pretraining augmentations, batch 32):
     1. baseline: PNG decode alone (read file + stb_image 8-bit decode, the loader's own decode
        path), images/s on one core; and ioupos_image_load (16-bit decode + float conversion of
        the whole image) for reference.
     2. loader pairs/s with num_workers 0 (caller's thread), 1 and 2, with and without the
        augmentations; per core = pairs/s / max(1, workers).
   Ratios: per-core pairs/s over the research pipeline's 26.2 pairs/s per core (RESEARCH_CODE.md
   section 2, "CPU cost": 128-pair batches in 0.489 s on 10 cores, no augmentation: 128 / 0.489
   / 10), and over decode alone (1.0 would mean the crop, pair and augmentations are free).
   Target: >= 500 augmented pairs/s per core. Speed targets are reported ("ok" / "BELOW
   TARGET") but only errors change the exit status. Wall clock, CLOCK_MONOTONIC; each case runs
   whole epochs until at least MIN_SECONDS have passed. The whole program takes well under 60 s. */
#include "ioupos.h"
#include "stb_image.h" /* declarations; stb_image itself is compiled into the implementation */

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define N_IMAGES 64
#define SIZE 512
#define MIN_SECONDS 1.5
#define RESEARCH_PAIRS_PER_CORE (128.0 / 0.489 / 10.0) /* 26.2 */
#define TARGET_PER_CORE 500.0

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char g_dir[256];

static void cleanup(void) {
  DIR *d = opendir(g_dir);
  struct dirent *e;
  if (!d) return;
  while ((e = readdir(d)) != NULL) {
    char p[512];
    if (e->d_name[0] == '.') continue;
    snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
    remove(p);
  }
  closedir(d);
  rmdir(g_dir);
}

static void die_api(const char *what, int st) {
  fflush(stdout);
  fprintf(stderr, "bench_loader: %s failed: %s: %s\n", what, ioupos_status_name(st),
          ioupos_failure_reason());
  cleanup();
  exit(1);
}

/* A CT-like slice in [0, 255]: air 0, body ellipse (soft tissue ~ 0.55 after the [-500, 500]
   window), fat rim, liver / kidneys / spleen / aorta blobs, spine, Gaussian-ish noise. */
static void make_slice(int k, uint8_t *px) {
  ioupos_rng rng;
  int y, x;
  double cy = SIZE / 2 + 10 * sin(k * 0.3), cx = SIZE / 2 + 8 * cos(k * 0.2);
  double ry = 170 + 20 * sin(k * 0.11), rx = 220 + 15 * cos(k * 0.07);
  ioupos_rng_seed(&rng, (uint64_t)k + 1);
  for (y = 0; y < SIZE; ++y)
    for (x = 0; x < SIZE; ++x) {
      double dy = (y - cy) / ry, dx = (x - cx) / rx, r2 = dx * dx + dy * dy, v = 0.0, n;
      if (r2 < 1.0) {
        v = r2 > 0.8 ? 0.42 : 0.55; /* fat rim, soft tissue */
        if (pow((y - cy + 20) / 70.0, 2) + pow((x - cx - 90) / 90.0, 2) < 1.0) v = 0.60; /* liver */
        if (pow((y - cy - 40) / 35.0, 2) + pow((x - cx + 110) / 25.0, 2) < 1.0) v = 0.63;
        if (pow((y - cy - 40) / 35.0, 2) + pow((x - cx - 110) / 25.0, 2) < 1.0) v = 0.63;
        if (pow((y - cy + 10) / 40.0, 2) + pow((x - cx + 120) / 35.0, 2) < 1.0) v = 0.58;
        if (pow((y - cy - 15) / 12.0, 2) + pow((x - cx + 10) / 12.0, 2) < 1.0) v = 0.70;
        if (pow((y - cy - 80) / 30.0, 2) + pow((x - cx) / 28.0, 2) < 1.0) v = 0.95; /* spine */
        n = (ioupos_rng_uniform(&rng) + ioupos_rng_uniform(&rng) + ioupos_rng_uniform(&rng) -
             1.5) * 0.04;
        v += n;
      }
      v = v < 0 ? 0 : v > 1 ? 1 : v;
      px[(size_t)y * SIZE + x] = (uint8_t)floor(v * 255.0 + 0.5);
    }
}

typedef struct result {
  double per_s, seconds;
  long count;
} result;

static result bench_decode(const ioupos_dataset *ds, int full) {
  result r = {0, 0, 0};
  double t0 = now_s(), t;
  long n = 0;
  volatile double sink = 0;
  do {
    int i;
    for (i = 0; i < ds->n; ++i, ++n) {
      if (full) {
        ioupos_image img;
        int st = ioupos_image_load(ds->images[i], &img);
        if (st) die_api("ioupos_image_load", st);
        sink += img.data[0];
        ioupos_image_free(&img);
      } else {
        void *data;
        size_t size;
        int w, h, c, st = ioupos_read_file(ds->images[i], &data, &size);
        unsigned char *px;
        if (st) die_api("ioupos_read_file", st);
        px = stbi_load_from_memory((const stbi_uc *)data, (int)size, &w, &h, &c, 1);
        free(data); /* ioupos_read_file's buffer: IOUPOS_MALLOC, malloc by default */
        if (!px) die_api("stbi_load_from_memory", IOUPOS_EFORMAT);
        sink += px[0];
        stbi_image_free(px);
      }
    }
    t = now_s() - t0;
  } while (t < MIN_SECONDS);
  (void)sink;
  r.seconds = t;
  r.count = n;
  r.per_s = (double)n / t;
  return r;
}

static result bench_loader(const ioupos_dataset *ds, int workers, int augment) {
  ioupos_loader_config c;
  ioupos_loader l;
  result r = {0, 0, 0};
  double t0, t;
  long pairs = 0;
  int st;
  ioupos_loader_config_default(&c, ds, IOUPOS_LOADER_SSL);
  c.batch_size = 32;
  c.num_workers = workers;
  c.seed = 1;
  c.augment = augment ? ioupos_augment_pretrain_view : NULL;
  st = ioupos_loader_open(&l, &c);
  if (st) die_api("ioupos_loader_open", st);
  t0 = now_s();
  do {
    int b;
    for (b = 0; b < l.batches_per_epoch; ++b) {
      ioupos_batch bt;
      st = ioupos_loader_next(&l, &bt);
      if (st) die_api("ioupos_loader_next", st);
      pairs += bt.n;
    }
    t = now_s() - t0;
  } while (t < MIN_SECONDS);
  ioupos_loader_close(&l);
  r.seconds = t;
  r.count = pairs;
  r.per_s = (double)pairs / t;
  return r;
}

int main(void) {
  ioupos_dataset ds;
  uint8_t *px;
  int k, st, workers, aug;
  double t_start = now_s(), dec_u8, dec_full;
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  const char *tmp = getenv("TMPDIR");

  snprintf(g_dir, sizeof g_dir, "%s/ioupos_bench_loader.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) {
    fprintf(stderr, "bench_loader: cannot create a temporary folder\n");
    return 1;
  }
  px = (uint8_t *)malloc((size_t)SIZE * SIZE);
  if (!px) return 1;
  for (k = 0; k < N_IMAGES; ++k) {
    char p[512];
    make_slice(k, px);
    snprintf(p, sizeof p, "%s/slice_%03d.png", g_dir, k);
    st = ioupos_png_write(p, SIZE, SIZE, 1, px);
    if (st) die_api("ioupos_png_write", st);
  }
  free(px);
  st = ioupos_dataset_scan(g_dir, NULL, &ds);
  if (st) die_api("ioupos_dataset_scan", st);

  printf("bench_loader: ioupos %s, %d synthetic CT-like %dx%d 8-bit grey PNGs (page cache), "
         "%ld CPUs online; wall clock, each case >= %.1f s\n", IOUPOS_VERSION, N_IMAGES, SIZE,
         SIZE, ncpu, MIN_SECONDS);
  printf("SSL pairs: decode + IoU pair [0.3, 0.6] of 96x96 crops (anchored) + both views' "
         "pretraining augmentations\n(zoom, flips, rot90, scale, shift, blur, noise: "
         "ioupos_augment_pretrain_view), batch 32.\n");
  printf("research pipeline: %.1f pairs/s per core (128-pair batches in 0.489 s on 10 cores, "
         "no augmentation)\ntarget: >= %.0f augmented pairs/s per core\n\n",
         RESEARCH_PAIRS_PER_CORE, TARGET_PER_CORE);

  dec_u8 = bench_decode(&ds, 0).per_s;
  dec_full = bench_decode(&ds, 1).per_s;
  printf("1. baseline, PNG decode alone, one core\n");
  printf("   read + stb_image 8-bit decode (the loader's path)   %8.0f images/s\n", dec_u8);
  printf("   ioupos_image_load (16-bit decode + float image)      %8.0f images/s\n\n", dec_full);

  printf("2. loader (ratios: per-core pairs/s over the research figure, and over decode alone "
         "per core)\n");
  printf("   %-8s %-9s %12s %14s %12s %12s  %s\n", "workers", "augment", "pairs/s",
         "pairs/s/core", "vs research", "vs decode", "target");
  for (aug = 1; aug >= 0; --aug)
    for (workers = 0; workers <= 2; ++workers) {
      result r = bench_loader(&ds, workers, aug);
      double cores = workers > 0 ? workers : 1, pc = r.per_s / cores;
      printf("   %-8d %-9s %12.0f %14.0f %11.1fx %11.2fx  %s\n", workers, aug ? "yes" : "no",
             r.per_s, pc, pc / RESEARCH_PAIRS_PER_CORE, pc / dec_u8,
             !aug ? "-" : pc >= TARGET_PER_CORE ? "ok" : "BELOW TARGET");
    }
  printf("\n   per core = pairs/s / max(1, workers); with 2 workers on a %ld-CPU machine the "
         "caller's\n   thread also competes for a core. vs decode < 1: the share of time spent "
         "in decode.\n", ncpu);
  ioupos_dataset_free(&ds);
  cleanup();
  printf("total time %.1f s\n", now_s() - t_start);
  return 0;
}
