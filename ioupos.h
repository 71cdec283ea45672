/* ioupos.h - v0.1.0 - IoU-based positive pairs for self-supervised learning on CT.
   Public domain-style single-file library in the manner of stb; see LICENSE at the end.

   WHAT IT IS
     Self-supervised pretraining (SimSiam, DINO) takes two crops of an image as a positive
     pair. On CT two random crops often show different organs; ioupos samples the two crops so
     that their IoU lies in an interval [min_iou, max_iou] (the published best is [0.3, 0.6]),
     exactly: every returned pair satisfies the interval and follows a known distribution.

   USAGE
     In exactly one C or C++ file of your project:
         #define IOUPOS_IMPLEMENTATION
         #include "ioupos.h"
     and everywhere else just #include "ioupos.h". Build with
         cc -std=c99 -O2 -D_POSIX_C_SOURCE=200809L -I<repo> -I/usr/include/stb prog.c -lm -lpthread
     stb_image / stb_image_write (Debian's libstb-dev) are compiled into the implementation
     file unless you define IOUPOS_NO_STB_IMPLEMENTATION (because your project already does).

   CONFIGURATION (define before the implementation include)
     IOUPOS_MALLOC(sz) / IOUPOS_FREE(p)   allocator (default malloc / free)
     IOUPOS_ASSERT(x)                     internal invariant checks (default assert)
     IOUPOS_STATIC                        make every function static to the including file
     IOUPOS_MAX_IMAGE_PIXELS              largest PNG accepted, in pixels (default 2^26)
     IOUPOS_NO_STB_IMPLEMENTATION         do not compile stb_image / stb_image_write here

   CONVENTIONS
     - Functions return 0 (IOUPOS_OK) or a negative ioupos_status; on failure the reason, a
       sentence naming the file, flag or values at fault, is in ioupos_failure_reason()
       (thread-local). The library never prints and never exits.
     - Every random draw takes an explicit ioupos_rng; there is no hidden global state, so a run
       is reproducible from its seed.
     - Axis order follows memory order, slowest first: 2D shape {H, W}, 3D shape {D, H, W}.

   TABLE OF CONTENTS
     1. Configuration and version
     2. Errors
     3. Random numbers (PCG32, seedable, splittable)
     4. Boxes, IoU and the exact crop-pair sampler
     5. Image I/O (PNG through stb_image / stb_image_write, atomic file writes)
*/
#ifndef IOUPOS_H
#define IOUPOS_H

/* ============================================================================================
   1. Configuration and version
   ============================================================================================ */

#include <stddef.h>
#include <stdint.h>

#define IOUPOS_VERSION_MAJOR 0
#define IOUPOS_VERSION_MINOR 1
#define IOUPOS_VERSION_PATCH 0
#define IOUPOS_VERSION "0.1.0"

#ifndef IOUPOS_MAX_DIM
#define IOUPOS_MAX_DIM 3 /* spatial dimensions supported: 2 and 3 */
#endif
#ifndef IOUPOS_MAX_IMAGE_PIXELS
#define IOUPOS_MAX_IMAGE_PIXELS (1 << 26) /* refuse larger PNGs (corrupt headers) */
#endif

#ifndef IOUPOS_DEF
#ifdef IOUPOS_STATIC
#define IOUPOS_DEF static
#else
#define IOUPOS_DEF extern
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ============================================================================================
   2. Errors
   ============================================================================================ */

typedef enum ioupos_status {
  IOUPOS_OK = 0,
  IOUPOS_EINVAL = -1,      /* malformed argument (bad dims, non-positive size, NaN bound, ...) */
  IOUPOS_EINFEASIBLE = -2, /* well-formed request that no crop pair can satisfy */
  IOUPOS_ENOMEM = -3,      /* allocation failed */
  IOUPOS_EIO = -4,         /* file could not be opened, read or written (disk full, ...) */
  IOUPOS_EFORMAT = -5,     /* corrupt or unsupported file content */
  IOUPOS_ERANGE = -6       /* sizes too large for the exact arithmetic used */
} ioupos_status;

/* The reason for the last failure on this thread ("" if none yet). Valid until the next failing
   call on the same thread. */
IOUPOS_DEF const char *ioupos_failure_reason(void);
/* "IOUPOS_EINVAL" etc. */
IOUPOS_DEF const char *ioupos_status_name(int status);

/* ============================================================================================
   3. Random numbers
   PCG32 (O'Neill 2014): 64-bit state, 2^63 selectable streams. ioupos_rng_split derives an
   independent child generator from a parent and a key without advancing the parent, so a
   sample's randomness can depend only on (seed, epoch, index), never on which thread runs it.
   ============================================================================================ */

typedef struct ioupos_rng {
  uint64_t state; /* advances with every draw */
  uint64_t inc;   /* stream selector, always odd */
} ioupos_rng;

IOUPOS_DEF void ioupos_rng_seed(ioupos_rng *rng, uint64_t seed);
IOUPOS_DEF void ioupos_rng_seed_stream(ioupos_rng *rng, uint64_t seed, uint64_t stream);
IOUPOS_DEF ioupos_rng ioupos_rng_split(const ioupos_rng *rng, uint64_t key);
IOUPOS_DEF uint32_t ioupos_rng_u32(ioupos_rng *rng);
IOUPOS_DEF uint64_t ioupos_rng_u64(ioupos_rng *rng);
/* Uniform integer in [0, n), exactly (no modulo bias); n must be >= 1. */
IOUPOS_DEF uint64_t ioupos_rng_below(ioupos_rng *rng, uint64_t n);
/* Uniform double in [0, 1) with 53 random bits. */
IOUPOS_DEF double ioupos_rng_uniform(ioupos_rng *rng);

/* ============================================================================================
   4. Boxes, IoU and the exact crop-pair sampler

   A box is half-open per axis: lo[k] <= x < hi[k], axes slowest first. IoU is
   (double)intersection / (double)union of the integer volumes.

   ioupos_iou_sampler draws two crops of size crop[] inside an image of size shape[] whose IoU
   lies in [min_iou, max_iou] (inclusive both ends), from an exactly known distribution:

     IOUPOS_PAIR_ANCHORED (default; what the research code intended): the first crop is uniform
       over the placements that have at least one valid partner, the second is uniform over the
       first crop's valid partners.
     IOUPOS_PAIR_JOINT: uniform over all valid ordered pairs, i.e. two independent uniform crops
       conditioned on the interval.

   How (no unbounded rejection): both crops have the same size, so per axis k the overlap
   length o_k = max(0, c_k - |q_k - p_k|) takes c_k + 1 values and the IoU I / (2V - I), with
   I = prod o_k and V = prod c_k, is increasing in I. The interval becomes an integer range
   [inter_lo, inter_hi] of I, and the constraint is separable over per-axis overlap classes.
   Counting tables over those classes (built by init, sizes O(c^2) to O(c^3 / 2)) give exact
   marginals; see the implementation section for the details and the one bounded rejection.

   init fails, with a reason naming shape, crop and interval, when dims is not 2 or 3, a size
   is not positive, a crop is larger than the image, a bound is NaN, outside [0, 1] or the
   bounds are reversed, mode is unknown, or no pair can satisfy the interval. After a
   successful init, draw always succeeds. A sampler is read-only during draws: one sampler can
   serve many threads, each with its own ioupos_rng.
   ============================================================================================ */

typedef struct ioupos_box {
  int dims;   /* 2 or 3 */
  int lo[3];  /* first voxel, slowest axis first; unused axes are 0 */
  int hi[3];  /* one past the last voxel */
} ioupos_box;

/* IoU of two boxes of the same dims (any sizes); 0 when both are empty, NaN if dims differ. */
IOUPOS_DEF double ioupos_box_iou(const ioupos_box *a, const ioupos_box *b);

