/* The thin layer's async fast path: READs of mapped (or unmapped) blocks and
 * WRITEs into blocks mapped to the volume alone go straight to the data
 * layer's submit_async, with no worker; everything else takes the workers.
 *
 * Method: the pool's data layer is a "hold" layer over a file. Its
 * submit_async either runs the request at once (pass) or keeps it until the
 * test lets it go (hold), so a fast write is really in flight on the data
 * layer while another thread discards its block and has it allocated again,
 * or snapshots the volume. Those changes must wait for it (the pool drains
 * its fast requests under the exclusive lock): a change that did not would
 * finish while the write is held, and the write would then land in a block
 * that is someone else's. Each race test asserts both: the other thread did
 * not finish while the write was held, and the data is right after. */
#include "aio_test.h"

#include "backends/thin/thin-internal.h"

#include <libthinstack/thin.h>
#include <poll.h>
#include <unistd.h>

enum { BS = 65536, K4 = 4096 };

static struct {
  pthread_mutex_t m;
  bool hold;    /* keep submit_async requests until hold_release() */
  bool decline; /* answer -EAGAIN: the thin layer must fall back */
  int async_n;  /* requests that came through submit_async */
  int held_n;
  struct {
    ts_layer *child;
    const ts_io *io;
    ts_io_done_fn done;
    void *arg;
  } held[8];
} hl = { PTHREAD_MUTEX_INITIALIZER, false, false, 0, 0, { { 0 } } };

static int hold_submit_async(ts_layer *l, const ts_io *io, ts_io_done_fn done, void *arg)
{
  pthread_mutex_lock(&hl.m);
  if (hl.decline) {
    pthread_mutex_unlock(&hl.m);
    return -EAGAIN;
  }
  hl.async_n++;
  if (hl.hold && hl.held_n < 8) {
    hl.held[hl.held_n].child = ts_layer_priv(l);
    hl.held[hl.held_n].io = io;
    hl.held[hl.held_n].done = done;
    hl.held[hl.held_n].arg = arg;
    hl.held_n++;
    pthread_mutex_unlock(&hl.m);
    return 0;
  }
  pthread_mutex_unlock(&hl.m);
  done(arg, ts_submit(ts_layer_priv(l), io));
  return 0;
}

static const ts_layer_type hold_type = {
  TS_LAYER_TYPE_INIT,
  .name = "hold",
  .summary = "runs or keeps async requests as the test says",
  .params = child_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = child_layer_open,
  .limits = child_layer_limits,
  .submit = child_layer_submit,
  .submit_async = hold_submit_async,
};

static int held_count(void)
{
  pthread_mutex_lock(&hl.m);
  int n = hl.held_n;
  pthread_mutex_unlock(&hl.m);
  return n;
}

/* Run the held requests on the child now, and complete them. */
static void hold_release(void)
{
  pthread_mutex_lock(&hl.m);
  int n = hl.held_n;
  hl.held_n = 0;
  hl.hold = false;
  pthread_mutex_unlock(&hl.m);
  for (int i = 0; i < n; i++)
    hl.held[i].done(hl.held[i].arg, ts_submit(hl.held[i].child, hl.held[i].io));
}

static ts_stack *stack;
static ts_dev *vol;
static struct tp_pool *pool;

/* 4 data blocks of 64K, so a freed block is the next one handed out. */
static void setup(void)
{
  ts_test_dir_setup();
  total_calls = 0;
  gate_setup();
  int r = ts_register_layer_type(&hold_type);
  ck_assert(r == 0 || r == -EEXIST);
  hl.hold = hl.decline = false;
  hl.async_n = hl.held_n = 0;
  stack = ts_test_open(
      ts_test_dir,
      "{ \"version\": 1, \"layers\": {"
      " \"meta\": { \"type\": \"file\", \"path\": \"m.img\", \"size\": \"8M\","
      "   \"create\": true },"
      " \"file\": { \"type\": \"file\", \"path\": \"d.img\", \"size\": \"256K\","
      "   \"create\": true },"
      " \"data\": { \"type\": \"hold\", \"child\": \"file\" },"
      " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
      "   \"block_size\": \"64K\", \"create\": true, \"commit_interval\": 0 },"
      " \"vol\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"1M\","
      "   \"create\": true } },"
      " \"exports\": [\"vol\"] }");
  vol = ts_stack_dev(stack, "vol");
  pool = tp_pool_of(ts_stack_node(stack, "pool"));
  ck_assert_ptr_nonnull(pool);
}

