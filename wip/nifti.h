/* wip/nifti.h — API part: NIfTI-1 I/O (.nii, .nii.gz), CT preprocessing with MONAI's semantics,
   axial slices as 8-bit grey, and the split-file (JSON) parser. Owner: "nifti".

   Volumes are NIfTI's: x fastest in memory, dim = {nx, ny, nz}, and an affine from voxel
   (i, j, k, 1) to world millimetres in RAS+ (nibabel's convention).

   The preprocessing reproduces the research pipeline (MONAI 1.6.1 + nibabel 5.4.2):
     Orientationd("RAS") -> Spacingd(pixdim, bilinear | nearest, padding border,
     align_corners False) -> ScaleIntensityRanged(a_min, a_max, 0, 1, clip=True) ->
     CropForegroundd(select x > 0, margin 0, label cropped with the image's box) ->
     SpatialPadd((96, 96, -1), method symmetric, constant 0).
   Output shapes and affines are computed exactly as MONAI computes them; sampling positions
   follow torch's affine_grid / grid_sample arithmetic step by step (FMA linspace included), so
   nearest-neighbour ties on label volumes resolve as MONAI's do. */
#ifndef IOUPOS_WIP_NIFTI_H
#define IOUPOS_WIP_NIFTI_H
#include "ioupos.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef struct ioupos_volume {
  int dim[3];          /* nx, ny, nz (NIfTI order; x fastest in memory) */
  float *data;         /* nx*ny*nz values, voxel (i, j, k) at data[((size_t)k*ny + j)*nx + i] */
  double affine[4][4]; /* voxel (i, j, k, 1) -> world mm, RAS+ (NIfTI/nibabel convention) */
} ioupos_volume;

/* NIfTI-1 datatype codes read (all) and written (all). */
enum {
  IOUPOS_NIFTI_UINT8 = 2, IOUPOS_NIFTI_INT16 = 4, IOUPOS_NIFTI_INT32 = 8,
  IOUPOS_NIFTI_FLOAT32 = 16, IOUPOS_NIFTI_FLOAT64 = 64, IOUPOS_NIFTI_INT8 = 256,
  IOUPOS_NIFTI_UINT16 = 512, IOUPOS_NIFTI_UINT32 = 768, IOUPOS_NIFTI_INT64 = 1024,
  IOUPOS_NIFTI_UINT64 = 1280
};

/* Read .nii or .nii.gz (decided by content: the gzip magic 1f 8b), datatypes u8 i8 i16 u16 i32
   u32 i64 u64 f32 f64, either byte order; scl_slope/scl_inter applied (slope 0 or not finite =
   no scaling, as nibabel); affine from sform (sform_code != 0) else qform (qform_code != 0,
   quaternion with qfac) else the pixdim diagonal centred on the volume, exactly as nibabel's
   get_best_affine after its header fixes (pixdim 0 -> 1, negative -> abs, qfac not +-1 -> 1).
   Only 3D images: dim[0] in 3..7 with dim[4..] == 1. Single-member gzip only. Errors
   (IOUPOS_EFORMAT, IOUPOS_EIO, IOUPOS_ERANGE, IOUPOS_ENOMEM) name the file and the problem:
   truncated or corrupt gzip (inflate failure, CRC32 or ISIZE mismatch), not NIfTI-1 /
   wrong magic, two-file NIfTI, absurd dimensions (<= 0, > 65535, more than 2^31 voxels),
   unsupported datatype, vox_offset beyond the file, short data. */
IOUPOS_DEF int ioupos_nifti_read(const char *path, ioupos_volume *vol);
/* The same from memory; name is used in messages only. */
IOUPOS_DEF int ioupos_nifti_read_memory(const void *data, size_t size, const char *name,
                                        ioupos_volume *vol);
/* Write .nii or .nii.gz (".gz" at the end of path) atomically, little-endian, any datatype
   above; values rounded half away from zero and clamped for integer datatypes (NaN -> 0);
   sform and qform (code 1, scanner) both set from the affine; pixdim = column norms. */
IOUPOS_DEF int ioupos_nifti_write(const char *path, const ioupos_volume *vol, int datatype);
/* The bytes ioupos_nifti_write would write (gzip != 0: a .nii.gz stream). *out is freed with
   IOUPOS_FREE. */
IOUPOS_DEF int ioupos_nifti_encode(const ioupos_volume *vol, int datatype, int gzip,
                                   unsigned char **out, size_t *size);
IOUPOS_DEF void ioupos_volume_free(ioupos_volume *vol);
/* Allocate nx*ny*nz zeros and set the identity affine. */
IOUPOS_DEF int ioupos_volume_alloc(ioupos_volume *vol, int nx, int ny, int nz);
/* voxel size along i, j, k: the norms of the affine's first three columns */
IOUPOS_DEF void ioupos_volume_spacing(const ioupos_volume *vol, double spacing[3]);
/* CRC-32 (gzip's polynomial); start with crc = 0. */
IOUPOS_DEF uint32_t ioupos_crc32(uint32_t crc, const void *data, size_t n);

/* Preprocessing, MONAI semantics. Each replaces *vol (freeing the old data) and keeps the
   affine consistent. */
/* Orientation("RAS"): nibabel io_orientation (polar decomposition, strongest axis first), then
   flips and a permutation; affine = affine @ inv_ornt_aff. */
IOUPOS_DEF int ioupos_volume_reorient_ras(ioupos_volume *vol);
/* Spacing(pixdim = spacing, diagonal False, align_corners False, padding border): an axis whose
   spacing is within 1e-3 of the target keeps its spacing; output affine = rotation of the input
   (Cholesky-based, shear dropped) times the new spacing, origin at the transformed corner;
   shape = round-half-even(extent / spacing + 1). nearest = 0: trilinear; 1: nearest (ties as
   torch's grid_sample). No resampling when the grid is unchanged within 1e-3 (MONAI then keeps
   the input affine too). */
IOUPOS_DEF int ioupos_volume_resample(ioupos_volume *vol, const double spacing[3], int nearest);
/* The output grid of ioupos_volume_resample without resampling. */
IOUPOS_DEF int ioupos_volume_resample_grid(const ioupos_volume *vol, const double spacing[3],
                                           int out_dim[3], double out_affine[4][4]);
/* ScaleIntensityRange(a_min, a_max, 0, 1, clip=True), in float32 arithmetic as torch does. */
IOUPOS_DEF void ioupos_volume_window(ioupos_volume *vol, double a_min, double a_max);
/* bounding box [lo, hi) of voxels > 0; an empty box (lo == hi == 0) if there are none */
IOUPOS_DEF void ioupos_volume_foreground_box(const ioupos_volume *vol, int lo[3], int hi[3]);
/* keep [lo, hi) (within the volume, non-empty); affine translated to the new first voxel */
IOUPOS_DEF int ioupos_volume_crop(ioupos_volume *vol, const int lo[3], const int hi[3]);
/* SpatialPad((min_x, min_y, -1), symmetric, value 0): pad (need / 2) before and the rest
   (the odd voxel) after; affine translated by the voxels added before. */
IOUPOS_DEF int ioupos_volume_pad_xy(ioupos_volume *vol, int min_x, int min_y);

/* The whole research pipeline on an image and (optionally) its label volume. The label must
   have the image's dims; it gets the image's steps with nearest resampling and the image's
   crop box. Fails (IOUPOS_EFORMAT) when the image has no voxel above a_min. */
typedef struct ioupos_prep_opts {
  double a_min, a_max;  /* HU window, default -500, 500 */
  double spacing[3];    /* mm, default 1, 1, 2.5 */
  int pad_xy;           /* pad x and y to at least this, default 96 */
} ioupos_prep_opts;
IOUPOS_DEF void ioupos_prep_opts_default(ioupos_prep_opts *o);
IOUPOS_DEF int ioupos_preprocess(ioupos_volume *image, ioupos_volume *label,
                                 const ioupos_prep_opts *o);

/* Axial slice k as 8-bit grey, nx rows by ny columns (row r = x index, column c = y index, as
   PIL.Image.fromarray(volume[:, :, k])): out[r * ny + c]. Images: round(v * 255) half away from
   zero, clamped to 0..255 (NaN -> 0); labels (is_label != 0): round(v) clamped to 0..255. */
IOUPOS_DEF void ioupos_volume_slice_u8(const ioupos_volume *vol, int k, int is_label,
                                       uint8_t *out);

/* Split files: one JSON object whose members are arrays of case names, e.g.
   {"train": ["a", "b"], "val": ["c"], "test": []}. Strict: no trailing commas or comments,
   nothing after the object; member names [A-Za-z0-9_-]{1,64}, unique; case names non-empty
   strings of at most 255 bytes without '/', '\\', control characters, not "." or "..", and
   each case in one list only. Errors give line and column. */
typedef struct ioupos_split_set {
  char *name;
  int n;
  char **cases;
} ioupos_split_set;
typedef struct ioupos_split {
  int n_sets;
  ioupos_split_set *sets;
} ioupos_split;
IOUPOS_DEF int ioupos_split_parse(const char *text, size_t len, const char *name,
                                  ioupos_split *split);
IOUPOS_DEF int ioupos_split_read(const char *path, ioupos_split *split);
IOUPOS_DEF void ioupos_split_free(ioupos_split *split);
/* index of the set listing case_name, or -1 */
IOUPOS_DEF int ioupos_split_find(const ioupos_split *split, const char *case_name);

#ifdef __cplusplus
}
#endif
#endif /* IOUPOS_WIP_NIFTI_H */

#if defined(IOUPOS_IMPLEMENTATION) && !defined(IOUPOS_WIP_NIFTI_IMPL)
#define IOUPOS_WIP_NIFTI_IMPL

#include <limits.h>

/* ---- small helpers ------------------------------------------------------------------------- */

