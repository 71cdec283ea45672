/* bench/bench_finetune.c — the fine-tuning side of ioupos on the CPU beside PyTorch + MONAI, on
   1 and 2 OpenMP threads, in the same run (bench/bench_torch.py finetune / infer as a
   subprocess per part and thread count), then the ratios:

   train  crops/s of the SwinUNETR fine-tuning step, the step of ioupos_finetune_run (section
          22): zero the gradients, forward (train mode), Dice-CE (MONAI's DiceCELoss(
          to_onehot_y=True, softmax=True)), backward, AdamW (0.9, 0.999, eps 1e-8, lr 1e-3,
          weight decay 1e-5 except on biases and 1-D tensors). SwinUNETR 2D as MONAI's defaults
          (C 48, 14 classes, drop-path 0); crops [batch][1][96][96] uniform in [0, 1), labels
          uniform in [0, 14). batch 16 by default to keep the run short (the research step is
          32 slices x 2 crops = 64: --batch 64).
   infer  seconds per case of the validation inference (ioupos_swinunetr_evaluate's work):
          every slice of a case through ioupos_seg_predict (section 22: sliding window roi 96 x
          96, overlap 0.25, sw_batch_size 64, constant blending, the model in eval mode taking
          IOUPOS_SEG_MODEL_BATCH windows at a time), then the argmax over classes. The default
          case: 16 slices of 352 x 288 (about an abdomen's cross-section at 1 mm after the
          foreground crop; 20 windows a slice); a FLARE22 case has about 100 such slices, so
          the seconds per slice are printed too.

   Build (the Makefile's rule; `make build/bench_finetune`): this file with -fopenmp, linked
   with the implementation build/ioupos.o (-mavx2 -mfma where the CPU has them, -fopenmp), as
   the commands are.
   Usage: build/bench_finetune [--part train|infer|all] [--batch B] [--steps N] [--warmup N]
                               [--slices N] [--height H] [--width W] [--sw_batch_size N]
                               [--repeats N] [--threads T (one count only)] [--no-torch]
   Run it from the repository root (the baseline is .venv/bin/python bench/bench_torch.py).

   Timing: CLOCK_MONOTONIC. train: --warmup untimed steps (1), then --steps timed ones (3);
   crops/s = batch / the median step; the median times of forward, loss, backward and AdamW are
   printed too. infer: one untimed slice, then --repeats passes over the case (1); s/case = the
   median pass. PyTorch runs the same numbers.
   Memory: each (part, thread count) runs in its own forked process, so its peak RSS (getrusage
   ru_maxrss) is that run's alone: weights, gradients and moments (train), activations, the
   plan's buffers, the case and its logits (infer). "base" is the high-water mark once the
   model, optimiser state and inputs exist, before the first step (our activations are planned
   before it too). PyTorch's figures from bench_torch.py: peak_rss_mib (the whole Python
   process) and delta_rss_mib = peak - base (what its steps add). Our peak is compared with
   both, each named.
   Determinism: the same seeds everywhere, so after the timed steps the parameters and
   gradients (train) and the predicted labels (infer) must be bit-identical for 1 and 2
   threads; hashes are printed and compared.
   Exit status: 0, or 1 when ours fails, a loss is not finite or the hashes differ. A missing or
   failing PyTorch baseline is reported ("skipped" and why), not an error. */
#include "ioupos.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"

#define CROP 96
#define LR 1e-3
#define WD 1e-5

enum { PART_TRAIN = 0, PART_INFER = 1 };
static const char *PART_NAME[2] = {"train", "infer"};

typedef struct opts {
  int embed, classes;
  int batch, steps, warmup;                      /* train */
  int slices, height, width, sw_batch, repeats;  /* infer */
  double overlap;
} opts;

/* what a child process reports to the parent */
typedef struct result {
  int ok;
  double rate;                            /* train: crops/s; infer: seconds per case */
  double step_s, fwd_s, loss_s, bwd_s, opt_s, cpu_s; /* train: medians */
  double slice_s;                         /* infer: seconds per slice */
  long windows;                           /* infer: windows per slice */
  double value;                           /* train: last loss; infer: foreground fraction */
  double peak_mib, base_mib, param_mib, act_mib;
  size_t n_params;
  unsigned long long hash;
  char err[640];
} result;

