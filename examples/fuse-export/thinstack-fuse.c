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
#include <fuse.h>
#include <fuse_lowlevel.h>
#include <linux/falloc.h>
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
  bool read_only;
  bool show_help;
  ts_stack *stack;
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

static struct export *find_export(const char *path)
{
  if (path[0] != '/')
    return NULL;
  for (size_t i = 0; i < g.nex; i++)
    if (strcmp(path + 1, g.ex[i].name) == 0)
      return &g.ex[i];
  return NULL;
}

/* The export of an open file (fh is set by open) or of a path. */
static struct export *file_export(const char *path, const struct fuse_file_info *fi)
{
  if (path && strcmp(path, "/") == 0)
    return NULL;
  return fi ? &g.ex[fi->fh] : find_export(path);
}

/* The session is ending (SIGTERM, SIGINT, unmount): long walks give up, so
 * the loop can join its workers and the stack close within a second. */
static bool stopping(void)
{
  struct fuse_context *c = fuse_get_context();
  return c && c->fuse && fuse_session_exited(fuse_get_session(c->fuse));
}

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

static void *tsf_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
  /* O_TRUNC arrives with open (which ignores it, as a block device does)
   * instead of as a truncate to size 0, which we would have to refuse. */
  if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
    conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  cfg->attr_timeout = 1.0;
  cfg->entry_timeout = 1.0;
  cfg->use_ino = 0;
  return NULL;
}

static int tsf_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
  memset(st, 0, sizeof *st);
  st->st_uid = g.uid;
  st->st_gid = g.gid;
  if (path && strcmp(path, "/") == 0) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    set_time(&st->st_mtim, g.start_ns);
    st->st_ctim = st->st_atim = st->st_mtim;
    return 0;
  }
  struct export *e = file_export(path, fi);
  if (!e)
    return -ENOENT;
  const ts_limits *lim = ts_dev_limits(e->dev);
  st->st_mode = S_IFREG | (e->read_only ? 0444 : 0644);
  st->st_nlink = 1;
  st->st_size = (off_t)ts_dev_size(e->dev);
  st->st_blksize = lim->io_opt > lim->logical_block_size ? lim->io_opt : lim->logical_block_size;
  st->st_blocks = (blkcnt_t)(allocated(e) / 512);
  set_time(&st->st_mtim, atomic_load(&e->mtime_ns));
  st->st_ctim = st->st_mtim;
  set_time(&st->st_atim, g.start_ns);
  return 0;
}

static int tsf_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t offset,
                       struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
  if (strcmp(path, "/") != 0)
    return -ENOTDIR;
  fill(buf, ".", NULL, 0, 0);
  fill(buf, "..", NULL, 0, 0);
  for (size_t i = 0; i < g.nex; i++)
    fill(buf, g.ex[i].name, NULL, 0, 0);
  return 0;
}

static int tsf_open(const char *path, struct fuse_file_info *fi)
{
  struct export *e = find_export(path);
  if (!e)
    return strcmp(path, "/") == 0 ? -EISDIR : -ENOENT;
  if ((fi->flags & O_ACCMODE) != O_RDONLY && e->read_only)
    return -EROFS;
  fi->fh = (uint64_t)(e - g.ex);
  fi->direct_io = !g.page_cache;
  /* Only this mount changes the stack while it is mounted, and the kernel
   * drops cached pages itself on punch and zero: cached pages stay valid. */
  fi->keep_cache = g.page_cache;
  return 0;
}

static int tsf_read(const char *path, char *buf, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
  struct export *e = file_export(path, fi);
  uint64_t dsize = ts_dev_size(e->dev);
  if (off < 0)
    return -EINVAL;
  if ((uint64_t)off >= dsize)
    return 0;
  if (size > dsize - (uint64_t)off)
    size = (size_t)(dsize - (uint64_t)off);
  int r = bd_read(&e->bd, buf, size, (uint64_t)off);
  return r ? r : (int)size;
}

/* Reads land in a page-aligned buffer of ours (libfuse frees it with free()
 * once the reply is sent): the one libfuse would pass to .read is a plain
 * malloc, 16 bytes off a page, which a direct-I/O data layer could only take
 * through a copy. */
