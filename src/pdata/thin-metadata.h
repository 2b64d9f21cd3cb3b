/* Thin-pool metadata: the Linux dm-thin on-disk format (metadata version 2).
 *
 * A struct tmd is one open pool metadata device. It keeps the pool's mapping
 * trees (device id -> virtual block -> data block), the device details and
 * the data and metadata space maps, all copy-on-write: changes accumulate in
 * a transaction that tmd_commit() makes durable atomically, and a crash at
 * any point leaves the last committed transaction intact. Pools written here
 * pass thin-provisioning-tools' thin_check and can be read by thin_dump and
 * the kernel; pools written by thin_restore or the kernel open here.
 *
 * Locking contract (the caller's job, normally the thin-pool layer's
 * pool-wide rwlock):
 *   - READ functions (marked [R]) may run concurrently with each other;
 *   - WRITE functions (marked [W]) need exclusive access: no other call of any
 *     kind on the same struct tmd may run at the same time.
 * The library adds the internal locking needed for concurrent readers (its
 * block cache) and nothing more.
 *
 * Errors: every int function returns 0 or a negative errno:
 *   -ENOMEM  allocation failed
 *   -EIO, .. the metadata device failed (passed up from the bdev)
 *   -EILSEQ  a metadata block failed validation (checksum, block number, magic)
 *   -ENOSPC  out of data space (data functions) or metadata space
 *   -EROFS   a [W] function on a pool opened read-only, or after a failed commit
 *   -ENODEV  no thin device with that id
 *   -EEXIST  a thin device with that id already exists
 *   -ENODATA nothing mapped (lookup), or nothing there
 *   -EINVAL  bad argument (documented per function)
 * A [W] function that fails leaves the in-memory transaction consistent
 * (no half-done change is visible and nothing is lost that was reported
 * done), except where a function says otherwise; the caller may tmd_abort()
 * to return to the last commit. A failed tmd_commit() makes the handle
 * read-only (-EROFS for [W]) until tmd_abort() succeeds: the on-disk
 * metadata is then still the previous commit.
 *
 * Units: data blocks (data_block_size sectors each), virtual blocks of a
 * thin device (same size), metadata blocks of 4 KiB. Thin device ids are
 * 24-bit (0 .. TMD_MAX_DEV_ID) like the kernel's.
 */
#ifndef PDATA_THIN_METADATA_H
#define PDATA_THIN_METADATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "pdata/bdev.h"

#define TMD_MAX_DEV_ID ((1u << 24) - 1)
/* Mapping values carry a 40-bit data block number and a 24-bit time. */
#define TMD_MAX_DATA_BLOCKS (1ull << 40)
/* Largest metadata device the format can describe (255 bitmaps); blocks past
 * it are ignored, as the kernel does. */
#define TMD_MAX_METADATA_BLOCKS (255ull * 16320ull)
/* Data block size limits in 512-byte sectors (64 KiB .. 1 GiB, multiple of 64 KiB). */
#define TMD_MIN_DATA_BLOCK_SIZE 128u
#define TMD_MAX_DATA_BLOCK_SIZE 2097152u

struct tmd;

/* Options for tmd_format / tmd_open. Zero-initialise; every field has a default. */
struct tmd_config {
  /* Metadata blocks kept in the block cache (4 KiB each). 0 = default
   * (TMD_DEFAULT_CACHE_BLOCKS = 4096, i.e. 16 MiB). Dirty blocks are written
   * early when the cache is full, so a transaction may exceed the cache. */
  uint32_t cache_blocks;
  /* Open read-only: no function ever writes to the device; [W] functions
   * return -EROFS. Implied when the bdev is read-only. */
  bool read_only;
};
#define TMD_DEFAULT_CACHE_BLOCKS 4096u

/* Details of one thin device, as stored in the details tree. */
struct tmd_dev_info {
  uint64_t mapped_blocks;   /* number of mapped virtual blocks */
  uint64_t transaction_id;  /* pool transaction id when the device was created */
  uint32_t creation_time;   /* pool time when created */
  uint32_t snapshotted_time;/* pool time of the last snapshot of, or as, this device */
};

