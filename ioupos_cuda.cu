/* ioupos_cuda.cu — the CUDA backend of ioupos.h: the same operation table (section 16) on one
   CUDA device. See the API block "the CUDA backend" in ioupos.h for the contract.

   BUILD
     nvcc (make builds build/ioupos_cuda.o when nvcc is found): sm_80 and sm_90 code plus PTX,
     --fmad=false (no contraction of a * b + c: the element-wise kernels then round as the CPU
     reference, which is compiled without contraction), warnings are errors; link with
     -lcudart -ldl (not -lcublas: cuBLAS is opened when the backend starts, see "cuBLAS, loaded
     on first use" below).
     Host build (IOUPOS_CUDA_HOST, tests): the same file compiled as C++11 by the host compiler
     with tests/cuda_host on the include path (-ffp-contract=off). cuda_host.h replaces the CUDA
     runtime and cuBLAS: kernels run as host loops over blocks and threads, kernels with
     __syncthreads() run their threads as fibers (so the shared-memory reductions below run
     exactly as written; there the reducing kernels' blocks have 32 threads, see CU_RT), and
     every cuBLAS call goes through a column-major reference with the real signature that also
     checks each operand against its device allocation. This is how tests/test_cuda_ops.c checks
     every kernel and every cuBLAS call against the CPU backend on a machine without a GPU (and
     runs each case a second time with every grid and block in reverse order).

   DESIGN
     - One device and one stream per process; every operation is queued on that stream in call
       order. upload / download wait for their copy; the losses and the clipping norm wait for
       their scalar. Not thread-safe: one host thread drives the backend (as the models do).
     - Matrix products: cuBLAS SGEMM in FP32 (math mode CUBLAS_DEFAULT_MATH, TF32 only with
       IOUPOS_CUDA_TF32=1; atomics not allowed). The callers are row-major: cu_gemm below takes
       ioupos_gemm's row-major arguments and calls cuBLAS on the transposed problem
       (C^T = op(B)^T op(A)^T: the operands swap, m and n swap, the transposes stay with their
       operand). The window attention's per-window products are strided-batched SGEMMs, one call
       per head over all windows.
     - Reductions: every sum is a fixed-order reduction in double: rows (layer norm, L2 norm,
       softmax, losses) and instance-norm planes by one block each with a shared-memory tree of
       fixed shape; columns (linear bias and layer-norm parameter gradients) per chunk of 256
       rows (as the CPU: the same chunks, the same order, so these sums are bit-identical to the
       CPU's), then over chunks in order; batch norm and the DINO centre one thread per channel,
       rows in order (the CPU's loops); convolution bias gradients per (channel, sample, block
       of 4096 positions), then in order; the losses' rows then in row order by one thread.
       No floating-point atomics anywhere: the
       relative-position-table gradient uses integer atomics only to build, once per call, the
       list of score positions of each table row, sorted before use. Two runs on the same device
       give the same bits.
     - Failures: operations that return void record the first failure (its ioupos_status and
       reason); the next sync() returns it and sets ioupos_failure_reason(). Device errors map to
       IOUPOS_ENOMEM (allocation) or IOUPOS_EIO (anything else the runtime or cuBLAS reports);
       bad arguments to IOUPOS_EINVAL.
     - Scratch: operations use the caller's scratch exactly as the CPU functions size it; what
       the CPU keeps in per-call host buffers (column-sum partials, the attention's score
       gradients, the losses' per-row values) lives in device workspaces owned by the backend,
       grown on demand and kept.
     - Element-wise arithmetic follows the CPU's expressions (double where it uses double, the
       same order; exp, erf, log in double); the optimiser steps use fmaf and round-to-nearest
       intrinsics exactly where the CPU does, so they are bit-identical to it.

   NOT YET MEASURED ON A GPU (correctness is tested in the host build; speed is a first version)
     - convolutions keep the CPU's blocks of 4096 positions and its scratch: many small GEMMs
       per sample on 3D maps; the window attention makes one strided-batched GEMM per head and
       product (FasterTransformer's layout; no fused kernel yet);
     - clip_grad_per_param returns the norm, so each call waits for the device (DINO clips every
       parameter tensor: one wait per tensor per step);
     - the relative-position-table gradient rebuilds its position lists (6 small kernels) on
       every backward. */

#ifdef IOUPOS_CUDA_HOST
#include "cuda_host.h"
#else
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#endif
#ifdef IOUPOS_WITH_NCCL /* section 16b's NCCL table (end of this file) */
#ifdef IOUPOS_CUDA_HOST
#include "nccl_host.h" /* NCCL's calls over MPI on the host build's "device" memory */
#else
#include <nccl.h>
#endif
#endif

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>
#include <unordered_map>

#include "ioupos.h"

/* ---- launches: <<<grid, block, 0, stream>>> on the GPU, host loops in the host build ---------- */
#ifdef IOUPOS_CUDA_HOST
#define CU_LAUNCH(kern, grid, block, ...) \
  ioupos_cuh_launch((grid), (block), 0, [&]() { kern(__VA_ARGS__); })
/* kernels that call __syncthreads(): their threads run as fibers in the host build */
#define CU_LAUNCH_SYNC(kern, grid, block, ...) \
  ioupos_cuh_launch((grid), (block), 1, [&]() { kern(__VA_ARGS__); })
#else
#define CU_LAUNCH(kern, grid, block, ...) kern<<<(grid), (block), 0, cu.stream>>>(__VA_ARGS__)
#define CU_LAUNCH_SYNC CU_LAUNCH
#endif
#define CU_RUN(kern, grid, block, ...)          \
  do {                                          \
    CU_LAUNCH(kern, grid, block, __VA_ARGS__);  \
    cu_launched(#kern);                         \
  } while (0)
#define CU_RUN_SYNC(kern, grid, block, ...)         \
  do {                                              \
    CU_LAUNCH_SYNC(kern, grid, block, __VA_ARGS__); \
    cu_launched(#kern);                             \
  } while (0)

#define CU_EW 256            /* threads per block of the element-wise kernels */
/* Threads per block of the kernels that reduce through shared memory and __syncthreads()
   (powers of two): rows (layer norm, L2 norm, losses, weight norm), attention score rows,
   instance-norm planes, gradient-norm blocks. The host build runs every thread of such a kernel
   as a fiber, and a fiber switch costs a system call: there the blocks have 32 threads (the
   same kernels with a smaller tree; all sizes the code handles, rows shorter and longer than a
   block, are still exercised) unless IOUPOS_CUDA_HOST_GPU_BLOCKS is defined. */
#if defined(IOUPOS_CUDA_HOST) && !defined(IOUPOS_CUDA_HOST_GPU_BLOCKS)
#define CU_RT 32
#define CU_ATT_T 32
#define CU_PLANE_T 32
#define CU_NORM_T 32
#else
#define CU_RT 128     /* rows */
#define CU_ATT_T 64   /* attention score rows (49 or 343 tokens) */
#define CU_PLANE_T 256 /* instance-norm planes */
#define CU_NORM_T 256  /* gradient-norm blocks */
#endif
#define CU_ROW_CHUNK 256     /* rows per chunk of the column sums (the CPU's IOUPOS__ROW_CHUNK) */
#define CU_NORM_CHUNK 8192   /* elements per block of the gradient-norm partial sums */
#define CU_MAX_GRID 1048576u /* blocks of a grid-stride launch */

/* ---- the backend's state ------------------------------------------------------------------ */
enum { CU_WS_COLSUM, CU_WS_ATT, CU_WS_TABLE, CU_WS_INDEX, CU_WS_ROWS, CU_WS_N };

static struct {
  int ready, device;
  cudaStream_t stream;
  cublasHandle_t blas;
  int err;          /* first ioupos_status since the last sync, 0 if none */
  char reason[320]; /* its reason */
  void *ws[CU_WS_N];
  size_t ws_bytes[CU_WS_N];
  double *scalars; /* 8 doubles of device memory: the losses' and the norm's results */
} cu;

/* Records a failure (the first one since the last sync is kept) and sets this thread's
   ioupos_failure_reason(). Returns status. */
static int cu_fail(int status, const char *fmt, ...) {
  char buf[320];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (!cu.err) {
    cu.err = status;
    memcpy(cu.reason, buf, sizeof buf);
  }
  return ioupos_failure_set(status, buf);
}

static int cu_check(cudaError_t e, const char *what) {
  if (e == cudaSuccess) return 0;
  return cu_fail(e == cudaErrorMemoryAllocation ? IOUPOS_ENOMEM : IOUPOS_EIO,
                 "CUDA backend: %s: %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

/* ---- cuBLAS, loaded on first use ---------------------------------------------------------
   Every command that has --device links this file, and linking libcublas would map cuBLAS and
   cuBLASLt (hundreds of MiB of code) into every process at start: about 90 ms of each
   `--help`, each CPU run and each test. So the nvcc build opens libcublas.so.<major> with
   dlopen() when ioupos_backend_cuda() first starts a device, and looks up the eight functions
   it calls by name. Each pointer has the type of cuBLAS's own declaration (decltype), so a
   signature that does not match cublas_v2.h does not compile; cublas_v2.h's macros
   (cublasCreate -> cublasCreate_v2) give the exported names. The host build calls its
   reference (tests/cuda_host/cublas_ref.h) directly. CU_BLAS(f) names the function either way
   (the pointer is p_f: a member named f would change what f means inside the struct). */
#define CU_BLAS_FUNCTIONS(X) \
  X(cublasCreate) X(cublasDestroy) X(cublasSetStream) X(cublasSetMathMode) \
  X(cublasSetAtomicsMode) X(cublasGetStatusString) X(cublasSgemm) X(cublasSgemmStridedBatched)
#ifdef IOUPOS_CUDA_HOST
#define CU_BLAS(f) f
#else
#define CU_STR_(x) #x
#define CU_STR(x) CU_STR_(x)
#define CU_BLAS_LIB "libcublas.so." CU_STR(CUBLAS_VER_MAJOR)
#define CU_BLAS(f) cu_blas_fn.p_##f
static struct {
#define CU_BLAS_POINTER(f) decltype(&f) p_##f;
  CU_BLAS_FUNCTIONS(CU_BLAS_POINTER)
#undef CU_BLAS_POINTER
} cu_blas_fn;
static void *cu_blas_lib; /* the dlopen handle, NULL until loaded */

/* Opens `lib` (NULL: CU_BLAS_LIB, found through the program's run path, LD_LIBRARY_PATH and the
   system's library folders) and fills cu_blas_fn, once per process. 0 on success; -1 with the
   reason in ioupos_failure_reason() (the library and what went wrong), every pointer NULL. */
extern "C" int ioupos_cuda_blas_load(const char *lib) {
  void *h;
  const char *missing = NULL;
  if (cu_blas_lib) return 0;
  if (!lib) lib = CU_BLAS_LIB;
  h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char *why = dlerror();
    char buf[400];
    snprintf(buf, sizeof buf, "CUDA backend: cuBLAS could not be loaded (%s): %s", lib,
             why ? why : "dlopen failed");
    return ioupos_failure_set(IOUPOS_EIO, buf), -1;
  }
#define CU_BLAS_LOOKUP(f)                                                   \
  if (!missing && !(cu_blas_fn.p_##f = (decltype(&f))dlsym(h, CU_STR(f)))) \
    missing = CU_STR(f);
  CU_BLAS_FUNCTIONS(CU_BLAS_LOOKUP)
#undef CU_BLAS_LOOKUP
  if (missing) {
    char buf[400];
    memset(&cu_blas_fn, 0, sizeof cu_blas_fn);
    dlclose(h);
    snprintf(buf, sizeof buf, "CUDA backend: %s has no function %s (not cuBLAS %d?)", lib,
             missing, CUBLAS_VER_MAJOR);
    return ioupos_failure_set(IOUPOS_EIO, buf), -1;
  }
  cu_blas_lib = h;
  return 0;
}
#endif

static int cu_blas_check(cublasStatus_t s, const char *what) {
  if (s == CUBLAS_STATUS_SUCCESS) return 0;
  return cu_fail(s == CUBLAS_STATUS_ALLOC_FAILED ? IOUPOS_ENOMEM
                 : s == CUBLAS_STATUS_INVALID_VALUE ? IOUPOS_EINVAL : IOUPOS_EIO,
                 "CUDA backend: %s: %s", what, CU_BLAS(cublasGetStatusString)(s));
}

/* after every launch: a bad configuration or an earlier asynchronous error */
static void cu_launched(const char *kernel) { cu_check(cudaGetLastError(), kernel); }

/* Blocks of a grid-stride launch over n items. */
static unsigned cu_blocks(size_t n, unsigned threads) {
  size_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  return b > CU_MAX_GRID ? CU_MAX_GRID : (unsigned)b;
}

/* ---- the memory counter (ioupos_cuda_mem_in_use / ioupos_cuda_mem_peak) -----------------------
   Bytes of device memory the backend holds through cudaMalloc: alloc's blocks (their requested
   sizes; 1 for a 0-byte block), the workspaces and the scalars, and the high-water mark of that
   sum since the process began. cudaFree does not say how much it frees: alloc's blocks are
   remembered by address. Not counted: cuBLAS's own workspace, the CUDA context, the allocator's
   rounding. One host thread drives the backend (see DESIGN), so no lock. */
static struct {
  size_t in_use, peak;
} cu_mem;
static std::unordered_map<void *, size_t> *cu_blocks_live; /* alloc's blocks: address -> bytes */

static void cu_mem_add(size_t bytes) {
  cu_mem.in_use += bytes;
  if (cu_mem.in_use > cu_mem.peak) cu_mem.peak = cu_mem.in_use;
}

static void cu_mem_sub(size_t bytes) {
  cu_mem.in_use -= bytes < cu_mem.in_use ? bytes : cu_mem.in_use;
}

extern "C" size_t ioupos_cuda_mem_in_use(void) { return cu_mem.in_use; }
extern "C" size_t ioupos_cuda_mem_peak(void) { return cu_mem.peak; }

/* Device workspace `slot` of at least `bytes` (grown, never shrunk), or NULL (failure
   recorded). Growing waits for the stream: queued work may still use the old buffer. */
static void *cu_ws(int slot, size_t bytes) {
  void *p = NULL;
  size_t want;
  if (bytes <= cu.ws_bytes[slot] && cu.ws[slot]) return cu.ws[slot];
  want = bytes < 2 * cu.ws_bytes[slot] ? 2 * cu.ws_bytes[slot] : bytes;
  if (want < 4096) want = 4096;
  if (cu.ws[slot]) {
    cu_check(cudaStreamSynchronize(cu.stream), "workspace growth");
    cu_check(cudaFree(cu.ws[slot]), "cudaFree (workspace)");
    cu_mem_sub(cu.ws_bytes[slot]);
    cu.ws[slot] = NULL;
    cu.ws_bytes[slot] = 0;
  }
  if (cudaMalloc(&p, want) != cudaSuccess) {
    cudaGetLastError();
    cu_fail(IOUPOS_ENOMEM, "CUDA backend: out of device memory for a %zu-byte workspace", want);
    return NULL;
  }
  cu.ws[slot] = p;
  cu.ws_bytes[slot] = want;
  cu_mem_add(want);
  return p;
}

/* ---- memory ------------------------------------------------------------------------------- */
static void *cu_alloc(size_t bytes) {
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
  if (e != cudaSuccess) { /* reported by the NULL return, not by the next sync */
    char buf[200];
    size_t fr = 0, tot = 0;
    cudaGetLastError(); /* not sticky: later work may go on */
    cudaMemGetInfo(&fr, &tot);
    snprintf(buf, sizeof buf, "CUDA backend: out of device memory: %zu bytes asked, %zu of %zu "
             "free (%s)", bytes, fr, tot, cudaGetErrorName(e));
    ioupos_failure_set(IOUPOS_ENOMEM, buf);
    return NULL;
  }
  if (cu_check(cudaMemsetAsync(p, 0, bytes ? bytes : 1, cu.stream), "cudaMemsetAsync (alloc)")) {
    cudaFree(p);
    return NULL;
  }
  if (!cu_blocks_live) cu_blocks_live = new std::unordered_map<void *, size_t>();
  (*cu_blocks_live)[p] = bytes ? bytes : 1;
  cu_mem_add(bytes ? bytes : 1);
  return p;
}

static void cu_release(void *p) {
  if (!p) return;
  if (cu_blocks_live) {
    std::unordered_map<void *, size_t>::iterator it = cu_blocks_live->find(p);
    if (it != cu_blocks_live->end()) {
      cu_mem_sub(it->second);
      cu_blocks_live->erase(it);
    }
  }
  cu_check(cudaFree(p), "cudaFree");
}

static void cu_upload(void *dst, const void *src, size_t bytes) {
  if (!bytes) return;
  if (!cu_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cu.stream), "upload"))
    cu_check(cudaStreamSynchronize(cu.stream), "upload (wait)");
}

static void cu_download(void *dst, const void *src, size_t bytes) {
  if (!bytes) return;
  if (!cu_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cu.stream), "download"))
    cu_check(cudaStreamSynchronize(cu.stream), "download (wait)");
}

static void cu_copy(void *dst, const void *src, size_t bytes) {
  if (bytes && dst != src)
    cu_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cu.stream), "copy");
}

static void cu_zero(void *dst, size_t bytes) {
  if (bytes) cu_check(cudaMemsetAsync(dst, 0, bytes, cu.stream), "zero");
}

static int cu_sync(void) {
  int st;
  cu_check(cudaStreamSynchronize(cu.stream), "sync");
  st = cu.err;
  if (st) ioupos_failure_set(st, cu.reason);
  cu.err = 0;
  cu.reason[0] = 0;
  return st;
}

/* a scalar result: waits for the stream; NaN after any failure since the last sync (which stays
   recorded for it) */
