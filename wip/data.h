/* wip/data.h — API part: data sets and the loader (issue 3, item 2; owner "data").
   Destined for section 7 of ioupos.h ("Data sets and the loader").

   DATA SETS
     ioupos_dataset_scan lists the *.png files of a folder (extension case-insensitive; dot-files,
     folders and other files ignored) in strcmp order of their names, so the list is the same on
     every machine. With a label folder, every image is paired with the label of the SAME file
     name (never by sort order alone): an image without a label, or a label without an image, is
     an error naming both sides. An empty or missing folder is an error naming it.

   THE LOADER
     A stream of batches over a data set, in two kinds:
       IOUPOS_LOADER_SSL       one IoU-constrained crop pair per image (ioupos_iou_sampler on the
                               image's shape); views[0] and views[1] hold the two crops.
       IOUPOS_LOADER_FINETUNE  num_samples crops per image with centres chosen as MONAI's
                               RandCropByPosNegLabeld(pos, neg, num_samples) does; image and label
                               crops (label values are the ids, 0..255, as floats).
     Each crop then goes through the optional augmentation callback (NULL = none). Values of an
     un-augmented crop are the PNG's grey values in [0, 1]; an augmentation may leave [0, 1]
     (MONAI's intensity shift / noise do not clip either).

     Reproducibility. root = ioupos_rng_seed(seed); E = ioupos_rng_split(root, epoch). The order
     of epoch e is a Fisher-Yates shuffle of 0..n-1 drawn from a copy of E. The sample of data
     set image d in epoch e uses S = ioupos_rng_split(E, d): its crop boxes (the IoU pair, or the
     fine-tuning centres) are drawn from ioupos_rng_split(S, 0), and the augmentation of crop j
     (SSL: view j; fine-tuning: crop j) from ioupos_rng_split(S, 1 + j). So a batch depends only
     on (seed, epoch, batch index, configuration), never on num_workers, prefetch or timing.

     Batching. batch_size counts images (SSL: pairs; fine-tuning: images, each giving
     num_samples crops, as the research code's "32 slices = 64 crops"). An epoch has
     n / batch_size batches with drop_last, else ceil(n / batch_size) (the last one short).
     With drop_last the images at the tail of the epoch's shuffled order are left out of that
     epoch. A data set smaller than one batch with drop_last is an error at open.

     The stream. The loader produces the batches (epoch, batch) in order, crossing epoch ends
     by itself: ioupos_loader_next returns (0, 0), (0, 1), ..., (0, last), (1, 0), ... and each
     batch says its epoch, index and whether it is the last of its epoch. ioupos_loader_seek
     moves the stream (resume a run at (epoch, batch)); ioupos_loader_epoch(l, e) is seek(e, 0)
     and costs nothing when the stream is already there (so calling it at the top of every epoch
     keeps the prefetched batches). l->epoch and l->batch always hold the position of the batch
     the next ioupos_loader_next will return: save them in a checkpoint, seek to them on resume.

     Threads. num_workers = 0: batches are made in the caller's thread, inside ioupos_loader_next.
     num_workers = N > 0: N pthreads make whole batches ahead of time into a ring of `prefetch`
     slots (0 = 2 N); ioupos_loader_next hands them out in order. The returned batch's arrays
     belong to the loader and stay valid until the next call of ioupos_loader_next / seek / close.
     A failure while making a batch (a corrupt PNG, an image whose shape admits no pair in the
     interval, a label of another size, ...) is returned by the ioupos_loader_next call that
     would have returned that batch, with the reason naming the file and the batch position;
     the stream then goes on with the next batch (skip it or stop, the caller decides).
     ioupos_loader_close never blocks for longer than the batches being made at that moment.
     Each worker keeps a small cache of IoU samplers keyed by image shape (slices of one CT share
     a shape; a 2D init is about a microsecond but costs allocations).

     Images smaller than the crop. The research code padded every slice to at least 96 x 96 in
     preprocessing (SpatialPadd), so its loader never saw one; ioupos-prep does the same. The
     loader, by default (pad_small = 1), pads such an image with 0 to at least the crop size on
     that axis, symmetrically as MONAI's SpatialPad does (floor(d / 2) before, the rest after),
     and reports boxes in the ORIGINAL image's coordinates (so a box may then reach outside the
     image, where the crop is 0). With pad_small = 0 such an image is an error naming the file.

     PNG decoding: 8-bit grey (and grey + alpha) PNGs, what ioupos-prep writes, take a fast
     path that decodes to bytes and converts only the crops; the values are exactly those of
     ioupos_image_load (v / 255). Every other PNG goes through ioupos_image_load.

     Threads and platforms: the loader uses POSIX threads and the scan POSIX opendir / stat.
*/
#ifndef IOUPOS_WIP_DATA_H
#define IOUPOS_WIP_DATA_H
#include "ioupos.h"
#include "augment.h" /* wip/augment.h (section 6): the default augmentation adapters below */
#ifdef __cplusplus
extern "C" {
#endif

typedef struct ioupos_dataset {
  int n;
  char **images; /* n paths "<image_dir>/<name>", sorted by name (strcmp) */
  char **labels; /* NULL, or n paths "<label_dir>/<name>": the label of images[i] */
} ioupos_dataset;

/* Scan image_dir (and label_dir, if not NULL) as described above. On failure *ds is empty. */
IOUPOS_DEF int ioupos_dataset_scan(const char *image_dir, const char *label_dir,
                                   ioupos_dataset *ds);
IOUPOS_DEF void ioupos_dataset_free(ioupos_dataset *ds);

enum { IOUPOS_LOADER_SSL = 0, IOUPOS_LOADER_FINETUNE = 1 };

/* A pluggable augmentation, applied in place to one h x w crop (and to its label crop, or NULL
   for SSL views). rng is the crop's own generator (see above); scratch holds
   IOUPOS_AUGMENT_SCRATCH(h, w) floats. Returns 0 or a negative ioupos_status (with a reason);
   it may be called from several worker threads at once with the same ctx. */
typedef int (*ioupos_augment_fn)(void *ctx, ioupos_rng *rng, float *img, float *label, int h,
                                 int w, float *scratch);
#define IOUPOS_AUGMENT_SCRATCH(h, w) ((size_t)4 * (size_t)(h) * (size_t)(w))

typedef struct ioupos_loader_config {
  const ioupos_dataset *dataset; /* borrowed: must outlive the loader */
  int kind;                      /* IOUPOS_LOADER_SSL or IOUPOS_LOADER_FINETUNE */
  int batch_size;                /* images per batch (research: 128 SSL, 32 fine-tuning) */
  int crop[2];                   /* crop h, w (research: 96, 96) */
  double min_iou, max_iou;       /* SSL: the interval (research best: [0.3, 0.6]) */
  int pair_mode;                 /* SSL: IOUPOS_PAIR_ANCHORED or IOUPOS_PAIR_JOINT */
  uint64_t seed;
  int num_workers;               /* 0: synchronous in the caller's thread; at most 256 */
  int prefetch;                  /* batches in flight with workers; 0 = 2 * num_workers */
  int drop_last;                 /* 1: only full batches */
  int pad_small;                 /* 1: zero-pad images smaller than the crop; 0: error */
  int num_samples;               /* fine-tuning: crops per image (research: 2) */
  int pos, neg;                  /* fine-tuning: centre on label > 0 with p = pos/(pos+neg) */
  int bg_use_image;              /* fine-tuning: background = label 0 AND image > threshold */
  double bg_image_threshold;     /*   (MONAI's image_key / image_threshold); default off */
  ioupos_augment_fn augment;     /* NULL = no augmentation */
  void *augment_ctx;
} ioupos_loader_config;

/* The research setup for kind: batch 128 (SSL) or 32 (fine-tuning), crop 96 x 96,
   [0.3, 0.6] anchored, seed 0, no workers, drop_last 1, pad_small 1, num_samples 2,
   pos = neg = 1, no augmentation. */
IOUPOS_DEF void ioupos_loader_config_default(ioupos_loader_config *cfg,
                                             const ioupos_dataset *ds, int kind);

typedef struct ioupos_batch {
  int kind;
  int epoch, index;   /* this batch's position in the stream */
  int last_in_epoch;  /* 1 for the epoch's last batch */
  int n_images;       /* images in this batch (<= batch_size) */
  int n;              /* samples: SSL pairs (= n_images), fine-tuning crops (n_images*num_samples) */
  int h, w;           /* crop size */
  float *views[2];    /* SSL: n * h * w each, sample i at views[v] + i*h*w; else NULL */
  float *image;       /* fine-tuning: n * h * w; else NULL */
  float *label;       /* fine-tuning: n * h * w label ids as floats; else NULL */
  int *source;        /* n: data set index of each sample's image */
  ioupos_box *box[2]; /* SSL: box[v][i] is view v's crop; fine-tuning: box[0][i], box[1] NULL;
                         in the source image's coordinates (see "smaller than the crop") */
} ioupos_batch;

struct ioupos__loader_state;
typedef struct ioupos_loader {
  ioupos_loader_config cfg; /* a copy of the configuration (read-only) */
  int batches_per_epoch;    /* read-only */
  int epoch, batch;         /* read-only: position of the batch the next call returns */
  struct ioupos__loader_state *st;
} ioupos_loader;

IOUPOS_DEF int ioupos_loader_open(ioupos_loader *l, const ioupos_loader_config *cfg);
/* The next batch of the stream (see above), or an error for it (the stream moves past it). */
IOUPOS_DEF int ioupos_loader_next(ioupos_loader *l, ioupos_batch *batch);
/* Move the stream to (epoch, batch); 0 <= batch < batches_per_epoch, epoch >= 0. */
IOUPOS_DEF int ioupos_loader_seek(ioupos_loader *l, int epoch, int batch);
IOUPOS_DEF int ioupos_loader_epoch(ioupos_loader *l, int epoch);
/* Stops and joins the workers, frees everything; safe on a zeroed or failed-open loader. */
IOUPOS_DEF void ioupos_loader_close(ioupos_loader *l);

/* The default augmentations as loader callbacks (wip/augment.h). ctx is NULL for the research
   preset or a const ioupos_aug_config * to change it; both draw the crop's parameters from its
   rng (ioupos_view_params_draw_config) and apply them in place with scratch as tmp. Use square
   crops: an odd rot90 of a non-square crop is an error (reported with the file name).
     ioupos_augment_pretrain_view    ioupos_aug_config_pretrain: zoom, flips, rot90, scale,
                                     shift, blur, noise (per view; label ignored)
     ioupos_augment_finetune_crop    ioupos_aug_config_finetune: intensity first, the spatial
                                     transforms also on the label (nearest) */
IOUPOS_DEF int ioupos_augment_pretrain_view(void *ctx, ioupos_rng *rng, float *img, float *label,
                                            int h, int w, float *scratch);
IOUPOS_DEF int ioupos_augment_finetune_crop(void *ctx, ioupos_rng *rng, float *img, float *label,
                                            int h, int w, float *scratch);

/* Fine-tuning crop centre, MONAI RandCropByPosNegLabeld semantics (correct_crop_centers):
   the start of a crop of size s centred on voxel c of an axis of length len >= s is
   clamp(c - s / 2, 0, len - s). Exposed for the augment fragment and for tests. */
IOUPOS_DEF int ioupos_crop_start_from_centre(int c, int s, int len);

#ifdef __cplusplus
}
#endif
#endif /* IOUPOS_WIP_DATA_H */

