// tests/cxx_check.cpp — the header compiles as C++ (declarations and implementation) with
// -Wall -Wextra -Werror, and the sampler works when called from C++.
#define IOUPOS_IMPLEMENTATION
#include "ioupos.h"
#include <cstdio>

int main() {
  ioupos_iou_sampler s;
  ioupos_rng rng;
  ioupos_box a, b;
  const int shape[2] = {256, 200}, crop[2] = {96, 64};
  int bad = 0;
  if (ioupos_iou_sampler_init(&s, 2, shape, crop, 0.3, 0.6, IOUPOS_PAIR_ANCHORED) != IOUPOS_OK) {
    std::printf("cxx_check: init failed: %s\n", ioupos_failure_reason());
    return 1;
  }
  ioupos_rng_seed(&rng, 1);
  for (int i = 0; i < 10000; ++i) {
    ioupos_iou_sampler_draw(&s, &rng, &a, &b);
    double iou = ioupos_box_iou(&a, &b);
    bad += !(iou >= 0.3 && iou <= 0.6);
  }
  ioupos_iou_sampler_free(&s);
  std::printf("cxx_check: %d checks passed, %d failed\n", bad == 0, bad != 0);
  return bad != 0;
}
