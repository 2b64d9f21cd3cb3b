/* linear and fault layers, and the core's splitting and emulation seen
 * through them: data lands in the right child, limits stack, injected
 * errors reach the caller unchanged. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

/* Counts of requests a fault layer saw, from its status. */
static long long matched(ts_dev *f, int rule)
{
  char *st = ts_dev_status_json(f);
  json_t *j = json_loads(st, 0, NULL);
  free(st);
  long long v = json_integer_value(
      json_object_get(json_array_get(json_object_get(json_object_get(j, "layer"), "rules"), (size_t)rule),
                      "matched"));
  json_decref(j);
  return v;
}

#define TWO_FILES                                                                             \
  "\"a\": { \"type\": \"file\", \"path\": \"a.img\", \"size\": \"8M\", \"create\": true },"   \
  "\"b\": { \"type\": \"file\", \"path\": \"b.img\", \"size\": \"8M\", \"create\": true },"

START_TEST(linear_spans_children)
{
  ts_stack *s = ts_test_open(
      ts_test_dir,
      "{ \"version\": 1, \"layers\": {" TWO_FILES
      "\"d\": { \"type\": \"linear\", \"segments\": [ { \"child\": \"a\", \"offset\": \"1M\", \"length\": \"4M\" },"
      "                                           { \"child\": \"b\" } ] } }, \"exports\": [\"d\"] }");
  ts_dev *d = ts_stack_dev(s, "d"), *a = ts_stack_node(s, "a"), *b = ts_stack_node(s, "b");
  ck_assert_uint_eq(ts_dev_size(d), 12 << 20);
  /* 64K across the segment edge at 4M. */
  char buf[65536], back[32768];
  ts_test_pattern(buf, sizeof buf, 11);
  ck_assert_int_eq(ts_pwrite(d, buf, sizeof buf, (4 << 20) - 32768, 0), 0);
  ck_assert_int_eq(ts_pread(a, back, 32768, (5 << 20) - 32768), 0);
  ck_assert_mem_eq(back, buf, 32768);
  ck_assert_int_eq(ts_pread(b, back, 32768, 0), 0);
  ck_assert_mem_eq(back, buf + 32768, 32768);

  /* Provision across the edge reaches both files. */
  char *pa = ts_test_path(ts_test_dir, "a.img"), *pb = ts_test_path(ts_test_dir, "b.img");
  ck_assert_int_eq(ts_provision(d, 2 << 20, 4 << 20), 0);
  ck_assert_uint_ge(ts_test_allocated(pa), 2 << 20);
  ck_assert_uint_ge(ts_test_allocated(pb), 2 << 20);
  ts_extent_list e = { 0 };
  ck_assert_int_eq(ts_block_status(d, 0, 12 << 20, &e), 0);
  uint64_t covered = 0;
  for (size_t i = 0; i < e.n; i++) {
    ck_assert_uint_eq(e.v[i].offset, covered);
    covered += e.v[i].length;
  }
  ck_assert_uint_eq(covered, 12 << 20);
  ts_extent_list_free(&e);
  /* Discard across the edge gives it back. */
  ck_assert_int_eq(ts_discard(d, 0, 12 << 20), 0);
  ck_assert_uint_lt(ts_test_allocated(pb), 64 << 10);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(pa);
  free(pb);
}
END_TEST

START_TEST(linear_limits_stack)
{
  /* One child without PROVISION turns it off for the whole linear device. */
  ts_stack *s = ts_test_open(
      ts_test_dir,
      "{ \"version\": 1, \"layers\": {" TWO_FILES
      "\"nb\": { \"type\": \"fault\", \"child\": \"b\", \"limits\": { \"max_provision_bytes\": 0, \"max_io_bytes\": \"128K\" } },"
      "\"d\": { \"type\": \"linear\", \"segments\": [ { \"child\": \"a\" }, { \"child\": \"nb\" } ] } } }");
  ts_dev *d = ts_stack_node(s, "d");
  const ts_limits *l = ts_dev_limits(d);
  ck_assert_uint_eq(l->max_provision_bytes, 0);
  ck_assert_uint_eq(l->max_io_bytes, 128 << 10);
  ck_assert_int_eq(ts_provision(d, 0, 4096), -EOPNOTSUPP);
  ck_assert_uint_gt(l->max_discard_bytes, 0);
  char *j = ts_dev_limits_json(d);
  ck_assert_ptr_nonnull(strstr(j, "\"provision\": \"none\""));
  free(j);
  ts_stack_close(s, NULL);
}
END_TEST