static double cu_scalar(int i) {
  double v = NAN;
  if (cu_check(cudaMemcpyAsync(&v, cu.scalars + i, sizeof v, cudaMemcpyDeviceToHost, cu.stream),
               "scalar result"))
    return NAN;
  if (cu_check(cudaStreamSynchronize(cu.stream), "scalar result (wait)")) return NAN;
  return cu.err ? NAN : v;
}

/* ---- matrix products: row-major arguments (ioupos_gemm's), column-major cuBLAS ------------
   C[M][N] = alpha op(A) op(B) + beta C, op(X) = X or X^T (t = 1), all row-major with leading
   dimensions lda, ldb, ldc. Column-major cuBLAS sees each row-major matrix as its transpose,
   so it computes C^T[N][M] = op(B)^T op(A)^T: first operand B, second A, m = N, n = M. */
typedef cublasStatus_t (*cu_sgemm_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int,
                                      int, int, const float *, const float *, int, const float *,
                                      int, const float *, float *, int);
typedef cublasStatus_t (*cu_sgemm_sb_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t,
                                         int, int, int, const float *, const float *, int,
                                         long long int, const float *, int, long long int,
                                         const float *, float *, int, long long int, int);
/* the signatures above are cuBLAS's: checked against cublas_v2.h in the nvcc build and against
   the reference in the host build, so the two agree */
static_assert(std::is_same<decltype(&cublasSgemm), cu_sgemm_fn>::value, "cublasSgemm");
static_assert(std::is_same<decltype(&cublasSgemmStridedBatched), cu_sgemm_sb_fn>::value,
              "cublasSgemmStridedBatched");

static int cu_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc) {
  if (M <= 0 || N <= 0) return 0;
  return cu_blas_check(CU_BLAS(cublasSgemm)(cu.blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                            ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B,
                                            ldb, A, lda, &beta, C, ldc),
                       "cublasSgemm");
}

/* batch items at A + i sA, B + i sB, C + i sC (strides in floats) */
static int cu_gemm_batched(int ta, int tb, int M, int N, int K, float alpha, const float *A,
                           int lda, long long sA, const float *B, int ldb, long long sB,
                           float beta, float *C, int ldc, long long sC, int batch) {
  if (M <= 0 || N <= 0 || batch <= 0) return 0;
  return cu_blas_check(CU_BLAS(cublasSgemmStridedBatched)(
                           cu.blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                           ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, ldb, sB, A, lda,
                           sA, &beta, C, ldc, sC, batch),
                       "cublasSgemmStridedBatched");
}

/* ---- shared device helpers ---------------------------------------------------------------- */
/* Sum of v over the block (blockDim.x threads, a power of two): a tree of fixed shape in shared
   memory, so the same inputs give the same bits. Every thread of the block must call it. */
static __device__ double cu_block_sum(double v) {
  __shared__ double sh[1024];
  unsigned t = threadIdx.x, s;
  sh[t] = v;
  __syncthreads();
  for (s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) sh[t] += sh[t + s];
    __syncthreads();
  }
  v = sh[0];
  __syncthreads();
  return v;
}

/* Maximum of v over the block (as the CPU's "v > mx ? v : mx", a NaN never wins a
   comparison). Every thread of the block must call it. */
static __device__ double cu_block_max(double v) {
  __shared__ double sh[1024];
  unsigned t = threadIdx.x, s;
  sh[t] = v;
  __syncthreads();
  for (s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s && sh[t + s] > sh[t]) sh[t] = sh[t + s];
    __syncthreads();
  }
  v = sh[0];
  __syncthreads();
  return v;
}

/* i-th item of a grid-stride loop */
#define CU_FOR(i, n) \
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
       i += (size_t)gridDim.x * blockDim.x)

/* ---- column sums: db[o] += sum over T rows of d[t][o] -------------------------------------
   Partial sums per chunk of CU_ROW_CHUNK rows (row by row, in double), then over the chunks in
   order: the CPU's ioupos__colsum_add, the same additions in the same order. */
static __global__ void cu_colsum_part_k(double *part, const float *d, size_t T, int OC) {
  int o = blockIdx.y * blockDim.x + threadIdx.x;
  size_t ch = blockIdx.x, t, t1 = (ch + 1) * CU_ROW_CHUNK < T ? (ch + 1) * CU_ROW_CHUNK : T;
  double s = 0.0;
  if (o >= OC) return;
  for (t = ch * CU_ROW_CHUNK; t < t1; ++t) s += d[t * OC + o];
  part[ch * OC + o] = s;
}

static __global__ void cu_colsum_final_k(float *db, const double *part, size_t nch, int OC) {
  CU_FOR(o, (size_t)OC) {
    double tot = 0.0;
    size_t ch;
    for (ch = 0; ch < nch; ++ch) tot += part[ch * OC + o];
    db[o] += (float)tot;
  }
}

static int cu_colsum_add(float *db, const float *d, size_t T, int OC) {
  size_t nch = (T + CU_ROW_CHUNK - 1) / CU_ROW_CHUNK;
  double *part;
  if (T == 0 || OC < 1) return 0;
  if ((OC + CU_RT - 1) / CU_RT > 65535)
    return cu_fail(IOUPOS_EINVAL, "CUDA backend: column sum over %d columns (at most %d)", OC,
                   65535 * CU_RT);
  part = (double *)cu_ws(CU_WS_COLSUM, sizeof(double) * nch * (size_t)OC);
  if (!part) return IOUPOS_ENOMEM;
  CU_RUN(cu_colsum_part_k, dim3((unsigned)nch, (OC + CU_RT - 1) / CU_RT), dim3(CU_RT), part, d, T,
         OC);
  CU_RUN(cu_colsum_final_k, dim3(cu_blocks((size_t)OC, CU_EW)), dim3(CU_EW), db, part, nch, OC);
  return cu.err;
}

static int cu_bad(const char *op, const char *what) {
  return cu_fail(IOUPOS_EINVAL, "CUDA backend: %s: %s", op, what);
}

/* =============================================================================================
   Section 11: layers
   ============================================================================================= */

/* ---- linear ---- */
static __global__ void cu_fill_rows_k(float *out, const float *row, size_t N, int OC) {
  CU_FOR(i, N * (size_t)OC) out[i] = row[i % (size_t)OC];
}

static int cu_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                             int N, int C, int OC) {
  if (N < 0 || C < 0 || OC < 0) return cu_bad("linear_forward", "negative size");
  if (N == 0 || OC == 0) return 0;
  if (bias) CU_RUN(cu_fill_rows_k, dim3(cu_blocks((size_t)N * OC, CU_EW)), dim3(CU_EW), out, bias,
                   (size_t)N, OC);
  return cu_gemm(0, 1, N, OC, C, 1.0f, inp, C > 0 ? C : 1, weight, C > 0 ? C : 1,
                 bias ? 1.0f : 0.0f, out, OC);
}

static int cu_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                              const float *inp, const float *weight, int N, int C, int OC) {
  int st = 0, ldc = C > 0 ? C : 1, ldo = OC > 0 ? OC : 1;
  if (N < 0 || C < 0 || OC < 0) return cu_bad("linear_backward", "negative size");
  if (dinp) st = cu_gemm(0, 0, N, C, OC, 1.0f, dout, ldo, weight, ldc, 1.0f, dinp, ldc);
  if (!st && dweight) st = cu_gemm(1, 0, OC, C, N, 1.0f, dout, ldo, inp, ldc, 1.0f, dweight, ldc);
  if (!st && dbias && N > 0) st = cu_colsum_add(dbias, dout, (size_t)N, OC);
  return st;
}

/* ---- layer norm: one block per row ---- */
static __global__ void cu_layernorm_fwd_k(float *out, float *mean, float *rstd, const float *inp,
                                          const float *weight, const float *bias, int C,
                                          float eps) {
  size_t n = blockIdx.x;
  const float *x = inp + n * C;
  float *y = out + n * C;
  double s = 0.0, m, v, r;
  int c;
  for (c = threadIdx.x; c < C; c += blockDim.x) s += x[c];
  m = cu_block_sum(s) / C;
  s = 0.0;
  for (c = threadIdx.x; c < C; c += blockDim.x) {
    double d = x[c] - m;
    s += d * d;
  }
  v = cu_block_sum(s) / C;
  r = 1.0 / sqrt(v + eps);
  for (c = threadIdx.x; c < C; c += blockDim.x) {
    double h = (x[c] - m) * r; /* the CPU's (x - m) * r * w + b, in that order */
    if (weight) h *= weight[c];
    if (bias) h += bias[c];
    y[c] = (float)h;
  }
  if (threadIdx.x == 0) {
    mean[n] = (float)m;
    rstd[n] = (float)r;
  }
}

static void cu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                 const float *weight, const float *bias, int N, int C,
                                 float eps) {
  if (N < 1 || C < 1) return;
  CU_RUN_SYNC(cu_layernorm_fwd_k, dim3((unsigned)N), dim3(CU_RT), out, mean, rstd, inp, weight,
              bias, C, eps);
}

/* dinp of one row: r (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = dy w */
static __global__ void cu_layernorm_bwd_k(float *dinp, const float *dout, const float *inp,
                                          const float *weight, const float *mean,
                                          const float *rstd, int C) {
  size_t n = blockIdx.x;
  const float *x = inp + n * C, *dy = dout + n * C;
  float *dx = dinp + n * C;
  double m = mean[n], r = rstd[n], s1 = 0.0, s2 = 0.0;
  int c;
  for (c = threadIdx.x; c < C; c += blockDim.x) {
    double xh = (x[c] - m) * r, dxh = weight ? (double)dy[c] * weight[c] : dy[c];
    s1 += dxh;
    s2 += dxh * xh;
  }
  s1 = cu_block_sum(s1) / C;
  s2 = cu_block_sum(s2) / C;
  for (c = threadIdx.x; c < C; c += blockDim.x) {
    double xh = (x[c] - m) * r, dxh = weight ? (double)dy[c] * weight[c] : dy[c];
    dx[c] += (float)(r * (dxh - s1 - xh * s2));
  }
}

/* the weight and bias gradients' partial sums of one chunk of rows: part[ch][0..C) = sum dy xhat,
   part[ch][C..2C) = sum dy (row by row, as the CPU) */
static __global__ void cu_layernorm_part_k(double *part, const float *dout, const float *inp,
                                           const float *mean, const float *rstd, int N, int C) {
  int c = blockIdx.y * blockDim.x + threadIdx.x, n, n0 = blockIdx.x * CU_ROW_CHUNK;
  int n1 = n0 + CU_ROW_CHUNK < N ? n0 + CU_ROW_CHUNK : N;
  double pw = 0.0, pb = 0.0;
  if (c >= C) return;
  for (n = n0; n < n1; ++n) {
    double m = mean[n], r = rstd[n];
    float dy = dout[(size_t)n * C + c];
    pw += dy * ((inp[(size_t)n * C + c] - m) * r);
    pb += dy;
  }
  part[(size_t)blockIdx.x * 2 * C + c] = pw;
  part[(size_t)blockIdx.x * 2 * C + C + c] = pb;
}

static __global__ void cu_layernorm_final_k(float *dweight, float *dbias, const double *part,
                                            int nch, int C) {
  CU_FOR(c, (size_t)C) {
    double tw = 0.0, tb = 0.0;
    int ch;
    for (ch = 0; ch < nch; ++ch) {
      tw += part[(size_t)ch * 2 * C + c];
      tb += part[(size_t)ch * 2 * C + C + c];
    }
    if (dweight) dweight[c] += (float)tw;
    if (dbias) dbias[c] += (float)tb;
  }
}

static int cu_layernorm_params(float *dweight, float *dbias, const float *dout, const float *inp,
                               const float *mean, const float *rstd, int N, int C) {
  int nch = (N + CU_ROW_CHUNK - 1) / CU_ROW_CHUNK;
  double *part;
  if ((!dweight && !dbias) || N < 1 || C < 1) return 0;
  if ((C + CU_RT - 1) / CU_RT > 65535) return cu_bad("layernorm_backward", "too many channels");
  part = (double *)cu_ws(CU_WS_COLSUM, sizeof(double) * 2 * (size_t)C * nch);
  if (!part) return IOUPOS_ENOMEM;
  CU_RUN(cu_layernorm_part_k, dim3((unsigned)nch, (C + CU_RT - 1) / CU_RT), dim3(CU_RT), part,
         dout, inp, mean, rstd, N, C);
  CU_RUN(cu_layernorm_final_k, dim3(cu_blocks((size_t)C, CU_EW)), dim3(CU_EW), dweight, dbias,
         part, nch, C);
  return 0;
}

static void cu_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                  const float *inp, const float *weight, const float *mean,
                                  const float *rstd, int N, int C) {
  if (N < 1 || C < 1) return;
  if (dinp)
    CU_RUN_SYNC(cu_layernorm_bwd_k, dim3((unsigned)N), dim3(CU_RT), dinp, dout, inp, weight, mean,
                rstd, C);
  cu_layernorm_params(dweight, dbias, dout, inp, mean, rstd, N, C);
}

/* ---- GELU (exact erf form, in double, rounded once: the CPU's portable formula) ---- */
static __host__ __device__ double cu_gelu_cdf(double x) {
  return 0.5 * (1.0 + erf(x * 0.70710678118654752440));
}

/* mode 0: a = gelu(x); mode 1: a += b gelu'(x); mode 2: b = b gelu'(x) and, when a is not NULL,
   a = gelu(x) (the MLP backward's recomputation) */
static __global__ void cu_gelu_k(int mode, float *a, float *b, const float *x, size_t n) {
  CU_FOR(i, n) {
    double v = x[i], cdf = cu_gelu_cdf(v), g;
    if (mode == 0) {
      a[i] = (float)(v * cdf);
      continue;
    }
    g = cdf + v * (0.39894228040143267794 * exp(-0.5 * v * v));
    if (mode == 1) {
      a[i] += (float)(b[i] * g);
    } else {
      b[i] = (float)(b[i] * g);
      if (a) a[i] = (float)(v * cdf);
    }
  }
}

static void cu_gelu_forward(float *out, const float *inp, size_t n) {
  if (n) CU_RUN(cu_gelu_k, dim3(cu_blocks(n, CU_EW)), dim3(CU_EW), 0, out, (float *)NULL, inp, n);
}

static void cu_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
  if (n)
    CU_RUN(cu_gelu_k, dim3(cu_blocks(n, CU_EW)), dim3(CU_EW), 1, dinp, (float *)dout, inp, n);
}

/* ---- ReLU ---- */
static __global__ void cu_relu_fwd_k(float *out, const float *inp, size_t n) {
  CU_FOR(i, n) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}
static __global__ void cu_relu_bwd_k(float *dinp, const float *inp, const float *dout, size_t n) {
  CU_FOR(i, n) if (inp[i] > 0.0f) dinp[i] += dout[i];
}
static void cu_relu_forward(float *out, const float *inp, size_t n) {
  if (n) CU_RUN(cu_relu_fwd_k, dim3(cu_blocks(n, CU_EW)), dim3(CU_EW), out, inp, n);
}
static void cu_relu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
  if (n) CU_RUN(cu_relu_bwd_k, dim3(cu_blocks(n, CU_EW)), dim3(CU_EW), dinp, inp, dout, n);
}

/* ---- L2 normalisation of rows: one block per row ---- */
static __global__ void cu_l2norm_fwd_k(float *out, float *denom, const float *inp, int C,
                                       float eps) {
  size_t n = blockIdx.x;
  const float *x = inp + n * C;
  double s = 0.0, d;
  int c;
  for (c = threadIdx.x; c < C; c += blockDim.x) s += (double)x[c] * x[c];
  d = sqrt(cu_block_sum(s));
  if (!(d > eps)) d = eps;
  for (c = threadIdx.x; c < C; c += blockDim.x) out[n * C + c] = (float)(x[c] / d);
  if (threadIdx.x == 0) denom[n] = (float)d;
}

static __global__ void cu_l2norm_bwd_k(float *dinp, const float *out, const float *denom,
                                       const float *dout, int C, float eps) {
  size_t n = blockIdx.x;
  const float *y = out + n * C, *dy = dout + n * C;
  float *dx = dinp + n * C;
  double d = denom[n], s = 0.0;
  int c;
  if (d > eps) /* the same for the whole block */
    for (c = threadIdx.x; c < C; c += blockDim.x) s += (double)y[c] * dy[c];
  s = cu_block_sum(s);
  for (c = threadIdx.x; c < C; c += blockDim.x) dx[c] += (float)((dy[c] - y[c] * s) / d);
}

static void cu_l2norm_forward(float *out, float *denom, const float *inp, int N, int C,
                              float eps) {
  if (N < 1 || C < 1) return;
  CU_RUN_SYNC(cu_l2norm_fwd_k, dim3((unsigned)N), dim3(CU_RT), out, denom, inp, C, eps);
}

static void cu_l2norm_backward(float *dinp, const float *out, const float *denom,
                               const float *dout, int N, int C, float eps) {
  if (N < 1 || C < 1) return;
  CU_RUN_SYNC(cu_l2norm_bwd_k, dim3((unsigned)N), dim3(CU_RT), dinp, out, denom, dout, C, eps);
}

/* ---- global average pooling: one thread per (sample, channel), tokens in order ---- */
static __global__ void cu_avgpool_fwd_k(float *out, const float *inp, int B, int T, int C) {
  CU_FOR(i, (size_t)B * C) {
    size_t b = i / C, c = i % C;
    double acc = 0.0;
    int t;
    for (t = 0; t < T; ++t) acc += inp[(b * T + t) * C + c];
    out[i] = (float)(acc / T);
  }
}

