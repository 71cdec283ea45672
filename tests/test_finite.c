/* tests/test_finite.c — what a checkpoint load refuses before any value reaches a model, and
   what reading a path that is not a regular file says:
   - ioupos_params_load refuses a NaN or an infinity (F32 as stored; F64 and F16 after
     conversion, 1e300 becoming +inf) with IOUPOS_EFORMAT and a reason naming the file (the
     path of ioupos_safetensors_read, the name given to ioupos_safetensors_parse), the tensor,
     the element's index and its value, and leaves the parameters unchanged; a finite file
     loads, including a BUFFER tensor, and a non-finite tensor outside `theirs` is not looked at;
   - ioupos_read_file / ioupos_safetensors_read of a folder fail with IOUPOS_EIO and
     "<path> is a directory" (not an allocation of LONG_MAX bytes), of /dev/null with "not a
     regular file".
   The command-level checks (ioupos-embed, --chkpt_path, --resume) are tests/test_ckpt_finite.sh.
   Build: cc -std=c99 -O2 -g -Wall -Wextra -Werror -D_POSIX_C_SOURCE=200809L -I. \
            -I/usr/include/stb tests/test_finite.c -o build/test_finite -lm -lpthread */

#include "ioupos.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/test_util.h"

static char tmpdir[512];

static const char *tmp(const char *leaf) { return tu_path(tmpdir, leaf); }

static int has(const char *s) { return strstr(ioupos_failure_reason(), s) != NULL; }

/* a model of two tensors: "m.w" [2, 3] (trained) and "m.s" [3] (a buffer) */
static void model(ioupos_params *p) {
  int64_t s23[2] = {2, 3}, s3[1] = {3};
  memset(p, 0, sizeof *p);
  CHECK(ioupos_tensor_add(&p->table, "m.w", IOUPOS_ST_F32, 0, IOUPOS_INIT_ZERO, 0.0f, 2, s23) >= 0,
        "add m.w");
  CHECK(ioupos_tensor_add(&p->table, "m.s", IOUPOS_ST_F32, IOUPOS_TENSOR_BUFFER, IOUPOS_INIT_ZERO,
                          0.0f, 1, s3) >= 0, "add m.s");
  CHECK(ioupos_params_alloc(p, ioupos_backend_cpu(), 0) == IOUPOS_OK, "alloc");
}

/* writes "m.w" (dtype wdt, 6 values as bytes wb) and "m.s" (F32 sv) and one foreign tensor
   "x.bad" (F32 NaN) to path */
static void write_file(const char *path, int wdt, const void *wb, size_t wbytes, const float *sv) {
  ioupos_st_tensor t[3];
  float bad = NAN;
  memset(t, 0, sizeof t);
  t[0].name = "m.w", t[0].dtype = wdt, t[0].ndim = 2, t[0].shape[0] = 2, t[0].shape[1] = 3;
  t[0].data = wb, t[0].nbytes = wbytes;
  t[1].name = "m.s", t[1].dtype = IOUPOS_ST_F32, t[1].ndim = 1, t[1].shape[0] = 3;
  t[1].data = sv, t[1].nbytes = 3 * sizeof(float);
  t[2].name = "x.bad", t[2].dtype = IOUPOS_ST_F32, t[2].ndim = 1, t[2].shape[0] = 1;
  t[2].data = &bad, t[2].nbytes = sizeof bad;
  CHECK(ioupos_safetensors_write(path, 3, t, 0, NULL) == IOUPOS_OK, "write %s: %s", path,
        ioupos_failure_reason());
}

/* loads path into p under "m."; the status */
static int load(ioupos_params *p, const char *path) {
  ioupos_st_file f;
  int rc = ioupos_safetensors_read(path, &f);
  CHECK(rc == IOUPOS_OK, "read %s: %s", path, ioupos_failure_reason());
  if (rc) return rc;
  rc = ioupos_params_load(p, &f, "m.", "m.", NULL, NULL);
  ioupos_safetensors_free(&f);
  return rc;
}

