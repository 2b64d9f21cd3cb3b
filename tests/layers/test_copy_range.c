/* Copies within a device (the copy_range hook): the core's checks, its
 * read+write fallback for layers without the hook, the file layer's
 * FICLONERANGE / copy_file_range chain and linear's pass-down. The file
 * cases run on whatever file system holds TMPDIR; integration/thin_reflink
 * runs them on XFS with reflink and on ext4 with TS_TEST_COPY_EXPECT
 * naming the method that file system must end up with. */
#include "testutil.h"

#include "core/internal.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define K64 65536

/* The file layer's status as JSON (freed by the caller). */
static json_t *status_of(ts_dev *d)
{
  char *s = ts_dev_status_json(d);
  json_t *j = json_loads(s, 0, NULL);
  free(s);
  ck_assert_ptr_nonnull(j);
  json_t *layer = json_object_get(j, "layer");
  ck_assert_ptr_nonnull(layer);
  json_incref(layer);
  json_decref(j);
  return layer;
}

static uint64_t status_uint(json_t *st, const char *key)
{
  json_t *v = json_object_get(st, key);
  ck_assert_msg(json_is_integer(v), "status has no %s", key);
  return (uint64_t)json_integer_value(v);
}

static void check_copied(ts_dev *d, uint64_t from, uint64_t to, uint64_t len)
{
  unsigned char *a = malloc(len), *b = malloc(len);
  ck_assert_int_eq(ts_pread(d, a, len, from), 0);
  ck_assert_int_eq(ts_pread(d, b, len, to), 0);
  ck_assert_mem_eq(a, b, len);
  free(a);
  free(b);
}

static void fill(ts_dev *d, uint64_t off, uint64_t len, uint64_t seed)
{
  unsigned char *a = malloc(len);
  ts_test_pattern(a, len, seed);
  ck_assert_int_eq(ts_pwrite(d, a, len, off, 0), 0);
  free(a);
}

START_TEST(core_checks_and_fallback)
{
  ts_stack *s = ts_test_open(ts_test_dir, "{ \"version\": 1, \"layers\": { \"m\": { \"type\": "
                                          "\"memory\", \"size\": \"4M\" } }, \"exports\": [] }");
  ts_dev *d = ts_stack_node(s, "m");
  fill(d, 0, K64, 1);
  ck_assert_int_eq(ts__copy_range(d, 0, 4096, K64, 0), -EINVAL); /* overlaps */
  ck_assert_int_eq(ts__copy_range(d, 0, 1 << 20, 100, 0), -EINVAL);
  ck_assert_int_eq(ts__copy_range(d, 0, (4 << 20) - 512, K64, 0), -EINVAL);
  ck_assert_int_eq(ts__copy_range(d, 0, 1 << 20, K64, TS_IO_FUA), -EINVAL);
  ck_assert_ptr_nonnull(strstr(ts_last_error(), "not valid for a copy on m"));
  /* No hook: only by reads and writes, which NOFALLBACK refuses. */
  ck_assert_int_eq(ts__copy_range(d, 0, 1 << 20, K64, TS_IO_NOFALLBACK), -EOPNOTSUPP);
  ck_assert_int_eq(ts__copy_range(d, 0, 2 << 20, (1 << 20) + K64, 0), 0);
  check_copied(d, 0, 2 << 20, (1 << 20) + K64);
  ts_stack_close(s, NULL);
}
END_TEST

#define FILE_STACK(extra)                                                                          \
  "{ \"version\": 1, \"layers\": { \"d\": { \"type\": \"file\", \"path\": \"disk.img\", "          \
  "\"size\": \"8M\", \"create\": true " extra " } }, \"exports\": [] }"

