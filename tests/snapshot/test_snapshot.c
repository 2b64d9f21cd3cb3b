/* snapshot and snapshot-origin: every op on both, several snapshots of one
 * origin, reopening, overflow, bad stores, concurrency. Real files below. */
#include "snaputil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#define SIZE (1 * MiB)
#define CH (4 * KiB)

/* base.img (1M, patterned with seed 1), origin over it, snap1 over cow1.img. */
static char *conf1(const char *cow_size, const char *snap_extra)
{
  return ts_test_fmt(
      "{\"version\":1,\"layers\":{"
      "\"base\":{\"type\":\"file\",\"path\":\"base.img\",\"size\":\"1M\"},"
      "\"cow1\":{\"type\":\"file\",\"path\":\"cow1.img\",\"size\":\"%s\",\"create\":true},"
      "\"origin\":{\"type\":\"snapshot-origin\",\"child\":\"base\"},"
      "\"snap1\":{\"type\":\"snapshot\",\"origin\":\"origin\",\"cow\":\"cow1\","
      "\"chunk_size\":\"4K\",\"create\":true%s}},"
      "\"exports\":[\"origin\",\"snap1\"]}",
      cow_size, snap_extra);
}

struct events {
  int invalidated;
  char last_node[64];
  char detail[512];
};

static void on_event(ts_stack *st, const char *nodename, const char *event, const char *detail,
                     void *arg)
{
  struct events *e = arg;
  if (strcmp(event, "invalidated") == 0) {
    e->invalidated++;
    snprintf(e->last_node, sizeof e->last_node, "%s", nodename);
    snprintf(e->detail, sizeof e->detail, "%s", detail);
  }
}

static void write_pattern(ts_dev *d, uint64_t off, uint64_t len, uint64_t seed, unsigned char *model)
{
  unsigned char *b = malloc(len);
  ts_test_pattern(b, len, seed);
  ck_assert_int_eq(ts_pwrite(d, b, len, off, 0), 0);
  if (model)
    memcpy(model + off, b, len);
  free(b);
}

static void assert_contents(ts_stack *s, const char *name, const unsigned char *model)
{
  unsigned char *got = read_all(s, name);
  uint64_t n = ts_dev_size(node(s, name));
  for (uint64_t i = 0; i < n; i++)
    if (got[i] != model[i])
      ck_abort_msg("%s differs from the model at byte %llu", name, (unsigned long long)i);
  free(got);
}

START_TEST(origin_writes_copy_out)
{
  const char *dir = ts_test_dir;
  prefill(dir, "base.img", SIZE, 1);
  unsigned char *snap = malloc(SIZE), *orig = malloc(SIZE);
  ts_test_pattern(snap, SIZE, 1);
  memcpy(orig, snap, SIZE);
  char *json = conf1("1M", "");
  ts_stack *s = snap_open(dir, json, NULL, NULL);
  ts_dev *o = node(s, "origin");
  write_pattern(o, 512, 512, 10, orig);             /* part of chunk 0 */
  write_pattern(o, 3 * CH + 1024, 2 * CH, 11, orig); /* chunks 3, 4, 5 */
  write_pattern(o, 10 * CH, 4 * CH, 12, orig);       /* whole chunks 10..13 */
  write_pattern(o, 3 * CH, 512, 13, orig);           /* chunk 3 again: no new copy */
  assert_contents(s, "origin", orig);
  assert_contents(s, "snap1", snap);
  ck_assert_int_eq(status_int(s, "snap1", "exceptions"), 1 + 3 + 4);
  ck_assert_int_eq(status_int(s, "snap1", "valid"), 1);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);

  s = snap_open(dir, json, NULL, NULL);
  assert_contents(s, "origin", orig);
  assert_contents(s, "snap1", snap);
  ck_assert_int_eq(status_int(s, "snap1", "exceptions"), 8);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(json);
  free(snap);
  free(orig);
}
END_TEST

