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

/* A new node is not zeroed whole (a full leaf overwrites all of it), so
 * its buffer may hold an evicted block's bytes: what the entries leave
 * unused must still reach the disk as zeroes, and a node given up before
 * its header was written must come out zeroed past the header. */
START_TEST(new_node_unused_bytes_are_zero)
{
  /* Every buffer the cache will hand out has held 0xAA bytes. */
  for (uint64_t i = 0; i < NBLOCKS; i++) {
    struct pd_block *b;
    ck_assert_int_eq(pd_bm_write_zero(bm, i, PD_BT_RAW, &b), 0);
    memset(b->data, 0xAA, PD_BLOCK_SIZE);
    pd_bm_unlock(bm, b);
  }
  uint32_t maxe = pd_node_max_entries(8), nr = 5;
  struct pd_block *n, *gave_up;
  ck_assert_int_eq(pd_bm_write_node(bm, 1, &n), 0);
  ts__put32(n->data + NODE_FLAGS, PD_NODE_LEAF);
  ts__put32(n->data + NODE_NR, nr);
  ts__put32(n->data + NODE_MAX, maxe);
  ts__put32(n->data + NODE_VSIZE, 8);
  for (uint32_t i = 0; i < nr; i++) {
    ts__put64(n->data + NODE_KEYS + 8 * (size_t)i, 100 + i);
    ts__put64(pd_node_val(n->data, i), 200 + i);
  }
  pd_bm_unlock(bm, n);
  ck_assert_int_eq(pd_bm_write_node(bm, 2, &gave_up), 0);
  pd_bm_unlock(bm, gave_up);
  ck_assert_int_eq(pd_bm_flush_dirty(bm, UINT64_MAX), 0);

  /* The same node built in a zeroed block, as the disk must hold it. */
  uint8_t want[PD_BLOCK_SIZE] = { 0 };
  ts__put32(want + NODE_FLAGS, PD_NODE_LEAF);
  ts__put32(want + NODE_NR, nr);
  ts__put32(want + NODE_MAX, maxe);
  ts__put32(want + NODE_VSIZE, 8);
  for (uint32_t i = 0; i < nr; i++) {
    ts__put64(want + NODE_KEYS + 8 * (size_t)i, 100 + i);
    ts__put64(pd_node_val(want, i), 200 + i);
  }
  pd_block_prepare(want, 1, PD_BT_NODE);
  uint8_t got[PD_BLOCK_SIZE];
  int fd = open(meta, O_RDONLY | O_CLOEXEC);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(pread(fd, got, sizeof got, PD_BLOCK_SIZE), (ssize_t)sizeof got);
  for (size_t k = 0; k < PD_BLOCK_SIZE; k++)
    ck_assert_msg(got[k] == want[k], "node byte %zu: 0x%02x, want 0x%02x", k, got[k], want[k]);
  memset(want, 0, sizeof want);
  pd_block_prepare(want, 2, PD_BT_NODE);
  ck_assert_int_eq(pread(fd, got, sizeof got, 2 * PD_BLOCK_SIZE), (ssize_t)sizeof got);
  close(fd);
  for (size_t k = 0; k < PD_BLOCK_SIZE; k++)
    ck_assert_msg(got[k] == want[k], "headerless byte %zu: 0x%02x, want 0x%02x", k, got[k],
                  want[k]);
}
END_TEST

/* A provision allocates its blocks in ascending order, so the cache holds
 * runs of consecutive block numbers and looks up the next ones, which are
 * not cached yet: each must sit alone in its bucket, and a lookup of the
 * next ones must find an empty bucket rather than walk cached blocks. */
START_TEST(consecutive_blocks_do_not_share_buckets)
{
  enum { BIG = 4096, BASE = 1000, FILE_BLOCKS = BASE + 3 * BIG };
  char *big = ts_test_file("big");
  struct pd_bdev bd;
  struct pd_bm *m;
  pdt_make_file(big, (uint64_t)FILE_BLOCKS * PD_BLOCK_SIZE);
  pdt_open_bdev(&bd, big);
  ck_assert_int_eq(pd_bm_create(&m, &bd, FILE_BLOCKS, BIG), 0);
  for (uint64_t i = BASE; i < BASE + BIG; i++) {
    struct pd_block *b;
    ck_assert_int_eq(pd_bm_write_zero(m, i, PD_BT_RAW, &b), 0);
    pd_bm_unlock(m, b);
  }
  for (uint64_t i = BASE; i < BASE + BIG; i++)
    ck_assert_msg(pd_bm_chain_len(m, i) == 1, "block %llu shares its bucket with %zu others",
                  (unsigned long long)i, pd_bm_chain_len(m, i) - 1);
  for (uint64_t i = BASE + BIG; i < BASE + 2 * BIG; i++)
    ck_assert_msg(pd_bm_chain_len(m, i) == 0, "a lookup of block %llu walks %zu cached blocks",
                  (unsigned long long)i, pd_bm_chain_len(m, i));
  pd_bm_destroy(m);
  pd_bdev_close(&bd);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("bm_cache");
  TCase *tc = tcase_create("bm_cache");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, hit_block_gets_second_chance);
  tcase_add_test(tc, held_block_is_never_evicted);
  tcase_add_test(tc, new_node_unused_bytes_are_zero);
  tcase_add_test(tc, consecutive_blocks_do_not_share_buckets);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
