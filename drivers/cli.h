/* drivers/cli.h — the command-line plumbing the ioupos-* drivers share (not part of the library).

   The including file defines PROG (its command name, a string literal) first. Every error is
   printed as "PROG: ..." on stderr and exits with status 2; --help prints the usage on stdout and
   exits 0.

   Flags: each driver keeps its table of flag names (without the "--"); cli_next_flag walks argv
   and returns the index of the next flag in that table, its value taking the form '--flag value'
   or '--flag=value'. The last n_switches names of the table take no value.

     cli c;
     int k;
     cli_init(&c, argc, argv, names, CLI_COUNT(names), 0, usage);
     while ((k = cli_next_flag(&c)) >= 0)
       switch (k) { case 0: o->n = (int)cli_int(c.flag, c.value, 1, 100); break; ... }

   Numbers are strict: the whole string, no leading space, range-checked; a bad one is reported
   as "PROG: --flag: bad value 'VALUE': WHY (see --help)". The *_prefix parsers read one number
   of a longer value (e.g. "64x96") and quote the whole value; the list parsers read exactly n
   numbers with one separator between them.

   Besides flags, the small helpers several commands need: cli_now_s (a monotonic clock),
   cli_ends_with, cli_mkdir (mkdir, or mkdir -p). */
#ifndef IOUPOS_DRIVERS_CLI_H
#define IOUPOS_DRIVERS_CLI_H

#ifndef PROG
#error "define PROG (the command name, a string literal) before including drivers/cli.h"
#endif

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

/* Not every driver uses every helper. */
#if defined(__GNUC__)
#define CLI_DEF static __attribute__((unused))
#else
#define CLI_DEF static
#endif

#define CLI_COUNT(table) ((int)(sizeof(table) / sizeof((table)[0])))

typedef struct cli {
  int argc, i;
  char **argv;
  const char *const *names; /* flag names without the "--" */
  int n_names, n_switches;  /* the last n_switches names take no value */
  void (*usage)(FILE *);
  char flag[256];    /* the current flag with its "--" (for messages) */
  const char *value; /* its value; NULL for a switch */
} cli;

CLI_DEF void cli_init(cli *c, int argc, char **argv, const char *const *names, int n_names,
                      int n_switches, void (*usage)(FILE *)) {
  memset(c, 0, sizeof *c);
  c->argc = argc;
  c->argv = argv;
  c->names = names;
  c->n_names = n_names;
  c->n_switches = n_switches;
  c->usage = usage;
}

/* The index in names of the next flag (c->flag, c->value set), or -1 when argv is done. Handles
   --help; a positional argument, an unknown flag, a missing value or a value given to a switch
   is an error (exit 2). */
CLI_DEF int cli_next_flag(cli *c) {
  const char *arg, *eq;
  size_t len;
  int k, is_help;
  if (++c->i >= c->argc) return -1;
  arg = c->argv[c->i];
  if (strncmp(arg, "--", 2) != 0 || !arg[2]) {
    fprintf(stderr, PROG ": unexpected argument '%s' (flags start with --; see --help)\n", arg);
    exit(2);
  }
  eq = strchr(arg, '=');
  len = eq ? (size_t)(eq - arg) : strlen(arg);
  if (len >= sizeof c->flag) len = sizeof c->flag - 1;
  memcpy(c->flag, arg, len);
  c->flag[len] = 0;
  for (k = 0; k < c->n_names && strcmp(c->flag + 2, c->names[k]) != 0; ++k) {}
  is_help = !strcmp(c->flag, "--help");
  if (is_help || (k < c->n_names && k >= c->n_names - c->n_switches)) {
    if (eq) {
      fprintf(stderr, PROG ": %s takes no value (got '%s')\n", c->flag, arg);
      exit(2);
    }
    if (is_help) {
      c->usage(stdout);
      exit(0);
    }
    c->value = NULL;
    return k;
  }
  if (k == c->n_names) {
    fprintf(stderr, PROG ": unknown flag '%s' (see --help)\n", c->flag);
    exit(2);
  }
  if (eq) {
    c->value = eq + 1;
  } else if (c->i + 1 < c->argc && strncmp(c->argv[c->i + 1], "--", 2) != 0) {
    c->value = c->argv[++c->i];
  } else {
    fprintf(stderr, PROG ": %s: missing value (see --help)\n", c->flag);
    exit(2);
  }
  return k;
}

