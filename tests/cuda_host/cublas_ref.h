/* tests/cuda_host/cublas_ref.h — a reference cuBLAS for the host build (included by
   cuda_host.h). The functions ioupos_cuda.cu calls, with cuBLAS's exact names, signatures
   (cublas_v2.h; ioupos_cuda.cu checks them against the real header in the nvcc build) and
   semantics:

   - COLUMN-MAJOR: element (i, j) of an m x n matrix X with leading dimension ld is X[i + j ld];
     op(A) is m x k, op(B) is k x n, C is m x n;
   - argument checks as cuBLAS makes them: m, n, k, batchCount >= 0, lda >= max(1, rows of A as
     stored), ldb likewise, ldc >= max(1, m); a failing check returns
     CUBLAS_STATUS_INVALID_VALUE and touches nothing;
   - beta == 0 means C is not read (NaN in C does not propagate); k == 0 or alpha == 0 gives
     C = beta C without reading A or B;
   - and one check cuBLAS cannot make: every matrix as described by (rows, columns, leading
     dimension, batch stride, batch count) must lie inside one device allocation of the
     emulator, else the call fails with CUBLAS_STATUS_INVALID_VALUE and says which operand.
   Each element is a float sum over p in order (an fmaf chain), then alpha sum + beta C. */
#ifndef IOUPOS_CUBLAS_REF_H
#define IOUPOS_CUBLAS_REF_H

typedef enum {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_ARCH_MISMATCH = 8,
  CUBLAS_STATUS_MAPPING_ERROR = 11,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_INTERNAL_ERROR = 14,
  CUBLAS_STATUS_NOT_SUPPORTED = 15
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 } cublasOperation_t;
typedef enum {
  CUBLAS_DEFAULT_MATH = 0,
  CUBLAS_TENSOR_OP_MATH = 1,
  CUBLAS_PEDANTIC_MATH = 2,
  CUBLAS_TF32_TENSOR_OP_MATH = 3
} cublasMath_t;
typedef enum { CUBLAS_ATOMICS_NOT_ALLOWED = 0, CUBLAS_ATOMICS_ALLOWED = 1 } cublasAtomicsMode_t;

struct cublasContext {
  cudaStream_t stream;
  cublasMath_t math;
  cublasAtomicsMode_t atomics;
};
typedef struct cublasContext *cublasHandle_t;

static inline cublasStatus_t cublasCreate(cublasHandle_t *h) {
  *h = new cublasContext();
  (*h)->stream = NULL;
  (*h)->math = CUBLAS_DEFAULT_MATH;
  (*h)->atomics = CUBLAS_ATOMICS_NOT_ALLOWED;
  return CUBLAS_STATUS_SUCCESS;
}
static inline cublasStatus_t cublasDestroy(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
static inline cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  h->stream = s;
  return CUBLAS_STATUS_SUCCESS;
}
static inline cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  h->math = m;
  return CUBLAS_STATUS_SUCCESS;
}
static inline cublasStatus_t cublasGetMathMode(cublasHandle_t h, cublasMath_t *m) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  *m = h->math;
  return CUBLAS_STATUS_SUCCESS;
}
static inline cublasStatus_t cublasSetAtomicsMode(cublasHandle_t h, cublasAtomicsMode_t m) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  h->atomics = m;
  return CUBLAS_STATUS_SUCCESS;
}