/* One run of a range lookup: virtual [vbegin, vbegin+len) maps to data
 * [dbegin, dbegin+len). shared = the kernel's hint "may be shared with a
 * snapshot" (device snapshotted_time > mapping time), equal for the whole run. */
struct tmd_run {
  uint64_t vbegin;
  uint64_t len;
  uint64_t dbegin;
  bool shared;
};

/* ------------------------------------------------------------------------ */
/* Open, format, transactions                                               */

/* Write a fresh, empty pool to `bdev` and open it: metadata size = the whole
 * bdev (clamped to TMD_MAX_METADATA_BLOCKS), data space = nr_data_blocks
 * blocks of data_block_size sectors, transaction id 0, time 0, no devices.
 * The new pool is committed before returning. The struct tmd keeps a copy of
 * *bdev (not the pointer) and does not close it: tmd_close() leaves the bdev
 * open for the caller to pd_bdev_close().
 * -EINVAL: data_block_size outside 128..2097152 or not a multiple of 128,
 *          nr_data_blocks > TMD_MAX_DATA_BLOCKS, bdev smaller than 64 blocks
 *          (256 KiB) or read-only. Message in err (may be NULL). */
int tmd_format(const struct pd_bdev *bdev, uint32_t data_block_size, uint64_t nr_data_blocks,
               const struct tmd_config *cfg, struct tmd **out, ts_error *err);

/* Open existing metadata. Validates the superblock (checksum, block number,
 * magic, version == 2, no unknown incompat or compat_ro feature flags,
 * metadata block size, data block size, metadata size <= bdev size) and the
 * space-map structures it loads; on any failure returns -EINVAL (bad fields),
 * -EILSEQ (checksum/magic) or -EIO with a one-line reason in err, and NEVER
 * writes to the device. Opening itself never writes even when it succeeds;
 * the first write happens at tmd_commit() or tmd_set_needs_check(). An
 * all-zero block 0 ("unformatted") gives -ENODATA. */
int tmd_open(const struct pd_bdev *bdev, const struct tmd_config *cfg, struct tmd **out,
             ts_error *err);

/* Free the handle. Uncommitted changes are dropped (call tmd_commit() first
 * to keep them). Does not close the bdev. NULL is a no-op. */
void tmd_close(struct tmd *md);

/* [W] Make the current transaction durable: write every changed block, flush,
 * write the superblock, flush. On success the new state is the "last commit".
 * On failure the device still holds the previous commit; the handle turns
 * read-only until tmd_abort() (see header comment). Cheap when nothing changed. */
int tmd_commit(struct tmd *md);

/* [W] tmd_commit() beside the caller's flush of the data device, started
 * before the call (the new mappings may name data blocks only that flush
 * makes durable): every block but the superblock is written and flushed,
 * then `wait` is called, exactly once and whatever happened before, to
 * collect that flush's result; only when both succeeded is the superblock
 * written and flushed. A non-zero result of `wait` (with the metadata
 * written) is returned as it is, and nothing is committed: the superblock
 * on disk is untouched, the handle stays writable and the transaction open,
 * so it can be committed again later. Metadata errors are tmd_commit()'s. */
int tmd_commit_beside(struct tmd *md, int (*wait)(void *arg), void *arg);

/* [W] Drop every change since the last commit and reload that state.
 * Reports blocks of neither data nor metadata: blocks allocated since the
 * last commit are simply free again. */
int tmd_abort(struct tmd *md);

/* [R] The NEEDS_CHECK superblock flag (set when metadata must be checked). */
bool tmd_needs_check(const struct tmd *md);

/* [W] Set or clear NEEDS_CHECK and write it to the superblock at once
 * (rewriting block 0 of the last commit with just that flag changed, flushed);
 * works even when the handle went read-only after a failed commit, as the
 * kernel does when a metadata operation fails. -EROFS only when opened
 * read-only. */
int tmd_set_needs_check(struct tmd *md, bool on);

