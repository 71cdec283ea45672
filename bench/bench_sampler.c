/* bench/bench_sampler.c — speed of the exact IoU crop-pair sampler, each figure beside a
   baseline measured in the same run, and the ratio. Built by `make build/bench_sampler`,
   run by `make bench`. Single thread: every rate is per core.

   Parts
     1. Pairs/s of ioupos_iou_sampler_draw (2D 512x512 crop 96x96, 3D 160x320x320 crop 96^3,
        six IoU intervals, both pair modes) beside the research code's rejection sampler (below),
        with the share of the research sampler's returned pairs that violate the interval. An
        untimed pass also checks the IoU of N_CHECK ioupos pairs per case: any violation makes
        the program exit 1.
     2. Cost of ioupos_iou_sampler_init + free when the shape changes (every CT slice has its
        own size), beside the research sampler's cost per pair on the same shapes.
     3. Pairs/s when the shape changes every pair: init(new shape) + one draw + free, beside the
        research sampler on the same shape sequence (it needs no init).

   Timing: CLOCK_MONOTONIC wall clock; each case doubles its repetition count until one run
   takes >= MIN_SECONDS and reports that run. Speed targets are reported ("ok" or "BELOW
   TARGET" / "OVER TARGET") but never change the exit status; only errors and IoU violations
   do. */
#include "ioupos.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MIN_SECONDS 0.2  /* each timed run lasts at least this (so 0.2 to ~0.4 s) */
#define N_CHECK 20000    /* untimed pairs whose IoU is checked per case */
#define TARGET_RATE 1e6  /* pairs/s per core, every case */
#define TARGET_INIT_2D_US 50.0
#define TARGET_INIT_3D_US 2000.0

/* ---- small helpers ------------------------------------------------------------------------ */

static volatile uint64_t g_sink; /* keeps the timed loops' results alive */

static double now_s(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
    perror("bench_sampler: clock_gettime");
    exit(1);
  }
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die_api(const char *what, int st) {
  fflush(stdout);
  fprintf(stderr, "bench_sampler: %s failed: %s: %s\n", what, ioupos_status_name(st),
          ioupos_failure_reason());
  exit(1);
}

/* v with 3 significant digits, no exponent for v >= 1 */
static void fmt3(char *buf, size_t cap, double v) {
  if (!(v == v)) snprintf(buf, cap, "nan");
  else if (v >= 100.0) snprintf(buf, cap, "%.0f", v);
  else if (v >= 10.0) snprintf(buf, cap, "%.1f", v);
  else if (v >= 1.0) snprintf(buf, cap, "%.2f", v);
  else snprintf(buf, cap, "%#.3g", v);
}

static void fmt_rate(char *buf, size_t cap, double per_s) {
  char t[24];
  if (per_s >= 999.5e3) { fmt3(t, sizeof t, per_s / 1e6); snprintf(buf, cap, "%s M/s", t); }
  else if (per_s >= 999.5) { fmt3(t, sizeof t, per_s / 1e3); snprintf(buf, cap, "%s k/s", t); }
  else { fmt3(t, sizeof t, per_s); snprintf(buf, cap, "%s /s", t); }
}

static void fmt_us(char *buf, size_t cap, double us) {
  char t[24];
  if (us >= 999.5) { fmt3(t, sizeof t, us / 1e3); snprintf(buf, cap, "%s ms", t); }
  else if (us >= 0.9995) { fmt3(t, sizeof t, us); snprintf(buf, cap, "%s us", t); }
  else { fmt3(t, sizeof t, us * 1e3); snprintf(buf, cap, "%s ns", t); }
}

static void fmt_ratio(char *buf, size_t cap, double r) {
  char t[24];
  fmt3(t, sizeof t, r);
  snprintf(buf, cap, "%sx", t);
}

static void fmt_interval(char *buf, size_t cap, double lo, double hi) {
  snprintf(buf, cap, "[%g, %g]", lo, hi);
}

static const char *mode_name(int mode) { return mode == IOUPOS_PAIR_JOINT ? "joint" : "anchored"; }

/* ---- the research code's sampler (baseline) ----------------------------------------------- */

