/* The async API: a worker pool per context running requests through
 * ts_submit(), with completions handed back on a libuv loop or through an
 * eventfd-signalled queue.
 *
 * Why a pool of our own (uv_thread_create, uv_mutex, uv_cond) rather than
 * uv_queue_work(): libuv's pool is process-wide and shared with its file and
 * DNS work (4 threads unless UV_THREADPOOL_SIZE says otherwise, fixed at first
 * use), so the caller could choose neither the worker count nor keep slow
 * storage from starving the rest of its program; and uv_queue_work needs a
 * loop, which EVENTFD mode does not have. One pool serves both modes; only
 * the last step (waking the completer) differs.
 *
 * Locking: one mutex per context guards the work queue, the done queue and
 * the counters. Workers take it twice per request (pop, push); callbacks run
 * without it, so they may submit again.
 *
 * The depth count is atomic, so that a slot is taken and given back without
 * the lock; TS_AIO_BLOCK submitters register as waiters under the lock and
 * the releasing side takes it only when there are some.
 *
 * WORKER mode skips both hand-offs. The callback runs on the worker that ran
 * the request, which keeps the request's depth slot until it returns; the
 * first submit the callback makes takes the slot over and becomes the
 * worker's next request, with no lock, no queue and no wake-up. A callback that
 * resubmits thus keeps its worker running exactly like a thread calling
 * pread in a loop, which is what a VMM's I/O thread competes with.
 *
 * LOOP and EVENTFD modes skip the workers for a device whose layer can start
 * a request itself (the submit_async hook: the file layer's io_uring): the
 * request starts on the submitting thread, and the layer's completion goes
 * straight onto the done queue, so a request makes one thread hand-off
 * (completion to the caller) instead of two. Whatever the layer declines
 * takes the worker path as before. Such requests are counted in `nasync`,
 * which close waits to reach zero before it tears anything down.
 *
 * Where the layer can signal an eventfd of the context's (the file layer's
 * io_uring; the sink, see core/internal.h), its completions are reaped on
 * the context's own thread as well: LOOP mode watches the eventfd with a
 * uv_poll handle, EVENTFD mode gives it to the caller as ts_aio_fd, and
 * either drains the sources before the done queue. LOOP mode watches a
 * source's own descriptor instead where it has one (sink.watch: the ring's
 * fd, readable while its CQ holds entries), which saves the eventfd's
 * signal and the read clearing it on every wake-up; EVENTFD mode cannot,
 * since the caller polls the one fd it was given. Such a request makes no
 * thread hand-off at all, like a thread calling pread; a completion reaped
 * there still goes through the done queue (without a wake-up), so that a
 * callback may close the context while others wait to run.
 */
#include "core/internal.h"

#include <libthinstack/async.h>

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sched.h>
#include <unistd.h>
#include <uv.h>

#define MAX_WORKERS 1024
#define SPIN_YIELDS 64

struct ts_aio_ctx {
  uint32_t mode;
  uint32_t flags;
  uint32_t depth;
  uv_loop_t *loop;

  uv_mutex_t lock;
  uv_cond_t work_cond;      /* workers wait here for work or stop */
  uv_cond_t space_cond;     /* TS_AIO_BLOCK submitters wait here for a slot */
  uv_cond_t idle_cond;      /* close waits here for nasync to reach 0 */
  uint32_t nasync;          /* started through submit_async, not completed */
  ts_aio_req *q_head, *q_tail;        /* accepted, not started */
  ts_aio_req *done_head, *done_tail;  /* finished or cancelled, callback not run */
  ts_aio_req *batch;        /* taken from the done queue, being delivered */
  _Atomic uint32_t inflight;      /* queued + running: what depth limits */
  _Atomic uint32_t space_waiters; /* TS_AIO_BLOCK submitters waiting; under lock */
  bool stopping;            /* workers exit once the queue is empty */

