/* thinstack-fuse: mount the exported devices of a stack as regular files.
 *
 *   thinstack-fuse CONFIG MOUNTPOINT [-f] [-s] [-d] [-o OPTION[,OPTION...]]
 *
 * The mount point holds one file per export, named after it and as large as
 * the device. Ordinary file calls become requests on the device:
 *   read, write                     READ, WRITE (byte ranges are made aligned
 *                                   by read-modify-write, see bytedev.h)
 *   fsync, fdatasync                FLUSH
 *   fallocate(0), (KEEP_SIZE)       PROVISION
 *   fallocate(PUNCH_HOLE|KEEP_SIZE) DISCARD (or WRITE_ZEROES+MAY_UNMAP where
 *                                   discarded blocks need not read as zeroes)
 *   fallocate(ZERO_RANGE)           WRITE_ZEROES without MAY_UNMAP
 *   lseek(SEEK_DATA / SEEK_HOLE)    BLOCK_STATUS
 *   stat st_blocks, statfs          BLOCK_STATUS (allocated bytes)
 * Files are opened with direct I/O unless "-o page_cache" is given: the device
 * then sees each read and write as the caller issued it, a loop device or a
 * VM on top does not cache the data twice, and fsync has nothing of ours to
 * write back. Unmounting (fusermount3 -u, or SIGTERM/SIGINT to the daemon)
 * flushes and closes the stack. docs/exports.md has the details.
 */
/* libfuse 3.12 replaced the loop configuration struct with an opaque object;
 * older versions (3.8 for lseek) keep the 3.5 interface. */
#ifdef TS_FUSE_LOOP_CFG
#define FUSE_USE_VERSION 312
#else
#define FUSE_USE_VERSION 35
#endif

#include "bytedev.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <fuse_lowlevel.h>
#include <linux/falloc.h>
#include <linux/fuse.h>
#include <semaphore.h>
#include <sys/mman.h>
#include <stddef.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

/* How long a computed allocation figure (st_blocks, statfs) may be reused
 * while nothing changes it. */
#define ALLOC_CACHE_NS 1000000000LL
/* How long the kernel may reuse attributes and names (seconds). */
#define ATTR_TIMEOUT 1.0
/* Block status is asked for the whole rest of the device, in bounded steps
 * (ts_block_status_bounded): a hole of any length is one extent, so an 8E
 * volume costs what it holds, not its size; fixed pieces of 1 GiB made a
 * SEEK_DATA on it 2^33 calls. */

struct export {
  const char *name;            /* the device's node name, lives with the stack */
  ts_dev *dev;
  bd_dev bd;
  bool read_only;
  _Atomic int64_t mtime_ns;    /* last change through this mount */
  _Atomic int64_t alloc_stamp; /* when alloc_bytes was computed; 0 = stale */
  _Atomic uint64_t alloc_bytes;
};

static struct tsf_state {
  const char *config;
  int page_cache;              /* set by fuse_opt_parse, hence int */
  char *control;               /* -o control=PATH */
  int no_control;              /* -o nocontrol */
  int serial_writes;           /* -o serial_writes */
  unsigned threads;            /* -o threads=N */
  unsigned max_background;     /* -o max_background=N; 0: as many as threads */
  unsigned max_read;           /* -o max_read=N (a mount option too); 0: 1 MiB */
  unsigned max_write;          /* -o max_write=N; 0: 1 MiB */
  bool read_only;
  bool show_help;
  ts_stack *stack;
  struct fuse_session *se;
  struct export *ex;
  size_t nex;
  int64_t start_ns;
  uid_t uid;
  gid_t gid;
} g;

static int64_t now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t mono_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The session is ending (SIGTERM, SIGINT, unmount): long walks give up, so
 * the workers can be joined and the stack closed within a second. */
static bool stopping(void) { return g.se && fuse_session_exited(g.se); }

static void changed(struct export *e)
{
  atomic_store(&e->alloc_stamp, 0);
  atomic_store(&e->mtime_ns, now_ns());
}

/* Allocated (not HOLE) bytes of the device, from block status, reused for a
 * second unless something changed it. */
