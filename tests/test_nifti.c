/* tests/test_nifti.c — NIfTI-1 reading and writing, the preprocessing steps, slices, split files,
   and the whole pipeline on the real CT against MONAI (tests/fixtures/prep, written by
   tests/reference/prep_fixture.py).

   Real data: $IOUPOS_DATA (default ../shared/data, relative to the repository root, where the
   tests run); those checks are skipped, saying so, when the folder is absent, and fail instead
   when IOUPOS_REQUIRE_DATA=1 (CI sets it).
   MONAI agreement thresholds: output shape equal, affine within 1e-6 mm, and on the stored
   slices of totalseg_sm at least 99.9 % of pixels within one grey level (1/255) with none off
   by more than 2, and at least 99.9 % of label pixels equal. */
#include "ioupos.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "npy.h"
#include "test_util.h"

static char tmpdir[256];

/* ---- hand-made NIfTI files (independent of the library's writer) --------------------------- */

typedef struct hdr_opts {
  int dt, big, dim0, dims[7];
  double slope, inter, vox_offset;
  int qcode, scode;
  double pixdim[4];         /* qfac, dx, dy, dz */
  double quat[3], qoff[3];  /* b c d, offsets */
  double srow[3][4];
  const char *magic;        /* default "n+1" */
  int sizeof_hdr;           /* default 348 */
} hdr_opts;

static void put(unsigned char *p, const void *v, int n, int big) {
  const unsigned char *b = (const unsigned char *)v;
  int k, one = 1;
  int host_little = *(const char *)&one == 1;
  for (k = 0; k < n; ++k) p[k] = b[(big == !host_little) ? k : n - 1 - k];
}
static void put16(unsigned char *p, int v, int big) {
  int16_t x = (int16_t)v;
  put(p, &x, 2, big);
}
static void put32(unsigned char *p, int32_t v, int big) { put(p, &v, 4, big); }
static void putf(unsigned char *p, double v, int big) {
  float f = (float)v;
  put(p, &f, 4, big);
}

static int dt_size(int dt) {
  switch (dt) {
    case 2: case 256: return 1;
    case 4: case 512: return 2;
    case 8: case 768: case 16: return 4;
    case 32: return 8;
    default: return 8;
  }
}

/* value v stored as datatype dt at p */
static void put_value(unsigned char *p, int dt, double v, int big) {
  switch (dt) {
    case 2: { uint8_t x = (uint8_t)v; put(p, &x, 1, big); break; }
    case 256: { int8_t x = (int8_t)v; put(p, &x, 1, big); break; }
    case 4: { int16_t x = (int16_t)v; put(p, &x, 2, big); break; }
    case 512: { uint16_t x = (uint16_t)v; put(p, &x, 2, big); break; }
    case 8: { int32_t x = (int32_t)v; put(p, &x, 4, big); break; }
    case 768: { uint32_t x = (uint32_t)v; put(p, &x, 4, big); break; }
    case 16: { float x = (float)v; put(p, &x, 4, big); break; }
    case 64: { double x = v; put(p, &x, 8, big); break; }
    case 1024: { int64_t x = (int64_t)v; put(p, &x, 8, big); break; }
    case 1280: { uint64_t x = (uint64_t)v; put(p, &x, 8, big); break; }
    default: { double x = v; put(p, &x, 8, big); break; }
  }
}

/* A .nii image in memory: header + n values; returns its size. */
static size_t make_nii(const hdr_opts *o, const double *values, size_t n, unsigned char **out) {
  size_t off = o->vox_offset > 0 ? (size_t)o->vox_offset : 352, esz = (size_t)dt_size(o->dt);
  size_t size = off + n * esz, i;
  unsigned char *b = (unsigned char *)calloc(size + 1, 1);
  int k, r, c;
  put32(b, o->sizeof_hdr ? o->sizeof_hdr : 348, o->big);
  put16(b + 40, o->dim0 ? o->dim0 : 3, o->big);
  for (k = 0; k < 7; ++k) put16(b + 42 + 2 * k, o->dims[k] ? o->dims[k] : 1, o->big);
  put16(b + 70, o->dt, o->big);
  put16(b + 72, 8 * dt_size(o->dt), o->big);
  for (k = 0; k < 4; ++k) putf(b + 76 + 4 * k, o->pixdim[k], o->big);
  putf(b + 108, (double)off, o->big);
  putf(b + 112, o->slope, o->big);
  putf(b + 116, o->inter, o->big);
  put16(b + 252, o->qcode, o->big);
  put16(b + 254, o->scode, o->big);
  for (k = 0; k < 3; ++k) putf(b + 256 + 4 * k, o->quat[k], o->big);
  for (k = 0; k < 3; ++k) putf(b + 268 + 4 * k, o->qoff[k], o->big);
  for (r = 0; r < 3; ++r)
    for (c = 0; c < 4; ++c) putf(b + 280 + 16 * r + 4 * c, o->srow[r][c], o->big);
  memcpy(b + 344, o->magic ? o->magic : "n+1", 4);
  for (i = 0; i < n; ++i) put_value(b + off + i * esz, o->dt, values[i], o->big);
  *out = b;
  return size;
}

