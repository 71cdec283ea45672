/* ioupos-sweep-plot — the picture of scripts/sweep.sh's table, without Python: one line per
   row of table.csv, each run's DSC as a dot, the row's mean as a tick and mean +- SD as a bar,
   on a shared DSC axis; text in a built-in 5 x 7 pixel font.
     ioupos-sweep-plot TABLE.csv OUT.png
   TABLE.csv is sweep.sh's: a header, then "name",mean,sd,sd_sample,n,dsc_1,...,dsc_n.
   Exit status 0, 1 (unreadable table, PNG not written), 2 bad command line. */
#include "ioupos.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROG "ioupos-sweep-plot"
#define MAX_ROWS 64
#define MAX_RUNS 256

typedef struct row {
  char name[64];
  double mean, sd, v[MAX_RUNS];
  int n;
} row;

/* 5 x 7 glyphs, 7 rows of 5 bits (bit 4 = leftmost column); uppercase letters draw as
   lowercase, anything else as a blank */
static const char glyph_chars[] = "0123456789.,[]()-+:_abcdefghijklmnopqrstuvwxyz";
static const unsigned char glyphs[][7] = {
    {14, 17, 19, 21, 25, 17, 14}, {4, 12, 4, 4, 4, 4, 14},     {14, 17, 1, 2, 4, 8, 31},
    {31, 2, 4, 2, 1, 17, 14},     {2, 6, 10, 18, 31, 2, 2},    {31, 16, 30, 1, 1, 17, 14},
    {6, 8, 16, 30, 17, 17, 14},   {31, 1, 2, 4, 8, 8, 8},      {14, 17, 17, 14, 17, 17, 14},
    {14, 17, 17, 15, 1, 2, 12},   {0, 0, 0, 0, 0, 12, 12},     {0, 0, 0, 0, 12, 4, 8},
    {14, 8, 8, 8, 8, 8, 14},      {14, 2, 2, 2, 2, 2, 14},     {2, 4, 8, 8, 8, 4, 2},
    {8, 4, 2, 2, 2, 4, 8},        {0, 0, 0, 31, 0, 0, 0},      {0, 4, 4, 31, 4, 4, 0},
    {0, 12, 12, 0, 12, 12, 0},    {0, 0, 0, 0, 0, 0, 31},      {0, 0, 14, 1, 15, 17, 15},
    {16, 16, 22, 25, 17, 17, 30}, {0, 0, 14, 16, 16, 17, 14},  {1, 1, 13, 19, 17, 17, 15},
    {0, 0, 14, 17, 31, 16, 14},   {6, 9, 8, 28, 8, 8, 8},      {0, 15, 17, 17, 15, 1, 14},
    {16, 16, 22, 25, 17, 17, 17}, {4, 0, 12, 4, 4, 4, 14},     {2, 0, 6, 2, 2, 18, 12},
    {16, 16, 18, 20, 24, 20, 18}, {12, 4, 4, 4, 4, 4, 14},     {0, 0, 26, 21, 21, 17, 17},
    {0, 0, 22, 25, 17, 17, 17},   {0, 0, 14, 17, 17, 17, 14},  {0, 0, 30, 17, 30, 16, 16},
    {0, 0, 13, 19, 15, 1, 1},     {0, 0, 22, 25, 16, 16, 16},  {0, 0, 14, 16, 14, 1, 30},
    {8, 8, 28, 8, 8, 9, 6},       {0, 0, 17, 17, 17, 19, 13},  {0, 0, 17, 17, 17, 10, 4},
    {0, 0, 17, 17, 21, 21, 10},   {0, 0, 17, 10, 4, 10, 17},   {0, 0, 17, 17, 15, 1, 14},
    {0, 0, 31, 2, 4, 8, 31}};

static int W, H;
static unsigned char *px; /* RGB */

static void put(int x, int y, const unsigned char c[3]) {
  if (x < 0 || y < 0 || x >= W || y >= H) return;
  memcpy(px + 3 * ((size_t)y * W + x), c, 3);
}
static void rect(int x0, int y0, int x1, int y1, const unsigned char c[3]) {
  int x, y;
  for (y = y0; y <= y1; ++y)
    for (x = x0; x <= x1; ++x) put(x, y, c);
}
/* text at (x, y) (top left), pixels scaled by s; returns the width drawn */
static int text(int x, int y, const char *s, int s_, const unsigned char c[3]) {
  int x0 = x;
  for (; *s; ++s, x += 6 * s_) {
    char ch = (char)(*s >= 'A' && *s <= 'Z' ? *s - 'A' + 'a' : *s);
    const char *g = ch ? strchr(glyph_chars, ch) : NULL;
    int r, b;
    if (!g) continue;
    for (r = 0; r < 7; ++r)
      for (b = 0; b < 5; ++b)
        if (glyphs[g - glyph_chars][r] & (16 >> b))
          rect(x + b * s_, y + r * s_, x + b * s_ + s_ - 1, y + r * s_ + s_ - 1, c);
  }
  return x - x0;
}

