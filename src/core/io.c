/* The request path: every request, from a user or from a layer to its child,
 * passes here. The core checks it, splits it to the layer's limits and
 * declared boundaries, and emulates what the layer lacks (zero writes for
 * WRITE_ZEROES, a FLUSH after a FUA write), so layers trust what they get. */
#include "core/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The reason for the last failed request on this thread. Written only on
 * failure so the hot path pays nothing; last_seq lets ts_submit tell whether a
 * deeper call already said why before it adds a generic reason. */
static _Thread_local int last_errno;
static _Thread_local unsigned last_seq;
static _Thread_local char last_msg[512];

static int TS_PRINTF(2, 3) io_fail(int code, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_msg, sizeof last_msg, fmt, ap);
  va_end(ap);
  last_errno = code;
  last_seq++;
  return code;
}

const char *ts_last_error(void) { return last_errno ? last_msg : NULL; }
int ts_last_errno(void) { return last_errno; }

/* "4096", "2G" style: exact binary units, as the CLI's size arguments take. */
static const char *fmt_off(char *buf, size_t n, uint64_t v)
{
  static const char units[] = "KMGTPE";
  int u = -1;
  while (v && v % 1024 == 0 && u < 5) {
    v /= 1024;
    u++;
  }
  if (u < 0)
    snprintf(buf, n, "%" PRIu64, v);
  else
    snprintf(buf, n, "%" PRIu64 "%c", v, units[u]);
  return buf;
}