static __global__ void cu_avgpool_bwd_k(float *dinp, const float *dout, int B, int T, int C) {
  CU_FOR(i, (size_t)B * T * C) {
    size_t c = i % C, b = i / C / T;
    dinp[i] += (float)((double)dout[b * C + c] / T);
  }
}

static void cu_avgpool_forward(float *out, const float *inp, int B, int T, int C) {
  if (B < 1 || C < 1 || T < 1) return;
  CU_RUN(cu_avgpool_fwd_k, dim3(cu_blocks((size_t)B * C, CU_EW)), dim3(CU_EW), out, inp, B, T, C);
}

static void cu_avgpool_backward(float *dinp, const float *dout, int B, int T, int C) {
  if (B < 1 || C < 1 || T < 1) return;
  CU_RUN(cu_avgpool_bwd_k, dim3(cu_blocks((size_t)B * T * C, CU_EW)), dim3(CU_EW), dinp, dout, B,
         T, C);
}

/* ---- batch norm 1d: one thread per channel, rows in order (the CPU's loops) ---- */
static __global__ void cu_bn_fwd_train_k(float *out, float *mean, float *rstd,
                                         float *running_mean, float *running_var,
                                         const float *inp, const float *weight, const float *bias,
                                         int N, int C, float momentum, float eps) {
  CU_FOR(c, (size_t)C) {
    double m = 0.0, v = 0.0, r;
    int n;
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

static __global__ void cu_bn_bwd_train_k(float *dinp, float *dweight, float *dbias,
                                         const float *dout, const float *inp, const float *weight,
                                         const float *mean, const float *rstd, int N, int C) {
  CU_FOR(c, (size_t)C) {
    double m = mean[c], r = rstd[c], w = weight ? weight[c] : 1.0, s1 = 0.0, s2 = 0.0;
    int n;
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

static __global__ void cu_bn_fwd_eval_k(float *out, const float *inp, const float *running_mean,
                                        const float *running_var, const float *weight,
                                        const float *bias, int N, int C, float eps) {
  CU_FOR(i, (size_t)N * C) {
    size_t c = i % C;
    double m = running_mean[c], r = 1.0 / sqrt((double)running_var[c] + eps);
    double h = (inp[i] - m) * r;
    if (weight) h *= weight[c];
    if (bias) h += bias[c];
    out[i] = (float)h;
  }
}

static __global__ void cu_bn_bwd_eval_k(float *dinp, float *dweight, float *dbias,
                                        const float *dout, const float *inp,
                                        const float *running_mean, const float *running_var,
                                        const float *weight, int N, int C, float eps) {
  CU_FOR(c, (size_t)C) {
    double m = running_mean[c], r = 1.0 / sqrt((double)running_var[c] + eps);
    double w = weight ? weight[c] : 1.0, sw = 0.0, sb = 0.0;
    int n;
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

static void cu_batchnorm_forward_train(float *out, float *mean, float *rstd, float *running_mean,
                                       float *running_var, const float *inp, const float *weight,
                                       const float *bias, int N, int C, float momentum,
                                       float eps) {
  if (N < 1 || C < 1) return;
  CU_RUN(cu_bn_fwd_train_k, dim3(cu_blocks((size_t)C, CU_RT)), dim3(CU_RT), out, mean, rstd,
         running_mean, running_var, inp, weight, bias, N, C, momentum, eps);
}

static void cu_batchnorm_backward_train(float *dinp, float *dweight, float *dbias,
                                        const float *dout, const float *inp, const float *weight,
                                        const float *mean, const float *rstd, int N, int C) {
  if (N < 1 || C < 1) return;
  CU_RUN(cu_bn_bwd_train_k, dim3(cu_blocks((size_t)C, CU_RT)), dim3(CU_RT), dinp, dweight, dbias,
         dout, inp, weight, mean, rstd, N, C);
}

static void cu_batchnorm_forward_eval(float *out, const float *inp, const float *running_mean,
                                      const float *running_var, const float *weight,
                                      const float *bias, int N, int C, float eps) {
  if (N < 1 || C < 1) return;
  CU_RUN(cu_bn_fwd_eval_k, dim3(cu_blocks((size_t)N * C, CU_EW)), dim3(CU_EW), out, inp,
         running_mean, running_var, weight, bias, N, C, eps);
}

static void cu_batchnorm_backward_eval(float *dinp, float *dweight, float *dbias,
                                       const float *dout, const float *inp,
                                       const float *running_mean, const float *running_var,
                                       const float *weight, int N, int C, float eps) {
  if (N < 1 || C < 1) return;
  CU_RUN(cu_bn_bwd_eval_k, dim3(cu_blocks((size_t)C, CU_RT)), dim3(CU_RT), dinp, dweight, dbias,
         dout, inp, running_mean, running_var, weight, N, C, eps);
}

/* ---- residual add with drop path: out = x + y mask[b] ---- */
static __global__ void cu_residual_fwd_k(float *out, const float *x, const float *y,
                                         const float *mask, size_t S, size_t n) {
  CU_FOR(i, n) out[i] = mask ? x[i] + y[i] * mask[i / S] : x[i] + y[i];
}
static __global__ void cu_residual_bwd_k(float *dy, const float *dout, const float *mask,
                                         size_t S, size_t n) {
  CU_FOR(i, n) dy[i] += mask ? dout[i] * mask[i / S] : dout[i];
}
static void cu_residual_forward(float *out, const float *x, const float *y, const float *mask,
                                int B, size_t S) {
  size_t n = (size_t)(B > 0 ? B : 0) * S;
  if (n) CU_RUN(cu_residual_fwd_k, dim3(cu_blocks(n, CU_EW)), dim3(CU_EW), out, x, y, mask, S, n);
}
static void cu_residual_backward(float *dy, const float *dout, const float *mask, int B,
                                 size_t S) {
  size_t n = (size_t)(B > 0 ? B : 0) * S;
  if (n) CU_RUN(cu_residual_bwd_k, dim3(cu_blocks(n, CU_EW)), dim3(CU_EW), dy, dout, mask, S, n);
}

/* ---- patch embedding: im2col (kernel = stride, zero padding at the end) + GEMM ----
   The geometry of ioupos__pe_geom: 3 internal axes (2D: a leading axis of size 1 with kernel
   depth 1), S the image, g = ceil(S / kernel) patches, kk the kernel extent per axis. */
struct cu_pe {
  int S[3], g[3], kk[3];
};

static __host__ __device__ cu_pe cu_pe_geom(int dims, const int *shape, int p) {
  cu_pe o;
  int k;
  for (k = 0; k < 3; ++k) {
    int d3 = dims == 3;
    o.S[k] = d3 ? shape[k] : (k == 0 ? 1 : shape[k - 1]);
    o.kk[k] = d3 || k > 0 ? p : 1;
    o.g[k] = (o.S[k] + o.kk[k] - 1) / o.kk[k];
  }
  return o;
}

/* Element (row, j) of the im2col matrix [B g0 g1 g2][Cin kk0 kk1 kk2]: row (b, z, y, x) in
   raster order, column (ci, a, e, f) in torch's weight order. Returns the offset in the image
   [B][Cin][S0][S1][S2] that it reads, or -1 for the zero padding. */
static __host__ __device__ long long cu_pe_source(const cu_pe &g, int Cin, size_t row, size_t j) {
  size_t r = row;
  int x = (int)(r % g.g[2]), y, z, f, e, a;
  long long b, ci;
  r /= g.g[2];
  y = (int)(r % g.g[1]);
  r /= g.g[1];
  z = (int)(r % g.g[0]);
  b = (long long)(r / g.g[0]);
  f = (int)(j % g.kk[2]);
  j /= g.kk[2];
  e = (int)(j % g.kk[1]);
  j /= g.kk[1];
  a = (int)(j % g.kk[0]);
  ci = (long long)(j / g.kk[0]);
  z = z * g.kk[0] + a, y = y * g.kk[1] + e, x = x * g.kk[2] + f;
  if (z >= g.S[0] || y >= g.S[1] || x >= g.S[2]) return -1;
  return (((b * Cin + ci) * g.S[0] + z) * g.S[1] + y) * g.S[2] + x;
}

static __global__ void cu_pe_im2col_k(float *col, const float *inp, cu_pe g, int Cin, size_t K,
                                      size_t n) {
  CU_FOR(i, n) {
    long long s = cu_pe_source(g, Cin, i / K, i % K);
    col[i] = s < 0 ? 0.0f : inp[s];
  }
}

/* img += the scatter of col (each image element is read by at most one patch element) */
static __global__ void cu_pe_col2im_k(float *img, const float *col, cu_pe g, int Cin, size_t K,
                                      size_t n) {
  CU_FOR(i, n) {
    long long s = cu_pe_source(g, Cin, i / K, i % K);
    if (s >= 0) img[s] += col[i];
  }
}

static int cu_pe_check(const char *op, int dims, int B, int Cin, const int *shape, int p,
                       int Cout) {
  int k;
  if ((dims != 2 && dims != 3) || B < 1 || Cin < 1 || p < 1 || Cout < 1 || !shape)
    return cu_bad(op, "dims must be 2 or 3 and B, Cin, p, Cout >= 1");
  for (k = 0; k < dims; ++k)
    if (shape[k] < 1) return cu_bad(op, "a spatial size < 1");
  return 0;
}

static int cu_patch_embed_forward(float *out, float *col, const float *inp, const float *weight,
                                  const float *bias, int dims, int B, int Cin, const int shape[],
                                  int p, int Cout) {
  cu_pe g;
  size_t M, K;
  int st = cu_pe_check("patch_embed_forward", dims, B, Cin, shape, p, Cout);
  if (st) return st;
  g = cu_pe_geom(dims, shape, p);
  M = (size_t)B * g.g[0] * g.g[1] * g.g[2];
  K = (size_t)Cin * g.kk[0] * g.kk[1] * g.kk[2];
  CU_RUN(cu_pe_im2col_k, dim3(cu_blocks(M * K, CU_EW)), dim3(CU_EW), col, inp, g, Cin, K, M * K);
  return cu_linear_forward(out, col, weight, bias, (int)M, (int)K, Cout);
}

static int cu_patch_embed_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                                   const float *dout, const float *col, const float *weight,
                                   int dims, int B, int Cin, const int shape[], int p, int Cout) {
  cu_pe g;
  size_t M, K;
  int st = cu_pe_check("patch_embed_backward", dims, B, Cin, shape, p, Cout);
  if (st) return st;
  g = cu_pe_geom(dims, shape, p);
  M = (size_t)B * g.g[0] * g.g[1] * g.g[2];
  K = (size_t)Cin * g.kk[0] * g.kk[1] * g.kk[2];
  if (dinp) { /* scratch = dout weight, then scattered into the image */
    st = cu_gemm(0, 0, (int)M, (int)K, Cout, 1.0f, dout, Cout, weight, (int)K, 0.0f, scratch,
                 (int)K);
    if (st) return st;
    CU_RUN(cu_pe_col2im_k, dim3(cu_blocks(M * K, CU_EW)), dim3(CU_EW), dinp, scratch, g, Cin, K,
           M * K);
  }
  return cu_linear_backward(NULL, dweight, dbias, dout, col, weight, (int)M, (int)K, Cout);
}

/* ---- patch merging: gather of the 2^dims sub-grids (MONAI's order), layer norm, linear ---- */
/* MONAI's sub-grid offsets (d, h, w) of sub-grid q; 2D: (0, h, w) */
static __host__ __device__ void cu_merge_offset(int dims, int q, int o[3]) {
  const int o3[8][3] = {{0, 0, 0}, {1, 0, 0}, {0, 1, 0}, {0, 0, 1},
                        {1, 1, 0}, {1, 0, 1}, {0, 1, 1}, {1, 1, 1}};
  const int o2[4][3] = {{0, 0, 0}, {0, 1, 0}, {0, 0, 1}, {0, 1, 1}};
  int k;
  for (k = 0; k < 3; ++k) o[k] = dims == 3 ? o3[q][k] : o2[q][k];
}

struct cu_mg {
  int dims, S[3], g[3];
};

static __host__ __device__ cu_mg cu_merge_geom(int dims, const int *shape) {
  cu_mg m;
  int k;
  m.dims = dims;
  for (k = 0; k < 3; ++k) {
    m.S[k] = dims == 3 ? shape[k] : (k == 0 ? 1 : shape[k - 1]);
    m.g[k] = dims == 2 && k == 0 ? 1 : (m.S[k] + 1) / 2;
  }
  return m;
}

/* Row `row` (b, z, y, x of the merged grid), sub-grid q of the concatenation: the offset of the
   first channel of the input position it reads in [B][S...][C], or -1 for the zero padding. */
static __host__ __device__ long long cu_merge_source(const cu_mg &m, size_t row, int q, int C) {
  size_t r = row;
  int x = (int)(r % m.g[2]), y, z, o[3], zz, yy, xx;
  long long b;
  r /= m.g[2];
  y = (int)(r % m.g[1]);
  r /= m.g[1];
  z = (int)(r % m.g[0]);
  b = (long long)(r / m.g[0]);
  cu_merge_offset(m.dims, q, o);
  zz = (m.dims == 3 ? 2 * z : 0) + o[0], yy = 2 * y + o[1], xx = 2 * x + o[2];
  if (zz >= m.S[0] || yy >= m.S[1] || xx >= m.S[2]) return -1;
  return (((b * m.S[0] + zz) * m.S[1] + yy) * m.S[2] + xx) * C;
}

/* dir 0: cat[M][nq C] = gather of inp; dir 1: dinp += scatter of cat (each input element is read
   by exactly one cat element) */
static __global__ void cu_merge_gather_k(float *cat, float *dinp, const float *inp, int dir,
                                         cu_mg m, int nq, int C, size_t n) {
  CU_FOR(i, n) {
    size_t K = (size_t)nq * C, row = i / K;
    int q = (int)(i % K / C), c = (int)(i % C);
    long long s = cu_merge_source(m, row, q, C);
    if (dir == 0) cat[i] = s < 0 ? 0.0f : inp[s + c];
    else if (s >= 0) dinp[s + c] += cat[i];
  }
}

static int cu_merge_check(const char *op, int dims, int B, const int *shape, int C) {
  int k;
  if ((dims != 2 && dims != 3) || B < 1 || C < 1 || !shape)
    return cu_bad(op, "dims must be 2 or 3 and B, C >= 1");
  for (k = 0; k < dims; ++k)
    if (shape[k] < 1) return cu_bad(op, "a spatial size < 1");
  return 0;
}

static int cu_patch_merging_forward(float *out, float *cat, float *lnout, float *mean, float *rstd,
                                    const float *inp, const float *ln_w, const float *ln_b,
                                    const float *red_w, int dims, int B, const int shape[],
                                    int C) {
  int st = cu_merge_check("patch_merging_forward", dims, B, shape, C), nq = dims == 3 ? 8 : 4;
  cu_mg m;
  size_t M;
  if (st) return st;
  m = cu_merge_geom(dims, shape);
  M = (size_t)B * m.g[0] * m.g[1] * m.g[2];
  CU_RUN(cu_merge_gather_k, dim3(cu_blocks(M * nq * C, CU_EW)), dim3(CU_EW), cat, (float *)NULL,
         inp, 0, m, nq, C, M * nq * C);
  cu_layernorm_forward(lnout, mean, rstd, cat, ln_w, ln_b, (int)M, nq * C, 1e-5f);
  return cu_linear_forward(out, lnout, red_w, NULL, (int)M, nq * C, 2 * C);
}

static int cu_patch_merging_backward(float *dinp, float *dln_w, float *dln_b, float *dred_w,
                                     float *scratch, const float *dout, const float *cat,
                                     const float *lnout, const float *mean, const float *rstd,
                                     const float *ln_w, const float *red_w, int dims, int B,
                                     const int shape[], int C) {
  int st = cu_merge_check("patch_merging_backward", dims, B, shape, C), nq = dims == 3 ? 8 : 4;
  int K = nq * C;
  cu_mg m;
  size_t M;
  float *dln = scratch, *dcat;
  if (st) return st;
  m = cu_merge_geom(dims, shape);
  M = (size_t)B * m.g[0] * m.g[1] * m.g[2];
  dcat = scratch + M * K;
  /* dln = dout red_w (overwritten), dred_w += dout^T lnout */
  st = cu_gemm(0, 0, (int)M, K, 2 * C, 1.0f, dout, 2 * C, red_w, K, 0.0f, dln, K);
  if (!st && dred_w) st = cu_gemm(1, 0, 2 * C, K, (int)M, 1.0f, dout, 2 * C, lnout, K, 1.0f,
                                  dred_w, K);
  if (st) return st;
  if (dinp) cu_zero(dcat, sizeof(float) * M * K);
  cu_layernorm_backward(dinp ? dcat : NULL, dln_w, dln_b, dln, cat, ln_w, mean, rstd, (int)M, K);
  if (dinp)
    CU_RUN(cu_merge_gather_k, dim3(cu_blocks(M * K, CU_EW)), dim3(CU_EW), dcat, dinp,
           (const float *)NULL, 1, m, nq, C, M * K);
  return cu.err;
}

/* ---- MLP: Linear - GELU - Linear ---- */
static int cu_mlp_forward(float *out, float *h_pre, float *h_act, const float *inp,
                          const float *w1, const float *b1, const float *w2, const float *b2,
                          int N, int C, int Hd) {
  int st = cu_linear_forward(h_pre, inp, w1, b1, N, C, Hd);
  if (st) return st;
  cu_gelu_forward(h_act, h_pre, (size_t)N * Hd);
  return cu_linear_forward(out, h_act, w2, b2, N, Hd, C);
}

static int cu_mlp_backward(float *dinp, float *dw1, float *db1, float *dw2, float *db2,
                           float *scratch, const float *dout, const float *inp,
                           const float *h_pre, const float *h_act, const float *w1,
                           const float *w2, int N, int C, int Hd) {
  size_t nh = (size_t)N * Hd;
  float *dh = scratch, *act = h_act ? NULL : scratch + nh;
  int st;
  if (N < 0 || C < 1 || Hd < 1) return cu_bad("mlp_backward", "bad sizes");
  /* dh = dout w2 (overwritten), then dh := gelu'(h_pre) dh, GELU(h_pre) recomputed beside it
     when h_act is not kept (the forward's kernel arithmetic: the same values) */
  st = cu_gemm(0, 0, N, Hd, C, 1.0f, dout, C, w2, Hd, 0.0f, dh, Hd);
  if (st) return st;
  if (nh) CU_RUN(cu_gelu_k, dim3(cu_blocks(nh, CU_EW)), dim3(CU_EW), 2, act, dh, h_pre, nh);
  st = cu_linear_backward(NULL, dw2, db2, dout, h_act ? h_act : act, w2, N, Hd, C);
  if (st) return st;
  return cu_linear_backward(dinp, dw1, db1, dh, inp, w1, N, C, Hd);
}

/* =============================================================================================
   Section 12: shifted-window attention (MONAI's SwinTransformerBlock attention half)
   ============================================================================================= */

/* Row of x [batch, size..., C] that token t of window wg (over the whole batch) holds, or -1 for
   a padding token: the shifted frame position p reads the padded position (p + shift) mod
   padded (the CPU's ioupos__attn_source). */
static __host__ __device__ long long cu_attn_source(const ioupos_swin_geom &g, int wg, int t) {
  int d, p[3], w = wg % g.nwin;
  long long row = wg / g.nwin;
  for (d = g.ndim - 1; d >= 0; --d) {
    p[d] = (w % g.grid[d]) * g.window[d] + t % g.window[d];
    w /= g.grid[d];
    t /= g.window[d];
  }
  for (d = 0; d < g.ndim; ++d) {
    int q = (p[d] + g.shift[d]) % g.padded[d];
    if (q >= g.size[d]) return -1;
    row = row * g.size[d] + q;
  }
  return row;
}

/* Between windows [BW * ntok][C] and the map x [batch, size..., C] (every map row is held by
   exactly one token, so no two threads write one element):
     dir 0: windows = partition(x) (zeros for padding tokens)
     dir 1: x += scatter of windows (the partition's backward)
     dir 2: x = reverse(windows)
     dir 3: windows = gather of x (the reverse's backward, padding tokens 0: it overwrites) */
static __global__ void cu_window_k(float *windows, float *x, const float *xin, int dir,
                                   ioupos_swin_geom g, int C, size_t n) {
  CU_FOR(i, n) {
    size_t row = i / C;
    int c = (int)(i % C);
    long long s = cu_attn_source(g, (int)(row / g.ntok), (int)(row % g.ntok));
    if (dir == 0) windows[i] = s < 0 ? 0.0f : xin[s * C + c];
    else if (dir == 1) {
      if (s >= 0) x[s * C + c] += windows[i];
    } else if (dir == 2) {
      if (s >= 0) x[s * C + c] = windows[i];
    } else windows[i] = s < 0 ? 0.0f : xin[s * C + c];
  }
}

/* One score row (window b, head h, query i) per block: P = softmax(S + table[index] + mask) in
   place (S from the GEMM, scaled). As the CPU: float sums of score, bias and mask, the row's
   maximum subtracted in float, exp rounded to float, the sum of the exponentials in double. */
static __global__ void cu_attn_softmax_k(float *att, const float *table, const int *index,
                                         const float *mask, int N, int NH, int nW) {
  size_t row = blockIdx.x, bh = row / N;
  int i = (int)(row % N), h = (int)(bh % NH), j;
  size_t b = bh / NH;
  float *P = att + row * N;
  const int *ix = index + (size_t)i * N;
  const float *mk = mask ? mask + ((b % nW) * N + i) * N : NULL;
  float mx = -INFINITY;
  double s = 0.0;
  for (j = threadIdx.x; j < N; j += blockDim.x) {
    float v = P[j] + table[(size_t)ix[j] * NH + h];
    if (mk) v += mk[j];
    P[j] = v;
    if (v > mx) mx = v;
  }
  mx = (float)cu_block_max(mx);
  for (j = threadIdx.x; j < N; j += blockDim.x) {
    float e = (float)exp((double)(P[j] - mx));
    P[j] = e;
    s += e;
  }
  s = cu_block_sum(s);
  for (j = threadIdx.x; j < N; j += blockDim.x) P[j] = (float)(P[j] / s);
}

/* One row per block: D holds dP and becomes dS = P (dP - sum_j P dP) */
static __global__ void cu_attn_dsoftmax_k(float *D, const float *att, int N) {
  size_t row = blockIdx.x;
  float *d = D + row * N;
  const float *p = att + row * N;
  double dot = 0.0;
  int j;
  for (j = threadIdx.x; j < N; j += blockDim.x) dot += (double)p[j] * d[j];
  dot = cu_block_sum(dot);
  for (j = threadIdx.x; j < N; j += blockDim.x) d[j] = (float)(p[j] * (d[j] - dot));
}

/* The relative position table's gradient, in a fixed order without floating-point atomics:
   acc[h][e] = sum over windows b (in order) of dS[b][h][e] (e = i N + j), then for each table
   row r the score positions e with index[e] == r, in increasing e, are summed per head. The
   position lists are built with integer atomics and then sorted, so the order is fixed. */
static __global__ void cu_attn_tacc_k(double *acc, const float *D, int BW, int NH, size_t nn) {
  CU_FOR(i, (size_t)NH * nn) {
    size_t h = i / nn, e = i % nn;
    double s = 0.0;
    int b;
    for (b = 0; b < BW; ++b) s += D[((size_t)b * NH + h) * nn + e];
    acc[i] = s;
  }
}

static __global__ void cu_attn_count_k(int *cnt, const int *index, size_t nn, int R) {
  CU_FOR(e, nn) {
    int r = index[e];
    if (r >= 0 && r < R) atomicAdd(&cnt[r], 1);
  }
}

static __global__ void cu_attn_scan_k(int *start, const int *cnt, int R) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    int r;
    start[0] = 0;
    for (r = 0; r < R; ++r) start[r + 1] = start[r] + cnt[r];
  }
}

static __global__ void cu_attn_fill_k(int *list, int *fill, const int *start, const int *index,
                                      size_t nn, int R) {
  CU_FOR(e, nn) {
    int r = index[e];
    if (r >= 0 && r < R) list[start[r] + atomicAdd(&fill[r], 1)] = (int)e;
  }
}

static __global__ void cu_attn_sort_k(int *list, const int *start, int R) {
  CU_FOR(r, (size_t)R) {
    int a = start[r], z = start[r + 1], k, m;
    for (k = a + 1; k < z; ++k) { /* insertion sort: a table row has at most ntok positions */
      int v = list[k];
      for (m = k; m > a && list[m - 1] > v; --m) list[m] = list[m - 1];
      list[m] = v;
    }
  }
}

static __global__ void cu_attn_table_k(float *dtable, const double *acc, const int *list,
                                       const int *start, int R, int NH, size_t nn) {
  CU_FOR(i, (size_t)R * NH) {
    size_t r = i / NH, h = i % NH;
    double s = 0.0;
    int k;
    for (k = start[r]; k < start[r + 1]; ++k) s += acc[h * nn + list[k]];
    dtable[i] += (float)s; /* dtable [R][NH]: element i is (r, h) */
  }
}

static int cu_swin_check(const char *op, const ioupos_swin_geom *g, int C, int NH) {
  if (!g || (g->ndim != 2 && g->ndim != 3) || g->batch < 1 || g->nwin < 1 || g->ntok < 1 ||
      C < 1 || NH < 1 || C % NH != 0)
    return cu_bad(op, "bad geometry, or C not a multiple of the heads");
  return 0;
}

static int cu_swin_attention_forward(float *out, float *acts, float *scratch, const float *x,
                                     const float *qkv_w, const float *qkv_b, const float *proj_w,
                                     const float *proj_b, const float *table, const int *index,
                                     const float *mask, const ioupos_swin_geom *g, int C,
                                     int NH) {
  int st = cu_swin_check("swin_attention_forward", g, C, NH), BW, N, hd, h, C3 = 3 * C;
  size_t nw, nn;
  float *win, *qkv, *att, *y, scale;
  if (st) return st;
  BW = g->batch * g->nwin, N = g->ntok, hd = C / NH;
  nw = (size_t)BW * N * C, nn = (size_t)N * N;
  win = acts, qkv = acts + nw, att = qkv + 3 * nw, y = att + (size_t)BW * NH * nn;
  scale = (float)(1.0 / sqrt((double)hd));
  CU_RUN(cu_window_k, dim3(cu_blocks(nw, CU_EW)), dim3(CU_EW), win, (float *)NULL, x, 0, *g, C,
         nw);
  st = cu_linear_forward(qkv, win, qkv_w, qkv_b, BW * N, C, C3);
  /* scores = scale q k^T, per head over all windows: [N][hd] x [N][hd]^T, rows 3C apart */
  for (h = 0; !st && h < NH; ++h)
    st = cu_gemm_batched(0, 1, N, N, hd, scale, qkv + h * hd, C3, (long long)N * C3,
                         qkv + C + h * hd, C3, (long long)N * C3, 0.0f, att + h * nn, N,
                         (long long)NH * nn, BW);
  if (st) return st;
  CU_RUN_SYNC(cu_attn_softmax_k, dim3((unsigned)((size_t)BW * NH * N)), dim3(CU_ATT_T), att, table,
              index, g->shifted ? mask : NULL, N, NH, g->nwin);
  /* y[:, h hd .. (h + 1) hd) = P v */
  for (h = 0; !st && h < NH; ++h)
    st = cu_gemm_batched(0, 0, N, hd, N, 1.0f, att + h * nn, N, (long long)NH * nn,
                         qkv + 2 * C + h * hd, C3, (long long)N * C3, 0.0f, y + h * hd, C,
                         (long long)N * C, BW);
  if (!st) st = cu_linear_forward(scratch, y, proj_w, proj_b, BW * N, C, C);
  if (st) return st;
  CU_RUN(cu_window_k, dim3(cu_blocks(nw, CU_EW)), dim3(CU_EW), scratch, out, (const float *)NULL,
         2, *g, C, nw);
  return cu.err;
}

static int cu_attn_table_grad(float *dtable, const float *D, const int *index,
                              const ioupos_swin_geom *g, int BW, int N, int NH) {
  size_t nn = (size_t)N * N;
  int R = 1, d;
  double *acc;
  int *cnt, *fill, *start, *list;
  for (d = 0; d < g->ndim; ++d) R *= 2 * g->window_cfg[d] - 1;
  acc = (double *)cu_ws(CU_WS_TABLE, sizeof(double) * NH * nn);
  cnt = (int *)cu_ws(CU_WS_INDEX, sizeof(int) * (3 * (size_t)R + 1 + nn));
  if (!acc || !cnt) return IOUPOS_ENOMEM;
  fill = cnt + R, start = fill + R, list = start + R + 1;
  CU_RUN(cu_attn_tacc_k, dim3(cu_blocks((size_t)NH * nn, CU_EW)), dim3(CU_EW), acc, D, BW, NH, nn);
  cu_zero(cnt, sizeof(int) * 2 * (size_t)R);
  CU_RUN(cu_attn_count_k, dim3(cu_blocks(nn, CU_EW)), dim3(CU_EW), cnt, index, nn, R);
  CU_RUN(cu_attn_scan_k, dim3(1), dim3(1), start, cnt, R);
  CU_RUN(cu_attn_fill_k, dim3(cu_blocks(nn, CU_EW)), dim3(CU_EW), list, fill, start, index, nn, R);
  CU_RUN(cu_attn_sort_k, dim3(cu_blocks((size_t)R, 64)), dim3(64), list, start, R);
  CU_RUN(cu_attn_table_k, dim3(cu_blocks((size_t)R * NH, CU_EW)), dim3(CU_EW), dtable, acc, list,
         start, R, NH, nn);
  return cu.err;
}

static int cu_swin_attention_backward(float *dx, float *dqkv_w, float *dqkv_b, float *dproj_w,
                                      float *dproj_b, float *dtable, float *scratch,
                                      const float *dout, const float *acts, const float *qkv_w,
                                      const float *proj_w, const int *index,
                                      const ioupos_swin_geom *g, int C, int NH) {
  int st = cu_swin_check("swin_attention_backward", g, C, NH), BW, N, hd, h, C3 = 3 * C;
  size_t nw, nn;
  const float *win, *qkv, *att, *y;
  float *dwout, *dwin, *dqkv, *dy, *D, scale;
  if (st) return st;
  BW = g->batch * g->nwin, N = g->ntok, hd = C / NH;
  nw = (size_t)BW * N * C, nn = (size_t)N * N;
  win = acts, qkv = acts + nw, att = qkv + 3 * nw, y = att + (size_t)BW * NH * nn;
  dwout = scratch, dwin = scratch + nw, dqkv = scratch + 2 * nw, dy = dqkv + 3 * nw;
  scale = (float)(1.0 / sqrt((double)hd));
  D = (float *)cu_ws(CU_WS_ATT, sizeof(float) * (size_t)BW * NH * nn);
  if (!D) return IOUPOS_ENOMEM;
  /* the reverse's backward (a gather into windows), the projection's backward */
  CU_RUN(cu_window_k, dim3(cu_blocks(nw, CU_EW)), dim3(CU_EW), dwout, (float *)NULL, dout, 3, *g,
         C, nw);
  st = cu_gemm(0, 0, BW * N, C, C, 1.0f, dwout, C, proj_w, C, 0.0f, dy, C);
  if (!st) st = cu_linear_backward(NULL, dproj_w, dproj_b, dwout, y, proj_w, BW * N, C, C);
  /* dP = dy_h v_h^T */
  for (h = 0; !st && h < NH; ++h)
    st = cu_gemm_batched(0, 1, N, N, hd, 1.0f, dy + h * hd, C, (long long)N * C,
                         qkv + 2 * C + h * hd, C3, (long long)N * C3, 0.0f, D + h * nn, N,
                         (long long)NH * nn, BW);
  if (st) return st;
  CU_RUN_SYNC(cu_attn_dsoftmax_k, dim3((unsigned)((size_t)BW * NH * N)), dim3(CU_ATT_T), D, att, N);
  /* dv = P^T dy_h; dq = scale dS k; dk = scale dS^T q (every element of dqkv written once) */
  for (h = 0; !st && h < NH; ++h) {
    const float *q = qkv + h * hd, *k = q + C;
    float *dq = dqkv + h * hd, *dk = dq + C, *dv = dq + 2 * C;
    long long sq = (long long)N * C3, sp = (long long)NH * nn;
    st = cu_gemm_batched(1, 0, N, hd, N, 1.0f, att + h * nn, N, sp, dy + h * hd, C,
                         (long long)N * C, 0.0f, dv, C3, sq, BW);
    if (!st) st = cu_gemm_batched(0, 0, N, hd, N, scale, D + h * nn, N, sp, k, C3, sq, 0.0f, dq,
                                  C3, sq, BW);
    if (!st) st = cu_gemm_batched(1, 0, N, hd, N, scale, D + h * nn, N, sp, q, C3, sq, 0.0f, dk,
                                  C3, sq, BW);
  }
  if (!st && dtable) st = cu_attn_table_grad(dtable, D, index, g, BW, N, NH);
  if (st) return st;
  /* the qkv projection's backward into dwin, then the partition's backward into dx */
  cu_zero(dwin, sizeof(float) * nw);
  st = cu_linear_backward(dwin, dqkv_w, dqkv_b, dqkv, win, qkv_w, BW * N, C, C3);
  if (st) return st;
  if (dx)
    CU_RUN(cu_window_k, dim3(cu_blocks(nw, CU_EW)), dim3(CU_EW), dwin, dx, (const float *)NULL, 1,
           *g, C, nw);
  return cu.err;
}

/* =============================================================================================
   Section 14: losses and the weight-normalised linear
   ============================================================================================= */

/* ---- weight-normalised linear: W[o] = g[o] v[o] / |v[o]|, one block per output row ---- */
static __global__ void cu_wn_weight_k(float *weight, float *vnorm, const float *v, const float *g,
                                      int C) {
  size_t o = blockIdx.x;
  const float *vr = v + o * C;
  double s = 0.0, nrm, k;
  int c;
  for (c = threadIdx.x; c < C; c += blockDim.x) s += (double)vr[c] * vr[c];
  nrm = sqrt(cu_block_sum(s));
  k = (g ? (double)g[o] : 1.0) / nrm;
  for (c = threadIdx.x; c < C; c += blockDim.x) weight[o * C + c] = (float)(vr[c] * k);
  if (threadIdx.x == 0) vnorm[o] = (float)nrm;
}

/* dg[o] += vhat . dW; dv[o] += (g / |v|) (dW - vhat (vhat . dW)) */
static __global__ void cu_wn_bwd_k(float *dv, float *dg, const float *dweight, const float *v,
                                   const float *g, const float *vnorm, int C) {
  size_t o = blockIdx.x;
  const float *vr = v + o * C, *dw = dweight + o * C;
  double nrm = vnorm[o], gg = g ? (double)g[o] : 1.0, dot = 0.0;
  int c;
  for (c = threadIdx.x; c < C; c += blockDim.x) dot += (double)vr[c] * dw[c];
  dot = cu_block_sum(dot);
  if (dg && threadIdx.x == 0) dg[o] += (float)(dot / nrm);
  if (dv)
    for (c = threadIdx.x; c < C; c += blockDim.x)
      dv[o * C + c] += (float)(gg / nrm * ((double)dw[c] - vr[c] * dot / (nrm * nrm)));
}

static int cu_wnlinear_forward(float *out, float *weight, float *vnorm, const float *inp,
                               const float *v, const float *g, int N, int C, int OC) {
  if (N < 0 || C < 1 || OC < 1) return cu_bad("wnlinear_forward", "bad sizes");
  CU_RUN_SYNC(cu_wn_weight_k, dim3((unsigned)OC), dim3(CU_RT), weight, vnorm, v, g, C);
  return cu_linear_forward(out, inp, weight, NULL, N, C, OC);
}

static int cu_wnlinear_backward(float *dinp, float *dv, float *dg, float *dweight,
                                const float *dout, const float *inp, const float *v,
                                const float *g, const float *weight, const float *vnorm, int N,
                                int C, int OC) {
  int st = 0;
  if (N < 0 || C < 1 || OC < 1) return cu_bad("wnlinear_backward", "bad sizes");
  if (dinp) st = cu_gemm(0, 0, N, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dinp, C);
  if (st || (!dv && !dg)) return st;
  /* dW = dout^T inp into the caller's dweight (overwritten) */
  st = cu_gemm(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 0.0f, dweight, C);
  if (st) return st;
  CU_RUN_SYNC(cu_wn_bwd_k, dim3((unsigned)OC), dim3(CU_RT), dv, dg, dweight, v, g, vnorm, C);
  return cu.err;
}

/* ---- SimSiam: negative cosine, per-row values, then the rows in order by one thread ---- */
/* Row r < N: cos(p1[r], z2[r]); row N + r: cos(p2[r], z1[r]) (each norm clamped at eps). */
static __global__ void cu_simsiam_rows_k(double *rowval, const float *p1, const float *p2,
                                         const float *z1, const float *z2, int N, int C) {
  size_t r = blockIdx.x, n = r < (size_t)N ? r : r - N;
  const float *a = (r < (size_t)N ? p1 : p2) + n * C, *b = (r < (size_t)N ? z2 : z1) + n * C;
  double na = 0.0, nb = 0.0, d = 0.0;
  int c;
  for (c = threadIdx.x; c < C; c += blockDim.x) {
    na += (double)a[c] * a[c];
    nb += (double)b[c] * b[c];
  }
  na = sqrt(cu_block_sum(na));
  nb = sqrt(cu_block_sum(nb));
  if (!(na > IOUPOS_SIMSIAM_EPS)) na = IOUPOS_SIMSIAM_EPS;
  if (!(nb > IOUPOS_SIMSIAM_EPS)) nb = IOUPOS_SIMSIAM_EPS;
  for (c = threadIdx.x; c < C; c += blockDim.x) d += ((double)a[c] / na) * ((double)b[c] / nb);
  d = cu_block_sum(d);
  if (threadIdx.x == 0) rowval[r] = d;
}

static __global__ void cu_simsiam_final_k(double *res, const double *rowval, int N) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    double s1 = 0.0, s2 = 0.0;
    int n;
    for (n = 0; n < N; ++n) s1 += rowval[n];
    for (n = 0; n < N; ++n) s2 += rowval[N + n];
    res[0] = -0.5 * ((N > 0 ? s1 / N : 0.0) + (N > 0 ? s2 / N : 0.0));
  }
}

static double cu_simsiam_loss_forward(const float *p1, const float *p2, const float *z1,
                                      const float *z2, int N, int C) {
  double *rows;
  if (N < 0 || C < 1) return cu_bad("simsiam_loss_forward", "bad sizes"), NAN;
  rows = (double *)cu_ws(CU_WS_ROWS, sizeof(double) * (2 * (size_t)N + 1));
  if (!rows) return NAN;
  if (N > 0)
    CU_RUN_SYNC(cu_simsiam_rows_k, dim3(2 * (unsigned)N), dim3(CU_RT), rows, p1, p2, z1, z2, N, C);
  CU_RUN(cu_simsiam_final_k, dim3(1), dim3(1), cu.scalars, rows, N);
  return cu_scalar(0);
}

/* dp[n] += scale d cos(p[n], z[n]) / dp[n], the norm's derivative that of the unclamped |p| */
static __global__ void cu_negcos_bwd_k(float *dp, float scale, const float *p, const float *z,
                                       int C) {
  size_t n = blockIdx.x;
  const float *a = p + n * C, *b = z + n * C;
  float *da = dp + n * C;
  double ta = 0.0, nb = 0.0, dot = 0.0, na, k;
  int c;
  for (c = threadIdx.x; c < C; c += blockDim.x) {
    ta += (double)a[c] * a[c];
    nb += (double)b[c] * b[c];
    dot += (double)a[c] * b[c];
  }
  ta = sqrt(cu_block_sum(ta));
  nb = sqrt(cu_block_sum(nb));
  dot = cu_block_sum(dot);
  na = ta;
  if (!(na > IOUPOS_SIMSIAM_EPS)) na = IOUPOS_SIMSIAM_EPS;
  if (!(nb > IOUPOS_SIMSIAM_EPS)) nb = IOUPOS_SIMSIAM_EPS;
  k = ta > 0.0 ? dot / (na * na * nb * ta) : 0.0;
  for (c = threadIdx.x; c < C; c += blockDim.x)
    da[c] += (float)((double)scale * ((double)b[c] / (na * nb) - k * (double)a[c]));
}

static void cu_simsiam_loss_backward(float *dp1, float *dp2, float dloss, const float *p1,
                                     const float *p2, const float *z1, const float *z2, int N,
                                     int C) {
  float s = (float)(N > 0 ? -0.5 * (double)dloss / N : 0.0);
  if (N < 1 || C < 1) return;
  if (dp1) CU_RUN_SYNC(cu_negcos_bwd_k, dim3((unsigned)N), dim3(CU_RT), dp1, s, p1, z2, C);
  if (dp2) CU_RUN_SYNC(cu_negcos_bwd_k, dim3((unsigned)N), dim3(CU_RT), dp2, s, p2, z1, C);
}

/* ---- DINO: teacher softmax, student log-softmax and the loss per (view, sample) row ---- */
static __global__ void cu_dino_teacher_k(float *tprob, const float *teacher, const float *center,
                                         int D, float teacher_temp) {
  size_t row = blockIdx.x;
  const float *x = teacher + row * D;
  float *q = tprob + row * D;
  double mx = -INFINITY, sum = 0.0;
  int d;
  for (d = threadIdx.x; d < D; d += blockDim.x) {
    double y = ((double)x[d] - center[d]) / teacher_temp;
    mx = y > mx ? y : mx;
  }
  mx = cu_block_max(mx);
  for (d = threadIdx.x; d < D; d += blockDim.x)
    sum += exp(((double)x[d] - center[d]) / teacher_temp - mx);
  sum = cu_block_sum(sum);
  for (d = threadIdx.x; d < D; d += blockDim.x)
    q[d] = (float)(exp(((double)x[d] - center[d]) / teacher_temp - mx) / sum);
}

/* row (s, b): slogp = log_softmax(student / T_s); rowval = -sum_d Q[d] ls[d], Q the sum of the
   teacher probabilities of every other view t != s */
static __global__ void cu_dino_student_k(float *slogp, double *rowval, const float *student,
                                         const float *tprob, int NT, int B, int D,
                                         float student_temp) {
  size_t row = blockIdx.x;
  int s = (int)(row / B), b = (int)(row % B), d, t;
  const float *x = student + row * D;
  float *l = slogp + row * D;
  double mx = -INFINITY, sum = 0.0, lse, loss = 0.0;
  for (d = threadIdx.x; d < D; d += blockDim.x) {
    double y = (double)x[d] / student_temp;
    mx = y > mx ? y : mx;
  }
  mx = cu_block_max(mx);
  for (d = threadIdx.x; d < D; d += blockDim.x) sum += exp((double)x[d] / student_temp - mx);
  lse = mx + log(cu_block_sum(sum));
  for (d = threadIdx.x; d < D; d += blockDim.x) {
    double ls = (double)x[d] / student_temp - lse, Q = 0.0;
    l[d] = (float)ls;
    for (t = 0; t < NT; ++t)
      if (t != s) Q += tprob[((size_t)t * B + b) * D + d];
    loss -= Q * ls;
  }
  loss = cu_block_sum(loss);
  if (threadIdx.x == 0) rowval[row] = loss;
}

static __global__ void cu_rows_sum_k(double *res, const double *rowval, size_t n, double div) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    double s = 0.0;
    size_t i;
    for (i = 0; i < n; ++i) s += rowval[i];
    res[0] = div > 0.0 ? s / div : 0.0;
  }
}

