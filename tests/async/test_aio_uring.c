/* The async API's path around its workers: a file layer starts LOOP and
 * EVENTFD requests on its io_uring (the submit_async hook), and falls back
 * to the workers for WRITE and FLUSH when told to keep them there
 * (TS_IO_URING=reads), for everything with TS_IO_URING=0, for unaligned
 * O_DIRECT buffers, and in WORKER mode.
 *
 * Method: the data is checked by reading it back; which path ran is checked
 * with the counters the status JSON reports for the device (async_submits,
 * the requests started through the hook) and for the file (ring_ops, the
 * requests its ring completed, and async_engine). ctest runs this program
 * three times: without TS_IO_URING, where the ring must run them all, with
 * TS_IO_URING=reads, where the ring must run the reads and the workers the
 * rest, and with TS_IO_URING=0, where it must run none; the data comes out
 * the same. */
#include "aio_test.h"

#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

static char *dir;
static ts_stack *stack;
static int ring_mode; /* 0: no ring, 1: reads on the ring, 2: everything */

static void setup(void)
{
  dir = ts_test_mkdtemp();
  total_calls = 0;
  stack = NULL;
  const char *env = getenv("TS_IO_URING");
  ring_mode = !env ? 2 : strcmp(env, "reads") == 0 ? 1 : strcmp(env, "0") == 0 ? 0 : 2;
}

static void teardown(void)
{
  ts_error err = { 0 };
  if (stack)
    ck_assert_int_eq(ts_stack_close(stack, &err), 0);
  ts_test_rmdir(dir);
  free(dir);
}

static ts_dev *open_file(bool direct)
{
  char *json = ts_test_fmt("{ \"version\": 1, \"layers\": {"
                           " \"f\": { \"type\": \"file\", \"path\": \"d.img\", \"size\": \"8M\","
                           " \"create\": true, \"direct\": %s, \"block_size\": 4096 } },"
                           " \"exports\": [\"f\"] }",
                           direct ? "true" : "false");
  stack = ts_test_open(dir, json);
  free(json);
  return ts_stack_dev(stack, "f");
}

struct counters {
  int64_t async_submits;
  int64_t ring_ops;
  int64_t bounced;
  char engine[96];
};

static struct counters counters(ts_dev *d)
{
  char *s = ts_dev_status_json(d);
  ck_assert_ptr_nonnull(s);
  json_error_t je;
  json_t *o = json_loads(s, 0, &je);
  ck_assert_msg(o, "status is not JSON: %s", s);
  struct counters c = { 0 };
  c.async_submits = json_integer_value(json_object_get(o, "async_submits"));
  json_t *l = json_object_get(o, "layer");
  c.ring_ops = json_integer_value(json_object_get(l, "ring_ops"));
  c.bounced = json_integer_value(json_object_get(l, "bounced_bytes"));
  const char *e = json_string_value(json_object_get(l, "async_engine"));
  ck_assert_msg(e, "no async_engine in %s", s);
  snprintf(c.engine, sizeof c.engine, "%s", e);
  json_decref(o);
  free(s);
  return c;
}

static void host_wait(ts_aio_ctx *ctx, int want)
{
  int fd = ts_aio_fd(ctx);
  while (total_calls < want) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    ck_assert_int_eq(poll(&p, 1, -1), 1);
    ck_assert_int_ge(ts_aio_poll(ctx), 0);
  }
  ck_assert_int_eq(total_calls, want);
}

enum { N = 64, BS = 4096 };
static struct treq w[N], r[N];
static unsigned char *wbuf, *rbuf;

static void alloc_bufs(size_t skew)
{
  /* `skew` bytes past a page boundary: 0 for O_DIRECT's alignment. */
  static unsigned char *wb, *rb;
  ck_assert_int_eq(posix_memalign((void **)&wb, 4096, (size_t)N * BS + 4096), 0);
  ck_assert_int_eq(posix_memalign((void **)&rb, 4096, (size_t)N * BS + 4096), 0);
  wbuf = wb + skew;
  rbuf = rb + skew;
  for (int i = 0; i < N; i++)
    ts_test_pattern(wbuf + (size_t)i * BS, BS, (uint64_t)i + 77);
  memset(rbuf, 0, (size_t)N * BS);
}

