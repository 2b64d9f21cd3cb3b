/* The limits algebra (ts_limits_stack) and capability derivation. */
#include "testutil.h"

#include <string.h>

static ts_limits base(void)
{
  ts_limits l;
  memset(&l, 0, sizeof l);
  l.logical_block_size = 512;
  l.physical_block_size = 512;
  l.io_min = 512;
  return l;
}

START_TEST(stack_rules)
{
  ts_limits t = base(), b = base();
  t.size = 100;
  t.logical_block_size = 512;
  b.logical_block_size = 4096;
  t.max_io_bytes = 0;          /* no limit */
  b.max_io_bytes = 1 << 20;
  t.max_discard_bytes = UINT64_MAX;
  b.max_discard_bytes = 0;     /* unsupported below */
  t.max_provision_bytes = 1 << 30;
  b.max_provision_bytes = 1 << 20;
  t.provision_granularity = 4096;
  b.provision_granularity = 65536 * 3;
  t.io_opt = 0;
  b.io_opt = 8192;
  t.fua = true;
  b.fua = false;
  t.read_only = false;
  b.read_only = true;
  ts_limits_stack(&t, &b);
  ck_assert_uint_eq(t.size, 100);                 /* kept */
  ck_assert_uint_eq(t.logical_block_size, 4096);  /* max */
  ck_assert_uint_eq(t.max_io_bytes, 1 << 20);     /* min-not-zero */
  ck_assert_uint_eq(t.max_discard_bytes, 0);      /* plain min: one child turns it off */
  ck_assert_uint_eq(t.max_provision_bytes, 1 << 20);
  ck_assert_uint_eq(t.provision_granularity, 4096 * 48); /* lcm(4096, 196608) */
  ck_assert_uint_eq(t.io_opt, 8192);              /* lcm with "none" */
  ck_assert(!t.fua);                              /* and */
  ck_assert(t.read_only);                         /* or */
}
END_TEST

START_TEST(caps)
{
  ts_limits l = base();
  ck_assert_int_eq(ts_limits_cap(&l, TS_OP_READ), TS_CAP_NATIVE);
  ck_assert_int_eq(ts_limits_cap(&l, TS_OP_DISCARD), TS_CAP_NONE);
  ck_assert_int_eq(ts_limits_cap(&l, TS_OP_WRITE_ZEROES), TS_CAP_EMULATE);
  ck_assert_int_eq(ts_limits_cap(&l, TS_OP_PROVISION), TS_CAP_NONE);
  ck_assert_int_eq(ts_limits_cap(&l, TS_OP_COUNT), TS_CAP_EMULATE);
  l.max_write_zeroes_bytes = 1;
  l.max_provision_bytes = 1;
  l.fua = true;
  ck_assert_int_eq(ts_limits_cap(&l, TS_OP_WRITE_ZEROES), TS_CAP_NATIVE);
  ck_assert_int_eq(ts_limits_cap(&l, TS_OP_PROVISION), TS_CAP_NATIVE);
  ck_assert_int_eq(ts_limits_cap(&l, TS_OP_COUNT), TS_CAP_NATIVE);
  l.read_only = true;
  ck_assert_int_eq(ts_limits_cap(&l, TS_OP_WRITE), TS_CAP_NONE);
  ck_assert_int_eq(ts_limits_cap(&l, TS_OP_PROVISION), TS_CAP_NONE);
}
END_TEST

START_TEST(sizes)
{
  uint64_t v;
  ck_assert_int_eq(ts_parse_size("64K", &v), 0);
  ck_assert_uint_eq(v, 65536);
  ck_assert_int_eq(ts_parse_size("1GiB", &v), 0);
  ck_assert_uint_eq(v, 1ull << 30);
  ck_assert_int_eq(ts_parse_size("512", &v), 0);
  ck_assert_uint_eq(v, 512);
  ck_assert_int_eq(ts_parse_size("2t", &v), 0);
  ck_assert_uint_eq(v, 2ull << 40);
  ck_assert_int_eq(ts_parse_size("", &v), -EINVAL);
  ck_assert_int_eq(ts_parse_size("12Q", &v), -EINVAL);
  ck_assert_int_eq(ts_parse_size("-1", &v), -EINVAL);
  ck_assert_int_eq(ts_parse_size("99999999999999999999", &v), -ERANGE);
  ck_assert_int_eq(ts_parse_size("20000000T", &v), -ERANGE);
  char buf[32];
  ts_format_size(65536, buf, sizeof buf);
  ck_assert_str_eq(buf, "64K");
  ts_format_size(1000, buf, sizeof buf);
  ck_assert_str_eq(buf, "1000");
  ts_format_size(3ull << 30, buf, sizeof buf);
  ck_assert_str_eq(buf, "3G");
}
END_TEST

START_TEST(extents_merge)
{
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_extent_list_add(&l, 0, 10, 0), 0);
  ck_assert_int_eq(ts_extent_list_add(&l, 10, 5, 0), 0);
  ck_assert_int_eq(ts_extent_list_add(&l, 15, 5, TS_EXTENT_ZERO), 0);
  ck_assert_int_eq(ts_extent_list_add(&l, 20, 0, 0), 0);
  ck_assert_uint_eq(l.n, 2);
  ck_assert_uint_eq(l.v[0].length, 15);
  ck_assert_uint_eq(l.v[1].offset, 15);
  ts_extent_list_free(&l);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("limits");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, stack_rules);
  tcase_add_test(tc, caps);
  tcase_add_test(tc, sizes);
  tcase_add_test(tc, extents_merge);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
