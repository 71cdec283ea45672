/* tests/test_preflight.c — the pre-flight check of data sets (ioupos.h section 9,
   ioupos_dataset_check) and the messages around it.

   Every test writes its own PNGs (ioupos_png_write) into a fresh temporary folder and removes
   it at the end.
   1. Structure: truncated PNGs (inside IHDR, inside IDAT, without IEND), a file that is not a
      PNG, a bad IHDR and a PNG without IDAT are each named with their reason, ALL of them in
      one report (and as many as fit in the reason, with "and N more"), the count "B of N
      files"; good files pass; the same report for 1 and 3 threads; max_listed caps the
      report. A PNG whose pixel data is corrupt but whose structure is intact passes the cheap
      check and fails with decode_images.
   2. Labels: a label of another size than its image and a label with an id >= n_classes are
      both named (path, sizes / id, pixel and --n_classes); n_classes 0 reads only headers;
      labels over several data sets are reported together.
   3. Pairing: a scan names every image without a label and every label without an image.
   4. With a loader configuration: --crop_size 1 with [0.3, 0.6] is refused before any file
      is opened (naming the crop, the interval, the flags and the achievable IoUs 0 and 1);
      24x24 images with a 32x32 crop are named once per size, with the file's own size 24x24,
      its padded size and the crop; pad_small 0 names images smaller than the crop; a local
      crop that cannot meet its interval in some image size is named; feasible settings pass.
   5. The loader itself names the file's own size (24x24), not only its padded size, when an
      image admits no pair. */

#include "ioupos.h"
#include "test_util.h"

#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/tmp_tree.h"

/* an h x w 8-bit grey PNG: v where (y + x) % 3 == 0, else (7 y + x) % 5 (0..4) */
static void write_png_v(const char *rel, int h, int w, int v) {
  char p[512];
  uint8_t *px = (uint8_t *)malloc((size_t)h * (size_t)w);
  int y, x;
  for (y = 0; y < h; ++y)
    for (x = 0; x < w; ++x)
      px[(size_t)y * w + x] = (uint8_t)((y + x) % 3 == 0 ? v : (y * 7 + x) % 5);
  path_of(p, sizeof p, rel);
  if (ioupos_png_write(p, w, h, 1, px) != 0) {
    printf("test_preflight: %s\n", ioupos_failure_reason());
    exit(1);
  }
  free(px);
}

/* the bytes of a PNG file */
static unsigned char *png_bytes(int h, int w, int v, size_t *size) {
  char p[512];
  void *data = NULL;
  write_png_v("tmp.png", h, w, v);
  path_of(p, sizeof p, "tmp.png");
  if (ioupos_read_file(p, &data, size) != 0) {
    printf("test_preflight: %s\n", ioupos_failure_reason());
    exit(1);
  }
  remove(p);
  return (unsigned char *)data;
}

static int contains(const char *hay, const char *needle) { return hay && strstr(hay, needle); }

static int count_lines(const char *s) {
  int n = 0;
  for (; s && *s; ++s) n += *s == '\n';
  return n;
}

/* ---- 1. structure ---------------------------------------------------------------------------- */