/* [R] Whether the handle accepts [W] calls (false after a failed commit or
 * when opened read-only). */
bool tmd_is_writable(const struct tmd *md);

/* ------------------------------------------------------------------------ */
/* Pool-wide values                                                         */

/* [R] Sectors per data block (fixed at format). */
uint32_t tmd_data_block_size(const struct tmd *md);

/* [R] Userspace transaction id (superblock trans_id) of the current state. */
uint64_t tmd_transaction_id(const struct tmd *md);

/* [W] Compare-and-swap like the kernel's "set_transaction_id <cur> <new>":
 * -EINVAL when `current` differs from the stored id. Durable at commit. */
int tmd_set_transaction_id(struct tmd *md, uint64_t current, uint64_t next);

/* [R] The pool's snapshot time (incremented by each tmd_create_snap). */
uint32_t tmd_time(const struct tmd *md);

/* ------------------------------------------------------------------------ */
/* Thin devices                                                             */

/* [W] New empty thin device. -EEXIST if it exists, -EINVAL if dev_id >
 * TMD_MAX_DEV_ID, -ENOSPC if metadata space runs out. Details: mapped 0,
 * transaction = current id, creation = snapshotted = current time. */
int tmd_create_thin(struct tmd *md, uint32_t dev_id);

/* [W] New device `dev_id` as a snapshot of `origin_id`, in O(1): the two
 * share the origin's mapping tree (its root's metadata count is bumped), the
 * pool time is incremented, and both devices' snapshotted_time become the new
 * time, so every existing mapping of either now reads as shared. Data ref
 * counts are unchanged (they change lazily when a shared leaf is copied).
 * -ENODEV no origin, -EEXIST dev_id in use, -EINVAL bad id. The caller must
 * have quiesced writes to the origin (the same rule as the kernel). */
int tmd_create_snap(struct tmd *md, uint32_t dev_id, uint32_t origin_id);

/* [W] Delete a device: its mapping tree reference is dropped, so blocks
 * only it used are released (metadata nodes freed, data blocks decremented;
 * data blocks reaching 0 become free at the next commit). -ENODEV if absent.
 * Freed data blocks are not reported: the caller discards the whole device
 * range with tmd_remove_range() first if it wants passdown. */
int tmd_delete(struct tmd *md, uint32_t dev_id);

/* [R] Whether the device exists. */
bool tmd_dev_exists(const struct tmd *md, uint32_t dev_id);

/* [R] A value that changes whenever a lookup of the device's mappings may
 * answer differently: an insert or removal (even a failed one), a snapshot
 * of the device, the device's creation or a reload (tmd_abort). Values are
 * never reused for a device id, so a cache of lookups tagged with the value
 * is valid while it is unchanged. 0 when there is no such device. */
uint64_t tmd_map_gen(const struct tmd *md, uint32_t dev_id);

/* [R] Number of thin devices, and their ids in ascending order: fills up to
 * `max` ids into `ids` (may be NULL when max is 0) and returns the total
 * count (which may exceed max; call again with a bigger array). */
size_t tmd_list_devices(const struct tmd *md, uint32_t *ids, size_t max);

/* [R] Details of a device (current, uncommitted state). -ENODEV if absent. */
int tmd_dev_info(const struct tmd *md, uint32_t dev_id, struct tmd_dev_info *out);

/* [R] Highest mapped virtual block of a device. -ENODATA when none is mapped,
 * -ENODEV if absent. */
int tmd_highest_mapped(struct tmd *md, uint32_t dev_id, uint64_t *vblock);

/* ------------------------------------------------------------------------ */
/* Mappings                                                                 */

/* [R] Look one virtual block up: *dblock and *shared (may be NULL) on
 * success; -ENODATA if unmapped; -ENODEV if no such device. */
int tmd_lookup(struct tmd *md, uint32_t dev_id, uint64_t vblock, uint64_t *dblock, bool *shared);

/* Callback for tmd_lookup_range: return 0 to continue, non-zero to stop (that
 * value is then returned by tmd_lookup_range). */
typedef int (*tmd_run_fn)(void *arg, const struct tmd_run *run);

