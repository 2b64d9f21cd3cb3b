/* Crash consistency: a random workload of commits runs on a metadata device
 * that silently stops persisting writes after N of them (a power cut); the
 * reopened pool must hold exactly the last transaction whose superblock
 * write got through, compared with a model, and pass our checker (every
 * point) and thin_check (every 20th point). 1000 random crash points through
 * a test wrapper bdev, and 100 through a libthinstack stack (file + fault
 * layer) adapted with pd_bdev_from_ts_dev(). */
#include "pdtest.h"

#define ROUNDS 8

static char *meta;

static void setup(void)
{
  pdt_require_tools();
  ts_test_dir_setup();
  meta = ts_test_file("meta");
}

/* ---- a bdev that stops persisting after `limit` writes ---- */
struct cut {
  struct pd_bdev inner;
  uint64_t writes, limit, dropped;
};

static int cut_read(void *ctx, uint64_t block, uint32_t count, void *buf)
{
  struct cut *c = ctx;
  return c->inner.ops->read(c->inner.ctx, block, count, buf);
}

static int cut_write(void *ctx, uint64_t block, uint32_t count, const void *buf)
{
  struct cut *c = ctx;
  if (c->writes++ >= c->limit) {
    c->dropped++;
    return 0; /* reported done, never persisted */
  }
  return c->inner.ops->write(c->inner.ctx, block, count, buf);
}

static int cut_flush(void *ctx)
{
  struct cut *c = ctx;
  return c->dropped ? 0 : c->inner.ops->flush(c->inner.ctx);
}

/* A run written from an iovec is one request, cut like any other. */
static int cut_writev(void *ctx, uint64_t block, uint32_t count, const struct iovec *iov,
                      int iovcnt)
{
  struct cut *c = ctx;
  if (c->writes++ >= c->limit) {
    c->dropped++;
    return 0;
  }
  return c->inner.ops->writev(c->inner.ctx, block, count, iov, iovcnt);
}

static const struct pd_bdev_ops cut_ops = { cut_read, cut_write, cut_flush, NULL, cut_writev };

/* Counts the requests a stack's fault layer sees (writes and flushes). */
struct counted {
  struct pd_bdev inner;
  uint64_t reqs, cut;
};

static int cnt_read(void *ctx, uint64_t block, uint32_t count, void *buf)
{
  struct counted *c = ctx;
  return c->inner.ops->read(c->inner.ctx, block, count, buf);
}

static int cnt_write(void *ctx, uint64_t block, uint32_t count, const void *buf)
{
  struct counted *c = ctx;
  c->reqs++;
  return c->inner.ops->write(c->inner.ctx, block, count, buf);
}

static int cnt_flush(void *ctx)
{
  struct counted *c = ctx;
  c->reqs++;
  return c->inner.ops->flush(c->inner.ctx);
}

static int cnt_writev(void *ctx, uint64_t block, uint32_t count, const struct iovec *iov,
                      int iovcnt)
{
  struct counted *c = ctx;
  c->reqs++;
  return c->inner.ops->writev(c->inner.ctx, block, count, iov, iovcnt);
}

static const struct pd_bdev_ops cnt_ops = { cnt_read, cnt_write, cnt_flush, NULL, cnt_writev };

static bool cut_lost(void *arg) { return ((struct cut *)arg)->dropped != 0; }
static bool counted_lost(void *arg) { return ((struct counted *)arg)->reqs > ((struct counted *)arg)->cut; }

/* Run the workload on `md` (already formatted); models[k] = state after
 * commit k (trans id k). *ok_upto = last commit that finished before any
 * write was lost, as `lost` tells. */
static void workload(struct tmd *md, struct pdt_model *models, uint64_t seed, bool (*lost_fn)(void *),
                     void *arg, int *ok_upto)
{
  struct pdt_model m;
  pdt_model_init(&m, 16, 4000, 128);
  pdt_model_copy(&models[0], &m);
  uint64_t rng = seed;
  *ok_upto = 0;
  bool lost = false;
  for (int k = 1; k <= ROUNDS; k++) {
    for (int i = 0; i < 12; i++)
      if (pdt_random_op(md, &m, &rng) && !lost && !lost_fn(arg))
        ck_abort_msg("operation failed before the power cut");
    if (tmd_set_transaction_id(md, tmd_transaction_id(md), (uint64_t)k) == 0)
      m.trans = (uint64_t)k;
    int r = tmd_commit(md);
    pdt_model_copy(&models[k], &m);
    if (lost_fn(arg))
      lost = true;
    if (!lost && r == 0)
      *ok_upto = k;
    if (lost)
      break; /* one commit after the cut is enough */
  }
  pdt_model_free(&m);
}

