/* drivers/pretrain.h — the command line of ioupos-simsiam and ioupos-dino (not part of the
   library): flag parsing, the resolved-flags JSON and the wiring onto ioupos_pretrain_run
   (ioupos.h section 18), which does the run directory, metrics, checkpoints and resume.

   The including file defines PROG (its command name) and PRETRAIN_DINO (the literal 1 for DINO,
   0 for SimSiam: a preprocessor number, because the flag table is chosen with #if, where an enum
   constant such as IOUPOS_SSL_DINO would silently read as 0), includes ioupos.h (its
   implementation is linked in from build/ioupos.o), then this file, and calls
   pretrain_main(argc, argv). Each method parses only its own flags and the shared ones; the
   other method's flags are unknown flags (exit 2).

   The flags are the research scripts' (main_simsiam.py, main_dino.py) plus ours; the defaults
   are the published SimSiam runs' (C 48, batch 128, 100 epochs), not the scripts' own defaults
   (they defaulted --embedding_size to 24). Flags the CPU backend cannot honour (--use_amp,
   --use_gradient_checkpointing) and preprocessing flags (--a_min, --a_max, --size_x/y/z, which
   only matter to ioupos-prep) are accepted with one note on stderr.

   --spatial_dims 3 trains on NIfTI volumes (ioupos-prep --spatial_dims 3): crops of one size
   (a cube) or X,Y,Z, a 3D encoder (window 7 on every axis), the loader's volume cache
   (--cache_mb, recorded but free to change on resume); everything else as in 2D. The crop
   sizes are checked against --spatial_dims once every flag is read (flags come in any order).

   SIGINT (Ctrl-C; unless it was ignored when the program started, as for a background job of a
   script) and SIGTERM stop the run at the next optimiser-step boundary with the state saved
   (ioupos_pretrain_opts.stop): --resume continues it, and the final weights equal an
   uninterrupted run's. A second signal ends the program at once (the files on disk stay
   consistent: every write is atomic).

   Exit status: 0 done (or --max_steps reached), 1 the run failed (the library's reason is
   printed), 2 bad command line, 128 + N stopped by signal N (130 SIGINT, 143 SIGTERM) with the
   state saved. */
#ifndef IOUPOS_DRIVERS_PRETRAIN_H
#define IOUPOS_DRIVERS_PRETRAIN_H

#if !defined(PROG) || !defined(PRETRAIN_DINO)
#error "define PROG and PRETRAIN_DINO (1: DINO, 0: SimSiam) before including drivers/pretrain.h"
#endif
#if PRETRAIN_DINO == 1
#define PT_IS_DINO 1
#define PT_METHOD IOUPOS_SSL_DINO
#elif PRETRAIN_DINO == 0
#define PT_IS_DINO 0
#define PT_METHOD IOUPOS_SSL_SIMSIAM
#else
#error "PRETRAIN_DINO must be 1 (DINO) or 0 (SimSiam)"
#endif

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "train_cli.h"

#define PT_MAX_CROP 4096

/* Everything the command line resolves: the library's options plus the flags that only the
   driver sees. */
typedef struct pt_flags {
  ioupos_pretrain_opts o;
  int spatial_dims;
  double a_min, a_max, size[3];  /* ioupos-prep's; recorded only */
  int use_amp, use_ckpt, low_resource;
  int threads;                    /* 0: OpenMP's default (all cores or OMP_NUM_THREADS) */
  int crop_n, local_crop_n;       /* sizes given to --crop_size / --local_crop_size (0: none) */
  long cache_mb;                  /* --cache_mb: the 3D loader's volume cache */
  cli_device device;              /* --device (auto) */
  int given_embed, given_batch, given_hidden, given_bottleneck;
  int given_prep;                 /* --a_min/--a_max/--size_* seen */
} pt_flags;

/* The defaults --help shows and a run starts from. */
static void pt_defaults(pt_flags *f) {
  memset(f, 0, sizeof *f);
  ioupos_pretrain_opts_default(&f->o, PT_METHOD);
  /* the published SimSiam runs' size for both methods (DINO's research defaults were batch 2,
     300 epochs, C 24: a debugging setup) */
  f->o.enc.embed_dim = 48;
  f->o.batch_size = 128;
  f->o.n_epochs = 100;
  f->spatial_dims = f->o.enc.spatial_dims ? f->o.enc.spatial_dims : 2;
  f->a_min = -500.0;
  f->a_max = 500.0;
  f->size[0] = 1.0;
  f->size[1] = 1.0;
  f->size[2] = 2.5;
  f->device.spec = "auto";
  f->cache_mb = 1024; /* the loader's default (1 GiB) */
  /* a resource limit, like --threads: not in flags.json, free to change on resume */
  f->o.max_memory_mb = (long)(ioupos_mem_default_limit_bytes() >> 20);
}

