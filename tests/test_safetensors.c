/* tests/test_safetensors.c — safetensors checkpoints (ioupos.h section 13).

   - reads tests/fixtures/safetensors/torch_mixed.safetensors (written by PyTorch 2.15.0 with
     safetensors 0.8.0: F32, F16, BF16, F64, I64, U8, BOOL, scalar, zero-size, special values)
     and compares every float tensor, converted with ioupos_st_to_f32, bit for bit with the
     .npy of torch's .float() of it;
   - rewrites torch_f32.safetensors and torch_mixed.safetensors with ioupos_safetensors_write
     and requires the bytes to be identical to safetensors' own;
   - writes the tensors and metadata that tests/reference/safetensors_fixture.py --check
     expects, reads them back and compares; the file goes to a temporary folder ($TMPDIR or
     /tmp), or to $IOUPOS_SAFETENSORS_OUT when set, which is kept for the Python check:
       IOUPOS_SAFETENSORS_OUT=build/st_out.safetensors build/test_safetensors &&
       .venv/bin/python tests/reference/safetensors_fixture.py --check build/st_out.safetensors
   - every corruption case gives IOUPOS_EFORMAT (or the right status) and a reason naming the
     problem and the tensor.
   Build: make build/test_safetensors (linked with the implementation, build/ioupos.o). */
#include "ioupos.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/npy.h"
#include "tests/test_util.h"

#define FIX "tests/fixtures/safetensors/"

static char tmpdir[512];

static const char *tmp(const char *leaf) { return tu_path(tmpdir, leaf); }

static int same_float(float a, double ref) {
  float r = (float)ref;
  if (a != a || r != r) return a != a && r != r;
  return a == r && signbit(a) == signbit(r);
}

