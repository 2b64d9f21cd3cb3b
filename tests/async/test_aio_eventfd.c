/* The async API in EVENTFD mode: a completion queue the host drains when
 * the eventfd polls readable, as a VMM with its own event loop does.
 *
 * Method: as in test_aio_loop.c, each request records how often its callback
 * ran and with what result, and every test asserts exactly-once delivery;
 * here the test itself is the host: it poll()s the eventfd and calls
 * ts_aio_poll(). */
#include "aio_test.h"

#include <poll.h>
#include <stdatomic.h>
#include <unistd.h>

static ts_stack *stack;

static void setup(void)
{
  ts_test_dir_setup();
  total_calls = 0;
  gate_setup();
  stack = open_gated_file(ts_test_dir, "8M");
}

static void teardown(void)
{
  ts_error err = { 0 };
  gate_open_all(); /* closing the stack flushes through the gate */
  ck_assert_int_eq(ts_stack_close(stack, &err), 0);
  ts_test_dir_teardown();
}

/* Act as the host's event loop until `want` callbacks have run in total. */
static void host_wait(ts_aio_ctx *ctx, int want)
{
  int fd = ts_aio_fd(ctx);
  ck_assert_int_ge(fd, 0);
  while (total_calls < want) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    ck_assert_int_eq(poll(&p, 1, -1), 1);
    ck_assert(p.revents & POLLIN);
    ck_assert_int_ge(ts_aio_poll(ctx), 0);
  }
  ck_assert_int_eq(total_calls, want);
}

START_TEST(write_read_verify)
{
  enum { N = 128, BS = 4096 };
  ts_dev *f = ts_stack_dev(stack, "f");
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_EVENTFD, NULL, 0, 0, 0);
  static struct treq w[N], r[N];
  static unsigned char wbuf[N][BS], rbuf[N][BS];
  /* Nothing waiting: poll runs nothing. */
  ck_assert_int_eq(ts_aio_poll(ctx), 0);
  for (int i = 0; i < N; i++) {
    ts_test_pattern(wbuf[i], BS, (uint64_t)i + 1000);
    treq_init(&w[i], TS_OP_WRITE, (uint64_t)i * 3 * BS, wbuf[i], BS, count_cb);
    ck_assert_int_eq(treq_submit_buf(ctx, f, &w[i]), 0);
  }
  host_wait(ctx, N);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(w[i].calls, 1);
    ck_assert_int_eq(w[i].result, 0);
    treq_init(&r[i], TS_OP_READ, (uint64_t)i * 3 * BS, rbuf[i], BS, count_cb);
    ck_assert_int_eq(treq_submit_buf(ctx, f, &r[i]), 0);
  }
  host_wait(ctx, 2 * N);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(r[i].calls, 1);
    ck_assert_int_eq(r[i].result, 0);
    ck_assert_msg(memcmp(rbuf[i], wbuf[i], BS) == 0, "block %d read back wrong", i);
  }
  ck_assert_uint_eq(ts_aio_pending(ctx), 0);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  ck_assert_int_eq(total_calls, 2 * N);
}
END_TEST

/* Several threads submit at once (allowed in EVENTFD mode) into a small
 * depth with TS_AIO_BLOCK, while the host thread drains completions. */
enum { SUB_THREADS = 4, PER_THREAD = 256 };
static struct treq mt_req[SUB_THREADS][PER_THREAD];
static unsigned char mt_buf[SUB_THREADS][PER_THREAD][4096];
static struct {
  ts_aio_ctx *ctx;
  ts_dev *dev;
  int op;
} mt;

static void *submitter(void *arg)
{
  int th = (int)(intptr_t)arg;
  for (int i = 0; i < PER_THREAD; i++) {
    struct treq *t = &mt_req[th][i];
    uint64_t off = ((uint64_t)th * PER_THREAD + (uint64_t)i) * 4096;
    treq_init(t, mt.op, off, mt_buf[th][i], 4096, count_cb);
    ck_assert_int_eq(treq_submit_buf(mt.ctx, mt.dev, t), 0);
  }
  return NULL;
}

