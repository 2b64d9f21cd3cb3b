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

/* The largest thin volume id (dm-thin's 24-bit device ids). */
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
  uint32_t id;               /* the volume's id in the pool */
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

/* How the mapped blocks of one volume are shared, as thin_ls counts them. */
typedef struct ts_thin_usage {
  uint32_t id;               /* the volume's device id */
  uint64_t mapped_blocks;    /* pool blocks mapped */
  uint64_t exclusive_blocks; /* of those, blocks no other mapping of the pool uses */
  uint64_t shared_blocks;    /* the others: also mapped by another volume (or twice) */
} ts_thin_usage;

/* Fill up to `max` entries of `out` (may be NULL when max is 0) with the
 * usage of the pool's volumes in ascending id order and store their number
 * in *count, as ts_pool_list_thins. Reads every mapping of every volume
 * (the cost grows with the mapped data; 2 bits of memory per pool block)
 * under the pool's read lock, so writers wait and readers go on.
 * Thread-safe. -ENOMEM, -EILSEQ damaged metadata. */
TS_EXTERN int ts_pool_thin_usage(ts_dev *pool, ts_thin_usage *out, size_t max, size_t *count,
                                 ts_error *err);

/* What ts_pool_delta reports for a range of virtual blocks. */
typedef enum ts_delta_kind {
  TS_DELTA_SAME = 0,   /* mapped to the same pool blocks in both volumes */
  TS_DELTA_DIFFERENT,  /* mapped in both, to different pool blocks */
  TS_DELTA_LEFT_ONLY,  /* mapped only in the first volume */
  TS_DELTA_RIGHT_ONLY, /* mapped only in the second volume */
} ts_delta_kind;

/* One range of a delta, in pool blocks (ts_pool_status.block_size bytes):
 * virtual blocks [begin, begin + length) map to pool blocks [left_data,
 * left_data + length) of the first volume and [right_data, ...) of the
 * second (0 on the side without a mapping). */
typedef struct ts_delta_range {
  ts_delta_kind kind;  /* how the two volumes differ over the range */
  uint64_t begin;      /* first virtual block */
  uint64_t length;     /* number of blocks */
  uint64_t left_data;  /* first pool block in the first volume (0 if unmapped there) */
  uint64_t right_data; /* first pool block in the second volume (0 if unmapped there) */
} ts_delta_range;

/* Called per range, in ascending order of `begin`; the range is valid
 * during the call. A non-zero return stops the walk and is returned. */
typedef int (*ts_delta_fn)(void *arg, const ts_delta_range *r);

/* ts_pool_delta: report TS_DELTA_SAME ranges too. */
#define TS_DELTA_WITH_SAME (1u << 0)

/* Compare volume `left` with volume `right` of the pool from the metadata
 * alone, as thin_delta does: every virtual block mapped in either is
 * reported as same, different, left only or right only (blocks mapped in
 * neither are not), each range maximal in its kind with both sides' pool
 * blocks consecutive. Typical use: left = the snapshot of the last backup,
 * right = a newer one; the different and right-only ranges are what to copy,
 * left-only ones were discarded since. Without TS_DELTA_WITH_SAME same ranges
 * are left out and the parts of the two mapping trees that are one block
 * are skipped unread, so the cost is what changed, not the volume's size.
 * *nodes_read (may be NULL) = metadata nodes read. Runs under the pool's
 * read lock: writers wait for it, and `fn` must not call into this pool.
 * Thread-safe otherwise. -ENODEV no such volume, -EILSEQ damaged metadata,
 * or fn's value. */
TS_EXTERN int ts_pool_delta(ts_dev *pool, uint32_t left, uint32_t right, uint32_t flags,
                            ts_delta_fn fn, void *arg, uint64_t *nodes_read, ts_error *err);

