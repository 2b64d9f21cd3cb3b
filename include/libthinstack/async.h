/* libthinstack: asynchronous requests, for VMMs and servers.
 *
 * Include <libthinstack/thinstack.h> rather than this header.
 *
 * A context (ts_aio_ctx) owns a pool of worker threads that run requests
 * through the same checked path as ts_submit(). Completions are delivered in
 * one of two ways, chosen when the context is created:
 *
 *  - TS_AIO_MODE_LOOP: the request's callback runs on the thread of a libuv
 *    loop the caller owns, during uv_run(), never on a worker. While requests
 *    are pending the context keeps the loop alive, so uv_run(UV_RUN_DEFAULT)
 *    returns once every completion has been delivered.
 *  - TS_AIO_MODE_EVENTFD: completed requests wait in a queue and an eventfd
 *    (ts_aio_fd) becomes readable; the host's own event loop calls
 *    ts_aio_poll(), which runs the callbacks on the calling thread.
 *  - TS_AIO_MODE_WORKER: the callback runs on the worker thread that ran the
 *    request, as soon as it finishes; callbacks run concurrently, so they
 *    must synchronise what they share. The first request a callback submits
 *    becomes that worker's next request, with no queue, lock or wake-up in
 *    between: a callback that resubmits keeps its worker as busy as a thread
 *    calling pread in a loop. For hosts with I/O threads of their own, and
 *    for the lowest cost per request.
 *
 * The contract, in the manner of libuv:
 *  - The caller owns the ts_aio_req (on its stack, embedded in its own
 *    structure, or from a pool). The library attaches nothing to it that the
 *    caller must release: after the completion, the struct may be freed,
 *    reused or resubmitted (even from within its own callback).
 *  - ts_aio_submit() checks the request at once, with the checks ts_submit()
 *    makes. When it returns an error the callback is never called. When it
 *    returns 0 the callback is called exactly once, with req->result set to
 *    what ts_submit() would have returned, or -ECANCELED for a request that
 *    had not started when the context was closed. Completions may arrive in
 *    any order.
 *  - req->io and the iovec array it points to are read only during submit:
 *    both are copied (the iovec inline for up to TS_AIO_IOV_INLINE entries),
 *    so the array may live on the caller's stack. The data buffers stay the
 *    caller's and must stay valid until the completion.
 *  - Between a successful submit and its completion the struct must stay
 *    allocated, and the caller must not change cb, result or priv (io and
 *    data it may change); the device's stack must stay open.
 *  - A FLUSH covers the writes whose completions were delivered before the
 *    FLUSH was submitted; requests in flight together have no order.
 */
#ifndef LIBTHINSTACK_ASYNC_H
#define LIBTHINSTACK_ASYNC_H

#ifndef LIBTHINSTACK_THINSTACK_H
#error "include <libthinstack/thinstack.h>, not <libthinstack/async.h>"
#endif

#include <libthinstack/io.h>