/* The algorithm of the research code, re-implemented here as the baseline:
     - draw the first crop's corner uniformly per axis in [0, shape - crop];
     - then up to R1 = 30 times draw a second corner: if min_iou > 0, uniformly per axis in
       [p - crop, p + crop] clipped to [0, shape - crop] (the "first crop +- crop size" box),
       otherwise uniformly over the whole image; accept the pair if
       min_iou <= IoU <= max_iou (IoU by ioupos_box_iou);
     - after 30 failures draw a new first crop; at most R_TOTAL = 120 second-crop tries in all
       (4 first crops);
     - if every try fails, return the LAST candidate pair, which violates the interval.
   It follows no known distribution (the clipped box favours some partners) and is not exact.
   Returns 1 if the pair was accepted, 0 if it is the fallback (interval violated). */
#define RESEARCH_R1 30
#define RESEARCH_TOTAL 120

typedef struct bench_ctx {
  int dims, mode;
  int shape[3], crop[3];
  double min_iou, max_iou;
  int vary_shape; /* 1: the shape of iteration i is seq_shape(dims, i) */
  const ioupos_iou_sampler *sampler;
  ioupos_rng rng;
} bench_ctx;

static int research_draw(int dims, const int shape[3], const int crop[3], double min_iou,
                         double max_iou, ioupos_rng *rng, ioupos_box *a, ioupos_box *b) {
  int k, tries = 0;
  a->dims = b->dims = dims;
  for (k = dims; k < 3; ++k) a->lo[k] = a->hi[k] = b->lo[k] = b->hi[k] = 0;
  while (tries < RESEARCH_TOTAL) {
    int r1;
    for (k = 0; k < dims; ++k) {
      a->lo[k] = (int)ioupos_rng_below(rng, (uint64_t)(shape[k] - crop[k] + 1));
      a->hi[k] = a->lo[k] + crop[k];
    }
    for (r1 = 0; r1 < RESEARCH_R1 && tries < RESEARCH_TOTAL; ++r1, ++tries) {
      double iou;
      for (k = 0; k < dims; ++k) {
        int last = shape[k] - crop[k], q;
        if (min_iou > 0.0) {
          int lo = a->lo[k] - crop[k], hi = a->lo[k] + crop[k];
          if (lo < 0) lo = 0;
          if (hi > last) hi = last;
          q = lo + (int)ioupos_rng_below(rng, (uint64_t)(hi - lo + 1));
        } else {
          q = (int)ioupos_rng_below(rng, (uint64_t)(last + 1));
        }
        b->lo[k] = q;
        b->hi[k] = q + crop[k];
      }
      iou = ioupos_box_iou(a, b);
      if (iou >= min_iou && iou <= max_iou) return 1;
    }
  }
  return 0; /* the last candidate pair stays in a, b */
}

/* ---- shape sequences (every CT slice has its own size) ------------------------------------ */

static void seq_shape(int dims, uint64_t i, int shape[3]) {
  if (dims == 2) {
    shape[0] = 400 + (int)(i % 200);
    shape[1] = 350 + (int)((i * 7) % 150);
    shape[2] = 0;
  } else {
    shape[0] = 100 + (int)(i % 80);
    shape[1] = 280 + (int)(i % 60);
    shape[2] = 250 + (int)((i * 3) % 90);
  }
}
static const char *seq_name(int dims) {
  return dims == 2 ? "(400..599)x(350..499)" : "(100..179)x(280..339)x(250..339)";
}
static uint64_t seq_period(int dims) { return dims == 2 ? 600 : 240; }

/* ---- timed work (each returns a checksum) -------------------------------------------------- */

typedef uint64_t (*work_fn)(bench_ctx *ctx, uint64_t count);

static uint64_t work_ioupos_draw(bench_ctx *c, uint64_t count) {
  ioupos_box a, b;
  uint64_t i, sum = 0;
  for (i = 0; i < count; ++i) {
    int st = ioupos_iou_sampler_draw(c->sampler, &c->rng, &a, &b);
    if (st != IOUPOS_OK) die_api("ioupos_iou_sampler_draw", st);
    sum += (uint64_t)(a.lo[0] + b.lo[c->dims - 1]);
  }
  return sum;
}