static void test_torch_mixed(void) {
  ioupos_st_file f;
  FILE *list;
  char line[512];
  int st, nlisted = 0;
  st = ioupos_safetensors_read(FIX "torch_mixed.safetensors", &f);
  CHECK(st == IOUPOS_OK, "read torch_mixed: %s", ioupos_failure_reason());
  if (st) return;
  CHECK(f.n == 14, "n %d", f.n);
  CHECK(f.n_metadata == 1 && !strcmp(f.metadata[0].key, "format") &&
            !strcmp(f.metadata[0].value, "pt"), "metadata");
  list = fopen(FIX "torch_mixed.txt", "r");
  CHECK(list != NULL, "cannot open torch_mixed.txt");
  while (list && fgets(line, sizeof line, list)) {
    char name[256], dt[32], path[512];
    int idx;
    const ioupos_st_tensor *t;
    if (sscanf(line, "%255s %31s %d", name, dt, &idx) != 3) continue;
    ++nlisted;
    t = ioupos_safetensors_find(&f, name);
    CHECK(t != NULL, "tensor %s not found", name);
    if (!t) continue;
    CHECK(!strcmp(t->name, name), "find returned %s for %s", t->name, name);
    if (idx >= 0) {
      tu_npy ref;
      float *x;
      long i, bad = 0;
      snprintf(path, sizeof path, FIX "torch_mixed_%d.npy", idx);
      if (tu_npy_load(path, &ref) != 0) {
        CHECK(0, "cannot load %s", path);
        continue;
      }
      CHECK(ref.ndim == t->ndim, "%s: ndim %d vs %d", name, t->ndim, ref.ndim);
      for (i = 0; i < ref.ndim && i < t->ndim; ++i)
        CHECK(ref.shape[i] == t->shape[i], "%s: shape[%ld]", name, i);
      CHECK((long)(t->nbytes / ioupos_st_dtype_size(t->dtype)) == ref.count, "%s: count", name);
      x = (float *)malloc(sizeof(float) * (size_t)(ref.count + 1));
      st = ioupos_st_to_f32(t, x);
      CHECK(st == IOUPOS_OK, "%s: to_f32: %s", name, ioupos_failure_reason());
      for (i = 0; st == IOUPOS_OK && i < ref.count; ++i)
        if (!same_float(x[i], ref.data[i])) {
          if (!bad) printf("  %s[%ld] = %.9g vs %.9g\n", name, i, (double)x[i], ref.data[i]);
          ++bad;
        }
      CHECK(bad == 0, "%s (%s): %ld values differ", name, dt, bad);
      free(x);
      tu_npy_free(&ref);
    } else {
      float tmp[16];
      CHECK(ioupos_st_to_f32(t, tmp) == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), name),
            "%s: to_f32 of an integer tensor must fail naming it: %s", name,
            ioupos_failure_reason());
    }
  }
  if (list) fclose(list);
  CHECK(nlisted == 14, "listed %d", nlisted);
  {
    const ioupos_st_tensor *t = ioupos_safetensors_find(&f, "swinViT.layers1.0.blocks.0.attn."
                                                            "relative_position_index");
    const ioupos_st_tensor *u8 = ioupos_safetensors_find(&f, "mask.u8");
    const ioupos_st_tensor *b = ioupos_safetensors_find(&f, "mask.bool");
    const ioupos_st_tensor *nbt =
        ioupos_safetensors_find(&f, "projection_head.layers.1.num_batches_tracked");
    const ioupos_st_tensor *sc = ioupos_safetensors_find(&f, "scalar.temperature");
    const ioupos_st_tensor *em = ioupos_safetensors_find(&f, "encoder.empty");
    int ok = t && t->dtype == IOUPOS_ST_I64 && t->ndim == 2 && t->nbytes == 72;
    int i;
    for (i = 0; ok && i < 9; ++i) {
      int64_t v;
      memcpy(&v, (const char *)t->data + 8 * i, 8);
      ok = v == i;
    }
    CHECK(ok, "relative_position_index (I64 arange 9)");
    CHECK(u8 && u8->dtype == IOUPOS_ST_U8 && u8->nbytes == 3 &&
              !memcmp(u8->data, "\x00\x01\xff", 3), "mask.u8");
    CHECK(b && b->dtype == IOUPOS_ST_BOOL && b->nbytes == 3 && !memcmp(b->data, "\1\0\1", 3),
          "mask.bool");
    CHECK(nbt && nbt->ndim == 0 && nbt->nbytes == 8 && ((const unsigned char *)nbt->data)[0] == 7,
          "num_batches_tracked scalar I64");
    CHECK(sc && sc->ndim == 0 && sc->dtype == IOUPOS_ST_F32, "scalar F32");
    CHECK(em && em->ndim == 2 && em->shape[0] == 0 && em->shape[1] == 4 && em->nbytes == 0,
          "zero-size");
    CHECK(ioupos_safetensors_find(&f, "swinViT") == NULL &&
              ioupos_safetensors_find(&f, "zzz") == NULL &&
              ioupos_safetensors_find(&f, "") == NULL, "find of absent names");
    for (i = 1; i < f.n; ++i)
      CHECK((const char *)f.tensors[i - 1].data + f.tensors[i - 1].nbytes ==
                (const char *)f.tensors[i].data, "tensors in offset order at %d", i);
  }
  ioupos_safetensors_free(&f);
}

static int file_equal(const char *a, const char *b) {
  void *da, *db;
  size_t na, nb;
  int eq;
  if (ioupos_read_file(a, &da, &na)) return 0;
  if (ioupos_read_file(b, &db, &nb)) {
    free(da);
    return 0;
  }
  eq = na == nb && memcmp(da, db, na) == 0;
  if (!eq) {
    size_t i = 0;
    while (i < na && i < nb && ((char *)da)[i] == ((char *)db)[i]) ++i;
    printf("  %s (%lu bytes) and %s (%lu bytes) differ at byte %lu\n", a, (unsigned long)na, b,
           (unsigned long)nb, (unsigned long)i);
  }
  free(da);
  free(db);
  return eq;
}

