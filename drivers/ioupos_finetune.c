/* ioupos-finetune — fine-tuning of a SwinUNETR for organ segmentation on labelled CT slices,
   from an SSL encoder (ioupos-simsiam / ioupos-dino checkpoint, or a MONAI state dict) or from
   scratch, with the research code's flags (main_finetune.py) and its published setup.

   The run itself (data, model, loader, Dice-CE, AdamW, evaluation, run directory, exact
   resume) is ioupos_finetune_run (ioupos.h section 22); this program parses and records the
   flags and prints the final per-organ table. Run with --help for the flags.
   --spatial_dims 3 does the same on NIfTI volumes: a 3D SwinUNETR trained on 3D crops (and
   windows) of --crop_size X,Y,Z, from a 3D encoder checkpoint, or evaluated (--n_epochs 0).
   SIGINT (Ctrl-C; unless ignored at start, as for a background job of a script) and SIGTERM
   stop the run at the next step boundary with the state saved (an epoch's checkpoint and
   validation are finished first): --resume continues it and the result equals an
   uninterrupted run's. A second signal ends the program at once (every file write is atomic).

   Exit status: 0 done (or --max_steps reached), 1 the run failed (the library's reason is
   printed), 2 bad command line, 128 + N stopped by signal N (130 SIGINT, 143 SIGTERM) with the
   state saved. */
#include "ioupos.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROG "ioupos-finetune"
#include "cli.h"
#include "train_cli.h"

typedef struct ft_flags {
  ioupos_finetune_opts o;
  int spatial_dims, threads, use_amp, ignore_warn, low_resource;
  int given_embed, given_batch, given_sw;
  int n_crop;            /* values given to --crop_size: 1, or 3 (x, y, z; 3D only) */
  long cache_mb;         /* --cache_mb: the 3D loader's volume cache */
  const char *crop_text; /* --crop_size as given (for messages) */
  cli_device device; /* --device (auto) */
} ft_flags;

static void ft_defaults(ft_flags *f) {
  memset(f, 0, sizeof *f);
  ioupos_finetune_opts_default(&f->o);
  f->spatial_dims = 2;
  f->cache_mb = 1024; /* the loader's default (1 GiB) */
  /* a resource limit, like --threads: not in flags.json, free to change on resume */
  f->o.max_memory_mb = (long)(ioupos_mem_default_limit_bytes() >> 20);
  f->device.spec = "auto";
}