START_TEST(file_copy_chain)
{
  const char *expect = getenv("TS_TEST_COPY_EXPECT");
  ts_stack *s = ts_test_open(ts_test_dir, FILE_STACK(""));
  ts_dev *d = ts_stack_node(s, "d");
  fill(d, 0, 2 * K64, 2);
  /* Clone only: it works, or the file's copy state moves past FICLONERANGE. */
  int r = ts__copy_range(d, 0, 1 << 20, K64, TS_IO_NOFALLBACK);
  json_t *st = status_of(d);
  const char *state = json_string_value(json_object_get(st, "copy"));
  if (r == 0) {
    ck_assert_str_eq(state, "FICLONERANGE");
    ck_assert_uint_eq(status_uint(st, "cloned_bytes"), K64);
    check_copied(d, 0, 1 << 20, K64);
  } else {
    ck_assert_int_eq(r, -EOPNOTSUPP);
    ck_assert_str_ne(state, "FICLONERANGE");
    ck_assert_uint_eq(status_uint(st, "cloned_bytes"), 0);
  }
  json_decref(st);
  /* Any way: the data arrives, by the best call the kernel takes. */
  ck_assert_int_eq(ts__copy_range(d, K64, 2 << 20, K64, 0), 0);
  check_copied(d, K64, 2 << 20, K64);
  /* Off the file system block: never a clone, whatever the file system. */
  ck_assert_int_eq(ts__copy_range(d, 512, 3 << 20, 4096, TS_IO_NOFALLBACK), -EOPNOTSUPP);
  ck_assert_int_eq(ts__copy_range(d, 512, 3 << 20, 4096, 0), 0);
  check_copied(d, 512, 3 << 20, 4096);
  st = status_of(d);
  state = json_string_value(json_object_get(st, "copy"));
  uint64_t cloned = status_uint(st, "cloned_bytes"), cfr = status_uint(st, "copy_file_range_bytes");
  if (!strcmp(state, "FICLONERANGE"))
    ck_assert_uint_eq(cloned, 2 * K64);
  else if (!strcmp(state, "copy_file_range"))
    ck_assert_uint_eq(cfr, K64 + 4096);
  else
    ck_assert_uint_eq(cloned + cfr, 0);
  if (expect)
    ck_assert_str_eq(state, expect);
  json_decref(st);
  ts_stack_close(s, NULL);
}
END_TEST

START_TEST(read_only_refused)
{
  ts_stack_close(ts_test_open(ts_test_dir, FILE_STACK("")), NULL);
  ts_stack *s = ts_test_open(ts_test_dir, "{ \"version\": 1, \"layers\": { \"d\": { \"type\": "
                                          "\"file\", \"path\": \"disk.img\", \"read_only\": true "
                                          "} }, \"exports\": [] }");
  ck_assert_int_eq(ts__copy_range(ts_stack_node(s, "d"), 0, K64, K64, 0), -EROFS);
  ts_stack_close(s, NULL);
}
END_TEST

/* Linear passes a copy within one child down (the file's counters move)
 * and leaves one across children to the core. */
START_TEST(linear_pass_down)
{
  ts_stack *s = ts_test_open(
      ts_test_dir,
      "{ \"version\": 1, \"layers\": {"
      " \"f\": { \"type\": \"file\", \"path\": \"disk.img\", \"size\": \"8M\", \"create\": true },"
      " \"m\": { \"type\": \"memory\", \"size\": \"1M\" },"
      " \"lin\": { \"type\": \"linear\", \"segments\": [ { \"child\": \"m\" },"
      "   { \"child\": \"f\", \"offset\": \"1M\", \"length\": \"4M\" } ] } },"
      " \"exports\": [] }");
  ts_dev *lin = ts_stack_node(s, "lin"), *f = ts_stack_node(s, "f");
  fill(lin, 0, K64, 3);
  fill(lin, 1 << 20, K64, 4);
  /* Within f: lin offset 1M is f's 2M. */
  ck_assert_int_eq(ts__copy_range(lin, 1 << 20, 3 << 20, K64, 0), 0);
  check_copied(f, 2 << 20, 4 << 20, K64);
  json_t *st = status_of(f);
  ck_assert_uint_eq(status_uint(st, "cloned_bytes") + status_uint(st, "copy_file_range_bytes"),
                    K64);
  json_decref(st);
  /* From m into f: the core's reads and writes; NOFALLBACK refuses. */
  ck_assert_int_eq(ts__copy_range(lin, 0, 2 << 20, K64, TS_IO_NOFALLBACK), -EOPNOTSUPP);
  ck_assert_int_eq(ts__copy_range(lin, 0, 2 << 20, K64, 0), 0);
  check_copied(lin, 0, 2 << 20, K64);
  st = status_of(f);
  ck_assert_uint_eq(status_uint(st, "cloned_bytes") + status_uint(st, "copy_file_range_bytes"),
                    K64);
  json_decref(st);
  ts_stack_close(s, NULL);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("copy_range");
  TCase *tc = tcase_create("copy_range");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_add_test(tc, core_checks_and_fallback);
  tcase_add_test(tc, file_copy_chain);
  tcase_add_test(tc, read_only_refused);
  tcase_add_test(tc, linear_pass_down);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
