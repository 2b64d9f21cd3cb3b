/* bench snapshot: the cost of copy-out. Writes a file-backed origin in
 * sequential requests with no snapshot (the baseline), then with one
 * snapshot (first writes copy every chunk out and commit it; rewrites do
 * not), and times a PROVISION of the whole snapshot. Ratios are against the
 * baseline measured in the same run. */
#include "cli/cli.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct bench_ctx {
  char dir[PATH_MAX];
  uint64_t size, io;
  unsigned char *buf;
};

static ts_stack *bench_open(struct bench_ctx *c, const char *chunk)
{
  char json[1024];
  if (chunk)
    snprintf(json, sizeof json,
             "{\"version\":1,\"layers\":{"
             "\"base\":{\"type\":\"file\",\"path\":\"base.img\",\"size\":%llu,\"create\":true},"
             "\"cow\":{\"type\":\"file\",\"path\":\"cow.img\",\"size\":%llu,\"create\":true},"
             "\"origin\":{\"type\":\"snapshot-origin\",\"child\":\"base\"},"
             "\"snap\":{\"type\":\"snapshot\",\"origin\":\"origin\",\"cow\":\"cow\","
             "\"chunk_size\":\"%s\",\"create\":true}}}",
             (unsigned long long)c->size, (unsigned long long)(c->size + c->size / 8 + (1 << 20)),
             chunk);
  else
    snprintf(json, sizeof json,
             "{\"version\":1,\"layers\":{"
             "\"base\":{\"type\":\"file\",\"path\":\"base.img\",\"size\":%llu,\"create\":true},"
             "\"origin\":{\"type\":\"snapshot-origin\",\"child\":\"base\"}}}",
             (unsigned long long)c->size);
  ts_stack *s = NULL;
  ts_error err = { 0 };
  if (ts_stack_open_string(json, c->dir, NULL, &s, &err)) {
    ts_cli_err("bench snapshot: %s", err.msg);
    return NULL;
  }
  return s;
}

/* Sequential writes of the whole device plus a flush; MiB/s or -1. */
static double write_all(struct bench_ctx *c, ts_dev *d)
{
  double t = ts_cli_now();
  for (uint64_t off = 0; off < c->size; off += c->io) {
    c->buf[0] = (unsigned char)(off >> 16); /* not all-equal chunks */
    if (ts_pwrite(d, c->buf, c->io, off, 0))
      return -1;
  }
  if (ts_flush(d))
    return -1;
  return (double)c->size / (1 << 20) / (ts_cli_now() - t);
}

static void remove_files(struct bench_ctx *c)
{
  char p[PATH_MAX + 16];
  snprintf(p, sizeof p, "%s/base.img", c->dir);
  unlink(p);
  snprintf(p, sizeof p, "%s/cow.img", c->dir);
  unlink(p);
}

static void row(const char *what, double mibs, double base)
{
  if (mibs < 0)
    printf("%-44s %10s %8s\n", what, "failed", "-");
  else
    printf("%-44s %10.1f %7.2fx\n", what, mibs, mibs / base);
}

int ts_cli_bench_snapshot(int argc, char **argv)
{
  struct bench_ctx c = { .size = 64ull << 20, .io = 64 << 10 };
  const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
      if (!ts_cli_size("--size", argv[++i], &c.size))
        return 2;
    } else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
      tmp = argv[++i];
    } else {
      ts_cli_err("bench snapshot: usage: [--size SIZE] [--dir DIR]");
      return 2;
    }
  }
  if (c.size < c.io || c.size % c.io) {
    ts_cli_err("bench snapshot: --size must be a multiple of 64K");
    return 2;
  }
  snprintf(c.dir, sizeof c.dir, "%s/ts-bench-snap-XXXXXX", tmp);
  if (!mkdtemp(c.dir)) {
    ts_cli_err("bench snapshot: cannot create a folder under %s", tmp);
    return 1;
  }
  c.buf = malloc(c.io);
  if (!c.buf)
    return 1;
  memset(c.buf, 0x5a, c.io);
  printf("origin %llu MiB, 64K sequential writes + flush, files in %s\n",
         (unsigned long long)(c.size >> 20), tmp);
  printf("%-44s %10s %8s\n", "case", "MiB/s", "ratio");

  int status = 0;
  ts_stack *s = bench_open(&c, NULL);
  if (!s)
    status = 1;
  double base = s ? write_all(&c, ts_stack_node(s, "origin")) : -1;
  double again = s && base > 0 ? write_all(&c, ts_stack_node(s, "origin")) : -1;
  ts_stack_close(s, NULL);
  remove_files(&c);
  if (base <= 0)
    status = 1;
  else {
    row("origin, no snapshot, first write (baseline)", base, base);
    row("origin, no snapshot, rewrite", again, base);
  }

  static const char *const chunks[] = { "4K", "64K" };
  for (int k = 0; k < 2 && !status; k++) {
    char what[64];
    s = bench_open(&c, chunks[k]);
    if (!s) {
      status = 1;
      break;
    }
    snprintf(what, sizeof what, "origin, 1 snapshot, %s chunks, first write", chunks[k]);
    row(what, write_all(&c, ts_stack_node(s, "origin")), base);
    snprintf(what, sizeof what, "origin, 1 snapshot, %s chunks, rewrite", chunks[k]);
    row(what, write_all(&c, ts_stack_node(s, "origin")), base);
    ts_stack_close(s, NULL);
    remove_files(&c);

    s = bench_open(&c, chunks[k]);
    if (!s) {
      status = 1;
      break;
    }
    double t = ts_cli_now();
    int r = ts_provision(ts_stack_node(s, "snap"), 0, c.size);
    double mibs = r ? -1 : (double)c.size / (1 << 20) / (ts_cli_now() - t);
    snprintf(what, sizeof what, "snapshot provision, %s chunks (copies)", chunks[k]);
    row(what, mibs, base);
    ts_stack_close(s, NULL);
    remove_files(&c);
  }
  free(c.buf);
  rmdir(c.dir);
  return status;
}
