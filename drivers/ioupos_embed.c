/* ioupos-embed — the backbone feature of every image of a folder, with a pretrained Swin encoder.

   Loads a Swin encoder (MONAI's SwinTransformer, ioupos.h section 17) from a safetensors
   checkpoint: one of ours (encoder tensors under "backbone.", heads beside them) or a MONAI state
   dict (with or without a "swinViT." / "backbone." prefix; ioupos_swin_find_prefix picks it).
   The load is strict: a tensor missing, unexpected or of another shape (another
   --embedding_size, window, patch, depth) is an error quoting the library's reason.

   Then every image of --data_dir, in file-name order, goes through the encoder in eval mode and
   its feature, the mean over space of the last normalised stage output ([16 * embed_dim], the
   research code's backbone feature), becomes one row of a float32 .npy file (numpy format 1.0,
   C order, little-endian). <output without .npy>.files.txt lists the file names in row order.
     --spatial_dims 2: every *.png (ioupos_dataset_scan), grey in [0, 1] (8-bit: value / 255,
                       as the research loader); input [1, in_chans, H, W].
     --spatial_dims 3: every *.nii / *.nii.gz (ioupos-prep --spatial_dims 3 writes these), values
                       as stored; input [1, in_chans, nx, ny, nz], the array order MONAI's
                       LoadImage + EnsureChannelFirst gives (nibabel's x, y, z).
   With --in_chans above 1 the grey channel is repeated into every input channel.
   Consecutive images of one shape are batched (up to --batch_size); the encoder is re-planned
   when the shape changes. The encoder's plan holds every activation a backward pass would need
   (about 0.85 GB per 448x448 image at the default width), so a batch is cut to what
   --max_memory_mb allows (default half the RAM), and halved again if an allocation fails.

   Both output files are staged under temporary names (fsync'd) and renamed into place only
   after every image is done, so a failed or interrupted run leaves no output (and never a
   truncated one). A checkpoint holding a NaN or infinity is refused (the library's load names
   the tensor), and a feature that comes out non-finite all the same (NaN voxels, overflowing
   weights) stops the run naming its image: a non-finite feature is never written.
   Exit status: 0 success, 1 unusable input (missing, mismatched or non-finite checkpoint,
   empty folder, unreadable image, non-finite feature: the message names the file), 2 bad
   command line. */
#include "ioupos.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define PROG "ioupos-embed"
#include "cli.h"

#define MAX_BATCH 65536
#define MAX_THREADS 1024

typedef struct options {
  const char *chkpt, *data_dir, *output, *window;
  ioupos_swin_config cfg;
  int batch_size, threads;
  long long max_memory_mb; /* 0: half the physical memory */
  cli_device device;       /* --device (auto) */
} options;