START_TEST(snapshot_writes)
{
  const char *dir = ts_test_dir;
  prefill(dir, "base.img", SIZE, 1);
  unsigned char *snap = malloc(SIZE), *orig = malloc(SIZE);
  ts_test_pattern(snap, SIZE, 1);
  memcpy(orig, snap, SIZE);
  char *json = conf1("1M", "");
  ts_stack *s = snap_open(dir, json, NULL, NULL);
  ts_dev *sn = node(s, "snap1"), *o = node(s, "origin");
  write_pattern(sn, 5 * CH + 512, 1024, 20, snap);  /* partial: the rest comes from the origin */
  write_pattern(sn, 8 * CH, CH, 21, snap);          /* whole chunk: no copy needed */
  write_pattern(sn, 20 * CH - 512, CH + 1024, 22, snap); /* across chunks 19..21 */
  ck_assert_int_eq(ts_pwrite(sn, snap + 5 * CH, 512, 5 * CH, TS_IO_FUA), 0); /* in place, FUA */
  ck_assert_int_eq(status_int(s, "snap1", "exceptions"), 5);
  ck_assert_int_eq(status_int(s, "snap1", "chunks_copied"), 3); /* 5, 19, 21 */
  /* The origin writing over those chunks copies nothing: they are the snapshot's own. */
  write_pattern(o, 5 * CH, 4 * CH, 23, orig);
  ck_assert_int_eq(status_int(s, "snap1", "exceptions"), 5 + 2); /* 6, 7 */
  assert_contents(s, "snap1", snap);
  assert_contents(s, "origin", orig);
  ck_assert_int_eq(ts_flush(sn), 0);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  s = snap_open(dir, json, NULL, NULL);
  assert_contents(s, "snap1", snap);
  assert_contents(s, "origin", orig);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(json);
  free(snap);
  free(orig);
}
END_TEST

START_TEST(several_snapshots)
{
  const char *dir = ts_test_dir;
  prefill(dir, "base.img", SIZE, 1);
  unsigned char *t0 = malloc(SIZE), *t1, *orig = malloc(SIZE);
  ts_test_pattern(t0, SIZE, 1);
  memcpy(orig, t0, SIZE);
  const char *head =
      "{\"version\":1,\"layers\":{"
      "\"base\":{\"type\":\"file\",\"path\":\"base.img\"},"
      "\"cow1\":{\"type\":\"file\",\"path\":\"cow1.img\",\"size\":\"1M\",\"create\":true},"
      "\"origin\":{\"type\":\"snapshot-origin\",\"child\":\"base\"},"
      "\"snap1\":{\"type\":\"snapshot\",\"origin\":\"origin\",\"cow\":\"cow1\",\"chunk_size\":\"4K\","
      "\"create\":true}";
  char *one = ts_test_fmt("%s}}", head);
  char *two = ts_test_fmt(
      "%s,\"cow2\":{\"type\":\"file\",\"path\":\"cow2.img\",\"size\":\"2M\",\"create\":true},"
      "\"snap2\":{\"type\":\"snapshot\",\"origin\":\"origin\",\"cow\":\"cow2\","
      "\"chunk_size\":\"16K\",\"create\":true},"
      "\"cow3\":{\"type\":\"file\",\"path\":\"cow3.img\",\"size\":\"1M\",\"create\":true},"
      "\"snap3\":{\"type\":\"snapshot\",\"origin\":\"origin\",\"cow\":\"cow3\",\"create\":true}}}",
      head);
  ts_stack *s = snap_open(dir, one, NULL, NULL);
  write_pattern(node(s, "origin"), 100 * KiB, 40 * KiB, 30, orig);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  t1 = malloc(SIZE);
  memcpy(t1, orig, SIZE); /* snap2 and snap3 start from here */

  s = snap_open(dir, two, NULL, NULL);
  ck_assert_int_eq(status_int(s, "snap3", "chunk_size"), 16384); /* the default */
  write_pattern(node(s, "origin"), 90 * KiB, 30 * KiB, 31, orig);
  write_pattern(node(s, "origin"), 500 * KiB, 3 * KiB, 32, orig);
  /* Writing to one snapshot leaves the others alone. */
  unsigned char *t3 = malloc(SIZE);
  memcpy(t3, t1, SIZE);
  write_pattern(node(s, "snap3"), 700 * KiB, 8 * KiB, 33, t3);
  assert_contents(s, "origin", orig);
  assert_contents(s, "snap1", t0);
  assert_contents(s, "snap2", t1);
  assert_contents(s, "snap3", t3);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);

  s = snap_open(dir, two, NULL, NULL);
  assert_contents(s, "origin", orig);
  assert_contents(s, "snap1", t0);
  assert_contents(s, "snap2", t1);
  assert_contents(s, "snap3", t3);
  json_t *st = layer_status(s, "origin");
  ck_assert_uint_eq(json_array_size(json_object_get(st, "snapshots")), 3);
  json_decref(st);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(one);
  free(two);
  free(t0);
  free(t1);
  free(t3);
  free(orig);
}
END_TEST