IOUPOS_DEF uint32_t ioupos_crc32(uint32_t crc, const void *data, size_t n) {
  uint32_t table[256];
  const unsigned char *p = (const unsigned char *)data;
  uint32_t c;
  int i, b;
  for (i = 0; i < 256; ++i) {
    c = (uint32_t)i;
    for (b = 0; b < 8; ++b) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  c = crc ^ 0xFFFFFFFFu;
  while (n--) c = table[(c ^ *p++) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

IOUPOS_DEF void ioupos_volume_free(ioupos_volume *vol) {
  if (!vol) return;
  IOUPOS_FREE(vol->data);
  vol->data = NULL;
  vol->dim[0] = vol->dim[1] = vol->dim[2] = 0;
}

static void ioupos__mat4_identity(double m[4][4]) {
  int r, c;
  for (r = 0; r < 4; ++r)
    for (c = 0; c < 4; ++c) m[r][c] = r == c ? 1.0 : 0.0;
}

/* out = a @ b, sequential accumulation (no FMA); out may alias neither. */
static void ioupos__mat4_mul(double out[4][4], const double a[4][4], const double b[4][4]) {
  int r, c, m;
  for (r = 0; r < 4; ++r)
    for (c = 0; c < 4; ++c) {
      double acc = 0.0;
      for (m = 0; m < 4; ++m) acc = acc + a[r][m] * b[m][c];
      out[r][c] = acc;
    }
}

/* Solve a @ x = b (4x4) by Gaussian elimination with partial pivoting, dividing by multiplying
   with reciprocals as LAPACK does (so MONAI's xform is reproduced to the bit); 0 if singular. */
static int ioupos__mat4_solve(const double a_in[4][4], const double b_in[4][4], double x[4][4]) {
  double a[4][4], b[4][4];
  int r, c, k, p;
  memcpy(a, a_in, sizeof a);
  memcpy(b, b_in, sizeof b);
  for (k = 0; k < 4; ++k) {
    p = k;
    for (r = k + 1; r < 4; ++r)
      if (fabs(a[r][k]) > fabs(a[p][k])) p = r;
    if (a[p][k] == 0.0 || !isfinite(a[p][k])) return 0;
    if (p != k)
      for (c = 0; c < 4; ++c) {
        double t = a[k][c]; a[k][c] = a[p][c]; a[p][c] = t;
        t = b[k][c]; b[k][c] = b[p][c]; b[p][c] = t;
      }
    for (r = k + 1; r < 4; ++r) {
      double f = a[r][k] * (1.0 / a[k][k]); /* LAPACK's dgetf2 scales by the reciprocal */
      if (f == 0.0) continue;
      for (c = k; c < 4; ++c) a[r][c] -= f * a[k][c];
      for (c = 0; c < 4; ++c) b[r][c] -= f * b[k][c];
    }
  }
  for (c = 0; c < 4; ++c)
    for (r = 3; r >= 0; --r) {
      double s = b[r][c];
      for (k = r + 1; k < 4; ++k) s -= a[r][k] * x[k][c];
      x[r][c] = s * (1.0 / a[r][r]); /* as LAPACK's triangular solve (numpy.linalg.solve) */
    }
  return 1;
}

IOUPOS_DEF void ioupos_volume_spacing(const ioupos_volume *vol, double spacing[3]) {
  int c;
  for (c = 0; c < 3; ++c)
    spacing[c] = sqrt(vol->affine[0][c] * vol->affine[0][c] + vol->affine[1][c] * vol->affine[1][c] +
                      vol->affine[2][c] * vol->affine[2][c]);
}

IOUPOS_DEF int ioupos_volume_alloc(ioupos_volume *vol, int nx, int ny, int nz) {
  size_t n;
  vol->data = NULL;
  vol->dim[0] = vol->dim[1] = vol->dim[2] = 0;
  ioupos__mat4_identity(vol->affine);
  if (nx <= 0 || ny <= 0 || nz <= 0)
    return ioupos__fail(IOUPOS_EINVAL, "volume %dx%dx%d: sizes must be positive", nx, ny, nz);
  n = (size_t)nx * (size_t)ny;
  if ((double)nx * ny * nz > 2147483648.0)
    return ioupos__fail(IOUPOS_ERANGE, "volume %dx%dx%d: more than 2^31 voxels", nx, ny, nz);
  vol->data = (float *)ioupos__calloc(n * (size_t)nz, sizeof(float));
  if (!vol->data)
    return ioupos__fail(IOUPOS_ENOMEM, "volume %dx%dx%d: out of memory", nx, ny, nz);
  vol->dim[0] = nx;
  vol->dim[1] = ny;
  vol->dim[2] = nz;
  return IOUPOS_OK;
}

/* ---- gzip ----------------------------------------------------------------------------------- */

static uint32_t ioupos__le32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Inflate a single-member gzip stream; *out freed with IOUPOS_FREE. */
static int ioupos__gunzip(const unsigned char *in, size_t size, const char *name,
                          unsigned char **out, size_t *out_size) {
  size_t pos = 10;
  int flg, outlen = 0, guess;
  uint32_t crc, isize;
  char *dec;
  double cap;
  *out = NULL;
  *out_size = 0;
  if (size < 18)
    return ioupos__fail(IOUPOS_EFORMAT, "%s: truncated gzip file (%zu bytes)", name, size);
  if (in[2] != 8)
    return ioupos__fail(IOUPOS_EFORMAT, "%s: gzip compression method %d is not deflate (8)",
                        name, in[2]);
  flg = in[3];
  if (flg & 0xE0)
    return ioupos__fail(IOUPOS_EFORMAT, "%s: corrupt gzip header (reserved flag bits 0x%02x)",
                        name, flg & 0xE0);
  if (flg & 4) { /* FEXTRA */
    size_t xlen;
    if (pos + 2 > size) goto truncated;
    xlen = (size_t)in[pos] | (size_t)in[pos + 1] << 8;
    pos += 2;
    if (xlen > size - pos) goto truncated;
    pos += xlen;
  }
  if (flg & 8) { /* FNAME */
    while (pos < size && in[pos]) ++pos;
    if (pos >= size) goto truncated;
    ++pos;
  }
  if (flg & 16) { /* FCOMMENT */
    while (pos < size && in[pos]) ++pos;
    if (pos >= size) goto truncated;
    ++pos;
  }
  if (flg & 2) pos += 2; /* FHCRC */
  if (pos + 8 > size) goto truncated;
  if (size - pos > (size_t)INT_MAX)
    return ioupos__fail(IOUPOS_ERANGE, "%s: gzip stream larger than 2 GiB is not supported", name);
  crc = ioupos__le32(in + size - 8);
  isize = ioupos__le32(in + size - 4);
  /* initial output guess: ISIZE, bounded by deflate's maximum ratio (1032:1) */
  cap = 1032.0 * (double)(size - pos) + 65536.0;
  guess = (double)isize < cap ? (int)(isize > (uint32_t)INT_MAX ? INT_MAX : isize) : (int)(cap > INT_MAX ? INT_MAX : cap);
  if (guess < 16384) guess = 16384;
  /* the trailer stays in the input: stb's decoder wants slack after the last code */
  dec = stbi_zlib_decode_malloc_guesssize_headerflag((const char *)in + pos, (int)(size - pos),
                                                     guess, &outlen, 0);
  if (!dec)
    return ioupos__fail(IOUPOS_EFORMAT, "%s: truncated or corrupt gzip data (inflate failed: %s)",
                        name, stbi_failure_reason() ? stbi_failure_reason() : "?");
  if ((uint32_t)outlen != isize || ioupos_crc32(0, dec, (size_t)outlen) != crc) {
    STBI_FREE(dec);
    return ioupos__fail(IOUPOS_EFORMAT,
                        "%s: truncated or corrupt gzip data (CRC32 / length check failed)", name);
  }
  /* hand the buffer over in our allocator */
  *out = (unsigned char *)IOUPOS_MALLOC(outlen > 0 ? (size_t)outlen : 1);
  if (!*out) {
    STBI_FREE(dec);
    return ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory (%d bytes)", name, outlen);
  }
  memcpy(*out, dec, (size_t)outlen);
  STBI_FREE(dec);
  *out_size = (size_t)outlen;
  return IOUPOS_OK;
truncated:
  return ioupos__fail(IOUPOS_EFORMAT, "%s: truncated gzip file (header incomplete)", name);
}

static void ioupos__put32le(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}

static int ioupos__gzip(const unsigned char *in, size_t size, unsigned char **out, size_t *out_size) {
  int zlen = 0;
  unsigned char *z, *g;
  size_t dlen;
  *out = NULL;
  *out_size = 0;
  if (size > (size_t)INT_MAX - 64)
    return ioupos__fail(IOUPOS_ERANGE, "gzip: %zu bytes is too large for stb's compressor", size);
  z = stbi_zlib_compress((unsigned char *)in, (int)size, &zlen, 5);
  if (!z || zlen < 6) {
    if (z) STBIW_FREE(z);
    return ioupos__fail(IOUPOS_ENOMEM, "gzip: compression failed (out of memory)");
  }
  dlen = (size_t)zlen - 6; /* strip the 2-byte zlib header and the Adler-32 trailer */
  g = (unsigned char *)IOUPOS_MALLOC(dlen + 18);
  if (!g) {
    STBIW_FREE(z);
    return ioupos__fail(IOUPOS_ENOMEM, "gzip: out of memory");
  }
  memset(g, 0, 10);
  g[0] = 0x1f;
  g[1] = 0x8b;
  g[2] = 8;
  g[9] = 255; /* OS unknown; MTIME 0: the output depends on the data only */
  memcpy(g + 10, z + 2, dlen);
  ioupos__put32le(g + 10 + dlen, ioupos_crc32(0, in, size));
  ioupos__put32le(g + 14 + dlen, (uint32_t)size);
  STBIW_FREE(z);
  *out = g;
  *out_size = dlen + 18;
  return IOUPOS_OK;
}

/* ---- NIfTI-1 reading ------------------------------------------------------------------------ */

typedef struct ioupos__hdr {
  const unsigned char *p;
  int swap;
} ioupos__hdr;

static uint32_t ioupos__rd32(const ioupos__hdr *h, size_t off) {
  const unsigned char *b = h->p + off;
  return h->swap ? (uint32_t)b[3] | (uint32_t)b[2] << 8 | (uint32_t)b[1] << 16 | (uint32_t)b[0] << 24
                 : ioupos__le32(b);
}
static int ioupos__rd16(const ioupos__hdr *h, size_t off) {
  const unsigned char *b = h->p + off;
  uint16_t v = h->swap ? (uint16_t)(b[1] | b[0] << 8) : (uint16_t)(b[0] | b[1] << 8);
  return (int)(int16_t)v;
}
static double ioupos__rdf(const ioupos__hdr *h, size_t off) {
  uint32_t u = ioupos__rd32(h, off);
  float f;
  memcpy(&f, &u, 4);
  return (double)f;
}

static int ioupos__dtype_size(int dt) {
  switch (dt) {
    case IOUPOS_NIFTI_UINT8: case IOUPOS_NIFTI_INT8: return 1;
    case IOUPOS_NIFTI_INT16: case IOUPOS_NIFTI_UINT16: return 2;
    case IOUPOS_NIFTI_INT32: case IOUPOS_NIFTI_UINT32: case IOUPOS_NIFTI_FLOAT32: return 4;
    case IOUPOS_NIFTI_INT64: case IOUPOS_NIFTI_UINT64: case IOUPOS_NIFTI_FLOAT64: return 8;
    default: return 0;
  }
}

static const char *ioupos__dtype_name(int dt) {
  switch (dt) {
    case 1: return "binary (1 bit)";
    case 32: return "complex64";
    case 128: return "RGB24";
    case 1536: return "float128";
    case 1792: return "complex128";
    case 2048: return "complex256";
    case 2304: return "RGBA32";
    default: return "unknown";
  }
}

/* Element i of raw data as double. */
static double ioupos__load_elem(const unsigned char *src, int dt, int swap) {
  unsigned char b[8];
  int n = ioupos__dtype_size(dt), k;
  for (k = 0; k < n; ++k) b[k] = swap ? src[n - 1 - k] : src[k];
  /* b is now little-endian */
  switch (dt) {
    case IOUPOS_NIFTI_UINT8: return b[0];
    case IOUPOS_NIFTI_INT8: return (int8_t)b[0];
    case IOUPOS_NIFTI_INT16: return (int16_t)(uint16_t)(b[0] | b[1] << 8);
    case IOUPOS_NIFTI_UINT16: return (uint16_t)(b[0] | b[1] << 8);
    case IOUPOS_NIFTI_INT32: return (int32_t)ioupos__le32(b);
    case IOUPOS_NIFTI_UINT32: return ioupos__le32(b);
    case IOUPOS_NIFTI_FLOAT32: {
      uint32_t u = ioupos__le32(b);
      float f;
      memcpy(&f, &u, 4);
      return f;
    }
    default: {
      uint64_t u = (uint64_t)ioupos__le32(b) | (uint64_t)ioupos__le32(b + 4) << 32;
      if (dt == IOUPOS_NIFTI_INT64) return (double)(int64_t)u;
      if (dt == IOUPOS_NIFTI_UINT64) return (double)u;
      {
        double d;
        memcpy(&d, &u, 8);
        return d;
      }
    }
  }
}

/* nibabel's quat2mat (fillpositive for w) */
static int ioupos__quat_to_mat(double b, double c, double d, double m[3][3]) {
  double w2 = 1.0 - (b * b + c * c + d * d), w, nq, s, X, Y, Z;
  if (fabs(w2) < 3.0 * 1.1920928955078125e-07) w = 0.0;
  else if (w2 < 0) return 0;
  else w = sqrt(w2);
  nq = w * w + b * b + c * c + d * d;
  if (nq < 2.220446049250313e-16) {
    int r, k;
    for (r = 0; r < 3; ++r)
      for (k = 0; k < 3; ++k) m[r][k] = r == k;
    return 1;
  }
  s = 2.0 / nq;
  X = b * s; Y = c * s; Z = d * s;
  m[0][0] = 1.0 - (c * Y + d * Z); m[0][1] = b * Y - w * Z;         m[0][2] = b * Z + w * Y;
  m[1][0] = b * Y + w * Z;         m[1][1] = 1.0 - (b * X + d * Z); m[1][2] = c * Z - w * X;
  m[2][0] = b * Z - w * Y;         m[2][1] = c * Z + w * X;         m[2][2] = 1.0 - (b * X + c * Y);
  return 1;
}

IOUPOS_DEF int ioupos_nifti_read_memory(const void *data, size_t size, const char *name,
                                        ioupos_volume *vol) {
  const unsigned char *p = (const unsigned char *)data;
  unsigned char *plain = NULL;
  size_t psize = size, off, nvox, need, i;
  ioupos__hdr h;
  int dim[8], ndim, k, dt, bitpix, esize, st = IOUPOS_OK;
  double pix[4], slope, inter, vox_offset;
  int use_scale;
  if (!name) name = "(memory)";
  if (!vol) return ioupos__fail(IOUPOS_EINVAL, "%s: NULL volume", name);
  vol->data = NULL;
  vol->dim[0] = vol->dim[1] = vol->dim[2] = 0;
  ioupos__mat4_identity(vol->affine);
  if (!p && size) return ioupos__fail(IOUPOS_EINVAL, "%s: NULL data", name);
  if (size >= 2 && p[0] == 0x1f && p[1] == 0x8b) {
    st = ioupos__gunzip(p, size, name, &plain, &psize);
    if (st != IOUPOS_OK) return st;
    p = plain;
  }
  if (psize < 348) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: not a NIfTI-1 file (%zu bytes, shorter than the 348-byte header)",
                      name, psize);
    goto done;
  }
  h.p = p;
  h.swap = 0;
  if (ioupos__rd32(&h, 0) != 348) {
    h.swap = 1;
    if (ioupos__rd32(&h, 0) != 348) {
      h.swap = 0;
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: not a NIfTI-1 file (sizeof_hdr is %ld, not 348%s)", name,
                        (long)(int32_t)ioupos__rd32(&h, 0),
                        ioupos__rd32(&h, 0) == 540 ? "; NIfTI-2 is not supported" : "");
      goto done;
    }
  }
  if (memcmp(p + 344, "n+1\0", 4) != 0) {
    if (memcmp(p + 344, "ni1\0", 4) == 0)
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: two-file NIfTI (.hdr/.img, magic \"ni1\") is not supported", name);
    else
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: wrong magic (bytes 344-347 are %02x %02x %02x %02x, not \"n+1\\0\")",
                        name, p[344], p[345], p[346], p[347]);
    goto done;
  }
  for (k = 0; k < 8; ++k) dim[k] = ioupos__rd16(&h, 40 + 2 * (size_t)k);
  ndim = dim[0];
  if (ndim < 1 || ndim > 7) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: absurd dimensions: dim[0] = %d (must be 1..7)", name, ndim);
    goto done;
  }
  for (k = 1; k <= ndim; ++k)
    if (dim[k] <= 0 || dim[k] > 65535) {
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: absurd dimensions: dim[%d] = %d (must be 1..65535)", name, k,
                        dim[k]);
      goto done;
    }
  if (ndim < 3) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: only 3D volumes are supported (dim[0] = %d)", name, ndim);
    goto done;
  }
  for (k = 4; k <= ndim; ++k)
    if (dim[k] != 1) {
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: only 3D volumes are supported (dim[%d] = %d, a %dD image)", name,
                        k, dim[k], ndim);
      goto done;
    }
  if ((double)dim[1] * dim[2] * dim[3] > 2147483648.0) {
    st = ioupos__fail(IOUPOS_ERANGE, "%s: absurd dimensions: %dx%dx%d is more than 2^31 voxels", name, dim[1],
                      dim[2], dim[3]);
    goto done;
  }
  dt = ioupos__rd16(&h, 70);
  bitpix = ioupos__rd16(&h, 72);
  esize = ioupos__dtype_size(dt);
  if (!esize) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: unsupported datatype %d (%s)", name, dt, ioupos__dtype_name(dt));
    goto done;
  }
  (void)bitpix; /* nibabel trusts datatype over bitpix; so do we */
  vox_offset = ioupos__rdf(&h, 108);
  if (!(vox_offset >= 0) || vox_offset > 1e15) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: invalid vox_offset %g", name, vox_offset);
    goto done;
  }
  off = (size_t)vox_offset;
  if (off < 352) off = 352; /* nibabel's fix for single-file NIfTI */
  nvox = (size_t)dim[1] * (size_t)dim[2] * (size_t)dim[3];
  if (off > psize) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: vox_offset %zu is beyond the end of the file (%zu bytes)", name,
                      off, psize);
    goto done;
  }
  need = nvox * (size_t)esize;
  if (psize - off < need) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: short data: %dx%dx%d voxels of %d bytes need %zu bytes after offset "
                      "%zu, the file has %zu", name, dim[1], dim[2], dim[3], esize, need, off, psize - off);
    goto done;
  }
  /* pixdim with nibabel's fixes */
  pix[0] = ioupos__rdf(&h, 76);
  if (pix[0] != 1.0 && pix[0] != -1.0) pix[0] = 1.0;
  for (k = 1; k <= 3; ++k) {
    pix[k] = ioupos__rdf(&h, 76 + 4 * (size_t)k);
    if (pix[k] == 0.0) pix[k] = 1.0;
    pix[k] = fabs(pix[k]);
  }
  /* affine as nibabel's get_best_affine */
  if (ioupos__rd16(&h, 254) != 0) { /* sform */
    int r, c;
    for (r = 0; r < 3; ++r)
      for (c = 0; c < 4; ++c) vol->affine[r][c] = ioupos__rdf(&h, 280 + 16 * (size_t)r + 4 * (size_t)c);
  } else if (ioupos__rd16(&h, 252) != 0) { /* qform */
    double m[3][3];
    int r, c;
    if (!ioupos__quat_to_mat(ioupos__rdf(&h, 256), ioupos__rdf(&h, 260), ioupos__rdf(&h, 264), m)) {
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: invalid qform quaternion (b^2 + c^2 + d^2 > 1)", name);
      goto done;
    }
    for (r = 0; r < 3; ++r) {
      for (c = 0; c < 3; ++c) vol->affine[r][c] = m[r][c] * (c == 2 ? pix[3] * pix[0] : pix[c + 1]);
      vol->affine[r][3] = ioupos__rdf(&h, 268 + 4 * (size_t)r);
    }
  } else { /* pixdim diagonal, origin at the centre, x flipped */
    int r;
    for (r = 0; r < 3; ++r) {
      double z = r == 0 ? -pix[1] : pix[r + 1];
      vol->affine[r][r] = z;
      vol->affine[r][3] = -((double)(dim[r + 1] - 1) / 2.0) * z;
    }
  }
  for (k = 0; k < 12; ++k)
    if (!isfinite(vol->affine[k / 4][k % 4])) {
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: the affine (sform/qform) has a non-finite entry", name);
      goto done;
    }
  slope = ioupos__rdf(&h, 112);
  inter = ioupos__rdf(&h, 116);
  use_scale = slope != 0.0 && isfinite(slope);
  if (use_scale && !isfinite(inter)) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: valid scl_slope %g but invalid scl_inter %g", name, slope, inter);
    goto done;
  }
  vol->data = (float *)ioupos__calloc(nvox, sizeof(float));
  if (!vol->data) {
    st = ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory for %dx%dx%d voxels", name, dim[1], dim[2], dim[3]);
    goto done;
  }
  {
    const unsigned char *src = p + off;
    int fast = !h.swap && dt == IOUPOS_NIFTI_INT16;
    for (i = 0; i < nvox; ++i) {
      double v = fast ? (double)(int16_t)(uint16_t)(src[2 * i] | src[2 * i + 1] << 8)
                      : ioupos__load_elem(src + i * (size_t)esize, dt, h.swap);
      if (use_scale) v = v * slope + inter;
      if (v > 3.4028234663852886e38) v = HUGE_VAL; /* out of float range: +-inf, not UB */
      else if (v < -3.4028234663852886e38) v = -HUGE_VAL;
      vol->data[i] = (float)v;
    }
  }
  vol->dim[0] = dim[1];
  vol->dim[1] = dim[2];
  vol->dim[2] = dim[3];
