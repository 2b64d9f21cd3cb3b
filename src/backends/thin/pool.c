/* thin-pool: a pool of data blocks shared by thin volumes (dm-thin's
 * thin-pool target), with the kernel's on-disk metadata format.
 *
 *   { "type": "thin-pool", "metadata": "meta", "data": "data",
 *     "block_size": "64K", "low_water_mark": "1G",
 *     "out_of_space": "error" | "queue", "queue_timeout": 60,
 *     "discard_passdown": true, "zero_new_blocks": true,
 *     "commit_interval": 1, "create": true, "read_only": false }
 *
 * The pool node is not a data device: its size is 0 and its only request is
 * FLUSH, which commits the metadata. Volumes are `thin` layers naming the
 * pool (thin.c, where the data path lives); the management calls of
 * <libthinstack/thin.h> are at the end of this file.
 *
 * Commit = flush the data device on the pool's data flusher thread while
 * the metadata is written and flushed (shadowed btrees, space maps), then,
 * once both are durable, the superblock; then discard on the data device
 * the blocks that commit freed (docs/layers/thin-pool.md says why that
 * order is crash-safe). It runs on FLUSH (and FUA, which the core turns into a FLUSH), every
 * commit_interval seconds from a timer thread when something changed, after
 * each management call, and on close (not after a failed open).
 *
 * Kernel equivalent: `thin-pool <meta> <data> <block sectors> <low water
 * blocks> [skip_block_zeroing] [no_discard_passdown] [read_only]
 * [error_if_no_space]`.
 */
#include "backends/thin/thin-internal.h"
#include "core/array.h"
#include "core/internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIN_BLOCK (64u * 1024)
#define MAX_BLOCK (1024u * 1024 * 1024)