enum { IOUPOS_PAIR_ANCHORED = 0, IOUPOS_PAIR_JOINT = 1 };

typedef struct ioupos_iou_sampler {
  /* the request, as given */
  int dims, mode;
  int shape[3], crop[3];
  double min_iou, max_iou;
  /* derived, read-only */
  int64_t inter_lo, inter_hi; /* the interval as a range of intersection volumes */
  uint64_t n_pairs;           /* number of valid ordered pairs (placement a, placement b) */
  uint64_t n_first;           /* ANCHORED: placements with at least one valid partner */
  int max_tries;              /* cap on the partner draw's bounded rejection (default 256);
                                 past it an exact slower path runs. 0 forces that path. */
  /* private: tables, internal axis order (largest table axis first, 2D padded with a dummy
     axis of size 1), see the implementation */
  int ax_user[3];             /* internal axis -> user axis, -1 for the dummy axis */
  int c[3], n[3];             /* crop and number of placements (shape - crop + 1) */
  int omin[3];                /* smallest overlap class >= 1 that can occur on the axis */
  int lam_lo[3], lam_hi[3];   /* range of partner-box lower bounds l = max(1, c - m) */
  int emin[3], emax[3];       /* range of reach classes e = min(m, c) of first placements */
  uint64_t *joint_cum;        /* JOINT: cumulative weight over (oA, oB) */
  uint64_t *joint_prefC;      /* JOINT: prefix sums of axis C's overlap-class weights */
  uint64_t *s1, *s0;          /* ANCHORED: suffix counts of nonzero overlap vectors */
  uint64_t *first_cum;        /* ANCHORED: cumulative first-placement weight over (eA, eB) */
  int *first_thr;             /* ANCHORED: smallest valid reach class on axis C per (eA, eB) */
} ioupos_iou_sampler;

IOUPOS_DEF int ioupos_iou_sampler_init(ioupos_iou_sampler *s, int dims, const int shape[],
                                       const int crop[], double min_iou, double max_iou,
                                       int mode);
IOUPOS_DEF int ioupos_iou_sampler_draw(const ioupos_iou_sampler *s, ioupos_rng *rng,
                                       ioupos_box *a, ioupos_box *b);
IOUPOS_DEF void ioupos_iou_sampler_free(ioupos_iou_sampler *s);

/* "96x96", "160x320x288" style text of dims integers for messages; at most cap bytes. */
IOUPOS_DEF void ioupos_format_shape(char *buf, size_t cap, int dims, const int v[]);

/* ============================================================================================
   5. Image I/O
   ============================================================================================ */

typedef struct ioupos_image {
  int h, w;    /* rows, columns */
  float *data; /* h * w grey values in [0, 1], row-major */
} ioupos_image;

/* Load a PNG (8 or 16 bit, grey, grey+alpha, RGB or RGBA) as grey in [0, 1]. Colour is
   converted with ITU-R 601-2 luma (PIL's "L"); alpha is ignored. Other formats are refused. */
IOUPOS_DEF int ioupos_image_load(const char *path, ioupos_image *img);
/* The same from bytes in memory; name is used in messages. */
IOUPOS_DEF int ioupos_image_load_memory(const void *data, size_t size, const char *name,
                                        ioupos_image *img);
IOUPOS_DEF void ioupos_image_free(ioupos_image *img);
/* Read a whole file into a fresh IOUPOS_MALLOC buffer (*data, *size). */
IOUPOS_DEF int ioupos_read_file(const char *path, void **data, size_t *size);

/* Write an 8-bit PNG (channels 1, 2, 3 or 4) atomically: to "<path>.tmp.<pid>", then rename,
   so a crash or a full disk never leaves a truncated file under the final name. */
IOUPOS_DEF int ioupos_png_write(const char *path, int w, int h, int channels,
                                const uint8_t *pixels);
/* Write bytes to path atomically (same temporary-and-rename scheme). */
IOUPOS_DEF int ioupos_write_file_atomic(const char *path, const void *data, size_t size);

#ifdef __cplusplus
}
#endif
#endif /* IOUPOS_H */

/* ############################################################################################
   IMPLEMENTATION
   ############################################################################################ */
#ifdef IOUPOS_IMPLEMENTATION
#ifndef IOUPOS_IMPLEMENTATION_DONE
#define IOUPOS_IMPLEMENTATION_DONE

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(_WIN32)
#include <process.h>
#define ioupos__getpid _getpid
#else
#include <fcntl.h>
#include <unistd.h>
#define ioupos__getpid getpid
#endif

#ifndef IOUPOS_MALLOC
#define IOUPOS_MALLOC(sz) malloc(sz)
#define IOUPOS_FREE(p) free(p)
#endif
#ifndef IOUPOS_ASSERT
#include <assert.h>
#define IOUPOS_ASSERT(x) assert(x)
#endif

#if defined(__cplusplus) && __cplusplus >= 201103L
#define IOUPOS__THREAD_LOCAL thread_local
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && !defined(__STDC_NO_THREADS__)
#define IOUPOS__THREAD_LOCAL _Thread_local
#elif defined(_MSC_VER)
#define IOUPOS__THREAD_LOCAL __declspec(thread)
#else
#define IOUPOS__THREAD_LOCAL __thread
#endif

#ifndef IOUPOS_NO_STB_IMPLEMENTATION
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wtype-limits"
#endif
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_ONLY_PNG
#endif
#include "stb_image.h"
#include "stb_image_write.h"
#ifndef IOUPOS_NO_STB_IMPLEMENTATION
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#endif

/* ---- 2. Errors ---------------------------------------------------------------------------- */

static IOUPOS__THREAD_LOCAL char ioupos__reason[512];

IOUPOS_DEF const char *ioupos_failure_reason(void) { return ioupos__reason; }

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int ioupos__fail(int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ioupos__reason, sizeof ioupos__reason, fmt, ap);
  va_end(ap);
  return status;
}

IOUPOS_DEF const char *ioupos_status_name(int status) {
  switch (status) {
    case IOUPOS_OK: return "IOUPOS_OK";
    case IOUPOS_EINVAL: return "IOUPOS_EINVAL";
    case IOUPOS_EINFEASIBLE: return "IOUPOS_EINFEASIBLE";
    case IOUPOS_ENOMEM: return "IOUPOS_ENOMEM";
    case IOUPOS_EIO: return "IOUPOS_EIO";
    case IOUPOS_EFORMAT: return "IOUPOS_EFORMAT";
    case IOUPOS_ERANGE: return "IOUPOS_ERANGE";
    default: return "IOUPOS_E?";
  }
}

/* Overflow-checked array allocation (count * size), zero-filled. */
static void *ioupos__calloc(size_t count, size_t size) {
  void *p;
  size_t bytes;
  if (size != 0 && count > (size_t)-1 / size) return NULL;
  bytes = count * size;
  p = IOUPOS_MALLOC(bytes > 0 ? bytes : 1);
  if (p) memset(p, 0, bytes);
  return p;
}

/* ---- 3. Random numbers ---------------------------------------------------------------------- */

static uint64_t ioupos__splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

IOUPOS_DEF uint32_t ioupos_rng_u32(ioupos_rng *rng) {
  uint64_t old = rng->state;
  uint32_t xorshifted, rot;
  rng->state = old * 6364136223846793005ull + rng->inc;
  xorshifted = (uint32_t)(((old >> 18) ^ old) >> 27);
  rot = (uint32_t)(old >> 59);
  return (xorshifted >> rot) | (xorshifted << ((32u - rot) & 31u));
}

