/* fuzz/make_nifti_corpus.c — writes the seed corpus of fuzz_nifti into fuzz/corpus/nifti: tiny
   valid volumes (each < 20 KB) in several datatypes, plain and gzip, with sform, qform (qfac -1)
   and no transform, and a big-endian one. Run from the repository root:
     cc -std=c99 -I. -I/usr/include/stb fuzz/make_nifti_corpus.c -o build/make_nifti_corpus -lm
     build/make_nifti_corpus */
#define IOUPOS_IMPLEMENTATION
#include "ioupos.h"

static int save(const char *name, const unsigned char *b, size_t n) {
  char path[256];
  snprintf(path, sizeof path, "fuzz/corpus/nifti/%s", name);
  if (ioupos_write_file_atomic(path, b, n) != IOUPOS_OK) {
    fprintf(stderr, "%s\n", ioupos_failure_reason());
    return 1;
  }
  return 0;
}

int main(void) {
  static const int dts[] = {2, 4, 16, 64, 256, 512, 768, 1024};
  ioupos_volume v;
  unsigned char *b;
  size_t n, i;
  int d, bad = 0;
  char name[64];
  ioupos_volume_alloc(&v, 5, 4, 3);
  for (i = 0; i < 60; ++i) v.data[i] = (float)((int)(i * 37 % 23) - 5);
  v.affine[0][0] = -0.9; v.affine[1][1] = -0.9; v.affine[2][2] = 2.5;
  v.affine[0][1] = 0.1; v.affine[0][3] = 100; v.affine[1][3] = -50; v.affine[2][3] = 7;
  for (d = 0; d < 8; ++d) {
    snprintf(name, sizeof name, "dt%d.nii", dts[d]);
    ioupos_nifti_encode(&v, dts[d], 0, &b, &n);
    bad |= save(name, b, n);
    IOUPOS_FREE(b);
    snprintf(name, sizeof name, "dt%d.nii.gz", dts[d]);
    ioupos_nifti_encode(&v, dts[d], 1, &b, &n);
    bad |= save(name, b, n);
    IOUPOS_FREE(b);
  }
  /* qform only, no transform, and scaled */
  ioupos_nifti_encode(&v, 4, 0, &b, &n);
  b[254] = b[255] = 0;
  bad |= save("qform.nii", b, n);
  b[252] = b[253] = 0;
  bad |= save("noxform.nii", b, n);
  { float s = 2.0f, t = -1024.0f; memcpy(b + 112, &s, 4); memcpy(b + 116, &t, 4); }
  bad |= save("scaled.nii", b, n);
  IOUPOS_FREE(b);
  /* big-endian int16: swap every header field we set and the data */
  ioupos_nifti_encode(&v, 4, 0, &b, &n);
  {
    static const int f32[] = {0, 76, 80, 84, 88, 92, 96, 100, 104, 108, 112, 116, 256, 260, 264, 268, 272, 276,
                              280, 284, 288, 292, 296, 300, 304, 308, 312, 316, 320, 324};
    static const int f16[] = {40, 42, 44, 46, 48, 50, 52, 54, 70, 72, 252, 254};
    unsigned char t;
    for (i = 0; i < sizeof f32 / sizeof f32[0]; ++i) {
      unsigned char *p = b + f32[i];
      t = p[0]; p[0] = p[3]; p[3] = t; t = p[1]; p[1] = p[2]; p[2] = t;
    }
    for (i = 0; i < sizeof f16 / sizeof f16[0]; ++i) {
      unsigned char *p = b + f16[i];
      t = p[0]; p[0] = p[1]; p[1] = t;
    }
    for (i = 352; i + 1 < n; i += 2) { t = b[i]; b[i] = b[i + 1]; b[i + 1] = t; }
  }
  bad |= save("bigendian.nii", b, n);
  IOUPOS_FREE(b);
  ioupos_volume_free(&v);
  printf("wrote fuzz/corpus/nifti\n");
  return bad;
}
