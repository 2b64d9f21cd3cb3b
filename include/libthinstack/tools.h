/* libthinstack: offline tools on files and block devices that no stack has
 * open: thin-pool metadata (check, dump, restore, as thin_check, thin_dump
 * and thin_restore do) and dm-log-writes logs (list and replay).
 *
 * Include <libthinstack/thinstack.h> rather than this header.
 *
 * Conventions for every function here:
 *  - Paths name a regular file or a block device. Pool metadata is locked
 *    as a stack's layer would own it (shared to read, exclusive to write):
 *    -EBUSY with the holder named in `err` when a stack or another process
 *    has it. Logs and replay targets are opened without locks.
 *  - Errors: a negative errno with a message in `err` (may be NULL) naming
 *    the file and, where there is one, the line, entry or byte offset.
 *  - Thread-safe: the calls share no state; two calls on the same file are
 *    ordered by its lock.
 */
#ifndef LIBTHINSTACK_TOOLS_H
#define LIBTHINSTACK_TOOLS_H

#ifndef LIBTHINSTACK_THINSTACK_H
#error "include <libthinstack/thinstack.h>, not <libthinstack/tools.h>"
#endif

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Flags for ts_pool_check and ts_pool_dump. */
#define TS_POOL_FORCE_SHARE (1u << 0)   /* read without the shared lock (a writer may hold it) */
#define TS_POOL_METADATA_SNAP (1u << 1) /* ts_pool_dump: the held metadata snapshot */

/* What ts_pool_check found. A caller-allocated struct of fixed size: new
 * fields come only with a new soname (docs/abi.md). */
typedef struct ts_pool_check_result {
  uint64_t errors, warnings;                       /* findings of each kind */
  uint64_t nr_devices, nr_mappings;                /* volumes, and their mapped blocks */
  uint64_t metadata_blocks_used, data_blocks_used; /* blocks in use, per space */
  uint64_t transaction_id;                         /* the superblock's */
  bool stale; /* TS_POOL_FORCE_SHARE and a writer held the file: may be inconsistent */
} ts_pool_check_result;

/* Called once per finding with a one-line message (no newline). */
typedef void (*ts_pool_check_fn)(void *arg, bool error, const char *msg);

/* Check dm-thin pool metadata (format version 2) on `metadata_path` without
 * writing to it: superblock, checksums, btree structure, device trees, and
 * every reference count recomputed from the trees. Returns 0 when the check
 * ran (damage is counted in res->errors, each finding passed to `report`,
 * which may be NULL), or -errno when the file cannot be read. */
TS_EXTERN int ts_pool_check(const char *metadata_path, unsigned flags, ts_pool_check_fn report,
                            void *arg, ts_pool_check_result *res, ts_error *err);

/* Write the pool's metadata (or with TS_POOL_METADATA_SNAP its held
 * snapshot) to `out` as thin_dump 0.9.0 XML. Read-only. *stale (may be NULL)
 * as in ts_pool_check_result. -EINVAL unreadable metadata or no snapshot
 * held, -EIO, -ENOMEM. */
TS_EXTERN int ts_pool_dump(const char *metadata_path, unsigned flags, FILE *out, bool *stale,
                           ts_error *err);

/* Build fresh metadata on `metadata_path` (which must exist; its size is
 * the metadata size) from thin_dump-format XML read from `in`. The whole
 * XML is checked first (-EINVAL, "line N: reason", the file untouched);
 * the new pool is built beside the old one and its superblock written
 * last, so a failure (-ENOSPC, -EIO) leaves the old pool. */
TS_EXTERN int ts_pool_restore(FILE *in, const char *metadata_path, ts_error *err);

/* What ts_pool_repair kept and lost. A caller-allocated struct of fixed
 * size (docs/abi.md). */
typedef struct ts_pool_repair_result {
  uint64_t devices;                 /* volumes in the rebuilt metadata */
  uint64_t mappings;                /* mapped blocks in the rebuilt metadata */
  uint64_t nodes_damaged;           /* tree nodes that could not be read or were invalid */
  uint64_t mappings_dropped;        /* found, but past the data device or repeated */
  uint64_t devices_without_details; /* their creation and snapshot times were lost (now 0) */
} ts_pool_repair_result;

/* Rebuild the pool metadata on `metadata_path` from what can still be read
 * of it, as thin_repair does: every node of the device and mapping trees
 * that reads back valid gives up its entries, unreadable ones are passed
 * over (their mappings are lost), and fresh metadata with space maps
 * recomputed from the mappings kept is written to `output_path` (created
 * with the input's size when missing or smaller), or with NULL (or the same
 * file) in place, built beside the old pool with its superblock written
 * last. The input is only read when output_path is another file. An
 * unreadable superblock is not searched around: -EILSEQ/-EINVAL, nothing
 * written. -EBUSY when a stack holds a file, -EIO, -ENOSPC, -ENOMEM. */
TS_EXTERN int ts_pool_repair(const char *metadata_path, const char *output_path,
                             ts_pool_repair_result *res, ts_error *err);

/* Entry flags of a dm-log-writes log (the kernel's LOG_*_FLAG values). */
#define TS_LOG_FLUSH (1u << 0)
#define TS_LOG_FUA (1u << 1)
#define TS_LOG_DISCARD (1u << 2)
#define TS_LOG_MARK (1u << 3)
#define TS_LOG_METADATA (1u << 4)

/* One entry of a log, as ts_log_replay reads it. */
typedef struct ts_log_entry {
  uint64_t index;      /* from 0 */
  uint64_t offset;     /* byte offset of the entry in the log */
  uint64_t sector;     /* in log sectors (sector_size bytes) */
  uint64_t nr_sectors; /* length in log sectors */
  uint32_t sector_size; /* bytes per log sector */
  uint32_t flags;      /* TS_LOG_* */
  const char *mark;    /* a mark's name, else ""; valid during the call */
} ts_log_entry;

/* Called per entry before it is applied; a non-zero return stops the
 * replay and is returned. */
typedef int (*ts_log_entry_fn)(void *arg, const ts_log_entry *e);

/* Read the dm-log-writes log at `log_path` (as the log-writes layer or the
 * kernel's target writes it) entry by entry, passing each to `fn` (may be
 * NULL) and, when `target_path` is not NULL, applying it there: writes are
 * copied, discards punch holes (zeroes where the target cannot). Stops after
 * `limit` entries, or after the mark named `end_mark` (not NULL: -ENOENT
 * when the log has no such mark). The target is synced before returning.
 * *nr_entries (may be NULL) receives the log's entry count, *applied the
 * entries read. -EINVAL not a log, or an entry past the end of the log or
 * of the target (which must be as large as the logged device), or the
 * target is the log itself; -errno on I/O errors. */
TS_EXTERN int ts_log_replay(const char *log_path, const char *target_path, const char *end_mark,
                            uint64_t limit, ts_log_entry_fn fn, void *arg, uint64_t *nr_entries,
                            uint64_t *applied, ts_error *err);

/* One TS_HAVE_<CALL> per call above, for code that builds against
 * several versions of the library (#ifdef TS_HAVE_TS_POOL_CHECK). */
#define TS_HAVE_TS_POOL_CHECK 1
#define TS_HAVE_TS_POOL_DUMP 1
#define TS_HAVE_TS_POOL_RESTORE 1
#define TS_HAVE_TS_POOL_REPAIR 1
#define TS_HAVE_TS_LOG_REPLAY 1

#ifdef __cplusplus
}
#endif
#endif