static void teardown(void)
{
  ts_error err = { 0 };
  ck_assert_int_eq(ts_stack_close(stack, &err), 0);
  ts_test_dir_teardown();
}

static void host_wait(ts_aio_ctx *ctx, int want)
{
  int fd = ts_aio_fd(ctx);
  while (total_calls < want) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    ck_assert_int_eq(poll(&p, 1, 10000), 1);
    ck_assert_int_ge(ts_aio_poll(ctx), 0);
  }
}

static void fill(unsigned char c, uint64_t off, size_t len)
{
  static unsigned char buf[BS];
  memset(buf, c, BS);
  for (size_t done = 0; done < len; done += BS)
    ck_assert_int_eq(ts_pwrite(vol, buf, len - done < BS ? len - done : BS, off + done, 0), 0);
}

static void expect(unsigned char c, uint64_t off, size_t len)
{
  static unsigned char buf[BS];
  ck_assert_int_eq(ts_pread(vol, buf, len, off), 0);
  for (size_t i = 0; i < len; i++)
    ck_assert_msg(buf[i] == c, "byte %llu reads 0x%02x, not 0x%02x", (unsigned long long)(off + i),
                  buf[i], c);
}

/* What takes the fast path and what falls back, and that both are right. */
START_TEST(fast_and_fallback)
{
  fill('O', 0, BS);      /* block 0 mapped */
  fill('P', 2 * BS, BS); /* block 2 mapped, block 1 not */
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_EVENTFD, NULL, 1, 0, 0);
  static unsigned char wb[K4], rb[4][2 * K4];
  static struct treq t[8];
  memset(wb, 'W', sizeof wb);
  /* A write into a mapped block, and one into an unmapped block. */
  treq_init(&t[0], TS_OP_WRITE, K4, wb, K4, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, vol, &t[0]), 0);
  host_wait(ctx, 1);
  ck_assert_int_eq(hl.async_n, 1);
  treq_init(&t[1], TS_OP_WRITE, BS + K4, wb, K4, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, vol, &t[1]), 0);
  host_wait(ctx, 2);
  ck_assert_int_eq(hl.async_n, 1); /* allocation: the workers */
  ck_assert_uint_eq(atomic_load(&pool->n_fast_writes), 1);
  /* Reads: mapped, unmapped (zeroes on the spot), across two runs. */
  memset(rb, 0xEE, sizeof rb);
  treq_init(&t[2], TS_OP_READ, 0, rb[0], 2 * K4, count_cb);
  treq_init(&t[3], TS_OP_READ, 5 * BS, rb[1], 2 * K4, count_cb);
  treq_init(&t[4], TS_OP_READ, 2 * BS - K4, rb[2], 2 * K4, count_cb);
  for (int i = 2; i < 5; i++)
    ck_assert_int_eq(treq_submit_buf(ctx, vol, &t[i]), 0);
  host_wait(ctx, 5);
  /* Two fast reads; the read across two runs goes to a worker, which
   * starts both runs' data reads together, through submit_async too. */
  ck_assert_int_eq(hl.async_n, 4);
  ck_assert_uint_eq(atomic_load(&pool->n_fast_reads), 2);
  for (int i = 0; i < 5; i++) {
    ck_assert_int_eq(t[i].calls, 1);
    ck_assert_int_eq(t[i].result, 0);
  }
  for (int i = 0; i < K4; i++) {
    ck_assert_int_eq(rb[0][i], 'O');
    ck_assert_int_eq(rb[0][K4 + i], 'W');
    ck_assert_int_eq(rb[1][i], 0);
    ck_assert_int_eq(rb[1][K4 + i], 0);
    ck_assert_int_eq(rb[2][i], 0); /* the tail of block 1 */
    ck_assert_int_eq(rb[2][K4 + i], 'P');
  }
  expect('W', BS + K4, K4); /* written by the worker */
  /* A data layer that declines: the request still completes, on a worker. */
  hl.decline = true;
  treq_init(&t[5], TS_OP_WRITE, 3 * K4, wb, K4, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, vol, &t[5]), 0);
  host_wait(ctx, 6);
  ck_assert_int_eq(t[5].result, 0);
  ck_assert_uint_eq(atomic_load(&pool->n_fast_writes), 1);
  expect('W', 3 * K4, K4);
  ck_assert_uint_eq(atomic_load(&pool->fast_inflight), 0);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
}
END_TEST

