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
   failing PyTorch baseline is reported ("skipped" and why), not an error.

   --device cuda (build/bench_finetune_cuda: this file with IOUPOS_WITH_CUDA, linked with
   build/ioupos_cuda.o; `make bench-cuda`): both parts on the CUDA backend, device 0, beside
   bench_torch.py finetune / infer --device cuda on the same GPU. Defaults there: the research
   step's batch 64, 1 warm-up + 5 timed steps, 1 thread. train is ioupos_finetune_run's step on
   a backend: forward on the device, the logits downloaded, Dice-CE and its gradient on the host,
   the gradient uploaded, backward and AdamW on the device; the backend's sync() closes each
   timed part. infer: ioupos_seg_predict uploads each chunk of windows and downloads its logits
   (both timed; PyTorch keeps the whole case on the GPU). Memory: the backend's device memory
   (ioupos_cuda_mem_peak) beside torch.cuda.max_memory_allocated (and max_memory_reserved); the
   peak RSS is printed too. Without a usable device: "SKIP" with the reason, exit 0. --probe as
   bench_simsiam's. Test sizes (--no-torch only): --embed C, --classes K, --crop S (the
   training crops S x S and the inference window; a multiple of 32). */
#include "ioupos.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"

#define LR 1e-3
#define WD 1e-5

enum { PART_TRAIN = 0, PART_INFER = 1 };
static const char *PART_NAME[2] = {"train", "infer"};

static int g_cuda = 0; /* --device cuda */

typedef struct opts {
  int embed, classes, crop; /* crop: train crops and the inference window (96) */
  int batch, steps, warmup;                      /* train */
  int slices, height, width, sw_batch, repeats;  /* infer */
  double overlap;
} opts;

