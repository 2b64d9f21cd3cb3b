/* A request the core rejects says why: ts_last_error() names the check that
 * failed, the numbers and the device, on the thread that failed, and a layer's
 * own failure still says what and where. */
#include "testutil.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static char *dir;

static const char STACK[] =
    "{ \"version\": 1, \"layers\": {"
    "  \"vm0\": { \"type\": \"file\", \"path\": \"vm0.img\", \"size\": \"1G\", \"create\": true,"
    "           \"block_size\": 4096 },"
    "  \"ro\": { \"type\": \"file\", \"path\": \"ro.img\", \"read_only\": true },"
    "  \"spare\": { \"type\": \"memory\", \"size\": \"1M\" } } }";

/* error fails every request, the flush at close too. */
static const char BAD[] =
    "{ \"version\": 1, \"layers\": { \"bad\": { \"type\": \"error\", \"size\": \"1M\" } } }";

static void setup(void)
{
  dir = ts_test_mkdtemp();
  ck_assert_int_eq(ts_test_run(NULL, "truncate -s 1M '%s/ro.img'", dir), 0);
}

static void teardown(void)
{
  ts_test_rmdir(dir);
  free(dir);
}

static void assert_why(int r, int code, const char *want)
{
  ck_assert_int_eq(r, code);
  ck_assert_int_eq(ts_last_errno(), code);
  const char *why = ts_last_error();
  ck_assert_ptr_nonnull(why);
  ck_assert_msg(strstr(why, want), "message \"%s\" lacks \"%s\"", why, want);
}

START_TEST(checks_say_why)
{
  ts_stack *s = ts_test_open(dir, STACK);
  ts_dev *d = ts_stack_node(s, "vm0");
  ck_assert_ptr_nonnull(d);
  static char buf[8192];
  assert_why(ts_pread(d, buf, 100, 0), -EINVAL,
             "offset 0 + length 100 is not a multiple of the logical block size 4096 of vm0");
  assert_why(ts_pread(d, buf, 4096, 2ull << 30), -EINVAL,
             "offset 2G is past the end of vm0 (1 GiB)");
  assert_why(ts_pwrite(d, buf, 8192, (1ull << 30) - 4096, 0), -EINVAL,
             "offset 1048572K + length 8K runs past the end of vm0 (1 GiB)");
  assert_why(ts_discard(d, 512, 4096), -EINVAL, "discard at offset 512 + length 4K");
  ts_extent_list l = { 0 };
  assert_why(ts_block_status(d, 1ull << 31, 4096, &l), -EINVAL,
             "block status at offset 2G is past the end of vm0");
  ts_extent_list_free(&l);
  /* A success leaves the last failure in place, as documented. */
  ck_assert_int_eq(ts_pread(d, buf, 4096, 0), 0);
  ck_assert_int_eq(ts_last_errno(), -EINVAL);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

START_TEST(layer_failures_say_where)
{
  ts_stack *b = ts_test_open(dir, BAD);
  char buf[4096];
  assert_why(ts_pread(ts_stack_node(b, "bad"), buf, 4096, 8192), -EIO,
             "read on bad at offset 8K + length 4K failed");
  ck_assert_int_eq(ts_stack_close(b, NULL), -EIO);
  ts_stack *s = ts_test_open(dir, STACK);
  assert_why(ts_pwrite(ts_stack_node(s, "ro"), buf, 4096, 0, 0), -EROFS,
             "write on ro: the device is read-only");
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

static void *other_thread(void *arg)
{
  (void)arg;
  return (void *)ts_last_error();
}

START_TEST(last_error_is_per_thread)
{
  ts_stack *s = ts_test_open(dir, STACK);
  char buf[512];
  assert_why(ts_pread(ts_stack_node(s, "vm0"), buf, 512, 0), -EINVAL, "logical block size 4096");
  pthread_t t;
  void *seen = (void *)1;
  ck_assert_int_eq(pthread_create(&t, NULL, other_thread, NULL), 0);
  ck_assert_int_eq(pthread_join(t, &seen), 0);
  ck_assert_ptr_null(seen);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("io_errors");
  TCase *tc = tcase_create("io_errors");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, checks_say_why);
  tcase_add_test(tc, layer_failures_say_where);
  tcase_add_test(tc, last_error_is_per_thread);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
