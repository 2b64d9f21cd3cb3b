/* LOOP and EVENTFD modes reap the file layer's io_uring on the context's
 * own thread (the sink, src/core/internal.h): a completion reaches the
 * layer's `done`, and then the callback, with no thread in between.
 *
 * Method: a "spy" layer over the file starts every request on the file's
 * submit_async hook and records the thread its `done` runs on, which must
 * be the loop's (or the polling) thread; the file's status counts the
 * requests a context's ring completed (ring_ops_sink), and no ring reaper
 * thread may exist (/proc/self/task/.../comm). Then the rules around it:
 * more requests in flight than the ring takes, a close with requests in
 * flight, submitters that exit before anyone polls, and the fallbacks:
 * TS_IO_URING=0, and a kernel that refuses io_uring_register (the file's
 * own ring and its reaper take over) or io_uring_setup (the workers do),
 * refused by a seccomp filter in a child process. ctest runs it with and
 * without TS_IO_URING=reads (writes on the workers). */
#include "aio_test.h"

#include "core/internal.h"

#include <dirent.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static char *dir;
static ts_stack *stack;
static bool writes_on_ring; /* not TS_IO_URING=reads */
static bool no_ring;        /* TS_IO_URING=0 */
static bool wake_eventfd;   /* TS_IO_URING_WAKE=eventfd */
static pid_t main_tid;

/* The spy: forwards to its child's submit_async and counts the threads
 * its completions arrive on. */
static _Atomic int spy_done_main, spy_done_other, spy_started;

struct spy_req {
  ts_io_done_fn done;
  void *arg;
};

static void spy_done(void *arg, int result)
{
  struct spy_req *q = arg;
  ts_io_done_fn done = q->done;
  void *darg = q->arg;
  free(q);
  if (gettid() == main_tid)
    spy_done_main++;
  else
    spy_done_other++;
  done(darg, result);
}

static int spy_submit_async(ts_layer *l, const ts_io *io, ts_io_done_fn done, void *arg)
{
  struct spy_req *q = malloc(sizeof *q);
  if (!q)
    return -EAGAIN;
  q->done = done;
  q->arg = arg;
  if (ts__submit_async(ts_layer_priv(l), io, spy_done, q) != 0) {
    free(q);
    return -EAGAIN;
  }
  spy_started++;
  return 0;
}

static const ts_layer_type spy_type = {
  TS_LAYER_TYPE_INIT,
  .name = "spy",
  .summary = "counts the threads its child's async completions arrive on",
  .params = child_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = child_layer_open,
  .limits = child_layer_limits,
  .submit = child_layer_submit,
  .submit_async = spy_submit_async,
};

static void setup(void)
{
  dir = ts_test_mkdtemp();
  total_calls = 0;
  stack = NULL;
  spy_done_main = spy_done_other = spy_started = 0;
  main_tid = gettid();
  int r = ts_register_layer_type(&spy_type);
  ck_assert(r == 0 || r == -EEXIST);
  const char *env = getenv("TS_IO_URING");
  writes_on_ring = !(env && strcmp(env, "reads") == 0);
  no_ring = env && strcmp(env, "0") == 0;
  const char *wake = getenv("TS_IO_URING_WAKE");
  wake_eventfd = wake && strcmp(wake, "eventfd") == 0;
}

static void teardown(void)
{
  ts_error err = { 0 };
  if (stack)
    ck_assert_int_eq(ts_stack_close(stack, &err), 0);
  ts_test_rmdir(dir);
  free(dir);
}

/* O_DIRECT, so that requests are in flight on the device for a while. */
static ts_dev *open_spy(void)
{
  stack = ts_test_open(dir, "{ \"version\": 1, \"layers\": {"
                            " \"f\": { \"type\": \"file\", \"path\": \"d.img\", \"size\": \"8M\","
                            " \"create\": true, \"direct\": true, \"block_size\": 4096 },"
                            " \"s\": { \"type\": \"spy\", \"child\": \"f\" } },"
                            " \"exports\": [\"s\", \"f\"] }");
  return ts_stack_dev(stack, "s");
}

static int64_t file_counter(const char *key)
{
  char *s = ts_dev_status_json(ts_stack_dev(stack, "f"));
  ck_assert_ptr_nonnull(s);
  json_t *o = json_loads(s, 0, NULL);
  ck_assert_ptr_nonnull(o);
  int64_t v = json_integer_value(json_object_get(json_object_get(o, "layer"), key));
  json_decref(o);
  free(s);
  return v;
}

