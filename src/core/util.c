/* Errors, sizes, extents, iovecs and the shared zero buffer. */
#include "core/array.h"
#include "core/internal.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/stat.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *ts_version(void) { return TS_VERSION_STRING; }

int ts_error_set(ts_error *err, int code, const char *fmt, ...)
{
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    err->code = code;
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
  }
  return code;
}

void ts_error_clear(ts_error *err)
{
  if (err) {
    err->code = 0;
    err->msg[0] = '\0';
  }
}

const char *ts_strerror(int code)
{
  if (code < 0)
    code = -code;
  /* strerror() may share a buffer for unknown values; strerrordesc_np() never does. */
  const char *s = strerrordesc_np(code);
  return s ? s : "Unknown error";
}

#define E(x) { x, #x }
static const struct { int code; const char *name; } err_names[] = {
  E(EPERM), E(ENOENT), E(EIO), E(ENXIO), E(E2BIG), E(EBADF), E(EAGAIN), E(ENOMEM),
  E(EACCES), E(EFAULT), E(EBUSY), E(EEXIST), E(EXDEV), E(ENODEV), E(ENOTDIR), E(EISDIR),
  E(EINVAL), E(ENFILE), E(EMFILE), E(ENOTTY), E(EFBIG), E(ENOSPC), E(ESPIPE), E(EROFS),
  E(ERANGE), E(ENAMETOOLONG), E(ENOSYS), E(ENODATA), E(ETIMEDOUT), E(EOPNOTSUPP),
  E(EOVERFLOW), E(EILSEQ), E(ECANCELED), E(ESTALE), E(EDQUOT), E(ENOTBLK), E(EUCLEAN),
  E(ELOOP), E(ENOBUFS), E(EINTR), E(EPROTO), E(EBADMSG), E(ENOTSUP),
  E(ENOTEMPTY), E(EALREADY), E(EADDRINUSE), E(ECONNREFUSED),
};
#undef E

const char *ts_err_name(int code)
{
  if (code < 0)
    code = -code;
  for (size_t i = 0; i < sizeof err_names / sizeof err_names[0]; i++)
    if (err_names[i].code == code)
      return err_names[i].name;
  return "E?";
}

int ts_err_from_name(const char *name)
{
  for (size_t i = 0; i < sizeof err_names / sizeof err_names[0]; i++)
    if (strcmp(err_names[i].name, name) == 0)
      return -err_names[i].code;
  return 0;
}

static const char *const op_names[TS_OP_COUNT] = {
  "read", "write", "flush", "discard", "write_zeroes", "provision",
};

const char *ts_op_name(ts_op op)
{
  return (unsigned)op < TS_OP_COUNT ? op_names[op] : NULL;
}

int ts_op_from_name(const char *name)
{
  for (int i = 0; i < TS_OP_COUNT; i++)
    if (strcmp(op_names[i], name) == 0)
      return i;
  return -1;
}

int ts_parse_size(const char *s, uint64_t *out)
{
  if (!s || !isdigit((unsigned char)*s))
    return -EINVAL;
  uint64_t v = 0;
  const char *p = s;
  for (; isdigit((unsigned char)*p); p++) {
    unsigned d = (unsigned)(*p - '0');
    if (v > (UINT64_MAX - d) / 10)
      return -ERANGE;
    v = v * 10 + d;
  }
  unsigned shift = 0;
  switch (toupper((unsigned char)*p)) {
  case '\0': break;
  case 'K': shift = 10; break;
  case 'M': shift = 20; break;
  case 'G': shift = 30; break;
  case 'T': shift = 40; break;
  case 'P': shift = 50; break;
  case 'B': if (p[1] == '\0') { p++; break; } return -EINVAL;
  default: return -EINVAL;
  }
  if (shift) {
    p++;
    if (strcmp(p, "iB") == 0 || strcmp(p, "B") == 0)
      p += strlen(p);
    if (*p != '\0')
      return -EINVAL;
    if (v > (UINT64_MAX >> shift))
      return -ERANGE;
    v <<= shift;
  } else if (*p != '\0') {
    return -EINVAL;
  }
  /* Offsets are off_t and kernel device sizes loff_t: nothing at or past
   * 2^63 bytes can be addressed, so such a size is never meant. */
  if (v > TS_SIZE_MAX)
    return -ERANGE;
  *out = v;
  return 0;
}