static void test_structure(void) {
  ioupos_dataset ds;
  ioupos_dataset_check_opts o;
  const ioupos_dataset *sets[1];
  char dir[512], *rep = NULL, *rep3 = NULL;
  unsigned char *png, junk[40];
  size_t size;
  int st, i;

  make_dir("s");
  for (i = 0; i < 6; ++i) {
    char rel[64];
    snprintf(rel, sizeof rel, "s/good_%d.png", i);
    write_png_v(rel, 40, 36, 1);
  }
  png = png_bytes(40, 36, 1, &size);
  write_bytes("s/cut_ihdr.png", png, 20);          /* inside IHDR */
  write_bytes("s/cut_idat.png", png, size / 2);    /* inside IDAT */
  write_bytes("s/no_iend.png", png, size - 12);    /* all but IEND */
  memset(junk, 'x', sizeof junk);
  write_bytes("s/not_png.png", junk, sizeof junk); /* no signature */
  {
    unsigned char *b = (unsigned char *)malloc(size);
    size_t pos = 33, cut;
    memcpy(b, png, size);
    b[24] = 3; /* bit depth 3 */
    write_bytes("s/bad_ihdr.png", b, size);
    /* no IDAT: IHDR, then IEND directly */
    memcpy(b, png, 33);
    memcpy(b + 33, png + size - 12, 12);
    write_bytes("s/no_idat.png", b, 45);
    /* the pixel data corrupt, the structure intact: zlib bytes of IDAT overwritten */
    memcpy(b, png, size);
    cut = pos + 8 + 2; /* past IDAT's length, type and the zlib header */
    memset(b + cut, 0xFF, 16);
    write_bytes("s/bad_pixels.png", b, size);
    free(b);
  }
  free(png);
  path_of(dir, sizeof dir, "s");
  st = ioupos_dataset_scan(dir, NULL, &ds);
  CHECK(st == 0 && ds.n == 13, "scan: %d %s (n %d)", st, ioupos_failure_reason(), ds.n);
  if (st) return;
  sets[0] = &ds;
  memset(&o, 0, sizeof o);
  st = ioupos_dataset_check(sets, 1, &o, &rep);
  CHECK(st == IOUPOS_EFORMAT, "6 broken files: status %d (%s)", st, ioupos_status_name(st));
  CHECK(contains(ioupos_failure_reason(), "pre-flight check: 6 of 13 files are bad: "),
        "reason counts: %s", ioupos_failure_reason());
  CHECK(rep && count_lines(rep) == 6, "report has 6 lines: %s", rep ? rep : "(null)");
  {
    static const char *const want[6][2] = {
        {"bad_ihdr.png: corrupt or unsupported PNG header", "bit depth 3"},
        {"cut_idat.png: corrupt PNG (truncated", "runs past the end"},
        {"cut_ihdr.png: corrupt PNG (truncated", "no whole IHDR"},
        {"no_idat.png: corrupt PNG (no IDAT", ""},
        {"no_iend.png: corrupt PNG (truncated", "no IEND"},
        {"not_png.png: not a PNG file", ""}};
    for (i = 0; i < 6; ++i)
      CHECK(contains(rep, want[i][0]) && contains(rep, want[i][1]), "report names %s: %s",
            want[i][0], rep ? rep : "(null)");
  }
  CHECK(!contains(rep, "good_") && !contains(rep, "bad_pixels"),
        "good files (and an intact structure) are not named: %s", rep ? rep : "(null)");
  /* the reason holds whole problems and says how many more */
  CHECK(contains(ioupos_failure_reason(), "bad_ihdr.png") &&
            (contains(ioupos_failure_reason(), "not_png.png") ||
             contains(ioupos_failure_reason(), " more")),
        "reason lists or counts them all: %s", ioupos_failure_reason());
  CHECK(strlen(ioupos_failure_reason()) < 511, "reason not cut off: %s", ioupos_failure_reason());
  /* threads: the same report */
  o.num_threads = 3;
  st = ioupos_dataset_check(sets, 1, &o, &rep3);
  CHECK(st == IOUPOS_EFORMAT && rep && rep3 && !strcmp(rep, rep3), "3 threads: same report:\n%s",
        rep3 ? rep3 : "(null)");
  free(rep3);
  rep3 = NULL;
  /* max_listed */
  o.max_listed = 2;
  st = ioupos_dataset_check(sets, 1, &o, &rep3);
  CHECK(st == IOUPOS_EFORMAT && count_lines(rep3) == 3 && contains(rep3, "... and 4 more"),
        "max_listed 2: %s", rep3 ? rep3 : "(null)");
  free(rep3);
  rep3 = NULL;
  o.max_listed = 0;
  o.num_threads = 0;
  /* decoding the images finds the corrupt pixels too */
  o.decode_images = 1;
  st = ioupos_dataset_check(sets, 1, &o, &rep3);
  CHECK(st != 0 && count_lines(rep3) == 7 && contains(rep3, "bad_pixels.png: corrupt"),
        "decode_images names bad_pixels.png: %s", rep3 ? rep3 : "(null)");
  free(rep3);
  free(rep);
  ioupos_dataset_free(&ds);

  /* a good folder passes; report stays NULL */
  make_dir("ok");
  write_png_v("ok/a.png", 30, 30, 1);
  write_png_v("ok/b.png", 31, 29, 1);
  path_of(dir, sizeof dir, "ok");
  if (ioupos_dataset_scan(dir, NULL, &ds) == 0) {
    rep = (char *)1;
    st = ioupos_dataset_check(sets, 1, NULL, &rep);
    CHECK(st == 0 && rep == NULL, "good folder: %d %s", st, ioupos_failure_reason());
    ioupos_dataset_free(&ds);
  }
}

