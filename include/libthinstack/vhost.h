/* libthinstack: serving a device to a VMM over vhost-user-blk.
 *
 * Include <libthinstack/thinstack.h> rather than this header.
 *
 * QEMU (-device vhost-user-blk-pci), cloud-hypervisor (--disk
 * vhost_user=true), crosvm and Firecracker attach out-of-process disks
 * through the vhost-user protocol on a Unix socket: the VMM hands over the
 * guest's shared memory and the virtqueues, and the server runs the
 * virtio-blk device (VIRTIO 1.2, section 5.2) itself. The protocol is the
 * library's own (src/vhost); docs/exports.md says how to attach a stack.
 *
 * A server listens on one socket for one device and serves one VMM
 * connection at a time. Each virtqueue has a thread of its own that polls
 * the queue's kick eventfd and runs the requests through an asynchronous
 * context (async.h): READ and WRITE, FLUSH, DISCARD, and WRITE_ZEROES with
 * the guest's unmap flag as TS_IO_MAY_UNMAP (without it, a thin volume
 * provisions the range at metadata cost). A malformed descriptor chain gets
 * an error status (or, when it names no writable status byte, an empty used
 * element) and never stops the other queues. When the VMM disconnects,
 * requests in flight finish, the memory is unmapped and the next connection
 * starts a fresh session.
 */
#ifndef LIBTHINSTACK_VHOST_H
#define LIBTHINSTACK_VHOST_H

#ifndef LIBTHINSTACK_THINSTACK_H
#error "include <libthinstack/thinstack.h>, not <libthinstack/vhost.h>"
#endif

#include <libthinstack/io.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A running vhost-user-blk server (opaque). */
typedef struct ts_vhost_blk ts_vhost_blk;

/* Queues offered when ts_vhost_blk_opts.queues is 0, and the most a server
 * takes. */
#define TS_VHOST_DEFAULT_QUEUES 1
#define TS_VHOST_MAX_QUEUES 64

/* Worker threads per queue when ts_vhost_blk_opts.workers is 0. A guest's
 * deep queue of small writes needs that many at the host at once: with 2,
 * 4K random writes at depth 32 ran at 0.7x of qemu-storage-daemon's
 * thread pool, with 8 at 1.2-1.5x (bench/vhost.sh). Idle ones only sleep. */
#define TS_VHOST_DEFAULT_WORKERS 8

/* Offer the device read-only (VIRTIO_BLK_F_RO) even when it is writable. */
#define TS_VHOST_READ_ONLY (1u << 0)

/* Options of ts_vhost_blk_serve(); zero fields take the defaults. */
typedef struct ts_vhost_blk_opts {
  uint32_t struct_size; /* sizeof(ts_vhost_blk_opts), for compatibility */
  uint32_t flags;       /* TS_VHOST_* */
  uint32_t queues;      /* virtqueues offered (VHOST_USER_GET_QUEUE_NUM);
                            0 = TS_VHOST_DEFAULT_QUEUES */
  uint32_t workers;     /* worker threads per queue; 0 = TS_VHOST_DEFAULT_WORKERS */
  const char *serial;   /* VIRTIO_BLK_T_GET_ID, up to 20 bytes; NULL: the
                            device's name. Copied. */
} ts_vhost_blk_opts;

/* Serve `dev` as a vhost-user-blk device on the Unix socket `path`, on
 * threads of its own. The socket is created with mode 0600 (chown or chmod
 * it for a VMM running as another user); a stale socket at `path` (nobody
 * answers) is replaced, -EADDRINUSE when a server answers there, -EEXIST
 * when `path` is not a socket. Other errors: -EINVAL (bad options, a path
 * longer than a socket address), -ENOMEM, or the error of creating the
 * socket or a thread; each with a message in `err`.
 *
 * Ownership: the caller keeps the stack and must keep it open until
 * ts_vhost_blk_stop() returns; `*out` is the caller's to stop. Thread
 * safety: any thread may start servers, several on one stack (one per
 * device or socket); requests from the guest run beside any other use of
 * the stack, as concurrent requests from threads would. */
TS_EXTERN int ts_vhost_blk_serve(ts_dev *dev, const char *path, const ts_vhost_blk_opts *opts,
                                 ts_vhost_blk **out, ts_error *err);

/* The socket path a server listens on; lives until ts_vhost_blk_stop. */
TS_EXTERN const char *ts_vhost_blk_path(const ts_vhost_blk *srv);

/* Sessions (VMM connections) the server has accepted so far. Thread-safe. */
TS_EXTERN uint64_t ts_vhost_blk_sessions(const ts_vhost_blk *srv);

/* Stop the server: the connection is closed, requests in flight finish and
 * have their used elements pushed, the threads are joined, the guest's
 * memory is unmapped and the socket removed. Writes that completed are in
 * the stack; call ts_flush() or ts_stack_close() to make them durable.
 * Frees `srv`; NULL is a no-op. Call it once, from any thread but the
 * server's own. Returns 0. */
TS_EXTERN int ts_vhost_blk_stop(ts_vhost_blk *srv);

/* One TS_HAVE_<CALL> per call above, for code that builds against
 * several versions of the library (#ifdef TS_HAVE_TS_POOL_CHECK). */
#define TS_HAVE_TS_VHOST_BLK_SERVE 1
#define TS_HAVE_TS_VHOST_BLK_PATH 1
#define TS_HAVE_TS_VHOST_BLK_SESSIONS 1
#define TS_HAVE_TS_VHOST_BLK_STOP 1

#ifdef __cplusplus
}
#endif
#endif
