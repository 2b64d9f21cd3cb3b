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
  uint64_t vreqs, vblocks; /* through writev */
  uint64_t multi_writes;   /* plain writes of more than one block */
  int max_iovcnt;
  bool bad_iov; /* an iovec not one whole, aligned cache block */
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

static const struct pd_bdev_ops c_ops = { c_read, c_write, c_flush, NULL, NULL };

static int cv_write(void *ctx, uint64_t block, uint32_t count, const void *buf)
{
  struct counting *c = ctx;
  if (count > 1)
    c->multi_writes++;
  return c_write(ctx, block, count, buf);
}

/* Passes the iovec on as it came, so the blocks reach the file from the
 * cache's own buffers. */
static int cv_writev(void *ctx, uint64_t block, uint32_t count, const struct iovec *iov, int iovcnt)
{
  struct counting *c = ctx;
  c->vreqs++;
  c->vblocks += count;
  if (iovcnt > c->max_iovcnt)
    c->max_iovcnt = iovcnt;
  for (int i = 0; i < iovcnt; i++)
    if (iov[i].iov_len != PD_BLOCK_SIZE || (uintptr_t)iov[i].iov_base % PD_BLOCK_SIZE)
      c->bad_iov = true;
  return c->inner.ops->writev(c->inner.ctx, block, count, iov, iovcnt);
}

static const struct pd_bdev_ops cv_ops = { c_read, cv_write, c_flush, NULL, cv_writev };

START_TEST(large_transaction_writes_in_batches)
{
  pdt_make_file(meta, 64 << 20);
  struct counting c = { 0 };
  pdt_open_bdev(&c.inner, meta);
  struct pd_bdev b = { &c_ops, &c, c.inner.nr_blocks, false };
  struct tmd_config cfg = { .cache_blocks = 64 };
  struct tmd *md = NULL;
  ts_error err = { 0 };
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

/* On a device that takes iovecs, runs of neighbouring blocks go out as one
 * writev of the cached blocks themselves (no staging copy, no plain write
 * of more than one block), both when the cache evicts and at the commit,
 * and the pool reads back exactly. */
START_TEST(runs_go_out_as_iovecs)
{
  pdt_make_file(meta, 64 << 20);
  struct counting c = { 0 };
  pdt_open_bdev(&c.inner, meta);
  ck_assert(pd_bdev_has_writev(&c.inner));
  struct pd_bdev b = { &cv_ops, &c, c.inner.nr_blocks, false };
  struct tmd_config cfg = { .cache_blocks = 64 };
  struct tmd *md = NULL;
  ts_error err = { 0 };
  uint64_t nmap = 1u << 20;
  ck_assert_int_eq(tmd_format(&b, 128, nmap, &cfg, &md, &err), 0);
  ck_assert_int_eq(tmd_create_thin(md, 1), 0);
  ck_assert_int_eq(tmd_commit(md), 0);
  c.reqs = c.blocks = c.vreqs = c.vblocks = 0;
  for (uint64_t v = 0; v < nmap;) {
    uint64_t db, len, done = 0;
    ck_assert_int_eq(tmd_alloc_data_run(md, nmap - v, &db, &len), 0);
    ck_assert_int_eq(tmd_insert_run(md, 1, v, len, db, &done), 0);
    v += len;
  }
  ck_assert_uint_gt(c.vblocks, 4000);
  ck_assert_msg(c.vreqs * 16 <= c.vblocks, "%llu writev requests for %llu blocks",
                (unsigned long long)c.vreqs, (unsigned long long)c.vblocks);
  ck_assert_int_eq(tmd_commit(md), 0);
  ck_assert_uint_eq(c.multi_writes, 0);
  ck_assert(!c.bad_iov);
  ck_assert_int_le(c.max_iovcnt, 256);
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

/* pd_bdev_writev on a file puts each iovec where it belongs, on both the
 * writev path and the one-write-per-iovec fallback, and refuses lengths
 * that are not whole blocks or do not add up to the count. */
START_TEST(bdev_writev_places_iovecs)
{
  pdt_make_file(meta, 1 << 20);
  struct pd_bdev fb;
  pdt_open_bdev(&fb, meta);
  struct counting c = { 0 };
  c.inner = fb;
  struct pd_bdev plain = { &c_ops, &c, fb.nr_blocks, false };
  ck_assert(!pd_bdev_has_writev(&plain));
  uint8_t *a = malloc(3 * PD_BLOCK_SIZE), *z = malloc(PD_BLOCK_SIZE),
          *back = malloc(4 * PD_BLOCK_SIZE);
  ck_assert(a && z && back);
  for (const struct pd_bdev *dev = &fb;; dev = &plain) {
    memset(a, 0xa1, 3 * PD_BLOCK_SIZE);
    memset(z, dev == &fb ? 0x5c : 0x3e, PD_BLOCK_SIZE);
    struct iovec iov[2] = { { z, PD_BLOCK_SIZE }, { a, 3 * PD_BLOCK_SIZE } };
    ck_assert_int_eq(pd_bdev_writev(dev, 10, 4, iov, 2), 0);
    ck_assert_int_eq(pd_bdev_read(&fb, 10, 4, back), 0);
    ck_assert_int_eq(memcmp(back, z, PD_BLOCK_SIZE), 0);
    ck_assert_int_eq(memcmp(back + PD_BLOCK_SIZE, a, 3 * PD_BLOCK_SIZE), 0);
    ck_assert_int_eq(pd_bdev_writev(dev, 10, 3, iov, 2), -EINVAL);
    struct iovec odd = { a, 1000 };
    ck_assert_int_eq(pd_bdev_writev(dev, 10, 1, &odd, 1), -EINVAL);
    ck_assert_int_eq(pd_bdev_writev(dev, fb.nr_blocks - 2, 4, iov, 2), -EIO);
    if (dev == &plain)
      break;
  }
  ck_assert_uint_eq(c.reqs, 2);
  free(a);
  free(z);
  free(back);
  pd_bdev_close(&fb);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("bm_batch");
  TCase *tc = tcase_create("bm_batch");
  tcase_set_timeout(tc, 120);
  tcase_add_checked_fixture(tc, setup, ts_test_dir_teardown);
  tcase_add_test(tc, large_transaction_writes_in_batches);
  tcase_add_test(tc, runs_go_out_as_iovecs);
  tcase_add_test(tc, bdev_writev_places_iovecs);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