/* Rewrite a torch-written file with our writer; the bytes must be the same. */
static void test_rewrite(const char *src, const char *dst) {
  ioupos_st_file f;
  ioupos_st_tensor *shuffled;
  int st, i;
  st = ioupos_safetensors_read(src, &f);
  CHECK(st == IOUPOS_OK, "read %s: %s", src, ioupos_failure_reason());
  if (st) return;
  /* give the tensors in reverse order: the writer sorts them as safetensors does */
  shuffled = (ioupos_st_tensor *)malloc(sizeof *shuffled * (size_t)f.n);
  for (i = 0; i < f.n; ++i) {
    shuffled[i] = f.tensors[f.n - 1 - i];
    if (i % 2) shuffled[i].nbytes = 0; /* 0 = computed from the shape */
  }
  st = ioupos_safetensors_write(dst, f.n, shuffled, f.n_metadata, f.metadata);
  CHECK(st == IOUPOS_OK, "write %s: %s", dst, ioupos_failure_reason());
  CHECK(file_equal(src, dst), "%s rewritten is not byte-identical", src);
  free(shuffled);
  ioupos_safetensors_free(&f);
}

/* What tests/reference/safetensors_fixture.py --check expects (c_written_tensors). */
#define NOUT 8
static void test_write_roundtrip(void) {
  static const char *names[NOUT] = {
      "swinViT.layers1.0.blocks.0.attn.qkv.weight", "swinViT.layers1.0.blocks.0.attn.qkv.bias",
      "swinViT.norm.weight", "zero.sized",
      "unicode.\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80.\"quoted\"\\", "half.weight", "bf16.weight",
      "index"};
  static const ioupos_st_pair md[3] = {
      {"format", "pt"}, {"seed", "42"}, {"note", "line\nbreak \"q\" \xc3\xa9\t\x01"}};
  const char *path = getenv("IOUPOS_SAFETENSORS_OUT") ? getenv("IOUPOS_SAFETENSORS_OUT")
                                                      : tmp("out.safetensors");
  float vals[NOUT][16];
  /* F16 / BF16 bits of 0.25*i - 5 and 0.25*i - 6, i = 0..2 */
  static const uint16_t half[3] = {0xC500, 0xC4C0, 0xC480};   /* -5, -4.75, -4.5 */
  static const uint16_t bf16[3] = {0xC0C0, 0xC0B8, 0xC0B0};   /* -6, -5.75, -5.5 */
  static const int64_t index[4] = {0, 1, 2, 3};
  ioupos_st_tensor t[NOUT];
  ioupos_st_file f;
  int k, i, st;
  memset(t, 0, sizeof t);
  for (k = 0; k < NOUT; ++k) {
    for (i = 0; i < 16; ++i) vals[k][i] = (float)(i * 0.25 - k);
    t[k].name = names[k];
    t[k].dtype = IOUPOS_ST_F32;
    t[k].data = vals[k];
  }
  t[0].ndim = 2, t[0].shape[0] = 6, t[0].shape[1] = 2;
  t[1].ndim = 1, t[1].shape[0] = 6;
  t[2].ndim = 0;
  t[3].ndim = 2, t[3].shape[0] = 0, t[3].shape[1] = 3;
  t[4].ndim = 2, t[4].shape[0] = 2, t[4].shape[1] = 2;
  t[5].ndim = 1, t[5].shape[0] = 3, t[5].dtype = IOUPOS_ST_F16, t[5].data = half;
  t[6].ndim = 1, t[6].shape[0] = 3, t[6].dtype = IOUPOS_ST_BF16, t[6].data = bf16;
  t[7].ndim = 1, t[7].shape[0] = 4, t[7].dtype = IOUPOS_ST_I64, t[7].data = index;
  st = ioupos_safetensors_write(path, NOUT, t, 3, md);
  CHECK(st == IOUPOS_OK, "write: %s", ioupos_failure_reason());
  st = ioupos_safetensors_read(path, &f);
  CHECK(st == IOUPOS_OK, "read back: %s", ioupos_failure_reason());
  if (st) return;
  CHECK(f.n == NOUT && f.n_metadata == 3, "n %d, metadata %d", f.n, f.n_metadata);
  for (i = 0; i < 3 && i < f.n_metadata; ++i)
    CHECK(!strcmp(f.metadata[i].key, md[i].key) && !strcmp(f.metadata[i].value, md[i].value),
          "metadata %d in order", i);
  for (k = 0; k < NOUT; ++k) {
    const ioupos_st_tensor *r = ioupos_safetensors_find(&f, names[k]);
    float got[16];
    CHECK(r != NULL, "%s missing", names[k]);
    if (!r) continue;
    CHECK(r->dtype == t[k].dtype && r->ndim == t[k].ndim &&
              !memcmp(r->shape, t[k].shape, sizeof(int64_t) * (size_t)t[k].ndim),
          "%s: dtype or shape", names[k]);
    if (k == 7) {
      CHECK(r->nbytes == 32 && !memcmp(r->data, index, 32), "index values");
      continue;
    }
    CHECK(ioupos_st_to_f32(r, got) == IOUPOS_OK, "%s to_f32", names[k]);
    for (i = 0; i < (int)(r->nbytes / ioupos_st_dtype_size(r->dtype)); ++i)
      CHECK(got[i] == vals[k][i], "%s[%d] = %g, want %g", names[k], i, (double)got[i],
            (double)vals[k][i]);
  }
  /* offsets follow safetensors' order: I64 first, then F32 by name, BF16, F16 */
  CHECK(!strcmp(f.tensors[0].name, "index") && !strcmp(f.tensors[f.n - 1].name, "half.weight") &&
            !strcmp(f.tensors[f.n - 2].name, "bf16.weight"), "dtype-then-name order");
  ioupos_safetensors_free(&f);
  if (!getenv("IOUPOS_SAFETENSORS_OUT")) remove(path);
}