static uint64_t work_research_draw(bench_ctx *c, uint64_t count) {
  ioupos_box a, b;
  uint64_t i, sum = 0;
  for (i = 0; i < count; ++i) {
    if (c->vary_shape) seq_shape(c->dims, i, c->shape);
    sum += (uint64_t)research_draw(c->dims, c->shape, c->crop, c->min_iou, c->max_iou, &c->rng,
                                   &a, &b);
    sum += (uint64_t)(a.lo[0] + b.lo[c->dims - 1]);
  }
  return sum;
}

static uint64_t work_init_free(bench_ctx *c, uint64_t count) {
  ioupos_iou_sampler s;
  uint64_t i, sum = 0;
  for (i = 0; i < count; ++i) {
    int st;
    if (c->vary_shape) seq_shape(c->dims, i, c->shape);
    st = ioupos_iou_sampler_init(&s, c->dims, c->shape, c->crop, c->min_iou, c->max_iou, c->mode);
    if (st != IOUPOS_OK) die_api("ioupos_iou_sampler_init", st);
    sum += s.n_first;
    ioupos_iou_sampler_free(&s);
  }
  return sum;
}

static uint64_t work_init_draw_free(bench_ctx *c, uint64_t count) {
  ioupos_iou_sampler s;
  ioupos_box a, b;
  uint64_t i, sum = 0;
  for (i = 0; i < count; ++i) {
    int st;
    if (c->vary_shape) seq_shape(c->dims, i, c->shape);
    st = ioupos_iou_sampler_init(&s, c->dims, c->shape, c->crop, c->min_iou, c->max_iou, c->mode);
    if (st != IOUPOS_OK) die_api("ioupos_iou_sampler_init", st);
    st = ioupos_iou_sampler_draw(&s, &c->rng, &a, &b);
    if (st != IOUPOS_OK) die_api("ioupos_iou_sampler_draw", st);
    sum += (uint64_t)(a.lo[0] + b.lo[c->dims - 1]);
    ioupos_iou_sampler_free(&s);
  }
  return sum;
}

/* Seconds per item: double the count until one run takes >= MIN_SECONDS, report that run. */
static double seconds_per_item(work_fn fn, bench_ctx *ctx) {
  uint64_t n = 1;
  for (;;) {
    double t0 = now_s(), dt;
    g_sink += fn(ctx, n);
    dt = now_s() - t0;
    if (dt >= MIN_SECONDS || n >= ((uint64_t)1 << 40)) return dt / (double)n;
    n *= 2;
  }
}

/* ---- untimed checks ------------------------------------------------------------------------ */

/* 1 if box a, b are two crops of size crop inside shape with IoU in [min, max]. */
static int pair_ok(int dims, const int shape[3], const int crop[3], double min_iou,
                   double max_iou, const ioupos_box *a, const ioupos_box *b) {
  int k;
  double iou;
  if (a->dims != dims || b->dims != dims) return 0;
  for (k = 0; k < dims; ++k) {
    if (a->hi[k] - a->lo[k] != crop[k] || b->hi[k] - b->lo[k] != crop[k]) return 0;
    if (a->lo[k] < 0 || b->lo[k] < 0 || a->hi[k] > shape[k] || b->hi[k] > shape[k]) return 0;
  }
  iou = ioupos_box_iou(a, b);
  return iou >= min_iou && iou <= max_iou;
}

/* Violations among N_CHECK ioupos pairs (also prints the first one). */
static uint64_t check_ioupos(const ioupos_iou_sampler *s, const int shape[3], const int crop[3],
                             uint64_t seed) {
  ioupos_rng rng;
  ioupos_box a, b;
  uint64_t i, bad = 0;
  ioupos_rng_seed(&rng, seed);
  for (i = 0; i < N_CHECK; ++i) {
    int st = ioupos_iou_sampler_draw(s, &rng, &a, &b);
    if (st != IOUPOS_OK) die_api("ioupos_iou_sampler_draw", st);
    if (!pair_ok(s->dims, shape, crop, s->min_iou, s->max_iou, &a, &b)) {
      if (bad++ == 0)
        printf("  VIOLATION (%s, [%g, %g]): a lo %d,%d,%d  b lo %d,%d,%d  IoU %.17g\n",
               mode_name(s->mode), s->min_iou, s->max_iou, a.lo[0], a.lo[1], a.lo[2], b.lo[0],
               b.lo[1], b.lo[2], ioupos_box_iou(&a, &b));
    }
  }
  return bad;
}

