/* A thin request over several runs of data blocks starts the runs' data
 * requests together (the data layer's submit_async) and ends once, after
 * all of them, with the first error.
 *
 * Method: two volumes written in turn, 64K block by 64K block, so each
 * volume's blocks alternate on the data device and a 256K request covers
 * four runs. The data layer is a "hold" layer over a file whose
 * submit_async keeps requests until the test lets them go: all four runs
 * of one request are held at once only when they were started together
 * (issued one after another, the second would wait for the first). */
#include "child_layer.h"
#include "testutil.h"

#include <libthinstack/layer.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { BS = 65536, RUNS = 4, MAXHELD = 16 };

static struct {
  pthread_mutex_t m;
  pthread_cond_t c;
  bool hold;
  int n;
  struct {
    ts_layer *child;
    const ts_io *io;
    ts_io_done_fn done;
    void *arg;
  } v[MAXHELD];
} hl = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0, { { 0 } } };

static int hold_submit_async(ts_layer *l, const ts_io *io, ts_io_done_fn done, void *arg)
{
  pthread_mutex_lock(&hl.m);
  if (hl.hold) {
    ck_assert_int_lt(hl.n, MAXHELD);
    hl.v[hl.n].child = ts_layer_priv(l);
    hl.v[hl.n].io = io;
    hl.v[hl.n].done = done;
    hl.v[hl.n].arg = arg;
    hl.n++;
    pthread_cond_broadcast(&hl.c);
    pthread_mutex_unlock(&hl.m);
    return 0;
  }
  pthread_mutex_unlock(&hl.m);
  done(arg, ts_submit(ts_layer_priv(l), io));
  return 0;
}

static const ts_layer_type hold_type = {
  TS_LAYER_TYPE_INIT,
  .name = "fanout-hold",
  .summary = "keeps async requests until the test lets them go",
  .params = child_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = child_layer_open,
  .limits = child_layer_limits,
  .submit = child_layer_submit,
  .submit_async = hold_submit_async,
};

/* Wait until `n` requests are held; false after 30 s (they never came). */
static bool held_wait(int n)
{
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  t.tv_sec += 30;
  pthread_mutex_lock(&hl.m);
  int r = 0;
  while (hl.n < n && r == 0)
    r = pthread_cond_timedwait(&hl.c, &hl.m, &t);
  bool ok = hl.n >= n;
  pthread_mutex_unlock(&hl.m);
  return ok;
}

/* Take the held request i out, stop holding new ones. */
static void held_take(int i, ts_layer **child, const ts_io **io, ts_io_done_fn *done, void **arg)
{
  pthread_mutex_lock(&hl.m);
  *child = hl.v[i].child;
  *io = hl.v[i].io;
  *done = hl.v[i].done;
  *arg = hl.v[i].arg;
  hl.hold = false;
  pthread_mutex_unlock(&hl.m);
}

static ts_stack *stack;
static ts_dev *v1, *v2;

static void setup(void)
{
  ts_test_dir_setup();
  int r = ts_register_layer_type(&hold_type);
  ck_assert(r == 0 || r == -EEXIST);
  hl.hold = false;
  hl.n = 0;
  stack = ts_test_open(
      ts_test_dir, "{ \"version\": 1, \"layers\": {"
                   " \"meta\": { \"type\": \"file\", \"path\": \"m.img\", \"size\": \"8M\","
                   "   \"create\": true },"
                   " \"file\": { \"type\": \"file\", \"path\": \"d.img\", \"size\": \"4M\","
                   "   \"create\": true },"
                   " \"data\": { \"type\": \"fanout-hold\", \"child\": \"file\" },"
                   " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": "
                   "\"data\", \"block_size\": \"64K\", \"create\": true, \"commit_interval\": 0 },"
                   " \"v1\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"1M\","
                   "   \"create\": true },"
                   " \"v2\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 2, \"size\": \"1M\","
                   "   \"create\": true } },"
                   " \"exports\": [\"v1\", \"v2\"] }");
  v1 = ts_stack_dev(stack, "v1");
  v2 = ts_stack_dev(stack, "v2");
  /* Blocks in turn: v1's block b lands on data block 2b, v2's on 2b+1. */
  static unsigned char buf[BS];
  for (int b = 0; b < RUNS; b++) {
    ts_test_pattern(buf, BS, 100 + b);
    ck_assert_int_eq(ts_pwrite(v1, buf, BS, (uint64_t)b * BS, 0), 0);
    ts_test_pattern(buf, BS, 200 + b);
    ck_assert_int_eq(ts_pwrite(v2, buf, BS, (uint64_t)b * BS, 0), 0);
  }
}

static void teardown(void)
{
  ts_error err = { 0 };
  ck_assert_int_eq(ts_stack_close(stack, &err), 0);
  ts_test_dir_teardown();
}

/* One request on its own thread, so the test can hold its data requests. */
struct call {
  pthread_t t;
  ts_dev *dev;
  bool write;
  unsigned char *buf;
  uint64_t off;
  size_t len;
  int r;
  _Atomic int ends; /* times the call returned */
};

