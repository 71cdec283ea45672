/* fuzz/fuzz_png.c — libFuzzer target for the PNG path (ioupos_image_load_memory).

   Built two ways:
     make fuzz         clang -fsanitize=fuzzer,address,undefined: runs libFuzzer for a bounded
                       time on fuzz/corpus/png
     make fuzz-replay  any compiler with -DIOUPOS_FUZZ_REPLAY and ASan/UBSan: a standalone main
                       feeds every file named on the command line to the target once */
#define IOUPOS_IMPLEMENTATION
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

#ifdef IOUPOS_FUZZ_REPLAY
int main(int argc, char **argv) {
  int i;
  for (i = 1; i < argc; ++i) {
    void *data;
    size_t size;
    if (ioupos_read_file(argv[i], &data, &size) != IOUPOS_OK) {
      fprintf(stderr, "%s\n", ioupos_failure_reason());
      return 1;
    }
    LLVMFuzzerTestOneInput((const uint8_t *)data, size);
    free(data);
  }
  printf("fuzz_png replay: %d inputs, no crash\n", argc - 1);
  return 0;
}
#endif
