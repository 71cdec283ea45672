/* tests/test_image.c — PNG loading (8/16 bit, grey/alpha/colour/palette/interlaced, luma),
   refusal of corrupt or non-PNG input with the file named, atomic writes. Uses the fuzz seed
   corpus written by fuzz/make_png_corpus.py, whose pixel values are known. */
#include "ioupos.h"
#include "test_util.h"

#include <math.h>
#include <string.h>
#include <sys/stat.h>

static int load(const char *name, ioupos_image *img) {
  char path[256];
  snprintf(path, sizeof path, "fuzz/corpus/png/%s", name);
  return ioupos_image_load(path, img);
}

static void test_decode(void) {
  ioupos_image img;
  int x, y, st, bad = 0;
  st = load("grey8.png", &img);
  CHECK(st == 0 && img.h == 3 && img.w == 5, "grey8: %s %dx%d", ioupos_failure_reason(), img.h, img.w);
  for (y = 0; st == 0 && y < 3; ++y)
    for (x = 0; x < 5; ++x) bad += img.data[y * 5 + x] != (float)(((x * 50 + y) % 256) / 255.0);
  CHECK(bad == 0, "grey8: %d pixels differ from v / 255", bad);
  ioupos_image_free(&img);

  st = load("grey16.png", &img);
  CHECK(st == 0 && img.h == 2 && img.w == 4, "grey16: %s", ioupos_failure_reason());
  for (bad = 0, y = 0; st == 0 && y < 2; ++y)
    for (x = 0; x < 4; ++x) bad += img.data[y * 4 + x] != (float)(((x * 20000 + y * 7) % 65536) / 65535.0);
  CHECK(bad == 0, "grey16: %d pixels differ from v / 65535 (16 bits kept)", bad);
  ioupos_image_free(&img);

  st = load("rgb8.png", &img); /* rows (10, 200, 30) and (255, 0, 128) */
  CHECK(st == 0 && img.h == 2 && img.w == 3, "rgb8: %s", ioupos_failure_reason());
  if (st == 0) {
    double l0 = (299.0 * 10 + 587.0 * 200 + 114.0 * 30) / 1000.0 / 255.0;
    double l1 = (299.0 * 255 + 587.0 * 0 + 114.0 * 128) / 1000.0 / 255.0;
    CHECK(fabs(img.data[0] - l0) < 1e-6 && fabs(img.data[5] - l1) < 1e-6,
          "rgb8 luma: %.6f %.6f, want %.6f %.6f", img.data[0], img.data[5], l0, l1);
  }
  ioupos_image_free(&img);

  st = load("rgba16.png", &img); /* (1000, 2000, 3000, 65535): alpha ignored */
  CHECK(st == 0 && fabs(img.data[3] - (299.0 * 1000 + 587.0 * 2000 + 114.0 * 3000) / 1000.0 / 65535.0) < 1e-6,
        "rgba16 luma: %s", ioupos_failure_reason());
  ioupos_image_free(&img);

  st = load("palette.png", &img); /* indices 0 1 2 1 -> 0, 128, 255, 128 */
  CHECK(st == 0 && img.w == 4 && fabs(img.data[1] * 255.0 - 128.0) < 1e-3 && img.data[2] == 1.0f,
        "palette: %s", ioupos_failure_reason());
  ioupos_image_free(&img);

  st = load("interlaced.png", &img); /* row y = y .. y+8 */
  for (bad = 0, y = 0; st == 0 && y < 9; ++y)
    for (x = 0; x < 9; ++x) bad += img.data[y * 9 + x] != (float)((y + x) / 255.0);
  CHECK(st == 0 && bad == 0, "interlaced: %d bad pixels (%s)", bad, ioupos_failure_reason());
  ioupos_image_free(&img);

  st = load("greyalpha8.png", &img);
  CHECK(st == 0 && img.w == 3, "grey+alpha: %s", ioupos_failure_reason());
  ioupos_image_free(&img);
}

