/* -p/--progress: how far a long command has come, as qemu-img convert -p
 * and nbdcopy --progress show it. One command runs per process, so the
 * state is one static record; only the thread that runs the command (or
 * the sampler below, never both) updates it. */
#include "cli/cli.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static struct {
  bool on;         /* -p or --progress given */
  int fd;          /* where the lines go: stderr, or --progress=FD */
  bool tty;        /* in place (\r) rather than one line per update */
  double interval; /* seconds between updates */
  double last;     /* when the last line was printed */
  long shown;      /* hundredths of a percent last printed; -1 none */
  uint64_t total;
  bool finished;
} pg = { .fd = STDERR_FILENO, .shown = -1 };

bool ts_cli_progress_opt(const char *arg)
{
  if (strcmp(arg, "-p") == 0 || strcmp(arg, "--progress") == 0) {
    pg.on = true;
    return true;
  }
  if (strncmp(arg, "--progress=", 11) == 0) {
    char *end;
    long fd = strtol(arg + 11, &end, 10);
    if (end == arg + 11 || *end || fd < 0 || fd > 1 << 20)
      return false; /* the command calls it an unknown option */
    pg.on = true;
    pg.fd = (int)fd;
    return true;
  }
  return false;
}

bool ts_cli_progress_on(void) { return pg.on; }

/* Its own clock, so that the file links alone beside cmd_replay.c. */
static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void show(long hundredths)
{
  char line[64];
  int n = snprintf(line, sizeof line, "    (%ld.%02ld/100%%)%s", hundredths / 100, hundredths % 100,
                   pg.tty ? "\r" : "\n");
  if (pg.tty && hundredths == 10000)
    line[n - 1] = '\n'; /* the finished line stays */
  /* A progress line that cannot be written is not the command's failure. */
  for (int w = 0; w < n;) {
    ssize_t k = write(pg.fd, line + w, (size_t)(n - w));
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      break;
    w += (int)k;
  }
  pg.shown = hundredths;
  pg.last = now();
}

void ts_cli_progress_begin(uint64_t total)
{
  if (!pg.on)
    return;
  pg.total = total;
  pg.tty = isatty(pg.fd) == 1;
  pg.shown = -1;
  pg.finished = false;
  /* TS_PROGRESS_INTERVAL (seconds) changes the 0.1 s between updates; the
   * tests use it to see many updates of a short run. */
  const char *iv = getenv("TS_PROGRESS_INTERVAL");
  pg.interval = iv ? strtod(iv, NULL) : 0.1;
  if (!(pg.interval >= 0))
    pg.interval = 0.1;
  show(0);
}

void ts_cli_progress_set(uint64_t done)
{
  if (!pg.on || pg.finished || pg.shown < 0)
    return;
  if (done > pg.total)
    done = pg.total;
  /* 100% is only said by _end, when the work is done. */
  long h = pg.total ? (long)((double)done * 10000.0 / (double)pg.total) : 0;
  if (h > 9999)
    h = 9999;
  if (h <= pg.shown || now() - pg.last < pg.interval)
    return;
  show(h);
}

void ts_cli_progress_end(bool ok)
{
  if (!pg.on || pg.finished || pg.shown < 0)
    return;
  pg.finished = true;
  if (ok)
    show(10000);
  else if (pg.tty)
    (void)!write(pg.fd, "\n", 1); /* leave the last figure, end its line */
}

/* The sampler: progress of a library call that reports none (check, dump,
 * restore), from the bytes this process has read (/proc/self/io rchar)
 * against what the call will read about. */
static struct {
  pthread_t thread;
  bool running;
  _Atomic bool stop;
  uint64_t base;
} smp;

static uint64_t rchar(void)
{
  FILE *f = fopen("/proc/self/io", "r");
  char line[128];
  unsigned long long v = 0;
  if (!f)
    return 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "rchar: %llu", &v) == 1)
      break;
  fclose(f);
  return v;
}

static void *sampler(void *arg)
{
  (void)arg;
  while (!smp.stop) {
    uint64_t now = rchar();
    ts_cli_progress_set(now > smp.base ? now - smp.base : 0);
    usleep(20000);
  }
  return NULL;
}

void ts_cli_progress_sample_reads(uint64_t expected)
{
  if (!pg.on)
    return;
  ts_cli_progress_begin(expected);
  smp.base = rchar();
  smp.stop = false;
  smp.running = pthread_create(&smp.thread, NULL, sampler, NULL) == 0;
}

void ts_cli_progress_sample_end(bool ok)
{
  if (smp.running) {
    smp.stop = true;
    pthread_join(smp.thread, NULL);
    smp.running = false;
  }
  ts_cli_progress_end(ok);
}
