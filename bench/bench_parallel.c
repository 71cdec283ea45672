/* bench/bench_parallel.c — the data-parallel SimSiam training step (section 18:
   ioupos_simsiam_data_parallel over section 16b's MPI table) under mpirun: pairs/s of the GLOBAL
   batch for this number of processes, the time of the gradient all-reduce and of the step's
   all-gathers (SyncBN and the loss), and the bytes they move.

   The step is bench_simsiam's (zero_grad + accumulate + step: Swin backbone with drop-path 0.1
   in train mode, projection 16C-2048-2048, prediction 2048-512-2048, SGD lr 0.025 momentum 0.9
   wd 1e-5), made data parallel: every rank holds the whole model, builds the same global batch
   from the same seed and passes ioupos_simsiam_accumulate its share, rows rank * B .. of both
   views, B = global / size (ioupos_loader's shards). The heads' batch norms are SyncBN and the
   loss is the global batch's (all-gathers inside accumulate); ioupos_simsiam_step sums the
   gradient over the ranks (comm->allreduce_sum on p.table.total floats) before the update.
   With one process ioupos_simsiam_data_parallel turns itself off: plain batch norm, no sum.

   Configurations:
     lowres  C 24, global batch 16, 96 x 96 views (bench_simsiam's lowres: the low-resource
             setup's published batch); 1 warm-up + 8 timed steps by default, so that
             `make bench-parallel` (np 1, then np 2) takes under a minute on 2 idle cores.
     tiny    C 12, global batch 8, 32 x 32 views, heads 256-256-64: a smoke test (seconds).
   Usage: mpirun [-np N] build/bench_parallel [--config lowres|tiny] [--batch G (global; a
          multiple of N, >= 2)] [--steps N] [--warmup N] [--threads T (OpenMP threads per
          rank; default 1)]
   Every rank parses the same arguments, so every rank takes the same decisions and runs the
   same collectives in the same order; rank 0 prints.

   Timing. A barrier, then CLOCK_MONOTONIC around each whole step, split at the end of
   accumulate (forward, SyncBN and loss gathers, backward) and at the end of step (gradient sum
   + SGD). A step of a data-parallel job is as slow as its slowest rank, so each step's times
   are the maximum over the ranks (all-gathered), and the figures are medians over the timed
   steps. pairs/s = global batch / median step time.
   The collectives are then timed alone, replayed on scratch buffers of the same sizes after
   the steps, --steps times each, a barrier before each (so a rank still finishing its compute
   is not counted as communication), the maximum over the ranks, the median:
     - the gradient all-reduce: one comm->allreduce_sum of p.table.total floats;
     - the step's all-gathers: per view, each SyncBN of the heads gathers its input [B, width]
       forward, and its input and output gradient backward (3 gathers), then the loss gathers
       p1, p2, z1, z2 [B, proj_out] (4 gathers).
   Their share of the step is median collective time / median step time. In the step itself
   they also absorb the ranks' load imbalance, which the replay leaves out.
   Bytes per step (float32): the all-reduce's buffer is p.table.total * 4 bytes (the MPI table
   all-gathers it in chunks and adds in rank order: each rank sends that much and receives
   (size - 1) times it); the all-gathers are given as what each rank contributes (B rows) and as
   the gathered global buffers (size * B rows) it receives (its own rows included).

   On a machine with fewer free cores than ranks x threads the ranks share cores: the scaling
   that `make bench-parallel` prints (pairs/s at np 2 / at np 1, both at --threads 1) then
   measures the overhead of data parallelism, not the speed-up that 2 machines (or 2 GPUs) give.

   Checks (exit 1 when one fails): every step's loss is finite, and after the steps every rank
   holds the same parameters, bit for bit (rank 0's hash broadcast and compared): the
   data-parallel invariant that the rank-order sum guarantees.

   The last line on rank 0 is "bench_parallel: result np N pairs_s X" for the make target. */
#include "ioupos.h"

