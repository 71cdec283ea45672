/* ioupos-prep — the research code's two preprocessing scripts (unlabelled and labelled) as one
   command.

   Each CT volume (.nii or .nii.gz) in --data_dir is reoriented to RAS, resampled to
   --size_x/y/z mm (trilinear; labels nearest), windowed to [--a_min, --a_max] and scaled to
   [0, 1], cropped to the bounding box of voxels > 0 (labels with the image's box), and padded in
   x and y to at least --pad_to voxels (MONAI's semantics throughout, see ioupos.h section 6). Then
     --spatial_dims 2: every axial slice k is an 8-bit grey PNG <case>_<kkk>.png (x rows, y
                       columns, round(v * 255)); labels: labels/<case>_<kkk>.png (the label id);
     --spatial_dims 3: <case>.nii.gz (float32 in [0, 1]) and labels/<case>.nii.gz (uint8).
   With --split_path each split's files go to <output_dir>/<split>/.

   Cases run in --num_workers threads. Every file is written to a temporary name and renamed;
   a case's marker <dir>/.done/<case> is written last, so a re-run skips finished cases and
   redoes interrupted ones. A case that fails (corrupt file, ...) is reported by name; the others
   finish; the exit status is then 1. Run with --help for the flags. */
#include "ioupos.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PROG "ioupos-prep"
#include "cli.h"

#define MAX_WORKERS 256

typedef struct options {
  const char *data_dir, *output_dir, *labels_dir, *split_path;
  const char *image_suffix, *label_suffix;
  int spatial_dims, num_workers, pad_to;
  ioupos_prep_opts prep;
} options;

static void usage(FILE *f) {
  fprintf(f,
          "usage: " PROG " --data_dir DIR --output_dir DIR [flags]\n"
          "Preprocess CT volumes as the research code did: reorient to RAS, resample, window\n"
          "and scale to [0, 1], crop to the foreground, pad x/y; write axial PNG slices (2D) or\n"
          "volumes (3D).\n"
          "\n"
          "  --data_dir DIR       folder of CT volumes (*.nii, *.nii.gz; other files ignored)\n"
          "  --output_dir DIR     where to write (created if missing)\n"
          "  --spatial_dims 2|3   2: one PNG per axial slice, <case>_<z>.png with z zero-padded\n"
          "                       to 3 digits (more if a case has over 1000 slices); 3: the\n"
          "                       volume <case>.nii.gz (float32) (default 2)\n"
          "  --a_min HU           window lower bound, scaled to 0 (default -500)\n"
          "  --a_max HU           window upper bound, scaled to 1 (default 500)\n"
          "  --size_x MM          output spacing along x (default 1.0)\n"
          "  --size_y MM          output spacing along y (default 1.0)\n"
          "  --size_z MM          output spacing along z (default 2.5)\n"
          "  --pad_to N           pad x and y to at least N voxels, symmetric, the odd voxel\n"
          "                       after (default 96)\n"
          "  --labels_dir DIR     label volumes; each image needs exactly one label with the same\n"
          "                       case name, written to labels/ under the same names\n"
          "                       (nearest-neighbour resampling, the image's crop) (default none)\n"
          "  --split_path FILE    JSON {\"train\": [cases], \"val\": [...], \"test\": [...]}: only\n"
          "                       the listed cases are processed, each into\n"
          "                       <output_dir>/<split>/ (default: all cases into <output_dir>)\n"
          "  --image_suffix LIST  comma-separated suffixes removed from image names to get the\n"
          "                       case name, first match only (default _0000,_ct)\n"
          "  --label_suffix LIST  the same for label names (default _label,_seg)\n"
          "  --num_workers N      cases processed in parallel, 1..%d (default 1)\n"
          "  --help               show this text and exit\n"
          "\n"
          "Case names: the file name without .nii.gz / .nii and without the first matching\n"
          "suffix, e.g. FLARE22_Tr_0001_0000.nii.gz (image) and FLARE22_Tr_0001.nii.gz (label)\n"
          "are case FLARE22_Tr_0001; totalseg_sm_ct.nii.gz and totalseg_sm_label.nii.gz are case\n"
          "totalseg_sm. With --labels_dir, files of --data_dir ending with a label suffix are\n"
          "not images and files of --labels_dir ending with an image suffix are not labels, so\n"
          "both may be one folder. Two files with one case name, an image without a label or a\n"
          "label without an image is an error naming the files (exit 1, nothing processed).\n"
          "\n"
          "Re-running skips cases whose marker <dir>/.done/<case> exists (written after all of\n"
          "the case's files are in place); a marker made with other settings is an error for\n"
          "that case. A case that fails leaves none of its files. One ioupos-prep at a time\n"
          "writes to an --output_dir (a second is refused, naming the first's process id);\n"
          "temporary files a killed run left are removed. Progress goes to stderr. Exit status: 0 all cases done, 1 some case failed\n"
          "(the others still finish; a summary lists the failures) or the input is unusable,\n"
          "2 bad command line.\n",
          MAX_WORKERS);
}