  _Atomic uint64_t pending; /* accepted, callback not yet run */
  _Atomic uint32_t nqueued; /* length of the work queue, for idle workers to watch */
  _Atomic bool closing;     /* ts_aio_ctx_close has begun; read unlocked by
                               WORKER-mode callbacks handing their worker work */
  int in_poll;              /* EVENTFD: ts_aio_poll is on the stack */
  bool free_after_poll;     /* EVENTFD: closed from a callback run by poll */

  uv_thread_t *threads;
  uint32_t nthreads;

  uv_async_t async;         /* LOOP mode */
  uv_poll_t poll;           /* LOOP mode: watches efd for the sink */
  bool poll_on;             /* LOOP mode: `poll` was initialised */
  struct fd_watch *watches; /* LOOP mode: the sources' own fds (sink.watch) */
  int nhandles;             /* LOOP mode: handles to close before freeing */
  int efd;                  /* EVENTFD mode: the caller's; LOOP mode: the sink's */
  bool sink_on;             /* the sink is lent: something watches efd */
  struct ts__aio_sink sink; /* the layers' completion sources, reaped here */
};

/* LOOP mode: a uv_poll on a source's own descriptor (sink.watch). */
struct fd_watch {
  uv_poll_t h;
  struct fd_watch *next;
};

_Thread_local struct ts__aio_sink *ts__aio_sink_current;

/* The context whose sources this thread is reaping: its completions need
 * no wake-up, the reaper delivers them next. */
static _Thread_local ts_aio_ctx *reaping;

/* Worker side ------------------------------------------------------------ */

/* The worker a WORKER-mode callback runs on: while `in_cb`, the callback's
 * first submit is left in `next` for this worker to run. */
struct worker {
  ts_aio_ctx *ctx;
  ts_aio_req *next;
  bool in_cb;
};

static _Thread_local struct worker *this_worker;

static void deliver_one(ts_aio_ctx *ctx, ts_aio_req *req);

static void wake_completer(ts_aio_ctx *ctx)
{
  if (ctx->mode == TS_AIO_MODE_LOOP) {
    uv_async_send(&ctx->async);
  } else {
    uint64_t one = 1;
    /* EAGAIN means the counter is saturated: it is readable anyway. */
    while (write(ctx->efd, &one, sizeof one) < 0 && errno == EINTR)
      ;
  }
}

/* Append to the done queue; true if the queue was empty, i.e. the completer
 * may be idle and must be woken. Called with the lock held. */
static bool push_done(ts_aio_ctx *ctx, ts_aio_req *req)
{
  bool was_empty = ctx->done_head == NULL;
  req->priv.next = NULL;
  if (ctx->done_tail)
    ctx->done_tail->priv.next = req;
  else
    ctx->done_head = req;
  ctx->done_tail = req;
  return was_empty;
}

/* Take a depth slot if one is free. */
static bool reserve_slot(ts_aio_ctx *ctx)
{
  uint32_t cur = atomic_load(&ctx->inflight);
  while (cur < ctx->depth)
    if (atomic_compare_exchange_weak(&ctx->inflight, &cur, cur + 1))
      return true;
  return false;
}

/* Give back `n` depth slots. A waiter registers (under the lock) before it
 * last tries reserve_slot, so either that try sees the slot or this sees
 * the waiter, and the lock orders the signal after its wait began. */
static void release_slots(ts_aio_ctx *ctx, uint32_t n)
{
  atomic_fetch_sub(&ctx->inflight, n);
  if (atomic_load(&ctx->space_waiters)) {
    uv_mutex_lock(&ctx->lock);
    uv_cond_broadcast(&ctx->space_cond);
    uv_mutex_unlock(&ctx->lock);
  }
}

/* WORKER mode: run `req` and its callback, then whatever the callback
 * handed this worker, until a callback hands it nothing. The depth slot is
 * held throughout, so a resubmitting callback can never be refused for
 * want of one that another thread took in between. */
