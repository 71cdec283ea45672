/* bench/bench_prep.c — throughput of the ioupos-prep pipeline (ioupos.h section 6) on the real CT, beside
   a baseline measured in the same run, and the ratio. Built by `make build/bench_prep`.

   Data: the CT image volumes of $IOUPOS_DATA/ct (default ../shared/data/ct): every *.nii.gz of
   unlabelled/ and labelled/ except the label maps. Skipped, saying so, when absent.
   Figures:
     1. baseline: read + decode (gzip inflate through stb_image's zlib, int16 -> float) of all the
        volumes on one thread, seconds and MB/s of compressed input;
     2. ioupos-prep's work, as the command does it (read, reorient, resample to 1 x 1 x 2.5 mm,
        window, crop, pad, one 8-bit PNG per axial slice written atomically with fsync into a
        temporary folder that is removed at the end), volumes spread over 1 and 2 threads:
        seconds, slices/s, and the ratio prep time / read time.
   Each figure is one pass (the files sit in the page cache after the first read: the baseline
   runs first on a warm-up pass). The whole program takes well under 60 s on 2 cores. */
#include "ioupos.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_VOLS 64

static char *vols[MAX_VOLS];
static int n_vols;
static double in_bytes;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void scan(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;
  if (!d) return;
  while ((e = readdir(d)) != NULL && n_vols < MAX_VOLS) {
    size_t n = strlen(e->d_name);
    char *p;
    struct stat sb;
    if (n < 8 || strcmp(e->d_name + n - 7, ".nii.gz") != 0 || strstr(e->d_name, "_label")) continue;
    p = (char *)malloc(strlen(dir) + n + 2);
    if (!p) continue;
    sprintf(p, "%s/%s", dir, e->d_name);
    if (stat(p, &sb) == 0) in_bytes += (double)sb.st_size;
    vols[n_vols++] = p;
  }
  closedir(d);
}

typedef struct work {
  pthread_mutex_t mu;
  int next, failed;
  long slices;
  const char *out;
} work;

static void *worker(void *arg) {
  work *w = (work *)arg;
  ioupos_prep_opts o;
  ioupos_prep_opts_default(&o);
  for (;;) {
    ioupos_volume v;
    int i, k, ok = 1;
    uint8_t *px;
    pthread_mutex_lock(&w->mu);
    i = w->next++;
    pthread_mutex_unlock(&w->mu);
    if (i >= n_vols) return NULL;
    if (ioupos_nifti_read(vols[i], &v) != IOUPOS_OK || ioupos_preprocess(&v, NULL, &o) != IOUPOS_OK) {
      fprintf(stderr, "bench_prep: %s\n", ioupos_failure_reason());
      ioupos_volume_free(&v);
      pthread_mutex_lock(&w->mu);
      w->failed = 1;
      pthread_mutex_unlock(&w->mu);
      continue;
    }
    px = (uint8_t *)malloc((size_t)v.dim[0] * v.dim[1]);
    for (k = 0; px && k < v.dim[2]; ++k) {
      char path[512];
      snprintf(path, sizeof path, "%s/v%d_%03d.png", w->out, i, k);
      ioupos_volume_slice_u8(&v, k, 0, px);
      if (ioupos_png_write(path, v.dim[1], v.dim[0], 1, px) != IOUPOS_OK) {
        fprintf(stderr, "bench_prep: %s\n", ioupos_failure_reason());
        ok = 0;
        break;
      }
    }
    pthread_mutex_lock(&w->mu);
    if (!px || !ok) w->failed = 1;
    else w->slices += v.dim[2];
    pthread_mutex_unlock(&w->mu);
    free(px);
    ioupos_volume_free(&v);
  }
}

static double run_prep(int threads, const char *out, long *slices, int *failed) {
  pthread_t th[8];
  work w;
  double t0;
  int i;
  memset(&w, 0, sizeof w);
  pthread_mutex_init(&w.mu, NULL);
  w.out = out;
  t0 = now_s();
  for (i = 0; i < threads; ++i) pthread_create(&th[i], NULL, worker, &w);
  for (i = 0; i < threads; ++i) pthread_join(th[i], NULL);
  pthread_mutex_destroy(&w.mu);
  *slices = w.slices;
  *failed = w.failed;
  return now_s() - t0;
}

int main(void) {
  const char *data = getenv("IOUPOS_DATA");
  char dir[1024], tmp[256], cmd[400];
  double t_read, t0;
  long slices;
  int i, t, failed = 0, fail_any = 0;
  if (!data || !*data) data = "../shared/data";
  snprintf(dir, sizeof dir, "%s/ct/unlabelled", data);
  scan(dir);
  snprintf(dir, sizeof dir, "%s/ct/labelled", data);
  scan(dir);
  if (n_vols == 0) {
    printf("bench_prep: SKIP, no CT volumes under %s/ct (set IOUPOS_DATA)\n", data);
    return 0;
  }
  qsort(vols, (size_t)n_vols, sizeof vols[0], cmp_str);
  snprintf(tmp, sizeof tmp, "%s/bench_prep.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(tmp)) {
    printf("bench_prep: cannot create a temporary folder\n");
    return 1;
  }
  /* warm-up + baseline: read and decode every volume on one thread */
  for (t = 0; t < 2; ++t) {
    t0 = now_s();
    for (i = 0; i < n_vols; ++i) {
      ioupos_volume v;
      if (ioupos_nifti_read(vols[i], &v) != IOUPOS_OK) {
        printf("bench_prep: %s\n", ioupos_failure_reason());
        return 1;
      }
      ioupos_volume_free(&v);
    }
    t_read = now_s() - t0;
  }
  printf("bench_prep: %d CT volumes, %.1f MB of .nii.gz, under %s/ct\n", n_vols, in_bytes / 1e6, data);
  printf("  baseline read + decode (1 thread):  %6.2f s  (%.1f MB/s compressed)\n", t_read,
         in_bytes / 1e6 / t_read);
  for (t = 1; t <= 2; ++t) {
    double s = run_prep(t, tmp, &slices, &failed);
    fail_any |= failed;
    printf("  ioupos-prep pipeline, %d worker%s:     %6.2f s  %5ld slices  %7.1f slices/s  ratio prep/read %.2f\n",
           t, t > 1 ? "s" : " ", s, slices, (double)slices / s, s / t_read);
  }
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
  if (system(cmd) != 0) printf("note: could not remove %s\n", tmp);
  for (i = 0; i < n_vols; ++i) free(vols[i]);
  return fail_any;
}
