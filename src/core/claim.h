/* Ownership of the files and devices a stack opens (claim.c). Not installed.
 *
 * One rule for every layer: a writer holds an open file description lock
 * (F_OFD_SETLK) for writing on the whole file, a reader one for reading;
 * block devices opened for writing are also opened O_EXCL. The locks belong
 * to the open file description, so they go with the last close of the fd
 * (the stack's close) or with the process; threads and forked children that
 * open the file again conflict like any other process. */
#ifndef TS_CORE_CLAIM_H
#define TS_CORE_CLAIM_H

#include <libthinstack/layer.h>

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>

/* Lock `fd`, opened on `path`: for writing when `write`, else shared. With
 * `force_share` a shared claim takes no lock; *stale (if not NULL) then says
 * whether a writer holds the file. Returns 0; -EBUSY with `why` saying who
 * holds it ("X is in use by pid 4242 (thinstack-fuse)"); or another -errno
 * with `why` filled. A file system that has no locks is used unlocked
 * (0, *unlocked set). */
int ts__lock_fd(int fd, const char *path, bool write, bool force_share, bool *stale,
                bool *unlocked, char *why, size_t len);

/* Describe the processes holding a lock on the inode `st` (a regular file or
 * a device node): "pid 4242 (thinstack-fuse)", several separated by commas,
 * or "another process" when none can be seen (/proc/PID/fdinfo of other
 * users is unreadable). *readers_only is set when every lock seen is a read
 * lock. Scans /proc: only for error paths. */
void ts__lock_holders(const struct stat *st, char *buf, size_t len, bool *readers_only);

/* -EBUSY (message naming both layers) when another layer of l's stack has
 * already claimed the file or device `st` (st_dev/st_ino, or st_rdev for a
 * block device, so symlinks and hard links are seen through). */
int ts__claim_dup(ts_layer *l, const struct stat *st, const char *path, ts_error *err);

#endif
