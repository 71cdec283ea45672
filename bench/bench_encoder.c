/* bench/bench_encoder.c — images/s and memory of one training step of the Swin encoder
   (section 17: ioupos_swin_encoder_forward + ioupos_swin_encoder_backward) on the CPU, on 1 and
   2 OpenMP threads, beside PyTorch + MONAI doing the same step in the same run
   (bench/bench_torch.py, run as a subprocess per thread count), then the ratios.

   The step, as bench_torch.py's `encoder`: MONAI SwinTransformer C=48 (--embed), window 7,
   patch 2, depths 2-2-2-2, heads 3-6-12-24, drop-path 0.1, train mode; input [batch, 1, 96, 96]
   uniform in [0, 1); forward (normalize=True), loss = feature.sum() where feature is the
   spatial mean of the last stage's output (so dfeature = ones), backward; the gradients are
   zeroed before each step (torch: zero_grad(set_to_none=True)). No optimiser step.

   Build (the Makefile's rule; `make build/bench_encoder`): this file with -fopenmp, linked
   with the implementation build/ioupos.o (-mavx2 -mfma where the CPU has them, -fopenmp), as
   the commands are.
   Usage: build/bench_encoder [--batch 32] [--size 96] [--embed 48] [--steps 5] [--warmup 2]
                              [--threads T (one count only; default 1 and 2)] [--no-torch]
   Run it from the repository root (the baseline is .venv/bin/python bench/bench_torch.py).

   Timing: CLOCK_MONOTONIC around each whole step (zero gradients, forward, backward);
   --warmup untimed steps, then --steps timed ones; images/s = batch / median step time (the
   median forward and backward times are printed too).
   Memory: each thread count runs in its own forked process (the parent allocates nothing big
   before forking), so its peak RSS (getrusage ru_maxrss) is that configuration's alone: the
   whole process, weights, gradients, activations, scratch and the GEMM's packing buffers.
   "base" is the same high-water mark after the model, its activation plan and the input exist
   and before the first step. The arenas are printed separately (parameters + gradients,
   activations, scratch). PyTorch's figures come from bench_torch.py: peak_rss_mib (the whole
   Python process, interpreter and libraries included) and delta_rss_mib = peak - base (what
   its steps add: activations, gradients, allocator caches). Our peak RSS is compared with both,
   each named.
   Determinism: every run uses the same seeds, so the gradients after the last step must be
   bit-identical for 1 and 2 threads; a hash of the gradient arena and of the feature is
   printed per thread count and compared.
   Exit status: 0, or 1 when our step fails or the hashes differ. A missing or failing PyTorch
   baseline is reported ("skipped" and why), not an error. */
#include "ioupos.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"

typedef struct opts {
  int batch, size, embed, steps, warmup, threads, torch;
} opts;

/* what a child process reports to the parent */
typedef struct result {
  int ok;
  double img_s, step_s, fwd_s, bwd_s, img_s_mean, cpu_s;
  double peak_mib, base_mib, param_mib, act_mib, scratch_mib;
  unsigned long long grad_hash, feat_hash;
  char err[640];
} result;