static uint64_t allocated(struct export *e)
{
  int64_t stamp = atomic_load(&e->alloc_stamp), t = mono_ns();
  if (stamp && t - stamp < ALLOC_CACHE_NS)
    return atomic_load(&e->alloc_bytes);
  uint64_t size = ts_dev_size(e->dev), total = 0;
  ts_extent_list l = { 0 };
  for (uint64_t off = 0; off < size;) {
    ts_extent_list_reset(&l);
    if (stopping() || ts_block_status_bounded(e->dev, off, size - off, 0, &l) || l.n == 0) {
      total = size; /* unknown: count everything as allocated */
      break;
    }
    for (size_t i = 0; i < l.n; i++)
      if (!(l.v[i].flags & TS_EXTENT_HOLE))
        total += l.v[i].length;
    off = l.v[l.n - 1].offset + l.v[l.n - 1].length;
  }
  ts_extent_list_free(&l);
  atomic_store(&e->alloc_bytes, total);
  atomic_store(&e->alloc_stamp, t);
  return total;
}

static void set_time(struct timespec *ts, int64_t ns)
{
  ts->tv_sec = (time_t)(ns / 1000000000LL);
  ts->tv_nsec = (long)(ns % 1000000000LL);
}

/* Inode numbers: the root is FUSE_ROOT_ID (1), export i is i + 2. */
static struct export *ino_export(fuse_ino_t ino)
{
  return ino >= 2 && ino - 2 < g.nex ? &g.ex[ino - 2] : NULL;
}

static void tsf_init(void *userdata, struct fuse_conn_info *conn)
{
  /* O_TRUNC arrives with open (which ignores it, as a block device does)
   * instead of as a truncate to size 0, which we would have to refuse. */
  if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
    conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  /* io_uring and libaio direct I/O reaches us as "background" requests
   * (FUSE_CAP_ASYNC_DIO), of which the kernel lets only max_background (12
   * by default) out at once: of fio's 32 requests, 20 waited in the kernel
   * while workers idled. Let out as many as there are workers to take. */
  conn->max_background = g.max_background ? g.max_background : g.threads;
  conn->congestion_threshold = conn->max_background * 3 / 4;
  /* The kernel cuts larger direct I/O into requests of these sizes and has
   * them out at once: smaller ones overlap one's copy with another's I/O.
   * libfuse refuses a max_read here that differs from the mount's. */
  if (g.max_read)
    conn->max_read = g.max_read;
  if (g.max_write && g.max_write < conn->max_write)
    conn->max_write = g.max_write;
}

/* The attributes of inode `ino`; false if there is none. */
static bool fill_attr(fuse_ino_t ino, struct stat *st)
{
  memset(st, 0, sizeof *st);
  st->st_ino = ino;
  st->st_uid = g.uid;
  st->st_gid = g.gid;
  if (ino == FUSE_ROOT_ID) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    set_time(&st->st_mtim, g.start_ns);
    st->st_ctim = st->st_atim = st->st_mtim;
    return true;
  }
  struct export *e = ino_export(ino);
  if (!e)
    return false;
  const ts_limits *lim = ts_dev_limits(e->dev);
  st->st_mode = S_IFREG | (e->read_only ? 0444 : 0644);
  st->st_nlink = 1;
  st->st_size = (off_t)ts_dev_size(e->dev);
  st->st_blksize = lim->io_opt > lim->logical_block_size ? lim->io_opt : lim->logical_block_size;
  st->st_blocks = (blkcnt_t)(allocated(e) / 512);
  set_time(&st->st_mtim, atomic_load(&e->mtime_ns));
  st->st_ctim = st->st_mtim;
  set_time(&st->st_atim, g.start_ns);
  return true;
}

static void tsf_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  struct fuse_entry_param ep = { .attr_timeout = ATTR_TIMEOUT, .entry_timeout = ATTR_TIMEOUT };
  for (size_t i = 0; parent == FUSE_ROOT_ID && i < g.nex; i++)
    if (strcmp(name, g.ex[i].name) == 0) {
      ep.ino = (fuse_ino_t)i + 2;
      fill_attr(ep.ino, &ep.attr);
      fuse_reply_entry(req, &ep);
      return;
    }
  fuse_reply_err(req, parent == FUSE_ROOT_ID ? ENOENT : ENOTDIR);
}

static void tsf_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct stat st;
  if (fill_attr(ino, &st))
    fuse_reply_attr(req, &st, ATTR_TIMEOUT);
  else
    fuse_reply_err(req, ENOENT);
}