/* ---- flags (drivers/cli.h, shared with ioupos-crops and ioupos-phantom) --------------------- */

static void parse_args(int argc, char **argv, options *o) {
  static const char *const names[] = {"data_dir", "output_dir", "spatial_dims", "a_min",
                                      "a_max",    "size_x",     "size_y",       "size_z",
                                      "labels_dir", "split_path", "num_workers", "image_suffix",
                                      "label_suffix", "pad_to"};
  cli c;
  int k;
  cli_init(&c, argc, argv, names, CLI_COUNT(names), 0, usage);
  while ((k = cli_next_flag(&c)) >= 0) {
    const char *flag = c.flag, *val = c.value;
    switch (k) {
      case 0: o->data_dir = cli_nonempty(flag, val, "expected a path"); break;
      case 1: o->output_dir = cli_nonempty(flag, val, "expected a path"); break;
      case 2: o->spatial_dims = (int)cli_int(flag, val, 2, 3); break;
      case 3: o->prep.a_min = cli_double(flag, val, -1e6, 1e6, 0); break;
      case 4: o->prep.a_max = cli_double(flag, val, -1e6, 1e6, 0); break;
      case 5: case 6: case 7: o->prep.spacing[k - 5] = cli_double(flag, val, 0.0, 1000.0, 1); break;
      case 8: o->labels_dir = cli_nonempty(flag, val, "expected a path"); break;
      case 9: o->split_path = cli_nonempty(flag, val, "expected a path"); break;
      case 10: o->num_workers = (int)cli_int(flag, val, 1, MAX_WORKERS); break;
      case 11: o->image_suffix = val; break;
      case 12: o->label_suffix = val; break;
      default: o->pad_to = (int)cli_int(flag, val, 1, 32767); break;
    }
  }
  if (!o->data_dir) cli_required("--data_dir");
  if (!o->output_dir) cli_required("--output_dir");
  if (!(o->prep.a_min < o->prep.a_max)) {
    char v[64];
    snprintf(v, sizeof v, "%g", o->prep.a_max);
    cli_bad_value("--a_max", v, "must be greater than --a_min");
  }
  o->prep.pad_xy = o->pad_to;
}

/* ---- cases ----------------------------------------------------------------------------------- */

typedef struct entry {
  char *file; /* file name inside its folder */
  char *name; /* case name */
} entry;

typedef struct job {
  const char *name;
  char *image, *label; /* full paths */
  char *dir;           /* output folder for the case (output_dir or output_dir/split) */
  int status;          /* 0 pending, 1 done, 2 skipped, 3 failed */
  long slices;
  char reason[600];
} job;

static char *xstrdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = (char *)malloc(n);
  if (!d) {
    fprintf(stderr, PROG ": out of memory\n");
    exit(1);
  }
  memcpy(d, s, n);
  return d;
}

static char *path_join(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *p = (char *)malloc(n);
  if (!p) {
    fprintf(stderr, PROG ": out of memory\n");
    exit(1);
  }
  snprintf(p, n, "%s/%s", a, b);
  return p;
}

