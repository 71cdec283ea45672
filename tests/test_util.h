/* tests/test_util.h — the checks every C test uses. A test program counts its checks, prints
   each failure with its values, ends with "N checks passed, N failed" and exits 1 on any failure. */
#ifndef IOUPOS_TEST_UTIL_H
#define IOUPOS_TEST_UTIL_H
#include <stdio.h>
#include <stdlib.h>

static int tu_passed, tu_failed;

#define CHECK(cond, ...)                                                     \
  do {                                                                       \
    if (cond) {                                                              \
      ++tu_passed;                                                           \
    } else {                                                                 \
      ++tu_failed;                                                           \
      printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                 \
      printf(__VA_ARGS__);                                                   \
      printf("\n");                                                          \
    }                                                                        \
  } while (0)

static inline long tu_env_long(const char *name, long dflt) {
  const char *v = getenv(name);
  char *end;
  long x;
  if (!v || !*v) return dflt;
  x = strtol(v, &end, 10);
  return (*end || x <= 0) ? dflt : x;
}

/* dir/leaf in one of four rotating buffers: a result stays valid for the next three calls */
static inline const char *tu_path(const char *dir, const char *leaf) {
  static char buf[4][1024];
  static int k;
  k = (k + 1) % 4;
  snprintf(buf[k], sizeof buf[k], "%s/%s", dir, leaf);
  return buf[k];
}

static inline int tu_finish(const char *name) {
  printf("%s: %d checks passed, %d failed\n", name, tu_passed, tu_failed);
  return tu_failed ? 1 : 0;
}
#endif