START_TEST(origin_ops)
{
  const char *dir = ts_test_dir;
  prefill(dir, "base.img", SIZE, 1);
  unsigned char *snap = malloc(SIZE), *orig = malloc(SIZE);
  ts_test_pattern(snap, SIZE, 1);
  memcpy(orig, snap, SIZE);
  char *json = conf1("2M", "");
  ts_stack *s = snap_open(dir, json, NULL, NULL);
  ts_dev *o = node(s, "origin");
  const ts_limits *lim = ts_dev_limits(o);
  ck_assert_int_eq(ts_limits_cap(lim, TS_OP_DISCARD), TS_CAP_NONE);
  ck_assert_int_eq(ts_limits_cap(lim, TS_OP_PROVISION), TS_CAP_NATIVE);
  ck_assert_int_eq(ts_discard(o, 0, CH), -EOPNOTSUPP);
  /* WRITE_ZEROES is a write: the chunks are copied out first. */
  ck_assert_int_eq(ts_write_zeroes(o, 2 * CH + 512, 2 * CH, 0), 0);
  memset(orig + 2 * CH + 512, 0, 2 * CH);
  ck_assert_int_eq(ts_write_zeroes(o, 30 * CH, CH, TS_IO_MAY_UNMAP), 0);
  memset(orig + 30 * CH, 0, CH);
  ck_assert_int_eq(status_int(s, "snap1", "exceptions"), 3 + 1);
  /* PROVISION changes no data: no exception, contents unchanged. */
  ck_assert_int_eq(ts_provision(o, 40 * CH, 8 * CH), 0);
  ck_assert_int_eq(status_int(s, "snap1", "exceptions"), 4);
  ck_assert_int_eq(ts_flush(o), 0);
  write_pattern(o, 0, SIZE, 40, orig); /* everything: copies the remaining chunks */
  ck_assert_int_eq(status_int(s, "snap1", "exceptions"), (long long)(SIZE / CH));
  assert_contents(s, "origin", orig);
  assert_contents(s, "snap1", snap);
  ts_extent_list ext = { 0 };
  ck_assert_int_eq(ts_block_status(o, 0, SIZE, &ext), 0);
  ck_assert_uint_ge(ext.n, 1);
  ck_assert_uint_eq(ext.v[0].flags, 0);
  ts_extent_list_free(&ext);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(json);
  free(snap);
  free(orig);
}
END_TEST

