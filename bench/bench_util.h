/* bench/bench_util.h — what the model benchmarks (bench_encoder, bench_simsiam, bench_finetune)
   share: clocks, peak RSS, the median, a hash, running a measurement in a forked child (so its
   peak RSS is its own) and running the PyTorch baseline (bench/bench_torch.py) as a subprocess
   to read its last stdout line, a one-line JSON object, and the --device choice (the CUDA
   backend where the bench is built with IOUPOS_WITH_CUDA and linked with it). Include after
   <ioupos.h>; every function is static inline (a bench need not use them all). Linux only
   (ru_maxrss in KiB, fork, popen).
   The baseline's interpreter is .venv/bin/python, or $IOUPOS_BENCH_PYTHON when set (a GPU
   machine's own python3 with PyTorch: scripts/gpu_check.sh). */
#ifndef IOUPOS_BENCH_UTIL_H
#define IOUPOS_BENCH_UTIL_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define TORCH_PYTHON ".venv/bin/python"
#define TORCH_SCRIPT "bench/bench_torch.py"
#define MAX_STEPS 1000

static inline double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline double cpu_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* the process's peak RSS so far */
static inline double maxrss_mib(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_maxrss / 1024.0; /* KiB on Linux */
}

static inline double mib(size_t floats) { return (double)floats * sizeof(float) / 1048576.0; }