IOUPOS_DEF void ioupos_rng_seed_stream(ioupos_rng *rng, uint64_t seed, uint64_t stream) {
  rng->state = 0;
  rng->inc = (stream << 1) | 1u;
  (void)ioupos_rng_u32(rng);
  rng->state += seed;
  (void)ioupos_rng_u32(rng);
}

IOUPOS_DEF void ioupos_rng_seed(ioupos_rng *rng, uint64_t seed) {
  ioupos_rng_seed_stream(rng, ioupos__splitmix64(seed), ioupos__splitmix64(~seed));
}

IOUPOS_DEF ioupos_rng ioupos_rng_split(const ioupos_rng *rng, uint64_t key) {
  ioupos_rng child;
  uint64_t h = ioupos__splitmix64(rng->state ^ ioupos__splitmix64(rng->inc + key));
  ioupos_rng_seed_stream(&child, h, ioupos__splitmix64(h ^ key));
  return child;
}

IOUPOS_DEF uint64_t ioupos_rng_u64(ioupos_rng *rng) {
  uint64_t hi = ioupos_rng_u32(rng);
  return (hi << 32) | ioupos_rng_u32(rng);
}

IOUPOS_DEF uint64_t ioupos_rng_below(ioupos_rng *rng, uint64_t n) {
  IOUPOS_ASSERT(n >= 1);
  if (n <= 0xFFFFFFFFull) {
    /* Lemire's multiply-shift with rejection of the biased low products (acceptance > 1/2). */
    uint32_t n32 = (uint32_t)n;
    uint64_t m = (uint64_t)ioupos_rng_u32(rng) * n32;
    uint32_t low = (uint32_t)m;
    if (low < n32) {
      uint32_t threshold = (uint32_t)(0u - n32) % n32;
      while (low < threshold) {
        m = (uint64_t)ioupos_rng_u32(rng) * n32;
        low = (uint32_t)m;
      }
    }
    return m >> 32;
  } else {
#if defined(__SIZEOF_INT128__)
    /* the same with a 128-bit product: no division unless the low half is in the biased zone */
    unsigned __int128 m = (unsigned __int128)ioupos_rng_u64(rng) * n;
    uint64_t low = (uint64_t)m;
    if (low < n) {
      uint64_t threshold = (0u - n) % n;
      while (low < threshold) {
        m = (unsigned __int128)ioupos_rng_u64(rng) * n;
        low = (uint64_t)m;
      }
    }
    return (uint64_t)(m >> 64);
#else
    /* Reject the lowest 2^64 mod n values (acceptance > 1/2): the rest reduce uniformly. */
    uint64_t threshold = (0u - n) % n, r;
    do r = ioupos_rng_u64(rng); while (r < threshold);
    return r % n;
#endif
  }
}

