/* The rbd layer on a real Ceph cluster (tests/ceph, $CEPH_CONF): every op,
 * requests the core refuses, block status at object granularity, RBD
 * snapshots through messages, the exclusive-open rule between stacks
 * of one process and between processes, and requests the async API starts
 * on librbd directly, completed from librbd's callbacks. */
#include "testutil.h"

#include <errno.h>
#include <jansson.h>
#include <libthinstack/async.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef TS_HAVE_RBD
#define MiB (1024u * 1024)

static char *image, *json;
static int counter;

static char *rbd_stack(const char *img, const char *extra)
{
  return ts_test_fmt("{ \"version\": 1, \"layers\": { \"d\": { \"type\": \"rbd\", \"pool\": \"rbd\", "
                     "\"image\": \"%s\", \"conf\": \"%s\"%s } }, \"exports\": [\"d\"] }",
                     img, getenv("CEPH_CONF"), extra ? extra : "");
}

static void setup(void)
{
  ts_test_dir_setup();
  image = ts_test_fmt("ts-test-%d-%d", (int)getpid(), counter++);
  json = rbd_stack(image, ", \"create\": true, \"size\": \"64M\"");
}

static void teardown(void)
{
  ts_test_run(NULL, "rbd snap purge rbd/%s; rbd rm rbd/%s", image, image);
  ts_test_dir_teardown();
  free(image);
  free(json);
}

static ts_extent_list map_of(ts_dev *d, uint64_t off, uint64_t len)
{
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(d, off, len, &l), 0);
  return l;
}

/* The flags of the extent that holds `off`. */
static uint32_t flags_at(ts_dev *d, uint64_t off)
{
  ts_extent_list l = map_of(d, off, 512);
  ck_assert_uint_ge(l.n, 1);
  uint32_t f = l.v[0].flags;
  ts_extent_list_free(&l);
  return f;
}

static bool all_zero(const unsigned char *b, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (b[i])
      return false;
  return true;
}