CLI_DEF void cli_bad_value(const char *flag, const char *value, const char *why) {
  fprintf(stderr, PROG ": %s: bad value '%s': %s (see --help)\n", flag, value, why);
  exit(2);
}

/* A flag every run needs was not given. */
CLI_DEF void cli_required(const char *flag) {
  fprintf(stderr, PROG ": %s is required (see --help)\n", flag);
  exit(2);
}

/* A non-empty string (a file or folder name); `expect` says what was expected. */
CLI_DEF const char *cli_nonempty(const char *flag, const char *s, const char *expect) {
  if (!*s) cli_bad_value(flag, s, expect);
  return s;
}

/* A decimal integer at *s (advanced past it) in lo..hi, part of the value `whole`. expect NULL:
   the integer is the whole value's only number ("expected an integer", "must be an integer in
   lo..hi"); else it is one number of a list that `expect` describes ("each integer must be in
   lo..hi"). */
CLI_DEF long long cli_int_prefix(const char *flag, const char *whole, const char **s, long long lo,
                                 long long hi, const char *expect) {
  const char *syntax = expect ? expect : "expected an integer";
  char *end, why[128];
  long long v;
  if (!isdigit((unsigned char)**s) && **s != '-') cli_bad_value(flag, whole, syntax);
  errno = 0;
  v = strtoll(*s, &end, 10);
  if (end == *s) cli_bad_value(flag, whole, syntax);
  if (errno == ERANGE || v < lo || v > hi) {
    snprintf(why, sizeof why,
             expect ? "each integer must be in %lld..%lld" : "must be an integer in %lld..%lld",
             lo, hi);
    cli_bad_value(flag, whole, why);
  }
  *s = end;
  return v;
}

/* The whole of s, a decimal integer in lo..hi. */
CLI_DEF long long cli_int(const char *flag, const char *s, long long lo, long long hi) {
  const char *p = s;
  char *end;
  (void)strtoll(s, &end, 10);
  if (end == s || *end) cli_bad_value(flag, s, "expected an integer");
  return cli_int_prefix(flag, s, &p, lo, hi, NULL);
}

/* The whole of s, an unsigned 64-bit decimal integer. */
CLI_DEF uint64_t cli_u64(const char *flag, const char *s) {
  char *end;
  unsigned long long v;
  if (!isdigit((unsigned char)*s)) cli_bad_value(flag, s, "expected an unsigned integer");
  errno = 0;
  v = strtoull(s, &end, 10);
  if (*end) cli_bad_value(flag, s, "expected an unsigned integer");
  if (errno == ERANGE) cli_bad_value(flag, s, "larger than 2^64 - 1");
  return (uint64_t)v;
}

/* A finite number at *s (advanced past it) in (lo, hi] when open_lo, else [lo, hi]; expect as
   for cli_int_prefix. */
CLI_DEF double cli_double_prefix(const char *flag, const char *whole, const char **s, double lo,
                                 double hi, int open_lo, const char *expect) {
  const char *syntax = expect ? expect : "expected a number";
  char *end, why[128];
  double v;
  if (!**s || isspace((unsigned char)**s)) cli_bad_value(flag, whole, syntax);
  errno = 0;
  v = strtod(*s, &end);
  if (end == *s) cli_bad_value(flag, whole, syntax);
  if (errno == ERANGE || !isfinite(v))
    cli_bad_value(flag, whole, expect ? "expected finite numbers" : "expected a finite number");
  if ((open_lo ? !(v > lo) : !(v >= lo)) || !(v <= hi)) {
    snprintf(why, sizeof why, expect ? "each number must be in %c%g, %g]" : "must be in %c%g, %g]",
             open_lo ? '(' : '[', lo, hi);
    cli_bad_value(flag, whole, why);
  }
  *s = end;
  return v;
}