#if defined(IOUPOS_IMPLEMENTATION) && !defined(IOUPOS_WIP_DATA_IMPL)
#define IOUPOS_WIP_DATA_IMPL

#include <dirent.h>
#include <pthread.h>
#include <sys/stat.h>

/* ---- 7a. Data sets ---------------------------------------------------------------------- */

static int ioupos__data_is_png_name(const char *name) {
  size_t n = strlen(name);
  const char *e;
  if (name[0] == '.' || n < 5) return 0; /* dot-files, and a bare ".png" */
  e = name + n - 4;
  return e[0] == '.' && (e[1] == 'p' || e[1] == 'P') && (e[2] == 'n' || e[2] == 'N') &&
         (e[3] == 'g' || e[3] == 'G');
}

static int ioupos__data_cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static char *ioupos__data_join(const char *dir, const char *name) {
  size_t a = strlen(dir), b = strlen(name);
  int slash = a > 0 && dir[a - 1] != '/';
  char *p = (char *)IOUPOS_MALLOC(a + (size_t)slash + b + 1);
  if (!p) return NULL;
  memcpy(p, dir, a);
  if (slash) p[a] = '/';
  memcpy(p + a + (size_t)slash, name, b + 1);
  return p;
}

static void ioupos__data_free_names(char **v, int n) {
  int i;
  if (!v) return;
  for (i = 0; i < n; ++i) IOUPOS_FREE(v[i]);
  IOUPOS_FREE(v);
}

