/* The data path over one open file descriptor, shared by the file layer and
 * the kernel layer (regular files and block devices): the read/write loop,
 * the O_DIRECT bounce, fallocate, fdatasync and a regular file's extent map.
 * Opening, claiming and limits policy stay with each layer.
 *
 * Thread safety: every call may run concurrently on the same ts__fio; the
 * only shared state is the atomic FIEMAP flag and bounce counter. */
#ifndef TS_BACKENDS_FILEIO_H
#define TS_BACKENDS_FILEIO_H

#include <libthinstack/layer.h>

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

/* The bounce buffer for the unaligned pieces of O_DIRECT requests (one per
 * thread, reused) is at most this large; longer runs go through it in
 * steps. */
#define TS__FIO_BOUNCE_MAX (1u << 20)

struct ts__fio {
  int fd;
  uint32_t align;      /* O_DIRECT: memory and length alignment; 0 without O_DIRECT */
  bool eof_zeroes;     /* reads past the end see zeroes (a file that shrank) */
  _Atomic bool fiemap; /* FIEMAP works here; cleared when it answers "unsupported" */
  _Atomic uint64_t bounced; /* bytes copied through the bounce buffer (status) */
};

/* Set up `f` for `fd` (not taken over: the caller closes it). */
void ts__fio_init(struct ts__fio *f, int fd, bool direct, uint32_t align, bool eof_zeroes);

/* Transfer all of [off, off+len) between the file and the iovec; `rwf` is
 * pwritev2's flags for writes (RWF_DSYNC for FUA). With O_DIRECT, aligned
 * pieces of the iovec go to the file directly and only the unaligned ones
 * are copied, through a buffer of the calling thread's (freed when it
 * exits). 0 or -errno. */
int ts__fio_rw(struct ts__fio *f, bool write, const struct iovec *iov, int iovcnt, uint64_t off,
               uint64_t len, int rwf);

/* fdatasync, restarted on EINTR. */
int ts__fio_sync(struct ts__fio *f);

/* fallocate(mode); a mode the file system or kernel lacks answers
 * -EOPNOTSUPP, other failures -errno. */
int ts__fio_fallocate(struct ts__fio *f, int mode, uint64_t off, uint64_t len);

/* A regular file's extents in [off, off+len): data, allocated zeroes
 * (unwritten extents without newer cached data) and holes; FIEMAP, else
 * SEEK_DATA/SEEK_HOLE. May report a prefix: the core asks again. */
int ts__fio_block_status(struct ts__fio *f, uint64_t off, uint64_t len, ts_extent_list *out);

/* Limits of a regular file of `size` bytes with logical block `lbs` and
 * allocation unit `alloc_unit` (st_blksize): unlimited requests, discard and
 * write-zeroes as hole punching, provisioning in allocation units. */
void ts__fio_file_limits(ts_limits *lim, uint64_t size, uint32_t lbs, uint32_t alloc_unit);

#endif