done:
  IOUPOS_FREE(plain);
  if (st != IOUPOS_OK) {
    IOUPOS_FREE(vol->data);
    vol->data = NULL;
    vol->dim[0] = vol->dim[1] = vol->dim[2] = 0;
  }
  return st;
}

IOUPOS_DEF int ioupos_nifti_read(const char *path, ioupos_volume *vol) {
  void *buf;
  size_t size;
  int st;
  if (!path || !vol) return ioupos__fail(IOUPOS_EINVAL, "ioupos_nifti_read: NULL argument");
  vol->data = NULL;
  vol->dim[0] = vol->dim[1] = vol->dim[2] = 0;
  st = ioupos_read_file(path, &buf, &size);
  if (st != IOUPOS_OK) return st;
  st = ioupos_nifti_read_memory(buf, size, path, vol);
  IOUPOS_FREE(buf);
  return st;
}

/* ---- NIfTI-1 writing ------------------------------------------------------------------------ */

static void ioupos__put16le(unsigned char *p, int v) {
  p[0] = (unsigned char)(v & 0xFF);
  p[1] = (unsigned char)((v >> 8) & 0xFF);
}
static void ioupos__putf(unsigned char *p, double v) {
  float f = (float)v;
  uint32_t u;
  memcpy(&u, &f, 4);
  ioupos__put32le(p, u);
}