typedef struct job {
  const opts *o;
  int part;
} job;

/* the model (SwinUNETR registered without prefix), its parameters from seed 1 */
static int make_model(ioupos_swinunetr *m, ioupos_params *p, const opts *o, int with_grad,
                      char *err, size_t cap) {
  ioupos_swinunetr_config cfg;
  ioupos_rng ir;
  int rc;
  ioupos_swinunetr_config_default(&cfg, 2); /* MONAI's: drop-path 0 */
  cfg.enc.embed_dim = o->embed;
  cfg.out_channels = o->classes;
  ioupos_rng_seed(&ir, 1);
  rc = ioupos_swinunetr_init(m, &cfg, &p->table, "");
  if (!rc) rc = ioupos_params_alloc(p, ioupos_backend_cpu(), with_grad);
  if (!rc) rc = ioupos_params_init(p, &ir);
  if (!rc) rc = ioupos_swin_encoder_buffers(&m->enc, p);
  if (rc) snprintf(err, cap, "setup: %s", ioupos_failure_reason());
  return rc;
}

static size_t count_params(const ioupos_params *p) {
  size_t n = 0;
  int i;
  for (i = 0; i < p->table.n; ++i) {
    const ioupos_tensor_info *t = &p->table.t[i];
    if (t->dtype == IOUPOS_ST_F32 && !(t->flags & IOUPOS_TENSOR_BUFFER)) n += t->numel;
  }
  return n;
}

