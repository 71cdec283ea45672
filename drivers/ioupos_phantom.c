/* ioupos-phantom — write synthetic abdominal CT cases with FLARE22 organ labels.

   The demo and the tests need CT data on a fresh machine without a download. This command writes
   N cases of the phantom of ioupos.h section 8 (ioupos_phantom_make) as NIfTI volumes, laid out the
   way ioupos-prep reads them:

     DIR/images/phantom_000.nii.gz   int16 HU image
     DIR/labels/phantom_000.nii.gz   uint8 FLARE22 label map, same grid and affine
     DIR/phantom.json                the resolved flags and every case's seed
     DIR/split.json                  {"train": [...], "val": [...], "test": [...]} (--split)

   Case i is generated from its own seed, ioupos_rng_u64 of ioupos_rng_split(seed(S), i), so
   cases differ from each other, case i does not depend on --n_cases, and the same --seed gives
   the same bytes. Every file is written to a temporary name and renamed into place.

   Exit status: 0 on success, 1 when a case cannot be made or written (the reason names the
   file), 2 for a malformed command line, in which case nothing is created. Run with --help for
   the flags. */
#include "ioupos.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#define PROG "ioupos-phantom"
#include "cli.h"

#define MAX_CASES 100000
#define MAX_DIMENSION 4096

typedef struct options {
  const char *output_dir;
  long n_cases;
  uint64_t seed;
  int size[3];
  double spacing[3];
  double noise;
  int split_on;
  long split[3]; /* train, val, test counts */
  int no_labels;
} options;

static void usage(FILE *f) {
  fprintf(f,
          "usage: " PROG " --output_dir DIR [flags]\n"
          "Write synthetic abdominal CT cases (int16 HU) with FLARE22 organ labels as NIfTI:\n"
          "\n"
          "  DIR/images/phantom_000.nii.gz  image, Hounsfield units, RAS+ affine centred on the\n"
          "                                 volume (x to the patient's right, y anterior, z up)\n"
          "  DIR/labels/phantom_000.nii.gz  labels: 0 background, 1 liver, 2 right kidney,\n"
          "                                 3 spleen, 4 pancreas, 5 aorta, 6 IVC, 7 right adrenal,\n"
          "                                 8 left adrenal, 9 gallbladder, 10 oesophagus,\n"
          "                                 11 stomach, 12 duodenum, 13 left kidney\n"
          "  DIR/phantom.json               the resolved flags and each case's seed\n"
          "  DIR/split.json                 with --split: {\"train\": [...], \"val\": [...],\n"
          "                                 \"test\": [...]} of case names, in case order\n"
          "\n"
          "  --output_dir DIR   where to write (created if missing; its parent must exist);\n"
          "                     existing cases of the same names are replaced\n"
          "  --n_cases N        number of cases, 1..%d (default 5); names have at least three\n"
          "                     digits: phantom_000, phantom_001, ...\n"
          "  --seed S           random seed, unsigned 64-bit (default 0); case i uses the seed\n"
          "                     split from (S, i): same S, same bytes; case i is the same for\n"
          "                     any N > i\n"
          "  --size NXxNYxNZ    voxels along x, y, z, each 1..%d (default 192x160x64)\n"
          "  --spacing X,Y,Z    voxel size in mm, each in (0, 100] (default 2,2,2.5); the anatomy\n"
          "                     is an adult upper abdomen of fixed size, shrunk to fit a field\n"
          "                     of view under 384 x 320 x 160 mm\n"
          "  --noise SD         Gaussian noise in HU, 0..1000 (default 15); 0: noise-free\n"
          "  --split A,B,C      also write split.json: the first A cases train, the next B val,\n"
          "                     the last C test; A + B + C must equal --n_cases (default: none)\n"
          "  --no_labels        write images only (unlabelled pretraining data)\n"
          "  --help             show this text and exit\n"
          "\n"
          "Flags take their value as '--flag value' or '--flag=value'. Progress goes to stderr.\n"
          "Exit status: 0 success, 1 a case could not be made or written, 2 bad command line\n"
          "(nothing is written). Every file is written under a temporary name and renamed.\n",
          MAX_CASES, MAX_DIMENSION);
}

/* ---- flags (drivers/cli.h) ------------------------------------------------------------------ */