static int tsf_read_buf(const char *path, struct fuse_bufvec **bufp, size_t size, off_t off,
                        struct fuse_file_info *fi)
{
  struct export *e = file_export(path, fi);
  uint64_t dsize = ts_dev_size(e->dev);
  if (off < 0)
    return -EINVAL;
  if ((uint64_t)off >= dsize)
    size = 0;
  else if (size > dsize - (uint64_t)off)
    size = (size_t)(dsize - (uint64_t)off);
  struct fuse_bufvec *bv = malloc(sizeof *bv);
  void *mem = NULL;
  if (!bv || posix_memalign(&mem, 4096, size ? size : 1)) {
    free(bv);
    return -ENOMEM;
  }
  int r = size ? bd_read(&e->bd, mem, size, (uint64_t)off) : 0;
  if (r) {
    free(mem);
    free(bv);
    return r;
  }
  *bv = (struct fuse_bufvec)FUSE_BUFVEC_INIT(size);
  bv->buf[0].mem = mem;
  *bufp = bv;
  return 0;
}

static int tsf_write(const char *path, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
  struct export *e = file_export(path, fi);
  uint64_t dsize = ts_dev_size(e->dev);
  if (off < 0)
    return -EINVAL;
  /* The file cannot grow: a write at or past the end is "file too large",
   * one that crosses the end is short, as on a block device. */
  if ((uint64_t)off >= dsize)
    return size ? -EFBIG : 0;
  if (size > dsize - (uint64_t)off)
    size = (size_t)(dsize - (uint64_t)off);
  int r = bd_write(&e->bd, buf, size, (uint64_t)off, 0);
  changed(e);
  return r ? r : (int)size;
}

static int tsf_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
  struct export *e = file_export(path, fi);
  return e ? ts_flush(e->dev) : -ENOENT;
}

static int tsf_fallocate(const char *path, int mode, off_t off, off_t len,
                         struct fuse_file_info *fi)
{
  struct export *e = file_export(path, fi);
  uint64_t dsize = ts_dev_size(e->dev);
  bool keep = mode & FALLOC_FL_KEEP_SIZE;
  int op = mode & ~FALLOC_FL_KEEP_SIZE;
  if (off < 0 || len <= 0)
    return -EINVAL;
  if (op != 0 && op != FALLOC_FL_PUNCH_HOLE && op != FALLOC_FL_ZERO_RANGE)
    return -EOPNOTSUPP; /* collapse, insert, unshare: no meaning on a device */
  if (op == FALLOC_FL_PUNCH_HOLE && !keep)
    return -EOPNOTSUPP; /* as on every file system: punching must keep the size */
  if (e->read_only)
    return -EROFS;
  uint64_t o = (uint64_t)off, l = (uint64_t)len;
  if (o >= dsize || l > dsize - o) {
    /* The file cannot grow; with KEEP_SIZE the part past the end is
     * simply not there, as for any file. */
    if (!keep)
      return -EFBIG;
    if (o >= dsize)
      return 0;
    l = dsize - o;
  }
  int r;
  if (op == 0)
    r = bd_provision(&e->bd, o, l);
  else if (op == FALLOC_FL_PUNCH_HOLE)
    r = bd_punch(&e->bd, o, l);
  else
    r = bd_zero(&e->bd, o, l, 0);
  changed(e);
  return r;
}

/* SEEK_DATA / SEEK_HOLE (the kernel handles the other whences). A hole is an
 * unallocated range that reads as zeroes; an unallocated range whose contents
 * are undefined counts as data, so sparse copies never skip it. */
static off_t tsf_lseek(const char *path, off_t off, int whence, struct fuse_file_info *fi)
{
  struct export *e = file_export(path, fi);
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

static int tsf_statfs(const char *path, struct statvfs *sv)
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
  memset(sv, 0, sizeof *sv);
  sv->f_bsize = bsize;
  sv->f_frsize = frsize;
  sv->f_blocks = total / frsize;
  sv->f_bfree = sv->f_bavail = (total - (used < total ? used : total)) / frsize;
  sv->f_files = g.nex + 1;
  sv->f_namemax = 255;
  return 0;
}

static int tsf_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
  struct export *e = file_export(path, fi);
  if (!e)
    return -ENOENT;
  /* A device has a fixed size: truncating to it is a no-op, anything else
   * is refused. */
  return (uint64_t)size == ts_dev_size(e->dev) ? 0 : -EINVAL;
}

static int tsf_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
  /* Accepted so that touch and cp -p work; times are not stored. */
  return file_export(path, fi) || strcmp(path, "/") == 0 ? 0 : -ENOENT;
}

static int tsf_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
  return -EPERM; /* modes follow the devices: read-only or not */
}

