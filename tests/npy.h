/* tests/npy.h — read the .npy fixtures written by the scripts in tests/reference (numpy.save).

   Supports format versions 1.0-3.0, C order, little-endian or byte-order-free dtypes:
   '|u1', '|i1', '<i2', '<u2', '<i4', '<f4', '<f8'. Data is converted to double.
   tu_npy_load returns 0 on success; on failure it prints why and returns -1. */
#ifndef IOUPOS_TEST_NPY_H
#define IOUPOS_TEST_NPY_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct tu_npy {
  int ndim;
  long shape[8];
  long count;   /* product of shape */
  double *data; /* count values, C order */
} tu_npy;

static inline void tu_npy_free(tu_npy *a) {
  free(a->data);
  a->data = NULL;
}

static inline int tu_npy_load(const char *path, tu_npy *a) {
  unsigned char magic[10];
  char *header = NULL, *p;
  char descr[8] = {0};
  unsigned long hlen;
  long i;
  size_t item = 0;
  int ver;
  unsigned char *raw = NULL;
  FILE *f = fopen(path, "rb");
  memset(a, 0, sizeof *a);
  if (!f) {
    printf("npy: cannot open %s\n", path);
    return -1;
  }
  if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "\x93NUMPY", 6) != 0) goto bad;
  ver = magic[6];
  if (ver == 1) {
    unsigned char l[2];
    if (fread(l, 1, 2, f) != 2) goto bad;
    hlen = l[0] | (unsigned long)l[1] << 8;
  } else {
    unsigned char l[4];
    if (fread(l, 1, 4, f) != 4) goto bad;
    hlen = l[0] | (unsigned long)l[1] << 8 | (unsigned long)l[2] << 16 | (unsigned long)l[3] << 24;
  }
  if (hlen > 65536) goto bad;
  header = (char *)calloc(hlen + 1, 1);
  if (!header || fread(header, 1, hlen, f) != hlen) goto bad;
  if (strstr(header, "'fortran_order': True")) goto bad;
  p = strstr(header, "'descr': '");
  if (!p) goto bad;
  memcpy(descr, p + 10, 3);
  if (!strcmp(descr, "|u1") || !strcmp(descr, "|i1")) item = 1;
  else if (!strcmp(descr, "<i2") || !strcmp(descr, "<u2")) item = 2;
  else if (!strcmp(descr, "<i4") || !strcmp(descr, "<f4")) item = 4;
  else if (!strcmp(descr, "<f8")) item = 8;
  else goto bad;
  p = strstr(header, "'shape': (");
  if (!p) goto bad;
  p += 10;
  a->count = 1;
  while (*p && *p != ')') {
    char *end;
    long v = strtol(p, &end, 10);
    if (end == p) break;
    if (a->ndim >= 8 || v < 0) goto bad;
    a->shape[a->ndim++] = v;
    a->count *= v;
    p = end;
    while (*p == ',' || *p == ' ') ++p;
  }
  raw = (unsigned char *)malloc((size_t)a->count * item + 1);
  a->data = (double *)malloc(sizeof(double) * (size_t)(a->count + 1));
  if (!raw || !a->data || fread(raw, item, (size_t)a->count, f) != (size_t)a->count) goto bad;
  for (i = 0; i < a->count; ++i) {
    const unsigned char *b = raw + (size_t)i * item;
    double v;
    if (!strcmp(descr, "|u1")) v = b[0];
    else if (!strcmp(descr, "|i1")) v = (int8_t)b[0];
    else if (!strcmp(descr, "<i2")) v = (int16_t)(b[0] | b[1] << 8);
    else if (!strcmp(descr, "<u2")) v = (uint16_t)(b[0] | b[1] << 8);
    else if (!strcmp(descr, "<i4")) {
      uint32_t u = b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
      v = (int32_t)u;
    } else if (!strcmp(descr, "<f4")) {
      uint32_t u = b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
      float x;
      memcpy(&x, &u, 4);
      v = x;
    } else {
      uint64_t u = 0;
      double x;
      int k;
      for (k = 7; k >= 0; --k) u = u << 8 | b[k];
      memcpy(&x, &u, 8);
      v = x;
    }
    a->data[i] = v;
  }
  free(raw);
  free(header);
  fclose(f);
  return 0;
bad:
  printf("npy: %s is not a supported .npy file\n", path);
  free(raw);
  free(header);
  tu_npy_free(a);
  fclose(f);
  return -1;
}

/* Compare n values against a reference with |x - ref| <= atol + rtol * |ref|; prints the worst
   element (index, value, reference) and returns the number of elements out of tolerance. */
static inline long tu_compare(const char *name, const float *x, const double *ref, long n, double atol,
                       double rtol) {
  long i, bad = 0, worst = -1;
  double worst_excess = -1.0;
  for (i = 0; i < n; ++i) {
    double d = (double)x[i] - ref[i], lim = atol + rtol * (ref[i] < 0 ? -ref[i] : ref[i]);
    double ex = (d < 0 ? -d : d) - lim;
    if (!(ex <= 0.0)) ++bad;
    if (worst < 0 || ex > worst_excess || ex != ex) {
      worst_excess = ex;
      worst = i;
    }
  }
  if (worst >= 0)
    printf("  %-40s n %ld, out of tolerance %ld, worst [%ld] %.8g vs %.8g (atol %g rtol %g)\n", name,
           n, bad, worst, (double)x[worst], ref[worst], atol, rtol);
  return bad;
}
#endif