START_TEST(every_op)
{
  ts_stack *s = ts_test_open(ts_test_dir, json);
  ts_dev *d = ts_stack_dev(s, "d");
  const ts_limits *lim = ts_dev_limits(d);
  ck_assert_uint_eq(lim->size, 64 * MiB);
  ck_assert_uint_eq(lim->discard_granularity, 64 * 1024); /* rbd_discard_granularity_bytes */
  ck_assert_uint_eq(lim->provision_granularity, 4 * MiB);
  ck_assert(!lim->discard_zeroes);

  unsigned char *w = malloc(4 * MiB), *r = malloc(4 * MiB);
  ts_test_pattern(w, 4 * MiB, 1);
  ck_assert_int_eq(flags_at(d, 0), TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  ck_assert_int_eq(ts_pwrite(d, w, 4 * MiB, 4 * MiB, 0), 0);
  ck_assert_int_eq(ts_pwrite(d, w, 4096, 8 * MiB + 8192, TS_IO_FUA), 0);
  ck_assert_int_eq(ts_flush(d), 0);
  ck_assert_int_eq(ts_pread(d, r, 4 * MiB, 4 * MiB), 0);
  ck_assert_mem_eq(r, w, 4 * MiB);
  /* Scattered requests go through as one. */
  struct iovec iov[3] = { { r, 512 }, { r + 4096, 1024 }, { r + 8192, 2560 } };
  ck_assert_int_eq(ts_preadv(d, iov, 3, 4 * MiB), 0);
  ck_assert_mem_eq(r + 4096, w + 512, 1024);
  ck_assert_mem_eq(r + 8192, w + 1536, 2560);

  /* The core refuses what is misaligned or past the end: nothing reaches Ceph. */
  ck_assert_int_eq(ts_pwrite(d, w, 512, 100, 0), -EINVAL);
  ck_assert_int_eq(ts_pwrite(d, w, 100, 0, 0), -EINVAL);
  ck_assert_int_eq(ts_pread(d, r, 1024, 64 * MiB - 512), -EINVAL);
  ck_assert_int_eq(ts_discard(d, 64 * MiB, 512), -EINVAL);

  /* Object granularity: a 4K write makes the whole 4M object data. */
  ts_extent_list l = map_of(d, 0, 64 * MiB);
  ck_assert_uint_eq(l.n, 3);
  ck_assert_uint_eq(l.v[1].offset, 4 * MiB);
  ck_assert_uint_eq(l.v[1].length, 8 * MiB);
  ck_assert_int_eq(l.v[1].flags, 0);
  ts_extent_list_free(&l);

  /* WRITE_ZEROES without MAY_UNMAP stores zeroes: still data. */
  ck_assert_int_eq(ts_write_zeroes(d, 4 * MiB, 4 * MiB, 0), 0);
  ck_assert_int_eq(ts_pread(d, r, 4 * MiB, 4 * MiB), 0);
  ck_assert(all_zero(r, 4 * MiB));
  ck_assert_int_eq(flags_at(d, 4 * MiB), 0);
  /* With MAY_UNMAP a whole object goes. */
  ck_assert_int_eq(ts_write_zeroes(d, 4 * MiB, 4 * MiB, TS_IO_MAY_UNMAP), 0);
  ck_assert_int_eq(flags_at(d, 4 * MiB), TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  ck_assert_int_eq(ts_pread(d, r, 4 * MiB, 4 * MiB), 0);
  ck_assert(all_zero(r, 4 * MiB));
  /* No fallback needed: both kinds are native. */
  ck_assert_int_eq(ts_write_zeroes(d, 8 * MiB, 64 * 1024, TS_IO_NOFALLBACK), 0);

  /* DISCARD below the granularity is skipped by librbd, which is why the
   * limits say 64K and do not promise zeroes. */
  ck_assert_int_eq(ts_pwrite(d, w, 4 * MiB, 16 * MiB, 0), 0);
  ck_assert_int_eq(ts_discard(d, 16 * MiB + 8192, 4096), 0);
  ck_assert_int_eq(ts_pread(d, r, 4096, 16 * MiB + 8192), 0);
  ck_assert_mem_eq(r, w + 8192, 4096);
  ck_assert_int_eq(ts_discard(d, 16 * MiB + 65536, 65536), 0);
  ck_assert_int_eq(ts_pread(d, r, 65536, 16 * MiB + 65536), 0);
  ck_assert(all_zero(r, 65536));
  ck_assert_int_eq(ts_discard(d, 16 * MiB, 4 * MiB), 0);
  ck_assert_int_eq(flags_at(d, 16 * MiB), TS_EXTENT_HOLE | TS_EXTENT_ZERO);

  /* PROVISION zeroes objects, so it takes only MAY_ZERO requests. */
  ck_assert_int_eq(ts_provision(d, 24 * MiB, 8 * MiB), -EOPNOTSUPP);
  ck_assert_int_eq(flags_at(d, 24 * MiB), TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  ts_io io = { .op = TS_OP_PROVISION, .flags = TS_IO_MAY_ZERO, .offset = 24 * MiB,
               .length = 8 * MiB };
  ck_assert_int_eq(ts_submit(d, &io), 0);
  ck_assert_int_eq(flags_at(d, 24 * MiB), 0);
  ck_assert_int_eq(flags_at(d, 28 * MiB), 0);
  ck_assert_int_eq(ts_pread(d, r, 4 * MiB, 28 * MiB), 0);
  ck_assert(all_zero(r, 4 * MiB));
  char *out = NULL;
  ck_assert_int_eq(ts_test_run(&out, "rbd du rbd/%s", image), 0);
  /* 4..12M minus the unmapped 4M, plus the 8M provisioned */
  ck_assert_msg(strstr(out, "12 MiB"), "rbd du: %s", out);
  free(out);

  char *st = ts_dev_status_json(d);
  ck_assert_msg(strstr(st, "\"exclusive_lock\": true"), "%s", st);
  free(st);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(w);
  free(r);
}
END_TEST

START_TEST(snapshots_by_message)
{
  ts_stack *s = ts_test_open(ts_test_dir, json);
  ts_dev *d = ts_stack_dev(s, "d");
  unsigned char a[4096], b[4096], r[4096];
  memset(a, 'a', sizeof a);
  memset(b, 'b', sizeof b);
  ck_assert_int_eq(ts_pwrite(d, a, sizeof a, 0, 0), 0);
  ts_error err = { 0 };
  ck_assert_int_eq(ts_dev_message(d, "snap-create s1", &err), 0);
  ck_assert_int_eq(ts_pwrite(d, b, sizeof b, 0, 0), 0);
  ck_assert_int_eq(ts_dev_message(d, "snap-create s1", &err), -EEXIST);
  ck_assert_msg(strstr(err.msg, "s1") && strstr(err.msg, "rbd/"), "%s", err.msg);
  ck_assert_int_eq(ts_dev_message(d, "snap-frobnicate x", &err), -EINVAL);
  ck_assert_int_eq(ts_dev_message(d, "snap-create a@b", &err), -EINVAL);

  char *out = NULL;
  ck_assert_int_eq(ts_test_run(&out, "rbd snap ls rbd/%s", image), 0);
  ck_assert_msg(strstr(out, "s1"), "%s", out);
  free(out);

  /* The snapshot opens read-only beside the writer and holds the old data. */
  char *sj = rbd_stack(image, ", \"snapshot\": \"s1\"");
  ts_stack *ss = ts_test_open(ts_test_dir, sj);
  ts_dev *sd = ts_stack_dev(ss, "d");
  ck_assert(ts_dev_limits(sd)->read_only);
  ck_assert_int_eq(ts_pread(sd, r, sizeof r, 0), 0);
  ck_assert_mem_eq(r, a, sizeof a);
  ck_assert_int_eq(ts_pwrite(sd, b, sizeof b, 0, 0), -EROFS);
  ck_assert_int_eq(ts_pread(d, r, sizeof r, 0), 0);
  ck_assert_mem_eq(r, b, sizeof b);
  ts_stack_close(ss, NULL);

  ck_assert_int_eq(ts_dev_message(d, "snap-remove s1", &err), 0);
  ck_assert_int_eq(ts_test_try_open(ts_test_dir, sj, &ss, &err), -ENOENT);
  ck_assert_msg(strstr(err.msg, "snapshot"), "%s", err.msg);
  free(sj);
  ts_stack_close(s, NULL);
}
END_TEST

START_TEST(one_writer)
{
  ts_stack *s = ts_test_open(ts_test_dir, json), *t = NULL;
  ts_error err = { 0 };
  /* A second stack of this process: RBD's lock owner refuses to hand over. */
  ck_assert_int_eq(ts_test_try_open(ts_test_dir, json, &t, &err), -EBUSY);
  ck_assert_msg(strstr(err.msg, "is in use by") && strstr(err.msg, image), "%s", err.msg);
  /* Another process, as another host would be. */
  char *path = ts_test_path(ts_test_dir, "s.json");
  FILE *f = fopen(path, "w");
  fputs(json, f);
  fclose(f);
  char *out = NULL;
  ck_assert_int_ne(ts_test_run(&out, "%s/thinstack flush %s d", TS_TEST_BUILD_DIR, path), 0);
  ck_assert_msg(strstr(out, "in use by") && strstr(out, "EBUSY"), "%s", out);
  free(out);
  /* Readers take no lock. */
  ck_assert_int_eq(ts_test_run(&out, "%s/thinstack read %s d 0 4K > /dev/null", TS_TEST_BUILD_DIR,
                               path), 0);
  free(out);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  /* Closing releases the lock. */
  ck_assert_int_eq(ts_test_run(&out, "%s/thinstack flush %s d", TS_TEST_BUILD_DIR, path), 0);
  free(out);
  free(path);
}
END_TEST

START_TEST(errors_name_the_cluster)
{
  ts_stack *s = NULL;
  ts_error err = { 0 };
  char *j = ts_test_fmt("{ \"version\": 1, \"layers\": { \"d\": { \"type\": \"rbd\", \"pool\": "
                        "\"nopool\", \"image\": \"x\", \"conf\": \"%s\" } }, \"exports\": [\"d\"] }",
                        getenv("CEPH_CONF"));
  ck_assert_int_eq(ts_test_try_open(ts_test_dir, j, &s, &err), -ENOENT);
  ck_assert_msg(strstr(err.msg, "layers.d.pool") && strstr(err.msg, "nopool"), "%s", err.msg);
  free(j);
  j = rbd_stack("no-such-image", NULL);
  ck_assert_int_eq(ts_test_try_open(ts_test_dir, j, &s, &err), -ENOENT);
  ck_assert_msg(strstr(err.msg, "rbd/no-such-image"), "%s", err.msg);
  free(j);
  /* A size that disagrees with the image is refused. */
  ts_stack_close(ts_test_open(ts_test_dir, json), NULL);
  j = rbd_stack(image, ", \"size\": \"32M\"");
  ck_assert_int_eq(ts_test_try_open(ts_test_dir, j, &s, &err), -EINVAL);
  ck_assert_msg(strstr(err.msg, "layers.d.size"), "%s", err.msg);
  free(j);
}
END_TEST

/* Async requests and how many of them the layer started itself (the
 * device's async_submits counter). */
struct areq {
  ts_aio_req req; /* first */
  struct iovec iov[3];
  int calls, result;
};

static int acalls;

static void areq_cb(ts_aio_req *req)
{
  struct areq *a = (struct areq *)req;
  a->calls++;
  a->result = req->result;
  acalls++;
}

static void areq_submit(ts_aio_ctx *ctx, ts_dev *d, struct areq *a, uint32_t op, uint32_t flags,
                        uint64_t off, unsigned char *buf, size_t len, int pieces)
{
  memset(a, 0, sizeof *a);
  /* `pieces` iovec entries: the first two a sector each, the rest in the last. */
  for (int i = 0; i < pieces; i++) {
    size_t at = (size_t)i * 512, n = i == pieces - 1 ? len - at : 512;
    a->iov[i] = (struct iovec){ buf + at, n };
  }
  a->req.io = (ts_io){ .op = op,
                       .flags = flags,
                       .offset = off,
                       .length = buf ? len : 0,
                       .iov = buf ? a->iov : NULL,
                       .iovcnt = buf ? pieces : 0 };
  a->req.cb = areq_cb;
  ck_assert_int_eq(ts_aio_submit(ctx, d, &a->req), 0);
}

static void await_calls(ts_aio_ctx *ctx, int want)
{
  while (acalls < want) {
    struct pollfd p = { .fd = ts_aio_fd(ctx), .events = POLLIN };
    ck_assert_int_eq(poll(&p, 1, 60000), 1);
    ck_assert_int_ge(ts_aio_poll(ctx), 0);
  }
  ck_assert_int_eq(acalls, want);
}

static int64_t async_submits(ts_dev *d)
{
  char *st = ts_dev_status_json(d);
  json_t *o = json_loads(st, 0, NULL);
  ck_assert_msg(o, "%s", st);
  int64_t n = json_integer_value(json_object_get(o, "async_submits"));
  json_decref(o);
  free(st);
  return n;
}

START_TEST(async_from_callbacks)
{
  enum { N = 12 };
  ts_stack *s = ts_test_open(ts_test_dir, json);
  ts_dev *d = ts_stack_dev(s, "d");
  ts_aio_opts o = { .struct_size = sizeof o, .mode = TS_AIO_MODE_EVENTFD, .workers = 4 };
  ts_aio_ctx *ctx = NULL;
  ts_error err = { 0 };
  ck_assert_int_eq(ts_aio_ctx_create(&o, &ctx, &err), 0);
  unsigned char *w = malloc(N * MiB), *r = calloc(1, N * MiB);
  ts_test_pattern(w, N * MiB, 7);
  static struct areq wq[N], rq[N], fl, fua;
  acalls = 0;
  /* 1 MiB writes, all in flight at once; every third scattered over three
   * iovec entries, which librbd takes as they are. */
  for (int i = 0; i < N; i++)
    areq_submit(ctx, d, &wq[i], TS_OP_WRITE, 0, (uint64_t)i * MiB, w + (size_t)i * MiB, MiB,
                i % 3 ? 1 : 3);
  await_calls(ctx, N);
  ck_assert_int_eq(async_submits(d), N);
  /* librbd has no FUA: the core takes that write to its workers (write,
   * then FLUSH) rather than to the hook. */
  areq_submit(ctx, d, &fua, TS_OP_WRITE, TS_IO_FUA, 20 * MiB, w, 4096, 1);
  await_calls(ctx, N + 1);
  ck_assert_int_eq(async_submits(d), N);
  areq_submit(ctx, d, &fl, TS_OP_FLUSH, 0, 0, NULL, 0, 0);
  await_calls(ctx, N + 2);
  ck_assert_int_eq(async_submits(d), N + 1);
  for (int i = 0; i < N; i++)
    areq_submit(ctx, d, &rq[i], TS_OP_READ, 0, (uint64_t)i * MiB, r + (size_t)i * MiB, MiB,
                i % 3 == 1 ? 3 : 1);
  await_calls(ctx, 2 * N + 2);
  ck_assert_int_eq(async_submits(d), 2 * N + 1);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(wq[i].calls, 1);
    ck_assert_int_eq(wq[i].result, 0);
    ck_assert_int_eq(rq[i].calls, 1);
    ck_assert_int_eq(rq[i].result, 0);
  }
  ck_assert_int_eq(fl.calls, 1);
  ck_assert_int_eq(fl.result, 0);
  ck_assert_int_eq(fua.calls, 1);
  ck_assert_int_eq(fua.result, 0);
  ck_assert_mem_eq(r, w, N * MiB);
  ck_assert_int_eq(ts_pread(d, r, 4096, 20 * MiB), 0);
  ck_assert_mem_eq(r, w, 4096);

  /* Requests still in flight when the context closes complete first. */
  for (int i = 0; i < N; i++)
    areq_submit(ctx, d, &rq[i], TS_OP_READ, 0, (uint64_t)i * MiB, r + (size_t)i * MiB, MiB, 1);
  ck_assert_int_eq(ts_aio_ctx_close(ctx), 0);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(rq[i].calls, 1);
    ck_assert_int_eq(rq[i].result, 0);
  }
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(w);
  free(r);
}
END_TEST

int main(void)
{
  const char *conf = getenv("CEPH_CONF");
  ts_test_require(conf && access(conf, R_OK) == 0,
                  "needs a Ceph cluster: $CEPH_CONF (tests/ceph/start-ceph.sh)");
  Suite *s = suite_create("rbd");
  TCase *tc = tcase_create("rbd");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, every_op);
  tcase_add_test(tc, snapshots_by_message);
  tcase_add_test(tc, one_writer);
  tcase_add_test(tc, errors_name_the_cluster);
  tcase_add_test(tc, async_from_callbacks);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
#else
int main(void)
{
  ts_test_require(false, "built without librbd (apt-get install librbd-dev librados-dev)");
  return 77;
}
#endif
