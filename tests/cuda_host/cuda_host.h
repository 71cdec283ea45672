/* tests/cuda_host/cuda_host.h — the host build of ioupos_cuda.cu (IOUPOS_CUDA_HOST).

   ioupos_cuda.cu compiled as C++ by g++ with -DIOUPOS_CUDA_HOST -Itests/cuda_host includes this
   header instead of <cuda_runtime.h> and <cublas_v2.h>, so that every kernel, every index
   computation and every cuBLAS call of the CUDA backend runs on a machine without a GPU:

   - __global__, __device__, __host__ become nothing: a kernel is a plain function; __shared__
     becomes static (one block runs at a time, so a block's threads share it, as on a GPU).
   - Launches: IOUPOS_CUH_LAUNCH(grid, block, sync, body) runs the grid as host loops over
     blockIdx and threadIdx. Kernels that use __syncthreads() are launched with sync = 1: each
     thread of a block is then a fiber (ucontext) with its own stack, and __syncthreads()
     suspends it until every thread of the block has reached the barrier, so shared-memory
     reductions run exactly as written. A thread that leaves the kernel while others wait at a
     barrier is a bug on a GPU too: it is reported and the program aborts. __syncthreads() in
     a kernel launched with sync = 0 aborts as well (the launch must say so).
     Launch configurations are checked as the GPU checks them (block <= 1024 threads,
     grid.y, grid.z <= 65535); a bad one is reported by cudaGetLastError().
   - Device memory is host memory (cudaMalloc is an aligned malloc). Every allocation is
     registered, so the cuBLAS reference (cublas_ref.h) checks that each matrix it reads or
     writes, as described by its sizes, leading dimension and batch stride, lies inside one
     allocation.
   - IOUPOS_CUDA_HOST_ORDER=reverse in the environment runs the blocks of every grid and the
     threads of every block (between barriers too) in reverse order. A kernel whose result
     depends on the order in which its threads run (two threads writing one element, a read of
     another thread's write without a barrier) then gives different bits: tests/test_cuda_ops.c
     runs each case once in each order and requires the same bits.
   - IOUPOS_CUDA_HOST_DEVICES=0 in the environment makes cudaGetDeviceCount answer "no device"
     (error 100), a negative value "insufficient driver" (error 35, what machines without a GPU
     driver answer), and IOUPOS_CUDA_HOST_MEM=<bytes> caps the emulated device memory, so the
     backend's failure paths can be tested too.
   Everything is single-threaded and synchronous; streams are accepted and ignored. Only what
   ioupos_cuda.cu uses is here. */
#ifndef IOUPOS_CUDA_HOST_H
#define IOUPOS_CUDA_HOST_H

#include <ucontext.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

/* the built-in variables of the thread that runs now */
static uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;

/* ---- runtime API: the subset ioupos_cuda.cu uses, with the real names and error numbers ---- */
enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101
};
typedef enum cudaError cudaError_t;
typedef struct CUstream_st *cudaStream_t;
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
#define cudaStreamNonBlocking 0x01
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int major, minor, multiProcessorCount;
};

namespace ioupos_cuhost {
static cudaError_t last_error = cudaSuccess;
static std::map<uintptr_t, size_t> allocations; /* start -> bytes */
static size_t allocated = 0;

static cudaError_t set_error(cudaError_t e) {
  if (e != cudaSuccess && last_error == cudaSuccess) last_error = e;
  return e;
}

static long env_long(const char *name, long dflt) {
  const char *v = getenv(name);
  char *end;
  long x;
  if (!v || !*v) return dflt;
  x = strtol(v, &end, 10);
  return *end ? dflt : x;
}

/* bytes an allocation takes (256-byte granules, at least one) */
static size_t rounded(size_t bytes) { return bytes ? (bytes + 255) & ~(size_t)255 : 256; }

/* 1 when [p, p + bytes) lies inside one allocation */
static int inside(const void *p, size_t bytes) {
  uintptr_t a = (uintptr_t)p;
  std::map<uintptr_t, size_t>::const_iterator it = allocations.upper_bound(a);
  if (it == allocations.begin()) return 0;
  --it;
  return a >= it->first && a - it->first <= it->second && bytes <= it->second - (a - it->first);
}
} // namespace ioupos_cuhost