/* Violations among N_CHECK research pairs. */
static uint64_t check_research(int dims, const int shape[3], const int crop[3], double min_iou,
                               double max_iou, uint64_t seed) {
  ioupos_rng rng;
  ioupos_box a, b;
  uint64_t i, bad = 0;
  ioupos_rng_seed(&rng, seed);
  for (i = 0; i < N_CHECK; ++i) {
    (void)research_draw(dims, shape, crop, min_iou, max_iou, &rng, &a, &b);
    if (!pair_ok(dims, shape, crop, min_iou, max_iou, &a, &b)) ++bad;
  }
  return bad;
}

/* ---- parts ----------------------------------------------------------------------------------- */

static uint64_t part1(void) {
  static const double iv[][2] = {{0.0, 0.0},   {0.0001, 0.3}, {0.3, 0.6},
                                 {0.6, 1.0},   {0.8, 1.0},    {0.45, 0.46}};
  static const int shapes[2][3] = {{512, 512, 0}, {160, 320, 320}};
  static const int crops[2][3] = {{96, 96, 0}, {96, 96, 96}};
  int di, ii, mi, below = 0;
  uint64_t total_bad = 0;

  printf("1. Pairs/s of ioupos_iou_sampler_draw beside the research sampler (same shape, "
         "interval, RNG)\n");
  printf("   viol(ations): pairs with IoU outside the interval among %d untimed pairs per case\n"
         "   (ioupos: a count, must be 0; research: a share); ratio = ioupos / research pairs/s.\n"
         "   The research column is measured once per interval (it has no mode), shown on both "
         "rows.\n\n", N_CHECK);
  printf("%-4s %-13s %-15s %-9s %14s %11s %16s %19s %8s  %s\n", "dims", "shape", "interval", "mode",
         "ioupos pairs/s", "ioupos viol", "research pairs/s", "research violations", "ratio",
         "target");
  for (di = 0; di < 2; ++di) {
    int dims = di == 0 ? 2 : 3;
    char shp[32];
    ioupos_format_shape(shp, sizeof shp, dims, shapes[di]);
    for (ii = 0; ii < 6; ++ii) {
      bench_ctx rc;
      double research_s;
      uint64_t research_bad;
      char ivs[32], rrate[32], rviol[32];
      memset(&rc, 0, sizeof rc);
      rc.dims = dims;
      memcpy(rc.shape, shapes[di], sizeof rc.shape);
      memcpy(rc.crop, crops[di], sizeof rc.crop);
      rc.min_iou = iv[ii][0];
      rc.max_iou = iv[ii][1];
      ioupos_rng_seed(&rc.rng, 1000 + (uint64_t)(di * 10 + ii));
      research_s = seconds_per_item(work_research_draw, &rc);
      research_bad = check_research(dims, rc.shape, rc.crop, rc.min_iou, rc.max_iou,
                                    5000 + (uint64_t)(di * 10 + ii));
      fmt_interval(ivs, sizeof ivs, iv[ii][0], iv[ii][1]);
      fmt_rate(rrate, sizeof rrate, 1.0 / research_s);
      if (research_bad == 0) snprintf(rviol, sizeof rviol, "0");
      else {
        char p[24];
        fmt3(p, sizeof p, 100.0 * (double)research_bad / N_CHECK);
        snprintf(rviol, sizeof rviol, "%s%%", p);
      }
      for (mi = 0; mi < 2; ++mi) {
        int mode = mi == 0 ? IOUPOS_PAIR_ANCHORED : IOUPOS_PAIR_JOINT;
        ioupos_iou_sampler s;
        bench_ctx c;
        double sec;
        uint64_t bad;
        char rate[32], ratio[32], vl[32];
        int st = ioupos_iou_sampler_init(&s, dims, shapes[di], crops[di], iv[ii][0], iv[ii][1],
                                         mode);
        if (st != IOUPOS_OK) die_api("ioupos_iou_sampler_init", st);
        c = rc;
        c.mode = mode;
        c.sampler = &s;
        ioupos_rng_seed(&c.rng, 2000 + (uint64_t)(di * 100 + ii * 10 + mi));
        sec = seconds_per_item(work_ioupos_draw, &c);
        bad = check_ioupos(&s, shapes[di], crops[di], 3000 + (uint64_t)(di * 100 + ii * 10 + mi));
        total_bad += bad;
        ioupos_iou_sampler_free(&s);
        fmt_rate(rate, sizeof rate, 1.0 / sec);
        fmt_ratio(ratio, sizeof ratio, research_s / sec);
        snprintf(vl, sizeof vl, "%llu", (unsigned long long)bad);
        if (1.0 / sec < TARGET_RATE) ++below;
        printf("%-4s %-13s %-15s %-9s %14s %11s %16s %19s %8s  %s\n", dims == 2 ? "2D" : "3D",
               mi == 0 ? shp : "", mi == 0 ? ivs : "", mode_name(mode), rate, vl,
               mi == 0 ? rrate : "\"", mi == 0 ? rviol : "\"", ratio,
               1.0 / sec >= TARGET_RATE ? "ok" : "BELOW TARGET");
        fflush(stdout);
      }
    }
  }
  printf("\n   ioupos violations: %llu in total (must be 0); rows below the 1e6 pairs/s "
         "target: %d\n\n", (unsigned long long)total_bad, below);
  return total_bad;
}

