/* bench/bench_simsiam.c — pairs/s and memory of the full SimSiam training step (section 18:
   ioupos_simsiam_zero_grad + ioupos_simsiam_accumulate + ioupos_simsiam_step) on the CPU, on
   1 and 2 OpenMP threads, beside PyTorch + MONAI + lightly doing the same step in the same run
   (bench/bench_torch.py simsiam, run as a subprocess per configuration and thread count), then
   the ratios.

   The step, as bench_torch.py's `simsiam` (the research code's main_simsiam.py): Swin backbone
   (window 7, patch 2, depths 2-2-2-2, heads 3-6-12-24, drop-path 0.1, train mode), lightly
   SimSiamProjectionHead(16C, 2048, 2048) and SimSiamPredictionHead(2048, 512, 2048) (the
   defaults of ioupos_simsiam_config_default, the same for both configurations, as in
   bench_torch.py); two views [batch, 1, 96, 96] uniform in [0, 1); loss
   -(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2; zero_grad, forward, backward, SGD step with lr
   0.025 (backbone, projector and predictor), momentum 0.9, weight decay 1e-5 (none on biases
   and 1-D tensors). float32 throughout.

   Configurations (bench_torch.py's CONFIGS):
     lowres  C 24, batch 16 (the low-resource setup, its published batch).
     c48     C 48, batch 32 by default to keep the run short; the research setup's batch is 128
             (--batch 128 runs it; --batch applies to c48 only).

   Build (the Makefile's rule; `make build/bench_simsiam`): this file with -fopenmp, linked
   with the implementation build/ioupos.o (-mavx2 -mfma where the CPU has them, -fopenmp), as
   the commands are.
   Usage: build/bench_simsiam [--config lowres|c48|all (default all)] [--batch B (c48; 32)]
                              [--steps N] [--warmup N] [--threads T (one count only; default
                              1 and 2)] [--no-torch]
   --steps / --warmup override every configuration's defaults (lowres 2 + 10, c48 1 + 5; chosen
   so that the whole default run, PyTorch included, takes under 3 minutes on an idle 2-core
   machine). PyTorch runs the same numbers of steps.
   Run it from the repository root (the baseline is .venv/bin/python bench/bench_torch.py).

   Timing: CLOCK_MONOTONIC around each whole step (zero gradients, forward + loss + backward,
   SGD step); --warmup untimed steps, then --steps timed ones; pairs/s = batch / median step
   time (a pair of views is one sample, as bench_torch.py's pairs_per_s). The median times of
   accumulate (forward, loss, backward) and of the optimiser step are printed too.
   Memory: each (configuration, thread count) runs in its own forked process (the parent
   allocates nothing big before forking), so its peak RSS (getrusage ru_maxrss) is that run's
   alone: the whole process, weights, gradients, momentum, activations, scratch, the GEMM's
   buffers. "base" is the high-water mark after the model, the optimiser state and the inputs
   exist, before the first step (the activations are planned by the first accumulate). The
   arenas are printed separately. PyTorch's figures come from bench_torch.py: peak_rss_mib (the
   whole Python process, interpreter and libraries included) and delta_rss_mib = peak - base
   (what its steps add: activations, gradients, momentum, allocator caches). Our peak RSS is
   compared with both, each named.
   Determinism: every run uses the same seeds (weights, views, drop-path), so the parameters and
   gradients after the last step must be bit-identical for 1 and 2 threads; hashes are printed
   and compared per configuration.
   Exit status: 0, or 1 when our step fails, the loss is not finite or the hashes differ. A
   missing or failing PyTorch baseline is reported ("skipped" and why), not an error.

   --device cuda (build/bench_simsiam_cuda: this file with IOUPOS_WITH_CUDA, linked with
   build/ioupos_cuda.o; `make bench-cuda`): the same step on the CUDA backend, device 0, beside
   bench_torch.py simsiam --device cuda on the same GPU. Defaults there: config c48 at the
   published batch 128, 1 warm-up + 5 timed steps, 1 thread (the step has no host work but the
   views' upload). Timing: the backend's sync() before the clock starts and after accumulate
   and after the SGD step. Memory: the backend's device memory (ioupos_cuda_mem_peak: values,
   gradients, momentum, activations, scratch, workspaces; not cuBLAS's workspace nor the
   context) beside torch.cuda.max_memory_allocated (and max_memory_reserved); the peak RSS is
   printed too. One thread count, so no determinism comparison (the hashes are printed). Without
   a usable device: "SKIP" with the reason, exit 0. --probe: says whether device 0 answers
   (exit 0), or why not (exit 3: no usable device or no CUDA backend in this build; 1: another
   failure), and exits; make bench-cuda runs it first. */