static void ft_usage(FILE *out) {
  ft_flags d;
  const ioupos_finetune_opts *o = &d.o;
  ft_defaults(&d);
  fprintf(out,
          "usage: " PROG " --data_dir DIR [flags]\n"
          "Fine-tune a SwinUNETR (MONAI's, 2D or 3D) for organ segmentation on labelled CT\n"
          "slices or volumes, from a pretrained Swin encoder or from scratch; select the best\n"
          "checkpoint on the validation split and score it once on the test split.\n"
          "\n"
          "Data:\n"
          "  --data_dir DIR        ioupos-prep's output with a split (--split_path there):\n"
          "                        DIR/train, DIR/val and optionally DIR/test, each with PNG\n"
          "                        slices <case>_<z>.png and labels/<case>_<z>.png; required\n"
          "  --split_path FILE     the split file; if given, the cases of DIR/train, val, test\n"
          "                        must be exactly its lists (default: not checked)\n"
          "  --n_classes K         classes with the background, 2..%d (default %d: FLARE22)\n"
          "  --spatial_dims 2|3    2: PNG slices (default); 3: NIfTI volumes, training and\n"
          "                        evaluation in 3D: DIR/train, DIR/val, DIR/test hold\n"
          "                        <case>.nii.gz and labels/<case>.nii.gz (ioupos-prep\n"
          "                        --spatial_dims 3), the model a 3D SwinUNETR, --chkpt_path a\n"
          "                        3D encoder (ioupos-simsiam / ioupos-dino --spatial_dims 3) or\n"
          "                        a MONAI 3D state dict (a 2D one is refused, naming the\n"
          "                        tensor and both shapes); --batch_size counts volumes, each\n"
          "                        giving --n_crops_per_ct crops of --crop_size X,Y,Z\n"
          "\n"
          "Model (MONAI SwinUNETR: Swin encoder patch 2, window 7, depths 2,2,2,2, heads\n"
          "3,6,12,24; UNETR decoder with instance norm):\n"
          "  --chkpt_path FILE     initial weights: an ioupos-simsiam / ioupos-dino checkpoint\n"
          "                        (backbone.*; for DINO the teacher), a MONAI state dict with\n"
          "                        swinViT.* or bare SwinTransformer names (the encoder is loaded,\n"
          "                        the decoder initialised), or a whole SwinUNETR (e.g. a run's\n"
          "                        best.safetensors, loaded in full). A tensor missing or of\n"
          "                        another shape is an error. Default: none, from scratch\n"
          "  --embedding_size C    feature size C; must match the checkpoint; C x 2^s must be\n"
          "                        divisible by stage s's heads, e.g. 6, 12, 24, 48 (default %d;\n"
          "                        the research script defaulted to 24, the published runs 48)\n"
          "  --drop_path_rate X    stochastic depth of the encoder, in [0, 1) (default %g:\n"
          "                        MONAI SwinUNETR's default)\n"
          "\n"
          "Training:\n"
          "  --crop_size N         training crops and sliding-window roi, N x N, a multiple of\n"
          "                        32 (default %d); with --spatial_dims 3 N x N x N or, as X,Y,Z\n"
          "                        (e.g. 96,96,64), per axis in MONAI's (x, y, z) order; a volume\n"
          "                        smaller than the crop is zero-padded (as MONAI's SpatialPad);\n"
          "                        with X != Y the crops get no rot90 (it would change their\n"
          "                        shape; a note says so)\n"
          "  --batch_size N        slices (3D: volumes) per step (default %d)\n"
          "  --n_crops_per_ct N    crops per slice (3D: volume), centred on an organ with p = 0.5\n"
          "                        (RandCropByPosNegLabeld pos = neg = 1) (default %d)\n"
          "  --n_epochs N          epochs; 0 = only evaluate the --chkpt_path model on val and\n"
          "                        test (default %d)\n"
          "  --base_lr X           peak learning rate after the warm-up (default %g)\n"
          "  --end_lr X            final learning rate of the cosine, per iteration (default %g;\n"
          "                        hard-coded in the research code)\n"
          "  --warmup_epochs X     linear warm-up from 0 (default %g)\n"
          "  --wd X                AdamW weight decay, not on biases and 1-D tensors (default %g)\n"
          "  --num_workers N       loader threads, 0..256; results do not depend on it\n"
          "                        (default %d)\n"
          "  --cache_mb MB         3D: decoded volumes the loader keeps in memory, for all its\n"
          "                        workers together; 0 = decode each time it is used; speed\n"
          "                        only, results do not depend on it; 2D ignores it\n"
          "                        (default %ld)\n"
          "  --max_memory_mb MB    refuse a run whose peak (a training step with the\n"
          "                        validation beside it, or the evaluation) needs more memory\n"
          "                        (the estimate of every buffer it allocates), naming the\n"
          "                        flags that lower it; 0 = no limit (default %ld: 90 %% of\n"
          "                        the RAM)\n"
          "  --seed S              random seed, unsigned 64-bit (default %llu)\n"
          "  --use_amp             accepted; the CPU backend computes in float32 (a note says so)\n"
          "  --ignore_user_warning accepted (the research code silenced Python warnings); no\n"
          "                        effect\n"
          "  --low_resource_mode   a small preset (ours): --embedding_size 24, --batch_size 8 and\n"
          "                        --sw_batch_size 8 unless given\n"
          "\n"
          "Evaluation (per case: slices restacked, per-organ DSC, the mean over organs):\n"
          "  --eval_every N        validate after every N-th epoch and after the last (default %d;\n"
          "                        the research code validated every 10 epochs, then every epoch\n"
          "                        from epoch 90)\n"
          "  --patience N          stop after N epochs without a better validation score,\n"
          "                        checked at validations; 0 = never (default %d; the research\n"
          "                        code counted validations instead of epochs)\n"
          "  --metric M            ours: the per-case organ DSC (mean over organs of the mean\n"
          "                        over cases, background excluded); research: the research\n"
          "                        code's per-slice MONAI DiceMetric (background included, absent\n"
          "                        classes ignored), reported beside ours. The selected metric\n"
          "                        picks the best checkpoint and drives --patience (default ours)\n"
          "  --sw_batch_size N     sliding windows per model call (default %d)\n"
          "  --sw_overlap X        sliding-window overlap, in [0, 1) (default %g)\n"
          "  --eval_train          also evaluate the train split at each validation (logged)\n"
          "  --predict_dir DIR     write the final evaluation's predicted label slices as PNGs\n"
          "                        (label ids as grey values) to DIR/val/ and DIR/test/, named as\n"
          "                        the input slices (3D: DIR/val/<case>.nii.gz, uint8 ids with\n"
          "                        the input volume's affine) (default: none)\n"
          "\n"
          "Run:\n"
          "  --chkpt_dir DIR       where run directories go (default %s)\n"
          "  --run_name NAME       the run directory <chkpt_dir>/<run_name> (default %s)\n"
          "  --resume              continue the run in that directory from its state.safetensors\n"
          "                        (the result equals an uninterrupted run's, bit for bit); the\n"
          "                        flags must be the run's (flags.json), except --num_workers,\n"
          "                        --threads, --device, --cache_mb, --log_every and --max_steps\n"
          "  --threads N           threads of the matrix products, 1..%d (OpenMP; default: all\n"
          "                        cores or OMP_NUM_THREADS)\n"
          CLI_DEVICE_HELP
          "  --log_every N         a console and metrics.jsonl line every N steps (default %d)\n"
          "  --help                show this text and exit\n"
          "\n"
          "Testing:\n"
          "  --max_steps N         stop after N steps in this process and save the state, as if\n"
          "                        interrupted (0 = no limit; default 0)\n"
          "\n"
          "The run directory holds flags.json, metrics.jsonl (steps, epochs, validations),\n"
          "checkpoint.safetensors (the last epoch's model), best.safetensors (the best validation\n"
          "model), state.safetensors (for --resume) and results.json (the final per-organ tables\n"
          "and per-case DSCs), all in MONAI SwinUNETR names and written atomically. At the end\n"
          "the best checkpoint is evaluated on val and test; the test score is the reported one\n"
          "(without a test split the best validation score is, which is optimistic). Its\n"
          "per-organ table goes to stdout, ending with the line\n"
          "  score <split> <dsc|research> <value>\n"
          "Progress goes to stderr. Flags take their value as '--flag value' or '--flag=value'.\n"
          "Exit status: 0 done (or --max_steps reached), 1 the run failed (the reason is\n"
          "printed), 2 bad command line, 130 / 143 stopped by Ctrl-C (SIGINT) / SIGTERM at the\n"
          "next step with the state saved (--resume continues; a second signal quits at once).\n",
          IOUPOS_SEG_MAX_CLASSES, o->n_classes, o->enc.embed_dim, (double)o->enc.drop_path_rate,
          o->crop, o->batch_size, o->n_crops_per_ct, o->n_epochs, o->base_lr, o->end_lr,
          o->warmup_epochs, o->wd, o->num_workers, d.cache_mb, o->max_memory_mb,
          (unsigned long long)o->seed, o->eval_every, o->patience, o->sw_batch_size,
          o->sw_overlap, o->chkpt_dir, o->run_name, TRAIN_MAX_THREADS, o->log_every);
}