/* Case name: strip .nii.gz / .nii, then the first suffix of the comma list that matches (and
   leaves a non-empty name). */
static char *case_name(const char *file, const char *suffixes) {
  char *n = xstrdup(file);
  const char *p = suffixes;
  size_t len = strlen(n);
  if (cli_ends_with(n, ".nii.gz")) n[len - 7] = 0;
  else if (cli_ends_with(n, ".nii")) n[len - 4] = 0;
  len = strlen(n);
  while (p && *p) {
    const char *e = strchr(p, ',');
    size_t m = e ? (size_t)(e - p) : strlen(p);
    if (m > 0 && m < len && strncmp(n + len - m, p, m) == 0) {
      n[len - m] = 0;
      break;
    }
    p = e ? e + 1 : NULL;
  }
  return n;
}

static int cmp_entry(const void *a, const void *b) {
  return strcmp(((const entry *)a)->file, ((const entry *)b)->file);
}

/* 1 if the file name without its extension ends with one of the comma-separated suffixes */
static int has_suffix(const char *file, const char *suffixes) {
  char *bare = case_name(file, "");
  const char *p = suffixes;
  size_t len = strlen(bare);
  int hit = 0;
  while (p && *p && !hit) {
    const char *e = strchr(p, ',');
    size_t m = e ? (size_t)(e - p) : strlen(p);
    if (m > 0 && m < len && strncmp(bare + len - m, p, m) == 0) hit = 1;
    p = e ? e + 1 : NULL;
  }
  free(bare);
  return hit;
}

/* The sorted .nii / .nii.gz files of dir, less those whose name ends with a suffix of exclude
   (the other kind's suffixes, so images and labels may share a folder); exits 1 if the folder
   cannot be read. */
static entry *scan_dir(const char *dir, const char *suffixes, const char *exclude, int *count) {
  DIR *d = opendir(dir);
  struct dirent *de;
  entry *list = NULL;
  int n = 0, cap = 0;
  if (!d) {
    fprintf(stderr, PROG ": %s: cannot open folder: %s\n", dir, strerror(errno));
    exit(1);
  }
  while ((de = readdir(d)) != NULL) {
    const char *f = de->d_name;
    char *full;
    struct stat sb;
    if (f[0] == '.' || !(cli_ends_with(f, ".nii") || cli_ends_with(f, ".nii.gz"))) continue;
    if (exclude && has_suffix(f, exclude)) continue;
    full = path_join(dir, f);
    if (stat(full, &sb) != 0 || !S_ISREG(sb.st_mode)) {
      free(full);
      continue;
    }
    free(full);
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      list = (entry *)realloc(list, (size_t)cap * sizeof *list);
      if (!list) {
        fprintf(stderr, PROG ": out of memory\n");
        exit(1);
      }
    }
    list[n].file = xstrdup(f);
    list[n].name = case_name(f, suffixes);
    ++n;
  }
  closedir(d);
  if (n > 1) qsort(list, (size_t)n, sizeof *list, cmp_entry);
  *count = n;
  return list;
}

/* ---- the workers ----------------------------------------------------------------------------- */

typedef struct shared {
  const options *o;
  job *jobs;
  int n_jobs, next, done, failed, skipped, processed;
  long slices;
  double t0;
  int tty;
  pthread_mutex_t mu;
} shared;

static void settings_text(const options *o, char *buf, size_t cap) {
  snprintf(buf, cap,
           "ioupos-prep 1\nspatial_dims %d\na_min %.17g\na_max %.17g\nspacing %.17g %.17g %.17g\n"
           "pad_to %d\nlabels %s\n",
           o->spatial_dims, o->prep.a_min, o->prep.a_max, o->prep.spacing[0], o->prep.spacing[1],
           o->prep.spacing[2], o->pad_to, o->labels_dir ? "yes" : "no");
}

static int set_fail(job *j, const char *fmt, const char *detail) {
  snprintf(j->reason, sizeof j->reason, fmt, detail);
  return -1;
}

