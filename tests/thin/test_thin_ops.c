/* thin-pool and thin: every operation on unmapped, mapped, shared and
 * provisioned blocks, snapshots, discard accounting, out of space in both
 * modes, the stale-data promise, management calls and their errors. Real
 * files in temporary folders; Debian's thin_check after every workload. */
#include "thin-helpers.h"

#include <jansson.h>
#include <pthread.h>
#include <unistd.h>

#define K64 65536u
#define MIB (1024u * 1024)

static const char *const VOL0 = "\"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"64M\", \"create\": true }";

static void fill(void *buf, size_t len, uint64_t seed) { ts_test_pattern(buf, len, seed); }

static void read_expect(ts_dev *d, uint64_t off, const void *want, size_t len)
{
  void *got = malloc(len);
  ck_assert_int_eq(ts_pread(d, got, len, off), 0);
  ck_assert_msg(memcmp(got, want, len) == 0, "data differs at offset %llu", (unsigned long long)off);
  free(got);
}

static void read_zero(ts_dev *d, uint64_t off, size_t len)
{
  void *got = malloc(len);
  memset(got, 0xAA, len);
  ck_assert_int_eq(ts_pread(d, got, len, off), 0);
  ck_assert_msg(is_zero(got, len), "[%llu,+%zu) does not read as zeroes", (unsigned long long)off, len);
  free(got);
}

static ts_dev *node(ts_stack *s, const char *n)
{
  ts_dev *d = ts_stack_node(s, n);
  ck_assert_ptr_nonnull(d);
  return d;
}

static uint64_t mapped_blocks(ts_dev *pool, uint32_t id)
{
  ts_thin_info v[16];
  size_t n = 0;
  ck_assert_int_eq(ts_pool_list_thins(pool, v, 16, &n, NULL), 0);
  for (size_t i = 0; i < n && i < 16; i++)
    if (v[i].id == id)
      return v[i].mapped_blocks;
  ck_abort_msg("no volume %u", id);
  return 0;
}

/* Limits the thin layer declares. */
START_TEST(limits)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .block_size = "128K", .vols = VOL0, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  const ts_limits *l = ts_dev_limits(node(s, "v0"));
  ck_assert_uint_eq(l->size, 64 * MIB);
  ck_assert_uint_eq(l->provision_granularity, 128 * 1024);
  ck_assert_uint_eq(l->discard_granularity, 128 * 1024);
  ck_assert_uint_gt(l->max_provision_bytes, 0);
  ck_assert_uint_gt(l->max_write_zeroes_bytes, 0);
  ck_assert(l->discard_zeroes);
  ck_assert(l->write_zeroes_unmap);
  ck_assert_uint_eq(ts_dev_size(node(s, "pool")), 0);
  /* The pool node is not a data device; FLUSH works (it commits). */
  char b[512];
  ck_assert_int_eq(ts_pread(node(s, "pool"), b, 512, 0), -EINVAL);
  ck_assert_int_eq(ts_flush(node(s, "pool")), 0);
  close_and_check(s, dir);
}
END_TEST

/* Reads, writes, partial writes, block status on unmapped and mapped blocks. */
START_TEST(unmapped_and_mapped)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .vols = VOL0, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  read_zero(v, 0, 4 * K64);
  ck_assert_uint_eq(extent_flags_at(v, 0, 64 * MIB), TS_EXTENT_HOLE | TS_EXTENT_ZERO);

  /* A partial write into a new block: the rest of the block reads zeroes. */
  char buf[8192];
  memset(buf, 0, sizeof buf);
  fill(buf, 4096, 1);
  ck_assert_int_eq(ts_pwrite(v, buf, 4096, 5 * K64 + 8192, 0), 0);
  read_expect(v, 5 * K64 + 8192, buf, 4096);
  read_zero(v, 5 * K64, 8192);
  read_zero(v, 5 * K64 + 12288, K64 - 12288);
  ck_assert_uint_eq(mapped_blocks(pool, 0), 1);
  ck_assert_uint_eq(extent_flags_at(v, 5 * K64 + 8192, 4096), 0);
  ck_assert_uint_eq(extent_flags_at(v, 5 * K64 + 16384, 4096), TS_EXTENT_ZERO);
  ck_assert_uint_eq(extent_flags_at(v, 6 * K64, K64), TS_EXTENT_HOLE | TS_EXTENT_ZERO);

  /* Overwrite in place: no new block. */
  fill(buf, 512, 2);
  ck_assert_int_eq(ts_pwrite(v, buf, 512, 5 * K64, 0), 0);
  read_expect(v, 5 * K64, buf, 512);
  ck_assert_uint_eq(mapped_blocks(pool, 0), 1);
  ck_assert_uint_eq(pool_status(pool).data_used_blocks, 1);

  /* FUA and FLUSH commit. */
  ck_assert_int_eq(ts_pwrite(v, buf, 512, 9 * K64, TS_IO_FUA), 0);
  ck_assert_uint_ge(pool_status(pool).commits, 1);
  ck_assert_int_eq(ts_flush(v), 0);
  close_and_check(s, dir);

  /* Everything is still there after reopening. */
  s = pool_open(dir, &o);
  v = node(s, "v0");
  read_expect(v, 5 * K64, buf, 512);
  read_expect(v, 9 * K64, buf, 512);
  read_zero(v, 9 * K64 + 512, K64 - 512);
  close_and_check(s, dir);
}
END_TEST

/* Unaligned requests spanning many blocks against a model of the volume. */
START_TEST(unaligned_spans)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .vols = VOL0, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0");
  size_t span = 4 * MIB;
  unsigned char *model = calloc(1, span), *buf = malloc(span), *got = malloc(span);
  uint64_t seed = 7;
  for (int i = 0; i < 60; i++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t off = (seed >> 20) % (span / 512) * 512;
    uint64_t len = ((seed >> 40) % 1500 + 1) * 512;
    if (off + len > span)
      len = span - off;
    fill(buf, len, seed);
    struct iovec iov[3] = { { buf, len / 3 / 512 * 512 },
                            { buf + len / 3 / 512 * 512, 512 },
                            { buf + len / 3 / 512 * 512 + 512, 0 } };
    iov[2].iov_len = len - iov[0].iov_len - iov[1].iov_len;
    if (len < 1024) {
      ck_assert_int_eq(ts_pwrite(v, buf, len, off, 0), 0);
    } else {
      ck_assert_int_eq(ts_pwritev(v, iov, 3, off, 0), 0);
    }
    memcpy(model + off, buf, len);
    if (i % 10 == 9) {
      ck_assert_int_eq(ts_pread(v, got, span, 0), 0);
      ck_assert(memcmp(got, model, span) == 0);
    }
  }
  /* Scattered reads across block edges. */
  struct iovec riov[2] = { { got, 1536 }, { got + 1536, K64 * 3 } };
  ck_assert_int_eq(ts_preadv(v, riov, 2, K64 - 1024), 0);
  ck_assert(memcmp(got, model + K64 - 1024, 1536 + K64 * 3) == 0);
  close_and_check(s, dir);
  s = pool_open(dir, &o);
  ck_assert_int_eq(ts_pread(node(s, "v0"), got, span, 0), 0);
  ck_assert(memcmp(got, model, span) == 0);
  close_and_check(s, dir);
  free(model);
  free(buf);
  free(got);
}
END_TEST

/* PROVISION: allocation without writing, reads of zeroes, idempotence,
 * block status, and passdown to the data file. */
START_TEST(provision_basics)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .vols = VOL0, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  char *data = ts_test_path(dir, "pool.data");
  uint64_t before = ts_test_allocated(data);
  /* Unaligned: the blocks containing the ends are provisioned whole. */
  ck_assert_int_eq(ts_provision(v, K64 + 512, 10 * K64), 0);
  ck_assert_uint_eq(mapped_blocks(pool, 0), 11);
  ck_assert_uint_ge(ts_test_allocated(data) - before, 11 * K64);
  read_zero(v, K64, 11 * K64);
  ck_assert_uint_eq(extent_flags_at(v, K64, 11 * K64), TS_EXTENT_ZERO);
  ck_assert_uint_eq(extent_flags_at(v, 0, K64), TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  /* Idempotent. */
  ck_assert_int_eq(ts_provision(v, K64, 11 * K64), 0);
  ck_assert_uint_eq(mapped_blocks(pool, 0), 11);
  ck_assert_uint_eq(pool_status(pool).data_used_blocks, 11);
  /* Write into a provisioned block: data there, zeroes around. */
  char buf[1024];
  fill(buf, sizeof buf, 3);
  ck_assert_int_eq(ts_pwrite(v, buf, sizeof buf, 3 * K64 + 4096, 0), 0);
  read_expect(v, 3 * K64 + 4096, buf, sizeof buf);
  read_zero(v, 3 * K64, 4096);
  read_zero(v, 3 * K64 + 4096 + 1024, K64 - 4096 - 1024);
  ck_assert_uint_eq(extent_flags_at(v, 3 * K64 + 4096, 1024), 0);
  ck_assert_uint_eq(mapped_blocks(pool, 0), 11);
  /* Provision over a written block keeps its data. */
  ck_assert_int_eq(ts_provision(v, 0, 16 * K64), 0);
  read_expect(v, 3 * K64 + 4096, buf, sizeof buf);
  ck_assert_uint_eq(mapped_blocks(pool, 0), 16);
  close_and_check(s, dir);
  free(data);
}
END_TEST