IOUPOS_DEF double ioupos_rng_uniform(ioupos_rng *rng) {
  return (double)(ioupos_rng_u64(rng) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- 4. Boxes, IoU and the exact crop-pair sampler ------------------------------------------ */

IOUPOS_DEF double ioupos_box_iou(const ioupos_box *a, const ioupos_box *b) {
  int64_t va = 1, vb = 1, vi = 1;
  int k;
  if (a->dims != b->dims || a->dims < 1 || a->dims > IOUPOS_MAX_DIM) return NAN;
  for (k = 0; k < a->dims; ++k) {
    int64_t la = a->hi[k] - a->lo[k], lb = b->hi[k] - b->lo[k];
    int64_t lo = a->lo[k] > b->lo[k] ? a->lo[k] : b->lo[k];
    int64_t hi = a->hi[k] < b->hi[k] ? a->hi[k] : b->hi[k];
    va *= la > 0 ? la : 0;
    vb *= lb > 0 ? lb : 0;
    vi *= hi > lo ? hi - lo : 0;
  }
  if (va + vb - vi <= 0) return 0.0;
  return (double)vi / (double)(va + vb - vi);
}

IOUPOS_DEF void ioupos_format_shape(char *buf, size_t cap, int dims, const int v[]) {
  size_t used = 0;
  int k;
  if (cap == 0) return;
  buf[0] = 0;
  for (k = 0; k < dims && used < cap; ++k) {
    int w = snprintf(buf + used, cap - used, k ? "x%d" : "%d", v[k]);
    if (w < 0) break;
    used += (size_t)w;
  }
}

/* Sampler internals.

   Notation, per internal axis k (three axes A, B, C; a 2D request gets a dummy axis with
   crop 1 and shape 1): crop c, placements 0..n-1 (n = shape - c + 1). For two placements p, q
   the displacement is delta = q - p and the overlap o = max(0, c - |delta|) in 0..c. The
   intersection volume is I = oA * oB * oC and the pair is valid iff I is in [L, U] =
   [inter_lo, inter_hi]. Overlap vectors with every o >= 1 are "nonzero"; they are valid iff
   I in [L1, U] with L1 = max(L, 1). A vector with some o = 0 has I = 0 and is valid iff L = 0.

   JOINT. The number of ordered placement pairs on an axis whose overlap is o is
   J(o) = n (o = c), 2 (n - d) (o = c - d, 1 <= d <= n-1), sum_{d=c}^{n-1} 2 (n - d) (o = 0).
   The valid pairs are counted by sum over valid (oA, oB, oC) of J_A J_B J_C; init tabulates
   the cumulative weight over (oA, oB) with axis C summed in closed form through prefix sums of
   J_C. A draw picks (oA, oB) by binary search, oC by binary search in the prefix sums, then per
   axis the displacement (triangular weights for o = 0), its sign and the placement: exact.

   ANCHORED, partner given the first placement p. Write m = max(p, n-1-p) (room on the far
   side) and s = min(p, n-1-p) per axis. Reflect: u = |delta| in 0..m. The valid u vectors in
   the box prod [0, m_k] are: nonzero classes o in [l, c] with l = max(1, c - m) (u = c - o),
   and, when m >= c, the zero class o = 0 with z = m - c + 1 values u = c..m. Their number is
   H(l) + Z, where H(l) counts nonzero valid vectors with o_k >= l_k and Z counts vectors with
   at least one zero (only when L = 0). Draw u uniformly from them (tables below), give each
   axis a random sign, and accept iff q = p +- u lies inside the image (u = 0 accepts only one
   of its two signs, axes with n = 1 draw no sign). Every valid partner is produced by exactly
   one (u, signs) with probability 1 / (count * 2^d'), so accepted draws are uniform over the
   valid partners; and every valid u has its sign towards the far side inside the image, so
   the acceptance probability is at least 2^-d' >= 1/8 (d' = axes with n > 1, at most 3),
   whatever the shape and interval. After max_tries rejections (probability <= (7/8)^256 <
   2e-15 at the default) the partner is drawn by exact enumeration of the overlap classes.

   Tables for H: for the lower bounds that can occur, l in [lam_lo, lam_hi] per axis (from
   m in [ceil((n-1)/2), n-1]),
     s1[oA][lC][oB] = #{(oB' >= oB, oC >= lC) : oA oB' oC in [L1, U]}   (suffix over oB)
     s0[lB][lC][oA] = sum_{oA' >= oA} s1[oA'][lC][lB]                   (suffix over oA)
   so H(l) = s0[lB][lC][lA], and one uniform index in [0, H) is decoded by two binary searches
   plus a closed-form interval for oC. Internal axes are ordered by the size of their l range,
   largest first, which keeps both tables small (for realistic CT shapes l is 1 on most axes).

   ANCHORED, first placement. Whether p has a valid partner depends only on e = min(m, c) per
   axis and is monotone in e. Init tabulates, for each (eA, eB), the smallest valid eC and the
   number of placements with that (eA, eB) and eC at least it; a draw picks (eA, eB) by binary
   search and decodes the placements. */

#define IOUPOS__SAMPLER_DEFAULT_TRIES 256

static int64_t ioupos__ceil_div(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }
static int ioupos__imin(int a, int b) { return a < b ? a : b; }
static int ioupos__imax(int a, int b) { return a > b ? a : b; }

/* Number of placements p in 0..n-1 with max(p, n-1-p) >= t. */
static uint64_t ioupos__reach_count(int n, int t) {
  if (t > n - 1) return 0;
  if (2 * t <= n) return (uint64_t)n;
  return 2 * (uint64_t)(n - t);
}
/* The idx-th placement (0-based) with max(p, n-1-p) >= t. */
static int ioupos__reach_pos(int n, int t, uint64_t idx) {
  if (2 * t <= n) return (int)idx;
  return idx < (uint64_t)(n - t) ? (int)idx : t + (int)(idx - (uint64_t)(n - t));
}
/* Placements whose reach class min(max(p, n-1-p), c) is exactly e. */
static uint64_t ioupos__class_count(int n, int c, int e) {
  if (e >= c) return ioupos__reach_count(n, c);
  return 2 * e == n - 1 ? 1u : 2u;
}
static int ioupos__class_pos(int n, int c, int e, uint64_t idx) {
  if (e >= c) return ioupos__reach_pos(n, c, idx);
  return idx == 0 ? n - 1 - e : e;
}

/* Ordered placement pairs on internal axis k with overlap class o (see J above). */
static uint64_t ioupos__joint_weight(const ioupos_iou_sampler *s, int k, int o) {
  int64_t n = s->n[k], c = s->c[k], d = c - o;
  if (o == 0) return n > c ? (uint64_t)((n - c) * (n - c + 1)) : 0u;
  if (d > n - 1) return 0;
  return d == 0 ? (uint64_t)n : (uint64_t)(2 * (n - d));
}

/* Index helpers for the anchored tables. */
static size_t ioupos__s1_index(const ioupos_iou_sampler *s, int oA, int lC, int oB) {
  size_t nl_c = (size_t)(s->lam_hi[2] - s->lam_lo[2] + 1);
  size_t nb = (size_t)(s->c[1] - s->omin[1] + 2);
  return ((size_t)(oA - s->omin[0]) * nl_c + (size_t)(lC - s->lam_lo[2])) * nb +
         (size_t)(oB - s->omin[1]);
}
static size_t ioupos__s0_index(const ioupos_iou_sampler *s, int lB, int lC, int oA) {
  size_t nl_c = (size_t)(s->lam_hi[2] - s->lam_lo[2] + 1);
  size_t na = (size_t)(s->c[0] - s->omin[0] + 2);
  return ((size_t)(lB - s->lam_lo[1]) * nl_c + (size_t)(lC - s->lam_lo[2])) * na +
         (size_t)(oA - s->omin[0]);
}
/* H(l): nonzero valid overlap vectors with o_k >= l_k (l inside the tabulated ranges). */
static uint64_t ioupos__nonzero_count(const ioupos_iou_sampler *s, const int l[3]) {
  if (!s->s0) return 0;
  return s->s0[ioupos__s0_index(s, l[1], l[2], l[0])];
}
static int ioupos__lower_bound(const ioupos_iou_sampler *s, int k, int e) {
  return ioupos__imax(1, s->c[k] - e);
}
static int ioupos__first_valid(const ioupos_iou_sampler *s, int eA, int eB, int eC) {
  int l[3];
  if (s->inter_lo == 0 && (eA >= s->c[0] || eB >= s->c[1] || eC >= s->c[2])) return 1;
  l[0] = ioupos__lower_bound(s, 0, eA);
  l[1] = ioupos__lower_bound(s, 1, eB);
  l[2] = ioupos__lower_bound(s, 2, eC);
  return ioupos__nonzero_count(s, l) > 0;
}

static int ioupos__sampler_tables(ioupos_iou_sampler *s) {
  int k, oA, oB, lB, lC, eA, eB, eC;
  int64_t L = s->inter_lo, U = s->inter_hi, L1 = L > 1 ? L : 1;
  size_t na = (size_t)(s->c[0] + 1), nb = (size_t)(s->c[1] + 1), ne_a, ne_b, i;
  uint64_t acc;

  /* JOINT: prefix sums of J_C, then cumulative weight over (oA, oB). Both modes count the
     valid pairs (n_pairs decides feasibility); only JOINT keeps the cumulative table. */
  s->joint_prefC = (uint64_t *)ioupos__calloc((size_t)s->c[2] + 2, sizeof(uint64_t));
  if (s->mode == IOUPOS_PAIR_JOINT) s->joint_cum = (uint64_t *)ioupos__calloc(na * nb, sizeof(uint64_t));
  if (!s->joint_prefC || (s->mode == IOUPOS_PAIR_JOINT && !s->joint_cum)) return IOUPOS_ENOMEM;
  for (k = 0; k <= s->c[2]; ++k)
    s->joint_prefC[k + 1] = s->joint_prefC[k] + ioupos__joint_weight(s, 2, k);
  acc = 0;
  for (oA = 0; oA <= s->c[0]; ++oA) {
    uint64_t wa = ioupos__joint_weight(s, 0, oA);
    for (oB = 0; oB <= s->c[1]; ++oB) {
      uint64_t wb = ioupos__joint_weight(s, 1, oB), wc = 0;
      int64_t P = (int64_t)oA * oB;
      if (wa && wb) {
        if (P == 0) {
          wc = L == 0 ? s->joint_prefC[s->c[2] + 1] : 0;
        } else {
          int64_t lo = ioupos__ceil_div(L, P), hi = U / P;
          if (hi > s->c[2]) hi = s->c[2];
          if (hi >= lo) wc = s->joint_prefC[hi + 1] - s->joint_prefC[lo];
        }
      }
      acc += wa * wb * wc;
      if (s->joint_cum) s->joint_cum[(size_t)oA * nb + (size_t)oB] = acc;
    }
  }
  s->n_pairs = acc;
  if (acc == 0 || s->mode == IOUPOS_PAIR_JOINT) return IOUPOS_OK; /* infeasible or done */

  /* ANCHORED: suffix count tables of nonzero valid vectors (only if there are any). */
  if (U >= L1) {
    size_t nl_b = (size_t)(s->lam_hi[1] - s->lam_lo[1] + 1);
    size_t nl_c = (size_t)(s->lam_hi[2] - s->lam_lo[2] + 1);
    size_t ra = (size_t)(s->c[0] - s->omin[0] + 1), rb = (size_t)(s->c[1] - s->omin[1] + 1);
    s->s1 = (uint64_t *)ioupos__calloc(ra * nl_c * (rb + 1), sizeof(uint64_t));
    s->s0 = (uint64_t *)ioupos__calloc(nl_b * nl_c * (ra + 1), sizeof(uint64_t));
    if (!s->s1 || !s->s0) return IOUPOS_ENOMEM;
    /* oA descending, so each s1 block is folded into s0 while it is still in cache */
    for (oA = s->c[0]; oA >= s->omin[0]; --oA) {
      for (oB = s->c[1]; oB >= s->omin[1]; --oB) {
        int64_t P = (int64_t)oA * oB, lo = ioupos__ceil_div(L1, P), hi = U / P;
        if (hi > s->c[2]) hi = s->c[2];
        for (lC = s->lam_lo[2]; lC <= s->lam_hi[2]; ++lC) {
          int64_t from = lo > lC ? lo : lC;
          s->s1[ioupos__s1_index(s, oA, lC, oB)] = s->s1[ioupos__s1_index(s, oA, lC, oB + 1)] +
                                                   (hi >= from ? (uint64_t)(hi - from + 1) : 0u);
        }
      }
      for (lB = s->lam_lo[1]; lB <= s->lam_hi[1]; ++lB)
        for (lC = s->lam_lo[2]; lC <= s->lam_hi[2]; ++lC)
          s->s0[ioupos__s0_index(s, lB, lC, oA)] = s->s0[ioupos__s0_index(s, lB, lC, oA + 1)] +
                                                   s->s1[ioupos__s1_index(s, oA, lC, lB)];
    }
  }

  /* ANCHORED: first placements, by reach class. */
  ne_a = (size_t)(s->emax[0] - s->emin[0] + 1);
  ne_b = (size_t)(s->emax[1] - s->emin[1] + 1);
  s->first_cum = (uint64_t *)ioupos__calloc(ne_a * ne_b, sizeof(uint64_t));
  s->first_thr = (int *)ioupos__calloc(ne_a * ne_b, sizeof(int));
  if (!s->first_cum || !s->first_thr) return IOUPOS_ENOMEM;
  acc = 0;
  i = 0;
  for (eA = s->emin[0]; eA <= s->emax[0]; ++eA)
    for (eB = s->emin[1]; eB <= s->emax[1]; ++eB, ++i) {
      /* validity is monotone in eC: binary search for the smallest valid one */
      int lo = s->emin[2], hi = s->emax[2] + 1;
      while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (ioupos__first_valid(s, eA, eB, mid)) hi = mid; else lo = mid + 1;
      }
      eC = lo;
      s->first_thr[i] = eC;
      if (eC <= s->emax[2])
        acc += ioupos__class_count(s->n[0], s->c[0], eA) *
               ioupos__class_count(s->n[1], s->c[1], eB) * ioupos__reach_count(s->n[2], eC);
      s->first_cum[i] = acc;
    }
  s->n_first = acc;
  return IOUPOS_OK;
}

IOUPOS_DEF void ioupos_iou_sampler_free(ioupos_iou_sampler *s) {
  if (!s) return;
  IOUPOS_FREE(s->joint_cum);
  IOUPOS_FREE(s->joint_prefC);
  IOUPOS_FREE(s->s1);
  IOUPOS_FREE(s->s0);
  IOUPOS_FREE(s->first_cum);
  IOUPOS_FREE(s->first_thr);
  s->joint_cum = s->joint_prefC = s->s1 = s->s0 = s->first_cum = NULL;
  s->first_thr = NULL;
}

static double ioupos__iou_of(int64_t I, int64_t V) { return (double)I / (double)(2 * V - I); }

IOUPOS_DEF int ioupos_iou_sampler_init(ioupos_iou_sampler *s, int dims, const int shape[],
                                       const int crop[], double min_iou, double max_iou,
                                       int mode) {
  char sh[64] = "?", cr[64] = "?";
  int k, order[3], nl[3], user_c[3], user_n[3], st;
  int64_t V = 1, lo, hi;
  double pairs = 1.0, cells = 1.0;
  if (!s) return ioupos__fail(IOUPOS_EINVAL, "ioupos_iou_sampler_init: sampler is NULL");
  memset(s, 0, sizeof *s);
  if (dims != 2 && dims != 3)
    return ioupos__fail(IOUPOS_EINVAL, "IoU sampler: dims is %d; it must be 2 or 3", dims);
  if (!shape || !crop)
    return ioupos__fail(IOUPOS_EINVAL, "IoU sampler: shape or crop is NULL");
  ioupos_format_shape(sh, sizeof sh, dims, shape);
  ioupos_format_shape(cr, sizeof cr, dims, crop);
  for (k = 0; k < dims; ++k) {
    if (shape[k] <= 0 || crop[k] <= 0)
      return ioupos__fail(IOUPOS_EINVAL,
                          "IoU sampler: image shape %s and crop %s must be positive on every axis",
                          sh, cr);
    if (crop[k] > shape[k])
      return ioupos__fail(IOUPOS_EINVAL,
                          "IoU sampler: crop %s is larger than the image shape %s on axis %d "
                          "(%d > %d)", cr, sh, k, crop[k], shape[k]);
  }
  if (!(min_iou >= 0.0 && min_iou <= 1.0 && max_iou >= 0.0 && max_iou <= 1.0))
    return ioupos__fail(IOUPOS_EINVAL,
                        "IoU sampler: IoU interval [%g, %g] must lie within [0, 1] (and not be "
                        "NaN); image %s, crop %s", min_iou, max_iou, sh, cr);
  if (min_iou > max_iou)
    return ioupos__fail(IOUPOS_EINVAL,
                        "IoU sampler: IoU interval [%g, %g] is reversed (min > max); image %s, "
                        "crop %s", min_iou, max_iou, sh, cr);
  if (mode != IOUPOS_PAIR_ANCHORED && mode != IOUPOS_PAIR_JOINT)
    return ioupos__fail(IOUPOS_EINVAL, "IoU sampler: unknown pair mode %d (0 anchored, 1 joint)",
                        mode);

  s->dims = dims;
  s->mode = mode;
  s->min_iou = min_iou;
  s->max_iou = max_iou;
  s->max_tries = IOUPOS__SAMPLER_DEFAULT_TRIES;
  for (k = 0; k < 3; ++k) {
    s->shape[k] = k < dims ? shape[k] : 0;
    s->crop[k] = k < dims ? crop[k] : 0;
  }
  for (k = 0; k < dims; ++k) {
    pairs *= (double)(shape[k] - crop[k] + 1) * (double)(shape[k] - crop[k] + 1);
    cells *= crop[k] + 1.0;
  }
  if (pairs >= 4.0e18 || cells > 1.0e8) /* cells bounds V = prod c too */
    return ioupos__fail(IOUPOS_ERANGE,
                        "IoU sampler: image %s with crop %s is too large for the exact sampler "
                        "(%.3g placement pairs, limit 4e18; %.3g overlap classes, limit 1e8)",
                        sh, cr, pairs, cells);
  for (k = 0; k < dims; ++k) V *= crop[k];

  /* The interval as intersection volumes: computed IoU is non-decreasing in I. */
  lo = 0, hi = V + 1; /* smallest I with iou >= min */
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    if (ioupos__iou_of(mid, V) >= min_iou) hi = mid; else lo = mid + 1;
  }
  s->inter_lo = lo;
  lo = -1, hi = V; /* largest I with iou <= max */
  while (lo < hi) {
    int64_t mid = hi - (hi - lo) / 2;
    if (ioupos__iou_of(mid, V) <= max_iou) lo = mid; else hi = mid - 1;
  }
  s->inter_hi = lo;
  if (s->inter_lo > s->inter_hi)
    return ioupos__fail(IOUPOS_EINFEASIBLE,
                        "IoU sampler: no intersection volume of two %s crops has IoU in "
                        "[%g, %g] (image %s); widen the interval", cr, min_iou, max_iou, sh);

  /* Internal axes: the user's axes plus a dummy (c = n = 1) for 2D, ordered by the size of
     their range of partner-box lower bounds, largest first. */
  for (k = 0; k < 3; ++k) {
    int uk = k - (3 - dims); /* 2D: internal slot 0 is the dummy before sorting */
    user_c[k] = uk >= 0 ? crop[uk] : 1;
    user_n[k] = uk >= 0 ? shape[uk] - crop[uk] + 1 : 1;
    order[k] = uk;
    nl[k] = ioupos__imax(1, user_c[k] - user_n[k] / 2) -
            ioupos__imax(1, user_c[k] - (user_n[k] - 1)) + 1;
  }
  {
    int a, b;
    int idx[3] = {0, 1, 2};
    for (a = 0; a < 3; ++a)
      for (b = a + 1; b < 3; ++b)
        if (nl[idx[b]] > nl[idx[a]]) { int t = idx[a]; idx[a] = idx[b]; idx[b] = t; }
    for (k = 0; k < 3; ++k) {
      int src = idx[k], n, c;
      s->ax_user[k] = order[src];
      s->c[k] = c = user_c[src];
      s->n[k] = n = user_n[src];
      s->omin[k] = ioupos__imax(1, c - (n - 1));
      s->lam_lo[k] = s->omin[k];
      s->lam_hi[k] = ioupos__imax(1, c - n / 2); /* m >= ceil((n-1)/2) = n/2 (integer) */
      s->emin[k] = ioupos__imin(n / 2, c);
      s->emax[k] = ioupos__imin(n - 1, c);
    }
  }

  st = ioupos__sampler_tables(s);
  if (st != IOUPOS_OK) {
    ioupos_iou_sampler_free(s);
    return ioupos__fail(st, "IoU sampler: out of memory building the tables for image %s, crop %s",
                        sh, cr);
  }
  if (s->n_pairs == 0) {
    int64_t imin = 1;
    for (k = 0; k < dims; ++k) imin *= ioupos__imax(0, 2 * crop[k] - shape[k]);
    ioupos_iou_sampler_free(s);
    return ioupos__fail(IOUPOS_EINFEASIBLE,
                        "IoU sampler: no pair of %s crops in a %s image has IoU in [%g, %g]; "
                        "the IoU of such pairs ranges over [%.4g, 1] (with gaps)",
                        cr, sh, min_iou, max_iou, ioupos__iou_of(imin, V));
  }
  IOUPOS_ASSERT(mode == IOUPOS_PAIR_JOINT || s->n_first > 0);
  return IOUPOS_OK;
}

