/* Block status of a thin volume whose runs and the data file's extents
 * interleave: blocks written in a shuffled order, shared with a snapshot
 * and copied, a provision larger than 1 GiB in groups, discards that punch
 * holes below and writes that reuse the freed blocks. Over the whole
 * volume, random sub-ranges and bounded steps the answer must be sorted,
 * contiguous, cover exactly the range, and agree with a model kept per 4K
 * unit, which a full read checks as well. Real files on the file system of
 * the temporary folder: writes still in its page cache inside unwritten
 * extents make the file layer map them again after writing them back, and
 * that second pass must continue the answer, never restart it. */
#include "thin-helpers.h"

#include <jansson.h>
#include <stdio.h>

#define K64 65536u
#define UNIT 4096u
#define UPB (K64 / UNIT)    /* units per block */
#define VOL_BLOCKS 24576ull /* 1.5 GiB */
#define VOL_SIZE (VOL_BLOCKS * K64)
#define UNITS (VOL_SIZE / UNIT)

/* ZEROED: zeroes written as data (the rest of a block whose sharing a
 * partial write broke: the block is copied whole), which block status may
 * report either way. */
enum { UNMAPPED, ZERO, ZEROED, DATA };

/* What each 4K unit of a volume holds: its state and, for data, the seed of
 * its pattern; and which blocks are still shared with the snapshot. */
struct model {
  unsigned char *state;
  uint32_t *seed;
  unsigned char *shared;
};

static uint64_t rnd_state = 88172645463325252ull;
static uint64_t rnd(uint64_t n)
{
  rnd_state ^= rnd_state << 13;
  rnd_state ^= rnd_state >> 7;
  rnd_state ^= rnd_state << 17;
  return rnd_state % n;
}

static void model_init(struct model *m)
{
  m->state = calloc(UNITS, 1);
  m->seed = calloc(UNITS, sizeof *m->seed);
  m->shared = calloc(VOL_BLOCKS, 1);
  ck_assert(m->state && m->seed && m->shared);
}

static void model_copy(struct model *to, const struct model *from)
{
  model_init(to);
  memcpy(to->state, from->state, UNITS);
  memcpy(to->seed, from->seed, UNITS * sizeof *to->seed);
}

static void model_free(struct model *m)
{
  free(m->state);
  free(m->seed);
  free(m->shared);
}

/* A snapshot of the volume: every mapped block is shared. */
static void model_snapshot(struct model *m)
{
  for (uint64_t b = 0; b < VOL_BLOCKS; b++)
    m->shared[b] = m->state[b * UPB] != UNMAPPED;
}

/* Write one 4K unit; an unmapped block becomes mapped zeroes around it. */
static void put_unit(ts_dev *v, struct model *m, uint64_t u, uint32_t seed)
{
  unsigned char buf[UNIT];
  ts_test_pattern(buf, sizeof buf, seed);
  ck_assert_int_eq(ts_pwrite(v, buf, UNIT, u * UNIT, 0), 0);
  uint64_t b0 = u / UPB * UPB;
  if (m->state[b0] == UNMAPPED)
    memset(m->state + b0, ZERO, UPB);
  if (m->shared[u / UPB])
    for (uint64_t k = b0; k < b0 + UPB; k++)
      if (m->state[k] == ZERO)
        m->state[k] = ZEROED;
  m->shared[u / UPB] = 0;
  m->state[u] = DATA;
  m->seed[u] = seed;
}

static void provision(ts_dev *v, struct model *m, uint64_t b, uint64_t n)
{
  ck_assert_int_eq(ts_provision(v, b * K64, n * K64), 0);
  /* Shared blocks are copied, skipping what reads as zeroes. */
  memset(m->shared + b, 0, n);
  for (uint64_t u = b * UPB; u < (b + n) * UPB; u++)
    if (m->state[u] == UNMAPPED)
      m->state[u] = ZERO;
}

static void discard(ts_dev *v, struct model *m, uint64_t b, uint64_t n)
{
  ck_assert_int_eq(ts_discard(v, b * K64, n * K64), 0);
  memset(m->state + b * UPB, UNMAPPED, n * UPB);
  memset(m->shared + b, 0, n);
}