static void tsf_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                        struct fuse_file_info *fi)
{
  struct export *e = ino_export(ino);
  struct stat st;
  if (!e && ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  /* Modes follow the devices (read-only or not) and the files belong to
   * whoever mounted the stack. */
  if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
    fuse_reply_err(req, EPERM);
    return;
  }
  /* A device has a fixed size: truncating to it is a no-op, anything else
   * is refused. */
  if ((to_set & FUSE_SET_ATTR_SIZE) && (!e || (uint64_t)attr->st_size != ts_dev_size(e->dev))) {
    fuse_reply_err(req, e ? EINVAL : EISDIR);
    return;
  }
  /* Times are accepted, so that touch and cp -p work, but not stored. */
  fill_attr(ino, &st);
  fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void tsf_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                        struct fuse_file_info *fi)
{
  if (ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  char *buf = malloc(size ? size : 1);
  if (!buf) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  /* Entry i is ".", "..", then export i - 2 (inode i); its successor's
   * offset is i + 1. */
  size_t used = 0;
  for (off_t i = off < 0 ? 0 : off; i < (off_t)g.nex + 2; i++) {
    struct stat st = { .st_ino = i < 2 ? FUSE_ROOT_ID : (fuse_ino_t)i,
                       .st_mode = i < 2 ? S_IFDIR : S_IFREG };
    const char *name = i == 0 ? "." : i == 1 ? ".." : g.ex[i - 2].name;
    size_t n = fuse_add_direntry(req, buf + used, size - used, name, &st, i + 1);
    if (n > size - used)
      break;
    used += n;
  }
  fuse_reply_buf(req, buf, used);
  free(buf);
}

static void tsf_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct export *e = ino_export(ino);
  if (!e) {
    fuse_reply_err(req, ino == FUSE_ROOT_ID ? EISDIR : ENOENT);
    return;
  }
  if ((fi->flags & O_ACCMODE) != O_RDONLY && e->read_only) {
    fuse_reply_err(req, EROFS);
    return;
  }
  /* The reply is built here because libfuse 3.14's fuse_file_info cannot
   * carry FOPEN_PARALLEL_DIRECT_WRITES: without it the kernel (6.2+) takes
   * the inode lock exclusively for every direct write, so writes to one
   * file run one at a time whatever the queue depth. bytedev orders
   * overlapping writes itself. With the page cache, cached pages stay
   * valid: only this mount changes the stack while it is mounted, and the
   * kernel drops cached pages itself on punch and zero. */
  struct fuse_open_out out = { .fh = (uint64_t)(e - g.ex) };
  out.open_flags = g.page_cache
                       ? FOPEN_KEEP_CACHE
                       : FOPEN_DIRECT_IO | (g.serial_writes ? 0 : FOPEN_PARALLEL_DIRECT_WRITES);
  fuse_reply_buf(req, (const char *)&out, sizeof out);
}

/* Read buffers, one per thread, page-aligned so that a direct-I/O data
 * layer reads straight into them, and kept for the thread's next read. */
static pthread_key_t read_buf_key;

struct rbuf {
  size_t cap; /* bytes at mem */
  void *mem;
};

static void *read_buf(size_t size)
{
  struct rbuf *b = pthread_getspecific(read_buf_key);
  if (!b) {
    b = calloc(1, sizeof *b);
    if (!b || pthread_setspecific(read_buf_key, b) != 0) {
      free(b);
      return NULL;
    }
  }
  if (b->cap < size) {
    free(b->mem);
    b->cap = 0;
    /* Large ones in 2 MiB transparent huge pages (where the kernel offers
     * them), as the receive buffers (see serve): the kernel pins the pages
     * of the reply one by one to copy it. */
    size_t huge = 2u << 20, align = size >= huge / 8 ? huge : 4096;
    size_t cap = (size + align - 1) & ~(align - 1);
    if (posix_memalign(&b->mem, align, cap) != 0)
      return b->mem = NULL;
    if (align == huge)
      madvise(b->mem, cap, MADV_HUGEPAGE); /* a hint: 4K pages work too */
    b->cap = cap;
  }
  return b->mem;
}

static void free_read_buf(void *p)
{
  struct rbuf *b = p;
  free(b->mem);
  free(b);
}

