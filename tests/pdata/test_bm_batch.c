/* A transaction larger than the block cache: the dirty blocks written early
 * go to the device in few large requests (neighbours together), not one
 * request per block, and the pool reads back exactly after reopening. */
#include "pdtest.h"

#include "pdata/pdata-internal.h"

static char *meta;

static void setup(void)
{
  ts_test_dir_setup();
  meta = ts_test_file("meta");
}

/* Counts write requests and the blocks they carry. */
struct counting {
  struct pd_bdev inner;
  uint64_t reqs, blocks;
};

static int c_read(void *ctx, uint64_t block, uint32_t count, void *buf)
{
  struct counting *c = ctx;
  return c->inner.ops->read(c->inner.ctx, block, count, buf);
}

static int c_write(void *ctx, uint64_t block, uint32_t count, const void *buf)
{
  struct counting *c = ctx;
  c->reqs++;
  c->blocks += count;
  return c->inner.ops->write(c->inner.ctx, block, count, buf);
}

static int c_flush(void *ctx)
{
  struct counting *c = ctx;
  return c->inner.ops->flush(c->inner.ctx);
}

static const struct pd_bdev_ops c_ops = {c_read, c_write, c_flush, NULL};

START_TEST(large_transaction_writes_in_batches)
{
  pdt_make_file(meta, 64 << 20);
  struct counting c = {0};
  pdt_open_bdev(&c.inner, meta);
  struct pd_bdev b = {&c_ops, &c, c.inner.nr_blocks, false};
  struct tmd_config cfg = {.cache_blocks = 64};
  struct tmd *md = NULL;
  ts_error err = {0};
  uint64_t nmap = 1u << 20; /* about 4200 leaves: 65 times the cache */
  ck_assert_int_eq(tmd_format(&b, 128, nmap, &cfg, &md, &err), 0);
  ck_assert_int_eq(tmd_create_thin(md, 1), 0);
  ck_assert_int_eq(tmd_commit(md), 0);
  c.reqs = c.blocks = 0;
  for (uint64_t v = 0; v < nmap;) {
    uint64_t db, len, done = 0;
    ck_assert_int_eq(tmd_alloc_data_run(md, nmap - v, &db, &len), 0);
    ck_assert_uint_eq(db, v);
    ck_assert_int_eq(tmd_insert_run(md, 1, v, len, db, &done), 0);
    ck_assert_uint_eq(done, len);
    v += len;
  }
  /* Before the commit: only what eviction wrote. */
  ck_assert_uint_gt(c.blocks, 4000);
  ck_assert_msg(c.reqs * 16 <= c.blocks, "%llu requests for %llu blocks",
                (unsigned long long)c.reqs, (unsigned long long)c.blocks);
  ck_assert_int_eq(tmd_commit(md), 0);
  tmd_close(md);
  md = pdt_open(&b);
  struct tmd_dev_info di;
  ck_assert_int_eq(tmd_dev_info(md, 1, &di), 0);
  ck_assert_uint_eq(di.mapped_blocks, nmap);
  for (uint64_t v = 0; v < nmap; v += 4099) {
    uint64_t d = UINT64_MAX;
    bool shared;
    ck_assert_int_eq(tmd_lookup(md, 1, v, &d, &shared), 0);
    ck_assert_uint_eq(d, v);
  }
  tmd_close(md);
  pd_bdev_close(&c.inner);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("bm_batch");
  TCase *tc = tcase_create("bm_batch");
  tcase_set_timeout(tc, 120);
  tcase_add_checked_fixture(tc, setup, ts_test_dir_teardown);
  tcase_add_test(tc, large_transaction_writes_in_batches);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
