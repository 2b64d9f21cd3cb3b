/* thin: randomized write/verify through volumes and their snapshots (every
 * 4 KiB unit tagged with the xxHash of what it must hold), verified after
 * close and reopen; concurrent writers to the same and to different blocks
 * (also while a snapshot is taken); and PROVISION of 1 GiB on a pool over a
 * sparse file, which must reserve and give back real file space. */
#include "thin-helpers.h"

#include <pthread.h>
#include <xxhash.h>

#define K64 65536u
#define UNIT 4096u
#define MIB (1024u * 1024)

static uint64_t zero_hash(void)
{
  static unsigned char z[UNIT];
  return XXH3_64bits(z, UNIT);
}

/* The content of a unit written with tag `t`. */
static void unit_fill(void *buf, uint64_t t) { ts_test_pattern(buf, UNIT, t); }

static uint64_t unit_hash(uint64_t t)
{
  unsigned char b[UNIT];
  unit_fill(b, t);
  return XXH3_64bits(b, UNIT);
}

static ts_dev *node(ts_stack *s, const char *n)
{
  ts_dev *d = ts_stack_node(s, n);
  ck_assert_msg(d != NULL, "no node %s", n);
  return d;
}

/* ------------------------------------------------------------------------ */
/* Randomized workload with a model                                          */

enum { MAXVOL = 8, VOL_UNITS = 2048 /* 8 MiB */ };

struct model {
  bool live[MAXVOL];
  uint64_t h[MAXVOL][VOL_UNITS]; /* expected xxHash of each unit */
};