static void tsf_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
  struct export *e = &g.ex[fi->fh];
  uint64_t dsize = ts_dev_size(e->dev);
  if (off < 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  if ((uint64_t)off >= dsize)
    size = 0;
  else if (size > dsize - (uint64_t)off)
    size = (size_t)(dsize - (uint64_t)off);
  void *mem = read_buf(size ? size : 1);
  int r = !mem ? -ENOMEM : size ? bd_read(&e->bd, mem, size, (uint64_t)off) : 0;
  if (r)
    fuse_reply_err(req, -r);
  else
    fuse_reply_buf(req, mem, size);
}

/* With our receive loop (serve) the data starts on a page: a direct-I/O
 * data layer writes it as it is. */
static void tsf_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                      struct fuse_file_info *fi)
{
  struct export *e = &g.ex[fi->fh];
  uint64_t dsize = ts_dev_size(e->dev);
  if (off < 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  /* The file cannot grow: a write at or past the end is "file too large",
   * one that crosses the end is short, as on a block device. */
  if ((uint64_t)off >= dsize) {
    if (size)
      fuse_reply_err(req, EFBIG);
    else
      fuse_reply_write(req, 0);
    return;
  }
  if (size > dsize - (uint64_t)off)
    size = (size_t)(dsize - (uint64_t)off);
  int r = bd_write(&e->bd, buf, size, (uint64_t)off, 0);
  changed(e);
  if (r)
    fuse_reply_err(req, -r);
  else
    fuse_reply_write(req, size);
}

static void tsf_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
  fuse_reply_err(req, -ts_flush(g.ex[fi->fh].dev));
}

static void tsf_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                          struct fuse_file_info *fi)
{
  struct export *e = &g.ex[fi->fh];
  uint64_t dsize = ts_dev_size(e->dev);
  bool keep = mode & FALLOC_FL_KEEP_SIZE;
  int op = mode & ~FALLOC_FL_KEEP_SIZE;
  int r = 0;
  if (off < 0 || len <= 0)
    r = -EINVAL;
  else if (op != 0 && op != FALLOC_FL_PUNCH_HOLE && op != FALLOC_FL_ZERO_RANGE)
    r = -EOPNOTSUPP; /* collapse, insert, unshare: no meaning on a device */
  else if (op == FALLOC_FL_PUNCH_HOLE && !keep)
    r = -EOPNOTSUPP; /* as on every file system: punching must keep the size */
  else if (e->read_only)
    r = -EROFS;
  if (r) {
    fuse_reply_err(req, -r);
    return;
  }
  uint64_t o = (uint64_t)off, l = (uint64_t)len;
  if (o >= dsize || l > dsize - o) {
    /* The file cannot grow; with KEEP_SIZE the part past the end is
     * simply not there, as for any file. */
    if (!keep || o >= dsize) {
      fuse_reply_err(req, keep ? 0 : EFBIG);
      return;
    }
    l = dsize - o;
  }
  if (op == 0)
    r = bd_provision(&e->bd, o, l);
  else if (op == FALLOC_FL_PUNCH_HOLE)
    r = bd_punch(&e->bd, o, l);
  else
    r = bd_zero(&e->bd, o, l, 0);
  changed(e);
  fuse_reply_err(req, -r);
}

/* SEEK_DATA / SEEK_HOLE (the kernel handles the other whences). A hole is an
 * unallocated range that reads as zeroes; an unallocated range whose contents
 * are undefined counts as data, so sparse copies never skip it. */
static off_t seek_data_hole(struct export *e, off_t off, int whence)
{
  uint64_t size = ts_dev_size(e->dev), lbs = ts_dev_limits(e->dev)->logical_block_size;
  if (whence != SEEK_DATA && whence != SEEK_HOLE)
    return -EINVAL;
  if (off < 0 || (uint64_t)off >= size)
    return -ENXIO;
  bool want_hole = whence == SEEK_HOLE;
  ts_extent_list l = { 0 };
  uint64_t pos = (uint64_t)off - (uint64_t)off % lbs;
  off_t found = want_hole ? (off_t)size : -ENXIO; /* the end of the file is a hole */
  while (pos < size) {
    if (stopping()) {
      found = -EINTR;
      break;
    }
    ts_extent_list_reset(&l);
    int r = ts_block_status_bounded(e->dev, pos, size - pos, 0, &l);
    if (r || l.n == 0) {
      found = r ? r : -EIO;
      break;
    }
    size_t i = 0;
    for (; i < l.n; i++) {
      bool hole = (l.v[i].flags & (TS_EXTENT_HOLE | TS_EXTENT_ZERO)) ==
                  (TS_EXTENT_HOLE | TS_EXTENT_ZERO);
      if (hole == want_hole)
        break;
    }
    if (i < l.n) {
      uint64_t at = l.v[i].offset;
      found = (off_t)(at > (uint64_t)off ? at : (uint64_t)off);
      break;
    }
    pos = l.v[l.n - 1].offset + l.v[l.n - 1].length;
  }
  ts_extent_list_free(&l);
  return found;
}