static void usage(FILE *f) {
  fprintf(f,
          "usage: " PROG " --chkpt_path FILE --data_dir DIR --output FILE.npy [flags]\n"
          "Compute the Swin backbone feature of every image in a folder (eval mode) and save\n"
          "them as one float32 .npy matrix, one row per image in file-name order.\n"
          "\n"
          "  --chkpt_path FILE    safetensors checkpoint: ours (encoder under 'backbone.', heads\n"
          "                       beside it, ignored) or a MONAI SwinTransformer state dict, with\n"
          "                       or without a 'swinViT.' / 'backbone.' prefix; loaded strictly\n"
          "  --data_dir DIR       the images: *.png (2D; 8-bit grey read as value / 255) or\n"
          "                       *.nii / *.nii.gz volumes (3D, e.g. ioupos-prep --spatial_dims 3)\n"
          "  --output FILE        the features, float32 .npy of shape (N, 16 x embedding_size);\n"
          "                       FILE without .npy + '.files.txt' lists the N file names in\n"
          "                       row order\n"
          "  --spatial_dims 2|3   2D slices or 3D volumes (default 2)\n"
          "  --embedding_size C   the encoder's width, MONAI's feature_size / embed_dim\n"
          "                       (default 48); the feature has 16 x C values\n"
          "  --depths A,B,C,D     blocks per stage, each 1..%d (default 2,2,2,2)\n"
          "  --num_heads A,B,C,D  attention heads per stage; stage s's must divide C x 2^s\n"
          "                       (default 3,6,12,24)\n"
          "  --window_size N|LIST attention window, one integer for every axis or one per axis\n"
          "                       (7,7 in 2D, 7,7,7 in 3D), each 1..64 (default 7)\n"
          "  --patch_size N       patch embedding size and stride on every axis, 1..64 (default 2)\n"
          "  --in_chans N         the encoder's input channels, 1..64; above 1 the grey image is\n"
          "                       repeated into every channel (default 1)\n"
          "  --batch_size N       images per forward pass, 1..%d; consecutive images of one\n"
          "                       shape are batched, a shape change starts a new batch; a batch\n"
          "                       too large for memory is split (default 32)\n"
          "  --max_memory_mb N    memory for the encoder's activations, in MB; a batch that\n"
          "                       would need more is run in smaller pieces (default: half the\n"
          "                       physical memory)\n"
          "  --threads N          threads of the matrix products, 1..%d (OpenMP; default: all\n"
          "                       cores or OMP_NUM_THREADS); ignored, with a note, in a build\n"
          "                       without OpenMP. Results do not depend on it\n"
          CLI_DEVICE_HELP
          "  --help               show this text and exit\n"
          "\n"
          "Flags take their value as '--flag value' or '--flag=value'. The encoder flags must be\n"
          "those the checkpoint was trained with (a mismatch is an error naming the tensor and\n"
          "both shapes). The feature is the mean over space of the last stage's normalised\n"
          "output (MONAI SwinTransformer(x)[4], normalize=True), as the research code's\n"
          "backbone. Progress goes to stderr (at most once a second); the summary to stdout.\n"
          "Exit status: 0 success, 1 unusable input (missing, mismatched or non-finite\n"
          "checkpoint, empty folder, unreadable image, a non-finite feature; the message names\n"
          "the file), 2 bad command line. Nothing is written on failure.\n",
          IOUPOS_SWIN_MAX_DEPTH, MAX_BATCH, MAX_THREADS);
}

/* ---- flags ------------------------------------------------------------------------------------ */

static void parse_four(const char *flag, const char *s, long long lo, long long hi, int out[4]) {
  long long v[4];
  char expect[96];
  int k;
  snprintf(expect, sizeof expect, "expected 4 comma-separated integers in %lld..%lld, e.g. 2,2,2,2",
           lo, hi);
  cli_int_list(flag, s, ',', 4, lo, hi, expect, v);
  for (k = 0; k < 4; ++k) out[k] = (int)v[k];
}

/* "7" (every axis) or one integer per axis, known only once --spatial_dims is. */
static void parse_window(const char *s, int dims, int window[3]) {
  const char *flag = "--window_size";
  long long v[3];
  int k;
  if (!strchr(s, ',')) {
    window[0] = window[1] = window[2] = (int)cli_int(flag, s, 1, 64);
    if (dims == 2) window[2] = 0;
    return;
  }
  cli_int_list(flag, s, ',', dims, 1, 64,
               dims == 2 ? "expected N or two comma-separated integers in 1..64 (--spatial_dims 2)"
                         : "expected N or three comma-separated integers in 1..64 (--spatial_dims 3)",
               v);
  for (k = 0; k < 3; ++k) window[k] = k < dims ? (int)v[k] : 0;
}

static void parse_args(int argc, char **argv, options *o) {
  static const char *const names[] = {"chkpt_path", "data_dir",  "output",      "spatial_dims",
                                      "embedding_size", "depths", "num_heads",  "window_size",
                                      "patch_size", "in_chans",  "batch_size",  "threads",
                                      "max_memory_mb", "device"};
  cli c;
  int k;
  cli_init(&c, argc, argv, names, CLI_COUNT(names), 0, usage);
  while ((k = cli_next_flag(&c)) >= 0) {
    const char *flag = c.flag, *val = c.value;
    switch (k) {
      case 0: o->chkpt = cli_nonempty(flag, val, "expected a file name"); break;
      case 1: o->data_dir = cli_nonempty(flag, val, "expected a folder"); break;
      case 2: o->output = cli_nonempty(flag, val, "expected a file name"); break;
      case 3: o->cfg.spatial_dims = (int)cli_int(flag, val, 2, 3); break;
      case 4: o->cfg.embed_dim = (int)cli_int(flag, val, 1, 4096); break;
      case 5: parse_four(flag, val, 1, IOUPOS_SWIN_MAX_DEPTH, o->cfg.depths); break;
      case 6: parse_four(flag, val, 1, 4096, o->cfg.num_heads); break;
      case 7: o->window = cli_nonempty(flag, val, "expected N or a comma-separated list"); break;
      case 8: o->cfg.patch_size = (int)cli_int(flag, val, 1, 64); break;
      case 9: o->cfg.in_chans = (int)cli_int(flag, val, 1, 64); break;
      case 10: o->batch_size = (int)cli_int(flag, val, 1, MAX_BATCH); break;
      case 11: o->threads = (int)cli_int(flag, val, 1, MAX_THREADS); break;
      case 12: o->max_memory_mb = cli_int(flag, val, 1, 1LL << 40); break;
      default: cli_device_parse(flag, val, &o->device); break;
    }
  }
  if (!o->chkpt) cli_required("--chkpt_path");
  if (!o->data_dir) cli_required("--data_dir");
  if (!o->output) cli_required("--output");
  parse_window(o->window ? o->window : "7", o->cfg.spatial_dims, o->cfg.window);
  o->cfg.drop_path_rate = 0.0f; /* eval: no drop-path anyway */
  if (ioupos_swin_config_check(&o->cfg) != 0) {
    fprintf(stderr, PROG ": %s (see --help)\n", cli_flags(ioupos_failure_reason()));
    exit(2);
  }
}