/* The whole of s, a finite number in (lo, hi] when open_lo, else [lo, hi]. */
CLI_DEF double cli_double(const char *flag, const char *s, double lo, double hi, int open_lo) {
  const char *p = s;
  char *end;
  (void)strtod(s, &end);
  if (end == s || *end) cli_bad_value(flag, s, "expected a number");
  return cli_double_prefix(flag, s, &p, lo, hi, open_lo, NULL);
}

/* The whole of s: exactly n integers in lo..hi separated by sep, into out[0..n-1]; `expect`
   describes the value (e.g. "expected NXxNYxNZ ..."). */
CLI_DEF void cli_int_list(const char *flag, const char *s, char sep, int n, long long lo,
                          long long hi, const char *expect, long long *out) {
  const char *p = s;
  int a;
  for (a = 0; a < n; ++a) {
    if (a > 0 && *p++ != sep) cli_bad_value(flag, s, expect);
    out[a] = cli_int_prefix(flag, s, &p, lo, hi, expect);
  }
  if (*p) cli_bad_value(flag, s, expect);
}

/* The same for n finite numbers, each in (lo, hi] when open_lo, else [lo, hi]. */
CLI_DEF void cli_double_list(const char *flag, const char *s, char sep, int n, double lo,
                             double hi, int open_lo, const char *expect, double *out) {
  const char *p = s;
  int a;
  for (a = 0; a < n; ++a) {
    if (a > 0 && *p++ != sep) cli_bad_value(flag, s, expect);
    out[a] = cli_double_prefix(flag, s, &p, lo, hi, open_lo, expect);
  }
  if (*p) cli_bad_value(flag, s, expect);
}

/* The library names options by their field names in backquotes ("`crop` 32,24: ..."); the
   commands speak of flags. cli_flags(text) is text with each `field` as its --flag: the fields
   whose flag has another name are listed, every other field is its flag's name. The result is
   in a static buffer (the commands print from one thread), cut at 8 KiB. */
CLI_DEF const char *cli_flags(const char *text) {
  static const char *const renamed[][2] = {{"crop", "crop_size"},
                                           {"local_crop", "local_crop_size"},
                                           {"embed_dim", "embedding_size"},
                                           {"n_local", "n_local_crops"},
                                           {"window", "window_size"},
                                           {"cache_bytes", "cache_mb"}};
  static char out[8192];
  size_t n = 0, k;
  const char *p = text ? text : "";
  while (*p && n + 1 < sizeof out) {
    const char *e = *p == '`' ? strchr(p + 1, '`') : NULL;
    size_t len = e ? (size_t)(e - p - 1) : 0;
    if (e && len > 0 && strspn(p + 1, "abcdefghijklmnopqrstuvwxyz0123456789_") == len) {
      const char *flag = NULL;
      int w;
      for (k = 0; k < sizeof renamed / sizeof *renamed && !flag; ++k)
        if (strlen(renamed[k][0]) == len && !memcmp(renamed[k][0], p + 1, len))
          flag = renamed[k][1];
      w = flag ? snprintf(out + n, sizeof out - n, "--%s", flag)
               : snprintf(out + n, sizeof out - n, "--%.*s", (int)len, p + 1);
      if (w < 0 || (size_t)w >= sizeof out - n) break;
      n += (size_t)w;
      p = e + 1;
    } else {
      out[n++] = *p++;
    }
  }
  out[n] = '\0';
  return out;
}

/* ---- helpers --------------------------------------------------------------------------------- */

/* Seconds on a monotonic clock (for elapsed times). */
CLI_DEF double cli_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* 1 if s ends with suf. */
CLI_DEF int cli_ends_with(const char *s, const char *suf) {
  size_t n = strlen(s), m = strlen(suf);
  return n >= m && strcmp(s + n - m, suf) == 0;
}

