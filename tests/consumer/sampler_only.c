/* tests/consumer/sampler_only.c — the drop-in sampler: IOUPOS_ONLY_SAMPLER keeps sections 1-4
   (configuration, errors, RNG, boxes / IoU / the crop-pair sampler and the local crops) and
   nothing else. Built by the Makefile, from the repository root, as strict C99 and as C++11
   with only the C library:
       cc  -std=c99   -pedantic -Wall -Wextra -Werror tests/consumer/sampler_only.c -lm
       c++ -std=c++11 -pedantic -Wall -Wextra -Werror -x c++ tests/consumer/sampler_only.c -lm
   no -D_POSIX_C_SOURCE, no include path at all (ioupos.h is found relative to this file), no
   -lpthread. The Makefile also lists the headers the preprocessor opens and fails on any
   POSIX, pthread or stb header; the #error below is the same check from inside (glibc's and
   stb's include guards). */
#define IOUPOS_ONLY_SAMPLER
#define IOUPOS_IMPLEMENTATION
#include "../../ioupos.h"
#include "../../ioupos.h" /* a second include (declarations, then nothing new) is harmless */

#include <string.h>
#include "../test_util.h"

#if defined(_PTHREAD_H) || defined(_UNISTD_H) || defined(_FCNTL_H) || defined(_DIRENT_H) || \
    defined(_SYS_STAT_H) || defined(_SIGNAL_H) || defined(STBI_INCLUDE_STB_IMAGE_H) ||      \
    defined(INCLUDE_STB_IMAGE_WRITE_H)
#error "IOUPOS_ONLY_SAMPLER pulled in a POSIX or stb header"
#endif
/* sections 5-22 are not declared: their macros are absent */
#if defined(IOUPOS_AUGMENT_SCRATCH) || defined(IOUPOS_AUG_MAX_TAIL) || \
    defined(IOUPOS_TENSOR_MAX_DIMS) || defined(IOUPOS_SWIN_STAGES)
#error "IOUPOS_ONLY_SAMPLER declared more than sections 1-4"
#endif

/* a box of the request's size, inside the image */
static int box_ok(const ioupos_box *b, int dims, const int shape[], const int crop[]) {
  int k;
  if (b->dims != dims) return 0;
  for (k = 0; k < dims; ++k)
    if (b->lo[k] < 0 || b->hi[k] > shape[k] || b->hi[k] - b->lo[k] != crop[k]) return 0;
  return 1;
}

/* n pairs for one request: every pair inside the image and the interval; both corners seen */
static void check_pairs(int dims, const int shape[], const int crop[], double lo, double hi,
                        int mode, long n) {
  ioupos_iou_sampler s;
  ioupos_rng rng;
  ioupos_box a, b;
  long i, outside = 0, bad_box = 0, failed = 0;
  double iou_min = 2, iou_max = -1;
  char sh[64], cr[64];
  int rc = ioupos_iou_sampler_init(&s, dims, shape, crop, lo, hi, mode);
  ioupos_format_shape(sh, sizeof sh, dims, shape);
  ioupos_format_shape(cr, sizeof cr, dims, crop);
  CHECK(rc == IOUPOS_OK, "init %s [%g, %g] mode %d: %s", sh, lo, hi, mode,
        ioupos_failure_reason());
  if (rc) return;
  CHECK(s.n_pairs > 0, "%s: n_pairs 0", sh);
  ioupos_rng_seed(&rng, 12345);
  for (i = 0; i < n; ++i) {
    double iou;
    if (ioupos_iou_sampler_draw(&s, &rng, &a, &b) != IOUPOS_OK) {
      ++failed;
      continue;
    }
    bad_box += !box_ok(&a, dims, shape, crop) || !box_ok(&b, dims, shape, crop);
    iou = ioupos_box_iou(&a, &b);
    outside += !(iou >= lo && iou <= hi);
    if (iou < iou_min) iou_min = iou;
    if (iou > iou_max) iou_max = iou;
  }
  CHECK(failed == 0, "%s: %ld draws failed", sh, failed);
  CHECK(bad_box == 0, "%s: %ld boxes outside the image or of the wrong size", sh, bad_box);
  CHECK(outside == 0, "%s [%g, %g] mode %d: %ld of %ld pairs outside the interval", sh, lo, hi,
        mode, outside, n);
  printf("  %s crop %s [%g, %g] %s: %ld pairs, IoU in [%.4f, %.4f]\n", sh, cr, lo, hi,
         mode == IOUPOS_PAIR_JOINT ? "joint" : "anchored", n, iou_min, iou_max);
  ioupos_iou_sampler_free(&s);
}

