/* log-writes: the log's bytes are dm-log-writes' format (super block, then
 * entry blocks each followed by their data), entries come in completion
 * order with the right flags, a full log stops logging without failing a
 * request, and the layer passes everything else through.
 *
 * Method: the log file is read back byte by byte after the stack is closed
 * and compared against the layout of drivers/md/dm-log-writes.c (magic
 * 0x6a736677736872, version 1, little-endian fields, one block per entry).
 * Replay onto a device is checked by tests/integration/log_replay.sh. */
#include "testutil.h"

#include <libthinstack/layer.h>

#include "core/le.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned char *slurp(const char *name, size_t *len)
{
  char *path = ts_test_path(ts_test_dir, name);
  int fd = open(path, O_RDONLY);
  ck_assert_int_ge(fd, 0);
  off_t n = lseek(fd, 0, SEEK_END);
  unsigned char *buf = malloc((size_t)n);
  ck_assert_int_eq(pread(fd, buf, (size_t)n, 0), n);
  close(fd);
  free(path);
  *len = (size_t)n;
  return buf;
}

static const char *stack_json(const char *log_size)
{
  static char buf[1024];
  snprintf(buf, sizeof buf,
           "{ \"version\": 1, \"layers\": {"
           " \"d\": { \"type\": \"file\", \"path\": \"d.img\", \"size\": \"1M\", \"create\": true },"
           " \"log\": { \"type\": \"file\", \"path\": \"log.img\", \"size\": \"%s\", \"create\": true },"
           " \"lw\": { \"type\": \"log-writes\", \"child\": \"d\", \"log\": \"log\" } },"
           " \"exports\": [\"lw\"] }",
           log_size);
  return buf;
}

struct want {
  uint64_t sector, nr, flags;
  const void *data;
  const char *mark;
};

