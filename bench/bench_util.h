/* bench/bench_util.h — what the model benchmarks (bench_encoder, bench_simsiam, bench_finetune)
   share: clocks, peak RSS, the median, a hash, running a measurement in a forked child (so its
   peak RSS is its own) and running the PyTorch baseline (bench/bench_torch.py) as a subprocess
   to read its last stdout line, a one-line JSON object. Include after <ioupos.h>; every
   function is static inline (a bench need not use them all). Linux only (ru_maxrss in KiB,
   fork, popen). */
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
  last[0] = 0;
  if (access(TORCH_PYTHON, X_OK) != 0) {
    snprintf(why, whycap, "%s not found (make %s creates it)", TORCH_PYTHON, TORCH_PYTHON);
    return 0;
  }
  if (access(TORCH_SCRIPT, R_OK) != 0) {
    snprintf(why, whycap, "%s not found (run from the repository root)", TORCH_SCRIPT);
    return 0;
  }
  snprintf(cmd, sizeof cmd, "%s %s %s", TORCH_PYTHON, TORCH_SCRIPT, args);
  fflush(stdout);
  f = popen(cmd, "r");
  if (!f) {
    snprintf(why, whycap, "cannot run %s: %s", TORCH_PYTHON, strerror(errno));
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
             code == 2 ? " (torch / monai / lightly / einops missing, or a bad argument; see its "
                         "message above)" : "");
    return 0;
  }
  if (last[0] != '{') {
    snprintf(why, whycap, "bench_torch.py's last line is not its JSON result");
    return 0;
  }
  return 1;
}

/* PyTorch's figures: rate (the JSON member the bench names), peak / base / delta RSS, the
   parameter count and the last loss (-1 where its JSON has none) */
typedef struct torch_result {
  int ok;
  double rate, peak_mib, base_mib, delta_mib, params, loss;
  char why[256];
} torch_result;

/* bench_torch_run(args) and its JSON into *t; t->ok 0 with t->why when there is no baseline */
static inline void bench_torch(const char *args, const char *rate_key, torch_result *t) {
  char last[8192];
  memset(t, 0, sizeof *t);
  if (!bench_torch_run(args, last, sizeof last, t->why, sizeof t->why)) return;
  t->rate = json_number(last, rate_key);
  t->peak_mib = json_number(last, "peak_rss_mib");
  t->base_mib = json_number(last, "base_rss_mib");
  t->delta_mib = json_number(last, "delta_rss_mib");
  t->params = json_number(last, "params");
  t->loss = json_number(last, "loss");
  if (!(t->rate > 0.0) || !(t->peak_mib > 0.0) || !(t->delta_mib > 0.0)) {
    snprintf(t->why, sizeof t->why, "bench_torch.py's JSON result lacks %s or the memory figures",
             rate_key);
    return;
  }
  t->ok = 1;
}

static inline int parse_int(const char *s, int lo, int hi, int *v) {
  char *end;
  long x = strtol(s, &end, 10);
  if (*s == 0 || *end != 0 || x < lo || x > hi) return 0;
  *v = (int)x;
  return 1;
}

#endif /* IOUPOS_BENCH_UTIL_H */