/* ---- corruption ------------------------------------------------------------------------------ */

/* Parse 8-byte length + json (+ padding none) + data; expect status and every needle. */
static void expect_fail(const char *json, const void *data, size_t ndata, int want,
                        const char *needle1, const char *needle2, int line) {
  size_t hl = strlen(json), i;
  unsigned char *buf = (unsigned char *)malloc(8 + hl + ndata + 1);
  ioupos_st_file f;
  int st;
  for (i = 0; i < 8; ++i) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
  memcpy(buf + 8, json, hl);
  if (ndata) memcpy(buf + 8 + hl, data, ndata);
  st = ioupos_safetensors_parse(buf, 8 + hl + ndata, "bad.safetensors", &f);
  if (!(st == want && strstr(ioupos_failure_reason(), "bad.safetensors") &&
        (!needle1 || strstr(ioupos_failure_reason(), needle1)) &&
        (!needle2 || strstr(ioupos_failure_reason(), needle2)))) {
    printf("  line %d: header %s\n  status %s, reason: %s\n", line, json, ioupos_status_name(st),
           st ? ioupos_failure_reason() : "");
    CHECK(0, "corruption case at line %d", line);
  } else {
    CHECK(f.n == 0 && f.tensors == NULL && f.strings == NULL, "out emptied on failure");
  }
  if (st == IOUPOS_OK) ioupos_safetensors_free(&f);
  free(buf);
}
#define BAD(json, data, ndata, n1, n2) \
  expect_fail(json, data, ndata, IOUPOS_EFORMAT, n1, n2, __LINE__)

static int parse_ok(const char *json, const void *data, size_t ndata, ioupos_st_file *f) {
  size_t hl = strlen(json), i;
  static unsigned char buf[4096];
  for (i = 0; i < 8; ++i) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
  memcpy(buf + 8, json, hl);
  if (ndata) memcpy(buf + 8 + hl, data, ndata);
  return ioupos_safetensors_parse(buf, 8 + hl + ndata, "ok.safetensors", f);
}