static void tsf_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
                      struct fuse_file_info *fi)
{
  off_t r = seek_data_hole(&g.ex[fi->fh], off, whence);
  if (r < 0)
    fuse_reply_err(req, (int)-r);
  else
    fuse_reply_lseek(req, r);
}

static void tsf_statfs(fuse_req_t req, fuse_ino_t ino)
{
  uint64_t total = 0, used = 0;
  uint32_t bsize = 512, frsize = 512;
  for (size_t i = 0; i < g.nex; i++) {
    const ts_limits *lim = ts_dev_limits(g.ex[i].dev);
    total += ts_dev_size(g.ex[i].dev);
    used += allocated(&g.ex[i]);
    if (lim->logical_block_size > frsize)
      frsize = lim->logical_block_size;
    /* A loop device over one of our files takes f_bsize as its discard
     * granularity: offer the unit discards free. */
    if (lim->discard_granularity > bsize)
      bsize = lim->discard_granularity;
  }
  if (bsize < frsize)
    bsize = frsize;
  struct statvfs sv = { 0 };
  sv.f_bsize = bsize;
  sv.f_frsize = frsize;
  sv.f_blocks = total / frsize;
  sv.f_bfree = sv.f_bavail = (total - (used < total ? used : total)) / frsize;
  sv.f_files = g.nex + 1;
  sv.f_namemax = 255;
  fuse_reply_statfs(req, &sv);
}

static const struct fuse_lowlevel_ops ops = {
  .init = tsf_init,
  .lookup = tsf_lookup,
  .getattr = tsf_getattr,
  .setattr = tsf_setattr,
  .readdir = tsf_readdir,
  .open = tsf_open,
  .read = tsf_read,
  .write = tsf_write,
  .fsync = tsf_fsync,
  .fallocate = tsf_fallocate,
  .lseek = tsf_lseek,
  .statfs = tsf_statfs,
};

/* ------------------------------------------------------------------------ */
/* Command line and lifetime                                                 */

enum { KEY_HELP, KEY_VERSION, KEY_RO, KEY_ALLOW_OTHER };

/* Worker threads by default: a request holds its thread until the stack
 * answers, so a queue as deep as fio's 32 needs 32 of them to be in flight
 * at once. */
#define DEFAULT_THREADS 32
#define MAX_THREADS 1024

static bool allow_other;