START_TEST(snapshot_ops)
{
  const char *dir = ts_test_dir;
  /* Base: 1M with only its first half written, so block status has holes. */
  {
    char *j = ts_test_fmt("{\"version\":1,\"layers\":{\"f\":{\"type\":\"file\",\"path\":\"base.img\","
                          "\"size\":\"1M\",\"create\":true}}}");
    ts_stack *b = ts_test_open(dir, j);
    unsigned char *h = malloc(SIZE / 2);
    ts_test_pattern(h, SIZE / 2, 1);
    ck_assert_int_eq(ts_pwrite(node(b, "f"), h, SIZE / 2, 0, 0), 0);
    ck_assert_int_eq(ts_stack_close(b, NULL), 0);
    free(h);
    free(j);
  }
  unsigned char *snap = calloc(1, SIZE), *orig;
  ts_test_pattern(snap, SIZE / 2, 1);
  orig = malloc(SIZE);
  memcpy(orig, snap, SIZE);
  char *json = conf1("1M", "");
  ts_stack *s = snap_open(dir, json, NULL, NULL);
  ts_dev *sn = node(s, "snap1");
  const ts_limits *lim = ts_dev_limits(sn);
  ck_assert_int_eq(ts_limits_cap(lim, TS_OP_DISCARD), TS_CAP_NONE);
  ck_assert_int_eq(ts_limits_cap(lim, TS_OP_WRITE_ZEROES), TS_CAP_EMULATE);
  ck_assert_int_eq(ts_limits_cap(lim, TS_OP_PROVISION), TS_CAP_NATIVE);
  ck_assert_uint_eq(lim->provision_granularity, CH);
  ck_assert_uint_eq(lim->size, SIZE);
  ck_assert_int_eq(ts_discard(sn, 0, CH), -EOPNOTSUPP);

  /* WRITE_ZEROES: zero data in exceptions; the origin keeps its data. */
  ck_assert_int_eq(ts_write_zeroes(sn, 3 * CH + 1024, CH, 0), 0);
  memset(snap + 3 * CH + 1024, 0, CH);
  ck_assert_int_eq(status_int(s, "snap1", "exceptions"), 2);

  /* PROVISION: exceptions for chunks 10..19 (and the partial edges), data unchanged. */
  ck_assert_int_eq(ts_provision(sn, 10 * CH + 512, 10 * CH - 1024), 0);
  ck_assert_int_eq(status_int(s, "snap1", "exceptions"), 2 + 10);
  ck_assert_int_eq(ts_provision(sn, 10 * CH, 10 * CH), 0); /* idempotent */
  ck_assert_int_eq(status_int(s, "snap1", "exceptions"), 12);
  /* Provision of never-written origin space: exceptions holding zeroes. */
  ck_assert_int_eq(ts_provision(sn, 200 * CH, 2 * CH), 0);
  assert_contents(s, "snap1", snap);
  assert_contents(s, "origin", orig);

  /* BLOCK_STATUS: exceptions are data; elsewhere what the origin says. */
  ts_extent_list ext = { 0 };
  ck_assert_int_eq(ts_block_status(sn, 198 * CH, 6 * CH, &ext), 0);
  ck_assert_uint_eq(ext.n, 3);
  ck_assert_uint_eq(ext.v[0].offset, 198 * CH);
  ck_assert_uint_eq(ext.v[0].length, 2 * CH);
  ck_assert_uint_eq(ext.v[0].flags, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  ck_assert_uint_eq(ext.v[1].offset, 200 * CH);
  ck_assert_uint_eq(ext.v[1].length, 2 * CH);
  ck_assert_uint_eq(ext.v[1].flags, 0);
  ck_assert_uint_eq(ext.v[2].flags, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  ts_extent_list_free(&ext);
  ck_assert_int_eq(ts_flush(sn), 0);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);

  /* discard_zeroes_cow: whole chunks with exceptions read zeroes afterwards;
   * chunks without keep the origin's data. */
  char *json2 = conf1("1M", ",\"discard_zeroes_cow\":true");
  s = snap_open(dir, json2, NULL, NULL);
  sn = node(s, "snap1");
  ck_assert_int_eq(ts_limits_cap(ts_dev_limits(sn), TS_OP_DISCARD), TS_CAP_NATIVE);
  ck_assert_uint_eq(ts_dev_limits(sn)->discard_granularity, CH);
  ck_assert_int_eq(ts_discard(sn, 10 * CH, 2 * CH), 0);
  memset(snap + 10 * CH, 0, 2 * CH);
  ck_assert_int_eq(ts_discard(sn, 50 * CH, 2 * CH), 0); /* no exceptions there: unchanged */
  ck_assert_int_eq(status_int(s, "snap1", "exceptions"), 14);
  assert_contents(s, "snap1", snap);
  char *line = ts_find_layer_type("snapshot")->dm_table(sn);
  ck_assert_str_eq(line, "0 2048 snapshot <base> <cow1> P 8 1 discard_zeroes_cow");
  free(line);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(json2);
  free(json);
  free(snap);
  free(orig);
}
END_TEST

static uint32_t header_valid(const char *dir, const char *file)
{
  char *p = ts_test_path(dir, file);
  void *data;
  size_t len;
  ck_assert(ts_test_read_file(p, &data, &len));
  uint32_t v = le32_at((unsigned char *)data + 4);
  free(data);
  free(p);
  return v;
}

START_TEST(overflow_by_origin)
{
  const char *dir = ts_test_dir;
  prefill(dir, "base.img", SIZE, 1);
  unsigned char *orig = malloc(SIZE), *snap = malloc(SIZE);
  ts_test_pattern(orig, SIZE, 1);
  memcpy(snap, orig, SIZE);
  /* 64K of COW with 4K chunks: header, area 0 and 14 data chunks. */
  char *json = conf1("64K", "");
  struct events ev = { 0 };
  ts_stack *s = snap_open(dir, json, on_event, &ev);
  ck_assert_int_eq(status_int(s, "snap1", "chunks_total"), 16);
  write_pattern(node(s, "origin"), 0, 14 * CH, 50, orig);
  ck_assert_int_eq(status_int(s, "snap1", "valid"), 1);
  ck_assert_int_eq(ev.invalidated, 0);
  ck_assert_int_eq(ts_pread(node(s, "snap1"), snap, SIZE, 0), 0);
  write_pattern(node(s, "origin"), 14 * CH, 2 * CH, 51, orig); /* no room */
  ck_assert_int_eq(ev.invalidated, 1);
  ck_assert_str_eq(ev.last_node, "snap1");
  ck_assert_msg(strstr(ev.detail, "full") != NULL, "event detail: %s", ev.detail);
  json_t *st = layer_status(s, "snap1");
  ck_assert(json_is_false(json_object_get(st, "valid")));
  ck_assert_str_eq(json_string_value(json_object_get(st, "state")), "invalid");
  ck_assert_str_eq(json_string_value(json_object_get(st, "dm_status")), "Invalid");
  ck_assert_msg(strstr(json_string_value(json_object_get(st, "invalid_reason")), "cow1") != NULL,
                "reason names the COW device");
  json_decref(st);
  ck_assert_uint_eq(header_valid(dir, "cow1.img"), 0);
  unsigned char b[CH];
  ck_assert_int_eq(ts_pread(node(s, "snap1"), b, CH, 0), -EIO);
  ck_assert_int_eq(ts_pwrite(node(s, "snap1"), b, CH, 0, 0), -EIO);
  ck_assert_int_eq(ts_provision(node(s, "snap1"), 0, CH), -EIO);
  /* The origin keeps working. */
  write_pattern(node(s, "origin"), 100 * CH, 3 * CH, 52, orig);
  assert_contents(s, "origin", orig);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);

  s = snap_open(dir, json, on_event, &ev);
  ck_assert_int_eq(status_int(s, "snap1", "valid"), 0);
  ck_assert_int_eq(ts_pread(node(s, "snap1"), b, CH, 0), -EIO);
  write_pattern(node(s, "origin"), 200 * CH, CH, 53, orig);
  assert_contents(s, "origin", orig);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(json);
  free(orig);
  free(snap);
}
END_TEST

