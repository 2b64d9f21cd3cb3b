/* The thin volumes' lookup cache (thin.c, lookup_vol): a block's remembered
 * mapping must never outlive a change to it. One thread changes mappings
 * (snapshots that make every block shared, so the next write remaps it;
 * discards, after which a write allocates a new block) while readers look
 * the same blocks up; the pool does not pass discards down, so a freed or
 * shared old block still holds its old data and a stale answer shows as an
 * old version. A sequential case checks each kind of change on its own, and
 * that a repeated lookup is answered without a walk. Built for TSan as well
 * (label "threads"). */
#include "../thin/thin-helpers.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>

#define K64 65536u
#define NB 16     /* blocks the threads share */
#define ROUNDS 48 /* a snapshot every 3rd round, a discard every 3rd */

static const char *const EXTRA = "\"discard_passdown\": false, \"commit_interval\": 0";

static ts_dev *node(ts_stack *s, const char *n)
{
  ts_dev *d = ts_stack_node(s, n);
  ck_assert_ptr_nonnull(d);
  return d;
}

static long long walks(ts_dev *v)
{
  char *st = ts_dev_status_json(v);
  ck_assert_ptr_nonnull(st);
  json_t *j = json_loads(st, 0, NULL);
  free(st);
  ck_assert_ptr_nonnull(j);
  json_t *w = json_object_get(json_object_get(j, "layer"), "lookup_walks");
  ck_assert_msg(json_is_integer(w), "thin status has no lookup_walks");
  long long n = json_integer_value(w);
  json_decref(j);
  return n;
}

/* The first 4K of block b at version r: (b, r) then a pattern of both. */
static void stamp(unsigned char *buf, uint64_t b, uint64_t r)
{
  ts_test_pattern(buf, 4096, b * 1000003 + r);
  memcpy(buf, &b, 8);
  memcpy(buf + 8, &r, 8);
}

/* The version a 4K read holds: 0 for zeroes, -1 when it is neither zeroes
 * nor a whole stamp of block b. */
static int64_t version_of(const unsigned char *buf, uint64_t b)
{
  if (is_zero(buf, 4096))
    return 0;
  uint64_t gb, r;
  memcpy(&gb, buf, 8);
  memcpy(&r, buf + 8, 8);
  unsigned char want[4096];
  stamp(want, b, r);
  return gb == b && r > 0 && r <= ROUNDS && memcmp(buf, want, 4096) == 0 ? (int64_t)r : -1;
}

static void expect_version(ts_dev *v, uint64_t b, int64_t want, const char *what)
{
  unsigned char buf[4096];
  ck_assert_int_eq(ts_pread(v, buf, 4096, b * K64), 0);
  int64_t got = version_of(buf, b);
  ck_assert_msg(got == want, "%s: block %llu holds version %lld, expected %lld", what,
                (unsigned long long)b, (long long)got, (long long)want);
}

static void put_version(ts_dev *v, uint64_t b, uint64_t r)
{
  unsigned char buf[4096];
  stamp(buf, b, r);
  ck_assert_int_eq(ts_pwrite(v, buf, 4096, b * K64, 0), 0);
}

static const char *VOLS_SNAP = "\"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, "
                               "\"size\": \"4M\" }, \"s1\": { \"type\": \"thin\", \"pool\": "
                               "\"pool\", \"id\": 1, \"size\": \"4M\" }";

/* Each change on its own, looked up before and after. */
START_TEST(each_change_invalidates)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .data_size = "16M",
                         .extra = EXTRA,
                         .vols = "\"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, "
                                 "\"size\": \"4M\", \"create\": true }",
                         .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0"), *pool = node(s, "pool");

  /* A repeated lookup of a block is answered without a walk. */
  put_version(v, 3, 1);
  expect_version(v, 3, 1, "written");
  long long w = walks(v);
  for (int i = 0; i < 4; i++)
    expect_version(v, 3, 1, "read again");
  ck_assert_int_eq(walks(v), w);

  /* A snapshot shares the block: the write must not go in place. */
  ts_error e = { 0 };
  ck_assert_msg(ts_pool_create_snap(pool, 1, 0, &e) == 0, "%s", e.msg);
  put_version(v, 3, 2);
  expect_version(v, 3, 2, "written after the snapshot");

  /* A discard unmaps it: zeroes, not the freed block's data. */
  ck_assert_int_eq(ts_discard(v, 3 * K64, K64), 0);
  expect_version(v, 3, 0, "discarded");

  /* An unmapped block remembered as such, then allocated by a write. */
  expect_version(v, 5, 0, "never written");
  put_version(v, 5, 3);
  expect_version(v, 5, 3, "allocated");

  /* Provision maps an unmapped block: writes go to the new block. */
  expect_version(v, 7, 0, "never written");
  ck_assert_int_eq(ts_provision(v, 7 * K64, K64), 0);
  expect_version(v, 7, 0, "provisioned");
  put_version(v, 7, 4);
  expect_version(v, 7, 4, "written after provision");
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);

  /* The snapshot kept version 1, and the origin's changes are in the
   * metadata (not only in what the cache remembered). */
  struct pool_opts o2 = { .data_size = "16M",
                          .extra = EXTRA,
                          .vols = VOLS_SNAP,
                          .exports = "\"v0\", \"s1\"",
                          .no_create = true };
  s = pool_open(dir, &o2);
  expect_version(node(s, "s1"), 3, 1, "snapshot after reopen");
  expect_version(node(s, "v0"), 3, 0, "origin after reopen");
  expect_version(node(s, "v0"), 5, 3, "origin after reopen");
  expect_version(node(s, "v0"), 7, 4, "origin after reopen");
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