/* The sorted names (not paths) of the regular *.png files in dir. what = "image" / "label". */
static int ioupos__data_list(const char *dir, const char *what, char ***out, int *count) {
  DIR *d;
  struct dirent *e;
  char **v = NULL;
  int n = 0, cap = 0;
  *out = NULL;
  *count = 0;
  d = opendir(dir);
  if (!d)
    return ioupos__fail(IOUPOS_EIO, "%s folder %s: cannot open: %s", what, dir, strerror(errno));
  while ((e = readdir(d)) != NULL) {
    struct stat sb;
    char *path;
    int reg;
    if (!ioupos__data_is_png_name(e->d_name)) continue;
    path = ioupos__data_join(dir, e->d_name);
    if (!path) goto oom;
    reg = stat(path, &sb) == 0 && S_ISREG(sb.st_mode); /* follows symlinks; skips folders */
    IOUPOS_FREE(path);
    if (!reg) continue;
    if (n == cap) {
      int ncap = cap ? 2 * cap : 256;
      char **nv;
      if (ncap <= cap || (size_t)ncap > ((size_t)-1) / sizeof(char *)) goto oom;
      nv = (char **)ioupos__calloc((size_t)ncap, sizeof(char *));
      if (!nv) goto oom;
      if (n) memcpy(nv, v, (size_t)n * sizeof(char *));
      IOUPOS_FREE(v);
      v = nv;
      cap = ncap;
    }
    v[n] = (char *)IOUPOS_MALLOC(strlen(e->d_name) + 1);
    if (!v[n]) goto oom;
    memcpy(v[n], e->d_name, strlen(e->d_name) + 1);
    ++n;
    if (n == 0x7FFFFFFF) break;
  }
  closedir(d);
  if (n == 0) {
    IOUPOS_FREE(v);
    return ioupos__fail(IOUPOS_EINVAL, "%s folder %s holds no *.png files", what, dir);
  }
  qsort(v, (size_t)n, sizeof(char *), ioupos__data_cmp_str);
  *out = v;
  *count = n;
  return IOUPOS_OK;
oom:
  closedir(d);
  ioupos__data_free_names(v, n);
  return ioupos__fail(IOUPOS_ENOMEM, "%s folder %s: out of memory listing files", what, dir);
}

IOUPOS_DEF void ioupos_dataset_free(ioupos_dataset *ds) {
  if (!ds) return;
  ioupos__data_free_names(ds->images, ds->n);
  ioupos__data_free_names(ds->labels, ds->labels ? ds->n : 0);
  ds->images = ds->labels = NULL;
  ds->n = 0;
}

IOUPOS_DEF int ioupos_dataset_scan(const char *image_dir, const char *label_dir,
                                   ioupos_dataset *ds) {
  char **im = NULL, **lb = NULL;
  int ni = 0, nl = 0, i, st;
  if (!ds) return ioupos__fail(IOUPOS_EINVAL, "ioupos_dataset_scan: ds is NULL");
  memset(ds, 0, sizeof *ds);
  if (!image_dir) return ioupos__fail(IOUPOS_EINVAL, "ioupos_dataset_scan: image_dir is NULL");
  st = ioupos__data_list(image_dir, "image", &im, &ni);
  if (st) return st;
  if (label_dir) {
    int a = 0, b = 0;
    st = ioupos__data_list(label_dir, "label", &lb, &nl);
    if (st) goto fail;
    /* both sorted by strcmp: a merge walk pairs equal names and finds the first unmatched one */
    while (a < ni || b < nl) {
      int c = a == ni ? 1 : b == nl ? -1 : strcmp(im[a], lb[b]);
      if (c == 0) { ++a; ++b; continue; }
      if (c < 0)
        st = ioupos__fail(IOUPOS_EINVAL, "image %s/%s has no label: %s/%s does not exist",
                          image_dir, im[a], label_dir, im[a]);
      else
        st = ioupos__fail(IOUPOS_EINVAL, "label %s/%s has no image: %s/%s does not exist",
                          label_dir, lb[b], image_dir, lb[b]);
      goto fail;
    }
  }
  ds->images = (char **)ioupos__calloc((size_t)ni, sizeof(char *));
  if (lb) ds->labels = (char **)ioupos__calloc((size_t)ni, sizeof(char *));
  if (!ds->images || (lb && !ds->labels)) goto oom;
  ds->n = ni;
  for (i = 0; i < ni; ++i) {
    ds->images[i] = ioupos__data_join(image_dir, im[i]);
    if (!ds->images[i]) goto oom;
    if (lb) {
      ds->labels[i] = ioupos__data_join(label_dir, lb[i]);
      if (!ds->labels[i]) goto oom;
    }
  }
  ioupos__data_free_names(im, ni);
  ioupos__data_free_names(lb, nl);
  return IOUPOS_OK;
oom:
  st = ioupos__fail(IOUPOS_ENOMEM, "ioupos_dataset_scan %s: out of memory", image_dir);
fail:
  ioupos__data_free_names(im, ni);
  ioupos__data_free_names(lb, nl);
  if (ds->images || ds->labels) {
    ds->n = ni;
    ioupos_dataset_free(ds);
  }
  memset(ds, 0, sizeof *ds);
  return st;
}

/* ---- 7b. The loader ----------------------------------------------------------------------- */

IOUPOS_DEF void ioupos_loader_config_default(ioupos_loader_config *cfg,
                                             const ioupos_dataset *ds, int kind) {
  if (!cfg) return;
  memset(cfg, 0, sizeof *cfg);
  cfg->dataset = ds;
  cfg->kind = kind;
  cfg->batch_size = kind == IOUPOS_LOADER_FINETUNE ? 32 : 128;
  cfg->crop[0] = cfg->crop[1] = 96;
  cfg->min_iou = 0.3;
  cfg->max_iou = 0.6;
  cfg->pair_mode = IOUPOS_PAIR_ANCHORED;
  cfg->drop_last = 1;
  cfg->pad_small = 1;
  cfg->num_samples = 2;
  cfg->pos = cfg->neg = 1;
}

IOUPOS_DEF int ioupos_crop_start_from_centre(int c, int s, int len) {
  int start = c - s / 2;
  if (start > len - s) start = len - s;
  if (start < 0) start = 0;
  return start;
}