#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#define LR 0.025
#define MOMENTUM 0.9
#define WD 1e-5

typedef struct config {
  const char *name;
  int embed, batch, size, warmup, steps;
  int heads; /* 0: the heads' defaults (2048, 2048, 512); D: D, D, D / 4 */
} config;

static const config CONFIGS[2] = {
    {"lowres", 24, 16, 96, 1, 8, 0},
    {"tiny", 12, 8, 32, 1, 4, 256},
};

static const ioupos_comm *g_comm;

/* A rank that fails leaves the others inside a collective: MPI_Abort ends the whole job (and
   mpirun exits non-zero) rather than leaving it hung. */
static void fail(const char *what) {
  fprintf(stderr, "bench_parallel rank %d: FAILED: %s: %s\n", g_comm ? g_comm->rank : -1, what,
          ioupos_failure_reason());
  fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  exit(1);
}

/* v[0 .. n) := the maximum over the ranks of each entry, and lo[0 .. n) (may be NULL) the
   minimum (through allgather: the table has no max; float is precise enough for seconds) */
static void over_ranks(double *v, double *lo, int n) {
  int size = g_comm->size, i, r;
  float *send = (float *)calloc((size_t)n, sizeof(float));
  float *all = (float *)malloc(sizeof(float) * (size_t)n * (size_t)size);
  if (!send || !all) fail("out of memory for the timings");
  for (i = 0; i < n; ++i) send[i] = (float)v[i];
  if (g_comm->allgather(g_comm, send, (size_t)n, all)) fail("allgather of the timings");
  for (i = 0; i < n; ++i) {
    double hi = all[i], low = all[i];
    for (r = 1; r < size; ++r) {
      double x = all[(size_t)r * n + i];
      hi = x > hi ? x : hi;
      low = x < low ? x : low;
    }
    v[i] = hi;
    if (lo) lo[i] = low;
  }
  free(send);
  free(all);
}

static void barrier(void) {
  if (g_comm->barrier(g_comm)) fail("barrier");
}

/* the widths of the heads' batch norms (the SyncBN gathers of a view: [B, width] each) */
static size_t bn_widths(const ioupos_head *h, int *count) {
  size_t w = 0;
  int i;
  for (i = 0; i < h->n_ops; ++i)
    if (h->ops[i].kind == IOUPOS_HEAD_BATCHNORM) w += (size_t)h->ops[i].out, ++*count;
  return w;
}

/* the machine's load average over the last minute (/proc/loadavg), -1 where unknown: the
   cores other programs were using when the run started, to read the figures against */
static double loadavg1(void) {
  double l = -1.0;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf", &l) != 1) l = -1.0;
    fclose(f);
  }
  return l;
}

/* every rank parses the same arguments and comes here together: rank 0 says why, all leave
   MPI cleanly (a rank exiting without MPI_Finalize makes mpirun report a crash) */
static void usage(void) {
  if (g_comm->rank == 0)
    fprintf(stderr, "usage: mpirun [-np N] bench_parallel [--config lowres|tiny] [--batch G] "
                    "[--steps N] [--warmup N] [--threads T]\n");
  ioupos_comm_mpi_finalize();
  exit(2);
}

