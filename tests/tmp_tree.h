/* tests/tmp_tree.h — a test's scratch folder: g_root (set it, e.g. with mkdtemp), paths below
   it, folders, files, and the whole tree's removal. A failure to create or write ends the test
   (exit 1) naming the path. Include once, after the system headers below. */
#ifndef IOUPOS_TESTS_TMP_TREE_H
#define IOUPOS_TESTS_TMP_TREE_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_root[256];

static void path_of(char *buf, size_t cap, const char *rel) {
  snprintf(buf, cap, "%s/%s", g_root, rel);
}

static void make_dir(const char *rel) {
  char p[512];
  path_of(p, sizeof p, rel);
  if (mkdir(p, 0755) != 0) {
    printf("FAIL: cannot create %s\n", p);
    exit(1);
  }
}

static void remove_tree(const char *path) {
  DIR *d = opendir(path);
  struct dirent *e;
  if (!d) {
    remove(path);
    return;
  }
  while ((e = readdir(d)) != NULL) {
    char p[1024];
    struct stat sb;
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    snprintf(p, sizeof p, "%s/%s", path, e->d_name);
    if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) remove_tree(p);
    else remove(p);
  }
  closedir(d);
  rmdir(path);
}

static void write_bytes(const char *rel, const void *data, size_t n) {
  char p[512];
  FILE *f;
  path_of(p, sizeof p, rel);
  f = fopen(p, "wb");
  if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
    printf("FAIL: cannot write %s\n", p);
    exit(1);
  }
}

#endif /* IOUPOS_TESTS_TMP_TREE_H */