/* ---- usage ------------------------------------------------------------------------------------ */

static void pt_usage(FILE *out) {
  pt_flags d;
  const ioupos_pretrain_opts *o = &d.o;
  pt_defaults(&d);
  fprintf(out,
          "usage: " PROG " --data_dir DIR [flags]\n"
          "%s"
          "\n"
          "Data and crops:\n"
          "  --data_dir DIR        folder of PNG slices (2D) or *.nii.gz volumes (3D), as\n"
          "                        ioupos-prep writes them; required\n"
          "  --crop_size N|H,W|X,Y,Z  crop size: one number for every axis, or one per axis\n"
          "                        (2D H,W; 3D X,Y,Z); the augmentations' rot90 needs H = W\n"
          "                        (3D: X = Y, Z free) (default %d;\n"
          "                        research 96)\n"
          "  --min_iou X           lower IoU bound of a pair, in [0, 1] (default %g)\n"
          "  --max_iou X           upper IoU bound, in [min_iou, 1] (default %g)\n"
          "  --pair_mode M         anchored (first crop uniform over those with a partner, then\n"
          "                        a uniform partner) or joint (uniform over valid pairs)\n"
          "                        (default %s)\n"
          "  --batch_size N        pairs per micro-batch (default %d)\n"
          "  --num_workers N       loader threads, 0 = in the training thread, 0..256 (default %d);\n"
          "                        results do not depend on it\n"
          "  --spatial_dims 2|3    2: crops of PNG slices; 3: crops of volumes (ioupos-prep\n"
          "                        --spatial_dims 3 writes <case>.nii.gz) and a 3D encoder;\n"
          "                        3D crops are MONAI's (X, Y, Z) arrays, the NIfTI voxel axes\n"
          "                        i, j, k, z fastest; their activations take about crop Z / 2\n"
          "                        times a 2D crop's of the same X, Y: lower --batch_size\n"
          "                        (default 2)\n"
          "  --cache_mb MB         3D: decoded volumes the loader keeps in memory, for all its\n"
          "                        workers together; 0 = decode each time it is used; speed\n"
          "                        only, results do not depend on it; 2D ignores it\n"
          "                        (default %ld)\n"
          "  --max_memory_mb MB    refuse a run whose training step needs more memory (the\n"
          "                        estimate of every buffer it allocates), naming the flags\n"
          "                        that lower it; 0 = no limit (default %ld: 90 %% of the RAM)\n"
          "  --a_min HU, --a_max HU  the HU window of preprocessing: accepted for the research\n"
          "                        command lines, but they only matter to ioupos-prep (the data\n"
          "                        are already windowed); no effect here (default -500, 500)\n"
          "  --size_x MM, --size_y MM, --size_z MM  the resampling spacing of preprocessing\n"
          "                        (ioupos-prep's flags of these names); no effect here\n"
          "                        (default 1, 1, 2.5)\n"
          "\n"
          "Encoder (MONAI SwinTransformer, patch 2, window 7, depths 2,2,2,2, heads 3,6,12,24;\n"
          "2D or 3D as --spatial_dims):\n"
          "  --embedding_size C    feature size C; the backbone feature has 16 x C values; C x 2^s\n"
          "                        must be divisible by stage s's heads, e.g. 6, 12, 24, 48\n"
          "                        (default %d; the research scripts defaulted to 24, the\n"
          "                        published runs used 48)\n"
          "  --drop_path_rate X    stochastic depth, growing linearly over the blocks to X,\n"
          "                        in [0, 1) (default %g)\n"
          "  --use_gradient_checkpointing  accepted; this backend keeps all activations (a note\n"
          "                        says so)\n"
          "  --use_amp             accepted; the CPU backend computes in float32 (a note says so)\n",
          PT_IS_DINO
              ? "DINO pretraining of a Swin encoder on IoU-constrained crop pairs of CT slices\n"
                "(or volumes, --spatial_dims 3): student and EMA teacher, DINO head, centring;\n"
                "the teacher is the evaluation network (checkpoint.safetensors' backbone.*).\n"
              : "SimSiam pretraining of a Swin encoder on IoU-constrained crop pairs of CT slices\n"
                "(or volumes, --spatial_dims 3) (the research code's setup: lightly heads, SGD,\n"
                "cosine lr, collapse monitor).\n",
          o->crop[0], o->min_iou, o->max_iou,
          o->pair_mode == IOUPOS_PAIR_JOINT ? "joint" : "anchored", o->batch_size, o->num_workers,
          d.cache_mb, o->max_memory_mb, o->enc.embed_dim, (double)o->enc.drop_path_rate);
  if (PT_IS_DINO) {
    fprintf(out,
            "\n"
            "DINO head and loss (the research main_dino.py's defaults unless said):\n"
            "  --out_dim N           prototypes, the head's output (default %d; the DINO paper\n"
            "                        65536)\n"
            "  --hidden_dim N        head MLP width (default %d)\n"
            "  --bottleneck_dim N    head bottleneck before the last layer (default %d)\n"
            "  --norm_last_layer 0|1 weight-normalised last layer with its norm frozen at 1\n"
            "                        (default %d)\n"
            "  --momentum_teacher X  teacher EMA momentum, cosine to 1 over the run (default %g)\n"
            "  --teacher_temp X      teacher temperature after its warm-up (default %g)\n"
            "  --warmup_teacher_temp X  teacher temperature at the start (default %g)\n"
            "  --warmup_teacher_temp_epochs X  linear warm-up of the teacher temperature\n"
            "                        (default %g)\n"
            "  --student_temp X      student temperature (default %g)\n"
            "  --center_momentum X   EMA momentum of the centre (default %g)\n"
            "  --n_local_crops N     local views per pair (DINO multi-crop), through the student\n"
            "                        only, 0..%d (default %d; the research code had none)\n"
            "  --local_crop_size N|H,W|X,Y,Z  local crop size, as --crop_size (2D square, 3D\n"
            "                        X = Y) (default %d)\n"
            "  --local_min_iou X, --local_max_iou X  IoU interval of each local crop with the\n"
            "                        first global crop (default %g, %g)\n"
            "\n"
            "Optimisation (AdamW, per-tensor gradient clipping, last layer frozen at first):\n"
            "  --n_epochs N          epochs (default %d: the SimSiam runs' length; the research\n"
            "                        script's 300 epochs, batch 2 and C 24 were a debugging setup)\n"
            "  --lr X, --base_lr X   peak learning rate after the warm-up, not batch-scaled\n"
            "                        (default %g)\n"
            "  --min_lr X            final learning rate of the cosine (default %g)\n"
            "  --warmup_epochs X     linear lr warm-up from 0 (default %g)\n"
            "  --weight_decay X      weight decay at the start, cosine to --weight_decay_end; not\n"
            "                        on biases and 1-D tensors (default %g)\n"
            "  --weight_decay_end X  (default %g)\n"
            "  --clip_grad X         clip each tensor's gradient norm to X, 0 = off (default %g)\n"
            "  --freeze_last_layer N epochs with the head's last layer frozen (default %d)\n"
            "  --accum_iters N       micro-batches per optimiser step, loss / N each (default %d)\n",
            o->out_dim, o->hidden, o->bottleneck, o->norm_last_layer, o->momentum_teacher,
            o->teacher_temp, o->warmup_teacher_temp, o->warmup_teacher_temp_epochs,
            o->student_temp, o->center_momentum, IOUPOS_HEAD_MAX_VIEWS - 2, o->n_local,
            o->local_crop[0], o->local_min_iou,
            o->local_max_iou, o->n_epochs, o->base_lr, o->min_lr, o->warmup_epochs, o->wd,
            o->wd_end, o->clip_grad, o->freeze_last_layer, o->accum_iters);
  } else {
    fprintf(out,
            "\n"
            "Optimisation (SGD momentum 0.9; projection head 3 x %d, predictor %d -> %d -> %d):\n"
            "  --n_epochs N          epochs (default %d)\n"
            "  --base_lr X           learning rate, cosine to --end_lr over the run; the\n"
            "                        predictor stays at --base_lr (default %g)\n"
            "  --end_lr X            final learning rate (default %g)\n"
            "  --warmup_epochs X     linear lr warm-up (default %g)\n"
            "  --wd X                weight decay, not on biases and 1-D tensors (default %g)\n"
            "  --accum_iters N       micro-batches per optimiser step, loss / N each (default %d)\n",
            o->proj_hidden, o->proj_out, o->pred_hidden, o->proj_out, o->n_epochs, o->base_lr,
            o->end_lr, o->warmup_epochs, o->wd, o->accum_iters);
  }
  fprintf(out,
          "\n"
          "Run:\n"
          "  --chkpt_dir DIR       where run directories go (default %s)\n"
          "  --run_name NAME       the run directory <chkpt_dir>/<run_name> (default %s)\n"
          "  --resume              continue the run in that directory from its state.safetensors\n"
          "                        (the final weights equal an uninterrupted run's); the flags\n"
          "                        must be the run's (flags.json), except --num_workers,\n"
          "                        --threads, --device, --cache_mb, --log_every and\n"
          "                        --max_steps\n"
          "  --seed S              random seed, unsigned 64-bit (default %llu, the research\n"
          "                        default)\n"
          "  --threads N           threads of the matrix products, 1..%d (OpenMP; default: all\n"
          "                        cores or OMP_NUM_THREADS)\n"
          CLI_DEVICE_HELP
          "  --log_every N         a console and metrics.jsonl line every N optimiser steps\n"
          "                        (default %d)\n"
          "  --low_resource_mode   a small preset for laptops and CI (ours; the research code's\n"
          "                        preset is not known): --embedding_size 24 and --batch_size 16\n"
          "                        unless given, %s\n"
          "  --help                show this text and exit\n"
          "\n"
          "Testing:\n"
          "  --max_steps N         stop after N optimiser steps in this process and save the\n"
          "                        state, as if interrupted (0 = no limit; default 0)\n"
          "\n"
          "The run directory <chkpt_dir>/<run_name>/ holds flags.json (these flags resolved, the\n"
          "seed and the git commit), metrics.jsonl (one JSON line per logged step and per epoch),\n"
          "checkpoint.safetensors (the model after the last finished epoch; the encoder under\n"
          "'backbone.'), checkpoint_epoch<E>.safetensors (each epoch's) and state.safetensors\n"
          "(model, optimiser, counters and loader position, for --resume). Every file is written\n"
          "atomically. Flags take their value as '--flag value' or '--flag=value'. Progress goes\n"
          "to stderr. Exit status: 0 done (or --max_steps reached), 1 the run failed (the reason\n"
          "is printed), 2 bad command line, 130 / 143 stopped by Ctrl-C (SIGINT) / SIGTERM at the\n"
          "next step with the state saved (--resume continues; a second signal quits at once).\n",
          o->chkpt_dir ? o->chkpt_dir : "(none)", o->run_name ? o->run_name : "(none)",
          (unsigned long long)o->seed, TRAIN_MAX_THREADS, o->log_every,
          PT_IS_DINO ? "DINO head hidden 512 and bottleneck 128 unless given"
                     : "projection head 512 / 512 and predictor hidden 128");
}