int main(void) {
  long n = tu_env_long("IOUPOS_TEST_DRAWS", 200000) / 4;
  const int shape2[2] = {200, 180}, crop2[2] = {96, 96};
  const int shape3[3] = {40, 64, 72}, crop3[3] = {24, 32, 40};
  const int tight[2] = {100, 100};

  /* 1. every pair in the interval, 2D and 3D, both modes, thin and wide intervals */
  check_pairs(2, shape2, crop2, 0.3, 0.6, IOUPOS_PAIR_ANCHORED, n);
  check_pairs(2, shape2, crop2, 0.3, 0.6, IOUPOS_PAIR_JOINT, n);
  check_pairs(2, shape2, crop2, 0.45, 0.46, IOUPOS_PAIR_ANCHORED, n);
  check_pairs(2, shape2, crop2, 0.0, 0.0, IOUPOS_PAIR_JOINT, n);
  check_pairs(3, shape3, crop3, 0.3, 0.6, IOUPOS_PAIR_ANCHORED, n);
  check_pairs(3, shape3, crop3, 0.6, 1.0, IOUPOS_PAIR_JOINT, n);

  /* 2. refusals, found at init, with a reason naming shape, crop and interval */
  {
    ioupos_iou_sampler s;
    const int big[2] = {120, 96};
    const char *why;
    /* 96x96 crops in 100x100 overlap by >= 92 per axis: IoU >= 0.85, so [0, 0.5] is empty */
    int rc = ioupos_iou_sampler_init(&s, 2, tight, crop2, 0.0, 0.5, IOUPOS_PAIR_ANCHORED);
    why = ioupos_failure_reason();
    CHECK(rc == IOUPOS_EINFEASIBLE, "impossible interval: %s (%s)", ioupos_status_name(rc), why);
    CHECK(strstr(why, "100x100") && strstr(why, "96x96") && strstr(why, "0.5"),
          "the reason names shape, crop and interval: \"%s\"", why);
    rc = ioupos_iou_sampler_init(&s, 2, tight, crop2, 0.0, 0.5, IOUPOS_PAIR_JOINT);
    CHECK(rc == IOUPOS_EINFEASIBLE, "impossible interval (joint): %s", ioupos_status_name(rc));
    rc = ioupos_iou_sampler_init(&s, 2, tight, big, 0.3, 0.6, IOUPOS_PAIR_ANCHORED);
    CHECK(rc == IOUPOS_EINVAL && *ioupos_failure_reason(), "crop larger than the image: %s",
          ioupos_status_name(rc));
    rc = ioupos_iou_sampler_init(&s, 2, shape2, crop2, 0.6, 0.3, IOUPOS_PAIR_ANCHORED);
    CHECK(rc == IOUPOS_EINVAL, "reversed interval: %s", ioupos_status_name(rc));
    rc = ioupos_iou_sampler_init(&s, 4, shape2, crop2, 0.3, 0.6, IOUPOS_PAIR_ANCHORED);
    CHECK(rc == IOUPOS_EINVAL, "dims 4: %s", ioupos_status_name(rc));
    /* the feasible corner of the same request */
    rc = ioupos_iou_sampler_init(&s, 2, tight, crop2, 0.85, 1.0, IOUPOS_PAIR_ANCHORED);
    CHECK(rc == IOUPOS_OK, "[0.85, 1] in 100x100: %s", ioupos_failure_reason());
    if (rc == IOUPOS_OK) ioupos_iou_sampler_free(&s);
  }

  /* 3. determinism: the same seed gives the same pairs, another seed other pairs; a split
     child does not depend on how far its parent advanced after the split */
  {
    ioupos_iou_sampler s;
    ioupos_rng r1, r2, r3;
    ioupos_box a1, b1, a2, b2, a3, b3;
    int i, same = 1, differ = 0;
    CHECK(ioupos_iou_sampler_init(&s, 3, shape3, crop3, 0.3, 0.6, IOUPOS_PAIR_ANCHORED) == 0,
          "%s", ioupos_failure_reason());
    ioupos_rng_seed(&r1, 2024);
    ioupos_rng_seed(&r2, 2024);
    ioupos_rng_seed(&r3, 2025);
    for (i = 0; i < 1000; ++i) {
      ioupos_iou_sampler_draw(&s, &r1, &a1, &b1);
      ioupos_iou_sampler_draw(&s, &r2, &a2, &b2);
      ioupos_iou_sampler_draw(&s, &r3, &a3, &b3);
      same &= memcmp(&a1, &a2, sizeof a1) == 0 && memcmp(&b1, &b2, sizeof b1) == 0;
      differ |= memcmp(&a1, &a3, sizeof a1) != 0 || memcmp(&b1, &b3, sizeof b1) != 0;
    }
    CHECK(same, "seed 2024 twice gives different pairs");
    CHECK(differ, "seeds 2024 and 2025 give the same 1000 pairs");
    ioupos_iou_sampler_free(&s);
    {
      ioupos_rng p, c1, c2;
      ioupos_rng_seed(&p, 7);
      c1 = ioupos_rng_split(&p, 3);
      c2 = ioupos_rng_split(&p, 3);
      CHECK(ioupos_rng_u64(&c1) == ioupos_rng_u64(&c2), "split is a pure function");
      c1 = ioupos_rng_split(&p, 4);
      CHECK(ioupos_rng_u64(&c1) != ioupos_rng_u64(&c2), "keys 3 and 4 give the same child");
    }
  }

  /* 4. local crops (DINO multi-crop) around a fixed box */
  {
    ioupos_box A, B;
    ioupos_rng rng;
    const int small[2] = {40, 48};
    uint64_t count = 0;
    long i, outside = 0;
    int rc;
    memset(&A, 0, sizeof A);
    A.dims = 2;
    A.lo[0] = 50, A.lo[1] = 40, A.hi[0] = 146, A.hi[1] = 136;
    rc = ioupos_local_crop_count(2, shape2, &A, small, 0.05, 0.2, &count);
    CHECK(rc == 0 && count > 0, "local count: %s", ioupos_failure_reason());
    ioupos_rng_seed(&rng, 5);
    for (i = 0; i < n / 4; ++i) {
      double iou;
      if (ioupos_local_crop_draw(2, shape2, &A, small, 0.05, 0.2, &rng, &B) != 0) {
        ++outside;
        continue;
      }
      iou = ioupos_box_iou(&A, &B);
      outside += !(iou >= 0.05 && iou <= 0.2) || !box_ok(&B, 2, shape2, small);
    }
    CHECK(outside == 0, "%ld local crops outside [0.05, 0.2] or the image", outside);
    /* a 40x48 crop has IoU at most 1920/9216 < 0.21 with a 96x96 box: [0.5, 1] is refused */
    rc = ioupos_local_crop_feasible(2, NULL, crop2, small, 0.5, 1.0);
    CHECK(rc == IOUPOS_EINFEASIBLE && *ioupos_failure_reason(), "local [0.5, 1]: %s",
          ioupos_status_name(rc));
    rc = ioupos_local_crop_draw(2, shape2, &A, small, 0.5, 1.0, &rng, &B);
    CHECK(rc == IOUPOS_EINFEASIBLE, "local draw [0.5, 1]: %s", ioupos_status_name(rc));
  }
  return tu_finish("sampler_only");
}