/* The other thread's work, and whether it is over. */
struct other {
  pthread_t t;
  int what; /* 0: discard block 0, commit, write block 5; 1: snapshot, write */
  _Atomic bool done;
  int r;
};

static void *other_main(void *arg)
{
  struct other *o = arg;
  static unsigned char buf[BS];
  if (o->what == 0) {
    o->r = ts_discard(vol, 0, BS);
    if (!o->r)
      o->r = ts_flush(vol); /* the freed block is free from the commit on */
    memset(buf, 'B', BS);
    if (!o->r)
      o->r = ts_pwrite(vol, buf, BS, 5 * BS, 0); /* takes the freed block */
  } else {
    ts_error err = { 0 };
    o->r = ts_pool_create_snap(ts_stack_node(stack, "pool"), 2, 1, &err);
    memset(buf, 'B', K4);
    if (!o->r)
      o->r = ts_pwrite(vol, buf, K4, 2 * K4, 0); /* breaks the sharing */
  }
  atomic_store(&o->done, true);
  return NULL;
}

/* Hold a fast 4K write of 'A' to block 0, start the other thread, give it
 * time to finish, then let the write go. Returns whether the other thread
 * had finished while the write was held. */
static bool race(int what)
{
  /* Discarding: all 4 data blocks in use, so block 0's is the one handed
   * out next. Snapshotting: one, so breaking the sharing has a free one. */
  fill('O', 0, what == 0 ? 4 * BS : BS);
  ck_assert_int_eq(ts_flush(vol), 0);
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_EVENTFD, NULL, 1, 0, 0);
  static unsigned char wb[K4];
  static struct treq t;
  memset(wb, 'A', sizeof wb);
  hl.hold = true;
  treq_init(&t, TS_OP_WRITE, 0, wb, K4, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, vol, &t), 0);
  ck_assert_int_eq(held_count(), 1); /* in flight on the data layer */
  struct other o = { .what = what };
  atomic_init(&o.done, false);
  ck_assert_int_eq(pthread_create(&o.t, NULL, other_main, &o), 0);
  for (int i = 0; i < 50 && !atomic_load(&o.done); i++)
    usleep(10000);
  bool early = atomic_load(&o.done);
  hold_release();
  host_wait(ctx, 1);
  pthread_join(o.t, NULL);
  ck_assert_int_eq(o.r, 0);
  ck_assert_int_eq(t.calls, 1);
  ck_assert_int_eq(t.result, 0);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  ck_assert_uint_ge(atomic_load(&pool->n_fast_drains), early ? 0 : 1);
  return early;
}

/* Discard a block with a fast write in flight to it, commit, and have the
 * block allocated to another virtual block: the old write must not land in
 * the new owner's data. */
START_TEST(discard_waits_for_fast_write)
{
  bool early = race(0);
  expect('B', 5 * BS, BS);
  ck_assert_msg(!early, "the discard did not wait for the write in flight");
}
END_TEST

/* Snapshot with a fast write in flight: the snapshot waits for it, so the
 * copy that breaking the sharing makes has it, and the origin keeps it. */
START_TEST(snapshot_waits_for_fast_write)
{
  bool early = race(1);
  expect('A', 0, K4);
  expect('O', K4, K4);
  expect('B', 2 * K4, K4);
  ck_assert_msg(!early, "the snapshot did not wait for the write in flight");
}
END_TEST

/* The same path over a real file layer's io_uring: reads on the ring while
 * another thread discards, rewrites and commits. A read sees its own
 * block's bytes or zeroes, never another block's. */
enum { RBLOCKS = 32, RREADS = 2000, RDEPTH = 8 };
static ts_stack *rstack;
static ts_dev *rvol;
static struct {
  struct treq t[RDEPTH];
  unsigned char buf[RDEPTH][K4];
  uint64_t rng;
  int submitted, bad;
  ts_aio_ctx *ctx;
} rd;