static const ts_param pool_params[] = {
  { "metadata", TS_PARAM_CHILD, TS_PARAM_REQUIRED, NULL, NULL,
    "the layer holding the pool metadata" },
  { "data", TS_PARAM_CHILD, TS_PARAM_REQUIRED, NULL, NULL, "the layer holding the data blocks" },
  { "block_size", TS_PARAM_SIZE, 0, NULL, NULL,
    "data block size: 64K..1G, a multiple of 64K (default 64K)" },
  { "low_water_mark", TS_PARAM_SIZE, 0, NULL, NULL,
    "raise a \"low-water-mark\" event when free data space falls below this (default 0: never)" },
  { "out_of_space", TS_PARAM_ENUM, 0, "error|queue", NULL,
    "when data space runs out: fail with ENOSPC (default) or wait for ts_pool_extend" },
  { "queue_timeout", TS_PARAM_ANY, 0, NULL, NULL,
    "seconds a queued request waits for space before ENOSPC (default 60; 0 = forever)" },
  { "discard_passdown", TS_PARAM_BOOL, 0, NULL, NULL,
    "discard freed blocks on the data layer (default true)" },
  { "zero_new_blocks", TS_PARAM_BOOL, 0, NULL, NULL,
    "zero the unwritten part of a newly allocated block (default true)" },
  { "break_clone", TS_PARAM_ENUM, 0, "auto|always|never", NULL,
    "break a snapshot's sharing by cloning the old block in the data layer where it shares "
    "extents (XFS reflink, btrfs): auto (the default) for blocks of 512K and more" },
  { "commit_interval", TS_PARAM_ANY, 0, NULL, NULL,
    "seconds between periodic metadata commits (default 1; 0 = only on flush and close)" },
  { "create", TS_PARAM_BOOL, 0, NULL, NULL, "format a blank metadata device as a new pool" },
  { "read_only", TS_PARAM_BOOL, 0, NULL, NULL, "open the pool read-only" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */

int tp_druns_add(struct tp_druns *r, uint64_t d, uint64_t n)
{
  if (!n)
    return 0;
  if (r->n && r->v[r->n - 1].d + r->v[r->n - 1].n == d) {
    r->v[r->n - 1].n += n;
    return 0;
  }
  struct tp_drun *v = ts__array_grow(r->v, &r->cap, r->n, sizeof *v, NULL);
  if (!v)
    return -ENOMEM;
  r->v = v;
  r->v[r->n++] = (struct tp_drun){ d, n };
  return 0;
}

void tp_druns_free(struct tp_druns *r)
{
  free(r->v);
  memset(r, 0, sizeof *r);
}

static void rwlock_init_writer_pref(pthread_rwlock_t *l)
{
  pthread_rwlockattr_t a;
  pthread_rwlockattr_init(&a);
  pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(l, &a);
  pthread_rwlockattr_destroy(&a);
}

static void deadline_after(struct timespec *ts, double seconds)
{
  clock_gettime(CLOCK_MONOTONIC, ts);
  double whole = floor(seconds);
  ts->tv_sec += (time_t)whole;
  ts->tv_nsec += (long)((seconds - whole) * 1e9);
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

static void cond_init_monotonic(pthread_cond_t *c)
{
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(c, &a);
  pthread_condattr_destroy(&a);
}

struct tp_pool *tp_pool_of(ts_layer *node)
{
  if (!node || strcmp(ts_dev_type(node), "thin-pool") != 0)
    return NULL;
  return ts_layer_priv(node);
}

int tp_data_err(struct tp_pool *p, int r)
{
  if (r == -EROFS && atomic_load(&p->failed))
    return -EIO;
  return r;
}

/* ------------------------------------------------------------------------ */
/* Cells                                                                     */

static bool cell_busy(struct tp_pool *p, uint32_t dev, uint64_t b, uint64_t e)
{
  for (struct tp_cell *c = p->cells; c; c = c->next)
    if (c->dev == dev && c->b < e && b < c->e)
      return true;
  return false;
}

void tp_cell_lock(struct tp_pool *p, struct tp_cell *c, uint32_t dev, uint64_t b, uint64_t e)
{
  c->dev = dev;
  c->b = b;
  c->e = e;
  pthread_mutex_lock(&p->cell_mu);
  while (cell_busy(p, dev, b, e))
    pthread_cond_wait(&p->cell_cv, &p->cell_mu);
  c->next = p->cells;
  p->cells = c;
  pthread_mutex_unlock(&p->cell_mu);
}

void tp_cell_unlock(struct tp_pool *p, struct tp_cell *c)
{
  pthread_mutex_lock(&p->cell_mu);
  for (struct tp_cell **pp = &p->cells; *pp; pp = &(*pp)->next)
    if (*pp == c) {
      *pp = c->next;
      break;
    }
  pthread_cond_broadcast(&p->cell_cv);
  pthread_mutex_unlock(&p->cell_mu);
}

/* ------------------------------------------------------------------------ */
/* Space: allocation, low water mark, out-of-space queueing                  */

/* Under lock: edge-triggered low water detection; the event itself is raised
 * by tp_fire_events once the lock is dropped. */
static void check_low_water(struct tp_pool *p)
{
  if (!p->low_water)
    return;
  uint64_t free_bytes = tmd_data_nr_free(p->md) * p->bs;
  if (free_bytes < p->low_water) {
    if (!atomic_exchange(&p->low_water_hit, true))
      atomic_store(&p->low_water_event, true);
  } else {
    atomic_store(&p->low_water_hit, false);
  }
}

static uint64_t space_gen(struct tp_pool *p)
{
  pthread_mutex_lock(&p->space_mu);
  uint64_t g = p->space_gen;
  pthread_mutex_unlock(&p->space_mu);
  return g;
}

static void space_appeared(struct tp_pool *p)
{
  pthread_mutex_lock(&p->space_mu);
  p->space_gen++;
  pthread_cond_broadcast(&p->space_cv);
  pthread_mutex_unlock(&p->space_mu);
}

/* Metadata space kept back for commits, as the kernel keeps it
 * (dm-thin-metadata.c: a tenth of the device, at most 16 MiB; here at least
 * 16 blocks too, for tiny devices): a commit shadows the top-level trees and
 * writes the space maps, so it needs free blocks of its own. Allocations
 * stop before they eat into it, which keeps every flush possible: running
 * out of metadata is an ENOSPC for the write, never a pool that can no
 * longer commit what it acknowledged. */
#define MD_RESERVE_MIN 16
#define MD_RESERVE_MAX 4096
/* Per request: shadowed paths in both levels of the mapping tree, splits
 * and space-map bitmaps. */
#define MD_SLACK 16
/* Mappings per metadata block, counting leaves only half full. */
#define MD_MAPPINGS_PER_BLOCK 126
#define MD_FULL_HINT " (the metadata is down to its commit reserve: grow it with ts_pool_extend_metadata)"

/* How many more mappings the metadata may take. Under lock. */
static uint64_t md_room(struct tp_pool *p)
{
  uint64_t total = tmd_metadata_nr_blocks(p->md), used = tmd_metadata_nr_used(p->md);
  uint64_t reserve = total / 10;
  if (reserve > MD_RESERVE_MAX)
    reserve = MD_RESERVE_MAX;
  if (reserve < MD_RESERVE_MIN)
    reserve = MD_RESERVE_MIN;
  if (used + reserve + MD_SLACK >= total)
    return 0;
  return (total - used - reserve - MD_SLACK) * MD_MAPPINGS_PER_BLOCK;
}

int tp_alloc(struct tp_pool *p, uint64_t want, struct tp_druns *out, uint64_t *gen)
{
  uint64_t room = md_room(p);
  if (room)
    atomic_store(&p->md_short, false);
  while (want) {
    uint64_t d, n;
    if (!room) {
      *gen = space_gen(p);
      if (!atomic_exchange(&p->md_short, true))
        atomic_store(&p->md_event, true);
      return -ENOSPC;
    }
    int r = tmd_alloc_data_run(p->md, want < room ? want : room, &d, &n);
    if (r == -ENOSPC) {
      *gen = space_gen(p);
      if (!atomic_exchange(&p->out_of_space, true))
        atomic_store(&p->oos_event, true);
      check_low_water(p);
      return -ENOSPC;
    }
    if (r)
      return tp_data_err(p, r);
    if ((r = tp_druns_add(out, d, n))) {
      tmd_data_dec_run(p->md, d, n);
      return r;
    }
    atomic_fetch_add(&p->n_alloc, n);
    tp_changed(p);
    want -= n;
    room -= n;
  }
  check_low_water(p);
  return 0;
}

/* Blocks handed out in this transaction and given back unused are free again
 * at once (their committed count is 0), so they are not "freed" space that a
 * commit would make usable: counting them so made a request too large for
 * the pool commit and retry forever. */
void tp_release(struct tp_pool *p, const struct tp_druns *runs)
{
  for (size_t i = 0; i < runs->n; i++)
    tmd_data_dec_run(p->md, runs->v[i].d, runs->v[i].n);
}

void tp_drain(struct tp_pool *p)
{
  if (!atomic_load(&p->fast_inflight))
    return;
  atomic_fetch_add(&p->n_fast_drains, 1);
  pthread_mutex_lock(&p->fast_mu);
  while (atomic_load(&p->fast_inflight))
    pthread_cond_wait(&p->fast_cv, &p->fast_mu);
  pthread_mutex_unlock(&p->fast_mu);
}

/* The broadcast takes the mutex, so it cannot fall between a drainer's
 * last look at the count and its wait. */
void tp_fast_end(struct tp_pool *p)
{
  if (atomic_fetch_sub(&p->fast_inflight, 1) == 1) {
    pthread_mutex_lock(&p->fast_mu);
    pthread_cond_broadcast(&p->fast_cv);
    pthread_mutex_unlock(&p->fast_mu);
  }
}

/* A block freed here is reusable once committed (or at once, when this
 * transaction allocated it): drain first. Reads of shared blocks are on the
 * fast path too, and such a block is what breaking sharing frees. */
void tp_note_unref(struct tp_pool *p, uint64_t d)
{
  uint32_t c;
  if (tmd_data_ref_count(p->md, d, &c) == 0 && c == 0) {
    tp_drain(p);
    p->freed = true;
    if (p->passdown && p->data_discard)
      tp_druns_add(&p->pending, d, 1); /* on ENOMEM the block just stays undiscarded */
  }
}

void tp_changed(struct tp_pool *p) { atomic_store(&p->dirty, true); }

void tp_fire_events(struct tp_pool *p)
{
  if (atomic_exchange(&p->oos_event, false))
    ts_layer_event(p->layer, "out-of-data-space", "no free data block (%s)",
                   p->queue ? "requests wait for ts_pool_extend" : "requests fail with ENOSPC");
  if (atomic_exchange(&p->md_event, false))
    ts_layer_event(p->layer, "out-of-metadata-space",
                   "metadata is down to its commit reserve: writes needing new blocks fail with"
                   " ENOSPC; reads, overwrites, discards and flushes go on");
  if (atomic_exchange(&p->low_water_event, false))
    ts_layer_event(p->layer, "low-water-mark", "free data space fell below %llu bytes",
                   (unsigned long long)p->low_water);
}

int tp_wait_space(struct tp_pool *p, uint64_t gen, struct timespec *deadline)
{
  /* Blocks freed in this transaction become free at the commit: commit
   * and retry before calling it out of space, as the kernel does. So do the
   * metadata blocks this transaction shadowed. */
  pthread_rwlock_rdlock(&p->lock);
  bool freed = p->freed;
  bool md = atomic_load(&p->md_short) && atomic_load(&p->dirty);
  pthread_rwlock_unlock(&p->lock);
  if ((freed || md) && !atomic_load(&p->failed) && tp_commit(p) == 0)
    return 0;
  tp_fire_events(p);
  /* Short of metadata, requests fail at once rather than queue, as in the
   * kernel's out-of-metadata-space mode. */
  if (!p->queue || atomic_load(&p->md_short))
    return -ENOSPC;
  int r = 0;
  atomic_fetch_add(&p->n_queue_waits, 1);
  pthread_mutex_lock(&p->space_mu);
  if (!deadline->tv_sec && !deadline->tv_nsec && p->queue_timeout > 0)
    deadline_after(deadline, p->queue_timeout);
  while (p->space_gen == gen && !p->stopping) {
    if (p->queue_timeout > 0) {
      if (pthread_cond_timedwait(&p->space_cv, &p->space_mu, deadline) == ETIMEDOUT) {
        r = p->space_gen == gen ? -ENOSPC : 0;
        break;
      }
    } else {
      pthread_cond_wait(&p->space_cv, &p->space_mu);
    }
  }
  if (p->stopping)
    r = -ENOSPC;
  pthread_mutex_unlock(&p->space_mu);
  return r;
}

/* ------------------------------------------------------------------------ */
/* Commit                                                                    */

/* Under txn exclusive and lock exclusive, right after a successful metadata
 * commit: the blocks this transaction freed may now be handed out again, so
 * discard them before anyone can (they are free in the committed state, so
 * no volume loses data even if we crash here). Errors are ignored, as the
 * kernel ignores passdown errors: a block that still holds data is zeroed
 * when it is allocated again (see thin.c). */
static void after_commit_locked(struct tp_pool *p, bool *freed)
{
  atomic_store(&p->dirty, false);
  atomic_fetch_add(&p->n_commits, 1);
  for (size_t i = 0; i < p->pending.n; i++) {
    struct tp_drun *r = &p->pending.v[i];
    if (ts_discard(p->data, r->d * p->bs, r->n * p->bs) == 0)
      atomic_fetch_add(&p->n_passdown_discard, r->n);
  }
  p->pending.n = 0;
  *freed = p->freed;
  p->freed = false;
  if (*freed) {
    atomic_store(&p->out_of_space, false);
    check_low_water(p);
  }
}

static int commit_failed(struct tp_pool *p, int r)
{
  if (!atomic_exchange(&p->failed, r))
    ts_layer_event(p->layer, "commit-failed", "metadata commit failed: %s; the pool refuses changes",
                   ts_strerror(r));
  return r == -EROFS ? -EIO : r;
}

/* The data flusher: one ts_flush of the data layer per request, so that a
 * commit's data flush and its metadata writes go on at the same time. */
static void *data_flusher_main(void *arg)
{
  struct tp_pool *p = arg;
  pthread_mutex_lock(&p->df_mu);
  for (;;) {
    while (!p->df_asked && !p->df_stop)
      pthread_cond_wait(&p->df_cv, &p->df_mu);
    if (!p->df_asked)
      break;
    p->df_asked = false;
    pthread_mutex_unlock(&p->df_mu);
    int r = ts_flush(p->data);
    pthread_mutex_lock(&p->df_mu);
    p->df_result = r;
    p->df_done = true;
    pthread_cond_broadcast(&p->df_cv);
  }
  pthread_mutex_unlock(&p->df_mu);
  return NULL;
}

/* The write-back flusher: ts_flush of the metadata layer during a large
 * provision. Its own thread, because one such flush may still run when the
 * commit starts, and the data flush must not queue behind it. */
static void *wb_flusher_main(void *arg)
{
  struct tp_pool *p = arg;
  pthread_mutex_lock(&p->df_mu);
  for (;;) {
    while (!p->wb_asked && !p->df_stop)
      pthread_cond_wait(&p->df_cv, &p->df_mu);
    if (!p->wb_asked)
      break;
    p->wb_asked = false;
    p->wb_busy = true;
    pthread_mutex_unlock(&p->df_mu);
    int r = ts_flush(p->meta);
    pthread_mutex_lock(&p->df_mu);
    /* A file reports a write-back error to one flush only: this one's
     * must reach the commit. */
    if (r && !p->wb_err)
      p->wb_err = r;
    p->wb_busy = false;
    pthread_cond_broadcast(&p->df_cv);
  }
  pthread_mutex_unlock(&p->df_mu);
  return NULL;
}

/* Metadata blocks (4 KiB) written between two write-back flushes. The
 * flusher is asked only when idle, so the flushes follow the disk's pace.
 * The first WRITEBACK_EARLY blocks of a transaction (a provision of up to
 * ~32 GiB, which the cache holds whole and never evicts) are written back
 * by the pool itself and flushed a WRITEBACK_STEP at a time, so that even
 * a 1 GiB provision has its ~1 MiB of mappings on the way to the disk
 * before its commit; past that, eviction writes the blocks and the flushes
 * go WRITEBACK_EARLY at a time (smaller steps were not faster at 1 TiB,
 * docs/layers/thin.md). */
#define WRITEBACK_STEP 256
#define WRITEBACK_EARLY 8192

void tp_meta_writeback(struct tp_pool *p, bool write_back, bool flush)
{
  uint64_t w = tmd_blocks_written(p->md);
  bool early = w - p->wb_txn < WRITEBACK_EARLY;
  if (early && write_back) {
    (void)tmd_write_back(p->md); /* an error is kept for the commit */
    w = tmd_blocks_written(p->md);
  }
  if (!flush || !p->wb_flusher_running)
    return;
  if (w - p->wb_mark < (early ? WRITEBACK_STEP : WRITEBACK_EARLY))
    return;
  pthread_mutex_lock(&p->df_mu);
  if (!p->wb_asked && !p->wb_busy) {
    p->wb_mark = w;
    p->wb_asked = true;
    pthread_cond_broadcast(&p->df_cv);
  }
  pthread_mutex_unlock(&p->df_mu);
}

static void data_flush_start(struct tp_pool *p)
{
  pthread_mutex_lock(&p->df_mu);
  p->df_done = false;
  p->df_asked = true;
  p->wb_asked = false; /* the commit flushes the metadata itself */
  pthread_cond_broadcast(&p->df_cv);
  pthread_mutex_unlock(&p->df_mu);
}

/* Without the data flusher: the data is flushed already; data_flush_wait
 * still waits for a write-back flush of the metadata. */
static void data_flush_done(struct tp_pool *p)
{
  pthread_mutex_lock(&p->df_mu);
  p->df_done = true;
  p->df_result = 0;
  p->wb_asked = false;
  pthread_mutex_unlock(&p->df_mu);
}

/* tmd_commit_beside's `wait`: the result of the flush data_flush_start
 * began; or, when a write-back flush of the metadata failed, that error
 * (some block the superblock would name may not be on disk). */
static int data_flush_wait(void *arg)
{
  struct tp_pool *p = arg;
  pthread_mutex_lock(&p->df_mu);
  while (!p->df_done || p->wb_busy)
    pthread_cond_wait(&p->df_cv, &p->df_mu);
  int r = p->wb_err ? p->wb_err : p->df_result;
  pthread_mutex_unlock(&p->df_mu);
  return r;
}

static int wb_error(struct tp_pool *p)
{
  pthread_mutex_lock(&p->df_mu);
  int r = p->wb_err;
  pthread_mutex_unlock(&p->df_mu);
  return r;
}

/* With txn held exclusive: no mapping changes meanwhile, and every data
 * write the new mappings name has completed, so the data flush may start
 * before the metadata is written; the superblock waits for both. A failed
 * data flush commits nothing and leaves the pool writable, the transaction
 * open for the next commit to retry; a failed metadata write fails the
 * pool. */
static int commit_txn_locked(struct tp_pool *p, bool *freed)
{
  *freed = false;
  /* Once a commit failed, every later one reports what made it fail (an
   * ENOSPC stays ENOSPC through close), not the refusal that follows. */
  int f = atomic_load(&p->failed);
  if (f)
    return f == -EROFS ? -EIO : f;
  if (!atomic_load(&p->dirty))
    return ts_flush(p->data);
  bool beside = p->data_flusher_running;
  int r = 0;
  if (beside) {
    data_flush_start(p);
  } else {
    if ((r = ts_flush(p->data)))
      return r;
    data_flush_done(p);
  }
  pthread_rwlock_wrlock(&p->lock);
  int data_r = 0;
  r = tmd_commit_beside(p->md, data_flush_wait, p);
  if (beside && r && tmd_is_writable(p->md) && !wb_error(p))
    data_r = r; /* the data flush failed; the metadata did not */
  if (r == 0) {
    p->wb_mark = p->wb_txn = tmd_blocks_written(p->md);
    after_commit_locked(p, freed);
  }
  pthread_rwlock_unlock(&p->lock);
  if (data_r)
    return data_r;
  return r ? commit_failed(p, r) : 0;
}

int tp_commit(struct tp_pool *p)
{
  if (p->read_only)
    return 0;
  bool freed;
  pthread_rwlock_wrlock(&p->txn);
  int r = commit_txn_locked(p, &freed);
  pthread_rwlock_unlock(&p->txn);
  if (freed)
    space_appeared(p);
  return r;
}

static void *committer_main(void *arg)
{
  struct tp_pool *p = arg;
  pthread_mutex_lock(&p->ct_mu);
  while (!p->ct_stop) {
    struct timespec ts;
    deadline_after(&ts, p->commit_interval);
    while (!p->ct_stop && pthread_cond_timedwait(&p->ct_cv, &p->ct_mu, &ts) != ETIMEDOUT)
      ;
    if (p->ct_stop)
      break;
    pthread_mutex_unlock(&p->ct_mu);
    if (atomic_load(&p->dirty) && !atomic_load(&p->failed))
      tp_commit(p);
    pthread_mutex_lock(&p->ct_mu);
  }
  pthread_mutex_unlock(&p->ct_mu);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Volumes                                                                   */

static struct tp_vol *vol_find(struct tp_pool *p, uint32_t id)
{
  for (struct tp_vol *v = p->vols; v; v = v->next)
    if (v->id == id)
      return v;
  return NULL;
}

int tp_vol_attach(struct tp_pool *p, ts_layer *l, uint32_t id, uint64_t size, bool create,
                  struct tp_vol **out, ts_error *err)
{
  int r = 0;
  pthread_mutex_lock(&p->vol_mu);
  struct tp_vol *other = vol_find(p, id);
  if (other) {
    r = ts_layer_error(l, err, -EBUSY, "id", "volume %u of pool \"%s\" is already open as layer \"%s\"",
                       id, ts_dev_name(p->layer), ts_dev_name(other->layer));
    goto out;
  }
  pthread_rwlock_rdlock(&p->lock);
  bool exists = tmd_dev_exists(p->md, id);
  pthread_rwlock_unlock(&p->lock);
  if (!exists) {
    if (!create) {
      const char *cfg = l->stack->config_path ? l->stack->config_path : "CONFIG";
      r = ts_layer_error(
          l, err, -ENOENT, "id",
          "pool \"%s\" has no volume %u (as after a `thin delete` that did not finish:"
          " `thinstack thin delete %s %s` removes the layer; \"create\": true makes"
          " an empty volume instead)",
          ts_dev_name(p->layer), id, cfg, ts_dev_name(l));
      goto out;
    }
    if (p->read_only) {
      r = ts_layer_error(l, err, -EROFS, "create", "pool \"%s\" is read-only: cannot create volume %u",
                         ts_dev_name(p->layer), id);
      goto out;
    }
    /* Not committed here: if the stack fails to open, the pool is closed
     * without a commit and the volume never existed. */
    pthread_rwlock_rdlock(&p->txn);
    pthread_rwlock_wrlock(&p->lock);
    r = tmd_create_thin(p->md, id);
    if (!r)
      tp_changed(p);
    pthread_rwlock_unlock(&p->lock);
    pthread_rwlock_unlock(&p->txn);
    if (r) {
      r = ts_layer_error(l, err, r, "id", "cannot create volume %u in pool \"%s\": %s", id,
                         ts_dev_name(p->layer), ts_strerror(r));
      goto out;
    }
  }
  struct tp_vol *v = calloc(1, sizeof *v);
  if (!v) {
    r = ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
    goto out;
  }
  v->pool = p;
  v->layer = l;
  v->id = id;
  v->size = size;
  v->next = p->vols;
  p->vols = v;
  *out = v;
out:
  pthread_mutex_unlock(&p->vol_mu);
  return r;
}

void tp_vol_detach(struct tp_vol *v)
{
  struct tp_pool *p = v->pool;
  pthread_mutex_lock(&p->vol_mu);
  for (struct tp_vol **pp = &p->vols; *pp; pp = &(*pp)->next)
    if (*pp == v) {
      *pp = v->next;
      break;
    }
  pthread_mutex_unlock(&p->vol_mu);
  free(v->mc);
  free(v);
}

/* ------------------------------------------------------------------------ */
/* The layer                                                                 */

static int seconds_param(ts_layer *l, const json_t *params, const char *key, double dflt,
                         double *out, ts_error *err)
{
  const json_t *v = json_object_get(params, key);
  if (!v) {
    *out = dflt;
    return 0;
  }
  if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 86400.0 * 365)
    return ts_layer_error(l, err, -EINVAL, key, "expected a number of seconds (0 or more)");
  *out = json_number_value(v);
  return 0;
}

static void pool_free(struct tp_pool *p)
{
  pthread_mutex_lock(&p->df_mu);
  p->df_stop = true;
  pthread_cond_broadcast(&p->df_cv);
  pthread_mutex_unlock(&p->df_mu);
  if (p->data_flusher_running)
    pthread_join(p->data_flusher, NULL);
  if (p->wb_flusher_running)
    pthread_join(p->wb_flusher, NULL);
  pthread_mutex_destroy(&p->df_mu);
  pthread_cond_destroy(&p->df_cv);
  if (p->md)
    tmd_close(p->md);
  pd_bdev_close(&p->bdev);
  tp_druns_free(&p->pending);
  pthread_rwlock_destroy(&p->txn);
  pthread_rwlock_destroy(&p->lock);
  pthread_mutex_destroy(&p->cell_mu);
  pthread_cond_destroy(&p->cell_cv);
  pthread_mutex_destroy(&p->space_mu);
  pthread_cond_destroy(&p->space_cv);
  pthread_mutex_destroy(&p->ct_mu);
  pthread_cond_destroy(&p->ct_cv);
  pthread_mutex_destroy(&p->vol_mu);
  pthread_mutex_destroy(&p->fast_mu);
  pthread_cond_destroy(&p->fast_cv);
  free(p);
}

/* A pdata message, prefixed with the layer's JSON path. */
static int md_error(ts_layer *l, ts_error *err, int r, const char *key, const char *what)
{
  char msg[sizeof err->msg];
  snprintf(msg, sizeof msg, "%s", err && err->msg[0] ? err->msg : ts_strerror(r));
  return ts_layer_error(l, err, r, key, "%s: %s", what, msg);
}

/* Reserve the metadata layer's first `bytes` on the host (PROVISION; a file
 * layer turns it into fallocate), so a commit never meets ENOSPC from a
 * sparse file on a full file system: the pool's own space maps are the only
 * place metadata can run out. -ENOSPC when the space is not there; a layer
 * that cannot provision (a device, a file system without fallocate) gets
 * an event instead, since its blocks may well exist already. */
/* Metadata bytes a new pool writes with zeroes once it has reserved them:
 * the metadata cache's size, the first ~50 GiB of 64K mappings. */
#define META_PREWRITE (16ull << 20)

/* A new pool's metadata blocks are allocated from the start of the device,
 * and a reservation leaves unwritten extents there: the first write of
 * each block then makes the commit's fdatasync convert its extent, a
 * journal commit of its own after the data flush's (at 1-32 GiB a third to
 * a half of the commit, docs/layers/thin.md "The commit's syncs"). Writing
 * the start once, before the format's syncs, pays that when the pool is
 * created; blocks freed later are reused where they are, written already.
 * Only when formatting (the device holds no pool) and after a reservation:
 * elsewhere the writes would allocate what the pool chose not to reserve. */
static int prewrite_metadata(struct tp_pool *p, uint64_t bytes)
{
  if (bytes > META_PREWRITE)
    bytes = META_PREWRITE;
  int r = 0;
  for (uint64_t off = 0; off < bytes && !r; off += TS_ZERO_BUF_SIZE) {
    uint64_t n = bytes - off < TS_ZERO_BUF_SIZE ? bytes - off : TS_ZERO_BUF_SIZE;
    r = ts_pwrite(p->meta, ts_zero_buffer(), (size_t)n, off, 0);
  }
  return r;
}

static int reserve_metadata(struct tp_pool *p, uint64_t bytes)
{
  const ts_limits *ml = ts_dev_limits(p->meta);
  int r = ts_limits_cap(ml, TS_OP_PROVISION) == TS_CAP_NONE ? -EOPNOTSUPP
                                                            : ts_provision(p->meta, 0, bytes);
  if (r == -EOPNOTSUPP) {
    ts_layer_event(p->layer, "metadata-not-preallocated",
                   "layer \"%s\" cannot provision: its metadata space is not reserved on the "
                   "host, so a commit may still fail for lack of space there",
                   ts_dev_name(p->meta));
    return 0;
  }
  p->meta_reserved = r == 0;
  return r;
}

/* What pool_open reads from the config, checked against the two children. */
struct pool_params {
  ts_layer *meta, *data;
  uint64_t bs;
  bool create, ro;
  double qt, ci;
};

static int read_params(ts_layer *l, const json_t *params, struct pool_params *pp, ts_error *err)
{
  ts_layer *meta = ts_layer_child(l, ts_param_string(params, "metadata", ""));
  ts_layer *data = ts_layer_child(l, ts_param_string(params, "data", ""));
  uint64_t bs = ts_param_size(params, "block_size", MIN_BLOCK);
  int r;

  if (meta == data)
    return ts_layer_error(l, err, -EINVAL, "data", "metadata and data must be different layers");
  if (bs < MIN_BLOCK || bs > MAX_BLOCK || bs % MIN_BLOCK)
    return ts_layer_error(l, err, -EINVAL, "block_size", "must be a multiple of 64K from 64K to 1G");
  if ((r = seconds_param(l, params, "queue_timeout", 60, &pp->qt, err)) ||
      (r = seconds_param(l, params, "commit_interval", 1, &pp->ci, err)))
    return r;
  const ts_limits *dl = ts_dev_limits(data), *ml = ts_dev_limits(meta);
  if (dl->size < bs)
    return ts_layer_error(l, err, -EINVAL, "data", "layer \"%s\" (%llu bytes) is smaller than one block (%llu)",
                          ts_dev_name(data), (unsigned long long)dl->size, (unsigned long long)bs);
  if (bs % dl->logical_block_size)
    return ts_layer_error(l, err, -EINVAL, "block_size", "must be a multiple of the data layer's block size %u",
                          dl->logical_block_size);
  if (ml->logical_block_size > PD_BLOCK_SIZE)
    return ts_layer_error(l, err, -EINVAL, "metadata", "layer \"%s\" has %u-byte blocks; metadata needs 4K or less",
                          ts_dev_name(meta), ml->logical_block_size);
  pp->create = ts_param_bool(params, "create", false);
  /* A stack opened read-only still opens an existing pool whose config says
   * create; only formatting (below) needs to write. */
  if (pp->create && ts_param_bool(params, "read_only", false))
    return ts_layer_error(l, err, -EINVAL, "create", "cannot create a read-only pool");
  pp->meta = meta;
  pp->data = data;
  pp->bs = bs;
  pp->ro = ts_param_bool(params, "read_only", false) || ts_layer_force_read_only(l) ||
           dl->read_only || ml->read_only;
  return 0;
}

/* A pool with its settings and locks, no metadata yet; NULL when out of memory. */
static struct tp_pool *pool_new(ts_layer *l, const json_t *params, const struct pool_params *pp)
{
  struct tp_pool *p = calloc(1, sizeof *p);
  if (!p)
    return NULL;
  const ts_limits *dl = ts_dev_limits(pp->data);
  p->layer = l;
  p->meta = pp->meta;
  p->data = pp->data;
  p->bs = pp->bs;
  p->low_water = ts_param_size(params, "low_water_mark", 0);
  p->queue = strcmp(ts_param_string(params, "out_of_space", "error"), "queue") == 0;
  p->queue_timeout = pp->qt;
  p->commit_interval = pp->ci;
  p->passdown = ts_param_bool(params, "discard_passdown", true);
  p->zero_new = ts_param_bool(params, "zero_new_blocks", true);
  /* A clone is a file system transaction, and it leaves the new block
   * sharing extents that the next overwrites copy-on-write: below 512K it
   * costs more than merging a block the page cache holds (docs/layers/thin.md). */
  const char *bc = ts_param_string(params, "break_clone", "auto");
  p->clone_breaks = !strcmp(bc, "always") || (!strcmp(bc, "auto") && p->bs >= TP_CLONE_MIN_BLOCK);
  p->read_only = pp->ro;
  p->config_read_only = ts_param_bool(params, "read_only", false);
  p->data_discard = ts_limits_cap(dl, TS_OP_DISCARD) != TS_CAP_NONE;
  p->data_provision = ts_limits_cap(dl, TS_OP_PROVISION) != TS_CAP_NONE;
  rwlock_init_writer_pref(&p->txn);
  rwlock_init_writer_pref(&p->lock);
  pthread_mutex_init(&p->cell_mu, NULL);
  pthread_cond_init(&p->cell_cv, NULL);
  pthread_mutex_init(&p->space_mu, NULL);
  cond_init_monotonic(&p->space_cv);
  pthread_mutex_init(&p->ct_mu, NULL);
  cond_init_monotonic(&p->ct_cv);
  pthread_mutex_init(&p->df_mu, NULL);
  pthread_cond_init(&p->df_cv, NULL);
  pthread_mutex_init(&p->vol_mu, NULL);
  pthread_mutex_init(&p->fast_mu, NULL);
  pthread_cond_init(&p->fast_cv, NULL);
  return p;
}

/* The metadata layer holds no pool: format one when the config says create
 * and the open may write. */
static int format_pool(struct tp_pool *p, bool create, uint64_t nblocks,
                       const struct tmd_config *cfg, ts_error *err)
{
  ts_layer *l = p->layer;
  if (!create)
    return ts_layer_error(l, err, -ENODATA, "metadata",
                          "layer \"%s\" holds no pool (set \"create\": true to format one)",
                          ts_dev_name(p->meta));
  if (p->read_only)
    return ts_layer_error(l, err, -ENODATA, "metadata",
                          "layer \"%s\" holds no pool, and a read-only open formats nothing: "
                          "open the stack for writing to create it",
                          ts_dev_name(p->meta));
  ts_error_clear(err);
  uint64_t msize = ts_dev_limits(p->meta)->size;
  if (msize > TMD_MAX_METADATA_BLOCKS * 4096)
    msize = TMD_MAX_METADATA_BLOCKS * 4096;
  msize -= msize % 4096;
  int r = reserve_metadata(p, msize);
  if (r)
    return ts_layer_error(l, err, r, "metadata",
                          "cannot reserve %llu bytes for the metadata on \"%s\": %s",
                          (unsigned long long)msize, ts_dev_name(p->meta), ts_strerror(r));
  if (p->meta_reserved && (r = prewrite_metadata(p, msize)))
    return ts_layer_error(l, err, r, "metadata",
                          "cannot write zeroes to the metadata on \"%s\": %s", ts_dev_name(p->meta),
                          ts_strerror(r));
  r = tmd_format(&p->bdev, (uint32_t)(p->bs / 512), nblocks, cfg, &p->md, err);
  if (r)
    return md_error(l, err, r, "metadata", "cannot format the pool metadata");
  return 0;
}

/* An existing pool must match the config and its data layer. */
static int check_pool(struct tp_pool *p, uint64_t nblocks, ts_error *err)
{
  ts_layer *l = p->layer;
  uint64_t have = (uint64_t)tmd_data_block_size(p->md) * 512;
  uint64_t nr = tmd_data_nr_blocks(p->md);
  char a[32], b[32];
  ts_format_size(have, a, sizeof a);
  ts_format_size(p->bs, b, sizeof b);
  if (have != p->bs)
    return ts_layer_error(l, err, -EINVAL, "block_size", "the pool on \"%s\" has %s blocks, not %s",
                          ts_dev_name(p->meta), a, b);
  if (!p->read_only && tmd_needs_check(p->md))
    return ts_layer_error(
        l, err, -EUCLEAN, "metadata",
        "the pool metadata is flagged for checking: run thin_check (open read-only to inspect it)");
  if (nblocks < nr)
    return ts_layer_error(
        l, err, -EINVAL, "data",
        "layer \"%s\" holds %llu blocks but the pool has %llu: the data device shrank",
        ts_dev_name(p->data), (unsigned long long)nblocks, (unsigned long long)nr);
  return 0;
}

/* The data or metadata device grew while the pool was closed: take the
 * space, as the kernel does when a pool is resumed (committed with the next
 * commit, so a failed stack open changes nothing). */
static int take_grown_space(struct tp_pool *p, uint64_t nblocks, ts_error *err)
{
  ts_layer *l = p->layer;
  int r;
  if (p->read_only)
    return 0;
  if (nblocks > tmd_data_nr_blocks(p->md)) {
    if ((r = tmd_resize_data(p->md, nblocks)))
      return ts_layer_error(l, err, r, "data", "cannot grow the data space to %llu blocks: %s",
                            (unsigned long long)nblocks, ts_strerror(r));
    tp_changed(p);
  }
  uint64_t mblocks = ts_dev_size(p->meta) / 4096;
  if (mblocks > TMD_MAX_METADATA_BLOCKS)
    mblocks = TMD_MAX_METADATA_BLOCKS;
  if (mblocks > tmd_metadata_nr_blocks(p->md)) {
    if ((r = reserve_metadata(p, mblocks * 4096)))
      return ts_layer_error(
          l, err, r, "metadata", "cannot reserve %llu bytes for the metadata on \"%s\": %s",
          (unsigned long long)(mblocks * 4096), ts_dev_name(p->meta), ts_strerror(r));
    if ((r = tmd_resize_metadata(p->md, mblocks)))
      return ts_layer_error(l, err, r, "metadata",
                            "cannot grow the metadata space to %llu blocks: %s",
                            (unsigned long long)mblocks, ts_strerror(r));
    tp_changed(p);
  }
  return 0;
}

/* Open the pool's metadata: format it, or check and grow the existing one. */
static int load_metadata(struct tp_pool *p, bool create, ts_error *err)
{
  uint64_t nblocks = ts_dev_limits(p->data)->size / p->bs;
  struct tmd_config cfg = { .read_only = p->read_only };
  int r = pd_bdev_from_ts_dev(&p->bdev, p->meta, p->read_only, err);
  if (r)
    return md_error(p->layer, err, r, "metadata", "unusable metadata layer");
  r = tmd_open(&p->bdev, &cfg, &p->md, err);
  if (r == -ENODATA)
    return format_pool(p, create, nblocks, &cfg, err);
  if (r)
    return md_error(p->layer, err, r, "metadata", "cannot open the pool metadata");
  if ((r = check_pool(p, nblocks, err)))
    return r;
  return take_grown_space(p, nblocks, err);
}

static int pool_open(ts_layer *l, const json_t *params, ts_error *err)
{
  struct pool_params pp;
  int r = read_params(l, params, &pp, err);
  if (r)
    return r;
  struct tp_pool *p = pool_new(l, params, &pp);
  if (!p)
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  if ((r = load_metadata(p, pp.create, err)))
    goto fail;
  /* Without the threads a commit flushes the data before the metadata and
   * a provision leaves its metadata's flush to the commit, as safe and only
   * slower. */
  if (!p->read_only) {
    p->data_flusher_running = pthread_create(&p->data_flusher, NULL, data_flusher_main, p) == 0;
    p->wb_flusher_running = pthread_create(&p->wb_flusher, NULL, wb_flusher_main, p) == 0;
  }
  if (!p->read_only && pp.ci > 0) {
    if (pthread_create(&p->committer, NULL, committer_main, p) != 0) {
      r = ts_layer_error(l, err, -EAGAIN, "commit_interval", "cannot start the commit thread");
      goto fail;
    }
    p->committer_running = true;
  }
  ts_layer_set_priv(l, p);
  return 0;
fail:
  pool_free(p);
  return r;
}

static void pool_close(ts_layer *l)
{
  struct tp_pool *p = ts_layer_priv(l);
  if (!p)
    return;
  if (p->committer_running) {
    pthread_mutex_lock(&p->ct_mu);
    p->ct_stop = true;
    pthread_cond_broadcast(&p->ct_cv);
    pthread_mutex_unlock(&p->ct_mu);
    pthread_join(p->committer, NULL);
  }
  pthread_mutex_lock(&p->space_mu);
  p->stopping = true;
  pthread_cond_broadcast(&p->space_cv);
  pthread_mutex_unlock(&p->space_mu);
  /* After a failed stack open nothing is committed: the pool stays as the
   * last commit left it. */
  if (!ts_layer_aborting(l) && !p->read_only && !atomic_load(&p->failed))
    tp_commit(p);
  pool_free(p);
}

static int pool_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  struct tp_pool *p = ts_layer_priv(l);
  /* Not a data device: nothing to read or write, FLUSH commits. */
  lim->size = 0;
  lim->io_opt = 0;
  lim->max_io_bytes = 0;
  lim->max_discard_bytes = 0;
  lim->discard_granularity = 0;
  lim->max_write_zeroes_bytes = 0;
  lim->max_provision_bytes = 0;
  lim->provision_granularity = 0;
  lim->discard_zeroes = false;
  lim->write_zeroes_unmap = false;
  lim->fua = false;
  lim->read_only = p->read_only;
  return 0;
}

static int pool_submit(ts_layer *l, const ts_io *io)
{
  struct tp_pool *p = ts_layer_priv(l);
  if (io->op != TS_OP_FLUSH)
    return -EOPNOTSUPP; /* unreachable: the pool's size is 0 */
  return tp_commit(p);
}

static int pool_status(ts_layer *l, json_t *out)
{
  ts_pool_status st;
  int r = ts_pool_get_status(l, &st, NULL);
  if (r)
    return r;
  json_object_set_new(out, "block_size", json_integer((json_int_t)st.block_size));
  json_object_set_new(out, "transaction_id", json_integer((json_int_t)st.transaction_id));
  json_t *d = json_object();
  json_object_set_new(d, "blocks", json_integer((json_int_t)st.data_blocks));
  json_object_set_new(d, "used", json_integer((json_int_t)st.data_used_blocks));
  json_object_set_new(d, "free", json_integer((json_int_t)st.data_free_blocks));
  json_object_set_new(out, "data", d);
  json_t *m = json_object();
  json_object_set_new(m, "blocks", json_integer((json_int_t)st.metadata_blocks));
  json_object_set_new(m, "used", json_integer((json_int_t)st.metadata_used_blocks));
  bool md_short = st.out_of_metadata_space;
  json_object_set_new(m, "out_of_space", json_boolean(md_short));
  json_object_set_new(out, "metadata", m);
  json_object_set_new(out, "mode", json_string(st.failed ? "failed"
                                               : st.read_only ? "ro"
                                               : md_short ? "out_of_metadata_space"
                                               : st.out_of_data_space ? "out_of_data_space"
                                                                      : "rw"));
  json_object_set_new(out, "low_water_mark", json_integer((json_int_t)st.low_water_mark));
  json_object_set_new(out, "low_water", json_boolean(st.low_water));
  json_object_set_new(out, "out_of_space", json_string(st.queue_if_no_space ? "queue" : "error"));
  json_object_set_new(out, "discard_passdown", json_boolean(st.discard_passdown));
  json_object_set_new(out, "zero_new_blocks", json_boolean(st.zero_new_blocks));
  json_object_set_new(out, "needs_check", json_boolean(st.needs_check));
  json_object_set_new(out, "held_metadata_root", json_integer((json_int_t)st.held_metadata_root));
  json_object_set_new(out, "commits", json_integer((json_int_t)st.commits));
  struct tp_pool *p = ts_layer_priv(l);
  json_object_set_new(out, "allocated_blocks", json_integer((json_int_t)atomic_load(&p->n_alloc)));
  json_object_set_new(out, "zeroed_bytes", json_integer((json_int_t)atomic_load(&p->n_zeroed_bytes)));
  json_object_set_new(out, "copied_blocks", json_integer((json_int_t)atomic_load(&p->n_copied_blocks)));
  /* Of those, the ones the data layer cloned (extents shared, then only the
   * write's bytes written). */
  json_object_set_new(out, "cloned_blocks",
                      json_integer((json_int_t)atomic_load(&p->n_cloned_blocks)));
  json_object_set_new(out, "break_clone", json_boolean(p->clone_breaks));
  json_object_set_new(out, "passdown_discard_blocks",
                      json_integer((json_int_t)atomic_load(&p->n_passdown_discard)));
  json_object_set_new(out, "passdown_provision_blocks",
                      json_integer((json_int_t)atomic_load(&p->n_passdown_provision)));
  json_object_set_new(out, "queue_waits", json_integer((json_int_t)atomic_load(&p->n_queue_waits)));
  json_object_set_new(out, "provision_passdown", json_boolean(p->data_provision));
  json_object_set_new(out, "fast_reads", json_integer((json_int_t)atomic_load(&p->n_fast_reads)));
  json_object_set_new(out, "fast_writes", json_integer((json_int_t)atomic_load(&p->n_fast_writes)));
  json_object_set_new(out, "fast_drains", json_integer((json_int_t)atomic_load(&p->n_fast_drains)));

  size_t n = 0;
  ts_pool_list_thins(l, NULL, 0, &n, NULL);
  ts_thin_info *v = n ? calloc(n, sizeof *v) : NULL;
  json_t *vols = json_array();
  if (v && ts_pool_list_thins(l, v, n, &n, NULL) == 0) {
    for (size_t i = 0; i < n; i++) {
      json_t *o = json_object();
      json_object_set_new(o, "id", json_integer(v[i].id));
      json_object_set_new(o, "mapped_blocks", json_integer((json_int_t)v[i].mapped_blocks));
      json_object_set_new(o, "open", json_boolean(v[i].open));
      json_array_append_new(vols, o);
    }
  }
  free(v);
  json_object_set_new(out, "volumes", vols);
  return 0;
}

static char *pool_dm_table(ts_layer *l)
{
  struct tp_pool *p = ts_layer_priv(l);
  const char *feat[4];
  int nf = 0;
  if (!p->zero_new)
    feat[nf++] = "skip_block_zeroing";
  if (!p->passdown)
    feat[nf++] = "no_discard_passdown";
  /* The kernel pool is read-only as configured, not because this stack
   * happened to be opened read-only to print the table. */
  if (p->config_read_only)
    feat[nf++] = "read_only";
  /* The kernel queues by default; our default is to fail at once. */
  if (!p->queue)
    feat[nf++] = "error_if_no_space";
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f)
    return NULL;
  fprintf(f, "0 %llu thin-pool <%s> <%s> %llu %llu %d",
          (unsigned long long)(ts_dev_size(p->data) / p->bs * p->bs / 512), ts_dev_name(p->meta),
          ts_dev_name(p->data), (unsigned long long)(p->bs / 512),
          (unsigned long long)((p->low_water + p->bs - 1) / p->bs), nf);
  for (int i = 0; i < nf; i++)
    fprintf(f, " %s", feat[i]);
  fclose(f);
  return buf;
}

const ts_layer_type ts__thin_pool_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "thin-pool",
  .summary = "a pool of data blocks for thin volumes (dm-thin metadata); FLUSH commits",
  .params = pool_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = pool_open,
  .close = pool_close,
  .limits = pool_limits,
  .submit = pool_submit,
  .status = pool_status,
  .dm_table = pool_dm_table,
};