static inline const char *cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
  }
  return "unknown error";
}
static inline const char *cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
  }
  return "cudaErrorUnknown";
}
static inline cudaError_t cudaGetLastError(void) {
  cudaError_t e = ioupos_cuhost::last_error;
  ioupos_cuhost::last_error = cudaSuccess;
  return e;
}
static inline cudaError_t cudaPeekAtLastError(void) { return ioupos_cuhost::last_error; }
static inline cudaError_t cudaGetDeviceCount(int *n) {
  long d = ioupos_cuhost::env_long("IOUPOS_CUDA_HOST_DEVICES", 1);
  /* *n untouched on failure, as the runtime leaves it */
  if (d < 0) return ioupos_cuhost::set_error(cudaErrorInsufficientDriver);
  if (d == 0) return ioupos_cuhost::set_error(cudaErrorNoDevice);
  *n = (int)d;
  return cudaSuccess;
}
static inline cudaError_t cudaSetDevice(int d) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return cudaErrorNoDevice;
  return d >= 0 && d < n ? cudaSuccess : ioupos_cuhost::set_error(cudaErrorInvalidDevice);
}
static inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d) {
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "host emulation of device %d", d);
  p->totalGlobalMem = (size_t)ioupos_cuhost::env_long("IOUPOS_CUDA_HOST_MEM", 1L << 34);
  p->major = 9, p->minor = 0, p->multiProcessorCount = 1;
  return cudaSuccess;
}
static inline cudaError_t cudaMalloc(void **p, size_t bytes) {
  size_t cap = (size_t)ioupos_cuhost::env_long("IOUPOS_CUDA_HOST_MEM", 1L << 34);
  size_t r = ioupos_cuhost::rounded(bytes);
  void *q;
  *p = NULL;
  if (ioupos_cuhost::allocated + r > cap) return ioupos_cuhost::set_error(cudaErrorMemoryAllocation);
  q = aligned_alloc(256, r);
  if (!q) return ioupos_cuhost::set_error(cudaErrorMemoryAllocation);
  memset(q, 0xA5, r); /* device memory is not zeroed: do not rely on it */
  ioupos_cuhost::allocations[(uintptr_t)q] = bytes;
  ioupos_cuhost::allocated += r;
  *p = q;
  return cudaSuccess;
}
static inline cudaError_t cudaFree(void *p) {
  std::map<uintptr_t, size_t>::iterator it;
  if (!p) return cudaSuccess;
  it = ioupos_cuhost::allocations.find((uintptr_t)p);
  if (it == ioupos_cuhost::allocations.end()) return ioupos_cuhost::set_error(cudaErrorInvalidValue);
  ioupos_cuhost::allocated -= ioupos_cuhost::rounded(it->second);
  ioupos_cuhost::allocations.erase(it);
  free(p);
  return cudaSuccess;
}
static inline cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total) {
  *total = (size_t)ioupos_cuhost::env_long("IOUPOS_CUDA_HOST_MEM", 1L << 34);
  *free_b = *total - ioupos_cuhost::allocated;
  return cudaSuccess;
}
static inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind,
                                          cudaStream_t s) {
  (void)s;
  if (n == 0) return cudaSuccess;
  /* the device side of the copy must lie inside an allocation */
  if (((kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice) &&
       !ioupos_cuhost::inside(dst, n)) ||
      ((kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice) &&
       !ioupos_cuhost::inside(src, n)))
    return ioupos_cuhost::set_error(cudaErrorInvalidValue);
  memcpy(dst, src, n);
  return cudaSuccess;
}
static inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s) {
  (void)s;
  if (n == 0) return cudaSuccess;
  if (!ioupos_cuhost::inside(p, n)) return ioupos_cuhost::set_error(cudaErrorInvalidValue);
  memset(p, v, n);
  return cudaSuccess;
}
static inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
  (void)flags;
  *s = (cudaStream_t)&ioupos_cuhost::last_error; /* any non-NULL handle */
  return cudaSuccess;
}
static inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  (void)s;
  return cudaSuccess;
}
static inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  (void)s;
  return ioupos_cuhost::last_error;
}
static inline cudaError_t cudaDeviceSynchronize(void) { return ioupos_cuhost::last_error; }

