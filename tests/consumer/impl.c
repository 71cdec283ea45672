/* ioupos's implementation, without a second copy of stb. */
#define IOUPOS_IMPLEMENTATION
#define IOUPOS_NO_STB_IMPLEMENTATION
#include "ioupos.h"