static double cu_dino_loss_forward(float *tprob, float *slogp, const float *teacher,
                                   const float *student, const float *center, int NT, int NS,
                                   int B, int D, float teacher_temp, float student_temp) {
  long n_pairs = (long)NT * NS - (NT < NS ? NT : NS);
  double *rows;
  if (NT < 1 || NS < 1 || B < 0 || D < 1) return cu_bad("dino_loss_forward", "bad sizes"), NAN;
  rows = (double *)cu_ws(CU_WS_ROWS, sizeof(double) * ((size_t)NS * B + 1));
  if (!rows) return NAN;
  if (B > 0) {
    CU_RUN_SYNC(cu_dino_teacher_k, dim3((unsigned)((size_t)NT * B)), dim3(CU_RT), tprob, teacher,
                center, D, teacher_temp);
    CU_RUN_SYNC(cu_dino_student_k, dim3((unsigned)((size_t)NS * B)), dim3(CU_RT), slogp, rows,
                student, tprob, NT, B, D, student_temp);
  }
  CU_RUN(cu_rows_sum_k, dim3(1), dim3(1), cu.scalars, rows, (size_t)NS * B,
         n_pairs > 0 && B > 0 ? (double)n_pairs * B : 0.0);
  return cu_scalar(0);
}

static __global__ void cu_dino_bwd_k(float *dstudent, double scale, const float *tprob,
                                     const float *slogp, int NT, int B, int D,
                                     float student_temp) {
  size_t row = blockIdx.x;
  int s = (int)(row / B), b = (int)(row % B), d, t;
  const float *l = slogp + row * D;
  float *dx = dstudent + row * D;
  double qsum = 0.0; /* sum_d Q[d]: 1 per teacher view up to rounding, kept as torch does */
  for (d = threadIdx.x; d < D; d += blockDim.x)
    for (t = 0; t < NT; ++t)
      if (t != s) qsum += tprob[((size_t)t * B + b) * D + d];
  qsum = cu_block_sum(qsum);
  for (d = threadIdx.x; d < D; d += blockDim.x) {
    double Q = 0.0;
    for (t = 0; t < NT; ++t)
      if (t != s) Q += tprob[((size_t)t * B + b) * D + d];
    dx[d] += (float)(scale * (exp((double)l[d]) * qsum - Q) / student_temp);
  }
}