/* ---- 2. labels ------------------------------------------------------------------------------- */

static void test_labels(void) {
  ioupos_dataset tr, va;
  ioupos_dataset_check_opts o;
  const ioupos_dataset *sets[2];
  char d1[512], l1[512], d2[512], l2[512], *rep = NULL;
  int st, i;
  make_dir("tr");
  make_dir("tr/labels");
  make_dir("va");
  make_dir("va/labels");
  for (i = 0; i < 4; ++i) {
    char a[64], b[64];
    snprintf(a, sizeof a, "tr/c_%03d.png", i);
    snprintf(b, sizeof b, "tr/labels/c_%03d.png", i);
    write_png_v(a, 40, 50, 200);
    write_png_v(b, 40, 50, i == 2 ? 20 : 13); /* ids 0..4 and 13, or 20 */
    snprintf(a, sizeof a, "va/v_%03d.png", i);
    snprintf(b, sizeof b, "va/labels/v_%03d.png", i);
    write_png_v(a, 44, 36, 200);
    if (i == 1) write_png_v(b, 36, 44, 3); /* transposed: the wrong size */
    else write_png_v(b, 44, 36, 3);
  }
  path_of(d1, sizeof d1, "tr");
  path_of(l1, sizeof l1, "tr/labels");
  path_of(d2, sizeof d2, "va");
  path_of(l2, sizeof l2, "va/labels");
  st = ioupos_dataset_scan(d1, l1, &tr);
  st = st ? st : ioupos_dataset_scan(d2, l2, &va);
  CHECK(st == 0, "scans: %s", ioupos_failure_reason());
  if (st) return;
  sets[0] = &tr;
  sets[1] = &va;
  memset(&o, 0, sizeof o);
  o.n_classes = 14;
  st = ioupos_dataset_check(sets, 2, &o, &rep);
  CHECK(st == IOUPOS_EINVAL, "bad labels: status %d", st);
  CHECK(count_lines(rep) == 2, "two problems: %s", rep ? rep : "(null)");
  CHECK(contains(rep, "tr/labels/c_002.png: label 20 at pixel (0, 0) is outside [0, 14) "
                      "(`n_classes` 14); "),
        "id 20 named: %s", rep ? rep : "(null)");
  CHECK(contains(rep, "label ") && contains(rep, "va/labels/v_001.png is 36x44 but its image ") &&
            contains(rep, "va/v_001.png is 44x36"),
        "wrong size named with both sizes: %s", rep ? rep : "(null)");
  CHECK(contains(ioupos_failure_reason(), "pre-flight check: 2 of 16 files are bad: ") &&
            contains(ioupos_failure_reason(), "c_002.png") &&
            contains(ioupos_failure_reason(), "v_001.png"),
        "the reason names both: %s", ioupos_failure_reason());
  free(rep);
  rep = NULL;
  /* n_classes 20: id 20 still outside; 21: only the size */
  o.n_classes = 21;
  st = ioupos_dataset_check(sets, 2, &o, &rep);
  CHECK(st == IOUPOS_EINVAL && count_lines(rep) == 1 && contains(rep, "v_001.png"),
        "n_classes 21: only the size: %s", rep ? rep : "(null)");
  free(rep);
  rep = NULL;
  /* n_classes 0: no decoding, sizes still compared */
  o.n_classes = 0;
  st = ioupos_dataset_check(sets, 2, &o, &rep);
  CHECK(st == IOUPOS_EINVAL && count_lines(rep) == 1 && contains(rep, "v_001.png"),
        "n_classes 0: only the size: %s", rep ? rep : "(null)");
  free(rep);
  ioupos_dataset_free(&tr);
  ioupos_dataset_free(&va);
}