/* Smallest i in [lo, hi] with key(i) > r for a non-decreasing cumulative array. */
static size_t ioupos__search_cum(const uint64_t *cum, size_t lo, size_t hi, uint64_t r) {
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (cum[mid] > r) hi = mid; else lo = mid + 1;
  }
  return lo;
}

/* Draw k in 1..K with probability proportional to k. */
static int64_t ioupos__draw_triangular(ioupos_rng *rng, int64_t K) {
  uint64_t r = ioupos_rng_below(rng, (uint64_t)(K * (K + 1) / 2));
  int64_t k = (int64_t)((1.0 + sqrt(1.0 + 8.0 * (double)r)) / 2.0);
  if (k < 1) k = 1;
  if (k > K) k = K;
  while (k > 1 && (uint64_t)(k * (k - 1) / 2) > r) --k;
  while (k < K && (uint64_t)(k * (k + 1) / 2) <= r) ++k;
  return k;
}

static void ioupos__draw_joint(const ioupos_iou_sampler *s, ioupos_rng *rng, int p[3], int q[3]) {
  size_t nb = (size_t)(s->c[1] + 1), cell;
  int o[3], k;
  cell = ioupos__search_cum(s->joint_cum, 0, (size_t)(s->c[0] + 1) * nb - 1,
                            ioupos_rng_below(rng, s->n_pairs));
  o[0] = (int)(cell / nb);
  o[1] = (int)(cell % nb);
  { /* oC by its weight within the valid range */
    int64_t P = (int64_t)o[0] * o[1], lo = 0, hi = s->c[2];
    if (P > 0) {
      lo = ioupos__ceil_div(s->inter_lo, P);
      hi = s->inter_hi / P < s->c[2] ? s->inter_hi / P : s->c[2];
    }
    o[2] = (int)ioupos__search_cum(s->joint_prefC + 1, (size_t)lo, (size_t)hi,
                                   s->joint_prefC[lo] +
                                       ioupos_rng_below(rng, s->joint_prefC[hi + 1] -
                                                                 s->joint_prefC[lo]));
  }
  for (k = 0; k < 3; ++k) {
    int64_t n = s->n[k], d;
    if (o[k] > 0) d = s->c[k] - o[k];
    else d = n - ioupos__draw_triangular(rng, n - s->c[k]); /* weight 2 (n - d), d in c..n-1 */
    if (d == 0) {
      p[k] = q[k] = (int)ioupos_rng_below(rng, (uint64_t)n);
    } else {
      uint64_t t = ioupos_rng_below(rng, (uint64_t)(2 * (n - d)));
      int pos = (int)(t >> 1);
      if (t & 1) { p[k] = pos; q[k] = pos + (int)d; } else { p[k] = pos + (int)d; q[k] = pos; }
    }
  }
}

