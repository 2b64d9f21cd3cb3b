/* libthinstack: managing thin pools and their volumes.
 *
 * Include <libthinstack/thinstack.h> rather than this header.
 *
 * A `thin-pool` node of an open stack keeps dm-thin metadata on its
 * `metadata` child and data blocks on its `data` child; `thin` nodes are its
 * volumes. These calls mirror dm-thin's pool messages (create_thin,
 * create_snap, delete, set_transaction_id, reserve/release_metadata_snap)
 * and its status line, and add extend.
 *
 * Conventions for every function here:
 *  - `pool` is a node of type "thin-pool" (ts_stack_node(stack, "pool"));
 *    any other node gives -EINVAL.
 *  - Thin device ids are 24-bit: 0 .. TS_THIN_MAX_ID.
 *  - A call that changes the pool commits before it returns (data device
 *    flush, then metadata commit), so the change survives a crash.
 *  - Errors: a negative errno, with a message in `err` (which may be NULL)
 *    naming the pool node. A failed call changes nothing.
 *  - Thread-safe: the calls may run while other threads do I/O on the
 *    pool's volumes.
 */
#ifndef LIBTHINSTACK_THIN_H
#define LIBTHINSTACK_THIN_H

#ifndef LIBTHINSTACK_THINSTACK_H
#error "include <libthinstack/thinstack.h>, not <libthinstack/thin.h>"
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TS_THIN_MAX_ID ((1u << 24) - 1)

/* Create an empty thin volume `id` in the pool. Open it by adding a `thin`
 * layer with that id to a stack (or with "create": true, which does this).
 * -EEXIST the id is in use, -EINVAL the id is out of range, -ENOSPC the
 * metadata device is full, -EROFS the pool is read-only. */
TS_EXTERN int ts_pool_create_thin(ts_dev *pool, uint32_t id, ts_error *err);

/* Create volume `id` as a snapshot of volume `origin_id`, in O(1): both
 * share every block until one of them writes it. The origin may be open
 * and in use: in-flight requests to it finish first and new ones wait (the
 * kernel asks the caller to suspend the origin; here the pool does it).
 * -ENODEV no volume `origin_id`, -EEXIST `id` in use, -EINVAL bad id,
 * -ENOSPC metadata full, -EROFS read-only pool. */
TS_EXTERN int ts_pool_create_snap(ts_dev *pool, uint32_t id, uint32_t origin_id, ts_error *err);

/* Delete volume `id`: its blocks that no other volume shares are freed and,
 * with discard_passdown, discarded on the data device after the commit.
 * -ENODEV no such volume, -EBUSY it is open as a `thin` layer of this stack,
 * -EROFS read-only pool. */
TS_EXTERN int ts_pool_delete_thin(ts_dev *pool, uint32_t id, ts_error *err);

/* One volume of a pool. */
typedef struct ts_thin_info {
  uint32_t id;
  uint64_t mapped_blocks;    /* pool blocks mapped (written or provisioned) */
  uint64_t mapped_bytes;     /* mapped_blocks * block size */
  uint64_t transaction_id;   /* pool transaction id when it was created */
  uint32_t creation_time;    /* pool snapshot time when it was created */
  uint32_t snapshotted_time; /* pool snapshot time of its last snapshot */
  bool open;                 /* open as a `thin` layer of this stack */
  uint64_t size;             /* the open layer's size in bytes; 0 when not open
                                (dm-thin does not store volume sizes) */
} ts_thin_info;

/* List the pool's volumes in ascending id order: fills up to `max` entries of
 * `out` (may be NULL when max is 0) and stores the total number of volumes
 * in *count, which may exceed max (call again with more room). */
TS_EXTERN int ts_pool_list_thins(ts_dev *pool, ts_thin_info *out, size_t max, size_t *count,
                                 ts_error *err);