/* ---- flag values ------------------------------------------------------------------------------ */

/* "96" (every axis), "96,80" / "96x80" (2D rows, columns) or "96,96,64" / "96x96x64" (3D X, Y,
   Z); returns how many sizes were given (1, 2 or 3), which pt_parse checks against
   --spatial_dims once every flag is read (the flags may come in any order). */
static int pt_parse_crop(const char *flag, const char *s, int crop[3]) {
  const char *p = s;
  int n = 1;
  crop[0] = crop[1] = crop[2] = (int)cli_int_prefix(flag, s, &p, 1, PT_MAX_CROP, NULL);
  while (n < 3 && (*p == ',' || *p == 'x')) {
    ++p;
    crop[n++] = (int)cli_int_prefix(flag, s, &p, 1, PT_MAX_CROP, NULL);
  }
  if (*p)
    cli_bad_value(flag, s, "expected N, H,W (2D) or X,Y,Z (3D) with integers in 1..4096, e.g. 96, "
                  "96,80 or 96,96,64");
  if (n == 2) crop[2] = 1;
  return n;
}

/* the sizes of a crop flag given n of them under dims: 1 fills every axis; 2D takes 2, 3D 3 */
static void pt_check_crop(const char *flag, int n, const int c[3], int dims) {
  if (n == 3 && dims == 2)
    train_usage_error("%s %d,%d,%d: three sizes are a 3D crop; pass --spatial_dims 3 (volumes) "
                      "or give H,W", flag, c[0], c[1], c[2]);
  if (n == 2 && dims == 3)
    train_usage_error("%s %d,%d: a 3D crop (--spatial_dims 3) takes one size for every axis or "
                      "three, X,Y,Z (e.g. %d,%d,%d)", flag, c[0], c[1], c[0], c[1], c[0]);
}