/* One measurement, in the measuring child, on the thread count bench_forked set. */
static void run_ours(const void *arg, void *out) {
  const opts *o = (const opts *)arg;
  result *r = (result *)out;
  ioupos_swin_config cfg;
  ioupos_swin_encoder enc;
  ioupos_params p;
  ioupos_rng rng, drng;
  int shape[2], rc, i, total = o->warmup + o->steps;
  size_t nx, nf, k;
  float *x = NULL, *dfeat = NULL;
  double fwd[MAX_STEPS], bwd[MAX_STEPS], step[MAX_STEPS], cpu[MAX_STEPS], sum = 0.0;
  memset(r, 0, sizeof *r);
  memset(&p, 0, sizeof p);
  memset(&enc, 0, sizeof enc);
  ioupos_swin_config_default(&cfg, 2);
  cfg.embed_dim = o->embed;
  shape[0] = shape[1] = o->size;
  rc = ioupos_swin_encoder_init(&enc, &cfg, &p.table, "");
  if (!rc) rc = ioupos_params_alloc(&p, ioupos_backend_cpu(), 1);
  ioupos_rng_seed(&rng, 1);
  if (!rc) rc = ioupos_params_init(&p, &rng);
  if (!rc) rc = ioupos_swin_encoder_plan(&enc, &p, o->batch, shape);
  if (rc) {
    snprintf(r->err, sizeof r->err, "setup: %s", ioupos_failure_reason());
    goto done;
  }
  nx = (size_t)o->batch * (size_t)o->size * (size_t)o->size;
  nf = (size_t)o->batch * (size_t)ioupos_swin_feature_dim(&cfg);
  x = (float *)malloc(nx * sizeof(float));
  dfeat = (float *)malloc(nf * sizeof(float));
  if (!x || !dfeat) {
    snprintf(r->err, sizeof r->err, "out of memory for the input");
    goto done;
  }
  ioupos_rng_seed(&rng, 2);
  for (k = 0; k < nx; ++k) x[k] = (float)ioupos_rng_uniform(&rng);
  for (k = 0; k < nf; ++k) dfeat[k] = 1.0f; /* loss = feature.sum() */
  ioupos_rng_seed(&drng, 3);                /* drop-path draws */
  r->base_mib = maxrss_mib();
  r->param_mib = 2.0 * (double)p.table.total * sizeof(float) / 1048576.0;
  r->act_mib = (double)enc.acts.total * sizeof(float) / 1048576.0;
  r->scratch_mib = (double)enc.scratch_n * sizeof(float) / 1048576.0;
  for (i = 0; i < total; ++i) {
    double c0 = cpu_now_s(), t0 = now_s(), t1, t2;
    memset(p.grad, 0, p.table.total * sizeof(float));
    rc = ioupos_swin_encoder_forward(&enc, &p, x, 1, &drng);
    t1 = now_s();
    if (!rc) rc = ioupos_swin_encoder_backward(&enc, &p, NULL, dfeat, NULL);
    t2 = now_s();
    if (rc) {
      snprintf(r->err, sizeof r->err, "step %d: %s", i, ioupos_failure_reason());
      goto done;
    }
    if (i >= o->warmup) {
      fwd[i - o->warmup] = t1 - t0;
      bwd[i - o->warmup] = t2 - t1;
      step[i - o->warmup] = t2 - t0;
      cpu[i - o->warmup] = cpu_now_s() - c0;
      sum += t2 - t0;
    }
  }
  r->step_s = median(step, o->steps);
  r->fwd_s = median(fwd, o->steps);
  r->bwd_s = median(bwd, o->steps);
  r->cpu_s = median(cpu, o->steps);
  r->img_s = o->batch / r->step_s;
  r->img_s_mean = o->batch / (sum / o->steps);
  r->grad_hash = fnv1a(p.grad, p.table.total * sizeof(float));
  r->feat_hash = fnv1a(ioupos_swin_encoder_feature(&enc), nf * sizeof(float));
  r->peak_mib = maxrss_mib();
  r->ok = 1;
done:
  free(x);
  free(dfeat);
  ioupos_swin_encoder_free(&enc);
  ioupos_params_free(&p);
}

static void run_torch(const opts *o, int threads, torch_result *t) {
  char args[256];
  snprintf(args, sizeof args, "encoder --threads %d --batch %d --size %d --embed %d --steps %d "
           "--warmup %d", threads, o->batch, o->size, o->embed, o->steps, o->warmup);
  bench_torch(args, "images_per_s", t);
}

static void usage(void) {
  fprintf(stderr, "usage: bench_encoder [--batch N] [--size S] [--embed C] [--steps N] "
                  "[--warmup N] [--threads T] [--no-torch]\n");
  exit(2);
}

int main(int argc, char **argv) {
  opts o;
  int i, nt, t0 = 1, t1 = 2, nres = 0, fail = 0;
  result ours[3];
  torch_result base[3];
  o.batch = 32, o.size = 96, o.embed = 48, o.steps = 5, o.warmup = 2, o.threads = 0, o.torch = 1;
  for (i = 1; i < argc; ++i) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--no-torch")) {
      o.torch = 0;
      continue;
    }
    if (!v) usage();
    if (!strcmp(a, "--batch")) { if (!parse_int(v, 1, 4096, &o.batch)) usage(); }
    else if (!strcmp(a, "--size")) { if (!parse_int(v, 1, 4096, &o.size)) usage(); }
    else if (!strcmp(a, "--embed")) { if (!parse_int(v, 3, 1024, &o.embed) || o.embed % 3) usage(); }
    else if (!strcmp(a, "--steps")) { if (!parse_int(v, 1, MAX_STEPS, &o.steps)) usage(); }
    else if (!strcmp(a, "--warmup")) { if (!parse_int(v, 0, 100, &o.warmup)) usage(); }
    else if (!strcmp(a, "--threads")) { if (!parse_int(v, 1, 2, &o.threads)) usage(); }
    else usage();
    ++i;
  }
  if (o.threads) t0 = t1 = o.threads;
