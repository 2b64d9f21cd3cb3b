/* The async API in WORKER mode: callbacks on the worker that ran the
 * request, and a callback's first submit run next by that same worker.
 *
 * Method: callbacks run concurrently here, so every callback records its
 * result and thread, then bumps a counter under a mutex the test waits on;
 * that mutex also orders what the callback wrote before the test reads it.
 * Exactly-once delivery is asserted per request as in the other suites, the
 * data is read back, and the tests that depend on which thread runs what
 * (a resubmitting callback keeps its worker; close is refused on a worker)
 * check thread identities rather than timing. */
#include "aio_test.h"

#include <stdatomic.h>

static ts_stack *stack;

static struct {
  pthread_mutex_t m;
  pthread_cond_t c;
  int done;
} wait_for = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };

static void setup(void)
{
  ts_test_dir_setup();
  gate_setup();
  stack = open_gated_file(ts_test_dir, "8M");
  pthread_mutex_lock(&wait_for.m);
  wait_for.done = 0;
  pthread_mutex_unlock(&wait_for.m);
}

static void teardown(void)
{
  ts_error err = { 0 };
  gate_open_all(); /* closing the stack flushes through the gate */
  ck_assert_int_eq(ts_stack_close(stack, &err), 0);
  ts_test_dir_teardown();
}

static void mark_done(void)
{
  pthread_mutex_lock(&wait_for.m);
  wait_for.done++;
  pthread_cond_broadcast(&wait_for.c);
  pthread_mutex_unlock(&wait_for.m);
}

static void wait_done(int want)
{
  pthread_mutex_lock(&wait_for.m);
  while (wait_for.done < want)
    pthread_cond_wait(&wait_for.c, &wait_for.m);
  int got = wait_for.done;
  pthread_mutex_unlock(&wait_for.m);
  ck_assert_int_eq(got, want);
}

/* A request that remembers which thread completed it. */
struct wreq {
  struct treq t;
  pthread_t thread;
};

static void record_cb(ts_aio_req *req)
{
  struct wreq *w = req->data;
  w->t.calls++;
  w->t.result = req->result;
  w->thread = pthread_self();
  mark_done();
}

static void wreq_init(struct wreq *w, int op, uint64_t off, void *buf, size_t len, ts_aio_cb cb)
{
  treq_init(&w->t, op, off, buf, len, cb);
  w->t.req.data = w;
}

START_TEST(write_read_verify_on_workers)
{
  enum { N = 96, BS = 4096 };
  ts_dev *f = ts_stack_dev(stack, "f");
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_WORKER, NULL, 3, 0, 0);
  static struct wreq w[N], r[N];
  static unsigned char wbuf[N][BS], rbuf[N][BS];
  for (int i = 0; i < N; i++) {
    ts_test_pattern(wbuf[i], BS, (uint64_t)i + 77);
    wreq_init(&w[i], TS_OP_WRITE, (uint64_t)i * 2 * BS, wbuf[i], BS, record_cb);
    ck_assert_int_eq(treq_submit_buf(ctx, f, &w[i].t), 0);
  }
  wait_done(N);
  for (int i = 0; i < N; i++) {
    memset(rbuf[i], 0, BS);
    wreq_init(&r[i], TS_OP_READ, (uint64_t)i * 2 * BS, rbuf[i], BS, record_cb);
    ck_assert_int_eq(treq_submit_buf(ctx, f, &r[i].t), 0);
  }
  wait_done(2 * N);
  ck_assert_uint_eq(ts_aio_pending(ctx), 0);
  pthread_t self = pthread_self();
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(w[i].t.calls, 1);
    ck_assert_int_eq(r[i].t.calls, 1);
    ck_assert_int_eq(w[i].t.result, 0);
    ck_assert_int_eq(r[i].t.result, 0);
    ck_assert_msg(!pthread_equal(w[i].thread, self), "callback %d ran on the submitter", i);
    ck_assert_msg(memcmp(rbuf[i], wbuf[i], BS) == 0, "block %d", i);
  }
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
}
END_TEST

/* One request resubmitted from its own callback walks the device block by
 * block: the whole chain stays on the worker that ran the first step. */
struct chain {
  ts_aio_req req;
  ts_aio_ctx *ctx;
  ts_dev *dev;
  struct iovec iov;
  unsigned char buf[4096];
  int step, steps, calls, bad;
  pthread_t first;
};

