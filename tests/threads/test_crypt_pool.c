/* The crypt layer's threads: large requests shared by its worker pool give
 * the ciphertext the inline path gives, and several client threads writing
 * and verifying their own ranges (small requests inline, large ones through
 * the pool) see every byte they wrote. Built for TSan as well (label
 * "threads"). */
#include "testutil.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static const char *const KEY512 =
  "\"key\": \"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
  "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f\"";

/* "d" (memory of `size`, or a file in `dir` when dir is not NULL) under "c"
 * (crypt with the extra members `crypt`). */
static ts_stack *open_stack(const char *dir, const char *size, const char *crypt, ts_dev **c,
                            ts_dev **d)
{
  char *child = dir ? ts_test_fmt("\"type\": \"file\", \"path\": \"disk.img\", \"size\": \"%s\", "
                                  "\"create\": true", size)
                    : ts_test_fmt("\"type\": \"memory\", \"size\": \"%s\"", size);
  char *json = ts_test_fmt("{ \"version\": 1, \"layers\": { \"d\": { %s },"
                           " \"c\": { \"type\": \"crypt\", \"child\": \"d\", %s } },"
                           " \"exports\": [\"c\"] }", child, crypt);
  ts_stack *s = ts_test_open(dir, json);
  free(json);
  free(child);
  *c = ts_stack_dev(s, "c");
  *d = ts_stack_node(s, "d");
  return s;
}

static void close_ok(ts_stack *s)
{
  ts_error err = { 0 };
  ck_assert_msg(ts_stack_close(s, &err) == 0, "close: %s", err.msg);
}

/* A large request takes the worker pool and gives exactly the ciphertext the
 * inline path gives. */
START_TEST(parallel_matches_inline)
{
  const size_t n = (4u << 20) + 8192; /* more than one bounce window */
  unsigned char *buf = malloc(n), *a = malloc(n), *b = malloc(n);
  ts_test_pattern(buf, n, 3);
  for (int threads = 1; threads <= 3; threads += 2) {
    char *extra = ts_test_fmt("%s, \"threads\": %d", KEY512, threads);
    ts_dev *c, *d;
    ts_stack *s = open_stack(NULL, "8M", extra, &c, &d);
    free(extra);
    ck_assert_int_eq(ts_pwrite(c, buf, n, 512, 0), 0);
    ck_assert_int_eq(ts_pread(d, threads == 1 ? a : b, n, 512), 0);
    unsigned char *back = malloc(n);
    ck_assert_int_eq(ts_pread(c, back, n, 512), 0);
    ck_assert(memcmp(back, buf, n) == 0);
    free(back);
    char *st = ts_dev_status_json(c);
    ck_assert_ptr_nonnull(st);
    bool parallel = strstr(st, "\"parallel_requests\": 0") == NULL;
    ck_assert_msg(parallel == (threads > 1), "threads %d: %s", threads, st);
    free(st);
    close_ok(s);
  }
  ck_assert(memcmp(a, b, n) == 0);
  free(buf);
  free(a);
  free(b);
}
END_TEST

struct worker_arg {
  ts_dev *dev;
  unsigned id;
  uint64_t base, span;
  int failures;
};

static void *hammer(void *p)
{
  struct worker_arg *a = p;
  const size_t max = 512 * 1024;
  unsigned char *w = malloc(max), *r = malloc(max);
  uint64_t x = a->id * 7919 + 1;
  for (int round = 0; round < 24; round++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    size_t len = (round % 3 == 0) ? max : (size_t)(((x >> 33) % 16) + 1) * 4096;
    uint64_t off = a->base + ((x >> 17) % ((a->span - len) / 4096 + 1)) * 4096;
    ts_test_pattern(w, len, x);
    if (ts_pwrite(a->dev, w, len, off, 0) != 0 || ts_pread(a->dev, r, len, off) != 0 ||
        memcmp(w, r, len) != 0)
      a->failures++;
  }
  free(w);
  free(r);
  return NULL;
}

START_TEST(concurrent_threads)
{
  const char *dir = ts_test_dir;
  char *extra = ts_test_fmt("%s, \"threads\": 3, \"sector_size\": 4096", KEY512);
  ts_dev *c, *d;
  ts_stack *s = open_stack(dir, "16M", extra, &c, &d);
  free(extra);
  enum { N = 4 };
  pthread_t t[N];
  struct worker_arg a[N];
  for (unsigned i = 0; i < N; i++) {
    a[i] = (struct worker_arg){ c, i, (uint64_t)i * (4 << 20), 4 << 20, 0 };
    ck_assert_int_eq(pthread_create(&t[i], NULL, hammer, &a[i]), 0);
  }
  for (unsigned i = 0; i < N; i++) {
    pthread_join(t[i], NULL);
    ck_assert_msg(a[i].failures == 0, "thread %u saw %d bad round trips", i, a[i].failures);
  }
  close_ok(s);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("crypt-threads");
  TCase *tc = tcase_create("pool");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_add_test(tc, parallel_matches_inline);
  tcase_add_test(tc, concurrent_threads);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