/* A directory entry name: not empty, no '/', not "." or "..". */
static const char *ft_parse_name(const char *flag, const char *s) {
  if (!*s || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, ".."))
    cli_bad_value(flag, s, "expected a folder name without '/'");
  return s;
}

static const char *const ft_names[] = {
    "data_dir", "split_path", "chkpt_path", "embedding_size", "spatial_dims", "n_classes",
    "batch_size", "n_crops_per_ct", "sw_batch_size", "sw_overlap", "n_epochs", "base_lr",
    "end_lr", "warmup_epochs", "wd", "patience", "eval_every", "seed", "num_workers",
    "run_name", "chkpt_dir", "metric", "crop_size", "threads", "max_steps", "predict_dir",
    "drop_path_rate", "log_every", "device", "cache_mb", "max_memory_mb",
    /* switches */
    "eval_train", "use_amp", "ignore_user_warning", "low_resource_mode", "resume"};
#define FT_N_SWITCHES 5

static void ft_flag(ft_flags *f, const char *name, const char *flag, const char *v) {
  ioupos_finetune_opts *o = &f->o;
#define IS(s) (!strcmp(name, s))
  if (IS("data_dir")) o->data_dir = cli_nonempty(flag, v, "expected a folder");
  else if (IS("split_path")) o->split_path = cli_nonempty(flag, v, "expected a file");
  else if (IS("chkpt_path")) o->chkpt_path = cli_nonempty(flag, v, "expected a file");
  else if (IS("embedding_size")) {
    o->enc.embed_dim = (int)cli_int(flag, v, 1, 4096);
    f->given_embed = 1;
  } else if (IS("spatial_dims")) f->spatial_dims = (int)cli_int(flag, v, 2, 3);
  else if (IS("n_classes")) o->n_classes = (int)cli_int(flag, v, 2, IOUPOS_SEG_MAX_CLASSES);
  else if (IS("batch_size")) {
    o->batch_size = (int)cli_int(flag, v, 1, 1 << 20);
    f->given_batch = 1;
  } else if (IS("n_crops_per_ct")) o->n_crops_per_ct = (int)cli_int(flag, v, 1, 1 << 16);
  else if (IS("sw_batch_size")) {
    o->sw_batch_size = (int)cli_int(flag, v, 1, 1 << 16);
    f->given_sw = 1;
  } else if (IS("sw_overlap")) {
    o->sw_overlap = cli_double(flag, v, 0.0, 1.0, 0);
    if (o->sw_overlap >= 1.0) cli_bad_value(flag, v, "must be in [0, 1)");
  } else if (IS("n_epochs")) o->n_epochs = (int)cli_int(flag, v, 0, 1000000);
  else if (IS("base_lr")) o->base_lr = cli_double(flag, v, 0.0, 1e6, 1);
  else if (IS("end_lr")) o->end_lr = cli_double(flag, v, 0.0, 1e6, 0);
  else if (IS("warmup_epochs")) o->warmup_epochs = cli_double(flag, v, 0.0, 1e6, 0);
  else if (IS("wd")) o->wd = cli_double(flag, v, 0.0, 1e6, 0);
  else if (IS("patience")) o->patience = (int)cli_int(flag, v, 0, 1000000);
  else if (IS("eval_every")) o->eval_every = (int)cli_int(flag, v, 1, 1000000);
  else if (IS("seed")) o->seed = cli_u64(flag, v);
  else if (IS("num_workers")) o->num_workers = (int)cli_int(flag, v, 0, 256);
  else if (IS("run_name")) o->run_name = ft_parse_name(flag, v);
  else if (IS("chkpt_dir")) o->chkpt_dir = cli_nonempty(flag, v, "expected a folder");
  else if (IS("metric")) {
    if (!strcmp(v, "ours")) o->metric = IOUPOS_FT_METRIC_DSC;
    else if (!strcmp(v, "research")) o->metric = IOUPOS_FT_METRIC_RESEARCH;
    else cli_bad_value(flag, v, "expected ours or research");
  } else if (IS("crop_size")) {
    /* one size, or three comma-separated (x, y, z; checked against --spatial_dims after the
       parse, since the flags come in any order) */
    char part[64];
    const char *p = v;
    int k;
    f->n_crop = 0;
    f->crop_text = v;
    for (k = 0; k < 3; ++k) {
      const char *comma = strchr(p, ',');
      size_t len = comma ? (size_t)(comma - p) : strlen(p);
      int c;
      if (len >= sizeof part) cli_bad_value(flag, v, "expected N or X,Y,Z");
      memcpy(part, p, len);
      part[len] = 0;
      c = (int)cli_int(flag, part, 32, 4096);
      if (c % 32 != 0)
        cli_bad_value(flag, v, "must be a multiple of 32 (SwinUNETR's five 2x downsamplings)");
      o->crop3[k] = c;
      ++f->n_crop;
      if (!comma) break;
      p = comma + 1;
      if (k == 2) cli_bad_value(flag, v, "expected N or X,Y,Z (at most three sizes)");
    }
    if (f->n_crop == 2) cli_bad_value(flag, v, "expected N or X,Y,Z (two sizes given)");
    if (f->n_crop == 1) o->crop3[1] = o->crop3[2] = o->crop3[0];
    o->crop = o->crop3[0];
  } else if (IS("threads")) f->threads = (int)cli_int(flag, v, 1, TRAIN_MAX_THREADS);
  else if (IS("device")) cli_device_parse(flag, v, &f->device);
  else if (IS("cache_mb")) f->cache_mb = (long)cli_int(flag, v, 0, 1L << 24); /* 16 TiB */
  else if (IS("max_memory_mb")) f->o.max_memory_mb = (long)cli_int(flag, v, 0, 1L << 30);
  else if (IS("max_steps")) o->max_steps = (long)cli_int(flag, v, 0, LONG_MAX);
  else if (IS("predict_dir")) o->predict_dir = cli_nonempty(flag, v, "expected a folder");
  else if (IS("drop_path_rate")) {
    double r = cli_double(flag, v, 0.0, 1.0, 0);
    if (r >= 1.0) cli_bad_value(flag, v, "must be in [0, 1)");
    o->enc.drop_path_rate = (float)r;
  } else if (IS("log_every")) o->log_every = (int)cli_int(flag, v, 1, INT_MAX);
  else if (IS("eval_train")) o->eval_train = 1;
  else if (IS("use_amp")) f->use_amp = 1;
  else if (IS("ignore_user_warning")) f->ignore_warn = 1;
  else if (IS("low_resource_mode")) f->low_resource = 1;
  else if (IS("resume")) o->resume = 1;
#undef IS
}

