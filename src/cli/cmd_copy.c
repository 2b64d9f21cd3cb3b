/* copy SRC DST: a volume (CONFIG:LAYER) or a raw file to a raw file or a
 * volume, keeping holes: the source's block status (or SEEK_DATA/SEEK_HOLE
 * for a file) says what is data, only data is read and copied, holes and
 * zero ranges become WRITE_ZEROES that may unmap on a volume and holes in a
 * file, and blocks of data that read as zeroes are treated as holes. */
#include "cli/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK (4u << 20)
#define ZGRAN 4096u /* a file system block: the unit a hole can have */

struct end {
  const char *arg;
  char *config; /* CONFIG of CONFIG:LAYER, NULL for a raw file */
  const char *layer;
  ts_stack *stack; /* owned unless shared with the other end */
  ts_dev *dev;
  int fd;
  uint64_t size;
};

static bool all_zero(const char *p, size_t n)
{
  return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* CONFIG:LAYER when the text before the last ':' names an existing file and
 * the whole argument does not: a raw file may have a ':' in its name. */
static void parse_end(struct end *e, const char *arg)
{
  memset(e, 0, sizeof *e);
  e->arg = arg;
  e->fd = -1;
  const char *colon = strrchr(arg, ':');
  struct stat st;
  if (!colon || colon[1] == 0 || stat(arg, &st) == 0)
    return;
  char *cfg = strndup(arg, (size_t)(colon - arg));
  if (cfg && stat(cfg, &st) == 0 && S_ISREG(st.st_mode)) {
    e->config = cfg;
    e->layer = colon + 1;
  } else {
    free(cfg);
  }
}

static int dst_data(struct end *d, const char *buf, size_t n, uint64_t at)
{
  size_t g = ZGRAN;
  if (d->dev) {
    uint64_t lbs = ts_dev_limits(d->dev)->logical_block_size;
    g = lbs > ZGRAN ? lbs : ZGRAN;
  }
  for (size_t x = 0; x < n;) {
    bool zero = all_zero(buf + x, n - x < g ? n - x : g);
    size_t y = x;
    while (y < n && all_zero(buf + y, n - y < g ? n - y : g) == zero)
      y += n - y < g ? n - y : g;
    int r = 0;
    if (d->dev)
      r = zero ? ts_write_zeroes(d->dev, at + x, y - x, TS_IO_MAY_UNMAP)
               : ts_pwrite(d->dev, buf + x, y - x, at + x, 0);
    else if (!zero)
      for (size_t w = x; !r && w < y;) {
        ssize_t k = pwrite(d->fd, buf + w, y - w, (off_t)(at + w));
        if (k < 0)
          r = -errno;
        else
          w += (size_t)k;
      }
    if (r)
      return r;
    x = y;
  }
  return 0;
}

/* A fresh raw file is all holes already; a volume is zeroed, unmapping. */
static int dst_zero(struct end *d, uint64_t at, uint64_t len)
{
  return d->dev ? ts_write_zeroes(d->dev, at, len, TS_IO_MAY_UNMAP) : 0;
}

static int src_read(struct end *s, char *buf, size_t n, uint64_t at)
{
  if (s->dev)
    return ts_pread(s->dev, buf, n, at);
  for (size_t got = 0; got < n;) {
    ssize_t k = pread(s->fd, buf + got, n - got, (off_t)(at + got));
    if (k < 0)
      return -errno;
    if (k == 0)
      return -EIO; /* the file shrank under us */
    got += (size_t)k;
  }
  return 0;
}

static int copy_data(struct end *s, struct end *d, uint64_t from, uint64_t to, char *buf)
{
  for (uint64_t pos = from; pos < to;) {
    size_t n = to - pos < CHUNK ? (size_t)(to - pos) : CHUNK;
    ts_cli_progress_set(pos);
    int r = src_read(s, buf, n, pos);
    if (!r)
      r = dst_data(d, buf, n, pos);
    if (r)
      return r;
    pos += n;
  }
  return 0;
}

/* The next run of the source at pos: [pos, *end), data or not. */
static int next_run(struct end *s, uint64_t pos, uint64_t *end, bool *data, ts_extent_list *l)
{
  if (s->dev) {
    ts_extent_list_reset(l);
    int r = ts_block_status_bounded(s->dev, pos, s->size - pos, 1, l);
    if (r)
      return r;
    if (l->n == 0 || l->v[0].offset + l->v[0].length <= pos)
      return -EIO;
    *end = l->v[0].offset + l->v[0].length;
    *data = !(l->v[0].flags & (TS_EXTENT_HOLE | TS_EXTENT_ZERO));
  } else {
    off_t dp = lseek(s->fd, (off_t)pos, SEEK_DATA);
    if (dp < 0 && errno != ENXIO)
      dp = (off_t)pos; /* no SEEK_DATA: all data */
    if (dp < 0)
      dp = (off_t)s->size;
    if ((uint64_t)dp > pos) {
      *end = (uint64_t)dp;
      *data = false;
    } else {
      off_t hp = lseek(s->fd, (off_t)pos, SEEK_HOLE);
      *end = hp < 0 ? s->size : (uint64_t)hp;
      *data = true;
    }
  }
  if (*end > s->size)
    *end = s->size;
  return 0;
}

static int copy(struct end *s, struct end *d)
{
  char *buf = malloc(CHUNK);
  if (!buf)
    return -ENOMEM;
  ts_extent_list l = { 0 };
  uint64_t lbs = d->dev ? ts_dev_limits(d->dev)->logical_block_size : 1;
  int r = 0;
  for (uint64_t pos = 0; !r && pos < s->size;) {
    uint64_t end;
    bool data;
    if ((r = next_run(s, pos, &end, &data, &l)))
      break;
    if (!data && d->dev) {
      /* Zero whole destination blocks; a partial one is copied as data. */
      uint64_t z = (end - pos) / lbs * lbs;
      if (z) {
        r = dst_zero(d, pos, z);
        pos += z;
        ts_cli_progress_set(pos);
        continue;
      }
      data = true;
      end = pos + lbs < s->size ? pos + lbs : s->size;
    }
    if (data && d->dev)
      end = (end + lbs - 1) / lbs * lbs < s->size ? (end + lbs - 1) / lbs * lbs : s->size;
    if (data)
      r = copy_data(s, d, pos, end, buf);
    pos = end;
    ts_cli_progress_set(pos);
  }
  ts_extent_list_free(&l);
  free(buf);
  if (!r && !d->dev && ftruncate(d->fd, (off_t)s->size))
    r = -errno;
  return r;
}

static void close_end(struct end *e, int *status)
{
  if (e->stack)
    *status = ts_cli_close(e->stack, *status);
  if (e->fd >= 0)
    close(e->fd);
  free(e->config);
}

int ts_cli_copy(int argc, char **argv)
{
  if (ts_cli_help(argc, argv))
    return 0;
  const char *pos[2];
  int npos = 0;
  for (int i = 1; i < argc; i++) {
    if (argv[i][0] == '-' && argv[i][1]) {
      ts_cli_err("copy: unknown option %s", argv[i]);
      return 2;
    }
    if (npos == 2) {
      ts_cli_usage(stderr, argv[0]);
      return 2;
    }
    pos[npos++] = argv[i];
  }
  if (npos != 2) {
    ts_cli_usage(stderr, argv[0]);
    return 2;
  }
  struct end s, d;
  parse_end(&s, pos[0]);
  parse_end(&d, pos[1]);
  int status = 1;
  if (s.config) {
    /* One stack for both ends when they share a configuration. */
    bool shared = d.config && strcmp(s.config, d.config) == 0;
    if (!(s.dev = ts_cli_open_dev(s.config, s.layer, shared ? 0 : TS_OPEN_READ_ONLY, &s.stack)))
      goto out;
    s.size = ts_dev_size(s.dev);
    if (shared) {
      if (!(d.dev = ts_stack_dev(s.stack, d.layer)) && !(d.dev = ts_stack_node(s.stack, d.layer))) {
        ts_cli_err("%s: no device or layer named \"%s\"", d.config, d.layer);
        goto out;
      }
    }
  } else {
    struct stat st;
    if ((s.fd = open(s.arg, O_RDONLY | O_CLOEXEC)) < 0 || fstat(s.fd, &st)) {
      ts_cli_err("%s: cannot read: %s", s.arg, strerror(errno));
      goto out;
    }
    s.size = (uint64_t)st.st_size;
  }
  if (d.config && !d.dev && !(d.dev = ts_cli_open_dev(d.config, d.layer, 0, &d.stack)))
    goto out;
  if (d.dev) {
    uint64_t lbs = ts_dev_limits(d.dev)->logical_block_size;
    if (s.size > ts_dev_size(d.dev) || s.size % lbs) {
      ts_cli_err("copy: %s is %llu bytes; %s takes at most %llu, in blocks of %llu", s.arg,
                 (unsigned long long)s.size, d.arg, (unsigned long long)ts_dev_size(d.dev),
                 (unsigned long long)lbs);
      goto out;
    }
  } else if ((d.fd = open(d.arg, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0) {
    ts_cli_err("%s: cannot write: %s", d.arg, strerror(errno));
    goto out;
  }
  ts_cli_progress_begin(s.size);
  int r = copy(&s, &d);
  if (!r && d.dev)
    r = ts_flush(d.dev);
  ts_cli_progress_end(r == 0);
  if (r) {
    const char *why = ts_last_errno() == r && ts_last_error() ? ts_last_error() : ts_strerror(r);
    ts_cli_err("copy %s to %s failed: %s (%s)", s.arg, d.arg, why, ts_err_name(r));
  }
  status = r ? 1 : 0;
out:
  close_end(&d, &status);
  close_end(&s, &status);
  return status;
}
