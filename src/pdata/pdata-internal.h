/* Internal interfaces of the persistent-data (dm-thin metadata) library:
 * checksums, block manager, space maps, transaction manager and btrees.
 * Nothing here is public; cross-file names use the pd_ prefix. */
#ifndef PDATA_INTERNAL_H
#define PDATA_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/le.h"
#include "pdata/bdev.h"

/* ---- checksums ---- */
uint32_t pd_crc32c(const void *buf, size_t len);              /* standard CRC-32C */
uint32_t pd_crc32c_update(uint32_t crc, const void *buf, size_t len); /* no pre/post inversion */
uint32_t pd_crc32c_sw(uint32_t crc, const void *buf, size_t len);     /* table path, for tests */
uint32_t pd_block_csum(const void *block, uint32_t salt);

/* ---- on-disk constants ---- */
#define PD_SB_MAGIC 27022010ull
#define PD_SB_VERSION 2u
#define PD_SALT_SUPER 160774u
#define PD_SALT_NODE 121107u
#define PD_SALT_BITMAP 240779u
#define PD_SALT_INDEX 160478u
#define PD_ENTRIES_PER_BITMAP 16320u
#define PD_BITMAP_WORDS 510u
#define PD_MAX_META_BITMAPS 255u
#define PD_SB_FLAG_NEEDS_CHECK 1u

/* superblock field offsets */
#define SB_CSUM 0
#define SB_FLAGS 4
#define SB_BLOCKNR 8
#define SB_UUID 16
#define SB_MAGIC 32
#define SB_VERSION 40
#define SB_TIME 44
#define SB_TRANS_ID 48
#define SB_HELD_ROOT 56
#define SB_DATA_SM 64
#define SB_META_SM 192
#define SB_MAPPING_ROOT 320
#define SB_DETAILS_ROOT 328
#define SB_DATA_BLOCK_SIZE 336
#define SB_META_BLOCK_SIZE 340
#define SB_META_NR_BLOCKS 344
#define SB_COMPAT 352
#define SB_COMPAT_RO 356
#define SB_INCOMPAT 360

/* btree node header */
#define PD_NODE_INTERNAL 1u
#define PD_NODE_LEAF 2u
#define NODE_FLAGS 4
#define NODE_BLOCKNR 8
#define NODE_NR 16
#define NODE_MAX 20
#define NODE_VSIZE 24
#define NODE_KEYS 32

static inline uint32_t pd_node_max_entries(uint32_t vsize)
{
  return 3 * (((PD_BLOCK_SIZE - 32) / (8 + vsize)) / 3);
}

/* Block types, each with its validator (checksum salt, own block number). */
enum pd_btype { PD_BT_RAW = 0, PD_BT_SUPER, PD_BT_NODE, PD_BT_BITMAP, PD_BT_INDEX };
uint32_t pd_btype_salt(enum pd_btype t);
/* Validate a block read from `nr`: 0, or -EILSEQ with a reason in why. */
int pd_block_validate(const uint8_t *data, uint64_t nr, enum pd_btype t, char *why, size_t whylen);
/* Stamp block number and checksum before a write. */
void pd_block_prepare(uint8_t *data, uint64_t nr, enum pd_btype t);

/* ---- block manager: bounded cache of 4 KiB blocks ---- */
struct pd_block {
  uint64_t nr;
  uint8_t *data;
  struct pd_block *hnext;
  struct pd_block *prev, *next; /* LRU, most recent at head */
  atomic_int readers;           /* taken under the read side, dropped without the lock */
  atomic_bool referenced;       /* read since eviction last passed it (CLOCK) */
  bool writer;
  bool dirty;
  bool wb;      /* queued to the write-back thread: not evicted, not written to */
  bool zero_unused; /* a new node: its unused bytes are zeroed at unlock (holder only) */
  uint8_t type; /* enum pd_btype, used to stamp the block when written */
};

/* Dirty blocks evicted from the cache are stamped and written by a thread
 * of the block manager while the evicting thread goes on; a batch at a time,
 * at most BM_WB_SLOTS batches in flight. */
#define BM_EVICT_BATCH 256
#define BM_WB_SLOTS 4

struct pd_bm_wb_batch {
  struct pd_block *v[BM_EVICT_BATCH]; /* sorted by block number */
  size_t n;
  int r; /* the write's result */
};

