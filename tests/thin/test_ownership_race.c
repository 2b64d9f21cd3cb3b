/* Two processes opening one pool for writing at the same instant: in each of
 * 50 rounds exactly one wins and the other gets -EBUSY, the winner's writes
 * land, and the pool stays thin_check clean. A holder killed with SIGKILL
 * leaves nothing behind: the next open succeeds at once. */
#include "thin-helpers.h"

#include <signal.h>
#include <sys/wait.h>

#define ROUNDS 50

static const struct pool_opts opts = {
  .data_size = "64M",
  .vols = "\"v\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"32M\", "
          "\"create\": true }",
  .exports = "\"v\"",
};

static void read_all(int fd, void *buf, size_t len)
{
  size_t done = 0;
  while (done < len) {
    ssize_t n = read(fd, (char *)buf + done, len - done);
    if (n <= 0)
      _exit(90);
    done += (size_t)n;
  }
}

/* A contender: wait at the barrier, open, report, write a block if it won,
 * and hold the stack until the parent has both answers. */
static void contend(const char *json, int go, int result, int done, int round)
{
  char c;
  read_all(go, &c, 1);
  ts_stack *s = NULL;
  ts_error err = { 0 };
  int r = ts_stack_open_string(json, ts_test_dir, NULL, &s, &err);
  if (r == 0) {
    char buf[4096];
    memset(buf, round + 1, sizeof buf);
    if (ts_pwrite(ts_stack_dev(s, "v"), buf, sizeof buf, (uint64_t)round * 65536, 0) ||
        ts_flush(ts_stack_dev(s, "v")))
      r = 1;
  } else if (r == -EBUSY && !strstr(err.msg, "is in use by pid ")) {
    r = 2; /* EBUSY without the holder named */
  }
  if (write(result, &r, sizeof r) != sizeof r)
    _exit(91);
  read_all(done, &c, 1);
  _exit(ts_stack_close(s, NULL) ? 92 : 0);
}

START_TEST(two_writers_at_once)
{
  char *json = pool_json(&opts);
  ts_stack_close(ts_test_open(ts_test_dir, json), NULL);
  int wins[2] = { 0, 0 };
  for (int round = 0; round < ROUNDS; round++) {
    int go[2], result[2], done[2];
    ck_assert(pipe(go) == 0 && pipe(result) == 0 && pipe(done) == 0);
    pid_t kid[2];
    for (int k = 0; k < 2; k++) {
      kid[k] = fork();
      ck_assert_int_ge(kid[k], 0);
      if (kid[k] == 0) {
        close(go[1]);
        close(result[0]);
        close(done[1]);
        contend(json, go[0], result[1], done[0], round);
      }
    }
    close(go[0]);
    close(result[1]);
    close(done[0]);
    /* Both children are blocked on the pipe: one write releases both. */
    ck_assert_int_eq(write(go[1], "xx", 2), 2);
    int r[2];
    for (int k = 0; k < 2; k++)
      ck_assert_int_eq(read(result[0], &r[k], sizeof r[k]), (ssize_t)sizeof r[k]);
    ck_assert_int_eq(write(done[1], "xx", 2), 2);
    for (int k = 0; k < 2; k++) {
      int st;
      ck_assert_int_eq(waitpid(kid[k], &st, 0), kid[k]);
      ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "round %d: a child failed (%d)", round,
                    st);
    }
    close(go[1]);
    close(result[0]);
    close(done[1]);
    ck_assert_msg((r[0] == 0 && r[1] == -EBUSY) || (r[0] == -EBUSY && r[1] == 0),
                  "round %d: the contenders got %d and %d", round, r[0], r[1]);
    wins[r[0] == 0 ? 0 : 1]++;
  }
  /* Every winner's block is there. */
  ts_stack *s = ts_test_open(ts_test_dir, json);
  for (int round = 0; round < ROUNDS; round++) {
    unsigned char buf[4096];
    ck_assert_int_eq(ts_pread(ts_stack_dev(s, "v"), buf, sizeof buf, (uint64_t)round * 65536), 0);
    ck_assert_msg(buf[0] == round + 1 && buf[4095] == round + 1, "round %d's block is lost", round);
  }
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  thin_check_clean(ts_test_dir);
  fprintf(stderr, "two_writers_at_once: %d rounds, first child won %d, second %d\n", ROUNDS,
          wins[0], wins[1]);
  free(json);
}
END_TEST

START_TEST(killed_holder_releases_at_once)
{
  char *json = pool_json(&opts);
  int ready[2];
  ck_assert_int_eq(pipe(ready), 0);
  pid_t kid = fork();
  ck_assert_int_ge(kid, 0);
  if (kid == 0) {
    close(ready[0]);
    ts_stack *s = NULL;
    ts_error err = { 0 };
    if (ts_stack_open_string(json, ts_test_dir, NULL, &s, &err))
      _exit(1);
    char buf[65536];
    memset(buf, 0x77, sizeof buf);
    ts_pwrite(ts_stack_dev(s, "v"), buf, sizeof buf, 0, 0);
    ts_flush(ts_stack_dev(s, "v"));
    ts_pwrite(ts_stack_dev(s, "v"), buf, sizeof buf, 1 << 20, 0); /* not flushed */
    if (write(ready[1], "r", 1) != 1)
      _exit(2);
    pause();
    _exit(3);
  }
  close(ready[1]);
  char c;
  ck_assert_int_eq(read(ready[0], &c, 1), 1);
  close(ready[0]);
  ts_stack *s = NULL;
  ts_error err = { 0 };
  ck_assert_int_eq(ts_stack_open_string(json, ts_test_dir, NULL, &s, &err), -EBUSY);
  char *holder = ts_test_fmt("pid %d (", (int)kid);
  ck_assert_msg(strstr(err.msg, holder), "%s", err.msg);
  free(holder);
  kill(kid, SIGKILL);
  ck_assert_int_eq(waitpid(kid, NULL, 0), kid);
  /* No retry, no wait: the kernel dropped the locks with the process. */
  memset(&err, 0, sizeof err);
  ck_assert_msg(ts_stack_open_string(json, ts_test_dir, NULL, &s, &err) == 0, "%s", err.msg);
  unsigned char buf[4096];
  ck_assert_int_eq(ts_pread(ts_stack_dev(s, "v"), buf, sizeof buf, 0), 0);
  ck_assert_uint_eq(buf[0], 0x77);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  thin_check_clean(ts_test_dir);
  free(json);
}
END_TEST

static Suite *suite(void)
{
  Suite *s = suite_create("ownership_race");
  TCase *t = tcase_create("race");
  tcase_add_checked_fixture(t, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_set_timeout(t, 300);
  tcase_add_test(t, two_writers_at_once);
  tcase_add_test(t, killed_holder_releases_at_once);
  suite_add_tcase(s, t);
  return s;
}

int main(void)
{
  ts_test_require_tool("thin_check");
  return ts_test_main(suite());
}