/* ---- small helpers ---------------------------------------------------------------------------- */

static void die(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2), noreturn))
#endif
    ;

/* Output staging files (removed by die and on SIGINT / SIGTERM / SIGHUP). */
static char *volatile g_stage[2];

static void on_signal(int sig) {
  int k;
  for (k = 0; k < 2; ++k)
    if (g_stage[k]) unlink(g_stage[k]);
  signal(sig, SIG_DFL);
  raise(sig);
}

static void die(const char *fmt, ...) {
  va_list ap;
  char msg[4096];
  int k;
  for (k = 0; k < 2; ++k)
    if (g_stage[k]) remove(g_stage[k]);
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, PROG ": %s\n", cli_flags(msg)); /* the library's `field` names as --flags */
  exit(1);
}

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) die("out of memory (%zu bytes)", n);
  return p;
}

static const char *base_name(const char *path) {
  const char *s = strrchr(path, '/');
  return s ? s + 1 : path;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- the inputs ------------------------------------------------------------------------------- */

/* The sorted *.nii / *.nii.gz regular files of dir (dot-files skipped) as "<dir>/<name>". */
static char **scan_volumes(const char *dir, int *count) {
  DIR *d = opendir(dir);
  struct dirent *de;
  char **v = NULL;
  int n = 0, cap = 0;
  if (!d) die("%s: cannot open folder: %s", dir, strerror(errno));
  while ((de = readdir(d)) != NULL) {
    const char *f = de->d_name;
    struct stat sb;
    char *full;
    if (f[0] == '.' || !(cli_ends_with(f, ".nii") || cli_ends_with(f, ".nii.gz"))) continue;
    full = (char *)xmalloc(strlen(dir) + strlen(f) + 2);
    sprintf(full, "%s/%s", dir, f);
    if (stat(full, &sb) != 0 || !S_ISREG(sb.st_mode)) {
      free(full);
      continue;
    }
    if (n == cap) {
      char **nv;
      cap = cap ? 2 * cap : 64;
      nv = (char **)realloc(v, (size_t)cap * sizeof *v);
      if (!nv) die("out of memory listing %s", dir);
      v = nv;
    }
    v[n++] = full;
  }
  closedir(d);
  if (n == 0) die("%s: no .nii or .nii.gz files (--spatial_dims 3)", dir);
  qsort(v, (size_t)n, sizeof *v, cmp_str);
  *count = n;
  return v;
}

/* One input image: shape (slowest axis first) and in_chans copies of its values. */
typedef struct input {
  int shape[3];
  size_t numel; /* values per channel */
  float *data;  /* one channel; the batch buffer repeats it in_chans times */
} input;

static void load_input(const char *path, int dims, input *in) {
  memset(in, 0, sizeof *in);
  if (dims == 2) {
    ioupos_image img;
    if (ioupos_image_load(path, &img) != IOUPOS_OK) die("%s", ioupos_failure_reason());
    in->shape[0] = img.h;
    in->shape[1] = img.w;
    in->numel = (size_t)img.h * (size_t)img.w;
    in->data = img.data; /* row-major [H][W]: already the input's order */
  } else {
    ioupos_volume vol;
    size_t nx, ny, nz, i, j, k;
    if (ioupos_nifti_read(path, &vol) != IOUPOS_OK) die("%s", ioupos_failure_reason());
    nx = (size_t)vol.dim[0];
    ny = (size_t)vol.dim[1];
    nz = (size_t)vol.dim[2];
    in->shape[0] = vol.dim[0];
    in->shape[1] = vol.dim[1];
    in->shape[2] = vol.dim[2];
    in->numel = nx * ny * nz;
    in->data = (float *)xmalloc(in->numel * sizeof(float));
    /* NIfTI keeps x fastest; MONAI's array (and the encoder's input) is [x][y][z], z fastest */
    for (i = 0; i < nx; ++i)
      for (j = 0; j < ny; ++j)
        for (k = 0; k < nz; ++k) in->data[(i * ny + j) * nz + k] = vol.data[(k * ny + j) * nx + i];
    ioupos_volume_free(&vol);
  }
}

/* ---- the encoder ------------------------------------------------------------------------------ */

typedef struct embedder {
  const options *o;
  ioupos_params p;
  ioupos_swin_encoder enc;
  const ioupos_backend *be;
  int feat_dim;
  double budget;     /* bytes for the encoder's activations */
  int max_batch;     /* images per forward for est_shape: --batch_size, lowered to fit */
  int est_shape[3];  /* the shape max_batch was worked out for */
  int warned_fit, warned_huge;
  float *xdev;       /* the batch on the backend */
  size_t xdev_cap;   /* floats */
} embedder;

static void embedder_open(embedder *m, const options *o) {
  ioupos_st_file f;
  const char *prefix;
  int n_loaded = 0, n_other = 0;
  memset(m, 0, sizeof *m);
  m->o = o;
  m->be = cli_device_backend(&o->device);
  fprintf(stderr, PROG ": device %s\n", m->be->name);
  m->feat_dim = ioupos_swin_feature_dim(&o->cfg);
  if (o->max_memory_mb > 0) {
    m->budget = (double)o->max_memory_mb * 1048576.0;
  } else {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    m->budget = pages > 0 && page > 0 ? 0.5 * (double)pages * (double)page : 4096.0 * 1048576.0;
  }
  if (ioupos_safetensors_read(o->chkpt, &f) != IOUPOS_OK) die("%s", ioupos_failure_reason());
  prefix = ioupos_swin_find_prefix(&f);
  if (!prefix)
    die("%s: no Swin encoder in this file (no patch_embed.proj.weight under '', 'swinViT.', "
        "'backbone.', 'module.backbone.' or 'student.backbone.')",
        o->chkpt);
  if (ioupos_swin_encoder_init(&m->enc, &o->cfg, &m->p.table, "") != IOUPOS_OK ||
      ioupos_params_alloc(&m->p, m->be, 0) != IOUPOS_OK)
    die("%s", ioupos_failure_reason());
  /* the relative_position_index buffers, which the load checks against the file's */
  if (ioupos_swin_encoder_buffers(&m->enc, &m->p) != IOUPOS_OK) die("%s", ioupos_failure_reason());
  if (ioupos_params_load(&m->p, &f, "", prefix, &n_loaded, &n_other) != IOUPOS_OK) {
    const char *why = ioupos_failure_reason();
    if (strncmp(why, o->chkpt, strlen(o->chkpt)) == 0) die("%s", why); /* names it already */
    die("%s: %s", o->chkpt, why);
  }
  fprintf(stderr, PROG ": loaded %d tensors from %s (prefix '%s'; %d other tensors ignored)\n",
          n_loaded, o->chkpt, prefix, n_other);
  ioupos_safetensors_free(&f);
}

static void embedder_close(embedder *m) {
  if (m->xdev) m->be->release(m->xdev);
  ioupos_swin_encoder_free(&m->enc);
  ioupos_params_free(&m->p);
}

/* Progress on stderr, at most once a second ("\r" in place on a terminal). */
static struct {
  int total, done, tty, printed;
  double t0, last;
} g_prog;

static void progress(int images) {
  double t = cli_now_s(), el = t - g_prog.t0;
  g_prog.done += images;
  if (t - g_prog.last < 1.0 || g_prog.done >= g_prog.total) return;
  fprintf(stderr, "%s" PROG ": images %d/%d, %.1f images/s%s", g_prog.tty ? "\r" : "",
          g_prog.done, g_prog.total, g_prog.done / (el > 0 ? el : 1e-9), g_prog.tty ? "   " : "\n");
  fflush(stderr);
  g_prog.last = t;
  g_prog.printed = 1;
}

/* Bytes the encoder's plan takes for a batch of b (its activation arena and scratch). */
static double plan_bytes(const ioupos_swin_encoder *e) {
  return ((double)e->acts.total + (double)e->scratch_n) * sizeof(float);
}

/* Sets m->max_batch for images of this shape: --batch_size, or fewer when that many would not
   fit in the memory budget (the plan's size grows linearly with the batch; planning one image
   shows the slope, and allocates untouched, i.e. free, pages). */
static void fit_batch(embedder *m, const int *shape, const char *name) {
  int d, same = m->max_batch > 0, fit;
  double one;
  char shp[64];
  for (d = 0; same && d < m->o->cfg.spatial_dims; ++d) same = m->est_shape[d] == shape[d];
  if (same) return;
  for (d = 0; d < 3; ++d) m->est_shape[d] = d < m->o->cfg.spatial_dims ? shape[d] : 1;
  m->max_batch = m->o->batch_size;
  if (ioupos_swin_encoder_plan(&m->enc, &m->p, 1, shape) != IOUPOS_OK)
    die("%s (%s): %s", m->o->data_dir, name, ioupos_failure_reason());
  one = plan_bytes(&m->enc);
  fit = (int)(m->budget / one < (double)m->o->batch_size ? m->budget / one : m->o->batch_size);
  ioupos_format_shape(shp, sizeof shp, m->o->cfg.spatial_dims, shape);
  /* said once per run (a folder of many cases has many shapes) */
  if (fit < 1) {
    if (!m->warned_huge)
      fprintf(stderr, PROG ": warning: one %s image (%s) needs %.1f MB of activations, more than "
              "--max_memory_mb %.0f; running one image at a time anyway\n", shp, name,
              one / 1048576.0, m->budget / 1048576.0);
    m->warned_huge = 1;
    fit = 1;
  } else if (fit < m->o->batch_size && !m->warned_fit) {
    fprintf(stderr, PROG ": %s images need %.1f MB of activations each: batches of %d within "
            "--max_memory_mb %.0f (other shapes are fitted the same way)\n", shp,
            one / 1048576.0, fit, m->budget / 1048576.0);
    m->warned_fit = 1;
  }
  m->max_batch = fit;
}

/* Features of n images of one shape (host batch x: [n, in_chans, shape...]) into out [n, F].
   names/first: for messages. */
static void embed_batch(embedder *m, const float *x, int n, const int *shape, size_t per_image,
                        float *out, char **names, int first) {
  int done = 0;
  fit_batch(m, shape, base_name(names[first]));
  while (done < n) {
    int b = n - done < m->max_batch ? n - done : m->max_batch, rc;
    size_t need = (size_t)b * per_image;
    rc = ioupos_swin_encoder_plan(&m->enc, &m->p, b, shape);
    if (rc == IOUPOS_ENOMEM && b > 1) {
      m->max_batch = b / 2;
      fprintf(stderr, PROG ": a batch of %d images of %s does not fit in memory; using %d\n", b,
              base_name(names[first + done]), m->max_batch);
      continue;
    }
    if (rc != IOUPOS_OK)
      die("%s (images %s..%s): %s", m->o->data_dir, base_name(names[first + done]),
          base_name(names[first + done + b - 1]), ioupos_failure_reason());
    if (need > m->xdev_cap) {
      if (m->xdev) m->be->release(m->xdev);
      m->xdev = (float *)m->be->alloc(need * sizeof(float));
      if (!m->xdev) die("out of memory for a batch of %d images", b);
      m->xdev_cap = need;
    }
    m->be->upload(m->xdev, x + (size_t)done * per_image, need * sizeof(float));
    if (ioupos_swin_encoder_forward(&m->enc, &m->p, m->xdev, 0, NULL) != IOUPOS_OK)
      die("encoder forward on %s..%s: %s", base_name(names[first + done]),
          base_name(names[first + done + b - 1]), ioupos_failure_reason());
    m->be->download(out + (size_t)done * (size_t)m->feat_dim, ioupos_swin_encoder_feature(&m->enc),
                    (size_t)b * (size_t)m->feat_dim * sizeof(float));
    if (m->be->sync() != 0) die("backend failure: %s", ioupos_failure_reason());
    { /* a non-finite feature is never written: the first one names its image */
      size_t k, nf = (size_t)b * (size_t)m->feat_dim;
      const float *fb = out + (size_t)done * (size_t)m->feat_dim;
      for (k = 0; k < nf && isfinite(fb[k]); ++k) {}
      if (k < nf)
        die("%s: its feature is not finite (value %zu of %d is %s): NaN or infinite values in "
            "the image, or weights so large that the encoder overflows; nothing was written",
            names[first + done + (int)(k / (size_t)m->feat_dim)], k % (size_t)m->feat_dim,
            m->feat_dim, isnan(fb[k]) ? "NaN" : fb[k] > 0 ? "+inf" : "-inf");
    }
    done += b;
    progress(b);
  }
}

/* ---- the outputs ------------------------------------------------------------------------------ */

/* The .npy file (format 1.0): magic, version, header length (u16 LE), the header dict padded
   with spaces and ended by '\n' so that the data starts at a multiple of 64 bytes, then the
   float32 values little-endian. */
static unsigned char *npy_encode(const float *v, int rows, int cols, size_t *size) {
  char dict[128];
  size_t dl, hl, total, i, n = (size_t)rows * (size_t)cols;
  unsigned char *b;
  dl = (size_t)snprintf(dict, sizeof dict,
                        "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", rows, cols);
  hl = (10 + dl + 1 + 63) / 64 * 64 - 10; /* dict + padding + '\n' */
  total = 10 + hl + 4 * n;
  b = (unsigned char *)xmalloc(total);
  memcpy(b, "\x93NUMPY\x01\x00", 8);
  b[8] = (unsigned char)(hl & 0xFF);
  b[9] = (unsigned char)(hl >> 8);
  memcpy(b + 10, dict, dl);
  memset(b + 10 + dl, ' ', hl - dl - 1);
  b[10 + hl - 1] = '\n';
  for (i = 0; i < n; ++i) {
    uint32_t u;
    unsigned char *q = b + 10 + hl + 4 * i;
    memcpy(&u, &v[i], 4);
    q[0] = (unsigned char)u;
    q[1] = (unsigned char)(u >> 8);
    q[2] = (unsigned char)(u >> 16);
    q[3] = (unsigned char)(u >> 24);
  }
  *size = total;
  return b;
}

/* "<output without .npy>.files.txt" */
static char *list_path(const char *output) {
  size_t n = strlen(output);
  char *s = (char *)xmalloc(n + 16);
  memcpy(s, output, n + 1);
  if (cli_ends_with(s, ".npy")) s[n - 4] = 0;
  strcat(s, ".files.txt");
  return s;
}

static char *stage_path(const char *final) {
  char *s = (char *)xmalloc(strlen(final) + 40);
  sprintf(s, "%s.tmp.%ld.staged", final, (long)getpid());
  return s;
}

int main(int argc, char **argv) {
  options o;
  embedder m;
  ioupos_dataset ds;
  char **files = NULL, *txt_path, *npy_stage, *txt_stage, *list;
  int n = 0, i, k, cur_shape[3] = {0, 0, 0}, cur_n = 0, cur_first = 0;
  size_t cur_numel = 0, xcap = 0, list_len = 0, npy_size;
  float *x = NULL, *feats;
  unsigned char *npy;
  double t0, el;

  memset(&o, 0, sizeof o);
  ioupos_swin_config_default(&o.cfg, 2);
  o.batch_size = 32;
  o.device.spec = "auto";
  parse_args(argc, argv, &o);
#ifdef _OPENMP
  if (o.threads > 0) omp_set_num_threads(o.threads);
#else
  if (o.threads > 0)
    fprintf(stderr, PROG ": note: --threads %d ignored (built without OpenMP: one thread)\n",
            o.threads);
#endif
  {
    struct stat sb;
    if (stat(o.output, &sb) == 0 && S_ISDIR(sb.st_mode)) die("--output %s is a folder", o.output);
  }
  txt_path = list_path(o.output);
  if (!strcmp(txt_path, o.output)) die("--output %s would be overwritten by its file list", o.output);

  /* the images */
  if (o.cfg.spatial_dims == 2) {
    if (ioupos_dataset_scan(o.data_dir, NULL, &ds) != IOUPOS_OK) die("%s", ioupos_failure_reason());
    n = ds.n;
    files = ds.images;
  } else {
    files = scan_volumes(o.data_dir, &n);
  }

  /* a folder we cannot write to fails now, not after the whole folder has been embedded */
  npy_stage = stage_path(o.output);
  txt_stage = stage_path(txt_path);
  if (ioupos_write_file_atomic(npy_stage, "", 0) != IOUPOS_OK)
    die("cannot write --output %s: %s", o.output, ioupos_failure_reason());
  remove(npy_stage);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGHUP, on_signal);

  embedder_open(&m, &o);
  feats = (float *)xmalloc((size_t)n * (size_t)m.feat_dim * sizeof(float));

  g_prog.total = n;
  g_prog.tty = isatty(2);
  g_prog.t0 = g_prog.last = t0 = cli_now_s();
  for (i = 0; i <= n; ++i) {
    input in;
    int same = 0;
    if (i < n) {
      load_input(files[i], o.cfg.spatial_dims, &in);
      same = cur_n > 0 && cur_n < o.batch_size;
      for (k = 0; same && k < o.cfg.spatial_dims; ++k) same = in.shape[k] == cur_shape[k];
    }
    if (cur_n > 0 && !same) { /* the batch is complete: embed it */
      embed_batch(&m, x, cur_n, cur_shape, cur_numel * (size_t)o.cfg.in_chans,
                  feats + (size_t)cur_first * (size_t)m.feat_dim, files, cur_first);
      cur_first += cur_n;
      cur_n = 0;
    }
    if (i == n) break;
    if (cur_n == 0) {
      for (k = 0; k < 3; ++k) cur_shape[k] = k < o.cfg.spatial_dims ? in.shape[k] : 1;
      cur_numel = in.numel;
    }
    { /* the host batch grows as images arrive (up to --batch_size of them) */
      size_t need = (size_t)(cur_n + 1) * (size_t)o.cfg.in_chans * cur_numel;
      if (need > xcap) {
        size_t cap = need > 2 * xcap ? need : 2 * xcap;
        float *nx = (float *)realloc(x, cap * sizeof(float));
        if (!nx) die("out of memory for a batch of %d images of %s", cur_n + 1, base_name(files[i]));
        x = nx;
        xcap = cap;
      }
    }
    for (k = 0; k < o.cfg.in_chans; ++k)
      memcpy(x + ((size_t)cur_n * (size_t)o.cfg.in_chans + (size_t)k) * cur_numel, in.data,
             cur_numel * sizeof(float));
    ++cur_n;
    free(in.data);
  }
  el = cli_now_s() - t0;
  if (g_prog.printed && g_prog.tty) fputc('\n', stderr);

  /* the outputs: both staged in full, then renamed into place */
  for (i = 0; i < n; ++i) list_len += strlen(base_name(files[i])) + 1;
  list = (char *)xmalloc(list_len + 1);
  list[0] = 0;
  for (i = 0, list_len = 0; i < n; ++i) {
    const char *b = base_name(files[i]);
    size_t l = strlen(b);
    memcpy(list + list_len, b, l);
    list[list_len + l] = '\n';
    list_len += l + 1;
  }
  npy = npy_encode(feats, n, m.feat_dim, &npy_size);
  g_stage[0] = npy_stage;
  g_stage[1] = txt_stage;
  if (ioupos_write_file_atomic(npy_stage, npy, npy_size) != IOUPOS_OK ||
      ioupos_write_file_atomic(txt_stage, list, list_len) != IOUPOS_OK)
    die("%s", ioupos_failure_reason());
  if (rename(txt_stage, txt_path) != 0) die("%s: cannot rename into place: %s", txt_path, strerror(errno));
  g_stage[1] = NULL;
  if (rename(npy_stage, o.output) != 0) {
    int e = errno;
    remove(txt_path);
    die("%s: cannot rename into place: %s", o.output, strerror(e));
  }
  g_stage[0] = NULL;
  fprintf(stderr, PROG ": %d images in %.2f s (%.1f images/s)\n", n, el, n / (el > 0 ? el : 1e-9));
  printf("wrote %s (%d x %d float32) and %s\n", o.output, n, m.feat_dim, txt_path);

  free(npy);
  free(list);
  free(feats);
  free(x);
  free(txt_path);
  free(npy_stage);
  free(txt_stage);
  embedder_close(&m);
  if (o.cfg.spatial_dims == 2) {
    ioupos_dataset_free(&ds);
  } else {
    for (i = 0; i < n; ++i) free(files[i]);
    free(files);
  }
  return 0;
}
