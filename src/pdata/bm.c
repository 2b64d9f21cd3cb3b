/* Block manager: a bounded LRU cache of 4 KiB metadata blocks with per-type
 * validation on read and checksum stamping on write.
 *
 * Concurrency: the cache structure is guarded by one rwlock. A reader that
 * finds its block cached takes only the read side and counts itself in the
 * block's atomic reader count; it does not relink the LRU list but sets the
 * block's referenced bit, and eviction gives a referenced block a second
 * chance (CLOCK). Misses, writers, eviction and commit take the write side,
 * so eviction sees every reader count that can grow and never frees a block
 * in use. Block contents follow the library's readers-XOR-writer rule (the
 * caller's pool lock): a block write lock is only taken by the single
 * writer, when no reader runs, so the per-block counts are bookkeeping that
 * lets eviction skip blocks in use and lets debug builds catch a broken
 * contract.
 *
 * Write-back: dirty blocks that eviction picks are queued (`wb`) to the
 * block manager's write-back thread, which stamps and writes them while the
 * evicting thread goes on inserting. A queued block leaves the LRU list but
 * stays in the hash, so it is still found (read hits go on), but it is
 * neither evicted nor handed to a writer until written: a write lock, a
 * forget, a commit's flush and an abort first drain the queue. Its results
 * are taken back ("reaped") under the write side: the blocks become clean
 * at the LRU's tail (the next eviction's first victims) or, when the write
 * failed, stay dirty with the error kept for the commit. */
#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "pdata/pdata-internal.h"

uint32_t pd_btype_salt(enum pd_btype t)
{
  switch (t) {
  case PD_BT_SUPER: return PD_SALT_SUPER;
  case PD_BT_NODE: return PD_SALT_NODE;
  case PD_BT_BITMAP: return PD_SALT_BITMAP;
  case PD_BT_INDEX: return PD_SALT_INDEX;
  default: return 0;
  }
}

static const char *btype_name(enum pd_btype t)
{
  switch (t) {
  case PD_BT_SUPER: return "superblock";
  case PD_BT_NODE: return "btree node";
  case PD_BT_BITMAP: return "space map bitmap";
  case PD_BT_INDEX: return "space map index";
  default: return "block";
  }
}

int pd_block_validate(const uint8_t *data, uint64_t nr, enum pd_btype t, char *why, size_t whylen)
{
  if (t == PD_BT_RAW)
    return 0;
  uint32_t want = pd_block_csum(data, pd_btype_salt(t));
  if (ts__le32(data) != want) {
    if (why)
      snprintf(why, whylen, "%s %" PRIu64 ": checksum mismatch (stored %08x, computed %08x)",
               btype_name(t), nr, ts__le32(data), want);
    return -EILSEQ;
  }
  if (ts__le64(data + 8) != nr) {
    if (why)
      snprintf(why, whylen, "%s %" PRIu64 ": stored block number is %" PRIu64, btype_name(t), nr,
               ts__le64(data + 8));
    return -EILSEQ;
  }
  if (t == PD_BT_NODE) {
    uint32_t flags = ts__le32(data + NODE_FLAGS), nr_e = ts__le32(data + NODE_NR);
    uint32_t maxe = ts__le32(data + NODE_MAX), vs = ts__le32(data + NODE_VSIZE);
    if (!(flags & (PD_NODE_INTERNAL | PD_NODE_LEAF)) || vs == 0 || maxe == 0 ||
        32 + (uint64_t)(8 + vs) * maxe > PD_BLOCK_SIZE || nr_e > maxe) {
      if (why)
        snprintf(why, whylen, "btree node %" PRIu64 ": bad header (flags %u, nr %u, max %u, value size %u)",
                 nr, flags, nr_e, maxe, vs);
      return -EILSEQ;
    }
    /* Every search in a node is a binary search: keys out of order would
     * hand a walk entries outside the range it asked for. */
    for (uint32_t i = 1; i < nr_e; i++) {
      uint64_t prev = ts__le64(data + NODE_KEYS + 8 * (i - 1)), key = ts__le64(data + NODE_KEYS + 8 * i);
      if (key <= prev) {
        if (why)
          snprintf(why, whylen,
                   "btree node %" PRIu64 ": key %u (%" PRIu64 ") does not follow key %u (%" PRIu64 ")",
                   nr, i, key, i - 1, prev);
        return -EILSEQ;
      }
    }
  }
  return 0;
}