static void part2(void) {
  int di, mi;
  printf("2. ioupos_iou_sampler_init + free for a new shape, interval [0.3, 0.6], crop 96\n");
  printf("   baseline: the research sampler's time per pair on the same shapes (it has no init);\n"
         "   ratio = init time / research pair time (init costs that many research pairs)\n\n");
  printf("%-4s %-34s %-9s %10s %8s %-12s %13s %9s\n", "dims", "shapes", "mode", "init+free",
         "target", "", "research/pair", "ratio");
  for (di = 0; di < 3; ++di) {
    int dims = di == 0 ? 2 : 3, worst = di == 2;
    bench_ctx rc;
    double research_s;
    char rus[32];
    memset(&rc, 0, sizeof rc);
    rc.dims = dims;
    rc.crop[0] = rc.crop[1] = 96;
    rc.crop[2] = dims == 3 ? 96 : 0;
    rc.min_iou = 0.3;
    rc.max_iou = 0.6;
    if (worst) rc.shape[0] = rc.shape[1] = rc.shape[2] = 191;
    else rc.vary_shape = 1;
    ioupos_rng_seed(&rc.rng, 7000 + (uint64_t)di);
    research_s = seconds_per_item(work_research_draw, &rc);
    fmt_us(rus, sizeof rus, research_s * 1e6);
    for (mi = 0; mi < 2; ++mi) {
      bench_ctx c = rc;
      double sec, target = dims == 2 ? TARGET_INIT_2D_US : TARGET_INIT_3D_US;
      char ius[32], tus[32], ratio[32], shp[48];
      c.mode = mi == 0 ? IOUPOS_PAIR_ANCHORED : IOUPOS_PAIR_JOINT;
      sec = seconds_per_item(work_init_free, &c);
      fmt_us(ius, sizeof ius, sec * 1e6);
      fmt_ratio(ratio, sizeof ratio, sec / research_s);
      if (worst) {
        char t[32];
        ioupos_format_shape(t, sizeof t, 3, rc.shape);
        snprintf(shp, sizeof shp, "%s (worst case)", t);
        snprintf(tus, sizeof tus, "-");
      } else {
        snprintf(shp, sizeof shp, "%s", seq_name(dims));
        fmt_us(tus, sizeof tus, target);
      }
      printf("%-4s %-34s %-9s %10s %8s %-12s %13s %9s\n", dims == 2 ? "2D" : "3D",
             mi == 0 ? shp : "", mode_name(c.mode), ius, tus,
             worst ? "not a target" : sec * 1e6 <= target ? "ok" : "OVER TARGET",
             mi == 0 ? rus : "\"", ratio);
      fflush(stdout);
    }
  }
  printf("\n");
}