/* ------------------------------------------------------------------------ */
/* Management API (<libthinstack/thin.h>)                                    */

static struct tp_pool *mgmt_pool(ts_dev *dev, ts_error *err)
{
  struct tp_pool *p = dev ? tp_pool_of(dev) : NULL;
  if (!p && dev)
    ts_error_set(err, -EINVAL, "layers.%s: a %s layer, not a thin-pool", ts_dev_name(dev),
                 ts_dev_type(dev));
  else if (!p)
    ts_error_set(err, -EINVAL, "no pool device given");
  return p;
}

static int mgmt_writable(struct tp_pool *p, ts_error *err)
{
  if (p->read_only)
    return ts_layer_error(p->layer, err, -EROFS, NULL, "the pool is read-only");
  int f = atomic_load(&p->failed);
  if (f)
    return ts_layer_error(p->layer, err, f == -EROFS ? -EIO : f, NULL,
                          "a metadata commit failed (%s): the pool refuses changes", ts_strerror(f));
  return 0;
}

/* A change is made only once it is committed: a failed commit leaves the
 * pool at its last commit (and refusing changes), so the message says the
 * change was not made, with the errno that stopped it. */
static int mgmt_commit(struct tp_pool *p, ts_error *err, const char *what)
{
  int r = tp_commit(p);
  if (r)
    return ts_layer_error(p->layer, err, r, NULL,
                          "cannot %s: the metadata commit failed: %s (%s); the pool keeps its last"
                          " commit and refuses changes until it is opened again",
                          what, ts_strerror(r), ts_err_name(r));
  return 0;
}

