/* kernel: a Linux block device (or a regular file) passed straight through.
 *
 *   { "type": "kernel", "path": "/dev/loop0", "read_only": false, "direct": false,
 *     "sysfs_root": "/sys", "provision": "auto" }
 *
 * Limits come from the device's request queue in sysfs (the files in
 * <sysfs_root>/dev/block/MAJ:MIN/queue), the size from BLKGETSIZE64 and the
 * read-only state from BLKROGET. Each non-data op runs down a "ladder" of
 * kernel paths decided at open; a path the kernel answers with EOPNOTSUPP at
 * run time is dropped for this device (once, atomically) and the request goes
 * on with the next rung, so a kernel that advertises more than it does costs
 * one failed call, not one per request. `status` reports every ladder.
 *
 * PROVISION, best first:
 *   1. provision_max_bytes > 0 (kernels carrying the REQ_OP_PROVISION series):
 *      fallocate(mode 0) on the block device, which those kernels turn into
 *      REQ_OP_PROVISION;
 *   2. a regular file: fallocate(KEEP_SIZE);
 *   3. Linux >= 6.17 and write_zeroes_unmap_max_bytes > 0:
 *      fallocate(FALLOC_FL_WRITE_ZEROES), zeroes the device may implement by
 *      unmapping;
 *   4. provision "emulate": BLKZEROOUT (files: zero writes); otherwise
 *      unsupported.
 * Rungs 3 and 4 zero the range, so they take only PROVISIONs flagged
 * TS_IO_MAY_ZERO (the caller holds nothing there: a thin pool's new blocks);
 * any other PROVISION answers -EOPNOTSUPP rather than lose data.
 */
#include <libthinstack/layer.h>

#include "backends/fileio.h"
#include "core/claim.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <unistd.h>

/* Linux 6.17 uapi; Debian 12's headers (6.1) predate it. */
#ifndef FALLOC_FL_WRITE_ZEROES
#define FALLOC_FL_WRITE_ZEROES 0x80
#endif

/* The kernel calls a request can take. */
enum kpath {
  KP_NONE,         /* unsupported: -EOPNOTSUPP without a call */
  KP_PROVISION,    /* fallocate(0) on a block device = REQ_OP_PROVISION (patched kernels) */
  KP_ALLOCATE,     /* fallocate(KEEP_SIZE) on a file */
  KP_WRITE_ZEROES, /* fallocate(FALLOC_FL_WRITE_ZEROES), Linux >= 6.17 */
  KP_ZEROOUT,      /* ioctl(BLKZEROOUT): write-zeroes without unmap, else zero pages */
  KP_ZERO_WRITE,   /* pwrite of zero buffers (files) */
  KP_DISCARD,      /* ioctl(BLKDISCARD) */
  KP_PUNCH,        /* fallocate(PUNCH_HOLE|KEEP_SIZE) */
  KP_ZERO_RANGE,   /* fallocate(ZERO_RANGE|KEEP_SIZE) */
  KP_COUNT
};

static const char *const kpath_name[KP_COUNT] = {
  [KP_NONE] = "unsupported",
  [KP_PROVISION] = "fallocate(0)",
  [KP_ALLOCATE] = "fallocate(KEEP_SIZE)",
  [KP_WRITE_ZEROES] = "fallocate(WRITE_ZEROES)",
  [KP_ZEROOUT] = "ioctl(BLKZEROOUT)",
  [KP_ZERO_WRITE] = "pwrite(zeroes)",
  [KP_DISCARD] = "ioctl(BLKDISCARD)",
  [KP_PUNCH] = "fallocate(PUNCH_HOLE|KEEP_SIZE)",
  [KP_ZERO_RANGE] = "fallocate(ZERO_RANGE|KEEP_SIZE)",
};

enum { LD_PROVISION, LD_DISCARD, LD_ZERO_UNMAP, LD_ZERO_KEEP, LD_COUNT };
static const char *const ladder_name[LD_COUNT] = { "provision", "discard",
                                                   "write_zeroes_may_unmap", "write_zeroes" };

#define LADDER_MAX 5

struct downgrade {
  int from, to;  /* enum kpath */
  int err;       /* the kernel's answer (negative errno, normalised) */
};

/* The paths one op may take, best first, always ending with KP_NONE. `cur`
 * only moves forward, by compare-and-swap, so concurrent failures of the same
 * rung record one downgrade. */
struct ladder {
  int rung[LADDER_MAX];
  int nrungs;
  _Atomic int cur;
  struct downgrade log[LADDER_MAX];  /* under kernel_layer.lock */
  int nlog;
};