/* DISCARD and WRITE_ZEROES (with and without MAY_UNMAP) on mapped,
 * provisioned and unmapped blocks, partial ends included. */
START_TEST(discard_and_zeroes)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .vols = VOL0, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  size_t n = 8 * K64;
  unsigned char *buf = malloc(n);
  fill(buf, n, 4);
  ck_assert_int_eq(ts_pwrite(v, buf, n, 0, 0), 0);
  ck_assert_uint_eq(mapped_blocks(pool, 0), 8);

  /* Discard of [0.5 block, 3.5 blocks): blocks 1 and 2 go, the ends stay. */
  ck_assert_int_eq(ts_discard(v, K64 / 2, 3 * K64), 0);
  ck_assert_uint_eq(mapped_blocks(pool, 0), 6);
  read_expect(v, 0, buf, K64);
  read_zero(v, K64, 2 * K64);
  read_expect(v, 3 * K64, buf + 3 * K64, K64);
  ck_assert_uint_eq(extent_flags_at(v, K64, 2 * K64), TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  /* Less than a block: nothing happens. */
  ck_assert_int_eq(ts_discard(v, 4 * K64 + 512, 4096), 0);
  read_expect(v, 4 * K64, buf + 4 * K64, K64);
  /* Discarding unmapped blocks is fine. */
  ck_assert_int_eq(ts_discard(v, 32 * K64, 4 * K64), 0);

  /* WRITE_ZEROES without unmap over written blocks: zeroes, still mapped. */
  ck_assert_int_eq(ts_write_zeroes(v, 4 * K64 + 1024, K64 + 2048, 0), 0);
  read_expect(v, 4 * K64, buf + 4 * K64, 1024);
  read_zero(v, 4 * K64 + 1024, K64 + 2048);
  read_expect(v, 5 * K64 + 3072, buf + 5 * K64 + 3072, K64 - 3072);
  ck_assert_uint_eq(mapped_blocks(pool, 0), 6);
  ck_assert_int_eq(ts_write_zeroes(v, 6 * K64, 2 * K64, 0), 0);
  read_zero(v, 6 * K64, 2 * K64);
  ck_assert_uint_eq(mapped_blocks(pool, 0), 6);
  ck_assert_uint_eq(extent_flags_at(v, 6 * K64, 2 * K64), TS_EXTENT_ZERO);
  /* ... and over unmapped blocks: they become provisioned zeroes. */
  ck_assert_int_eq(ts_write_zeroes(v, 10 * K64 + 512, 3 * K64, 0), 0);
  read_zero(v, 10 * K64, 4 * K64);
  ck_assert_uint_eq(mapped_blocks(pool, 0), 6 + 4);
  ck_assert_uint_eq(extent_flags_at(v, 10 * K64, 4 * K64), TS_EXTENT_ZERO);

  /* WRITE_ZEROES with MAY_UNMAP: whole blocks unmapped, partial ends zeroed
   * in place, unmapped partial ends left unmapped. */
  fill(buf, n, 5);
  ck_assert_int_eq(ts_pwrite(v, buf, 4 * K64, 16 * K64, 0), 0);
  ck_assert_int_eq(ts_write_zeroes(v, 16 * K64 + 4096, 2 * K64, TS_IO_MAY_UNMAP), 0);
  read_expect(v, 16 * K64, buf, 4096);
  read_zero(v, 16 * K64 + 4096, 2 * K64);
  read_expect(v, 18 * K64 + 4096, buf + 2 * K64 + 4096, 2 * K64 - 4096);
  ck_assert_uint_eq(extent_flags_at(v, 17 * K64, K64), TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  uint64_t m = mapped_blocks(pool, 0);
  ck_assert_int_eq(ts_write_zeroes(v, 40 * K64 + 512, K64, TS_IO_MAY_UNMAP), 0);
  ck_assert_uint_eq(mapped_blocks(pool, 0), m);
  /* NOFALLBACK is fine: zeroing is native. */
  ck_assert_int_eq(ts_write_zeroes(v, 50 * K64, 2 * K64, TS_IO_NOFALLBACK), 0);
  read_zero(v, 50 * K64, 2 * K64);
  close_and_check(s, dir);
  free(buf);
}
END_TEST

/* Snapshots: sharing, break on write from either side, discard of shared
 * blocks frees nothing until the last owner lets go. */
START_TEST(snapshots_and_sharing)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .vols = VOL0, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  size_t n = 8 * K64;
  unsigned char *a = malloc(n), *b = malloc(n);
  fill(a, n, 10);
  ck_assert_int_eq(ts_pwrite(v, a, n, 0, 0), 0);
  ts_error e = { 0 };
  ck_assert_msg(ts_pool_create_snap(pool, 1, 0, &e) == 0, "%s", e.msg);
  ck_assert_uint_eq(pool_status(pool).data_used_blocks, 8);
  ck_assert_uint_eq(mapped_blocks(pool, 1), 8);
  /* Write to the origin: the snapshot keeps the old data. */
  fill(b, 4096, 11);
  ck_assert_int_eq(ts_pwrite(v, b, 4096, K64 + 8192, 0), 0);
  ck_assert_uint_eq(pool_status(pool).data_used_blocks, 9);
  read_expect(v, K64 + 8192, b, 4096);
  read_expect(v, K64, a + K64, 8192);
  read_expect(v, K64 + 12288, a + K64 + 12288, K64 - 12288);
  close_and_check(s, dir);

  const char *vols =
      "\"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"64M\" },"
      "\"s1\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"64M\" }";
  struct pool_opts o2 = { .vols = vols, .exports = "\"v0\", \"s1\"" };
  s = pool_open(dir, &o2);
  v = node(s, "v0");
  ts_dev *sn = node(s, "s1");
  pool = node(s, "pool");
  read_expect(sn, 0, a, n);
  read_expect(v, K64 + 8192, b, 4096);
  /* Write to the snapshot: the origin keeps its data. */
  fill(b, K64, 12);
  ck_assert_int_eq(ts_pwrite(sn, b, K64, 2 * K64, 0), 0);
  read_expect(sn, 2 * K64, b, K64);
  read_expect(v, 2 * K64, a + 2 * K64, K64);
  ck_assert_uint_eq(pool_status(pool).data_used_blocks, 10);
  /* Discard shared blocks 4..7 in the origin: nothing is freed. */
  ck_assert_int_eq(ts_discard(v, 4 * K64, 4 * K64), 0);
  read_zero(v, 4 * K64, 4 * K64);
  read_expect(sn, 4 * K64, a + 4 * K64, 4 * K64);
  ck_assert_int_eq(ts_flush(v), 0);
  ck_assert_uint_eq(pool_status(pool).data_used_blocks, 10);
  /* The last owner discards: freed. */
  ck_assert_int_eq(ts_discard(sn, 4 * K64, 4 * K64), 0);
  ck_assert_int_eq(ts_flush(v), 0);
  ck_assert_uint_eq(pool_status(pool).data_used_blocks, 6);
  /* Deleting an open volume is refused. */
  ck_assert_int_eq(ts_pool_delete_thin(pool, 1, &e), -EBUSY);
  ck_assert_ptr_nonnull(strstr(e.msg, "open"));
  close_and_check(s, dir);

  /* Delete the origin: blocks the snapshot still uses stay. */
  struct pool_opts o3 = { 0 };
  s = pool_open(dir, &o3);
  pool = node(s, "pool");
  ck_assert_int_eq(ts_pool_delete_thin(pool, 0, &e), 0);
  /* v0 alone held its copy of block 1 and the old block 2 (which s1
   * replaced); s1 keeps blocks 0, 1, its own 2 and 3. */
  ck_assert_uint_eq(pool_status(pool).data_used_blocks, 4);
  ck_assert_uint_eq(mapped_blocks(pool, 1), 4);
  ck_assert_int_eq(ts_pool_delete_thin(pool, 1, &e), 0);
  ck_assert_uint_eq(pool_status(pool).data_used_blocks, 0);
  close_and_check(s, dir);
  free(a);
  free(b);
}
END_TEST

/* Requests the data layer has seen (every node counts them in its status). */
static void data_ops(ts_stack *s, uint64_t *reads, uint64_t *writes)
{
  char *st = ts_dev_status_json(node(s, "data"));
  ck_assert_ptr_nonnull(st);
  json_t *j = json_loads(st, 0, NULL);
  ck_assert_msg(j != NULL, "status is not JSON: %s", st);
  json_t *req = json_object_get(j, "requests");
  *reads = (uint64_t)json_integer_value(json_object_get(json_object_get(req, "read"), "requests"));
  *writes =
      (uint64_t)json_integer_value(json_object_get(json_object_get(req, "write"), "requests"));
  json_decref(j);
  free(st);
}

/* Partial writes into blocks shared with a snapshot, at a block's head,
 * middle and tail, unaligned, across blocks, and zeroes: both volumes
 * match a model, before and after reopening, and a partly covered shared
 * block costs one read of the old block and one write of the new one. */