static const struct fuse_opt tsf_opts[] = {
  { "page_cache", offsetof(struct tsf_state, page_cache), 1 },
  { "control=%s", offsetof(struct tsf_state, control), 0 },
  { "nocontrol", offsetof(struct tsf_state, no_control), 1 },
  { "threads=%u", offsetof(struct tsf_state, threads), 0 },
  { "max_background=%u", offsetof(struct tsf_state, max_background), 0 },
  { "max_read=%u", offsetof(struct tsf_state, max_read), 0 },
  FUSE_OPT_KEY("max_read=", FUSE_OPT_KEY_KEEP),
  { "max_write=%u", offsetof(struct tsf_state, max_write), 0 },
  { "serial_writes", offsetof(struct tsf_state, serial_writes), 1 },
  FUSE_OPT_KEY("direct_io", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_KEY("ro", KEY_RO),
  FUSE_OPT_KEY("allow_other", KEY_ALLOW_OTHER),
  FUSE_OPT_KEY("-h", KEY_HELP),
  FUSE_OPT_KEY("--help", KEY_HELP),
  FUSE_OPT_KEY("-V", KEY_VERSION),
  FUSE_OPT_KEY("--version", KEY_VERSION),
  FUSE_OPT_END,
};

static void usage(FILE *f, const char *prog)
{
  fprintf(f,
          "usage: %s CONFIG MOUNTPOINT [-f] [-s] [-d] [-o OPTION[,OPTION...]]\n"
          "  Mount the exported devices of the stack CONFIG as files in MOUNTPOINT.\n\n"
          "options:\n"
          "  -f                run in the foreground\n"
          "  -s                single-threaded (threads=1)\n"
          "  -d                debug output (implies -f)\n"
          "  -o ro             open the stack read-only and mount read-only\n"
          "  -o page_cache     let the kernel cache file data (needed for mmap);\n"
          "                    the default is direct I/O\n"
          "  -o allow_other    let other users see the files (see fuse(8)); the kernel\n"
          "                    then checks their permissions (default_permissions)\n"
          "  -o control=PATH   serve the stack's control socket at PATH (default:\n"
          "                    CONFIG.ctl; `thinstack` commands on CONFIG go through it)\n"
          "  -o nocontrol      serve no control socket\n"
          "  -o threads=N      serve requests on N threads (default %d)\n"
          "  -o max_background=N  let the kernel have N asynchronous requests (io_uring,\n"
          "                    libaio) out at once (default: as many as threads)\n"
          "  -o max_read=N, -o max_write=N  cut direct reads and writes into requests\n"
          "                    of at most N bytes (default and most: 1 MiB)\n"
          "  -o serial_writes  let the kernel send direct writes to a file one at a\n"
          "                    time (the default lets them run in parallel)\n",
          prog, DEFAULT_THREADS);
}

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *out)
{
  switch (key) {
  case FUSE_OPT_KEY_NONOPT:
    if (!g.config) {
      g.config = arg;
      return 0;
    }
    return 1; /* the mount point: fuse_parse_cmdline takes it */
  case KEY_RO:
    g.read_only = true;
    return 1; /* and the kernel mounts read-only */
  case KEY_ALLOW_OTHER:
    allow_other = true;
    return 1;
  case KEY_HELP:
    g.show_help = true;
    return 0;
  case KEY_VERSION:
    printf("thinstack-fuse (libthinstack %s), FUSE library %s\n", ts_version(), fuse_pkgversion());
    exit(0);
  default:
    return 1;
  }
}

static int open_stack(void)
{
  ts_error err = { 0 };
  ts_open_opts o = { .struct_size = sizeof o, .flags = g.read_only ? TS_OPEN_READ_ONLY : 0 };
  int r = ts_stack_open_file(g.config, &o, &g.stack, &err);
  if (r) {
    fprintf(stderr, "thinstack-fuse: %s\n", err.msg[0] ? err.msg : ts_strerror(r));
    return -1;
  }
  g.nex = ts_stack_ndevs(g.stack);
  if (g.nex == 0) {
    fprintf(stderr, "thinstack-fuse: %s exports no device\n", g.config);
    return -1;
  }
  g.ex = calloc(g.nex, sizeof *g.ex);
  if (!g.ex)
    return -1;
  if (!g.no_control) {
    /* The default socket is a convenience: a folder we may not write only
     * costs the live control. One asked for must work. */
    char def[108];
    const char *path = g.control;
    if (!path && ts_ctl_default_path(g.config, def, sizeof def) == 0)
      path = def;
    r = path ? ts_ctl_listen(g.stack, path, &err) : -ENAMETOOLONG;
    if (r && g.control) {
      fprintf(stderr, "thinstack-fuse: %s\n", err.msg);
      return -1;
    }
    if (r)
      fprintf(stderr, "thinstack-fuse: warning: no control socket: %s\n",
              err.msg[0] ? err.msg : ts_strerror(r));
  }
  g.start_ns = now_ns();
  for (size_t i = 0; i < g.nex; i++) {
    struct export *e = &g.ex[i];
    e->dev = ts_stack_dev_at(g.stack, i);
    e->name = ts_dev_name(e->dev);
    e->read_only = ts_dev_limits(e->dev)->read_only;
    e->mtime_ns = g.start_ns;
    if (strchr(e->name, '/')) {
      fprintf(stderr, "thinstack-fuse: export \"%s\": a file name cannot contain '/'\n", e->name);
      g.nex = i;
      return -1;
    }
    r = bd_init(&e->bd, e->dev);
    if (r) {
      fprintf(stderr, "thinstack-fuse: export \"%s\": %s\n", e->name, ts_strerror(r));
      g.nex = i;
      return -1;
    }
  }
  return 0;
}