void pd_block_prepare(uint8_t *data, uint64_t nr, enum pd_btype t)
{
  if (t == PD_BT_RAW)
    return;
  ts__put64(data + 8, nr);
  ts__put32(data, pd_block_csum(data, pd_btype_salt(t)));
}

/* Fibonacci hashing: the product's top bits. Consecutive block numbers
 * (what the allocator hands out, and so most of the cache) land in distinct
 * buckets, and the next ones in empty buckets, so a new block's lookup
 * (a miss) usually reads no block at all. Bits from the middle of the
 * product put a 5,120-block range in 4,081 of 8,192 buckets and made the
 * next block's miss walk 0.9 blocks on average. */
static size_t hash_of(const struct pd_bm *bm, uint64_t nr)
{
  return (size_t)((nr * 0x9E3779B97F4A7C15ull) >> bm->hash_shift);
}

int pd_bm_create(struct pd_bm **out, const struct pd_bdev *bdev, uint64_t nr_blocks,
                 uint32_t cache_blocks)
{
  struct pd_bm *bm = calloc(1, sizeof(*bm));
  if (!bm)
    return -ENOMEM;
  bm->bdev = *bdev;
  bm->nr_blocks = nr_blocks;
  bm->max_cached = cache_blocks ? cache_blocks : 4096;
  if (bm->max_cached < 16)
    bm->max_cached = 16;
  /* Sized for what the hash holds: the cache and the blocks queued to the
   * write-back thread beyond it, at most half full. */
  size_t hs = 64, held = (size_t)bm->max_cached + BM_WB_SLOTS * BM_EVICT_BATCH;
  unsigned bits = 6;
  while (hs < held * 2) {
    hs <<= 1;
    bits++;
  }
  bm->hash = calloc(hs, sizeof(*bm->hash));
  if (!bm->hash) {
    free(bm);
    return -ENOMEM;
  }
  bm->hash_shift = 64 - bits;
  bm->lru.prev = bm->lru.next = &bm->lru;
  /* Writer-preferring: the read side is taken for every cached lookup, and
   * a miss must not wait behind an endless stream of them. */
  pthread_rwlockattr_t ra;
  pthread_rwlockattr_init(&ra);
  pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  int r = pthread_rwlock_init(&bm->lock, &ra);
  pthread_rwlockattr_destroy(&ra);
  if (r) {
    free(bm->hash);
    free(bm);
    return -r;
  }
  if ((r = pthread_mutex_init(&bm->wb_mu, NULL)) != 0) {
    pthread_rwlock_destroy(&bm->lock);
    free(bm->hash);
    free(bm);
    return -r;
  }
  if ((r = pthread_cond_init(&bm->wb_cv, NULL)) != 0) {
    pthread_mutex_destroy(&bm->wb_mu);
    pthread_rwlock_destroy(&bm->lock);
    free(bm->hash);
    free(bm);
    return -r;
  }
  *out = bm;
  return 0;
}

static void lru_unlink(struct pd_block *b)
{
  b->prev->next = b->next;
  b->next->prev = b->prev;
}

static void lru_push(struct pd_bm *bm, struct pd_block *b)
{
  b->next = bm->lru.next;
  b->prev = &bm->lru;
  bm->lru.next->prev = b;
  bm->lru.next = b;
}

static void hash_remove(struct pd_bm *bm, struct pd_block *b)
{
  struct pd_block **pp = &bm->hash[hash_of(bm, b->nr)];
  while (*pp != b)
    pp = &(*pp)->hnext;
  *pp = b->hnext;
}

/* Evicted blocks are kept for reuse, up to this many: a long run of new
 * blocks (a large provision) would otherwise allocate, page-fault and free
 * one 4 KiB buffer per block. As many as the write-back thread may hold
 * beyond the cache's size, which come back to the tail together. */
#define BM_SPARE_MAX (256 + BM_WB_SLOTS * BM_EVICT_BATCH)

static void block_free(struct pd_bm *bm, struct pd_block *b)
{
  hash_remove(bm, b);
  lru_unlink(b);
  bm->nr_cached--;
  if (bm->nr_spare < BM_SPARE_MAX) {
    b->hnext = bm->spare;
    bm->spare = b;
    bm->nr_spare++;
    return;
  }
  free(b->data);
  free(b);
}