START_TEST(partial_writes_into_shared_blocks)
{
  char *dir = ts_test_mkdtemp();
  const size_t n = 16 * K64;
  unsigned char *org = malloc(n), *snap = malloc(n), *buf = malloc(4 * K64);
  fill(org, n, 90);
  struct pool_opts o = { .vols = VOL0, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  ck_assert_int_eq(ts_pwrite(v, org, n, 0, 0), 0);
  ts_error e = { 0 };
  ck_assert_msg(ts_pool_create_snap(pool, 1, 0, &e) == 0, "%s", e.msg);
  memcpy(snap, org, n);

  static const struct {
    uint64_t off, len, reads;
    const char *what;
  } cases[] = {
    { 1 * K64, 4096, 1, "head" },
    { 3 * K64 + 20480, 8192, 1, "middle" },
    { 6 * K64 - 4096, 4096, 1, "tail" },
    { 7 * K64 + 1536, 512, 1, "unaligned" },
    { 9 * K64 + 32768, 2 * K64 + 4096, 2, "across blocks (partial, whole, partial)" },
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint64_t r0, w0, r1, w1;
    fill(buf, cases[i].len, 100 + i);
    data_ops(s, &r0, &w0);
    ck_assert_int_eq(ts_pwrite(v, buf, cases[i].len, cases[i].off, 0), 0);
    data_ops(s, &r1, &w1);
    memcpy(org + cases[i].off, buf, cases[i].len);
    ck_assert_msg(r1 - r0 == cases[i].reads, "%s: %llu data reads, want %llu", cases[i].what,
                  (unsigned long long)(r1 - r0), (unsigned long long)cases[i].reads);
    if (cases[i].reads == 1)
      ck_assert_msg(w1 - w0 == 1, "%s: %llu data writes, want 1", cases[i].what,
                    (unsigned long long)(w1 - w0));
    read_expect(v, 0, org, n);
    read_expect(node(s, "v0"), cases[i].off, buf, cases[i].len);
  }
  /* Zeroes into the middle of a shared block, without unmapping. */
  ck_assert_int_eq(ts_write_zeroes(v, 14 * K64 + 4096, 8192, 0), 0);
  memset(org + 14 * K64 + 4096, 0, 8192);
  read_expect(v, 0, org, n);
  close_and_check(s, dir);

  /* The snapshot reads its old data; writes into its still-shared blocks
   * leave the origin alone. */
  const char *vols =
      "\"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"64M\" },"
      "\"s1\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"64M\" }";
  struct pool_opts o2 = { .vols = vols, .exports = "\"v0\", \"s1\"" };
  s = pool_open(dir, &o2);
  v = node(s, "v0");
  ts_dev *sn = node(s, "s1");
  read_expect(sn, 0, snap, n);
  fill(buf, 12288, 120);
  ck_assert_int_eq(ts_pwrite(sn, buf, 12288, 13 * K64 + 40960, 0), 0);
  memcpy(snap + 13 * K64 + 40960, buf, 12288);
  fill(buf, 4096, 121);
  ck_assert_int_eq(ts_pwrite(sn, buf, 4096, 15 * K64 - 4096, 0), 0);
  memcpy(snap + 15 * K64 - 4096, buf, 4096);
  read_expect(sn, 0, snap, n);
  read_expect(v, 0, org, n);
  close_and_check(s, dir);
  s = pool_open(dir, &o2);
  read_expect(node(s, "s1"), 0, snap, n);
  read_expect(node(s, "v0"), 0, org, n);
  close_and_check(s, dir);
  free(org);
  free(snap);
  free(buf);
  ts_test_rmdir(dir);
  free(dir);
}
END_TEST

/* WRITE_ZEROES (both kinds), PROVISION and BLOCK_STATUS on blocks shared
 * with a snapshot: the snapshot never changes. */
START_TEST(shared_block_ops)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .vols = VOL0, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  size_t n = 8 * K64;
  unsigned char *a = malloc(n);
  fill(a, n, 70);
  ck_assert_int_eq(ts_pwrite(v, a, n, 0, 0), 0);
  ts_error e = { 0 };
  ck_assert_msg(ts_pool_create_snap(pool, 1, 0, &e) == 0, "%s", e.msg);
  ck_assert_uint_eq(extent_flags_at(v, 0, n), 0); /* shared blocks are data */
  /* Zero two whole shared blocks and a partial one, without unmap. */
  ck_assert_int_eq(ts_write_zeroes(v, 0, 2 * K64 + 4096, 0), 0);
  read_zero(v, 0, 2 * K64 + 4096);
  read_expect(v, 2 * K64 + 4096, a + 2 * K64 + 4096, K64 - 4096);
  ck_assert_uint_eq(mapped_blocks(pool, 0), 8);
  ck_assert_uint_eq(extent_flags_at(v, 0, 2 * K64), TS_EXTENT_ZERO);
  /* With MAY_UNMAP: block 4 unmapped, the partial ends zeroed in copies. */
  ck_assert_int_eq(ts_write_zeroes(v, 3 * K64 + 512, 2 * K64, TS_IO_MAY_UNMAP), 0);
  read_expect(v, 3 * K64, a + 3 * K64, 512);
  read_zero(v, 3 * K64 + 512, 2 * K64);
  read_expect(v, 5 * K64 + 512, a + 5 * K64 + 512, K64 - 512);
  ck_assert_uint_eq(extent_flags_at(v, 4 * K64, K64), TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  /* PROVISION of the still-shared blocks copies them. */
  uint64_t used = pool_status(pool).data_used_blocks;
  ck_assert_int_eq(ts_provision(v, 6 * K64, 2 * K64), 0);
  ck_assert_uint_eq(pool_status(pool).data_used_blocks, used + 2);
  read_expect(v, 6 * K64, a + 6 * K64, 2 * K64);
  close_and_check(s, dir);
  const char *vols = "\"s1\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"64M\" }";
  struct pool_opts o2 = { .vols = vols, .exports = "\"s1\"" };
  s = pool_open(dir, &o2);
  read_expect(node(s, "s1"), 0, a, n);
  close_and_check(s, dir);
  free(a);
}
END_TEST

/* PROVISION on a volume whose blocks are shared with a snapshot breaks the
 * sharing, so later writes cannot fail for lack of space; provisioned
 * blocks shared by a later snapshot keep reading as zeroes in both. */
START_TEST(provision_after_snapshot)
{
  const char *dir = ts_test_dir;
  /* 20 blocks of data space. */
  struct pool_opts o = { .data_size = "1280K", .vols = VOL0, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  unsigned char buf[K64];
  ck_assert_int_eq(ts_provision(v, 0, 8 * K64), 0);
  fill(buf, K64, 20);
  ck_assert_int_eq(ts_pwrite(v, buf, 4096, 2 * K64, 0), 0);
  ts_error e = { 0 };
  ck_assert_msg(ts_pool_create_snap(pool, 1, 0, &e) == 0, "%s", e.msg);
  ck_assert_uint_eq(pool_status(pool).data_used_blocks, 8);
  /* Provision again: all 8 blocks are shared now, so 8 private copies. */
  ck_assert_int_eq(ts_provision(v, 0, 8 * K64), 0);
  ck_assert_uint_eq(pool_status(pool).data_used_blocks, 16);
  read_expect(v, 2 * K64, buf, 4096);
  read_zero(v, 2 * K64 + 4096, K64 - 4096);
  read_zero(v, 0, 2 * K64);
  /* Fill the rest of the pool from another volume. */
  ck_assert_int_eq(ts_pool_create_thin(pool, 2, &e), 0);
  ck_assert_int_eq(ts_provision(v, 8 * K64, 4 * K64), 0);
  ck_assert_uint_eq(pool_status(pool).data_free_blocks, 0);
  /* Writes anywhere in the provisioned range still succeed. */
  for (int i = 0; i < 12; i++) {
    fill(buf, K64, 30 + i);
    ck_assert_int_eq(ts_pwrite(v, buf, 1024, (uint64_t)i * K64 + 512, 0), 0);
    read_expect(v, (uint64_t)i * K64 + 512, buf, 1024);
  }
  /* Outside it, the pool is full. */
  ck_assert_int_eq(ts_pwrite(v, buf, 512, 20 * K64, 0), -ENOSPC);
  close_and_check(s, dir);

  /* The snapshot still reads the old contents. */
  const char *vols = "\"s1\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"64M\" }";
  struct pool_opts o2 = { .data_size = "1280K", .vols = vols, .exports = "\"s1\"" };
  s = pool_open(dir, &o2);
  fill(buf, K64, 20);
  read_expect(node(s, "s1"), 2 * K64, buf, 4096);
  read_zero(node(s, "s1"), 0, 2 * K64);
  ck_assert_uint_eq(extent_flags_at(node(s, "s1"), 0, 2 * K64), TS_EXTENT_ZERO);
  close_and_check(s, dir);
}
END_TEST

/* Every extent of [off, off+len) has exactly `flags`, and they cover it. */
static void flags_all(ts_dev *d, uint64_t off, uint64_t len, uint32_t flags)
{
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(d, off, len, &l), 0);
  uint64_t pos = off;
  for (size_t i = 0; i < l.n && pos < off + len; i++) {
    ck_assert_uint_eq(l.v[i].offset, pos);
    ck_assert_msg(l.v[i].flags == flags, "[%llu,+%llu) has flags %u, not %u",
                  (unsigned long long)l.v[i].offset, (unsigned long long)l.v[i].length,
                  l.v[i].flags, flags);
    pos += l.v[i].length;
  }
  ck_assert_uint_ge(pos, off + len);
  ts_extent_list_free(&l);
}

/* A PROVISION larger than one group of 512 MiB: its mappings are inserted
 * group by group while the next group is provisioned below. Shared blocks
 * in several groups keep their data (copied), new blocks read as zeroes,
 * every block is mapped, and the snapshot keeps the old contents. */
START_TEST(provision_in_groups)
{
  const char *dir = ts_test_dir;
  const char *vols =
      "\"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"1536M\", \"create\": true }";
  struct pool_opts o = { .data_size = "1600M", .vols = vols, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  const uint64_t blocks = 24576, at[3] = { 0, 9000, 20000 };
  unsigned char buf[4096];
  for (int i = 0; i < 3; i++) {
    fill(buf, sizeof buf, 50 + (uint64_t)i);
    ck_assert_int_eq(ts_pwrite(v, buf, sizeof buf, at[i] * K64 + 8192, 0), 0);
  }
  ts_error e = { 0 };
  ck_assert_msg(ts_pool_create_snap(pool, 1, 0, &e) == 0, "%s", e.msg);
  ck_assert_int_eq(ts_provision(v, 0, blocks * K64), 0);
  ck_assert_uint_eq(mapped_blocks(pool, 0), blocks);
  ck_assert_uint_eq(pool_status(pool).data_used_blocks, blocks + 3);
  for (int i = 0; i < 3; i++) {
    fill(buf, sizeof buf, 50 + (uint64_t)i);
    read_expect(v, at[i] * K64 + 8192, buf, sizeof buf);
    read_zero(v, at[i] * K64, 8192);
  }
  /* Either side of each group's edge, and the last block. */
  read_zero(v, 8191 * K64, 2 * K64);
  read_zero(v, 16383 * K64, 2 * K64);
  read_zero(v, (blocks - 1) * K64, K64);
  flags_all(v, K64, 1000 * K64, TS_EXTENT_ZERO);
  flags_all(v, 9001 * K64, 1000 * K64, TS_EXTENT_ZERO);
  close_and_check(s, dir);

  const char *snap =
      "\"s1\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"1536M\" }";
  struct pool_opts o2 = { .data_size = "1600M", .vols = snap, .exports = "\"s1\"" };
  s = pool_open(dir, &o2);
  for (int i = 0; i < 3; i++) {
    fill(buf, sizeof buf, 50 + (uint64_t)i);
    read_expect(node(s, "s1"), at[i] * K64 + 8192, buf, sizeof buf);
  }
  flags_all(node(s, "s1"), K64, 8000 * K64, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  close_and_check(s, dir);
}
END_TEST

/* The data layer fails PROVISION from 1 GiB on: the groups below it were
 * reserved and stay mapped, nothing at or past it is mapped, and the
 * blocks allocated for it go back to the pool. */
START_TEST(provision_fails_in_a_later_group)
{
  const char *dir = ts_test_dir;
  char *j = ts_test_fmt(
      "{ \"version\": 1, \"layers\": {"
      " \"meta\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"16M\", \"create\": true },"
      " \"file\": { \"type\": \"file\", \"path\": \"pool.data\", \"size\": \"1536M\", \"create\": true },"
      " \"data\": { \"type\": \"fault\", \"child\": \"file\", \"rules\": [ { \"op\": \"provision\","
      "   \"offset\": \"1G\", \"errno\": \"EIO\" } ] },"
      " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
      "   \"block_size\": \"64K\", \"create\": true },"
      " \"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"1536M\", \"create\": true } },"
      " \"exports\": [\"v0\"] }");
  ts_stack *s = ts_test_open(dir, j);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  ck_assert_int_eq(ts_provision(v, 0, 24576ull * K64), -EIO);
  ck_assert_uint_eq(mapped_blocks(pool, 0), 16384);
  ck_assert_uint_eq(pool_status(pool).data_used_blocks, 16384);
  flags_all(v, 0, 16384ull * K64, TS_EXTENT_ZERO);
  flags_all(v, 16384ull * K64, 8192ull * K64, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  ts_error e = { 0 };
  ck_assert_msg(ts_stack_close(s, &e) == 0, "close: %s", e.msg);
  thin_check_clean(dir);
  free(j);
}
END_TEST

/* out_of_space = error: -ENOSPC, everything else keeps working, a partial
 * PROVISION is visible in block status. */
START_TEST(out_of_space_error)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .data_size = "1M", .vols = VOL0, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  unsigned char buf[K64];
  fill(buf, K64, 40);
  ck_assert_int_eq(ts_pwrite(v, buf, K64, 0, 0), 0);
  /* Provision 20 blocks where 15 are free: 15 get done. */
  ck_assert_int_eq(ts_provision(v, 4 * K64, 20 * K64), -ENOSPC);
  ck_assert(pool_status(pool).out_of_data_space);
  ck_assert_uint_eq(pool_status(pool).data_free_blocks, 0);
  ck_assert_uint_eq(mapped_blocks(pool, 0), 16);
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(v, 4 * K64, 20 * K64, &l), 0);
  ck_assert_uint_eq(l.n, 2);
  ck_assert_uint_eq(l.v[0].length, 15 * K64);
  ck_assert_uint_eq(l.v[0].flags, TS_EXTENT_ZERO);
  ck_assert_uint_eq(l.v[1].flags, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  ts_extent_list_free(&l);
  /* New blocks fail; mapped blocks, reads and discards work. */
  ck_assert_int_eq(ts_pwrite(v, buf, 512, 30 * K64, 0), -ENOSPC);
  read_zero(v, 30 * K64, K64);
  ck_assert_int_eq(ts_pwrite(v, buf, K64, 5 * K64, 0), 0);
  read_expect(v, 5 * K64, buf, K64);
  read_expect(v, 0, buf, K64);
  ck_assert_int_eq(ts_discard(v, 10 * K64, 2 * K64), 0);
  /* Freed blocks become usable after the commit. */
  ck_assert_int_eq(ts_flush(v), 0);
  ck_assert(!pool_status(pool).out_of_data_space);
  ck_assert_int_eq(ts_pwrite(v, buf, 512, 30 * K64, 0), 0);
  close_and_check(s, dir);
}
END_TEST

/* One write that needs more blocks than are free: it takes what is free,
 * fails, gives those back and reports -ENOSPC -- once, not in a loop of
 * commit-and-retry -- and the blocks it gave back serve smaller requests. */
START_TEST(out_of_space_partial_allocation)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .data_size = "4M", .vols = VOL0, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  unsigned char *buf = malloc(16 * K64);
  fill(buf, 16 * K64, 41);
  for (int i = 0; i < 56; i += 8)
    ck_assert_int_eq(ts_pwrite(v, buf, 8 * K64, (uint64_t)i * K64, 0), 0);
  ck_assert_uint_eq(pool_status(pool).data_free_blocks, 8);
  ck_assert_int_eq(ts_pwrite(v, buf, 16 * K64, 64 * K64, 0), -ENOSPC);
  ck_assert_int_eq(ts_provision(v, 64 * K64, 16 * K64), -ENOSPC);
  ck_assert_uint_eq(mapped_blocks(pool, 0), 56 + 8); /* the provision kept what it got */
  ck_assert_int_eq(ts_discard(v, 64 * K64, 16 * K64), 0);
  ck_assert_int_eq(ts_pwrite(v, buf, 8 * K64, 100 * K64, 0), 0);
  read_expect(v, 100 * K64, buf, 8 * K64);
  free(buf);
  close_and_check(s, dir);
}
END_TEST

/* Out of metadata space: a pool with a tiny metadata device fills it with
 * scattered single-block mappings. The write that would eat into the
 * reserve the commits need fails with -ENOSPC; everything acknowledged
 * before it reads back, overwrites and discards go on, the flush after it
 * succeeds (so nothing acknowledged is lost), and the pool reopens with
 * every mapping, thin_check-clean. */
START_TEST(out_of_metadata_space)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = {
    .meta_size = "256K", .data_size = "4G", .exports = "\"v0\"",
    .vols = "\"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"4G\", \"create\": true }",
  };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  unsigned char buf[4096], back[4096];
  /* Blocks 0, 7, 14, ... (mod 65536): scattered, so leaves fill slowly. */
  uint64_t n = 0, blk = 0;
  int r = 0;
  for (; n < 65536; n++) {
    blk = n * 7 % 65536;
    fill(buf, sizeof buf, n);
    r = ts_pwrite(v, buf, sizeof buf, blk * K64, 0);
    if (r)
      break;
    if (n % 500 == 499)
      ck_assert_int_eq(ts_flush(v), 0);
  }
  ck_assert_int_eq(r, -ENOSPC);
  ck_assert_uint_gt(n, 1000);
  char *st = ts_dev_status_json(pool);
  ck_assert_msg(strstr(st, "\"out_of_metadata_space\""), "%s", st);
  free(st);
  /* The failed write left nothing behind; acknowledged ones read back. */
  read_zero(v, blk * K64, 4096);
  fill(buf, sizeof buf, 0);
  read_expect(v, 0, buf, sizeof buf);
  fill(buf, sizeof buf, n - 1);
  read_expect(v, (n - 1) * 7 % 65536 * K64, buf, sizeof buf);
  /* Overwrites of mapped blocks and discards still work, and so does the
   * flush that makes everything durable. */
  fill(buf, sizeof buf, 99999);
  ck_assert_int_eq(ts_pwrite(v, buf, sizeof buf, 7 * K64, 0), 0);
  ck_assert_int_eq(ts_discard(v, 14 * K64, K64), 0);
  ck_assert_int_eq(ts_flush(v), 0);
  ck_assert_int_eq(ts_provision(v, blk * K64, K64), -ENOSPC);
  ts_error e = { 0 };
  ck_assert_int_eq(ts_pool_create_snap(pool, 9, 0, &e), -ENOSPC);
  ck_assert_msg(strstr(e.msg, "ts_pool_extend_metadata"), "%s", e.msg);

  /* Growing the metadata ends it: the refused write now goes through. */
  ck_assert_int_eq(ts_pool_extend_metadata(pool, 128 << 10, &e), -EINVAL); /* shrink */
  ck_assert_int_eq(ts_pool_extend_metadata(pool, (1 << 20) + 512, &e), -EINVAL);
  ck_assert_msg(ts_pool_extend_metadata(pool, 1 << 20, &e) == 0, "%s", e.msg);
  ck_assert_uint_eq(pool_status(pool).metadata_blocks, 256);
  st = ts_dev_status_json(pool);
  ck_assert_msg(!strstr(st, "\"out_of_metadata_space\""), "%s", st);
  free(st);
  fill(back, sizeof back, 424242);
  ck_assert_int_eq(ts_pwrite(v, back, sizeof back, blk * K64, 0), 0);
  ck_assert_msg(ts_stack_close(s, &e) == 0, "close: %s", e.msg);
  thin_check_clean(dir);

  /* Reopened with the file as it now is: every mapping is there. */
  o.no_create = true;
  o.meta_size = "1M";
  s = pool_open(dir, &o);
  v = node(s, "v0");
  ck_assert_uint_eq(mapped_blocks(node(s, "pool"), 0), n);
  read_expect(v, 7 * K64, buf, sizeof buf);
  read_zero(v, 14 * K64, K64);
  read_expect(v, blk * K64, back, sizeof back);
  fill(back, sizeof back, n - 1);
  read_expect(v, (n - 1) * 7 % 65536 * K64, back, sizeof back);
  ck_assert_msg(ts_stack_close(s, &e) == 0, "close: %s", e.msg);

  /* A metadata file grown while the pool was closed is taken in at open. */
  char *meta = ts_test_path(dir, "pool.meta");
  ck_assert_int_eq(truncate(meta, 2 << 20), 0);
  free(meta);
  o.meta_size = "2M";
  s = pool_open(dir, &o);
  ck_assert_uint_eq(pool_status(node(s, "pool")).metadata_blocks, 512);
  close_and_check(s, dir);
}
END_TEST

struct bg_write {
  ts_dev *v;
  uint64_t off;
  int result;
};

static void *bg_write_fn(void *arg)
{
  struct bg_write *w = arg;
  unsigned char buf[4096];
  fill(buf, sizeof buf, w->off);
  w->result = ts_pwrite(w->v, buf, sizeof buf, w->off, 0);
  return NULL;
}

/* out_of_space = queue: a write waits until another thread extends the
 * pool, then succeeds; without an extend it fails after the timeout. */
START_TEST(out_of_space_queue)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .data_size = "256K",
                         .extra = "\"out_of_space\": \"queue\", \"queue_timeout\": 30",
                         .vols = VOL0, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  ck_assert_int_eq(ts_provision(v, 0, 4 * K64), 0);
  struct bg_write w = { v, 10 * K64 + 4096, 1 };
  pthread_t t;
  ck_assert_int_eq(pthread_create(&t, NULL, bg_write_fn, &w), 0);
  /* Wait until the writer is queued. */
  for (int i = 0; i < 2000 && !pool_status(pool).out_of_data_space; i++)
    usleep(5000);
  ck_assert(pool_status(pool).out_of_data_space);
  ts_error e = { 0 };
  ck_assert_msg(ts_pool_extend(pool, 1024 * 1024, &e) == 0, "%s", e.msg);
  pthread_join(t, NULL);
  ck_assert_int_eq(w.result, 0);
  unsigned char buf[4096];
  fill(buf, sizeof buf, w.off);
  read_expect(v, w.off, buf, sizeof buf);
  ts_pool_status st = pool_status(pool);
  ck_assert_uint_eq(st.data_blocks, 16);
  ck_assert(!st.out_of_data_space);
  char *data = ts_test_path(dir, "pool.data");
  struct stat sb;
  ck_assert_int_eq(stat(data, &sb), 0);
  ck_assert_int_eq(sb.st_size, 1024 * 1024);
  free(data);
  close_and_check(s, dir);

  /* The file grew, so the configuration's data size changes. */
  struct pool_opts o2 = { .data_size = "1M",
                          .extra = "\"out_of_space\": \"queue\", \"queue_timeout\": 0.3",
                          .vols = VOL0, .exports = "\"v0\"" };
  s = pool_open(dir, &o2);
  v = node(s, "v0");
  ck_assert_int_eq(ts_provision(v, 20 * K64, 11 * K64), 0);
  ck_assert_int_eq(ts_pwrite(v, buf, 512, 40 * K64, 0), -ENOSPC);
  ck_assert_int_eq(ts_provision(v, 40 * K64, K64), -ENOSPC);
  close_and_check(s, dir);
}
END_TEST