/* [R] Report the mapped runs inside [vbegin, vend) in ascending order, each a
 * maximal run of consecutive virtual blocks mapped to consecutive data blocks
 * with the same shared flag (clipped to the range). Unmapped gaps are not
 * reported. Walks only the leaves that overlap the range. -ENODEV if absent,
 * -EINVAL if vbegin > vend. */
int tmd_lookup_range(struct tmd *md, uint32_t dev_id, uint64_t vbegin, uint64_t vend,
                     tmd_run_fn fn, void *arg);

/* [W] Map vblock -> dblock stamped with the current pool time. The caller
 * hands over one reference on dblock (normally the one tmd_alloc_data()
 * returned); if vblock was mapped, the old data block loses one reference.
 * Updates the device's mapped_blocks. On error nothing changed and the caller
 * still owns its reference (release it with tmd_data_dec()). */
int tmd_insert(struct tmd *md, uint32_t dev_id, uint64_t vblock, uint64_t dblock);

/* [W] Bulk form: map vbegin+i -> dbegin+i for i < count, handing over one
 * reference on each data block of the run (e.g. from tmd_alloc_data_run()).
 * Fills leaves directly (no per-block descent) and updates counts by range;
 * this is the provisioning fast path. Already-mapped blocks in the range are
 * replaced (old data block -1). On -ENOSPC (metadata) or another error, a
 * prefix of the run may have been inserted: *done (may be NULL) tells how
 * many blocks from vbegin are mapped and now own their references; the
 * caller still owns the references of the rest. */
int tmd_insert_run(struct tmd *md, uint32_t dev_id, uint64_t vbegin, uint64_t count,
                   uint64_t dbegin, uint64_t *done);

/* Callback for tmd_remove_range: data blocks [dbegin, dbegin+len) just lost
 * their last mapping reference (see TMD_REMOVE_HOLD). Return 0 to continue.
 * A non-zero return stops further reports, but the removal itself always
 * completes (a half-removed leaf would leave counts wrong); tmd_remove_range
 * then returns that value. */
typedef int (*tmd_freed_fn)(void *arg, uint64_t dbegin, uint64_t len);

/* Keep one temporary reference on each data block whose count would drop to
 * zero, instead of freeing it, so the caller can pass a discard down before
 * the block can be reused; the caller then calls tmd_data_dec_run() on each
 * reported run. Without the flag the blocks are freed at once. Note: a block
 * freed in a transaction is never handed out again before the next
 * tmd_commit(), so without HOLD a caller that issues its discards before
 * committing is equally safe. */
#define TMD_REMOVE_HOLD 1u

/* [W] Unmap every mapped block of [vbegin, vend). Each removed mapping drops
 * one reference on its data block; runs of data blocks that became free (or
 * are held, with TMD_REMOVE_HOLD) are reported through fn (may be NULL) in
 * ascending virtual order, coalesced when contiguous. *removed (may be NULL)
 * = number of mappings removed. -ENODEV if absent, -EINVAL if vbegin > vend.
 * Works leaf by leaf, not block by block. */
int tmd_remove_range(struct tmd *md, uint32_t dev_id, uint64_t vbegin, uint64_t vend,
                     unsigned flags, tmd_freed_fn fn, void *arg, uint64_t *removed);

/* ------------------------------------------------------------------------ */
/* Comparing devices (delta.c)                                              */

enum tmd_delta_kind {
  TMD_DELTA_SAME,
  TMD_DELTA_DIFFERENT,
  TMD_DELTA_LEFT_ONLY,
  TMD_DELTA_RIGHT_ONLY
};

/* Virtual [vbegin, vbegin+len) of both devices: mapped to data [left, left+len)
 * in the left one and [right, right+len) in the right one (0 for the side
 * that has no mapping). */
struct tmd_delta {
  enum tmd_delta_kind kind;
  uint64_t vbegin, len;
  uint64_t left, right;
};

/* Return 0 to continue, non-zero to stop (tmd_delta returns it). */
typedef int (*tmd_delta_fn)(void *arg, const struct tmd_delta *d);