/* ---- train: ioupos_finetune_run's step ---------------------------------------------------- */
static void run_train(const opts *o, result *r) {
  const ioupos_backend *be = ioupos_backend_cpu();
  ioupos_swinunetr m;
  ioupos_params p;
  ioupos_rng rng;
  const int B = o->batch, K = o->classes, shape[2] = {CROP, CROP};
  const size_t npix = (size_t)CROP * CROP, nlog = (size_t)B * (size_t)K * npix;
  float *x = NULL, *m1 = NULL, *m2 = NULL, *prob = NULL, *dlog = NULL;
  int *target = NULL, i, k, have = 0;
  double *stats = NULL, step[MAX_STEPS], fwd[MAX_STEPS], lss[MAX_STEPS], bwd[MAX_STEPS];
  double opt[MAX_STEPS], cpu[MAX_STEPS], loss = NAN;
  size_t q;
  memset(&m, 0, sizeof m);
  memset(&p, 0, sizeof p);
  if (make_model(&m, &p, o, 1, r->err, sizeof r->err)) goto done;
  have = 1;
  if (ioupos_swinunetr_plan(&m, &p, B, shape)) {
    snprintf(r->err, sizeof r->err, "plan: %s", ioupos_failure_reason());
    goto done;
  }
  m1 = (float *)be->alloc(p.table.total * sizeof(float));
  m2 = (float *)be->alloc(p.table.total * sizeof(float));
  x = (float *)be->alloc((size_t)B * npix * sizeof(float));
  prob = (float *)calloc(nlog, sizeof(float));
  dlog = (float *)calloc(nlog, sizeof(float));
  target = (int *)calloc((size_t)B * npix, sizeof(int));
  stats = (double *)calloc(IOUPOS_DICECE_STATS(B, K), sizeof(double));
  if (!m1 || !m2 || !x || !prob || !dlog || !target || !stats) {
    snprintf(r->err, sizeof r->err, "out of memory for a batch of %d crops", B);
    goto done;
  }
  ioupos_rng_seed(&rng, 2);
  for (q = 0; q < (size_t)B * npix; ++q) x[q] = (float)ioupos_rng_uniform(&rng);
  for (q = 0; q < (size_t)B * npix; ++q) target[q] = (int)ioupos_rng_below(&rng, (uint64_t)K);
  r->n_params = count_params(&p);
  r->param_mib = 4.0 * mib(p.table.total); /* values, gradients, two moments */
  r->act_mib = mib(m.act_n + m.scratch_n + m.grads_n + m.enc.acts.total + m.enc.scratch_n);
  r->base_mib = maxrss_mib();
  for (i = 0; i < o->warmup + o->steps; ++i) {
    double c0 = cpu_now_s(), t0 = now_s(), t1, t2, t3, t4;
    be->zero(p.grad, p.table.total * sizeof(float));
    if (ioupos_swinunetr_forward(&m, &p, x, 1, NULL)) break;
    t1 = now_s();
    /* the CPU backend's memory is host memory: the logits are read in place */
    loss = ioupos_dicece_forward(prob, stats, ioupos_swinunetr_logits(&m), target, B, K,
                                 (long)npix, NULL);
    memset(dlog, 0, nlog * sizeof(float));
    ioupos_dicece_backward(dlog, 1.0f, prob, stats, target, B, K, (long)npix, NULL);
    t2 = now_s();
    if (!isfinite(loss)) {
      snprintf(r->err, sizeof r->err, "step %d: the loss is %g", i, loss);
      goto done;
    }
    if (ioupos_swinunetr_backward(&m, &p, dlog, NULL)) break;
    t3 = now_s();
    for (k = 0; k < p.table.n; ++k) {
      const ioupos_tensor_info *t = &p.table.t[k];
      if (t->dtype != IOUPOS_ST_F32 || (t->flags & (IOUPOS_TENSOR_BUFFER | IOUPOS_TENSOR_FROZEN)))
        continue;
      be->adamw_step(p.value + t->offset, p.grad + t->offset, m1 + t->offset, m2 + t->offset,
                     t->numel, (float)LR, 0.9f, 0.999f, 1e-8f,
                     (t->flags & IOUPOS_TENSOR_NO_DECAY) ? 0.0f : (float)WD, i + 1);
    }
    if (be->sync()) break;
    t4 = now_s();
    if (i >= o->warmup) {
      int j = i - o->warmup;
      fwd[j] = t1 - t0, lss[j] = t2 - t1, bwd[j] = t3 - t2, opt[j] = t4 - t3;
      step[j] = t4 - t0, cpu[j] = cpu_now_s() - c0;
    }
  }
  if (i < o->warmup + o->steps) {
    snprintf(r->err, sizeof r->err, "step %d: %s", i, ioupos_failure_reason());
    goto done;
  }
  r->step_s = median(step, o->steps);
  r->fwd_s = median(fwd, o->steps);
  r->loss_s = median(lss, o->steps);
  r->bwd_s = median(bwd, o->steps);
  r->opt_s = median(opt, o->steps);
  r->cpu_s = median(cpu, o->steps);
  r->rate = B / r->step_s;
  r->value = loss;
  r->hash = fnv1a(p.value, p.table.total * sizeof(float)) ^
            (fnv1a(p.grad, p.table.total * sizeof(float)) * 31u);
  r->peak_mib = maxrss_mib();
  r->ok = 1;
done:
  be->release(m1);
  be->release(m2);
  be->release(x);
  free(prob);
  free(dlog);
  free(target);
  free(stats);
  if (have) ioupos_swinunetr_free(&m);
  ioupos_params_free(&p);
}

