/* Runs a fuzz target's LLVMFuzzerTestOneInput over files, the way libFuzzer
 * replays a corpus, for the ordinary test suite (built with any compiler,
 * and with the sanitizers of the build). Arguments are files or folders
 * (every regular file in them, in name order; a missing folder is skipped).
 * A crash, sanitizer report or abort in the target fails the run. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "fuzz.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static unsigned long ran;

static void run_file(const char *path)
{
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    exit(2);
  }
  size_t cap = 1 << 16, len = 0, n;
  uint8_t *buf = malloc(cap);
  while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
    len += n;
    if (len == cap)
      buf = realloc(buf, cap *= 2);
  }
  fclose(f);
  if (!buf) {
    fprintf(stderr, "%s: out of memory\n", path);
    exit(2);
  }
  fprintf(stderr, "running %s (%zu bytes)\n", path, len);
  LLVMFuzzerTestOneInput(buf, len);
  free(buf);
  ran++;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
  return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv)
{
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) != 0)
      continue;
    if (!S_ISDIR(st.st_mode)) {
      run_file(argv[i]);
      continue;
    }
    struct dirent **ents;
    int n = scandir(argv[i], &ents, NULL, by_name);
    for (int k = 0; k < n; k++) {
      char *p;
      if (asprintf(&p, "%s/%s", argv[i], ents[k]->d_name) < 0)
        exit(2);
      if (stat(p, &st) == 0 && S_ISREG(st.st_mode) && ents[k]->d_name[0] != '.')
        run_file(p);
      free(p);
      free(ents[k]);
    }
    free(ents);
  }
  if (!ran) {
    fprintf(stderr, "no inputs found\n");
    return 1;
  }
  fprintf(stderr, "%lu inputs ran clean\n", ran);
  return 0;
}