static int close_stack(void)
{
  for (size_t i = 0; i < g.nex; i++)
    bd_fini(&g.ex[i].bd);
  free(g.ex);
  g.ex = NULL;
  ts_error err = { 0 };
  int r = ts_stack_close(g.stack, &err);
  g.stack = NULL;
  if (r)
    fprintf(stderr, "thinstack-fuse: closing %s: %s\n", g.config,
            err.msg[0] ? err.msg : ts_strerror(r));
  return r ? -1 : 0;
}

/* Detach from the terminal before opening anything, so that the stack's
 * threads and files belong to the process that serves them; the parent
 * waits for a status byte and exits with it, so the caller sees whether the
 * mount succeeded. Returns the write end of the status pipe, -1 on error. */
static int background(void)
{
  int p[2];
  if (pipe(p) != 0) {
    perror("thinstack-fuse: pipe");
    return -1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    perror("thinstack-fuse: fork");
    return -1;
  }
  if (pid > 0) {
    char c = 1;
    close(p[1]);
    if (read(p[0], &c, 1) != 1)
      c = 1;
    _exit(c);
  }
  close(p[0]);
  setsid();
  return p[1];
}

static void detached(int status_fd)
{
  char ok = 0;
  if (write(status_fd, &ok, 1) != 1) {
    /* The parent is gone; nobody is left to tell. */
  }
  close(status_fd);
  if (chdir("/") != 0) {
    /* Staying in the old directory only keeps it busy. */
  }
  int null = open("/dev/null", O_RDWR);
  if (null >= 0) {
    dup2(null, STDIN_FILENO);
    dup2(null, STDOUT_FILENO);
    dup2(null, STDERR_FILENO);
    if (null > STDERR_FILENO)
      close(null);
  }
}

/* The receive loop. Each worker reads requests into a buffer of its own,
 * placed so that a WRITE's data (after its two headers) starts on a page:
 * a direct-I/O data layer then writes it without a copy, where libfuse's
 * loop reads into a plain malloc and the data lands 80 bytes into a page.
 * libfuse 3.14 to 3.16 read up to 256 pages of data plus one page of
 * headers per request (their bufsize); libfuse 3.17 makes that size
 * configurable, so there the export keeps libfuse's own loop. */
#define RECV_PAGES (256 + 1)
#define WRITE_HEADERS (sizeof(struct fuse_in_header) + sizeof(struct fuse_write_in))

static sem_t serve_done;
static _Atomic int serve_error;

static void *serve_worker(void *mem)
{
  struct fuse_buf fb = { .mem = mem };
  /* Workers are cancelled only while they wait for a request, never in the
   * middle of one. */
  pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
  while (!fuse_session_exited(g.se)) {
    pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
    int r = fuse_session_receive_buf(g.se, &fb);
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
    if (r == -EINTR)
      continue;
    if (r <= 0) {
      /* 0: unmounted; an error ends the session too. */
      if (r < 0)
        atomic_store(&serve_error, r);
      fuse_session_exit(g.se);
      break;
    }
    fuse_session_process_buf(g.se, &fb);
  }
  sem_post(&serve_done);
  return NULL;
}

/* Serve on `n` threads until the session ends. Returns 0 or -errno. */
static int serve(unsigned n)
{
  /* Each buffer's data lies in one 2 MiB transparent huge page where the
   * kernel offers them: the kernel pins the buffer page by page to copy a
   * WRITE into it, which on 4K pages cost more than the copy itself. */
  size_t page = (size_t)sysconf(_SC_PAGESIZE), huge = 2u << 20, len = 2 * huge;
  pthread_t *t = calloc(n, sizeof *t);
  char **mem = calloc(n, sizeof *mem);
  unsigned started = 0;
  int r = t && mem ? 0 : -ENOMEM;
  if (!r)
    r = sem_init(&serve_done, 0, 0) ? -errno : 0;
  for (; !r && started < n; started++) {
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      r = -errno;
      break;
    }
    mem[started] = m;
    char *data = (char *)(((uintptr_t)m + page + huge - 1) & ~(uintptr_t)(huge - 1));
    madvise(data, huge, MADV_HUGEPAGE); /* a hint: 4K pages work too */
    r = -pthread_create(&t[started], NULL, serve_worker, data - WRITE_HEADERS);
    if (r) {
      munmap(m, len);
      break;
    }
  }
  if (r)
    fprintf(stderr, "thinstack-fuse: starting worker %u: %s\n", started + 1, strerror(-r));
  if (r && started)
    fuse_session_exit(g.se);
  /* A signal ends the session without waking anyone: look once a second. */
  while (started && !fuse_session_exited(g.se)) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec++;
    sem_timedwait(&serve_done, &ts);
  }
  for (unsigned i = 0; i < started; i++)
    pthread_cancel(t[i]);
  for (unsigned i = 0; i < started; i++) {
    pthread_join(t[i], NULL);
    munmap(mem[i], len);
  }
  if (t && mem)
    sem_destroy(&serve_done);
  free(t);
  free(mem);
  return r ? r : atomic_load(&serve_error);
}