/* ---- 3. pairing ------------------------------------------------------------------------------ */

static void test_pairing(void) {
  ioupos_dataset ds;
  char d[512], l[512];
  int st;
  make_dir("pi");
  make_dir("pl");
  write_png_v("pi/a.png", 8, 8, 1);
  write_png_v("pi/b.png", 8, 8, 1);
  write_png_v("pi/c.png", 8, 8, 1);
  write_png_v("pl/a.png", 8, 8, 1);
  write_png_v("pl/x.png", 8, 8, 1);
  write_png_v("pl/y.png", 8, 8, 1);
  path_of(d, sizeof d, "pi");
  path_of(l, sizeof l, "pl");
  st = ioupos_dataset_scan(d, l, &ds);
  CHECK(st == IOUPOS_EINVAL && contains(ioupos_failure_reason(), "4 files do not pair up") &&
            contains(ioupos_failure_reason(), "b.png has no label") &&
            contains(ioupos_failure_reason(), "image c.png has no label") &&
            contains(ioupos_failure_reason(), "label x.png has no image") &&
            contains(ioupos_failure_reason(), "label y.png has no image"),
        "every unpaired file named: %d %s", st, ioupos_failure_reason());
  CHECK(ds.n == 0 && !ds.images, "failed scan is empty");
}

/* ---- 4. sizes against the loader's crops and intervals --------------------------------------- */

static void test_loader_sizes(void) {
  ioupos_dataset ds;
  ioupos_loader_config lc;
  ioupos_dataset_check_opts o;
  const ioupos_dataset *sets[1];
  char dir[512], *rep = NULL;
  int st, i;
  make_dir("sm");
  for (i = 0; i < 3; ++i) {
    char rel[64];
    snprintf(rel, sizeof rel, "sm/s%d.png", i);
    write_png_v(rel, 24, 24, 1);
  }
  write_png_v("sm/t.png", 100, 90, 1);
  path_of(dir, sizeof dir, "sm");
  st = ioupos_dataset_scan(dir, NULL, &ds);
  CHECK(st == 0 && ds.n == 4, "scan sm: %s", ioupos_failure_reason());
  if (st) return;
  sets[0] = &ds;
  ioupos_loader_config_default(&lc, &ds, IOUPOS_LOADER_SSL);
  memset(&o, 0, sizeof o);
  o.loader = &lc;

  /* crop 1 with [0.3, 0.6]: refused without looking at a file */
  lc.crop[0] = lc.crop[1] = 1;
  st = ioupos_dataset_check(sets, 1, &o, &rep);
  CHECK(st == IOUPOS_EINFEASIBLE && rep == NULL &&
            contains(ioupos_failure_reason(), "`crop` 1 with `min_iou` 0.3 / `max_iou` 0.6: "
                                              "no two 1x1 crops have an IoU in [0.3, 0.6]") &&
            contains(ioupos_failure_reason(), "are 0 and 1"),
        "crop 1: %d %s", st, ioupos_failure_reason());

  /* crop 32: the three 24x24 images are one problem naming 24x24, the padding and the crop */
  lc.crop[0] = lc.crop[1] = 32;
  st = ioupos_dataset_check(sets, 1, &o, &rep);
  CHECK(st == IOUPOS_EINFEASIBLE && count_lines(rep) == 1, "crop 32: %d %s", st,
        rep ? rep : ioupos_failure_reason());
  CHECK(contains(rep, "s0.png (and 2 more images of 24x24): image 24x24, zero-padded to 32x32, "
                      "has no pair of 32x32 crops (`crop`) with an IoU in [0.3, 0.6]") &&
            contains(rep, "the nearest IoU such crops can have is 1"),
        "24x24 named: %s", rep ? rep : "(null)");
  CHECK(contains(ioupos_failure_reason(), "pre-flight check: 3 of 4 files are bad: ") &&
            contains(ioupos_failure_reason(), "24x24"),
        "reason: %s", ioupos_failure_reason());
  free(rep);
  rep = NULL;
  /* [0.3, 1] is feasible for them (the whole padded image twice: IoU 1) */
  lc.max_iou = 1.0;
  st = ioupos_dataset_check(sets, 1, &o, &rep);
  CHECK(st == 0 && rep == NULL, "crop 32 with [0.3, 1]: %d %s", st, ioupos_failure_reason());
  lc.max_iou = 0.6;
  /* crop 16 with [0.3, 0.6]: every size fits */
  lc.crop[0] = lc.crop[1] = 16;
  st = ioupos_dataset_check(sets, 1, &o, &rep);
  CHECK(st == 0 && rep == NULL, "crop 16: %d %s", st, ioupos_failure_reason());
  /* pad_small 0 with crop 32: the small images are named as such */
  lc.crop[0] = lc.crop[1] = 32;
  lc.pad_small = 0;
  lc.max_iou = 1.0;
  st = ioupos_dataset_check(sets, 1, &o, &rep);
  CHECK(st == IOUPOS_EINVAL && contains(rep, "image 24x24 is smaller than the 32x32 crop"),
        "pad_small 0: %d %s", st, rep ? rep : ioupos_failure_reason());
  free(rep);
  rep = NULL;
  lc.pad_small = 1;
  /* local crops: 16x16 with IoU at most 0.1 against a 32x32 crop: impossible in a 32x32
     (padded 24x24) image, where every local crop lies inside the crop (IoU 0.25), possible in
     100x90 */
  lc.n_local = 2;
  lc.local_crop[0] = lc.local_crop[1] = 16;
  lc.local_min_iou = 0.0;
  lc.local_max_iou = 0.1;
  st = ioupos_dataset_check(sets, 1, &o, &rep);
  CHECK(st == IOUPOS_EINFEASIBLE && count_lines(rep) == 1 &&
            contains(rep, "s0.png (and 2 more images of 24x24): image 24x24 (as 32x32 for the "
                          "local crops): no 16x16 local crop (`local_crop`)") &&
            contains(rep, "`local_min_iou` / `local_max_iou`"),
        "local crops: %d %s", st, rep ? rep : ioupos_failure_reason());
  free(rep);
  rep = NULL;
  /* a local interval no size allows: one message, no file */
  lc.local_min_iou = 0.9;
  lc.local_max_iou = 1.0;
  st = ioupos_dataset_check(sets, 1, &o, &rep);
  CHECK(st == IOUPOS_EINFEASIBLE && rep == NULL &&
            contains(ioupos_failure_reason(), "`local_crop` 16 with `local_min_iou` 0.9"),
        "local interval: %d %s", st, ioupos_failure_reason());
  ioupos_dataset_free(&ds);
}