static void run_chain(ts_aio_ctx *ctx, struct worker *w, ts_aio_req *req)
{
  while (req) {
    req->result = ts__submit_checked(req->priv.dev, &req->priv.io);
    w->next = NULL;
    w->in_cb = true;
    deliver_one(ctx, req);
    w->in_cb = false;
    req = w->next;
  }
  release_slots(ctx, 1);
}

static void worker_main(void *arg)
{
  ts_aio_ctx *ctx = arg;
  struct worker w = { .ctx = ctx };
  this_worker = &w;
  uv_mutex_lock(&ctx->lock);
  for (;;) {
    if (!ctx->q_head && !ctx->stopping && ctx->mode != TS_AIO_MODE_WORKER) {
      /* The completer is about to run this worker's callback, which often
       * submits the next request at once: yield the CPU to it a few times
       * before sleeping, so that request needs no futex wake-up. On two
       * cores this lifted small random I/O at depth 32 in LOOP mode by
       * about a third (thinstack bench io --mode loop). */
      uv_mutex_unlock(&ctx->lock);
      for (int i = 0; i < SPIN_YIELDS && !atomic_load_explicit(&ctx->nqueued, memory_order_relaxed);
           i++)
        sched_yield();
      uv_mutex_lock(&ctx->lock);
    }
    while (!ctx->q_head && !ctx->stopping)
      uv_cond_wait(&ctx->work_cond, &ctx->lock);
    ts_aio_req *req = ctx->q_head;
    if (!req)
      break; /* stopping and nothing left */
    ctx->q_head = req->priv.next;
    if (!ctx->q_head)
      ctx->q_tail = NULL;
    atomic_fetch_sub(&ctx->nqueued, 1);
    uv_mutex_unlock(&ctx->lock);

    if (ctx->mode == TS_AIO_MODE_WORKER) {
      run_chain(ctx, &w, req);
      uv_mutex_lock(&ctx->lock);
      continue;
    }

    req->result = ts__submit_checked(req->priv.dev, &req->priv.io);
    release_slots(ctx, 1);

    uv_mutex_lock(&ctx->lock);
    /* Only the first finished request wakes the completer: it drains the
     * queue until empty, and the next one to find it empty wakes it again.
     * The context outlives this wake: close joins the workers first. */
    if (push_done(ctx, req)) {
      uv_mutex_unlock(&ctx->lock);
      wake_completer(ctx);
      uv_mutex_lock(&ctx->lock);
    }
  }
  uv_mutex_unlock(&ctx->lock);
  this_worker = NULL;
}

/* The end of a request a layer started itself (submit_async), on whatever
 * thread the layer completes it. Close waits for `nasync` under the lock,
 * so the context stays alive until the unlock here, and the completer is
 * woken before it. */
static void async_done(void *arg, int result)
{
  ts_aio_req *req = arg;
  ts_aio_ctx *ctx = req->priv.ctx;
  req->result = result;
  if (result)
    ts__count_error(req->priv.dev, req->priv.io.op);
  release_slots(ctx, 1);
  uv_mutex_lock(&ctx->lock);
  if (push_done(ctx, req) && reaping != ctx)
    wake_completer(ctx);
  if (--ctx->nasync == 0)
    uv_cond_broadcast(&ctx->idle_cond);
  uv_mutex_unlock(&ctx->lock);
}

static bool layer_has_async(const ts_dev *dev)
{
  const ts_layer_type *t = dev->type;
  return TS__LAYER_OP(t, submit_async) && t->thread_model != TS_THREAD_SERIALIZE;
}

/* Completer side --------------------------------------------------------- */

/* Hand the struct back clean, with nothing left for the caller to release,
 * and run its callback. */
static void deliver_one(ts_aio_ctx *ctx, ts_aio_req *req)
{
  if (req->priv.iov && req->priv.iov != req->priv.iov_inline)
    free(req->priv.iov);
  req->priv.iov = NULL;
  req->priv.io.iov = NULL;
  req->priv.next = NULL;
  req->priv.ctx = NULL;
  req->priv.dev = NULL;
  uint64_t before = atomic_fetch_sub(&ctx->pending, 1);
  if (ctx->mode == TS_AIO_MODE_LOOP && before == 1 && !atomic_load(&ctx->closing))
    uv_unref((uv_handle_t *)&ctx->async);
  req->cb(req);
}

