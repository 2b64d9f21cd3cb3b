/* snapshot: what the two files of the snapshot layers share.
 *
 * store.c keeps a snapshot's exceptions (origin chunk -> COW chunk): the
 * table in memory and, for a persistent store, the dm-snapshot "P" format
 * on the COW device (docs/formats/dm-snapshot-persistent.md). snapshot.c
 * holds the two layer types, the registration of snapshots with their
 * origin, and the locking between origin writes and snapshot I/O.
 */
#ifndef TS_SNAP_INTERNAL_H
#define TS_SNAP_INTERNAL_H

#include <libthinstack/layer.h>

#include <stdbool.h>
#include <stdint.h>

#define TS_SNAP_MAGIC 0x70416e53u  /* "SnAp" little-endian */
#define TS_SNAP_VERSION 1u
#define TS_SNAP_MIN_CHUNK 4096u
#define TS_SNAP_MAX_CHUNK (512u * 1024)
#define TS_SNAP_DEFAULT_CHUNK (16u * 1024)  /* the kernel's default, 32 sectors */

/* Open-addressing map old_chunk -> new_chunk. */
struct ts__snap_table {
  uint64_t *key;
  uint64_t *val;   /* UINT64_MAX marks an empty slot */
  size_t cap;      /* power of two, or 0 */
  size_t n;
};

bool ts__snap_table_lookup(const struct ts__snap_table *t, uint64_t old, uint64_t *new_chunk);
/* Insert or replace; 0 or -ENOMEM. */
int ts__snap_table_insert(struct ts__snap_table *t, uint64_t old, uint64_t new_chunk);
void ts__snap_table_free(struct ts__snap_table *t);

/* One exception: origin chunk `old` lives in COW chunk `new_chunk`. */
struct ts__snap_exc {
  uint64_t old;
  uint64_t new_chunk;
};

struct ts__snap_store {
  ts_layer *cow;
  bool persistent;
  uint32_t chunk;          /* bytes */
  uint64_t cow_chunks;     /* whole chunks on the COW device */
  uint64_t origin_chunks;  /* chunks covering the origin (the last may be partial) */
  uint32_t per_area;       /* exception records per metadata area */
  bool valid;              /* false once invalidated (on disk too, when it could be written) */
  uint64_t next_free;      /* next COW chunk to hand out */
  uint64_t area;           /* index of the current metadata area */
  uint32_t committed;      /* records already in the current area */
  unsigned char *area_buf; /* the current area, chunk bytes */
  uint32_t stray;          /* non-zero records found after the end of the list at open */
  bool rewrite_tail;       /* the next commit writes the rest of the area: strays on disk */
  struct ts__snap_table table;
};

struct ts__snap_store_params {
  bool persistent;
  bool create;             /* initialise a blank COW device (magic 0) */
  bool read_only;          /* never write, not even to initialise */
  uint32_t chunk;          /* requested chunk bytes; 0: the header's, or the default */
  uint32_t min_chunk;      /* the largest logical block size of origin and COW */
  uint64_t origin_size;
};

/* Load (or initialise, when p->create and the COW starts with a zero word) the
 * store on `cow`. Every check happens before anything is written: on error the
 * COW device is unchanged and `err` names the reason under layer `l`. A store
 * whose header says invalid loads with st->valid false and no exceptions. */
int ts__snap_store_open(struct ts__snap_store *st, ts_layer *l, ts_layer *cow,
                        const struct ts__snap_store_params *p, ts_error *err);
void ts__snap_store_close(struct ts__snap_store *st);

/* Hand out the next free COW chunk; -ENOSPC when the device is full. */
int ts__snap_store_alloc(struct ts__snap_store *st, uint64_t *new_chunk);
/* Make `n` exceptions durable, in order, after their data chunks were written:
 * FLUSH the COW device, then write the metadata area(s) holding the records
 * with FUA (zeroing the next area first when one fills up). Does not touch the
 * table. Any error leaves the store unusable (the caller invalidates it). */
int ts__snap_store_commit(struct ts__snap_store *st, const struct ts__snap_exc *v, size_t n);
/* Mark the store invalid in memory and, if persistent, in its header (valid =
 * 0, written with FUA). Returns the header write's result. */
int ts__snap_store_invalidate(struct ts__snap_store *st);

/* Sectors as the kernel's status line reports them. */
uint64_t ts__snap_store_sectors_allocated(const struct ts__snap_store *st);
uint64_t ts__snap_store_metadata_sectors(const struct ts__snap_store *st);

#endif