/* ---- 5. the loader's own message names the file's size --------------------------------------- */

static void test_loader_message(void) {
  ioupos_dataset ds;
  ioupos_loader_config lc;
  ioupos_loader l;
  ioupos_batch b;
  char dir[512];
  int st;
  path_of(dir, sizeof dir, "sm");
  st = ioupos_dataset_scan(dir, NULL, &ds);
  CHECK(st == 0, "scan sm: %s", ioupos_failure_reason());
  if (st) return;
  ioupos_loader_config_default(&lc, &ds, IOUPOS_LOADER_SSL);
  lc.crop[0] = lc.crop[1] = 32;
  lc.batch_size = 4;
  st = ioupos_loader_open(&l, &lc);
  CHECK(st == 0, "open: %s", ioupos_failure_reason());
  if (st == 0) {
    st = ioupos_loader_next(&l, &b);
    CHECK(st == IOUPOS_EINFEASIBLE &&
              contains(ioupos_failure_reason(), ".png: image 24x24, zero-padded to 32x32 for the "
                                                "32x32 crop: "),
          "loader: %d %s", st, ioupos_failure_reason());
    ioupos_loader_close(&l);
  }
  ioupos_dataset_free(&ds);
}

int main(void) {
  const char *tmp = getenv("TMPDIR");
  snprintf(g_root, sizeof g_root, "%s/ioupos_test_preflight.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g_root)) {
    printf("test_preflight: cannot create a temporary folder %s\n", g_root);
    return 1;
  }
  test_structure();
  test_labels();
  test_pairing();
  test_loader_sizes();
  test_loader_message();
  remove_tree(g_root);
  return tu_finish("test_preflight");
}