static void cu_dino_loss_backward(float *dstudent, float dloss, const float *tprob,
                                  const float *slogp, int NT, int NS, int B, int D,
                                  float student_temp) {
  long n_pairs = (long)NT * NS - (NT < NS ? NT : NS);
  if (n_pairs <= 0 || B <= 0 || D < 1) return;
  CU_RUN_SYNC(cu_dino_bwd_k, dim3((unsigned)((size_t)NS * B)), dim3(CU_RT), dstudent,
              (double)dloss / ((double)n_pairs * B), tprob, slogp, NT, B, D, student_temp);
}

/* center = center m + mean over (t, b) of teacher (1 - m): one thread per d, rows in order */
static __global__ void cu_dino_center_k(float *center, const float *teacher, int NT, int B, int D,
                                        float momentum) {
  CU_FOR(d, (size_t)D) {
    long rows = (long)NT * B, r;
    double s = 0.0;
    for (r = 0; r < rows; ++r) s += teacher[(size_t)r * D + d];
    center[d] = (float)((double)center[d] * momentum + (s / rows) * (1.0 - (double)momentum));
  }
}

static void cu_dino_center_update(float *center, const float *teacher, int NT, int B, int D,
                                  float momentum) {
  if ((long)NT * B <= 0 || D < 1) return;
  CU_RUN(cu_dino_center_k, dim3(cu_blocks((size_t)D, CU_EW)), dim3(CU_EW), center, teacher, NT, B,
         D, momentum);
}

/* =============================================================================================
   Section 15: optimisers, EMA, clipping (the CPU's float operations in the CPU's order: fmaf
   where it fuses, round-to-nearest intrinsics where it does not, so the results are bit-identical)
   ============================================================================================= */

static __global__ void cu_sgd_k(float *param, const float *grad, float *buf, size_t n, float lr,
                                float momentum, float weight_decay, int first_step) {
  CU_FOR(i, n) {
    float d = grad[i];
    if (weight_decay != 0.0f) d = fmaf(weight_decay, param[i], d);
    if (momentum != 0.0f) {
      if (first_step) buf[i] = d;
      else buf[i] = __fadd_rn(__fmul_rn(buf[i], momentum), d);
      d = buf[i];
    }
    param[i] = fmaf(-lr, d, param[i]);
  }
}

static void cu_sgd_step(float *param, const float *grad, float *momentum_buf, size_t n, float lr,
                        float momentum, float weight_decay, int first_step) {
  if (n) CU_RUN(cu_sgd_k, dim3(cu_blocks(n, CU_EW)), dim3(CU_EW), param, grad, momentum_buf, n, lr,
                momentum, weight_decay, first_step);
}

struct cu_adamw_scalars {
  float decay, w1, w1c, omb2, beta2, eps, neg_step_size, bc2_sqrt;
  int lerp_low, decays;
};

static __global__ void cu_adamw_k(float *param, const float *grad, float *m, float *v, size_t n,
                                  cu_adamw_scalars k) {
  CU_FOR(i, n) {
    float g = grad[i], p = param[i], mi = m[i], vi = v[i], denom;
    if (k.decays) p = __fmul_rn(p, k.decay);
    if (k.lerp_low) mi = fmaf(k.w1, __fsub_rn(g, mi), mi);
    else mi = fmaf(-__fsub_rn(g, mi), k.w1c, g);
    vi = __fmul_rn(vi, k.beta2);
    vi = fmaf(k.omb2, __fmul_rn(g, g), vi);
    denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), k.bc2_sqrt), k.eps);
    p = fmaf(k.neg_step_size, __fdiv_rn(mi, denom), p);
    param[i] = p;
    m[i] = mi;
    v[i] = vi;
  }
}

static void cu_adamw_step(float *param, const float *grad, float *m, float *v, size_t n, float lr,
                          float beta1, float beta2, float eps, float weight_decay, int step) {
  /* the scalars exactly as the CPU computes them (double, rounded where torch rounds) */
  double dlr = (double)lr, db1 = (double)beta1, db2 = (double)beta2;
  double lr_wd = dlr * (double)weight_decay, bc1, bc2;
  cu_adamw_scalars k;
  if (!n) return;
  k.decay = (float)(1.0 - lr_wd);
  k.w1 = (float)(1.0 - db1);
  k.w1c = 1.0f - k.w1;
  k.omb2 = (float)(1.0 - db2);
  bc1 = 1.0 - pow(db1, (double)step);
  bc2 = 1.0 - pow(db2, (double)step);
  k.neg_step_size = (float)(-(dlr / bc1));
  k.bc2_sqrt = (float)sqrt(bc2);
  k.lerp_low = k.w1 < 0.5f;
  k.decays = weight_decay != 0.0f;
  k.beta2 = beta2;
  k.eps = eps;
  CU_RUN(cu_adamw_k, dim3(cu_blocks(n, CU_EW)), dim3(CU_EW), param, grad, m, v, n, k);
}

static __global__ void cu_ema_k(float *teacher, const float *student, size_t n, float mf,
                                float omf) {
  CU_FOR(i, n) teacher[i] = __fadd_rn(__fmul_rn(teacher[i], mf), __fmul_rn(student[i], omf));
}

static void cu_ema_update(float *teacher, const float *student, size_t n, double m) {
  if (n) CU_RUN(cu_ema_k, dim3(cu_blocks(n, CU_EW)), dim3(CU_EW), teacher, student, n, (float)m,
                (float)(1.0 - m));
}

/* ---- gradient clipping: the norm in double, per block of CU_NORM_CHUNK elements (a tree of
   fixed shape), then the blocks in order; the coefficient stays on the device ---- */
static __global__ void cu_sumsq_part_k(double *part, const float *x, size_t n) {
  size_t i0 = (size_t)blockIdx.x * CU_NORM_CHUNK, i1 = i0 + CU_NORM_CHUNK < n ? i0 + CU_NORM_CHUNK : n;
  size_t i;
  double s = 0.0;
  for (i = i0 + threadIdx.x; i < i1; i += blockDim.x) s += (double)x[i] * (double)x[i];
  s = cu_block_sum(s);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

static __global__ void cu_clip_final_k(double *res, const double *part, size_t nblk, float clip) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    double s = 0.0;
    size_t b;
    float norm;
    for (b = 0; b < nblk; ++b) s += part[b];
    norm = (float)sqrt(s);
    res[0] = norm;
    res[1] = __fdiv_rn(clip, __fadd_rn(norm, 1e-6f));
  }
}

static __global__ void cu_clip_scale_k(float *grad, size_t n, const double *res) {
  float coef = (float)res[1];
  if (coef < 1.0f) CU_FOR(i, n) grad[i] = __fmul_rn(grad[i], coef);
}