static void chain_cb(ts_aio_req *req)
{
  struct chain *c = req->data;
  c->calls++;
  if (req->result)
    c->bad++;
  if (c->step == 0)
    c->first = pthread_self();
  else if (!pthread_equal(c->first, pthread_self()))
    c->bad++;
  if (++c->step == c->steps) {
    mark_done();
    return;
  }
  ts_test_pattern(c->buf, sizeof c->buf, (uint64_t)c->step + 500);
  req->io = (ts_io){ .op = TS_OP_WRITE, .offset = (uint64_t)c->step * sizeof c->buf,
                     .length = sizeof c->buf, .iov = &c->iov, .iovcnt = 1 };
  if (ts_aio_submit(c->ctx, c->dev, req) != 0) {
    c->bad++;
    mark_done();
  }
}

START_TEST(resubmit_stays_on_its_worker)
{
  ts_dev *f = ts_stack_dev(stack, "f");
  static struct chain c;
  memset(&c, 0, sizeof c);
  /* Depth 1: each resubmit needs the slot its own request just gave back. */
  c.ctx = make_ctx(TS_AIO_MODE_WORKER, NULL, 2, 1, 0);
  c.dev = f;
  c.steps = 1000;
  c.iov = (struct iovec){ c.buf, sizeof c.buf };
  c.req.cb = chain_cb;
  c.req.data = &c;
  ts_test_pattern(c.buf, sizeof c.buf, 500);
  c.req.io = (ts_io){ .op = TS_OP_WRITE, .offset = 0, .length = sizeof c.buf, .iov = &c.iov,
                      .iovcnt = 1 };
  ck_assert_int_eq(ts_aio_submit(c.ctx, f, &c.req), 0);
  wait_done(1);
  ck_assert_int_eq(c.bad, 0);
  ck_assert_int_eq(c.calls, c.steps);
  ck_assert_uint_eq(ts_aio_pending(c.ctx), 0);
  unsigned char expect[4096], back[4096];
  for (int i = 0; i < c.steps; i++) {
    ts_test_pattern(expect, sizeof expect, (uint64_t)i + 500);
    ck_assert_int_eq(ts_pread(f, back, sizeof back, (uint64_t)i * sizeof back), 0);
    ck_assert_msg(memcmp(back, expect, sizeof back) == 0, "block %d", i);
  }
  ck_assert_int_eq(ts_aio_ctx_close(c.ctx), 0);
}
END_TEST

/* A callback's second submit goes through the queue, and never waits for a
 * slot even on a blocking context: it fails with -EAGAIN when full. */
static struct wreq fan_first, fan_a, fan_b;
static int fan_a_rc, fan_b_rc;
static ts_aio_ctx *fan_ctx;
static unsigned char fan_buf[3][512];

static void fan_cb(ts_aio_req *req)
{
  ts_dev *f = ts_stack_dev(stack, "f");
  wreq_init(&fan_a, TS_OP_WRITE, 0, fan_buf[1], 512, record_cb);
  wreq_init(&fan_b, TS_OP_WRITE, 4096, fan_buf[2], 512, record_cb);
  fan_a_rc = treq_submit_buf(fan_ctx, f, &fan_a.t);
  fan_b_rc = treq_submit_buf(fan_ctx, f, &fan_b.t);
  record_cb(req);
}

START_TEST(callback_second_submit_does_not_block)
{
  ts_dev *f = ts_stack_dev(stack, "f");
  fan_ctx = make_ctx(TS_AIO_MODE_WORKER, NULL, 1, 1, TS_AIO_BLOCK);
  wreq_init(&fan_first, TS_OP_WRITE, 8192, fan_buf[0], 512, fan_cb);
  ck_assert_int_eq(treq_submit_buf(fan_ctx, f, &fan_first.t), 0);
  wait_done(2); /* fan_first and fan_a */
  ck_assert_int_eq(fan_a_rc, 0);
  ck_assert_int_eq(fan_b_rc, -EAGAIN);
  ck_assert_int_eq(fan_first.t.calls, 1);
  ck_assert_int_eq(fan_a.t.calls, 1);
  ck_assert_int_eq(fan_b.t.calls, 0);
  ck_assert_int_eq(ts_aio_ctx_close(fan_ctx), 0);

  /* With room, both of a callback's submits run. */
  pthread_mutex_lock(&wait_for.m);
  wait_for.done = 0;
  pthread_mutex_unlock(&wait_for.m);
  fan_ctx = make_ctx(TS_AIO_MODE_WORKER, NULL, 2, 4, TS_AIO_BLOCK);
  wreq_init(&fan_first, TS_OP_WRITE, 8192, fan_buf[0], 512, fan_cb);
  ck_assert_int_eq(treq_submit_buf(fan_ctx, f, &fan_first.t), 0);
  wait_done(3);
  ck_assert_int_eq(fan_a_rc, 0);
  ck_assert_int_eq(fan_b_rc, 0);
  ck_assert_int_eq(fan_a.t.result, 0);
  ck_assert_int_eq(fan_b.t.result, 0);
  ck_assert_int_eq(ts_aio_ctx_close(fan_ctx), 0);
}
END_TEST

