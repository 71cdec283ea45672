/* fuzz/fuzz_safetensors.c — libFuzzer target for the safetensors parser
   (ioupos_safetensors_parse, ioupos.h section 13). On success every tensor must lie inside the
   input, tile the data buffer in offset order, have nbytes = product(shape) * dtype size, be
   found by its name, and convert to float when it has a float dtype. Seeds:
   fuzz/corpus/safetensors. How it is built and replayed: fuzz/replay_main.h. */
#ifndef IOUPOS_FUZZ_REPLAY /* the replay build links the implementation (build/fuzz/ioupos.o) */
#define IOUPOS_IMPLEMENTATION
#endif
#include "ioupos.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ioupos_st_file f;
  int i, j;
  if (ioupos_safetensors_parse(data, size, "fuzz.safetensors", &f) != IOUPOS_OK) {
    if (f.n != 0 || f.tensors || f.metadata || f.strings || f.by_name) __builtin_trap();
    return 0;
  }
  for (i = 0; i < f.n; ++i) {
    const ioupos_st_tensor *t = &f.tensors[i];
    const uint8_t *p = (const uint8_t *)t->data;
    uint64_t count = 1;
    size_t es = ioupos_st_dtype_size(t->dtype);
    if (!es || t->ndim < 0 || t->ndim > IOUPOS_ST_MAX_DIMS) __builtin_trap();
    if (p < data || p > data + size || t->nbytes > (size_t)(data + size - p)) __builtin_trap();
    if (i > 0 && (const uint8_t *)f.tensors[i - 1].data + f.tensors[i - 1].nbytes != p)
      __builtin_trap();
    if (i == f.n - 1 && p + t->nbytes != data + size) __builtin_trap();
    for (j = 0; j < t->ndim; ++j) {
      if (t->shape[j] < 0) __builtin_trap();
      count *= (uint64_t)t->shape[j];
    }
    if (count * es != t->nbytes) __builtin_trap();
    if (ioupos_safetensors_find(&f, t->name) != t) __builtin_trap();
    if (t->dtype == IOUPOS_ST_F32 || t->dtype == IOUPOS_ST_F16 || t->dtype == IOUPOS_ST_BF16 ||
        t->dtype == IOUPOS_ST_F64) {
      float *x = (float *)malloc(sizeof(float) * (size_t)count + 1);
      if (!x || ioupos_st_to_f32(t, x) != IOUPOS_OK) __builtin_trap();
      free(x);
    }
  }
  for (i = 0; i < f.n_metadata; ++i)
    if (!f.metadata[i].key || !f.metadata[i].value) __builtin_trap();
  ioupos_safetensors_free(&f);
  return 0;
}

#define FUZZ_TARGET "fuzz_safetensors"
#include "replay_main.h"