/* crop sizes as a JSON list: 2D [H, W], 3D [X, Y, Z] */
static void pt_jcrop(train_json *j, const char *key, const int v[3], int dims) {
  if (dims == 3) {
    train_key(j, key);
    train_put(j, "[%d, %d, %d]", v[0], v[1], v[2]);
  } else {
    train_jpair(j, key, v);
  }
}

static int pt_parse_bool(const char *flag, const char *s) {
  if (!strcmp(s, "1") || !strcmp(s, "true") || !strcmp(s, "True")) return 1;
  if (!strcmp(s, "0") || !strcmp(s, "false") || !strcmp(s, "False")) return 0;
  cli_bad_value(flag, s, "expected 0 or 1");
  return 0;
}

/* A directory entry name: not empty, no '/', not "." or "..". */
static const char *pt_parse_name(const char *flag, const char *s) {
  if (!*s || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, ".."))
    cli_bad_value(flag, s, "expected a folder name without '/'");
  return s;
}

/* The flags of both methods (a method's table lists the names it takes; switches last). */
static const char *const pt_names[] = {
#if PT_IS_DINO
    "out_dim", "hidden_dim", "bottleneck_dim", "norm_last_layer", "momentum_teacher",
    "teacher_temp", "warmup_teacher_temp", "warmup_teacher_temp_epochs", "student_temp",
    "center_momentum", "weight_decay", "weight_decay_end", "freeze_last_layer", "clip_grad",
    "lr", "min_lr", "n_local_crops", "local_crop_size", "local_min_iou", "local_max_iou",
#else
    "end_lr", "wd",
#endif
    "base_lr", "warmup_epochs", "embedding_size", "drop_path_rate", "spatial_dims", "a_min",
    "a_max", "size_x", "size_y", "size_z", "min_iou", "max_iou", "batch_size", "n_epochs",
    "accum_iters", "run_name", "data_dir", "chkpt_dir", "seed", "num_workers", "crop_size",
    "pair_mode", "threads", "log_every", "max_steps", "device", "cache_mb", "max_memory_mb",
    /* switches */
    "use_gradient_checkpointing", "use_amp", "low_resource_mode", "resume"};