START_TEST(layout_and_order)
{
  ts_stack *s = ts_test_open(ts_test_dir, stack_json("1M"));
  ts_dev *lw = ts_stack_dev(s, "lw");
  ts_error err = { 0 };
  ck_assert_str_eq(ts_dev_type(lw), "log-writes");
  ck_assert_uint_eq(ts_dev_size(lw), 1 << 20);
  unsigned char a[4096], b[1024], back[4096];
  ts_test_pattern(a, sizeof a, 1);
  ts_test_pattern(b, sizeof b, 2);
  ck_assert_int_eq(ts_pwrite(lw, a, sizeof a, 8192, 0), 0);
  ck_assert_int_eq(ts_pwrite(lw, b, sizeof b, 512, TS_IO_FUA), 0);
  ck_assert_int_eq(ts_discard(lw, 65536, 65536), 0);
  ck_assert_int_eq(ts_flush(lw), 0);
  ck_assert_int_eq(ts_dev_message(lw, "mark after-flush", &err), 0);
  /* A mark right after an unflushed write comes before it, as in the kernel. */
  unsigned char c[512];
  ts_test_pattern(c, sizeof c, 3);
  ck_assert_int_eq(ts_pwrite(lw, c, sizeof c, 0, 0), 0);
  ck_assert_int_eq(ts_dev_message(lw, "mark unflushed", &err), 0);
  char *wst = ts_dev_status_json(lw);
  ck_assert_msg(strstr(wst, "\"waiting_for_flush\": 1"), "%s", wst);
  free(wst);
  ck_assert_int_eq(ts_dev_message(lw, "frob", &err), -EINVAL);
  ck_assert_msg(strstr(err.msg, "mark NAME"), "%s", err.msg);
  ck_assert_int_eq(ts_dev_message(ts_stack_node(s, "d"), "mark x", &err), -EOPNOTSUPP);
  ck_assert_msg(strstr(err.msg, "takes no messages"), "%s", err.msg);
  /* WRITE_ZEROES reaches the log as the zero writes the core makes of it. */
  ck_assert_int_eq(ts_write_zeroes(lw, 8192, 1024, 0), 0);
  /* Reads pass through; the child holds what was written. */
  ck_assert_int_eq(ts_pread(lw, back, 4096, 8192), 0);
  ck_assert(memcmp(back, (unsigned char[1024]){ 0 }, 1024) == 0);
  ck_assert_mem_eq(back + 1024, a + 1024, 3072);
  ck_assert_int_eq(ts_pread(lw, back, 1024, 512), 0);
  ck_assert_mem_eq(back, b, 1024);
  char *st = ts_dev_status_json(lw);
  ck_assert_msg(strstr(st, "\"logging\": true"), "%s", st);
  free(st);
  char *table = ts_find_layer_type("log-writes")->dm_table(lw);
  ck_assert_str_eq(table, "0 2048 log-writes <d> <log>");
  free(table);
  ck_assert_int_eq(ts_stack_close(s, &err), 0);

  size_t len;
  unsigned char *log = slurp("log.img", &len);
  ck_assert_uint_eq(ts__le64(log), 0x6a736677736872ull);
  ck_assert_uint_eq(ts__le64(log + 8), 1);
  ck_assert_uint_eq(log[24] | log[25] << 8, 512);
  const unsigned char zeroes[1024] = { 0 };
  /* Plain writes and discards wait for the flush after them; FUA writes
   * and marks are logged at once. */
  const struct want want[] = {
    { 1, 2, 2, b, NULL },           /* FUA, though it completed second */
    { 16, 8, 0, a, NULL },          /* 4K at 8192, logged by the flush */
    { 128, 128, 4, NULL, NULL },    /* discard: no data */
    { 0, 0, 1, NULL, NULL },        /* flush */
    { 0, 0, 8, NULL, "after-flush" },
    { 0, 0, 8, NULL, "unflushed" }, /* before the write it follows */
    { 0, 1, 0, c, NULL },
    { 16, 2, 0, zeroes, NULL },     /* the emulated write-zeroes */
    { 0, 0, 1, NULL, NULL },        /* the flush of the close */
    { 0, 0, 8, NULL, "dm-log-writes-end" },
  };
  size_t n = sizeof want / sizeof want[0];
  ck_assert_uint_eq(ts__le64(log + 16), n);
  size_t at = 512;
  for (size_t i = 0; i < n; i++) {
    const unsigned char *e = log + at;
    ck_assert_msg(ts__le64(e) == want[i].sector && ts__le64(e + 8) == want[i].nr &&
                      ts__le64(e + 16) == want[i].flags,
                  "entry %zu: sector %llu nr %llu flags %llu", i, (unsigned long long)ts__le64(e),
                  (unsigned long long)ts__le64(e + 8), (unsigned long long)ts__le64(e + 16));
    if (want[i].mark) {
      ck_assert_uint_eq(ts__le64(e + 24), strlen(want[i].mark));
      ck_assert(memcmp(e + 32, want[i].mark, strlen(want[i].mark)) == 0);
    } else {
      ck_assert_uint_eq(ts__le64(e + 24), 0);
    }
    at += 512;
    if (want[i].data) {
      ck_assert(memcmp(log + at, want[i].data, want[i].nr * 512) == 0);
      at += want[i].nr * 512;
    }
  }
  /* Nothing after the last entry. */
  for (size_t i = at; i < at + 512; i++)
    ck_assert_uint_eq(log[i], 0);
  free(log);
}
END_TEST

static int full_events;
static void on_event(ts_stack *s, const char *node, const char *event, const char *detail, void *arg)
{
  (void)s;
  (void)detail;
  (void)arg;
  if (!strcmp(node, "lw") && !strcmp(event, "log-full"))
    full_events++;
}

START_TEST(full_log_stops_logging)
{
  /* Room for the super block and exactly one 4K write entry (512 + 4096). */
  ts_open_opts o = { .struct_size = sizeof o, .event = on_event };
  ts_stack *s = NULL;
  ts_error err = { 0 };
  char *json = strdup(stack_json("5120"));
  char *d = ts_test_fmt("%s", ts_test_dir);
  ck_assert_msg(ts_stack_open_string(json, d, &o, &s, &err) == 0, "%s", err.msg);
  ts_dev *lw = ts_stack_dev(s, "lw");
  unsigned char a[4096];
  ts_test_pattern(a, sizeof a, 3);
  ck_assert_int_eq(ts_pwrite(lw, a, sizeof a, 0, 0), 0);
  ck_assert_int_eq(full_events, 0);
  ck_assert_int_eq(ts_pwrite(lw, a, sizeof a, 4096, 0), 0);
  ck_assert_int_eq(full_events, 0); /* both wait for a flush */
  ck_assert_int_eq(ts_flush(lw), 0); /* still succeeds */
  ck_assert_int_eq(full_events, 1);
  ck_assert_int_eq(ts_pwrite(lw, a, sizeof a, 8192, 0), 0);
  ck_assert_int_eq(ts_flush(lw), 0);
  ck_assert_int_eq(full_events, 1); /* once */
  char *st = ts_dev_status_json(lw);
  ck_assert_msg(strstr(st, "\"logging\": false") && strstr(st, "log full"), "%s", st);
  free(st);
  unsigned char back[4096];
  ck_assert_int_eq(ts_pread(lw, back, sizeof back, 8192), 0);
  ck_assert_mem_eq(back, a, sizeof back);
  ck_assert_int_eq(ts_stack_close(s, &err), 0);
  size_t len;
  unsigned char *log = slurp("log.img", &len);
  ck_assert_uint_eq(ts__le64(log + 16), 1); /* the one entry that fit */
  free(log);
  free(json);
  free(d);
}
END_TEST