/* Run the callbacks of everything on the done queue. The queue is taken in
 * one lock as a batch kept in the context (touched only by the completing
 * thread), so that a callback may close the context: the close delivers the
 * rest of the batch itself. Returns the number of callbacks run. */
static int deliver(ts_aio_ctx *ctx)
{
  int n = 0;
  for (;;) {
    if (!ctx->batch) {
      uv_mutex_lock(&ctx->lock);
      ctx->batch = ctx->done_head;
      ctx->done_head = ctx->done_tail = NULL;
      uv_mutex_unlock(&ctx->lock);
      if (!ctx->batch)
        break;
    }
    ts_aio_req *req = ctx->batch;
    ctx->batch = req->priv.next;
    n++;
    deliver_one(ctx, req);
  }
  return n;
}

static void on_async(uv_async_t *h)
{
  ts_aio_ctx *ctx = h->data;
  deliver(ctx);
}

/* Run the completions the sink's sources hold (their `done` queues them);
 * with `wait`, wait for one on each source that has requests in flight.
 * `here`: this thread delivers them next, so they need no wake-up. */
static int reap_sources(ts_aio_ctx *ctx, bool wait, bool here)
{
  int n = 0;
  ts_aio_ctx *prev = reaping;
  reaping = here ? ctx : prev;
  for (struct ts__aio_source *s = atomic_load_explicit(&ctx->sink.sources, memory_order_acquire); s;
       s = s->next)
    n += s->reap(s, wait);
  reaping = prev;
  return n;
}

static uint32_t sources_inflight(ts_aio_ctx *ctx)
{
  uint32_t n = 0;
  for (struct ts__aio_source *s = atomic_load_explicit(&ctx->sink.sources, memory_order_acquire); s;
       s = s->next)
    n += s->inflight(s);
  return n;
}

/* Reap and deliver until neither finds anything: a callback's submit may
 * complete at once (a read from the page cache). Stops once a callback has
 * closed the context. */
static int drain(ts_aio_ctx *ctx)
{
  int n = 0;
  for (;;) {
    int reaped = reap_sources(ctx, false, true);
    int delivered = deliver(ctx);
    n += delivered;
    if (atomic_load(&ctx->closing) || (!reaped && !delivered))
      return n;
  }
}

/* Clear the eventfd's readiness before draining: a completion after the
 * drain signals it again. */
static void clear_efd(ts_aio_ctx *ctx)
{
  uint64_t v;
  while (read(ctx->efd, &v, sizeof v) < 0 && errno == EINTR)
    ;
}

static void on_poll(uv_poll_t *h, int status, int events)
{
  (void)status, (void)events;
  ts_aio_ctx *ctx = h->data;
  clear_efd(ctx);
  drain(ctx);
}

/* A source's own fd: readable while it holds completions, so reaping them
 * is what clears it; there is nothing to read. */
static void on_watch(uv_poll_t *h, int status, int events)
{
  (void)status, (void)events;
  drain(h->data);
}

static int watch_fd(struct ts__aio_sink *sink, int fd)
{
  ts_aio_ctx *ctx = (ts_aio_ctx *)((char *)sink - offsetof(ts_aio_ctx, sink));
  struct fd_watch *w = calloc(1, sizeof *w);
  if (!w)
    return -ENOMEM;
  int r = uv_poll_init(ctx->loop, &w->h, fd);
  if (r) {
    free(w);
    return r;
  }
  w->h.data = ctx;
  uv_unref((uv_handle_t *)&w->h);
  w->next = ctx->watches;
  ctx->watches = w;
  ctx->nhandles++;
  /* A handle that failed to start still has to be closed: it is listed. */
  return uv_poll_start(&w->h, UV_READABLE, on_watch);
}

