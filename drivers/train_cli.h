/* drivers/train_cli.h — what the training commands (ioupos-simsiam, ioupos-dino through
   drivers/pretrain.h, and ioupos-finetune) share beyond drivers/cli.h (not part of the
   library): usage errors, the resolved flags as JSON (flags.json and the flag comparison on
   --resume), the encoder width check, --threads, the console log callback, Ctrl-C / SIGTERM
   stopping the run at a step boundary with its state saved, and data parallel under mpirun
   (the MPI table, one GPU per process, NCCL, the job's end).

   Include after ioupos.h and drivers/cli.h (PROG defined). Exit statuses: 0 done, 1 run error
   (message printed), 2 bad command line, 128 + N stopped by signal N. */
#ifndef IOUPOS_DRIVERS_TRAIN_CLI_H
#define IOUPOS_DRIVERS_TRAIN_CLI_H

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef IOUPOS_WITH_MPI
#include <mpi.h>
#endif

#ifndef IOUPOS_GIT_COMMIT
#define IOUPOS_GIT_COMMIT "unknown" /* the Makefile passes -DIOUPOS_GIT_COMMIT="<hash>[+dirty]" */
#endif

#define TRAIN_MAX_THREADS 1024

static int train_rank, train_ranks = 1; /* this process, the job's processes (train_comm_init) */

/* "PROG: <message> (see --help)" on stderr, exit 2 */
static void train_usage_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2), noreturn))
#endif
    ;
static void train_usage_error(const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, PROG ": ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, " (see --help)\n");
  exit(2);
}

/* The stage widths C, 2C, 4C, 8C must be divisible by the stages' heads; then the library's
   own check of the encoder configuration. */
static void train_check_encoder(const ioupos_swin_config *enc) {
  const int *h = enc->num_heads, C = enc->embed_dim;
  int s;
  for (s = 0; s < 4; ++s)
    if ((C << s) % h[s] != 0)
      train_usage_error("--embedding_size %d: the stages' %d, %d, %d, %d attention heads must "
                        "divide their widths C, 2C, 4C, 8C (e.g. C a multiple of 3: 6, 24, 48)",
                        C, h[0], h[1], h[2], h[3]);
  if (ioupos_swin_config_check(enc) != IOUPOS_OK)
    train_usage_error("--embedding_size %d: %s", enc->embed_dim, cli_flags(ioupos_failure_reason()));
}

/* ---- the resolved flags as one JSON object --------------------------------------------------- */

typedef struct train_json {
  char *s;
  size_t n, cap;
} train_json;

