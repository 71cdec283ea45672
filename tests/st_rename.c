/* tests/st_rename.c — rewrite a safetensors file with PREFIX before every tensor name, and
   optionally one extra F32 tensor, to make the checkpoint layouts ioupos-embed must read from
   one fixture (tests/test_embed.sh):
     st_rename IN OUT swinViT.                             a SwinUNETR-style state dict
     st_rename IN OUT backbone. projection_head.layers.0.weight
                                                           one of our checkpoints: the encoder
                                                           under backbone., a head beside it
   PREFIX may also be OLD=NEW: only the tensors whose names start with OLD are kept, with OLD
   replaced by NEW (tests/test_finetune.sh: "backbone.=swinViT." makes a MONAI state dict of
   an ioupos-simsiam checkpoint's encoder, "backbone.=" bare SwinTransformer names).
   Metadata is copied. Exit status 0, or 1 with the library's reason. */
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
  const char *eq, *old = "", *pre;
  size_t lold = 0;
  int i, n, k, rc;
  if (argc != 4 && argc != 5) {
    fprintf(stderr, "usage: st_rename IN OUT PREFIX [EXTRA_TENSOR_NAME]\n");
    return 2;
  }
  if (ioupos_safetensors_read(argv[1], &f) != IOUPOS_OK) {
    fprintf(stderr, "st_rename: %s\n", ioupos_failure_reason());
    return 1;
  }
  pre = argv[3];
  if ((eq = strchr(argv[3], '=')) != NULL) {
    old = argv[3];
    lold = (size_t)(eq - argv[3]);
    pre = eq + 1;
  }
  n = f.n + (argc == 5);
  cap = strlen(argv[3]) + 512;
  ts = (ioupos_st_tensor *)calloc((size_t)n, sizeof *ts);
  names = (char *)calloc((size_t)f.n, cap);
  if (!ts || !names) {
    fprintf(stderr, "st_rename: out of memory\n");
    return 1;
  }
  for (i = k = 0; i < f.n; ++i) {
    if (strncmp(f.tensors[i].name, old, lold) != 0) continue;
    ts[k] = f.tensors[i]; /* little-endian bytes: host order on the machines we test on */
    snprintf(names + (size_t)k * cap, cap, "%s%s", pre, f.tensors[i].name + lold);
    ts[k].name = names + (size_t)k * cap;
    ++k;
  }
  if (argc == 5) {
    ts[k].name = argv[4];
    ts[k].dtype = IOUPOS_ST_F32;
    ts[k].ndim = 2;
    ts[k].shape[0] = 2;
    ts[k].shape[1] = 3;
    ts[k].data = extra;
    ts[k].nbytes = sizeof extra;
    ++k;
  }
  n = k;
  rc = ioupos_safetensors_write(argv[2], n, ts, f.n_metadata, f.metadata);
  if (rc != IOUPOS_OK) fprintf(stderr, "st_rename: %s\n", ioupos_failure_reason());
  free(ts);
  free(names);
  ioupos_safetensors_free(&f);
  return rc == IOUPOS_OK ? 0 : 1;
}