struct pd_bm {
  struct pd_bdev bdev;
  uint64_t nr_blocks;
  pthread_rwlock_t lock; /* protects the cache structure (read side: a hit
                            of a reader; write side: everything else); block
                            data follows the caller's readers-XOR-writer rule */
  struct pd_block **hash;
  unsigned hash_shift; /* 64 - log2 of the bucket count */
  struct pd_block lru; /* sentinel */
  size_t nr_cached, max_cached;
  uint64_t reads, writes; /* statistics, blocks */
  int io_error;           /* first write error met while evicting */
  struct pd_block *spare; /* evicted blocks kept for reuse (chained by hnext) */
  size_t nr_spare;
  uint8_t *run_buf;       /* staging for multi-block writes */
  /* The write-back thread (started on the first dirty eviction). `wb_mu`
   * guards the counters and the batches' results; the blocks' flags are
   * set and cleared by the threads holding the write side of `lock`, which
   * the write-back thread never takes. Batch i is in slot i % BM_WB_SLOTS;
   * [wb_reaped, wb_written) are written, [wb_written, wb_queued) queued. */
  pthread_t wb_thread;
  bool wb_started, wb_stop;
  pthread_mutex_t wb_mu;
  pthread_cond_t wb_cv;
  uint64_t wb_queued, wb_written, wb_reaped;
  size_t nr_wb; /* blocks queued or being written (under `lock`) */
  struct pd_bm_wb_batch wb_batch[BM_WB_SLOTS];
  char why[200];          /* why the last block was refused (under lock) */
};

int pd_bm_create(struct pd_bm **out, const struct pd_bdev *bdev, uint64_t nr_blocks,
                 uint32_t cache_blocks);
void pd_bm_destroy(struct pd_bm *bm);
/* Read-lock a block (shared): validated against `t` when read from disk. */
int pd_bm_read(struct pd_bm *bm, uint64_t nr, enum pd_btype t, struct pd_block **out);
/* Write-lock a block (exclusive), reading it first. */
int pd_bm_write(struct pd_bm *bm, uint64_t nr, enum pd_btype t, struct pd_block **out);
/* Write-lock a block without reading it: contents zeroed. */
int pd_bm_write_zero(struct pd_bm *bm, uint64_t nr, enum pd_btype t, struct pd_block **out);
/* Write-lock a block without reading it: contents undefined, the caller
 * writes every byte before it unlocks (a copy of another block). */
int pd_bm_write_fill(struct pd_bm *bm, uint64_t nr, enum pd_btype t, struct pd_block **out);
/* Write-lock a new B-tree node without reading it: the header is zeroed
 * for the caller to fill; what its entries leave unused (past the count,
 * past the values) is zeroed when it unlocks, so it reaches the disk as a
 * zeroed block written with the same entries would, without zeroing the
 * 4 KiB a full leaf overwrites. */
int pd_bm_write_node(struct pd_bm *bm, uint64_t nr, struct pd_block **out);
void pd_bm_unlock(struct pd_bm *bm, struct pd_block *b);
/* Write every dirty block except block `skip` (UINT64_MAX: none), after
 * waiting for the blocks queued to the write-back thread; fails with the
 * first write error met since the last call, theirs included. */
int pd_bm_flush_dirty(struct pd_bm *bm, uint64_t skip);
/* Write every dirty, unlocked block but the superblock now, in the open
 * transaction (as eviction does: they sit where the last commit has free
 * space), so that the commit has less to write. A failed write is also
 * kept for the next pd_bm_flush_dirty, which fails the commit with it. */
int pd_bm_write_back(struct pd_bm *bm);
/* Write one cached dirty block now (the superblock, last). */
int pd_bm_write_block(struct pd_bm *bm, uint64_t nr);
/* How many cached blocks share the hash bucket of block nr (the blocks a
 * lookup of nr walks when nr is not cached). */
