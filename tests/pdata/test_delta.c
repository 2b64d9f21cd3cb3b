/* tmd_delta and tmd_sharing against block-by-block lookups: a volume and
 * its snapshot after random overwrites, new blocks, removals and growth,
 * in both directions, with and without same ranges, an unrelated volume
 * with a shorter tree, a volume against itself; runs are maximal; shared
 * subtrees are not read; the callback's stop value; unknown devices. */
#include "pdtest.h"

#include <errno.h>

#define VMAX 50000u

static char *meta;

static void setup(void)
{
  ts_test_dir_setup();
  meta = ts_test_file("meta");
}

static void map_run(struct tmd *md, uint32_t dev, uint64_t v, uint64_t n)
{
  while (n) {
    uint64_t db, len;
    ck_assert_int_eq(tmd_alloc_data_run(md, n, &db, &len), 0);
    uint64_t done = 0;
    ck_assert_int_eq(tmd_insert_run(md, dev, v, len, db, &done), 0);
    v += len;
    n -= len;
  }
}

struct got {
  int8_t *kind; /* per virtual block, -1 = not reported */
  uint64_t *left, *right;
  struct tmd_delta last;
  uint64_t runs;
  int stop_after; /* stop with 77 after that many runs; 0 = never */
};

static int collect(void *arg, const struct tmd_delta *d)
{
  struct got *g = arg;
  ck_assert_uint_gt(d->len, 0);
  ck_assert_uint_le(d->vbegin + d->len, VMAX + 1000);
  /* Ascending and maximal: the previous run could not have grown into this one. */
  if (g->runs) {
    const struct tmd_delta *p = &g->last;
    ck_assert_uint_ge(d->vbegin, p->vbegin + p->len);
    bool l = d->kind != TMD_DELTA_RIGHT_ONLY, r = d->kind != TMD_DELTA_LEFT_ONLY;
    ck_assert_msg(!(p->kind == d->kind && p->vbegin + p->len == d->vbegin &&
                    (!l || p->left + p->len == d->left) && (!r || p->right + p->len == d->right)),
                  "run at %llu could have joined the one before", (unsigned long long)d->vbegin);
  }
  for (uint64_t i = 0; i < d->len; i++) {
    uint64_t v = d->vbegin + i;
    ck_assert_int_eq(g->kind[v], -1);
    g->kind[v] = (int8_t)d->kind;
    g->left[v] = d->left + i;
    g->right[v] = d->right + i;
  }
  g->last = *d;
  g->runs++;
  return g->stop_after && g->runs == (uint64_t)g->stop_after ? 77 : 0;
}

/* The delta of a and b equals what lookups of every block say. */
static uint64_t check_delta(struct tmd *md, uint32_t a, uint32_t b, unsigned flags)
{
  uint64_t n = VMAX + 1000;
  struct got g = { malloc(n), calloc(n, 8), calloc(n, 8), { 0 }, 0, 0 };
  memset(g.kind, -1, n);
  uint64_t nodes = 0;
  ck_assert_int_eq(tmd_delta(md, a, b, flags, collect, &g, &nodes), 0);
  for (uint64_t v = 0; v < n; v++) {
    uint64_t x, y;
    bool hx = tmd_lookup(md, a, v, &x, NULL) == 0, hy = tmd_lookup(md, b, v, &y, NULL) == 0;
    int want = hx && hy ? (x == y ? TMD_DELTA_SAME : TMD_DELTA_DIFFERENT)
               : hx     ? TMD_DELTA_LEFT_ONLY
               : hy     ? TMD_DELTA_RIGHT_ONLY
                        : -1;
    if (want == TMD_DELTA_SAME && !(flags & TMD_DELTA_WITH_SAME))
      want = -1;
    ck_assert_msg(g.kind[v] == want, "devices %u/%u block %llu: reported %d, lookups say %d", a, b,
                  (unsigned long long)v, g.kind[v], want);
    if (want >= 0 && want != TMD_DELTA_RIGHT_ONLY)
      ck_assert_uint_eq(g.left[v], x);
    if (want >= 0 && want != TMD_DELTA_LEFT_ONLY)
      ck_assert_uint_eq(g.right[v], y);
  }
  free(g.kind);
  free(g.left);
  free(g.right);
  return nodes;
}