/* ---- device intrinsics: IEEE round-to-nearest operations that nvcc never contracts (the host
   build is compiled with -ffp-contract=off, so plain operators are never contracted either) ---- */
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
/* Integer atomics only (one thread runs at a time, so a plain update is atomic). There is
   deliberately no float or double overload: a floating-point atomicAdd, whose sums depend on the
   order in which threads arrive, does not compile in the host build. */
static inline int atomicAdd(int *p, int v) {
  int old = *p;
  *p = old + v;
  return old;
}
static inline unsigned atomicAdd(unsigned *p, unsigned v) {
  unsigned old = *p;
  *p = old + v;
  return old;
}

/* ---- launches ---- */
/* Fibers. A block launched with barriers runs each of its threads as a fiber: a stack of its
   own, switched to by the scheduler (run_block_fibers) and back at every __syncthreads(). On
   x86-64 the switch is the few instructions below: it saves the callee-saved registers, the
   SSE and x87 control words and the stack pointer, and loads the other fiber's. glibc's
   swapcontext does the same plus two system calls for the signal mask, which made those calls
   90 % of the host build's run time (a block reduction switches 2 x threads x barriers times).
   AddressSanitizer is told of every switch (__sanitizer_start_switch_fiber before it,
   __sanitizer_finish_switch_fiber after, as its documentation asks), so that it knows which
   stack is live. Elsewhere, and under ThreadSanitizer, the fibers are ucontext's. */
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define IOUPOS_CUH_FAST_FIBERS 1
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/common_interface_defs.h>
#define IOUPOS_CUH_ASAN_FIBERS 1
#endif
/* ioupos_cuh_switch(save, load): pushes the callee-saved state, stores the stack pointer in
   *save, continues on the stack `load` (a pointer another switch stored, or a fresh fiber's
   prepared stack). ioupos_cuh_fiber_start is where a fresh fiber's first switch returns to: it
   aligns the stack as a call expects and calls ioupos_cuh_fiber_main, which never returns. */
extern "C" void ioupos_cuh_switch(void **save, void *load);
extern "C" void ioupos_cuh_fiber_start(void);
extern "C" void ioupos_cuh_fiber_main(void);
__asm__(".text\n"
        ".globl ioupos_cuh_switch\n"
        ".type ioupos_cuh_switch, @function\n"
        "ioupos_cuh_switch:\n"
        "  pushq %rbp\n"
        "  pushq %rbx\n"
        "  pushq %r12\n"
        "  pushq %r13\n"
        "  pushq %r14\n"
        "  pushq %r15\n"
        "  subq $8, %rsp\n"
        "  stmxcsr (%rsp)\n"
        "  fnstcw 4(%rsp)\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  ldmxcsr (%rsp)\n"
        "  fldcw 4(%rsp)\n"
        "  addq $8, %rsp\n"
        "  popq %r15\n"
        "  popq %r14\n"
        "  popq %r13\n"
        "  popq %r12\n"
        "  popq %rbx\n"
        "  popq %rbp\n"
        "  ret\n"
        ".size ioupos_cuh_switch, .-ioupos_cuh_switch\n"
        ".globl ioupos_cuh_fiber_start\n"
        ".type ioupos_cuh_fiber_start, @function\n"
        "ioupos_cuh_fiber_start:\n"
        "  andq $-16, %rsp\n"
        "  call ioupos_cuh_fiber_main\n"
        "  ud2\n"
        ".size ioupos_cuh_fiber_start, .-ioupos_cuh_fiber_start\n");
#endif

