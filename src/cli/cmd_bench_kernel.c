/* bench kernel: what each kernel path of the kernel layer costs on a loop
 * device over a sparse file, against writing zeroes through the same device
 * (the baseline, measured in the same run). Attaches its own loop device
 * (root) unless --device names one. */
#include "cli/cli.h"

#include <libthinstack/layer.h>

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct kb_row {
  const char *what;
  const char *path;  /* kernel path, from the layer's status */
  double secs;
  uint64_t grown;    /* bytes the backing file grew by */
  int err;
};

static uint64_t kb_alloc(const char *file)
{
  struct stat st;
  return file && stat(file, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

static ts_stack *kb_open(const char *path, const char *provision)
{
  char json[1024];
  snprintf(json, sizeof json,
           "{\"version\": 1, \"layers\": {\"k\": {\"type\": \"kernel\", \"path\": \"%s\", "
           "\"provision\": \"%s\"}}, \"exports\": [\"k\"]}", path, provision);
  ts_stack *s = NULL;
  ts_error err = { 0 };
  if (ts_stack_open_string(json, NULL, NULL, &s, &err)) {
    ts_cli_err("bench kernel: %s", err.msg);
    return NULL;
  }
  return s;
}

/* Time one op over [off, off+len) and a FLUSH after it. */
static void kb_run(struct kb_row *row, ts_dev *d, const char *backing, int op, uint32_t flags,
                   uint64_t off, uint64_t len)
{
  uint64_t before = kb_alloc(backing);
  double t0 = ts_cli_now();
  int r = 0;
  if (op == TS_OP_WRITE) {
    for (uint64_t o = 0; o < len && !r; o += TS_ZERO_BUF_SIZE)
      r = ts_pwrite(d, ts_zero_buffer(), TS_ZERO_BUF_SIZE, off + o, 0);
  } else {
    ts_io io = { .op = (uint32_t)op, .flags = flags, .offset = off, .length = len };
    r = ts_submit(d, &io);
  }
  if (!r)
    r = ts_flush(d);
  row->secs = ts_cli_now() - t0;
  row->err = r;
  uint64_t after = kb_alloc(backing);
  row->grown = after > before ? after - before : 0;
}

static void kb_print(const struct kb_row *rows, int n, uint64_t len)
{
  printf("%-30s %-32s %9s %10s %9s %10s\n", "operation", "kernel path", "seconds", "MiB/s",
         "speedup", "file grew");
  double base = rows[0].secs;
  for (int i = 0; i < n; i++) {
    const struct kb_row *r = &rows[i];
    if (r->err) {
      printf("%-30s %-32s %9s %10s %9s %10s  (%s)\n", r->what, r->path, "-", "-", "-", "-",
             ts_err_name(r->err));
      continue;
    }
    char grew[32];
    ts_format_size(r->grown, grew, sizeof grew);
    printf("%-30s %-32s %9.4f %10.0f %8.1fx %10s\n", r->what, r->path, r->secs,
           (double)len / (1 << 20) / (r->secs > 0 ? r->secs : 1e-9),
           r->secs > 0 ? base / r->secs : 0.0, grew);
  }
}

/* The kernel path a ladder is on, from the layer's status. */
static const char *kb_path(ts_dev *d, const char *ladder, char *buf, size_t len)
{
  char *s = ts_dev_status_json(d);
  json_t *st = s ? json_loads(s, 0, NULL) : NULL;
  json_t *v = json_object_get(
      json_object_get(json_object_get(json_object_get(st, "layer"), "ops"), ladder), "path");
  snprintf(buf, len, "%s", json_is_string(v) ? json_string_value(v) : "?");
  json_decref(st);
  free(s);
  return buf;
}

int ts_cli_bench_kernel(int argc, char **argv)
{
  const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  const char *device = NULL;
  uint64_t len = 256ull << 20;
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      printf("usage: thinstack bench kernel [--device DEV] [--size SIZE] [--dir DIR]\n"
             "  kernel layer paths on a loop device against writing zeroes\n");
      return 0;
    }
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) base = argv[++i];
    else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) device = argv[++i];
    else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
      if (!ts_cli_size("--size", argv[++i], &len)) return 2;
    } else {
      ts_cli_err("bench kernel: unknown argument %s", argv[i]);
      return 2;
    }
  }
  if (len < TS_ZERO_BUF_SIZE || len % TS_ZERO_BUF_SIZE) {
    ts_cli_err("bench kernel: --size must be a multiple of 1M");
    return 2;
  }
  if (!device && geteuid() != 0) {
    ts_cli_err("bench kernel: attaching a loop device needs root (or pass --device DEV)");
    return 1;
  }
  char dir[PATH_MAX] = "", img[PATH_MAX] = "", loop[128] = "", cmd[PATH_MAX + 64];
  int status = 1;
  if (!device) {
    snprintf(dir, sizeof dir, "%s/thinstack-bench-XXXXXX", base);
    if (!mkdtemp(dir)) {
      ts_cli_err("bench kernel: cannot create a folder in %s: %s", base, strerror(errno));
      return 1;
    }
    snprintf(img, sizeof img, "%s/backing.img", dir);
    FILE *f = fopen(img, "w");
    if (!f || ftruncate(fileno(f), (off_t)(len * 6)) != 0) {
      ts_cli_err("bench kernel: cannot create %s: %s", img, strerror(errno));
      if (f)
        fclose(f);
      goto out;
    }
    fclose(f);
    snprintf(cmd, sizeof cmd, "losetup -f --show '%s'", img);
    FILE *p = popen(cmd, "r");
    bool ok = p && fgets(loop, sizeof loop, p);
    if (p && pclose(p) != 0)
      ok = false;
    loop[strcspn(loop, "\n")] = '\0';
    if (!ok) {
      ts_cli_err("bench kernel: losetup failed for %s", img);
      goto out;
    }
    device = loop;
  }

  ts_stack *s = kb_open(device, "emulate");
  if (!s)
    goto out;
  ts_dev *d = ts_stack_dev(s, "k");
  if (ts_dev_size(d) < len * 5) {
    ts_cli_err("bench kernel: %s is smaller than 5 x --size", device);
    ts_stack_close(s, NULL);
    goto out;
  }
  const char *backing = img[0] ? img : NULL;
  char p1[64], p2[64], p3[64], p4[64];
  struct kb_row rows[6] = {
    { "write zero buffers (baseline)", "pwritev2", 0, 0, 0 },
    { "write_zeroes", kb_path(d, "write_zeroes", p1, sizeof p1), 0, 0, 0 },
    { "write_zeroes may_unmap", kb_path(d, "write_zeroes_may_unmap", p2, sizeof p2), 0, 0, 0 },
    { "provision (\"emulate\") may_zero", kb_path(d, "provision", p3, sizeof p3), 0, 0, 0 },
    { "discard", "ioctl(BLKDISCARD)", 0, 0, 0 },
    { "provision (\"auto\")", "unsupported", 0, 0, 0 },
  };
  kb_run(&rows[0], d, backing, TS_OP_WRITE, 0, 0, len);
  kb_run(&rows[1], d, backing, TS_OP_WRITE_ZEROES, 0, len, len);
  kb_run(&rows[2], d, backing, TS_OP_WRITE_ZEROES, TS_IO_MAY_UNMAP, len, len);
  /* The emulated rung zeroes, so it takes only a caller holding nothing. */
  kb_run(&rows[3], d, backing, TS_OP_PROVISION, TS_IO_MAY_ZERO, 2 * len, len);
  kb_run(&rows[4], d, backing, TS_OP_DISCARD, 0, 0, len);
  ts_stack_close(s, NULL);
  s = kb_open(device, "auto");
  if (s) {
    d = ts_stack_dev(s, "k");
    rows[5].path = kb_path(d, "provision", p4, sizeof p4);
    kb_run(&rows[5], d, backing, TS_OP_PROVISION, 0, 3 * len, len);
    ts_stack_close(s, NULL);
  }
  printf("kernel layer on %s (%s), %llu MiB per operation, each followed by a flush\n", device,
         backing ? "loop over a sparse file" : "given device",
         (unsigned long long)(len >> 20));
  kb_print(rows, 6, len);

  if (backing) {
    /* The same sparse file given to the layer directly: rung 2. */
    s = kb_open(img, "auto");
    if (s) {
      struct kb_row frow = { "provision on the file itself", "fallocate(KEEP_SIZE)", 0, 0, 0 };
      kb_run(&frow, ts_stack_dev(s, "k"), backing, TS_OP_PROVISION, 0, 4 * len, len);
      ts_stack_close(s, NULL);
      struct kb_row both[2] = { rows[0], frow };
      printf("\n");
      kb_print(both, 2, len);
    }
  }
  status = 0;
out:
  if (loop[0]) {
    snprintf(cmd, sizeof cmd, "losetup -d %s", loop);
    if (system(cmd) != 0)
      ts_cli_err("bench kernel: could not detach %s", loop);
  }
  if (img[0])
    unlink(img);
  if (dir[0])
    rmdir(dir);
  return status;
}