/* Threads of this process named like the file ring's reaper. */
static int reaper_threads(void)
{
  DIR *d = opendir("/proc/self/task");
  ck_assert_ptr_nonnull(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.')
      continue;
    char path[64], comm[32] = "";
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    FILE *f = fopen(path, "r");
    if (!f)
      continue; /* exited meanwhile */
    if (fgets(comm, sizeof comm, f) && strncmp(comm, "ts-ring-reaper", 14) == 0)
      n++;
    fclose(f);
  }
  closedir(d);
  return n;
}

static void host_wait(ts_aio_ctx *ctx, int want)
{
  int fd = ts_aio_fd(ctx);
  while (total_calls < want) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    ck_assert_int_eq(poll(&p, 1, 10000), 1);
    ck_assert_int_ge(ts_aio_poll(ctx), 0);
  }
  ck_assert_int_eq(total_calls, want);
}

enum { N = 96, BS = 4096, DEPTH = 32 };
static struct treq rq[N + 300];
static unsigned char *wbuf, *rbuf;

static void alloc_bufs(size_t n)
{
  static unsigned char *wb, *rb;
  free(wb);
  free(rb);
  ck_assert_int_eq(posix_memalign((void **)&wb, 4096, n * BS), 0);
  ck_assert_int_eq(posix_memalign((void **)&rb, 4096, n * BS), 0);
  wbuf = wb;
  rbuf = rb;
  for (size_t i = 0; i < n; i++)
    ts_test_pattern(wbuf + i * BS, BS, i + 5);
  memset(rbuf, 0, n * BS);
}

/* Block i holds pattern i (written synchronously). */
static void prefill(ts_dev *d, int n)
{
  for (int i = 0; i < n; i++)
    ck_assert_int_eq(ts_pwrite(d, wbuf + (size_t)i * BS, BS, (uint64_t)i * BS, 0), 0);
}

static void check_reads(int n)
{
  for (int i = 0; i < n; i++) {
    ck_assert_int_eq(rq[i].calls, 1);
    ck_assert_msg(rq[i].result == 0, "request %d: %s", i, strerror(-rq[i].result));
    ck_assert_msg(memcmp(rbuf + (size_t)i * BS, wbuf + (size_t)i * BS, BS) == 0,
                  "block %d read back wrong", i);
  }
}

/* A callback that keeps DEPTH requests in flight from the completing
 * thread, as a VMM's loop does: each completion starts the next. */
static int next_to_submit, submit_total;
static ts_aio_ctx *chain_ctx;
static ts_dev *chain_dev;
static uint32_t chain_op;

static void chain_cb(ts_aio_req *req);

static void chain_submit(int i)
{
  unsigned char *buf = (chain_op == TS_OP_READ ? rbuf : wbuf) + (size_t)i * BS;
  treq_init(&rq[i], (int)chain_op, (uint64_t)i * BS, buf, BS, chain_cb);
  ck_assert_int_eq(treq_submit_buf(chain_ctx, chain_dev, &rq[i]), 0);
}

static void chain_cb(ts_aio_req *req)
{
  ck_assert_int_eq(gettid(), main_tid);
  count_cb(req);
  if (next_to_submit < submit_total)
    chain_submit(next_to_submit++);
}

static void chain_start(ts_aio_ctx *ctx, ts_dev *d, uint32_t op, int n)
{
  chain_ctx = ctx;
  chain_dev = d;
  chain_op = op;
  submit_total = n;
  next_to_submit = 0;
  while (next_to_submit < DEPTH && next_to_submit < n)
    chain_submit(next_to_submit++);
}

/* How many of `n` requests of `op` must have completed on a context's ring. */
static int on_ring(uint32_t op, int n)
{
  if (no_ring)
    return 0;
  return op == TS_OP_READ || writes_on_ring ? n : 0;
}

