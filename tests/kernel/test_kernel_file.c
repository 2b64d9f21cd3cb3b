/* The kernel layer over a regular file: PROVISION is fallocate(KEEP_SIZE)
 * (rung 2 of the ladder), so the file's allocation grows without data being
 * written; DISCARD and WRITE_ZEROES are hole punching and zero ranges. Needs
 * no privileges. */
#include "kernel_test.h"

#define MIB (1024 * 1024)

static char *img;

static void setup(void)
{
  ts_test_dir_setup();
  img = ts_test_file("disk.img");
  kt_sparse(img, 16 * MIB);
}

START_TEST(provision_allocates)
{
  ts_stack *s = kt_open(ts_test_dir, img, "");
  ts_dev *d = ts_stack_dev(s, "k");
  const ts_limits *lim = ts_dev_limits(d);
  ck_assert_uint_eq(lim->size, 16 * MIB);
  ck_assert_uint_eq(lim->logical_block_size, 512);
  ck_assert_uint_gt(lim->max_provision_bytes, 0);
  ck_assert(lim->discard_zeroes);

  json_t *st = kt_status(d);
  ck_assert_str_eq(kt_ladder(st, "provision", "path"), "fallocate(KEEP_SIZE)");
  ck_assert_str_eq(json_string_value(json_object_get(st, "kind")), "regular file");
  json_decref(st);

  uint64_t before = ts_test_allocated(img);
  ck_assert_int_eq(ts_provision(d, 1 * MIB, 4 * MIB), 0);
  uint64_t after = ts_test_allocated(img);
  ck_assert_uint_ge(after, before + 4 * MIB);
  struct stat sb;
  ck_assert_int_eq(stat(img, &sb), 0);
  ck_assert_int_eq(sb.st_size, 16 * MIB); /* KEEP_SIZE */

  /* Provisioned, never written: zeroes, reported as allocated zeroes. */
  char *buf = malloc(4 * MIB);
  memset(buf, 0xaa, 4 * MIB);
  ck_assert_int_eq(ts_pread(d, buf, 4 * MIB, 1 * MIB), 0);
  ck_assert(kt_is_zero(buf, 4 * MIB));
  ts_extent_list ex = { 0 };
  ck_assert_int_eq(ts_block_status(d, 0, 8 * MIB, &ex), 0);
  ck_assert_uint_ge(ex.n, 2);
  ck_assert_uint_eq(ex.v[0].offset, 0);
  ck_assert_uint_eq(ex.v[0].length, 1 * MIB);
  ck_assert_uint_eq(ex.v[0].flags, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  ck_assert_uint_eq(ex.v[1].offset, 1 * MIB);
  ck_assert_uint_eq(ex.v[1].length, 4 * MIB);
  ck_assert_uint_eq(ex.v[1].flags, TS_EXTENT_ZERO);
  ts_extent_list_free(&ex);

  /* Idempotent, and it keeps data already there. */
  ts_test_pattern(buf, MIB, 7);
  ck_assert_int_eq(ts_pwrite(d, buf, MIB, 2 * MIB, 0), 0);
  ck_assert_int_eq(ts_provision(d, 1 * MIB, 4 * MIB), 0);
  char *back = malloc(MIB);
  ck_assert_int_eq(ts_pread(d, back, MIB, 2 * MIB), 0);
  ck_assert_mem_eq(back, buf, MIB);

  st = kt_status(d);
  ck_assert_uint_eq(kt_calls(st, "fallocate(KEEP_SIZE)", "calls"), 2);
  json_decref(st);
  free(back);
  free(buf);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

/* Data written into a provisioned range, not yet written back: ext4 keeps
 * the extent unwritten until writeback, yet the bytes are data. A layer that
 * called them "reads as zeroes" would let a thin pool or an NBD client with
 * the zero flag skip them. */
START_TEST(written_into_provisioned)
{
  ts_stack *s = kt_open(ts_test_dir, img, "");
  ts_dev *d = ts_stack_dev(s, "k");
  ck_assert_int_eq(ts_provision(d, 0, MIB), 0);
  char *buf = malloc(64 * 1024), *back = malloc(64 * 1024);
  ts_test_pattern(buf, 64 * 1024, 9);
  ck_assert_int_eq(ts_pwrite(d, buf, 64 * 1024, 0, 0), 0);
  ts_extent_list ex = { 0 };
  ck_assert_int_eq(ts_block_status(d, 0, MIB, &ex), 0);
  ck_assert_uint_ge(ex.n, 2);
  ck_assert_uint_eq(ex.v[0].offset, 0);
  ck_assert_uint_eq(ex.v[0].length, 64 * 1024);
  ck_assert_uint_eq(ex.v[0].flags, 0);
  ck_assert_uint_eq(ex.v[1].offset, 64 * 1024);
  ck_assert_uint_eq(ex.v[1].flags, TS_EXTENT_ZERO);
  ts_extent_list_free(&ex);
  ck_assert_int_eq(ts_pread(d, back, 64 * 1024, 0), 0);
  ck_assert_mem_eq(back, buf, 64 * 1024);
  free(buf);
  free(back);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

START_TEST(data_ops)
{
  ts_stack *s = kt_open(ts_test_dir, img, "");
  ts_dev *d = ts_stack_dev(s, "k");
  char *buf = malloc(2 * MIB), *back = malloc(2 * MIB);
  ts_test_pattern(buf, 2 * MIB, 1);
  ck_assert_int_eq(ts_pwrite(d, buf, 2 * MIB, 4 * MIB, TS_IO_FUA), 0);
  ck_assert_int_eq(ts_flush(d), 0);
  kt_pread_file(img, back, 2 * MIB, 4 * MIB);
  ck_assert_mem_eq(back, buf, 2 * MIB);
  uint64_t full = ts_test_allocated(img);

  /* DISCARD punches a hole: space freed, zeroes read. */
  ck_assert_int_eq(ts_discard(d, 4 * MIB, MIB), 0);
  ck_assert_uint_le(ts_test_allocated(img), full - MIB);
  ck_assert_int_eq(ts_pread(d, back, MIB, 4 * MIB), 0);
  ck_assert(kt_is_zero(back, MIB));

  /* WRITE_ZEROES without MAY_UNMAP keeps the space; with it, frees it. */
  uint64_t a0 = ts_test_allocated(img);
  ck_assert_int_eq(ts_write_zeroes(d, 5 * MIB, 512 * 1024, TS_IO_NOFALLBACK), 0);
  ck_assert_uint_ge(ts_test_allocated(img), a0);
  ck_assert_int_eq(ts_write_zeroes(d, 5 * MIB + 512 * 1024, 512 * 1024,
                                   TS_IO_MAY_UNMAP | TS_IO_NOFALLBACK), 0);
  ck_assert_uint_le(ts_test_allocated(img), a0 - 512 * 1024);
  ck_assert_int_eq(ts_pread(d, back, 2 * MIB, 4 * MIB), 0);
  ck_assert(kt_is_zero(back, 2 * MIB));
  kt_pread_file(img, back, 2 * MIB, 4 * MIB);
  ck_assert(kt_is_zero(back, 2 * MIB));

  json_t *st = kt_status(d);
  ck_assert_str_eq(kt_ladder(st, "discard", "path"), "fallocate(PUNCH_HOLE|KEEP_SIZE)");
  ck_assert_str_eq(kt_ladder(st, "write_zeroes", "path"), "fallocate(ZERO_RANGE|KEEP_SIZE)");
  ck_assert_uint_eq(kt_calls(st, "fallocate(ZERO_RANGE|KEEP_SIZE)", "calls"), 1);
  ck_assert_uint_eq(kt_calls(st, "fallocate(PUNCH_HOLE|KEEP_SIZE)", "calls"), 2);
  json_decref(st);
  free(buf);
  free(back);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

/* O_DIRECT with buffers that are not block aligned goes through a bounce
 * buffer; scattered iovecs still land in the right places. */
START_TEST(direct_unaligned)
{
  ts_stack *s = kt_open(ts_test_dir, img, "\"direct\": true");
  ts_dev *d = ts_stack_dev(s, "k");
  ck_assert_uint_eq(ts_dev_limits(d)->logical_block_size, 4096);
  size_t len = 3 * MIB;
  char *raw = malloc(len + 3), *data = raw + 3;
  char *rawb = malloc(len + 5), *back = rawb + 5;
  ts_test_pattern(data, len, 2);
  struct iovec w[3] = { { data, 1000 }, { data + 1000, MIB }, { data + 1000 + MIB, len - 1000 - MIB } };
  ck_assert_int_eq(ts_pwritev(d, w, 3, 8192, TS_IO_FUA), 0);
  ck_assert_int_eq(ts_pread(d, back, len, 8192), 0);
  ck_assert_mem_eq(back, data, len);
  kt_pread_file(img, back, len, 8192);
  ck_assert_mem_eq(back, data, len);
  free(raw);
  free(rawb);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

START_TEST(provision_off_and_emulate)
{
  ts_stack *s = kt_open(ts_test_dir, img, "\"provision\": \"off\"");
  ts_dev *d = ts_stack_dev(s, "k");
  ck_assert_uint_eq(ts_dev_limits(d)->max_provision_bytes, 0);
  uint64_t a = ts_test_allocated(img);
  ck_assert_int_eq(ts_provision(d, 0, MIB), -EOPNOTSUPP);
  ck_assert_uint_eq(ts_test_allocated(img), a);
  json_t *st = kt_status(d);
  ck_assert_str_eq(kt_ladder(st, "provision", "path"), "unsupported");
  json_decref(st);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);

  /* emulate keeps fallocate first; zero writes only if the file system
   * lacked it (ext4, tmpfs and xfs all have it). */
  s = kt_open(ts_test_dir, img, "\"provision\": \"emulate\"");
  d = ts_stack_dev(s, "k");
  st = kt_status(d);
  ck_assert_str_eq(kt_ladder(st, "provision", "initial"), "fallocate(KEEP_SIZE)");
  json_t *ladder = json_object_get(json_object_get(json_object_get(st, "ops"), "provision"), "ladder");
  ck_assert_uint_eq(json_array_size(ladder), 3);
  ck_assert_str_eq(json_string_value(json_array_get(ladder, 1)), "pwrite(zeroes)");
  json_decref(st);
  ck_assert_int_eq(ts_provision(d, 0, MIB), 0);
  ck_assert_uint_ge(ts_test_allocated(img), a + MIB);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

START_TEST(read_only)
{
  ts_stack *s = kt_open(ts_test_dir, img, "\"read_only\": true");
  ts_dev *d = ts_stack_dev(s, "k");
  ck_assert(ts_dev_limits(d)->read_only);
  char buf[512] = { 1 };
  ck_assert_int_eq(ts_pwrite(d, buf, 512, 0, 0), -EROFS);
  ck_assert_int_eq(ts_provision(d, 0, 512), -EROFS);
  ck_assert_int_eq(ts_pread(d, buf, 512, 0), 0);
  ck_assert(kt_is_zero(buf, 512));
  json_t *st = kt_status(d);
  ck_assert_str_eq(json_string_value(json_object_get(st, "read_only_reason")),
                   "read_only was requested");
  json_decref(st);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

START_TEST(bad_inputs)
{
  ts_stack *s = NULL;
  ts_error err = { 0 };
  ck_assert_int_eq(kt_try_open(ts_test_dir, "missing.img", "", &s, &err), -ENOENT);
  ck_assert_ptr_nonnull(strstr(err.msg, "layers.k.path"));
  ck_assert_ptr_nonnull(strstr(err.msg, "missing.img"));

  ck_assert_int_eq(kt_try_open(ts_test_dir, ts_test_dir, "", &s, &err), -ENOTBLK);
  ck_assert_ptr_nonnull(strstr(err.msg, "neither a block device nor a regular file"));

  char *odd = ts_test_path(ts_test_dir, "odd.img");
  kt_sparse(odd, 1000);
  ck_assert_int_eq(kt_try_open(ts_test_dir, odd, "", &s, &err), -EINVAL);
  ck_assert_ptr_nonnull(strstr(err.msg, "not a non-zero multiple of 512"));
  free(odd);

  ck_assert_int_eq(kt_try_open(ts_test_dir, img, "\"provision\": \"always\"", &s, &err), -EINVAL);
  ck_assert_ptr_nonnull(strstr(err.msg, "layers.k.provision"));
  ck_assert_int_eq(kt_try_open(ts_test_dir, img, "\"sizes\": 1", &s, &err), -EINVAL);
  ck_assert_ptr_null(s);
  /* A failed open leaves the file as it was. */
  ck_assert_uint_eq(ts_test_allocated(img), 0);
}
END_TEST

static Suite *suite(void)
{
  Suite *s = suite_create("kernel_file");
  TCase *tc = tcase_create("file");
  tcase_add_checked_fixture(tc, setup, ts_test_dir_teardown);
  tcase_add_test(tc, provision_allocates);
  tcase_add_test(tc, written_into_provisioned);
  tcase_add_test(tc, data_ops);
  tcase_add_test(tc, direct_unaligned);
  tcase_add_test(tc, provision_off_and_emulate);
  tcase_add_test(tc, read_only);
  tcase_add_test(tc, bad_inputs);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return ts_test_main(suite()); }