START_TEST(fault_eio_through_linear)
{
  ts_stack *s = ts_test_open(
      ts_test_dir,
      "{ \"version\": 1, \"layers\": {" TWO_FILES
      "\"fb\": { \"type\": \"fault\", \"child\": \"b\", \"rules\": ["
      "   { \"op\": \"write\", \"errno\": \"EIO\", \"offset\": \"1M\", \"length\": \"64K\" },"
      "   { \"op\": \"provision\", \"errno\": \"ENOSPC\", \"after\": 1, \"count\": 1 } ] },"
      "\"d\": { \"type\": \"linear\", \"segments\": [ { \"child\": \"a\" }, { \"child\": \"fb\" } ] } } }");
  ts_dev *d = ts_stack_node(s, "d");
  char buf[4096] = { 1 };
  /* Outside the rule's range: fine. Inside: EIO, unchanged, through linear. */
  ck_assert_int_eq(ts_pwrite(d, buf, 4096, (8 << 20), 0), 0);
  ck_assert_int_eq(ts_pwrite(d, buf, 4096, (9 << 20) + 4096, 0), -EIO);
  ck_assert_int_eq(ts_pwrite(d, buf, 4096, 4096, 0), 0);
  /* after/count: the first provision passes, the second fails, then fine. */
  ck_assert_int_eq(ts_provision(d, 8 << 20, 4096), 0);
  ck_assert_int_eq(ts_provision(d, 8 << 20, 4096), -ENOSPC);
  ck_assert_int_eq(ts_provision(d, 8 << 20, 4096), 0);
  /* One failed write and one failed provision, each counted on its own op. */
  ck_assert_int_eq(ts_test_op_errors(d, "write"), 1);
  ck_assert_int_eq(ts_test_op_errors(d, "provision"), 1);
  ck_assert_int_eq(ts_test_op_errors(d, NULL), 2);
  ts_stack_close(s, NULL);
}
END_TEST

START_TEST(fault_drop_loses_writes)
{
  ts_stack *s = ts_test_open(
      ts_test_dir,
      "{ \"version\": 1, \"layers\": {" TWO_FILES
      "\"f\": { \"type\": \"fault\", \"child\": \"a\", \"rules\": [ { \"op\": \"all\", \"action\": \"drop\", \"after\": 2 } ] } } }");
  ts_dev *f = ts_stack_node(s, "f"), *a = ts_stack_node(s, "a");
  char w[512], r[512];
  for (int i = 0; i < 4; i++) {
    memset(w, 'A' + i, sizeof w);
    ck_assert_int_eq(ts_pwrite(f, w, 512, (uint64_t)i * 512, 0), 0);
  }
  /* Only the first two writes persisted; reads still pass through. */
  for (int i = 0; i < 4; i++) {
    ck_assert_int_eq(ts_pread(f, r, 512, (uint64_t)i * 512), 0);
    ck_assert_int_eq(r[0], i < 2 ? 'A' + i : 0);
    ck_assert_int_eq(ts_pread(a, r, 512, (uint64_t)i * 512), 0);
    ck_assert_int_eq(r[0], i < 2 ? 'A' + i : 0);
  }
  ck_assert_int_eq(matched(f, 0), 4);
  ts_stack_close(s, NULL);
}
END_TEST