static struct pd_block *block_alloc(struct pd_bm *bm)
{
  struct pd_block *b = bm->spare;
  if (b) {
    bm->spare = b->hnext;
    bm->nr_spare--;
    uint8_t *data = b->data;
    memset(b, 0, sizeof(*b));
    b->data = data;
    return b;
  }
  b = calloc(1, sizeof(*b));
  if (!b || posix_memalign((void **)&b->data, PD_BLOCK_SIZE, PD_BLOCK_SIZE)) {
    free(b);
    return NULL;
  }
  return b;
}

static void spare_drop(struct pd_bm *bm)
{
  while (bm->spare) {
    struct pd_block *b = bm->spare;
    bm->spare = b->hnext;
    free(b->data);
    free(b);
  }
  bm->nr_spare = 0;
}

static int cmp_block(const void *a, const void *b)
{
  uint64_t x = (*(struct pd_block *const *)a)->nr, y = (*(struct pd_block *const *)b)->nr;
  return x < y ? -1 : x > y;
}

/* Write blocks v[0..n) (sorted, dirty), contiguous ones in one request of
 * at most BM_RUN_MAX blocks, and mark them clean. A device that takes an
 * iovec gets the cached blocks themselves (a 1 TiB provision commits
 * ~270 MB of metadata, which a staging copy would read and write again);
 * one that does not gets them copied into run_buf. */
#define BM_RUN_MAX 256

/* `mark`: mark the written blocks clean and count them (the caller holds
 * the write side); the write-back thread leaves that to the reaper. */
static int write_runs(struct pd_bm *bm, struct pd_block **v, size_t n, bool mark)
{
  int r = 0;
  size_t i = 0;
  bool vec = pd_bdev_has_writev(&bm->bdev);
  struct iovec iov[BM_RUN_MAX];
  while (!r && i < n) {
    size_t j = i + 1;
    while (j < n && j - i < BM_RUN_MAX && v[j]->nr == v[j - 1]->nr + 1)
      j++;
    for (size_t k = i; k < j; k++)
      pd_block_prepare(v[k]->data, v[k]->nr, (enum pd_btype)v[k]->type);
    if (j - i == 1) {
      r = pd_bdev_write(&bm->bdev, v[i]->nr, 1, v[i]->data);
    } else if (vec) {
      for (size_t k = i; k < j; k++)
        iov[k - i] = (struct iovec){ v[k]->data, PD_BLOCK_SIZE };
      r = pd_bdev_writev(&bm->bdev, v[i]->nr, (uint32_t)(j - i), iov, (int)(j - i));
    } else {
      if (!bm->run_buf && posix_memalign((void **)&bm->run_buf, PD_BLOCK_SIZE,
                                         BM_RUN_MAX * (size_t)PD_BLOCK_SIZE)) {
        bm->run_buf = NULL;
        return -ENOMEM;
      }
      for (size_t k = i; k < j; k++)
        memcpy(bm->run_buf + (k - i) * PD_BLOCK_SIZE, v[k]->data, PD_BLOCK_SIZE);
      r = pd_bdev_write(&bm->bdev, v[i]->nr, (uint32_t)(j - i), bm->run_buf);
    }
    if (!r && mark) {
      for (size_t k = i; k < j; k++)
        v[k]->dirty = false;
      bm->writes += j - i;
    }
    i = j;
  }
  return r;
}

static int write_sorted(struct pd_bm *bm, struct pd_block **v, size_t n)
{
  return write_runs(bm, v, n, true);
}

/* The write-back thread: writes the queued batches in order. It reads the
 * blocks' data (as a cached reader may at the same time) and writes only
 * the stamp (checksum and block number in the header, which no cached
 * reader looks at); it touches no flag and no list. */
static void *wb_main(void *arg)
{
  struct pd_bm *bm = arg;
  pthread_mutex_lock(&bm->wb_mu);
  for (;;) {
    while (bm->wb_written == bm->wb_queued && !bm->wb_stop)
      pthread_cond_wait(&bm->wb_cv, &bm->wb_mu);
    if (bm->wb_written == bm->wb_queued)
      break;
    struct pd_bm_wb_batch *w = &bm->wb_batch[bm->wb_written % BM_WB_SLOTS];
    pthread_mutex_unlock(&bm->wb_mu);
    int r = write_runs(bm, w->v, w->n, false);
    pthread_mutex_lock(&bm->wb_mu);
    w->r = r;
    bm->wb_written++;
    pthread_cond_broadcast(&bm->wb_cv);
  }
  pthread_mutex_unlock(&bm->wb_mu);
  return NULL;
}

