/* The async API in LOOP mode: completions on a caller-owned libuv loop.
 *
 * Method: every request carries a record of how often its callback ran and
 * with which result; each test ends by asserting every record says "exactly
 * once, with the expected result", that nothing else called back, and that
 * the loop closes with nothing left on it (uv_loop_close returns 0). Data is
 * checked by reading it back, through the sync API or the async one. */
#include "aio_test.h"

#include <unistd.h>

static ts_stack *stack;

static void setup(void)
{
  ts_test_dir_setup();
  total_calls = 0;
  gate_setup();
  stack = NULL;
}

static void teardown(void)
{
  ts_error err = { 0 };
  gate_open_all(); /* closing the stack flushes through the gate */
  if (stack)
    ck_assert_int_eq(ts_stack_close(stack, &err), 0);
  ts_test_dir_teardown();
}

static ts_dev *open_file_dev(const char *size)
{
  stack = open_gated_file(ts_test_dir, size);
  return ts_stack_dev(stack, "f");
}

START_TEST(write_read_verify)
{
  enum { N = 64, BS = 4096 };
  ts_dev *dev = open_file_dev("4M");
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_LOOP, &loop, 0, 0, 0);

  static struct treq w[N], r[N];
  static unsigned char wbuf[N][BS], rbuf[N][BS];
  for (int i = 0; i < N; i++) {
    ts_test_pattern(wbuf[i], BS, (uint64_t)i + 1);
    treq_init(&w[i], TS_OP_WRITE, (uint64_t)i * 65536, wbuf[i], BS, count_cb);
    ck_assert_int_eq(treq_submit_buf(ctx, dev, &w[i]), 0);
  }
  ck_assert_uint_eq(ts_aio_pending(ctx), N);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(total_calls, N);
  ck_assert_uint_eq(ts_aio_pending(ctx), 0);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(w[i].calls, 1);
    ck_assert_int_eq(w[i].result, 0);
  }

  struct treq fl;
  treq_init(&fl, TS_OP_FLUSH, 0, NULL, 0, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, dev, &fl), 0);
  for (int i = 0; i < N; i++) {
    memset(rbuf[i], 0, BS);
    treq_init(&r[i], TS_OP_READ, (uint64_t)i * 65536, rbuf[i], BS, count_cb);
    ck_assert_int_eq(treq_submit_buf(ctx, dev, &r[i]), 0);
  }
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(total_calls, 2 * N + 1);
  ck_assert_int_eq(fl.calls, 1);
  ck_assert_int_eq(fl.result, 0);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(r[i].calls, 1);
    ck_assert_int_eq(r[i].result, 0);
    ck_assert_msg(memcmp(rbuf[i], wbuf[i], BS) == 0, "block %d read back wrong", i);
  }
  /* The sync path sees the same bytes. */
  unsigned char check[BS];
  ck_assert_int_eq(ts_pread(dev, check, BS, 5 * 65536), 0);
  ck_assert(memcmp(check, wbuf[5], BS) == 0);

  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  loop_finish(&loop);
  ck_assert_int_eq(total_calls, 2 * N + 1); /* close called nothing more */
}
END_TEST