static void default_hdr(hdr_opts *o, int dt, int big, int nx, int ny, int nz) {
  memset(o, 0, sizeof *o);
  o->dt = dt;
  o->big = big;
  o->dims[0] = nx;
  o->dims[1] = ny;
  o->dims[2] = nz;
  o->pixdim[0] = 1;
  o->pixdim[1] = o->pixdim[2] = o->pixdim[3] = 1;
  o->scode = 1;
  o->srow[0][0] = 1;
  o->srow[1][1] = 1;
  o->srow[2][2] = 1;
}

static int contains(const char *hay, const char *needle) { return strstr(hay, needle) != NULL; }

/* ---- reading -------------------------------------------------------------------------------- */

static void test_datatypes(void) {
  static const int dts[] = {2, 256, 4, 512, 8, 768, 16, 64, 1024, 1280};
  static const double vals[] = {0, 1, 2, 100, 127, 5, 77, 12, 3, 9, 42, 60};
  int d, big;
  for (d = 0; d < 10; ++d)
    for (big = 0; big < 2; ++big) {
      hdr_opts o;
      unsigned char *b;
      size_t n, i;
      ioupos_volume v;
      double tv[12];
      int bad = 0, st;
      for (i = 0; i < 12; ++i) tv[i] = vals[i];
      if (dts[d] == 256 || dts[d] == 4 || dts[d] == 8 || dts[d] == 16 || dts[d] == 64 || dts[d] == 1024)
        tv[3] = -100; /* a negative value for signed types */
      default_hdr(&o, dts[d], big, 3, 2, 2);
      n = make_nii(&o, tv, 12, &b);
      st = ioupos_nifti_read_memory(b, n, "dt.nii", &v);
      CHECK(st == 0, "datatype %d big %d: %s", dts[d], big, ioupos_failure_reason());
      if (st == 0) {
        for (i = 0; i < 12; ++i) bad += v.data[i] != (float)tv[i];
        CHECK(bad == 0 && v.dim[0] == 3 && v.dim[1] == 2 && v.dim[2] == 2, "datatype %d big %d: %d values differ",
              dts[d], big, bad);
      }
      ioupos_volume_free(&v);
      free(b);
    }
  /* scl_slope / scl_inter */
  {
    hdr_opts o;
    unsigned char *b;
    size_t n;
    ioupos_volume v;
    double tv[2] = {10, -3};
    default_hdr(&o, 4, 1, 2, 1, 1);
    o.slope = 2.0;
    o.inter = -1024.0;
    n = make_nii(&o, tv, 2, &b);
    CHECK(ioupos_nifti_read_memory(b, n, "s.nii", &v) == 0 && v.data[0] == -1004.0f && v.data[1] == -1030.0f,
          "slope 2 inter -1024: got %g %g", v.data ? v.data[0] : -1, v.data ? v.data[1] : -1);
    ioupos_volume_free(&v);
    free(b);
    o.slope = 0.0; /* no scaling, inter ignored */
    n = make_nii(&o, tv, 2, &b);
    CHECK(ioupos_nifti_read_memory(b, n, "s.nii", &v) == 0 && v.data[0] == 10.0f && v.data[1] == -3.0f,
          "slope 0 is identity");
    ioupos_volume_free(&v);
    free(b);
    o.slope = NAN;
    n = make_nii(&o, tv, 2, &b);
    CHECK(ioupos_nifti_read_memory(b, n, "s.nii", &v) == 0 && v.data[0] == 10.0f, "slope NaN is identity");
    ioupos_volume_free(&v);
    free(b);
  }
}

static int affine_close(const double a[4][4], const double b[4][4], double tol) {
  int r, c;
  for (r = 0; r < 4; ++r)
    for (c = 0; c < 4; ++c)
      if (!(fabs(a[r][c] - b[r][c]) <= tol)) return 0;
  return 1;
}

static void print_affine(const char *what, const double a[4][4]) {
  int r;
  printf("  %s:\n", what);
  for (r = 0; r < 4; ++r) printf("    %.9g %.9g %.9g %.9g\n", a[r][0], a[r][1], a[r][2], a[r][3]);
}