/* A pool's state (the dm-thin status line and a little more). */
typedef struct ts_pool_status {
  uint64_t block_size;         /* data block size in bytes */
  uint64_t data_blocks;        /* data space in blocks */
  uint64_t data_used_blocks;
  uint64_t data_free_blocks;
  uint64_t metadata_blocks;    /* metadata space in 4 KiB blocks */
  uint64_t metadata_used_blocks;
  uint64_t transaction_id;     /* set with ts_pool_set_transaction_id */
  uint64_t held_metadata_root; /* block of the reserved metadata snapshot, 0 if none */
  uint64_t low_water_mark;     /* bytes; 0 = none */
  bool low_water;              /* free data space is below the low water mark */
  bool out_of_data_space;      /* an allocation failed since the last extend */
  bool queue_if_no_space;      /* out_of_space = "queue" (else "error") */
  bool discard_passdown;
  bool zero_new_blocks;
  bool read_only;
  bool needs_check;            /* metadata flagged for checking */
  bool failed;                 /* a metadata commit failed: the pool refuses changes */
  uint32_t nr_thins;
  uint64_t commits;            /* metadata commits since open */
  bool out_of_metadata_space;  /* allocations stopped at the metadata reserve */
} ts_pool_status;

/* Fill *st with the pool's current state. */
TS_EXTERN int ts_pool_get_status(ts_dev *pool, ts_pool_status *st, ts_error *err);

/* Grow the pool's data space to `new_data_size` bytes (a multiple of the
 * block size). If the data layer is smaller than that, it is grown first
 * (ts_dev_grow: a `file` layer extends its file; other layers must already
 * be big enough, else -EOPNOTSUPP). Then the data space map grows, the
 * change is committed, the pool leaves out-of-data-space mode and requests
 * queued for space resume. A stack configuration that states the data
 * file's size must be updated to the new size before it is opened again
 * (`thinstack pool extend` does so). -EINVAL smaller than now or not a
 * multiple of the block size, -ENOSPC the metadata device is too small for
 * the bigger space map, -EROFS read-only pool. Equal size is a no-op. */
TS_EXTERN int ts_pool_extend(ts_dev *pool, uint64_t new_data_size, ts_error *err);
/* Grow the pool's metadata space to `new_metadata_size` bytes (a multiple of
 * 4 KiB, at most 255 x 16320 blocks of 4 KiB, about 15.9 GiB, as dm-thin),
 * growing the metadata layer first as ts_pool_extend does the data layer.
 * The change is committed and the pool leaves out-of-metadata-space mode. A
 * metadata layer found bigger when the pool opens is taken in the same way.
 * -EINVAL smaller than now, unaligned or too large, -EROFS read-only pool.
 * Equal size is a no-op. */
TS_EXTERN int ts_pool_extend_metadata(ts_dev *pool, uint64_t new_metadata_size, ts_error *err);

/* Compare-and-swap the pool's userspace transaction id: -EINVAL (and no
 * change) when the stored id is not `current_id`. */
TS_EXTERN int ts_pool_set_transaction_id(ts_dev *pool, uint64_t current_id, uint64_t new_id,
                                         ts_error *err);

/* Keep a read-only copy of the current metadata for `thin_dump -m` on a live
 * pool. -EBUSY one is already held. */
TS_EXTERN int ts_pool_reserve_metadata_snap(ts_dev *pool, ts_error *err);

/* Drop the copy kept by ts_pool_reserve_metadata_snap. -EINVAL none held. */
TS_EXTERN int ts_pool_release_metadata_snap(ts_dev *pool, ts_error *err);

/* One TS_HAVE_<CALL> per call above, for code that builds against
 * several versions of the library (#ifdef TS_HAVE_TS_POOL_CHECK). */
#define TS_HAVE_TS_POOL_CREATE_THIN 1
#define TS_HAVE_TS_POOL_CREATE_SNAP 1
#define TS_HAVE_TS_POOL_DELETE_THIN 1
#define TS_HAVE_TS_POOL_LIST_THINS 1
#define TS_HAVE_TS_POOL_GET_STATUS 1
#define TS_HAVE_TS_POOL_EXTEND 1
#define TS_HAVE_TS_POOL_EXTEND_METADATA 1
#define TS_HAVE_TS_POOL_SET_TRANSACTION_ID 1
#define TS_HAVE_TS_POOL_RESERVE_METADATA_SNAP 1
#define TS_HAVE_TS_POOL_RELEASE_METADATA_SNAP 1

#ifdef __cplusplus
}
#endif
#endif