IOUPOS_DEF int ioupos_augment_pretrain_view(void *ctx, ioupos_rng *rng, float *img, float *label,
                                            int h, int w, float *scratch) {
  ioupos_aug_config c;
  ioupos_view_params p;
  (void)label;
  if (ctx) c = *(const ioupos_aug_config *)ctx;
  else ioupos_aug_config_pretrain(&c);
  ioupos_view_params_draw_config(&c, rng, &p);
  return ioupos_view_apply(&p, img, h, w, scratch);
}

IOUPOS_DEF int ioupos_augment_finetune_crop(void *ctx, ioupos_rng *rng, float *img, float *label,
                                            int h, int w, float *scratch) {
  ioupos_aug_config c;
  ioupos_view_params p;
  if (ctx) c = *(const ioupos_aug_config *)ctx;
  else ioupos_aug_config_finetune(&c);
  ioupos_view_params_draw_config(&c, rng, &p);
  return ioupos_view_apply_labelled(&p, img, label, h, w, scratch);
}

#define IOUPOS__LOADER_CACHE 8 /* samplers per worker, keyed by (padded) image shape */

typedef struct ioupos__sampler_entry {
  int h, w, used; /* used: 0 empty, else last-use stamp */
  ioupos_iou_sampler s;
} ioupos__sampler_entry;

/* A decoded image: either bytes (fast path, value v / 255) or floats. */
typedef struct ioupos__pix {
  int h, w;
  unsigned char *u8; /* stbi buffer, or NULL */
  ioupos_image f;    /* used when u8 is NULL */
} ioupos__pix;

typedef struct ioupos__worker {
  struct ioupos__loader_state *st;
  pthread_t thread;
  int started;
  int perm_epoch; /* epoch whose order perm holds, -1 none */
  int *perm;
  ioupos__sampler_entry cache[IOUPOS__LOADER_CACHE];
  int stamp;
  float *scratch; /* IOUPOS_AUGMENT_SCRATCH(crop) floats */
  int *idx;       /* fine-tuning: fg then bg pixel indices, capacity idx_cap */
  size_t idx_cap;
} ioupos__worker;

enum { IOUPOS__SLOT_FREE = 0, IOUPOS__SLOT_FILLING = 1, IOUPOS__SLOT_READY = 2 };

typedef struct ioupos__slot {
  int state;
  int64_t g; /* stream number of the batch it holds (epoch * batches_per_epoch + index) */
  int status;
  char reason[640]; /* room for the position prefix and a full 512-byte reason */
  ioupos_batch b;
  float *mem; /* the batch's float arrays, one allocation */
} ioupos__slot;

struct ioupos__loader_state {
  const ioupos_loader_config *cfg; /* points at the loader's copy */
  int bpe;                         /* batches per epoch */
  ioupos_rng root;
  float lut[256]; /* v / 255 as ioupos_image_load computes it */
  int nslots, nworkers;
  ioupos__slot *slots;
  ioupos__worker *workers; /* nworkers, or 1 for the synchronous mode */
  pthread_mutex_t mu;
  pthread_cond_t cv_work, cv_ready;
  int sync_ok; /* mutex and conds initialised */
  int stop, pausing, busy;
  int64_t next_claim, next_return, released;
  int held; /* slot handed to the caller, -1 none */
};

static const unsigned char ioupos__png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};

static void ioupos__pix_free(ioupos__pix *p) {
  if (p->u8) stbi_image_free(p->u8);
  ioupos_image_free(&p->f);
  p->u8 = NULL;
  p->h = p->w = 0;
}

/* Decode path: 8-bit grey (colour type 0) or grey+alpha (4) to bytes, the rest as floats. */
static int ioupos__pix_load(const char *path, ioupos__pix *p) {
  void *data;
  size_t size;
  int st;
  const unsigned char *d;
  memset(p, 0, sizeof *p);
  st = ioupos_read_file(path, &data, &size);
  if (st) return st;
  d = (const unsigned char *)data;
  if (size >= 33 && size <= 0x7FFFFFFF && memcmp(d, ioupos__png_sig, 8) == 0 &&
      memcmp(d + 12, "IHDR", 4) == 0 && d[24] == 8 && (d[25] == 0 || d[25] == 4)) {
    int w = 0, h = 0, comp = 0;
    p->u8 = stbi_load_from_memory(d, (int)size, &w, &h, &comp, 1);
    if (!p->u8) {
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: corrupt or unsupported PNG (%s)", path,
                        stbi_failure_reason());
    } else {
      p->h = h;
      p->w = w;
    }
  } else {
    st = ioupos_image_load_memory(data, size, path, &p->f);
    p->h = p->f.h;
    p->w = p->f.w;
  }
  IOUPOS_FREE(data);
  return st;
}

/* Copy the h x w window at (y0, x0) of the image (coordinates of the source; outside is 0). */
static void ioupos__pix_crop(const struct ioupos__loader_state *st, const ioupos__pix *p, int y0,
                             int x0, int h, int w, float *out) {
  int y, x;
  int xa = x0 < 0 ? -x0 : 0, xb = x0 + w > p->w ? p->w - x0 : w; /* valid columns [xa, xb) */
  for (y = 0; y < h; ++y) {
    float *o = out + (size_t)y * (size_t)w;
    int sy = y0 + y;
    if (sy < 0 || sy >= p->h || xb <= xa) {
      memset(o, 0, (size_t)w * sizeof(float));
      continue;
    }
    for (x = 0; x < xa; ++x) o[x] = 0.0f;
    if (p->u8) {
      const unsigned char *r = p->u8 + (size_t)sy * (size_t)p->w + x0;
      for (x = xa; x < xb; ++x) o[x] = st->lut[r[x]];
    } else {
      memcpy(o + xa, p->f.data + (size_t)sy * (size_t)p->w + x0 + xa,
             (size_t)(xb - xa) * sizeof(float));
    }
    for (x = xb; x < w; ++x) o[x] = 0.0f;
  }
}

/* Pixel value at (y, x) of the source as a byte-scaled number 0..255 (labels), or as [0, 1]. */
static int ioupos__pix_label(const ioupos__pix *p, size_t i) {
  if (p->u8) return p->u8[i];
  return (int)floor(p->f.data[i] * 255.0 + 0.5);
}
static double ioupos__pix_value(const struct ioupos__loader_state *st, const ioupos__pix *p,
                                size_t i) {
  return p->u8 ? (double)st->lut[p->u8[i]] : (double)p->f.data[i];
}