static void test_affines(void) {
  hdr_opts o;
  unsigned char *b;
  size_t n;
  ioupos_volume v;
  double vals[36] = {0};
  /* qform only: 90 degrees about z (quaternion w = c = sqrt(.5) on z -> b = c = 0, d = sqrt(.5)),
     pixdim 2 3 4, qfac -1: affine = R diag(2, 3, -4) + offset */
  double want[4][4] = {{0, -3, 0, 10}, {2, 0, 0, 20}, {0, 0, -4, 30}, {0, 0, 0, 1}};
  double base[4][4] = {{-2, 0, 0, 2}, {0, 3, 0, -3}, {0, 0, 4, -6}, {0, 0, 0, 1}};
  default_hdr(&o, 16, 0, 3, 3, 4);
  o.scode = 0;
  o.qcode = 1;
  o.pixdim[0] = -1;
  o.pixdim[1] = 2;
  o.pixdim[2] = 3;
  o.pixdim[3] = 4;
  o.quat[2] = sqrt(0.5);
  o.qoff[0] = 10;
  o.qoff[1] = 20;
  o.qoff[2] = 30;
  n = make_nii(&o, vals, 36, &b);
  CHECK(ioupos_nifti_read_memory(b, n, "q.nii", &v) == 0 && affine_close(v.affine, want, 1e-6),
        "qform with qfac -1 gives R diag(2, 3, -4)");
  if (!affine_close(v.affine, want, 1e-6)) print_affine("got", v.affine);
  ioupos_volume_free(&v);
  free(b);
  /* sform wins over qform */
  o.scode = 2;
  o.srow[0][0] = 5; o.srow[0][3] = 1;
  o.srow[1][1] = 6; o.srow[1][3] = 2;
  o.srow[2][2] = 7; o.srow[2][3] = 3;
  n = make_nii(&o, vals, 36, &b);
  CHECK(ioupos_nifti_read_memory(b, n, "s.nii", &v) == 0 && v.affine[0][0] == 5 && v.affine[1][1] == 6 &&
            v.affine[2][2] == 7 && v.affine[2][3] == 3,
        "sform (code 2) is used over qform");
  ioupos_volume_free(&v);
  free(b);
  /* neither: pixdim diagonal centred, x flipped (nibabel's base affine); qfac 0 is read as 1 */
  o.scode = 0;
  o.qcode = 0;
  o.pixdim[0] = 0;
  o.pixdim[1] = 2;
  o.pixdim[2] = -3; /* nibabel: abs */
  o.pixdim[3] = 4;
  n = make_nii(&o, vals, 36, &b);
  CHECK(ioupos_nifti_read_memory(b, n, "b.nii", &v) == 0 && affine_close(v.affine, base, 1e-9),
        "no sform/qform: centred pixdim diagonal with x flipped");
  if (!affine_close(v.affine, base, 1e-9)) print_affine("got", v.affine);
  ioupos_volume_free(&v);
  free(b);
}

static void expect_error(const unsigned char *b, size_t n, const char *name, int want, const char *msg) {
  ioupos_volume v;
  int st = ioupos_nifti_read_memory(b, n, name, &v);
  const char *why = ioupos_failure_reason();
  CHECK(st == want && contains(why, name) && contains(why, msg) && v.data == NULL,
        "%s: want %s with '%s', got %s: %s", name, ioupos_status_name(want), msg, ioupos_status_name(st), why);
  ioupos_volume_free(&v);
}

static void test_corrupt(void) {
  hdr_opts o;
  unsigned char *b, *gz;
  size_t n, gn;
  double vals[60];
  int i;
  ioupos_volume v;
  for (i = 0; i < 60; ++i) vals[i] = i;
  default_hdr(&o, 4, 0, 5, 4, 3);
  n = make_nii(&o, vals, 60, &b);
  /* truncated gzip / corrupt trailer */
  CHECK(ioupos_nifti_read_memory(b, n, "ok.nii", &v) == 0, "base file reads: %s", ioupos_failure_reason());
  {
    ioupos_volume w = v;
    CHECK(ioupos_nifti_encode(&w, IOUPOS_NIFTI_INT16, 1, &gz, &gn) == 0, "encode gz");
  }
  ioupos_volume_free(&v);
  expect_error(gz, gn / 2, "half.nii.gz", IOUPOS_EFORMAT, "truncated");
  expect_error(gz, gn - 4, "trail.nii.gz", IOUPOS_EFORMAT, "truncated");
  expect_error(gz, 12, "tiny.nii.gz", IOUPOS_EFORMAT, "truncated gzip");
  gz[gn - 6] ^= 0x55; /* CRC byte */
  expect_error(gz, gn, "crc.nii.gz", IOUPOS_EFORMAT, "CRC32");
  gz[gn - 6] ^= 0x55;
  gz[2] = 7;
  expect_error(gz, gn, "method.nii.gz", IOUPOS_EFORMAT, "not deflate");
  gz[2] = 8;
  CHECK(ioupos_nifti_read_memory(gz, gn, "gz.nii.gz", &v) == 0 && v.data[59] == 59.0f, "gzip round trip");
  ioupos_volume_free(&v);
  free(gz);
  /* wrong magic, wrong sizeof_hdr, two-file */
  memcpy(b + 344, "xyz", 4);
  expect_error(b, n, "magic.nii", IOUPOS_EFORMAT, "wrong magic");
  memcpy(b + 344, "ni1", 4);
  expect_error(b, n, "pair.nii", IOUPOS_EFORMAT, "two-file");
  memcpy(b + 344, "n+1", 4);
  expect_error(b, 100, "short.nii", IOUPOS_EFORMAT, "not a NIfTI-1 file");
  expect_error((const unsigned char *)"hello", 5, "text.nii", IOUPOS_EFORMAT, "not a NIfTI-1");
  b[0] ^= 0xFF;
  expect_error(b, n, "sizeof.nii", IOUPOS_EFORMAT, "sizeof_hdr");
  b[0] ^= 0xFF;
  /* short data, offset beyond the file */
  expect_error(b, n - 1, "shortdata.nii", IOUPOS_EFORMAT, "short data");
  free(b);
  o.vox_offset = 4000;
  n = make_nii(&o, vals, 0, &b);
  expect_error(b, n - 1000, "offset.nii", IOUPOS_EFORMAT, "beyond the end");
  free(b);
  o.vox_offset = 0;
  /* absurd dimensions, 4D, unsupported datatype */
  o.dims[0] = 0;
  n = make_nii(&o, vals, 0, &b);
  /* dims[0] = 0 is written as 1 by make_nii; use a negative one */
  put16(b + 42, -5, 0);
  expect_error(b, n, "negdim.nii", IOUPOS_EFORMAT, "absurd dimensions");
  put16(b + 40, 9, 0);
  expect_error(b, n, "ndim.nii", IOUPOS_EFORMAT, "absurd dimensions");
  put16(b + 40, 3, 0);
  put16(b + 42, 32767, 0);
  put16(b + 44, 32767, 0);
  put16(b + 46, 32767, 0);
  expect_error(b, n, "huge.nii", IOUPOS_ERANGE, "2^31");
  put16(b + 40, 4, 0);
  put16(b + 42, 5, 0);
  put16(b + 44, 4, 0);
  put16(b + 46, 3, 0);
  put16(b + 48, 2, 0);
  expect_error(b, n, "4d.nii", IOUPOS_EFORMAT, "only 3D");
  put16(b + 48, 1, 0);
  put16(b + 70, 32, 0);
  expect_error(b, n, "complex.nii", IOUPOS_EFORMAT, "unsupported datatype 32");
  put16(b + 70, 128, 0);
  expect_error(b, n, "rgb.nii", IOUPOS_EFORMAT, "unsupported datatype 128");
  free(b);
  /* a missing file names the file */
  CHECK(ioupos_nifti_read("no/such/file.nii.gz", &v) == IOUPOS_EIO &&
            contains(ioupos_failure_reason(), "no/such/file.nii.gz"),
        "missing file: %s", ioupos_failure_reason());
}