/* ---- infer: sliding-window inference of a case (ioupos_swinunetr_evaluate's per-slice work) -- */
static void run_infer(const opts *o, result *r) {
  ioupos_swinunetr m;
  ioupos_seg_predictor pr;
  ioupos_params p;
  ioupos_sw_plan plan;
  ioupos_rng rng;
  const int K = o->classes, shape[2] = {o->height, o->width}, roi[2] = {CROP, CROP};
  const size_t spx = (size_t)o->height * (size_t)o->width;
  float *img = NULL, *logits = NULL;
  int *labels = NULL, have = 0, pass, z, k, rc = 0;
  double t_pass[MAX_STEPS];
  long fg = 0;
  size_t q, acts = 0;
  memset(&m, 0, sizeof m);
  memset(&pr, 0, sizeof pr);
  memset(&p, 0, sizeof p);
  if (make_model(&m, &p, o, 0, r->err, sizeof r->err)) goto done;
  have = 1;
  if (ioupos_seg_predictor_init(&pr, &m.cfg, &p, roi, o->overlap, o->sw_batch) ||
      ioupos_sw_plan_make(&plan, 2, shape, roi, o->overlap)) {
    snprintf(r->err, sizeof r->err, "setup: %s", ioupos_failure_reason());
    goto done;
  }
  r->windows = plan.n_windows;
  img = (float *)malloc(spx * (size_t)o->slices * sizeof(float));
  logits = (float *)malloc(spx * (size_t)K * sizeof(float));
  labels = (int *)malloc(spx * (size_t)o->slices * sizeof(int));
  if (!img || !logits || !labels) {
    snprintf(r->err, sizeof r->err, "out of memory for the case");
    goto done;
  }
  ioupos_rng_seed(&rng, 3);
  for (q = 0; q < spx * (size_t)o->slices; ++q) img[q] = (float)ioupos_rng_uniform(&rng);
  r->n_params = count_params(&p);
  r->param_mib = mib(p.table.total);
  r->base_mib = maxrss_mib();
  /* one untimed slice (plans the model instances), then the timed passes over the case */
  for (pass = -1; rc == 0 && pass < o->repeats; ++pass) {
    double t0 = now_s();
    for (z = 0; z < (pass < 0 ? 1 : o->slices); ++z) {
      rc = ioupos_seg_predict(&pr, logits, img + (size_t)z * spx, o->height, o->width);
      if (!rc) rc = ioupos_argmax_classes(labels + (size_t)z * spx, logits, 1, K, (long)spx);
      if (rc) break;
    }
    if (pass >= 0) t_pass[pass] = now_s() - t0;
  }
  if (rc) {
    snprintf(r->err, sizeof r->err, "inference: %s", ioupos_failure_reason());
    goto done;
  }
  for (k = 0; k < 2; ++k)
    if (pr.inited[k])
      acts += pr.m[k].act_n + pr.m[k].scratch_n + pr.m[k].grads_n + pr.m[k].enc.acts.total +
              pr.m[k].enc.scratch_n;
  r->act_mib = mib(acts);
  r->rate = median(t_pass, o->repeats);
  r->slice_s = r->rate / o->slices;
  for (q = 0; q < spx * (size_t)o->slices; ++q) fg += labels[q] != 0;
  r->value = (double)fg / (double)(spx * (size_t)o->slices);
  r->hash = fnv1a(labels, spx * (size_t)o->slices * sizeof(int));
  r->peak_mib = maxrss_mib();
  r->ok = 1;
done:
  free(img);
  free(logits);
  free(labels);
  ioupos_seg_predictor_free(&pr);
  if (have) ioupos_swinunetr_free(&m);
  ioupos_params_free(&p);
}

static void run_job(const void *arg, void *out) {
  const job *j = (const job *)arg;
  if (j->part == PART_TRAIN) run_train(j->o, (result *)out);
  else run_infer(j->o, (result *)out);
}

static void run_torch(const opts *o, int part, int threads, torch_result *t) {
  char args[384];
  if (part == PART_TRAIN)
    snprintf(args, sizeof args, "finetune --threads %d --batch %d --embed %d --classes %d "
             "--steps %d --warmup %d", threads, o->batch, o->embed, o->classes, o->steps,
             o->warmup);
  else
    snprintf(args, sizeof args, "infer --threads %d --slices %d --height %d --width %d --embed %d "
             "--classes %d --sw_batch_size %d --overlap %g --repeats %d", threads, o->slices,
             o->height, o->width, o->embed, o->classes, o->sw_batch, o->overlap, o->repeats);
  bench_torch(args, part == PART_TRAIN ? "images_per_s" : "seconds_per_case", t);
}

static void usage(void) {
  fprintf(stderr, "usage: bench_finetune [--part train|infer|all] [--batch B] [--steps N] "
                  "[--warmup N] [--slices N] [--height H] [--width W] [--sw_batch_size N] "
                  "[--repeats N] [--threads T] [--no-torch]\n");
  exit(2);
}

