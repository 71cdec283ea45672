/* fuzz/fuzz_png.c — libFuzzer target for the PNG path (ioupos_image_load_memory): every pixel
   of a decoded image must be in [0, 1]. Seeds: fuzz/corpus/png. How it is built and replayed:
   fuzz/replay_main.h. */
#ifndef IOUPOS_FUZZ_REPLAY /* the replay build links the implementation (build/fuzz/ioupos.o) */
#define IOUPOS_IMPLEMENTATION
#endif
#include "ioupos.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ioupos_image img;
  if (ioupos_image_load_memory(data, size, "fuzz.png", &img) == IOUPOS_OK) {
    /* touch every pixel: values must be finite and in [0, 1] */
    size_t i, n = (size_t)img.h * (size_t)img.w;
    for (i = 0; i < n; ++i)
      if (!(img.data[i] >= 0.0f && img.data[i] <= 1.0f)) __builtin_trap();
    ioupos_image_free(&img);
  }
  return 0;
}

#define FUZZ_TARGET "fuzz_png"
#include "replay_main.h"