/* Close from a worker's callback is refused (it would join itself); the
 * context keeps working and closes normally afterwards. */
static ts_aio_ctx *self_ctx;
static int self_close_rc = 1;

static void close_self_cb(ts_aio_req *req)
{
  self_close_rc = ts_aio_ctx_close(self_ctx);
  record_cb(req);
}

START_TEST(close_from_worker_callback_refused)
{
  ts_dev *f = ts_stack_dev(stack, "f");
  self_ctx = make_ctx(TS_AIO_MODE_WORKER, NULL, 1, 0, 0);
  static unsigned char buf[512];
  static struct wreq a, b;
  wreq_init(&a, TS_OP_READ, 0, buf, sizeof buf, close_self_cb);
  ck_assert_int_eq(treq_submit_buf(self_ctx, f, &a.t), 0);
  wait_done(1);
  ck_assert_int_eq(self_close_rc, -EDEADLK);
  wreq_init(&b, TS_OP_READ, 512, buf, sizeof buf, record_cb);
  ck_assert_int_eq(treq_submit_buf(self_ctx, f, &b.t), 0);
  wait_done(2);
  ck_assert_int_eq(b.t.result, 0);
  ck_assert_int_eq(ts_aio_ctx_close(self_ctx), 0);
}
END_TEST

/* Close cancels what has not started, on the closing thread; the running
 * request finishes, and its callback's resubmit is refused. */
static ts_aio_ctx *cancel_ctx;
static int resubmit_rc = 1;

static void cancelled_cb(ts_aio_req *req)
{
  record_cb(req);
  gate_open_all(); /* lets the running request finish */
}

static void running_cb(ts_aio_req *req)
{
  static unsigned char buf[512];
  struct iovec v = { buf, sizeof buf };
  req->io.iov = &v;
  req->io.iovcnt = 1;
  resubmit_rc = ts_aio_submit(cancel_ctx, ts_stack_dev(stack, "g"), req);
  record_cb(req);
}

START_TEST(close_cancels_queued)
{
  ts_dev *g = ts_stack_dev(stack, "g");
  cancel_ctx = make_ctx(TS_AIO_MODE_WORKER, NULL, 1, 0, 0);
  static unsigned char buf[3][512];
  static struct wreq q[3];
  wreq_init(&q[0], TS_OP_WRITE, 0, buf[0], 512, running_cb);
  wreq_init(&q[1], TS_OP_WRITE, 512, buf[1], 512, cancelled_cb);
  wreq_init(&q[2], TS_OP_WRITE, 1024, buf[2], 512, cancelled_cb);
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(treq_submit_buf(cancel_ctx, g, &q[i].t), 0);
  gate_wait_entered(1); /* the one worker holds q[0] at the gate */
  ck_assert_uint_eq(ts_aio_pending(cancel_ctx), 3);
  ck_assert_int_eq(ts_aio_ctx_close(cancel_ctx), 0);
  /* Close returned: every callback has run, each exactly once. */
  pthread_mutex_lock(&wait_for.m);
  ck_assert_int_eq(wait_for.done, 3);
  pthread_mutex_unlock(&wait_for.m);
  ck_assert_int_eq(q[0].t.calls, 1);
  ck_assert_int_eq(q[0].t.result, 0);
  ck_assert_int_eq(resubmit_rc, -ESHUTDOWN);
  pthread_t self = pthread_self();
  for (int i = 1; i < 3; i++) {
    ck_assert_int_eq(q[i].t.calls, 1);
    ck_assert_int_eq(q[i].t.result, -ECANCELED);
    ck_assert(pthread_equal(q[i].thread, self));
  }
  ck_assert_int_eq(gate_get(&gate.entered), 1);
}
END_TEST