static void test_corruption(void) {
  static const unsigned char z[64] = {0};
  const char *T = "swinViT.layers1.0.blocks.0.attn.qkv.weight";
  ioupos_st_file f;
  unsigned char raw[32];
  int st;
  /* file-level */
  st = ioupos_safetensors_parse("abc", 3, "tiny.st", &f);
  CHECK(st == IOUPOS_EFORMAT && strstr(ioupos_failure_reason(), "tiny.st") &&
            strstr(ioupos_failure_reason(), "shorter"), "tiny: %s", ioupos_failure_reason());
  memset(raw, 0, sizeof raw);
  raw[0] = 200; /* header length 200 > file */
  memcpy(raw + 8, "{}", 2);
  st = ioupos_safetensors_parse(raw, 16, "trunc.st", &f);
  CHECK(st == IOUPOS_EFORMAT && strstr(ioupos_failure_reason(), "runs past the end"),
        "header past end: %s", ioupos_failure_reason());
  memset(raw, 0, sizeof raw);
  raw[4] = 1; /* 2^32 > 100 MB */
  st = ioupos_safetensors_parse(raw, 16, "huge.st", &f);
  CHECK(st == IOUPOS_EFORMAT && strstr(ioupos_failure_reason(), "larger than"),
        "header too large: %s", ioupos_failure_reason());
  st = ioupos_safetensors_read(tmp("missing/x.safetensors"), &f);
  CHECK(st == IOUPOS_EIO, "missing file: %s", ioupos_status_name(st));
  CHECK(ioupos_safetensors_parse(NULL, 0, "x", NULL) == IOUPOS_EINVAL, "NULL out");

  BAD(" {}", NULL, 0, "start with '{'", NULL);
  BAD("[1]", NULL, 0, "start with '{'", NULL);
  BAD("{", NULL, 0, "too small", NULL);
  BAD("{\"a\"", NULL, 0, "corrupt safetensors header", "expected ':'");
  BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,", z, 4, "\"a\"",
      "not a non-negative integer");
  BAD("{}x", NULL, 0, "trailing bytes after the JSON", NULL);
  BAD("{} {}", NULL, 0, "trailing bytes after the JSON", NULL);
  BAD("{}", z, 4, "trailing bytes", NULL);
  BAD("{\"a\" {}}", NULL, 0, "expected ':'", NULL);
  BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},}", z, 4,
      "expected a string", NULL);
  BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],}}", z, 4,
      "expected a string", NULL);
  BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,],\"data_offsets\":[0,4]}}", z, 4, "\"a\"",
      "not a non-negative integer");
  BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", z, 4,
      "expected ',' or '}'", NULL);
  BAD("{\"a:{}}", NULL, 0, "unterminated string", NULL);
  BAD("{\"a\\q\":{}}", NULL, 0, "unknown escape", NULL);
  BAD("{\"a\\ud800\":{}}", NULL, 0, "lone high surrogate", NULL);
  BAD("{\"a\\udc00\":{}}", NULL, 0, "lone low surrogate", NULL);
  BAD("{\"a\\ud800\\u0041\":{}}", NULL, 0, "not followed by a low", NULL);
  BAD("{\"a\\u00zz\":{}}", NULL, 0, "bad hex digit", NULL);
  BAD("{\"a\\u0000\":{}}", NULL, 0, "\\u0000", NULL);
  BAD("{\"a\xff\":{}}", NULL, 0, "invalid UTF-8", NULL);
  BAD("{\"a\xc0\x80\":{}}", NULL, 0, "invalid UTF-8", NULL);       /* overlong NUL */
  BAD("{\"a\xed\xa0\x80\":{}}", NULL, 0, "invalid UTF-8", NULL);   /* encoded surrogate */
  BAD("{\"a\tb\":{}}", NULL, 0, "raw control character", NULL);
  BAD("{\"a\":[]}", NULL, 0, "\"a\"", "not a JSON object");
  BAD("{\"a\":null}", NULL, 0, "\"a\"", "not a JSON object");
  /* tensor entries */
  {
    char j[512];
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F31\",\"shape\":[1],\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 4, T, "unknown dtype \"F31\"");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 4, T, "missing \"shape\"");
    snprintf(j, sizeof j, "{\"%s\":{\"shape\":[1],\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 4, T, "missing \"dtype\"");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1]}}", T);
    BAD(j, z, 4, T, "missing \"data_offsets\"");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],"
             "\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 4, T, "\"dtype\" given twice");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],"
             "\"extra\":1}}", T);
    BAD(j, z, 4, T, "unexpected key \"extra\"");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 4, T, "dtype is not a string");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 4, T, "shape is not an array");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 4, T, "need 8 bytes but data_offsets [0, 4] hold 4");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 4, T, "shape and dtype F16 need 2 bytes");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 4, T, "shape entry");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 4, T, "not a non-negative integer");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 4, T, "not a non-negative integer");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1e0],\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 4, T, "not a non-negative integer");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],"
             "\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 4, T, "too large");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],"
             "\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 4, T, "need more than");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
             "\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 4, T, "more than 8 entries");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", T);
    BAD(j, z, 8, T, "more than 2 entries");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", T);
    BAD(j, z, 4, T, "has 1 entries, not 2");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", T);
    BAD(j, z, 4, T, "end before they begin");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 3, T, "run past the end of the 3-byte data buffer");
    BAD(j, z, 5, "trailing bytes", T);
    /* layout */
    snprintf(j, sizeof j, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", T);
    BAD(j, z, 12, T, "a gap");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", T);
    BAD(j, z, 8, T, "a gap");
    snprintf(j, sizeof j, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", T);
    BAD(j, z, 8, T, "overlaps tensor \"a\"");
    snprintf(j, sizeof j, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", T, T);
    BAD(j, z, 8, T, "appears twice");
    /* metadata */
    snprintf(j, sizeof j, "{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"},"
             "\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", T);
    BAD(j, z, 4, "metadata key \"k\" appears twice", NULL);
    BAD("{\"__metadata__\":{\"k\":1}}", NULL, 0, "metadata \"k\"", "not a string");
    BAD("{\"__metadata__\":[]}", NULL, 0, "\"__metadata__\" is not a JSON object", NULL);
    BAD("{\"__metadata__\":{},\"__metadata__\":{}}", NULL, 0, "appears twice", NULL);
  }
  /* a truncated real file names the tensor that runs past the end */
  {
    void *d;
    size_t n;
    if (ioupos_read_file(FIX "torch_f32.safetensors", &d, &n) == IOUPOS_OK) {
      st = ioupos_safetensors_parse(d, n - 1, "cut.safetensors", &f);
      CHECK(st == IOUPOS_EFORMAT && strstr(ioupos_failure_reason(), "cut.safetensors") &&
                strstr(ioupos_failure_reason(), "run past the end") &&
                strstr(ioupos_failure_reason(), "tensor \""),
            "truncated file: %s", ioupos_failure_reason());
      free(d);
    }
  }
  /* valid edge cases */
  st = parse_ok("{}", NULL, 0, &f);
  CHECK(st == IOUPOS_OK && f.n == 0 && f.n_metadata == 0, "empty file: %s",
        ioupos_failure_reason());
  ioupos_safetensors_free(&f);
  st = parse_ok("{\"__metadata__\":{},\"e\\u00e9\\ud83d\\ude00\\n\\\"\\/\":"
                "{ \"data_offsets\" : [ 0 , 4 ] ,\n\"shape\":[],\"dtype\":\"F32\"}}\t\r\n  ",
                "\0\0\x80\x3f", 4, &f);
  CHECK(st == IOUPOS_OK && f.n == 1, "escapes, whitespace, key order: %s",
        ioupos_failure_reason());
  if (st == IOUPOS_OK) {
    const ioupos_st_tensor *t = ioupos_safetensors_find(&f, "e\xc3\xa9\xf0\x9f\x98\x80\n\"/");
    float v = 0;
    CHECK(t != NULL && t->ndim == 0, "decoded name");
    CHECK(t && ioupos_st_to_f32(t, &v) == IOUPOS_OK && v == 1.0f, "value 1.0");
    ioupos_safetensors_free(&f);
  }
  st = parse_ok("{\"b\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[1,1]},"
                "\"a\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[0,1]},"
                "\"c\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[1,1]}}", "\1", 1, &f);
  CHECK(st == IOUPOS_OK && f.n == 3 && !strcmp(f.tensors[0].name, "a") &&
            !strcmp(f.tensors[1].name, "b") && !strcmp(f.tensors[2].name, "c"),
        "zero-size tensors at the end: %s", ioupos_failure_reason());
  ioupos_safetensors_free(&f);
  ioupos_safetensors_free(&f); /* twice is harmless */
}