static void run_mode(uint32_t mode, uint32_t op)
{
  ts_dev *s = open_spy();
  alloc_bufs(N);
  if (op == TS_OP_READ)
    prefill(ts_stack_dev(stack, "f"), N);
  uv_loop_t loop;
  if (mode == TS_AIO_MODE_LOOP)
    ck_assert_int_eq(uv_loop_init(&loop), 0);
  ts_aio_ctx *ctx = make_ctx(mode, mode == TS_AIO_MODE_LOOP ? &loop : NULL, 2, DEPTH, 0);
  chain_start(ctx, s, op, N);
  if (mode == TS_AIO_MODE_LOOP)
    ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  else
    host_wait(ctx, N);
  ck_assert_int_eq(total_calls, N);
  /* Every completion the ring ran reached the spy on this thread. */
  int want = on_ring(op, N);
  ck_assert_int_eq(spy_started, want);
  ck_assert_int_eq(spy_done_main, want);
  ck_assert_int_eq(spy_done_other, 0);
  ck_assert_int_eq(file_counter("ring_ops_sink"), want);
  ck_assert_int_eq(file_counter("ring_ops"), want);
  ck_assert_int_eq(reaper_threads(), 0);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  if (mode == TS_AIO_MODE_LOOP)
    loop_finish(&loop);
  if (op == TS_OP_READ) {
    check_reads(N);
  } else {
    memset(rbuf, 0, (size_t)N * BS);
    for (int i = 0; i < N; i++)
      ck_assert_int_eq(ts_pread(s, rbuf + (size_t)i * BS, BS, (uint64_t)i * BS), 0);
    ck_assert_int_eq(memcmp(rbuf, wbuf, (size_t)N * BS), 0);
  }
}

START_TEST(loop_reads_reaped_on_the_loop_thread) { run_mode(TS_AIO_MODE_LOOP, TS_OP_READ); }
END_TEST

START_TEST(loop_writes_reaped_on_the_loop_thread) { run_mode(TS_AIO_MODE_LOOP, TS_OP_WRITE); }
END_TEST

START_TEST(eventfd_reads_reaped_on_the_polling_thread)
{
  run_mode(TS_AIO_MODE_EVENTFD, TS_OP_READ);
}
END_TEST

START_TEST(eventfd_writes_reaped_on_the_polling_thread)
{
  run_mode(TS_AIO_MODE_EVENTFD, TS_OP_WRITE);
}
END_TEST

/* More in flight than the ring takes (256): the rest go to the workers,
 * and all complete once, with the right data. */
START_TEST(more_in_flight_than_the_ring_takes)
{
  enum { M = N + 300 };
  ts_dev *s = open_spy();
  alloc_bufs(M);
  prefill(ts_stack_dev(stack, "f"), M);
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ts_aio_ctx *ctx = make_ctx(TS_AIO_MODE_LOOP, &loop, 2, 1024, 0);
  for (int i = 0; i < M; i++) {
    treq_init(&rq[i], TS_OP_READ, (uint64_t)i * BS, rbuf + (size_t)i * BS, BS, count_cb);
    ck_assert_int_eq(treq_submit_buf(ctx, s, &rq[i]), 0);
  }
  ck_assert_int_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
  ck_assert_int_eq(total_calls, M);
  check_reads(M);
  if (!no_ring) {
    ck_assert_int_ge(spy_started, 256);
    ck_assert_int_lt(spy_started, M);
  }
  ck_assert_int_eq(spy_done_other, 0);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  loop_finish(&loop);
}
END_TEST

/* A close with requests in flight on the ring reaps them itself: every
 * callback runs once, before the close returns, with the data in place. */
static void close_in_flight(uint32_t mode)
{
  ts_dev *s = open_spy();
  alloc_bufs(N);
  prefill(ts_stack_dev(stack, "f"), N);
  uv_loop_t loop;
  if (mode == TS_AIO_MODE_LOOP)
    ck_assert_int_eq(uv_loop_init(&loop), 0);
  ts_aio_ctx *ctx = make_ctx(mode, mode == TS_AIO_MODE_LOOP ? &loop : NULL, 2, N, 0);
  for (int i = 0; i < N; i++) {
    treq_init(&rq[i], TS_OP_READ, (uint64_t)i * BS, rbuf + (size_t)i * BS, BS, count_cb);
    ck_assert_int_eq(treq_submit_buf(ctx, s, &rq[i]), 0);
  }
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  ck_assert_int_eq(total_calls, N);
  if (no_ring) {
    /* The workers' queue: what had not started is cancelled. */
    for (int i = 0; i < N; i++) {
      ck_assert_int_eq(rq[i].calls, 1);
      ck_assert(rq[i].result == 0 || rq[i].result == -ECANCELED);
    }
  } else {
    check_reads(N);
  }
  ck_assert_int_eq(spy_done_other, 0);
  ck_assert_int_eq(spy_done_main, on_ring(TS_OP_READ, N));
  if (mode == TS_AIO_MODE_LOOP)
    loop_finish(&loop);
}