START_TEST(mode_errors)
{
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ts_aio_opts o = { .struct_size = sizeof o, .mode = TS_AIO_MODE_WORKER, .loop = &loop };
  ts_aio_ctx *ctx = NULL;
  ts_error err = { 0 };
  ck_assert_int_eq(ts_aio_ctx_create(&o, &ctx, &err), -EINVAL);
  ck_assert_ptr_null(ctx);
  ck_assert_msg(strstr(err.msg, "only for LOOP"), "%s", err.msg);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  o.mode = 3;
  o.loop = NULL;
  ck_assert_int_eq(ts_aio_ctx_create(&o, &ctx, &err), -EINVAL);
  ck_assert_msg(strstr(err.msg, "unknown mode"), "%s", err.msg);

  ctx = make_ctx(TS_AIO_MODE_WORKER, NULL, 1, 0, 0);
  ck_assert_int_eq(ts_aio_fd(ctx), -EINVAL);
  ck_assert_int_eq(ts_aio_poll(ctx), -EINVAL);
  /* A request that fails the checks is refused at once, never called back. */
  static struct wreq bad;
  static unsigned char buf[512];
  wreq_init(&bad, TS_OP_READ, 3, buf, sizeof buf, record_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, ts_stack_dev(stack, "f"), &bad.t), -EINVAL);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  ck_assert_int_eq(bad.t.calls, 0);
}
END_TEST

/* Stress: two submitting threads keep thousands of requests in flight; each
 * write's callback turns its request into a read of the same block (run next
 * on the same worker) and, for odd blocks, submits a second write through
 * the queue. Every block must end with its last write's pattern. */
enum { SUBMITTERS = 2, BLOCKS = 2000, BS = 4096 };

struct sreq {
  ts_aio_req req;
  struct iovec iov;
  int block, phase, calls, errors;
};

static struct sreq sreqs[SUBMITTERS * BLOCKS], extra[SUBMITTERS * BLOCKS];
static unsigned char (*sbuf)[BS], (*xbuf)[BS];
static ts_aio_ctx *stress_ctx;
static ts_dev *stress_dev;
static atomic_int stress_errors;
/* Extra writes a callback found no slot for (a callback never waits): the
 * test's main thread submits them, under wait_for.m. */
static struct sreq *deferred[SUBMITTERS * BLOCKS];
static int ndeferred;

static uint64_t sseed(int block, int gen)
{
  return ((uint64_t)gen << 32) | (uint64_t)block;
}

static void extra_cb(ts_aio_req *req)
{
  struct sreq *s = (struct sreq *)req;
  s->calls++;
  if (req->result)
    s->errors++;
  mark_done();
}

static void stress_cb(ts_aio_req *req)
{
  struct sreq *s = (struct sreq *)req;
  s->calls++;
  if (req->result)
    s->errors++;
  if (s->phase == 0) {
    s->phase = 1;
    /* Read it back into the same buffer, after clearing it. */
    memset(sbuf[s->block], 0, BS);
    req->io = (ts_io){ .op = TS_OP_READ, .offset = (uint64_t)s->block * BS, .length = BS,
                       .iov = &s->iov, .iovcnt = 1 };
    if (ts_aio_submit(stress_ctx, stress_dev, req) != 0)
      atomic_fetch_add(&stress_errors, 1);
    if (s->block % 2) {
      struct sreq *x = &extra[s->block];
      x->block = s->block;
      x->iov = (struct iovec){ xbuf[s->block], BS / 2 };
      x->req.cb = extra_cb;
      x->req.io = (ts_io){ .op = TS_OP_WRITE, .offset = (uint64_t)s->block * BS + BS / 2,
                           .length = BS / 2, .iov = &x->iov, .iovcnt = 1 };
      int r = ts_aio_submit(stress_ctx, stress_dev, &x->req);
      if (r == -EAGAIN) {
        pthread_mutex_lock(&wait_for.m);
        deferred[ndeferred++] = x;
        pthread_cond_broadcast(&wait_for.c);
        pthread_mutex_unlock(&wait_for.m);
      } else if (r) {
        atomic_fetch_add(&stress_errors, 1);
      }
    }
    return;
  }
  mark_done();
}