/* Untimed: every shape of one period of the sequence, a few pairs each, all checked. */
static uint64_t check_sequence(int dims, uint64_t *pairs) {
  uint64_t i, bad = 0;
  int crop[3] = {96, 96, 0};
  ioupos_rng rng;
  if (dims == 3) crop[2] = 96;
  ioupos_rng_seed(&rng, 9000 + (uint64_t)dims);
  *pairs = 0;
  for (i = 0; i < seq_period(dims); ++i) {
    ioupos_iou_sampler s;
    int shape[3], j, st;
    seq_shape(dims, i, shape);
    st = ioupos_iou_sampler_init(&s, dims, shape, crop, 0.3, 0.6, IOUPOS_PAIR_ANCHORED);
    if (st != IOUPOS_OK) die_api("ioupos_iou_sampler_init", st);
    for (j = 0; j < 20; ++j) {
      ioupos_box a, b;
      st = ioupos_iou_sampler_draw(&s, &rng, &a, &b);
      if (st != IOUPOS_OK) die_api("ioupos_iou_sampler_draw", st);
      ++*pairs;
      if (!pair_ok(dims, shape, crop, 0.3, 0.6, &a, &b)) ++bad;
    }
    ioupos_iou_sampler_free(&s);
  }
  return bad;
}

static uint64_t part3(void) {
  int di;
  uint64_t total_bad = 0;
  printf("3. Shape changes every pair: init(new shape) + one draw + free, [0.3, 0.6], anchored,\n"
         "   beside the research sampler on the same shape sequence (no init)\n\n");
  printf("%-4s %-34s %16s %16s %8s %12s\n", "dims", "shapes", "ioupos pairs/s",
         "research pairs/s", "ratio", "ioupos viol");
  for (di = 0; di < 2; ++di) {
    int dims = di == 0 ? 2 : 3;
    bench_ctx c;
    double sec, research_s;
    uint64_t bad, pairs;
    char rate[32], rrate[32], ratio[32], vl[48];
    memset(&c, 0, sizeof c);
    c.dims = dims;
    c.mode = IOUPOS_PAIR_ANCHORED;
    c.crop[0] = c.crop[1] = 96;
    c.crop[2] = dims == 3 ? 96 : 0;
    c.min_iou = 0.3;
    c.max_iou = 0.6;
    c.vary_shape = 1;
    ioupos_rng_seed(&c.rng, 8000 + (uint64_t)di);
    sec = seconds_per_item(work_init_draw_free, &c);
    ioupos_rng_seed(&c.rng, 8100 + (uint64_t)di);
    research_s = seconds_per_item(work_research_draw, &c);
    bad = check_sequence(dims, &pairs);
    total_bad += bad;
    fmt_rate(rate, sizeof rate, 1.0 / sec);
    fmt_rate(rrate, sizeof rrate, 1.0 / research_s);
    fmt_ratio(ratio, sizeof ratio, research_s / sec);
    snprintf(vl, sizeof vl, "%llu/%llu", (unsigned long long)bad, (unsigned long long)pairs);
    printf("%-4s %-34s %16s %16s %8s %12s\n", dims == 2 ? "2D" : "3D", seq_name(dims), rate,
           rrate, ratio, vl);
    fflush(stdout);
  }
  printf("\n   ratio = ioupos / research pairs/s; ioupos viol: violations among 20 untimed pairs\n"
         "   for each shape of one period of the sequence\n\n");
  return total_bad;
}

int main(void) {
  double t0 = now_s();
  uint64_t bad;
  printf("bench_sampler: ioupos %s, single thread (per-core figures), wall clock, each timed run "
         ">= %.1f s\n", IOUPOS_VERSION, MIN_SECONDS);
  printf("target: >= 1e6 pairs/s per core in every case; init < 50 us (2D), < 2 ms (3D)\n\n");
  bad = part1();
  part2();
  bad += part3();
  printf("total time %.1f s; ioupos IoU violations: %llu -> %s\n", now_s() - t0,
         (unsigned long long)bad, bad ? "FAIL" : "ok");
  return bad ? 1 : 0;
}