#include "ioupos.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#define LR 0.025
#define MOMENTUM 0.9
#define WD 1e-5

typedef struct config {
  const char *name;
  int embed, batch, published_batch, warmup, steps;
  int size;  /* views size x size (96; --size for tests) */
  int heads; /* 0: the heads' defaults (2048, 2048, 512); --heads D for tests: D, D, D / 4 */
} config;

/* bench_torch.py's CONFIGS; the batches and step counts are this bench's defaults */
static config CONFIGS[2] = {
    {"lowres", 24, 16, 16, 2, 10, 96, 0},
    {"c48", 48, 32, 128, 1, 5, 96, 0},
};

/* --device cuda */
static int g_cuda = 0;

/* what a child process reports to the parent */
typedef struct result {
  int ok, skip; /* skip: no usable CUDA device (err says why) */
  double dev_peak_mib, dev_base_mib; /* --device cuda: the backend's device memory */
  double pairs_s, pairs_s_mean, step_s, acc_s, opt_s, cpu_s, loss;
  double peak_mib, base_mib, param_mib, act_mib, head_mib, scratch_mib;
  size_t n_params;
  unsigned long long value_hash, grad_hash;
  char err[640];
} result;

/* One configuration, in the measuring child, on the thread count bench_forked set. */
static void run_ours(const void *arg, void *out) {
  const config *c = (const config *)arg;
  result *r = (result *)out;
  const ioupos_backend *be;
  ioupos_simsiam_config cfg;
  ioupos_simsiam m;
  ioupos_rng rng, drng;
  ioupos_ssl_stats st;
  int shape[2], rc, i, total = c->warmup + c->steps, have = 0;
  size_t nx, k;
  float *x1 = NULL, *x2 = NULL, *hv = NULL, *hg = NULL;
  const float *v, *g;
  double step[MAX_STEPS], acc[MAX_STEPS], opt[MAX_STEPS], cpu[MAX_STEPS], sum = 0.0;
  memset(r, 0, sizeof *r);
  memset(&m, 0, sizeof m);
  memset(&st, 0, sizeof st);
  ioupos_simsiam_config_default(&cfg, 2); /* drop-path 0.1; heads 2048 / 2048 / 512 */
  cfg.enc.embed_dim = c->embed;
  if (c->heads) cfg.proj_hidden = cfg.proj_out = c->heads, cfg.pred_hidden = c->heads / 4;
  shape[0] = shape[1] = c->size;
  be = bench_backend(g_cuda, r->err, sizeof r->err);
  if (!be) {
    r->skip = strncmp(r->err, BENCH_SKIP_PREFIX, strlen(BENCH_SKIP_PREFIX)) == 0;
    goto done;
  }
  rc = ioupos_simsiam_init(&m, &cfg, be, 1);
  if (rc) {
    snprintf(r->err, sizeof r->err, "setup: %s", ioupos_failure_reason());
    goto done;
  }
  have = 1;
  nx = (size_t)c->batch * c->size * c->size;
  x1 = (float *)malloc(nx * sizeof(float));
  x2 = (float *)malloc(nx * sizeof(float));
  if (!x1 || !x2) {
    snprintf(r->err, sizeof r->err, "out of memory for the views");
    goto done;
  }
  ioupos_rng_seed(&rng, 2);
  for (k = 0; k < nx; ++k) x1[k] = (float)ioupos_rng_uniform(&rng);
  for (k = 0; k < nx; ++k) x2[k] = (float)ioupos_rng_uniform(&rng);
  ioupos_rng_seed(&drng, 3); /* drop-path draws */
  for (i = 0; i < m.p.table.n; ++i) {
    const ioupos_tensor_info *t = &m.p.table.t[i];
    if (t->dtype == IOUPOS_ST_F32 && !(t->flags & IOUPOS_TENSOR_BUFFER)) r->n_params += t->numel;
  }
  r->base_mib = maxrss_mib();
  r->dev_base_mib = bench_dev_in_use_mib(g_cuda);
  r->param_mib = 3.0 * mib(m.p.table.total); /* values, gradients, momentum */
  for (i = 0; i < total; ++i) {
    double c0, t0, t1, t2;
    if ((rc = be->sync()) != 0) {
      snprintf(r->err, sizeof r->err, "before step %d: %s", i, ioupos_failure_reason());
      goto done;
    }
    c0 = cpu_now_s(), t0 = now_s();
    ioupos_simsiam_zero_grad(&m);
    rc = ioupos_simsiam_accumulate(&m, x1, x2, c->batch, shape, 1.0f, &drng, &st);
    if (!rc) rc = be->sync();
    t1 = now_s();
    if (!rc) rc = ioupos_simsiam_step(&m, LR, LR, MOMENTUM, WD);
    if (!rc) rc = be->sync();
    t2 = now_s();
    if (rc) {
      snprintf(r->err, sizeof r->err, "step %d: %s", i, ioupos_failure_reason());
      goto done;
    }
    if (!isfinite(st.loss)) {
      snprintf(r->err, sizeof r->err, "step %d: the loss is %g", i, st.loss);
      goto done;
    }
    if (i >= c->warmup) {
      acc[i - c->warmup] = t1 - t0;
      opt[i - c->warmup] = t2 - t1;
      step[i - c->warmup] = t2 - t0;
      cpu[i - c->warmup] = cpu_now_s() - c0;
      sum += t2 - t0;
    }
  }
  r->step_s = median(step, c->steps);
  r->acc_s = median(acc, c->steps);
  r->opt_s = median(opt, c->steps);
  r->cpu_s = median(cpu, c->steps);
  r->pairs_s = c->batch / r->step_s;
  r->pairs_s_mean = c->batch / (sum / c->steps);
  r->loss = st.loss;
  r->act_mib = mib(m.enc.acts.total);
  r->head_mib = mib(m.proj.view_floats * (size_t)m.proj.views + m.proj.scratch_n +
                    m.pred.view_floats * (size_t)m.pred.views + m.pred.scratch_n);
  r->scratch_mib = mib(m.enc.scratch_n);
  r->peak_mib = maxrss_mib(); /* before the host copies of the hashes (--device cuda) */
  r->dev_peak_mib = bench_dev_peak_mib(g_cuda);
  v = bench_host_view(be, m.p.value, m.p.table.total, &hv);
  g = bench_host_view(be, m.p.grad, m.p.table.total, &hg);
  if (!v || !g || be->sync()) {
    snprintf(r->err, sizeof r->err, "reading the parameters back: %s",
             v && g ? ioupos_failure_reason() : "out of memory");
    goto done;
  }
  r->value_hash = fnv1a(v, m.p.table.total * sizeof(float));
  r->grad_hash = fnv1a(g, m.p.table.total * sizeof(float));
  r->ok = 1;
done:
  free(x1);
  free(x2);
  free(hv);
  free(hg);
  if (have) ioupos_simsiam_free(&m);
}