START_TEST(overflow_by_snapshot_write)
{
  const char *dir = ts_test_dir;
  prefill(dir, "base.img", SIZE, 1);
  char *json = conf1("64K", "");
  struct events ev = { 0 };
  ts_stack *s = snap_open(dir, json, on_event, &ev);
  unsigned char *b = malloc(16 * CH);
  ts_test_pattern(b, 16 * CH, 60);
  ck_assert_int_eq(ts_pwrite(node(s, "snap1"), b, 14 * CH, 0, 0), 0);
  ck_assert_int_eq(ts_pwrite(node(s, "snap1"), b, CH, 20 * CH, 0), -ENOSPC);
  ck_assert_int_eq(ev.invalidated, 1);
  ck_assert_int_eq(ts_pwrite(node(s, "snap1"), b, CH, 0, 0), -EIO);
  ck_assert_int_eq(ts_pread(node(s, "snap1"), b, CH, 0), -EIO);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  ck_assert_uint_eq(header_valid(dir, "cow1.img"), 0);
  free(b);
  free(json);
}
END_TEST

START_TEST(provision_prevents_overflow)
{
  const char *dir = ts_test_dir;
  prefill(dir, "base.img", SIZE, 1);
  unsigned char *snap = malloc(SIZE), *orig = malloc(SIZE);
  ts_test_pattern(snap, SIZE, 1);
  memcpy(orig, snap, SIZE);
  char *json = conf1("64K", "");
  struct events ev = { 0 };
  ts_stack *s = snap_open(dir, json, on_event, &ev);
  ts_dev *sn = node(s, "snap1");
  /* 14 data chunks: provision 10, then the rest of the space is too small for 10 more. */
  ck_assert_int_eq(ts_provision(sn, 0, 10 * CH), 0);
  ck_assert_int_eq(ts_provision(sn, 100 * CH, 10 * CH), -ENOSPC);
  ck_assert_int_eq(status_int(s, "snap1", "valid"), 1); /* a provision failing does not invalidate */
  ck_assert_int_eq(ev.invalidated, 0);
  ck_assert_int_eq(status_int(s, "snap1", "exceptions"), 14);
  /* Every write to the provisioned range succeeds; so do origin writes there. */
  for (int i = 0; i < 10; i++)
    write_pattern(sn, (uint64_t)i * CH + 512, CH - 1024, 70 + i, snap);
  write_pattern(node(s, "origin"), 0, 10 * CH, 80, orig);
  ck_assert_int_eq(status_int(s, "snap1", "valid"), 1);
  assert_contents(s, "snap1", snap);
  assert_contents(s, "origin", orig);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  s = snap_open(dir, json, on_event, &ev);
  assert_contents(s, "snap1", snap);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  ck_assert_int_eq(ev.invalidated, 0);
  free(json);
  free(snap);
  free(orig);
}
END_TEST

/* Open must fail with `code` and a message containing `needle`, and leave
 * cow1.img byte for byte as it was. */
static void expect_open_error(const char *dir, const char *json, int code, const char *needle)
{
  char *cow = ts_test_path(dir, "cow1.img"), *copy = ts_test_path(dir, "cow1.before");
  char *cmd = ts_test_fmt("cp %s %s", cow, copy);
  ck_assert_int_eq(system(cmd), 0);
  ts_stack *s = NULL;
  ts_error err = { 0 };
  int r = ts_stack_open_string(json, dir, NULL, &s, &err);
  ck_assert_msg(r == code, "expected %s, got %s: %s", ts_err_name(code), ts_err_name(r), err.msg);
  ck_assert_msg(strstr(err.msg, needle) != NULL, "message \"%s\" lacks \"%s\"", err.msg, needle);
  ck_assert_msg(strstr(err.msg, "layers.snap1") != NULL, "message names the layer: %s", err.msg);
  ck_assert_msg(ts_test_files_equal(cow, copy), "the COW file changed");
  free(cow);
  free(copy);
  free(cmd);
}