/* Orthonormal polar factor of m (Newton iteration); 0 if m is singular. */
static int ioupos__polar3(const double m_in[3][3], double q[3][3]) {
  double m[3][3];
  int it, r, c;
  memcpy(m, m_in, sizeof m);
  for (it = 0; it < 100; ++it) {
    double det, inv[3][3], diff = 0.0;
    inv[0][0] = m[1][1] * m[2][2] - m[1][2] * m[2][1];
    inv[0][1] = m[0][2] * m[2][1] - m[0][1] * m[2][2];
    inv[0][2] = m[0][1] * m[1][2] - m[0][2] * m[1][1];
    inv[1][0] = m[1][2] * m[2][0] - m[1][0] * m[2][2];
    inv[1][1] = m[0][0] * m[2][2] - m[0][2] * m[2][0];
    inv[1][2] = m[0][2] * m[1][0] - m[0][0] * m[1][2];
    inv[2][0] = m[1][0] * m[2][1] - m[1][1] * m[2][0];
    inv[2][1] = m[0][1] * m[2][0] - m[0][0] * m[2][1];
    inv[2][2] = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    det = m[0][0] * inv[0][0] + m[0][1] * inv[1][0] + m[0][2] * inv[2][0];
    if (!(fabs(det) > 1e-12) || !isfinite(det)) return 0;
    for (r = 0; r < 3; ++r)
      for (c = 0; c < 3; ++c) {
        double n = 0.5 * (m[r][c] + inv[c][r] / det); /* (m + m^-T) / 2 */
        diff += fabs(n - m[r][c]);
        q[r][c] = n;
      }
    memcpy(m, q, sizeof m);
    if (diff < 1e-15) break;
  }
  return 1;
}

IOUPOS_DEF int ioupos_nifti_encode(const ioupos_volume *vol, int datatype, int gzip,
                                   unsigned char **out, size_t *size) {
  unsigned char *buf;
  size_t nvox, i, total;
  int esize = ioupos__dtype_size(datatype), r, c, st;
  double sp[3], rot[3][3], q[3][3], qfac = 1.0, qa, qb, qc, qd;
  *out = NULL;
  *size = 0;
  if (!vol || !vol->data || vol->dim[0] <= 0 || vol->dim[1] <= 0 || vol->dim[2] <= 0)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_nifti_write: empty volume");
  if (!esize) return ioupos__fail(IOUPOS_EINVAL, "ioupos_nifti_write: unsupported datatype %d", datatype);
  for (r = 0; r < 3; ++r)
    if (vol->dim[r] > 32767)
      return ioupos__fail(IOUPOS_ERANGE, "ioupos_nifti_write: dimension %d exceeds NIfTI-1's 32767",
                          vol->dim[r]);
  nvox = (size_t)vol->dim[0] * (size_t)vol->dim[1] * (size_t)vol->dim[2];
  total = 352 + nvox * (size_t)esize;
  buf = (unsigned char *)ioupos__calloc(total, 1);
  if (!buf) return ioupos__fail(IOUPOS_ENOMEM, "ioupos_nifti_write: out of memory (%zu bytes)", total);
  ioupos__put32le(buf, 348);
  buf[38] = 'r';
  ioupos__put16le(buf + 40, 3);
  for (r = 0; r < 3; ++r) ioupos__put16le(buf + 42 + 2 * r, vol->dim[r]);
  for (r = 3; r < 7; ++r) ioupos__put16le(buf + 42 + 2 * r, 1);
  ioupos__put16le(buf + 70, datatype);
  ioupos__put16le(buf + 72, esize * 8);
  ioupos_volume_spacing(vol, sp);
  /* qform: rotation = polar factor of the column-normalised matrix, det -1 -> qfac -1 */
  for (r = 0; r < 3; ++r)
    for (c = 0; c < 3; ++c) rot[r][c] = vol->affine[r][c] / (sp[c] > 0 ? sp[c] : 1.0);
  {
    double det = rot[0][0] * (rot[1][1] * rot[2][2] - rot[1][2] * rot[2][1]) -
                 rot[0][1] * (rot[1][0] * rot[2][2] - rot[1][2] * rot[2][0]) +
                 rot[0][2] * (rot[1][0] * rot[2][1] - rot[1][1] * rot[2][0]);
    if (det < 0) {
      qfac = -1.0;
      for (r = 0; r < 3; ++r) rot[r][2] = -rot[r][2];
    }
  }
  if (!ioupos__polar3(rot, q)) {
    for (r = 0; r < 3; ++r)
      for (c = 0; c < 3; ++c) q[r][c] = r == c;
  }
  { /* rotation matrix -> quaternion (a, b, c, d), a >= 0 */
    double t = q[0][0] + q[1][1] + q[2][2] + 1.0;
    if (t > 0.5) {
      qa = 0.5 * sqrt(t);
      qb = 0.25 * (q[2][1] - q[1][2]) / qa;
      qc = 0.25 * (q[0][2] - q[2][0]) / qa;
      qd = 0.25 * (q[1][0] - q[0][1]) / qa;
    } else {
      double xd = 1.0 + q[0][0] - (q[1][1] + q[2][2]), yd = 1.0 + q[1][1] - (q[0][0] + q[2][2]);
      double zd = 1.0 + q[2][2] - (q[0][0] + q[1][1]);
      if (xd > 1.0) {
        qb = 0.5 * sqrt(xd);
        qc = 0.25 * (q[0][1] + q[1][0]) / qb;
        qd = 0.25 * (q[0][2] + q[2][0]) / qb;
        qa = 0.25 * (q[2][1] - q[1][2]) / qb;
      } else if (yd > 1.0) {
        qc = 0.5 * sqrt(yd);
        qb = 0.25 * (q[0][1] + q[1][0]) / qc;
        qd = 0.25 * (q[1][2] + q[2][1]) / qc;
        qa = 0.25 * (q[0][2] - q[2][0]) / qc;
      } else {
        qd = 0.5 * sqrt(zd);
        qb = 0.25 * (q[0][2] + q[2][0]) / qd;
        qc = 0.25 * (q[1][2] + q[2][1]) / qd;
        qa = 0.25 * (q[1][0] - q[0][1]) / qd;
      }
      if (qa < 0.0) qa = -qa, qb = -qb, qc = -qc, qd = -qd;
    }
    (void)qa;
  }
  ioupos__putf(buf + 76, qfac);
  for (r = 0; r < 3; ++r) ioupos__putf(buf + 80 + 4 * r, sp[r]);
  for (r = 4; r < 8; ++r) ioupos__putf(buf + 76 + 4 * r, 1.0);
  ioupos__putf(buf + 108, 352.0);
  ioupos__putf(buf + 112, 1.0); /* scl_slope */
  ioupos__putf(buf + 116, 0.0); /* scl_inter */
  buf[123] = 2 | 8;             /* mm, s */
  memcpy(buf + 148, "ioupos " IOUPOS_VERSION, sizeof("ioupos " IOUPOS_VERSION) - 1);
  ioupos__put16le(buf + 252, 1); /* qform_code scanner */
  ioupos__put16le(buf + 254, 1); /* sform_code scanner */
  ioupos__putf(buf + 256, qb);
  ioupos__putf(buf + 260, qc);
  ioupos__putf(buf + 264, qd);
  for (r = 0; r < 3; ++r) ioupos__putf(buf + 268 + 4 * r, vol->affine[r][3]);
  for (r = 0; r < 3; ++r)
    for (c = 0; c < 4; ++c) ioupos__putf(buf + 280 + 16 * r + 4 * c, vol->affine[r][c]);
  memcpy(buf + 344, "n+1\0", 4);
  for (i = 0; i < nvox; ++i) {
    unsigned char *d = buf + 352 + i * (size_t)esize;
    double v = vol->data[i];
    if (datatype == IOUPOS_NIFTI_FLOAT32) {
      float f = vol->data[i];
      uint32_t u;
      memcpy(&u, &f, 4);
      ioupos__put32le(d, u);
      continue;
    }
    if (datatype == IOUPOS_NIFTI_FLOAT64) {
      uint64_t u;
      memcpy(&u, &v, 8);
      ioupos__put32le(d, (uint32_t)u);
      ioupos__put32le(d + 4, (uint32_t)(u >> 32));
      continue;
    }
    {
      double lo, hi, rv;
      uint64_t u;
      switch (datatype) {
        case IOUPOS_NIFTI_UINT8: lo = 0; hi = 255; break;
        case IOUPOS_NIFTI_INT8: lo = -128; hi = 127; break;
        case IOUPOS_NIFTI_INT16: lo = -32768; hi = 32767; break;
        case IOUPOS_NIFTI_UINT16: lo = 0; hi = 65535; break;
        case IOUPOS_NIFTI_INT32: lo = -2147483648.0; hi = 2147483647.0; break;
        case IOUPOS_NIFTI_UINT32: lo = 0; hi = 4294967295.0; break;
        case IOUPOS_NIFTI_INT64: lo = -9223372036854775808.0; hi = 9223372036854774784.0; break;
        default: lo = 0; hi = 18446744073709549568.0; break;
      }
      rv = v != v ? 0.0 : v < 0 ? -floor(-v + 0.5) : floor(v + 0.5);
      if (rv < lo) rv = lo;
      if (rv > hi) rv = hi;
      if (datatype == IOUPOS_NIFTI_UINT64 || (datatype != IOUPOS_NIFTI_INT64 && rv >= 0)) u = (uint64_t)rv;
      else u = (uint64_t)(int64_t)rv;
      for (r = 0; r < esize; ++r) d[r] = (unsigned char)(u >> (8 * r));
    }
  }
  if (!gzip) {
    *out = buf;
    *size = total;
    return IOUPOS_OK;
  }
  st = ioupos__gzip(buf, total, out, size);
  IOUPOS_FREE(buf);
  return st;
}

