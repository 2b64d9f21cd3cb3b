/* Range commands on one device: read, write, provision, discard, zero,
 * flush, map. */
#include "cli/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK (4u << 20)
/* Zero detection granule: a file system block, the unit a hole can have. */
#define ZGRAN 4096u

static bool all_zero(const char *p, size_t n)
{
  return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

static int pwrite_all(int fd, const char *p, size_t n, uint64_t at)
{
  while (n) {
    ssize_t k = pwrite(fd, p, n, (off_t)at);
    if (k < 0)
      return -errno;
    p += k;
    n -= (size_t)k;
    at += (uint64_t)k;
  }
  return 0;
}

/* Device [from, to) to the file at from - base, writing only the granules
 * that are not all zeroes: the file's holes stay holes. */
static int read_data(ts_dev *d, int fd, uint64_t from, uint64_t to, uint64_t base, char *buf)
{
  for (uint64_t pos = from; pos < to;) {
    size_t n = to - pos < CHUNK ? (size_t)(to - pos) : CHUNK;
    ts_cli_progress_set(pos - base);
    int r = ts_pread(d, buf, n, pos);
    if (r)
      return r;
    for (size_t x = 0; x < n;) {
      size_t y = x;
      while (y < n && !all_zero(buf + y, n - y < ZGRAN ? n - y : ZGRAN))
        y += n - y < ZGRAN ? n - y : ZGRAN;
      if (y > x && (r = pwrite_all(fd, buf + x, y - x, pos + x - base)))
        return r;
      x = y;
      while (x < n && all_zero(buf + x, n - x < ZGRAN ? n - x : ZGRAN))
        x += n - x < ZGRAN ? n - x : ZGRAN;
    }
    pos += n;
  }
  return 0;
}

/* A regular output file keeps holes: what the device reports as a hole or
 * zeroes is never read, and the file gets its length at the end. */
static int read_sparse(ts_dev *d, int fd, uint64_t off, uint64_t len, char *buf)
{
  uint64_t pos = off, end = off + len;
  ts_extent_list l = { 0 };
  int r = 0;
  while (!r && pos < end) {
    ts_extent_list_reset(&l);
    if ((r = ts_block_status_bounded(d, pos, end - pos, 0, &l)))
      break;
    if (l.n == 0) {
      r = -EIO;
      break;
    }
    for (size_t i = 0; !r && i < l.n && pos < end; i++) {
      uint64_t e = l.v[i].offset + l.v[i].length;
      if (e > end)
        e = end;
      if (e <= pos)
        continue;
      if (!(l.v[i].flags & (TS_EXTENT_HOLE | TS_EXTENT_ZERO)))
        r = read_data(d, fd, pos, e, off, buf);
      pos = e;
      ts_cli_progress_set(pos - off);
    }
  }
  ts_extent_list_free(&l);
  if (!r && ftruncate(fd, (off_t)len))
    r = -errno;
  return r;
}

/* Positionals and "-o FILE"-style options with a value. */
struct args {
  char *pos[4];
  int npos;
  const char *in, *out;
  bool json, fua, may_unmap, no_fallback, may_zero, no_sparse;
};

static bool parse(int argc, char **argv, struct args *a, int minpos, int maxpos)
{
  memset(a, 0, sizeof *a);
  for (int i = 1; i < argc; i++) {
    const char *s = argv[i];
    if ((strcmp(s, "-o") == 0 || strcmp(s, "-i") == 0) && i + 1 < argc) {
      if (s[1] == 'o')
        a->out = argv[++i];
      else
        a->in = argv[++i];
    } else if (strcmp(s, "--json") == 0)
      a->json = true;
    else if (strcmp(s, "--fua") == 0)
      a->fua = true;
    else if (strcmp(s, "--may-unmap") == 0)
      a->may_unmap = true;
    else if (strcmp(s, "--no-fallback") == 0)
      a->no_fallback = true;
    else if (strcmp(s, "--may-zero") == 0)
      a->may_zero = true;
    else if (strcmp(s, "--no-sparse") == 0)
      a->no_sparse = true;
    else if (s[0] == '-' && s[1]) {
      ts_cli_err("%s: unknown option %s", argv[0], s);
      return false;
    } else if (a->npos == maxpos) {
      ts_cli_err("%s: unexpected argument \"%s\"", argv[0], s);
      return false;
    } else {
      a->pos[a->npos++] = argv[i];
    }
  }
  if (a->npos < minpos) {
    ts_cli_usage(stderr, argv[0]);
    return false;
  }
  if (a->no_sparse && strcmp(argv[0], "write") != 0) {
    ts_cli_err("%s: --no-sparse goes with write", argv[0]);
    return false;
  }
  return true;
}

static int report(const char *what, ts_dev *d, int r)
{
  if (r && ts_last_errno() == r && ts_last_error())
    ts_cli_err("%s on %s failed: %s: %s (%s)", what, ts_dev_name(d), ts_last_error(),
               ts_strerror(r), ts_err_name(r));
  else if (r)
    ts_cli_err("%s on %s failed: %s (%s)", what, ts_dev_name(d), ts_strerror(r), ts_err_name(r));
  return r ? 1 : 0;
}

int ts_cli_read(int argc, char **argv)
{
  struct args a;
  uint64_t off, len;
  if (ts_cli_help(argc, argv))
    return 0;
  if (!parse(argc, argv, &a, 4, 4) || !ts_cli_size("OFFSET", a.pos[2], &off) ||
      !ts_cli_size("LENGTH", a.pos[3], &len))
    return 2;
  int fd = STDOUT_FILENO;
  if (a.out && (fd = open(a.out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0) {
    ts_cli_err("%s: cannot write: %s", a.out, strerror(errno));
    return 1;
  }
  ts_stack *s;
  ts_dev *d = ts_cli_open_dev(a.pos[0], a.pos[1], TS_OPEN_READ_ONLY, &s);
  if (!d) {
    if (a.out) close(fd);
    return 1;
  }
  char *buf = malloc(CHUNK);
  int r = buf ? 0 : -ENOMEM;
  struct stat st;
  uint64_t lbs = ts_dev_limits(d)->logical_block_size;
  ts_cli_progress_begin(len);
  /* Unaligned ranges take the plain path, whose request says why it fails. */
  if (!r && a.out && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && off % lbs == 0 &&
      len % lbs == 0) {
    r = read_sparse(d, fd, off, len, buf);
    len = 0;
  }
  for (uint64_t done = 0; !r && done < len;) {
    size_t n = len - done < CHUNK ? (size_t)(len - done) : CHUNK;
    r = ts_pread(d, buf, n, off + done);
    for (size_t w = 0; !r && w < n;) {
      ssize_t k = write(fd, buf + w, n - w);
      if (k < 0) r = -errno; else w += (size_t)k;
    }
    done += n;
    ts_cli_progress_set(done);
  }
  ts_cli_progress_end(r == 0);
  free(buf);
  if (a.out) close(fd);
  return ts_cli_close(s, report("read", d, r));
}

/* buf to the device at `at`, granules of zeroes as WRITE_ZEROES that may
 * unmap, so a zero buffer never becomes allocated data; with g == 0 all of
 * it as data (--no-sparse). */
static int write_runs(ts_dev *d, const char *buf, size_t n, uint64_t at, size_t g, uint32_t fua)
{
  if (!g)
    return ts_pwrite(d, buf, n, at, fua);
  for (size_t x = 0; x < n;) {
    bool zero = all_zero(buf + x, n - x < g ? n - x : g);
    size_t y = x;
    while (y < n && all_zero(buf + y, n - y < g ? n - y : g) == zero)
      y += n - y < g ? n - y : g;
    int r = zero ? ts_write_zeroes(d, at + x, y - x, TS_IO_MAY_UNMAP | fua)
                 : ts_pwrite(d, buf + x, y - x, at + x, fua);
    if (r)
      return r;
    x = y;
  }
  return 0;
}

/* A regular input file: its holes (SEEK_HOLE) are zeroed on the device
 * without being read, its data goes through write_runs. With g == 0 every
 * byte is read and written as data. */
static int write_sparse(ts_dev *d, int fd, uint64_t size, uint64_t off, uint64_t lbs, char *buf,
                        size_t g, uint32_t fua)
{
  for (uint64_t pos = 0; pos < size;) {
    off_t data = g ? lseek(fd, (off_t)pos, SEEK_DATA) : (off_t)pos;
    if (data < 0)
      data = errno == ENXIO ? (off_t)size : (off_t)pos;
    uint64_t hole = ((uint64_t)data - pos) / lbs * lbs;
    if (hole) {
      int r = ts_write_zeroes(d, off + pos, hole, TS_IO_MAY_UNMAP | fua);
      if (r)
        return r;
      pos += hole;
      ts_cli_progress_set(pos);
      continue;
    }
    off_t h = g ? lseek(fd, (off_t)pos, SEEK_HOLE) : (off_t)size;
    uint64_t end = h < 0 ? size : (uint64_t)h;
    /* At least one block, so a hole shorter than a block is read as data. */
    if (end < pos + lbs)
      end = pos + lbs;
    end = (end + lbs - 1) / lbs * lbs;
    if (end > size)
      end = size;
    while (pos < end) {
      size_t n = end - pos < CHUNK ? (size_t)(end - pos) : CHUNK;
      for (size_t got = 0; got < n;) {
        ssize_t k = pread(fd, buf + got, n - got, (off_t)(pos + got));
        if (k < 0)
          return -errno;
        if (k == 0)
          return -EIO; /* the file shrank under us */
        got += (size_t)k;
      }
      int r = write_runs(d, buf, n, off + pos, g, fua);
      if (r)
        return r;
      pos += n;
      ts_cli_progress_set(pos);
    }
  }
  return 0;
}

int ts_cli_write(int argc, char **argv)
{
  struct args a;
  uint64_t off;
  if (ts_cli_help(argc, argv))
    return 0;
  if (!parse(argc, argv, &a, 3, 3) || !ts_cli_size("OFFSET", a.pos[2], &off))
    return 2;
  if (!a.in) {
    ts_cli_err("write: -i FILE is required (\"-\" for stdin)");
    return 2;
  }
  int fd = strcmp(a.in, "-") == 0 ? STDIN_FILENO : open(a.in, O_RDONLY);
  if (fd < 0) {
    ts_cli_err("%s: cannot read: %s", a.in, strerror(errno));
    return 1;
  }
  ts_stack *s;
  ts_dev *d = ts_cli_open_dev(a.pos[0], a.pos[1], 0, &s);
  if (!d) {
    close(fd);
    return 1;
  }
  char *buf = malloc(CHUNK);
  int r = buf ? 0 : -ENOMEM;
  uint64_t lbs = ts_dev_limits(d)->logical_block_size, total = 0;
  uint32_t fua = a.fua ? TS_IO_FUA : 0;
  size_t g = a.no_sparse ? 0 : lbs > ZGRAN ? lbs : ZGRAN;
  struct stat st;
  if (!r && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
    if ((uint64_t)st.st_size % lbs) {
      ts_cli_err("write: the input's length is not a multiple of the block size %llu",
                 (unsigned long long)lbs);
      r = -EINVAL;
    } else {
      ts_cli_progress_begin((uint64_t)st.st_size);
      r = write_sparse(d, fd, (uint64_t)st.st_size, off, lbs, buf, g, fua);
      ts_cli_progress_end(r == 0);
    }
    free(buf);
    buf = NULL;
    if (fd != STDIN_FILENO)
      close(fd);
    return ts_cli_close(s, report("write", d, r));
  }
  /* From a pipe the amount is unknown: 0%, then 100% when it ends. */
  ts_cli_progress_begin(0);
  while (!r) {
    size_t n = 0;
    while (n < CHUNK) {
      ssize_t k = read(fd, buf + n, CHUNK - n);
      if (k < 0) { r = -errno; break; }
      if (k == 0) break;
      n += (size_t)k;
    }
    if (r || n == 0)
      break;
    if (n % lbs) {
      ts_cli_err("write: the input's length is not a multiple of the block size %llu",
                 (unsigned long long)lbs);
      r = -EINVAL;
      break;
    }
    r = write_runs(d, buf, n, off + total, g, fua);
    total += n;
  }
  ts_cli_progress_end(r == 0);
  free(buf);
  if (fd != STDIN_FILENO) close(fd);
  return ts_cli_close(s, report("write", d, r));
}

void ts_cli_range_done(bool json, const char *cmd, const char *dev, uint64_t off, uint64_t len,
                       double seconds)
{
  char sz[32];
  ts_format_size(len, sz, sizeof sz);
  fprintf(stderr, "%s %s at %llu on %s: %.3f s\n", cmd, sz, (unsigned long long)off, dev, seconds);
  if (!json)
    return;
  const char *key = !strcmp(cmd, "provision") ? "provisioned"
                    : !strcmp(cmd, "discard") ? "discarded"
                                              : "zeroed";
  json_t *o = json_pack("{s:{s:s, s:I, s:I, s:f}}", key, "dev", dev, "offset", (json_int_t)off,
                        "length", (json_int_t)len, "seconds", seconds);
  char *txt = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  printf("%s\n", txt ? txt : "null");
  free(txt);
  json_decref(o);
}

int ts_cli_range(int argc, char **argv)
{
  struct args a;
  uint64_t off, len;
  if (ts_cli_help(argc, argv))
    return 0;
  if (!parse(argc, argv, &a, 4, 4) || !ts_cli_size("OFFSET", a.pos[2], &off) ||
      !ts_cli_size("LENGTH", a.pos[3], &len))
    return 2;
  bool zero = strcmp(argv[0], "zero") == 0, prov = strcmp(argv[0], "provision") == 0;
  if (!zero && (a.may_unmap || a.no_fallback)) {
    ts_cli_err("%s: --may-unmap and --no-fallback go with zero", argv[0]);
    return 2;
  }
  if (!prov && a.may_zero) {
    ts_cli_err("%s: --may-zero goes with provision", argv[0]);
    return 2;
  }
  ts_stack *s;
  ts_dev *d = ts_cli_open_dev(a.pos[0], a.pos[1], 0, &s);
  if (!d)
    return 1;
  double t0 = ts_cli_now();
  int r;
  if (prov) {
    ts_io io = { .op = TS_OP_PROVISION, .flags = a.may_zero ? TS_IO_MAY_ZERO : 0, .offset = off,
                 .length = len };
    r = ts_submit(d, &io);
  }
  else if (strcmp(argv[0], "discard") == 0)
    r = ts_discard(d, off, len);
  else
    r = ts_write_zeroes(d, off, len, (a.may_unmap ? TS_IO_MAY_UNMAP : 0) |
                                     (a.no_fallback ? TS_IO_NOFALLBACK : 0));
  if (!r)
    r = ts_flush(d);
  double t = ts_cli_now() - t0;
  if (!r)
    ts_cli_range_done(a.json, argv[0], ts_dev_name(d), off, len, t);
  if (prov && r == -EOPNOTSUPP && !a.may_zero)
    fprintf(stderr, "thinstack: a layer may only be able to reserve this range by zeroing it;"
                    " --may-zero allows that (data in the range is lost)\n");
  return ts_cli_close(s, report(argv[0], d, r));
}

int ts_cli_flush(int argc, char **argv)
{
  struct args a;
  if (ts_cli_help(argc, argv))
    return 0;
  if (!parse(argc, argv, &a, 2, 2))
    return 2;
  ts_stack *s;
  ts_dev *d = ts_cli_open_dev(a.pos[0], a.pos[1], 0, &s);
  if (!d)
    return 1;
  return ts_cli_close(s, report("flush", d, ts_flush(d)));
}

static const char *extent_kind(uint32_t f)
{
  if ((f & TS_EXTENT_HOLE) && (f & TS_EXTENT_ZERO)) return "hole";
  if (f & TS_EXTENT_HOLE) return "unmapped";
  if (f & TS_EXTENT_ZERO) return "zero";
  return "data";
}

int ts_cli_map(int argc, char **argv)
{
  struct args a;
  if (ts_cli_help(argc, argv))
    return 0;
  if (!parse(argc, argv, &a, 2, 4) || a.npos == 3) {
    if (a.npos == 3) ts_cli_usage(stderr, argv[0]);
    return 2;
  }
  ts_stack *s;
  ts_dev *d = ts_cli_open_dev(a.pos[0], a.pos[1], TS_OPEN_READ_ONLY, &s);
  if (!d)
    return 1;
  uint64_t off = 0, len = ts_dev_size(d);
  if (a.npos == 4 && (!ts_cli_size("OFFSET", a.pos[2], &off) || !ts_cli_size("LENGTH", a.pos[3], &len)))
    return ts_cli_close(s, 2);
  ts_extent_list l = { 0 };
  int r = ts_block_status(d, off, len, &l);
  if (!r && a.json) {
    printf("[");
    for (size_t i = 0; i < l.n; i++)
      printf("%s\n  {\"offset\": %llu, \"length\": %llu, \"type\": \"%s\", \"hole\": %s, \"zero\": %s}",
             i ? "," : "", (unsigned long long)l.v[i].offset, (unsigned long long)l.v[i].length,
             extent_kind(l.v[i].flags), (l.v[i].flags & TS_EXTENT_HOLE) ? "true" : "false",
             (l.v[i].flags & TS_EXTENT_ZERO) ? "true" : "false");
    printf("\n]\n");
  } else if (!r) {
    printf("%16s %16s  %s\n", "offset", "length", "type");
    for (size_t i = 0; i < l.n; i++)
      printf("%16llu %16llu  %s\n", (unsigned long long)l.v[i].offset,
             (unsigned long long)l.v[i].length, extent_kind(l.v[i].flags));
  }
  ts_extent_list_free(&l);
  return ts_cli_close(s, report("map", d, r));
}
