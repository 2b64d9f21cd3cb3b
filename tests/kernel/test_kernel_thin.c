/* PROVISION through a thin pool whose data layer is a kernel layer over a
 * loop device, and what reaches the sparse file behind the loop device
 * (root only).
 *
 * On Linux 6.18 the loop device takes neither REQ_OP_PROVISION (never merged)
 * nor FALLOC_FL_WRITE_ZEROES (loop reports write_zeroes_unmap_max_bytes = 0),
 * so the kernel layer cannot pass a PROVISION down unless its policy is
 * "emulate". What the thin pool does with a PROVISION is therefore:
 *  - allocate the blocks in its metadata (always);
 *  - zero the new blocks unless zero_new_blocks is false: the kernel layer
 *    reports a block device as all data, so the pool sends WRITE_ZEROES,
 *    i.e. BLKZEROOUT, which loop turns into fallocate(ZERO_RANGE) on the
 *    sparse file -- the file's space gets reserved as a side effect;
 *  - pass PROVISION down only when the data layer supports it ("emulate":
 *    BLKZEROOUT again, with the same effect on the file).
 * So the sparse file's space is reserved unless both zeroing is off and the
 * policy is "auto": then nothing reaches the file and a later write through
 * the loop device can still meet ENOSPC in the file system below.
 */
#include "kernel_test.h"

#define MIB (1024 * 1024)

static void teardown(void)
{
  kt_loop_detach_all(ts_test_dir);
  ts_test_dir_teardown();
}

static const struct {
  const char *policy;     /* the kernel layer's provision policy */
  bool zero_new;          /* the pool's zero_new_blocks */
  bool passdown;          /* the pool passes PROVISION to the data layer */
  bool file_grows;        /* the sparse file's st_blocks grow by the range */
} cases[] = {
  { "auto", true, false, true },
  { "auto", false, false, false },
  { "emulate", true, true, true },
  { "emulate", false, true, true },
};

/* pool status field (integer or boolean as 0/1) */
static long long pool_field(ts_dev *pool, const char *key)
{
  char *s = ts_dev_status_json(pool);
  json_t *all = json_loads(s, 0, NULL);
  free(s);
  ck_assert_ptr_nonnull(all);
  json_t *v = json_object_get(json_object_get(all, "layer"), key);
  ck_assert_msg(v != NULL, "pool status has no %s", key);
  long long r = json_is_boolean(v) ? json_is_true(v) : json_integer_value(v);
  json_decref(all);
  return r;
}