static bool flags_fit(uint32_t flags, unsigned char st)
{
  switch (st) {
  case DATA:
    return flags == 0;
  case ZEROED:
    return flags == 0 || flags == TS_EXTENT_ZERO;
  case ZERO:
    return flags == TS_EXTENT_ZERO;
  default:
    return flags == (TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  }
}

static const char *const state_name[] = { "unmapped", "zeroes", "zeroes written", "data" };

/* The extents l.v[first..] cover [off, end) in order, and every unit they
 * touch has the flags the model says. */
static void check_extents(const ts_extent_list *l, size_t first, uint64_t off, uint64_t end,
                          const struct model *m, const char *what)
{
  ck_assert_msg(l->n > first, "%s [%llu,%llu): no extents", what, (unsigned long long)off,
                (unsigned long long)end);
  uint64_t pos = off;
  for (size_t i = first; i < l->n; i++) {
    const ts_extent *e = &l->v[i];
    ck_assert_msg(e->offset == pos && e->length > 0 && e->offset + e->length <= end,
                  "%s [%llu,%llu): extent %zu [%llu,+%llu) after %llu: out of order, "
                  "overlapping or outside",
                  what, (unsigned long long)off, (unsigned long long)end, i - first,
                  (unsigned long long)e->offset, (unsigned long long)e->length,
                  (unsigned long long)pos);
    for (uint64_t u = e->offset / UNIT; u * UNIT < e->offset + e->length; u++)
      ck_assert_msg(flags_fit(e->flags, m->state[u]),
                    "%s: extent [%llu,+%llu) has flags %u, unit at %llu is %s", what,
                    (unsigned long long)e->offset, (unsigned long long)e->length, e->flags,
                    (unsigned long long)(u * UNIT), state_name[m->state[u]]);
    pos = e->offset + e->length;
  }
}

static void check_range(ts_dev *v, const struct model *m, uint64_t off, uint64_t len)
{
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(v, off, len, &l), 0);
  check_extents(&l, 0, off, off + len, m, "block status");
  ck_assert_uint_eq(l.v[l.n - 1].offset + l.v[l.n - 1].length, off + len);
  ts_extent_list_free(&l);
}

/* Bounded steps of `max` extents, each continuing where the last ended. */
static void check_bounded(ts_dev *v, const struct model *m, uint64_t off, uint64_t len, size_t max)
{
  ts_extent_list l = { 0 };
  uint64_t pos = off, end = off + len;
  while (pos < end) {
    ts_extent_list_reset(&l);
    ck_assert_int_eq(ts_block_status_bounded(v, pos, end - pos, max, &l), 0);
    ck_assert_uint_le(l.n, max);
    check_extents(&l, 0, pos, end, m, "bounded block status");
    pos = l.v[l.n - 1].offset + l.v[l.n - 1].length;
  }
  ts_extent_list_free(&l);
}

/* The whole volume, read block by block, against the model. */
static void check_read(ts_dev *v, const struct model *m)
{
  unsigned char *buf = malloc(K64), want[UNIT], zero[UNIT] = { 0 };
  ck_assert_ptr_nonnull(buf);
  for (uint64_t b = 0; b < VOL_BLOCKS; b++) {
    ck_assert_int_eq(ts_pread(v, buf, K64, b * K64), 0);
    for (uint64_t k = 0; k < UPB; k++) {
      uint64_t u = b * UPB + k;
      const unsigned char *w = zero;
      if (m->state[u] == DATA) {
        ts_test_pattern(want, UNIT, m->seed[u]);
        w = want;
      }
      ck_assert_msg(memcmp(buf + k * UNIT, w, UNIT) == 0, "unit at %llu does not read as %s",
                    (unsigned long long)(u * UNIT), m->state[u] == DATA ? "its data" : "zeroes");
    }
  }
  free(buf);
}

static void check_all(ts_dev *v, const struct model *m)
{
  check_range(v, m, 0, VOL_SIZE);
  for (int i = 0; i < 40; i++) {
    /* 4K-aligned sub-ranges of any length, and some of a few blocks. */
    uint64_t a = rnd(UNITS),
             n = 1 + (i % 2 ? rnd(UNITS - a) : rnd(64 < UNITS - a ? 64 : UNITS - a));
    check_range(v, m, a * UNIT, n * UNIT);
  }
  /* Each bounded step walks up to a batch of runs below: few steps. */
  check_bounded(v, m, 0, VOL_SIZE, 1000);
  check_bounded(v, m, 12345 * UNIT, 4096 * UNIT, 5);
  check_read(v, m);
}

/* `thinstack map --json` over the whole volume, from a closed stack's
 * configuration: the same rules as the library's answer. */