static void run_submitters(int op)
{
  pthread_t th[SUB_THREADS];
  mt.op = op;
  for (int i = 0; i < SUB_THREADS; i++)
    ck_assert_int_eq(pthread_create(&th[i], NULL, submitter, (void *)(intptr_t)i), 0);
  int before = total_calls;
  host_wait(mt.ctx, before + SUB_THREADS * PER_THREAD);
  for (int i = 0; i < SUB_THREADS; i++)
    pthread_join(th[i], NULL);
}

START_TEST(many_submitting_threads)
{
  mt.dev = ts_stack_dev(stack, "f");
  mt.ctx = make_ctx(TS_AIO_MODE_EVENTFD, NULL, 2, 16, TS_AIO_BLOCK);
  for (int t = 0; t < SUB_THREADS; t++)
    for (int i = 0; i < PER_THREAD; i++)
      ts_test_pattern(mt_buf[t][i], 4096, (uint64_t)(t * PER_THREAD + i));
  run_submitters(TS_OP_WRITE);
  for (int t = 0; t < SUB_THREADS; t++)
    for (int i = 0; i < PER_THREAD; i++) {
      ck_assert_int_eq(mt_req[t][i].calls, 1);
      ck_assert_int_eq(mt_req[t][i].result, 0);
    }
  memset(mt_buf, 0, sizeof mt_buf);
  run_submitters(TS_OP_READ);
  unsigned char expect[4096];
  for (int t = 0; t < SUB_THREADS; t++)
    for (int i = 0; i < PER_THREAD; i++) {
      ck_assert_int_eq(mt_req[t][i].calls, 1);
      ck_assert_int_eq(mt_req[t][i].result, 0);
      ts_test_pattern(expect, 4096, (uint64_t)(t * PER_THREAD + i));
      ck_assert(memcmp(mt_buf[t][i], expect, 4096) == 0);
    }
  ck_assert_int_eq(total_calls, 2 * SUB_THREADS * PER_THREAD);
  ck_assert_int_eq(ts_aio_ctx_close(mt.ctx), 0);
}
END_TEST

START_TEST(backpressure_eagain)
{
  ts_dev *g = ts_stack_dev(stack, "g");
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_EVENTFD, NULL, 1, 3, 0);
  static unsigned char buf[4][4096];
  struct treq t[4];
  for (int i = 0; i < 4; i++)
    treq_init(&t[i], TS_OP_READ, (uint64_t)i * 4096, buf[i], 4096, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, g, &t[0]), 0);
  gate_wait_entered(1);
  ck_assert_int_eq(treq_submit_buf(ctx, g, &t[1]), 0);
  ck_assert_int_eq(treq_submit_buf(ctx, g, &t[2]), 0);
  ck_assert_int_eq(treq_submit_buf(ctx, g, &t[3]), -EAGAIN);
  gate_open_all();
  host_wait(ctx, 3);
  ck_assert_int_eq(t[3].calls, 0);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(t[i].calls, 1);
    ck_assert_int_eq(t[i].result, 0);
  }
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  ck_assert_int_eq(total_calls, 3);
}
END_TEST

static void *open_gate_later(void *arg)
{
  usleep(20000); /* give the submitter time to block; the test holds either way */
  gate_open_all();
  return NULL;
}