static void *stress_submitter(void *arg)
{
  int id = (int)(intptr_t)arg;
  for (int i = 0; i < BLOCKS; i++) {
    int b = id * BLOCKS + i;
    struct sreq *s = &sreqs[b];
    ts_test_pattern(sbuf[b], BS, sseed(b, 1));
    ts_test_pattern(xbuf[b], BS, sseed(b, 2));
    s->block = b;
    s->iov = (struct iovec){ sbuf[b], BS };
    s->req.cb = stress_cb;
    s->req.io = (ts_io){ .op = TS_OP_WRITE, .offset = (uint64_t)b * BS, .length = BS,
                         .iov = &s->iov, .iovcnt = 1 };
    if (ts_aio_submit(stress_ctx, stress_dev, &s->req) != 0)
      atomic_fetch_add(&stress_errors, 1);
  }
  return NULL;
}

START_TEST(stress_two_submitters)
{
  ts_error err = { 0 };
  gate_open_all(); /* the fixture's stack flushes through its gate */
  ck_assert_int_eq(ts_stack_close(stack, &err), 0);
  char *json = ts_test_fmt("{ \"version\": 1, \"layers\": { \"f\": { \"type\": \"file\","
                           " \"path\": \"s.img\", \"size\": %llu, \"create\": true },"
                           " \"g\": { \"type\": \"gate\", \"child\": \"f\" } },"
                           " \"exports\": [\"f\", \"g\"] }",
                           (unsigned long long)SUBMITTERS * BLOCKS * BS);
  stack = ts_test_open(ts_test_dir, json);
  free(json);
  stress_dev = ts_stack_dev(stack, "f");
  sbuf = malloc((size_t)SUBMITTERS * BLOCKS * BS);
  xbuf = malloc((size_t)SUBMITTERS * BLOCKS * BS);
  ck_assert(sbuf && xbuf);
  /* Blocking, with a depth below what is submitted: the submitters wait for
   * slots while callbacks hand their workers the reads. */
  stress_ctx = make_ctx(TS_AIO_MODE_WORKER, NULL, 3, 256, TS_AIO_BLOCK);
  pthread_t th[SUBMITTERS];
  for (int i = 0; i < SUBMITTERS; i++)
    ck_assert_int_eq(pthread_create(&th[i], NULL, stress_submitter, (void *)(intptr_t)i), 0);
  for (int i = 0; i < SUBMITTERS; i++)
    pthread_join(th[i], NULL);
  int n = SUBMITTERS * BLOCKS;
  pthread_mutex_lock(&wait_for.m);
  while (wait_for.done < n + n / 2) {
    if (ndeferred) {
      struct sreq *x = deferred[--ndeferred];
      pthread_mutex_unlock(&wait_for.m);
      ck_assert_int_eq(ts_aio_submit(stress_ctx, stress_dev, &x->req), 0);
      pthread_mutex_lock(&wait_for.m);
      continue;
    }
    pthread_cond_wait(&wait_for.c, &wait_for.m);
  }
  pthread_mutex_unlock(&wait_for.m);
  ck_assert_int_eq(ts_aio_ctx_close(stress_ctx), 0);
  ck_assert_int_eq(atomic_load(&stress_errors), 0);
  unsigned char expect[BS], back[BS];
  for (int b = 0; b < n; b++) {
    ck_assert_int_eq(sreqs[b].calls, 2);
    ck_assert_int_eq(sreqs[b].errors, 0);
    /* The read ran after its own write and before any other write to the
     * first half of the block. */
    ts_test_pattern(expect, BS, sseed(b, 1));
    ck_assert_msg(memcmp(sbuf[b], expect, BS / 2) == 0, "read of block %d", b);
    if (b % 2) {
      ck_assert_int_eq(extra[b].calls, 1);
      ck_assert_int_eq(extra[b].errors, 0);
      memcpy(expect + BS / 2, xbuf[b], BS / 2);
    }
    ck_assert_int_eq(ts_pread(stress_dev, back, BS, (uint64_t)b * BS), 0);
    ck_assert_msg(memcmp(back, expect, BS) == 0, "device block %d", b);
  }
  free(sbuf);
  free(xbuf);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("aio_worker");
  TCase *tc = tcase_create("worker");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, write_read_verify_on_workers);
  tcase_add_test(tc, resubmit_stays_on_its_worker);
  tcase_add_test(tc, callback_second_submit_does_not_block);
  tcase_add_test(tc, close_from_worker_callback_refused);
  tcase_add_test(tc, close_cancels_queued);
  tcase_add_test(tc, mode_errors);
  tcase_add_test(tc, stress_two_submitters);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