static void ioupos__draw_first(const ioupos_iou_sampler *s, ioupos_rng *rng, int p[3]) {
  size_t ne_b = (size_t)(s->emax[1] - s->emin[1] + 1), ne = (size_t)(s->emax[0] - s->emin[0] + 1) * ne_b;
  uint64_t r = ioupos_rng_below(rng, s->n_first), ca, cb, cc;
  size_t cell = ioupos__search_cum(s->first_cum, 0, ne - 1, r);
  int eA = s->emin[0] + (int)(cell / ne_b), eB = s->emin[1] + (int)(cell % ne_b);
  int eC = s->first_thr[cell];
  r -= cell ? s->first_cum[cell - 1] : 0;
  ca = ioupos__class_count(s->n[0], s->c[0], eA);
  cb = ioupos__class_count(s->n[1], s->c[1], eB);
  cc = ioupos__reach_count(s->n[2], eC);
  IOUPOS_ASSERT(r < ca * cb * cc);
  p[2] = ioupos__reach_pos(s->n[2], eC, r % cc);
  r /= cc;
  p[1] = ioupos__class_pos(s->n[1], s->c[1], eB, r % cb);
  p[0] = ioupos__class_pos(s->n[0], s->c[0], eA, r / cb);
}

/* A uniform valid u in prod [0, m_k] (see the notes above); returns 0 if there is none. */
static int ioupos__draw_reflected(const ioupos_iou_sampler *s, ioupos_rng *rng, const int m[3],
                                  int u[3]) {
  int l[3], k;
  uint64_t N[3], Z = 0, H, r, all = 1, nz = 1;
  for (k = 0; k < 3; ++k) {
    l[k] = ioupos__lower_bound(s, k, m[k]);
    N[k] = (uint64_t)(s->c[k] - l[k] + 1);
    all *= N[k] + (m[k] >= s->c[k] ? (uint64_t)(m[k] - s->c[k] + 1) : 0u);
    nz *= N[k];
  }
  if (s->inter_lo == 0) Z = all - nz;
  H = ioupos__nonzero_count(s, l);
  if (H + Z == 0) return 0;
  r = ioupos_rng_below(rng, H + Z);
  if (r < H) {
    /* nonzero part: decode the r-th vector in (oA, oB, oC) order from the suffix tables */
    const uint64_t *s0 = s->s0 + ioupos__s0_index(s, l[1], l[2], s->omin[0]);
    const uint64_t *s1;
    int64_t P, lo;
    int a = l[0], b = s->c[0], oA, oB;
    uint64_t top = s0[l[0] - s->omin[0]];
    while (a < b) { /* smallest oA with s0[oA + 1] < top - r */
      int mid = a + (b - a) / 2;
      if (s0[mid + 1 - s->omin[0]] < top - r) b = mid; else a = mid + 1;
    }
    oA = a;
    r -= top - s0[oA - s->omin[0]];
    s1 = s->s1 + ioupos__s1_index(s, oA, l[2], s->omin[1]);
    top = s1[l[1] - s->omin[1]];
    a = l[1], b = s->c[1];
    while (a < b) {
      int mid = a + (b - a) / 2;
      if (s1[mid + 1 - s->omin[1]] < top - r) b = mid; else a = mid + 1;
    }
    oB = a;
    r -= top - s1[oB - s->omin[1]];
    P = (int64_t)oA * oB;
    lo = ioupos__ceil_div(s->inter_lo > 1 ? s->inter_lo : 1, P);
    if (lo < l[2]) lo = l[2];
    u[0] = s->c[0] - oA;
    u[1] = s->c[1] - oB;
    u[2] = s->c[2] - (int)(lo + (int64_t)r);
    return 1;
  }
  /* zero part: the first axis whose overlap is zero is k; axes before it are nonzero, axes
     after it anything. Block sizes prod_{j<k} N_j * z_k * prod_{j>k} (N_j + z_j). */
  r -= H;
  for (k = 0; k < 3; ++k) {
    uint64_t block = 1, zk = m[k] >= s->c[k] ? (uint64_t)(m[k] - s->c[k] + 1) : 0u;
    int j;
    for (j = 0; j < 3; ++j)
      block *= j < k ? N[j] : j == k ? zk : N[j] + (m[j] >= s->c[j] ? (uint64_t)(m[j] - s->c[j] + 1) : 0u);
    if (r < block) {
      for (j = 2; j >= 0; --j) {
        uint64_t zj = m[j] >= s->c[j] ? (uint64_t)(m[j] - s->c[j] + 1) : 0u;
        uint64_t radix = j < k ? N[j] : j == k ? zk : N[j] + zj;
        uint64_t t = r % radix;
        r /= radix;
        u[j] = j == k ? s->c[j] + (int)t : (int)t; /* u = t covers nonzero 0..c-1 then zero */
      }
      return 1;
    }
    r -= block;
  }
  IOUPOS_ASSERT(0);
  return 0;
}