#define PT_N_SWITCHES 4

static void pt_flag(pt_flags *f, const char *name, const char *flag, const char *v) {
  ioupos_pretrain_opts *o = &f->o;
#define IS(n) (!strcmp(name, n))
  /* common */
  if (IS("base_lr") || IS("lr")) o->base_lr = cli_double(flag, v, 0.0, 1e6, 1);
  else if (IS("warmup_epochs")) o->warmup_epochs = cli_double(flag, v, 0.0, 1e6, 0);
  else if (IS("embedding_size")) {
    o->enc.embed_dim = (int)cli_int(flag, v, 1, 4096);
    f->given_embed = 1;
  } else if (IS("drop_path_rate")) {
    double r = cli_double(flag, v, 0.0, 1.0, 0);
    if (r >= 1.0) cli_bad_value(flag, v, "must be in [0, 1)");
    o->enc.drop_path_rate = (float)r;
  } else if (IS("spatial_dims")) f->spatial_dims = (int)cli_int(flag, v, 2, 3);
  else if (IS("a_min")) { f->a_min = cli_double(flag, v, -1e6, 1e6, 0); f->given_prep = 1; }
  else if (IS("a_max")) { f->a_max = cli_double(flag, v, -1e6, 1e6, 0); f->given_prep = 1; }
  else if (IS("size_x")) { f->size[0] = cli_double(flag, v, 0.0, 1e3, 1); f->given_prep = 1; }
  else if (IS("size_y")) { f->size[1] = cli_double(flag, v, 0.0, 1e3, 1); f->given_prep = 1; }
  else if (IS("size_z")) { f->size[2] = cli_double(flag, v, 0.0, 1e3, 1); f->given_prep = 1; }
  else if (IS("min_iou")) o->min_iou = cli_double(flag, v, 0.0, 1.0, 0);
  else if (IS("max_iou")) o->max_iou = cli_double(flag, v, 0.0, 1.0, 0);
  else if (IS("batch_size")) {
    /* SimSiam's heads have batch norm: two samples at least */
    o->batch_size = (int)cli_int(flag, v, PT_IS_DINO ? 1 : 2, 1 << 20);
    f->given_batch = 1;
  } else if (IS("n_epochs")) o->n_epochs = (int)cli_int(flag, v, 1, 1000000);
  else if (IS("accum_iters")) o->accum_iters = (int)cli_int(flag, v, 1, 1000000);
  else if (IS("run_name")) o->run_name = pt_parse_name(flag, v);
  else if (IS("data_dir")) o->data_dir = cli_nonempty(flag, v, "expected a folder");
  else if (IS("chkpt_dir")) o->chkpt_dir = cli_nonempty(flag, v, "expected a folder");
  else if (IS("seed")) o->seed = cli_u64(flag, v);
  else if (IS("num_workers")) o->num_workers = (int)cli_int(flag, v, 0, 256);
  else if (IS("crop_size")) f->crop_n = pt_parse_crop(flag, v, o->crop);
  else if (IS("cache_mb")) f->cache_mb = (long)cli_int(flag, v, 0, 1L << 24); /* 16 TiB */
  else if (IS("max_memory_mb")) o->max_memory_mb = (long)cli_int(flag, v, 0, 1L << 30);
  else if (IS("pair_mode")) {
    if (!strcmp(v, "anchored")) o->pair_mode = IOUPOS_PAIR_ANCHORED;
    else if (!strcmp(v, "joint")) o->pair_mode = IOUPOS_PAIR_JOINT;
    else cli_bad_value(flag, v, "expected anchored or joint");
  } else if (IS("threads")) f->threads = (int)cli_int(flag, v, 1, TRAIN_MAX_THREADS);
  else if (IS("device")) cli_device_parse(flag, v, &f->device);
  else if (IS("log_every")) o->log_every = (int)cli_int(flag, v, 1, INT_MAX);
  else if (IS("max_steps")) o->max_steps = (long)cli_int(flag, v, 0, LONG_MAX);
  else if (IS("use_gradient_checkpointing")) f->use_ckpt = 1;
  else if (IS("use_amp")) f->use_amp = 1;
  else if (IS("low_resource_mode")) f->low_resource = 1;
  else if (IS("resume")) o->resume = 1;
  /* SimSiam */
  else if (IS("end_lr")) o->end_lr = cli_double(flag, v, 0.0, 1e6, 0);
  else if (IS("wd")) o->wd = cli_double(flag, v, 0.0, 1e6, 0);
  /* DINO */
  else if (IS("out_dim")) o->out_dim = (int)cli_int(flag, v, 1, 1 << 20);
  else if (IS("hidden_dim")) { o->hidden = (int)cli_int(flag, v, 1, 1 << 20); f->given_hidden = 1; }
  else if (IS("bottleneck_dim")) {
    o->bottleneck = (int)cli_int(flag, v, 1, 1 << 20);
    f->given_bottleneck = 1;
  } else if (IS("norm_last_layer")) o->norm_last_layer = pt_parse_bool(flag, v);
  else if (IS("momentum_teacher")) o->momentum_teacher = cli_double(flag, v, 0.0, 1.0, 0);
  else if (IS("teacher_temp")) o->teacher_temp = cli_double(flag, v, 0.0, 1e3, 1);
  else if (IS("warmup_teacher_temp")) o->warmup_teacher_temp = cli_double(flag, v, 0.0, 1e3, 1);
  else if (IS("warmup_teacher_temp_epochs"))
    o->warmup_teacher_temp_epochs = cli_double(flag, v, 0.0, 1e6, 0);
  else if (IS("student_temp")) o->student_temp = cli_double(flag, v, 0.0, 1e3, 1);
  else if (IS("center_momentum")) o->center_momentum = cli_double(flag, v, 0.0, 1.0, 0);
  else if (IS("weight_decay")) o->wd = cli_double(flag, v, 0.0, 1e6, 0);
  else if (IS("weight_decay_end")) o->wd_end = cli_double(flag, v, 0.0, 1e6, 0);
  else if (IS("freeze_last_layer")) o->freeze_last_layer = (int)cli_int(flag, v, 0, 1000000);
  else if (IS("clip_grad")) o->clip_grad = cli_double(flag, v, 0.0, 1e6, 0);
  else if (IS("min_lr")) o->min_lr = cli_double(flag, v, 0.0, 1e6, 0);
  else if (IS("n_local_crops")) o->n_local = (int)cli_int(flag, v, 0, IOUPOS_HEAD_MAX_VIEWS - 2);
  else if (IS("local_crop_size")) f->local_crop_n = pt_parse_crop(flag, v, o->local_crop);
  else if (IS("local_min_iou")) o->local_min_iou = cli_double(flag, v, 0.0, 1.0, 0);
  else if (IS("local_max_iou")) o->local_max_iou = cli_double(flag, v, 0.0, 1.0, 0);
#undef IS
}