START_TEST(invalid_requests_never_call_back)
{
  char *json = ts_test_fmt(
    "{ \"version\": 1, \"layers\": {"
    " \"f\": { \"type\": \"file\", \"path\": \"d.img\", \"size\": \"1M\", \"create\": true },"
    " \"nd\": { \"type\": \"fault\", \"child\": \"f\", \"limits\": { \"max_discard_bytes\": 0 } } },"
    " \"exports\": [\"f\", \"nd\"] }");
  stack = ts_test_open(ts_test_dir, json);
  free(json);
  /* The same file read-only beside its writer: force-share skips the shared lock. */
  ts_stack *ro = NULL;
  ts_error oerr = { 0 };
  ts_open_opts o = { .struct_size = sizeof o, .flags = TS_OPEN_FORCE_SHARE };
  ck_assert_msg(ts_stack_open_string("{ \"version\": 1, \"layers\": {"
                                     " \"r\": { \"type\": \"file\", \"path\": \"d.img\","
                                     " \"read_only\": true } }, \"exports\": [\"r\"] }",
                                     ts_test_dir, &o, &ro, &oerr) == 0,
                "%s", oerr.msg);
  ts_dev *f = ts_stack_dev(stack, "f"), *nd = ts_stack_dev(stack, "nd");
  ts_dev *rdev = ts_stack_dev(ro, "r");
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_LOOP, &loop, 2, 4, 0);

  static unsigned char buf[8192];
  struct treq t[12];
  int k = 0;
  /* no callback */
  treq_init(&t[k], TS_OP_READ, 0, buf, 4096, NULL);
  ck_assert_int_eq(treq_submit_buf(ctx, f, &t[k++]), -EINVAL);
  /* misaligned offset */
  treq_init(&t[k], TS_OP_READ, 100, buf, 4096, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, f, &t[k++]), -EINVAL);
  /* zero length */
  treq_init(&t[k], TS_OP_DISCARD, 0, NULL, 0, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, f, &t[k++]), -EINVAL);
  /* past the end */
  treq_init(&t[k], TS_OP_WRITE, (1 << 20) - 4096, buf, 8192, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, f, &t[k++]), -EINVAL);
  /* unknown op */
  treq_init(&t[k], 99, 0, NULL, 4096, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, f, &t[k++]), -EINVAL);
  /* a flag the op does not take */
  treq_init(&t[k], TS_OP_READ, 0, buf, 4096, count_cb);
  t[k].req.io.flags = TS_IO_FUA;
  ck_assert_int_eq(treq_submit_buf(ctx, f, &t[k++]), -EINVAL);
  /* iovec total differs from length */
  treq_init(&t[k], TS_OP_WRITE, 0, buf, 4096, count_cb);
  {
    struct iovec v = { buf, 2048 };
    t[k].req.io.iov = &v;
    t[k].req.io.iovcnt = 1;
    ck_assert_int_eq(ts_aio_submit(ctx, f, &t[k++].req), -EINVAL);
  }
  /* read-only device */
  treq_init(&t[k], TS_OP_WRITE, 0, buf, 4096, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, rdev, &t[k++]), -EROFS);
  /* unsupported op */
  treq_init(&t[k], TS_OP_DISCARD, 0, NULL, 4096, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, nd, &t[k++]), -EOPNOTSUPP);
  /* missing context, device, request */
  treq_init(&t[k], TS_OP_READ, 0, buf, 4096, count_cb);
  ck_assert_int_eq(treq_submit_buf(NULL, f, &t[k]), -EINVAL);
  ck_assert_int_eq(treq_submit_buf(ctx, NULL, &t[k++]), -EINVAL);
  ck_assert_int_eq(ts_aio_submit(ctx, f, NULL), -EINVAL);

  ck_assert_uint_eq(ts_aio_pending(ctx), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(total_calls, 0);
  for (int i = 0; i < k; i++)
    ck_assert_int_eq(t[i].calls, 0);

  /* The context is still fine. */
  treq_init(&t[0], TS_OP_READ, 0, buf, 4096, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, f, &t[0]), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(t[0].calls, 1);
  ck_assert_int_eq(t[0].result, 0);
  ck_assert_int_eq(total_calls, 1);

  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  loop_finish(&loop);
  ts_error err = { 0 };
  ck_assert_int_eq(ts_stack_close(ro, &err), 0);
}
END_TEST

START_TEST(failed_requests_complete_with_their_errno)
{
  stack = ts_test_open(ts_test_dir,
                       "{ \"version\": 1, \"layers\": {"
                       " \"f\": { \"type\": \"file\", \"path\": \"d.img\", \"size\": \"1M\","
                       " \"create\": true },"
                       " \"x\": { \"type\": \"fault\", \"child\": \"f\", \"rules\": ["
                       "   { \"op\": \"write\", \"errno\": \"EIO\", \"offset\": \"64K\","
                       "     \"length\": \"64K\" },"
                       "   { \"op\": \"provision\", \"errno\": \"ENOSPC\" } ] } },"
                       " \"exports\": [\"x\"] }");
  ts_dev *x = ts_stack_dev(stack, "x");
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_LOOP, &loop, 2, 0, 0);
  static unsigned char buf[4096];
  struct treq ok, bad, prov;
  treq_init(&ok, TS_OP_WRITE, 0, buf, 4096, count_cb);
  treq_init(&bad, TS_OP_WRITE, 65536, buf, 4096, count_cb);
  treq_init(&prov, TS_OP_PROVISION, 0, NULL, 65536, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, x, &ok), 0);
  ck_assert_int_eq(treq_submit_buf(ctx, x, &bad), 0);
  ck_assert_int_eq(treq_submit_buf(ctx, x, &prov), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(total_calls, 3);
  ck_assert_int_eq(ok.calls, 1);
  ck_assert_int_eq(ok.result, 0);
  ck_assert_int_eq(bad.calls, 1);
  ck_assert_int_eq(bad.result, -EIO);
  ck_assert_int_eq(prov.calls, 1);
  ck_assert_int_eq(prov.result, -ENOSPC);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  loop_finish(&loop);
}
END_TEST