static void ft_parse(int argc, char **argv, ft_flags *f) {
  cli c;
  int k;
  ft_defaults(f);
  cli_init(&c, argc, argv, ft_names, CLI_COUNT(ft_names), FT_N_SWITCHES, ft_usage);
  while ((k = cli_next_flag(&c)) >= 0) ft_flag(f, ft_names[k], c.flag, c.value);
  if (!f->o.data_dir) cli_required("--data_dir");
  if (f->spatial_dims == 2 && f->n_crop == 3)
    train_usage_error("--crop_size %s: per-axis sizes need --spatial_dims 3 (2D crops are N x N)",
                      f->crop_text);
  if (f->spatial_dims == 2) f->o.crop3[0] = f->o.crop3[1] = f->o.crop3[2] = 0;
  if (f->spatial_dims == 3) { /* the 3D encoder: window 7 x 7 x 7, the flags' C and drop-path */
    ioupos_swin_config e = f->o.enc;
    ioupos_swin_config_default(&f->o.enc, 3);
    f->o.enc.embed_dim = e.embed_dim;
    f->o.enc.drop_path_rate = e.drop_path_rate;
    if (!f->n_crop) f->o.crop3[0] = f->o.crop3[1] = f->o.crop3[2] = f->o.crop;
  }
  if (f->low_resource) {
    if (!f->given_embed) f->o.enc.embed_dim = 24;
    if (!f->given_batch) f->o.batch_size = 8;
    if (!f->given_sw) f->o.sw_batch_size = 8;
  }
  if (f->o.n_epochs > 0 && f->o.warmup_epochs > 0.0 &&
      f->o.warmup_epochs >= (double)f->o.n_epochs)
    train_usage_error("--warmup_epochs %g must be below --n_epochs %d (the warm-up has to end "
                   "before the run does)", f->o.warmup_epochs, f->o.n_epochs);
  if (f->o.resume && f->o.n_epochs == 0)
    train_usage_error("--resume with --n_epochs 0: an evaluation has nothing to resume");
  train_check_encoder(&f->o.enc);
  f->o.cache_bytes = (size_t)f->cache_mb << 20;
}