#ifdef __cplusplus
extern "C" {
#endif

/* libuv's loop type, declared rather than included so that users of the
 * synchronous API need no libuv headers: struct uv_loop_s is uv_loop_t. */
struct uv_loop_s;

/* An asynchronous submission context on one device (opaque). */
typedef struct ts_aio_ctx ts_aio_ctx;
/* One asynchronous request, owned by the caller (see struct ts_aio_req). */
typedef struct ts_aio_req ts_aio_req;

/* A completion callback. It runs on the loop's thread (LOOP mode), on the
 * thread calling ts_aio_poll() or ts_aio_ctx_close() (EVENTFD mode), or on a
 * worker (WORKER mode; requests cancelled by a close complete on the closing
 * thread). It may submit new requests and resubmit `req`; it may close the
 * context except in WORKER mode. */
typedef void (*ts_aio_cb)(ts_aio_req *req);

/* iovec entries copied into the request itself; longer arrays are copied to
 * memory the library allocates at submit and frees before the completion. */
#define TS_AIO_IOV_INLINE 8

/* A request in flight: the caller fills `io`, `cb` and `data`, keeps the
 * struct alive until `cb` has run, and may reuse it then. */
struct ts_aio_req {
  /* Set by the caller before submit. */
  ts_io io;          /* op, flags, offset, length, iov, iovcnt (as for ts_submit) */
  ts_aio_cb cb;      /* required */
  void *data;        /* the caller's; never touched by the library */
  /* Set by the library before the callback runs: 0 or a negative errno. */
  int result;
  /* Library-owned from a successful submit until the callback runs; the
   * caller never reads or writes it and never has to release anything in it. */
  struct {
    ts_io io;            /* the request as submitted */
    struct ts_aio_req *next;
    ts_aio_ctx *ctx;
    ts_dev *dev;
    struct iovec *iov;   /* iov_inline, or an array freed before completion */
    struct iovec iov_inline[TS_AIO_IOV_INLINE];
  } priv;
};

/* How completions reach the caller (ts_aio_opts.mode). */
typedef enum ts_aio_mode {
  TS_AIO_MODE_LOOP = 0,     /* callbacks on a caller-owned uv_loop_t */
  TS_AIO_MODE_EVENTFD = 1,  /* completion queue + eventfd, drained by ts_aio_poll */
  TS_AIO_MODE_WORKER = 2,   /* callbacks on the worker that ran the request */
} ts_aio_mode;

/* When the context is at its depth: wait for a slot instead of failing with
 * -EAGAIN. Slots free up as workers finish requests, independently of when
 * completions are delivered, so blocking on the loop's own thread is safe.
 * In WORKER mode a worker keeps its slot until the callback returns, so a
 * callback never waits: its first submit takes the slot over, and any other
 * fails with -EAGAIN when the context is full. */
#define TS_AIO_BLOCK (1u << 0)

/* Defaults for ts_aio_opts fields left 0. */
#define TS_AIO_DEFAULT_DEPTH 128

/* Options of ts_aio_ctx_create(); zero fields take the defaults. */
typedef struct ts_aio_opts {
  uint32_t struct_size;     /* sizeof(ts_aio_opts), for compatibility */
  uint32_t mode;            /* ts_aio_mode */
  uint32_t flags;           /* TS_AIO_BLOCK */
  uint32_t workers;         /* worker threads; 0 = the number of CPUs available */
  uint32_t depth;           /* requests submitted but not yet finished by a worker
                               (queued or running; in WORKER mode until the
                               callback returns); 0 = TS_AIO_DEFAULT_DEPTH */
  struct uv_loop_s *loop;   /* LOOP mode: the caller's loop; must be NULL otherwise */
} ts_aio_opts;

/* Create a context. In LOOP mode it registers a uv_async_t handle and a
 * uv_poll_t handle (on an eventfd of its own) on `opts->loop`, and later
 * one uv_poll_t on the file layer's io_uring of the context, at its first
 * request there; none of them keeps the loop alive unless requests are
 * pending. It must be called on that loop's thread. Returns 0, or
 * -EINVAL (bad options, with a message in `err`), -ENOMEM, or the error of
 * creating the eventfd, the handle or a worker thread. */
TS_EXTERN int ts_aio_ctx_create(const ts_aio_opts *opts, ts_aio_ctx **out, ts_error *err);

/* Submit `req` to `dev`. Returns 0 when the request was accepted (its
 * callback will run exactly once), or without ever calling back:
 *   -EINVAL, -EROFS, -EOPNOTSUPP  the request fails ts_submit()'s checks, or
 *                                 req->cb is NULL
 *   -EAGAIN      the context is at its depth (contexts without TS_AIO_BLOCK)
 *   -ESHUTDOWN   the context is being closed (a callback run by the close)
 *   -ENOMEM      copying an iovec array longer than TS_AIO_IOV_INLINE failed
 * LOOP mode: call it on the loop's thread. EVENTFD and WORKER modes: any
 * thread may submit; no submit may run concurrently with ts_aio_ctx_close()
 * except from a callback. */
TS_EXTERN int ts_aio_submit(ts_aio_ctx *ctx, ts_dev *dev, ts_aio_req *req);

/* EVENTFD mode: the file descriptor that becomes readable when completions
 * are waiting. Poll it for POLLIN and then call ts_aio_poll(); never read it
 * yourself. Owned by the context (closed by ts_aio_ctx_close). -EINVAL in
 * the other modes. */
TS_EXTERN int ts_aio_fd(const ts_aio_ctx *ctx);

/* EVENTFD mode: run the callbacks of every request that has finished, on
 * the calling thread, and clear the eventfd's readiness. Returns the number
 * of callbacks run (0 when none was waiting), or -EINVAL in the other modes.
 * Call it from one thread at a time. */
TS_EXTERN int ts_aio_poll(ts_aio_ctx *ctx);

/* Number of requests accepted and not yet completed (queued, running, or
 * finished with the callback still to run). */
TS_EXTERN uint64_t ts_aio_pending(const ts_aio_ctx *ctx);

/* Close the context: requests not yet started complete with -ECANCELED,
 * running ones are waited for, every outstanding callback runs (on the
 * calling thread) before it returns, and the worker threads exit. Submits
 * from those callbacks fail with -ESHUTDOWN. It may be called from a
 * completion callback. LOOP mode: call it on the loop's thread; the loop
 * handle is released in the loop's next iteration, so run the loop once more
 * (uv_run returns at once if nothing else is active) before uv_loop_close().
 * EVENTFD mode: everything is freed on return (or, when called from a
 * callback run by ts_aio_poll, when that poll returns). WORKER mode: call it
 * from a thread that is not one of the context's workers; from a callback it
 * returns -EDEADLK and does nothing. Everything is freed on return. NULL is
 * a no-op. Returns 0. */
TS_EXTERN int ts_aio_ctx_close(ts_aio_ctx *ctx);

/* One TS_HAVE_<CALL> per call above, for code that builds against
 * several versions of the library (#ifdef TS_HAVE_TS_POOL_CHECK). */
#define TS_HAVE_TS_AIO_CTX_CREATE 1
#define TS_HAVE_TS_AIO_SUBMIT 1
#define TS_HAVE_TS_AIO_FD 1
#define TS_HAVE_TS_AIO_POLL 1
#define TS_HAVE_TS_AIO_PENDING 1
#define TS_HAVE_TS_AIO_CTX_CLOSE 1

#ifdef __cplusplus
}
#endif
#endif