IOUPOS_DEF int ioupos_nifti_write(const char *path, const ioupos_volume *vol, int datatype) {
  unsigned char *bytes;
  size_t size, n;
  int st, gz;
  if (!path) return ioupos__fail(IOUPOS_EINVAL, "ioupos_nifti_write: NULL path");
  n = strlen(path);
  gz = n >= 3 && strcmp(path + n - 3, ".gz") == 0;
  st = ioupos_nifti_encode(vol, datatype, gz, &bytes, &size);
  if (st != IOUPOS_OK) {
    char why[400];
    snprintf(why, sizeof why, "%.399s", ioupos_failure_reason());
    return ioupos__fail(st, "%s: %s", path, why);
  }
  st = ioupos_write_file_atomic(path, bytes, size);
  IOUPOS_FREE(bytes);
  return st;
}

/* ---- orientation ---------------------------------------------------------------------------- */

IOUPOS_DEF int ioupos_volume_reorient_ras(ioupos_volume *vol) {
  double R[3][3], rs[3][3], zoom[3];
  int ornt[3][2], used_in[3] = {0, 0, 0}, order[3], a, b, r, c, n, identity = 1;
  if (!vol || !vol->data) return ioupos__fail(IOUPOS_EINVAL, "reorient: empty volume");
  /* io_orientation: column-normalise, polar decomposition, strongest input axis first */
  for (c = 0; c < 3; ++c) {
    zoom[c] = sqrt(vol->affine[0][c] * vol->affine[0][c] + vol->affine[1][c] * vol->affine[1][c] +
                   vol->affine[2][c] * vol->affine[2][c]);
    if (zoom[c] == 0.0) zoom[c] = 1.0;
    for (r = 0; r < 3; ++r) rs[r][c] = vol->affine[r][c] / zoom[c];
  }
  if (!ioupos__polar3(rs, R)) memcpy(R, rs, sizeof R);
  {
    double strength[3];
    for (c = 0; c < 3; ++c) {
      strength[c] = 0;
      for (r = 0; r < 3; ++r)
        if (R[r][c] * R[r][c] > strength[c]) strength[c] = R[r][c] * R[r][c];
    }
    for (a = 0; a < 3; ++a) order[a] = a;
    for (a = 1; a < 3; ++a) /* stable insertion sort, descending strength */
      for (b = a; b > 0 && strength[order[b]] > strength[order[b - 1]]; --b) {
        int t = order[b]; order[b] = order[b - 1]; order[b - 1] = t;
      }
  }
  for (n = 0; n < 3; ++n) {
    int in_ax = order[n], out_ax = 0, nonzero = 0;
    double best = -1.0;
    for (r = 0; r < 3; ++r) {
      if (fabs(R[r][in_ax]) > 1e-8) nonzero = 1;
      if (fabs(R[r][in_ax]) > best) best = fabs(R[r][in_ax]), out_ax = r;
    }
    if (!nonzero || used_in[out_ax])
      return ioupos__fail(IOUPOS_EFORMAT, "reorient: the affine is degenerate (input axis %d maps to no "
                                          "world axis)", in_ax);
    used_in[out_ax] = 1;
    ornt[in_ax][0] = out_ax;
    ornt[in_ax][1] = R[out_ax][in_ax] < 0 ? -1 : 1;
    for (c = 0; c < 3; ++c) R[out_ax][c] = 0.0;
  }
  for (a = 0; a < 3; ++a)
    if (ornt[a][0] != a || ornt[a][1] != 1) identity = 0;
  {
    /* inv_ornt_aff: output voxel o -> input voxel: in[a] = flip_a * o[ornt[a][0]] + shift_a */
    double M[4][4], na[4][4];
    ioupos_volume out;
    int odim[3], st;
    ioupos__mat4_identity(M);
    for (a = 0; a < 3; ++a) {
      for (c = 0; c < 4; ++c) M[a][c] = 0.0;
      M[a][ornt[a][0]] = ornt[a][1];
      M[a][3] = ornt[a][1] < 0 ? (double)(vol->dim[a] - 1) : 0.0;
    }
    ioupos__mat4_mul(na, vol->affine, M);
    if (identity) {
      memcpy(vol->affine, na, sizeof na);
      return IOUPOS_OK;
    }
    for (a = 0; a < 3; ++a) odim[ornt[a][0]] = vol->dim[a];
    st = ioupos_volume_alloc(&out, odim[0], odim[1], odim[2]);
    if (st != IOUPOS_OK) return st;
    {
      /* input strides per output axis, with flips */
      ptrdiff_t in_stride[3], step[3], base = 0;
      int i, j, k;
      in_stride[0] = 1;
      in_stride[1] = vol->dim[0];
      in_stride[2] = (ptrdiff_t)vol->dim[0] * vol->dim[1];
      for (a = 0; a < 3; ++a) {
        int m = ornt[a][0];
        step[m] = ornt[a][1] * in_stride[a];
        if (ornt[a][1] < 0) base += (ptrdiff_t)(vol->dim[a] - 1) * in_stride[a];
      }
      for (k = 0; k < odim[2]; ++k)
        for (j = 0; j < odim[1]; ++j) {
          float *dst = out.data + ((size_t)k * odim[1] + j) * odim[0];
          const float *src = vol->data + base + k * step[2] + j * step[1];
          for (i = 0; i < odim[0]; ++i) dst[i] = src[i * step[0]];
        }
    }
    memcpy(out.affine, na, sizeof na);
    ioupos_volume_free(vol);
    *vol = out;
  }
  return IOUPOS_OK;
}

/* ---- resampling (MONAI Spacing) ------------------------------------------------------------- */