/* "1 GiB" style for device sizes, exact when it can be. */
static const char *fmt_size(char *buf, size_t n, uint64_t v)
{
  static const char *units[] = { "bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
  int u = 0;
  while (v && v % 1024 == 0 && u < 6) {
    v /= 1024;
    u++;
  }
  snprintf(buf, n, "%" PRIu64 " %s", v, units[u]);
  return buf;
}

/* Flags that mean something for each op. */
static const uint32_t op_flags[TS_OP_COUNT] = {
  [TS_OP_READ] = 0,
  [TS_OP_WRITE] = TS_IO_FUA,
  [TS_OP_FLUSH] = 0,
  [TS_OP_DISCARD] = 0,
  [TS_OP_WRITE_ZEROES] = TS_IO_FUA | TS_IO_MAY_UNMAP | TS_IO_NOFALLBACK,
  [TS_OP_PROVISION] = TS_IO_MAY_ZERO,
};


static int call_layer(struct ts_node *n, const ts_io *io)
{
  int r;
  if (n->type->thread_model == TS_THREAD_SERIALIZE) {
    pthread_mutex_lock(&n->serial);
    r = n->type->submit(n, io);
    pthread_mutex_unlock(&n->serial);
  } else {
    r = n->type->submit(n, io);
  }
  /* A layer that fails without an errno is a bug; report it as an I/O error
   * rather than pretend success. */
  if (r > 0)
    r = -EIO;
  return r;
}

static uint64_t op_max(const ts_limits *lim, uint32_t op)
{
  switch (op) {
  case TS_OP_DISCARD: return lim->max_discard_bytes;
  case TS_OP_WRITE_ZEROES: return lim->max_write_zeroes_bytes;
  case TS_OP_PROVISION: return lim->max_provision_bytes;
  default: return lim->max_io_bytes;
  }
}

static uint32_t op_granularity(const ts_limits *lim, uint32_t op)
{
  switch (op) {
  case TS_OP_DISCARD: return lim->discard_granularity;
  case TS_OP_PROVISION: return lim->provision_granularity;
  default: return 0;
  }
}

/* Length of the next piece of [off, end) that the layer accepts in one call. */
static uint64_t piece_len(struct ts_node *n, uint32_t op, uint64_t off, uint64_t end)
{
  uint64_t len = end - off;
  uint64_t max = op_max(&n->limits, op);
  if (max && len > max) {
    len = max - max % n->limits.logical_block_size;
    /* Prefer pieces that end on the op's granularity, so a layer that
     * allocates in blocks is not asked for the same block twice. */
    uint32_t g = op_granularity(&n->limits, op);
    if (g && len > g) {
      uint64_t e = (off + len) / g * g;
      if (e > off)
        len = e - off;
    }
  }
  if (n->type->next_boundary) {
    uint64_t b = n->type->next_boundary(n, off);
    if (b > off && b - off < len)
      len = b - off;
  }
  return len;
}

/* Run a non-data op (DISCARD, WRITE_ZEROES, PROVISION) piece by piece. */
static int run_ranged(struct ts_node *n, uint32_t op, uint32_t flags, uint64_t off, uint64_t len,
                      uint64_t *done)
{
  uint64_t end = off + len;
  *done = 0;
  while (off < end) {
    uint64_t l = piece_len(n, op, off, end);
    ts_io sub = { .op = op, .flags = flags, .offset = off, .length = l };
    int r = call_layer(n, &sub);
    if (r)
      return r;
    off += l;
    *done += l;
  }
  return 0;
}

static int run_rw(struct ts_node *n, const ts_io *io, uint32_t flags)
{
  uint64_t end = io->offset + io->length;
  uint64_t first = piece_len(n, io->op, io->offset, end);
  if (first == io->length) {
    ts_io sub = *io;
    sub.flags = flags;
    return call_layer(n, &sub);
  }
  ts_iov_buf b;
  int r = ts_iov_buf_init(&b, io->iovcnt);
  for (uint64_t off = io->offset; off < end && !r;) {
    uint64_t l = piece_len(n, io->op, off, end);
    int cnt = ts_iov_buf_slice(&b, io->iov, io->iovcnt, off - io->offset, l);
    if (cnt < 0) {
      r = cnt;
      break;
    }
    ts_io sub = { .op = io->op, .flags = flags, .offset = off, .length = l, .iov = b.v,
                  .iovcnt = cnt };
    r = call_layer(n, &sub);
    off += l;
  }
  ts_iov_buf_free(&b);
  return r;
}

/* WRITE_ZEROES as writes of the shared zero buffer. */
static int emulate_zeroes(struct ts_node *n, uint64_t off, uint64_t len)
{
  uint64_t end = off + len;
  while (off < end) {
    uint64_t l = end - off;
    if (l > TS_ZERO_BUF_SIZE)
      l = TS_ZERO_BUF_SIZE;
    struct iovec v = { (void *)ts_zero_buffer(), (size_t)l };
    ts_io w = { .op = TS_OP_WRITE, .offset = off, .length = l, .iov = &v, .iovcnt = 1 };
    int r = run_rw(n, &w, 0);
    if (r)
      return r;
    off += l;
  }
  return 0;
}

static int flush_node(struct ts_node *n)
{
  ts_io f = { .op = TS_OP_FLUSH };
  return call_layer(n, &f);
}

int ts__node_flush_all(struct ts_node *n) { return flush_node(n); }

static size_t iov_total(const struct iovec *iov, int iovcnt, bool *overflow)
{
  size_t t = 0;
  *overflow = false;
  for (int i = 0; i < iovcnt; i++) {
    if (iov[i].iov_len > SIZE_MAX - t)
      *overflow = true;
    t += iov[i].iov_len;
  }
  return t;
}

static int range_check(struct ts_node *n, const char *op, uint64_t off, uint64_t len)
{
  const ts_limits *lim = &n->limits;
  char a[32], b[32], c[32];
  if (len == 0)
    return io_fail(-EINVAL, "%s of length 0 at offset %s on %s", op, fmt_off(a, sizeof a, off),
                   n->name);
  if (off % lim->logical_block_size || len % lim->logical_block_size)
    return io_fail(
        -EINVAL, "%s at offset %s + length %s is not a multiple of the logical block size %u of %s",
        op, fmt_off(a, sizeof a, off), fmt_off(b, sizeof b, len), lim->logical_block_size, n->name);
  if (off + len < off || off + len > ts__node_size(n)) {
    if (off >= ts__node_size(n))
      return io_fail(-EINVAL, "%s at offset %s is past the end of %s (%s)", op,
                     fmt_off(a, sizeof a, off), n->name, fmt_size(c, sizeof c, ts__node_size(n)));
    return io_fail(-EINVAL, "%s at offset %s + length %s runs past the end of %s (%s)", op,
                   fmt_off(a, sizeof a, off), fmt_off(b, sizeof b, len), n->name,
                   fmt_size(c, sizeof c, ts__node_size(n)));
  }
  return 0;
}

int ts__io_check(struct ts_node *n, const ts_io *io)
{
  const ts_limits *lim = &n->limits;
  char a[32];
  if (io->op >= TS_OP_COUNT)
    return io_fail(-EINVAL, "request op %u on %s is not a known op", io->op, n->name);
  const char *op = ts_op_name(io->op);
  if (io->flags & ~op_flags[io->op])
    return io_fail(-EINVAL, "flags 0x%x are not valid for %s on %s", io->flags & ~op_flags[io->op],
                   op, n->name);
  if (io->op == TS_OP_FLUSH)
    return 0;
  if ((io->op == TS_OP_WRITE || io->op == TS_OP_DISCARD || io->op == TS_OP_WRITE_ZEROES ||
       io->op == TS_OP_PROVISION) && lim->read_only)
    return io_fail(-EROFS, "%s on %s: the device is read-only", op, n->name);
  if (ts_limits_cap(lim, (int)io->op) == TS_CAP_NONE)
    return io_fail(-EOPNOTSUPP, "%s is not supported by %s", op, n->name);
  int r = range_check(n, op, io->offset, io->length);
  if (r)
    return r;
  if (io->op == TS_OP_READ || io->op == TS_OP_WRITE) {
    bool over;
    if (!io->iov || io->iovcnt <= 0 || iov_total(io->iov, io->iovcnt, &over) != io->length || over)
      return io_fail(-EINVAL, "%s on %s: the buffers do not add up to the length %s", op, n->name,
                     fmt_off(a, sizeof a, io->length));
  }
  return 0;
}

int ts_submit(ts_dev *n, const ts_io *io)
{
  int r = ts__io_check(n, io);
  if (r) {
    if (io->op < TS_OP_COUNT)
      atomic_fetch_add_explicit(&n->nr_err[io->op], 1, memory_order_relaxed);
    return r;
  }
  unsigned seq = last_seq;
  r = ts__submit_checked(n, io);
  if (r < 0 && last_seq == seq) {
    /* The layer failed without saying why: say at least what and where. */
    char a[32], b[32];
    io_fail(r, "%s on %s at offset %s + length %s failed: %s", ts_op_name(io->op), n->name,
            fmt_off(a, sizeof a, io->offset), fmt_off(b, sizeof b, io->length), ts_strerror(r));
  }
  return r;
}

int ts__submit_checked(struct ts_node *n, const ts_io *io)
{
  int r;
  atomic_fetch_add_explicit(&n->nr_req[io->op], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&n->nr_bytes[io->op], io->length, memory_order_relaxed);
  const ts_limits *lim = &n->limits;
  /* FUA the layer lacks becomes a FLUSH after the request. */
  bool fua_after = (io->flags & TS_IO_FUA) && !lim->fua;
  uint32_t flags = fua_after ? io->flags & ~TS_IO_FUA : io->flags;
  uint64_t done;

  switch (io->op) {
  case TS_OP_FLUSH:
    r = call_layer(n, io);
    break;
  case TS_OP_READ:
  case TS_OP_WRITE:
    r = run_rw(n, io, flags);
    break;
  case TS_OP_WRITE_ZEROES:
    if (ts_limits_cap(lim, TS_OP_WRITE_ZEROES) == TS_CAP_NATIVE) {
      /* NOFALLBACK reaches the layer: one whose only way to zero is writing
       * data (crypt) refuses it with -EOPNOTSUPP, and a layer that passes the
       * request down keeps the caller's promise for its children. */
      r = run_ranged(n, io->op, flags, io->offset, io->length, &done);
      if (r != -EOPNOTSUPP || (io->flags & TS_IO_NOFALLBACK))
        break;
    } else if (io->flags & TS_IO_NOFALLBACK) {
      r = -EOPNOTSUPP;
      break;
    } else {
      done = 0;
    }
    r = emulate_zeroes(n, io->offset + done, io->length - done);
    break;
  default:
    r = run_ranged(n, io->op, flags, io->offset, io->length, &done);
    break;
  }
  if (!r && fua_after)
    r = flush_node(n);
  if (r)
    atomic_fetch_add_explicit(&n->nr_err[io->op], 1, memory_order_relaxed);
  return r;
}

int ts__submit_async(struct ts_node *n, const ts_io *io, ts_io_done_fn done, void *arg)
{
  const ts_layer_type *t = n->type;
  if (!TS__LAYER_OP(t, submit_async) || t->thread_model == TS_THREAD_SERIALIZE)
    return -EAGAIN;
  if (io->op != TS_OP_READ && io->op != TS_OP_WRITE && io->op != TS_OP_FLUSH)
    return -EAGAIN;
  if ((io->flags & TS_IO_FUA) && !n->limits.fua)
    return -EAGAIN;
  if (io->op != TS_OP_FLUSH &&
      piece_len(n, io->op, io->offset, io->offset + io->length) != io->length)
    return -EAGAIN;
  /* Counted first: once started, the request may complete, and the caller
   * close the stack, before the hook returns. */
  atomic_fetch_add_explicit(&n->nr_req[io->op], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&n->nr_bytes[io->op], io->length, memory_order_relaxed);
  atomic_fetch_add_explicit(&n->nr_async, 1, memory_order_relaxed);
  if (t->submit_async(n, io, done, arg) == 0)
    return 0;
  /* Declined: the synchronous path counts it instead. */
  atomic_fetch_sub_explicit(&n->nr_req[io->op], 1, memory_order_relaxed);
  atomic_fetch_sub_explicit(&n->nr_bytes[io->op], io->length, memory_order_relaxed);
  atomic_fetch_sub_explicit(&n->nr_async, 1, memory_order_relaxed);
  return -EAGAIN;
}

void ts__count_error(struct ts_node *n, uint32_t op)
{
  if (op < TS_OP_COUNT)
    atomic_fetch_add_explicit(&n->nr_err[op], 1, memory_order_relaxed);
}

/* The core's copy when the layer has none: 1 MiB at a time through the node. */
static int copy_by_rw(struct ts_node *n, uint64_t src, uint64_t dst, uint64_t len)
{
  size_t chunk = len < (1u << 20) ? (size_t)len : (1u << 20);
  void *buf;
  if (posix_memalign(&buf, 4096, chunk))
    return io_fail(-ENOMEM, "copy on %s: out of memory", n->name);
  int r = 0;
  for (uint64_t o = 0; o < len && !r; o += chunk) {
    size_t c = len - o < chunk ? (size_t)(len - o) : chunk;
    r = ts_pread(n, buf, c, src + o);
    if (!r)
      r = ts_pwrite(n, buf, c, dst + o, 0);
  }
  free(buf);
  return r;
}

int ts__copy_range(struct ts_node *n, uint64_t src, uint64_t dst, uint64_t len, uint32_t flags)
{
  const ts_layer_type *t = n->type;
  char a[32], b[32], c[32];
  if (flags & ~TS_IO_NOFALLBACK)
    return io_fail(-EINVAL, "flags 0x%x are not valid for a copy on %s", flags & ~TS_IO_NOFALLBACK,
                   n->name);
  if (n->limits.read_only)
    return io_fail(-EROFS, "copy on %s: the device is read-only", n->name);
  int r = range_check(n, "copy source", src, len);
  if (!r)
    r = range_check(n, "copy destination", dst, len);
  if (r)
    return r;
  if (src < dst + len && dst < src + len)
    return io_fail(-EINVAL, "copy on %s from offset %s to %s overlaps itself (length %s)", n->name,
                   fmt_off(a, sizeof a, src), fmt_off(b, sizeof b, dst), fmt_off(c, sizeof c, len));
  r = -EOPNOTSUPP;
  if (TS__LAYER_OP(t, copy_range)) {
    unsigned seq = last_seq;
    if (t->thread_model == TS_THREAD_SERIALIZE) {
      pthread_mutex_lock(&n->serial);
      r = t->copy_range(n, src, dst, len, flags);
      pthread_mutex_unlock(&n->serial);
    } else {
      r = t->copy_range(n, src, dst, len, flags);
    }
    if (r > 0)
      r = -EIO;
    if (r < 0 && r != -EOPNOTSUPP && last_seq == seq)
      io_fail(r, "copy on %s from offset %s to %s, length %s, failed: %s", n->name,
              fmt_off(a, sizeof a, src), fmt_off(b, sizeof b, dst), fmt_off(c, sizeof c, len),
              ts_strerror(r));
  }
  if (r != -EOPNOTSUPP)
    return r;
  /* Not a failure the caller reports but a question answered ("not
   * here"), so ts_last_error() keeps what it said. */
  if (flags & TS_IO_NOFALLBACK)
    return -EOPNOTSUPP;
  return copy_by_rw(n, src, dst, len);
}

int ts_preadv(ts_dev *dev, const struct iovec *iov, int iovcnt, uint64_t offset)
{
  bool over;
  size_t len = iov_total(iov, iovcnt, &over);
  if (over)
    return io_fail(-EINVAL, "the buffer lengths of a request on %s overflow", dev->name);
  ts_io io = { .op = TS_OP_READ, .offset = offset, .length = len, .iov = iov, .iovcnt = iovcnt };
  return ts_submit(dev, &io);
}

int ts_pread(ts_dev *dev, void *buf, size_t len, uint64_t offset)
{
  struct iovec v = { buf, len };
  return ts_preadv(dev, &v, 1, offset);
}

int ts_pwritev(ts_dev *dev, const struct iovec *iov, int iovcnt, uint64_t offset, uint32_t flags)
{
  bool over;
  size_t len = iov_total(iov, iovcnt, &over);
  if (over)
    return io_fail(-EINVAL, "the buffer lengths of a request on %s overflow", dev->name);
  ts_io io = { .op = TS_OP_WRITE, .flags = flags, .offset = offset, .length = len, .iov = iov,
               .iovcnt = iovcnt };
  return ts_submit(dev, &io);
}

int ts_pwrite(ts_dev *dev, const void *buf, size_t len, uint64_t offset, uint32_t flags)
{
  struct iovec v = { (void *)buf, len };
  return ts_pwritev(dev, &v, 1, offset, flags);
}

int ts_flush(ts_dev *dev)
{
  ts_io io = { .op = TS_OP_FLUSH };
  return ts_submit(dev, &io);
}

int ts_layer_io(ts_layer *child, uint32_t op, uint32_t flags, uint64_t offset, uint64_t len)
{
  ts_io io = { .op = op, .flags = flags, .offset = offset, .length = len };
  return ts_submit(child, &io);
}

int ts_discard(ts_dev *dev, uint64_t offset, uint64_t len)
{
  return ts_layer_io(dev, TS_OP_DISCARD, 0, offset, len);
}

int ts_write_zeroes(ts_dev *dev, uint64_t offset, uint64_t len, uint32_t flags)
{
  return ts_layer_io(dev, TS_OP_WRITE_ZEROES, flags, offset, len);
}

int ts_provision(ts_dev *dev, uint64_t offset, uint64_t len)
{
  return ts_layer_io(dev, TS_OP_PROVISION, 0, offset, len);
}

/* A layer's answer must go on from `offset` in order, with no gap and no
 * overlap (the block_status contract): a caller walks the list as a map, so
 * a wrong answer would misreport data as holes or repeat ranges. Such an
 * answer is a layer bug; it becomes -EIO naming the layer rather than be
 * passed on. `before` and `prev_len` describe the list before the call. On
 * success the answer ends within [offset, offset + l] (a layer may describe
 * whole blocks past the range asked: cut at it) and *reached says where. */
static int check_answer(struct ts_node *n, uint64_t offset, uint64_t l, ts_extent_list *out,
                        size_t before, uint64_t prev_len, uint64_t *reached)
{
  char a[32], b[32], c[32], d[32], e2[32];
  uint64_t pos = offset, end = offset + l;
  if (before && out->v[before - 1].length != prev_len) {
    /* Grown by ts_extent_list_add's merge: only from where it ended. */
    ts_extent *p = &out->v[before - 1];
    if (p->offset + prev_len != offset || p->length < prev_len)
      return io_fail(-EIO,
                     "block status on %s at offset %s: layer type %s changed the extent at "
                     "offset %s before its answer",
                     n->name, fmt_off(a, sizeof a, offset), n->type->name,
                     fmt_off(b, sizeof b, p->offset));
    pos = p->offset + p->length;
  } else if (out->n == before) {
    return io_fail(-EIO,
                   "block status on %s at offset %s + length %s: layer type %s added no extent",
                   n->name, fmt_off(a, sizeof a, offset), fmt_off(b, sizeof b, l), n->type->name);
  }
  for (size_t i = before; i < out->n; i++) {
    ts_extent *e = &out->v[i];
    if (pos >= end) {
      out->n = i; /* past the range asked: dropped, as a cut extent */
      break;
    }
    if (e->offset != pos || e->length == 0 || e->length > UINT64_MAX - pos)
      return io_fail(-EIO,
                     "block status on %s at offset %s + length %s: layer type %s answered an "
                     "extent at offset %s + length %s where one at offset %s was due (out of "
                     "order, overlapping or leaving a gap)",
                     n->name, fmt_off(a, sizeof a, offset), fmt_off(b, sizeof b, l), n->type->name,
                     fmt_off(c, sizeof c, e->offset), fmt_off(d, sizeof d, e->length),
                     fmt_off(e2, sizeof e2, pos));
    pos += e->length;
  }
  if (pos > end) {
    out->v[out->n - 1].length -= pos - end;
    pos = end;
  }
  *reached = pos;
  return 0;
}

/* The core's walk: ask the layer again for whatever it left, until the range
 * is covered or, with max_new, that many extents were added. */
static int status_walk(ts_dev *n, uint64_t offset, uint64_t len, size_t max_new,
                       ts_extent_list *out)
{
  const ts_limits *lim = &n->limits;
  if (len == 0 || offset % lim->logical_block_size || len % lim->logical_block_size ||
      offset + len < offset || offset + len > ts__node_size(n)) {
    int r = range_check(n, "block status", offset, len);
    return r ? r : -EINVAL;
  }
  uint64_t end = offset + len;
  if (!n->type->block_status)
    return ts_extent_list_add(out, offset, len, 0);
  size_t start = out->n;
  while (offset < end) {
    if (max_new && out->n - start >= max_new)
      break;
    uint64_t l = end - offset;
    if (n->type->next_boundary) {
      uint64_t b = n->type->next_boundary(n, offset);
      if (b > offset && b - offset < l)
        l = b - offset;
    }
    size_t before = out->n;
    uint64_t prev_len = before ? out->v[before - 1].length : 0;
    int r;
    if (n->type->thread_model == TS_THREAD_SERIALIZE) {
      pthread_mutex_lock(&n->serial);
      r = n->type->block_status(n, offset, l, out);
      pthread_mutex_unlock(&n->serial);
    } else {
      r = n->type->block_status(n, offset, l, out);
    }
    if (r)
      return r;
    uint64_t reached = offset;
    if ((r = check_answer(n, offset, l, out, before, prev_len, &reached)))
      return r;
    /* A layer may answer with more than the bound; keep a prefix. */
    if (max_new && out->n - start > max_new) {
      out->n = start + max_new;
      break;
    }
    offset = reached;
  }
  return 0;
}

int ts_block_status(ts_dev *n, uint64_t offset, uint64_t len, ts_extent_list *out)
{
  return status_walk(n, offset, len, 0, out);
}

int ts_block_status_bounded(ts_dev *n, uint64_t offset, uint64_t len, size_t max_extents,
                            ts_extent_list *out)
{
  return status_walk(n, offset, len, max_extents ? max_extents : TS_BLOCK_STATUS_BATCH, out);
}
