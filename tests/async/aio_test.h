/* Helpers shared by the async tests (header-only: each test_*.c is its own
 * program).
 *
 * The "gate" layer passes every request to its child, but first waits at a
 * gate the test controls. With one worker, a request held at the gate keeps
 * everything submitted after it queued, which makes cancellation and
 * back-pressure deterministic without sleeping and hoping. It also counts
 * how many requests entered and finished, so a test can prove what ran. */
#ifndef TS_AIO_TEST_H
#define TS_AIO_TEST_H

#include "child_layer.h"
#include "testutil.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static struct {
  pthread_mutex_t m;
  pthread_cond_t c;
  int entered;    /* requests that reached the gate */
  int finished;   /* requests the child completed */
  int permits;    /* requests still allowed through while closed */
  bool open;
} gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, false };

static int gate_layer_submit(ts_layer *l, const ts_io *io)
{
  pthread_mutex_lock(&gate.m);
  gate.entered++;
  pthread_cond_broadcast(&gate.c);
  while (!gate.open && gate.permits == 0)
    pthread_cond_wait(&gate.c, &gate.m);
  if (!gate.open)
    gate.permits--;
  pthread_mutex_unlock(&gate.m);
  int r = ts_submit(ts_layer_priv(l), io);
  pthread_mutex_lock(&gate.m);
  gate.finished++;
  pthread_cond_broadcast(&gate.c);
  pthread_mutex_unlock(&gate.m);
  return r;
}

static const ts_layer_type gate_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "gate",
  .summary = "holds requests until the test lets them through",
  .params = child_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = child_layer_open,
  .limits = child_layer_limits,
  .submit = gate_layer_submit,
};

static inline void gate_setup(void)
{
  int r = ts_register_layer_type(&gate_layer_type);
  ck_assert(r == 0 || r == -EEXIST);
  pthread_mutex_lock(&gate.m);
  gate.entered = gate.finished = gate.permits = 0;
  gate.open = false;
  pthread_mutex_unlock(&gate.m);
}

static inline void gate_wait_entered(int n)
{
  pthread_mutex_lock(&gate.m);
  while (gate.entered < n)
    pthread_cond_wait(&gate.c, &gate.m);
  pthread_mutex_unlock(&gate.m);
}

static inline void gate_open_all(void)
{
  pthread_mutex_lock(&gate.m);
  gate.open = true;
  pthread_cond_broadcast(&gate.c);
  pthread_mutex_unlock(&gate.m);
}

static inline int gate_get(int *field)
{
  pthread_mutex_lock(&gate.m);
  int v = *field;
  pthread_mutex_unlock(&gate.m);
  return v;
}

/* A stack with a file "f" (`size`), a gate "g" over it, both exported. */
static inline ts_stack *open_gated_file(const char *dir, const char *size)
{
  char *json = ts_test_fmt("{ \"version\": 1, \"layers\": {"
                           " \"f\": { \"type\": \"file\", \"path\": \"d.img\", \"size\": \"%s\","
                           " \"create\": true },"
                           " \"g\": { \"type\": \"gate\", \"child\": \"f\" } },"
                           " \"exports\": [\"g\", \"f\"] }",
                           size);
  ts_stack *s = ts_test_open(dir, json);
  free(json);
  return s;
}

/* A request with its own buffer and completion record. */
struct treq {
  ts_aio_req req;
  void *buf;
  int calls;       /* how many times the callback ran: must end at exactly 1 */
  int result;      /* req.result seen by the callback */
  int index;
};

/* Completions counted per request and in total (tests run one at a time on
 * the completing thread, so a plain int is enough). */
static int total_calls;

static inline void count_cb(ts_aio_req *req)
{
  struct treq *t = req->data;
  t->calls++;
  t->result = req->result;
  total_calls++;
}

static inline void treq_init(struct treq *t, int op, uint64_t off, void *buf, size_t len, ts_aio_cb cb)
{
  memset(&t->req, 0, sizeof t->req);
  t->buf = buf;
  t->calls = 0;
  t->result = 1;
  t->req.io.op = (uint32_t)op;
  t->req.io.offset = off;
  t->req.io.length = len;
  t->req.cb = cb;
  t->req.data = t;
}

/* Point the request at its own single-entry iovec. The array lives on the
 * caller's stack only until submit, which copies it. */
static inline int treq_submit_buf(ts_aio_ctx *ctx, ts_dev *dev, struct treq *t)
{
  struct iovec v = { t->buf, (size_t)t->req.io.length };
  if (t->req.io.op == TS_OP_READ || t->req.io.op == TS_OP_WRITE) {
    t->req.io.iov = &v;
    t->req.io.iovcnt = 1;
  }
  int r = ts_aio_submit(ctx, dev, &t->req);
  /* Submit copied the array: leave no pointer to this frame behind. */
  t->req.io.iov = NULL;
  memset(&v, 0xA5, sizeof v);
  return r;
}

/* Close a loop after the context's handle is gone; 0 means nothing leaked. */
static inline void loop_finish(uv_loop_t *loop)
{
  ck_assert_int_eq(uv_run(loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(uv_loop_close(loop), 0);
}

static inline ts_aio_ctx *make_ctx(uint32_t mode, uv_loop_t *loop, uint32_t workers, uint32_t depth,
                            uint32_t flags)
{
  ts_aio_opts o = { .struct_size = sizeof o, .mode = mode, .flags = flags, .workers = workers,
                    .depth = depth, .loop = loop };
  ts_aio_ctx *ctx = NULL;
  ts_error err = { 0 };
  int r = ts_aio_ctx_create(&o, &ctx, &err);
  ck_assert_msg(r == 0, "ts_aio_ctx_create: %s", err.msg);
  return ctx;
}

#endif
