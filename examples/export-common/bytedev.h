/* bytedev: byte-granular access to a libthinstack device, shared by the FUSE
 * export and the nbdkit plugin.
 *
 * A device only takes requests aligned to its logical block size; FUSE
 * (direct_io) and NBD clients send arbitrary byte ranges. bytedev turns them
 * into aligned requests: unaligned reads read the covering blocks into
 * scratch space around the caller's buffer, unaligned writes and zeroing do
 * read-modify-write of the partial edge blocks. Every request that changes
 * data holds a lock on its block-aligned range for its whole duration, so two
 * writers of different bytes in one block never undo each other's update,
 * and a read-modify-write never mixes with a concurrent write of that block.
 * Reads take no lock: they see each block either before or after a write.
 *
 * Every function returns 0 or a negative errno; ranges must lie inside the
 * device (callers clip at the end of the device themselves). All are
 * thread-safe.
 */
#ifndef THINSTACK_BYTEDEV_H
#define THINSTACK_BYTEDEV_H

#include <libthinstack/thinstack.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

struct bd_range;

typedef struct bd_dev {
  ts_dev *dev;
  uint64_t size;             /* at attach; ts_dev_size(dev) is the live one */
  uint32_t lbs;              /* logical block size */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct bd_range *held;     /* block ranges locked by writers */
} bd_dev;

/* Attach to `dev` (which must outlive the bd_dev). Returns 0 or -errno. */
int bd_init(bd_dev *b, ts_dev *dev);
/* Release the lock state; no request may be in flight. */
void bd_fini(bd_dev *b);

/* Read `len` bytes at `off`. */
int bd_read(bd_dev *b, void *buf, size_t len, uint64_t off);
/* Write `len` bytes at `off`; flags: TS_IO_FUA. */
int bd_write(bd_dev *b, const void *buf, size_t len, uint64_t off, uint32_t flags);
/* Make the range read as zeroes: whole blocks with WRITE_ZEROES and `flags`
 * (TS_IO_MAY_UNMAP, TS_IO_NOFALLBACK, TS_IO_FUA), partial edge blocks by
 * read-modify-write. */
int bd_zero(bd_dev *b, uint64_t off, uint64_t len, uint32_t flags);
/* Punch a hole: the range reads as zeroes afterwards and space inside it is
 * released where the device can. Where discards read back as zeroes, the
 * whole discard_granularity units inside the range are DISCARDed (only those
 * are sure to read as zeroes) and the rest is zeroed with WRITE_ZEROES and
 * MAY_UNMAP; otherwise all of it is. Partial edge blocks by read-modify-write.
 * -EOPNOTSUPP when the device can neither discard nor zero natively. */
int bd_punch(bd_dev *b, uint64_t off, uint64_t len);
/* Advisory discard of the whole blocks inside the range (NBD trim): partial
 * edge blocks are left as they are. */
int bd_trim(bd_dev *b, uint64_t off, uint64_t len);
/* Provision the blocks covering the range (partial edges round outwards:
 * provisioning more than asked never changes data). */
int bd_provision(bd_dev *b, uint64_t off, uint64_t len);
/* Block status of the blocks covering the range, appended to `out`; the
 * first extent starts at or before `off`. */
int bd_extents(bd_dev *b, uint64_t off, uint64_t len, ts_extent_list *out);

#endif