static float cu_clip_grad_per_param(float *grad, size_t n, float clip) {
  size_t nblk = (n + CU_NORM_CHUNK - 1) / CU_NORM_CHUNK;
  double *part = (double *)cu_ws(CU_WS_ROWS, sizeof(double) * (nblk + 1));
  if (!part) return NAN;
  if (nblk > 0x7fffffff) return cu_bad("clip_grad_per_param", "too many elements"), NAN;
  if (nblk) CU_RUN_SYNC(cu_sumsq_part_k, dim3((unsigned)nblk), dim3(CU_NORM_T), part, grad, n);
  CU_RUN(cu_clip_final_k, dim3(1), dim3(1), cu.scalars, part, nblk, clip);
  if (n) CU_RUN(cu_clip_scale_k, dim3(cu_blocks(n, CU_EW)), dim3(CU_EW), grad, n, cu.scalars);
  return (float)cu_scalar(0);
}

/* =============================================================================================
   Section 19: layout transposes (channels-last tokens <-> channels-first maps)
   ============================================================================================= */

/* dst[b][c][r] (= or +=) src[b][r][c], src [B][R][Cc]: 32 x 32 tiles through shared memory, so
   that reads and writes are both contiguous */
static __global__ void cu_transpose_k(float *dst, const float *src, size_t R, size_t Cc, int acc) {
  __shared__ float tile[32][33];
  size_t b = blockIdx.z, r0 = (size_t)blockIdx.y * 32, c0 = (size_t)blockIdx.x * 32;
  unsigned k;
  for (k = threadIdx.y; k < 32; k += blockDim.y) {
    size_t r = r0 + k, c = c0 + threadIdx.x;
    if (r < R && c < Cc) tile[k][threadIdx.x] = src[(b * R + r) * Cc + c];
  }
  __syncthreads();
  for (k = threadIdx.y; k < 32; k += blockDim.y) {
    size_t c = c0 + k, r = r0 + threadIdx.x;
    if (r < R && c < Cc) {
      float *d = dst + (b * Cc + c) * R + r;
      if (acc) *d += tile[threadIdx.x][k];
      else *d = tile[threadIdx.x][k];
    }
  }
}

static void cu_transpose(float *dst, const float *src, int B, size_t R, size_t Cc, int acc) {
  size_t gx = (Cc + 31) / 32, gy = (R + 31) / 32;
  if (B < 1 || !R || !Cc) return;
  if (gx > 0x7fffffff || gy > 65535 || B > 65535) {
    cu_bad("to_channels_first", "map too large for the transpose's grid");
    return;
  }
  CU_RUN_SYNC(cu_transpose_k, dim3((unsigned)gx, (unsigned)gy, (unsigned)B), dim3(32, 8), dst, src,
              R, Cc, acc);
}

static void cu_to_channels_first(float *out, const float *inp, int B, size_t S, int C) {
  cu_transpose(out, inp, B, S, (size_t)(C > 0 ? C : 0), 0);
}

static void cu_to_channels_first_backward(float *dinp, const float *dout, int B, size_t S, int C) {
  cu_transpose(dinp, dout, B, (size_t)(C > 0 ? C : 0), S, 1);
}

/* ---- convolutional decoder layers (channels-first [B][C][S...]) ----
   The CPU's scheme and scratch: per sample, the positions in blocks of CU_CONV_BLOCK, each block
   im2col into the caller's scratch [Cin k^dims][len] and one GEMM; the input gradient through
   col2im as a gather (each input element adds its taps' columns in tap order, as the CPU's
   scatter does row by row), so no two threads write one element. */
#define CU_CONV_BLOCK 4096 /* the CPU's IOUPOS__CONV_BLOCK: the same blocks, the same scratch */

struct cu_cg { /* the CPU's ioupos__cgeom: 3 internal axes, 2D has a leading axis of size 1 */
  int S[3], kk[3];
  size_t n, kv;
};

static int cu_cg_init(cu_cg *g, int dims, const int *shape, int k) {
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

static int cu_conv_args(const char *op, cu_cg *g, int dims, int B, int Cin, const int *shape,
                        int k, int Cout, int odd) {
  if (!cu_cg_init(g, dims, shape, k) || B < 1 || Cin < 1 || Cout < 1 || (odd && k % 2 == 0))
    return cu_fail(IOUPOS_EINVAL, "CUDA backend: %s: dims %d (must be 2 or 3), B %d, Cin %d, "
                   "Cout %d (must be >= 1), kernel %d, or a missing / non-positive shape", op,
                   dims, B, Cin, Cout, k);
  if (g->n > 0x7fffffffu || (double)Cin * (double)g->kv > 2147483647.0 ||
      (double)Cout * (double)g->kv > 2147483647.0)
    return cu_fail(IOUPOS_ERANGE, "CUDA backend: %s: sizes too large for the GEMM's int sizes",
                   op);
  return 0;
}

/* Input position (within a plane) read by tap `tap` of the "same"-padded convolution at output
   position p, or -1 outside the image. */
static __host__ __device__ long long cu_conv_src(const cu_cg &g, size_t p, int tap) {
  size_t HW = (size_t)g.S[1] * g.S[2];
  int a = tap / (g.kk[1] * g.kk[2]), e = (tap / g.kk[2]) % g.kk[1], f = tap % g.kk[2];
  int z = (int)(p / HW) + a - g.kk[0] / 2, y = (int)(p % HW / g.S[2]) + e - g.kk[1] / 2;
  int x = (int)(p % g.S[2]) + f - g.kk[2] / 2;
  if (z < 0 || z >= g.S[0] || y < 0 || y >= g.S[1] || x < 0 || x >= g.S[2]) return -1;
  return ((long long)z * g.S[1] + y) * g.S[2] + x;
}

/* col[(ci, tap)][j] = img[ci][the tap's input position for output p0 + j] (0 outside) */
static __global__ void cu_conv_cols_k(float *col, const float *img, cu_cg g, int Cin, size_t p0,
                                      size_t len) {
  CU_FOR(i, (size_t)Cin * g.kv * len) {
    size_t r = i / len, j = i % len;
    long long s = cu_conv_src(g, p0 + j, (int)(r % g.kv));
    col[i] = s < 0 ? 0.0f : img[(r / g.kv) * g.n + s];
  }
}

/* img[ci][q] += the columns that read q, taps in order (the col2im of one block): for input
   positions q0 .. q0 + nq - 1 */
static __global__ void cu_conv_col2im_k(float *img, const float *col, cu_cg g, int Cin, size_t p0,
                                        size_t len, size_t q0, size_t nq) {
  CU_FOR(i, (size_t)Cin * nq) {
    size_t ci = i / nq, q = q0 + i % nq, HW = (size_t)g.S[1] * g.S[2];
    int zq = (int)(q / HW), yq = (int)(q % HW / g.S[2]), xq = (int)(q % g.S[2]), tap, any = 0;
    float acc = img[ci * g.n + q];
    for (tap = 0; tap < (int)g.kv; ++tap) {
      int a = tap / (g.kk[1] * g.kk[2]), e = (tap / g.kk[2]) % g.kk[1], f = tap % g.kk[2];
      int z = zq - (a - g.kk[0] / 2), y = yq - (e - g.kk[1] / 2), x = xq - (f - g.kk[2] / 2);
      size_t p;
      if (z < 0 || z >= g.S[0] || y < 0 || y >= g.S[1] || x < 0 || x >= g.S[2]) continue;
      p = ((size_t)z * g.S[1] + y) * g.S[2] + x;
      if (p < p0 || p >= p0 + len) continue;
      acc += col[(ci * g.kv + tap) * len + (p - p0)];
      any = 1;
    }
    if (any) img[ci * g.n + q] = acc;
  }
}

/* out[b][c][i] = bias[c] */
static __global__ void cu_fill_planes_k(float *out, const float *bias, int C, size_t n,
                                        size_t total) {
  CU_FOR(i, total) out[i] = bias[i / n % C];
}

/* dbias[c] += sum over samples and positions of d[b][c][.]: partial sums per (c, b, block of
   CU_CONV_BLOCK positions), then per channel in order */
static __global__ void cu_chan_part_k(double *part, const float *d, int B, int C, size_t n,
                                      size_t nch) {
  CU_FOR(i, (size_t)C * B * nch) {
    size_t c = i / (B * nch), b = i / nch % B, ch = i % nch, k;
    size_t k0 = ch * CU_CONV_BLOCK, k1 = k0 + CU_CONV_BLOCK < n ? k0 + CU_CONV_BLOCK : n;
    const float *x = d + (b * C + c) * n;
    double s = 0.0;
    for (k = k0; k < k1; ++k) s += x[k];
    part[i] = s;
  }
}

static __global__ void cu_chan_final_k(float *dbias, const double *part, int C, size_t m) {
  CU_FOR(c, (size_t)C) {
    double s = 0.0;
    size_t k;
    for (k = 0; k < m; ++k) s += part[c * m + k];
    dbias[c] += (float)s;
  }
}

static int cu_chan_sum(float *dbias, const float *d, int B, int C, size_t n) {
  size_t nch = (n + CU_CONV_BLOCK - 1) / CU_CONV_BLOCK, m = (size_t)B * nch;
  double *part = (double *)cu_ws(CU_WS_COLSUM, sizeof(double) * m * C);
  if (!part) return IOUPOS_ENOMEM;
  CU_RUN(cu_chan_part_k, dim3(cu_blocks(m * C, CU_EW)), dim3(CU_EW), part, d, B, C, n, nch);
  CU_RUN(cu_chan_final_k, dim3(cu_blocks((size_t)C, CU_EW)), dim3(CU_EW), dbias, part, C, m);
  return 0;
}

static int cu_conv_forward(float *out, float *scratch, const float *inp, const float *weight,
                           const float *bias, int dims, int B, int Cin, const int *shape, int k,
                           int Cout) {
  cu_cg g = cu_cg();
  int st = cu_conv_args("conv_forward", &g, dims, B, Cin, shape, k, Cout, 1), b, K, n;
  if (st) return st;
  n = (int)g.n, K = Cin * (int)g.kv;
  if (bias)
    CU_RUN(cu_fill_planes_k, dim3(cu_blocks((size_t)B * Cout * g.n, CU_EW)), dim3(CU_EW), out,
           bias, Cout, g.n, (size_t)B * Cout * g.n);
  for (b = 0; b < B && !st; ++b) {
    const float *ib = inp + (size_t)b * Cin * g.n;
    float *ob = out + (size_t)b * Cout * g.n;
    size_t p0;
    if (k == 1) {
      st = cu_gemm(0, 0, Cout, n, Cin, 1.0f, weight, Cin, ib, n, bias ? 1.0f : 0.0f, ob, n);
      continue;
    }
    for (p0 = 0; p0 < g.n && !st; p0 += CU_CONV_BLOCK) {
      size_t len = g.n - p0 < CU_CONV_BLOCK ? g.n - p0 : CU_CONV_BLOCK;
      CU_RUN(cu_conv_cols_k, dim3(cu_blocks((size_t)K * len, CU_EW)), dim3(CU_EW), scratch, ib, g,
             Cin, p0, len);
      st = cu_gemm(0, 0, Cout, (int)len, K, 1.0f, weight, K, scratch, (int)len,
                   bias ? 1.0f : 0.0f, ob + p0, n);
    }
  }
  return st;
}

static int cu_conv_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                            const float *dout, const float *inp, const float *weight, int dims,
                            int B, int Cin, const int *shape, int k, int Cout) {
  cu_cg g = cu_cg();
  int st = cu_conv_args("conv_backward", &g, dims, B, Cin, shape, k, Cout, 1), b, K, n;
  size_t R;
  if (st) return st;
  n = (int)g.n, K = Cin * (int)g.kv;
  R = (size_t)(g.kk[0] / 2) * g.S[1] * g.S[2] + (size_t)(g.kk[1] / 2) * g.S[2] + g.kk[2] / 2;
  if (dbias) st = cu_chan_sum(dbias, dout, B, Cout, g.n);
  for (b = 0; b < B && !st; ++b) {
    const float *db = dout + (size_t)b * Cout * g.n;
    const float *ib = inp ? inp + (size_t)b * Cin * g.n : NULL;
    float *dib = dinp ? dinp + (size_t)b * Cin * g.n : NULL;
    size_t p0;
    if (k == 1) {
      if (dweight) st = cu_gemm(0, 1, Cout, Cin, n, 1.0f, db, n, ib, n, 1.0f, dweight, Cin);
      if (!st && dib) st = cu_gemm(1, 0, Cin, n, Cout, 1.0f, weight, Cin, db, n, 1.0f, dib, n);
      continue;
    }
    for (p0 = 0; p0 < g.n && !st; p0 += CU_CONV_BLOCK) {
      size_t len = g.n - p0 < CU_CONV_BLOCK ? g.n - p0 : CU_CONV_BLOCK;
      if (dweight) {
        CU_RUN(cu_conv_cols_k, dim3(cu_blocks((size_t)K * len, CU_EW)), dim3(CU_EW), scratch, ib,
               g, Cin, p0, len);
        st = cu_gemm(0, 1, Cout, K, (int)len, 1.0f, db + p0, n, scratch, (int)len, 1.0f, dweight,
                     K);
      }
      if (!st && dib) {
        size_t q0 = p0 > R ? p0 - R : 0, q1 = p0 + len + R < g.n ? p0 + len + R : g.n;
        st = cu_gemm(1, 0, K, (int)len, Cout, 1.0f, weight, K, db + p0, n, 0.0f, scratch,
                     (int)len);
        if (!st)
          CU_RUN(cu_conv_col2im_k, dim3(cu_blocks((size_t)Cin * (q1 - q0), CU_EW)), dim3(CU_EW),
                 dib, scratch, g, Cin, p0, len, q0, q1 - q0);
      }
    }
  }
  return st;
}

/* ---- transposed convolution, kernel 2, stride 2: GEMM then a scatter (every output element
   receives exactly one tap) ---- */
/* dir 0: img_out[co][output of (p, tap)] = tmp[(co, tap)][p - p0] (+ bias); dir 1: the gather */
static __global__ void cu_tconv_k(float *tmp, float *img_out, const float *img_in,
                                  const float *bias, cu_cg g, int Cout, size_t p0, size_t len,
                                  int dir) {
  CU_FOR(i, (size_t)Cout * g.kv * len) {
    size_t r = i / len, p = p0 + i % len, co = r / g.kv, HW = (size_t)g.S[1] * g.S[2];
    int tap = (int)(r % g.kv);
    int a = tap / (g.kk[1] * g.kk[2]), e = (tap / g.kk[2]) % g.kk[1], f = tap % g.kk[2];
    int z = (int)(p / HW), y = (int)(p % HW / g.S[2]), x = (int)(p % g.S[2]);
    size_t O1 = (size_t)g.S[1] * g.kk[1], O2 = (size_t)g.S[2] * g.kk[2];
    size_t o = co * g.n * g.kv + ((size_t)(z * g.kk[0] + a) * O1 + (size_t)(y * g.kk[1] + e)) * O2 +
               (size_t)(x * g.kk[2] + f);
    if (dir == 0) img_out[o] = tmp[i] + (bias ? bias[co] : 0.0f);
    else tmp[i] = img_in[o];
  }
}

static int cu_conv_transpose_forward(float *out, float *scratch, const float *inp,
                                     const float *weight, const float *bias, int dims, int B,
                                     int Cin, const int *shape, int Cout) {
  cu_cg g = cu_cg();
  int st = cu_conv_args("conv_transpose_forward", &g, dims, B, Cin, shape, 2, Cout, 0), b, n, M;
  if (st) return st;
  n = (int)g.n, M = Cout * (int)g.kv;
  for (b = 0; b < B && !st; ++b) {
    const float *ib = inp + (size_t)b * Cin * g.n;
    float *ob = out + (size_t)b * M * g.n;
    size_t p0;
    for (p0 = 0; p0 < g.n && !st; p0 += CU_CONV_BLOCK) {
      size_t len = g.n - p0 < CU_CONV_BLOCK ? g.n - p0 : CU_CONV_BLOCK;
      st = cu_gemm(1, 0, M, (int)len, Cin, 1.0f, weight, M, ib + p0, n, 0.0f, scratch, (int)len);
      if (!st)
        CU_RUN(cu_tconv_k, dim3(cu_blocks((size_t)M * len, CU_EW)), dim3(CU_EW), scratch, ob,
               (const float *)NULL, bias, g, Cout, p0, len, 0);
    }
  }
  return st;
}

static int cu_conv_transpose_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                                      const float *dout, const float *inp, const float *weight,
                                      int dims, int B, int Cin, const int *shape, int Cout) {
  cu_cg g = cu_cg();
  int st = cu_conv_args("conv_transpose_backward", &g, dims, B, Cin, shape, 2, Cout, 0), b, n, M;
  if (st) return st;
  n = (int)g.n, M = Cout * (int)g.kv;
  if (dbias) st = cu_chan_sum(dbias, dout, B, Cout, g.n * g.kv);
  for (b = 0; b < B && !st && (dinp || dweight); ++b) {
    const float *db = dout + (size_t)b * M * g.n;
    size_t p0;
    for (p0 = 0; p0 < g.n && !st; p0 += CU_CONV_BLOCK) {
      size_t len = g.n - p0 < CU_CONV_BLOCK ? g.n - p0 : CU_CONV_BLOCK;
      CU_RUN(cu_tconv_k, dim3(cu_blocks((size_t)M * len, CU_EW)), dim3(CU_EW), scratch,
             (float *)NULL, db, (const float *)NULL, g, Cout, p0, len, 1);
      if (dinp)
        st = cu_gemm(0, 0, Cin, (int)len, M, 1.0f, weight, M, scratch, (int)len, 1.0f,
                     dinp + (size_t)b * Cin * g.n + p0, n);
      if (!st && dweight)
        st = cu_gemm(0, 1, Cin, M, (int)len, 1.0f, inp + (size_t)b * Cin * g.n + p0, n, scratch,
                     (int)len, 1.0f, dweight, M);
    }
  }
  return st;
}