/* Every flag that describes the run, defaults included. --resume and --max_steps describe one
   invocation, not the run, and are left out: the JSON is also stored in state.safetensors, which
   must come out byte-identical whether or not the run was interrupted and resumed. On --resume
   the library compares it key by key with the state's (section 18's rule: only num_workers,
   threads, log_every, chkpt_dir, run_name and git_commit may differ). */
static char *ft_flags_json(const ft_flags *f) {
  const ioupos_finetune_opts *o = &f->o;
  train_json j = {NULL, 0, 0};
  train_put(&j, "{");
  train_jstr(&j, "data_dir", o->data_dir);
  train_jstr(&j, "split_path", o->split_path);
  train_jstr(&j, "chkpt_path", o->chkpt_path);
  train_jstr(&j, "chkpt_dir", o->chkpt_dir);
  train_jstr(&j, "run_name", o->run_name);
  train_jint(&j, "spatial_dims", f->spatial_dims);
  train_jint(&j, "embedding_size", o->enc.embed_dim);
  train_jnum(&j, "drop_path_rate", (double)o->enc.drop_path_rate);
  train_jint(&j, "n_classes", o->n_classes);
  if (f->spatial_dims == 3) /* per axis: x, y, z */
    train_put(&j, ", \"crop_size\": [%d, %d, %d]", o->crop3[0], o->crop3[1], o->crop3[2]);
  else
    train_jint(&j, "crop_size", o->crop);
  train_jint(&j, "batch_size", o->batch_size);
  train_jint(&j, "n_crops_per_ct", o->n_crops_per_ct);
  train_jint(&j, "sw_batch_size", o->sw_batch_size);
  train_jnum(&j, "sw_overlap", o->sw_overlap);
  train_jint(&j, "n_epochs", o->n_epochs);
  train_jnum(&j, "base_lr", o->base_lr);
  train_jnum(&j, "end_lr", o->end_lr);
  train_jnum(&j, "warmup_epochs", o->warmup_epochs);
  train_jnum(&j, "wd", o->wd);
  train_jint(&j, "patience", o->patience);
  train_jint(&j, "eval_every", o->eval_every);
  train_jbool(&j, "eval_train", o->eval_train);
  train_jstr(&j, "metric", o->metric == IOUPOS_FT_METRIC_RESEARCH ? "research" : "ours");
  train_jstr(&j, "predict_dir", o->predict_dir);
  train_jbool(&j, "use_amp", f->use_amp);
  train_jbool(&j, "low_resource_mode", f->low_resource);
  train_ju64(&j, "seed", o->seed);
  train_jint(&j, "num_workers", o->num_workers);
  train_jint(&j, "threads", f->threads);
  train_jstr(&j, "device", f->device.spec);
  train_jint(&j, "log_every", o->log_every);
  if (f->spatial_dims == 3) /* 2D runs' flags.json (and state) stay as they were */
    train_put(&j, ", \"cache_mb\": %ld", f->cache_mb);
  train_jstr(&j, "git_commit", IOUPOS_GIT_COMMIT);
  train_put(&j, "}");
  return j.s;
}