static inline int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* median of v[0 .. n), 1 <= n <= MAX_STEPS */
static inline double median(const double *v, int n) {
  double s[MAX_STEPS];
  memcpy(s, v, sizeof(double) * (size_t)n);
  qsort(s, (size_t)n, sizeof(double), cmp_double);
  return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

static inline unsigned long long fnv1a(const void *data, size_t bytes) {
  const unsigned char *p = (const unsigned char *)data;
  unsigned long long h = 1469598103934665603ULL;
  size_t i;
  for (i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ULL;
  return h;
}

/* Runs fn(arg, out) in a forked child on `threads` OpenMP threads and copies the child's
   out[0 .. size) back through a pipe. Returns 1 when it came back whole; else out is zeroed
   and err[errcap] says why (the measurement's own failures are for fn to report inside out). */
static inline int bench_forked(void (*fn)(const void *arg, void *out), const void *arg,
                               int threads, void *out, size_t size, char *err, size_t errcap) {
  int fd[2], status = 0;
  pid_t pid;
  size_t got = 0;
  memset(out, 0, size);
  fflush(stdout);
  fflush(stderr);
  if (pipe(fd) != 0) {
    snprintf(err, errcap, "pipe: %s", strerror(errno));
    return 0;
  }
  pid = fork();
  if (pid < 0) {
    snprintf(err, errcap, "fork: %s", strerror(errno));
    close(fd[0]);
    close(fd[1]);
    return 0;
  }
  if (pid == 0) {
    const char *p = (const char *)out;
    size_t left = size;
    close(fd[0]);
#ifdef _OPENMP
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
    fn(arg, out);
    while (left > 0) {
      ssize_t w = write(fd[1], p, left);
      if (w <= 0) _exit(1);
      p += w;
      left -= (size_t)w;
    }
    close(fd[1]);
    _exit(0);
  }
  close(fd[1]);
  while (got < size) {
    ssize_t n = read(fd[0], (char *)out + got, size - got);
    if (n <= 0) break;
    got += (size_t)n;
  }
  close(fd[0]);
  waitpid(pid, &status, 0);
  if (got != size) {
    memset(out, 0, size);
    snprintf(err, errcap, "the measuring process died (wait status 0x%x)", status);
    return 0;
  }
  return 1;
}

/* the number after "key": in a one-line JSON object, or -1 */
static inline double json_number(const char *line, const char *key) {
  char pat[64];
  const char *s;
  snprintf(pat, sizeof pat, "\"%s\":", key);
  s = strstr(line, pat);
  if (!s) return -1.0;
  return strtod(s + strlen(pat), NULL);
}

/* Runs `.venv/bin/python bench/bench_torch.py <args>` (its other lines pass through to our
   stdout) and puts its last non-empty line into last[cap]. Returns 1, or 0 with why[whycap]
   saying why there is no baseline (no venv, not run from the repository root, a failure). */
static inline int bench_torch_run(const char *args, char *last, size_t cap, char *why,
                                  size_t whycap) {
  char cmd[1024], line[8192];
  FILE *f;
  int status, code;
  const char *python = getenv("IOUPOS_BENCH_PYTHON");
  last[0] = 0;
  if (!python || !*python) python = TORCH_PYTHON;
  if (strchr(python, '/') && access(python, X_OK) != 0) {
    if (strcmp(python, TORCH_PYTHON) == 0)
      snprintf(why, whycap, "%s not found (make %s creates it; or set IOUPOS_BENCH_PYTHON)",
               TORCH_PYTHON, TORCH_PYTHON);
    else
      snprintf(why, whycap, "IOUPOS_BENCH_PYTHON=%s is not an executable", python);
    return 0;
  }
  if (access(TORCH_SCRIPT, R_OK) != 0) {
    snprintf(why, whycap, "%s not found (run from the repository root)", TORCH_SCRIPT);
    return 0;
  }
  snprintf(cmd, sizeof cmd, "%s %s %s", python, TORCH_SCRIPT, args);
  fflush(stdout);
  f = popen(cmd, "r");
  if (!f) {
    snprintf(why, whycap, "cannot run %s: %s", python, strerror(errno));
    return 0;
  }
  while (fgets(line, sizeof line, f)) {
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
    if (n > 0 && n < cap) memcpy(last, line, n + 1);
  }
  status = pclose(f);
  code = status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code != 0) {
    snprintf(why, whycap, "bench_torch.py exited with status %d%s", code,
             code == 2 ? " (torch / monai / einops missing, no CUDA device for torch, or a bad "
                         "argument; see its message above)" : "");
    return 0;
  }
  if (last[0] != '{') {
    snprintf(why, whycap, "bench_torch.py's last line is not its JSON result");
    return 0;
  }
  return 1;
}

/* PyTorch's figures: rate (the JSON member the bench names), peak / base / delta RSS (device
   memory with --device cuda: max_memory_allocated, memory_allocated before the first step,
   the difference; reserved_mib = max_memory_reserved), the parameter count and the last loss
   (-1 where its JSON has none) */
typedef struct torch_result {
  int ok;
  double rate, peak_mib, base_mib, delta_mib, reserved_mib, params, loss;
  char why[256];
} torch_result;

/* bench_torch_run(args) and its JSON into *t, the memory figures of the device (dev 1) or the
   RSS (dev 0); t->ok 0 with t->why when there is no baseline */
static inline void bench_torch_dev(const char *args, const char *rate_key, int dev,
                                   torch_result *t) {
  char last[8192];
  memset(t, 0, sizeof *t);
  if (!bench_torch_run(args, last, sizeof last, t->why, sizeof t->why)) return;
  t->rate = json_number(last, rate_key);
  t->peak_mib = json_number(last, dev ? "peak_dev_mib" : "peak_rss_mib");
  t->base_mib = json_number(last, dev ? "base_dev_mib" : "base_rss_mib");
  t->delta_mib = json_number(last, dev ? "delta_dev_mib" : "delta_rss_mib");
  t->reserved_mib = dev ? json_number(last, "reserved_dev_mib") : -1.0;
  t->params = json_number(last, "params");
  t->loss = json_number(last, "loss");
  if (!(t->rate > 0.0) || !(t->peak_mib > 0.0) || !(t->delta_mib > 0.0)) {
    snprintf(t->why, sizeof t->why, "bench_torch.py's JSON result lacks %s or the memory figures",
             rate_key);
    return;
  }
  t->ok = 1;
}

static inline void bench_torch(const char *args, const char *rate_key, torch_result *t) {
  bench_torch_dev(args, rate_key, 0, t);
}

/* ---- --device cpu|cuda ---------------------------------------------------------------------
   The CUDA backend is there when the bench is compiled with IOUPOS_WITH_CUDA and linked with
   build/ioupos_cuda.o (build/bench_*_cuda, make bench-cuda) or its host build
   (build/hostcuda/bench_*, tests/test_bench_cuda.sh). Only the measuring child process starts
   it (bench_forked): the parent never touches CUDA, so forking stays safe. */
#define BENCH_SKIP_PREFIX "no usable CUDA device"

/* the backend of --device (cuda: device 0), or NULL with err[cap] saying why */
static inline const ioupos_backend *bench_backend(int cuda, char *err, size_t cap) {
  const ioupos_backend *be;
  if (!cuda) return ioupos_backend_cpu();
#ifdef IOUPOS_WITH_CUDA
  be = ioupos_backend_cuda(0);
  if (!be) snprintf(err, cap, "%s", ioupos_failure_reason());
#else
  be = NULL;
  snprintf(err, cap, "this build has no CUDA backend (make bench-cuda builds build/bench_*_cuda)");
#endif
  return be;
}

/* the CUDA backend's device memory (ioupos_cuda_mem_peak / _in_use) in MiB; 0 on the CPU */
static inline double bench_dev_peak_mib(int cuda) {
#ifdef IOUPOS_WITH_CUDA
  if (cuda) return (double)ioupos_cuda_mem_peak() / 1048576.0;
#else
  (void)cuda;
#endif
  return 0.0;
}
static inline double bench_dev_in_use_mib(int cuda) {
#ifdef IOUPOS_WITH_CUDA
  if (cuda) return (double)ioupos_cuda_mem_in_use() / 1048576.0;
#else
  (void)cuda;
#endif
  return 0.0;
}

/* --probe: starts the backend of --device cuda in this process and says which device answers
   (exit 0), or why none does: exit 3 when there is no usable device or no CUDA backend in the
   build (make bench-cuda prints SKIP), 1 on another failure */
static inline int bench_probe(void) {
  char err[512];
  const ioupos_backend *be = bench_backend(1, err, sizeof err);
  if (be) {
    printf("%s\n", be->name);
    return 0;
  }
  printf("%s\n", err);
  return strncmp(err, BENCH_SKIP_PREFIX, strlen(BENCH_SKIP_PREFIX)) == 0 ||
                 strstr(err, "this build has no CUDA backend")
             ? 3
             : 1;
}

/* the backend's n floats at src as host memory: src itself on the CPU backend, else a copy
   in *owned (free it; NULL when out of memory) */
static inline const float *bench_host_view(const ioupos_backend *be, const float *src, size_t n,
                                           float **owned) {
  *owned = NULL;
  if (be == ioupos_backend_cpu()) return src;
  *owned = (float *)malloc(n * sizeof(float));
  if (*owned) be->download(*owned, src, n * sizeof(float));
  return *owned;
}

static inline int parse_int(const char *s, int lo, int hi, int *v) {
  char *end;
  long x = strtol(s, &end, 10);
  if (*s == 0 || *end != 0 || x < lo || x > hi) return 0;
  *v = (int)x;
  return 1;
}

#endif /* IOUPOS_BENCH_UTIL_H */