static void poke(const char *dir, uint64_t off, const void *bytes, size_t n)
{
  char *p = ts_test_path(dir, "cow1.img");
  FILE *f = fopen(p, "r+b");
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(fseek(f, (long)off, SEEK_SET), 0);
  ck_assert_uint_eq(fwrite(bytes, 1, n, f), n);
  fclose(f);
  free(p);
}

/* base.img and an existing cow1.img (its own size), snap1 with `extra`. */
static char *confx(const char *extra)
{
  return ts_test_fmt(
      "{\"version\":1,\"layers\":{\"base\":{\"type\":\"file\",\"path\":\"base.img\"},"
      "\"cow1\":{\"type\":\"file\",\"path\":\"cow1.img\"},"
      "\"origin\":{\"type\":\"snapshot-origin\",\"child\":\"base\"},"
      "\"snap1\":{\"type\":\"snapshot\",\"origin\":\"origin\",\"cow\":\"cow1\"%s}}}",
      extra);
}

START_TEST(bad_stores)
{
  const char *dir = ts_test_dir;
  prefill(dir, "base.img", SIZE, 1);
  char *nocreate = confx(""), *create = confx(",\"create\":true");
  /* A COW whose first word is zero, without "create". */
  prefill(dir, "cow1.img", 256 * KiB, 2);
  static const unsigned char zero4[4] = { 0 };
  poke(dir, 0, zero4, 4);
  expect_open_error(dir, nocreate, -ENOENT, "create");
  /* Not a store at all. */
  char *cmd = ts_test_fmt("rm -f %s/cow1.img", dir);
  ck_assert_int_eq(system(cmd), 0);
  prefill(dir, "cow1.img", 256 * KiB, 3);
  expect_open_error(dir, create, -EUCLEAN, "not a dm-snapshot exception store");

  /* A real store with three exceptions. */
  ck_assert_int_eq(system(cmd), 0);
  char *json = conf1("1M", "");
  ts_stack *s = snap_open(dir, json, NULL, NULL);
  write_pattern(node(s, "origin"), 0, 3 * CH, 90, NULL);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  /* Chunk size mismatch. */
  char *json16 = confx(",\"chunk_size\":\"16K\",\"create\":true");
  expect_open_error(dir, json16, -EINVAL, "does not match the chunk size");
  /* Without chunk_size, the header's is used. */
  s = snap_open(dir, nocreate, NULL, NULL);
  ck_assert_int_eq(status_int(s, "snap1", "chunk_size"), 4096);
  ck_assert_int_eq(status_int(s, "snap1", "exceptions"), 3);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  /* Unknown version. */
  static const unsigned char v2[4] = { 2, 0, 0, 0 }, v1[4] = { 1, 0, 0, 0 };
  poke(dir, 8, v2, 4);
  expect_open_error(dir, create, -EUCLEAN, "version 2");
  poke(dir, 8, v1, 4);
  /* A record pointing past the end of the COW device. */
  unsigned char rec[16] = { 7, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0 };
  poke(dir, CH + 3 * 16, rec, 16);
  expect_open_error(dir, create, -EUCLEAN, "past the device's end");
  /* A record pointing at a metadata chunk. */
  rec[8] = 1;
  rec[9] = 0;
  poke(dir, CH + 3 * 16, rec, 16);
  expect_open_error(dir, create, -EUCLEAN, "metadata chunk");
  /* Two exceptions for one origin chunk. */
  unsigned char dup[16] = { 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0 };
  poke(dir, CH + 3 * 16, dup, 16);
  expect_open_error(dir, create, -EUCLEAN, "two exceptions");
  /* A chunk_size that is not a power of two. */
  char *bad = confx(",\"chunk_size\":\"12K\",\"create\":true");
  expect_open_error(dir, bad, -EINVAL, "power of two");
  /* A snapshot whose origin is not a snapshot-origin. */
  char *noorigin = ts_test_fmt(
      "{\"version\":1,\"layers\":{\"base\":{\"type\":\"file\",\"path\":\"base.img\"},"
      "\"cow1\":{\"type\":\"file\",\"path\":\"cow1.img\"},"
      "\"snap1\":{\"type\":\"snapshot\",\"origin\":\"base\",\"cow\":\"cow1\"}}}");
  expect_open_error(dir, noorigin, -EINVAL, "snapshot-origin");
  /* A read-only COW under a writable origin. */
  char *rocow = ts_test_fmt(
      "{\"version\":1,\"layers\":{\"base\":{\"type\":\"file\",\"path\":\"base.img\"},"
      "\"cow1\":{\"type\":\"file\",\"path\":\"cow1.img\",\"read_only\":true},"
      "\"origin\":{\"type\":\"snapshot-origin\",\"child\":\"base\"},"
      "\"snap1\":{\"type\":\"snapshot\",\"origin\":\"origin\",\"cow\":\"cow1\"}}}");
  expect_open_error(dir, rocow, -EROFS, "read-only");
  free(rocow);
  free(noorigin);
  free(bad);
  free(json16);
  free(cmd);
  free(nocreate);
  free(create);
  free(json);
}
END_TEST