#ifndef _OPENMP
  t0 = t1 = 1;
#endif
  printf("bench_encoder: Swin encoder forward + backward (train, drop-path 0.1), C=%d, input "
         "%dx1x%dx%d, %d warm-up + %d timed steps; GEMM %s, %s\n",
         o.embed, o.batch, o.size, o.size, o.warmup, o.steps,
         ioupos_gemm_kernel(),
#ifdef _OPENMP
         "OpenMP"
#else
         "no OpenMP (1 thread only)"
#endif
  );
  for (nt = t0; nt <= t1; ++nt) {
    result *r = &ours[nt];
    torch_result *t = &base[nt];
    bench_forked(run_ours, &o, nt, r, sizeof *r, r->err, sizeof r->err);
    ++nres;
    if (!r->ok) {
      printf("threads %d: ours FAILED: %s\n", nt, r->err);
      fail = 1;
      continue;
    }
    printf("threads %d: ours    %7.2f images/s (median step %.3f s: forward %.3f s, backward "
           "%.3f s; CPU time %.3f s; mean %.2f images/s)\n", nt, r->img_s, r->step_s, r->fwd_s,
           r->bwd_s, r->cpu_s, r->img_s_mean);
    printf("           ours    peak RSS %.0f MiB (base %.0f MiB before the first step); arenas: "
           "parameters + gradients %.0f MiB, activations %.0f MiB, scratch %.0f MiB\n",
           r->peak_mib, r->base_mib, r->param_mib, r->act_mib, r->scratch_mib);
    printf("           ours    hash of the gradients %016llx, of the feature %016llx\n",
           r->grad_hash, r->feat_hash);
    fflush(stdout);
    if (!o.torch) {
      snprintf(t->why, sizeof t->why, "--no-torch");
      t->ok = 0;
    } else {
      run_torch(&o, nt, t);
    }
    if (!t->ok) {
      printf("           PyTorch baseline skipped: %s\n", t->why);
      continue;
    }
    printf("           PyTorch %7.2f images/s; peak RSS %.0f MiB (whole process), delta %.0f "
           "MiB (peak - base %.0f, what the steps add)\n", t->rate, t->peak_mib, t->delta_mib,
           t->base_mib);
    printf("           ratio   images/s ours / PyTorch %.2f; memory: our peak RSS / PyTorch's "
           "delta RSS %.2f, our peak RSS / PyTorch's peak RSS %.2f\n", r->img_s / t->rate,
           r->peak_mib / t->delta_mib, r->peak_mib / t->peak_mib);
    fflush(stdout);
  }
  if (t1 > t0 && ours[t0].ok && ours[t1].ok) {
    int same = ours[t0].grad_hash == ours[t1].grad_hash && ours[t0].feat_hash == ours[t1].feat_hash;
    printf("gradients and feature bit-identical for %d and %d threads: %s\n", t0, t1,
           same ? "yes" : "NO");
    if (!same) fail = 1;
  }
  printf("\n| threads | ours images/s | PyTorch images/s | ratio | our peak RSS MiB | PyTorch "
         "delta / peak RSS MiB | ours / delta | ours / peak |\n|---|---|---|---|---|---|---|---|\n");
  for (nt = t0; nt <= t1; ++nt) {
    const result *r = &ours[nt];
    const torch_result *t = &base[nt];
    if (!r->ok) continue;
    if (t->ok)
      printf("| %d | %.2f | %.2f | %.2f | %.0f | %.0f / %.0f | %.2f | %.2f |\n", nt, r->img_s,
             t->rate, r->img_s / t->rate, r->peak_mib, t->delta_mib, t->peak_mib,
             r->peak_mib / t->delta_mib, r->peak_mib / t->peak_mib);
    else
      printf("| %d | %.2f | - | - | %.0f | - | - | - |\n", nt, r->img_s, r->peak_mib);
  }
  (void)nres;
  return fail;
}