static void destroy(ts_aio_ctx *ctx)
{
  uv_cond_destroy(&ctx->idle_cond);
  uv_cond_destroy(&ctx->space_cond);
  uv_cond_destroy(&ctx->work_cond);
  uv_mutex_destroy(&ctx->lock);
  pthread_mutex_destroy(&ctx->sink.lock);
  while (ctx->watches) {
    struct fd_watch *next = ctx->watches->next;
    free(ctx->watches);
    ctx->watches = next;
  }
  free(ctx->threads);
  free(ctx);
}

static void on_handle_closed(uv_handle_t *h)
{
  ts_aio_ctx *ctx = h->data;
  if (--ctx->nhandles == 0)
    destroy(ctx);
}

/* Stop and join the workers; they finish what they are running first. */
static void stop_workers(ts_aio_ctx *ctx)
{
  uv_mutex_lock(&ctx->lock);
  ctx->stopping = true;
  uv_cond_broadcast(&ctx->work_cond);
  uv_mutex_unlock(&ctx->lock);
  for (uint32_t i = 0; i < ctx->nthreads; i++)
    uv_thread_join(&ctx->threads[i]);
  ctx->nthreads = 0;
}

/* Public API ------------------------------------------------------------- */

int ts_aio_ctx_create(const ts_aio_opts *opts, ts_aio_ctx **out, ts_error *err)
{
  if (!out)
    return ts_error_set(err, -EINVAL, "aio: no place to store the context");
  *out = NULL;
  if (!opts)
    return ts_error_set(err, -EINVAL, "aio: options are required (mode, and the loop in LOOP mode)");
  ts_aio_opts o;
  memset(&o, 0, sizeof o);
  if (opts->struct_size < offsetof(ts_aio_opts, loop) + sizeof o.loop)
    return ts_error_set(err, -EINVAL, "aio: opts.struct_size %u is smaller than any known layout",
                        opts->struct_size);
  memcpy(&o, opts, opts->struct_size < sizeof o ? opts->struct_size : sizeof o);

  if (o.mode != TS_AIO_MODE_LOOP && o.mode != TS_AIO_MODE_EVENTFD &&
      o.mode != TS_AIO_MODE_WORKER)
    return ts_error_set(err, -EINVAL, "aio: unknown mode %u", o.mode);
  if (o.flags & ~TS_AIO_BLOCK)
    return ts_error_set(err, -EINVAL, "aio: unknown flags 0x%x", o.flags & ~TS_AIO_BLOCK);
  if (o.mode == TS_AIO_MODE_LOOP && !o.loop)
    return ts_error_set(err, -EINVAL, "aio: LOOP mode needs opts.loop");
  if (o.mode != TS_AIO_MODE_LOOP && o.loop)
    return ts_error_set(err, -EINVAL, "aio: opts.loop is only for LOOP mode");
  if (o.workers > MAX_WORKERS)
    return ts_error_set(err, -EINVAL, "aio: %u workers is more than the maximum %u", o.workers,
                        MAX_WORKERS);
  if (o.workers == 0)
    o.workers = uv_available_parallelism();
  if (o.depth == 0)
    o.depth = TS_AIO_DEFAULT_DEPTH;

  ts_aio_ctx *ctx = calloc(1, sizeof *ctx);
  if (!ctx)
    return ts_error_set(err, -ENOMEM, "aio: out of memory");
  ctx->threads = calloc(o.workers, sizeof *ctx->threads);
  if (!ctx->threads) {
    free(ctx);
    return ts_error_set(err, -ENOMEM, "aio: out of memory");
  }
  ctx->mode = o.mode;
  ctx->flags = o.flags;
  ctx->depth = o.depth;
  ctx->loop = o.loop;
  ctx->efd = -1;
  int r = uv_mutex_init(&ctx->lock);
  if (r) {
    free(ctx->threads);
    free(ctx);
    return ts_error_set(err, r, "aio: cannot create a mutex: %s", uv_strerror(r));
  }
  if ((r = uv_cond_init(&ctx->work_cond)) != 0) {
    uv_mutex_destroy(&ctx->lock);
    free(ctx->threads);
    free(ctx);
    return ts_error_set(err, r, "aio: cannot create a condition variable: %s", uv_strerror(r));
  }
  if ((r = uv_cond_init(&ctx->space_cond)) != 0) {
    uv_cond_destroy(&ctx->work_cond);
    uv_mutex_destroy(&ctx->lock);
    free(ctx->threads);
    free(ctx);
    return ts_error_set(err, r, "aio: cannot create a condition variable: %s", uv_strerror(r));
  }
  if ((r = uv_cond_init(&ctx->idle_cond)) != 0) {
    uv_cond_destroy(&ctx->space_cond);
    uv_cond_destroy(&ctx->work_cond);
    uv_mutex_destroy(&ctx->lock);
    free(ctx->threads);
    free(ctx);
    return ts_error_set(err, r, "aio: cannot create a condition variable: %s", uv_strerror(r));
  }

  pthread_mutex_init(&ctx->sink.lock, NULL);
  ctx->sink.efd = -1;
  if (o.mode != TS_AIO_MODE_WORKER) {
    ctx->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ctx->efd < 0) {
      r = -errno;
      destroy(ctx);
      return ts_error_set(err, r, "aio: cannot create an eventfd: %s", ts_strerror(r));
    }
    ctx->sink.efd = ctx->efd;
    ctx->sink_on = o.mode == TS_AIO_MODE_EVENTFD;
  }
  for (uint32_t i = 0; i < o.workers; i++) {
    r = uv_thread_create(&ctx->threads[i], worker_main, ctx);
    if (r) {
      stop_workers(ctx);
      if (ctx->efd >= 0)
        close(ctx->efd);
      destroy(ctx);
      return ts_error_set(err, r, "aio: cannot start worker thread %u: %s", i, uv_strerror(r));
    }
    ctx->nthreads = i + 1;
  }
  if (o.mode == TS_AIO_MODE_LOOP) {
    /* Last, so no failure path has to wait for a handle to close. */
    r = uv_async_init(o.loop, &ctx->async, on_async);
    if (r) {
      stop_workers(ctx);
      close(ctx->efd);
      destroy(ctx);
      return ts_error_set(err, r, "aio: cannot register with the loop: %s", uv_strerror(r));
    }
    ctx->async.data = ctx;
    ctx->nhandles = 1;
    /* Referenced only while requests are pending, so an idle context does not
     * keep uv_run from returning. */
    uv_unref((uv_handle_t *)&ctx->async);
    /* The sink's watch. Without it the layers' completions take their own
     * threads and the async handle, as they would anyway: no error. It
     * holds no reference; the async handle's keeps the loop running. */
    if (uv_poll_init(o.loop, &ctx->poll, ctx->efd) == 0) {
      ctx->poll.data = ctx;
      ctx->poll_on = true;
      ctx->nhandles = 2;
      uv_unref((uv_handle_t *)&ctx->poll);
      ctx->sink_on = uv_poll_start(&ctx->poll, UV_READABLE, on_poll) == 0;
    }
    /* Sources' own fds are watched on the loop (the eventfd stays for a
     * source that cannot be); TS_IO_URING_WAKE=eventfd keeps them all on
     * the eventfd, the way it was before. */
    const char *wake = getenv("TS_IO_URING_WAKE");
    if (ctx->sink_on && !(wake && strcmp(wake, "eventfd") == 0))
      ctx->sink.watch = watch_fd;
  }
  *out = ctx;
  return 0;
}