static void pt_parse(int argc, char **argv, pt_flags *f) {
  cli c;
  int k;
  pt_defaults(f);
  cli_init(&c, argc, argv, pt_names, CLI_COUNT(pt_names), PT_N_SWITCHES, pt_usage);
  while ((k = cli_next_flag(&c)) >= 0) pt_flag(f, pt_names[k], c.flag, c.value);

  if (!f->o.data_dir) cli_required("--data_dir");
  pt_check_crop("--crop_size", f->crop_n, f->o.crop, f->spatial_dims);
  if (PT_IS_DINO)
    pt_check_crop("--local_crop_size", f->local_crop_n, f->o.local_crop, f->spatial_dims);
  if (f->o.min_iou > f->o.max_iou)
    train_usage_error("--min_iou %g is above --max_iou %g: the IoU interval is empty", f->o.min_iou,
                   f->o.max_iou);
  if (PT_IS_DINO && f->o.local_min_iou > f->o.local_max_iou)
    train_usage_error("--local_min_iou %g is above --local_max_iou %g: the IoU interval is empty",
                   f->o.local_min_iou, f->o.local_max_iou);
  /* rot90 is part of the recipe: a crop it cannot turn is refused, not trained without it */
  if (f->spatial_dims == 3 && f->o.crop[0] != f->o.crop[1])
    train_usage_error("--crop_size %d,%d,%d: the pretraining augmentations' rot90 turns the X-Y "
                      "plane, so a 3D crop needs X = Y (Z may differ); use e.g. --crop_size "
                      "%d,%d,%d", f->o.crop[0], f->o.crop[1], f->o.crop[2], f->o.crop[0],
                      f->o.crop[0], f->o.crop[2]);
  if (f->o.crop[0] != f->o.crop[1])
    train_usage_error("--crop_size %d,%d: the pretraining augmentations need square crops (their "
                   "rot90 would change a non-square crop's shape); use e.g. --crop_size %d",
                   f->o.crop[0], f->o.crop[1], f->o.crop[0]);
  if (f->o.warmup_epochs > 0.0 && f->o.warmup_epochs >= (double)f->o.n_epochs)
    train_usage_error("--warmup_epochs %g must be below --n_epochs %d (the warm-up has to end before "
                   "the run does)", f->o.warmup_epochs, f->o.n_epochs);
  if (PT_IS_DINO && f->spatial_dims == 3 && f->o.n_local > 0 &&
      f->o.local_crop[0] != f->o.local_crop[1])
    train_usage_error("--local_crop_size %d,%d,%d: the pretraining augmentations' rot90 turns "
                      "the X-Y plane, so a 3D crop needs X = Y (Z may differ); use e.g. "
                      "--local_crop_size %d,%d,%d", f->o.local_crop[0], f->o.local_crop[1],
                      f->o.local_crop[2], f->o.local_crop[0], f->o.local_crop[0],
                      f->o.local_crop[2]);
  if (PT_IS_DINO && f->o.n_local > 0 && f->o.local_crop[0] != f->o.local_crop[1])
    train_usage_error("--local_crop_size %d,%d: the pretraining augmentations need square crops "
                   "(their rot90 would change a non-square crop's shape); use e.g. "
                   "--local_crop_size %d", f->o.local_crop[0], f->o.local_crop[1],
                   f->o.local_crop[0]);
  if (f->a_min >= f->a_max)
    train_usage_error("--a_min %g must be below --a_max %g", f->a_min, f->a_max);

  if (f->low_resource) { /* ours: the research code's preset is not known */
    if (!f->given_embed) f->o.enc.embed_dim = 24;
    if (!f->given_batch) f->o.batch_size = 16;
    if (PT_IS_DINO) {
      if (!f->given_hidden) f->o.hidden = 512;
      if (!f->given_bottleneck) f->o.bottleneck = 128;
    } else {
      f->o.proj_hidden = 512;
      f->o.proj_out = 512;
      f->o.pred_hidden = 128;
    }
  }
  if (f->spatial_dims == 3) { /* MONAI's 3D encoder: the window along z too */
    ioupos_swin_config e = f->o.enc;
    ioupos_swin_config_default(&f->o.enc, 3);
    f->o.enc.embed_dim = e.embed_dim;
    f->o.enc.drop_path_rate = e.drop_path_rate;
  }
  f->o.enc.spatial_dims = f->spatial_dims;
  f->o.cache_bytes = (size_t)f->cache_mb << 20;
  train_check_encoder(&f->o.enc);
}

