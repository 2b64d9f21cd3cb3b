/* The persistent store's bytes on the COW file, at the offsets
 * docs/formats/dm-snapshot-persistent.md gives, for a known workload. */
#include "snaputil.h"

#define CH 4096u

static const char *conf =
    "{\"version\":1,\"layers\":{"
    "\"base\":{\"type\":\"file\",\"path\":\"base.img\"},"
    "\"cow\":{\"type\":\"file\",\"path\":\"cow.img\",\"size\":\"4M\",\"create\":true},"
    "\"origin\":{\"type\":\"snapshot-origin\",\"child\":\"base\"},"
    "\"snap\":{\"type\":\"snapshot\",\"origin\":\"origin\",\"cow\":\"cow\",\"chunk_size\":\"4K\","
    "\"create\":true}}}";

static unsigned char *cow_bytes(const char *dir, size_t *len)
{
  char *p = ts_test_path(dir, "cow.img");
  void *data;
  ck_assert(ts_test_read_file(p, &data, len));
  free(p);
  return data;
}

static void assert_record(const unsigned char *cow, uint64_t chunk, unsigned idx, uint64_t old,
                          uint64_t new_chunk)
{
  const unsigned char *r = cow + chunk * CH + (size_t)idx * 16;
  ck_assert_msg(le64_at(r) == old && le64_at(r + 8) == new_chunk,
                "area chunk %llu record %u: (%llu, %llu), expected (%llu, %llu)",
                (unsigned long long)chunk, idx, (unsigned long long)le64_at(r),
                (unsigned long long)le64_at(r + 8), (unsigned long long)old,
                (unsigned long long)new_chunk);
}

START_TEST(known_workload)
{
  const char *dir = ts_test_dir;
  prefill(dir, "base.img", 2 * MiB, 1);
  unsigned char *base0 = malloc(2 * MiB), *buf = malloc(MiB);
  ts_test_pattern(base0, 2 * MiB, 1);

  /* One exception: origin chunk 100 copied to COW chunk 2. */
  ts_stack *s = snap_open(dir, conf, NULL, NULL);
  ts_test_pattern(buf, CH, 5);
  ck_assert_int_eq(ts_pwrite(node(s, "origin"), buf, CH, 100 * CH, 0), 0);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);

  size_t len;
  unsigned char *cow = cow_bytes(dir, &len);
  ck_assert_uint_eq(len, 4 * MiB);
  static const unsigned char header[16] = { 0x53, 0x6e, 0x41, 0x70, 1, 0, 0, 0,
                                            1,    0,    0,    0,    8, 0, 0, 0 };
  ck_assert_mem_eq(cow, header, 16);
  for (size_t i = 16; i < CH; i++)
    ck_assert_msg(cow[i] == 0, "header chunk byte %zu is not zero", i);
  static const unsigned char rec0[16] = { 0x64, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0 };
  ck_assert_mem_eq(cow + 4096, rec0, 16);
  for (size_t i = 4096 + 16; i < 2 * CH; i++)
    ck_assert_msg(cow[i] == 0, "area 0 byte %zu is not zero", i);
  ck_assert_mem_eq(cow + 2 * CH, base0 + 100 * CH, CH); /* the old data */
  free(cow);

  /* 255 more in one write (chunks 0..255 but 100), filling area 0, then one
   * in area 1 (chunk 258), whose data goes to chunk 259. */
  s = snap_open(dir, conf, NULL, NULL);
  ts_test_pattern(buf, MiB, 6);
  ck_assert_int_eq(ts_pwrite(node(s, "origin"), buf, MiB, 0, 0), 0);
  ck_assert_int_eq(ts_pwrite(node(s, "origin"), buf, CH, 300 * CH, 0), 0);
  json_t *st = layer_status(s, "snap");
  /* next_free 260 chunks * 8 sectors / 8192 sectors; header + areas 0 and 1. */
  ck_assert_str_eq(json_string_value(json_object_get(st, "dm_status")), "2080/8192 24");
  ck_assert_int_eq(json_integer_value(json_object_get(st, "exceptions")), 257);
  json_decref(st);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);

  cow = cow_bytes(dir, &len);
  assert_record(cow, 1, 0, 100, 2);
  for (unsigned i = 1; i <= 100; i++)
    assert_record(cow, 1, i, i - 1, i + 2);
  for (unsigned i = 101; i < 256; i++)
    assert_record(cow, 1, i, i, i + 2);
  assert_record(cow, 258, 0, 300, 259);
  assert_record(cow, 258, 1, 0, 0);
  for (unsigned i = 0; i < 256; i++) {
    uint64_t old = i == 0 ? 100 : i <= 100 ? i - 1 : i;
    ck_assert_msg(memcmp(cow + (uint64_t)(i + 2) * CH, base0 + old * CH, CH) == 0,
                  "data chunk %u does not hold origin chunk %llu", i + 2, (unsigned long long)old);
  }
  ck_assert_mem_eq(cow + 259ull * CH, base0 + 300ull * CH, CH);
  free(cow);

  /* And the layer reads it all back. */
  s = snap_open(dir, conf, NULL, NULL);
  unsigned char *got = read_all(s, "snap");
  ck_assert(memcmp(got, base0, 2 * MiB) == 0);
  ck_assert_int_eq(status_int(s, "snap", "exceptions"), 257);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(got);
  free(buf);
  free(base0);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("snapshot-layout");
  TCase *tc = tcase_create("layout");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_add_test(tc, known_workload);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