namespace ioupos_cuhost {
enum { T_READY, T_WAIT, T_DONE };
static const size_t fiber_stack = 128 * 1024;
#ifdef IOUPOS_CUH_FAST_FIBERS
static std::vector<void *> fib; /* each suspended fiber's stack pointer */
static void *sched;             /* the scheduler's, while a fiber runs */
#else
static std::vector<ucontext_t> fib;
static ucontext_t sched;
#endif
static std::vector<int> fstate;
/* the fiber stacks, kept for the next launch and freed at exit */
static struct stack_pool {
  std::vector<char *> v;
  ~stack_pool() {
    for (size_t i = 0; i < v.size(); ++i) free(v[i]);
  }
} stacks;
static int in_fiber = 0, cur = 0;
static const std::function<void()> *body = NULL;

/* 1 when IOUPOS_CUDA_HOST_ORDER=reverse (read at every launch) */
static int reverse_order(void) {
  const char *v = getenv("IOUPOS_CUDA_HOST_ORDER");
  return v && strcmp(v, "reverse") == 0;
}

static void set_thread(unsigned t) {
  threadIdx.x = t % blockDim.x;
  threadIdx.y = (t / blockDim.x) % blockDim.y;
  threadIdx.z = t / (blockDim.x * blockDim.y);
}

#ifdef IOUPOS_CUH_FAST_FIBERS
/* fiber t's stack, ready for its first switch: from its top down, the return address
   (ioupos_cuh_fiber_start), six zero callee-saved registers and the current control words, in
   the order ioupos_cuh_switch pops them */
static void fiber_init(unsigned t) {
  uint64_t *sp = (uint64_t *)(((uintptr_t)(stacks.v[t] + fiber_stack)) & ~(uintptr_t)15);
  uint32_t csr[2];
  __asm__ volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(csr[0]), "=m"(csr[1]));
  *--sp = 0; /* alignment */
  *--sp = (uint64_t)(uintptr_t)ioupos_cuh_fiber_start;
  for (int r = 0; r < 6; ++r) *--sp = 0;
  --sp;
  memcpy(sp, csr, sizeof csr);
  fib[t] = sp;
}
#ifdef IOUPOS_CUH_ASAN_FIBERS
static void *asan_sched_fake;                 /* the scheduler's fake stack while a fiber runs */
static std::vector<void *> asan_fib_fake(1024); /* each suspended fiber's */
static const void *asan_sched_bottom;         /* the scheduler's stack, learnt at a fiber's start */
static size_t asan_sched_size;
static void fiber_resume(unsigned t) {
  __sanitizer_start_switch_fiber(&asan_sched_fake, stacks.v[t], fiber_stack);
  ioupos_cuh_switch(&sched, fib[t]);
  __sanitizer_finish_switch_fiber(asan_sched_fake, NULL, NULL);
}
static void fiber_yield(int me) {
  __sanitizer_start_switch_fiber(&asan_fib_fake[me], asan_sched_bottom, asan_sched_size);
  ioupos_cuh_switch(&fib[me], sched);
  __sanitizer_finish_switch_fiber(asan_fib_fake[me], &asan_sched_bottom, &asan_sched_size);
}
#else
static void fiber_resume(unsigned t) { ioupos_cuh_switch(&sched, fib[t]); }
static void fiber_yield(int me) { ioupos_cuh_switch(&fib[me], sched); }
#endif
#else
static void fiber_entry(void) {
  (*body)();
  fstate[cur] = T_DONE; /* uc_link returns to the scheduler */
}
static void fiber_init(unsigned t) {
  getcontext(&fib[t]);
  fib[t].uc_stack.ss_sp = stacks.v[t];
  fib[t].uc_stack.ss_size = fiber_stack;
  fib[t].uc_link = &sched;
  makecontext(&fib[t], fiber_entry, 0);
}
static void fiber_resume(unsigned t) { swapcontext(&sched, &fib[t]); }
static void fiber_yield(int me) { swapcontext(&fib[me], &sched); }
#endif