/* No read ever returns another volume's discarded data: write secrets in A,
 * delete (or discard) it, provision and partially write B over the same data
 * blocks, read zeroes. With and without discard passdown (without it, the
 * freed blocks still hold the secrets on the data file). */
static void stale_promise(bool passdown, bool by_delete)
{
  const char *dir = ts_test_dir;
  char extra[128];
  snprintf(extra, sizeof extra, "\"discard_passdown\": %s", passdown ? "true" : "false");
  const char *va = "\"a\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"1M\", \"create\": true }";
  struct pool_opts o = { .data_size = "1M", .extra = extra, .vols = va, .exports = "\"a\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *a = node(s, "a");
  size_t n = 1024 * 1024;
  unsigned char *secret = malloc(n), *got = malloc(n);
  memset(secret, 0x5E, n);
  ck_assert_int_eq(ts_pwrite(a, secret, n, 0, 0), 0);
  ck_assert_int_eq(ts_flush(a), 0);
  if (!by_delete) {
    ck_assert_int_eq(ts_discard(a, 0, n), 0);
    ck_assert_int_eq(ts_flush(a), 0);
  }
  close_and_check(s, dir);
  char *dataf = ts_test_path(dir, "pool.data");
  if (!passdown)
    ck_assert_uint_ge(ts_test_allocated(dataf), n); /* the secrets are still on the file */

  const char *vb = "\"b\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 2, \"size\": \"1M\", \"create\": true }";
  struct pool_opts o2 = { .data_size = "1M", .extra = extra, .vols = vb, .exports = "\"b\"" };
  s = pool_open(dir, &o2);
  ts_dev *pool = node(s, "pool"), *b = node(s, "b");
  ts_error e = { 0 };
  if (by_delete)
    ck_assert_msg(ts_pool_delete_thin(pool, 1, &e) == 0, "%s", e.msg);
  ck_assert_uint_eq(pool_status(pool).data_free_blocks, 16);
  /* B takes every data block: half by provisioning, half by small writes. */
  ck_assert_int_eq(ts_provision(b, 0, n / 2), 0);
  unsigned char small[512];
  memset(small, 0x11, sizeof small);
  for (uint64_t off = n / 2; off < n; off += K64)
    ck_assert_int_eq(ts_pwrite(b, small, sizeof small, off + 4096, 0), 0);
  ck_assert_uint_eq(pool_status(pool).data_free_blocks, 0);
  ck_assert_int_eq(ts_pread(b, got, n, 0), 0);
  for (size_t i = 0; i < n; i++)
    ck_assert_msg(got[i] == 0 || got[i] == 0x11, "stale byte %#x at %zu", got[i], i);
  /* WRITE_ZEROES over it all reads zeroes too. */
  ck_assert_int_eq(ts_write_zeroes(b, 0, n, 0), 0);
  ck_assert_int_eq(ts_pread(b, got, n, 0), 0);
  ck_assert(is_zero(got, n));
  close_and_check(s, dir);
  free(dataf);
  free(secret);
  free(got);
}

START_TEST(stale_data_delete_passdown) { stale_promise(true, true); }
END_TEST
START_TEST(stale_data_delete_no_passdown) { stale_promise(false, true); }
END_TEST
START_TEST(stale_data_discard_passdown) { stale_promise(true, false); }
END_TEST
START_TEST(stale_data_discard_no_passdown) { stale_promise(false, false); }
END_TEST

/* Management calls and their errors; status; reopen checks. */
START_TEST(management)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .vols = VOL0, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *pool = node(s, "pool"), *v = node(s, "v0");
  ts_error e = { 0 };
  ck_assert_int_eq(ts_pool_create_thin(pool, 0, &e), -EEXIST);
  ck_assert_int_eq(ts_pool_create_thin(pool, TS_THIN_MAX_ID + 1, &e), -EINVAL);
  ck_assert_int_eq(ts_pool_create_thin(pool, TS_THIN_MAX_ID, &e), 0);
  ck_assert_int_eq(ts_pool_create_snap(pool, 5, 77, &e), -ENODEV);
  ck_assert_int_eq(ts_pool_create_snap(pool, 0, TS_THIN_MAX_ID, &e), -EEXIST);
  ck_assert_int_eq(ts_pool_delete_thin(pool, 77, &e), -ENODEV);
  ck_assert_int_eq(ts_pool_delete_thin(pool, 0, &e), -EBUSY);
  ck_assert_int_eq(ts_pool_create_thin(v, 3, &e), -EINVAL); /* not a pool */
  ck_assert_ptr_nonnull(strstr(e.msg, "not a thin-pool"));
  /* Transaction ids. */
  ck_assert_int_eq(ts_pool_set_transaction_id(pool, 1, 2, &e), -EINVAL);
  ck_assert_ptr_nonnull(strstr(e.msg, "mismatched transaction id"));
  ck_assert_int_eq(ts_pool_set_transaction_id(pool, 0, 7, &e), 0);
  ck_assert_uint_eq(pool_status(pool).transaction_id, 7);
  /* Metadata snapshot. */
  ck_assert_int_eq(ts_pool_release_metadata_snap(pool, &e), -EINVAL);
  ck_assert_int_eq(ts_pool_reserve_metadata_snap(pool, &e), 0);
  ck_assert_uint_ne(pool_status(pool).held_metadata_root, 0);
  ck_assert_int_eq(ts_pool_reserve_metadata_snap(pool, &e), -EBUSY);
  char *meta = ts_test_path(dir, "pool.meta");
  char *out = NULL;
  ck_assert_int_eq(ts_test_run(&out, "thin_dump -m %s", meta), 0);
  ck_assert_ptr_nonnull(strstr(out, "transaction=\"7\""));
  free(out);
  ck_assert_int_eq(ts_pool_release_metadata_snap(pool, &e), 0);
  /* Listing. */
  ts_thin_info info[4];
  size_t count = 0;
  ck_assert_int_eq(ts_pool_list_thins(pool, info, 1, &count, &e), 0);
  ck_assert_uint_eq(count, 2);
  ck_assert_uint_eq(info[0].id, 0);
  ck_assert(info[0].open);
  ck_assert_uint_eq(info[0].size, 64 * MIB);
  ck_assert_int_eq(ts_pool_list_thins(pool, info, 4, &count, &e), 0);
  ck_assert_uint_eq(info[1].id, TS_THIN_MAX_ID);
  ck_assert(!info[1].open);
  ck_assert_int_eq(ts_pool_delete_thin(pool, TS_THIN_MAX_ID, &e), 0);
  /* Extend errors. */
  ck_assert_int_eq(ts_pool_extend(pool, 100 * MIB + 512, &e), -EINVAL);
  ck_assert_int_eq(ts_pool_extend(pool, 128 * MIB, &e), -EINVAL); /* shrink */
  ck_assert_int_eq(ts_pool_extend(pool, 256 * MIB, &e), 0);       /* no-op */
  char *st = ts_dev_status_json(pool);
  ck_assert_ptr_nonnull(strstr(st, "\"mode\": \"rw\""));
  free(st);
  close_and_check(s, dir);

  /* The same metadata with another block size is refused; so is a blank
   * metadata device without create, and a thin volume that does not exist. */
  struct pool_opts bad = { .block_size = "128K" };
  ts_stack *x = NULL;
  char *j = pool_json(&bad);
  ck_assert_int_eq(ts_test_try_open(dir, j, &x, &e), -EINVAL);
  ck_assert_ptr_nonnull(strstr(e.msg, "layers.pool.block_size"));
  free(j);
  j = ts_test_fmt("{ \"version\": 1, \"layers\": {"
                  " \"meta\": { \"type\": \"file\", \"path\": \"m2\", \"size\": \"4M\", \"create\": true },"
                  " \"data\": { \"type\": \"file\", \"path\": \"d2\", \"size\": \"4M\", \"create\": true },"
                  " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\" } },"
                  " \"exports\": [] }");
  ck_assert_int_eq(ts_test_try_open(dir, j, &x, &e), -ENODATA);
  ck_assert_ptr_nonnull(strstr(e.msg, "layers.pool.metadata"));
  char *m2 = ts_test_path(dir, "m2");
  ck_assert_int_ne(access(m2, F_OK), 0); /* the failed open removed what it created */
  free(m2);
  free(j);
  struct pool_opts o4 = { .vols = "\"v9\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 9, \"size\": \"1M\" }" };
  j = pool_json(&o4);
  ck_assert_int_eq(ts_test_try_open(dir, j, &x, &e), -ENOENT);
  ck_assert_ptr_nonnull(strstr(e.msg, "layers.v9.id"));
  free(j);
  /* Bad parameters. */
  struct pool_opts o5 = { .block_size = "96K" };
  j = pool_json(&o5);
  ck_assert_int_eq(ts_test_try_open(dir, j, &x, &e), -EINVAL);
  ck_assert_ptr_nonnull(strstr(e.msg, "multiple of 64K"));
  free(j);
  struct pool_opts o6 = { .extra = "\"commit_interval\": \"soon\"" };
  j = pool_json(&o6);
  ck_assert_int_eq(ts_test_try_open(dir, j, &x, &e), -EINVAL);
  ck_assert_ptr_nonnull(strstr(e.msg, "layers.pool.commit_interval"));
  free(j);
  struct pool_opts o7 = { .vols = "\"v2\": { \"type\": \"thin\", \"pool\": \"data\", \"id\": 2, \"size\": \"1M\" }" };
  j = pool_json(&o7);
  ck_assert_int_lt(ts_test_try_open(dir, j, &x, &e), 0);
  ck_assert_msg(strstr(e.msg, "layers.v2.pool"), "%s", e.msg);
  free(j);
  thin_check_clean(dir);

  /* A data device that grew while closed is taken into the pool. */
  struct pool_opts big = { .data_size = "512M", .vols = VOL0, .exports = "\"v0\"" };
  char *dataf = ts_test_path(dir, "pool.data");
  ck_assert_int_eq(truncate(dataf, 512 * MIB), 0);
  free(dataf);
  s = pool_open(dir, &big);
  ck_assert_uint_eq(pool_status(node(s, "pool")).data_blocks, 512 * MIB / K64);
  close_and_check(s, dir);
  free(meta);
}
END_TEST

