/* fuzz/fuzz_nifti.c — libFuzzer target for the NIfTI-1 reader (ioupos_nifti_read_memory: gzip
   parsing and inflate, header checks, every datatype, byte order, scaling, affines), followed by
   the cheap preprocessing steps on what it returns (RAS reorientation, window, foreground box).

   Built two ways:
     clang -g -O1 -fsanitize=fuzzer,address,undefined -I. -I/usr/include/stb fuzz/fuzz_nifti.c
                       libFuzzer; seeds in fuzz/corpus/nifti (made by fuzz/make_nifti_corpus.c)
     -DIOUPOS_FUZZ_REPLAY with any compiler (plus ASan/UBSan): a standalone main feeds every file
                       named on the command line to the target once */
#define IOUPOS_IMPLEMENTATION
#include "ioupos.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ioupos_volume v;
  int r, c, lo[3], hi[3];
  if (ioupos_nifti_read_memory(data, size, "fuzz.nii", &v) != IOUPOS_OK) {
    if (v.data != NULL || !ioupos_failure_reason()[0]) __builtin_trap(); /* failures say why */
    return 0;
  }
  if (v.dim[0] <= 0 || v.dim[1] <= 0 || v.dim[2] <= 0 || !v.data) __builtin_trap();
  for (r = 0; r < 3; ++r)
    for (c = 0; c < 4; ++c)
      if (!isfinite(v.affine[r][c])) __builtin_trap();
  if (ioupos_volume_reorient_ras(&v) == IOUPOS_OK) {
    ioupos_volume_window(&v, -500, 500);
    ioupos_volume_foreground_box(&v, lo, hi);
    for (r = 0; r < 3; ++r)
      if (lo[r] < 0 || hi[r] > v.dim[r] || lo[r] > hi[r]) __builtin_trap();
  }
  ioupos_volume_free(&v);
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
  printf("fuzz_nifti replay: %d inputs, no crash\n", argc - 1);
  return 0;
}
#endif