/* N writes (every 8th with FUA), a FLUSH, N reads, compared. */
static void write_flush_read(ts_aio_ctx *ctx, ts_dev *f, uv_loop_t *loop)
{
  for (int i = 0; i < N; i++) {
    treq_init(&w[i], TS_OP_WRITE, (uint64_t)i * 2 * BS, wbuf + (size_t)i * BS, BS, count_cb);
    if (i % 8 == 0)
      w[i].req.io.flags = TS_IO_FUA;
    ck_assert_int_eq(treq_submit_buf(ctx, f, &w[i]), 0);
  }
  if (loop)
    ck_assert_int_eq(uv_run(loop, UV_RUN_DEFAULT), 0);
  else
    host_wait(ctx, N);
  ck_assert_int_eq(total_calls, N);
  static struct treq fl;
  treq_init(&fl, TS_OP_FLUSH, 0, NULL, 0, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, f, &fl), 0);
  if (loop)
    ck_assert_int_eq(uv_run(loop, UV_RUN_DEFAULT), 0);
  else
    host_wait(ctx, N + 1);
  ck_assert_int_eq(fl.calls, 1);
  ck_assert_int_eq(fl.result, 0);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(w[i].calls, 1);
    ck_assert_int_eq(w[i].result, 0);
    treq_init(&r[i], TS_OP_READ, (uint64_t)i * 2 * BS, rbuf + (size_t)i * BS, BS, count_cb);
    ck_assert_int_eq(treq_submit_buf(ctx, f, &r[i]), 0);
  }
  if (loop)
    ck_assert_int_eq(uv_run(loop, UV_RUN_DEFAULT), 0);
  else
    host_wait(ctx, 2 * N + 1);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(r[i].calls, 1);
    ck_assert_int_eq(r[i].result, 0);
    ck_assert_msg(memcmp(rbuf + (size_t)i * BS, wbuf + (size_t)i * BS, BS) == 0,
                  "block %d read back wrong", i);
  }
  ck_assert_int_eq(total_calls, 2 * N + 1);
}

/* write_flush_read's requests the ring runs: N writes, a flush, N reads. */
static int ring_ops_expected(void) { return ring_mode == 2 ? 2 * N + 1 : ring_mode == 1 ? N : 0; }

START_TEST(eventfd_uses_the_ring)
{
  ts_dev *f = open_file(false);
  alloc_bufs(0);
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_EVENTFD, NULL, 2, 16, TS_AIO_BLOCK);
  write_flush_read(ctx, f, NULL);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  struct counters c = counters(f);
  if (ring_mode == 2) {
    ck_assert_str_eq(c.engine, "io_uring");
  } else if (ring_mode == 1) {
    ck_assert_str_eq(c.engine, "io_uring for reads, threads for writes (TS_IO_URING=reads)");
  } else {
    ck_assert_str_eq(c.engine, "threads (TS_IO_URING=0)");
  }
  ck_assert_int_eq(c.async_submits, ring_ops_expected());
  ck_assert_int_eq(c.ring_ops, ring_ops_expected());
  /* The file holds what was written, seen apart from the library. */
  char *path = ts_test_path(dir, "d.img");
  FILE *fp = fopen(path, "rb");
  ck_assert_ptr_nonnull(fp);
  unsigned char blk[BS];
  ck_assert_int_eq(fseek(fp, 5L * 2 * BS, SEEK_SET), 0);
  ck_assert_uint_eq(fread(blk, 1, BS, fp), BS);
  ck_assert(memcmp(blk, wbuf + 5 * BS, BS) == 0);
  fclose(fp);
  free(path);
}
END_TEST

START_TEST(loop_direct_uses_the_ring)
{
  ts_dev *f = open_file(true);
  alloc_bufs(0);
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_LOOP, &loop, 1, N, 0);
  write_flush_read(ctx, f, &loop);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  loop_finish(&loop);
  struct counters c = counters(f);
  ck_assert_int_eq(c.async_submits, ring_ops_expected());
  ck_assert_int_eq(c.ring_ops, ring_ops_expected());
  ck_assert_int_eq(c.bounced, 0);
}
END_TEST

/* O_DIRECT with buffers off the block alignment: the ring declines them,
 * the workers bounce them, and the data is still right. */
START_TEST(loop_direct_unaligned_falls_back)
{
  ts_dev *f = open_file(true);
  alloc_bufs(512);
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_LOOP, &loop, 2, N, 0);
  write_flush_read(ctx, f, &loop);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  loop_finish(&loop);
  struct counters c = counters(f);
  /* Only the FLUSH had nothing to align. */
  ck_assert_int_eq(c.async_submits, ring_mode == 2 ? 1 : 0);
  ck_assert_int_eq(c.ring_ops, ring_mode == 2 ? 1 : 0);
  ck_assert_int_eq(c.bounced, 2 * N * BS);
}
END_TEST