IOUPOS_DEF int ioupos_volume_resample_grid(const ioupos_volume *vol, const double spacing[3],
                                           int out_dim[3], double out_affine[4][4]) {
  double orig[3], outd[3], g[3][3], L[3][3], zs[3][3], zinv[3][3], rot[3][3], N[4][4], X[4][4];
  double corners_out[8][3], corners_w[8][3], lo[3], hi[3], oshape[3];
  int r, c, k, i, found = -1;
  ioupos_volume_spacing(vol, orig);
  for (k = 0; k < 3; ++k) {
    if (!(spacing[k] > 0) || !isfinite(spacing[k]))
      return ioupos__fail(IOUPOS_EINVAL, "resample: target spacing %g is not positive", spacing[k]);
    outd[k] = (spacing[k] - 1e-3 <= orig[k] && orig[k] <= spacing[k] + 1e-3) ? orig[k] : spacing[k];
  }
  /* zoom_affine(diagonal=False): rzs = rotation @ zs, zs = chol(rzs^T rzs)^T */
  for (r = 0; r < 3; ++r)
    for (c = 0; c < 3; ++c) {
      g[r][c] = 0;
      for (k = 0; k < 3; ++k) g[r][c] += vol->affine[k][r] * vol->affine[k][c];
    }
  memset(L, 0, sizeof L);
  for (r = 0; r < 3; ++r)
    for (c = 0; c <= r; ++c) {
      double s = g[r][c];
      for (k = 0; k < c; ++k) s -= L[r][k] * L[c][k];
      if (r == c) {
        if (!(s > 0)) return ioupos__fail(IOUPOS_EFORMAT, "resample: the affine is singular");
        L[r][r] = sqrt(s);
      } else {
        L[r][c] = s / L[c][c];
      }
    }
  for (r = 0; r < 3; ++r)
    for (c = 0; c < 3; ++c) zs[r][c] = L[c][r];
  /* inverse of the upper-triangular zs */
  memset(zinv, 0, sizeof zinv);
  for (c = 0; c < 3; ++c) {
    zinv[c][c] = 1.0 / zs[c][c];
    for (r = c - 1; r >= 0; --r) {
      double s = 0;
      for (k = r + 1; k <= c; ++k) s += zs[r][k] * zinv[k][c];
      zinv[r][c] = -s / zs[r][r];
    }
  }
  for (r = 0; r < 3; ++r)
    for (c = 0; c < 3; ++c) {
      rot[r][c] = 0;
      for (k = 0; k < 3; ++k) rot[r][c] += vol->affine[r][k] * zinv[k][c];
    }
  ioupos__mat4_identity(N);
  for (r = 0; r < 3; ++r)
    for (c = 0; c < 3; ++c) N[r][c] = rot[r][c] * outd[c];
  /* compute_shape_offset(scale_extent=False) */
  if (!ioupos__mat4_solve(N, vol->affine, X))
    return ioupos__fail(IOUPOS_EFORMAT, "resample: the output affine is singular");
  for (i = 0; i < 8; ++i) {
    double cin[4];
    cin[0] = (i & 4) ? vol->dim[0] - 1.0 : 0.0; /* meshgrid "ij": axis 0 slowest */
    cin[1] = (i & 2) ? vol->dim[1] - 1.0 : 0.0;
    cin[2] = (i & 1) ? vol->dim[2] - 1.0 : 0.0;
    cin[3] = 1.0;
    for (r = 0; r < 3; ++r) {
      double s = 0.0, w = 0.0;
      for (k = 0; k < 4; ++k) s += X[r][k] * cin[k];
      for (k = 0; k < 4; ++k) w += vol->affine[r][k] * cin[k];
      corners_out[i][r] = s;
      corners_w[i][r] = w;
    }
  }
  for (r = 0; r < 3; ++r) {
    lo[r] = hi[r] = corners_out[0][r];
    for (i = 1; i < 8; ++i) {
      if (corners_out[i][r] < lo[r]) lo[r] = corners_out[i][r];
      if (corners_out[i][r] > hi[r]) hi[r] = corners_out[i][r];
    }
    oshape[r] = nearbyint(hi[r] - lo[r] + 1.0); /* np.round: half to even */
    if (!(oshape[r] >= 1.0) || oshape[r] > 65535.0)
      return ioupos__fail(IOUPOS_ERANGE, "resample: output size %g along axis %d is out of range", oshape[r], r);
  }
  if (oshape[0] * oshape[1] * oshape[2] > 2147483648.0)
    return ioupos__fail(IOUPOS_ERANGE, "resample: output %gx%gx%g has more than 2^31 voxels", oshape[0],
                        oshape[1], oshape[2]);
  for (i = 0; i < 8 && found < 0; ++i) {
    int ok = 1;
    for (r = 0; r < 3; ++r) {
      double m = corners_out[0][r] - corners_out[i][r];
      int j;
      for (j = 1; j < 8; ++j)
        if (corners_out[j][r] - corners_out[i][r] < m) m = corners_out[j][r] - corners_out[i][r];
      if (!(fabs(m) <= 1e-8)) ok = 0;
    }
    if (ok) found = i;
  }
  memcpy(out_affine, N, sizeof N);
  for (r = 0; r < 3; ++r) {
    if (found >= 0) {
      out_affine[r][3] = corners_w[found][r];
    } else {
      double s = 0.0, t = 0.0;
      for (k = 0; k < 3; ++k) s += vol->affine[r][k] * (vol->dim[k] / 2.0);
      for (k = 0; k < 3; ++k) t += N[r][k] * (oshape[k] / 2.0);
      out_affine[r][3] = s + vol->affine[r][3] - t;
    }
    out_dim[r] = (int)oshape[r];
  }
  return IOUPOS_OK;
}

/* torch.linspace(-1, 1, n) (FMA form, as its vectorised CPU kernel) * (n - 1) / n */
static void ioupos__torch_base_grid(int n, double *out) {
  int i;
  if (n <= 1) {
    if (n == 1) out[0] = 0.0;
    return;
  }
  {
    double step = 2.0 / (double)(n - 1);
    int half = n / 2;
    for (i = 0; i < n; ++i) {
      double v = i < half ? fma(step, (double)i, -1.0) : fma(-step, (double)(n - i - 1), 1.0);
      out[i] = v * (double)(n - 1) / (double)n;
    }
  }
}

IOUPOS_DEF int ioupos_volume_resample(ioupos_volume *vol, const double spacing[3], int nearest) {
  double na[4][4], X[4][4], S[4][4], Dinv[4][4], M[4][4], T[4][4];
  int odim[3], st, r, c, k, unchanged;
  ioupos_volume out;
  double *lin[3] = {NULL, NULL, NULL};
  if (!vol || !vol->data) return ioupos__fail(IOUPOS_EINVAL, "resample: empty volume");
  st = ioupos_volume_resample_grid(vol, spacing, odim, na);
  if (st != IOUPOS_OK) return st;
  if (!ioupos__mat4_solve(vol->affine, na, X))
    return ioupos__fail(IOUPOS_EFORMAT, "resample: the input affine is singular");
  /* MONAI skips resampling (and keeps the input affine) when nothing changes */
  unchanged = odim[0] == vol->dim[0] && odim[1] == vol->dim[1] && odim[2] == vol->dim[2];
  if (unchanged) {
    int same = 1, ident = 1;
    for (r = 0; r < 4; ++r)
      for (c = 0; c < 4; ++c) {
        if (!(fabs(vol->affine[r][c] - na[r][c]) <= 1e-3 + 1e-5 * fabs(na[r][c]))) same = 0;
        if (!(fabs(X[r][c] - (r == c)) <= 1e-3 + 1e-5 * (r == c))) ident = 0;
      }
    unchanged = same || ident;
  }
  if (unchanged) return IOUPOS_OK;
  /* theta = S_src @ xform @ inv(S_dst), normalised coordinates (align_corners False) */
  ioupos__mat4_identity(S);
  ioupos__mat4_identity(Dinv);
  for (k = 0; k < 3; ++k) {
    double d = 2.0 / (double)odim[k], t = 1.0 / (double)odim[k] - 1.0, rcp = 1.0 / d;
    S[k][k] = 2.0 / (double)vol->dim[k];
    S[k][3] = 1.0 / (double)vol->dim[k] - 1.0;
    Dinv[k][k] = rcp;
    Dinv[k][3] = -t * rcp;
  }
  ioupos__mat4_mul(M, S, X);
  ioupos__mat4_mul(T, M, Dinv);
  st = ioupos_volume_alloc(&out, odim[0], odim[1], odim[2]);
  if (st != IOUPOS_OK) return st;
  for (k = 0; k < 3; ++k) {
    lin[k] = (double *)ioupos__calloc((size_t)odim[k], sizeof(double));
    if (!lin[k]) {
      for (c = 0; c < k; ++c) IOUPOS_FREE(lin[c]);
      ioupos_volume_free(&out);
      return ioupos__fail(IOUPOS_ENOMEM, "resample: out of memory");
    }
    ioupos__torch_base_grid(odim[k], lin[k]);
  }
  {
    const int nx = vol->dim[0], ny = vol->dim[1], nz = vol->dim[2];
    const size_t sxy = (size_t)nx * ny;
    const float *src = vol->data;
    int i, j;
    for (k = 0; k < odim[2]; ++k)
      for (j = 0; j < odim[1]; ++j) {
        float *dst = out.data + ((size_t)k * odim[1] + j) * odim[0];
        double pk[3], pj[3];
        for (r = 0; r < 3; ++r) {
          pk[r] = lin[2][k] * T[r][2];
          pj[r] = lin[1][j] * T[r][1];
        }
        for (i = 0; i < odim[0]; ++i) {
          double ix[3];
          for (r = 0; r < 3; ++r) {
            /* affine_grid: grid = base (W, H, D, 1) @ theta^T; then unnormalise and clip */
            double gv = ((pk[r] + pj[r]) + lin[0][i] * T[r][0]) + T[r][3];
            double n = (double)vol->dim[r];
            double x = ((gv + 1.0) * n - 1.0) / 2.0;
            if (!(x > 0.0)) x = 0.0; /* border padding (NaN -> 0 too) */
            if (x > n - 1.0) x = n - 1.0;
            ix[r] = x;
          }
          if (nearest) {
            int a = (int)nearbyint(ix[0]), b = (int)nearbyint(ix[1]), cc = (int)nearbyint(ix[2]);
            dst[i] = src[(size_t)cc * sxy + (size_t)b * nx + a];
          } else {
            int x0 = (int)floor(ix[0]), y0 = (int)floor(ix[1]), z0 = (int)floor(ix[2]);
            int x1 = x0 + 1, y1 = y0 + 1, z1 = z0 + 1;
            double tx = ix[0] - x0, ty = ix[1] - y0, tz = ix[2] - z0;
            double wx0 = (x1 - ix[0]), wy0 = (y1 - ix[1]), wz0 = (z1 - ix[2]);
            double acc = 0.0;
            int xs[2], ys[2], zs[2], a, b, cc;
            double wxs[2], wys[2], wzs[2];
            xs[0] = x0; xs[1] = x1; ys[0] = y0; ys[1] = y1; zs[0] = z0; zs[1] = z1;
            wxs[0] = wx0; wxs[1] = tx; wys[0] = wy0; wys[1] = ty; wzs[0] = wz0; wzs[1] = tz;
            for (cc = 0; cc < 2; ++cc) {
              if (zs[cc] >= nz) continue;
              for (b = 0; b < 2; ++b) {
                if (ys[b] >= ny) continue;
                for (a = 0; a < 2; ++a) {
                  if (xs[a] >= nx) continue;
                  acc += (double)src[(size_t)zs[cc] * sxy + (size_t)ys[b] * nx + xs[a]] *
                         (wxs[a] * wys[b] * wzs[cc]);
                }
              }
            }
            dst[i] = (float)acc;
          }
        }
      }
  }
  for (k = 0; k < 3; ++k) IOUPOS_FREE(lin[k]);
  memcpy(out.affine, na, sizeof na);
  ioupos_volume_free(vol);
  *vol = out;
  return IOUPOS_OK;
}

/* ---- intensity, crop, pad ------------------------------------------------------------------- */

IOUPOS_DEF void ioupos_volume_window(ioupos_volume *vol, double a_min, double a_max) {
  size_t i, n;
  float lo = (float)a_min, range = (float)(a_max - a_min);
  if (!vol || !vol->data) return;
  n = (size_t)vol->dim[0] * vol->dim[1] * vol->dim[2];
  for (i = 0; i < n; ++i) {
    float v = vol->data[i] - lo;
    if (range != 0.0f) v = v / range;
    if (v < 0.0f) v = 0.0f;
    if (v > 1.0f) v = 1.0f;
    vol->data[i] = v;
  }
}

