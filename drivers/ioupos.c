/* drivers/ioupos.c — the library's implementation, compiled once into build/ioupos.o (SIMD
   kernels, OpenMP) and linked into every command: `make` then compiles the implementation once
   instead of once per command. The commands include ioupos.h for its API only. */
#define IOUPOS_IMPLEMENTATION
#include "ioupos.h"