int main(int argc, char **argv)
{
  struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
  struct fuse_cmdline_opts co;
  memset(&co, 0, sizeof co);
  int status = 1, status_fd = -1;

  /* Read buffers are up to 1 MiB: from the heap, kept, they are reused;
   * above glibc's default mmap threshold each one was a fresh mapping,
   * page-faulted as it filled and unmapped when freed. */
  mallopt(M_MMAP_THRESHOLD, 8 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  g.threads = DEFAULT_THREADS;
  if (fuse_opt_parse(&args, &g, tsf_opts, opt_proc) != 0)
    return 2;
  if (g.show_help) {
    usage(stdout, argv[0]);
    printf("\nFUSE options:\n");
    fuse_lowlevel_help();
    fuse_opt_free_args(&args);
    return 0;
  }
  /* Other users reach the files only through the kernel's permission
   * checks: without default_permissions anyone could write a 0644 export. */
  if (allow_other && fuse_opt_add_arg(&args, "-odefault_permissions") != 0) {
    fuse_opt_free_args(&args);
    return 2;
  }
  if (fuse_parse_cmdline(&args, &co) != 0) {
    fuse_opt_free_args(&args);
    return 2;
  }
  if (!g.config || !co.mountpoint) {
    usage(stderr, argv[0]);
    goto out_args;
  }
  if (co.singlethread)
    g.threads = 1;
  if (g.threads < 1 || g.threads > MAX_THREADS) {
    fprintf(stderr, "thinstack-fuse: -o threads=%u: must be 1 to %d\n", g.threads, MAX_THREADS);
    goto out_args;
  }
  /* The kernel's field is 16 bits wide. */
  if (g.max_background > 65535) {
    fprintf(stderr, "thinstack-fuse: -o max_background=%u: must be at most 65535\n",
            g.max_background);
    goto out_args;
  }
  if (pthread_key_create(&read_buf_key, free_read_buf) != 0)
    goto out_args;
  g.uid = getuid();
  g.gid = getgid();
  if (!co.foreground && (status_fd = background()) < 0)
    goto out_args;
  if (open_stack() != 0)
    goto out_stack;
  g.se = fuse_session_new(&args, &ops, sizeof ops, NULL);
  if (!g.se)
    goto out_stack;
  if (fuse_session_mount(g.se, co.mountpoint) != 0)
    goto out_session;
  if (fuse_set_signal_handlers(g.se) != 0)
    goto out_unmount;
  if (status_fd >= 0) {
    detached(status_fd);
    status_fd = -1;
  }
  int r;
#if FUSE_MAJOR_VERSION == 3 && FUSE_MINOR_VERSION < 17
  r = serve(g.threads);
#else
  struct fuse_loop_config *lc = fuse_loop_cfg_create();
  r = -ENOMEM;
  if (lc) {
    fuse_loop_cfg_set_max_threads(lc, g.threads);
    r = fuse_session_loop_mt(g.se, lc);
    fuse_loop_cfg_destroy(lc);
  }
#endif
  /* libfuse's loop reports the signal that ended it: a clean exit too. */
  status = r >= 0 ? 0 : 1;
  fuse_remove_signal_handlers(g.se);
out_unmount:
  fuse_session_unmount(g.se);
out_session:
  fuse_session_destroy(g.se);
  g.se = NULL;
out_stack:
  if (g.stack && close_stack() != 0)
    status = 1;
out_args:
  free(co.mountpoint);
  fuse_opt_free_args(&args);
  if (status_fd >= 0) {
    char c = (char)status;
    if (write(status_fd, &c, 1) != 1) {
      /* The parent exits 1 on a closed pipe anyway. */
    }
    close(status_fd);
  }
  return status;
}