/* ---- writing -------------------------------------------------------------------------------- */

static void test_write(void) {
  static const int dts[] = {2, 256, 4, 512, 8, 768, 16, 64, 1024, 1280};
  ioupos_volume v, r;
  int d, gz, i;
  char path[512];
  CHECK(ioupos_volume_alloc(&v, 4, 3, 2) == 0, "alloc");
  for (i = 0; i < 24; ++i) v.data[i] = (float)i * 1.25f;
  /* an oblique affine with a flip (det < 0): sform exact, qform consistent */
  {
    double c = cos(0.3), s = sin(0.3);
    double a[4][4] = {{0.8 * c, -0.9 * s, 0, -10}, {0.8 * s, 0.9 * c, 0, 5}, {0, 0, -2.5, 30}, {0, 0, 0, 1}};
    memcpy(v.affine, a, sizeof a);
  }
  for (d = 0; d < 10; ++d)
    for (gz = 0; gz < 2; ++gz) {
      int bad = 0;
      snprintf(path, sizeof path, "%s/w%d.nii%s", tmpdir, dts[d], gz ? ".gz" : "");
      CHECK(ioupos_nifti_write(path, &v, dts[d]) == 0, "write %s: %s", path, ioupos_failure_reason());
      CHECK(ioupos_nifti_read(path, &r) == 0, "read back %s: %s", path, ioupos_failure_reason());
      if (!r.data) continue;
      for (i = 0; i < 24; ++i) {
        double want = v.data[i];
        if (dts[d] != 16 && dts[d] != 64) want = floor(want + 0.5); /* half away from zero */
        bad += fabs(r.data[i] - want) > 1e-6;
      }
      CHECK(bad == 0 && r.dim[0] == 4 && r.dim[1] == 3 && r.dim[2] == 2, "%s: %d values differ", path, bad);
      CHECK(affine_close(r.affine, v.affine, 1e-5), "%s: affine survives the round trip", path);
      ioupos_volume_free(&r);
    }
  /* the qform alone gives the same affine: clear the sform code of a written file */
  {
    unsigned char *b;
    size_t n;
    CHECK(ioupos_nifti_encode(&v, 16, 0, &b, &n) == 0, "encode");
    b[254] = b[255] = 0;
    CHECK(ioupos_nifti_read_memory(b, n, "qonly.nii", &r) == 0 && affine_close(r.affine, v.affine, 1e-5),
          "qform written from the affine reproduces it (with qfac -1)");
    if (r.data && !affine_close(r.affine, v.affine, 1e-5)) print_affine("qform affine", r.affine);
    ioupos_volume_free(&r);
    free(b);
  }
  /* clamping and rounding for integer types */
  v.data[0] = -3.5f;
  v.data[1] = 300.0f;
  v.data[2] = 2.5f;
  v.data[3] = NAN;
  snprintf(path, sizeof path, "%s/clamp.nii", tmpdir);
  CHECK(ioupos_nifti_write(path, &v, IOUPOS_NIFTI_UINT8) == 0 && ioupos_nifti_read(path, &r) == 0 &&
            r.data[0] == 0 && r.data[1] == 255 && r.data[2] == 3 && r.data[3] == 0,
        "uint8: clamp, half away from zero, NaN -> 0");
  ioupos_volume_free(&r);
  snprintf(path, sizeof path, "%s/clamp16.nii", tmpdir);
  CHECK(ioupos_nifti_write(path, &v, IOUPOS_NIFTI_INT16) == 0 && ioupos_nifti_read(path, &r) == 0 &&
            r.data[0] == -4 && r.data[2] == 3,
        "int16: -3.5 -> -4, 2.5 -> 3");
  ioupos_volume_free(&r);
  snprintf(path, sizeof path, "%s/no_dir/x.nii.gz", tmpdir);
  CHECK(ioupos_nifti_write(path, &v, 16) == IOUPOS_EIO && contains(ioupos_failure_reason(), "no_dir/x.nii.gz"),
        "unwritable path is an error naming it");
  ioupos_volume_free(&v);
}