static const ioupos_iou_sampler *ioupos__worker_sampler(ioupos__worker *wk, int h, int w,
                                                        const char *path, int *status) {
  const ioupos_loader_config *cfg = wk->st->cfg;
  int i, victim = 0, shape[2], st;
  for (i = 0; i < IOUPOS__LOADER_CACHE; ++i) {
    ioupos__sampler_entry *e = &wk->cache[i];
    if (e->used && e->h == h && e->w == w) {
      e->used = ++wk->stamp;
      return &e->s;
    }
    if (!e->used || (wk->cache[victim].used && e->used < wk->cache[victim].used)) victim = i;
  }
  if (wk->cache[victim].used) ioupos_iou_sampler_free(&wk->cache[victim].s);
  wk->cache[victim].used = 0;
  shape[0] = h;
  shape[1] = w;
  st = ioupos_iou_sampler_init(&wk->cache[victim].s, 2, shape, cfg->crop, cfg->min_iou,
                               cfg->max_iou, cfg->pair_mode);
  if (st) {
    char why[512];
    snprintf(why, sizeof why, "%s", ioupos_failure_reason());
    *status = ioupos__fail(st, "%s: %s", path, why);
    return NULL;
  }
  wk->cache[victim].h = h;
  wk->cache[victim].w = w;
  wk->cache[victim].used = ++wk->stamp;
  return &wk->cache[victim].s;
}

static int ioupos__augment(const ioupos_loader_config *cfg, ioupos__worker *wk, ioupos_rng *rng,
                           float *img, float *label, const char *path) {
  int st;
  if (!cfg->augment) return IOUPOS_OK;
  st = cfg->augment(cfg->augment_ctx, rng, img, label, cfg->crop[0], cfg->crop[1], wk->scratch);
  if (st) {
    char why[512];
    snprintf(why, sizeof why, "%s", ioupos_failure_reason());
    return ioupos__fail(st < 0 ? st : IOUPOS_EINVAL, "%s: augmentation failed: %s", path, why);
  }
  return IOUPOS_OK;
}

/* Padding of an image of h x w to the crop: offsets before, or an error. */
static int ioupos__pad_offsets(const ioupos_loader_config *cfg, const char *path, int h, int w,
                               int *py, int *px) {
  if ((h < cfg->crop[0] || w < cfg->crop[1]) && !cfg->pad_small)
    return ioupos__fail(IOUPOS_EINVAL, "%s: image %dx%d is smaller than the crop %dx%d (the "
                        "loader was opened with pad_small = 0)", path, h, w, cfg->crop[0],
                        cfg->crop[1]);
  *py = h < cfg->crop[0] ? (cfg->crop[0] - h) / 2 : 0;
  *px = w < cfg->crop[1] ? (cfg->crop[1] - w) / 2 : 0;
  return IOUPOS_OK;
}

static int ioupos__make_ssl(ioupos__worker *wk, int d, ioupos_rng *S, ioupos_batch *b, int i) {
  const struct ioupos__loader_state *st = wk->st;
  const ioupos_loader_config *cfg = st->cfg;
  const char *path = cfg->dataset->images[d];
  size_t hw = (size_t)cfg->crop[0] * (size_t)cfg->crop[1];
  const ioupos_iou_sampler *s;
  ioupos__pix p;
  ioupos_rng r;
  ioupos_box box[2];
  int status = 0, py, px, v;
  status = ioupos__pix_load(path, &p);
  if (status) return status;
  status = ioupos__pad_offsets(cfg, path, p.h, p.w, &py, &px);
  if (status) goto done;
  s = ioupos__worker_sampler(wk, p.h > cfg->crop[0] ? p.h : cfg->crop[0],
                             p.w > cfg->crop[1] ? p.w : cfg->crop[1], path, &status);
  if (!s) goto done;
  r = ioupos_rng_split(S, 0);
  status = ioupos_iou_sampler_draw(s, &r, &box[0], &box[1]);
  if (status) goto done;
  for (v = 0; v < 2; ++v) {
    float *out = b->views[v] + (size_t)i * hw;
    box[v].lo[0] -= py, box[v].hi[0] -= py;
    box[v].lo[1] -= px, box[v].hi[1] -= px;
    ioupos__pix_crop(st, &p, box[v].lo[0], box[v].lo[1], cfg->crop[0], cfg->crop[1], out);
    b->box[v][i] = box[v];
    r = ioupos_rng_split(S, 1u + (uint64_t)v);
    status = ioupos__augment(cfg, wk, &r, out, NULL, path);
    if (status) goto done;
  }
  b->source[i] = d;
done:
  ioupos__pix_free(&p);
  return status;
}

