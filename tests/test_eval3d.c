/* tests/test_eval3d.c — section 22's 3D evaluation against MONAI 1.6.1 (fixtures written by
   tests/reference/eval3d_fixture.py into tests/fixtures/eval3d: a 3D SwinUNETR state dict, two
   volumes as ioupos-prep --spatial_dims 3 writes them, MONAI's sliding-window logits and argmax).

     1. The MONAI 3D state dict loads whole (ioupos_swinunetr_load: 3D conv kernels, window 7
        relative-position indices compared with ours).
     2. 3D sliding window (ioupos_seg_predict_volume) on case_a (36 x 34 x 66, roi 32 x 32 x 64,
        overlap 0.25: 8 overlapping windows) in MONAI's [X][Y][Z] order: the logits against
        sliding_window_inference's, |ours - MONAI| <= 1e-4 + 1e-4 |MONAI| (test_model's SwinUNETR
        logits tolerance: ~30 float32 layers; MONAI's own float32 is within 1.4e-5 of float64
        here); the argmax equal to MONAI's at every voxel but the fixture's near ties (two best
        float64 logits within 1e-4); sw_batch_size 1 (a model call per window) bit-identical to 3
        (a call of 3 windows, run as chunks of IOUPOS_SEG_MODEL_BATCH).
     3. Sets of volumes (ioupos_seg_set_scan_volumes): the fixture's val folder, and the errors:
        empty folder, image without label, label without image, two files of one case.
     4. ioupos_swinunetr_evaluate on the set: per-case DSC = DSC(our argmax, label) and within
        the near ties' reach of MONAI's (numpy's DSC of MONAI's argmax; ioupos_dsc_case_compute
        of MONAI's argmax equals it to 1e-12); the predictions <case>.nii.gz: the input's shape
        and affine, uint8 on disk, equal to MONAI's argmax off the near ties.
     5. Bad inputs: a label of another shape, a truncated .nii.gz, a label value that is no id,
        an id >= K, a 2D model on volumes: each an error naming the file, and no prediction file
        left behind (the first case's, written before the second failed, is removed).
   Needs gzip on the PATH (the state dict is committed gzipped: 9 MB of int64 indices). Prints
   "test_eval3d: N checks passed, M failed"; exits 1 on any failure. Run from the repository
   root (fixture paths are relative).
   test_eval3d --check-prediction FIXDIR CASE PRED INPUT: the checks of part 4 on one prediction
   file PRED written by ioupos-finetune (tests/test_finetune3d.sh): INPUT's shape and affine,
   uint8 on disk, MONAI's argmax FIXDIR/CASE_argmax.npy off the near ties. */
#include "ioupos.h"
#include "tests/npy.h"
#include "tests/test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIX "tests/fixtures/eval3d/"
#define K 3

static char g_tmp[512];
static const int g_roi[3] = {32, 32, 64};