struct events {
  int low_water, oos;
};

static void on_event(ts_stack *s, const char *node_name, const char *event, const char *detail, void *arg)
{
  struct events *ev = arg;
  if (strcmp(event, "low-water-mark") == 0)
    __atomic_add_fetch(&ev->low_water, 1, __ATOMIC_SEQ_CST);
  if (strcmp(event, "out-of-data-space") == 0)
    __atomic_add_fetch(&ev->oos, 1, __ATOMIC_SEQ_CST);
}

/* The low-water-mark event fires once per crossing and shows in status. */
START_TEST(low_water_mark)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .data_size = "1M", .extra = "\"low_water_mark\": \"256K\"", .vols = VOL0,
                         .exports = "\"v0\"" };
  char *j = pool_json(&o);
  struct events ev = { 0, 0 };
  ts_open_opts oo = { .struct_size = sizeof oo, .event = on_event, .event_arg = &ev };
  ts_stack *s = NULL;
  ts_error e = { 0 };
  ck_assert_msg(ts_stack_open_string(j, dir, &oo, &s, &e) == 0, "%s", e.msg);
  free(j);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  ck_assert_int_eq(ts_provision(v, 0, 10 * K64), 0); /* 6 free: above 4 */
  ck_assert_int_eq(ev.low_water, 0);
  ck_assert(!pool_status(pool).low_water);
  ck_assert_int_eq(ts_provision(v, 10 * K64, 3 * K64), 0); /* 3 free: below */
  ck_assert_int_eq(ev.low_water, 1);
  ck_assert(pool_status(pool).low_water);
  ck_assert_int_eq(ts_provision(v, 13 * K64, 2 * K64), 0);
  ck_assert_int_eq(ev.low_water, 1); /* once per crossing */
  char *st = ts_dev_status_json(pool);
  ck_assert_ptr_nonnull(strstr(st, "\"low_water\": true"));
  free(st);
  /* Back above the mark and below again: a second event. */
  ck_assert_int_eq(ts_discard(v, 0, 10 * K64), 0);
  ck_assert_int_eq(ts_flush(v), 0);
  ck_assert(!pool_status(pool).low_water);
  ck_assert_int_eq(ts_provision(v, 0, 10 * K64), 0);
  ck_assert_int_eq(ev.low_water, 2);
  ck_assert_int_eq(ts_provision(v, 20 * K64, 2 * K64), -ENOSPC);
  ck_assert_int_eq(ev.oos, 1);
  close_and_check(s, dir);
}
END_TEST

