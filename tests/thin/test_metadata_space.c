/* Metadata space on a full host file system: the pool reserves its metadata
 * file when it formats (and grows) it, so commits still succeed after the
 * disk fills; where it cannot reserve, it says so, and a commit that then
 * fails reports ENOSPC, through close too. On a small tmpfs. */
#include "thin-helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

static char *mnt;
static char events[1024];

static void on_event(ts_stack *s, const char *node, const char *event, const char *detail, void *arg)
{
  size_t n = strlen(events);
  snprintf(events + n, sizeof events - n, "%s:%s;", node, event);
}

static void setup(void)
{
  ts_test_dir_setup();
  mnt = ts_test_file("fs");
  events[0] = '\0';
}

static void teardown(void)
{
  if (mnt)
    umount2(mnt, MNT_DETACH);
  ts_test_dir_teardown();
}

static void mount_small_fs(void)
{
  ts_test_require_root();
  ck_assert_int_eq(mkdir(mnt, 0700), 0);
  ck_assert_int_eq(ts_test_run(NULL, "mount -t tmpfs -o size=40M tmpfs '%s'", mnt), 0);
}

/* Fill the file system until a write fails with ENOSPC. */
static void fill_fs(void)
{
  char *p = ts_test_path(mnt, "filler");
  int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ck_assert_int_ge(fd, 0);
  static char buf[1 << 16];
  memset(buf, 0xee, sizeof buf);
  ssize_t n;
  while ((n = write(fd, buf, sizeof buf)) > 0) {
  }
  ck_assert_int_eq(errno, ENOSPC);
  close(fd);
  free(p);
}

/* meta 8M, data 256M (sparse), a 64M volume 0. `meta_wrap` puts a fault
 * layer between the pool and the metadata file that turns PROVISION off. */
static ts_stack *open_pool(bool meta_wrap, bool create)
{
  const char *c = create ? ", \"create\": true" : "";
  const char *msize = create ? ", \"size\": \"8M\"" : "", *dsize = create ? ", \"size\": \"256M\"" : "";
  char *j = ts_test_fmt(
      "{ \"version\": 1, \"layers\": {"
      " \"mfile\": { \"type\": \"file\", \"path\": \"pool.meta\"%s%s },%s"
      " \"data\": { \"type\": \"file\", \"path\": \"pool.data\"%s%s },"
      " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"%s\", \"data\": \"data\","
      "   \"block_size\": \"64K\", \"commit_interval\": 0%s },"
      " \"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"64M\"%s } },"
      " \"exports\": [\"v0\"] }",
      msize, c,
      meta_wrap ? " \"meta\": { \"type\": \"fault\", \"child\": \"mfile\", \"rules\": [],"
                  "   \"limits\": { \"max_provision_bytes\": 0 } }," : "",
      dsize, c, meta_wrap ? "meta" : "mfile", c, c);
  ts_open_opts o = { .struct_size = sizeof o, .event = on_event };
  ts_stack *s = NULL;
  ts_error e = { 0 };
  int r = ts_stack_open_string(j, mnt, &o, &s, &e);
  ck_assert_msg(r == 0, "open: %s", e.msg);
  free(j);
  return s;
}

/* Write 4 MiB into the volume and commit it while there is space. */
static void fill_volume(ts_stack *s)
{
  ts_dev *v = ts_stack_dev(s, "v0");
  static char buf[1 << 20];
  for (int i = 0; i < 4; i++) {
    ts_test_pattern(buf, sizeof buf, (uint64_t)i);
    ck_assert_int_eq(ts_pwrite(v, buf, sizeof buf, (uint64_t)i << 20, 0), 0);
  }
  ck_assert_int_eq(ts_flush(v), 0);
}

START_TEST(reserved_metadata_commits_on_a_full_disk)
{
  mount_small_fs();
  ts_stack *s = open_pool(false, true);
  char *meta = ts_test_path(mnt, "pool.meta");
  ck_assert_uint_eq(ts_test_allocated(meta), 8u << 20); /* the whole file, reserved */
  ck_assert_ptr_null(strstr(events, "metadata-not-preallocated"));
  /* Growing reserves the new space too. */
  ts_error ge = { 0 };
  ck_assert_msg(ts_pool_extend_metadata(ts_stack_node(s, "pool"), 12u << 20, &ge) == 0, "%s", ge.msg);
  ck_assert_uint_eq(ts_test_allocated(meta), 12u << 20);
  fill_volume(s);
  fill_fs();
  ts_error e = { 0 };
  ts_dev *pool = ts_stack_node(s, "pool");
  /* Snapshots and volumes only change metadata: all of it is in place. */
  for (uint32_t id = 1; id <= 20; id++)
    ck_assert_msg(ts_pool_create_snap(pool, id, 0, &e) == 0, "snapshot %u: %s", id, e.msg);
  ck_assert_int_eq(ts_pool_delete_thin(pool, 3, &e), 0);
  ck_assert_int_eq(ts_pool_create_thin(pool, 30, &e), 0);
  ck_assert_msg(ts_stack_close(s, &e) == 0, "close: %s", e.msg);
  s = open_pool(false, false);
  size_t n = 0;
  ts_thin_info info[32];
  ck_assert_int_eq(ts_pool_list_thins(ts_stack_node(s, "pool"), info, 32, &n, &e), 0);
  ck_assert_uint_eq(n, 21);
  ck_assert_int_eq(ts_stack_close(s, &e), 0);
  free(meta);
  thin_check_clean(mnt);
}
END_TEST

START_TEST(unreserved_metadata_says_so_and_keeps_enospc)
{
  mount_small_fs();
  ts_stack *s = open_pool(true, true);
  ck_assert_msg(strstr(events, "pool:metadata-not-preallocated"), "events: %s", events);
  fill_volume(s);
  fill_fs();
  ts_error e = { 0 };
  ts_dev *pool = ts_stack_node(s, "pool");
  int r = 0;
  for (uint32_t id = 1; id <= 200 && r == 0; id++)
    r = ts_pool_create_snap(pool, id, 0, &e);
  ck_assert_msg(r == -ENOSPC, "expected ENOSPC from a commit on the full disk, got %s: %s",
                ts_err_name(r), e.msg);
  /* Every later commit says what made the first one fail, close too. */
  ck_assert_int_eq(ts_flush(ts_stack_dev(s, "v0")), -ENOSPC);
  ck_assert_int_eq(ts_pool_create_thin(pool, 500, &e), -ENOSPC);
  r = ts_stack_close(s, &e);
  ck_assert_msg(r == -ENOSPC, "close: %s (%s)", ts_err_name(r), e.msg);
  /* The last commit that succeeded is intact. */
  thin_check_clean(mnt);
}
END_TEST

int main(void)
{
  require_thin_tools();
  Suite *s = suite_create("metadata_space");
  TCase *tc = tcase_create("full_disk");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, reserved_metadata_commits_on_a_full_disk);
  tcase_add_test(tc, unreserved_metadata_says_so_and_keeps_enospc);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