static void test_write_errors(void) {
  float v[4] = {1, 2, 3, 4};
  ioupos_st_tensor t[2];
  ioupos_st_pair md[2] = {{"a", "1"}, {"a", "2"}};
  const char *p = tmp("err.safetensors");
  int st;
  memset(t, 0, sizeof t);
  t[0].name = "w";
  t[0].dtype = IOUPOS_ST_F32;
  t[0].ndim = 1;
  t[0].shape[0] = 4;
  t[0].data = v;
  t[1] = t[0];
  t[1].dtype = IOUPOS_ST_F16;
  t[1].shape[0] = 2;
  st = ioupos_safetensors_write(p, 2, t, 0, NULL);
  CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "\"w\" given twice"),
        "duplicate of another dtype: %s", ioupos_failure_reason());
  t[1].name = "__metadata__";
  st = ioupos_safetensors_write(p, 2, t, 0, NULL);
  CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "__metadata__"), "reserved name");
  t[1].name = "x";
  t[1].nbytes = 5;
  st = ioupos_safetensors_write(p, 2, t, 0, NULL);
  CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "\"x\": nbytes 5"),
        "nbytes mismatch: %s", ioupos_failure_reason());
  t[1].nbytes = 0;
  t[1].shape[0] = -2;
  st = ioupos_safetensors_write(p, 2, t, 0, NULL);
  CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "negative"), "negative dim");
  t[1].shape[0] = 2;
  t[1].dtype = 99;
  st = ioupos_safetensors_write(p, 2, t, 0, NULL);
  CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "unknown dtype"), "bad dtype");
  t[1].dtype = IOUPOS_ST_F16;
  t[1].name = "bad\xff";
  st = ioupos_safetensors_write(p, 2, t, 0, NULL);
  CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "UTF-8"), "non-UTF-8 name");
  t[1].name = "x";
  st = ioupos_safetensors_write(p, 2, t, 2, md);
  CHECK(st == IOUPOS_EINVAL && strstr(ioupos_failure_reason(), "\"a\" given twice"),
        "duplicate metadata key");
  st = ioupos_safetensors_write(tmp("no/such/dir/x.safetensors"), 2, t, 1, md);
  CHECK(st == IOUPOS_EIO, "unwritable path: %s", ioupos_status_name(st));
  st = ioupos_safetensors_write(p, 0, NULL, 0, NULL);
  CHECK(st == IOUPOS_OK, "no tensors: %s", ioupos_failure_reason());
  if (st == IOUPOS_OK) {
    ioupos_st_file f;
    void *d;
    size_t n;
    CHECK(ioupos_read_file(p, &d, &n) == IOUPOS_OK && n == 16 &&
              !memcmp(d, "\x08\0\0\0\0\0\0\0{}      ", 16), "empty file bytes");
    free(d);
    CHECK(ioupos_safetensors_read(p, &f) == IOUPOS_OK && f.n == 0, "empty file reads");
    ioupos_safetensors_free(&f);
  }
  remove(p);
}

