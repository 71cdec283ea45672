/* IOUPOS_STATIC: every function static to this file; the ones it does not call must not break
   a -Wall -Werror build. */
#define IOUPOS_STATIC
#define IOUPOS_IMPLEMENTATION
#include "ioupos.h"

int main(void) {
  ioupos_rng rng;
  ioupos_box a, b;
  ioupos_iou_sampler s;
  const int shape[2] = {200, 180}, crop[2] = {96, 96};
  double iou;
  int ok;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  ioupos_rng_seed(&rng, 1);
  ok = ioupos_iou_sampler_init(&s, 2, shape, crop, 0.3, 0.6, IOUPOS_PAIR_ANCHORED) == 0 &&
       ioupos_iou_sampler_draw(&s, &rng, &a, &b) == 0;
  iou = ioupos_box_iou(&a, &b);
  ok = ok && iou >= 0.3 && iou <= 0.6;
  ioupos_iou_sampler_free(&s);
  printf("static_check: %d checks passed, %d failed\n", ok, !ok);
  return !ok;
}
