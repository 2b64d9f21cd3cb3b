/* Metadata device I/O for the thin-pool metadata library.
 *
 * Everything in src/pdata/ reads and writes its 4 KiB metadata blocks through
 * a struct pd_bdev, so the same code runs on a plain file (tests, CLI tools)
 * and on any libthinstack device (the thin-pool layer).
 */
#ifndef PDATA_BDEV_H
#define PDATA_BDEV_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include <libthinstack/thinstack.h>

#define PD_BLOCK_SIZE 4096u

/* Callbacks of a metadata device. Blocks are 4 KiB; `block + count` never
 * exceeds nr_blocks. Each returns 0 or a negative errno (short transfers are
 * the callback's job to retry or turn into -EIO). `write` may be NULL for a
 * read-only device; `flush` makes every completed write durable. Calls may
 * come from several threads at once for reads, never for writes (the library
 * writes only under its exclusive writer role). */
struct pd_bdev_ops {
  int (*read)(void *ctx, uint64_t block, uint32_t count, void *buf);
  int (*write)(void *ctx, uint64_t block, uint32_t count, const void *buf);
  int (*flush)(void *ctx);
  /* Release ctx (close the fd, free the wrapper); may be NULL. */
  void (*close)(void *ctx);
  /* Write iovcnt buffers (each a multiple of 4 KiB, together `count`
   * blocks) at `block` in one request, so neighbouring cache blocks need no
   * staging copy. May be NULL: pd_bdev_writev then falls back to `write`. */
  int (*writev)(void *ctx, uint64_t block, uint32_t count, const struct iovec *iov, int iovcnt);
};

struct pd_bdev {
  const struct pd_bdev_ops *ops;
  void *ctx;
  uint64_t nr_blocks; /* size in 4 KiB blocks */
  bool read_only;     /* true: never write (ops->write may still be set) */
};

/* Wrap an open file descriptor (regular file or block device). The size is
 * taken from fstat / BLKGETSIZE64 and rounded down to 4 KiB. With own_fd the
 * fd is closed by pd_bdev_close(). Returns 0, or -errno with a message in
 * err (may be NULL). */
int pd_bdev_from_fd(struct pd_bdev *out, int fd, bool read_only, bool own_fd, ts_error *err);

/* Open `path` (O_RDWR, or O_RDONLY when read_only) and wrap it as above,
 * owning it as a stack's layer would: locked for writing, or shared when
 * read_only; -EBUSY with the holder named in err when another process or
 * stack has it. */
int pd_bdev_open_file(struct pd_bdev *out, const char *path, bool read_only, ts_error *err);
/* The same; `force_share` reads without the shared lock and sets *stale (may
 * be NULL) when a writer holds the file. */
int pd_bdev_open_path(struct pd_bdev *out, const char *path, bool read_only, bool force_share,
                      bool *stale, ts_error *err);

/* Wrap a libthinstack device (for instance a stack's "file" node) through the
 * public request API: ts_pread / ts_pwrite / ts_flush / ts_dev_size. The
 * device must stay open while the bdev is used. */
int pd_bdev_from_ts_dev(struct pd_bdev *out, ts_dev *dev, bool read_only, ts_error *err);

/* Call ops->close and clear *bdev. Safe on a zeroed struct. */
void pd_bdev_close(struct pd_bdev *bdev);

/* Convenience wrappers that check ranges. */
int pd_bdev_read(const struct pd_bdev *bdev, uint64_t block, uint32_t count, void *buf);
int pd_bdev_write(const struct pd_bdev *bdev, uint64_t block, uint32_t count, const void *buf);
int pd_bdev_flush(const struct pd_bdev *bdev);
/* Whether ops->writev is set (writing a run with pd_bdev_writev costs one
 * request rather than one per iovec). */
bool pd_bdev_has_writev(const struct pd_bdev *bdev);
/* Write `count` blocks gathered from iov[0..iovcnt) at `block`; without
 * ops->writev, one `write` per iovec. */
int pd_bdev_writev(const struct pd_bdev *bdev, uint64_t block, uint32_t count,
                   const struct iovec *iov, int iovcnt);

#endif