static int check_id(struct tp_pool *p, uint32_t id, ts_error *err)
{
  if (id > TS_THIN_MAX_ID)
    return ts_layer_error(p->layer, err, -EINVAL, NULL, "volume id %u is out of range (0..%u)", id,
                          TS_THIN_MAX_ID);
  return 0;
}

/* What a management call changes in the metadata, under the pool's locks:
 * 0 changed, NOTHING_CHANGED, or a negative errno. */
typedef int (*pool_change_fn)(struct tp_pool *p, void *arg);
#define NOTHING_CHANGED 1

/* The one way a management call changes the pool: `change` runs with the
 * mapping lock exclusive and the transaction lock shared (or exclusive with
 * `quiesce`, which waits for every allocation, discard and provision in
 * flight); a change marks the pool changed. Returns 0 or the negative errno;
 * the caller then commits with mgmt_commit(), outside the locks. */
static int pool_change(struct tp_pool *p, bool quiesce, pool_change_fn change, void *arg)
{
  if (quiesce)
    pthread_rwlock_wrlock(&p->txn);
  else
    pthread_rwlock_rdlock(&p->txn);
  pthread_rwlock_wrlock(&p->lock);
  /* Every change that unmaps (delete, resize) or shares (snapshot) blocks
   * comes through here: no fast-path request may still be writing them. */
  tp_drain(p);
  int r = change(p, arg);
  if (!r)
    tp_changed(p);
  pthread_rwlock_unlock(&p->lock);
  pthread_rwlock_unlock(&p->txn);
  return r == NOTHING_CHANGED ? 0 : r;
}