static int has(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

static int exists(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0;
}

static int copy_file(const char *from, const char *to) {
  void *d;
  size_t n;
  int rc = ioupos_read_file(from, &d, &n);
  if (rc) return rc;
  rc = ioupos_write_file_atomic(to, d, n);
  free(d);
  return rc;
}

/* the volume's voxels in MONAI's [X][Y][Z] order (z fastest) */
static float *to_xyz(const ioupos_volume *v) {
  const int nx = v->dim[0], ny = v->dim[1], nz = v->dim[2];
  float *o = (float *)malloc(sizeof(float) * (size_t)nx * ny * nz);
  int i, j, k;
  for (k = 0; k < nz; ++k)
    for (j = 0; j < ny; ++j)
      for (i = 0; i < nx; ++i)
        o[((size_t)i * ny + j) * nz + k] = v->data[((size_t)k * ny + j) * nx + i];
  return o;
}

/* is flat index q one of the near ties? */
static int is_tie(const tu_npy *ties, long q) {
  long t;
  for (t = 0; t < ties->count; ++t)
    if ((long)ties->data[t] == q) return 1;
  return 0;
}

static int load_model(ioupos_swinunetr_config *cfg, ioupos_swinunetr *m, ioupos_params *p,
                      const char *weights) {
  ioupos_swinunetr_load_info li;
  int rc;
  ioupos_swinunetr_config_default(cfg, 3);
  cfg->enc.embed_dim = 3;
  cfg->out_channels = K;
  memset(p, 0, sizeof *p);
  memset(m, 0, sizeof *m);
  rc = ioupos_swinunetr_init(m, cfg, &p->table, "");
  if (!rc) rc = ioupos_params_alloc(p, ioupos_backend_cpu(), 0);
  if (!rc) rc = ioupos_swin_encoder_buffers(&m->enc, p);
  if (!rc) rc = ioupos_swinunetr_load(m, p, weights, &li);
  CHECK(rc == 0, "the MONAI 3D SwinUNETR state dict loads: %s", ioupos_failure_reason());
  if (rc) return rc;
  CHECK(li.whole == 1 && li.n_loaded == p->table.n && li.n_loaded == 159 && li.n_ignored == 0,
        "loaded whole: %d tensors of %d (159 in MONAI's state dict), %d ignored", li.n_loaded,
        p->table.n, li.n_ignored);
  return 0;
}

/* 2. logits and argmax of case_a against MONAI */
static void test_logits(const ioupos_swinunetr_config *cfg, ioupos_params *p) {
  ioupos_volume v;
  ioupos_seg_predictor pr;
  tu_npy ref, am, ties;
  float *xyz = NULL, *lg = NULL, *lg2 = NULL;
  int *pred = NULL, shape[3], rc, k, sws[1] = {1};
  long n, q, off = 0, on = 0;
  printf("3D sliding window, case_a:\n");
  memset(&v, 0, sizeof v);
  rc = ioupos_nifti_read(FIX "val/case_a.nii.gz", &v);
  CHECK(rc == 0, "read case_a: %s", ioupos_failure_reason());
  if (rc) return;
  if (tu_npy_load(FIX "case_a_logits.npy", &ref) || tu_npy_load(FIX "case_a_argmax.npy", &am) ||
      tu_npy_load(FIX "case_a_ties.npy", &ties)) {
    CHECK(0, "fixture files");
    ioupos_volume_free(&v);
    return;
  }
  for (k = 0; k < 3; ++k) shape[k] = v.dim[k];
  n = (long)shape[0] * shape[1] * shape[2];
  CHECK(ref.ndim == 4 && ref.shape[0] == K && ref.shape[1] == shape[0] &&
            ref.shape[2] == shape[1] && ref.shape[3] == shape[2],
        "MONAI's logits are [K][X][Y][Z] = [%ld][%ld][%ld][%ld] for the volume's dim %d x %d x %d",
        ref.shape[0], ref.shape[1], ref.shape[2], ref.shape[3], shape[0], shape[1], shape[2]);
  xyz = to_xyz(&v);
  lg = (float *)malloc(sizeof(float) * (size_t)n * K);
  lg2 = (float *)malloc(sizeof(float) * (size_t)n * K);
  pred = (int *)malloc(sizeof(int) * (size_t)n);
  rc = ioupos_seg_predictor_init(&pr, cfg, p, g_roi, 0.25, 3);
  if (!rc) rc = ioupos_seg_predict_volume(&pr, lg, xyz, shape);
  ioupos_seg_predictor_free(&pr);
  CHECK(rc == 0, "predict: %s", ioupos_failure_reason());
  if (rc == 0 && ref.count == n * K) {
    CHECK(tu_compare("case_a logits vs MONAI", lg, ref.data, n * K, 1e-4, 1e-4) == 0,
          "logits within 1e-4 + 1e-4 |MONAI|");
    rc = ioupos_argmax_classes(pred, lg, 1, K, n);
    for (q = 0; q < n; ++q)
      if (pred[q] != (int)am.data[q]) {
        if (is_tie(&ties, q)) ++on;
        else ++off;
      }
    printf("  argmax: %ld voxels, %ld near ties, %ld differ from MONAI off them, %ld on them\n", n,
           ties.count, off, on);
    CHECK(rc == 0 && off == 0, "argmax equals MONAI's off the near ties (%ld differ)", off);
  }
  for (k = 0; k < 1; ++k) {
    rc = ioupos_seg_predictor_init(&pr, cfg, p, g_roi, 0.25, sws[k]);
    if (!rc) rc = ioupos_seg_predict_volume(&pr, lg2, xyz, shape);
    ioupos_seg_predictor_free(&pr);
    CHECK(rc == 0 && memcmp(lg, lg2, sizeof(float) * (size_t)n * K) == 0,
          "sw_batch_size %d gives the logits of sw_batch_size 3 bit for bit (%s)", sws[k],
          rc ? ioupos_failure_reason() : "ok");
  }
  /* the 2D entry point refuses a 3D predictor, and a bad 3D window is named */
  rc = ioupos_seg_predictor_init(&pr, cfg, p, g_roi, 0.25, 3);
  if (!rc) rc = ioupos_seg_predict(&pr, lg2, xyz, shape[0], shape[1]);
  ioupos_seg_predictor_free(&pr);
  CHECK(rc == IOUPOS_EINVAL && has(ioupos_failure_reason(), "3D"),
        "ioupos_seg_predict on a 3D model is refused: %s", ioupos_failure_reason());
  {
    const int bad[3] = {32, 32, 48};
    rc = ioupos_seg_predictor_init(&pr, cfg, p, bad, 0.25, 3);
    CHECK(rc == IOUPOS_EINVAL && has(ioupos_failure_reason(), "32 x 32 x 48"),
          "a 32 x 32 x 48 window is refused: %s", ioupos_failure_reason());
  }
  free(xyz);
  free(lg);
  free(lg2);
  free(pred);
  tu_npy_free(&ref);
  tu_npy_free(&am);
  tu_npy_free(&ties);
  ioupos_volume_free(&v);
}

/* 3. scanning folders of volumes */
static void test_scan(void) {
  ioupos_seg_set s;
  char d[600], l[700], f[800];
  int rc;
  printf("sets of volumes:\n");
  rc = ioupos_seg_set_scan_volumes(&s, FIX "val");
  CHECK(rc == 0 && s.volumes == 1 && s.n_cases == 2 && s.ds.n == 2 &&
            !strcmp(s.cases[0].name, "case_a") && !strcmp(s.cases[1].name, "case_b") &&
            s.cases[1].n == 1 && s.cases[1].slices[0] == 1 &&
            !strcmp(s.ds.images[1], FIX "val/case_b.nii.gz") &&
            !strcmp(s.ds.labels[1], FIX "val/labels/case_b.nii.gz"),
        "the fixture's val folder: 2 cases, one volume each (%s)",
        rc ? ioupos_failure_reason() : "ok");
  ioupos_seg_set_free(&s);
  snprintf(d, sizeof d, "%s/scan", g_tmp);
  snprintf(l, sizeof l, "%s/labels", d);
  mkdir(d, 0755);
  mkdir(l, 0755);
  rc = ioupos_seg_set_scan_volumes(&s, d);
  CHECK(rc == IOUPOS_EINVAL && has(ioupos_failure_reason(), d) &&
            has(ioupos_failure_reason(), "no volumes") && s.n_cases == 0,
        "an empty folder is refused, named: %s", ioupos_failure_reason());
  copy_file(FIX "val/case_a.nii.gz", tu_path(d, "x1.nii.gz"));
  copy_file(FIX "val/case_a.nii.gz", tu_path(d, ".hidden.nii.gz")); /* not a volume */
  rc = ioupos_seg_set_scan_volumes(&s, d);
  CHECK(rc == IOUPOS_EINVAL && has(ioupos_failure_reason(), "x1.nii.gz has no label"),
        "an image without its label is named: %s", ioupos_failure_reason());
  copy_file(FIX "val/labels/case_a.nii.gz", tu_path(l, "x1.nii"));
  copy_file(FIX "val/labels/case_a.nii.gz", tu_path(l, "x2.nii.gz"));
  rc = ioupos_seg_set_scan_volumes(&s, d);
  CHECK(rc == IOUPOS_EINVAL && has(ioupos_failure_reason(), "labels/x2.nii.gz has no image"),
        "a label without its image is named: %s", ioupos_failure_reason());
  snprintf(f, sizeof f, "%s/x2.nii.gz", l);
  remove(f);
  rc = ioupos_seg_set_scan_volumes(&s, d);
  CHECK(rc == 0 && s.n_cases == 1 && !strcmp(s.cases[0].name, "x1") &&
            has(s.ds.labels[0], "labels/x1.nii"),
        "pairing by case name (x1.nii.gz with labels/x1.nii), hidden files skipped (%s)",
        rc ? ioupos_failure_reason() : "ok");
  ioupos_seg_set_free(&s);
  copy_file(FIX "val/case_a.nii.gz", tu_path(d, "x1.nii"));
  rc = ioupos_seg_set_scan_volumes(&s, d);
  CHECK(rc == IOUPOS_EINVAL && has(ioupos_failure_reason(), "two volumes of case 'x1'"),
        "x1.nii and x1.nii.gz are refused: %s", ioupos_failure_reason());
}

/* a fresh folder <g_tmp>/<name> with labels/, the fixture's cases copied in */
static const char *make_set(const char *name) {
  static char d[600];
  char l[700];
  snprintf(d, sizeof d, "%s/%s", g_tmp, name);
  snprintf(l, sizeof l, "%s/labels", d);
  mkdir(d, 0755);
  mkdir(l, 0755);
  copy_file(FIX "val/case_a.nii.gz", tu_path(d, "case_a.nii.gz"));
  copy_file(FIX "val/case_b.nii.gz", tu_path(d, "case_b.nii.gz"));
  copy_file(FIX "val/labels/case_a.nii.gz", tu_path(l, "case_a.nii.gz"));
  copy_file(FIX "val/labels/case_b.nii.gz", tu_path(l, "case_b.nii.gz"));
  return d;
}

static void eval_opts(ioupos_seg_eval_opts *o, const char *predict_dir) {
  ioupos_seg_eval_opts_default(o);
  o->roi[0] = g_roi[0], o->roi[1] = g_roi[1], o->roi[2] = g_roi[2];
  o->overlap = 0.25;
  o->sw_batch_size = 3;
  o->predict_dir = predict_dir;
}

/* 4. the evaluation and its predictions */
static void test_evaluate(const ioupos_swinunetr_config *cfg, ioupos_params *p) {
  static const char *cases[2] = {"case_a", "case_b"};
  ioupos_seg_set s;
  ioupos_seg_eval_opts o;
  ioupos_seg_eval_result r;
  char pdir[600];
  int rc, c;
  printf("evaluation:\n");
  snprintf(pdir, sizeof pdir, "%s/pred", g_tmp);
  rc = ioupos_seg_set_scan_volumes(&s, FIX "val");
  CHECK(rc == 0, "scan: %s", ioupos_failure_reason());
  if (rc) return;
  eval_opts(&o, pdir);
  rc = ioupos_swinunetr_evaluate(cfg, p, &s, &o, &r);
  CHECK(rc == 0 && r.n_cases == 2, "evaluate: %s", rc ? ioupos_failure_reason() : "ok");
  for (c = 0; rc == 0 && c < 2; ++c) {
    char f[700];
    tu_npy am, dsc, ties;
    ioupos_volume in, pv, lb;
    ioupos_dsc_case mc, oc;
    int *mp, *tr, *op, k, ok = 1;
    long n, q, off = 0;
    void *raw;
    size_t rn;
    snprintf(f, sizeof f, FIX "%s_argmax.npy", cases[c]);
    tu_npy_load(f, &am);
    snprintf(f, sizeof f, FIX "%s_dsc.npy", cases[c]);
    tu_npy_load(f, &dsc);
    snprintf(f, sizeof f, FIX "%s_ties.npy", cases[c]);
    tu_npy_load(f, &ties);
    snprintf(f, sizeof f, FIX "val/%s.nii.gz", cases[c]);
    ioupos_nifti_read(f, &in);
    snprintf(f, sizeof f, FIX "val/labels/%s.nii.gz", cases[c]);
    ioupos_nifti_read(f, &lb);
    snprintf(f, sizeof f, "%s/%s.nii.gz", pdir, cases[c]);
    rc = ioupos_nifti_read(f, &pv);
    CHECK(rc == 0, "prediction %s: %s", f, rc ? ioupos_failure_reason() : "ok");
    if (rc) break;
    n = (long)in.dim[0] * in.dim[1] * in.dim[2];
    CHECK(pv.dim[0] == in.dim[0] && pv.dim[1] == in.dim[1] && pv.dim[2] == in.dim[2],
          "%s: the prediction is %d x %d x %d like the input", cases[c], pv.dim[0], pv.dim[1],
          pv.dim[2]);
    for (k = 0; k < 16; ++k) ok &= pv.affine[k / 4][k % 4] == in.affine[k / 4][k % 4];
    CHECK(ok && in.affine[0][1] != 0.0 && in.affine[0][0] < 0.0,
          "%s: the prediction has the input's (rotated, flipped) affine exactly", cases[c]);
    /* uint8 on disk: the file is byte for byte our uint8 encoding of the values it holds (its
       affine read back is the input's exactly, so the header is the same too) */
    rc = ioupos_read_file(f, &raw, &rn);
    if (rc == 0) {
      unsigned char *enc = NULL;
      size_t es = 0;
      rc = ioupos_nifti_encode(&pv, IOUPOS_NIFTI_UINT8, 1, &enc, &es);
      CHECK(rc == 0 && es == rn && memcmp(enc, raw, rn) == 0,
            "%s: the file is the uint8 .nii.gz of its values (%zu bytes)", cases[c], rn);
      free(enc);
      free(raw);
    }
    /* in MONAI's order: prediction vs MONAI argmax, off the near ties */
    {
      float *px = to_xyz(&pv), *lx = to_xyz(&lb);
      mp = (int *)malloc(sizeof(int) * (size_t)n);
      tr = (int *)malloc(sizeof(int) * (size_t)n);
      op = (int *)malloc(sizeof(int) * (size_t)n);
      for (q = 0; q < n; ++q) {
        mp[q] = (int)am.data[q];
        tr[q] = (int)lx[q];
        op[q] = (int)px[q];
        if (op[q] != mp[q] && !is_tie(&ties, q)) ++off;
      }
      free(px);
      free(lx);
    }
    CHECK(am.count == n && off == 0,
          "%s: the predicted volume equals MONAI's argmax off the %ld near ties (%ld differ)",
          cases[c], ties.count, off);
    ioupos_dsc_case_compute(&mc, mp, tr, n, K);
    ioupos_dsc_case_compute(&oc, op, tr, n, K);
    for (k = 0; k < K; ++k) {
      /* a voxel that flips changes |P_c| by 1 and the overlap by at most 1 */
      double reach = 3.0 * (double)ties.count / (double)(mc.n_truth[k] + mc.n_pred[k]) + 1e-12;
      CHECK(fabs(mc.dsc[k] - dsc.data[k]) <= 1e-12,
            "%s class %d: DSC of MONAI's argmax %.12f = numpy's %.12f", cases[c], k, mc.dsc[k],
            dsc.data[k]);
      CHECK(r.cases[c].dsc[k] == oc.dsc[k] && fabs(r.cases[c].dsc[k] - dsc.data[k]) <= reach,
            "%s class %d: evaluated DSC %.9f = DSC of the written prediction %.9f, MONAI's %.9f",
            cases[c], k, r.cases[c].dsc[k], oc.dsc[k], dsc.data[k]);
    }
    printf("  %s: DSC %.6f %.6f (MONAI %.6f %.6f)\n", cases[c], r.cases[c].dsc[1],
           r.cases[c].dsc[2], dsc.data[1], dsc.data[2]);
    free(mp);
    free(tr);
    free(op);
    tu_npy_free(&am);
    tu_npy_free(&dsc);
    tu_npy_free(&ties);
    ioupos_volume_free(&in);
    ioupos_volume_free(&lb);
    ioupos_volume_free(&pv);
  }
  {
    double m = ioupos_dsc_eval_mean(&r.dsc, NULL);
    CHECK(rc == 0 && fabs(m - (r.cases[0].mean + r.cases[1].mean) / 2.0) < 1e-12,
          "the data-set mean %.9f is the mean over organs of the per-case DSCs", m);
  }
  ioupos_seg_eval_result_free(&r);
  /* research Dice and a 2D model are refused on volumes */
  o.research = 1;
  rc = ioupos_swinunetr_evaluate(cfg, p, &s, &o, &r);
  CHECK(rc == IOUPOS_EINVAL && has(ioupos_failure_reason(), "2D only"),
        "the research per-slice Dice on volumes is refused: %s", ioupos_failure_reason());
  {
    ioupos_swinunetr_config c2 = *cfg;
    c2.enc.spatial_dims = 2;
    eval_opts(&o, NULL);
    rc = ioupos_swinunetr_evaluate(&c2, p, &s, &o, &r);
    CHECK(rc == IOUPOS_EINVAL && has(ioupos_failure_reason(), "3D model"),
          "a 2D model on volumes is refused: %s", ioupos_failure_reason());
  }
  ioupos_seg_set_free(&s);
}

/* 5. a bad case: the error names the file, and no prediction stays behind (spoiling case_b,
   the second, checks that case_a's prediction, written first, is removed; spoiling case_a saves
   a case's inference) */
static void bad_case(const ioupos_swinunetr_config *cfg, ioupos_params *p, const char *name,
                     void (*spoil)(const char *dir), const char *want, const char *what) {
  ioupos_seg_set s;
  ioupos_seg_eval_opts o;
  ioupos_seg_eval_result r;
  char pdir[700];
  const char *d = make_set(name);
  int rc;
  spoil(d);
  snprintf(pdir, sizeof pdir, "%s/pred_%s", g_tmp, name);
  rc = ioupos_seg_set_scan_volumes(&s, d);
  CHECK(rc == 0, "%s: scan: %s", what, ioupos_failure_reason());
  if (rc) return;
  eval_opts(&o, pdir);
  rc = ioupos_swinunetr_evaluate(cfg, p, &s, &o, &r);
  CHECK(rc != 0 && has(ioupos_failure_reason(), want), "%s: refused naming '%s': %s", what, want,
        ioupos_failure_reason());
  CHECK(!exists(tu_path(pdir, "case_a.nii.gz")) && !exists(tu_path(pdir, "case_b.nii.gz")),
        "%s: no prediction file left", what);
  CHECK(r.n_cases == 0 && r.cases == NULL, "%s: the result is empty", what);
  ioupos_seg_set_free(&s);
}

static void spoil_shape(const char *d) {
  copy_file(FIX "val/labels/case_a.nii.gz", tu_path(d, "labels/case_b.nii.gz"));
}
static void spoil_truncate(const char *d) {
  void *b;
  size_t n;
  if (ioupos_read_file(FIX "val/case_a.nii.gz", &b, &n) == 0) {
    ioupos_write_file_atomic(tu_path(d, "case_a.nii.gz"), b, n / 2);
    free(b);
  }
}
static void spoil_value(const char *d, float v) {
  ioupos_volume lb;
  if (ioupos_nifti_read(FIX "val/labels/case_a.nii.gz", &lb) == 0) {
    lb.data[5] = v;
    ioupos_nifti_write(tu_path(d, "labels/case_a.nii.gz"), &lb, IOUPOS_NIFTI_FLOAT32);
    ioupos_volume_free(&lb);
  }
}
static void spoil_fraction(const char *d) { spoil_value(d, 1.5f); }
static void spoil_id(const char *d) { spoil_value(d, 3.0f); }

/* --check-prediction: 0 when PRED passes (one line on stdout either way) */
static int check_prediction(const char *fix, const char *cs, const char *pred, const char *input) {
  char f[1200];
  tu_npy am, ties;
  ioupos_volume in, pv;
  float *px;
  void *raw = NULL;
  unsigned char *enc = NULL;
  size_t rn = 0, es = 0;
  long n, q, off = 0;
  int k, same = 1, rc;
  memset(&in, 0, sizeof in);
  memset(&pv, 0, sizeof pv);
  snprintf(f, sizeof f, "%s/%s_argmax.npy", fix, cs);
  if (tu_npy_load(f, &am)) return 1;
  snprintf(f, sizeof f, "%s/%s_ties.npy", fix, cs);
  if (tu_npy_load(f, &ties)) return 1;
  if (ioupos_nifti_read(input, &in) || ioupos_nifti_read(pred, &pv)) {
    printf("%s\n", ioupos_failure_reason());
    return 1;
  }
  n = (long)in.dim[0] * in.dim[1] * in.dim[2];
  if (pv.dim[0] != in.dim[0] || pv.dim[1] != in.dim[1] || pv.dim[2] != in.dim[2] ||
      am.count != n) {
    printf("%s is %d x %d x %d, the input %d x %d x %d\n", pred, pv.dim[0], pv.dim[1], pv.dim[2],
           in.dim[0], in.dim[1], in.dim[2]);
    return 1;
  }
  for (k = 0; k < 16; ++k) same &= pv.affine[k / 4][k % 4] == in.affine[k / 4][k % 4];
  rc = ioupos_read_file(pred, &raw, &rn);
  if (rc == 0) rc = ioupos_nifti_encode(&pv, IOUPOS_NIFTI_UINT8, 1, &enc, &es);
  px = to_xyz(&pv);
  for (q = 0; q < n; ++q)
    if ((int)px[q] != (int)am.data[q] && !is_tie(&ties, q)) ++off;
  printf("%s: affine %s, %s, %ld voxels differ from MONAI's argmax off %ld near ties\n", pred,
         same ? "the input's" : "NOT the input's",
         rc == 0 && es == rn && memcmp(enc, raw, rn) == 0 ? "uint8" : "NOT our uint8 encoding",
         off, ties.count);
  rc = !same || rc != 0 || es != rn || memcmp(enc, raw, rn) != 0 || off != 0;
  free(px);
  free(raw);
  free(enc);
  tu_npy_free(&am);
  tu_npy_free(&ties);
  ioupos_volume_free(&in);
  ioupos_volume_free(&pv);
  return rc;
}

int main(int argc, char **argv) {
  ioupos_swinunetr_config cfg;
  ioupos_swinunetr m;
  ioupos_params p;
  char cmd[1400], w[600];
  int rc;
  if (argc == 6 && !strcmp(argv[1], "--check-prediction"))
    return check_prediction(argv[2], argv[3], argv[4], argv[5]);
  if (argc != 1) {
    printf("usage: test_eval3d [--check-prediction FIXDIR CASE PRED INPUT]\n");
    return 2;
  }
  snprintf(g_tmp, sizeof g_tmp, "%s/test_eval3d.XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(g_tmp)) {
    printf("mkdtemp failed\n");
    return 1;
  }
  snprintf(w, sizeof w, "%s/weights.safetensors", g_tmp);
  snprintf(cmd, sizeof cmd, "gzip -dc " FIX "weights.safetensors.gz > '%s'", w);
  rc = system(cmd);
  CHECK(rc == 0, "gzip -dc of the state dict (exit %d)", rc);
  printf("MONAI 3D state dict:\n");
  if (rc == 0 && load_model(&cfg, &m, &p, w) == 0) {
    test_logits(&cfg, &p);
    test_scan();
    test_evaluate(&cfg, &p);
    printf("bad inputs:\n");
    bad_case(&cfg, &p, "shape", spoil_shape, "labels/case_b.nii.gz is 36 x 34 x 66",
             "a label of another shape");
    bad_case(&cfg, &p, "trunc", spoil_truncate, "trunc/case_a.nii.gz", "a truncated .nii.gz");
    bad_case(&cfg, &p, "frac", spoil_fraction, "is 1.5, not a label id", "a label value 1.5");
    bad_case(&cfg, &p, "id", spoil_id, "label 3 at voxel (5, 0, 0) is outside [0, 3)",
             "a label id 3 with 3 classes");
    ioupos_swinunetr_free(&m);
    ioupos_params_free(&p);
  }
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
  if (system(cmd) != 0) printf("note: could not remove %s\n", g_tmp);
  return tu_finish("test_eval3d");
}