static void test_refusals(void) {
  ioupos_image img;
  static const unsigned char jpeg[] = {0xFF, 0xD8, 0xFF, 0xE0, 0, 16, 'J', 'F', 'I', 'F', 0};
  unsigned char huge[33];
  void *data;
  size_t size;
  int st;
  st = load("truncated.png", &img);
  CHECK(st == IOUPOS_EFORMAT && strstr(ioupos_failure_reason(), "truncated.png"),
        "truncated: %d %s", st, ioupos_failure_reason());
  st = ioupos_image_load("no/such/file.png", &img);
  CHECK(st == IOUPOS_EIO && strstr(ioupos_failure_reason(), "no/such/file.png"), "missing: %s",
        ioupos_failure_reason());
  st = ioupos_image_load_memory(jpeg, sizeof jpeg, "x.jpg", &img);
  CHECK(st == IOUPOS_EFORMAT && strstr(ioupos_failure_reason(), "not a PNG"), "JPEG: %s",
        ioupos_failure_reason());
  CHECK(img.data == NULL && img.h == 0, "a failed load leaves an empty image");
  /* a header claiming 65536 x 65536 pixels: refused before any allocation */
  CHECK(ioupos_read_file("fuzz/corpus/png/grey8.png", &data, &size) == 0, "read grey8");
  memcpy(huge, data, sizeof huge);
  huge[16] = 0; huge[17] = 1; huge[18] = 0; huge[19] = 0;  /* width 65536 */
  huge[20] = 0; huge[21] = 1; huge[22] = 0; huge[23] = 0;  /* height 65536 */
  memcpy(data, huge, sizeof huge);
  st = ioupos_image_load_memory(data, size, "huge.png", &img);
  CHECK(st == IOUPOS_EFORMAT && strstr(ioupos_failure_reason(), "65536x65536"), "huge: %s",
        ioupos_failure_reason());
  /* a chunk length past the end of the file (dimensions restored) */
  memcpy((unsigned char *)data + 16, "\0\0\0\5\0\0\0\3", 8);
  ((unsigned char *)data)[33] = 0x7F;
  st = ioupos_image_load_memory(data, size, "len.png", &img);
  CHECK(st == IOUPOS_EFORMAT && strstr(ioupos_failure_reason(), "past the end"), "length: %s",
        ioupos_failure_reason());
  free(data);
}

static void test_write(void) {
  uint8_t px[6 * 4 * 3];
  ioupos_image img;
  struct stat st_;
  int i, st;
  const char *path = "build/test_image_out.png";
  for (i = 0; i < (int)sizeof px; ++i) px[i] = (uint8_t)(i * 7);
  st = ioupos_png_write(path, 6, 4, 3, px);
  CHECK(st == 0, "png_write: %s", ioupos_failure_reason());
  st = ioupos_image_load(path, &img);
  CHECK(st == 0 && img.w == 6 && img.h == 4, "round trip: %s", ioupos_failure_reason());
  if (st == 0)
    CHECK(fabs(img.data[1] - (299.0 * 21 + 587.0 * 28 + 114.0 * 35) / 1000.0 / 255.0) < 1e-6,
          "round trip value %.6f", img.data[1]);
  ioupos_image_free(&img);
  remove(path);
  st = ioupos_png_write("build/no_such_dir/x.png", 6, 4, 3, px);
  CHECK(st == IOUPOS_EIO && strstr(ioupos_failure_reason(), "build/no_such_dir/x.png"),
        "unwritable: %s", ioupos_failure_reason());
  CHECK(ioupos_png_write(path, 0, 4, 3, px) == IOUPOS_EINVAL, "zero width refused");
  CHECK(stat(path, &st_) != 0, "no file left after a refused write");
}

int main(void) {
  test_decode();
  test_refusals();
  test_write();
  return tu_finish("test_image");
}