/* one block, its threads as fibers, barriers respected; rev: threads in reverse order */
static void run_block_fibers(unsigned nt, int rev) {
  unsigned t, k;
  while (fib.size() < nt) {
    fib.push_back(decltype(fib)::value_type());
    stacks.v.push_back((char *)malloc(fiber_stack));
    fstate.push_back(T_DONE);
    if (!stacks.v.back()) {
      fprintf(stderr, "cuda_host: out of memory for fiber stacks\n");
      abort();
    }
  }
  for (t = 0; t < nt; ++t) {
    fiber_init(t);
    fstate[t] = T_READY;
  }
  in_fiber = 1;
  for (;;) {
    unsigned waiting = 0, done = 0;
    for (k = 0; k < nt; ++k) {
      t = rev ? nt - 1 - k : k;
      if (fstate[t] != T_READY) continue;
      cur = (int)t;
      set_thread(t);
      fiber_resume(t);
    }
    for (t = 0; t < nt; ++t) {
      if (fstate[t] == T_WAIT) ++waiting;
      if (fstate[t] == T_DONE) ++done;
    }
    if (done == nt) break;
    if (done > 0) {
      fprintf(stderr, "cuda_host: block (%u,%u,%u): %u threads left the kernel while %u wait at "
              "__syncthreads() (a barrier not reached by every thread)\n", blockIdx.x,
              blockIdx.y, blockIdx.z, done, waiting);
      abort();
    }
    for (t = 0; t < nt; ++t) fstate[t] = T_READY;
  }
  in_fiber = 0;
}
} // namespace ioupos_cuhost

#ifdef IOUPOS_CUH_FAST_FIBERS
/* a fresh fiber's body: the kernel, then back to the scheduler for good */
extern "C" void ioupos_cuh_fiber_main(void) {
  using namespace ioupos_cuhost;
#ifdef IOUPOS_CUH_ASAN_FIBERS
  __sanitizer_finish_switch_fiber(NULL, &asan_sched_bottom, &asan_sched_size);
#endif
  (*body)();
  fstate[cur] = T_DONE;
#ifdef IOUPOS_CUH_ASAN_FIBERS
  __sanitizer_start_switch_fiber(NULL, asan_sched_bottom, asan_sched_size); /* never back */
#endif
  ioupos_cuh_switch(&fib[cur], sched);
  abort(); /* a finished fiber is never resumed */
}
#endif

static inline void __syncthreads(void) {
  using namespace ioupos_cuhost;
  int me = cur;
  if (!in_fiber) {
    fprintf(stderr, "cuda_host: __syncthreads() in a kernel launched without barriers "
            "(use the _SYNC launch)\n");
    abort();
  }
  fstate[me] = T_WAIT;
  fiber_yield(me);
  cur = me;
  set_thread((unsigned)me);
}

static inline void ioupos_cuh_launch(dim3 g, dim3 b, int sync, const std::function<void()> &fn) {
  unsigned bx, by, bz, t, k, nt = b.x * b.y * b.z;
  unsigned long long blk, nblk = (unsigned long long)g.x * g.y * g.z;
  int rev = ioupos_cuhost::reverse_order();
  if (nt == 0 || nt > 1024 || b.z > 64 || g.x == 0 || g.y == 0 || g.z == 0 ||
      g.x > 2147483647u || g.y > 65535 || g.z > 65535) {
    ioupos_cuhost::set_error(cudaErrorInvalidConfiguration);
    return;
  }
  gridDim = g;
  blockDim = b;
  ioupos_cuhost::body = &fn;
  for (blk = 0; blk < nblk; ++blk) {
    unsigned long long q = rev ? nblk - 1 - blk : blk;
    bx = (unsigned)(q % g.x), by = (unsigned)(q / g.x % g.y), bz = (unsigned)(q / g.x / g.y);
    blockIdx.x = bx, blockIdx.y = by, blockIdx.z = bz;
    if (sync) {
      ioupos_cuhost::run_block_fibers(nt, rev);
    } else {
      ioupos_cuhost::in_fiber = 0;
      for (k = 0; k < nt; ++k) {
        t = rev ? nt - 1 - k : k;
        ioupos_cuhost::set_thread(t);
        fn();
      }
    }
  }
  ioupos_cuhost::body = NULL;
}

#include "cublas_ref.h"

#endif
