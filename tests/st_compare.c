/* tests/st_compare.c — compare two safetensors files tensor by tensor (tests/test_parallel.sh:
   the weights of an N-process run against the one-process run's).

   usage: st_compare GOT EXPECTED TOL
   Both files must hold the same tensor names with the same dtypes and shapes. Integer tensors
   (I64: batch norm's num_batches_tracked, AdamW's steps, a state's counters) must be equal, but
   for a state's train.monitor (doubles in an I64 tensor: compared as below); every float element
   must satisfy |got - expected| <= TOL * max(max|expected of its tensor|, 1e-3), the scale of
   each tensor being its own since weights, biases and optimiser moments differ by orders of
   magnitude. The floor 1e-3: some tensors are rounding noise around 0 (the SimSiam predictor's
   batch-norm running mean follows a layer whose input is batch-normalised, so its values are
   ~1e-9 with no significant digit); they are compared at the scale of the values beside them. NaN fails. Prints one line: tensors, elements, how many are bit-identical,
   the worst error as a fraction of TOL and where. Exit 0 within tolerance, 1 otherwise, 2 on a
   usage error. */
#include "ioupos.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  ioupos_st_file a, b;
  double tol, worst = 0.0;
  long elems = 0, same = 0, bad = 0;
  const char *worst_name = "";
  int i, rc = 0;
  if (argc != 4 || (tol = atof(argv[3])) <= 0.0) {
    fprintf(stderr, "usage: st_compare GOT EXPECTED TOL\n");
    return 2;
  }
  if (ioupos_safetensors_read(argv[1], &a) != IOUPOS_OK ||
      ioupos_safetensors_read(argv[2], &b) != IOUPOS_OK) {
    fprintf(stderr, "st_compare: %s\n", ioupos_failure_reason());
    return 1;
  }
  if (a.n != b.n) {
    printf("st_compare: %d tensors, expected %d\n", a.n, b.n);
    rc = 1;
  }
  for (i = 0; rc == 0 && i < a.n; ++i) {
    const ioupos_st_tensor *x = &a.tensors[i], *y = ioupos_safetensors_find(&b, x->name);
    size_t n, k;
    float *fx, *fy;
    double scale = 0.0;
    if (!y || y->dtype != x->dtype || y->nbytes != x->nbytes || y->ndim != x->ndim ||
        memcmp(y->shape, x->shape, sizeof(int64_t) * (size_t)x->ndim) != 0) {
      printf("st_compare: %s: missing from %s or another dtype / shape\n", x->name, argv[2]);
      rc = 1;
      break;
    }
    if (strcmp(x->name, "train.monitor") == 0 && x->nbytes % 8 == 0) {
      /* a state's monitors: doubles (their bits in an I64 tensor), within the tolerance */
      for (n = 0; n < x->nbytes / 8; ++n) {
        double u, v;
        memcpy(&u, (const char *)x->data + 8 * n, 8);
        memcpy(&v, (const char *)y->data + 8 * n, 8);
        if (!(fabs(u - v) <= tol * (fabs(v) > 1e-3 ? fabs(v) : 1e-3))) {
          printf("st_compare: train.monitor[%zu]: %.17g, expected %.17g\n", n, u, v);
          rc = 1;
        }
      }
      continue;
    }
    if (x->dtype != IOUPOS_ST_F32) { /* integers: equal */
      if (memcmp(x->data, y->data, x->nbytes) != 0) {
        printf("st_compare: %s: the integers differ\n", x->name);
        rc = 1;
      }
      continue;
    }
    n = x->nbytes / 4;
    fx = (float *)malloc((n + 1) * sizeof(float));
    fy = (float *)malloc((n + 1) * sizeof(float));
    if (!fx || !fy || ioupos_st_to_f32(x, fx) != 0 || ioupos_st_to_f32(y, fy) != 0) {
      printf("st_compare: %s: cannot read\n", x->name);
      rc = 1;
    }
    for (k = 0; rc == 0 && k < n; ++k)
      if (fabs(fy[k]) > scale) scale = fabs(fy[k]);
    for (k = 0; rc == 0 && k < n; ++k) {
      double d = fabs((double)fx[k] - fy[k]), r = d / (tol * (scale > 1e-3 ? scale : 1e-3));
      ++elems;
      same += memcmp(&fx[k], &fy[k], 4) == 0;
      if (!(r <= 1.0)) ++bad; /* NaN too */
      if (!(r <= worst)) {
        worst = isnan(r) ? INFINITY : r;
        worst_name = x->name;
      }
    }
    free(fx);
    free(fy);
  }
  if (rc == 0)
    printf("st_compare: %d tensors, %ld floats, %ld bit-identical; worst %.3g of the tolerance "
           "(%s); %ld out of tolerance\n", a.n, elems, same, worst, worst_name, bad);
  ioupos_safetensors_free(&a);
  ioupos_safetensors_free(&b);
  return rc || bad ? 1 : 0;
}
