/* Ownership of block devices (root only): a writing stack opens the device
 * O_EXCL and locks its node, so a second writer (another stack, or a mount)
 * and a reader are refused naming the holder, readers share, and one stack
 * cannot use a device twice, even under a second name (a symlink). The
 * kernel layer on a regular file locks it like the file layer. */
#include "kernel_test.h"

#include <sys/mount.h>

#define DEV_SIZE (16u << 20)

static void teardown(void)
{
  kt_loop_detach_all(ts_test_dir);
  ts_test_dir_teardown();
}

static int open_ro(const char *path, ts_stack **s, ts_error *err)
{
  char *j = ts_test_fmt("{\"version\": 1, \"layers\": {\"k\": {\"type\": \"kernel\", "
                        "\"path\": \"%s\"}}, \"exports\": [\"k\"]}", path);
  ts_open_opts o = { .struct_size = sizeof o, .flags = TS_OPEN_READ_ONLY };
  memset(err, 0, sizeof *err);
  int r = ts_stack_open_string(j, ts_test_dir, &o, s, err);
  free(j);
  return r;
}

START_TEST(block_device_has_one_writer)
{
  struct kt_loop l = kt_loop_attach(ts_test_dir, "a.img", DEV_SIZE, false);
  ts_stack *w = kt_open(ts_test_dir, l.dev, ""), *x = NULL;
  ts_error err = { 0 };
  char *me = ts_test_fmt("pid %d (", (int)getpid());
  ck_assert_int_eq(kt_try_open(ts_test_dir, l.dev, "", &x, &err), -EBUSY);
  ck_assert_msg(strstr(err.msg, "layers.k: ") && strstr(err.msg, l.dev) &&
                    strstr(err.msg, "is in use by ") && strstr(err.msg, me),
                "%s", err.msg);
  /* O_EXCL alone would let a reader in; the node's lock does not. */
  ck_assert_int_eq(open_ro(l.dev, &x, &err), -EBUSY);
  ck_assert_msg(strstr(err.msg, "is open for writing by ") && strstr(err.msg, me), "%s", err.msg);
  ts_stack_close(w, NULL);
  /* Readers share, and keep a writer out. */
  ts_stack *r1 = NULL, *r2 = NULL;
  ck_assert_msg(open_ro(l.dev, &r1, &err) == 0, "%s", err.msg);
  ck_assert_msg(open_ro(l.dev, &r2, &err) == 0, "%s", err.msg);
  ck_assert_int_eq(kt_try_open(ts_test_dir, l.dev, "", &x, &err), -EBUSY);
  ck_assert_msg(strstr(err.msg, "is open read-only by ") && strstr(err.msg, me), "%s", err.msg);
  ts_stack_close(r1, NULL);
  ts_stack_close(r2, NULL);
  w = kt_open(ts_test_dir, l.dev, "");
  ts_stack_close(w, NULL);
  free(me);
  kt_loop_release(&l);
}
END_TEST

START_TEST(one_stack_cannot_use_a_device_twice)
{
  struct kt_loop l = kt_loop_attach(ts_test_dir, "b.img", DEV_SIZE, false);
  char *sym = ts_test_path(ts_test_dir, "disk-link");
  ck_assert_int_eq(symlink(l.dev, sym), 0);
  char *j = ts_test_fmt("{\"version\": 1, \"layers\": {"
                        "\"a\": {\"type\": \"kernel\", \"path\": \"%s\"},"
                        "\"b\": {\"type\": \"kernel\", \"path\": \"disk-link\"}},"
                        " \"exports\": [\"a\", \"b\"]}", l.dev);
  for (int ro = 0; ro < 2; ro++) {
    ts_stack *s = NULL;
    ts_error err = { 0 };
    ts_open_opts o = { .struct_size = sizeof o, .flags = ro ? TS_OPEN_READ_ONLY : 0 };
    ck_assert_int_eq(ts_stack_open_string(j, ts_test_dir, &o, &s, &err), -EBUSY);
    ck_assert_msg(strstr(err.msg, "layers.b.path: ") && strstr(err.msg, "disk-link") &&
                      strstr(err.msg, "layer \"a\"") && strstr(err.msg, l.dev),
                  "%s", err.msg);
  }
  free(j);
  free(sym);
  kt_loop_release(&l);
}
END_TEST

/* The kernel refuses O_EXCL on a mounted device; the message says so. */
START_TEST(mounted_device_is_refused)
{
  ts_test_require_tool("mkfs.ext4");
  struct kt_loop l = kt_loop_attach(ts_test_dir, "c.img", DEV_SIZE, false);
  char *out = NULL;
  ck_assert_int_eq(ts_test_run(&out, "mkfs.ext4 -q -F %s", l.dev), 0);
  free(out);
  char *mnt = ts_test_path(ts_test_dir, "mnt");
  ck_assert_int_eq(mkdir(mnt, 0700), 0);
  ck_assert_int_eq(mount(l.dev, mnt, "ext4", 0, NULL), 0);
  ts_stack *x = NULL;
  ts_error err = { 0 };
  int r = kt_try_open(ts_test_dir, l.dev, "", &x, &err);
  umount(mnt);
  ck_assert_int_eq(r, -EBUSY);
  ck_assert_msg(strstr(err.msg, "is in use (mounted"), "%s", err.msg);
  free(mnt);
  kt_loop_release(&l);
}
END_TEST

START_TEST(kernel_layer_on_a_file_locks_it)
{
  char *img = ts_test_path(ts_test_dir, "f.img");
  kt_sparse(img, DEV_SIZE);
  ts_stack *w = kt_open(ts_test_dir, img, ""), *x = NULL;
  ts_error err = { 0 };
  ck_assert_int_eq(kt_try_open(ts_test_dir, img, "", &x, &err), -EBUSY);
  ck_assert_msg(strstr(err.msg, "f.img is in use by pid "), "%s", err.msg);
  /* And against a file layer on the same file: one rule for both. */
  char *j = ts_test_fmt("{\"version\": 1, \"layers\": {\"d\": {\"type\": \"file\", "
                        "\"path\": \"%s\"}}, \"exports\": [\"d\"]}", img);
  ck_assert_int_eq(ts_test_try_open(ts_test_dir, j, &x, &err), -EBUSY);
  free(j);
  ts_stack_close(w, NULL);
  free(img);
}
END_TEST

static Suite *suite(void)
{
  Suite *s = suite_create("kernel_ownership");
  TCase *tc = tcase_create("ownership");
  tcase_add_unchecked_fixture(tc, ts_test_dir_setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, block_device_has_one_writer);
  tcase_add_test(tc, one_stack_cannot_use_a_device_twice);
  tcase_add_test(tc, mounted_device_is_refused);
  tcase_add_test(tc, kernel_layer_on_a_file_locks_it);
  suite_add_tcase(s, tc);
  return s;
}

int main(void)
{
  kt_loop_require();
  return ts_test_main(suite());
}