int ts_aio_submit(ts_aio_ctx *ctx, ts_dev *dev, ts_aio_req *req)
{
  if (!ctx || !dev || !req || !req->cb)
    return -EINVAL;
  int r = ts__io_check(dev, &req->io);
  if (r) {
    if (req->io.op < TS_OP_COUNT)
      atomic_fetch_add_explicit(&dev->nr_err[req->io.op], 1, memory_order_relaxed);
    return r;
  }
  struct iovec *iov = NULL;
  if (req->io.op == TS_OP_READ || req->io.op == TS_OP_WRITE) {
    size_t bytes = (size_t)req->io.iovcnt * sizeof *iov;
    iov = req->io.iovcnt <= TS_AIO_IOV_INLINE ? req->priv.iov_inline : malloc(bytes);
    if (!iov)
      return -ENOMEM;
    memcpy(iov, req->io.iov, bytes);
  }
  req->priv.iov = iov;
  req->priv.io = req->io;
  req->priv.io.iov = iov;
  req->priv.ctx = ctx;
  req->priv.dev = dev;
  req->priv.next = NULL;
  req->result = 0;

  /* A WORKER-mode callback's first submit becomes its worker's next request,
   * in the slot the worker still holds. Its other submits never wait for a
   * slot: the requests they would wait for may all be queued behind workers
   * that are waiting too. */
  struct worker *w = this_worker;
  bool on_worker = w && w->ctx == ctx;
  if (on_worker && w->in_cb && !w->next && !atomic_load(&ctx->closing)) {
    w->next = req;
    atomic_fetch_add(&ctx->pending, 1);
    return 0;
  }
  bool may_block = (ctx->flags & TS_AIO_BLOCK) && !on_worker;

  uv_mutex_lock(&ctx->lock);
  for (;;) {
    if (ctx->closing) {
      r = -ESHUTDOWN;
      break;
    }
    if (reserve_slot(ctx))
      break;
    if (!may_block) {
      r = -EAGAIN;
      break;
    }
    atomic_fetch_add(&ctx->space_waiters, 1);
    bool got = reserve_slot(ctx);
    if (!got && sources_inflight(ctx)) {
      /* Slots held by the sink's requests free up only as they are reaped,
       * which is this thread's job in LOOP mode: reap them here (the
       * callbacks still wait for the loop or the poll). */
      uv_mutex_unlock(&ctx->lock);
      reap_sources(ctx, true, false);
      uv_mutex_lock(&ctx->lock);
    } else if (!got) {
      uv_cond_wait(&ctx->space_cond, &ctx->lock);
    }
    atomic_fetch_sub(&ctx->space_waiters, 1);
    if (got)
      break;
  }
  if (r) {
    uv_mutex_unlock(&ctx->lock);
    if (iov != req->priv.iov_inline)
      free(iov);
    req->priv.iov = NULL;
    req->priv.ctx = NULL;
    req->priv.dev = NULL;
    return r;
  }
  uint64_t before = atomic_fetch_add(&ctx->pending, 1);
  if (ctx->mode != TS_AIO_MODE_WORKER && layer_has_async(dev)) {
    ctx->nasync++;
    uv_mutex_unlock(&ctx->lock);
    /* LOOP mode submits on the loop thread, as deliver() runs, so the
     * reference follows `pending` without a race. */
    if (ctx->mode == TS_AIO_MODE_LOOP && before == 0)
      uv_ref((uv_handle_t *)&ctx->async);
    struct ts__aio_sink *prev = ts__aio_sink_current;
    ts__aio_sink_current = ctx->sink_on ? &ctx->sink : NULL;
    r = ts__submit_async(dev, &req->priv.io, async_done, req);
    ts__aio_sink_current = prev;
    if (r == 0)
      return 0;
    /* Declined: the workers run it after all. */
    uv_mutex_lock(&ctx->lock);
    if (--ctx->nasync == 0)
      uv_cond_broadcast(&ctx->idle_cond);
    before = 1; /* referenced already */
  }
  if (ctx->q_tail)
    ctx->q_tail->priv.next = req;
  else
    ctx->q_head = req;
  ctx->q_tail = req;
  atomic_fetch_add(&ctx->nqueued, 1);
  uv_cond_signal(&ctx->work_cond);
  uv_mutex_unlock(&ctx->lock);
  /* LOOP mode submits on the loop thread, as deliver() runs, so the
   * reference follows `pending` without a race. */
  if (ctx->mode == TS_AIO_MODE_LOOP && before == 0)
    uv_ref((uv_handle_t *)&ctx->async);
  return 0;
}

