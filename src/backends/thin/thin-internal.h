/* What the thin-pool layer (pool.c) and the thin layer (thin.c) share.
 *
 * The pool owns the metadata (struct tmd), the locks and the commit; a thin
 * volume calls into it directly through this header, never through
 * ts_submit on the pool node.
 *
 * Locking (outermost first; nobody waits for an outer lock while holding
 * an inner one):
 *   cell   a range of virtual blocks of one volume (like dm's bio prison):
 *          held by every request that changes the mapping of those blocks
 *          (allocating, breaking sharing, discarding, provisioning), for
 *          the whole request, so two such requests on a block serialise.
 *   txn    rwlock, the commit barrier: shared while the metadata holds a
 *          state that must not be committed (blocks allocated but not yet
 *          mapped, blocks held for a discard), exclusive to commit or to
 *          quiesce the pool (snapshot, extend). Every metadata change is made
 *          under txn shared (or exclusive).
 *   lock   rwlock over struct tmd: shared for lookups and for the data I/O
 *          that relies on a looked-up mapping (so a mapping cannot change
 *          under an in-flight read or write), exclusive for metadata changes,
 *          which never include data I/O except the post-commit discards.
 * Both rwlocks prefer writers, so a commit is not starved by readers.
 */
#ifndef TS_THIN_INTERNAL_H
#define TS_THIN_INTERNAL_H

#include <libthinstack/layer.h>

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "pdata/thin-metadata.h"

/* A growable list of data block runs [d, d+n), coalesced when adjacent. */
struct tp_drun {
  uint64_t d, n;
};
struct tp_druns {
  struct tp_drun *v;
  size_t n, cap;
};
int tp_druns_add(struct tp_druns *r, uint64_t d, uint64_t n);
void tp_druns_free(struct tp_druns *r);

/* A locked range of virtual blocks [b, e) of volume `dev`. */
struct tp_cell {
  uint32_t dev;
  uint64_t b, e;
  struct tp_cell *next;
};

struct tp_vol;

/* break_clone "auto" clones blocks of this size and more. */
#define TP_CLONE_MIN_BLOCK (512u << 10)

struct tp_pool {
  ts_layer *layer, *meta, *data;
  struct pd_bdev bdev;
  struct tmd *md;

  uint64_t bs;              /* data block size in bytes */
  uint64_t low_water;       /* bytes; 0 = none */
  bool queue;               /* out_of_space = queue */
  double queue_timeout;     /* seconds; 0 = wait forever */
  double commit_interval;   /* seconds; 0 = commit only on flush and close */
  bool passdown, zero_new, read_only;
  bool clone_breaks;        /* break sharing by a clone in the data layer (break_clone) */
  bool config_read_only;    /* read_only in the config, not just the open mode */
  bool data_discard;        /* the data layer takes DISCARD */
  bool data_provision;      /* the data layer takes PROVISION */
  bool meta_reserved;       /* the metadata layer took a PROVISION of its size */

  pthread_rwlock_t txn, lock;
  pthread_mutex_t cell_mu;
  pthread_cond_t cell_cv;
  struct tp_cell *cells;

  atomic_bool dirty;        /* metadata changed since the last commit */
  struct tp_druns pending;  /* freed in this transaction: discard after the
                               commit (under lock, exclusive) */
  bool freed;               /* blocks freed since the last commit (under lock) */

  pthread_mutex_t space_mu; /* out-of-space queueing */
  pthread_cond_t space_cv;
  uint64_t space_gen;       /* bumped when space may have appeared */
  bool stopping;
  atomic_bool out_of_space, low_water_hit, low_water_event, oos_event;
  atomic_bool md_short, md_event; /* out of metadata space (before the reserve) */

  pthread_mutex_t ct_mu;    /* periodic commit thread */
  pthread_cond_t ct_cv;
  pthread_t committer;
  bool committer_running, ct_stop;

  /* The data layer's flush of a commit runs on data_flusher while the
   * commit writes the metadata (see commit_txn_locked). The metadata
   * layer's flushes that write back, during a large provision, the blocks
   * already written (tp_meta_writeback) run on wb_flusher, so that a
   * commit's data flush never waits behind one. Both under df_mu. */
  pthread_mutex_t df_mu;
  pthread_cond_t df_cv;
  pthread_t data_flusher, wb_flusher;
  bool data_flusher_running, wb_flusher_running, df_stop, df_asked, df_done;
  int df_result;
  bool wb_asked, wb_busy;
  int wb_err;       /* a write-back flush failed: the commit must fail */
  uint64_t wb_mark; /* tmd_blocks_written at the last write-back */
  uint64_t wb_txn;  /* tmd_blocks_written at the last commit */

  pthread_mutex_t vol_mu;
  struct tp_vol *vols;

  atomic_int failed;        /* error of a failed commit; 0 = none */