/* Every flag that describes the run, defaults included. --resume and --max_steps describe one
   invocation, not the run, and are left out: the JSON is also stored in state.safetensors, which
   must come out byte-identical whether or not the run was interrupted and resumed. */
static char *pt_flags_json(const pt_flags *f) {
  const ioupos_pretrain_opts *o = &f->o;
  train_json j = {NULL, 0, 0};
  train_put(&j, "{");
  train_jstr(&j, "method", PT_IS_DINO ? "dino" : "simsiam");
  train_jstr(&j, "data_dir", o->data_dir);
  train_jstr(&j, "chkpt_dir", o->chkpt_dir);
  train_jstr(&j, "run_name", o->run_name);
  train_jint(&j, "spatial_dims", f->spatial_dims);
  train_jint(&j, "embedding_size", o->enc.embed_dim);
  train_jflt(&j, "drop_path_rate", o->enc.drop_path_rate);
  train_jbool(&j, "use_gradient_checkpointing", f->use_ckpt);
  train_jbool(&j, "use_amp", f->use_amp);
  train_jnum(&j, "a_min", f->a_min);
  train_jnum(&j, "a_max", f->a_max);
  train_jnum(&j, "size_x", f->size[0]);
  train_jnum(&j, "size_y", f->size[1]);
  train_jnum(&j, "size_z", f->size[2]);
  pt_jcrop(&j, "crop_size", o->crop, f->spatial_dims);
  train_jnum(&j, "min_iou", o->min_iou);
  train_jnum(&j, "max_iou", o->max_iou);
  train_jstr(&j, "pair_mode", o->pair_mode == IOUPOS_PAIR_JOINT ? "joint" : "anchored");
  train_jint(&j, "batch_size", o->batch_size);
  train_jint(&j, "n_epochs", o->n_epochs);
  train_jint(&j, "accum_iters", o->accum_iters);
  train_jnum(&j, "base_lr", o->base_lr);
  train_jnum(&j, "warmup_epochs", o->warmup_epochs);
  if (PT_IS_DINO) {
    train_jnum(&j, "min_lr", o->min_lr);
    train_jnum(&j, "weight_decay", o->wd);
    train_jnum(&j, "weight_decay_end", o->wd_end);
    train_jnum(&j, "clip_grad", o->clip_grad);
    train_jint(&j, "freeze_last_layer", o->freeze_last_layer);
    train_jint(&j, "out_dim", o->out_dim);
    train_jint(&j, "hidden_dim", o->hidden);
    train_jint(&j, "bottleneck_dim", o->bottleneck);
    train_jint(&j, "norm_last_layer", o->norm_last_layer);
    train_jnum(&j, "momentum_teacher", o->momentum_teacher);
    train_jnum(&j, "teacher_temp", o->teacher_temp);
    train_jnum(&j, "warmup_teacher_temp", o->warmup_teacher_temp);
    train_jnum(&j, "warmup_teacher_temp_epochs", o->warmup_teacher_temp_epochs);
    train_jnum(&j, "student_temp", o->student_temp);
    train_jnum(&j, "center_momentum", o->center_momentum);
    train_jint(&j, "n_local_crops", o->n_local);
    pt_jcrop(&j, "local_crop_size", o->local_crop, f->spatial_dims);
    train_jnum(&j, "local_min_iou", o->local_min_iou);
    train_jnum(&j, "local_max_iou", o->local_max_iou);
  } else {
    train_jnum(&j, "end_lr", o->end_lr);
    train_jnum(&j, "wd", o->wd);
    train_jint(&j, "proj_hidden_dim", o->proj_hidden);
    train_jint(&j, "proj_output_dim", o->proj_out);
    train_jint(&j, "pred_hidden_dim", o->pred_hidden);
  }
  train_ju64(&j, "seed", o->seed);
  train_jint(&j, "num_workers", o->num_workers);
  train_jint(&j, "threads", f->threads);
  train_jstr(&j, "device", f->device.spec);
  train_jint(&j, "cache_mb", f->cache_mb);
  train_jint(&j, "log_every", o->log_every);
  train_jbool(&j, "low_resource_mode", f->low_resource);
  train_jstr(&j, "git_commit", IOUPOS_GIT_COMMIT);
  train_put(&j, "}");
  return j.s;
}

