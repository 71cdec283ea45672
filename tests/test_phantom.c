/* tests/test_phantom.c — the synthetic CT phantom (ioupos.h section 8): every FLARE22 organ present
   with a plausible volume, organs on the correct sides in RAS+ world coordinates, plausible HU
   per tissue, labels inside the body, bit-identical volumes for a seed and different ones for
   another, argument checks, and a NIfTI write / read round trip. */
#include "ioupos.h"
#include "tests/test_util.h"

#include <math.h>
#include <string.h>
#include <time.h>
#include <unistd.h>


typedef struct stats {
  long count[IOUPOS_LABEL_COUNT];
  double c[IOUPOS_LABEL_COUNT][3]; /* centroid, world mm (RAS+) */
  double spine[3];                 /* centroid of bone voxels within 35 mm of the midline */
  long n_spine;
} stats;

static double world(const ioupos_volume *v, int axis, double index) {
  return v->affine[axis][axis] * index + v->affine[axis][3];
}

static void measure(const ioupos_volume *img, const ioupos_volume *lab, stats *s) {
  int nx = lab->dim[0], ny = lab->dim[1], nz = lab->dim[2], i, j, k, l, a;
  memset(s, 0, sizeof *s);
  for (k = 0; k < nz; ++k)
    for (j = 0; j < ny; ++j)
      for (i = 0; i < nx; ++i) {
        size_t v = ((size_t)k * ny + j) * nx + i;
        double w[3];
        w[0] = world(lab, 0, i), w[1] = world(lab, 1, j), w[2] = world(lab, 2, k);
        l = (int)lab->data[v];
        if (l >= 0 && l < IOUPOS_LABEL_COUNT) {
          ++s->count[l];
          for (a = 0; a < 3; ++a) s->c[l][a] += w[a];
        }
        if (l == 0 && img->data[v] > 300.0f && fabs(w[0]) < 35.0) {
          ++s->n_spine;
          for (a = 0; a < 3; ++a) s->spine[a] += w[a];
        }
      }
  for (l = 0; l < IOUPOS_LABEL_COUNT; ++l)
    for (a = 0; a < 3; ++a) s->c[l][a] /= s->count[l] > 0 ? (double)s->count[l] : 1.0;
  for (a = 0; a < 3; ++a) s->spine[a] /= s->n_spine > 0 ? (double)s->n_spine : 1.0;
}

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return x < y ? -1 : x > y;
}

/* median image value over voxels with label l (l < 0: voxels outside the body box rows) */
static double median_hu(const ioupos_volume *img, const ioupos_volume *lab, int l) {
  size_t n = (size_t)lab->dim[0] * lab->dim[1] * lab->dim[2], v, m = 0;
  float *buf = (float *)malloc(n * sizeof(float));
  double med;
  if (!buf) return NAN;
  for (v = 0; v < n; ++v)
    if ((int)lab->data[v] == l) buf[m++] = img->data[v];
  if (m == 0) {
    free(buf);
    return NAN;
  }
  qsort(buf, m, sizeof(float), cmp_float);
  med = buf[m / 2];
  free(buf);
  return med;
}

/* expected organ volumes (ml) for the default field of view: generous bands around what the
   phantom makes over many seeds, all within the range of real adults */
static const double vol_lo[IOUPOS_LABEL_COUNT] = {0, 600, 60, 45, 20, 30, 30, 1.5, 1.5, 10, 5, 120, 25, 60};
static const double vol_hi[IOUPOS_LABEL_COUNT] = {0, 2200, 230, 280, 110, 110, 130, 10, 10, 80, 30, 550, 130, 230};