static void *call_main(void *arg)
{
  struct call *c = arg;
  c->r = c->write ? ts_pwrite(c->dev, c->buf, c->len, c->off, 0)
                  : ts_pread(c->dev, c->buf, c->len, c->off);
  atomic_fetch_add(&c->ends, 1);
  return NULL;
}

static void call_start(struct call *c, ts_dev *dev, bool write, unsigned char *buf, uint64_t off,
                       size_t len)
{
  *c = (struct call){ .dev = dev, .write = write, .buf = buf, .off = off, .len = len };
  pthread_mutex_lock(&hl.m);
  hl.hold = true;
  hl.n = 0;
  pthread_mutex_unlock(&hl.m);
  ck_assert_int_eq(pthread_create(&c->t, NULL, call_main, c), 0);
}

/* Release the held requests in order, failing the one at `fail` (-1: none)
 * with -EIO without running it; the call must not end before the last. */
static void release(struct call *c, int n, int fail)
{
  for (int i = 0; i < n; i++) {
    ck_assert_msg(atomic_load(&c->ends) == 0, "the request ended with %d of its %d runs out", i, n);
    ts_layer *child;
    const ts_io *io;
    ts_io_done_fn done;
    void *arg;
    held_take(i, &child, &io, &done, &arg);
    done(arg, i == fail ? -EIO : ts_submit(child, io));
  }
  pthread_join(c->t, NULL);
  ck_assert_int_eq(atomic_load(&c->ends), 1);
}

START_TEST(read_runs_together)
{
  static unsigned char buf[RUNS * BS], want[BS];
  struct call c;
  memset(buf, 0xEE, sizeof buf);
  /* 256K of v2 from 32K: four runs (the first partial), then half of
   * the unmapped block 4. */
  call_start(&c, v2, false, buf, BS / 2, RUNS * BS);
  ck_assert_msg(held_wait(RUNS), "only %d of the %d runs were started together", hl.n, RUNS);
  release(&c, RUNS, -1);
  ck_assert_int_eq(c.r, 0);
  for (int b = 0; b <= RUNS; b++) {
    ts_test_pattern(want, BS, 200 + b);
    size_t from = b == 0 ? BS / 2 : 0, to = b == RUNS ? BS / 2 : BS;
    if (b == RUNS) /* block 4 of v2 is unmapped: zeroes */
      memset(want, 0, BS);
    ck_assert_msg(memcmp(buf + (size_t)b * BS - BS / 2 + from, want + from, to - from) == 0,
                  "block %d of v2 reads wrong", b);
  }
}
END_TEST

START_TEST(read_fails_with_one_run)
{
  static unsigned char buf[RUNS * BS];
  struct call c;
  call_start(&c, v1, false, buf, 0, RUNS * BS);
  ck_assert(held_wait(RUNS));
  int64_t before = ts_test_op_errors(ts_stack_node(stack, "data"), "read");
  release(&c, RUNS, 1);
  ck_assert_int_eq(c.r, -EIO);
  ck_assert_int_eq(ts_test_op_errors(ts_stack_node(stack, "data"), "read"), before + 1);
}
END_TEST

START_TEST(write_runs_together)
{
  static unsigned char buf[RUNS * BS], back[RUNS * BS];
  for (int b = 0; b < RUNS; b++)
    ts_test_pattern(buf + (size_t)b * BS, BS, 300 + b);
  struct call c;
  call_start(&c, v1, true, buf, 0, RUNS * BS);
  ck_assert_msg(held_wait(RUNS), "only %d of the %d runs were started together", hl.n, RUNS);
  release(&c, RUNS, -1);
  ck_assert_int_eq(c.r, 0);
  ck_assert_int_eq(ts_pread(v1, back, sizeof back, 0), 0);
  ck_assert(memcmp(back, buf, sizeof buf) == 0);
  /* v2's blocks, between them on the data device, are untouched. */
  static unsigned char want[BS];
  for (int b = 0; b < RUNS; b++) {
    ts_test_pattern(want, BS, 200 + b);
    ck_assert_int_eq(ts_pread(v2, back, BS, (uint64_t)b * BS), 0);
    ck_assert_msg(memcmp(back, want, BS) == 0, "block %d of v2 changed", b);
  }
}
END_TEST

START_TEST(write_fails_with_one_run)
{
  static unsigned char buf[RUNS * BS];
  memset(buf, 'w', sizeof buf);
  struct call c;
  call_start(&c, v2, true, buf, 0, RUNS * BS);
  ck_assert(held_wait(RUNS));
  release(&c, RUNS, RUNS - 1);
  ck_assert_int_eq(c.r, -EIO);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("thin_fanout");
  TCase *tc = tcase_create("fanout");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, read_runs_together);
  tcase_add_test(tc, read_fails_with_one_run);
  tcase_add_test(tc, write_runs_together);
  tcase_add_test(tc, write_fails_with_one_run);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