int ts_aio_fd(const ts_aio_ctx *ctx)
{
  if (!ctx || ctx->mode != TS_AIO_MODE_EVENTFD)
    return -EINVAL;
  return ctx->efd;
}

int ts_aio_poll(ts_aio_ctx *ctx)
{
  if (!ctx || ctx->mode != TS_AIO_MODE_EVENTFD)
    return -EINVAL;
  /* Clear readiness first, then drain: a request finishing after the drain
   * finds the done queue empty (or its ring reaped) and signals the eventfd
   * again. */
  clear_efd(ctx);
  ctx->in_poll++;
  int n = drain(ctx);
  ctx->in_poll--;
  if (ctx->free_after_poll && ctx->in_poll == 0)
    destroy(ctx);
  return n;
}

uint64_t ts_aio_pending(const ts_aio_ctx *ctx)
{
  return ctx ? atomic_load(&((ts_aio_ctx *)ctx)->pending) : 0;
}

int ts_aio_ctx_close(ts_aio_ctx *ctx)
{
  /* `closing` is written only by the thread that delivers completions (or,
   * in WORKER mode, the one thread allowed to close), so this is no race. */
  if (!ctx || atomic_load(&ctx->closing))
    return 0;
  /* Closing waits for the workers, so a worker cannot do it. */
  if (this_worker && this_worker->ctx == ctx)
    return -EDEADLK;

  /* Cancel what has not started; wake anyone waiting for a slot. */
  uv_mutex_lock(&ctx->lock);
  ctx->closing = true;
  ts_aio_req *q = ctx->q_head;
  ctx->q_head = ctx->q_tail = NULL;
  atomic_store(&ctx->nqueued, 0);
  while (q) {
    ts_aio_req *next = q->priv.next;
    q->result = -ECANCELED;
    atomic_fetch_sub(&ctx->inflight, 1);
    push_done(ctx, q);
    q = next;
  }
  uv_cond_broadcast(&ctx->space_cond);
  uv_mutex_unlock(&ctx->lock);

  /* Cancelled requests complete before running ones are waited for, so a
   * callback can release whatever a running request waits on. */
  deliver(ctx);
  stop_workers(ctx);
  /* Requests on the sink's sources complete only when reaped: reap them
   * here, waiting; the others complete on their layers' threads. No new
   * ones start: submits answer -ESHUTDOWN now. */
  uv_mutex_lock(&ctx->lock);
  while (ctx->nasync) {
    if (sources_inflight(ctx)) {
      uv_mutex_unlock(&ctx->lock);
      reap_sources(ctx, true, true);
      uv_mutex_lock(&ctx->lock);
    } else {
      uv_cond_wait(&ctx->idle_cond, &ctx->lock);
    }
  }
  uv_mutex_unlock(&ctx->lock);
  deliver(ctx);
  /* Stopped before the sources close the fds they watch. */
  for (struct fd_watch *w = ctx->watches; w; w = w->next)
    uv_close((uv_handle_t *)&w->h, on_handle_closed);
  /* Before the eventfd they signal is closed. */
  struct ts__aio_source *src = atomic_exchange(&ctx->sink.sources, NULL);
  while (src) {
    struct ts__aio_source *next = src->next;
    src->destroy(src);
    src = next;
  }

  if (ctx->mode == TS_AIO_MODE_LOOP) {
    /* Closing the poll handle stops it at once, so the fd may go. */
    if (ctx->poll_on)
      uv_close((uv_handle_t *)&ctx->poll, on_handle_closed);
    close(ctx->efd);
    ctx->efd = -1;
    uv_close((uv_handle_t *)&ctx->async, on_handle_closed);
  } else {
    if (ctx->efd >= 0)
      close(ctx->efd);
    ctx->efd = -1;
    if (ctx->in_poll)
      ctx->free_after_poll = true;
    else
      destroy(ctx);
  }
  return 0;
}