START_TEST(test_delta_vs_lookups)
{
  struct pd_bdev b;
  pdt_make_file(meta, 32 << 20);
  pdt_open_bdev(&b, meta);
  struct tmd *md = NULL;
  ts_error err = { 0 };
  ck_assert_int_eq(tmd_format(&b, 128, 400000, NULL, &md, &err), 0);
  uint64_t rng = 0x5eed + (uint64_t)_i;
  ck_assert_int_eq(tmd_create_thin(md, 0), 0);
  for (int i = 0; i < 40; i++)
    map_run(md, 0, pdt_rand(&rng) % (VMAX - 3000), 1 + pdt_rand(&rng) % 1200);
  ck_assert_int_eq(tmd_create_snap(md, 1, 0), 0);
  /* A fresh snapshot: no differences, and only the two trees' leftmost paths read. */
  uint64_t fresh = check_delta(md, 0, 1, 0);
  ck_assert_uint_le(fresh, 2 * 4);
  uint64_t all = check_delta(md, 0, 1, TMD_DELTA_WITH_SAME);
  ck_assert_uint_gt(all, 50);
  /* Overwrites, new blocks, removals on the origin; growth past the old end. */
  for (int i = 0; i < 150; i++) {
    uint64_t v = pdt_rand(&rng) % VMAX, d;
    switch (pdt_rand(&rng) % 3) {
    case 0:
      ck_assert_int_eq(tmd_alloc_data(md, &d), 0);
      ck_assert_int_eq(tmd_insert(md, 0, v, d), 0);
      break;
    case 1:
      ck_assert_int_eq(tmd_remove_range(md, 0, v, v + 1 + pdt_rand(&rng) % 40, 0, NULL, NULL, NULL),
                       0);
      break;
    default:
      map_run(md, 0, v, 1 + pdt_rand(&rng) % 30);
    }
  }
  map_run(md, 0, VMAX, 700);
  /* Some changes on the snapshot too. */
  for (int i = 0; i < 20; i++)
    map_run(md, 1, pdt_rand(&rng) % VMAX, 1 + pdt_rand(&rng) % 5);
  uint64_t changed = check_delta(md, 0, 1, 0);
  uint64_t changed_all = check_delta(md, 0, 1, TMD_DELTA_WITH_SAME);
  ck_assert_uint_lt(changed, changed_all);
  check_delta(md, 1, 0, 0);
  check_delta(md, 1, 0, TMD_DELTA_WITH_SAME);
  /* A volume against itself reads its leftmost path twice and nothing else. */
  ck_assert_uint_le(check_delta(md, 0, 0, 0), 2 * 4);
  check_delta(md, 0, 0, TMD_DELTA_WITH_SAME);
  /* Unrelated: a small tree (one leaf) against tall ones; and an empty one. */
  ck_assert_int_eq(tmd_create_thin(md, 2), 0);
  ck_assert_int_eq(tmd_create_thin(md, 3), 0);
  map_run(md, 2, 100, 50);
  check_delta(md, 0, 2, 0);
  check_delta(md, 2, 1, TMD_DELTA_WITH_SAME);
  check_delta(md, 3, 0, 0);
  check_delta(md, 1, 3, TMD_DELTA_WITH_SAME);
  check_delta(md, 2, 3, TMD_DELTA_WITH_SAME);
  /* After a commit (shared nodes now on disk) the same answers. */
  ck_assert_int_eq(tmd_commit(md), 0);
  check_delta(md, 0, 1, 0);
  check_delta(md, 1, 0, TMD_DELTA_WITH_SAME);

  /* The callback's value stops the walk and is returned. */
  uint64_t n = VMAX + 1000;
  struct got g = { malloc(n), calloc(n, 8), calloc(n, 8), { 0 }, 0, 3 };
  memset(g.kind, -1, n);
  ck_assert_int_eq(tmd_delta(md, 0, 1, TMD_DELTA_WITH_SAME, collect, &g, NULL), 77);
  ck_assert_uint_eq(g.runs, 3);
  free(g.kind);
  free(g.left);
  free(g.right);
  ck_assert_int_eq(tmd_delta(md, 0, 9, 0, collect, &g, NULL), -ENODEV);
  ck_assert_int_eq(tmd_delta(md, 9, 0, 0, collect, &g, NULL), -ENODEV);
  tmd_close(md);
  pdt_check_clean(&b);
  pd_bdev_close(&b);
}
END_TEST

