/* The block cache's write-back thread: dirty blocks that eviction hands it
 * stay findable and unreused until written, a writer never changes a block
 * while it is being written, and a flush returns only once every queued
 * block is in the file. A writer rewrites blocks just after they were
 * evicted (so mostly while queued) while readers read the ones it is done
 * with; then the file itself is read back, bypassing the cache. Built for
 * TSan as well (label "threads"). */
#include "../pdata/pdtest.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "pdata/pdata-internal.h"

enum { CACHE = 16, NBLOCKS = 1536, GENS = 6, READERS = 2, LAG = CACHE + 40 };

static struct pd_bm *bm;
/* The readers may look at blocks below `settled`: the writer is done with
 * them for this generation and reads are allowed beside the write-back
 * (never beside the writer, as the cache's contract asks). */
static atomic_uint_fast64_t settled;
static atomic_bool stop;
static pthread_rwlock_t contract; /* writer-preferring: the readers spin on it */

static uint8_t tag(uint64_t nr, unsigned gen) { return (uint8_t)(nr * 7 + gen * 31 + 1); }

static bool holds(const uint8_t *d, uint64_t nr, unsigned gen)
{
  for (size_t k = 16; k < PD_BLOCK_SIZE; k += 256)
    if (d[k] != tag(nr, gen))
      return false;
  return true;
}

/* The file's own device, with multi-block writes (the write-back thread's)
 * slowed down so that queued blocks are still in flight when the writer
 * comes back to them and when the flush runs. */
static struct pd_bdev fdev;
static int slow_read(void *c, uint64_t b, uint32_t n, void *buf)
{
  return fdev.ops->read(c, b, n, buf);
}
static int slow_write(void *c, uint64_t b, uint32_t n, const void *buf)
{
  return fdev.ops->write(c, b, n, buf);
}
static int slow_flush(void *c) { return fdev.ops->flush(c); }
static int slow_writev(void *c, uint64_t b, uint32_t n, const struct iovec *iov, int iovcnt)
{
  usleep(300);
  return fdev.ops->writev(c, b, n, iov, iovcnt);
}
static const struct pd_bdev_ops slow_ops = { slow_read, slow_write, slow_flush, NULL, slow_writev };

static unsigned gen_now; /* written under `contract`'s write side */

static void *reader(void *arg)
{
  unsigned seed = (unsigned)(uintptr_t)arg;
  int failures = 0;
  while (!atomic_load(&stop)) {
    pthread_rwlock_rdlock(&contract);
    uint64_t n = atomic_load(&settled);
    if (n) {
      uint64_t nr = 1 + rand_r(&seed) % n;
      struct pd_block *b;
      if (pd_bm_read(bm, nr, PD_BT_BITMAP, &b) != 0) {
        failures++;
      } else {
        if (!holds(b->data, nr, gen_now))
          failures++;
        pd_bm_unlock(bm, b);
      }
    }
    pthread_rwlock_unlock(&contract);
  }
  return (void *)(intptr_t)failures;
}

static void write_gen(uint64_t nr, unsigned gen, bool zero)
{
  struct pd_block *b;
  ck_assert_int_eq(
      zero ? pd_bm_write_zero(bm, nr, PD_BT_BITMAP, &b) : pd_bm_write(bm, nr, PD_BT_BITMAP, &b), 0);
  memset(b->data + 16, tag(nr, gen), PD_BLOCK_SIZE - 16);
  pd_bm_unlock(bm, b);
}

START_TEST(writeback_keeps_blocks_until_written)
{
  ts_test_dir_setup();
  char *meta = ts_test_file("meta");
  pdt_make_file(meta, (uint64_t)NBLOCKS * PD_BLOCK_SIZE);
  pdt_open_bdev(&fdev, meta);
  ck_assert(pd_bdev_has_writev(&fdev));
  struct pd_bdev bdev = fdev;
  bdev.ops = &slow_ops;
  ck_assert_int_eq(pd_bm_create(&bm, &bdev, NBLOCKS, CACHE), 0);
  pthread_rwlockattr_t ra;
  pthread_rwlockattr_init(&ra);
  pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  ck_assert_int_eq(pthread_rwlock_init(&contract, &ra), 0);
  pthread_rwlockattr_destroy(&ra);

  pthread_t t[READERS];
  for (int i = 0; i < READERS; i++)
    ck_assert_int_eq(pthread_create(&t[i], NULL, reader, (void *)(uintptr_t)(5 + i)), 0);
  for (unsigned gen = 0; gen < GENS; gen++) {
    pthread_rwlock_wrlock(&contract);
    atomic_store(&settled, 0);
    gen_now = gen;
    /* Block 0 is the superblock, which eviction keeps for the commit. */
    for (uint64_t nr = 1; nr < NBLOCKS; nr++) {
      write_gen(nr, gen, gen == 0);
      /* Rewrite a block eviction just passed: most often it is queued or
       * being written, and the write lock must wait for that. */
      if (nr > LAG && nr % 3 == 0)
        write_gen(nr - LAG, gen, false);
      if (nr % 64 == 0) {
        atomic_store(&settled, nr - 1);
        pthread_rwlock_unlock(&contract);
        sched_yield();
        pthread_rwlock_wrlock(&contract);
      }
    }
    atomic_store(&settled, NBLOCKS - 1);
    pthread_rwlock_unlock(&contract);
    sched_yield();
    pthread_rwlock_wrlock(&contract);
    ck_assert_int_eq(pd_bm_flush_dirty(bm, UINT64_MAX), 0);
    ck_assert_uint_eq(bm->nr_wb, 0); /* nothing still on its way */
    /* The commit's promise: the file holds every block, stamped; the
     * last evicted first, as they are the likeliest still in flight. */
    int fd = open(meta, O_RDONLY);
    ck_assert_int_ge(fd, 0);
    uint8_t *d = malloc(PD_BLOCK_SIZE);
    for (uint64_t nr = NBLOCKS - 1; nr > 0; nr--) {
      ck_assert_int_eq(pread(fd, d, PD_BLOCK_SIZE, (off_t)(nr * PD_BLOCK_SIZE)), PD_BLOCK_SIZE);
      ck_assert_msg(holds(d, nr, gen), "block %llu: not generation %u on disk",
                    (unsigned long long)nr, gen);
      ck_assert_int_eq(pd_block_validate(d, nr, PD_BT_BITMAP, NULL, 0), 0);
    }
    free(d);
    close(fd);
    pthread_rwlock_unlock(&contract);
  }
  atomic_store(&stop, true);
  for (int i = 0; i < READERS; i++) {
    void *failures;
    pthread_join(t[i], &failures);
    ck_assert_int_eq((int)(intptr_t)failures, 0);
  }
  ck_assert_uint_gt(bm->wb_queued, 0); /* eviction did hand blocks over */
  ck_assert_uint_eq(bm->nr_wb, 0);
  pthread_rwlock_destroy(&contract);
  pd_bm_destroy(bm);
  pd_bdev_close(&fdev);
  ts_test_dir_teardown();
}
END_TEST

int main(void)
{
  Suite *s = suite_create("bm_writeback");
  TCase *tc = tcase_create("bm_writeback");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, writeback_keeps_blocks_until_written);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