START_TEST(provision_through_thin)
{
  /* Files of their own per case: the folder is shared by the cases. */
  char *name = ts_test_fmt("data%d.img", _i);
  struct kt_loop l = kt_loop_attach(ts_test_dir, name, 64 * MIB, false);
  free(name);
  char *json = ts_test_fmt(
      "{\"version\": 1, \"layers\": {"
      "\"meta\": {\"type\": \"file\", \"path\": \"meta%d.img\", \"size\": \"8M\", \"create\": true},"
      "\"data\": {\"type\": \"kernel\", \"path\": \"%s\", \"provision\": \"%s\"},"
      "\"pool\": {\"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
      " \"block_size\": \"64K\", \"zero_new_blocks\": %s, \"create\": true},"
      "\"vol\": {\"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"128M\","
      " \"create\": true}}, \"exports\": [\"vol\"]}",
      _i, l.dev, cases[_i].policy, cases[_i].zero_new ? "true" : "false");
  ts_stack *s = ts_test_open(ts_test_dir, json);
  free(json);
  ts_dev *vol = ts_stack_dev(s, "vol");
  ts_dev *pool = ts_stack_node(s, "pool");
  ts_dev *data = ts_stack_node(s, "data");
  ck_assert_uint_gt(ts_dev_limits(vol)->max_provision_bytes, 0); /* thin provisions itself */
  ck_assert_int_eq(pool_field(pool, "provision_passdown"), cases[_i].passdown);

  uint64_t before = ts_test_allocated(l.img);
  ck_assert_int_eq(ts_provision(vol, 8 * MIB, 4 * MIB), 0);
  ck_assert_int_eq(ts_flush(vol), 0);
  uint64_t grown = ts_test_allocated(l.img) - before;
  if (cases[_i].file_grows)
    ck_assert_msg(grown >= 4 * MIB, "sparse file grew by %llu", (unsigned long long)grown);
  else
    ck_assert_msg(grown == 0, "sparse file grew by %llu", (unsigned long long)grown);

  /* The pool mapped 64 blocks of 64K; they read as zeroes and are reported
   * as allocated zeroes. */
  ck_assert_int_eq(pool_field(pool, "allocated_blocks"), 64);
  ck_assert_int_eq(pool_field(pool, "passdown_provision_blocks"), cases[_i].passdown ? 64 : 0);
  char *buf = malloc(4 * MIB);
  memset(buf, 0xcc, 4 * MIB);
  ck_assert_int_eq(ts_pread(vol, buf, 4 * MIB, 8 * MIB), 0);
  ck_assert(kt_is_zero(buf, 4 * MIB));
  ts_extent_list ex = { 0 };
  ck_assert_int_eq(ts_block_status(vol, 8 * MIB, 4 * MIB, &ex), 0);
  for (size_t i = 0; i < ex.n; i++)
    ck_assert_uint_eq(ex.v[i].flags & TS_EXTENT_HOLE, 0);
  ts_extent_list_free(&ex);

  /* Which kernel calls carried it. */
  json_t *st = kt_status(data);
  ck_assert_uint_eq(kt_calls(st, "fallocate(0)", "calls"), 0);
  ck_assert_uint_eq(kt_calls(st, "fallocate(WRITE_ZEROES)", "calls"), 0);
  uint64_t zo = kt_calls(st, "ioctl(BLKZEROOUT)", "calls");
  if (cases[_i].zero_new || cases[_i].passdown)
    ck_assert_uint_gt(zo, 0);
  else
    ck_assert_uint_eq(zo, 0);
  json_decref(st);

  /* Data written into the provisioned range comes back. */
  ts_test_pattern(buf, MIB, 9);
  ck_assert_int_eq(ts_pwrite(vol, buf, MIB, 9 * MIB, TS_IO_FUA), 0);
  char *back = malloc(MIB);
  ck_assert_int_eq(ts_pread(vol, back, MIB, 9 * MIB), 0);
  ck_assert_mem_eq(back, buf, MIB);
  ck_assert_int_eq(pool_field(pool, "allocated_blocks"), 64);

  /* Provisioning it again, and a range around it, keeps the data: the
   * zeroing paths below reserve only blocks that hold nothing yet. */
  ck_assert_int_eq(ts_provision(vol, 8 * MIB, 4 * MIB), 0);
  ck_assert_int_eq(ts_provision(vol, 6 * MIB, 8 * MIB), 0);
  ck_assert_int_eq(ts_pread(vol, back, MIB, 9 * MIB), 0);
  ck_assert_mem_eq(back, buf, MIB);
  ck_assert_int_eq(pool_field(pool, "allocated_blocks"), 128);
  free(back);
  free(buf);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  kt_loop_release(&l);
}
END_TEST

static Suite *suite(void)
{
  Suite *s = suite_create("kernel_thin");
  TCase *tc = tcase_create("thin_over_loop");
  tcase_add_unchecked_fixture(tc, ts_test_dir_setup, teardown);
  tcase_set_timeout(tc, 300);
  tcase_add_loop_test(tc, provision_through_thin, 0, (int)(sizeof cases / sizeof cases[0]));
  suite_add_tcase(s, tc);
  return s;
}

int main(void)
{
  kt_loop_require();
  return ts_test_main(suite());
}