static int read_table(const char *path, row *rows, int *n_rows) {
  FILE *f = fopen(path, "r");
  char line[8192];
  int n = 0;
  if (!f) return -1;
  if (!fgets(line, sizeof line, f)) { /* header */
    fclose(f);
    return -1;
  }
  while (n < MAX_ROWS && fgets(line, sizeof line, f)) {
    row *r = &rows[n];
    char *p = line, *q;
    double fields[MAX_RUNS + 4];
    int k = 0;
    memset(r, 0, sizeof *r);
    if (*p != '"' || !(q = strchr(p + 1, '"'))) continue;
    snprintf(r->name, sizeof r->name, "%.*s", (int)(q - p - 1), p + 1);
    p = q + 1;
    while (*p == ',' && k < MAX_RUNS + 4) {
      fields[k++] = strtod(p + 1, &q);
      if (q == p + 1) break;
      p = q;
    }
    if (k < 4) continue;
    r->mean = fields[0];
    r->sd = fields[1];
    for (r->n = 0; r->n < k - 4; ++r->n) r->v[r->n] = fields[4 + r->n];
    ++n;
  }
  fclose(f);
  *n_rows = n;
  return n > 0 ? 0 : -1;
}

int main(int argc, char **argv) {
  static row rows[MAX_ROWS];
  static const unsigned char black[3] = {0, 0, 0}, grey[3] = {160, 160, 160},
                             light[3] = {225, 225, 225}, blue[3] = {30, 90, 200},
                             red[3] = {200, 40, 40};
  const int left = 220, right = 40, top = 50, rowh = 40, bottom = 60;
  int n_rows = 0, i, k, rc;
  double lo = 1e300, hi = -1e300, step, t;
  if (argc != 3) {
    fprintf(stderr, "usage: " PROG " TABLE.csv OUT.png\n");
    return 2;
  }
  if (read_table(argv[1], rows, &n_rows) != 0) {
    fprintf(stderr, PROG ": %s: no table rows (expected sweep.sh's table.csv)\n", argv[1]);
    return 1;
  }
  for (i = 0; i < n_rows; ++i) {
    if (rows[i].mean - rows[i].sd < lo) lo = rows[i].mean - rows[i].sd;
    if (rows[i].mean + rows[i].sd > hi) hi = rows[i].mean + rows[i].sd;
    for (k = 0; k < rows[i].n; ++k) {
      if (rows[i].v[k] < lo) lo = rows[i].v[k];
      if (rows[i].v[k] > hi) hi = rows[i].v[k];
    }
  }
  if (!(hi > lo)) {
    lo -= 0.01;
    hi += 0.01;
  }
  /* the smallest tick step of 1, 2 or 5 x 10^k giving at most 6 intervals (room for the
     labels); the axis on whole steps */
  step = pow(10.0, floor(log10((hi - lo) / 6.0)));
  if ((hi - lo) / step > 6) step *= 2;
  if ((hi - lo) / step > 6) step *= 2.5;
  if ((hi - lo) / step > 6) step *= 2;
  lo = floor(lo / step) * step;
  hi = ceil(hi / step) * step;
  W = 760;
  H = top + rowh * n_rows + bottom;
  px = (unsigned char *)malloc((size_t)W * H * 3);
  if (!px) return 1;
  memset(px, 255, (size_t)W * H * 3);
#define XOF(v) (left + (int)lround(((v) - lo) / (hi - lo) * (W - left - right)))
  text(10, 12, "mean dsc per row: dots runs, tick mean, bar mean +- sd", 2, black);
  for (t = lo; t <= hi + step * 1e-9; t += step) {
    char buf[32];
    int x = XOF(t);
    rect(x, top - 6, x, top + rowh * n_rows, light);
    rect(x, top + rowh * n_rows, x, top + rowh * n_rows + 6, black);
    snprintf(buf, sizeof buf, "%.*f", step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9), t);
    text(x - 6 * (int)strlen(buf), top + rowh * n_rows + 12, buf, 2, black);
  }
  rect(left, top + rowh * n_rows, W - right, top + rowh * n_rows, black);
  text(W / 2 - 18, H - 20, "dsc", 2, black);
  for (i = 0; i < n_rows; ++i) {
    const row *r = &rows[i];
    int y = top + rowh * i + rowh / 2, xm = XOF(r->mean);
    text(10, y - 7, r->name, 2, black);
    rect(XOF(r->mean - r->sd), y - 1, XOF(r->mean + r->sd), y + 1, grey);
    rect(xm - 1, y - 9, xm + 1, y + 9, red);
    for (k = 0; k < r->n; ++k) {
      int x = XOF(r->v[k]), dx, dy;
      for (dy = -4; dy <= 4; ++dy)
        for (dx = -4; dx <= 4; ++dx)
          if (dx * dx + dy * dy <= 16) put(x + dx, y + dy - 0, blue);
    }
  }
  rc = ioupos_png_write(argv[2], W, H, 3, px);
  free(px);
  if (rc != IOUPOS_OK) {
    fprintf(stderr, PROG ": %s\n", ioupos_failure_reason());
    return 1;
  }
  printf("wrote %s\n", argv[2]);
  return 0;
}