static void run_torch(const config *c, int threads, torch_result *t) {
  char args[256];
  const char *tf32 = getenv("IOUPOS_CUDA_TF32");
  snprintf(args, sizeof args, "simsiam --threads %d --config %s --batch %d --embed %d --steps %d "
           "--warmup %d%s%s", threads, c->name, c->batch, c->embed, c->steps, c->warmup,
           g_cuda ? " --device cuda" : "",
           g_cuda && tf32 && strcmp(tf32, "1") == 0 ? " --tf32" : "");
  bench_torch_dev(args, "pairs_per_s", g_cuda, t);
}

static void usage(void) {
  fprintf(stderr, "usage: bench_simsiam [--config lowres|c48|all] [--batch B (c48)] [--steps N] "
                  "[--warmup N] [--threads T] [--no-torch] [--device cpu|cuda] [--probe]\n"
                  "       test sizes (--no-torch only): [--embed C] [--size S] [--heads D]\n");
  exit(2);
}

int main(int argc, char **argv) {
  int i, ci, nt, t0 = 1, t1 = 2, c0 = 0, c1 = 1, steps = 0, warmup = -1, torch = 1, fail = 0;
  int threads = 0, probe = 0, config_given = 0, batch = 0, embed = 0, size = 0, heads = 0;
  result ours[2][3];
  torch_result base[2][3];
  double t_start = now_s();
  memset(ours, 0, sizeof ours);
  memset(base, 0, sizeof base);
  for (i = 1; i < argc; ++i) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--no-torch")) {
      torch = 0;
      continue;
    }
    if (!strcmp(a, "--probe")) {
      probe = 1;
      continue;
    }
    if (!v) usage();
    if (!strcmp(a, "--device")) {
      if (!strcmp(v, "cpu")) g_cuda = 0;
      else if (!strcmp(v, "cuda")) g_cuda = 1;
      else usage();
      ++i;
      continue;
    }
    if (!strcmp(a, "--config")) {
      config_given = 1;
      if (!strcmp(v, "lowres")) c0 = c1 = 0;
      else if (!strcmp(v, "c48")) c0 = c1 = 1;
      else if (!strcmp(v, "all")) c0 = 0, c1 = 1;
      else usage();
    }
    else if (!strcmp(a, "--batch")) { if (!parse_int(v, 2, 4096, &batch)) usage(); }
    else if (!strcmp(a, "--embed")) { if (!parse_int(v, 3, 768, &embed) || embed % 3) usage(); }
    else if (!strcmp(a, "--size")) { if (!parse_int(v, 16, 1024, &size)) usage(); }
    else if (!strcmp(a, "--heads")) { if (!parse_int(v, 4, 8192, &heads)) usage(); }
    else if (!strcmp(a, "--steps")) { if (!parse_int(v, 1, MAX_STEPS, &steps)) usage(); }
    else if (!strcmp(a, "--warmup")) { if (!parse_int(v, 0, 100, &warmup)) usage(); }
    else if (!strcmp(a, "--threads")) { if (!parse_int(v, 1, 2, &threads)) usage(); }
    else usage();
    ++i;
  }
  if (probe) return bench_probe();
  if ((embed || size || heads) && torch) {
    fprintf(stderr, "bench_simsiam: --embed, --size and --heads are test sizes: with --no-torch "
                    "only\n");
    usage();
  }
  if (g_cuda) { /* the GPU run: c48 at the published batch (make bench-cuda), one thread */
    if (!config_given) c0 = c1 = 1;
    CONFIGS[1].batch = 128;
    t0 = t1 = 1;
  }
  if (batch) CONFIGS[1].batch = batch;
  for (ci = 0; ci < 2; ++ci) {
    if (steps) CONFIGS[ci].steps = steps;
    if (warmup >= 0) CONFIGS[ci].warmup = warmup;
    if (embed) CONFIGS[ci].embed = embed;
    if (size) CONFIGS[ci].size = size;
    if (heads) CONFIGS[ci].heads = heads;
  }
  if (threads) t0 = t1 = threads;