static int ioupos__make_finetune(ioupos__worker *wk, int d, ioupos_rng *S, ioupos_batch *b,
                                 int i) {
  const struct ioupos__loader_state *st = wk->st;
  const ioupos_loader_config *cfg = st->cfg;
  const char *ipath = cfg->dataset->images[d], *lpath = cfg->dataset->labels[d];
  int ch = cfg->crop[0], cw = cfg->crop[1], ns = cfg->num_samples;
  size_t hw = (size_t)ch * (size_t)cw, n, k, nfg = 0, nbg = 0;
  ioupos__pix im, lb;
  ioupos_rng r;
  int status, py, px, H, W, j;
  double pos_ratio = (double)cfg->pos / (double)(cfg->pos + cfg->neg);
  memset(&lb, 0, sizeof lb);
  status = ioupos__pix_load(ipath, &im);
  if (status) return status;
  status = ioupos__pix_load(lpath, &lb);
  if (status) goto done;
  if (lb.h != im.h || lb.w != im.w) {
    status = ioupos__fail(IOUPOS_EINVAL, "label %s is %dx%d but its image %s is %dx%d", lpath,
                          lb.h, lb.w, ipath, im.h, im.w);
    goto done;
  }
  status = ioupos__pad_offsets(cfg, ipath, im.h, im.w, &py, &px);
  if (status) goto done;
  H = im.h > ch ? im.h : ch;
  W = im.w > cw ? im.w : cw;
  /* foreground / background pixel indices over the padded image, in raster order, as MONAI's
     map_binary_to_indices: fg = label > 0, bg = label == 0 (and image > threshold if asked);
     padding is background (label 0, image 0). */
  n = (size_t)H * (size_t)W;
  if (wk->idx_cap < n) {
    IOUPOS_FREE(wk->idx);
    wk->idx = (int *)ioupos__calloc(n, sizeof(int));
    wk->idx_cap = wk->idx ? n : 0;
    if (!wk->idx) {
      status = ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory for %dx%d indices", ipath, H, W);
      goto done;
    }
  }
  for (k = 0; k < n; ++k) { /* fg from the front, bg from the back (reversed, fixed below) */
    int y = (int)(k / (size_t)W) - py, x = (int)(k % (size_t)W) - px, lab = 0;
    double val = 0.0;
    if (y >= 0 && y < im.h && x >= 0 && x < im.w) {
      size_t s = (size_t)y * (size_t)im.w + (size_t)x;
      lab = ioupos__pix_label(&lb, s);
      if (cfg->bg_use_image) val = ioupos__pix_value(st, &im, s);
    }
    if (lab > 0) wk->idx[nfg++] = (int)k;
    else if (!cfg->bg_use_image || val > cfg->bg_image_threshold) wk->idx[n - 1 - nbg++] = (int)k;
  }
  if (nfg == 0 && nbg == 0) {
    status = ioupos__fail(IOUPOS_EINVAL, "%s (label %s): no foreground and no background pixel "
                          "to centre a crop on", ipath, lpath);
    goto done;
  }
  if (nfg == 0) pos_ratio = 0.0; /* MONAI: unable to balance, all from the non-empty side */
  else if (nbg == 0) pos_ratio = 1.0;
  r = ioupos_rng_split(S, 0);
  for (j = 0; j < ns; ++j) {
    int o = i * ns + j, c, y0, x0;
    float *oi = b->image + (size_t)o * hw, *ol = b->label + (size_t)o * hw;
    ioupos_box *bx = &b->box[0][o];
    size_t y, x;
    if (ioupos_rng_uniform(&r) < pos_ratio) c = wk->idx[ioupos_rng_below(&r, nfg)];
    else c = wk->idx[n - 1 - ioupos_rng_below(&r, nbg)]; /* the ascending q-th bg index */
    y0 = ioupos_crop_start_from_centre(c / W, ch, H) - py;
    x0 = ioupos_crop_start_from_centre(c % W, cw, W) - px;
    ioupos__pix_crop(st, &im, y0, x0, ch, cw, oi);
    for (y = 0; y < (size_t)ch; ++y)
      for (x = 0; x < (size_t)cw; ++x) {
        int sy = y0 + (int)y, sx = x0 + (int)x;
        ol[y * (size_t)cw + x] =
            (sy >= 0 && sy < lb.h && sx >= 0 && sx < lb.w)
                ? (float)ioupos__pix_label(&lb, (size_t)sy * (size_t)lb.w + (size_t)sx)
                : 0.0f;
      }
    memset(bx, 0, sizeof *bx);
    bx->dims = 2;
    bx->lo[0] = y0, bx->hi[0] = y0 + ch;
    bx->lo[1] = x0, bx->hi[1] = x0 + cw;
    b->source[o] = d;
  }
  for (j = 0; j < ns; ++j) { /* augmentations after all centres: crop j uses split(S, 1 + j) */
    int o = i * ns + j;
    ioupos_rng ra = ioupos_rng_split(S, 1u + (uint64_t)j);
    status = ioupos__augment(cfg, wk, &ra, b->image + (size_t)o * hw, b->label + (size_t)o * hw,
                             ipath);
    if (status) goto done;
  }
done:
  ioupos__pix_free(&im);
  ioupos__pix_free(&lb);
  return status;
}

/* Make batch g of the stream into slot (any thread; touches only the worker and the slot). */
static int ioupos__make_batch(ioupos__worker *wk, int64_t g, ioupos__slot *slot) {
  struct ioupos__loader_state *st = wk->st;
  const ioupos_loader_config *cfg = st->cfg;
  int n = cfg->dataset->n, B = cfg->batch_size, epoch = (int)(g / st->bpe);
  int index = (int)(g % st->bpe), first = index * B, count, i, status = 0;
  ioupos_batch *b = &slot->b;
  ioupos_rng E = ioupos_rng_split(&st->root, (uint64_t)epoch);
  if (wk->perm_epoch != epoch) { /* Fisher-Yates from a copy of E */
    ioupos_rng r = E;
    for (i = 0; i < n; ++i) wk->perm[i] = i;
    for (i = n - 1; i > 0; --i) {
      int j = (int)ioupos_rng_below(&r, (uint64_t)i + 1u), t = wk->perm[i];
      wk->perm[i] = wk->perm[j];
      wk->perm[j] = t;
    }
    wk->perm_epoch = epoch;
  }
  count = n - first < B ? n - first : B;
  b->epoch = epoch;
  b->index = index;
  b->last_in_epoch = index == st->bpe - 1;
  b->n_images = count;
  b->n = cfg->kind == IOUPOS_LOADER_FINETUNE ? count * cfg->num_samples : count;
  for (i = 0; i < count && !status; ++i) {
    int d = wk->perm[first + i];
    ioupos_rng S = ioupos_rng_split(&E, (uint64_t)d);
    status = cfg->kind == IOUPOS_LOADER_FINETUNE ? ioupos__make_finetune(wk, d, &S, b, i)
                                                 : ioupos__make_ssl(wk, d, &S, b, i);
  }
  slot->status = status;
  slot->reason[0] = 0;
  if (status)
    snprintf(slot->reason, sizeof slot->reason, "loader batch (epoch %d, batch %d): %s", epoch,
             index, ioupos_failure_reason());
  return status;
}

static void *ioupos__worker_main(void *arg) {
  ioupos__worker *wk = (ioupos__worker *)arg;
  struct ioupos__loader_state *st = wk->st;
  pthread_mutex_lock(&st->mu);
  for (;;) {
    int64_t g;
    ioupos__slot *slot;
    while (!st->stop && (st->pausing || st->next_claim >= st->released + st->nslots))
      pthread_cond_wait(&st->cv_work, &st->mu);
    if (st->stop) break;
    g = st->next_claim++;
    slot = &st->slots[g % st->nslots];
    IOUPOS_ASSERT(slot->state == IOUPOS__SLOT_FREE);
    slot->state = IOUPOS__SLOT_FILLING;
    slot->g = g;
    ++st->busy;
    pthread_mutex_unlock(&st->mu);
    ioupos__make_batch(wk, g, slot);
    pthread_mutex_lock(&st->mu);
    slot->state = IOUPOS__SLOT_READY;
    --st->busy;
    pthread_cond_broadcast(&st->cv_ready);
  }
  pthread_mutex_unlock(&st->mu);
  return NULL;
}

