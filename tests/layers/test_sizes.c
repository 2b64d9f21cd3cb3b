/* Sizes the formats cannot address are refused with the JSON path, and a
 * huge memory layer costs memory only for what is written. */
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

/* Open must fail with `code` and a message holding `path`. */
static void refused(const char *json, int code, const char *path)
{
  ts_stack *s = NULL;
  ts_error e = { 0 };
  int r = ts_test_try_open(ts_test_dir, json, &s, &e);
  ck_assert_msg(r == code, "expected %s, got %s: %s", ts_err_name(code), ts_err_name(r), e.msg);
  ck_assert_ptr_null(s);
  ck_assert_msg(strstr(e.msg, path), "message does not name %s: %s", path, e.msg);
}

static long max_rss_kib(void)
{
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

static double now(void)
{
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

START_TEST(parse_refuses_past_2_63)
{
  uint64_t v = 0;
  ck_assert_int_eq(ts_parse_size("8191P", &v), 0);
  ck_assert_uint_eq(v, 8191ull << 50);
  ck_assert_int_eq(ts_parse_size("9223372036854775807", &v), 0);
  ck_assert_int_eq(ts_parse_size("9223372036854775808", &v), -ERANGE);
  ck_assert_int_eq(ts_parse_size("8192P", &v), -ERANGE);
  ck_assert_int_eq(ts_parse_size("16383P", &v), -ERANGE);
  ck_assert_int_eq(ts_parse_size("99999999999999999999", &v), -ERANGE);
  ck_assert_int_eq(ts_parse_size("12Q", &v), -EINVAL);
}
END_TEST

START_TEST(schema_refuses_huge_sizes)
{
  refused("{ \"version\": 1, \"layers\": { \"m\": { \"type\": \"memory\", \"size\": \"16383P\" } },"
          " \"exports\": [\"m\"] }",
          -ERANGE, "layers.m.size");
  /* dm-thin keys are 64-bit block numbers, but the kernel sizes a block
   * device in loff_t bytes: 2^64 - 512 is beyond any device. */
  refused("{ \"version\": 1, \"layers\": {"
          " \"meta\": { \"type\": \"memory\", \"size\": \"16M\" },"
          " \"data\": { \"type\": \"memory\", \"size\": \"1G\" },"
          " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
          "   \"block_size\": \"64K\", \"create\": true },"
          " \"v\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0,"
          "   \"size\": \"18446744073709551104\", \"create\": true } },"
          " \"exports\": [\"v\"] }",
          -ERANGE, "layers.v.size");
}
END_TEST

START_TEST(linear_sum_cannot_wrap)
{
  /* Each segment is addressable, their sum (10000P) is not. */
  refused("{ \"version\": 1, \"layers\": {"
          " \"a\": { \"type\": \"memory\", \"size\": \"5000P\" },"
          " \"b\": { \"type\": \"memory\", \"size\": \"5000P\" },"
          " \"lin\": { \"type\": \"linear\", \"segments\": [ { \"child\": \"a\" }, { \"child\": \"b\" } ] } },"
          " \"exports\": [\"lin\"] }",
          -ERANGE, "layers.lin.segments[1]");
  /* Up to the limit they add up exactly. */
  ts_stack *s = ts_test_open(
      ts_test_dir, "{ \"version\": 1, \"layers\": {"
                   " \"a\": { \"type\": \"memory\", \"size\": \"4096P\" },"
                   " \"b\": { \"type\": \"memory\", \"size\": \"4095P\" },"
                   " \"lin\": { \"type\": \"linear\", \"segments\": [ { \"child\": \"a\" },"
                   "   { \"child\": \"b\" } ] } },"
                   " \"exports\": [\"lin\"] }");
  ck_assert_uint_eq(ts_dev_size(ts_stack_dev(s, "lin")), 8191ull << 50);
  ts_stack_close(s, NULL);
}
END_TEST

START_TEST(memory_index_grows_with_writes)
{
  long rss0 = max_rss_kib();
  double t0 = now();
  ts_stack *s =
      ts_test_open(ts_test_dir, "{ \"version\": 1, \"layers\": { \"m\": { \"type\": \"memory\","
                                " \"size\": \"111T\" } }, \"exports\": [\"m\"] }");
  ts_dev *d = ts_stack_dev(s, "m");
  uint64_t size = ts_dev_size(d);
  ck_assert_uint_eq(size, 111ull << 40);
  char buf[4096], back[4096];
  /* Far apart, so each write needs its own path of index nodes. */
  const uint64_t offs[] = { 0, 1ull << 30, 77ull << 40, size - 4096 };
  for (size_t i = 0; i < 4; i++) {
    ts_test_pattern(buf, sizeof buf, i + 1);
    ck_assert_int_eq(ts_pwrite(d, buf, sizeof buf, offs[i], 0), 0);
  }
  for (size_t i = 0; i < 4; i++) {
    ts_test_pattern(buf, sizeof buf, i + 1);
    ck_assert_int_eq(ts_pread(d, back, sizeof back, offs[i]), 0);
    ck_assert_mem_eq(back, buf, sizeof buf);
  }
  /* Never written: zeroes. */
  ck_assert_int_eq(ts_pread(d, back, sizeof back, 50ull << 40), 0);
  for (size_t i = 0; i < sizeof back; i++)
    ck_assert_int_eq(back[i], 0);
  /* The whole device in a handful of extents: holes skip unwritten index. */
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(d, 0, size, &l), 0);
  ck_assert_uint_eq(l.n, 7);
  ck_assert_uint_eq(l.v[0].flags, 0);
  ck_assert_uint_eq(l.v[0].length, 64 << 10);
  ck_assert_uint_eq(l.v[1].flags, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  ck_assert_uint_eq(l.v[3].offset, 1ull << 30 | 64 << 10);
  ck_assert_uint_eq(l.v[5].offset + l.v[5].length, size - (64 << 10));
  ck_assert_uint_eq(l.v[6].flags, 0);
  ts_extent_list_free(&l);
  /* Discarding the chunks frees them. */
  ck_assert_int_eq(ts_discard(d, 0, size), 0);
  ck_assert_int_eq(ts_block_status(d, 0, size, &l), 0);
  ck_assert_uint_eq(l.n, 1);
  ck_assert_uint_eq(l.v[0].flags, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  ts_extent_list_free(&l);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  /* A flat index of 111T / 64K pointers would be 14 GiB; allow 64 MiB. */
  long grown = max_rss_kib() - rss0;
  ck_assert_msg(grown < 64 * 1024, "RSS grew by %ld KiB", grown);
  ck_assert_msg(now() - t0 < 5.0, "took %.1f s", now() - t0);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("sizes");
  TCase *tc = tcase_create("sizes");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_add_test(tc, parse_refuses_past_2_63);
  tcase_add_test(tc, schema_refuses_huge_sizes);
  tcase_add_test(tc, linear_sum_cannot_wrap);
  tcase_add_test(tc, memory_index_grows_with_writes);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
