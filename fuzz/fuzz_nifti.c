/* fuzz/fuzz_nifti.c — libFuzzer target for the NIfTI-1 reader (ioupos_nifti_read_memory: gzip
   parsing and inflate, header checks, every datatype, byte order, scaling, affines), followed by
   the cheap preprocessing steps on what it returns (RAS reorientation, window, foreground box).
   Seeds: fuzz/corpus/nifti, made by fuzz/make_nifti_corpus.c. How it is built and replayed:
   fuzz/replay_main.h. */
#ifndef IOUPOS_FUZZ_REPLAY /* the replay build links the implementation (build/fuzz/ioupos.o) */
#define IOUPOS_IMPLEMENTATION
#endif
#include "ioupos.h"

#include <math.h>

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

#define FUZZ_TARGET "fuzz_nifti"
#include "replay_main.h"