size_t pd_bm_chain_len(struct pd_bm *bm, uint64_t nr);
/* Forget every cached block (abort). No block may be locked. */
void pd_bm_drop_all(struct pd_bm *bm);
/* Forget one cached block if present and unlocked (it was freed). */
void pd_bm_forget(struct pd_bm *bm, uint64_t nr);
/* Remember why a block was refused, for the caller's message. */
void pd_bm_refused(struct pd_bm *bm, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Copy the last refusal reason ("" if none) into buf. */
void pd_bm_last_refusal(struct pd_bm *bm, char *buf, size_t len);

/* ---- space maps, held in memory as 2-bit counts + overflow table ---- */
struct pd_sm_bitmap {
  uint64_t *words;     /* PD_BITMAP_WORDS current words */
  uint64_t *committed; /* words of the last commit, kept once changed; NULL = same as words */
  uint64_t blocknr;    /* metadata block holding it; 0 = not placed yet */
  uint32_t nr_free;    /* entries (below nr_blocks) with count 0 */
  bool dirty;          /* changed since last written */
};

struct pd_ov_entry { uint64_t key; uint32_t count; uint32_t used; };

struct pd_sm {
  bool is_meta;
  uint64_t nr_blocks, nr_allocated;
  size_t nr_bitmaps;
  struct pd_sm_bitmap *bm;
  uint64_t ref_root;   /* overflow btree root */
  uint64_t index_root; /* data: index btree root; metadata: index block */
  uint64_t alloc_hint;
  uint64_t gen;        /* bumped on every change (commit fixpoint) */
  /* overflow counts (>= 3), open addressing */
  struct pd_ov_entry *ov;
  size_t ov_mask, ov_used;
  /* keys whose overflow status changed in this transaction */
  uint64_t *ovd;
  size_t ovd_n, ovd_cap;
};

int pd_sm_init(struct pd_sm *sm, bool is_meta, uint64_t nr_blocks);
void pd_sm_free(struct pd_sm *sm);
int pd_sm_extend(struct pd_sm *sm, uint64_t new_nr_blocks);
uint32_t pd_sm_get(const struct pd_sm *sm, uint64_t b);
bool pd_sm_committed_free(const struct pd_sm *sm, uint64_t b);
int pd_sm_set(struct pd_sm *sm, uint64_t b, uint32_t count);
int pd_sm_inc(struct pd_sm *sm, uint64_t b);
/* Decrement; *now = new count. -EINVAL if already 0. */
int pd_sm_dec(struct pd_sm *sm, uint64_t b, uint32_t *now);
int pd_sm_alloc(struct pd_sm *sm, uint64_t *b);
int pd_sm_alloc_run(struct pd_sm *sm, uint64_t max, uint64_t *begin, uint64_t *len);
/* Treat every block `old` uses as still used by the last commit, so nothing
 * is allocated there before the next commit (building beside a pool). */
int pd_sm_keep_out(struct pd_sm *sm, const struct pd_sm *old);
/* Forget the committed copies (after a commit). */
void pd_sm_committed(struct pd_sm *sm);
/* Recompute nr_free / nr_allocated from the words. */
void pd_sm_recount(struct pd_sm *sm);
uint32_t pd_sm_none_free_before(const struct pd_sm *sm, size_t i);
/* Store an overflow count read from disk (load). */
int pd_sm_load_overflow(struct pd_sm *sm, uint64_t b, uint32_t count);
/* 2-bit entry of bitmap words */
static inline uint32_t pd_bits_get(const uint64_t *w, uint32_t i)
{
  uint64_t x = w[i / 32] >> (2 * (i % 32));
  /* lower bit position is the high bit of the count */
  return (uint32_t)(((x & 1) << 1) | ((x >> 1) & 1));
}

/* ---- transaction manager ---- */
struct pd_tm {
  struct pd_bm *bm;
  struct pd_sm *meta;
};
int pd_tm_read(struct pd_tm *tm, uint64_t b, enum pd_btype t, struct pd_block **out);
int pd_tm_new_block(struct pd_tm *tm, enum pd_btype t, struct pd_block **out);
/* Get a writable version of block b: in place if only this transaction owns
 * it, else a copy (old count -1). *shared = the old block had other
 * references, so the copy's children need an extra reference. */
int pd_tm_shadow(struct pd_tm *tm, uint64_t b, enum pd_btype t, struct pd_block **out,
                 bool *shared);
void pd_tm_unlock(struct pd_tm *tm, struct pd_block *b);
int pd_tm_inc(struct pd_tm *tm, uint64_t b);
/* Drop one reference; *now = the remaining count. */
int pd_tm_dec(struct pd_tm *tm, uint64_t b, uint32_t *now);

/* ---- btrees ---- */
struct pd_vtype {
  uint32_t size;
  void *ctx;
  /* add a reference to each of n values (a shared leaf was copied); may be NULL */
  int (*inc)(void *ctx, const uint8_t *values, uint32_t n);
  /* drop the reference a removed/overwritten value held; may be NULL */
  int (*dec)(void *ctx, const uint8_t *value);
};

struct pd_btree {
  struct pd_tm *tm;
  struct pd_vtype vt;
};

int pd_btree_empty(struct pd_btree *t, uint64_t *root);
int pd_btree_lookup(struct pd_btree *t, uint64_t root, uint64_t key, void *value);
/* Smallest key >= key: -ENODATA if none. */
int pd_btree_lower_bound(struct pd_btree *t, uint64_t root, uint64_t key, uint64_t *found);
int pd_btree_highest(struct pd_btree *t, uint64_t root, uint64_t *key);
/* Insert or overwrite (overwrite drops the old value via vt.dec). *inserted
 * (may be NULL) = the key was new. */
int pd_btree_insert(struct pd_btree *t, uint64_t root, uint64_t key, const void *value,
                    uint64_t *new_root, bool *inserted);
/* Insert keys kbegin+i -> 8-byte values vbase + i*vstep for i < count.
 * *done = keys processed, *added = keys that were new. */
int pd_btree_insert_run(struct pd_btree *t, uint64_t root, uint64_t kbegin, uint64_t count,
                        uint64_t vbase, uint64_t vstep, uint64_t *new_root, uint64_t *done,
                        uint64_t *added);
/* Remove every key in [kb, ke); values dropped via vt.dec. */
int pd_btree_remove_range(struct pd_btree *t, uint64_t root, uint64_t kb, uint64_t ke,
                          uint64_t *new_root, uint64_t *removed);
/* Drop one reference to a whole tree (freeing what only it used). */
int pd_btree_del(struct pd_btree *t, uint64_t root);
/* Visit leaves in key order restricted to [kb, ke): fn gets the keys/values
 * arrays of each leaf slice. Non-zero return stops and is returned. */
typedef int (*pd_leaf_fn)(void *arg, const uint8_t *node, uint32_t first, uint32_t n);
int pd_btree_walk(struct pd_btree *t, uint64_t root, uint64_t kb, uint64_t ke, pd_leaf_fn fn,
                  void *arg);
/* Read-lock node b, validated as a node of this tree (release with
 * pd_tm_unlock). */
int pd_btree_read_node(struct pd_btree *t, uint64_t b, struct pd_block **out);
/* Node accessors */
static inline uint32_t pd_node_nr(const uint8_t *n) { return ts__le32(n + NODE_NR); }
static inline uint32_t pd_node_maxe(const uint8_t *n) { return ts__le32(n + NODE_MAX); }
static inline uint32_t pd_node_vsize(const uint8_t *n) { return ts__le32(n + NODE_VSIZE); }
static inline uint64_t pd_node_key(const uint8_t *n, uint32_t i) { return ts__le64(n + NODE_KEYS + 8 * (size_t)i); }
static inline uint8_t *pd_node_val(uint8_t *n, uint32_t i)
{
  return n + NODE_KEYS + 8 * (size_t)pd_node_maxe(n) + (size_t)pd_node_vsize(n) * i;
}
static inline const uint8_t *pd_node_cval(const uint8_t *n, uint32_t i)
{
  return n + NODE_KEYS + 8 * (size_t)pd_node_maxe(n) + (size_t)pd_node_vsize(n) * i;
}
static inline bool pd_node_is_leaf(const uint8_t *n) { return ts__le32(n + NODE_FLAGS) & PD_NODE_LEAF; }

/* ---- space map on-disk (load / commit), in sm-disk.c ---- */
int pd_sm_load(struct pd_tm *tm, struct pd_sm *sm, const uint8_t *root32, bool is_meta,
               char *why, size_t whylen);
/* Place every changed space-map block (fixpoint with the metadata map). */
int pd_sm_commit_place(struct pd_tm *tm, struct pd_sm *data, struct pd_sm *meta);
/* Write the bitmap and index contents; after pd_sm_commit_place. */
int pd_sm_commit_write(struct pd_tm *tm, struct pd_sm *data, struct pd_sm *meta);
void pd_sm_root_encode(const struct pd_sm *sm, uint8_t *root32);

/* ---- pool internals shared by check.c and xml.c (thin-metadata.c) ---- */
struct tmd;
struct tmd_dev_info;
/* Validate superblock fields; 0 or -errno with a reason. */
int pd_sb_check(const uint8_t *sb, uint64_t dev_blocks, bool rw, char *why, size_t whylen);
int pd_tmd_insert_run_time(struct tmd *md, uint32_t id, uint64_t vbegin, uint64_t count,
                           uint64_t dbegin, uint32_t time, uint64_t *done);
int pd_tmd_set_details(struct tmd *md, uint32_t id, const struct tmd_dev_info *info);
/* A device's mapping tree: its root and the tree (value: block << 24 | time). */
int pd_tmd_dev_tree(struct tmd *md, uint32_t id, uint64_t *root, struct pd_btree **tree);
void pd_tmd_set_sb_fields(struct tmd *md, uint32_t time, uint64_t trans_id, uint32_t flags);
/* tmd_format without its commit, for building a whole pool in one
 * transaction. When the device holds a pool that opens, every block it uses
 * is kept out of allocation and block 0 keeps its superblock until the
 * commit, so the old pool survives any failure before then; *kept (may be
 * NULL) tells whether that was the case. */
int pd_tmd_format_beside(const struct pd_bdev *bdev, uint32_t data_block_size, uint64_t nr_data_blocks,
                         struct tmd **out, bool *kept, ts_error *err);

#endif