/* Makes the folder path (mode 0755), with its missing parents when `parents` (mkdir -p), else
   only path itself. Returns 0 when path is a folder afterwards (one that already exists is
   fine), else -1 with errno set: EEXIST when something that is not a folder has the name,
   ENAMETOOLONG past 4095 bytes, else mkdir's error. */
CLI_DEF int cli_mkdir(const char *path, int parents) {
  char buf[4096];
  struct stat st;
  size_t i, n = strlen(path);
  if (n >= sizeof buf) {
    errno = ENAMETOOLONG;
    return -1;
  }
  memcpy(buf, path, n + 1);
  for (i = parents ? 1 : n; i <= n; ++i)
    if (buf[i] == '/' || buf[i] == 0) {
      char c = buf[i];
      buf[i] = 0;
      if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
      buf[i] = c;
    }
  if (stat(path, &st) != 0) return -1;
  if (!S_ISDIR(st.st_mode)) {
    errno = EEXIST;
    return -1;
  }
  return 0;
}

/* ---- --device auto|cpu|cuda[:N] -------------------------------------------------------------
   The backend a command's model runs on. The commands link the CUDA backend when `make` found
   nvcc (it then defines IOUPOS_WITH_CUDA). cuda[:N] must get device N (default 0), or the
   command stops with the reason (exit 1); auto takes device 0 when the build has CUDA and a
   device answers, else the CPU, and says why on stderr when a CUDA build falls back. */
#define CLI_DEVICE_HELP                                                                      \
  "  --device D            auto, cpu, cuda or cuda:N: where the model runs (default auto: the\n" \
  "                        GPU when this build has the CUDA backend and a device answers,\n"    \
  "                        else the CPU); the log names the device\n"

typedef struct cli_device {
  int kind;          /* 0 auto, 1 cpu, 2 cuda */
  int index;         /* cuda:N */
  const char *spec;  /* as given (for the flags JSON) */
} cli_device;

/* parses the value of --device; exits 2 naming the flag when it is none of the forms */
CLI_DEF void cli_device_parse(const char *flag, const char *v, cli_device *d) {
  char *end = NULL;
  d->spec = v;
  d->index = 0;
  if (!strcmp(v, "auto")) d->kind = 0;
  else if (!strcmp(v, "cpu")) d->kind = 1;
  else if (!strcmp(v, "cuda")) d->kind = 2;
  else if (!strncmp(v, "cuda:", 5) && v[5] >= '0' && v[5] <= '9') {
    long n;
    errno = 0;
    n = strtol(v + 5, &end, 10);
    if (*end || errno || n > 1023) cli_bad_value(flag, v, "expected auto, cpu, cuda or cuda:N");
    d->kind = 2;
    d->index = (int)n;
  } else {
    cli_bad_value(flag, v, "expected auto, cpu, cuda or cuda:N");
  }
}

/* The backend --device asks for; exits 1 with the reason when it asks for a GPU that cannot be
   used (no CUDA in this build, no driver, no device, device out of range, no memory). */
CLI_DEF const ioupos_backend *cli_device_backend(const cli_device *d) {
#ifdef IOUPOS_WITH_CUDA
  const ioupos_backend *be;
  if (d->kind == 1) return ioupos_backend_cpu();
  be = ioupos_backend_cuda(d->index);
  if (be) return be;
  if (d->kind == 2) {
    fprintf(stderr, PROG ": error: --device %s: %s\n", d->spec, ioupos_failure_reason());
    exit(1);
  }
  fprintf(stderr, PROG ": note: --device auto: %s; running on the CPU\n", ioupos_failure_reason());
  return ioupos_backend_cpu();
#else
  if (d->kind == 2) {
    fprintf(stderr, PROG ": error: --device %s: this build has no CUDA backend (make found no "
                    "nvcc, or ran with CUDA=0)\n", d->spec);
    exit(1);
  }
  return ioupos_backend_cpu();
#endif
}

#endif /* IOUPOS_DRIVERS_CLI_H */