/* ---- preprocessing steps --------------------------------------------------------------------- */

static float at(const ioupos_volume *v, int i, int j, int k) {
  return v->data[((size_t)k * v->dim[1] + j) * v->dim[0] + i];
}

static void test_orientation(void) {
  ioupos_volume v;
  int i, j, k, bad = 0;
  /* LPS-like: x and y flipped */
  ioupos_volume_alloc(&v, 2, 3, 4);
  for (i = 0; i < 24; ++i) v.data[i] = (float)i;
  v.affine[0][0] = -1; v.affine[1][1] = -2; v.affine[2][2] = 3;
  v.affine[0][3] = 10; v.affine[1][3] = 20; v.affine[2][3] = 30;
  CHECK(ioupos_volume_reorient_ras(&v) == 0, "reorient");
  for (k = 0; k < 4; ++k)
    for (j = 0; j < 3; ++j)
      for (i = 0; i < 2; ++i) bad += at(&v, i, j, k) != (float)((k * 3 + (2 - j)) * 2 + (1 - i));
  CHECK(bad == 0, "flips of x and y: %d voxels wrong", bad);
  CHECK(v.affine[0][0] == 1 && v.affine[1][1] == 2 && v.affine[2][2] == 3 && v.affine[0][3] == 9 &&
            v.affine[1][3] == 16 && v.affine[2][3] == 30,
        "flipped affine: translation moves to the last voxel (%g %g %g)", v.affine[0][3], v.affine[1][3],
        v.affine[2][3]);
  ioupos_volume_free(&v);
  /* a permutation: input axis 0 -> world y, 1 -> z, 2 -> x */
  ioupos_volume_alloc(&v, 2, 3, 4);
  for (i = 0; i < 24; ++i) v.data[i] = (float)i;
  memset(v.affine, 0, sizeof v.affine);
  v.affine[1][0] = 2;
  v.affine[2][1] = 1;
  v.affine[0][2] = 3;
  v.affine[3][3] = 1;
  CHECK(ioupos_volume_reorient_ras(&v) == 0 && v.dim[0] == 4 && v.dim[1] == 2 && v.dim[2] == 3,
        "permuted dims %dx%dx%d, want 4x2x3", v.dim[0], v.dim[1], v.dim[2]);
  bad = 0;
  for (k = 0; k < 3; ++k)
    for (j = 0; j < 2; ++j)
      for (i = 0; i < 4; ++i) bad += at(&v, i, j, k) != (float)((i * 3 + k) * 2 + j);
  CHECK(bad == 0 && v.affine[0][0] == 3 && v.affine[1][1] == 2 && v.affine[2][2] == 1,
        "permutation: %d voxels wrong", bad);
  ioupos_volume_free(&v);
}