static void parse_args(int argc, char **argv, options *o) {
  static const char *const names[] = {"output_dir", "n_cases", "seed",  "size",
                                      "spacing",    "noise",   "split", "no_labels"};
  long long v[3];
  cli c;
  int k, a;
  cli_init(&c, argc, argv, names, CLI_COUNT(names), 1, usage); /* --no_labels: a switch */
  while ((k = cli_next_flag(&c)) >= 0) {
    const char *flag = c.flag, *val = c.value;
    switch (k) {
      case 0: o->output_dir = cli_nonempty(flag, val, "expected a directory name"); break;
      case 1: o->n_cases = (long)cli_int(flag, val, 1, MAX_CASES); break;
      case 2: o->seed = cli_u64(flag, val); break;
      case 3:
        cli_int_list(flag, val, 'x', 3, 1, MAX_DIMENSION,
                     "expected NXxNYxNZ with positive integers, e.g. 192x160x64", v);
        for (a = 0; a < 3; ++a) o->size[a] = (int)v[a];
        break;
      case 4:
        cli_double_list(flag, val, ',', 3, 0.0, 100.0, 1, "expected X,Y,Z in mm, e.g. 2,2,2.5",
                        o->spacing);
        break;
      case 5: o->noise = cli_double(flag, val, 0.0, 1000.0, 0); break;
      case 6:
        cli_int_list(flag, val, ',', 3, 0, MAX_CASES, "expected three counts A,B,C, e.g. 3,1,1", v);
        for (a = 0; a < 3; ++a) o->split[a] = (long)v[a];
        o->split_on = 1;
        break;
      default: o->no_labels = 1; break;
    }
  }
  if (!o->output_dir) cli_required("--output_dir");
  if (o->split_on && o->split[0] + o->split[1] + o->split[2] != o->n_cases) {
    fprintf(stderr, PROG ": --split: %ld,%ld,%ld adds up to %ld, not --n_cases %ld (see --help)\n",
            o->split[0], o->split[1], o->split[2], o->split[0] + o->split[1] + o->split[2],
            o->n_cases);
    exit(2);
  }
}

/* ---- output ------------------------------------------------------------------------------- */

static int make_dir(const char *path) {
  if (cli_mkdir(path, 0) == 0) return 1;
  fprintf(stderr, PROG ": %s: cannot create directory: %s\n", path,
          errno == EEXIST ? "a file of that name exists" : strerror(errno));
  return 0;
}

typedef struct text {
  char *s;
  size_t len, cap;
} text;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void put(text *t, const char *fmt, ...) {
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (t->len + (size_t)n + 1 > t->cap) {
    size_t cap = t->cap ? t->cap : 1024;
    char *s;
    while (cap < t->len + (size_t)n + 1) cap *= 2;
    s = (char *)realloc(t->s, cap);
    if (!s) {
      fprintf(stderr, PROG ": out of memory\n");
      exit(1);
    }
    t->s = s;
    t->cap = cap;
  }
  va_start(ap, fmt);
  vsnprintf(t->s + t->len, t->cap - t->len, fmt, ap);
  va_end(ap);
  t->len += (size_t)n;
}

static int write_text(const char *dir, const char *name, const text *t) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  if (ioupos_write_file_atomic(path, t->s, t->len) != IOUPOS_OK) {
    fprintf(stderr, PROG ": %s\n", ioupos_failure_reason());
    return 0;
  }
  return 1;
}

