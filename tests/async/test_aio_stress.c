/* Stress: thousands of requests in flight at once, from two libuv loops on
 * two threads, each with its own context, against one file-backed device.
 *
 * Method: each loop owns half of the device. Phase 1 submits a write of a
 * distinct pattern to every 4 KiB block of its half (all in flight at once);
 * phase 2 reads every block back through the async API while, in the same
 * batch, the odd blocks are rewritten with a second pattern from the read's
 * callback. Every callback is counted per request; at the end every block
 * must hold exactly the pattern its last write carried, every request must
 * have completed exactly once, and both loops must close cleanly. */
#include "aio_test.h"

enum { LOOPS = 2, BLOCKS = 3000, BS = 4096 };

struct worker {
  int id;
  ts_dev *dev;
  uv_loop_t loop;
  ts_aio_ctx *ctx;
  struct treq w[BLOCKS], r[BLOCKS], rw[BLOCKS];
  unsigned char (*wbuf)[BS], (*rbuf)[BS], (*rwbuf)[BS];
  int calls;
  int errors;
};

static uint64_t seed(int loop, int block, int gen)
{
  return ((uint64_t)gen << 40) | ((uint64_t)loop << 20) | (uint64_t)block;
}

static uint64_t block_off(struct worker *wk, int i)
{
  return ((uint64_t)wk->id * BLOCKS + (uint64_t)i) * BS;
}

static struct worker *workers[LOOPS];

static void plain_cb(ts_aio_req *req)
{
  struct treq *t = req->data;
  t->calls++;
  t->result = req->result;
  struct worker *wk = workers[t->index / BLOCKS];
  wk->calls++;
  if (req->result)
    wk->errors++;
}

/* A read finished: for odd blocks, rewrite with generation 2. */
static void read_cb(ts_aio_req *req)
{
  plain_cb(req);
  struct treq *t = req->data;
  struct worker *wk = workers[t->index / BLOCKS];
  int i = t->index % BLOCKS;
  if (i % 2 == 0)
    return;
  ts_test_pattern(wk->rwbuf[i], BS, seed(wk->id, i, 2));
  treq_init(&wk->rw[i], TS_OP_WRITE, block_off(wk, i), wk->rwbuf[i], BS, plain_cb);
  wk->rw[i].index = t->index;
  if (treq_submit_buf(wk->ctx, wk->dev, &wk->rw[i]) != 0)
    wk->errors++;
}

static void *run_worker(void *arg)
{
  struct worker *wk = arg;
  ck_assert_int_eq(uv_loop_init(&wk->loop), 0);
  /* Depth covers a whole phase: every request of it is in flight at once. */
  wk->ctx = make_ctx(TS_AIO_MODE_LOOP, &wk->loop, 2, 2 * BLOCKS, 0);
  for (int i = 0; i < BLOCKS; i++) {
    ts_test_pattern(wk->wbuf[i], BS, seed(wk->id, i, 1));
    treq_init(&wk->w[i], TS_OP_WRITE, block_off(wk, i), wk->wbuf[i], BS, plain_cb);
    wk->w[i].index = wk->id * BLOCKS + i;
    if (treq_submit_buf(wk->ctx, wk->dev, &wk->w[i]) != 0)
      wk->errors++;
  }
  uv_run(&wk->loop, UV_RUN_DEFAULT);
  for (int i = 0; i < BLOCKS; i++) {
    memset(wk->rbuf[i], 0, BS);
    treq_init(&wk->r[i], TS_OP_READ, block_off(wk, i), wk->rbuf[i], BS, read_cb);
    wk->r[i].index = wk->id * BLOCKS + i;
    if (treq_submit_buf(wk->ctx, wk->dev, &wk->r[i]) != 0)
      wk->errors++;
  }
  uv_run(&wk->loop, UV_RUN_DEFAULT);
  ts_aio_ctx_close(wk->ctx);
  uv_run(&wk->loop, UV_RUN_DEFAULT);
  return (void *)(intptr_t)uv_loop_close(&wk->loop);
}

START_TEST(two_loops_thousands_in_flight)
{
  const char *dir = ts_test_dir;
  char *json = ts_test_fmt("{ \"version\": 1, \"layers\": { \"f\": { \"type\": \"file\","
                           " \"path\": \"d.img\", \"size\": %llu, \"create\": true } },"
                           " \"exports\": [\"f\"] }",
                           (unsigned long long)LOOPS * BLOCKS * BS);
  ts_stack *s = ts_test_open(dir, json);
  free(json);
  ts_dev *dev = ts_stack_dev(s, "f");
  pthread_t th[LOOPS];
  for (int l = 0; l < LOOPS; l++) {
    struct worker *wk = calloc(1, sizeof *wk);
    ck_assert_ptr_nonnull(wk);
    wk->id = l;
    wk->dev = dev;
    wk->wbuf = malloc((size_t)BLOCKS * BS);
    wk->rbuf = malloc((size_t)BLOCKS * BS);
    wk->rwbuf = malloc((size_t)BLOCKS * BS);
    ck_assert(wk->wbuf && wk->rbuf && wk->rwbuf);
    workers[l] = wk;
  }
  for (int l = 0; l < LOOPS; l++)
    ck_assert_int_eq(pthread_create(&th[l], NULL, run_worker, workers[l]), 0);
  for (int l = 0; l < LOOPS; l++) {
    void *rc;
    pthread_join(th[l], &rc);
    ck_assert_msg(rc == NULL, "loop %d did not close cleanly", l);
  }

  unsigned char expect[BS], back[BS];
  for (int l = 0; l < LOOPS; l++) {
    struct worker *wk = workers[l];
    ck_assert_int_eq(wk->errors, 0);
    ck_assert_int_eq(wk->calls, 2 * BLOCKS + BLOCKS / 2);
    for (int i = 0; i < BLOCKS; i++) {
      ck_assert_int_eq(wk->w[i].calls, 1);
      ck_assert_int_eq(wk->r[i].calls, 1);
      ck_assert_int_eq(wk->w[i].result, 0);
      ck_assert_int_eq(wk->r[i].result, 0);
      /* What the read saw is what phase 1 wrote. */
      ck_assert_msg(memcmp(wk->rbuf[i], wk->wbuf[i], BS) == 0, "loop %d block %d", l, i);
      if (i % 2) {
        ck_assert_int_eq(wk->rw[i].calls, 1);
        ck_assert_int_eq(wk->rw[i].result, 0);
      }
      /* The device holds the last write's pattern. */
      ts_test_pattern(expect, BS, seed(l, i, i % 2 ? 2 : 1));
      ck_assert_int_eq(ts_pread(dev, back, BS, block_off(wk, i)), 0);
      ck_assert_msg(memcmp(back, expect, BS) == 0, "device block %d of loop %d", i, l);
    }
    free(wk->wbuf);
    free(wk->rbuf);
    free(wk->rwbuf);
    free(wk);
  }
  ts_error err = { 0 };
  ck_assert_int_eq(ts_stack_close(s, &err), 0);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("aio_stress");
  TCase *tc = tcase_create("stress");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, two_loops_thousands_in_flight);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