static uint64_t rng_next(uint64_t *s)
{
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static char *vols_json(const struct model *m)
{
  char *j = ts_test_fmt("%s", "");
  bool first = true;
  for (int i = 0; i < MAXVOL; i++) {
    if (!m->live[i])
      continue;
    char *n = ts_test_fmt("%s%s\"v%d\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": %d, \"size\": %u }",
                          j, first ? "" : ", ", i, i, VOL_UNITS * UNIT);
    free(j);
    j = n;
    first = false;
  }
  return j;
}

static void verify_all(ts_stack *s, const struct model *m)
{
  unsigned char *buf = malloc((size_t)VOL_UNITS * UNIT);
  for (int i = 0; i < MAXVOL; i++) {
    if (!m->live[i])
      continue;
    char name[16];
    snprintf(name, sizeof name, "v%d", i);
    ck_assert_int_eq(ts_pread(node(s, name), buf, (size_t)VOL_UNITS * UNIT, 0), 0);
    for (unsigned u = 0; u < VOL_UNITS; u++)
      ck_assert_msg(XXH3_64bits(buf + (size_t)u * UNIT, UNIT) == m->h[i][u],
                    "volume %d unit %u holds the wrong data", i, u);
  }
  free(buf);
}

/* Random requests to the volumes open in `s` (open[i]). */
static void random_ops(ts_stack *s, struct model *m, const bool *open, uint64_t *seed, int nops)
{
  unsigned char *buf = malloc(64 * UNIT);
  uint64_t zh = zero_hash();
  for (int k = 0; k < nops; k++) {
    int vi;
    do
      vi = (int)(rng_next(seed) % MAXVOL);
    while (!open[vi]);
    char name[16];
    snprintf(name, sizeof name, "v%d", vi);
    ts_dev *d = node(s, name);
    unsigned u0 = (unsigned)(rng_next(seed) % VOL_UNITS);
    unsigned n = 1 + (unsigned)(rng_next(seed) % 40);
    if (u0 + n > VOL_UNITS)
      n = VOL_UNITS - u0;
    uint64_t off = (uint64_t)u0 * UNIT, len = (uint64_t)n * UNIT;
    unsigned op = (unsigned)(rng_next(seed) % 10);
    if (op < 6) {
      for (unsigned i = 0; i < n; i++) {
        uint64_t t = rng_next(seed) | 1;
        unit_fill(buf + (size_t)i * UNIT, t);
        m->h[vi][u0 + i] = XXH3_64bits(buf + (size_t)i * UNIT, UNIT);
      }
      ck_assert_int_eq(ts_pwrite(d, buf, len, off, op == 5 ? TS_IO_FUA : 0), 0);
    } else if (op == 6) {
      /* Discard frees whole blocks only. */
      uint64_t b0 = (off + K64 - 1) / K64, b1 = (off + len) / K64;
      ck_assert_int_eq(ts_discard(d, off, len), 0);
      for (uint64_t b = b0; b < b1; b++)
        for (unsigned i = 0; i < K64 / UNIT; i++)
          m->h[vi][b * (K64 / UNIT) + i] = zh;
    } else if (op == 7 || op == 8) {
      ck_assert_int_eq(ts_write_zeroes(d, off, len, op == 8 ? TS_IO_MAY_UNMAP : 0), 0);
      for (unsigned i = 0; i < n; i++)
        m->h[vi][u0 + i] = zh;
    } else {
      ck_assert_int_eq(ts_provision(d, off, len), 0);
    }
    if (k % 97 == 0)
      ck_assert_int_eq(ts_flush(d), 0);
  }
  free(buf);
}

START_TEST(randomized_with_snapshots)
{
  const char *dir = ts_test_dir;
  static struct model m;
  memset(&m, 0, sizeof m);
  uint64_t zh = zero_hash(), seed = 0x1234567ull + (uint64_t)_i;
  m.live[0] = true;
  for (unsigned u = 0; u < VOL_UNITS; u++)
    m.h[0][u] = zh;
  {
    struct pool_opts o = { .data_size = "128M", .vols = "\"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"8M\", \"create\": true }" };
    close_and_check(pool_open(dir, &o), dir);
  }
  for (int epoch = 0; epoch < 4; epoch++) {
    char *vols = vols_json(&m);
    struct pool_opts o = { .data_size = "128M", .vols = vols };
    ts_stack *s = pool_open(dir, &o);
    bool open[MAXVOL];
    memcpy(open, m.live, sizeof open);
    verify_all(s, &m);
    random_ops(s, &m, open, &seed, 250);
    verify_all(s, &m);
    /* Snapshot one or two live volumes (they are open and written to). */
    ts_dev *pool = node(s, "pool");
    for (int k = 0; k < 2; k++) {
      int free_id = -1, origin;
      for (int i = 0; i < MAXVOL && free_id < 0; i++)
        if (!m.live[i])
          free_id = i;
      if (free_id < 0)
        break;
      do
        origin = (int)(rng_next(&seed) % MAXVOL);
      while (!m.live[origin]);
      ts_error e = { 0 };
      ck_assert_msg(ts_pool_create_snap(pool, (uint32_t)free_id, (uint32_t)origin, &e) == 0, "%s", e.msg);
      m.live[free_id] = true;
      memcpy(m.h[free_id], m.h[origin], sizeof m.h[0]);
    }
    /* Keep writing to the origins after the snapshots. */
    random_ops(s, &m, open, &seed, 150);
    close_and_check(s, dir);
    free(vols);

    /* Delete a volume now and then, from a stack that does not open it. */
    int live = 0;
    for (int i = 0; i < MAXVOL; i++)
      live += m.live[i];
    if (live > 3) {
      int victim;
      do
        victim = (int)(rng_next(&seed) % MAXVOL);
      while (!m.live[victim]);
      struct pool_opts po = { .data_size = "128M" };
      s = pool_open(dir, &po);
      ck_assert_int_eq(ts_pool_delete_thin(node(s, "pool"), (uint32_t)victim, NULL), 0);
      m.live[victim] = false;
      close_and_check(s, dir);
    }
    /* Reopen and verify what the last stack left. */
    vols = vols_json(&m);
    struct pool_opts o2 = { .data_size = "128M", .vols = vols };
    s = pool_open(dir, &o2);
    verify_all(s, &m);
    close_and_check(s, dir);
    free(vols);
  }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Concurrent writers                                                        */

enum { THREADS = 4, CVOL_UNITS = 4096 /* 16 MiB */, SAME_BLOCKS = 8, HIST = 400 };

struct shared_state {
  ts_dev *v;
  /* Units written by each thread in the "same blocks" phase, with the
   * history of tags per unit, to check a snapshot taken mid-way. */
  uint64_t last[CVOL_UNITS];
  uint64_t hist[SAME_BLOCKS * (K64 / UNIT)][HIST];
  unsigned nhist[SAME_BLOCKS * (K64 / UNIT)];
};

struct worker {
  struct shared_state *st;
  int id;
  int errors;
  uint64_t seed;
};

/* Phase 1: thread t owns the blocks b < 64 with b % THREADS == t and does
 * everything to them: partial writes, discards, zeroing, provisioning. */
static void *own_blocks(void *arg)
{
  struct worker *w = arg;
  unsigned char buf[8 * UNIT];
  for (int k = 0; k < 300; k++) {
    /* Blocks 0..63: the same-blocks phase uses 64..71. */
    uint64_t b = (rng_next(&w->seed) % (64 / THREADS)) * THREADS + (uint64_t)w->id;
    unsigned u = (unsigned)(b * (K64 / UNIT) + rng_next(&w->seed) % (K64 / UNIT));
    unsigned n = 1 + (unsigned)(rng_next(&w->seed) % 8);
    if ((u % (K64 / UNIT)) + n > K64 / UNIT)
      n = K64 / UNIT - u % (K64 / UNIT);
    unsigned op = (unsigned)(rng_next(&w->seed) % 8);
    int r = 0;
    if (op < 5) {
      for (unsigned i = 0; i < n; i++) {
        uint64_t t = rng_next(&w->seed) | 1;
        unit_fill(buf + i * UNIT, t);
        w->st->last[u + i] = t;
      }
      r = ts_pwrite(w->st->v, buf, (size_t)n * UNIT, (uint64_t)u * UNIT, 0);
    } else if (op == 5) {
      r = ts_discard(w->st->v, b * K64, K64);
      for (unsigned i = 0; i < K64 / UNIT; i++)
        w->st->last[b * (K64 / UNIT) + i] = 0;
    } else if (op == 6) {
      r = ts_write_zeroes(w->st->v, (uint64_t)u * UNIT, (uint64_t)n * UNIT, k % 2 ? TS_IO_MAY_UNMAP : 0);
      for (unsigned i = 0; i < n; i++)
        w->st->last[u + i] = 0;
    } else {
      r = ts_provision(w->st->v, b * K64, K64);
    }
    if (r)
      w->errors++;
    if (k % 50 == 0 && ts_flush(w->st->v))
      w->errors++;
  }
  return NULL;
}

/* Phase 2: all threads write the same blocks; thread t owns the units u
 * with u % THREADS == t, so the final content is known. */
static void *same_blocks(void *arg)
{
  struct worker *w = arg;
  unsigned char buf[UNIT];
  unsigned nunits = SAME_BLOCKS * (K64 / UNIT);
  for (int k = 0; k < 400; k++) {
    unsigned u = (unsigned)(rng_next(&w->seed) % (nunits / THREADS)) * THREADS + (unsigned)w->id;
    uint64_t t = rng_next(&w->seed) | 1;
    unit_fill(buf, t);
    /* Record before writing: a snapshot may catch the write in flight. */
    if (w->st->nhist[u] < HIST)
      w->st->hist[u][w->st->nhist[u]++] = t;
    /* The region starts at block 64, far from phase 1's data. */
    if (ts_pwrite(w->st->v, buf, UNIT, 64 * (uint64_t)K64 + (uint64_t)u * UNIT, 0))
      w->errors++;
    w->st->last[64 * (K64 / UNIT) + u] = t;
  }
  return NULL;
}

START_TEST(concurrent_writers)
{
  const char *dir = ts_test_dir;
  const char *vol = "\"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"16M\", \"create\": true }";
  struct pool_opts o = { .data_size = "64M", .extra = "\"commit_interval\": 0.02", .vols = vol };
  ts_stack *s = pool_open(dir, &o);
  static struct shared_state st;
  memset(&st, 0, sizeof st);
  st.v = node(s, "v0");
  pthread_t t[THREADS];
  struct worker w[THREADS];
  /* Phase 1 on blocks 0..63 only: the same-blocks region is 64..71. */
  for (int i = 0; i < THREADS; i++) {
    w[i] = (struct worker){ &st, i, 0, 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1) };
    ck_assert_int_eq(pthread_create(&t[i], NULL, own_blocks, &w[i]), 0);
  }
  for (int i = 0; i < THREADS; i++) {
    pthread_join(t[i], NULL);
    ck_assert_int_eq(w[i].errors, 0);
  }
  for (int i = 0; i < THREADS; i++) {
    w[i].seed += 77;
    ck_assert_int_eq(pthread_create(&t[i], NULL, same_blocks, &w[i]), 0);
  }
  /* A snapshot taken while they write. */
  ts_error e = { 0 };
  ck_assert_msg(ts_pool_create_snap(node(s, "pool"), 1, 0, &e) == 0, "%s", e.msg);
  for (int i = 0; i < THREADS; i++) {
    pthread_join(t[i], NULL);
    ck_assert_int_eq(w[i].errors, 0);
  }
  close_and_check(s, dir);

  const char *vols = "\"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"16M\" },"
                     "\"s1\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"16M\" }";
  struct pool_opts o2 = { .data_size = "64M", .vols = vols };
  s = pool_open(dir, &o2);
  size_t total = (size_t)CVOL_UNITS * UNIT;
  unsigned char *buf = malloc(total), *snap = malloc(total);
  ck_assert_int_eq(ts_pread(node(s, "v0"), buf, total, 0), 0);
  ck_assert_int_eq(ts_pread(node(s, "s1"), snap, total, 0), 0);
  uint64_t zh = zero_hash();
  for (unsigned u = 0; u < CVOL_UNITS; u++) {
    uint64_t want = st.last[u] ? unit_hash(st.last[u]) : zh;
    ck_assert_msg(XXH3_64bits(buf + (size_t)u * UNIT, UNIT) == want, "unit %u differs", u);
  }
  /* The snapshot holds, in each same-blocks unit, zeroes or one of the
   * versions its owner wrote; elsewhere, phase 1's final data. */
  for (unsigned u = 0; u < CVOL_UNITS; u++) {
    uint64_t h = XXH3_64bits(snap + (size_t)u * UNIT, UNIT);
    if (u < 64 * (K64 / UNIT)) {
      ck_assert_msg(h == (st.last[u] ? unit_hash(st.last[u]) : zh), "snapshot unit %u differs", u);
    } else if (u < (64 + SAME_BLOCKS) * (K64 / UNIT)) {
      unsigned k = u - 64 * (K64 / UNIT);
      bool ok = h == zh;
      for (unsigned i = 0; i < st.nhist[k] && !ok; i++)
        ok = h == unit_hash(st.hist[k][i]);
      ck_assert_msg(ok, "snapshot unit %u holds data nobody wrote there", u);
    } else {
      ck_assert_msg(h == zh, "snapshot unit %u is not zero", u);
    }
  }
  free(buf);
  free(snap);
  close_and_check(s, dir);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* 1 GiB provision on a sparse file                                          */

START_TEST(provision_sparse_gib)
{
  const char *dir = ts_test_dir;
  const char *vol = "\"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"2G\", \"create\": true }";
  struct pool_opts o = { .data_size = "1536M", .vols = vol };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = node(s, "v0");
  char *dataf = ts_test_path(dir, "pool.data");
  uint64_t gib = 1024ull * MIB;
  uint64_t before = ts_test_allocated(dataf);
  ck_assert_int_eq(ts_provision(v, 256 * MIB, gib), 0);
  ck_assert_int_eq(ts_flush(v), 0);
  uint64_t after = ts_test_allocated(dataf);
  ck_assert_msg(after - before >= gib && after - before < gib + 16 * MIB,
                "the data file grew by %llu bytes for a 1 GiB provision",
                (unsigned long long)(after - before));
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(v, 0, 2 * gib, &l), 0);
  ck_assert_uint_eq(l.n, 3);
  ck_assert_uint_eq(l.v[1].offset, 256 * MIB);
  ck_assert_uint_eq(l.v[1].length, gib);
  ck_assert_uint_eq(l.v[1].flags, TS_EXTENT_ZERO);
  ts_extent_list_free(&l);
  unsigned char buf[K64];
  for (uint64_t off = 256 * MIB; off < 256 * MIB + gib; off += 97 * MIB) {
    memset(buf, 0xAA, sizeof buf);
    ck_assert_int_eq(ts_pread(v, buf, sizeof buf, off), 0);
    ck_assert(is_zero(buf, sizeof buf));
  }
  /* Discard gives the space back to the file system (passdown). */
  ck_assert_int_eq(ts_discard(v, 256 * MIB, gib), 0);
  uint64_t freed = ts_test_allocated(dataf);
  ck_assert_msg(freed <= before + 16 * MIB, "after discard the data file still holds %llu bytes",
                (unsigned long long)freed);
  /* Provision again and delete the volume: the commit discards it all. */
  ck_assert_int_eq(ts_provision(v, 0, gib), 0);
  ck_assert_uint_ge(ts_test_allocated(dataf), before + gib);
  close_and_check(s, dir);
  struct pool_opts o2 = { .data_size = "1536M" };
  s = pool_open(dir, &o2);
  ck_assert_int_eq(ts_pool_delete_thin(node(s, "pool"), 0, NULL), 0);
  ck_assert_uint_le(ts_test_allocated(dataf), before + 16 * MIB);
  close_and_check(s, dir);
  free(dataf);
}
END_TEST

int main(void)
{
  require_thin_tools();
  Suite *s = suite_create("thin_random");
  TCase *t = tcase_create("random");
  tcase_add_checked_fixture(t, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_set_timeout(t, 300);
  tcase_add_loop_test(t, randomized_with_snapshots, 0, 2);
  tcase_add_test(t, concurrent_writers);
  tcase_add_test(t, provision_sparse_gib);
  suite_add_tcase(s, t);
  return ts_test_main(s);
}