/* The queue attributes we read; absent ones (older kernels, fake trees) stay 0. */
enum {
  QA_LBS, QA_PBS, QA_IO_MIN, QA_IO_OPT, QA_MAX_HW_KB, QA_MAX_KB, QA_DISCARD_GRAN,
  QA_DISCARD_MAX, QA_WZ_MAX, QA_WZ_UNMAP_MAX, QA_PROVISION_MAX, QA_ROTATIONAL, QA_FUA,
  QA_COUNT
};
static const char *const qa_name[QA_COUNT] = {
  "logical_block_size", "physical_block_size", "minimum_io_size", "optimal_io_size",
  "max_hw_sectors_kb", "max_sectors_kb", "discard_granularity", "discard_max_bytes",
  "write_zeroes_max_bytes", "write_zeroes_unmap_max_bytes", "provision_max_bytes",
  "rotational", "fua",
};

struct kernel_layer {
  struct ts__fio io;     /* the data path over fd, set up once lbs is known */
  int fd;
  bool bdev;             /* a block device (else a regular file) */
  bool read_only;
  bool direct;
  const char *ro_reason;
  char *path;
  char *queue_dir;       /* block devices: the sysfs queue folder read */
  unsigned maj, min;
  uint64_t size;
  uint32_t lbs;          /* logical block size: request and O_DIRECT alignment */
  uint32_t alloc_unit;   /* files: st_blksize */
  uint64_t qa[QA_COUNT];
  bool qa_present[QA_COUNT];
  char write_cache[32];
  char release[65];      /* uname -r */
  int policy;            /* POLICY_* */
  char *decision;        /* why the provision ladder is what it is */
  struct ladder ld[LD_COUNT];
  _Atomic uint64_t calls[KP_COUNT];
  _Atomic uint64_t unsupported[KP_COUNT];
  _Atomic uint64_t refused_zeroing; /* PROVISIONs without TS_IO_MAY_ZERO on a zeroing rung */
  pthread_mutex_t lock;  /* ladder logs */
};

enum { POLICY_AUTO, POLICY_EMULATE, POLICY_OFF };
static const char *const policy_name[] = { "auto", "emulate", "off" };