static void check_case(uint64_t seed) {
  ioupos_phantom_opts o;
  ioupos_volume img, lab, clean, clean_lab;
  stats s;
  double vml, air, med;
  int l, i, j, k, nx, ny, nz, st;
  long outside = 0, bad_val = 0, body_rows_bad = 0, bone = 0;
  ioupos_phantom_defaults(&o);
  o.seed = seed;
  st = ioupos_phantom_make(&o, &img, &lab);
  CHECK(st == IOUPOS_OK, "seed %llu: %s", (unsigned long long)seed, ioupos_failure_reason());
  if (st != IOUPOS_OK) return;
  o.noise_sd = 0.0;
  st = ioupos_phantom_make(&o, &clean, &clean_lab);
  CHECK(st == IOUPOS_OK, "seed %llu noise-free: %s", (unsigned long long)seed,
        ioupos_failure_reason());
  if (st != IOUPOS_OK) return;
  nx = lab.dim[0], ny = lab.dim[1], nz = lab.dim[2];
  CHECK(nx == 192 && ny == 160 && nz == 64 && img.dim[0] == 192 && img.dim[2] == 64,
        "dims %dx%dx%d", nx, ny, nz);
  CHECK(memcmp(lab.data, clean_lab.data, (size_t)nx * ny * nz * sizeof(float)) == 0,
        "seed %llu: the noise changes the labels", (unsigned long long)seed);

  /* values: integer HU in the int16 CT range, integer labels 0..13 */
  {
    size_t v, n = (size_t)nx * ny * nz;
    for (v = 0; v < n; ++v) {
      float h = img.data[v], q = lab.data[v];
      if (h != floorf(h) || h < -1024.0f || h > 3071.0f || q != floorf(q) || q < 0.0f || q > 13.0f)
        ++bad_val;
    }
  }
  CHECK(bad_val == 0, "seed %llu: %ld voxels with a non-integer or out-of-range value",
        (unsigned long long)seed, bad_val);

  measure(&img, &lab, &s);
  vml = o.spacing[0] * o.spacing[1] * o.spacing[2] / 1000.0;
  for (l = 1; l < IOUPOS_LABEL_COUNT; ++l) {
    double ml = s.count[l] * vml;
    CHECK(ml >= vol_lo[l] && ml <= vol_hi[l], "seed %llu: %s volume %.1f ml outside [%g, %g]",
          (unsigned long long)seed, ioupos_label_name(l), ml, vol_lo[l], vol_hi[l]);
  }

  /* sides, RAS+: +x is the patient's right, +y anterior, +z superior */
#define X(l) s.c[l][0]
#define Y(l) s.c[l][1]
#define Z(l) s.c[l][2]
  CHECK(s.n_spine > 1000, "seed %llu: %ld bone voxels near the midline", (unsigned long long)seed,
        s.n_spine);
  CHECK(fabs(s.spine[0]) < 5.0 && s.spine[1] < -20.0, "seed %llu: spine centroid (%.1f, %.1f)",
        (unsigned long long)seed, s.spine[0], s.spine[1]);
  CHECK(X(IOUPOS_LABEL_LIVER) > s.spine[0] + 30.0, "seed %llu: liver x %.1f, spine x %.1f",
        (unsigned long long)seed, X(IOUPOS_LABEL_LIVER), s.spine[0]);
  CHECK(X(IOUPOS_LABEL_SPLEEN) < s.spine[0] - 50.0, "seed %llu: spleen x %.1f",
        (unsigned long long)seed, X(IOUPOS_LABEL_SPLEEN));
  CHECK(X(IOUPOS_LABEL_KIDNEY_R) > s.spine[0] + 40.0 && X(IOUPOS_LABEL_KIDNEY_L) < s.spine[0] - 40.0,
        "seed %llu: right kidney x %.1f, left kidney x %.1f", (unsigned long long)seed,
        X(IOUPOS_LABEL_KIDNEY_R), X(IOUPOS_LABEL_KIDNEY_L));
  CHECK(X(IOUPOS_LABEL_ADRENAL_R) > s.spine[0] + 15.0 && X(IOUPOS_LABEL_ADRENAL_L) < s.spine[0] - 15.0,
        "seed %llu: right adrenal x %.1f, left adrenal x %.1f", (unsigned long long)seed,
        X(IOUPOS_LABEL_ADRENAL_R), X(IOUPOS_LABEL_ADRENAL_L));
  CHECK(X(IOUPOS_LABEL_AORTA) < s.spine[0] && Y(IOUPOS_LABEL_AORTA) > s.spine[1] + 15.0,
        "seed %llu: aorta (%.1f, %.1f) not left-anterior of the spine (%.1f, %.1f)",
        (unsigned long long)seed, X(IOUPOS_LABEL_AORTA), Y(IOUPOS_LABEL_AORTA), s.spine[0],
        s.spine[1]);
  CHECK(X(IOUPOS_LABEL_IVC) > X(IOUPOS_LABEL_AORTA) + 15.0 && X(IOUPOS_LABEL_IVC) > s.spine[0],
        "seed %llu: IVC x %.1f, aorta x %.1f", (unsigned long long)seed, X(IOUPOS_LABEL_IVC),
        X(IOUPOS_LABEL_AORTA));
  CHECK(X(IOUPOS_LABEL_GALLBLADDER) > s.spine[0] + 20.0 && Y(IOUPOS_LABEL_GALLBLADDER) > Y(IOUPOS_LABEL_KIDNEY_R),
        "seed %llu: gallbladder (%.1f, %.1f)", (unsigned long long)seed,
        X(IOUPOS_LABEL_GALLBLADDER), Y(IOUPOS_LABEL_GALLBLADDER));
  CHECK(X(IOUPOS_LABEL_STOMACH) < s.spine[0] - 15.0 && Y(IOUPOS_LABEL_STOMACH) > Y(IOUPOS_LABEL_SPLEEN),
        "seed %llu: stomach (%.1f, %.1f) not left and in front of the spleen",
        (unsigned long long)seed, X(IOUPOS_LABEL_STOMACH), Y(IOUPOS_LABEL_STOMACH));
  CHECK(X(IOUPOS_LABEL_DUODENUM) > X(IOUPOS_LABEL_PANCREAS),
        "seed %llu: duodenum x %.1f not right of the pancreas x %.1f", (unsigned long long)seed,
        X(IOUPOS_LABEL_DUODENUM), X(IOUPOS_LABEL_PANCREAS));
  CHECK(Y(IOUPOS_LABEL_PANCREAS) > Y(IOUPOS_LABEL_AORTA),
        "seed %llu: pancreas y %.1f not anterior of the aorta y %.1f", (unsigned long long)seed,
        Y(IOUPOS_LABEL_PANCREAS), Y(IOUPOS_LABEL_AORTA));
  CHECK(Y(IOUPOS_LABEL_KIDNEY_R) < Y(IOUPOS_LABEL_LIVER) && Y(IOUPOS_LABEL_KIDNEY_L) < Y(IOUPOS_LABEL_STOMACH),
        "seed %llu: kidneys not posterior (y %.1f, %.1f)", (unsigned long long)seed,
        Y(IOUPOS_LABEL_KIDNEY_R), Y(IOUPOS_LABEL_KIDNEY_L));
  CHECK(Z(IOUPOS_LABEL_KIDNEY_L) > Z(IOUPOS_LABEL_KIDNEY_R),
        "seed %llu: left kidney z %.1f not above the right z %.1f", (unsigned long long)seed,
        Z(IOUPOS_LABEL_KIDNEY_L), Z(IOUPOS_LABEL_KIDNEY_R));
  CHECK(Z(IOUPOS_LABEL_LIVER) > Z(IOUPOS_LABEL_KIDNEY_R) && Z(IOUPOS_LABEL_ADRENAL_R) > Z(IOUPOS_LABEL_KIDNEY_R) &&
            Z(IOUPOS_LABEL_ADRENAL_L) > Z(IOUPOS_LABEL_KIDNEY_L),
        "seed %llu: liver / adrenals not above the kidneys", (unsigned long long)seed);
  CHECK(Z(IOUPOS_LABEL_OESOPHAGUS) > Z(IOUPOS_LABEL_STOMACH) && Z(IOUPOS_LABEL_DUODENUM) < Z(IOUPOS_LABEL_STOMACH),
        "seed %llu: oesophagus z %.1f, stomach z %.1f, duodenum z %.1f", (unsigned long long)seed,
        Z(IOUPOS_LABEL_OESOPHAGUS), Z(IOUPOS_LABEL_STOMACH), Z(IOUPOS_LABEL_DUODENUM));
#undef X
#undef Y
#undef Z

  /* HU per tissue */
  med = median_hu(&img, &lab, IOUPOS_LABEL_LIVER);
  CHECK(med >= 40.0 && med <= 80.0, "seed %llu: median liver HU %g", (unsigned long long)seed, med);
  med = median_hu(&img, &lab, IOUPOS_LABEL_SPLEEN);
  CHECK(med >= 35.0 && med <= 70.0, "seed %llu: median spleen HU %g", (unsigned long long)seed, med);
  med = median_hu(&img, &lab, IOUPOS_LABEL_KIDNEY_R);
  CHECK(med >= 15.0 && med <= 70.0, "seed %llu: median kidney HU %g", (unsigned long long)seed, med);
  med = median_hu(&img, &lab, IOUPOS_LABEL_AORTA);
  CHECK(med >= 120.0 && med <= 300.0, "seed %llu: median aorta HU %g", (unsigned long long)seed, med);
  med = median_hu(&img, &lab, IOUPOS_LABEL_GALLBLADDER);
  CHECK(med >= -10.0 && med <= 30.0, "seed %llu: median gallbladder HU %g", (unsigned long long)seed,
        med);
  {
    size_t v, n = (size_t)nx * ny * nz;
    long stomach_air = 0, fat = 0, body = 0;
    for (v = 0; v < n; ++v) {
      if ((int)lab.data[v] == IOUPOS_LABEL_STOMACH && clean.data[v] < -800.0f) ++stomach_air;
      if (clean.data[v] > -500.0f) ++body;
      if (clean.data[v] >= -130.0f && clean.data[v] <= -60.0f) ++fat;
      if ((int)lab.data[v] == 0 && clean.data[v] >= 300.0f) ++bone;
    }
    CHECK(stomach_air > 50, "seed %llu: %ld air voxels in the stomach", (unsigned long long)seed,
          stomach_air);
    CHECK(fat > body / 20, "seed %llu: %ld fat voxels of %ld in the body", (unsigned long long)seed,
          fat, body);
    CHECK(bone > 5000, "seed %llu: %ld bone voxels (>= 300 HU)", (unsigned long long)seed, bone);
  }
  /* air outside the body: the volume's four x-y corner columns are -1000 HU without noise,
     and their median is within a few HU of it with noise */
  {
    long n = 0, exact = 0;
    size_t m = 0;
    float *buf = (float *)malloc((size_t)nz * 6 * 6 * 4 * sizeof(float));
    for (k = 0; k < nz; ++k)
      for (j = 0; j < 6; ++j)
        for (i = 0; i < 6; ++i) {
          int ci[2], cj[2], a, b;
          ci[0] = i, ci[1] = nx - 1 - i, cj[0] = j, cj[1] = ny - 1 - j;
          for (a = 0; a < 2; ++a)
            for (b = 0; b < 2; ++b) {
              size_t v = ((size_t)k * ny + cj[b]) * nx + ci[a];
              ++n;
              exact += clean.data[v] == -1000.0f;
              if (buf) buf[m++] = img.data[v];
            }
        }
    CHECK(exact == n, "seed %llu: %ld of %ld noise-free corner voxels are not -1000 HU",
          (unsigned long long)seed, n - exact, n);
    if (buf) {
      qsort(buf, m, sizeof(float), cmp_float);
      air = buf[m / 2];
      CHECK(air >= -1005.0 && air <= -995.0, "seed %llu: median corner HU %g",
            (unsigned long long)seed, air);
      free(buf);
    }
  }

  /* labels inside the body: every labelled voxel lies strictly between the first and last body
     voxel (noise-free HU > -500) of its x row and of its y column */
  for (k = 0; k < nz; ++k)
    for (j = 0; j < ny; ++j)
      for (i = 0; i < nx; ++i) {
        size_t v = ((size_t)k * ny + j) * nx + i;
        int lo_x = 0, hi_x = 0, lo_y = 0, hi_y = 0, t;
        if (lab.data[v] == 0.0f) continue;
        for (t = 0; t < i && !lo_x; ++t) lo_x = clean.data[((size_t)k * ny + j) * nx + t] > -500.0f;
        for (t = nx - 1; t > i && !hi_x; --t) hi_x = clean.data[((size_t)k * ny + j) * nx + t] > -500.0f;
        for (t = 0; t < j && !lo_y; ++t) lo_y = clean.data[((size_t)k * ny + t) * nx + i] > -500.0f;
        for (t = ny - 1; t > j && !hi_y; --t) hi_y = clean.data[((size_t)k * ny + t) * nx + i] > -500.0f;
        if (!(lo_x && hi_x && lo_y && hi_y)) ++body_rows_bad;
        if (clean.data[v] <= -990.0f) ++outside;
      }
  CHECK(body_rows_bad == 0, "seed %llu: %ld labelled voxels not inside the body outline",
        (unsigned long long)seed, body_rows_bad);
  CHECK(outside == 0, "seed %llu: %ld labelled voxels at air HU", (unsigned long long)seed, outside);

  ioupos_volume_free(&img);
  ioupos_volume_free(&lab);
  ioupos_volume_free(&clean);
  ioupos_volume_free(&clean_lab);
}