START_TEST(every_op)
{
  enum { BS = 65536 };
  ts_dev *dev = open_file_dev("1M");
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_LOOP, &loop, 2, 0, 0);
  static unsigned char data[BS], back[BS], zero[BS];
  ts_test_pattern(data, BS, 7);
  ck_assert_int_eq(ts_pwrite(dev, data, BS, 0, 0), 0);
  ck_assert_int_eq(ts_pwrite(dev, data, BS, BS, 0), 0);

  struct treq wz, dc, pr, fua;
  treq_init(&wz, TS_OP_WRITE_ZEROES, 0, NULL, BS, count_cb);
  treq_init(&dc, TS_OP_DISCARD, BS, NULL, BS, count_cb);
  treq_init(&pr, TS_OP_PROVISION, 4 * BS, NULL, BS, count_cb);
  treq_init(&fua, TS_OP_WRITE, 8 * BS, data, BS, count_cb);
  fua.req.io.flags = TS_IO_FUA;
  ck_assert_int_eq(treq_submit_buf(ctx, dev, &wz), 0);
  ck_assert_int_eq(treq_submit_buf(ctx, dev, &dc), 0);
  ck_assert_int_eq(treq_submit_buf(ctx, dev, &pr), 0);
  ck_assert_int_eq(treq_submit_buf(ctx, dev, &fua), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(total_calls, 4);
  struct treq *all[] = { &wz, &dc, &pr, &fua };
  for (int i = 0; i < 4; i++) {
    ck_assert_int_eq(all[i]->calls, 1);
    ck_assert_int_eq(all[i]->result, 0);
  }
  ck_assert_int_eq(ts_pread(dev, back, BS, 0), 0);
  ck_assert(memcmp(back, zero, BS) == 0);
  ck_assert_int_eq(ts_pread(dev, back, BS, 8 * BS), 0);
  ck_assert(memcmp(back, data, BS) == 0);
  /* The provisioned range is allocated and reads as zeroes. */
  ts_extent_list ext = { 0 };
  ck_assert_int_eq(ts_block_status(dev, 4 * BS, BS, &ext), 0);
  ck_assert_uint_ge(ext.n, 1);
  ck_assert_uint_eq(ext.v[0].flags & TS_EXTENT_HOLE, 0);
  ts_extent_list_free(&ext);
  ck_assert_int_eq(ts_pread(dev, back, BS, 4 * BS), 0);
  ck_assert(memcmp(back, zero, BS) == 0);

  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  loop_finish(&loop);
}
END_TEST

/* Submit a write of `buf` as `n` iovec pieces held in this frame only. */
static int submit_pieces(ts_aio_ctx *ctx, ts_dev *dev, struct treq *t, int n)
{
  struct iovec v[64];
  size_t len = (size_t)t->req.io.length, piece = len / (size_t)n, off = 0;
  for (int i = 0; i < n; i++) {
    v[i].iov_base = (char *)t->buf + off;
    v[i].iov_len = i == n - 1 ? len - off : piece;
    off += v[i].iov_len;
  }
  t->req.io.iov = v;
  t->req.io.iovcnt = n;
  int r = ts_aio_submit(ctx, dev, &t->req);
  memset(v, 0x5A, sizeof v); /* what a reused stack frame would do */
  t->req.io.iov = NULL;
  return r;
}