static int pretrain_main(int argc, char **argv) {
  pt_flags f;
  char *json;
  int rc;
  pt_parse(argc, argv, &f);
  f.o.comm = train_comm_init(&argc, &argv); /* under mpirun: data parallel over MPI */

  if (f.use_amp && train_rank == 0) /* the notes once, from rank 0 */
    fprintf(stderr, PROG ": note: --use_amp ignored: both backends compute in float32 (bf16 is "
                    "not there yet)\n");
  if (f.use_ckpt && train_rank == 0)
    fprintf(stderr, PROG ": note: --use_gradient_checkpointing ignored: this backend keeps all "
                    "activations\n");
  if (f.given_prep && train_rank == 0)
    fprintf(stderr, PROG ": note: --a_min/--a_max/--size_x/--size_y/--size_z only matter to "
                    "ioupos-prep (HU window and spacing of preprocessing); the %s in --data_dir "
                    "are already windowed, so they have no effect here\n",
            f.spatial_dims == 3 ? "volumes" : "PNGs");
  f.threads = train_threads(f.threads); /* the count used, recorded in the flags */

  json = pt_flags_json(&f);
  f.o.flags_json = json;
  f.o.git_commit = IOUPOS_GIT_COMMIT;
  f.o.log = train_log;
  f.o.log_ctx = NULL;
  f.o.stop = train_catch_signals("after the current step");
  f.o.backend = train_backend(&f.device, f.o.comm, &f.o.comm_dev);
  if (!f.o.backend) {
    free(json);
    return train_comm_end(1);
  }
  rc = ioupos_pretrain_run(&f.o);
  free(json);
  return train_comm_end(train_exit_status(rc));
}

#endif /* IOUPOS_DRIVERS_PRETRAIN_H */