START_TEST(core_splits_and_emulates)
{
  ts_stack *s = ts_test_open(
      ts_test_dir,
      "{ \"version\": 1, \"layers\": {"
      "\"m\": { \"type\": \"memory\", \"size\": \"4M\" },"
      "\"f\": { \"type\": \"fault\", \"child\": \"m\", \"rules\": ["
      "   { \"op\": \"write\", \"action\": \"error\", \"after\": 1000000 },"
      "   { \"op\": \"flush\", \"action\": \"error\", \"after\": 1000000 },"
      "   { \"op\": \"provision\", \"action\": \"error\", \"after\": 1000000 } ],"
      "  \"limits\": { \"max_io_bytes\": \"16K\", \"max_write_zeroes_bytes\": 0, \"fua\": false,"
      "              \"max_provision_bytes\": \"192K\", \"provision_granularity\": \"64K\" } } } }");
  ts_dev *f = ts_stack_node(s, "f");
  char *buf = malloc(1 << 20), *back = malloc(1 << 20);
  ts_test_pattern(buf, 1 << 20, 21);
  /* 1M write in 16K pieces, through a 3-piece iovec with odd boundaries. */
  struct iovec v[3] = { { buf, 1000 * 512 }, { buf + 1000 * 512, 24 * 512 }, { buf + 1024 * 512, 1024 * 512 } };
  ck_assert_int_eq(ts_pwritev(f, v, 3, 0, 0), 0);
  ck_assert_int_eq(matched(f, 0), 64);
  ck_assert_int_eq(ts_pread(f, back, 1 << 20, 0), 0);
  ck_assert_mem_eq(buf, back, 1 << 20);
  /* No native write-zeroes: the core writes zero buffers (16K each), unless NOFALLBACK. */
  ck_assert_int_eq(ts_write_zeroes(f, 0, 64 << 10, TS_IO_NOFALLBACK), -EOPNOTSUPP);
  ck_assert_int_eq(ts_write_zeroes(f, 0, 64 << 10, 0), 0);
  ck_assert_int_eq(matched(f, 0), 68);
  ck_assert_int_eq(ts_pread(f, back, 64 << 10, 0), 0);
  memset(buf, 0, 64 << 10);
  ck_assert_mem_eq(buf, back, 64 << 10);
  /* No native FUA: a FUA write becomes the write and one flush. */
  long long flushes = matched(f, 1);
  ck_assert_int_eq(ts_pwrite(f, buf, 4096, 0, TS_IO_FUA), 0);
  ck_assert_int_eq(matched(f, 1), flushes + 1);
  /* 512K provision from 32K: pieces of at most 192K that end on 64K edges. */
  ck_assert_int_eq(ts_provision(f, 32 << 10, 512 << 10), 0);
  ck_assert_int_eq(matched(f, 2), 3); /* 32K-192K, 192K-384K, 384K-544K */
  free(buf);
  free(back);
  ts_stack_close(s, NULL);
}
END_TEST

START_TEST(zero_and_error_layers)
{
  ts_stack *s = ts_test_open(
      ts_test_dir,
      "{ \"version\": 1, \"layers\": {"
      "\"z\": { \"type\": \"zero\", \"size\": \"1T\" }, \"e\": { \"type\": \"error\", \"size\": \"1M\" } } }");
  ts_dev *z = ts_stack_node(s, "z"), *e = ts_stack_node(s, "e");
  char buf[4096];
  memset(buf, 7, sizeof buf);
  ck_assert_int_eq(ts_pwrite(z, buf, sizeof buf, 1ull << 39, 0), 0);
  ck_assert_int_eq(ts_pread(z, buf, sizeof buf, 1ull << 39), 0);
  ck_assert_int_eq(buf[0] | buf[4095], 0);
  ck_assert_int_eq(ts_pread(e, buf, sizeof buf, 0), -EIO);
  ck_assert_int_eq(ts_provision(e, 0, 4096), -EIO);
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(z, 0, 1ull << 40, &l), 0);
  ck_assert_uint_eq(l.n, 1);
  ck_assert_uint_eq(l.v[0].flags, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  ts_extent_list_free(&l);
  /* The error layer fails its flush too, so closing reports it. */
  ts_error err = { 0 };
  ck_assert_int_eq(ts_stack_close(s, &err), -EIO);
  ck_assert_ptr_nonnull(strstr(err.msg, "layers.e: flush on close failed"));
}
END_TEST

int main(void)
{
  Suite *s = suite_create("linear_fault");
  TCase *tc = tcase_create("layers");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_add_test(tc, linear_spans_children);
  tcase_add_test(tc, linear_limits_stack);
  tcase_add_test(tc, fault_eio_through_linear);
  tcase_add_test(tc, fault_drop_loses_writes);
  tcase_add_test(tc, core_splits_and_emulates);
  tcase_add_test(tc, zero_and_error_layers);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