static void test_f16_exhaustive(void) {
  /* every F16 bit pattern against a double computation; every BF16 against bits << 16 */
  static unsigned char h[65536 * 2];
  static float out[65536];
  ioupos_st_tensor t;
  long i, bad = 0;
  for (i = 0; i < 65536; ++i) {
    h[2 * i] = (unsigned char)(i & 0xFF);
    h[2 * i + 1] = (unsigned char)(i >> 8);
  }
  memset(&t, 0, sizeof t);
  t.name = "all";
  t.dtype = IOUPOS_ST_F16;
  t.ndim = 1;
  t.shape[0] = 65536;
  t.data = h;
  t.nbytes = sizeof h;
  CHECK(ioupos_st_to_f32(&t, out) == IOUPOS_OK, "f16");
  for (i = 0; i < 65536; ++i) {
    int e = (int)((i >> 10) & 31), m = (int)(i & 1023), s = (int)(i >> 15);
    double want = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    if (s) want = -want;
    if (!same_float(out[i], want)) ++bad;
  }
  CHECK(bad == 0, "%ld F16 patterns convert wrongly", bad);
  t.dtype = IOUPOS_ST_BF16;
  CHECK(ioupos_st_to_f32(&t, out) == IOUPOS_OK, "bf16");
  for (bad = 0, i = 0; i < 65536; ++i) {
    uint32_t b;
    memcpy(&b, &out[i], 4);
    if (b != (uint32_t)i << 16) ++bad;
  }
  CHECK(bad == 0, "%ld BF16 patterns convert wrongly", bad);
}