/* FUA and FLUSH make data and mappings durable: a copy of the files taken
 * right after them (as a crash would leave them) holds the data. */
START_TEST(fua_is_durable)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .extra = "\"commit_interval\": 0", .vols = VOL0, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0");
  unsigned char buf[8192];
  fill(buf, sizeof buf, 50);
  ck_assert_int_eq(ts_pwrite(v, buf, sizeof buf, 3 * K64, TS_IO_FUA), 0);
  ck_assert_int_eq(ts_test_run(NULL, "mkdir %s/copy && cp --sparse=always %s/pool.meta %s/pool.data %s/copy/",
                               dir, dir, dir, dir), 0);
  /* Without a flush, a later write is not in the committed metadata. */
  ck_assert_int_eq(ts_pwrite(v, buf, sizeof buf, 9 * K64, 0), 0);
  ck_assert_int_eq(ts_test_run(NULL, "mkdir %s/copy2 && cp --sparse=always %s/pool.meta %s/pool.data %s/copy2/",
                               dir, dir, dir, dir), 0);
  char *copy = ts_test_path(dir, "copy");
  thin_check_clean(copy);
  ts_stack *c = pool_open(copy, &o);
  read_expect(node(c, "v0"), 3 * K64, buf, sizeof buf);
  ts_stack_close(c, NULL);
  char *copy2 = ts_test_path(dir, "copy2");
  thin_check_clean(copy2);
  c = pool_open(copy2, &o);
  read_zero(node(c, "v0"), 9 * K64, K64);
  ts_stack_close(c, NULL);
  close_and_check(s, dir);
  free(copy);
  free(copy2);
}
END_TEST