static void lru_push_tail(struct pd_bm *bm, struct pd_block *b)
{
  b->prev = bm->lru.prev;
  b->next = &bm->lru;
  bm->lru.prev->next = b;
  bm->lru.prev = b;
}

/* Take back the written batches (write side of `lock` and wb_mu held). */
static void wb_reap_locked(struct pd_bm *bm)
{
  while (bm->wb_reaped < bm->wb_written) {
    struct pd_bm_wb_batch *w = &bm->wb_batch[bm->wb_reaped % BM_WB_SLOTS];
    for (size_t k = 0; k < w->n; k++) {
      struct pd_block *b = w->v[k];
      b->wb = false;
      if (!w->r)
        b->dirty = false;
      lru_push_tail(bm, b);
    }
    if (!w->r)
      bm->writes += w->n;
    else if (!bm->io_error)
      bm->io_error = w->r;
    bm->nr_wb -= w->n;
    bm->wb_reaped++;
  }
}

static void wb_reap(struct pd_bm *bm)
{
  if (!bm->wb_started)
    return;
  pthread_mutex_lock(&bm->wb_mu);
  wb_reap_locked(bm);
  pthread_mutex_unlock(&bm->wb_mu);
}

/* Wait until every queued block is written, and take them back. */
static void wb_drain(struct pd_bm *bm)
{
  if (!bm->wb_started)
    return;
  pthread_mutex_lock(&bm->wb_mu);
  while (bm->wb_written < bm->wb_queued)
    pthread_cond_wait(&bm->wb_cv, &bm->wb_mu);
  wb_reap_locked(bm);
  pthread_mutex_unlock(&bm->wb_mu);
}

/* Queue v[0..n) (sorted, dirty, unlocked) to the write-back thread, waiting
 * for a slot when BM_WB_SLOTS batches are in flight. Nonzero when there is
 * no thread (the caller writes them itself). */
static int wb_queue(struct pd_bm *bm, struct pd_block **v, size_t n)
{
  if (!bm->wb_started) {
    int e = pthread_create(&bm->wb_thread, NULL, wb_main, bm);
    if (e)
      return -e;
    bm->wb_started = true;
  }
  pthread_mutex_lock(&bm->wb_mu);
  while (bm->wb_queued - bm->wb_reaped == BM_WB_SLOTS) {
    while (bm->wb_written == bm->wb_reaped)
      pthread_cond_wait(&bm->wb_cv, &bm->wb_mu);
    wb_reap_locked(bm);
  }
  struct pd_bm_wb_batch *w = &bm->wb_batch[bm->wb_queued % BM_WB_SLOTS];
  memcpy(w->v, v, n * sizeof(*v));
  w->n = n;
  w->r = 0;
  for (size_t k = 0; k < n; k++) {
    v[k]->wb = true;
    lru_unlink(v[k]);
    v[k]->prev = v[k]->next = v[k];
  }
  bm->nr_wb += n;
  bm->wb_queued++;
  pthread_cond_broadcast(&bm->wb_cv);
  pthread_mutex_unlock(&bm->wb_mu);
  return 0;
}

static int write_out(struct pd_bm *bm, struct pd_block *b)
{
  pd_block_prepare(b->data, b->nr, (enum pd_btype)b->type);
  int r = pd_bdev_write(&bm->bdev, b->nr, 1, b->data);
  if (r)
    return r;
  bm->writes++;
  b->dirty = false;
  return 0;
}

/* Make room for one more block: evict least recently used unlocked blocks;
 * one read since eviction last passed it moves a block back to the head
 * once (its bit cleared), as a hit under the write side would have.
 * Dirty ones are written first; they belong to the open transaction and sit
 * at locations free in the last commit, so writing them early is safe. They
 * are written a batch at a time, the oldest unlocked dirty blocks sorted so
 * neighbours go in one request: a transaction larger than the cache (a
 * large provision) then writes at the device's sequential rate instead of
 * one request per block. A device that takes an iovec has them written by
 * the write-back thread instead: the cache then holds up to
 * BM_WB_SLOTS * BM_EVICT_BATCH blocks more while they are in flight. */
