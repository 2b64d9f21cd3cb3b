/* Concurrency through the core: several threads drive the synchronous API on
 * the same stack at once (parallel layers and a serialised one), and every
 * byte they wrote reads back. Built for TSan as well (label "threads"). */
#include "testutil.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { THREADS = 4, ROUNDS = 200, BLOCK = 4096 };

struct worker {
  ts_dev *dev;
  int id;
  int failures;
};

/* Each thread owns the blocks whose index % THREADS == id. */
static void *run(void *arg)
{
  struct worker *w = arg;
  char buf[BLOCK], back[BLOCK];
  uint64_t nblocks = ts_dev_size(w->dev) / BLOCK;
  for (int i = 0; i < ROUNDS; i++) {
    uint64_t b = ((uint64_t)i * 7919 % (nblocks / THREADS)) * THREADS + (uint64_t)w->id;
    ts_test_pattern(buf, sizeof buf, b * 1000 + (uint64_t)i);
    int op = i % 5;
    if (op == 3) {
      if (ts_write_zeroes(w->dev, b * BLOCK, BLOCK, 0)) w->failures++;
      memset(buf, 0, sizeof buf);
    } else if (ts_pwrite(w->dev, buf, BLOCK, b * BLOCK, op == 4 ? TS_IO_FUA : 0)) {
      w->failures++;
    }
    if (ts_pread(w->dev, back, BLOCK, b * BLOCK) || memcmp(buf, back, BLOCK))
      w->failures++;
    if (i % 50 == 0 && ts_flush(w->dev))
      w->failures++;
    ts_extent_list l = { 0 };
    if (ts_block_status(w->dev, b * BLOCK, BLOCK, &l) || l.n != 1)
      w->failures++;
    ts_extent_list_free(&l);
  }
  return NULL;
}

static void hammer(const char *json, const char *devname)
{
  const char *dir = ts_test_dir;
  ts_stack *s = ts_test_open(dir, json);
  ts_dev *d = ts_stack_node(s, devname);
  pthread_t t[THREADS];
  struct worker w[THREADS];
  for (int i = 0; i < THREADS; i++) {
    w[i] = (struct worker){ d, i, 0 };
    ck_assert_int_eq(pthread_create(&t[i], NULL, run, &w[i]), 0);
  }
  for (int i = 0; i < THREADS; i++) {
    pthread_join(t[i], NULL);
    ck_assert_int_eq(w[i].failures, 0);
  }
  ck_assert_int_eq(ts_test_op_errors(d, NULL), 0);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}

START_TEST(linear_over_files)
{
  hammer("{ \"version\": 1, \"layers\": {"
         "\"a\": { \"type\": \"file\", \"path\": \"a.img\", \"size\": \"2M\", \"create\": true },"
         "\"b\": { \"type\": \"file\", \"path\": \"b.img\", \"size\": \"2M\", \"create\": true },"
         "\"f\": { \"type\": \"fault\", \"child\": \"b\", \"limits\": { \"max_io_bytes\": \"1K\" } },"
         "\"d\": { \"type\": \"linear\", \"segments\": [ { \"child\": \"a\" }, { \"child\": \"f\" } ] } } }",
         "d");
}
END_TEST

START_TEST(serialised_memory)
{
  hammer("{ \"version\": 1, \"layers\": { \"m\": { \"type\": \"memory\", \"size\": \"4M\" } } }", "m");
}
END_TEST

int main(void)
{
  Suite *s = suite_create("concurrent");
  TCase *tc = tcase_create("threads");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, linear_over_files);
  tcase_add_test(tc, serialised_memory);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