static void test_f64(void) {
  /* rounding to float, including beyond FLT_MAX (done by hand: the cast is UB in ISO C) */
  /* 2^128 - 2^103 (the midpoint above FLT_MAX: rounds to inf) and 2^75 below it */
  double d[9] = {0.1, -1e300, 1e300, 3.4028234663852886e38,
                 340282356779733661637539395458142568448.0,
                 340282356779733661637539395458142568448.0 - 37778931862957161709568.0, NAN, -0.0,
                 1e-50};
  float want[9], out[9];
  unsigned char le[72];
  ioupos_st_tensor t;
  int i, k;
  want[0] = (float)0.1;
  want[1] = -INFINITY;
  want[2] = INFINITY;
  want[3] = 3.4028234663852886e38f;
  want[4] = INFINITY;
  want[5] = 3.4028234663852886e38f;
  want[6] = NAN;
  want[7] = -0.0f;
  want[8] = 0.0f;
  for (i = 0; i < 9; ++i) {
    uint64_t b;
    memcpy(&b, &d[i], 8);
    for (k = 0; k < 8; ++k) le[8 * i + k] = (unsigned char)(b >> (8 * k));
  }
  memset(&t, 0, sizeof t);
  t.name = "f64";
  t.dtype = IOUPOS_ST_F64;
  t.ndim = 1;
  t.shape[0] = 9;
  t.data = le;
  t.nbytes = sizeof le;
  CHECK(ioupos_st_to_f32(&t, out) == IOUPOS_OK, "f64");
  for (i = 0; i < 9; ++i)
    CHECK(same_float(out[i], want[i]), "f64[%d] %.9g -> %.9g, want %.9g", i, d[i],
          (double)out[i], (double)want[i]);
}

int main(void) {
  test_f64();
  test_torch_mixed();
  snprintf(tmpdir, sizeof tmpdir, "%s/test_safetensors.XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(tmpdir)) {
    printf("cannot create a temporary folder %s\n", tmpdir);
    return 1;
  }
  test_rewrite(FIX "torch_f32.safetensors", tmp("f32.safetensors"));
  test_rewrite(FIX "torch_mixed.safetensors", tmp("mixed.safetensors"));
  remove(tmp("f32.safetensors"));
  remove(tmp("mixed.safetensors"));
  test_write_roundtrip();
  test_corruption();
  test_write_errors();
  test_f16_exhaustive();
  CHECK(rmdir(tmpdir) == 0, "temporary folder %s left non-empty", tmpdir);
  return tu_finish("test_safetensors");
}