static void test_resample(void) {
  ioupos_volume v;
  double sp[3] = {1, 1, 1};
  int i, bad = 0;
  /* x ramp 0, 10, .., 40 at 2 mm -> 1 mm: 9 samples, linear */
  ioupos_volume_alloc(&v, 5, 2, 2);
  for (i = 0; i < 20; ++i) v.data[i] = (float)(10 * (i % 5));
  v.affine[0][0] = 2;
  v.affine[0][3] = 7;
  CHECK(ioupos_volume_resample(&v, sp, 0) == 0 && v.dim[0] == 9 && v.dim[1] == 2 && v.dim[2] == 2,
        "2 mm -> 1 mm: 5 -> 9 voxels (got %d)", v.dim[0]);
  for (i = 0; i < 9; ++i) bad += fabs(at(&v, i, 1, 1) - 5.0 * i) > 1e-4;
  CHECK(bad == 0 && v.affine[0][0] == 1 && v.affine[0][3] == 7, "linear ramp resampled exactly (%d bad)", bad);
  ioupos_volume_free(&v);
  /* nearest, 3 mm -> 1 mm: source x = i / 3 */
  ioupos_volume_alloc(&v, 3, 1, 1);
  v.data[0] = 1; v.data[1] = 2; v.data[2] = 3;
  v.affine[0][0] = 3;
  CHECK(ioupos_volume_resample(&v, sp, 1) == 0 && v.dim[0] == 7, "3 mm -> 1 mm: 3 -> 7 voxels");
  CHECK(v.data[0] == 1 && v.data[1] == 1 && v.data[2] == 2 && v.data[3] == 2 && v.data[4] == 2 && v.data[5] == 3 &&
            v.data[6] == 3,
        "nearest: 1 1 2 2 2 3 3");
  ioupos_volume_free(&v);
  /* extent rounding half to even: 6 voxels at 1.1 mm -> 1 mm: 5 * 1.1 + 1 = 6.5 -> 6 */
  ioupos_volume_alloc(&v, 6, 1, 1);
  v.affine[0][0] = 1.1;
  CHECK(ioupos_volume_resample(&v, sp, 0) == 0 && v.dim[0] == 6, "6.5 voxels round to 6 (half to even), got %d",
        v.dim[0]);
  ioupos_volume_free(&v);
  /* already at the spacing (within 1e-3): untouched */
  ioupos_volume_alloc(&v, 4, 4, 4);
  for (i = 0; i < 64; ++i) v.data[i] = (float)i;
  v.affine[0][0] = 1.0005;
  v.affine[1][3] = 3.25;
  CHECK(ioupos_volume_resample(&v, sp, 0) == 0 && v.dim[0] == 4 && v.data[63] == 63 && v.affine[0][0] == 1.0005,
        "spacing within 1e-3 of the target is kept, no resampling");
  ioupos_volume_free(&v);
}

static void test_window_crop_pad(void) {
  ioupos_volume v;
  int lo[3], hi[3], i, j;
  float in[5] = {-1000, -500, 0, 500, 1000};
  ioupos_volume_alloc(&v, 5, 1, 1);
  memcpy(v.data, in, sizeof in);
  ioupos_volume_window(&v, -500, 500);
  CHECK(v.data[0] == 0 && v.data[1] == 0 && v.data[2] == 0.5f && v.data[3] == 1 && v.data[4] == 1,
        "window: 0 0 0.5 1 1");
  ioupos_volume_free(&v);
  /* foreground box and crop */
  ioupos_volume_alloc(&v, 6, 5, 4);
  v.data[(2 * 5 + 1) * 6 + 3] = 0.5f;  /* (3, 1, 2) */
  v.data[(3 * 5 + 4) * 6 + 1] = 0.25f; /* (1, 4, 3) */
  v.affine[0][0] = 2;
  v.affine[1][1] = 3;
  v.affine[2][2] = 4;
  ioupos_volume_foreground_box(&v, lo, hi);
  CHECK(lo[0] == 1 && hi[0] == 4 && lo[1] == 1 && hi[1] == 5 && lo[2] == 2 && hi[2] == 4,
        "box [%d,%d) [%d,%d) [%d,%d)", lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]);
  CHECK(ioupos_volume_crop(&v, lo, hi) == 0 && v.dim[0] == 3 && v.dim[1] == 4 && v.dim[2] == 2 &&
            at(&v, 2, 0, 0) == 0.5f && at(&v, 0, 3, 1) == 0.25f && v.affine[0][3] == 2 && v.affine[1][3] == 3 &&
            v.affine[2][3] == 8,
        "crop keeps the box and moves the origin");
  ioupos_volume_free(&v);
  ioupos_volume_alloc(&v, 3, 3, 3);
  ioupos_volume_foreground_box(&v, lo, hi);
  CHECK(lo[0] == 0 && hi[0] == 0, "no foreground: empty box");
  ioupos_volume_free(&v);
  /* pad 3x2x1 to 6x5: x gets 1 before, 2 after; y the same */
  ioupos_volume_alloc(&v, 3, 2, 1);
  for (i = 0; i < 6; ++i) v.data[i] = (float)(i + 1);
  CHECK(ioupos_volume_pad_xy(&v, 6, 5) == 0 && v.dim[0] == 6 && v.dim[1] == 5 && v.dim[2] == 1, "pad dims");
  {
    int bad = 0;
    for (j = 0; j < 5; ++j)
      for (i = 0; i < 6; ++i) {
        float want = (i >= 1 && i <= 3 && j >= 1 && j <= 2) ? (float)((j - 1) * 3 + (i - 1) + 1) : 0.0f;
        bad += at(&v, i, j, 0) != want;
      }
    CHECK(bad == 0 && v.affine[0][3] == -1 && v.affine[1][3] == -1, "symmetric pad, odd voxel after (%d bad)", bad);
  }
  CHECK(ioupos_volume_pad_xy(&v, 4, 4) == 0 && v.dim[0] == 6 && v.dim[1] == 5, "no pad when large enough");
  ioupos_volume_free(&v);
  /* slices: x rows, y columns, rounded */
  {
    uint8_t px[6];
    ioupos_volume_alloc(&v, 2, 3, 1);
    v.data[0] = 127.5f / 255.0f; /* (0,0) -> 128, truncation would give 127 */
    v.data[1] = 1.0f;            /* (1,0) */
    v.data[2] = 0.2f;            /* (0,1) -> 51 */
    v.data[5] = 2.0f;            /* (1,2) clamps */
    ioupos_volume_slice_u8(&v, 0, 0, px);
    CHECK(px[0] == 128 && px[1] == 51 && px[3] == 255 && px[5] == 255 && px[2] == 0,
          "slice: %d %d %d %d %d %d", px[0], px[1], px[2], px[3], px[4], px[5]);
    ioupos_volume_free(&v);
  }
}

