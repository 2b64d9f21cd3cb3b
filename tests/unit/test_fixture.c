/* The temporary folder fixture the suites share: every test gets a fresh,
 * empty folder, and nothing of it (files, subfolders, read-only files) is
 * left behind once the test ends. */
#include "testutil.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static bool exists(const char *path)
{
  struct stat st;
  return lstat(path, &st) == 0;
}

static void touch(const char *path, mode_t mode)
{
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
  ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
  ck_assert_int_eq(write(fd, "x", 1), 1);
  close(fd);
}

START_TEST(teardown_removes_everything)
{
  ts_test_dir_setup();
  char *top = strdup(ts_test_dir);
  struct stat st;
  ck_assert_int_eq(stat(top, &st), 0);
  ck_assert(S_ISDIR(st.st_mode));
  char *f = ts_test_file("a.img"), *want = ts_test_fmt("%s/a.img", top);
  ck_assert_str_eq(f, want);
  free(want);
  touch(f, 0644);
  char *sub = ts_test_file("sub");
  ck_assert_int_eq(mkdir(sub, 0755), 0);
  char *deep = ts_test_file("sub/ro.img");
  touch(deep, 0444);
  ck_assert_int_eq(symlink("/etc/hostname", ts_test_file("link")), 0);

  ts_test_dir_teardown();
  ck_assert_ptr_null(ts_test_dir);
  ck_assert_msg(!exists(top), "%s is still there", top);
  ck_assert(exists("/etc/hostname"));
  free(top);
}
END_TEST

START_TEST(each_setup_is_fresh)
{
  ts_test_dir_setup();
  char *first = strdup(ts_test_dir);
  touch(ts_test_file("left.img"), 0644);
  ts_test_dir_teardown();
  ts_test_dir_setup();
  ck_assert_str_ne(ts_test_dir, first);
  ck_assert(!exists(ts_test_file("left.img")));
  ts_test_dir_teardown();
  free(first);
}
END_TEST

/* As a checked fixture: each test runs inside its own empty folder. */
START_TEST(fixture_is_in_place)
{
  ck_assert_ptr_nonnull(ts_test_dir);
  ck_assert(exists(ts_test_dir));
  touch(ts_test_file("mine.img"), 0644);
}
END_TEST

/* A failed assertion ends a forked test before its teardown runs: the
 * folder goes with its suite all the same. The inner suite's test reports
 * its folder through a pipe, then fails. */
static int report_fd = -1;

START_TEST(inner_fails)
{
  touch(ts_test_file("left.img"), 0644);
  ck_assert_int_eq(write(report_fd, ts_test_dir, strlen(ts_test_dir)),
                   (ssize_t)strlen(ts_test_dir));
  ck_abort_msg("failing on purpose");
}
END_TEST

START_TEST(failed_test_leaves_nothing)
{
  int p[2];
  ck_assert_int_eq(pipe(p), 0);
  report_fd = p[1];
  Suite *s = suite_create("inner");
  TCase *tc = tcase_create("inner");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_add_test(tc, inner_fails);
  suite_add_tcase(s, tc);
  ck_assert_int_eq(ts_test_run_suite(s, CK_SILENT), 1);
  close(p[1]);
  char path[4096] = "";
  ck_assert_int_gt(read(p[0], path, sizeof path - 1), 0);
  close(p[0]);
  ck_assert_msg(!exists(path), "%s is still there after a failed test", path);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("fixture");
  TCase *tc = tcase_create("direct");
  tcase_add_test(tc, teardown_removes_everything);
  tcase_add_test(tc, each_setup_is_fresh);
  tcase_add_test(tc, failed_test_leaves_nothing);
  suite_add_tcase(s, tc);
  tc = tcase_create("checked");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_add_loop_test(tc, fixture_is_in_place, 0, 2);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