int main(int argc, char **argv) {
  config c = CONFIGS[0];
  int i, v, rc, threads = 1, batch = 0, steps = 0, warmup = -1, B, total, rank, size;
  int shape[2], n_bn = 0, ok_finite = 1, same = 1;
  ioupos_simsiam_config cfg;
  ioupos_simsiam m;
  ioupos_rng rng, drng;
  ioupos_ssl_stats st;
  size_t npix, nx, k, n_params = 0, bn_w, P, widest;
  float *x1, *x2, *buf, *gbuf, flag;
  double step[MAX_STEPS], acc[MAX_STEPS], acc_lo[MAX_STEPS], wait[MAX_STEPS], opt[MAX_STEPS], ar[MAX_STEPS], ag[MAX_STEPS];
  double first_loss = 0.0, t_start = now_s(), step_s, ar_s, ag_s, load0 = loadavg1();
  unsigned long long hash, hash0;

  if (ioupos_comm_mpi_init(&argc, &argv, &g_comm)) {
    fprintf(stderr, "bench_parallel: %s\n", ioupos_failure_reason());
    return 1;
  }
  rank = g_comm->rank, size = g_comm->size;
  for (i = 1; i < argc; ++i) {
    const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (!val) usage();
    if (!strcmp(a, "--config")) {
      if (!strcmp(val, "lowres")) c = CONFIGS[0];
      else if (!strcmp(val, "tiny")) c = CONFIGS[1];
      else usage();
    }
    else if (!strcmp(a, "--batch")) { if (!parse_int(val, 2, 4096, &batch)) usage(); }
    else if (!strcmp(a, "--steps")) { if (!parse_int(val, 1, MAX_STEPS, &steps)) usage(); }
    else if (!strcmp(a, "--warmup")) { if (!parse_int(val, 0, 100, &warmup)) usage(); }
    else if (!strcmp(a, "--threads")) { if (!parse_int(val, 1, 256, &threads)) usage(); }
    else usage();
    ++i;
  }
  if (batch) c.batch = batch;
  if (steps) c.steps = steps;
  if (warmup >= 0) c.warmup = warmup;
  /* every rank sees the same size and arguments, so every rank stops here or none does */
  if (c.batch % size != 0) {
    if (rank == 0)
      fprintf(stderr, "bench_parallel: the global batch %d is not a multiple of the %d "
                      "processes\n", c.batch, size);
    ioupos_comm_mpi_finalize();
    return 2;
  }
  B = c.batch / size;
  total = c.warmup + c.steps;
#ifdef _OPENMP
  omp_set_num_threads(threads);
#else
  threads = 1;
#endif

  /* the model: the same seed on every rank, so every rank starts from the same weights */
  memset(&m, 0, sizeof m);
  memset(&st, 0, sizeof st);
  ioupos_simsiam_config_default(&cfg, 2);
  cfg.enc.embed_dim = c.embed;
  if (c.heads) cfg.proj_hidden = cfg.proj_out = c.heads, cfg.pred_hidden = c.heads / 4;
  if (ioupos_simsiam_init(&m, &cfg, ioupos_backend_cpu(), 1)) fail("setup");
  if (ioupos_simsiam_data_parallel(&m, g_comm)) fail("data parallel");
  for (i = 0; i < m.p.table.n; ++i) {
    const ioupos_tensor_info *t = &m.p.table.t[i];
    if (t->dtype == IOUPOS_ST_F32 && !(t->flags & IOUPOS_TENSOR_BUFFER)) n_params += t->numel;
  }

  /* the global batch, the same on every rank and for every number of processes (seed 2, as
     bench_simsiam's); this rank's share is rows rank * B .. of each view */
  shape[0] = shape[1] = c.size;
  npix = (size_t)c.size * c.size;
  nx = (size_t)c.batch * npix;
  x1 = (float *)malloc(nx * sizeof(float));
  x2 = (float *)malloc(nx * sizeof(float));
  if (!x1 || !x2) fail("out of memory for the views");
  ioupos_rng_seed(&rng, 2);
  for (k = 0; k < nx; ++k) x1[k] = (float)ioupos_rng_uniform(&rng);
  for (k = 0; k < nx; ++k) x2[k] = (float)ioupos_rng_uniform(&rng);
  /* drop-path: the same generator on every rank; accumulate draws for the global batch */
  ioupos_rng_seed(&drng, 3);

  if (rank == 0) {
    printf("bench_parallel: data-parallel SimSiam training step (zero_grad + accumulate + step; "
           "2 views %dx%d in [0, 1), Swin backbone with drop-path 0.1 in train mode, projection "
           "16C-%d-%d, prediction %d-%d-%d with SyncBN, SGD lr %g momentum %g wd %g); GEMM %s\n",
           c.size, c.size, cfg.proj_hidden, cfg.proj_out, cfg.proj_out, cfg.pred_hidden,
           cfg.proj_out, LR, MOMENTUM, WD, ioupos_gemm_kernel());
    printf("config %s: C %d, global batch %d = %d process%s x %d, %d warm-up + %d timed steps, "
           "%d OpenMP thread%s per process, comm %s; %.2f M parameters; this machine: %ld "
           "cores online, load average %.2f before the run\n", c.name, c.embed, c.batch, size,
           size == 1 ? "" : "es", B, c.warmup, c.steps, threads, threads == 1 ? "" : "s",
           g_comm->name, (double)n_params / 1e6, sysconf(_SC_NPROCESSORS_ONLN), load0);
    fflush(stdout);
  }

  for (i = 0; i < total; ++i) {
    double t0, t1, t2;
    /* all ranks start the step together: the clock measures the step, not who came late */
    barrier();
    t0 = now_s();
    ioupos_simsiam_zero_grad(&m);
    rc = ioupos_simsiam_accumulate(&m, x1 + (size_t)rank * B * npix, x2 + (size_t)rank * B * npix,
                                   B, shape, 1.0f, &drng, &st);
    t1 = now_s();
    if (rc) fail("accumulate");
    if (ioupos_simsiam_step(&m, LR, LR, MOMENTUM, WD)) fail("step");
    t2 = now_s();
    if (!isfinite(st.loss)) ok_finite = 0;
    if (i == 0) first_loss = st.loss;
    if (i >= c.warmup) {
      acc[i - c.warmup] = t1 - t0;
      opt[i - c.warmup] = t2 - t1;
      step[i - c.warmup] = t2 - t0;
    }
  }
  /* the slowest rank's time, per step and phase */
  over_ranks(step, NULL, c.steps);
  over_ranks(acc, acc_lo, c.steps);
  over_ranks(opt, NULL, c.steps);

  /* every rank must hold the same parameters: rank 0's hash against each rank's, the number of
     ranks that differ summed (a float sum of 0 / 1 flags is exact) */
  hash = hash0 = fnv1a(m.p.value, m.p.table.total * sizeof(float));
  if (g_comm->broadcast(g_comm, &hash0, sizeof hash0, 0)) fail("broadcast of the hash");
  flag = hash != hash0;
  if (g_comm->allreduce_sum(g_comm, &flag, 1)) fail("allreduce of the flags");
  same = flag == 0.0f;

  /* the collectives alone, on scratch buffers of the step's sizes */
  P = (size_t)cfg.proj_out;
  bn_w = bn_widths(&m.proj, &n_bn) + bn_widths(&m.pred, &n_bn);
  widest = bn_w > P ? bn_w : P; /* any one gather's width is at most this */
  {
    buf = (float *)malloc(m.p.table.total * sizeof(float));
    gbuf = (float *)malloc(((size_t)B + (size_t)size * B) * widest * sizeof(float));
    if (!buf || !gbuf) fail("out of memory for the collectives' buffers");
    memcpy(buf, m.p.grad, m.p.table.total * sizeof(float)); /* a real gradient's values */
    memset(gbuf, 0, (size_t)B * widest * sizeof(float));
  }
  for (i = 0; i < c.steps; ++i) {
    double t0;
    int h, o;
    barrier();
    t0 = now_s();
    if (g_comm->allreduce_sum(g_comm, buf, m.p.table.total)) fail("allreduce_sum");
    ar[i] = now_s() - t0;
    barrier();
    t0 = now_s();
    /* per view: each SyncBN's input forward, its input and output gradient backward; then the
       loss's 4 gathers of [B, proj_out] */
    for (v = 0; v < 2; ++v)
      for (h = 0; h < 2; ++h) {
        const ioupos_head *hd = h ? &m.pred : &m.proj;
        for (o = 0; o < hd->n_ops; ++o) {
          int g;
          if (hd->ops[o].kind != IOUPOS_HEAD_BATCHNORM) continue;
          for (g = 0; g < 3; ++g)
            if (g_comm->allgather(g_comm, gbuf, (size_t)B * hd->ops[o].out,
                                  gbuf + (size_t)B * widest))
              fail("allgather (SyncBN)");
        }
      }
    for (v = 0; v < 4; ++v)
      if (g_comm->allgather(g_comm, gbuf, (size_t)B * P, gbuf + (size_t)B * widest))
        fail("allgather (loss)");
    ag[i] = now_s() - t0;
  }
  over_ranks(ar, NULL, c.steps);
  over_ranks(ag, NULL, c.steps);

  if (rank == 0) {
    double acc_s = median(acc, c.steps), opt_s = median(opt, c.steps), sum = 0.0;
    /* bytes per step: SyncBN 2 views x 3 gathers x the widths; loss 4 gathers of proj_out */
    double ar_mib = (double)m.p.table.total * 4 / 1048576.0;
    double bn_sent = 2.0 * 3 * (double)B * bn_w * 4 / 1048576.0;
    double ls_sent = 4.0 * (double)B * P * 4 / 1048576.0;
    step_s = median(step, c.steps);
    ar_s = median(ar, c.steps);
    ag_s = median(ag, c.steps);
    for (i = 0; i < c.steps; ++i) sum += step[i], wait[i] = acc[i] - acc_lo[i];
    printf("np %d: %7.2f pairs/s of the global batch (median step %.3f s, the slowest rank's: "
           "zero_grad + accumulate %.3f s, step (gradient sum + SGD) %.3f s; mean %.2f "
           "pairs/s); loss first %.9g, last %.9g\n", size, c.batch / step_s, step_s, acc_s, opt_s,
           c.batch / (sum / c.steps), first_loss, st.loss);
    if (size > 1)
      printf("np %d: load imbalance: the ranks' zero_grad + accumulate differ by a median %.4f s "
             "(%.1f%% of the step), which the faster ranks wait in the gradient sum\n", size,
             median(wait, c.steps), 100.0 * median(wait, c.steps) / step_s);
    printf("np %d: gradient all-reduce (comm->allreduce_sum of %zu floats, timed alone): median "
           "%.4f s, %.1f%% of the step%s\n", size, m.p.table.total, ar_s, 100.0 * ar_s / step_s,
           size == 1 ? " (one process: the model does not call it; the table returns at once)" : "");
    printf("np %d: the step's all-gathers (%d SyncBN x 3 x 2 views + 4 for the loss, timed "
           "alone): median %.4f s, %.1f%% of the step%s\n", size, n_bn, ag_s,
           100.0 * ag_s / step_s,
           size == 1 ? " (one process: the model does not call them; plain batch norm)" : "");
    printf("np %d: bytes per step: all-reduce %zu floats = %.2f MiB (each rank sends %.2f MiB, "
           "receives %.2f MiB); SyncBN all-gathers (batch norms of widths summing to %zu) %.3f "
           "MiB sent per rank, %.3f MiB gathered; loss all-gathers %.3f MiB sent per rank, %.3f "
           "MiB gathered%s\n", size, m.p.table.total, ar_mib, ar_mib, ar_mib * (size - 1), bn_w,
           bn_sent, bn_sent * size, ls_sent, ls_sent * size,
           size == 1 ? " (one process: none of them happen in the step)" : "");
    printf("np %d: every loss finite: %s; parameters identical on every rank after the steps: "
           "%s; total wall time %.0f s\n", size, ok_finite ? "yes" : "NO", same ? "yes" : "NO",
           now_s() - t_start);
    printf("bench_parallel: result np %d pairs_s %.4f threads %d\n", size, c.batch / step_s,
           threads);
    fflush(stdout);
  }
  free(x1);
  free(x2);
  free(buf);
  free(gbuf);
  ioupos_simsiam_free(&m);
  ioupos_comm_mpi_finalize();
  return ok_finite && same ? 0 : 1;
}