/* Writers hammer the origin (and the snapshot's own chunks) while readers
 * check that the snapshot never shows anything but its frozen contents. */
struct conc {
  ts_stack *s;
  const unsigned char *frozen;
  int id;
  _Atomic int *stop;
  int bad;
};

static void *conc_writer(void *arg)
{
  struct conc *c = arg;
  ts_dev *o = node(c->s, "origin");
  unsigned char buf[3 * CH];
  uint64_t x = (uint64_t)c->id * 7919 + 1;
  for (int i = 0; i < 300; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t off = (x >> 33) % (SIZE / 512 - 24) * 512, len = ((x >> 20) % 24 + 1) * 512;
    ts_test_pattern(buf, len, x);
    if (ts_pwrite(o, buf, len, off, 0))
      c->bad++;
  }
  return NULL;
}

static void *conc_reader(void *arg)
{
  struct conc *c = arg;
  ts_dev *sn = node(c->s, "snap1");
  unsigned char buf[5 * CH];
  uint64_t x = (uint64_t)c->id * 104729 + 3;
  while (!atomic_load(c->stop)) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t off = (x >> 33) % (SIZE / 512 - 40) * 512, len = ((x >> 20) % 40 + 1) * 512;
    if (ts_pread(sn, buf, len, off) || memcmp(buf, c->frozen + off, len) != 0)
      c->bad++;
  }
  return NULL;
}

START_TEST(concurrent_copy_out)
{
  const char *dir = ts_test_dir;
  prefill(dir, "base.img", SIZE, 1);
  unsigned char *frozen = malloc(SIZE);
  ts_test_pattern(frozen, SIZE, 1);
  char *json = conf1("2M", "");
  ts_stack *s = snap_open(dir, json, NULL, NULL);
  _Atomic int stop = 0;
  struct conc w[3], r[2];
  pthread_t tw[3], tr[2];
  for (int i = 0; i < 2; i++) {
    r[i] = (struct conc){ s, frozen, 100 + i, &stop, 0 };
    pthread_create(&tr[i], NULL, conc_reader, &r[i]);
  }
  for (int i = 0; i < 3; i++) {
    w[i] = (struct conc){ s, frozen, i, &stop, 0 };
    pthread_create(&tw[i], NULL, conc_writer, &w[i]);
  }
  for (int i = 0; i < 3; i++)
    pthread_join(tw[i], NULL);
  atomic_store(&stop, 1);
  for (int i = 0; i < 2; i++)
    pthread_join(tr[i], NULL);
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(w[i].bad, 0);
  for (int i = 0; i < 2; i++)
    ck_assert_msg(r[i].bad == 0, "reader %d saw %d bad reads", i, r[i].bad);
  /* One copy per chunk, however many writers raced for it. */
  long long exc = status_int(s, "snap1", "exceptions");
  ck_assert_int_eq(status_int(s, "snap1", "chunks_copied"), exc);
  assert_contents(s, "snap1", frozen);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  s = snap_open(dir, json, NULL, NULL);
  assert_contents(s, "snap1", frozen);
  ck_assert_int_eq(status_int(s, "snap1", "exceptions"), exc);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(json);
  free(frozen);
}
END_TEST