START_TEST(loop_close_with_requests_in_flight) { close_in_flight(TS_AIO_MODE_LOOP); }
END_TEST

START_TEST(eventfd_close_with_requests_in_flight) { close_in_flight(TS_AIO_MODE_EVENTFD); }
END_TEST

/* EVENTFD mode: threads submit and exit before anyone polls. Their exit
 * waits for their requests (the kernel would cancel them), which only a
 * reap completes: the exiting thread reaps, rather than wait for a poll
 * that comes after the join. */
enum { EXIT_THREADS = 4, EXIT_PER = 16 };
static ts_aio_ctx *ex_ctx;
static ts_dev *ex_dev;

static void *submit_and_exit(void *arg)
{
  int th = (int)(intptr_t)arg;
  for (int i = 0; i < EXIT_PER; i++) {
    int k = th * EXIT_PER + i;
    treq_init(&rq[k], TS_OP_READ, (uint64_t)k * BS, rbuf + (size_t)k * BS, BS, count_cb);
    ck_assert_int_eq(treq_submit_buf(ex_ctx, ex_dev, &rq[k]), 0);
  }
  return NULL;
}

START_TEST(submitters_exit_before_the_poll)
{
  enum { M = EXIT_THREADS * EXIT_PER };
  ex_dev = open_spy();
  alloc_bufs(M);
  prefill(ts_stack_dev(stack, "f"), M);
  ex_ctx = make_ctx(TS_AIO_MODE_EVENTFD, NULL, 2, M, 0);
  pthread_t th[EXIT_THREADS];
  for (int i = 0; i < EXIT_THREADS; i++)
    ck_assert_int_eq(pthread_create(&th[i], NULL, submit_and_exit, (void *)(intptr_t)i), 0);
  for (int i = 0; i < EXIT_THREADS; i++) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 20;
    ck_assert_msg(pthread_timedjoin_np(th[i], NULL, &ts) == 0,
                  "submitter %d did not exit: its requests were never reaped", i);
  }
  host_wait(ex_ctx, M);
  check_reads(M);
  ck_assert_int_eq(ts_aio_ctx_close(ex_ctx), 0);
}
END_TEST

/* In a child, refuse one io_uring system call with EPERM (as
 * kernel.io_uring_disabled would), run LOOP-mode reads through the spy,
 * and exit with 0 when the data, the threads and the status are what
 * `expect` says; a message on stderr otherwise. */
enum expect { CTX_RING, FILE_RING, WORKERS };