START_TEST(backpressure_blocks)
{
  ts_dev *g = ts_stack_dev(stack, "g");
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_EVENTFD, NULL, 1, 1, TS_AIO_BLOCK);
  static unsigned char buf[2][4096];
  struct treq t[2];
  for (int i = 0; i < 2; i++)
    treq_init(&t[i], TS_OP_READ, (uint64_t)i * 4096, buf[i], 4096, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, g, &t[0]), 0);
  gate_wait_entered(1);
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, open_gate_later, NULL), 0);
  /* Depth 1 is taken: this returns only once the worker finished t[0]. */
  ck_assert_int_eq(treq_submit_buf(ctx, g, &t[1]), 0);
  ck_assert_int_ge(gate_get(&gate.finished), 1);
  pthread_join(th, NULL);
  host_wait(ctx, 2);
  ck_assert_int_eq(t[0].calls, 1);
  ck_assert_int_eq(t[1].calls, 1);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
}
END_TEST

static void cancel_cb(ts_aio_req *req)
{
  count_cb(req);
  if (req->result == -ECANCELED)
    gate_open_all();
}

START_TEST(close_cancels_queued)
{
  enum { N = 9 };
  ts_dev *g = ts_stack_dev(stack, "g");
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_EVENTFD, NULL, 1, 0, 0);
  static unsigned char buf[N][4096];
  struct treq t[N];
  for (int i = 0; i < N; i++)
    treq_init(&t[i], TS_OP_READ, (uint64_t)i * 4096, buf[i], 4096, cancel_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, g, &t[0]), 0);
  gate_wait_entered(1);
  for (int i = 1; i < N; i++)
    ck_assert_int_eq(treq_submit_buf(ctx, g, &t[i]), 0);
  ck_assert_uint_eq(ts_aio_pending(ctx), N);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  ck_assert_int_eq(total_calls, N);
  ck_assert_int_eq(t[0].calls, 1);
  ck_assert_int_eq(t[0].result, 0);
  for (int i = 1; i < N; i++) {
    ck_assert_int_eq(t[i].calls, 1);
    ck_assert_int_eq(t[i].result, -ECANCELED);
  }
  ck_assert_int_eq(gate_get(&gate.entered), 1);
}
END_TEST

/* A callback run by ts_aio_poll closes the context; the poll must finish
 * safely and the context be freed when it returns (ASan checks the rest). */
static ts_aio_ctx *closing_ctx;
static bool closed_once;

static void close_in_poll_cb(ts_aio_req *req)
{
  count_cb(req);
  if (!closed_once) {
    closed_once = true;
    ck_assert_int_eq(ts_aio_ctx_close(closing_ctx), 0);
  }
}

START_TEST(close_from_a_poll_callback)
{
  enum { N = 16 };
  ts_dev *f = ts_stack_dev(stack, "f");
  closing_ctx = make_ctx(TS_AIO_MODE_EVENTFD, NULL, 1, 0, 0);
  closed_once = false;
  static unsigned char buf[N][4096];
  struct treq t[N];
  for (int i = 0; i < N; i++) {
    treq_init(&t[i], TS_OP_READ, (uint64_t)i * 4096, buf[i], 4096, close_in_poll_cb);
    ck_assert_int_eq(treq_submit_buf(closing_ctx, f, &t[i]), 0);
  }
  struct pollfd p = { .fd = ts_aio_fd(closing_ctx), .events = POLLIN };
  ck_assert_int_eq(poll(&p, 1, -1), 1);
  int n = ts_aio_poll(closing_ctx); /* frees the context on return */
  ck_assert_int_ge(n, 1);
  ck_assert(closed_once);
  ck_assert_int_eq(total_calls, N);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(t[i].calls, 1);
    ck_assert(t[i].result == 0 || t[i].result == -ECANCELED);
  }
}
END_TEST

int main(void)
{
  Suite *s = suite_create("aio_eventfd");
  TCase *tc = tcase_create("eventfd");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, write_read_verify);
  tcase_add_test(tc, many_submitting_threads);
  tcase_add_test(tc, backpressure_eagain);
  tcase_add_test(tc, backpressure_blocks);
  tcase_add_test(tc, close_cancels_queued);
  tcase_add_test(tc, close_from_a_poll_callback);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