static void verify(const struct pd_bdev *b, struct pdt_model *models, int lo, int hi, bool run_thin_check)
{
  struct tmd *md = pdt_open(b);
  uint64_t t = tmd_transaction_id(md);
  ck_assert_msg((int)t >= lo && (int)t <= hi, "reopened at transaction %llu, expected %d..%d",
                (unsigned long long)t, lo, hi);
  pdt_check_data_refs(md, &models[t]);
  tmd_close(md);
  char *want = pdt_model_xml(&models[t]), *got = pdt_dump(b, false);
  ck_assert_str_eq(got, want);
  free(want);
  free(got);
  pdt_check_clean(b);
  if (run_thin_check)
    ts_test_assert_thin_check(meta);
}

START_TEST(test_crash_points_wrapper)
{
  struct pdt_model models[ROUNDS + 1];
  memset(models, 0, sizeof models);
  uint64_t rng = 99;
  int points = 0;
  for (int run = 0; points < 1000; run++) {
    uint64_t seed = 1000 + (uint64_t)run;
    /* dry run: how many writes the workload makes */
    struct pd_bdev inner;
    pdt_make_file(meta, 2 << 20);
    pdt_open_bdev(&inner, meta);
    struct tmd *md;
    ts_error err = {0};
    ck_assert_int_eq(tmd_format(&inner, 128, 4000, NULL, &md, &err), 0);
    tmd_close(md);
    struct cut c = {inner, 0, UINT64_MAX, 0};
    struct pd_bdev cb = {&cut_ops, &c, inner.nr_blocks, false};
    md = pdt_open(&cb);
    int ok;
    workload(md, models, seed, cut_lost, &c, &ok);
    tmd_close(md);
    pd_bdev_close(&inner);
    uint64_t total = c.writes;
    /* 50 random cut points per workload */
    for (int j = 0; j < 50 && points < 1000; j++, points++) {
      pdt_make_file(meta, 2 << 20);
      pdt_open_bdev(&inner, meta);
      ck_assert_int_eq(tmd_format(&inner, 128, 4000, NULL, &md, &err), 0);
      tmd_close(md);
      c = (struct cut){inner, 0, pdt_rand(&rng) % (total + 1), 0};
      cb.ctx = &c;
      md = pdt_open(&cb);
      workload(md, models, seed, cut_lost, &c, &ok);
      tmd_close(md);
      /* the superblock is a commit's last write: a commit that lost any
       * write did not happen */
      verify(&inner, models, ok, ok, points % 20 == 0);
      pd_bdev_close(&inner);
    }
  }
  for (int k = 0; k <= ROUNDS; k++)
    pdt_model_free(&models[k]);
}
END_TEST

START_TEST(test_crash_points_fault_layer)
{
  struct pdt_model models[ROUNDS + 1];
  memset(models, 0, sizeof models);
  uint64_t rng = 7;
  for (int point = 0; point < 100; point++) {
    unlink(meta);
    uint64_t n = 20 + pdt_rand(&rng) % 400;
    char *json = ts_test_fmt("{\"version\":1,\"layers\":{\"m\":{\"type\":\"file\",\"path\":\"meta\",\"size\":\"16M\","
                             "\"create\":true},\"f\":{\"type\":\"fault\",\"child\":\"m\",\"rules\":[{\"op\":\"all\","
                             "\"action\":\"drop\",\"after\":%llu}]}},\"exports\":[\"f\"]}", (unsigned long long)n);
    ts_stack *st = ts_test_open(ts_test_dir, json);
    free(json);
    struct counted cnt = {{0}, 0, n};
    ts_error err = {0};
    ck_assert_int_eq(pd_bdev_from_ts_dev(&cnt.inner, ts_stack_dev(st, "f"), false, &err), 0);
    struct pd_bdev b = {&cnt_ops, &cnt, cnt.inner.nr_blocks, false};
    struct tmd *md = NULL;
    int ok = 0;
    bool formatted = tmd_format(&b, 128, 4000, NULL, &md, &err) == 0;
    if (formatted) {
      workload(md, models, 5000 + (uint64_t)point, counted_lost, &cnt, &ok);
      tmd_close(md);
    }
    ts_stack_close(st, NULL);
    struct pd_bdev fb;
    pdt_open_bdev(&fb, meta);
    struct tmd *probe = NULL;
    int r = tmd_open(&fb, NULL, &probe, &err);
    if (r == -ENODATA) {
      /* the cut came during format: block 0 still zero */
      pd_bdev_close(&fb);
      continue;
    }
    ck_assert_msg(r == 0 && formatted, "reopen after cut at %llu: %s", (unsigned long long)n, err.msg);
    tmd_close(probe);
    /* the cut may fall on the final flush after a superblock write: then
     * the commit in flight counts too. Either of the two states, exactly. */
    verify(&fb, models, ok, ok + 1 > ROUNDS ? ROUNDS : ok + 1, point % 20 == 0);
    pd_bdev_close(&fb);
  }
  for (int k = 0; k <= ROUNDS; k++)
    pdt_model_free(&models[k]);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("crash");
  TCase *tc = tcase_create("crash");
  tcase_add_checked_fixture(tc, setup, ts_test_dir_teardown);
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, test_crash_points_wrapper);
  tcase_add_test(tc, test_crash_points_fault_layer);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