static int same_volume(const ioupos_volume *a, const ioupos_volume *b) {
  size_t n = (size_t)a->dim[0] * a->dim[1] * a->dim[2];
  return a->dim[0] == b->dim[0] && a->dim[1] == b->dim[1] && a->dim[2] == b->dim[2] &&
         memcmp(a->data, b->data, n * sizeof(float)) == 0 &&
         memcmp(a->affine, b->affine, sizeof a->affine) == 0;
}

static void check_reproducible(void) {
  ioupos_phantom_opts o;
  ioupos_volume a, al, b, bl, c, cl;
  ioupos_phantom_defaults(&o);
  o.seed = 12345;
  CHECK(ioupos_phantom_make(&o, &a, &al) == IOUPOS_OK, "%s", ioupos_failure_reason());
  CHECK(ioupos_phantom_make(&o, &b, &bl) == IOUPOS_OK, "%s", ioupos_failure_reason());
  o.seed = 12346;
  CHECK(ioupos_phantom_make(&o, &c, &cl) == IOUPOS_OK, "%s", ioupos_failure_reason());
  CHECK(same_volume(&a, &b) && same_volume(&al, &bl), "same seed gives different volumes");
  CHECK(!same_volume(&a, &c), "different seeds give the same image");
  CHECK(!same_volume(&al, &cl), "different seeds give the same labels");
  { /* the labels differ in more than a few voxels: shapes and positions move */
    size_t v, n = (size_t)al.dim[0] * al.dim[1] * al.dim[2], diff = 0;
    for (v = 0; v < n; ++v) diff += al.data[v] != cl.data[v];
    CHECK(diff > n / 100, "seeds 12345 and 12346 differ in only %zu label voxels of %zu", diff, n);
  }
  ioupos_volume_free(&a); ioupos_volume_free(&al);
  ioupos_volume_free(&b); ioupos_volume_free(&bl);
  ioupos_volume_free(&c); ioupos_volume_free(&cl);
}