static void evict(struct pd_bm *bm)
{
  wb_reap(bm);
  bool async = pd_bdev_has_writev(&bm->bdev) && !bm->io_error;
  struct pd_block *b = bm->lru.prev;
  while (bm->nr_cached - bm->nr_wb >= bm->max_cached && b != &bm->lru) {
    struct pd_block *prev = b->prev;
    if (!atomic_load_explicit(&b->readers, memory_order_acquire) && !b->writer) {
      /* No hit can set the bit while the write side is held, so each block
       * moves at most once and the walk ends. */
      if (atomic_load_explicit(&b->referenced, memory_order_relaxed)) {
        atomic_store_explicit(&b->referenced, false, memory_order_relaxed);
        lru_unlink(b);
        lru_push(bm, b);
        b = prev;
        continue;
      }
      if (b->dirty) {
        struct pd_block *v[BM_EVICT_BATCH];
        size_t n = 0;
        for (struct pd_block *x = b; x != &bm->lru && n < BM_EVICT_BATCH; x = x->prev)
          if (x->dirty && !atomic_load_explicit(&x->readers, memory_order_acquire) && !x->writer &&
              (x == b || x->nr != 0))
            v[n++] = x;
        qsort(v, n, sizeof(v[0]), cmp_block);
        /* The superblock (copied whole by its readers) is written here. */
        if (async && b->nr != 0 && !wb_queue(bm, v, n)) {
          b = bm->lru.prev; /* the batch left the list, maybe with `prev` */
          continue;
        }
        int r = write_sorted(bm, v, n);
        if (r) {
          if (!bm->io_error)
            bm->io_error = r;
          b = prev;
          continue;
        }
      }
      block_free(bm, b);
    }
    b = prev;
  }
}

static struct pd_block *find(struct pd_bm *bm, uint64_t nr)
{
  for (struct pd_block *b = bm->hash[hash_of(bm, nr)]; b; b = b->hnext)
    if (b->nr == nr)
      return b;
  return NULL;
}

/* What a write lock of a block not read from disk starts from. */
enum fill {
  FILL_READ, /* read it (or the cached copy) */
  FILL_ZERO, /* all zeroes */
  FILL_ALL,  /* undefined: the caller writes every byte */
  FILL_NODE, /* a B-tree node: header zeroed, the rest zeroed at unlock */
};

/* Zero the bytes of a new node that its entries do not use, as they were
 * when every new block was zeroed whole: the keys and values past the
 * count and the tail past the values. A header that is not a node's (the
 * caller gave up before writing one) zeroes everything past it. */
static void node_zero_unused(uint8_t *n)
{
  uint32_t flags = ts__le32(n + NODE_FLAGS), nr = pd_node_nr(n), maxe = pd_node_maxe(n),
           vs = pd_node_vsize(n);
  if ((flags != PD_NODE_LEAF && flags != PD_NODE_INTERNAL) || vs > PD_BLOCK_SIZE ||
      maxe != pd_node_max_entries(vs) || nr > maxe) {
    memset(n + NODE_KEYS, 0, PD_BLOCK_SIZE - NODE_KEYS);
    return;
  }
  size_t end = NODE_KEYS + (size_t)maxe * (8 + vs);
  memset(n + NODE_KEYS + 8 * (size_t)nr, 0, 8 * (size_t)(maxe - nr));
  memset(pd_node_val(n, nr), 0, (size_t)vs * (maxe - nr));
  memset(n + end, 0, PD_BLOCK_SIZE - end);
}

/* Start a write lock of a block not read from disk. */
static void fill_new(struct pd_block *b, enum fill f)
{
  if (f == FILL_ZERO)
    memset(b->data, 0, PD_BLOCK_SIZE);
  else if (f == FILL_NODE)
    memset(b->data, 0, NODE_KEYS);
  b->zero_unused = f == FILL_NODE;
}

size_t pd_bm_chain_len(struct pd_bm *bm, uint64_t nr)
{
  size_t n = 0;
  pthread_rwlock_rdlock(&bm->lock);
  for (struct pd_block *b = bm->hash[hash_of(bm, nr)]; b; b = b->hnext)
    n++;
  pthread_rwlock_unlock(&bm->lock);
  return n;
}