struct ids {
  uint32_t id, origin;
};

static int create_thin_change(struct tp_pool *p, void *arg)
{
  return md_room(p) ? tmd_create_thin(p->md, ((struct ids *)arg)->id) : -ENOSPC;
}

static int create_snap_change(struct tp_pool *p, void *arg)
{
  struct ids *a = arg;
  return md_room(p) ? tmd_create_snap(p->md, a->id, a->origin) : -ENOSPC;
}

int ts_pool_create_thin(ts_dev *pool, uint32_t id, ts_error *err)
{
  struct tp_pool *p = mgmt_pool(pool, err);
  int r;
  if (!p)
    return -EINVAL;
  if ((r = check_id(p, id, err)) || (r = mgmt_writable(p, err)))
    return r;
  r = pool_change(p, false, create_thin_change, &(struct ids){ id, 0 });
  if (r == -EEXIST)
    return ts_layer_error(p->layer, err, r, NULL, "volume %u already exists", id);
  if (r)
    return ts_layer_error(p->layer, err, r, NULL, "cannot create volume %u: %s%s", id, ts_strerror(r),
                          r == -ENOSPC ? MD_FULL_HINT : "");
  char what[64];
  snprintf(what, sizeof what, "create volume %u", id);
  return mgmt_commit(p, err, what);
}