static void check_geometry_and_args(void) {
  ioupos_phantom_opts o;
  ioupos_volume im, lb;
  int st, a;
  ioupos_phantom_defaults(&o);
  CHECK(o.seed == 0 && o.nx == 192 && o.ny == 160 && o.nz == 64 && o.spacing[0] == 2.0 &&
            o.spacing[1] == 2.0 && o.spacing[2] == 2.5 && o.noise_sd == 15.0,
        "defaults %dx%dx%d", o.nx, o.ny, o.nz);

  /* affine: diagonal RAS+ with the spacing, the volume's centre at world 0 */
  o.nx = 31, o.ny = 24, o.nz = 9, o.spacing[0] = 3.0, o.spacing[1] = 4.0, o.spacing[2] = 5.0;
  st = ioupos_phantom_make(&o, &im, &lb);
  CHECK(st == IOUPOS_OK, "%s", ioupos_failure_reason());
  if (st == IOUPOS_OK) {
    int ok = 1, r, c;
    for (r = 0; r < 4; ++r)
      for (c = 0; c < 4; ++c) {
        double want = r == c ? (r < 3 ? o.spacing[r] : 1.0) : 0.0;
        if (c == 3 && r < 3) want = -0.5 * ((r == 0 ? o.nx : r == 1 ? o.ny : o.nz) - 1) * o.spacing[r];
        ok &= im.affine[r][c] == want && lb.affine[r][c] == want;
      }
    CHECK(ok, "affine [%g %g %g %g; ...] is not the centred RAS+ diagonal", im.affine[0][0],
          im.affine[0][1], im.affine[0][2], im.affine[0][3]);
    for (a = 0; a < 3; ++a) CHECK(im.dim[a] == lb.dim[a], "dims differ on axis %d", a);
    ioupos_volume_free(&im);
    ioupos_volume_free(&lb);
  }

  /* a coarse grid over the same field of view still has every organ */
  ioupos_phantom_defaults(&o);
  o.nx = 96, o.ny = 80, o.nz = 32, o.spacing[0] = o.spacing[1] = 4.0, o.spacing[2] = 5.0;
  o.seed = 9;
  st = ioupos_phantom_make(&o, &im, &lb);
  CHECK(st == IOUPOS_OK, "%s", ioupos_failure_reason());
  if (st == IOUPOS_OK) {
    stats s;
    int l;
    measure(&im, &lb, &s);
    for (l = 1; l < IOUPOS_LABEL_COUNT; ++l)
      CHECK(s.count[l] > 0, "coarse grid: %s absent", ioupos_label_name(l));
    ioupos_volume_free(&im);
    ioupos_volume_free(&lb);
  }
  /* a small field of view shrinks the anatomy to fit: still every organ */
  o.nx = 64, o.ny = 64, o.nz = 24, o.spacing[0] = o.spacing[1] = 2.0, o.spacing[2] = 2.5;
  st = ioupos_phantom_make(&o, &im, &lb);
  CHECK(st == IOUPOS_OK, "%s", ioupos_failure_reason());
  if (st == IOUPOS_OK) {
    stats s;
    int l;
    measure(&im, &lb, &s);
    for (l = 1; l < IOUPOS_LABEL_COUNT; ++l)
      if (l != IOUPOS_LABEL_ADRENAL_R && l != IOUPOS_LABEL_ADRENAL_L) /* may be under a voxel */
        CHECK(s.count[l] > 0, "small field of view: %s absent", ioupos_label_name(l));
    ioupos_volume_free(&im);
    ioupos_volume_free(&lb);
  }
  o.nx = o.ny = o.nz = 1;
  st = ioupos_phantom_make(&o, &im, &lb);
  CHECK(st == IOUPOS_OK && im.data && lb.data, "1x1x1: %s", ioupos_failure_reason());
  if (st == IOUPOS_OK) {
    ioupos_volume_free(&im);
    ioupos_volume_free(&lb);
  }

  /* refusals: EINVAL, the reason names the bad value, both volumes left empty */
  ioupos_phantom_defaults(&o);
  o.ny = 0;
  st = ioupos_phantom_make(&o, &im, &lb);
  CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "192x0x64") && !im.data && !lb.data,
        "ny 0: %s (%s)", ioupos_status_name(st), ioupos_failure_reason());
  ioupos_phantom_defaults(&o);
  o.nz = 5000;
  st = ioupos_phantom_make(&o, &im, &lb);
  CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "5000"), "nz 5000: %s (%s)",
        ioupos_status_name(st), ioupos_failure_reason());
  ioupos_phantom_defaults(&o);
  o.spacing[1] = NAN;
  st = ioupos_phantom_make(&o, &im, &lb);
  CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "spacing"), "NaN spacing: %s (%s)",
        ioupos_status_name(st), ioupos_failure_reason());
  ioupos_phantom_defaults(&o);
  o.spacing[0] = -1.0;
  st = ioupos_phantom_make(&o, &im, &lb);
  CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "spacing -1"),
        "negative spacing: %s (%s)", ioupos_status_name(st), ioupos_failure_reason());
  ioupos_phantom_defaults(&o);
  o.noise_sd = -2.0;
  st = ioupos_phantom_make(&o, &im, &lb);
  CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "noise"), "noise -2: %s (%s)",
        ioupos_status_name(st), ioupos_failure_reason());
  st = ioupos_phantom_make(NULL, &im, &lb);
  CHECK(st == IOUPOS_EINVAL, "NULL opts: %s", ioupos_status_name(st));
  ioupos_phantom_defaults(&o);
  st = ioupos_phantom_make(&o, NULL, &lb);
  CHECK(st == IOUPOS_EINVAL && !lb.data, "NULL image: %s", ioupos_status_name(st));
  CHECK(!strcmp(ioupos_label_name(1), "liver") && !strcmp(ioupos_label_name(13), "left kidney") &&
            !strcmp(ioupos_label_name(0), "background") && !strcmp(ioupos_label_name(14), "?"),
        "label names");
}