struct shared {
  ts_dev *v, *pool;
  _Atomic uint64_t done[NB]; /* the version last written whole */
  _Atomic uint64_t busy[NB]; /* odd while the block is discarded or written */
  _Atomic int stop, bad, reads;
  uint64_t snap_round[ROUNDS + 1]; /* snapshot id 100+k taken before round k */
};

static void *reader(void *arg)
{
  struct shared *sh = arg;
  unsigned char buf[4096];
  uint64_t x = (uint64_t)(uintptr_t)&buf;
  while (!atomic_load(&sh->stop)) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t b = (x >> 33) % NB;
    /* A read beside a write of the same bytes may see either, or a mix:
     * only reads that no change of the block overlapped are checked. */
    uint64_t s1 = atomic_load(&sh->busy[b]);
    if (s1 & 1)
      continue;
    uint64_t lo = atomic_load(&sh->done[b]);
    if (ts_pread(sh->v, buf, 4096, b * K64)) {
      atomic_fetch_add(&sh->bad, 1);
      continue;
    }
    if (atomic_load(&sh->busy[b]) != s1)
      continue;
    int64_t got = version_of(buf, b);
    if (got != (int64_t)lo) {
      fprintf(stderr, "block %llu: read version %lld, version %llu was written last\n",
              (unsigned long long)b, (long long)got, (unsigned long long)lo);
      atomic_fetch_add(&sh->bad, 1);
    }
    atomic_fetch_add(&sh->reads, 1);
  }
  return NULL;
}

/* Concurrent remaps against lookups of the same blocks. */
START_TEST(remaps_against_lookups)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .data_size = "64M",
                         .extra = EXTRA,
                         .vols = "\"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, "
                                 "\"size\": \"4M\", \"create\": true }",
                         .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  static struct shared sh;
  memset(&sh, 0, sizeof sh);
  sh.v = node(s, "v0");
  sh.pool = node(s, "pool");
  for (uint64_t b = 0; b < NB; b++)
    put_version(sh.v, b, 1), atomic_store(&sh.done[b], 1);
  pthread_t t[3];
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(pthread_create(&t[i], NULL, reader, &sh), 0);
  int nsnap = 0;
  for (uint64_t r = 2; r <= ROUNDS; r++) {
    ts_error e = { 0 };
    if (r % 3 == 0) {
      ck_assert_msg(ts_pool_create_snap(sh.pool, (uint32_t)(100 + nsnap), 0, &e) == 0, "%s", e.msg);
      sh.snap_round[nsnap++] = r - 1;
    }
    for (uint64_t b = 0; b < NB; b++) {
      atomic_fetch_add(&sh.busy[b], 1);
      if (r % 3 == 1)
        ck_assert_int_eq(ts_discard(sh.v, b * K64, K64), 0);
      put_version(sh.v, b, r);
      atomic_store(&sh.done[b], r);
      atomic_fetch_add(&sh.busy[b], 1);
    }
    if (r % 8 == 0)
      ck_assert_int_eq(ts_flush(sh.v), 0); /* commits, too */
  }
  atomic_store(&sh.stop, 1);
  for (int i = 0; i < 3; i++)
    pthread_join(t[i], NULL);
  ck_assert_int_eq(atomic_load(&sh.bad), 0);
  ck_assert_int_gt(atomic_load(&sh.reads), 0);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);

  /* Reopened (nothing remembered): the origin holds the last round, each
   * snapshot the round before it was taken. */
  char *vols = ts_test_fmt("\"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, "
                           "\"size\": \"4M\" }");
  for (int k = 0; k < nsnap; k++) {
    char *more = ts_test_fmt("%s, \"s%d\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": %d, "
                             "\"size\": \"4M\" }",
                             vols, k, 100 + k);
    free(vols);
    vols = more;
  }
  struct pool_opts o2 = { .data_size = "64M",
                          .extra = EXTRA,
                          .vols = vols,
                          .exports = "\"v0\"",
                          .no_create = true };
  s = pool_open(dir, &o2);
  free(vols);
  for (uint64_t b = 0; b < NB; b++)
    expect_version(node(s, "v0"), b, ROUNDS, "origin after reopen");
  for (int k = 0; k < nsnap; k++) {
    char name[16];
    snprintf(name, sizeof name, "s%d", k);
    for (uint64_t b = 0; b < NB; b++)
      expect_version(node(s, name), b, (int64_t)sh.snap_round[k], name);
  }
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("lookup-cache");
  TCase *tc = tcase_create("cache");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, each_change_invalidates);
  tcase_add_test(tc, remaps_against_lookups);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