START_TEST(transient_store)
{
  const char *dir = ts_test_dir;
  prefill(dir, "base.img", SIZE, 1);
  unsigned char *orig = malloc(SIZE), *snap = malloc(SIZE);
  ts_test_pattern(orig, SIZE, 1);
  memcpy(snap, orig, SIZE);
  char *json = conf1("256K", ",\"persistent\":false");
  ts_stack *s = snap_open(dir, json, NULL, NULL);
  write_pattern(node(s, "origin"), 8 * CH, 2 * CH, 95, orig);
  write_pattern(node(s, "snap1"), 40 * CH, 512, 96, snap);
  assert_contents(s, "snap1", snap);
  assert_contents(s, "origin", orig);
  ck_assert_int_eq(status_int(s, "snap1", "chunks_used"), 3); /* from chunk 0: no header */
  char *line = ts_find_layer_type("snapshot")->dm_table(node(s, "snap1"));
  ck_assert_str_eq(line, "0 2048 snapshot <base> <cow1> N 8");
  free(line);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  /* Exceptions lived in memory only: reopened, the snapshot shows today's origin. */
  s = snap_open(dir, json, NULL, NULL);
  assert_contents(s, "snap1", orig);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(json);
  free(orig);
  free(snap);
}
END_TEST

START_TEST(dm_table_and_status)
{
  const char *dir = ts_test_dir;
  prefill(dir, "base.img", SIZE, 1);
  char *json = conf1("1M", "");
  ts_stack *s = snap_open(dir, json, NULL, NULL);
  char *line = ts_find_layer_type("snapshot-origin")->dm_table(node(s, "origin"));
  ck_assert_str_eq(line, "0 2048 snapshot-origin <base>");
  free(line);
  line = ts_find_layer_type("snapshot")->dm_table(node(s, "snap1"));
  ck_assert_str_eq(line, "0 2048 snapshot <base> <cow1> P 8");
  free(line);
  write_pattern(node(s, "origin"), 0, 2 * CH, 97, NULL);
  json_t *st = layer_status(s, "snap1");
  /* next_free 4 chunks of 8 sectors, 2048 sectors of COW, header + area 0. */
  ck_assert_str_eq(json_string_value(json_object_get(st, "dm_status")), "32/2048 16");
  ck_assert_str_eq(json_string_value(json_object_get(st, "store")), "persistent");
  ck_assert_int_eq(json_integer_value(json_object_get(st, "chunks_used")), 4);
  ck_assert_int_eq(json_integer_value(json_object_get(st, "chunks_total")), 256);
  json_decref(st);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(json);
}
END_TEST

/* An origin whose size is not a multiple of the chunk size: the last chunk
 * is partial, on both sides. */
START_TEST(partial_last_chunk)
{
  const char *dir = ts_test_dir;
  uint64_t size = SIZE + 1536;
  prefill(dir, "base.img", size, 1);
  unsigned char *snap = malloc(size), *orig = malloc(size);
  ts_test_pattern(snap, size, 1);
  memcpy(orig, snap, size);
  char *json = ts_test_fmt(
      "{\"version\":1,\"layers\":{\"base\":{\"type\":\"file\",\"path\":\"base.img\"},"
      "\"cow1\":{\"type\":\"file\",\"path\":\"cow1.img\",\"size\":\"2M\",\"create\":true},"
      "\"origin\":{\"type\":\"snapshot-origin\",\"child\":\"base\"},"
      "\"snap1\":{\"type\":\"snapshot\",\"origin\":\"origin\",\"cow\":\"cow1\","
      "\"chunk_size\":\"4K\",\"create\":true}}}");
  ts_stack *s = snap_open(dir, json, NULL, NULL);
  ck_assert_uint_eq(ts_dev_size(node(s, "snap1")), size);
  write_pattern(node(s, "origin"), size - 1024, 512, 110, orig);
  write_pattern(node(s, "snap1"), size - 512, 512, 111, snap);
  write_pattern(node(s, "snap1"), size - 1536 - CH, CH, 112, snap);
  ck_assert_int_eq(ts_provision(node(s, "snap1"), 0, size), 0);
  assert_contents(s, "origin", orig);
  assert_contents(s, "snap1", snap);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  s = snap_open(dir, json, NULL, NULL);
  assert_contents(s, "origin", orig);
  assert_contents(s, "snap1", snap);
  ck_assert_int_eq(status_int(s, "snap1", "exceptions"), (long long)(SIZE / CH + 1));
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(json);
  free(snap);
  free(orig);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("snapshot");
  TCase *tc = tcase_create("layers");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, origin_writes_copy_out);
  tcase_add_test(tc, snapshot_writes);
  tcase_add_test(tc, several_snapshots);
  tcase_add_test(tc, origin_ops);
  tcase_add_test(tc, snapshot_ops);
  tcase_add_test(tc, overflow_by_origin);
  tcase_add_test(tc, overflow_by_snapshot_write);
  tcase_add_test(tc, provision_prevents_overflow);
  tcase_add_test(tc, bad_stores);
  tcase_add_test(tc, concurrent_copy_out);
  tcase_add_test(tc, transient_store);
  tcase_add_test(tc, dm_table_and_status);
  tcase_add_test(tc, partial_last_chunk);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