int main(int argc, char **argv) {
  options o;
  ioupos_phantom_opts po;
  ioupos_rng root;
  char dir_img[4096], dir_lab[4096], path[4096], name[64];
  uint64_t *seeds;
  text manifest = {NULL, 0, 0}, split = {NULL, 0, 0};
  double t0 = cli_now_s();
  long i;
  int digits = 3, a;

  memset(&o, 0, sizeof o);
  o.n_cases = 5;
  o.size[0] = 192, o.size[1] = 160, o.size[2] = 64;
  o.spacing[0] = 2.0, o.spacing[1] = 2.0, o.spacing[2] = 2.5;
  o.noise = 15.0;
  parse_args(argc, argv, &o);

  if (strlen(o.output_dir) > 4000) {
    fprintf(stderr, PROG ": --output_dir: path too long\n");
    return 2;
  }
  {
    long lim = 1000;
    while (o.n_cases - 1 >= lim) lim *= 10, ++digits;
  }
  snprintf(dir_img, sizeof dir_img, "%s/images", o.output_dir);
  snprintf(dir_lab, sizeof dir_lab, "%s/labels", o.output_dir);
  if (!make_dir(o.output_dir) || !make_dir(dir_img) || (!o.no_labels && !make_dir(dir_lab)))
    return 1;

  seeds = (uint64_t *)calloc((size_t)o.n_cases, sizeof *seeds);
  if (!seeds) {
    fprintf(stderr, PROG ": out of memory\n");
    return 1;
  }
  ioupos_rng_seed(&root, o.seed);
  for (i = 0; i < o.n_cases; ++i) {
    ioupos_rng r = ioupos_rng_split(&root, (uint64_t)i);
    seeds[i] = ioupos_rng_u64(&r);
  }

  ioupos_phantom_defaults(&po);
  po.nx = o.size[0], po.ny = o.size[1], po.nz = o.size[2];
  for (a = 0; a < 3; ++a) po.spacing[a] = o.spacing[a];
  po.noise_sd = o.noise;

  for (i = 0; i < o.n_cases; ++i) {
    ioupos_volume img, lab;
    double tc = cli_now_s();
    po.seed = seeds[i];
    if (snprintf(name, sizeof name, "phantom_%0*ld", digits, i) >= (int)sizeof name) return 1;
    if (ioupos_phantom_make(&po, &img, &lab) != IOUPOS_OK) {
      fprintf(stderr, PROG ": %s: %s\n", name, ioupos_failure_reason());
      return 1;
    }
    if (snprintf(path, sizeof path, "%s/%s.nii.gz", dir_img, name) >= (int)sizeof path) return 1;
    if (ioupos_nifti_write(path, &img, IOUPOS_NIFTI_INT16) != IOUPOS_OK) {
      fprintf(stderr, PROG ": %s\n", ioupos_failure_reason());
      return 1;
    }
    if (!o.no_labels) {
      if (snprintf(path, sizeof path, "%s/%s.nii.gz", dir_lab, name) >= (int)sizeof path)
        return 1;
      if (ioupos_nifti_write(path, &lab, IOUPOS_NIFTI_UINT8) != IOUPOS_OK) {
        fprintf(stderr, PROG ": %s\n", ioupos_failure_reason());
        return 1;
      }
    }
    ioupos_volume_free(&img);
    ioupos_volume_free(&lab);
    fprintf(stderr, PROG ": case %ld/%ld %s (seed %llu) %.2f s\n", i + 1, o.n_cases, name,
            (unsigned long long)seeds[i], cli_now_s() - tc);
  }

  put(&manifest, "{\n  \"generator\": \"ioupos-phantom %s\",\n", IOUPOS_VERSION);
  put(&manifest, "  \"seed\": %llu,\n  \"n_cases\": %ld,\n", (unsigned long long)o.seed,
      o.n_cases);
  put(&manifest, "  \"size\": [%d, %d, %d],\n", o.size[0], o.size[1], o.size[2]);
  put(&manifest, "  \"spacing\": [%.17g, %.17g, %.17g],\n", o.spacing[0], o.spacing[1],
      o.spacing[2]);
  put(&manifest, "  \"noise_sd\": %.17g,\n  \"labels\": %s,\n", o.noise,
      o.no_labels ? "false" : "true");
  put(&manifest, "  \"label_names\": {");
  for (a = 1; a < IOUPOS_LABEL_COUNT; ++a)
    put(&manifest, "%s\"%d\": \"%s\"", a > 1 ? ", " : "", a, ioupos_label_name(a));
  put(&manifest, "},\n  \"cases\": [\n");
  for (i = 0; i < o.n_cases; ++i)
    put(&manifest, "    {\"name\": \"phantom_%0*ld\", \"seed\": %llu}%s\n", digits, i,
        (unsigned long long)seeds[i], i + 1 < o.n_cases ? "," : "");
  put(&manifest, "  ]\n}\n");
  if (!write_text(o.output_dir, "phantom.json", &manifest)) return 1;

  if (o.split_on) {
    static const char *const parts[3] = {"train", "val", "test"};
    long next = 0, n;
    put(&split, "{");
    for (a = 0; a < 3; ++a) {
      put(&split, "%s\"%s\": [", a ? ", " : "", parts[a]);
      for (n = 0; n < o.split[a]; ++n, ++next)
        put(&split, "%s\"phantom_%0*ld\"", n ? ", " : "", digits, next);
      put(&split, "]");
    }
    put(&split, "}\n");
    if (!write_text(o.output_dir, "split.json", &split)) return 1;
  }

  printf("wrote %ld case%s (%dx%dx%d at %g,%g,%g mm%s) to %s in %.2f s\n", o.n_cases,
         o.n_cases == 1 ? "" : "s", o.size[0], o.size[1], o.size[2], o.spacing[0],
         o.spacing[1], o.spacing[2], o.no_labels ? ", no labels" : ", with labels",
         o.output_dir, cli_now_s() - t0);
  free(manifest.s);
  free(split.s);
  free(seeds);
  return 0;
}