static int get(struct pd_bm *bm, uint64_t nr, enum pd_btype t, bool write, enum fill fill,
               struct pd_block **out)
{
  if (nr >= bm->nr_blocks)
    return -EIO;
  if (!write) {
    /* A hit: the read side keeps the chains and the block in place, and
     * the count taken here keeps eviction off it after the unlock. */
    pthread_rwlock_rdlock(&bm->lock);
    struct pd_block *b = find(bm, nr);
    bool held = b && b->writer;
    if (b && !held) {
      atomic_fetch_add_explicit(&b->readers, 1, memory_order_relaxed);
      if (!atomic_load_explicit(&b->referenced, memory_order_relaxed))
        atomic_store_explicit(&b->referenced, true, memory_order_relaxed);
    }
    pthread_rwlock_unlock(&bm->lock);
    if (held) {
      assert(!"metadata block locked in conflicting modes");
      return -EBUSY;
    }
    if (b) {
      *out = b;
      return 0;
    }
  }
  pthread_rwlock_wrlock(&bm->lock);
  struct pd_block *b = find(bm, nr);
  if (b && b->wb)
    wb_drain(bm); /* no writer while it is being written; back on the list */
  if (b) {
    if (b->writer || (write && atomic_load_explicit(&b->readers, memory_order_acquire))) {
      /* Only possible when the readers-XOR-writer contract is broken. */
      pthread_rwlock_unlock(&bm->lock);
      assert(!"metadata block locked in conflicting modes");
      return -EBUSY;
    }
    lru_unlink(b);
    lru_push(bm, b);
    if (fill != FILL_READ) {
      fill_new(b, fill);
      b->type = (uint8_t)t;
    }
  } else {
    evict(bm);
    b = block_alloc(bm);
    if (!b) {
      pthread_rwlock_unlock(&bm->lock);
      return -ENOMEM;
    }
    b->nr = nr;
    b->type = (uint8_t)t;
    if (fill != FILL_READ) {
      fill_new(b, fill);
    } else {
      int r = pd_bdev_read(&bm->bdev, nr, 1, b->data);
      if (!r)
        r = pd_block_validate(b->data, nr, t, bm->why, sizeof(bm->why));
      if (r) {
        b->hnext = bm->spare; /* back to the spares (not in the cache yet) */
        bm->spare = b;
        bm->nr_spare++;
        pthread_rwlock_unlock(&bm->lock);
        return r;
      }
      bm->reads++;
    }
    size_t h = hash_of(bm, nr);
    b->hnext = bm->hash[h];
    bm->hash[h] = b;
    lru_push(bm, b);
    bm->nr_cached++;
  }
  if (write) {
    b->writer = true;
    b->type = (uint8_t)t;
  } else {
    atomic_fetch_add_explicit(&b->readers, 1, memory_order_relaxed);
  }
  pthread_rwlock_unlock(&bm->lock);
  *out = b;
  return 0;
}

int pd_bm_read(struct pd_bm *bm, uint64_t nr, enum pd_btype t, struct pd_block **out)
{
  return get(bm, nr, t, false, FILL_READ, out);
}

int pd_bm_write(struct pd_bm *bm, uint64_t nr, enum pd_btype t, struct pd_block **out)
{
  return get(bm, nr, t, true, FILL_READ, out);
}

int pd_bm_write_zero(struct pd_bm *bm, uint64_t nr, enum pd_btype t, struct pd_block **out)
{
  return get(bm, nr, t, true, FILL_ZERO, out);
}

int pd_bm_write_fill(struct pd_bm *bm, uint64_t nr, enum pd_btype t, struct pd_block **out)
{
  return get(bm, nr, t, true, FILL_ALL, out);
}

int pd_bm_write_node(struct pd_bm *bm, uint64_t nr, struct pd_block **out)
{
  return get(bm, nr, PD_BT_NODE, true, FILL_NODE, out);
}

void pd_bm_unlock(struct pd_bm *bm, struct pd_block *b)
{
  /* Only the holder changes `writer` of a held block, so it reads it
   * without the lock. A reader just drops its count: release, so its reads
   * of the data come before eviction (acquire) may reuse the buffer. */
  if (!b->writer) {
    int was = atomic_fetch_sub_explicit(&b->readers, 1, memory_order_release);
    assert(was > 0);
    (void)was;
    return;
  }
  if (b->zero_unused) {
    node_zero_unused(b->data);
    b->zero_unused = false;
  }
  pthread_rwlock_wrlock(&bm->lock);
  b->writer = false;
  b->dirty = true;
  pthread_rwlock_unlock(&bm->lock);
}

/* Write the cached blocks `pick` chooses, in ascending order so contiguous
 * runs go in one request (write side held). */
