/* The block cache's eviction: a block read since eviction last passed it
 * gets a second chance (the hit path sets a bit instead of relinking the LRU
 * list), and a block someone holds is never evicted or its buffer reused. */
#include "pdtest.h"

#include "pdata/pdata-internal.h"

enum { CACHE = 16, NBLOCKS = 128 };

static char *meta;
static struct pd_bdev bdev;
static struct pd_bm *bm;

/* NBLOCKS raw blocks on disk, each filled with its own number. */
static void setup(void)
{
  ts_test_dir_setup();
  meta = ts_test_file("meta");
  pdt_make_file(meta, (uint64_t)NBLOCKS * PD_BLOCK_SIZE);
  pdt_open_bdev(&bdev, meta);
  ck_assert_int_eq(pd_bm_create(&bm, &bdev, NBLOCKS, CACHE), 0);
  pdt_bm_fill_numbered(bm, NBLOCKS);
  bm->reads = 0;
}

static void teardown(void)
{
  pd_bm_destroy(bm);
  pd_bdev_close(&bdev);
  ts_test_dir_teardown();
}

/* Reads block nr and drops it; true when it came from the disk. */
static bool touch(uint64_t nr)
{
  uint64_t before = bm->reads;
  struct pd_block *b;
  ck_assert_int_eq(pd_bm_read(bm, nr, PD_BT_RAW, &b), 0);
  ck_assert_uint_eq(b->data[PD_BLOCK_SIZE - 1], (uint8_t)nr);
  pd_bm_unlock(bm, b);
  return bm->reads != before;
}

START_TEST(hit_block_gets_second_chance)
{
  for (uint64_t i = 0; i < CACHE; i++)
    ck_assert(touch(i));   /* 0 is now the oldest */
  ck_assert(!touch(0));    /* a hit: only the bit is set */
  ck_assert(touch(CACHE)); /* one miss evicts one block: not 0 but 1 */
  ck_assert(!touch(0));
  ck_assert(touch(1));
}
END_TEST

START_TEST(held_block_is_never_evicted)
{
  struct pd_block *held;
  ck_assert_int_eq(pd_bm_read(bm, 0, PD_BT_RAW, &held), 0);
  uint8_t *data = held->data;
  for (int round = 0; round < 3; round++)
    for (uint64_t i = 1; i < NBLOCKS; i++)
      touch(i);
  ck_assert_ptr_eq(held->data, data);
  ck_assert_uint_eq(held->nr, 0);
  for (size_t k = 0; k < PD_BLOCK_SIZE; k++)
    ck_assert_uint_eq(data[k], 0);
  struct pd_block *again;
  uint64_t before = bm->reads;
  ck_assert_int_eq(pd_bm_read(bm, 0, PD_BT_RAW, &again), 0);
  ck_assert_ptr_eq(again, held);
  ck_assert_uint_eq(bm->reads, before);
  pd_bm_unlock(bm, again);
  pd_bm_unlock(bm, held);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("bm_cache");
  TCase *tc = tcase_create("bm_cache");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, hit_block_gets_second_chance);
  tcase_add_test(tc, held_block_is_never_evicted);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
