/* Block status of the largest thin volume: a hole of any length is one
 * extent, and ts_block_status_bounded walks a fragmented volume in bounded
 * steps that together cover it exactly. */
#include "testutil.h"

#include <stdlib.h>
#include <time.h>

#define BLK (64u << 10)
#define RUNS 10000u
/* 2^63 - 512: the largest size a thin volume takes. */
#define HUGE_SIZE 9223372036854775296ull

static double now(void)
{
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Data on a zero layer: provisioning maps blocks and stores nothing. */
static ts_stack *open_huge(const char *dir)
{
  return ts_test_open(dir, "{ \"version\": 1, \"layers\": {"
                           " \"meta\": { \"type\": \"memory\", \"size\": \"64M\" },"
                           " \"data\": { \"type\": \"zero\", \"size\": \"1T\" },"
                           " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
                           "   \"block_size\": \"64K\", \"commit_interval\": 0, \"create\": true },"
                           " \"v\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0,"
                           "   \"size\": 9223372036854775296, \"create\": true } },"
                           " \"exports\": [\"v\"] }");
}

START_TEST(huge_hole_is_one_extent)
{
  const char *dir = ts_test_dir;
  ts_stack *s = open_huge(dir);
  ts_dev *v = ts_stack_dev(s, "v");
  ck_assert_uint_eq(ts_dev_size(v), HUGE_SIZE);
  ck_assert_int_eq(ts_provision(v, HUGE_SIZE - 4 * BLK - 512, BLK), 0);
  double t0 = now();
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(v, 0, HUGE_SIZE, &l), 0);
  ck_assert_msg(now() - t0 < 1.0, "took %.2f s", now() - t0);
  ck_assert_uint_eq(l.n, 3);
  ck_assert_uint_eq(l.v[0].flags, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  ck_assert_uint_eq(l.v[0].length, (1ull << 63) - 5 * BLK); /* block-aligned start of the mapping */
  ck_assert_uint_eq(l.v[1].flags, TS_EXTENT_ZERO);
  ck_assert_uint_eq(l.v[2].offset + l.v[2].length, HUGE_SIZE);
  ts_extent_list_free(&l);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

START_TEST(bounded_steps_cover_a_fragmented_volume)
{
  const char *dir = ts_test_dir;
  ts_stack *s = open_huge(dir);
  ts_dev *v = ts_stack_dev(s, "v");
  /* Every other block: RUNS mapped runs with holes between. */
  for (uint64_t i = 0; i < RUNS; i++)
    ck_assert_int_eq(ts_provision(v, 2 * i * BLK, BLK), 0);
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(v, 0, HUGE_SIZE, &l), 0);
  ck_assert_uint_eq(l.n, 2 * RUNS); /* runs, holes between, the long tail */
  ts_extent_list_free(&l);

  uint64_t pos = 0, mapped = 0, calls = 0;
  size_t most = 0;
  double t0 = now();
  while (pos < HUGE_SIZE) {
    ts_extent_list_reset(&l);
    ck_assert_int_eq(ts_block_status_bounded(v, pos, HUGE_SIZE - pos, 0, &l), 0);
    ck_assert_uint_gt(l.n, 0);
    ck_assert_uint_eq(l.v[0].offset, pos);
    for (size_t i = 0; i < l.n; i++) {
      if (i)
        ck_assert_uint_eq(l.v[i].offset, l.v[i - 1].offset + l.v[i - 1].length);
      if (!(l.v[i].flags & TS_EXTENT_HOLE))
        mapped += l.v[i].length;
    }
    most = l.n > most ? l.n : most;
    pos = l.v[l.n - 1].offset + l.v[l.n - 1].length;
    calls++;
  }
  ts_extent_list_free(&l);
  ck_assert_uint_eq(pos, HUGE_SIZE);
  ck_assert_uint_eq(mapped, (uint64_t)RUNS * BLK);
  /* Bounded: no step returned much more than a batch. */
  ck_assert_msg(most <= TS_BLOCK_STATUS_BATCH, "a step returned %zu extents", most);
  ck_assert_uint_ge(calls, 2 * RUNS / TS_BLOCK_STATUS_BATCH);
  ck_assert_msg(now() - t0 < 5.0, "took %.2f s", now() - t0);

  /* A small bound is honoured too. */
  ts_extent_list_reset(&l);
  ck_assert_int_eq(ts_block_status_bounded(v, 0, HUGE_SIZE, 10, &l), 0);
  ck_assert_uint_eq(l.n, 10);
  ts_extent_list_free(&l);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("block_status");
  TCase *tc = tcase_create("huge");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, huge_hole_is_one_extent);
  tcase_add_test(tc, bounded_steps_cover_a_fragmented_volume);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