int ts_pool_create_snap(ts_dev *pool, uint32_t id, uint32_t origin_id, ts_error *err)
{
  struct tp_pool *p = mgmt_pool(pool, err);
  int r;
  if (!p)
    return -EINVAL;
  if ((r = check_id(p, id, err)) || (r = check_id(p, origin_id, err)) || (r = mgmt_writable(p, err)))
    return r;
  /* Quiesced: the origin's requests in flight finish first. */
  r = pool_change(p, true, create_snap_change, &(struct ids){ id, origin_id });
  if (r == -ENODEV)
    return ts_layer_error(p->layer, err, r, NULL, "no volume %u to snapshot", origin_id);
  if (r == -EEXIST)
    return ts_layer_error(p->layer, err, r, NULL, "volume %u already exists", id);
  if (r)
    return ts_layer_error(p->layer, err, r, NULL, "cannot snapshot volume %u as %u: %s%s", origin_id, id,
                          ts_strerror(r), r == -ENOSPC ? MD_FULL_HINT : "");
  char what[64];
  snprintf(what, sizeof what, "snapshot volume %u as %u", origin_id, id);
  return mgmt_commit(p, err, what);
}

static int delete_freed(void *arg, uint64_t d, uint64_t n)
{
  struct tp_pool *p = arg;
  p->freed = true;
  if (p->passdown && p->data_discard)
    tp_druns_add(&p->pending, d, n);
  return 0;
}