static int ft_print_table(const ioupos_seg_eval_result *r) {
  size_t len = 0;
  char *buf;
  int rc = ioupos_dsc_table(NULL, 0, &len, &r->dsc, r->has_research ? &r->research : NULL, NULL);
  if (rc != IOUPOS_ERANGE && rc != 0) return rc;
  buf = (char *)malloc(len + 1);
  if (!buf) return IOUPOS_ENOMEM;
  rc = ioupos_dsc_table(buf, len + 1, &len, &r->dsc, r->has_research ? &r->research : NULL, NULL);
  if (rc == 0) fputs(buf, stdout);
  free(buf);
  return rc;
}

int main(int argc, char **argv) {
  ft_flags f;
  ioupos_finetune_result res;
  char *json;
  int rc;
  ft_parse(argc, argv, &f);
  f.o.comm = train_comm_init(&argc, &argv); /* under mpirun: data parallel over MPI */
  if (f.use_amp && train_rank == 0) /* the note once, from rank 0 */
    fprintf(stderr, PROG ": note: --use_amp ignored: both backends compute in float32 (bf16 is "
                    "not there yet)\n");
  f.threads = train_threads(f.threads); /* the count used, recorded in the flags */
  json = ft_flags_json(&f);
  f.o.flags_json = json;
  f.o.git_commit = IOUPOS_GIT_COMMIT;
  f.o.log = train_log;
  f.o.log_ctx = NULL;
  f.o.stop = train_catch_signals("after the current step (and its epoch's checkpoint and validation)");
  f.o.backend = train_backend(&f.device, f.o.comm, &f.o.comm_dev);
  if (!f.o.backend) {
    free(json);
    return train_comm_end(1);
  }
  rc = ioupos_finetune_run(&f.o, &res);
  free(json);
  if (rc != IOUPOS_OK) return train_comm_end(train_exit_status(rc));
  if (res.done && train_rank == 0) { /* the table once, from rank 0 */
    const ioupos_seg_eval_result *r = res.has_test ? &res.test : &res.val;
    if (f.o.n_epochs > 0)
      printf("%s split, best validation checkpoint (epoch %d of %d%s), %d cases\n", res.split,
             res.best_epoch, res.epochs_done, res.stopped_early ? ", stopped early" : "",
             r->n_cases);
    else
      printf("%s split, %s, %d cases\n", res.split,
             f.o.chkpt_path ? f.o.chkpt_path : "untrained model", r->n_cases);
    if (ft_print_table(r) != 0) {
      fprintf(stderr, PROG ": error: %s\n", cli_flags(ioupos_failure_reason()));
      ioupos_finetune_result_free(&res);
      return train_comm_end(1);
    }
    printf("score %s %s %.6f\n", res.split,
           f.o.metric == IOUPOS_FT_METRIC_RESEARCH ? "research" : "dsc", res.score);
  }
  ioupos_finetune_result_free(&res);
  return train_comm_end(train_exit_status(IOUPOS_OK));
}