/* Report SAME runs too: every shared subtree is then read. */
#define TMD_DELTA_WITH_SAME 1u

/* [R] Compare the mappings of two devices in ascending virtual order, as
 * thin_delta does (by data block; mapping times are ignored): each run is
 * maximal in kind and in both data ranges. Without TMD_DELTA_WITH_SAME
 * equal mappings are not reported and a node block found in both trees is
 * not read at all. *nodes_read (may be NULL) = tree nodes read. -ENODEV no
 * such device, -EILSEQ a tree that is not a mapping tree. */
int tmd_delta(struct tmd *md, uint32_t left_id, uint32_t right_id, unsigned flags, tmd_delta_fn fn,
              void *arg, uint64_t *nodes_read);

/* [R] For each of the n devices of `ids`, its mapped blocks whose data block
 * no other mapping of the pool uses (exclusive[i]) and those it shares with
 * another mapping of any device (shared[i]), as thin_ls counts them: walks
 * every device's mappings, with 2 bits of memory per data block. -ENODEV
 * an id with no device, -EILSEQ a mapping past the data space. */
int tmd_sharing(struct tmd *md, const uint32_t *ids, size_t n, uint64_t *exclusive,
                uint64_t *shared);

/* ------------------------------------------------------------------------ */
/* Data space                                                               */

/* [W] Allocate one free data block (count 0 -> 1), preferring the block
 * after the last allocation. Blocks freed in the current transaction are
 * not reused before the next commit (crash safety). -ENOSPC when none. */
int tmd_alloc_data(struct tmd *md, uint64_t *dblock);

/* [W] Allocate a contiguous run of up to `max` free data blocks (each count
 * 0 -> 1): returns the first block in *dbegin and the length in *len
 * (1 <= *len <= max), the longest run starting at the first free block found
 * from the allocation cursor. -ENOSPC when none is free; -EINVAL if max == 0. */
int tmd_alloc_data_run(struct tmd *md, uint64_t max, uint64_t *dbegin, uint64_t *len);

/* [W] Add / drop one reference on each block of [dbegin, dbegin+len). dec of
 * a free block returns -EINVAL and changes nothing. */
int tmd_data_inc_run(struct tmd *md, uint64_t dbegin, uint64_t len);
int tmd_data_dec_run(struct tmd *md, uint64_t dbegin, uint64_t len);
static inline int tmd_data_dec(struct tmd *md, uint64_t b) { return tmd_data_dec_run(md, b, 1); }

/* [R] Reference count of a data block (0 = free). -EINVAL if out of range. */
int tmd_data_ref_count(const struct tmd *md, uint64_t dblock, uint32_t *count);

/* [R] Data space: total blocks and free blocks (count 0) in the current state. */
uint64_t tmd_data_nr_blocks(const struct tmd *md);
uint64_t tmd_data_nr_free(const struct tmd *md);

/* [W] Grow the data space map to new_nr_blocks (the data device grew).
 * Shrinking is refused with -EINVAL (as the kernel does); equal is a no-op.
 * -ENOSPC if the metadata device is too small for the new bitmaps. */
int tmd_resize_data(struct tmd *md, uint64_t new_nr_blocks);

/* [W] Grow the metadata space map to new_nr_blocks 4 KiB blocks (the
 * metadata device grew; the caller has made it that large). New bitmaps
 * are placed at the next commit. -EINVAL when shrinking or beyond
 * TMD_MAX_METADATA_BLOCKS, 0 when equal. */
int tmd_resize_metadata(struct tmd *md, uint64_t new_nr_blocks);

/* [R] Metadata space: total 4 KiB blocks and blocks in use (current state). */
uint64_t tmd_metadata_nr_blocks(const struct tmd *md);
uint64_t tmd_metadata_nr_used(const struct tmd *md);
/* [W] Metadata blocks written to the device since the handle was opened
 * (blocks of the open transaction evicted from the cache, and commits). */