static int tsf_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
  return -EPERM; /* the files belong to whoever mounted the stack */
}

static const struct fuse_operations ops = {
  .init = tsf_init,
  .getattr = tsf_getattr,
  .readdir = tsf_readdir,
  .open = tsf_open,
  .read = tsf_read,
  .read_buf = tsf_read_buf,
  .write = tsf_write,
  .fsync = tsf_fsync,
  .fallocate = tsf_fallocate,
  .lseek = tsf_lseek,
  .statfs = tsf_statfs,
  .truncate = tsf_truncate,
  .utimens = tsf_utimens,
  .chmod = tsf_chmod,
  .chown = tsf_chown,
};

/* ------------------------------------------------------------------------ */
/* Command line and lifetime                                                 */

enum { KEY_HELP, KEY_VERSION, KEY_RO, KEY_ALLOW_OTHER };

static bool allow_other;

static const struct fuse_opt tsf_opts[] = {
  { "page_cache", offsetof(struct tsf_state, page_cache), 1 },
  { "control=%s", offsetof(struct tsf_state, control), 0 },
  { "nocontrol", offsetof(struct tsf_state, no_control), 1 },
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
          "  -s                single-threaded\n"
          "  -d                debug output (implies -f)\n"
          "  -o ro             open the stack read-only and mount read-only\n"
          "  -o page_cache     let the kernel cache file data (needed for mmap);\n"
          "                    the default is direct I/O\n"
          "  -o allow_other    let other users see the files (see fuse(8)); the kernel\n"
          "                    then checks their permissions (default_permissions)\n"
          "  -o control=PATH   serve the stack's control socket at PATH (default:\n"
          "                    CONFIG.ctl; `thinstack` commands on CONFIG go through it)\n"
          "  -o nocontrol      serve no control socket\n",
          prog);
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

int main(int argc, char **argv)
{
  struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
  struct fuse_cmdline_opts co;
  memset(&co, 0, sizeof co);
  int status = 1, status_fd = -1;
  struct fuse *f = NULL;

  /* Request buffers are up to 1 MiB (libfuse's own per thread, ours for
   * reads): from the heap, kept, they are reused; above glibc's default
   * mmap threshold each one was a fresh mapping, page-faulted as it filled
   * and unmapped when freed. */
  mallopt(M_MMAP_THRESHOLD, 8 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  if (fuse_opt_parse(&args, &g, tsf_opts, opt_proc) != 0)
    return 2;
  if (g.show_help) {
    usage(stdout, argv[0]);
    printf("\nFUSE options:\n");
    fuse_lib_help(&args);
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
  g.uid = getuid();
  g.gid = getgid();
  if (!co.foreground && (status_fd = background()) < 0)
    goto out_args;
  if (open_stack() != 0)
    goto out_stack;
  f = fuse_new(&args, &ops, sizeof ops, NULL);
  if (!f)
    goto out_stack;
  if (fuse_mount(f, co.mountpoint) != 0)
    goto out_fuse;
  if (fuse_set_signal_handlers(fuse_get_session(f)) != 0)
    goto out_unmount;
  if (status_fd >= 0) {
    detached(status_fd);
    status_fd = -1;
  }
  int r;
  if (co.singlethread) {
    r = fuse_loop(f);
  } else {
#ifdef TS_FUSE_LOOP_CFG
    struct fuse_loop_config *lc = fuse_loop_cfg_create();
    if (!lc)
      goto out_signals;
    fuse_loop_cfg_set_clone_fd(lc, (unsigned)co.clone_fd);
    fuse_loop_cfg_set_max_threads(lc, co.max_threads);
    /* UINT_MAX means "not given" (libfuse then keeps its default). */
    if (co.max_idle_threads != UINT_MAX)
      fuse_loop_cfg_set_idle_threads(lc, co.max_idle_threads);
    r = fuse_loop_mt(f, lc);
    fuse_loop_cfg_destroy(lc);
#else
    struct fuse_loop_config lc = { .clone_fd = co.clone_fd,
                                   .max_idle_threads = co.max_idle_threads };
    r = fuse_loop_mt(f, &lc);
#endif
  }
  /* The loop reports the signal that ended it: a clean exit too. */
  status = r >= 0 ? 0 : 1;
out_signals:
  fuse_remove_signal_handlers(fuse_get_session(f));
out_unmount:
  fuse_unmount(f);
out_fuse:
  fuse_destroy(f);
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
