/* thinstack replay-log on crafted logs: every position and size is bounded
 * by the log's length and the target's size, entry data is streamed, and
 * each refusal says what, where and why. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "backends/logwrites.h"
#include "core/le.h"

static char *logp, *tgt;

static void setup(void)
{
  ts_test_dir_setup();
  logp = ts_test_file("log");
  tgt = ts_test_file("target");
}

/* A log of 512-byte sectors: superblock claiming `claimed` entries, then
 * the entries as given, each followed by `data` sectors of its own bytes. */
struct ent { uint64_t sector, nr, flags; uint32_t data; };

static void write_log(const struct ent *e, int n, uint64_t claimed)
{
  int fd = open(logp, O_RDWR | O_CREAT | O_TRUNC, 0600);
  ck_assert_int_ge(fd, 0);
  unsigned char b[512] = {0};
  ts__put64(b + LW_SUPER_MAGIC, LW_MAGIC);
  ts__put64(b + LW_SUPER_VERSION, LW_VERSION);
  ts__put64(b + LW_SUPER_ENTRIES, claimed);
  ts__put32(b + LW_SUPER_SECTORSIZE, 512);
  ck_assert_int_eq(write(fd, b, 512), 512);
  for (int i = 0; i < n; i++) {
    memset(b, 0, 512);
    ts__put64(b + LW_ENTRY_SECTOR, e[i].sector);
    ts__put64(b + LW_ENTRY_NR, e[i].nr);
    ts__put64(b + LW_ENTRY_FLAGS, e[i].flags);
    ck_assert_int_eq(write(fd, b, 512), 512);
    for (uint32_t s = 0; s < e[i].data; s++) {
      ts_test_pattern(b, 512, e[i].sector + s);
      ck_assert_int_eq(write(fd, b, 512), 512);
    }
  }
  close(fd);
}

static void make_target(uint64_t size)
{
  int fd = open(tgt, O_RDWR | O_CREAT | O_TRUNC, 0600);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
  close(fd);
}

static off_t size_of(const char *p)
{
  struct stat st;
  ck_assert_int_eq(stat(p, &st), 0);
  return st.st_size;
}

static int run(char **out, const char *args)
{
  /* timeout: a wrapped position used to loop for ever */
  return ts_test_run(out, "timeout 20 %s/thinstack replay-log %s", TS_TEST_BUILD_DIR, args);
}

/* The 1 KiB log whose entry claims 2^64/512 - 1 sectors. */
START_TEST(test_wrapping_count_is_refused)
{
  struct ent e[] = {{0, UINT64_MAX / 512, 0, 0}};
  write_log(e, 1, 1);
  ck_assert_int_eq(size_of(logp), 1024);
  char *out = NULL, *args = ts_test_fmt("'%s' --list", logp);
  int st = run(&out, args);
  ck_assert_msg(st == 1 && strstr(out, "entry 0 at byte 512 has 36028797018963967 sectors of data, past the end of "
                                       "the log (1024 bytes)"), "%d: %s", st, out);
  ck_assert_int_lt(strlen(out), 1000);
  free(out);
  free(args);
  make_target(1 << 20);
  args = ts_test_fmt("'%s' '%s'", logp, tgt);
  st = run(&out, args);
  ck_assert_msg(st == 1 && strstr(out, "past the end of the log"), "%d: %s", st, out);
  ck_assert_int_eq(size_of(tgt), 1 << 20);
  free(out);
  free(args);
}
END_TEST

/* More entries claimed than the log holds. */
START_TEST(test_claimed_entries_past_the_log)
{
  struct ent e[] = {{0, 1, 0, 1}};
  write_log(e, 1, 1000);
  char *out = NULL, *args = ts_test_fmt("'%s' --list", logp);
  int st = run(&out, args);
  ck_assert_msg(st == 1 && strstr(out, "entry 1 would start at byte 1536, past the end of the log (1536 bytes)") &&
                strstr(out, "says it has 1000 entries"), "%d: %s", st, out);
  free(out);
  free(args);
}
END_TEST

/* A write or discard past the target's end is refused; the file does not
 * grow. */
START_TEST(test_past_the_target)
{
  struct ent w[] = {{2047, 2, 0, 2}};
  write_log(w, 1, 1);
  make_target(1 << 20);
  char *out = NULL, *args = ts_test_fmt("'%s' '%s'", logp, tgt);
  int st = run(&out, args);
  ck_assert_msg(st == 1 && strstr(out, "entry 0 (byte 512 of") && strstr(out, "writes 2 sectors at sector 2047") &&
                strstr(out, "(1048576 bytes)"), "%d: %s", st, out);
  ck_assert_int_eq(size_of(tgt), 1 << 20);
  free(out);
  struct ent d[] = {{1ull << 60, 1ull << 60, LW_DISCARD, 0}};
  write_log(d, 1, 1);
  st = run(&out, args);
  ck_assert_msg(st == 1 && strstr(out, "discards"), "%d: %s", st, out);
  ck_assert_int_eq(size_of(tgt), 1 << 20);
  free(out);
  free(args);
}
END_TEST

/* A 5 MiB entry replays through the bounded buffer, byte for byte. */
START_TEST(test_large_entry_streams)
{
  struct ent e[] = {{8, 10240, 0, 10240}, {0, 0, LW_MARK, 0}};
  write_log(e, 2, 2);
  make_target(8 << 20);
  char *out = NULL, *args = ts_test_fmt("'%s' '%s'", logp, tgt);
  int st = run(&out, args);
  ck_assert_msg(st == 0 && strstr(out, "replayed 2 of 2 entries"), "%d: %s", st, out);
  int fd = open(tgt, O_RDONLY);
  unsigned char got[512], want[512];
  for (uint64_t s = 0; s < 10240; s += 997) {
    ck_assert_int_eq(pread(fd, got, 512, (off_t)((8 + s) * 512)), 512);
    ts_test_pattern(want, 512, 8 + s);
    ck_assert(!memcmp(got, want, 512));
  }
  close(fd);
  free(out);
  free(args);
}
END_TEST

/* The target may not be the log itself, under any name. */
START_TEST(test_target_is_the_log)
{
  struct ent e[] = {{0, 1, 0, 1}};
  write_log(e, 1, 1);
  char *hard = ts_test_path(ts_test_dir, "hard");
  ck_assert_int_eq(link(logp, hard), 0);
  void *before, *after;
  size_t l0, l1;
  ck_assert(ts_test_read_file(logp, &before, &l0));
  char *out = NULL, *args = ts_test_fmt("'%s' '%s'", logp, hard);
  int st = run(&out, args);
  ck_assert_msg(st == 2 && strstr(out, "is the log"), "%d: %s", st, out);
  ck_assert(ts_test_read_file(logp, &after, &l1));
  ck_assert(l0 == l1 && !memcmp(before, after, l0));
  free(before);
  free(after);
  free(out);
  free(args);
  free(hard);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("replay_log");
  TCase *tc = tcase_create("replay_log");
  tcase_add_checked_fixture(tc, setup, ts_test_dir_teardown);
  tcase_add_test(tc, test_wrapping_count_is_refused);
  tcase_add_test(tc, test_claimed_entries_past_the_log);
  tcase_add_test(tc, test_past_the_target);
  tcase_add_test(tc, test_large_entry_streams);
  tcase_add_test(tc, test_target_is_the_log);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