static int refuse(long nr)
{
  struct sock_filter f[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = { .len = sizeof f / sizeof f[0], .filter = f };
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    return -errno;
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0 ? 0 : -errno;
}

#define CHILD_CHECK(c)                                                                             \
  do {                                                                                             \
    if (!(c)) {                                                                                    \
      fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #c);                                      \
      _exit(1);                                                                                    \
    }                                                                                              \
  } while (0)

static void child_run(long nr, enum expect expect)
{
  CHILD_CHECK(refuse(nr) == 0);
  main_tid = gettid();
  ts_error err = { 0 };
  ts_stack *st = NULL;
  CHILD_CHECK(ts_stack_open_string("{ \"version\": 1, \"layers\": {"
                                   " \"f\": { \"type\": \"file\", \"path\": \"d.img\","
                                   " \"size\": \"8M\", \"create\": true, \"direct\": true,"
                                   " \"block_size\": 4096 },"
                                   " \"s\": { \"type\": \"spy\", \"child\": \"f\" } },"
                                   " \"exports\": [\"s\", \"f\"] }",
                                   dir, NULL, &st, &err) == 0);
  ts_dev *s = ts_stack_dev(st, "s");
  for (int i = 0; i < N; i++)
    CHILD_CHECK(ts_pwrite(s, wbuf + (size_t)i * BS, BS, (uint64_t)i * BS, 0) == 0);
  uv_loop_t loop;
  CHILD_CHECK(uv_loop_init(&loop) == 0);
  ts_aio_opts o = { .struct_size = sizeof o,
                    .mode = TS_AIO_MODE_LOOP,
                    .workers = 2,
                    .depth = DEPTH,
                    .loop = &loop };
  ts_aio_ctx *ctx = NULL;
  CHILD_CHECK(ts_aio_ctx_create(&o, &ctx, &err) == 0);
  for (int i = 0; i < N; i++) {
    treq_init(&rq[i], TS_OP_READ, (uint64_t)i * BS, rbuf + (size_t)i * BS, BS, count_cb);
    rq[i].req.io.iov = &(struct iovec){ rbuf + (size_t)i * BS, BS };
    rq[i].req.io.iovcnt = 1;
    int r;
    while ((r = ts_aio_submit(ctx, s, &rq[i].req)) == -EAGAIN)
      CHILD_CHECK(uv_run(&loop, UV_RUN_ONCE) >= 0);
    CHILD_CHECK(r == 0);
  }
  CHILD_CHECK(uv_run(&loop, UV_RUN_DEFAULT) == 0);
  CHILD_CHECK(total_calls == N);
  for (int i = 0; i < N; i++)
    CHILD_CHECK(rq[i].result == 0 && memcmp(rbuf + (size_t)i * BS, wbuf + (size_t)i * BS, BS) == 0);
  char *js = ts_dev_status_json(ts_stack_dev(st, "f"));
  json_t *l = json_object_get(json_loads(js, 0, NULL), "layer");
  const char *engine = json_string_value(json_object_get(l, "async_engine"));
  int64_t ring_ops = json_integer_value(json_object_get(l, "ring_ops"));
  int64_t sink_ops = json_integer_value(json_object_get(l, "ring_ops_sink"));
  fprintf(stderr, "engine \"%s\", ring_ops %lld, ring_ops_sink %lld, spy %d/%d/%d\n", engine,
          (long long)ring_ops, (long long)sink_ops, spy_started, spy_done_main, spy_done_other);
  if (expect == CTX_RING) {
    /* The loop watches the ring's own fd: no eventfd to register. */
    CHILD_CHECK(strcmp(engine, "io_uring") == 0 || strncmp(engine, "io_uring for reads", 18) == 0);
    CHILD_CHECK(ring_ops == N && sink_ops == N && spy_started == N && spy_done_main == N);
    CHILD_CHECK(reaper_threads() == 0);
  } else if (expect == FILE_RING) {
    CHILD_CHECK(sink_ops == 0);
    /* The file's ring and its reaper: completions off this thread. */
    CHILD_CHECK(strncmp(engine, "io_uring", 8) == 0);
    CHILD_CHECK(ring_ops == N && spy_started == N && spy_done_other == N && spy_done_main == 0);
    CHILD_CHECK(reaper_threads() == 1);
  } else {
    CHILD_CHECK(sink_ops == 0);
    CHILD_CHECK(strcmp(engine, "threads (io_uring_setup: Operation not permitted)") == 0);
    CHILD_CHECK(ring_ops == 0 && spy_started == 0);
  }
  CHILD_CHECK(ts_aio_ctx_close(ctx) == 0);
  CHILD_CHECK(uv_run(&loop, UV_RUN_DEFAULT) == 0 && uv_loop_close(&loop) == 0);
  CHILD_CHECK(ts_stack_close(st, &err) == 0);
  _exit(0);
}

static void refused(long nr, enum expect expect)
{
  if (no_ring)
    return; /* nothing to refuse */
  alloc_bufs(N);
  fflush(NULL);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0)
    child_run(nr, expect);
  int status;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed (status 0x%x)",
                status);
}

/* A loop watches the context's ring's own fd, so it needs no
 * io_uring_register; waking on the eventfd instead, the ring cannot signal
 * it, and the file's ring serves. */
START_TEST(register_refused_falls_back_to_the_file_ring)
{
  refused(SYS_io_uring_register, wake_eventfd ? FILE_RING : CTX_RING);
}
END_TEST

/* No ring at all: the workers, and the status says why. */
START_TEST(setup_refused_falls_back_to_the_workers) { refused(SYS_io_uring_setup, WORKERS); }
END_TEST

int main(void)
{
  Suite *s = suite_create("aio_sink");
  TCase *tc = tcase_create("sink");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, loop_reads_reaped_on_the_loop_thread);
  tcase_add_test(tc, loop_writes_reaped_on_the_loop_thread);
  tcase_add_test(tc, eventfd_reads_reaped_on_the_polling_thread);
  tcase_add_test(tc, eventfd_writes_reaped_on_the_polling_thread);
  tcase_add_test(tc, more_in_flight_than_the_ring_takes);
  tcase_add_test(tc, loop_close_with_requests_in_flight);
  tcase_add_test(tc, eventfd_close_with_requests_in_flight);
  tcase_add_test(tc, submitters_exit_before_the_poll);
  tcase_add_test(tc, register_refused_falls_back_to_the_file_ring);
  tcase_add_test(tc, setup_refused_falls_back_to_the_workers);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