uint64_t tmd_blocks_written(struct tmd *md);
/* [W] Write the open transaction's dirty metadata blocks (all but the
 * superblock) to the device now, without flushing it: nothing names them
 * until the next commit, which then writes only what changed since. A
 * write error is returned and fails that commit too. */
int tmd_write_back(struct tmd *md);

/* ------------------------------------------------------------------------ */
/* Metadata snapshot (for thin_dump -m on a live pool)                      */

/* [W] Commit, then keep a read-only copy of the superblock and of the trees
 * it names (the "held root"), and commit again; thin_dump -m dumps it.
 * -EBUSY if one is already held. */
int tmd_reserve_metadata_snap(struct tmd *md);

/* [W] Drop the held copy (its tree references are released). Durable at the
 * next commit. -EINVAL if none is held. */
int tmd_release_metadata_snap(struct tmd *md);

/* [R] Block number of the held copy, 0 if none. */
uint64_t tmd_metadata_snap(const struct tmd *md);

/* ------------------------------------------------------------------------ */
/* Checker, dump and restore (offline tools; see check.c and xml.c)         */

/* Severity of a finding: errors make the metadata "damaged"; warnings do not. */
enum pd_check_level { PD_CHECK_WARNING, PD_CHECK_ERROR };

/* Called once per finding with a one-line message (no trailing newline). */
typedef void (*pd_check_report_fn)(void *arg, enum pd_check_level level, const char *msg);

struct pd_check_result {
  uint64_t errors, warnings;
  uint64_t nr_devices, nr_mappings;
  uint64_t metadata_blocks_used, data_blocks_used;
  uint64_t transaction_id;
};

/* Check the metadata on `bdev` without writing to it: superblock fields,
 * every block's checksum and block number, btree structure (sorted keys,
 * fill, value sizes, parent keys), device ids present in both top-level
 * trees, mapped_blocks vs the mappings found, mapping times vs pool time,
 * mappings past the end of the data device, and the metadata AND data
 * reference counts recomputed from the trees vs both space maps (including
 * the held metadata snapshot when present). Findings go to `report` (may be
 * NULL). Returns 0 when it could run (look at res->errors), or -errno when
 * the device could not be read at all. */
int pd_check(const struct pd_bdev *bdev, pd_check_report_fn report, void *arg,
             struct pd_check_result *res);

/* Write the pool (or, with use_metadata_snap, the held metadata snapshot) as
 * thin_dump 0.9.0 XML to `out`. Read-only. -EINVAL + message in err if the
 * metadata is unreadable or no snapshot is held. */
int pd_dump_xml(const struct pd_bdev *bdev, bool use_metadata_snap, FILE *out, ts_error *err);

/* Build fresh metadata on `bdev` (whole device) from thin_dump-format XML
 * read from `in` and commit it. The whole XML is checked first, with the
 * rules pd_check applies (ids, ranges, mapping and snapshot times not after
 * the pool time): -EINVAL with "line N: reason" in err, and the device is
 * not touched. The pool is then built beside any pool that opens on the
 * device (in blocks it does not use) and its superblock written last, so a
 * failure (-ENOSPC, -EIO) still leaves the old pool. `in` is read twice: a
 * stream that cannot seek is copied to a temporary file first. */
int pd_restore_xml(const struct pd_bdev *bdev, FILE *in, ts_error *err);

/* What pd_repair_xml salvaged. */
struct pd_repair_result {
  uint64_t devices, mappings;       /* written to the XML */
  uint64_t nodes_damaged;           /* tree nodes unreadable or invalid, passed over */
  uint64_t mappings_dropped;        /* past the data device, or a repeated block */
  uint64_t devices_without_details; /* found in the mapping tree only: details zeroed */
};

/* Read what can be read of the pool on `bdev` (never writing to it) and
 * write it to `out` as thin_dump XML that pd_restore_xml accepts: see
 * repair.c for what is recovered and what is not. -EILSEQ/-EINVAL with a
 * message when the superblock is unreadable, -ENOMEM, -EIO. */
int pd_repair_xml(const struct pd_bdev *bdev, FILE *out, struct pd_repair_result *res,
                  ts_error *err);

#endif