static int write_slices(job *j, const ioupos_volume *v, const char *dir, int is_label, int width) {
  uint8_t *px = (uint8_t *)malloc((size_t)v->dim[0] * v->dim[1]);
  char *path;
  size_t plen = strlen(dir) + strlen(j->name) + 32;
  int k;
  if (!px) return set_fail(j, "%s", "out of memory");
  path = (char *)malloc(plen);
  if (!path) {
    free(px);
    return set_fail(j, "%s", "out of memory");
  }
  for (k = 0; k < v->dim[2]; ++k) {
    snprintf(path, plen, "%s/%s_%0*d.png", dir, j->name, width, k);
    ioupos_volume_slice_u8(v, k, is_label, px);
    /* x rows, y columns */
    if (ioupos_png_write(path, v->dim[1], v->dim[0], 1, px) != IOUPOS_OK) {
      free(px);
      free(path);
      return set_fail(j, "%s", ioupos_failure_reason());
    }
  }
  free(px);
  free(path);
  return 0;
}

/* A failed case leaves none of its files: slices 0..nz-1 (2D) or the volume (3D), with labels.
   Files that were never written are simply absent. */
static void remove_case_files(const job *j, const char *labels_dir, int dims, int width, int nz) {
  size_t plen = strlen(j->dir) + strlen(labels_dir) + strlen(j->name) + 40;
  char *path = (char *)malloc(plen);
  int k, l;
  if (!path) return;
  /* 3..9 as run_case picks it; bounded here too, or GCC at -O1 (make test-asan) warns that
     "%0*d" may print INT_MAX digits */
  width = width < 1 ? 1 : width > 9 ? 9 : width;
  for (l = 0; l < 2; ++l) {
    const char *d = l ? labels_dir : j->dir;
    if (dims == 3) {
      snprintf(path, plen, "%s/%s.nii.gz", d, j->name);
      remove(path);
      continue;
    }
    for (k = 0; k < nz; ++k) {
      snprintf(path, plen, "%s/%s_%0*d.png", d, j->name, width, k);
      remove(path);
    }
  }
  free(path);
}

