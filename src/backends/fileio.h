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

struct ts__fio_ring;

struct ts__fio {
  int fd;
  uint32_t align;      /* O_DIRECT: memory and length alignment; 0 without O_DIRECT */
  bool eof_zeroes;     /* reads past the end see zeroes (a file that shrank) */
  _Atomic bool fiemap; /* FIEMAP works here; cleared when it answers "unsupported" */
  _Atomic uint64_t bounced;  /* bytes copied through the bounce buffer (status) */
  struct ts__fio_ring *ring; /* the async path's io_uring; NULL: workers only */
  bool ring_writes;          /* WRITE and FLUSH go to a ring too, not just READ */
  char ring_state[96];       /* "io_uring", or why the workers run it (status) */
  _Atomic uint64_t ring_ops; /* requests completed through a ring (status) */
  _Atomic uint64_t ring_ops_sink; /* of which on an async context's ring, reaped on its thread */
  uint32_t clone_align;           /* FICLONERANGE's unit (the file system block); 0: never clone */
  _Atomic bool no_clone;          /* the kernel refused FICLONERANGE here: not tried again */
  _Atomic bool no_cfr;            /* the kernel refused copy_file_range here */
  _Atomic uint64_t cloned;        /* bytes copied by FICLONERANGE (status) */
  _Atomic uint64_t cfr_copied;    /* bytes copied by copy_file_range (status) */
  /* With skip_clean_syncs, ts__fio_sync skips the fdatasync (and the device
   * cache flush it costs) when nothing changed since the last one that
   * succeeded: `changes` counts writes, fallocates and copies once they
   * have returned (failed ones too), `synced` the count a successful
   * fdatasync began after. Only for an owner whose every change of the file
   * goes through these calls (the file layer; the kernel layer's ioctls
   * do not). */
  bool skip_clean_syncs;
  _Atomic uint64_t changes;
  _Atomic uint64_t synced;
  _Atomic uint64_t syncs, syncs_skipped; /* fdatasyncs made and skipped (status) */
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

/* Copy [src, src+len) of the file to [dst, dst+len) in the kernel:
 * FICLONERANGE (the file system shares the extents: no data I/O), else,
 * unless `clone_only`, copy_file_range (which clones where the file system
 * can, else copies in the kernel). A call the kernel refuses for this file
 * (EOPNOTSUPP, ENOTTY, EXDEV, EINVAL on an aligned range, ENOSYS) is
 * remembered in no_clone/no_cfr and not made again; a range off
 * clone_align is not cloned. -EOPNOTSUPP when no allowed call can do it (the
 * caller copies another way), other failures -errno. fdatasync makes the
 * copy durable as it does a write: the clone is a logged metadata change
 * of the file. */
int ts__fio_copy(struct ts__fio *f, uint64_t src, uint64_t dst, uint64_t len, bool clone_only);
/* The best copy the kernel has not refused for this file: "FICLONERANGE",
 * "copy_file_range" or "none" (status). */
const char *ts__fio_copy_state(struct ts__fio *f);

/* fdatasync, restarted on EINTR; with skip_clean_syncs, 0 at once when no
 * change returned since the last successful one began. Thread-safe. */
int ts__fio_sync(struct ts__fio *f);
/* Count a change of the file made outside these calls (ftruncate). */
void ts__fio_changed(struct ts__fio *f);

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

/* Set up the io_uring that ts__fio_submit_async() uses: for READs, and
 * with TS_IO_URING=1 in the environment for WRITE and FLUSH too. When the kernel refuses a ring (EPERM
 * from kernel.io_uring_disabled, ENOSYS), the library was built without
 * liburing, or TS_IO_URING=0 is in the environment, `f->ring` stays NULL
 * and no context's ring is used either; `f->ring_state` says which ops use
 * a ring or why none do. Never an error. Call once, from the first async
 * request. */
void ts__fio_ring_start(struct ts__fio *f);
/* Stop the file ring's reaper and free the ring; no request may be in
 * flight on it. */
void ts__fio_ring_stop(struct ts__fio *f);

/* Start a READ, WRITE (FUA as RWF_DSYNC) or FLUSH on a ring. Started by an
 * async context in LOOP or EVENTFD mode (ts__aio_sink_current set), it goes
 * to that context's ring and `done` runs on the thread that reaps it (the
 * context's); otherwise to the file's ring, and `done` runs on its reaper
 * thread. A short transfer or EAGAIN finishes synchronously there. Declines
 * (-EAGAIN) without a ring, for other ops, for WRITE and FLUSH unless
 * `ring_writes`, for O_DIRECT
 * requests with unaligned pieces (they bounce on the worker path) and when
 * the ring is full. Thread-safe. */
int ts__fio_submit_async(struct ts__fio *f, const ts_io *io, ts_io_done_fn done, void *arg);

#endif
