/* Metadata device over a file descriptor (regular file or block device). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/claim.h"
#include "core/internal.h"
#include "pdata/bdev.h"

struct fd_ctx {
  int fd;
  bool own;
};

/* A short file is an I/O error. */
static int fd_rw(int fd, bool wr, uint64_t block, uint32_t count, void *buf)
{
  return ts__fd_rw(fd, wr, buf, (size_t)count * PD_BLOCK_SIZE, block * PD_BLOCK_SIZE);
}

static int fd_read(void *ctx, uint64_t block, uint32_t count, void *buf)
{
  return fd_rw(((struct fd_ctx *)ctx)->fd, false, block, count, buf);
}

static int fd_write(void *ctx, uint64_t block, uint32_t count, const void *buf)
{
  return fd_rw(((struct fd_ctx *)ctx)->fd, true, block, count, (void *)buf);
}

/* One pwritev per call in the common case; after a short write the rest
 * goes on from where it stopped. */
static int fd_writev(void *ctx, uint64_t block, uint32_t count, const struct iovec *iov, int iovcnt)
{
  (void)count;
  int fd = ((struct fd_ctx *)ctx)->fd;
  uint64_t off = block * PD_BLOCK_SIZE;
  while (iovcnt > 0) {
    ssize_t n = pwritev(fd, iov, iovcnt > IOV_MAX ? IOV_MAX : iovcnt, (off_t)off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -errno;
    if (n == 0)
      return -EIO;
    off += (uint64_t)n;
    for (; iovcnt > 0 && (size_t)n >= iov->iov_len; iov++, iovcnt--)
      n -= (ssize_t)iov->iov_len;
    if (iovcnt > 0 && n > 0) {
      size_t rest = iov->iov_len - (size_t)n;
      int r = ts__fd_rw(fd, true, (char *)iov->iov_base + n, rest, off);
      if (r)
        return r;
      off += rest;
      iov++;
      iovcnt--;
    }
  }
  return 0;
}

static int fd_flush(void *ctx)
{
  return fdatasync(((struct fd_ctx *)ctx)->fd) ? -errno : 0;
}

static void fd_close(void *ctx)
{
  struct fd_ctx *c = ctx;
  if (c->own)
    close(c->fd);
  free(c);
}

static const struct pd_bdev_ops fd_ops = { fd_read, fd_write, fd_flush, fd_close, fd_writev };

int pd_bdev_from_fd(struct pd_bdev *out, int fd, bool read_only, bool own_fd, ts_error *err)
{
  struct stat st;
  uint64_t size;
  if (fstat(fd, &st))
    return ts_error_set(err, -errno, "fstat: %s", strerror(errno));
  if (S_ISBLK(st.st_mode)) {
    if (ioctl(fd, BLKGETSIZE64, &size))
      return ts_error_set(err, -errno, "BLKGETSIZE64: %s", strerror(errno));
  } else if (S_ISREG(st.st_mode)) {
    size = (uint64_t)st.st_size;
  } else {
    return ts_error_set(err, -EINVAL, "not a regular file or block device");
  }
  struct fd_ctx *c = malloc(sizeof(*c));
  if (!c)
    return -ENOMEM;
  c->fd = fd;
  c->own = own_fd;
  out->ops = &fd_ops;
  out->ctx = c;
  out->nr_blocks = size / PD_BLOCK_SIZE;
  out->read_only = read_only;
  return 0;
}

int pd_bdev_open_path(struct pd_bdev *out, const char *path, bool read_only, bool force_share,
                      bool *stale, ts_error *err)
{
  /* The same ownership rule as a stack's layers (core/claim.h). */
  struct stat st;
  bool excl = !read_only && stat(path, &st) == 0 && S_ISBLK(st.st_mode);
  int fd = open(path, (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC | (excl ? O_EXCL : 0));
  if (fd < 0)
    return ts_error_set(err, -errno, "%s: %s", path, strerror(errno));
  char why[400];
  int r = ts__lock_fd(fd, path, !read_only, force_share, stale, NULL, why, sizeof why);
  if (r)
    ts_error_set(err, r, "%s", why);
  else
    r = pd_bdev_from_fd(out, fd, read_only, true, err);
  if (r)
    close(fd);
  return r;
}

int pd_bdev_open_file(struct pd_bdev *out, const char *path, bool read_only, ts_error *err)
{
  return pd_bdev_open_path(out, path, read_only, false, NULL, err);
}

void pd_bdev_close(struct pd_bdev *bdev)
{
  if (bdev->ops && bdev->ops->close)
    bdev->ops->close(bdev->ctx);
  memset(bdev, 0, sizeof(*bdev));
}

int pd_bdev_read(const struct pd_bdev *bdev, uint64_t block, uint32_t count, void *buf)
{
  if (block > bdev->nr_blocks || count > bdev->nr_blocks - block)
    return -EIO;
  return bdev->ops->read(bdev->ctx, block, count, buf);
}

int pd_bdev_write(const struct pd_bdev *bdev, uint64_t block, uint32_t count, const void *buf)
{
  if (bdev->read_only || !bdev->ops->write)
    return -EROFS;
  if (block > bdev->nr_blocks || count > bdev->nr_blocks - block)
    return -EIO;
  return bdev->ops->write(bdev->ctx, block, count, buf);
}

bool pd_bdev_has_writev(const struct pd_bdev *bdev) { return bdev->ops->writev != NULL; }

int pd_bdev_writev(const struct pd_bdev *bdev, uint64_t block, uint32_t count,
                   const struct iovec *iov, int iovcnt)
{
  if (bdev->read_only || !bdev->ops->write)
    return -EROFS;
  if (block > bdev->nr_blocks || count > bdev->nr_blocks - block)
    return -EIO;
  uint64_t total = 0;
  for (int i = 0; i < iovcnt; i++) {
    if (iov[i].iov_len % PD_BLOCK_SIZE)
      return -EINVAL;
    total += iov[i].iov_len;
  }
  if (total != (uint64_t)count * PD_BLOCK_SIZE)
    return -EINVAL;
  if (bdev->ops->writev)
    return bdev->ops->writev(bdev->ctx, block, count, iov, iovcnt);
  for (int i = 0; i < iovcnt; i++) {
    uint32_t n = (uint32_t)(iov[i].iov_len / PD_BLOCK_SIZE);
    int r = bdev->ops->write(bdev->ctx, block, n, iov[i].iov_base);
    if (r)
      return r;
    block += n;
  }
  return 0;
}

int pd_bdev_flush(const struct pd_bdev *bdev)
{
  if (bdev->read_only || !bdev->ops->flush)
    return 0;
  return bdev->ops->flush(bdev->ctx);
}