static int run_case(shared *sh, job *j) {
  const options *o = sh->o;
  char settings[512], *done_dir, *marker, *labels_dir;
  ioupos_volume img, lab;
  int have_label = j->label != NULL, rc = -1, width = 3, k, writing = 0;
  void *old;
  size_t old_size;
  settings_text(o, settings, sizeof settings);
  done_dir = path_join(j->dir, ".done");
  marker = path_join(done_dir, j->name);
  labels_dir = path_join(j->dir, "labels");
  img.data = lab.data = NULL;
  if (ioupos_read_file(marker, &old, &old_size) == IOUPOS_OK) {
    int same = old_size >= strlen(settings) && memcmp(old, settings, strlen(settings)) == 0;
    free(old);
    if (same) {
      rc = 1;
    } else {
      snprintf(j->reason, sizeof j->reason,
               "%s was made with other settings; delete it (and the case's files) or use another "
               "--output_dir", marker);
    }
    goto out;
  }
  if (ioupos_nifti_read(j->image, &img) != IOUPOS_OK) {
    set_fail(j, "%s", ioupos_failure_reason());
    goto out;
  }
  if (have_label) {
    if (ioupos_nifti_read(j->label, &lab) != IOUPOS_OK) {
      set_fail(j, "%s", ioupos_failure_reason());
      goto out;
    }
    if (lab.dim[0] != img.dim[0] || lab.dim[1] != img.dim[1] || lab.dim[2] != img.dim[2]) {
      snprintf(j->reason, sizeof j->reason, "label %s is %dx%dx%d but image %s is %dx%dx%d", j->label,
               lab.dim[0], lab.dim[1], lab.dim[2], j->image, img.dim[0], img.dim[1], img.dim[2]);
      goto out;
    }
  }
  if (ioupos_preprocess(&img, have_label ? &lab : NULL, &o->prep) != IOUPOS_OK) {
    char why[520];
    snprintf(why, sizeof why, "%.511s", ioupos_failure_reason());
    snprintf(j->reason, sizeof j->reason, "%s: %s", j->image, why);
    goto out;
  }
  writing = 1; /* from here on a failure removes what the case wrote */
  if (o->spatial_dims == 2) {
    for (k = 1000; k <= img.dim[2] - 1 && width < 9; k *= 10) ++width;
    if (write_slices(j, &img, j->dir, 0, width) != 0) goto out;
    if (have_label && write_slices(j, &lab, labels_dir, 1, width) != 0) goto out;
    j->slices = img.dim[2];
  } else {
    char *name = (char *)malloc(strlen(j->name) + 8), *p1, *p2;
    if (!name) {
      set_fail(j, "%s", "out of memory");
      goto out;
    }
    snprintf(name, strlen(j->name) + 8, "%s.nii.gz", j->name);
    p1 = path_join(j->dir, name);
    p2 = path_join(labels_dir, name);
    free(name);
    if (ioupos_nifti_write(p1, &img, IOUPOS_NIFTI_FLOAT32) != IOUPOS_OK ||
        (have_label && ioupos_nifti_write(p2, &lab, IOUPOS_NIFTI_UINT8) != IOUPOS_OK)) {
      set_fail(j, "%s", ioupos_failure_reason());
      free(p1);
      free(p2);
      goto out;
    }
    free(p1);
    free(p2);
    j->slices = img.dim[2];
  }
  { /* the marker, last */
    char text[700];
    int n = snprintf(text, sizeof text, "%sslices %ld\nshape %d %d %d\n", settings, j->slices, img.dim[0],
                     img.dim[1], img.dim[2]);
    if (ioupos_write_file_atomic(marker, text, (size_t)n) != IOUPOS_OK) {
      set_fail(j, "%s", ioupos_failure_reason());
      goto out;
    }
  }
  rc = 0;
out:
  if (rc < 0 && writing) remove_case_files(j, labels_dir, o->spatial_dims, width, img.dim[2]);
  ioupos_volume_free(&img);
  ioupos_volume_free(&lab);
  free(done_dir);
  free(marker);
  free(labels_dir);
  return rc;
}

static void progress(shared *sh, int final) {
  double el = cli_now_s() - sh->t0, eta = -1;
  int finished = sh->done + sh->failed + sh->skipped, rem = sh->n_jobs - finished;
  int worked = sh->processed + sh->failed;
  if (worked > 0 && rem > 0) eta = el / worked * rem;
  fprintf(stderr, "%s" PROG ": cases %d/%d (%d skipped, %d failed), %ld slices written, %.1f s", sh->tty ? "\r" : "",
          finished, sh->n_jobs, sh->skipped, sh->failed, sh->slices, el);
  if (eta >= 0) fprintf(stderr, ", ETA %.0f s", eta);
  else if (rem > 0) fprintf(stderr, ", ETA ?");
  fprintf(stderr, sh->tty ? (final ? "\n" : "   ") : "\n");
  fflush(stderr);
}

static void *worker(void *arg) {
  shared *sh = (shared *)arg;
  for (;;) {
    job *j;
    int rc;
    pthread_mutex_lock(&sh->mu);
    if (sh->next >= sh->n_jobs) {
      pthread_mutex_unlock(&sh->mu);
      return NULL;
    }
    j = &sh->jobs[sh->next++];
    pthread_mutex_unlock(&sh->mu);
    rc = run_case(sh, j);
    pthread_mutex_lock(&sh->mu);
    if (rc == 0) {
      j->status = 1;
      ++sh->done;
      ++sh->processed;
      sh->slices += j->slices * (j->label ? 2 : 1) * (sh->o->spatial_dims == 2);
    } else if (rc == 1) {
      j->status = 2;
      ++sh->skipped;
    } else {
      j->status = 3;
      ++sh->failed;
    }
    progress(sh, 0);
    pthread_mutex_unlock(&sh->mu);
  }
}