static int delete_change(struct tp_pool *p, void *arg)
{
  uint32_t id = ((struct ids *)arg)->id;
  if (!tmd_dev_exists(p->md, id))
    return -ENODEV;
  /* Unmapping first reports the blocks that become free, so they can be
   * discarded after the commit; tmd_delete alone would not say. */
  uint64_t hi;
  int r = 0;
  if (p->passdown && p->data_discard && tmd_highest_mapped(p->md, id, &hi) == 0)
    r = tmd_remove_range(p->md, id, 0, hi + 1, 0, delete_freed, p, NULL);
  if (!r)
    r = tmd_delete(p->md, id);
  if (!r)
    p->freed = true;
  else
    tp_changed(p); /* a failure may have unmapped part of it */
  return r;
}

int ts_pool_delete_thin(ts_dev *pool, uint32_t id, ts_error *err)
{
  struct tp_pool *p = mgmt_pool(pool, err);
  int r;
  if (!p)
    return -EINVAL;
  if ((r = check_id(p, id, err)) || (r = mgmt_writable(p, err)))
    return r;
  pthread_mutex_lock(&p->vol_mu);
  struct tp_vol *v = vol_find(p, id);
  if (v) {
    r = ts_layer_error(p->layer, err, -EBUSY, NULL, "volume %u is open as layer \"%s\"", id,
                       ts_dev_name(v->layer));
    pthread_mutex_unlock(&p->vol_mu);
    return r;
  }
  /* Holding vol_mu keeps the volume from being opened meanwhile. */
  r = pool_change(p, false, delete_change, &(struct ids){ id, 0 });
  pthread_mutex_unlock(&p->vol_mu);
  if (r == -ENODEV)
    return ts_layer_error(p->layer, err, r, NULL, "no volume %u", id);
  if (r)
    return ts_layer_error(p->layer, err, r, NULL, "cannot delete volume %u: %s", id, ts_strerror(r));
  char what[64];
  snprintf(what, sizeof what, "delete volume %u", id);
  return mgmt_commit(p, err, what);
}

int ts_pool_list_thins(ts_dev *pool, ts_thin_info *out, size_t max, size_t *count, ts_error *err)
{
  struct tp_pool *p = mgmt_pool(pool, err);
  if (!p)
    return -EINVAL;
  pthread_mutex_lock(&p->vol_mu);
  pthread_rwlock_rdlock(&p->lock);
  size_t n = tmd_list_devices(p->md, NULL, 0);
  uint32_t *ids = n ? calloc(n, sizeof *ids) : NULL;
  int r = 0;
  if (n && !ids) {
    r = -ENOMEM;
  } else {
    n = tmd_list_devices(p->md, ids, n);
    for (size_t i = 0; i < n && i < max; i++) {
      struct tmd_dev_info di;
      memset(&out[i], 0, sizeof out[i]);
      out[i].id = ids[i];
      if (tmd_dev_info(p->md, ids[i], &di) == 0) {
        out[i].mapped_blocks = di.mapped_blocks;
        out[i].mapped_bytes = di.mapped_blocks * p->bs;
        out[i].transaction_id = di.transaction_id;
        out[i].creation_time = di.creation_time;
        out[i].snapshotted_time = di.snapshotted_time;
      }
      struct tp_vol *v = vol_find(p, ids[i]);
      out[i].open = v != NULL;
      out[i].size = v ? v->size : 0;
    }
    *count = n;
  }
  pthread_rwlock_unlock(&p->lock);
  pthread_mutex_unlock(&p->vol_mu);
  free(ids);
  if (r)
    return ts_layer_error(p->layer, err, r, NULL, "out of memory");
  return 0;
}

int ts_pool_thin_usage(ts_dev *pool, ts_thin_usage *out, size_t max, size_t *count, ts_error *err)
{
  struct tp_pool *p = mgmt_pool(pool, err);
  if (!p)
    return -EINVAL;
  pthread_rwlock_rdlock(&p->lock);
  size_t n = tmd_list_devices(p->md, NULL, 0);
  size_t m = n < max ? n : max;
  uint32_t *ids = calloc(n + 1, sizeof *ids);
  uint64_t *ex = calloc(m + 1, sizeof *ex), *sh = calloc(m + 1, sizeof *sh);
  int r = ids && ex && sh ? 0 : -ENOMEM;
  if (!r) {
    n = tmd_list_devices(p->md, ids, n);
    r = m ? tmd_sharing(p->md, ids, m, ex, sh) : 0;
  }
  for (size_t i = 0; !r && i < m; i++) {
    struct tmd_dev_info di = { 0 };
    tmd_dev_info(p->md, ids[i], &di);
    out[i] = (ts_thin_usage){ ids[i], di.mapped_blocks, ex[i], sh[i] };
  }
  pthread_rwlock_unlock(&p->lock);
  free(ids);
  free(ex);
  free(sh);
  if (r)
    return ts_layer_error(p->layer, err, r, NULL, "counting shared blocks: %s", ts_strerror(r));
  *count = n;
  return 0;
}

struct delta_arg {
  ts_delta_fn fn;
  void *arg;
};

static int delta_cb(void *arg, const struct tmd_delta *d)
{
  struct delta_arg *a = arg;
  ts_delta_range r = { (ts_delta_kind)d->kind, d->vbegin, d->len, d->left, d->right };
  return a->fn(a->arg, &r);
}

int ts_pool_delta(ts_dev *pool, uint32_t left, uint32_t right, uint32_t flags, ts_delta_fn fn,
                  void *arg, uint64_t *nodes_read, ts_error *err)
{
  struct tp_pool *p = mgmt_pool(pool, err);
  if (!p)
    return -EINVAL;
  if (!fn)
    return ts_error_set(err, -EINVAL, "ts_pool_delta: no callback given");
  struct delta_arg a = { fn, arg };
  pthread_rwlock_rdlock(&p->lock);
  bool hl = tmd_dev_exists(p->md, left), hr = tmd_dev_exists(p->md, right);
  int r = hl && hr
              ? tmd_delta(p->md, left, right, flags & TS_DELTA_WITH_SAME ? TMD_DELTA_WITH_SAME : 0,
                          delta_cb, &a, nodes_read)
              : -ENODEV;
  pthread_rwlock_unlock(&p->lock);
  if (r == -ENODEV)
    return ts_layer_error(p->layer, err, r, NULL, "pool \"%s\" has no volume %u", ts_dev_name(pool),
                          hl ? right : left);
  if (r < 0 && r != -ENOMEM)
    return ts_layer_error(p->layer, err, r, NULL, "comparing volumes %u and %u: %s", left, right,
                          ts_strerror(r));
  if (r == -ENOMEM)
    return ts_layer_error(p->layer, err, r, NULL, "out of memory");
  return r;
}

int ts_pool_get_status(ts_dev *pool, ts_pool_status *st, ts_error *err)
{
  struct tp_pool *p = mgmt_pool(pool, err);
  if (!p)
    return -EINVAL;
  memset(st, 0, sizeof *st);
  pthread_rwlock_rdlock(&p->lock);
  st->block_size = p->bs;
  st->data_blocks = tmd_data_nr_blocks(p->md);
  st->data_free_blocks = tmd_data_nr_free(p->md);
  st->data_used_blocks = st->data_blocks - st->data_free_blocks;
  st->metadata_blocks = tmd_metadata_nr_blocks(p->md);
  st->metadata_used_blocks = tmd_metadata_nr_used(p->md);
  st->transaction_id = tmd_transaction_id(p->md);
  st->held_metadata_root = tmd_metadata_snap(p->md);
  st->needs_check = tmd_needs_check(p->md);
  st->nr_thins = (uint32_t)tmd_list_devices(p->md, NULL, 0);
  pthread_rwlock_unlock(&p->lock);
  st->low_water_mark = p->low_water;
  st->low_water = p->low_water && st->data_free_blocks * p->bs < p->low_water;
  st->out_of_data_space = atomic_load(&p->out_of_space);
  st->queue_if_no_space = p->queue;
  st->discard_passdown = p->passdown;
  st->zero_new_blocks = p->zero_new;
  st->read_only = p->read_only;
  st->failed = atomic_load(&p->failed) != 0;
  st->commits = atomic_load(&p->n_commits);
  st->out_of_metadata_space = atomic_load(&p->md_short);
  return 0;
}

/* One of the pool's two spaces, for growing them alike. */
struct space {
  const char *name;     /* "data" or "metadata": the parameter naming its layer */
  ts_layer *layer;
  uint64_t unit;        /* bytes per block */
  uint64_t max_blocks;
  uint64_t (*nr_blocks)(const struct tmd *);
  int (*resize)(struct tmd *, uint64_t);
  atomic_bool *short_of; /* the out-of-space state growing it ends */
};

/* Grow a space to new_size bytes: the layer first (when smaller), then its
 * space map, then commit. Quiesced: no request runs meanwhile. */