/* A flush the child fails covers nothing: the writes before it wait, in
 * their order, for the next flush that succeeds. */
START_TEST(failed_flush_keeps_writes_waiting)
{
  const char *json = "{ \"version\": 1, \"layers\": {"
                     " \"f\": { \"type\": \"file\", \"path\": \"d.img\", \"size\": \"1M\", \"create\": true },"
                     " \"d\": { \"type\": \"fault\", \"child\": \"f\","
                     "   \"rules\": [ { \"op\": \"flush\", \"action\": \"error\", \"errno\": \"EIO\", \"count\": 1 } ] },"
                     " \"log\": { \"type\": \"file\", \"path\": \"log.img\", \"size\": \"1M\", \"create\": true },"
                     " \"lw\": { \"type\": \"log-writes\", \"child\": \"d\", \"log\": \"log\" } },"
                     " \"exports\": [\"lw\"] }";
  ts_stack *s = ts_test_open(ts_test_dir, json);
  ts_dev *lw = ts_stack_dev(s, "lw");
  ts_error err = { 0 };
  unsigned char a[512], b[512];
  ts_test_pattern(a, sizeof a, 4);
  ts_test_pattern(b, sizeof b, 5);
  ck_assert_int_eq(ts_pwrite(lw, a, sizeof a, 0, 0), 0);
  ck_assert_int_eq(ts_flush(lw), -EIO);
  ck_assert_int_eq(ts_pwrite(lw, b, sizeof b, 512, 0), 0);
  char *st = ts_dev_status_json(lw);
  ck_assert_msg(strstr(st, "\"waiting_for_flush\": 2") && strstr(st, "\"entries\": 0"), "%s", st);
  free(st);
  ck_assert_int_eq(ts_flush(lw), 0);
  ck_assert_int_eq(ts_stack_close(s, &err), 0);
  size_t len;
  unsigned char *log = slurp("log.img", &len);
  /* a, b, the flush, the flush of the close, the end mark */
  ck_assert_uint_eq(ts__le64(log + 16), 5);
  const unsigned char *e = log + 512;
  ck_assert_uint_eq(ts__le64(e), 0);
  ck_assert_uint_eq(ts__le64(e + 16), 0);
  ck_assert(memcmp(e + 512, a, 512) == 0);
  e += 1024;
  ck_assert_uint_eq(ts__le64(e), 1);
  ck_assert(memcmp(e + 512, b, 512) == 0);
  e += 1024;
  ck_assert_uint_eq(ts__le64(e + 16), 1);
  free(log);
}
END_TEST

START_TEST(bad_configs)
{
  ts_stack *s = NULL;
  ts_error err = { 0 };
  /* A log too small for a super block and one entry block. */
  ck_assert_int_eq(ts_stack_open_string(stack_json("512"), ts_test_dir, NULL, &s, &err), -EINVAL);
  ck_assert_msg(strstr(err.msg, "layers.lw.log") && strstr(err.msg, "smaller than two"), "%s",
                err.msg);
  ck_assert_ptr_null(s);
  /* The log may not be the child. */
  const char *same = "{ \"version\": 1, \"layers\": {"
                     " \"d\": { \"type\": \"file\", \"path\": \"d.img\", \"size\": \"1M\", \"create\": true },"
                     " \"lw\": { \"type\": \"log-writes\", \"child\": \"d\", \"log\": \"d\" } },"
                     " \"exports\": [\"lw\"] }";
  ck_assert_int_eq(ts_stack_open_string(same, ts_test_dir, NULL, &s, &err), -EINVAL);
  ck_assert_ptr_null(s);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("log_writes");
  TCase *tc = tcase_create("log");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_add_test(tc, layout_and_order);
  tcase_add_test(tc, full_log_stops_logging);
  tcase_add_test(tc, failed_flush_keeps_writes_waiting);
  tcase_add_test(tc, bad_configs);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