/* tmd_sharing: a block is exclusive when no other mapping of any device
 * maps it, whatever the data space map's count says (a shared leaf counts
 * its blocks once there). */
START_TEST(test_sharing_vs_lookups)
{
  struct pd_bdev b;
  pdt_make_file(meta, 16 << 20);
  pdt_open_bdev(&b, meta);
  struct tmd *md = NULL;
  ts_error err = { 0 };
  ck_assert_int_eq(tmd_format(&b, 128, 100000, NULL, &md, &err), 0);
  uint64_t rng = 42;
  ck_assert_int_eq(tmd_create_thin(md, 0), 0);
  ck_assert_int_eq(tmd_create_thin(md, 5), 0);
  for (int i = 0; i < 20; i++)
    map_run(md, 0, pdt_rand(&rng) % 20000, 1 + pdt_rand(&rng) % 500);
  map_run(md, 5, 0, 300);
  ck_assert_int_eq(tmd_create_snap(md, 1, 0), 0);
  ck_assert_int_eq(tmd_create_snap(md, 2, 1), 0);
  for (int i = 0; i < 60; i++)
    map_run(md, (uint32_t)(pdt_rand(&rng) % 3), pdt_rand(&rng) % 20000, 1 + pdt_rand(&rng) % 20);
  uint64_t nd = tmd_data_nr_blocks(md);
  uint32_t *refs = calloc(nd, sizeof *refs);
  uint32_t ids[4] = { 0, 1, 2, 5 };
  for (int k = 0; k < 4; k++)
    for (uint64_t v = 0; v < 21000; v++) {
      uint64_t d;
      if (tmd_lookup(md, ids[k], v, &d, NULL) == 0)
        refs[d]++;
    }
  uint64_t ex[4], sh[4];
  ck_assert_int_eq(tmd_sharing(md, ids, 4, ex, sh), 0);
  for (int k = 0; k < 4; k++) {
    uint64_t we = 0, ws = 0;
    for (uint64_t v = 0; v < 21000; v++) {
      uint64_t d;
      if (tmd_lookup(md, ids[k], v, &d, NULL) == 0)
        *(refs[d] == 1 ? &we : &ws) += 1;
    }
    ck_assert_uint_eq(ex[k], we);
    ck_assert_uint_eq(sh[k], ws);
    struct tmd_dev_info di;
    ck_assert_int_eq(tmd_dev_info(md, ids[k], &di), 0);
    ck_assert_uint_eq(ex[k] + sh[k], di.mapped_blocks);
  }
  ck_assert_uint_eq(ex[3], 300);
  ck_assert_uint_gt(sh[0], 0);
  uint32_t bad = 7;
  ck_assert_int_eq(tmd_sharing(md, &bad, 1, ex, sh), -ENODEV);
  free(refs);
  tmd_close(md);
  pd_bdev_close(&b);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("thin-delta");
  TCase *tc = tcase_create("delta");
  tcase_add_checked_fixture(tc, setup, ts_test_dir_teardown);
  tcase_set_timeout(tc, 300);
  tcase_add_loop_test(tc, test_delta_vs_lookups, 0, 2);
  tcase_add_test(tc, test_sharing_vs_lookups);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