START_TEST(worker_mode_keeps_its_workers)
{
  ts_dev *f = open_file(false);
  alloc_bufs(0);
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_WORKER, NULL, 1, 8, TS_AIO_BLOCK);
  for (int i = 0; i < N; i++) {
    treq_init(&w[i], TS_OP_WRITE, (uint64_t)i * BS, wbuf + (size_t)i * BS, BS, count_cb);
    ck_assert_int_eq(treq_submit_buf(ctx, f, &w[i]), 0);
  }
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  ck_assert_int_eq(total_calls, N); /* one worker, joined by close */
  struct counters c = counters(f);
  ck_assert_int_eq(c.async_submits, 0);
  ck_assert_int_eq(c.ring_ops, 0);
  ck_assert_str_eq(c.engine, "threads");
}
END_TEST

/* A read the file's end cuts short (the file shrank under the stack) comes
 * back whole, zeroes past the end, as the synchronous path answers it. */
START_TEST(short_read_past_a_shrunk_end)
{
  ts_dev *f = open_file(false);
  alloc_bufs(0);
  ck_assert_int_eq(ts_pwrite(f, wbuf, 2 * BS, 0, 0), 0);
  char *path = ts_test_path(dir, "d.img");
  ck_assert_int_eq(truncate(path, BS + BS / 2), 0);
  free(path);
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_EVENTFD, NULL, 1, 4, 0);
  memset(rbuf, 0xEE, 2 * BS);
  treq_init(&r[0], TS_OP_READ, 0, rbuf, 2 * BS, count_cb);
  ck_assert_int_eq(treq_submit_buf(ctx, f, &r[0]), 0);
  host_wait(ctx, 1);
  ck_assert_int_eq(r[0].result, 0);
  ck_assert(memcmp(rbuf, wbuf, BS + BS / 2) == 0);
  for (size_t i = BS + BS / 2; i < 2 * BS; i++)
    ck_assert_msg(rbuf[i] == 0, "byte %zu past the end is 0x%02x", i, rbuf[i]);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  ck_assert_int_eq(counters(f).ring_ops, ring_mode ? 1 : 0);
}
END_TEST

/* Threads that submit and exit at once: the kernel cancels an exiting
 * thread's ring requests, so the exit has to wait for them. Writes into a
 * fresh sparse file (allocating, so the kernel queues them for its own
 * workers) are the ones it would cancel. */
enum { EXIT_THREADS = 8, EXIT_PER = 32 };
static struct treq ex_req[EXIT_THREADS][EXIT_PER];
static struct {
  ts_aio_ctx *ctx;
  ts_dev *dev;
} ex;

static void *submit_and_exit(void *arg)
{
  int th = (int)(intptr_t)arg;
  for (int i = 0; i < EXIT_PER; i++) {
    struct treq *t = &ex_req[th][i];
    uint64_t off = ((uint64_t)(th * EXIT_PER + i) * 7 % 2048) * BS;
    treq_init(t, TS_OP_WRITE, off, wbuf + (size_t)(i % N) * BS, BS, count_cb);
    ck_assert_int_eq(treq_submit_buf(ex.ctx, ex.dev, t), 0);
  }
  return NULL;
}

START_TEST(submitters_that_exit)
{
  ts_dev *f = open_file(false);
  alloc_bufs(0);
  ex.dev = f;
  /* A small depth that submitters block on: they exit with requests in
   * flight. The cancellation is a race, so several rounds. */
  ex.ctx = make_ctx(TS_AIO_MODE_EVENTFD, NULL, 2, 16, TS_AIO_BLOCK);
  for (int round = 0; round < 12; round++) {
    pthread_t th[EXIT_THREADS];
    int before = total_calls;
    for (int i = 0; i < EXIT_THREADS; i++)
      ck_assert_int_eq(pthread_create(&th[i], NULL, submit_and_exit, (void *)(intptr_t)i), 0);
    host_wait(ex.ctx, before + EXIT_THREADS * EXIT_PER);
    for (int i = 0; i < EXIT_THREADS; i++)
      pthread_join(th[i], NULL);
    for (int t = 0; t < EXIT_THREADS; t++)
      for (int i = 0; i < EXIT_PER; i++)
        ck_assert_msg(ex_req[t][i].result == 0, "round %d thread %d request %d: %s", round, t, i,
                      strerror(-ex_req[t][i].result));
    ck_assert_int_eq(ts_discard(f, 0, ts_dev_size(f)), 0); /* allocate again next round */
  }
  ck_assert_int_eq(ts_aio_ctx_close(ex.ctx), 0);
}
END_TEST

