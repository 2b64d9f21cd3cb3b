/* Non-zero records after the persistent store's end-of-list marker: they are
 * no exceptions, are reported at open, and the next commit writes them out
 * zeroed instead of making them live. */
#include "snaputil.h"

#include <fcntl.h>
#include <unistd.h>

#define CH 4096u

static const char *conf =
    "{\"version\":1,\"layers\":{"
    "\"base\":{\"type\":\"file\",\"path\":\"base.img\"},"
    "\"cow\":{\"type\":\"file\",\"path\":\"cow.img\",\"size\":\"4M\",\"create\":true},"
    "\"origin\":{\"type\":\"snapshot-origin\",\"child\":\"base\"},"
    "\"snap\":{\"type\":\"snapshot\",\"origin\":\"origin\",\"cow\":\"cow\",\"chunk_size\":\"4K\","
    "\"create\":true}}}";

struct events { int stray; char detail[512]; };

static void on_event(ts_stack *s, const char *nodename, const char *event, const char *detail, void *arg)
{
  (void)s;
  struct events *e = arg;
  if (!strcmp(event, "stray-records") && !strcmp(nodename, "snap")) {
    e->stray++;
    snprintf(e->detail, sizeof e->detail, "%s", detail);
  }
}

static void cow_rw(const char *dir, void *buf, size_t len, off_t off, bool wr)
{
  char *p = ts_test_path(dir, "cow.img");
  int fd = open(p, O_RDWR);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(wr ? pwrite(fd, buf, len, off) : pread(fd, buf, len, off), (ssize_t)len);
  close(fd);
  free(p);
}

static void put_record(const char *dir, unsigned idx, uint64_t old, uint64_t new_chunk)
{
  unsigned char r[16];
  for (int i = 0; i < 8; i++) {
    r[i] = (unsigned char)(old >> (8 * i));
    r[8 + i] = (unsigned char)(new_chunk >> (8 * i));
  }
  cow_rw(dir, r, 16, CH + (off_t)idx * 16, true);
}

static void get_record(const char *dir, unsigned idx, uint64_t *old, uint64_t *new_chunk)
{
  unsigned char r[16];
  cow_rw(dir, r, 16, CH + (off_t)idx * 16, false);
  *old = le64_at(r);
  *new_chunk = le64_at(r + 8);
}

START_TEST(stray_records_never_become_live)
{
  const char *dir = ts_test_dir;
  prefill(dir, "base.img", 2 * MiB, 1);
  unsigned char *base0 = malloc(2 * MiB), *buf = malloc(CH);
  ts_test_pattern(base0, 2 * MiB, 1);

  /* One exception (origin chunk 100 -> COW chunk 2). */
  ts_stack *s = snap_open(dir, conf, NULL, NULL);
  ts_test_pattern(buf, CH, 5);
  ck_assert_int_eq(ts_pwrite(node(s, "origin"), buf, CH, 100 * CH, 0), 0);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);

  /* Strays after the marker (record 1): origin chunk 7 -> COW chunk 5 in
   * the marker's block, origin chunk 9 -> COW chunk 6 in the area's last
   * block; COW chunks 5 and 6 hold other data. */
  put_record(dir, 5, 7, 5);
  put_record(dir, 250, 9, 6);
  ts_test_pattern(buf, CH, 77);
  cow_rw(dir, buf, CH, 5 * CH, true);
  cow_rw(dir, buf, CH, 6 * CH, true);

  struct events ev = {0};
  s = snap_open(dir, conf, on_event, &ev);
  ck_assert_int_eq(ev.stray, 1);
  ck_assert_msg(strstr(ev.detail, "2 non-zero records after the end of the list in metadata area 0 (first: record 5)"),
                "%s", ev.detail);
  ck_assert_int_eq(status_int(s, "snap", "stray_records"), 2);
  ck_assert_int_eq(status_int(s, "snap", "exceptions"), 1);
  /* one commit: a new exception in record 1 */
  ts_test_pattern(buf, CH, 6);
  ck_assert_int_eq(ts_pwrite(node(s, "origin"), buf, CH, 50 * CH, 0), 0);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);

  uint64_t o, n;
  get_record(dir, 1, &o, &n);
  ck_assert(o == 50 && n == 3);
  get_record(dir, 5, &o, &n);
  ck_assert_msg(o == 0 && n == 0, "record 5 is (%llu, %llu) on disk", (unsigned long long)o, (unsigned long long)n);
  get_record(dir, 250, &o, &n);
  ck_assert_msg(o == 0 && n == 0, "record 250 is (%llu, %llu) on disk", (unsigned long long)o, (unsigned long long)n);

  /* Reopened: no strays, two exceptions, and chunks 7 and 9 read the
   * origin's old data, not COW chunks 5 and 6. */
  memset(&ev, 0, sizeof ev);
  s = snap_open(dir, conf, on_event, &ev);
  ck_assert_int_eq(ev.stray, 0);
  ck_assert_int_eq(status_int(s, "snap", "stray_records"), 0);
  ck_assert_int_eq(status_int(s, "snap", "exceptions"), 2);
  unsigned char *got = read_all(s, "snap");
  ck_assert(memcmp(got + 7 * CH, base0 + 7 * CH, CH) == 0);
  ck_assert(memcmp(got + 9 * CH, base0 + 9 * CH, CH) == 0);
  ck_assert(memcmp(got, base0, 2 * MiB) == 0);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(got);
  free(buf);
  free(base0);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("snapshot-stray");
  TCase *tc = tcase_create("stray");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_add_test(tc, stray_records_never_become_live);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