static void rsetup(void)
{
  ts_test_dir_setup();
  total_calls = 0;
  rstack = ts_test_open(
      ts_test_dir,
      "{ \"version\": 1, \"layers\": {"
      " \"meta\": { \"type\": \"file\", \"path\": \"m.img\", \"size\": \"8M\", \"create\": true },"
      " \"data\": { \"type\": \"file\", \"path\": \"d.img\", \"size\": \"4M\", \"create\": true },"
      " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
      "   \"block_size\": \"64K\", \"create\": true, \"commit_interval\": 0 },"
      " \"vol\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"2M\","
      "   \"create\": true } },"
      " \"exports\": [\"vol\"] }");
  rvol = ts_stack_dev(rstack, "vol");
}

static void rteardown(void)
{
  ts_error err = { 0 };
  ck_assert_int_eq(ts_stack_close(rstack, &err), 0);
  ts_test_dir_teardown();
}

static void rsubmit(int slot)
{
  rd.rng = rd.rng * 6364136223846793005ull + 1442695040888963407ull;
  uint64_t vb = (rd.rng >> 33) % RBLOCKS;
  treq_init(&rd.t[slot], TS_OP_READ, vb * BS + ((rd.rng >> 20) % 16) * K4, rd.buf[slot], K4, NULL);
  rd.t[slot].index = slot;
  rd.submitted++;
}

static void rcheck_cb(ts_aio_req *req)
{
  struct treq *t = req->data;
  unsigned char want = (unsigned char)(t->req.io.offset / BS + 1);
  total_calls++;
  if (req->result)
    rd.bad++;
  for (int i = 0; i < K4; i++)
    if (rd.buf[t->index][i] != 0 && rd.buf[t->index][i] != want) {
      rd.bad++;
      break;
    }
  if (rd.submitted < RREADS) {
    rsubmit(t->index);
    rd.t[t->index].req.cb = rcheck_cb;
    ck_assert_int_eq(treq_submit_buf(rd.ctx, rvol, &rd.t[t->index]), 0);
  }
}

static _Atomic bool rstop;

static void *rewriter(void *arg)
{
  (void)arg;
  static unsigned char buf[BS];
  for (int i = 0; !atomic_load(&rstop); i++) {
    int vb = i % RBLOCKS;
    memset(buf, vb + 1, BS);
    ck_assert_int_eq(ts_discard(rvol, (uint64_t)vb * BS, BS), 0);
    ck_assert_int_eq(ts_pwrite(rvol, buf, BS, (uint64_t)vb * BS, 0), 0);
    if (i % 8 == 7)
      ck_assert_int_eq(ts_flush(rvol), 0); /* freed blocks become reusable */
  }
  return NULL;
}

START_TEST(ring_reads_while_blocks_move)
{
  static unsigned char buf[BS];
  for (int vb = 0; vb < RBLOCKS; vb++) {
    memset(buf, vb + 1, BS);
    ck_assert_int_eq(ts_pwrite(rvol, buf, BS, (uint64_t)vb * BS, 0), 0);
  }
  rd.ctx = make_ctx(TS_AIO_MODE_EVENTFD, NULL, 2, RDEPTH, 0);
  rd.rng = 42;
  rd.submitted = rd.bad = 0;
  atomic_store(&rstop, false);
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, rewriter, NULL), 0);
  for (int i = 0; i < RDEPTH; i++) {
    rsubmit(i);
    rd.t[i].req.cb = rcheck_cb;
    ck_assert_int_eq(treq_submit_buf(rd.ctx, rvol, &rd.t[i]), 0);
  }
  host_wait(rd.ctx, RREADS);
  atomic_store(&rstop, true);
  pthread_join(th, NULL);
  ck_assert_int_eq(rd.bad, 0);
  ck_assert_int_eq(ts_aio_ctx_close(rd.ctx), 0);
  struct tp_pool *p = tp_pool_of(ts_stack_node(rstack, "pool"));
  ck_assert_uint_gt(atomic_load(&p->n_fast_reads), 0);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("aio_thin");
  TCase *tc = tcase_create("fast");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, fast_and_fallback);
  tcase_add_test(tc, discard_waits_for_fast_write);
  tcase_add_test(tc, snapshot_waits_for_fast_write);
  suite_add_tcase(s, tc);
  TCase *ring = tcase_create("ring");
  tcase_add_checked_fixture(ring, rsetup, rteardown);
  tcase_add_test(ring, ring_reads_while_blocks_move);
  suite_add_tcase(s, ring);
  return ts_test_main(s);
}