static void check_round_trip(void) {
  ioupos_phantom_opts o;
  ioupos_volume im, lb, rim, rlb;
  char dir[] = "/tmp/test_phantom.XXXXXX", pim[256], plb[256];
  int st, r, c;
  double err = 0.0;
  ioupos_phantom_defaults(&o);
  o.seed = 77;
  o.nx = 96, o.ny = 80, o.nz = 24, o.spacing[0] = o.spacing[1] = 4.0, o.spacing[2] = 6.0;
  if (!mkdtemp(dir)) {
    CHECK(0, "mkdtemp failed");
    return;
  }
  snprintf(pim, sizeof pim, "%s/image.nii.gz", dir);
  snprintf(plb, sizeof plb, "%s/label.nii.gz", dir);
  st = ioupos_phantom_make(&o, &im, &lb);
  CHECK(st == IOUPOS_OK, "%s", ioupos_failure_reason());
  if (st != IOUPOS_OK) return;
  st = ioupos_nifti_write(pim, &im, IOUPOS_NIFTI_INT16);
  CHECK(st == IOUPOS_OK, "write image: %s", ioupos_failure_reason());
  st = ioupos_nifti_write(plb, &lb, IOUPOS_NIFTI_UINT8);
  CHECK(st == IOUPOS_OK, "write label: %s", ioupos_failure_reason());
  memset(&rim, 0, sizeof rim);
  memset(&rlb, 0, sizeof rlb);
  st = ioupos_nifti_read(pim, &rim);
  CHECK(st == IOUPOS_OK, "read image: %s", ioupos_failure_reason());
  st = ioupos_nifti_read(plb, &rlb);
  CHECK(st == IOUPOS_OK, "read label: %s", ioupos_failure_reason());
  if (rim.data && rlb.data) {
    CHECK(rim.dim[0] == 96 && rim.dim[1] == 80 && rim.dim[2] == 24, "read dims %dx%dx%d",
          rim.dim[0], rim.dim[1], rim.dim[2]);
    CHECK(!memcmp(rim.dim, im.dim, sizeof im.dim) &&
              !memcmp(rim.data, im.data, (size_t)96 * 80 * 24 * sizeof(float)),
          "image data changed in the round trip");
    CHECK(!memcmp(rlb.dim, lb.dim, sizeof lb.dim) &&
              !memcmp(rlb.data, lb.data, (size_t)96 * 80 * 24 * sizeof(float)),
          "label data changed in the round trip");
    for (r = 0; r < 4; ++r)
      for (c = 0; c < 4; ++c) {
        double e = fabs(rim.affine[r][c] - im.affine[r][c]);
        double e2 = fabs(rlb.affine[r][c] - lb.affine[r][c]);
        if (e > err) err = e;
        if (e2 > err) err = e2;
      }
    CHECK(err < 1e-4, "affine changed by up to %g mm in the round trip", err);
  }
  ioupos_volume_free(&im);
  ioupos_volume_free(&lb);
  ioupos_volume_free(&rim);
  ioupos_volume_free(&rlb);
  remove(pim);
  remove(plb);
  rmdir(dir);
}

int main(void) {
  uint64_t seed;
  struct timespec t0, t1;
  ioupos_phantom_opts o;
  ioupos_volume im, lb;
  check_geometry_and_args();
  check_reproducible();
  /* IOUPOS_PHANTOM_SEEDS cases (default 5) */
  for (seed = 0; seed < (uint64_t)tu_env_long("IOUPOS_PHANTOM_SEEDS", 5); ++seed) check_case(seed);
  check_round_trip();
  ioupos_phantom_defaults(&o);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if (ioupos_phantom_make(&o, &im, &lb) == IOUPOS_OK) {
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("test_phantom: default %dx%dx%d phantom in %.3f s\n", o.nx, o.ny, o.nz,
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    ioupos_volume_free(&im);
    ioupos_volume_free(&lb);
  }
  return tu_finish("test_phantom");
}