namespace ioupos_cuhost {
/* floats spanned by batch items of a rows x cols column-major matrix */
static size_t span(int rows, int cols, int ld, long long stride, int batch) {
  if (rows <= 0 || cols <= 0 || batch <= 0) return 0;
  return (size_t)(cols - 1) * (size_t)ld + (size_t)rows + (size_t)(batch - 1) * (size_t)stride;
}

static cublasStatus_t gemm_ref(const char *fn, cublasHandle_t h, cublasOperation_t ta,
                               cublasOperation_t tb, int m, int n, int k, const float *alpha,
                               const float *A, int lda, long long sA, const float *B, int ldb,
                               long long sB, const float *beta, float *C, int ldc, long long sC,
                               int batch) {
  int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
  int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
  int readab, b, i, j, p;
  float al, be;
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T) ||
      m < 0 || n < 0 || k < 0 || batch < 0 || lda < (ar > 1 ? ar : 1) ||
      ldb < (br > 1 ? br : 1) || ldc < (m > 1 ? m : 1) || !alpha || !beta) {
    fprintf(stderr, "cublas_ref: %s: invalid value (ta %d tb %d m %d n %d k %d lda %d ldb %d "
            "ldc %d batch %d)\n", fn, (int)ta, (int)tb, m, n, k, lda, ldb, ldc, batch);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
  al = *alpha, be = *beta;
  readab = k > 0 && al != 0.0f;
  if (batch > 1 && (sC < 0 || (size_t)sC < span(m, n, ldc, 0, 1))) {
    fprintf(stderr, "cublas_ref: %s: C items overlap (strideC %lld for %d x %d, ldc %d)\n", fn,
            sC, m, n, ldc);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if ((readab && (!inside(A, sizeof(float) * span(ar, ac, lda, sA, batch)) ||
                  !inside(B, sizeof(float) * span(br, bc, ldb, sB, batch)))) ||
      !inside(C, sizeof(float) * span(m, n, ldc, sC, batch))) {
    fprintf(stderr, "cublas_ref: %s: an operand outside its allocation (m %d n %d k %d, A %s, "
            "B %s, C %s; lda %d ldb %d ldc %d; strides %lld %lld %lld; batch %d)\n", fn, m, n, k,
            readab && !inside(A, sizeof(float) * span(ar, ac, lda, sA, batch)) ? "OUT" : "ok",
            readab && !inside(B, sizeof(float) * span(br, bc, ldb, sB, batch)) ? "OUT" : "ok",
            !inside(C, sizeof(float) * span(m, n, ldc, sC, batch)) ? "OUT" : "ok", lda, ldb, ldc,
            sA, sB, sC, batch);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  for (b = 0; b < batch; ++b) {
    const float *Ab = A + (ptrdiff_t)b * sA, *Bb = B + (ptrdiff_t)b * sB;
    float *Cb = C + (ptrdiff_t)b * sC;
    for (j = 0; j < n; ++j)
      for (i = 0; i < m; ++i) {
        float s = 0.0f, *c = Cb + i + (size_t)j * ldc;
        if (readab)
          for (p = 0; p < k; ++p) {
            float a = ta == CUBLAS_OP_N ? Ab[i + (size_t)p * lda] : Ab[p + (size_t)i * lda];
            float bb = tb == CUBLAS_OP_N ? Bb[p + (size_t)j * ldb] : Bb[j + (size_t)p * ldb];
            s = fmaf(a, bb, s);
          }
        *c = be == 0.0f ? al * s : al * s + be * *c;
      }
  }
  return CUBLAS_STATUS_SUCCESS;
}
} // namespace ioupos_cuhost

static inline cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa,
                                         cublasOperation_t transb, int m, int n, int k,
                                         const float *alpha, const float *A, int lda,
                                         const float *B, int ldb, const float *beta, float *C,
                                         int ldc) {
  return ioupos_cuhost::gemm_ref("cublasSgemm", handle, transa, transb, m, n, k, alpha, A, lda, 0,
                                 B, ldb, 0, beta, C, ldc, 0, 1);
}

static inline cublasStatus_t cublasSgemmStridedBatched(
    cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
    const float *alpha, const float *A, int lda, long long int strideA, const float *B, int ldb,
    long long int strideB, const float *beta, float *C, int ldc, long long int strideC,
    int batchCount) {
  return ioupos_cuhost::gemm_ref("cublasSgemmStridedBatched", handle, transa, transb, m, n, k,
                                 alpha, A, lda, strideA, B, ldb, strideB, beta, C, ldc, strideC,
                                 batchCount);
}

static inline const char *cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

#endif