static void test_params_load(void) {
  ioupos_params p;
  float w[6] = {1, 2, 3, 4, 5, 6}, s[3] = {7, 8, 9}, got[9];
  double w64[6] = {1, 2, 3, 4, 1e300, 6};
  uint16_t w16[6] = {0x3C00, 0x3C00, 0x7C00, 0x3C00, 0x3C00, 0x3C00}; /* 1, 1, +inf, ... */
  const char *path = tmp("ok.safetensors");
  int rc, k;
  printf("params_load:\n");
  model(&p);
  /* finite: loads; the foreign NaN (x.bad, outside "m.") is not looked at */
  write_file(path, IOUPOS_ST_F32, w, sizeof w, s);
  rc = load(&p, path);
  CHECK(rc == IOUPOS_OK, "finite file loads: %s", ioupos_failure_reason());
  memcpy(got, ioupos_params_value(&p, 0), 6 * sizeof(float));
  memcpy(got + 6, ioupos_params_value(&p, 1), 3 * sizeof(float));
  for (k = 0; k < 6; ++k) CHECK(got[k] == w[k], "m.w[%d] %g", k, (double)got[k]);
  for (k = 0; k < 3; ++k) CHECK(got[6 + k] == s[k], "m.s[%d] %g", k, (double)got[6 + k]);
  /* NaN in the trained tensor: refused, p unchanged */
  w[4] = NAN;
  path = tmp("nan.safetensors");
  write_file(path, IOUPOS_ST_F32, w, sizeof w, s);
  memset(ioupos_params_value(&p, 0), 0, 6 * sizeof(float));
  rc = load(&p, path);
  CHECK(rc == IOUPOS_EFORMAT, "NaN weight refused (rc %d)", rc);
  CHECK(has(path) && has("tensor 'm.w' is not finite: element 4 (of 6) is NaN"),
        "NaN reason: %s", ioupos_failure_reason());
  CHECK(ioupos_params_value(&p, 1)[0] == 7.0f && ioupos_params_value(&p, 0)[0] == 0.0f,
        "parameters unchanged by the failed load");
  /* -inf in a buffer */
  w[4] = 5;
  s[2] = -INFINITY;
  path = tmp("buf.safetensors");
  write_file(path, IOUPOS_ST_F32, w, sizeof w, s);
  rc = load(&p, path);
  CHECK(rc == IOUPOS_EFORMAT && has(path) && has("tensor 'm.s' is not finite: element 2 (of 3) is -inf"),
        "-inf buffer: %d %s", rc, ioupos_failure_reason());
  s[2] = 9;
  /* F64 1e300 is +inf as float32 */
  path = tmp("f64.safetensors");
  write_file(path, IOUPOS_ST_F64, w64, sizeof w64, s);
  rc = load(&p, path);
  CHECK(rc == IOUPOS_EFORMAT && has("tensor 'm.w' is not finite: element 4 (of 6) is +inf"),
        "F64 overflow: %d %s", rc, ioupos_failure_reason());
  /* F16 infinity */
  path = tmp("f16.safetensors");
  write_file(path, IOUPOS_ST_F16, w16, sizeof w16, s);
  rc = load(&p, path);
  CHECK(rc == IOUPOS_EFORMAT && has("tensor 'm.w' is not finite: element 2 (of 6) is +inf"),
        "F16 inf: %d %s", rc, ioupos_failure_reason());
  /* a file parsed from memory is named by the name given to the parser */
  {
    void *bytes;
    size_t size;
    ioupos_st_file f;
    CHECK(ioupos_read_file(tmp("nan.safetensors"), &bytes, &size) == IOUPOS_OK, "read bytes");
    CHECK(ioupos_safetensors_parse(bytes, size, "in-memory.st", &f) == IOUPOS_OK, "parse");
    rc = ioupos_params_load(&p, &f, "m.", "m.", NULL, NULL);
    CHECK(rc == IOUPOS_EFORMAT && has("in-memory.st: tensor 'm.w' is not finite: element 4"),
          "parsed: %d %s", rc, ioupos_failure_reason());
    ioupos_safetensors_free(&f);
    CHECK(ioupos_safetensors_parse(bytes, size, NULL, &f) == IOUPOS_OK, "parse, no name");
    rc = ioupos_params_load(&p, &f, "m.", "m.", NULL, NULL);
    CHECK(rc == IOUPOS_EFORMAT && has("tensor 'm.w' is not finite: element 4"),
          "parsed without a name: %d %s", rc, ioupos_failure_reason());
    ioupos_safetensors_free(&f);
    free(bytes);
  }
  remove(tmp("ok.safetensors"));
  remove(tmp("nan.safetensors"));
  remove(tmp("buf.safetensors"));
  remove(tmp("f64.safetensors"));
  remove(tmp("f16.safetensors"));
  ioupos_params_free(&p);
}

static void test_not_a_file(void) {
  void *data = (void *)&data;
  size_t size = 7;
  ioupos_st_file f;
  const char *dir = tmp("folder.safetensors");
  char want[700];
  int rc;
  printf("not a file:\n");
  CHECK(mkdir(dir, 0755) == 0, "mkdir %s", dir);
  rc = ioupos_read_file(dir, &data, &size);
  snprintf(want, sizeof want, "%s is a directory", dir);
  CHECK(rc == IOUPOS_EIO && has(want) && !has("out of memory"), "folder: %d %s", rc,
        ioupos_failure_reason());
  CHECK(data == NULL && size == 0, "nothing returned for a folder");
  rc = ioupos_safetensors_read(dir, &f);
  CHECK(rc == IOUPOS_EIO && has(want), "safetensors_read of a folder: %d %s", rc,
        ioupos_failure_reason());
  CHECK(f.n == 0 && f.tensors == NULL, "out empty");
  CHECK(rmdir(dir) == 0, "rmdir");
  if (access("/dev/null", R_OK) == 0) {
    rc = ioupos_read_file("/dev/null", &data, &size);
    CHECK(rc == IOUPOS_EIO && has("/dev/null: not a regular file"), "/dev/null: %d %s", rc,
          ioupos_failure_reason());
  }
  rc = ioupos_read_file(tmp("no_such_file"), &data, &size);
  CHECK(rc == IOUPOS_EIO && has("cannot open"), "missing file: %d %s", rc, ioupos_failure_reason());
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "%s/test_finite.XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(tmpdir)) {
    printf("cannot create a temporary folder %s\n", tmpdir);
    return 1;
  }
  test_params_load();
  test_not_a_file();
  CHECK(rmdir(tmpdir) == 0, "temporary folder %s left non-empty", tmpdir);
  return tu_finish("test_finite");
}