static void train_put(train_json *j, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void train_put(train_json *j, const char *fmt, ...) {
  va_list ap;
  int m;
  for (;;) {
    va_start(ap, fmt);
    m = vsnprintf(j->s ? j->s + j->n : NULL, j->s ? j->cap - j->n : 0, fmt, ap);
    va_end(ap);
    if (m < 0) abort();
    if (j->s && j->n + (size_t)m < j->cap) break;
    j->cap = 2 * (j->n + (size_t)m + 256);
    j->s = (char *)realloc(j->s, j->cap);
    if (!j->s) {
      fprintf(stderr, PROG ": out of memory\n");
      exit(1);
    }
  }
  j->n += (size_t)m;
}

static void train_key(train_json *j, const char *key) {
  train_put(j, "%s\"%s\": ", j->n > 1 ? ", " : "", key);
}

CLI_DEF void train_jstr(train_json *j, const char *key, const char *v) {
  const unsigned char *p;
  train_key(j, key);
  if (!v) {
    train_put(j, "null");
    return;
  }
  train_put(j, "\"");
  for (p = (const unsigned char *)v; *p; ++p) {
    if (*p == '"' || *p == '\\') train_put(j, "\\%c", *p);
    else if (*p < 0x20) train_put(j, "\\u%04x", *p);
    else train_put(j, "%c", *p);
  }
  train_put(j, "\"");
}

CLI_DEF void train_jint(train_json *j, const char *key, long long v) {
  train_key(j, key);
  train_put(j, "%lld", v);
}

CLI_DEF void train_ju64(train_json *j, const char *key, uint64_t v) {
  train_key(j, key);
  train_put(j, "%llu", (unsigned long long)v);
}

/* The shortest of %.15g..%.17g that reads back as v. */
CLI_DEF void train_jnum(train_json *j, const char *key, double v) {
  char buf[40];
  int p;
  for (p = 15; p <= 17; ++p) {
    snprintf(buf, sizeof buf, "%.*g", p, v);
    if (strtod(buf, NULL) == v) break;
  }
  train_key(j, key);
  train_put(j, "%s", buf);
}

/* A float field: the shortest of %.6g..%.9g that reads back as v (0.1f is 0.1, not
   0.100000001). */
CLI_DEF void train_jflt(train_json *j, const char *key, float v) {
  char buf[40];
  int p;
  for (p = 6; p <= 9; ++p) {
    snprintf(buf, sizeof buf, "%.*g", p, (double)v);
    if ((float)strtod(buf, NULL) == v) break;
  }
  train_key(j, key);
  train_put(j, "%s", buf);
}

CLI_DEF void train_jpair(train_json *j, const char *key, const int v[2]) {
  train_key(j, key);
  train_put(j, "[%d, %d]", v[0], v[1]);
}

CLI_DEF void train_jbool(train_json *j, const char *key, int v) {
  train_key(j, key);
  train_put(j, v ? "true" : "false");
}

/* ---- threads, the log, signals ---------------------------------------------------------------- */

/* --threads N (0: OpenMP's default) applied; returns the count the run uses (for the JSON). */
static int train_threads(int threads) {
#ifdef _OPENMP
  if (threads > 0) omp_set_num_threads(threads);
  return threads > 0 ? threads : omp_get_max_threads();
#else
  if (threads > 0)
    fprintf(stderr, PROG ": note: --threads %d ignored (built without OpenMP: one thread)\n",
            threads);
  return 1;
#endif
}

/* the library's console lines, on stderr */
static void train_log(void *ctx, const char *line) {
  size_t n;
  (void)ctx;
  line = cli_flags(line); /* the library's `field` names as our --flags */
  n = strlen(line);
  fprintf(stderr, "%s%s", line, n && line[n - 1] == '\n' ? "" : "\n");
  fflush(stderr);
}

/* The signal that asked the run to stop (0: none); the library reads it through its options'
   stop (a volatile int *: sig_atomic_t is int on the POSIX platforms ioupos supports, which the
   assignment in train_catch_signals checks at compile time). */
static volatile sig_atomic_t train_stop_signal;
static char train_stop_msg[320];
static size_t train_stop_len;

static void train_on_signal(int sig) {
  ssize_t w;
  train_stop_signal = sig;
  w = write(2, train_stop_msg, train_stop_len); /* async-signal-safe, unlike stdio */
  (void)w;
}

/* SIGINT and SIGTERM set train_stop_signal once and print "stopping <what> and saving the
   state"; the handler then resets itself (SA_RESETHAND), so a second signal ends the program. A
   SIGINT ignored at start (a background job of a non-interactive shell) stays ignored, as the
   convention for such jobs is. Returns the flag for the library's options. */
static volatile int *train_catch_signals(const char *what) {
  static const int sigs[2] = {SIGINT, SIGTERM};
  volatile int *flag = &train_stop_signal; /* compiles only where sig_atomic_t is int */
  int k, n;
  n = snprintf(train_stop_msg, sizeof train_stop_msg,
               "\n" PROG ": stopping %s and saving the state (--resume continues it; a second "
               "signal quits at once)\n", what);
  train_stop_len = n < 0 ? 0 : (size_t)n < sizeof train_stop_msg ? (size_t)n
                                                                  : sizeof train_stop_msg - 1;
  for (k = 0; k < 2; ++k) {
    struct sigaction sa, old;
    if (sigaction(sigs[k], NULL, &old) == 0 && sigs[k] == SIGINT && old.sa_handler == SIG_IGN)
      continue;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = train_on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | SA_RESETHAND;
    sigaction(sigs[k], &sa, NULL);
  }
  return flag;
}

/* A run's exit status: 1 with the library's reason printed when rc is an error, else 128 + N
   when signal N stopped it, else 0. */
static int train_exit_status(int rc) {
  if (rc != IOUPOS_OK) {
    const char *why = ioupos_failure_reason();
    char who[48] = "";
    if (train_ranks > 1) snprintf(who, sizeof who, " (rank %d of %d)", train_rank, train_ranks);
    fprintf(stderr, PROG ": error%s: %s\n", who,
            why && *why ? cli_flags(why) : ioupos_status_name(rc));
    return 1;
  }
  return train_stop_signal ? 128 + (int)train_stop_signal : 0;
}

/* ---- more than one process (data parallel) ---------------------------------------------------- */

/* The processes of this job as the launcher announces them: Open MPI's mpirun sets
   OMPI_COMM_WORLD_SIZE, MPICH / Hydra and Slurm's PMI set PMI_SIZE. 1 when neither is set. */
static int train_launched_ranks(void) {
  const char *v = getenv("OMPI_COMM_WORLD_SIZE");
  if (!v || !*v) v = getenv("PMI_SIZE");
  return v && atoi(v) > 1 ? atoi(v) : 1;
}

/* The communication table of the run: under mpirun with N > 1 processes, MPI's (section 16b),
   else the one-process table. MPI is initialised only under a launcher, so a plain run of an MPI
   build never touches MPI. A build without MPI launched as N > 1 processes exits: each process
   would run the whole job alone, writing the same run directory. */
static const ioupos_comm *train_comm_init(int *argc, char ***argv) {
  const ioupos_comm *c = ioupos_comm_single();
  int n = train_launched_ranks();
  if (n <= 1) return c;
#ifdef IOUPOS_WITH_MPI
  if (ioupos_comm_mpi_init(argc, argv, &c) != 0) {
    fprintf(stderr, PROG ": error: MPI: %s\n", ioupos_failure_reason());
    exit(1);
  }
  train_rank = c->rank;
  train_ranks = c->size;
  return c;
#else
  (void)argc, (void)argv;
  fprintf(stderr, PROG ": error: launched as %d processes (mpirun), but this build has no MPI "
                  "(make found no mpicc; Debian: apt-get install libopenmpi-dev, then make): "
                  "each would run the whole job\n", n);
  exit(1);
#endif
}

/* The backend of this process (cli_device_backend), and *dev: NULL, or the NCCL table the models
   then sum gradients on. One process: --device as always. Data parallel on CUDA: one GPU per
   process, the process's rank on its machine picking the GPU (--device cuda:N, one GPU for all,
   is refused); a machine with more processes than GPUs is an error naming both counts
   (--device cuda) or runs on the CPU with a note (auto). With NCCL in the build the gradients
   move between the GPUs through it, else through MPI via the host. */
static const ioupos_backend *train_backend(cli_device *d, const ioupos_comm *comm,
                                           const ioupos_comm **dev) {
  *dev = NULL;
#if defined(IOUPOS_WITH_MPI) && defined(IOUPOS_WITH_CUDA)
  if (comm->size > 1 && d->kind != 1) {
    const ioupos_backend *be;
    int lr = 0, ls = 1, ngpu;
    if (d->kind == 2 && strcmp(d->spec, "cuda") != 0) {
      fprintf(stderr, PROG ": error (rank %d of %d): --device %s: %d processes would share one "
                      "GPU; use --device cuda (each process takes the GPU of its rank on its "
                      "machine)\n", comm->rank, comm->size, d->spec, comm->size);
      return NULL;
    }
    if (ioupos_comm_mpi_local(&lr, &ls) != 0) {
      fprintf(stderr, PROG ": error: MPI: %s\n", ioupos_failure_reason());
      return NULL;
    }
    ngpu = ioupos_cuda_device_count();
    if (ngpu < ls) {
      char why[512];
      snprintf(why, sizeof why, "%d processes on this machine but %d usable GPU%s%s%s (one "
               "process per GPU)", ls, ngpu, ngpu == 1 ? "" : "s", ngpu ? "" : ": ",
               ngpu ? "" : ioupos_failure_reason());
      if (d->kind == 2) {
        fprintf(stderr, PROG ": error (rank %d of %d): --device cuda: %s\n", comm->rank,
                comm->size, why);
        return NULL;
      }
      if (comm->rank == 0)
        fprintf(stderr, PROG ": note: --device auto: %s; running on the CPU\n", why);
      return ioupos_backend_cpu();
    }
    d->index = lr;
    d->kind = 2;
    if (!(be = cli_device_backend(d))) return NULL;
#ifdef IOUPOS_WITH_NCCL
    if (ioupos_comm_nccl_init(comm, dev) != 0) {
      fprintf(stderr, PROG ": error (rank %d of %d): NCCL: %s\n", comm->rank, comm->size,
              ioupos_failure_reason());
      return NULL;
    }
#endif
    return be;
  }
#else
  (void)comm;
#endif
  return cli_device_backend(d);
}

/* The end of a run of the job's processes: MPI finalised. An error ends the whole job
   (MPI_Abort): the library stops every rank together where it can (a failed set-up, an epoch's
   files), but a rank that fails alone inside a step leaves the others waiting in the step's
   collectives. */
static int train_comm_end(int status) {
#ifdef IOUPOS_WITH_MPI
  if (train_ranks > 1) {
    if (status == 1) {
      fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
#ifdef IOUPOS_WITH_NCCL
    ioupos_comm_nccl_finalize();
#endif
    ioupos_comm_mpi_finalize();
  }
#endif
  return status;
}

#endif /* IOUPOS_DRIVERS_TRAIN_CLI_H */