/* Exact slow path for the partner of p: enumerate overlap classes with their multiplicities. */
static void ioupos__draw_partner_exact(const ioupos_iou_sampler *s, ioupos_rng *rng,
                                       const int p[3], int q[3]) {
  uint64_t total = 0, r = 0;
  int pass, o[3], k;
  for (pass = 0; pass < 2; ++pass) {
    uint64_t acc = 0;
    if (pass == 1) r = ioupos_rng_below(rng, total);
    for (o[0] = 0; o[0] <= s->c[0]; ++o[0])
      for (o[1] = 0; o[1] <= s->c[1]; ++o[1])
        for (o[2] = 0; o[2] <= s->c[2]; ++o[2]) {
          int64_t I = (int64_t)o[0] * o[1] * o[2];
          uint64_t w = 1;
          if (I < s->inter_lo || I > s->inter_hi) continue;
          for (k = 0; k < 3; ++k) {
            int c = s->c[k], n = s->n[k], d = c - o[k];
            uint64_t mult;
            if (o[k] == 0) mult = (uint64_t)(ioupos__imax(0, p[k] - c + 1) + ioupos__imax(0, n - p[k] - c));
            else if (d == 0) mult = 1;
            else mult = (uint64_t)((d <= p[k]) + (d <= n - 1 - p[k]));
            w *= mult;
          }
          acc += w;
          if (pass == 1 && r < acc) goto found;
        }
    total = acc;
  }
  IOUPOS_ASSERT(0);
found:
  for (k = 0; k < 3; ++k) {
    int c = s->c[k], n = s->n[k], d = c - o[k];
    if (o[k] == 0) { /* delta in [-p, -c] or [c, n-1-p] */
      int left = ioupos__imax(0, p[k] - c + 1), right = ioupos__imax(0, n - p[k] - c);
      int t = (int)ioupos_rng_below(rng, (uint64_t)(left + right));
      q[k] = t < left ? t : p[k] + c + (t - left);
    } else if (d == 0) {
      q[k] = p[k];
    } else {
      int down = d <= p[k], up = d <= n - 1 - p[k];
      int t = (down && up) ? (int)ioupos_rng_below(rng, 2) : up;
      q[k] = t ? p[k] + d : p[k] - d;
    }
  }
}

static void ioupos__draw_anchored(const ioupos_iou_sampler *s, ioupos_rng *rng, int p[3], int q[3]) {
  int m[3], u[3], k, tries;
  ioupos__draw_first(s, rng, p);
  for (k = 0; k < 3; ++k) m[k] = ioupos__imax(p[k], s->n[k] - 1 - p[k]);
  for (tries = 0; tries < s->max_tries; ++tries) {
    uint32_t bits = ioupos_rng_u32(rng);
    int ok = ioupos__draw_reflected(s, rng, m, u);
    IOUPOS_ASSERT(ok); /* p was drawn among placements with a valid partner */
    (void)ok;
    for (k = 0; k < 3 && ok; ++k) {
      int up = (bits >> k) & 1u;
      if (s->n[k] == 1) { q[k] = p[k]; continue; }
      if (u[k] == 0 && !up) ok = 0; /* the zero displacement has one sign, not two */
      q[k] = up ? p[k] + u[k] : p[k] - u[k];
      if (q[k] < 0 || q[k] > s->n[k] - 1) ok = 0;
    }
    if (ok) return;
  }
  ioupos__draw_partner_exact(s, rng, p, q);
}

IOUPOS_DEF int ioupos_iou_sampler_draw(const ioupos_iou_sampler *s, ioupos_rng *rng,
                                       ioupos_box *a, ioupos_box *b) {
  int p[3], q[3], k;
  if (!s || !rng || !a || !b || s->n_pairs == 0 ||
      !(s->mode == IOUPOS_PAIR_JOINT ? s->joint_cum != NULL : s->first_cum != NULL))
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_iou_sampler_draw: NULL argument or sampler "
                                       "not initialised");
  if (s->mode == IOUPOS_PAIR_JOINT) ioupos__draw_joint(s, rng, p, q);
  else ioupos__draw_anchored(s, rng, p, q);
  memset(a, 0, sizeof *a);
  memset(b, 0, sizeof *b);
  a->dims = b->dims = s->dims;
  for (k = 0; k < 3; ++k) {
    int uk = s->ax_user[k];
    if (uk < 0) continue;
    a->lo[uk] = p[k];
    a->hi[uk] = p[k] + s->c[k];
    b->lo[uk] = q[k];
    b->hi[uk] = q[k] + s->c[k];
  }
  return IOUPOS_OK;
}

/* ---- 5. Image I/O --------------------------------------------------------------------------- */

IOUPOS_DEF int ioupos_read_file(const char *path, void **data, size_t *size) {
  FILE *f;
  long len;
  unsigned char *buf;
  *data = NULL;
  *size = 0;
  f = fopen(path, "rb");
  if (!f) return ioupos__fail(IOUPOS_EIO, "%s: cannot open: %s", path, strerror(errno));
  if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
    fclose(f);
    return ioupos__fail(IOUPOS_EIO, "%s: cannot determine the file size", path);
  }
  buf = (unsigned char *)IOUPOS_MALLOC((size_t)len + 1);
  if (!buf) {
    fclose(f);
    return ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory for %ld bytes", path, len);
  }
  if (len > 0 && fread(buf, 1, (size_t)len, f) != (size_t)len) {
    fclose(f);
    IOUPOS_FREE(buf);
    return ioupos__fail(IOUPOS_EIO, "%s: read error", path);
  }
  fclose(f);
  *data = buf;
  *size = (size_t)len;
  return IOUPOS_OK;
}

static uint32_t ioupos__be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Walk the PNG chunk list before stb_image sees it: stb_image sizes buffers from declared chunk
   lengths and image dimensions, so a few corrupt bytes could make it allocate gigabytes. */