  /* Requests of the async fast path (thin.c) in flight on the data layer.
   * Raised only under `lock` shared, so a holder of `lock` exclusive that
   * waits for zero (tp_drain) knows that none is left and none can start. */
  atomic_uint_fast64_t fast_inflight;
  pthread_mutex_t fast_mu;
  pthread_cond_t fast_cv;
  atomic_uint fast_write_skip; /* 0: try writes; else writes since a decline */

  /* counters for status */
  atomic_uint_fast64_t n_commits, n_alloc, n_zeroed_bytes, n_copied_blocks, n_cloned_blocks,
      n_passdown_discard, n_passdown_provision, n_queue_waits, n_fast_reads, n_fast_writes,
      n_fast_drains;
};

/* One remembered single-block lookup of a volume (thin.c): a seqlock, the
 * virtual block, its mapping and the tmd_map_gen it was read at. */
struct tp_map_entry {
  atomic_uint_fast64_t seq, vblock, val, gen;
};

struct tp_vol {
  struct tp_pool *pool;
  ts_layer *layer;
  uint32_t id;
  uint64_t size;
  struct tp_vol *next;
  /* Recent single-block lookups, direct-mapped by virtual block (thin.c,
   * lookup_block); NULL when there was no memory for it. */
  struct tp_map_entry *mc;
  uint64_t mc_mask;
  atomic_uint_fast64_t n_walks; /* single-block lookups the cache did not answer */
};

/* pool.c */
struct tp_pool *tp_pool_of(ts_layer *node);
int tp_vol_attach(struct tp_pool *p, ts_layer *l, uint32_t id, uint64_t size, bool create,
                  struct tp_vol **out, ts_error *err);
void tp_vol_detach(struct tp_vol *v);
/* FLUSH: data device flush beside the metadata writes of the commit (when
 * anything changed), the superblock once both are durable, then the
 * discards of blocks the commit freed. */
int tp_commit(struct tp_pool *p);
void tp_cell_lock(struct tp_pool *p, struct tp_cell *c, uint32_t dev, uint64_t b, uint64_t e);
void tp_cell_unlock(struct tp_pool *p, struct tp_cell *c);
/* Under `lock` exclusive: allocate up to `want` data blocks into `out`.
 * -ENOSPC when fewer could be had (those allocated are in `out`); *gen
 * then holds the value to pass to tp_wait_space. */
int tp_alloc(struct tp_pool *p, uint64_t want, struct tp_druns *out, uint64_t *gen);
/* Under `lock` exclusive: drop one reference on each block of the runs. */
void tp_release(struct tp_pool *p, const struct tp_druns *runs);
/* Under `lock` exclusive: data block `d` lost a mapping; if nothing
 * references it any more, remember it for the post-commit discard. */
void tp_note_unref(struct tp_pool *p, uint64_t d);
/* Under `lock` exclusive, before the change that makes a mapped data block
 * free (an unmap, the last reference dropped) or shares it (a snapshot):
 * wait for the fast path's requests in flight, any of which may be a write
 * into that block. A block freed without this could be handed out again
 * while an old write to it is still on its way to the data layer. */
void tp_drain(struct tp_pool *p);
/* A fast-path request has completed on the data layer. */
void tp_fast_end(struct tp_pool *p);
/* Under `lock` exclusive, between the steps of a large change: with
 * `write_back`, while the open transaction is small, write its dirty
 * metadata blocks now (the caller has other work in flight to overlap
 * with); with `flush`, once enough blocks of it are written, flush the
 * metadata layer in the background, so the commit finds them on disk
 * already instead of writing and syncing them all at once. */
void tp_meta_writeback(struct tp_pool *p, bool write_back, bool flush);
/* Under `lock` exclusive: mark the metadata changed. */
void tp_changed(struct tp_pool *p);
/* With no lock held: raise the events noticed under the lock. */
void tp_fire_events(struct tp_pool *p);
/* Out of data space after tp_alloc: with out_of_space = error return
 * -ENOSPC; with queue wait until space may have appeared (0: retry) or the
 * deadline passes (-ENOSPC). *deadline starts zeroed and is set by the
 * first wait of a request. Call with no lock held. */
int tp_wait_space(struct tp_pool *p, uint64_t gen, struct timespec *deadline);
/* Tmd errors seen by the data path: a failed pool answers -EIO. */
int tp_data_err(struct tp_pool *p, int r);

/* For the lifecycle calls (volumes.c). Unmap every block of volume `id`
 * (which must not be open) from virtual block `from` on, and commit. */
int tp_unmap_from(struct tp_pool *p, uint32_t id, uint64_t from, ts_error *err);
/* Bytes mapped to volume `id`, those of them reading as zeroes on the data
 * layer, and one past its last mapped byte. -ENODEV no such volume. */
int tp_vol_usage(struct tp_pool *p, uint32_t id, uint64_t *mapped, uint64_t *zero, uint64_t *end);
uint64_t tp_block_size(const struct tp_pool *p);
bool tp_has_volume(struct tp_pool *p, uint32_t id);

#endif