START_TEST(iovec_array_is_copied)
{
  enum { LEN = 40 * 4096 };
  ts_dev *dev = open_file_dev("1M");
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_LOOP, &loop, 2, 0, 0);
  static unsigned char a[LEN], b[LEN], back[LEN];
  ts_test_pattern(a, LEN, 11);
  ts_test_pattern(b, LEN, 12);
  struct treq small, big;
  treq_init(&small, TS_OP_WRITE, 0, a, LEN, count_cb);
  treq_init(&big, TS_OP_WRITE, 512 * 1024, b, LEN, count_cb);
  ck_assert_int_eq(submit_pieces(ctx, dev, &small, 3), 0);              /* inline copy */
  ck_assert_int_eq(submit_pieces(ctx, dev, &big, 40), 0);                /* allocated copy */
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(total_calls, 2);
  ck_assert_int_eq(small.result, 0);
  ck_assert_int_eq(big.result, 0);
  ck_assert_int_eq(small.calls, 1);
  ck_assert_int_eq(big.calls, 1);
  /* Nothing of the library's is left in the struct for the caller to free. */
  ck_assert_ptr_null(big.req.priv.iov);
  ck_assert_int_eq(ts_pread(dev, back, LEN, 0), 0);
  ck_assert(memcmp(back, a, LEN) == 0);
  ck_assert_int_eq(ts_pread(dev, back, LEN, 512 * 1024), 0);
  ck_assert(memcmp(back, b, LEN) == 0);
  /* And scattered reads land in the right pieces. */
  memset(back, 0, LEN);
  struct treq rd;
  treq_init(&rd, TS_OP_READ, 512 * 1024, back, LEN, count_cb);
  ck_assert_int_eq(submit_pieces(ctx, dev, &rd, 17), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(rd.calls, 1);
  ck_assert_int_eq(rd.result, 0);
  ck_assert(memcmp(back, b, LEN) == 0);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  loop_finish(&loop);
}
END_TEST

/* One request struct, resubmitted from its own callback. */
static struct {
  ts_aio_ctx *ctx;
  ts_dev *dev;
  struct iovec v;
  unsigned char buf[100][4096];
  int done;
} chain;

static void chain_cb(ts_aio_req *req)
{
  ck_assert_int_eq(req->result, 0);
  chain.done++;
  if (chain.done == 100)
    return;
  chain.v.iov_base = chain.buf[chain.done];
  chain.v.iov_len = 4096;
  req->io.offset = (uint64_t)chain.done * 4096;
  req->io.iov = &chain.v;
  ck_assert_int_eq(ts_aio_submit(chain.ctx, chain.dev, req), 0);
}

START_TEST(resubmit_from_callback)
{
  ts_dev *dev = open_file_dev("1M");
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  chain.ctx = make_ctx(TS_AIO_MODE_LOOP, &loop, 2, 1, 0);
  chain.dev = dev;
  chain.done = 0;
  for (int i = 0; i < 100; i++)
    ts_test_pattern(chain.buf[i], 4096, (uint64_t)i + 100);
  ts_aio_req req;
  memset(&req, 0, sizeof req);
  chain.v.iov_base = chain.buf[0];
  chain.v.iov_len = 4096;
  req.io = (ts_io){ .op = TS_OP_WRITE, .offset = 0, .length = 4096, .iov = &chain.v, .iovcnt = 1 };
  req.cb = chain_cb;
  ck_assert_int_eq(ts_aio_submit(chain.ctx, dev, &req), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(chain.done, 100);
  unsigned char back[4096];
  for (int i = 0; i < 100; i++) {
    ck_assert_int_eq(ts_pread(dev, back, 4096, (uint64_t)i * 4096), 0);
    ck_assert(memcmp(back, chain.buf[i], 4096) == 0);
  }
  ck_assert_int_eq(ts_aio_ctx_close(chain.ctx), 0);
  loop_finish(&loop);
}
END_TEST

START_TEST(backpressure_eagain)
{
  stack = open_gated_file(ts_test_dir, "1M");
  ts_dev *g = ts_stack_dev(stack, "g"), *f = ts_stack_dev(stack, "f");
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_LOOP, &loop, 1, 4, 0);
  static unsigned char buf[6][4096];
  struct treq t[6];
  for (int i = 0; i < 6; i++)
    treq_init(&t[i], TS_OP_WRITE, (uint64_t)i * 4096, buf[i], 4096, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, g, &t[0]), 0);
  gate_wait_entered(1);  /* the only worker is held: the rest stays queued */
  for (int i = 1; i < 4; i++)
    ck_assert_int_eq(treq_submit_buf(ctx, g, &t[i]), 0);
  ck_assert_int_eq(treq_submit_buf(ctx, g, &t[4]), -EAGAIN);
  ck_assert_int_eq(treq_submit_buf(ctx, f, &t[5]), -EAGAIN); /* depth is per context */
  ck_assert_uint_eq(ts_aio_pending(ctx), 4);
  gate_open_all();
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(total_calls, 4);
  for (int i = 0; i < 4; i++) {
    ck_assert_int_eq(t[i].calls, 1);
    ck_assert_int_eq(t[i].result, 0);
  }
  ck_assert_int_eq(t[4].calls, 0);
  ck_assert_int_eq(t[5].calls, 0);
  ck_assert_int_eq(gate_get(&gate.entered), 4);
  /* With room again, the refused request goes through. */
  ck_assert_int_eq(treq_submit_buf(ctx, g, &t[4]), 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(t[4].calls, 1);
  ck_assert_int_eq(total_calls, 5);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  loop_finish(&loop);
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
  stack = open_gated_file(ts_test_dir, "1M");
  ts_dev *g = ts_stack_dev(stack, "g");
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_LOOP, &loop, 1, 2, TS_AIO_BLOCK);
  static unsigned char buf[3][4096];
  struct treq t[3];
  for (int i = 0; i < 3; i++)
    treq_init(&t[i], TS_OP_WRITE, (uint64_t)i * 4096, buf[i], 4096, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, g, &t[0]), 0);
  gate_wait_entered(1);
  ck_assert_int_eq(treq_submit_buf(ctx, g, &t[1]), 0);
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, open_gate_later, NULL), 0);
  /* At depth: this returns only once a worker has finished a request. */
  ck_assert_int_eq(treq_submit_buf(ctx, g, &t[2]), 0);
  ck_assert_int_ge(gate_get(&gate.finished), 1);
  pthread_join(th, NULL);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(total_calls, 3);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(t[i].calls, 1);
    ck_assert_int_eq(t[i].result, 0);
  }
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  loop_finish(&loop);
}
END_TEST