/* what a child process reports to the parent */
typedef struct result {
  int ok, skip;                           /* skip: no usable CUDA device (err says why) */
  double dev_peak_mib, dev_base_mib;      /* --device cuda: the backend's device memory */
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
static int make_model(ioupos_swinunetr *m, ioupos_params *p, const ioupos_backend *be,
                      const opts *o, int with_grad, char *err, size_t cap) {
  ioupos_swinunetr_config cfg;
  ioupos_rng ir;
  int rc;
  ioupos_swinunetr_config_default(&cfg, 2); /* MONAI's: drop-path 0 */
  cfg.enc.embed_dim = o->embed;
  cfg.out_channels = o->classes;
  ioupos_rng_seed(&ir, 1);
  rc = ioupos_swinunetr_init(m, &cfg, &p->table, "");
  if (!rc) rc = ioupos_params_alloc(p, be, with_grad);
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
static void run_train(const ioupos_backend *be, const opts *o, result *r) {
  const int on_cpu = be == ioupos_backend_cpu();
  ioupos_swinunetr m;
  ioupos_params p;
  ioupos_rng rng;
  const int B = o->batch, K = o->classes, shape[2] = {o->crop, o->crop};
  const size_t npix = (size_t)o->crop * o->crop, nlog = (size_t)B * (size_t)K * npix;
  float *x = NULL, *m1 = NULL, *m2 = NULL, *prob = NULL, *dlog = NULL, *hx = NULL;
  float *hlog = NULL, *ddev = NULL, *hv = NULL, *hg = NULL;
  const float *v, *g;
  int *target = NULL, i, k, have = 0;
  double *stats = NULL, step[MAX_STEPS], fwd[MAX_STEPS], lss[MAX_STEPS], bwd[MAX_STEPS];
  double opt[MAX_STEPS], cpu[MAX_STEPS], loss = NAN;
  size_t q;
  memset(&m, 0, sizeof m);
  memset(&p, 0, sizeof p);
  if (make_model(&m, &p, be, o, 1, r->err, sizeof r->err)) goto done;
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
  /* another backend: the crops go up once, the logits come down and the gradient goes up
     every step (ioupos_finetune_run's way) */
  hx = on_cpu ? x : (float *)malloc((size_t)B * npix * sizeof(float));
  if (!on_cpu) {
    hlog = (float *)malloc(nlog * sizeof(float));
    ddev = (float *)be->alloc(nlog * sizeof(float));
  }
  if (!m1 || !m2 || !x || !prob || !dlog || !target || !stats || !hx ||
      (!on_cpu && (!hlog || !ddev))) {
    snprintf(r->err, sizeof r->err, "out of memory for a batch of %d crops", B);
    goto done;
  }
  ioupos_rng_seed(&rng, 2);
  for (q = 0; q < (size_t)B * npix; ++q) hx[q] = (float)ioupos_rng_uniform(&rng);
  for (q = 0; q < (size_t)B * npix; ++q) target[q] = (int)ioupos_rng_below(&rng, (uint64_t)K);
  if (!on_cpu) {
    be->upload(x, hx, (size_t)B * npix * sizeof(float));
    free(hx);
    hx = NULL;
  }
  r->n_params = count_params(&p);
  r->param_mib = 4.0 * mib(p.table.total); /* values, gradients, two moments */
  r->act_mib = mib(m.act_n + m.scratch_n + m.grads_n + m.enc.acts.total + m.enc.scratch_n);
  r->base_mib = maxrss_mib();
  r->dev_base_mib = bench_dev_in_use_mib(g_cuda);
  for (i = 0; i < o->warmup + o->steps; ++i) {
    double c0, t0, t1, t2, t3, t4;
    if (be->sync()) break;
    c0 = cpu_now_s(), t0 = now_s();
    be->zero(p.grad, p.table.total * sizeof(float));
    if (ioupos_swinunetr_forward(&m, &p, x, 1, NULL) || be->sync()) break;
    t1 = now_s();
    /* the CPU backend's memory is host memory: the logits are read in place */
    if (!on_cpu) be->download(hlog, ioupos_swinunetr_logits(&m), nlog * sizeof(float));
    loss = ioupos_dicece_forward(prob, stats, on_cpu ? ioupos_swinunetr_logits(&m) : hlog, target,
                                 B, K, (long)npix, NULL);
    memset(dlog, 0, nlog * sizeof(float));
    ioupos_dicece_backward(dlog, 1.0f, prob, stats, target, B, K, (long)npix, NULL);
    if (!on_cpu) be->upload(ddev, dlog, nlog * sizeof(float));
    if (be->sync()) break;
    t2 = now_s();
    if (!isfinite(loss)) {
      snprintf(r->err, sizeof r->err, "step %d: the loss is %g", i, loss);
      goto done;
    }
    if (ioupos_swinunetr_backward(&m, &p, on_cpu ? dlog : ddev, NULL) || be->sync()) break;
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
  r->peak_mib = maxrss_mib(); /* before the host copies of the hash (--device cuda) */
  r->dev_peak_mib = bench_dev_peak_mib(g_cuda);
  v = bench_host_view(be, p.value, p.table.total, &hv);
  g = bench_host_view(be, p.grad, p.table.total, &hg);
  if (!v || !g || be->sync()) {
    snprintf(r->err, sizeof r->err, "reading the parameters back: %s",
             v && g ? ioupos_failure_reason() : "out of memory");
    goto done;
  }
  r->hash = fnv1a(v, p.table.total * sizeof(float)) ^
            (fnv1a(g, p.table.total * sizeof(float)) * 31u);
  r->ok = 1;
done:
  if (be) {
    be->release(m1);
    be->release(m2);
    be->release(x);
    be->release(ddev);
  }
  if (!on_cpu) free(hx);
  free(hlog);
  free(hv);
  free(hg);
  free(prob);
  free(dlog);
  free(target);
  free(stats);
  if (have) ioupos_swinunetr_free(&m);
  ioupos_params_free(&p);
}

/* ---- infer: sliding-window inference of a case (ioupos_swinunetr_evaluate's per-slice work) -- */
static void run_infer(const ioupos_backend *be, const opts *o, result *r) {
  ioupos_swinunetr m;
  ioupos_seg_predictor pr;
  ioupos_params p;
  ioupos_sw_plan plan;
  ioupos_rng rng;
  const int K = o->classes, shape[2] = {o->height, o->width}, roi[2] = {o->crop, o->crop};
  const size_t spx = (size_t)o->height * (size_t)o->width;
  float *img = NULL, *logits = NULL;
  int *labels = NULL, have = 0, pass, z, k, rc = 0;
  double t_pass[MAX_STEPS];
  long fg = 0;
  size_t q, acts = 0;
  memset(&m, 0, sizeof m);
  memset(&pr, 0, sizeof pr);
  memset(&p, 0, sizeof p);
  if (make_model(&m, &p, be, o, 0, r->err, sizeof r->err)) goto done;
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
  r->dev_base_mib = bench_dev_in_use_mib(g_cuda);
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
  r->dev_peak_mib = bench_dev_peak_mib(g_cuda);
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
  result *r = (result *)out;
  const ioupos_backend *be = bench_backend(g_cuda, r->err, sizeof r->err);
  if (!be) {
    r->skip = strncmp(r->err, BENCH_SKIP_PREFIX, strlen(BENCH_SKIP_PREFIX)) == 0;
    return;
  }
  if (j->part == PART_TRAIN) run_train(be, j->o, r);
  else run_infer(be, j->o, r);
}

static void run_torch(const opts *o, int part, int threads, torch_result *t) {
  char args[384], dev[32];
  const char *tf32 = getenv("IOUPOS_CUDA_TF32");
  snprintf(dev, sizeof dev, "%s%s", g_cuda ? " --device cuda" : "",
           g_cuda && tf32 && strcmp(tf32, "1") == 0 ? " --tf32" : "");
  if (part == PART_TRAIN)
    snprintf(args, sizeof args, "finetune --threads %d --batch %d --embed %d --classes %d "
             "--steps %d --warmup %d%s", threads, o->batch, o->embed, o->classes, o->steps,
             o->warmup, dev);
  else
    snprintf(args, sizeof args, "infer --threads %d --slices %d --height %d --width %d --embed %d "
             "--classes %d --sw_batch_size %d --overlap %g --repeats %d%s", threads, o->slices,
             o->height, o->width, o->embed, o->classes, o->sw_batch, o->overlap, o->repeats, dev);
  bench_torch_dev(args, part == PART_TRAIN ? "images_per_s" : "seconds_per_case", g_cuda, t);
}

static void usage(void) {
  fprintf(stderr, "usage: bench_finetune [--part train|infer|all] [--batch B] [--steps N] "
                  "[--warmup N] [--slices N] [--height H] [--width W] [--sw_batch_size N] "
                  "[--repeats N] [--threads T] [--no-torch] [--device cpu|cuda] [--probe]\n"
                  "       test sizes (--no-torch only): [--embed C] [--classes K] [--crop S]\n");
  exit(2);
}

int main(int argc, char **argv) {
  opts o;
  int i, part, nt, t0 = 1, t1 = 2, p0 = PART_TRAIN, p1 = PART_INFER, threads = 0, torch = 1;
  int fail = 0, probe = 0, batch = 0, steps = 0, test_sizes = 0;
  result ours[2][3];
  torch_result base[2][3];
  double t_start = now_s();
  memset(ours, 0, sizeof ours);
  memset(base, 0, sizeof base);
  o.embed = 48, o.classes = 14, o.crop = 96, o.batch = 16, o.steps = 3, o.warmup = 1;
  o.slices = 16, o.height = 352, o.width = 288, o.sw_batch = 64, o.repeats = 1, o.overlap = 0.25;
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
    if (!strcmp(a, "--part")) {
      if (!strcmp(v, "train")) p0 = p1 = PART_TRAIN;
      else if (!strcmp(v, "infer")) p0 = p1 = PART_INFER;
      else if (!strcmp(v, "all")) p0 = PART_TRAIN, p1 = PART_INFER;
      else usage();
    }
    else if (!strcmp(a, "--device")) {
      if (!strcmp(v, "cpu")) g_cuda = 0;
      else if (!strcmp(v, "cuda")) g_cuda = 1;
      else usage();
    }
    else if (!strcmp(a, "--batch")) { if (!parse_int(v, 1, 4096, &batch)) usage(); }
    else if (!strcmp(a, "--steps")) { if (!parse_int(v, 1, MAX_STEPS, &steps)) usage(); }
    else if (!strcmp(a, "--warmup")) { if (!parse_int(v, 0, 100, &o.warmup)) usage(); }
    else if (!strcmp(a, "--slices")) { if (!parse_int(v, 1, 100000, &o.slices)) usage(); }
    else if (!strcmp(a, "--height")) { if (!parse_int(v, 1, 8192, &o.height)) usage(); }
    else if (!strcmp(a, "--width")) { if (!parse_int(v, 1, 8192, &o.width)) usage(); }
    else if (!strcmp(a, "--sw_batch_size")) { if (!parse_int(v, 1, 4096, &o.sw_batch)) usage(); }
    else if (!strcmp(a, "--repeats")) { if (!parse_int(v, 1, MAX_STEPS, &o.repeats)) usage(); }
    else if (!strcmp(a, "--threads")) { if (!parse_int(v, 1, 2, &threads)) usage(); }
    else if (!strcmp(a, "--embed")) {
      if (!parse_int(v, 3, 768, &o.embed) || o.embed % 3) usage();
      test_sizes = 1;
    }
    else if (!strcmp(a, "--classes")) {
      if (!parse_int(v, 2, 255, &o.classes)) usage();
      test_sizes = 1;
    }
    else if (!strcmp(a, "--crop")) {
      if (!parse_int(v, 32, 1024, &o.crop) || o.crop % 32) usage();
      test_sizes = 1;
    }
    else usage();
    ++i;
  }
  if (probe) return bench_probe();
  if (test_sizes && torch) {
    fprintf(stderr, "bench_finetune: --embed, --classes and --crop are test sizes: with "
                    "--no-torch only\n");
    usage();
  }
  if (g_cuda) /* the GPU run: the research step's batch, 5 timed steps, one thread */
    o.batch = 64, o.steps = 5, t0 = t1 = 1;
  if (batch) o.batch = batch;
  if (steps) o.steps = steps;
  if (threads) t0 = t1 = threads;
#ifndef _OPENMP
  t0 = t1 = 1;
#endif
  printf("bench_finetune: SwinUNETR 2D (C %d, %d classes, MONAI's defaults); %s%s, %s\n",
         o.embed, o.classes,
         g_cuda ? "device cuda (the CUDA backend, device 0; host parts: GEMM " : "GEMM ",
         ioupos_gemm_kernel(),
#ifdef _OPENMP
         g_cuda ? "OpenMP)" : "OpenMP"
#else
         g_cuda ? "no OpenMP)" : "no OpenMP (1 thread only)"
#endif
  );
  if (p0 == PART_TRAIN)
    printf("train: fine-tuning step (forward, Dice-CE, backward, AdamW) on %d crops of %d x %d%s, "
           "%d warm-up + %d timed steps\n", o.batch, o.crop, o.crop,
           o.batch == 64 ? " (the research step)" : " (the research step has 64: --batch 64)",
           o.warmup, o.steps);
  if (p1 == PART_INFER)
    printf("infer: a case of %d slices of %d x %d, sliding window roi %d, overlap %g, "
           "sw_batch_size %d, argmax; 1 untimed slice + %d timed pass(es)\n", o.slices, o.height,
           o.width, o.crop, o.overlap, o.sw_batch, o.repeats);
  for (part = p0; part <= p1; ++part) {
    for (nt = t0; nt <= t1; ++nt) {
      result *r = &ours[part][nt];
      torch_result *t = &base[part][nt];
      job j;
      j.o = &o, j.part = part;
      bench_forked(run_job, &j, nt, r, sizeof *r, r->err, sizeof r->err);
      if (r->skip) {
        printf("bench_finetune: SKIP: %s\n", r->err);
        return 0;
      }
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
      if (g_cuda)
        printf("                  ours    device memory: peak %.0f MiB (the backend's "
               "allocations; %.0f before the first step); parameters%s %.0f MiB, activations + "
               "plan buffers %.0f MiB; host peak RSS %.0f MiB; hash %016llx\n", r->dev_peak_mib,
               r->dev_base_mib, part == PART_TRAIN ? " + gradients + moments" : "",
               r->param_mib, r->act_mib, r->peak_mib, r->hash);
      else
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
      if (g_cuda)
        printf("                  PyTorch %7.2f %s; %.2f M parameters%s; device memory: max "
               "allocated %.0f MiB (%.0f before the first step), max reserved %.0f MiB\n",
               t->rate, part == PART_TRAIN ? "crops/s" : "s per case", t->params / 1e6,
               t->params == (double)r->n_params ? " (same count as ours)" : " (DIFFERS from ours)",
               t->peak_mib, t->base_mib, t->reserved_mib);
      else
        printf("                  PyTorch %7.2f %s; %.2f M parameters%s; peak RSS %.0f MiB (whole "
               "process), delta %.0f MiB (peak - base %.0f)\n", t->rate,
               part == PART_TRAIN ? "crops/s" : "s per case", t->params / 1e6,
               t->params == (double)r->n_params ? " (same count as ours)" : " (DIFFERS from ours)",
               t->peak_mib, t->delta_mib, t->base_mib);
      if (g_cuda)
        printf("                  ratio   %s %.2f; device memory: our peak / PyTorch's max "
               "allocated %.2f, / its max reserved %.2f\n",
               part == PART_TRAIN ? "crops/s ours / PyTorch" : "speed-up (PyTorch s / ours s)",
               part == PART_TRAIN ? r->rate / t->rate : t->rate / r->rate,
               r->dev_peak_mib / t->peak_mib, r->dev_peak_mib / t->reserved_mib);
      else
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
  if (g_cuda)
    printf("\n| part (device cuda) | ours | PyTorch | ours vs PyTorch (speed) | our device peak "
           "MiB | PyTorch max allocated / reserved MiB | ours / allocated |\n"
           "|---|---|---|---|---|---|---|\n");
  else
    printf("\n| part | threads | ours | PyTorch | ours vs PyTorch (speed) | our peak RSS MiB | "
           "PyTorch delta / peak RSS MiB | ours / delta | ours / peak |\n"
           "|---|---|---|---|---|---|---|---|---|\n");
  for (part = p0; part <= p1; ++part)
    for (nt = t0; nt <= t1; ++nt) {
      const result *r = &ours[part][nt];
      const torch_result *t = &base[part][nt];
      const char *unit = part == PART_TRAIN ? "crops/s" : "s/case";
      double speed = part == PART_TRAIN ? r->rate / t->rate : t->rate / r->rate;
      if (!r->ok) continue;
      if (g_cuda && t->ok)
        printf("| %s | %.2f %s | %.2f %s | %.2f | %.0f | %.0f / %.0f | %.2f |\n",
               PART_NAME[part], r->rate, unit, t->rate, unit, speed, r->dev_peak_mib,
               t->peak_mib, t->reserved_mib, r->dev_peak_mib / t->peak_mib);
      else if (g_cuda)
        printf("| %s | %.2f %s | - | - | %.0f | - | - |\n", PART_NAME[part], r->rate, unit,
               r->dev_peak_mib);
      else if (t->ok)
        printf("| %s | %d | %.2f %s | %.2f %s | %.2f | %.0f | %.0f / %.0f | %.2f | %.2f |\n",
               PART_NAME[part], nt, r->rate, unit, t->rate, unit, speed, r->peak_mib,
               t->delta_mib, t->peak_mib, r->peak_mib / t->delta_mib, r->peak_mib / t->peak_mib);
      else
        printf("| %s | %d | %.2f %s | - | - | %.0f | - | - | - |\n", PART_NAME[part], nt,
               r->rate, unit, r->peak_mib);
    }
  printf("total wall time %.0f s\n", now_s() - t_start);
  return fail;
}