/* ---- split files ------------------------------------------------------------------------------ */

static void split_error(const char *text, const char *where, const char *msg) {
  ioupos_split s;
  int st = ioupos_split_parse(text, strlen(text), "split.json", &s);
  const char *why = ioupos_failure_reason();
  CHECK(st == IOUPOS_EFORMAT && contains(why, where) && contains(why, msg) && s.n_sets == 0,
        "split %s: want '%s' '%s', got %s", text, where, msg, why);
}

static void test_split(void) {
  const char *ok = "\xEF\xBB\xBF{\n  \"train\": [\"FLARE22_Tr_0001\", \"a\\u00e9\\ud83d\\ude00\"],\n"
                   "  \"val\": [],\n  \"test\" : [ \"x\" ]\n}\n";
  ioupos_split s;
  int st = ioupos_split_parse(ok, strlen(ok), "ok.json", &s);
  CHECK(st == 0 && s.n_sets == 3 && s.sets[0].n == 2 && s.sets[1].n == 0 && s.sets[2].n == 1 &&
            !strcmp(s.sets[0].name, "train") && !strcmp(s.sets[0].cases[1], "a\xC3\xA9\xF0\x9F\x98\x80"),
        "valid split: %s", st ? ioupos_failure_reason() : "");
  CHECK(st == 0 && ioupos_split_find(&s, "x") == 2 && ioupos_split_find(&s, "nope") == -1, "split_find");
  ioupos_split_free(&s);
  split_error("{\"train\": [\"a\",]}", "split.json:1:16", "expected a string");
  split_error("{\"train\": [\"a\"],\n \"val\": [\"a\"]}", "split.json:2:10", "listed twice");
  split_error("{\"train\": [\"a\"], \"train\": []}", "1:18", "duplicate split name");
  split_error("{\"train\": [\"a\\q\"]}", "1:14", "invalid escape");
  split_error("{\"train\": [\"abc", "1:12", "unterminated");
  split_error("{}", "1:2", "empty");
  split_error("{\"train\": []} x", "1:15", "unexpected content");
  split_error("[\"a\"]", "1:1", "expected '{'");
  split_error("{\"tr ain\": []}", "1:2", "split names");
  split_error("{\"train\": [\"../x\"]}", "1:12", "case names");
  split_error("{\"train\": [1]}", "1:12", "expected a string");
  split_error("{\"train\": [\"a\"] \"val\": []}", "1:17", "expected ',' or '}'");
  split_error("{\"train\": [\"\\ud800\"]}", "split.json:1:", "surrogate");
  split_error("{\"train\": [\"a\xff\"]}", "split.json:1:14", "invalid UTF-8");
  split_error("{\"train\": [\"a\\u0000\"]}", "split.json:1:14", "\\u0000");
  split_error("", "1:1", "expected '{'");
}

/* ---- real CT against MONAI -------------------------------------------------------------------- */