void ts_format_size(uint64_t bytes, char *buf, size_t buflen)
{
  static const char units[] = "KMGTP";
  int u = -1;
  uint64_t v = bytes;
  while (v && (v & 1023) == 0 && u < 4) {
    v >>= 10;
    u++;
  }
  if (u < 0)
    snprintf(buf, buflen, "%llu", (unsigned long long)bytes);
  else
    snprintf(buf, buflen, "%llu%c", (unsigned long long)v, units[u]);
}

void *ts__array_grow(void *v, size_t *cap, size_t n, size_t elem, const void *inl)
{
  if (v && n < *cap)
    return v;
  size_t ncap = *cap ? *cap * 2 : 8;
  void *nv;
  if (v && v == inl) {
    if ((nv = malloc(ncap * elem)))
      memcpy(nv, inl, n * elem);
  } else {
    nv = realloc(v, ncap * elem);
  }
  if (nv)
    *cap = ncap;
  return nv;
}

int ts_extent_list_add(ts_extent_list *l, uint64_t offset, uint64_t length, uint32_t flags)
{
  if (length == 0)
    return 0;
  if (l->n) {
    ts_extent *last = &l->v[l->n - 1];
    if (last->flags == flags && last->offset + last->length == offset) {
      last->length += length;
      return 0;
    }
  }
  ts_extent *v = ts__array_grow(l->v, &l->cap, l->n, sizeof *v, NULL);
  if (!v)
    return -ENOMEM;
  l->v = v;
  l->v[l->n++] = (ts_extent){ offset, length, flags };
  return 0;
}

void ts_extent_list_reset(ts_extent_list *l) { l->n = 0; }

void ts_extent_list_free(ts_extent_list *l)
{
  free(l->v);
  l->v = NULL;
  l->n = l->cap = 0;
}

/* One shared zero page for zero writes: large enough that a 1 MiB request is
 * one write, allocated once, never written. */
static const unsigned char zero_buf[TS_ZERO_BUF_SIZE];

const void *ts_zero_buffer(void) { return zero_buf; }

/* Walk the iovec from byte `skip` for `len` bytes, calling fn on each piece. */
static void iov_walk(const struct iovec *iov, int iovcnt, size_t skip, size_t len,
                     void (*fn)(void *seg, size_t n, size_t done, void *arg), void *arg)
{
  size_t done = 0;
  for (int i = 0; i < iovcnt && done < len; i++) {
    size_t sl = iov[i].iov_len;
    if (skip >= sl) {
      skip -= sl;
      continue;
    }
    size_t n = sl - skip;
    if (n > len - done)
      n = len - done;
    fn((char *)iov[i].iov_base + skip, n, done, arg);
    done += n;
    skip = 0;
  }
}

static void to_buf_fn(void *seg, size_t n, size_t done, void *arg)
{
  memcpy((char *)arg + done, seg, n);
}

static void from_buf_fn(void *seg, size_t n, size_t done, void *arg)
{
  memcpy(seg, (const char *)arg + done, n);
}

static void zero_fn(void *seg, size_t n, size_t done, void *arg)
{
  memset(seg, 0, n);
}

void ts_iov_to_buf(const struct iovec *iov, int iovcnt, size_t skip, void *buf, size_t len)
{
  iov_walk(iov, iovcnt, skip, len, to_buf_fn, buf);
}

void ts_iov_from_buf(const struct iovec *iov, int iovcnt, size_t skip, const void *buf,
                     size_t len)
{
  iov_walk(iov, iovcnt, skip, len, from_buf_fn, (void *)buf);
}

void ts_iov_zero(const struct iovec *iov, int iovcnt, size_t skip, size_t len)
{
  iov_walk(iov, iovcnt, skip, len, zero_fn, NULL);
}

struct slice_arg {
  struct iovec *out;
  int n, max;
  size_t bytes;
};

static void slice_fn(void *seg, size_t n, size_t done, void *arg)
{
  struct slice_arg *a = arg;
  if (a->n < a->max)
    a->out[a->n] = (struct iovec){ seg, n };
  a->n++;
  a->bytes = done + n;
}