/* ---- instance norm over each (b, c) plane of n positions: one block per plane ---- */

static __global__ void cu_instnorm_fwd_k(float *out, float *mean, float *rstd, const float *inp,
                                         const float *weight, const float *bias, int C, size_t n,
                                         float eps) {
  size_t pl = blockIdx.x, i;
  const float *x = inp + pl * n;
  float *y = out + pl * n;
  int c = (int)(pl % C);
  double m = 0.0, v = 0.0, r, w = weight ? weight[c] : 1.0, bb = bias ? bias[c] : 0.0;
  for (i = threadIdx.x; i < n; i += blockDim.x) m += x[i];
  m = cu_block_sum(m) / (double)n;
  for (i = threadIdx.x; i < n; i += blockDim.x) v += (x[i] - m) * (x[i] - m);
  v = cu_block_sum(v) / (double)n;
  r = 1.0 / sqrt(v + eps);
  if (threadIdx.x == 0) mean[pl] = (float)m, rstd[pl] = (float)r;
  for (i = threadIdx.x; i < n; i += blockDim.x) y[i] = (float)((x[i] - m) * r * w + bb);
}

static void cu_instnorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                const float *weight, const float *bias, int B, int C, size_t n,
                                float eps) {
  if (B < 1 || C < 1 || !n) return;
  CU_RUN_SYNC(cu_instnorm_fwd_k, dim3((unsigned)((size_t)B * C)), dim3(CU_PLANE_T), out,
              mean, rstd, inp, weight, bias, C, n, eps);
}

/* per plane: dinp += r (w dy - w mean(dy) - xhat w mean(dy xhat)); the plane's sums of dy and
   dy xhat are kept in part[pl][2] for the parameter gradients */
static __global__ void cu_instnorm_bwd_k(float *dinp, double *part, const float *dout,
                                         const float *inp, const float *weight, const float *mean,
                                         const float *rstd, int C, size_t n) {
  size_t pl = blockIdx.x, i;
  const float *x = inp + pl * n, *dy = dout + pl * n;
  double m = mean[pl], r = rstd[pl], w = weight ? weight[pl % C] : 1.0, s1 = 0.0, s2 = 0.0;
  for (i = threadIdx.x; i < n; i += blockDim.x) {
    double xh = (x[i] - m) * r;
    s1 += dy[i];
    s2 += dy[i] * xh;
  }
  s1 = cu_block_sum(s1);
  s2 = cu_block_sum(s2);
  if (part && threadIdx.x == 0) part[2 * pl] = s1, part[2 * pl + 1] = s2;
  if (dinp) {
    double k1 = w * s1 / (double)n, k2 = w * s2 / (double)n;
    float *dx = dinp + pl * n;
    for (i = threadIdx.x; i < n; i += blockDim.x) {
      double xh = (x[i] - m) * r;
      dx[i] += (float)(r * (w * dy[i] - k1 - xh * k2));
    }
  }
}

static __global__ void cu_instnorm_params_k(float *dweight, float *dbias, const double *part,
                                            int B, int C) {
  CU_FOR(c, (size_t)C) {
    double sw = 0.0, sb = 0.0;
    int b;
    for (b = 0; b < B; ++b) sb += part[2 * ((size_t)b * C + c)], sw += part[2 * ((size_t)b * C + c) + 1];
    if (dweight) dweight[c] += (float)sw;
    if (dbias) dbias[c] += (float)sb;
  }
}

static void cu_instnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                 const float *inp, const float *weight, const float *mean,
                                 const float *rstd, int B, int C, size_t n) {
  double *part = NULL;
  if (B < 1 || C < 1 || !n) return;
  if (dweight || dbias) {
    part = (double *)cu_ws(CU_WS_ROWS, sizeof(double) * 2 * (size_t)B * C);
    if (!part) return;
  }
  CU_RUN_SYNC(cu_instnorm_bwd_k, dim3((unsigned)((size_t)B * C)), dim3(CU_PLANE_T), dinp,
              part, dout, inp, weight, mean, rstd, C, n);
  if (part)
    CU_RUN(cu_instnorm_params_k, dim3(cu_blocks((size_t)C, CU_EW)), dim3(CU_EW), dweight, dbias,
           part, B, C);
}

/* ---- the element-wise steps of the residual block ----
   op 0: a = lrelu(a)                    op 1: a = lrelu(a + b)    (s = n2 + r; out = lrelu(s):
   op 2: a += b                          op 3: a = lrelu'(b) c     writes s and out)
   op 4: a = (b > 0 ? a : a slope)       op 5: a += b (dinp += g1) */
static __global__ void cu_res_ew_k(int op, float *a, float *o, const float *b, const float *c,
                                   size_t n, float slope) {
  CU_FOR(i, n) {
    switch (op) {
      case 0: a[i] = a[i] > 0.0f ? a[i] : a[i] * slope; break;
      case 1: {
        float s = a[i] + b[i];
        a[i] = s;
        o[i] = s > 0.0f ? s : s * slope;
        break;
      }
      case 3: a[i] = b[i] > 0.0f ? c[i] : c[i] * slope; break;
      case 4: if (!(b[i] > 0.0f)) a[i] *= slope; break;
      default: a[i] += b[i]; break;
    }
  }
}

#define CU_EWRUN(op, a, o, b, c, n)                                                               \
  CU_RUN(cu_res_ew_k, dim3(cu_blocks((n), CU_EW)), dim3(CU_EW), (op), (a), (o), (b), (c), (n),     \
         IOUPOS_UNET_LRELU_SLOPE)

/* ---- MONAI UnetResBlock (the CPU's ioupos_unet_resblock_forward / _backward, step by step) ---- */
static int cu_unet_resblock_forward(float *out, float *acts, float *scratch, const float *inp,
                                    const float *w1, const float *w2, const float *w3, int dims,
                                    int B, int Cin, const int shape[], int k, int Cout) {
  cu_cg g = cu_cg();
  int st = cu_conv_args("unet_resblock_forward", &g, dims, B, Cin, shape, k, Cout, 1);
  int has3 = Cin != Cout;
  size_t N, P;
  float *h1, *a1, *h2, *s, *h3, *stats, *cs;
  const float eps = IOUPOS_UNET_NORM_EPS;
  if (st) return st;
  if (!out || !acts || !scratch || !inp || !w1 || !w2 || (has3 != (w3 != NULL)))
    return cu_bad("unet_resblock_forward", "a NULL buffer or weight, or w3 given exactly when "
                  "Cin == Cout");
  N = (size_t)B * Cout * g.n, P = (size_t)B * Cout;
  h1 = acts, a1 = h1 + N, h2 = a1 + N, s = h2 + N, h3 = has3 ? s + N : NULL;
  stats = s + N * (size_t)(1 + has3);
  cs = scratch + 2 * N;
  st = cu_conv_forward(h1, cs, inp, w1, NULL, dims, B, Cin, shape, k, Cout);
  if (st) return st;
  cu_instnorm_forward(a1, stats, stats + P, h1, NULL, NULL, B, Cout, g.n, eps);
  CU_EWRUN(0, a1, (float *)NULL, (const float *)NULL, (const float *)NULL, N);
  st = cu_conv_forward(h2, cs, a1, w2, NULL, dims, B, Cout, shape, k, Cout);
  if (st) return st;
  cu_instnorm_forward(s, stats + 2 * P, stats + 3 * P, h2, NULL, NULL, B, Cout, g.n, eps);
  if (has3) {
    st = cu_conv_forward(h3, NULL, inp, w3, NULL, dims, B, Cin, shape, 1, Cout);
    if (st) return st;
    cu_instnorm_forward(out, stats + 4 * P, stats + 5 * P, h3, NULL, NULL, B, Cout, g.n, eps);
    CU_EWRUN(1, s, out, out, (const float *)NULL, N);
  } else {
    CU_EWRUN(1, s, out, inp, (const float *)NULL, N);
  }
  return cu.err;
}

static int cu_unet_resblock_backward(float *dinp, float *dw1, float *dw2, float *dw3,
                                     float *scratch, const float *dout, const float *acts,
                                     const float *inp, const float *w1, const float *w2,
                                     const float *w3, int dims, int B, int Cin, const int shape[],
                                     int k, int Cout) {
  cu_cg g = cu_cg();
  int st = cu_conv_args("unet_resblock_backward", &g, dims, B, Cin, shape, k, Cout, 1);
  int has3 = Cin != Cout;
  size_t N, P;
  const float *h1, *a1, *h2, *s, *h3, *stats;
  float *g1, *g2, *cs;
  if (st) return st;
  if (!scratch || !dout || !acts || !inp || !w1 || !w2 || (has3 != (w3 != NULL)))
    return cu_bad("unet_resblock_backward", "a NULL buffer or weight, or w3 given exactly when "
                  "Cin == Cout");
  N = (size_t)B * Cout * g.n, P = (size_t)B * Cout;
  h1 = acts, a1 = h1 + N, h2 = a1 + N, s = h2 + N, h3 = has3 ? s + N : NULL;
  stats = s + N * (size_t)(1 + has3);
  g1 = scratch, g2 = scratch + N, cs = scratch + 2 * N;
  /* g1 = dL/ds through the final leaky ReLU */
  CU_EWRUN(3, g1, (float *)NULL, s, dout, N);
  if (has3) {
    if (dinp || dw3) {
      cu_zero(g2, sizeof(float) * N);
      cu_instnorm_backward(g2, NULL, NULL, g1, h3, NULL, stats + 4 * P, stats + 5 * P, B, Cout,
                           g.n);
      st = cu_conv_backward(dinp, dw3, NULL, NULL, g2, inp, w3, dims, B, Cin, shape, 1, Cout);
      if (st) return st;
    }
  } else if (dinp) {
    CU_EWRUN(5, dinp, (float *)NULL, g1, (const float *)NULL, N);
  }
  /* main branch: norm2, conv2, leaky ReLU (a1 has its input's sign), norm1, conv1 */
  cu_zero(g2, sizeof(float) * N);
  cu_instnorm_backward(g2, NULL, NULL, g1, h2, NULL, stats + 2 * P, stats + 3 * P, B, Cout, g.n);
  cu_zero(g1, sizeof(float) * N);
  st = cu_conv_backward(g1, dw2, NULL, cs, g2, a1, w2, dims, B, Cout, shape, k, Cout);
  if (st) return st;
  CU_EWRUN(4, g1, (float *)NULL, a1, (const float *)NULL, N);
  cu_zero(g2, sizeof(float) * N);
  cu_instnorm_backward(g2, NULL, NULL, g1, h1, NULL, stats, stats + P, B, Cout, g.n);
  st = cu_conv_backward(dinp, dw1, NULL, cs, g2, inp, w1, dims, B, Cin, shape, k, Cout);
  return st ? st : cu.err;
}

/* ---- MONAI UnetrUpBlock: transposed conv into the concatenation, then the residual block ---- */
static int cu_up_shape(int dims, const int *shape, int up[3]) {
  int d;
  if ((dims != 2 && dims != 3) || !shape) return 0;
  for (d = 0; d < dims; ++d) {
    if (shape[d] < 1 || shape[d] > 0x3fffffff) return 0;
    up[d] = 2 * shape[d];
  }
  return 1;
}

static int cu_unetr_upblock_forward(float *out, float *acts, float *scratch, const float *inp,
                                    const float *skip, const float *wt, const float *w1,
                                    const float *w2, const float *w3, int dims, int B, int Cin,
                                    const int shape[], int k, int Cout) {
  int up[3], b, st;
  cu_cg g = cu_cg();
  size_t n2, nin;
  if (!cu_up_shape(dims, shape, up) || B < 1 || Cin < 1 || Cout < 1 || !inp || !skip || !wt ||
      !acts || !scratch)
    return cu_bad("unetr_upblock_forward", "bad sizes or a NULL buffer");
  cu_cg_init(&g, dims, up, 1);
  n2 = g.n, nin = n2 >> dims;
  for (b = 0; b < B; ++b) {
    float *cb = acts + (size_t)b * 2 * Cout * n2;
    st = cu_conv_transpose_forward(cb, scratch, inp + (size_t)b * Cin * nin, wt, NULL, dims, 1,
                                   Cin, shape, Cout);
    if (st) return st;
    cu_copy(cb + (size_t)Cout * n2, skip + (size_t)b * Cout * n2, sizeof(float) * Cout * n2);
  }
  return cu_unet_resblock_forward(out, acts + (size_t)B * 2 * Cout * n2, scratch, acts, w1, w2,
                                  w3, dims, B, 2 * Cout, up, k, Cout);
}

static int cu_unetr_upblock_backward(float *dinp, float *dskip, float *dwt, float *dw1,
                                     float *dw2, float *dw3, float *scratch, const float *dout,
                                     const float *acts, const float *inp, const float *wt,
                                     const float *w1, const float *w2, const float *w3, int dims,
                                     int B, int Cin, const int shape[], int k, int Cout) {
  int up[3], b, st;
  cu_cg g = cu_cg();
  size_t n2, nin, ncat;
  float *dcat, *rest;
  if (!cu_up_shape(dims, shape, up) || B < 1 || Cin < 1 || Cout < 1 || !inp || !wt || !dout ||
      !acts || !scratch)
    return cu_bad("unetr_upblock_backward", "bad sizes or a NULL buffer");
  cu_cg_init(&g, dims, up, 1);
  n2 = g.n, nin = n2 >> dims, ncat = (size_t)B * 2 * Cout * n2;
  dcat = scratch, rest = scratch + ncat;
  cu_zero(dcat, sizeof(float) * ncat);
  st = cu_unet_resblock_backward(dcat, dw1, dw2, dw3, rest, dout, acts + ncat, acts, w1, w2, w3,
                                 dims, B, 2 * Cout, up, k, Cout);
  if (st) return st;
  for (b = 0; b < B; ++b) {
    const float *dcb = dcat + (size_t)b * 2 * Cout * n2;
    if (dskip)
      CU_EWRUN(5, dskip + (size_t)b * Cout * n2, (float *)NULL, dcb + (size_t)Cout * n2,
               (const float *)NULL, (size_t)Cout * n2);
    if (dinp || dwt) {
      st = cu_conv_transpose_backward(dinp ? dinp + (size_t)b * Cin * nin : NULL, dwt, NULL, rest,
                                      dcb, inp + (size_t)b * Cin * nin, wt, dims, 1, Cin, shape,
                                      Cout);
      if (st) return st;
    }
  }
  return cu.err;
}

/* ---- MONAI UnetOutBlock: a 1x1 convolution with bias ---- */
static int cu_unet_outblock_forward(float *out, const float *inp, const float *weight,
                                    const float *bias, int dims, int B, int Cin, const int shape[],
                                    int Cout) {
  return cu_conv_forward(out, NULL, inp, weight, bias, dims, B, Cin, shape, 1, Cout);
}

static int cu_unet_outblock_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                     const float *inp, const float *weight, int dims, int B,
                                     int Cin, const int shape[], int Cout) {
  return cu_conv_backward(dinp, dweight, dbias, NULL, dout, inp, weight, dims, B, Cin, shape, 1,
                          Cout);
}

/* =============================================================================================
   The table and its initialisation
   ============================================================================================= */

static void cu_teardown(void) {
  int k;
  if (cu.blas) CU_BLAS(cublasDestroy)(cu.blas);
  for (k = 0; k < CU_WS_N; ++k)
    if (cu.ws[k]) cudaFree(cu.ws[k]), cu_mem_sub(cu.ws_bytes[k]);
  if (cu.scalars) cudaFree(cu.scalars), cu_mem_sub(8 * sizeof(double));
  if (cu.stream) cudaStreamDestroy(cu.stream);
  memset(&cu, 0, sizeof cu);
  cudaGetLastError();
}