static void ioupos__worker_free(ioupos__worker *wk) {
  int i;
  for (i = 0; i < IOUPOS__LOADER_CACHE; ++i)
    if (wk->cache[i].used) ioupos_iou_sampler_free(&wk->cache[i].s);
  IOUPOS_FREE(wk->perm);
  IOUPOS_FREE(wk->scratch);
  IOUPOS_FREE(wk->idx);
  memset(wk, 0, sizeof *wk);
}

IOUPOS_DEF void ioupos_loader_close(ioupos_loader *l) {
  struct ioupos__loader_state *st;
  int i;
  if (!l || !l->st) return;
  st = l->st;
  if (st->sync_ok) {
    pthread_mutex_lock(&st->mu);
    st->stop = 1;
    pthread_cond_broadcast(&st->cv_work);
    pthread_mutex_unlock(&st->mu);
  }
  if (st->workers) {
    int nw = st->nworkers ? st->nworkers : 1;
    for (i = 0; i < nw; ++i)
      if (st->workers[i].started) pthread_join(st->workers[i].thread, NULL);
    for (i = 0; i < nw; ++i) ioupos__worker_free(&st->workers[i]);
    IOUPOS_FREE(st->workers);
  }
  if (st->slots) {
    for (i = 0; i < st->nslots; ++i) {
      IOUPOS_FREE(st->slots[i].mem);
      IOUPOS_FREE(st->slots[i].b.source);
      IOUPOS_FREE(st->slots[i].b.box[0]);
      IOUPOS_FREE(st->slots[i].b.box[1]);
    }
    IOUPOS_FREE(st->slots);
  }
  if (st->sync_ok) {
    pthread_cond_destroy(&st->cv_ready);
    pthread_cond_destroy(&st->cv_work);
    pthread_mutex_destroy(&st->mu);
  }
  IOUPOS_FREE(st);
  l->st = NULL;
}

IOUPOS_DEF int ioupos_loader_open(ioupos_loader *l, const ioupos_loader_config *cfg_in) {
  struct ioupos__loader_state *st;
  const ioupos_loader_config *cfg;
  const ioupos_dataset *ds;
  int i, nw, ft, per_img, B;
  size_t hw, scratch, floats;
  if (!l) return ioupos__fail(IOUPOS_EINVAL, "ioupos_loader_open: loader is NULL");
  memset(l, 0, sizeof *l);
  if (!cfg_in) return ioupos__fail(IOUPOS_EINVAL, "ioupos_loader_open: config is NULL");
  l->cfg = *cfg_in;
  cfg = &l->cfg;
  ds = cfg->dataset;
  ft = cfg->kind == IOUPOS_LOADER_FINETUNE;
  B = cfg->batch_size;
  if (!ds || ds->n <= 0 || !ds->images)
    return ioupos__fail(IOUPOS_EINVAL, "loader: the data set is NULL or empty");
  if (cfg->kind != IOUPOS_LOADER_SSL && !ft)
    return ioupos__fail(IOUPOS_EINVAL, "loader: unknown kind %d (0 SSL pairs, 1 fine-tuning)",
                        cfg->kind);
  if (B < 1 || cfg->crop[0] < 1 || cfg->crop[1] < 1 || cfg->crop[0] > 16384 ||
      cfg->crop[1] > 16384)
    return ioupos__fail(IOUPOS_EINVAL, "loader: batch_size %d must be >= 1 and the crop %dx%d "
                        "between 1 and 16384", B, cfg->crop[0], cfg->crop[1]);
  if (cfg->num_workers < 0 || cfg->num_workers > 256 || cfg->prefetch < 0 ||
      cfg->prefetch > 4096)
    return ioupos__fail(IOUPOS_EINVAL, "loader: num_workers %d must be in 0..256 and prefetch "
                        "%d in 0..4096", cfg->num_workers, cfg->prefetch);
  if (ft) {
    if (!ds->labels)
      return ioupos__fail(IOUPOS_EINVAL, "loader: fine-tuning needs a data set with labels "
                          "(scan it with a label folder)");
    if (cfg->num_samples < 1 || cfg->num_samples > 4096 || cfg->pos < 0 || cfg->neg < 0 ||
        cfg->pos + cfg->neg <= 0)
      return ioupos__fail(IOUPOS_EINVAL, "loader: num_samples %d must be in 1..4096 and pos %d, "
                          "neg %d non-negative, not both 0", cfg->num_samples, cfg->pos,
                          cfg->neg);
  } else {
    if (!(cfg->min_iou >= 0.0 && cfg->max_iou <= 1.0 && cfg->min_iou <= cfg->max_iou))
      return ioupos__fail(IOUPOS_EINVAL, "loader: IoU interval [%g, %g] must be within [0, 1], "
                          "not reversed, not NaN", cfg->min_iou, cfg->max_iou);
    if (cfg->pair_mode != IOUPOS_PAIR_ANCHORED && cfg->pair_mode != IOUPOS_PAIR_JOINT)
      return ioupos__fail(IOUPOS_EINVAL, "loader: unknown pair mode %d", cfg->pair_mode);
  }
  l->batches_per_epoch = cfg->drop_last ? ds->n / B : (ds->n - 1) / B + 1;
  if (l->batches_per_epoch == 0)
    return ioupos__fail(IOUPOS_EINVAL, "loader: the data set has %d images, fewer than one batch "
                        "of %d, and drop_last is set: an epoch would have no batch", ds->n, B);
  if ((int64_t)B * (ft ? cfg->num_samples : 1) > 0x7FFFFFFF / 2)
    return ioupos__fail(IOUPOS_ERANGE, "loader: batch_size %d x num_samples %d is too large", B,
                        cfg->num_samples);

  st = (struct ioupos__loader_state *)ioupos__calloc(1, sizeof *st);
  if (!st) return ioupos__fail(IOUPOS_ENOMEM, "loader: out of memory");
  l->st = st;
  st->cfg = cfg;
  st->bpe = l->batches_per_epoch;
  ioupos_rng_seed(&st->root, cfg->seed);
  for (i = 0; i < 256; ++i) st->lut[i] = (float)((double)i / 255.0);
  st->held = -1;
  nw = cfg->num_workers;
  st->nworkers = nw;
  st->nslots = nw == 0 ? 1 : cfg->prefetch ? cfg->prefetch : 2 * nw;
  if (pthread_mutex_init(&st->mu, NULL) != 0) goto oom;
  if (pthread_cond_init(&st->cv_work, NULL) != 0) {
    pthread_mutex_destroy(&st->mu);
    goto oom;
  }
  if (pthread_cond_init(&st->cv_ready, NULL) != 0) {
    pthread_cond_destroy(&st->cv_work);
    pthread_mutex_destroy(&st->mu);
    goto oom;
  }
  st->sync_ok = 1;

  /* slots: each holds a whole batch */
  per_img = ft ? cfg->num_samples : 1;
  hw = (size_t)cfg->crop[0] * (size_t)cfg->crop[1];
  floats = (size_t)B * (size_t)per_img * hw; /* <= 2^30 * 2^28: check the product below */
  if (hw != 0 && floats / hw != (size_t)B * (size_t)per_img) goto oom;
  st->slots = (ioupos__slot *)ioupos__calloc((size_t)st->nslots, sizeof(ioupos__slot));
  if (!st->slots) goto oom;
  for (i = 0; i < st->nslots; ++i) {
    ioupos__slot *s = &st->slots[i];
    ioupos_batch *b = &s->b;
    size_t nsamp = (size_t)B * (size_t)per_img;
    s->mem = (float *)ioupos__calloc(floats, 2 * sizeof(float));
    b->source = (int *)ioupos__calloc(nsamp, sizeof(int));
    b->box[0] = (ioupos_box *)ioupos__calloc(nsamp, sizeof(ioupos_box));
    if (!ft) b->box[1] = (ioupos_box *)ioupos__calloc(nsamp, sizeof(ioupos_box));
    if (!s->mem || !b->source || !b->box[0] || (!ft && !b->box[1])) goto oom;
    b->kind = cfg->kind;
    b->h = cfg->crop[0];
    b->w = cfg->crop[1];
    if (ft) b->image = s->mem, b->label = s->mem + floats;
    else b->views[0] = s->mem, b->views[1] = s->mem + floats;
  }
  /* worker contexts (one for the synchronous mode) */
  scratch = IOUPOS_AUGMENT_SCRATCH(cfg->crop[0], cfg->crop[1]);
  st->workers = (ioupos__worker *)ioupos__calloc((size_t)(nw ? nw : 1), sizeof(ioupos__worker));
  if (!st->workers) goto oom;
  for (i = 0; i < (nw ? nw : 1); ++i) {
    ioupos__worker *wk = &st->workers[i];
    wk->st = st;
    wk->perm_epoch = -1;
    wk->perm = (int *)ioupos__calloc((size_t)ds->n, sizeof(int));
    wk->scratch = (float *)ioupos__calloc(scratch, sizeof(float));
    if (!wk->perm || !wk->scratch) goto oom;
  }
  for (i = 0; i < nw; ++i) {
    int e = pthread_create(&st->workers[i].thread, NULL, ioupos__worker_main, &st->workers[i]);
    if (e != 0) {
      ioupos_loader_close(l);
      return ioupos__fail(IOUPOS_ENOMEM, "loader: cannot start worker thread %d of %d: %s", i + 1,
                          nw, strerror(e));
    }
    st->workers[i].started = 1;
  }
  return IOUPOS_OK;
oom:
  i = st->nslots;
  ioupos_loader_close(l);
  return ioupos__fail(IOUPOS_ENOMEM, "loader: out of memory for %d batch buffers of %d x %dx%d "
                      "crops", i, cfg_in->batch_size, cfg_in->crop[0], cfg_in->crop[1]);
}