/* The metadata superblock as the file holds it now. */
static void read_super(const char *dir, unsigned char *sb)
{
  char *path = ts_test_path(dir, "pool.meta");
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fread(sb, 1, 4096, f), 4096);
  fclose(f);
  free(path);
}

/* The data flush of a commit runs beside its metadata writes. When it
 * fails, the flush returns the error and commits nothing: the superblock on
 * disk is the one before, so a crash then (a copy of the files) finds
 * neither the new mapping nor a damaged pool; the pool stays writable and
 * the next flush commits everything, what came after the failure too. */
START_TEST(commit_data_flush_fails)
{
  const char *dir = ts_test_dir;
  char *j = ts_test_fmt(
      "{ \"version\": 1, \"layers\": {"
      " \"meta\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"16M\", \"create\": true },"
      " \"file\": { \"type\": \"file\", \"path\": \"pool.data\", \"size\": \"256M\", \"create\": true },"
      " \"data\": { \"type\": \"fault\", \"child\": \"file\", \"rules\": [ { \"op\": \"flush\","
      "   \"errno\": \"EIO\", \"after\": 1, \"count\": 1 } ] },"
      " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
      "   \"block_size\": \"64K\", \"create\": true, \"commit_interval\": 0 },"
      " %s }, \"exports\": [\"v0\"] }",
      VOL0);
  ts_stack *s = ts_test_open(dir, j);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  unsigned char a[8192], b[8192], c[8192], sb0[4096], sb1[4096];
  fill(a, sizeof a, 71);
  fill(b, sizeof b, 72);
  fill(c, sizeof c, 73);
  ck_assert_int_eq(ts_pwrite(v, a, sizeof a, 1 * K64, 0), 0);
  ck_assert_int_eq(ts_flush(v), 0);
  uint64_t commits = pool_status(pool).commits;
  read_super(dir, sb0);

  ck_assert_int_eq(ts_pwrite(v, b, sizeof b, 5 * K64, 0), 0);
  ck_assert_int_eq(ts_flush(v), -EIO);
  read_super(dir, sb1);
  ck_assert_msg(memcmp(sb0, sb1, sizeof sb0) == 0, "a failed commit wrote the superblock");
  ts_pool_status st = pool_status(pool);
  ck_assert(!st.failed);
  ck_assert_uint_eq(st.commits, commits);
  ck_assert_int_eq(
      ts_test_run(NULL, "mkdir %s/copy && cp --sparse=always %s/pool.meta %s/pool.data %s/copy/",
                  dir, dir, dir, dir),
      0);
  /* Still readable, and writable. */
  read_expect(v, 5 * K64, b, sizeof b);
  ck_assert_int_eq(ts_pwrite(v, c, sizeof c, 9 * K64, 0), 0);
  ck_assert_int_eq(ts_flush(v), 0);
  ck_assert_uint_eq(pool_status(pool).commits, commits + 1);
  ck_assert_int_eq(
      ts_test_run(NULL, "mkdir %s/copy2 && cp --sparse=always %s/pool.meta %s/pool.data %s/copy2/",
                  dir, dir, dir, dir),
      0);
  ts_error e = { 0 };
  ck_assert_msg(ts_stack_close(s, &e) == 0, "close: %s", e.msg);
  thin_check_clean(dir);
  free(j);

  struct pool_opts o = { .extra = "\"commit_interval\": 0", .vols = VOL0, .exports = "\"v0\"" };
  char *copy = ts_test_path(dir, "copy");
  thin_check_clean(copy);
  ts_stack *cs = pool_open(copy, &o);
  read_expect(node(cs, "v0"), 1 * K64, a, sizeof a);
  read_zero(node(cs, "v0"), 5 * K64, K64);
  ck_assert_uint_eq(mapped_blocks(node(cs, "pool"), 0), 1);
  ts_stack_close(cs, NULL);
  char *copy2 = ts_test_path(dir, "copy2");
  thin_check_clean(copy2);
  cs = pool_open(copy2, &o);
  read_expect(node(cs, "v0"), 1 * K64, a, sizeof a);
  read_expect(node(cs, "v0"), 5 * K64, b, sizeof b);
  read_expect(node(cs, "v0"), 9 * K64, c, sizeof c);
  ck_assert_uint_eq(mapped_blocks(node(cs, "pool"), 0), 3);
  ts_stack_close(cs, NULL);
  free(copy);
  free(copy2);
}
END_TEST

/* A large PROVISION flushes the metadata layer in the background as its
 * mappings are written. When such a flush fails, the commit after it fails
 * too (the file reports the error to that flush alone), the pool refuses
 * changes, and the metadata on disk is still the last commit. */
START_TEST(provision_writeback_flush_fails)
{
  const char *dir = ts_test_dir;
  const char *layers =
      " \"data\": { \"type\": \"zero\", \"size\": \"256G\" },"
      " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
      "   \"block_size\": \"64K\", \"create\": true, \"commit_interval\": 0 },"
      " \"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"256G\", \"create\": true } },"
      " \"exports\": [\"v0\"] }";
  char *j = ts_test_fmt(
      "{ \"version\": 1, \"layers\": {"
      " \"meta\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"256M\", \"create\": true },"
      "%s",
      layers);
  ts_stack *s = ts_test_open(dir, j);
  ck_assert_int_eq(ts_flush(node(s, "v0")), 0);
  close_and_check(s, dir);
  free(j);
  /* Reopened, nothing flushes the metadata before the PROVISION does. */
  j = ts_test_fmt(
      "{ \"version\": 1, \"layers\": {"
      " \"file\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"256M\" },"
      " \"meta\": { \"type\": \"fault\", \"child\": \"file\", \"rules\": [ { \"op\": \"flush\","
      "   \"errno\": \"EIO\", \"count\": 1 } ] },"
      "%s",
      layers);
  s = ts_test_open(dir, j);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  ck_assert_int_eq(ts_provision(v, 0, 256ull << 30), 0);
  ck_assert_int_eq(ts_flush(v), -EIO);
  ck_assert(pool_status(pool).failed);
  ts_stack_close(s, NULL);
  free(j);
  thin_check_clean(dir);
  j = ts_test_fmt("{ \"version\": 1, \"layers\": {"
                  " \"meta\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"256M\" },"
                  "%s",
                  layers);
  s = ts_test_open(dir, j);
  ck_assert_uint_eq(mapped_blocks(node(s, "pool"), 0), 0);
  close_and_check(s, dir);
  free(j);
}
END_TEST

/* 4 KiB blocks of the file that are not all zeroes. */
static uint64_t written_blocks(const char *dir, const char *name)
{
  char *path = ts_test_path(dir, name);
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  static const unsigned char zero[4096];
  unsigned char b[4096];
  uint64_t n = 0;
  while (fread(b, 1, sizeof b, f) == sizeof b)
    n += memcmp(b, zero, sizeof b) != 0;
  fclose(f);
  free(path);
  return n;
}

/* A PROVISION larger than one group writes its metadata blocks while it
 * runs, before any commit, and the flusher syncs them, so that the commit
 * has little left. Until the flush the superblock on disk is the previous
 * commit's: a crash then (a copy of the files) finds a clean pool without
 * the new mappings; after the flush everything is mapped. */
