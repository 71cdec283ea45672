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
     Optional, for speed only (results are the same without them, up to the documented FMA
     rounding of the GEMM kernel): -fopenmp (GEMM threads; bit-identical for any thread count)
     and -mavx2 -mfma (the GEMM's SIMD kernel). Never -ffast-math: the CPU path is the
     reference the CUDA backend is checked against.

   CONFIGURATION (define before the implementation include)
     IOUPOS_MALLOC(sz) / IOUPOS_FREE(p)   allocator (default malloc / free)
     IOUPOS_ASSERT(x)                     internal invariant checks (default assert)
     IOUPOS_STATIC                        make every function static to the including file
     IOUPOS_MAX_IMAGE_PIXELS              largest PNG accepted, in pixels (default 2^26)
     IOUPOS_NO_STB_IMPLEMENTATION         do not compile stb_image / stb_image_write here

   DROP-IN PARTS (define before EVERY include of ioupos.h, the implementation's included; the
   first include in a file decides)
     IOUPOS_ONLY_SAMPLER   sections 1-4 only: errors, RNG, boxes / IoU, the crop-pair sampler
                           and the local crops. Standard C headers only (no stb, no POSIX, no
                           pthreads), so a plain   cc -std=c99 prog.c -lm   builds it, also with
                           -pedantic, and as C++11. Wins over IOUPOS_ONLY_DATA.
     IOUPOS_ONLY_DATA      sections 1-9: the above plus PNG I/O, NIfTI and preprocessing,
                           augmentations, the phantom, data sets and the threaded loader; no
                           neural core (sections 10-22). Built with the USAGE line above
                           (stb, -D_POSIX_C_SOURCE=200809L, -lpthread); -fopenmp and -mavx2
                           -mfma are of no use to it.

   CONVENTIONS
     - Functions return 0 (IOUPOS_OK) or a negative ioupos_status; on failure the reason, a
       sentence naming the file, flag or values at fault, is in ioupos_failure_reason()
       (thread-local). The library never prints and never exits.
     - Every random draw takes an explicit ioupos_rng; there is no hidden global state, so a run
       is reproducible from its seed.
     - Axis order follows memory order, slowest first: 2D shape {H, W}, 3D shape {D, H, W}.

   TABLE OF CONTENTS (the declarations come in this order, then the implementation in the same
   order, each implementation section under one banner comment "---- N. Title ----", its only
   comment that starts with four dashes: grep -n '^/.\ ---- ' ioupos.h is the map)
     1. Configuration and version
     2. Errors
     3. Random numbers (PCG32, seedable, splittable)
     4. Boxes, IoU and the exact crop-pair sampler
     5. Image I/O (PNG through stb_image / stb_image_write, atomic file writes)
     6. NIfTI volumes, CT preprocessing (MONAI semantics) and split files
     7. Augmentations (MONAI semantics, drawn parameters then a deterministic apply)
     8. Synthetic CT phantom (FLARE22 organ ids)
     9. Data sets and the threaded loader
    10. Dense float32 GEMM (packed, blocked, AVX2+FMA when targeted, OpenMP when enabled)
    11. Layers, forward beside backward (linear, norms, activations, patch embedding and
        merging, drop-path, MLP)
    12. Shifted-window attention (Swin): partition, shift, mask, relative position bias
    13. Safetensors files (checkpoints shared with PyTorch)
    14. Losses (SimSiam, DINO with centring, cross-entropy) and the weight-normalised linear
    15. Optimisers (SGD, AdamW), schedules, EMA and gradient clipping
    16. Tensors, arenas and the backend operation table
    17. Models: the Swin encoder, the SimSiam and DINO heads, checkpoints
    18. Pretraining: SimSiam and DINO, run directories, exact resume
    19. Decoder layers (SwinUNETR): convolutions, instance norm, residual and up blocks
    20. Segmentation: Dice-CE loss, sliding-window inference, organ DSC
    21. SwinUNETR: the segmentation model
    22. Fine-tuning: SwinUNETR on labelled slices, evaluation, run directories, exact resume
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

/* Drop-in parts (see CONFIGURATION): IOUPOS__PART_DATA covers sections 5-9, IOUPOS__PART_CORE
   sections 10-22. Sections 1-4 are always there and use nothing of the later ones. */
#if defined(IOUPOS_ONLY_SAMPLER)
#define IOUPOS__PART_DATA 0
#define IOUPOS__PART_CORE 0
#elif defined(IOUPOS_ONLY_DATA)
#define IOUPOS__PART_DATA 1
#define IOUPOS__PART_CORE 0
#else
#define IOUPOS__PART_DATA 1
#define IOUPOS__PART_CORE 1
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
  IOUPOS_ERANGE = -6,      /* sizes too large for the exact arithmetic used */
  IOUPOS_EBUSY = -7        /* a folder is held by another process (ioupos_dir_hold) */
} ioupos_status;

/* The reason for the last failure on this thread ("" if none yet). Valid until the next failing
   call on the same thread. Reasons and log lines name an option by its field name in
   backquotes, e.g. "`batch_size` 1: SimSiam needs at least 2": the library knows its options'
   fields, not a program's flags (the ioupos commands print them as their --flags). */
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

/* LOCAL CROPS (DINO multi-crop). Given a fixed box A (e.g. view 0's crop) inside an image of
   size shape[], draw a crop B of size b[] (any size with b[k] <= shape[k]; it may differ from
   A's) uniformly over the positions x (0 <= x[k] <= shape[k] - b[k]) whose IoU with A, exactly
   as ioupos_box_iou computes it, lies in [min_iou, max_iou] (inclusive). No rejection: per axis
   the overlap o_k(x_k) takes min(|A_k|, b_k) + 1 values, the IoU I / (|A| + |B| - I) is
   non-decreasing in I = prod o_k, so the interval is an exact integer range of I (found by
   binary search on the same double expression); positions are counted per overlap value in
   closed form, an overlap vector is drawn by its weight (a loop over the overlap values of
   the two axes with the fewest, the third axis summed in closed form: O(min(a, b)) per draw in
   2D, O(product of the two smallest min(a_k, b_k) + 1) in 3D) and then a uniform position with
   those overlaps. One ioupos_rng_below per draw. Every returned box satisfies the interval.

     ioupos_local_crop_count   the number of valid positions (0 is not an error).
     ioupos_local_crop_draw    one uniform valid position; IOUPOS_EINFEASIBLE (reason names
                               shape, both sizes, A and the interval) when there is none.
     ioupos_local_crop_feasible  is there ANY box A of size a[] and B of size b[], both inside
                               the image, with IoU in the interval? Exact: per axis the
                               achievable overlaps are [max(0, a + b - shape), min(a, b)] and
                               the axes are independent. shape == NULL means an image as large
                               as needed (overlaps [0, min(a, b)]): the shape-independent check
                               a loader can make at open. IOUPOS_OK or IOUPOS_EINFEASIBLE, whose
                               reason names the sizes, the interval and the achievable IoU range.
   Arguments, all axes slowest first: dims 2 or 3; shape[dims] (feasible: or NULL); A->dims ==
   dims, A non-empty and inside [0, shape) on every axis; a[dims], b[dims] positive;
   0 <= min_iou <= max_iou <= 1.
   Errors: IOUPOS_EINVAL for NULL pointers, dims, non-positive sizes, b or A outside the image, a
   NaN, out-of-range or reversed interval; IOUPOS_ERANGE when a volume (image, a or b) reaches
   2^61 or a draw would loop over more than 1e8 overlap pairs. out is written only on success.
   The functions are pure (no state, no allocation): call them from any thread. */
IOUPOS_DEF int ioupos_local_crop_feasible(int dims, const int shape[], const int a[],
                                          const int b[], double min_iou, double max_iou);
IOUPOS_DEF int ioupos_local_crop_count(int dims, const int shape[], const ioupos_box *A,
                                       const int b[], double min_iou, double max_iou,
                                       uint64_t *count);
IOUPOS_DEF int ioupos_local_crop_draw(int dims, const int shape[], const ioupos_box *A,
                                      const int b[], double min_iou, double max_iou,
                                      ioupos_rng *rng, ioupos_box *out);

/* "96x96", "160x320x288" style text of dims integers for messages; at most cap bytes. */
IOUPOS_DEF void ioupos_format_shape(char *buf, size_t cap, int dims, const int v[]);

#if IOUPOS__PART_DATA /* sections 5-9: not with IOUPOS_ONLY_SAMPLER */
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
/* Read a whole file into a fresh IOUPOS_MALLOC buffer (*data, *size). A folder ("<path> is a
   directory") or another non-regular file (FIFO, device) is refused with IOUPOS_EIO. */
IOUPOS_DEF int ioupos_read_file(const char *path, void **data, size_t *size);

/* Write an 8-bit PNG (channels 1, 2, 3 or 4) atomically: to "<path>.tmp.<pid>", then rename,
   so a crash or a full disk never leaves a truncated file under the final name. */
IOUPOS_DEF int ioupos_png_write(const char *path, int w, int h, int channels,
                                const uint8_t *pixels);
/* Write bytes to path atomically (same temporary-and-rename scheme). */
IOUPOS_DEF int ioupos_write_file_atomic(const char *path, const void *data, size_t size);

/* A folder held by one process (run directories, ioupos-prep's output).
   ioupos_dir_hold creates dir and its missing parents and takes an advisory lock on
   <dir>/.lock (a POSIX record lock: the kernel drops it when the process ends, so a kill -9
   never leaves a stale lock). A folder that another live process holds is refused with
   IOUPOS_EBUSY and a reason naming that process. Holding also deletes the folder's stale
   temporary files "<name>.tmp.<pid>" (a kill -9 during an atomic write leaves one) whose
   writer process is gone; *n_stale (may be NULL) counts them.
   ioupos_dir_release deletes <dir>/.lock and drops the lock. With discard set it first deletes
   the regular files that appeared in dir during the hold, then dir and the parents the hold
   created when they are empty: a run that fails before it has anything worth keeping leaves
   nothing behind.
   Record locks belong to a process, so two holds of one folder inside one process do not
   exclude each other; hold each folder once per process. */
typedef struct ioupos_dir_lock {
  char dir[4096];
  int fd;            /* the open .lock file, -1 when not held */
  int created_from;  /* dir[0..created_from) existed before the hold; -1: it created none */
  char **had;        /* the names in dir when it was taken (for discard) */
  int n_had;
} ioupos_dir_lock;
IOUPOS_DEF int ioupos_dir_hold(ioupos_dir_lock *lk, const char *dir, int *n_stale);
IOUPOS_DEF void ioupos_dir_release(ioupos_dir_lock *lk, int discard);
/* Deletes the stale temporary files of dir (as ioupos_dir_hold does); returns how many. */
IOUPOS_DEF int ioupos_dir_clean_stale(const char *dir);

/* ============================================================================================
   6. NIfTI volumes, CT preprocessing and split files
   ============================================================================================ */

/* NIfTI-1 I/O (.nii, .nii.gz), CT preprocessing with MONAI's semantics, axial slices as 8-bit
   grey, and the split-file (JSON) parser.

   Volumes are NIfTI's: x fastest in memory, dim = {nx, ny, nz}, and an affine from voxel
   (i, j, k, 1) to world millimetres in RAS+ (nibabel's convention).

   The preprocessing reproduces the research pipeline (MONAI 1.6.1 + nibabel 5.4.2):
     Orientationd("RAS") -> Spacingd(pixdim, bilinear | nearest, padding border,
     align_corners False) -> ScaleIntensityRanged(a_min, a_max, 0, 1, clip=True) ->
     CropForegroundd(select x > 0, margin 0, label cropped with the image's box) ->
     SpatialPadd((96, 96, -1), method symmetric, constant 0).
   Output shapes and affines are computed exactly as MONAI computes them; sampling positions
   follow torch's affine_grid / grid_sample arithmetic step by step (FMA linspace included), so
   nearest-neighbour ties on label volumes resolve as MONAI's do. */

typedef struct ioupos_volume {
  int dim[3];          /* nx, ny, nz (NIfTI order; x fastest in memory) */
  float *data;         /* nx*ny*nz values, voxel (i, j, k) at data[((size_t)k*ny + j)*nx + i] */
  double affine[4][4]; /* voxel (i, j, k, 1) -> world mm, RAS+ (NIfTI/nibabel convention) */
} ioupos_volume;

/* NIfTI-1 datatype codes read (all) and written (all). */
enum {
  IOUPOS_NIFTI_UINT8 = 2, IOUPOS_NIFTI_INT16 = 4, IOUPOS_NIFTI_INT32 = 8,
  IOUPOS_NIFTI_FLOAT32 = 16, IOUPOS_NIFTI_FLOAT64 = 64, IOUPOS_NIFTI_INT8 = 256,
  IOUPOS_NIFTI_UINT16 = 512, IOUPOS_NIFTI_UINT32 = 768, IOUPOS_NIFTI_INT64 = 1024,
  IOUPOS_NIFTI_UINT64 = 1280
};

/* Read .nii or .nii.gz (decided by content: the gzip magic 1f 8b), datatypes u8 i8 i16 u16 i32
   u32 i64 u64 f32 f64, either byte order; scl_slope/scl_inter applied (slope 0 or not finite =
   no scaling, as nibabel); affine from sform (sform_code != 0) else qform (qform_code != 0,
   quaternion with qfac) else the pixdim diagonal centred on the volume, exactly as nibabel's
   get_best_affine after its header fixes (pixdim 0 -> 1, negative -> abs, qfac not +-1 -> 1).
   Only 3D images: dim[0] in 3..7 with dim[4..] == 1. Single-member gzip only. Errors
   (IOUPOS_EFORMAT, IOUPOS_EIO, IOUPOS_ERANGE, IOUPOS_ENOMEM) name the file and the problem:
   truncated or corrupt gzip (inflate failure, CRC32 or ISIZE mismatch), not NIfTI-1 /
   wrong magic, two-file NIfTI, absurd dimensions (<= 0, > 65535, more than 2^31 voxels),
   unsupported datatype, vox_offset beyond the file, short data. */
IOUPOS_DEF int ioupos_nifti_read(const char *path, ioupos_volume *vol);
/* The same from memory; name is used in messages only. */
IOUPOS_DEF int ioupos_nifti_read_memory(const void *data, size_t size, const char *name,
                                        ioupos_volume *vol);
/* Write .nii or .nii.gz (".gz" at the end of path) atomically, little-endian, any datatype
   above; values rounded half away from zero and clamped for integer datatypes (NaN -> 0);
   sform and qform (code 1, scanner) both set from the affine; pixdim = column norms. */
IOUPOS_DEF int ioupos_nifti_write(const char *path, const ioupos_volume *vol, int datatype);
/* The bytes ioupos_nifti_write would write (gzip != 0: a .nii.gz stream). *out is freed with
   IOUPOS_FREE. */
IOUPOS_DEF int ioupos_nifti_encode(const ioupos_volume *vol, int datatype, int gzip,
                                   unsigned char **out, size_t *size);
IOUPOS_DEF void ioupos_volume_free(ioupos_volume *vol);
/* Allocate nx*ny*nz zeros and set the identity affine. */
IOUPOS_DEF int ioupos_volume_alloc(ioupos_volume *vol, int nx, int ny, int nz);
/* voxel size along i, j, k: the norms of the affine's first three columns */
IOUPOS_DEF void ioupos_volume_spacing(const ioupos_volume *vol, double spacing[3]);
/* CRC-32 (gzip's polynomial); start with crc = 0. */
IOUPOS_DEF uint32_t ioupos_crc32(uint32_t crc, const void *data, size_t n);

/* Preprocessing, MONAI semantics. Each replaces *vol (freeing the old data) and keeps the
   affine consistent. */
/* Orientation("RAS"): nibabel io_orientation (polar decomposition, strongest axis first), then
   flips and a permutation; affine = affine @ inv_ornt_aff. */
IOUPOS_DEF int ioupos_volume_reorient_ras(ioupos_volume *vol);
/* Spacing(pixdim = spacing, diagonal False, align_corners False, padding border): an axis whose
   spacing is within 1e-3 of the target keeps its spacing; output affine = rotation of the input
   (Cholesky-based, shear dropped) times the new spacing, origin at the transformed corner;
   shape = round-half-even(extent / spacing + 1). nearest = 0: trilinear; 1: nearest (ties as
   torch's grid_sample). No resampling when the grid is unchanged within 1e-3 (MONAI then keeps
   the input affine too). */
IOUPOS_DEF int ioupos_volume_resample(ioupos_volume *vol, const double spacing[3], int nearest);
/* The output grid of ioupos_volume_resample without resampling. */
IOUPOS_DEF int ioupos_volume_resample_grid(const ioupos_volume *vol, const double spacing[3],
                                           int out_dim[3], double out_affine[4][4]);
/* ScaleIntensityRange(a_min, a_max, 0, 1, clip=True), in float32 arithmetic as torch does. */
IOUPOS_DEF void ioupos_volume_window(ioupos_volume *vol, double a_min, double a_max);
/* bounding box [lo, hi) of voxels > 0; an empty box (lo == hi == 0) if there are none */
IOUPOS_DEF void ioupos_volume_foreground_box(const ioupos_volume *vol, int lo[3], int hi[3]);
/* keep [lo, hi) (within the volume, non-empty); affine translated to the new first voxel */
IOUPOS_DEF int ioupos_volume_crop(ioupos_volume *vol, const int lo[3], const int hi[3]);
/* SpatialPad((min_x, min_y, -1), symmetric, value 0): pad (need / 2) before and the rest
   (the odd voxel) after; affine translated by the voxels added before. */
IOUPOS_DEF int ioupos_volume_pad_xy(ioupos_volume *vol, int min_x, int min_y);

/* The whole research pipeline on an image and (optionally) its label volume. The label must
   have the image's dims; it gets the image's steps with nearest resampling and the image's
   crop box. Fails (IOUPOS_EFORMAT) when the image has no voxel above a_min. */
typedef struct ioupos_prep_opts {
  double a_min, a_max;  /* HU window, default -500, 500 */
  double spacing[3];    /* mm, default 1, 1, 2.5 */
  int pad_xy;           /* pad x and y to at least this, default 96 */
} ioupos_prep_opts;
IOUPOS_DEF void ioupos_prep_opts_default(ioupos_prep_opts *o);
IOUPOS_DEF int ioupos_preprocess(ioupos_volume *image, ioupos_volume *label,
                                 const ioupos_prep_opts *o);

/* Axial slice k as 8-bit grey, nx rows by ny columns (row r = x index, column c = y index, as
   PIL.Image.fromarray(volume[:, :, k])): out[r * ny + c]. Images: round(v * 255) half away from
   zero, clamped to 0..255 (NaN -> 0); labels (is_label != 0): round(v) clamped to 0..255. */
IOUPOS_DEF void ioupos_volume_slice_u8(const ioupos_volume *vol, int k, int is_label,
                                       uint8_t *out);

/* Split files: one JSON object whose members are arrays of case names, e.g.
   {"train": ["a", "b"], "val": ["c"], "test": []}. Strict: no trailing commas or comments,
   nothing after the object; member names [A-Za-z0-9_-]{1,64}, unique; case names non-empty
   strings of at most 255 bytes without '/', '\\', control characters, not "." or "..", and
   each case in one list only. Errors give line and column. */
typedef struct ioupos_split_set {
  char *name;
  int n;
  char **cases;
} ioupos_split_set;
typedef struct ioupos_split {
  int n_sets;
  ioupos_split_set *sets;
} ioupos_split;
IOUPOS_DEF int ioupos_split_parse(const char *text, size_t len, const char *name,
                                  ioupos_split *split);
IOUPOS_DEF int ioupos_split_read(const char *path, ioupos_split *split);
IOUPOS_DEF void ioupos_split_free(ioupos_split *split);
/* index of the set listing case_name, or -1 */
IOUPOS_DEF int ioupos_split_find(const ioupos_split *split, const char *case_name);

/* ============================================================================================
   7. Augmentations
   ============================================================================================ */

/* The research code's MONAI augmentations (monai 1.6.1, torch 2.15.0), split into
     (a) a parameter record drawn from an explicit ioupos_rng (ioupos_view_params_draw*,
         ioupos_posneg_crops_draw), and
     (b) a deterministic apply (ioupos_view_apply*, ioupos_aug_* building blocks),
   so that every sample can be replayed from its parameters. Images are 2D float arrays,
   row-major, h rows x w columns (axis 0 = rows, axis 1 = columns, as MONAI's spatial axes of
   a channel-first (1, H, W) tensor). The parameter records keep per-axis fields for three axes
   and a dims field so that 3D (d x h x w, axis 0 slowest) can be added without changing them;
   only dims == 2 is implemented.

   Semantics, each checked against MONAI on fixtures (tests/reference/augment_fixture.py):
   - Zoom (RandZoomd: mode bilinear, padding_mode constant, keep_size, align_corners None):
     the zoomed size is floor(n * zoom) per axis; values come from
     torch.nn.functional.interpolate(recompute_scale_factor=True), i.e. half-pixel bilinear
     with scale in/out computed in float32, source index clamped at 0, the upper neighbour
     clamped to n - 1, and an exact copy along an axis whose size does not change; then the
     result is centre-cropped (start floor(zn/2) - floor(n/2)) or zero-padded (floor((n-zn)/2)
     before, the rest after) back to n. Labels use torch's "nearest" (floor(dst * in/out) in
     float32; dst >> 1 when doubling).
   - Flip along axis a: reverse that axis (torch.flip).
   - Rot90 by k in the plane (0, 1): torch.rot90(x, k, (0, 1)), i.e. counter-clockwise when
     rows go down: k = 1 gives out[i][j] = in[j][w-1-i] with shape (w, h).
   - Intensity scale: v * (1 + f) in float32 (MONAI's factor f); shift: v + o.
   - Gaussian blur (GaussianSmooth, approx "erf", truncated 4, separable, zero padding, rows
     first then columns): per axis sigma s (rounded to float32 first), tail
     t = (int)(max(4 s, 0.5) + 0.5), taps x = -t..t with weight
     0.5 (erf(c (x + 0.5)) - erf(c (x - 0.5))), c = 0.70710678 / s, NOT normalised (sum
     erf((t + 0.5) c), up to 1.6e-5 below 1 at s = 1.5). Kernel size 2t + 1 (3..13 taps for
     s in [0.25, 1.5]).
   - Gaussian noise (RandGaussianNoised, sample_std True by default in 1.6.1): std drawn
     uniformly in [0, std), then per pixel N(mean, std) added in float32 (MONAI draws it in
     double and rounds to float32 first: the same to float precision). Generated from an
     ioupos_rng seeded with the stored noise_seed (Marsaglia's polar method, single precision,
     on 32-bit uniforms), so a replay on the same libm gives bit-identical noise; MONAI's numpy
     stream is of course not reproduced, only its distribution.
   - Probabilities: a transform fires when a uniform draw in [0, 1) is < prob (MONAI's
     R.rand() < prob); value ranges are uniform in [lo, hi) (R.uniform); rot90's k is
     1 + uniform integer in [0, max_k) (R.randint(max_k) + 1). Every draw consumes the same
     number of random numbers whatever fires (values are drawn also for transforms that do not
     fire), so changing one probability does not shift the others' streams.
   - RandCropByPosNegLabeld (fine-tuning): foreground = label != 0, background = label == 0
     (and, if an image is given, image > image_threshold; MONAI's image_key restricts only the
     background). Each of num_samples crops picks foreground with probability pos / (pos + neg)
     (1 if there is no background, 0 if there is no foreground), then a uniformly chosen voxel of
     that set as its centre; the centre is moved per axis into [floor(c/2), n - ceil(c/2)] (MONAI
     correct_crop_centers) and the crop starts at centre - floor(c/2), so it always lies inside
     the image. A crop larger than the image is an error (allow_smaller False).

   Order of application (ioupos_view_params.intensity_first):
     0, pretraining (research transforms.py:282-345 / thesis p.29):
        zoom, flip axis 0, flip axis 1, rot90, scale, shift, blur, noise
     1, fine-tuning (research code order, intensity first):
        blur, scale, shift, noise, zoom (off in the research setting), flip 0, flip 1, rot90
   Label maps get only the spatial transforms (zoom by nearest, flips, rot90), so their values
   are only ever copied, never interpolated.
*/

/* Largest Gaussian tail the blur supports (kernel of 2 * tail + 1 taps on the stack): sigma up
   to about 31.9. */
#ifndef IOUPOS_AUG_MAX_TAIL
#define IOUPOS_AUG_MAX_TAIL 128
#endif

/* Probabilities and ranges of the random augmentations. Fill with one of the two presets and
   change fields as needed. Ranges are [lo, hi); a probability of 0 disables a transform. */
typedef struct ioupos_aug_config {
  double zoom_prob, zoom_min, zoom_max;     /* isotropic factor */
  double flip_prob[3];                      /* per axis, 0 = rows */
  double rot90_prob;                        /* plane (0, 1) */
  int rot90_max_k;                          /* k = 1 + uniform integer in [0, max_k), >= 1 */
  double scale_prob, scale_min, scale_max;  /* v * (1 + f) */
  double shift_prob, shift_min, shift_max;  /* v + o */
  double blur_prob, blur_sigma_min[3], blur_sigma_max[3]; /* sigma per axis, independent */
  double noise_prob, noise_mean, noise_std; /* N(mean, s), s = noise_std or U[0, noise_std) */
  int noise_sample_std;                     /* 1: s ~ U[0, noise_std) (MONAI's default) */
  int intensity_first;                      /* order, see the top of this file */
} ioupos_aug_config;

/* Pretraining views (research): zoom 0.8-1.2 p 0.75, flips p 0.5 per axis, rot90 p 0.5
   (k in 1..3), scale f in [-0.1, 0.1) p 0.75, shift [-0.1, 0.1) p 0.75, blur sigma per axis
   in [0.25, 1.5) p 0.25, noise std 0.01 (sampled) p 0.25; spatial first. */
IOUPOS_DEF void ioupos_aug_config_pretrain(ioupos_aug_config *c);
/* Fine-tuning (research): no zoom; blur, scale 0.1, shift 0.1, noise 0.01 at p 0.15 each;
   flips per axis and rot90 at p 0.25; intensity first. */
IOUPOS_DEF void ioupos_aug_config_finetune(ioupos_aug_config *c);

/* One view's drawn augmentation: enough to replay it exactly. */
typedef struct ioupos_view_params {
  int dims;              /* 2 (3 reserved) */
  int intensity_first;   /* order, see the top of this file */
  int zoom_on;
  double zoom;           /* isotropic factor */
  int flip[3];           /* flip axis k (0 = rows, 1 = columns) */
  int rot90_k;           /* 0 = none, else 1..3 quarter turns in the plane (0, 1) */
  int scale_on;
  double scale;          /* MONAI's factor f: v * (1 + f) */
  int shift_on;
  double shift;          /* v + shift */
  int blur_on;
  double blur_sigma[3];  /* per axis */
  int noise_on;
  double noise_mean, noise_std; /* the std actually used (already sampled) */
  uint64_t noise_seed;   /* seeds the ioupos_rng that generates the noise */
} ioupos_view_params;

/* Draw a pretraining view's parameters (ioupos_aug_config_pretrain). */
IOUPOS_DEF void ioupos_view_params_draw(ioupos_rng *rng, ioupos_view_params *p);
/* Draw with a given configuration (its values are not checked here; apply checks them). */
IOUPOS_DEF void ioupos_view_params_draw_config(const ioupos_aug_config *c, ioupos_rng *rng,
                                               ioupos_view_params *p);
/* All transforms off (identity). */
IOUPOS_DEF void ioupos_view_params_identity(ioupos_view_params *p);

/* Apply p to img (h x w, in place); tmp is scratch of h * w floats. No allocation. Fails
   (IOUPOS_EINVAL, img untouched) on a NULL pointer, h or w < 1, dims != 2, an odd rot90_k on a
   non-square image (use square crops), zoom not > 0, a blur sigma not in (0, ~31.9], or a
   non-finite parameter. */
IOUPOS_DEF int ioupos_view_apply(const ioupos_view_params *p, float *img, int h, int w,
                                 float *tmp);
/* Same, and the spatial transforms also on label (h x w, in place; zoom by nearest), which may
   be NULL. tmp is h * w floats, used for the image and then the label. */
IOUPOS_DEF int ioupos_view_apply_labelled(const ioupos_view_params *p, float *img, float *label,
                                          int h, int w, float *tmp);

/* -- deterministic building blocks (2D, row-major h x w) -- */

/* out[h][w] = in[h][w] zoomed by zoom > 0 and centre-cropped / zero-padded back to h x w
   (bilinear, MONAI Zoom keep_size). If floor(n * zoom) is 0 on an axis the output is all 0
   (MONAI raises). in and out must not overlap. Returns 0 or IOUPOS_EINVAL (zoom not > 0). */
IOUPOS_DEF int ioupos_aug_zoom(const float *in, int h, int w, double zoom, float *out);
/* The same with torch's "nearest" (for label maps: values are copied, never mixed). */
IOUPOS_DEF int ioupos_aug_zoom_nearest(const float *in, int h, int w, double zoom, float *out);
/* img[h][w] reversed along axis (0 = rows, 1 = columns), in place. */
IOUPOS_DEF void ioupos_aug_flip(float *img, int h, int w, int axis);
/* out = torch.rot90(in, k, (0, 1)); in is h x w, out is w x h for odd k, h x w for even k
   (k taken mod 4; k = 0 copies). in and out must not overlap. */
IOUPOS_DEF void ioupos_aug_rot90(const float *in, int h, int w, int k, float *out);
/* MONAI's unnormalised erf kernel for sigma (see the top): writes 2 * tail + 1 weights to
   kernel (cap >= that many) and returns tail, or -1 if sigma is not in (0, ~31.9] or cap is
   too small. */
IOUPOS_DEF int ioupos_aug_gaussian_kernel(double sigma, float *kernel, int cap);
/* img[h][w] blurred with sigma0 along rows (axis 0) and sigma1 along columns, zero padding,
   in place; tmp is h * w floats. Returns 0 or IOUPOS_EINVAL (a sigma out of range). */
IOUPOS_DEF int ioupos_aug_gaussian_blur(float *img, int h, int w, double sigma0, double sigma1,
                                        float *tmp);
/* img[n] += N(mean, std) from an ioupos_rng seeded with seed (deterministic). */
IOUPOS_DEF void ioupos_aug_gaussian_noise(float *img, size_t n, double mean, double std,
                                          uint64_t seed);
/* img[n] = img[n] * (float)(1 + f) */
IOUPOS_DEF void ioupos_aug_scale(float *img, size_t n, double f);
/* img[n] = img[n] + (float)o */
IOUPOS_DEF void ioupos_aug_shift(float *img, size_t n, double o);
/* out[box extent] = in[h][w] restricted to box (dims 2, inside the image). */
IOUPOS_DEF void ioupos_aug_crop(const float *in, int h, int w, const ioupos_box *box,
                                float *out);

/* -- fine-tuning crops: MONAI RandCropByPosNegLabeld -- */

typedef struct ioupos_posneg_crop {
  int fg;          /* 1 if the centre was drawn from the foreground */
  uint64_t rank;   /* index of the centre voxel within its set, in row-major order */
  int center[3];   /* the corrected centre (rows, columns) */
  ioupos_box box;  /* the crop, dims 2, always inside the image */
} ioupos_posneg_crop;

/* Number of foreground (label != 0) and background (label == 0 and, if image is not NULL,
   image > image_threshold) pixels of an h x w label map. */
IOUPOS_DEF void ioupos_posneg_count(const float *label, const float *image,
                                    double image_threshold, int h, int w, uint64_t *n_fg,
                                    uint64_t *n_bg);
/* Deterministic part: the crop (crop[0] x crop[1]) centred on the rank-th foreground (fg = 1) or
   background voxel, corrected to lie inside the image. Fails (IOUPOS_EINVAL) if the crop is
   larger than the image or not positive, or rank is not below the set's size. */
IOUPOS_DEF int ioupos_posneg_locate(const float *label, const float *image,
                                    double image_threshold, int h, int w, const int crop[2],
                                    int fg, uint64_t rank, ioupos_posneg_crop *out);
/* Draw num_samples crops (pos, neg >= 0, not both 0; research: pos = neg = 1, 2 samples,
   96 x 96). image may be NULL (no image_key). Fails with IOUPOS_EINVAL on bad arguments,
   IOUPOS_EINFEASIBLE when there is neither foreground nor background. */
IOUPOS_DEF int ioupos_posneg_crops_draw(ioupos_rng *rng, const float *label, const float *image,
                                        double image_threshold, int h, int w, const int crop[2],
                                        double pos, double neg, int num_samples,
                                        ioupos_posneg_crop *out);

/* ============================================================================================
   8. Synthetic CT phantom
   ============================================================================================ */

/* a synthetic abdominal CT phantom with FLARE22 organ labels.

   ioupos_phantom_make fills two volumes of the same grid: an int16-valued CT image in Hounsfield
   units (stored as float, as every ioupos_volume) and a label map with the FLARE22 ids
   (1 liver, 2 right kidney, 3 spleen, 4 pancreas, 5 aorta, 6 inferior vena cava, 7 right
   adrenal, 8 left adrenal, 9 gallbladder, 10 oesophagus, 11 stomach, 12 duodenum, 13 left
   kidney; 0 everything else). It is the data of `make demo` on a fresh machine and test data
   that needs no download.

   Geometry. The affine is diagonal RAS+ (NIfTI / nibabel world: +x towards the patient's
   Right, +y Anterior, +z Superior) with the spacing on the diagonal and the origin chosen so
   that world (0, 0, 0) is the centre of the volume. So voxel index i grows towards the
   patient's right (the liver is at high i), j towards the front (the spine is at low j) and k
   towards the head (the liver dome and lung bases are at high k).

   Anatomy: an adult upper abdomen of fixed physical size (body about 320 x 230 mm in plane;
   160 mm from the diaphragm domes down to below the kidneys) centred in the field of view. A
   field of view smaller than 384 x 320 mm in plane or 160 mm along z shrinks the anatomy to fit
   (in plane and along z separately), so every organ is always in view; a larger one only adds
   air around the body and more body above and below the organs.
     body: elliptical cross-section with a flatter back, varying slowly along z; skin,
           subcutaneous fat (-100 HU), abdominal wall muscle (50 HU), intra-abdominal fat
           (-90 HU), unlabelled bowel loops (25 HU with gas pockets) low and in front;
     bone: lumbar / lower thoracic vertebrae (cortical shell 600 HU, cancellous 200 HU,
           discs 80 HU, spinal canal 20 HU, arch, spinous and transverse processes), oblique
           ribs in the wall of the upper slices (450 HU); paraspinal and psoas muscles;
     thorax above the diaphragm domes (right dome higher): lung bases (-850 HU) behind and
           beside the heart (40 HU);
     organs: liver (60 HU, with darker portal / hepatic veins) in the right upper quadrant,
           gallbladder (10) under it, right kidney (cortex 45, medulla 30, sinus fat) lower than
           the left, spleen (50) at the left posterior wall, stomach (wall 40, fluid 15, air
           -950 in front) on the left, oesophagus (40, small air lumen) from above into the
           stomach, duodenum (C-loop, 30) around the pancreatic head, pancreas (45) from the
           C-loop across the aorta towards the spleen, aorta (contrast, 180) left-anterior of
           the spine, IVC (100) to its right, adrenals (30) above and medial to the kidneys.
   Each case varies with the seed: body size, aspect and fat thickness, every organ's
   position (several mm), size (about +-12 %), rotation and a smooth low-frequency deformation,
   the bowel pattern, the stomach's air level, tissue HU (a few HU) and the noise. The same seed
   gives bit-identical volumes.

   Gaussian noise of noise_sd HU (default 15) is added everywhere, then values are rounded to
   integers and clamped to the int16 CT range [-1024, 3071]. noise_sd 0 gives the noise-free
   phantom. Runtime: about 0.1-0.2 s for the default 192 x 160 x 64 grid on one core. */

/* FLARE22 label ids. */
enum {
  IOUPOS_LABEL_LIVER = 1,
  IOUPOS_LABEL_KIDNEY_R = 2,
  IOUPOS_LABEL_SPLEEN = 3,
  IOUPOS_LABEL_PANCREAS = 4,
  IOUPOS_LABEL_AORTA = 5,
  IOUPOS_LABEL_IVC = 6,
  IOUPOS_LABEL_ADRENAL_R = 7,
  IOUPOS_LABEL_ADRENAL_L = 8,
  IOUPOS_LABEL_GALLBLADDER = 9,
  IOUPOS_LABEL_OESOPHAGUS = 10,
  IOUPOS_LABEL_STOMACH = 11,
  IOUPOS_LABEL_DUODENUM = 12,
  IOUPOS_LABEL_KIDNEY_L = 13,
  IOUPOS_LABEL_COUNT = 14 /* ids are 0 (background) .. 13 */
};

typedef struct ioupos_phantom_opts {
  uint64_t seed;     /* same seed, same volumes (bit for bit) */
  int nx, ny, nz;    /* grid, NIfTI order (x fastest); each 1..4096 */
  double spacing[3]; /* voxel size in mm along x, y, z; each in (0, 100] */
  double noise_sd;   /* Gaussian noise in HU, >= 0 (0: noise-free) */
} ioupos_phantom_opts;

/* seed 0, 192 x 160 x 64 voxels at 2 x 2 x 2.5 mm (384 x 320 x 160 mm), noise_sd 15 HU */
IOUPOS_DEF void ioupos_phantom_defaults(ioupos_phantom_opts *o);

/* Fill *image (HU, integer values) and *label (FLARE22 ids), both allocated here on the grid of
   *o with the same RAS+ affine; free them with ioupos_volume_free. On failure (bad options,
   out of memory) both are left empty (data NULL) and the reason names the bad value. */
IOUPOS_DEF int ioupos_phantom_make(const ioupos_phantom_opts *o, ioupos_volume *image,
                                   ioupos_volume *label);

/* "liver", "right kidney", ... for ids 1..13; "background" for 0; "?" otherwise. */
IOUPOS_DEF const char *ioupos_label_name(int id);

/* ============================================================================================
   9. Data sets and the threaded loader
   ============================================================================================ */

/* DATA SETS
     ioupos_dataset_scan lists the *.png files of a folder (extension case-insensitive; dot-files,
     folders and other files ignored) in strcmp order of their names, so the list is the same on
     every machine. With a label folder, every image is paired with the label of the SAME file
     name (never by sort order alone): an image without a label, or a label without an image, is
     an error naming both sides. An empty or missing folder is an error naming it.

   THE LOADER
     A stream of batches over a data set, in two kinds:
       IOUPOS_LOADER_SSL       one IoU-constrained crop pair per image (ioupos_iou_sampler on the
                               image's shape); views[0] and views[1] hold the two crops.
       IOUPOS_LOADER_FINETUNE  num_samples crops per image with centres chosen as MONAI's
                               RandCropByPosNegLabeld(pos, neg, num_samples) does; image and label
                               crops (label values are the ids, 0..255, as floats).
     Each crop then goes through the optional augmentation callback (NULL = none). Values of an
     un-augmented crop are the PNG's grey values in [0, 1]; an augmentation may leave [0, 1]
     (MONAI's intensity shift / noise do not clip either).

     Multi-crop (DINO; SSL only). With n_local = K > 0 every sample also gets K local crops of
     size local_crop[] (lh x lw, any size, usually smaller than the crop), each drawn by
     ioupos_local_crop_draw: uniform over the positions inside the (padded) image whose IoU with
     view 0's box lies in [local_min_iou, local_max_iou]; given view 0's box, independently of
     each other and of view 1. They land in batch->local (view-major: local view k of sample i at
     local + (k * n + i) * lh * lw) and batch->local_box[k * n + i]; each goes through the
     augmentation callback with h, w = lh, lw. n_local = 0 (the default) ignores the local_*
     fields and gives exactly the batches of a loader without multi-crop. Open refuses a
     malformed local crop or interval (EINVAL) and an interval no local crop can satisfy with
     ANY placement in an image large enough (ioupos_local_crop_feasible with shape NULL;
     EINFEASIBLE naming --local_min_iou / --local_max_iou and the achievable range). An image
     whose view-0 box admits no local position (e.g. A is the whole image and the interval
     excludes the IoU of a crop inside it) fails its batch with IOUPOS_EINFEASIBLE naming the
     file, its (padded) shape, A in that padded image's coordinates and the interval.

     Reproducibility. root = ioupos_rng_seed(seed); E = ioupos_rng_split(root, epoch). The order
     of epoch e is a Fisher-Yates shuffle of 0..n-1 drawn from a copy of E. The sample of data
     set image d in epoch e uses S = ioupos_rng_split(E, d): its crop boxes (the IoU pair, or the
     fine-tuning centres) are drawn from ioupos_rng_split(S, 0), and the augmentation of crop j
     (SSL: view j; fine-tuning: crop j) from ioupos_rng_split(S, 1 + j). Local crops: their boxes,
     local 0 first, from one generator ioupos_rng_split(S, 100), the augmentation of local view
     k from ioupos_rng_split(S, 3 + k) (so the pair and views 0, 1 do not depend on n_local).
     So a batch depends only on (seed, epoch, batch index, configuration), never on
     num_workers, prefetch or timing.

     Batching. batch_size counts images (SSL: pairs; fine-tuning: images, each giving
     num_samples crops, as the research code's "32 slices = 64 crops"). An epoch has
     n / batch_size batches with drop_last, else ceil(n / batch_size) (the last one short).
     With drop_last the images at the tail of the epoch's shuffled order are left out of that
     epoch. A data set smaller than one batch with drop_last is an error at open.

     The stream. The loader produces the batches (epoch, batch) in order, crossing epoch ends
     by itself: ioupos_loader_next returns (0, 0), (0, 1), ..., (0, last), (1, 0), ... and each
     batch says its epoch, index and whether it is the last of its epoch. ioupos_loader_seek
     moves the stream (resume a run at (epoch, batch)); ioupos_loader_epoch(l, e) is seek(e, 0)
     and costs nothing when the stream is already there (so calling it at the top of every epoch
     keeps the prefetched batches). l->epoch and l->batch always hold the position of the batch
     the next ioupos_loader_next will return: save them in a checkpoint, seek to them on resume.

     Threads. num_workers = 0: batches are made in the caller's thread, inside ioupos_loader_next.
     num_workers = N > 0: N pthreads make whole batches ahead of time into a ring of `prefetch`
     slots (0 = 2 N); ioupos_loader_next hands them out in order. The returned batch's arrays
     belong to the loader and stay valid until the next call of ioupos_loader_next / seek / close.
     A failure while making a batch (a corrupt PNG, an image whose shape admits no pair in the
     interval, a label of another size, ...) is returned by the ioupos_loader_next call that
     would have returned that batch, with the reason naming the file and the batch position;
     the stream then goes on with the next batch (skip it or stop, the caller decides).
     ioupos_loader_close never blocks for longer than the batches being made at that moment.
     Each worker keeps a small cache of IoU samplers keyed by image shape (slices of one CT share
     a shape; a 2D init is about a microsecond but costs allocations).

     Images smaller than the crop. The research code padded every slice to at least 96 x 96 in
     preprocessing (SpatialPadd), so its loader never saw one; ioupos-prep does the same. The
     loader, by default (pad_small = 1), pads such an image with 0 to at least the crop size on
     that axis, symmetrically as MONAI's SpatialPad does (floor(d / 2) before, the rest after),
     and reports boxes in the ORIGINAL image's coordinates (so a box may then reach outside the
     image, where the crop is 0). With pad_small = 0 such an image is an error naming the file.
     Local crops are placed in the image padded (the same way) to at least max(crop,
     local_crop) per axis: the pair's padding when the local crop is not larger than the crop,
     so view 0's box is the same box in both; with pad_small = 0 an image smaller than the
     local crop is an error naming the file and both sizes.

     PNG decoding: 8-bit grey (and grey + alpha) PNGs, what ioupos-prep writes, take a fast
     path that decodes to bytes and converts only the crops; the values are exactly those of
     ioupos_image_load (v / 255). Every other PNG goes through ioupos_image_load.

     Threads and platforms: the loader uses POSIX threads and the scan POSIX opendir / stat.
*/

typedef struct ioupos_dataset {
  int n;
  char **images; /* n paths "<image_dir>/<name>", sorted by name (strcmp) */
  char **labels; /* NULL, or n paths "<label_dir>/<name>": the label of images[i] */
} ioupos_dataset;

/* Scan image_dir (and label_dir, if not NULL) as described above. On failure *ds is empty. */
IOUPOS_DEF int ioupos_dataset_scan(const char *image_dir, const char *label_dir,
                                   ioupos_dataset *ds);
IOUPOS_DEF void ioupos_dataset_free(ioupos_dataset *ds);

enum { IOUPOS_LOADER_SSL = 0, IOUPOS_LOADER_FINETUNE = 1 };

/* A pluggable augmentation, applied in place to one h x w crop (and to its label crop, or NULL
   for SSL views). rng is the crop's own generator (see above); scratch holds
   IOUPOS_AUGMENT_SCRATCH(h, w) floats. Returns 0 or a negative ioupos_status (with a reason);
   it may be called from several worker threads at once with the same ctx. */
typedef int (*ioupos_augment_fn)(void *ctx, ioupos_rng *rng, float *img, float *label, int h,
                                 int w, float *scratch);
#define IOUPOS_AUGMENT_SCRATCH(h, w) ((size_t)4 * (size_t)(h) * (size_t)(w))

typedef struct ioupos_loader_config {
  const ioupos_dataset *dataset; /* borrowed: must outlive the loader */
  int kind;                      /* IOUPOS_LOADER_SSL or IOUPOS_LOADER_FINETUNE */
  int batch_size;                /* images per batch (research: 128 SSL, 32 fine-tuning) */
  int crop[2];                   /* crop h, w (research: 96, 96) */
  double min_iou, max_iou;       /* SSL: the interval (research best: [0.3, 0.6]) */
  int pair_mode;                 /* SSL: IOUPOS_PAIR_ANCHORED or IOUPOS_PAIR_JOINT */
  uint64_t seed;
  int num_workers;               /* 0: synchronous in the caller's thread; at most 256 */
  int prefetch;                  /* batches in flight with workers; 0 = 2 * num_workers */
  int drop_last;                 /* 1: only full batches */
  int pad_small;                 /* 1: zero-pad images smaller than the crop; 0: error */
  int num_samples;               /* fine-tuning: crops per image (research: 2) */
  int pos, neg;                  /* fine-tuning: centre on label > 0 with p = pos/(pos+neg) */
  int bg_use_image;              /* fine-tuning: background = label 0 AND image > threshold */
  double bg_image_threshold;     /*   (MONAI's image_key / image_threshold); default off */
  ioupos_augment_fn augment;     /* NULL = no augmentation */
  void *augment_ctx;
  /* SSL multi-crop (DINO), see "Multi-crop" above */
  int n_local;                   /* local crops per sample, 0..256; 0 = none (default) */
  int local_crop[2];             /* local crop h, w (default 48 x 48) */
  double local_min_iou, local_max_iou; /* IoU interval with view 0's box (default [0, 1]) */
} ioupos_loader_config;

/* The research setup for kind: batch 128 (SSL) or 32 (fine-tuning), crop 96 x 96,
   [0.3, 0.6] anchored, seed 0, no workers, drop_last 1, pad_small 1, num_samples 2,
   pos = neg = 1, no augmentation; no local crops (n_local 0; local crop 48 x 48, [0, 1]). */
IOUPOS_DEF void ioupos_loader_config_default(ioupos_loader_config *cfg,
                                             const ioupos_dataset *ds, int kind);

typedef struct ioupos_batch {
  int kind;
  int epoch, index;   /* this batch's position in the stream */
  int last_in_epoch;  /* 1 for the epoch's last batch */
  int n_images;       /* images in this batch (<= batch_size) */
  int n;              /* samples: SSL pairs (= n_images), fine-tuning crops (n_images*num_samples) */
  int h, w;           /* crop size */
  float *views[2];    /* SSL: n * h * w each, sample i at views[v] + i*h*w; else NULL */
  float *image;       /* fine-tuning: n * h * w; else NULL */
  float *label;       /* fine-tuning: n * h * w label ids as floats; else NULL */
  int *source;        /* n: data set index of each sample's image */
  ioupos_box *box[2]; /* SSL: box[v][i] is view v's crop; fine-tuning: box[0][i], box[1] NULL;
                         in the source image's coordinates (see "smaller than the crop") */
  int n_local, lh, lw;   /* SSL multi-crop: local views per sample and their size (0 = none) */
  float *local;          /* n_local * n * lh * lw: local view k of sample i at
                            local + (k * n + i) * lh * lw; NULL when n_local is 0 */
  ioupos_box *local_box; /* n_local * n: local_box[k * n + i], source coordinates; or NULL */
} ioupos_batch;

struct ioupos__loader_state;
typedef struct ioupos_loader {
  ioupos_loader_config cfg; /* a copy of the configuration (read-only) */
  int batches_per_epoch;    /* read-only */
  int epoch, batch;         /* read-only: position of the batch the next call returns */
  struct ioupos__loader_state *st;
} ioupos_loader;

IOUPOS_DEF int ioupos_loader_open(ioupos_loader *l, const ioupos_loader_config *cfg);
/* The next batch of the stream (see above), or an error for it (the stream moves past it). */
IOUPOS_DEF int ioupos_loader_next(ioupos_loader *l, ioupos_batch *batch);
/* Move the stream to (epoch, batch); 0 <= batch < batches_per_epoch, epoch >= 0. */
IOUPOS_DEF int ioupos_loader_seek(ioupos_loader *l, int epoch, int batch);
IOUPOS_DEF int ioupos_loader_epoch(ioupos_loader *l, int epoch);
/* Stops and joins the workers, frees everything; safe on a zeroed or failed-open loader. */
IOUPOS_DEF void ioupos_loader_close(ioupos_loader *l);

/* The default augmentations (section 7) as loader callbacks. ctx is NULL for the research
   preset or a const ioupos_aug_config * to change it; both draw the crop's parameters from its
   rng (ioupos_view_params_draw_config) and apply them in place with scratch as tmp. Use square
   crops: an odd rot90 of a non-square crop is an error (reported with the file name).
     ioupos_augment_pretrain_view    ioupos_aug_config_pretrain: zoom, flips, rot90, scale,
                                     shift, blur, noise (per view; label ignored)
     ioupos_augment_finetune_crop    ioupos_aug_config_finetune: intensity first, the spatial
                                     transforms also on the label (nearest) */
IOUPOS_DEF int ioupos_augment_pretrain_view(void *ctx, ioupos_rng *rng, float *img, float *label,
                                            int h, int w, float *scratch);
IOUPOS_DEF int ioupos_augment_finetune_crop(void *ctx, ioupos_rng *rng, float *img, float *label,
                                            int h, int w, float *scratch);

/* Fine-tuning crop centre, MONAI RandCropByPosNegLabeld semantics (correct_crop_centers):
   the start of a crop of size s centred on voxel c of an axis of length len >= s is
   clamp(c - s / 2, 0, len - s). Exposed for tests. */
IOUPOS_DEF int ioupos_crop_start_from_centre(int c, int s, int len);
/* PRE-FLIGHT CHECK. ioupos_dataset_check looks at every file of one or more scanned data sets
   (ioupos_dataset_scan; a scan already names every image without its label and every label
   without its image) before a run starts, and names ALL the bad files at once instead of
   letting the loader find them one by one, epochs later. Per file, cheaply:
     images  the PNG's structure without decoding it: signature, a valid IHDR (size, bit depth,
             colour type; what stb_image reads), the chunk list up to IEND inside the file (a
             truncated or cut-off PNG fails here), an IDAT, PLTE for palette images. With
             decode_images the pixels are decoded too (as the loader does; slower).
     labels  the same, then, with n_classes > 0, decoded: every pixel must be an 8-bit id below
             n_classes; and a label must have its image's size.
   With a loader configuration, against every distinct image size (as the loader pads it):
     pad_small = 0: images smaller than the crop (or the local crop) are named;
     IOUPOS_LOADER_SSL: first, with no file opened, whether two crops of the crop size can have
             an IoU in [min_iou, max_iou] in an image of any size (e.g. --crop_size 1 with
             [0.3, 0.6] cannot: 1x1 crops have IoU 0 or 1), and the same for the local crops
             (n_local > 0); then, for each image size, whether the pair sampler can place a pair
             in the interval there (and a local crop with its IoU interval around some pair
             crop), naming the size of the file, its padded size, the crop, the interval and
             the nearest achievable IoUs. These are the loader's own rules (ioupos_loader_open,
             ioupos_iou_sampler_init on the padded image, ioupos_local_crop_feasible).
   The data sets must be PNG folders (what ioupos_dataset_scan lists); NIfTI volumes are not
   read by the loader and not checked here.
   Returns 0 when every file passed. Otherwise the status of the first problem (EFORMAT for a
   corrupt file, EIO for an unreadable one, EINVAL for a bad label or size, EINFEASIBLE for an
   interval) and a reason "pre-flight check: B of N files are bad: <path>: <problem>; ..." that
   holds as many whole problems as its 512 bytes allow, then "and K more". *report (when not
   NULL) receives every problem, up to max_listed, one "<path>: <problem>\n" line each (then
   "... and K more\n"), as a fresh IOUPOS_MALLOC string (free with IOUPOS_FREE); NULL when
   nothing is wrong or memory ran out. The files are only read. */
typedef struct ioupos_dataset_check_opts {
  const ioupos_loader_config *loader; /* NULL, or the loader that will read the sets (its
                                         dataset field is ignored): sizes, crops, intervals */
  int n_classes;     /* > 0: decode the labels; ids must be below it. 0: label headers only */
  int decode_images; /* 1: also decode every image (slower); 0: structure only */
  int num_threads;   /* files checked in parallel by this many threads; 0 or 1: the caller's */
  int max_listed;    /* problems listed in *report; 0: 100 */
} ioupos_dataset_check_opts;

/* Checks sets[0..n_sets) (zero-initialised opts: structure of every file only; opts may be
   NULL for that). See above. */
IOUPOS_DEF int ioupos_dataset_check(const ioupos_dataset *const sets[], int n_sets,
                                    const ioupos_dataset_check_opts *opts, char **report);
#endif /* IOUPOS__PART_DATA: sections 5-9 */

#if IOUPOS__PART_CORE /* sections 10-22: not with IOUPOS_ONLY_SAMPLER or IOUPOS_ONLY_DATA */
/* ============================================================================================
   10. Dense float32 GEMM (CPU)
   ============================================================================================ */

/* WHAT
     C = alpha * op(A) op(B) + beta * C, row-major (as llm.c): op(A) is M x K, op(B) is K x N,
     C is M x N with element (i, j) at C[i * ldc + j].
       transa = 0: A is stored M x K, op(A)(i, k) = A[i * lda + k]   (lda >= max(1, K))
       transa = 1: A is stored K x M, op(A)(i, k) = A[k * lda + i]   (lda >= max(1, M))
       transb = 0: B is stored K x N, op(B)(k, j) = B[k * ldb + j]   (ldb >= max(1, N))
       transb = 1: B is stored N x K, op(B)(k, j) = B[j * ldb + k]   (ldb >= max(1, K))
     llm.c's matmul_forward (out = inp @ weight^T + bias) is ioupos_gemm(0, 1, tokens, OC, C, ...);
     its backward is dinp = dout @ weight: (0, 0, tokens, C, OC) and dweight += dout^T @ inp:
     (1, 0, OC, C, tokens) with beta = 1.
     BLAS semantics: beta == 0 means C is not read (NaN or Inf in C does not propagate); alpha == 0
     or K == 0 means A and B are not read and C = beta * C.

   HOW (BLIS-style)
     Loops jc (NC columns of C) -> pc (KC of K) -> pack op(B)[pc, jc] into NR-wide slivers ->
     ic (MC rows) -> jr -> ir -> an MR x NR register micro-kernel, which reads op(A) in place
     through its two strides (only a last, partial MR-row sliver is packed, zero-padded). Kernels:
     6 x 16 with AVX2 + FMA intrinsics when the compiler targets them (__AVX2__ and __FMA__
     defined: -mavx2 -mfma or -march=x86-64-v3 / native); 12 x 16 with AVX-512 when __AVX512F__
     is defined too (-mavx512f; IOUPOS_GEMM_NO_AVX512 keeps the AVX2 one); a portable C kernel
     otherwise, or when IOUPOS_GEMM_NO_SIMD is defined. Problems with M * N * K <= 4096 take a
     direct unpacked loop (no allocation).

   THREADS AND DETERMINISM
     With -fopenmp the work is shared by omp_get_max_threads() threads (1 inside an enclosing
     parallel region, and 1 for problems under about a million flops). Threads split C only:
     blocks of rows (MC) and, when there are few of those, runs of NR-wide column slivers; K is
     never split. Every element of C is computed by the same micro-kernel over the same KC blocks
     of K in the same order, and the blocking constants do not depend on the thread count, so the
     result is bit-identical for any number of threads (and for ioupos_gemm vs one item of
     ioupos_gemm_batched_strided). The AVX-512 and AVX2 kernels run the same FMA chain per
     element, so they give bit-identical results; the portable kernel differs from them (FMA
     rounds once), all within the documented error bound. Without -fopenmp the code is serial.
     Sections 11, 12 and the encoder of section 17 follow the same rule outside the GEMM: loops
     over independent rows (or windows) run on the threads when there are at least
     IOUPOS_PAR_MIN_WORK (default 32768) units of work, and sums across rows are taken per chunk
     of a constant number of rows, then over the chunks in order; their SIMD lanes (AVX2, or
     AVX-512 on top) compute the same values as each other. So a whole encoder step is
     bit-identical for any thread count (tests/test_threads.c).

   MEMORY
     One IOUPOS_MALLOC per call for the packing buffers (about KC * (min(N, NC) + 16) floats for
     op(B) plus up to MC * KC floats per thread for op(A)'s edge sliver: at most ~3.3 MiB +
     144 KiB per thread), freed before returning; nothing is kept between calls. The tiny path
     allocates nothing.

   ERRORS
     IOUPOS_EINVAL (transa / transb not 0 or 1, a negative size or batch, a leading dimension too
     small, a NULL matrix that would be read or written, strides that make C items overlap), or
     IOUPOS_ENOMEM; the reason is in ioupos_failure_reason(). C is untouched on failure. */

/* C[M][N] (ldc) = alpha * op(A)[M][K] (lda) . op(B)[K][N] (ldb) + beta * C; see above. */
IOUPOS_DEF int ioupos_gemm(int transa, int transb, int M, int N, int K, float alpha,
                           const float *A, int lda, const float *B, int ldb, float beta, float *C,
                           int ldc);

/* for b in 0..batch-1: C + b*strideC = alpha * op(A + b*strideA) . op(B + b*strideB)
   + beta * (C + b*strideC), strides in floats (argument order as cublasSgemmStridedBatched).
   A stride of 0 shares that operand between items (e.g. one weight matrix); strideC must keep
   the C items apart. Window attention: scores[b][49][49] = q[b][49][hd] . k[b][49][hd]^T is
   (0, 1, 49, 49, hd, scale, q, hd, 49*hd, k, hd, 49*hd, 0, s, 49, 49*49, windows*heads).
   Items are spread over the threads (each item on one thread) when there are enough of them. */
IOUPOS_DEF int ioupos_gemm_batched_strided(int transa, int transb, int M, int N, int K,
                                           float alpha, const float *A, int lda,
                                           long long strideA, const float *B, int ldb,
                                           long long strideB, float beta, float *C, int ldc,
                                           long long strideC, int batch);

/* 1 when this build uses the AVX2+FMA micro-kernel (or the AVX-512 one, which computes the same
   values), 0 for the portable one. */
IOUPOS_DEF int ioupos_gemm_simd(void);
/* "AVX-512", "AVX2+FMA" or "portable": the micro-kernel of this build. */
IOUPOS_DEF const char *ioupos_gemm_kernel(void);


/* ============================================================================================
   11. Layers, forward beside backward
   ============================================================================================ */

/* Neural-network layers, forward beside backward.

   CONVENTIONS (llm.c style)
     - Free functions on raw float pointers, row-major. Tokens are channels-last: a tensor of
       tokens is [N, C] with N = batch * spatial positions and C contiguous.
     - Outputs come first in the argument list; a shape comment sits on top of each function.
     - `_forward` saves what `_backward` needs in caller-provided buffers (layer norm mean / rstd,
       patch-embedding columns, ...). Nothing allocates except ioupos_gemm's packing buffers
       (one IOUPOS_MALLOC per GEMM call, see section 10 of ioupos.h) and the per-chunk partial
       sums of the parameter gradients (layer norm, linear bias: one small IOUPOS_MALLOC per call;
       without it they run their plain reference, which gives the same bits); functions that call
       the GEMM return 0 or a negative ioupos_status (IOUPOS_ENOMEM), the others return void.
     - `_backward` ACCUMULATES (+=) into every gradient it is given, input gradient and parameter
       gradients alike: zero them before the first backward of a step. A gradient pointer may be
       NULL when that gradient is not wanted (e.g. dinp of the image in patch embedding).
     - Deterministic: reductions run in a fixed order (double accumulators), independent of any
       thread count; no atomics. No fast-math assumptions. With -fopenmp, rows run on the threads
       and the sums over rows (layer norm weight and bias, linear bias gradients) are taken per
       chunk of 256 rows, then over the chunks in order (section 10, THREADS AND DETERMINISM).
       erf, exp and sqrt come from libm, except in the SIMD builds' GELU (our own vectorised
       erfc / exp in double: within 1 ulp of the libm formula, see ioupos_gelu_forward).
     - Reference and fast paths: every layer of sections 11, 12, 14 and 19 is written first as a
       plain reference (scalar loops, the static ioupos__<layer>_ref of the implementation where
       a fast path exists). Builds with AVX2+FMA or OpenMP run the fast paths instead (SIMD lanes,
       rows on the threads, chunked sums); they give the reference's bits where they add in the
       same order (layer norm, bias sums) and stay within stated tolerances otherwise (GELU,
       window attention: tests/test_threads.c). Defining IOUPOS_LAYERS_REF runs the references
       in any build (the GEMM of section 10 keeps its kernels).
*/

/* -- linear: torch.nn.Linear, y = x W^T + b -- */
/* out[N][OC] = inp[N][C] . weight[OC][C]^T + bias[OC]   (bias may be NULL) */
IOUPOS_DEF int ioupos_linear_forward(float *out, const float *inp, const float *weight,
                                     const float *bias, int N, int C, int OC);
/* dinp[N][C] += dout . weight; dweight[OC][C] += dout^T . inp; dbias[OC] += sum_n dout.
   ACCUMULATES into dinp, dweight, dbias (each may be NULL). */
IOUPOS_DEF int ioupos_linear_backward(float *dinp, float *dweight, float *dbias,
                                      const float *dout, const float *inp, const float *weight,
                                      int N, int C, int OC);

/* -- layer norm over the last dim: torch.nn.LayerNorm(C, eps) (biased variance) -- */
/* out[N][C] = (inp - mean) * rstd * weight[C] + bias[C]; saves mean[N], rstd[N] for backward.
   weight / bias may be NULL (elementwise_affine=False). torch's default eps is 1e-5. */
IOUPOS_DEF void ioupos_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                         const float *weight, const float *bias, int N, int C,
                                         float eps);
/* ACCUMULATES into dinp[N][C], dweight[C], dbias[C] (each may be NULL). */
IOUPOS_DEF void ioupos_layernorm_backward(float *dinp, float *dweight, float *dbias,
                                          const float *dout, const float *inp,
                                          const float *weight, const float *mean,
                                          const float *rstd, int N, int C);

/* -- GELU, exact erf form (torch.nn.GELU(approximate='none')) -- */
/* out[n] = 0.5 x (1 + erf(x / sqrt 2)); n elements; out may equal inp. Evaluated in double and
   rounded once: with libm's erf in the portable build; in AVX2 / AVX-512 builds by our own
   vectorised Phi from 0.5 erfc (exp times a degree-16 polynomial, relative error < 1e-12),
   within 1 ulp of the libm formula for x > -5.5 and more accurate below it (where 1 + erf
   cancels). The two SIMD widths give the same values. */
IOUPOS_DEF void ioupos_gelu_forward(float *out, const float *inp, size_t n);
/* dinp[n] += dout * (Phi(x) + x phi(x)). ACCUMULATES into dinp. */
IOUPOS_DEF void ioupos_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);

/* -- ReLU -- */
/* out[n] = max(x, 0); out may equal inp. */
IOUPOS_DEF void ioupos_relu_forward(float *out, const float *inp, size_t n);
/* dinp[n] += dout where inp > 0 (gradient 0 at 0, as torch). ACCUMULATES into dinp. */
IOUPOS_DEF void ioupos_relu_backward(float *dinp, const float *inp, const float *dout, size_t n);

/* -- softmax over the last dim (rows) -- */
/* out[N][C] = exp(x - max_row) / sum_row; out may equal inp. */
IOUPOS_DEF void ioupos_softmax_forward(float *out, const float *inp, int N, int C);
/* dinp[N][C] += y * (dout - sum_c dout * y), y = the forward output. ACCUMULATES into dinp. */
IOUPOS_DEF void ioupos_softmax_backward(float *dinp, const float *out, const float *dout, int N,
                                        int C);

/* -- L2 normalisation of rows: torch.nn.functional.normalize(x, p=2, dim=-1, eps) -- */
/* out[N][C] = x / max(||x||, eps); saves denom[N] = max(||x||, eps). torch's default eps 1e-12. */
IOUPOS_DEF void ioupos_l2norm_forward(float *out, float *denom, const float *inp, int N, int C,
                                      float eps);
/* dinp[N][C] += (dout - y (y . dout)) / ||x|| where ||x|| > eps, dout / eps where it is not (the
   clamp passes no gradient to the norm, as torch's clamp_min). ACCUMULATES into dinp. */
IOUPOS_DEF void ioupos_l2norm_backward(float *dinp, const float *out, const float *denom,
                                       const float *dout, int N, int C, float eps);

/* -- global average pooling over tokens -- */
/* out[B][C] = mean over t of inp[B][T][C] */
IOUPOS_DEF void ioupos_avgpool_forward(float *out, const float *inp, int B, int T, int C);
/* dinp[B][T][C] += dout[B][C] / T. ACCUMULATES into dinp. */
IOUPOS_DEF void ioupos_avgpool_backward(float *dinp, const float *dout, int B, int T, int C);

/* -- batch norm 1d over [N, C]: torch.nn.BatchNorm1d(C, eps, momentum) -- */
/* Train mode: statistics of the batch, over the N rows of each channel; the biased variance
   normalises; the running statistics (may be NULL) are updated in place as torch does,
     running_mean = (1 - momentum) running_mean + momentum mean,
     running_var  = (1 - momentum) running_var  + momentum var * N / (N - 1)   (UNBIASED),
   momentum 0.1 in torch. N must be >= 2 (torch refuses one value per channel in training).
   out[N][C]; saves mean[C], rstd[C] = 1 / sqrt(var + eps) for backward. weight/bias may be NULL. */
IOUPOS_DEF void ioupos_batchnorm_forward_train(float *out, float *mean, float *rstd,
                                               float *running_mean, float *running_var,
                                               const float *inp, const float *weight,
                                               const float *bias, int N, int C, float momentum,
                                               float eps);
/* Backward of the train mode (the batch statistics depend on the input).
   ACCUMULATES into dinp[N][C], dweight[C], dbias[C] (each may be NULL). */
IOUPOS_DEF void ioupos_batchnorm_backward_train(float *dinp, float *dweight, float *dbias,
                                                const float *dout, const float *inp,
                                                const float *weight, const float *mean,
                                                const float *rstd, int N, int C);
/* Eval mode: out[N][C] = (x - running_mean) / sqrt(running_var + eps) * weight + bias. */
IOUPOS_DEF void ioupos_batchnorm_forward_eval(float *out, const float *inp,
                                              const float *running_mean,
                                              const float *running_var, const float *weight,
                                              const float *bias, int N, int C, float eps);
/* Backward of the eval mode (statistics are constants). ACCUMULATES into dinp, dweight, dbias. */
IOUPOS_DEF void ioupos_batchnorm_backward_eval(float *dinp, float *dweight, float *dbias,
                                               const float *dout, const float *inp,
                                               const float *running_mean,
                                               const float *running_var, const float *weight,
                                               int N, int C, float eps);

/* -- patch embedding: conv with kernel = stride (MONAI PatchEmbed, no norm) -- */
/* inp [B][Cin][S...] channels-first as MONAI feeds it, S = {H, W} (dims 2) or {D, H, W} (dims 3);
   weight [Cout][Cin][p][p] (or [p][p][p]) as torch.nn.Conv2d/3d; bias[Cout] (may be NULL);
   out [B][S0/p][S1/p](...)[Cout] tokens channels-last, S_k/p rounded UP: like MONAI, a size that
   is not a multiple of p is zero-padded at its end.
   col [B * prod(ceil(S/p))][Cin * p^dims] receives the im2col matrix (the GEMM input), which
   backward needs: keep it until then. */
IOUPOS_DEF size_t ioupos_patch_embed_col_size(int dims, int B, int Cin, const int shape[],
                                              int p);
IOUPOS_DEF int ioupos_patch_embed_forward(float *out, float *col, const float *inp,
                                          const float *weight, const float *bias, int dims,
                                          int B, int Cin, const int shape[], int p, int Cout);
/* dweight += dout^T . col; dbias += sum dout; dinp [B][Cin][S...] += the conv-transpose of dout
   (scratch: ioupos_patch_embed_col_size floats, used only when dinp != NULL).
   ACCUMULATES into dinp, dweight, dbias (each may be NULL). */
IOUPOS_DEF int ioupos_patch_embed_backward(float *dinp, float *dweight, float *dbias,
                                           float *scratch, const float *dout, const float *col,
                                           const float *weight, int dims, int B, int Cin,
                                           const int shape[], int p, int Cout);

/* -- patch merging: MONAI swin_unetr.PatchMerging (SwinTransformer's default "merging") -- */
/* inp [B][S...][C] channels-last, S = {H, W} or {D, H, W}; odd sizes are zero-padded at the end;
   the 2^dims sub-grids are concatenated on the channel axis in MONAI's order, then LayerNorm
   (2^dims C, eps 1e-5, ln_w / ln_b) and Linear(2^dims C -> 2C, no bias; red_w [2C][2^dims C]).
     2D (PatchMergingV2.forward, used by PatchMerging for 4-D input), offsets (h, w):
        x0 (0,0), x1 (1,0), x2 (0,1), x3 (1,1)
     3D (PatchMerging.forward), offsets (d, h, w):
        x0 (0,0,0) x1 (1,0,0) x2 (0,1,0) x3 (0,0,1) x4 (1,1,0) x5 (1,0,1) x6 (0,1,1) x7 (1,1,1)
   out [B][ceil(S/2)...][2C]. Saves, for backward, with M = B * prod(ceil(S/2)), K = 2^dims C:
     cat [M][K] (the concatenation), lnout [M][K] (the normalised input of the Linear),
     mean [M], rstd [M]. */
IOUPOS_DEF int ioupos_patch_merging_forward(float *out, float *cat, float *lnout, float *mean,
                                            float *rstd, const float *inp, const float *ln_w,
                                            const float *ln_b, const float *red_w, int dims,
                                            int B, const int shape[], int C);
/* scratch: 2 * M * K floats. ACCUMULATES into dinp [B][S...][C], dln_w, dln_b [K], dred_w
   [2C][K] (each may be NULL). */
IOUPOS_DEF int ioupos_patch_merging_backward(float *dinp, float *dln_w, float *dln_b,
                                             float *dred_w, float *scratch, const float *dout,
                                             const float *cat, const float *lnout,
                                             const float *mean, const float *rstd,
                                             const float *ln_w, const float *red_w, int dims,
                                             int B, const int shape[], int C);

/* -- drop path (stochastic depth), as MONAI / timm DropPath in training -- */
/* mask[B]: per sample, keep with probability keep = 1 - drop_prob (a uniform draw from rng below
   keep), scale 1 / keep (scale_by_keep): mask[b] is 1/keep or 0. drop_prob 0 (or eval mode:
   simply do not call it) gives all ones and draws nothing. drop_prob 1 gives all zeros. */
IOUPOS_DEF void ioupos_drop_path_mask(float *mask, int B, float drop_prob, ioupos_rng *rng);
/* out[B][S] = inp[B][S] * mask[b]  (S = elements per sample); out may equal inp. */
IOUPOS_DEF void ioupos_drop_path_forward(float *out, const float *inp, const float *mask, int B,
                                         size_t S);
/* dinp[B][S] += dout * mask[b]. ACCUMULATES into dinp. */
IOUPOS_DEF void ioupos_drop_path_backward(float *dinp, const float *dout, const float *mask,
                                          int B, size_t S);

/* -- residual add with drop path: x + DropPath(y), the Swin block's two shortcuts -- */
/* out[B][S] = x + y * mask[b] (mask from ioupos_drop_path_mask; NULL means x + y, eval mode or
   rate 0); out may equal x or y. */
IOUPOS_DEF void ioupos_residual_forward(float *out, const float *x, const float *y,
                                        const float *mask, int B, size_t S);
/* dy[B][S] += dout * mask[b] (dout where mask is NULL). The gradient to x is dout itself.
   ACCUMULATES into dy. */
IOUPOS_DEF void ioupos_residual_backward(float *dy, const float *dout, const float *mask, int B,
                                         size_t S);

/* -- MLP: MONAI MLPBlock as in Swin: Linear(C -> Hd) - GELU - Linear(Hd -> C), no dropout -- */
/* out[N][C]; saves h_pre[N][Hd] (first linear's output) and h_act[N][Hd] (after GELU). h_act may
   be scratch that is not kept: the backward can recompute it from h_pre (see below). */
IOUPOS_DEF int ioupos_mlp_forward(float *out, float *h_pre, float *h_act, const float *inp,
                                  const float *w1, const float *b1, const float *w2,
                                  const float *b2, int N, int C, int Hd);
/* scratch: N * Hd floats, or 2 * N * Hd when h_act is NULL: then GELU(h_pre) is recomputed into
   the second half, bit-identical to the forward's h_act (the encoder keeps only h_pre, saving
   N * Hd floats per block). ACCUMULATES into dinp[N][C], dw1[Hd][C], db1[Hd], dw2[C][Hd],
   db2[C] (each may be NULL). */
IOUPOS_DEF int ioupos_mlp_backward(float *dinp, float *dw1, float *db1, float *dw2, float *db2,
                                   float *scratch, const float *dout, const float *inp,
                                   const float *h_pre, const float *h_act, const float *w1,
                                   const float *w2, int N, int C, int Hd);


/* The plain references that the tests compare the public layers' GEMM forms with (see HOW
   SECTIONS 11 AND 12 ARE LAID OUT in the implementation): the same arguments as the public
   functions they mirror, sums in double. Private to the implementation unless
   IOUPOS_REFERENCE_API is defined where it is compiled and where they are called (the Makefile
   builds build/ioupos.o and the C tests so). */
#ifdef IOUPOS_REFERENCE_API
IOUPOS_DEF void ioupos__linear_forward_ref(float *out, const float *inp, const float *weight,
                                           const float *bias, int N, int C, int OC);
IOUPOS_DEF void ioupos__linear_backward_ref(float *dinp, float *dweight, float *dbias,
                                            const float *dout, const float *inp,
                                            const float *weight, int N, int C, int OC);
IOUPOS_DEF void ioupos__conv_forward_ref(float *out, const float *inp, const float *weight,
                                         const float *bias, int dims, int B, int Cin,
                                         const int shape[], int k, int Cout);
IOUPOS_DEF void ioupos__conv_backward_ref(float *dinp, float *dweight, float *dbias,
                                          const float *dout, const float *inp,
                                          const float *weight, int dims, int B, int Cin,
                                          const int shape[], int k, int Cout);
IOUPOS_DEF void ioupos__conv_transpose_forward_ref(float *out, const float *inp,
                                                   const float *weight, const float *bias,
                                                   int dims, int B, int Cin, const int shape[],
                                                   int Cout);
IOUPOS_DEF void ioupos__conv_transpose_backward_ref(float *dinp, float *dweight, float *dbias,
                                                    const float *dout, const float *inp,
                                                    const float *weight, int dims, int B,
                                                    int Cin, const int shape[], int Cout);
#endif

/* ============================================================================================
   12. Shifted-window attention (Swin)
   ============================================================================================ */

/* Shifted-window attention of MONAI's Swin Transformer, forward beside backward.

   WHAT (MONAI 1.6.1, monai/networks/nets/swin_unetr.py)
     SwinTransformerBlock.forward_part1 without its norm1 is
         windows = partition(roll(pad(x), -shift))        ioupos_window_partition_forward
         windows = WindowAttention(windows, mask)          ioupos_window_attention_forward
         x       = crop(roll(reverse(windows), +shift))    ioupos_window_reverse_forward
     with
       - get_window_size: on each axis where the map is not larger than the window
         (size <= window) the window shrinks to the map size and the shift becomes 0;
       - padding with zeros at the END of each spatial axis (F.pad(x, (0, 0, 0, pad_r, 0, pad_b[,
         0, pad_d1]))), to a multiple of the effective window; the crop keeps the first size[d];
       - torch.roll(x, -s) before attention: shifted[p] = padded[(p + s) mod P]; +s after;
       - window_partition order: windows in raster order of the window grid (slowest axis first)
         inside each image, images outermost; tokens in raster order inside a window;
       - the mask of compute_mask on the padded map: each padded position gets the region id
         cnt of the last of MONAI's nested Python slices (slice(-w), slice(-w, -s), slice(-s, None)
         per axis, so with s = 0 an axis has a single region) that covers it; tokens of a window
         with different ids get -100.0, equal ids 0.0; window w of the flat list uses mask
         w mod nwin. A mask is applied only when some effective shift is > 0;
       - WindowAttention: qkv = x W_qkv^T + b_qkv ([3][heads][head_dim] along the 3C outputs),
         scores = (q * head_dim^-0.5) k^T + table[index[i][j]][h] (+ mask), softmax over j,
         y = scores v (heads concatenated along C), out = y W_proj^T + b_proj. The relative
         position index is built from the CONFIGURED window (MONAI's buffer) and only its
         [:n, :n] block is used when the effective window is smaller (n tokens): MONAI's quirk,
         reproduced on purpose;
       - attention dropout, projection dropout: 0 (not implemented).

   CONVENTIONS (llm.c): free functions on raw float pointers, row-major, channels last, outputs
   first; every _backward ACCUMULATES (+=) into the input gradient and every parameter gradient;
   forward saves what backward needs in caller-provided buffers (acts); the caller's buffers hold
   everything large (the GEMM allocates its packing buffers, the window attention one block per
   call for the padded bias / mask, small per-thread tiles and the table gradient's partial
   sums); deterministic for any thread count (section 10, THREADS AND DETERMINISM).
   Shapes: 2D map [B, H, W, C], 3D map [B, D, H, W, C]; windows [B * nwin, ntok, C].

   HOW: the projections are GEMMs over all windows. The per-window products (q k^T, P v and
   their gradients: 49 x 49 x head_dim at Swin's shapes) run as direct register-tiled kernels
   on (window, head) pairs read in place from qkv, with the bias + mask + softmax of a score row
   fused and vectorised; windows run on the threads in chunks of 32 per head, and the relative
   position table's gradient is summed per chunk, then over the chunks in order. That is the fast
   path; the plain reference (section 11's CONVENTIONS) does the same sums in scalar loops. */

#define IOUPOS_SWIN_MASK_VALUE (-100.0f) /* MONAI's compute_mask fill value */

/* Window geometry of one Swin block on one map size (get_window_size + padding). */
typedef struct ioupos_swin_geom {
  int ndim;          /* spatial dimensions, 2 or 3 */
  int batch;         /* images */
  int size[3];       /* map, slowest axis first: {H, W} or {D, H, W} */
  int window_cfg[3]; /* configured window: the relative position table / index come from it */
  int window[3];     /* effective window (get_window_size) */
  int shift[3];      /* effective shift (0 where size <= configured window) */
  int padded[3];     /* size rounded up to a multiple of window (zeros at the end) */
  int grid[3];       /* windows along each axis */
  int nwin;          /* windows per image */
  int ntok;          /* tokens per window */
  int shifted;       /* 1 when some shift > 0 (mask and rolls are used) */
} ioupos_swin_geom;

/* Fills g from the map size, the configured window and shift (ndim values each, shift may be
   NULL for none). Returns 0 or IOUPOS_EINVAL (ndim not 2 / 3, sizes < 1, shift < 0 or >= window). */
IOUPOS_DEF int ioupos_swin_geom_init(ioupos_swin_geom *g, int ndim, int batch, const int *size,
                                     const int *window, const int *shift);
/* Rows of the relative position bias table: prod_d (2 * window_cfg[d] - 1). */
IOUPOS_DEF int ioupos_swin_table_rows(const ioupos_swin_geom *g);

/* index [ntok][ntok]: MONAI's relative_position_index[:ntok, :ntok] (rows of the table). */
IOUPOS_DEF void ioupos_swin_relative_index(int *index, const ioupos_swin_geom *g);
/* mask [nwin][ntok][ntok]: compute_mask(padded, window, shift) (0 or -100). */
IOUPOS_DEF void ioupos_swin_attn_mask(float *mask, const ioupos_swin_geom *g);

/* windows [batch * nwin, ntok, C] <- x [batch, size..., C]: pad (zeros at the end), roll by
   -shift, partition. Overwrites windows. */
IOUPOS_DEF void ioupos_window_partition_forward(float *windows, const float *x,
                                                const ioupos_swin_geom *g, int C);
/* dx [batch, size..., C] += the gradient of the above for dwindows [batch * nwin, ntok, C]
   (the padding positions' gradients are dropped). ACCUMULATES. */
IOUPOS_DEF void ioupos_window_partition_backward(float *dx, const float *dwindows,
                                                 const ioupos_swin_geom *g, int C);
/* x [batch, size..., C] <- windows [batch * nwin, ntok, C]: reverse, roll by +shift, crop.
   Overwrites x. */
IOUPOS_DEF void ioupos_window_reverse_forward(float *x, const float *windows,
                                              const ioupos_swin_geom *g, int C);
/* dwindows [batch * nwin, ntok, C] += the gradient of the above for dx [batch, size..., C]
   (padding tokens get nothing). ACCUMULATES. */
IOUPOS_DEF void ioupos_window_reverse_backward(float *dwindows, const float *dx,
                                               const ioupos_swin_geom *g, int C);

/* Floats of the saved activations of ioupos_window_attention_forward: qkv [BW, N, 3C], attention
   probabilities [BW, NH, N, N], heads output y [BW, N, C] (in that order). */
IOUPOS_DEF size_t ioupos_window_attention_acts_size(int BW, int N, int C, int NH);
/* Floats of the scratch of ioupos_window_attention_backward (forward needs none): dqkv and dy,
   BW * N * 4C. */
IOUPOS_DEF size_t ioupos_window_attention_scratch_size(int BW, int N, int C, int NH);

/* out [BW, N, C]; acts (acts_size floats, saved for backward); inp [BW, N, C];
   qkv_w [3C, C], qkv_b [3C] or NULL; proj_w [C, C], proj_b [C]; table [rows, NH];
   index [N, N] (ioupos_swin_relative_index); mask [nW, N, N] or NULL (window b uses b mod nW).
   BW = windows in the batch, N = tokens per window, NH heads, C % NH == 0.
   Returns 0, IOUPOS_EINVAL, or IOUPOS_ENOMEM (the GEMM's or its own per-call buffers). */
IOUPOS_DEF int ioupos_window_attention_forward(float *out, float *acts, const float *inp,
                                               const float *qkv_w, const float *qkv_b,
                                               const float *proj_w, const float *proj_b,
                                               const float *table, const int *index,
                                               const float *mask, int BW, int N, int C, int NH,
                                               int nW);
/* dinp [BW, N, C], dqkv_w [3C, C], dqkv_b [3C] (or NULL), dproj_w [C, C], dproj_b [C],
   dtable [rows, NH]: all ACCUMULATED (+=). scratch: scratch_size floats. dout [BW, N, C];
   acts, inp and the weights as given to the forward. */
IOUPOS_DEF int ioupos_window_attention_backward(float *dinp, float *dqkv_w, float *dqkv_b,
                                                float *dproj_w, float *dproj_b, float *dtable,
                                                float *scratch, const float *dout,
                                                const float *acts, const float *inp,
                                                const float *qkv_w, const float *proj_w,
                                                const int *index, int BW, int N, int C, int NH);

/* The whole attention half of a Swin block on a map, without its norm (MONAI's
   SwinTransformerBlock.forward_part1 after norm1): partition (pad, roll -shift) -> window
   attention -> reverse (roll +shift, crop). mask: ioupos_swin_attn_mask of g, used only when
   g->shifted (may be NULL otherwise). */
/* Floats of acts: windows [BW, N, C] then the window attention's acts (BW = batch * nwin). */
IOUPOS_DEF size_t ioupos_swin_attention_acts_size(const ioupos_swin_geom *g, int C, int NH);
/* Floats of scratch for forward and backward. */
IOUPOS_DEF size_t ioupos_swin_attention_scratch_size(const ioupos_swin_geom *g, int C, int NH);
/* out [batch, size..., C] (overwritten); acts, scratch as sized above; x [batch, size..., C];
   weights as ioupos_window_attention_forward. */
IOUPOS_DEF int ioupos_swin_attention_forward(float *out, float *acts, float *scratch,
                                             const float *x, const float *qkv_w,
                                             const float *qkv_b, const float *proj_w,
                                             const float *proj_b, const float *table,
                                             const int *index, const float *mask,
                                             const ioupos_swin_geom *g, int C, int NH);
/* dx [batch, size..., C] and the parameter gradients: ACCUMULATED (+=). */
IOUPOS_DEF int ioupos_swin_attention_backward(float *dx, float *dqkv_w, float *dqkv_b,
                                              float *dproj_w, float *dproj_b, float *dtable,
                                              float *scratch, const float *dout,
                                              const float *acts, const float *qkv_w,
                                              const float *proj_w, const int *index,
                                              const ioupos_swin_geom *g, int C, int NH);


/* ============================================================================================
   13. Safetensors files
   ============================================================================================ */

/* Safetensors files: the checkpoint format shared with PyTorch.

   THE FORMAT (https://github.com/huggingface/safetensors, as written by safetensors 0.8.0)
     8 bytes   N, the header length, unsigned little-endian
     N bytes   UTF-8 JSON object: {"__metadata__": {"key": "value", ...},          (optional)
                                   "name": {"dtype": "F32", "shape": [2, 3],
                                            "data_offsets": [begin, end]}, ...}
               padded at the end with spaces so that 8 + N is a multiple of 8
     rest      the byte buffer; tensor bytes are [begin, end) relative to its start, raw
               little-endian, C order. The tensors cover the buffer exactly: no gaps, no
               overlaps, nothing after the last one.

   READING (ioupos_safetensors_parse / ioupos_safetensors_read)
     The header is parsed by a small strict JSON parser written for this schema: objects,
     arrays, strings (escapes incl. \uXXXX and surrogate pairs; must be valid UTF-8, no raw
     control characters, no \u0000) and non-negative integers; any other JSON value (true,
     null, fractions, exponents, negative numbers, nested values) is refused. Refused with
     IOUPOS_EFORMAT and a reason naming the file, the tensor and the problem:
       - a header length below 2, above IOUPOS_ST_MAX_HEADER (100 MB, as safetensors) or past
         the end of the file; a header not starting with '{'; anything but JSON whitespace
         after the closing brace;
       - duplicate tensor names or metadata keys; a tensor entry lacking or repeating dtype,
         shape or data_offsets, or with any other key (stricter than safetensors, which
         ignores unknown keys); "__metadata__" that is not an object of strings;
       - an unknown dtype; more than IOUPOS_ST_MAX_DIMS (8) dimensions;
       - data_offsets with end < begin or end past the buffer; shape product * dtype size !=
         end - begin (or overflowing 64 bits);
       - tensors that leave a gap, overlap, or leave bytes after the last tensor.
     Tensors are listed in offset order; tensor data points into the caller's bytes (parse) or
     the file buffer owned by the ioupos_st_file (read). The data pointer may be unaligned
     (headers that are not padded to 8 bytes) and is little-endian: read it with
     ioupos_st_to_f32 or memcpy, never by casting to float *.

   WRITING (ioupos_safetensors_write)
     Tensors of any dtype, from host-order elements. The layout is exactly safetensors 0.8.0's
     save_file: tensors are placed in order of dtype descending in the order U64 I64 F64 F32
     U32 I32 BF16 F16 U16 I16 F8_E4M3 F8_E5M2 I8 U8 BOOL (the Rust Dtype enum's order), ties by
     name (bytewise); the header lists them in that order after "__metadata__" (written only
     when there are metadata pairs, in the order given: n_metadata 0 is save_file's
     metadata=None, not metadata={}); compact JSON escaped as serde_json
     does; spaces pad 8 + N to a multiple of 8. The file is therefore byte-identical to
     save_file's for the same tensors whenever there is at most one metadata pair (safetensors
     keeps metadata in a Rust HashMap, so with two or more pairs even its own output order
     varies from run to run). Written atomically with ioupos_write_file_atomic. */

#define IOUPOS_ST_MAX_DIMS 8
#define IOUPOS_ST_MAX_HEADER 100000000u /* bytes; safetensors' own limit */

/* dtypes, in the order of safetensors' Rust Dtype enum (the writer sorts by it). */
typedef enum ioupos_st_dtype {
  IOUPOS_ST_BOOL = 0, IOUPOS_ST_U8, IOUPOS_ST_I8, IOUPOS_ST_F8_E5M2, IOUPOS_ST_F8_E4M3,
  IOUPOS_ST_I16, IOUPOS_ST_U16, IOUPOS_ST_F16, IOUPOS_ST_BF16, IOUPOS_ST_I32, IOUPOS_ST_U32,
  IOUPOS_ST_F32, IOUPOS_ST_F64, IOUPOS_ST_I64, IOUPOS_ST_U64,
  IOUPOS_ST_NUM_DTYPES
} ioupos_st_dtype;

typedef struct ioupos_st_tensor {
  const char *name;                  /* UTF-8, NUL-terminated */
  int dtype;                         /* ioupos_st_dtype */
  int ndim;                          /* 0 (scalar) .. IOUPOS_ST_MAX_DIMS */
  int64_t shape[IOUPOS_ST_MAX_DIMS]; /* the first ndim are used */
  const void *data;                  /* nbytes bytes; read: little-endian, maybe unaligned */
  size_t nbytes;                     /* product(shape) * dtype size */
} ioupos_st_tensor;

typedef struct ioupos_st_pair {
  const char *key, *value; /* UTF-8, NUL-terminated */
} ioupos_st_pair;

typedef struct ioupos_st_file {
  int n;                     /* number of tensors */
  ioupos_st_tensor *tensors; /* n tensors, in data offset order */
  int n_metadata;
  ioupos_st_pair *metadata;  /* "__metadata__" pairs in header order */
  /* private: */
  void *buffer;              /* the file's bytes (read) or NULL (parse) */
  char *strings;             /* decoded names, keys and values */
  int *by_name;              /* tensor indices sorted by name, for ioupos_safetensors_find */
  char *name;                /* the path (read) or name (parse), for the loaders' messages */
} ioupos_st_file;

/* "F32" etc., or NULL; and the element size in bytes (0 if unknown). */
IOUPOS_DEF const char *ioupos_st_dtype_name(int dtype);
IOUPOS_DEF size_t ioupos_st_dtype_size(int dtype);

/* Parse a safetensors file held in memory; name is used in messages. out's tensors point into
   bytes, which must outlive out. On failure out is empty (safe to free). */
IOUPOS_DEF int ioupos_safetensors_parse(const void *bytes, size_t size, const char *name,
                                        ioupos_st_file *out);
/* Read and parse a file; out owns the bytes. */
IOUPOS_DEF int ioupos_safetensors_read(const char *path, ioupos_st_file *out);
IOUPOS_DEF void ioupos_safetensors_free(ioupos_st_file *f);
/* The tensor called name, or NULL (O(log n)). */
IOUPOS_DEF const ioupos_st_tensor *ioupos_safetensors_find(const ioupos_st_file *f,
                                                           const char *name);
/* Convert an F32, F16, BF16 or F64 tensor to nbytes / dtype size floats. F16 and BF16 are
   exact (subnormals, infinities and NaN payloads included); F64 is rounded to nearest.
   IOUPOS_EINVAL for other dtypes. */
IOUPOS_DEF int ioupos_st_to_f32(const ioupos_st_tensor *t, float *dst);
/* Write n tensors (name, dtype, ndim, shape, data as host-order elements; nbytes 0 or the exact
   size) and n_metadata pairs (metadata may be NULL when 0) to path; see WRITING above.
   IOUPOS_EINVAL (nothing written) on an empty, duplicate, "__metadata__" or non-UTF-8 name,
   key or value, an unknown dtype, a bad ndim or negative dimension, or nbytes mismatch. */
IOUPOS_DEF int ioupos_safetensors_write(const char *path, int n, const ioupos_st_tensor *tensors,
                                        int n_metadata, const ioupos_st_pair *metadata);


/* ============================================================================================
   14. Losses and the weight-normalised linear
   ============================================================================================ */

/* SSL losses, cross-entropy and the weight-normalised linear. Same conventions as section 11:
   free functions on raw float pointers, row-major, outputs first, shape comment on top,
   `_forward` beside `_backward`, backward ACCUMULATES (+=) into every gradient it is given,
   no allocation (the caller provides scratch), reductions in a fixed order in double.

   CONTENTS
     - cosine similarity (torch.nn.functional.cosine_similarity, dim 1) forward / backward
     - SimSiam loss: symmetric negative cosine with stop-gradient on z (lightly's
       NegativeCosineSimilarity used as in the research code)
     - DINO loss (lightly DINOLoss / the DINO reference code): teacher centring and sharpening,
       cross-entropy over all (teacher view, student view) pairs except the same view index,
       centre EMA update as its own function
     - weight-normalised linear (torch.nn.utils.weight_norm(nn.Linear(C, OC, bias=False)), dim 0)
     - cross-entropy with softmax over classes, integer targets, mean reduction
*/

/* -- cosine similarity of rows: torch.nn.functional.cosine_similarity(x1, x2, dim=1, eps)
   torch 2.15 semantics (checked on torch 2.15.0): each norm is clamped separately,
       out[n] = sum_c (x1[n,c] / max(|x1[n]|, eps)) * (x2[n,c] / max(|x2[n]|, eps)),
   NOT the product of norms; the clamp is made under no_grad on a copy of the norm, so autograd
   differentiates the norm as if unclamped (d|x|/dx = x / |x|, 0 where |x| = 0).
   torch's default eps (and lightly's NegativeCosineSimilarity's) is 1e-8. */
/* out[N] = cos(x1[N][C], x2[N][C]) */
IOUPOS_DEF void ioupos_cosine_similarity_forward(float *out, const float *x1, const float *x2,
                                                 int N, int C, float eps);
/* dx1[N][C] += dout[n] * d out[n] / d x1[n] (gradient to the FIRST argument only; for the
   gradient to x2 call again with x1 and x2 swapped). ACCUMULATES into dx1. */
IOUPOS_DEF void ioupos_cosine_similarity_backward(float *dx1, const float *dout, const float *x1,
                                                  const float *x2, int N, int C, float eps);

/* -- SimSiam loss (symmetric negative cosine, stop-gradient on z)
   L = -(mean_n cos(p1[n], z2[n]) + mean_n cos(p2[n], z1[n])) / 2, eps = IOUPOS_SIMSIAM_EPS
   (1e-8, lightly's default); z1, z2 are treated as constants (detached). p*, z*: [N][C]. */
#define IOUPOS_SIMSIAM_EPS 1e-8f
/* returns L */
IOUPOS_DEF double ioupos_simsiam_loss_forward(const float *p1, const float *p2, const float *z1,
                                              const float *z2, int N, int C);
/* dp1[N][C] += dloss * dL/dp1, dp2[N][C] += dloss * dL/dp2 (either may be NULL); no gradient
   to z. ACCUMULATES into dp1, dp2. */
IOUPOS_DEF void ioupos_simsiam_loss_backward(float *dp1, float *dp2, float dloss, const float *p1,
                                             const float *p2, const float *z1, const float *z2,
                                             int N, int C);

/* -- DINO loss (lightly 1.6.0 DINOLoss == DINO reference code for n_teacher <= n_student)
   Views are stacked view-major: teacher[NT][B][D], student[NS][B][D] (torch.stack of the lists;
   the reference code's torch.cat of views followed by chunk() is the same layout). Student view
   v and teacher view v are the same crop for v < min(NT, NS) (global crops first, as in DINO).
       q[t] = softmax((teacher[t] - center) / teacher_temp)           (no gradient)
       ls[s] = log_softmax(student[s] / student_temp)
       L = -(1 / (n_pairs B)) sum_{t, s, s != t} sum_b sum_d q[t,b,d] ls[s,b,d]
   with n_pairs = NT NS - min(NT, NS) (every pair except the same view index). NT, NS >= 1 and
   n_pairs >= 1. DINO: student_temp 0.1; teacher_temp 0.04 after a linear warm-up (the caller
   passes the current value). The centre is NOT updated here: call ioupos_dino_center_update
   with the same teacher logits after the loss (as DINOLoss does inside forward). */
/* tprob[NT][B][D] and slogp[NS][B][D]: caller scratch, written here, read by backward.
   Returns L. */
IOUPOS_DEF double ioupos_dino_loss_forward(float *tprob, float *slogp, const float *teacher,
                                           const float *student, const float *center, int NT,
                                           int NS, int B, int D, float teacher_temp,
                                           float student_temp);
/* dstudent[NS][B][D] += dloss * dL/dstudent (there is no gradient to the teacher).
   ACCUMULATES into dstudent. */
IOUPOS_DEF void ioupos_dino_loss_backward(float *dstudent, float dloss, const float *tprob,
                                          const float *slogp, int NT, int NS, int B, int D,
                                          float student_temp);
/* center[D] = center * momentum + mean_{t,b} teacher[t][b][:] * (1 - momentum)
   (lightly's center_mean over views and batch + center_momentum; DINO uses momentum 0.9). */
IOUPOS_DEF void ioupos_dino_center_update(float *center, const float *teacher, int NT, int B,
                                          int D, float momentum);

/* -- weight-normalised linear: torch.nn.utils.weight_norm(nn.Linear(C, OC, bias=False))
   W[o][:] = g[o] v[o][:] / |v[o]| (dim 0: one norm per output row, no eps, as torch), then
   out = inp W^T. g may be NULL, meaning g = 1 (DINO's last layer with norm_last_layer: g is
   filled with 1 and frozen). */
/* out[N][OC] = inp[N][C] . W[OC][C]^T; writes weight[OC][C] (= W) and vnorm[OC] (= |v[o]|),
   caller buffers that backward reads. Returns 0 or a negative ioupos_status (GEMM). */
IOUPOS_DEF int ioupos_wnlinear_forward(float *out, float *weight, float *vnorm, const float *inp,
                                       const float *v, const float *g, int N, int C, int OC);
/* dinp[N][C] += dout . W; dv[OC][C] += (g/|v|) (dW - vhat (vhat . dW)); dg[OC] += vhat . dW,
   with dW = dout^T inp computed into the caller scratch dweight[OC][C] (overwritten) and
   vhat = v / |v|. Pass dg = NULL when g is frozen (and g = NULL when it is 1). Any of dinp, dv,
   dg may be NULL. ACCUMULATES into dinp, dv, dg. Returns 0 or a negative ioupos_status. */
IOUPOS_DEF int ioupos_wnlinear_backward(float *dinp, float *dv, float *dg, float *dweight,
                                        const float *dout, const float *inp, const float *v,
                                        const float *g, const float *weight, const float *vnorm,
                                        int N, int C, int OC);

/* -- cross-entropy over classes: torch.nn.functional.cross_entropy(logits, target)
   logits[N][K] (classes contiguous: channels-last tokens), target[N] in [0, K), mean over N.
   No ignore_index, no class weights, no label smoothing. */
/* prob[N][K] = softmax(logits) (caller buffer, read by backward). Returns L = mean_n
   (logsumexp(logits[n]) - logits[n][target[n]]). */
IOUPOS_DEF double ioupos_crossentropy_forward(float *prob, const float *logits, const int *target,
                                              int N, int K);
/* dlogits[N][K] += dloss * (prob - onehot(target)) / N. ACCUMULATES into dlogits. */
IOUPOS_DEF void ioupos_crossentropy_backward(float *dlogits, float dloss, const float *prob,
                                             const int *target, int N, int K);


/* ============================================================================================
   15. Optimisers, schedules, EMA and gradient clipping
   ============================================================================================ */

/* Optimisers, schedules, EMA and gradient clipping.

   All functions work on raw float pointers (parameters, gradients, optimiser state) that the
   caller owns; nothing is allocated, nothing is random, nothing is global. Every function is
   deterministic and single-threaded: the same inputs give the same bits.

   ROUNDING. The optimiser steps follow torch's element-wise operation order and use C99 fmaf
   exactly where torch's vectorised CPU kernels fuse a multiply-add (add with alpha, lerp,
   addcmul, addcdiv use Vectorized fmadd on AVX2/AVX-512 builds). fmaf is correctly rounded on
   every platform (hardware or libm), so results stay deterministic, and on the test fixtures
   SGD is bit-identical to torch and AdamW differs by at most 1 float ulp on a few elements
   (because our hyper-parameters are floats where torch's are Python doubles). Without a
   hardware FMA target (-mfma) fmaf is a libm call: slower, but the optimiser step is a tiny part
   of an iteration.

   WHAT IT MATCHES (checked by tests/test_optim.c against tests/reference/optim_fixture.py)
     ioupos_sgd_step          torch.optim.SGD(momentum, dampening 0, nesterov False), the
                              single-tensor (foreach=False) path, per parameter tensor.
     ioupos_adamw_step        torch.optim.AdamW (single-tensor path, amsgrad False).
     ioupos_cosine_schedule   the DINO reference's cosine_scheduler array, element `it`
                              (linear warm-up by np.linspace, then half a cosine). Used for
                              DINO's lr, weight decay (0.04 -> 0.4) and teacher momentum
                              (0.9995 -> 1), and for fine-tuning's warm-up + cosine lr.
     ioupos_cosine_annealing_lr  torch.optim.lr_scheduler.CosineAnnealingLR in closed form
                              (no warm-up), the SimSiam schedule (0.025 -> 1e-6 over T_max).
     ioupos_weight_decay_applies  the "no decay on biases and 1-D parameters" rule of the
                              SimSiam and DINO research code.
     ioupos_dino_param_frozen DINO's cancel_gradients_last_layer (last layer frozen in the
                              first freeze_last_layer epochs).
     ioupos_ema_update        DINO's teacher update teacher = m * teacher + (1 - m) * student.
     ioupos_clip_grad_per_param  DINO's clip_gradients (each tensor clipped on its own).
     ioupos_clip_grad_norm    torch.nn.utils.clip_grad_norm_ (one norm over all tensors).
*/

/* -- optimiser steps: call once per parameter tensor per iteration -- */

/* SGD with momentum, torch semantics (dampening 0, nesterov false):
     d = fma(weight_decay, param, grad)
     first_step: buf = d          otherwise: buf = momentum * buf + d
     param = fma(-lr, buf, param)
   param[n], momentum_buf[n] updated in place; grad[n] is not modified. first_step is nonzero on
   the parameter's first update (torch's "momentum_buffer is None"); momentum_buf need not be
   initialised then. momentum == 0 is plain SGD (momentum_buf unused, may be NULL). Pass
   weight_decay 0 for parameters excluded by ioupos_weight_decay_applies. A parameter without a
   gradient this iteration (torch: grad None) is simply not stepped. */
IOUPOS_DEF void ioupos_sgd_step(float *param, const float *grad, float *momentum_buf, size_t n,
                                float lr, float momentum, float weight_decay, int first_step);

/* AdamW, torch semantics (decoupled weight decay, amsgrad false), in torch's operation order:
     param *= 1 - lr * weight_decay
     m = lerp(m, grad, 1 - beta1)            (torch's two-branch lerp formula, fused)
     v = fma(1 - beta2, grad * grad, v * beta2)
     denom = sqrt(v) / sqrt(1 - beta2^step) + eps
     param = fma(-(lr / (1 - beta1^step)), m / denom, param)
   step is this parameter's own update count INCLUDING this one (1 on its first update; torch
   keeps a per-parameter step, so a parameter skipped by the optimiser, e.g. DINO's frozen last
   layer, starts counting later). m[n], v[n] must be zero before step 1. Scalars (1 - lr*wd, bias
   corrections, step size) are computed in double from the float arguments and rounded to float
   where torch rounds them; torch's hyper-parameters are Python doubles, so e.g. 1 - beta1 can
   differ from torch's value by one float ulp (the tests allow for it). */
IOUPOS_DEF void ioupos_adamw_step(float *param, const float *grad, float *m, float *v, size_t n,
                                  float lr, float beta1, float beta2, float eps,
                                  float weight_decay, int step);

/* -- schedules: pure functions, double in and out -- */

/* DINO reference cosine_scheduler(base, final, epochs, niter_per_ep, warmup_epochs,
   start_warmup), element `it` of the per-iteration array, with total = epochs * niter_per_ep
   and warmup = warmup_epochs * niter_per_ep iterations:
     it < warmup:  np.linspace(start_warmup, base, warmup)[it]   (endpoint included: the last
                   warm-up iteration is exactly base; a 1-iteration warm-up is start_warmup)
     otherwise:    i = it - warmup, len = total - warmup,
                   final + 0.5 * (base - final) * (1 + cos(pi * i / len))
   Note the cosine never reaches `final` (the last value is at i = len - 1). it is clamped to
   [0, total - 1] (the reference array has no other elements); total <= warmup or total <= 0
   returns base. This is the DINO lr (warm-up from 0), weight-decay and teacher-momentum
   schedule and the fine-tuning lr schedule. */
IOUPOS_DEF double ioupos_cosine_schedule(long it, long total, long warmup, double base,
                                         double final_value, double start_warmup);

/* torch.optim.lr_scheduler.CosineAnnealingLR's closed form (its _get_closed_form_lr):
     eta_min + (base - eta_min) * (1 + cos(pi * t / t_max)) / 2
   t is the scheduler's last_epoch (0 before the first scheduler.step()); no warm-up; t = t_max
   gives eta_min; past t_max the cosine continues (rises again) as torch's does. torch's stepped
   scheduler computes the same values recursively; they agree to ~1e-16 relative (tested). This
   is the SimSiam lr (0.025 -> 1e-6; the predictor's lr is held constant instead). t_max <= 0
   returns base. */
IOUPOS_DEF double ioupos_cosine_annealing_lr(long t, long t_max, double base, double eta_min);

/* -- parameter groups -- */

/* 1 if weight decay applies to a parameter of `ndim` dimensions named `name`, 0 for biases
   (name ending in "bias", e.g. "head.0.bias") and every 1-D (or 0-D) parameter (norm weights,
   ...), the rule of the SimSiam and DINO research code. name may be NULL (shape rule only). */
IOUPOS_DEF int ioupos_weight_decay_applies(int ndim, const char *name);

/* 1 if the parameter `name` gets no update in `epoch` (0-based) under DINO's
   freeze_last_layer: names containing "last_layer" while epoch < freeze_last_layer. torch then
   sets the gradient to None, so the optimiser skips the parameter entirely (no weight decay,
   no step count, momentum/moments untouched): do not call the step function for it. */
IOUPOS_DEF int ioupos_dino_param_frozen(const char *name, int epoch, int freeze_last_layer);

/* -- teacher EMA -- */

/* teacher[i] = teacher[i] * m + student[i] * (1 - m), with m and 1 - m rounded to float as torch
   rounds Python scalars (DINO: param_k.mul_(m).add_((1 - m) * param_q)); bit-identical to
   torch. m comes from the momentum schedule (double). */
IOUPOS_DEF void ioupos_ema_update(float *teacher, const float *student, size_t n, double m);

/* -- gradient clipping -- */

/* DINO clip_gradients for ONE parameter tensor: norm = ||grad||_2,
   coef = clip / (norm + 1e-6) (float); if coef < 1, grad *= coef. Returns norm (before
   clipping). Call it for each parameter tensor (DINO clips each on its own, clip 3.0). */
IOUPOS_DEF float ioupos_clip_grad_per_param(float *grad, size_t n, float clip);

/* torch.nn.utils.clip_grad_norm_(max_norm, norm_type 2): total = the 2-norm of the per-tensor
   2-norms of grads[0..count-1] (sizes ns[]), coef = min(max_norm / (total + 1e-6), 1), every
   gradient multiplied by coef (also when coef is 1, as torch does). Returns total. Norms are
   accumulated in double and rounded to float per tensor and for the total. */
IOUPOS_DEF float ioupos_clip_grad_norm(float *const *grads, const size_t *ns, size_t count,
                                       float max_norm);

/* ============================================================================================
   16. Tensors, arenas and the backend operation table
   ============================================================================================ */

/* Named tensors, one allocation per category, and the operations a backend provides.

   THE TENSOR TABLE (llm.c's ParameterTensors, made data)
     A model is built by registering its tensors, in a fixed order, into an ioupos_tensor_table:
     name (the PyTorch state-dict name, e.g. "layers1.0.blocks.1.attn.qkv.weight"), shape,
     dtype, flags and how to initialise it. The table assigns each F32 tensor an offset into ONE
     float arena (offsets aligned to IOUPOS_TENSOR_ALIGN floats) and each I64 tensor (buffers
     such as MONAI's relative_position_index and batch norm's num_batches_tracked) an offset
     into one small host int64 array. The same table then drives
       - the allocation of values, gradients and optimiser state (one arena each, same layout,
         so an optimiser walks the table and steps tensor by tensor);
       - initialisation (ioupos_params_init: per-tensor rule, seeded, order-independent);
       - checkpoint I/O (ioupos_params_save / ioupos_params_load: safetensors files whose names
         are the table's, so PyTorch loads them with load_state_dict(strict=True));
       - tensor-by-tensor comparison of two backends or of a run against a fixture.
     Activations use a table too (names like "stage0.block1.ln2"), so a CPU-vs-CUDA check can
     name the first activation that differs.

   THE BACKEND (ioupos_backend)
     Models never touch tensor memory directly: they allocate, copy, zero and compute through a
     table of function pointers. ioupos_backend_cpu() returns the reference backend whose
     operations are the functions of sections 10-15 (host memory); a CUDA backend
     (ioupos_cuda.cu) fills the same table with device memory and kernels. Every operation has
     the signature of the CPU function it stands for; see that function for its semantics.
     Operations that cannot fail on the CPU return void; a device backend reports a failure by
     the int returned from sync(), which the models call at the end of each pass. */

#define IOUPOS_TENSOR_MAX_DIMS 6
#define IOUPOS_TENSOR_NAME_MAX 112
#define IOUPOS_TENSOR_ALIGN 16 /* floats: 64-byte aligned tensors */

/* flags */
#define IOUPOS_TENSOR_BUFFER 1   /* state that is not trained (running statistics, indices) */
#define IOUPOS_TENSOR_FROZEN 2   /* a parameter that receives no gradient (DINO's weight_g) */
#define IOUPOS_TENSOR_NO_DECAY 4 /* excluded from weight decay (set by ioupos_tensor_add from
                                    ioupos_weight_decay_applies: biases and 1-D tensors) */

/* how ioupos_params_init fills a tensor (PyTorch's default initialisers) */
typedef enum ioupos_init {
  IOUPOS_INIT_ZERO = 0,
  IOUPOS_INIT_ONE,
  IOUPOS_INIT_UNIFORM,      /* U(-scale, scale): nn.Linear / nn.Conv default, scale 1/sqrt(fan_in) */
  IOUPOS_INIT_TRUNC_NORMAL, /* N(0, scale^2) truncated to [-2, 2] (timm's trunc_normal_) */
  IOUPOS_INIT_NONE          /* left as is (I64 buffers filled by the model) */
} ioupos_init;

typedef struct ioupos_tensor_info {
  char name[IOUPOS_TENSOR_NAME_MAX];
  int dtype;                            /* IOUPOS_ST_F32 or IOUPOS_ST_I64 */
  int ndim;
  int64_t shape[IOUPOS_TENSOR_MAX_DIMS];
  size_t numel;
  size_t offset;                        /* elements from the start of its arena */
  int flags;                            /* IOUPOS_TENSOR_* */
  int init;                             /* ioupos_init */
  float init_scale;
} ioupos_tensor_info;

typedef struct ioupos_tensor_table {
  int n;
  size_t cap;
  ioupos_tensor_info *t;
  size_t total;  /* floats of the F32 arena (a multiple of IOUPOS_TENSOR_ALIGN) */
  size_t itotal; /* int64 elements of the I64 array */
} ioupos_tensor_table;

/* Registers a tensor; returns its index (>= 0) or IOUPOS_EINVAL (bad shape or dtype, name too
   long or already present) / IOUPOS_ENOMEM. */
IOUPOS_DEF int ioupos_tensor_add(ioupos_tensor_table *tt, const char *name, int dtype, int flags,
                                 int init, float init_scale, int ndim, const int64_t *shape);
/* Index of the tensor called name, or -1. */
IOUPOS_DEF int ioupos_tensor_find(const ioupos_tensor_table *tt, const char *name);
IOUPOS_DEF void ioupos_tensor_table_free(ioupos_tensor_table *tt);

typedef struct ioupos_backend {
  const char *name;
  /* memory: alloc returns zero-filled memory or NULL */
  void *(*alloc)(size_t bytes);
  void (*release)(void *p);
  void (*upload)(void *dst, const void *host_src, size_t bytes);
  void (*download)(void *host_dst, const void *src, size_t bytes);
  void (*copy)(void *dst, const void *src, size_t bytes);
  void (*zero)(void *dst, size_t bytes);
  int (*sync)(void); /* waits for queued work; 0 or the first error since the last sync */
  /* section 11 */
  int (*linear_forward)(float *, const float *, const float *, const float *, int, int, int);
  int (*linear_backward)(float *, float *, float *, const float *, const float *, const float *,
                         int, int, int);
  void (*layernorm_forward)(float *, float *, float *, const float *, const float *,
                            const float *, int, int, float);
  void (*layernorm_backward)(float *, float *, float *, const float *, const float *,
                             const float *, const float *, const float *, int, int);
  void (*gelu_forward)(float *, const float *, size_t);
  void (*gelu_backward)(float *, const float *, const float *, size_t);
  void (*relu_forward)(float *, const float *, size_t);
  void (*relu_backward)(float *, const float *, const float *, size_t);
  void (*l2norm_forward)(float *, float *, const float *, int, int, float);
  void (*l2norm_backward)(float *, const float *, const float *, const float *, int, int, float);
  void (*avgpool_forward)(float *, const float *, int, int, int);
  void (*avgpool_backward)(float *, const float *, int, int, int);
  void (*batchnorm_forward_train)(float *, float *, float *, float *, float *, const float *,
                                  const float *, const float *, int, int, float, float);
  void (*batchnorm_backward_train)(float *, float *, float *, const float *, const float *,
                                   const float *, const float *, const float *, int, int);
  void (*batchnorm_forward_eval)(float *, const float *, const float *, const float *,
                                 const float *, const float *, int, int, float);
  void (*batchnorm_backward_eval)(float *, float *, float *, const float *, const float *,
                                  const float *, const float *, const float *, int, int, float);
  int (*patch_embed_forward)(float *, float *, const float *, const float *, const float *, int,
                             int, int, const int *, int, int);
  int (*patch_embed_backward)(float *, float *, float *, float *, const float *, const float *,
                              const float *, int, int, int, const int *, int, int);
  int (*patch_merging_forward)(float *, float *, float *, float *, float *, const float *,
                               const float *, const float *, const float *, int, int,
                               const int *, int);
  int (*patch_merging_backward)(float *, float *, float *, float *, float *, const float *,
                                const float *, const float *, const float *, const float *,
                                const float *, const float *, int, int, const int *, int);
  void (*residual_forward)(float *, const float *, const float *, const float *, int, size_t);
  void (*residual_backward)(float *, const float *, const float *, int, size_t);
  int (*mlp_forward)(float *, float *, float *, const float *, const float *, const float *,
                     const float *, const float *, int, int, int);
  int (*mlp_backward)(float *, float *, float *, float *, float *, float *, const float *,
                      const float *, const float *, const float *, const float *, const float *,
                      int, int, int);
  /* section 12 */
  int (*swin_attention_forward)(float *, float *, float *, const float *, const float *,
                                const float *, const float *, const float *, const float *,
                                const int *, const float *, const ioupos_swin_geom *, int, int);
  int (*swin_attention_backward)(float *, float *, float *, float *, float *, float *, float *,
                                 const float *, const float *, const float *, const float *,
                                 const int *, const ioupos_swin_geom *, int, int);
  /* section 14 */
  int (*wnlinear_forward)(float *, float *, float *, const float *, const float *, const float *,
                          int, int, int);
  int (*wnlinear_backward)(float *, float *, float *, float *, const float *, const float *,
                           const float *, const float *, const float *, const float *, int, int,
                           int);
  double (*simsiam_loss_forward)(const float *, const float *, const float *, const float *, int,
                                 int);
  void (*simsiam_loss_backward)(float *, float *, float, const float *, const float *,
                                const float *, const float *, int, int);
  double (*dino_loss_forward)(float *, float *, const float *, const float *, const float *, int,
                              int, int, int, float, float);
  void (*dino_loss_backward)(float *, float, const float *, const float *, int, int, int, int,
                             float);
  void (*dino_center_update)(float *, const float *, int, int, int, float);
  /* section 15 */
  void (*sgd_step)(float *, const float *, float *, size_t, float, float, float, int);
  void (*adamw_step)(float *, const float *, float *, float *, size_t, float, float, float, float,
                     float, int);
  void (*ema_update)(float *, const float *, size_t, double);
  float (*clip_grad_per_param)(float *, size_t, float);
  /* section 19 */
  void (*to_channels_first)(float *, const float *, int, size_t, int);
  void (*to_channels_first_backward)(float *, const float *, int, size_t, int);
  int (*unet_resblock_forward)(float *, float *, float *, const float *, const float *,
                               const float *, const float *, int, int, int, const int *, int, int);
  int (*unet_resblock_backward)(float *, float *, float *, float *, float *, const float *,
                                const float *, const float *, const float *, const float *,
                                const float *, int, int, int, const int *, int, int);
  int (*unetr_upblock_forward)(float *, float *, float *, const float *, const float *,
                               const float *, const float *, const float *, const float *, int,
                               int, int, const int *, int, int);
  int (*unetr_upblock_backward)(float *, float *, float *, float *, float *, float *, float *,
                                const float *, const float *, const float *, const float *,
                                const float *, const float *, const float *, int, int, int,
                                const int *, int, int);
  int (*unet_outblock_forward)(float *, const float *, const float *, const float *, int, int,
                               int, const int *, int);
  int (*unet_outblock_backward)(float *, float *, float *, const float *, const float *,
                                const float *, int, int, int, const int *, int);
} ioupos_backend;

/* The reference backend: host memory, the functions of sections 10-15. */
IOUPOS_DEF const ioupos_backend *ioupos_backend_cpu(void);

/* -- parameters: a table and its arenas -- */
typedef struct ioupos_params {
  ioupos_tensor_table table;
  const ioupos_backend *be;
  float *value;   /* table.total floats on be: the F32 tensors */
  float *grad;    /* table.total floats on be, or NULL (ioupos_params_alloc with_grad 0) */
  int64_t *ivalue; /* table.itotal int64 on the HOST: the I64 buffers */
} ioupos_params;

/* Allocates the arenas (zeroed) once every tensor is registered. */
IOUPOS_DEF int ioupos_params_alloc(ioupos_params *p, const ioupos_backend *be, int with_grad);
IOUPOS_DEF void ioupos_params_free(ioupos_params *p);
/* Pointer to F32 tensor i's values / gradient (on the backend). */
IOUPOS_DEF float *ioupos_params_value(const ioupos_params *p, int i);
IOUPOS_DEF float *ioupos_params_grad(const ioupos_params *p, int i);
/* Fills every F32 tensor by its init rule from a generator split per tensor index, so the
   values do not depend on the order of initialisation. I64 buffers are left alone. */
IOUPOS_DEF int ioupos_params_init(ioupos_params *p, const ioupos_rng *rng);
/* Copies all values (F32 and I64) of src into dst; the tables must be identical. */
IOUPOS_DEF int ioupos_params_copy(ioupos_params *dst, const ioupos_params *src);

/* CHECKPOINTS. Tensors of p whose names start with `ours` are matched with the file's tensors
   named `theirs` + the rest of the name (ours = theirs = "" for all, as is).
   Save: writes them (F32 downloaded from the backend, I64 from the host) with n_meta metadata
   pairs, atomically (section 5). Load, strict in both directions:
     - every selected tensor of p must be in the file, with the same shape (an error names the
       tensor, both shapes and the file); F32, F16, BF16 and F64 files are converted exactly as
       ioupos_st_to_f32; an I64 tensor must be I64;
     - every tensor of the file whose name starts with `theirs` must be one of them (an error
       names the first unexpected tensor and how many there are);
     - relative_position_index buffers must equal the model's (they encode the window size),
       other I64 buffers (num_batches_tracked) are loaded;
     - every float loaded must be finite: a NaN or infinity (after conversion) is an error
       naming the file, the tensor, the element's index and its value. The training states of
       sections 18 and 22 (model, optimiser moments, DINO centre, monitors) are checked alike.
   On failure p is unchanged (values are converted into a host copy first). *n_loaded (may be
   NULL) receives the number of tensors loaded, *n_other (may be NULL) the number of file
   tensors outside `theirs`, which are not looked at. */
IOUPOS_DEF int ioupos_params_save(const ioupos_params *p, const char *path, const char *ours,
                                  const char *theirs, int n_meta, const ioupos_st_pair *meta);
IOUPOS_DEF int ioupos_params_load(ioupos_params *p, const ioupos_st_file *f, const char *ours,
                                  const char *theirs, int *n_loaded, int *n_other);

/* ---- the CUDA backend (ioupos_cuda.cu, built by `make` when nvcc is found) -------------------
   ioupos_backend_cuda(device) returns the same operation table on CUDA device `device`, or
   NULL with the reason in ioupos_failure_reason() (no usable driver: cudaGetDeviceCount's
   error 35, or no device: error 100 or a count of 0; both reasons start with "no usable CUDA
   device"; a device number out of range; out of device memory; cuBLAS could not start). Link
   build/ioupos_cuda.o with -lcudart -lcublas; the function is not in ioupos.h's
   implementation.
     - One device per process: a second call with another device fails (the first one's table
       stays valid). Every operation is queued on one stream of that device, in call order.
     - alloc / upload / download / copy / zero work on device memory (alloc zero-fills; upload
       and download return when the copy is done; copy's regions must not overlap). Every
       pointer an operation takes is device memory from alloc (including the relative position
       index, the attention mask and the drop-path masks) except the host-side descriptions:
       shape[] arrays and the ioupos_swin_geom.
     - Semantics are those of the CPU functions, within float rounding: every matrix product
       is an FP32 cuBLAS GEMM (TF32 off; IOUPOS_CUDA_TF32=1 in the environment allows it);
       sums over rows, columns, windows and the losses' reductions are fixed-order kernels in
       double, never floating-point atomics, so two runs on the same device give the same bits.
     - Errors: operations that return void record the first failure, which the next sync()
       returns (with its reason); operations that return a value (the losses, the clipping
       norm) wait for the device and return NaN after a failure.
     - Operations that the CUDA backend does not have are NULL in its table, never a CPU
       fallback. */
extern const ioupos_backend *ioupos_backend_cuda(int device);
/* The device memory the CUDA backend holds through cudaMalloc, in bytes: now (alloc's blocks
   not yet released, its own workspaces and scalars) and the high-water mark of that since the
   process began (0 before ioupos_backend_cuda succeeds). Not counted: cuBLAS's own workspace,
   the CUDA context, the allocator's rounding (so less than nvidia-smi shows). bench_simsiam and
   bench_finetune --device cuda report the peak. */
extern size_t ioupos_cuda_mem_in_use(void);
extern size_t ioupos_cuda_mem_peak(void);
/* For backends outside this file: sets this thread's ioupos_failure_reason() and returns
   status. */
IOUPOS_DEF int ioupos_failure_set(int status, const char *reason);


/* ============================================================================================
   17. Models: the Swin encoder, the SimSiam and DINO heads
   ============================================================================================ */

/* MONAI's SwinTransformer encoder and the SSL heads, built on the tensor table and the backend.

   THE SWIN ENCODER (monai.networks.nets.swin_unetr.SwinTransformer, MONAI 1.6.1, as SwinUNETR
   builds it: qkv_bias True, mlp_ratio 4, patch_norm False, downsample "merging", use_v2 False,
   dropout 0, normalize=True)
       x0 = PatchEmbed(x)                           conv kernel = stride = patch, zero-padded
       x_{s+1} = PatchMerging(blocks_s(x_s))        s = 0..3 (MONAI's layers1..layers4)
       out_k = LayerNorm(x_k) without affine        k = 0..4, the returned stage outputs
       feature = mean over space of out_4           the SSL backbone feature (research code)
     Block j of a stage (MONAI SwinTransformerBlock), shift = window // 2 when j is odd:
       x = x + DropPath(ShiftedWindowAttention(LayerNorm1(x)))
       x = x + DropPath(MLP(LayerNorm2(x)))
     with section 12's window rules (effective window shrinks to the map where the map is not
     larger than the window, shift only where it is larger, zero padding to window multiples).
     Drop-path rates grow linearly over all blocks from 0 to drop_path_rate
     (torch.linspace(0, rate, sum(depths))); drop-path is drawn only when train is nonzero.
     Tokens are channels-last: stage output k is [B, map_k..., C_k], C_k = embed_dim * 2^k.
     Parameter names are MONAI's state-dict names (patch_embed.proj.weight,
     layers1.0.blocks.0.attn.qkv.weight, layers1.0.downsample.reduction.weight, ...), each
     block also registers MONAI's int64 buffer attn.relative_position_index, so a checkpoint
     loads into MONAI with strict=True. Weight init is PyTorch's default (uniform
     +-1/sqrt(fan_in) for linear and conv weights and biases, ones / zeros for layer norms) and
     MONAI's trunc_normal(0.02) for the relative position bias tables.

   THE HEADS (a sequence of ops; names as the PyTorch modules')
     ioupos_head_simsiam_projection  lightly SimSiamProjectionHead(in, hidden, out):
         layers.0 Linear(no bias) .1 BN .2 ReLU .3 Linear(no bias) .4 BN .5 ReLU
         .6 Linear(no bias) .7 BN(affine=False)
     ioupos_head_simsiam_prediction  lightly SimSiamPredictionHead(in, hidden, out):
         layers.0 Linear(no bias) .1 BN .2 ReLU .3 Linear(bias)
     ioupos_head_dino                the DINO reference DINOHead(in, out, use_bn False,
         norm_last_layer, nlayers 3, hidden, bottleneck): mlp.0 Linear .1 GELU .2 Linear .3 GELU
         .4 Linear, L2 normalisation, last_layer weight-normalised Linear(no bias) with
         weight_g (frozen and filled with 1 when norm_last_layer) and weight_v; init as DINO's
         _init_weights (trunc_normal(0.02) weights, zero biases) for the MLP and PyTorch's
         default for weight_v.
     Batch norm (momentum 0.1, eps 1e-5) uses batch statistics and updates the running ones
     and num_batches_tracked in train mode, the running statistics in eval mode.

   USE
     ioupos_params p = {0}; ioupos_swin_encoder enc; ioupos_head proj;
     ioupos_swin_encoder_init(&enc, &cfg, &p.table, "backbone.");   register tensors
     ioupos_head_simsiam_projection(&proj, &p.table, "projection_head.", 768, 2048, 2048);
     ioupos_params_alloc(&p, ioupos_backend_cpu(), 1); ioupos_params_init(&p, &rng);
     ioupos_swin_encoder_plan(&enc, &p, batch, shape);             activations for this shape
     ioupos_swin_encoder_forward(&enc, &p, x, train, &rng);
     ... ioupos_swin_encoder_backward(&enc, &p, NULL, dfeature, NULL);  gradients ACCUMULATE
   Inputs and outputs of forward / backward are backend memory. */

#define IOUPOS_SWIN_STAGES 4
#define IOUPOS_SWIN_MAX_DEPTH 16 /* blocks per stage */

typedef struct ioupos_swin_config {
  int spatial_dims;          /* 2 or 3 */
  int in_chans;              /* input channels (1 for CT) */
  int embed_dim;             /* C, the research runs' --embedding_size (48) */
  int patch_size;            /* 2 */
  int window[3];             /* configured window per axis (7) */
  int depths[4];             /* blocks per stage (2, 2, 2, 2) */
  int num_heads[4];          /* (3, 6, 12, 24) */
  float drop_path_rate;      /* 0.1 */
} ioupos_swin_config;

/* The research runs' encoder: C 48, patch 2, window 7, depths 2-2-2-2, heads 3-6-12-24,
   drop-path 0.1, one input channel. */
IOUPOS_DEF void ioupos_swin_config_default(ioupos_swin_config *c, int spatial_dims);
/* 0, or IOUPOS_EINVAL with a reason naming the field (heads must divide every stage's width). */
IOUPOS_DEF int ioupos_swin_config_check(const ioupos_swin_config *c);
/* The feature width: 16 * embed_dim. */
IOUPOS_DEF int ioupos_swin_feature_dim(const ioupos_swin_config *c);

typedef struct ioupos_swin_block {
  int stage, index, shifted;
  float drop_prob;
  int norm1_w, norm1_b, table, rel_index, qkv_w, qkv_b, proj_w, proj_b, norm2_w, norm2_b;
  int fc1_w, fc1_b, fc2_w, fc2_b; /* parameter indices in the table */
  size_t a_x, a_ln1_mean, a_ln1_rstd, a_attn, a_xmid, a_ln2, a_ln2_mean, a_ln2_rstd, a_h_pre,
      a_h_act, a_dp1, a_dp2, a_out_x; /* activation offsets (floats); a_h_act is 0: GELU(h_pre)
                                         is recomputed in the backward, not kept */
} ioupos_swin_block;

typedef struct ioupos_swin_encoder {
  ioupos_swin_config cfg;
  int n_blocks;
  ioupos_swin_block blocks[IOUPOS_SWIN_STAGES * IOUPOS_SWIN_MAX_DEPTH];
  int patch_w, patch_b;
  int merge_norm_w[4], merge_norm_b[4], merge_red[4];
  /* the plan: set by ioupos_swin_encoder_plan for one batch size and input shape */
  int batch, in_shape[3];
  int map[5][3];               /* token map of x_k, k = 0..4 */
  size_t ntok[5];              /* batch * prod(map[k]) */
  ioupos_swin_geom geom[4][2]; /* per stage: [0] unshifted blocks, [1] shifted blocks */
  ioupos_tensor_table acts;    /* named activations (offsets into act) */
  const ioupos_backend *be;
  float *act;                  /* the activation arena */
  float *scratch;              /* forward temporaries and backward gradients */
  int *index;                  /* relative position index per stage (backend memory) */
  size_t index_off[4], mask_off[4], a_col, a_x[5], a_out[5], a_out_mean[5], a_out_rstd[5],
      a_feature, a_merge[4][4];
  size_t scratch_n;
  int dp_on; /* the last forward drew drop-path masks */
} ioupos_swin_encoder;

/* Registers the encoder's tensors in tt with names prefix + MONAI's name (prefix may be "" or
   e.g. "backbone.", "swinViT."). Checks the config. */
IOUPOS_DEF int ioupos_swin_encoder_init(ioupos_swin_encoder *e, const ioupos_swin_config *cfg,
                                        ioupos_tensor_table *tt, const char *prefix);
/* Fills the relative_position_index buffers (call after ioupos_params_alloc; ioupos_params_init
   leaves them alone) and sizes the activations for batch images of shape {H, W} or {D, H, W}
   (reallocating only when batch or shape change). */
IOUPOS_DEF int ioupos_swin_encoder_plan(ioupos_swin_encoder *e, ioupos_params *p, int batch,
                                        const int *shape);
/* Fills the constant buffers (MONAI's relative_position_index) into p; plan does it too, call
   it before loading a checkpoint into a model that has not been planned yet (the load checks
   these buffers against the file's). */
IOUPOS_DEF int ioupos_swin_encoder_buffers(const ioupos_swin_encoder *e, ioupos_params *p);
/* dst: the same encoder (parameter indices) with its own plan, e.g. a second input shape on the
   same parameters (DINO's local views). Free it with ioupos_swin_encoder_free. */
IOUPOS_DEF void ioupos_swin_encoder_clone(ioupos_swin_encoder *dst, const ioupos_swin_encoder *src);
/* x [batch, in_chans, shape...] channels-first on the backend. train: draw drop-path from rng
   (rng may be NULL when train is 0 or the rate is 0). */
IOUPOS_DEF int ioupos_swin_encoder_forward(ioupos_swin_encoder *e, const ioupos_params *p,
                                           const float *x, int train, ioupos_rng *rng);
/* Stage output k (0..4): [batch, map[k]..., embed_dim << k], normalised; and the feature
   [batch, 16 * embed_dim]. Valid until the next forward. */
IOUPOS_DEF const float *ioupos_swin_encoder_output(const ioupos_swin_encoder *e, int k);
IOUPOS_DEF const float *ioupos_swin_encoder_feature(const ioupos_swin_encoder *e);
/* Backward of the last forward: dout[k] the gradient of stage output k (dout or any entry may
   be NULL), dfeature the gradient of the feature (may be NULL). ACCUMULATES into p->grad and
   into dx [batch, in_chans, shape...] when dx is not NULL. */
IOUPOS_DEF int ioupos_swin_encoder_backward(ioupos_swin_encoder *e, ioupos_params *p,
                                            const float *const *dout, const float *dfeature,
                                            float *dx);
IOUPOS_DEF void ioupos_swin_encoder_free(ioupos_swin_encoder *e);
/* The prefix under which a file holds a Swin encoder's tensors: the first of "", "swinViT.",
   "backbone.", "module.backbone.", "student.backbone." for which
   <prefix>patch_embed.proj.weight exists; NULL if none. */
IOUPOS_DEF const char *ioupos_swin_find_prefix(const ioupos_st_file *f);

/* -- heads -- */
#define IOUPOS_HEAD_MAX_OPS 12
#define IOUPOS_HEAD_MAX_VIEWS 16
typedef enum ioupos_head_kind {
  IOUPOS_HEAD_LINEAR = 0, IOUPOS_HEAD_BATCHNORM, IOUPOS_HEAD_RELU, IOUPOS_HEAD_GELU,
  IOUPOS_HEAD_L2NORM, IOUPOS_HEAD_WNLINEAR
} ioupos_head_kind;

typedef struct ioupos_head_op {
  int kind, in, out;
  int w, b, rm, rv, count; /* parameter / buffer indices, -1 when absent */
  size_t a_out, a_s1, a_s2; /* activation offsets within one view's activations */
} ioupos_head_op;

typedef struct ioupos_head {
  int n_ops, in_dim, out_dim;
  ioupos_head_op ops[IOUPOS_HEAD_MAX_OPS];
  /* the plan */
  int rows, views;
  int trained[IOUPOS_HEAD_MAX_VIEWS]; /* batch norm mode of each view's last forward */
  size_t view_floats, max_width;
  const ioupos_backend *be;
  float *act, *scratch;
  size_t scratch_n;
} ioupos_head;

IOUPOS_DEF int ioupos_head_simsiam_projection(ioupos_head *h, ioupos_tensor_table *tt,
                                              const char *prefix, int in, int hidden, int out);
IOUPOS_DEF int ioupos_head_simsiam_prediction(ioupos_head *h, ioupos_tensor_table *tt,
                                              const char *prefix, int in, int hidden, int out);
IOUPOS_DEF int ioupos_head_dino(ioupos_head *h, ioupos_tensor_table *tt, const char *prefix,
                                int in, int hidden, int bottleneck, int out,
                                int norm_last_layer);
/* Activations for `views` forward passes of `rows` rows each, kept until backward. */
IOUPOS_DEF int ioupos_head_plan(ioupos_head *h, const ioupos_params *p, int rows, int views);
/* inp [rows, in_dim] -> ioupos_head_output(h, view) [rows, out_dim]. train: batch statistics
   (and running-statistics updates) in batch norm. */
IOUPOS_DEF int ioupos_head_forward(ioupos_head *h, ioupos_params *p, int view, const float *inp,
                                   int train);
IOUPOS_DEF const float *ioupos_head_output(const ioupos_head *h, int view);
/* dout [rows, out_dim] of view `view` -> ACCUMULATES into p->grad and dinp [rows, in_dim]
   (may be NULL). inp is the forward's input. */
IOUPOS_DEF int ioupos_head_backward(ioupos_head *h, ioupos_params *p, int view, const float *dout,
                                    const float *inp, float *dinp);
IOUPOS_DEF void ioupos_head_free(ioupos_head *h);


/* ============================================================================================
   18. Pretraining: SimSiam and DINO, run directories, exact resume
   ============================================================================================ */

/* Self-supervised pretraining of the Swin encoder on IoU-constrained crop pairs.

   THE MODELS
     ioupos_simsiam   the research code's SimSiam: backbone (section 17) + lightly
                      SimSiamProjectionHead(16C, proj_hidden, proj_out) +
                      SimSiamPredictionHead(proj_out, pred_hidden, proj_out); loss
                      -(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2; each view through the heads on
                      its own (batch-norm statistics per view, as the research code's two calls).
                      Names: backbone.*, projection_head.layers.*, prediction_head.layers.*.
     ioupos_dino      the DINO reference recipe: student backbone + DINOHead(16C, hidden,
                      bottleneck, out_dim), teacher = EMA copy (no drop-path, no gradient),
                      DINO loss with centring over 2 global views [x1, x2] for both networks
                      (the reference's order; the research code fed the teacher [x2, x1], which
                      with the loss's "skip the same index" rule compares each view with
                      itself) and n_local local views for the student only.
   THE STEP (both methods)
     zero_grad; accumulate(batch) x accum_iters (each with loss scale 1 / accum_iters, as the
     research code's loss / accum_iters); step(schedule values). All randomness (drop-path) is
     drawn from generators the caller derives from (seed, micro-step), so a resumed run
     reproduces an uninterrupted one bit for bit.
   OPTIMISERS (section 15, per parameter tensor, in table order)
     SimSiam: SGD momentum 0.9 (torch semantics), weight decay wd except on biases and 1-D
     tensors, lr for backbone and projection head, lr_pred for the prediction head (the research
     code holds it at --base_lr).
     DINO: per-tensor gradient clipping (clip_grad, 0 = off), last layer (names containing
     "last_layer") frozen while epoch < freeze_last_layer (no update, no step count), AdamW with
     weight decay wd on the regularised tensors (not biases / 1-D) and 0 on the others; then
     the teacher EMA with the momentum schedule.
   MONITORS
     loss; p_std / z_std: the mean over channels of the per-channel standard deviation (unbiased,
     torch.std) of the l2-normalised predictor output p (view 1: lightly's and the research
     code's collapse monitor) and projection z (view 1: the SimSiam paper's); for a healthy
     run z_std ~ 1/sqrt(proj_out). ioupos_collapse_level(avg, dim) = max(0, 1 - sqrt(dim) avg)
     is the research code's coefficient (it smooths p_std with an EMA of weight 0.9 first). */

typedef struct ioupos_ssl_stats {
  double loss;  /* this micro-batch's loss (not scaled) */
  double p_std; /* SimSiam: std of normalised p (view 1); DINO: of the student output */
  double z_std; /* SimSiam: std of normalised z (view 1); DINO: of the teacher output */
} ioupos_ssl_stats;

IOUPOS_DEF double ioupos_collapse_level(double avg_std, int dim);

typedef struct ioupos_simsiam_config {
  ioupos_swin_config enc;
  int proj_hidden, proj_out, pred_hidden; /* research: 2048, 2048, 512 */
} ioupos_simsiam_config;
IOUPOS_DEF void ioupos_simsiam_config_default(ioupos_simsiam_config *c, int spatial_dims);

typedef struct ioupos_simsiam {
  ioupos_simsiam_config cfg;
  ioupos_params p;
  ioupos_swin_encoder enc;
  ioupos_head proj, pred;
  float *momentum;   /* SGD momentum buffers, the layout of p (backend memory) */
  int64_t steps;     /* optimiser steps taken */
  /* buffers for one micro-batch (backend memory), sized by the last accumulate */
  int batch, npix;
  float *x, *dp, *dz, *df;
} ioupos_simsiam;

/* Builds the model, initialises it from seed (PyTorch's default initialisers, section 16). */
IOUPOS_DEF int ioupos_simsiam_init(ioupos_simsiam *m, const ioupos_simsiam_config *cfg,
                                   const ioupos_backend *be, uint64_t seed);
IOUPOS_DEF void ioupos_simsiam_free(ioupos_simsiam *m);
IOUPOS_DEF void ioupos_simsiam_zero_grad(ioupos_simsiam *m);
/* One micro-batch: view1, view2 [B, in_chans, shape...] on the HOST; forward in train mode,
   backward of scale * loss, gradients ACCUMULATED. rng draws drop-path (may be NULL when the
   rate is 0). B >= 2 (batch norm). */
IOUPOS_DEF int ioupos_simsiam_accumulate(ioupos_simsiam *m, const float *view1, const float *view2,
                                         int B, const int *shape, float scale, ioupos_rng *rng,
                                         ioupos_ssl_stats *st);
IOUPOS_DEF int ioupos_simsiam_step(ioupos_simsiam *m, double lr, double lr_pred, double momentum,
                                   double wd);

typedef struct ioupos_dino_config {
  ioupos_swin_config enc;
  int hidden, bottleneck, out_dim; /* reference 2048, 256, 65536; research 2048, 256, 1024 */
  int norm_last_layer;             /* 1: weight_g frozen at 1 */
  float student_temp;              /* 0.1 */
  float center_momentum;           /* 0.9 */
} ioupos_dino_config;
IOUPOS_DEF void ioupos_dino_config_default(ioupos_dino_config *c, int spatial_dims);

typedef struct ioupos_dino {
  ioupos_dino_config cfg;
  ioupos_params s, t;              /* student and teacher, the same names */
  ioupos_swin_encoder enc_s, enc_sl, enc_t; /* student (global views), student (local views,
                                               same parameters), teacher */
  ioupos_head head_s, head_t;
  float *m1, *m2;                  /* AdamW moments, the layout of s (backend memory) */
  int64_t *adam_steps;             /* per tensor of s: AdamW's step count (host) */
  float *center;                   /* [out_dim] (backend memory) */
  int batch, n_local, npix, nlpix;
  float *x, *xl, *feat, *dfeat, *tprob, *slogp, *dout;
} ioupos_dino;

IOUPOS_DEF int ioupos_dino_init(ioupos_dino *m, const ioupos_dino_config *cfg,
                                const ioupos_backend *be, uint64_t seed);
IOUPOS_DEF void ioupos_dino_free(ioupos_dino *m);
IOUPOS_DEF void ioupos_dino_zero_grad(ioupos_dino *m);
/* One micro-batch: global views g1, g2 [B, in_chans, shape...] and n_local local views
   `local` [n_local][B, in_chans, lshape...] (NULL when n_local is 0), on the HOST. Teacher on
   [g1; g2] (eval), student on [g1; g2] and on the local views (train), DINO loss with the
   current centre and teacher_temp, backward of scale * loss (ACCUMULATED), then the centre
   update with this micro-batch's teacher outputs. */
IOUPOS_DEF int ioupos_dino_accumulate(ioupos_dino *m, const float *g1, const float *g2,
                                      const float *local, int n_local, int B, const int *shape,
                                      const int *lshape, float teacher_temp, float scale,
                                      ioupos_rng *rng, ioupos_ssl_stats *st);
/* Clip, AdamW (lr, wd), freeze the last layer while epoch < freeze_last_layer, then the teacher
   EMA with momentum teacher_m. */
IOUPOS_DEF int ioupos_dino_step(ioupos_dino *m, double lr, double wd, int epoch,
                                int freeze_last_layer, float clip_grad, double teacher_m);

/* -- the run: ioupos-simsiam and ioupos-dino
   ioupos_pretrain_run trains on a folder of PNG slices (ioupos-prep's output) with the loader
   of section 9 (one IoU pair per slice per epoch, the research augmentations), and keeps a run
   directory <chkpt_dir>/<run_name>/ with
     flags.json        the resolved flags (opts->flags_json), the seed and the git commit
     metrics.jsonl     one JSON object per logged step and per epoch (epoch, step, loss, lr,
                       monitors, images/s)
     checkpoint.safetensors        the model after the last finished epoch, MONAI names
                                   (SimSiam: backbone.*, heads; DINO: backbone.* and head.* are
                                   the TEACHER, DINO's evaluation network, student.* the student)
     checkpoint_epoch<E>.safetensors   the same, kept for every epoch
     state.safetensors the training state after the last finished epoch or interruption point:
                       model, optimiser state, step counters, DINO centre, the loader position
                       and the flags; resume (opts->resume) continues from it so that the final
                       weights equal an uninterrupted run with the same seed.
   Resume refuses (EINVAL, before anything is written) a state made with other settings: the
   stored counters (method, seed, batch, accumulation, epochs, crop, local crops, data set size)
   and, key by key, the flat JSON object opts->flags_json against the one the state recorded
   (its "flags" metadata). Only keys that describe one invocation or where its files go may
   differ: num_workers, threads, log_every, resume, max_steps, chkpt_dir, run_name and
   git_commit (a note is logged when the build differs); the error names every other key that
   differs with both values (n_epochs too: it changes the cosine schedules).
   Stopping early: opts->max_steps, or *opts->stop becoming nonzero (a signal handler's flag),
   ends the run at the next optimiser-step boundary: the state is saved as at an interruption
   (and the epoch's checkpoints first when that step ended an epoch), the log says that
   --resume continues, and the run returns 0.
   Checks before anything is written: square crops (--crop_size, and --local_crop_size with
   local crops: the augmentations' rot90 needs H = W), DINO's --warmup_epochs below --n_epochs,
   and the data (ioupos_dataset_check with the run's loader settings: every PNG's structure,
   every image size against the crop and the IoU intervals; all bad files named at once, the
   full list on opts->log when the reason cannot hold it).
   DINO multi-crop: n_local > 0 local views per pair of local_crop[] (IoU with the first global
   view in [local_min_iou, local_max_iou], section 9's loader), through the student only.
   Every file is written atomically (a crash leaves the previous version). A non-finite loss
   stops the run (IOUPOS_ERANGE) naming epoch and step, without writing a checkpoint of the
   broken weights. opts->log receives the console lines (the library never prints).
   Epochs are counted from 1 wherever they are shown: the log's "epoch 1 step 3/8" and "epoch 1
   done", metrics.jsonl's "epoch": 1 and checkpoint_epoch1.safetensors are the first epoch.
   The run holds its directory (ioupos_dir_hold, section 5) from before its first write to its
   end: a second run or a resume of the same directory is refused (IOUPOS_EBUSY, naming the
   process) while it lives, and the kernel drops the hold when the process dies, kill -9
   included. Taking the directory removes the stale "*.tmp.<pid>" files a killed run left. A run
   that fails before it saved its first state leaves nothing behind (the directory goes too when
   the run created it); one that fails later keeps its files, and its state resumes it. */
enum { IOUPOS_SSL_SIMSIAM = 0, IOUPOS_SSL_DINO = 1 };

typedef struct ioupos_pretrain_opts {
  int method;                      /* IOUPOS_SSL_SIMSIAM / IOUPOS_SSL_DINO */
  ioupos_swin_config enc;          /* --embedding_size, --drop_path_rate, --spatial_dims, ... */
  const char *data_dir;            /* folder of PNG slices */
  const char *chkpt_dir, *run_name;
  int crop[2];                     /* --crop_size (per axis allowed); research 96 x 96 */
  double min_iou, max_iou;         /* --min_iou / --max_iou */
  int pair_mode;                   /* --pair_mode anchored|joint */
  int batch_size, n_epochs, accum_iters, num_workers;
  double base_lr, end_lr, warmup_epochs, wd;
  uint64_t seed;
  int resume;
  int log_every;                   /* console + metrics line every this many optimiser steps */
  long max_steps;                  /* stop (as if interrupted) after this many optimiser steps
                                      in this process, saving the state; 0 = no limit (tests) */
  volatile int *stop;              /* NULL, or a flag (e.g. set by a SIGINT handler): once it is
                                      nonzero the run stops at the next step boundary, saving
                                      the state, and returns 0 */
  const ioupos_backend *backend;   /* where the model runs: NULL = ioupos_backend_cpu(), or
                                      ioupos_backend_cuda(device); the log names it. State and
                                      checkpoints are the same files whatever the backend, so a
                                      run may resume on another one */
  /* SimSiam */
  int proj_hidden, proj_out, pred_hidden;
  /* DINO */
  int hidden, bottleneck, out_dim, norm_last_layer, freeze_last_layer;
  int n_local, local_crop[2];
  double local_min_iou, local_max_iou;
  double momentum_teacher, teacher_temp, warmup_teacher_temp, student_temp, center_momentum;
  double warmup_teacher_temp_epochs, wd_end, clip_grad, min_lr;
  /* provenance, written into the run directory */
  const char *flags_json;          /* JSON object of the resolved flags (may be NULL) */
  const char *git_commit;          /* may be NULL */
  void (*log)(void *ctx, const char *line);
  void *log_ctx;
} ioupos_pretrain_opts;

/* Fills opts with the published runs' values for method (SimSiam: C 48, batch 128, 100 epochs,
   lr 0.025 -> 1e-6, wd 1e-5, [0.3, 0.6], crop 96; DINO: the research defaults with C 48). */
IOUPOS_DEF void ioupos_pretrain_opts_default(ioupos_pretrain_opts *o, int method);
/* Runs (or resumes) a pretraining; 0 when all epochs are done or it stopped early (max_steps,
   *stop) with the state saved. */
IOUPOS_DEF int ioupos_pretrain_run(const ioupos_pretrain_opts *o);


/* ============================================================================================
   19. Decoder layers (SwinUNETR): convolutions, instance norm, residual and up blocks
   ============================================================================================ */

/* The SwinUNETR decoder's layers (MONAI 1.6.1 monai.networks.nets.SwinUNETR with
   norm_name="instance", res_block=True), forward beside backward, for ioupos.h section 11.

   Conventions of section 11.
*/
#ifdef __cplusplus
extern "C" {
#endif

/* -- convolutional decoder layers (SwinUNETR's UnetrBasicBlock / UnetrUpBlock / UnetOutBlock)

   Same conventions as the rest of section 11 (outputs first, `_backward` ACCUMULATES into every
   gradient it is given, NULL gradient pointers allowed, deterministic for any thread count), with
   one difference: these tensors are CHANNELS-FIRST, [B][C][S...] as MONAI's CNN blocks take them,
   S = {H, W} (dims 2) or {D, H, W} (dims 3), n = prod(S) positions per channel plane. The Swin
   encoder's token maps are channels-last [B][S...][C]: ioupos_to_channels_first converts.

   What MONAI 1.6.1 builds for SwinUNETR (checked on a built model and its state_dict):
     - every Conv of UnetResBlock (conv1, conv2 k x k, conv3 1x1) has NO bias (get_conv_layer's
       default bias=False); "same" padding k/2, stride 1;
     - the up-sampling ConvTranspose (kernel 2, stride 2, padding 0, output_padding 0) has NO bias;
       its weight is [Cin][Cout][2][2]([2]) (torch's transposed layout);
     - UnetOutBlock's 1x1 Conv HAS a bias;
     - norm "instance" = torch.nn.InstanceNorm2d/3d(C): affine=False, track_running_stats=False
       (batch statistics in train and eval), eps 1e-5, biased variance over each (b, c) plane;
     - act = LeakyReLU(negative_slope=0.01) (UnetResBlock's default act_name, in place).
   The constants, for the composite blocks: */
#define IOUPOS_UNET_NORM_EPS 1e-5f
#define IOUPOS_UNET_LRELU_SLOPE 0.01f

/* -- layout transposes: channels-last tokens <-> channels-first maps -- */
/* out[B][C][S] = inp[B][S][C]   (S = positions per sample, any spatial rank) */
IOUPOS_DEF void ioupos_to_channels_first(float *out, const float *inp, int B, size_t S, int C);
/* dinp[B][S][C] += dout[B][C][S] transposed (the inverse transpose). ACCUMULATES into dinp. */
IOUPOS_DEF void ioupos_to_channels_first_backward(float *dinp, const float *dout, int B, size_t S,
                                                  int C);
/* out[B][S][C] = inp[B][C][S] */
IOUPOS_DEF void ioupos_to_channels_last(float *out, const float *inp, int B, size_t S, int C);
/* dinp[B][C][S] += dout[B][S][C] transposed. ACCUMULATES into dinp. */
IOUPOS_DEF void ioupos_to_channels_last_backward(float *dinp, const float *dout, int B, size_t S,
                                                 int C);

/* -- convolution, stride 1, "same" padding: torch.nn.Conv2d/3d(Cin, Cout, k, 1, k/2) -- */
/* inp [B][Cin][S], out [B][Cout][S] (same S), weight [Cout][Cin][k][k]([k]) as torch, bias [Cout]
   (may be NULL). k odd >= 1 (MONAI uses 3, and 1 for conv3 / the out block).
   im2col + GEMM: per sample, out[Cout][n] = weight[Cout][Cin k^dims] . col[Cin k^dims][n], the
   columns built for blocks of at most 4096 positions at a time into scratch, which needs
   ioupos_conv_scratch_size floats (Cin k^dims min(n, 4096); 0 when k == 1: the input itself is
   the GEMM operand and scratch may be NULL; 0 also for invalid arguments). Nothing is saved: backward rebuilds the columns
   from inp. Returns 0, IOUPOS_EINVAL (bad sizes, k even, NULL operand) or IOUPOS_ENOMEM (GEMM).
   out must not overlap inp. */
IOUPOS_DEF size_t ioupos_conv_scratch_size(int dims, int Cin, const int shape[], int k);
IOUPOS_DEF int ioupos_conv_forward(float *out, float *scratch, const float *inp,
                                   const float *weight, const float *bias, int dims, int B,
                                   int Cin, const int shape[], int k, int Cout);
/* dweight [Cout][Cin k^dims] += dout . col^T; dbias [Cout] += sum over b and positions of dout;
   dinp [B][Cin][S] += col2im(weight^T . dout). scratch: ioupos_conv_scratch_size floats.
   ACCUMULATES into dinp, dweight, dbias (each may be NULL). */
IOUPOS_DEF int ioupos_conv_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                                    const float *dout, const float *inp, const float *weight,
                                    int dims, int B, int Cin, const int shape[], int k, int Cout);

/* -- transposed convolution, kernel 2, stride 2: torch.nn.ConvTranspose2d/3d(Cin, Cout, 2, 2) -- */
/* inp [B][Cin][S], out [B][Cout][2 S] (every axis doubled; MONAI: padding 0, output_padding 0),
   weight [Cin][Cout][2][2]([2]) as torch (transposed layout), bias [Cout] (may be NULL; MONAI's
   UnetrUpBlock has none). Each output element receives exactly one kernel tap:
     out[b][co][2z+a][2y+e][2x+f] = bias[co] + sum_ci inp[b][ci][z][y][x] weight[ci][co][a][e][f].
   GEMM of weight^T [Cout 2^dims][Cin] . inp [Cin][n] per sample, blocks of at most 4096 input
   positions, then a scatter; scratch: ioupos_conv_transpose_scratch_size floats
   (Cout 2^dims min(n, 4096)). Returns 0, IOUPOS_EINVAL or IOUPOS_ENOMEM. */
IOUPOS_DEF size_t ioupos_conv_transpose_scratch_size(int dims, const int shape[], int Cout);
IOUPOS_DEF int ioupos_conv_transpose_forward(float *out, float *scratch, const float *inp,
                                             const float *weight, const float *bias, int dims,
                                             int B, int Cin, const int shape[], int Cout);
/* dinp [B][Cin][S] += weight . gather(dout); dweight [Cin][Cout 2^dims] += inp . gather(dout)^T;
   dbias [Cout] += sum of dout. shape is the INPUT's. scratch as for forward.
   ACCUMULATES into dinp, dweight, dbias (each may be NULL). */
IOUPOS_DEF int ioupos_conv_transpose_backward(float *dinp, float *dweight, float *dbias,
                                              float *scratch, const float *dout,
                                              const float *inp, const float *weight, int dims,
                                              int B, int Cin, const int shape[], int Cout);

/* -- instance norm: torch.nn.InstanceNorm2d/3d(C, eps, affine) -- */
/* out[B][C][n] = (inp - mean) * rstd (* weight[c] + bias[c]) per (b, c) plane of n positions,
   biased variance, statistics in double; saves mean[B C], rstd[B C] = 1/sqrt(var + eps).
   weight / bias may be NULL (MONAI's "instance": affine=False, eps 1e-5). out may equal inp in
   forward (but backward needs the input). */
IOUPOS_DEF void ioupos_instnorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                        const float *weight, const float *bias, int B, int C,
                                        size_t n, float eps);
/* ACCUMULATES into dinp[B][C][n], dweight[C], dbias[C] (each may be NULL). */
IOUPOS_DEF void ioupos_instnorm_backward(float *dinp, float *dweight, float *dbias,
                                         const float *dout, const float *inp,
                                         const float *weight, const float *mean,
                                         const float *rstd, int B, int C, size_t n);

/* -- leaky ReLU: torch.nn.LeakyReLU(slope) -- */
/* out[n] = x > 0 ? x : slope x; out may equal inp. */
IOUPOS_DEF void ioupos_leaky_relu_forward(float *out, const float *inp, size_t n, float slope);
/* dinp[n] += x > 0 ? dout : slope dout (slope at 0, as torch). For slope > 0 the forward output
   has the sign of its input, so x may be the forward's input OR its output (an in-place forward,
   as MONAI's inplace=True; torch then also tests the output). ACCUMULATES into dinp. */
IOUPOS_DEF void ioupos_leaky_relu_backward(float *dinp, const float *x, const float *dout,
                                           size_t n, float slope);

/* -- channel concatenation: torch.cat((a, b), dim=1) -- */
/* out[B][C1 + C2][n] = a[B][C1][n] then b[B][C2][n] per sample */
IOUPOS_DEF void ioupos_cat_channels_forward(float *out, const float *a, const float *b, int B,
                                            int C1, int C2, size_t n);
/* da[B][C1][n] += dout's first C1 channels, db[B][C2][n] += the others. ACCUMULATES into da, db
   (each may be NULL). */
IOUPOS_DEF void ioupos_cat_channels_backward(float *da, float *db, const float *dout, int B,
                                             int C1, int C2, size_t n);

/* -- MONAI UnetResBlock (norm "instance", LeakyReLU 0.01, stride 1) -- */
/* inp [B][Cin][S] -> out [B][Cout][S]:
     h1 = conv1(inp)   (w1 [Cout][Cin][k^dims], no bias)     a1 = lrelu(norm1(h1))
     h2 = conv2(a1)    (w2 [Cout][Cout][k^dims], no bias)    n2 = norm2(h2)
     r  = norm3(conv3(inp)) (w3 [Cout][Cin][1^dims], no bias) when Cin != Cout, else r = inp
     s  = n2 + r,  out = lrelu(s)
   w3 must be non-NULL exactly when Cin != Cout (MONAI builds conv3/norm3 only then; SwinUNETR's
   encoder1 and every decoder block have it, encoder2-4 and encoder10 do not).
   acts (saved for backward; ioupos_unet_resblock_acts_size floats), N = B Cout n, P = B Cout:
     [h1 N | a1 N | h2 N | s N | h3 N (conv3 only) | mean1 rstd1 mean2 rstd2 (mean3 rstd3) P each]
   scratch: ioupos_unet_resblock_scratch_size floats (2 N + the larger conv scratch), for forward
   and backward. Sizes are 0 for invalid arguments. Returns 0, IOUPOS_EINVAL or IOUPOS_ENOMEM. */
IOUPOS_DEF size_t ioupos_unet_resblock_acts_size(int dims, int B, int Cin, const int shape[],
                                                 int k, int Cout);
IOUPOS_DEF size_t ioupos_unet_resblock_scratch_size(int dims, int B, int Cin, const int shape[],
                                                    int k, int Cout);
IOUPOS_DEF int ioupos_unet_resblock_forward(float *out, float *acts, float *scratch,
                                            const float *inp, const float *w1, const float *w2,
                                            const float *w3, int dims, int B, int Cin,
                                            const int shape[], int k, int Cout);
/* ACCUMULATES into dinp [B][Cin][S], dw1, dw2, dw3 (each may be NULL; dw3 is ignored when
   Cin == Cout). acts and inp as the forward left them. */
IOUPOS_DEF int ioupos_unet_resblock_backward(float *dinp, float *dw1, float *dw2, float *dw3,
                                             float *scratch, const float *dout,
                                             const float *acts, const float *inp,
                                             const float *w1, const float *w2, const float *w3,
                                             int dims, int B, int Cin, const int shape[], int k,
                                             int Cout);

/* -- MONAI UnetrUpBlock (res_block=True, upsample kernel 2) -- */
/* inp [B][Cin][S] (shape = S), skip [B][Cout][2S], out [B][Cout][2S]:
     up  = conv_transpose(inp)   (wt [Cin][Cout][2^dims], no bias)
     cat = torch.cat((up, skip), dim=1)            [B][2 Cout][2S]
     out = UnetResBlock(2 Cout -> Cout, kernel k)(cat)   (w1 [Cout][2 Cout][k^dims],
           w2 [Cout][Cout][k^dims], w3 [Cout][2 Cout][1^dims], all without bias)
   acts: ioupos_unetr_upblock_acts_size floats = [cat | the resblock's acts];
   scratch: ioupos_unetr_upblock_scratch_size floats (forward and backward). */
IOUPOS_DEF size_t ioupos_unetr_upblock_acts_size(int dims, int B, const int shape[], int k,
                                                 int Cout);
IOUPOS_DEF size_t ioupos_unetr_upblock_scratch_size(int dims, int B, int Cin, const int shape[],
                                                    int k, int Cout);
IOUPOS_DEF int ioupos_unetr_upblock_forward(float *out, float *acts, float *scratch,
                                            const float *inp, const float *skip, const float *wt,
                                            const float *w1, const float *w2, const float *w3,
                                            int dims, int B, int Cin, const int shape[], int k,
                                            int Cout);
/* ACCUMULATES into dinp [B][Cin][S], dskip [B][Cout][2S], dwt, dw1, dw2, dw3 (each may be NULL). */
IOUPOS_DEF int ioupos_unetr_upblock_backward(float *dinp, float *dskip, float *dwt, float *dw1,
                                             float *dw2, float *dw3, float *scratch,
                                             const float *dout, const float *acts,
                                             const float *inp, const float *wt, const float *w1,
                                             const float *w2, const float *w3, int dims, int B,
                                             int Cin, const int shape[], int k, int Cout);

/* -- MONAI UnetOutBlock: 1x1 conv with bias -- */
/* out [B][Cout][S] = weight [Cout][Cin] . inp [B][Cin][S] + bias [Cout] (ioupos_conv_forward with
   k = 1; no scratch, nothing saved). */
IOUPOS_DEF int ioupos_unet_outblock_forward(float *out, const float *inp, const float *weight,
                                            const float *bias, int dims, int B, int Cin,
                                            const int shape[], int Cout);
/* ACCUMULATES into dinp, dweight, dbias (each may be NULL). */
IOUPOS_DEF int ioupos_unet_outblock_backward(float *dinp, float *dweight, float *dbias,
                                             const float *dout, const float *inp,
                                             const float *weight, int dims, int B, int Cin,
                                             const int shape[], int Cout);

#ifdef __cplusplus
}
#endif


/* ============================================================================================
   20. Segmentation: Dice-CE loss, sliding-window inference, organ DSC
   ============================================================================================ */

/* Fine-tuning and evaluation for organ segmentation (FLARE22: 14 classes, 0 is
   background): the DiceCE loss, sliding-window inference, the per-case DSC and the research
   code's per-slice Dice, argmax over classes and the per-organ table. It follows ioupos.h's
   conventions (functions return
   0 or a negative ioupos_status with the reason in ioupos_failure_reason(); the library never
   prints; reductions in a fixed order, in double where they are ours).

   WHAT IT MATCHES (tests/test_segeval.c against tests/reference/segeval_fixture.py, MONAI 1.6.1,
   PyTorch 2.15.0)
     ioupos_dicece_forward/_backward  monai.losses.DiceCELoss(to_onehot_y=True, softmax=True) and
                                      its defaults (include_background True, squared_pred False,
                                      jaccard False, reduction "mean", smooth_nr = smooth_dr =
                                      1e-5, batch False, lambda_dice = lambda_ce = 1); the
                                      cross-entropy part is torch's cross_entropy(logits, target).
     ioupos_sliding_window            monai.inferers.sliding_window_inference(mode "constant",
                                      padding_mode "constant", cval 0) for one image.
     ioupos_slice_dice_*              monai.metrics.DiceMetric(include_background=True,
                                      reduction="mean", ignore_empty=True) fed one-hot 2D slices
                                      (the research code's --metric research).
     ioupos_argmax_classes            torch.argmax(scores, dim=1).
     ioupos_dsc_case / ioupos_dsc_eval_*  our per-case organ DSC and data-set averages (below).
*/
#ifdef __cplusplus
extern "C" {
#endif

/* Largest number of classes (background included) the metrics accept; their result structs
   hold per-class arrays of this size (no allocation). */
#ifndef IOUPOS_SEG_MAX_CLASSES
#define IOUPOS_SEG_MAX_CLASSES 128
#endif

/* -- DiceCE loss: MONAI DiceCELoss(to_onehot_y=True, softmax=True)
   logits[B][K][S] channels-first (S = the product of the spatial sizes, D*H*W or H*W: the loss
   does not depend on how S is shaped), target[B][S] integer class ids in [0, K) (int, as
   ioupos_crossentropy_forward; MONAI's [B][1][S...] target without its channel axis).
   p = softmax over K at every (b, s); t = onehot(target). Per item b and class c (batch False:
   nothing is summed over the batch), with sums over s:
       I = sum p t,  P = sum p,  T = sum t                (MONAI's tp, tp + fp, tp + fn)
       dice[b][c] = 1 - (2 I + smooth_nr) / (P + T + smooth_dr)
   (MONAI writes the denominator 2 (tp + fp/2 + fn/2) + smooth_dr, which is P + T + smooth_dr:
   both smooths are outside the factor 2; a class absent from item b's target scores
   1 - smooth_nr / (P + smooth_dr), about 1 however small its probabilities, and still counts in
   the mean). Then, reduction "mean":
       Ldice = mean over b in [0, B) and c in [c0, K) of dice[b][c]  (c0 = 0, or 1 when
               include_background is 0; one flat mean over B * (K - c0) values)
       Lce   = mean over b, s of (logsumexp_k logits[b][k][s] - logits[b][target][s])
       L     = lambda_dice Ldice + lambda_ce Lce
   include_background 0 removes channel 0 from the Dice part only (as MONAI: the cross-entropy
   always sees every class). The forward is computed in double from the float logits (softmax
   in double, sums in a fixed order), the probabilities are stored as float. */
typedef struct ioupos_dicece_opts {
  int include_background;        /* 1 (MONAI's default); 0 drops class 0 from the Dice part */
  double smooth_nr, smooth_dr;   /* 1e-5, 1e-5 */
  double lambda_dice, lambda_ce; /* 1, 1; each >= 0 */
} ioupos_dicece_opts;

/* MONAI's defaults (listed above). */
IOUPOS_DEF void ioupos_dicece_defaults(ioupos_dicece_opts *o);

/* doubles in the stats buffer: per (b, c) {I, P, T}, then Ldice and Lce */
#define IOUPOS_DICECE_STATS(B, K) ((size_t)3 * (size_t)(B) * (size_t)(K) + 2)

/* prob[B][K][S] = softmax(logits) over K (caller buffer, read by backward) and
   stats[IOUPOS_DICECE_STATS(B, K)] (caller buffer: stats[3 (b K + c) + {0, 1, 2}] = I, P, T,
   stats[3 B K] = Ldice and stats[3 B K + 1] = Lce, unweighted, for logging). opts NULL means
   the defaults. Returns L; returns NaN, with the reason set, when an argument is NULL, B < 1,
   K < 2, S < 1, an option is out of range or a target id is outside [0, K) (the first such
   voxel is named). NaN or infinite logits give a NaN loss, as torch. */
IOUPOS_DEF double ioupos_dicece_forward(float *prob, double *stats, const float *logits,
                                        const int *target, int B, int K, long S,
                                        const ioupos_dicece_opts *opts);
/* dlogits[B][K][S] += dloss * dL/dlogits from the forward's prob and stats (same target,
   sizes and opts; call it only after a forward that did not return NaN):
       g[c] = dL/dp[c] = -lambda_dice / (B (K - c0)) * (2 t[c] D - N) / D^2 for c >= c0, else 0
              (N = 2 I + smooth_nr, D = P + T + smooth_dr of (b, c))
       dL/dlogits[k] = p[k] (g[k] - sum_j p[j] g[j]) + lambda_ce / (B S) (p[k] - t[k])
   ACCUMULATES into dlogits. */
IOUPOS_DEF void ioupos_dicece_backward(float *dlogits, float dloss, const float *prob,
                                       const double *stats, const int *target, int B, int K,
                                       long S, const ioupos_dicece_opts *opts);

/* -- sliding-window inference: MONAI sliding_window_inference
   For one image img[C][shape...] (2D {H, W} or 3D {D, H, W}, slowest axis first), with MONAI's
   semantics, mode "constant", padding_mode "constant", cval 0:
     roi      roi[k] <= 0 means the image size on axis k (MONAI's fall_back_tuple); roi NULL
              means IOUPOS_SW_ROI_DEFAULT (96) on every axis, the research code's roi_size.
     padding  where the image is smaller than the roi on axis k, it is padded with zeros to the
              roi: floor(d / 2) before and the rest after (d = roi - size; MONAI's pad_size,
              F.pad); the windows are placed on the padded image and the output cropped back.
              Padding is virtual here (the windows read zeros outside the image).
     interval (MONAI _get_scan_interval) per axis on the padded size P: roi if roi == P, else
              int(roi * (1 - overlap)) computed in double and truncated, at least 1.
     windows  (MONAI dense_patch_slices) per axis the starts i * interval for i = 0, 1, ... up to
              the first window that reaches the end (i * interval + roi >= P), the last one moved
              back to end exactly at P (start - max(start + roi - P, 0)); the windows are the
              Cartesian product of the per-axis starts, the LAST axis varying fastest (numpy
              meshgrid "ij" order). So every voxel is covered.
     blending the windows' outputs are summed in window order (float32, as MONAI: the result is
              bit-identical to MONAI for the same predictor outputs) and divided by the number of
              windows covering each voxel (MONAI's count map with the all-ones importance map).
   The predictor is called with up to sw_batch_size consecutive windows (in window order; the
   last call may get fewer): predict(ctx, in, n, out) with in[n][C][roi...] (the input windows,
   scratch that the predictor may overwrite) and out[n][K][roi...] (zeroed before the call),
   which it must fill with the model's output for each window; it returns 0, or a negative
   ioupos_status that stops the inference and is returned (its reason kept, prefixed).
   overlap in [0, 1) (IOUPOS_SW_OVERLAP_DEFAULT 0.25). */
#define IOUPOS_SW_ROI_DEFAULT 96
#define IOUPOS_SW_OVERLAP_DEFAULT 0.25

typedef int (*ioupos_sw_predict_fn)(void *ctx, float *in, int n, float *out);

typedef struct ioupos_sw_plan {
  int dims;          /* 2 or 3 */
  int shape[3];      /* the image, slowest axis first */
  int roi[3];        /* the window, after the fall back to the image size */
  int padded[3];     /* max(shape, roi) */
  int pad_before[3]; /* (padded - shape) / 2, rounded down */
  int interval[3];   /* scan interval */
  int n_axis[3];     /* windows per axis */
  long n_windows;    /* product of n_axis */
} ioupos_sw_plan;

/* The window grid for an image (no allocation, no callback). Fails (EINVAL) when dims is not 2
   or 3, shape is NULL or a size < 1, overlap is NaN or outside [0, 1); ERANGE when the padded
   image or a window has more than INT_MAX voxels. */
IOUPOS_DEF int ioupos_sw_plan_make(ioupos_sw_plan *p, int dims, const int shape[],
                                   const int roi[], double overlap);
/* start[0 .. dims) of window w (0 <= w < n_windows) in PADDED coordinates (subtract
   pad_before for image coordinates; MONAI's slices are in padded coordinates). */
IOUPOS_DEF void ioupos_sw_plan_start(const ioupos_sw_plan *p, long w, int start[3]);

/* out[K][shape...] = the blended prediction for img[C][shape...]. Allocates the window
   buffers (min(sw_batch_size, n_windows) windows of C + K channels) with IOUPOS_MALLOC.
   Returns 0, EINVAL (NULL pointer, K, C or sw_batch_size < 1, bad plan), ERANGE, ENOMEM, or the
   predictor's status. */
IOUPOS_DEF int ioupos_sliding_window(float *out, int K, const float *img, int C, int dims,
                                     const int shape[], const int roi[], double overlap,
                                     int sw_batch_size, ioupos_sw_predict_fn predict, void *ctx);

/* -- argmax over classes: torch.argmax(scores, dim=1)
   labels[B][S] = the class of the largest scores[B][K][S]; the FIRST maximum wins on ties, and
   a NaN counts as larger than any number (the first NaN wins), as torch. Returns 0 or EINVAL. */
IOUPOS_DEF int ioupos_argmax_classes(int *labels, const float *scores, int B, int K, long S);

/* -- per-case organ DSC (3D volumes)
   pred[n] and truth[n]: one case's whole label volume (the 2D slices of a case restacked, any
   shape, n voxels), class ids in [0, K). Per class c (0 included, for information):
       DSC[c] = 2 |P_c & T_c| / (|P_c| + |T_c|)   (counts exact in int64, the ratio in double)
   - absent from BOTH truth and prediction: DSC NaN and defined[c] = 0 (left out of the case's
     mean and of the data-set averages, by default);
   - absent from the truth but predicted: 0 (false positives are penalised);
   - present in the truth but not predicted: 0.
   mean = the mean of DSC[c] over the DEFINED organs c in [1, K) (background excluded); NaN when
   no organ is defined (n_defined 0). */
typedef struct ioupos_dsc_case {
  int K;                                     /* classes, background included */
  int n_defined;                             /* organs 1..K-1 in truth or prediction */
  double mean;                               /* over the defined organs; NaN if none */
  double dsc[IOUPOS_SEG_MAX_CLASSES];        /* per class; NaN where not defined */
  unsigned char defined[IOUPOS_SEG_MAX_CLASSES];   /* 1: in truth or prediction */
  int64_t n_truth[IOUPOS_SEG_MAX_CLASSES];   /* |T_c| */
  int64_t n_pred[IOUPOS_SEG_MAX_CLASSES];    /* |P_c| */
  int64_t n_inter[IOUPOS_SEG_MAX_CLASSES];   /* |P_c & T_c| */
} ioupos_dsc_case;

/* Fills *r. EINVAL when a pointer is NULL, n < 1, K < 2 or K > IOUPOS_SEG_MAX_CLASSES, or a label
   is outside [0, K) (the first such voxel, truth or prediction, is named). */
IOUPOS_DEF int ioupos_dsc_case_compute(ioupos_dsc_case *r, const int *pred, const int *truth,
                                       long n, int K);

/* -- data-set DSC: an accumulator of cases
   For organ c in [1, K):
       organ_mean[c] = mean of DSC[c] over the cases where it counts (NaN if none)
       organ_std[c]  = population standard deviation (ddof 0) over the same cases
   and two data-set scores:
       ioupos_dsc_eval_mean       = mean over organs (those with >= 1 counted case) of
                                    organ_mean[c]: the FLARE convention (each organ's mean over
                                    cases, then the mean over the organs). THE headline number.
       ioupos_dsc_eval_case_mean  = mean over cases (those with >= 1 counted organ) of the case's
                                    mean over its counted organs.
   An organ "counts" in a case when it is defined there (in truth or prediction). The policy
   IOUPOS_DSC_EMPTY_ONE instead counts an organ absent from both as DSC 1 in every average
   (the official FLARE22 script, FLARE22_DSC_NSD_Eval.py, scores it 1); the per-case result
   still reports it as NaN / not defined. Sums in case order, in double. */
enum { IOUPOS_DSC_EMPTY_SKIP = 0, IOUPOS_DSC_EMPTY_ONE = 1 };

typedef struct ioupos_dsc_eval {
  int K, empty_policy;
  long n_cases;                               /* cases added */
  long n_case_means;                          /* cases with >= 1 counted organ */
  double case_mean_sum;                       /* sum of their case means */
  double sum[IOUPOS_SEG_MAX_CLASSES];         /* per organ: sum of counted DSCs */
  double sumsq[IOUPOS_SEG_MAX_CLASSES];       /* ... of their squares */
  long count[IOUPOS_SEG_MAX_CLASSES];         /* ... number of counted cases */
  long n_empty[IOUPOS_SEG_MAX_CLASSES];       /* cases where the organ was absent from both */
} ioupos_dsc_eval;

/* K in [2, IOUPOS_SEG_MAX_CLASSES], empty_policy IOUPOS_DSC_EMPTY_SKIP (the default meaning) or
   IOUPOS_DSC_EMPTY_ONE. */
IOUPOS_DEF int ioupos_dsc_eval_init(ioupos_dsc_eval *e, int K, int empty_policy);
/* Adds one case (its K must be the accumulator's). */
IOUPOS_DEF int ioupos_dsc_eval_add(ioupos_dsc_eval *e, const ioupos_dsc_case *c);
/* organ_mean / organ_std of organ c in [1, K) (NaN if it never counted or c is out of range). */
IOUPOS_DEF double ioupos_dsc_eval_organ_mean(const ioupos_dsc_eval *e, int c);
IOUPOS_DEF double ioupos_dsc_eval_organ_std(const ioupos_dsc_eval *e, int c);
/* The data-set scores above (NaN when nothing counted); *n_used (may be NULL) gets the number
   of organs / cases averaged. */
IOUPOS_DEF double ioupos_dsc_eval_mean(const ioupos_dsc_eval *e, int *n_used);
IOUPOS_DEF double ioupos_dsc_eval_case_mean(const ioupos_dsc_eval *e, long *n_used);

/* -- the research code's metric: MONAI DiceMetric per 2D slice
   DiceMetric(include_background=True, reduction="mean", ignore_empty=True) on one-hot [slices][K]
   [H][W] prediction and truth, fed slice by slice (in any batches), then aggregate():
     per slice and class c (background included), MONAI's compute_channel:
       truth has c (|T_c| > 0):  2 |P_c & T_c| / (|T_c| + |P_c|)
       truth lacks c:            NaN, WHATEVER the prediction (ignore_empty=True: a class that is
                                 predicted on a slice where the truth has none is NOT penalised;
                                 a class absent from both is NaN too, never 1)
     per slice: the mean over its non-NaN classes (every slice has >= 1, since each pixel has a
       class and the background counts; a slice with none would be left out, as MONAI does);
     the score: the unweighted mean of the slice means over all slices (0 when no slice has a
       value, as MONAI's aggregate; NaN here when nothing was added).
   Also kept, MONAI's aggregate("mean_batch"): per class the mean over the slices where the truth
   has it. Counts are exact; MONAI's float32 ratios and sums differ from these doubles by float
   rounding only. */
typedef struct ioupos_slice_dice {
  int K;
  long n_slices;                              /* slices added */
  long n_valid;                               /* slices with >= 1 non-NaN class */
  double sum;                                 /* sum of the slice means */
  double class_sum[IOUPOS_SEG_MAX_CLASSES];   /* per class: sum over slices where in truth */
  long class_count[IOUPOS_SEG_MAX_CLASSES];   /* ... number of those slices */
} ioupos_slice_dice;

/* K in [2, IOUPOS_SEG_MAX_CLASSES]. */
IOUPOS_DEF int ioupos_slice_dice_init(ioupos_slice_dice *a, int K);
/* Adds n_slices contiguous slices pred / truth [n_slices][slice_pixels] (a [D][H][W] volume with
   slice_pixels = H W adds its D axial slices). slice_means[n_slices] (may be NULL) gets each
   slice's mean (NaN for a slice without a value). EINVAL for a NULL pointer, n_slices < 1,
   slice_pixels < 1 or a label outside [0, K) (named; nothing is added then). */
IOUPOS_DEF int ioupos_slice_dice_add(ioupos_slice_dice *a, const int *pred, const int *truth,
                                     long n_slices, long slice_pixels, double *slice_means);
/* The research score (see above). */
IOUPOS_DEF double ioupos_slice_dice_mean(const ioupos_slice_dice *a);
/* Per class c in [0, K): mean over the slices whose truth has c (NaN if none). */
IOUPOS_DEF double ioupos_slice_dice_class_mean(const ioupos_slice_dice *a, int c);

/* -- the per-organ table
   names[K] (class id -> name) or NULL for the FLARE22 names (ioupos_label_name: 1 liver,
   2 right kidney, 3 spleen, 4 pancreas, 5 aorta, 6 inferior vena cava, 7 right adrenal, 8 left
   adrenal, 9 gallbladder, 10 oesophagus, 11 stomach, 12 duodenum, 13 left kidney; "class <id>"
   past 13). research may be NULL (no research rows). Both write a NUL-terminated string into
   buf[cap] and *len (may be NULL) = its length without the NUL; when cap is too small (or buf
   NULL) they return ERANGE with *len the length needed, so a caller can size buf and call again.

   ioupos_dsc_table: a text table, one row per organ (id, name, mean DSC, std, counted cases,
   cases absent from both), then the mean over organs, the mean over cases and, with research,
   its score and slice count. Values with 4 decimals, "n/a" where undefined.

   ioupos_dsc_table_json: one JSON object (no newline inside, no trailing newline):
     {"classes":K,"cases":N,"empty_policy":"skip"|"one",
      "organs":[{"id":1,"name":"liver","dsc":m,"std":s,"cases":n,"empty":e},...],
      "mean_dsc":M,"organs_averaged":n,"mean_case_dsc":M2,"cases_averaged":n2,
      "research":{"metric":"monai_dicemetric_per_slice","dice":d,"slices":n,
                  "classes":[{"id":0,"name":"background","dice":m,"slices":n},...]}}
   ("research" only when given). Numbers print with %.10g; NaN prints as null. */
IOUPOS_DEF int ioupos_dsc_table(char *buf, size_t cap, size_t *len, const ioupos_dsc_eval *e,
                                const ioupos_slice_dice *research, const char *const *names);
IOUPOS_DEF int ioupos_dsc_table_json(char *buf, size_t cap, size_t *len, const ioupos_dsc_eval *e,
                                     const ioupos_slice_dice *research, const char *const *names);
/* One case as a JSON object: {"case":"<case_name>","mean":m,"organs_defined":n,
   "dsc":{"liver":d,...,"left kidney":d}} (organs 1..K-1, null where not defined). case_name may
   be NULL (the "case" member is then left out). Same buffer protocol. */
IOUPOS_DEF int ioupos_dsc_case_json(char *buf, size_t cap, size_t *len, const ioupos_dsc_case *c,
                                    const char *case_name, const char *const *names);

#ifdef __cplusplus
}
#endif


/* ============================================================================================
   21. SwinUNETR: the segmentation model
   ============================================================================================ */

/* MONAI's SwinUNETR (monai.networks.nets.SwinUNETR, MONAI 1.6.1, norm_name "instance",
   res_block True, normalize True), 2D and 3D, on sections 17 and 19:
       hs_k   = swinViT(x) stage outputs k = 0..4 (normalised), channels-first
       enc0   = encoder1(x)        UnetResBlock(in_chans -> C)          at the input size
       enc1   = encoder2(hs_0)     UnetResBlock(C -> C)                 at 1/2
       enc2   = encoder3(hs_1)     UnetResBlock(2C -> 2C)               at 1/4
       enc3   = encoder4(hs_2)     UnetResBlock(4C -> 4C)               at 1/8
       dec4   = encoder10(hs_4)    UnetResBlock(16C -> 16C)             at 1/32
       dec3   = decoder5(dec4, hs_3)  UnetrUpBlock(16C -> 8C)           at 1/16
       dec2   = decoder4(dec3, enc3)  (8C -> 4C), dec1 = decoder3(dec2, enc2) (4C -> 2C),
       dec0   = decoder2(dec1, enc1)  (2C -> C),  out = decoder1(dec0, enc0) (C -> C)
       logits = out(out)           UnetOutBlock: 1x1 conv with bias, C -> out_channels
   C = feature_size = the encoder's embed_dim. Input sizes must be multiples of 32 (MONAI
   refuses others). Parameter names are MONAI's state-dict names: swinViT.* (the encoder, so
   an SSL checkpoint's backbone.* loads with ioupos_params_load(p, f, "swinViT.", "backbone.")),
   encoder1.layer.conv1.conv.weight, decoder5.transp_conv.conv.weight, out.conv.conv.weight, ...
   Tensors are channels-first: x [B][in_chans][S...], logits [B][out_channels][S...]. */

typedef struct ioupos_swinunetr_config {
  ioupos_swin_config enc; /* feature_size = enc.embed_dim (research 48), in_chans */
  int out_channels;       /* 14 for FLARE22 (13 organs + background) */
} ioupos_swinunetr_config;
/* MONAI's SwinUNETR defaults: the research encoder (C 48, window 7, ...) with drop-path 0
   (SwinUNETR's dropout_path_rate 0.0, unlike the SSL backbone's 0.1), 14 classes. */
IOUPOS_DEF void ioupos_swinunetr_config_default(ioupos_swinunetr_config *c, int spatial_dims);

typedef struct ioupos_swinunetr_block {
  int cin, cout, level; /* level: the map is the input size / 2^level */
  int w1, w2, w3, wt;   /* parameter indices (w3 -1 when cin == cout, wt -1 for res blocks) */
  size_t a_out, a_acts, g_out; /* activation offsets, gradient-buffer offset of out */
} ioupos_swinunetr_block;

typedef struct ioupos_swinunetr {
  ioupos_swinunetr_config cfg;
  ioupos_swin_encoder enc;
  ioupos_swinunetr_block blk[10]; /* encoder1, 2, 3, 4, 10, decoder5, 4, 3, 2, 1 */
  int out_w, out_b;
  /* the plan */
  int batch, shape[3];
  const ioupos_backend *be;
  float *act, *scratch, *grads;
  size_t act_n, scratch_n, grads_n, a_hs[5], a_logits, g_hs[5], g_last[5];
  const float *x; /* the last forward's input (encoder1's backward reads it) */
} ioupos_swinunetr;

/* Registers the tensors (encoder under prefix + "swinViT."). */
IOUPOS_DEF int ioupos_swinunetr_init(ioupos_swinunetr *m, const ioupos_swinunetr_config *cfg,
                                     ioupos_tensor_table *tt, const char *prefix);
/* Activations for batch images of shape {H, W} or {D, H, W} (multiples of 32). */
IOUPOS_DEF int ioupos_swinunetr_plan(ioupos_swinunetr *m, ioupos_params *p, int batch,
                                     const int *shape);
/* x [batch][in_chans][shape...] (backend memory); train: drop-path from rng. */
IOUPOS_DEF int ioupos_swinunetr_forward(ioupos_swinunetr *m, const ioupos_params *p,
                                        const float *x, int train, ioupos_rng *rng);
/* [batch][out_channels][shape...], valid until the next forward. */
IOUPOS_DEF const float *ioupos_swinunetr_logits(const ioupos_swinunetr *m);
/* dlogits [batch][out_channels][shape...]: every parameter gradient ACCUMULATES into p->grad,
   dx (may be NULL) too. */
IOUPOS_DEF int ioupos_swinunetr_backward(ioupos_swinunetr *m, ioupos_params *p,
                                         const float *dlogits, float *dx);
IOUPOS_DEF void ioupos_swinunetr_free(ioupos_swinunetr *m);


/* ============================================================================================
   22. Fine-tuning: SwinUNETR on labelled slices, evaluation, run directories, exact resume
   ============================================================================================ */

/* The research code's fine-tuning (main_finetune.py) on ioupos-prep's labelled output, with its
   faults fixed where they change the meaning (RESEARCH_CODE.md section 5: patience in epochs,
   a held-out test split scored once, a per-case organ DSC, an exact resume).

   THE DATA. A split folder <dir>/ holds the slices <case>_<z>.png (z: decimal digits, the axial
   index; ioupos-prep writes it zero-padded) and <dir>/labels/<case>_<z>.png (the label ids as
   8-bit grey values); every image needs its label of the same name (ioupos_dataset_scan).
   ioupos_seg_set_scan groups the slices by case, each case's slices in increasing z (by the
   number, not the text), so a case is restacked into its volume for the per-case DSC. A name
   without the "_<z>" part, or two slices of one case with the same z, is an error naming them.

   LOADING AN ENCODER (ioupos_swinunetr_load). A checkpoint either holds a whole SwinUNETR
   (MONAI names: swinViT.*, encoder1.*, ..., out.conv.conv.*; e.g. a fine-tuning run's
   best.safetensors), which is loaded strictly in full, or an encoder only: under the first
   prefix of ioupos_swin_find_prefix ("" for bare SwinTransformer names, "swinViT." for a MONAI
   SwinUNETR or SSL-head state dict, "backbone." for ioupos-simsiam's and ioupos-dino's
   checkpoints (DINO: the teacher), "module.backbone.", "student.backbone."); the model's
   swinViT.* tensors are then loaded strictly (every one must be in the file with its shape;
   every file tensor under that prefix must be one of them) and the decoder keeps its
   initialisation. File tensors outside the prefix (SSL heads, DINO's student) are counted and
   ignored. A file without a Swin encoder, a missing file or a shape mismatch is an error naming
   the file, the tensor and both shapes; the model is then unchanged.

   EVALUATION (ioupos_swinunetr_evaluate). For every case of a set, every slice (an image of
   any size) goes through sliding-window inference (section 20: roi, overlap, sw_batch_size
   windows per model call, MONAI's semantics, the model in eval mode), argmax over classes, and
   the slices are restacked into the case's volume: its per-organ DSC (ioupos_dsc_case_compute)
   is added to the data-set average (ioupos_dsc_eval: the mean over organs of each organ's mean
   over cases, THE score); with research set, the research code's per-slice MONAI DiceMetric
   (ioupos_slice_dice) too. predict_dir (or NULL) receives every predicted slice as an 8-bit
   PNG of label ids, under the input's name. sw_batch_size windows go to each predictor call and
   through the model IOUPOS_SEG_MODEL_BATCH at a time (ioupos_seg_predict), so results depend
   on neither (each window's output is computed on its own: the model has no batch statistics).

   THE RUN (ioupos_finetune_run), on <data_dir>/train, <data_dir>/val and, when present,
   <data_dir>/test (optionally checked against a split file: every case listed under train /
   val / test must be in that folder, and no other case; an evaluation only, n_epochs 0, needs
   no train folder). Before anything is written, ioupos_dataset_check reads every file of the
   splits it uses (labels decoded: every id below n_classes, the image's size) and names all
   bad files at once (the full list on opts->log when the reason cannot hold it):
     model    SwinUNETR (section 21), C = --embedding_size, n_classes outputs; the encoder from
              chkpt_path (above) or, without one, PyTorch's default initialisation from the seed
     loader   section 9's IOUPOS_LOADER_FINETUNE on the train split: batch_size slices per
              step, n_crops_per_ct crops of crop x crop each (RandCropByPosNegLabeld, pos = neg =
              1), ioupos_augment_finetune_crop, drop_last (every step has the same batch)
     loss     Dice-CE (section 20, MONAI's defaults) over the step's crops
     optimiser AdamW (0.9, 0.999, eps 1e-8), weight decay wd except on biases and 1-D tensors,
              lr per iteration = ioupos_cosine_schedule(it, total, warm-up, base_lr, end_lr, 0):
              linear warm-up from 0 over warmup_epochs, then cosine to end_lr
     schedule validation after every eval_every-th epoch and after the last one; the best
              validation score so far (strictly greater; NaN never counts) saves
              best.safetensors; patience counts EPOCHS since the best (checked at evaluations;
              0 = off); a non-finite loss stops the run naming epoch and step
     the end  best.safetensors (or the last model if no evaluation ever scored) is evaluated
              on val and, when the test split exists, on test: the test score is THE reported
              number (the validation score, used for selection, is optimistic); without a test
              split the best validation score is reported, and a note says so.
     n_epochs 0 evaluates the initial model (chkpt_path, e.g. a run's best.safetensors) on val
              and test, without training.
   The run directory <chkpt_dir>/<run_name>/ (section 18's layout):
     flags.json             {"flags": <flags_json>, "seed": S, "commit": C, "steps_per_epoch": N}
     metrics.jsonl          one JSON line per logged step, per epoch and per evaluation (each
                            with "epoch" and "step"; a resume drops the lines past its state)
     checkpoint.safetensors the model after the last finished epoch (MONAI SwinUNETR names)
     best.safetensors       the best validation model (MONAI names; metadata epoch, score)
     state.safetensors      model, AdamW moments, counters (epoch, step in epoch = the loader
                            position, optimiser steps, best epoch, epochs since the best,
                            early stop), the best score and the flags; written after every
                            epoch and at an interruption (max_steps); resume continues from it
                            bit for bit (every random draw derives from (seed, step); the
                            loader from (seed, epoch, batch))
     results.json           the final evaluation: {"reported": {"split", "metric", "score",
                            "dsc", "research_dice"}, "best_epoch", "best_val_score",
                            "epochs_done", "stopped_early", "val": {"table": <ioupos_dsc_table_json>,
                            "cases": [<ioupos_dsc_case_json>...]}, "test": {...}}
   Every file is written atomically. opts->log receives the console lines. Epoch numbering, the
   directory's hold, stale temporary files and what a failed run leaves: as section 18 says
   (an evaluation-only run, n_epochs 0, saves no state: when it fails it leaves nothing). */


/* -- labelled slice sets -- */
typedef struct ioupos_seg_case {
  char *name;  /* the case name */
  int n;       /* its slices */
  int *slices; /* n data-set indices (ds.images / ds.labels), in increasing z */
} ioupos_seg_case;

typedef struct ioupos_seg_set {
  ioupos_dataset ds;      /* images and labels (section 9), sorted by file name */
  int n_cases;
  ioupos_seg_case *cases; /* sorted by case name (strcmp) */
} ioupos_seg_set;

/* Splits a slice file name "<case>_<z>.png" (a path's directories are skipped; extension
   case-insensitive) into the case name (into case_name[cap]) and z (>= 0). EINVAL naming the
   file when it has no such form or the case name does not fit. */
IOUPOS_DEF int ioupos_slice_name_parse(const char *file, char *case_name, size_t cap, long *z);
/* Scans dir (images) and dir/labels (labels) as described above. On failure *s is empty. */
IOUPOS_DEF int ioupos_seg_set_scan(ioupos_seg_set *s, const char *dir);
IOUPOS_DEF void ioupos_seg_set_free(ioupos_seg_set *s);
/* Index of the case called name, or -1. */
IOUPOS_DEF int ioupos_seg_set_find(const ioupos_seg_set *s, const char *name);

/* -- checkpoints -- */
typedef struct ioupos_swinunetr_load_info {
  int whole;          /* 1: a whole SwinUNETR was loaded; 0: the encoder only */
  const char *prefix; /* encoder only: the file's encoder prefix (static string) */
  int n_loaded;       /* tensors loaded */
  int n_ignored;      /* file tensors not looked at (outside the prefix) */
} ioupos_swinunetr_load_info;

/* Loads path into the model m registered (without prefix) in p, as described above. info may
   be NULL. */
IOUPOS_DEF int ioupos_swinunetr_load(ioupos_swinunetr *m, ioupos_params *p, const char *path,
                                     ioupos_swinunetr_load_info *info);

/* -- sliding-window prediction with a SwinUNETR
   One slice img[h][w] (host memory, any size) -> logits[out_channels][h][w] (host) by
   ioupos_sliding_window (section 20: roi, overlap, sw_batch_size windows per predictor call,
   MONAI's semantics), the model in eval mode. The windows of a call go through the model
   IOUPOS_SEG_MODEL_BATCH at a time: each window's output is its own (the model has no batch
   statistics), so the result does not depend on it, while memory does: a plan keeps every
   activation of its batch (about 75 MB a 96 x 96 window at C 48). A 352 x 288 slice (20
   windows) at sw_batch_size 64 peaked at 1498 MiB in one model call and at 412 MiB in chunks
   of 4, at the same speed (bench_finetune, 2 threads: 0.81 and 0.79 s a slice). The predictor
   plans at most two model instances (the chunk size and a last, smaller chunk) on the
   parameters p (only read; their relative-position buffers are filled). */
#define IOUPOS_SEG_MODEL_BATCH 4

typedef struct ioupos_seg_predictor {
  ioupos_swinunetr_config cfg;
  ioupos_params *p;
  int roi[2], sw_batch_size;
  double overlap;
  ioupos_swinunetr m[2]; /* model instances, planned for different batches */
  int inited[2], last[2], stamp;
  float *x;              /* backend buffer of IOUPOS_SEG_MODEL_BATCH windows */
} ioupos_seg_predictor;

/* 2D single-channel models; roi multiples of 32. Fails (EINVAL) when p is not the table of a
   SwinUNETR of cfg registered without prefix (named), on a bad roi or sw_batch_size < 1. */
IOUPOS_DEF int ioupos_seg_predictor_init(ioupos_seg_predictor *pr,
                                         const ioupos_swinunetr_config *cfg, ioupos_params *p,
                                         const int roi[2], double overlap, int sw_batch_size);
IOUPOS_DEF int ioupos_seg_predict(ioupos_seg_predictor *pr, float *logits, const float *img,
                                  int h, int w);
IOUPOS_DEF void ioupos_seg_predictor_free(ioupos_seg_predictor *pr);

/* -- evaluation -- */
typedef struct ioupos_seg_eval_opts {
  int roi[2];              /* window (research 96 x 96); multiples of 32 */
  double overlap;          /* 0.25 */
  int sw_batch_size;       /* windows per model call (research 64) */
  int research;            /* 1: also the research per-slice Dice */
  int empty_policy;        /* IOUPOS_DSC_EMPTY_SKIP (default) or IOUPOS_DSC_EMPTY_ONE */
  const char *predict_dir; /* NULL, or a folder for the predicted label slices */
} ioupos_seg_eval_opts;
IOUPOS_DEF void ioupos_seg_eval_opts_default(ioupos_seg_eval_opts *o);

typedef struct ioupos_seg_eval_result {
  ioupos_dsc_eval dsc;        /* the data-set average */
  ioupos_slice_dice research; /* when has_research */
  int has_research;
  int n_cases;
  ioupos_dsc_case *cases;     /* per case, in the set's case order */
} ioupos_seg_eval_result;

/* Evaluates the model described by cfg with parameters p (the table of a SwinUNETR registered
   without prefix) on set. The model instances it plans are its own (p's values are only read;
   its relative-position buffers are filled). On failure r is empty. */
IOUPOS_DEF int ioupos_swinunetr_evaluate(const ioupos_swinunetr_config *cfg, ioupos_params *p,
                                         const ioupos_seg_set *set,
                                         const ioupos_seg_eval_opts *o, ioupos_seg_eval_result *r);
IOUPOS_DEF void ioupos_seg_eval_result_free(ioupos_seg_eval_result *r);
/* {"table": <ioupos_dsc_table_json>, "cases": [<ioupos_dsc_case_json>, ...]} as a fresh
   IOUPOS_MALLOC string in *json (free with IOUPOS_FREE). */
IOUPOS_DEF int ioupos_seg_eval_json(char **json, const ioupos_seg_eval_result *r,
                                    const ioupos_seg_set *set);

/* -- the run -- */
enum { IOUPOS_FT_METRIC_DSC = 0, IOUPOS_FT_METRIC_RESEARCH = 1 };

typedef struct ioupos_finetune_opts {
  ioupos_swin_config enc;     /* --embedding_size, --drop_path_rate (fine-tuning default 0,
                                 MONAI SwinUNETR's), spatial_dims 2 */
  int n_classes;              /* 14 */
  const char *data_dir;       /* ioupos-prep's output with a split: train/, val/, test/ */
  const char *split_path;     /* NULL, or the split file to check the folders against */
  const char *chkpt_path;     /* NULL (from scratch), an SSL checkpoint or a SwinUNETR */
  const char *chkpt_dir, *run_name;
  int crop;                   /* crop and window size, a multiple of 32 (research 96) */
  int batch_size;             /* slices per step (32) */
  int n_crops_per_ct;         /* crops per slice (2) */
  int sw_batch_size;          /* 64 */
  double sw_overlap;          /* 0.25 */
  int n_epochs;               /* 225; 0 = evaluate only */
  double base_lr, end_lr, warmup_epochs, wd; /* 1e-3, 5e-5, 10, 1e-5 */
  int patience;               /* epochs without a better validation score; 0 = off (20) */
  int eval_every;             /* epochs between validations (10) */
  int eval_train;             /* also evaluate the train split (logged only) */
  int metric;                 /* IOUPOS_FT_METRIC_DSC or _RESEARCH: the selection score */
  uint64_t seed;
  int num_workers;
  int resume;
  int log_every;              /* a console + metrics line every this many steps */
  long max_steps;             /* stop (as if interrupted) after this many steps here; 0 = no */
  volatile int *stop;         /* NULL, or a flag (e.g. set by a SIGINT handler): once nonzero
                                 the run stops at the next step boundary (an epoch's end work,
                                 checkpoint and validation, is finished first) with the state
                                 saved, and returns 0 */
  const ioupos_backend *backend; /* NULL = ioupos_backend_cpu(), or ioupos_backend_cuda(device)
                                 (see ioupos_pretrain_opts) */
  const char *predict_dir;    /* NULL, or where the final evaluation writes its predictions */
  const char *flags_json;     /* JSON object of the resolved flags (may be NULL) */
  const char *git_commit;     /* may be NULL */
  void (*log)(void *ctx, const char *line);
  void *log_ctx;
} ioupos_finetune_opts;

/* The research setup: C 48, 14 classes, crop 96, batch 32 x 2 crops, sw batch 64, overlap
   0.25, 225 epochs, lr 1e-3 -> 5e-5 with 10 warm-up epochs, wd 1e-5, patience 20 epochs,
   validation every 10 epochs, seed 4294967295, drop-path 0; run directory chkpts/finetune. */
IOUPOS_DEF void ioupos_finetune_opts_default(ioupos_finetune_opts *o);

typedef struct ioupos_finetune_result {
  int done;                  /* 1: the run finished (final evaluation done); 0: max_steps */
  int epochs_done, best_epoch, stopped_early, has_test;
  double best_val;           /* the best validation score (selection metric), NaN if none */
  const char *split;         /* "test" or "val": where the reported number comes from */
  double score;              /* the reported number (selection metric) */
  ioupos_seg_eval_result val, test; /* the final evaluations (test when has_test) */
} ioupos_finetune_result;

/* Runs (or resumes) a fine-tuning, or evaluates only (n_epochs 0). res (may be NULL) receives
   the final evaluation; free it with ioupos_finetune_result_free. */
IOUPOS_DEF int ioupos_finetune_run(const ioupos_finetune_opts *o, ioupos_finetune_result *res);
IOUPOS_DEF void ioupos_finetune_result_free(ioupos_finetune_result *res);
#endif /* IOUPOS__PART_CORE: sections 10-22 */

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
#if defined(IOUPOS_STATIC) && defined(__GNUC__)
/* with IOUPOS_STATIC every function is static: the ones a program does not call are fine */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#endif

/* ---- 1. Configuration: system headers, allocator, stb --------------------------------------- */

/* Every system header of the implementation is included here. Sections 1-4 need the standard
   C library only; the data path (5-9) needs POSIX (files, folders, locks, threads); the neural
   core (10-22) adds OpenMP and x86 intrinsics when the build enables them. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if IOUPOS__PART_DATA
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#define ioupos__getpid getpid
#endif
#if IOUPOS__PART_CORE && defined(_OPENMP)
#include <omp.h>
#endif
#if IOUPOS__PART_CORE && defined(__AVX2__) && defined(__FMA__) && !defined(IOUPOS_GEMM_NO_SIMD)
#include <immintrin.h>
#endif

/* The allocator is overridden as a pair: a program that defines IOUPOS_MALLOC must define
   IOUPOS_FREE too (stb's convention for STBI_MALLOC / STBI_FREE). There is no realloc or
   calloc hook on purpose: ioupos__calloc and ioupos__grow below build both from the pair, so
   an arena or a counting allocator needs only two functions. IOUPOS_ASSERT guards internal
   invariants only (a sampler table that must be non-empty, a box known to be inside the
   image), never user input, which is checked and reported through ioupos_failure_reason;
   building with NDEBUG removes the checks, not any error path. */
#ifndef IOUPOS_MALLOC
#define IOUPOS_MALLOC(sz) malloc(sz)
#define IOUPOS_FREE(p) free(p)
#endif
#ifndef IOUPOS_ASSERT
#include <assert.h>
#define IOUPOS_ASSERT(x) assert(x)
#endif

/* Thread-local storage for the failure reason (section 2), which must be per thread because
   the loader's workers and a program's own threads fail independently. C11 and C++11 have a
   keyword; MSVC and GCC / Clang in C99 mode have an extension with the same meaning. */
#if defined(__cplusplus) && __cplusplus >= 201103L
#define IOUPOS__THREAD_LOCAL thread_local
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && !defined(__STDC_NO_THREADS__)
#define IOUPOS__THREAD_LOCAL _Thread_local
#elif defined(_MSC_VER)
#define IOUPOS__THREAD_LOCAL __declspec(thread)
#else
#define IOUPOS__THREAD_LOCAL __thread
#endif

/* stb_image and stb_image_write (public domain, Sean Barrett) are compiled into this
   translation unit unless IOUPOS_NO_STB_IMPLEMENTATION says the program already has them; two
   copies would collide at link time. STBI_ONLY_PNG drops every other decoder: the data path
   reads only PNG slices, and less decoder code is less exposure to corrupt files. stb's own
   warnings are silenced around its implementation only, so a -Wall -Wextra build stays clean
   without hiding warnings in ioupos's code. */
#if IOUPOS__PART_DATA /* stb: section 5's PNG I/O */
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
#else
/* stb compiled elsewhere: its zlib compressor is declared only inside its implementation, and
   its free macros must match how that copy was built (the defaults unless you define them). */
#ifdef __cplusplus
extern "C"
#endif
unsigned char *stbi_zlib_compress(unsigned char *data, int data_len, int *out_len, int quality);
#ifndef STBI_FREE
#define STBI_FREE(p) free(p)
#endif
#ifndef STBIW_FREE
#define STBIW_FREE(p) free(p)
#endif
#endif
#endif /* IOUPOS__PART_DATA: stb */

/* ---- 2. Errors ---------------------------------------------------------------------------- */

/* The failure reason: one buffer per thread, overwritten by each failing call and never
   cleared by a successful one, so it describes the LAST failure, which is what a caller that
   just got a negative status wants. 512 bytes hold the library's messages, paths included, in
   practice; longer text is truncated by vsnprintf, never overflowed. */
static IOUPOS__THREAD_LOCAL char ioupos__reason[512];

IOUPOS_DEF const char *ioupos_failure_reason(void) { return ioupos__reason; }

/* Formats the reason and returns status unchanged, so that every error path is the single
   statement  return ioupos__fail(IOUPOS_E..., "...", ...);  The format attribute makes GCC
   and Clang check each call's arguments against its format string. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int ioupos__fail(int status, const char *fmt, ...) {
  char msg[sizeof ioupos__reason]; /* an argument may be the current reason itself */
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  memcpy(ioupos__reason, msg, sizeof msg);
  return status;
}

/* The reason goes through "%s" so that a '%' in text from outside (a CUDA error string, a
   path) is copied, not interpreted as a conversion. */
IOUPOS_DEF int ioupos_failure_set(int status, const char *reason) {
  return ioupos__fail(status, "%s", reason ? reason : "");
}

/* The enum's own spelling, for logs and test messages. A status this version does not know
   (a positive value, a code from a newer backend) gets "IOUPOS_E?" rather than NULL, so the
   result can always be printed. */
IOUPOS_DEF const char *ioupos_status_name(int status) {
  switch (status) {
    case IOUPOS_OK: return "IOUPOS_OK";
    case IOUPOS_EINVAL: return "IOUPOS_EINVAL";
    case IOUPOS_EINFEASIBLE: return "IOUPOS_EINFEASIBLE";
    case IOUPOS_ENOMEM: return "IOUPOS_ENOMEM";
    case IOUPOS_EIO: return "IOUPOS_EIO";
    case IOUPOS_EFORMAT: return "IOUPOS_EFORMAT";
    case IOUPOS_ERANGE: return "IOUPOS_ERANGE";
    case IOUPOS_EBUSY: return "IOUPOS_EBUSY";
    default: return "IOUPOS_E?";
  }
}

/* Overflow-checked array allocation (count * size), zero-filled. Built on IOUPOS_MALLOC
   because the allocator hook has no calloc; a zero-byte request allocates one byte because
   malloc(0) may return NULL, which callers would mistake for out-of-memory. Returns NULL on
   overflow or failure; the block is freed with IOUPOS_FREE. */
static void *ioupos__calloc(size_t count, size_t size) {
  void *p;
  size_t bytes;
  if (size != 0 && count > (size_t)-1 / size) return NULL;
  bytes = count * size;
  p = IOUPOS_MALLOC(bytes > 0 ? bytes : 1);
  if (p) memset(p, 0, bytes);
  return p;
}

#if IOUPOS__PART_DATA /* used from section 6 on */
/* Make room for one more element in *arr (n used, *cap allocated, elements of elem bytes),
   doubling the allocation; 0 on failure (*arr is then unchanged and still valid).
   Doubling keeps n appends at O(n) element copies in all; the copy goes through a fresh block
   because the allocator hook has no realloc. New slots are zero (ioupos__calloc). */
static int ioupos__grow(void **arr, size_t n, size_t *cap, size_t elem) {
  size_t ncap;
  void *na;
  if (n < *cap) return 1;
  ncap = *cap ? *cap * 2 : 16;
  if (ncap < *cap) return 0;
  na = ioupos__calloc(ncap, elem);
  if (!na) return 0;
  if (n) memcpy(na, *arr, n * elem);
  IOUPOS_FREE(*arr);
  *arr = na;
  *cap = ncap;
  return 1;
}
#endif /* IOUPOS__PART_DATA */

/* ---- 3. Random numbers ---------------------------------------------------------------------- */

/* SplitMix64's output function (Steele, Lea and Flood 2014, with Stafford's "Mix13" constants,
   as in Vigna's splitmix64.c): a bijective 64-bit mixer in which every input bit affects every
   output bit. It scrambles user seeds and split keys, so that seeds 0, 1, 2 or keys e, e + 1
   give unrelated PCG states and streams instead of neighbouring ones. */
static uint64_t ioupos__splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/* PCG32, i.e. PCG-XSH-RR 64/32 (O'Neill 2014; pcg32_random_r of the reference C code): a
   64-bit LCG (Knuth's MMIX multiplier; inc is odd, so every stream has period 2^64) whose
   state is output through a permutation: xorshift the high bits down to 32, then rotate by
   the state's top 5 bits. The output is computed from the OLD state, as the reference does, so
   the multiply and the permutation do not wait on each other. Not cryptographic. */
IOUPOS_DEF uint32_t ioupos_rng_u32(ioupos_rng *rng) {
  uint64_t old = rng->state;
  uint32_t xorshifted, rot;
  rng->state = old * 6364136223846793005ull + rng->inc;
  xorshifted = (uint32_t)(((old >> 18) ^ old) >> 27);
  rot = (uint32_t)(old >> 59);
  return (xorshifted >> rot) | (xorshifted << ((32u - rot) & 31u));
}

/* pcg32_srandom_r of the reference implementation: inc = 2 * stream + 1 (odd, which full
   period needs; the top bit of stream is lost, hence 2^63 streams), then one step before and
   one after adding seed, so the first output already depends on both. Streams differ in the
   LCG increment, i.e. they follow different recurrences, not offsets into one sequence. */
IOUPOS_DEF void ioupos_rng_seed_stream(ioupos_rng *rng, uint64_t seed, uint64_t stream) {
  rng->state = 0;
  rng->inc = (stream << 1) | 1u;
  (void)ioupos_rng_u32(rng);
  rng->state += seed;
  (void)ioupos_rng_u32(rng);
}

/* One 64-bit seed picks both the starting state and the stream, through SplitMix64 of seed and
   of ~seed, so nearby seeds get unrelated states and unrelated streams. The mapping is part of
   the reproducibility contract: changing it changes the crops and views of every seed. */
IOUPOS_DEF void ioupos_rng_seed(ioupos_rng *rng, uint64_t seed) {
  ioupos_rng_seed_stream(rng, ioupos__splitmix64(seed), ioupos__splitmix64(~seed));
}

/* The child is a function of the parent's current (state, inc) and key only, and the parent is
   const (not advanced). The loader derives its epoch, image and crop generators by splitting
   (section 9), so a sample's randomness does not depend on how many samples a thread drew
   before it or on which thread draws it. key enters twice (the state hash and the stream), so
   keys k and k + 1 give unrelated children; children of different keys are independent in
   practice, not provably (64-bit hashes can collide). */
IOUPOS_DEF ioupos_rng ioupos_rng_split(const ioupos_rng *rng, uint64_t key) {
  ioupos_rng child;
  uint64_t h = ioupos__splitmix64(rng->state ^ ioupos__splitmix64(rng->inc + key));
  ioupos_rng_seed_stream(&child, h, ioupos__splitmix64(h ^ key));
  return child;
}

/* High word first. The order is part of the stream contract: ioupos_rng_uniform, and
   ioupos_rng_below for n >= 2^32, consume two u32 draws this way. */
IOUPOS_DEF uint64_t ioupos_rng_u64(ioupos_rng *rng) {
  uint64_t hi = ioupos_rng_u32(rng);
  return (hi << 32) | ioupos_rng_u32(rng);
}

/* Exact uniform integers by Lemire's method ("Fast random integer generation in an interval",
   ACM TOMACS 2019): of the 2^w products x * n (x a w-bit draw), the high halves are exactly
   uniform over [0, n) once the products whose low half is below 2^w mod n are rejected. The
   modulo that computes that threshold runs only when the low half is below n (probability
   n / 2^w), so the common case costs one multiply and no division. n < 2^32 uses 32-bit draws,
   so how many PCG outputs a call consumes depends on n: streams stay reproducible as long as
   the sequence of n does. */
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
    /* the same with a 128-bit product: no division unless the low half is in the biased zone
       (__extension__: a GNU type, which -pedantic builds accept this way) */
    __extension__ typedef unsigned __int128 ioupos__u128;
    ioupos__u128 m = (ioupos__u128)ioupos_rng_u64(rng) * n;
    uint64_t low = (uint64_t)m;
    if (low < n) {
      uint64_t threshold = (0u - n) % n;
      while (low < threshold) {
        m = (ioupos__u128)ioupos_rng_u64(rng) * n;
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

/* The top 53 bits of a 64-bit draw times 2^-53: every value is an exact double, a multiple of
   2^-53 in [0, 1), never 1.0 (dividing a whole u64 by 2^64 in double would round the largest
   draws up to 1.0). The augmentations fire a transform iff u < prob, so prob 0 never fires and
   prob 1 always does. */
IOUPOS_DEF double ioupos_rng_uniform(ioupos_rng *rng) {
  return (double)(ioupos_rng_u64(rng) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- 4. Boxes, IoU and the exact crop-pair sampler ------------------------------------------ */

/* Integer volumes in int64 (exact below 2^63, i.e. for any image this library handles), then
   one double division of intersection by union. The sampler converts its IoU interval with
   this very expression (ioupos__iou_range), so the IoU of a sampled pair recomputed here lies
   in the requested interval bit for bit, with no tolerance. A box with hi <= lo on some axis
   is empty; two empty boxes have IoU 0 rather than 0 / 0. */
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

/* Used to build failure reasons: truncation at cap is silent (snprintf never writes past it)
   and the text is always NUL-terminated. */
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

/* Default cap on the ANCHORED partner draw's rejections. Each try is accepted with probability
   at least 1/8 (see above), so 256 failures in a row have probability below 2e-15: the exact
   fallback is there for correctness, not speed, and max_tries = 0 forces it for tests. */
#define IOUPOS__SAMPLER_DEFAULT_TRIES 256

/* ceil(a / b) for b > 0, and 0 for a <= 0: the smallest overlap o >= 0 with o * b >= a (every
   o qualifies when a <= 0). */
static int64_t ioupos__ceil_div(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }
static int ioupos__imin(int a, int b) { return a < b ? a : b; }
static int ioupos__imax(int a, int b) { return a > b ? a : b; }

/* Number of placements p in 0..n-1 with max(p, n-1-p) >= t. The room max(p, n-1-p) is at
   least ceil((n-1)/2) = n/2 (integer division) for every p, so t <= n/2 admits all n
   placements; otherwise the qualifying placements are the two tails p <= n-1-t and p >= t,
   n - t each and disjoint. */
static uint64_t ioupos__reach_count(int n, int t) {
  if (t > n - 1) return 0;
  if (2 * t <= n) return (uint64_t)n;
  return 2 * (uint64_t)(n - t);
}
/* The idx-th placement (0-based) with max(p, n-1-p) >= t: the low tail 0..n-1-t first, then
   the high tail t..n-1; when every placement qualifies, idx is the placement itself. */
static int ioupos__reach_pos(int n, int t, uint64_t idx) {
  if (2 * t <= n) return (int)idx;
  return idx < (uint64_t)(n - t) ? (int)idx : t + (int)(idx - (uint64_t)(n - t));
}
/* Placements whose reach class min(max(p, n-1-p), c) is exactly e. Below c the class is the
   room itself, which only the mirror pair p = e and p = n-1-e has (one placement when they
   coincide, the centre of an odd n); the class e = c gathers every placement with room >= c.
   ioupos__class_pos numbers them: for e < c index 0 is p = n-1-e and index 1 is p = e. */
static uint64_t ioupos__class_count(int n, int c, int e) {
  if (e >= c) return ioupos__reach_count(n, c);
  return 2 * e == n - 1 ? 1u : 2u;
}
static int ioupos__class_pos(int n, int c, int e, uint64_t idx) {
  if (e >= c) return ioupos__reach_pos(n, c, idx);
  return idx == 0 ? n - 1 - e : e;
}

/* Ordered placement pairs on internal axis k with overlap class o (see J above). The o = 0
   case is the closed form of sum_{d=c}^{n-1} 2 (n - d) = (n - c)(n - c + 1); a displacement
   beyond n - 1 does not fit (weight 0). A product of three weights never exceeds the number
   of placement pairs, below 4e18 by init's check, so no uint64 sum of them overflows. */
static uint64_t ioupos__joint_weight(const ioupos_iou_sampler *s, int k, int o) {
  int64_t n = s->n[k], c = s->c[k], d = c - o;
  if (o == 0) return n > c ? (uint64_t)((n - c) * (n - c + 1)) : 0u;
  if (d > n - 1) return 0;
  return d == 0 ? (uint64_t)n : (uint64_t)(2 * (n - d));
}

/* Index helpers for the anchored tables. s1 is laid out [oA][lC][oB] and s0 [lB][lC][oA],
   the suffix dimension innermost and contiguous, so a decode (ioupos__draw_reflected) binary
   searches one contiguous row. Overlap dimensions start at omin (no smaller nonzero overlap
   can occur on the axis) and have one extra slot, at c + 1, holding the empty suffix 0: it
   ends the recurrences without a bounds test. */
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
/* H(l): nonzero valid overlap vectors with o_k >= l_k (l inside the tabulated ranges). s0 is
   NULL when no nonzero vector is valid (U < L1: the interval is IoU 0 only), hence 0. */
static uint64_t ioupos__nonzero_count(const ioupos_iou_sampler *s, const int l[3]) {
  if (!s->s0) return 0;
  return s->s0[ioupos__s0_index(s, l[1], l[2], l[0])];
}
/* The smallest nonzero overlap a partner can have on axis k when the first crop's reach class
   is e: u = c - o must not exceed the room m, so o >= c - m, and overlap 0 belongs to the zero
   class, counted apart; hence l = max(1, c - e) (e = min(m, c) gives the same bound). */
static int ioupos__lower_bound(const ioupos_iou_sampler *s, int k, int e) {
  return ioupos__imax(1, s->c[k] - e);
}
/* Does a placement with reach classes (eA, eB, eC) have a valid partner? With L = 0, an axis
   whose room reaches c can push the partner off entirely (overlap 0, I = 0, valid); otherwise
   some nonzero vector with o_k >= l_k must be valid (H(l) > 0). Both tests can only turn true
   as any e grows, which the binary search over eC in ioupos__sampler_tables relies on. */
static int ioupos__first_valid(const ioupos_iou_sampler *s, int eA, int eB, int eC) {
  int l[3];
  if (s->inter_lo == 0 && (eA >= s->c[0] || eB >= s->c[1] || eC >= s->c[2])) return 1;
  l[0] = ioupos__lower_bound(s, 0, eA);
  l[1] = ioupos__lower_bound(s, 1, eB);
  l[2] = ioupos__lower_bound(s, 2, eC);
  return ioupos__nonzero_count(s, l) > 0;
}

/* Builds the tables of s->mode (the notes above say what each holds) and sets n_pairs and, for
   ANCHORED, n_first. Returns IOUPOS_OK, also when n_pairs is 0 (init reports infeasibility
   with a better message), or IOUPOS_ENOMEM, leaving what was allocated to
   ioupos_iou_sampler_free. Work: O(c_A c_B) for JOINT; ANCHORED adds O(c_A c_B nl_C) for s1,
   O(c_A nl_B nl_C) for s0 and O(ne_A ne_B log ne_C) constant-time lookups for the first
   placements. */
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
      /* P = 0 means I = 0 whatever oC, valid only when L = 0 (then all of J_C counts);
         otherwise the valid oC form the run [ceil(L / P), min(c_C, U / P)], one difference
         of prefix sums. */
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
        /* nonzero oC with oA oB oC in [L1, U] and oC >= lC: the run [max(lC, ceil(L1 / P)),
           min(c_C, U / P)], so each s1 entry adds that run's length to the next oB's */
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

  /* ANCHORED: first placements, by reach class. A cell (eA, eB) weighs class_count_A *
     class_count_B * reach_count_C(eC*), eC* the smallest valid C class: the placements of
     those classes whose room on C reaches eC*. A cell with no valid eC (eC* > emax) weighs 0
     but keeps its slot, so a cell index maps back to (eA, eB) by division. */
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

/* Safe on NULL, on a sampler whose init failed and on one already freed: the pointers are
   reset, and a draw on a freed sampler fails cleanly because draw checks its tables. */
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

/* The IoU of two crops of volume V with intersection I, as ioupos_box_iou computes it (union
   2V - I); used in messages. */
static double ioupos__iou_of(int64_t I, int64_t V) { return (double)I / (double)(2 * V - I); }

/* The intersection volumes I in [0, min(va, vb)] of a box of volume va and one of volume vb
   whose IoU (double)I / (double)(va + vb - I), exactly as ioupos_box_iou computes it, lies in
   [lo, hi]: the range [*ilo, *ihi] (*ilo > *ihi when there is none). The computed IoU is
   non-decreasing in I (the numerator grows, the denominator shrinks, rounding is monotone), so
   two binary searches find the ends. Searching on the double expression itself, rather than
   solving I >= lo (va + vb) / (1 + lo) algebraically, makes the conversion agree with
   ioupos_box_iou at every boundary (an interval end that is exactly some I's IoU, or falls
   between two): whatever the sampler draws passes a check made with ioupos_box_iou. */
static void ioupos__iou_range(int64_t va, int64_t vb, double lo, double hi, int64_t *ilo,
                              int64_t *ihi) {
  int64_t top = va < vb ? va : vb, sum = va + vb, l = 0, h = top + 1;
  while (l < h) { /* smallest I with iou >= lo */
    int64_t mid = l + (h - l) / 2;
    if ((double)mid / (double)(sum - mid) >= lo) h = mid; else l = mid + 1;
  }
  *ilo = l;
  l = -1, h = top; /* largest I with iou <= hi */
  while (l < h) {
    int64_t mid = h - (h - l) / 2;
    if ((double)mid / (double)(sum - mid) <= hi) l = mid; else h = mid - 1;
  }
  *ihi = l;
}

/* Validation first, every reason naming shape, crop and interval. Then, in order:
   (1) the size limits: below 4e18 ordered placement pairs, so every count (n_pairs, H, the
       cumulative tables) fits in uint64 without overflow checks; at most 1e8 overlap classes
       prod (c_k + 1), which also bounds V = prod c_k (I fits in int64 with room to spare),
       the table sizes and the exact fallback's enumeration;
   (2) the interval as an integer range [inter_lo, inter_hi] of I (empty: EINFEASIBLE);
   (3) the internal axis order and the per-axis ranges omin, lam and e;
   (4) the tables, whose total n_pairs decides feasibility.
   On failure nothing stays allocated, ioupos_iou_sampler_free is still safe, and draw refuses
   the sampler (n_pairs is 0). */
IOUPOS_DEF int ioupos_iou_sampler_init(ioupos_iou_sampler *s, int dims, const int shape[],
                                       const int crop[], double min_iou, double max_iou,
                                       int mode) {
  char sh[64] = "?", cr[64] = "?";
  int k, order[3], nl[3], user_c[3], user_n[3], st;
  int64_t V = 1;
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
  ioupos__iou_range(V, V, min_iou, max_iou, &s->inter_lo, &s->inter_hi);
  if (s->inter_lo > s->inter_hi)
    return ioupos__fail(IOUPOS_EINFEASIBLE,
                        "IoU sampler: no intersection volume of two %s crops has IoU in "
                        "[%g, %g] (image %s); widen the interval", cr, min_iou, max_iou, sh);

  /* Internal axes: the user's axes plus a dummy (c = n = 1) for 2D, ordered by the size of
     their range of partner-box lower bounds, largest first. Why: axis A's range costs no table
     dimension (s0's suffix index over oA doubles as lA), axis B's multiplies s0 only, and
     axis C's multiplies both s1 and s0, so the widest range goes to A, the narrowest to C.
     The dummy axis always has overlap 1: it multiplies I and every count by 1. */
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
  /* For the message: the smallest intersection two crops can have (crops in opposite corners,
     overlap max(0, 2c - shape) per axis); the largest is V (the same placement). In between
     only products of per-axis overlaps occur, hence "with gaps". */
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

/* Smallest i in [lo, hi] with key(i) > r for a non-decreasing cumulative array. With r
   uniform in [0, total) this returns i with probability (cum[i] - cum[i-1]) / total: inverse
   CDF sampling over a table, one rng draw and O(log size) steps. */
static size_t ioupos__search_cum(const uint64_t *cum, size_t lo, size_t hi, uint64_t r) {
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (cum[mid] > r) hi = mid; else lo = mid + 1;
  }
  return lo;
}

/* Draw k in 1..K with probability proportional to k. Inverse CDF of the triangular numbers:
   k is the smallest with k (k + 1) / 2 > r. The square root gives k up to rounding and the
   two integer loops correct it, so the result is exact; K (K + 1) / 2 stays below 2^63
   because every n is below 2e9 (init's 4e18 limit on pairs). */
static int64_t ioupos__draw_triangular(ioupos_rng *rng, int64_t K) {
  uint64_t r = ioupos_rng_below(rng, (uint64_t)(K * (K + 1) / 2));
  int64_t k = (int64_t)((1.0 + sqrt(1.0 + 8.0 * (double)r)) / 2.0);
  if (k < 1) k = 1;
  if (k > K) k = K;
  while (k > 1 && (uint64_t)(k * (k - 1) / 2) > r) --k;
  while (k < K && (uint64_t)(k * (k + 1) / 2) <= r) ++k;
  return k;
}

/* JOINT draw in three exact steps: (1) the cell (oA, oB) by inverse CDF over joint_cum, whose
   weights are J_A J_B times the summed J_C of the valid oC; (2) oC within its valid run
   [lo, hi] by inverse CDF over J_C's prefix sums (a cell with P = 0 has weight only when
   L = 0, and then every oC in 0..c_C is valid); (3) per axis, a placement pair with that
   overlap: d = c - o, or for o = 0 a d in c..n-1 with weight 2 (n - d); then one of the
   2 (n - d) ordered pairs (pos, pos + d) or (pos + d, pos), or p = q uniform when d = 0.
   Every valid ordered pair of placements thus has probability exactly 1 / n_pairs. */
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

/* ANCHORED first crop: a cell (eA, eB) by inverse CDF over first_cum; the remainder r, uniform
   over that cell's class_count_A * class_count_B * reach_count_C(eC*) placements, is decoded
   as mixed-radix digits (C fastest). Uniform over the n_first placements with a partner. */
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

/* A uniform valid u in prod [0, m_k] (see the notes above); returns 0 if there is none.
   One ioupos_rng_below over H + Z. The nonzero part is ordered by (oA, oB, oC) ascending:
   top - s0[oA] vectors come before oA, so oA is the first value at which that count exceeds
   r (binary search on the suffix row), likewise oB in s1's row for that oA, and oC is the
   r-th value of its contiguous valid run. The zero part (only when L = 0) is split by the
   first axis whose overlap is zero, which makes its blocks disjoint with product sizes. */
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
      /* mixed-radix digits, axis 2 fastest. A zero class exists on axis j only when
         m_j >= c_j, and then l_j = 1 and N_j = c_j: digit t < c_j is the nonzero u = t and
         t >= c_j the zero-overlap u = t, so one formula covers both ranges */
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

/* Exact slow path for the partner of p: enumerate overlap classes with their multiplicities.
   Two passes over all prod (c_k + 1) overlap vectors (at most 1e8, init's limit): the first
   sums each valid vector's number of partners of p, the second stops at the r-th. Per axis the
   partners with overlap o are: o = 0, every q with |q - p| >= c on either side; o = c, q = p;
   otherwise q = p - d and q = p + d where inside. q is then uniform among them, so the result
   has exactly the fast path's distribution. Reached after max_tries rejections only. */
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

/* ANCHORED draw: p uniform over the placements with a partner, then a partner uniform over p's
   valid partners: a uniform reflected displacement u from the valid set for p's rooms m, a
   sign per axis (one u32 per try, bit k for axis k), accept if q lies inside the image. A try
   fails only when a sign points to the near side and u exceeds the room there, or when u = 0
   meets its second sign; the far-side signs always fit, hence acceptance >= 2^-d'. */
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

/* Checks only what a caller can get wrong after init (NULL pointers, a sampler whose init
   failed or that was freed); everything else was validated once by init, so a draw on a good
   sampler cannot fail. Internal axes go back to user order and the 2D dummy axis is dropped.
   The sampler is only read: concurrent draws are safe with one rng per thread. */
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

/* Local crops. One axis of a request: A = [p, p + a), crop b, positions 0..n-1 (n = shape -
   b + 1), m = min(a, b). Over all integers x the overlap of [x, x + b) with A is a trapezoid:
     0 for x <= p - b;  x + b - p in 1..m-1 for x in [p - b + 1, p - b + m - 1] (rising);
     m for x in [p - b + m, p + a - m] (plateau);  p + a - x in m-1..1 for x in
     [p + a - m + 1, p + a - 1] (falling);  0 for x >= p + a.
   The positions with a given overlap are these runs clipped to [0, n - 1], so counts over any
   range of overlaps, and the j-th position with a given overlap, are closed forms. Internal
   axes are sorted by m (2D gets a dummy axis with p = 0, a = b = n = m = 1, first); the last
   one (largest m) is summed in closed form inside the loop over the other two. */
typedef struct ioupos__lax {
  /* p: A's start, a: A's length, b: the crop's length, n: the crop's positions (shape - b + 1),
     m = min(a, b): the largest overlap; int64 so their sums and products cannot overflow. */
  int64_t p, a, b, n, m;
} ioupos__lax;

typedef struct ioupos__local_req {
  ioupos__lax ax[3]; /* internal order, ascending m */
  int user[3];       /* internal -> user axis, -1 for the dummy */
  int64_t ilo, ihi;  /* the interval as intersection volumes; ilo > ihi when empty */
} ioupos__local_req;

static int64_t ioupos__span(int64_t lo, int64_t hi) { return hi >= lo ? hi - lo + 1 : 0; }
static int64_t ioupos__max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t ioupos__min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Positions of the axis whose overlap with A lies in [lo, hi]. O(1): the clipped lengths of
   the trapezoid's runs, namely the two zero runs (when lo = 0), the rising and the falling
   ramp for overlaps in [max(lo, 1), min(hi, m - 1)] (each ramp maps overlap to position one
   to one, so its count is an overlap range intersected with the positions in [0, n - 1]), and
   the plateau (when hi = m). */
static int64_t ioupos__lax_count(const ioupos__lax *x, int64_t lo, int64_t hi) {
  int64_t c = 0, rlo, rhi;
  if (lo < 0) lo = 0;
  if (hi > x->m) hi = x->m;
  if (lo > hi) return 0;
  if (lo == 0)
    c += ioupos__span(0, ioupos__min64(x->n - 1, x->p - x->b)) +
         ioupos__span(ioupos__max64(0, x->p + x->a), x->n - 1);
  rlo = ioupos__max64(lo, 1);
  rhi = ioupos__min64(hi, x->m - 1);
  if (rlo <= rhi) {
    /* rising x = p - b + o in [0, n - 1]  <=>  o in [b - p, n - 1 - p + b] */
    c += ioupos__span(ioupos__max64(rlo, x->b - x->p),
                      ioupos__min64(rhi, x->n - 1 - x->p + x->b));
    /* falling x = p + a - o in [0, n - 1]  <=>  o in [p + a - n + 1, p + a] */
    c += ioupos__span(ioupos__max64(rlo, x->p + x->a - x->n + 1),
                      ioupos__min64(rhi, x->p + x->a));
  }
  if (hi == x->m)
    c += ioupos__span(ioupos__max64(0, x->p - x->b + x->m),
                      ioupos__min64(x->n - 1, x->p + x->a - x->m));
  return c;
}

/* The j-th position (0-based; runs in the order above, ascending) with overlap exactly o.
   For 0 < o < m the rising position comes before the falling one, as in ioupos__lax_count, so
   j names exactly one position; the assertion checks that the caller's j is in range. */
static int64_t ioupos__lax_pick(const ioupos__lax *x, int64_t o, int64_t j) {
  int64_t rise;
  if (o == 0) {
    int64_t left = ioupos__span(0, ioupos__min64(x->n - 1, x->p - x->b));
    return j < left ? j : ioupos__max64(0, x->p + x->a) + (j - left);
  }
  if (o == x->m) return ioupos__max64(0, x->p - x->b + x->m) + j;
  rise = x->p - x->b + o;
  if (rise >= 0 && rise <= x->n - 1) {
    if (j == 0) return rise;
    --j;
  }
  IOUPOS_ASSERT(j == 0);
  return x->p + x->a - o;
}

/* Text "A = 10..106 x 0..96" of a box for messages. */
static void ioupos__format_box(char *buf, size_t cap, const ioupos_box *b) {
  size_t used = 0;
  int k;
  if (cap == 0) return;
  buf[0] = 0;
  for (k = 0; k < b->dims && k < 3 && used < cap; ++k) {
    int w = snprintf(buf + used, cap - used, k ? " x %d..%d" : "%d..%d", b->lo[k], b->hi[k]);
    if (w < 0) break;
    used += (size_t)w;
  }
}

/* Checks shared by the local-crop functions: dims, sizes, interval. shape may be NULL (the
   feasibility check's image as large as needed). Volumes below 2^61 keep va + vb - I and the
   products of overlaps exact in int64; the bound itself is a power of two, exact in double. */
static int ioupos__local_check(const char *fn, int dims, const int shape[], const int a[],
                               const int b[], double lo, double hi) {
  char sh[64] = "any", as[64] = "?", bs[64] = "?";
  double vol_s = 1.0, vol_a = 1.0, vol_b = 1.0;
  int k;
  if (dims != 2 && dims != 3)
    return ioupos__fail(IOUPOS_EINVAL, "%s: dims is %d; it must be 2 or 3", fn, dims);
  if (!a || !b) return ioupos__fail(IOUPOS_EINVAL, "%s: a size argument is NULL", fn);
  if (shape) ioupos_format_shape(sh, sizeof sh, dims, shape);
  ioupos_format_shape(as, sizeof as, dims, a);
  ioupos_format_shape(bs, sizeof bs, dims, b);
  for (k = 0; k < dims; ++k) {
    if (a[k] <= 0 || b[k] <= 0 || (shape && shape[k] <= 0))
      return ioupos__fail(IOUPOS_EINVAL, "%s: image shape %s, box %s and crop %s must be "
                          "positive on every axis", fn, sh, as, bs);
    if (shape && (a[k] > shape[k] || b[k] > shape[k]))
      return ioupos__fail(IOUPOS_EINVAL, "%s: box %s or crop %s is larger than the image shape "
                          "%s on axis %d", fn, as, bs, sh, k);
    vol_a *= a[k];
    vol_b *= b[k];
    if (shape) vol_s *= shape[k];
  }
  if (!(lo >= 0.0 && lo <= 1.0 && hi >= 0.0 && hi <= 1.0))
    return ioupos__fail(IOUPOS_EINVAL, "%s: IoU interval [%g, %g] must lie within [0, 1] (and "
                        "not be NaN); image %s, box %s, crop %s", fn, lo, hi, sh, as, bs);
  if (lo > hi)
    return ioupos__fail(IOUPOS_EINVAL, "%s: IoU interval [%g, %g] is reversed (min > max); image "
                        "%s, box %s, crop %s", fn, lo, hi, sh, as, bs);
  if (vol_s >= 2305843009213693952.0 || vol_a >= 2305843009213693952.0 ||
      vol_b >= 2305843009213693952.0)
    return ioupos__fail(IOUPOS_ERANGE, "%s: image %s, box %s or crop %s is too large for the "
                        "exact arithmetic (volumes must stay below 2^61)", fn, sh, as, bs);
  return IOUPOS_OK;
}

/* Validate a count / draw request and set up its internal axes. They are sorted by m
   ascending (stable, so equal m keep user order): a walk loops over the overlaps of the two
   smallest and sums the largest in closed form, O((m0 + 1)(m1 + 1)), capped at 1e8. */
static int ioupos__local_setup(const char *fn, int dims, const int shape[], const ioupos_box *A,
                               const int b[], double lo, double hi, ioupos__local_req *q) {
  int a[3], k, j, st;
  int64_t va = 1, vb = 1;
  if (!shape || !A)
    return ioupos__fail(IOUPOS_EINVAL, "%s: shape or box A is NULL", fn);
  if (A->dims != dims)
    return ioupos__fail(IOUPOS_EINVAL, "%s: box A has dims %d, the request %d", fn, A->dims, dims);
  if (dims != 2 && dims != 3)
    return ioupos__fail(IOUPOS_EINVAL, "%s: dims is %d; it must be 2 or 3", fn, dims);
  for (k = 0; k < dims; ++k) {
    if (A->lo[k] < 0 || A->hi[k] <= A->lo[k] || (shape[k] > 0 && A->hi[k] > shape[k])) {
      char sh[64], ab[96];
      ioupos_format_shape(sh, sizeof sh, dims, shape);
      ioupos__format_box(ab, sizeof ab, A);
      return ioupos__fail(IOUPOS_EINVAL, "%s: box A = %s must be non-empty and inside the image "
                          "%s", fn, ab, sh);
    }
    a[k] = A->hi[k] - A->lo[k];
  }
  st = ioupos__local_check(fn, dims, shape, a, b, lo, hi);
  if (st) return st;
  memset(q, 0, sizeof *q);
  for (k = 0; k < 3; ++k) { /* 2D: internal slot 0 is the dummy axis */
    int uk = k - (3 - dims);
    ioupos__lax *x = &q->ax[k];
    q->user[k] = uk;
    if (uk < 0) {
      x->p = 0, x->a = x->b = x->n = x->m = 1;
      continue;
    }
    x->p = A->lo[uk];
    x->a = a[uk];
    x->b = b[uk];
    x->n = (int64_t)shape[uk] - b[uk] + 1;
    x->m = x->a < x->b ? x->a : x->b;
    va *= x->a;
    vb *= x->b;
  }
  for (k = 1; k < 3; ++k) /* insertion sort by m, stable */
    for (j = k; j > 0 && q->ax[j].m < q->ax[j - 1].m; --j) {
      ioupos__lax t = q->ax[j];
      int u = q->user[j];
      q->ax[j] = q->ax[j - 1], q->user[j] = q->user[j - 1];
      q->ax[j - 1] = t, q->user[j - 1] = u;
    }
  if ((double)(q->ax[0].m + 1) * (double)(q->ax[1].m + 1) > 1e8) {
    char bs[64], ab[96];
    ioupos_format_shape(bs, sizeof bs, dims, b);
    ioupos__format_box(ab, sizeof ab, A);
    return ioupos__fail(IOUPOS_ERANGE, "%s: box A = %s with crop %s needs more than 1e8 overlap "
                        "pairs per draw", fn, ab, bs);
  }
  ioupos__iou_range(va, vb, lo, hi, &q->ilo, &q->ihi);
  return IOUPOS_OK;
}

/* Positions of the last internal axis given the product P of the other two overlaps. For
   P > 0 the valid overlaps form the run [ceil(ilo / P), min(m, ihi / P)]; for P = 0, I = 0
   and every overlap is valid iff ilo = 0. *zlo and *zhi are set except when that fails. */
static int64_t ioupos__local_zcount(const ioupos__local_req *q, int64_t P, int64_t *zlo,
                                    int64_t *zhi) {
  const ioupos__lax *z = &q->ax[2];
  if (P == 0) {
    if (q->ilo > 0) return 0;
    *zlo = 0, *zhi = z->m;
  } else {
    *zlo = ioupos__ceil_div(q->ilo, P);
    *zhi = ioupos__min64(z->m, q->ihi / P);
  }
  return ioupos__lax_count(z, *zlo, *zhi);
}

/* Walk the overlap pairs (o0, o1) of the first two internal axes in order, summing the number
   of valid positions; stops at the pair where the running sum first exceeds target (o[] and
   *before, the sum before it, say which). Returns the sum so far (the total if it never
   stops: pass UINT64_MAX). */
static uint64_t ioupos__local_walk(const ioupos__local_req *q, uint64_t target, int64_t o[2],
                                   uint64_t *before) {
  const ioupos__lax *x = &q->ax[0], *y = &q->ax[1];
  uint64_t acc = 0;
  int64_t o0, o1, zlo, zhi;
  if (q->ilo > q->ihi) return 0;
  for (o0 = 0; o0 <= x->m; ++o0) {
    int64_t c0 = ioupos__lax_count(x, o0, o0);
    if (c0 == 0) continue;
    for (o1 = 0; o1 <= y->m; ++o1) {
      int64_t c1 = ioupos__lax_count(y, o1, o1), cz;
      uint64_t w;
      if (c1 == 0) continue;
      cz = ioupos__local_zcount(q, o0 * o1, &zlo, &zhi);
      if (cz == 0) continue;
      w = (uint64_t)c0 * (uint64_t)c1 * (uint64_t)cz;
      if (acc + w > target) {
        o[0] = o0, o[1] = o1;
        *before = acc;
        return acc + w;
      }
      acc += w;
    }
  }
  return acc;
}

/* No valid position is a count of 0 with IOUPOS_OK: only the draw treats it as infeasible. */
IOUPOS_DEF int ioupos_local_crop_count(int dims, const int shape[], const ioupos_box *A,
                                       const int b[], double min_iou, double max_iou,
                                       uint64_t *count) {
  ioupos__local_req q;
  int64_t o[2];
  uint64_t before;
  int st;
  if (!count) return ioupos__fail(IOUPOS_EINVAL, "ioupos_local_crop_count: count is NULL");
  *count = 0;
  st = ioupos__local_setup("local crop", dims, shape, A, b, min_iou, max_iou, &q);
  if (st) return st;
  *count = ioupos__local_walk(&q, UINT64_MAX, o, &before);
  return IOUPOS_OK;
}

/* Two walks: one for the total (to draw r uniform in [0, total)), one that stops at r's cell
   (o0, o1). Within the cell r splits into digits (j0, j1, rz), rz fastest; o_z is found by a
   binary search on the count over [zlo, oz], which grows with oz, and each axis's digit picks
   a position with ioupos__lax_pick. Every valid position has probability 1 / total. The walk
   is repeated rather than stored so that a draw allocates nothing. */
IOUPOS_DEF int ioupos_local_crop_draw(int dims, const int shape[], const ioupos_box *A,
                                      const int b[], double min_iou, double max_iou,
                                      ioupos_rng *rng, ioupos_box *out) {
  ioupos__local_req q;
  int64_t o[2] = {0, 0}, zlo = 0, zhi = 0, cz, c0, c1, pos[3], lo, hi;
  uint64_t total, r, before = 0;
  int st, k;
  if (!rng || !out)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_local_crop_draw: rng or out is NULL");
  st = ioupos__local_setup("local crop", dims, shape, A, b, min_iou, max_iou, &q);
  if (st) return st;
  total = ioupos__local_walk(&q, UINT64_MAX, o, &before);
  if (total == 0) {
    char sh[64], bs[64], as[64], ab[96];
    int asz[3], j;
    for (j = 0; j < dims; ++j) asz[j] = A->hi[j] - A->lo[j];
    ioupos_format_shape(sh, sizeof sh, dims, shape);
    ioupos_format_shape(bs, sizeof bs, dims, b);
    ioupos_format_shape(as, sizeof as, dims, asz);
    ioupos__format_box(ab, sizeof ab, A);
    return ioupos__fail(IOUPOS_EINFEASIBLE, "local crop: no %s crop in a %s image has IoU in "
                        "[%g, %g] with the %s box A = %s", bs, sh, min_iou, max_iou, as, ab);
  }
  r = ioupos_rng_below(rng, total);
  ioupos__local_walk(&q, r, o, &before);
  r -= before;
  c0 = ioupos__lax_count(&q.ax[0], o[0], o[0]);
  c1 = ioupos__lax_count(&q.ax[1], o[1], o[1]);
  cz = ioupos__local_zcount(&q, o[0] * o[1], &zlo, &zhi);
  IOUPOS_ASSERT(c0 > 0 && c1 > 0 && cz > 0 && r < (uint64_t)c0 * (uint64_t)c1 * (uint64_t)cz);
  { /* r = (j0 * c1 + j1) * cz + rz */
    uint64_t rz = r % (uint64_t)cz;
    r /= (uint64_t)cz;
    pos[1] = ioupos__lax_pick(&q.ax[1], o[1], (int64_t)(r % (uint64_t)c1));
    pos[0] = ioupos__lax_pick(&q.ax[0], o[0], (int64_t)(r / (uint64_t)c1));
    lo = zlo, hi = zhi; /* smallest oz with count(zlo..oz) > rz */
    while (lo < hi) {
      int64_t mid = lo + (hi - lo) / 2;
      if ((uint64_t)ioupos__lax_count(&q.ax[2], zlo, mid) > rz) hi = mid; else lo = mid + 1;
    }
    pos[2] = ioupos__lax_pick(&q.ax[2], lo,
                              (int64_t)(rz - (uint64_t)ioupos__lax_count(&q.ax[2], zlo, lo - 1)));
  }
  memset(out, 0, sizeof *out);
  out->dims = dims;
  for (k = 0; k < 3; ++k) {
    int uk = q.user[k];
    if (uk < 0) continue;
    out->lo[uk] = (int)pos[k];
    out->hi[uk] = (int)pos[k] + b[uk];
  }
  return IOUPOS_OK;
}

/* Existence only, no positions: per axis the achievable overlaps form the whole range
   [max(0, a + b - shape), min(a, b)] (two segments of lengths a and b inside shape overlap by
   at least a + b - shape, and moving one by a voxel changes the overlap by at most 1), and the
   axes are independent, so a valid pair exists iff some vector of that product box has I in
   [ilo, ihi]. The loop runs over the two shortest ranges, tests the third as an interval
   intersection, and stops at the first hit. */
IOUPOS_DEF int ioupos_local_crop_feasible(int dims, const int shape[], const int a[],
                                          const int b[], double min_iou, double max_iou) {
  int64_t lo3[3], hi3[3], ilo, ihi, va = 1, vb = 1, imin = 1, imax = 1, o0, o1;
  int k, j, st;
  st = ioupos__local_check("local crop feasibility", dims, shape, a, b, min_iou, max_iou);
  if (st) return st;
  for (k = 0; k < 3; ++k) { /* per-axis achievable overlaps [lo3, hi3]; 2D: dummy [1, 1] */
    int uk = k - (3 - dims);
    if (uk < 0) {
      lo3[k] = hi3[k] = 1;
      continue;
    }
    hi3[k] = a[uk] < b[uk] ? a[uk] : b[uk];
    lo3[k] = shape ? ioupos__max64(0, (int64_t)a[uk] + b[uk] - shape[uk]) : 0;
    va *= a[uk];
    vb *= b[uk];
    imin *= lo3[k];
    imax *= hi3[k];
  }
  for (k = 1; k < 3; ++k) /* ascending range length: the loop runs over the two shortest */
    for (j = k; j > 0 && hi3[j] - lo3[j] < hi3[j - 1] - lo3[j - 1]; --j) {
      int64_t t = lo3[j];
      lo3[j] = lo3[j - 1], lo3[j - 1] = t;
      t = hi3[j], hi3[j] = hi3[j - 1], hi3[j - 1] = t;
    }
  if ((double)(hi3[0] - lo3[0] + 1) * (double)(hi3[1] - lo3[1] + 1) > 1e8)
    return ioupos__fail(IOUPOS_ERANGE, "local crop feasibility: sizes too large for the exact "
                        "check (more than 1e8 overlap pairs)");
  ioupos__iou_range(va, vb, min_iou, max_iou, &ilo, &ihi);
  if (ilo <= ihi)
    for (o0 = lo3[0]; o0 <= hi3[0]; ++o0)
      for (o1 = lo3[1]; o1 <= hi3[1]; ++o1) {
        int64_t P = o0 * o1;
        if (P == 0 ? ilo == 0
                   : ioupos__max64(lo3[2], ioupos__ceil_div(ilo, P)) <=
                         ioupos__min64(hi3[2], ihi / P))
          return IOUPOS_OK;
      }
  {
    char sh[64] = "any", as[64], bs[64];
    if (shape) ioupos_format_shape(sh, sizeof sh, dims, shape);
    ioupos_format_shape(as, sizeof as, dims, a);
    ioupos_format_shape(bs, sizeof bs, dims, b);
    return ioupos__fail(IOUPOS_EINFEASIBLE, "local crops: no %s crop has an IoU in [%g, %g] with "
                        "a %s box (image shape %s); their IoU ranges over [%.4g, %.4g] (with "
                        "gaps)", bs, min_iou, max_iou, as, sh,
                        (double)imin / (double)(va + vb - imin),
                        (double)imax / (double)(va + vb - imax));
  }
}

#if IOUPOS__PART_DATA /* sections 5-9: not with IOUPOS_ONLY_SAMPLER */
/* ---- 5. Image I/O --------------------------------------------------------------------------- */

/* stdio and a whole-file read, no mmap: every caller (PNG slices, NIfTI volumes, split files,
   checkpoints, run state) needs the whole file anyway. The buffer gets one spare byte so an
   empty file still yields a non-NULL buffer (malloc(0) may return NULL, which would read as
   out-of-memory). The size comes from ftell, so files are limited to LONG_MAX bytes. On any
   failure *data is NULL and *size 0; on success the caller frees *data with IOUPOS_FREE. */
IOUPOS_DEF int ioupos_read_file(const char *path, void **data, size_t *size) {
  FILE *f;
  long len;
  unsigned char *buf;
  *data = NULL;
  *size = 0;
  f = fopen(path, "rb");
  if (!f) return ioupos__fail(IOUPOS_EIO, "%s: cannot open: %s", path, strerror(errno));
  { /* fopen opens a folder too, and its "size" is then anything up to LONG_MAX */
    struct stat sb;
    int st = fstat(fileno(f), &sb) != 0 ? 2
             : S_ISDIR(sb.st_mode)       ? 1
             : !S_ISREG(sb.st_mode)      ? 3
                                         : 0;
    if (st) {
      int e = errno;
      fclose(f);
      if (st == 1) return ioupos__fail(IOUPOS_EIO, "%s is a directory, not a file", path);
      if (st == 2) return ioupos__fail(IOUPOS_EIO, "%s: cannot stat: %s", path, strerror(e));
      return ioupos__fail(IOUPOS_EIO, "%s: not a regular file", path);
    }
  }
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

/* PNG stores its integers big-endian ("network byte order" in the PNG specification). */
static uint32_t ioupos__be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Walk the PNG chunk list before stb_image sees it: stb_image sizes buffers from declared chunk
   lengths and image dimensions, so a few corrupt bytes could make it allocate gigabytes.
   Per the PNG specification a chunk is a 4-byte length, a 4-byte type, the data and a 4-byte
   CRC (12 bytes besides the data); IHDR comes first with 13 data bytes, width and height
   first; IEND ends the stream. Only the structure and the pixel count (against
   IOUPOS_MAX_IMAGE_PIXELS) are checked here: CRCs and the compressed data are stb_image's
   business, and bytes after IEND are ignored. */
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

/* Decodes with stb_image at 16 bits per channel whatever the file's depth: stb widens 8-bit
   samples by replication (v * 257), so dividing by 65535 gives exactly v / 255 for 8-bit files
   and v / 65535 for 16-bit ones, one code path for both. comp is the file's channel count
   (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA); alpha is ignored. Colour becomes luma with the
   ITU-R 601-2 weights of PIL's convert("L"), computed in double without PIL's rounding to 8
   bits. On failure img is left empty (h = w = 0, data NULL), so freeing it is always safe. */
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
  /* stb_image takes the buffer length as an int */
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

/* The whole file is read first so that the chunk precheck sees it before stb_image does; the
   path names the file in every failure reason. */
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

/* Safe on NULL, on a failed load and twice in a row. */
IOUPOS_DEF void ioupos_image_free(ioupos_image *img) {
  if (!img) return;
  IOUPOS_FREE(img->data);
  img->data = NULL;
  img->h = img->w = 0;
}

/* The temporary-and-rename protocol (the API half says why). The temporary's name carries the
   writer's pid, so concurrent writers never share one and ioupos_dir_clean_stale can tell a
   dead writer's leftover from a live one's. rename() within one folder is atomic on POSIX:
   readers see the old file or the complete new one, never a mix. The folder is not fsynced,
   so after a power loss the rename itself may be lost (the old file remains), but a new name
   that survives always has its data. path plus the suffix must fit in 4095 bytes. */
IOUPOS_DEF int ioupos_write_file_atomic(const char *path, const void *data, size_t size) {
  char tmp[4096];
  FILE *f;
  int bad, e;
  if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)ioupos__getpid()) >= (int)sizeof tmp)
    return ioupos__fail(IOUPOS_EINVAL, "%s: path too long", path);
  { /* a fresh file: never follow a symlink or reuse a leftover from a crashed run */
    int fd;
    remove(tmp);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
    f = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (fd >= 0 && !f) close(fd);
  }
  if (!f) return ioupos__fail(IOUPOS_EIO, "%s: cannot create (%s)", path, strerror(errno));
  errno = 0;
  bad = size && fwrite(data, 1, size, f) != size;
  bad |= fflush(f) != 0;
  bad |= ferror(f) != 0;
  bad |= fsync(fileno(f)) != 0; /* the data is on disk before the name points to it */
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

/* -- folders: creation and holding -- */

/* mkdir -p. *created_from (may be NULL): where the name of the first folder it created starts
   in path (path[0..*created_from) existed before), or -1 when it created none.
   stat before mkdir, so existing folders cost no failing call; EEXIST from mkdir is still
   accepted because another process may create the same folder between the two calls. Mode
   0777 is reduced by the umask, as with mkdir -p. An existing non-folder is an error. */
static int ioupos__mkdirs_from(const char *path, int *created_from) {
  char buf[4096];
  size_t i, n = strlen(path);
  if (created_from) *created_from = -1;
  if (n == 0 || n >= sizeof buf)
    return ioupos__fail(IOUPOS_EINVAL, "directory name '%s' is empty or too long", path);
  memcpy(buf, path, n + 1);
  for (i = 1; i <= n; ++i)
    if (buf[i] == '/' || buf[i] == '\0') {
      char c = buf[i];
      struct stat sb;
      buf[i] = '\0';
      if (stat(buf, &sb) != 0) {
        if (mkdir(buf, 0777) == 0) {
          if (created_from && *created_from < 0) { /* where this folder's name starts */
            size_t k = i;
            while (k > 0 && buf[k - 1] != '/') --k;
            *created_from = (int)k;
          }
        } else if (errno != EEXIST) {
          return ioupos__fail(IOUPOS_EIO, "cannot create directory %s: %s", buf, strerror(errno));
        }
      } else if (!S_ISDIR(sb.st_mode)) {
        return ioupos__fail(IOUPOS_EIO, "%s exists and is not a directory", buf);
      }
      buf[i] = c;
    }
  return 0;
}

#if IOUPOS__PART_CORE /* used by sections 18 and 22 only */
static int ioupos__mkdirs(const char *path) { return ioupos__mkdirs_from(path, NULL); }
#endif

/* "<anything>.tmp.<pid>": the pid, else 0. The last ".tmp." counts (a name may contain the
   marker earlier), and the pid must be all digits and at most nine of them, so a name that
   merely resembles a temporary is left alone rather than parsed into an absurd pid. */
static long ioupos__tmp_pid(const char *name) {
  const char *t = strstr(name, ".tmp.");
  long pid = 0;
  while (t && strstr(t + 1, ".tmp.")) t = strstr(t + 1, ".tmp.");
  if (!t || !t[5]) return 0;
  for (t += 5; *t; ++t) {
    if (*t < '0' || *t > '9' || pid > 99999999L) return 0;
    pid = 10 * pid + (*t - '0');
  }
  return pid;
}

static void ioupos__dir_names_free(char **names, int n) {
  int i;
  for (i = 0; i < n; ++i) IOUPOS_FREE(names[i]);
  IOUPOS_FREE(names);
}

/* the names in dir (without "." and ".."), or NULL with *n = 0. readdir order, unsorted.
   When memory runs out the names read so far are returned (*n counts them) and no failure is
   reported; free the list with ioupos__dir_names_free. */
static char **ioupos__dir_names(const char *dir, int *n) {
  DIR *d = opendir(dir);
  struct dirent *de;
  char **names = NULL;
  int cap = 0;
  *n = 0;
  if (!d) return NULL;
  while ((de = readdir(d)) != NULL) {
    size_t len = strlen(de->d_name);
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    if (*n == cap) {
      char **nn = (char **)ioupos__calloc((size_t)(cap ? 2 * cap : 16), sizeof *nn);
      if (!nn) break;
      if (names) memcpy(nn, names, (size_t)*n * sizeof *nn);
      IOUPOS_FREE(names);
      names = nn;
      cap = cap ? 2 * cap : 16;
    }
    if ((names[*n] = (char *)IOUPOS_MALLOC(len + 1)) == NULL) break;
    memcpy(names[(*n)++], de->d_name, len + 1);
  }
  closedir(d);
  return names;
}

/* The hold, step by step: normalise dir (trailing slashes dropped, so "<dir>/.lock" and
   created_from refer to one spelling), create the missing folders and remember where they
   start, snapshot the names present (for release with discard), then lock. fcntl record locks
   rather than flock: they are POSIX and work over NFS. F_SETLK never blocks, so a busy folder
   is reported at once, with the holder's pid from F_GETLK. The pid written into .lock is for
   people looking at the folder; the lock, not the file's content, is what excludes. */
IOUPOS_DEF int ioupos_dir_hold(ioupos_dir_lock *lk, const char *dir, int *n_stale) {
  char path[4200];
  int i, tries, rc;
  struct flock fl;
  if (n_stale) *n_stale = 0;
  if (!lk || !dir) return ioupos__fail(IOUPOS_EINVAL, "ioupos_dir_hold: NULL argument");
  memset(lk, 0, sizeof *lk);
  lk->fd = -1;
  if (strlen(dir) >= sizeof lk->dir)
    return ioupos__fail(IOUPOS_EINVAL, "folder name '%.64s...' too long", dir);
  strcpy(lk->dir, dir);
  for (i = (int)strlen(lk->dir); i > 1 && lk->dir[i - 1] == '/'; --i) lk->dir[i - 1] = '\0';
  dir = lk->dir;
  if ((rc = ioupos__mkdirs_from(dir, &lk->created_from)) != 0) return rc;
  lk->had = ioupos__dir_names(dir, &lk->n_had);
  snprintf(path, sizeof path, "%s/.lock", dir);
  /* The lock file may be deleted by a releasing holder between our open and our lock: then we
     would hold a lock on a name-less file. Check that the locked file is still <dir>/.lock. */
  for (tries = 0; tries < 100; ++tries) {
    struct stat a, b;
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0) {
      rc = ioupos__fail(IOUPOS_EIO, "cannot create %s: %s", path, strerror(errno));
      break;
    }
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if (fcntl(fd, F_SETLK, &fl) != 0) {
      int e = errno;
      long holder = 0;
      if (e == EACCES || e == EAGAIN) {
        memset(&fl, 0, sizeof fl);
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        if (fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK) holder = (long)fl.l_pid;
        close(fd);
        if (holder == 0) continue; /* released in between: try again */
        rc = ioupos__fail(IOUPOS_EBUSY, "%s is in use by process %ld (another run, resume or "
                          "preprocessing writes there); wait for it to end or use another folder",
                          dir, holder);
      } else {
        close(fd);
        rc = ioupos__fail(IOUPOS_EIO, "cannot lock %s: %s", path, strerror(e));
      }
      break;
    }
    if (fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev) {
      char pid[32];
      int n = snprintf(pid, sizeof pid, "%ld\n", (long)ioupos__getpid());
      if (ftruncate(fd, 0) != 0 || write(fd, pid, (size_t)n) != n) { /* informative only */ }
      lk->fd = fd;
      break;
    }
    close(fd);
  }
  if (lk->fd < 0) {
    if (rc == 0) rc = ioupos__fail(IOUPOS_EBUSY, "cannot lock %s: it keeps changing", path);
    ioupos__dir_names_free(lk->had, lk->n_had);
    lk->had = NULL;
    lk->n_had = 0;
    return rc;
  }
  /* stale temporaries go only once the lock is ours, so no other holder is writing here */
  i = ioupos_dir_clean_stale(dir);
  if (n_stale) *n_stale = i;
  return 0;
}

/* kill(pid, 0) probes a process without signalling it: ESRCH means gone, anything else
   (EPERM: alive under another user) keeps the file. A recycled pid keeps a dead writer's file
   until a later clean, so mistakes err towards keeping. pids are this machine's: a temporary
   written from another host sharing the folder can look stale. A folder that cannot be read
   counts as having none; the return value is the number actually removed. */
IOUPOS_DEF int ioupos_dir_clean_stale(const char *dir) {
  char path[4200];
  int n = 0, i, removed = 0;
  char **names = ioupos__dir_names(dir, &n);
  for (i = 0; i < n; ++i) { /* writers that are gone (ours, if any, are not stale) */
    long pid = ioupos__tmp_pid(names[i]);
    if (pid <= 0 || pid == (long)ioupos__getpid()) continue;
    if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive (or not ours to ask) */
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    if (remove(path) == 0) ++removed;
  }
  ioupos__dir_names_free(names, n);
  return removed;
}

/* No-op on a lock that is not held. With discard, only regular files that were not there when
   the hold began are deleted (lstat: a symlink is neither followed nor deleted, subfolders are
   kept), then the folders the hold created, deepest first, each only if empty: rmdir fails on
   a non-empty folder, which ends the climb. */
IOUPOS_DEF void ioupos_dir_release(ioupos_dir_lock *lk, int discard) {
  char path[4200];
  if (!lk || lk->fd < 0) return;
  /* the lock file goes before the lock (a process that opened it meanwhile finds, once it
     gets the lock, that the name no longer leads to its file, and starts over) */
  snprintf(path, sizeof path, "%s/.lock", lk->dir);
  remove(path);
  if (discard) {
    int n = 0, i, k;
    char **now = ioupos__dir_names(lk->dir, &n);
    for (i = 0; i < n; ++i) {
      struct stat sb;
      int old = 0;
      for (k = 0; k < lk->n_had && !old; ++k) old = !strcmp(now[i], lk->had[k]);
      snprintf(path, sizeof path, "%s/%s", lk->dir, now[i]);
      if (!old && lstat(path, &sb) == 0 && S_ISREG(sb.st_mode)) remove(path);
    }
    ioupos__dir_names_free(now, n);
    if (lk->created_from >= 0) { /* the folders the hold made, deepest first, when empty */
      size_t j = strlen(lk->dir);
      snprintf(path, sizeof path, "%s", lk->dir);
      while (j > (size_t)lk->created_from && rmdir(path) == 0) {
        while (j > 0 && path[j - 1] != '/') --j;
        while (j > 0 && path[j - 1] == '/') --j;
        path[j] = '\0';
      }
    }
  }
  close(lk->fd); /* drops the lock */
  lk->fd = -1;
  ioupos__dir_names_free(lk->had, lk->n_had);
  lk->had = NULL;
  lk->n_had = 0;
}

/* stb_image_write's output callback cannot report failure, so an allocation failure sets
   failed and drops the rest; the caller checks failed after encoding. Doubling from 4 KiB
   keeps the copying linear in the PNG's size. */
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

/* Encodes into memory first, then writes with ioupos_write_file_atomic, so the file appears
   complete or not at all. pixels are tightly packed rows (stride w * channels), 8 bits per
   channel, as stbi_write_png expects; stb's own deflate does the compression. */
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

/* ---- 6. NIfTI volumes, CT preprocessing and split files --------------------------------------- */


/* -- small helpers -- */

IOUPOS_DEF uint32_t ioupos_crc32(uint32_t crc, const void *data, size_t n) {
  uint32_t table[256];
  const unsigned char *p = (const unsigned char *)data;
  uint32_t c;
  int i, b;
  for (i = 0; i < 256; ++i) {
    c = (uint32_t)i;
    for (b = 0; b < 8; ++b) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  c = crc ^ 0xFFFFFFFFu;
  while (n--) c = table[(c ^ *p++) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

IOUPOS_DEF void ioupos_volume_free(ioupos_volume *vol) {
  if (!vol) return;
  IOUPOS_FREE(vol->data);
  vol->data = NULL;
  vol->dim[0] = vol->dim[1] = vol->dim[2] = 0;
}

static void ioupos__mat4_identity(double m[4][4]) {
  int r, c;
  for (r = 0; r < 4; ++r)
    for (c = 0; c < 4; ++c) m[r][c] = r == c ? 1.0 : 0.0;
}

/* out = a @ b, sequential accumulation (no FMA); out may alias neither. */
static void ioupos__mat4_mul(double out[4][4], const double a[4][4], const double b[4][4]) {
  int r, c, m;
  for (r = 0; r < 4; ++r)
    for (c = 0; c < 4; ++c) {
      double acc = 0.0;
      for (m = 0; m < 4; ++m) acc = acc + a[r][m] * b[m][c];
      out[r][c] = acc;
    }
}

/* Solve a @ x = b (4x4) by Gaussian elimination with partial pivoting, dividing by multiplying
   with reciprocals as LAPACK does (so MONAI's xform is reproduced to the bit); 0 if singular. */
static int ioupos__mat4_solve(const double a_in[4][4], const double b_in[4][4], double x[4][4]) {
  double a[4][4], b[4][4];
  int r, c, k, p;
  memcpy(a, a_in, sizeof a);
  memcpy(b, b_in, sizeof b);
  for (k = 0; k < 4; ++k) {
    p = k;
    for (r = k + 1; r < 4; ++r)
      if (fabs(a[r][k]) > fabs(a[p][k])) p = r;
    if (a[p][k] == 0.0 || !isfinite(a[p][k])) return 0;
    if (p != k)
      for (c = 0; c < 4; ++c) {
        double t = a[k][c]; a[k][c] = a[p][c]; a[p][c] = t;
        t = b[k][c]; b[k][c] = b[p][c]; b[p][c] = t;
      }
    for (r = k + 1; r < 4; ++r) {
      double f = a[r][k] * (1.0 / a[k][k]); /* LAPACK's dgetf2 scales by the reciprocal */
      if (f == 0.0) continue;
      for (c = k; c < 4; ++c) a[r][c] -= f * a[k][c];
      for (c = 0; c < 4; ++c) b[r][c] -= f * b[k][c];
    }
  }
  for (c = 0; c < 4; ++c)
    for (r = 3; r >= 0; --r) {
      double s = b[r][c];
      for (k = r + 1; k < 4; ++k) s -= a[r][k] * x[k][c];
      x[r][c] = s * (1.0 / a[r][r]); /* as LAPACK's triangular solve (numpy.linalg.solve) */
    }
  return 1;
}

IOUPOS_DEF void ioupos_volume_spacing(const ioupos_volume *vol, double spacing[3]) {
  int c;
  for (c = 0; c < 3; ++c)
    spacing[c] = sqrt(vol->affine[0][c] * vol->affine[0][c] + vol->affine[1][c] * vol->affine[1][c] +
                      vol->affine[2][c] * vol->affine[2][c]);
}

IOUPOS_DEF int ioupos_volume_alloc(ioupos_volume *vol, int nx, int ny, int nz) {
  size_t n;
  vol->data = NULL;
  vol->dim[0] = vol->dim[1] = vol->dim[2] = 0;
  ioupos__mat4_identity(vol->affine);
  if (nx <= 0 || ny <= 0 || nz <= 0)
    return ioupos__fail(IOUPOS_EINVAL, "volume %dx%dx%d: sizes must be positive", nx, ny, nz);
  n = (size_t)nx * (size_t)ny;
  if ((double)nx * ny * nz > 2147483648.0)
    return ioupos__fail(IOUPOS_ERANGE, "volume %dx%dx%d: more than 2^31 voxels", nx, ny, nz);
  vol->data = (float *)ioupos__calloc(n * (size_t)nz, sizeof(float));
  if (!vol->data)
    return ioupos__fail(IOUPOS_ENOMEM, "volume %dx%dx%d: out of memory", nx, ny, nz);
  vol->dim[0] = nx;
  vol->dim[1] = ny;
  vol->dim[2] = nz;
  return IOUPOS_OK;
}

/* -- gzip -- */

static uint32_t ioupos__le32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Inflate a single-member gzip stream; *out freed with IOUPOS_FREE. */
static int ioupos__gunzip(const unsigned char *in, size_t size, const char *name,
                          unsigned char **out, size_t *out_size) {
  size_t pos = 10;
  int flg, outlen = 0, guess;
  uint32_t crc, isize;
  char *dec;
  double cap;
  *out = NULL;
  *out_size = 0;
  if (size < 18)
    return ioupos__fail(IOUPOS_EFORMAT, "%s: truncated gzip file (%zu bytes)", name, size);
  if (in[2] != 8)
    return ioupos__fail(IOUPOS_EFORMAT, "%s: gzip compression method %d is not deflate (8)",
                        name, in[2]);
  flg = in[3];
  if (flg & 0xE0)
    return ioupos__fail(IOUPOS_EFORMAT, "%s: corrupt gzip header (reserved flag bits 0x%02x)",
                        name, flg & 0xE0);
  if (flg & 4) { /* FEXTRA */
    size_t xlen;
    if (pos + 2 > size) goto truncated;
    xlen = (size_t)in[pos] | (size_t)in[pos + 1] << 8;
    pos += 2;
    if (xlen > size - pos) goto truncated;
    pos += xlen;
  }
  if (flg & 8) { /* FNAME */
    while (pos < size && in[pos]) ++pos;
    if (pos >= size) goto truncated;
    ++pos;
  }
  if (flg & 16) { /* FCOMMENT */
    while (pos < size && in[pos]) ++pos;
    if (pos >= size) goto truncated;
    ++pos;
  }
  if (flg & 2) pos += 2; /* FHCRC */
  if (pos + 8 > size) goto truncated;
  if (size - pos > (size_t)INT_MAX)
    return ioupos__fail(IOUPOS_ERANGE, "%s: gzip stream larger than 2 GiB is not supported", name);
  crc = ioupos__le32(in + size - 8);
  isize = ioupos__le32(in + size - 4);
  /* initial output guess: ISIZE, bounded by deflate's maximum ratio (1032:1) */
  cap = 1032.0 * (double)(size - pos) + 65536.0;
  guess = (double)isize < cap ? (int)(isize > (uint32_t)INT_MAX ? INT_MAX : isize) : (int)(cap > INT_MAX ? INT_MAX : cap);
  if (guess < 16384) guess = 16384;
  /* the trailer stays in the input: stb's decoder wants slack after the last code */
  dec = stbi_zlib_decode_malloc_guesssize_headerflag((const char *)in + pos, (int)(size - pos),
                                                     guess, &outlen, 0);
  if (!dec)
    return ioupos__fail(IOUPOS_EFORMAT, "%s: truncated or corrupt gzip data (inflate failed: %s)",
                        name, stbi_failure_reason() ? stbi_failure_reason() : "?");
  if ((uint32_t)outlen != isize || ioupos_crc32(0, dec, (size_t)outlen) != crc) {
    STBI_FREE(dec);
    return ioupos__fail(IOUPOS_EFORMAT,
                        "%s: truncated or corrupt gzip data (CRC32 / length check failed)", name);
  }
  /* hand the buffer over in our allocator */
  *out = (unsigned char *)IOUPOS_MALLOC(outlen > 0 ? (size_t)outlen : 1);
  if (!*out) {
    STBI_FREE(dec);
    return ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory (%d bytes)", name, outlen);
  }
  memcpy(*out, dec, (size_t)outlen);
  STBI_FREE(dec);
  *out_size = (size_t)outlen;
  return IOUPOS_OK;
truncated:
  return ioupos__fail(IOUPOS_EFORMAT, "%s: truncated gzip file (header incomplete)", name);
}

static void ioupos__put32le(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}

static int ioupos__gzip(const unsigned char *in, size_t size, unsigned char **out, size_t *out_size) {
  int zlen = 0;
  unsigned char *z, *g;
  size_t dlen;
  *out = NULL;
  *out_size = 0;
  if (size > (size_t)INT_MAX - 64)
    return ioupos__fail(IOUPOS_ERANGE, "gzip: %zu bytes is too large for stb's compressor", size);
  z = stbi_zlib_compress((unsigned char *)in, (int)size, &zlen, 5);
  if (!z || zlen < 6) {
    if (z) STBIW_FREE(z);
    return ioupos__fail(IOUPOS_ENOMEM, "gzip: compression failed (out of memory)");
  }
  dlen = (size_t)zlen - 6; /* strip the 2-byte zlib header and the Adler-32 trailer */
  g = (unsigned char *)IOUPOS_MALLOC(dlen + 18);
  if (!g) {
    STBIW_FREE(z);
    return ioupos__fail(IOUPOS_ENOMEM, "gzip: out of memory");
  }
  memset(g, 0, 10);
  g[0] = 0x1f;
  g[1] = 0x8b;
  g[2] = 8;
  g[9] = 255; /* OS unknown; MTIME 0: the output depends on the data only */
  memcpy(g + 10, z + 2, dlen);
  ioupos__put32le(g + 10 + dlen, ioupos_crc32(0, in, size));
  ioupos__put32le(g + 14 + dlen, (uint32_t)size);
  STBIW_FREE(z);
  *out = g;
  *out_size = dlen + 18;
  return IOUPOS_OK;
}

/* -- NIfTI-1 reading -- */

typedef struct ioupos__hdr {
  const unsigned char *p;
  int swap;
} ioupos__hdr;

static uint32_t ioupos__rd32(const ioupos__hdr *h, size_t off) {
  const unsigned char *b = h->p + off;
  return h->swap ? (uint32_t)b[3] | (uint32_t)b[2] << 8 | (uint32_t)b[1] << 16 | (uint32_t)b[0] << 24
                 : ioupos__le32(b);
}
static int ioupos__rd16(const ioupos__hdr *h, size_t off) {
  const unsigned char *b = h->p + off;
  uint16_t v = h->swap ? (uint16_t)(b[1] | b[0] << 8) : (uint16_t)(b[0] | b[1] << 8);
  return (int)(int16_t)v;
}
static double ioupos__rdf(const ioupos__hdr *h, size_t off) {
  uint32_t u = ioupos__rd32(h, off);
  float f;
  memcpy(&f, &u, 4);
  return (double)f;
}

static int ioupos__dtype_size(int dt) {
  switch (dt) {
    case IOUPOS_NIFTI_UINT8: case IOUPOS_NIFTI_INT8: return 1;
    case IOUPOS_NIFTI_INT16: case IOUPOS_NIFTI_UINT16: return 2;
    case IOUPOS_NIFTI_INT32: case IOUPOS_NIFTI_UINT32: case IOUPOS_NIFTI_FLOAT32: return 4;
    case IOUPOS_NIFTI_INT64: case IOUPOS_NIFTI_UINT64: case IOUPOS_NIFTI_FLOAT64: return 8;
    default: return 0;
  }
}

static const char *ioupos__dtype_name(int dt) {
  switch (dt) {
    case 1: return "binary (1 bit)";
    case 32: return "complex64";
    case 128: return "RGB24";
    case 1536: return "float128";
    case 1792: return "complex128";
    case 2048: return "complex256";
    case 2304: return "RGBA32";
    default: return "unknown";
  }
}

/* Element i of raw data as double. */
static double ioupos__load_elem(const unsigned char *src, int dt, int swap) {
  unsigned char b[8];
  int n = ioupos__dtype_size(dt), k;
  for (k = 0; k < n; ++k) b[k] = swap ? src[n - 1 - k] : src[k];
  /* b is now little-endian */
  switch (dt) {
    case IOUPOS_NIFTI_UINT8: return b[0];
    case IOUPOS_NIFTI_INT8: return (int8_t)b[0];
    case IOUPOS_NIFTI_INT16: return (int16_t)(uint16_t)(b[0] | b[1] << 8);
    case IOUPOS_NIFTI_UINT16: return (uint16_t)(b[0] | b[1] << 8);
    case IOUPOS_NIFTI_INT32: return (int32_t)ioupos__le32(b);
    case IOUPOS_NIFTI_UINT32: return ioupos__le32(b);
    case IOUPOS_NIFTI_FLOAT32: {
      uint32_t u = ioupos__le32(b);
      float f;
      memcpy(&f, &u, 4);
      return f;
    }
    default: {
      uint64_t u = (uint64_t)ioupos__le32(b) | (uint64_t)ioupos__le32(b + 4) << 32;
      if (dt == IOUPOS_NIFTI_INT64) return (double)(int64_t)u;
      if (dt == IOUPOS_NIFTI_UINT64) return (double)u;
      {
        double d;
        memcpy(&d, &u, 8);
        return d;
      }
    }
  }
}

/* nibabel's quat2mat (fillpositive for w) */
static int ioupos__quat_to_mat(double b, double c, double d, double m[3][3]) {
  double w2 = 1.0 - (b * b + c * c + d * d), w, nq, s, X, Y, Z;
  if (fabs(w2) < 3.0 * 1.1920928955078125e-07) w = 0.0;
  else if (w2 < 0) return 0;
  else w = sqrt(w2);
  nq = w * w + b * b + c * c + d * d;
  if (nq < 2.220446049250313e-16) {
    int r, k;
    for (r = 0; r < 3; ++r)
      for (k = 0; k < 3; ++k) m[r][k] = r == k;
    return 1;
  }
  s = 2.0 / nq;
  X = b * s; Y = c * s; Z = d * s;
  m[0][0] = 1.0 - (c * Y + d * Z); m[0][1] = b * Y - w * Z;         m[0][2] = b * Z + w * Y;
  m[1][0] = b * Y + w * Z;         m[1][1] = 1.0 - (b * X + d * Z); m[1][2] = c * Z - w * X;
  m[2][0] = b * Z - w * Y;         m[2][1] = c * Z + w * X;         m[2][2] = 1.0 - (b * X + c * Y);
  return 1;
}

IOUPOS_DEF int ioupos_nifti_read_memory(const void *data, size_t size, const char *name,
                                        ioupos_volume *vol) {
  const unsigned char *p = (const unsigned char *)data;
  unsigned char *plain = NULL;
  size_t psize = size, off, nvox, need, i;
  ioupos__hdr h;
  int dim[8], ndim, k, dt, bitpix, esize, st = IOUPOS_OK;
  double pix[4], slope, inter, vox_offset;
  int use_scale;
  if (!name) name = "(memory)";
  if (!vol) return ioupos__fail(IOUPOS_EINVAL, "%s: NULL volume", name);
  vol->data = NULL;
  vol->dim[0] = vol->dim[1] = vol->dim[2] = 0;
  ioupos__mat4_identity(vol->affine);
  if (!p && size) return ioupos__fail(IOUPOS_EINVAL, "%s: NULL data", name);
  if (size >= 2 && p[0] == 0x1f && p[1] == 0x8b) {
    st = ioupos__gunzip(p, size, name, &plain, &psize);
    if (st != IOUPOS_OK) return st;
    p = plain;
  }
  if (psize < 348) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: not a NIfTI-1 file (%zu bytes, shorter than the 348-byte header)",
                      name, psize);
    goto done;
  }
  h.p = p;
  h.swap = 0;
  if (ioupos__rd32(&h, 0) != 348) {
    h.swap = 1;
    if (ioupos__rd32(&h, 0) != 348) {
      h.swap = 0;
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: not a NIfTI-1 file (sizeof_hdr is %ld, not 348%s)", name,
                        (long)(int32_t)ioupos__rd32(&h, 0),
                        ioupos__rd32(&h, 0) == 540 ? "; NIfTI-2 is not supported" : "");
      goto done;
    }
  }
  if (memcmp(p + 344, "n+1\0", 4) != 0) {
    if (memcmp(p + 344, "ni1\0", 4) == 0)
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: two-file NIfTI (.hdr/.img, magic \"ni1\") is not supported", name);
    else
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: wrong magic (bytes 344-347 are %02x %02x %02x %02x, not \"n+1\\0\")",
                        name, p[344], p[345], p[346], p[347]);
    goto done;
  }
  for (k = 0; k < 8; ++k) dim[k] = ioupos__rd16(&h, 40 + 2 * (size_t)k);
  ndim = dim[0];
  if (ndim < 1 || ndim > 7) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: absurd dimensions: dim[0] = %d (must be 1..7)", name, ndim);
    goto done;
  }
  for (k = 1; k <= ndim; ++k)
    if (dim[k] <= 0 || dim[k] > 65535) {
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: absurd dimensions: dim[%d] = %d (must be 1..65535)", name, k,
                        dim[k]);
      goto done;
    }
  if (ndim < 3) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: only 3D volumes are supported (dim[0] = %d)", name, ndim);
    goto done;
  }
  for (k = 4; k <= ndim; ++k)
    if (dim[k] != 1) {
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: only 3D volumes are supported (dim[%d] = %d, a %dD image)", name,
                        k, dim[k], ndim);
      goto done;
    }
  if ((double)dim[1] * dim[2] * dim[3] > 2147483648.0) {
    st = ioupos__fail(IOUPOS_ERANGE, "%s: absurd dimensions: %dx%dx%d is more than 2^31 voxels", name, dim[1],
                      dim[2], dim[3]);
    goto done;
  }
  dt = ioupos__rd16(&h, 70);
  bitpix = ioupos__rd16(&h, 72);
  esize = ioupos__dtype_size(dt);
  if (!esize) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: unsupported datatype %d (%s)", name, dt, ioupos__dtype_name(dt));
    goto done;
  }
  (void)bitpix; /* nibabel trusts datatype over bitpix; so do we */
  vox_offset = ioupos__rdf(&h, 108);
  if (!(vox_offset >= 0) || vox_offset > 1e15) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: invalid vox_offset %g", name, vox_offset);
    goto done;
  }
  off = (size_t)vox_offset;
  if (off < 352) off = 352; /* nibabel's fix for single-file NIfTI */
  nvox = (size_t)dim[1] * (size_t)dim[2] * (size_t)dim[3];
  if (off > psize) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: vox_offset %zu is beyond the end of the file (%zu bytes)", name,
                      off, psize);
    goto done;
  }
  need = nvox * (size_t)esize;
  if (psize - off < need) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: short data: %dx%dx%d voxels of %d bytes need %zu bytes after offset "
                      "%zu, the file has %zu", name, dim[1], dim[2], dim[3], esize, need, off, psize - off);
    goto done;
  }
  /* pixdim with nibabel's fixes */
  pix[0] = ioupos__rdf(&h, 76);
  if (pix[0] != 1.0 && pix[0] != -1.0) pix[0] = 1.0;
  for (k = 1; k <= 3; ++k) {
    pix[k] = ioupos__rdf(&h, 76 + 4 * (size_t)k);
    if (pix[k] == 0.0) pix[k] = 1.0;
    pix[k] = fabs(pix[k]);
  }
  /* affine as nibabel's get_best_affine */
  if (ioupos__rd16(&h, 254) != 0) { /* sform */
    int r, c;
    for (r = 0; r < 3; ++r)
      for (c = 0; c < 4; ++c) vol->affine[r][c] = ioupos__rdf(&h, 280 + 16 * (size_t)r + 4 * (size_t)c);
  } else if (ioupos__rd16(&h, 252) != 0) { /* qform */
    double m[3][3];
    int r, c;
    if (!ioupos__quat_to_mat(ioupos__rdf(&h, 256), ioupos__rdf(&h, 260), ioupos__rdf(&h, 264), m)) {
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: invalid qform quaternion (b^2 + c^2 + d^2 > 1)", name);
      goto done;
    }
    for (r = 0; r < 3; ++r) {
      for (c = 0; c < 3; ++c) vol->affine[r][c] = m[r][c] * (c == 2 ? pix[3] * pix[0] : pix[c + 1]);
      vol->affine[r][3] = ioupos__rdf(&h, 268 + 4 * (size_t)r);
    }
  } else { /* pixdim diagonal, origin at the centre, x flipped */
    int r;
    for (r = 0; r < 3; ++r) {
      double z = r == 0 ? -pix[1] : pix[r + 1];
      vol->affine[r][r] = z;
      vol->affine[r][3] = -((double)(dim[r + 1] - 1) / 2.0) * z;
    }
  }
  for (k = 0; k < 12; ++k)
    if (!isfinite(vol->affine[k / 4][k % 4])) {
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: the affine (sform/qform) has a non-finite entry", name);
      goto done;
    }
  slope = ioupos__rdf(&h, 112);
  inter = ioupos__rdf(&h, 116);
  use_scale = slope != 0.0 && isfinite(slope);
  if (use_scale && !isfinite(inter)) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: valid scl_slope %g but invalid scl_inter %g", name, slope, inter);
    goto done;
  }
  vol->data = (float *)ioupos__calloc(nvox, sizeof(float));
  if (!vol->data) {
    st = ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory for %dx%dx%d voxels", name, dim[1], dim[2], dim[3]);
    goto done;
  }
  {
    const unsigned char *src = p + off;
    int fast = !h.swap && dt == IOUPOS_NIFTI_INT16;
    for (i = 0; i < nvox; ++i) {
      double v = fast ? (double)(int16_t)(uint16_t)(src[2 * i] | src[2 * i + 1] << 8)
                      : ioupos__load_elem(src + i * (size_t)esize, dt, h.swap);
      if (use_scale) v = v * slope + inter;
      if (v > 3.4028234663852886e38) v = HUGE_VAL; /* out of float range: +-inf, not UB */
      else if (v < -3.4028234663852886e38) v = -HUGE_VAL;
      vol->data[i] = (float)v;
    }
  }
  vol->dim[0] = dim[1];
  vol->dim[1] = dim[2];
  vol->dim[2] = dim[3];
done:
  IOUPOS_FREE(plain);
  if (st != IOUPOS_OK) {
    IOUPOS_FREE(vol->data);
    vol->data = NULL;
    vol->dim[0] = vol->dim[1] = vol->dim[2] = 0;
  }
  return st;
}

IOUPOS_DEF int ioupos_nifti_read(const char *path, ioupos_volume *vol) {
  void *buf;
  size_t size;
  int st;
  if (!path || !vol) return ioupos__fail(IOUPOS_EINVAL, "ioupos_nifti_read: NULL argument");
  vol->data = NULL;
  vol->dim[0] = vol->dim[1] = vol->dim[2] = 0;
  st = ioupos_read_file(path, &buf, &size);
  if (st != IOUPOS_OK) return st;
  st = ioupos_nifti_read_memory(buf, size, path, vol);
  IOUPOS_FREE(buf);
  return st;
}

/* -- NIfTI-1 writing -- */

static void ioupos__put16le(unsigned char *p, int v) {
  p[0] = (unsigned char)(v & 0xFF);
  p[1] = (unsigned char)((v >> 8) & 0xFF);
}
static void ioupos__putf(unsigned char *p, double v) {
  float f = (float)v;
  uint32_t u;
  memcpy(&u, &f, 4);
  ioupos__put32le(p, u);
}

/* Orthonormal polar factor of m (Newton iteration); 0 if m is singular. */
static int ioupos__polar3(const double m_in[3][3], double q[3][3]) {
  double m[3][3];
  int it, r, c;
  memcpy(m, m_in, sizeof m);
  for (it = 0; it < 100; ++it) {
    double det, inv[3][3], diff = 0.0;
    inv[0][0] = m[1][1] * m[2][2] - m[1][2] * m[2][1];
    inv[0][1] = m[0][2] * m[2][1] - m[0][1] * m[2][2];
    inv[0][2] = m[0][1] * m[1][2] - m[0][2] * m[1][1];
    inv[1][0] = m[1][2] * m[2][0] - m[1][0] * m[2][2];
    inv[1][1] = m[0][0] * m[2][2] - m[0][2] * m[2][0];
    inv[1][2] = m[0][2] * m[1][0] - m[0][0] * m[1][2];
    inv[2][0] = m[1][0] * m[2][1] - m[1][1] * m[2][0];
    inv[2][1] = m[0][1] * m[2][0] - m[0][0] * m[2][1];
    inv[2][2] = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    det = m[0][0] * inv[0][0] + m[0][1] * inv[1][0] + m[0][2] * inv[2][0];
    if (!(fabs(det) > 1e-12) || !isfinite(det)) return 0;
    for (r = 0; r < 3; ++r)
      for (c = 0; c < 3; ++c) {
        double n = 0.5 * (m[r][c] + inv[c][r] / det); /* (m + m^-T) / 2 */
        diff += fabs(n - m[r][c]);
        q[r][c] = n;
      }
    memcpy(m, q, sizeof m);
    if (diff < 1e-15) break;
  }
  return 1;
}

IOUPOS_DEF int ioupos_nifti_encode(const ioupos_volume *vol, int datatype, int gzip,
                                   unsigned char **out, size_t *size) {
  unsigned char *buf;
  size_t nvox, i, total;
  int esize = ioupos__dtype_size(datatype), r, c, st;
  double sp[3], rot[3][3], q[3][3], qfac = 1.0, qa, qb, qc, qd;
  *out = NULL;
  *size = 0;
  if (!vol || !vol->data || vol->dim[0] <= 0 || vol->dim[1] <= 0 || vol->dim[2] <= 0)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_nifti_write: empty volume");
  if (!esize) return ioupos__fail(IOUPOS_EINVAL, "ioupos_nifti_write: unsupported datatype %d", datatype);
  for (r = 0; r < 3; ++r)
    if (vol->dim[r] > 32767)
      return ioupos__fail(IOUPOS_ERANGE, "ioupos_nifti_write: dimension %d exceeds NIfTI-1's 32767",
                          vol->dim[r]);
  nvox = (size_t)vol->dim[0] * (size_t)vol->dim[1] * (size_t)vol->dim[2];
  total = 352 + nvox * (size_t)esize;
  buf = (unsigned char *)ioupos__calloc(total, 1);
  if (!buf) return ioupos__fail(IOUPOS_ENOMEM, "ioupos_nifti_write: out of memory (%zu bytes)", total);
  ioupos__put32le(buf, 348);
  buf[38] = 'r';
  ioupos__put16le(buf + 40, 3);
  for (r = 0; r < 3; ++r) ioupos__put16le(buf + 42 + 2 * r, vol->dim[r]);
  for (r = 3; r < 7; ++r) ioupos__put16le(buf + 42 + 2 * r, 1);
  ioupos__put16le(buf + 70, datatype);
  ioupos__put16le(buf + 72, esize * 8);
  ioupos_volume_spacing(vol, sp);
  /* qform: rotation = polar factor of the column-normalised matrix, det -1 -> qfac -1 */
  for (r = 0; r < 3; ++r)
    for (c = 0; c < 3; ++c) rot[r][c] = vol->affine[r][c] / (sp[c] > 0 ? sp[c] : 1.0);
  {
    double det = rot[0][0] * (rot[1][1] * rot[2][2] - rot[1][2] * rot[2][1]) -
                 rot[0][1] * (rot[1][0] * rot[2][2] - rot[1][2] * rot[2][0]) +
                 rot[0][2] * (rot[1][0] * rot[2][1] - rot[1][1] * rot[2][0]);
    if (det < 0) {
      qfac = -1.0;
      for (r = 0; r < 3; ++r) rot[r][2] = -rot[r][2];
    }
  }
  if (!ioupos__polar3(rot, q)) {
    for (r = 0; r < 3; ++r)
      for (c = 0; c < 3; ++c) q[r][c] = r == c;
  }
  { /* rotation matrix -> quaternion (a, b, c, d), a >= 0 */
    double t = q[0][0] + q[1][1] + q[2][2] + 1.0;
    if (t > 0.5) {
      qa = 0.5 * sqrt(t);
      qb = 0.25 * (q[2][1] - q[1][2]) / qa;
      qc = 0.25 * (q[0][2] - q[2][0]) / qa;
      qd = 0.25 * (q[1][0] - q[0][1]) / qa;
    } else {
      double xd = 1.0 + q[0][0] - (q[1][1] + q[2][2]), yd = 1.0 + q[1][1] - (q[0][0] + q[2][2]);
      double zd = 1.0 + q[2][2] - (q[0][0] + q[1][1]);
      if (xd > 1.0) {
        qb = 0.5 * sqrt(xd);
        qc = 0.25 * (q[0][1] + q[1][0]) / qb;
        qd = 0.25 * (q[0][2] + q[2][0]) / qb;
        qa = 0.25 * (q[2][1] - q[1][2]) / qb;
      } else if (yd > 1.0) {
        qc = 0.5 * sqrt(yd);
        qb = 0.25 * (q[0][1] + q[1][0]) / qc;
        qd = 0.25 * (q[1][2] + q[2][1]) / qc;
        qa = 0.25 * (q[0][2] - q[2][0]) / qc;
      } else {
        qd = 0.5 * sqrt(zd);
        qb = 0.25 * (q[0][2] + q[2][0]) / qd;
        qc = 0.25 * (q[1][2] + q[2][1]) / qd;
        qa = 0.25 * (q[1][0] - q[0][1]) / qd;
      }
      if (qa < 0.0) qa = -qa, qb = -qb, qc = -qc, qd = -qd;
    }
    (void)qa;
  }
  ioupos__putf(buf + 76, qfac);
  for (r = 0; r < 3; ++r) ioupos__putf(buf + 80 + 4 * r, sp[r]);
  for (r = 4; r < 8; ++r) ioupos__putf(buf + 76 + 4 * r, 1.0);
  ioupos__putf(buf + 108, 352.0);
  ioupos__putf(buf + 112, 1.0); /* scl_slope */
  ioupos__putf(buf + 116, 0.0); /* scl_inter */
  buf[123] = 2 | 8;             /* mm, s */
  memcpy(buf + 148, "ioupos " IOUPOS_VERSION, sizeof("ioupos " IOUPOS_VERSION) - 1);
  ioupos__put16le(buf + 252, 1); /* qform_code scanner */
  ioupos__put16le(buf + 254, 1); /* sform_code scanner */
  ioupos__putf(buf + 256, qb);
  ioupos__putf(buf + 260, qc);
  ioupos__putf(buf + 264, qd);
  for (r = 0; r < 3; ++r) ioupos__putf(buf + 268 + 4 * r, vol->affine[r][3]);
  for (r = 0; r < 3; ++r)
    for (c = 0; c < 4; ++c) ioupos__putf(buf + 280 + 16 * r + 4 * c, vol->affine[r][c]);
  memcpy(buf + 344, "n+1\0", 4);
  for (i = 0; i < nvox; ++i) {
    unsigned char *d = buf + 352 + i * (size_t)esize;
    double v = vol->data[i];
    if (datatype == IOUPOS_NIFTI_FLOAT32) {
      float f = vol->data[i];
      uint32_t u;
      memcpy(&u, &f, 4);
      ioupos__put32le(d, u);
      continue;
    }
    if (datatype == IOUPOS_NIFTI_FLOAT64) {
      uint64_t u;
      memcpy(&u, &v, 8);
      ioupos__put32le(d, (uint32_t)u);
      ioupos__put32le(d + 4, (uint32_t)(u >> 32));
      continue;
    }
    {
      double lo, hi, rv;
      uint64_t u;
      switch (datatype) {
        case IOUPOS_NIFTI_UINT8: lo = 0; hi = 255; break;
        case IOUPOS_NIFTI_INT8: lo = -128; hi = 127; break;
        case IOUPOS_NIFTI_INT16: lo = -32768; hi = 32767; break;
        case IOUPOS_NIFTI_UINT16: lo = 0; hi = 65535; break;
        case IOUPOS_NIFTI_INT32: lo = -2147483648.0; hi = 2147483647.0; break;
        case IOUPOS_NIFTI_UINT32: lo = 0; hi = 4294967295.0; break;
        case IOUPOS_NIFTI_INT64: lo = -9223372036854775808.0; hi = 9223372036854774784.0; break;
        default: lo = 0; hi = 18446744073709549568.0; break;
      }
      rv = v != v ? 0.0 : v < 0 ? -floor(-v + 0.5) : floor(v + 0.5);
      if (rv < lo) rv = lo;
      if (rv > hi) rv = hi;
      if (datatype == IOUPOS_NIFTI_UINT64 || (datatype != IOUPOS_NIFTI_INT64 && rv >= 0)) u = (uint64_t)rv;
      else u = (uint64_t)(int64_t)rv;
      for (r = 0; r < esize; ++r) d[r] = (unsigned char)(u >> (8 * r));
    }
  }
  if (!gzip) {
    *out = buf;
    *size = total;
    return IOUPOS_OK;
  }
  st = ioupos__gzip(buf, total, out, size);
  IOUPOS_FREE(buf);
  return st;
}

IOUPOS_DEF int ioupos_nifti_write(const char *path, const ioupos_volume *vol, int datatype) {
  unsigned char *bytes;
  size_t size, n;
  int st, gz;
  if (!path) return ioupos__fail(IOUPOS_EINVAL, "ioupos_nifti_write: NULL path");
  n = strlen(path);
  gz = n >= 3 && strcmp(path + n - 3, ".gz") == 0;
  st = ioupos_nifti_encode(vol, datatype, gz, &bytes, &size);
  if (st != IOUPOS_OK) {
    char why[400];
    snprintf(why, sizeof why, "%.399s", ioupos_failure_reason());
    return ioupos__fail(st, "%s: %s", path, why);
  }
  st = ioupos_write_file_atomic(path, bytes, size);
  IOUPOS_FREE(bytes);
  return st;
}

/* -- orientation -- */

IOUPOS_DEF int ioupos_volume_reorient_ras(ioupos_volume *vol) {
  double R[3][3], rs[3][3], zoom[3];
  int ornt[3][2], used_in[3] = {0, 0, 0}, order[3], a, b, r, c, n, identity = 1;
  if (!vol || !vol->data) return ioupos__fail(IOUPOS_EINVAL, "reorient: empty volume");
  /* io_orientation: column-normalise, polar decomposition, strongest input axis first */
  for (c = 0; c < 3; ++c) {
    zoom[c] = sqrt(vol->affine[0][c] * vol->affine[0][c] + vol->affine[1][c] * vol->affine[1][c] +
                   vol->affine[2][c] * vol->affine[2][c]);
    if (zoom[c] == 0.0) zoom[c] = 1.0;
    for (r = 0; r < 3; ++r) rs[r][c] = vol->affine[r][c] / zoom[c];
  }
  if (!ioupos__polar3(rs, R)) memcpy(R, rs, sizeof R);
  {
    double strength[3];
    for (c = 0; c < 3; ++c) {
      strength[c] = 0;
      for (r = 0; r < 3; ++r)
        if (R[r][c] * R[r][c] > strength[c]) strength[c] = R[r][c] * R[r][c];
    }
    for (a = 0; a < 3; ++a) order[a] = a;
    for (a = 1; a < 3; ++a) /* stable insertion sort, descending strength */
      for (b = a; b > 0 && strength[order[b]] > strength[order[b - 1]]; --b) {
        int t = order[b]; order[b] = order[b - 1]; order[b - 1] = t;
      }
  }
  for (n = 0; n < 3; ++n) {
    int in_ax = order[n], out_ax = 0, nonzero = 0;
    double best = -1.0;
    for (r = 0; r < 3; ++r) {
      if (fabs(R[r][in_ax]) > 1e-8) nonzero = 1;
      if (fabs(R[r][in_ax]) > best) best = fabs(R[r][in_ax]), out_ax = r;
    }
    if (!nonzero || used_in[out_ax])
      return ioupos__fail(IOUPOS_EFORMAT, "reorient: the affine is degenerate (input axis %d maps to no "
                                          "world axis)", in_ax);
    used_in[out_ax] = 1;
    ornt[in_ax][0] = out_ax;
    ornt[in_ax][1] = R[out_ax][in_ax] < 0 ? -1 : 1;
    for (c = 0; c < 3; ++c) R[out_ax][c] = 0.0;
  }
  for (a = 0; a < 3; ++a)
    if (ornt[a][0] != a || ornt[a][1] != 1) identity = 0;
  {
    /* inv_ornt_aff: output voxel o -> input voxel: in[a] = flip_a * o[ornt[a][0]] + shift_a */
    double M[4][4], na[4][4];
    ioupos_volume out;
    int odim[3], st;
    ioupos__mat4_identity(M);
    for (a = 0; a < 3; ++a) {
      for (c = 0; c < 4; ++c) M[a][c] = 0.0;
      M[a][ornt[a][0]] = ornt[a][1];
      M[a][3] = ornt[a][1] < 0 ? (double)(vol->dim[a] - 1) : 0.0;
    }
    ioupos__mat4_mul(na, vol->affine, M);
    if (identity) {
      memcpy(vol->affine, na, sizeof na);
      return IOUPOS_OK;
    }
    for (a = 0; a < 3; ++a) odim[ornt[a][0]] = vol->dim[a];
    st = ioupos_volume_alloc(&out, odim[0], odim[1], odim[2]);
    if (st != IOUPOS_OK) return st;
    {
      /* input strides per output axis, with flips */
      ptrdiff_t in_stride[3], step[3], base = 0;
      int i, j, k;
      in_stride[0] = 1;
      in_stride[1] = vol->dim[0];
      in_stride[2] = (ptrdiff_t)vol->dim[0] * vol->dim[1];
      for (a = 0; a < 3; ++a) {
        int m = ornt[a][0];
        step[m] = ornt[a][1] * in_stride[a];
        if (ornt[a][1] < 0) base += (ptrdiff_t)(vol->dim[a] - 1) * in_stride[a];
      }
      for (k = 0; k < odim[2]; ++k)
        for (j = 0; j < odim[1]; ++j) {
          float *dst = out.data + ((size_t)k * odim[1] + j) * odim[0];
          const float *src = vol->data + base + k * step[2] + j * step[1];
          for (i = 0; i < odim[0]; ++i) dst[i] = src[i * step[0]];
        }
    }
    memcpy(out.affine, na, sizeof na);
    ioupos_volume_free(vol);
    *vol = out;
  }
  return IOUPOS_OK;
}

/* -- resampling (MONAI Spacing) -- */

IOUPOS_DEF int ioupos_volume_resample_grid(const ioupos_volume *vol, const double spacing[3],
                                           int out_dim[3], double out_affine[4][4]) {
  double orig[3], outd[3], g[3][3], L[3][3], zs[3][3], zinv[3][3], rot[3][3], N[4][4], X[4][4];
  double corners_out[8][3], corners_w[8][3], lo[3], hi[3], oshape[3];
  int r, c, k, i, found = -1;
  ioupos_volume_spacing(vol, orig);
  for (k = 0; k < 3; ++k) {
    if (!(spacing[k] > 0) || !isfinite(spacing[k]))
      return ioupos__fail(IOUPOS_EINVAL, "resample: target spacing %g is not positive", spacing[k]);
    outd[k] = (spacing[k] - 1e-3 <= orig[k] && orig[k] <= spacing[k] + 1e-3) ? orig[k] : spacing[k];
  }
  /* zoom_affine(diagonal=False): rzs = rotation @ zs, zs = chol(rzs^T rzs)^T */
  for (r = 0; r < 3; ++r)
    for (c = 0; c < 3; ++c) {
      g[r][c] = 0;
      for (k = 0; k < 3; ++k) g[r][c] += vol->affine[k][r] * vol->affine[k][c];
    }
  memset(L, 0, sizeof L);
  for (r = 0; r < 3; ++r)
    for (c = 0; c <= r; ++c) {
      double s = g[r][c];
      for (k = 0; k < c; ++k) s -= L[r][k] * L[c][k];
      if (r == c) {
        if (!(s > 0)) return ioupos__fail(IOUPOS_EFORMAT, "resample: the affine is singular");
        L[r][r] = sqrt(s);
      } else {
        L[r][c] = s / L[c][c];
      }
    }
  for (r = 0; r < 3; ++r)
    for (c = 0; c < 3; ++c) zs[r][c] = L[c][r];
  /* inverse of the upper-triangular zs */
  memset(zinv, 0, sizeof zinv);
  for (c = 0; c < 3; ++c) {
    zinv[c][c] = 1.0 / zs[c][c];
    for (r = c - 1; r >= 0; --r) {
      double s = 0;
      for (k = r + 1; k <= c; ++k) s += zs[r][k] * zinv[k][c];
      zinv[r][c] = -s / zs[r][r];
    }
  }
  for (r = 0; r < 3; ++r)
    for (c = 0; c < 3; ++c) {
      rot[r][c] = 0;
      for (k = 0; k < 3; ++k) rot[r][c] += vol->affine[r][k] * zinv[k][c];
    }
  ioupos__mat4_identity(N);
  for (r = 0; r < 3; ++r)
    for (c = 0; c < 3; ++c) N[r][c] = rot[r][c] * outd[c];
  /* compute_shape_offset(scale_extent=False) */
  if (!ioupos__mat4_solve(N, vol->affine, X))
    return ioupos__fail(IOUPOS_EFORMAT, "resample: the output affine is singular");
  for (i = 0; i < 8; ++i) {
    double cin[4];
    cin[0] = (i & 4) ? vol->dim[0] - 1.0 : 0.0; /* meshgrid "ij": axis 0 slowest */
    cin[1] = (i & 2) ? vol->dim[1] - 1.0 : 0.0;
    cin[2] = (i & 1) ? vol->dim[2] - 1.0 : 0.0;
    cin[3] = 1.0;
    for (r = 0; r < 3; ++r) {
      double s = 0.0, w = 0.0;
      for (k = 0; k < 4; ++k) s += X[r][k] * cin[k];
      for (k = 0; k < 4; ++k) w += vol->affine[r][k] * cin[k];
      corners_out[i][r] = s;
      corners_w[i][r] = w;
    }
  }
  for (r = 0; r < 3; ++r) {
    lo[r] = hi[r] = corners_out[0][r];
    for (i = 1; i < 8; ++i) {
      if (corners_out[i][r] < lo[r]) lo[r] = corners_out[i][r];
      if (corners_out[i][r] > hi[r]) hi[r] = corners_out[i][r];
    }
    oshape[r] = nearbyint(hi[r] - lo[r] + 1.0); /* np.round: half to even */
    if (!(oshape[r] >= 1.0) || oshape[r] > 65535.0)
      return ioupos__fail(IOUPOS_ERANGE, "resample: output size %g along axis %d is out of range", oshape[r], r);
  }
  if (oshape[0] * oshape[1] * oshape[2] > 2147483648.0)
    return ioupos__fail(IOUPOS_ERANGE, "resample: output %gx%gx%g has more than 2^31 voxels", oshape[0],
                        oshape[1], oshape[2]);
  for (i = 0; i < 8 && found < 0; ++i) {
    int ok = 1;
    for (r = 0; r < 3; ++r) {
      double m = corners_out[0][r] - corners_out[i][r];
      int j;
      for (j = 1; j < 8; ++j)
        if (corners_out[j][r] - corners_out[i][r] < m) m = corners_out[j][r] - corners_out[i][r];
      if (!(fabs(m) <= 1e-8)) ok = 0;
    }
    if (ok) found = i;
  }
  memcpy(out_affine, N, sizeof N);
  for (r = 0; r < 3; ++r) {
    if (found >= 0) {
      out_affine[r][3] = corners_w[found][r];
    } else {
      double s = 0.0, t = 0.0;
      for (k = 0; k < 3; ++k) s += vol->affine[r][k] * (vol->dim[k] / 2.0);
      for (k = 0; k < 3; ++k) t += N[r][k] * (oshape[k] / 2.0);
      out_affine[r][3] = s + vol->affine[r][3] - t;
    }
    out_dim[r] = (int)oshape[r];
  }
  return IOUPOS_OK;
}

/* torch.linspace(-1, 1, n) (FMA form, as its vectorised CPU kernel) * (n - 1) / n */
static void ioupos__torch_base_grid(int n, double *out) {
  int i;
  if (n <= 1) {
    if (n == 1) out[0] = 0.0;
    return;
  }
  {
    double step = 2.0 / (double)(n - 1);
    int half = n / 2;
    for (i = 0; i < n; ++i) {
      double v = i < half ? fma(step, (double)i, -1.0) : fma(-step, (double)(n - i - 1), 1.0);
      out[i] = v * (double)(n - 1) / (double)n;
    }
  }
}

IOUPOS_DEF int ioupos_volume_resample(ioupos_volume *vol, const double spacing[3], int nearest) {
  double na[4][4], X[4][4], S[4][4], Dinv[4][4], M[4][4], T[4][4];
  int odim[3], st, r, c, k, unchanged;
  ioupos_volume out;
  double *lin[3] = {NULL, NULL, NULL};
  if (!vol || !vol->data) return ioupos__fail(IOUPOS_EINVAL, "resample: empty volume");
  st = ioupos_volume_resample_grid(vol, spacing, odim, na);
  if (st != IOUPOS_OK) return st;
  if (!ioupos__mat4_solve(vol->affine, na, X))
    return ioupos__fail(IOUPOS_EFORMAT, "resample: the input affine is singular");
  /* MONAI skips resampling (and keeps the input affine) when nothing changes */
  unchanged = odim[0] == vol->dim[0] && odim[1] == vol->dim[1] && odim[2] == vol->dim[2];
  if (unchanged) {
    int same = 1, ident = 1;
    for (r = 0; r < 4; ++r)
      for (c = 0; c < 4; ++c) {
        if (!(fabs(vol->affine[r][c] - na[r][c]) <= 1e-3 + 1e-5 * fabs(na[r][c]))) same = 0;
        if (!(fabs(X[r][c] - (r == c)) <= 1e-3 + 1e-5 * (r == c))) ident = 0;
      }
    unchanged = same || ident;
  }
  if (unchanged) return IOUPOS_OK;
  /* theta = S_src @ xform @ inv(S_dst), normalised coordinates (align_corners False) */
  ioupos__mat4_identity(S);
  ioupos__mat4_identity(Dinv);
  for (k = 0; k < 3; ++k) {
    double d = 2.0 / (double)odim[k], t = 1.0 / (double)odim[k] - 1.0, rcp = 1.0 / d;
    S[k][k] = 2.0 / (double)vol->dim[k];
    S[k][3] = 1.0 / (double)vol->dim[k] - 1.0;
    Dinv[k][k] = rcp;
    Dinv[k][3] = -t * rcp;
  }
  ioupos__mat4_mul(M, S, X);
  ioupos__mat4_mul(T, M, Dinv);
  st = ioupos_volume_alloc(&out, odim[0], odim[1], odim[2]);
  if (st != IOUPOS_OK) return st;
  for (k = 0; k < 3; ++k) {
    lin[k] = (double *)ioupos__calloc((size_t)odim[k], sizeof(double));
    if (!lin[k]) {
      for (c = 0; c < k; ++c) IOUPOS_FREE(lin[c]);
      ioupos_volume_free(&out);
      return ioupos__fail(IOUPOS_ENOMEM, "resample: out of memory");
    }
    ioupos__torch_base_grid(odim[k], lin[k]);
  }
  {
    const int nx = vol->dim[0], ny = vol->dim[1], nz = vol->dim[2];
    const size_t sxy = (size_t)nx * ny;
    const float *src = vol->data;
    int i, j;
    for (k = 0; k < odim[2]; ++k)
      for (j = 0; j < odim[1]; ++j) {
        float *dst = out.data + ((size_t)k * odim[1] + j) * odim[0];
        double pk[3], pj[3];
        for (r = 0; r < 3; ++r) {
          pk[r] = lin[2][k] * T[r][2];
          pj[r] = lin[1][j] * T[r][1];
        }
        for (i = 0; i < odim[0]; ++i) {
          double ix[3];
          for (r = 0; r < 3; ++r) {
            /* affine_grid: grid = base (W, H, D, 1) @ theta^T; then unnormalise and clip */
            double gv = ((pk[r] + pj[r]) + lin[0][i] * T[r][0]) + T[r][3];
            double n = (double)vol->dim[r];
            double x = ((gv + 1.0) * n - 1.0) / 2.0;
            if (!(x > 0.0)) x = 0.0; /* border padding (NaN -> 0 too) */
            if (x > n - 1.0) x = n - 1.0;
            ix[r] = x;
          }
          if (nearest) {
            int a = (int)nearbyint(ix[0]), b = (int)nearbyint(ix[1]), cc = (int)nearbyint(ix[2]);
            dst[i] = src[(size_t)cc * sxy + (size_t)b * nx + a];
          } else {
            int x0 = (int)floor(ix[0]), y0 = (int)floor(ix[1]), z0 = (int)floor(ix[2]);
            int x1 = x0 + 1, y1 = y0 + 1, z1 = z0 + 1;
            double tx = ix[0] - x0, ty = ix[1] - y0, tz = ix[2] - z0;
            double wx0 = (x1 - ix[0]), wy0 = (y1 - ix[1]), wz0 = (z1 - ix[2]);
            double acc = 0.0;
            int xs[2], ys[2], zs[2], a, b, cc;
            double wxs[2], wys[2], wzs[2];
            xs[0] = x0; xs[1] = x1; ys[0] = y0; ys[1] = y1; zs[0] = z0; zs[1] = z1;
            wxs[0] = wx0; wxs[1] = tx; wys[0] = wy0; wys[1] = ty; wzs[0] = wz0; wzs[1] = tz;
            for (cc = 0; cc < 2; ++cc) {
              if (zs[cc] >= nz) continue;
              for (b = 0; b < 2; ++b) {
                if (ys[b] >= ny) continue;
                for (a = 0; a < 2; ++a) {
                  if (xs[a] >= nx) continue;
                  acc += (double)src[(size_t)zs[cc] * sxy + (size_t)ys[b] * nx + xs[a]] *
                         (wxs[a] * wys[b] * wzs[cc]);
                }
              }
            }
            dst[i] = (float)acc;
          }
        }
      }
  }
  for (k = 0; k < 3; ++k) IOUPOS_FREE(lin[k]);
  memcpy(out.affine, na, sizeof na);
  ioupos_volume_free(vol);
  *vol = out;
  return IOUPOS_OK;
}

/* -- intensity, crop, pad -- */

IOUPOS_DEF void ioupos_volume_window(ioupos_volume *vol, double a_min, double a_max) {
  size_t i, n;
  float lo = (float)a_min, range = (float)(a_max - a_min);
  if (!vol || !vol->data) return;
  n = (size_t)vol->dim[0] * vol->dim[1] * vol->dim[2];
  for (i = 0; i < n; ++i) {
    float v = vol->data[i] - lo;
    if (range != 0.0f) v = v / range;
    if (v < 0.0f) v = 0.0f;
    if (v > 1.0f) v = 1.0f;
    vol->data[i] = v;
  }
}

IOUPOS_DEF void ioupos_volume_foreground_box(const ioupos_volume *vol, int lo[3], int hi[3]) {
  int i, j, k, any = 0;
  lo[0] = lo[1] = lo[2] = 0;
  hi[0] = hi[1] = hi[2] = 0;
  if (!vol || !vol->data) return;
  lo[0] = vol->dim[0];
  lo[1] = vol->dim[1];
  lo[2] = vol->dim[2];
  for (k = 0; k < vol->dim[2]; ++k)
    for (j = 0; j < vol->dim[1]; ++j) {
      const float *row = vol->data + ((size_t)k * vol->dim[1] + j) * vol->dim[0];
      int first = -1, last = -1;
      for (i = 0; i < vol->dim[0]; ++i)
        if (row[i] > 0.0f) {
          if (first < 0) first = i;
          last = i;
        }
      if (first < 0) continue;
      any = 1;
      if (first < lo[0]) lo[0] = first;
      if (last + 1 > hi[0]) hi[0] = last + 1;
      if (j < lo[1]) lo[1] = j;
      if (j + 1 > hi[1]) hi[1] = j + 1;
      if (k < lo[2]) lo[2] = k;
      if (k + 1 > hi[2]) hi[2] = k + 1;
    }
  if (!any) lo[0] = lo[1] = lo[2] = hi[0] = hi[1] = hi[2] = 0;
}

/* Copy the box [lo, hi) of vol (may reach outside: zeros there) into a new volume. */
static int ioupos__subvolume(ioupos_volume *vol, const int lo[3], const int hi[3]) {
  ioupos_volume out;
  int st, j, k, r, c;
  st = ioupos_volume_alloc(&out, hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]);
  if (st != IOUPOS_OK) return st;
  for (k = 0; k < out.dim[2]; ++k) {
    int sk = k + lo[2];
    if (sk < 0 || sk >= vol->dim[2]) continue;
    for (j = 0; j < out.dim[1]; ++j) {
      int sj = j + lo[1], i0 = lo[0] < 0 ? -lo[0] : 0;
      int i1 = hi[0] > vol->dim[0] ? vol->dim[0] - lo[0] : out.dim[0];
      if (sj < 0 || sj >= vol->dim[1] || i1 <= i0) continue;
      memcpy(out.data + ((size_t)k * out.dim[1] + j) * out.dim[0] + i0,
             vol->data + ((size_t)sk * vol->dim[1] + sj) * vol->dim[0] + lo[0] + i0,
             (size_t)(i1 - i0) * sizeof(float));
    }
  }
  /* affine @ translate(lo) */
  memcpy(out.affine, vol->affine, sizeof out.affine);
  for (r = 0; r < 3; ++r) {
    double t = vol->affine[r][3];
    for (c = 0; c < 3; ++c) t += vol->affine[r][c] * lo[c];
    out.affine[r][3] = t;
  }
  ioupos_volume_free(vol);
  *vol = out;
  return IOUPOS_OK;
}

IOUPOS_DEF int ioupos_volume_crop(ioupos_volume *vol, const int lo[3], const int hi[3]) {
  int k;
  if (!vol || !vol->data) return ioupos__fail(IOUPOS_EINVAL, "crop: empty volume");
  for (k = 0; k < 3; ++k)
    if (lo[k] < 0 || hi[k] > vol->dim[k] || lo[k] >= hi[k])
      return ioupos__fail(IOUPOS_EINVAL, "crop: box [%d, %d) on axis %d is empty or outside 0..%d", lo[k],
                          hi[k], k, vol->dim[k]);
  return ioupos__subvolume(vol, lo, hi);
}

IOUPOS_DEF int ioupos_volume_pad_xy(ioupos_volume *vol, int min_x, int min_y) {
  int lo[3], hi[3], need[2], k;
  if (!vol || !vol->data) return ioupos__fail(IOUPOS_EINVAL, "pad: empty volume");
  need[0] = min_x - vol->dim[0];
  need[1] = min_y - vol->dim[1];
  if (need[0] <= 0 && need[1] <= 0) return IOUPOS_OK;
  for (k = 0; k < 2; ++k) {
    int w = need[k] > 0 ? need[k] : 0;
    lo[k] = -(w / 2);               /* before: floor(w / 2) */
    hi[k] = vol->dim[k] + (w - w / 2); /* after: the rest */
  }
  lo[2] = 0;
  hi[2] = vol->dim[2];
  return ioupos__subvolume(vol, lo, hi);
}

IOUPOS_DEF void ioupos_prep_opts_default(ioupos_prep_opts *o) {
  o->a_min = -500.0;
  o->a_max = 500.0;
  o->spacing[0] = 1.0;
  o->spacing[1] = 1.0;
  o->spacing[2] = 2.5;
  o->pad_xy = 96;
}

IOUPOS_DEF int ioupos_preprocess(ioupos_volume *image, ioupos_volume *label,
                                 const ioupos_prep_opts *o) {
  int st, lo[3], hi[3], k;
  if (!image || !image->data || !o) return ioupos__fail(IOUPOS_EINVAL, "preprocess: empty image");
  if (label) {
    if (!label->data || label->dim[0] != image->dim[0] || label->dim[1] != image->dim[1] ||
        label->dim[2] != image->dim[2])
      return ioupos__fail(IOUPOS_EFORMAT, "label %dx%dx%d does not match image %dx%dx%d", label->dim[0],
                          label->dim[1], label->dim[2], image->dim[0], image->dim[1], image->dim[2]);
  }
  if ((st = ioupos_volume_reorient_ras(image)) != IOUPOS_OK) return st;
  if (label && (st = ioupos_volume_reorient_ras(label)) != IOUPOS_OK) return st;
  if ((st = ioupos_volume_resample(image, o->spacing, 0)) != IOUPOS_OK) return st;
  if (label) {
    if ((st = ioupos_volume_resample(label, o->spacing, 1)) != IOUPOS_OK) return st;
    for (k = 0; k < 3; ++k)
      if (label->dim[k] != image->dim[k])
        return ioupos__fail(IOUPOS_EFORMAT, "after resampling the label grid %dx%dx%d differs from the "
                            "image grid %dx%dx%d (their affines differ)", label->dim[0], label->dim[1],
                            label->dim[2], image->dim[0], image->dim[1], image->dim[2]);
  }
  ioupos_volume_window(image, o->a_min, o->a_max);
  ioupos_volume_foreground_box(image, lo, hi);
  if (hi[0] == lo[0])
    return ioupos__fail(IOUPOS_EFORMAT, "no foreground: no voxel is above a_min = %g", o->a_min);
  if ((st = ioupos_volume_crop(image, lo, hi)) != IOUPOS_OK) return st;
  if (label && (st = ioupos_volume_crop(label, lo, hi)) != IOUPOS_OK) return st;
  if ((st = ioupos_volume_pad_xy(image, o->pad_xy, o->pad_xy)) != IOUPOS_OK) return st;
  if (label && (st = ioupos_volume_pad_xy(label, o->pad_xy, o->pad_xy)) != IOUPOS_OK) return st;
  return IOUPOS_OK;
}

IOUPOS_DEF void ioupos_volume_slice_u8(const ioupos_volume *vol, int k, int is_label,
                                       uint8_t *out) {
  int r, c, nx = vol->dim[0], ny = vol->dim[1];
  const float *s = vol->data + (size_t)k * nx * ny;
  for (r = 0; r < nx; ++r)
    for (c = 0; c < ny; ++c) {
      double v = s[(size_t)c * nx + r], q;
      if (!is_label) v *= 255.0;
      q = v != v ? 0.0 : floor(v + 0.5); /* half away from zero for v >= 0; negatives clamp to 0 */
      out[(size_t)r * ny + c] = (uint8_t)(q < 0 ? 0 : q > 255 ? 255 : q);
    }
}

/* -- split files -- */

typedef struct ioupos__json {
  const char *s;
  size_t len, pos;
  const char *name;
} ioupos__json;

static int ioupos__json_fail(const ioupos__json *j, size_t at, const char *what) {
  size_t i, line = 1, col = 1;
  for (i = 0; i < at && i < j->len; ++i) {
    if (j->s[i] == '\n') ++line, col = 1;
    else ++col;
  }
  return ioupos__fail(IOUPOS_EFORMAT, "%s:%zu:%zu: %s", j->name, line, col, what);
}

static void ioupos__json_ws(ioupos__json *j) {
  while (j->pos < j->len &&
         (j->s[j->pos] == ' ' || j->s[j->pos] == '\t' || j->s[j->pos] == '\n' || j->s[j->pos] == '\r'))
    ++j->pos;
}

/* Length of the valid UTF-8 sequence at s[0..n) (1..4), or 0 if invalid (overlong forms,
   surrogates and code points above U+10FFFF are invalid). */
static size_t ioupos__utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && s[1] < 0xA0) return 0; /* overlong */
    if (c == 0xED && s[1] >= 0xA0) return 0; /* surrogate */
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
      return 0;
    if (c == 0xF0 && s[1] < 0x90) return 0; /* overlong */
    if (c == 0xF4 && s[1] >= 0x90) return 0; /* above U+10FFFF */
    return 4;
  }
  return 0;
}

/* Four hex digits at s[pos..pos+4) of s[0..len) into *v; 0 on success. */
static int ioupos__hex4(const unsigned char *s, size_t len, size_t pos, unsigned *v) {
  size_t i;
  *v = 0;
  if (len < pos || len - pos < 4) return -1;
  for (i = 0; i < 4; ++i) {
    unsigned char c = s[pos + i];
    unsigned d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10u;
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10u;
    else return -1;
    *v = *v * 16 + d;
  }
  return 0;
}

/* UTF-8 bytes of code point u (valid, not a surrogate) into enc; returns their number. */
static size_t ioupos__utf8_encode(unsigned u, char enc[4]) {
  if (u < 0x80) {
    enc[0] = (char)u;
    return 1;
  }
  if (u < 0x800) {
    enc[0] = (char)(0xC0 | (u >> 6));
    enc[1] = (char)(0x80 | (u & 0x3F));
    return 2;
  }
  if (u < 0x10000) {
    enc[0] = (char)(0xE0 | (u >> 12));
    enc[1] = (char)(0x80 | ((u >> 6) & 0x3F));
    enc[2] = (char)(0x80 | (u & 0x3F));
    return 3;
  }
  enc[0] = (char)(0xF0 | (u >> 18));
  enc[1] = (char)(0x80 | ((u >> 12) & 0x3F));
  enc[2] = (char)(0x80 | ((u >> 6) & 0x3F));
  enc[3] = (char)(0x80 | (u & 0x3F));
  return 4;
}

/* The JSON string reader shared by split files (this section) and safetensors headers
   (section 13). Decodes the string whose opening quote is at s[*pos] into dst, NUL-terminated,
   at most cap bytes before the NUL (the decoded form is never longer than its quoted source).
   Strict: RFC 8259 escapes, paired surrogates, valid UTF-8, no raw control characters, no
   \u0000. Returns 0 with *pos past the closing quote and *n_out the decoded length; otherwise
   -1 with *pos at the fault (the opening quote for an unterminated or too long string) and
   *why set. dst NULL checks the string without storing it (cap is then not a limit). */
static int ioupos__json_decode_string(const unsigned char *s, size_t len, size_t *pos, char *dst,
                                      size_t cap, size_t *n_out, const char **why) {
  size_t start = *pos, p = *pos, n = 0, k;
  if (p >= len || s[p] != '"') {
    *why = "expected a string";
    return -1;
  }
  ++p;
  for (;;) {
    unsigned char c;
    unsigned u, lo;
    char enc[4];
    if (p >= len) goto unterminated;
    c = s[p];
    if (c == '"') break;
    if (c < 0x20) {
      *pos = p, *why = "raw control character in a string";
      return -1;
    }
    if (c != '\\') {
      k = ioupos__utf8_len(s + p, len - p);
      if (k == 0) {
        *pos = p, *why = "invalid UTF-8 in a string";
        return -1;
      }
      if (dst && n + k > cap) goto too_long;
      if (dst) memcpy(dst + n, s + p, k);
      n += k, p += k;
      continue;
    }
    if (len - p < 2) goto unterminated;
    switch (s[p + 1]) {
      case '"': u = '"'; break;
      case '\\': u = '\\'; break;
      case '/': u = '/'; break;
      case 'b': u = 8; break;
      case 'f': u = 12; break;
      case 'n': u = 10; break;
      case 'r': u = 13; break;
      case 't': u = 9; break;
      case 'u':
        if (ioupos__hex4(s, len, p + 2, &u)) {
          *pos = p, *why = "bad hex digit in a \\u escape (expected 4)";
          return -1;
        }
        if (u >= 0xDC00 && u <= 0xDFFF) {
          *pos = p, *why = "lone low surrogate escape";
          return -1;
        }
        if (u >= 0xD800 && u <= 0xDBFF) {
          if (len - p < 12 || s[p + 6] != '\\' || s[p + 7] != 'u') {
            *pos = p, *why = "lone high surrogate escape";
            return -1;
          }
          if (ioupos__hex4(s, len, p + 8, &lo)) {
            *pos = p + 6, *why = "bad hex digit in a \\u escape (expected 4)";
            return -1;
          }
          if (lo < 0xDC00 || lo > 0xDFFF) {
            *pos = p, *why = "high surrogate escape not followed by a low one";
            return -1;
          }
          u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
          p += 6;
        }
        if (u == 0) {
          *pos = p, *why = "\\u0000 in a string";
          return -1;
        }
        p += 4;
        break;
      default:
        *pos = p, *why = "invalid escape: unknown escape character";
        return -1;
    }
    p += 2;
    k = ioupos__utf8_encode(u, enc);
    if (dst && n + k > cap) goto too_long;
    if (dst) memcpy(dst + n, enc, k);
    n += k;
  }
  if (dst) dst[n] = 0;
  *pos = p + 1;
  *n_out = n;
  return 0;
unterminated:
  *pos = start, *why = "unterminated string";
  return -1;
too_long:
  *pos = start, *why = "string too long";
  return -1;
}

/* Parse a JSON string at j->pos into a new buffer (UTF-8) of at most max_len bytes. */
static int ioupos__json_string(ioupos__json *j, char **out, size_t max_len) {
  const char *why = NULL;
  char msg[96];
  size_t n;
  char *buf = (char *)IOUPOS_MALLOC(max_len + 1);
  *out = NULL;
  if (!buf) return ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory", j->name);
  if (ioupos__json_decode_string((const unsigned char *)j->s, j->len, &j->pos, buf, max_len, &n,
                                 &why)) {
    IOUPOS_FREE(buf);
    if (strcmp(why, "string too long") == 0) {
      snprintf(msg, sizeof msg, "string longer than %lu bytes", (unsigned long)max_len);
      why = msg;
    }
    return ioupos__json_fail(j, j->pos, why);
  }
  *out = buf;
  return IOUPOS_OK;
}

#if IOUPOS__PART_CORE /* only section 18 (the resume check) skips values */
/* Skips the JSON value at j->pos (whitespace first): a string (checked as above), an array or
   object with everything in it, or a scalar (a number, true, false or null: the characters up to
   the next delimiter, not checked further). j->pos is then past it; a malformed or unterminated
   value fails with its line and column. The resume check (section 18) compares values by their
   text, so it needs their extent, not their meaning. */
static int ioupos__json_skip_value(ioupos__json *j, int depth) {
  const char *why = NULL;
  size_t n, b;
  char open, close;
  ioupos__json_ws(j);
  if (j->pos >= j->len) return ioupos__json_fail(j, j->pos, "expected a value");
  open = j->s[j->pos];
  if (open == '"') {
    if (ioupos__json_decode_string((const unsigned char *)j->s, j->len, &j->pos, NULL, 0, &n, &why))
      return ioupos__json_fail(j, j->pos, why);
    return IOUPOS_OK;
  }
  if (open == '[' || open == '{') {
    int st;
    if (depth >= 64) return ioupos__json_fail(j, j->pos, "nested deeper than 64 levels");
    close = open == '[' ? ']' : '}';
    ++j->pos;
    ioupos__json_ws(j);
    if (j->pos < j->len && j->s[j->pos] == close) {
      ++j->pos;
      return IOUPOS_OK;
    }
    for (;;) {
      if (open == '{') { /* "key": */
        ioupos__json_ws(j);
        if (j->pos >= j->len || j->s[j->pos] != '"')
          return ioupos__json_fail(j, j->pos, "expected a string key");
        if ((st = ioupos__json_skip_value(j, depth + 1)) != 0) return st;
        ioupos__json_ws(j);
        if (j->pos >= j->len || j->s[j->pos] != ':') return ioupos__json_fail(j, j->pos, "expected ':'");
        ++j->pos;
      }
      if ((st = ioupos__json_skip_value(j, depth + 1)) != 0) return st;
      ioupos__json_ws(j);
      if (j->pos < j->len && j->s[j->pos] == ',') {
        ++j->pos;
        continue;
      }
      if (j->pos < j->len && j->s[j->pos] == close) {
        ++j->pos;
        return IOUPOS_OK;
      }
      return ioupos__json_fail(j, j->pos, open == '[' ? "expected ',' or ']'" : "expected ',' or '}'");
    }
  }
  for (b = j->pos; j->pos < j->len && !strchr(",:]}[{\" \t\r\n", j->s[j->pos]); ++j->pos) {
  }
  return j->pos > b ? IOUPOS_OK : ioupos__json_fail(j, j->pos, "expected a value");
}
#endif

IOUPOS_DEF void ioupos_split_free(ioupos_split *split) {
  int s, c;
  if (!split) return;
  for (s = 0; s < split->n_sets; ++s) {
    for (c = 0; c < split->sets[s].n; ++c) IOUPOS_FREE(split->sets[s].cases[c]);
    IOUPOS_FREE(split->sets[s].cases);
    IOUPOS_FREE(split->sets[s].name);
  }
  IOUPOS_FREE(split->sets);
  split->sets = NULL;
  split->n_sets = 0;
}

IOUPOS_DEF int ioupos_split_find(const ioupos_split *split, const char *case_name) {
  int s, c;
  for (s = 0; s < split->n_sets; ++s)
    for (c = 0; c < split->sets[s].n; ++c)
      if (strcmp(split->sets[s].cases[c], case_name) == 0) return s;
  return -1;
}

IOUPOS_DEF int ioupos_split_parse(const char *text, size_t len, const char *name,
                                  ioupos_split *split) {
  ioupos__json j;
  size_t cap_sets = 0;
  int st;
  if (!split) return ioupos__fail(IOUPOS_EINVAL, "ioupos_split_parse: NULL split");
  split->n_sets = 0;
  split->sets = NULL;
  j.s = text ? text : "";
  j.len = text ? len : 0;
  j.pos = 0;
  j.name = name ? name : "(split)";
  if (j.len >= 3 && (unsigned char)j.s[0] == 0xEF && (unsigned char)j.s[1] == 0xBB &&
      (unsigned char)j.s[2] == 0xBF)
    j.pos = 3; /* UTF-8 byte order mark */
  ioupos__json_ws(&j);
  if (j.pos >= j.len || j.s[j.pos] != '{') {
    st = ioupos__json_fail(&j, j.pos, "expected '{' (a split file is an object of case-name lists, e.g. "
                                      "{\"train\": [...], \"val\": [...]})");
    goto fail;
  }
  ++j.pos;
  ioupos__json_ws(&j);
  if (j.pos < j.len && j.s[j.pos] == '}') {
    st = ioupos__json_fail(&j, j.pos, "the split object is empty");
    goto fail;
  }
  for (;;) {
    ioupos_split_set *set;
    size_t key_at, q;
    size_t cap_cases = 0;
    int s;
    char *key = NULL;
    ioupos__json_ws(&j);
    key_at = j.pos;
    if ((st = ioupos__json_string(&j, &key, 64)) != IOUPOS_OK) goto fail;
    for (q = 0; key[q]; ++q) {
      char ch = key[q];
      if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
            ch == '-'))
        break;
    }
    if (q == 0 || key[q]) {
      IOUPOS_FREE(key);
      st = ioupos__json_fail(&j, key_at, "split names must be 1-64 characters of A-Z a-z 0-9 _ -");
      goto fail;
    }
    for (s = 0; s < split->n_sets; ++s)
      if (strcmp(split->sets[s].name, key) == 0) {
        IOUPOS_FREE(key);
        st = ioupos__json_fail(&j, key_at, "duplicate split name");
        goto fail;
      }
    if (!ioupos__grow((void **)&split->sets, (size_t)split->n_sets, &cap_sets, sizeof(ioupos_split_set))) {
      IOUPOS_FREE(key);
      st = ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory", j.name);
      goto fail;
    }
    set = &split->sets[split->n_sets++];
    set->name = key;
    set->n = 0;
    set->cases = NULL;
    ioupos__json_ws(&j);
    if (j.pos >= j.len || j.s[j.pos] != ':') {
      st = ioupos__json_fail(&j, j.pos, "expected ':' after the split name");
      goto fail;
    }
    ++j.pos;
    ioupos__json_ws(&j);
    if (j.pos >= j.len || j.s[j.pos] != '[') {
      st = ioupos__json_fail(&j, j.pos, "expected '[' (a list of case names)");
      goto fail;
    }
    ++j.pos;
    ioupos__json_ws(&j);
    if (j.pos < j.len && j.s[j.pos] == ']') {
      ++j.pos;
    } else {
      for (;;) {
        char *cs = NULL;
        size_t at;
        ioupos__json_ws(&j);
        at = j.pos;
        if ((st = ioupos__json_string(&j, &cs, 255)) != IOUPOS_OK) goto fail;
        if (!cs[0] || !strcmp(cs, ".") || !strcmp(cs, "..") || strchr(cs, '/') || strchr(cs, '\\')) {
          IOUPOS_FREE(cs);
          st = ioupos__json_fail(&j, at, "case names must be non-empty, not \".\" or \"..\", without '/' or "
                                         "'\\'");
          goto fail;
        }
        for (q = 0; cs[q]; ++q)
          if ((unsigned char)cs[q] < 0x20 || cs[q] == 0x7F) break;
        if (cs[q]) {
          IOUPOS_FREE(cs);
          st = ioupos__json_fail(&j, at, "case names must not contain control characters");
          goto fail;
        }
        if (ioupos_split_find(split, cs) >= 0) {
          char why[400];
          snprintf(why, sizeof why, "case \"%.255s\" is listed twice", cs);
          IOUPOS_FREE(cs);
          st = ioupos__json_fail(&j, at, why);
          goto fail;
        }
        if (!ioupos__grow((void **)&set->cases, (size_t)set->n, &cap_cases, sizeof(char *))) {
          IOUPOS_FREE(cs);
          st = ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory", j.name);
          goto fail;
        }
        set->cases[set->n++] = cs;
        ioupos__json_ws(&j);
        if (j.pos < j.len && j.s[j.pos] == ',') {
          ++j.pos;
          continue;
        }
        if (j.pos < j.len && j.s[j.pos] == ']') {
          ++j.pos;
          break;
        }
        st = ioupos__json_fail(&j, j.pos, "expected ',' or ']' in a list of case names");
        goto fail;
      }
    }
    ioupos__json_ws(&j);
    if (j.pos < j.len && j.s[j.pos] == ',') {
      ++j.pos;
      continue;
    }
    if (j.pos < j.len && j.s[j.pos] == '}') {
      ++j.pos;
      break;
    }
    st = ioupos__json_fail(&j, j.pos, "expected ',' or '}' after a list");
    goto fail;
  }
  ioupos__json_ws(&j);
  if (j.pos != j.len) {
    st = ioupos__json_fail(&j, j.pos, "unexpected content after the split object");
    goto fail;
  }
  return IOUPOS_OK;
fail:
  ioupos_split_free(split);
  return st;
}

IOUPOS_DEF int ioupos_split_read(const char *path, ioupos_split *split) {
  void *buf;
  size_t size;
  int st;
  if (!split) return ioupos__fail(IOUPOS_EINVAL, "ioupos_split_read: NULL split");
  split->n_sets = 0;
  split->sets = NULL;
  st = ioupos_read_file(path, &buf, &size);
  if (st != IOUPOS_OK) return st;
  st = ioupos_split_parse((const char *)buf, size, path, split);
  IOUPOS_FREE(buf);
  return st;
}

/* ---- 7. Augmentations ------------------------------------------------------------------------- */

/* The research pretraining views (thesis p.29; transforms.py:282-345), value for value. The
   memset first leaves every field this preset does not name at 0, i.e. off: flip_prob[2]
   stays 0 until 3D exists. Blur sigmas are set on all three axes so a 3D record will not need
   a new preset. */
IOUPOS_DEF void ioupos_aug_config_pretrain(ioupos_aug_config *c) {
  int k;
  memset(c, 0, sizeof *c);
  c->zoom_prob = 0.75, c->zoom_min = 0.8, c->zoom_max = 1.2;
  c->flip_prob[0] = c->flip_prob[1] = 0.5;
  c->rot90_prob = 0.5, c->rot90_max_k = 3;
  c->scale_prob = 0.75, c->scale_min = -0.1, c->scale_max = 0.1;
  c->shift_prob = 0.75, c->shift_min = -0.1, c->shift_max = 0.1;
  c->blur_prob = 0.25;
  for (k = 0; k < 3; ++k) c->blur_sigma_min[k] = 0.25, c->blur_sigma_max[k] = 1.5;
  c->noise_prob = 0.25, c->noise_mean = 0.0, c->noise_std = 0.01, c->noise_sample_std = 1;
  c->intensity_first = 0;
}

/* Starts from the pretraining preset: the fine-tuning ranges the research code states (scale
   and shift 0.1, noise 0.01) are the pretraining ones, so only probabilities and the order
   change. Zoom is off, as the research fine-tuning has no RandZoomd; its values are still
   drawn, so fine-tuning and pretraining records use the same sequence of draws. */
IOUPOS_DEF void ioupos_aug_config_finetune(ioupos_aug_config *c) {
  ioupos_aug_config_pretrain(c);
  c->zoom_prob = 0.0;
  c->flip_prob[0] = c->flip_prob[1] = 0.25;
  c->rot90_prob = 0.25;
  c->scale_prob = c->shift_prob = c->blur_prob = c->noise_prob = 0.15;
  c->intensity_first = 1;
}

/* Every transform off. zoom 1 and sigma 1 are harmless placeholders: switching one flag on by
   hand yields a record that passes ioupos_view_apply's checks. */
IOUPOS_DEF void ioupos_view_params_identity(ioupos_view_params *p) {
  memset(p, 0, sizeof *p);
  p->dims = 2;
  p->zoom = 1.0;
  p->blur_sigma[0] = p->blur_sigma[1] = p->blur_sigma[2] = 1.0;
}

/* fires with probability prob; the value draw happens whatever the outcome. u < prob as MONAI's
   R.rand() < prob; ioupos__aug_range is uniform in [lo, hi) as R.uniform(lo, hi). */
static int ioupos__aug_fire(ioupos_rng *rng, double prob) { return ioupos_rng_uniform(rng) < prob; }
static double ioupos__aug_range(ioupos_rng *rng, double lo, double hi) {
  return lo + (hi - lo) * ioupos_rng_uniform(rng);
}

/* The order of the draws below (zoom, flips, rot90's k then its coin, scale, shift, blur,
   noise, the noise std and seed) is fixed and every draw is made whatever fires or is set:
   each view's record depends on the rng only through this order, so a resumed run replays its
   views bit for bit and changing one probability does not shift the others' values. Changing
   the order changes every view a seed produces. Only axes 0 and 1 are drawn (dims 2). The
   configuration is not validated here; ioupos_view_apply checks the values it will use. */
IOUPOS_DEF void ioupos_view_params_draw_config(const ioupos_aug_config *c, ioupos_rng *rng,
                                               ioupos_view_params *p) {
  int k;
  double s;
  ioupos_view_params_identity(p);
  p->intensity_first = c->intensity_first;
  p->zoom_on = ioupos__aug_fire(rng, c->zoom_prob);
  p->zoom = ioupos__aug_range(rng, c->zoom_min, c->zoom_max);
  for (k = 0; k < 2; ++k) p->flip[k] = ioupos__aug_fire(rng, c->flip_prob[k]);
  k = 1 + (int)ioupos_rng_below(rng, (uint64_t)(c->rot90_max_k > 1 ? c->rot90_max_k : 1));
  p->rot90_k = ioupos__aug_fire(rng, c->rot90_prob) ? k : 0;
  p->scale_on = ioupos__aug_fire(rng, c->scale_prob);
  p->scale = ioupos__aug_range(rng, c->scale_min, c->scale_max);
  p->shift_on = ioupos__aug_fire(rng, c->shift_prob);
  p->shift = ioupos__aug_range(rng, c->shift_min, c->shift_max);
  p->blur_on = ioupos__aug_fire(rng, c->blur_prob);
  for (k = 0; k < 2; ++k) p->blur_sigma[k] = ioupos__aug_range(rng, c->blur_sigma_min[k], c->blur_sigma_max[k]);
  p->noise_on = ioupos__aug_fire(rng, c->noise_prob);
  s = ioupos_rng_uniform(rng);
  p->noise_mean = c->noise_mean;
  p->noise_std = c->noise_sample_std ? s * c->noise_std : c->noise_std;
  p->noise_seed = ioupos_rng_u64(rng);
}

IOUPOS_DEF void ioupos_view_params_draw(ioupos_rng *rng, ioupos_view_params *p) {
  ioupos_aug_config c;
  ioupos_aug_config_pretrain(&c);
  ioupos_view_params_draw_config(&c, rng, p);
}

/* -- zoom -- */

/* Size of the zoomed axis (MONAI / torch: floor(n * zoom) in double), and where output index i
   of the kept-size axis reads in it: zi = i + off (off = crop start or minus pad before).
   The double floor is clamped to INT32_MAX, so even the largest accepted zoom (1e6) on a large
   image cannot overflow the int. */
static int ioupos__zoom_size(int n, double zoom, int *off) {
  double zd = floor((double)n * zoom);
  int zn = zd > (double)INT32_MAX ? INT32_MAX : (int)zd;
  if (zn > n) *off = zn / 2 - n / 2;         /* CenterSpatialCrop */
  else *off = -((n - zn) / 2);               /* SpatialPad, symmetric */
  return zn;
}

/* torch's linear source index for output index dst (align_corners False, scale in / out in
   float32, HelperInterpLinear::compute_indices_weights / compute_source_index_and_lambda).
   It stays in float32: torch computes scale and source index in float for float tensors, and
   only the same float formula picks the same neighbours and weights as the MONAI fixtures
   (compared to 2e-6). Clamping lambda to [0, 1] only guards rounding; at the last source row
   i1 = i0, so the edge value is repeated rather than read past the end. */
static void ioupos__lin_src(int in, int out, int dst, int *i0, int *i1, float *l0, float *l1) {
  float scale, src, lam;
  int i;
  if (in == out) {
    *i0 = *i1 = dst;
    *l0 = 1.0f, *l1 = 0.0f;
    return;
  }
  scale = (float)in / (float)out;
  src = scale * ((float)dst + 0.5f) - 0.5f;
  if (src < 0.0f) src = 0.0f;
  i = (int)src; /* src >= 0: truncation is floor */
  if (i > in - 1) i = in - 1;
  lam = src - (float)i;
  if (lam < 0.0f) lam = 0.0f;
  if (lam > 1.0f) lam = 1.0f;
  *i0 = i;
  *i1 = i + (i < in - 1 ? 1 : 0);
  *l1 = lam;
  *l0 = 1.0f - lam;
}

/* torch's "nearest" source index (nearest_idx), branch for branch. This legacy mode takes
   floor(dst * in / out), not the nearest source centre (that is "nearest-exact"), so labels
   move by up to half a source pixel exactly as MONAI's do. Every output copies one input value:
   label ids are never mixed. */
static int ioupos__nn_src(int in, int out, int dst) {
  float scale;
  int i;
  if (in == out) return dst;
  if (out == 2 * in) return dst >> 1;
  scale = (float)in / (float)out;
  i = (int)((float)dst * scale); /* >= 0: truncation is floor */
  return i < in - 1 ? i : in - 1;
}

/* One check and one reason for every zoom entry point: refuses NaN, zero, negative and
   factors above 1e6 (which keeps floor(n * zoom) finite and meaningful). */
static int ioupos__zoom_check(double zoom) {
  if (!(zoom > 0.0) || zoom > 1e6)
    return ioupos__fail(IOUPOS_EINVAL, "zoom: factor %g is not in (0, 1e6]", zoom);
  return IOUPOS_OK;
}

/* Separable bilinear. For each block of up to B output columns the column sources and weights
   are computed once into fixed-size stack arrays (no allocation; ioupos__lin_src's float
   division is not repeated per row); every output row then blends two source rows, each
   interpolated along the columns first. Padded outputs are 0: whole rows directly, columns
   through zero weights on source column 0, so the input must be finite (0 * inf is NaN). */
IOUPOS_DEF int ioupos_aug_zoom(const float *in, int h, int w, double zoom, float *out) {
  enum { B = 128 }; /* columns per block of precomputed source indices and weights */
  int c0[B], c1[B], zh, zw, oh, ow, i, j, j0;
  float b0[B], b1[B];
  if (ioupos__zoom_check(zoom) != IOUPOS_OK) return IOUPOS_EINVAL;
  zh = ioupos__zoom_size(h, zoom, &oh);
  zw = ioupos__zoom_size(w, zoom, &ow);
  for (j0 = 0; j0 < w; j0 += B) {
    int nb = w - j0 < B ? w - j0 : B;
    for (j = 0; j < nb; ++j) { /* columns outside the zoomed image read 0: weights 0 */
      int zj = j0 + j + ow;
      if (zj < 0 || zj >= zw) c0[j] = c1[j] = 0, b0[j] = b1[j] = 0.0f;
      else ioupos__lin_src(w, zw, zj, c0 + j, c1 + j, b0 + j, b1 + j);
    }
    for (i = 0; i < h; ++i) {
      float *o = out + (size_t)i * w + j0;
      int zi = i + oh, r0, r1;
      float a0, a1;
      const float *x0, *x1;
      if (zi < 0 || zi >= zh) {
        for (j = 0; j < nb; ++j) o[j] = 0.0f;
        continue;
      }
      ioupos__lin_src(h, zh, zi, &r0, &r1, &a0, &a1);
      x0 = in + (size_t)r0 * w, x1 = in + (size_t)r1 * w;
      for (j = 0; j < nb; ++j) {
        float t0 = x0[c0[j]] * b0[j] + x0[c1[j]] * b1[j];
        float t1 = x1[c0[j]] * b0[j] + x1[c1[j]] * b1[j];
        o[j] = t0 * a0 + t1 * a1;
      }
    }
  }
  return IOUPOS_OK;
}

/* The geometry of ioupos_aug_zoom (same sizes, same crop or pad offsets) with torch's nearest
   source indices: every output is one input value or the padding 0. */
IOUPOS_DEF int ioupos_aug_zoom_nearest(const float *in, int h, int w, double zoom, float *out) {
  int zh, zw, oh, ow, i, j;
  if (ioupos__zoom_check(zoom) != IOUPOS_OK) return IOUPOS_EINVAL;
  zh = ioupos__zoom_size(h, zoom, &oh);
  zw = ioupos__zoom_size(w, zoom, &ow);
  for (i = 0; i < h; ++i) {
    float *o = out + (size_t)i * w;
    int zi = i + oh;
    const float *x;
    if (zi < 0 || zi >= zh) {
      for (j = 0; j < w; ++j) o[j] = 0.0f;
      continue;
    }
    x = in + (size_t)ioupos__nn_src(h, zh, zi) * w;
    for (j = 0; j < w; ++j) {
      int zj = j + ow;
      o[j] = (zj < 0 || zj >= zw) ? 0.0f : x[ioupos__nn_src(w, zw, zj)];
    }
  }
  return IOUPOS_OK;
}

/* -- flip, rot90 -- */

/* In place by swapping mirrored rows (axis 0) or mirrored elements of each row (any other
   axis); the middle row or column of an odd size stays put. Cannot fail. */
IOUPOS_DEF void ioupos_aug_flip(float *img, int h, int w, int axis) {
  int i, j;
  if (axis == 0) {
    for (i = 0; i < h / 2; ++i) {
      float *a = img + (size_t)i * w, *b = img + (size_t)(h - 1 - i) * w;
      for (j = 0; j < w; ++j) {
        float t = a[j];
        a[j] = b[j];
        b[j] = t;
      }
    }
  } else {
    for (i = 0; i < h; ++i) {
      float *a = img + (size_t)i * w;
      for (j = 0; j < w / 2; ++j) {
        float t = a[j];
        a[j] = a[w - 1 - j];
        a[w - 1 - j] = t;
      }
    }
  }
}

/* k is reduced to 0..3 (negative k too, as torch.rot90 does). Each case writes out
   sequentially and gathers from in. Odd k swaps the shape: out holds w rows of h values. */
IOUPOS_DEF void ioupos_aug_rot90(const float *in, int h, int w, int k, float *out) {
  int i, j;
  k = ((k % 4) + 4) % 4;
  if (k == 0) {
    memcpy(out, in, sizeof(float) * (size_t)h * (size_t)w);
  } else if (k == 2) { /* out[i][j] = in[h-1-i][w-1-j] */
    for (i = 0; i < h; ++i) {
      const float *s = in + (size_t)(h - 1 - i) * w;
      float *o = out + (size_t)i * w;
      for (j = 0; j < w; ++j) o[j] = s[w - 1 - j];
    }
  } else if (k == 1) { /* out is w x h: out[i][j] = in[j][w-1-i] */
    for (i = 0; i < w; ++i) {
      float *o = out + (size_t)i * h;
      for (j = 0; j < h; ++j) o[j] = in[(size_t)j * w + (size_t)(w - 1 - i)];
    }
  } else { /* k == 3, out is w x h: out[i][j] = in[h-1-j][i] */
    for (i = 0; i < w; ++i) {
      float *o = out + (size_t)i * h;
      for (j = 0; j < h; ++j) o[j] = in[(size_t)(h - 1 - j) * w + (size_t)i];
    }
  }
}

/* -- Gaussian blur -- */

/* MONAI's gaussian_1d(sigma, truncated=4.0, approx="erf", normalize=False). sigma becomes a
   float32 tensor there, hence s; the tail is tested before the int conversion so a huge sigma
   cannot overflow it. Each tap is the mass of N(0, s^2) on [x - 0.5, x + 0.5] (a difference of
   erf), clamped at 0 as MONAI's clamp(min=0) does against rounding; no normalisation. */
IOUPOS_DEF int ioupos_aug_gaussian_kernel(double sigma, float *kernel, int cap) {
  float s = (float)sigma, c;
  double st;
  int tail, x;
  if (!(sigma > 0.0) || !(s > 0.0f)) return -1;
  st = (double)s * 4.0;
  if (!(st < IOUPOS_AUG_MAX_TAIL)) return -1;
  tail = (int)((st > 0.5 ? st : 0.5) + 0.5);
  if (tail > IOUPOS_AUG_MAX_TAIL || cap < 2 * tail + 1) return -1;
  c = 0.70710678f / s;
  for (x = -tail; x <= tail; ++x) {
    float hi = (float)erf((double)(c * ((float)x + 0.5f)));
    float lo = (float)erf((double)(c * ((float)x - 0.5f)));
    float v = 0.5f * (hi - lo);
    kernel[x + tail] = v > 0.0f ? v : 0.0f;
  }
  return tail;
}

/* MONAI's GaussianSmooth on one 2D channel: separable_filtering, one 1D convolution per axis
   with zero padding of tail pixels (output size unchanged), axis 0 first. Each output sums its
   taps in kernel order in the 16-wide blocks and at the borders alike, so the value of a pixel
   does not depend on which path computed it. Fails before touching img. */
IOUPOS_DEF int ioupos_aug_gaussian_blur(float *img, int h, int w, double sigma0, double sigma1,
                                        float *tmp) {
  float k0[2 * IOUPOS_AUG_MAX_TAIL + 1], k1[2 * IOUPOS_AUG_MAX_TAIL + 1];
  int t0 = ioupos_aug_gaussian_kernel(sigma0, k0, 2 * IOUPOS_AUG_MAX_TAIL + 1);
  int t1 = ioupos_aug_gaussian_kernel(sigma1, k1, 2 * IOUPOS_AUG_MAX_TAIL + 1);
  int i, j, q;
  if (t0 < 0 || t1 < 0)
    return ioupos__fail(IOUPOS_EINVAL, "Gaussian blur: sigma (%g, %g) not in (0, %g]", sigma0,
                        sigma1, (IOUPOS_AUG_MAX_TAIL - 0.5) / 4.0);
  /* Blocks of 16 columns with 16 independent accumulators (vectorised by GCC's SLP pass at
     -O2); every output still sums its taps in kernel order. */
  /* along rows (axis 0): tmp[i][j] = sum_q k0[q] img[i + q - t0][j], zero outside */
  for (i = 0; i < h; ++i) {
    int qlo = t0 - i > 0 ? t0 - i : 0, qhi = h - 1 - i + t0 < 2 * t0 ? h - 1 - i + t0 : 2 * t0;
    for (j = 0; j < w; j += 16) {
      float acc[16];
      int nb = w - j < 16 ? w - j : 16, m;
      if (nb == 16) {
        for (m = 0; m < 16; ++m) acc[m] = 0.0f;
        for (q = qlo; q <= qhi; ++q) {
          const float *s = img + (size_t)(i + q - t0) * w + j;
          float kq = k0[q];
          for (m = 0; m < 16; ++m) acc[m] += kq * s[m];
        }
        for (m = 0; m < 16; ++m) tmp[(size_t)i * w + j + m] = acc[m];
      } else {
        for (m = 0; m < nb; ++m) {
          float a = 0.0f;
          for (q = qlo; q <= qhi; ++q) a += k0[q] * img[(size_t)(i + q - t0) * w + j + m];
          tmp[(size_t)i * w + j + m] = a;
        }
      }
    }
  }
  /* along columns (axis 1): img[i][j] = sum_q k1[q] tmp[i][j + q - t1], zero outside */
  for (i = 0; i < h; ++i) {
    float *o = img + (size_t)i * w;
    const float *s = tmp + (size_t)i * w;
    for (j = 0; j < w; j += 16) {
      float acc[16];
      int nb = w - j < 16 ? w - j : 16, m;
      if (nb == 16 && j >= t1 && j + 16 + t1 <= w) {
        for (m = 0; m < 16; ++m) acc[m] = 0.0f;
        for (q = 0; q <= 2 * t1; ++q) {
          const float *sq = s + j + q - t1;
          float kq = k1[q];
          for (m = 0; m < 16; ++m) acc[m] += kq * sq[m];
        }
        for (m = 0; m < 16; ++m) o[j + m] = acc[m];
      } else { /* near the borders */
        for (m = 0; m < nb; ++m) {
          int jj = j + m, qlo = t1 - jj > 0 ? t1 - jj : 0;
          int qhi = w - 1 - jj + t1 < 2 * t1 ? w - 1 - jj + t1 : 2 * t1;
          float a = 0.0f;
          for (q = qlo; q <= qhi; ++q) a += k1[q] * s[jj + q - t1];
          o[jj] = a;
        }
      }
    }
  }
  return IOUPOS_OK;
}

/* -- noise, intensity -- */

IOUPOS_DEF void ioupos_aug_gaussian_noise(float *img, size_t n, double mean, double std,
                                          uint64_t seed) {
  /* Marsaglia's polar method in single precision on 32-bit uniforms: two independent N(0, 1)
     per accepted point (acceptance pi/4). float is plenty for noise added to float32 pixels
     (|z| reaches about 9.4), and logf keeps the cost near 4 ns a value. The generator is
     seeded from seed, not taken from the caller, so a stored view record replays its noise;
     an odd n uses only u of the last pair. */
  ioupos_rng rng;
  size_t i = 0;
  float fm = (float)mean, fs = (float)std;
  ioupos_rng_seed(&rng, seed);
  while (i < n) {
    float u, v, s, f;
    do { /* u, v uniform on [-1, 1) with 2^-31 spacing (rounded to float) */
      u = (float)((int64_t)ioupos_rng_u32(&rng) - 2147483648) * 4.656612873077392578125e-10f;
      v = (float)((int64_t)ioupos_rng_u32(&rng) - 2147483648) * 4.656612873077392578125e-10f;
      s = u * u + v * v;
    } while (s >= 1.0f || s == 0.0f);
    f = sqrtf(-2.0f * logf(s) / s);
    img[i] += fm + fs * (u * f);
    if (++i < n) img[i] += fm + fs * (v * f), ++i;
  }
}

/* The factor 1 + f is formed in double and rounded to float32 once, as torch does when a
   float32 tensor is multiplied by a Python float; then one float32 multiply per value. */
IOUPOS_DEF void ioupos_aug_scale(float *img, size_t n, double f) {
  float m = (float)(1.0 + f);
  size_t i;
  for (i = 0; i < n; ++i) img[i] *= m;
}

/* MONAI's ShiftIntensity: v + offset, the offset rounded to float32 once. */
IOUPOS_DEF void ioupos_aug_shift(float *img, size_t n, double o) {
  float a = (float)o;
  size_t i;
  for (i = 0; i < n; ++i) img[i] += a;
}

/* One memcpy per row. The box must lie inside the image: asserted, not reported, because the
   boxes come from the samplers or ioupos_posneg_locate, which guarantee it; h serves only the
   assertion. out holds the box's rows x columns. */
IOUPOS_DEF void ioupos_aug_crop(const float *in, int h, int w, const ioupos_box *box,
                                float *out) {
  int ch = box->hi[0] - box->lo[0], cw = box->hi[1] - box->lo[1], i;
  IOUPOS_ASSERT(box->lo[0] >= 0 && box->hi[0] <= h && box->lo[1] >= 0 && box->hi[1] <= w);
  (void)h;
  for (i = 0; i < ch; ++i)
    memcpy(out + (size_t)i * cw, in + (size_t)(box->lo[0] + i) * w + box->lo[1],
           sizeof(float) * (size_t)cw);
}

/* -- the view pipeline -- */

/* Every check that ioupos_view_apply documents, done before anything is written, so a failing
   apply leaves img and label untouched. The blur sigmas are tested by building their kernels
   into a stack buffer that is then discarded. */
static int ioupos__view_check(const ioupos_view_params *p, const void *img, int h, int w,
                              const void *tmp) {
  float kern[2 * IOUPOS_AUG_MAX_TAIL + 1];
  if (!p || !img || !tmp)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_view_apply: NULL argument");
  if (p->dims != 2)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_view_apply: dims %d (only 2D is implemented)",
                        p->dims);
  if (h < 1 || w < 1)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_view_apply: image %dx%d is empty", h, w);
  if (p->rot90_k < 0 || p->rot90_k > 3)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_view_apply: rot90_k %d not in 0..3", p->rot90_k);
  if ((p->rot90_k & 1) && h != w)
    return ioupos__fail(IOUPOS_EINVAL,
                        "ioupos_view_apply: rot90 by k = %d of a %dx%d image changes its shape; "
                        "use square crops", p->rot90_k, h, w);
  if (p->zoom_on && ioupos__zoom_check(p->zoom) != IOUPOS_OK)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_view_apply: zoom %g not in (0, 1e6]", p->zoom);
  if (p->blur_on && (ioupos_aug_gaussian_kernel(p->blur_sigma[0], kern, 2 * IOUPOS_AUG_MAX_TAIL + 1) < 0 ||
                     ioupos_aug_gaussian_kernel(p->blur_sigma[1], kern, 2 * IOUPOS_AUG_MAX_TAIL + 1) < 0))
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_view_apply: blur sigma (%g, %g) not in (0, %g]",
                        p->blur_sigma[0], p->blur_sigma[1], (IOUPOS_AUG_MAX_TAIL - 0.5) / 4.0);
  if ((p->scale_on && !isfinite(p->scale)) || (p->shift_on && !isfinite(p->shift)) ||
      (p->noise_on && (!isfinite(p->noise_mean) || !isfinite(p->noise_std))))
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_view_apply: non-finite intensity parameter "
                        "(scale %g, shift %g, noise mean %g std %g)", p->scale, p->shift,
                        p->noise_mean, p->noise_std);
  return IOUPOS_OK;
}

/* spatial part on *cur (h x w), using *other as scratch; swaps the two when the result lands
   in the scratch. nearest: label map. Flips work in place; zoom and rot90 write into the
   scratch and swap the pointers (ping-pong), so nothing allocates and the caller copies back
   only when the result ended in tmp. The order is the research code's. */
static void ioupos__view_spatial(const ioupos_view_params *p, float **cur, float **other, int h,
                                 int w, int nearest) {
  float *t;
  if (p->zoom_on) {
    if (nearest) ioupos_aug_zoom_nearest(*cur, h, w, p->zoom, *other);
    else ioupos_aug_zoom(*cur, h, w, p->zoom, *other);
    t = *cur, *cur = *other, *other = t;
  }
  if (p->flip[0]) ioupos_aug_flip(*cur, h, w, 0);
  if (p->flip[1]) ioupos_aug_flip(*cur, h, w, 1);
  if (p->rot90_k) {
    ioupos_aug_rot90(*cur, h, w, p->rot90_k, *other);
    t = *cur, *cur = *other, *other = t;
  }
}

/* intensity part on cur (h x w), other as the blur's scratch; image only. Pretraining order:
   scale, shift, blur, noise; fine-tuning (intensity_first): blur, scale, shift, noise. */
static void ioupos__view_intensity(const ioupos_view_params *p, float *cur, float *other, int h,
                                   int w) {
  size_t n = (size_t)h * (size_t)w;
  if (p->blur_on && p->intensity_first)
    ioupos_aug_gaussian_blur(cur, h, w, p->blur_sigma[0], p->blur_sigma[1], other);
  if (p->scale_on) ioupos_aug_scale(cur, n, p->scale);
  if (p->shift_on) ioupos_aug_shift(cur, n, p->shift);
  if (p->blur_on && !p->intensity_first)
    ioupos_aug_gaussian_blur(cur, h, w, p->blur_sigma[0], p->blur_sigma[1], other);
  if (p->noise_on) ioupos_aug_gaussian_noise(cur, n, p->noise_mean, p->noise_std, p->noise_seed);
}

/* The label gets the spatial part of the same record (same zoom, flips and rot90; nearest for
   the zoom), so image and label stay aligned pixel for pixel; intensity transforms never touch
   it. tmp serves the image first and then the label, so h * w floats suffice. */
IOUPOS_DEF int ioupos_view_apply_labelled(const ioupos_view_params *p, float *img, float *label,
                                          int h, int w, float *tmp) {
  float *cur = img, *other = tmp;
  int st = ioupos__view_check(p, img, h, w, tmp);
  if (st != IOUPOS_OK) return st;
  if (p->intensity_first) {
    ioupos__view_intensity(p, cur, other, h, w);
    ioupos__view_spatial(p, &cur, &other, h, w, 0);
  } else {
    ioupos__view_spatial(p, &cur, &other, h, w, 0);
    ioupos__view_intensity(p, cur, other, h, w);
  }
  if (cur != img) memcpy(img, cur, sizeof(float) * (size_t)h * (size_t)w);
  if (label) { /* the image is done with tmp: reuse it */
    cur = label, other = tmp;
    ioupos__view_spatial(p, &cur, &other, h, w, 1);
    if (cur != label) memcpy(label, cur, sizeof(float) * (size_t)h * (size_t)w);
  }
  return IOUPOS_OK;
}

IOUPOS_DEF int ioupos_view_apply(const ioupos_view_params *p, float *img, int h, int w,
                                 float *tmp) {
  return ioupos_view_apply_labelled(p, img, NULL, h, w, tmp);
}

/* -- RandCropByPosNegLabeld -- */

static int ioupos__posneg_is(const float *label, const float *image, double thr, size_t i, int fg) {
  if (label[i] != 0.0f) return fg; /* NaN counts as foreground, as numpy's nonzero does */
  /* a NaN image value is not above the threshold, so it is never background */
  return !fg && (!image || (double)image[i] > thr);
}

/* The classification of ioupos__posneg_is, inlined into one pass over the map. */
IOUPOS_DEF void ioupos_posneg_count(const float *label, const float *image,
                                    double image_threshold, int h, int w, uint64_t *n_fg,
                                    uint64_t *n_bg) {
  size_t i, n = (size_t)h * (size_t)w;
  uint64_t f = 0, b = 0;
  for (i = 0; i < n; ++i) {
    if (label[i] != 0.0f) ++f;
    else if (!image || (double)image[i] > image_threshold) ++b;
  }
  *n_fg = f;
  *n_bg = b;
}

static int ioupos__posneg_check(const float *label, int h, int w, const int crop[2]) {
  if (!label || !crop)
    return ioupos__fail(IOUPOS_EINVAL, "pos/neg crop: NULL argument");
  if (h < 1 || w < 1 || crop[0] < 1 || crop[1] < 1 || crop[0] > h || crop[1] > w)
    return ioupos__fail(IOUPOS_EINVAL,
                        "pos/neg crop: crop %dx%d does not fit in the %dx%d label map", crop[0],
                        crop[1], h, w);
  return IOUPOS_OK;
}

/* correct_crop_centers on one axis: centre c of a crop of size s in n voxels. MONAI computes
   valid_end = n + 1 - s / 2 in floating point and truncates it, i.e. n + 1 - ceil(s / 2) for
   positive sizes. Its end == start adjustment would need s = n + 1, a crop that does not fit,
   so it never fires here; it is kept to mirror MONAI line for line. */
static int ioupos__posneg_center(int c, int s, int n) {
  int start = s / 2, end = n + 1 - (s + 1) / 2; /* (int)(n + 1 - s / 2.0) */
  if (end == start) ++end;
  return c < start ? start : c > end - 1 ? end - 1 : c;
}

/* The rank-th member of the set in flattened row-major order, the order of the indices MONAI's
   map_binary_to_indices returns. A scan, O(h w) per crop, instead of an index array: drawing
   allocates nothing, and two crops per slice make the scan negligible next to training. The box
   starts at centre - crop / 2, which the correction keeps inside the image (asserted). */
IOUPOS_DEF int ioupos_posneg_locate(const float *label, const float *image,
                                    double image_threshold, int h, int w, const int crop[2],
                                    int fg, uint64_t rank, ioupos_posneg_crop *out) {
  size_t i, n = (size_t)h * (size_t)w;
  uint64_t seen = 0;
  int k;
  if (ioupos__posneg_check(label, h, w, crop) != IOUPOS_OK || !out) return IOUPOS_EINVAL;
  fg = fg != 0;
  for (i = 0; i < n; ++i) {
    if (!ioupos__posneg_is(label, image, image_threshold, i, fg)) continue;
    if (seen++ == rank) break;
  }
  if (i == n)
    return ioupos__fail(IOUPOS_EINVAL, "pos/neg crop: %s index %llu out of range (%llu voxels)",
                        fg ? "foreground" : "background", (unsigned long long)rank,
                        (unsigned long long)seen);
  memset(out, 0, sizeof *out);
  out->fg = fg;
  out->rank = rank;
  out->center[0] = ioupos__posneg_center((int)(i / (size_t)w), crop[0], h);
  out->center[1] = ioupos__posneg_center((int)(i % (size_t)w), crop[1], w);
  out->box.dims = 2;
  for (k = 0; k < 2; ++k) {
    int lo = out->center[k] - crop[k] / 2;
    out->box.lo[k] = lo > 0 ? lo : 0;
    out->box.hi[k] = out->box.lo[k] + crop[k];
    IOUPOS_ASSERT(out->box.hi[k] <= (k ? w : h));
  }
  return IOUPOS_OK;
}

/* MONAI's generate_pos_neg_label_crop_centers: per crop a foreground coin (uniform < ratio),
   then a uniform rank in the chosen set. The coin is drawn even when the ratio is 0 or 1, as
   MONAI's is, so the draws per crop do not depend on the label map. ratio is 0 without
   foreground and 1 without background, as MONAI falls back to the set that exists. The sets
   are counted once. */
IOUPOS_DEF int ioupos_posneg_crops_draw(ioupos_rng *rng, const float *label, const float *image,
                                        double image_threshold, int h, int w, const int crop[2],
                                        double pos, double neg, int num_samples,
                                        ioupos_posneg_crop *out) {
  uint64_t nf, nb;
  double ratio;
  int s;
  if (ioupos__posneg_check(label, h, w, crop) != IOUPOS_OK) return IOUPOS_EINVAL;
  if (!rng || !out || num_samples < 0 || !(pos >= 0.0) || !(neg >= 0.0) || !(pos + neg > 0.0) ||
      !isfinite(pos + neg))
    return ioupos__fail(IOUPOS_EINVAL, "pos/neg crop: bad arguments (pos %g, neg %g, %d samples)",
                        pos, neg, num_samples);
  ioupos_posneg_count(label, image, image_threshold, h, w, &nf, &nb);
  if (nf == 0 && nb == 0)
    return ioupos__fail(IOUPOS_EINFEASIBLE, "pos/neg crop: the %dx%d label map has no foreground "
                        "and no background above the image threshold %g", h, w, image_threshold);
  ratio = nf == 0 ? 0.0 : nb == 0 ? 1.0 : pos / (pos + neg);
  for (s = 0; s < num_samples; ++s) {
    int fg = ioupos_rng_uniform(rng) < ratio;
    uint64_t rank = ioupos_rng_below(rng, fg ? nf : nb);
    int st = ioupos_posneg_locate(label, image, image_threshold, h, w, crop, fg, rank, out + s);
    if (st != IOUPOS_OK) return st;
  }
  return IOUPOS_OK;
}

/* ---- 8. Synthetic CT phantom ------------------------------------------------------------------ */

/* Implementation notes.

   Everything is described in "nominal" millimetres: RAS world coordinates of a standard-size
   patient centred at the origin. A voxel's nominal point is its world point divided by the fit
   factor (field of view smaller than the reference) and by the case's body scale, so the
   per-axis tables px[i], py[j], pz[k] give it without any per-voxel arithmetic.

   Painting order (later wins): air; body layers (skin, fat, wall muscle, cavity fat); bowel in
   the cavity; organs in increasing priority, each only inside the cavity and (except the
   vessels and the oesophagus) below the diaphragm; unlabelled vessels inside the liver and the
   mesentery; thorax above the diaphragm; posterior muscles and bone last, which clear any label
   under them. A region map (0 outside the body, 1 body wall, 2 cavity) gates the organs.

   Organ shapes are unions of ellipsoids and tubes (Catmull-Rom-smoothed polylines with a
   radius per point). A shape is tested at the voxel's nominal point plus the organ's smooth
   displacement d, whose component c is a sum of two sinusoids of the other two coordinates;
   those are tabulated per axis, so the warp costs six table look-ups per voxel. */

#define IOUPOS__PH_MAXCP 8               /* control points per tube */
#define IOUPOS__PH_SUB 6                 /* smoothed points per control segment */
#define IOUPOS__PH_MAXPTS ((IOUPOS__PH_MAXCP - 1) * IOUPOS__PH_SUB + 1)
#define IOUPOS__PH_MAXSHAPES 3
#define IOUPOS__PH_PI 3.14159265358979323846
#define IOUPOS__PH_NWAVES 6               /* plane waves of the bowel field */
#define IOUPOS__PH_REF_X 384.0           /* reference field of view (mm) */
#define IOUPOS__PH_REF_Y 320.0
#define IOUPOS__PH_REF_Z 160.0

typedef struct ioupos__ph_shape {
  int tube;                            /* 0: ellipsoid, 1: tube */
  double c[3], r[3];                   /* ellipsoid centre and semi-axes */
  double m[3][3];                      /* ellipsoid: rows are the local axes (world -> local) */
  int n;                               /* tube: smoothed points */
  double p[IOUPOS__PH_MAXPTS][4];      /* tube: x, y, z, radius */
  double lo[3], hi[3];                 /* bounding box, nominal mm */
} ioupos__ph_shape;

typedef struct ioupos__ph_organ {
  int label, clip;                     /* clip: only below the diaphragm */
  int nshapes;
  ioupos__ph_shape s[IOUPOS__PH_MAXSHAPES];
  double hu;                           /* base HU of the case */
  double amp[3][2], w[3][2], ph[3][2]; /* warp: d_c = sum_t amp sin(w * x_other_t + ph) */
  double *wt[3][2];                    /* tabulated warp terms over the other axes' indices */
} ioupos__ph_organ;

/* the case: everything drawn from the seed */
typedef struct ioupos__ph_case {
  double body_a, body_b_ant, body_b_post; /* body semi-axes at z = 0 (nominal mm) */
  double body_wa, body_wb, body_pa, body_pb; /* slow z variation: relative amplitudes, phases */
  double fat_lat, fat_ant, fat_post, wall;   /* layer thicknesses (mm) */
  double dome_r, dome_l;                     /* diaphragm dome apex heights (nominal z) */
  double air_level;                          /* stomach: air above this y */
  double hu_fat, hu_muscle, hu_liver, hu_spleen, hu_kidney, hu_aorta, hu_ivc;
  double bowel_k[IOUPOS__PH_NWAVES][3];      /* bowel field: plane waves cos(k . x + ph) */
  double bowel_ph[IOUPOS__PH_NWAVES];
  double rib_phase;
} ioupos__ph_case;

/* Uniform in [a, b). Every draw of a case comes from the anatomy stream in program order, so
   the sequence of calls IS the case: moving, adding or removing a draw changes every later
   one, and with it the volumes of every seed. "Same seed, same volumes" holds within one
   version of this code, not across versions that change the draws. */
static double ioupos__ph_u(ioupos_rng *rng, double a, double b) {
  return a + (b - a) * ioupos_rng_uniform(rng);
}

static double ioupos__ph_clamp(double v, double lo, double hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

/* Rotation, local -> world: R = Rz(az) Ry(ay) Rx(ax); m gets its transpose (world -> local).
   Only world -> local is ever used (ph_eval and the kidney shading map a point into the
   ellipsoid's frame), and the inverse of a rotation is its transpose: nothing is inverted. */
static void ioupos__ph_rotation(double m[3][3], double az, double ay, double ax) {
  double cz = cos(az), sz = sin(az), cy = cos(ay), sy = sin(ay), cx = cos(ax), sx = sin(ax);
  double R[3][3];
  int i, j;
  R[0][0] = cz * cy; R[0][1] = cz * sy * sx - sz * cx; R[0][2] = cz * sy * cx + sz * sx;
  R[1][0] = sz * cy; R[1][1] = sz * sy * sx + cz * cx; R[1][2] = sz * sy * cx - cz * sx;
  R[2][0] = -sy;     R[2][1] = cy * sx;                R[2][2] = cy * cx;
  for (i = 0; i < 3; ++i)
    for (j = 0; j < 3; ++j) m[i][j] = R[j][i];
}

/* An ellipsoid: nominal centre c, semi-axes r, angles (rad) about z, y, x; jittered by the
   organ's draws (shift sh, scale sc) already applied by the caller.
   The bounding box is the cube of half-side max(r) around c: loose, but right for any
   rotation, and it only limits the voxels ph_paint visits. At most IOUPOS__PH_MAXSHAPES per
   organ; the organ table is fixed code, so going over is a bug and is only asserted. */
static void ioupos__ph_ellipsoid(ioupos__ph_organ *g, const double c[3], const double r[3],
                                 double az, double ay, double ax) {
  ioupos__ph_shape *s = &g->s[g->nshapes++];
  double rmax;
  int k;
  IOUPOS_ASSERT(g->nshapes <= IOUPOS__PH_MAXSHAPES);
  memset(s, 0, sizeof *s);
  s->tube = 0;
  rmax = r[0] > r[1] ? r[0] : r[1];
  rmax = rmax > r[2] ? rmax : r[2];
  for (k = 0; k < 3; ++k) {
    s->c[k] = c[k];
    s->r[k] = r[k];
    s->lo[k] = c[k] - rmax;
    s->hi[k] = c[k] + rmax;
  }
  ioupos__ph_rotation(s->m, az, ay, ax);
}

/* A tube through n control points cp[i] = {x, y, z, radius}, smoothed by Catmull-Rom.
   Catmull-Rom passes through every control point with a continuous tangent, so a few
   anatomical landmarks give a smooth centre line; the radius goes through the same spline, so
   the calibre changes smoothly too. The end segments repeat the end point as the missing
   neighbour. Each segment gives IOUPOS__PH_SUB points (t = 0, 1 / SUB, ...), the last one also
   its end (t = 1), so n control points give (n - 1) SUB + 1 <= IOUPOS__PH_MAXPTS points.
   The box is that of the spheres at the smoothed points: ph_eval interpolates centre and
   radius linearly between two of them, and such a tapered segment lies in the convex hull of
   its two end spheres, so inside the box. */
static void ioupos__ph_tube(ioupos__ph_organ *g, const double (*cp)[4], int n) {
  ioupos__ph_shape *s = &g->s[g->nshapes++];
  int i, j, k;
  IOUPOS_ASSERT(g->nshapes <= IOUPOS__PH_MAXSHAPES && n >= 2 && n <= IOUPOS__PH_MAXCP);
  memset(s, 0, sizeof *s);
  s->tube = 1;
  s->n = 0;
  for (i = 0; i + 1 < n; ++i) {
    const double *p0 = cp[i > 0 ? i - 1 : 0], *p1 = cp[i], *p2 = cp[i + 1];
    const double *p3 = cp[i + 2 < n ? i + 2 : n - 1];
    for (j = 0; j < IOUPOS__PH_SUB || (i + 2 == n && j == IOUPOS__PH_SUB); ++j) {
      double t = (double)j / IOUPOS__PH_SUB, t2 = t * t, t3 = t2 * t;
      for (k = 0; k < 4; ++k)
        s->p[s->n][k] = 0.5 * (2.0 * p1[k] + (-p0[k] + p2[k]) * t +
                               (2.0 * p0[k] - 5.0 * p1[k] + 4.0 * p2[k] - p3[k]) * t2 +
                               (-p0[k] + 3.0 * p1[k] - 3.0 * p2[k] + p3[k]) * t3);
      ++s->n;
    }
  }
  for (k = 0; k < 3; ++k) {
    s->lo[k] = 1e30;
    s->hi[k] = -1e30;
  }
  for (i = 0; i < s->n; ++i)
    for (k = 0; k < 3; ++k) {
      if (s->p[i][k] - s->p[i][3] < s->lo[k]) s->lo[k] = s->p[i][k] - s->p[i][3];
      if (s->p[i][k] + s->p[i][3] > s->hi[k]) s->hi[k] = s->p[i][k] + s->p[i][3];
    }
}

/* Normalised distance of point x to a shape (< 1 inside); *rad gets the local radius (tube:
   the radius at the nearest centre-line point; ellipsoid: the smallest semi-axis).
   Ellipsoid: the length of the point in the frame where the ellipsoid is the unit ball. Tube:
   the smallest, over the smoothed segments, of the distance to the segment divided by the
   radius interpolated at the foot of the perpendicular (squared ratios are compared, one sqrt
   taken at the end). The value is relative, not in mm, so ph_shade can put shells at fixed
   fractions of the radius (kidney medulla, oesophageal and duodenal lumen) that scale with
   the organ. A tube costs a pass over up to IOUPOS__PH_MAXPTS - 1 segments per voxel, which
   is why ph_paint first restricts the voxels to the shapes' boxes. */
static double ioupos__ph_eval(const ioupos__ph_shape *s, const double x[3], double *rad) {
  int i, k;
  if (!s->tube) {
    double q = 0.0;
    for (i = 0; i < 3; ++i) {
      double u = 0.0;
      for (k = 0; k < 3; ++k) u += s->m[i][k] * (x[k] - s->c[k]);
      u /= s->r[i];
      q += u * u;
    }
    *rad = s->r[0] < s->r[1] ? (s->r[0] < s->r[2] ? s->r[0] : s->r[2])
                             : (s->r[1] < s->r[2] ? s->r[1] : s->r[2]);
    return sqrt(q);
  } else {
    double best = 1e30, brad = 1.0;
    for (i = 0; i + 1 < s->n; ++i) {
      const double *a = s->p[i], *b = s->p[i + 1];
      double ab[3], ax[3], l2 = 0.0, t = 0.0, d2 = 0.0, r, q;
      for (k = 0; k < 3; ++k) {
        ab[k] = b[k] - a[k];
        ax[k] = x[k] - a[k];
        l2 += ab[k] * ab[k];
        t += ab[k] * ax[k];
      }
      t = l2 > 0.0 ? ioupos__ph_clamp(t / l2, 0.0, 1.0) : 0.0;
      for (k = 0; k < 3; ++k) {
        double e = ax[k] - t * ab[k];
        d2 += e * e;
      }
      r = a[3] + t * (b[3] - a[3]);
      q = d2 / (r * r);
      if (q < best) best = q, brad = r;
    }
    *rad = brad;
    return sqrt(best);
  }
}

/* Diaphragm height (nominal z) over the nominal point (x, y): two domes, the right higher,
   falling fastest towards the back, never below the posterior recesses.
   Organs with clip stop 5 mm below this surface (ph_paint) and the thorax pass fills that band
   with diaphragm muscle, so the one surface is both the roof of the abdomen and the floor of
   the lungs. */
static double ioupos__ph_diaphragm(const ioupos__ph_case *cs, double x, double y) {
  double dy = y + 5.0, ky = dy < 0 ? 1.0 / (60.0 * 60.0) : 1.0 / (120.0 * 120.0);
  double zr = cs->dome_r - 32.0 * ((x - 62.0) * (x - 62.0) / (75.0 * 75.0) + dy * dy * ky);
  double zl = cs->dome_l - 32.0 * ((x + 62.0) * (x + 62.0) / (70.0 * 70.0) + dy * dy * ky);
  double z = zr > zl ? zr : zl, zc = cs->dome_l - 14.0;
  if (z < zc && y > -40.0) z = zc; /* central tendon under the heart */
  return z < 22.0 ? 22.0 : z;
}

/* Body outline test at nominal (x, y) for semi-axes a, b_ant, b_post: < 1 inside. The back is
   squarer than the front. The value is not a distance: callers only compare it with 1. The
   layers (skin, fat, wall muscle) are the same test with the semi-axes shrunk by their
   thicknesses, so each layer is about that many mm thick all the way round. */
static double ioupos__ph_outline(double x, double y, double a, double bant, double bpost) {
  double u = x / a, v = y / (y >= 0 ? bant : bpost), u2 = u * u, v2 = v * v;
  return y >= 0 ? u2 + v2 : u2 + v2 - 0.55 * u2 * v2;
}

/* The case-wide draws, from the anatomy stream in this fixed order. The ranges are plausible
   for adult abdominal CT and narrow enough that the organs keep their order of brightness
   (aorta > IVC > liver > spleen) for every seed, so every case poses the same segmentation
   task at another size, shape and contrast. The left dome is drawn below the right one, so
   the right is always the higher, as in most patients. */
static void ioupos__ph_draw_case(ioupos_rng *rng, ioupos__ph_case *cs) {
  int t, k;
  cs->body_a = ioupos__ph_u(rng, 150.0, 168.0);
  cs->body_b_ant = ioupos__ph_u(rng, 108.0, 124.0);
  cs->body_b_post = ioupos__ph_u(rng, 108.0, 114.0);
  cs->body_wa = ioupos__ph_u(rng, 0.02, 0.05);
  cs->body_wb = ioupos__ph_u(rng, 0.02, 0.05);
  cs->body_pa = ioupos__ph_u(rng, 0.0, 2.0 * IOUPOS__PH_PI);
  cs->body_pb = ioupos__ph_u(rng, 0.0, 2.0 * IOUPOS__PH_PI);
  cs->fat_lat = ioupos__ph_u(rng, 8.0, 26.0);
  cs->fat_ant = cs->fat_lat * ioupos__ph_u(rng, 0.9, 1.4);
  cs->fat_post = cs->fat_lat * ioupos__ph_u(rng, 0.4, 0.7);
  cs->wall = ioupos__ph_u(rng, 9.0, 13.0);
  cs->dome_r = ioupos__ph_u(rng, 78.0, 88.0);
  cs->dome_l = cs->dome_r - ioupos__ph_u(rng, 6.0, 14.0);
  cs->air_level = ioupos__ph_u(rng, 20.0, 45.0);
  cs->hu_fat = ioupos__ph_u(rng, -105.0, -85.0);
  cs->hu_muscle = ioupos__ph_u(rng, 45.0, 58.0);
  cs->hu_liver = ioupos__ph_u(rng, 55.0, 66.0);
  cs->hu_spleen = ioupos__ph_u(rng, 45.0, 54.0);
  cs->hu_kidney = ioupos__ph_u(rng, 38.0, 50.0);
  cs->hu_aorta = ioupos__ph_u(rng, 160.0, 220.0);
  cs->hu_ivc = ioupos__ph_u(rng, 80.0, 120.0);
  for (t = 0; t < IOUPOS__PH_NWAVES; ++t) { /* random direction, wavelength 40..75 mm */
    double d[3], len = 0.0, w = 2.0 * IOUPOS__PH_PI / ioupos__ph_u(rng, 40.0, 75.0);
    /* rejection in the unit ball gives an isotropic direction (normalising a point of the cube
       would favour the diagonals); very short vectors are rejected too, so that normalising them
       stays well conditioned */
    do {
      len = 0.0;
      for (k = 0; k < 3; ++k) {
        d[k] = ioupos__ph_u(rng, -1.0, 1.0);
        len += d[k] * d[k];
      }
    } while (len > 1.0 || len < 0.05);
    for (k = 0; k < 3; ++k) cs->bowel_k[t][k] = w * d[k] / sqrt(len);
    cs->bowel_ph[t] = ioupos__ph_u(rng, 0.0, 2.0 * IOUPOS__PH_PI);
  }
  cs->rib_phase = ioupos__ph_u(rng, 0.0, 1.0);
}

/* Organ construction: nominal geometry with the case's jitter. */
typedef struct ioupos__ph_jit {
  double sh[3], sc; /* shift (mm) and scale of the whole organ about its anchor */
  double anchor[3];
  double rot;       /* extra rotation about z (rad) */
} ioupos__ph_jit;

/* The draws of one organ's rigid jitter: a shift of up to shift_mm per axis, a scale in
   [1 - scale, 1 + scale] and a rotation of up to 0.12 rad (about 7 degrees) about z, the axis
   across the axial slices. All the shapes of an organ share it, about one anchor, so a
   multi-part organ (the liver's lobes, a vessel's branches) moves as one and stays joined. */
static void ioupos__ph_jitter(ioupos_rng *rng, ioupos__ph_jit *j, const double anchor[3],
                              double shift_mm, double scale) {
  int k;
  for (k = 0; k < 3; ++k) {
    j->sh[k] = ioupos__ph_u(rng, -shift_mm, shift_mm);
    j->anchor[k] = anchor[k];
  }
  j->sc = ioupos__ph_u(rng, 1.0 - scale, 1.0 + scale);
  j->rot = ioupos__ph_u(rng, -0.12, 0.12);
}

/* Apply jitter to a nominal point (rotation about the anchor's z axis, scale, shift). */
static void ioupos__ph_jpoint(const ioupos__ph_jit *j, const double in[3], double out[3]) {
  double dx = in[0] - j->anchor[0], dy = in[1] - j->anchor[1], dz = in[2] - j->anchor[2];
  double c = cos(j->rot), s = sin(j->rot);
  out[0] = j->anchor[0] + j->sc * (c * dx - s * dy) + j->sh[0];
  out[1] = j->anchor[1] + j->sc * (s * dx + c * dy) + j->sh[1];
  out[2] = j->anchor[2] + j->sc * dz + j->sh[2];
}

/* An ellipsoid given in the organ's nominal frame, jittered: the centre goes through the
   jitter and the semi-axes scale with it. The jitter's rotation about the anchor's z axis
   turns the shape by the same angle (Rz(rot) Rz(az) = Rz(az + rot)), so the organ moves
   rigidly. */
static void ioupos__ph_add_ell(ioupos__ph_organ *g, const ioupos__ph_jit *j, double cx,
                               double cy, double cz, double rx, double ry, double rz, double az,
                               double ay, double ax) {
  double c0[3], c[3], r[3];
  c0[0] = cx, c0[1] = cy, c0[2] = cz;
  ioupos__ph_jpoint(j, c0, c);
  r[0] = rx * j->sc, r[1] = ry * j->sc, r[2] = rz * j->sc;
  ioupos__ph_ellipsoid(g, c, r, az + j->rot, ay, ax);
}

/* A tube given in the organ's nominal frame: each control point goes through the jitter, then
   gets its own uniform wobble of up to `wobble` mm per axis and a radius factor in
   [0.92, 1.08], so the course and calibre of tubular organs vary beyond the rigid jitter.
   Draws per point, in order: three wobbles, then the radius factor. */
static void ioupos__ph_add_tube(ioupos__ph_organ *g, const ioupos__ph_jit *j, ioupos_rng *rng,
                                const double (*cp)[4], int n, double wobble) {
  double q[IOUPOS__PH_MAXCP][4];
  int i, k;
  for (i = 0; i < n; ++i) {
    ioupos__ph_jpoint(j, cp[i], q[i]);
    for (k = 0; k < 3; ++k) q[i][k] += ioupos__ph_u(rng, -wobble, wobble);
    q[i][3] = cp[i][3] * j->sc * ioupos__ph_u(rng, 0.92, 1.08);
  }
  ioupos__ph_tube(g, (const double (*)[4])q, n);
}

/* The organ's smooth deformation (see the implementation notes): amplitudes 0.3..1 times
   amp_mm, wavelengths 60..150 mm, long against the organs, so the warp bends a shape without
   tearing it. d_c does not depend on x_c, so d is divergence-free: to first order the warp
   changes an organ's shape but not its volume. The sum of the six amplitudes bounds every
   component of d; ph_paint widens its search box by it. */
static void ioupos__ph_warp(ioupos_rng *rng, ioupos__ph_organ *g, double amp_mm) {
  int c, t;
  for (c = 0; c < 3; ++c)
    for (t = 0; t < 2; ++t) {
      g->amp[c][t] = ioupos__ph_u(rng, 0.3, 1.0) * amp_mm;
      g->w[c][t] = 2.0 * IOUPOS__PH_PI / ioupos__ph_u(rng, 60.0, 150.0);
      g->ph[c][t] = ioupos__ph_u(rng, 0.0, 2.0 * IOUPOS__PH_PI);
    }
}

/* 13 labelled organs and 3 unlabelled vessel groups. The vessels' ids start at 100, above any
   label id: ph_paint tells a vessel by label >= IOUPOS__PH_PORTAL and ph_shade can tell them
   apart, but they never reach the label volume. */
enum { IOUPOS__PH_NORGANS = 16, IOUPOS__PH_PORTAL = 100, IOUPOS__PH_HEPATIC, IOUPOS__PH_SMV };

/* Build the organs of a case in painting order (later wins). Returns the count.
   org holds IOUPOS__PH_NORGANS organs. Per organ the draws are the warp (in IOUPOS__PH_NEW),
   the jitter, then the tubes' wobbles, all from rng in this order. The order of the organs is
   a priority: small or embedded organs come after the large ones they touch, so the
   gallbladder cuts into the liver, the pancreatic head into the duodenal C-loop and the great
   vessels through everything, not the reverse. */
static int ioupos__ph_build(ioupos_rng *rng, const ioupos__ph_case *cs, ioupos__ph_organ *org) {
  ioupos__ph_jit j;
  ioupos__ph_organ *g;
  int n = 0;
  double a[3];
#define IOUPOS__PH_NEW(lab, clp, hu_, warp_mm)                                                  \
  (g = &org[n++], memset(g, 0, sizeof *g), g->label = (lab), g->clip = (clp), g->hu = (hu_),    \
   ioupos__ph_warp(rng, g, (warp_mm)))
#define IOUPOS__PH_ANCHOR(x, y, z) (a[0] = (x), a[1] = (y), a[2] = (z))

  /* liver: right lobe against the right wall up into the dome, left lobe across the midline */
  IOUPOS__PH_NEW(IOUPOS_LABEL_LIVER, 1, cs->hu_liver, 5.0);
  IOUPOS__PH_ANCHOR(60.0, 0.0, 25.0);
  ioupos__ph_jitter(rng, &j, a, 6.0, 0.08);
  ioupos__ph_add_ell(g, &j, 70.0, -8.0, 22.0, 74.0, 86.0, 62.0, 0.15, -0.10, 0.0);
  ioupos__ph_add_ell(g, &j, -10.0, 42.0, 45.0, 55.0, 34.0, 30.0, -0.35, 0.15, 0.0);
  ioupos__ph_add_ell(g, &j, 25.0, 5.0, 40.0, 35.0, 45.0, 38.0, 0.0, 0.0, 0.0);

  /* stomach: fundus under the left dome, body forward and down, antrum across to the pylorus */
  IOUPOS__PH_NEW(IOUPOS_LABEL_STOMACH, 1, 40.0, 4.0);
  IOUPOS__PH_ANCHOR(-45.0, 20.0, 30.0);
  ioupos__ph_jitter(rng, &j, a, 6.0, 0.1);
  {
    static const double cp[6][4] = {{-55.0, -18.0, 62.0, 30.0}, {-62.0, 8.0, 42.0, 32.0},
                                    {-58.0, 35.0, 15.0, 28.0},  {-35.0, 55.0, -2.0, 22.0},
                                    {-5.0, 55.0, -8.0, 17.0},   {15.0, 45.0, -8.0, 10.0}};
    ioupos__ph_add_tube(g, &j, rng, cp, 6, 3.0);
  }

  /* spleen: along the left posterolateral wall */
  IOUPOS__PH_NEW(IOUPOS_LABEL_SPLEEN, 1, cs->hu_spleen, 4.0);
  IOUPOS__PH_ANCHOR(-95.0, -40.0, 35.0);
  ioupos__ph_jitter(rng, &j, a, 6.0, 0.12);
  ioupos__ph_add_ell(g, &j, -95.0, -40.0, 35.0, 24.0, 55.0, 45.0, -0.75, 0.0, 0.15);

  /* duodenum: bulb from the pylorus, descending part, horizontal part behind the SMA/SMV,
     ascending part to the duodenojejunal flexure */
  IOUPOS__PH_NEW(IOUPOS_LABEL_DUODENUM, 1, 30.0, 3.0);
  IOUPOS__PH_ANCHOR(35.0, 10.0, -35.0);
  ioupos__ph_jitter(rng, &j, a, 5.0, 0.1);
  {
    static const double cp[7][4] = {{18.0, 42.0, -8.0, 11.0},  {42.0, 28.0, -14.0, 12.0},
                                    {55.0, 8.0, -30.0, 12.0},  {52.0, 2.0, -52.0, 11.0},
                                    {30.0, -2.0, -64.0, 10.0}, {-5.0, 5.0, -66.0, 10.0},
                                    {-28.0, 12.0, -50.0, 10.0}};
    ioupos__ph_add_tube(g, &j, rng, cp, 7, 2.5);
  }

  /* pancreas: head in the C-loop, neck in front of the SMV, body over the aorta, tail to the
     splenic hilum */
  IOUPOS__PH_NEW(IOUPOS_LABEL_PANCREAS, 1, 45.0, 3.0);
  IOUPOS__PH_ANCHOR(0.0, 5.0, -10.0);
  ioupos__ph_jitter(rng, &j, a, 5.0, 0.1);
  {
    static const double cp[6][4] = {{32.0, 6.0, -38.0, 13.0}, {30.0, 10.0, -22.0, 15.0},
                                    {8.0, 16.0, -12.0, 10.0}, {-22.0, 12.0, -4.0, 10.0},
                                    {-50.0, 0.0, 6.0, 9.0},   {-72.0, -12.0, 16.0, 8.0}};
    ioupos__ph_add_tube(g, &j, rng, cp, 6, 2.0);
  }

  /* gallbladder: under the liver, fundus forward and down */
  IOUPOS__PH_NEW(IOUPOS_LABEL_GALLBLADDER, 1, 10.0, 2.0);
  IOUPOS__PH_ANCHOR(45.0, 42.0, -15.0);
  ioupos__ph_jitter(rng, &j, a, 5.0, 0.15);
  ioupos__ph_add_ell(g, &j, 45.0, 42.0, -15.0, 15.0, 17.0, 32.0, 0.3, 0.0, -0.45);

  /* kidneys: the right lower than the left; upper poles medial and back, hilum forward-medial */
  IOUPOS__PH_NEW(IOUPOS_LABEL_KIDNEY_R, 1, cs->hu_kidney, 3.0);
  IOUPOS__PH_ANCHOR(70.0, -42.0, -22.0);
  ioupos__ph_jitter(rng, &j, a, 5.0, 0.1);
  ioupos__ph_add_ell(g, &j, 70.0, -42.0, -22.0, 26.0, 22.0, 52.0, 0.45, -0.22, -0.15);
  IOUPOS__PH_NEW(IOUPOS_LABEL_KIDNEY_L, 1, cs->hu_kidney, 3.0);
  IOUPOS__PH_ANCHOR(-70.0, -42.0, -8.0);
  ioupos__ph_jitter(rng, &j, a, 5.0, 0.1);
  ioupos__ph_add_ell(g, &j, -70.0, -42.0, -8.0, 26.0, 22.0, 52.0, -0.45, 0.22, -0.15);

  /* adrenals: thin plates above and medial to the kidneys; the right behind the IVC */
  IOUPOS__PH_NEW(IOUPOS_LABEL_ADRENAL_R, 1, 30.0, 1.5);
  IOUPOS__PH_ANCHOR(40.0, -32.0, 32.0);
  ioupos__ph_jitter(rng, &j, a, 3.0, 0.1);
  ioupos__ph_add_ell(g, &j, 40.0, -32.0, 32.0, 4.5, 15.0, 16.0, -0.5, 0.0, 0.2);
  IOUPOS__PH_NEW(IOUPOS_LABEL_ADRENAL_L, 1, 30.0, 1.5);
  IOUPOS__PH_ANCHOR(-40.0, -30.0, 22.0);
  ioupos__ph_jitter(rng, &j, a, 3.0, 0.1);
  ioupos__ph_add_ell(g, &j, -40.0, -30.0, 22.0, 4.5, 15.0, 16.0, 0.5, 0.0, 0.2);

  /* oesophagus: down in front of the aorta, curving left into the cardia */
  IOUPOS__PH_NEW(IOUPOS_LABEL_OESOPHAGUS, 0, 40.0, 1.0);
  IOUPOS__PH_ANCHOR(-15.0, -10.0, 70.0);
  ioupos__ph_jitter(rng, &j, a, 3.0, 0.05);
  {
    static const double cp[4][4] = {{-4.0, -16.0, 95.0, 8.0}, {-8.0, -12.0, 75.0, 8.0},
                                    {-22.0, -6.0, 60.0, 9.0}, {-42.0, -4.0, 50.0, 10.0}};
    ioupos__ph_add_tube(g, &j, rng, cp, 4, 1.5);
  }

  /* IVC: right of the aorta, into the back of the liver, up to the right atrium */
  IOUPOS__PH_NEW(IOUPOS_LABEL_IVC, 0, cs->hu_ivc, 1.5);
  IOUPOS__PH_ANCHOR(22.0, -14.0, 0.0);
  ioupos__ph_jitter(rng, &j, a, 3.0, 0.08);
  {
    static const double cp[5][4] = {{24.0, -22.0, -95.0, 10.0}, {23.0, -18.0, -30.0, 11.0},
                                    {24.0, -12.0, 30.0, 12.0},  {18.0, -8.0, 70.0, 13.0},
                                    {12.0, 0.0, 100.0, 14.0}};
    ioupos__ph_add_tube(g, &j, rng, cp, 5, 1.5);
  }

  /* aorta: left-anterior of the vertebral bodies, behind the crura at the top */
  IOUPOS__PH_NEW(IOUPOS_LABEL_AORTA, 0, cs->hu_aorta, 1.0);
  IOUPOS__PH_ANCHOR(-12.0, -20.0, 0.0);
  ioupos__ph_jitter(rng, &j, a, 2.5, 0.08);
  {
    static const double cp[5][4] = {{-6.0, -28.0, 100.0, 12.0}, {-10.0, -24.0, 40.0, 12.0},
                                    {-13.0, -20.0, -10.0, 11.0}, {-14.0, -18.0, -60.0, 10.5},
                                    {-12.0, -18.0, -100.0, 10.0}};
    ioupos__ph_add_tube(g, &j, rng, cp, 5, 1.5);
  }

  /* unlabelled vessels, painted over background and liver only: portal vein into the liver,
     hepatic veins to the IVC, superior mesenteric vein */
  IOUPOS__PH_NEW(IOUPOS__PH_PORTAL, 1, cs->hu_ivc - 5.0, 2.0);
  IOUPOS__PH_ANCHOR(25.0, 8.0, 5.0);
  ioupos__ph_jitter(rng, &j, a, 3.0, 0.05);
  {
    static const double pv[4][4] = {{8.0, 10.0, -15.0, 7.0}, {25.0, 8.0, 2.0, 7.0},
                                    {50.0, 10.0, 18.0, 6.0}, {95.0, 0.0, 28.0, 3.5}};
    static const double lp[3][4] = {{45.0, 10.0, 16.0, 5.0}, {15.0, 35.0, 30.0, 4.0},
                                    {-20.0, 45.0, 42.0, 2.5}};
    ioupos__ph_add_tube(g, &j, rng, pv, 4, 2.0);
    ioupos__ph_add_tube(g, &j, rng, lp, 3, 2.0);
  }
  IOUPOS__PH_NEW(IOUPOS__PH_HEPATIC, 1, cs->hu_ivc - 10.0, 2.0);
  IOUPOS__PH_ANCHOR(30.0, 0.0, 55.0);
  ioupos__ph_jitter(rng, &j, a, 3.0, 0.05);
  {
    static const double rhv[3][4] = {{105.0, -10.0, 25.0, 2.5}, {70.0, -12.0, 50.0, 4.5},
                                      {28.0, -12.0, 68.0, 6.0}};
    static const double mhv[3][4] = {{60.0, 35.0, 20.0, 2.5}, {40.0, 12.0, 50.0, 4.5},
                                      {22.0, -8.0, 68.0, 6.0}};
    ioupos__ph_add_tube(g, &j, rng, rhv, 3, 2.0);
    ioupos__ph_add_tube(g, &j, rng, mhv, 3, 2.0);
  }
  IOUPOS__PH_NEW(IOUPOS__PH_SMV, 1, cs->hu_ivc - 5.0, 2.0);
  IOUPOS__PH_ANCHOR(5.0, 20.0, -50.0);
  ioupos__ph_jitter(rng, &j, a, 3.0, 0.05);
  {
    static const double smv[3][4] = {{8.0, 10.0, -15.0, 6.0}, {10.0, 22.0, -50.0, 5.0},
                                     {14.0, 30.0, -100.0, 4.5}};
    static const double sma[3][4] = {{-10.0, -8.0, -8.0, 3.5}, {-6.0, 20.0, -45.0, 3.5},
                                     {-4.0, 28.0, -100.0, 3.0}};
    ioupos__ph_add_tube(g, &j, rng, smv, 3, 2.0);
    ioupos__ph_add_tube(g, &j, rng, sma, 3, 2.0); /* shaded as aorta, see below */
  }
#undef IOUPOS__PH_NEW
#undef IOUPOS__PH_ANCHOR
  IOUPOS_ASSERT(n <= IOUPOS__PH_NORGANS);
  return n;
}

typedef struct ioupos__ph_grid {
  int nx, ny, nz;
  double *px, *py, *pz; /* nominal coordinate of each index along x, y, z */
} ioupos__ph_grid;

/* index range [*lo, *hi) along an axis whose nominal coordinates p[0..n-1] increase, of the
   points in [a, b]; empty (lo == hi) when [a, b] misses the grid. A linear scan is enough: an
   axis has at most 4096 points and this runs three times per organ. */
static void ioupos__ph_range(const double *p, int n, double a, double b, int *lo, int *hi) {
  int i = 0, k;
  while (i < n && p[i] < a) ++i;
  k = i;
  while (k < n && p[k] <= b) ++k;
  *lo = i;
  *hi = k;
}

/* HU of an organ voxel given the organ, the shape index it fell in, its normalised distance q,
   the local radius and the nominal point.
   The shading is a function of the position only, never random, so the inner structure of an
   organ follows it when it is jittered or warped; texture comes from the noise added at the
   end. The kidney's sinus is placed in the frame of its one ellipsoid, so it faces the hilum
   whatever the rotation. The stomach's lumen is what lies more than 4 mm inside the wall
   (q * rad is the distance from the centre line in mm); its gas is in front of air_level
   because the patient lies supine and gas rises to the anterior side. */
static double ioupos__ph_shade(const ioupos__ph_organ *g, const ioupos__ph_case *cs, int shape,
                               double q, double rad, const double x[3]) {
  switch (g->label) {
    case IOUPOS_LABEL_KIDNEY_R:
    case IOUPOS_LABEL_KIDNEY_L: {
      /* sinus fat and pelvis towards the hilum (medial, forward), medulla, cortex */
      const ioupos__ph_shape *s = &g->s[0];
      double u[3], h;
      int i, k;
      for (i = 0; i < 3; ++i) {
        u[i] = 0.0;
        for (k = 0; k < 3; ++k) u[i] += s->m[i][k] * (x[k] - s->c[k]);
        u[i] /= s->r[i];
      }
      /* the hilum is on the local -x side for the right kidney, +x for the left (medial) */
      h = g->label == IOUPOS_LABEL_KIDNEY_R ? -u[0] : u[0];
      if (h > 0.05 && (h - 0.75) * (h - 0.75) / 0.35 + u[1] * u[1] / 0.12 + u[2] * u[2] / 0.30 < 1.0)
        return h > 0.45 ? -60.0 : 5.0;
      return q > 0.78 ? g->hu : g->hu - 15.0;
    }
    case IOUPOS_LABEL_STOMACH:
      if (q * rad < rad - 4.0) return x[1] > cs->air_level ? -950.0 : 15.0;
      return g->hu;
    case IOUPOS_LABEL_OESOPHAGUS:
      return q < 0.25 ? -900.0 : g->hu;
    case IOUPOS_LABEL_DUODENUM:
      return q < 0.55 ? 15.0 : g->hu;
    case IOUPOS__PH_SMV:
      return shape == 1 ? cs->hu_aorta : g->hu;
    default:
      return g->hu;
  }
}

/* Tabulate the six warp terms of g over the grid's nominal coordinates into buf, which must
   hold 2 (nx + ny + nz) doubles (each axis feeds two terms) and outlive the painting: g->wt
   points into it. That is 2 (nx + ny + nz) sin() calls instead of six per voxel. */
static void ioupos__ph_tabulate(ioupos__ph_organ *g, const ioupos__ph_grid *gr, double *buf) {
  /* component c takes terms over the other two axes, in order: c=0: y, z; c=1: x, z; c=2: x, y */
  static const int other[3][2] = {{1, 2}, {0, 2}, {0, 1}};
  const double *pa[3];
  int na[3], c, t, i;
  pa[0] = gr->px, pa[1] = gr->py, pa[2] = gr->pz;
  na[0] = gr->nx, na[1] = gr->ny, na[2] = gr->nz;
  for (c = 0; c < 3; ++c)
    for (t = 0; t < 2; ++t) {
      int ax = other[c][t];
      g->wt[c][t] = buf;
      for (i = 0; i < na[ax]; ++i) buf[i] = g->amp[c][t] * sin(g->w[c][t] * pa[ax][i] + g->ph[c][t]);
      buf += na[ax];
    }
}

/* Paint organ g into lab and hu. Only the box of its shapes, widened by the warp's bound, is
   visited. A voxel is tested at its nominal point plus the warp and shaded by the shape it is
   deepest in (smallest normalised distance). Gates: the cavity only (region 2, read only);
   organs with clip stop 5 mm below the diaphragm, leaving the band the thorax pass paints as
   muscle; vessels paint only over background or liver and never write a label, so they
   darken the liver's texture without carving holes in its label. Later organs overwrite
   earlier ones. */
static void ioupos__ph_paint(const ioupos__ph_organ *g, const ioupos__ph_case *cs,
                             const ioupos__ph_grid *gr, const uint8_t *region, uint8_t *lab,
                             float *hu) {
  double lo[3] = {1e30, 1e30, 1e30}, hi[3] = {-1e30, -1e30, -1e30}, margin = 0.0;
  int i0, i1, j0, j1, k0, k1, i, j, k, s, c;
  int vessel = g->label >= IOUPOS__PH_PORTAL;
  for (c = 0; c < 3; ++c) margin += g->amp[c][0] + g->amp[c][1];
  for (s = 0; s < g->nshapes; ++s)
    for (c = 0; c < 3; ++c) {
      if (g->s[s].lo[c] < lo[c]) lo[c] = g->s[s].lo[c];
      if (g->s[s].hi[c] > hi[c]) hi[c] = g->s[s].hi[c];
    }
  ioupos__ph_range(gr->px, gr->nx, lo[0] - margin, hi[0] + margin, &i0, &i1);
  ioupos__ph_range(gr->py, gr->ny, lo[1] - margin, hi[1] + margin, &j0, &j1);
  ioupos__ph_range(gr->pz, gr->nz, lo[2] - margin, hi[2] + margin, &k0, &k1);
  for (k = k0; k < k1; ++k)
    for (j = j0; j < j1; ++j)
      for (i = i0; i < i1; ++i) {
        size_t v = ((size_t)k * gr->ny + j) * gr->nx + i;
        double x[3], q = 1e30, rad = 1.0;
        int hit = -1;
        if (region[v] != 2) continue;
        if (vessel && lab[v] != 0 && lab[v] != IOUPOS_LABEL_LIVER) continue;
        if (g->clip && gr->pz[k] > ioupos__ph_diaphragm(cs, gr->px[i], gr->py[j]) - 5.0) continue;
        x[0] = gr->px[i] + g->wt[0][0][j] + g->wt[0][1][k];
        x[1] = gr->py[j] + g->wt[1][0][i] + g->wt[1][1][k];
        x[2] = gr->pz[k] + g->wt[2][0][i] + g->wt[2][1][j];
        for (s = 0; s < g->nshapes; ++s) {
          double r, d = ioupos__ph_eval(&g->s[s], x, &r);
          if (d < q) q = d, rad = r, hit = s;
        }
        if (q >= 1.0) continue;
        hu[v] = (float)ioupos__ph_shade(g, cs, hit, q, rad, x);
        if (!vessel) lab[v] = (uint8_t)g->label;
      }
}

/* The defaults are exactly the reference field of view (192 x 2 = 384, 160 x 2 = 320,
   64 x 2.5 = 160 mm), so the anatomy is drawn at full size (fit factors 1). */
IOUPOS_DEF void ioupos_phantom_defaults(ioupos_phantom_opts *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->seed = 0;
  o->nx = 192;
  o->ny = 160;
  o->nz = 64;
  o->spacing[0] = 2.0;
  o->spacing[1] = 2.0;
  o->spacing[2] = 2.5;
  o->noise_sd = 15.0;
}

IOUPOS_DEF const char *ioupos_label_name(int id) {
  static const char *const names[IOUPOS_LABEL_COUNT] = {
      "background", "liver",          "right kidney", "spleen",     "pancreas",
      "aorta",      "inferior vena cava", "right adrenal", "left adrenal", "gallbladder",
      "oesophagus", "stomach",        "duodenum",     "left kidney"};
  return id >= 0 && id < IOUPOS_LABEL_COUNT ? names[id] : "?";
}

/* Passes: validate (nothing allocated for a bad option), allocate everything, draw the case,
   tabulate, paint the body layers and bowel, the organs, the thorax and bone, then the noise.
   After the allocations nothing can fail, so there is never a partial result to undo. hu and
   lf become image->data and label->data (the caller's, freed by ioupos_volume_free); region,
   lab and the tables are scratch. No static state: calls on different threads are
   independent. */
IOUPOS_DEF int ioupos_phantom_make(const ioupos_phantom_opts *o, ioupos_volume *image,
                                   ioupos_volume *label) {
  ioupos__ph_case cs;
  ioupos__ph_organ *org = NULL;
  ioupos__ph_grid gr;
  ioupos_rng root, rng;
  uint8_t *region = NULL, *lab = NULL;
  float *hu = NULL, *lf = NULL;
  double *axes = NULL, *warp = NULL, *wave = NULL, fit_xy, fit_z, scale[3];
  size_t nvox, v;
  int norg, i, j, k, c, nsum;
  const int maxdim = 4096;

  if (image) memset(image, 0, sizeof *image);
  if (label) memset(label, 0, sizeof *label);
  if (!o || !image || !label)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_phantom_make: NULL argument");
  if (o->nx < 1 || o->ny < 1 || o->nz < 1 || o->nx > maxdim || o->ny > maxdim || o->nz > maxdim)
    return ioupos__fail(IOUPOS_EINVAL, "phantom: size %dx%dx%d: each dimension must be in 1..%d",
                        o->nx, o->ny, o->nz, maxdim);
  for (c = 0; c < 3; ++c)
    if (!(o->spacing[c] > 0.0 && o->spacing[c] <= 100.0))
      return ioupos__fail(IOUPOS_EINVAL,
                          "phantom: spacing %g,%g,%g mm: each must be in (0, 100]",
                          o->spacing[0], o->spacing[1], o->spacing[2]);
  if (!(o->noise_sd >= 0.0 && o->noise_sd <= 1000.0))
    return ioupos__fail(IOUPOS_EINVAL, "phantom: noise sd %g HU must be in [0, 1000]",
                        o->noise_sd);

  nvox = (size_t)o->nx * (size_t)o->ny * (size_t)o->nz;
  nsum = o->nx + o->ny + o->nz;
  region = (uint8_t *)ioupos__calloc(nvox, 1);
  lab = (uint8_t *)ioupos__calloc(nvox, 1);
  hu = (float *)ioupos__calloc(nvox, sizeof(float));
  lf = (float *)ioupos__calloc(nvox, sizeof(float));
  axes = (double *)ioupos__calloc((size_t)nsum, sizeof(double));
  org = (ioupos__ph_organ *)ioupos__calloc(IOUPOS__PH_NORGANS, sizeof *org);
  warp = (double *)ioupos__calloc((size_t)IOUPOS__PH_NORGANS * 2 * (size_t)nsum, sizeof(double));
  wave = (double *)ioupos__calloc((size_t)IOUPOS__PH_NWAVES * 2 * (size_t)o->nx, sizeof(double));
  if (!region || !lab || !hu || !lf || !axes || !org || !warp || !wave) {
    IOUPOS_FREE(region); IOUPOS_FREE(lab); IOUPOS_FREE(hu); IOUPOS_FREE(lf);
    IOUPOS_FREE(axes); IOUPOS_FREE(org); IOUPOS_FREE(warp); IOUPOS_FREE(wave);
    return ioupos__fail(IOUPOS_ENOMEM, "phantom: out of memory for a %dx%dx%d volume", o->nx,
                        o->ny, o->nz);
  }

  /* the case, independent streams for anatomy and noise. The anatomy stream draws nothing that
     depends on the grid and the noise has a stream of its own, so a seed gives the same
     patient at any size, spacing or noise_sd (shrunk by the fit below when the field of view
     is small); only the noise field depends on the grid. */
  ioupos_rng_seed(&root, o->seed);
  rng = ioupos_rng_split(&root, 1);
  ioupos__ph_draw_case(&rng, &cs);
  norg = ioupos__ph_build(&rng, &cs, org);
  {
    double body_scale = ioupos__ph_u(&rng, 0.94, 1.04);
    /* one fit factor for x and y keeps the body's aspect; z fits on its own. Capped at 1: a
       larger field of view adds air and more body above and below, never a larger patient. */
    fit_xy = o->nx * o->spacing[0] / IOUPOS__PH_REF_X;
    if (o->ny * o->spacing[1] / IOUPOS__PH_REF_Y < fit_xy) fit_xy = o->ny * o->spacing[1] / IOUPOS__PH_REF_Y;
    fit_z = o->nz * o->spacing[2] / IOUPOS__PH_REF_Z;
    if (fit_xy > 1.0) fit_xy = 1.0;
    if (fit_z > 1.0) fit_z = 1.0;
    scale[0] = scale[1] = fit_xy * body_scale;
    scale[2] = fit_z * ioupos__ph_u(&rng, 0.95, 1.03);
  }
  /* the nominal coordinate of index i: its world coordinate (voxel centres symmetric about 0,
     as in the affine at the end) divided by the axis' scale */
  gr.nx = o->nx, gr.ny = o->ny, gr.nz = o->nz;
  gr.px = axes, gr.py = axes + o->nx, gr.pz = axes + o->nx + o->ny;
  for (i = 0; i < o->nx; ++i) gr.px[i] = o->spacing[0] * (i - 0.5 * (o->nx - 1)) / scale[0];
  for (j = 0; j < o->ny; ++j) gr.py[j] = o->spacing[1] * (j - 0.5 * (o->ny - 1)) / scale[1];
  for (k = 0; k < o->nz; ++k) gr.pz[k] = o->spacing[2] * (k - 0.5 * (o->nz - 1)) / scale[2];
  for (c = 0; c < norg; ++c) ioupos__ph_tabulate(&org[c], &gr, warp + (size_t)c * 2 * nsum);
  /* bowel waves: cos(kx x + (ky y + kz z + ph)) = cos(kx x) C - sin(kx x) S per row; the x
     factors are tabulated once here and C, S once per row (bw), so a voxel costs two
     multiplies per wave instead of a cos */
  for (c = 0; c < IOUPOS__PH_NWAVES; ++c)
    for (i = 0; i < o->nx; ++i) {
      wave[(size_t)(2 * c) * o->nx + i] = cos(cs.bowel_k[c][0] * gr.px[i]);
      wave[(size_t)(2 * c + 1) * o->nx + i] = sin(cs.bowel_k[c][0] * gr.px[i]);
    }

  /* body layers and bowel. The outline's semi-axes vary slowly with z (wavelengths 170 and
     150 mm), so the trunk is not a cylinder. Each layer is the outline shrunk by the
     thicknesses of the layers outside it; region records 1 for the body wall and 2 for the
     cavity, the organs' gate. */
  for (k = 0; k < o->nz; ++k) {
    double z = gr.pz[k];
    double fa = 1.0 + cs.body_wa * sin(2.0 * IOUPOS__PH_PI * z / 170.0 + cs.body_pa);
    double fb = 1.0 + cs.body_wb * sin(2.0 * IOUPOS__PH_PI * z / 150.0 + cs.body_pb);
    double a = cs.body_a * fa, ba = cs.body_b_ant * fb, bp = cs.body_b_post * fb;
    double bw[IOUPOS__PH_NWAVES][2];
    int t;
    for (j = 0; j < o->ny; ++j) {
      double y = gr.py[j];
      for (t = 0; t < IOUPOS__PH_NWAVES; ++t) {
        double arg = cs.bowel_k[t][1] * y + cs.bowel_k[t][2] * z + cs.bowel_ph[t];
        bw[t][0] = cos(arg);
        bw[t][1] = sin(arg);
      }
      for (i = 0; i < o->nx; ++i) {
        double x = gr.px[i], val;
        size_t vv = ((size_t)k * o->ny + j) * o->nx + i;
        uint8_t reg;
        if (ioupos__ph_outline(x, y, a, ba, bp) >= 1.0) {
          hu[vv] = -1000.0f;
          continue;
        }
        if (ioupos__ph_outline(x, y, a - 2.5, ba - 2.5, bp - 2.5) >= 1.0) {
          val = 20.0, reg = 1; /* skin */
        } else if (ioupos__ph_outline(x, y, a - cs.fat_lat, ba - cs.fat_ant, bp - cs.fat_post) >= 1.0) {
          val = cs.hu_fat - 5.0, reg = 1;
        } else if (ioupos__ph_outline(x, y, a - cs.fat_lat - cs.wall, ba - cs.fat_ant - cs.wall,
                                      bp - cs.fat_post - cs.wall) >= 1.0) {
          val = cs.hu_muscle, reg = 1;
          /* ribs in the wall of the upper slices: oblique bands, lower towards the front */
          {
            double th = atan2(y, x < 0 ? -x : x) / IOUPOS__PH_PI; /* -0.5 back .. 0.5 front */
            double zmin = -15.0 + 70.0 * (th + 0.5) * (th + 0.5);
            if (z > zmin && th < 0.35) {
              double ph = (z - 150.0 * th) / 24.0 + cs.rib_phase;
              if (ph - floor(ph) < 0.25) val = 450.0;
            }
          }
        } else {
          /* cavity: fat, or bowel where f + bias > 0.05. f, the mean of the plane waves, is a
             smooth random field, and a level set of it gives connected, winding loops. bias
             favours loops low (z < 20 mm) and in front (y > 0), below and in front of the solid
             organs, and the crests (f > 0.5) in front of y = -30 mm are gas. */
          double f = 0.0, bias;
          val = cs.hu_fat, reg = 2;
          for (t = 0; t < IOUPOS__PH_NWAVES; ++t)
            f += wave[(size_t)(2 * t) * o->nx + i] * bw[t][0] -
                 wave[(size_t)(2 * t + 1) * o->nx + i] * bw[t][1];
          f *= 1.0 / IOUPOS__PH_NWAVES;
          bias = 0.28 * ioupos__ph_clamp((20.0 - z) / 60.0, 0.0, 1.0) +
                 0.2 * ioupos__ph_clamp(y / 60.0, -1.0, 1.0) - 0.2;
          if (f + bias > 0.05) val = f > 0.5 && y > -30.0 ? -850.0 : 25.0;
        }
        hu[vv] = (float)val;
        region[vv] = reg;
      }
    }
  }

  /* organs and vessels */
  for (c = 0; c < norg; ++c) ioupos__ph_paint(&org[c], &cs, &gr, region, lab, hu);

  /* thorax above the diaphragm; posterior muscles and bone. After the organs on purpose: the
     thorax fills only cavity voxels no organ took (lab 0) above the diaphragm line, and bone
     and muscle (set 2) overwrite everything and clear the label, so no jittered organ can ever
     overlap the spine. Vertebral levels repeat every 32 mm along z; the phase within a level
     picks the disc, the endplates, the arch and the transverse processes. The psoas radius
     grows from 3 to 20 mm downwards, as the muscle thickens towards the pelvis. */
  for (k = 0; k < o->nz; ++k) {
    double z = gr.pz[k];
    double per = (z + 200.0) / 32.0, phase = per - floor(per); /* vertebral level */
    int disc = phase < 0.2, endplate = phase < 0.26 || phase > 0.95;
    int arch = phase > 0.25 && phase < 0.85, tproc = phase > 0.4 && phase < 0.7;
    double psoas = 3.0 + 17.0 * ioupos__ph_clamp((15.0 - z) / 90.0, 0.0, 1.0);
    for (j = 0; j < o->ny; ++j) {
      double y = gr.py[j];
      for (i = 0; i < o->nx; ++i) {
        double x = gr.px[i], ax = x < 0 ? -x : x, val = 0.0, q;
        size_t vv = ((size_t)k * o->ny + j) * o->nx + i;
        int set = 0;
        if (region[vv] == 0) continue;
        if (region[vv] == 2 && lab[vv] == 0) {
          double zd = ioupos__ph_diaphragm(&cs, x, y);
          if (z > zd - 5.0) {
            set = 1;
            if (z < zd) val = cs.hu_muscle; /* diaphragm */
            else if ((x + 25.0) * (x + 25.0) / (62.0 * 62.0) +
                         (y - 25.0) * (y - 25.0) / (58.0 * 58.0) < 1.0)
              val = 40.0; /* heart */
            else val = -850.0; /* lung */
          }
        }
        /* paraspinal muscles */
        if ((ax - 32.0) * (ax - 32.0) / (25.0 * 25.0) + (y + 86.0) * (y + 86.0) / (19.0 * 19.0) < 1.0)
          val = cs.hu_muscle, set = 2;
        /* psoas */
        if (z < 15.0 && (ax - 38.0) * (ax - 38.0) + (y + 48.0) * (y + 48.0) < psoas * psoas)
          val = cs.hu_muscle, set = 2;
        /* vertebral body */
        q = x * x / (21.0 * 21.0) + (y + 54.0) * (y + 54.0) / (17.0 * 17.0);
        if (q < 1.0) {
          val = disc ? 80.0 : (endplate || q > 0.76) ? 600.0 : 200.0;
          set = 2;
        }
        /* arch around the canal, spinous and transverse processes, canal */
        q = x * x / (17.0 * 17.0) + (y + 79.0) * (y + 79.0) / (14.0 * 14.0);
        if (arch && q < 1.0) val = 500.0, set = 2;
        if (arch && x * x / 25.0 + (y + 98.0) * (y + 98.0) / 100.0 < 1.0) val = 500.0, set = 2;
        if (tproc && (ax - 26.0) * (ax - 26.0) / 196.0 + (y + 76.0) * (y + 76.0) / 25.0 < 1.0)
          val = 500.0, set = 2;
        if (x * x / 100.0 + (y + 79.0) * (y + 79.0) / 64.0 < 1.0) val = 20.0, set = 2;
        if (set) {
          hu[vv] = (float)val;
          if (set == 2) lab[vv] = 0;
        }
      }
    }
  }

  /* noise, rounding, the label volume. Box-Muller turns two uniforms into two independent
     normals, used for voxels v and v + 1; u1 = 1 - uniform is in (0, 1], so the log is
     finite. noise_sd 0 draws nothing. floor(x + 0.5) rounds the same under any FP rounding
     mode (rint would not), and the clamp to [-1024, 3071] makes every value an int16 CT
     number, so writing the image as NIfTI int16 is lossless. */
  rng = ioupos_rng_split(&root, 2);
  for (v = 0; v < nvox; v += 2) {
    double g0 = 0.0, g1 = 0.0, h;
    if (o->noise_sd > 0.0) {
      double u1 = 1.0 - ioupos_rng_uniform(&rng), u2 = ioupos_rng_uniform(&rng);
      double rr = o->noise_sd * sqrt(-2.0 * log(u1));
      g0 = rr * cos(2.0 * IOUPOS__PH_PI * u2);
      g1 = rr * sin(2.0 * IOUPOS__PH_PI * u2);
    }
    h = floor(ioupos__ph_clamp(hu[v] + g0, -1024.0, 3071.0) + 0.5);
    hu[v] = (float)h;
    lf[v] = (float)lab[v];
    if (v + 1 < nvox) {
      h = floor(ioupos__ph_clamp(hu[v + 1] + g1, -1024.0, 3071.0) + 0.5);
      hu[v + 1] = (float)h;
      lf[v + 1] = (float)lab[v + 1];
    }
  }
  IOUPOS_FREE(region);
  IOUPOS_FREE(lab);
  IOUPOS_FREE(axes);
  IOUPOS_FREE(org);
  IOUPOS_FREE(warp);
  IOUPOS_FREE(wave);

  image->dim[0] = label->dim[0] = o->nx;
  image->dim[1] = label->dim[1] = o->ny;
  image->dim[2] = label->dim[2] = o->nz;
  image->data = hu;
  label->data = lf;
  /* diagonal RAS+ affine with the volume's centre at world 0 (Geometry, in the API half) */
  for (i = 0; i < 4; ++i)
    for (j = 0; j < 4; ++j) image->affine[i][j] = 0.0;
  for (c = 0; c < 3; ++c) {
    int n = c == 0 ? o->nx : c == 1 ? o->ny : o->nz;
    image->affine[c][c] = o->spacing[c];
    image->affine[c][3] = -0.5 * (n - 1) * o->spacing[c];
  }
  image->affine[3][3] = 1.0;
  memcpy(label->affine, image->affine, sizeof image->affine);
  return IOUPOS_OK;
}

/* ---- 9. Data sets and the threaded loader ----------------------------------------------------- */


/* -- 7a. Data sets -- */

/* A *.png name, the extension ASCII case-insensitive. Dot-files are skipped as hidden: they
   include macOS "._name.png" resource forks, which are not images. */
static int ioupos__data_is_png_name(const char *name) {
  size_t n = strlen(name);
  const char *e;
  if (name[0] == '.' || n < 5) return 0; /* dot-files, and a bare ".png" */
  e = name + n - 4;
  return e[0] == '.' && (e[1] == 'p' || e[1] == 'P') && (e[2] == 'n' || e[2] == 'N') &&
         (e[3] == 'g' || e[3] == 'G');
}

static int ioupos__data_cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* "<dir>/<name>" in a fresh IOUPOS_MALLOC string (the caller frees it), or NULL; no second
   slash when dir already ends with one, and the name alone when dir is empty. */
static char *ioupos__data_join(const char *dir, const char *name) {
  size_t a = strlen(dir), b = strlen(name);
  int slash = a > 0 && dir[a - 1] != '/';
  char *p = (char *)IOUPOS_MALLOC(a + (size_t)slash + b + 1);
  if (!p) return NULL;
  memcpy(p, dir, a);
  if (slash) p[a] = '/';
  memcpy(p + a + (size_t)slash, name, b + 1);
  return p;
}

static void ioupos__data_free_names(char **v, int n) {
  int i;
  if (!v) return;
  for (i = 0; i < n; ++i) IOUPOS_FREE(v[i]);
  IOUPOS_FREE(v);
}

/* The sorted names (not paths) of the regular *.png files in dir. what = "image" / "label".
   On success *out (free with ioupos__data_free_names) holds *count >= 1 names; on failure
   both are empty and nothing is left allocated. readdir's order depends on the file system:
   the strcmp sort (bytes, not the locale) is what makes the list, and so every seed's
   shuffles, the same on every machine. */
static int ioupos__data_list(const char *dir, const char *what, char ***out, int *count) {
  DIR *d;
  struct dirent *e;
  char **v = NULL;
  int n = 0, cap = 0;
  *out = NULL;
  *count = 0;
  d = opendir(dir);
  if (!d)
    return ioupos__fail(IOUPOS_EIO, "%s folder %s: cannot open: %s", what, dir, strerror(errno));
  while ((e = readdir(d)) != NULL) {
    struct stat sb;
    char *path;
    int reg;
    if (!ioupos__data_is_png_name(e->d_name)) continue;
    path = ioupos__data_join(dir, e->d_name);
    if (!path) goto oom;
    reg = stat(path, &sb) == 0 && S_ISREG(sb.st_mode); /* follows symlinks; skips folders */
    IOUPOS_FREE(path);
    if (!reg) continue;
    if (n == cap) {
      int ncap = cap ? 2 * cap : 256;
      char **nv;
      if (ncap <= cap || (size_t)ncap > ((size_t)-1) / sizeof(char *)) goto oom;
      nv = (char **)ioupos__calloc((size_t)ncap, sizeof(char *));
      if (!nv) goto oom;
      if (n) memcpy(nv, v, (size_t)n * sizeof(char *));
      IOUPOS_FREE(v);
      v = nv;
      cap = ncap;
    }
    v[n] = (char *)IOUPOS_MALLOC(strlen(e->d_name) + 1);
    if (!v[n]) goto oom;
    memcpy(v[n], e->d_name, strlen(e->d_name) + 1);
    ++n;
    if (n == 0x7FFFFFFF) break;
  }
  closedir(d);
  if (n == 0) {
    IOUPOS_FREE(v);
    return ioupos__fail(IOUPOS_EINVAL, "%s folder %s holds no *.png files", what, dir);
  }
  qsort(v, (size_t)n, sizeof(char *), ioupos__data_cmp_str);
  *out = v;
  *count = n;
  return IOUPOS_OK;
oom:
  closedir(d);
  ioupos__data_free_names(v, n);
  return ioupos__fail(IOUPOS_ENOMEM, "%s folder %s: out of memory listing files", what, dir);
}

/* Safe on a zeroed or already freed data set; leaves it empty. */
IOUPOS_DEF void ioupos_dataset_free(ioupos_dataset *ds) {
  if (!ds) return;
  ioupos__data_free_names(ds->images, ds->n);
  ioupos__data_free_names(ds->labels, ds->labels ? ds->n : 0);
  ds->images = ds->labels = NULL;
  ds->n = 0;
}

/* Pairing is by file name, never by position in the two lists: one extra or missing file in a
   folder would otherwise shift every later label onto the wrong image without an error.
   The paths are built only once the pairing succeeded. */
IOUPOS_DEF int ioupos_dataset_scan(const char *image_dir, const char *label_dir,
                                   ioupos_dataset *ds) {
  char **im = NULL, **lb = NULL;
  int ni = 0, nl = 0, i, st;
  if (!ds) return ioupos__fail(IOUPOS_EINVAL, "ioupos_dataset_scan: ds is NULL");
  memset(ds, 0, sizeof *ds);
  if (!image_dir) return ioupos__fail(IOUPOS_EINVAL, "ioupos_dataset_scan: image_dir is NULL");
  st = ioupos__data_list(image_dir, "image", &im, &ni);
  if (st) return st;
  if (label_dir) {
    int a = 0, b = 0, bad = 0, listed = 0;
    char more[512];
    size_t used = 0, cap = 0;
    st = ioupos__data_list(label_dir, "label", &lb, &nl);
    if (st) goto fail;
    /* both sorted by strcmp: a merge walk pairs equal names and names EVERY unmatched one (the
       first in full, the others by name as far as they fit the reason). A name is appended
       only while every earlier one was (listed == bad - 2), so the list is a prefix of the
       unmatched names and "and N more" counts exactly the rest. The reasons are copied out
       before the next ioupos__fail: its buffer is the one ioupos_failure_reason returns. */
    more[0] = 0;
    while (a < ni || b < nl) {
      int c = a == ni ? 1 : b == nl ? -1 : strcmp(im[a], lb[b]);
      const char *name = c < 0 ? im[a] : lb[b];
      if (c == 0) { ++a; ++b; continue; }
      if (bad++ == 0) {
        if (c < 0)
          st = ioupos__fail(IOUPOS_EINVAL, "image %s/%s has no label: %s/%s does not exist",
                            image_dir, im[a], label_dir, im[a]);
        else
          st = ioupos__fail(IOUPOS_EINVAL, "label %s/%s has no image: %s/%s does not exist",
                            label_dir, lb[b], image_dir, lb[b]);
        /* room left in the 512-byte reason after the count, the first one and "; and N more" */
        cap = strlen(ioupos_failure_reason()) + 64 < sizeof more
                  ? sizeof more - 64 - strlen(ioupos_failure_reason()) : 0;
      } else if (listed == bad - 2 && used + strlen(name) + 24 < cap) {
        int k = snprintf(more + used, sizeof more - used, "; %s %s has no %s",
                         c < 0 ? "image" : "label", name, c < 0 ? "label" : "image");
        if (k > 0) used += (size_t)k;
        ++listed;
      }
      if (c < 0) ++a; else ++b;
    }
    if (bad > 1) {
      char first[512];
      snprintf(first, sizeof first, "%s", ioupos_failure_reason());
      if (bad - 1 > listed)
        snprintf(more + used, sizeof more - used, "; and %d more", bad - 1 - listed);
      st = ioupos__fail(IOUPOS_EINVAL, "%d files do not pair up: %s%s", bad, first, more);
    }
    if (bad) goto fail;
  }
  ds->images = (char **)ioupos__calloc((size_t)ni, sizeof(char *));
  if (lb) ds->labels = (char **)ioupos__calloc((size_t)ni, sizeof(char *));
  if (!ds->images || (lb && !ds->labels)) goto oom;
  ds->n = ni;
  for (i = 0; i < ni; ++i) {
    ds->images[i] = ioupos__data_join(image_dir, im[i]);
    if (!ds->images[i]) goto oom;
    if (lb) {
      ds->labels[i] = ioupos__data_join(label_dir, lb[i]);
      if (!ds->labels[i]) goto oom;
    }
  }
  ioupos__data_free_names(im, ni);
  ioupos__data_free_names(lb, nl);
  return IOUPOS_OK;
oom:
  st = ioupos__fail(IOUPOS_ENOMEM, "ioupos_dataset_scan %s: out of memory", image_dir);
fail:
  ioupos__data_free_names(im, ni);
  ioupos__data_free_names(lb, nl);
  if (ds->images || ds->labels) {
    ds->n = ni;
    ioupos_dataset_free(ds);
  }
  memset(ds, 0, sizeof *ds);
  return st;
}

/* -- 7b. The loader -- */

IOUPOS_DEF void ioupos_loader_config_default(ioupos_loader_config *cfg,
                                             const ioupos_dataset *ds, int kind) {
  if (!cfg) return;
  memset(cfg, 0, sizeof *cfg);
  cfg->dataset = ds;
  cfg->kind = kind;
  cfg->batch_size = kind == IOUPOS_LOADER_FINETUNE ? 32 : 128;
  cfg->crop[0] = cfg->crop[1] = 96;
  cfg->min_iou = 0.3;
  cfg->max_iou = 0.6;
  cfg->pair_mode = IOUPOS_PAIR_ANCHORED;
  cfg->drop_last = 1;
  cfg->pad_small = 1;
  cfg->num_samples = 2;
  cfg->pos = cfg->neg = 1;
  cfg->local_crop[0] = cfg->local_crop[1] = 48;
  cfg->local_min_iou = 0.0;
  cfg->local_max_iou = 1.0;
}

IOUPOS_DEF int ioupos_crop_start_from_centre(int c, int s, int len) {
  int start = c - s / 2;
  if (start > len - s) start = len - s;
  if (start < 0) start = 0;
  return start;
}

/* Both callbacks copy ctx and never write it: workers call them at once with the same ctx
   (ioupos_augment_fn). Each call draws its parameters from the crop's own rng, so a crop's
   augmentation depends only on (seed, epoch, image, crop). */
IOUPOS_DEF int ioupos_augment_pretrain_view(void *ctx, ioupos_rng *rng, float *img, float *label,
                                            int h, int w, float *scratch) {
  ioupos_aug_config c;
  ioupos_view_params p;
  (void)label;
  if (ctx) c = *(const ioupos_aug_config *)ctx;
  else ioupos_aug_config_pretrain(&c);
  ioupos_view_params_draw_config(&c, rng, &p);
  return ioupos_view_apply(&p, img, h, w, scratch);
}

IOUPOS_DEF int ioupos_augment_finetune_crop(void *ctx, ioupos_rng *rng, float *img, float *label,
                                            int h, int w, float *scratch) {
  ioupos_aug_config c;
  ioupos_view_params p;
  if (ctx) c = *(const ioupos_aug_config *)ctx;
  else ioupos_aug_config_finetune(&c);
  ioupos_view_params_draw_config(&c, rng, &p);
  return ioupos_view_apply_labelled(&p, img, label, h, w, scratch);
}

#define IOUPOS__LOADER_CACHE 8 /* samplers per worker, keyed by (padded) image shape */

typedef struct ioupos__sampler_entry {
  int h, w, used; /* used: 0 empty, else last-use stamp */
  ioupos_iou_sampler s;
} ioupos__sampler_entry;

/* A decoded image: either bytes (fast path, value v / 255) or floats. */
typedef struct ioupos__pix {
  int h, w;
  unsigned char *u8; /* stbi buffer, or NULL */
  ioupos_image f;    /* used when u8 is NULL */
} ioupos__pix;

/* A worker's private state, touched only by its own thread (in the synchronous mode the one
   worker belongs to the caller's thread), so none of it is locked. None of it carries
   information from one batch to the next: perm caches the epoch's order, rebuilt from (seed,
   epoch) when the worker's next batch is from another epoch; a sampler is a function of the
   shape and read-only once built; scratch and idx are work space. So a batch is the same
   whichever worker makes it and whatever that worker made before. */
typedef struct ioupos__worker {
  struct ioupos__loader_state *st;
  pthread_t thread;
  int started;
  int perm_epoch; /* epoch whose order perm holds, -1 none */
  int *perm;
  ioupos__sampler_entry cache[IOUPOS__LOADER_CACHE];
  int stamp;
  float *scratch; /* IOUPOS_AUGMENT_SCRATCH of the crop and of the local crop, floats */
  int *idx;       /* fine-tuning: fg then bg pixel indices, capacity idx_cap */
  size_t idx_cap;
} ioupos__worker;

/* The ring of prefetched batches. Batch g of the stream always lives in slot g % nslots. A
   slot's life: FREE -> FILLING (a worker claimed g for it, under mu) -> READY (made, with its
   status) -> held by the caller (st->held) -> FREE at the caller's next call of next or seek.
   Workers claim only g < released + nslots, and every batch below released was given back,
   so the batches alive at once (held, ready, filling) lie within nslots consecutive numbers
   and never share a slot: the ring cannot overtake the caller. */
enum { IOUPOS__SLOT_FREE = 0, IOUPOS__SLOT_FILLING = 1, IOUPOS__SLOT_READY = 2 };

/* A slot's contents (b, mem, status, reason) are written without the lock by the one thread
   that moved it to FILLING, and read by the caller only after it saw READY under the lock, so
   the mutex orders the two. reason is a copy: the failure reason is per thread, and a
   worker's must reach the caller's thread. */
typedef struct ioupos__slot {
  int state;
  int64_t g; /* stream number of the batch it holds (epoch * batches_per_epoch + index) */
  int status;
  char reason[640]; /* room for the position prefix and a full 512-byte reason */
  ioupos_batch b;
  float *mem; /* the batch's float arrays, one allocation */
} ioupos__slot;

/* Read-only after open, shared without the lock: cfg, bpe, root, lut, nslots, nworkers and
   the slots and workers arrays themselves. mu protects the rest: the slots' state and g, stop
   (close), pausing (a seek is dropping the ring: no new claims), busy (batches being made),
   next_claim (the next batch a worker takes), next_return (the next batch the caller gets),
   released (the batches below it were given back) and held. mu is never held while a batch
   is made, so workers decode in parallel. cv_work wakes the workers (a slot was given back,
   a seek ended, or stop); cv_ready wakes the caller waiting for its batch and a seek waiting
   for busy to reach 0. Both are broadcast, as their waiters wait for different conditions. */
struct ioupos__loader_state {
  const ioupos_loader_config *cfg; /* points at the loader's copy */
  int bpe;                         /* batches per epoch */
  ioupos_rng root;
  float lut[256]; /* v / 255 as ioupos_image_load computes it */
  int nslots, nworkers;
  ioupos__slot *slots;
  ioupos__worker *workers; /* nworkers, or 1 for the synchronous mode */
  pthread_mutex_t mu;
  pthread_cond_t cv_work, cv_ready;
  int sync_ok; /* mutex and conds initialised */
  int stop, pausing, busy;
  int64_t next_claim, next_return, released;
  int held; /* slot handed to the caller, -1 none */
};

static const unsigned char ioupos__png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};

static void ioupos__pix_free(ioupos__pix *p) {
  if (p->u8) stbi_image_free(p->u8);
  ioupos_image_free(&p->f);
  p->u8 = NULL;
  p->h = p->w = 0;
}

/* Decode path: 8-bit grey (colour type 0) or grey+alpha (4) to bytes, the rest as floats.
   The byte path is what ioupos-prep writes: it keeps one byte per pixel (stb drops the alpha
   for one component) and converts only the cropped pixels, through st->lut, to the values
   ioupos_image_load gives. Other PNGs go through ioupos_image_load, so their conversion rules
   live in one place. The size limit is stb's int length. On failure p is empty. */
static int ioupos__pix_load(const char *path, ioupos__pix *p) {
  void *data;
  size_t size;
  int st;
  const unsigned char *d;
  memset(p, 0, sizeof *p);
  st = ioupos_read_file(path, &data, &size);
  if (st) return st;
  d = (const unsigned char *)data;
  if (size >= 33 && size <= 0x7FFFFFFF && memcmp(d, ioupos__png_sig, 8) == 0 &&
      memcmp(d + 12, "IHDR", 4) == 0 && d[24] == 8 && (d[25] == 0 || d[25] == 4)) {
    int w = 0, h = 0, comp = 0;
    p->u8 = stbi_load_from_memory(d, (int)size, &w, &h, &comp, 1);
    if (!p->u8) {
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: corrupt or unsupported PNG (%s)", path,
                        stbi_failure_reason());
    } else {
      p->h = h;
      p->w = w;
    }
  } else {
    st = ioupos_image_load_memory(data, size, path, &p->f);
    p->h = p->f.h;
    p->w = p->f.w;
  }
  IOUPOS_FREE(data);
  return st;
}

/* Copy the h x w window at (y0, x0) of the image (coordinates of the source; outside is 0).
   out holds h * w floats. 0 is also what MONAI's SpatialPad pads with, so cropping at source
   coordinates that reach outside the image equals padding first and cropping the padded
   image, without ever building it. */
static void ioupos__pix_crop(const struct ioupos__loader_state *st, const ioupos__pix *p, int y0,
                             int x0, int h, int w, float *out) {
  int y, x;
  int xa = x0 < 0 ? -x0 : 0, xb = x0 + w > p->w ? p->w - x0 : w; /* valid columns [xa, xb) */
  for (y = 0; y < h; ++y) {
    float *o = out + (size_t)y * (size_t)w;
    int sy = y0 + y;
    if (sy < 0 || sy >= p->h || xb <= xa) {
      memset(o, 0, (size_t)w * sizeof(float));
      continue;
    }
    for (x = 0; x < xa; ++x) o[x] = 0.0f;
    if (p->u8) {
      const unsigned char *r = p->u8 + (size_t)sy * (size_t)p->w + x0;
      for (x = xa; x < xb; ++x) o[x] = st->lut[r[x]];
    } else {
      memcpy(o + xa, p->f.data + (size_t)sy * (size_t)p->w + x0 + xa,
             (size_t)(xb - xa) * sizeof(float));
    }
    for (x = xb; x < w; ++x) o[x] = 0.0f;
  }
}

/* Pixel value at (y, x) of the source as a byte-scaled number 0..255 (labels), or as [0, 1].
   A label that did not take the byte path is rounded back from v / 255 to its byte. */
static int ioupos__pix_label(const ioupos__pix *p, size_t i) {
  if (p->u8) return p->u8[i];
  return (int)floor(p->f.data[i] * 255.0 + 0.5);
}
static double ioupos__pix_value(const struct ioupos__loader_state *st, const ioupos__pix *p,
                                size_t i) {
  return p->u8 ? (double)st->lut[p->u8[i]] : (double)p->f.data[i];
}

/* The sampler of a (padded) h x w image; ih x iw is the file's own size, for messages.
   An LRU cache of IOUPOS__LOADER_CACHE entries: an empty entry if any, else the least
   recently used one is rebuilt. On failure NULL, *status set and the entry left empty, so a
   shape that admits no pair fails again for each of its images, each naming its own file. */
static const ioupos_iou_sampler *ioupos__worker_sampler(ioupos__worker *wk, int h, int w,
                                                        int ih, int iw, const char *path,
                                                        int *status) {
  const ioupos_loader_config *cfg = wk->st->cfg;
  int i, victim = 0, shape[2], st;
  for (i = 0; i < IOUPOS__LOADER_CACHE; ++i) {
    ioupos__sampler_entry *e = &wk->cache[i];
    if (e->used && e->h == h && e->w == w) {
      e->used = ++wk->stamp;
      return &e->s;
    }
    if (!e->used || (wk->cache[victim].used && e->used < wk->cache[victim].used)) victim = i;
  }
  if (wk->cache[victim].used) ioupos_iou_sampler_free(&wk->cache[victim].s);
  wk->cache[victim].used = 0;
  shape[0] = h;
  shape[1] = w;
  st = ioupos_iou_sampler_init(&wk->cache[victim].s, 2, shape, cfg->crop, cfg->min_iou,
                               cfg->max_iou, cfg->pair_mode);
  if (st) {
    char why[512];
    snprintf(why, sizeof why, "%s", ioupos_failure_reason());
    if (ih != h || iw != w) /* name the file's size, not only the padded one */
      *status = ioupos__fail(st, "%s: image %dx%d, zero-padded to %dx%d for the %dx%d crop: %s",
                             path, ih, iw, h, w, cfg->crop[0], cfg->crop[1], why);
    else
      *status = ioupos__fail(st, "%s: %s", path, why);
    return NULL;
  }
  wk->cache[victim].h = h;
  wk->cache[victim].w = w;
  wk->cache[victim].used = ++wk->stamp;
  return &wk->cache[victim].s;
}

/* Any non-zero return of the callback becomes an error naming the file; a positive one (not
   an ioupos_status) is reported as EINVAL, so the caller always gets a negative status. */
static int ioupos__augment_hw(const ioupos_loader_config *cfg, ioupos__worker *wk,
                              ioupos_rng *rng, float *img, float *label, int h, int w,
                              const char *path) {
  int st;
  if (!cfg->augment) return IOUPOS_OK;
  st = cfg->augment(cfg->augment_ctx, rng, img, label, h, w, wk->scratch);
  if (st) {
    char why[512];
    snprintf(why, sizeof why, "%s", ioupos_failure_reason());
    return ioupos__fail(st < 0 ? st : IOUPOS_EINVAL, "%s: augmentation failed: %s", path, why);
  }
  return IOUPOS_OK;
}

static int ioupos__augment(const ioupos_loader_config *cfg, ioupos__worker *wk, ioupos_rng *rng,
                           float *img, float *label, const char *path) {
  return ioupos__augment_hw(cfg, wk, rng, img, label, cfg->crop[0], cfg->crop[1], path);
}

/* Padding of an image of h x w to the crop: offsets before, or an error. floor(d / 2) before,
   as MONAI's SpatialPad. Nothing is padded in memory: the sampler works on the padded shape
   and the boxes are moved back by these offsets. */
static int ioupos__pad_offsets(const ioupos_loader_config *cfg, const char *path, int h, int w,
                               int *py, int *px) {
  if ((h < cfg->crop[0] || w < cfg->crop[1]) && !cfg->pad_small)
    return ioupos__fail(IOUPOS_EINVAL, "%s: image %dx%d is smaller than the crop %dx%d (the "
                        "loader was opened with pad_small = 0)", path, h, w, cfg->crop[0],
                        cfg->crop[1]);
  *py = h < cfg->crop[0] ? (cfg->crop[0] - h) / 2 : 0;
  *px = w < cfg->crop[1] ? (cfg->crop[1] - w) / 2 : 0;
  return IOUPOS_OK;
}

/* The local crops of sample i (see "Multi-crop"): A is view 0's box in source coordinates; the
   image is padded to at least max(crop, local_crop), A moved with it. The boxes come from
   split(S, 100), local k's augmentation from split(S, 3 + k), never the pair's splits 0, 1
   and 2, so turning multi-crop on does not change the pair or its views. */
static int ioupos__make_local(ioupos__worker *wk, const ioupos__pix *p, const ioupos_rng *S,
                              const ioupos_box *A, ioupos_batch *b, int i, const char *path) {
  const struct ioupos__loader_state *st = wk->st;
  const ioupos_loader_config *cfg = st->cfg;
  int lh = cfg->local_crop[0], lw = cfg->local_crop[1], shape[2], oy, ox, k, status;
  size_t lhw = (size_t)lh * (size_t)lw;
  ioupos_box a = *A;
  ioupos_rng r;
  if (!cfg->pad_small && (p->h < lh || p->w < lw))
    return ioupos__fail(IOUPOS_EINVAL, "%s: image %dx%d is smaller than the local crop %dx%d "
                        "(the loader was opened with pad_small = 0)", path, p->h, p->w, lh, lw);
  shape[0] = ioupos__imax(p->h, ioupos__imax(cfg->crop[0], lh));
  shape[1] = ioupos__imax(p->w, ioupos__imax(cfg->crop[1], lw));
  oy = (shape[0] - p->h) / 2;
  ox = (shape[1] - p->w) / 2;
  a.lo[0] += oy, a.hi[0] += oy;
  a.lo[1] += ox, a.hi[1] += ox;
  r = ioupos_rng_split(S, 100);
  for (k = 0; k < cfg->n_local; ++k) {
    size_t o = (size_t)k * (size_t)b->n + (size_t)i;
    float *out = b->local + o * lhw;
    ioupos_box L;
    ioupos_rng ra;
    status = ioupos_local_crop_draw(2, shape, &a, cfg->local_crop, cfg->local_min_iou,
                                    cfg->local_max_iou, &r, &L);
    if (status) {
      char why[512];
      snprintf(why, sizeof why, "%s", ioupos_failure_reason());
      return ioupos__fail(status, "%s: %s", path, why);
    }
    L.lo[0] -= oy, L.hi[0] -= oy;
    L.lo[1] -= ox, L.hi[1] -= ox;
    ioupos__pix_crop(st, p, L.lo[0], L.lo[1], lh, lw, out);
    b->local_box[o] = L;
    ra = ioupos_rng_split(S, 3u + (uint64_t)k);
    status = ioupos__augment_hw(cfg, wk, &ra, out, NULL, lh, lw, path);
    if (status) return status;
  }
  return IOUPOS_OK;
}

/* The SSL sample i of a batch, from data set image d with generator S: the pair is drawn on
   the image padded to the crop (split(S, 0)), moved back to source coordinates, cropped and
   augmented (view v with split(S, 1 + v)). Writes only sample i's parts of b. */
static int ioupos__make_ssl(ioupos__worker *wk, int d, ioupos_rng *S, ioupos_batch *b, int i) {
  const struct ioupos__loader_state *st = wk->st;
  const ioupos_loader_config *cfg = st->cfg;
  const char *path = cfg->dataset->images[d];
  size_t hw = (size_t)cfg->crop[0] * (size_t)cfg->crop[1];
  const ioupos_iou_sampler *s;
  ioupos__pix p;
  ioupos_rng r;
  ioupos_box box[2];
  int status = 0, py, px, v;
  status = ioupos__pix_load(path, &p);
  if (status) return status;
  status = ioupos__pad_offsets(cfg, path, p.h, p.w, &py, &px);
  if (status) goto done;
  s = ioupos__worker_sampler(wk, p.h > cfg->crop[0] ? p.h : cfg->crop[0],
                             p.w > cfg->crop[1] ? p.w : cfg->crop[1], p.h, p.w, path, &status);
  if (!s) goto done;
  r = ioupos_rng_split(S, 0);
  status = ioupos_iou_sampler_draw(s, &r, &box[0], &box[1]);
  if (status) goto done;
  for (v = 0; v < 2; ++v) {
    float *out = b->views[v] + (size_t)i * hw;
    box[v].lo[0] -= py, box[v].hi[0] -= py;
    box[v].lo[1] -= px, box[v].hi[1] -= px;
    ioupos__pix_crop(st, &p, box[v].lo[0], box[v].lo[1], cfg->crop[0], cfg->crop[1], out);
    b->box[v][i] = box[v];
    r = ioupos_rng_split(S, 1u + (uint64_t)v);
    status = ioupos__augment(cfg, wk, &r, out, NULL, path);
    if (status) goto done;
  }
  if (cfg->n_local > 0) {
    status = ioupos__make_local(wk, &p, S, &box[0], b, i, path);
    if (status) goto done;
  }
  b->source[i] = d;
done:
  ioupos__pix_free(&p);
  return status;
}

/* The fine-tuning crops of image d: crops i * num_samples .. (i + 1) * num_samples - 1 of b.
   As MONAI's RandCropByPosNegLabeld: each centre is a foreground pixel with probability
   pos / (pos + neg), else a background one, uniform among them, then moved so the crop lies
   inside the (padded) image. fg and bg indices share one buffer of H W ints (fg from the
   front, bg from the back) that the worker keeps and only grows. */
static int ioupos__make_finetune(ioupos__worker *wk, int d, ioupos_rng *S, ioupos_batch *b,
                                 int i) {
  const struct ioupos__loader_state *st = wk->st;
  const ioupos_loader_config *cfg = st->cfg;
  const char *ipath = cfg->dataset->images[d], *lpath = cfg->dataset->labels[d];
  int ch = cfg->crop[0], cw = cfg->crop[1], ns = cfg->num_samples;
  size_t hw = (size_t)ch * (size_t)cw, n, k, nfg = 0, nbg = 0;
  ioupos__pix im, lb;
  ioupos_rng r;
  int status, py, px, H, W, j;
  double pos_ratio = (double)cfg->pos / (double)(cfg->pos + cfg->neg);
  memset(&lb, 0, sizeof lb);
  status = ioupos__pix_load(ipath, &im);
  if (status) return status;
  status = ioupos__pix_load(lpath, &lb);
  if (status) goto done;
  if (lb.h != im.h || lb.w != im.w) {
    status = ioupos__fail(IOUPOS_EINVAL, "label %s is %dx%d but its image %s is %dx%d", lpath,
                          lb.h, lb.w, ipath, im.h, im.w);
    goto done;
  }
  status = ioupos__pad_offsets(cfg, ipath, im.h, im.w, &py, &px);
  if (status) goto done;
  H = im.h > ch ? im.h : ch;
  W = im.w > cw ? im.w : cw;
  /* foreground / background pixel indices over the padded image, in raster order, as MONAI's
     map_binary_to_indices: fg = label > 0, bg = label == 0 (and image > threshold if asked);
     padding is background (label 0, image 0). */
  n = (size_t)H * (size_t)W;
  if (wk->idx_cap < n) {
    IOUPOS_FREE(wk->idx);
    wk->idx = (int *)ioupos__calloc(n, sizeof(int));
    wk->idx_cap = wk->idx ? n : 0;
    if (!wk->idx) {
      status = ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory for %dx%d indices", ipath, H, W);
      goto done;
    }
  }
  for (k = 0; k < n; ++k) { /* fg from the front, bg from the back (reversed, fixed below) */
    int y = (int)(k / (size_t)W) - py, x = (int)(k % (size_t)W) - px, lab = 0;
    double val = 0.0;
    if (y >= 0 && y < im.h && x >= 0 && x < im.w) {
      size_t s = (size_t)y * (size_t)im.w + (size_t)x;
      lab = ioupos__pix_label(&lb, s);
      if (cfg->bg_use_image) val = ioupos__pix_value(st, &im, s);
    }
    if (lab > 0) wk->idx[nfg++] = (int)k;
    else if (!cfg->bg_use_image || val > cfg->bg_image_threshold) wk->idx[n - 1 - nbg++] = (int)k;
  }
  if (nfg == 0 && nbg == 0) {
    status = ioupos__fail(IOUPOS_EINVAL, "%s (label %s): no foreground and no background pixel "
                          "to centre a crop on", ipath, lpath);
    goto done;
  }
  if (nfg == 0) pos_ratio = 0.0; /* MONAI: unable to balance, all from the non-empty side */
  else if (nbg == 0) pos_ratio = 1.0;
  r = ioupos_rng_split(S, 0);
  for (j = 0; j < ns; ++j) {
    int o = i * ns + j, c, y0, x0;
    float *oi = b->image + (size_t)o * hw, *ol = b->label + (size_t)o * hw;
    ioupos_box *bx = &b->box[0][o];
    size_t y, x;
    if (ioupos_rng_uniform(&r) < pos_ratio) c = wk->idx[ioupos_rng_below(&r, nfg)];
    else c = wk->idx[n - 1 - ioupos_rng_below(&r, nbg)]; /* the ascending q-th bg index */
    y0 = ioupos_crop_start_from_centre(c / W, ch, H) - py;
    x0 = ioupos_crop_start_from_centre(c % W, cw, W) - px;
    ioupos__pix_crop(st, &im, y0, x0, ch, cw, oi);
    for (y = 0; y < (size_t)ch; ++y)
      for (x = 0; x < (size_t)cw; ++x) {
        int sy = y0 + (int)y, sx = x0 + (int)x;
        ol[y * (size_t)cw + x] =
            (sy >= 0 && sy < lb.h && sx >= 0 && sx < lb.w)
                ? (float)ioupos__pix_label(&lb, (size_t)sy * (size_t)lb.w + (size_t)sx)
                : 0.0f;
      }
    memset(bx, 0, sizeof *bx);
    bx->dims = 2;
    bx->lo[0] = y0, bx->hi[0] = y0 + ch;
    bx->lo[1] = x0, bx->hi[1] = x0 + cw;
    b->source[o] = d;
  }
  for (j = 0; j < ns; ++j) { /* augmentations after all centres: crop j uses split(S, 1 + j) */
    int o = i * ns + j;
    ioupos_rng ra = ioupos_rng_split(S, 1u + (uint64_t)j);
    status = ioupos__augment(cfg, wk, &ra, b->image + (size_t)o * hw, b->label + (size_t)o * hw,
                             ipath);
    if (status) goto done;
  }
done:
  ioupos__pix_free(&im);
  ioupos__pix_free(&lb);
  return status;
}

/* Make batch g of the stream into slot (any thread; touches only the worker and the slot).
   Everything comes from (seed, g) alone: E = split(root, epoch); the epoch's order is a
   Fisher-Yates shuffle drawn from a copy of E, so it is a function of (seed, epoch), as with
   PyTorch's DistributedSampler.set_epoch, and a seek can resume anywhere; image d uses
   S = split(E, d), keyed by its data set index rather than its place in the batch, so its
   sample in an epoch does not depend on batch_size. Hence the stream is the same for any
   num_workers, prefetch and timing. The first failing sample ends the batch; its status and
   a reason with the batch position go into the slot. */
static int ioupos__make_batch(ioupos__worker *wk, int64_t g, ioupos__slot *slot) {
  struct ioupos__loader_state *st = wk->st;
  const ioupos_loader_config *cfg = st->cfg;
  int n = cfg->dataset->n, B = cfg->batch_size, epoch = (int)(g / st->bpe);
  int index = (int)(g % st->bpe), first = index * B, count, i, status = 0;
  ioupos_batch *b = &slot->b;
  ioupos_rng E = ioupos_rng_split(&st->root, (uint64_t)epoch);
  if (wk->perm_epoch != epoch) { /* Fisher-Yates from a copy of E */
    ioupos_rng r = E;
    for (i = 0; i < n; ++i) wk->perm[i] = i;
    for (i = n - 1; i > 0; --i) {
      int j = (int)ioupos_rng_below(&r, (uint64_t)i + 1u), t = wk->perm[i];
      wk->perm[i] = wk->perm[j];
      wk->perm[j] = t;
    }
    wk->perm_epoch = epoch;
  }
  count = n - first < B ? n - first : B;
  b->epoch = epoch;
  b->index = index;
  b->last_in_epoch = index == st->bpe - 1;
  b->n_images = count;
  b->n = cfg->kind == IOUPOS_LOADER_FINETUNE ? count * cfg->num_samples : count;
  for (i = 0; i < count && !status; ++i) {
    int d = wk->perm[first + i];
    ioupos_rng S = ioupos_rng_split(&E, (uint64_t)d);
    status = cfg->kind == IOUPOS_LOADER_FINETUNE ? ioupos__make_finetune(wk, d, &S, b, i)
                                                 : ioupos__make_ssl(wk, d, &S, b, i);
  }
  slot->status = status;
  slot->reason[0] = 0;
  if (status)
    snprintf(slot->reason, sizeof slot->reason, "loader batch (epoch %d, batch %d): %s", epoch,
             index, ioupos_failure_reason());
  return status;
}

/* A worker holds mu except while it makes a batch. It claims next_claim under the lock, so
   batches are claimed in increasing order and each once, though they may finish out of order
   (the caller waits for its own g). It waits while a seek pauses the loader or the ring is
   full (next_claim >= released + nslots). A batch once started is always finished: stop is
   seen only between batches, which is why close waits at most for the batches being made. */
static void *ioupos__worker_main(void *arg) {
  ioupos__worker *wk = (ioupos__worker *)arg;
  struct ioupos__loader_state *st = wk->st;
  pthread_mutex_lock(&st->mu);
  for (;;) {
    int64_t g;
    ioupos__slot *slot;
    while (!st->stop && (st->pausing || st->next_claim >= st->released + st->nslots))
      pthread_cond_wait(&st->cv_work, &st->mu);
    if (st->stop) break;
    g = st->next_claim++;
    slot = &st->slots[g % st->nslots];
    IOUPOS_ASSERT(slot->state == IOUPOS__SLOT_FREE);
    slot->state = IOUPOS__SLOT_FILLING;
    slot->g = g;
    ++st->busy;
    pthread_mutex_unlock(&st->mu);
    ioupos__make_batch(wk, g, slot);
    pthread_mutex_lock(&st->mu);
    slot->state = IOUPOS__SLOT_READY;
    --st->busy;
    pthread_cond_broadcast(&st->cv_ready);
  }
  pthread_mutex_unlock(&st->mu);
  return NULL;
}

static void ioupos__worker_free(ioupos__worker *wk) {
  int i;
  for (i = 0; i < IOUPOS__LOADER_CACHE; ++i)
    if (wk->cache[i].used) ioupos_iou_sampler_free(&wk->cache[i].s);
  IOUPOS_FREE(wk->perm);
  IOUPOS_FREE(wk->scratch);
  IOUPOS_FREE(wk->idx);
  memset(wk, 0, sizeof *wk);
}

/* Shutdown: stop is set under mu and cv_work broadcast, so idle workers wake and leave; busy
   ones finish their batch and leave at the top of their loop; all are joined before anything
   is freed. Safe on a partly opened loader (open's failure paths call it): sync_ok says the
   mutex and conditions exist, started which threads to join. The batch the caller holds dies
   with the loader. One thread drives a loader: next, seek and close must not run at once. */
IOUPOS_DEF void ioupos_loader_close(ioupos_loader *l) {
  struct ioupos__loader_state *st;
  int i;
  if (!l || !l->st) return;
  st = l->st;
  if (st->sync_ok) {
    pthread_mutex_lock(&st->mu);
    st->stop = 1;
    pthread_cond_broadcast(&st->cv_work);
    pthread_mutex_unlock(&st->mu);
  }
  if (st->workers) {
    int nw = st->nworkers ? st->nworkers : 1;
    for (i = 0; i < nw; ++i)
      if (st->workers[i].started) pthread_join(st->workers[i].thread, NULL);
    for (i = 0; i < nw; ++i) ioupos__worker_free(&st->workers[i]);
    IOUPOS_FREE(st->workers);
  }
  if (st->slots) {
    for (i = 0; i < st->nslots; ++i) {
      IOUPOS_FREE(st->slots[i].mem);
      IOUPOS_FREE(st->slots[i].b.source);
      IOUPOS_FREE(st->slots[i].b.box[0]);
      IOUPOS_FREE(st->slots[i].b.box[1]);
      IOUPOS_FREE(st->slots[i].b.local);
      IOUPOS_FREE(st->slots[i].b.local_box);
    }
    IOUPOS_FREE(st->slots);
  }
  if (st->sync_ok) {
    pthread_cond_destroy(&st->cv_ready);
    pthread_cond_destroy(&st->cv_work);
    pthread_mutex_destroy(&st->mu);
  }
  IOUPOS_FREE(st);
  l->st = NULL;
}

/* Validation first, naming the fields, with nothing allocated; then the state, the mutex and
   conditions, the slots (each a whole batch, allocated once; its two crop arrays share one
   block, mem), the workers' contexts, and the threads last, so a failure before them leaves
   nothing running. Every failure after the state exists goes through ioupos_loader_close. */
IOUPOS_DEF int ioupos_loader_open(ioupos_loader *l, const ioupos_loader_config *cfg_in) {
  struct ioupos__loader_state *st;
  const ioupos_loader_config *cfg;
  const ioupos_dataset *ds;
  int i, nw, ft, per_img, B;
  size_t hw, scratch, floats, lfloats, lhw;
  if (!l) return ioupos__fail(IOUPOS_EINVAL, "ioupos_loader_open: loader is NULL");
  memset(l, 0, sizeof *l);
  if (!cfg_in) return ioupos__fail(IOUPOS_EINVAL, "ioupos_loader_open: config is NULL");
  l->cfg = *cfg_in;
  cfg = &l->cfg;
  ds = cfg->dataset;
  ft = cfg->kind == IOUPOS_LOADER_FINETUNE;
  B = cfg->batch_size;
  if (!ds || ds->n <= 0 || !ds->images)
    return ioupos__fail(IOUPOS_EINVAL, "loader: the data set is NULL or empty");
  if (cfg->kind != IOUPOS_LOADER_SSL && !ft)
    return ioupos__fail(IOUPOS_EINVAL, "loader: unknown kind %d (0 SSL pairs, 1 fine-tuning)",
                        cfg->kind);
  if (B < 1 || cfg->crop[0] < 1 || cfg->crop[1] < 1 || cfg->crop[0] > 16384 ||
      cfg->crop[1] > 16384)
    return ioupos__fail(IOUPOS_EINVAL, "loader: batch_size %d must be >= 1 and the crop %dx%d "
                        "between 1 and 16384", B, cfg->crop[0], cfg->crop[1]);
  if (cfg->num_workers < 0 || cfg->num_workers > 256 || cfg->prefetch < 0 ||
      cfg->prefetch > 4096)
    return ioupos__fail(IOUPOS_EINVAL, "loader: num_workers %d must be in 0..256 and prefetch "
                        "%d in 0..4096", cfg->num_workers, cfg->prefetch);
  if (ft) {
    if (!ds->labels)
      return ioupos__fail(IOUPOS_EINVAL, "loader: fine-tuning needs a data set with labels "
                          "(scan it with a label folder)");
    if (cfg->num_samples < 1 || cfg->num_samples > 4096 || cfg->pos < 0 || cfg->neg < 0 ||
        cfg->pos + cfg->neg <= 0)
      return ioupos__fail(IOUPOS_EINVAL, "loader: num_samples %d must be in 1..4096 and pos %d, "
                          "neg %d non-negative, not both 0", cfg->num_samples, cfg->pos,
                          cfg->neg);
  } else {
    if (!(cfg->min_iou >= 0.0 && cfg->max_iou <= 1.0 && cfg->min_iou <= cfg->max_iou))
      return ioupos__fail(IOUPOS_EINVAL, "loader: IoU interval [%g, %g] must be within [0, 1], "
                          "not reversed, not NaN", cfg->min_iou, cfg->max_iou);
    if (cfg->pair_mode != IOUPOS_PAIR_ANCHORED && cfg->pair_mode != IOUPOS_PAIR_JOINT)
      return ioupos__fail(IOUPOS_EINVAL, "loader: unknown pair mode %d", cfg->pair_mode);
  }
  if (cfg->n_local != 0) { /* multi-crop (n_local 0 ignores the local_* fields) */
    int fst;
    if (ft || cfg->n_local < 0 || cfg->n_local > 256)
      return ioupos__fail(IOUPOS_EINVAL, "loader: n_local %d must be in 0..256, and 0 for "
                          "fine-tuning (local crops are SSL views)", cfg->n_local);
    if (cfg->local_crop[0] < 1 || cfg->local_crop[1] < 1 || cfg->local_crop[0] > 16384 ||
        cfg->local_crop[1] > 16384)
      return ioupos__fail(IOUPOS_EINVAL, "loader: local crop %dx%d must be between 1 and 16384",
                          cfg->local_crop[0], cfg->local_crop[1]);
    if (!(cfg->local_min_iou >= 0.0 && cfg->local_max_iou <= 1.0 &&
          cfg->local_min_iou <= cfg->local_max_iou))
      return ioupos__fail(IOUPOS_EINVAL, "loader: `local_min_iou` %g / `local_max_iou` %g: the "
                          "interval must be within [0, 1], not reversed, not NaN",
                          cfg->local_min_iou, cfg->local_max_iou);
    fst = ioupos_local_crop_feasible(2, NULL, cfg->crop, cfg->local_crop, cfg->local_min_iou,
                                     cfg->local_max_iou);
    if (fst) {
      char why[512];
      snprintf(why, sizeof why, "%s", ioupos_failure_reason());
      return ioupos__fail(fst, "loader: `local_min_iou` %g / `local_max_iou` %g: %s",
                          cfg->local_min_iou, cfg->local_max_iou, why);
    }
  }
  /* as PyTorch's DataLoader: n / B batches with drop_last, else ceil(n / B); the samples of a
     batch (B, or B * num_samples) must fit an int with room to spare */
  l->batches_per_epoch = cfg->drop_last ? ds->n / B : (ds->n - 1) / B + 1;
  if (l->batches_per_epoch == 0)
    return ioupos__fail(IOUPOS_EINVAL, "loader: the data set has %d images, fewer than one batch "
                        "of %d, and drop_last is set: an epoch would have no batch", ds->n, B);
  if ((int64_t)B * (ft ? cfg->num_samples : 1) > 0x7FFFFFFF / 2)
    return ioupos__fail(IOUPOS_ERANGE, "loader: batch_size %d x num_samples %d is too large", B,
                        cfg->num_samples);

  st = (struct ioupos__loader_state *)ioupos__calloc(1, sizeof *st);
  if (!st) return ioupos__fail(IOUPOS_ENOMEM, "loader: out of memory");
  l->st = st;
  st->cfg = cfg;
  st->bpe = l->batches_per_epoch;
  ioupos_rng_seed(&st->root, cfg->seed);
  /* v / 255 rounded to float, as ioupos_image_load computes it: the byte path's exact values */
  for (i = 0; i < 256; ++i) st->lut[i] = (float)((double)i / 255.0);
  st->held = -1;
  nw = cfg->num_workers;
  st->nworkers = nw;
  /* one slot in the synchronous mode; else prefetch, by default 2 per worker, as PyTorch's
     DataLoader keeps prefetch_factor (2) batches per worker in flight */
  st->nslots = nw == 0 ? 1 : cfg->prefetch ? cfg->prefetch : 2 * nw;
  if (pthread_mutex_init(&st->mu, NULL) != 0) goto oom;
  if (pthread_cond_init(&st->cv_work, NULL) != 0) {
    pthread_mutex_destroy(&st->mu);
    goto oom;
  }
  if (pthread_cond_init(&st->cv_ready, NULL) != 0) {
    pthread_cond_destroy(&st->cv_work);
    pthread_mutex_destroy(&st->mu);
    goto oom;
  }
  st->sync_ok = 1;

  /* slots: each holds a whole batch */
  per_img = ft ? cfg->num_samples : 1;
  hw = (size_t)cfg->crop[0] * (size_t)cfg->crop[1];
  lhw = cfg->n_local > 0 ? (size_t)cfg->local_crop[0] * (size_t)cfg->local_crop[1] : 1;
  floats = (size_t)B * (size_t)per_img * hw; /* <= 2^30 * 2^28: check the product below */
  if (hw != 0 && floats / hw != (size_t)B * (size_t)per_img) goto oom;
  lfloats = (size_t)B * (size_t)cfg->n_local * lhw; /* n_local <= 256, lhw <= 2^28 */
  if (cfg->n_local > 0 && lfloats / lhw != (size_t)B * (size_t)cfg->n_local) goto oom;
  st->slots = (ioupos__slot *)ioupos__calloc((size_t)st->nslots, sizeof(ioupos__slot));
  if (!st->slots) goto oom;
  for (i = 0; i < st->nslots; ++i) {
    ioupos__slot *s = &st->slots[i];
    ioupos_batch *b = &s->b;
    size_t nsamp = (size_t)B * (size_t)per_img;
    s->mem = (float *)ioupos__calloc(floats, 2 * sizeof(float));
    b->source = (int *)ioupos__calloc(nsamp, sizeof(int));
    b->box[0] = (ioupos_box *)ioupos__calloc(nsamp, sizeof(ioupos_box));
    if (!ft) b->box[1] = (ioupos_box *)ioupos__calloc(nsamp, sizeof(ioupos_box));
    if (!s->mem || !b->source || !b->box[0] || (!ft && !b->box[1])) goto oom;
    if (cfg->n_local > 0) {
      b->local = (float *)ioupos__calloc(lfloats, sizeof(float));
      b->local_box = (ioupos_box *)ioupos__calloc((size_t)B * (size_t)cfg->n_local,
                                                  sizeof(ioupos_box));
      if (!b->local || !b->local_box) goto oom;
      b->n_local = cfg->n_local;
      b->lh = cfg->local_crop[0];
      b->lw = cfg->local_crop[1];
    }
    b->kind = cfg->kind;
    b->h = cfg->crop[0];
    b->w = cfg->crop[1];
    if (ft) b->image = s->mem, b->label = s->mem + floats;
    else b->views[0] = s->mem, b->views[1] = s->mem + floats;
  }
  /* worker contexts (one for the synchronous mode) */
  scratch = IOUPOS_AUGMENT_SCRATCH(cfg->crop[0], cfg->crop[1]);
  if (cfg->n_local > 0 && IOUPOS_AUGMENT_SCRATCH(cfg->local_crop[0], cfg->local_crop[1]) > scratch)
    scratch = IOUPOS_AUGMENT_SCRATCH(cfg->local_crop[0], cfg->local_crop[1]);
  st->workers = (ioupos__worker *)ioupos__calloc((size_t)(nw ? nw : 1), sizeof(ioupos__worker));
  if (!st->workers) goto oom;
  for (i = 0; i < (nw ? nw : 1); ++i) {
    ioupos__worker *wk = &st->workers[i];
    wk->st = st;
    wk->perm_epoch = -1;
    wk->perm = (int *)ioupos__calloc((size_t)ds->n, sizeof(int));
    wk->scratch = (float *)ioupos__calloc(scratch, sizeof(float));
    if (!wk->perm || !wk->scratch) goto oom;
  }
  /* if a thread cannot start, close stops and joins the ones already started */
  for (i = 0; i < nw; ++i) {
    int e = pthread_create(&st->workers[i].thread, NULL, ioupos__worker_main, &st->workers[i]);
    if (e != 0) {
      ioupos_loader_close(l);
      return ioupos__fail(IOUPOS_ENOMEM, "loader: cannot start worker thread %d of %d: %s", i + 1,
                          nw, strerror(e));
    }
    st->workers[i].started = 1;
  }
  return IOUPOS_OK;
oom:
  i = st->nslots;
  ioupos_loader_close(l);
  return ioupos__fail(IOUPOS_ENOMEM, "loader: out of memory for %d batch buffers of %d x %dx%d "
                      "crops", i, cfg_in->batch_size, cfg_in->crop[0], cfg_in->crop[1]);
}

/* Gives back the batch the caller held (its arrays are valid only until this call), which may
   let a worker claim its slot, then returns batch next_return. Synchronous mode: the batch is
   made here, in the caller's thread, without the lock (no worker exists to touch the slot).
   Threaded: waits until that very batch is READY (slot->g guards against another batch in
   the slot). A failed batch is held and moves the stream on like a good one, so the next call
   goes past it (the caller decides whether to stop); its reason is raised again on this
   thread. *batch is a shallow copy: its arrays are the slot's. */
IOUPOS_DEF int ioupos_loader_next(ioupos_loader *l, ioupos_batch *batch) {
  struct ioupos__loader_state *st;
  ioupos__slot *slot;
  int64_t g;
  if (!l || !l->st || !batch)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_loader_next: NULL argument or loader not open");
  st = l->st;
  memset(batch, 0, sizeof *batch);
  pthread_mutex_lock(&st->mu);
  if (st->held >= 0) { /* the caller is done with the batch it holds */
    st->slots[st->held].state = IOUPOS__SLOT_FREE;
    st->held = -1;
    st->released = st->next_return;
    pthread_cond_broadcast(&st->cv_work);
  }
  g = st->next_return;
  slot = &st->slots[g % st->nslots];
  if (st->nworkers == 0) {
    pthread_mutex_unlock(&st->mu);
    slot->g = g;
    ioupos__make_batch(&st->workers[0], g, slot);
    pthread_mutex_lock(&st->mu);
    slot->state = IOUPOS__SLOT_READY;
  } else {
    while (!(slot->state == IOUPOS__SLOT_READY && slot->g == g))
      pthread_cond_wait(&st->cv_ready, &st->mu);
  }
  st->next_return = g + 1;
  st->held = (int)(g % st->nslots);
  pthread_mutex_unlock(&st->mu);
  l->epoch = (int)((g + 1) / st->bpe);
  l->batch = (int)((g + 1) % st->bpe);
  if (slot->status) return ioupos__fail(slot->status, "%s", slot->reason);
  *batch = slot->b;
  return IOUPOS_OK;
}

/* A seek to the current position costs nothing and keeps the prefetched batches (so
   ioupos_loader_epoch at the top of every epoch is free). Any other position drops the whole
   ring: pausing stops new claims, the batches being made are waited for (a worker cannot be
   interrupted, and it writes its slot without the lock), then every slot is freed, the one
   the caller held too, and the counters restart at g. The bound on g keeps g + nslots and
   the counters far from int64 overflow. */
IOUPOS_DEF int ioupos_loader_seek(ioupos_loader *l, int epoch, int batch) {
  struct ioupos__loader_state *st;
  int64_t g;
  int i;
  if (!l || !l->st)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_loader_seek: NULL argument or loader not open");
  if (epoch < 0 || batch < 0 || batch >= l->batches_per_epoch)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_loader_seek: position (epoch %d, batch %d) is "
                        "outside the stream (epoch >= 0, batch in 0..%d)", epoch, batch,
                        l->batches_per_epoch - 1);
  st = l->st;
  g = (int64_t)epoch * st->bpe + batch;
  if (g > ((int64_t)1 << 62))
    return ioupos__fail(IOUPOS_ERANGE, "ioupos_loader_seek: epoch %d too large", epoch);
  pthread_mutex_lock(&st->mu);
  if (g != st->next_return) {
    st->pausing = 1; /* no new claims; let the batches being made finish, then drop them all */
    while (st->busy > 0) pthread_cond_wait(&st->cv_ready, &st->mu);
    for (i = 0; i < st->nslots; ++i) st->slots[i].state = IOUPOS__SLOT_FREE;
    st->held = -1;
    st->next_claim = st->next_return = st->released = g;
    st->pausing = 0;
    pthread_cond_broadcast(&st->cv_work);
  }
  pthread_mutex_unlock(&st->mu);
  l->epoch = epoch;
  l->batch = batch;
  return IOUPOS_OK;
}

IOUPOS_DEF int ioupos_loader_epoch(ioupos_loader *l, int epoch) {
  return ioupos_loader_seek(l, epoch, 0);
}

/* -- 9c. The pre-flight check of data sets -- */

/* The structure of the PNG at path without decoding it (see ioupos_dataset_check): signature, a
   valid IHDR first, the chunk list inside the file up to IEND, an IDAT (after a PLTE for a
   palette image). *h, *w: the size from IHDR. The reason starts with the path.
   Only the 8-byte chunk headers are read (the data is seeked over), so checking thousands of
   slices costs little I/O. CRCs are not checked, as stb_image does not check them either; the
   size limits are the decoder's (2^24 per side as stb's, IOUPOS_MAX_IMAGE_PIXELS). */
static int ioupos__png_walk(const char *path, int *h, int *w) {
  static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  unsigned char hd[33], ch[8];
  FILE *f;
  long size, pos;
  uint32_t pw, ph;
  int depth, ct, ok, idat = 0, plte = 0, st = IOUPOS_OK;
  *h = *w = 0;
  f = fopen(path, "rb");
  if (!f) return ioupos__fail(IOUPOS_EIO, "%s: cannot open: %s", path, strerror(errno));
  if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
    st = ioupos__fail(IOUPOS_EIO, "%s: cannot determine the file size", path);
    goto done;
  }
  if (size < 8 || fread(hd, 1, 8, f) != 8 || memcmp(hd, sig, 8) != 0) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: not a PNG file (no PNG signature; %ld bytes)", path,
                      size);
    goto done;
  }
  if (size < 33 || fread(hd + 8, 1, 25, f) != 25) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: corrupt PNG (truncated: %ld bytes, no whole IHDR)",
                      path, size);
    goto done;
  }
  if (ioupos__be32(hd + 8) != 13 || memcmp(hd + 12, "IHDR", 4) != 0) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: corrupt PNG (no IHDR chunk first)", path);
    goto done;
  }
  pw = ioupos__be32(hd + 16);
  ph = ioupos__be32(hd + 20);
  depth = hd[24];
  ct = hd[25];
  if (pw == 0 || ph == 0 || pw > (1u << 24) || ph > (1u << 24) ||
      (double)pw * (double)ph > (double)IOUPOS_MAX_IMAGE_PIXELS) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: PNG of %lux%lu pixels is empty or larger than "
                      "IOUPOS_MAX_IMAGE_PIXELS (%.0f)", path, (unsigned long)pw,
                      (unsigned long)ph, (double)IOUPOS_MAX_IMAGE_PIXELS);
    goto done;
  }
  ok = ct == 0 ? (depth == 1 || depth == 2 || depth == 4 || depth == 8 || depth == 16)
     : ct == 3 ? (depth == 1 || depth == 2 || depth == 4 || depth == 8)
     : (ct == 2 || ct == 4 || ct == 6) ? (depth == 8 || depth == 16) : 0;
  if (!ok || hd[26] != 0 || hd[27] != 0 || hd[28] > 1) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: corrupt or unsupported PNG header (bit depth %d, "
                      "colour type %d, compression %d, filter %d, interlace %d)", path, depth,
                      ct, hd[26], hd[27], hd[28]);
    goto done;
  }
  for (pos = 33;;) {
    uint32_t len;
    if (size - pos < 12) {
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: corrupt PNG (truncated: %ld bytes, no IEND)", path,
                        size);
      goto done;
    }
    if (fseek(f, pos, SEEK_SET) != 0 || fread(ch, 1, 8, f) != 8) {
      st = ioupos__fail(IOUPOS_EIO, "%s: read error at offset %ld", path, pos);
      goto done;
    }
    len = ioupos__be32(ch);
    if ((unsigned long)len > (unsigned long)(size - pos - 12)) {
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: corrupt PNG (truncated: %ld bytes, its chunk of %lu "
                        "bytes at offset %ld runs past the end)", path, size, (unsigned long)len,
                        pos);
      goto done;
    }
    if (memcmp(ch + 4, "IEND", 4) == 0) break;
    if (memcmp(ch + 4, "IHDR", 4) == 0) {
      st = ioupos__fail(IOUPOS_EFORMAT, "%s: corrupt PNG (a second IHDR chunk)", path);
      goto done;
    }
    if (memcmp(ch + 4, "PLTE", 4) == 0) plte = 1;
    if (memcmp(ch + 4, "IDAT", 4) == 0) {
      if (ct == 3 && !plte) {
        st = ioupos__fail(IOUPOS_EFORMAT, "%s: corrupt PNG (palette image without PLTE)", path);
        goto done;
      }
      idat = 1;
    }
    pos += 12 + (long)len;
  }
  if (!idat) {
    st = ioupos__fail(IOUPOS_EFORMAT, "%s: corrupt PNG (no IDAT chunk: no pixels)", path);
    goto done;
  }
  *h = (int)ph;
  *w = (int)pw;
done:
  fclose(f);
  return st;
}

/* Every pixel of a decoded label an 8-bit id below K (as the evaluation reads labels). A label
   that did not take the byte path must be within 1e-3 / 255 of some k / 255. All pixels
   are scanned, so the reason can give the count of bad ones and the largest bad id. */
static int ioupos__chk_label_ids(const ioupos__pix *p, int K, const char *path) {
  size_t i, n = (size_t)p->h * (size_t)p->w, count = 0, at = 0;
  long first = 0, top = 0;
  for (i = 0; i < n; ++i) {
    long id;
    if (p->u8) {
      id = p->u8[i];
    } else {
      double v = (double)p->f.data[i] * 255.0;
      id = lrint(v);
      if (fabs(v - (double)id) > 1e-3)
        return ioupos__fail(IOUPOS_EFORMAT, "%s: pixel (%zu, %zu) is not an 8-bit label id "
                            "(grey %g)", path, i / (size_t)p->w, i % (size_t)p->w,
                            (double)p->f.data[i]);
    }
    if (id >= K) {
      if (count++ == 0) first = id, at = i;
      if (id > top) top = id;
    }
  }
  if (count)
    return ioupos__fail(IOUPOS_EINVAL, "%s: label %ld at pixel (%zu, %zu) is outside [0, %d) "
                        "(`n_classes` %d); %zu such pixels, ids up to %ld", path, first,
                        at / (size_t)p->w, at % (size_t)p->w, K, K, count, top);
  return IOUPOS_OK;
}

/* The pre-flight's per-file results. Each item is written only by the one thread whose stride
   covers it, so there are no locks; a failure's reason is copied into msg at once, as the
   reason buffer is per thread and the next file would overwrite it. */
typedef struct ioupos__chk_item {
  const char *img, *lab; /* paths; lab NULL without labels */
  int h, w;              /* the image's size; 0 when it could not be read */
  int status[2];         /* the image's and the label's problem, 0 none */
  char *msg[2];          /* their "<path>: <problem>" (IOUPOS_MALLOC), or NULL */
} ioupos__chk_item;

typedef struct ioupos__chk_job {
  ioupos__chk_item *items;
  size_t n, first, stride;
  const ioupos_dataset_check_opts *o;
  pthread_t thread;
} ioupos__chk_job;

static void ioupos__chk_note(ioupos__chk_item *it, int k, int st) {
  const char *why = ioupos_failure_reason();
  size_t n = strlen(why);
  it->status[k] = st;
  it->msg[k] = (char *)IOUPOS_MALLOC(n + 1);
  if (it->msg[k]) memcpy(it->msg[k], why, n + 1);
}

static void ioupos__chk_run(ioupos__chk_item *it, const ioupos_dataset_check_opts *o) {
  ioupos__pix p;
  int st, lh = 0, lw = 0;
  st = ioupos__png_walk(it->img, &it->h, &it->w);
  if (st == 0 && o->decode_images) {
    st = ioupos__pix_load(it->img, &p);
    ioupos__pix_free(&p);
  }
  if (st) {
    it->h = it->w = 0;
    ioupos__chk_note(it, 0, st);
  }
  if (!it->lab) return;
  st = ioupos__png_walk(it->lab, &lh, &lw);
  if (st == 0 && it->h > 0 && (lh != it->h || lw != it->w))
    st = ioupos__fail(IOUPOS_EINVAL, "label %s is %dx%d but its image %s is %dx%d", it->lab, lh,
                      lw, it->img, it->h, it->w);
  if (st == 0 && o->n_classes > 0) {
    st = ioupos__pix_load(it->lab, &p);
    if (st == 0) st = ioupos__chk_label_ids(&p, o->n_classes, it->lab);
    ioupos__pix_free(&p);
  }
  if (st) ioupos__chk_note(it, 1, st);
}

/* Thread j checks items j, j + T, j + 2T, ...: neighbouring files of a sorted folder are often
   slices of one volume, alike in size, so striding balances the load better than blocks;
   results land in their own item, so the report's order does not depend on T. */
static void *ioupos__chk_main(void *arg) {
  ioupos__chk_job *j = (ioupos__chk_job *)arg;
  size_t i;
  for (i = j->first; i < j->n; i += j->stride) ioupos__chk_run(&j->items[i], j->o);
  return NULL;
}

/* The IoU values two c[0] x c[1] crops in an image of shape (NULL: of any size) can have,
   nearest to [lo, hi]: *below (largest under lo) and *above (smallest over hi), -1 if none.
   Two equal crops of area V overlapping by I have IoU I / (2V - I), increasing in I, so the
   nearest IoUs are those of the nearest achievable overlaps: products o0 o1 of per-axis
   overlaps, each in [max(0, 2c - s), c] (two crops of length c in an axis of length s overlap
   by at least 2c - s). For each o0 the best o1 on either side is one division away. */
static void ioupos__chk_pair_near(const int shape[2], const int c[2], double lo, double hi,
                                  double *below, double *above) {
  int64_t V = (int64_t)c[0] * c[1], ilo, ihi, o0, lo0, lo1, bI = -1, aI = -1;
  lo0 = shape ? ioupos__max64(0, 2 * (int64_t)c[0] - shape[0]) : 0;
  lo1 = shape ? ioupos__max64(0, 2 * (int64_t)c[1] - shape[1]) : 0;
  ioupos__iou_range(V, V, lo, hi, &ilo, &ihi);
  for (o0 = lo0; o0 <= c[0]; ++o0) {
    if (o0 == 0) {
      if (ilo > 0) bI = ioupos__max64(bI, 0); /* a product of 0, whatever o1 */
      continue;
    }
    if (ilo >= 1) {
      int64_t o1 = ioupos__min64(c[1], (ilo - 1) / o0);
      if (o1 >= lo1) bI = ioupos__max64(bI, o0 * o1);
    }
    {
      int64_t o1 = ioupos__max64(lo1, ihi / o0 + 1);
      if (o1 <= c[1] && (aI < 0 || o0 * o1 < aI)) aI = o0 * o1;
    }
  }
  *below = bI >= 0 ? ioupos__iou_of(bI, V) : -1.0;
  *above = aI >= 0 ? ioupos__iou_of(aI, V) : -1.0;
}

static void ioupos__chk_near_text(char *buf, size_t cap, double below, double above) {
  if (below >= 0.0 && above >= 0.0)
    snprintf(buf, cap, "the nearest IoUs such crops can have are %.4g and %.4g", below, above);
  else if (below >= 0.0 || above >= 0.0)
    snprintf(buf, cap, "the nearest IoU such crops can have is %.4g",
             below >= 0.0 ? below : above);
  else
    snprintf(buf, cap, "such crops cannot be placed");
}

/* The problem of one image size (h x w, as read) with the loader lc, or 0.
   The loader's rules in the loader's order (ioupos_loader_open, ioupos__make_ssl,
   ioupos__make_local) on the same padded shapes, so the two judge a size alike (a batch can
   still fail when its own view-0 box admits no local crop: this asks only for some box).
   Fine-tuning has only the pad_small rule: any image can centre a crop. */
static int ioupos__chk_size(const ioupos_loader_config *lc, int h, int w, char *buf, size_t cap) {
  const int *c = lc->crop, *lcr = lc->local_crop;
  int nl = lc->kind == IOUPOS_LOADER_SSL && lc->n_local > 0, shape[2], st;
  char im[64], pad[64], cr[64], lcs[64], ps[96] = "";
  const int hw[2] = {h, w};
  ioupos_format_shape(im, sizeof im, 2, hw);
  ioupos_format_shape(cr, sizeof cr, 2, c);
  ioupos_format_shape(lcs, sizeof lcs, 2, lcr);
  if (!lc->pad_small && (h < c[0] || w < c[1])) {
    snprintf(buf, cap, "image %s is smaller than the %s crop (the loader is opened with "
             "pad_small = 0)", im, cr);
    return IOUPOS_EINVAL;
  }
  if (!lc->pad_small && nl && (h < lcr[0] || w < lcr[1])) {
    snprintf(buf, cap, "image %s is smaller than the %s local crop (the loader is opened with "
             "pad_small = 0)", im, lcs);
    return IOUPOS_EINVAL;
  }
  if (lc->kind != IOUPOS_LOADER_SSL) return 0;
  shape[0] = ioupos__imax(h, c[0]);
  shape[1] = ioupos__imax(w, c[1]);
  if (shape[0] != h || shape[1] != w) {
    ioupos_format_shape(pad, sizeof pad, 2, shape);
    snprintf(ps, sizeof ps, ", zero-padded to %s,", pad);
  }
  st = ioupos_local_crop_feasible(2, shape, c, c, lc->min_iou, lc->max_iou);
  if (st == IOUPOS_EINFEASIBLE) {
    double below, above;
    char near[128];
    ioupos__chk_pair_near(shape, c, lc->min_iou, lc->max_iou, &below, &above);
    ioupos__chk_near_text(near, sizeof near, below, above);
    snprintf(buf, cap, "image %s%s has no pair of %s crops (`crop`) with an IoU in [%g, %g] "
             "(`min_iou` / `max_iou`): %s; use a smaller `crop` or another interval", im,
             ps, cr, lc->min_iou, lc->max_iou, near);
    return st;
  }
  if (st) {
    snprintf(buf, cap, "image %s%s: %s", im, ps, ioupos_failure_reason());
    return st;
  }
  if (nl) {
    shape[0] = ioupos__imax(shape[0], lcr[0]);
    shape[1] = ioupos__imax(shape[1], lcr[1]);
    st = ioupos_local_crop_feasible(2, shape, c, lcr, lc->local_min_iou, lc->local_max_iou);
    if (st) {
      ioupos_format_shape(pad, sizeof pad, 2, shape);
      snprintf(buf, cap, "image %s (as %s for the local crops): no %s local crop "
               "(`local_crop`) has an IoU in [%g, %g] (`local_min_iou` / `local_max_iou`) "
               "with a %s crop: %s", im, pad, lcs, lc->local_min_iou, lc->local_max_iou, cr,
               ioupos_failure_reason());
      return st;
    }
  }
  return 0;
}

typedef struct ioupos__chk_size_key {
  int h, w;
  size_t item;
} ioupos__chk_size_key;

/* By size, then by item: qsort is not stable, and the tie-break makes the order total, so the
   report does not depend on the C library's qsort. */
static int ioupos__chk_size_cmp(const void *a, const void *b) {
  const ioupos__chk_size_key *x = (const ioupos__chk_size_key *)a;
  const ioupos__chk_size_key *y = (const ioupos__chk_size_key *)b;
  if (x->h != y->h) return x->h < y->h ? -1 : 1;
  if (x->w != y->w) return x->w < y->w ? -1 : 1;
  return x->item < y->item ? -1 : x->item > y->item;
}

/* the problems, in report order (at most 2 per item and 1 per image size: 3 n in all) */
typedef struct ioupos__chk_list {
  char **line;
  int *status;
  size_t n, bad_files;
  int oom;
} ioupos__chk_list;

static void ioupos__chk_add(ioupos__chk_list *l, char *line, int status) {
  if (!line) {
    l->oom = 1;
    return;
  }
  l->line[l->n] = line;
  l->status[l->n++] = status;
}

/* Order of work: the checks that need no file (malformed arguments, intervals no image of any
   size can satisfy) fail at once with one message; then every file, on up to num_threads
   threads (a thread that cannot start has its share run on the caller's); then the report:
   single-file problems in data-set order, then size problems once per distinct size, in size
   order. */
IOUPOS_DEF int ioupos_dataset_check(const ioupos_dataset *const sets[], int n_sets,
                                    const ioupos_dataset_check_opts *opts, char **report) {
  ioupos_dataset_check_opts o;
  const ioupos_loader_config *lc;
  ioupos__chk_item *items = NULL;
  ioupos__chk_job *jobs = NULL;
  ioupos__chk_size_key *keys = NULL;
  ioupos__chk_list L;
  size_t n = 0, files = 0, i, nk = 0, T;
  int s, st = IOUPOS_OK, k;
  if (report) *report = NULL;
  memset(&o, 0, sizeof o);
  if (opts) o = *opts;
  lc = o.loader;
  memset(&L, 0, sizeof L);
  if (n_sets < 0 || (n_sets > 0 && !sets))
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_dataset_check: %d data sets, sets is NULL",
                        n_sets);
  for (s = 0; s < n_sets; ++s) {
    if (!sets[s] || sets[s]->n < 0 || (sets[s]->n > 0 && !sets[s]->images))
      return ioupos__fail(IOUPOS_EINVAL, "ioupos_dataset_check: data set %d is NULL or malformed",
                          s);
    n += (size_t)sets[s]->n;
    files += (size_t)sets[s]->n * (sets[s]->labels ? 2u : 1u);
  }
  if (o.max_listed <= 0) o.max_listed = 100;
  if (lc) {
    if (lc->crop[0] < 1 || lc->crop[1] < 1 || lc->crop[0] > 16384 || lc->crop[1] > 16384 ||
        (lc->kind == IOUPOS_LOADER_SSL && lc->n_local > 0 &&
         (lc->local_crop[0] < 1 || lc->local_crop[1] < 1 || lc->local_crop[0] > 16384 ||
          lc->local_crop[1] > 16384)))
      return ioupos__fail(IOUPOS_EINVAL, "ioupos_dataset_check: crop %dx%d or local crop %dx%d "
                          "not between 1 and 16384", lc->crop[0], lc->crop[1],
                          lc->local_crop[0], lc->local_crop[1]);
    if (lc->kind == IOUPOS_LOADER_SSL &&
        !(lc->min_iou >= 0.0 && lc->max_iou <= 1.0 && lc->min_iou <= lc->max_iou))
      return ioupos__fail(IOUPOS_EINVAL, "`min_iou` %g / `max_iou` %g: the IoU interval must be "
                          "within [0, 1], not reversed, not NaN", lc->min_iou, lc->max_iou);
    /* intervals no crops can satisfy in ANY image: one message, no file opened */
    if (lc->kind == IOUPOS_LOADER_SSL &&
        ioupos_local_crop_feasible(2, NULL, lc->crop, lc->crop, lc->min_iou, lc->max_iou) ==
            IOUPOS_EINFEASIBLE) {
      double below, above;
      char near[128], cr[64], flag[32];
      ioupos__chk_pair_near(NULL, lc->crop, lc->min_iou, lc->max_iou, &below, &above);
      ioupos__chk_near_text(near, sizeof near, below, above);
      ioupos_format_shape(cr, sizeof cr, 2, lc->crop);
      if (lc->crop[0] == lc->crop[1]) snprintf(flag, sizeof flag, "%d", lc->crop[0]);
      else snprintf(flag, sizeof flag, "%d,%d", lc->crop[0], lc->crop[1]);
      return ioupos__fail(IOUPOS_EINFEASIBLE, "`crop` %s with `min_iou` %g / `max_iou` %g: "
                          "no two %s crops have an IoU in [%g, %g], in an image of any size "
                          "(%s); change `min_iou` / `max_iou` or `crop`", flag, lc->min_iou,
                          lc->max_iou, cr, lc->min_iou, lc->max_iou, near);
    }
    if (lc->kind == IOUPOS_LOADER_SSL && lc->n_local > 0) {
      st = ioupos_local_crop_feasible(2, NULL, lc->crop, lc->local_crop, lc->local_min_iou,
                                      lc->local_max_iou);
      if (st) {
        char why[512], flag[32];
        snprintf(why, sizeof why, "%s", ioupos_failure_reason());
        if (lc->local_crop[0] == lc->local_crop[1])
          snprintf(flag, sizeof flag, "%d", lc->local_crop[0]);
        else
          snprintf(flag, sizeof flag, "%d,%d", lc->local_crop[0], lc->local_crop[1]);
        return ioupos__fail(st, "`local_crop` %s with `local_min_iou` %g / `local_max_iou` "
                            "%g: %s; change the interval or `local_crop`", flag,
                            lc->local_min_iou, lc->local_max_iou, why);
      }
    }
  }
  if (n == 0) return IOUPOS_OK;
  items = (ioupos__chk_item *)ioupos__calloc(n, sizeof *items);
  L.line = (char **)ioupos__calloc(3 * n, sizeof(char *));
  L.status = (int *)ioupos__calloc(3 * n, sizeof(int));
  if (!items || !L.line || !L.status) {
    st = ioupos__fail(IOUPOS_ENOMEM, "pre-flight check: out of memory");
    goto done;
  }
  for (s = 0, i = 0; s < n_sets; ++s) {
    int j;
    for (j = 0; j < sets[s]->n; ++j, ++i) {
      items[i].img = sets[s]->images[j];
      items[i].lab = sets[s]->labels ? sets[s]->labels[j] : NULL;
    }
  }
  /* the files, on num_threads threads (each item is its own: no locks) */
  T = o.num_threads > 1 ? (size_t)o.num_threads : 1;
  if (T > 256) T = 256;
  if (T > n) T = n;
  jobs = (ioupos__chk_job *)ioupos__calloc(T, sizeof *jobs);
  if (!jobs) {
    st = ioupos__fail(IOUPOS_ENOMEM, "pre-flight check: out of memory");
    goto done;
  }
  for (i = 0; i < T; ++i) {
    jobs[i].items = items;
    jobs[i].n = n;
    jobs[i].first = i;
    jobs[i].stride = T;
    jobs[i].o = &o;
  }
  {
    int *started = (int *)ioupos__calloc(T, sizeof(int));
    for (i = 1; started && i < T; ++i)
      started[i] = pthread_create(&jobs[i].thread, NULL, ioupos__chk_main, &jobs[i]) == 0;
    ioupos__chk_main(&jobs[0]);
    for (i = 1; i < T; ++i) {
      if (started && started[i]) pthread_join(jobs[i].thread, NULL);
      else ioupos__chk_main(&jobs[i]); /* no thread: do its share here */
    }
    IOUPOS_FREE(started);
  }
  /* the problems of single files, in data-set order */
  for (i = 0; i < n; ++i)
    for (k = 0; k < 2; ++k)
      if (items[i].status[k]) {
        ioupos__chk_add(&L, items[i].msg[k], items[i].status[k]);
        items[i].msg[k] = NULL;
        ++L.bad_files;
      }
  /* the problems of image sizes with the loader: once per distinct size */
  if (lc) {
    keys = (ioupos__chk_size_key *)ioupos__calloc(n, sizeof *keys);
    if (!keys) {
      st = ioupos__fail(IOUPOS_ENOMEM, "pre-flight check: out of memory");
      goto done;
    }
    for (i = 0; i < n; ++i)
      if (items[i].h > 0) {
        keys[nk].h = items[i].h;
        keys[nk].w = items[i].w;
        keys[nk++].item = i;
      }
    qsort(keys, nk, sizeof *keys, ioupos__chk_size_cmp);
    for (i = 0; i < nk;) {
      size_t j = i, cnt, first = keys[i].item;
      char why[1024], line[1536];
      int sst;
      while (j < nk && keys[j].h == keys[i].h && keys[j].w == keys[i].w) {
        if (keys[j].item < first) first = keys[j].item;
        ++j;
      }
      cnt = j - i;
      sst = ioupos__chk_size(lc, keys[i].h, keys[i].w, why, sizeof why);
      if (sst) {
        char *ln;
        size_t len;
        if (cnt > 1)
          snprintf(line, sizeof line, "%s (and %lu more images of %dx%d): %s",
                   items[first].img, (unsigned long)(cnt - 1), keys[i].h, keys[i].w, why);
        else
          snprintf(line, sizeof line, "%s: %s", items[first].img, why);
        len = strlen(line);
        ln = (char *)IOUPOS_MALLOC(len + 1);
        if (ln) memcpy(ln, line, len + 1);
        ioupos__chk_add(&L, ln, sst);
        L.bad_files += cnt;
      }
      i = j;
    }
  }
  if (L.oom) {
    st = ioupos__fail(IOUPOS_ENOMEM, "pre-flight check: out of memory");
    goto done;
  }
  if (L.n > 0) {
    char head[96], reason[512];
    size_t used, shown = 0;
    snprintf(head, sizeof head, "pre-flight check: %lu of %lu files are bad: ",
             (unsigned long)L.bad_files, (unsigned long)files);
    used = (size_t)snprintf(reason, sizeof reason, "%s", head);
    for (i = 0; i < L.n; ++i) { /* whole problems while they fit, room left for "and N more" */
      size_t len = strlen(L.line[i]) + (i ? 2 : 0);
      if (used + len + 24 >= sizeof reason) {
        if (i > 0) break;
        /* a first problem too long for the reason: as much of it as fits */
        used += (size_t)snprintf(reason + used, sizeof reason - used, "%.*s",
                                 (int)(sizeof reason - used - 25), L.line[0]);
      } else {
        used += (size_t)snprintf(reason + used, sizeof reason - used, "%s%s", i ? "; " : "",
                                 L.line[i]);
      }
      ++shown;
    }
    if (shown < L.n)
      snprintf(reason + used, sizeof reason - used, "%sand %lu more", shown ? "; " : "",
               (unsigned long)(L.n - shown));
    if (report) {
      size_t total = 64, m = L.n < (size_t)o.max_listed ? L.n : (size_t)o.max_listed;
      char *r;
      for (i = 0; i < m; ++i) total += strlen(L.line[i]) + 1;
      r = (char *)IOUPOS_MALLOC(total);
      if (r) {
        size_t at = 0;
        for (i = 0; i < m; ++i) {
          size_t len = strlen(L.line[i]);
          memcpy(r + at, L.line[i], len);
          r[at + len] = '\n';
          at += len + 1;
        }
        if (m < L.n) snprintf(r + at, total - at, "... and %lu more\n", (unsigned long)(L.n - m));
        else r[at] = 0;
        *report = r;
      }
    }
    st = ioupos__fail(L.status[0], "%s", reason);
  }
done:
  for (i = 0; items && i < n; ++i) {
    IOUPOS_FREE(items[i].msg[0]);
    IOUPOS_FREE(items[i].msg[1]);
  }
  for (i = 0; i < L.n; ++i) IOUPOS_FREE(L.line[i]);
  IOUPOS_FREE(L.line);
  IOUPOS_FREE(L.status);
  IOUPOS_FREE(keys);
  IOUPOS_FREE(jobs);
  IOUPOS_FREE(items);
  return st;
}

#if IOUPOS__PART_CORE /* the runs of sections 18 and 22 */
/* The runs' pre-flight (ioupos_pretrain_run, ioupos_finetune_run): ioupos_dataset_check of the
   sets, and on failure every problem on the log, one line each, before the error is returned. */
static int ioupos__data_preflight(const ioupos_dataset *const sets[], int n_sets,
                                  const ioupos_loader_config *lc, int n_classes, int threads,
                                  void (*log)(void *, const char *), void *log_ctx) {
  ioupos_dataset_check_opts o;
  char *report = NULL;
  int st;
  memset(&o, 0, sizeof o);
  o.loader = lc;
  o.n_classes = n_classes;
  o.num_threads = threads;
  st = ioupos_dataset_check(sets, n_sets, &o, log ? &report : NULL);
  if (st && report) {
    char keep[512], *line = report;
    int all = 1; /* does the reason already name every problem? then the log adds nothing */
    snprintf(keep, sizeof keep, "%s", ioupos_failure_reason());
    while (*line && all) {
      char *end = strchr(line, '\n');
      if (end) *end = 0;
      all = strstr(keep, line) != NULL;
      if (end) *end = '\n';
      line = end ? end + 1 : line + strlen(line);
    }
    line = all ? report + strlen(report) : report; /* the whole list, or nothing */
    if (*line) log(log_ctx, "pre-flight check of the data: every bad file:");
    while (*line) {
      char *end = strchr(line, '\n');
      if (end) *end = 0;
      log(log_ctx, line);
      if (!end) break;
      line = end + 1;
    }
    ioupos__fail(st, "%s", keep);
  }
  IOUPOS_FREE(report);
  return st;
}
#endif /* IOUPOS__PART_CORE */


#endif /* IOUPOS__PART_DATA: sections 5-9 */

#if IOUPOS__PART_CORE /* sections 10-22: not with IOUPOS_ONLY_SAMPLER or IOUPOS_ONLY_DATA */
/* ---- 10. Dense float32 GEMM (CPU) -------------------------------------------------------------- */

#if defined(__AVX2__) && defined(__FMA__) && !defined(IOUPOS_GEMM_NO_SIMD)
#define IOUPOS__GEMM_AVX2 1
#else
#define IOUPOS__GEMM_AVX2 0
#endif
/* -mavx512f on top: a 12 x 16 micro-kernel of 512-bit registers. It computes every element with
   the same FMA chain as the AVX2 kernel, so the two give bit-identical results. */
#if IOUPOS__GEMM_AVX2 && defined(__AVX512F__) && !defined(IOUPOS_GEMM_NO_AVX512)
#define IOUPOS__GEMM_AVX512 1
#else
#define IOUPOS__GEMM_AVX512 0
#endif

/* OpenMP only through these, so that a build without -fopenmp sees no pragma at all (-Wall
   warns on unknown pragmas). */
#ifdef _OPENMP
#define IOUPOS__PRAGMA(x) _Pragma(#x)
#define IOUPOS__OMP_TID() omp_get_thread_num()
#define IOUPOS__OMP_NTH() omp_get_num_threads()
#define IOUPOS__OMP_BARRIER(nth)        \
  do {                                  \
    if ((nth) > 1) {                    \
      IOUPOS__PRAGMA(omp barrier)       \
    }                                   \
  } while (0)
#else
#define IOUPOS__PRAGMA(x)
#define IOUPOS__OMP_TID() 0
#define IOUPOS__OMP_NTH() 1
#define IOUPOS__OMP_BARRIER(nth) ((void)(nth))
#endif

/* Loops of independent rows outside the GEMM (sections 11, 12, 17) share this rule: run them on
   omp_get_max_threads() threads when there are at least IOUPOS_PAR_MIN_WORK units of work (about
   floats touched) and we are not already inside a parallel region; else on the calling thread.
   Every such loop computes each output element from the same inputs in the same order whatever
   thread does it, and reductions across rows use partial sums over chunks of a FIXED number of
   rows, added in chunk order, so the thread count never changes a result. */
#ifndef IOUPOS_PAR_MIN_WORK
#define IOUPOS_PAR_MIN_WORK 32768
#endif
#ifdef _OPENMP
static int ioupos__par_ok(double work) {
  return work >= (double)IOUPOS_PAR_MIN_WORK && !omp_in_parallel() && omp_get_max_threads() > 1;
}
#define IOUPOS__MAX_THREADS() (omp_in_parallel() ? 1 : omp_get_max_threads())
#else
#define IOUPOS__MAX_THREADS() 1
#endif
/* `for` over independent iterations; work is evaluated only with OpenMP */
#define IOUPOS__PFOR(work) IOUPOS__PRAGMA(omp parallel for schedule(static) if(ioupos__par_ok(work)))
/* a parallel region whose threads share the following `IOUPOS__FOR` loops */
#define IOUPOS__PREGION(work) IOUPOS__PRAGMA(omp parallel if(ioupos__par_ok(work)))
#define IOUPOS__FOR IOUPOS__PRAGMA(omp for schedule(static))

/* Blocking: MR x NR registers; KC x NR sliver of B (16 KiB) stays in L1, the MC x KC block of A
   (144 KiB) in L2, the KC x NC panel of B (3 MiB) in L3. Fixed constants: results must not
   depend on anything but the inputs (see THREADS AND DETERMINISM).
   The sizes follow the GotoBLAS / BLIS model. 6 x 16 (AVX2) keeps 12 of the 16 ymm registers
   as accumulators, leaving room for the two B vectors and the broadcast A; 12 x 16 (AVX-512)
   uses 12 of the 32 zmm. The 16 KiB sliver is half a 32 KiB L1, so the A values streaming past
   do not evict it. MC = 144 is a multiple of both MRs. KC also decides where the sums over K
   are cut into blocks, one more reason it must not vary with the machine or thread count. */
#if IOUPOS__GEMM_AVX512
#define IOUPOS__GEMM_MR 12
#else
#define IOUPOS__GEMM_MR 6
#endif
#define IOUPOS__GEMM_NR 16
#define IOUPOS__GEMM_KC 256
#define IOUPOS__GEMM_MC 144  /* multiple of MR */
#define IOUPOS__GEMM_NC 3072 /* multiple of NR */
/* Below about a million flops the fork and join of an OpenMP team cost more than the work,
   and for the tiniest problems packing does. Both tests look at the sizes only, so a problem
   always takes the same path. */
#define IOUPOS__GEMM_TINY 4096 /* M * N * K at or below this: direct loop */
#define IOUPOS__GEMM_PAR_FLOPS 1000000.0 /* below this, one thread */

IOUPOS_DEF int ioupos_gemm_simd(void) { return IOUPOS__GEMM_AVX2; }
IOUPOS_DEF const char *ioupos_gemm_kernel(void) {
  return IOUPOS__GEMM_AVX512 ? "AVX-512" : IOUPOS__GEMM_AVX2 ? "AVX2+FMA" : "portable";
}

/* One problem, with its leading dimensions widened for pointer arithmetic (row * ld in
   ptrdiff_t cannot overflow for large matrices, as it could in int). */
typedef struct ioupos__gemm_args {
  int ta, tb, M, N, K;
  float alpha, beta;
  const float *A, *B;
  float *C;
  ptrdiff_t lda, ldb, ldc;
} ioupos__gemm_args;

/* -- micro-kernels: c[MR][NR] (ldc) = alpha * sum_p a(r, p) b[p][NR] + beta * c
   b is a packed sliver (kc steps of NR floats); a(r, p) = a[r * ai + p * ap] is read in place
   from op(A) (ai = lda, ap = 1 when A is not transposed; ai = 1, ap = lda when it is) or from a
   packed edge sliver (ai = 1, ap = MR); beta == 0: c is not read. The sum over p runs from 0 to
   kc-1 in order. Edge tiles go through the same kernel on padded copies, so an element's
   arithmetic does not depend on where its tile lies.
   b must be 64-byte aligned (aligned loads): the panel is, and each sliver is kc NR floats, a
   multiple of 64 bytes. Full slivers of A are not packed: the kernel reads A by scalar
   broadcasts, which need neither alignment nor contiguity, and this saves a copy of op(A) per
   column panel. The accumulators start at 0 and alpha and beta are applied once at the end, so
   each kc block is a separate partial sum that the driver adds to C in K order. */
#if IOUPOS__GEMM_AVX512
static void ioupos__gemm_ukernel(int kc, const float *a, ptrdiff_t ai, ptrdiff_t ap,
                                 const float *b, float *c, ptrdiff_t ldc, float alpha,
                                 float beta) {
  /* four row pointers with offsets 0, ai and 2 ai reach the 12 rows with few general registers */
  const float *a0 = a, *a3 = a + 3 * ai, *a6 = a + 6 * ai, *a9 = a + 9 * ai;
  const ptrdiff_t a2 = 2 * ai;
  __m512 c0 = _mm512_setzero_ps(), c1 = _mm512_setzero_ps(), c2 = _mm512_setzero_ps();
  __m512 c3 = _mm512_setzero_ps(), c4 = _mm512_setzero_ps(), c5 = _mm512_setzero_ps();
  __m512 c6 = _mm512_setzero_ps(), c7 = _mm512_setzero_ps(), c8 = _mm512_setzero_ps();
  __m512 c9 = _mm512_setzero_ps(), c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
  __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  int p;
  for (p = 0; p < kc; ++p) {
    __m512 bv = _mm512_load_ps(b);
    c0 = _mm512_fmadd_ps(_mm512_set1_ps(a0[0]), bv, c0);
    c1 = _mm512_fmadd_ps(_mm512_set1_ps(a0[ai]), bv, c1);
    c2 = _mm512_fmadd_ps(_mm512_set1_ps(a0[a2]), bv, c2);
    c3 = _mm512_fmadd_ps(_mm512_set1_ps(a3[0]), bv, c3);
    c4 = _mm512_fmadd_ps(_mm512_set1_ps(a3[ai]), bv, c4);
    c5 = _mm512_fmadd_ps(_mm512_set1_ps(a3[a2]), bv, c5);
    c6 = _mm512_fmadd_ps(_mm512_set1_ps(a6[0]), bv, c6);
    c7 = _mm512_fmadd_ps(_mm512_set1_ps(a6[ai]), bv, c7);
    c8 = _mm512_fmadd_ps(_mm512_set1_ps(a6[a2]), bv, c8);
    c9 = _mm512_fmadd_ps(_mm512_set1_ps(a9[0]), bv, c9);
    c10 = _mm512_fmadd_ps(_mm512_set1_ps(a9[ai]), bv, c10);
    c11 = _mm512_fmadd_ps(_mm512_set1_ps(a9[a2]), bv, c11);
    a0 += ap, a3 += ap, a6 += ap, a9 += ap;
    b += IOUPOS__GEMM_NR;
  }
  /* c = alpha * acc + beta * c, as the AVX2 kernel */
#define IOUPOS__GEMM_STORE_ROW(r, x)                                                            \
  do {                                                                                          \
    float *cr = c + (r) * ldc;                                                                  \
    if (beta == 0.0f)                                                                           \
      _mm512_storeu_ps(cr, _mm512_mul_ps(va, x));                                               \
    else                                                                                        \
      _mm512_storeu_ps(cr, _mm512_fmadd_ps(va, x, _mm512_mul_ps(vb, _mm512_loadu_ps(cr))));    \
  } while (0)
  IOUPOS__GEMM_STORE_ROW(0, c0);
  IOUPOS__GEMM_STORE_ROW(1, c1);
  IOUPOS__GEMM_STORE_ROW(2, c2);
  IOUPOS__GEMM_STORE_ROW(3, c3);
  IOUPOS__GEMM_STORE_ROW(4, c4);
  IOUPOS__GEMM_STORE_ROW(5, c5);
  IOUPOS__GEMM_STORE_ROW(6, c6);
  IOUPOS__GEMM_STORE_ROW(7, c7);
  IOUPOS__GEMM_STORE_ROW(8, c8);
  IOUPOS__GEMM_STORE_ROW(9, c9);
  IOUPOS__GEMM_STORE_ROW(10, c10);
  IOUPOS__GEMM_STORE_ROW(11, c11);
#undef IOUPOS__GEMM_STORE_ROW
}
#elif IOUPOS__GEMM_AVX2
static void ioupos__gemm_ukernel(int kc, const float *a, ptrdiff_t ai, ptrdiff_t ap,
                                 const float *b, float *c, ptrdiff_t ldc, float alpha,
                                 float beta) {
  const float *a0 = a, *a1 = a + ai, *a2 = a + 2 * ai, *a3 = a + 3 * ai, *a4 = a + 4 * ai,
              *a5 = a + 5 * ai;
  ptrdiff_t off = 0;
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  int p;
  for (p = 0; p < kc; ++p) {
    __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8), x;
    x = _mm256_broadcast_ss(a0 + off);
    c00 = _mm256_fmadd_ps(x, b0, c00);
    c01 = _mm256_fmadd_ps(x, b1, c01);
    x = _mm256_broadcast_ss(a1 + off);
    c10 = _mm256_fmadd_ps(x, b0, c10);
    c11 = _mm256_fmadd_ps(x, b1, c11);
    x = _mm256_broadcast_ss(a2 + off);
    c20 = _mm256_fmadd_ps(x, b0, c20);
    c21 = _mm256_fmadd_ps(x, b1, c21);
    x = _mm256_broadcast_ss(a3 + off);
    c30 = _mm256_fmadd_ps(x, b0, c30);
    c31 = _mm256_fmadd_ps(x, b1, c31);
    x = _mm256_broadcast_ss(a4 + off);
    c40 = _mm256_fmadd_ps(x, b0, c40);
    c41 = _mm256_fmadd_ps(x, b1, c41);
    x = _mm256_broadcast_ss(a5 + off);
    c50 = _mm256_fmadd_ps(x, b0, c50);
    c51 = _mm256_fmadd_ps(x, b1, c51);
    off += ap;
    b += IOUPOS__GEMM_NR;
  }
  /* c = alpha * acc + beta * c, one rounding for the product-sum (FMA) */
#define IOUPOS__GEMM_STORE_ROW(r, x0, x1)                                                     \
  do {                                                                                         \
    float *cr = c + (r) * ldc;                                                                 \
    if (beta == 0.0f) {                                                                        \
      _mm256_storeu_ps(cr, _mm256_mul_ps(va, x0));                                             \
      _mm256_storeu_ps(cr + 8, _mm256_mul_ps(va, x1));                                         \
    } else {                                                                                   \
      _mm256_storeu_ps(cr, _mm256_fmadd_ps(va, x0, _mm256_mul_ps(vb, _mm256_loadu_ps(cr))));   \
      _mm256_storeu_ps(cr + 8,                                                                 \
                       _mm256_fmadd_ps(va, x1, _mm256_mul_ps(vb, _mm256_loadu_ps(cr + 8)))); \
    }                                                                                          \
  } while (0)
  IOUPOS__GEMM_STORE_ROW(0, c00, c01);
  IOUPOS__GEMM_STORE_ROW(1, c10, c11);
  IOUPOS__GEMM_STORE_ROW(2, c20, c21);
  IOUPOS__GEMM_STORE_ROW(3, c30, c31);
  IOUPOS__GEMM_STORE_ROW(4, c40, c41);
  IOUPOS__GEMM_STORE_ROW(5, c50, c51);
#undef IOUPOS__GEMM_STORE_ROW
}
#else
/* Portable kernel: plain C the compiler can vectorise (SSE2 at -O2 on x86-64). */
static void ioupos__gemm_ukernel(int kc, const float *a, ptrdiff_t ai, ptrdiff_t ap,
                                 const float *b, float *c, ptrdiff_t ldc, float alpha,
                                 float beta) {
  float acc[IOUPOS__GEMM_MR][IOUPOS__GEMM_NR];
  int p, i, j;
  for (i = 0; i < IOUPOS__GEMM_MR; ++i)
    for (j = 0; j < IOUPOS__GEMM_NR; ++j) acc[i][j] = 0.0f;
  for (p = 0; p < kc; ++p) {
    for (i = 0; i < IOUPOS__GEMM_MR; ++i) {
      float x = a[i * ai];
      for (j = 0; j < IOUPOS__GEMM_NR; ++j) acc[i][j] += x * b[j];
    }
    a += ap;
    b += IOUPOS__GEMM_NR;
  }
  for (i = 0; i < IOUPOS__GEMM_MR; ++i) {
    float *cr = c + i * ldc;
    if (beta == 0.0f)
      for (j = 0; j < IOUPOS__GEMM_NR; ++j) cr[j] = alpha * acc[i][j];
    else
      for (j = 0; j < IOUPOS__GEMM_NR; ++j) {
        float t = alpha * acc[i][j], u = beta * cr[j];
        cr[j] = t + u;
      }
  }
}
#endif

/* -- packing -- */

/* dst[s][kc][MR] = op(A)[i0 + s*MR + r][p0 + k], rows past i0 + mc zero.
   Used only for the last, partial MR-row sliver of a row block (full slivers are read in
   place), so mc < MR in practice; the zero rows let the full kernel run, and the driver
   discards their results. Per k, MR consecutive floats: the kernel's packed-edge strides
   (ai = 1, ap = MR). */
static void ioupos__gemm_pack_a(const ioupos__gemm_args *g, int i0, int mc, int p0, int kc,
                                float *dst) {
  int s, r, k, ns = (mc + IOUPOS__GEMM_MR - 1) / IOUPOS__GEMM_MR;
  for (s = 0; s < ns; ++s) {
    float *d = dst + (size_t)s * kc * IOUPOS__GEMM_MR;
    int rows = mc - s * IOUPOS__GEMM_MR, ib = i0 + s * IOUPOS__GEMM_MR;
    if (rows > IOUPOS__GEMM_MR) rows = IOUPOS__GEMM_MR;
    if (!g->ta) { /* row i of op(A) is contiguous */
      for (r = 0; r < rows; ++r) {
        const float *src = g->A + (ptrdiff_t)(ib + r) * g->lda + p0;
        for (k = 0; k < kc; ++k) d[k * IOUPOS__GEMM_MR + r] = src[k];
      }
      for (; r < IOUPOS__GEMM_MR; ++r)
        for (k = 0; k < kc; ++k) d[k * IOUPOS__GEMM_MR + r] = 0.0f;
    } else { /* column k of op(A) is contiguous */
      for (k = 0; k < kc; ++k) {
        const float *src = g->A + (ptrdiff_t)(p0 + k) * g->lda + ib;
        float *dk = d + k * IOUPOS__GEMM_MR;
        for (r = 0; r < rows; ++r) dk[r] = src[r];
        for (; r < IOUPOS__GEMM_MR; ++r) dk[r] = 0.0f;
      }
    }
  }
}

/* dst[s][kc][NR] = op(B)[p0 + k][j0 + s*NR + j] for slivers s in [s0, s1), columns past j0 + nc
   zero. Only slivers [s0, s1): the threads pack disjoint parts of the one shared panel between
   two barriers. k-major NR-wide slivers give the kernel NR contiguous, aligned floats per
   step; the zero columns past nc let edge tiles run the full kernel. */
static void ioupos__gemm_pack_b(const ioupos__gemm_args *g, int j0, int nc, int p0, int kc, int s0,
                                int s1, float *dst) {
  int s, j, k;
  for (s = s0; s < s1; ++s) {
    float *d = dst + (size_t)s * kc * IOUPOS__GEMM_NR;
    int cols = nc - s * IOUPOS__GEMM_NR, jb = j0 + s * IOUPOS__GEMM_NR;
    if (cols > IOUPOS__GEMM_NR) cols = IOUPOS__GEMM_NR;
    if (!g->tb) { /* row k of op(B) is contiguous */
      for (k = 0; k < kc; ++k) {
        const float *src = g->B + (ptrdiff_t)(p0 + k) * g->ldb + jb;
        float *dk = d + k * IOUPOS__GEMM_NR;
        if (cols == IOUPOS__GEMM_NR) {
          memcpy(dk, src, IOUPOS__GEMM_NR * sizeof(float));
        } else {
          for (j = 0; j < cols; ++j) dk[j] = src[j];
          for (; j < IOUPOS__GEMM_NR; ++j) dk[j] = 0.0f;
        }
      }
    } else { /* column j of op(B) is contiguous */
      for (j = 0; j < cols; ++j) {
        const float *src = g->B + (ptrdiff_t)(jb + j) * g->ldb + p0;
        for (k = 0; k < kc; ++k) d[k * IOUPOS__GEMM_NR + j] = src[k];
      }
      for (; j < IOUPOS__GEMM_NR; ++j)
        for (k = 0; k < kc; ++k) d[k * IOUPOS__GEMM_NR + j] = 0.0f;
    }
  }
}

/* -- the blocked driver -- */

static size_t ioupos__gemm_bsize(int N, int K) { /* floats of the packed op(B) panel */
  int nc = N < IOUPOS__GEMM_NC ? N : IOUPOS__GEMM_NC, kc = K < IOUPOS__GEMM_KC ? K : IOUPOS__GEMM_KC;
  return (size_t)kc * (size_t)((nc + IOUPOS__GEMM_NR - 1) / IOUPOS__GEMM_NR * IOUPOS__GEMM_NR);
}
static size_t ioupos__gemm_asize(int M, int K) { /* floats of one packed op(A) block */
  int mc = M < IOUPOS__GEMM_MC ? M : IOUPOS__GEMM_MC, kc = K < IOUPOS__GEMM_KC ? K : IOUPOS__GEMM_KC;
  return (size_t)kc * (size_t)((mc + IOUPOS__GEMM_MR - 1) / IOUPOS__GEMM_MR * IOUPOS__GEMM_MR);
}

/* C = alpha op(A) op(B) + beta C for K >= 1, alpha != 0, run by thread tid of nth (all nth call
   it together; nth == 1 needs no parallel region). bufb is shared by the nth threads, bufa is
   this thread's own. Threads split the (row block, column run) work items of C; all K blocks
   of an element are done by one thread, in order.
   BLIS's loops jc -> pc -> (pack B) -> ic -> jr -> ir, with ic and jr fused into work items
   (a row block and a run of slivers). Determinism: element (i, j) gets its K blocks
   pc = 0, KC, 2 KC, ... in order, each one kernel call that sums p in order and adds the C
   value left by the previous block (the caller's beta on the first block only). The blocks
   depend on K alone; the thread count only decides which thread runs an item and how the
   columns of a row block are grouped into items, never the arithmetic of an element. Every
   thread passes the same barriers (the jc and pc loops are the same for all, even for a
   thread without items), as OpenMP requires. */
static void ioupos__gemm_blocked(const ioupos__gemm_args *g, float *bufb, float *bufa, int tid,
                                 int nth) {
  const int MR = IOUPOS__GEMM_MR, NR = IOUPOS__GEMM_NR;
  int jc, pc, nm = (g->M + IOUPOS__GEMM_MC - 1) / IOUPOS__GEMM_MC;
  float tile[IOUPOS__GEMM_MR * IOUPOS__GEMM_NR];
  for (jc = 0; jc < g->N; jc += IOUPOS__GEMM_NC) {
    int nc = g->N - jc < IOUPOS__GEMM_NC ? g->N - jc : IOUPOS__GEMM_NC;
    int ns = (nc + NR - 1) / NR;
    /* column runs per row block: enough work items to keep every thread busy */
    int nn = nm >= 4 * nth ? 1 : (4 * nth + nm - 1) / nm;
    int items, it, it0, it1, packed_ic;
    if (nn > ns) nn = ns;
    items = nm * nn;
    for (pc = 0; pc < g->K; pc += IOUPOS__GEMM_KC) {
      int kc = g->K - pc < IOUPOS__GEMM_KC ? g->K - pc : IOUPOS__GEMM_KC;
      /* beta on the first K block only; later blocks add to what is there */
      float beta = pc == 0 ? g->beta : 1.0f;
      IOUPOS__OMP_BARRIER(nth); /* everyone is done with the previous panel */
      ioupos__gemm_pack_b(g, jc, nc, pc, kc, ns * tid / nth, ns * (tid + 1) / nth, bufb);
      IOUPOS__OMP_BARRIER(nth);
      /* contiguous ranges of items, so a thread mostly stays in one row block and packs the edge
         sliver of A once per row block and K block (packed_ic) */
      it0 = items * tid / nth;
      it1 = items * (tid + 1) / nth;
      packed_ic = -1;
      for (it = it0; it < it1; ++it) {
        int ib = it / nn, jn = it % nn;
        int ic = ib * IOUPOS__GEMM_MC;
        int mc = g->M - ic < IOUPOS__GEMM_MC ? g->M - ic : IOUPOS__GEMM_MC;
        int s0 = ns * jn / nn, s1 = ns * (jn + 1) / nn, s, ir;
        /* full MR-row slivers of op(A) are read in place; a last partial one is packed
           (zero-padded) */
        if (packed_ic != ic) {
          int full = mc / MR * MR;
          if (full < mc) ioupos__gemm_pack_a(g, ic + full, mc - full, pc, kc, bufa);
          packed_ic = ic;
        }
        for (s = s0; s < s1; ++s) {
          int j = jc + s * NR, nr = g->N - j < NR ? g->N - j : NR;
          const float *bp = bufb + (size_t)s * kc * NR;
          for (ir = 0; ir < mc; ir += MR) {
            int mr = mc - ir < MR ? mc - ir : MR;
            const float *ap = bufa;
            ptrdiff_t sa_i = 1, sa_p = MR;
            float *c = g->C + (ptrdiff_t)(ic + ir) * g->ldc + j;
            if (mr == MR) {
              if (!g->ta)
                ap = g->A + (ptrdiff_t)(ic + ir) * g->lda + pc, sa_i = g->lda, sa_p = 1;
              else
                ap = g->A + (ptrdiff_t)pc * g->lda + (ic + ir), sa_i = 1, sa_p = g->lda;
            }
            if (mr == MR && nr == NR) {
              ioupos__gemm_ukernel(kc, ap, sa_i, sa_p, bp, c, g->ldc, g->alpha, beta);
            } else { /* edge: same kernel on a padded copy */
              int r, q;
              /* C is read only when beta != 0: with beta 0, NaN or Inf in C must not
                 propagate (BLAS) */
              if (beta != 0.0f)
                for (r = 0; r < mr; ++r)
                  for (q = 0; q < nr; ++q) tile[r * NR + q] = c[r * g->ldc + q];
              ioupos__gemm_ukernel(kc, ap, sa_i, sa_p, bp, tile, NR, g->alpha, beta);
              for (r = 0; r < mr; ++r)
                for (q = 0; q < nr; ++q) c[r * g->ldc + q] = tile[r * NR + q];
            }
          }
        }
      }
    }
  }
}

/* C = beta * C (alpha == 0 or K == 0); beta == 0 writes zeros without reading. As BLAS: A and
   B are not read (with K == 0 they may be NULL), and beta == 1 leaves C untouched. */
static void ioupos__gemm_scale(const ioupos__gemm_args *g) {
  int i, j;
  for (i = 0; i < g->M; ++i) {
    float *c = g->C + (ptrdiff_t)i * g->ldc;
    if (g->beta == 0.0f)
      for (j = 0; j < g->N; ++j) c[j] = 0.0f;
    else if (g->beta != 1.0f)
      for (j = 0; j < g->N; ++j) c[j] *= g->beta;
  }
}

/* Tiny problems: one pass, float sum over k in order, no packing. Chosen by M * N * K alone,
   so a problem always takes the same path whatever the thread count; the sum runs in the
   kernel's order but not necessarily with its fused multiply-adds, so results just under the
   limit may differ in the last bit from what the blocked path would give. */
static void ioupos__gemm_tiny(const ioupos__gemm_args *g) {
  int i, j, k;
  for (i = 0; i < g->M; ++i)
    for (j = 0; j < g->N; ++j) {
      float s = 0.0f, *c = g->C + (ptrdiff_t)i * g->ldc + j;
      for (k = 0; k < g->K; ++k) {
        float a = g->ta ? g->A[(ptrdiff_t)k * g->lda + i] : g->A[(ptrdiff_t)i * g->lda + k];
        float b = g->tb ? g->B[(ptrdiff_t)j * g->ldb + k] : g->B[(ptrdiff_t)k * g->ldb + j];
        s += a * b;
      }
      if (g->beta == 0.0f) *c = g->alpha * s;
      else {
        float t = g->alpha * s, u = g->beta * *c;
        *c = t + u;
      }
    }
}

/* One item on the calling thread (tid 0 of 1) with the given buffers. The batched GEMM's
   per-item path: the same choice of path and the same blocked arithmetic as ioupos_gemm,
   whose result does not depend on its threads, so an item equals ioupos_gemm on it. */
static void ioupos__gemm_serial(const ioupos__gemm_args *g, float *bufb, float *bufa) {
  if (g->M == 0 || g->N == 0) return;
  if (g->alpha == 0.0f || g->K == 0) ioupos__gemm_scale(g);
  else if ((double)g->M * g->N * g->K <= IOUPOS__GEMM_TINY) ioupos__gemm_tiny(g);
  else ioupos__gemm_blocked(g, bufb, bufa, 0, 1);
}

/* The BLAS argument rules (as its xerbla checks them), before anything is read or written, so
   C is untouched on failure. A pointer is needed only when it would be used: C when M, N > 0,
   A and B also when K > 0. */
static int ioupos__gemm_check(const char *fn, int ta, int tb, int M, int N, int K,
                              const float *A, int lda, const float *B, int ldb, const float *C,
                              int ldc) {
  int need_a = ta ? M : K, need_b = tb ? K : N;
  if ((ta != 0 && ta != 1) || (tb != 0 && tb != 1))
    return ioupos__fail(IOUPOS_EINVAL, "%s: transa %d and transb %d must be 0 or 1", fn, ta, tb);
  if (M < 0 || N < 0 || K < 0)
    return ioupos__fail(IOUPOS_EINVAL, "%s: sizes M %d, N %d, K %d must not be negative", fn, M,
                        N, K);
  if (lda < (need_a > 1 ? need_a : 1) || ldb < (need_b > 1 ? need_b : 1) ||
      ldc < (N > 1 ? N : 1))
    return ioupos__fail(IOUPOS_EINVAL, "%s: leading dimensions lda %d, ldb %d, ldc %d must be at "
                        "least %d, %d, %d (transa %d, transb %d, M %d, N %d, K %d)", fn, lda, ldb,
                        ldc, need_a > 1 ? need_a : 1, need_b > 1 ? need_b : 1, N > 1 ? N : 1, ta,
                        tb, M, N, K);
  if (M > 0 && N > 0 && (!C || (K > 0 && (!A || !B))))
    return ioupos__fail(IOUPOS_EINVAL, "%s: NULL matrix (A %s, B %s, C %s) for M %d, N %d, K %d",
                        fn, A ? "set" : "NULL", B ? "set" : "NULL", C ? "set" : "NULL", M, N, K);
  return IOUPOS_OK;
}

/* 64-byte aligned float pointer into a raw IOUPOS_MALLOC block (over-allocated by 64 bytes). */
static float *ioupos__gemm_align(void *raw) {
  uintptr_t p = (uintptr_t)raw;
  return (float *)((p + 63) & ~(uintptr_t)63);
}

/* Threads for a call: 1 inside an enclosing parallel region (the caller's loop is already
   parallel, and nesting would oversubscribe the cores) and below IOUPOS__GEMM_PAR_FLOPS; else
   omp_get_max_threads(), but never more than the work items. */
static int ioupos__gemm_threads(double flops, int items) {
  int nt = 1;
#ifdef _OPENMP
  if (!omp_in_parallel()) nt = omp_get_max_threads();
#endif
  if (flops < IOUPOS__GEMM_PAR_FLOPS) nt = 1;
  if (nt > items) nt = items;
  return nt < 1 ? 1 : nt;
}

/* C[M][N] = alpha * op(A)[M][K] . op(B)[K][N] + beta * C
   One allocation: the shared B panel, then one A edge buffer per thread, each rounded up to a
   multiple of 16 floats so that every one starts 64-byte aligned. num_threads(nt) is only an
   upper bound, OpenMP may give fewer: the region takes the team's real size as nth, and the
   buffers are sized for nt >= nth. */
IOUPOS_DEF int ioupos_gemm(int transa, int transb, int M, int N, int K, float alpha,
                           const float *A, int lda, const float *B, int ldb, float beta, float *C,
                           int ldc) {
  ioupos__gemm_args g;
  size_t asz, bsz, total;
  void *raw;
  float *bufb, *bufa;
  int nt, st = ioupos__gemm_check("ioupos_gemm", transa, transb, M, N, K, A, lda, B, ldb, C, ldc);
  if (st) return st;
  g.ta = transa, g.tb = transb, g.M = M, g.N = N, g.K = K, g.alpha = alpha, g.beta = beta;
  g.A = A, g.B = B, g.C = C, g.lda = lda, g.ldb = ldb, g.ldc = ldc;
  if (M == 0 || N == 0) return IOUPOS_OK;
  if (alpha == 0.0f || K == 0 || (double)M * N * K <= IOUPOS__GEMM_TINY) {
    ioupos__gemm_serial(&g, NULL, NULL);
    return IOUPOS_OK;
  }
  /* at least one work item per thread: row blocks times NR-wide slivers */
  nt = ioupos__gemm_threads(2.0 * M * N * K,
                            ((M + IOUPOS__GEMM_MC - 1) / IOUPOS__GEMM_MC) *
                                ((N + IOUPOS__GEMM_NR - 1) / IOUPOS__GEMM_NR));
  asz = (ioupos__gemm_asize(M, K) + 16) & ~(size_t)15; /* keep each block 64-byte aligned */
  bsz = (ioupos__gemm_bsize(N, K) + 16) & ~(size_t)15;
  total = (bsz + (size_t)nt * asz) * sizeof(float) + 64;
  raw = IOUPOS_MALLOC(total);
  if (!raw)
    return ioupos__fail(IOUPOS_ENOMEM, "ioupos_gemm: out of memory for %lu bytes of packing "
                        "buffers (M %d, N %d, K %d, %d threads)", (unsigned long)total, M, N, K,
                        nt);
  bufb = ioupos__gemm_align(raw);
  bufa = bufb + bsz;
  if (nt == 1) {
    ioupos__gemm_blocked(&g, bufb, bufa, 0, 1);
  } else {
    IOUPOS__PRAGMA(omp parallel num_threads(nt))
    {
      int tid = IOUPOS__OMP_TID(), nth = IOUPOS__OMP_NTH();
      ioupos__gemm_blocked(&g, bufb, bufa + (size_t)tid * asz, tid, nth);
    }
  }
  IOUPOS_FREE(raw);
  return IOUPOS_OK;
}

/* for b < batch: C_b[M][N] = alpha * op(A_b)[M][K] . op(B_b)[K][N] + beta * C_b
   Two schedules with the same per-item arithmetic (ioupos_gemm's, which does not depend on
   threads), so they agree bit for bit: few large items (fewer than two per thread, each at
   least 4 Mflop) run one after another, each on all threads; otherwise each item runs whole
   on one thread with its own buffers and no barriers, the threads taking contiguous ranges of
   items. Items run at once write disjoint C items (strideC is checked); A and B are only
   read, so a stride of 0 may share them. */
IOUPOS_DEF int ioupos_gemm_batched_strided(int transa, int transb, int M, int N, int K,
                                           float alpha, const float *A, int lda,
                                           long long strideA, const float *B, int ldb,
                                           long long strideB, float beta, float *C, int ldc,
                                           long long strideC, int batch) {
  static const char fn[] = "ioupos_gemm_batched_strided";
  ioupos__gemm_args g;
  size_t asz, bsz, total;
  void *raw;
  float *buf;
  double flops;
  int nt, st = ioupos__gemm_check(fn, transa, transb, M, N, K, A, lda, B, ldb, C, ldc);
  if (st) return st;
  if (batch < 0 || strideA < 0 || strideB < 0 || strideC < 0)
    return ioupos__fail(IOUPOS_EINVAL, "%s: batch %d and strides %lld, %lld, %lld must not be "
                        "negative", fn, batch, strideA, strideB, strideC);
  if (batch == 0 || M == 0 || N == 0) return IOUPOS_OK;
  if (batch > 1 && strideC < (long long)(M - 1) * ldc + N)
    return ioupos__fail(IOUPOS_EINVAL, "%s: strideC %lld makes the %d x %d (ldc %d) C items "
                        "overlap; it must be at least %lld", fn, strideC, M, N, ldc,
                        (long long)(M - 1) * ldc + N);
  flops = 2.0 * M * N * K;
  /* few large items: one after another, each on all threads */
  if (batch < 2 * (ioupos__gemm_threads(1e300, 1 << 30)) && flops >= 4 * IOUPOS__GEMM_PAR_FLOPS) {
    int b;
    for (b = 0; b < batch; ++b) {
      st = ioupos_gemm(transa, transb, M, N, K, alpha, A + (ptrdiff_t)(b * strideA), lda,
                       B + (ptrdiff_t)(b * strideB), ldb, beta, C + (ptrdiff_t)(b * strideC), ldc);
      if (st) return ioupos__fail(st, "%s: item %d: %s", fn, b, ioupos_failure_reason());
    }
    return IOUPOS_OK;
  }
  /* many items: each item on one thread, with that thread's own buffers */
  nt = ioupos__gemm_threads(flops * batch, batch);
  asz = (ioupos__gemm_asize(M, K) + 16) & ~(size_t)15;
  bsz = (ioupos__gemm_bsize(N, K) + 16) & ~(size_t)15;
  total = (size_t)nt * (asz + bsz) * sizeof(float) + 64;
  raw = IOUPOS_MALLOC(total);
  if (!raw)
    return ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory for %lu bytes of packing buffers (M %d, "
                        "N %d, K %d, %d threads)", fn, (unsigned long)total, M, N, K, nt);
  buf = ioupos__gemm_align(raw);
  g.ta = transa, g.tb = transb, g.M = M, g.N = N, g.K = K, g.alpha = alpha, g.beta = beta;
  g.lda = lda, g.ldb = ldb, g.ldc = ldc;
  g.A = A, g.B = B, g.C = C;
  if (nt == 1) {
    int b;
    for (b = 0; b < batch; ++b) {
      g.A = A + (ptrdiff_t)(b * strideA), g.B = B + (ptrdiff_t)(b * strideB);
      g.C = C + (ptrdiff_t)(b * strideC);
      ioupos__gemm_serial(&g, buf, buf + bsz);
    }
  } else {
    IOUPOS__PRAGMA(omp parallel num_threads(nt))
    {
      int tid = IOUPOS__OMP_TID(), nth = IOUPOS__OMP_NTH(), b;
      ioupos__gemm_args gt = g;
      float *mine = buf + (size_t)tid * (asz + bsz);
      for (b = batch * tid / nth; b < batch * (tid + 1) / nth; ++b) {
        gt.A = A + (ptrdiff_t)(b * strideA), gt.B = B + (ptrdiff_t)(b * strideB);
        gt.C = C + (ptrdiff_t)(b * strideC);
        ioupos__gemm_serial(&gt, mine, mine + bsz);
      }
    }
  }
  IOUPOS_FREE(raw);
  return IOUPOS_OK;
}


/* ---- 11. Layers, forward beside backward ------------------------------------------------------- */


#ifdef __cplusplus
extern "C" {
#endif

/* HOW SECTIONS 11 AND 12 ARE LAID OUT
   Every layer is first written as its plain reference: scalar loops on raw float pointers, a
   shape comment on top, one screen each (llm.c's layernorm_forward is the model). A layer that
   also has a fast path (SIMD lanes, rows or chunks on the OpenMP threads, sums over rows taken
   per chunk in parallel) has its reference as the static ioupos__<layer>_ref and its fast path
   as ioupos__<layer>_fast, which sits with the others under "fast paths" at the end of the
   section; the public function picks one in one line, IOUPOS__IMPL(ioupos__<layer>)(...): the
   fast path in builds with AVX2+FMA or OpenMP, the reference otherwise (and in every build when
   IOUPOS_LAYERS_REF is defined). A layer without a fast path is its own reference (an
   IOUPOS__PFOR over independent iterations changes no result); patch embedding, patch merging
   and the MLP are compositions of the layers here. The linear layer's fast path is the GEMM
   (section 10) in every build, its reference is for the tests. The layer norm and the bias sums
   add in the same order in both versions (the references keep the fast paths' lanes and row
   chunks, so no result depends on which one a build runs); GELU's and window attention's SIMD
   kernels round differently (tests/test_threads.c, part 6, has the tolerances). The references
   are private (static), not API: the tests include the implementation and call them directly,
   and IOUPOS_LAYERS_REF runs a whole program on them. */
#if !defined(IOUPOS_LAYERS_REF) && (IOUPOS__GEMM_AVX2 || defined(_OPENMP))
#define IOUPOS__LAYERS_FAST 1
#define IOUPOS__IMPL(f) f##_fast
#else
#define IOUPOS__LAYERS_FAST 0
#define IOUPOS__IMPL(f) f##_ref
#endif
/* static, and no warning where only the tests call it (the fast builds); with
   IOUPOS_REFERENCE_API (the tests' build) linked as declared in section 11's API */
#if defined(IOUPOS_REFERENCE_API)
#define IOUPOS__REF IOUPOS_DEF
#elif defined(__GNUC__) || defined(__clang__)
#define IOUPOS__REF static __attribute__((unused))
#else
#define IOUPOS__REF static
#endif

#if IOUPOS__LAYERS_FAST /* defined under "fast paths" at the end of the section */
static void ioupos__colsum_add_fast(float *db, const float *d, size_t T, int OC);
static void ioupos__layernorm_forward_fast(float *out, float *mean, float *rstd, const float *inp,
                                           const float *weight, const float *bias, int N, int C,
                                           float eps);
static void ioupos__layernorm_backward_fast(float *dinp, float *dweight, float *dbias,
                                            const float *dout, const float *inp,
                                            const float *weight, const float *mean,
                                            const float *rstd, int N, int C);
static void ioupos__gelu_forward_fast(float *out, const float *inp, size_t n);
static void ioupos__gelu_backward_fast(float *dinp, const float *inp, const float *dout, size_t n);
static void ioupos__gelu_backward_inplace_fast(float *dh, float *act, const float *x, size_t n);
#endif

/* -- linear -- */

/* Rows per chunk of the sums over rows (linear bias, layer norm weight and bias): a constant,
   never the thread count, so that the fast paths can sum the chunks on any number of threads
   and still add them in one order. */
#define IOUPOS__ROW_CHUNK 256

/* db[OC] += sum over t of d[T][OC]: in double, the rows of each chunk of IOUPOS__ROW_CHUNK in
   order, then the chunks' sums in order (the fast path's order; T >= 1).
   Why double: a bias gradient sums one row per token of the batch (tens of thousands at Swin's
   first stage), where a float running sum would lose the small rows' digits; why fixed chunks:
   the chunk size does not depend on the thread count, so neither do the bits. */
IOUPOS__REF void ioupos__colsum_add_ref(float *db, const float *d, size_t T, int OC) {
  size_t t0, t;
  int o;
  for (o = 0; o < OC; ++o) {
    double tot = 0.0;
    for (t0 = 0; t0 < T; t0 += IOUPOS__ROW_CHUNK) {
      double s = 0.0;
      for (t = t0; t < T && t < t0 + IOUPOS__ROW_CHUNK; ++t) s += d[t * OC + o];
      tot += s;
    }
    db[o] += (float)tot;
  }
}

/* db[OC] += column sums of d[T][OC] (ACCUMULATES), by the fast path or the reference: the same
   bits either way. */
static void ioupos__colsum_add(float *db, const float *d, size_t T, int OC) {
  IOUPOS__IMPL(ioupos__colsum_add)(db, d, T, OC);
}

/* out[N][OC] = inp[N][C] weight[OC][C]^T + bias[OC] (bias may be NULL); each output one dot
   product in double, rounded once (what the GEMM's float sums are measured against).
   torch.nn.Linear's layout: weight row o is output o's filter over the C inputs, so both
   operands of each dot product are contiguous. Overwrites out. */
IOUPOS__REF void ioupos__linear_forward_ref(float *out, const float *inp, const float *weight,
                                            const float *bias, int N, int C, int OC) {
  int n, o, c;
  for (n = 0; n < N; ++n)
    for (o = 0; o < OC; ++o) {
      const float *x = inp + (size_t)n * C, *w = weight + (size_t)o * C;
      double s = bias ? bias[o] : 0.0;
      for (c = 0; c < C; ++c) s += (double)x[c] * w[c];
      out[(size_t)n * OC + o] = (float)s;
    }
}

/* dinp[N][C] += dout[N][OC] weight; dweight[OC][C] += dout^T inp; dbias[OC] += sum_n dout.
   ACCUMULATES (each may be NULL). Dot products in double; the bias as ioupos__colsum_add_ref.
   Why: y[n][o] = sum_c x[n][c] W[o][c] + b[o] is linear in each operand, so dy[n][o]/dx[n][c] =
   W[o][c], dy[n][o]/dW[o][c] = x[n][c] and dy[n][o]/db[o] = 1; the chain rule sums these over
   the outputs (for dinp) or over the rows (for dweight, dbias). */
IOUPOS__REF void ioupos__linear_backward_ref(float *dinp, float *dweight, float *dbias,
                                             const float *dout, const float *inp,
                                             const float *weight, int N, int C, int OC) {
  int n, o, c;
  for (n = 0; dinp && n < N; ++n)
    for (c = 0; c < C; ++c) {
      double s = 0.0;
      for (o = 0; o < OC; ++o) s += (double)dout[(size_t)n * OC + o] * weight[(size_t)o * C + c];
      dinp[(size_t)n * C + c] += (float)s;
    }
  for (o = 0; dweight && o < OC; ++o)
    for (c = 0; c < C; ++c) {
      double s = 0.0;
      for (n = 0; n < N; ++n) s += (double)dout[(size_t)n * OC + o] * inp[(size_t)n * C + c];
      dweight[(size_t)o * C + c] += (float)s;
    }
  if (dbias && N > 0) ioupos__colsum_add_ref(dbias, dout, (size_t)N, OC);
}

/* The public linear layer is the GEMM (section 10: its own SIMD / portable kernels and threads)
   in every build; the references above are for the tests.
   Overwrites out: with a bias, each row of out is first set to the bias and the GEMM adds
   inp weight^T on top (beta 1), the shape of torch's addmm(bias, x, W^T); without one, beta 0.
   Returns 0 or the GEMM's IOUPOS_EINVAL (bad sizes, NULL operand) / IOUPOS_ENOMEM (its packing
   buffers). */
IOUPOS_DEF int ioupos_linear_forward(float *out, const float *inp, const float *weight,
                                     const float *bias, int N, int C, int OC) {
  int st, n;
  if (bias) {
    IOUPOS__PFOR((double)N * OC)
    for (n = 0; n < N; ++n) memcpy(out + (size_t)n * OC, bias, sizeof(float) * (size_t)OC);
  }
  st = ioupos_gemm(0, 1, N, OC, C, 1.0f, inp, C > 0 ? C : 1, weight, C > 0 ? C : 1,
                   bias ? 1.0f : 0.0f, out, OC > 0 ? OC : 1);
  return st;
}

/* The three products of ioupos__linear_backward_ref as two GEMMs with beta 1 (so dinp and
   dweight ACCUMULATE: a weight used more than once before the optimiser step gathers every
   use's gradient) and the bias's column sums. Returns 0 or the GEMM's status; on an error the
   gradients before it (dinp before dweight before dbias) may already have been added. */
IOUPOS_DEF int ioupos_linear_backward(float *dinp, float *dweight, float *dbias,
                                      const float *dout, const float *inp, const float *weight,
                                      int N, int C, int OC) {
  int st;
  int ldc = C > 0 ? C : 1, ldo = OC > 0 ? OC : 1;
  if (dinp) {
    st = ioupos_gemm(0, 0, N, C, OC, 1.0f, dout, ldo, weight, ldc, 1.0f, dinp, ldc);
    if (st) return st;
  }
  if (dweight) {
    st = ioupos_gemm(1, 0, OC, C, N, 1.0f, dout, ldo, inp, ldc, 1.0f, dweight, ldc);
    if (st) return st;
  }
  if (dbias && N > 0) ioupos__colsum_add(dbias, dout, (size_t)N, OC);
  return IOUPOS_OK;
}

/* -- layer norm -- */

/* sum of x[0..n) in double: 8 running sums (element c into sum c mod 8) added pairwise in a
   fixed order, then the last n mod 8 elements in order; that is the fast path's vector lanes,
   so both give the same bits. (Eight: two AVX2 registers of 4 doubles, and eight independent
   chains keep the adder busy.) */
IOUPOS__REF double ioupos__dsum(const float *x, int n) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s;
  int c = 0, l;
  for (; c + 8 <= n; c += 8)
    for (l = 0; l < 8; ++l) a[l] += x[c + l];
  s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
  for (; c < n; ++c) s += x[c];
  return s;
}

/* sum of (x - m)^2, in the order of ioupos__dsum */
IOUPOS__REF double ioupos__dsumsq(const float *x, double m, int n) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s;
  int c = 0, l;
  for (; c + 8 <= n; c += 8)
    for (l = 0; l < 8; ++l) {
      double d = x[c + l] - m;
      a[l] += d * d;
    }
  s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
  for (; c < n; ++c) s += (x[c] - m) * (x[c] - m);
  return s;
}

/* out[N][C] = (inp - mean) * rstd * weight[C] + bias[C] over each row of inp[N][C] (weight /
   bias may be NULL); saves mean[N] and rstd[N] = 1 / sqrt(var + eps), var biased, for backward.
   In double, rounded once.
   torch.nn.LayerNorm's definition: eps is added to the biased variance (1 / C) inside the square
   root, not to the standard deviation as some hand-written layer norms do (the two differ for
   rows whose variance is near eps). The variance is taken in two passes (mean first, then the
   squared deviations) rather than as E[x^2] - E[x]^2, which cancels when |mean| is large
   against the spread. mean and rstd are kept in float: backward recomputes xh
   from them instead of storing it (N C floats saved per layer norm). */
IOUPOS__REF void ioupos__layernorm_forward_ref(float *out, float *mean, float *rstd,
                                               const float *inp, const float *weight,
                                               const float *bias, int N, int C, float eps) {
  int n, c;
  for (n = 0; n < N; ++n) {
    const float *x = inp + (size_t)n * C;
    float *y = out + (size_t)n * C;
    double m = ioupos__dsum(x, C) / C;
    double r = 1.0 / sqrt(ioupos__dsumsq(x, m, C) / C + eps);
    for (c = 0; c < C; ++c) {
      double h = (x[c] - m) * r;
      if (weight) h *= weight[c];
      if (bias) h += bias[c];
      y[c] = (float)h;
    }
    mean[n] = (float)m;
    rstd[n] = (float)r;
  }
}

IOUPOS_DEF void ioupos_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                         const float *weight, const float *bias, int N, int C,
                                         float eps) {
  IOUPOS__IMPL(ioupos__layernorm_forward)(out, mean, rstd, inp, weight, bias, N, C, eps);
}

/* dinp[N][C] += r (dxh - mean_c(dxh) - xh mean_c(dxh xh)), xh = (inp - mean) r, dxh = dout *
   weight (dout when weight is NULL), r = rstd; dweight[C] += sum_n dout xh; dbias[C] += sum_n
   dout. ACCUMULATES (each may be NULL). The row sums in 4 running sums (element c into sum
   c mod 4), the column sums per chunk of IOUPOS__ROW_CHUNK rows, then over the chunks: the
   fast path's lanes and chunks, so both give the same bits.
   Why: with xh = (x - mu) r and r = (var + eps)^-1/2, dmu/dx_c = 1/C and dvar/dx_c =
   2 (x_c - mu) / C give dxh/dx = r (I - 1 1^T / C - xh xh^T / C); applied to dxh this is the
   formula above. The two means remove from dxh its component along the all-ones vector (a shift
   of the row changes nothing) and along xh (nor does a scaling of it, up to eps). dweight and
   dbias are the plain affine gradients, xh and 1 weighted by dout. */
IOUPOS__REF void ioupos__layernorm_backward_ref(float *dinp, float *dweight, float *dbias,
                                                const float *dout, const float *inp,
                                                const float *weight, const float *mean,
                                                const float *rstd, int N, int C) {
  int n, n0, c;
  if (N < 1 || C < 1) return;
  for (n = 0; dinp && n < N; ++n) {
    const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
    float *dx = dinp + (size_t)n * C;
    double m = mean[n], r = rstd[n], s1, s2, a1[4] = {0, 0, 0, 0}, a2[4] = {0, 0, 0, 0};
    for (c = 0; c < C - C % 4; ++c) {
      double xh = (x[c] - m) * r, dxh = weight ? (double)dy[c] * weight[c] : dy[c];
      a1[c % 4] += dxh;
      a2[c % 4] += dxh * xh;
    }
    s1 = (a1[0] + a1[2]) + (a1[1] + a1[3]);
    s2 = (a2[0] + a2[2]) + (a2[1] + a2[3]);
    for (; c < C; ++c) {
      double xh = (x[c] - m) * r, dxh = weight ? (double)dy[c] * weight[c] : dy[c];
      s1 += dxh;
      s2 += dxh * xh;
    }
    s1 /= C;
    s2 /= C;
    for (c = 0; c < C; ++c) {
      double xh = (x[c] - m) * r, dxh = weight ? (double)dy[c] * weight[c] : dy[c];
      dx[c] += (float)(r * (dxh - s1 - xh * s2));
    }
  }
  for (c = 0; (dweight || dbias) && c < C; ++c) {
    double tw = 0.0, tb = 0.0;
    for (n0 = 0; n0 < N; n0 += IOUPOS__ROW_CHUNK) {
      double sw = 0.0, sb = 0.0;
      for (n = n0; n < N && n < n0 + IOUPOS__ROW_CHUNK; ++n) {
        double m = mean[n], r = rstd[n];
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        sw += dy[c] * ((x[c] - m) * r);
        sb += dy[c];
      }
      tw += sw, tb += sb;
    }
    if (dweight) dweight[c] += (float)tw;
    if (dbias) dbias[c] += (float)tb;
  }
}

IOUPOS_DEF void ioupos_layernorm_backward(float *dinp, float *dweight, float *dbias,
                                          const float *dout, const float *inp,
                                          const float *weight, const float *mean,
                                          const float *rstd, int N, int C) {
  IOUPOS__IMPL(ioupos__layernorm_backward)(dinp, dweight, dbias, dout, inp, weight, mean, rstd,
                                           N, C);
}

/* -- GELU -- */

/* GELU(x) = x Phi(x), Phi(x) = 0.5 (1 + erf(x / sqrt 2)); gelu'(x) = Phi(x) + x phi(x),
   phi(x) = exp(-x^2 / 2) / sqrt(2 pi): in double with libm's erf and exp, rounded to float once.
   (The fast path's SIMD kernel computes Phi from erfc instead, see "fast paths".)
   This is torch.nn.GELU() with approximate='none', which MONAI's MLPBlock and timm's Mlp use,
   not the tanh approximation (approximate='tanh'). gelu' is the product rule on x Phi(x):
   Phi(x) + x Phi'(x), and Phi' is the normal density phi. */
IOUPOS__REF double ioupos__gelu_cdf(double x) {
  return 0.5 * (1.0 + erf(x * 0.70710678118654752440));
}
IOUPOS__REF double ioupos__gelu_grad(double x, double cdf) {
  return cdf + x * (0.39894228040143267794 * exp(-0.5 * x * x));
}

/* out[n] = GELU(inp[n]) (out may equal inp) */
IOUPOS__REF void ioupos__gelu_forward_ref(float *out, const float *inp, size_t n) {
  size_t i;
  for (i = 0; i < n; ++i) out[i] = (float)(inp[i] * ioupos__gelu_cdf(inp[i]));
}

/* dinp[n] += dout[n] gelu'(inp[n]). ACCUMULATES. */
IOUPOS__REF void ioupos__gelu_backward_ref(float *dinp, const float *inp, const float *dout,
                                           size_t n) {
  size_t i;
  for (i = 0; i < n; ++i)
    dinp[i] += (float)(dout[i] * ioupos__gelu_grad(inp[i], ioupos__gelu_cdf(inp[i])));
}

/* The MLP backward's: dh[n] = dh * gelu'(x) in place and, when act is not NULL, act[n] =
   GELU(x) (recomputed instead of kept: the same values as the forward's). */
IOUPOS__REF void ioupos__gelu_backward_inplace_ref(float *dh, float *act, const float *x,
                                                   size_t n) {
  size_t i;
  for (i = 0; i < n; ++i) {
    double cdf = ioupos__gelu_cdf(x[i]);
    dh[i] = (float)(dh[i] * ioupos__gelu_grad(x[i], cdf));
    if (act) act[i] = (float)(x[i] * cdf);
  }
}

IOUPOS_DEF void ioupos_gelu_forward(float *out, const float *inp, size_t n) {
  IOUPOS__IMPL(ioupos__gelu_forward)(out, inp, n);
}

IOUPOS_DEF void ioupos_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
  IOUPOS__IMPL(ioupos__gelu_backward)(dinp, inp, dout, n);
}

/* -- ReLU -- */
/* torch.nn.ReLU: out = max(x, 0), overwritten (out may equal inp); a NaN input gives 0. */
IOUPOS_DEF void ioupos_relu_forward(float *out, const float *inp, size_t n) {
  size_t i;
  for (i = 0; i < n; ++i) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

/* dinp += dout where inp > 0, ACCUMULATES; the subgradient at 0 is 0, as torch's. relu(x) > 0
   exactly where x > 0, so the forward's output serves as inp too (what an in-place forward
   leaves behind). */
IOUPOS_DEF void ioupos_relu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
  size_t i;
  for (i = 0; i < n; ++i)
    if (inp[i] > 0.0f) dinp[i] += dout[i];
}

/* -- softmax -- */
/* out[N][C] = softmax of each row, overwritten (out may equal inp). Softmax is unchanged by a
   shift of its row, so the row's maximum is subtracted first: the largest term is exp(0) = 1,
   nothing overflows and the sum is >= 1. The exponentials are summed in double, rounded to float
   once in out and divided there by the double sum. */
IOUPOS_DEF void ioupos_softmax_forward(float *out, const float *inp, int N, int C) {
  int n, c;
  for (n = 0; n < N; ++n) {
    const float *x = inp + (size_t)n * C;
    float *y = out + (size_t)n * C;
    float mx = -INFINITY;
    double s = 0.0;
    for (c = 0; c < C; ++c) mx = x[c] > mx ? x[c] : mx;
    for (c = 0; c < C; ++c) {
      double e = exp((double)x[c] - mx);
      y[c] = (float)e;
      s += e;
    }
    for (c = 0; c < C; ++c) y[c] = (float)(y[c] / s);
  }
}

/* dinp[N][C] += y (dout - sum_c dout y), ACCUMULATES; y = the forward's output (all it needs).
   Why: dy_i/dx_j = y_i (delta_ij - y_j), so dx_j = sum_i dout_i y_i (delta_ij - y_j) =
   y_j (dout_j - dout . y): one dot product per row instead of the C x C Jacobian. */
IOUPOS_DEF void ioupos_softmax_backward(float *dinp, const float *out, const float *dout, int N,
                                        int C) {
  int n, c;
  for (n = 0; n < N; ++n) {
    const float *y = out + (size_t)n * C, *dy = dout + (size_t)n * C;
    float *dx = dinp + (size_t)n * C;
    double s = 0.0;
    for (c = 0; c < C; ++c) s += (double)dy[c] * y[c];
    for (c = 0; c < C; ++c) dx[c] += (float)(y[c] * (dy[c] - s));
  }
}

/* -- L2 normalisation -- */
/* torch.nn.functional.normalize(p=2, dim=-1): out[N][C] = x / max(|x|, eps), overwritten; the
   sum of squares in double, in order. denom[N] keeps the clamped norm, the one number per row
   that backward needs besides the output. */
IOUPOS_DEF void ioupos_l2norm_forward(float *out, float *denom, const float *inp, int N, int C,
                                      float eps) {
  int n, c;
  for (n = 0; n < N; ++n) {
    const float *x = inp + (size_t)n * C;
    double s = 0.0, d;
    for (c = 0; c < C; ++c) s += (double)x[c] * x[c];
    d = sqrt(s);
    if (!(d > eps)) d = eps;
    for (c = 0; c < C; ++c) out[(size_t)n * C + c] = (float)(x[c] / d);
    denom[n] = (float)d;
  }
}

/* dinp[N][C] += (dout - y (y . dout)) / |x| where |x| > eps, else dout / eps; ACCUMULATES.
   Why: y = x / |x| has Jacobian (I - y y^T) / |x|; the projection drops dout's component along y,
   since scaling x leaves y unchanged. Below the clamp the divisor is the constant eps (torch's
   clamp_min passes no gradient to the norm), so s stays 0 and only dout / eps remains. */
IOUPOS_DEF void ioupos_l2norm_backward(float *dinp, const float *out, const float *denom,
                                       const float *dout, int N, int C, float eps) {
  int n, c;
  for (n = 0; n < N; ++n) {
    const float *y = out + (size_t)n * C, *dy = dout + (size_t)n * C;
    float *dx = dinp + (size_t)n * C;
    double d = denom[n], s = 0.0;
    if (d > eps) /* norm above the clamp: d(x/|x|) = (I - y y^T) / |x| */
      for (c = 0; c < C; ++c) s += (double)y[c] * dy[c];
    for (c = 0; c < C; ++c) dx[c] += (float)((dy[c] - y[c] * s) / d);
  }
}

/* -- global average pooling -- */
/* out[B][C] = (1 / T) sum_t inp[B][T][C], overwritten: the encoder's feature vector, the mean
   of the last stage's tokens, which the SimSiam and DINO heads take. Images on the threads;
   each channel's sum in double over the tokens in order, so the bits do not depend on the
   thread count. */
IOUPOS_DEF void ioupos_avgpool_forward(float *out, const float *inp, int B, int T, int C) {
  int b;
  IOUPOS__PFOR((double)B * T * C)
  for (b = 0; b < B; ++b) {
    /* channels in blocks of 64, tokens in order: each channel's sum as a column walk would */
    double acc[64];
    int c0, c, t;
    for (c0 = 0; c0 < C; c0 += 64) {
      int c1 = c0 + 64 < C ? c0 + 64 : C;
      for (c = c0; c < c1; ++c) acc[c - c0] = 0.0;
      for (t = 0; t < T; ++t) {
        const float *row = inp + ((size_t)b * T + t) * C;
        for (c = c0; c < c1; ++c) acc[c - c0] += row[c];
      }
      for (c = c0; c < c1; ++c) out[(size_t)b * C + c] = (float)(acc[c - c0] / T);
    }
  }
}

/* The mean weighs every token by 1 / T: dinp[B][T][C] += dout[B][C] / T, ACCUMULATES; rows on
   the threads (each row written by one iteration). */
IOUPOS_DEF void ioupos_avgpool_backward(float *dinp, const float *dout, int B, int T, int C) {
  long r, rows = (long)B * T;
  IOUPOS__PFOR((double)rows * C)
  for (r = 0; r < rows; ++r) {
    const float *g = dout + (size_t)(r / T) * C;
    float *d = dinp + (size_t)r * C;
    int c;
    for (c = 0; c < C; ++c) d[c] += (float)((double)g[c] / T);
  }
}

/* -- batch norm 1d -- */
/* torch.nn.BatchNorm1d in training (the norm of lightly's SimSiam heads): per channel,
   mean and biased variance over the N rows (two passes, in double), out overwritten, mean[C] and
   rstd[C] saved. The running statistics are EMAs with torch's convention for momentum (weight of
   the NEW value) and the unbiased variance v / (N - 1); they only serve eval mode. */
IOUPOS_DEF void ioupos_batchnorm_forward_train(float *out, float *mean, float *rstd,
                                               float *running_mean, float *running_var,
                                               const float *inp, const float *weight,
                                               const float *bias, int N, int C, float momentum,
                                               float eps) {
  int n, c;
  for (c = 0; c < C; ++c) {
    double m = 0.0, v = 0.0, r;
    for (n = 0; n < N; ++n) m += inp[(size_t)n * C + c];
    m /= N;
    for (n = 0; n < N; ++n) {
      double d = inp[(size_t)n * C + c] - m;
      v += d * d;
    }
    r = 1.0 / sqrt(v / N + eps);
    for (n = 0; n < N; ++n) {
      double h = (inp[(size_t)n * C + c] - m) * r;
      if (weight) h *= weight[c];
      if (bias) h += bias[c];
      out[(size_t)n * C + c] = (float)h;
    }
    mean[c] = (float)m;
    rstd[c] = (float)r;
    if (running_mean)
      running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + (double)momentum * m);
    if (running_var)
      running_var[c] = (float)((1.0 - momentum) * running_var[c] +
                               (double)momentum * (N > 1 ? v / (N - 1) : v));
  }
}

/* Layer norm's derivation with rows and columns exchanged: the statistics of channel c are over
   the N rows, so dinp += w r (dy - mean_n dy - xh mean_n (dy xh)), and the two sums it needs,
   sum_n dy and sum_n dy xh, are exactly dbias and dweight. ACCUMULATES (each may be NULL). */
IOUPOS_DEF void ioupos_batchnorm_backward_train(float *dinp, float *dweight, float *dbias,
                                                const float *dout, const float *inp,
                                                const float *weight, const float *mean,
                                                const float *rstd, int N, int C) {
  int n, c;
  for (c = 0; c < C; ++c) {
    double m = mean[c], r = rstd[c], w = weight ? weight[c] : 1.0, s1 = 0.0, s2 = 0.0;
    for (n = 0; n < N; ++n) {
      double dy = dout[(size_t)n * C + c], xh = (inp[(size_t)n * C + c] - m) * r;
      s1 += dy;
      s2 += dy * xh;
    }
    if (dweight) dweight[c] += (float)s2;
    if (dbias) dbias[c] += (float)s1;
    if (dinp)
      for (n = 0; n < N; ++n) {
        double dy = dout[(size_t)n * C + c], xh = (inp[(size_t)n * C + c] - m) * r;
        dinp[(size_t)n * C + c] += (float)(w * r * (dy - s1 / N - xh * s2 / N));
      }
  }
}

/* Eval mode: the running buffers replace the batch statistics, so the layer is a fixed affine
   map per channel; rstd from the float running_var in double. out overwritten. */
IOUPOS_DEF void ioupos_batchnorm_forward_eval(float *out, const float *inp,
                                              const float *running_mean,
                                              const float *running_var, const float *weight,
                                              const float *bias, int N, int C, float eps) {
  int n, c;
  for (c = 0; c < C; ++c) {
    double m = running_mean[c], r = 1.0 / sqrt((double)running_var[c] + eps);
    for (n = 0; n < N; ++n) {
      double h = (inp[(size_t)n * C + c] - m) * r;
      if (weight) h *= weight[c];
      if (bias) h += bias[c];
      out[(size_t)n * C + c] = (float)h;
    }
  }
}

/* The statistics are constants here: dinp += dy w r with no mean terms (unlike train mode);
   dweight += sum_n dy xh, dbias += sum_n dy. ACCUMULATES (each may be NULL). */
IOUPOS_DEF void ioupos_batchnorm_backward_eval(float *dinp, float *dweight, float *dbias,
                                               const float *dout, const float *inp,
                                               const float *running_mean,
                                               const float *running_var, const float *weight,
                                               int N, int C, float eps) {
  int n, c;
  for (c = 0; c < C; ++c) {
    double m = running_mean[c], r = 1.0 / sqrt((double)running_var[c] + eps);
    double w = weight ? weight[c] : 1.0, sw = 0.0, sb = 0.0;
    for (n = 0; n < N; ++n) {
      double dy = dout[(size_t)n * C + c];
      sw += dy * (inp[(size_t)n * C + c] - m) * r;
      sb += dy;
      if (dinp) dinp[(size_t)n * C + c] += (float)(dy * w * r);
    }
    if (dweight) dweight[c] += (float)sw;
    if (dbias) dbias[c] += (float)sb;
  }
}

/* -- patch embedding -- */
/* Grid of patches: g[k] = ceil(S_k / p) on the 3 internal axes (2D: a leading axis of size 1
   with kernel depth 1), kernel extent kd = p (3D) or 1 (2D). */
static void ioupos__pe_geom(int dims, const int shape[], int p, int S[3], int g[3], int kk[3]) {
  int k;
  if (dims == 3) {
    for (k = 0; k < 3; ++k) S[k] = shape[k], kk[k] = p;
  } else {
    S[0] = 1, kk[0] = 1, S[1] = shape[0], S[2] = shape[1], kk[1] = kk[2] = p;
  }
  for (k = 0; k < 3; ++k) g[k] = (S[k] + kk[k] - 1) / kk[k];
}

/* Floats of the im2col matrix: one row per patch (B prod(ceil(S / p))), one column per weight
   element of a filter (Cin p^dims). */
IOUPOS_DEF size_t ioupos_patch_embed_col_size(int dims, int B, int Cin, const int shape[],
                                              int p) {
  int S[3], g[3], kk[3];
  ioupos__pe_geom(dims, shape, p, S, g, kk);
  return (size_t)B * g[0] * g[1] * g[2] * Cin * kk[0] * kk[1] * kk[2];
}

/* col row (b, gd, gh, gw), column (ci, kd, kh, kw) = torch's weight layout [Cout][Cin][kd][kh][kw].
   dir 0: gather inp into col (zero outside the image); dir 1: img += scatter of col.
   The kernel equals the stride, so patches do not overlap: every image element is one entry of
   one row, the gather is a permutation (plus the zero padding) and the scatter is its transpose,
   with += for the ACCUMULATE contract and nothing sent to the padding. */
static void ioupos__pe_im2col(float *col, float *img, const float *inp, int dir, int dims, int B,
                              int Cin, const int shape[], int p) {
  int S[3], g[3], kk[3], b, z, y, x, ci, a, e, f;
  size_t K, row = 0;
  ioupos__pe_geom(dims, shape, p, S, g, kk);
  K = (size_t)Cin * kk[0] * kk[1] * kk[2];
  for (b = 0; b < B; ++b)
    for (z = 0; z < g[0]; ++z)
      for (y = 0; y < g[1]; ++y)
        for (x = 0; x < g[2]; ++x, ++row) {
          float *cr = col + row * K;
          size_t j = 0;
          for (ci = 0; ci < Cin; ++ci)
            for (a = 0; a < kk[0]; ++a)
              for (e = 0; e < kk[1]; ++e)
                for (f = 0; f < kk[2]; ++f, ++j) {
                  int zz = z * kk[0] + a, yy = y * kk[1] + e, xx = x * kk[2] + f;
                  int inside = zz < S[0] && yy < S[1] && xx < S[2];
                  size_t off = ((((size_t)b * Cin + ci) * S[0] + zz) * S[1] + yy) * S[2] + xx;
                  if (dir == 0)
                    cr[j] = inside ? inp[off] : 0.0f;
                  else if (inside)
                    img[off] += cr[j];
                }
        }
}

/* MONAI's PatchEmbed conv (kernel = stride = p) is a matrix product: each token is one
   flattened patch (a row of col, in torch's weight order) times each filter, plus the bias. col
   is overwritten and must be kept for the weight gradient; out overwritten. Returns the linear
   layer's status. */
IOUPOS_DEF int ioupos_patch_embed_forward(float *out, float *col, const float *inp,
                                          const float *weight, const float *bias, int dims,
                                          int B, int Cin, const int shape[], int p, int Cout) {
  int S[3], g[3], kk[3];
  ioupos__pe_geom(dims, shape, p, S, g, kk);
  ioupos__pe_im2col(col, NULL, inp, 0, dims, B, Cin, shape, p);
  return ioupos_linear_forward(out, col, weight, bias, B * g[0] * g[1] * g[2],
                               Cin * kk[0] * kk[1] * kk[2], Cout);
}

/* dweight, dbias: the linear layer's, with col as its input. dinp: dcol = dout weight into the
   zeroed scratch (the linear layer accumulates), then scattered back to the image (col2im, the
   conv-transpose). ACCUMULATES; returns the linear layer's status. */
IOUPOS_DEF int ioupos_patch_embed_backward(float *dinp, float *dweight, float *dbias,
                                           float *scratch, const float *dout, const float *col,
                                           const float *weight, int dims, int B, int Cin,
                                           const int shape[], int p, int Cout) {
  int S[3], g[3], kk[3], st, M, K;
  ioupos__pe_geom(dims, shape, p, S, g, kk);
  M = B * g[0] * g[1] * g[2];
  K = Cin * kk[0] * kk[1] * kk[2];
  if (dinp) memset(scratch, 0, sizeof(float) * (size_t)M * K);
  st = ioupos_linear_backward(dinp ? scratch : NULL, dweight, dbias, dout, col, weight, M, K,
                              Cout);
  if (st) return st;
  if (dinp) ioupos__pe_im2col(scratch, dinp, NULL, 1, dims, B, Cin, shape, p);
  return IOUPOS_OK;
}

/* -- patch merging -- */
/* MONAI's sub-grid offsets, (d, h, w); 2D uses the first 4 entries' (h, w) from the 2D table. */
static const int ioupos__merge_off3[8][3] = {{0, 0, 0}, {1, 0, 0}, {0, 1, 0}, {0, 0, 1},
                                             {1, 1, 0}, {1, 0, 1}, {0, 1, 1}, {1, 1, 1}};
static const int ioupos__merge_off2[4][3] = {{0, 0, 0}, {0, 1, 0}, {0, 0, 1}, {0, 1, 1}};

/* dir 0: cat[M][K] = gather of inp (zero padding); dir 1: dinp += scatter of cat. Rows in
   parallel: each input position belongs to exactly one row. */
static void ioupos__merge_gather(float *cat, float *dinp, const float *inp, int dir, int dims,
                                 int B, const int shape[], int C) {
  int S[3], g[3], q, nq = dims == 3 ? 8 : 4;
  const int(*off)[3] = dims == 3 ? ioupos__merge_off3 : ioupos__merge_off2;
  size_t K = (size_t)nq * C;
  long row, rows;
  if (dims == 3) S[0] = shape[0], S[1] = shape[1], S[2] = shape[2];
  else S[0] = 1, S[1] = shape[0], S[2] = shape[1];
  for (q = 0; q < 3; ++q) g[q] = (S[q] + 1) / 2;
  if (dims == 2) g[0] = 1;
  rows = (long)B * g[0] * g[1] * g[2];
  IOUPOS__PFOR((double)rows * K)
  for (row = 0; row < rows; ++row) {
    long r = row;
    int x = (int)(r % g[2]), y, z, b, k, c;
    r /= g[2];
    y = (int)(r % g[1]);
    r /= g[1];
    z = (int)(r % g[0]);
    b = (int)(r / g[0]);
    for (k = 0; k < nq; ++k) {
      int zz = (dims == 3 ? 2 * z : 0) + off[k][0], yy = 2 * y + off[k][1], xx = 2 * x + off[k][2];
      float *cr = cat + (size_t)row * K + (size_t)k * C;
      int inside = zz < S[0] && yy < S[1] && xx < S[2];
      size_t o = ((((size_t)b * S[0] + zz) * S[1] + yy) * S[2] + xx) * C;
      if (dir == 0) {
        for (c = 0; c < C; ++c) cr[c] = inside ? inp[o + c] : 0.0f;
      } else if (inside) {
        for (c = 0; c < C; ++c) dinp[o + c] += cr[c];
      }
    }
  }
}

/* M, the merged tokens: B prod(ceil(S / 2)), the odd sizes padded to even */
static int ioupos__merge_rows(int dims, int B, const int shape[]) {
  if (dims == 3) return B * ((shape[0] + 1) / 2) * ((shape[1] + 1) / 2) * ((shape[2] + 1) / 2);
  return B * ((shape[0] + 1) / 2) * ((shape[1] + 1) / 2);
}

/* MONAI PatchMerging: gather the 2^dims neighbours of each 2 x 2 (x 2) cell into channels,
   LayerNorm over the 2^dims C channels, then Linear(2^dims C -> 2C, no bias): each axis halves,
   channels double. cat, lnout, mean, rstd and out overwritten (kept for backward). */
IOUPOS_DEF int ioupos_patch_merging_forward(float *out, float *cat, float *lnout, float *mean,
                                            float *rstd, const float *inp, const float *ln_w,
                                            const float *ln_b, const float *red_w, int dims,
                                            int B, const int shape[], int C) {
  int M = ioupos__merge_rows(dims, B, shape), K = (dims == 3 ? 8 : 4) * C;
  ioupos__merge_gather(cat, NULL, inp, 0, dims, B, shape, C);
  ioupos_layernorm_forward(lnout, mean, rstd, cat, ln_w, ln_b, M, K, 1e-5f);
  return ioupos_linear_forward(out, lnout, red_w, NULL, M, K, 2 * C);
}

/* The three stages in reverse through scratch [2][M][K]: dln (the linear's input gradient),
   then dcat (the layer norm's), both zeroed first because those layers accumulate, then the
   scatter of dcat into dinp. Parameter gradients ACCUMULATE. Returns the linear's status. */
IOUPOS_DEF int ioupos_patch_merging_backward(float *dinp, float *dln_w, float *dln_b,
                                             float *dred_w, float *scratch, const float *dout,
                                             const float *cat, const float *lnout,
                                             const float *mean, const float *rstd,
                                             const float *ln_w, const float *red_w, int dims,
                                             int B, const int shape[], int C) {
  int M = ioupos__merge_rows(dims, B, shape), K = (dims == 3 ? 8 : 4) * C, st;
  float *dln = scratch, *dcat = scratch + (size_t)M * K;
  memset(scratch, 0, sizeof(float) * 2 * (size_t)M * K);
  st = ioupos_linear_backward(dln, dred_w, NULL, dout, lnout, red_w, M, K, 2 * C);
  if (st) return st;
  ioupos_layernorm_backward(dinp ? dcat : NULL, dln_w, dln_b, dln, cat, ln_w, mean, rstd, M, K);
  if (dinp) ioupos__merge_gather(dcat, dinp, NULL, 1, dims, B, shape, C);
  return IOUPOS_OK;
}

/* -- drop path -- */
/* timm's drop_path (scale_by_keep): each sample's residual branch is kept with probability keep
   and then scaled by 1 / keep, so E[mask] = 1 and eval mode needs no rescaling. One uniform per
   sample, in batch order, none when drop_prob <= 0 or >= 1: the rng advances by a known count. */
IOUPOS_DEF void ioupos_drop_path_mask(float *mask, int B, float drop_prob, ioupos_rng *rng) {
  int b;
  double keep = 1.0 - (double)drop_prob;
  for (b = 0; b < B; ++b) {
    if (drop_prob <= 0.0f) mask[b] = 1.0f;
    else if (keep <= 0.0) mask[b] = 0.0f;
    else mask[b] = ioupos_rng_uniform(rng) < keep ? (float)(1.0 / keep) : 0.0f;
  }
}

/* Elements per parallel chunk of the elementwise loops (any constant: no reductions). */
#define IOUPOS__EW_CHUNK 4096

/* The elementwise loops over [B][S] below run in chunks of IOUPOS__EW_CHUNK elements of one
   sample: chunk k covers sample k / per, elements (k % per) * IOUPOS__EW_CHUNK on. */
#define IOUPOS__EW_LOOP(B, S, body)                                                       \
  do {                                                                                    \
    size_t per_ = ((S) + IOUPOS__EW_CHUNK - 1) / IOUPOS__EW_CHUNK;                        \
    long k_, nk_ = (long)((size_t)(B) * per_);                                            \
    IOUPOS__PFOR((double)(B) * (double)(S))                                               \
    for (k_ = 0; k_ < nk_; ++k_) {                                                        \
      int b = (int)((size_t)k_ / per_);                                                   \
      size_t i0_ = ((size_t)k_ % per_) * IOUPOS__EW_CHUNK;                                \
      size_t i1_ = i0_ + IOUPOS__EW_CHUNK < (S) ? i0_ + IOUPOS__EW_CHUNK : (S), i;        \
      size_t o_ = (size_t)b * (S);                                                        \
      for (i = o_ + i0_; i < o_ + i1_; ++i) body                                          \
    }                                                                                     \
  } while (0)

IOUPOS_DEF void ioupos_drop_path_forward(float *out, const float *inp, const float *mask, int B,
                                         size_t S) {
  IOUPOS__EW_LOOP(B, S, { out[i] = inp[i] * mask[b]; });
}

/* mask is a constant per sample: dinp += dout mask[b], ACCUMULATES */
IOUPOS_DEF void ioupos_drop_path_backward(float *dinp, const float *dout, const float *mask,
                                          int B, size_t S) {
  IOUPOS__EW_LOOP(B, S, { dinp[i] += dout[i] * mask[b]; });
}

/* -- residual -- */
IOUPOS_DEF void ioupos_residual_forward(float *out, const float *x, const float *y,
                                        const float *mask, int B, size_t S) {
  if (mask) IOUPOS__EW_LOOP(B, S, { out[i] = x[i] + y[i] * mask[b]; });
  else IOUPOS__EW_LOOP(B, S, { (void)b; out[i] = x[i] + y[i]; });
}

/* Only the branch y is scaled by the mask; x's gradient is dout itself, which the caller passes
   on to x's producer unchanged (no copy made here). dy ACCUMULATES. */
IOUPOS_DEF void ioupos_residual_backward(float *dy, const float *dout, const float *mask, int B,
                                         size_t S) {
  if (mask) ioupos_drop_path_backward(dy, dout, mask, B, S);
  else IOUPOS__EW_LOOP(B, S, { (void)b; dy[i] += dout[i]; });
}

/* -- MLP -- */
/* MONAI MLPBlock / timm Mlp with dropout 0: h_pre = inp W1^T + b1, h_act = GELU(h_pre), out =
   h_act W2^T + b2, all overwritten. h_pre is what GELU's derivative needs; h_act is what the
   second linear's weight gradient needs, and may be recomputed instead of kept. */
IOUPOS_DEF int ioupos_mlp_forward(float *out, float *h_pre, float *h_act, const float *inp,
                                  const float *w1, const float *b1, const float *w2,
                                  const float *b2, int N, int C, int Hd) {
  int st = ioupos_linear_forward(h_pre, inp, w1, b1, N, C, Hd);
  if (st) return st;
  ioupos_gelu_forward(h_act, h_pre, (size_t)N * Hd);
  return ioupos_linear_forward(out, h_act, w2, b2, N, Hd, C);
}

/* The chain backwards: dh = dout W2, dh *= gelu'(h_pre), then each linear's gradients (dW2 from
   dout and h_act, dinp, dW1, db1 from dh). dh is scratch [N][Hd] and overwritten; the recomputed
   h_act, when h_act is NULL, is a second [N][Hd]. Returns the first failing GEMM's status. */
IOUPOS_DEF int ioupos_mlp_backward(float *dinp, float *dw1, float *db1, float *dw2, float *db2,
                                   float *scratch, const float *dout, const float *inp,
                                   const float *h_pre, const float *h_act, const float *w1,
                                   const float *w2, int N, int C, int Hd) {
  size_t nh = (size_t)N * Hd;
  float *dh = scratch, *act = h_act ? NULL : scratch + nh;
  int st;
  /* dh = dout w2 (overwritten: the scratch is ours) */
  st = ioupos_gemm(0, 0, N, Hd, C, 1.0f, dout, C > 0 ? C : 1, w2, Hd > 0 ? Hd : 1, 0.0f, dh,
                   Hd > 0 ? Hd : 1);
  if (st) return st;
  /* dh := gelu'(h_pre) * dh in place; with h_act NULL, GELU(h_pre) is recomputed beside it (the
     same arithmetic as ioupos_gelu_forward, so the same values) */
  IOUPOS__IMPL(ioupos__gelu_backward_inplace)(dh, act, h_pre, nh);
  st = ioupos_linear_backward(NULL, dw2, db2, dout, h_act ? h_act : act, w2, N, Hd, C);
  if (st) return st;
  return ioupos_linear_backward(dinp, dw1, db1, dh, inp, w1, N, C, Hd);
}

/* ==== 11. fast paths =============================================================================
   The same layers with rows (or chunks of IOUPOS__ROW_CHUNK rows, IOUPOS__EW_CHUNK elements) on
   the OpenMP threads and, in AVX2+FMA builds, SIMD kernels; without AVX2 the kernels are the
   references' own loops. Layer norm and bias sums: the references' order, so the same bits.
   GELU: our own vectorised erfc / exp (below), within 1 ulp of the reference. */
#if IOUPOS__LAYERS_FAST

#if IOUPOS__GEMM_AVX2
/* -- a vector of doubles, ioupos__vd: IOUPOS__VD_N lanes of __m512d (AVX-512) or __m256d (AVX2).
   The exp and GELU kernels below (and window attention's softmax, section 12) are written once
   on it; every operation is the same per lane at either width, so both widths give the same
   values. */
#if IOUPOS__GEMM_AVX512
/* GCC 12's AVX-512 conversion intrinsics trip -W(maybe-)uninitialized in C++ (their
   _mm512_undefined_* self-initialisation); the warning is about the compiler's header. */
#if defined(__cplusplus) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#define IOUPOS__VD_N 8
typedef __m512d ioupos__vd;
static inline ioupos__vd ioupos__vd_set1(double a) { return _mm512_set1_pd(a); }
static inline ioupos__vd ioupos__vd_loadf(const float *p) {
  return _mm512_cvtps_pd(_mm256_loadu_ps(p));
}
static inline void ioupos__vd_storef(float *p, ioupos__vd v) {
  _mm256_storeu_ps(p, _mm512_cvtpd_ps(v));
}
/* p[0..N) += v rounded to float, the sums in float */
static inline void ioupos__vd_addf(float *p, ioupos__vd v) {
  _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), _mm512_cvtpd_ps(v)));
}
static inline void ioupos__vd_stored(double *p, ioupos__vd v) { _mm512_storeu_pd(p, v); }
static inline ioupos__vd ioupos__vd_add(ioupos__vd a, ioupos__vd b) { return _mm512_add_pd(a, b); }
static inline ioupos__vd ioupos__vd_sub(ioupos__vd a, ioupos__vd b) { return _mm512_sub_pd(a, b); }
static inline ioupos__vd ioupos__vd_mul(ioupos__vd a, ioupos__vd b) { return _mm512_mul_pd(a, b); }
static inline ioupos__vd ioupos__vd_div(ioupos__vd a, ioupos__vd b) { return _mm512_div_pd(a, b); }
static inline ioupos__vd ioupos__vd_max(ioupos__vd a, ioupos__vd b) { return _mm512_max_pd(a, b); }
/* a b + c, c - a b, a b - c: each rounded once */
static inline ioupos__vd ioupos__vd_fmadd(ioupos__vd a, ioupos__vd b, ioupos__vd c) {
  return _mm512_fmadd_pd(a, b, c);
}
static inline ioupos__vd ioupos__vd_fnmadd(ioupos__vd a, ioupos__vd b, ioupos__vd c) {
  return _mm512_fnmadd_pd(a, b, c);
}
static inline ioupos__vd ioupos__vd_fmsub(ioupos__vd a, ioupos__vd b, ioupos__vd c) {
  return _mm512_fmsub_pd(a, b, c);
}
static inline ioupos__vd ioupos__vd_abs(ioupos__vd a) {
  return _mm512_castsi512_pd(_mm512_andnot_si512(_mm512_castpd_si512(_mm512_set1_pd(-0.0)),
                                                 _mm512_castpd_si512(a)));
}
/* to the nearest integer (ties to even) */
static inline ioupos__vd ioupos__vd_round(ioupos__vd a) {
  return _mm512_roundscale_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
/* 2^n for integral n in [-1022, 1023] */
static inline ioupos__vd ioupos__vd_pow2i(ioupos__vd n) {
  return _mm512_castsi512_pd(_mm512_slli_epi64(
      _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_cvtpd_epi32(n)), _mm512_set1_epi64(1023)), 52));
}
/* per lane: a < b ? t : f, and a >= b ? t : f (ordered: a NaN gives f) */
static inline ioupos__vd ioupos__vd_if_lt(ioupos__vd a, ioupos__vd b, ioupos__vd t, ioupos__vd f) {
  return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a, b, _CMP_LT_OQ), f, t);
}
static inline ioupos__vd ioupos__vd_if_ge(ioupos__vd a, ioupos__vd b, ioupos__vd t, ioupos__vd f) {
  return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a, b, _CMP_GE_OQ), f, t);
}
#else
#define IOUPOS__VD_N 4
typedef __m256d ioupos__vd;
static inline ioupos__vd ioupos__vd_set1(double a) { return _mm256_set1_pd(a); }
static inline ioupos__vd ioupos__vd_loadf(const float *p) {
  return _mm256_cvtps_pd(_mm_loadu_ps(p));
}
static inline void ioupos__vd_storef(float *p, ioupos__vd v) {
  _mm_storeu_ps(p, _mm256_cvtpd_ps(v));
}
static inline void ioupos__vd_addf(float *p, ioupos__vd v) {
  _mm_storeu_ps(p, _mm_add_ps(_mm_loadu_ps(p), _mm256_cvtpd_ps(v)));
}
static inline void ioupos__vd_stored(double *p, ioupos__vd v) { _mm256_storeu_pd(p, v); }
static inline ioupos__vd ioupos__vd_add(ioupos__vd a, ioupos__vd b) { return _mm256_add_pd(a, b); }
static inline ioupos__vd ioupos__vd_sub(ioupos__vd a, ioupos__vd b) { return _mm256_sub_pd(a, b); }
static inline ioupos__vd ioupos__vd_mul(ioupos__vd a, ioupos__vd b) { return _mm256_mul_pd(a, b); }
static inline ioupos__vd ioupos__vd_div(ioupos__vd a, ioupos__vd b) { return _mm256_div_pd(a, b); }
static inline ioupos__vd ioupos__vd_max(ioupos__vd a, ioupos__vd b) { return _mm256_max_pd(a, b); }
static inline ioupos__vd ioupos__vd_fmadd(ioupos__vd a, ioupos__vd b, ioupos__vd c) {
  return _mm256_fmadd_pd(a, b, c);
}
static inline ioupos__vd ioupos__vd_fnmadd(ioupos__vd a, ioupos__vd b, ioupos__vd c) {
  return _mm256_fnmadd_pd(a, b, c);
}
static inline ioupos__vd ioupos__vd_fmsub(ioupos__vd a, ioupos__vd b, ioupos__vd c) {
  return _mm256_fmsub_pd(a, b, c);
}
static inline ioupos__vd ioupos__vd_abs(ioupos__vd a) {
  return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a);
}
static inline ioupos__vd ioupos__vd_round(ioupos__vd a) {
  return _mm256_round_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
static inline ioupos__vd ioupos__vd_pow2i(ioupos__vd n) {
  return _mm256_castsi256_pd(_mm256_slli_epi64(
      _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n)), _mm256_set1_epi64x(1023)),
      52));
}
static inline ioupos__vd ioupos__vd_if_lt(ioupos__vd a, ioupos__vd b, ioupos__vd t, ioupos__vd f) {
  return _mm256_blendv_pd(f, t, _mm256_cmp_pd(a, b, _CMP_LT_OQ));
}
static inline ioupos__vd ioupos__vd_if_ge(ioupos__vd a, ioupos__vd b, ioupos__vd t, ioupos__vd f) {
  return _mm256_blendv_pd(f, t, _mm256_cmp_pd(a, b, _CMP_GE_OQ));
}
#endif

/* exp(a) for a <= 0 (0 below -708): Cody-Waite reduction a = n ln 2 + r, a degree-12 Taylor
   polynomial of exp(r), times 2^n.
   ln 2 is taken as a double plus that double's rounding error, both through FMAs, so r keeps
   its accuracy for large |n|; |r| <= ln 2 / 2, where the first omitted Taylor term,
   (ln 2 / 2)^13 / 13!, is below 2e-16. 2^n is written straight into the exponent field, which
   needs n >= -1022: hence the clamp at -708 (exp(-708) is still a normal double). */
static inline ioupos__vd ioupos__vd_exp_neg(ioupos__vd a) {
  const ioupos__vd lo = ioupos__vd_set1(-708.0);
  ioupos__vd ac = ioupos__vd_max(a, lo), n, r, p;
  n = ioupos__vd_round(ioupos__vd_mul(ac, ioupos__vd_set1(1.4426950408889634)));
  r = ioupos__vd_fnmadd(n, ioupos__vd_set1(0.69314718055994529), ac);
  r = ioupos__vd_fnmadd(n, ioupos__vd_set1(2.3190468138462996e-17), r);
  p = ioupos__vd_set1(2.08767569878681e-09);
  p = ioupos__vd_fmadd(p, r, ioupos__vd_set1(2.505210838544172e-08));
  p = ioupos__vd_fmadd(p, r, ioupos__vd_set1(2.7557319223985888e-07));
  p = ioupos__vd_fmadd(p, r, ioupos__vd_set1(2.7557319223985893e-06));
  p = ioupos__vd_fmadd(p, r, ioupos__vd_set1(2.4801587301587302e-05));
  p = ioupos__vd_fmadd(p, r, ioupos__vd_set1(0.00019841269841269841));
  p = ioupos__vd_fmadd(p, r, ioupos__vd_set1(0.0013888888888888889));
  p = ioupos__vd_fmadd(p, r, ioupos__vd_set1(0.0083333333333333332));
  p = ioupos__vd_fmadd(p, r, ioupos__vd_set1(0.041666666666666664));
  p = ioupos__vd_fmadd(p, r, ioupos__vd_set1(0.16666666666666666));
  p = ioupos__vd_fmadd(p, r, ioupos__vd_set1(0.5));
  p = ioupos__vd_fmadd(p, r, ioupos__vd_set1(1.0));
  p = ioupos__vd_fmadd(p, r, ioupos__vd_set1(1.0));
  p = ioupos__vd_mul(p, ioupos__vd_pow2i(n)); /* -1022 <= n <= 0 */
  return ioupos__vd_if_lt(a, lo, ioupos__vd_set1(0.0), p);
}

/* GELU's Phi(x) and phi(x), lane by lane, by our own approximation:
     Q(z) = 1 - Phi(z) = 0.5 erfc(z / sqrt 2) = 0.5 exp(-z^2 / 2) t P(2t - 1), z = |x|,
     t = 1 / (1 + 0.375 z / sqrt 2), P of degree 16 (fitted here by Chebyshev interpolation of
     erfc(u) exp(u^2) / t over t in (0, 1], all u >= 0, relative error < 1e-12),
     Phi(x) = Q(|x|) for x < 0 and 1 - Q(x) otherwise (no cancellation for negative x);
     phi shares Q's exp. The float results are within 1 ulp of the reference's double erf
   formula wherever that formula is itself accurate (x > -5.5; below, 1 + erf cancels and the
   formula loses its relative precision, while ours keeps it; both are below 1e-7 there);
   tests/test_threads.c measures it. An element's value does not depend on its position, so
   ioupos_mlp_backward's recomputed GELU equals the forward's. */
static void ioupos__vd_gelu(ioupos__vd x, ioupos__vd *cdf, ioupos__vd *pdf) {
  const ioupos__vd one = ioupos__vd_set1(1.0);
  ioupos__vd z = ioupos__vd_abs(x), e, t, s, p, q;
  e = ioupos__vd_exp_neg(ioupos__vd_mul(ioupos__vd_mul(z, z), ioupos__vd_set1(-0.5)));
  t = ioupos__vd_div(one, ioupos__vd_fmadd(ioupos__vd_mul(z, ioupos__vd_set1(0.70710678118654757)),
                                           ioupos__vd_set1(0.375), one));
  s = ioupos__vd_fmsub(t, ioupos__vd_set1(2.0), one);
  p = ioupos__vd_set1(1.3068295585219209e-07);
  p = ioupos__vd_fmadd(p, s, ioupos__vd_set1(-9.5460101937106793e-08));
  p = ioupos__vd_fmadd(p, s, ioupos__vd_set1(-1.1651928040311007e-06));
  p = ioupos__vd_fmadd(p, s, ioupos__vd_set1(1.2949405375598704e-06));
  p = ioupos__vd_fmadd(p, s, ioupos__vd_set1(6.4558193461742565e-06));
  p = ioupos__vd_fmadd(p, s, ioupos__vd_set1(-1.0504809837853129e-05));
  p = ioupos__vd_fmadd(p, s, ioupos__vd_set1(-3.4958182730251455e-05));
  p = ioupos__vd_fmadd(p, s, ioupos__vd_set1(6.9617173156472553e-05));
  p = ioupos__vd_fmadd(p, s, ioupos__vd_set1(0.00024025670649030064));
  p = ioupos__vd_fmadd(p, s, ioupos__vd_set1(-0.00037369087314853376));
  p = ioupos__vd_fmadd(p, s, ioupos__vd_set1(-0.0022148163648765947));
  p = ioupos__vd_fmadd(p, s, ioupos__vd_set1(-0.00029585473714835821));
  p = ioupos__vd_fmadd(p, s, ioupos__vd_set1(0.020862210025598949));
  p = ioupos__vd_fmadd(p, s, ioupos__vd_set1(0.081945285247995853));
  p = ioupos__vd_fmadd(p, s, ioupos__vd_set1(0.18878217143387965));
  p = ioupos__vd_fmadd(p, s, ioupos__vd_set1(0.31287840160336022));
  p = ioupos__vd_fmadd(p, s, ioupos__vd_set1(0.39814526198753009));
  q = ioupos__vd_mul(ioupos__vd_mul(ioupos__vd_mul(e, ioupos__vd_set1(0.5)), t), p);
  *cdf = ioupos__vd_if_ge(x, ioupos__vd_set1(0.0), ioupos__vd_sub(one, q), q);
  *pdf = ioupos__vd_mul(e, ioupos__vd_set1(0.3989422804014327));
}

/* mode 0: a[i] = GELU(x[i]); mode 1: a[i] += b[i] gelu'(x[i]); mode 2: b[i] *= gelu'(x[i]) and,
   when a is not NULL, a[i] = GELU(x[i]). For i in [i0, i1); a short tail goes through the same
   lanes from a zero-padded copy. */
static void ioupos__gelu_range(int mode, float *a, float *b, const float *x, size_t i0,
                               size_t i1) {
  size_t i = i0;
  for (;;) {
    float xt[IOUPOS__VD_N] = {0}, at[IOUPOS__VD_N] = {0}, bt[IOUPOS__VD_N] = {0};
    const float *xp = x + i;
    float *ap = a ? a + i : NULL, *bp = b ? b + i : NULL;
    size_t n = i1 - i, k;
    ioupos__vd xv, cdf, pdf;
    if (n == 0) break;
    if (n < IOUPOS__VD_N) { /* tail */
      for (k = 0; k < n; ++k) {
        xt[k] = x[i + k];
        if (a) at[k] = a[i + k];
        if (b) bt[k] = b[i + k];
      }
      xp = xt, ap = a ? at : NULL, bp = b ? bt : NULL;
    }
    xv = ioupos__vd_loadf(xp);
    ioupos__vd_gelu(xv, &cdf, &pdf);
    if (mode == 0) {
      ioupos__vd_storef(ap, ioupos__vd_mul(xv, cdf));
    } else {
      ioupos__vd g = ioupos__vd_fmadd(xv, pdf, cdf);
      if (mode == 1) {
        ioupos__vd_addf(ap, ioupos__vd_mul(ioupos__vd_loadf(bp), g));
      } else {
        ioupos__vd_storef(bp, ioupos__vd_mul(ioupos__vd_loadf(bp), g));
        if (ap) ioupos__vd_storef(ap, ioupos__vd_mul(xv, cdf));
      }
    }
    if (n < IOUPOS__VD_N) {
      for (k = 0; k < n; ++k) {
        if (a) a[i + k] = at[k];
        if (b) b[i + k] = bt[k];
      }
      break;
    }
    i += IOUPOS__VD_N;
  }
}
#if IOUPOS__GEMM_AVX512 && defined(__cplusplus) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

/* -- layer norm kernels: the references' sums, the 8 (4) running sums as vector lanes -- */
static double ioupos__dsum_fast(const float *x, int n) {
  double a[8], s;
  int c = 0;
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  for (; c + 8 <= n; c += 8) {
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm_loadu_ps(x + c)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm_loadu_ps(x + c + 4)));
  }
  _mm256_storeu_pd(a, lo);
  _mm256_storeu_pd(a + 4, hi);
  s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
  for (; c < n; ++c) s += x[c];
  return s;
}

static double ioupos__dsumsq_fast(const float *x, double m, int n) {
  double a[8], s;
  int c = 0;
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd(), mv = _mm256_set1_pd(m), d;
  for (; c + 8 <= n; c += 8) {
    d = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + c)), mv);
    lo = _mm256_add_pd(lo, _mm256_mul_pd(d, d));
    d = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + c + 4)), mv);
    hi = _mm256_add_pd(hi, _mm256_mul_pd(d, d));
  }
  _mm256_storeu_pd(a, lo);
  _mm256_storeu_pd(a + 4, hi);
  s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
  for (; c < n; ++c) s += (x[c] - m) * (x[c] - m);
  return s;
}

/* one row of ioupos__layernorm_forward_ref: the same double arithmetic (the reference's
   multiply, then add), 4 columns per vector when both weight and bias are given, the scalar
   loop otherwise and for the last C mod 4 columns */
static void ioupos__layernorm_row_fast(float *y, float *mean, float *rstd, const float *x,
                                       const float *weight, const float *bias, int C, float eps) {
  double m = ioupos__dsum_fast(x, C) / C, r = 1.0 / sqrt(ioupos__dsumsq_fast(x, m, C) / C + eps);
  int c = 0;
  if (weight && bias) {
    __m256d mv = _mm256_set1_pd(m), rv = _mm256_set1_pd(r);
    for (; c + 4 <= C; c += 4) {
      __m256d h = _mm256_mul_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + c)), mv), rv);
      h = _mm256_add_pd(_mm256_mul_pd(h, _mm256_cvtps_pd(_mm_loadu_ps(weight + c))),
                        _mm256_cvtps_pd(_mm_loadu_ps(bias + c)));
      _mm_storeu_ps(y + c, _mm256_cvtpd_ps(h));
    }
  }
  for (; c < C; ++c) {
    double h = (x[c] - m) * r;
    if (weight) h *= weight[c];
    if (bias) h += bias[c];
    y[c] = (float)h;
  }
  *mean = (float)m;
  *rstd = (float)r;
}

/* row n of ioupos__layernorm_backward_ref's dinp (ACCUMULATES): the reference's 4 running sums
   are the 4 lanes of one register, combined in its order, so the bits are the same */
static void ioupos__layernorm_dinp_row(float *dinp, const float *dout, const float *inp,
                                       const float *weight, const float *mean, const float *rstd,
                                       int n, int C) {
  const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
  float *dx = dinp + (size_t)n * C;
  double m = mean[n], r = rstd[n], s1, s2, a1[4], a2[4];
  const __m256d mv = _mm256_set1_pd(m), rv = _mm256_set1_pd(r);
  __m256d v1 = _mm256_setzero_pd(), v2 = _mm256_setzero_pd(), xh, dxh, s1v, s2v;
  int c;
#define IOUPOS__LN_LANES(c)                                                               \
  do {                                                                                    \
    xh = _mm256_mul_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + (c))), mv), rv);    \
    dxh = _mm256_cvtps_pd(_mm_loadu_ps(dy + (c)));                                        \
    if (weight) dxh = _mm256_mul_pd(dxh, _mm256_cvtps_pd(_mm_loadu_ps(weight + (c))));    \
  } while (0)
  for (c = 0; c + 4 <= C; c += 4) {
    IOUPOS__LN_LANES(c);
    v1 = _mm256_add_pd(v1, dxh);
    v2 = _mm256_add_pd(v2, _mm256_mul_pd(dxh, xh));
  }
  _mm256_storeu_pd(a1, v1);
  _mm256_storeu_pd(a2, v2);
  s1 = (a1[0] + a1[2]) + (a1[1] + a1[3]);
  s2 = (a2[0] + a2[2]) + (a2[1] + a2[3]);
  for (; c < C; ++c) {
    double xh1 = (x[c] - m) * r, dxh1 = weight ? (double)dy[c] * weight[c] : dy[c];
    s1 += dxh1;
    s2 += dxh1 * xh1;
  }
  s1 /= C;
  s2 /= C;
  s1v = _mm256_set1_pd(s1), s2v = _mm256_set1_pd(s2);
  for (c = 0; c + 4 <= C; c += 4) {
    __m256d t;
    IOUPOS__LN_LANES(c);
    t = _mm256_mul_pd(rv, _mm256_sub_pd(_mm256_sub_pd(dxh, s1v), _mm256_mul_pd(xh, s2v)));
    _mm_storeu_ps(dx + c, _mm_add_ps(_mm_loadu_ps(dx + c), _mm256_cvtpd_ps(t)));
  }
#undef IOUPOS__LN_LANES
  for (; c < C; ++c) {
    double xh1 = (x[c] - m) * r, dxh1 = weight ? (double)dy[c] * weight[c] : dy[c];
    dx[c] += (float)(r * (dxh1 - s1 - xh1 * s2));
  }
}
#else /* no SIMD kernels: the references' loops, on the threads */
static void ioupos__gelu_range(int mode, float *a, float *b, const float *x, size_t i0,
                               size_t i1) {
  if (mode == 0) ioupos__gelu_forward_ref(a + i0, x + i0, i1 - i0);
  else if (mode == 1) ioupos__gelu_backward_ref(a + i0, x + i0, b + i0, i1 - i0);
  else ioupos__gelu_backward_inplace_ref(b + i0, a ? a + i0 : NULL, x + i0, i1 - i0);
}

static void ioupos__layernorm_row_fast(float *y, float *mean, float *rstd, const float *x,
                                       const float *weight, const float *bias, int C, float eps) {
  ioupos__layernorm_forward_ref(y, mean, rstd, x, weight, bias, 1, C, eps);
}

static void ioupos__layernorm_dinp_row(float *dinp, const float *dout, const float *inp,
                                       const float *weight, const float *mean, const float *rstd,
                                       int n, int C) {
  ioupos__layernorm_backward_ref(dinp + (size_t)n * C, NULL, NULL, dout + (size_t)n * C,
                                 inp + (size_t)n * C, weight, mean + n, rstd + n, 1, C);
}
#endif /* IOUPOS__GEMM_AVX2 */

/* -- the threads -- */

static void ioupos__colsum_add_fast(float *db, const float *d, size_t T, int OC) {
  /* each chunk's sums in parallel into part[chunk][OC], then added in chunk order */
  size_t nch = (T + IOUPOS__ROW_CHUNK - 1) / IOUPOS__ROW_CHUNK, ch;
  double *part;
  int o;
  long c, n = (long)nch;
  if (T == 0 || OC < 1) return;
  part = (double *)IOUPOS_MALLOC(sizeof(double) * nch * (size_t)OC);
  if (!part) { /* the same sums, serially */
    ioupos__colsum_add_ref(db, d, T, OC);
    return;
  }
  IOUPOS__PFOR((double)T * OC)
  for (c = 0; c < n; ++c) {
    double *pp = part + (size_t)c * OC;
    size_t t, t1 = ((size_t)c + 1) * IOUPOS__ROW_CHUNK < T ? ((size_t)c + 1) * IOUPOS__ROW_CHUNK : T;
    int q;
    for (q = 0; q < OC; ++q) pp[q] = 0.0;
    for (t = (size_t)c * IOUPOS__ROW_CHUNK; t < t1; ++t) {
      const float *row = d + t * OC;
      q = 0;
#if IOUPOS__GEMM_AVX2
      for (; q + 4 <= OC; q += 4)
        _mm256_storeu_pd(pp + q, _mm256_add_pd(_mm256_loadu_pd(pp + q),
                                               _mm256_cvtps_pd(_mm_loadu_ps(row + q))));
#endif
      for (; q < OC; ++q) pp[q] += row[q];
    }
  }
  for (ch = 1; ch < nch; ++ch)
    for (o = 0; o < OC; ++o) part[o] += part[ch * OC + o];
  for (o = 0; o < OC; ++o) db[o] += (float)part[o];
  IOUPOS_FREE(part);
}

static void ioupos__layernorm_forward_fast(float *out, float *mean, float *rstd, const float *inp,
                                           const float *weight, const float *bias, int N, int C,
                                           float eps) {
  int n;
  IOUPOS__PFOR((double)N * C)
  for (n = 0; n < N; ++n)
    ioupos__layernorm_row_fast(out + (size_t)n * C, mean + n, rstd + n, inp + (size_t)n * C,
                               weight, bias, C, eps);
}

static void ioupos__layernorm_backward_fast(float *dinp, float *dweight, float *dbias,
                                            const float *dout, const float *inp,
                                            const float *weight, const float *mean,
                                            const float *rstd, int N, int C) {
  /* chunks of IOUPOS__ROW_CHUNK rows in parallel: dinp row by row, and the parameter
     gradients' sums per chunk, part[chunk][2][C] (row by row), then over the chunks in order */
  long nch = (N + IOUPOS__ROW_CHUNK - 1) / IOUPOS__ROW_CHUNK, ch;
  double *part = NULL;
  int c; /* the serial sums below; the parallel loop has its own (a shared c was a data race) */
  if (N < 1 || C < 1) return;
  if (dweight || dbias) {
    part = (double *)IOUPOS_MALLOC(sizeof(double) * 2 * (size_t)C * (size_t)nch);
    if (!part) { /* the same sums, serially */
      ioupos__layernorm_backward_ref(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
      return;
    }
  }
  IOUPOS__PFOR((double)N * C)
  for (ch = 0; ch < nch; ++ch) {
    int n, n0 = (int)ch * IOUPOS__ROW_CHUNK, n1 = n0 + IOUPOS__ROW_CHUNK < N ? n0 + IOUPOS__ROW_CHUNK : N, c;
    double *pw = part ? part + (size_t)ch * 2 * C : NULL, *pb = pw ? pw + C : NULL;
    for (c = 0; pw && c < 2 * C; ++c) pw[c] = 0.0;
    for (n = n0; n < n1; ++n) {
      const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
      double m = mean[n], r = rstd[n];
      if (dinp) ioupos__layernorm_dinp_row(dinp, dout, inp, weight, mean, rstd, n, C);
      if (!pw) continue;
      c = 0;
#if IOUPOS__GEMM_AVX2
      {
        const __m256d mv = _mm256_set1_pd(m), rv = _mm256_set1_pd(r);
        for (; c + 4 <= C; c += 4) {
          __m256d d = _mm256_cvtps_pd(_mm_loadu_ps(dy + c));
          __m256d xh = _mm256_mul_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + c)), mv), rv);
          _mm256_storeu_pd(pw + c, _mm256_add_pd(_mm256_loadu_pd(pw + c), _mm256_mul_pd(d, xh)));
          _mm256_storeu_pd(pb + c, _mm256_add_pd(_mm256_loadu_pd(pb + c), d));
        }
      }
#endif
      for (; c < C; ++c) {
        pw[c] += dy[c] * ((x[c] - m) * r);
        pb[c] += dy[c];
      }
    }
  }
  if (part) {
    for (ch = 1; ch < nch; ++ch)
      for (c = 0; c < 2 * C; ++c) part[c] += part[(size_t)ch * 2 * C + c];
    for (c = 0; c < C; ++c) {
      if (dweight) dweight[c] += (float)part[c];
      if (dbias) dbias[c] += (float)part[C + c];
    }
    IOUPOS_FREE(part);
  }
}

/* GELU over n elements in chunks of IOUPOS__EW_CHUNK on the threads */
static void ioupos__gelu_par(int mode, float *a, float *b, const float *x, size_t n) {
  long ch, nch = (long)((n + IOUPOS__EW_CHUNK - 1) / IOUPOS__EW_CHUNK);
  IOUPOS__PFOR((double)n * 8)
  for (ch = 0; ch < nch; ++ch) {
    size_t i = (size_t)ch * IOUPOS__EW_CHUNK, e = i + IOUPOS__EW_CHUNK < n ? i + IOUPOS__EW_CHUNK : n;
    ioupos__gelu_range(mode, a, b, x, i, e);
  }
}

static void ioupos__gelu_forward_fast(float *out, const float *inp, size_t n) {
  ioupos__gelu_par(0, out, NULL, inp, n);
}

static void ioupos__gelu_backward_fast(float *dinp, const float *inp, const float *dout, size_t n) {
  ioupos__gelu_par(1, dinp, (float *)dout, inp, n); /* mode 1 only reads b */
}

static void ioupos__gelu_backward_inplace_fast(float *dh, float *act, const float *x, size_t n) {
  ioupos__gelu_par(2, act, dh, x, n);
}

#endif /* IOUPOS__LAYERS_FAST */

#ifdef __cplusplus
}
#endif


/* ---- 12. Shifted-window attention (Swin) ------------------------------------------------------- */


/* The whole window geometry of one block, computed once: the effective window and shift
   (MONAI's get_window_size: on an axis no larger than the window, the window shrinks to the map
   and the shift is dropped, since rolling a single window would only wrap it onto itself), the
   padded size, the window grid and the counts. Axes past ndim are 1, so 2D maps run through the
   3-axis loops unchanged. Returns 0, or IOUPOS_EINVAL with a message and g unspecified. */
IOUPOS_DEF int ioupos_swin_geom_init(ioupos_swin_geom *g, int ndim, int batch, const int *size,
                                     const int *window, const int *shift) {
  int d;
  if (!g || !size || !window || (ndim != 2 && ndim != 3) || batch < 1)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_swin_geom_init: ndim %d (must be 2 or 3), batch %d "
                        "(must be >= 1), or a NULL argument", ndim, batch);
  memset(g, 0, sizeof *g);
  g->ndim = ndim;
  g->batch = batch;
  g->nwin = 1;
  g->ntok = 1;
  for (d = 0; d < ndim; ++d) {
    int s = shift ? shift[d] : 0;
    if (size[d] < 1 || window[d] < 1 || s < 0 || s >= window[d])
      return ioupos__fail(IOUPOS_EINVAL, "ioupos_swin_geom_init: axis %d: size %d, window %d, "
                          "shift %d (need size >= 1, window >= 1, 0 <= shift < window)", d,
                          size[d], window[d], s);
    g->size[d] = size[d];
    g->window_cfg[d] = window[d];
    /* get_window_size: x_size <= window -> window = x_size, shift = 0 */
    g->window[d] = size[d] <= window[d] ? size[d] : window[d];
    g->shift[d] = size[d] <= window[d] ? 0 : s;
    g->grid[d] = (size[d] + g->window[d] - 1) / g->window[d];
    g->padded[d] = g->grid[d] * g->window[d];
    g->nwin *= g->grid[d];
    g->ntok *= g->window[d];
    if (g->shift[d] > 0) g->shifted = 1;
  }
  for (d = ndim; d < 3; ++d) {
    g->size[d] = g->window_cfg[d] = g->window[d] = g->padded[d] = g->grid[d] = 1;
  }
  return IOUPOS_OK;
}

/* The relative offset of two tokens on axis d ranges over -(w_d - 1) .. w_d - 1: 2 w_d - 1
   values; MONAI's relative_position_bias_table has one row per combination of offsets (one bias
   per head in each row), sized from the CONFIGURED window. */
IOUPOS_DEF int ioupos_swin_table_rows(const ioupos_swin_geom *g) {
  int d, r = 1;
  for (d = 0; d < g->ndim; ++d) r *= 2 * g->window_cfg[d] - 1;
  return r;
}

/* Why relative: the bias of a pair depends only on the offset between the two tokens, so one
   small table serves every window and every position inside it. index[ntok][ntok] overwritten. */
IOUPOS_DEF void ioupos_swin_relative_index(int *index, const ioupos_swin_geom *g) {
  /* MONAI: coords of token t in the CONFIGURED window (raster order), rel = c_i - c_j + w - 1,
     index = sum_d rel_d * prod_{e > d} (2 w_e - 1); only the first ntok tokens are used. */
  int i, j, d, n = g->ntok, ci[3], cj[3], mult[3];
  mult[g->ndim - 1] = 1;
  for (d = g->ndim - 2; d >= 0; --d) mult[d] = mult[d + 1] * (2 * g->window_cfg[d + 1] - 1);
  for (i = 0; i < n; ++i) {
    int r = i;
    for (d = g->ndim - 1; d >= 0; --d) ci[d] = r % g->window_cfg[d], r /= g->window_cfg[d];
    for (j = 0; j < n; ++j) {
      int s = j, idx = 0;
      for (d = g->ndim - 1; d >= 0; --d) cj[d] = s % g->window_cfg[d], s /= g->window_cfg[d];
      for (d = 0; d < g->ndim; ++d) idx += (ci[d] - cj[d] + g->window_cfg[d] - 1) * mult[d];
      index[(size_t)i * n + j] = idx;
    }
  }
}

/* Python's resolution of a negative slice bound -k (k >= 0) on a length-P axis: -0 is 0. */
static int ioupos__attn_pyneg(int k, int P) { return k > 0 ? (P - k > 0 ? P - k : 0) : 0; }

/* compute_mask's region of padded position p on axis d: the last of slice(-w), slice(-w, -s),
   slice(-s, None) that contains p (later assignments overwrite earlier ones). */
static int ioupos__attn_region(const ioupos_swin_geom *g, int d, int p) {
  int P = g->padded[d], w = g->window[d], s = g->shift[d], r = -1;
  int a = ioupos__attn_pyneg(w, P), b = ioupos__attn_pyneg(s, P);
  if (p < a) r = 0;            /* slice(None, -w) = [0, a) */
  if (p >= a && p < b) r = 1;  /* slice(-w, -s) = [a, b) */
  if (p >= b) r = 2;           /* slice(-s, None) = [b, P) */
  return r;
}

/* Padded-frame position (per axis) of token t of window w (w inside one image): windows and the
   tokens inside them are both in raster order, last axis fastest, as window_partition's view and
   permute lay them out. */
static void ioupos__attn_token_pos(int *p, const ioupos_swin_geom *g, int w, int t) {
  int d;
  for (d = g->ndim - 1; d >= 0; --d) {
    p[d] = (w % g->grid[d]) * g->window[d] + t % g->window[d];
    w /= g->grid[d];
    t /= g->window[d];
  }
}

/* Why a mask: after the cyclic roll, the windows along the far edges hold tokens from opposite
   ends of the map, which are not neighbours. Swin labels each padded position with its region
   (3 per axis, combined in base 3) and gives -100 to pairs of different regions, weighted by
   exp(-100), about 4e-44, against an equal score inside the region: after the softmax each
   token attends only within its own region.
   mask[nwin][ntok][ntok], overwritten; the same for every image of the batch. */
IOUPOS_DEF void ioupos_swin_attn_mask(float *mask, const ioupos_swin_geom *g) {
  int w, i, j, d, n = g->ntok, p[3];
  for (w = 0; w < g->nwin; ++w) {
    float *m = mask + (size_t)w * n * n;
    for (i = 0; i < n; ++i) {
      int ri = 0;
      ioupos__attn_token_pos(p, g, w, i);
      for (d = 0; d < g->ndim; ++d) ri = ri * 3 + ioupos__attn_region(g, d, p[d]);
      for (j = 0; j < n; ++j) {
        int rj = 0;
        ioupos__attn_token_pos(p, g, w, j);
        for (d = 0; d < g->ndim; ++d) rj = rj * 3 + ioupos__attn_region(g, d, p[d]);
        m[(size_t)i * n + j] = ri == rj ? 0.0f : IOUPOS_SWIN_MASK_VALUE;
      }
    }
  }
}

/* Row of x [batch, size..., C] that token t of window wg (over the whole batch) holds, or -1 for
   a padding token: the shifted frame position p reads the padded position (p + s) mod P. */
static long ioupos__attn_source(const ioupos_swin_geom *g, int wg, int t) {
  int d, p[3], b = wg / g->nwin;
  long row = b;
  ioupos__attn_token_pos(p, g, wg % g->nwin, t);
  for (d = 0; d < g->ndim; ++d) {
    int q = (p[d] + g->shift[d]) % g->padded[d];
    if (q >= g->size[d]) return -1;
    row = row * g->size[d] + q;
  }
  return row;
}

/* Pad, roll by -shift and partition are one index map (ioupos__attn_source), so the windows are
   gathered straight from x, with no padded or rolled copy of the map. windows overwritten,
   padding tokens 0. */
IOUPOS_DEF void ioupos_window_partition_forward(float *windows, const float *x,
                                                const ioupos_swin_geom *g, int C) {
  int wg, nw = g->batch * g->nwin;
  IOUPOS__PFOR((double)nw * g->ntok * C)
  for (wg = 0; wg < nw; ++wg) {
    int t, c;
    for (t = 0; t < g->ntok; ++t) {
      long src = ioupos__attn_source(g, wg, t);
      float *o = windows + ((size_t)wg * g->ntok + t) * C;
      if (src < 0) {
        for (c = 0; c < C; ++c) o[c] = 0.0f;
      } else {
        memcpy(o, x + (size_t)src * C, sizeof(float) * (size_t)C);
      }
    }
  }
}

/* The transpose of the gather above: each window token's gradient is added back to the row of x
   it was read from (ACCUMULATES); padding tokens were constants and their gradients are dropped.
   (each row of x is held by exactly one token: windows in parallel do not collide) */
IOUPOS_DEF void ioupos_window_partition_backward(float *dx, const float *dwindows,
                                                 const ioupos_swin_geom *g, int C) {
  int wg, nw = g->batch * g->nwin;
  IOUPOS__PFOR((double)nw * g->ntok * C)
  for (wg = 0; wg < nw; ++wg) {
    int t, c;
    for (t = 0; t < g->ntok; ++t) {
      long src = ioupos__attn_source(g, wg, t);
      const float *o = dwindows + ((size_t)wg * g->ntok + t) * C;
      if (src >= 0)
        for (c = 0; c < C; ++c) dx[(size_t)src * C + c] += o[c];
    }
  }
}

/* Reverse, roll by +shift and crop: the inverse of the partition's index map. Every row of x
   is held by exactly one token, so every row is overwritten; padding tokens are cropped away. */
IOUPOS_DEF void ioupos_window_reverse_forward(float *x, const float *windows,
                                              const ioupos_swin_geom *g, int C) {
  int wg, nw = g->batch * g->nwin;
  IOUPOS__PFOR((double)nw * g->ntok * C)
  for (wg = 0; wg < nw; ++wg) {
    int t;
    for (t = 0; t < g->ntok; ++t) {
      long dst = ioupos__attn_source(g, wg, t);
      if (dst >= 0)
        memcpy(x + (size_t)dst * C, windows + ((size_t)wg * g->ntok + t) * C,
               sizeof(float) * (size_t)C);
    }
  }
}

/* The transpose of the copy above: each real token gains the gradient of the row it was copied
   to (ACCUMULATES into dwindows); padding tokens get nothing. */
IOUPOS_DEF void ioupos_window_reverse_backward(float *dwindows, const float *dx,
                                               const ioupos_swin_geom *g, int C) {
  int wg, nw = g->batch * g->nwin;
  IOUPOS__PFOR((double)nw * g->ntok * C)
  for (wg = 0; wg < nw; ++wg) {
    int t, c;
    for (t = 0; t < g->ntok; ++t) {
      long src = ioupos__attn_source(g, wg, t);
      float *o = dwindows + ((size_t)wg * g->ntok + t) * C;
      if (src >= 0)
        for (c = 0; c < C; ++c) o[c] += dx[(size_t)src * C + c];
    }
  }
}

/* qkv (3C) and y (C) per token, and one N x N probability matrix per window and head */
IOUPOS_DEF size_t ioupos_window_attention_acts_size(int BW, int N, int C, int NH) {
  return (size_t)BW * N * 4 * C + (size_t)BW * NH * N * N;
}

IOUPOS_DEF size_t ioupos_window_attention_scratch_size(int BW, int N, int C, int NH) {
  (void)NH; /* dqkv [BW, N, 3C] and dy [BW, N, C]; the rest lives in per-call buffers */
  return (size_t)BW * N * 4 * C;
}

#if IOUPOS__LAYERS_FAST /* defined under "fast paths" at the end of the section */
static int ioupos__window_attention_forward_fast(float *out, float *acts, const float *inp,
                                                 const float *qkv_w, const float *qkv_b,
                                                 const float *proj_w, const float *proj_b,
                                                 const float *table, const int *index,
                                                 const float *mask, int BW, int N, int C, int NH,
                                                 int nW);
static int ioupos__window_attention_backward_fast(float *dinp, float *dqkv_w, float *dqkv_b,
                                                  float *dproj_w, float *dproj_b, float *dtable,
                                                  float *scratch, const float *dout,
                                                  const float *acts, const float *inp,
                                                  const float *qkv_w, const float *proj_w,
                                                  const int *index, int BW, int N, int C, int NH);
#endif

/* Windows per unit of work (a unit is these windows for one head). A constant: the relative
   position table's gradient is summed per unit, then over units in order. */
#define IOUPOS__ATTN_WCHUNK 32

/* out [T, OC] = inp [T, IC] W [OC, IC]^T + b [OC] (b may be NULL), overwritten. The bias is added
   after the product, in its own rounding (ioupos_linear_forward preloads it into out and lets the
   GEMM's FMA add it): the same value up to float rounding. Returns the GEMM's status. */
static int ioupos__attn_linear_forward(float *out, const float *inp, const float *w,
                                       const float *b, int T, int IC, int OC) {
  int t, st = ioupos_gemm(0, 1, T, OC, IC, 1.0f, inp, IC, w, IC, 0.0f, out, OC);
  if (st || !b) return st;
  IOUPOS__PFOR((double)T * OC)
  for (t = 0; t < T; ++t) {
    float *o = out + (size_t)t * OC;
    int c;
    for (c = 0; c < OC; ++c) o[c] += b[c];
  }
  return IOUPOS_OK;
}

/* dinp [T, IC] += dout W (dinp may be NULL); dw [OC, IC] += dout^T inp; db [OC] += column sums
   (db may be NULL). ACCUMULATES. */
static int ioupos__attn_linear_backward(float *dinp, float *dw, float *db, const float *dout,
                                        const float *inp, const float *w, int T, int IC, int OC) {
  int st = dinp ? ioupos_gemm(0, 0, T, IC, OC, 1.0f, dout, OC, w, IC, 1.0f, dinp, IC) : 0;
  if (!st) st = ioupos_gemm(1, 0, OC, IC, T, 1.0f, dout, OC, inp, IC, 1.0f, dw, IC);
  if (st || !db) return st;
  ioupos__colsum_add(db, dout, (size_t)T, OC);
  return IOUPOS_OK;
}

/* p[0..N) = softmax(p) in place: float, the sum of the exponentials in double. The max is
   subtracted first (no overflow; the masked scores, about 100 below the rest, come out near
   4e-44, as in torch's float softmax). expf, not exp: each exponential is a float, as in the
   fast path's vector exp, which rounds its double result to float before the sum. */
IOUPOS__REF void ioupos__attn_softmax_ref(float *p, int N) {
  float mx = -INFINITY;
  double sum = 0.0;
  int j;
  for (j = 0; j < N; ++j) mx = p[j] > mx ? p[j] : mx;
  for (j = 0; j < N; ++j) {
    p[j] = expf(p[j] - mx);
    sum += p[j];
  }
  for (j = 0; j < N; ++j) p[j] = (float)(p[j] / sum);
}

/* One row of the softmax backward: d[0..N) holds dP and becomes dS = P (dP - sum_j P dP);
   t[j] += dS[j] (the bias's gradient, summed in double).
   Why: the softmax's Jacobian is diag(P) - P P^T. The bias and the mask are added to the scores,
   so the score gradient dS is their gradient too; the mask is a constant and only the bias's
   is kept. */
IOUPOS__REF void ioupos__attn_dsoftmax_ref(float *d, const float *p, double *t, int N) {
  double dot = 0.0;
  int j;
  for (j = 0; j < N; ++j) dot += (double)p[j] * d[j];
  for (j = 0; j < N; ++j) {
    d[j] = (float)(p[j] * (d[j] - dot));
    t[j] += d[j];
  }
}

/* out[BW][N][C] for BW windows of N tokens, NH heads of hd = C / NH channels (q, k, v of head h
   at columns h hd of their thirds of qkv):
     qkv = inp W_qkv^T + b_qkv                                   [BW][N][3C], kept in acts
     P[b][h][i][j] = softmax_j(scale (q_i . k_j) + table[index[i][j]][h] + mask[b % nW][i][j])
     y[b][i][h hd + d] = sum_j P[i][j] v_j[d];   out = y W_proj^T + b_proj
   scale = hd^-1/2 multiplies the float dot product (as a GEMM's alpha); mask may be NULL. acts
   keeps qkv, P [BW][NH][N][N] and y [BW][N][C] for backward.
   Why the scale: for q, k of unit-variance entries q . k has variance hd; hd^-1/2 brings it back
   to 1, so the softmax does not start saturated (Vaswani et al.). The relative position bias
   adds a learned term per head and relative offset, shared by all windows (Swin's B in
   softmax(Q K^T / sqrt(d) + B) V). The dot products are float sums in the fast path's order
   (its kernels fuse each step into an FMA). Returns 0 or the linear layers' status. */
IOUPOS__REF int ioupos__window_attention_forward_ref(float *out, float *acts, const float *inp,
                                                     const float *qkv_w, const float *qkv_b,
                                                     const float *proj_w, const float *proj_b,
                                                     const float *table, const int *index,
                                                     const float *mask, int BW, int N, int C,
                                                     int NH, int nW) {
  const int C3 = 3 * C, hd = C / NH;
  const float scale = (float)(1.0 / sqrt((double)hd));
  float *qkv = acts, *att = acts + (size_t)BW * N * C3, *y = att + (size_t)BW * NH * N * N;
  int b, h, i, j, d, st = ioupos__attn_linear_forward(qkv, inp, qkv_w, qkv_b, BW * N, C, C3);
  if (st) return st;
  for (b = 0; b < BW; ++b)
    for (h = 0; h < NH; ++h)
      for (i = 0; i < N; ++i) {
        const float *w = qkv + (size_t)b * N * C3 + h * hd; /* token t: q at w + t 3C, k, v after */
        const float *q = w + (size_t)i * C3, *k = w + C, *v = w + 2 * C;
        float *P = att + (((size_t)b * NH + h) * N + i) * N;
        for (j = 0; j < N; ++j) {
          float s = 0.0f;
          for (d = 0; d < hd; ++d) s += q[d] * k[(size_t)j * C3 + d];
          P[j] = scale * s + table[(size_t)index[(size_t)i * N + j] * NH + h];
          if (mask) P[j] += mask[((size_t)(b % nW) * N + i) * N + j];
        }
        ioupos__attn_softmax_ref(P, N);
        for (d = 0; d < hd; ++d) {
          float s = 0.0f;
          for (j = 0; j < N; ++j) s += P[j] * v[(size_t)j * C3 + d];
          y[((size_t)b * N + i) * C + h * hd + d] = s;
        }
      }
  return ioupos__attn_linear_forward(out, y, proj_w, proj_b, BW * N, C, C);
}

/* Checks what the kernels rely on (heads divide C; a mask needs nW >= 1, b % nW), then the fast
   path or the reference. IOUPOS_EINVAL, or the path's status (IOUPOS_ENOMEM from the GEMM's or
   the fast path's buffers). */
IOUPOS_DEF int ioupos_window_attention_forward(float *out, float *acts, const float *inp,
                                               const float *qkv_w, const float *qkv_b,
                                               const float *proj_w, const float *proj_b,
                                               const float *table, const int *index,
                                               const float *mask, int BW, int N, int C, int NH,
                                               int nW) {
  if (NH < 1 || C % NH != 0 || (mask && nW < 1))
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_window_attention_forward: C %d is not a multiple "
                        "of heads %d, or mask without windows (nW %d)", C, NH, nW);
  return IOUPOS__IMPL(ioupos__window_attention_forward)(out, acts, inp, qkv_w, qkv_b, proj_w,
                                                        proj_b, table, index, mask, BW, N, C, NH,
                                                        nW);
}

/* Gradients of ioupos__window_attention_forward_ref (ACCUMULATES into dinp, every parameter
   gradient and dtable; dinp, dqkv_b, dproj_b may be NULL), through scratch = dqkv [BW][N][3C],
   dy [BW][N][C]:
     dy = dout W_proj;  dP_ij = dy_i . v_j;  dS_ij = P_ij (dP_ij - sum_j P_ij dP_ij)
     dv_i = sum_j P_ji dy_j;  dq_i = scale sum_j dS_ij k_j;  dk_i = scale sum_j dS_ji q_j
     dtable[index[i][j]][h] += sum_b dS[b][h][i][j]
   The table's sums in double, over the windows of each chunk of IOUPOS__ATTN_WCHUNK per score
   position, then over positions per table row, then over the chunks: the fast path's order.
   Why: y = P v is a product, so dP = dy v^T and dv = P^T dy; S = scale q k^T + bias is bilinear
   in q and k, so dq = scale dS k and dk = scale dS^T q; the bias is gathered from the table by
   index, so its gradient is scattered back by index (many (i, j) share a table row: a sum).
   dqkv and dy in scratch are overwritten (the heads' columns partition them). One allocation per
   call (the table's partial sums and dS [N][N]): IOUPOS_ENOMEM if it fails, and then
   dproj_w, dproj_b have already been accumulated and nothing else has. */
IOUPOS__REF int ioupos__window_attention_backward_ref(float *dinp, float *dqkv_w, float *dqkv_b,
                                                      float *dproj_w, float *dproj_b,
                                                      float *dtable, float *scratch,
                                                      const float *dout, const float *acts,
                                                      const float *inp, const float *qkv_w,
                                                      const float *proj_w, const int *index,
                                                      int BW, int N, int C, int NH) {
  const int C3 = 3 * C, hd = C / NH;
  const float scale = (float)(1.0 / sqrt((double)hd));
  const float *qkv = acts, *att = acts + (size_t)BW * N * C3, *y = att + (size_t)BW * NH * N * N;
  float *dqkv = scratch, *dy = scratch + (size_t)BW * N * C3, *dS;
  size_t nn = (size_t)N * N, e;
  double *acc, *tot, *row;
  int b0, b, h, i, j, d, r, rows = 0, st;
  st = ioupos_gemm(0, 0, BW * N, C, C, 1.0f, dout, C, proj_w, C, 0.0f, dy, C);
  if (!st) st = ioupos__attn_linear_backward(NULL, dproj_w, dproj_b, dout, y, proj_w, BW * N, C, C);
  if (st) return st;
  for (e = 0; e < nn; ++e) rows = index[e] + 1 > rows ? index[e] + 1 : rows;
  /* acc [N][N]: a chunk's sums per score position; tot [rows][NH], row [rows]; dS [N][N] */
  acc = (double *)IOUPOS_MALLOC(sizeof(double) * (nn + (size_t)rows * (NH + 1)) +
                                sizeof(float) * nn);
  if (!acc) return ioupos__fail(IOUPOS_ENOMEM, "ioupos_window_attention_backward: out of memory");
  tot = acc + nn, row = tot + (size_t)rows * NH, dS = (float *)(row + rows);
  for (e = 0; e < (size_t)rows * NH; ++e) tot[e] = 0.0;
  for (h = 0; h < NH; ++h)
    for (b0 = 0; b0 < BW; b0 += IOUPOS__ATTN_WCHUNK) {
      for (e = 0; e < nn; ++e) acc[e] = 0.0;
      for (b = b0; b < BW && b < b0 + IOUPOS__ATTN_WCHUNK; ++b) {
        const float *P = att + ((size_t)b * NH + h) * nn, *dY = dy + (size_t)b * N * C + h * hd;
        const float *q = qkv + (size_t)b * N * C3 + h * hd, *k = q + C, *v = q + 2 * C;
        float *dq = dqkv + (size_t)b * N * C3 + h * hd, *dk = dq + C, *dv = dq + 2 * C;
        for (i = 0; i < N; ++i) {
          for (j = 0; j < N; ++j) {
            float s = 0.0f;
            for (d = 0; d < hd; ++d) s += dY[(size_t)i * C + d] * v[(size_t)j * C3 + d];
            dS[(size_t)i * N + j] = s;
          }
          ioupos__attn_dsoftmax_ref(dS + (size_t)i * N, P + (size_t)i * N, acc + (size_t)i * N, N);
        }
        for (i = 0; i < N; ++i)
          for (d = 0; d < hd; ++d) {
            float sv = 0.0f, sq = 0.0f, sk = 0.0f;
            for (j = 0; j < N; ++j) {
              sv += P[(size_t)j * N + i] * dY[(size_t)j * C + d];
              sq += dS[(size_t)i * N + j] * k[(size_t)j * C3 + d];
              sk += dS[(size_t)j * N + i] * q[(size_t)j * C3 + d];
            }
            dv[(size_t)i * C3 + d] = sv;
            dq[(size_t)i * C3 + d] = scale * sq;
            dk[(size_t)i * C3 + d] = scale * sk;
          }
      }
      for (r = 0; r < rows; ++r) row[r] = 0.0;
      for (e = 0; e < nn; ++e) row[index[e]] += acc[e];
      for (r = 0; r < rows; ++r) tot[(size_t)r * NH + h] += row[r];
    }
  for (e = 0; e < (size_t)rows * NH; ++e) dtable[e] += (float)tot[e];
  IOUPOS_FREE(acc);
  return ioupos__attn_linear_backward(dinp, dqkv_w, dqkv_b, dqkv, inp, qkv_w, BW * N, C, C3);
}

/* The forward's checks on the heads, then the fast path or the reference. */
IOUPOS_DEF int ioupos_window_attention_backward(float *dinp, float *dqkv_w, float *dqkv_b,
                                                float *dproj_w, float *dproj_b, float *dtable,
                                                float *scratch, const float *dout,
                                                const float *acts, const float *inp,
                                                const float *qkv_w, const float *proj_w,
                                                const int *index, int BW, int N, int C, int NH) {
  if (NH < 1 || C % NH != 0)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_window_attention_backward: C %d is not a multiple "
                        "of heads %d", C, NH);
  return IOUPOS__IMPL(ioupos__window_attention_backward)(dinp, dqkv_w, dqkv_b, dproj_w, dproj_b,
                                                         dtable, scratch, dout, acts, inp, qkv_w,
                                                         proj_w, index, BW, N, C, NH);
}

/* The partitioned windows (the qkv projection's input, which its weight gradient needs), then
   the window attention's own acts. */
IOUPOS_DEF size_t ioupos_swin_attention_acts_size(const ioupos_swin_geom *g, int C, int NH) {
  int BW = g->batch * g->nwin;
  return (size_t)BW * g->ntok * C + ioupos_window_attention_acts_size(BW, g->ntok, C, NH);
}

IOUPOS_DEF size_t ioupos_swin_attention_scratch_size(const ioupos_swin_geom *g, int C, int NH) {
  int BW = g->batch * g->nwin;
  /* two window-shaped buffers (dwindows out / in, or the forward's windows out) + the window
     attention's backward scratch */
  return 2 * (size_t)BW * g->ntok * C + ioupos_window_attention_scratch_size(BW, g->ntok, C, NH);
}

/* out overwritten; the windows are kept at the front of acts, the attention's output passes
   through scratch. The mask goes to the kernels only for a shifted geometry: MONAI computes and
   applies it only when some effective shift is > 0. Returns the window attention's status. */
IOUPOS_DEF int ioupos_swin_attention_forward(float *out, float *acts, float *scratch,
                                             const float *x, const float *qkv_w,
                                             const float *qkv_b, const float *proj_w,
                                             const float *proj_b, const float *table,
                                             const int *index, const float *mask,
                                             const ioupos_swin_geom *g, int C, int NH) {
  int BW = g->batch * g->nwin, st;
  float *win = acts, *wout = scratch;
  ioupos_window_partition_forward(win, x, g, C);
  st = ioupos_window_attention_forward(wout, acts + (size_t)BW * g->ntok * C, win, qkv_w, qkv_b,
                                       proj_w, proj_b, table, index, g->shifted ? mask : NULL,
                                       BW, g->ntok, C, NH, g->nwin);
  if (st) return st;
  ioupos_window_reverse_forward(out, wout, g, C);
  return IOUPOS_OK;
}

/* The three stages in reverse through scratch: dwout [BW][N][C] (the attention output's
   gradient) and dwin [BW][N][C] (its input's), both zeroed because every stage accumulates, then
   the window attention's own scratch. dx and the parameter gradients ACCUMULATE. */
IOUPOS_DEF int ioupos_swin_attention_backward(float *dx, float *dqkv_w, float *dqkv_b,
                                              float *dproj_w, float *dproj_b, float *dtable,
                                              float *scratch, const float *dout,
                                              const float *acts, const float *qkv_w,
                                              const float *proj_w, const int *index,
                                              const ioupos_swin_geom *g, int C, int NH) {
  int BW = g->batch * g->nwin, st;
  size_t nw = (size_t)BW * g->ntok * C;
  float *dwout = scratch, *dwin = scratch + nw;
  memset(dwout, 0, sizeof(float) * nw * 2);
  ioupos_window_reverse_backward(dwout, dout, g, C);
  st = ioupos_window_attention_backward(dwin, dqkv_w, dqkv_b, dproj_w, dproj_b, dtable,
                                        scratch + 2 * nw, dwout, acts + nw, acts, qkv_w, proj_w,
                                        index, BW, g->ntok, C, NH);
  if (st) return st;
  ioupos_window_partition_backward(dx, dwin, g, C);
  return IOUPOS_OK;
}

/* ==== 12. fast paths =============================================================================
   Window attention with the windows in chunks of IOUPOS__ATTN_WCHUNK per head on the OpenMP
   threads, the per-window products as direct register-tiled kernels on (window, head) pairs read
   in place from qkv, and the bias + mask + softmax of a score row fused and vectorised (AVX2+FMA,
   AVX-512 on top; without AVX2 a portable tiled kernel and the reference's rows). The sums run in
   the reference's order; with AVX2 the products are FMAs and exp is section 11's vector exp, so
   the results differ from the reference's by rounding (tests/test_threads.c, part 6). */
#if IOUPOS__LAYERS_FAST

/* -- the small products of one window and head, without packing
   O[i][c] = alpha * sum_{p < K} A[i * ai + p * ap] * B[p * ldb + c]   for i < M, c < nvalid.
   A is read in place through its two strides (a transposed operand is ap = rows, ai = 1); the
   rows of B must be readable for np columns (np a multiple of 8, nvalid <= np). Each element is
   one sum over p in order (an FMA chain with AVX2+FMA, products then sums otherwise), scaled by
   alpha at the end: the same arithmetic wherever its tile lies. */
#define IOUPOS__AMM_MR 6
#if IOUPOS__GEMM_AVX2
/* o[0..nv) = the first nv lanes of v (all 8 when nv >= 8): columns past nvalid are never
   written, so a tile may hang over the end of a row of the output */
static void ioupos__amm_store(float *o, __m256 v, int nv) {
  if (nv >= 8) {
    _mm256_storeu_ps(o, v);
  } else if (nv > 0) {
    float t[8];
    int q;
    _mm256_storeu_ps(t, v);
    for (q = 0; q < nv; ++q) o[q] = t[q];
  }
}

static void ioupos__amm(int M, int K, int np, int nvalid, float alpha, const float *A,
                        ptrdiff_t ai, ptrdiff_t ap, const float *B, ptrdiff_t ldb, float *O,
                        ptrdiff_t ldo) {
  const __m256 va = _mm256_set1_ps(alpha);
  int i0, c0, p, r, last_c = 0, last_i = 0;
  /* Edges: when there are at least 16 columns (6 rows), the last block (tile) is shifted back to
     end at np (M), overlapping the one before: its overlapping elements are computed again, with
     the same arithmetic, so they get the same values. */
#if IOUPOS__GEMM_AVX512
  if (np >= 16 && M >= 8) { /* 8 x 16 tiles of 512-bit rows: the same sums */
    const __m512 vz = _mm512_set1_ps(alpha);
    for (c0 = 0, last_c = 0; !last_c; c0 += 16) {
      int nv;
      if (c0 + 16 > np) c0 = np - 16;
      last_c = c0 + 16 >= np;
      nv = nvalid - c0;
      if (nv <= 0) continue;
      for (i0 = 0, last_i = 0; !last_i; i0 += 8) {
        const float *a, *b = B + c0;
        float *o;
        __m512 x0 = _mm512_setzero_ps(), x1 = _mm512_setzero_ps(), x2 = _mm512_setzero_ps();
        __m512 x3 = _mm512_setzero_ps(), x4 = _mm512_setzero_ps(), x5 = _mm512_setzero_ps();
        __m512 x6 = _mm512_setzero_ps(), x7 = _mm512_setzero_ps();
        if (i0 + 8 > M) i0 = M - 8;
        last_i = i0 + 8 >= M;
        a = A + i0 * ai;
        o = O + i0 * ldo + c0;
        for (p = 0; p < K; ++p) {
          const float *x = a + p * ap;
          __m512 bv = _mm512_loadu_ps(b + p * ldb);
          x0 = _mm512_fmadd_ps(_mm512_set1_ps(x[0]), bv, x0);
          x1 = _mm512_fmadd_ps(_mm512_set1_ps(x[ai]), bv, x1);
          x2 = _mm512_fmadd_ps(_mm512_set1_ps(x[2 * ai]), bv, x2);
          x3 = _mm512_fmadd_ps(_mm512_set1_ps(x[3 * ai]), bv, x3);
          x4 = _mm512_fmadd_ps(_mm512_set1_ps(x[4 * ai]), bv, x4);
          x5 = _mm512_fmadd_ps(_mm512_set1_ps(x[5 * ai]), bv, x5);
          x6 = _mm512_fmadd_ps(_mm512_set1_ps(x[6 * ai]), bv, x6);
          x7 = _mm512_fmadd_ps(_mm512_set1_ps(x[7 * ai]), bv, x7);
        }
        if (nv >= 16) {
          _mm512_storeu_ps(o, _mm512_mul_ps(vz, x0));
          _mm512_storeu_ps(o + ldo, _mm512_mul_ps(vz, x1));
          _mm512_storeu_ps(o + 2 * ldo, _mm512_mul_ps(vz, x2));
          _mm512_storeu_ps(o + 3 * ldo, _mm512_mul_ps(vz, x3));
          _mm512_storeu_ps(o + 4 * ldo, _mm512_mul_ps(vz, x4));
          _mm512_storeu_ps(o + 5 * ldo, _mm512_mul_ps(vz, x5));
          _mm512_storeu_ps(o + 6 * ldo, _mm512_mul_ps(vz, x6));
          _mm512_storeu_ps(o + 7 * ldo, _mm512_mul_ps(vz, x7));
        } else {
          const __mmask16 m = (__mmask16)((1u << nv) - 1u);
          _mm512_mask_storeu_ps(o, m, _mm512_mul_ps(vz, x0));
          _mm512_mask_storeu_ps(o + ldo, m, _mm512_mul_ps(vz, x1));
          _mm512_mask_storeu_ps(o + 2 * ldo, m, _mm512_mul_ps(vz, x2));
          _mm512_mask_storeu_ps(o + 3 * ldo, m, _mm512_mul_ps(vz, x3));
          _mm512_mask_storeu_ps(o + 4 * ldo, m, _mm512_mul_ps(vz, x4));
          _mm512_mask_storeu_ps(o + 5 * ldo, m, _mm512_mul_ps(vz, x5));
          _mm512_mask_storeu_ps(o + 6 * ldo, m, _mm512_mul_ps(vz, x6));
          _mm512_mask_storeu_ps(o + 7 * ldo, m, _mm512_mul_ps(vz, x7));
        }
      }
    }
    return;
  }
#endif
  for (c0 = 0; !last_c && c0 < np && c0 < nvalid; c0 += 16) {
    int two, nv;
    const float *b;
    if (np >= 16 && c0 + 16 > np) c0 = np - 16;
    last_c = c0 + 16 >= np;
    two = np - c0 >= 16, nv = nvalid - c0, b = B + c0;
    for (i0 = 0, last_i = 0; !last_i && i0 < M; i0 += IOUPOS__AMM_MR) {
      int mr;
      const float *a;
      float *o;
      if (M >= IOUPOS__AMM_MR && i0 + IOUPOS__AMM_MR > M) i0 = M - IOUPOS__AMM_MR;
      last_i = i0 + IOUPOS__AMM_MR >= M;
      mr = M - i0 < IOUPOS__AMM_MR ? M - i0 : IOUPOS__AMM_MR;
      a = A + i0 * ai;
      o = O + i0 * ldo + c0;
      if (mr == IOUPOS__AMM_MR && two) {
        __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
        __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
        __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
        __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
        __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
        __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
        for (p = 0; p < K; ++p) {
          const float *bp = b + p * ldb, *x = a + p * ap;
          __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8), s;
          s = _mm256_broadcast_ss(x);
          c00 = _mm256_fmadd_ps(s, b0, c00);
          c01 = _mm256_fmadd_ps(s, b1, c01);
          s = _mm256_broadcast_ss(x + ai);
          c10 = _mm256_fmadd_ps(s, b0, c10);
          c11 = _mm256_fmadd_ps(s, b1, c11);
          s = _mm256_broadcast_ss(x + 2 * ai);
          c20 = _mm256_fmadd_ps(s, b0, c20);
          c21 = _mm256_fmadd_ps(s, b1, c21);
          s = _mm256_broadcast_ss(x + 3 * ai);
          c30 = _mm256_fmadd_ps(s, b0, c30);
          c31 = _mm256_fmadd_ps(s, b1, c31);
          s = _mm256_broadcast_ss(x + 4 * ai);
          c40 = _mm256_fmadd_ps(s, b0, c40);
          c41 = _mm256_fmadd_ps(s, b1, c41);
          s = _mm256_broadcast_ss(x + 5 * ai);
          c50 = _mm256_fmadd_ps(s, b0, c50);
          c51 = _mm256_fmadd_ps(s, b1, c51);
        }
#define IOUPOS__AMM_ROW(rr, x0, x1)                                      \
  do {                                                                 \
    ioupos__amm_store(o + (rr) * ldo, _mm256_mul_ps(va, x0), nv);      \
    ioupos__amm_store(o + (rr) * ldo + 8, _mm256_mul_ps(va, x1), nv - 8); \
  } while (0)
        IOUPOS__AMM_ROW(0, c00, c01);
        IOUPOS__AMM_ROW(1, c10, c11);
        IOUPOS__AMM_ROW(2, c20, c21);
        IOUPOS__AMM_ROW(3, c30, c31);
        IOUPOS__AMM_ROW(4, c40, c41);
        IOUPOS__AMM_ROW(5, c50, c51);
#undef IOUPOS__AMM_ROW
      } else { /* fewer rows, or one vector of columns: the same sums, tile by tile */
        __m256 acc[IOUPOS__AMM_MR][2];
        for (r = 0; r < mr; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        for (p = 0; p < K; ++p) {
          const float *bp = b + p * ldb, *x = a + p * ap;
          __m256 b0 = _mm256_loadu_ps(bp), b1 = two ? _mm256_loadu_ps(bp + 8) : b0;
          for (r = 0; r < mr; ++r) {
            __m256 s = _mm256_broadcast_ss(x + r * ai);
            acc[r][0] = _mm256_fmadd_ps(s, b0, acc[r][0]);
            if (two) acc[r][1] = _mm256_fmadd_ps(s, b1, acc[r][1]);
          }
        }
        for (r = 0; r < mr; ++r) {
          ioupos__amm_store(o + r * ldo, _mm256_mul_ps(va, acc[r][0]), nv);
          if (two) ioupos__amm_store(o + r * ldo + 8, _mm256_mul_ps(va, acc[r][1]), nv - 8);
        }
      }
    }
  }
}
#else
static void ioupos__amm(int M, int K, int np, int nvalid, float alpha, const float *A,
                        ptrdiff_t ai, ptrdiff_t ap, const float *B, ptrdiff_t ldb, float *O,
                        ptrdiff_t ldo) {
  int i0, c0, p, r, q;
  for (c0 = 0; c0 < np && c0 < nvalid; c0 += 16) {
    int w = np - c0 >= 16 ? 16 : 8, nv = nvalid - c0 < w ? nvalid - c0 : w;
    for (i0 = 0; i0 < M; i0 += IOUPOS__AMM_MR) {
      int mr = M - i0 < IOUPOS__AMM_MR ? M - i0 : IOUPOS__AMM_MR;
      float acc[IOUPOS__AMM_MR][16];
      memset(acc, 0, sizeof acc);
      for (p = 0; p < K; ++p) {
        const float *bp = B + p * ldb + c0, *x = A + i0 * ai + p * ap;
        for (r = 0; r < mr; ++r) {
          float s = x[r * ai];
          for (q = 0; q < w; ++q) acc[r][q] += s * bp[q];
        }
      }
      for (r = 0; r < mr; ++r)
        for (q = 0; q < nv; ++q) O[(i0 + r) * ldo + c0 + q] = alpha * acc[r][q];
    }
  }
}
#endif

/* dst[d][j] = src[j * ld + d] for d < hd, j < n; zero for n <= j < np */
static void ioupos__attn_transpose(float *dst, const float *src, ptrdiff_t ld, int n, int hd,
                                   int np) {
  int d, j;
  for (d = 0; d < hd; ++d) {
    float *o = dst + (size_t)d * np;
    for (j = 0; j < n; ++j) o[j] = src[j * ld + d];
    for (; j < np; ++j) o[j] = 0.0f;
  }
}

/* dst[j][0..hdp) = src[j * ld + 0..hd) then zeros, j < n */
static void ioupos__attn_pad(float *dst, const float *src, ptrdiff_t ld, int n, int hd, int hdp) {
  int d, j;
  for (j = 0; j < n; ++j) {
    float *o = dst + (size_t)j * hdp;
    for (d = 0; d < hd; ++d) o[d] = src[j * ld + d];
    for (; d < hdp; ++d) o[d] = 0.0f;
  }
}

/* One row of the scores: P[0..N) = softmax(s + bias (+ mask)), s[0..Np) is overwritten; bias is
   -inf and the mask 0 past N. The sum of the exponentials is taken in double.
   Why Np: the vector version runs the row in whole vectors of 8; the -inf bias past N makes
   those lanes' exp exactly 0, so they change neither the max nor the sum, and they are never
   stored into P. */
#if IOUPOS__GEMM_AVX2
static void ioupos__attn_softmax_row(float *P, float *s, const float *bias, const float *mask,
                                     int N, int Np) {
  __m256 m8 = _mm256_set1_ps(-INFINITY);
  ioupos__vd acc[8 / IOUPOS__VD_N], mx, iv;
  double sum, inv, u[8];
  float t[8], mxf;
  int j, l, k;
  for (j = 0; j < Np; j += 8) {
    __m256 v = _mm256_add_ps(_mm256_loadu_ps(s + j), _mm256_loadu_ps(bias + j));
    if (mask) v = _mm256_add_ps(v, _mm256_loadu_ps(mask + j));
    _mm256_storeu_ps(s + j, v);
    m8 = _mm256_max_ps(m8, v);
  }
  _mm256_storeu_ps(t, m8);
  mxf = t[0];
  for (l = 1; l < 8; ++l) mxf = t[l] > mxf ? t[l] : mxf;
  mx = ioupos__vd_set1((double)mxf);
  for (k = 0; k < 8 / IOUPOS__VD_N; ++k) acc[k] = ioupos__vd_set1(0.0);
  /* e = exp(s - max) rounded to float, summed in double: element j into sum j mod 8 */
  for (j = 0; j < Np; j += 8)
    for (k = 0; k < 8 / IOUPOS__VD_N; ++k) {
      float *sj = s + j + k * IOUPOS__VD_N;
      ioupos__vd_storef(sj, ioupos__vd_exp_neg(ioupos__vd_sub(ioupos__vd_loadf(sj), mx)));
      acc[k] = ioupos__vd_add(acc[k], ioupos__vd_loadf(sj));
    }
  for (k = 0; k < 8 / IOUPOS__VD_N; ++k) ioupos__vd_stored(u + k * IOUPOS__VD_N, acc[k]);
  sum = ((u[0] + u[4]) + (u[1] + u[5])) + ((u[2] + u[6]) + (u[3] + u[7]));
  inv = 1.0 / sum;
  iv = ioupos__vd_set1(inv);
  for (j = 0; j + 8 <= N; j += 8)
    for (k = 0; k < 8; k += IOUPOS__VD_N)
      ioupos__vd_storef(P + j + k, ioupos__vd_mul(ioupos__vd_loadf(s + j + k), iv));
  for (; j < N; ++j) P[j] = (float)((double)s[j] * inv);
}

/* One row of the softmax backward: d[0..N) holds dP and becomes dS = P (dP - sum_j P dP);
   t[j] += dS[j] (the table gradient's partial sums). */
static void ioupos__attn_dsoftmax_row(float *d, const float *p, double *t, int N) {
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd(), dv;
  double dot, u[4];
  int j;
  for (j = 0; j + 8 <= N; j += 8) {
    a0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(p + j)), _mm256_cvtps_pd(_mm_loadu_ps(d + j)), a0);
    a1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(p + j + 4)),
                         _mm256_cvtps_pd(_mm_loadu_ps(d + j + 4)), a1);
  }
  _mm256_storeu_pd(u, _mm256_add_pd(a0, a1));
  dot = (u[0] + u[1]) + (u[2] + u[3]);
  for (; j < N; ++j) dot += (double)p[j] * d[j];
  dv = _mm256_set1_pd(dot);
  for (j = 0; j + 8 <= N; j += 8) {
    int h;
    for (h = 0; h < 8; h += 4) {
      __m128 f = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(p + j + h)),
                                               _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(d + j + h)), dv)));
      _mm_storeu_ps(d + j + h, f);
      _mm256_storeu_pd(t + j + h, _mm256_add_pd(_mm256_loadu_pd(t + j + h), _mm256_cvtps_pd(f)));
    }
  }
  for (; j < N; ++j) {
    d[j] = (float)(p[j] * (d[j] - dot));
    t[j] += d[j];
  }
}
#else /* no SIMD kernels: the reference's rows */
static void ioupos__attn_softmax_row(float *P, float *s, const float *bias, const float *mask,
                                     int N, int Np) {
  int j;
  (void)Np;
  for (j = 0; j < N; ++j) P[j] = mask ? s[j] + bias[j] + mask[j] : s[j] + bias[j];
  ioupos__attn_softmax_ref(P, N);
}

static void ioupos__attn_dsoftmax_row(float *d, const float *p, double *t, int N) {
  ioupos__attn_dsoftmax_ref(d, p, t, N);
}
#endif

/* scores, softmax and y for window b, head h (see ioupos_window_attention_forward); bias
   [NH][N][Np] (-inf past N) and mask [nW][N][Np] (0 past N) are the padded copies. ws is this
   thread's k^T [hd][Np], padded v [N][hdp] and scores [N][Np]; v is read in place from qkv when
   hd is a multiple of 8 and copied into rows of hdp otherwise, so the kernel reads whole
   vectors. P and y's columns of head h are overwritten. */
static void ioupos__attn_fwd_one(float *att, float *y, const float *qkv, const float *bias,
                                 const float *mask, float *ws, int b, int h, int N, int C, int NH,
                                 int nW, float scale) {
  const int hd = C / NH, C3 = 3 * C, Np = (N + 7) & ~7, hdp = (hd + 7) & ~7;
  const float *q = qkv + (size_t)b * N * C3 + h * hd, *k = q + C, *v = q + 2 * C;
  const float *bh = bias + (size_t)h * N * Np, *mw = mask ? mask + (size_t)(b % nW) * N * Np : NULL;
  float *P = att + ((size_t)b * NH + h) * N * N, *Kt = ws, *Vp = ws + (size_t)hd * Np;
  float *S = Vp + (size_t)N * hdp;
  int i;
  /* scores = scale q k^T (MONAI scales q first; alpha = scale differs only by rounding) */
  ioupos__attn_transpose(Kt, k, C3, N, hd, Np);
  ioupos__amm(N, hd, Np, Np, scale, q, C3, 1, Kt, Np, S, Np);
  /* + bias + mask, softmax over the row */
  for (i = 0; i < N; ++i)
    ioupos__attn_softmax_row(P + (size_t)i * N, S + (size_t)i * Np, bh + (size_t)i * Np,
                             mw ? mw + (size_t)i * Np : NULL, N, Np);
  /* y[:, h*hd:(h+1)*hd] = P v */
  if (hd % 8 == 0) {
    ioupos__amm(N, N, hd, hd, 1.0f, P, N, 1, v, C3, y + (size_t)b * N * C + h * hd, C);
  } else {
    ioupos__attn_pad(Vp, v, C3, N, hd, hdp);
    ioupos__amm(N, N, hdp, hd, 1.0f, P, N, 1, Vp, hdp, y + (size_t)b * N * C + h * hd, C);
  }
}

/* The reference's computation in units of (a chunk of IOUPOS__ATTN_WCHUNK windows, one head) on
   the threads. The bias [NH][N][Np] is gathered from the table once per call, not per window,
   and the mask is padded beside it. IOUPOS_ENOMEM if that per-call block cannot be allocated
   (qkv in acts is written by then); otherwise the GEMMs' status. */
static int ioupos__window_attention_forward_fast(float *out, float *acts, const float *inp,
                                                 const float *qkv_w, const float *qkv_b,
                                                 const float *proj_w, const float *proj_b,
                                                 const float *table, const int *index,
                                                 const float *mask, int BW, int N, int C, int NH,
                                                 int nW) {
  const int C3 = 3 * C;
  float *qkv = acts, *att = acts + (size_t)BW * N * C3, *y = att + (size_t)BW * NH * N * N;
  float *bias, *maskp = NULL, *ws;
  size_t wsn, nb, nm;
  void *raw;
  int hd, Np, hdp, h, i, j, st, nth, units;
  float scale;
  hd = C / NH, Np = (N + 7) & ~7, hdp = (hd + 7) & ~7;
  scale = (float)(1.0 / sqrt((double)hd));
  st = ioupos__attn_linear_forward(qkv, inp, qkv_w, qkv_b, BW * N, C, C3);
  if (st) return st;
  /* shared: bias[h][i][j] = table[index[i][j]][h] and the mask, rows padded to Np (bias -inf,
     mask 0); per thread: k^T [hd][Np], padded v [N][hdp], scores [N][Np] */
  nth = IOUPOS__MAX_THREADS();
  nb = ((size_t)NH * N * Np + 15) & ~(size_t)15;
  nm = mask ? ((size_t)nW * N * Np + 15) & ~(size_t)15 : 0;
  wsn = ((size_t)hd * Np + (size_t)N * hdp + (size_t)N * Np + 15) & ~(size_t)15;
  raw = IOUPOS_MALLOC(sizeof(float) * (nb + nm + (size_t)nth * wsn) + 64);
  if (!raw)
    return ioupos__fail(IOUPOS_ENOMEM, "ioupos_window_attention_forward: out of memory for its "
                        "%d thread buffers", nth);
  bias = ioupos__gemm_align(raw);
  if (mask) maskp = bias + nb;
  ws = bias + nb + nm;
  for (h = 0; h < NH; ++h)
    for (i = 0; i < N; ++i)
      for (j = 0; j < Np; ++j)
        bias[((size_t)h * N + i) * Np + j] =
            j < N ? table[(size_t)index[(size_t)i * N + j] * NH + h] : -INFINITY;
  if (mask)
    for (h = 0; h < nW; ++h)
      for (i = 0; i < N; ++i)
        for (j = 0; j < Np; ++j)
          maskp[((size_t)h * N + i) * Np + j] = j < N ? mask[((size_t)h * N + i) * N + j] : 0.0f;
  units = (BW + IOUPOS__ATTN_WCHUNK - 1) / IOUPOS__ATTN_WCHUNK * NH;
  IOUPOS__PREGION((double)BW * NH * N * N * (hd + 8))
  {
    float *mine = ws + (size_t)IOUPOS__OMP_TID() * wsn;
    int u;
    IOUPOS__FOR
    for (u = 0; u < units; ++u) {
      int hh = u % NH, b0 = u / NH * IOUPOS__ATTN_WCHUNK, b;
      int b1 = b0 + IOUPOS__ATTN_WCHUNK < BW ? b0 + IOUPOS__ATTN_WCHUNK : BW;
      for (b = b0; b < b1; ++b)
        ioupos__attn_fwd_one(att, y, qkv, bias, maskp, mine, b, hh, N, C, NH, nW, scale);
    }
  }
  IOUPOS_FREE(raw);
  return ioupos__attn_linear_forward(out, y, proj_w, proj_b, BW * N, C, C);
}

/* gradients of window b, head h: dq, dk, dv into dqkv; the scores' gradient added to tp[N][N].
   ws: v^T [hd][Np], dP (then dS) [N][N], and dy_h, k, q padded to rows of hdp when hd is not a
   multiple of 8. dq, dk, dv are overwritten (each window and head owns its columns). */
static void ioupos__attn_bwd_one(float *dqkv, double *tp, const float *qkv, const float *att,
                                 const float *dy, float *ws, int b, int h, int N, int C, int NH,
                                 float scale) {
  const int hd = C / NH, C3 = 3 * C, Np = (N + 7) & ~7, hdp = (hd + 7) & ~7;
  const float *q = qkv + (size_t)b * N * C3 + h * hd, *k = q + C, *v = q + 2 * C;
  const float *P = att + ((size_t)b * NH + h) * N * N, *dY = dy + (size_t)b * N * C + h * hd;
  float *dq = dqkv + (size_t)b * N * C3 + h * hd, *dk = dq + C, *dv = dq + 2 * C;
  float *Vt = ws, *D = Vt + (size_t)hd * Np, *pad = D + (size_t)N * N;
  float *dYp = pad, *Kp = pad + (size_t)N * hdp, *Qp = pad + 2 * (size_t)N * hdp;
  int i;
  /* dP = dy_h v_h^T */
  ioupos__attn_transpose(Vt, v, C3, N, hd, Np);
  ioupos__amm(N, hd, Np, N, 1.0f, dY, C, 1, Vt, Np, D, N);
  /* softmax backward in place: dS = P * (dP - sum_j P dP); the table gathers dS */
  for (i = 0; i < N; ++i)
    ioupos__attn_dsoftmax_row(D + (size_t)i * N, P + (size_t)i * N, tp + (size_t)i * N, N);
  if (hd % 8 == 0) {
    /* dv = P^T dy_h; dq = scale dS k; dk = scale dS^T q */
    ioupos__amm(N, N, hd, hd, 1.0f, P, 1, N, dY, C, dv, C3);
    ioupos__amm(N, N, hd, hd, scale, D, N, 1, k, C3, dq, C3);
    ioupos__amm(N, N, hd, hd, scale, D, 1, N, q, C3, dk, C3);
  } else {
    ioupos__attn_pad(dYp, dY, C, N, hd, hdp);
    ioupos__attn_pad(Kp, k, C3, N, hd, hdp);
    ioupos__attn_pad(Qp, q, C3, N, hd, hdp);
    ioupos__amm(N, N, hdp, hd, 1.0f, P, 1, N, dYp, hdp, dv, C3);
    ioupos__amm(N, N, hdp, hd, scale, D, N, 1, Kp, hdp, dq, C3);
    ioupos__amm(N, N, hdp, hd, scale, D, 1, N, Qp, hdp, dk, C3);
  }
}

/* The reference's gradients, unit by unit on the threads; each unit's table sums go to its own
   slot of part[unit][rows] and are added over the units in chunk order, the reference's order
   of additions, so the table gradient does not depend on the thread count. As in the
   reference, an IOUPOS_ENOMEM leaves dproj_w and dproj_b accumulated and nothing else. */
static int ioupos__window_attention_backward_fast(float *dinp, float *dqkv_w, float *dqkv_b,
                                                  float *dproj_w, float *dproj_b, float *dtable,
                                                  float *scratch, const float *dout,
                                                  const float *acts, const float *inp,
                                                  const float *qkv_w, const float *proj_w,
                                                  const int *index, int BW, int N, int C, int NH) {
  const int C3 = 3 * C;
  const float *qkv = acts, *att = acts + (size_t)BW * N * C3, *y = att + (size_t)BW * NH * N * N;
  float *dqkv = scratch, *dy = scratch + (size_t)BW * N * C3, *ws;
  double *part, *accs;
  size_t wsn, nn = (size_t)N * N, x, np, nacc;
  void *raw;
  int hd, Np, hdp, h, r, st, nth, nchunk, units, rows = 0;
  float scale;
  hd = C / NH, Np = (N + 7) & ~7, hdp = (hd + 7) & ~7;
  scale = (float)(1.0 / sqrt((double)hd));
  /* projection: dy = dout proj_w (overwritten), dproj_w += dout^T y, dproj_b += sums */
  st = ioupos_gemm(0, 0, BW * N, C, C, 1.0f, dout, C, proj_w, C, 0.0f, dy, C);
  if (!st) st = ioupos__attn_linear_backward(NULL, dproj_w, dproj_b, dout, y, proj_w, BW * N, C, C);
  if (st) return st;
  /* buffers: per unit (a chunk of windows, one head) the table gradient's sums per table row
     (double); per thread: the unit's sums per score position [N][N] (double), v^T [hd][Np],
     dS [N][N] and three padded [N][hdp] */
  for (x = 0; x < nn; ++x)
    if (index[x] + 1 > rows) rows = index[x] + 1;
  nth = IOUPOS__MAX_THREADS();
  nchunk = (BW + IOUPOS__ATTN_WCHUNK - 1) / IOUPOS__ATTN_WCHUNK;
  units = nchunk * NH;
  np = ((size_t)units * rows + 7) & ~(size_t)7;
  nacc = (nn + 7) & ~(size_t)7;
  wsn = ((size_t)hd * Np + nn + 3 * (size_t)N * hdp + 15) & ~(size_t)15;
  raw = IOUPOS_MALLOC(sizeof(double) * (np + (size_t)nth * nacc) + sizeof(float) * (size_t)nth * wsn + 64);
  if (!raw)
    return ioupos__fail(IOUPOS_ENOMEM, "ioupos_window_attention_backward: out of memory for its "
                        "buffers (%d threads)", nth);
  part = (double *)ioupos__gemm_align(raw);
  accs = part + np;
  ws = (float *)(accs + (size_t)nth * nacc);
  IOUPOS__PREGION((double)BW * NH * nn * (3 * hd + 8))
  {
    int tid = IOUPOS__OMP_TID(), u;
    float *mine = ws + (size_t)tid * wsn;
    double *acc = accs + (size_t)tid * nacc;
    IOUPOS__FOR
    for (u = 0; u < units; ++u) {
      int hh = u % NH, b0 = u / NH * IOUPOS__ATTN_WCHUNK, b, q;
      int b1 = b0 + IOUPOS__ATTN_WCHUNK < BW ? b0 + IOUPOS__ATTN_WCHUNK : BW;
      double *tp = part + (size_t)u * rows;
      size_t e;
      for (e = 0; e < nn; ++e) acc[e] = 0.0;
      for (b = b0; b < b1; ++b)
        ioupos__attn_bwd_one(dqkv, acc, qkv, att, dy, mine, b, hh, N, C, NH, scale);
      /* the unit's sums per table row, score positions in order */
      for (q = 0; q < rows; ++q) tp[q] = 0.0;
      for (e = 0; e < nn; ++e) tp[index[e]] += acc[e];
    }
  }
  /* the table: per head and row, the units' sums in unit order */
  for (h = 0; h < NH; ++h)
    for (r = 0; r < rows; ++r) {
      double t = 0.0;
      int c;
      for (c = 0; c < nchunk; ++c) t += part[((size_t)c * NH + h) * rows + r];
      dtable[(size_t)r * NH + h] += (float)t;
    }
  IOUPOS_FREE(raw);
  return ioupos__attn_linear_backward(dinp, dqkv_w, dqkv_b, dqkv, inp, qkv_w, BW * N, C, C3);
}

#endif /* IOUPOS__LAYERS_FAST */


/* ---- 13. Safetensors files --------------------------------------------------------------------- */


static const char *const ioupos__st_names[IOUPOS_ST_NUM_DTYPES] = {
    "BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16",
    "I32", "U32", "F32", "F64", "I64", "U64"};
static const unsigned char ioupos__st_sizes[IOUPOS_ST_NUM_DTYPES] = {1, 1, 1, 1, 1, 2, 2, 2, 2,
                                                                     4, 4, 4, 8, 8, 8};

IOUPOS_DEF const char *ioupos_st_dtype_name(int dtype) {
  return dtype >= 0 && dtype < IOUPOS_ST_NUM_DTYPES ? ioupos__st_names[dtype] : NULL;
}

IOUPOS_DEF size_t ioupos_st_dtype_size(int dtype) {
  return dtype >= 0 && dtype < IOUPOS_ST_NUM_DTYPES ? ioupos__st_sizes[dtype] : 0;
}

/* -- the header parser -- */

typedef struct ioupos__st_parser {
  const unsigned char *p; /* the header, n bytes */
  size_t n, pos;
  const char *name;       /* file name for messages */
  char *arena;            /* decoded strings; never longer than the header */
  size_t used;
} ioupos__st_parser;

static int ioupos__st_syntax(ioupos__st_parser *ps, const char *what) {
  return ioupos__fail(IOUPOS_EFORMAT,
                      "%s: corrupt safetensors header: %s at byte %lu of the %lu-byte JSON header",
                      ps->name, what, (unsigned long)ps->pos, (unsigned long)ps->n);
}

static void ioupos__st_ws(ioupos__st_parser *ps) {
  while (ps->pos < ps->n) {
    unsigned char c = ps->p[ps->pos];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
    ++ps->pos;
  }
}

/* Skip whitespace, then consume c or fail with "expected <what>". */
static int ioupos__st_expect(ioupos__st_parser *ps, char c, const char *what) {
  ioupos__st_ws(ps);
  if (ps->pos >= ps->n || ps->p[ps->pos] != (unsigned char)c) return ioupos__st_syntax(ps, what);
  ++ps->pos;
  return IOUPOS_OK;
}

/* Parse a JSON string (after whitespace) into the arena with section 6's reader; *out is
   NUL-terminated. The decoded bytes plus the NUL never exceed the quoted source, so the arena
   (header size) cannot overflow. */
static int ioupos__st_string(ioupos__st_parser *ps, const char **out) {
  const char *why = NULL;
  size_t n;
  ioupos__st_ws(ps);
  *out = ps->arena + ps->used;
  if (ioupos__json_decode_string(ps->p, ps->n, &ps->pos, ps->arena + ps->used, ps->n - ps->used,
                                 &n, &why))
    return ioupos__st_syntax(ps, why);
  ps->used += n + 1;
  return IOUPOS_OK;
}

/* A non-negative JSON integer (no fraction, no exponent, no leading zero) below 2^63. */
static int ioupos__st_uint(ioupos__st_parser *ps, const char *tensor, const char *field,
                           uint64_t *v) {
  size_t start;
  ioupos__st_ws(ps);
  start = ps->pos;
  *v = 0;
  while (ps->pos < ps->n && ps->p[ps->pos] >= '0' && ps->p[ps->pos] <= '9') {
    unsigned d = (unsigned)(ps->p[ps->pos] - '0');
    if (*v > (UINT64_C(0x7FFFFFFFFFFFFFFF) - d) / 10)
      return ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\": %s value at byte %lu is "
                          "too large (>= 2^63)", ps->name, tensor, field, (unsigned long)start);
    *v = *v * 10 + d;
    ++ps->pos;
  }
  if (ps->pos == start || (ps->pos - start > 1 && ps->p[start] == '0') ||
      (ps->pos < ps->n && (ps->p[ps->pos] == '.' || ps->p[ps->pos] == 'e' ||
                           ps->p[ps->pos] == 'E')))
    return ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\": %s entry at byte %lu of the "
                        "header is not a non-negative integer", ps->name, tensor, field,
                        (unsigned long)start);
  return IOUPOS_OK;
}

/* A JSON array of non-negative integers; at most max of them (*count may then exceed max). */
static int ioupos__st_uint_array(ioupos__st_parser *ps, const char *tensor, const char *field,
                                 uint64_t *vals, int max, int *count) {
  int st;
  *count = 0;
  if ((st = ioupos__st_expect(ps, '[', "expected '['")) != 0)
    return ioupos__fail(st, "%s: tensor \"%.200s\": %s is not an array (byte %lu)", ps->name,
                        tensor, field, (unsigned long)ps->pos);
  ioupos__st_ws(ps);
  if (ps->pos < ps->n && ps->p[ps->pos] == ']') {
    ++ps->pos;
    return IOUPOS_OK;
  }
  for (;;) {
    uint64_t v;
    if ((st = ioupos__st_uint(ps, tensor, field, &v)) != 0) return st;
    if (*count >= max)
      return ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\": %s has more than %d entries",
                          ps->name, tensor, field, max);
    vals[(*count)++] = v;
    ioupos__st_ws(ps);
    if (ps->pos < ps->n && ps->p[ps->pos] == ',') {
      ++ps->pos;
      continue;
    }
    return ioupos__st_expect(ps, ']', "expected ',' or ']' in an array");
  }
}

/* Parse one tensor entry {"dtype": .., "shape": [..], "data_offsets": [b, e]}; t->data is set
   to (const char *)0 + begin for now and t->nbytes to end - begin. */
static int ioupos__st_entry(ioupos__st_parser *ps, ioupos_st_tensor *t, uint64_t *begin,
                            size_t buffer_size) {
  int st, have_dtype = 0, have_shape = 0, have_off = 0, i;
  uint64_t shape[IOUPOS_ST_MAX_DIMS], off[2], count = 1, dsize;
  int nshape = 0, noff = 0;
  const char *nm = t->name;
  if ((st = ioupos__st_expect(ps, '{', "expected '{'")) != 0)
    return ioupos__fail(st, "%s: tensor \"%.200s\": its entry is not a JSON object (byte %lu)",
                        ps->name, nm, (unsigned long)ps->pos);
  ioupos__st_ws(ps);
  if (ps->pos < ps->n && ps->p[ps->pos] == '}') {
    ++ps->pos;
  } else {
    for (;;) {
      const char *key;
      size_t save = ps->used;
      if ((st = ioupos__st_string(ps, &key)) != 0) return st;
      if ((st = ioupos__st_expect(ps, ':', "expected ':'")) != 0) return st;
      if (strcmp(key, "dtype") == 0) {
        const char *dt;
        if (have_dtype)
          return ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\": \"dtype\" given twice",
                              ps->name, nm);
        have_dtype = 1;
        ioupos__st_ws(ps);
        if (ps->pos >= ps->n || ps->p[ps->pos] != '"')
          return ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\": dtype is not a string",
                              ps->name, nm);
        if ((st = ioupos__st_string(ps, &dt)) != 0) return st;
        for (i = 0; i < IOUPOS_ST_NUM_DTYPES; ++i)
          if (strcmp(dt, ioupos__st_names[i]) == 0) break;
        if (i == IOUPOS_ST_NUM_DTYPES)
          return ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\": unknown dtype \"%.40s\"",
                              ps->name, nm, dt);
        t->dtype = i;
      } else if (strcmp(key, "shape") == 0) {
        if (have_shape)
          return ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\": \"shape\" given twice",
                              ps->name, nm);
        have_shape = 1;
        if ((st = ioupos__st_uint_array(ps, nm, "shape", shape, IOUPOS_ST_MAX_DIMS, &nshape)))
          return st;
      } else if (strcmp(key, "data_offsets") == 0) {
        if (have_off)
          return ioupos__fail(IOUPOS_EFORMAT,
                              "%s: tensor \"%.200s\": \"data_offsets\" given twice", ps->name, nm);
        have_off = 1;
        if ((st = ioupos__st_uint_array(ps, nm, "data_offsets", off, 2, &noff)) != 0) return st;
        if (noff != 2)
          return ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\": data_offsets has %d "
                              "entries, not 2", ps->name, nm, noff);
      } else {
        return ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\": unexpected key \"%.60s\" "
                            "(only dtype, shape, data_offsets)", ps->name, nm, key);
      }
      ps->used = save; /* keys and dtype strings need not be kept */
      ioupos__st_ws(ps);
      if (ps->pos < ps->n && ps->p[ps->pos] == ',') {
        ++ps->pos;
        continue;
      }
      if ((st = ioupos__st_expect(ps, '}', "expected ',' or '}' in a tensor entry")) != 0)
        return st;
      break;
    }
  }
  if (!have_dtype || !have_shape || !have_off)
    return ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\": missing \"%s\"", ps->name, nm,
                        !have_dtype ? "dtype" : !have_shape ? "shape" : "data_offsets");
  if (off[1] < off[0])
    return ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\": data_offsets [%llu, %llu] end "
                        "before they begin", ps->name, nm, (unsigned long long)off[0],
                        (unsigned long long)off[1]);
  if (off[1] > (uint64_t)buffer_size)
    return ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\": data_offsets [%llu, %llu] run "
                        "past the end of the %llu-byte data buffer (truncated file?)", ps->name,
                        nm, (unsigned long long)off[0], (unsigned long long)off[1],
                        (unsigned long long)buffer_size);
  dsize = ioupos__st_sizes[t->dtype];
  t->ndim = nshape;
  for (i = 0; i < nshape; ++i) {
    t->shape[i] = (int64_t)shape[i];
    if (count != 0 && shape[i] > UINT64_MAX / count) count = UINT64_MAX; /* overflow marker */
    else count *= shape[i];
  }
  if (count == UINT64_MAX || count > UINT64_MAX / dsize || count * dsize != off[1] - off[0])
    return ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\": shape and dtype %s need %s%llu "
                        "bytes but data_offsets [%llu, %llu] hold %llu", ps->name, nm,
                        ioupos__st_names[t->dtype], count == UINT64_MAX ? "more than " : "",
                        (unsigned long long)(count == UINT64_MAX || count > UINT64_MAX / dsize
                                                 ? UINT64_MAX : count * dsize),
                        (unsigned long long)off[0], (unsigned long long)off[1],
                        (unsigned long long)(off[1] - off[0]));
  *begin = off[0];
  t->nbytes = (size_t)(off[1] - off[0]);
  return IOUPOS_OK;
}

static int ioupos__st_cmp_offset(const void *a, const void *b) {
  const ioupos_st_tensor *x = (const ioupos_st_tensor *)a, *y = (const ioupos_st_tensor *)b;
  const char *px = (const char *)x->data, *py = (const char *)y->data;
  if (px != py) return px < py ? -1 : 1;
  if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
  return strcmp(x->name, y->name);
}

/* qsort has no context argument, so the name sort goes through a small array of pointers. */
typedef struct ioupos__st_nameref {
  const char *name;
  int index;
} ioupos__st_nameref;

static int ioupos__st_cmp_nameref(const void *a, const void *b) {
  return strcmp(((const ioupos__st_nameref *)a)->name, ((const ioupos__st_nameref *)b)->name);
}

static int ioupos__st_cmp_pair(const void *a, const void *b) {
  return strcmp(((const ioupos_st_pair *)a)->key, ((const ioupos_st_pair *)b)->key);
}

IOUPOS_DEF void ioupos_safetensors_free(ioupos_st_file *f) {
  if (!f) return;
  IOUPOS_FREE(f->tensors);
  IOUPOS_FREE(f->metadata);
  IOUPOS_FREE(f->buffer);
  IOUPOS_FREE(f->strings);
  IOUPOS_FREE(f->by_name);
  IOUPOS_FREE(f->name);
  memset(f, 0, sizeof *f);
}

static int ioupos__st_parse(const unsigned char *d, size_t size, const char *name,
                            ioupos_st_file *out) {
  ioupos__st_parser ps;
  uint64_t hlen;
  size_t buffer_size, tcap = 0, mcap = 0, nt = 0, nm = 0, i, expect;
  const unsigned char *buf;
  ioupos__st_nameref *refs = NULL;
  ioupos_st_pair *sorted_meta = NULL;
  int st, have_meta = 0;

  if (size < 8)
    return ioupos__fail(IOUPOS_EFORMAT, "%s: not a safetensors file (%lu bytes, shorter than "
                        "the 8-byte header length)", name, (unsigned long)size);
  hlen = 0;
  for (i = 0; i < 8; ++i) hlen |= (uint64_t)d[i] << (8 * i);
  if (hlen > IOUPOS_ST_MAX_HEADER)
    return ioupos__fail(IOUPOS_EFORMAT, "%s: safetensors header length %llu is larger than "
                        "%u bytes (corrupt or not a safetensors file)", name,
                        (unsigned long long)hlen, IOUPOS_ST_MAX_HEADER);
  if (hlen > (uint64_t)(size - 8))
    return ioupos__fail(IOUPOS_EFORMAT, "%s: safetensors header length %llu runs past the end "
                        "of the %lu-byte file (truncated?)", name, (unsigned long long)hlen,
                        (unsigned long)size);
  if (hlen < 2)
    return ioupos__fail(IOUPOS_EFORMAT, "%s: safetensors header length %llu is too small "
                        "(not a safetensors file)", name, (unsigned long long)hlen);
  if (d[8] != '{')
    return ioupos__fail(IOUPOS_EFORMAT, "%s: not a safetensors file (the header does not "
                        "start with '{')", name);
  buf = d + 8 + hlen;
  buffer_size = size - 8 - (size_t)hlen;

  memset(&ps, 0, sizeof ps);
  ps.p = d + 8;
  ps.n = (size_t)hlen;
  ps.name = name;
  out->strings = ps.arena = (char *)IOUPOS_MALLOC((size_t)hlen);
  if (!ps.arena)
    return ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory for a %llu-byte safetensors header",
                        name, (unsigned long long)hlen);

  if ((st = ioupos__st_expect(&ps, '{', "expected '{'")) != 0) return st;
  ioupos__st_ws(&ps);
  if (ps.pos < ps.n && ps.p[ps.pos] == '}') {
    ++ps.pos;
  } else {
    for (;;) {
      const char *key;
      if ((st = ioupos__st_string(&ps, &key)) != 0) return st;
      if ((st = ioupos__st_expect(&ps, ':', "expected ':'")) != 0) return st;
      if (strcmp(key, "__metadata__") == 0) {
        if (have_meta)
          return ioupos__fail(IOUPOS_EFORMAT, "%s: \"__metadata__\" appears twice", name);
        have_meta = 1;
        if ((st = ioupos__st_expect(&ps, '{', "expected '{'")) != 0)
          return ioupos__fail(st, "%s: \"__metadata__\" is not a JSON object", name);
        ioupos__st_ws(&ps);
        if (ps.pos < ps.n && ps.p[ps.pos] == '}') {
          ++ps.pos;
        } else {
          for (;;) {
            ioupos_st_pair pr;
            if ((st = ioupos__st_string(&ps, &pr.key)) != 0) return st;
            if ((st = ioupos__st_expect(&ps, ':', "expected ':'")) != 0) return st;
            ioupos__st_ws(&ps);
            if (ps.pos >= ps.n || ps.p[ps.pos] != '"')
              return ioupos__fail(IOUPOS_EFORMAT, "%s: metadata \"%.200s\": value is not a "
                                  "string", name, pr.key);
            if ((st = ioupos__st_string(&ps, &pr.value)) != 0) return st;
            if (!ioupos__grow((void **)&out->metadata, nm, &mcap, sizeof pr))
              return ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory for metadata", name);
            out->metadata[nm++] = pr;
            out->n_metadata = (int)nm;
            ioupos__st_ws(&ps);
            if (ps.pos < ps.n && ps.p[ps.pos] == ',') {
              ++ps.pos;
              continue;
            }
            if ((st = ioupos__st_expect(&ps, '}', "expected ',' or '}' in __metadata__")) != 0)
              return st;
            break;
          }
        }
      } else {
        ioupos_st_tensor *t;
        uint64_t begin = 0;
        if (!ioupos__grow((void **)&out->tensors, nt, &tcap, sizeof *t))
          return ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory for the tensor table", name);
        if (nt >= 0x7FFFFFFF)
          return ioupos__fail(IOUPOS_ERANGE, "%s: too many tensors", name);
        t = &out->tensors[nt];
        memset(t, 0, sizeof *t);
        t->name = key;
        if ((st = ioupos__st_entry(&ps, t, &begin, buffer_size)) != 0) return st;
        t->data = buf + (size_t)begin;
        out->n = (int)++nt;
      }
      ioupos__st_ws(&ps);
      if (ps.pos < ps.n && ps.p[ps.pos] == ',') {
        ++ps.pos;
        continue;
      }
      if ((st = ioupos__st_expect(&ps, '}', "expected ',' or '}' after an entry")) != 0)
        return st;
      break;
    }
  }
  ioupos__st_ws(&ps);
  if (ps.pos != ps.n) return ioupos__st_syntax(&ps, "trailing bytes after the JSON object");

  /* Duplicates: sort names. */
  if (nm > 1) {
    sorted_meta = (ioupos_st_pair *)IOUPOS_MALLOC(nm * sizeof *sorted_meta);
    if (!sorted_meta) return ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory", name);
    memcpy(sorted_meta, out->metadata, nm * sizeof *sorted_meta);
    qsort(sorted_meta, nm, sizeof *sorted_meta, ioupos__st_cmp_pair);
    for (i = 1; i < nm; ++i)
      if (strcmp(sorted_meta[i - 1].key, sorted_meta[i].key) == 0) {
        st = ioupos__fail(IOUPOS_EFORMAT, "%s: metadata key \"%.200s\" appears twice", name,
                          sorted_meta[i].key);
        IOUPOS_FREE(sorted_meta);
        return st;
      }
    IOUPOS_FREE(sorted_meta);
  }
  /* Layout: in offset order the tensors must tile [0, buffer_size). */
  if (nt > 1) qsort(out->tensors, nt, sizeof *out->tensors, ioupos__st_cmp_offset);
  expect = 0;
  for (i = 0; i < nt; ++i) {
    const ioupos_st_tensor *t = &out->tensors[i];
    size_t b = (size_t)((const unsigned char *)t->data - buf);
    if (b > expect && i == 0)
      return ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\" is the first in the data "
                          "buffer but begins at byte %lu, not 0: a gap", name, t->name,
                          (unsigned long)b);
    if (b > expect)
      return ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\" begins at byte %lu of the "
                          "data buffer but the previous tensor \"%.200s\" ends at %lu: a gap",
                          name, t->name, (unsigned long)b, out->tensors[i - 1].name,
                          (unsigned long)expect);
    if (b < expect)
      return ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\" (bytes %lu..%lu) overlaps "
                          "tensor \"%.200s\" (which ends at %lu)", name, t->name,
                          (unsigned long)b, (unsigned long)(b + t->nbytes),
                          out->tensors[i - 1].name, (unsigned long)expect);
    expect = b + t->nbytes;
  }
  if (expect != buffer_size)
    return ioupos__fail(IOUPOS_EFORMAT, "%s: the data buffer has %lu bytes but the tensors "
                        "cover only %lu%s%.200s%s: trailing bytes", name,
                        (unsigned long)buffer_size, (unsigned long)expect,
                        nt ? " (last tensor \"" : "", nt ? out->tensors[nt - 1].name : "",
                        nt ? "\")" : "");
  /* Name index and duplicate tensor names. */
  if (nt > 0) {
    refs = (ioupos__st_nameref *)IOUPOS_MALLOC(nt * sizeof *refs);
    out->by_name = (int *)IOUPOS_MALLOC(nt * sizeof(int));
    if (!refs || !out->by_name) {
      IOUPOS_FREE(refs);
      return ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory", name);
    }
    for (i = 0; i < nt; ++i) {
      refs[i].name = out->tensors[i].name;
      refs[i].index = (int)i;
    }
    qsort(refs, nt, sizeof *refs, ioupos__st_cmp_nameref);
    for (i = 0; i < nt; ++i) {
      if (i > 0 && strcmp(refs[i - 1].name, refs[i].name) == 0) {
        st = ioupos__fail(IOUPOS_EFORMAT, "%s: tensor \"%.200s\" appears twice", name,
                          refs[i].name);
        IOUPOS_FREE(refs);
        return st;
      }
      out->by_name[i] = refs[i].index;
    }
    IOUPOS_FREE(refs);
  }
  return IOUPOS_OK;
}

IOUPOS_DEF int ioupos_safetensors_parse(const void *bytes, size_t size, const char *name,
                                        ioupos_st_file *out) {
  int st;
  if (!out) return ioupos__fail(IOUPOS_EINVAL, "ioupos_safetensors_parse: out is NULL");
  memset(out, 0, sizeof *out);
  if (!bytes && size) return ioupos__fail(IOUPOS_EINVAL, "ioupos_safetensors_parse: NULL bytes");
  if (!name) name = "(memory)";
  st = ioupos__st_parse((const unsigned char *)bytes, size, name, out);
  if (st == 0) { /* kept for the messages of the loaders (a non-finite value names the file) */
    size_t len = strlen(name);
    out->name = (char *)IOUPOS_MALLOC(len + 1);
    if (out->name) memcpy(out->name, name, len + 1);
    else st = ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory", name);
  }
  if (st) ioupos_safetensors_free(out);
  return st;
}

IOUPOS_DEF int ioupos_safetensors_read(const char *path, ioupos_st_file *out) {
  void *data;
  size_t size;
  int st;
  if (!out) return ioupos__fail(IOUPOS_EINVAL, "ioupos_safetensors_read: out is NULL");
  memset(out, 0, sizeof *out);
  if (!path) return ioupos__fail(IOUPOS_EINVAL, "ioupos_safetensors_read: path is NULL");
  if ((st = ioupos_read_file(path, &data, &size)) != 0) return st;
  st = ioupos_safetensors_parse(data, size, path, out);
  if (st) {
    IOUPOS_FREE(data);
    return st;
  }
  out->buffer = data;
  return IOUPOS_OK;
}

IOUPOS_DEF const ioupos_st_tensor *ioupos_safetensors_find(const ioupos_st_file *f,
                                                           const char *name) {
  int lo = 0, hi;
  if (!f || !name || f->n <= 0) return NULL;
  if (!f->by_name) { /* a table built by hand */
    for (lo = 0; lo < f->n; ++lo)
      if (strcmp(f->tensors[lo].name, name) == 0) return &f->tensors[lo];
    return NULL;
  }
  hi = f->n - 1;
  while (lo <= hi) {
    int mid = lo + (hi - lo) / 2, c;
    const ioupos_st_tensor *t = &f->tensors[f->by_name[mid]];
    c = strcmp(t->name, name);
    if (c == 0) return t;
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return NULL;
}

static float ioupos__st_f16(unsigned h) {
  unsigned sign = (h >> 15) & 1u, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  uint32_t bits;
  float f;
  if (e == 0) {
    f = (float)m * 5.9604644775390625e-8f; /* m * 2^-24, exact */
    return sign ? -f : f;
  }
  if (e == 31) bits = (uint32_t)sign << 31 | 0x7F800000u | (uint32_t)m << 13;
  else bits = (uint32_t)sign << 31 | (uint32_t)(e + 112) << 23 | (uint32_t)m << 13;
  memcpy(&f, &bits, 4);
  return f;
}

IOUPOS_DEF int ioupos_st_to_f32(const ioupos_st_tensor *t, float *dst) {
  const unsigned char *s;
  size_t i, count, es;
  if (!t || (!dst && t->nbytes) || (!t->data && t->nbytes))
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_st_to_f32: NULL argument");
  es = ioupos_st_dtype_size(t->dtype);
  if (t->dtype != IOUPOS_ST_F32 && t->dtype != IOUPOS_ST_F16 && t->dtype != IOUPOS_ST_BF16 &&
      t->dtype != IOUPOS_ST_F64)
    return ioupos__fail(IOUPOS_EINVAL, "tensor \"%.200s\": dtype %s is not a floating-point "
                        "type convertible to F32", t->name ? t->name : "?",
                        es ? ioupos__st_names[t->dtype] : "(unknown)");
  s = (const unsigned char *)t->data;
  count = t->nbytes / es;
  for (i = 0; i < count; ++i, s += es) {
    uint32_t b32;
    uint64_t b64;
    double d;
    switch (t->dtype) {
      case IOUPOS_ST_F32:
        b32 = (uint32_t)s[0] | (uint32_t)s[1] << 8 | (uint32_t)s[2] << 16 | (uint32_t)s[3] << 24;
        memcpy(&dst[i], &b32, 4);
        break;
      case IOUPOS_ST_F16: dst[i] = ioupos__st_f16((unsigned)s[0] | (unsigned)s[1] << 8); break;
      case IOUPOS_ST_BF16:
        b32 = ((uint32_t)s[0] | (uint32_t)s[1] << 8) << 16;
        memcpy(&dst[i], &b32, 4);
        break;
      default: /* F64 */
        b64 = (uint64_t)s[0] | (uint64_t)s[1] << 8 | (uint64_t)s[2] << 16 |
              (uint64_t)s[3] << 24 | (uint64_t)s[4] << 32 | (uint64_t)s[5] << 40 |
              (uint64_t)s[6] << 48 | (uint64_t)s[7] << 56;
        memcpy(&d, &b64, 8);
        /* beyond FLT_MAX the cast is undefined in ISO C: round by hand (ties to even, and
           FLT_MAX's significand is odd, so the midpoint 2^128 - 2^103 goes to infinity) */
        if (d >= 340282356779733661637539395458142568448.0) dst[i] = (float)HUGE_VAL;
        else if (d <= -340282356779733661637539395458142568448.0) dst[i] = -(float)HUGE_VAL;
        else if (d > 3.4028234663852886e38) dst[i] = 3.4028234663852886e38f;
        else if (d < -3.4028234663852886e38) dst[i] = -3.4028234663852886e38f;
        else dst[i] = (float)d;
        break;
    }
  }
  return IOUPOS_OK;
}

/* 0, or IOUPOS_EFORMAT naming file f, the tensor, its first non-finite element and the value:
   every float that a checkpoint or a training state loads into a model, its optimiser or its
   counters must be finite (one NaN weight makes every output NaN without a word). The n
   values are v32 (floats) or, when v32 is NULL, v64 (doubles), after conversion. */
static int ioupos__st_check_finite(const ioupos_st_file *f, const char *tensor, const float *v32,
                                   const double *v64, size_t n) {
  size_t k;
  for (k = 0; k < n; ++k) {
    double v = v32 ? (double)v32[k] : v64[k];
    if (isfinite(v)) continue;
    return ioupos__fail(IOUPOS_EFORMAT,
                        "%s: tensor '%s' is not finite: element %zu (of %zu) is %s; a checkpoint "
                        "or training state must hold finite numbers only (saved from a diverged "
                        "run, or a damaged file?)",
                        f && f->name ? f->name : "(safetensors)", tensor, k, n,
                        isnan(v) ? "NaN" : v > 0 ? "+inf" : "-inf");
  }
  return 0;
}

/* -- the writer -- */

/* Append to a buffer, or only count when out is NULL. */
typedef struct ioupos__st_out {
  unsigned char *p;
  size_t n;
} ioupos__st_out;

static void ioupos__st_put(ioupos__st_out *o, const void *s, size_t k) {
  if (o->p) memcpy(o->p + o->n, s, k);
  o->n += k;
}

static void ioupos__st_puts(ioupos__st_out *o, const char *s) { ioupos__st_put(o, s, strlen(s)); }

/* A JSON string escaped as serde_json writes it: \" \\ \b \f \n \r \t, other control
   characters as \u00xx (lowercase hex), everything else (UTF-8 included) raw. */
static void ioupos__st_put_string(ioupos__st_out *o, const char *s) {
  static const char hex[] = "0123456789abcdef";
  ioupos__st_put(o, "\"", 1);
  for (; *s; ++s) {
    unsigned char c = (unsigned char)*s;
    char e[6];
    switch (c) {
      case '"': ioupos__st_put(o, "\\\"", 2); break;
      case '\\': ioupos__st_put(o, "\\\\", 2); break;
      case '\b': ioupos__st_put(o, "\\b", 2); break;
      case '\f': ioupos__st_put(o, "\\f", 2); break;
      case '\n': ioupos__st_put(o, "\\n", 2); break;
      case '\r': ioupos__st_put(o, "\\r", 2); break;
      case '\t': ioupos__st_put(o, "\\t", 2); break;
      default:
        if (c < 0x20) {
          e[0] = '\\'; e[1] = 'u'; e[2] = '0'; e[3] = '0';
          e[4] = hex[c >> 4]; e[5] = hex[c & 15];
          ioupos__st_put(o, e, 6);
        } else {
          ioupos__st_put(o, s, 1);
        }
    }
  }
  ioupos__st_put(o, "\"", 1);
}

static void ioupos__st_put_u64(ioupos__st_out *o, uint64_t v) {
  char tmp[24];
  int k = 0;
  do {
    tmp[k++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (k > 0) ioupos__st_put(o, &tmp[--k], 1);
}

static int ioupos__st_valid_utf8(const char *s) {
  size_t n = strlen(s), i = 0;
  while (i < n) {
    size_t k = ioupos__utf8_len((const unsigned char *)s + i, n - i);
    if (!k) return 0;
    i += k;
  }
  return 1;
}

/* The header (from '{' to the padding, inclusive) for tensors in the order order[]. */
static void ioupos__st_header(ioupos__st_out *o, int n, const ioupos_st_tensor *tensors,
                              const int *order, const size_t *nbytes, int n_metadata,
                              const ioupos_st_pair *metadata) {
  int i, j, first = 1;
  uint64_t off = 0;
  ioupos__st_put(o, "{", 1);
  if (n_metadata > 0) {
    ioupos__st_puts(o, "\"__metadata__\":{");
    for (i = 0; i < n_metadata; ++i) {
      if (i) ioupos__st_put(o, ",", 1);
      ioupos__st_put_string(o, metadata[i].key);
      ioupos__st_put(o, ":", 1);
      ioupos__st_put_string(o, metadata[i].value);
    }
    ioupos__st_put(o, "}", 1);
    first = 0;
  }
  for (i = 0; i < n; ++i) {
    const ioupos_st_tensor *t = &tensors[order[i]];
    if (!first) ioupos__st_put(o, ",", 1);
    first = 0;
    ioupos__st_put_string(o, t->name);
    ioupos__st_puts(o, ":{\"dtype\":\"");
    ioupos__st_puts(o, ioupos__st_names[t->dtype]);
    ioupos__st_puts(o, "\",\"shape\":[");
    for (j = 0; j < t->ndim; ++j) {
      if (j) ioupos__st_put(o, ",", 1);
      ioupos__st_put_u64(o, (uint64_t)t->shape[j]);
    }
    ioupos__st_puts(o, "],\"data_offsets\":[");
    ioupos__st_put_u64(o, off);
    ioupos__st_put(o, ",", 1);
    off += nbytes[order[i]];
    ioupos__st_put_u64(o, off);
    ioupos__st_puts(o, "]}");
  }
  ioupos__st_put(o, "}", 1);
  while ((o->n - 8) % 8 != 0) ioupos__st_put(o, " ", 1);
}

/* Sort context for the writer (qsort has none): pairs of (tensor pointer, index). */
typedef struct ioupos__st_wref {
  const ioupos_st_tensor *t;
  int index;
} ioupos__st_wref;

static int ioupos__st_cmp_write(const void *a, const void *b) {
  const ioupos_st_tensor *x = ((const ioupos__st_wref *)a)->t, *y = ((const ioupos__st_wref *)b)->t;
  if (x->dtype != y->dtype) return x->dtype > y->dtype ? -1 : 1;
  return strcmp(x->name, y->name);
}

IOUPOS_DEF int ioupos_safetensors_write(const char *path, int n, const ioupos_st_tensor *tensors,
                                        int n_metadata, const ioupos_st_pair *metadata) {
  ioupos__st_wref *refs = NULL;
  int *order = NULL;
  size_t *nbytes = NULL, total = 0, hdr;
  ioupos__st_out o;
  int i, j, st = IOUPOS_OK;
  uint16_t probe = 1;
  int little = *(unsigned char *)&probe == 1;

  if (!path || n < 0 || n_metadata < 0 || (n > 0 && !tensors) || (n_metadata > 0 && !metadata))
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_safetensors_write: NULL or negative argument");
  for (i = 0; i < n_metadata; ++i) {
    if (!metadata[i].key || !metadata[i].value || !ioupos__st_valid_utf8(metadata[i].key) ||
        !ioupos__st_valid_utf8(metadata[i].value))
      return ioupos__fail(IOUPOS_EINVAL, "%s: metadata pair %d: key or value NULL or not UTF-8",
                          path, i);
    for (j = 0; j < i; ++j)
      if (strcmp(metadata[i].key, metadata[j].key) == 0)
        return ioupos__fail(IOUPOS_EINVAL, "%s: metadata key \"%.200s\" given twice", path,
                            metadata[i].key);
  }
  refs = (ioupos__st_wref *)ioupos__calloc((size_t)n + 1, sizeof *refs);
  order = (int *)ioupos__calloc((size_t)n + 1, sizeof(int));
  nbytes = (size_t *)ioupos__calloc((size_t)n + 1, sizeof(size_t));
  if (!refs || !order || !nbytes) {
    st = ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory", path);
    goto done;
  }
  for (i = 0; i < n; ++i) {
    const ioupos_st_tensor *t = &tensors[i];
    uint64_t count = 1, es;
    const char *nm = t->name ? t->name : "(NULL)";
    if (!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0 ||
        !ioupos__st_valid_utf8(t->name)) {
      st = ioupos__fail(IOUPOS_EINVAL, "%s: tensor %d: name \"%.200s\" is NULL, empty, "
                        "\"__metadata__\" or not UTF-8", path, i, nm);
      goto done;
    }
    es = ioupos_st_dtype_size(t->dtype);
    if (!es || t->ndim < 0 || t->ndim > IOUPOS_ST_MAX_DIMS) {
      st = ioupos__fail(IOUPOS_EINVAL, "%s: tensor \"%.200s\": unknown dtype %d or ndim %d not "
                        "in 0..%d", path, nm, t->dtype, t->ndim, IOUPOS_ST_MAX_DIMS);
      goto done;
    }
    for (j = 0; j < t->ndim; ++j) {
      if (t->shape[j] < 0) {
        st = ioupos__fail(IOUPOS_EINVAL, "%s: tensor \"%.200s\": negative dimension %lld", path,
                          nm, (long long)t->shape[j]);
        goto done;
      }
      if (count != 0 && (uint64_t)t->shape[j] > ((uint64_t)SIZE_MAX / 2) / count) {
        st = ioupos__fail(IOUPOS_ERANGE, "%s: tensor \"%.200s\": too many elements", path, nm);
        goto done;
      }
      count *= (uint64_t)t->shape[j];
    }
    if (count > ((uint64_t)SIZE_MAX / 2) / es) {
      st = ioupos__fail(IOUPOS_ERANGE, "%s: tensor \"%.200s\": too many bytes", path, nm);
      goto done;
    }
    nbytes[i] = (size_t)(count * es);
    if ((t->nbytes != 0 && t->nbytes != nbytes[i]) || (nbytes[i] && !t->data)) {
      st = ioupos__fail(IOUPOS_EINVAL, "%s: tensor \"%.200s\": nbytes %lu but shape and dtype "
                        "%s give %lu (or data is NULL)", path, nm, (unsigned long)t->nbytes,
                        ioupos__st_names[t->dtype], (unsigned long)nbytes[i]);
      goto done;
    }
    if (nbytes[i] > SIZE_MAX / 2 - total) {
      st = ioupos__fail(IOUPOS_ERANGE, "%s: the tensors are too large in total", path);
      goto done;
    }
    total += nbytes[i];
    refs[i].t = t;
    refs[i].index = i;
  }
  qsort(refs, (size_t)n, sizeof *refs, ioupos__st_cmp_write);
  for (i = 0; i < n; ++i) order[i] = refs[i].index;
  { /* duplicate names (of any dtypes) */
    ioupos__st_nameref *nr = (ioupos__st_nameref *)ioupos__calloc((size_t)n + 1, sizeof *nr);
    if (!nr) {
      st = ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory", path);
      goto done;
    }
    for (i = 0; i < n; ++i) nr[i].name = tensors[i].name;
    qsort(nr, (size_t)n, sizeof *nr, ioupos__st_cmp_nameref);
    for (i = 1; i < n; ++i)
      if (strcmp(nr[i - 1].name, nr[i].name) == 0) {
        st = ioupos__fail(IOUPOS_EINVAL, "%s: tensor \"%.200s\" given twice", path, nr[i].name);
        break;
      }
    IOUPOS_FREE(nr);
    if (st) goto done;
  }

  o.p = NULL;
  o.n = 8;
  ioupos__st_header(&o, n, tensors, order, nbytes, n_metadata, metadata);
  hdr = o.n;
  if (hdr - 8 > IOUPOS_ST_MAX_HEADER || total > SIZE_MAX - hdr) {
    st = ioupos__fail(IOUPOS_ERANGE, "%s: safetensors header of %lu bytes is too large", path,
                      (unsigned long)(hdr - 8));
    goto done;
  }
  o.p = (unsigned char *)IOUPOS_MALLOC(hdr + total);
  if (!o.p) {
    st = ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory for %lu bytes", path,
                      (unsigned long)(hdr + total));
    goto done;
  }
  for (i = 0; i < 8; ++i) o.p[i] = (unsigned char)((uint64_t)(hdr - 8) >> (8 * i));
  o.n = 8;
  ioupos__st_header(&o, n, tensors, order, nbytes, n_metadata, metadata);
  for (i = 0; i < n; ++i) {
    const ioupos_st_tensor *t = &tensors[order[i]];
    size_t k = nbytes[order[i]], es = ioupos_st_dtype_size(t->dtype), e, b;
    if (k) memcpy(o.p + o.n, t->data, k);
    if (!little && es > 1)
      for (e = 0; e < k; e += es)
        for (b = 0; b < es / 2; ++b) {
          unsigned char tmp = o.p[o.n + e + b];
          o.p[o.n + e + b] = o.p[o.n + e + es - 1 - b];
          o.p[o.n + e + es - 1 - b] = tmp;
        }
    o.n += k;
  }
  st = ioupos_write_file_atomic(path, o.p, o.n);
  IOUPOS_FREE(o.p);
done:
  IOUPOS_FREE(refs);
  IOUPOS_FREE(order);
  IOUPOS_FREE(nbytes);
  return st;
}


/* ---- 14. Losses and the weight-normalised linear ----------------------------------------------- */


#ifdef __cplusplus
extern "C" {
#endif

/* Every function of this section is its own plain reference (section 11, HOW SECTIONS 11 AND 12
   ARE LAID OUT): scalar loops, sums in double, no SIMD lanes or threads. The weight-normalised
   linear's products are section 11's linear layer (the GEMM, whose reference is there). */

/* |x|_2 of x[0..C): the sum of squares in double, in order; no eps (the callers clamp) */
static double ioupos__wl_norm(const float *x, int C) {
  double s = 0.0;
  int c;
  for (c = 0; c < C; ++c) s += (double)x[c] * x[c];
  return sqrt(s);
}

/* -- cosine similarity -- */
/* out[N] overwritten. Each row is divided by its own clamped norm before the dot product, as
   torch >= 1.12 does, not (a . b) / max(|a| |b|, eps) as older torch did (the two differ when
   a norm, or the product of the norms, is below eps). In double, rounded once. */
IOUPOS_DEF void ioupos_cosine_similarity_forward(float *out, const float *x1, const float *x2,
                                                 int N, int C, float eps) {
  int n, c;
  for (n = 0; n < N; ++n) {
    const float *a = x1 + (size_t)n * C, *b = x2 + (size_t)n * C;
    double na = ioupos__wl_norm(a, C), nb = ioupos__wl_norm(b, C), s = 0.0;
    if (!(na > eps)) na = eps; /* each norm clamped on its own (torch >= 1.12) */
    if (!(nb > eps)) nb = eps;
    for (c = 0; c < C; ++c) s += ((double)a[c] / na) * ((double)b[c] / nb);
    out[n] = (float)s;
  }
}

/* dx1[N][C] += dout[n] dcos/dx1[n] (ACCUMULATES); the gradient to x2 is the same call with x1
   and x2 exchanged. Unclamped, the derivative is (b - cos |b| a / |a|) / (|a| |b|): the part of
   b orthogonal to a, scaled, since the cosine does not change along a itself. */
IOUPOS_DEF void ioupos_cosine_similarity_backward(float *dx1, const float *dout, const float *x1,
                                                  const float *x2, int N, int C, float eps) {
  int n, c;
  for (n = 0; n < N; ++n) {
    const float *a = x1 + (size_t)n * C, *b = x2 + (size_t)n * C;
    float *da = dx1 + (size_t)n * C;
    double ta = ioupos__wl_norm(a, C), nb = ioupos__wl_norm(b, C), na = ta, dot = 0.0, k;
    if (!(na > eps)) na = eps;
    if (!(nb > eps)) nb = eps;
    for (c = 0; c < C; ++c) dot += (double)a[c] * b[c];
    /* out = (a . b) / (na nb); d/da = b / (na nb) - (a . b) / (na^2 nb) * a / |a|, where the
       derivative of the norm is that of the unclamped |a| (torch clamps under no_grad), and 0
       when |a| = 0 (torch masks the norm's gradient there). */
    k = ta > 0.0 ? dot / (na * na * nb * ta) : 0.0;
    for (c = 0; c < C; ++c)
      da[c] += (float)((double)dout[n] * ((double)b[c] / (na * nb) - k * (double)a[c]));
  }
}

/* -- SimSiam -- */
/* mean over the N rows of cos(p[n], z[n]), with lightly's eps; 0 for N = 0 */
static double ioupos__wl_meancos(const float *p, const float *z, int N, int C) {
  double s = 0.0;
  int n, c;
  for (n = 0; n < N; ++n) {
    const float *a = p + (size_t)n * C, *b = z + (size_t)n * C;
    double na = ioupos__wl_norm(a, C), nb = ioupos__wl_norm(b, C), d = 0.0;
    if (!(na > IOUPOS_SIMSIAM_EPS)) na = IOUPOS_SIMSIAM_EPS;
    if (!(nb > IOUPOS_SIMSIAM_EPS)) nb = IOUPOS_SIMSIAM_EPS;
    for (c = 0; c < C; ++c) d += ((double)a[c] / na) * ((double)b[c] / nb);
    s += d;
  }
  return N > 0 ? s / N : 0.0;
}

/* SimSiam (Chen and He, 2021): D(p, z) = -cos(p, stopgrad(z)), L = D(p1, z2) / 2 + D(p2, z1) / 2.
   Each view's prediction p (the predictor's output) is pulled towards the other view's
   projection z, which is held constant: the stop-gradient is what keeps the two branches from
   collapsing to a constant, so z gets no gradient. Returns L (in [-1, 1]). */
IOUPOS_DEF double ioupos_simsiam_loss_forward(const float *p1, const float *p2, const float *z1,
                                              const float *z2, int N, int C) {
  return -0.5 * (ioupos__wl_meancos(p1, z2, N, C) + ioupos__wl_meancos(p2, z1, N, C));
}

/* dp[n] += scale dcos(p[n], z[n])/dp[n] (ACCUMULATES): ioupos_cosine_similarity_backward's
   formula with IOUPOS_SIMSIAM_EPS and one scale for every row */
static void ioupos__wl_negcos_back(float *dp, float scale, const float *p, const float *z, int N,
                                   int C) {
  int n, c;
  for (n = 0; n < N; ++n) {
    const float *a = p + (size_t)n * C, *b = z + (size_t)n * C;
    float *da = dp + (size_t)n * C;
    double ta = ioupos__wl_norm(a, C), nb = ioupos__wl_norm(b, C), na = ta, dot = 0.0, k;
    if (!(na > IOUPOS_SIMSIAM_EPS)) na = IOUPOS_SIMSIAM_EPS;
    if (!(nb > IOUPOS_SIMSIAM_EPS)) nb = IOUPOS_SIMSIAM_EPS;
    for (c = 0; c < C; ++c) dot += (double)a[c] * b[c];
    k = ta > 0.0 ? dot / (na * na * nb * ta) : 0.0;
    for (c = 0; c < C; ++c)
      da[c] += (float)((double)scale * ((double)b[c] / (na * nb) - k * (double)a[c]));
  }
}

IOUPOS_DEF void ioupos_simsiam_loss_backward(float *dp1, float *dp2, float dloss, const float *p1,
                                             const float *p2, const float *z1, const float *z2,
                                             int N, int C) {
  /* dL/dcos[n] = -1 / (2N) for each of the two terms */
  double s = N > 0 ? -0.5 * (double)dloss / N : 0.0;
  if (dp1) ioupos__wl_negcos_back(dp1, (float)s, p1, z2, N, C);
  if (dp2) ioupos__wl_negcos_back(dp2, (float)s, p2, z1, N, C);
}

/* -- DINO -- */
/* DINO (Caron et al., 2021): the teacher's output is CENTRED (the EMA centre subtracted, which
   keeps one dimension from dominating) and SHARPENED (teacher_temp below student_temp, which
   keeps the output from going uniform); the two act against the two ways the pair can
   collapse, and the student learns the teacher's distribution by cross-entropy. Both softmaxes
   in double with the row's maximum subtracted, log_softmax as x / T - logsumexp. tprob and
   slogp overwritten; returns L, 0 when there is no pair or B <= 0. */
IOUPOS_DEF double ioupos_dino_loss_forward(float *tprob, float *slogp, const float *teacher,
                                           const float *student, const float *center, int NT,
                                           int NS, int B, int D, float teacher_temp,
                                           float student_temp) {
  int t, s, b, d;
  long n_pairs = (long)NT * NS - (NT < NS ? NT : NS);
  double total = 0.0;
  /* teacher: softmax((x - c) / T_t) in double, stored as float */
  for (t = 0; t < NT; ++t)
    for (b = 0; b < B; ++b) {
      const float *x = teacher + ((size_t)t * B + b) * D;
      float *q = tprob + ((size_t)t * B + b) * D;
      double mx = -INFINITY, sum = 0.0;
      for (d = 0; d < D; ++d) {
        double y = ((double)x[d] - center[d]) / teacher_temp;
        mx = y > mx ? y : mx;
      }
      for (d = 0; d < D; ++d) sum += exp(((double)x[d] - center[d]) / teacher_temp - mx);
      for (d = 0; d < D; ++d)
        q[d] = (float)(exp(((double)x[d] - center[d]) / teacher_temp - mx) / sum);
    }
  /* student: log_softmax(x / T_s), kept in double for the loss (stored as float for backward);
     the loss sums, for each (s, b, d), -sum_{t != s} q[t,b,d] ls[s,b,d] in the order s, b, d, t
     (every pair except the same view index) */
  for (s = 0; s < NS; ++s)
    for (b = 0; b < B; ++b) {
      const float *x = student + ((size_t)s * B + b) * D;
      float *l = slogp + ((size_t)s * B + b) * D;
      double mx = -INFINITY, sum = 0.0, lse;
      for (d = 0; d < D; ++d) {
        double y = (double)x[d] / student_temp;
        mx = y > mx ? y : mx;
      }
      for (d = 0; d < D; ++d) sum += exp((double)x[d] / student_temp - mx);
      lse = mx + log(sum);
      for (d = 0; d < D; ++d) {
        double ls = (double)x[d] / student_temp - lse, Q = 0.0;
        l[d] = (float)ls;
        for (t = 0; t < NT; ++t)
          if (t != s) Q += tprob[((size_t)t * B + b) * D + d];
        total -= Q * ls;
      }
    }
  if (n_pairs <= 0 || B <= 0) return 0.0;
  return total / ((double)n_pairs * B);
}

/* Why: per (s, b), L holds -c sum_d Q_d ls_d with c = 1 / (n_pairs B) and
   ls = log_softmax(x / T_s); d ls_d / dx_e = (delta_de - p_e) / T_s with p = exp(ls), so
   dx_e = c (p_e sum_d Q_d - Q_e) / T_s, times dloss. The teacher is a constant (its EMA
   weights take no gradient). ACCUMULATES into dstudent; nothing when there is no pair or
   B <= 0. */
IOUPOS_DEF void ioupos_dino_loss_backward(float *dstudent, float dloss, const float *tprob,
                                          const float *slogp, int NT, int NS, int B, int D,
                                          float student_temp) {
  int t, s, b, d;
  long n_pairs = (long)NT * NS - (NT < NS ? NT : NS);
  double scale;
  if (n_pairs <= 0 || B <= 0) return;
  /* dL/dls[s,b,d] = -scale Q[d], Q = sum_{t != s} q[t,b]; through log_softmax (as torch:
     g - softmax * sum(g)) and the 1/T_s scaling. */
  scale = (double)dloss / ((double)n_pairs * B);
  for (s = 0; s < NS; ++s)
    for (b = 0; b < B; ++b) {
      const float *l = slogp + ((size_t)s * B + b) * D;
      float *dx = dstudent + ((size_t)s * B + b) * D;
      double Qsum = 0.0; /* sum_d Q[d]: 1 per teacher view up to rounding, kept as torch does */
      for (t = 0; t < NT; ++t) {
        if (t == s) continue;
        for (d = 0; d < D; ++d) Qsum += tprob[((size_t)t * B + b) * D + d];
      }
      for (d = 0; d < D; ++d) {
        double Q = 0.0;
        for (t = 0; t < NT; ++t)
          if (t != s) Q += tprob[((size_t)t * B + b) * D + d];
        dx[d] += (float)(scale * (exp((double)l[d]) * Qsum - Q) / student_temp);
      }
    }
}

/* The centre is an EMA of the teacher's mean logits over views and batch; the caller passes
   the logits the loss saw, after the loss (DINOLoss updates it at the end of its forward).
   Single process: the reference code's all_reduce of the batch centre over GPUs is the
   identity here. Sums in double, views then batch in order. */
IOUPOS_DEF void ioupos_dino_center_update(float *center, const float *teacher, int NT, int B,
                                          int D, float momentum) {
  int t, b, d;
  long rows = (long)NT * B;
  if (rows <= 0) return;
  for (d = 0; d < D; ++d) {
    double s = 0.0;
    for (t = 0; t < NT; ++t)
      for (b = 0; b < B; ++b) s += teacher[((size_t)t * B + b) * D + d];
    center[d] = (float)((double)center[d] * momentum + (s / rows) * (1.0 - (double)momentum));
  }
}

/* -- weight-normalised linear -- */
/* Weight normalisation (Salimans and Kingma, 2016), DINO's last layer: W = g v / |v| per
   output row, materialised into weight (overwritten) and then an ordinary linear layer without
   bias. |v| in double, no eps, as torch (a zero row of v divides by 0); vnorm[OC] saved for
   backward. Returns the linear layer's status. */
IOUPOS_DEF int ioupos_wnlinear_forward(float *out, float *weight, float *vnorm, const float *inp,
                                       const float *v, const float *g, int N, int C, int OC) {
  int o, c;
  for (o = 0; o < OC; ++o) {
    const float *vr = v + (size_t)o * C;
    double nrm = ioupos__wl_norm(vr, C), k = (g ? (double)g[o] : 1.0) / nrm;
    vnorm[o] = (float)nrm;
    for (c = 0; c < C; ++c) weight[(size_t)o * C + c] = (float)(vr[c] * k);
  }
  return ioupos_linear_forward(out, inp, weight, NULL, N, C, OC);
}

/* Why: dW/dg = vhat, so dg = vhat . dW; dW/dv = (g / |v|) (I - vhat vhat^T), so dv is dW with
   its component along v removed, times g / |v|. dv is orthogonal to v: a gradient step leaves
   |v| unchanged to first order, which is what decouples the direction from the length g.
   dinp ACCUMULATES through W itself; dweight is scratch, overwritten with dW = dout^T inp
   only when dv or dg is wanted. Returns 0 or a GEMM's status. */
IOUPOS_DEF int ioupos_wnlinear_backward(float *dinp, float *dv, float *dg, float *dweight,
                                        const float *dout, const float *inp, const float *v,
                                        const float *g, const float *weight, const float *vnorm,
                                        int N, int C, int OC) {
  int st, o, c;
  if (dinp) {
    st = ioupos_linear_backward(dinp, NULL, NULL, dout, inp, weight, N, C, OC);
    if (st) return st;
  }
  if (!dv && !dg) return IOUPOS_OK;
  memset(dweight, 0, sizeof(float) * (size_t)OC * (size_t)C);
  st = ioupos_linear_backward(NULL, dweight, NULL, dout, inp, weight, N, C, OC);
  if (st) return st;
  for (o = 0; o < OC; ++o) {
    const float *vr = v + (size_t)o * C, *dw = dweight + (size_t)o * C;
    double nrm = vnorm[o], gg = g ? (double)g[o] : 1.0, dot = 0.0;
    for (c = 0; c < C; ++c) dot += (double)vr[c] * dw[c];
    /* W = g v / |v|: dg = vhat . dW; dv = (g / |v|) (dW - vhat (vhat . dW)) */
    if (dg) dg[o] += (float)(dot / nrm);
    if (dv)
      for (c = 0; c < C; ++c)
        dv[(size_t)o * C + c] += (float)(gg / nrm * ((double)dw[c] - vr[c] * dot / (nrm * nrm)));
  }
  return IOUPOS_OK;
}

/* -- cross-entropy -- */
/* torch.nn.functional.cross_entropy, mean reduction: per row, logsumexp with the maximum
   subtracted, prob (overwritten) = exp(x - lse), and the loss lse - x[target]. target is not
   range-checked (it must be in [0, K)). Returns the mean, 0 for N = 0. */
IOUPOS_DEF double ioupos_crossentropy_forward(float *prob, const float *logits, const int *target,
                                              int N, int K) {
  int n, k;
  double total = 0.0;
  for (n = 0; n < N; ++n) {
    const float *x = logits + (size_t)n * K;
    float *p = prob + (size_t)n * K;
    double mx = -INFINITY, sum = 0.0, lse;
    for (k = 0; k < K; ++k) mx = x[k] > mx ? x[k] : mx;
    for (k = 0; k < K; ++k) sum += exp((double)x[k] - mx);
    lse = mx + log(sum);
    for (k = 0; k < K; ++k) p[k] = (float)exp((double)x[k] - lse);
    total += lse - x[target[n]];
  }
  return N > 0 ? total / N : 0.0;
}

/* d(lse - x_t)/dx_k = softmax_k - [k == t]: the saved prob minus the one-hot target, times
   dloss / N from the mean. ACCUMULATES into dlogits. */
IOUPOS_DEF void ioupos_crossentropy_backward(float *dlogits, float dloss, const float *prob,
                                             const int *target, int N, int K) {
  int n, k;
  double s = N > 0 ? (double)dloss / N : 0.0;
  for (n = 0; n < N; ++n) {
    const float *p = prob + (size_t)n * K;
    float *dx = dlogits + (size_t)n * K;
    for (k = 0; k < K; ++k)
      dx[k] += (float)(s * ((double)p[k] - (k == target[n] ? 1.0 : 0.0)));
  }
}

#ifdef __cplusplus
}
#endif


/* ---- 15. Optimisers, schedules, EMA and gradient clipping -------------------------------------- */


#define IOUPOS__OPT_PI 3.14159265358979323846

/* torch.optim.SGD's single-tensor step. The weight decay is coupled (L2: added to the gradient,
   so it passes through the momentum), unlike AdamW's. On the first step torch creates the buffer
   as a clone of d (no dampening, no m * 0 term). The fmafs stand where torch's Vectorized
   add(alpha) fuses; the momentum product stays a separate rounding as in buf.mul_(m). */
IOUPOS_DEF void ioupos_sgd_step(float *param, const float *grad, float *momentum_buf, size_t n,
                                float lr, float momentum, float weight_decay, int first_step) {
  size_t i;
  float neg_lr = -lr;
  for (i = 0; i < n; ++i) {
    float d = grad[i];
    if (weight_decay != 0.0f) d = fmaf(weight_decay, param[i], d); /* grad.add(param, alpha=wd) */
    if (momentum != 0.0f) {
      if (first_step) momentum_buf[i] = d; /* buf = grad.clone() */
      else {
        float scaled = momentum_buf[i] * momentum; /* buf.mul_(m).add_(d): two roundings, kept */
        momentum_buf[i] = scaled + d;              /* apart so no compiler contracts them */
      }
      d = momentum_buf[i];
    }
    param[i] = fmaf(neg_lr, d, param[i]); /* param.add_(d, alpha=-lr) */
  }
}

/* torch.optim.AdamW's _single_tensor_adamw (Loshchilov and Hutter): the decay is DECOUPLED,
   param *= 1 - lr wd before the Adam update and never through the moments. m and v are EMAs of
   g and g^2 started at 0, so for a stationary g E[m_t] = (1 - beta1^t) E[g]: the bias
   corrections undo that shrinkage towards 0. As in
   torch, eps is added after dividing sqrt(v) by sqrt(bc2), and bc1 is folded into the step
   size. torch's lerp takes start + w (end - start) for w < 0.5 and end - (end - start) (1 - w)
   otherwise, each exact at its own end; both branches are kept. */
IOUPOS_DEF void ioupos_adamw_step(float *param, const float *grad, float *m, float *v, size_t n,
                                  float lr, float beta1, float beta2, float eps,
                                  float weight_decay, int step) {
  size_t i;
  double dlr = (double)lr, db1 = (double)beta1, db2 = (double)beta2;
  /* Python-side scalars (double), rounded to float where the kernel takes them */
  double lr_wd = dlr * (double)weight_decay; /* own statement: not contracted into an fma */
  float decay = (float)(1.0 - lr_wd);
  float w1 = (float)(1.0 - db1);      /* lerp weight */
  float w1c = 1.0f - w1;           /* lerp's (1 - weight), in float as torch's kernel */
  float omb2 = (float)(1.0 - db2);
  double bc1 = 1.0 - pow(db1, (double)step);
  double bc2 = 1.0 - pow(db2, (double)step);
  float neg_step_size = (float)(-(dlr / bc1));
  float bc2_sqrt = (float)sqrt(bc2);
  int lerp_low = w1 < 0.5f;
  for (i = 0; i < n; ++i) {
    float g = grad[i], p = param[i], mi = m[i], vi = v[i], denom;
    if (weight_decay != 0.0f) p = p * decay; /* param.mul_(1 - lr*wd) */
    /* exp_avg.lerp_(grad, 1 - beta1): torch's CPU lerp formula */
    if (lerp_low) mi = fmaf(w1, g - mi, mi);
    else mi = fmaf(-(g - mi), w1c, g);
    /* exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2) */
    vi = vi * beta2;
    vi = fmaf(omb2, g * g, vi);
    /* denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps) */
    denom = sqrtf(vi) / bc2_sqrt + eps;
    /* param.addcdiv_(exp_avg, denom, value=-step_size) */
    p = fmaf(neg_step_size, mi / denom, p);
    param[i] = p;
    m[i] = mi;
    v[i] = vi;
  }
}

/* DINO's utils.cosine_scheduler, one element at a time instead of the whole array: the warm-up
   is np.linspace (step = (base - start) / (warmup - 1), the last element set to base), then
   final + 0.5 (base - final) (1 + cos(pi i / len)). Written in numpy's operation order (pi i
   first, then / len; the half first) so that the doubles match the array's. */
IOUPOS_DEF double ioupos_cosine_schedule(long it, long total, long warmup, double base,
                                         double final_value, double start_warmup) {
  long len;
  double angle, half, term;
  if (warmup < 0) warmup = 0;
  if (total <= 0 || total <= warmup) return base;
  if (it < 0) it = 0;
  if (it > total - 1) it = total - 1;
  if (it < warmup) {
    /* np.linspace(start, base, warmup): arange * step + start, last element set to stop */
    if (warmup == 1) return start_warmup;
    if (it == warmup - 1) return base;
    term = (double)it * ((base - start_warmup) / (double)(warmup - 1));
    return term + start_warmup;
  }
  len = total - warmup;
  /* numpy's order; each product its own statement so that no compiler contracts it */
  angle = IOUPOS__OPT_PI * (double)(it - warmup);
  angle = angle / (double)len;
  half = 0.5 * (base - final_value);
  term = half * (1.0 + cos(angle));
  return final_value + term;
}

/* CosineAnnealingLR's closed form, eta_min + (base - eta_min) (1 + cos(pi t / t_max)) / 2, in
   torch's order of operations; t_max <= 0 returns base. */
IOUPOS_DEF double ioupos_cosine_annealing_lr(long t, long t_max, double base, double eta_min) {
  double angle, term;
  if (t_max <= 0) return base;
  angle = IOUPOS__OPT_PI * (double)t;
  angle = angle / (double)t_max;
  term = (base - eta_min) * (1.0 + cos(angle));
  return eta_min + term / 2.0;
}

/* DINO's get_params_groups rule: biases and every parameter of at most one dimension (norm
   weights, ...) are not decayed: they set offsets and scales rather than features, and
   shrinking them towards 0 does not regularise the way decaying a weight matrix does. */
IOUPOS_DEF int ioupos_weight_decay_applies(int ndim, const char *name) {
  size_t len;
  if (ndim <= 1) return 0;
  if (!name) return 1;
  len = strlen(name);
  if (len >= 4 && memcmp(name + len - 4, "bias", 4) == 0) return 0;
  return 1;
}

/* DINO's cancel_gradients_last_layer: the last layer's gradient is set to None in the first
   freeze_last_layer epochs ("typically doing so during the first epoch helps training", the
   DINO code's help text), so the optimiser skips it entirely. */
IOUPOS_DEF int ioupos_dino_param_frozen(const char *name, int epoch, int freeze_last_layer) {
  return name && epoch < freeze_last_layer && strstr(name, "last_layer") != NULL;
}

/* DINO's momentum teacher, param_k.mul_(m).add_((1 - m) * param_q): m near 1 makes the teacher
   an average of the recent students, a slower, more stable target. The two products are
   separate statements: torch rounds each, and a fused multiply-add would change the bits. */
IOUPOS_DEF void ioupos_ema_update(float *teacher, const float *student, size_t n, double m) {
  size_t i;
  float mf = (float)m, omf = (float)(1.0 - m);
  for (i = 0; i < n; ++i) {
    float a = teacher[i] * mf, b = student[i] * omf;
    teacher[i] = a + b;
  }
}

/* ||x||_2 rounded to float, the sum of squares in double, in order */
static float ioupos__opt_norm(const float *x, size_t n) {
  double s = 0.0;
  size_t i;
  for (i = 0; i < n; ++i) {
    double sq = (double)x[i] * (double)x[i]; /* separate statement: never contracted to an fma */
    s += sq;
  }
  return (float)sqrt(s);
}

/* DINO's utils.clip_gradients for one tensor: coef = clip / (norm + 1e-6) in float, applied only
   when below 1. Returns the norm before clipping. */
IOUPOS_DEF float ioupos_clip_grad_per_param(float *grad, size_t n, float clip) {
  float norm = ioupos__opt_norm(grad, n);
  float coef = clip / (norm + 1e-6f);
  size_t i;
  if (coef < 1.0f)
    for (i = 0; i < n; ++i) grad[i] = grad[i] * coef;
  return norm;
}

/* torch.nn.utils.clip_grad_norm_: the total is the norm of the per-tensor norms (torch stacks
   them), each rounded to float first as torch's are; coef = min(max_norm / (total + 1e-6), 1)
   multiplies every gradient, also when it is 1 (exact). Returns the total before clipping. */
IOUPOS_DEF float ioupos_clip_grad_norm(float *const *grads, const size_t *ns, size_t count,
                                       float max_norm) {
  double s = 0.0;
  float total, coef;
  size_t t, i;
  for (t = 0; t < count; ++t) {
    double nt = (double)ioupos__opt_norm(grads[t], ns[t]);
    double sq = nt * nt;
    s += sq;
  }
  total = (float)sqrt(s);
  coef = max_norm / (total + 1e-6f);
  if (coef > 1.0f) coef = 1.0f;
  for (t = 0; t < count; ++t)
    for (i = 0; i < ns[t]; ++i) grads[t][i] = grads[t][i] * coef;
  return total;
}

/* ---- 16. Tensors, arenas and the backend operation table ------------------------------------ */

/* Registration only computes the layout: no memory exists until ioupos_params_alloc, so a model
   (encoder, heads, decoder) is registered into one table first and its total size is known before
   a backend is chosen. Each F32 tensor's size is rounded up to IOUPOS_TENSOR_ALIGN floats, so
   every offset is a multiple of 64 bytes: tensors start as aligned as the arena itself (CUDA
   allocations are at least 256-byte aligned), for vector loads and the device kernels alike, in
   the value, gradient and optimiser-moment arenas, which all share these offsets. I64 buffers need
   no alignment: they sit in a small host array that no kernel reads. The weight-decay exclusion is
   decided here, once, from the name and rank, so every optimiser applies the same rule. Every
   check comes before the table grows: on an error nothing is registered. */
IOUPOS_DEF int ioupos_tensor_add(ioupos_tensor_table *tt, const char *name, int dtype, int flags,
                                 int init, float init_scale, int ndim, const int64_t *shape) {
  ioupos_tensor_info *t;
  size_t numel = 1, len = name ? strlen(name) : 0;
  int d;
  if (!tt || len == 0 || len >= IOUPOS_TENSOR_NAME_MAX)
    return ioupos__fail(IOUPOS_EINVAL, "tensor name '%s' is empty or longer than %d bytes",
                        name ? name : "(null)", IOUPOS_TENSOR_NAME_MAX - 1);
  if (dtype != IOUPOS_ST_F32 && dtype != IOUPOS_ST_I64)
    return ioupos__fail(IOUPOS_EINVAL, "tensor '%s': dtype must be F32 or I64", name);
  if (ndim < 0 || ndim > IOUPOS_TENSOR_MAX_DIMS)
    return ioupos__fail(IOUPOS_EINVAL, "tensor '%s': %d dimensions", name, ndim);
  for (d = 0; d < ndim; ++d) {
    if (shape[d] < 1 || shape[d] > (int64_t)1 << 40)
      return ioupos__fail(IOUPOS_EINVAL, "tensor '%s': dimension %d is %lld", name, d,
                          (long long)shape[d]);
    numel *= (size_t)shape[d];
  }
  if (ioupos_tensor_find(tt, name) >= 0)
    return ioupos__fail(IOUPOS_EINVAL, "tensor '%s' registered twice", name);
  if (!ioupos__grow((void **)&tt->t, (size_t)tt->n, &tt->cap, sizeof *tt->t))
    return ioupos__fail(IOUPOS_ENOMEM, "out of memory registering tensor '%s'", name);
  t = &tt->t[tt->n];
  memset(t, 0, sizeof *t);
  memcpy(t->name, name, len + 1);
  t->dtype = dtype;
  t->ndim = ndim;
  for (d = 0; d < ndim; ++d) t->shape[d] = shape[d];
  t->numel = numel;
  t->flags = flags;
  if (dtype == IOUPOS_ST_F32 && !(flags & IOUPOS_TENSOR_BUFFER) &&
      !ioupos_weight_decay_applies(ndim, name))
    t->flags |= IOUPOS_TENSOR_NO_DECAY;
  t->init = init;
  t->init_scale = init_scale;
  if (dtype == IOUPOS_ST_F32) {
    t->offset = tt->total;
    tt->total += (numel + IOUPOS_TENSOR_ALIGN - 1) / IOUPOS_TENSOR_ALIGN * IOUPOS_TENSOR_ALIGN;
  } else {
    t->offset = tt->itotal;
    tt->itotal += numel;
  }
  return tt->n++;
}

/* A linear search: a model has a few hundred tensors at most and names are looked up while
   building, loading and comparing, never per training step. */
IOUPOS_DEF int ioupos_tensor_find(const ioupos_tensor_table *tt, const char *name) {
  int i;
  for (i = 0; i < tt->n; ++i)
    if (strcmp(tt->t[i].name, name) == 0) return i;
  return -1;
}

IOUPOS_DEF void ioupos_tensor_table_free(ioupos_tensor_table *tt) {
  if (!tt) return;
  IOUPOS_FREE(tt->t);
  memset(tt, 0, sizeof *tt);
}

/* registers prefix + formatted name; shape given as up to 6 ints (0 ends the list).
   An empty list (shape[0] == 0) registers a 0-dimensional tensor of one element, which is how
   torch stores num_batches_tracked. A name that does not fit is an error, never truncated: a
   truncated name would silently miss the state dict's key. init_scale is left 0; callers of the
   UNIFORM and TRUNC_NORMAL rules set tt->t[i].init_scale after the call. */
#if defined(__GNUC__)
__attribute__((format(printf, 6, 7)))
#endif
static int ioupos__tadd(ioupos_tensor_table *tt, int dtype, int flags, int init, const int64_t *shape,
                        const char *fmt, ...) {
  char name[IOUPOS_TENSOR_NAME_MAX + 1];
  int ndim = 0, n;
  va_list ap;
  va_start(ap, fmt);
  n = vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  if (n < 0 || n >= IOUPOS_TENSOR_NAME_MAX)
    return ioupos__fail(IOUPOS_EINVAL, "tensor name '%s...' too long", name);
  while (ndim < IOUPOS_TENSOR_MAX_DIMS && shape[ndim] > 0) ++ndim;
  return ioupos_tensor_add(tt, name, dtype, flags, init, 0.0f, ndim, shape);
}

/* --- the CPU backend: host memory and the functions of sections 10-15 --- */
/* Host memory needs no transfers, so upload, download and copy are all memmove (overlap is
   harmless here, although the CUDA backend's copy forbids it). alloc zero-fills, as the table's
   contract requires: parameter gradients and activation buffers start at zero without a zero()
   call, and a zero-byte request still returns a unique pointer, so NULL always means out of
   memory. Every CPU operation runs synchronously and reports a failure through its own return
   value, so sync() has nothing to wait for. */
static void *ioupos__cpu_alloc(size_t bytes) { return ioupos__calloc(bytes ? bytes : 1, 1); }
static void ioupos__cpu_release(void *p) { IOUPOS_FREE(p); }
static void ioupos__cpu_copy(void *dst, const void *src, size_t bytes) {
  if (bytes) memmove(dst, src, bytes);
}
static void ioupos__cpu_zero(void *dst, size_t bytes) {
  if (bytes) memset(dst, 0, bytes);
}
static int ioupos__cpu_sync(void) { return 0; }

/* The table, filled by name (C++11 has no designated initializers), once for all threads. */
static ioupos_backend ioupos__backend_cpu;
static pthread_once_t ioupos__backend_cpu_once = PTHREAD_ONCE_INIT;

/* Every entry is the public CPU function itself, so a model run on this table IS the reference
   that a device backend is compared with, and each function's comment is the operation's contract.
   Section 19's entries are whole MONAI blocks (UnetResBlock, UnetrUpBlock, UnetOutBlock) rather
   than their convolutions and norms: the CPU blocks call those layers directly on host pointers,
   so a device backend provides each block as one operation (ioupos_cuda.cu composes it from its
   own kernels) and the model code above the table stays the same for both. */
static void ioupos__backend_cpu_fill(void) {
  ioupos_backend *b = &ioupos__backend_cpu;
  b->name = "cpu";
  b->alloc = ioupos__cpu_alloc;
  b->release = ioupos__cpu_release;
  b->upload = ioupos__cpu_copy;
  b->download = ioupos__cpu_copy;
  b->copy = ioupos__cpu_copy;
  b->zero = ioupos__cpu_zero;
  b->sync = ioupos__cpu_sync;
  b->linear_forward = ioupos_linear_forward;
  b->linear_backward = ioupos_linear_backward;
  b->layernorm_forward = ioupos_layernorm_forward;
  b->layernorm_backward = ioupos_layernorm_backward;
  b->gelu_forward = ioupos_gelu_forward;
  b->gelu_backward = ioupos_gelu_backward;
  b->relu_forward = ioupos_relu_forward;
  b->relu_backward = ioupos_relu_backward;
  b->l2norm_forward = ioupos_l2norm_forward;
  b->l2norm_backward = ioupos_l2norm_backward;
  b->avgpool_forward = ioupos_avgpool_forward;
  b->avgpool_backward = ioupos_avgpool_backward;
  b->batchnorm_forward_train = ioupos_batchnorm_forward_train;
  b->batchnorm_backward_train = ioupos_batchnorm_backward_train;
  b->batchnorm_forward_eval = ioupos_batchnorm_forward_eval;
  b->batchnorm_backward_eval = ioupos_batchnorm_backward_eval;
  b->patch_embed_forward = ioupos_patch_embed_forward;
  b->patch_embed_backward = ioupos_patch_embed_backward;
  b->patch_merging_forward = ioupos_patch_merging_forward;
  b->patch_merging_backward = ioupos_patch_merging_backward;
  b->residual_forward = ioupos_residual_forward;
  b->residual_backward = ioupos_residual_backward;
  b->mlp_forward = ioupos_mlp_forward;
  b->mlp_backward = ioupos_mlp_backward;
  b->swin_attention_forward = ioupos_swin_attention_forward;
  b->swin_attention_backward = ioupos_swin_attention_backward;
  b->wnlinear_forward = ioupos_wnlinear_forward;
  b->wnlinear_backward = ioupos_wnlinear_backward;
  b->simsiam_loss_forward = ioupos_simsiam_loss_forward;
  b->simsiam_loss_backward = ioupos_simsiam_loss_backward;
  b->dino_loss_forward = ioupos_dino_loss_forward;
  b->dino_loss_backward = ioupos_dino_loss_backward;
  b->dino_center_update = ioupos_dino_center_update;
  b->sgd_step = ioupos_sgd_step;
  b->adamw_step = ioupos_adamw_step;
  b->ema_update = ioupos_ema_update;
  b->clip_grad_per_param = ioupos_clip_grad_per_param;
  b->to_channels_first = ioupos_to_channels_first;
  b->to_channels_first_backward = ioupos_to_channels_first_backward;
  b->unet_resblock_forward = ioupos_unet_resblock_forward;
  b->unet_resblock_backward = ioupos_unet_resblock_backward;
  b->unetr_upblock_forward = ioupos_unetr_upblock_forward;
  b->unetr_upblock_backward = ioupos_unetr_upblock_backward;
  b->unet_outblock_forward = ioupos_unet_outblock_forward;
  b->unet_outblock_backward = ioupos_unet_outblock_backward;
}

/* The first call from any thread fills the table, exactly once (pthread_once); the pointer is to
   static storage and is never released. */
IOUPOS_DEF const ioupos_backend *ioupos_backend_cpu(void) {
  pthread_once(&ioupos__backend_cpu_once, ioupos__backend_cpu_fill);
  return &ioupos__backend_cpu;
}

/* --- parameters --- */
/* Values and gradients come from the backend (device memory on CUDA); the I64 buffers always come
   from the host, because only host code touches them: num_batches_tracked is counted by the head's
   forward and relative_position_index is a state-dict copy (each encoder uploads its own int index
   at plan time). The + 1 keeps that allocation non-empty for a model without I64 tensors.
   with_grad 0 is for parameters that are never differentiated (the DINO teacher, evaluation). On
   failure everything goes through ioupos_params_free, which frees the table too: the model must be
   registered again before another try. */
IOUPOS_DEF int ioupos_params_alloc(ioupos_params *p, const ioupos_backend *be, int with_grad) {
  size_t bytes = p->table.total * sizeof(float);
  p->be = be;
  p->value = (float *)be->alloc(bytes);
  p->grad = with_grad ? (float *)be->alloc(bytes) : NULL;
  p->ivalue = (int64_t *)ioupos__calloc(p->table.itotal + 1, sizeof(int64_t));
  if (!p->value || (with_grad && !p->grad) || !p->ivalue) {
    ioupos_params_free(p);
    return ioupos__fail(IOUPOS_ENOMEM, "out of memory for %zu parameters on backend %s",
                        p->table.total, be->name);
  }
  return 0;
}

IOUPOS_DEF void ioupos_params_free(ioupos_params *p) {
  if (!p) return;
  if (p->be) {
    p->be->release(p->value);
    p->be->release(p->grad);
  }
  IOUPOS_FREE(p->ivalue);
  ioupos_tensor_table_free(&p->table);
  memset(p, 0, sizeof *p);
}

/* Offset arithmetic only, valid for any backend: on CUDA the result is device memory, which host
   code must not dereference. The gradient pointer is NULL when the arenas were allocated without
   gradients. */
IOUPOS_DEF float *ioupos_params_value(const ioupos_params *p, int i) {
  return p->value + p->table.t[i].offset;
}
IOUPOS_DEF float *ioupos_params_grad(const ioupos_params *p, int i) {
  return p->grad ? p->grad + p->table.t[i].offset : NULL;
}

/* standard normal by the polar method, double precision */
static double ioupos__rng_normal(ioupos_rng *rng) {
  double u, v, s;
  do {
    u = 2.0 * ioupos_rng_uniform(rng) - 1.0;
    v = 2.0 * ioupos_rng_uniform(rng) - 1.0;
    s = u * u + v * v;
  } while (s >= 1.0 || s == 0.0);
  return u * sqrt(-2.0 * log(s) / s);
}

/* The values are drawn on the host and uploaded tensor by tensor through one staging buffer the
   size of the largest tensor, so a seed gives the same model on every backend. Each tensor draws
   from ioupos_rng_split(rng, its index): its values depend on the seed and its place in the table,
   not on the order of filling. The truncation bounds are absolute (-2, 2), as timm's and MONAI's
   trunc_normal_(std, a=-2, b=2), enforced by redrawing; with std 0.02 a redraw practically never
   happens. ZERO and ONE tensors are written too rather than left to alloc's zeros, so init also
   resets a model that has been trained. The return value is sync()'s: a device failure during the
   uploads is reported here. */
IOUPOS_DEF int ioupos_params_init(ioupos_params *p, const ioupos_rng *rng) {
  const ioupos_tensor_table *tt = &p->table;
  size_t maxn = 1, k;
  float *host;
  int i;
  for (i = 0; i < tt->n; ++i)
    if (tt->t[i].dtype == IOUPOS_ST_F32 && tt->t[i].numel > maxn) maxn = tt->t[i].numel;
  host = (float *)ioupos__calloc(maxn, sizeof(float));
  if (!host) return ioupos__fail(IOUPOS_ENOMEM, "out of memory initialising parameters");
  for (i = 0; i < tt->n; ++i) {
    const ioupos_tensor_info *t = &tt->t[i];
    ioupos_rng r = ioupos_rng_split(rng, (uint64_t)i);
    if (t->dtype != IOUPOS_ST_F32 || t->init == IOUPOS_INIT_NONE) continue;
    for (k = 0; k < t->numel; ++k) {
      double x = 0.0;
      switch (t->init) {
        case IOUPOS_INIT_ONE: x = 1.0; break;
        case IOUPOS_INIT_UNIFORM: x = (2.0 * ioupos_rng_uniform(&r) - 1.0) * t->init_scale; break;
        case IOUPOS_INIT_TRUNC_NORMAL:
          do x = ioupos__rng_normal(&r) * t->init_scale;
          while (x < -2.0 || x > 2.0);
          break;
        default: x = 0.0;
      }
      host[k] = (float)x;
    }
    p->be->upload(p->value + t->offset, host, t->numel * sizeof(float));
  }
  IOUPOS_FREE(host);
  return p->be->sync();
}

/* Identical registration (the same names in the same order, checked here) implies identical
   offsets, so the whole F32 arena, alignment padding included, moves in one backend copy (device
   to device on CUDA) and the I64 buffers in one host memcpy. This is how the DINO teacher starts
   as a copy of the student. Gradients are not copied: dst may have none. */
IOUPOS_DEF int ioupos_params_copy(ioupos_params *dst, const ioupos_params *src) {
  int i;
  if (dst->table.n != src->table.n || dst->table.total != src->table.total)
    return ioupos__fail(IOUPOS_EINVAL, "parameter copy between different tables");
  for (i = 0; i < src->table.n; ++i)
    if (strcmp(dst->table.t[i].name, src->table.t[i].name) != 0)
      return ioupos__fail(IOUPOS_EINVAL, "parameter copy: tensor %d is '%s' vs '%s'", i,
                          dst->table.t[i].name, src->table.t[i].name);
  dst->be->copy(dst->value, src->value, src->table.total * sizeof(float));
  if (src->table.itotal)
    memcpy(dst->ivalue, src->ivalue, src->table.itotal * sizeof(int64_t));
  return dst->be->sync();
}

/* dst = a b if it fits in cap bytes (returns 1), else 0 */
static int ioupos__join(char *dst, size_t cap, const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la + lb + 1 > cap) return 0;
  memcpy(dst, a, la);
  memcpy(dst + la, b, lb + 1);
  return 1;
}

static int ioupos__has_prefix(const char *s, const char *prefix) {
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* One download of the whole F32 arena, then a list of views into it. A selected tensor is renamed
   by replacing the prefix `ours` with `theirs` (a SwinUNETR's swinViT.* can be written as
   backbone.*, or the reverse) and keeps the table's shape and dtype, so the file's keys and shapes
   are the PyTorch state dict's. Each name gets a slot of namecap bytes, enough for `theirs` plus
   any table name. F32 tensors are written as F32 without conversion, I64 buffers from the host
   array; the safetensors writer replaces the file atomically (section 5). */
IOUPOS_DEF int ioupos_params_save(const ioupos_params *p, const char *path, const char *ours,
                                  const char *theirs, int n_meta, const ioupos_st_pair *meta) {
  const ioupos_tensor_table *tt = &p->table;
  ioupos_st_tensor *ts = NULL;
  char *names = NULL;
  float *host = NULL;
  size_t lo = strlen(ours), lt = strlen(theirs), namecap = lt + IOUPOS_TENSOR_NAME_MAX;
  int i, d, n = 0, rc;
  ts = (ioupos_st_tensor *)ioupos__calloc((size_t)tt->n + 1, sizeof *ts);
  names = (char *)ioupos__calloc((size_t)tt->n + 1, namecap);
  host = (float *)ioupos__calloc(tt->total + 1, sizeof(float));
  if (!ts || !names || !host) {
    rc = ioupos__fail(IOUPOS_ENOMEM, "out of memory saving %s", path);
    goto done;
  }
  p->be->download(host, p->value, tt->total * sizeof(float));
  if ((rc = p->be->sync()) != 0) goto done;
  for (i = 0; i < tt->n; ++i) {
    const ioupos_tensor_info *t = &tt->t[i];
    char *nm = names + (size_t)n * namecap;
    if (!ioupos__has_prefix(t->name, ours)) continue;
    memcpy(nm, theirs, lt);
    strcpy(nm + lt, t->name + lo);
    ts[n].name = nm;
    ts[n].dtype = t->dtype;
    ts[n].ndim = t->ndim;
    for (d = 0; d < t->ndim; ++d) ts[n].shape[d] = t->shape[d];
    ts[n].data = t->dtype == IOUPOS_ST_F32 ? (const void *)(host + t->offset)
                                           : (const void *)(p->ivalue + t->offset);
    ts[n].nbytes = t->numel * (t->dtype == IOUPOS_ST_F32 ? 4 : 8);
    ++n;
  }
  rc = ioupos_safetensors_write(path, n, ts, n_meta, meta);
done:
  IOUPOS_FREE(ts);
  IOUPOS_FREE(names);
  IOUPOS_FREE(host);
  return rc;
}

static void ioupos__shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
  size_t len;
  int d;
  snprintf(buf, cap, "[");
  for (d = 0; d < ndim; ++d) {
    len = strlen(buf);
    snprintf(buf + len, cap - len, "%s%lld", d ? ", " : "", (long long)shape[d]);
  }
  len = strlen(buf);
  snprintf(buf + len, cap - len, "]");
}

/* load_state_dict(strict=True), all or nothing. The first pass looks only at the file's names, so
   a checkpoint written for another model fails before anything is converted. The second converts
   every selected tensor into a host copy of the WHOLE arena, downloaded first so that tensors
   outside `ours` keep their current values when the arena is uploaded back in one piece; p is
   written only after every tensor has passed. I64 data are decoded from safetensors' little-endian
   bytes whatever the host's byte order. relative_position_index is compared, not just loaded,
   because shapes cannot always tell windows apart: windows 7 x 5 and 5 x 7 give the same table and
   index shapes, only the index's contents differ. The model's buffers must have been filled
   (ioupos_swin_encoder_buffers or plan) for that comparison to mean anything. */
IOUPOS_DEF int ioupos_params_load(ioupos_params *p, const ioupos_st_file *f, const char *ours,
                                  const char *theirs, int *n_loaded, int *n_other) {
  const ioupos_tensor_table *tt = &p->table;
  size_t lo = strlen(ours), lt = strlen(theirs);
  float *host = NULL;
  int64_t *ihost = NULL;
  char name[2 * IOUPOS_TENSOR_NAME_MAX + 256], s1[160], s2[160];
  int i, d, rc = 0, loaded = 0, other = 0, unexpected = 0;
  const char *first_unexpected = NULL;
  if (n_loaded) *n_loaded = 0;
  if (n_other) *n_other = 0;
  /* every file tensor under `theirs` must be one of ours */
  for (i = 0; i < f->n; ++i) {
    const char *fn = f->tensors[i].name;
    int k;
    if (!ioupos__has_prefix(fn, theirs)) {
      ++other;
      continue;
    }
    k = ioupos__join(name, sizeof name, ours, fn + lt) ? ioupos_tensor_find(tt, name) : -1;
    if (k < 0) {
      if (!first_unexpected) first_unexpected = fn;
      ++unexpected;
    }
  }
  if (unexpected)
    return ioupos__fail(IOUPOS_EFORMAT,
                        "checkpoint has %d tensor(s) the model does not have, e.g. '%s' (was it "
                        "written for another model or configuration?)",
                        unexpected, first_unexpected);
  host = (float *)ioupos__calloc(tt->total + 1, sizeof(float));
  ihost = (int64_t *)ioupos__calloc(tt->itotal + 1, sizeof(int64_t));
  if (!host || !ihost) {
    rc = ioupos__fail(IOUPOS_ENOMEM, "out of memory loading a checkpoint");
    goto done;
  }
  p->be->download(host, p->value, tt->total * sizeof(float));
  if (tt->itotal) memcpy(ihost, p->ivalue, tt->itotal * sizeof(int64_t));
  for (i = 0; i < tt->n; ++i) {
    const ioupos_tensor_info *t = &tt->t[i];
    const ioupos_st_tensor *ft;
    int same;
    if (!ioupos__has_prefix(t->name, ours)) continue;
    ft = ioupos__join(name, sizeof name, theirs, t->name + lo) ? ioupos_safetensors_find(f, name)
                                                                : NULL;
    if (!ft) {
      rc = ioupos__fail(IOUPOS_EFORMAT, "checkpoint lacks tensor '%s'", name);
      goto done;
    }
    same = ft->ndim == t->ndim;
    for (d = 0; same && d < t->ndim; ++d) same = ft->shape[d] == t->shape[d];
    if (!same) {
      ioupos__shape_str(s1, sizeof s1, ft->ndim, ft->shape);
      ioupos__shape_str(s2, sizeof s2, t->ndim, t->shape);
      rc = ioupos__fail(IOUPOS_EFORMAT,
                        "checkpoint tensor '%s' has shape %s, the model expects %s (another "
                        "`embed_dim`, window, patch or depth?)",
                        name, s1, s2);
      goto done;
    }
    if (t->dtype == IOUPOS_ST_F32) {
      if (ioupos_st_to_f32(ft, host + t->offset) != 0) {
        rc = ioupos__fail(IOUPOS_EFORMAT, "checkpoint tensor '%s' has dtype %s, not a float",
                          name, ioupos_st_dtype_name(ft->dtype));
        goto done;
      }
      if ((rc = ioupos__st_check_finite(f, name, host + t->offset, NULL, t->numel)) != 0) goto done;
    } else {
      const unsigned char *b = (const unsigned char *)ft->data;
      size_t k;
      if (ft->dtype != IOUPOS_ST_I64) {
        rc = ioupos__fail(IOUPOS_EFORMAT, "checkpoint tensor '%s' has dtype %s, expected I64",
                          name, ioupos_st_dtype_name(ft->dtype));
        goto done;
      }
      for (k = 0; k < t->numel; ++k) {
        uint64_t u = 0;
        int byte;
        for (byte = 7; byte >= 0; --byte) u = (u << 8) | b[8 * k + (size_t)byte];
        if (strstr(t->name, "relative_position_index") && (int64_t)u != p->ivalue[t->offset + k]) {
          rc = ioupos__fail(IOUPOS_EFORMAT,
                            "checkpoint tensor '%s' differs from the model's at element %zu: the "
                            "file was written for another window size",
                            name, k);
          goto done;
        }
        ihost[t->offset + k] = (int64_t)u;
      }
    }
    ++loaded;
  }
  p->be->upload(p->value, host, tt->total * sizeof(float));
  if (tt->itotal) memcpy(p->ivalue, ihost, tt->itotal * sizeof(int64_t));
  rc = p->be->sync();
  if (n_loaded) *n_loaded = loaded;
  if (n_other) *n_other = other;
done:
  IOUPOS_FREE(host);
  IOUPOS_FREE(ihost);
  return rc;
}


/* ---- 17. Models: the Swin encoder, the SimSiam and DINO heads ------------------------------- */

/* MONAI SwinUNETR's encoder at feature_size 48: heads 3 << s, i.e. (3, 6, 12, 24), keep every head
   16 channels wide while the width doubles per stage; window axes beyond spatial_dims stay 0 and
   are never read. */
IOUPOS_DEF void ioupos_swin_config_default(ioupos_swin_config *c, int spatial_dims) {
  int s;
  memset(c, 0, sizeof *c);
  c->spatial_dims = spatial_dims;
  c->in_chans = 1;
  c->embed_dim = 48;
  c->patch_size = 2;
  for (s = 0; s < 3; ++s) c->window[s] = s < spatial_dims ? 7 : 0;
  for (s = 0; s < 4; ++s) {
    c->depths[s] = 2;
    c->num_heads[s] = 3 << s;
  }
  c->drop_path_rate = 0.1f;
}

/* Catches here, with the option's name, what would otherwise fail deep inside a layer: the
   attention splits each stage's C into NH heads of C / NH channels, so NH must divide the width of
   its own stage (embed_dim << s), not only embed_dim. The back-quoted names are the fields, which
   the command-line tools turn into their option names (drivers/cli.h, cli_flags). */
IOUPOS_DEF int ioupos_swin_config_check(const ioupos_swin_config *c) {
  int s;
  if (c->spatial_dims != 2 && c->spatial_dims != 3)
    return ioupos__fail(IOUPOS_EINVAL, "`spatial_dims` must be 2 or 3, not %d", c->spatial_dims);
  if (c->in_chans < 1 || c->embed_dim < 1 || c->embed_dim > 4096)
    return ioupos__fail(IOUPOS_EINVAL, "`embed_dim` %d / in_chans %d out of range",
                        c->embed_dim, c->in_chans);
  if (c->patch_size < 1 || c->patch_size > 64)
    return ioupos__fail(IOUPOS_EINVAL, "`patch_size` %d out of range [1, 64]", c->patch_size);
  for (s = 0; s < c->spatial_dims; ++s)
    if (c->window[s] < 1 || c->window[s] > 64)
      return ioupos__fail(IOUPOS_EINVAL, "`window` %d out of range [1, 64]", c->window[s]);
  for (s = 0; s < 4; ++s) {
    if (c->depths[s] < 1 || c->depths[s] > IOUPOS_SWIN_MAX_DEPTH)
      return ioupos__fail(IOUPOS_EINVAL, "`depths`: stage %d has %d blocks (1..%d)", s + 1,
                          c->depths[s], IOUPOS_SWIN_MAX_DEPTH);
    if (c->num_heads[s] < 1 || (c->embed_dim << s) % c->num_heads[s] != 0)
      return ioupos__fail(IOUPOS_EINVAL,
                          "`num_heads`: stage %d has %d heads, which must divide its width %d "
                          "(`embed_dim` %d x %d)",
                          s + 1, c->num_heads[s], c->embed_dim << s, c->embed_dim, 1 << s);
  }
  if (!(c->drop_path_rate >= 0.0f && c->drop_path_rate < 1.0f))
    return ioupos__fail(IOUPOS_EINVAL, "`drop_path_rate` %g out of range [0, 1)",
                        (double)c->drop_path_rate);
  return 0;
}

/* stage 4's width: embed_dim doubled by each of the four patch mergings */
IOUPOS_DEF int ioupos_swin_feature_dim(const ioupos_swin_config *c) { return 16 * c->embed_dim; }

/* registers a Linear(in -> out) weight (+ bias) with PyTorch's default init.
   nn.Linear's reset_parameters, kaiming_uniform_(a = sqrt 5), amounts to U(+-1/sqrt(in)), and the
   bias uses the same bound. The weight is [out][in] as torch stores it (the layers use it
   transposed in the GEMM, no copy). b NULL registers no bias: lightly's Linear in front of a batch
   norm, whose mean subtraction would cancel one. */
static int ioupos__reg_linear(ioupos_tensor_table *tt, int *w, int *b, int in, int out,
                              const char *prefix, const char *name) {
  int64_t sw[3], sb[2];
  float bound = 1.0f / sqrtf((float)in);
  sw[0] = out; sw[1] = in; sw[2] = 0;
  sb[0] = out; sb[1] = 0;
  *w = ioupos__tadd(tt, IOUPOS_ST_F32, 0, IOUPOS_INIT_UNIFORM, sw, "%s%s.weight", prefix, name);
  if (*w < 0) return *w;
  tt->t[*w].init_scale = bound;
  if (!b) return 0;
  *b = ioupos__tadd(tt, IOUPOS_ST_F32, 0, IOUPOS_INIT_UNIFORM, sb, "%s%s.bias", prefix, name);
  if (*b < 0) return *b;
  tt->t[*b].init_scale = bound;
  return 0;
}

/* registers a LayerNorm(C): weight ones, bias zeros */
static int ioupos__reg_norm(ioupos_tensor_table *tt, int *w, int *b, int C, const char *prefix,
                            const char *name) {
  int64_t s[2];
  s[0] = C; s[1] = 0;
  *w = ioupos__tadd(tt, IOUPOS_ST_F32, 0, IOUPOS_INIT_ONE, s, "%s%s.weight", prefix, name);
  if (*w < 0) return *w;
  *b = ioupos__tadd(tt, IOUPOS_ST_F32, 0, IOUPOS_INIT_ZERO, s, "%s%s.bias", prefix, name);
  return *b < 0 ? *b : 0;
}

/* Tensors are registered in MONAI's module order (patch_embed, then per stage its blocks and its
   downsample), so the table, the checkpoint files and a PyTorch state_dict list them alike. MONAI
   keeps each stage as a ModuleList holding one BasicLayer (layers1..layers4), hence the ".0." in
   every name. The int64 relative_position_index buffer is registered only so that a checkpoint
   round-trips through MONAI with strict=True; its contents come from ioupos_swin_encoder_buffers.
   Nothing is allocated and no memory is owned until plan. */
IOUPOS_DEF int ioupos_swin_encoder_init(ioupos_swin_encoder *e, const ioupos_swin_config *cfg,
                                        ioupos_tensor_table *tt, const char *prefix) {
  int nd = cfg->spatial_dims, s, j, d, rc, total = 0, bi = 0, rows = 1, ntok = 1, K;
  int64_t shape[IOUPOS_TENSOR_MAX_DIMS + 1];
  char pre[IOUPOS_TENSOR_NAME_MAX];
  memset(e, 0, sizeof *e);
  if ((rc = ioupos_swin_config_check(cfg)) != 0) return rc;
  e->cfg = *cfg;
  for (s = 0; s < 4; ++s) total += cfg->depths[s];
  for (d = 0; d < nd; ++d) {
    rows *= 2 * cfg->window[d] - 1;
    ntok *= cfg->window[d];
  }
  /* patch_embed.proj: Conv(in_chans -> C, kernel = stride = patch) */
  shape[0] = cfg->embed_dim;
  shape[1] = cfg->in_chans;
  for (d = 0; d < nd; ++d) shape[2 + d] = cfg->patch_size;
  shape[2 + nd] = 0;
  /* torch's fan_in of a conv weight [C][in_chans][p...] is in_chans p^dims; the bias shares its
     bound */
  K = cfg->in_chans;
  for (d = 0; d < nd; ++d) K *= cfg->patch_size;
  e->patch_w = ioupos__tadd(tt, IOUPOS_ST_F32, 0, IOUPOS_INIT_UNIFORM, shape,
                            "%spatch_embed.proj.weight", prefix);
  if (e->patch_w < 0) return e->patch_w;
  shape[1] = 0;
  e->patch_b = ioupos__tadd(tt, IOUPOS_ST_F32, 0, IOUPOS_INIT_UNIFORM, shape,
                            "%spatch_embed.proj.bias", prefix);
  if (e->patch_b < 0) return e->patch_b;
  tt->t[e->patch_w].init_scale = tt->t[e->patch_b].init_scale = 1.0f / sqrtf((float)K);
  for (s = 0; s < 4; ++s) {
    int C = cfg->embed_dim << s, NH = cfg->num_heads[s];
    for (j = 0; j < cfg->depths[s]; ++j, ++bi) {
      ioupos_swin_block *b = &e->blocks[bi];
      b->stage = s;
      b->index = j;
      b->shifted = j % 2;
      /* torch.linspace(0, rate, total)[bi] in float */
      b->drop_prob = total > 1 ? (float)((double)cfg->drop_path_rate * bi / (total - 1)) : 0.0f;
      snprintf(pre, sizeof pre, "%slayers%d.0.blocks.%d.", prefix, s + 1, j);
      if ((rc = ioupos__reg_norm(tt, &b->norm1_w, &b->norm1_b, C, pre, "norm1")) != 0) return rc;
      shape[0] = rows; shape[1] = NH; shape[2] = 0;
      b->table = ioupos__tadd(tt, IOUPOS_ST_F32, 0, IOUPOS_INIT_TRUNC_NORMAL, shape,
                              "%sattn.relative_position_bias_table", pre);
      if (b->table < 0) return b->table;
      tt->t[b->table].init_scale = 0.02f;
      shape[0] = ntok; shape[1] = ntok; shape[2] = 0;
      b->rel_index = ioupos__tadd(tt, IOUPOS_ST_I64, IOUPOS_TENSOR_BUFFER, IOUPOS_INIT_NONE,
                                  shape, "%sattn.relative_position_index", pre);
      if (b->rel_index < 0) return b->rel_index;
      if ((rc = ioupos__reg_linear(tt, &b->qkv_w, &b->qkv_b, C, 3 * C, pre, "attn.qkv")) ||
          (rc = ioupos__reg_linear(tt, &b->proj_w, &b->proj_b, C, C, pre, "attn.proj")) ||
          (rc = ioupos__reg_norm(tt, &b->norm2_w, &b->norm2_b, C, pre, "norm2")) ||
          (rc = ioupos__reg_linear(tt, &b->fc1_w, &b->fc1_b, C, 4 * C, pre, "mlp.linear1")) ||
          (rc = ioupos__reg_linear(tt, &b->fc2_w, &b->fc2_b, 4 * C, C, pre, "mlp.linear2")))
        return rc;
    }
    /* MONAI's PatchMerging: LayerNorm over the 2^dims concatenated sub-grids, then Linear(2^dims C
       -> 2C) without bias. Stage 4 has one too: its output x4 is the deepest stage output. */
    snprintf(pre, sizeof pre, "%slayers%d.0.downsample.", prefix, s + 1);
    K = (1 << nd) * C;
    if ((rc = ioupos__reg_norm(tt, &e->merge_norm_w[s], &e->merge_norm_b[s], K, pre, "norm")) ||
        (rc = ioupos__reg_linear(tt, &e->merge_red[s], NULL, K, 2 * C, pre, "reduction")))
      return rc;
  }
  e->n_blocks = bi;
  return 0;
}

/* patch_embed.proj.weight is the one tensor every Swin encoder has and no head has, so it alone
   decides. The order matters when a file holds several encoders: a bare or SwinUNETR encoder
   first, then an SSL run's backbone (DINO's teacher, saved as backbone.*), the student last. */
IOUPOS_DEF const char *ioupos_swin_find_prefix(const ioupos_st_file *f) {
  static const char *const prefixes[] = {"", "swinViT.", "backbone.", "module.backbone.",
                                         "student.backbone."};
  char name[96];
  size_t i;
  for (i = 0; i < sizeof prefixes / sizeof *prefixes; ++i) {
    snprintf(name, sizeof name, "%spatch_embed.proj.weight", prefixes[i]);
    if (ioupos_safetensors_find(f, name)) return prefixes[i];
  }
  return NULL;
}

/* Releases the plan (activations, scratch, device index) and the activation table; the structure
   and parameter indices stay, so the encoder can be planned again. */
static void ioupos__swin_release(ioupos_swin_encoder *e) {
  if (e->be) {
    e->be->release(e->act);
    e->be->release(e->scratch);
    e->be->release(e->index);
  }
  e->act = e->scratch = NULL;
  e->index = NULL;
  ioupos_tensor_table_free(&e->acts);
}

IOUPOS_DEF void ioupos_swin_encoder_free(ioupos_swin_encoder *e) {
  if (!e) return;
  ioupos__swin_release(e);
  e->batch = 0;
}

/* an activation of n floats named prefix-less `fmt`; returns its offset (or -1 on failure).
   Activations are BUFFER tensors of a second table, e->acts, laid out like parameters: each has a
   name (e.g. "stage0.block1.ln2"), so a CPU-vs-CUDA comparison can name the first activation that
   differs. A failure is latched in *bad (and 0 returned), so plan registers everything and checks
   once. */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static size_t ioupos__act(ioupos_tensor_table *tt, int *bad, size_t n, const char *fmt, ...) {
  char name[IOUPOS_TENSOR_NAME_MAX];
  int64_t shape[1];
  int i;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  shape[0] = (int64_t)(n ? n : 1);
  i = ioupos_tensor_add(tt, name, IOUPOS_ST_F32, IOUPOS_TENSOR_BUFFER, IOUPOS_INIT_ZERO, 0.0f, 1,
                        shape);
  if (i < 0) {
    *bad = i;
    return 0;
  }
  return tt->t[i].offset;
}

#define IOUPOS__MAX(a, b) ((a) > (b) ? (a) : (b))

/* MONAI's buffer is the index of the CONFIGURED window, the same in every block, even where a
   stage's map is smaller than the window and the attention really runs on a smaller effective
   window (section 12). That index is what the state dict holds and what a checkpoint load
   compares; the index the kernels use is another one, built per stage by plan. The int index is
   widened to the buffer's int64 on the host. */
IOUPOS_DEF int ioupos_swin_encoder_buffers(const ioupos_swin_encoder *e, ioupos_params *p) {
  const ioupos_swin_config *c = &e->cfg;
  const ioupos_tensor_info *t = &p->table.t[e->blocks[0].rel_index];
  ioupos_swin_geom g;
  int big[3], d, bi, *idx = (int *)ioupos__calloc(t->numel, sizeof(int));
  size_t q;
  if (!idx) return ioupos__fail(IOUPOS_ENOMEM, "out of memory filling the encoder's buffers");
  /* MONAI's full index of the configured window: a geometry whose map exceeds the window */
  for (d = 0; d < 3; ++d) big[d] = 2 * (d < c->spatial_dims ? c->window[d] : 1);
  ioupos_swin_geom_init(&g, c->spatial_dims, 1, big, c->window, NULL);
  ioupos_swin_relative_index(idx, &g);
  for (bi = 0; bi < e->n_blocks; ++bi)
    for (q = 0; q < t->numel; ++q)
      p->ivalue[p->table.t[e->blocks[bi].rel_index].offset + q] = idx[q];
  IOUPOS_FREE(idx);
  return 0;
}

/* A copy that shares the parameter indices, hence the parameters in p, but owns no memory: DINO's
   local views use the same weights at another input size, which needs its own plan, not its own
   tensors. */
IOUPOS_DEF void ioupos_swin_encoder_clone(ioupos_swin_encoder *dst, const ioupos_swin_encoder *src) {
  int k;
  memcpy(dst, src, sizeof *dst);
  /* the structure and parameter indices, none of the plan */
  memset(&dst->acts, 0, sizeof dst->acts);
  dst->be = NULL;
  dst->act = dst->scratch = NULL;
  dst->index = NULL;
  dst->batch = 0;
  for (k = 0; k < 3; ++k) dst->in_shape[k] = 0;
}

/* Cheap for an unchanged batch and shape (only the I64 buffers are refilled), so callers may plan
   before every forward; otherwise the old plan is released and rebuilt:
     - token maps: map_0 = ceil(shape / patch) (PatchEmbed zero-pads the end), each merging halves
       rounding up (PatchMerging zero-pads odd sizes);
     - per stage two window geometries, unshifted and shifted by window / 2 (section 12 decides per
       axis whether the shift applies);
     - one activation arena holding everything the backward reads, each piece named in e->acts;
     - one scratch buffer: room for four token maps (two forward temporaries, two backward
       gradient streams), then the largest scratch of any single operation;
     - per stage the relative position index of the stage's effective window (device int) and, for
       shifted geometries, the attention mask, both computed on the host and uploaded once here,
       then only read by every forward and backward.
   Everything is allocated through p's backend, which the encoder keeps for its later passes. On
   failure the encoder is left unplanned (batch 0) and the error is returned. */
IOUPOS_DEF int ioupos_swin_encoder_plan(ioupos_swin_encoder *e, ioupos_params *p, int batch,
                                        const int *shape) {
  const ioupos_swin_config *c = &e->cfg;
  const ioupos_backend *be = p->be;
  int nd = c->spatial_dims, s, d, k, bi, rc, same = e->act && e->batch == batch;
  int shift[3], *ihost = NULL;
  size_t ni = 0, maxnc = 0, big_scratch = 0, col, n;
  int bad = 0;
  float *mhost = NULL;
  ioupos_tensor_table *at = &e->acts;
  if (batch < 1) return ioupos__fail(IOUPOS_EINVAL, "batch size %d < 1", batch);
  for (d = 0; d < nd; ++d) {
    if (shape[d] < 1 || shape[d] > 1 << 16)
      return ioupos__fail(IOUPOS_EINVAL, "input size %d out of range", shape[d]);
    same = same && e->in_shape[d] == shape[d];
  }
  for (d = 0; d < nd; ++d) shift[d] = c->window[d] / 2;
  if ((rc = ioupos_swin_encoder_buffers(e, p)) != 0) return rc;
  if (same) return 0;
  ioupos__swin_release(e);
  e->be = be;
  e->batch = batch;
  for (d = 0; d < 3; ++d) e->in_shape[d] = d < nd ? shape[d] : 1;
  for (k = 0; k < 5; ++k) {
    e->ntok[k] = (size_t)batch;
    for (d = 0; d < 3; ++d) {
      if (d >= nd) e->map[k][d] = 1;
      else if (k == 0) e->map[k][d] = (shape[d] + c->patch_size - 1) / c->patch_size;
      else e->map[k][d] = (e->map[k - 1][d] + 1) / 2;
      e->ntok[k] *= (size_t)e->map[k][d];
    }
  }
  for (s = 0; s < 4; ++s) {
    if ((rc = ioupos_swin_geom_init(&e->geom[s][0], nd, batch, e->map[s], c->window, NULL)) ||
        (rc = ioupos_swin_geom_init(&e->geom[s][1], nd, batch, e->map[s], c->window, shift)))
      return rc;
    e->index_off[s] = ni;
    ni += (size_t)e->geom[s][0].ntok * e->geom[s][0].ntok;
  }
  /* activations */
  col = ioupos_patch_embed_col_size(nd, batch, c->in_chans, shape, c->patch_size);
  e->a_col = ioupos__act(at, &bad, col, "patch_embed.col");
  for (k = 0; k < 5; ++k) {
    size_t nc = e->ntok[k] * (size_t)(c->embed_dim << k);
    e->a_x[k] = ioupos__act(at, &bad, nc, "x%d", k);
    e->a_out[k] = ioupos__act(at, &bad, nc, "out%d", k);
    e->a_out_mean[k] = ioupos__act(at, &bad, e->ntok[k], "out%d.mean", k);
    e->a_out_rstd[k] = ioupos__act(at, &bad, e->ntok[k], "out%d.rstd", k);
    maxnc = IOUPOS__MAX(maxnc, nc);
  }
  e->a_feature = ioupos__act(at, &bad, (size_t)batch * 16 * c->embed_dim, "feature");
  if (col > big_scratch) big_scratch = col;
  for (bi = 0; bi < e->n_blocks; ++bi) {
    ioupos_swin_block *b = &e->blocks[bi];
    size_t N = e->ntok[b->stage];
    int C = c->embed_dim << b->stage, NH = c->num_heads[b->stage];
    const ioupos_swin_geom *g = &e->geom[b->stage][b->shifted];
    s = b->stage;
    b->a_ln1_mean = ioupos__act(at, &bad, N, "stage%d.block%d.ln1.mean", s, b->index);
    b->a_ln1_rstd = ioupos__act(at, &bad, N, "stage%d.block%d.ln1.rstd", s, b->index);
    b->a_attn = ioupos__act(at, &bad, ioupos_swin_attention_acts_size(g, C, NH), "stage%d.block%d.attn",
                            s, b->index);
    b->a_xmid = ioupos__act(at, &bad, N * C, "stage%d.block%d.xmid", s, b->index);
    b->a_ln2 = ioupos__act(at, &bad, N * C, "stage%d.block%d.ln2", s, b->index);
    b->a_ln2_mean = ioupos__act(at, &bad, N, "stage%d.block%d.ln2.mean", s, b->index);
    b->a_ln2_rstd = ioupos__act(at, &bad, N, "stage%d.block%d.ln2.rstd", s, b->index);
    b->a_h_pre = ioupos__act(at, &bad, N * 4 * C, "stage%d.block%d.mlp.h_pre", s, b->index);
    b->a_h_act = 0; /* GELU(h_pre) is not kept: the MLP backward recomputes it (scratch) */
    b->a_dp1 = ioupos__act(at, &bad, (size_t)batch, "stage%d.block%d.drop_path1", s, b->index);
    b->a_dp2 = ioupos__act(at, &bad, (size_t)batch, "stage%d.block%d.drop_path2", s, b->index);
    /* the block's output is the next block's input, or the stage's last block output */
    b->a_x = b->index == 0 ? e->a_x[s] : e->blocks[bi - 1].a_out_x;
    b->a_out_x = ioupos__act(at, &bad, N * C, "stage%d.block%d.out", s, b->index);
    big_scratch = IOUPOS__MAX(big_scratch, ioupos_swin_attention_scratch_size(g, C, NH));
    big_scratch = IOUPOS__MAX(big_scratch, 2 * N * 4 * C); /* MLP: dh and GELU(h_pre) */
  }
  for (s = 0; s < 4; ++s) {
    size_t M = e->ntok[s + 1], K = (size_t)(1 << nd) * (size_t)(c->embed_dim << s);
    e->a_merge[s][0] = ioupos__act(at, &bad, M * K, "stage%d.merge.cat", s);
    e->a_merge[s][1] = ioupos__act(at, &bad, M * K, "stage%d.merge.lnout", s);
    e->a_merge[s][2] = ioupos__act(at, &bad, M, "stage%d.merge.mean", s);
    e->a_merge[s][3] = ioupos__act(at, &bad, M, "stage%d.merge.rstd", s);
    big_scratch = IOUPOS__MAX(big_scratch, 2 * M * K);
    if (e->geom[s][1].shifted) {
      e->mask_off[s] = ioupos__act(at, &bad, (size_t)e->geom[s][1].nwin * e->geom[s][1].ntok *
                                           e->geom[s][1].ntok, "stage%d.mask", s);
    }
  }
  if (bad) {
    ioupos__swin_release(e);
    e->batch = 0;
    return bad;
  }
  /* scratch: 4 token-map buffers (2 temporaries, 2 gradient streams) + the largest op scratch */
  e->scratch_n = 4 * maxnc + big_scratch;
  e->act = (float *)be->alloc(at->total * sizeof(float));
  e->scratch = (float *)be->alloc(e->scratch_n * sizeof(float));
  e->index = (int *)be->alloc(ni * sizeof(int));
  ihost = (int *)ioupos__calloc(ni + 1, sizeof(int));
  n = 1;
  for (s = 0; s < 4; ++s)
    if (e->geom[s][1].shifted)
      n = IOUPOS__MAX(n, (size_t)e->geom[s][1].nwin * e->geom[s][1].ntok * e->geom[s][1].ntok);
  mhost = (float *)ioupos__calloc(n, sizeof(float));
  if (!e->act || !e->scratch || !e->index || !ihost || !mhost) {
    IOUPOS_FREE(ihost);
    IOUPOS_FREE(mhost);
    ioupos__swin_release(e);
    e->batch = 0;
    return ioupos__fail(IOUPOS_ENOMEM,
                        "out of memory for the encoder's activations (%zu MB for batch %d)",
                        (at->total + e->scratch_n) * sizeof(float) >> 20, batch);
  }
  for (s = 0; s < 4; ++s) {
    const ioupos_swin_geom *g = &e->geom[s][1];
    /* One index per stage serves both geometries: the shift rolls the map, not the window, so only
       the mask depends on it. The mask is kept in the activation arena, released with the plan. */
    ioupos_swin_relative_index(ihost + e->index_off[s], &e->geom[s][0]);
    if (g->shifted) {
      ioupos_swin_attn_mask(mhost, g);
      be->upload(e->act + e->mask_off[s], mhost,
                 (size_t)g->nwin * g->ntok * g->ntok * sizeof(float));
    }
  }
  be->upload(e->index, ihost, ni * sizeof(int));
  IOUPOS_FREE(ihost);
  IOUPOS_FREE(mhost);
  return be->sync();
}

#define IOUPOS__P(i) (p->value + p->table.t[i].offset)
#define IOUPOS__G(i) (p->grad + p->table.t[i].offset)

/* MONAI's SwinTransformer.forward on the planned shape. Every activation the backward needs is
   written into the arena (replacing the previous forward's); only the norm1 output (s0) and the
   branch outputs (s1) are temporaries, since the attention keeps its own windowed copy of its
   input in a_attn and the residual adds produce the saved block states. Drop-path masks are drawn
   on the host, two per block in block order (attention branch, then MLP branch), and uploaded, so
   runs on the CPU and on CUDA with the same generator drop the same samples; e->dp_on tells the
   backward whether masks exist. The final sync() reports any failure of the queued operations. */
IOUPOS_DEF int ioupos_swin_encoder_forward(ioupos_swin_encoder *e, const ioupos_params *p,
                                           const float *x, int train, ioupos_rng *rng) {
  const ioupos_swin_config *c = &e->cfg;
  const ioupos_backend *be = e->be;
  float *A = e->act, *s0 = e->scratch, *s1, *big, *dph = NULL;
  size_t nc0 = e->ntok[0] * (size_t)c->embed_dim;
  int B = e->batch, nd = c->spatial_dims, bi, s, k, rc;
  if (!A) return ioupos__fail(IOUPOS_EINVAL, "encoder forward before ioupos_swin_encoder_plan");
  s1 = s0 + nc0;
  big = s0 + 4 * nc0;
  e->dp_on = train && c->drop_path_rate > 0.0f;
  if (e->dp_on) {
    if (!rng) return ioupos__fail(IOUPOS_EINVAL, "drop-path in training needs a generator");
    dph = (float *)ioupos__calloc((size_t)B, sizeof(float));
    if (!dph) return ioupos__fail(IOUPOS_ENOMEM, "out of memory");
  }
  rc = be->patch_embed_forward(A + e->a_x[0], A + e->a_col, x, IOUPOS__P(e->patch_w),
                               IOUPOS__P(e->patch_b), nd, B, c->in_chans, e->in_shape,
                               c->patch_size, c->embed_dim);
  for (bi = 0; rc == 0 && bi < e->n_blocks; ++bi) {
    const ioupos_swin_block *b = &e->blocks[bi];
    int C = c->embed_dim << b->stage, NH = c->num_heads[b->stage];
    size_t N = e->ntok[b->stage], S = N / (size_t)B * (size_t)C;
    const ioupos_swin_geom *g = &e->geom[b->stage][b->shifted];
    const float *xin = A + b->a_x, *m1 = NULL, *m2 = NULL;
    /* x = x + DropPath(attention(norm1(x))) */
    be->layernorm_forward(s0, A + b->a_ln1_mean, A + b->a_ln1_rstd, xin, IOUPOS__P(b->norm1_w),
                          IOUPOS__P(b->norm1_b), (int)N, C, 1e-5f);
    rc = be->swin_attention_forward(s1, A + b->a_attn, big, s0, IOUPOS__P(b->qkv_w),
                                    IOUPOS__P(b->qkv_b), IOUPOS__P(b->proj_w),
                                    IOUPOS__P(b->proj_b), IOUPOS__P(b->table),
                                    e->index + e->index_off[b->stage],
                                    g->shifted ? A + e->mask_off[b->stage] : NULL, g, C, NH);
    if (rc) break;
    if (e->dp_on) {
      ioupos_drop_path_mask(dph, B, b->drop_prob, rng);
      be->upload(A + b->a_dp1, dph, (size_t)B * sizeof(float));
      ioupos_drop_path_mask(dph, B, b->drop_prob, rng);
      be->upload(A + b->a_dp2, dph, (size_t)B * sizeof(float));
      m1 = A + b->a_dp1;
      m2 = A + b->a_dp2;
    }
    be->residual_forward(A + b->a_xmid, xin, s1, m1, B, S);
    /* x = x + DropPath(MLP(norm2(x))) */
    be->layernorm_forward(A + b->a_ln2, A + b->a_ln2_mean, A + b->a_ln2_rstd, A + b->a_xmid,
                          IOUPOS__P(b->norm2_w), IOUPOS__P(b->norm2_b), (int)N, C, 1e-5f);
    rc = be->mlp_forward(s1, A + b->a_h_pre, big, A + b->a_ln2, IOUPOS__P(b->fc1_w),
                         IOUPOS__P(b->fc1_b), IOUPOS__P(b->fc2_w), IOUPOS__P(b->fc2_b), (int)N, C,
                         4 * C);
    if (rc) break;
    be->residual_forward(A + b->a_out_x, A + b->a_xmid, s1, m2, B, S);
    /* the stage's last block: patch merging to the next stage */
    if (b->index == c->depths[b->stage] - 1) {
      s = b->stage;
      rc = be->patch_merging_forward(A + e->a_x[s + 1], A + e->a_merge[s][0], A + e->a_merge[s][1],
                                     A + e->a_merge[s][2], A + e->a_merge[s][3], A + b->a_out_x,
                                     IOUPOS__P(e->merge_norm_w[s]), IOUPOS__P(e->merge_norm_b[s]),
                                     IOUPOS__P(e->merge_red[s]), nd, B, e->map[s], C);
    }
  }
  IOUPOS_FREE(dph);
  if (rc) return rc;
  /* normalize=True: every stage output through a layer norm without affine (proj_out) */
  for (k = 0; k < 5; ++k)
    be->layernorm_forward(A + e->a_out[k], A + e->a_out_mean[k], A + e->a_out_rstd[k],
                          A + e->a_x[k], NULL, NULL, (int)e->ntok[k], c->embed_dim << k, 1e-5f);
  /* the SSL feature: the mean over stage 4's tokens of its normalised output (the research code's
     pooling; MONAI's SwinTransformer has none) */
  be->avgpool_forward(A + e->a_feature, A + e->a_out[4], B, (int)(e->ntok[4] / (size_t)B),
                      16 * c->embed_dim);
  return be->sync();
}

/* Views into the activation arena (backend memory), channels-last, NULL before the first plan;
   overwritten by the next forward and freed by the next re-plan. */
IOUPOS_DEF const float *ioupos_swin_encoder_output(const ioupos_swin_encoder *e, int k) {
  return e->act && k >= 0 && k < 5 ? e->act + e->a_out[k] : NULL;
}
IOUPOS_DEF const float *ioupos_swin_encoder_feature(const ioupos_swin_encoder *e) {
  return e->act ? e->act + e->a_feature : NULL;
}

/* The forward in reverse, with two gradient streams in scratch (dA, dB) that swap at each patch
   merging. The residual shortcuts cost nothing: dA holds the gradient of a block's output, and the
   branch's layer norm backward ACCUMULATES into dA, which so becomes the gradient of the block's
   input. With drop-path the branch gradient is first scaled by the forward's mask (into s0). A
   stage output out_k = LayerNorm(x_k) joins the stream where the gradient of x_k is otherwise
   complete: out_4 with the pooled feature before the loop, out_s after stage s's blocks. Parameter
   gradients accumulate into p->grad, which the caller zeroes once per optimiser step (gradient
   accumulation over micro-batches relies on it); dx likewise when given. */
IOUPOS_DEF int ioupos_swin_encoder_backward(ioupos_swin_encoder *e, ioupos_params *p,
                                            const float *const *dout, const float *dfeature,
                                            float *dx) {
  const ioupos_swin_config *c = &e->cfg;
  const ioupos_backend *be = e->be;
  float *A = e->act, *s0, *s1, *dA, *dB, *big, *t;
  size_t nc0 = e->ntok[0] * (size_t)c->embed_dim;
  int B = e->batch, nd = c->spatial_dims, bi, s, rc = 0, C4 = 16 * c->embed_dim;
  if (!A || !p->grad)
    return ioupos__fail(IOUPOS_EINVAL, "encoder backward without a forward or gradients");
  s0 = e->scratch;
  s1 = s0 + nc0;
  dA = s1 + nc0;
  dB = dA + nc0;
  big = dB + nc0;
  /* d out4 = dout[4] + d(mean over space)/d out4 . dfeature, then through its layer norm */
  be->zero(s0, e->ntok[4] * (size_t)C4 * sizeof(float));
  if (dout && dout[4]) be->residual_backward(s0, dout[4], NULL, 1, e->ntok[4] * (size_t)C4);
  if (dfeature) be->avgpool_backward(s0, dfeature, B, (int)(e->ntok[4] / (size_t)B), C4);
  be->zero(dA, e->ntok[4] * (size_t)C4 * sizeof(float));
  be->layernorm_backward(dA, NULL, NULL, s0, A + e->a_x[4], NULL, A + e->a_out_mean[4],
                         A + e->a_out_rstd[4], (int)e->ntok[4], C4);
  for (s = 3; s >= 0 && rc == 0; --s) {
    int C = c->embed_dim << s, NH = c->num_heads[s];
    size_t N = e->ntok[s], S = N / (size_t)B * (size_t)C;
    int last = 0;
    for (bi = 0; bi < e->n_blocks; ++bi)
      if (e->blocks[bi].stage == s) last = bi;
    /* patch merging: dA (d x_{s+1}) -> dB (d of the last block's output) */
    be->zero(dB, N * (size_t)C * sizeof(float));
    rc = be->patch_merging_backward(dB, IOUPOS__G(e->merge_norm_w[s]),
                                    IOUPOS__G(e->merge_norm_b[s]), IOUPOS__G(e->merge_red[s]), big,
                                    dA, A + e->a_merge[s][0], A + e->a_merge[s][1],
                                    A + e->a_merge[s][2], A + e->a_merge[s][3],
                                    IOUPOS__P(e->merge_norm_w[s]), IOUPOS__P(e->merge_red[s]), nd,
                                    B, e->map[s], C);
    t = dA;
    dA = dB;
    dB = t; /* dA is now the gradient stream of this stage */
    for (bi = last; rc == 0 && bi >= 0 && e->blocks[bi].stage == s; --bi) {
      const ioupos_swin_block *b = &e->blocks[bi];
      const ioupos_swin_geom *g = &e->geom[s][b->shifted];
      const float *dmlp = dA, *dattn;
      /* x_out = x_mid + DropPath(MLP(norm2(x_mid))) */
      if (e->dp_on) {
        be->zero(s0, N * (size_t)C * sizeof(float));
        be->residual_backward(s0, dA, A + b->a_dp2, B, S);
        dmlp = s0;
      }
      be->zero(s1, N * (size_t)C * sizeof(float));
      rc = be->mlp_backward(s1, IOUPOS__G(b->fc1_w), IOUPOS__G(b->fc1_b), IOUPOS__G(b->fc2_w),
                            IOUPOS__G(b->fc2_b), big, dmlp, A + b->a_ln2, A + b->a_h_pre,
                            NULL, IOUPOS__P(b->fc1_w), IOUPOS__P(b->fc2_w), (int)N, C,
                            4 * C);
      if (rc) break;
      be->layernorm_backward(dA, IOUPOS__G(b->norm2_w), IOUPOS__G(b->norm2_b), s1, A + b->a_xmid,
                             IOUPOS__P(b->norm2_w), A + b->a_ln2_mean, A + b->a_ln2_rstd, (int)N,
                             C);
      /* x_mid = x_in + DropPath(attention(norm1(x_in))) */
      dattn = dA;
      if (e->dp_on) {
        be->zero(s0, N * (size_t)C * sizeof(float));
        be->residual_backward(s0, dA, A + b->a_dp1, B, S);
        dattn = s0;
      }
      be->zero(s1, N * (size_t)C * sizeof(float));
      rc = be->swin_attention_backward(s1, IOUPOS__G(b->qkv_w), IOUPOS__G(b->qkv_b),
                                       IOUPOS__G(b->proj_w), IOUPOS__G(b->proj_b),
                                       IOUPOS__G(b->table), big, dattn, A + b->a_attn,
                                       IOUPOS__P(b->qkv_w), IOUPOS__P(b->proj_w),
                                       e->index + e->index_off[s], g, C, NH);
      if (rc) break;
      be->layernorm_backward(dA, IOUPOS__G(b->norm1_w), IOUPOS__G(b->norm1_b), s1, A + b->a_x,
                             IOUPOS__P(b->norm1_w), A + b->a_ln1_mean, A + b->a_ln1_rstd, (int)N,
                             C);
    }
    /* stage output s = LayerNorm(x_s) also feeds the loss */
    if (rc == 0 && dout && dout[s])
      be->layernorm_backward(dA, NULL, NULL, dout[s], A + e->a_x[s], NULL, A + e->a_out_mean[s],
                             A + e->a_out_rstd[s], (int)N, C);
  }
  if (rc == 0)
    rc = be->patch_embed_backward(dx, IOUPOS__G(e->patch_w), IOUPOS__G(e->patch_b), big, dA,
                                  A + e->a_col, IOUPOS__P(e->patch_w), nd, B, c->in_chans,
                                  e->in_shape, c->patch_size, c->embed_dim);
  if (rc) return rc;
  return be->sync();
}

/* -- heads -- */

/* Appends an op with its widths; its parameter indices start at -1 (absent) and are set by the
   caller. The head's in_dim is its first op's, out_dim its last op's. */
static int ioupos__head_add(ioupos_head *h, int kind, int in, int out) {
  ioupos_head_op *op;
  if (h->n_ops == IOUPOS_HEAD_MAX_OPS)
    return ioupos__fail(IOUPOS_EINVAL, "head has more than %d ops", IOUPOS_HEAD_MAX_OPS);
  if (in < 1 || out < 1 || in > 1 << 20 || out > 1 << 20)
    return ioupos__fail(IOUPOS_EINVAL, "head layer %d -> %d out of range", in, out);
  op = &h->ops[h->n_ops++];
  memset(op, 0, sizeof *op);
  op->kind = kind;
  op->in = in;
  op->out = out;
  op->w = op->b = op->rm = op->rv = op->count = -1;
  if (h->n_ops == 1) h->in_dim = in;
  h->out_dim = out;
  return 0;
}

/* nn.BatchNorm1d(dim, affine) named prefix + name.
   The running statistics and num_batches_tracked are BUFFERS (not trained, no decay) with torch's
   initial values 0, 1 and 0, so the head's state dict is torch's; without affine (the SimSiam
   projection's last norm) no weight and bias exist, as in torch. */
static int ioupos__head_bn(ioupos_head *h, ioupos_tensor_table *tt, const char *prefix, int idx,
                           int dim, int affine) {
  ioupos_head_op *op;
  int64_t s[2], s0[1];
  int rc = ioupos__head_add(h, IOUPOS_HEAD_BATCHNORM, dim, dim);
  if (rc) return rc;
  op = &h->ops[h->n_ops - 1];
  s[0] = dim; s[1] = 0; s0[0] = 0;
  if (affine) {
    op->w = ioupos__tadd(tt, IOUPOS_ST_F32, 0, IOUPOS_INIT_ONE, s, "%slayers.%d.weight", prefix, idx);
    op->b = ioupos__tadd(tt, IOUPOS_ST_F32, 0, IOUPOS_INIT_ZERO, s, "%slayers.%d.bias", prefix, idx);
    if (op->w < 0 || op->b < 0) return IOUPOS_EINVAL;
  }
  op->rm = ioupos__tadd(tt, IOUPOS_ST_F32, IOUPOS_TENSOR_BUFFER, IOUPOS_INIT_ZERO, s,
                        "%slayers.%d.running_mean", prefix, idx);
  op->rv = ioupos__tadd(tt, IOUPOS_ST_F32, IOUPOS_TENSOR_BUFFER, IOUPOS_INIT_ONE, s,
                        "%slayers.%d.running_var", prefix, idx);
  op->count = ioupos__tadd(tt, IOUPOS_ST_I64, IOUPOS_TENSOR_BUFFER, IOUPOS_INIT_NONE, s0,
                           "%slayers.%d.num_batches_tracked", prefix, idx);
  return op->rm < 0 || op->rv < 0 || op->count < 0 ? IOUPOS_EINVAL : 0;
}

/* lightly's ProjectionHead block: Linear(bias = no batch norm) [+ BN] [+ ReLU].
   The index advances over the BN and the ReLU too: they are modules of lightly's nn.Sequential and
   take the indices between the Linear layers (layers.0, .1 BN, .2 ReLU, .3 Linear, ...). */
static int ioupos__head_block(ioupos_head *h, ioupos_tensor_table *tt, const char *prefix,
                              int *idx, int in, int out, int bn, int bn_affine, int relu) {
  char nm[32];
  ioupos_head_op *op;
  int rc = ioupos__head_add(h, IOUPOS_HEAD_LINEAR, in, out);
  if (rc) return rc;
  op = &h->ops[h->n_ops - 1];
  snprintf(nm, sizeof nm, "layers.%d", (*idx)++);
  if ((rc = ioupos__reg_linear(tt, &op->w, bn ? NULL : &op->b, in, out, prefix, nm)) != 0)
    return rc;
  if (bn && (rc = ioupos__head_bn(h, tt, prefix, (*idx)++, out, bn_affine)) != 0) return rc;
  if (relu) {
    ++*idx;
    return ioupos__head_add(h, IOUPOS_HEAD_RELU, out, out);
  }
  return 0;
}

IOUPOS_DEF int ioupos_head_simsiam_projection(ioupos_head *h, ioupos_tensor_table *tt,
                                              const char *prefix, int in, int hidden, int out) {
  int idx = 0, rc;
  memset(h, 0, sizeof *h);
  if ((rc = ioupos__head_block(h, tt, prefix, &idx, in, hidden, 1, 1, 1)) ||
      (rc = ioupos__head_block(h, tt, prefix, &idx, hidden, hidden, 1, 1, 1)) ||
      (rc = ioupos__head_block(h, tt, prefix, &idx, hidden, out, 1, 0, 0)))
    return rc;
  return 0;
}

IOUPOS_DEF int ioupos_head_simsiam_prediction(ioupos_head *h, ioupos_tensor_table *tt,
                                              const char *prefix, int in, int hidden, int out) {
  int idx = 0, rc;
  memset(h, 0, sizeof *h);
  if ((rc = ioupos__head_block(h, tt, prefix, &idx, in, hidden, 1, 1, 1)) ||
      (rc = ioupos__head_block(h, tt, prefix, &idx, hidden, out, 0, 0, 0)))
    return rc;
  return 0;
}

/* DINO's nn.Sequential puts GELUs at mlp.1 and mlp.3, hence Linear layers at 0, 2 and 4 (mlp_idx).
   The last layer is weight_norm(nn.Linear(bottleneck, out, bias=False)): weight_g [out][1] and
   weight_v [out][bottleneck], registered in torch's order (g first); the op keeps g in op->b and v
   in op->w. With norm_last_layer g is 1 and FROZEN (DINO's requires_grad = False), so the backward
   passes it no gradient. */
IOUPOS_DEF int ioupos_head_dino(ioupos_head *h, ioupos_tensor_table *tt, const char *prefix,
                                int in, int hidden, int bottleneck, int out,
                                int norm_last_layer) {
  static const int mlp_idx[3] = {0, 2, 4};
  int dims[4], l, rc;
  int64_t s[3];
  ioupos_head_op *op;
  memset(h, 0, sizeof *h);
  dims[0] = in; dims[1] = hidden; dims[2] = hidden; dims[3] = bottleneck;
  for (l = 0; l < 3; ++l) {
    char nm[32];
    if ((rc = ioupos__head_add(h, IOUPOS_HEAD_LINEAR, dims[l], dims[l + 1])) != 0) return rc;
    op = &h->ops[h->n_ops - 1];
    snprintf(nm, sizeof nm, "mlp.%d", mlp_idx[l]);
    if ((rc = ioupos__reg_linear(tt, &op->w, &op->b, dims[l], dims[l + 1], prefix, nm)) != 0)
      return rc;
    /* DINO's _init_weights: trunc_normal(std 0.02) weights, zero biases */
    tt->t[op->w].init = IOUPOS_INIT_TRUNC_NORMAL;
    tt->t[op->w].init_scale = 0.02f;
    tt->t[op->b].init = IOUPOS_INIT_ZERO;
    if (l < 2 && (rc = ioupos__head_add(h, IOUPOS_HEAD_GELU, dims[l + 1], dims[l + 1])) != 0)
      return rc;
  }
  if ((rc = ioupos__head_add(h, IOUPOS_HEAD_L2NORM, bottleneck, bottleneck)) != 0 ||
      (rc = ioupos__head_add(h, IOUPOS_HEAD_WNLINEAR, bottleneck, out)) != 0)
    return rc;
  op = &h->ops[h->n_ops - 1];
  s[0] = out; s[1] = 1; s[2] = 0;
  op->b = ioupos__tadd(tt, IOUPOS_ST_F32, norm_last_layer ? IOUPOS_TENSOR_FROZEN : 0,
                       IOUPOS_INIT_ONE, s, "%slast_layer.weight_g", prefix);
  s[1] = bottleneck;
  op->w = ioupos__tadd(tt, IOUPOS_ST_F32, 0, IOUPOS_INIT_UNIFORM, s, "%slast_layer.weight_v",
                       prefix);
  if (op->b < 0 || op->w < 0) return IOUPOS_EINVAL;
  tt->t[op->w].init_scale = 1.0f / sqrtf((float)bottleneck);
  return 0;
}

/* Releases the plan only; the ops and parameter indices stay, so the head can be planned again. */
IOUPOS_DEF void ioupos_head_free(ioupos_head *h) {
  if (!h) return;
  if (h->be) {
    h->be->release(h->act);
    h->be->release(h->scratch);
  }
  h->act = h->scratch = NULL;
  h->rows = h->views = 0;
}

/* Each view's activations are one block of view_floats floats, the views side by side. Per op: its
   output [rows][out], then what its backward reads besides its input and output: a batch norm's
   batch mean and rstd [out] each (s1, s2), an L2 norm's row norms [rows] (s1), a weight-normalised
   linear's effective weight [out][in] (s1) and |v| per row [out] (s2). Views are kept apart
   because each is its own forward (SimSiam's two views go through the heads in two calls, as in
   the research code): batch norm statistics are per view, and every view's activations must
   survive until its backward. Scratch: two ping-pong gradient buffers [rows][the widest op] and
   the weight-norm backward's dW [out][in]. Re-planning the same rows and views is free. */
IOUPOS_DEF int ioupos_head_plan(ioupos_head *h, const ioupos_params *p, int rows, int views) {
  size_t off = 0, maxw = 1, wn = 1;
  int i;
  if (rows < 1 || views < 1 || views > IOUPOS_HEAD_MAX_VIEWS)
    return ioupos__fail(IOUPOS_EINVAL, "head plan: %d rows, %d views (1..%d)", rows, views,
                        IOUPOS_HEAD_MAX_VIEWS);
  if (h->act && h->rows == rows && h->views == views) return 0;
  ioupos_head_free(h);
  h->be = p->be;
  for (i = 0; i < h->n_ops; ++i) {
    ioupos_head_op *op = &h->ops[i];
    op->a_out = off;
    off += (size_t)rows * op->out;
    op->a_s1 = off;
    op->a_s2 = off;
    if (op->kind == IOUPOS_HEAD_BATCHNORM) {
      op->a_s2 = op->a_s1 + (size_t)op->out;
      off += 2 * (size_t)op->out;
    } else if (op->kind == IOUPOS_HEAD_L2NORM) {
      off += (size_t)rows;
    } else if (op->kind == IOUPOS_HEAD_WNLINEAR) {
      op->a_s2 = op->a_s1 + (size_t)op->out * op->in;
      off += (size_t)op->out * op->in + op->out;
      wn = IOUPOS__MAX(wn, (size_t)op->out * op->in);
    }
    maxw = IOUPOS__MAX(maxw, (size_t)IOUPOS__MAX(op->in, op->out));
  }
  h->view_floats = off;
  h->max_width = maxw;
  h->scratch_n = 2 * (size_t)rows * maxw + wn;
  h->act = (float *)h->be->alloc(off * (size_t)views * sizeof(float));
  h->scratch = (float *)h->be->alloc(h->scratch_n * sizeof(float));
  if (!h->act || !h->scratch) {
    ioupos_head_free(h);
    return ioupos__fail(IOUPOS_ENOMEM, "out of memory for a head's activations");
  }
  h->rows = rows;
  h->views = views;
  return 0;
}

IOUPOS_DEF const float *ioupos_head_output(const ioupos_head *h, int view) {
  return h->act + (size_t)view * h->view_floats + h->ops[h->n_ops - 1].a_out;
}

/* The ops in order, each reading the previous op's output; the first reads inp, which the backward
   reads again (the caller keeps it). Batch norm in train mode uses the batch's statistics, updates
   the running ones in place and counts num_batches_tracked on the host (where I64 buffers live),
   as torch's train(); in eval mode it uses the running statistics. The mode is remembered per view
   because the two modes have different backwards. */
IOUPOS_DEF int ioupos_head_forward(ioupos_head *h, ioupos_params *p, int view, const float *inp,
                                   int train) {
  const ioupos_backend *be = h->be;
  float *A;
  const float *cur = inp;
  int i, rc = 0, N = h->rows;
  if (!h->act || view < 0 || view >= h->views)
    return ioupos__fail(IOUPOS_EINVAL, "head forward: view %d not planned", view);
  A = h->act + (size_t)view * h->view_floats;
  for (i = 0; i < h->n_ops && rc == 0; ++i) {
    const ioupos_head_op *op = &h->ops[i];
    float *out = A + op->a_out;
    size_t n = (size_t)N * op->out;
    switch (op->kind) {
      case IOUPOS_HEAD_LINEAR:
        rc = be->linear_forward(out, cur, IOUPOS__P(op->w), op->b >= 0 ? IOUPOS__P(op->b) : NULL,
                                N, op->in, op->out);
        break;
      case IOUPOS_HEAD_BATCHNORM:
        if (train) {
          if (N < 2)
            return ioupos__fail(IOUPOS_EINVAL, "batch norm in training needs a batch of >= 2");
          be->batchnorm_forward_train(out, A + op->a_s1, A + op->a_s2, IOUPOS__P(op->rm),
                                      IOUPOS__P(op->rv), cur,
                                      op->w >= 0 ? IOUPOS__P(op->w) : NULL,
                                      op->b >= 0 ? IOUPOS__P(op->b) : NULL, N, op->out, 0.1f,
                                      1e-5f);
          p->ivalue[p->table.t[op->count].offset] += 1;
        } else {
          be->batchnorm_forward_eval(out, cur, IOUPOS__P(op->rm), IOUPOS__P(op->rv),
                                     op->w >= 0 ? IOUPOS__P(op->w) : NULL,
                                     op->b >= 0 ? IOUPOS__P(op->b) : NULL, N, op->out, 1e-5f);
        }
        break;
      case IOUPOS_HEAD_RELU: be->relu_forward(out, cur, n); break;
      case IOUPOS_HEAD_GELU: be->gelu_forward(out, cur, n); break;
      case IOUPOS_HEAD_L2NORM: be->l2norm_forward(out, A + op->a_s1, cur, N, op->out, 1e-12f); break;
      case IOUPOS_HEAD_WNLINEAR:
        rc = be->wnlinear_forward(out, A + op->a_s1, A + op->a_s2, cur, IOUPOS__P(op->w),
                                  IOUPOS__P(op->b), N, op->in, op->out);
        break;
      default: rc = ioupos__fail(IOUPOS_EINVAL, "unknown head op %d", op->kind);
    }
    cur = out;
  }
  if (rc) return rc;
  h->trained[view] = train;
  return be->sync();
}

/* The ops in reverse. The gradients between ops alternate between the two scratch buffers, each
   zeroed before use since every op ACCUMULATES into its input gradient; only the first op writes
   into the caller's dinp, which may be NULL (the elementwise ops then do nothing; a Linear still
   accumulates its parameter gradients). A frozen weight_g gets no gradient (NULL dg). */
IOUPOS_DEF int ioupos_head_backward(ioupos_head *h, ioupos_params *p, int view, const float *dout,
                                    const float *inp, float *dinp) {
  const ioupos_backend *be = h->be;
  float *A, *gbuf[2], *wn;
  const float *g = dout;
  int i, rc = 0, N = h->rows, which = 0;
  if (!h->act || view < 0 || view >= h->views || !p->grad)
    return ioupos__fail(IOUPOS_EINVAL, "head backward: view %d not planned", view);
  A = h->act + (size_t)view * h->view_floats;
  gbuf[0] = h->scratch;
  gbuf[1] = h->scratch + (size_t)N * h->max_width;
  wn = h->scratch + 2 * (size_t)N * h->max_width;
  for (i = h->n_ops - 1; i >= 0 && rc == 0; --i) {
    const ioupos_head_op *op = &h->ops[i];
    const float *x = i ? A + h->ops[i - 1].a_out : inp;
    float *dx;
    size_t nin = (size_t)N * op->in;
    if (i == 0) dx = dinp;
    else {
      dx = gbuf[which];
      which ^= 1;
      be->zero(dx, nin * sizeof(float));
    }
    switch (op->kind) {
      case IOUPOS_HEAD_LINEAR:
        rc = be->linear_backward(dx, IOUPOS__G(op->w), op->b >= 0 ? IOUPOS__G(op->b) : NULL, g, x,
                                 IOUPOS__P(op->w), N, op->in, op->out);
        break;
      case IOUPOS_HEAD_BATCHNORM:
        if (h->trained[view])
          be->batchnorm_backward_train(dx, op->w >= 0 ? IOUPOS__G(op->w) : NULL,
                                       op->b >= 0 ? IOUPOS__G(op->b) : NULL, g, x,
                                       op->w >= 0 ? IOUPOS__P(op->w) : NULL, A + op->a_s1,
                                       A + op->a_s2, N, op->out);
        else
          be->batchnorm_backward_eval(dx, op->w >= 0 ? IOUPOS__G(op->w) : NULL,
                                      op->b >= 0 ? IOUPOS__G(op->b) : NULL, g, x,
                                      IOUPOS__P(op->rm), IOUPOS__P(op->rv),
                                      op->w >= 0 ? IOUPOS__P(op->w) : NULL, N, op->out, 1e-5f);
        break;
      case IOUPOS_HEAD_RELU: if (dx) be->relu_backward(dx, x, g, nin); break;
      case IOUPOS_HEAD_GELU: if (dx) be->gelu_backward(dx, x, g, nin); break;
      case IOUPOS_HEAD_L2NORM:
        if (dx) be->l2norm_backward(dx, A + op->a_out, A + op->a_s1, g, N, op->out, 1e-12f);
        break;
      case IOUPOS_HEAD_WNLINEAR:
        rc = be->wnlinear_backward(dx, IOUPOS__G(op->w),
                                   (p->table.t[op->b].flags & IOUPOS_TENSOR_FROZEN) ? NULL
                                                                                  : IOUPOS__G(op->b),
                                   wn, g, x, IOUPOS__P(op->w), IOUPOS__P(op->b), A + op->a_s1,
                                   A + op->a_s2, N, op->in, op->out);
        break;
      default: rc = ioupos__fail(IOUPOS_EINVAL, "unknown head op %d", op->kind);
    }
    g = dx;
  }
  if (rc) return rc;
  return be->sync();
}

/* ---- 18. Pretraining: SimSiam and DINO, run directories, exact resume ----------------------- */


IOUPOS_DEF double ioupos_collapse_level(double avg_std, int dim) {
  double c = 1.0 - sqrt((double)dim) * avg_std;
  return c > 0.0 ? c : 0.0;
}

/* mean over channels of the unbiased per-channel std of the l2-normalised rows of x [N][D] */
static double ioupos__norm_std(const float *x, int N, int D) {
  double *mu = (double *)ioupos__calloc((size_t)2 * D + 1, sizeof(double)), *sq = mu + D, s = 0.0;
  int n, d;
  if (!mu || N < 2) {
    IOUPOS_FREE(mu);
    return 0.0;
  }
  for (n = 0; n < N; ++n) {
    const float *r = x + (size_t)n * D;
    double nrm = 0.0;
    for (d = 0; d < D; ++d) nrm += (double)r[d] * r[d];
    nrm = sqrt(nrm);
    if (nrm < 1e-12) nrm = 1e-12;
    for (d = 0; d < D; ++d) {
      double v = r[d] / nrm;
      mu[d] += v;
      sq[d] += v * v;
    }
  }
  for (d = 0; d < D; ++d) {
    double var = (sq[d] - mu[d] * mu[d] / N) / (N - 1);
    s += sqrt(var > 0.0 ? var : 0.0);
  }
  IOUPOS_FREE(mu);
  return s / D;
}

/* the monitor of rows [N][D] on the backend */
static double ioupos__backend_norm_std(const ioupos_backend *be, const float *x, int N, int D) {
  float *h = (float *)ioupos__calloc((size_t)N * D + 1, sizeof(float));
  double s;
  if (!h) return 0.0;
  be->download(h, x, (size_t)N * D * sizeof(float));
  s = ioupos__norm_std(h, N, D);
  IOUPOS_FREE(h);
  return s;
}

/* (re)allocates a backend buffer of n floats */
static int ioupos__bbuf(const ioupos_backend *be, float **p, size_t n) {
  be->release(*p);
  *p = (float *)be->alloc((n ? n : 1) * sizeof(float));
  return *p ? 0 : ioupos__fail(IOUPOS_ENOMEM, "out of memory for %zu floats of training buffers", n);
}

static size_t ioupos__npix(const ioupos_swin_config *c, const int *shape) {
  size_t n = (size_t)c->in_chans;
  int d;
  for (d = 0; d < c->spatial_dims; ++d) n *= (size_t)shape[d];
  return n;
}

/* -- SimSiam -- */

IOUPOS_DEF void ioupos_simsiam_config_default(ioupos_simsiam_config *c, int spatial_dims) {
  ioupos_swin_config_default(&c->enc, spatial_dims);
  c->proj_hidden = 2048;
  c->proj_out = 2048;
  c->pred_hidden = 512;
}

IOUPOS_DEF int ioupos_simsiam_init(ioupos_simsiam *m, const ioupos_simsiam_config *cfg,
                                   const ioupos_backend *be, uint64_t seed) {
  int rc, F = ioupos_swin_feature_dim(&cfg->enc);
  ioupos_rng r;
  memset(m, 0, sizeof *m);
  m->cfg = *cfg;
  if ((rc = ioupos_swin_encoder_init(&m->enc, &cfg->enc, &m->p.table, "backbone.")) ||
      (rc = ioupos_head_simsiam_projection(&m->proj, &m->p.table, "projection_head.", F,
                                           cfg->proj_hidden, cfg->proj_out)) ||
      (rc = ioupos_head_simsiam_prediction(&m->pred, &m->p.table, "prediction_head.",
                                           cfg->proj_out, cfg->pred_hidden, cfg->proj_out)) ||
      (rc = ioupos_params_alloc(&m->p, be, 1)))
    goto fail;
  ioupos_rng_seed(&r, seed);
  if ((rc = ioupos_params_init(&m->p, &r)) != 0) goto fail;
  ioupos_swin_encoder_buffers(&m->enc, &m->p);
  m->momentum = (float *)be->alloc(m->p.table.total * sizeof(float));
  if (!m->momentum) {
    rc = ioupos__fail(IOUPOS_ENOMEM, "out of memory for the optimiser state");
    goto fail;
  }
  return 0;
fail:
  ioupos_simsiam_free(m);
  return rc;
}

IOUPOS_DEF void ioupos_simsiam_free(ioupos_simsiam *m) {
  const ioupos_backend *be = m->p.be;
  if (be) {
    be->release(m->momentum);
    be->release(m->x);
    be->release(m->dp);
    be->release(m->dz);
    be->release(m->df);
  }
  ioupos_swin_encoder_free(&m->enc);
  ioupos_head_free(&m->proj);
  ioupos_head_free(&m->pred);
  ioupos_params_free(&m->p);
  memset(m, 0, sizeof *m);
}

IOUPOS_DEF void ioupos_simsiam_zero_grad(ioupos_simsiam *m) {
  m->p.be->zero(m->p.grad, m->p.table.total * sizeof(float));
}

IOUPOS_DEF int ioupos_simsiam_accumulate(ioupos_simsiam *m, const float *view1, const float *view2,
                                         int B, const int *shape, float scale, ioupos_rng *rng,
                                         ioupos_ssl_stats *st) {
  ioupos_params *p = &m->p;
  const ioupos_backend *be = p->be;
  int F = ioupos_swin_feature_dim(&m->cfg.enc), P = m->cfg.proj_out, v, rc;
  size_t npix = ioupos__npix(&m->cfg.enc, shape);
  const float *f, *z[2], *pp[2];
  double loss;
  if (B < 2) return ioupos__fail(IOUPOS_EINVAL, "SimSiam needs a batch of at least 2 (batch norm)");
  if (B != m->batch || (int)npix != m->npix) {
    if ((rc = ioupos__bbuf(be, &m->x, 2 * (size_t)B * npix)) ||
        (rc = ioupos__bbuf(be, &m->dp, 2 * (size_t)B * P)) ||
        (rc = ioupos__bbuf(be, &m->dz, 2 * (size_t)B * P)) ||
        (rc = ioupos__bbuf(be, &m->df, 2 * (size_t)B * F)))
      return rc;
    m->batch = B;
    m->npix = (int)npix;
  }
  if ((rc = ioupos_swin_encoder_plan(&m->enc, p, 2 * B, shape)) ||
      (rc = ioupos_head_plan(&m->proj, p, B, 2)) || (rc = ioupos_head_plan(&m->pred, p, B, 2)))
    return rc;
  /* both views through the backbone at once (no batch norm there), the heads per view */
  be->upload(m->x, view1, (size_t)B * npix * sizeof(float));
  be->upload(m->x + (size_t)B * npix, view2, (size_t)B * npix * sizeof(float));
  if ((rc = ioupos_swin_encoder_forward(&m->enc, p, m->x, 1, rng)) != 0) return rc;
  f = ioupos_swin_encoder_feature(&m->enc);
  for (v = 0; v < 2; ++v) {
    if ((rc = ioupos_head_forward(&m->proj, p, v, f + (size_t)v * B * F, 1)) ||
        (rc = ioupos_head_forward(&m->pred, p, v, ioupos_head_output(&m->proj, v), 1)))
      return rc;
    z[v] = ioupos_head_output(&m->proj, v);
    pp[v] = ioupos_head_output(&m->pred, v);
  }
  loss = be->simsiam_loss_forward(pp[0], pp[1], z[0], z[1], B, P);
  if (st) {
    st->loss = loss;
    st->p_std = ioupos__backend_norm_std(be, pp[0], B, P);
    st->z_std = ioupos__backend_norm_std(be, z[0], B, P);
  }
  be->zero(m->dp, 2 * (size_t)B * P * sizeof(float));
  be->zero(m->dz, 2 * (size_t)B * P * sizeof(float));
  be->zero(m->df, 2 * (size_t)B * F * sizeof(float));
  be->simsiam_loss_backward(m->dp, m->dp + (size_t)B * P, scale, pp[0], pp[1], z[0], z[1], B, P);
  for (v = 0; v < 2; ++v)
    if ((rc = ioupos_head_backward(&m->pred, p, v, m->dp + (size_t)v * B * P, z[v],
                                   m->dz + (size_t)v * B * P)) ||
        (rc = ioupos_head_backward(&m->proj, p, v, m->dz + (size_t)v * B * P,
                                   f + (size_t)v * B * F, m->df + (size_t)v * B * F)))
      return rc;
  return ioupos_swin_encoder_backward(&m->enc, p, NULL, m->df, NULL);
}

IOUPOS_DEF int ioupos_simsiam_step(ioupos_simsiam *m, double lr, double lr_pred, double momentum,
                                   double wd) {
  ioupos_params *p = &m->p;
  int i;
  for (i = 0; i < p->table.n; ++i) {
    const ioupos_tensor_info *t = &p->table.t[i];
    int pred = strncmp(t->name, "prediction_head.", 16) == 0;
    if (t->dtype != IOUPOS_ST_F32 || (t->flags & (IOUPOS_TENSOR_BUFFER | IOUPOS_TENSOR_FROZEN)))
      continue;
    p->be->sgd_step(p->value + t->offset, p->grad + t->offset, m->momentum + t->offset, t->numel,
                    (float)(pred ? lr_pred : lr), (float)momentum,
                    (t->flags & IOUPOS_TENSOR_NO_DECAY) ? 0.0f : (float)wd, m->steps == 0);
  }
  ++m->steps;
  return p->be->sync();
}

/* -- DINO -- */

IOUPOS_DEF void ioupos_dino_config_default(ioupos_dino_config *c, int spatial_dims) {
  ioupos_swin_config_default(&c->enc, spatial_dims);
  c->hidden = 2048;
  c->bottleneck = 256;
  c->out_dim = 1024;
  c->norm_last_layer = 1;
  c->student_temp = 0.1f;
  c->center_momentum = 0.9f;
}

IOUPOS_DEF int ioupos_dino_init(ioupos_dino *m, const ioupos_dino_config *cfg,
                                const ioupos_backend *be, uint64_t seed) {
  int rc, F = ioupos_swin_feature_dim(&cfg->enc);
  ioupos_swin_config tcfg = cfg->enc;
  ioupos_rng r;
  memset(m, 0, sizeof *m);
  m->cfg = *cfg;
  tcfg.drop_path_rate = 0.0f; /* the teacher never drops paths (the research code's did) */
  if ((rc = ioupos_swin_encoder_init(&m->enc_s, &cfg->enc, &m->s.table, "backbone.")) ||
      (rc = ioupos_head_dino(&m->head_s, &m->s.table, "head.", F, cfg->hidden, cfg->bottleneck,
                             cfg->out_dim, cfg->norm_last_layer)) ||
      (rc = ioupos_swin_encoder_init(&m->enc_t, &tcfg, &m->t.table, "backbone.")) ||
      (rc = ioupos_head_dino(&m->head_t, &m->t.table, "head.", F, cfg->hidden, cfg->bottleneck,
                             cfg->out_dim, cfg->norm_last_layer)) ||
      (rc = ioupos_params_alloc(&m->s, be, 1)) || (rc = ioupos_params_alloc(&m->t, be, 0)))
    goto fail;
  ioupos_swin_encoder_clone(&m->enc_sl, &m->enc_s);
  ioupos_rng_seed(&r, seed);
  if ((rc = ioupos_params_init(&m->s, &r)) != 0) goto fail;
  ioupos_swin_encoder_buffers(&m->enc_s, &m->s);
  if ((rc = ioupos_params_copy(&m->t, &m->s)) != 0) goto fail;
  m->m1 = (float *)be->alloc(m->s.table.total * sizeof(float));
  m->m2 = (float *)be->alloc(m->s.table.total * sizeof(float));
  m->center = (float *)be->alloc((size_t)cfg->out_dim * sizeof(float));
  m->adam_steps = (int64_t *)ioupos__calloc((size_t)m->s.table.n + 1, sizeof(int64_t));
  if (!m->m1 || !m->m2 || !m->center || !m->adam_steps) {
    rc = ioupos__fail(IOUPOS_ENOMEM, "out of memory for the DINO optimiser state");
    goto fail;
  }
  return 0;
fail:
  ioupos_dino_free(m);
  return rc;
}

IOUPOS_DEF void ioupos_dino_free(ioupos_dino *m) {
  const ioupos_backend *be = m->s.be;
  if (be) {
    float **bufs[] = {&m->m1, &m->m2, &m->center, &m->x, &m->xl, &m->feat, &m->dfeat,
                      &m->tprob, &m->slogp, &m->dout};
    size_t i;
    for (i = 0; i < sizeof bufs / sizeof *bufs; ++i) be->release(*bufs[i]);
  }
  IOUPOS_FREE(m->adam_steps);
  ioupos_swin_encoder_free(&m->enc_s);
  ioupos_swin_encoder_free(&m->enc_sl);
  ioupos_swin_encoder_free(&m->enc_t);
  ioupos_head_free(&m->head_s);
  ioupos_head_free(&m->head_t);
  ioupos_params_free(&m->s);
  ioupos_params_free(&m->t);
  memset(m, 0, sizeof *m);
}

IOUPOS_DEF void ioupos_dino_zero_grad(ioupos_dino *m) {
  m->s.be->zero(m->s.grad, m->s.table.total * sizeof(float));
}

IOUPOS_DEF int ioupos_dino_accumulate(ioupos_dino *m, const float *g1, const float *g2,
                                      const float *local, int n_local, int B, const int *shape,
                                      const int *lshape, float teacher_temp, float scale,
                                      ioupos_rng *rng, ioupos_ssl_stats *st) {
  const ioupos_backend *be = m->s.be;
  int F = ioupos_swin_feature_dim(&m->cfg.enc), D = m->cfg.out_dim, NS = 2 + n_local, rc;
  size_t npix = ioupos__npix(&m->cfg.enc, shape), nlpix = n_local ? ioupos__npix(&m->cfg.enc, lshape) : 0;
  const float *tout, *sout;
  double loss;
  if (B < 1 || n_local < 0 || NS > IOUPOS_HEAD_MAX_VIEWS)
    return ioupos__fail(IOUPOS_EINVAL, "DINO: batch %d, %d local views", B, n_local);
  if (B != m->batch || n_local != m->n_local || (int)npix != m->npix || (int)nlpix != m->nlpix) {
    if ((rc = ioupos__bbuf(be, &m->x, 2 * (size_t)B * npix)) ||
        (rc = ioupos__bbuf(be, &m->xl, (size_t)n_local * B * nlpix)) ||
        (rc = ioupos__bbuf(be, &m->feat, (size_t)NS * B * F)) ||
        (rc = ioupos__bbuf(be, &m->dfeat, (size_t)NS * B * F)) ||
        (rc = ioupos__bbuf(be, &m->tprob, 2 * (size_t)B * D)) ||
        (rc = ioupos__bbuf(be, &m->slogp, (size_t)NS * B * D)) ||
        (rc = ioupos__bbuf(be, &m->dout, (size_t)NS * B * D)))
      return rc;
    m->batch = B;
    m->n_local = n_local;
    m->npix = (int)npix;
    m->nlpix = (int)nlpix;
  }
  if ((rc = ioupos_swin_encoder_plan(&m->enc_s, &m->s, 2 * B, shape)) ||
      (rc = ioupos_swin_encoder_plan(&m->enc_t, &m->t, 2 * B, shape)) ||
      (n_local && (rc = ioupos_swin_encoder_plan(&m->enc_sl, &m->s, n_local * B, lshape))) ||
      (rc = ioupos_head_plan(&m->head_s, &m->s, NS * B, 1)) ||
      (rc = ioupos_head_plan(&m->head_t, &m->t, 2 * B, 1)))
    return rc;
  be->upload(m->x, g1, (size_t)B * npix * sizeof(float));
  be->upload(m->x + (size_t)B * npix, g2, (size_t)B * npix * sizeof(float));
  if (n_local) be->upload(m->xl, local, (size_t)n_local * B * nlpix * sizeof(float));
  /* teacher on the global views, eval mode */
  if ((rc = ioupos_swin_encoder_forward(&m->enc_t, &m->t, m->x, 0, NULL)) ||
      (rc = ioupos_head_forward(&m->head_t, &m->t, 0, ioupos_swin_encoder_feature(&m->enc_t), 0)))
    return rc;
  tout = ioupos_head_output(&m->head_t, 0);
  /* student on the global then the local views; one head pass over all of them */
  if ((rc = ioupos_swin_encoder_forward(&m->enc_s, &m->s, m->x, 1, rng)) != 0) return rc;
  be->copy(m->feat, ioupos_swin_encoder_feature(&m->enc_s), 2 * (size_t)B * F * sizeof(float));
  if (n_local) {
    if ((rc = ioupos_swin_encoder_forward(&m->enc_sl, &m->s, m->xl, 1, rng)) != 0) return rc;
    be->copy(m->feat + 2 * (size_t)B * F, ioupos_swin_encoder_feature(&m->enc_sl),
             (size_t)n_local * B * F * sizeof(float));
  }
  if ((rc = ioupos_head_forward(&m->head_s, &m->s, 0, m->feat, 1)) != 0) return rc;
  sout = ioupos_head_output(&m->head_s, 0);
  loss = be->dino_loss_forward(m->tprob, m->slogp, tout, sout, m->center, 2, NS, B, D,
                               teacher_temp, m->cfg.student_temp);
  if (st) {
    st->loss = loss;
    st->p_std = ioupos__backend_norm_std(be, sout, B, D);
    st->z_std = ioupos__backend_norm_std(be, tout, B, D);
  }
  be->zero(m->dout, (size_t)NS * B * D * sizeof(float));
  be->zero(m->dfeat, (size_t)NS * B * F * sizeof(float));
  be->dino_loss_backward(m->dout, scale, m->tprob, m->slogp, 2, NS, B, D, m->cfg.student_temp);
  if ((rc = ioupos_head_backward(&m->head_s, &m->s, 0, m->dout, m->feat, m->dfeat)) ||
      (rc = ioupos_swin_encoder_backward(&m->enc_s, &m->s, NULL, m->dfeat, NULL)) ||
      (n_local && (rc = ioupos_swin_encoder_backward(&m->enc_sl, &m->s, NULL,
                                                     m->dfeat + 2 * (size_t)B * F, NULL))))
    return rc;
  be->dino_center_update(m->center, tout, 2, B, D, m->cfg.center_momentum);
  return be->sync();
}

IOUPOS_DEF int ioupos_dino_step(ioupos_dino *m, double lr, double wd, int epoch,
                                int freeze_last_layer, float clip_grad, double teacher_m) {
  ioupos_params *p = &m->s;
  const ioupos_backend *be = p->be;
  int i;
  for (i = 0; i < p->table.n; ++i) {
    const ioupos_tensor_info *t = &p->table.t[i];
    float *g = p->grad + t->offset;
    if (t->dtype != IOUPOS_ST_F32 || (t->flags & (IOUPOS_TENSOR_BUFFER | IOUPOS_TENSOR_FROZEN)))
      continue;
    if (ioupos_dino_param_frozen(t->name, epoch, freeze_last_layer)) continue;
    if (clip_grad > 0.0f) be->clip_grad_per_param(g, t->numel, clip_grad);
    be->adamw_step(p->value + t->offset, g, m->m1 + t->offset, m->m2 + t->offset, t->numel,
                   (float)lr, 0.9f, 0.999f, 1e-8f,
                   (t->flags & IOUPOS_TENSOR_NO_DECAY) ? 0.0f : (float)wd,
                   (int)++m->adam_steps[i]);
  }
  be->ema_update(m->t.value, p->value, p->table.total, teacher_m);
  return be->sync();
}

/* -- the run -- */

IOUPOS_DEF void ioupos_pretrain_opts_default(ioupos_pretrain_opts *o, int method) {
  memset(o, 0, sizeof *o);
  o->method = method;
  ioupos_swin_config_default(&o->enc, 2);
  o->chkpt_dir = "chkpts";
  o->run_name = method == IOUPOS_SSL_DINO ? "dino" : "simsiam";
  o->crop[0] = o->crop[1] = 96;
  o->min_iou = 0.3;
  o->max_iou = 0.6;
  o->pair_mode = IOUPOS_PAIR_ANCHORED;
  o->batch_size = 128;
  o->n_epochs = 100;
  o->accum_iters = 1;
  o->seed = 4294967295u;
  o->log_every = 10;
  o->proj_hidden = 2048;
  o->proj_out = 2048;
  o->pred_hidden = 512;
  o->hidden = 2048;
  o->bottleneck = 256;
  o->out_dim = 1024;
  o->norm_last_layer = 1;
  o->freeze_last_layer = 1;
  o->local_crop[0] = o->local_crop[1] = 48;
  o->local_min_iou = 0.0;
  o->local_max_iou = 1.0;
  o->momentum_teacher = 0.9995;
  o->teacher_temp = 0.04;
  o->warmup_teacher_temp = 0.04;
  o->student_temp = 0.1;
  o->center_momentum = 0.9;
  o->clip_grad = 3.0;
  if (method == IOUPOS_SSL_DINO) {
    o->base_lr = 5e-5;
    o->min_lr = 1e-6;
    o->end_lr = 1e-6;
    o->warmup_epochs = 10;
    o->wd = 0.04;
    o->wd_end = 0.4;
  } else {
    o->base_lr = 0.025;
    o->end_lr = 1e-6;
    o->wd = 1e-5;
  }
}


/* JSON string body escaping (for file names and the commit in metrics / flags files) */
static void ioupos__json_escape(char *dst, size_t cap, const char *s) {
  size_t k = 0;
  for (; s && *s && k + 7 < cap; ++s) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      dst[k++] = '\\';
      dst[k++] = (char)c;
    } else if (c < 0x20) {
      k += (size_t)snprintf(dst + k, cap - k, "\\u%04x", c);
    } else {
      dst[k++] = (char)c;
    }
  }
  dst[k] = '\0';
}

/* A growing list of tensors for a state file. */
typedef struct ioupos__tlist {
  int n;
  size_t cap;
  ioupos_st_tensor *t;
  char **names;
  size_t ncap;
} ioupos__tlist;

static int ioupos__tlist_add(ioupos__tlist *l, const char *prefix, const char *name, int dtype,
                             int ndim, const int64_t *shape, const void *data, size_t nbytes) {
  size_t len = strlen(prefix) + strlen(name) + 1;
  char *nm;
  int d;
  if (!ioupos__grow((void **)&l->t, (size_t)l->n, &l->cap, sizeof *l->t) ||
      !ioupos__grow((void **)&l->names, (size_t)l->n, &l->ncap, sizeof *l->names) ||
      !(nm = (char *)ioupos__calloc(len, 1)))
    return ioupos__fail(IOUPOS_ENOMEM, "out of memory collecting the training state");
  memcpy(nm, prefix, strlen(prefix));
  memcpy(nm + strlen(prefix), name, strlen(name) + 1);
  l->names[l->n] = nm;
  memset(&l->t[l->n], 0, sizeof l->t[l->n]);
  l->t[l->n].name = nm;
  l->t[l->n].dtype = dtype;
  l->t[l->n].ndim = ndim;
  for (d = 0; d < ndim; ++d) l->t[l->n].shape[d] = shape[d];
  l->t[l->n].data = data;
  l->t[l->n].nbytes = nbytes;
  ++l->n;
  return 0;
}

static void ioupos__tlist_free(ioupos__tlist *l) {
  int i;
  for (i = 0; i < l->n; ++i) IOUPOS_FREE(l->names[i]);
  IOUPOS_FREE(l->names);
  IOUPOS_FREE(l->t);
  memset(l, 0, sizeof *l);
}

/* every tensor of table tt with values in host arena h (F32) / ih (I64; NULL: F32 only) */
static int ioupos__tlist_table(ioupos__tlist *l, const char *prefix, const ioupos_tensor_table *tt,
                               const float *h, const int64_t *ih) {
  int i, rc;
  for (i = 0; i < tt->n; ++i) {
    const ioupos_tensor_info *t = &tt->t[i];
    if (t->dtype == IOUPOS_ST_I64 && !ih) continue;
    if (t->dtype == IOUPOS_ST_F32 && !ih && (t->flags & (IOUPOS_TENSOR_BUFFER | IOUPOS_TENSOR_FROZEN)))
      continue;
    rc = ioupos__tlist_add(l, prefix, t->name, t->dtype, t->ndim, t->shape,
                           t->dtype == IOUPOS_ST_F32 ? (const void *)(h + t->offset)
                                                     : (const void *)(ih + t->offset),
                           t->numel * (t->dtype == IOUPOS_ST_F32 ? 4 : 8));
    if (rc) return rc;
  }
  return 0;
}

/* a host copy of a backend arena of n floats (NULL on failure) */
static float *ioupos__host_copy(const ioupos_backend *be, const float *src, size_t n) {
  float *h = (float *)ioupos__calloc(n + 1, sizeof(float));
  if (h && n) be->download(h, src, n * sizeof(float));
  return h;
}

/* load the F32 trainable tensors of tt from "<prefix><name>" into backend arena dst */
static int ioupos__load_arena(const ioupos_st_file *f, const char *prefix,
                              const ioupos_tensor_table *tt, const ioupos_backend *be, float *dst) {
  float *h = (float *)ioupos__calloc(tt->total + 1, sizeof(float));
  char name[2 * IOUPOS_TENSOR_NAME_MAX];
  int i, rc;
  if (!h) return ioupos__fail(IOUPOS_ENOMEM, "out of memory reading the training state");
  for (i = 0; i < tt->n; ++i) {
    const ioupos_tensor_info *t = &tt->t[i];
    const ioupos_st_tensor *ft;
    if (t->dtype != IOUPOS_ST_F32 || (t->flags & (IOUPOS_TENSOR_BUFFER | IOUPOS_TENSOR_FROZEN)))
      continue;
    ioupos__join(name, sizeof name, prefix, t->name);
    ft = ioupos_safetensors_find(f, name);
    if (!ft || ft->dtype != IOUPOS_ST_F32 || ft->nbytes != t->numel * 4 ||
        ioupos_st_to_f32(ft, h + t->offset) != 0) {
      IOUPOS_FREE(h);
      return ioupos__fail(IOUPOS_EFORMAT, "training state lacks a matching '%s'", name);
    }
    if ((rc = ioupos__st_check_finite(f, name, h + t->offset, NULL, t->numel)) != 0) {
      IOUPOS_FREE(h);
      return rc;
    }
  }
  be->upload(dst, h, tt->total * sizeof(float));
  IOUPOS_FREE(h);
  return be->sync();
}

static int ioupos__st_i64(const ioupos_st_file *f, const char *name, int64_t *v, size_t n) {
  const ioupos_st_tensor *t = ioupos_safetensors_find(f, name);
  size_t k;
  if (!t || t->dtype != IOUPOS_ST_I64 || t->nbytes != 8 * n)
    return ioupos__fail(IOUPOS_EFORMAT, "training state lacks '%s' (%zu int64)", name, n);
  for (k = 0; k < n; ++k) {
    const unsigned char *b = (const unsigned char *)t->data + 8 * k;
    uint64_t u = 0;
    int i;
    for (i = 7; i >= 0; --i) u = (u << 8) | b[i];
    v[k] = (int64_t)u;
  }
  return 0;
}

/* the run's position and configuration, stored as "train.counters" */
enum {
  IOUPOS__C_METHOD, IOUPOS__C_EPOCH, IOUPOS__C_STEP, IOUPOS__C_OPT_STEPS, IOUPOS__C_SEED,
  IOUPOS__C_BATCH, IOUPOS__C_ACCUM, IOUPOS__C_EPOCHS, IOUPOS__C_CROP0, IOUPOS__C_CROP1,
  IOUPOS__C_NLOCAL, IOUPOS__C_SPE, IOUPOS__C_N
};

/* -- the run machinery, shared with fine-tuning (section 22)
   What every run has besides its model: its console (the caller's log callback), its early
   stop (the caller's flag, or a number of optimiser steps in this process), its directory with
   the hold on it, and the flags and build it records. */
typedef struct ioupos__runio {
  void (*log)(void *ctx, const char *line);
  void *log_ctx;
  volatile int *stop;    /* set by the caller (a signal handler): stop at the next step */
  int max_steps;         /* stop after this many optimiser steps in this process (0: never) */
  long steps_here;       /* optimiser steps taken in this process */
  const char *flags_json, *git_commit;
  char dir[4096];        /* the run directory */
  ioupos_dir_lock lock;  /* the hold on dir (fd -1: not held) */
} ioupos__runio;

static void ioupos__runio_init(ioupos__runio *io, void (*log)(void *, const char *), void *log_ctx,
                               volatile int *stop, int max_steps, const char *flags_json,
                               const char *git_commit, const char *chkpt_dir,
                               const char *run_name) {
  memset(io, 0, sizeof *io);
  io->log = log;
  io->log_ctx = log_ctx;
  io->stop = stop;
  io->max_steps = max_steps;
  io->flags_json = flags_json;
  io->git_commit = git_commit;
  io->lock.fd = -1;
  snprintf(io->dir, sizeof io->dir, "%s/%s", chkpt_dir ? chkpt_dir : ".", run_name);
}

/* one console line (the library never prints) */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void ioupos__say(const ioupos__runio *io, const char *fmt, ...) {
  char line[2048];
  va_list ap;
  if (!io->log) return;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  io->log(io->log_ctx, line);
}

/* the caller asked to stop: its flag, or max_steps optimiser steps taken in this process */
static int ioupos__halted(const ioupos__runio *io) {
  return (io->max_steps > 0 && io->steps_here >= io->max_steps) || (io->stop && *io->stop);
}

/* why a run stopped early, for the log */
static const char *ioupos__halt_reason(const ioupos__runio *io) {
  return io->stop && *io->stop ? "interrupted" : "stopped (`max_steps`)";
}

static int ioupos__append(const char *path, const char *line);

/* wall-clock time of the log lines: the run's start, the last line, images since then */
typedef struct ioupos__clock {
  double t_start, t_log, img_log;
} ioupos__clock;

/* one line of <dir>/metrics.jsonl */
static int ioupos__metrics_put(const ioupos__runio *io, const char *line) {
  char path[4200];
  snprintf(path, sizeof path, "%s/metrics.jsonl", io->dir);
  return ioupos__append(path, line);
}

static int ioupos__state_write(const ioupos__runio *io, ioupos__tlist *l, const char *path,
                               int64_t *c, int nc, double mon[3]);

typedef struct ioupos__run {
  const ioupos_pretrain_opts *o;
  ioupos__runio io;
  ioupos__clock clock;
  ioupos_rng drop;       /* the root of the drop-path draws (split by step) */
  int spe;               /* optimiser steps per epoch */
  ioupos_simsiam ss;
  ioupos_dino dn;
  int64_t c[IOUPOS__C_N];
  double avg_std;        /* EMA (0.9) of p_std: the research collapse monitor */
  double ep_loss, ep_n;  /* the current epoch's loss sum and steps (for its mean) */
} ioupos__run;

static ioupos_params *ioupos__run_params(ioupos__run *r) {
  return r->o->method == IOUPOS_SSL_DINO ? &r->dn.s : &r->ss.p;
}

static int ioupos__save_state(ioupos__run *r, const char *path) {
  ioupos__tlist l;
  const ioupos_pretrain_opts *o = r->o;
  ioupos_params *p = ioupos__run_params(r);
  const ioupos_backend *be = p->be;
  float *hp = ioupos__host_copy(be, p->value, p->table.total), *h1 = NULL, *h2 = NULL, *ht = NULL,
        *hc = NULL;
  double mon[3];
  int64_t one[1] = {1};
  int rc;
  memset(&l, 0, sizeof l);
  mon[0] = r->avg_std;
  mon[1] = r->ep_loss;
  mon[2] = r->ep_n;
  if (!hp) return ioupos__fail(IOUPOS_ENOMEM, "out of memory saving the training state");
  rc = ioupos__tlist_table(&l, "model.", &p->table, hp, p->ivalue);
  if (o->method == IOUPOS_SSL_DINO) {
    int64_t dshape[1];
    int i;
    h1 = ioupos__host_copy(be, r->dn.m1, p->table.total);
    h2 = ioupos__host_copy(be, r->dn.m2, p->table.total);
    ht = ioupos__host_copy(be, r->dn.t.value, p->table.total);
    hc = ioupos__host_copy(be, r->dn.center, (size_t)r->dn.cfg.out_dim);
    dshape[0] = r->dn.cfg.out_dim;
    if (!h1 || !h2 || !ht || !hc) rc = ioupos__fail(IOUPOS_ENOMEM, "out of memory");
    if (!rc) rc = ioupos__tlist_table(&l, "teacher.", &r->dn.t.table, ht, r->dn.t.ivalue);
    if (!rc) rc = ioupos__tlist_table(&l, "optim.exp_avg.", &p->table, h1, NULL);
    if (!rc) rc = ioupos__tlist_table(&l, "optim.exp_avg_sq.", &p->table, h2, NULL);
    for (i = 0; !rc && i < p->table.n; ++i)
      if (p->table.t[i].dtype == IOUPOS_ST_F32 &&
          !(p->table.t[i].flags & (IOUPOS_TENSOR_BUFFER | IOUPOS_TENSOR_FROZEN)))
        rc = ioupos__tlist_add(&l, "optim.step.", p->table.t[i].name, IOUPOS_ST_I64, 1, one,
                               &r->dn.adam_steps[i], 8);
    if (!rc) rc = ioupos__tlist_add(&l, "", "dino.center", IOUPOS_ST_F32, 1, dshape, hc,
                                    (size_t)dshape[0] * 4);
  } else {
    h1 = ioupos__host_copy(be, r->ss.momentum, p->table.total);
    if (!h1) rc = ioupos__fail(IOUPOS_ENOMEM, "out of memory");
    if (!rc) rc = ioupos__tlist_table(&l, "optim.momentum.", &p->table, h1, NULL);
  }
  if (!rc) rc = ioupos__state_write(&r->io, &l, path, r->c, IOUPOS__C_N, mon);
  ioupos__tlist_free(&l);
  IOUPOS_FREE(hp);
  IOUPOS_FREE(h1);
  IOUPOS_FREE(h2);
  IOUPOS_FREE(ht);
  IOUPOS_FREE(hc);
  return rc;
}

/* -- the resume check of the flags: two flat JSON objects, key by key -- */

typedef struct ioupos__jkv {
  const char *k, *v; /* the key's body (between its quotes) and the value's raw JSON text */
  size_t kn, vn;
} ioupos__jkv;

/* The pairs of the flat JSON object text s (NULL: {}) into a new array *out (free it), read
   with section 6's reader; returns their number, or -1 with the reason in
   ioupos_failure_reason(). Keys and values are kept as their source text: two flag sets are
   compared by text, and our drivers write both the same way. */
static int ioupos__jobject(const char *s, const char *name, ioupos__jkv **out) {
  ioupos__json j;
  ioupos__jkv *kv;
  size_t cap = 8, at;
  int n = 0;
  *out = NULL;
  j.s = s ? s : "{}";
  j.len = strlen(j.s);
  j.pos = 0;
  j.name = name;
  if (!(kv = (ioupos__jkv *)ioupos__calloc(cap, sizeof *kv))) return -1;
  ioupos__json_ws(&j);
  if (j.pos >= j.len || j.s[j.pos] != '{') {
    ioupos__json_fail(&j, j.pos, "expected '{'");
    goto fail;
  }
  ++j.pos;
  ioupos__json_ws(&j);
  if (j.pos < j.len && j.s[j.pos] == '}') {
    ++j.pos;
  } else {
    for (;;) {
      ioupos__json_ws(&j);
      at = j.pos;
      if (at >= j.len || j.s[at] != '"') {
        ioupos__json_fail(&j, at, "expected a string key");
        goto fail;
      }
      if (ioupos__json_skip_value(&j, 1)) goto fail;
      if (!ioupos__grow((void **)&kv, (size_t)n, &cap, sizeof *kv)) {
        ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory", name);
        goto fail;
      }
      kv[n].k = j.s + at + 1;
      kv[n].kn = j.pos - at - 2;
      ioupos__json_ws(&j);
      if (j.pos >= j.len || j.s[j.pos] != ':') {
        ioupos__json_fail(&j, j.pos, "expected ':'");
        goto fail;
      }
      ++j.pos;
      ioupos__json_ws(&j);
      at = j.pos;
      if (ioupos__json_skip_value(&j, 1)) goto fail;
      kv[n].v = j.s + at;
      kv[n].vn = j.pos - at;
      ++n;
      ioupos__json_ws(&j);
      if (j.pos < j.len && j.s[j.pos] == ',') {
        ++j.pos;
        continue;
      }
      if (j.pos < j.len && j.s[j.pos] == '}') {
        ++j.pos;
        break;
      }
      ioupos__json_fail(&j, j.pos, "expected ',' or '}'");
      goto fail;
    }
  }
  ioupos__json_ws(&j);
  if (j.pos != j.len) {
    ioupos__json_fail(&j, j.pos, "unexpected content after the object");
    goto fail;
  }
  *out = kv;
  return n;
fail:
  IOUPOS_FREE(kv);
  return -1;
}

static const ioupos__jkv *ioupos__jfind(const ioupos__jkv *kv, int n, const char *k, size_t kn) {
  int i;
  for (i = 0; i < n; ++i)
    if (kv[i].kn == kn && memcmp(kv[i].k, k, kn) == 0) return &kv[i];
  return NULL;
}

/* the keys that may differ on resume: one invocation's settings (results do not depend on
   them), where the run directory is (the state was found there) and the build */
static int ioupos__resume_may_differ(const char *k, size_t kn) {
  static const char *const ok[] = {"num_workers", "threads", "log_every", "resume", "max_steps",
                                   "chkpt_dir", "run_name", "git_commit", "device"};
  size_t i;
  for (i = 0; i < sizeof ok / sizeof *ok; ++i)
    if (strlen(ok[i]) == kn && memcmp(ok[i], k, kn) == 0) return 1;
  return 0;
}

/* appends "`key` A (now B)" to msg (the key of flags_json in backquotes, as options are named
   in messages; "method" is the run's, not an option) */
static void ioupos__jdiff_add(char *msg, size_t cap, int *nd, const ioupos__jkv *was,
                              const ioupos__jkv *now) {
  const ioupos__jkv *a = was ? was : now;
  size_t k = strlen(msg);
  int wn = was ? (int)(was->vn < 80 ? was->vn : 80) : 0, nn = now ? (int)(now->vn < 80 ? now->vn : 80) : 0;
  int kn = (int)(a->kn < 64 ? a->kn : 64), method = a->kn == 6 && !memcmp(a->k, "method", 6);
  if (k + 1 >= cap) return;
  snprintf(msg + k, cap - k, "%s%s%.*s%s %.*s%s (now %.*s%s)", *nd ? ", " : "",
           method ? "" : "`", kn, a->k, method ? "" : "`",
           was ? wn : 9, was ? was->v : "(not set)", was && (size_t)wn < was->vn ? "..." : "",
           now ? nn : 9, now ? now->v : "(not set)", now && (size_t)nn < now->vn ? "..." : "");
  ++*nd;
}

/* compares the state's stored flags with o->flags_json (see "Resume refuses" above) */
static int ioupos__resume_flags_check(const ioupos__runio *io, const ioupos_st_file *f,
                                      const char *path) {
  const char *stored = "{}";
  ioupos__jkv *was = NULL, *now = NULL;
  int nw, nn, i, nd = 0, rc = 0;
  char msg[1536];
  for (i = 0; i < f->n_metadata; ++i)
    if (strcmp(f->metadata[i].key, "flags") == 0) stored = f->metadata[i].value;
  nw = ioupos__jobject(stored, "the stored flags", &was);
  nn = nw < 0 ? 0 : ioupos__jobject(io->flags_json, "this run's flags", &now);
  if (nw < 0 || nn < 0) {
    rc = ioupos__fail(IOUPOS_EFORMAT, "cannot resume %s: %s flags are not a flat JSON object "
                      "(%s)", path, nw < 0 ? "the state's stored" : "this run's",
                      ioupos_failure_reason());
    goto done;
  }
  msg[0] = '\0';
  for (i = 0; i < nw; ++i) {
    const ioupos__jkv *b = ioupos__jfind(now, nn, was[i].k, was[i].kn);
    if (ioupos__resume_may_differ(was[i].k, was[i].kn)) continue;
    if (!b || b->vn != was[i].vn || memcmp(b->v, was[i].v, b->vn) != 0)
      ioupos__jdiff_add(msg, sizeof msg, &nd, &was[i], b);
  }
  for (i = 0; i < nn; ++i)
    if (!ioupos__resume_may_differ(now[i].k, now[i].kn) &&
        !ioupos__jfind(was, nw, now[i].k, now[i].kn))
      ioupos__jdiff_add(msg, sizeof msg, &nd, NULL, &now[i]);
  if (nd) {
    rc = ioupos__fail(IOUPOS_EINVAL,
                      "cannot resume %s: it was run with other flags: %s; resume with the same "
                      "flags (only `num_workers`, `threads`, `log_every`, `device` may change) or start a "
                      "new `run_name`", path, msg);
    goto done;
  }
  {
    const ioupos__jkv *a = ioupos__jfind(was, nw, "git_commit", 10);
    const ioupos__jkv *b = ioupos__jfind(now, nn, "git_commit", 10);
    if (a && b && (a->vn != b->vn || memcmp(a->v, b->v, a->vn) != 0))
      ioupos__say(io, "note: resuming with build %.*s; the run was started by build %.*s "
                      "(the result equals an uninterrupted run's only if the training code is "
                      "the same)", (int)(b->vn < 80 ? b->vn : 80), b->v,
                      (int)(a->vn < 80 ? a->vn : 80), a->v);
  }
done:
  IOUPOS_FREE(was);
  IOUPOS_FREE(now);
  return rc;
}

/* -- training state files, shared with fine-tuning
   A state file holds the run's own tensors (model, optimiser, ...), then "train.counters" (the
   run's position and the settings it must keep, int64) and "train.monitor" (three float64 the
   run carries across epochs), with the flags and the build as metadata. */
static int ioupos__state_write(const ioupos__runio *io, ioupos__tlist *l, const char *path,
                               int64_t *c, int nc, double mon[3]) {
  int64_t cshape[1], three[1] = {3};
  ioupos_st_pair meta[2];
  int rc;
  cshape[0] = nc;
  rc = ioupos__tlist_add(l, "", "train.counters", IOUPOS_ST_I64, 1, cshape, c, (size_t)nc * 8);
  if (!rc) rc = ioupos__tlist_add(l, "", "train.monitor", IOUPOS_ST_F64, 1, three, mon, 24);
  meta[0].key = "flags";
  meta[0].value = io->flags_json ? io->flags_json : "{}";
  meta[1].key = "commit";
  meta[1].value = io->git_commit ? io->git_commit : "unknown";
  if (!rc) rc = ioupos_safetensors_write(path, l->n, l->t, 2, meta);
  return rc;
}

/* Opens a state to resume from: its flags must be this run's (key by key), and each counter
   that what[] names (NULL: free to differ, e.g. the position) must equal want[]. *c and mon[]
   receive the stored counters and monitor. The caller then loads its tensors from *f and
   frees it (also on failure: *f is empty then). */
static int ioupos__state_read(const ioupos__runio *io, const char *path, ioupos_st_file *f,
                              const char *const *what, const int64_t *want, int64_t *c, int nc,
                              double mon[3]) {
  const ioupos_st_tensor *t;
  int rc, i;
  memset(f, 0, sizeof *f);
  if ((rc = ioupos_safetensors_read(path, f)) != 0) return rc;
  if ((rc = ioupos__resume_flags_check(io, f, path)) != 0) return rc;
  if ((rc = ioupos__st_i64(f, "train.counters", c, (size_t)nc)) != 0) return rc;
  for (i = 0; i < nc; ++i)
    if (what[i] && c[i] != want[i])
      return ioupos__fail(IOUPOS_EINVAL,
                          "cannot resume %s: it was run with another %s (%lld, now %lld); resume "
                          "with the same flags and data or start a new `run_name`",
                          path, what[i], (long long)c[i], (long long)want[i]);
  t = ioupos_safetensors_find(f, "train.monitor");
  if (!t || t->dtype != IOUPOS_ST_F64 || t->nbytes != 24)
    return ioupos__fail(IOUPOS_EFORMAT, "%s lacks train.monitor (3 float64)", path);
  memcpy(mon, t->data, 24); /* little-endian hosts (section 13 writes little-endian) */
  return ioupos__st_check_finite(f, "train.monitor", NULL, mon, 3);
}

static int ioupos__load_state(ioupos__run *r, const char *path) {
  static const char *const what[IOUPOS__C_N] = {
    "the method", NULL, NULL, NULL, "`seed`", "`batch_size`", "`accum_iters`", "`n_epochs`",
    "`crop`", "`crop`", "`n_local`", "the data set size"};
  const ioupos_pretrain_opts *o = r->o;
  ioupos_params *p = ioupos__run_params(r);
  ioupos_st_file f;
  int64_t c[IOUPOS__C_N];
  double mon[3];
  int rc, i, nl, no;
  rc = ioupos__state_read(&r->io, path, &f, what, r->c, c, IOUPOS__C_N, mon);
  if (rc == 0) rc = ioupos_params_load(p, &f, "", "model.", &nl, &no);
  if (rc == 0 && o->method == IOUPOS_SSL_DINO) {
    rc = ioupos_params_load(&r->dn.t, &f, "", "teacher.", &nl, &no);
    if (!rc) rc = ioupos__load_arena(&f, "optim.exp_avg.", &p->table, p->be, r->dn.m1);
    if (!rc) rc = ioupos__load_arena(&f, "optim.exp_avg_sq.", &p->table, p->be, r->dn.m2);
    for (i = 0; !rc && i < p->table.n; ++i)
      if (p->table.t[i].dtype == IOUPOS_ST_F32 &&
          !(p->table.t[i].flags & (IOUPOS_TENSOR_BUFFER | IOUPOS_TENSOR_FROZEN))) {
        char name[2 * IOUPOS_TENSOR_NAME_MAX];
        ioupos__join(name, sizeof name, "optim.step.", p->table.t[i].name);
        rc = ioupos__st_i64(&f, name, &r->dn.adam_steps[i], 1);
      }
    if (!rc) {
      const ioupos_st_tensor *t = ioupos_safetensors_find(&f, "dino.center");
      float *h = (float *)ioupos__calloc((size_t)r->dn.cfg.out_dim, sizeof(float));
      if (!t || !h || t->nbytes != (size_t)r->dn.cfg.out_dim * 4 || ioupos_st_to_f32(t, h) != 0)
        rc = ioupos__fail(IOUPOS_EFORMAT, "%s lacks a matching dino.center", path);
      else if ((rc = ioupos__st_check_finite(&f, "dino.center", h, NULL,
                                             (size_t)r->dn.cfg.out_dim)) == 0)
        p->be->upload(r->dn.center, h, (size_t)r->dn.cfg.out_dim * 4);
      IOUPOS_FREE(h);
    }
  } else if (rc == 0) {
    rc = ioupos__load_arena(&f, "optim.momentum.", &p->table, p->be, r->ss.momentum);
    r->ss.steps = c[IOUPOS__C_OPT_STEPS];
  }
  if (rc == 0) {
    memcpy(r->c, c, sizeof c);
    r->avg_std = mon[0];
    r->ep_loss = mon[1];
    r->ep_n = mon[2];
  }
  ioupos_safetensors_free(&f);
  return rc;
}

/* the model checkpoint with MONAI / PyTorch names */
static int ioupos__save_checkpoint(ioupos__run *r, const char *path) {
  ioupos_st_pair meta[1];
  char epoch[32];
  snprintf(epoch, sizeof epoch, "%lld", (long long)r->c[IOUPOS__C_EPOCH]);
  meta[0].key = "epochs_done";
  meta[0].value = epoch;
  if (r->o->method == IOUPOS_SSL_DINO) {
    /* the teacher as backbone.* / head.* (DINO evaluates the teacher), the student beside it:
       write both into one file */
    ioupos__tlist l;
    const ioupos_backend *be = r->dn.s.be;
    float *hs = ioupos__host_copy(be, r->dn.s.value, r->dn.s.table.total);
    float *ht = ioupos__host_copy(be, r->dn.t.value, r->dn.t.table.total);
    int rc = hs && ht ? 0 : ioupos__fail(IOUPOS_ENOMEM, "out of memory saving %s", path);
    memset(&l, 0, sizeof l);
    if (!rc) rc = ioupos__tlist_table(&l, "", &r->dn.t.table, ht, r->dn.t.ivalue);
    if (!rc) rc = ioupos__tlist_table(&l, "student.", &r->dn.s.table, hs, r->dn.s.ivalue);
    if (!rc) rc = ioupos_safetensors_write(path, l.n, l.t, 1, meta);
    ioupos__tlist_free(&l);
    IOUPOS_FREE(hs);
    IOUPOS_FREE(ht);
    return rc;
  }
  return ioupos_params_save(&r->ss.p, path, "", "", 1, meta);
}

static double ioupos__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void ioupos__clock_start(ioupos__clock *c) {
  c->t_start = c->t_log = ioupos__now();
  c->img_log = 0.0;
}

/* images (or slices) per second since the last log line; starts the next interval */
static double ioupos__clock_rate(ioupos__clock *c) {
  double now = ioupos__now(), dt = now - c->t_log, rate;
  rate = c->img_log / (dt > 1e-9 ? dt : 1e-9);
  c->t_log = now;
  c->img_log = 0.0;
  return rate;
}

/* The run directory held for the run (ioupos_dir_hold: a second run or --resume of the same
   directory is refused while this one lives; stale temporary files of a killed run go). */
static int ioupos__run_dir_hold(ioupos__runio *io) {
  int n_stale = 0, rc = ioupos_dir_hold(&io->lock, io->dir, &n_stale);
  if (rc == 0 && n_stale > 0)
    ioupos__say(io, "removed %d stale temporary file%s of a killed earlier process from %s",
                n_stale, n_stale > 1 ? "s" : "", io->dir);
  return rc;
}

/* Releases the run directory. A run that failed (rc != 0) before it saved its first state
   leaves nothing: the files it wrote (flags.json, metrics.jsonl, checkpoints, results) and the
   folders it created go. A run that failed later keeps everything: its state resumes it. */
static void ioupos__run_dir_release(ioupos__runio *io, int rc) {
  char path[4200];
  struct stat sb;
  if (io->lock.fd < 0) return;
  snprintf(path, sizeof path, "%s/state.safetensors", io->dir);
  ioupos_dir_release(&io->lock, rc != 0 && stat(path, &sb) != 0);
}

/* A new run directory: refused when dir already holds a run (its state file). */
static int ioupos__run_dir_free(const char *dir) {
  char path[4200];
  FILE *fp;
  snprintf(path, sizeof path, "%s/state.safetensors", dir);
  fp = fopen(path, "rb");
  if (!fp) return 0;
  fclose(fp);
  return ioupos__fail(IOUPOS_EINVAL, "%s already holds a run: pass `resume` to continue it or "
                      "choose another `run_name`", dir);
}

/* Creates the run directory dir with flags.json ({"flags": flags_json, "seed", "commit",
   "steps_per_epoch"}, atomically) and no metrics.jsonl yet. */
static int ioupos__run_dir_create(const char *dir, const char *flags_json, uint64_t seed,
                                  const char *commit, int spe) {
  char path[4200], esc[512], *js;
  size_t n = (flags_json ? strlen(flags_json) : 2) + sizeof esc + 128;
  int rc;
  if ((rc = ioupos__mkdirs(dir)) != 0) return rc;
  ioupos__json_escape(esc, sizeof esc, commit ? commit : "unknown");
  js = (char *)ioupos__calloc(n, 1);
  if (!js) return ioupos__fail(IOUPOS_ENOMEM, "out of memory");
  snprintf(js, n, "{\"flags\": %s, \"seed\": %llu, \"commit\": \"%s\", "
           "\"steps_per_epoch\": %d}\n", flags_json ? flags_json : "{}",
           (unsigned long long)seed, esc, spe);
  snprintf(path, sizeof path, "%s/flags.json", dir);
  rc = ioupos_write_file_atomic(path, js, strlen(js));
  IOUPOS_FREE(js);
  if (rc) return rc;
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  remove(path);
  return 0;
}

/* keeps the metrics lines whose "step" is at most `step` (a resumed run rewrites its future) */
static int ioupos__metrics_truncate(const char *path, long long step) {
  void *data = NULL;
  size_t size = 0, i = 0, keep = 0;
  char *s;
  int rc;
  if (ioupos_read_file(path, &data, &size) != 0) return 0; /* no file yet */
  s = (char *)data;
  while (i < size) {
    size_t j = i;
    const char *k;
    long long v = -1;
    while (j < size && s[j] != '\n') ++j;
    k = strstr(s + i, "\"step\":");
    if (k && k < s + j) v = strtoll(k + 7, NULL, 10);
    if (v <= step) {
      memmove(s + keep, s + i, j - i + (j < size));
      keep += j - i + (j < size);
    }
    i = j + 1;
  }
  rc = ioupos_write_file_atomic(path, s, keep);
  IOUPOS_FREE(data);
  return rc;
}

static int ioupos__append(const char *path, const char *line) {
  FILE *fp = fopen(path, "a");
  int ok;
  if (!fp) return ioupos__fail(IOUPOS_EIO, "cannot open %s: %s", path, strerror(errno));
  ok = fputs(line, fp) >= 0;
  ok = (fclose(fp) == 0) && ok;
  return ok ? 0 : ioupos__fail(IOUPOS_EIO, "cannot write %s: %s", path, strerror(errno));
}

static int ioupos__run_check(const ioupos_pretrain_opts *o) {
  if (o->method != IOUPOS_SSL_SIMSIAM && o->method != IOUPOS_SSL_DINO)
    return ioupos__fail(IOUPOS_EINVAL, "unknown method %d", o->method);
  if (!o->data_dir || !*o->data_dir) return ioupos__fail(IOUPOS_EINVAL, "`data_dir` is required");
  if (o->enc.spatial_dims != 2)
    return ioupos__fail(IOUPOS_EINVAL,
                        "`spatial_dims` 3: 3D pretraining needs a NIfTI volume loader, which "
                        "ioupos does not have yet (the research code's 3D path never ran either)");
  if (o->batch_size < (o->method == IOUPOS_SSL_SIMSIAM ? 2 : 1))
    return ioupos__fail(IOUPOS_EINVAL, "`batch_size` %d: SimSiam needs at least 2 (batch norm)",
                        o->batch_size);
  if (o->n_epochs < 0 || o->accum_iters < 1 || o->log_every < 1)
    return ioupos__fail(IOUPOS_EINVAL, "`n_epochs` %d, `accum_iters` %d, `log_every` %d out of range",
                        o->n_epochs, o->accum_iters, o->log_every);
  if (!(o->base_lr > 0.0) || !(o->end_lr >= 0.0) || !(o->wd >= 0.0) || !(o->warmup_epochs >= 0.0))
    return ioupos__fail(IOUPOS_EINVAL, "`base_lr` %g, `end_lr` %g, `wd` %g, `warmup_epochs` %g "
                        "must be positive / non-negative", o->base_lr, o->end_lr, o->wd,
                        o->warmup_epochs);
  if (o->method == IOUPOS_SSL_DINO && (o->n_local < 0 || o->n_local + 2 > IOUPOS_HEAD_MAX_VIEWS))
    return ioupos__fail(IOUPOS_EINVAL, "`n_local` %d: 0 to %d", o->n_local,
                        IOUPOS_HEAD_MAX_VIEWS - 2);
  /* the augmentations' rot90 turns an H x W crop into W x H: square crops only */
  if (o->crop[0] != o->crop[1])
    return ioupos__fail(IOUPOS_EINVAL,
                        "`crop` %d,%d: the pretraining augmentations need square crops (their "
                        "rot90 would change a non-square crop's shape); use e.g. `crop` %d",
                        o->crop[0], o->crop[1], o->crop[0]);
  if (o->method == IOUPOS_SSL_DINO && o->n_local > 0 && o->local_crop[0] != o->local_crop[1])
    return ioupos__fail(IOUPOS_EINVAL,
                        "`local_crop` %d,%d: the pretraining augmentations need square crops "
                        "(their rot90 would change a non-square crop's shape); use e.g. "
                        "`local_crop` %d",
                        o->local_crop[0], o->local_crop[1], o->local_crop[0]);
  /* DINO's cosine schedule with a warm-up as long as the run would never warm up */
  if (o->method == IOUPOS_SSL_DINO && o->warmup_epochs > 0.0 &&
      o->warmup_epochs >= (double)o->n_epochs)
    return ioupos__fail(IOUPOS_EINVAL,
                        "`warmup_epochs` %g must be below `n_epochs` %d (the warm-up has to end "
                        "before the run does)", o->warmup_epochs, o->n_epochs);
  return 0;
}

/* -- the steps of a pretraining run, in the order the loop takes them -- */

/* the epoch's sample order; mid-epoch after a resume, from the state's position */
static int ioupos__pt_epoch_begin(ioupos__run *r, ioupos_loader *ld) {
  int e = (int)r->c[IOUPOS__C_EPOCH], step = (int)r->c[IOUPOS__C_STEP];
  return step == 0 ? ioupos_loader_epoch(ld, e)
                   : ioupos_loader_seek(ld, e, step * r->o->accum_iters);
}

/* the hyper-parameters of one optimiser step */
typedef struct ioupos__pt_sched {
  double lr, lr_pred;      /* learning rate; SimSiam's predictor's (held, as the research code) */
  double wd;               /* weight decay */
  double teacher_m;        /* DINO: teacher EMA momentum */
  double teacher_temp;     /* DINO: teacher temperature */
} ioupos__pt_sched;

/* The schedules at the run's next step. DINO (its reference code): lr linear warm-up then cosine
   to min_lr, weight decay and teacher momentum cosine over all steps, teacher temperature linear
   over its warm-up epochs. SimSiam (the research code): lr linear warm-up per step, then cosine
   per EPOCH to end_lr; the predictor keeps base_lr. */
static ioupos__pt_sched ioupos__pt_schedules(const ioupos__run *r) {
  const ioupos_pretrain_opts *o = r->o;
  int64_t e = r->c[IOUPOS__C_EPOCH], it = r->c[IOUPOS__C_OPT_STEPS];
  long total = (long)((int64_t)r->spe * o->n_epochs);
  ioupos__pt_sched sc;
  sc.lr_pred = 0.0;
  sc.wd = o->wd;
  sc.teacher_m = 0.0;
  sc.teacher_temp = o->teacher_temp;
  if (o->method == IOUPOS_SSL_DINO) {
    long warm = (long)(o->warmup_epochs * r->spe);
    sc.lr = ioupos_cosine_schedule((long)it, total, warm, o->base_lr, o->min_lr, 0.0);
    sc.wd = ioupos_cosine_schedule((long)it, total, 0, o->wd, o->wd_end, 0.0);
    sc.teacher_m = ioupos_cosine_schedule((long)it, total, 0, o->momentum_teacher, 1.0, 0.0);
    if (e < (int64_t)o->warmup_teacher_temp_epochs && o->warmup_teacher_temp_epochs >= 1.0) {
      long we = (long)o->warmup_teacher_temp_epochs;
      sc.teacher_temp = we > 1 ? o->warmup_teacher_temp + (o->teacher_temp -
                                                           o->warmup_teacher_temp) *
                                                              (double)e / (we - 1)
                               : o->warmup_teacher_temp;
    }
  } else {
    double we = o->warmup_epochs * r->spe;
    if (we > 0.0 && (double)it < we) sc.lr = o->base_lr * ((double)it + 1.0) / we;
    else
      sc.lr = ioupos_cosine_annealing_lr((long)(e - (int64_t)o->warmup_epochs),
                                         (long)(o->n_epochs - (int)o->warmup_epochs), o->base_lr,
                                         o->end_lr);
    sc.lr_pred = o->base_lr;
  }
  return sc;
}

/* Batch, forward, loss, backward: accum_iters micro-batches from the loader into the zeroed
   gradients, each loss scaled by 1 / accum_iters. *loss is their mean, *st the last one's
   monitors. A non-finite loss stops the run (IOUPOS_ERANGE) before any weight changes. */
static int ioupos__pt_batches(ioupos__run *r, ioupos_loader *ld, const ioupos__pt_sched *sc,
                              double *loss, ioupos_ssl_stats *st) {
  const ioupos_pretrain_opts *o = r->o;
  int64_t it = r->c[IOUPOS__C_OPT_STEPS];
  int a, rc = 0, shape[2], lshape[2];
  shape[0] = o->crop[0];
  shape[1] = o->crop[1];
  *loss = 0.0;
  if (o->method == IOUPOS_SSL_DINO) ioupos_dino_zero_grad(&r->dn);
  else ioupos_simsiam_zero_grad(&r->ss);
  for (a = 0; rc == 0 && a < o->accum_iters; ++a) {
    ioupos_batch b;
    ioupos_rng dr = ioupos_rng_split(&r->drop, (uint64_t)(it * o->accum_iters + a));
    if ((rc = ioupos_loader_next(ld, &b)) != 0) break;
    lshape[0] = b.lh;
    lshape[1] = b.lw;
    if (o->method == IOUPOS_SSL_DINO)
      rc = ioupos_dino_accumulate(&r->dn, b.views[0], b.views[1], b.n_local ? b.local : NULL,
                                  b.n_local, b.n, shape, lshape, (float)sc->teacher_temp,
                                  1.0f / o->accum_iters, &dr, st);
    else
      rc = ioupos_simsiam_accumulate(&r->ss, b.views[0], b.views[1], b.n, shape,
                                     1.0f / o->accum_iters, &dr, st);
    if (rc) break;
    if (!isfinite(st->loss))
      return ioupos__fail(IOUPOS_ERANGE,
                          "the loss is %g at epoch %lld step %lld: stopping; the last good "
                          "checkpoint is %s/checkpoint.safetensors (if an epoch finished)",
                          st->loss, (long long)r->c[IOUPOS__C_EPOCH] + 1,
                          (long long)r->c[IOUPOS__C_STEP] + 1, r->io.dir);
    *loss += st->loss / o->accum_iters;
  }
  return rc;
}

/* The optimiser step (SimSiam: SGD with momentum 0.9; DINO: AdamW, clipping, the frozen last
   layer, the teacher's EMA), then the run's bookkeeping: the collapse monitor (an EMA of the
   predictor output's std), the epoch's loss, the counters. */
static int ioupos__pt_step(ioupos__run *r, const ioupos__pt_sched *sc, double loss,
                           const ioupos_ssl_stats *st) {
  const ioupos_pretrain_opts *o = r->o;
  int rc = o->method == IOUPOS_SSL_DINO
               ? ioupos_dino_step(&r->dn, sc->lr, sc->wd, (int)r->c[IOUPOS__C_EPOCH],
                                  o->freeze_last_layer, (float)o->clip_grad, sc->teacher_m)
               : ioupos_simsiam_step(&r->ss, sc->lr, sc->lr_pred, 0.9, sc->wd);
  if (rc) return rc;
  r->avg_std = r->c[IOUPOS__C_OPT_STEPS] == 0 ? st->p_std : 0.9 * r->avg_std + 0.1 * st->p_std;
  r->ep_loss += loss;
  r->ep_n += 1.0;
  r->c[IOUPOS__C_STEP]++;
  r->c[IOUPOS__C_OPT_STEPS]++;
  r->clock.img_log += (double)o->batch_size * o->accum_iters;
  ++r->io.steps_here;
  return 0;
}

/* every log_every steps and at the epoch's end: a metrics.jsonl line and a console line */
static int ioupos__pt_log(ioupos__run *r, const ioupos__pt_sched *sc, double loss,
                          const ioupos_ssl_stats *st) {
  const ioupos_pretrain_opts *o = r->o;
  int64_t total = (int64_t)r->spe * o->n_epochs;
  int dim = o->method == IOUPOS_SSL_DINO ? o->out_dim : o->proj_out, rc;
  double ips, left, collapse = ioupos_collapse_level(r->avg_std, dim);
  char line[1024];
  if (r->c[IOUPOS__C_OPT_STEPS] % o->log_every != 0 && r->c[IOUPOS__C_STEP] != r->spe) return 0;
  ips = ioupos__clock_rate(&r->clock);
  left = (double)(total - r->c[IOUPOS__C_OPT_STEPS]) * o->batch_size * o->accum_iters;
  snprintf(line, sizeof line,
           "{\"epoch\": %lld, \"step\": %lld, \"loss\": %.6g, \"lr\": %.6g, \"wd\": %.6g, "
           "\"p_std\": %.6g, \"z_std\": %.6g, \"collapse\": %.6g, \"images_per_s\": %.4g}\n",
           (long long)r->c[IOUPOS__C_EPOCH] + 1, (long long)r->c[IOUPOS__C_OPT_STEPS], loss, sc->lr,
           sc->wd, st->p_std, st->z_std, collapse, ips);
  if ((rc = ioupos__metrics_put(&r->io, line)) != 0) return rc;
  ioupos__say(&r->io, "epoch %lld step %lld/%d loss %.5f lr %.3g collapse %.3f z_std %.4f %.1f "
              "img/s ETA %.0f s", (long long)r->c[IOUPOS__C_EPOCH] + 1,
              (long long)r->c[IOUPOS__C_STEP], r->spe, loss, sc->lr, collapse, st->z_std, ips,
              ips > 0 ? left / ips : 0.0);
  return 0;
}

/* The epoch is done: the checkpoints (checkpoint_epoch<E> and the latest), its metrics and
   console lines. *stop when the caller asked to stop (the state is saved next). */
static int ioupos__pt_epoch_end(ioupos__run *r, int *stop) {
  const ioupos_pretrain_opts *o = r->o;
  long long e = (long long)++r->c[IOUPOS__C_EPOCH]; /* epochs done, the one just finished */
  double mean = r->ep_n > 0 ? r->ep_loss / r->ep_n : 0.0;
  char path[4200], line[512];
  int rc;
  r->c[IOUPOS__C_STEP] = 0;
  snprintf(path, sizeof path, "%s/checkpoint_epoch%lld.safetensors", r->io.dir, e);
  if ((rc = ioupos__save_checkpoint(r, path)) != 0) return rc;
  snprintf(path, sizeof path, "%s/checkpoint.safetensors", r->io.dir);
  if ((rc = ioupos__save_checkpoint(r, path)) != 0) return rc;
  snprintf(line, sizeof line, "{\"epoch\": %lld, \"step\": %lld, \"epoch_loss\": %.6g, "
           "\"collapse\": %.6g, \"seconds\": %.3f}\n", e, (long long)r->c[IOUPOS__C_OPT_STEPS],
           mean, ioupos_collapse_level(r->avg_std, o->method == IOUPOS_SSL_DINO ? o->out_dim
                                                                               : o->proj_out),
           ioupos__now() - r->clock.t_start);
  if ((rc = ioupos__metrics_put(&r->io, line)) != 0) return rc;
  ioupos__say(&r->io, "epoch %lld done: mean loss %.5f, checkpoint %s/checkpoint.safetensors", e,
              mean, r->io.dir);
  r->ep_loss = r->ep_n = 0.0;
  if (ioupos__halted(&r->io)) *stop = 1;
  return 0;
}

IOUPOS_DEF int ioupos_pretrain_run(const ioupos_pretrain_opts *o) {
  ioupos__run *r = NULL;
  ioupos_dataset ds;
  ioupos_loader ld;
  ioupos_loader_config lc;
  char path[4200], tmp[4200];
  int rc, spe, dino = o->method == IOUPOS_SSL_DINO, stop = 0;
  const ioupos_backend *be = o->backend ? o->backend : ioupos_backend_cpu();
  memset(&ds, 0, sizeof ds);
  memset(&ld, 0, sizeof ld);
  if ((rc = ioupos__run_check(o)) != 0) return rc;
  r = (ioupos__run *)ioupos__calloc(1, sizeof *r);
  if (!r) return ioupos__fail(IOUPOS_ENOMEM, "out of memory");
  r->o = o;
  ioupos__runio_init(&r->io, o->log, o->log_ctx, o->stop, o->max_steps, o->flags_json,
                     o->git_commit, o->chkpt_dir, o->run_name ? o->run_name : "run");
  /* data first: a bad folder fails before anything is written */
  if ((rc = ioupos_dataset_scan(o->data_dir, NULL, &ds)) != 0) goto done;
  ioupos_loader_config_default(&lc, &ds, IOUPOS_LOADER_SSL);
  lc.batch_size = o->batch_size;
  lc.crop[0] = o->crop[0];
  lc.crop[1] = o->crop[1];
  lc.min_iou = o->min_iou;
  lc.max_iou = o->max_iou;
  lc.pair_mode = o->pair_mode;
  lc.seed = o->seed;
  lc.num_workers = o->num_workers;
  lc.drop_last = 1;
  lc.augment = ioupos_augment_pretrain_view;
  if (dino && o->n_local > 0) { /* DINO multi-crop: local views for the student */
    lc.n_local = o->n_local;
    lc.local_crop[0] = o->local_crop[0];
    lc.local_crop[1] = o->local_crop[1];
    lc.local_min_iou = o->local_min_iou;
    lc.local_max_iou = o->local_max_iou;
  }
  { /* every file, its size against the crops and intervals: all bad files named at once */
    const ioupos_dataset *sets[1];
    sets[0] = &ds;
    if ((rc = ioupos__data_preflight(sets, 1, &lc, 0, o->num_workers, o->log, o->log_ctx)) != 0)
      goto done;
  }
  if (ds.n < o->batch_size) {
    rc = ioupos__fail(IOUPOS_EINVAL, "%s has %d images, fewer than one batch (`batch_size` %d)",
                      o->data_dir, ds.n, o->batch_size);
    goto done;
  }
  if ((rc = ioupos_loader_open(&ld, &lc)) != 0) goto done;
  spe = ld.batches_per_epoch / o->accum_iters;
  if (spe < 1) {
    rc = ioupos__fail(IOUPOS_EINVAL,
                      "%s gives %d batches per epoch, fewer than `accum_iters` %d: no optimiser "
                      "step could be taken", o->data_dir, ld.batches_per_epoch, o->accum_iters);
    goto done;
  }
  /* the model */
  if (dino) {
    ioupos_dino_config dc;
    ioupos_dino_config_default(&dc, 2);
    dc.enc = o->enc;
    dc.hidden = o->hidden;
    dc.bottleneck = o->bottleneck;
    dc.out_dim = o->out_dim;
    dc.norm_last_layer = o->norm_last_layer;
    dc.student_temp = (float)o->student_temp;
    dc.center_momentum = (float)o->center_momentum;
    rc = ioupos_dino_init(&r->dn, &dc, be, o->seed);
  } else {
    ioupos_simsiam_config sc;
    sc.enc = o->enc;
    sc.proj_hidden = o->proj_hidden;
    sc.proj_out = o->proj_out;
    sc.pred_hidden = o->pred_hidden;
    rc = ioupos_simsiam_init(&r->ss, &sc, be, o->seed);
  }
  if (rc) goto done;
  r->c[IOUPOS__C_METHOD] = o->method;
  r->c[IOUPOS__C_SEED] = (int64_t)o->seed;
  r->c[IOUPOS__C_BATCH] = o->batch_size;
  r->c[IOUPOS__C_ACCUM] = o->accum_iters;
  r->c[IOUPOS__C_EPOCHS] = o->n_epochs;
  r->c[IOUPOS__C_CROP0] = o->crop[0];
  r->c[IOUPOS__C_CROP1] = o->crop[1];
  r->c[IOUPOS__C_NLOCAL] = dino ? o->n_local : 0;
  r->c[IOUPOS__C_SPE] = spe;
  /* the run directory */
  snprintf(path, sizeof path, "%s/state.safetensors", r->io.dir);
  if ((rc = ioupos__run_dir_hold(&r->io)) != 0) goto done;
  if (o->resume) {
    if ((rc = ioupos__load_state(r, path)) != 0) {
      if (rc == IOUPOS_EIO)
        rc = ioupos__fail(IOUPOS_EIO, "`resume`: no training state at %s (%s)", path,
                          ioupos_failure_reason());
      goto done;
    }
    snprintf(tmp, sizeof tmp, "%s/metrics.jsonl", r->io.dir);
    if ((rc = ioupos__metrics_truncate(tmp, (long long)r->c[IOUPOS__C_OPT_STEPS])) != 0) goto done;
    ioupos__say(&r->io, "resuming %s at epoch %lld step %lld/%d (%lld optimiser steps done)",
                    r->io.dir, (long long)r->c[IOUPOS__C_EPOCH] + 1, (long long)r->c[IOUPOS__C_STEP],
                    spe,
                    (long long)r->c[IOUPOS__C_OPT_STEPS]);
  } else if ((rc = ioupos__run_dir_free(r->io.dir)) != 0 ||
             (rc = ioupos__run_dir_create(r->io.dir, o->flags_json, o->seed, o->git_commit,
                                          spe)) != 0) {
    goto done;
  }
  ioupos_rng_seed_stream(&r->drop, o->seed, 0x64726f70u); /* drop-path draws: "drop" */
  r->spe = spe;
  ioupos__say(&r->io, "%s: %d images, %d steps per epoch of %d x %d pairs, %d epochs -> %s; "
              "device %s", dino ? "dino" : "simsiam", ds.n, spe, o->accum_iters, o->batch_size,
              o->n_epochs, r->io.dir, be->name);
  ioupos__clock_start(&r->clock);
  /* the method, one optimiser step at a time */
  while (rc == 0 && !stop && r->c[IOUPOS__C_EPOCH] < o->n_epochs) {
    rc = ioupos__pt_epoch_begin(r, &ld);                      /* the epoch's sample order */
    while (rc == 0 && r->c[IOUPOS__C_STEP] < spe) {
      ioupos__pt_sched sc;
      ioupos_ssl_stats st;
      double loss;
      if (o->stop && *o->stop) { stop = 1; break; }           /* a signal before this step */
      sc = ioupos__pt_schedules(r);                           /* lr, wd, teacher */
      rc = ioupos__pt_batches(r, &ld, &sc, &loss, &st);       /* batch, forward, loss, backward */
      if (rc == 0) rc = ioupos__pt_step(r, &sc, loss, &st);   /* optimiser step */
      if (rc == 0) rc = ioupos__pt_log(r, &sc, loss, &st);    /* log */
      if (rc == 0 && ioupos__halted(&r->io) && r->c[IOUPOS__C_STEP] < spe) stop = 1;
      if (stop) break;
    }
    if (rc == 0 && !stop) rc = ioupos__pt_epoch_end(r, &stop); /* checkpoint */
    if (rc == 0) rc = ioupos__save_state(r, path);           /* state */
  }
  if (rc == 0 && stop && r->c[IOUPOS__C_EPOCH] < o->n_epochs)
    ioupos__say(&r->io, "%s after %ld optimiser steps in this process, at epoch %lld step %lld/%d; "
                "the state is saved: `resume` continues from %s", ioupos__halt_reason(&r->io),
                r->io.steps_here, (long long)r->c[IOUPOS__C_EPOCH] + 1,
                (long long)r->c[IOUPOS__C_STEP], spe, path);
done:
  if (r) ioupos__run_dir_release(&r->io, rc);
  ioupos_loader_close(&ld);
  ioupos_dataset_free(&ds);
  if (r) {
    if (dino) ioupos_dino_free(&r->dn);
    else ioupos_simsiam_free(&r->ss);
    IOUPOS_FREE(r);
  }
  return rc;
}

/* ---- 19. Decoder layers (SwinUNETR): convolutions, instance norm, residual and up blocks ---- */

#ifdef __cplusplus
extern "C" {
#endif

/* Positions per im2col block (conv) and per GEMM block (conv transpose). A fixed constant: the
   blocking decides the order of the float sums of the weight gradient, so it must not depend on
   anything but the shapes (see section 10, THREADS AND DETERMINISM). */
#define IOUPOS__CONV_BLOCK 4096

/* Each layer of this section is first a plain reference: the convolutions' are the static
   ioupos__conv_forward_ref / _backward_ref and ioupos__conv_transpose_forward_ref / _backward_ref
   (direct loops, double sums) beside the public im2col + GEMM versions, which run in every build
   (tests/test_decoder.c compares them within the GEMM's error bound). Instance norm, leaky ReLU
   and the concatenation are their own references (loops over independent planes or channels on
   the threads change no result); the blocks are compositions of these layers. */

/* Spatial geometry on 3 internal axes: 2D is a leading axis of size 1 (kernel depth 1). */
typedef struct ioupos__cgeom {
  int S[3];  /* spatial sizes, slowest first */
  int kk[3]; /* kernel extents (k, or 1 on the dummy axis) */
  size_t n;  /* positions per plane */
  size_t kv; /* kernel volume */
} ioupos__cgeom;

/* 1 when dims / shape / k are valid (k odd >= 1; k = 2 for the transpose), filling g. */
static int ioupos__cgeom_init(ioupos__cgeom *g, int dims, const int shape[], int k) {
  int d;
  if ((dims != 2 && dims != 3) || !shape || k < 1) return 0;
  g->S[0] = 1, g->kk[0] = 1;
  for (d = 0; d < dims; ++d) {
    if (shape[d] < 1) return 0;
    g->S[3 - dims + d] = shape[d];
    g->kk[3 - dims + d] = k;
  }
  g->n = (size_t)g->S[0] * g->S[1] * g->S[2];
  g->kv = (size_t)g->kk[0] * g->kk[1] * g->kk[2];
  return 1;
}

/* The shared argument check of the public convolutions and the blocks built on them. ERANGE
   guards the casts to int: section 10's GEMM takes int sizes, and a plane's positions (n) and a
   column's length (Cin or Cout times the kernel volume) become its N and K. */
static int ioupos__conv_args(const char *fn, ioupos__cgeom *g, int dims, int B, int Cin,
                             const int shape[], int k, int Cout, int odd) {
  if (!ioupos__cgeom_init(g, dims, shape, k) || B < 1 || Cin < 1 || Cout < 1 ||
      (odd && k % 2 == 0))
    return ioupos__fail(IOUPOS_EINVAL, "%s: dims %d (must be 2 or 3), B %d, Cin %d, Cout %d "
                        "(must be >= 1), kernel %d%s, or a missing / non-positive shape", fn,
                        dims, B, Cin, Cout, k, odd ? " (must be odd)" : "");
  if (g->n > (size_t)INT_MAX || (double)Cin * (double)g->kv > (double)INT_MAX ||
      (double)Cout * (double)g->kv > (double)INT_MAX)
    return ioupos__fail(IOUPOS_ERANGE, "%s: %lu positions x %d channels too large for the GEMM's "
                        "int sizes", fn, (unsigned long)g->n, Cin > Cout ? Cin : Cout);
  return IOUPOS_OK;
}

/* -- layout transposes -- */
/* dst[b][c][r] (=|+=) src[b][r][c], src [B][R][Cc]; blocks of 32 x 32 for the caches.
   One task per (sample, row block, column block) tile; tiles write disjoint parts of dst, so the
   threads change no result. acc makes the same routine the backward of either direction: the
   gradient of a transpose is the inverse transpose, accumulated. */
static void ioupos__transpose(float *dst, const float *src, int B, size_t R, size_t Cc, int acc) {
  long long nrb = (long long)((R + 31) / 32), ncb = (long long)((Cc + 31) / 32), t;
  long long nt = (long long)B * nrb * ncb;
  IOUPOS__PFOR((double)B * R * Cc)
  for (t = 0; t < nt; ++t) {
    long long b = t / (nrb * ncb), rem = t % (nrb * ncb);
    size_t r0 = (size_t)(rem / ncb) * 32, c0 = (size_t)(rem % ncb) * 32, r, c;
    size_t r1 = r0 + 32 < R ? r0 + 32 : R, c1 = c0 + 32 < Cc ? c0 + 32 : Cc;
    const float *s = src + (size_t)b * R * Cc;
    float *d = dst + (size_t)b * R * Cc;
    for (c = c0; c < c1; ++c)
      for (r = r0; r < r1; ++r) {
        if (acc) d[c * R + r] += s[r * Cc + c];
        else d[c * R + r] = s[r * Cc + c];
      }
  }
}

/* The Swin encoder works channels-last, where LayerNorm over C and the linear layers are GEMMs
   on contiguous token rows; MONAI's CNN decoder works channels-first, where a convolution's
   im2col and instance norm run over contiguous planes. Each layout is the fast one for its half,
   so SwinUNETR converts exactly where MONAI does (its hidden states leave the encoder
   channels-first), once per hidden state per pass, instead of either half running on the other's
   layout. Only the channels-first direction and its backward are in the backend table: the
   models need no other. */
IOUPOS_DEF void ioupos_to_channels_first(float *out, const float *inp, int B, size_t S, int C) {
  ioupos__transpose(out, inp, B, S, (size_t)C, 0);
}
IOUPOS_DEF void ioupos_to_channels_first_backward(float *dinp, const float *dout, int B, size_t S,
                                                  int C) {
  ioupos__transpose(dinp, dout, B, (size_t)C, S, 1);
}
IOUPOS_DEF void ioupos_to_channels_last(float *out, const float *inp, int B, size_t S, int C) {
  ioupos__transpose(out, inp, B, (size_t)C, S, 0);
}
IOUPOS_DEF void ioupos_to_channels_last_backward(float *dinp, const float *dout, int B, size_t S,
                                                 int C) {
  ioupos__transpose(dinp, dout, B, S, (size_t)C, 1);
}

/* -- convolution -- */
/* The input position under tap t (raster order over the kernel, slowest axis first) of the
   "same" kernel centred on plane position p: 1 and its plane index in *q when inside. */
static int ioupos__conv_tap(const ioupos__cgeom *g, size_t p, int t, size_t *q) {
  const size_t HW = (size_t)g->S[1] * g->S[2];
  int z = (int)(p / HW) + t / (g->kk[1] * g->kk[2]) - g->kk[0] / 2;
  int y = (int)(p % HW / (size_t)g->S[2]) + t / g->kk[2] % g->kk[1] - g->kk[1] / 2;
  int x = (int)(p % (size_t)g->S[2]) + t % g->kk[2] - g->kk[2] / 2;
  if (z < 0 || z >= g->S[0] || y < 0 || y >= g->S[1] || x < 0 || x >= g->S[2]) return 0;
  *q = ((size_t)z * g->S[1] + y) * g->S[2] + x;
  return 1;
}

/* out[B][Cout][n] = bias[co] + sum over ci and the kv = k^dims taps t of weight[co][ci][t] *
   inp[b][ci][position under t] (zero outside: "same" padding, stride 1), n positions per plane;
   in double, rounded once. Valid arguments (ioupos_conv_forward checks them). */
IOUPOS__REF void ioupos__conv_forward_ref(float *out, const float *inp, const float *weight,
                                          const float *bias, int dims, int B, int Cin,
                                          const int shape[], int k, int Cout) {
  ioupos__cgeom g;
  size_t p, q;
  int b, co, ci, t;
  ioupos__cgeom_init(&g, dims, shape, k);
  for (b = 0; b < B; ++b)
    for (co = 0; co < Cout; ++co)
      for (p = 0; p < g.n; ++p) {
        double s = bias ? bias[co] : 0.0;
        for (ci = 0; ci < Cin; ++ci)
          for (t = 0; t < (int)g.kv; ++t)
            if (ioupos__conv_tap(&g, p, t, &q))
              s += (double)weight[((size_t)co * Cin + ci) * g.kv + t] *
                   inp[((size_t)b * Cin + ci) * g.n + q];
        out[((size_t)b * Cout + co) * g.n + p] = (float)s;
      }
}

/* Gradients of ioupos__conv_forward_ref, each sum in double: dinp[b][ci][q] += sum over co and
   the taps t that read q (from p) of weight[co][ci][t] dout[b][co][p]; dweight[co][ci][t] +=
   sum over b and p of dout[b][co][p] inp[b][ci][under t]; dbias[co] += sum of dout[.][co][.].
   ACCUMULATES (each may be NULL). */
IOUPOS__REF void ioupos__conv_backward_ref(float *dinp, float *dweight, float *dbias,
                                           const float *dout, const float *inp,
                                           const float *weight, int dims, int B, int Cin,
                                           const int shape[], int k, int Cout) {
  ioupos__cgeom g;
  size_t p, q;
  int b, co, ci, t;
  ioupos__cgeom_init(&g, dims, shape, k);
  for (b = 0; dinp && b < B; ++b)
    for (ci = 0; ci < Cin; ++ci)
      for (q = 0; q < g.n; ++q) {
        double s = 0.0;
        for (co = 0; co < Cout; ++co)
          for (t = 0; t < (int)g.kv; ++t) /* tap t reads q from p = q - its offset: the position
                                              under the mirrored tap kv - 1 - t (k odd) */
            if (ioupos__conv_tap(&g, q, (int)g.kv - 1 - t, &p))
              s += (double)weight[((size_t)co * Cin + ci) * g.kv + t] *
                   dout[((size_t)b * Cout + co) * g.n + p];
        dinp[((size_t)b * Cin + ci) * g.n + q] += (float)s;
      }
  for (co = 0; co < Cout; ++co) {
    double sb = 0.0;
    for (ci = 0; dweight && ci < Cin; ++ci)
      for (t = 0; t < (int)g.kv; ++t) {
        double s = 0.0;
        for (b = 0; b < B; ++b)
          for (p = 0; p < g.n; ++p)
            if (ioupos__conv_tap(&g, p, t, &q))
              s += (double)dout[((size_t)b * Cout + co) * g.n + p] *
                   inp[((size_t)b * Cin + ci) * g.n + q];
        dweight[((size_t)co * Cin + ci) * g.kv + t] += (float)s;
      }
    for (b = 0; dbias && b < B; ++b)
      for (p = 0; p < g.n; ++p) sb += dout[((size_t)b * Cout + co) * g.n + p];
    if (dbias) dbias[co] += (float)sb;
  }
}

/* The public convolution: im2col + GEMM, the columns of blocks of IOUPOS__CONV_BLOCK positions
   (its fast path, in every build: the GEMM of section 10). */

/* Rows of the column block: row r = (ci, a, e, f) in torch's weight order, column j = position
   p0 + j of the sample (p0 <= p < p1). dir 0: col[r][j] = img[ci][pos + tap offset] (0 outside);
   dir 1: img[ci][pos + offset] += col[r][j] (rows of one ci on one thread, in row order). */
static void ioupos__conv_cols(float *col, float *img_acc, const float *img,
                              const ioupos__cgeom *g, int Cin, size_t p0, size_t p1, int dir) {
  const int S0 = g->S[0], S1 = g->S[1], S2 = g->S[2];
  const size_t plane = g->n, len = p1 - p0, HW = (size_t)S1 * S2;
  const int kv = (int)g->kv, nrows = dir == 0 ? Cin * kv : Cin;
  int t;
  IOUPOS__PFOR((double)Cin * kv * len)
  for (t = 0; t < nrows; ++t) {
    int r0 = dir == 0 ? t : t * kv, r1 = dir == 0 ? t + 1 : (t + 1) * kv, r;
    for (r = r0; r < r1; ++r) {
      int ci = r / kv, tap = r % kv;
      int a = tap / (g->kk[1] * g->kk[2]), e = (tap / g->kk[2]) % g->kk[1], f = tap % g->kk[2];
      int dz = a - g->kk[0] / 2, dy = e - g->kk[1] / 2, dx = f - g->kk[2] / 2;
      float *cr = col + (size_t)r * len;
      size_t p = p0;
      while (p < p1) {
        size_t rem = p % HW;
        int z = (int)(p / HW), y = (int)(rem / S2), x = (int)(rem % S2);
        int xe = (size_t)(S2 - x) < p1 - p ? S2 : x + (int)(p1 - p); /* end of this row run */
        int zz = z + dz, yy = y + dy, xlo = x, xhi = xe, xi;
        float *cj = cr + (p - p0);
        if (xlo < -dx) xlo = -dx;
        if (xhi > S2 - dx) xhi = S2 - dx;
        if (zz < 0 || zz >= S0 || yy < 0 || yy >= S1 || xlo >= xhi) {
          if (dir == 0) memset(cj, 0, sizeof(float) * (size_t)(xe - x));
        } else { /* input row (zz, yy), columns xlo + dx .. xhi + dx - 1 */
          size_t src = (size_t)ci * plane + ((size_t)zz * S1 + yy) * S2 + (size_t)(xlo + dx);
          if (dir == 0) {
            for (xi = x; xi < xlo; ++xi) cj[xi - x] = 0.0f;
            memcpy(cj + (xlo - x), img + src, sizeof(float) * (size_t)(xhi - xlo));
            for (xi = xhi; xi < xe; ++xi) cj[xi - x] = 0.0f;
          } else {
            float *dst = img_acc + src;
            for (xi = xlo; xi < xhi; ++xi) dst[xi - xlo] += cj[xi - x];
          }
        }
        p += (size_t)(xe - x);
      }
    }
  }
}

/* A column block holds at most IOUPOS__CONV_BLOCK positions, so scratch does not grow with the
   image. k == 1 needs no columns: a 1x1 conv's input plane [Cin][n] already is the GEMM operand. */
IOUPOS_DEF size_t ioupos_conv_scratch_size(int dims, int Cin, const int shape[], int k) {
  ioupos__cgeom g;
  if (!ioupos__cgeom_init(&g, dims, shape, k) || Cin < 1 || k % 2 == 0) return 0;
  if (k == 1) return 0;
  return (size_t)Cin * g.kv * (g.n < IOUPOS__CONV_BLOCK ? g.n : IOUPOS__CONV_BLOCK);
}

/* Per sample, since channels-first samples are separate [Cin][n] matrices:
     out = W [Cout][Cin kv] . col [Cin kv][len]
   for each block of len positions, written straight into the output's columns p0.. (row stride
   n). The bias is broadcast into out first and the GEMM adds onto it (beta 1); without a bias
   beta is 0, so out need not be initialised. OVERWRITES out. */
IOUPOS_DEF int ioupos_conv_forward(float *out, float *scratch, const float *inp,
                                   const float *weight, const float *bias, int dims, int B,
                                   int Cin, const int shape[], int k, int Cout) {
  ioupos__cgeom g;
  int st = ioupos__conv_args("ioupos_conv_forward", &g, dims, B, Cin, shape, k, Cout, 1), b, co;
  int K, n;
  if (st) return st;
  if (!out || !inp || !weight || (k > 1 && !scratch))
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_conv_forward: NULL out, inp, weight or scratch");
  n = (int)g.n, K = Cin * (int)g.kv;
  for (b = 0; b < B; ++b) {
    const float *ib = inp + (size_t)b * Cin * g.n;
    float *ob = out + (size_t)b * Cout * g.n;
    size_t p0;
    if (bias)
      for (co = 0; co < Cout; ++co) {
        size_t i;
        for (i = 0; i < g.n; ++i) ob[(size_t)co * g.n + i] = bias[co];
      }
    if (k == 1) {
      st = ioupos_gemm(0, 0, Cout, n, Cin, 1.0f, weight, Cin, ib, n, bias ? 1.0f : 0.0f, ob, n);
      if (st) return st;
      continue;
    }
    for (p0 = 0; p0 < g.n; p0 += IOUPOS__CONV_BLOCK) {
      size_t p1 = p0 + IOUPOS__CONV_BLOCK < g.n ? p0 + IOUPOS__CONV_BLOCK : g.n;
      int len = (int)(p1 - p0);
      ioupos__conv_cols(scratch, NULL, ib, &g, Cin, p0, p1, 0);
      st = ioupos_gemm(0, 0, Cout, len, K, 1.0f, weight, K, scratch, len, bias ? 1.0f : 0.0f,
                       ob + p0, n);
      if (st) return st;
    }
  }
  return IOUPOS_OK;
}

/* dbias[c] += sum over b and positions of dout[b][c][.] (double, fixed order, one c per thread) */
static void ioupos__chan_sum(float *dbias, const float *dout, int B, int C, size_t n) {
  int c;
  IOUPOS__PFOR((double)B * C * n)
  for (c = 0; c < C; ++c) {
    double s = 0.0;
    int b;
    size_t i;
    for (b = 0; b < B; ++b) {
      const float *d = dout + ((size_t)b * C + c) * n;
      for (i = 0; i < n; ++i) s += d[i];
    }
    dbias[c] += (float)s;
  }
}

/* The forward saved nothing, so the columns are rebuilt from inp for dweight, which accumulates
   sample by sample and block by block (beta 1) in an order fixed by the shapes: its float sums
   do not depend on the thread count. dinp's block is computed into the column scratch
   (W^T . dout, beta 0) and scattered back with += by col2im, the adjoint of the im2col gather;
   for k == 1 both products use the planes directly. All three gradients ACCUMULATE. */
IOUPOS_DEF int ioupos_conv_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                                    const float *dout, const float *inp, const float *weight,
                                    int dims, int B, int Cin, const int shape[], int k, int Cout) {
  ioupos__cgeom g;
  int st = ioupos__conv_args("ioupos_conv_backward", &g, dims, B, Cin, shape, k, Cout, 1), b;
  int K, n;
  if (st) return st;
  if (!dout || (dweight && !inp) || (dinp && !weight) ||
      (k > 1 && (dinp || dweight) && !scratch))
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_conv_backward: NULL dout, or NULL inp / weight / "
                        "scratch needed for the gradients asked for");
  n = (int)g.n, K = Cin * (int)g.kv;
  if (dbias) ioupos__chan_sum(dbias, dout, B, Cout, g.n);
  for (b = 0; b < B; ++b) {
    const float *db = dout + (size_t)b * Cout * g.n;
    const float *ib = inp ? inp + (size_t)b * Cin * g.n : NULL;
    float *dib = dinp ? dinp + (size_t)b * Cin * g.n : NULL;
    size_t p0;
    if (k == 1) {
      if (dweight) {
        st = ioupos_gemm(0, 1, Cout, Cin, n, 1.0f, db, n, ib, n, 1.0f, dweight, Cin);
        if (st) return st;
      }
      if (dib) {
        st = ioupos_gemm(1, 0, Cin, n, Cout, 1.0f, weight, Cin, db, n, 1.0f, dib, n);
        if (st) return st;
      }
      continue;
    }
    for (p0 = 0; p0 < g.n; p0 += IOUPOS__CONV_BLOCK) {
      size_t p1 = p0 + IOUPOS__CONV_BLOCK < g.n ? p0 + IOUPOS__CONV_BLOCK : g.n;
      int len = (int)(p1 - p0);
      if (dweight) {
        ioupos__conv_cols(scratch, NULL, ib, &g, Cin, p0, p1, 0);
        st = ioupos_gemm(0, 1, Cout, K, len, 1.0f, db + p0, n, scratch, len, 1.0f, dweight, K);
        if (st) return st;
      }
      if (dib) {
        st = ioupos_gemm(1, 0, K, len, Cout, 1.0f, weight, K, db + p0, n, 0.0f, scratch, len);
        if (st) return st;
        ioupos__conv_cols(scratch, dib, NULL, &g, Cin, p0, p1, 1);
      }
    }
  }
  return IOUPOS_OK;
}

/* -- transposed convolution, kernel 2 stride 2 -- */
/* Output plane index of input position p under tap t of the 2^dims kernel of stride 2. */
static size_t ioupos__tconv_out(const ioupos__cgeom *g, size_t p, int t) {
  const size_t HW = (size_t)g->S[1] * g->S[2];
  size_t z = p / HW * g->kk[0] + t / (g->kk[1] * g->kk[2]);
  size_t y = p % HW / (size_t)g->S[2] * 2 + t / g->kk[2] % g->kk[1];
  size_t x = p % (size_t)g->S[2] * 2 + t % g->kk[2];
  return (z * ((size_t)g->S[1] * 2) + y) * ((size_t)g->S[2] * 2) + x;
}

/* out[b][co][under tap t of p] = bias[co] + sum_ci inp[b][ci][p] weight[ci][co][t] for every
   input position p and tap t (each output has exactly one); in double, rounded once. */
IOUPOS__REF void ioupos__conv_transpose_forward_ref(float *out, const float *inp,
                                                    const float *weight, const float *bias,
                                                    int dims, int B, int Cin, const int shape[],
                                                    int Cout) {
  ioupos__cgeom g;
  size_t p;
  int b, co, ci, t;
  ioupos__cgeom_init(&g, dims, shape, 2);
  for (b = 0; b < B; ++b)
    for (co = 0; co < Cout; ++co)
      for (p = 0; p < g.n; ++p)
        for (t = 0; t < (int)g.kv; ++t) {
          double s = bias ? bias[co] : 0.0;
          for (ci = 0; ci < Cin; ++ci)
            s += (double)inp[((size_t)b * Cin + ci) * g.n + p] *
                 weight[((size_t)ci * Cout + co) * g.kv + t];
          out[((size_t)b * Cout + co) * g.n * g.kv + ioupos__tconv_out(&g, p, t)] = (float)s;
        }
}

/* Its gradients, each sum in double: dinp[b][ci][p] += sum over co, t of weight[ci][co][t]
   dout[b][co][under t of p]; dweight[ci][co][t] += sum over b, p of inp[b][ci][p]
   dout[b][co][under t of p]; dbias[co] += sum of dout[.][co][.]. ACCUMULATES (each may be
   NULL). shape is the input's. */
IOUPOS__REF void ioupos__conv_transpose_backward_ref(float *dinp, float *dweight, float *dbias,
                                                     const float *dout, const float *inp,
                                                     const float *weight, int dims, int B,
                                                     int Cin, const int shape[], int Cout) {
  ioupos__cgeom g;
  size_t p, no;
  int b, co, ci, t;
  ioupos__cgeom_init(&g, dims, shape, 2);
  no = g.n * g.kv; /* outputs per plane */
  for (b = 0; dinp && b < B; ++b)
    for (ci = 0; ci < Cin; ++ci)
      for (p = 0; p < g.n; ++p) {
        double s = 0.0;
        for (co = 0; co < Cout; ++co)
          for (t = 0; t < (int)g.kv; ++t)
            s += (double)weight[((size_t)ci * Cout + co) * g.kv + t] *
                 dout[((size_t)b * Cout + co) * no + ioupos__tconv_out(&g, p, t)];
        dinp[((size_t)b * Cin + ci) * g.n + p] += (float)s;
      }
  for (ci = 0; dweight && ci < Cin; ++ci)
    for (co = 0; co < Cout; ++co)
      for (t = 0; t < (int)g.kv; ++t) {
        double s = 0.0;
        for (b = 0; b < B; ++b)
          for (p = 0; p < g.n; ++p)
            s += (double)inp[((size_t)b * Cin + ci) * g.n + p] *
                 dout[((size_t)b * Cout + co) * no + ioupos__tconv_out(&g, p, t)];
        dweight[((size_t)ci * Cout + co) * g.kv + t] += (float)s;
      }
  for (co = 0; dbias && co < Cout; ++co) {
    double s = 0.0;
    for (b = 0; b < B; ++b)
      for (p = 0; p < no; ++p) s += dout[((size_t)b * Cout + co) * no + p];
    dbias[co] += (float)s;
  }
}

/* The public transposed convolution: a GEMM per block of IOUPOS__CONV_BLOCK input positions,
   then a scatter (its fast path, in every build). */

/* Between tmp[(co, a, e, f)][j] (input position p0 + j) and an image [co][output position].
   dir 0: img_out = tmp (+ bias); dir 1: tmp = img_in (gather of the gradient). One co per
   thread. */
static void ioupos__tconv_scatter(float *tmp, float *img_out, const float *img_in,
                                  const float *bias, const ioupos__cgeom *g, int Cout, size_t p0,
                                  size_t p1, int dir) {
  const int S1 = g->S[1], S2 = g->S[2], kv = (int)g->kv;
  const int O1 = S1 * g->kk[1], O2 = S2 * g->kk[2];
  const size_t HW = (size_t)S1 * S2, len = p1 - p0, oplane = g->n * g->kv;
  int co;
  IOUPOS__PFOR((double)Cout * kv * len)
  for (co = 0; co < Cout; ++co) {
    int tap;
    float bv = bias ? bias[co] : 0.0f;
    for (tap = 0; tap < kv; ++tap) {
      int a = tap / (g->kk[1] * g->kk[2]), e = (tap / g->kk[2]) % g->kk[1], f = tap % g->kk[2];
      float *tr = tmp + ((size_t)co * kv + tap) * len;
      size_t p;
      for (p = p0; p < p1; ++p) {
        size_t rem = p % HW;
        int z = (int)(p / HW), y = (int)(rem / S2), x = (int)(rem % S2);
        size_t o = (size_t)co * oplane +
                   ((size_t)(z * g->kk[0] + a) * O1 + (size_t)(y * g->kk[1] + e)) * O2 +
                   (size_t)(x * g->kk[2] + f);
        if (dir == 0) img_out[o] = tr[p - p0] + bv;
        else tr[p - p0] = img_in[o];
      }
    }
  }
}

IOUPOS_DEF size_t ioupos_conv_transpose_scratch_size(int dims, const int shape[], int Cout) {
  ioupos__cgeom g;
  if (!ioupos__cgeom_init(&g, dims, shape, 2) || Cout < 1) return 0;
  return (size_t)Cout * g.kv * (g.n < IOUPOS__CONV_BLOCK ? g.n : IOUPOS__CONV_BLOCK);
}

/* With kernel = stride = 2 the taps of different input positions never overlap: one GEMM per
   block, weight^T [Cout 2^dims][Cin] . inp [Cin][len], then a scatter that only writes (no
   overlap-add, so out need not be zeroed), adding the bias on the way. OVERWRITES out. */
IOUPOS_DEF int ioupos_conv_transpose_forward(float *out, float *scratch, const float *inp,
                                             const float *weight, const float *bias, int dims,
                                             int B, int Cin, const int shape[], int Cout) {
  ioupos__cgeom g;
  int st = ioupos__conv_args("ioupos_conv_transpose_forward", &g, dims, B, Cin, shape, 2, Cout, 0);
  int b, n, M;
  if (st) return st;
  if (!out || !scratch || !inp || !weight)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_conv_transpose_forward: NULL out, scratch, inp or "
                        "weight");
  n = (int)g.n, M = Cout * (int)g.kv;
  for (b = 0; b < B; ++b) {
    const float *ib = inp + (size_t)b * Cin * g.n;
    float *ob = out + (size_t)b * M * g.n;
    size_t p0;
    for (p0 = 0; p0 < g.n; p0 += IOUPOS__CONV_BLOCK) {
      size_t p1 = p0 + IOUPOS__CONV_BLOCK < g.n ? p0 + IOUPOS__CONV_BLOCK : g.n;
      int len = (int)(p1 - p0);
      st = ioupos_gemm(1, 0, M, len, Cin, 1.0f, weight, M, ib + p0, n, 0.0f, scratch, len);
      if (st) return st;
      ioupos__tconv_scatter(scratch, ob, NULL, bias, &g, Cout, p0, p1, 0);
    }
  }
  return IOUPOS_OK;
}

/* The adjoint of the forward: gather each input position's 2^dims taps of dout into scratch (the
   scatter run backwards), then dinp += weight . gathered and dweight += inp . gathered^T, summed
   over samples and blocks in a fixed order. ACCUMULATES. */
IOUPOS_DEF int ioupos_conv_transpose_backward(float *dinp, float *dweight, float *dbias,
                                              float *scratch, const float *dout,
                                              const float *inp, const float *weight, int dims,
                                              int B, int Cin, const int shape[], int Cout) {
  ioupos__cgeom g;
  int st = ioupos__conv_args("ioupos_conv_transpose_backward", &g, dims, B, Cin, shape, 2, Cout,
                             0);
  int b, n, M;
  if (st) return st;
  if (!dout || ((dinp || dweight) && !scratch) || (dweight && !inp) || (dinp && !weight))
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_conv_transpose_backward: NULL dout, or NULL "
                        "scratch / inp / weight needed for the gradients asked for");
  n = (int)g.n, M = Cout * (int)g.kv;
  if (dbias) ioupos__chan_sum(dbias, dout, B, Cout, g.n * g.kv);
  if (!dinp && !dweight) return IOUPOS_OK;
  for (b = 0; b < B; ++b) {
    const float *db = dout + (size_t)b * M * g.n;
    size_t p0;
    for (p0 = 0; p0 < g.n; p0 += IOUPOS__CONV_BLOCK) {
      size_t p1 = p0 + IOUPOS__CONV_BLOCK < g.n ? p0 + IOUPOS__CONV_BLOCK : g.n;
      int len = (int)(p1 - p0);
      ioupos__tconv_scatter(scratch, NULL, db, NULL, &g, Cout, p0, p1, 1);
      if (dinp) {
        st = ioupos_gemm(0, 0, Cin, len, M, 1.0f, weight, M, scratch, len, 1.0f,
                         dinp + (size_t)b * Cin * g.n + p0, n);
        if (st) return st;
      }
      if (dweight) {
        st = ioupos_gemm(0, 1, Cin, M, len, 1.0f, inp + (size_t)b * Cin * g.n + p0, n, scratch,
                         len, 1.0f, dweight, M);
        if (st) return st;
      }
    }
  }
  return IOUPOS_OK;
}

/* -- instance norm -- */
/* Each (b, c) plane is independent, so the planes run on threads without changing a result. Two
   passes in double (the mean, then the centred sum of squares) rather than E[x^2] - mean^2,
   which loses precision when the mean is large against the spread. Batch statistics per plane in
   train AND eval mode, with the biased variance: torch's InstanceNorm with track_running_stats
   False, which is MONAI's "instance". */
IOUPOS_DEF void ioupos_instnorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                        const float *weight, const float *bias, int B, int C,
                                        size_t n, float eps) {
  int pl, np = B * C;
  IOUPOS__PFOR((double)np * n)
  for (pl = 0; pl < np; ++pl) {
    const float *x = inp + (size_t)pl * n;
    float *y = out + (size_t)pl * n;
    int c = pl % C;
    double m = 0.0, v = 0.0, r, w = weight ? weight[c] : 1.0, bb = bias ? bias[c] : 0.0;
    size_t i;
    for (i = 0; i < n; ++i) m += x[i];
    m /= (double)n;
    for (i = 0; i < n; ++i) v += (x[i] - m) * (x[i] - m);
    v /= (double)n;
    r = 1.0 / sqrt(v + eps);
    mean[pl] = (float)m, rstd[pl] = (float)r; /* before y: out may equal inp */
    for (i = 0; i < n; ++i) y[i] = (float)((x[i] - m) * r * w + bb);
  }
}

/* One channel per thread: the loop over b inside sums dweight[c] and dbias[c] over the batch
   without races and in a fixed order. xhat is recomputed from inp and the saved statistics, so
   an in-place forward (out == inp) is fine as long as the caller kept the input. */
IOUPOS_DEF void ioupos_instnorm_backward(float *dinp, float *dweight, float *dbias,
                                         const float *dout, const float *inp,
                                         const float *weight, const float *mean,
                                         const float *rstd, int B, int C, size_t n) {
  int c;
  IOUPOS__PFOR((double)B * C * n)
  for (c = 0; c < C; ++c) {
    double w = weight ? weight[c] : 1.0, sw = 0.0, sb = 0.0;
    int b;
    for (b = 0; b < B; ++b) {
      size_t pl = (size_t)b * C + c, i;
      const float *x = inp + pl * n, *dy = dout + pl * n;
      double m = mean[pl], r = rstd[pl], s1 = 0.0, s2 = 0.0;
      /* xhat = (x - m) r; dxhat = dy w; dx = r (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) */
      for (i = 0; i < n; ++i) {
        double xh = (x[i] - m) * r;
        s1 += dy[i];
        s2 += dy[i] * xh;
      }
      sb += s1, sw += s2;
      if (dinp) {
        float *dx = dinp + pl * n;
        double k1 = w * s1 / (double)n, k2 = w * s2 / (double)n;
        for (i = 0; i < n; ++i) {
          double xh = (x[i] - m) * r;
          dx[i] += (float)(r * (w * dy[i] - k1 - xh * k2));
        }
      }
    }
    if (dweight) dweight[c] += (float)sw;
    if (dbias) dbias[c] += (float)sb;
  }
}

/* -- leaky ReLU -- */
/* x > 0 sends 0 and NaN to the slope branch, as torch's leaky_relu (its backward tests x > 0
   too). */
IOUPOS_DEF void ioupos_leaky_relu_forward(float *out, const float *inp, size_t n, float slope) {
  size_t i;
  for (i = 0; i < n; ++i) out[i] = inp[i] > 0.0f ? inp[i] : inp[i] * slope;
}

IOUPOS_DEF void ioupos_leaky_relu_backward(float *dinp, const float *x, const float *dout,
                                           size_t n, float slope) {
  size_t i;
  for (i = 0; i < n; ++i) dinp[i] += x[i] > 0.0f ? dout[i] : dout[i] * slope;
}

/* -- channel concatenation -- */
/* Channels-first: per sample each part is one contiguous block, so the concatenation is two
   copies per sample, and its backward two accumulating adds, one to each producer's gradient. */
IOUPOS_DEF void ioupos_cat_channels_forward(float *out, const float *a, const float *b, int B,
                                            int C1, int C2, size_t n) {
  int s;
  size_t na = (size_t)C1 * n, nb = (size_t)C2 * n;
  for (s = 0; s < B; ++s) {
    memcpy(out + (size_t)s * (na + nb), a + (size_t)s * na, sizeof(float) * na);
    memcpy(out + (size_t)s * (na + nb) + na, b + (size_t)s * nb, sizeof(float) * nb);
  }
}

IOUPOS_DEF void ioupos_cat_channels_backward(float *da, float *db, const float *dout, int B,
                                             int C1, int C2, size_t n) {
  int s;
  size_t na = (size_t)C1 * n, nb = (size_t)C2 * n, i;
  for (s = 0; s < B; ++s) {
    const float *d = dout + (size_t)s * (na + nb);
    if (da)
      for (i = 0; i < na; ++i) da[(size_t)s * na + i] += d[i];
    if (db)
      for (i = 0; i < nb; ++i) db[(size_t)s * nb + i] += d[na + i];
  }
}

/* -- UnetResBlock -- */
/* The forward's carving of acts: h1, a1, h2, s (N each, and h3 with conv3), then each norm's
   mean and rstd (P each: three norms with conv3, two without). */
IOUPOS_DEF size_t ioupos_unet_resblock_acts_size(int dims, int B, int Cin, const int shape[],
                                                 int k, int Cout) {
  ioupos__cgeom g;
  size_t N, P;
  int has3 = Cin != Cout;
  if (!ioupos__cgeom_init(&g, dims, shape, k) || B < 1 || Cin < 1 || Cout < 1 || k % 2 == 0)
    return 0;
  N = (size_t)B * Cout * g.n, P = (size_t)B * Cout;
  return (size_t)(4 + has3) * N + (size_t)(4 + 2 * has3) * P;
}

/* Two N-float gradient buffers for the backward, then the larger column scratch of conv1 (Cin
   channels) and conv2 (Cout); conv3 is 1x1 and needs none. The forward uses only the columns
   part. */
IOUPOS_DEF size_t ioupos_unet_resblock_scratch_size(int dims, int B, int Cin, const int shape[],
                                                    int k, int Cout) {
  ioupos__cgeom g;
  size_t c1, c2;
  if (!ioupos__cgeom_init(&g, dims, shape, k) || B < 1 || Cin < 1 || Cout < 1 || k % 2 == 0)
    return 0;
  c1 = ioupos_conv_scratch_size(dims, Cin, shape, k);
  c2 = ioupos_conv_scratch_size(dims, Cout, shape, k);
  return 2 * (size_t)B * Cout * g.n + (c1 > c2 ? c1 : c2);
}

/* MONAI's UnetResBlock.forward step by step, keeping in acts what the backward reads. The leaky
   ReLU after norm1 runs in place, as MONAI's (inplace=True), so a1 holds the activation's
   output; its sign is its input's, which is all the backward needs. norm3's output is not kept:
   it is built in out, added to s as the residual, and out is then overwritten by the final
   activation. The norms are affine-free (weight and bias NULL), MONAI's "instance". */
IOUPOS_DEF int ioupos_unet_resblock_forward(float *out, float *acts, float *scratch,
                                            const float *inp, const float *w1, const float *w2,
                                            const float *w3, int dims, int B, int Cin,
                                            const int shape[], int k, int Cout) {
  ioupos__cgeom g;
  int st = ioupos__conv_args("ioupos_unet_resblock_forward", &g, dims, B, Cin, shape, k, Cout, 1);
  int has3 = Cin != Cout;
  size_t N, P, i;
  float *h1, *a1, *h2, *s, *h3, *stats, *cs;
  const float eps = IOUPOS_UNET_NORM_EPS, slope = IOUPOS_UNET_LRELU_SLOPE;
  if (st) return st;
  if (!out || !acts || !scratch || !inp || !w1 || !w2 || (has3 != (w3 != NULL)))
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_unet_resblock_forward: a NULL buffer or weight, "
                        "or w3 %s (it must be given exactly when Cin %d != Cout %d)",
                        w3 ? "given" : "NULL", Cin, Cout);
  N = (size_t)B * Cout * g.n, P = (size_t)B * Cout;
  h1 = acts, a1 = h1 + N, h2 = a1 + N, s = h2 + N, h3 = has3 ? s + N : NULL;
  stats = s + N * (size_t)(1 + has3);
  cs = scratch + 2 * N;
  st = ioupos_conv_forward(h1, cs, inp, w1, NULL, dims, B, Cin, shape, k, Cout);
  if (st) return st;
  ioupos_instnorm_forward(a1, stats, stats + P, h1, NULL, NULL, B, Cout, g.n, eps);
  ioupos_leaky_relu_forward(a1, a1, N, slope);
  st = ioupos_conv_forward(h2, cs, a1, w2, NULL, dims, B, Cout, shape, k, Cout);
  if (st) return st;
  ioupos_instnorm_forward(s, stats + 2 * P, stats + 3 * P, h2, NULL, NULL, B, Cout, g.n, eps);
  if (has3) {
    st = ioupos_conv_forward(h3, NULL, inp, w3, NULL, dims, B, Cin, shape, 1, Cout);
    if (st) return st;
    ioupos_instnorm_forward(out, stats + 4 * P, stats + 5 * P, h3, NULL, NULL, B, Cout, g.n, eps);
    for (i = 0; i < N; ++i) s[i] += out[i];
  } else {
    for (i = 0; i < N; ++i) s[i] += inp[i];
  }
  ioupos_leaky_relu_forward(out, s, N, slope);
  return IOUPOS_OK;
}

/* The forward in reverse: final activation, residual (conv3 branch or identity), norm2, conv2,
   activation, norm1, conv1. g1 and g2 take turns as the current gradient and are zeroed before
   each accumulating call; the conv column scratch follows them. dinp receives both the
   residual's and conv1's gradients. The conv3 branch is skipped when neither dinp nor dw3 is
   asked for. */
IOUPOS_DEF int ioupos_unet_resblock_backward(float *dinp, float *dw1, float *dw2, float *dw3,
                                             float *scratch, const float *dout,
                                             const float *acts, const float *inp,
                                             const float *w1, const float *w2, const float *w3,
                                             int dims, int B, int Cin, const int shape[], int k,
                                             int Cout) {
  ioupos__cgeom g;
  int st = ioupos__conv_args("ioupos_unet_resblock_backward", &g, dims, B, Cin, shape, k, Cout, 1);
  int has3 = Cin != Cout;
  size_t N, P, i;
  const float *h1, *a1, *h2, *s, *h3, *stats;
  float *g1, *g2, *cs;
  const float slope = IOUPOS_UNET_LRELU_SLOPE;
  if (st) return st;
  if (!scratch || !dout || !acts || !inp || !w1 || !w2 || (has3 != (w3 != NULL)))
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_unet_resblock_backward: a NULL buffer or weight, "
                        "or w3 %s (it must be given exactly when Cin %d != Cout %d)",
                        w3 ? "given" : "NULL", Cin, Cout);
  N = (size_t)B * Cout * g.n, P = (size_t)B * Cout;
  h1 = acts, a1 = h1 + N, h2 = a1 + N, s = h2 + N, h3 = has3 ? s + N : NULL;
  stats = s + N * (size_t)(1 + has3);
  g1 = scratch, g2 = scratch + N, cs = scratch + 2 * N;
  /* g1 = dL/ds through the final leaky ReLU (s is its input) */
  memset(g1, 0, sizeof(float) * N);
  ioupos_leaky_relu_backward(g1, s, dout, N, slope);
  /* residual branch */
  if (has3) {
    if (dinp || dw3) {
      memset(g2, 0, sizeof(float) * N);
      ioupos_instnorm_backward(g2, NULL, NULL, g1, h3, NULL, stats + 4 * P, stats + 5 * P, B,
                               Cout, g.n);
      st = ioupos_conv_backward(dinp, dw3, NULL, NULL, g2, inp, w3, dims, B, Cin, shape, 1, Cout);
      if (st) return st;
    }
  } else if (dinp) {
    for (i = 0; i < N; ++i) dinp[i] += g1[i];
  }
  /* main branch: norm2, conv2, leaky ReLU (a1 has its input's sign), norm1, conv1 */
  memset(g2, 0, sizeof(float) * N);
  ioupos_instnorm_backward(g2, NULL, NULL, g1, h2, NULL, stats + 2 * P, stats + 3 * P, B, Cout,
                           g.n);
  memset(g1, 0, sizeof(float) * N);
  st = ioupos_conv_backward(g1, dw2, NULL, cs, g2, a1, w2, dims, B, Cout, shape, k, Cout);
  if (st) return st;
  for (i = 0; i < N; ++i)
    if (!(a1[i] > 0.0f)) g1[i] *= slope;
  memset(g2, 0, sizeof(float) * N);
  ioupos_instnorm_backward(g2, NULL, NULL, g1, h1, NULL, stats, stats + P, B, Cout, g.n);
  return ioupos_conv_backward(dinp, dw1, NULL, cs, g2, inp, w1, dims, B, Cin, shape, k, Cout);
}

/* -- UnetrUpBlock -- */
/* The up-sampled shape (every axis doubled); 0 when it does not fit an int. */
static int ioupos__up_shape(int dims, const int shape[], int up[3]) {
  int d;
  if ((dims != 2 && dims != 3) || !shape) return 0;
  for (d = 0; d < dims; ++d) {
    if (shape[d] < 1 || shape[d] > INT_MAX / 2) return 0;
    up[d] = 2 * shape[d];
  }
  return 1;
}

/* [cat: B 2 Cout n2 | the resblock's acts on the doubled shape]: the concatenation is the
   resblock's input, which its backward reads, so it is kept rather than rebuilt. */
IOUPOS_DEF size_t ioupos_unetr_upblock_acts_size(int dims, int B, const int shape[], int k,
                                                 int Cout) {
  int up[3];
  size_t r;
  ioupos__cgeom g;
  if (!ioupos__up_shape(dims, shape, up) || !ioupos__cgeom_init(&g, dims, up, 1)) return 0;
  r = ioupos_unet_resblock_acts_size(dims, B, 2 * Cout, up, k, Cout);
  return r ? (size_t)B * 2 * Cout * g.n + r : 0;
}

/* [dcat: B 2 Cout n2 | the larger of the resblock's and the transposed conv's scratch]: the
   backward holds the concatenation's gradient while running both. */
IOUPOS_DEF size_t ioupos_unetr_upblock_scratch_size(int dims, int B, int Cin, const int shape[],
                                                    int k, int Cout) {
  int up[3];
  size_t r, t;
  ioupos__cgeom g;
  if (!ioupos__up_shape(dims, shape, up) || !ioupos__cgeom_init(&g, dims, up, 1) || Cin < 1)
    return 0;
  r = ioupos_unet_resblock_scratch_size(dims, B, 2 * Cout, up, k, Cout);
  t = ioupos_conv_transpose_scratch_size(dims, shape, Cout);
  return r ? (size_t)B * 2 * Cout * g.n + (r > t ? r : t) : 0;
}

/* The transposed conv runs one sample at a time (B = 1) so that its output lands directly in the
   first Cout channels of that sample's part of cat, with the skip copied behind it:
   torch.cat((up, skip), dim=1) without an intermediate buffer. MONAI's order, up first, decides
   which input channels of conv1 and conv3 meet which half, so MONAI's weights line up. */
IOUPOS_DEF int ioupos_unetr_upblock_forward(float *out, float *acts, float *scratch,
                                            const float *inp, const float *skip, const float *wt,
                                            const float *w1, const float *w2, const float *w3,
                                            int dims, int B, int Cin, const int shape[], int k,
                                            int Cout) {
  int up[3], b, st;
  ioupos__cgeom g;
  size_t n2, nin;
  if (!ioupos__up_shape(dims, shape, up) || B < 1 || Cin < 1 || Cout < 1 || !inp || !skip ||
      !wt || !acts || !scratch)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_unetr_upblock_forward: dims %d, B %d, Cin %d, "
                        "Cout %d, a bad shape or a NULL buffer", dims, B, Cin, Cout);
  ioupos__cgeom_init(&g, dims, up, 1);
  n2 = g.n, nin = n2 >> dims;
  /* cat[b] = (transp_conv(inp[b]), skip[b]): the transpose writes straight into cat */
  for (b = 0; b < B; ++b) {
    float *cb = acts + (size_t)b * 2 * Cout * n2;
    st = ioupos_conv_transpose_forward(cb, scratch, inp + (size_t)b * Cin * nin, wt, NULL, dims,
                                       1, Cin, shape, Cout);
    if (st) return st;
    memcpy(cb + (size_t)Cout * n2, skip + (size_t)b * Cout * n2, sizeof(float) * Cout * n2);
  }
  return ioupos_unet_resblock_forward(out, acts + (size_t)B * 2 * Cout * n2, scratch, acts, w1,
                                      w2, w3, dims, B, 2 * Cout, up, k, Cout);
}

/* dcat, at the start of scratch, is zeroed because the resblock ACCUMULATES into it; the
   resblock's own scratch (rest) follows, and the transposed conv reuses it afterwards. Per
   sample, dcat's second half is added to dskip and its first half goes back through the
   transposed conv. */
IOUPOS_DEF int ioupos_unetr_upblock_backward(float *dinp, float *dskip, float *dwt, float *dw1,
                                             float *dw2, float *dw3, float *scratch,
                                             const float *dout, const float *acts,
                                             const float *inp, const float *wt, const float *w1,
                                             const float *w2, const float *w3, int dims, int B,
                                             int Cin, const int shape[], int k, int Cout) {
  int up[3], b, st;
  ioupos__cgeom g;
  size_t n2, nin, ncat, i;
  float *dcat, *rest;
  if (!ioupos__up_shape(dims, shape, up) || B < 1 || Cin < 1 || Cout < 1 || !inp || !wt ||
      !dout || !acts || !scratch)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_unetr_upblock_backward: dims %d, B %d, Cin %d, "
                        "Cout %d, a bad shape or a NULL buffer", dims, B, Cin, Cout);
  ioupos__cgeom_init(&g, dims, up, 1);
  n2 = g.n, nin = n2 >> dims, ncat = (size_t)B * 2 * Cout * n2;
  dcat = scratch, rest = scratch + ncat;
  memset(dcat, 0, sizeof(float) * ncat);
  st = ioupos_unet_resblock_backward(dcat, dw1, dw2, dw3, rest, dout, acts + ncat, acts, w1, w2,
                                     w3, dims, B, 2 * Cout, up, k, Cout);
  if (st) return st;
  for (b = 0; b < B; ++b) {
    const float *dcb = dcat + (size_t)b * 2 * Cout * n2;
    if (dskip) {
      float *ds = dskip + (size_t)b * Cout * n2;
      const float *src = dcb + (size_t)Cout * n2;
      for (i = 0; i < (size_t)Cout * n2; ++i) ds[i] += src[i];
    }
    if (dinp || dwt) {
      st = ioupos_conv_transpose_backward(dinp ? dinp + (size_t)b * Cin * nin : NULL, dwt, NULL,
                                          rest, dcb, inp + (size_t)b * Cin * nin, wt, dims, 1,
                                          Cin, shape, Cout);
      if (st) return st;
    }
  }
  return IOUPOS_OK;
}

/* -- UnetOutBlock -- */
/* UnetOutBlock is one 1x1 Convolution with bias and no norm or activation: k = 1 needs no
   scratch and saves nothing, so the backward reads the block's input. */
IOUPOS_DEF int ioupos_unet_outblock_forward(float *out, const float *inp, const float *weight,
                                            const float *bias, int dims, int B, int Cin,
                                            const int shape[], int Cout) {
  return ioupos_conv_forward(out, NULL, inp, weight, bias, dims, B, Cin, shape, 1, Cout);
}

IOUPOS_DEF int ioupos_unet_outblock_backward(float *dinp, float *dweight, float *dbias,
                                             const float *dout, const float *inp,
                                             const float *weight, int dims, int B, int Cin,
                                             const int shape[], int Cout) {
  return ioupos_conv_backward(dinp, dweight, dbias, NULL, dout, inp, weight, dims, B, Cin, shape,
                              1, Cout);
}

#ifdef __cplusplus
}
#endif

/* ---- 20. Segmentation: Dice-CE loss, sliding-window inference, organ DSC ---- */

#ifdef __cplusplus
extern "C" {
#endif

/* The loss and argmax read channels-first [B][K][S] tensors, where the K values of one voxel are
   S floats apart. They work on blocks of IOUPOS__SEG_CHUNK voxels: per class one contiguous run,
   with the per-voxel state (running max, log-sum-exp, dot product, best score) in a small stack
   array, so each class plane is streamed once per pass without transposing the logits. */
#define IOUPOS__SEG_CHUNK 256 /* voxels per block of the channels-first loops */

/* -- DiceCE -- */

IOUPOS_DEF void ioupos_dicece_defaults(ioupos_dicece_opts *o) {
  if (!o) return;
  o->include_background = 1;
  o->smooth_nr = 1e-5;
  o->smooth_dr = 1e-5;
  o->lambda_dice = 1.0;
  o->lambda_ce = 1.0;
}

/* MONAI's DiceCELoss refuses negative lambdas; smooth_dr must be > 0 here so that every Dice
   denominator stays positive even where a class's probabilities underflow to 0 on every voxel.
   The > 1e300 tests refuse infinities, the >= tests NaN. */
static int ioupos__dicece_check(const ioupos_dicece_opts *o, const char *fn) {
  if (o->include_background != 0 && o->include_background != 1)
    return ioupos__fail(IOUPOS_EINVAL, "%s: include_background is %d; it must be 0 or 1", fn,
                        o->include_background);
  if (!(o->lambda_dice >= 0.0) || !(o->lambda_ce >= 0.0) || o->lambda_dice > 1e300 ||
      o->lambda_ce > 1e300)
    return ioupos__fail(IOUPOS_EINVAL,
                        "%s: lambda_dice %g and lambda_ce %g must be finite and >= 0 (MONAI)", fn,
                        o->lambda_dice, o->lambda_ce);
  if (!(o->smooth_nr >= 0.0) || !(o->smooth_dr > 0.0) || o->smooth_nr > 1e300 ||
      o->smooth_dr > 1e300)
    return ioupos__fail(IOUPOS_EINVAL,
                        "%s: smooth_nr %g must be finite and >= 0, smooth_dr %g finite and > 0", fn,
                        o->smooth_nr, o->smooth_dr);
  return IOUPOS_OK;
}

/* Every argument, option and target id is checked before anything is written, so an argument
   error leaves prob and stats untouched. Then per item and voxel block: the log-sum-exp over
   classes with the max subtracted, in double; p = exp(x - lse), stored as float; the Dice sums
   I, P, T accumulated per (b, k) in voxel order, so the result depends on neither threads nor
   blocking. The cross-entropy uses lse - logit[target] rather than -log p, which stays finite
   where p underflows. The Dice part is one flat mean over B (K - c0) terms: MONAI's "mean"
   reduction of its [B][K] Dice tensor with batch False. */
IOUPOS_DEF double ioupos_dicece_forward(float *prob, double *stats, const float *logits,
                                        const int *target, int B, int K, long S,
                                        const ioupos_dicece_opts *opts) {
  static const char *fn = "ioupos_dicece_forward";
  ioupos_dicece_opts o;
  double mx[IOUPOS__SEG_CHUNK], lse[IOUPOS__SEG_CHUNK];
  double ce = 0.0, dice = 0.0;
  long s0, i;
  int b, k, c0;
  if (opts) o = *opts;
  else ioupos_dicece_defaults(&o);
  if (!prob || !stats || !logits || !target) {
    ioupos__fail(IOUPOS_EINVAL, "%s: a buffer is NULL", fn);
    return NAN;
  }
  if (B < 1 || K < 2 || S < 1) {
    ioupos__fail(IOUPOS_EINVAL, "%s: B %d, K %d, S %ld: need B >= 1, K >= 2 (softmax over the "
                 "classes) and S >= 1", fn, B, K, S);
    return NAN;
  }
  if ((size_t)B * (size_t)K > ((size_t)-1 / sizeof(float)) / (size_t)S) {
    ioupos__fail(IOUPOS_ERANGE, "%s: B %d x K %d x S %ld is too large", fn, B, K, S);
    return NAN;
  }
  if (ioupos__dicece_check(&o, fn) != 0) return NAN;
  for (b = 0; b < B; ++b)
    for (i = 0; i < S; ++i) {
      int t = target[(size_t)b * S + i];
      if (t < 0 || t >= K) {
        ioupos__fail(IOUPOS_EINVAL, "%s: target[%d][%ld] = %d is not a class id in [0, %d)", fn, b,
                     i, t, K);
        return NAN;
      }
    }
  memset(stats, 0, sizeof(double) * IOUPOS_DICECE_STATS(B, K));
  for (b = 0; b < B; ++b) {
    const int *tb = target + (size_t)b * S;
    for (s0 = 0; s0 < S; s0 += IOUPOS__SEG_CHUNK) {
      long n = S - s0 < IOUPOS__SEG_CHUNK ? S - s0 : IOUPOS__SEG_CHUNK;
      const int *t = tb + s0;
      for (i = 0; i < n; ++i) mx[i] = -INFINITY, lse[i] = 0.0;
      for (k = 0; k < K; ++k) {
        const float *x = logits + ((size_t)b * K + k) * (size_t)S + s0;
        for (i = 0; i < n; ++i) mx[i] = x[i] > mx[i] ? (double)x[i] : mx[i];
      }
      for (k = 0; k < K; ++k) {
        const float *x = logits + ((size_t)b * K + k) * (size_t)S + s0;
        for (i = 0; i < n; ++i) lse[i] += exp((double)x[i] - mx[i]);
      }
      for (i = 0; i < n; ++i) lse[i] = mx[i] + log(lse[i]);
      for (k = 0; k < K; ++k) {
        const float *x = logits + ((size_t)b * K + k) * (size_t)S + s0;
        float *p = prob + ((size_t)b * K + k) * (size_t)S + s0;
        double *st = stats + 3 * ((size_t)b * K + k);
        for (i = 0; i < n; ++i) {
          double pv = exp((double)x[i] - lse[i]);
          p[i] = (float)pv;
          st[1] += pv;
          if (t[i] == k) st[0] += pv, st[2] += 1.0;
        }
      }
      for (i = 0; i < n; ++i)
        ce += lse[i] - (double)logits[((size_t)b * K + t[i]) * (size_t)S + s0 + i];
    }
  }
  c0 = o.include_background ? 0 : 1;
  for (b = 0; b < B; ++b)
    for (k = c0; k < K; ++k) {
      const double *st = stats + 3 * ((size_t)b * K + k);
      dice += 1.0 - (2.0 * st[0] + o.smooth_nr) / (st[1] + st[2] + o.smooth_dr);
    }
  dice /= (double)B * (double)(K - c0);
  ce /= (double)B * (double)S;
  stats[3 * (size_t)B * K] = dice;
  stats[3 * (size_t)B * K + 1] = ce;
  return o.lambda_dice * dice + o.lambda_ce * ce;
}

/* The Dice part couples every voxel of (b, c) through I and P, which is why the forward keeps
   the sums in stats. Per voxel block: dot = sum_j p_j g_j over the Dice classes, then
     dL/dx_k = p_k (g_k - dot) + (p_k - t_k) lambda_ce / (B S),
   the softmax Jacobian applied to the Dice gradient g plus the cross-entropy's. The result is
   scaled by dloss (the caller's loss scale, e.g. 1 / accumulation steps) and ADDED to dlogits.
   This function has no status: invalid arguments return silently, so call it only after a
   forward that succeeded on the same arguments. */
IOUPOS_DEF void ioupos_dicece_backward(float *dlogits, float dloss, const float *prob,
                                       const double *stats, const int *target, int B, int K,
                                       long S, const ioupos_dicece_opts *opts) {
  ioupos_dicece_opts o;
  double dot[IOUPOS__SEG_CHUNK];
  double ce_scale, dice_scale;
  long s0, i;
  int b, k, c0;
  if (opts) o = *opts;
  else ioupos_dicece_defaults(&o);
  if (!dlogits || !prob || !stats || !target || B < 1 || K < 2 || S < 1) return;
  c0 = o.include_background ? 0 : 1;
  ce_scale = o.lambda_ce / ((double)B * (double)S);
  dice_scale = -o.lambda_dice / ((double)B * (double)(K - c0));
  for (b = 0; b < B; ++b) {
    const int *tb = target + (size_t)b * S;
    for (s0 = 0; s0 < S; s0 += IOUPOS__SEG_CHUNK) {
      long n = S - s0 < IOUPOS__SEG_CHUNK ? S - s0 : IOUPOS__SEG_CHUNK;
      const int *t = tb + s0;
      for (i = 0; i < n; ++i) dot[i] = 0.0;
      /* g[k] = coef (2 t[k] - q) with coef = dice_scale / D, q = N / D */
      for (k = c0; k < K; ++k) {
        const double *st = stats + 3 * ((size_t)b * K + k);
        const float *p = prob + ((size_t)b * K + k) * (size_t)S + s0;
        double D = st[1] + st[2] + o.smooth_dr, coef = dice_scale / D;
        double q = (2.0 * st[0] + o.smooth_nr) / D;
        for (i = 0; i < n; ++i) dot[i] += (double)p[i] * (coef * ((t[i] == k ? 2.0 : 0.0) - q));
      }
      for (k = 0; k < K; ++k) {
        const double *st = stats + 3 * ((size_t)b * K + k);
        const float *p = prob + ((size_t)b * K + k) * (size_t)S + s0;
        float *dx = dlogits + ((size_t)b * K + k) * (size_t)S + s0;
        double coef = 0.0, q = 0.0;
        if (k >= c0) {
          double D = st[1] + st[2] + o.smooth_dr;
          coef = dice_scale / D;
          q = (2.0 * st[0] + o.smooth_nr) / D;
        }
        for (i = 0; i < n; ++i) {
          double pv = p[i], hit = t[i] == k ? 1.0 : 0.0;
          double g = coef * (2.0 * hit - q);
          double d = pv * (g - dot[i]) + ce_scale * (pv - hit);
          dx[i] += (float)((double)dloss * d);
        }
      }
    }
  }
}

/* -- sliding window -- */

/* MONAI's _get_scan_interval and dense_patch_slices reduced to numbers per axis: the windows
   form a Cartesian grid, so interval and n_axis describe them all and a window's start is
   computed on demand (ioupos_sw_plan_start) instead of building MONAI's list of slices. Padding
   is only recorded here (pad_before); the gather applies it virtually. */
IOUPOS_DEF int ioupos_sw_plan_make(ioupos_sw_plan *p, int dims, const int shape[],
                                   const int roi[], double overlap) {
  static const char *fn = "ioupos_sw_plan_make";
  int k;
  long nw = 1;
  if (!p) return ioupos__fail(IOUPOS_EINVAL, "%s: plan is NULL", fn);
  memset(p, 0, sizeof *p);
  if (dims != 2 && dims != 3)
    return ioupos__fail(IOUPOS_EINVAL, "%s: dims is %d; it must be 2 or 3", fn, dims);
  if (!shape) return ioupos__fail(IOUPOS_EINVAL, "%s: shape is NULL", fn);
  if (!(overlap >= 0.0 && overlap < 1.0))
    return ioupos__fail(IOUPOS_EINVAL, "%s: overlap %g must be in [0, 1) (MONAI)", fn, overlap);
  p->dims = dims;
  for (k = 0; k < dims; ++k) {
    int r = roi ? roi[k] : IOUPOS_SW_ROI_DEFAULT;
    if (shape[k] < 1)
      return ioupos__fail(IOUPOS_EINVAL, "%s: image size %d on axis %d must be >= 1", fn,
                          shape[k], k);
    p->shape[k] = shape[k];
    p->roi[k] = r > 0 ? r : shape[k]; /* MONAI fall_back_tuple */
    p->padded[k] = shape[k] > p->roi[k] ? shape[k] : p->roi[k];
    p->pad_before[k] = (p->padded[k] - shape[k]) / 2;
  }
  {
    double vp = 1.0, vr = 1.0;
    for (k = 0; k < dims; ++k) vp *= p->padded[k], vr *= p->roi[k];
    if (vp > (double)INT_MAX || vr > (double)INT_MAX)
      return ioupos__fail(IOUPOS_ERANGE, "%s: the padded image (%g voxels) or the window (%g) "
                          "has more than INT_MAX voxels", fn, vp, vr);
  }
  for (k = 0; k < dims; ++k) {
    int P = p->padded[k], r = p->roi[k], iv, num, d, n = 1;
    if (r == P) {
      iv = r;
    } else {
      iv = (int)((double)r * (1.0 - overlap)); /* int(roi * (1 - o)) */
      if (iv <= 0) iv = 1;
    }
    p->interval[k] = iv;
    /* MONAI's scan_num: the first d < ceil(P / interval) whose window reaches the padded end,
       plus one */
    num = (int)ceil((double)P / (double)iv);
    for (d = 0; d < num; ++d)
      if ((long)d * iv + r >= P) {
        n = d + 1;
        break;
      }
    p->n_axis[k] = n;
    nw *= n;
  }
  for (k = dims; k < 3; ++k) p->shape[k] = p->roi[k] = p->padded[k] = p->n_axis[k] = 1;
  p->n_windows = nw;
  return IOUPOS_OK;
}

/* Window i's start on axis k in padded coordinates: i * interval, pulled back so that the last
   window ends exactly at the padded size (MONAI's start - max(start + roi - P, 0)). */
static int ioupos__sw_axis_start(const ioupos_sw_plan *p, int k, int i) {
  long s = (long)i * p->interval[k];
  long over = s + p->roi[k] - p->padded[k];
  return (int)(s - (over > 0 ? over : 0));
}

/* w counts in meshgrid "ij" order, the last axis fastest, so it is decoded from the last axis
   up. */
IOUPOS_DEF void ioupos_sw_plan_start(const ioupos_sw_plan *p, long w, int start[3]) {
  int k;
  for (k = 2; k >= 0; --k) start[k] = 0;
  for (k = p->dims - 1; k >= 0; --k) {
    start[k] = ioupos__sw_axis_start(p, k, (int)(w % p->n_axis[k]));
    w /= p->n_axis[k];
  }
}

/* Memory is bounded by the batch of windows, not by their number: only min(sw_batch_size,
   n_windows) input and output windows exist at a time, and out is the accumulator. Each batch is
   gathered (zeros outside the image stand for MONAI's constant padding, so no padded image is
   built), predicted, and added into out window by window, only where the window lies inside the
   image: MONAI crops the padded parts away, and inside the image the float sums are the same, in
   the same order. The count map is separable, cnt_z cnt_y cnt_x, because the windows form a
   grid: three 1-D arrays replace a volume of counts. The final division is in float, as MONAI
   divides its float32 sums by its float32 count map (small integers, exact in float). */
IOUPOS_DEF int ioupos_sliding_window(float *out, int K, const float *img, int C, int dims,
                                     const int shape[], const int roi[], double overlap,
                                     int sw_batch_size, ioupos_sw_predict_fn predict,
                                     void *ctx) {
  static const char *fn = "ioupos_sliding_window";
  ioupos_sw_plan pl;
  int rc, k, a;
  int sh[3], rr[3], pb[3]; /* as 3D, a leading axis of 1 for 2D */
  size_t vol, wvol, nb, w_in, w_out;
  float *win = NULL, *wout = NULL;
  int *cnt[3] = {NULL, NULL, NULL};
  long w0;
  if (!out || !img || !predict)
    return ioupos__fail(IOUPOS_EINVAL, "%s: out, img or predict is NULL", fn);
  if (K < 1 || C < 1 || sw_batch_size < 1)
    return ioupos__fail(IOUPOS_EINVAL, "%s: K %d, C %d and sw_batch_size %d must be >= 1", fn, K,
                        C, sw_batch_size);
  if ((rc = ioupos_sw_plan_make(&pl, dims, shape, roi, overlap)) != 0) return rc;
  for (a = 0; a < 3; ++a) {
    int u = a - (3 - dims);
    sh[a] = u < 0 ? 1 : pl.shape[u];
    rr[a] = u < 0 ? 1 : pl.roi[u];
    pb[a] = u < 0 ? 0 : pl.pad_before[u];
  }
  vol = (size_t)sh[0] * sh[1] * sh[2];
  wvol = (size_t)rr[0] * rr[1] * rr[2];
  nb = (size_t)sw_batch_size < (size_t)pl.n_windows ? (size_t)sw_batch_size
                                                     : (size_t)pl.n_windows;
  if ((size_t)(C > K ? C : K) > ((size_t)-1 / sizeof(float)) / wvol / nb ||
      (size_t)K > ((size_t)-1 / sizeof(float)) / vol)
    return ioupos__fail(IOUPOS_ERANGE, "%s: %zu windows of %zu voxels with C %d, K %d are too "
                        "large", fn, nb, wvol, C, K);
  w_in = (size_t)C * wvol;
  w_out = (size_t)K * wvol;
  win = (float *)IOUPOS_MALLOC(sizeof(float) * nb * w_in);
  wout = (float *)IOUPOS_MALLOC(sizeof(float) * nb * w_out);
  for (a = 0; a < 3; ++a) cnt[a] = (int *)IOUPOS_MALLOC(sizeof(int) * (size_t)sh[a]);
  if (!win || !wout || !cnt[0] || !cnt[1] || !cnt[2]) {
    rc = ioupos__fail(IOUPOS_ENOMEM, "%s: out of memory for %zu windows of %zu voxels (C %d, "
                      "K %d)", fn, nb, wvol, C, K);
    goto done;
  }
  memset(out, 0, sizeof(float) * (size_t)K * vol);
  for (w0 = 0; w0 < pl.n_windows; w0 += (long)nb) {
    int n = (int)(pl.n_windows - w0 < (long)nb ? pl.n_windows - w0 : (long)nb), j;
    /* gather the input windows (zeros outside the image: constant padding, cval 0) */
    for (j = 0; j < n; ++j) {
      int st[3], o[3], z, y, c;
      ioupos_sw_plan_start(&pl, w0 + j, st);
      for (a = 0; a < 3; ++a) {
        int u = a - (3 - dims);
        o[a] = (u < 0 ? 0 : st[u]) - pb[a]; /* image coordinate of the window's first voxel */
      }
      for (c = 0; c < C; ++c)
        for (z = 0; z < rr[0]; ++z)
          for (y = 0; y < rr[1]; ++y) {
            float *dst = win + (size_t)j * w_in + (((size_t)c * rr[0] + z) * rr[1] + y) * rr[2];
            int iz = o[0] + z, iy = o[1] + y, x0 = o[2], lo, hi;
            if (iz < 0 || iz >= sh[0] || iy < 0 || iy >= sh[1]) {
              memset(dst, 0, sizeof(float) * (size_t)rr[2]);
              continue;
            }
            lo = x0 < 0 ? -x0 : 0;
            hi = x0 + rr[2] > sh[2] ? sh[2] - x0 : rr[2];
            if (lo > rr[2]) lo = rr[2];
            if (hi < lo) hi = lo;
            if (lo > 0) memset(dst, 0, sizeof(float) * (size_t)lo);
            if (hi > lo)
              memcpy(dst + lo, img + (((size_t)c * sh[0] + iz) * sh[1] + iy) * sh[2] + (x0 + lo),
                     sizeof(float) * (size_t)(hi - lo));
            if (hi < rr[2]) memset(dst + hi, 0, sizeof(float) * (size_t)(rr[2] - hi));
          }
    }
    memset(wout, 0, sizeof(float) * (size_t)n * w_out);
    rc = predict(ctx, win, n, wout);
    if (rc != 0) {
      /* ioupos__fail formats into this thread's reason buffer, which r points into: copy it
         first */
      char why[512];
      const char *r = ioupos_failure_reason();
      size_t l = strlen(r);
      if (l > sizeof why - 1) l = sizeof why - 1;
      memcpy(why, r, l);
      why[l] = '\0';
      rc = ioupos__fail(rc < 0 ? rc : IOUPOS_EINVAL, "%s: the predictor returned %d on windows "
                        "%ld..%ld of %ld: %s", fn, rc, w0, w0 + n - 1, pl.n_windows, why);
      goto done;
    }
    /* add the outputs inside the image, window by window in order (MONAI's float sums) */
    for (j = 0; j < n; ++j) {
      int st[3], o[3], z, y;
      ioupos_sw_plan_start(&pl, w0 + j, st);
      for (a = 0; a < 3; ++a) {
        int u = a - (3 - dims);
        o[a] = (u < 0 ? 0 : st[u]) - pb[a];
      }
      for (k = 0; k < K; ++k)
        for (z = 0; z < rr[0]; ++z)
          for (y = 0; y < rr[1]; ++y) {
            const float *src = wout + (size_t)j * w_out + (((size_t)k * rr[0] + z) * rr[1] + y) *
                                                              rr[2];
            int iz = o[0] + z, iy = o[1] + y, x0 = o[2], lo, hi, x;
            float *dst;
            if (iz < 0 || iz >= sh[0] || iy < 0 || iy >= sh[1]) continue;
            lo = x0 < 0 ? -x0 : 0;
            hi = x0 + rr[2] > sh[2] ? sh[2] - x0 : rr[2];
            dst = out + (((size_t)k * sh[0] + iz) * sh[1] + iy) * sh[2] + x0;
            for (x = lo; x < hi; ++x) dst[x] += src[x];
          }
    }
  }
  /* the count map: windows are a grid, so the count is the product of per-axis counts */
  for (a = 0; a < 3; ++a) {
    int u = a - (3 - dims), i, x;
    memset(cnt[a], 0, sizeof(int) * (size_t)sh[a]);
    if (u < 0) {
      cnt[a][0] = 1;
      continue;
    }
    for (i = 0; i < pl.n_axis[u]; ++i) {
      int s = ioupos__sw_axis_start(&pl, u, i) - pb[a];
      for (x = s < 0 ? 0 : s; x < s + rr[a] && x < sh[a]; ++x) ++cnt[a][x];
    }
  }
  for (k = 0; k < K; ++k) {
    int z, y, x;
    for (z = 0; z < sh[0]; ++z)
      for (y = 0; y < sh[1]; ++y) {
        float *dst = out + (((size_t)k * sh[0] + z) * sh[1] + y) * sh[2];
        for (x = 0; x < sh[2]; ++x) dst[x] = dst[x] / (float)(cnt[0][z] * cnt[1][y] * cnt[2][x]);
      }
  }
  rc = IOUPOS_OK;
done:
  IOUPOS_FREE(win);
  IOUPOS_FREE(wout);
  for (a = 0; a < 3; ++a) IOUPOS_FREE(cnt[a]);
  return rc;
}

/* -- argmax -- */

/* torch.argmax decided per voxel over the K planes: a strictly larger value replaces the best,
   so the first maximum wins ties; a NaN replaces any number and is never replaced, so the first
   NaN wins. Channels-first blocks as in the loss. */
IOUPOS_DEF int ioupos_argmax_classes(int *labels, const float *scores, int B, int K, long S) {
  float best[IOUPOS__SEG_CHUNK];
  long s0, i;
  int b, k;
  if (!labels || !scores)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_argmax_classes: labels or scores is NULL");
  if (B < 1 || K < 1 || S < 1)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_argmax_classes: B %d, K %d, S %ld must be >= 1",
                        B, K, S);
  for (b = 0; b < B; ++b)
    for (s0 = 0; s0 < S; s0 += IOUPOS__SEG_CHUNK) {
      long n = S - s0 < IOUPOS__SEG_CHUNK ? S - s0 : IOUPOS__SEG_CHUNK;
      int *lab = labels + (size_t)b * S + s0;
      const float *x0 = scores + (size_t)b * K * (size_t)S + s0;
      for (i = 0; i < n; ++i) lab[i] = 0, best[i] = x0[i];
      for (k = 1; k < K; ++k) {
        const float *x = scores + ((size_t)b * K + k) * (size_t)S + s0;
        for (i = 0; i < n; ++i) {
          float v = x[i], bv = best[i];
          if (bv != bv) continue;               /* a NaN already won */
          if (v != v || v > bv) lab[i] = k, best[i] = v;
        }
      }
    }
  return IOUPOS_OK;
}

/* -- per-case DSC -- */

static int ioupos__seg_check_k(int K, const char *fn) {
  if (K < 2 || K > IOUPOS_SEG_MAX_CLASSES)
    return ioupos__fail(IOUPOS_EINVAL, "%s: K is %d; it must be in [2, %d] "
                        "(IOUPOS_SEG_MAX_CLASSES)", fn, K, IOUPOS_SEG_MAX_CLASSES);
  return IOUPOS_OK;
}

/* Counts per class of one labelled region (n voxels); 0 or EINVAL naming the first bad label
   (index reported relative to base_index). */
static int ioupos__seg_count(int64_t *nt, int64_t *np, int64_t *ni, const int *pred,
                             const int *truth, long n, int K, long base_index, const char *fn) {
  long i;
  memset(nt, 0, sizeof(int64_t) * (size_t)K);
  memset(np, 0, sizeof(int64_t) * (size_t)K);
  memset(ni, 0, sizeof(int64_t) * (size_t)K);
  for (i = 0; i < n; ++i) {
    int t = truth[i], p = pred[i];
    if (t < 0 || t >= K || p < 0 || p >= K)
      return ioupos__fail(IOUPOS_EINVAL, "%s: voxel %ld has truth %d, prediction %d; class ids "
                          "must be in [0, %d)", fn, base_index + i, t, p, K);
    ++nt[t];
    ++np[p];
    if (t == p) ++ni[t];
  }
  return IOUPOS_OK;
}

/* Counts in int64 make each ratio exact up to one double rounding. A class absent from both
   volumes has no Dice (0 / 0): it is NaN and not defined here, left out of the case mean;
   whether an average scores it 1 instead (the FLARE22 script) is ioupos_dsc_eval's policy, not
   the case's. The background is computed for information and never enters the mean. */
IOUPOS_DEF int ioupos_dsc_case_compute(ioupos_dsc_case *r, const int *pred, const int *truth,
                                       long n, int K) {
  static const char *fn = "ioupos_dsc_case_compute";
  int c, rc;
  double sum = 0.0;
  if (!r || !pred || !truth) return ioupos__fail(IOUPOS_EINVAL, "%s: a pointer is NULL", fn);
  if ((rc = ioupos__seg_check_k(K, fn)) != 0) return rc;
  if (n < 1) return ioupos__fail(IOUPOS_EINVAL, "%s: the case has %ld voxels", fn, n);
  memset(r, 0, sizeof *r);
  r->K = K;
  if ((rc = ioupos__seg_count(r->n_truth, r->n_pred, r->n_inter, pred, truth, n, K, 0, fn)) != 0)
    return rc;
  for (c = 0; c < K; ++c) {
    int64_t den = r->n_truth[c] + r->n_pred[c];
    if (den == 0) {
      r->dsc[c] = NAN;
      r->defined[c] = 0;
      continue;
    }
    r->defined[c] = 1;
    r->dsc[c] = 2.0 * (double)r->n_inter[c] / (double)den;
    if (c >= 1) sum += r->dsc[c], ++r->n_defined;
  }
  r->mean = r->n_defined > 0 ? sum / r->n_defined : NAN;
  return IOUPOS_OK;
}

/* -- data-set DSC -- */

IOUPOS_DEF int ioupos_dsc_eval_init(ioupos_dsc_eval *e, int K, int empty_policy) {
  static const char *fn = "ioupos_dsc_eval_init";
  int rc;
  if (!e) return ioupos__fail(IOUPOS_EINVAL, "%s: accumulator is NULL", fn);
  if ((rc = ioupos__seg_check_k(K, fn)) != 0) return rc;
  if (empty_policy != IOUPOS_DSC_EMPTY_SKIP && empty_policy != IOUPOS_DSC_EMPTY_ONE)
    return ioupos__fail(IOUPOS_EINVAL, "%s: empty_policy %d is neither IOUPOS_DSC_EMPTY_SKIP (0) "
                        "nor IOUPOS_DSC_EMPTY_ONE (1)", fn, empty_policy);
  memset(e, 0, sizeof *e);
  e->K = K;
  e->empty_policy = empty_policy;
  return IOUPOS_OK;
}

/* An organ's DSC counts where it is defined; where the organ is absent from both volumes it
   counts as 1 under IOUPOS_DSC_EMPTY_ONE and not at all under IOUPOS_DSC_EMPTY_SKIP, and n_empty
   records it under either policy so the table can say how often it happened. The case's mean
   uses the same counted values, so both data-set scores follow the policy. */
IOUPOS_DEF int ioupos_dsc_eval_add(ioupos_dsc_eval *e, const ioupos_dsc_case *cs) {
  int c, n = 0;
  double sum = 0.0;
  if (!e || !cs) return ioupos__fail(IOUPOS_EINVAL, "ioupos_dsc_eval_add: a pointer is NULL");
  if (cs->K != e->K)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_dsc_eval_add: the case has K %d, the accumulator "
                        "%d", cs->K, e->K);
  for (c = 1; c < e->K; ++c) {
    double v;
    if (cs->defined[c]) v = cs->dsc[c];
    else {
      ++e->n_empty[c];
      if (e->empty_policy != IOUPOS_DSC_EMPTY_ONE) continue;
      v = 1.0;
    }
    e->sum[c] += v;
    e->sumsq[c] += v * v;
    ++e->count[c];
    sum += v;
    ++n;
  }
  ++e->n_cases;
  if (n > 0) e->case_mean_sum += sum / n, ++e->n_case_means;
  return IOUPOS_OK;
}

IOUPOS_DEF double ioupos_dsc_eval_organ_mean(const ioupos_dsc_eval *e, int c) {
  if (!e || c < 1 || c >= e->K || e->count[c] == 0) return NAN;
  return e->sum[c] / (double)e->count[c];
}

/* The population std (ddof 0, numpy's np.std default) from the running sums; when all values are
   equal the difference can round slightly below 0, hence the clamp. */
IOUPOS_DEF double ioupos_dsc_eval_organ_std(const ioupos_dsc_eval *e, int c) {
  double m, v;
  if (!e || c < 1 || c >= e->K || e->count[c] == 0) return NAN;
  m = e->sum[c] / (double)e->count[c];
  v = e->sumsq[c] / (double)e->count[c] - m * m;
  return v > 0.0 ? sqrt(v) : 0.0;
}

/* The FLARE convention: each organ's mean over its counted cases first, then the unweighted mean
   over organs, so a small organ weighs as much as the liver whatever its case count. */
IOUPOS_DEF double ioupos_dsc_eval_mean(const ioupos_dsc_eval *e, int *n_used) {
  int c, n = 0;
  double s = 0.0;
  if (n_used) *n_used = 0;
  if (!e) return NAN;
  for (c = 1; c < e->K; ++c)
    if (e->count[c] > 0) s += e->sum[c] / (double)e->count[c], ++n;
  if (n_used) *n_used = n;
  return n > 0 ? s / n : NAN;
}

IOUPOS_DEF double ioupos_dsc_eval_case_mean(const ioupos_dsc_eval *e, long *n_used) {
  if (n_used) *n_used = e ? e->n_case_means : 0;
  if (!e || e->n_case_means == 0) return NAN;
  return e->case_mean_sum / (double)e->n_case_means;
}

/* -- research metric: DiceMetric per slice -- */

IOUPOS_DEF int ioupos_slice_dice_init(ioupos_slice_dice *a, int K) {
  int rc;
  if (!a) return ioupos__fail(IOUPOS_EINVAL, "ioupos_slice_dice_init: accumulator is NULL");
  if ((rc = ioupos__seg_check_k(K, "ioupos_slice_dice_init")) != 0) return rc;
  memset(a, 0, sizeof *a);
  a->K = K;
  return IOUPOS_OK;
}

IOUPOS_DEF int ioupos_slice_dice_add(ioupos_slice_dice *a, const int *pred, const int *truth,
                                     long n_slices, long slice_pixels, double *slice_means) {
  static const char *fn = "ioupos_slice_dice_add";
  int64_t nt[IOUPOS_SEG_MAX_CLASSES], np[IOUPOS_SEG_MAX_CLASSES], ni[IOUPOS_SEG_MAX_CLASSES];
  long z, i;
  int c, rc;
  if (!a || !pred || !truth) return ioupos__fail(IOUPOS_EINVAL, "%s: a pointer is NULL", fn);
  if (n_slices < 1 || slice_pixels < 1)
    return ioupos__fail(IOUPOS_EINVAL, "%s: %ld slices of %ld pixels; both must be >= 1", fn,
                        n_slices, slice_pixels);
  if ((rc = ioupos__seg_check_k(a->K, fn)) != 0) return rc;
  /* validate everything first, so that a failure adds nothing */
  for (i = 0; i < n_slices * slice_pixels; ++i)
    if (truth[i] < 0 || truth[i] >= a->K || pred[i] < 0 || pred[i] >= a->K)
      return ioupos__fail(IOUPOS_EINVAL, "%s: slice %ld pixel %ld has truth %d, prediction %d; "
                          "class ids must be in [0, %d)", fn, i / slice_pixels, i % slice_pixels,
                          truth[i], pred[i], a->K);
  /* MONAI's compute_channel per slice; ioupos__seg_count cannot fail here (the labels were
     checked) */
  for (z = 0; z < n_slices; ++z) {
    double sum = 0.0;
    int n = 0;
    ioupos__seg_count(nt, np, ni, pred + z * slice_pixels, truth + z * slice_pixels,
                      slice_pixels, a->K, z * slice_pixels, fn);
    for (c = 0; c < a->K; ++c) {
      double d;
      if (nt[c] == 0) continue; /* ignore_empty: NaN, dropped */
      d = 2.0 * (double)ni[c] / (double)(nt[c] + np[c]);
      sum += d;
      ++n;
      a->class_sum[c] += d;
      ++a->class_count[c];
    }
    ++a->n_slices;
    if (n > 0) {
      a->sum += sum / n;
      ++a->n_valid;
    }
    if (slice_means) slice_means[z] = n > 0 ? sum / n : NAN;
  }
  return IOUPOS_OK;
}

/* MONAI's aggregate gives 0 when no slice has a value; NaN is reserved for nothing added, so an
   empty evaluation is never mistaken for a score of 0. */
IOUPOS_DEF double ioupos_slice_dice_mean(const ioupos_slice_dice *a) {
  if (!a || a->n_slices == 0) return NAN;
  return a->n_valid > 0 ? a->sum / (double)a->n_valid : 0.0;
}

IOUPOS_DEF double ioupos_slice_dice_class_mean(const ioupos_slice_dice *a, int c) {
  if (!a || c < 0 || c >= a->K || a->class_count[c] == 0) return NAN;
  return a->class_sum[c] / (double)a->class_count[c];
}

/* -- tables -- */

/* The output builder of the table functions. It keeps counting after the buffer is full
   (vsnprintf without room only measures), so a call with a small or NULL buffer reports the
   exact size needed (ERANGE, *len) and the caller can allocate and call again. */
typedef struct ioupos__sbuf {
  char *buf;
  size_t cap, len;
} ioupos__sbuf;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void ioupos__sb_printf(ioupos__sbuf *b, const char *fmt, ...) {
  va_list ap;
  int n;
  size_t room = b->buf && b->len < b->cap ? b->cap - b->len : 0;
  va_start(ap, fmt);
  n = vsnprintf(room ? b->buf + b->len : NULL, room, fmt, ap);
  va_end(ap);
  if (n > 0) b->len += (size_t)n;
}

/* a JSON number, or null for NaN / infinity */
static void ioupos__sb_num(ioupos__sbuf *b, double v) {
  if (v != v || v - v != 0.0) ioupos__sb_printf(b, "null");
  else ioupos__sb_printf(b, "%.10g", v);
}

/* A JSON string: quotes and backslashes escaped, control characters as 6-character unicode
   escapes, every other byte (UTF-8 names included) as is. */
static void ioupos__sb_jstr(ioupos__sbuf *b, const char *s) {
  ioupos__sb_printf(b, "\"");
  for (; *s; ++s) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') ioupos__sb_printf(b, "\\%c", ch);
    else if (ch < 0x20) ioupos__sb_printf(b, "\\u%04x", ch);
    else ioupos__sb_printf(b, "%c", ch);
  }
  ioupos__sb_printf(b, "\"");
}

/* the caller's name for class c, else the FLARE22 label name, else "class <c>" formatted in tmp */
static const char *ioupos__seg_name(const char *const *names, int c, char *tmp, size_t cap) {
  if (names && names[c]) return names[c];
  if (c < IOUPOS_LABEL_COUNT) return ioupos_label_name(c);
  snprintf(tmp, cap, "class %d", c);
  return tmp;
}

/* On ERANGE the buffer, if any, holds an empty string, never a cut table that could pass for a
   whole one. */
static int ioupos__sb_finish(ioupos__sbuf *b, size_t *len, const char *fn) {
  if (len) *len = b->len;
  if (!b->buf || b->len + 1 > b->cap) {
    if (b->buf && b->cap > 0) b->buf[0] = '\0';
    return ioupos__fail(IOUPOS_ERANGE, "%s: the output needs %zu bytes (with the NUL), the "
                        "buffer has %zu", fn, b->len + 1, b->buf ? b->cap : (size_t)0);
  }
  return IOUPOS_OK;
}

static void ioupos__sb_fix(ioupos__sbuf *b, double v, int width) {
  if (v != v) ioupos__sb_printf(b, "%*s", width, "n/a");
  else ioupos__sb_printf(b, "%*.4f", width, v);
}

IOUPOS_DEF int ioupos_dsc_table(char *buf, size_t cap, size_t *len, const ioupos_dsc_eval *e,
                                const ioupos_slice_dice *research, const char *const *names) {
  static const char *fn = "ioupos_dsc_table";
  ioupos__sbuf b;
  char tmp[32];
  int c, no;
  long nc;
  double m;
  if (!e) return ioupos__fail(IOUPOS_EINVAL, "%s: accumulator is NULL", fn);
  b.buf = buf, b.cap = buf ? cap : 0, b.len = 0;
  ioupos__sb_printf(&b, "%3s  %-20s %8s %8s %6s %6s\n", "id", "organ", "DSC", "std", "cases",
                    "empty");
  for (c = 1; c < e->K; ++c) {
    ioupos__sb_printf(&b, "%3d  %-20s ", c, ioupos__seg_name(names, c, tmp, sizeof tmp));
    ioupos__sb_fix(&b, ioupos_dsc_eval_organ_mean(e, c), 8);
    ioupos__sb_printf(&b, " ");
    ioupos__sb_fix(&b, ioupos_dsc_eval_organ_std(e, c), 8);
    ioupos__sb_printf(&b, " %6ld %6ld\n", e->count[c], e->n_empty[c]);
  }
  m = ioupos_dsc_eval_mean(e, &no);
  ioupos__sb_printf(&b, "     %-20s ", "mean over organs");
  ioupos__sb_fix(&b, m, 8);
  ioupos__sb_printf(&b, "   (%d organs, %ld cases%s)\n", no, e->n_cases,
                    e->empty_policy == IOUPOS_DSC_EMPTY_ONE ? ", absent from both = 1" : "");
  m = ioupos_dsc_eval_case_mean(e, &nc);
  ioupos__sb_printf(&b, "     %-20s ", "mean over cases");
  ioupos__sb_fix(&b, m, 8);
  ioupos__sb_printf(&b, "   (%ld cases)\n", nc);
  if (research) {
    ioupos__sb_printf(&b, "     %-20s ", "research slice Dice");
    ioupos__sb_fix(&b, ioupos_slice_dice_mean(research), 8);
    ioupos__sb_printf(&b, "   (%ld slices, MONAI DiceMetric per slice)\n", research->n_slices);
  }
  return ioupos__sb_finish(&b, len, fn);
}

IOUPOS_DEF int ioupos_dsc_table_json(char *buf, size_t cap, size_t *len, const ioupos_dsc_eval *e,
                                     const ioupos_slice_dice *research, const char *const *names) {
  static const char *fn = "ioupos_dsc_table_json";
  ioupos__sbuf b;
  char tmp[32];
  int c, no;
  long nc;
  double m;
  if (!e) return ioupos__fail(IOUPOS_EINVAL, "%s: accumulator is NULL", fn);
  b.buf = buf, b.cap = buf ? cap : 0, b.len = 0;
  ioupos__sb_printf(&b, "{\"classes\":%d,\"cases\":%ld,\"empty_policy\":\"%s\",\"organs\":[", e->K,
                    e->n_cases, e->empty_policy == IOUPOS_DSC_EMPTY_ONE ? "one" : "skip");
  for (c = 1; c < e->K; ++c) {
    ioupos__sb_printf(&b, "%s{\"id\":%d,\"name\":", c > 1 ? "," : "", c);
    ioupos__sb_jstr(&b, ioupos__seg_name(names, c, tmp, sizeof tmp));
    ioupos__sb_printf(&b, ",\"dsc\":");
    ioupos__sb_num(&b, ioupos_dsc_eval_organ_mean(e, c));
    ioupos__sb_printf(&b, ",\"std\":");
    ioupos__sb_num(&b, ioupos_dsc_eval_organ_std(e, c));
    ioupos__sb_printf(&b, ",\"cases\":%ld,\"empty\":%ld}", e->count[c], e->n_empty[c]);
  }
  m = ioupos_dsc_eval_mean(e, &no);
  ioupos__sb_printf(&b, "],\"mean_dsc\":");
  ioupos__sb_num(&b, m);
  ioupos__sb_printf(&b, ",\"organs_averaged\":%d,\"mean_case_dsc\":", no);
  m = ioupos_dsc_eval_case_mean(e, &nc);
  ioupos__sb_num(&b, m);
  ioupos__sb_printf(&b, ",\"cases_averaged\":%ld", nc);
  if (research) {
    ioupos__sb_printf(&b, ",\"research\":{\"metric\":\"monai_dicemetric_per_slice\",\"dice\":");
    ioupos__sb_num(&b, ioupos_slice_dice_mean(research));
    ioupos__sb_printf(&b, ",\"slices\":%ld,\"classes\":[", research->n_slices);
    for (c = 0; c < research->K; ++c) {
      ioupos__sb_printf(&b, "%s{\"id\":%d,\"name\":", c > 0 ? "," : "", c);
      ioupos__sb_jstr(&b, ioupos__seg_name(names, c, tmp, sizeof tmp));
      ioupos__sb_printf(&b, ",\"dice\":");
      ioupos__sb_num(&b, ioupos_slice_dice_class_mean(research, c));
      ioupos__sb_printf(&b, ",\"slices\":%ld}", research->class_count[c]);
    }
    ioupos__sb_printf(&b, "]}");
  }
  ioupos__sb_printf(&b, "}");
  return ioupos__sb_finish(&b, len, fn);
}

IOUPOS_DEF int ioupos_dsc_case_json(char *buf, size_t cap, size_t *len, const ioupos_dsc_case *cs,
                                    const char *case_name, const char *const *names) {
  static const char *fn = "ioupos_dsc_case_json";
  ioupos__sbuf b;
  char tmp[32];
  int c;
  if (!cs) return ioupos__fail(IOUPOS_EINVAL, "%s: case is NULL", fn);
  if (cs->K < 2 || cs->K > IOUPOS_SEG_MAX_CLASSES)
    return ioupos__fail(IOUPOS_EINVAL, "%s: the case has K %d", fn, cs->K);
  b.buf = buf, b.cap = buf ? cap : 0, b.len = 0;
  ioupos__sb_printf(&b, "{");
  if (case_name) {
    ioupos__sb_printf(&b, "\"case\":");
    ioupos__sb_jstr(&b, case_name);
    ioupos__sb_printf(&b, ",");
  }
  ioupos__sb_printf(&b, "\"mean\":");
  ioupos__sb_num(&b, cs->mean);
  ioupos__sb_printf(&b, ",\"organs_defined\":%d,\"dsc\":{", cs->n_defined);
  for (c = 1; c < cs->K; ++c) {
    if (c > 1) ioupos__sb_printf(&b, ",");
    ioupos__sb_jstr(&b, ioupos__seg_name(names, c, tmp, sizeof tmp));
    ioupos__sb_printf(&b, ":");
    ioupos__sb_num(&b, cs->defined[c] ? cs->dsc[c] : NAN);
  }
  ioupos__sb_printf(&b, "}}");
  return ioupos__sb_finish(&b, len, fn);
}

#ifdef __cplusplus
}
#endif

/* ---- 21. SwinUNETR: the segmentation model -------------------------------------------------- */

/* MONAI's SwinUNETR passes dropout_path_rate 0.0 to its SwinTransformer unless told otherwise,
   so fine-tuning runs without drop-path by default; 14 = FLARE22's 13 organs and the background. */
IOUPOS_DEF void ioupos_swinunetr_config_default(ioupos_swinunetr_config *c, int spatial_dims) {
  ioupos_swin_config_default(&c->enc, spatial_dims);
  c->enc.drop_path_rate = 0.0f;
  c->out_channels = 14;
}

/* a conv weight [o][i][k^dims] (or transposed [i][o][k^dims]) with PyTorch's default init:
   U(+-1/sqrt(fan_in)), fan_in = size(1) * k^dims as torch computes it.
   That bound is what torch's conv reset_parameters, kaiming_uniform_(a = sqrt 5), amounts to.
   For the transposed conv, whose torch layout is [Cin][Cout][k...], size(1) is Cout: the
   caller passes d1 = Cout there, so the bound is torch's in that case too. */
static int ioupos__reg_conv(ioupos_tensor_table *tt, int *w, int d0, int d1, int k, int dims,
                            const char *prefix, const char *name) {
  int64_t sh[6];
  int d, kk = 1;
  sh[0] = d0;
  sh[1] = d1;
  for (d = 0; d < dims; ++d) {
    sh[2 + d] = k;
    kk *= k;
  }
  sh[2 + dims] = 0;
  *w = ioupos__tadd(tt, IOUPOS_ST_F32, 0, IOUPOS_INIT_UNIFORM, sh, "%s%s", prefix, name);
  if (*w < 0) return *w;
  tt->t[*w].init_scale = 1.0f / sqrtf((float)d1 * (float)kk);
  return 0;
}

/* The names follow MONAI's module tree: UnetrBasicBlock wraps its UnetResBlock as .layer,
   UnetrUpBlock holds .transp_conv and .conv_block, and every MONAI Convolution keeps its torch
   conv as .conv, hence encoder1.layer.conv1.conv.weight and decoder5.transp_conv.conv.weight. A
   decoder's resblock reads the concatenation (2 cout channels), so it always has conv3; an
   encoder block has it only where cin != cout (encoder1). Registration follows MONAI's order
   (swinViT, encoder1..4, encoder10, decoder5..1, out), so the table lists tensors as the state
   dict does. The instance norms have no parameters (affine False) and register nothing. */
IOUPOS_DEF int ioupos_swinunetr_init(ioupos_swinunetr *m, const ioupos_swinunetr_config *cfg,
                                     ioupos_tensor_table *tt, const char *prefix) {
  static const char *const names[10] = {"encoder1", "encoder2", "encoder3", "encoder4",
                                        "encoder10", "decoder5", "decoder4", "decoder3",
                                        "decoder2", "decoder1"};
  char pre[IOUPOS_TENSOR_NAME_MAX];
  int C = cfg->enc.embed_dim, nd = cfg->enc.spatial_dims, i, rc;
  /* (cin, cout, level of the output) of each block, MONAI's SwinUNETR */
  const int io[10][3] = {{cfg->enc.in_chans, C, 0}, {C, C, 1}, {2 * C, 2 * C, 2},
                         {4 * C, 4 * C, 3}, {16 * C, 16 * C, 5}, {16 * C, 8 * C, 4},
                         {8 * C, 4 * C, 3}, {4 * C, 2 * C, 2}, {2 * C, C, 1}, {C, C, 0}};
  memset(m, 0, sizeof *m);
  m->cfg = *cfg;
  if (cfg->out_channels < 1 || cfg->out_channels > 4096)
    return ioupos__fail(IOUPOS_EINVAL, "`n_classes` %d out of range", cfg->out_channels);
  snprintf(pre, sizeof pre, "%sswinViT.", prefix);
  if ((rc = ioupos_swin_encoder_init(&m->enc, &cfg->enc, tt, pre)) != 0) return rc;
  for (i = 0; i < 10; ++i) {
    ioupos_swinunetr_block *b = &m->blk[i];
    int up = i >= 5, rin = up ? 2 * io[i][1] : io[i][0];
    b->cin = io[i][0];
    b->cout = io[i][1];
    b->level = io[i][2];
    b->w3 = b->wt = -1;
    snprintf(pre, sizeof pre, "%s%s.%s", prefix, names[i], up ? "conv_block." : "layer.");
    if ((rc = ioupos__reg_conv(tt, &b->w1, b->cout, rin, 3, nd, pre, "conv1.conv.weight")) ||
        (rc = ioupos__reg_conv(tt, &b->w2, b->cout, b->cout, 3, nd, pre, "conv2.conv.weight")) ||
        (rin != b->cout &&
         (rc = ioupos__reg_conv(tt, &b->w3, b->cout, rin, 1, nd, pre, "conv3.conv.weight"))))
      return rc;
    if (up) {
      snprintf(pre, sizeof pre, "%s%s.", prefix, names[i]);
      if ((rc = ioupos__reg_conv(tt, &b->wt, b->cin, b->cout, 2, nd, pre,
                                 "transp_conv.conv.weight")) != 0)
        return rc;
    }
  }
  snprintf(pre, sizeof pre, "%sout.conv.", prefix);
  if ((rc = ioupos__reg_conv(tt, &m->out_w, cfg->out_channels, C, 1, nd, pre, "conv.weight")) != 0)
    return rc;
  {
    int64_t sb[2];
    sb[0] = cfg->out_channels;
    sb[1] = 0;
    m->out_b = ioupos__tadd(tt, IOUPOS_ST_F32, 0, IOUPOS_INIT_UNIFORM, sb, "%sout.conv.conv.bias",
                            prefix);
    if (m->out_b < 0) return m->out_b;
    tt->t[m->out_b].init_scale = 1.0f / sqrtf((float)C);
  }
  return 0;
}

/* Releases both plans, the decoder's and the encoder's; the parameter indices stay. */
IOUPOS_DEF void ioupos_swinunetr_free(ioupos_swinunetr *m) {
  if (!m) return;
  if (m->be) {
    m->be->release(m->act);
    m->be->release(m->scratch);
    m->be->release(m->grads);
  }
  m->act = m->scratch = m->grads = NULL;
  m->batch = 0;
  ioupos_swin_encoder_free(&m->enc);
}

/* positions of the map at `level`.
   Also writes the map's sizes, the input's halved `level` times, into shape[0 .. dims): exact,
   because plan accepts only multiples of 32. */
static size_t ioupos__unetr_npos(const ioupos_swinunetr *m, int level, int *shape) {
  size_t n = 1;
  int d;
  for (d = 0; d < m->cfg.enc.spatial_dims; ++d) {
    shape[d] = m->shape[d] >> level;
    n *= (size_t)shape[d];
  }
  return n;
}

/* The sizes are checked first because every level must halve exactly, or an up block's doubled
   map would not match the size of its skip. The encoder is planned on every
   call (cheap when unchanged); the decoder's memory is rebuilt only when batch or shape change.
   Three backend allocations:
     act      the channels-first hidden states hs_0..hs_4, then per block its output and its saved
              activations, then the logits;
     grads    per hidden state its gradient channels-first (g_hs) and transposed back to
              channels-last for the encoder (g_last), then per block its output's gradient;
              zeroed by every backward;
     scratch  the largest any block needs: blocks run one at a time and keep nothing in it.
   After an allocation failure the decoder is unplanned (act NULL). */
IOUPOS_DEF int ioupos_swinunetr_plan(ioupos_swinunetr *m, ioupos_params *p, int batch,
                                     const int *shape) {
  const ioupos_backend *be = p->be;
  int nd = m->cfg.enc.spatial_dims, d, i, k, same = m->act && m->batch == batch, rc;
  int B = batch, sh[3];
  size_t off = 0, goff = 0, scr = 0;
  for (d = 0; d < nd; ++d) {
    if (shape[d] < 32 || shape[d] % 32 != 0)
      return ioupos__fail(IOUPOS_EINVAL,
                          "SwinUNETR needs input sizes that are multiples of 32 (the five 2x "
                          "downsamplings), got %d (`crop` / the sliding-window roi)",
                          shape[d]);
    same = same && m->shape[d] == shape[d];
  }
  if ((rc = ioupos_swin_encoder_plan(&m->enc, p, batch, shape)) != 0) return rc;
  if (same) return 0;
  be = p->be;
  if (m->be) {
    m->be->release(m->act);
    m->be->release(m->scratch);
    m->be->release(m->grads);
    m->act = m->scratch = m->grads = NULL;
  }
  m->be = be;
  m->batch = batch;
  for (d = 0; d < 3; ++d) m->shape[d] = d < nd ? shape[d] : 1;
  for (k = 0; k < 5; ++k) {
    size_t n = ioupos__unetr_npos(m, k + 1, sh) * (size_t)B * (size_t)(m->cfg.enc.embed_dim << k);
    m->a_hs[k] = off;
    off += n;
    m->g_hs[k] = goff;
    goff += n;
    m->g_last[k] = goff;
    goff += n;
  }
  for (i = 0; i < 10; ++i) {
    ioupos_swinunetr_block *b = &m->blk[i];
    size_t nout = ioupos__unetr_npos(m, b->level, sh) * (size_t)B * (size_t)b->cout, a, s;
    b->a_out = off;
    off += nout;
    b->g_out = goff;
    goff += nout;
    if (i < 5) {
      a = ioupos_unet_resblock_acts_size(nd, B, b->cin, sh, 3, b->cout);
      s = ioupos_unet_resblock_scratch_size(nd, B, b->cin, sh, 3, b->cout);
    } else {
      int ish[3];
      ioupos__unetr_npos(m, b->level + 1, ish);
      a = ioupos_unetr_upblock_acts_size(nd, B, ish, 3, b->cout);
      s = ioupos_unetr_upblock_scratch_size(nd, B, b->cin, ish, 3, b->cout);
    }
    b->a_acts = off;
    off += a;
    if (s > scr) scr = s;
  }
  m->a_logits = off;
  off += ioupos__unetr_npos(m, 0, sh) * (size_t)B * (size_t)m->cfg.out_channels;
  m->act_n = off;
  m->grads_n = goff;
  m->scratch_n = scr;
  m->act = (float *)be->alloc(off * sizeof(float));
  m->grads = (float *)be->alloc((goff ? goff : 1) * sizeof(float));
  m->scratch = (float *)be->alloc((scr ? scr : 1) * sizeof(float));
  if (!m->act || !m->grads || !m->scratch) {
    be->release(m->act);
    be->release(m->grads);
    be->release(m->scratch);
    m->act = m->grads = m->scratch = NULL;
    m->batch = 0;
    return ioupos__fail(IOUPOS_ENOMEM, "out of memory for SwinUNETR's activations (%zu MB for batch %d)",
                        (off + goff + scr) * sizeof(float) >> 20, batch);
  }
  return 0;
}

/* inputs of block i: (inp, skip) */
static void ioupos__unetr_inputs(const ioupos_swinunetr *m, int i, const float *x, const float **inp,
                                 const float **skip) {
  const float *A = m->act;
  static const int hs_of[5] = {-1, 0, 1, 2, 4}; /* encoder1..4, 10 read x, hs0, hs1, hs2, hs4 */
  *skip = NULL;
  if (i < 5) {
    *inp = i == 0 ? x : A + m->a_hs[hs_of[i]];
  } else {
    *inp = A + m->blk[i == 5 ? 4 : i - 1].a_out;
    /* decoder5's skip is hs3; decoder4..1 (blocks 6..9) take encoder4..1's (blocks 3..0) */
    *skip = i == 5 ? A + m->a_hs[3] : A + m->blk[9 - i].a_out;
  }
}

/* MONAI's SwinUNETR.forward: the encoder, its five stage outputs transposed once to
   channels-first, the ten blocks in index order (each reads only x, the hidden states and the
   outputs of blocks before it), then the out block. Every operation goes through the backend
   table, so this same code runs on the CPU and on CUDA. x is referenced, not copied: it must
   stay unchanged until the backward, which reads it again (encoder1's convolutions). */
IOUPOS_DEF int ioupos_swinunetr_forward(ioupos_swinunetr *m, const ioupos_params *p,
                                        const float *x, int train, ioupos_rng *rng) {
  const ioupos_backend *be = m->be;
  int nd = m->cfg.enc.spatial_dims, B = m->batch, i, k, rc, sh[3];
  if (!m->act) return ioupos__fail(IOUPOS_EINVAL, "SwinUNETR forward before its plan");
  if ((rc = ioupos_swin_encoder_forward(&m->enc, p, x, train, rng)) != 0) return rc;
  m->x = x;
  for (k = 0; k < 5; ++k) /* MONAI's hidden states are channels-first */
    be->to_channels_first(m->act + m->a_hs[k], ioupos_swin_encoder_output(&m->enc, k), B,
                          ioupos__unetr_npos(m, k + 1, sh), m->cfg.enc.embed_dim << k);
  for (i = 0; i < 10; ++i) {
    const ioupos_swinunetr_block *b = &m->blk[i];
    const float *inp, *skip;
    ioupos__unetr_inputs(m, i, x, &inp, &skip);
    if (i < 5) {
      ioupos__unetr_npos(m, b->level, sh);
      rc = be->unet_resblock_forward(m->act + b->a_out, m->act + b->a_acts, m->scratch, inp,
                                     IOUPOS__P(b->w1), IOUPOS__P(b->w2),
                                     b->w3 >= 0 ? IOUPOS__P(b->w3) : NULL, nd, B, b->cin, sh, 3,
                                     b->cout);
    } else {
      ioupos__unetr_npos(m, b->level + 1, sh);
      rc = be->unetr_upblock_forward(m->act + b->a_out, m->act + b->a_acts, m->scratch, inp, skip,
                                     IOUPOS__P(b->wt), IOUPOS__P(b->w1), IOUPOS__P(b->w2),
                                     IOUPOS__P(b->w3), nd, B, b->cin, sh, 3, b->cout);
    }
    if (rc) return rc;
  }
  ioupos__unetr_npos(m, 0, sh);
  rc = be->unet_outblock_forward(m->act + m->a_logits, m->act + m->blk[9].a_out,
                                 IOUPOS__P(m->out_w), IOUPOS__P(m->out_b), nd, B,
                                 m->cfg.enc.embed_dim, sh, m->cfg.out_channels);
  if (rc) return rc;
  return be->sync();
}

IOUPOS_DEF const float *ioupos_swinunetr_logits(const ioupos_swinunetr *m) {
  return m->act ? m->act + m->a_logits : NULL;
}

/* The activations' gradients live in m->grads, zeroed first because every block backward
   ACCUMULATES into its input's and its skip's gradient. Blocks run in reverse index order, so
   each block's output gradient is complete before its own backward: a decoder feeds the previous
   decoder (or encoder10) and its skip's producer (hs_3 or encoder1..4), an encoder block feeds
   its hidden state or, for encoder1, dx. The hidden-state gradients are then transposed back to
   channels-last and handed to the Swin encoder as its stage-output gradients, with no feature
   gradient (SwinUNETR does not pool). dx thus gets both encoder1's and the patch embedding's
   parts. Parameter gradients ACCUMULATE into p->grad. */
IOUPOS_DEF int ioupos_swinunetr_backward(ioupos_swinunetr *m, ioupos_params *p,
                                         const float *dlogits, float *dx) {
  const ioupos_backend *be = m->be;
  int nd = m->cfg.enc.spatial_dims, B = m->batch, i, k, rc, sh[3];
  float *G = m->grads;
  const float *dlast[5];
  if (!m->act || !p->grad) return ioupos__fail(IOUPOS_EINVAL, "SwinUNETR backward without a forward");
  be->zero(G, m->grads_n * sizeof(float));
  ioupos__unetr_npos(m, 0, sh);
  rc = be->unet_outblock_backward(G + m->blk[9].g_out, IOUPOS__G(m->out_w), IOUPOS__G(m->out_b),
                                  dlogits, m->act + m->blk[9].a_out, IOUPOS__P(m->out_w), nd, B,
                                  m->cfg.enc.embed_dim, sh, m->cfg.out_channels);
  for (i = 9; rc == 0 && i >= 0; --i) {
    const ioupos_swinunetr_block *b = &m->blk[i];
    static const int hs_of[5] = {-1, 0, 1, 2, 4};
    const float *inp, *skip;
    float *dinp, *dskip = NULL;
    ioupos__unetr_inputs(m, i, m->x, &inp, &skip);
    if (i < 5) {
      dinp = i == 0 ? dx : G + m->g_hs[hs_of[i]];
      ioupos__unetr_npos(m, b->level, sh);
      rc = be->unet_resblock_backward(dinp, IOUPOS__G(b->w1), IOUPOS__G(b->w2),
                                      b->w3 >= 0 ? IOUPOS__G(b->w3) : NULL, m->scratch,
                                      G + b->g_out, m->act + b->a_acts, inp, IOUPOS__P(b->w1),
                                      IOUPOS__P(b->w2), b->w3 >= 0 ? IOUPOS__P(b->w3) : NULL, nd,
                                      B, b->cin, sh, 3, b->cout);
    } else {
      dinp = G + m->blk[i == 5 ? 4 : i - 1].g_out;
      dskip = i == 5 ? G + m->g_hs[3] : G + m->blk[9 - i].g_out;
      ioupos__unetr_npos(m, b->level + 1, sh);
      rc = be->unetr_upblock_backward(dinp, dskip, IOUPOS__G(b->wt), IOUPOS__G(b->w1),
                                      IOUPOS__G(b->w2), IOUPOS__G(b->w3), m->scratch,
                                      G + b->g_out, m->act + b->a_acts, inp, IOUPOS__P(b->wt),
                                      IOUPOS__P(b->w1), IOUPOS__P(b->w2), IOUPOS__P(b->w3), nd,
                                      B, b->cin, sh, 3, b->cout);
    }
  }
  if (rc) return rc;
  for (k = 0; k < 5; ++k) {
    be->to_channels_first_backward(G + m->g_last[k], G + m->g_hs[k], B,
                                   ioupos__unetr_npos(m, k + 1, sh), m->cfg.enc.embed_dim << k);
    dlast[k] = G + m->g_last[k];
  }
  return ioupos_swin_encoder_backward(&m->enc, p, dlast, NULL, dx);
}

/* ---- 22. Fine-tuning ---------------------------------------------------------------------- */

IOUPOS_DEF int ioupos_slice_name_parse(const char *file, char *case_name, size_t cap, long *z) {
  const char *base, *us, *p;
  size_t len;
  long v = 0;
  if (!file || !case_name || !z)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_slice_name_parse: NULL argument");
  base = strrchr(file, '/');
  base = base ? base + 1 : file;
  len = strlen(base);
  if (len < 4 || base[len - 4] != '.' || tolower((unsigned char)base[len - 3]) != 'p' ||
      tolower((unsigned char)base[len - 2]) != 'n' || tolower((unsigned char)base[len - 1]) != 'g')
    return ioupos__fail(IOUPOS_EINVAL, "%s: not a PNG slice name <case>_<z>.png", file);
  len -= 4;
  for (us = base + len; us > base && us[-1] != '_'; --us) {}
  if (us == base || us - 1 == base || us == base + len)
    return ioupos__fail(IOUPOS_EINVAL,
                        "%s: not a slice name <case>_<z>.png (ioupos-prep's naming: the case, "
                        "'_', the axial index)", file);
  for (p = us; p < base + len; ++p) {
    if (!isdigit((unsigned char)*p) || v > 99999999L)
      return ioupos__fail(IOUPOS_EINVAL,
                          "%s: not a slice name <case>_<z>.png (z must be a number below 10^9)",
                          file);
    v = 10 * v + (*p - '0');
  }
  if ((size_t)(us - 1 - base) + 1 > cap)
    return ioupos__fail(IOUPOS_EINVAL, "%s: case name too long", file);
  memcpy(case_name, base, (size_t)(us - 1 - base));
  case_name[us - 1 - base] = '\0';
  *z = v;
  return 0;
}

IOUPOS_DEF void ioupos_seg_set_free(ioupos_seg_set *s) {
  int c;
  if (!s) return;
  for (c = 0; c < s->n_cases; ++c) {
    IOUPOS_FREE(s->cases[c].name);
    IOUPOS_FREE(s->cases[c].slices);
  }
  IOUPOS_FREE(s->cases);
  ioupos_dataset_free(&s->ds);
  memset(s, 0, sizeof *s);
}

typedef struct ioupos__ft_slice {
  char name[256];
  long z;
  int index;
} ioupos__ft_slice;

static int ioupos__ft_slice_cmp(const void *a, const void *b) {
  const ioupos__ft_slice *x = (const ioupos__ft_slice *)a, *y = (const ioupos__ft_slice *)b;
  int c = strcmp(x->name, y->name);
  if (c) return c;
  return x->z < y->z ? -1 : x->z > y->z;
}

IOUPOS_DEF int ioupos_seg_set_scan(ioupos_seg_set *s, const char *dir) {
  char *ldir = NULL;
  ioupos__ft_slice *sl = NULL;
  size_t n;
  int rc, i, c;
  if (!s || !dir) return ioupos__fail(IOUPOS_EINVAL, "ioupos_seg_set_scan: NULL argument");
  memset(s, 0, sizeof *s);
  n = strlen(dir) + 8;
  if (!(ldir = (char *)ioupos__calloc(n, 1)))
    return ioupos__fail(IOUPOS_ENOMEM, "out of memory scanning %s", dir);
  snprintf(ldir, n, "%s/labels", dir);
  rc = ioupos_dataset_scan(dir, ldir, &s->ds);
  IOUPOS_FREE(ldir);
  if (rc) return rc;
  sl = (ioupos__ft_slice *)ioupos__calloc((size_t)s->ds.n + 1, sizeof *sl);
  if (!sl) {
    rc = ioupos__fail(IOUPOS_ENOMEM, "out of memory scanning %s", dir);
    goto fail;
  }
  for (i = 0; i < s->ds.n; ++i) {
    if ((rc = ioupos_slice_name_parse(s->ds.images[i], sl[i].name, sizeof sl[i].name,
                                      &sl[i].z)) != 0)
      goto fail;
    sl[i].index = i;
  }
  qsort(sl, (size_t)s->ds.n, sizeof *sl, ioupos__ft_slice_cmp);
  for (i = 0; i < s->ds.n; ++i)
    if (i == 0 || strcmp(sl[i].name, sl[i - 1].name) != 0) ++s->n_cases;
  s->cases = (ioupos_seg_case *)ioupos__calloc((size_t)s->n_cases + 1, sizeof *s->cases);
  if (!s->cases) {
    rc = ioupos__fail(IOUPOS_ENOMEM, "out of memory scanning %s", dir);
    goto fail;
  }
  for (i = 0, c = -1; i < s->ds.n; ++i) {
    ioupos_seg_case *cs;
    if (i == 0 || strcmp(sl[i].name, sl[i - 1].name) != 0) {
      int j = i;
      cs = &s->cases[++c];
      while (j < s->ds.n && strcmp(sl[j].name, sl[i].name) == 0) ++j;
      cs->name = (char *)ioupos__calloc(strlen(sl[i].name) + 1, 1);
      cs->slices = (int *)ioupos__calloc((size_t)(j - i), sizeof(int));
      if (!cs->name || !cs->slices) {
        rc = ioupos__fail(IOUPOS_ENOMEM, "out of memory scanning %s", dir);
        goto fail;
      }
      memcpy(cs->name, sl[i].name, strlen(sl[i].name) + 1);
    } else if (sl[i].z == sl[i - 1].z) {
      rc = ioupos__fail(IOUPOS_EINVAL, "%s and %s: two slices of case '%s' with z = %ld",
                        s->ds.images[sl[i - 1].index], s->ds.images[sl[i].index], sl[i].name,
                        sl[i].z);
      goto fail;
    }
    cs = &s->cases[c];
    cs->slices[cs->n++] = sl[i].index;
  }
  IOUPOS_FREE(sl);
  return 0;
fail:
  IOUPOS_FREE(sl);
  ioupos_seg_set_free(s);
  return rc;
}

IOUPOS_DEF int ioupos_seg_set_find(const ioupos_seg_set *s, const char *name) {
  int lo = 0, hi = s ? s->n_cases - 1 : -1;
  while (lo <= hi) {
    int mid = lo + (hi - lo) / 2, c = strcmp(s->cases[mid].name, name);
    if (c == 0) return mid;
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

/* -- checkpoints -- */

IOUPOS_DEF int ioupos_swinunetr_load(ioupos_swinunetr *m, ioupos_params *p, const char *path,
                                     ioupos_swinunetr_load_info *info) {
  ioupos_st_file f;
  ioupos_swinunetr_load_info li;
  int rc;
  memset(&li, 0, sizeof li);
  if (info) *info = li;
  if (!m || !p || !path) return ioupos__fail(IOUPOS_EINVAL, "ioupos_swinunetr_load: NULL argument");
  if ((rc = ioupos_safetensors_read(path, &f)) != 0) return rc;
  /* the relative-position buffers must be filled before a load compares them */
  if ((rc = ioupos_swin_encoder_buffers(&m->enc, p)) != 0) goto done;
  if (ioupos_safetensors_find(&f, "out.conv.conv.weight") &&
      ioupos_safetensors_find(&f, "swinViT.patch_embed.proj.weight")) {
    li.whole = 1;
    rc = ioupos_params_load(p, &f, "", "", &li.n_loaded, &li.n_ignored);
  } else {
    li.prefix = ioupos_swin_find_prefix(&f);
    if (!li.prefix) {
      rc = ioupos__fail(IOUPOS_EFORMAT,
                        "%s holds no Swin encoder: none of patch_embed.proj.weight, "
                        "swinViT.patch_embed.proj.weight, backbone.patch_embed.proj.weight, "
                        "module.backbone.patch_embed.proj.weight, "
                        "student.backbone.patch_embed.proj.weight is in it (%d tensors)",
                        path, f.n);
      goto done;
    }
    rc = ioupos_params_load(p, &f, "swinViT.", li.prefix, &li.n_loaded, &li.n_ignored);
  }
  if (rc) {
    char why[1024];
    snprintf(why, sizeof why, "%s", ioupos_failure_reason());
    if (strncmp(why, path, strlen(path)) != 0) /* unless it names the file already */
      rc = ioupos__fail(rc, "%s: %s", path, why);
  }
done:
  ioupos_safetensors_free(&f);
  if (rc == 0 && info) *info = li;
  return rc;
}

/* makes *arr hold at least need elements of elem bytes (keeping the first keep), capacity
   *cap; 1, or 0 when out of memory */
static int ioupos__ft_reserve(void **arr, size_t *cap, size_t need, size_t keep, size_t elem) {
  size_t ncap;
  void *na;
  if (need <= *cap) return 1;
  ncap = *cap * 2 > need ? *cap * 2 : need;
  na = ioupos__calloc(ncap, elem);
  if (!na) return 0;
  if (keep) memcpy(na, *arr, keep * elem);
  IOUPOS_FREE(*arr);
  *arr = na;
  *cap = ncap;
  return 1;
}

/* -- evaluation -- */

IOUPOS_DEF void ioupos_seg_eval_opts_default(ioupos_seg_eval_opts *o) {
  memset(o, 0, sizeof *o);
  o->roi[0] = o->roi[1] = 96;
  o->overlap = 0.25;
  o->sw_batch_size = 64;
  o->empty_policy = IOUPOS_DSC_EMPTY_SKIP;
}

IOUPOS_DEF void ioupos_seg_eval_result_free(ioupos_seg_eval_result *r) {
  if (!r) return;
  IOUPOS_FREE(r->cases);
  memset(r, 0, sizeof *r);
}

/* -- sliding-window prediction: model instances of the predictor's own (planned for the
   chunk sizes the window calls use: IOUPOS_SEG_MODEL_BATCH and a remainder) on the caller's
   parameters */
static int ioupos__ft_model_like(ioupos_swinunetr *m, const ioupos_swinunetr_config *cfg,
                                 const ioupos_params *p) {
  ioupos_tensor_table tt;
  int rc, i;
  memset(&tt, 0, sizeof tt);
  rc = ioupos_swinunetr_init(m, cfg, &tt, "");
  if (rc == 0 && (tt.n != p->table.n || tt.total != p->table.total))
    rc = ioupos__fail(IOUPOS_EINVAL, "evaluation: the parameters are not those of this SwinUNETR "
                      "configuration (%d tensors, expected %d)", p->table.n, tt.n);
  for (i = 0; rc == 0 && i < tt.n; ++i) {
    const ioupos_tensor_info *a = &tt.t[i], *b = &p->table.t[i];
    if (strcmp(a->name, b->name) != 0)
      rc = ioupos__fail(IOUPOS_EINVAL, "evaluation: parameter %d is '%s', expected '%s'", i,
                        b->name, a->name);
    else if (a->ndim != b->ndim || memcmp(a->shape, b->shape, sizeof a->shape) != 0 ||
             a->offset != b->offset || a->dtype != b->dtype)
      rc = ioupos__fail(IOUPOS_EINVAL, "evaluation: parameter '%s' has %zu elements in %d "
                        "dimensions, this SwinUNETR configuration's has %zu in %d", b->name,
                        b->numel, b->ndim, a->numel, a->ndim);
  }
  ioupos_tensor_table_free(&tt);
  return rc;
}

IOUPOS_DEF int ioupos_seg_predictor_init(ioupos_seg_predictor *pr,
                                         const ioupos_swinunetr_config *cfg, ioupos_params *p,
                                         const int roi[2], double overlap, int sw_batch_size) {
  int rc;
  if (!pr || !cfg || !p || !roi)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_seg_predictor_init: NULL argument");
  memset(pr, 0, sizeof *pr);
  if (cfg->enc.spatial_dims != 2 || cfg->enc.in_chans != 1)
    return ioupos__fail(IOUPOS_EINVAL, "evaluation: 2D single-channel models only (slices)");
  if (sw_batch_size < 1)
    return ioupos__fail(IOUPOS_EINVAL, "evaluation: `sw_batch_size` %d must be >= 1",
                        sw_batch_size);
  if (roi[0] < 32 || roi[0] % 32 || roi[1] < 32 || roi[1] % 32)
    return ioupos__fail(IOUPOS_EINVAL, "evaluation: the window %d x %d must be multiples of 32",
                        roi[0], roi[1]);
  /* the first model instance (planned by the first call) checks p against cfg */
  if ((rc = ioupos__ft_model_like(&pr->m[0], cfg, p)) != 0) {
    ioupos_swinunetr_free(&pr->m[0]);
    return rc;
  }
  pr->inited[0] = 1;
  pr->cfg = *cfg;
  pr->p = p;
  pr->roi[0] = roi[0], pr->roi[1] = roi[1];
  pr->overlap = overlap;
  pr->sw_batch_size = sw_batch_size;
  pr->x = (float *)p->be->alloc((size_t)IOUPOS_SEG_MODEL_BATCH * (size_t)roi[0] *
                                (size_t)roi[1] * sizeof(float));
  if (!pr->x) return ioupos__fail(IOUPOS_ENOMEM, "out of memory for the evaluation");
  return 0;
}

/* ioupos_sliding_window's predictor: out[n][K][roi] for in[n][1][roi], in chunks */
static int ioupos__seg_predict_windows(void *ctx, float *in, int n, float *out) {
  ioupos_seg_predictor *pr = (ioupos_seg_predictor *)ctx;
  const ioupos_backend *be = pr->p->be;
  size_t npix = (size_t)pr->roi[0] * (size_t)pr->roi[1];
  size_t nout = npix * (size_t)pr->cfg.out_channels;
  int done, k, rc;
  for (done = 0; done < n; done += IOUPOS_SEG_MODEL_BATCH) {
    int c = n - done < IOUPOS_SEG_MODEL_BATCH ? n - done : IOUPOS_SEG_MODEL_BATCH;
    /* the instance planned for c, else one never planned, else the least recently used one
       re-planned (an unplanned instance has batch 0) */
    for (k = 0; k < 2 && !(pr->inited[k] && pr->m[k].batch == c); ++k) {}
    if (k == 2) {
      k = pr->m[0].batch == 0 ? 0 : pr->m[1].batch == 0 ? 1 : pr->last[0] <= pr->last[1] ? 0 : 1;
      if (!pr->inited[k]) {
        if ((rc = ioupos__ft_model_like(&pr->m[k], &pr->cfg, pr->p)) != 0) return rc;
        pr->inited[k] = 1;
      }
      if ((rc = ioupos_swinunetr_plan(&pr->m[k], pr->p, c, pr->roi)) != 0) return rc;
    }
    pr->last[k] = ++pr->stamp;
    be->upload(pr->x, in + (size_t)done * npix, (size_t)c * npix * sizeof(float));
    if ((rc = ioupos_swinunetr_forward(&pr->m[k], pr->p, pr->x, 0, NULL)) != 0) return rc;
    be->download(out + (size_t)done * nout, ioupos_swinunetr_logits(&pr->m[k]),
                 (size_t)c * nout * sizeof(float));
    if ((rc = be->sync()) != 0) return rc;
  }
  return 0;
}

IOUPOS_DEF int ioupos_seg_predict(ioupos_seg_predictor *pr, float *logits, const float *img,
                                  int h, int w) {
  const int shape[2] = {h, w};
  if (!pr || !pr->x || !logits || !img)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_seg_predict: NULL argument or no predictor");
  return ioupos_sliding_window(logits, pr->cfg.out_channels, img, 1, 2, shape, pr->roi,
                               pr->overlap, pr->sw_batch_size, ioupos__seg_predict_windows, pr);
}

IOUPOS_DEF void ioupos_seg_predictor_free(ioupos_seg_predictor *pr) {
  int k;
  if (!pr) return;
  for (k = 0; k < 2; ++k)
    if (pr->inited[k]) ioupos_swinunetr_free(&pr->m[k]);
  if (pr->x) pr->p->be->release(pr->x);
  memset(pr, 0, sizeof *pr);
}

/* label ids of an 8-bit label PNG: round(v * 255), checked */
static int ioupos__ft_label_ids(const ioupos_image *im, int *ids, int K, const char *path) {
  size_t i, n = (size_t)im->h * (size_t)im->w;
  for (i = 0; i < n; ++i) {
    double v = (double)im->data[i] * 255.0;
    long id = lrint(v);
    if (fabs(v - (double)id) > 1e-3)
      return ioupos__fail(IOUPOS_EFORMAT, "%s: pixel %zu is not an 8-bit label id (grey %g)", path,
                          i, (double)im->data[i]);
    if (id < 0 || id >= K)
      return ioupos__fail(IOUPOS_EINVAL,
                          "%s: label %ld at pixel (%zu, %zu) is outside [0, %d) (`n_classes` %d)",
                          path, id, i / (size_t)im->w, i % (size_t)im->w, K, K);
    ids[i] = (int)id;
  }
  return 0;
}

IOUPOS_DEF int ioupos_swinunetr_evaluate(const ioupos_swinunetr_config *cfg, ioupos_params *p,
                                         const ioupos_seg_set *set,
                                         const ioupos_seg_eval_opts *o, ioupos_seg_eval_result *r) {
  ioupos_seg_predictor pr;
  const int K = cfg ? cfg->out_channels : 0;
  int *pred = NULL, *truth = NULL;
  float *scores = NULL;
  unsigned char *bytes = NULL;
  size_t pred_cap = 0, truth_cap = 0, score_cap = 0, byte_cap = 0;
  int rc = 0, c, s;
  if (!cfg || !p || !set || !o || !r)
    return ioupos__fail(IOUPOS_EINVAL, "ioupos_swinunetr_evaluate: NULL argument");
  memset(r, 0, sizeof *r);
  memset(&pr, 0, sizeof pr);
  if (o->predict_dir && K > 256)
    return ioupos__fail(IOUPOS_EINVAL, "`predict_dir`: %d classes do not fit 8-bit PNGs", K);
  if ((rc = ioupos_dsc_eval_init(&r->dsc, K, o->empty_policy)) != 0) return rc;
  if (o->research && (rc = ioupos_slice_dice_init(&r->research, K)) != 0) return rc;
  r->has_research = o->research != 0;
  if ((rc = ioupos_seg_predictor_init(&pr, cfg, p, o->roi, o->overlap, o->sw_batch_size)) != 0)
    return rc;
  r->cases = (ioupos_dsc_case *)ioupos__calloc((size_t)set->n_cases + 1, sizeof *r->cases);
  if (!r->cases) {
    rc = ioupos__fail(IOUPOS_ENOMEM, "out of memory for the evaluation");
    goto done;
  }
  if (o->predict_dir && (rc = ioupos__mkdirs(o->predict_dir)) != 0) goto done;
  for (c = 0; rc == 0 && c < set->n_cases; ++c) {
    const ioupos_seg_case *cs = &set->cases[c];
    size_t used = 0;
    for (s = 0; rc == 0 && s < cs->n; ++s) {
      const char *ipath = set->ds.images[cs->slices[s]], *lpath = set->ds.labels[cs->slices[s]];
      ioupos_image im, lb;
      size_t npx;
      memset(&im, 0, sizeof im);
      memset(&lb, 0, sizeof lb);
      if ((rc = ioupos_image_load(ipath, &im)) != 0) break;
      if ((rc = ioupos_image_load(lpath, &lb)) != 0) {
        ioupos_image_free(&im);
        break;
      }
      npx = (size_t)im.h * (size_t)im.w;
      if (lb.h != im.h || lb.w != im.w) {
        rc = ioupos__fail(IOUPOS_EFORMAT, "%s is %d x %d but its label %s is %d x %d", ipath,
                          im.h, im.w, lpath, lb.h, lb.w);
      } else if (!ioupos__ft_reserve((void **)&pred, &pred_cap, used + npx, used, sizeof(int)) ||
                 !ioupos__ft_reserve((void **)&truth, &truth_cap, used + npx, used, sizeof(int)) ||
                 !ioupos__ft_reserve((void **)&scores, &score_cap, npx * (size_t)K, 0,
                                     sizeof(float)) ||
                 (o->predict_dir && !ioupos__ft_reserve((void **)&bytes, &byte_cap, npx, 0, 1))) {
        rc = ioupos__fail(IOUPOS_ENOMEM, "out of memory evaluating %s", ipath);
      }
      if (rc == 0) rc = ioupos__ft_label_ids(&lb, truth + used, K, lpath);
      if (rc == 0) {
        rc = ioupos_seg_predict(&pr, scores, im.data, im.h, im.w);
        if (rc) {
          char why[1024];
          snprintf(why, sizeof why, "%s", ioupos_failure_reason());
          rc = ioupos__fail(rc, "%s: %s", ipath, why);
        }
      }
      if (rc == 0) rc = ioupos_argmax_classes(pred + used, scores, 1, K, (long)npx);
      if (rc == 0 && r->has_research)
        rc = ioupos_slice_dice_add(&r->research, pred + used, truth + used, 1, (long)npx, NULL);
      if (rc == 0 && o->predict_dir) {
        const char *base = strrchr(ipath, '/');
        char out[4200];
        size_t q;
        for (q = 0; q < npx; ++q) bytes[q] = (unsigned char)pred[used + q];
        snprintf(out, sizeof out, "%s/%s", o->predict_dir, base ? base + 1 : ipath);
        rc = ioupos_png_write(out, im.w, im.h, 1, bytes);
      }
      used += npx;
      ioupos_image_free(&im);
      ioupos_image_free(&lb);
    }
    if (rc == 0) rc = ioupos_dsc_case_compute(&r->cases[c], pred, truth, (long)used, K);
    if (rc == 0) rc = ioupos_dsc_eval_add(&r->dsc, &r->cases[c]);
    if (rc == 0) ++r->n_cases;
  }
done:
  ioupos_seg_predictor_free(&pr);
  IOUPOS_FREE(pred);
  IOUPOS_FREE(truth);
  IOUPOS_FREE(scores);
  IOUPOS_FREE(bytes);
  if (rc) ioupos_seg_eval_result_free(r);
  return rc;
}

/* a growing string */
typedef struct ioupos__ft_str {
  char *s;
  size_t n, cap;
  int oom;
} ioupos__ft_str;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void ioupos__ft_put(ioupos__ft_str *b, const char *fmt, ...) {
  va_list ap;
  int m;
  if (b->oom) return;
  for (;;) {
    va_start(ap, fmt);
    m = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? b->cap - b->n : 0, fmt, ap);
    va_end(ap);
    if (m < 0) {
      b->oom = 1;
      return;
    }
    if (b->s && b->n + (size_t)m < b->cap) break;
    if (!ioupos__ft_reserve((void **)&b->s, &b->cap, b->n + (size_t)m + 256, b->n, 1)) {
      b->oom = 1;
      return;
    }
  }
  b->n += (size_t)m;
}




static int ioupos__ft_put_table(ioupos__ft_str *b, const ioupos_seg_eval_result *r) {
  size_t len = 0;
  int rc = ioupos_dsc_table_json(NULL, 0, &len, &r->dsc, r->has_research ? &r->research : NULL,
                                 NULL);
  if (rc != IOUPOS_ERANGE && rc != 0) return rc;
  if (b->oom || !ioupos__ft_reserve((void **)&b->s, &b->cap, b->n + len + 1, b->n, 1)) {
    b->oom = 1;
    return 0;
  }
  rc = ioupos_dsc_table_json(b->s + b->n, b->cap - b->n, &len, &r->dsc,
                             r->has_research ? &r->research : NULL, NULL);
  if (rc == 0) b->n += len;
  return rc;
}

static int ioupos__ft_put_case(ioupos__ft_str *b, const ioupos_dsc_case *cs, const char *name) {
  size_t len = 0;
  int rc = ioupos_dsc_case_json(NULL, 0, &len, cs, name, NULL);
  if (rc != IOUPOS_ERANGE && rc != 0) return rc;
  if (b->oom || !ioupos__ft_reserve((void **)&b->s, &b->cap, b->n + len + 1, b->n, 1)) {
    b->oom = 1;
    return 0;
  }
  rc = ioupos_dsc_case_json(b->s + b->n, b->cap - b->n, &len, cs, name, NULL);
  if (rc == 0) b->n += len;
  return rc;
}

static int ioupos__ft_eval_json(ioupos__ft_str *b, const ioupos_seg_eval_result *r,
                                const ioupos_seg_set *set) {
  int rc, c;
  ioupos__ft_put(b, "{\"table\": ");
  if ((rc = ioupos__ft_put_table(b, r)) != 0) return rc;
  ioupos__ft_put(b, ", \"cases\": [");
  for (c = 0; c < r->n_cases; ++c) {
    if (c) ioupos__ft_put(b, ", ");
    if ((rc = ioupos__ft_put_case(b, &r->cases[c], set->cases[c].name)) != 0) return rc;
  }
  ioupos__ft_put(b, "]}");
  return b->oom ? ioupos__fail(IOUPOS_ENOMEM, "out of memory writing the evaluation JSON") : 0;
}

IOUPOS_DEF int ioupos_seg_eval_json(char **json, const ioupos_seg_eval_result *r,
                                    const ioupos_seg_set *set) {
  ioupos__ft_str b;
  int rc;
  memset(&b, 0, sizeof b);
  if (!json || !r || !set) return ioupos__fail(IOUPOS_EINVAL, "ioupos_seg_eval_json: NULL argument");
  *json = NULL;
  rc = ioupos__ft_eval_json(&b, r, set);
  if (rc) {
    IOUPOS_FREE(b.s);
    return rc;
  }
  *json = b.s;
  return 0;
}

/* -- the run -- */

IOUPOS_DEF void ioupos_finetune_opts_default(ioupos_finetune_opts *o) {
  memset(o, 0, sizeof *o);
  ioupos_swin_config_default(&o->enc, 2);
  o->enc.drop_path_rate = 0.0f; /* MONAI SwinUNETR's dropout_path_rate default */
  o->n_classes = 14;
  o->chkpt_dir = "chkpts";
  o->run_name = "finetune";
  o->crop = 96;
  o->batch_size = 32;
  o->n_crops_per_ct = 2;
  o->sw_batch_size = 64;
  o->sw_overlap = 0.25;
  o->n_epochs = 225;
  o->base_lr = 1e-3;
  o->end_lr = 5e-5;
  o->warmup_epochs = 10;
  o->wd = 1e-5;
  o->patience = 20;
  o->eval_every = 10;
  o->metric = IOUPOS_FT_METRIC_DSC;
  o->seed = 4294967295u;
  o->log_every = 10;
}

IOUPOS_DEF void ioupos_finetune_result_free(ioupos_finetune_result *res) {
  if (!res) return;
  ioupos_seg_eval_result_free(&res->val);
  ioupos_seg_eval_result_free(&res->test);
  memset(res, 0, sizeof *res);
}

/* the run's position and configuration, stored as "train.counters" */
enum {
  IOUPOS__FT_EPOCH, IOUPOS__FT_STEP, IOUPOS__FT_OPT_STEPS, IOUPOS__FT_SEED, IOUPOS__FT_BATCH,
  IOUPOS__FT_NCROPS, IOUPOS__FT_CROP, IOUPOS__FT_EPOCHS, IOUPOS__FT_SPE, IOUPOS__FT_CLASSES,
  IOUPOS__FT_EMBED, IOUPOS__FT_EVAL_EVERY, IOUPOS__FT_PATIENCE, IOUPOS__FT_METRIC,
  IOUPOS__FT_BEST_EPOCH, IOUPOS__FT_SINCE_BEST, IOUPOS__FT_STOPPED, IOUPOS__FT_N
};

typedef struct ioupos__ft {
  const ioupos_finetune_opts *o;
  ioupos__runio io;
  ioupos_swinunetr_config cfg;
  ioupos_swinunetr m;
  ioupos_params p;
  float *m1, *m2;     /* AdamW moments (backend memory, the layout of p) */
  int64_t c[IOUPOS__FT_N];
  double best;        /* the best validation score, -1 before any */
  double ep_loss, ep_n;
  ioupos_seg_set train, val, test;
  int has_test;
  ioupos__clock clock;
  ioupos_rng drop;    /* the root of the drop-path draws (split by step) */
  int spe;            /* steps per epoch */
  /* one training batch of B crops, K classes, npix pixels each */
  int B, K;
  size_t npix;
  float *x, *ddev;    /* backend: the crops, the logits' gradient */
  float *hlog, *prob, *dlog; /* host: logits, softmax, their gradient (B x K x npix) */
  int *target;        /* host: labels (B x npix) */
  double *stats;      /* Dice-CE per (crop, class) sums and the two loss parts */
  ioupos_batch b;     /* the loader's batch */
} ioupos__ft;

static int ioupos__ft_save_state(ioupos__ft *r, const char *path) {
  ioupos__tlist l;
  ioupos_params *p = &r->p;
  const ioupos_backend *be = p->be;
  float *hp = ioupos__host_copy(be, p->value, p->table.total);
  float *h1 = ioupos__host_copy(be, r->m1, p->table.total);
  float *h2 = ioupos__host_copy(be, r->m2, p->table.total);
  double mon[3];
  int rc = hp && h1 && h2 ? 0 : ioupos__fail(IOUPOS_ENOMEM, "out of memory saving the state");
  memset(&l, 0, sizeof l);
  mon[0] = r->best;
  mon[1] = r->ep_loss;
  mon[2] = r->ep_n;
  if (!rc) rc = ioupos__tlist_table(&l, "model.", &p->table, hp, p->ivalue);
  if (!rc) rc = ioupos__tlist_table(&l, "optim.exp_avg.", &p->table, h1, NULL);
  if (!rc) rc = ioupos__tlist_table(&l, "optim.exp_avg_sq.", &p->table, h2, NULL);
  if (!rc) rc = ioupos__state_write(&r->io, &l, path, r->c, IOUPOS__FT_N, mon);
  ioupos__tlist_free(&l);
  IOUPOS_FREE(hp);
  IOUPOS_FREE(h1);
  IOUPOS_FREE(h2);
  return rc;
}

static int ioupos__ft_load_state(ioupos__ft *r, const char *path) {
  static const char *const what[IOUPOS__FT_N] = {
      NULL, NULL, NULL, "`seed`", "`batch_size`", "`n_crops_per_ct`", "`crop`",
      "`n_epochs`", "training set size (steps per epoch)", "`n_classes`", "`embed_dim`",
      "`eval_every`", "`patience`", "`metric`", NULL, NULL, NULL};
  ioupos_st_file f;
  int64_t c[IOUPOS__FT_N];
  double mon[3];
  int rc, nl, no;
  rc = ioupos__state_read(&r->io, path, &f, what, r->c, c, IOUPOS__FT_N, mon);
  if (rc == 0) rc = ioupos_params_load(&r->p, &f, "", "model.", &nl, &no);
  if (rc == 0) rc = ioupos__load_arena(&f, "optim.exp_avg.", &r->p.table, r->p.be, r->m1);
  if (rc == 0) rc = ioupos__load_arena(&f, "optim.exp_avg_sq.", &r->p.table, r->p.be, r->m2);
  if (rc == 0) {
    memcpy(r->c, c, sizeof c);
    r->best = mon[0];
    r->ep_loss = mon[1];
    r->ep_n = mon[2];
  }
  ioupos_safetensors_free(&f);
  return rc;
}

static int ioupos__ft_save_model(ioupos__ft *r, const char *path, const char *score) {
  ioupos_st_pair meta[2];
  char epoch[32];
  snprintf(epoch, sizeof epoch, "%lld", (long long)r->c[IOUPOS__FT_EPOCH]);
  meta[0].key = "epochs_done";
  meta[0].value = epoch;
  meta[1].key = "val_score";
  meta[1].value = score;
  return ioupos_params_save(&r->p, path, "", "", score ? 2 : 1, meta);
}

/* the selection score of an evaluation */
static double ioupos__ft_score(const ioupos_finetune_opts *o, const ioupos_seg_eval_result *e) {
  return o->metric == IOUPOS_FT_METRIC_RESEARCH ? ioupos_slice_dice_mean(&e->research)
                                                : ioupos_dsc_eval_mean(&e->dsc, NULL);
}

static void ioupos__ft_num(char *buf, size_t cap, double v) {
  if (isfinite(v)) snprintf(buf, cap, "%.6g", v);
  else snprintf(buf, cap, "null");
}

static int ioupos__ft_evaluate(ioupos__ft *r, const ioupos_seg_set *set, const char *predict_dir,
                               ioupos_seg_eval_result *res) {
  const ioupos_finetune_opts *o = r->o;
  ioupos_seg_eval_opts eo;
  ioupos_seg_eval_opts_default(&eo);
  eo.roi[0] = eo.roi[1] = o->crop;
  eo.overlap = o->sw_overlap;
  eo.sw_batch_size = o->sw_batch_size;
  eo.research = o->metric == IOUPOS_FT_METRIC_RESEARCH;
  eo.predict_dir = predict_dir;
  return ioupos_swinunetr_evaluate(&r->cfg, &r->p, set, &eo, res);
}

/* data: the split folders, checked against the split file */
static int ioupos__ft_data(ioupos__ft *r) {
  const ioupos_finetune_opts *o = r->o;
  static const char *const names[3] = {"train", "val", "test"};
  ioupos_seg_set *sets[3];
  char dir[4200];
  int rc, k;
  struct stat sb;
  sets[0] = &r->train;
  sets[1] = &r->val;
  sets[2] = &r->test;
  for (k = 0; k < 3; ++k) {
    snprintf(dir, sizeof dir, "%s/%s", o->data_dir, names[k]);
    if (k == 2 && stat(dir, &sb) != 0) break;                    /* no test split */
    if (k == 0 && o->n_epochs == 0 && stat(dir, &sb) != 0) continue; /* evaluation only */
    if (k < 2 && stat(dir, &sb) != 0)
      return ioupos__fail(IOUPOS_EIO,
                          "%s: no %s split folder (`data_dir` must be ioupos-prep's output "
                          "with `split_path`: %s/train, %s/val and optionally %s/test, each "
                          "with its labels/)", dir, names[k], o->data_dir, o->data_dir,
                          o->data_dir);
    if ((rc = ioupos_seg_set_scan(sets[k], dir)) != 0) return rc;
    if (k == 2) r->has_test = 1;
  }
  if (o->split_path) {
    ioupos_split sp;
    int s, i;
    memset(&sp, 0, sizeof sp);
    if ((rc = ioupos_split_read(o->split_path, &sp)) != 0) return rc;
    for (s = 0; rc == 0 && s < sp.n_sets; ++s) {
      const ioupos_split_set *ss = &sp.sets[s];
      for (k = 0; k < 3 && strcmp(ss->name, names[k]) != 0; ++k) {}
      if (k == 3) continue; /* a set this run does not use */
      if (k == 0 && r->train.ds.n == 0) continue; /* evaluation only, without train/ */
      if (k == 2 && !r->has_test) {
        if (ss->n > 0)
          rc = ioupos__fail(IOUPOS_EINVAL,
                            "%s lists %d test case(s) (e.g. '%s') but %s/test does not exist",
                            o->split_path, ss->n, ss->cases[0], o->data_dir);
        continue;
      }
      for (i = 0; rc == 0 && i < ss->n; ++i)
        if (ioupos_seg_set_find(sets[k], ss->cases[i]) < 0)
          rc = ioupos__fail(IOUPOS_EINVAL, "%s lists case '%s' under '%s' but %s/%s has no "
                            "slices of it", o->split_path, ss->cases[i], names[k], o->data_dir,
                            names[k]);
      for (i = 0; rc == 0 && i < sets[k]->n_cases; ++i) {
        int j;
        for (j = 0; j < ss->n && strcmp(ss->cases[j], sets[k]->cases[i].name) != 0; ++j) {}
        if (j == ss->n)
          rc = ioupos__fail(IOUPOS_EINVAL, "%s/%s has slices of case '%s', which %s does not "
                            "list under '%s'", o->data_dir, names[k], sets[k]->cases[i].name,
                            o->split_path, names[k]);
      }
    }
    for (k = 0; rc == 0 && k < 3; ++k) {
      int s2;
      if (k == 2 && !r->has_test) break;
      if (k == 0 && r->train.ds.n == 0) continue;
      for (s2 = 0; s2 < sp.n_sets && strcmp(sp.sets[s2].name, names[k]) != 0; ++s2) {}
      if (s2 == sp.n_sets)
        rc = ioupos__fail(IOUPOS_EINVAL, "%s has no '%s' list but %s/%s exists", o->split_path,
                          names[k], o->data_dir, names[k]);
    }
    ioupos_split_free(&sp);
    if (rc) return rc;
  }
  return 0;
}

static int ioupos__ft_check(const ioupos_finetune_opts *o) {
  if (!o->data_dir || !*o->data_dir) return ioupos__fail(IOUPOS_EINVAL, "`data_dir` is required");
  if (o->enc.spatial_dims != 2)
    return ioupos__fail(IOUPOS_EINVAL, "`spatial_dims` %d: fine-tuning reads 2D PNG slices only",
                        o->enc.spatial_dims);
  if (o->crop < 32 || o->crop % 32 != 0)
    return ioupos__fail(IOUPOS_EINVAL, "`crop` %d: SwinUNETR needs a multiple of 32",
                        o->crop);
  if (o->n_classes < 2 || o->n_classes > IOUPOS_SEG_MAX_CLASSES)
    return ioupos__fail(IOUPOS_EINVAL, "`n_classes` %d must be in 2..%d", o->n_classes,
                        IOUPOS_SEG_MAX_CLASSES);
  if (o->batch_size < 1 || o->n_crops_per_ct < 1 || o->sw_batch_size < 1 || o->n_epochs < 0 ||
      o->eval_every < 1 || o->patience < 0 || o->log_every < 1)
    return ioupos__fail(IOUPOS_EINVAL, "`batch_size` %d, `n_crops_per_ct` %d, `sw_batch_size` %d, "
                        "`n_epochs` %d, `eval_every` %d, `patience` %d or `log_every` %d out of "
                        "range", o->batch_size, o->n_crops_per_ct, o->sw_batch_size, o->n_epochs,
                        o->eval_every, o->patience, o->log_every);
  if (!(o->sw_overlap >= 0.0 && o->sw_overlap < 1.0))
    return ioupos__fail(IOUPOS_EINVAL, "`sw_overlap` %g must be in [0, 1)", o->sw_overlap);
  if (!(o->base_lr > 0.0) || !(o->end_lr >= 0.0) || !(o->wd >= 0.0) || !(o->warmup_epochs >= 0.0))
    return ioupos__fail(IOUPOS_EINVAL, "`base_lr` %g, `end_lr` %g, `wd` %g, `warmup_epochs` %g "
                        "must be positive / non-negative", o->base_lr, o->end_lr, o->wd,
                        o->warmup_epochs);
  if (o->metric != IOUPOS_FT_METRIC_DSC && o->metric != IOUPOS_FT_METRIC_RESEARCH)
    return ioupos__fail(IOUPOS_EINVAL, "unknown metric %d", o->metric);
  return 0;
}

/* one evaluation of the validation split during training: metrics line, best checkpoint,
   patience */
static int ioupos__ft_validate(ioupos__ft *r, int *stop) {
  const ioupos_finetune_opts *o = r->o;
  ioupos_seg_eval_result ev, tr;
  char path[4200], line[1024], s1[32], s2[32], s3[32], s4[32];
  double score, t0 = ioupos__now();
  int rc, better;
  long long e = (long long)r->c[IOUPOS__FT_EPOCH];
  memset(&tr, 0, sizeof tr);
  if ((rc = ioupos__ft_evaluate(r, &r->val, NULL, &ev)) != 0) return rc;
  score = ioupos__ft_score(o, &ev);
  if (o->eval_train && (rc = ioupos__ft_evaluate(r, &r->train, NULL, &tr)) != 0) {
    ioupos_seg_eval_result_free(&ev);
    return rc;
  }
  better = isfinite(score) && score > r->best;
  if (better) {
    r->best = score;
    r->c[IOUPOS__FT_BEST_EPOCH] = e;
    r->c[IOUPOS__FT_SINCE_BEST] = 0;
    snprintf(s1, sizeof s1, "%.10g", score);
    snprintf(path, sizeof path, "%s/best.safetensors", r->io.dir);
    rc = ioupos__ft_save_model(r, path, s1);
  } else {
    r->c[IOUPOS__FT_SINCE_BEST] = e - r->c[IOUPOS__FT_BEST_EPOCH];
  }
  ioupos__ft_num(s1, sizeof s1, ioupos_dsc_eval_mean(&ev.dsc, NULL));
  ioupos__ft_num(s2, sizeof s2, ev.has_research ? ioupos_slice_dice_mean(&ev.research) : NAN);
  ioupos__ft_num(s3, sizeof s3, o->eval_train ? ioupos__ft_score(o, &tr) : NAN);
  ioupos__ft_num(s4, sizeof s4, r->best >= 0.0 ? r->best : NAN);
  snprintf(line, sizeof line,
           "{\"epoch\": %lld, \"step\": %lld, \"val_dsc\": %s, \"val_research_dice\": %s, "
           "\"train_score\": %s, \"best_score\": %s, \"best_epoch\": %lld, "
           "\"epochs_since_best\": %lld}\n",
           e, (long long)r->c[IOUPOS__FT_OPT_STEPS], s1, s2, s3, s4,
           (long long)r->c[IOUPOS__FT_BEST_EPOCH], (long long)r->c[IOUPOS__FT_SINCE_BEST]);
  if (rc == 0) rc = ioupos__metrics_put(&r->io, line);
  ioupos__say(&r->io, "epoch %lld: validation %s %s%s (best %s at epoch %lld)%s%s, %.1f s", e,
                 o->metric == IOUPOS_FT_METRIC_RESEARCH ? "research dice" : "DSC",
                 o->metric == IOUPOS_FT_METRIC_RESEARCH ? s2 : s1, better ? " *" : "", s4,
                 (long long)r->c[IOUPOS__FT_BEST_EPOCH], o->eval_train ? ", train " : "",
                 o->eval_train ? s3 : "", ioupos__now() - t0);
  if (rc == 0 && o->patience > 0 && r->c[IOUPOS__FT_SINCE_BEST] >= o->patience) {
    r->c[IOUPOS__FT_STOPPED] = 1;
    *stop = 1;
    ioupos__say(&r->io, "early stop: no better validation score for %lld epochs (`patience` %d)",
                   (long long)r->c[IOUPOS__FT_SINCE_BEST], o->patience);
  }
  ioupos_seg_eval_result_free(&ev);
  ioupos_seg_eval_result_free(&tr);
  return rc;
}

/* the final evaluation: best model on val (and test), results.json */
static int ioupos__ft_final(ioupos__ft *r, ioupos_finetune_result *res) {
  const ioupos_finetune_opts *o = r->o;
  ioupos__ft_str b;
  ioupos_seg_eval_result val, test;
  char path[4200], pdir[4200], s1[32], s2[32];
  int rc = 0, trained = o->n_epochs > 0;
  double score;
  memset(&b, 0, sizeof b);
  memset(&val, 0, sizeof val);
  memset(&test, 0, sizeof test);
  if (trained) {
    snprintf(path, sizeof path, "%s/best.safetensors", r->io.dir);
    if (r->c[IOUPOS__FT_BEST_EPOCH] > 0) {
      ioupos_st_file f;
      if ((rc = ioupos_safetensors_read(path, &f)) != 0) return rc;
      rc = ioupos_params_load(&r->p, &f, "", "", NULL, NULL);
      ioupos_safetensors_free(&f);
      if (rc) return rc;
      ioupos__say(&r->io, "final evaluation of %s (epoch %lld)", path,
                     (long long)r->c[IOUPOS__FT_BEST_EPOCH]);
    } else {
      ioupos__say(&r->io, "note: no validation score was ever defined; the final evaluation uses "
                     "the last model");
    }
  }
  if (o->predict_dir) snprintf(pdir, sizeof pdir, "%s/val", o->predict_dir);
  if ((rc = ioupos__ft_evaluate(r, &r->val, o->predict_dir ? pdir : NULL, &val)) != 0) goto done;
  if (r->has_test) {
    if (o->predict_dir) snprintf(pdir, sizeof pdir, "%s/test", o->predict_dir);
    if ((rc = ioupos__ft_evaluate(r, &r->test, o->predict_dir ? pdir : NULL, &test)) != 0)
      goto done;
  }
  score = ioupos__ft_score(o, r->has_test ? &test : &val);
  if (!r->has_test && trained)
    ioupos__say(&r->io, "note: no test split: the reported score is the validation score of the "
                   "checkpoint selected on that same validation split (optimistic, as the "
                   "research code's)");
  ioupos__ft_num(s1, sizeof s1, score);
  ioupos__ft_put(&b, "{\"reported\": {\"split\": \"%s\", \"metric\": \"%s\", \"score\": %s, ",
                 r->has_test ? "test" : "val",
                 o->metric == IOUPOS_FT_METRIC_RESEARCH ? "research" : "dsc", s1);
  ioupos__ft_num(s1, sizeof s1, ioupos_dsc_eval_mean(r->has_test ? &test.dsc : &val.dsc, NULL));
  ioupos__ft_num(s2, sizeof s2,
                 o->metric == IOUPOS_FT_METRIC_RESEARCH
                     ? ioupos_slice_dice_mean(r->has_test ? &test.research : &val.research)
                     : NAN);
  ioupos__ft_put(&b, "\"dsc\": %s, \"research_dice\": %s}, ", s1, s2);
  ioupos__ft_num(s1, sizeof s1, r->best >= 0.0 ? r->best : NAN);
  ioupos__ft_put(&b, "\"best_epoch\": %lld, \"best_val_score\": %s, \"epochs_done\": %lld, "
                 "\"stopped_early\": %s, \"val\": ", (long long)r->c[IOUPOS__FT_BEST_EPOCH], s1,
                 (long long)r->c[IOUPOS__FT_EPOCH], r->c[IOUPOS__FT_STOPPED] ? "true" : "false");
  if ((rc = ioupos__ft_eval_json(&b, &val, &r->val)) != 0) goto done;
  if (r->has_test) {
    ioupos__ft_put(&b, ", \"test\": ");
    if ((rc = ioupos__ft_eval_json(&b, &test, &r->test)) != 0) goto done;
  }
  ioupos__ft_put(&b, "}\n");
  if (b.oom) {
    rc = ioupos__fail(IOUPOS_ENOMEM, "out of memory writing results.json");
    goto done;
  }
  snprintf(path, sizeof path, "%s/results.json", r->io.dir);
  if ((rc = ioupos_write_file_atomic(path, b.s, b.n)) != 0) goto done;
  ioupos__say(&r->io, "%s %s %.4f (%s); per-organ results in %s",
                 r->has_test ? "test" : "val",
                 o->metric == IOUPOS_FT_METRIC_RESEARCH ? "research dice" : "mean DSC", score,
                 !trained ? (o->chkpt_path ? "the `chkpt_path` model, evaluation only"
                                           : "the untrained model, evaluation only")
                 : r->has_test ? "the best validation checkpoint on the held-out test split"
                               : "the best validation checkpoint; no test split",
                 path);
  if (res) {
    res->done = 1;
    res->epochs_done = (int)r->c[IOUPOS__FT_EPOCH];
    res->best_epoch = (int)r->c[IOUPOS__FT_BEST_EPOCH];
    res->stopped_early = (int)r->c[IOUPOS__FT_STOPPED];
    res->has_test = r->has_test;
    res->best_val = r->best >= 0.0 ? r->best : NAN;
    res->split = r->has_test ? "test" : "val";
    res->score = score;
    res->val = val;
    res->test = test;
    memset(&val, 0, sizeof val);
    memset(&test, 0, sizeof test);
  }
done:
  IOUPOS_FREE(b.s);
  ioupos_seg_eval_result_free(&val);
  ioupos_seg_eval_result_free(&test);
  return rc;
}

/* -- the steps of a fine-tuning run, in the order the loop takes them -- */

static int ioupos__ft_epoch_begin(ioupos__ft *r, ioupos_loader *ld) {
  int e = (int)r->c[IOUPOS__FT_EPOCH], step = (int)r->c[IOUPOS__FT_STEP];
  return step == 0 ? ioupos_loader_epoch(ld, e) : ioupos_loader_seek(ld, e, step);
}

/* lr: linear warm-up from 0, then cosine to end_lr, per step */
static double ioupos__ft_lr(const ioupos__ft *r) {
  const ioupos_finetune_opts *o = r->o;
  long total = (long)((int64_t)r->spe * o->n_epochs), warm = (long)(o->warmup_epochs * r->spe);
  return ioupos_cosine_schedule((long)r->c[IOUPOS__FT_OPT_STEPS], total, warm, o->base_lr,
                                o->end_lr, 0.0);
}

/* the batch: B crops and their labels from the loader (ids checked), the crops to the backend */
static int ioupos__ft_batch(ioupos__ft *r, ioupos_loader *ld) {
  const ioupos_backend *be = r->p.be;
  size_t q, n = (size_t)r->B * r->npix;
  int rc = ioupos_loader_next(ld, &r->b);
  if (rc) return rc;
  if (r->b.n != r->B)
    return ioupos__fail(IOUPOS_EINVAL, "internal: batch of %d crops, planned %d", r->b.n, r->B);
  for (q = 0; q < n; ++q) {
    r->target[q] = (int)r->b.label[q];
    if (r->target[q] < 0 || r->target[q] >= r->K)
      return ioupos__fail(IOUPOS_EINVAL, "%s: label %d outside [0, %d) (`n_classes` %d)",
                          r->train.ds.labels[r->b.source[q / r->npix]], r->target[q], r->K,
                          r->K);
  }
  be->upload(r->x, r->b.image, n * sizeof(float));
  return 0;
}

/* forward, loss (MONAI DiceCELoss on the host), backward into the zeroed gradients. A
   non-finite loss stops the run (IOUPOS_ERANGE) before any weight changes. */
static int ioupos__ft_forward_backward(ioupos__ft *r, double *loss) {
  const ioupos_backend *be = r->p.be;
  size_t nlog = (size_t)r->B * r->K * r->npix;
  ioupos_rng dr = ioupos_rng_split(&r->drop, (uint64_t)r->c[IOUPOS__FT_OPT_STEPS]);
  int rc;
  be->zero(r->p.grad, r->p.table.total * sizeof(float));
  if ((rc = ioupos_swinunetr_forward(&r->m, &r->p, r->x, 1, &dr)) != 0) return rc;
  be->download(r->hlog, ioupos_swinunetr_logits(&r->m), nlog * sizeof(float));
  *loss = ioupos_dicece_forward(r->prob, r->stats, r->hlog, r->target, r->B, r->K,
                                (long)r->npix, NULL);
  if (!isfinite(*loss))
    return ioupos__fail(IOUPOS_ERANGE,
                        "the loss is %g at epoch %lld step %lld: stopping; the last good "
                        "checkpoint is %s/checkpoint.safetensors (if an epoch finished)", *loss,
                        (long long)r->c[IOUPOS__FT_EPOCH] + 1,
                        (long long)r->c[IOUPOS__FT_STEP] + 1, r->io.dir);
  memset(r->dlog, 0, nlog * sizeof(float));
  ioupos_dicece_backward(r->dlog, 1.0f, r->prob, r->stats, r->target, r->B, r->K, (long)r->npix,
                         NULL);
  be->upload(r->ddev, r->dlog, nlog * sizeof(float));
  return ioupos_swinunetr_backward(&r->m, &r->p, r->ddev, NULL);
}

/* AdamW (0.9, 0.999, eps 1e-8; no decay on biases and 1-D tensors) on every trained tensor,
   then the bookkeeping: the epoch's loss, the counters */
static int ioupos__ft_step(ioupos__ft *r, double lr, double loss) {
  const ioupos_backend *be = r->p.be;
  int i, rc, t1 = (int)(r->c[IOUPOS__FT_OPT_STEPS] + 1);
  for (i = 0; i < r->p.table.n; ++i) {
    const ioupos_tensor_info *t = &r->p.table.t[i];
    if (t->dtype != IOUPOS_ST_F32 || (t->flags & (IOUPOS_TENSOR_BUFFER | IOUPOS_TENSOR_FROZEN)))
      continue;
    be->adamw_step(r->p.value + t->offset, r->p.grad + t->offset, r->m1 + t->offset,
                   r->m2 + t->offset, t->numel, (float)lr, 0.9f, 0.999f, 1e-8f,
                   (t->flags & IOUPOS_TENSOR_NO_DECAY) ? 0.0f : (float)r->o->wd, t1);
  }
  if ((rc = be->sync()) != 0) return rc;
  r->ep_loss += loss;
  r->ep_n += 1.0;
  r->c[IOUPOS__FT_STEP]++;
  r->c[IOUPOS__FT_OPT_STEPS]++;
  r->clock.img_log += (double)r->o->batch_size;
  ++r->io.steps_here;
  return 0;
}

/* every log_every steps and at the epoch's end: a metrics.jsonl line and a console line */
static int ioupos__ft_log_step(ioupos__ft *r, double lr, double loss) {
  const double *parts = r->stats + 3 * (size_t)r->B * r->K; /* the Dice and CE parts */
  double ips;
  char line[1024];
  int rc;
  if (r->c[IOUPOS__FT_OPT_STEPS] % r->o->log_every != 0 && r->c[IOUPOS__FT_STEP] != r->spe)
    return 0;
  ips = ioupos__clock_rate(&r->clock);
  snprintf(line, sizeof line,
           "{\"epoch\": %lld, \"step\": %lld, \"loss\": %.6g, \"dice_loss\": %.6g, "
           "\"ce_loss\": %.6g, \"lr\": %.6g, \"slices_per_s\": %.4g}\n",
           (long long)r->c[IOUPOS__FT_EPOCH] + 1, (long long)r->c[IOUPOS__FT_OPT_STEPS], loss,
           parts[0], parts[1], lr, ips);
  if ((rc = ioupos__metrics_put(&r->io, line)) != 0) return rc;
  ioupos__say(&r->io, "epoch %lld step %lld/%d loss %.5f (dice %.4f ce %.4f) lr %.3g %.1f "
              "slices/s", (long long)r->c[IOUPOS__FT_EPOCH] + 1,
              (long long)r->c[IOUPOS__FT_STEP], r->spe, loss, parts[0], parts[1], lr, ips);
  return 0;
}

/* The epoch is done: its metrics and console lines, checkpoint.safetensors, and every
   eval_every epochs (and after the last) the validation, which may stop the run early.
   *stop when the caller asked to stop (the state is saved next). */
static int ioupos__ft_epoch_end(ioupos__ft *r, int *stop) {
  const ioupos_finetune_opts *o = r->o;
  long long e = (long long)++r->c[IOUPOS__FT_EPOCH]; /* epochs done, the one just finished */
  int last = e == o->n_epochs, early = 0, rc;
  double mean = r->ep_n > 0 ? r->ep_loss / r->ep_n : 0.0;
  char line[512], path[4200];
  r->c[IOUPOS__FT_STEP] = 0;
  snprintf(line, sizeof line, "{\"epoch\": %lld, \"step\": %lld, \"epoch_loss\": %.6g, "
           "\"seconds\": %.3f}\n", e, (long long)r->c[IOUPOS__FT_OPT_STEPS], mean,
           ioupos__now() - r->clock.t_start);
  if ((rc = ioupos__metrics_put(&r->io, line)) != 0) return rc;
  ioupos__say(&r->io, "epoch %lld done: mean loss %.5f", e, mean);
  r->ep_loss = r->ep_n = 0.0;
  snprintf(path, sizeof path, "%s/checkpoint.safetensors", r->io.dir);
  if ((rc = ioupos__ft_save_model(r, path, NULL)) != 0) return rc;
  if (e % o->eval_every == 0 || last)
    if ((rc = ioupos__ft_validate(r, &early)) != 0) return rc;
  if (ioupos__halted(&r->io) && !last && !early) *stop = 1;
  return 0;
}

/* the batch workspace of B crops (training only) */
static int ioupos__ft_alloc_batch(ioupos__ft *r) {
  const ioupos_backend *be = r->p.be;
  size_t nlog;
  int rc, shape[2];
  r->B = r->o->batch_size * r->o->n_crops_per_ct;
  shape[0] = shape[1] = r->o->crop;
  if ((rc = ioupos_swinunetr_plan(&r->m, &r->p, r->B, shape)) != 0) return rc;
  nlog = (size_t)r->B * (size_t)r->K * r->npix;
  r->x = (float *)be->alloc((size_t)r->B * r->npix * sizeof(float));
  r->ddev = (float *)be->alloc(nlog * sizeof(float));
  r->hlog = (float *)ioupos__calloc(nlog, sizeof(float));
  r->prob = (float *)ioupos__calloc(nlog, sizeof(float));
  r->dlog = (float *)ioupos__calloc(nlog, sizeof(float));
  r->target = (int *)ioupos__calloc((size_t)r->B * r->npix, sizeof(int));
  r->stats = (double *)ioupos__calloc(IOUPOS_DICECE_STATS(r->B, r->K), sizeof(double));
  if (!r->x || !r->ddev || !r->hlog || !r->prob || !r->dlog || !r->target || !r->stats)
    return ioupos__fail(IOUPOS_ENOMEM, "out of memory for a batch of %d crops", r->B);
  return 0;
}

IOUPOS_DEF int ioupos_finetune_run(const ioupos_finetune_opts *o, ioupos_finetune_result *res) {
  ioupos__ft *r = NULL;
  ioupos_loader ld;
  ioupos_loader_config lc;
  char path[4200], tmp[4200];
  const ioupos_backend *be = o && o->backend ? o->backend : ioupos_backend_cpu();
  int rc, spe = 0, stop = 0, K;
  size_t npix;
  memset(&ld, 0, sizeof ld);
  if (res) memset(res, 0, sizeof *res);
  if (!o) return ioupos__fail(IOUPOS_EINVAL, "ioupos_finetune_run: NULL options");
  if ((rc = ioupos__ft_check(o)) != 0) return rc;
  r = (ioupos__ft *)ioupos__calloc(1, sizeof *r);
  if (!r) return ioupos__fail(IOUPOS_ENOMEM, "out of memory");
  r->o = o;
  ioupos__runio_init(&r->io, o->log, o->log_ctx, o->stop, o->max_steps, o->flags_json,
                     o->git_commit, o->chkpt_dir, o->run_name ? o->run_name : "finetune");
  r->best = -1.0;
  K = o->n_classes;
  npix = (size_t)o->crop * (size_t)o->crop;
  /* data first: a bad folder fails before anything is written */
  if ((rc = ioupos__ft_data(r)) != 0) goto done;
  { /* every file of the splits read (labels decoded: ids < n_classes), all bad ones named */
    const ioupos_dataset *sets[3];
    int ns = 0;
    if (o->n_epochs > 0) sets[ns++] = &r->train.ds;
    sets[ns++] = &r->val.ds;
    if (r->has_test) sets[ns++] = &r->test.ds;
    if ((rc = ioupos__data_preflight(sets, ns, NULL, K, o->num_workers, o->log, o->log_ctx)) != 0)
      goto done;
  }
  if (o->n_epochs > 0) {
    ioupos_loader_config_default(&lc, &r->train.ds, IOUPOS_LOADER_FINETUNE);
    lc.batch_size = o->batch_size;
    lc.crop[0] = lc.crop[1] = o->crop;
    lc.seed = o->seed;
    lc.num_workers = o->num_workers;
    lc.drop_last = 1;
    lc.num_samples = o->n_crops_per_ct;
    lc.pos = lc.neg = 1;
    lc.augment = ioupos_augment_finetune_crop;
    if (r->train.ds.n < o->batch_size) {
      rc = ioupos__fail(IOUPOS_EINVAL, "%s/train has %d slices, fewer than one batch "
                        "(`batch_size` %d)", o->data_dir, r->train.ds.n, o->batch_size);
      goto done;
    }
    if ((rc = ioupos_loader_open(&ld, &lc)) != 0) goto done;
    spe = ld.batches_per_epoch;
  }
  /* the model */
  ioupos_swinunetr_config_default(&r->cfg, 2);
  r->cfg.enc = o->enc;
  r->cfg.out_channels = K;
  if ((rc = ioupos_swinunetr_init(&r->m, &r->cfg, &r->p.table, "")) != 0) goto done;
  if ((rc = ioupos_params_alloc(&r->p, be, o->n_epochs > 0)) != 0) goto done;
  {
    ioupos_rng ir;
    ioupos_rng_seed_stream(&ir, o->seed, 0x696e6974u); /* "init" */
    if ((rc = ioupos_params_init(&r->p, &ir)) != 0) goto done;
  }
  if ((rc = ioupos_swin_encoder_buffers(&r->m.enc, &r->p)) != 0) goto done;
  r->c[IOUPOS__FT_SEED] = (int64_t)o->seed;
  r->c[IOUPOS__FT_BATCH] = o->batch_size;
  r->c[IOUPOS__FT_NCROPS] = o->n_crops_per_ct;
  r->c[IOUPOS__FT_CROP] = o->crop;
  r->c[IOUPOS__FT_EPOCHS] = o->n_epochs;
  r->c[IOUPOS__FT_SPE] = spe;
  r->c[IOUPOS__FT_CLASSES] = K;
  r->c[IOUPOS__FT_EMBED] = o->enc.embed_dim;
  r->c[IOUPOS__FT_EVAL_EVERY] = o->eval_every;
  r->c[IOUPOS__FT_PATIENCE] = o->patience;
  r->c[IOUPOS__FT_METRIC] = o->metric;
  /* the run directory */
  snprintf(path, sizeof path, "%s/state.safetensors", r->io.dir);
  if (o->resume && o->n_epochs == 0) {
    rc = ioupos__fail(IOUPOS_EINVAL, "`resume` with `n_epochs` 0: there is nothing to resume");
    goto done;
  }
  if ((rc = ioupos__run_dir_hold(&r->io)) != 0) goto done;
  if (o->resume) {
    r->m1 = (float *)be->alloc(r->p.table.total * sizeof(float) + 1);
    r->m2 = (float *)be->alloc(r->p.table.total * sizeof(float) + 1);
    if (!r->m1 || !r->m2) {
      rc = ioupos__fail(IOUPOS_ENOMEM, "out of memory for the AdamW moments");
      goto done;
    }
    if ((rc = ioupos__ft_load_state(r, path)) != 0) {
      if (rc == IOUPOS_EIO)
        rc = ioupos__fail(IOUPOS_EIO, "`resume`: no training state at %s (%s)", path,
                          ioupos_failure_reason());
      goto done;
    }
    snprintf(tmp, sizeof tmp, "%s/metrics.jsonl", r->io.dir);
    if ((rc = ioupos__metrics_truncate(tmp, (long long)r->c[IOUPOS__FT_OPT_STEPS])) != 0) goto done;
    ioupos__say(&r->io, "resuming %s at epoch %lld step %lld/%d (%lld steps done)", r->io.dir,
                   (long long)r->c[IOUPOS__FT_EPOCH] + 1, (long long)r->c[IOUPOS__FT_STEP], spe,
                   (long long)r->c[IOUPOS__FT_OPT_STEPS]);
  } else {
    if ((rc = ioupos__run_dir_free(r->io.dir)) != 0) goto done;
    if (o->chkpt_path) {
      ioupos_swinunetr_load_info li;
      if ((rc = ioupos_swinunetr_load(&r->m, &r->p, o->chkpt_path, &li)) != 0) goto done;
      if (li.whole)
        ioupos__say(&r->io, "loaded a whole SwinUNETR from %s: %d tensors", o->chkpt_path,
                       li.n_loaded);
      else
        ioupos__say(&r->io, "loaded the encoder from %s: %d tensors under '%s' -> swinViT.*, %d "
                       "other file tensors ignored; the decoder is initialised from the seed",
                       o->chkpt_path, li.n_loaded, li.prefix, li.n_ignored);
    } else {
      ioupos__say(&r->io, "no `chkpt_path`: the whole model is initialised from the seed (from "
                     "scratch)");
    }
    if ((rc = ioupos__run_dir_create(r->io.dir, o->flags_json, o->seed, o->git_commit, spe)) != 0)
      goto done;
    if (o->n_epochs > 0) {
      r->m1 = (float *)be->alloc(r->p.table.total * sizeof(float) + 1);
      r->m2 = (float *)be->alloc(r->p.table.total * sizeof(float) + 1);
      if (!r->m1 || !r->m2) {
        rc = ioupos__fail(IOUPOS_ENOMEM, "out of memory for the AdamW moments");
        goto done;
      }
    }
  }
  if (o->n_epochs > 0)
    ioupos__say(&r->io, "fine-tuning: train %d cases / %d slices, val %d cases / %d slices, test "
                   "%d cases; %d steps per epoch of %d slices x %d crops of %d x %d, %d epochs -> "
                   "%s; device %s", r->train.n_cases, r->train.ds.n, r->val.n_cases,
                   r->val.ds.n, r->test.n_cases, spe, o->batch_size, o->n_crops_per_ct, o->crop,
                   o->crop, o->n_epochs, r->io.dir, be->name);
  else
    ioupos__say(&r->io, "evaluation only (`n_epochs` 0): val %d cases / %d slices, test %d cases / "
                   "%d slices, windows of %d x %d -> %s; device %s", r->val.n_cases, r->val.ds.n,
                   r->test.n_cases, r->test.ds.n, o->crop, o->crop, r->io.dir, be->name);
  r->K = K;
  r->npix = npix;
  r->spe = spe;
  if (o->n_epochs > 0 && (rc = ioupos__ft_alloc_batch(r)) != 0) goto done;
  ioupos_rng_seed_stream(&r->drop, o->seed, 0x64726f70u); /* drop-path draws: "drop" */
  ioupos__clock_start(&r->clock);
  /* the method, one optimiser step at a time */
  while (rc == 0 && !stop && !r->c[IOUPOS__FT_STOPPED] && r->c[IOUPOS__FT_EPOCH] < o->n_epochs) {
    rc = ioupos__ft_epoch_begin(r, &ld);                     /* the epoch's sample order */
    while (rc == 0 && r->c[IOUPOS__FT_STEP] < spe) {
      double lr = ioupos__ft_lr(r), loss = 0.0;              /* lr */
      rc = ioupos__ft_batch(r, &ld);                         /* batch */
      if (rc == 0) rc = ioupos__ft_forward_backward(r, &loss); /* forward, loss, backward */
      if (rc == 0) rc = ioupos__ft_step(r, lr, loss);        /* optimiser step */
      if (rc == 0) rc = ioupos__ft_log_step(r, lr, loss);    /* log */
      if (rc == 0 && ioupos__halted(&r->io) && r->c[IOUPOS__FT_STEP] < spe) stop = 1;
      if (stop) break;
    }
    if (rc == 0 && !stop) rc = ioupos__ft_epoch_end(r, &stop); /* checkpoint, evaluate */
    if (rc == 0) rc = ioupos__ft_save_state(r, path);       /* state */
  }
  if (rc == 0 && stop) {
    ioupos__say(&r->io, "%s after %ld steps in this process, at epoch %lld step %lld/%d; the "
                "state is saved: `resume` continues from %s", ioupos__halt_reason(&r->io),
                r->io.steps_here, (long long)r->c[IOUPOS__FT_EPOCH] + 1,
                (long long)r->c[IOUPOS__FT_STEP], spe, path);
    if (res) res->epochs_done = (int)r->c[IOUPOS__FT_EPOCH];
  } else if (rc == 0) {
    rc = ioupos__ft_final(r, res);                           /* the final evaluation */
  }
done:
  if (r) ioupos__run_dir_release(&r->io, rc);
  ioupos_loader_close(&ld);
  if (r) {
    be->release(r->x);
    be->release(r->ddev);
    IOUPOS_FREE(r->hlog);
    IOUPOS_FREE(r->prob);
    IOUPOS_FREE(r->dlog);
    IOUPOS_FREE(r->target);
    IOUPOS_FREE(r->stats);
    be->release(r->m1);
    be->release(r->m2);
    ioupos_swinunetr_free(&r->m);
    ioupos_params_free(&r->p);
    ioupos_seg_set_free(&r->train);
    ioupos_seg_set_free(&r->val);
    ioupos_seg_set_free(&r->test);
    IOUPOS_FREE(r);
  }
  return rc;
}
#endif /* IOUPOS__PART_CORE: sections 10-22 */

#if defined(IOUPOS_STATIC) && defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#endif /* IOUPOS_IMPLEMENTATION_DONE */
#endif /* IOUPOS_IMPLEMENTATION */

/* LICENSE
   ioupos is released into the public domain (Unlicense) or, at your option, under the MIT
   licence. stb_image and stb_image_write (Sean Barrett) are not part of this file; they come
   from your system's libstb-dev package under their own (public domain / MIT) terms. */
