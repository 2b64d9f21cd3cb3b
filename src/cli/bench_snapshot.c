/* bench snapshot: the cost of copy-out. Writes a file-backed origin in
 * sequential requests with no snapshot (the baseline), then with one
 * snapshot (first writes copy every chunk out and commit it; rewrites do
 * not), and times a PROVISION of the whole snapshot. Ratios are against the
 * baseline measured in the same run.
 *
 * Then the thin-pool's break-sharing: a 4K write into the middle of each
 * 64K block of a thin volume, first while its blocks are its own, then
 * right after a thin snapshot (each write breaks one block's sharing);
 * three rounds, each with a new snapshot, the median per-write time of
 * each, and their ratio. Flushes are not timed. Beside it, the floor of any
 * break without extent sharing in the file system: the same file system
 * doing a 4K overwrite against a 64K read plus a 64K write into fresh space
 * of a plain file, through pread/pwrite, and, where the file system shares
 * extents (XFS with reflink, btrfs), against a 64K FICLONERANGE plus a 4K
 * write into the clone: the floor of a break by cloning, which is what the
 * pool does there. */
#include "cli/cli.h"

#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

struct bench_ctx {
  char dir[PATH_MAX];
  uint64_t size, io;
  uint64_t bs;        /* thin block size */
  unsigned char *buf; /* max(io, bs) bytes */
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

/* ---- thin break-sharing ---- */

/* A pool over thin-MODE.meta and thin-MODE.data breaking sharing as
 * break_clone `mode` says, with one volume. */
static ts_stack *thin_open(struct bench_ctx *c, unsigned rounds, const char *mode)
{
  char json[1024];
  snprintf(
      json, sizeof json,
      "{\"version\":1,\"layers\":{"
      "\"meta\":{\"type\":\"file\",\"path\":\"thin-%s.meta\",\"size\":\"64M\",\"create\":true},"
      "\"data\":{\"type\":\"file\",\"path\":\"thin-%s.data\",\"size\":%llu,\"create\":true},"
      "\"pool\":{\"type\":\"thin-pool\",\"metadata\":\"meta\",\"data\":\"data\","
      "\"block_size\":%llu,\"break_clone\":\"%s\",\"create\":true},"
      "\"v\":{\"type\":\"thin\",\"pool\":\"pool\",\"id\":0,\"size\":%llu,\"create\":true}}}",
      mode, mode, (unsigned long long)(c->size * (rounds + 2)), (unsigned long long)c->bs, mode,
      (unsigned long long)c->size);
  ts_stack *s = NULL;
  ts_error err = { 0 };
  if (ts_stack_open_string(json, c->dir, NULL, &s, &err)) {
    ts_cli_err("bench snapshot: %s", err.msg);
    return NULL;
  }
  return s;
}

/* One 4K write at `at` within every thin block; microseconds per write or -1. */
static double write_4k_per_block(struct bench_ctx *c, ts_dev *d, uint64_t at)
{
  double t = ts_cli_now();
  uint64_t n = 0;
  for (uint64_t off = 0; off < c->size; off += c->bs, n++) {
    c->buf[0] = (unsigned char)n;
    if (ts_pwrite(d, c->buf, 4096, off + at, 0))
      return -1;
  }
  return (ts_cli_now() - t) * 1e6 / (double)n;
}

static int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* The file system alone, `blocks` thin-sized blocks: microseconds per 4K
 * overwrite of a written block (*own), per block read plus block write of it
 * into a fresh part of the file (*copy), and per block clone plus 4K write
 * into the clone (*clone; -1 where the file system does not clone). */
static int fs_floor(struct bench_ctx *c, uint64_t blocks, double *own, double *copy, double *clone)
{
  char p[PATH_MAX + 16];
  snprintf(p, sizeof p, "%s/floor.img", c->dir);
  int fd = open(p, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    return -1;
  unlink(p);
  const off_t bs = (off_t)c->bs;
  int r = 0;
  for (uint64_t i = 0; i < blocks && !r; i++)
    r = pwrite(fd, c->buf, (size_t)bs, (off_t)i * bs) == bs ? 0 : -1;
  r = r || fdatasync(fd);
  double t = ts_cli_now();
  for (uint64_t i = 0; i < blocks && !r; i++)
    r = pwrite(fd, c->buf, 4096, (off_t)i * bs + 4096) == 4096 ? 0 : -1;
  *own = (ts_cli_now() - t) * 1e6 / (double)blocks;
  r = r || fdatasync(fd);
  t = ts_cli_now();
  for (uint64_t i = 0; i < blocks && !r; i++)
    r = pread(fd, c->buf, (size_t)bs, (off_t)i * bs) == bs &&
                pwrite(fd, c->buf, (size_t)bs, (off_t)(blocks + i) * bs) == bs
            ? 0
            : -1;
  *copy = (ts_cli_now() - t) * 1e6 / (double)blocks;
  r = r || fdatasync(fd);
  t = ts_cli_now();
  *clone = -1;
  for (uint64_t i = 0; i < blocks && !r; i++) {
    struct file_clone_range fcr = { .src_fd = fd,
                                    .src_offset = (uint64_t)(i * bs),
                                    .src_length = (uint64_t)bs,
                                    .dest_offset = (uint64_t)((2 * blocks + i) * bs) };
    if (ioctl(fd, FICLONERANGE, &fcr) != 0)
      break;
    r = pwrite(fd, c->buf, 4096, (off_t)(2 * blocks + i) * bs + 8192) == 4096 ? 0 : -1;
    if (i + 1 == blocks)
      *clone = (ts_cli_now() - t) * 1e6 / (double)blocks;
  }
  close(fd);
  return r;
}

/* cloned_blocks and copied_blocks of a pool's status. */
static void break_counts(ts_dev *pool, long long *cloned, long long *copied)
{
  char *st = ts_dev_status_json(pool);
  json_t *j = st ? json_loads(st, 0, NULL) : NULL, *pl = json_object_get(j, "layer");
  *copied = json_integer_value(json_object_get(pl, "copied_blocks"));
  *cloned = json_integer_value(json_object_get(pl, "cloned_blocks"));
  json_decref(j);
  free(st);
}

static void remove_thin(struct bench_ctx *c, const char *mode)
{
  char p[PATH_MAX + 32];
  snprintf(p, sizeof p, "%s/thin-%s.meta", c->dir, mode);
  unlink(p);
  snprintf(p, sizeof p, "%s/thin-%s.data", c->dir, mode);
  unlink(p);
}

/* Two pools side by side, one breaking sharing by read, merge and write
 * (break_clone never), one by a clone in the data layer (always; where the
 * file system cannot clone it falls back to the merge), their rounds
 * interleaved so that both see the same load. */
static int bench_break_sharing(struct bench_ctx *c)
{
  enum { ROUNDS = 3, MODES = 2 };
  static const char *const modes[MODES] = { "never", "always" };
  ts_stack *s[MODES] = { NULL, NULL };
  ts_dev *v[MODES], *pool[MODES];
  double own[MODES][ROUNDS], brk[MODES][ROUNDS], fown[ROUNDS], fcopy[ROUNDS], fclone[ROUNDS];
  int status = 0;
  for (int m = 0; m < MODES && !status; m++) {
    if (!(s[m] = thin_open(c, ROUNDS, modes[m]))) {
      status = 1;
      break;
    }
    v[m] = ts_stack_node(s[m], "v");
    pool[m] = ts_stack_node(s[m], "pool");
    /* Map every block first: from then on the volume's blocks are its own. */
    for (uint64_t off = 0; off < c->size && !status; off += c->io)
      status = ts_pwrite(v[m], c->buf, c->io, off, 0) != 0;
    status = status || ts_flush(v[m]) != 0;
  }
  for (unsigned k = 0; k < ROUNDS && !status; k++) {
    for (int m = 0; m < MODES && !status; m++) {
      ts_error err = { 0 };
      /* Different offsets each time, so no write lands where one already did. */
      own[m][k] = write_4k_per_block(c, v[m], 4096 * (2 * k + 1));
      if (own[m][k] < 0 || ts_flush(v[m]) || ts_pool_create_snap(pool[m], k + 1, 0, &err)) {
        ts_cli_err("bench snapshot: thin round %u failed%s%s", k + 1, err.msg[0] ? ": " : "",
                   err.msg);
        status = 1;
        break;
      }
      brk[m][k] = write_4k_per_block(c, v[m], 4096 * (2 * k + 2));
      if (brk[m][k] < 0 || ts_flush(v[m])) {
        ts_cli_err("bench snapshot: thin round %u failed", k + 1);
        status = 1;
      }
    }
    if (!status && fs_floor(c, c->size / c->bs, &fown[k], &fcopy[k], &fclone[k])) {
      ts_cli_err("bench snapshot: the file system floor failed in round %u", k + 1);
      status = 1;
    }
  }
  if (!status) {
    long long cloned[MODES], copied[MODES];
    for (int m = 0; m < MODES; m++) {
      qsort(own[m], ROUNDS, sizeof own[m][0], cmp_double);
      qsort(brk[m], ROUNDS, sizeof brk[m][0], cmp_double);
      break_counts(pool[m], &cloned[m], &copied[m]);
    }
    qsort(fown, ROUNDS, sizeof fown[0], cmp_double);
    qsort(fcopy, ROUNDS, sizeof fcopy[0], cmp_double);
    qsort(fclone, ROUNDS, sizeof fclone[0], cmp_double);
    char k[16], what[96];
    ts_format_size(c->bs, k, sizeof k);
    printf("\nthin, %s blocks, one 4K write per block, median of %d rounds\n", k, ROUNDS);
    printf("%-44s %10s %8s\n", "case", "us/write", "ratio");
    printf("%-44s %10.1f %7.2fx\n", "4K write, unshared block (baseline)", own[0][ROUNDS / 2], 1.0);
    printf("%-44s %10.1f %7.2fx\n", "4K write, shared block, read+merge+write", brk[0][ROUNDS / 2],
           brk[0][ROUNDS / 2] / own[0][ROUNDS / 2]);
    printf("%-44s %10.1f %7.2fx\n", "4K write, unshared block, clone pool (base)",
           own[1][ROUNDS / 2], 1.0);
    printf("%-44s %10.1f %7.2fx\n", "4K write, shared block, clone + 4K write", brk[1][ROUNDS / 2],
           brk[1][ROUNDS / 2] / own[1][ROUNDS / 2]);
    printf("%-44s %10.1f %7.2fx\n", "file system: 4K overwrite (floor baseline)", fown[ROUNDS / 2],
           1.0);
    snprintf(what, sizeof what, "file system: %s read + %s fresh write", k, k);
    printf("%-44s %10.1f %7.2fx\n", what, fcopy[ROUNDS / 2], fcopy[ROUNDS / 2] / fown[ROUNDS / 2]);
    snprintf(what, sizeof what, "file system: %s clone + 4K write", k);
    if (fclone[0] >= 0)
      printf("%-44s %10.1f %7.2fx\n", what, fclone[ROUNDS / 2],
             fclone[ROUNDS / 2] / fown[ROUNDS / 2]);
    else
      printf("%-44s %10s %8s\n", what, "no clone", "-");
    printf("broken blocks cloned by the data layer: %lld of %lld (clone pool)\n", cloned[1],
           copied[1]);
  }
  for (int m = 0; m < MODES; m++) {
    ts_stack_close(s[m], NULL);
    remove_thin(c, modes[m]);
  }
  return status;
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
  struct bench_ctx c = { .size = 64ull << 20, .io = 64 << 10, .bs = 64 << 10 };
  const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
      if (!ts_cli_size("--size", argv[++i], &c.size))
        return 2;
    } else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
      tmp = argv[++i];
    } else if (strcmp(argv[i], "--block-size") == 0 && i + 1 < argc) {
      if (!ts_cli_size("--block-size", argv[++i], &c.bs))
        return 2;
      if (c.bs < (64 << 10) || c.bs > (1 << 30) || c.bs % (64 << 10)) {
        ts_cli_err("bench snapshot: --block-size must be a multiple of 64K up to 1G");
        return 2;
      }
    } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      printf("usage: thinstack bench snapshot [--size SIZE] [--dir DIR] [--block-size SIZE]\n"
             "  origin writes with and without a snapshot (copy-out cost), and a thin\n"
             "  pool's break of sharing (--block-size: its block size, default 64K)\n");
      return 0;
    } else {
      ts_cli_err("bench snapshot: usage: [--size SIZE] [--dir DIR] [--block-size SIZE]");
      return 2;
    }
  }
  if (c.size < c.bs || c.size % c.bs) {
    ts_cli_err("bench snapshot: --size must be a multiple of the block size");
    return 2;
  }
  snprintf(c.dir, sizeof c.dir, "%s/ts-bench-snap-XXXXXX", tmp);
  if (!mkdtemp(c.dir)) {
    ts_cli_err("bench snapshot: cannot create a folder under %s", tmp);
    return 1;
  }
  size_t blen = (size_t)(c.bs > c.io ? c.bs : c.io);
  c.buf = malloc(blen);
  if (!c.buf)
    return 1;
  memset(c.buf, 0x5a, blen);
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
  if (!status)
    status = bench_break_sharing(&c);
  free(c.buf);
  rmdir(c.dir);
  return status;
}
