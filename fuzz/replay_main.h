/* fuzz/replay_main.h — the standalone main the fuzz targets share (fuzz/fuzz_*.c).

   Each target defines LLVMFuzzerTestOneInput, then FUZZ_TARGET (its name, a string literal),
   then includes this file last. A target is built two ways:
     make fuzz         clang -g -O1 -fsanitize=fuzzer,address,undefined: libFuzzer supplies the
                       main and runs the target for FUZZ_SECONDS on a copy of fuzz/corpus/NAME;
                       this file adds nothing
     make fuzz-replay  any compiler with -DIOUPOS_FUZZ_REPLAY and ASan/UBSan, linked with the
                       implementation compiled once for all targets (build/fuzz/ioupos.o, the
                       same flags): the main below reads every file named on the command line
                       with ioupos_read_file and feeds it to the target once (exit 1 if a file
                       cannot be read) */
#ifdef IOUPOS_FUZZ_REPLAY
#include <stdio.h>
#include <stdlib.h>
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
  printf(FUZZ_TARGET " replay: %d inputs, no crash\n", argc - 1);
  return 0;
}
#endif