static void test_real(void) {
  const char *data = getenv("IOUPOS_DATA");
  char path[1024], lpath[1024], line[1024];
  struct stat sb;
  tu_npy shapes, affines, slices, im_ref, lab_ref;
  FILE *f;
  int c = 0;
  if (!data || !*data) data = "../shared/data";
  snprintf(path, sizeof path, "%s/ct", data);
  if (stat(path, &sb) != 0) {
    if (tu_env_long("IOUPOS_REQUIRE_DATA", 0))
      CHECK(0, "real CT: %s not found, and IOUPOS_REQUIRE_DATA is set (CI): the real-CT checks "
               "must run (set IOUPOS_DATA)", path);
    else
      printf("SKIP real CT checks: %s not found (set IOUPOS_DATA)\n", path);
    return;
  }
  if (tu_npy_load("tests/fixtures/prep/shapes.npy", &shapes) || tu_npy_load("tests/fixtures/prep/affines.npy", &affines) ||
      tu_npy_load("tests/fixtures/prep/sm_slices.npy", &slices) ||
      tu_npy_load("tests/fixtures/prep/sm_image.npy", &im_ref) || tu_npy_load("tests/fixtures/prep/sm_label.npy", &lab_ref) ||
      !(f = fopen("tests/fixtures/prep/cases.txt", "r"))) {
    CHECK(0, "fixtures in tests/fixtures/prep missing (run from the repository root)");
    return;
  }
  while (fgets(line, sizeof line, f)) {
    char img[512], lab[512];
    ioupos_volume v, l;
    ioupos_prep_opts o;
    int has_label, st, k;
    if (sscanf(line, "%511s %511s", img, lab) != 2) continue;
    has_label = strcmp(lab, "-") != 0 && strstr(img, "totalseg_sm_ct") != NULL;
    snprintf(path, sizeof path, "%s/%s", data, img);
    snprintf(lpath, sizeof lpath, "%s/%s", data, lab);
    ioupos_prep_opts_default(&o);
    st = ioupos_nifti_read(path, &v);
    if (st == 0 && has_label) st = ioupos_nifti_read(lpath, &l);
    if (st == 0) st = ioupos_preprocess(&v, has_label ? &l : NULL, &o);
    CHECK(st == 0, "%s: %s", img, ioupos_failure_reason());
    if (st == 0) {
      double want[4][4];
      int r, q;
      for (r = 0; r < 4; ++r)
        for (q = 0; q < 4; ++q) want[r][q] = affines.data[c * 16 + r * 4 + q];
      CHECK(v.dim[0] == (int)shapes.data[c * 3] && v.dim[1] == (int)shapes.data[c * 3 + 1] &&
                v.dim[2] == (int)shapes.data[c * 3 + 2],
            "%s: shape %dx%dx%d, MONAI %gx%gx%g", img, v.dim[0], v.dim[1], v.dim[2], shapes.data[c * 3],
            shapes.data[c * 3 + 1], shapes.data[c * 3 + 2]);
      CHECK(affine_close(v.affine, want, 1e-6), "%s: affine equals MONAI's", img);
      printf("  %-52s %dx%dx%d: %d slices (MONAI %d)\n", img, v.dim[0], v.dim[1], v.dim[2], v.dim[2],
             (int)shapes.data[c * 3 + 2]);
      if (has_label && v.dim[0] == im_ref.shape[1] && v.dim[1] == im_ref.shape[2]) {
        long n = 0, within1 = 0, off2 = 0, lab_same = 0, hist[4] = {0, 0, 0, 0};
        int maxd = 0, s;
        uint8_t *px = (uint8_t *)malloc((size_t)v.dim[0] * v.dim[1]);
        uint8_t *lx = (uint8_t *)malloc((size_t)v.dim[0] * v.dim[1]);
        for (s = 0; s < slices.count; ++s) {
          long p, npx = (long)v.dim[0] * v.dim[1];
          k = (int)slices.data[s];
          ioupos_volume_slice_u8(&v, k, 0, px);
          ioupos_volume_slice_u8(&l, k, 1, lx);
          for (p = 0; p < npx; ++p) {
            int d = abs((int)px[p] - (int)im_ref.data[s * npx + p]);
            ++n;
            within1 += d <= 1;
            off2 += d > 2;
            hist[d > 3 ? 3 : d]++;
            if (d > maxd) maxd = d;
            lab_same += lx[p] == (uint8_t)lab_ref.data[s * npx + p];
          }
        }
        printf("  MONAI agreement on %ld slices of totalseg_sm (%ld px): |d|=0 %.4f%%, |d|<=1 %.4f%%, max |d| %d; "
               "labels equal %.4f%%\n", (long)slices.count, n, 100.0 * hist[0] / n, 100.0 * within1 / n, maxd,
               100.0 * lab_same / n);
        CHECK(within1 >= 0.999 * n && off2 == 0, "image within one grey level on %.4f%% (need 99.9%%), %ld off by > 2",
              100.0 * within1 / n, off2);
        CHECK(lab_same >= 0.999 * n, "labels equal on %.4f%% (need 99.9%%)", 100.0 * lab_same / n);
        free(px);
        free(lx);
      } else if (has_label) {
        CHECK(0, "fixture slice shape %ldx%ld differs from %dx%d", im_ref.shape[1], im_ref.shape[2], v.dim[0], v.dim[1]);
      }
    }
    ioupos_volume_free(&v);
    if (has_label) ioupos_volume_free(&l);
    ++c;
  }
  fclose(f);
  CHECK(c == 5, "5 CT volumes in cases.txt (got %d)", c);
  tu_npy_free(&shapes);
  tu_npy_free(&affines);
  tu_npy_free(&slices);
  tu_npy_free(&im_ref);
  tu_npy_free(&lab_ref);
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "%s/test_nifti.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(tmpdir)) {
    printf("test_nifti: cannot create a temporary folder\n");
    return 1;
  }
  test_datatypes();
  test_affines();
  test_corrupt();
  test_write();
  test_orientation();
  test_resample();
  test_window_crop_pad();
  test_split();
  test_real();
  {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "find '%s' -name '*.tmp.*' | grep -q . && echo stray", tmpdir);
    CHECK(system(cmd) != 0, "no *.tmp.* files left by the atomic writes");
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) printf("note: could not remove %s\n", tmpdir);
  }
  return tu_finish("test_nifti");
}