START_TEST(provision_writes_back_before_commit)
{
  const char *dir = ts_test_dir;
  const char *layers =
      " \"data\": { \"type\": \"zero\", \"size\": \"8G\" },"
      " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
      "   \"block_size\": \"64K\", \"create\": true, \"commit_interval\": 0 },"
      " \"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"8G\", \"create\": true } },"
      " \"exports\": [\"v0\"] }";
  char *j = ts_test_fmt(
      "{ \"version\": 1, \"layers\": {"
      " \"meta\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"64M\", \"create\": true },"
      "%s",
      layers);
  ts_stack *s = ts_test_open(dir, j);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  ck_assert_int_eq(ts_flush(v), 0);
  unsigned char sb0[4096], sb1[4096];
  read_super(dir, sb0);
  uint64_t before = written_blocks(dir, "pool.meta");

  /* 8 GiB of 64 KiB blocks: 131072 mappings, ~516 full leaves. */
  ck_assert_int_eq(ts_provision(v, 0, 8ull << 30), 0);
  ck_assert_int_eq(
      ts_test_run(NULL, "mkdir %s/copy && cp --sparse=always %s/pool.meta %s/copy/", dir, dir, dir),
      0);
  read_super(dir, sb1);
  ck_assert_msg(memcmp(sb0, sb1, sizeof sb0) == 0, "the superblock was written before the flush");
  uint64_t early = written_blocks(dir, "pool.meta") - before;
  ck_assert_msg(early >= 400, "only %llu metadata blocks reached the file before the commit",
                (unsigned long long)early);

  ck_assert_int_eq(ts_flush(v), 0);
  ck_assert_uint_eq(mapped_blocks(pool, 0), 131072);
  close_and_check(s, dir);
  free(j);

  char *copy = ts_test_path(dir, "copy");
  thin_check_clean(copy);
  j = ts_test_fmt("{ \"version\": 1, \"layers\": {"
                  " \"meta\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"64M\" },"
                  "%s",
                  layers);
  s = ts_test_open(copy, j);
  ck_assert_uint_eq(mapped_blocks(node(s, "pool"), 0), 0);
  close_and_check(s, copy);
  free(copy);
  free(j);
}
END_TEST

/* Formats a pool of `size` on a zero data layer with metadata of
 * `meta_size`, then reopens it with the (after+1)th metadata write failing
 * and provisions the whole volume: the flush must fail, no superblock may
 * name blocks that may not be on disk, the pool refuses changes, and the
 * pool on disk is the last commit. */
static void provision_write_fault(const char *size, const char *meta_size, uint64_t bytes,
                                  unsigned after)
{
  const char *dir = ts_test_dir;
  char *layers = ts_test_fmt(
      " \"data\": { \"type\": \"zero\", \"size\": \"%s\" },"
      " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
      "   \"block_size\": \"64K\", \"create\": true, \"commit_interval\": 0 },"
      " \"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"%s\", \"create\": true } },"
      " \"exports\": [\"v0\"] }",
      size, size);
  char *j =
      ts_test_fmt("{ \"version\": 1, \"layers\": {"
                  " \"meta\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"%s\","
                  " \"create\": true },%s",
                  meta_size, layers);
  ts_stack *s = ts_test_open(dir, j);
  ck_assert_int_eq(ts_flush(node(s, "v0")), 0);
  close_and_check(s, dir);
  free(j);
  unsigned char sb0[4096], sb1[4096];
  read_super(dir, sb0);
  j = ts_test_fmt(
      "{ \"version\": 1, \"layers\": {"
      " \"file\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"%s\" },"
      " \"meta\": { \"type\": \"fault\", \"child\": \"file\", \"rules\": [ { \"op\": \"write\","
      "   \"errno\": \"EIO\", \"after\": %u, \"count\": 1 } ] },%s",
      meta_size, after, layers);
  s = ts_test_open(dir, j);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  ck_assert_int_eq(ts_provision(v, 0, bytes), 0);
  ck_assert_int_eq(ts_flush(v), -EIO);
  ck_assert(pool_status(pool).failed);
  ts_stack_close(s, NULL);
  free(j);
  read_super(dir, sb1);
  ck_assert_msg(memcmp(sb0, sb1, sizeof sb0) == 0, "a failed commit wrote the superblock");
  thin_check_clean(dir);
  j = ts_test_fmt("{ \"version\": 1, \"layers\": {"
                  " \"meta\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"%s\" },%s",
                  meta_size, layers);
  s = ts_test_open(dir, j);
  ck_assert_uint_eq(mapped_blocks(node(s, "pool"), 0), 0);
  close_and_check(s, dir);
  free(j);
  free(layers);
}

/* The first metadata write of a provision, one of the blocks written back
 * before the commit, fails. */
START_TEST(provision_writeback_write_fails) { provision_write_fault("8G", "64M", 8ull << 30, 0); }
END_TEST

/* A provision larger than the metadata cache: its evicted blocks are
 * written by the block cache's write-back thread, and one of those writes
 * failing (past the early write-back's first 32 MiB, which take 32 or more
 * requests of at most 1 MiB: the 80th write comes from eviction) fails the
 * commit. */
START_TEST(provision_evicted_write_fails)
{
  provision_write_fault("256G", "256M", 256ull << 30, 79);
}
END_TEST

/* The periodic commit makes changes durable without a flush. */
START_TEST(periodic_commit)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .extra = "\"commit_interval\": 0.05", .vols = VOL0, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");
  uint64_t c0 = pool_status(pool).commits;
  ck_assert_int_eq(ts_provision(v, 0, K64), 0);
  for (int i = 0; i < 400 && pool_status(pool).commits == c0; i++)
    usleep(10000);
  ck_assert_uint_gt(pool_status(pool).commits, c0);
  close_and_check(s, dir);
}
END_TEST

/* A read-only pool serves reads, refuses writes and changes nothing. */
START_TEST(read_only_pool)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .vols = VOL0, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  unsigned char buf[4096];
  fill(buf, sizeof buf, 60);
  ck_assert_int_eq(ts_pwrite(node(s, "v0"), buf, sizeof buf, 0, 0), 0);
  close_and_check(s, dir);
  char *meta = ts_test_path(dir, "pool.meta"), *copy = ts_test_path(dir, "meta.before");
  ck_assert_int_eq(ts_test_run(NULL, "cp %s %s", meta, copy), 0);
  const char *ro = "\"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"64M\" }";
  struct pool_opts o2 = { .extra = "\"read_only\": true", .vols = ro, .exports = "\"v0\"" };
  char *j = pool_json(&o2);
  /* "create" with read_only is contradictory. */
  ts_stack *x;
  ts_error e = { 0 };
  ck_assert_int_eq(ts_test_try_open(dir, j, &x, &e), -EINVAL);
  free(j);
  ts_open_opts oo = { .struct_size = sizeof oo, .flags = TS_OPEN_READ_ONLY };
  struct pool_opts o3 = { .vols = ro, .exports = "\"v0\"", .no_create = true };
  j = pool_json(&o3);
  ck_assert_msg(ts_stack_open_string(j, dir, &oo, &x, &e) == 0, "%s", e.msg);
  free(j);
  ts_dev *v = node(x, "v0");
  read_expect(v, 0, buf, sizeof buf);
  ck_assert_int_eq(ts_pwrite(v, buf, 512, K64, 0), -EROFS);
  ck_assert_int_eq(ts_provision(v, 0, K64), -EROFS);
  ck_assert_int_eq(ts_pool_create_thin(node(x, "pool"), 4, &e), -EROFS);
  ck_assert_int_eq(ts_stack_close(x, NULL), 0);
  /* The stack's own config (create: true everywhere) opens read-only too:
   * nothing is missing, so nothing needs creating. */
  j = pool_json(&o);
  ck_assert_msg(ts_stack_open_string(j, dir, &oo, &x, &e) == 0, "%s", e.msg);
  free(j);
  read_expect(node(x, "v0"), 0, buf, sizeof buf);
  ck_assert_int_eq(ts_stack_close(x, NULL), 0);
  ck_assert(ts_test_files_equal(meta, copy));
  free(meta);
  free(copy);
}
END_TEST

int main(void)
{
  require_thin_tools();
  Suite *s = suite_create("thin_ops");
  TCase *t = tcase_create("ops");
  tcase_add_checked_fixture(t, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_set_timeout(t, 120);
  tcase_add_test(t, limits);
  tcase_add_test(t, unmapped_and_mapped);
  tcase_add_test(t, unaligned_spans);
  tcase_add_test(t, provision_basics);
  tcase_add_test(t, discard_and_zeroes);
  tcase_add_test(t, snapshots_and_sharing);
  tcase_add_test(t, shared_block_ops);
  tcase_add_test(t, partial_writes_into_shared_blocks);
  tcase_add_test(t, provision_after_snapshot);
  tcase_add_test(t, provision_in_groups);
  tcase_add_test(t, provision_fails_in_a_later_group);
  tcase_add_test(t, out_of_space_error);
  tcase_add_test(t, out_of_space_partial_allocation);
  tcase_add_test(t, out_of_metadata_space);
  tcase_add_test(t, out_of_space_queue);
  tcase_add_test(t, stale_data_delete_passdown);
  tcase_add_test(t, stale_data_delete_no_passdown);
  tcase_add_test(t, stale_data_discard_passdown);
  tcase_add_test(t, stale_data_discard_no_passdown);
  tcase_add_test(t, management);
  tcase_add_test(t, low_water_mark);
  tcase_add_test(t, fua_is_durable);
  tcase_add_test(t, commit_data_flush_fails);
  tcase_add_test(t, provision_writeback_flush_fails);
  tcase_add_test(t, provision_writes_back_before_commit);
  tcase_add_test(t, provision_writeback_write_fails);
  tcase_add_test(t, provision_evicted_write_fails);
  tcase_add_test(t, periodic_commit);
  tcase_add_test(t, read_only_pool);
  suite_add_tcase(s, t);
  return ts_test_main(s);
}