/* The first cancelled completion opens the gate, which lets the running
 * request finish so that close can wait for it. */
static void cancel_cb(ts_aio_req *req)
{
  count_cb(req);
  if (req->result == -ECANCELED)
    gate_open_all();
}

START_TEST(close_cancels_queued)
{
  enum { N = 11 };
  stack = open_gated_file(ts_test_dir, "1M");
  ts_dev *g = ts_stack_dev(stack, "g"), *f = ts_stack_dev(stack, "f");
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_LOOP, &loop, 1, 64, 0);
  static unsigned char buf[N][4096];
  struct treq t[N];
  for (int i = 0; i < N; i++) {
    memset(buf[i], 0xC0 + i, 4096);
    treq_init(&t[i], TS_OP_WRITE, (uint64_t)i * 4096, buf[i], 4096, cancel_cb);
  }
  ck_assert_int_eq(treq_submit_buf(ctx, g, &t[0]), 0);
  gate_wait_entered(1);
  for (int i = 1; i < N; i++)
    ck_assert_int_eq(treq_submit_buf(ctx, g, &t[i]), 0);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  /* Every completion was delivered by close itself. */
  ck_assert_int_eq(total_calls, N);
  ck_assert_int_eq(t[0].calls, 1);
  ck_assert_int_eq(t[0].result, 0);
  for (int i = 1; i < N; i++) {
    ck_assert_int_eq(t[i].calls, 1);
    ck_assert_int_eq(t[i].result, -ECANCELED);
  }
  ck_assert_int_eq(gate_get(&gate.entered), 1);
  loop_finish(&loop);
  ck_assert_int_eq(total_calls, N);
  /* The cancelled writes never reached the file. */
  unsigned char back[4096], zero[4096] = { 0 };
  ck_assert_int_eq(ts_pread(f, back, 4096, 0), 0);
  ck_assert(memcmp(back, buf[0], 4096) == 0);
  for (int i = 1; i < N; i++) {
    ck_assert_int_eq(ts_pread(f, back, 4096, (uint64_t)i * 4096), 0);
    ck_assert(memcmp(back, zero, 4096) == 0);
  }
}
END_TEST

static struct {
  ts_aio_ctx *ctx;
  ts_dev *dev;
  bool closed;
  int shutdown_refusals;
  int refused_calls;
} cfc;

static void refused_cb(ts_aio_req *req) { cfc.refused_calls++; }