int ts_iov_slice(const struct iovec *iov, int iovcnt, size_t skip, size_t len,
                 struct iovec *out, int outmax)
{
  struct slice_arg a = { out, 0, outmax, 0 };
  iov_walk(iov, iovcnt, skip, len, slice_fn, &a);
  return a.n > outmax ? -ENOBUFS : a.n;
}

int ts_iov_buf_init(ts_iov_buf *b, int iovcnt)
{
  b->v = b->inl;
  b->cap = TS_IOV_INLINE;
  if (iovcnt > TS_IOV_INLINE) {
    struct iovec *v = malloc((size_t)iovcnt * sizeof *v);
    if (!v)
      return -ENOMEM;
    b->v = v;
    b->cap = iovcnt;
  }
  return 0;
}

void ts_iov_buf_free(ts_iov_buf *b)
{
  if (b->v != b->inl)
    free(b->v);
  b->v = b->inl;
}

int ts_iov_buf_slice(ts_iov_buf *b, const struct iovec *iov, int iovcnt, size_t skip, size_t len)
{
  struct slice_arg a = { b->v, 0, b->cap, 0 };
  iov_walk(iov, iovcnt, skip, len, slice_fn, &a);
  return a.n > 0 && a.n <= b->cap && a.bytes == len ? a.n : -EIO;
}

int ts_layer_submit_slice(ts_layer *child, uint32_t op, uint32_t flags, uint64_t offset,
                          const ts_io *io, uint64_t skip, uint64_t len)
{
  ts_iov_buf b;
  int r = ts_iov_buf_init(&b, io->iovcnt);
  if (r)
    return r;
  int n = ts_iov_buf_slice(&b, io->iov, io->iovcnt, (size_t)skip, (size_t)len);
  if (n > 0) {
    ts_io sub = { .op = op, .flags = flags, .offset = offset, .length = len, .iov = b.v,
                  .iovcnt = n };
    r = ts_submit(child, &sub);
  } else {
    r = n;
  }
  ts_iov_buf_free(&b);
  return r;
}

int ts__fd_rw(int fd, bool write, void *buf, size_t len, uint64_t off)
{
  unsigned char *p = buf;
  while (len) {
    ssize_t n = write ? pwrite(fd, p, len, (off_t)off) : pread(fd, p, len, (off_t)off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -errno;
    if (n == 0)
      return -EIO;
    p += n;
    len -= (size_t)n;
    off += (uint64_t)n;
  }
  return 0;
}

/* Jansson frees without clearing, so a parsed configuration left pieces of
 * its text (a crypt key's hex digits among them) in freed heap memory, for a
 * core dump or a later allocation to find. Unless the application installed
 * allocation functions of its own, jansson's frees clear the block first. */
static void *scrub_malloc(size_t n) { return malloc(n); }

static void scrub_free(void *p)
{
  if (p) {
    explicit_bzero(p, malloc_usable_size(p));
    free(p);
  }
}

static void scrub_init(void)
{
  json_malloc_t m;
  json_free_t f;
  json_get_alloc_funcs(&m, &f);
  if (m == malloc && f == free)
    json_set_alloc_funcs(scrub_malloc, scrub_free);
}

json_t *ts__json_loads(const char *text, size_t flags, json_error_t *je)
{
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, scrub_init);
  return json_loads(text, flags, je);
}

json_t *ts__json_load_file(const char *path, size_t flags, json_error_t *je)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (64 << 20)) {
    int e = fd < 0 ? errno : EINVAL;
    if (fd >= 0)
      close(fd);
    /* Not a plain file of sane size: let jansson read it and explain. */
    errno = e;
    return json_load_file(path, flags, je);
  }
  size_t len = (size_t)st.st_size;
  char *buf = malloc(len + 1);
  int r = buf ? ts__fd_rw(fd, false, buf, len, 0) : -ENOMEM;
  close(fd);
  json_t *v = NULL;
  if (r == 0) {
    buf[len] = '\0';
    v = ts__json_loads(buf, flags, je);
    if (!v && je)
      snprintf(je->source, sizeof je->source, "%s", path);
  } else {
    v = json_load_file(path, flags, je);
  }
  if (buf) {
    explicit_bzero(buf, len + 1);
    free(buf);
  }
  return v;
}