int main(int argc, char **argv) {
  opts o;
  int i, part, nt, t0 = 1, t1 = 2, p0 = PART_TRAIN, p1 = PART_INFER, threads = 0, torch = 1;
  int fail = 0;
  result ours[2][3];
  torch_result base[2][3];
  double t_start = now_s();
  memset(ours, 0, sizeof ours);
  memset(base, 0, sizeof base);
  o.embed = 48, o.classes = 14, o.batch = 16, o.steps = 3, o.warmup = 1;
  o.slices = 16, o.height = 352, o.width = 288, o.sw_batch = 64, o.repeats = 1, o.overlap = 0.25;
  for (i = 1; i < argc; ++i) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--no-torch")) {
      torch = 0;
      continue;
    }
    if (!v) usage();
    if (!strcmp(a, "--part")) {
      if (!strcmp(v, "train")) p0 = p1 = PART_TRAIN;
      else if (!strcmp(v, "infer")) p0 = p1 = PART_INFER;
      else if (!strcmp(v, "all")) p0 = PART_TRAIN, p1 = PART_INFER;
      else usage();
    }
    else if (!strcmp(a, "--batch")) { if (!parse_int(v, 1, 4096, &o.batch)) usage(); }
    else if (!strcmp(a, "--steps")) { if (!parse_int(v, 1, MAX_STEPS, &o.steps)) usage(); }
    else if (!strcmp(a, "--warmup")) { if (!parse_int(v, 0, 100, &o.warmup)) usage(); }
    else if (!strcmp(a, "--slices")) { if (!parse_int(v, 1, 100000, &o.slices)) usage(); }
    else if (!strcmp(a, "--height")) { if (!parse_int(v, 1, 8192, &o.height)) usage(); }
    else if (!strcmp(a, "--width")) { if (!parse_int(v, 1, 8192, &o.width)) usage(); }
    else if (!strcmp(a, "--sw_batch_size")) { if (!parse_int(v, 1, 4096, &o.sw_batch)) usage(); }
    else if (!strcmp(a, "--repeats")) { if (!parse_int(v, 1, MAX_STEPS, &o.repeats)) usage(); }
    else if (!strcmp(a, "--threads")) { if (!parse_int(v, 1, 2, &threads)) usage(); }
    else usage();
    ++i;
  }
  if (threads) t0 = t1 = threads;
#ifndef _OPENMP
  t0 = t1 = 1;