static int ioupos__png_precheck(const unsigned char *d, size_t size, const char *name) {
  static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  size_t pos = 8;
  int first = 1;
  if (size < sizeof sig || memcmp(d, sig, sizeof sig) != 0)
    return ioupos__fail(IOUPOS_EFORMAT, "%s: not a PNG file (no PNG signature)", name);
  for (;;) {
    uint32_t len;
    if (size - pos < 12)
      return ioupos__fail(IOUPOS_EFORMAT, "%s: corrupt PNG (truncated before IEND)", name);
    len = ioupos__be32(d + pos);
    if (len > size - pos - 12)
      return ioupos__fail(IOUPOS_EFORMAT, "%s: corrupt PNG (chunk of %lu bytes at offset %lu "
                          "runs past the end of the file)", name, (unsigned long)len,
                          (unsigned long)pos);
    if (first) {
      uint32_t w, h;
      if (memcmp(d + pos + 4, "IHDR", 4) != 0 || len != 13)
        return ioupos__fail(IOUPOS_EFORMAT, "%s: corrupt PNG (no IHDR chunk first)", name);
      w = ioupos__be32(d + pos + 8);
      h = ioupos__be32(d + pos + 12);
      if (w == 0 || h == 0 || (double)w * (double)h > (double)IOUPOS_MAX_IMAGE_PIXELS)
        return ioupos__fail(IOUPOS_EFORMAT, "%s: PNG of %lux%lu pixels is empty or larger "
                            "than IOUPOS_MAX_IMAGE_PIXELS (%.0f)", name, (unsigned long)w,
                            (unsigned long)h, (double)IOUPOS_MAX_IMAGE_PIXELS);
      first = 0;
    }
    if (memcmp(d + pos + 4, "IEND", 4) == 0) return IOUPOS_OK;
    pos += 12 + (size_t)len;
  }
}

IOUPOS_DEF int ioupos_image_load_memory(const void *data, size_t size, const char *name,
                                        ioupos_image *img) {
  int w = 0, h = 0, comp = 0, st;
  size_t i, count;
  stbi_us *px;
  if (!img || (!data && size)) return ioupos__fail(IOUPOS_EINVAL, "ioupos_image_load: NULL argument");
  if (!name) name = "(memory)";
  img->h = img->w = 0;
  img->data = NULL;
  st = ioupos__png_precheck((const unsigned char *)data, size, name);
  if (st) return st;
  if (size > 0x7FFFFFFF)
    return ioupos__fail(IOUPOS_ERANGE, "%s: PNG larger than 2 GiB", name);
  px = stbi_load_16_from_memory((const stbi_uc *)data, (int)size, &w, &h, &comp, 0);
  if (!px)
    return ioupos__fail(IOUPOS_EFORMAT, "%s: corrupt or unsupported PNG (%s)", name,
                        stbi_failure_reason());
  count = (size_t)w * (size_t)h;
  img->data = (float *)ioupos__calloc(count, sizeof(float));
  if (!img->data) {
    stbi_image_free(px);
    return ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory for a %dx%d image", name, w, h);
  }
  for (i = 0; i < count; ++i) {
    const stbi_us *v = px + i * (size_t)comp;
    double g = comp >= 3 ? (299.0 * v[0] + 587.0 * v[1] + 114.0 * v[2]) / 1000.0 : (double)v[0];
    img->data[i] = (float)(g / 65535.0);
  }
  stbi_image_free(px);
  img->h = h;
  img->w = w;
  return IOUPOS_OK;
}

IOUPOS_DEF int ioupos_image_load(const char *path, ioupos_image *img) {
  void *data;
  size_t size;
  int st;
  if (!img || !path) return ioupos__fail(IOUPOS_EINVAL, "ioupos_image_load: NULL argument");
  img->h = img->w = 0;
  img->data = NULL;
  st = ioupos_read_file(path, &data, &size);
  if (st) return st;
  st = ioupos_image_load_memory(data, size, path, img);
  IOUPOS_FREE(data);
  return st;
}

IOUPOS_DEF void ioupos_image_free(ioupos_image *img) {
  if (!img) return;
  IOUPOS_FREE(img->data);
  img->data = NULL;
  img->h = img->w = 0;
}

IOUPOS_DEF int ioupos_write_file_atomic(const char *path, const void *data, size_t size) {
  char tmp[4096];
  FILE *f;
  int bad, e;
  if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)ioupos__getpid()) >= (int)sizeof tmp)
    return ioupos__fail(IOUPOS_EINVAL, "%s: path too long", path);
#if defined(_WIN32)
  f = fopen(tmp, "wb");
#else
  { /* a fresh file: never follow a symlink or reuse a leftover from a crashed run */
    int fd;
    remove(tmp);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
    f = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (fd >= 0 && !f) close(fd);
  }
#endif
  if (!f) return ioupos__fail(IOUPOS_EIO, "%s: cannot create (%s)", path, strerror(errno));
  errno = 0;
  bad = size && fwrite(data, 1, size, f) != size;
  bad |= fflush(f) != 0;
  bad |= ferror(f) != 0;
#if !defined(_WIN32)
  bad |= fsync(fileno(f)) != 0; /* the data is on disk before the name points to it */
#endif
  e = errno;
  if (fclose(f) != 0 && !bad) bad = 1, e = errno;
  if (bad) {
    remove(tmp);
    return ioupos__fail(IOUPOS_EIO, "%s: write failed (%s); nothing was written", path,
                        e ? strerror(e) : "I/O error");
  }
  if (rename(tmp, path) != 0) {
    int e = errno;
    remove(tmp);
    return ioupos__fail(IOUPOS_EIO, "%s: cannot rename into place: %s", path, strerror(e));
  }
  return IOUPOS_OK;
}

typedef struct ioupos__membuf {
  unsigned char *data;
  size_t size, cap;
  int failed;
} ioupos__membuf;

static void ioupos__membuf_put(void *ctx, void *data, int size) {
  ioupos__membuf *m = (ioupos__membuf *)ctx;
  if (m->failed || size <= 0) return;
  if (m->size + (size_t)size > m->cap) {
    size_t cap = m->cap ? m->cap : 4096;
    unsigned char *nd;
    while (cap < m->size + (size_t)size) cap *= 2;
    nd = (unsigned char *)IOUPOS_MALLOC(cap);
    if (!nd) { m->failed = 1; return; }
    if (m->size) memcpy(nd, m->data, m->size);
    IOUPOS_FREE(m->data);
    m->data = nd;
    m->cap = cap;
  }
  memcpy(m->data + m->size, data, (size_t)size);
  m->size += (size_t)size;
}

IOUPOS_DEF int ioupos_png_write(const char *path, int w, int h, int channels,
                                const uint8_t *pixels) {
  ioupos__membuf m = {NULL, 0, 0, 0};
  int st;
  if (!path || !pixels || w <= 0 || h <= 0 || channels < 1 || channels > 4)
    return ioupos__fail(IOUPOS_EINVAL, "%s: invalid PNG request (%dx%d, %d channels)",
                        path ? path : "(null)", w, h, channels);
  if (!stbi_write_png_to_func(ioupos__membuf_put, &m, w, h, channels, pixels, w * channels) ||
      m.failed) {
    IOUPOS_FREE(m.data);
    return ioupos__fail(IOUPOS_ENOMEM, "%s: PNG encoding failed (out of memory)", path);
  }
  st = ioupos_write_file_atomic(path, m.data, m.size);
  IOUPOS_FREE(m.data);
  return st;
}

#endif /* IOUPOS_IMPLEMENTATION_DONE */
#endif /* IOUPOS_IMPLEMENTATION */

/* LICENSE
   ioupos is released into the public domain (Unlicense) or, at your option, under the MIT
   licence. stb_image and stb_image_write (Sean Barrett) are not part of this file; they come
   from your system's libstb-dev package under their own (public domain / MIT) terms. */
