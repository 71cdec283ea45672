/* tests/test_cublas_load.c — the nvcc build of the CUDA backend opens cuBLAS on first use
   (ioupos_cuda.cu, "cuBLAS, loaded on first use"), not at the program's start. Built by `make
   test` when nvcc is found, linked as the --device commands are (build/ioupos_cuda.o,
   $(DEV_LINK): no -lcublas). Needs no GPU:
     1. at start, libcublas is not in this process's memory map;
     2. ioupos_backend_cuda(0) without a usable device fails before loading it (on a machine
        with a GPU it starts the backend and cuBLAS is loaded: both outcomes are checked);
     3. a library that is not there, and one that is not cuBLAS (libm), fail with a reason that
        names the library and, for libm, the first missing function; nothing stays loaded;
     4. the toolkit's libcublas.so.<major>, found through the run path the Makefile links with,
        loads and every function the backend calls resolves; a second load is a no-op. */
#include <stdio.h>
#include <string.h>

#include "ioupos.h"
#include "tests/test_util.h"

/* in ioupos_cuda.cu (nvcc build), not in ioupos.h: 0, or -1 with ioupos_failure_reason() */
extern int ioupos_cuda_blas_load(const char *lib);

/* 1 when a mapping of this process names `lib`, 0 if none, -1 when /proc/self/maps is unreadable */
static int mapped(const char *lib) {
  char line[4096];
  int found = 0;
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return -1;
  while (fgets(line, sizeof line, f))
    if (strstr(line, lib)) found = 1;
  fclose(f);
  return found;
}

int main(void) {
  const ioupos_backend *be;
  const char *why;
  int m = mapped("libcublas");
  if (m < 0) {
    printf("test_cublas_load: SKIP: no /proc/self/maps here (not Linux?)\n");
    return 0;
  }
  CHECK(m == 0, "libcublas is mapped at start: the program links it");
  CHECK(mapped("libcublasLt") == 0, "libcublasLt is mapped at start");

  be = ioupos_backend_cuda(0);
  why = ioupos_failure_reason();
  if (!be) {
    printf("no GPU here (%s): the backend must not have loaded cuBLAS\n", why ? why : "?");
    CHECK(why && strstr(why, "no usable CUDA device"), "reason: %s", why ? why : "(none)");
    CHECK(mapped("libcublas") == 0, "a failed start without a device loaded libcublas");
  } else {
    printf("a GPU here (%s): the backend started, so cuBLAS is loaded\n", be->name);
    CHECK(mapped("libcublas") == 1, "the backend runs without libcublas mapped");
  }

  if (!be) {
    CHECK(ioupos_cuda_blas_load("libioupos_no_such_cublas.so.13") == -1, "a missing library loads");
    why = ioupos_failure_reason();
    CHECK(why && strstr(why, "cuBLAS could not be loaded") &&
              strstr(why, "libioupos_no_such_cublas.so.13"),
          "reason does not name the library: %s", why ? why : "(none)");
    CHECK(ioupos_cuda_blas_load("libm.so.6") == -1, "libm loads as cuBLAS");
    why = ioupos_failure_reason();
    CHECK(why && strstr(why, "libm.so.6 has no function cublasCreate_v2"),
          "reason does not name the library and the function: %s", why ? why : "(none)");
    CHECK(mapped("libcublas") == 0, "a failed load left libcublas mapped");
  }

  CHECK(ioupos_cuda_blas_load(NULL) == 0, "the toolkit's cuBLAS does not load: %s",
        ioupos_failure_reason() ? ioupos_failure_reason() : "(none)");
  CHECK(mapped("libcublas.so") == 1, "libcublas is not mapped after a load");
  CHECK(ioupos_cuda_blas_load("libioupos_no_such_cublas.so.13") == 0,
        "a second load (cuBLAS already loaded) fails");
  return tu_finish("test_cublas_load");
}
