/* tests/st_rename.c — rewrite a safetensors file with PREFIX before every tensor name, and
   optionally one extra F32 tensor, to make the checkpoint layouts ioupos-embed must read from
   one fixture (tests/test_embed.sh):
     st_rename IN OUT swinViT.                             a SwinUNETR-style state dict
     st_rename IN OUT backbone. projection_head.layers.0.weight
                                                           one of our checkpoints: the encoder
                                                           under backbone., a head beside it
   Metadata is copied. Exit status 0, or 1 with the library's reason. */
#define IOUPOS_IMPLEMENTATION
#include "ioupos.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  ioupos_st_file f;
  ioupos_st_tensor *ts;
  char *names;
  size_t cap;
  float extra[6] = {0.5f, -1.0f, 2.0f, 0.25f, 0.0f, 3.0f};
  int i, n, rc;
  if (argc != 4 && argc != 5) {
    fprintf(stderr, "usage: st_rename IN OUT PREFIX [EXTRA_TENSOR_NAME]\n");
    return 2;
  }
  if (ioupos_safetensors_read(argv[1], &f) != IOUPOS_OK) {
    fprintf(stderr, "st_rename: %s\n", ioupos_failure_reason());
    return 1;
  }
  n = f.n + (argc == 5);
  cap = strlen(argv[3]) + 512;
  ts = (ioupos_st_tensor *)calloc((size_t)n, sizeof *ts);
  names = (char *)calloc((size_t)f.n, cap);
  if (!ts || !names) {
    fprintf(stderr, "st_rename: out of memory\n");
    return 1;
  }
  for (i = 0; i < f.n; ++i) {
    ts[i] = f.tensors[i]; /* little-endian bytes: host order on the machines we test on */
    snprintf(names + (size_t)i * cap, cap, "%s%s", argv[3], f.tensors[i].name);
    ts[i].name = names + (size_t)i * cap;
  }
  if (argc == 5) {
    ts[f.n].name = argv[4];
    ts[f.n].dtype = IOUPOS_ST_F32;
    ts[f.n].ndim = 2;
    ts[f.n].shape[0] = 2;
    ts[f.n].shape[1] = 3;
    ts[f.n].data = extra;
    ts[f.n].nbytes = sizeof extra;
  }
  rc = ioupos_safetensors_write(argv[2], n, ts, f.n_metadata, f.metadata);
  if (rc != IOUPOS_OK) fprintf(stderr, "st_rename: %s\n", ioupos_failure_reason());
  free(ts);
  free(names);
  ioupos_safetensors_free(&f);
  return rc == IOUPOS_OK ? 0 : 1;
}