static int grow_space(struct tp_pool *p, const struct space *sp, uint64_t new_size, ts_error *err)
{
  int r = mgmt_writable(p, err);
  if (r)
    return r;
  char unit[32];
  ts_format_size(sp->unit, unit, sizeof unit);
  if (new_size % sp->unit || new_size / sp->unit > sp->max_blocks)
    return ts_layer_error(p->layer, err, -EINVAL, NULL,
                          "new %s size %llu is not a multiple of %s up to %llu blocks", sp->name,
                          (unsigned long long)new_size, unit, (unsigned long long)sp->max_blocks);
  uint64_t nb = new_size / sp->unit;
  pthread_rwlock_wrlock(&p->txn);
  pthread_rwlock_wrlock(&p->lock);
  uint64_t cur = sp->nr_blocks(p->md);
  if (nb < cur) {
    r = ts_layer_error(p->layer, err, -EINVAL, NULL,
                       "the pool has %llu bytes of %s space; it cannot shrink to %llu",
                       (unsigned long long)(cur * sp->unit), sp->name, (unsigned long long)new_size);
  } else if (nb > cur) {
    if (ts_dev_size(sp->layer) < new_size && (r = ts_dev_grow(sp->layer, new_size, err))) {
      char msg[sizeof err->msg];
      snprintf(msg, sizeof msg, "%s", err && err->msg[0] ? err->msg : ts_strerror(r));
      r = ts_layer_error(p->layer, err, r, sp->name, "cannot grow the %s layer: %s", sp->name, msg);
    } else if (sp->layer == p->meta && (r = reserve_metadata(p, new_size))) {
      r = ts_layer_error(p->layer, err, r, sp->name, "cannot reserve %llu bytes for the metadata on \"%s\": %s",
                         (unsigned long long)new_size, ts_dev_name(p->meta), ts_strerror(r));
    } else if ((r = sp->resize(p->md, nb))) {
      r = ts_layer_error(p->layer, err, r, NULL, "cannot grow the %s space map to %llu blocks: %s%s",
                         sp->name, (unsigned long long)nb, ts_strerror(r),
                         r == -ENOSPC ? " (the metadata device is too small)" : "");
    } else {
      tp_changed(p);
      atomic_store(sp->short_of, false);
      check_low_water(p);
    }
  }
  pthread_rwlock_unlock(&p->lock);
  pthread_rwlock_unlock(&p->txn);
  if (r || nb == cur)
    return r;
  char what[64];
  snprintf(what, sizeof what, "grow the %s space", sp->name);
  r = mgmt_commit(p, err, what);
  space_appeared(p);
  return r;
}

int ts_pool_extend(ts_dev *pool, uint64_t new_size, ts_error *err)
{
  struct tp_pool *p = mgmt_pool(pool, err);
  if (!p)
    return -EINVAL;
  const struct space sp = { "data", p->data, p->bs, TMD_MAX_DATA_BLOCKS, tmd_data_nr_blocks,
                            tmd_resize_data, &p->out_of_space };
  return grow_space(p, &sp, new_size, err);
}

int ts_pool_extend_metadata(ts_dev *pool, uint64_t new_size, ts_error *err)
{
  struct tp_pool *p = mgmt_pool(pool, err);
  if (!p)
    return -EINVAL;
  const struct space sp = { "metadata", p->meta, 4096, TMD_MAX_METADATA_BLOCKS,
                            tmd_metadata_nr_blocks, tmd_resize_metadata, &p->md_short };
  return grow_space(p, &sp, new_size, err);
}

struct txn_ids {
  uint64_t current, next, have;
};

static int set_txn_change(struct tp_pool *p, void *arg)
{
  struct txn_ids *t = arg;
  t->have = tmd_transaction_id(p->md);
  return tmd_set_transaction_id(p->md, t->current, t->next);
}

static int release_snap_change(struct tp_pool *p, void *arg)
{
  return tmd_release_metadata_snap(p->md);
}

int ts_pool_set_transaction_id(ts_dev *pool, uint64_t current_id, uint64_t new_id, ts_error *err)
{
  struct tp_pool *p = mgmt_pool(pool, err);
  int r;
  if (!p)
    return -EINVAL;
  if ((r = mgmt_writable(p, err)))
    return r;
  struct txn_ids t = { current_id, new_id, 0 };
  r = pool_change(p, false, set_txn_change, &t);
  if (r == -EINVAL)
    return ts_layer_error(p->layer, err, r, NULL, "mismatched transaction id: the pool's is %llu, not %llu",
                          (unsigned long long)t.have, (unsigned long long)current_id);
  if (r)
    return ts_layer_error(p->layer, err, r, NULL, "cannot set the transaction id: %s", ts_strerror(r));
  return mgmt_commit(p, err, "set the transaction id");
}

int ts_pool_reserve_metadata_snap(ts_dev *pool, ts_error *err)
{
  struct tp_pool *p = mgmt_pool(pool, err);
  int r;
  if (!p)
    return -EINVAL;
  if ((r = mgmt_writable(p, err)))
    return r;
  bool freed = false;
  pthread_rwlock_wrlock(&p->txn);
  /* The reservation commits the metadata itself: flush the data first, as
   * every commit does (and fail as a commit would after a failed
   * write-back of the metadata). */
  r = wb_error(p);
  if (!r)
    r = ts_flush(p->data);
  if (!r) {
    pthread_rwlock_wrlock(&p->lock);
    r = tmd_reserve_metadata_snap(p->md);
    if (!r)
      after_commit_locked(p, &freed);
    pthread_rwlock_unlock(&p->lock);
  }
  pthread_rwlock_unlock(&p->txn);
  if (freed)
    space_appeared(p);
  if (r == -EBUSY)
    return ts_layer_error(p->layer, err, r, NULL, "a metadata snapshot is already held");
  if (r)
    return ts_layer_error(p->layer, err, r, NULL, "cannot reserve a metadata snapshot: %s", ts_strerror(r));
  return 0;
}

int ts_pool_release_metadata_snap(ts_dev *pool, ts_error *err)
{
  struct tp_pool *p = mgmt_pool(pool, err);
  int r;
  if (!p)
    return -EINVAL;
  if ((r = mgmt_writable(p, err)))
    return r;
  r = pool_change(p, false, release_snap_change, NULL);
  if (r == -EINVAL)
    return ts_layer_error(p->layer, err, r, NULL, "no metadata snapshot is held");
  if (r)
    return ts_layer_error(p->layer, err, r, NULL, "cannot release the metadata snapshot: %s", ts_strerror(r));
  return mgmt_commit(p, err, "release the metadata snapshot");
}

/* ------------------------------------------------------------------------ */
/* For the lifecycle calls (volumes.c)                                       */

struct unmap_arg {
  uint32_t id;
  uint64_t from, removed;
};

static int unmap_change(struct tp_pool *p, void *arg)
{
  struct unmap_arg *a = arg;
  uint64_t hi = 0;
  int r = tmd_highest_mapped(p->md, a->id, &hi);
  if (r == -ENODATA || (r == 0 && hi < a->from))
    return NOTHING_CHANGED;
  if (r == 0) {
    r = tmd_remove_range(p->md, a->id, a->from, hi + 1, 0, delete_freed, p, &a->removed);
    if (r)
      tp_changed(p); /* a failure may have unmapped part of it */
  }
  return r;
}

int tp_unmap_from(struct tp_pool *p, uint32_t id, uint64_t from, ts_error *err)
{
  int r = mgmt_writable(p, err);
  if (r)
    return r;
  pthread_mutex_lock(&p->vol_mu);
  struct tp_vol *v = vol_find(p, id);
  if (v) {
    r = ts_layer_error(p->layer, err, -EBUSY, NULL, "volume %u is open as layer \"%s\"", id,
                       ts_dev_name(v->layer));
    pthread_mutex_unlock(&p->vol_mu);
    return r;
  }
  struct unmap_arg a = { id, from, 0 };
  r = pool_change(p, false, unmap_change, &a);
  uint64_t removed = a.removed;
  pthread_mutex_unlock(&p->vol_mu);
  if (r)
    return ts_layer_error(p->layer, err, r, NULL,
                          "cannot unmap the blocks of volume %u from block %llu: %s", id,
                          (unsigned long long)from, ts_strerror(r));
  if (!removed)
    return 0;
  char what[96];
  snprintf(what, sizeof what, "unmap %llu blocks of volume %u", (unsigned long long)removed, id);
  return mgmt_commit(p, err, what);
}

struct usage {
  struct tp_pool *p;
  uint64_t zero;
};

static int usage_run(void *arg, const struct tmd_run *run)
{
  struct usage *u = arg;
  ts_extent_list l = { 0 };
  uint64_t bs = u->p->bs;
  if (ts_block_status(u->p->data, run->dbegin * bs, run->len * bs, &l) == 0)
    for (size_t i = 0; i < l.n; i++)
      if (l.v[i].flags & TS_EXTENT_ZERO)
        u->zero += l.v[i].length;
  ts_extent_list_free(&l);
  return 0;
}

int tp_vol_usage(struct tp_pool *p, uint32_t id, uint64_t *mapped, uint64_t *zero, uint64_t *end)
{
  struct tmd_dev_info di;
  struct usage u = { p, 0 };
  uint64_t hi = 0;
  *mapped = *zero = *end = 0;
  pthread_rwlock_rdlock(&p->lock);
  int r = tmd_dev_info(p->md, id, &di);
  if (!r && tmd_highest_mapped(p->md, id, &hi) == 0) {
    *mapped = di.mapped_blocks * p->bs;
    *end = (hi + 1) * p->bs;
    r = tmd_lookup_range(p->md, id, 0, hi + 1, usage_run, &u);
    *zero = u.zero;
  }
  pthread_rwlock_unlock(&p->lock);
  return r;
}

uint64_t tp_block_size(const struct tp_pool *p) { return p->bs; }

bool tp_has_volume(struct tp_pool *p, uint32_t id)
{
  pthread_rwlock_rdlock(&p->lock);
  bool e = tmd_dev_exists(p->md, id);
  pthread_rwlock_unlock(&p->lock);
  return e;
}