IOUPOS_DEF int ioupos_loader_next(ioupos_loader *l, ioupos_batch *batch) {
  struct ioupos__loader_state *st;
  ioupos__slot *slot;
  int64_t g;
  if (!l || !l->st || !batch)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_loader_next: NULL argument or loader not open");
  st = l->st;
  memset(batch, 0, sizeof *batch);
  pthread_mutex_lock(&st->mu);
  if (st->held >= 0) { /* the caller is done with the batch it holds */
    st->slots[st->held].state = IOUPOS__SLOT_FREE;
    st->held = -1;
    st->released = st->next_return;
    pthread_cond_broadcast(&st->cv_work);
  }
  g = st->next_return;
  slot = &st->slots[g % st->nslots];
  if (st->nworkers == 0) {
    pthread_mutex_unlock(&st->mu);
    slot->g = g;
    ioupos__make_batch(&st->workers[0], g, slot);
    pthread_mutex_lock(&st->mu);
    slot->state = IOUPOS__SLOT_READY;
  } else {
    while (!(slot->state == IOUPOS__SLOT_READY && slot->g == g))
      pthread_cond_wait(&st->cv_ready, &st->mu);
  }
  st->next_return = g + 1;
  st->held = (int)(g % st->nslots);
  pthread_mutex_unlock(&st->mu);
  l->epoch = (int)((g + 1) / st->bpe);
  l->batch = (int)((g + 1) % st->bpe);
  if (slot->status) return ioupos__fail(slot->status, "%s", slot->reason);
  *batch = slot->b;
  return IOUPOS_OK;
}

IOUPOS_DEF int ioupos_loader_seek(ioupos_loader *l, int epoch, int batch) {
  struct ioupos__loader_state *st;
  int64_t g;
  int i;
  if (!l || !l->st)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_loader_seek: NULL argument or loader not open");
  if (epoch < 0 || batch < 0 || batch >= l->batches_per_epoch)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_loader_seek: position (epoch %d, batch %d) is "
                        "outside the stream (epoch >= 0, batch in 0..%d)", epoch, batch,
                        l->batches_per_epoch - 1);
  st = l->st;
  g = (int64_t)epoch * st->bpe + batch;
  if (g > ((int64_t)1 << 62))
    return ioupos__fail(IOUPOS_ERANGE, "ioupos_loader_seek: epoch %d too large", epoch);
  pthread_mutex_lock(&st->mu);
  if (g != st->next_return) {
    st->pausing = 1; /* no new claims; let the batches being made finish, then drop them all */
    while (st->busy > 0) pthread_cond_wait(&st->cv_ready, &st->mu);
    for (i = 0; i < st->nslots; ++i) st->slots[i].state = IOUPOS__SLOT_FREE;
    st->held = -1;
    st->next_claim = st->next_return = st->released = g;
    st->pausing = 0;
    pthread_cond_broadcast(&st->cv_work);
  }
  pthread_mutex_unlock(&st->mu);
  l->epoch = epoch;
  l->batch = batch;
  return IOUPOS_OK;
}

IOUPOS_DEF int ioupos_loader_epoch(ioupos_loader *l, int epoch) {
  return ioupos_loader_seek(l, epoch, 0);
}

#endif /* IOUPOS_WIP_DATA_IMPL */