#ifndef _OPENMP
  t0 = t1 = 1;
#endif
  printf("bench_simsiam: SimSiam training step (2 views %dx%d in [0, 1), Swin backbone with "
         "drop-path 0.1 in train mode, projection 16C-2048-2048, prediction 2048-512-2048, "
         "loss, backward, SGD lr %g momentum %g wd %g); %s%s, %s\n", CONFIGS[c0].size,
         CONFIGS[c0].size, LR, MOMENTUM, WD,
         g_cuda ? "device cuda (the CUDA backend, device 0; host parts: GEMM " : "GEMM ",
         ioupos_gemm_kernel(),
#ifdef _OPENMP
         g_cuda ? "OpenMP)" : "OpenMP"
#else
         g_cuda ? "no OpenMP)" : "no OpenMP (1 thread only)"
#endif
  );
  for (ci = c0; ci <= c1; ++ci) {
    const config *c = &CONFIGS[ci];
    printf("config %s: C %d, batch %d%s, %d warm-up + %d timed steps\n", c->name, c->embed,
           c->batch,
           c->batch == c->published_batch ? " (the published batch)"
           : ci == 1 ? " (the published batch is 128: --batch 128 runs it)"
                     : "",
           c->warmup, c->steps);
  }
  for (ci = c0; ci <= c1; ++ci) {
    const config *c = &CONFIGS[ci];
    for (nt = t0; nt <= t1; ++nt) {
      result *r = &ours[ci][nt];
      torch_result *t = &base[ci][nt];
      bench_forked(run_ours, c, nt, r, sizeof *r, r->err, sizeof r->err);
      if (r->skip) {
        printf("bench_simsiam: SKIP: %s\n", r->err);
        return 0;
      }
      if (!r->ok) {
        printf("%s, threads %d: ours FAILED: %s\n", c->name, nt, r->err);
        fail = 1;
        continue;
      }
      printf("%s, threads %d: ours    %7.2f pairs/s (median step %.3f s: forward + loss + "
             "backward %.3f s, SGD %.4f s; CPU time %.3f s; mean %.2f pairs/s); last loss "
             "%.6f; %.2f M parameters\n", c->name, nt, r->pairs_s, r->step_s, r->acc_s, r->opt_s,
             r->cpu_s, r->pairs_s_mean, r->loss, (double)r->n_params / 1e6);
      if (g_cuda)
        printf("           ours    device memory: peak %.0f MiB (the backend's allocations; %.0f "
               "MiB before the first step); arenas: parameters + gradients + momentum %.0f MiB, "
               "backbone activations %.0f MiB, backbone scratch %.0f MiB, heads %.0f MiB; host "
               "peak RSS %.0f MiB\n", r->dev_peak_mib, r->dev_base_mib, r->param_mib, r->act_mib,
               r->scratch_mib, r->head_mib, r->peak_mib);
      else
        printf("           ours    peak RSS %.0f MiB (base %.0f MiB before the first step); "
               "arenas: parameters + gradients + momentum %.0f MiB, backbone activations %.0f "
               "MiB, backbone scratch %.0f MiB, heads %.0f MiB\n", r->peak_mib, r->base_mib,
               r->param_mib, r->act_mib, r->scratch_mib, r->head_mib);
      printf("           ours    hash of the parameters %016llx, of the gradients %016llx\n",
             r->value_hash, r->grad_hash);
      fflush(stdout);
      if (!torch) {
        snprintf(t->why, sizeof t->why, "--no-torch");
        t->ok = 0;
      } else {
        run_torch(c, nt, t);
      }
      if (!t->ok) {
        printf("           PyTorch baseline skipped: %s\n", t->why);
        continue;
      }
      if (g_cuda) {
        printf("           PyTorch %7.2f pairs/s; last loss %.6f; %.2f M parameters%s; device "
               "memory: max allocated %.0f MiB (%.0f before the first step), max reserved %.0f "
               "MiB\n", t->rate, t->loss, t->params / 1e6,
               t->params == (double)r->n_params ? " (same count as ours)" : " (DIFFERS from ours)",
               t->peak_mib, t->base_mib, t->reserved_mib);
        printf("           ratio   pairs/s ours / PyTorch %.2f; device memory: our peak / "
               "PyTorch's max allocated %.2f, / its max reserved %.2f\n", r->pairs_s / t->rate,
               r->dev_peak_mib / t->peak_mib, r->dev_peak_mib / t->reserved_mib);
      } else {
        printf("           PyTorch %7.2f pairs/s; last loss %.6f; %.2f M parameters%s; peak RSS "
               "%.0f MiB (whole process), delta %.0f MiB (peak - base %.0f, what the steps add)\n",
               t->rate, t->loss, t->params / 1e6,
               t->params == (double)r->n_params ? " (same count as ours)" : " (DIFFERS from ours)",
               t->peak_mib, t->delta_mib, t->base_mib);
        printf("           ratio   pairs/s ours / PyTorch %.2f; memory: our peak RSS / PyTorch's "
               "delta RSS %.2f, our peak RSS / PyTorch's peak RSS %.2f\n", r->pairs_s / t->rate,
               r->peak_mib / t->delta_mib, r->peak_mib / t->peak_mib);
      }
      fflush(stdout);
    }
    if (t1 > t0 && ours[ci][t0].ok && ours[ci][t1].ok) {
      int same = ours[ci][t0].value_hash == ours[ci][t1].value_hash &&
                 ours[ci][t0].grad_hash == ours[ci][t1].grad_hash;
      printf("%s: parameters and gradients bit-identical for %d and %d threads: %s\n", c->name,
             t0, t1, same ? "yes" : "NO");
      if (!same) fail = 1;
    }
  }
  if (g_cuda)
    printf("\n| config (device cuda) | ours pairs/s | PyTorch pairs/s | ratio | our device peak "
           "MiB | PyTorch max allocated / reserved MiB | ours / allocated |\n"
           "|---|---|---|---|---|---|---|\n");
  else
    printf("\n| config | threads | ours pairs/s | PyTorch pairs/s | ratio | our peak RSS MiB | "
           "PyTorch delta / peak RSS MiB | ours / delta | ours / peak |\n"
           "|---|---|---|---|---|---|---|---|---|\n");
  for (ci = c0; ci <= c1; ++ci)
    for (nt = t0; nt <= t1; ++nt) {
      const result *r = &ours[ci][nt];
      const torch_result *t = &base[ci][nt];
      char name[64];
      snprintf(name, sizeof name, "%s (C %d, batch %d)", CONFIGS[ci].name, CONFIGS[ci].embed,
               CONFIGS[ci].batch);
      if (!r->ok) continue;
      if (g_cuda && t->ok)
        printf("| %s | %.2f | %.2f | %.2f | %.0f | %.0f / %.0f | %.2f |\n", name, r->pairs_s,
               t->rate, r->pairs_s / t->rate, r->dev_peak_mib, t->peak_mib, t->reserved_mib,
               r->dev_peak_mib / t->peak_mib);
      else if (g_cuda)
        printf("| %s | %.2f | - | - | %.0f | - | - |\n", name, r->pairs_s, r->dev_peak_mib);
      else if (t->ok)
        printf("| %s | %d | %.2f | %.2f | %.2f | %.0f | %.0f / %.0f | %.2f | %.2f |\n", name, nt,
               r->pairs_s, t->rate, r->pairs_s / t->rate, r->peak_mib, t->delta_mib,
               t->peak_mib, r->peak_mib / t->delta_mib, r->peak_mib / t->peak_mib);
      else
        printf("| %s | %d | %.2f | - | - | %.0f | - | - | - |\n", name, nt, r->pairs_s,
               r->peak_mib);
    }
  printf("total wall time %.0f s\n", now_s() - t_start);
  return fail;
}