static void check_cli_map(const char *dir, const struct pool_opts *o, const char *vol,
                          const struct model *m)
{
  const char *build = getenv("TS_BUILD_DIR");
  if (!ts_test_require(build != NULL, "TS_BUILD_DIR names the build with the thinstack program"))
    return;
  char *cfg = ts_test_path(dir, "stack.json"), *j = pool_json(o);
  FILE *f = fopen(cfg, "w");
  ck_assert_ptr_nonnull(f);
  ck_assert_int_ge(fputs(j, f), 0);
  ck_assert_int_eq(fclose(f), 0);
  char *out = NULL;
  int rc = ts_test_run(&out, "%s/thinstack map %s %s --json", build, cfg, vol);
  ck_assert_msg(rc == 0, "thinstack map: %d: %s", rc, out ? out : "");
  json_error_t je;
  json_t *a = json_loads(out, 0, &je);
  ck_assert_msg(json_is_array(a), "thinstack map printed no JSON array: %s", je.text);
  ts_extent_list l = { 0 };
  for (size_t i = 0; i < json_array_size(a); i++) {
    json_t *x = json_array_get(a, i);
    uint32_t flags = (json_is_true(json_object_get(x, "hole")) ? TS_EXTENT_HOLE : 0) |
                     (json_is_true(json_object_get(x, "zero")) ? TS_EXTENT_ZERO : 0);
    ck_assert_int_eq(
        ts_extent_list_add(&l, (uint64_t)json_integer_value(json_object_get(x, "offset")),
                           (uint64_t)json_integer_value(json_object_get(x, "length")), flags),
        0);
  }
  check_extents(&l, 0, 0, VOL_SIZE, m, "thinstack map");
  ck_assert_uint_eq(l.v[l.n - 1].offset + l.v[l.n - 1].length, VOL_SIZE);
  ts_extent_list_free(&l);
  json_decref(a);
  free(out);
  free(j);
  free(cfg);
}

static const char VOLS[] =
    "\"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"1536M\", \"create\": true }";

START_TEST(runs_across_data_extents)
{
  const char *dir = ts_test_dir;
  struct pool_opts o = { .data_size = "2G", .meta_size = "32M", .vols = VOLS, .exports = "\"v0\"" };
  ts_stack *s = pool_open(dir, &o);
  ts_dev *v = ts_stack_node(s, "v0"), *pool = ts_stack_node(s, "pool");
  ck_assert(v && pool);
  struct model m;
  model_init(&m);
  uint32_t seed = 1;

  /* Descending stretches written back to front, and scattered blocks: the
   * data blocks are allocated in write order, so the volume's runs are
   * short and out of step with the data file's extents. */
  for (uint64_t b = 2000; b-- > 1000;)
    put_unit(v, &m, b * UPB + (b % UPB), seed++);
  for (int i = 0; i < 1500; i++)
    put_unit(v, &m, rnd(UNITS), seed++);
  ck_assert_int_eq(ts_flush(v), 0);
  check_all(v, &m);

  /* Share everything with a snapshot, then break the sharing of some
   * blocks by partial writes (a copy each, in a fresh data block). */
  ts_error e = { 0 };
  ck_assert_msg(ts_pool_create_snap(pool, 1, 0, &e) == 0, "%s", e.msg);
  struct model snap;
  model_snapshot(&m);
  model_copy(&snap, &m);
  for (int i = 0; i < 800; i++) {
    uint64_t b = 1000 + rnd(1000);
    put_unit(v, &m, b * UPB + rnd(UPB), seed++);
  }
  check_all(v, &m);

  /* A provision larger than 1 GiB: groups of new blocks below, copies of
   * the blocks still shared, holes elsewhere kept as allocated zeroes. */
  provision(v, &m, 0, VOL_BLOCKS);
  check_all(v, &m);

  /* Writes into provisioned blocks split the data file's unwritten
   * extents; discards punch holes below and free blocks that later writes
   * take again, out of order. */
  for (int i = 0; i < 1500; i++)
    put_unit(v, &m, rnd(UNITS), seed++);
  for (int i = 0; i < 300; i++)
    discard(v, &m, rnd(VOL_BLOCKS - 8), 1 + rnd(8));
  ck_assert_int_eq(ts_flush(v), 0);
  for (int i = 0; i < 600; i++)
    put_unit(v, &m, rnd(UNITS), seed++);
  check_all(v, &m);
  ck_assert_int_eq(ts_flush(v), 0);
  check_all(v, &m);
  close_and_check(s, dir);

  /* Reopened, both the volume and its snapshot. */
  const char *vols2 =
      "\"v0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": \"1536M\" },"
      " \"s1\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 1, \"size\": \"1536M\" }";
  struct pool_opts o2 = { .data_size = "2G",
                          .meta_size = "32M",
                          .vols = vols2,
                          .exports = "\"v0\", \"s1\"",
                          .no_create = true };
  s = pool_open(dir, &o2);
  check_all(ts_stack_node(s, "v0"), &m);
  check_all(ts_stack_node(s, "s1"), &snap);
  close_and_check(s, dir);
  check_cli_map(dir, &o2, "v0", &m);
  check_cli_map(dir, &o2, "s1", &snap);
  model_free(&snap);
  model_free(&m);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("status_order");
  TCase *tc = tcase_create("file");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, runs_across_data_extents);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