int main(int argc, char **argv) {
  options o;
  entry *imgs, *labs = NULL;
  int n_img, n_lab = 0, i, k, bad = 0, n_jobs = 0, nthreads;
  ioupos_split split = {0, NULL};
  job *jobs;
  shared sh;
  pthread_t th[MAX_WORKERS];
  ioupos_dir_lock lock;
  int n_stale = 0;
  memset(&o, 0, sizeof o);
  o.spatial_dims = 2;
  o.num_workers = 1;
  o.pad_to = 96;
  o.image_suffix = "_0000,_ct";
  o.label_suffix = "_label,_seg";
  ioupos_prep_opts_default(&o.prep);
  parse_args(argc, argv, &o);

  imgs = scan_dir(o.data_dir, o.image_suffix, o.labels_dir ? o.label_suffix : NULL, &n_img);
  if (n_img == 0) {
    fprintf(stderr, PROG ": %s: no .nii or .nii.gz files\n", o.data_dir);
    return 1;
  }
  for (i = 1; i < n_img; ++i)
    for (k = 0; k < i; ++k)
      if (!strcmp(imgs[i].name, imgs[k].name)) {
        fprintf(stderr, PROG ": %s/%s and %s/%s both give case name '%s'\n", o.data_dir, imgs[k].file,
                o.data_dir, imgs[i].file, imgs[i].name);
        bad = 1;
      }
  if (o.labels_dir) {
    labs = scan_dir(o.labels_dir, o.label_suffix, o.image_suffix, &n_lab);
    for (i = 1; i < n_lab; ++i)
      for (k = 0; k < i; ++k)
        if (!strcmp(labs[i].name, labs[k].name)) {
          fprintf(stderr, PROG ": %s/%s and %s/%s both give case name '%s'\n", o.labels_dir, labs[k].file,
                  o.labels_dir, labs[i].file, labs[i].name);
          bad = 1;
        }
  }
  if (o.split_path && ioupos_split_read(o.split_path, &split) != IOUPOS_OK) {
    fprintf(stderr, PROG ": %s\n", ioupos_failure_reason());
    return 1;
  }
  jobs = (job *)calloc((size_t)n_img, sizeof *jobs);
  if (!jobs) {
    fprintf(stderr, PROG ": out of memory\n");
    return 1;
  }
  for (i = 0; i < n_img; ++i) {
    job *j = &jobs[n_jobs];
    int set = -1;
    if (o.split_path) {
      set = ioupos_split_find(&split, imgs[i].name);
      if (set < 0) {
        fprintf(stderr, PROG ": note: case '%s' (%s/%s) is in no split of %s; skipped\n", imgs[i].name,
                o.data_dir, imgs[i].file, o.split_path);
        continue;
      }
    }
    j->name = imgs[i].name;
    j->image = path_join(o.data_dir, imgs[i].file);
    j->dir = set >= 0 ? path_join(o.output_dir, split.sets[set].name) : xstrdup(o.output_dir);
    if (o.labels_dir) {
      for (k = 0; k < n_lab && strcmp(labs[k].name, imgs[i].name) != 0; ++k) {}
      if (k == n_lab) {
        fprintf(stderr, PROG ": image %s has no label in %s (expected a file named %s + one of "
                        "'%s' + .nii.gz or .nii)\n", j->image, o.labels_dir, imgs[i].name, o.label_suffix);
        bad = 1;
      } else {
        j->label = path_join(o.labels_dir, labs[k].file);
      }
    }
    ++n_jobs;
  }
  for (k = 0; k < n_lab; ++k) {
    for (i = 0; i < n_img && strcmp(labs[k].name, imgs[i].name) != 0; ++i) {}
    if (i == n_img) {
      fprintf(stderr, PROG ": label %s/%s (case '%s') has no image in %s\n", o.labels_dir, labs[k].file,
              labs[k].name, o.data_dir);
      bad = 1;
    }
  }
  if (o.split_path) {
    int s;
    for (s = 0; s < split.n_sets; ++s)
      for (k = 0; k < split.sets[s].n; ++k) {
        for (i = 0; i < n_img && strcmp(split.sets[s].cases[k], imgs[i].name) != 0; ++i) {}
        if (i == n_img) {
          fprintf(stderr, PROG ": %s: case '%s' of split '%s' has no image in %s\n", o.split_path,
                  split.sets[s].cases[k], split.sets[s].name, o.data_dir);
          bad = 1;
        }
      }
  }
  if (bad) return 1;
  if (n_jobs == 0) {
    fprintf(stderr, PROG ": no case to process\n");
    return 1;
  }
  /* one ioupos-prep at a time per output folder (the kernel drops the hold if we die) */
  if (ioupos_dir_hold(&lock, o.output_dir, &n_stale) != IOUPOS_OK) {
    fprintf(stderr, PROG ": --output_dir %s\n", ioupos_failure_reason());
    return 1;
  }
  for (i = 0; i < n_jobs; ++i) {
    char *d1 = path_join(jobs[i].dir, ".done"), *d2 = path_join(jobs[i].dir, "labels");
    /* a file where a folder should be (EEXIST) fails that case alone, later, by name */
    if ((cli_mkdir(d1, 1) != 0 && errno != EEXIST) ||
        (jobs[i].label && cli_mkdir(d2, 1) != 0 && errno != EEXIST)) {
      fprintf(stderr, PROG ": %s: cannot create folder: %s\n", jobs[i].dir, strerror(errno));
      ioupos_dir_release(&lock, 0);
      return 1;
    }
    /* temporary files of a killed earlier run (the top folder's went with the hold) */
    n_stale += ioupos_dir_clean_stale(jobs[i].dir) + ioupos_dir_clean_stale(d1) +
               ioupos_dir_clean_stale(d2);
    free(d1);
    free(d2);
  }
  if (n_stale > 0)
    fprintf(stderr, PROG ": removed %d stale temporary file%s of a killed earlier run\n", n_stale,
            n_stale > 1 ? "s" : "");

  memset(&sh, 0, sizeof sh);
  sh.o = &o;
  sh.jobs = jobs;
  sh.n_jobs = n_jobs;
  sh.t0 = cli_now_s();
  sh.tty = isatty(2);
  pthread_mutex_init(&sh.mu, NULL);
  nthreads = o.num_workers < n_jobs ? o.num_workers : n_jobs;
  for (i = 0; i < nthreads; ++i)
    if (pthread_create(&th[i], NULL, worker, &sh) != 0) {
      fprintf(stderr, PROG ": cannot start worker threads\n");
      return 1;
    }
  for (i = 0; i < nthreads; ++i) pthread_join(th[i], NULL);
  if (sh.tty) progress(&sh, 1);
  pthread_mutex_destroy(&sh.mu);

  printf("%d cases: %d processed, %d skipped (already done), %d failed; %ld %s written in %.1f s\n", n_jobs,
         sh.done, sh.skipped, sh.failed, o.spatial_dims == 2 ? sh.slices : (long)sh.done,
         o.spatial_dims == 2 ? "slices" : "volumes", cli_now_s() - sh.t0);
  for (i = 0; i < n_jobs; ++i)
    if (jobs[i].status == 3) printf("FAILED %s: %s\n", jobs[i].name, jobs[i].reason);
  if (sh.failed) fprintf(stderr, PROG ": %d of %d cases failed (listed on stdout)\n", sh.failed, n_jobs);
  ioupos_dir_release(&lock, 0);
  for (i = 0; i < n_jobs; ++i) {
    free(jobs[i].image);
    free(jobs[i].label);
    free(jobs[i].dir);
  }
  free(jobs);
  for (i = 0; i < n_img; ++i) free(imgs[i].file), free(imgs[i].name);
  for (i = 0; i < n_lab; ++i) free(labs[i].file), free(labs[i].name);
  free(imgs);
  free(labs);
  ioupos_split_free(&split);
  return sh.failed ? 1 : 0;
}