static int write_picked(struct pd_bm *bm, bool (*pick)(const struct pd_block *, uint64_t),
                        uint64_t arg)
{
  size_t n = 0;
  for (struct pd_block *b = bm->lru.next; b != &bm->lru; b = b->next)
    n += pick(b, arg);
  if (!n)
    return 0;
  struct pd_block **v = malloc(n * sizeof(*v));
  if (!v)
    return -ENOMEM;
  n = 0;
  for (struct pd_block *b = bm->lru.next; b != &bm->lru; b = b->next)
    if (pick(b, arg))
      v[n++] = b;
  qsort(v, n, sizeof(*v), cmp_block);
  int r = write_sorted(bm, v, n);
  free(v);
  return r;
}

static bool dirty_but(const struct pd_block *b, uint64_t skip) { return b->dirty && b->nr != skip; }

int pd_bm_flush_dirty(struct pd_bm *bm, uint64_t skip)
{
  pthread_rwlock_wrlock(&bm->lock);
  wb_drain(bm);
  int r = bm->io_error;
  bm->io_error = 0;
  if (!r)
    r = write_picked(bm, dirty_but, skip);
  pthread_rwlock_unlock(&bm->lock);
  return r;
}

/* Dirty, unlocked, and not the superblock (written last, by the commit). */
static bool write_back_now(const struct pd_block *b, uint64_t unused)
{
  (void)unused;
  return b->dirty && b->nr != 0 && !b->writer &&
         !atomic_load_explicit(&b->readers, memory_order_acquire);
}

int pd_bm_write_back(struct pd_bm *bm)
{
  pthread_rwlock_wrlock(&bm->lock);
  wb_reap(bm); /* the queued blocks are on their way; no need to wait */
  int r = write_picked(bm, write_back_now, 0);
  /* As for an evicted block: a failed write fails the next commit (not a
   * failed allocation: the commit writes those blocks itself). */
  if (r && r != -ENOMEM && !bm->io_error)
    bm->io_error = r;
  pthread_rwlock_unlock(&bm->lock);
  return r;
}

int pd_bm_write_block(struct pd_bm *bm, uint64_t nr)
{
  pthread_rwlock_wrlock(&bm->lock);
  struct pd_block *b = find(bm, nr);
  if (b && b->wb)
    wb_drain(bm);
  int r = (b && b->dirty) ? write_out(bm, b) : 0;
  pthread_rwlock_unlock(&bm->lock);
  return r;
}

void pd_bm_drop_all(struct pd_bm *bm)
{
  pthread_rwlock_wrlock(&bm->lock);
  wb_drain(bm);
  while (bm->lru.next != &bm->lru) {
    assert(!bm->lru.next->readers && !bm->lru.next->writer);
    block_free(bm, bm->lru.next);
  }
  bm->io_error = 0;
  pthread_rwlock_unlock(&bm->lock);
}

void pd_bm_forget(struct pd_bm *bm, uint64_t nr)
{
  pthread_rwlock_wrlock(&bm->lock);
  struct pd_block *b = find(bm, nr);
  if (b && b->wb)
    wb_drain(bm);
  if (b && !atomic_load_explicit(&b->readers, memory_order_acquire) && !b->writer)
    block_free(bm, b);
  pthread_rwlock_unlock(&bm->lock);
}

void pd_bm_destroy(struct pd_bm *bm)
{
  if (!bm)
    return;
  pd_bm_drop_all(bm);
  if (bm->wb_started) {
    pthread_mutex_lock(&bm->wb_mu);
    bm->wb_stop = true;
    pthread_cond_broadcast(&bm->wb_cv);
    pthread_mutex_unlock(&bm->wb_mu);
    pthread_join(bm->wb_thread, NULL);
  }
  pthread_cond_destroy(&bm->wb_cv);
  pthread_mutex_destroy(&bm->wb_mu);
  spare_drop(bm);
  free(bm->run_buf);
  pthread_rwlock_destroy(&bm->lock);
  free(bm->hash);
  free(bm);
}

void pd_bm_refused(struct pd_bm *bm, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  pthread_rwlock_wrlock(&bm->lock);
  vsnprintf(bm->why, sizeof(bm->why), fmt, ap);
  pthread_rwlock_unlock(&bm->lock);
  va_end(ap);
}

void pd_bm_last_refusal(struct pd_bm *bm, char *buf, size_t len)
{
  pthread_rwlock_wrlock(&bm->lock);
  snprintf(buf, len, "%s", bm->why);
  pthread_rwlock_unlock(&bm->lock);
}
