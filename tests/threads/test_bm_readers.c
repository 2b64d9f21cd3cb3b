/* Readers of the metadata block cache at once, with a cache far smaller than
 * the blocks they read: hits (read side, no LRU relink) race misses and
 * eviction, and every block a reader holds keeps its contents until it
 * drops it. Built for TSan as well (label "threads"). */
#include "../pdata/pdtest.h"

#include <pthread.h>

#include "pdata/pdata-internal.h"

enum { THREADS = 4, ROUNDS = 20000, CACHE = 16, NBLOCKS = 48 };

static struct pd_bm *bm;

struct worker {
  unsigned seed;
  int failures;
};

static void *run(void *arg)
{
  struct worker *w = arg;
  for (int i = 0; i < ROUNDS; i++) {
    /* Mostly a hot set that stays cached, sometimes a cold block that
     * forces an eviction. */
    uint64_t nr = rand_r(&w->seed) % 8 ? rand_r(&w->seed) % 8 : rand_r(&w->seed) % NBLOCKS;
    struct pd_block *b;
    if (pd_bm_read(bm, nr, PD_BT_RAW, &b)) {
      w->failures++;
      continue;
    }
    for (size_t k = 0; k < PD_BLOCK_SIZE; k += 512)
      if (b->data[k] != (uint8_t)nr || b->nr != nr)
        w->failures++;
    pd_bm_unlock(bm, b);
  }
  return NULL;
}

START_TEST(readers_race_eviction)
{
  ts_test_dir_setup();
  char *meta = ts_test_file("meta");
  pdt_make_file(meta, (uint64_t)NBLOCKS * PD_BLOCK_SIZE);
  struct pd_bdev bdev;
  pdt_open_bdev(&bdev, meta);
  ck_assert_int_eq(pd_bm_create(&bm, &bdev, NBLOCKS, CACHE), 0);
  pdt_bm_fill_numbered(bm, NBLOCKS);

  pthread_t t[THREADS];
  struct worker w[THREADS];
  for (int i = 0; i < THREADS; i++) {
    w[i] = (struct worker){ .seed = 17u + (unsigned)i };
    ck_assert_int_eq(pthread_create(&t[i], NULL, run, &w[i]), 0);
  }
  for (int i = 0; i < THREADS; i++) {
    pthread_join(t[i], NULL);
    ck_assert_int_eq(w[i].failures, 0);
  }
  ck_assert_uint_le(bm->nr_cached, CACHE);
  pd_bm_destroy(bm);
  pd_bdev_close(&bdev);
  ts_test_dir_teardown();
}
END_TEST

int main(void)
{
  Suite *s = suite_create("bm_readers");
  TCase *tc = tcase_create("bm_readers");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, readers_race_eviction);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