static const ts_param kernel_params[] = {
  { "path", TS_PARAM_PATH, TS_PARAM_REQUIRED, NULL, NULL, "a block device or a regular file" },
  { "read_only", TS_PARAM_BOOL, 0, NULL, NULL, "open read-only" },
  { "direct", TS_PARAM_BOOL, 0, NULL, NULL,
    "bypass the page cache (O_DIRECT); only unaligned buffer pieces are copied" },
  { "sysfs_root", TS_PARAM_PATH, 0, NULL, NULL,
    "where sysfs is mounted (default /sys); queue limits are read from it" },
  { "provision", TS_PARAM_ENUM, 0, "auto|emulate|off", NULL,
    "PROVISION: best kernel path or unsupported; emulate = fall back to BLKZEROOUT; off" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */

/* Map the kernel's answers to the library's convention. Only answers that
 * mean "this operation does not exist here" become -EOPNOTSUPP:
 *  - EOPNOTSUPP/ENOTSUP: blkdev_fallocate() for a mode it lacks (mode 0 and
 *    KEEP_SIZE on kernels without REQ_OP_PROVISION, WRITE_ZEROES when
 *    write_zeroes_unmap_max_bytes is 0), blk_ioctl_discard() when the queue
 *    has no discard, a zeroout with NOFALLBACK on a device without
 *    write-zeroes, and file systems without the fallocate mode;
 *  - ENOSYS: a kernel without the fallocate system call;
 *  - ENOTTY (ioctls only): blkdev_ioctl() answers ENOTTY when neither the
 *    block layer nor the driver knows the command.
 * EINVAL is ambiguous and handled in einval_means_unsupported(). */
static int norm_err(int e, bool ioctl_call)
{
  if (e == EOPNOTSUPP || e == ENOTSUP || e == ENOSYS || (ioctl_call && e == ENOTTY))
    return -EOPNOTSUPP;
  return -e;
}

/* ------------------------------------------------------------------------ */
/* sysfs                                                                     */

static bool read_attr(const char *dir, const char *name, char *buf, size_t len)
{
  char p[4096];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  int fd = open(p, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return false;
  ssize_t n;
  do
    n = read(fd, buf, len - 1);
  while (n < 0 && errno == EINTR);
  close(fd);
  if (n < 0)
    return false;
  buf[n] = '\0';
  while (n > 0 && isspace((unsigned char)buf[n - 1]))
    buf[--n] = '\0';
  return true;
}

/* Fill k->qa from queue_dir; returns the name of an unreadable required
 * attribute or a malformed one, NULL when all is well. */
static const char *read_queue(struct kernel_layer *k)
{
  char buf[64];
  for (int i = 0; i < QA_COUNT; i++) {
    if (!read_attr(k->queue_dir, qa_name[i], buf, sizeof buf)) {
      if (i == QA_LBS)
        return qa_name[i];
      continue;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(buf, &end, 10);
    if (errno || end == buf || *end)
      return qa_name[i];
    k->qa[i] = v;
    k->qa_present[i] = true;
  }
  if (!read_attr(k->queue_dir, "write_cache", k->write_cache, sizeof k->write_cache))
    k->write_cache[0] = '\0';
  return NULL;
}

static bool dir_exists(const char *p)
{
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* <root>/dev/block/M:N/queue; a partition has no queue of its own and uses
 * its disk's, one folder up. */
static int find_queue(ts_layer *l, struct kernel_layer *k, const char *root, ts_error *err)
{
  char p[4096];
  snprintf(p, sizeof p, "%s/dev/block/%u:%u/queue", root, k->maj, k->min);
  if (!dir_exists(p)) {
    snprintf(p, sizeof p, "%s/dev/block/%u:%u/../queue", root, k->maj, k->min);
    if (!dir_exists(p))
      return ts_layer_error(l, err, -ENOENT, "sysfs_root",
                            "%s/dev/block/%u:%u/queue does not exist: is sysfs mounted at %s?",
                            root, k->maj, k->min, root);
  }
  k->queue_dir = strdup(p);
  return k->queue_dir ? 0 : ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
}

/* True when the running kernel is at least major.minor. */
static bool kernel_at_least(const char *release, int major, int minor)
{
  int a = 0, b = 0;
  if (sscanf(release, "%d.%d", &a, &b) != 2)
    return false;
  return a > major || (a == major && b >= minor);
}

/* ------------------------------------------------------------------------ */
/* Ladders                                                                   */

static void ladder_set(struct ladder *ld, const int *rungs, int n)
{
  ld->nrungs = 0;
  for (int i = 0; i < n && ld->nrungs < LADDER_MAX - 1; i++)
    ld->rung[ld->nrungs++] = rungs[i];
  ld->rung[ld->nrungs++] = KP_NONE;
  atomic_store(&ld->cur, 0);
}

static int ladder_initial(const struct ladder *ld) { return ld->rung[0]; }

/* Drop rung `idx` after the kernel answered `e`; returns the index now in use
 * (another thread may have moved on already). */
static int ladder_drop(struct kernel_layer *k, struct ladder *ld, int idx, int e)
{
  int expected = idx;
  if (idx + 1 < ld->nrungs && atomic_compare_exchange_strong(&ld->cur, &expected, idx + 1)) {
    pthread_mutex_lock(&k->lock);
    if (ld->nlog < LADDER_MAX)
      ld->log[ld->nlog++] = (struct downgrade){ ld->rung[idx], ld->rung[idx + 1], e };
    pthread_mutex_unlock(&k->lock);
    return idx + 1;
  }
  return atomic_load(&ld->cur);
}

/* ------------------------------------------------------------------------ */
/* Data path                                                                 */

static int kernel_rw(struct kernel_layer *k, bool write, const struct iovec *iov, int iovcnt,
                     uint64_t off, uint64_t len, int rwf)
{
  return ts__fio_rw(&k->io, write, iov, iovcnt, off, len, rwf);
}

static int sync_dev(struct kernel_layer *k) { return ts__fio_sync(&k->io); }

static int do_fallocate(struct kernel_layer *k, int mode, uint64_t off, uint64_t len)
{
  return ts__fio_fallocate(&k->io, mode, off, len);
}

static int do_range_ioctl(struct kernel_layer *k, unsigned long cmd, uint64_t off, uint64_t len)
{
  uint64_t range[2] = { off, len };
  while (ioctl(k->fd, cmd, range) != 0)
    if (errno != EINTR)
      return norm_err(errno, true);
  return 0;
}

static int zero_writes(struct kernel_layer *k, uint64_t off, uint64_t len)
{
  while (len) {
    size_t n = len < TS_ZERO_BUF_SIZE ? (size_t)len : TS_ZERO_BUF_SIZE;
    struct iovec v = { (void *)ts_zero_buffer(), n };
    int r = kernel_rw(k, true, &v, 1, off, n, 0);
    if (r)
      return r;
    off += n;
    len -= n;
  }
  return 0;
}

static int run_path(struct kernel_layer *k, int path, uint64_t off, uint64_t len)
{
  switch (path) {
  case KP_PROVISION: return do_fallocate(k, 0, off, len);
  case KP_ALLOCATE: return do_fallocate(k, FALLOC_FL_KEEP_SIZE, off, len);
  case KP_WRITE_ZEROES: return do_fallocate(k, FALLOC_FL_WRITE_ZEROES, off, len);
  case KP_ZEROOUT: return do_range_ioctl(k, BLKZEROOUT, off, len);
  case KP_ZERO_WRITE: return zero_writes(k, off, len);
  case KP_DISCARD: return do_range_ioctl(k, BLKDISCARD, off, len);
  case KP_PUNCH: return do_fallocate(k, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
  case KP_ZERO_RANGE: return do_fallocate(k, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, off, len);
  default: return -EOPNOTSUPP;
  }
}

/* EINVAL from BLKDISCARD, BLKZEROOUT or fallocate on a block device. The
 * block layer's own EINVALs there (block/ioctl.c blk_ioctl_discard/zeroout,
 * block/fops.c blkdev_fallocate) all mean a range that is misaligned to the
 * logical block size or past the end. When the device confirms the range is
 * neither, the EINVAL came from below: the loop driver hands its backing file
 * system's fallocate() EINVAL back unchanged, treating it like EOPNOTSUPP
 * (drivers/block/loop.c lo_fallocate), and a file system answers EINVAL for
 * some modes it lacks. Then it means "unsupported". Files are not judged:
 * their fallocate EINVALs are documented as argument errors. */
static bool einval_means_unsupported(struct kernel_layer *k, uint64_t off, uint64_t len)
{
  uint64_t size = 0;
  int lbs = 0;
  if (!k->bdev || ioctl(k->fd, BLKGETSIZE64, &size) != 0 || ioctl(k->fd, BLKSSZGET, &lbs) != 0)
    return false;
  return lbs > 0 && (off | len) % (uint64_t)lbs == 0 && off + len <= size;
}

static bool path_zeroes(int path)
{
  return path == KP_WRITE_ZEROES || path == KP_ZEROOUT || path == KP_ZERO_WRITE;
}

/* Run a request down its ladder: an -EOPNOTSUPP drops that rung for good and
 * the same request tries the next one; the bottom rung answers -EOPNOTSUPP
 * without a call. With `keep_data` a rung that zeroes the range answers
 * -EOPNOTSUPP instead, and stays for requests that allow it. */
static int run_ladder(struct kernel_layer *k, struct ladder *ld, uint64_t off, uint64_t len,
                      bool keep_data)
{
  int idx = atomic_load(&ld->cur);
  for (;;) {
    int path = ld->rung[idx];
    if (path == KP_NONE)
      return -EOPNOTSUPP;
    if (keep_data && path_zeroes(path)) {
      atomic_fetch_add_explicit(&k->refused_zeroing, 1, memory_order_relaxed);
      return -EOPNOTSUPP;
    }
    atomic_fetch_add_explicit(&k->calls[path], 1, memory_order_relaxed);
    int r = run_path(k, path, off, len), answer = r;
    if (r == -EINVAL && path != KP_ZERO_WRITE && einval_means_unsupported(k, off, len))
      r = -EOPNOTSUPP;
    else if (r != -EOPNOTSUPP)
      return r;
    atomic_fetch_add_explicit(&k->unsupported[path], 1, memory_order_relaxed);
    idx = ladder_drop(k, ld, idx, answer); /* the log shows what the kernel said */
  }
}

/* BLKZEROOUT (like fallocate ZERO_RANGE on a block device) writes zero pages
 * when the queue has no write-zeroes at the time of the call; there is no
 * user interface for "zero without unmapping, never fall back". So for a
 * NOFALLBACK request look at the queue again: the limit may have dropped to 0
 * since open (an admin, or a SCSI disk that turned WRITE SAME off after a
 * failure). Files never fall back: their file systems answer EOPNOTSUPP. */
static bool still_zeroes_natively(struct kernel_layer *k)
{
  char buf[64];
  if (!k->bdev)
    return true;
  if (!read_attr(k->queue_dir, "write_zeroes_max_bytes", buf, sizeof buf))
    return false;
  return strtoull(buf, NULL, 10) > 0;
}

static int kernel_submit(ts_layer *l, const ts_io *io)
{
  struct kernel_layer *k = ts_layer_priv(l);
  int r;
  switch (io->op) {
  case TS_OP_READ:
    return kernel_rw(k, false, io->iov, io->iovcnt, io->offset, io->length, 0);
  case TS_OP_WRITE:
    return kernel_rw(k, true, io->iov, io->iovcnt, io->offset, io->length,
                     (io->flags & TS_IO_FUA) ? RWF_DSYNC : 0);
  case TS_OP_FLUSH:
    return sync_dev(k);
  case TS_OP_DISCARD:
    return run_ladder(k, &k->ld[LD_DISCARD], io->offset, io->length, false);
  case TS_OP_WRITE_ZEROES:
    if (io->flags & TS_IO_MAY_UNMAP)
      /* fallocate(PUNCH_HOLE) never writes zero pages: blkdev_fallocate()
       * asks for it with BLKDEV_ZERO_NOFALLBACK, file systems punch. */
      r = run_ladder(k, &k->ld[LD_ZERO_UNMAP], io->offset, io->length, false);
    else if ((io->flags & TS_IO_NOFALLBACK) && !still_zeroes_natively(k))
      r = -EOPNOTSUPP;
    else
      r = run_ladder(k, &k->ld[LD_ZERO_KEEP], io->offset, io->length, false);
    if (!r && (io->flags & TS_IO_FUA))
      r = sync_dev(k);
    return r;
  case TS_OP_PROVISION:
    /* Rungs 3 and 4 reserve by zeroing: only for a caller that holds
     * nothing in the range (a thin pool's new blocks). */
    return run_ladder(k, &k->ld[LD_PROVISION], io->offset, io->length,
                      !(io->flags & TS_IO_MAY_ZERO));
  default:
    return -EOPNOTSUPP;
  }
}

/* ------------------------------------------------------------------------ */
/* Block status (files only; a block device is all data)                     */

static int kernel_block_status(ts_layer *l, uint64_t off, uint64_t len, ts_extent_list *out)
{
  struct kernel_layer *k = ts_layer_priv(l);
  if (k->bdev)
    return ts_extent_list_add(out, off, len, 0);
  return ts__fio_block_status(&k->io, off, len, out);
}

/* ------------------------------------------------------------------------ */
/* Open                                                                      */

/* Decide every ladder from what the device says. */
static int plan(ts_layer *l, struct kernel_layer *k, ts_error *err)
{
  int p[LADDER_MAX], n = 0;
  char why[512];

  if (!k->bdev) {
    if (k->policy != POLICY_OFF)
      p[n++] = KP_ALLOCATE;
    if (k->policy == POLICY_EMULATE)
      p[n++] = KP_ZERO_WRITE;
    snprintf(why, sizeof why, "regular file: %s",
             k->policy == POLICY_OFF ? "provision is off" : "fallocate(KEEP_SIZE) allocates the range");
    ladder_set(&k->ld[LD_PROVISION], p, n);
    ladder_set(&k->ld[LD_DISCARD], (const int[]){ KP_PUNCH }, 1);
    ladder_set(&k->ld[LD_ZERO_UNMAP], (const int[]){ KP_PUNCH }, 1);
    ladder_set(&k->ld[LD_ZERO_KEEP], (const int[]){ KP_ZERO_RANGE }, 1);
  } else {
    bool prov = k->qa_present[QA_PROVISION_MAX] && k->qa[QA_PROVISION_MAX] > 0;
    bool wzu = k->qa[QA_WZ_UNMAP_MAX] > 0 && kernel_at_least(k->release, 6, 17);
    if (k->policy != POLICY_OFF) {
      if (prov)
        p[n++] = KP_PROVISION;
      if (wzu)
        p[n++] = KP_WRITE_ZEROES;
      if (k->policy == POLICY_EMULATE)
        p[n++] = KP_ZEROOUT;
    }
    char pm[48], wz[48];
    if (k->qa_present[QA_PROVISION_MAX])
      snprintf(pm, sizeof pm, "= %llu", (unsigned long long)k->qa[QA_PROVISION_MAX]);
    else
      snprintf(pm, sizeof pm, "absent (no REQ_OP_PROVISION)");
    if (k->qa_present[QA_WZ_UNMAP_MAX])
      snprintf(wz, sizeof wz, "= %llu", (unsigned long long)k->qa[QA_WZ_UNMAP_MAX]);
    else
      snprintf(wz, sizeof wz, "absent (Linux < 6.17)");
    snprintf(why, sizeof why,
             "provision_max_bytes %s; write_zeroes_unmap_max_bytes %s; Linux %s; policy %s -> %s",
             pm, wz, k->release, policy_name[k->policy], kpath_name[n ? p[0] : KP_NONE]);
    ladder_set(&k->ld[LD_PROVISION], p, n);
    bool dis = k->qa[QA_DISCARD_MAX] > 0, wzs = k->qa[QA_WZ_MAX] > 0;
    ladder_set(&k->ld[LD_DISCARD], (const int[]){ KP_DISCARD }, dis);
    /* PUNCH_HOLE on a block device is a write-zeroes that may unmap and never
     * falls back to writing zeroes; BLKZEROOUT is one that must not unmap.
     * Without native write-zeroes both would cost zero writes, which the core
     * does (or refuses under NOFALLBACK). */
    ladder_set(&k->ld[LD_ZERO_UNMAP], (const int[]){ KP_PUNCH }, wzs);
    ladder_set(&k->ld[LD_ZERO_KEEP], (const int[]){ KP_ZEROOUT }, wzs);
  }
  k->decision = strdup(why);
  return k->decision ? 0 : ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
}

static int open_device(ts_layer *l, struct kernel_layer *k, bool ro, ts_error *err)
{
  struct stat st;
  if (stat(k->path, &st) != 0) {
    int e = errno;
    return ts_layer_error(l, err, -e, "path", "cannot use %s: %s", k->path, strerror(e));
  }
  if (!S_ISBLK(st.st_mode) && !S_ISREG(st.st_mode))
    return ts_layer_error(l, err, -ENOTBLK, "path", "%s is neither a block device nor a regular file",
                          k->path);
  k->bdev = S_ISBLK(st.st_mode);
  /* Before O_EXCL, so a second layer of this stack on the device is named
   * as such rather than as "in use". */
  int r = ts__claim_dup(l, &st, k->path, err);
  if (r)
    return r;
  /* A block device we write is opened exclusively: the kernel then refuses
   * it while it is mounted or held by device-mapper, md or another stack.
   * The OFD lock taken below on the device node keeps readers and writers
   * of other stacks apart as for files. */
  int flags = O_CLOEXEC | (k->direct ? O_DIRECT : 0);
  int fd = open(k->path, flags | (ro ? O_RDONLY : O_RDWR) | (k->bdev && !ro ? O_EXCL : 0));
  if (fd < 0 && errno == EROFS && !ro) {
    fd = open(k->path, flags | O_RDONLY);
    if (fd >= 0)
      k->ro_reason = "the kernel refused opening it for writing (EROFS)";
  }
  if (fd < 0) {
    int e = errno;
    if (e == EBUSY) {
      char who[256];
      ts__lock_holders(&st, who, sizeof who, NULL);
      if (strcmp(who, "another process") != 0)
        return ts_layer_error(l, err, -e, NULL, "%s is in use by %s", k->path, who);
      return ts_layer_error(l, err, -e, "path",
                            "%s is in use (mounted, or held by device-mapper, md or another "
                            "exclusive opener)", k->path);
    }
    if (e == EINVAL && k->direct)
      /* open(2): EINVAL when the file system does not support O_DIRECT. */
      return ts_layer_error(l, err, -e, "direct", "%s does not support O_DIRECT", k->path);
    return ts_layer_error(l, err, -e, "path", "cannot open %s%s: %s", k->path,
                          ro ? "" : " for writing", strerror(e));
  }
  k->fd = fd;
  if ((r = ts_layer_claim_fd(l, fd, k->path, !ro && !k->ro_reason, err)))
    return r;
  if (ro && !k->ro_reason)
    k->ro_reason = "read_only was requested";
  if (fstat(fd, &st) != 0)
    return ts_layer_error(l, err, -errno, "path", "cannot stat %s: %s", k->path, strerror(errno));
  if (k->bdev) {
    k->maj = major(st.st_rdev);
    k->min = minor(st.st_rdev);
    if (ioctl(fd, BLKGETSIZE64, &k->size) != 0)
      return ts_layer_error(l, err, -errno, "path", "BLKGETSIZE64 on %s: %s", k->path,
                            strerror(errno));
    int devro = 0;
    if (ioctl(fd, BLKROGET, &devro) == 0 && devro && !ro)
      k->ro_reason = "the device is read-only (BLKROGET)";
  } else {
    k->size = (uint64_t)st.st_size;
    k->alloc_unit = st.st_blksize > 0 ? (uint32_t)st.st_blksize : 4096;
  }
  k->read_only = k->ro_reason != NULL;
  return 0;
}

static int check_queue(ts_layer *l, struct kernel_layer *k, const char *root, ts_error *err)
{
  int r = find_queue(l, k, root, err);
  if (r)
    return r;
  const char *bad = read_queue(k);
  if (bad)
    return ts_layer_error(l, err, -EINVAL, "sysfs_root", "%s/%s is missing or not a number",
                          k->queue_dir, bad);
  uint64_t lbs = k->qa[QA_LBS];
  if (lbs < 512 || lbs > 65536 || (lbs & (lbs - 1)))
    return ts_layer_error(l, err, -EINVAL, "sysfs_root",
                          "%s/logical_block_size is %llu, not a power of two from 512 to 64K",
                          k->queue_dir, (unsigned long long)lbs);
  /* The device itself knows its block size: a sysfs tree that disagrees
   * belongs to another device. */
  int ioc = 0;
  if (ioctl(k->fd, BLKSSZGET, &ioc) == 0 && (uint64_t)ioc != lbs)
    return ts_layer_error(l, err, -EINVAL, "sysfs_root",
                          "%s says a logical block size of %llu, but %s uses %d", k->queue_dir,
                          (unsigned long long)lbs, k->path, ioc);
  k->lbs = (uint32_t)lbs;
  return 0;
}

static void kernel_close(ts_layer *l);

static int kernel_open(ts_layer *l, const json_t *params, ts_error *err)
{
  bool ro = ts_param_bool(params, "read_only", false) || ts_layer_force_read_only(l);
  const char *pol = ts_param_string(params, "provision", "auto");
  struct kernel_layer *k = calloc(1, sizeof *k);
  if (!k)
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  k->fd = -1;
  pthread_mutex_init(&k->lock, NULL);
  ts_layer_set_priv(l, k);
  k->direct = ts_param_bool(params, "direct", false);
  k->policy = strcmp(pol, "emulate") == 0 ? POLICY_EMULATE
              : strcmp(pol, "off") == 0   ? POLICY_OFF
                                          : POLICY_AUTO;
  struct utsname u;
  snprintf(k->release, sizeof k->release, "%s", uname(&u) == 0 ? u.release : "unknown");

  char *root = NULL;
  int r;
  k->path = ts_layer_path(l, ts_param_string(params, "path", ""));
  root = ts_layer_path(l, ts_param_string(params, "sysfs_root", "/sys"));
  if (!k->path || !root) {
    r = ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
    goto out;
  }
  if ((r = open_device(l, k, ro, err)))
    goto out;
  if (k->bdev) {
    if ((r = check_queue(l, k, root, err)))
      goto out;
  } else {
    k->lbs = k->direct ? 4096 : 512;
    if (k->size == 0 || k->size % k->lbs) {
      r = ts_layer_error(l, err, -EINVAL, "path", "%s is %llu bytes, not a non-zero multiple of %u",
                         k->path, (unsigned long long)k->size, k->lbs);
      goto out;
    }
  }
  ts__fio_init(&k->io, k->fd, k->direct, k->lbs, !k->bdev);
  r = plan(l, k, err);
out:
  free(root);
  if (r)
    kernel_close(l); /* the core closes only layers that opened */
  return r;
}

static void kernel_close(ts_layer *l)
{
  struct kernel_layer *k = ts_layer_priv(l);
  if (!k)
    return;
  if (k->fd >= 0)
    close(k->fd);
  pthread_mutex_destroy(&k->lock);
  free(k->path);
  free(k->queue_dir);
  free(k->decision);
  free(k);
  ts_layer_set_priv(l, NULL);
}

static int kernel_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  struct kernel_layer *k = ts_layer_priv(l);
  lim->size = k->size;
  lim->logical_block_size = k->lbs;
  lim->read_only = k->read_only;
  lim->fua = true; /* pwritev2(RWF_DSYNC) */
  int prov = ladder_initial(&k->ld[LD_PROVISION]);
  if (!k->bdev) {
    ts__fio_file_limits(lim, k->size, k->lbs, k->alloc_unit);
    lim->max_provision_bytes = prov == KP_NONE ? 0 : UINT64_MAX;
    return 0;
  }
  const uint64_t *q = k->qa;
  uint32_t pbs = q[QA_PBS] >= k->lbs && q[QA_PBS] <= 65536 ? (uint32_t)q[QA_PBS] : k->lbs;
  lim->physical_block_size = pbs;
  lim->io_min = q[QA_IO_MIN] >= k->lbs && q[QA_IO_MIN] <= UINT32_MAX ? (uint32_t)q[QA_IO_MIN] : k->lbs;
  lim->io_opt = q[QA_IO_OPT] % k->lbs == 0 && q[QA_IO_OPT] <= UINT32_MAX ? (uint32_t)q[QA_IO_OPT] : 0;
  uint64_t kb = q[QA_MAX_KB] ? q[QA_MAX_KB] : q[QA_MAX_HW_KB];
  lim->max_io_bytes = kb * 1024 >= k->lbs ? kb * 1024 : 0;
  if (ladder_initial(&k->ld[LD_DISCARD]) != KP_NONE) {
    lim->max_discard_bytes = q[QA_DISCARD_MAX];
    uint64_t g = q[QA_DISCARD_GRAN];
    lim->discard_granularity = g >= k->lbs && g <= UINT32_MAX ? (uint32_t)g : k->lbs;
  }
  /* The kernel does not promise that discarded blocks read as zeroes
   * (BLKDISCARDZEROES is always 0). */
  lim->discard_zeroes = false;
  lim->max_write_zeroes_bytes = ladder_initial(&k->ld[LD_ZERO_KEEP]) != KP_NONE ? q[QA_WZ_MAX] : 0;
  lim->write_zeroes_unmap = q[QA_WZ_UNMAP_MAX] > 0;
  switch (prov) {
  case KP_PROVISION: lim->max_provision_bytes = q[QA_PROVISION_MAX]; break;
  case KP_WRITE_ZEROES: lim->max_provision_bytes = q[QA_WZ_UNMAP_MAX]; break;
  case KP_ZEROOUT: lim->max_provision_bytes = UINT64_MAX; break;
  default: lim->max_provision_bytes = 0; break;
  }
  if (lim->max_provision_bytes && lim->max_provision_bytes < k->lbs)
    return ts_layer_error(l, err, -EINVAL, "sysfs_root",
                          "%s: the provision limit %llu is smaller than a block", k->queue_dir,
                          (unsigned long long)lim->max_provision_bytes);
  /* No kernel reports a provisioning unit; the discard unit is the closest
   * (a loop device's backing file allocates in those). */
  lim->provision_granularity = lim->discard_granularity > pbs ? lim->discard_granularity : pbs;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Status                                                                    */

static json_t *ladder_json(struct kernel_layer *k, const struct ladder *ld)
{
  json_t *o = json_object();
  json_t *rungs = json_array();
  for (int i = 0; i < ld->nrungs; i++)
    json_array_append_new(rungs, json_string(kpath_name[ld->rung[i]]));
  json_object_set_new(o, "path", json_string(kpath_name[ld->rung[atomic_load(&ld->cur)]]));
  json_object_set_new(o, "initial", json_string(kpath_name[ld->rung[0]]));
  json_object_set_new(o, "ladder", rungs);
  json_t *dg = json_array();
  pthread_mutex_lock(&k->lock);
  for (int i = 0; i < ld->nlog; i++) {
    json_t *d = json_object();
    json_object_set_new(d, "from", json_string(kpath_name[ld->log[i].from]));
    json_object_set_new(d, "to", json_string(kpath_name[ld->log[i].to]));
    json_object_set_new(d, "error", json_string(ts_err_name(ld->log[i].err)));
    json_array_append_new(dg, d);
  }
  pthread_mutex_unlock(&k->lock);
  json_object_set_new(o, "downgrades", dg);
  return o;
}

static int kernel_status(ts_layer *l, json_t *out)
{
  struct kernel_layer *k = ts_layer_priv(l);
  char dev[32];
  json_object_set_new(out, "path", json_string(k->path));
  json_object_set_new(out, "kind", json_string(k->bdev ? "block device" : "regular file"));
  json_object_set_new(out, "kernel", json_string(k->release));
  json_object_set_new(out, "direct", json_boolean(k->direct));
  json_object_set_new(out, "read_only", json_boolean(k->read_only));
  json_object_set_new(out, "bounced_bytes", json_integer((json_int_t)atomic_load(&k->io.bounced)));
  if (k->ro_reason)
    json_object_set_new(out, "read_only_reason", json_string(k->ro_reason));
  json_object_set_new(out, "provision_policy", json_string(policy_name[k->policy]));
  json_object_set_new(out, "provision_decision", json_string(k->decision));
  if (k->bdev) {
    snprintf(dev, sizeof dev, "%u:%u", k->maj, k->min);
    json_object_set_new(out, "device", json_string(dev));
    json_object_set_new(out, "queue", json_string(k->queue_dir));
    json_t *q = json_object();
    for (int i = 0; i < QA_COUNT; i++)
      json_object_set_new(q, qa_name[i],
                          k->qa_present[i] ? json_integer((json_int_t)k->qa[i]) : json_null());
    json_object_set_new(q, "write_cache", k->write_cache[0] ? json_string(k->write_cache) : json_null());
    json_object_set_new(out, "sysfs", q);
  } else {
    struct stat st;
    if (fstat(k->fd, &st) == 0)
      json_object_set_new(out, "allocated_bytes", json_integer((json_int_t)st.st_blocks * 512));
  }
  json_t *ops = json_object();
  for (int i = 0; i < LD_COUNT; i++)
    json_object_set_new(ops, ladder_name[i], ladder_json(k, &k->ld[i]));
  json_object_set_new(ops, "flush", json_string("fdatasync"));
  json_object_set_new(ops, "fua", json_string("pwritev2(RWF_DSYNC)"));
  json_object_set_new(out, "ops", ops);
  json_t *calls = json_object();
  for (int p = 1; p < KP_COUNT; p++) {
    uint64_t c = atomic_load(&k->calls[p]);
    if (!c)
      continue;
    json_t *o = json_object();
    json_object_set_new(o, "calls", json_integer((json_int_t)c));
    json_object_set_new(o, "unsupported", json_integer((json_int_t)atomic_load(&k->unsupported[p])));
    json_object_set_new(calls, kpath_name[p], o);
  }
  json_object_set_new(out, "kernel_calls", calls);
  json_object_set_new(out, "provision_refused_would_zero",
                      json_integer((json_int_t)atomic_load(&k->refused_zeroing)));
  return 0;
}

/* A whole block device is a one-line dm-linear table; a file needs a loop
 * device first, which dmsetup cannot express. */
static char *kernel_dm_table(ts_layer *l)
{
  struct kernel_layer *k = ts_layer_priv(l);
  if (!k->bdev)
    return NULL;
  char *s = NULL;
  if (asprintf(&s, "0 %llu linear %u:%u 0", (unsigned long long)(k->size / 512), k->maj, k->min) < 0)
    return NULL;
  return s;
}

const ts_layer_type ts__kernel_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "kernel",
  .summary = "a Linux block device (or file) passed through; limits from sysfs, provision ladder",
  .params = kernel_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = kernel_open,
  .close = kernel_close,
  .limits = kernel_limits,
  .submit = kernel_submit,
  .block_status = kernel_block_status,
  .status = kernel_status,
  .dm_table = kernel_dm_table,
};
