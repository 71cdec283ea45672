/* tests/consumer — the header used as the README says, from three translation units: this one
   sees declarations only, impl.c holds ioupos's implementation with IOUPOS_NO_STB_IMPLEMENTATION,
   stb_impl.c is the project's own stb. Built with the README's plain command line. */
#include <stdio.h>
#include "ioupos.h"

int main(void) {
  ioupos_iou_sampler s;
  ioupos_rng rng;
  ioupos_box a, b;
  const int shape[3] = {64, 128, 128}, crop[3] = {48, 96, 96};
  int i, bad = 0;
  if (ioupos_iou_sampler_init(&s, 3, shape, crop, 0.3, 0.6, IOUPOS_PAIR_JOINT)) {
    printf("consumer: %s\n", ioupos_failure_reason());
    return 1;
  }
  ioupos_rng_seed(&rng, 3);
  for (i = 0; i < 1000; ++i) {
    double iou;
    ioupos_iou_sampler_draw(&s, &rng, &a, &b);
    iou = ioupos_box_iou(&a, &b);
    bad += !(iou >= 0.3 && iou <= 0.6);
  }
  ioupos_iou_sampler_free(&s);
  printf("consumer: %d checks passed, %d failed\n", bad == 0, bad != 0);
  return bad != 0;
}