IOUPOS_DEF void ioupos_volume_foreground_box(const ioupos_volume *vol, int lo[3], int hi[3]) {
  int i, j, k, any = 0;
  lo[0] = lo[1] = lo[2] = 0;
  hi[0] = hi[1] = hi[2] = 0;
  if (!vol || !vol->data) return;
  lo[0] = vol->dim[0];
  lo[1] = vol->dim[1];
  lo[2] = vol->dim[2];
  for (k = 0; k < vol->dim[2]; ++k)
    for (j = 0; j < vol->dim[1]; ++j) {
      const float *row = vol->data + ((size_t)k * vol->dim[1] + j) * vol->dim[0];
      int first = -1, last = -1;
      for (i = 0; i < vol->dim[0]; ++i)
        if (row[i] > 0.0f) {
          if (first < 0) first = i;
          last = i;
        }
      if (first < 0) continue;
      any = 1;
      if (first < lo[0]) lo[0] = first;
      if (last + 1 > hi[0]) hi[0] = last + 1;
      if (j < lo[1]) lo[1] = j;
      if (j + 1 > hi[1]) hi[1] = j + 1;
      if (k < lo[2]) lo[2] = k;
      if (k + 1 > hi[2]) hi[2] = k + 1;
    }
  if (!any) lo[0] = lo[1] = lo[2] = hi[0] = hi[1] = hi[2] = 0;
}

/* Copy the box [lo, hi) of vol (may reach outside: zeros there) into a new volume. */
static int ioupos__subvolume(ioupos_volume *vol, const int lo[3], const int hi[3]) {
  ioupos_volume out;
  int st, j, k, r, c;
  st = ioupos_volume_alloc(&out, hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]);
  if (st != IOUPOS_OK) return st;
  for (k = 0; k < out.dim[2]; ++k) {
    int sk = k + lo[2];
    if (sk < 0 || sk >= vol->dim[2]) continue;
    for (j = 0; j < out.dim[1]; ++j) {
      int sj = j + lo[1], i0 = lo[0] < 0 ? -lo[0] : 0;
      int i1 = hi[0] > vol->dim[0] ? vol->dim[0] - lo[0] : out.dim[0];
      if (sj < 0 || sj >= vol->dim[1] || i1 <= i0) continue;
      memcpy(out.data + ((size_t)k * out.dim[1] + j) * out.dim[0] + i0,
             vol->data + ((size_t)sk * vol->dim[1] + sj) * vol->dim[0] + lo[0] + i0,
             (size_t)(i1 - i0) * sizeof(float));
    }
  }
  /* affine @ translate(lo) */
  memcpy(out.affine, vol->affine, sizeof out.affine);
  for (r = 0; r < 3; ++r) {
    double t = vol->affine[r][3];
    for (c = 0; c < 3; ++c) t += vol->affine[r][c] * lo[c];
    out.affine[r][3] = t;
  }
  ioupos_volume_free(vol);
  *vol = out;
  return IOUPOS_OK;
}

IOUPOS_DEF int ioupos_volume_crop(ioupos_volume *vol, const int lo[3], const int hi[3]) {
  int k;
  if (!vol || !vol->data) return ioupos__fail(IOUPOS_EINVAL, "crop: empty volume");
  for (k = 0; k < 3; ++k)
    if (lo[k] < 0 || hi[k] > vol->dim[k] || lo[k] >= hi[k])
      return ioupos__fail(IOUPOS_EINVAL, "crop: box [%d, %d) on axis %d is empty or outside 0..%d", lo[k],
                          hi[k], k, vol->dim[k]);
  return ioupos__subvolume(vol, lo, hi);
}

IOUPOS_DEF int ioupos_volume_pad_xy(ioupos_volume *vol, int min_x, int min_y) {
  int lo[3], hi[3], need[2], k;
  if (!vol || !vol->data) return ioupos__fail(IOUPOS_EINVAL, "pad: empty volume");
  need[0] = min_x - vol->dim[0];
  need[1] = min_y - vol->dim[1];
  if (need[0] <= 0 && need[1] <= 0) return IOUPOS_OK;
  for (k = 0; k < 2; ++k) {
    int w = need[k] > 0 ? need[k] : 0;
    lo[k] = -(w / 2);               /* before: floor(w / 2) */
    hi[k] = vol->dim[k] + (w - w / 2); /* after: the rest */
  }
  lo[2] = 0;
  hi[2] = vol->dim[2];
  return ioupos__subvolume(vol, lo, hi);
}

IOUPOS_DEF void ioupos_prep_opts_default(ioupos_prep_opts *o) {
  o->a_min = -500.0;
  o->a_max = 500.0;
  o->spacing[0] = 1.0;
  o->spacing[1] = 1.0;
  o->spacing[2] = 2.5;
  o->pad_xy = 96;
}

IOUPOS_DEF int ioupos_preprocess(ioupos_volume *image, ioupos_volume *label,
                                 const ioupos_prep_opts *o) {
  int st, lo[3], hi[3], k;
  if (!image || !image->data || !o) return ioupos__fail(IOUPOS_EINVAL, "preprocess: empty image");
  if (label) {
    if (!label->data || label->dim[0] != image->dim[0] || label->dim[1] != image->dim[1] ||
        label->dim[2] != image->dim[2])
      return ioupos__fail(IOUPOS_EFORMAT, "label %dx%dx%d does not match image %dx%dx%d", label->dim[0],
                          label->dim[1], label->dim[2], image->dim[0], image->dim[1], image->dim[2]);
  }
  if ((st = ioupos_volume_reorient_ras(image)) != IOUPOS_OK) return st;
  if (label && (st = ioupos_volume_reorient_ras(label)) != IOUPOS_OK) return st;
  if ((st = ioupos_volume_resample(image, o->spacing, 0)) != IOUPOS_OK) return st;
  if (label) {
    if ((st = ioupos_volume_resample(label, o->spacing, 1)) != IOUPOS_OK) return st;
    for (k = 0; k < 3; ++k)
      if (label->dim[k] != image->dim[k])
        return ioupos__fail(IOUPOS_EFORMAT, "after resampling the label grid %dx%dx%d differs from the "
                            "image grid %dx%dx%d (their affines differ)", label->dim[0], label->dim[1],
                            label->dim[2], image->dim[0], image->dim[1], image->dim[2]);
  }
  ioupos_volume_window(image, o->a_min, o->a_max);
  ioupos_volume_foreground_box(image, lo, hi);
  if (hi[0] == lo[0])
    return ioupos__fail(IOUPOS_EFORMAT, "no foreground: no voxel is above a_min = %g", o->a_min);
  if ((st = ioupos_volume_crop(image, lo, hi)) != IOUPOS_OK) return st;
  if (label && (st = ioupos_volume_crop(label, lo, hi)) != IOUPOS_OK) return st;
  if ((st = ioupos_volume_pad_xy(image, o->pad_xy, o->pad_xy)) != IOUPOS_OK) return st;
  if (label && (st = ioupos_volume_pad_xy(label, o->pad_xy, o->pad_xy)) != IOUPOS_OK) return st;
  return IOUPOS_OK;
}

IOUPOS_DEF void ioupos_volume_slice_u8(const ioupos_volume *vol, int k, int is_label,
                                       uint8_t *out) {
  int r, c, nx = vol->dim[0], ny = vol->dim[1];
  const float *s = vol->data + (size_t)k * nx * ny;
  for (r = 0; r < nx; ++r)
    for (c = 0; c < ny; ++c) {
      double v = s[(size_t)c * nx + r], q;
      if (!is_label) v *= 255.0;
      q = v != v ? 0.0 : floor(v + 0.5); /* half away from zero for v >= 0; negatives clamp to 0 */
      out[(size_t)r * ny + c] = (uint8_t)(q < 0 ? 0 : q > 255 ? 255 : q);
    }
}

/* ---- split files ---------------------------------------------------------------------------- */

typedef struct ioupos__json {
  const char *s;
  size_t len, pos;
  const char *name;
} ioupos__json;

static int ioupos__json_fail(const ioupos__json *j, size_t at, const char *what) {
  size_t i, line = 1, col = 1;
  for (i = 0; i < at && i < j->len; ++i) {
    if (j->s[i] == '\n') ++line, col = 1;
    else ++col;
  }
  return ioupos__fail(IOUPOS_EFORMAT, "%s:%zu:%zu: %s", j->name, line, col, what);
}

static void ioupos__json_ws(ioupos__json *j) {
  while (j->pos < j->len &&
         (j->s[j->pos] == ' ' || j->s[j->pos] == '\t' || j->s[j->pos] == '\n' || j->s[j->pos] == '\r'))
    ++j->pos;
}

