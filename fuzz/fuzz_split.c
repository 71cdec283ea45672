/* fuzz/fuzz_split.c — libFuzzer target for the split-file parser (ioupos_split_parse).

   Built two ways:
     clang -g -O1 -fsanitize=fuzzer,address,undefined -I. -I/usr/include/stb fuzz/fuzz_split.c
                       libFuzzer; seeds in fuzz/corpus/split
     -DIOUPOS_FUZZ_REPLAY with any compiler (plus ASan/UBSan): a standalone main feeds every file
                       named on the command line to the target once */
#define IOUPOS_IMPLEMENTATION
#include "ioupos.h"

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

#ifdef IOUPOS_FUZZ_REPLAY
int main(int argc, char **argv) {
  int i;
  for (i = 1; i < argc; ++i) {
    void *data;
    size_t size;
    if (ioupos_read_file(argv[i], &data, &size) != IOUPOS_OK) {
      fprintf(stderr, "%s\n", ioupos_failure_reason());
      return 1;
    }
    LLVMFuzzerTestOneInput((const uint8_t *)data, size);
    free(data);
  }
  printf("fuzz_split replay: %d inputs, no crash\n", argc - 1);
  return 0;
}
#endif