static void close_from_cb(ts_aio_req *req)
{
  count_cb(req);
  if (!cfc.closed) {
    cfc.closed = true;
    ck_assert_int_eq(ts_aio_ctx_close(cfc.ctx), 0);
    return; /* the context is gone: touch it no more */
  }
  /* Callbacks run by the close cannot start new work. */
  static unsigned char b[4096];
  struct treq extra;
  treq_init(&extra, TS_OP_READ, 0, b, 4096, refused_cb);
  if (treq_submit_buf(cfc.ctx, cfc.dev, &extra) == -ESHUTDOWN)
    cfc.shutdown_refusals++;
}

START_TEST(close_from_a_callback)
{
  enum { N = 20 };
  ts_dev *dev = open_file_dev("1M");
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  memset(&cfc, 0, sizeof cfc);
  cfc.ctx = make_ctx(TS_AIO_MODE_LOOP, &loop, 1, 0, 0);
  cfc.dev = dev;
  static unsigned char buf[N][4096];
  struct treq t[N];
  for (int i = 0; i < N; i++) {
    treq_init(&t[i], TS_OP_READ, (uint64_t)i * 4096, buf[i], 4096, close_from_cb);
    ck_assert_int_eq(treq_submit_buf(cfc.ctx, dev, &t[i]), 0);
  }
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert(cfc.closed);
  ck_assert_int_eq(total_calls, N);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(t[i].calls, 1);
    ck_assert(t[i].result == 0 || t[i].result == -ECANCELED);
  }
  ck_assert_int_eq(cfc.shutdown_refusals, N - 1);
  ck_assert_int_eq(cfc.refused_calls, 0);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

START_TEST(idle_context_does_not_hold_the_loop)
{
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_LOOP, &loop, 3, 0, 0);
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_uint_eq(ts_aio_pending(ctx), 0);
  ck_assert_int_eq(ts_aio_fd(ctx), -EINVAL);
  ck_assert_int_eq(ts_aio_poll(ctx), -EINVAL);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  ck_assert_int_eq(ts_aio_ctx_close(NULL), 0);
  loop_finish(&loop);
}
END_TEST

START_TEST(create_rejects_bad_options)
{
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  struct {
    ts_aio_opts o;
    const char *why;
  } bad[] = {
    { { .struct_size = sizeof(ts_aio_opts), .mode = 7, .loop = &loop }, "unknown mode" },
    { { .struct_size = sizeof(ts_aio_opts), .mode = TS_AIO_MODE_LOOP }, "LOOP mode needs" },
    { { .struct_size = sizeof(ts_aio_opts), .mode = TS_AIO_MODE_EVENTFD, .loop = &loop }, "only for LOOP" },
    { { .struct_size = sizeof(ts_aio_opts), .mode = TS_AIO_MODE_LOOP, .flags = 0x100, .loop = &loop }, "unknown flags" },
    { { .struct_size = sizeof(ts_aio_opts), .mode = TS_AIO_MODE_EVENTFD, .workers = 5000 }, "maximum" },
    { { .struct_size = 4, .mode = TS_AIO_MODE_EVENTFD }, "struct_size" },
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ts_aio_ctx *ctx = (ts_aio_ctx *)&loop;
    ts_error err = { 0 };
    ck_assert_int_eq(ts_aio_ctx_create(&bad[i].o, &ctx, &err), -EINVAL);
    ck_assert_ptr_null(ctx);
    ck_assert_int_eq(err.code, -EINVAL);
    ck_assert_msg(strstr(err.msg, bad[i].why), "case %zu: message \"%s\"", i, err.msg);
  }
  ts_aio_ctx *ctx;
  ts_error err = { 0 };
  ck_assert_int_eq(ts_aio_ctx_create(NULL, &ctx, &err), -EINVAL);
  ck_assert_ptr_null(ctx);
  ck_assert_int_eq(ts_aio_ctx_create(&bad[0].o, NULL, &err), -EINVAL);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("aio_loop");
  TCase *tc = tcase_create("loop");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, write_read_verify);
  tcase_add_test(tc, invalid_requests_never_call_back);
  tcase_add_test(tc, failed_requests_complete_with_their_errno);
  tcase_add_test(tc, every_op);
  tcase_add_test(tc, iovec_array_is_copied);
  tcase_add_test(tc, resubmit_from_callback);
  tcase_add_test(tc, backpressure_eagain);
  tcase_add_test(tc, backpressure_blocks);
  tcase_add_test(tc, close_cancels_queued);
  tcase_add_test(tc, close_from_a_callback);
  tcase_add_test(tc, idle_context_does_not_hold_the_loop);
  tcase_add_test(tc, create_rejects_bad_options);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