static int ioupos__hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Parse a JSON string at j->pos into a new buffer (UTF-8); max bytes max_len. */
static int ioupos__json_string(ioupos__json *j, char **out, size_t max_len) {
  size_t start = j->pos, n = 0;
  char *buf;
  *out = NULL;
  if (j->pos >= j->len || j->s[j->pos] != '"') return ioupos__json_fail(j, j->pos, "expected a string");
  buf = (char *)IOUPOS_MALLOC(max_len + 5);
  if (!buf) return ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory", j->name);
  ++j->pos;
  for (;;) {
    unsigned char ch;
    uint32_t cp;
    if (j->pos >= j->len) {
      IOUPOS_FREE(buf);
      return ioupos__json_fail(j, start, "unterminated string");
    }
    ch = (unsigned char)j->s[j->pos];
    if (ch == '"') {
      ++j->pos;
      break;
    }
    if (ch < 0x20) {
      IOUPOS_FREE(buf);
      return ioupos__json_fail(j, j->pos, "control character in a string");
    }
    if (ch != '\\') {
      if (n >= max_len) goto too_long;
      buf[n++] = (char)ch;
      ++j->pos;
      continue;
    }
    if (j->pos + 1 >= j->len) {
      IOUPOS_FREE(buf);
      return ioupos__json_fail(j, start, "unterminated string");
    }
    ch = (unsigned char)j->s[j->pos + 1];
    j->pos += 2;
    switch (ch) {
      case '"': cp = '"'; break;
      case '\\': cp = '\\'; break;
      case '/': cp = '/'; break;
      case 'b': cp = 8; break;
      case 'f': cp = 12; break;
      case 'n': cp = 10; break;
      case 'r': cp = 13; break;
      case 't': cp = 9; break;
      case 'u': {
        int q, h;
        cp = 0;
        for (q = 0; q < 4; ++q) {
          if (j->pos >= j->len || (h = ioupos__hexval(j->s[j->pos])) < 0) {
            IOUPOS_FREE(buf);
            return ioupos__json_fail(j, j->pos, "bad \\u escape (expected 4 hex digits)");
          }
          cp = cp * 16 + (uint32_t)h;
          ++j->pos;
        }
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          uint32_t lo2 = 0;
          if (j->pos + 6 > j->len || j->s[j->pos] != '\\' || j->s[j->pos + 1] != 'u') {
            IOUPOS_FREE(buf);
            return ioupos__json_fail(j, j->pos, "unpaired UTF-16 surrogate in \\u escape");
          }
          for (q = 0; q < 4; ++q) {
            if ((h = ioupos__hexval(j->s[j->pos + 2 + q])) < 0) {
              IOUPOS_FREE(buf);
              return ioupos__json_fail(j, j->pos, "bad \\u escape (expected 4 hex digits)");
            }
            lo2 = lo2 * 16 + (uint32_t)h;
          }
          if (lo2 < 0xDC00 || lo2 > 0xDFFF) {
            IOUPOS_FREE(buf);
            return ioupos__json_fail(j, j->pos, "unpaired UTF-16 surrogate in \\u escape");
          }
          j->pos += 6;
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo2 - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          IOUPOS_FREE(buf);
          return ioupos__json_fail(j, j->pos - 6, "unpaired UTF-16 surrogate in \\u escape");
        }
        break;
      }
      default:
        IOUPOS_FREE(buf);
        return ioupos__json_fail(j, j->pos - 2, "invalid escape in a string");
    }
    if (n + 4 > max_len) goto too_long;
    if (cp < 0x80) buf[n++] = (char)cp;
    else if (cp < 0x800) {
      buf[n++] = (char)(0xC0 | (cp >> 6));
      buf[n++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      buf[n++] = (char)(0xE0 | (cp >> 12));
      buf[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
      buf[n++] = (char)(0x80 | (cp & 0x3F));
    } else {
      buf[n++] = (char)(0xF0 | (cp >> 18));
      buf[n++] = (char)(0x80 | ((cp >> 12) & 0x3F));
      buf[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
      buf[n++] = (char)(0x80 | (cp & 0x3F));
    }
  }
  buf[n] = 0;
  if (memchr(buf, 0, n)) {
    IOUPOS_FREE(buf);
    return ioupos__json_fail(j, start, "string contains a NUL character");
  }
  *out = buf;
  return IOUPOS_OK;
too_long:
  IOUPOS_FREE(buf);
  {
    char why[96];
    snprintf(why, sizeof why, "string longer than %zu bytes", max_len);
    return ioupos__json_fail(j, start, why);
  }
}

IOUPOS_DEF void ioupos_split_free(ioupos_split *split) {
  int s, c;
  if (!split) return;
  for (s = 0; s < split->n_sets; ++s) {
    for (c = 0; c < split->sets[s].n; ++c) IOUPOS_FREE(split->sets[s].cases[c]);
    IOUPOS_FREE(split->sets[s].cases);
    IOUPOS_FREE(split->sets[s].name);
  }
  IOUPOS_FREE(split->sets);
  split->sets = NULL;
  split->n_sets = 0;
}

IOUPOS_DEF int ioupos_split_find(const ioupos_split *split, const char *case_name) {
  int s, c;
  for (s = 0; s < split->n_sets; ++s)
    for (c = 0; c < split->sets[s].n; ++c)
      if (strcmp(split->sets[s].cases[c], case_name) == 0) return s;
  return -1;
}

static int ioupos__grow(void **arr, int n, int *cap, size_t elem) {
  void *na;
  int ncap;
  if (n < *cap) return 1;
  if (*cap > INT_MAX / 2) return 0;
  ncap = *cap ? *cap * 2 : 8;
  na = ioupos__calloc((size_t)ncap, elem);
  if (!na) return 0;
  if (n) memcpy(na, *arr, (size_t)n * elem);
  IOUPOS_FREE(*arr);
  *arr = na;
  *cap = ncap;
  return 1;
}

IOUPOS_DEF int ioupos_split_parse(const char *text, size_t len, const char *name,
                                  ioupos_split *split) {
  ioupos__json j;
  int cap_sets = 0, st;
  if (!split) return ioupos__fail(IOUPOS_EINVAL, "ioupos_split_parse: NULL split");
  split->n_sets = 0;
  split->sets = NULL;
  j.s = text ? text : "";
  j.len = text ? len : 0;
  j.pos = 0;
  j.name = name ? name : "(split)";
  if (j.len >= 3 && (unsigned char)j.s[0] == 0xEF && (unsigned char)j.s[1] == 0xBB &&
      (unsigned char)j.s[2] == 0xBF)
    j.pos = 3; /* UTF-8 byte order mark */
  ioupos__json_ws(&j);
  if (j.pos >= j.len || j.s[j.pos] != '{') {
    st = ioupos__json_fail(&j, j.pos, "expected '{' (a split file is an object of case-name lists, e.g. "
                                      "{\"train\": [...], \"val\": [...]})");
    goto fail;
  }
  ++j.pos;
  ioupos__json_ws(&j);
  if (j.pos < j.len && j.s[j.pos] == '}') {
    st = ioupos__json_fail(&j, j.pos, "the split object is empty");
    goto fail;
  }
  for (;;) {
    ioupos_split_set *set;
    size_t key_at, q;
    int cap_cases = 0, s;
    char *key = NULL;
    ioupos__json_ws(&j);
    key_at = j.pos;
    if ((st = ioupos__json_string(&j, &key, 64)) != IOUPOS_OK) goto fail;
    for (q = 0; key[q]; ++q) {
      char ch = key[q];
      if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
            ch == '-'))
        break;
    }
    if (q == 0 || key[q]) {
      IOUPOS_FREE(key);
      st = ioupos__json_fail(&j, key_at, "split names must be 1-64 characters of A-Z a-z 0-9 _ -");
      goto fail;
    }
    for (s = 0; s < split->n_sets; ++s)
      if (strcmp(split->sets[s].name, key) == 0) {
        IOUPOS_FREE(key);
        st = ioupos__json_fail(&j, key_at, "duplicate split name");
        goto fail;
      }
    if (!ioupos__grow((void **)&split->sets, split->n_sets, &cap_sets, sizeof(ioupos_split_set))) {
      IOUPOS_FREE(key);
      st = ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory", j.name);
      goto fail;
    }
    set = &split->sets[split->n_sets++];
    set->name = key;
    set->n = 0;
    set->cases = NULL;
    ioupos__json_ws(&j);
    if (j.pos >= j.len || j.s[j.pos] != ':') {
      st = ioupos__json_fail(&j, j.pos, "expected ':' after the split name");
      goto fail;
    }
    ++j.pos;
    ioupos__json_ws(&j);
    if (j.pos >= j.len || j.s[j.pos] != '[') {
      st = ioupos__json_fail(&j, j.pos, "expected '[' (a list of case names)");
      goto fail;
    }
    ++j.pos;
    ioupos__json_ws(&j);
    if (j.pos < j.len && j.s[j.pos] == ']') {
      ++j.pos;
    } else {
      for (;;) {
        char *cs = NULL;
        size_t at;
        ioupos__json_ws(&j);
        at = j.pos;
        if ((st = ioupos__json_string(&j, &cs, 255)) != IOUPOS_OK) goto fail;
        if (!cs[0] || !strcmp(cs, ".") || !strcmp(cs, "..") || strchr(cs, '/') || strchr(cs, '\\')) {
          IOUPOS_FREE(cs);
          st = ioupos__json_fail(&j, at, "case names must be non-empty, not \".\" or \"..\", without '/' or "
                                         "'\\'");
          goto fail;
        }
        for (q = 0; cs[q]; ++q)
          if ((unsigned char)cs[q] < 0x20 || cs[q] == 0x7F) break;
        if (cs[q]) {
          IOUPOS_FREE(cs);
          st = ioupos__json_fail(&j, at, "case names must not contain control characters");
          goto fail;
        }
        if (ioupos_split_find(split, cs) >= 0) {
          char why[400];
          snprintf(why, sizeof why, "case \"%.255s\" is listed twice", cs);
          IOUPOS_FREE(cs);
          st = ioupos__json_fail(&j, at, why);
          goto fail;
        }
        if (!ioupos__grow((void **)&set->cases, set->n, &cap_cases, sizeof(char *))) {
          IOUPOS_FREE(cs);
          st = ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory", j.name);
          goto fail;
        }
        set->cases[set->n++] = cs;
        ioupos__json_ws(&j);
        if (j.pos < j.len && j.s[j.pos] == ',') {
          ++j.pos;
          continue;
        }
        if (j.pos < j.len && j.s[j.pos] == ']') {
          ++j.pos;
          break;
        }
        st = ioupos__json_fail(&j, j.pos, "expected ',' or ']' in a list of case names");
        goto fail;
      }
    }
    ioupos__json_ws(&j);
    if (j.pos < j.len && j.s[j.pos] == ',') {
      ++j.pos;
      continue;
    }
    if (j.pos < j.len && j.s[j.pos] == '}') {
      ++j.pos;
      break;
    }
    st = ioupos__json_fail(&j, j.pos, "expected ',' or '}' after a list");
    goto fail;
  }
  ioupos__json_ws(&j);
  if (j.pos != j.len) {
    st = ioupos__json_fail(&j, j.pos, "unexpected content after the split object");
    goto fail;
  }
  return IOUPOS_OK;
fail:
  ioupos_split_free(split);
  return st;
}

IOUPOS_DEF int ioupos_split_read(const char *path, ioupos_split *split) {
  void *buf;
  size_t size;
  int st;
  if (!split) return ioupos__fail(IOUPOS_EINVAL, "ioupos_split_read: NULL split");
  split->n_sets = 0;
  split->sets = NULL;
  st = ioupos_read_file(path, &buf, &size);
  if (st != IOUPOS_OK) return st;
  st = ioupos_split_parse((const char *)buf, size, path, split);
  IOUPOS_FREE(buf);
  return st;
}

#endif /* IOUPOS_IMPLEMENTATION && !IOUPOS_WIP_NIFTI_IMPL */