/* A FLUSH covers the writes acknowledged before it. Buffered writes into a
 * sparse file leave delayed-allocation extents (FIEMAP_EXTENT_DELALLOC)
 * until they are written back; the callback of the last write submits the
 * FLUSH (so it is one of the resubmissions the loop batches), and when the
 * FLUSH completes every written extent must be written back. */
enum { FL_WRITES = 8 };
static struct treq fl_w[FL_WRITES], fl_flush;
static struct {
  ts_aio_ctx *ctx;
  ts_dev *dev;
  int fd; /* the file, opened apart from the library */
  int writes_done;
  int delalloc_before; /* extents still delayed when the FLUSH went */
  int delalloc_after;  /* ... and when it completed */
  int extents_after;
} fl;

/* Extents in the written range, and how many are still delayed. */
static int count_delalloc(int fd, int *extents)
{
  enum { MAXX = 64 };
  struct {
    struct fiemap fm;
    struct fiemap_extent x[MAXX];
  } m;
  memset(&m, 0, sizeof m);
  m.fm.fm_start = 0;
  m.fm.fm_length = (uint64_t)FL_WRITES * 2 * BS;
  m.fm.fm_extent_count = MAXX;
  ck_assert_int_eq(ioctl(fd, FS_IOC_FIEMAP, &m.fm), 0);
  int n = 0;
  for (unsigned i = 0; i < m.fm.fm_mapped_extents; i++)
    n += (m.fm.fm_extents[i].fe_flags & FIEMAP_EXTENT_DELALLOC) != 0;
  *extents = (int)m.fm.fm_mapped_extents;
  return n;
}

static void fl_flush_cb(ts_aio_req *req)
{
  count_cb(req);
  fl.delalloc_after = count_delalloc(fl.fd, &fl.extents_after);
}

static void fl_write_cb(ts_aio_req *req)
{
  count_cb(req);
  if (++fl.writes_done < FL_WRITES)
    return;
  int extents;
  fl.delalloc_before = count_delalloc(fl.fd, &extents);
  treq_init(&fl_flush, TS_OP_FLUSH, 0, NULL, 0, fl_flush_cb);
  ck_assert_int_eq(treq_submit_buf(fl.ctx, fl.dev, &fl_flush), 0);
}

START_TEST(flush_writes_back_the_acknowledged_writes)
{
  ts_dev *f = open_file(false);
  alloc_bufs(0);
  char *path = ts_test_path(dir, "d.img");
  fl.fd = open(path, O_RDONLY);
  free(path);
  ck_assert_int_ge(fl.fd, 0);
  fl.writes_done = 0;
  fl.dev = f;
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  fl.ctx = make_ctx(TS_AIO_MODE_LOOP, &loop, 1, 2 * FL_WRITES, 0);
  for (int i = 0; i < FL_WRITES; i++) {
    /* Every other block, so each write is an extent of its own. */
    treq_init(&fl_w[i], TS_OP_WRITE, (uint64_t)i * 2 * BS, wbuf + (size_t)i * BS, BS, fl_write_cb);
    ck_assert_int_eq(treq_submit_buf(fl.ctx, f, &fl_w[i]), 0);
  }
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(total_calls, FL_WRITES + 1);
  for (int i = 0; i < FL_WRITES; i++)
    ck_assert_int_eq(fl_w[i].result, 0);
  ck_assert_int_eq(fl_flush.result, 0);
  ck_assert_int_eq(ts_aio_ctx_close(fl.ctx), 0);
  loop_finish(&loop);
  close(fl.fd);
  /* The premise: the writes were still delayed when the FLUSH started. */
  ck_assert_int_gt(fl.delalloc_before, 0);
  ck_assert_int_eq(fl.extents_after, FL_WRITES);
  ck_assert_msg(fl.delalloc_after == 0, "%d of %d extents still delayed after the FLUSH",
                fl.delalloc_after, fl.extents_after);
  struct counters c = counters(f);
  ck_assert_int_eq(c.ring_ops, ring_mode == 2 ? FL_WRITES + 1 : 0);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("aio_uring");
  TCase *tc = tcase_create("uring");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, eventfd_uses_the_ring);
  tcase_add_test(tc, loop_direct_uses_the_ring);
  tcase_add_test(tc, loop_direct_unaligned_falls_back);
  tcase_add_test(tc, worker_mode_keeps_its_workers);
  tcase_add_test(tc, short_read_past_a_shrunk_end);
  tcase_add_test(tc, submitters_that_exit);
  tcase_add_test(tc, flush_writes_back_the_acknowledged_writes);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
