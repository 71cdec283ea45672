/* fuzz/fuzz_split.c — libFuzzer target for the split-file parser (ioupos_split_parse). Seeds:
   fuzz/corpus/split. How it is built and replayed: fuzz/replay_main.h. */
#ifndef IOUPOS_FUZZ_REPLAY /* the replay build links the implementation (build/fuzz/ioupos.o) */
#define IOUPOS_IMPLEMENTATION
#endif
#include "ioupos.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ioupos_split s;
  int k, c;
  if (ioupos_split_parse((const char *)data, size, "fuzz.json", &s) != IOUPOS_OK) {
    if (s.n_sets != 0 || s.sets != NULL || !strstr(ioupos_failure_reason(), "fuzz.json")) __builtin_trap();
    return 0;
  }
  if (s.n_sets < 1) __builtin_trap();
  for (k = 0; k < s.n_sets; ++k) {
    if (!s.sets[k].name[0] || strlen(s.sets[k].name) > 64) __builtin_trap();
    for (c = 0; c < s.sets[k].n; ++c) {
      const char *n = s.sets[k].cases[c];
      if (!n[0] || strlen(n) > 255 || strchr(n, '/') || ioupos_split_find(&s, n) != k) __builtin_trap();
    }
  }
  ioupos_split_free(&s);
  return 0;
}

#define FUZZ_TARGET "fuzz_split"
#include "replay_main.h"
