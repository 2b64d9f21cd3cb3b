/* fuzz.h: the temporary folder and files of a fuzz target. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "fuzz.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[256];

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
  (void)st;
  (void)flag;
  if (ftw->level > 0)
    remove(path);
  return 0;
}

void fuzz_clean(void)
{
  if (dir[0])
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void remove_dir(void)
{
  fuzz_clean();
  rmdir(dir);
}

const char *fuzz_dir(void)
{
  if (!dir[0]) {
    const char *t = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/ts-fuzz-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(dir)) {
      perror("fuzz: mkdtemp");
      abort();
    }
    atexit(remove_dir);
  }
  return dir;
}

char *fuzz_path(const char *name)
{
  static char buf[4][512];
  static int next;
  char *p = buf[next++ % 4];
  snprintf(p, sizeof buf[0], "%s/%s", fuzz_dir(), name);
  return p;
}

void fuzz_write_file(const char *name, const void *data, size_t size, size_t min)
{
  const char *p = fuzz_path(name);
  int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size) ||
      (size < min && ftruncate(fd, (off_t)min) != 0)) {
    perror(p);
    abort();
  }
  close(fd);
}

void fuzz_quiet_stdout(void)
{
  int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (fd >= 0) {
    fflush(stdout);
    dup2(fd, 1);
    close(fd);
  }
}

void fuzz_note(const char *what, const char *why)
{
  static int verbose = -1;
  if (verbose < 0)
    verbose = getenv("TS_FUZZ_VERBOSE") != NULL;
  if (verbose)
    fprintf(stderr, "  %s: %s\n", what, why);
}