#endif
  printf("bench_finetune: SwinUNETR 2D (C %d, %d classes, MONAI's defaults); GEMM %s, %s\n",
         o.embed, o.classes, ioupos_gemm_kernel(),
#ifdef _OPENMP
         "OpenMP"
#else
         "no OpenMP (1 thread only)"
#endif
  );
  if (p0 == PART_TRAIN)
    printf("train: fine-tuning step (forward, Dice-CE, backward, AdamW) on %d crops of 96 x 96%s, "
           "%d warm-up + %d timed steps\n", o.batch,
           o.batch == 64 ? " (the research step)" : " (the research step has 64: --batch 64)",
           o.warmup, o.steps);
  if (p1 == PART_INFER)
    printf("infer: a case of %d slices of %d x %d, sliding window roi 96, overlap %g, "
           "sw_batch_size %d, argmax; 1 untimed slice + %d timed pass(es)\n", o.slices, o.height,
           o.width, o.overlap, o.sw_batch, o.repeats);
  for (part = p0; part <= p1; ++part) {
    for (nt = t0; nt <= t1; ++nt) {
      result *r = &ours[part][nt];
      torch_result *t = &base[part][nt];
      job j;
      j.o = &o, j.part = part;
      bench_forked(run_job, &j, nt, r, sizeof *r, r->err, sizeof r->err);
      if (!r->ok) {
        printf("%s, threads %d: ours FAILED: %s\n", PART_NAME[part], nt, r->err);
        fail = 1;
        continue;
      }
      if (part == PART_TRAIN)
        printf("train, threads %d: ours    %7.2f crops/s (median step %.3f s: forward %.3f, "
               "Dice-CE %.3f, backward %.3f, AdamW %.3f; CPU time %.3f s); last loss %.6f; %.2f M "
               "parameters\n", nt, r->rate, r->step_s, r->fwd_s, r->loss_s, r->bwd_s, r->opt_s,
               r->cpu_s, r->value, (double)r->n_params / 1e6);
      else
        printf("infer, threads %d: ours    %7.2f s per case (%.3f s per slice of %ld windows); "
               "foreground %.4f; %.2f M parameters\n", nt, r->rate, r->slice_s, r->windows,
               r->value, (double)r->n_params / 1e6);
      printf("                  ours    peak RSS %.0f MiB (base %.0f before the first step); "
             "parameters%s %.0f MiB, activations + plan buffers %.0f MiB; hash %016llx\n",
             r->peak_mib, r->base_mib, part == PART_TRAIN ? " + gradients + moments" : "",
             r->param_mib, r->act_mib, r->hash);
      fflush(stdout);
      if (!torch) snprintf(t->why, sizeof t->why, "--no-torch");
      else run_torch(&o, part, nt, t);
      if (!t->ok) {
        printf("                  PyTorch baseline skipped: %s\n", t->why);
        continue;
      }
      printf("                  PyTorch %7.2f %s; %.2f M parameters%s; peak RSS %.0f MiB (whole "
             "process), delta %.0f MiB (peak - base %.0f)\n", t->rate,
             part == PART_TRAIN ? "crops/s" : "s per case", t->params / 1e6,
             t->params == (double)r->n_params ? " (same count as ours)" : " (DIFFERS from ours)",
             t->peak_mib, t->delta_mib, t->base_mib);
      printf("                  ratio   %s %.2f; memory: our peak RSS / PyTorch's delta %.2f, "
             "/ PyTorch's peak %.2f\n",
             part == PART_TRAIN ? "crops/s ours / PyTorch" : "speed-up (PyTorch s / ours s)",
             part == PART_TRAIN ? r->rate / t->rate : t->rate / r->rate,
             r->peak_mib / t->delta_mib, r->peak_mib / t->peak_mib);
      fflush(stdout);
    }
    if (t1 > t0 && ours[part][t0].ok && ours[part][t1].ok) {
      int same = ours[part][t0].hash == ours[part][t1].hash;
      printf("%s: %s bit-identical for %d and %d threads: %s\n", PART_NAME[part],
             part == PART_TRAIN ? "parameters and gradients" : "predicted labels", t0, t1,
             same ? "yes" : "NO");
      if (!same) fail = 1;
    }
  }
  printf("\n| part | threads | ours | PyTorch | ours vs PyTorch (speed) | our peak RSS MiB | "
         "PyTorch delta / peak RSS MiB | ours / delta | ours / peak |\n"
         "|---|---|---|---|---|---|---|---|---|\n");
  for (part = p0; part <= p1; ++part)
    for (nt = t0; nt <= t1; ++nt) {
      const result *r = &ours[part][nt];
      const torch_result *t = &base[part][nt];
      const char *unit = part == PART_TRAIN ? "crops/s" : "s/case";
      if (!r->ok) continue;
      if (t->ok)
        printf("| %s | %d | %.2f %s | %.2f %s | %.2f | %.0f | %.0f / %.0f | %.2f | %.2f |\n",
               PART_NAME[part], nt, r->rate, unit, t->rate, unit,
               part == PART_TRAIN ? r->rate / t->rate : t->rate / r->rate, r->peak_mib,
               t->delta_mib, t->peak_mib, r->peak_mib / t->delta_mib, r->peak_mib / t->peak_mib);
      else
        printf("| %s | %d | %.2f %s | - | - | %.0f | - | - | - |\n", PART_NAME[part], nt,
               r->rate, unit, r->peak_mib);
    }
  printf("total wall time %.0f s\n", now_s() - t_start);
  return fail;
}