static const ioupos_backend *cu_table(void) {
  static ioupos_backend t;
  static char name[320];
  cudaDeviceProp prop;
  memset(&t, 0, sizeof t); /* what is not assigned below is NULL: not in the CUDA backend */
  /* "cuda:N (the card, its memory)": the logs say which device ran */
  if (cudaGetDeviceProperties(&prop, cu.device) == cudaSuccess)
    snprintf(name, sizeof name, "cuda:%d (%.200s, %.1f GiB)", cu.device, prop.name,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
  else
    snprintf(name, sizeof name, "cuda:%d", cu.device);
  t.name = name;
  t.alloc = cu_alloc;
  t.release = cu_release;
  t.upload = cu_upload;
  t.download = cu_download;
  t.copy = cu_copy;
  t.zero = cu_zero;
  t.sync = cu_sync;
  /* section 11 */
  t.linear_forward = cu_linear_forward;
  t.linear_backward = cu_linear_backward;
  t.layernorm_forward = cu_layernorm_forward;
  t.layernorm_backward = cu_layernorm_backward;
  t.gelu_forward = cu_gelu_forward;
  t.gelu_backward = cu_gelu_backward;
  t.relu_forward = cu_relu_forward;
  t.relu_backward = cu_relu_backward;
  t.l2norm_forward = cu_l2norm_forward;
  t.l2norm_backward = cu_l2norm_backward;
  t.avgpool_forward = cu_avgpool_forward;
  t.avgpool_backward = cu_avgpool_backward;
  t.batchnorm_forward_train = cu_batchnorm_forward_train;
  t.batchnorm_backward_train = cu_batchnorm_backward_train;
  t.batchnorm_forward_eval = cu_batchnorm_forward_eval;
  t.batchnorm_backward_eval = cu_batchnorm_backward_eval;
  t.patch_embed_forward = cu_patch_embed_forward;
  t.patch_embed_backward = cu_patch_embed_backward;
  t.patch_merging_forward = cu_patch_merging_forward;
  t.patch_merging_backward = cu_patch_merging_backward;
  t.residual_forward = cu_residual_forward;
  t.residual_backward = cu_residual_backward;
  t.mlp_forward = cu_mlp_forward;
  t.mlp_backward = cu_mlp_backward;
  /* section 12 */
  t.swin_attention_forward = cu_swin_attention_forward;
  t.swin_attention_backward = cu_swin_attention_backward;
  /* section 14 */
  t.wnlinear_forward = cu_wnlinear_forward;
  t.wnlinear_backward = cu_wnlinear_backward;
  t.simsiam_loss_forward = cu_simsiam_loss_forward;
  t.simsiam_loss_backward = cu_simsiam_loss_backward;
  t.dino_loss_forward = cu_dino_loss_forward;
  t.dino_loss_backward = cu_dino_loss_backward;
  t.dino_center_update = cu_dino_center_update;
  /* section 15 */
  t.sgd_step = cu_sgd_step;
  t.adamw_step = cu_adamw_step;
  t.ema_update = cu_ema_update;
  t.clip_grad_per_param = cu_clip_grad_per_param;
  /* section 19 */
  t.to_channels_first = cu_to_channels_first;
  t.to_channels_first_backward = cu_to_channels_first_backward;
  t.unet_resblock_forward = cu_unet_resblock_forward;
  t.unet_resblock_backward = cu_unet_resblock_backward;
  t.unetr_upblock_forward = cu_unetr_upblock_forward;
  t.unetr_upblock_backward = cu_unetr_upblock_backward;
  t.unet_outblock_forward = cu_unet_outblock_forward;
  t.unet_outblock_backward = cu_unet_outblock_backward;
  return &t;
}

#ifdef IOUPOS_CUDA_HOST
/* host build only: the threads per block of the row kernels (tests/test_cuda_ops.c reports
   which launch configuration it runs) */
extern "C" int ioupos_cuda_host_row_threads(void) { return CU_RT; }
#endif

extern "C" const ioupos_backend *ioupos_backend_cuda(int device) {
  static const ioupos_backend *table = NULL;
  int n = 0;
  cudaError_t e;
  cublasStatus_t bs;
  const char *tf32 = getenv("IOUPOS_CUDA_TF32");
  if (cu.ready) {
    if (device == cu.device) return table;
    char buf[160];
    snprintf(buf, sizeof buf, "CUDA backend: this process already uses CUDA device %d (one "
             "device per process), not %d", cu.device, device);
    ioupos_failure_set(IOUPOS_EINVAL, buf);
    return NULL;
  }
  e = cudaGetDeviceCount(&n);
  if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice || (e == cudaSuccess && n < 1)) {
    char buf[256];
    cudaGetLastError();
    snprintf(buf, sizeof buf, "no usable CUDA device: %s",
             e == cudaSuccess ? "the driver reports 0 devices"
             : e == cudaErrorNoDevice ? "cudaGetDeviceCount: cudaErrorNoDevice (no device)"
                                      : "cudaGetDeviceCount: cudaErrorInsufficientDriver (no "
                                        "usable driver)");
    ioupos_failure_set(IOUPOS_EIO, buf);
    return NULL;
  }
  if (e != cudaSuccess) {
    char buf[256];
    cudaGetLastError();
    snprintf(buf, sizeof buf, "CUDA backend: cudaGetDeviceCount: %s (%s)", cudaGetErrorName(e),
             cudaGetErrorString(e));
    ioupos_failure_set(IOUPOS_EIO, buf);
    return NULL;
  }
  if (device < 0 || device >= n) {
    char buf[160];
    snprintf(buf, sizeof buf, "CUDA backend: device %d out of range (%d device%s)", device, n,
             n == 1 ? "" : "s");
    ioupos_failure_set(IOUPOS_EINVAL, buf);
    return NULL;
  }
  memset(&cu, 0, sizeof cu);
  cu.device = device;
  if (cu_check(cudaSetDevice(device), "cudaSetDevice") ||
      cu_check(cudaStreamCreateWithFlags(&cu.stream, cudaStreamNonBlocking), "cudaStreamCreate")) {
    cu_teardown();
    return NULL;
  }
  if (cudaMalloc((void **)&cu.scalars, 8 * sizeof(double)) != cudaSuccess) {
    cu.scalars = NULL;
    cu_teardown();
    ioupos_failure_set(IOUPOS_ENOMEM, "CUDA backend: out of device memory at start-up");
    return NULL;
  }
  cu_mem_add(8 * sizeof(double));
#ifndef IOUPOS_CUDA_HOST
  if (ioupos_cuda_blas_load(NULL) != 0) {
    cu_teardown();
    return NULL;
  }
#endif
  bs = CU_BLAS(cublasCreate)(&cu.blas);
  if (bs != CUBLAS_STATUS_SUCCESS) {
    char buf[160];
    cu.blas = NULL;
    cu_teardown();
    snprintf(buf, sizeof buf, "CUDA backend: cuBLAS could not start: %s",
             CU_BLAS(cublasGetStatusString)(bs));
    ioupos_failure_set(bs == CUBLAS_STATUS_ALLOC_FAILED ? IOUPOS_ENOMEM : IOUPOS_EIO, buf);
    return NULL;
  }
  if (cu_blas_check(CU_BLAS(cublasSetStream)(cu.blas, cu.stream), "cublasSetStream") ||
      cu_blas_check(CU_BLAS(cublasSetMathMode)(cu.blas, tf32 && strcmp(tf32, "1") == 0
                                                            ? CUBLAS_TF32_TENSOR_OP_MATH
                                                            : CUBLAS_DEFAULT_MATH),
                    "cublasSetMathMode") ||
      cu_blas_check(CU_BLAS(cublasSetAtomicsMode)(cu.blas, CUBLAS_ATOMICS_NOT_ALLOWED),
                    "cublasSetAtomicsMode")) {
    cu_teardown();
    return NULL;
  }
  cu.err = 0;
  cu.ready = 1;
  table = cu_table();
  return table;
}

/* ---- the device count (ioupos_cuda_device_count) -------------------------------------------- */
extern "C" int ioupos_cuda_device_count(void) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    char buf[256];
    cudaGetLastError(); /* not left for the backend's next check */
    snprintf(buf, sizeof buf, "no usable CUDA device: cudaGetDeviceCount: %s (%s)",
             cudaGetErrorName(e), cudaGetErrorString(e));
    ioupos_failure_set(IOUPOS_EIO, buf);
    return 0;
  }
  if (n < 1) {
    ioupos_failure_set(IOUPOS_EIO, "no usable CUDA device: the driver reports 0 devices");
    return 0;
  }
  return n;
}

#ifdef IOUPOS_WITH_NCCL
/* ---- section 16b's NCCL table (ioupos_comm_nccl_init) ------------------------------------------
   The collectives of ioupos_comm on the backend's device memory and stream. allreduce_sum is an
   all-gather into a staging buffer and a rank-order sum, never ncclAllReduce: NCCL's reduction
   order depends on its algorithm (ring, tree), on the number of channels and on the message
   size, so neither the bits nor their equality across ranks would be what section 16b
   promises. The staging buffer is sized once, IOUPOS_COMM_CHUNK_BYTES (all ranks' chunks), so a
   sum never waits for a reallocation; a bigger buffer goes in several rounds, each one an
   all-gather and a sum kernel queued on the stream (a round's gather waits for the previous
   round's kernel by stream order). */
static struct {
  int ready;
  ncclComm_t comm;
  const ioupos_comm *mpi; /* the table init was given: its barrier is ours */
  float *stage;           /* size * chunk floats of device memory */
  size_t chunk;           /* floats per rank per round */
  ioupos_comm table;
} cu_nccl;

static int cu_nccl_fail(ncclResult_t r, const char *what) {
  char buf[320];
  snprintf(buf, sizeof buf, "%s: %s (NCCL error %d)", what,
           ncclGetErrorString(r), (int)r);
  return ioupos_failure_set(IOUPOS_EIO, buf);
}

/* out[i] = ((stage[i] + stage[m + i]) + stage[2m + i]) + ...: rank r's gathered chunk is at
   r * m; the same float additions, in the same order, as the MPI table's loop */
static __global__ void cu_rank_sum_k(float *out, const float *stage, size_t m, int size) {
  CU_FOR(i, m) {
    float s = stage[i];
    for (int r = 1; r < size; ++r) s = __fadd_rn(s, stage[(size_t)r * m + i]);
    out[i] = s;
  }
}

static int cu_nccl_allreduce_sum(const ioupos_comm *c, float *buf, size_t n) {
  size_t off, m;
  ncclResult_t r;
  cudaError_t e;
  char what[200];
  if (!buf && n > 0)
    return ioupos_failure_set(IOUPOS_EINVAL, "ioupos_comm allreduce_sum (nccl): buf is NULL");
  if (n == 0) return IOUPOS_OK;
  for (off = 0; off < n; off += m) {
    m = n - off < cu_nccl.chunk ? n - off : cu_nccl.chunk;
    r = ncclAllGather(buf + off, cu_nccl.stage, m, ncclFloat, cu_nccl.comm, cu.stream);
    if (r != ncclSuccess) {
      snprintf(what, sizeof what, "ioupos_comm allreduce_sum (nccl): ncclAllGather of floats [%zu, %zu) of %zu",
               off, off + m, n);
      return cu_nccl_fail(r, what);
    }
    CU_LAUNCH(cu_rank_sum_k, cu_blocks(m, CU_EW), CU_EW, buf + off, cu_nccl.stage, m, c->size);
    e = cudaGetLastError();
    if (e != cudaSuccess) return cu_check(e, "ioupos_comm allreduce_sum (nccl): cu_rank_sum_k");
  }
  return IOUPOS_OK;
}

static int cu_nccl_broadcast(const ioupos_comm *c, void *buf, size_t bytes, int root) {
  ncclResult_t r;
  char what[200];
  if (!buf && bytes > 0)
    return ioupos_failure_set(IOUPOS_EINVAL, "ioupos_comm broadcast (nccl): buf is NULL");
  if (root < 0 || root >= c->size) {
    snprintf(what, sizeof what, "ioupos_comm broadcast (nccl): root is %d; the ranks are 0 to %d",
             root, c->size - 1);
    return ioupos_failure_set(IOUPOS_EINVAL, what);
  }
  if (bytes == 0) return IOUPOS_OK;
  r = ncclBroadcast(buf, buf, bytes, ncclUint8, root, cu_nccl.comm, cu.stream);
  if (r != ncclSuccess) {
    snprintf(what, sizeof what, "ioupos_comm broadcast (nccl): ncclBroadcast of %zu bytes from rank %d", bytes, root);
    return cu_nccl_fail(r, what);
  }
  return IOUPOS_OK;
}

static int cu_nccl_allgather(const ioupos_comm *c, const float *send, size_t n, float *recv) {
  ncclResult_t r;
  char what[200];
  (void)c;
  if ((!send || !recv) && n > 0)
    return ioupos_failure_set(IOUPOS_EINVAL, "ioupos_comm allgather (nccl): a buffer is NULL");
  if (n == 0) return IOUPOS_OK;
  r = ncclAllGather(send, recv, n, ncclFloat, cu_nccl.comm, cu.stream);
  if (r != ncclSuccess) {
    snprintf(what, sizeof what, "ioupos_comm allgather (nccl): ncclAllGather of %zu floats per rank", n);
    return cu_nccl_fail(r, what);
  }
  return IOUPOS_OK;
}

/* the stream's work done (this rank's collectives included), NCCL's asynchronous errors
   looked at, then the MPI barrier */
static int cu_nccl_barrier(const ioupos_comm *c) {
  ncclResult_t r, async = ncclSuccess;
  cudaError_t e = cudaStreamSynchronize(cu.stream);
  (void)c;
  if (e != cudaSuccess) return cu_check(e, "ioupos_comm barrier (nccl): cudaStreamSynchronize");
  r = ncclCommGetAsyncError(cu_nccl.comm, &async);
  if (r != ncclSuccess) return cu_nccl_fail(r, "ioupos_comm barrier (nccl): ncclCommGetAsyncError");
  if (async != ncclSuccess) return cu_nccl_fail(async, "ioupos_comm barrier (nccl): an earlier collective failed");
  return cu_nccl.mpi->barrier(cu_nccl.mpi);
}

extern "C" int ioupos_comm_nccl_init(const ioupos_comm *mpi, const ioupos_comm **out) {
  struct {
    float bad;        /* failures before the communicator, summed over the ranks */
    ncclUniqueId id;  /* rank 0's */
  } msg;
  size_t chunk;
  ncclResult_t r = ncclSuccess;
  int rc;
  char what[200];
  if (!out) return ioupos_failure_set(IOUPOS_EINVAL, "ioupos_comm_nccl_init: out is NULL");
  *out = NULL;
  if (cu_nccl.ready) {
    *out = &cu_nccl.table;
    return IOUPOS_OK;
  }
  if (!mpi || mpi->device_buffers || mpi->size < 1 || mpi->rank < 0 || mpi->rank >= mpi->size)
    return ioupos_failure_set(IOUPOS_EINVAL, "ioupos_comm_nccl_init: mpi must be a host-memory "
                                             "table (ioupos_comm_mpi_init's)");
  if (!cu.ready)
    return ioupos_failure_set(IOUPOS_EINVAL, "ioupos_comm_nccl_init: no CUDA backend (call "
                                             "ioupos_backend_cuda(device) first)");
  /* every local step first, then one agreement, so that a rank that fails here does not leave
     the others waiting in ncclCommInitRank */
  chunk = (size_t)IOUPOS_COMM_CHUNK_BYTES / sizeof(float) / (size_t)mpi->size;
  if (chunk < 1) chunk = 1;
  memset(&msg, 0, sizeof msg);
  what[0] = 0;
  if (cudaMalloc((void **)&cu_nccl.stage, chunk * (size_t)mpi->size * sizeof(float)) !=
      cudaSuccess) {
    cudaGetLastError();
    cu_nccl.stage = NULL;
    snprintf(what, sizeof what, "ioupos_comm_nccl_init: out of device memory for the %zu-byte "
             "staging buffer", chunk * (size_t)mpi->size * sizeof(float));
    msg.bad = 1.0f;
  } else {
    cu_mem_add(chunk * (size_t)mpi->size * sizeof(float));
  }
  if (mpi->rank == 0 && !msg.bad) {
    r = ncclGetUniqueId(&msg.id);
    if (r != ncclSuccess) msg.bad = 1.0f;
  }
  rc = mpi->allreduce_sum(mpi, &msg.bad, 1);
  if (rc == 0) rc = mpi->broadcast(mpi, &msg.id, sizeof msg.id, 0);
  if (rc == 0 && msg.bad == 0.0f) {
    r = ncclCommInitRank(&cu_nccl.comm, mpi->size, msg.id, mpi->rank);
    if (r != ncclSuccess) {
      snprintf(what, sizeof what, "ioupos_comm_nccl_init: ncclCommInitRank (rank %d of %d)",
               mpi->rank, mpi->size);
      rc = cu_nccl_fail(r, what);
    }
  } else if (rc == 0) { /* this rank's reason, or that another rank failed */
    if (what[0])
      rc = ioupos_failure_set(IOUPOS_ENOMEM, what);
    else if (r != ncclSuccess)
      rc = cu_nccl_fail(r, "ioupos_comm_nccl_init: ncclGetUniqueId");
    else {
      snprintf(what, sizeof what, "ioupos_comm_nccl_init: %g of %d ranks could not start (see "
               "their messages)", (double)msg.bad, mpi->size);
      rc = ioupos_failure_set(IOUPOS_EIO, what);
    }
  }
  if (rc != 0) {
    if (cu_nccl.stage) {
      cudaFree(cu_nccl.stage);
      cu_mem_sub(chunk * (size_t)mpi->size * sizeof(float));
    }
    cu_nccl.stage = NULL;
    return rc;
  }
  cu_nccl.mpi = mpi;
  cu_nccl.chunk = chunk;
  cu_nccl.table.rank = mpi->rank;
  cu_nccl.table.size = mpi->size;
  cu_nccl.table.name = "nccl";
  cu_nccl.table.allreduce_sum = cu_nccl_allreduce_sum;
  cu_nccl.table.broadcast = cu_nccl_broadcast;
  cu_nccl.table.barrier = cu_nccl_barrier;
  cu_nccl.table.allgather = cu_nccl_allgather;
  cu_nccl.table.device_buffers = 1;
  cu_nccl.table.ctx = &cu_nccl;
  cu_nccl.ready = 1;
  *out = &cu_nccl.table;
  return IOUPOS_OK;
}

extern "C" int ioupos_comm_nccl_finalize(void) {
  cudaError_t e;
  ncclResult_t r1, r2;
  if (!cu_nccl.ready) return IOUPOS_OK;
  cu_nccl.ready = 0;
  e = cudaStreamSynchronize(cu.stream);
  r1 = ncclCommFinalize(cu_nccl.comm); /* flushes this rank's collectives */
  r2 = ncclCommDestroy(cu_nccl.comm);
  cu_nccl.comm = NULL;
  cudaFree(cu_nccl.stage);
  cu_mem_sub(cu_nccl.chunk * (size_t)cu_nccl.table.size * sizeof(float));
  cu_nccl.stage = NULL;
  if (e != cudaSuccess) return cu_check(e, "ioupos_comm_nccl_finalize: cudaStreamSynchronize");
  if (r1 != ncclSuccess) return cu_nccl_fail(r1, "ioupos_comm_nccl_finalize: ncclCommFinalize");
  if (r2 != ncclSuccess) return cu_nccl_fail(r2, "ioupos_comm_nccl_finalize: ncclCommDestroy");
  return IOUPOS_OK;
}
#endif /* IOUPOS_WITH_NCCL */