/* A pool's state (the dm-thin status line and a little more). */
typedef struct ts_pool_status {
  uint64_t block_size;         /* data block size in bytes */
  uint64_t data_blocks;        /* data space in blocks */
  uint64_t data_used_blocks;   /* data blocks mapped */
  uint64_t data_free_blocks;   /* data blocks free */
  uint64_t metadata_blocks;    /* metadata space in 4 KiB blocks */
  uint64_t metadata_used_blocks; /* metadata blocks in use */
  uint64_t transaction_id;     /* set with ts_pool_set_transaction_id */
  uint64_t held_metadata_root; /* block of the reserved metadata snapshot, 0 if none */
  uint64_t low_water_mark;     /* bytes; 0 = none */
  bool low_water;              /* free data space is below the low water mark */
  bool out_of_data_space;      /* an allocation failed since the last extend */
  bool queue_if_no_space;      /* out_of_space = "queue" (else "error") */
  bool discard_passdown;       /* discards reach the data device */
  bool zero_new_blocks;        /* new blocks are zeroed before first use */
  bool read_only;              /* the pool is read-only (mode "ro") */
  bool needs_check;            /* metadata flagged for checking */
  bool failed;                 /* a metadata commit failed: the pool refuses changes */
  uint32_t nr_thins;           /* volumes in the pool */
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

/* ------------------------------------------------------------------------ */
/* Volumes the pool and the configuration keep together                     */
/*
 * dm-thin metadata knows volumes by id only; their names, sizes and
 * parentage live in the stack configuration as `thin` layers. The calls
 * below change both: first the pool (committed), then the configuration,
 * rewritten atomically (a temporary file in the same folder, fsync, rename,
 * fsync of the folder), with the user's key order kept, under an exclusive
 * lock (flock) on the configuration file so that two commands on one
 * configuration never lose each other's change. The file is the one the
 * stack was opened from (ts_stack_open_file) or the one named with
 * ts_stack_set_config_path; a stack with neither has only its in-memory
 * document updated (what ts_stack_config_json prints).
 *
 * A crash between the pool's commit and the rename leaves one of two states,
 * which the next open reports with the command that mends it:
 *  - a volume in the pool that no layer names (after `thin create` or
 *    `thin snap`): ts_stack_open_file raises the event "volume-not-in-config"
 *    on the pool; ts_volume_list shows it with an empty name;
 *    `thinstack thin delete CONFIG --id ID` deletes it;
 *  - a layer whose volume the pool lacks (after `thin delete`): the open
 *    fails with the layer, pool and id; `thinstack thin delete CONFIG NAME`
 *    removes the layer.
 *
 * Conventions: `stack` is open and holds the pool (the configuration may
 * name more layers than the stack opened: the CLI opens a pool and what lies
 * below it). A layer these calls add is not opened in the running stack: it
 * opens with the next open of the configuration; a volume open in the stack
 * can grow but not shrink or be deleted (-EBUSY). `pool` names a thin-pool
 * layer, or is NULL when the configuration has exactly one. Errors as above;
 * a failed call leaves the pool and the file as they were, except where
 * noted. Calls on one stack may come from several threads (they serialise on
 * the stack), but not while the stack is being closed.
 */

/* ts_volume_create: the lowest free id. */
#define TS_VOLUME_ANY_ID UINT32_MAX
/* create, snapshot: add the layer to "exports". */
#define TS_VOLUME_EXPORT (1u << 0)
/* resize: a shrink first discards the mapped blocks past the new end. */
#define TS_VOLUME_DISCARD_BEYOND (1u << 1)
/* ts_stack_pool_extend: the metadata space rather than the data space. */
#define TS_POOL_EXTEND_METADATA (1u << 0)

/* The configuration file that the lifecycle calls rewrite: the file a stack
 * was opened from, or `path` (made absolute) for a stack opened from a
 * document that stands for part of a file. NULL forgets it. */
TS_EXTERN int ts_stack_set_config_path(ts_stack *stack, const char *path, ts_error *err);
/* The file, absolute; NULL when the stack has none. Lives until the next
 * ts_stack_set_config_path or the close. */
TS_EXTERN const char *ts_stack_config_path(const ts_stack *stack);

/* Create an empty volume `id` (TS_VOLUME_ANY_ID: the lowest free one) of
 * `size` bytes (a multiple of 512) in `pool`, and add the layer
 * { "type": "thin", "pool": POOL, "id": ID, "size": SIZE } named `name`.
 * The id chosen is stored in *id_out (may be NULL). -EEXIST a layer is
 * already called `name` or the id is in use, -EINVAL bad name, size or id,
 * -ENOSPC metadata full. */
TS_EXTERN int ts_volume_create(ts_stack *stack, const char *pool, const char *name, uint64_t size,
                               uint32_t id, uint32_t flags, uint32_t *id_out, ts_error *err);

/* Snapshot the volume of layer `origin` as a new volume (the lowest free
 * id) and add layer `name` with the origin's pool and size and
 * "origin": ORIGIN. An open origin is quiesced for the instant of the
 * snapshot (ts_pool_create_snap). -ENOENT no such layer, -EINVAL it is not a
 * thin layer, -EEXIST `name` is taken. */
TS_EXTERN int ts_volume_snapshot(ts_stack *stack, const char *origin, const char *name,
                                 uint32_t flags, uint32_t *id_out, ts_error *err);

/* Delete the volume of layer `name` from its pool and remove the layer (and
 * its name from "exports"). A layer whose volume the pool no longer has is
 * removed alone (mending an interrupted delete). -EBUSY the volume is open in
 * this stack or another layer stacks on it, -ENOENT no such layer. */
TS_EXTERN int ts_volume_delete(ts_stack *stack, const char *name, ts_error *err);

/* Delete volume `id` of `pool` that no layer names (left by an interrupted
 * create or snapshot). -EBUSY a layer names it (use ts_volume_delete),
 * -ENODEV no such volume. */
TS_EXTERN int ts_volume_delete_id(ts_stack *stack, const char *pool, uint32_t id, ts_error *err);

/* Set the size of layer `name`'s volume to `size` bytes (a multiple of 512).
 * Growing only rewrites "size", and grows the layer live when it is open in
 * this stack (ts_dev_grow: requests to the layer may run meanwhile; each is
 * checked against the old size or the new one). Shrinking is refused with -ENOTEMPTY while mapped
 * blocks lie at or past the new end, unless `flags` has
 * TS_VOLUME_DISCARD_BEYOND, which unmaps them first (committed before the
 * configuration changes); an open volume cannot shrink (-EBUSY). */
TS_EXTERN int ts_volume_resize(ts_stack *stack, const char *name, uint64_t size, uint32_t flags,
                               ts_error *err);

/* Grow the data space (or with TS_POOL_EXTEND_METADATA the metadata space)
 * of `pool` to `new_size` bytes, as ts_pool_extend does, and write the new
 * size of a `file` layer below into the configuration. The file and the
 * configuration move together: the new configuration is written to its
 * temporary file first, then the file layer grows, then the configuration
 * is renamed into place, then the space map grows and commits. A failure
 * before the rename changes nothing; a failure of the commit after it leaves
 * the file and the configuration grown and the pool as it was, which the
 * next open takes in (a pool takes the space of a grown layer at open). */
TS_EXTERN int ts_stack_pool_extend(ts_stack *stack, const char *pool, uint64_t new_size,
                                   uint32_t flags, ts_error *err);

/* One volume as the pool and the configuration see it together. */
typedef struct ts_volume_info {
  char name[256];             /* layer name; "" when no layer names the volume */
  char pool[256];             /* pool layer */
  char origin[256];           /* the layer's "origin"; "" when none */
  uint32_t id;                /* the volume's id in the pool */
  bool in_pool;               /* false: the layer names a volume the pool lacks */
  bool open;                  /* open as a layer of this stack */
  uint64_t size;              /* the layer's size in bytes; 0 without a layer */
  uint64_t mapped_bytes;      /* pool blocks mapped to it, in bytes */
  uint64_t provisioned_bytes; /* of those, bytes reserved but never written
                                 (they read as zeroes on the data layer) */
  uint64_t highest_mapped;    /* one past the last mapped byte; 0 when none */
} ts_volume_info;

/* The volumes of `pool` (NULL: every pool the stack holds) in the pool's id
 * order, then layers whose volume is missing. Fills up to `max` entries and
 * stores the total in *count, as ts_pool_list_thins. */
TS_EXTERN int ts_volume_list(ts_stack *stack, const char *pool, ts_volume_info *out, size_t max,
                             size_t *count, ts_error *err);

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
#define TS_HAVE_TS_STACK_SET_CONFIG_PATH 1
#define TS_HAVE_TS_STACK_CONFIG_PATH 1
#define TS_HAVE_TS_VOLUME_CREATE 1
#define TS_HAVE_TS_VOLUME_SNAPSHOT 1
#define TS_HAVE_TS_VOLUME_DELETE 1
#define TS_HAVE_TS_VOLUME_DELETE_ID 1
#define TS_HAVE_TS_VOLUME_RESIZE 1
#define TS_HAVE_TS_STACK_POOL_EXTEND 1
#define TS_HAVE_TS_VOLUME_LIST 1
#define TS_HAVE_TS_POOL_THIN_USAGE 1
#define TS_HAVE_TS_POOL_DELTA 1

#ifdef __cplusplus
}
#endif
#endif
