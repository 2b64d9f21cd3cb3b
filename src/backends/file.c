/* file: a regular file as a block device (the loop-file layer).
 *
 *   { "type": "file", "path": "disk.img", "size": "10G", "create": true,
 *     "read_only": false, "direct": false, "block_size": 512, "mode": "0600" }
 *
 * The file is claimed for the stack (ts_layer_claim_fd): locked for writing,
 * or shared when read-only. A file it creates is 0600 unless "mode" says.
 *
 * Kernel equivalent: a loop device over the file (losetup). PROVISION is
 * fallocate(KEEP_SIZE), as loop did in the REQ_OP_PROVISION series; DISCARD
 * punches a hole (keeping the size); WRITE_ZEROES zeroes the range as unwritten
 * extents, or punches with MAY_UNMAP; FLUSH is fdatasync; BLOCK_STATUS reads
 * the file's extent map (FIEMAP), so provisioned-but-unwritten ranges show as
 * allocated zeroes, falling back to SEEK_DATA/SEEK_HOLE. A copy within the
 * file (copy_range: a thin pool breaking a share) is FICLONERANGE where the
 * file system shares extents (XFS with reflink, btrfs), else
 * copy_file_range; each call the kernel refuses is not made again.
 *
 * The async API's READ, WRITE and FLUSH go to io_uring (submit_async): the
 * ring of the async context that starts them in LOOP and EVENTFD modes,
 * reaped on that context's thread, else the layer's own ring and its reaper
 * thread. Both are set up at the first such request, so that plain
 * synchronous users never pay for a ring or a thread.
 */
#include <libthinstack/layer.h>

#include "backends/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct file_layer {
  struct ts__fio io;       /* the file's descriptor and data path */
  uint64_t size;
  uint32_t block_size;     /* logical block size we accept */
  uint32_t fs_block;       /* the file system's allocation unit */
  bool read_only;
  bool direct;
  char *path;
  pthread_mutex_t ring_lock; /* the ring's first start */
  _Atomic bool ring_tried;   /* ts__fio_ring_start has run */
};

static const ts_param file_params[] = {
  { "path", TS_PARAM_PATH, TS_PARAM_REQUIRED, NULL, NULL, "the backing file" },
  { "size", TS_PARAM_SIZE, 0, NULL, NULL, "device size; required to create, checked when opening" },
  { "create", TS_PARAM_BOOL, 0, NULL, NULL, "create the file (sparse) when it does not exist" },
  { "read_only", TS_PARAM_BOOL, 0, NULL, NULL, "open read-only" },
  { "direct", TS_PARAM_BOOL, 0, NULL, NULL, "bypass the page cache (O_DIRECT)" },
  { "block_size", TS_PARAM_SIZE, 0, NULL, NULL, "logical block size (512, or 4096 with direct)" },
  { "mode", TS_PARAM_STRING, 0, NULL, NULL,
    "permissions of a file this layer creates, octal (default \"0600\"; \"0640\" widens it)" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static int file_open(ts_layer *l, const json_t *params, ts_error *err)
{
  bool create = ts_param_bool(params, "create", false);
  bool ro_param = ts_param_bool(params, "read_only", false);
  bool ro = ro_param || ts_layer_force_read_only(l);
  bool direct = ts_param_bool(params, "direct", false);
  bool has_size = json_object_get(params, "size") != NULL;
  uint64_t size = ts_param_size(params, "size", 0);
  uint64_t bs = ts_param_size(params, "block_size", direct ? 4096 : 512);

  if (bs < 512 || bs > 65536 || (bs & (bs - 1)))
    return ts_layer_error(l, err, -EINVAL, "block_size", "must be a power of two from 512 to 64K");
  if (has_size && (size == 0 || size % bs))
    return ts_layer_error(l, err, -EINVAL, "size", "must be a non-zero multiple of %llu bytes",
                          (unsigned long long)bs);
  /* A stack opened read-only still opens files its config may create:
   * "create" then only means nothing, and a missing file is an error. */
  if (create && ro_param)
    return ts_layer_error(l, err, -EINVAL, "create", "cannot create a read-only file");

  mode_t mode = 0600;
  const char *mode_s = ts_param_string(params, "mode", NULL);
  if (mode_s) {
    char *end;
    unsigned long m = strtoul(mode_s, &end, 8);
    if (!*mode_s || *end || m > 0777 || (m & 0600) != 0600)
      return ts_layer_error(l, err, -EINVAL, "mode",
                            "\"%s\" is not an octal mode from 0600 to 0777 (such as \"0640\")",
                            mode_s);
    mode = (mode_t)m;
  }

  char *path = ts_layer_path(l, ts_param_string(params, "path", ""));
  if (!path)
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  int flags = (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC | (direct ? O_DIRECT : 0);
  int fd = open(path, flags);
  bool created = false;
  int r;
  if (fd < 0 && errno == ENOENT && create && !ro) {
    if (!has_size) {
      r = ts_layer_error(l, err, -EINVAL, "size", "required to create %s", path);
      goto fail;
    }
    fd = open(path, flags | O_CREAT | O_EXCL, mode);
    if (fd < 0) {
      r = ts_layer_error(l, err, -errno, "path", "cannot create %s: %s", path, strerror(errno));
      goto fail;
    }
    ts_layer_note_created(l, path);
    created = true;
  } else if (fd < 0) {
    int e = errno;
    if (e == ENOENT && create)
      r = ts_layer_error(l, err, -e, "path", "%s does not exist, and a read-only open creates "
                         "nothing: open the stack for writing to create it", path);
    else if (e == ENOENT)
      r = ts_layer_error(l, err, -e, "path", "%s does not exist (set \"create\": true to make it)",
                         path);
    else
      r = ts_layer_error(l, err, -e, "path", "cannot open %s%s: %s", path,
                         ro ? "" : " for writing", strerror(e));
    goto fail;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    r = ts_layer_error(l, err, -EINVAL, "path",
                       "%s is not a regular file (the kernel layer takes block devices)", path);
    close(fd);
    goto fail;
  }
  /* Claimed before sizing a new file, so nobody sees it half made. */
  if ((r = ts_layer_claim_fd(l, fd, path, !ro, err))) {
    close(fd);
    goto fail;
  }
  if (created) {
    /* An explicit mode is applied as given; the umask only narrows the default. */
    if ((mode_s && fchmod(fd, mode) != 0) || ftruncate(fd, (off_t)size) != 0) {
      r = ts_layer_error(l, err, -errno, "size", "cannot size %s to %llu bytes: %s", path,
                         (unsigned long long)size, strerror(errno));
      close(fd);
      goto fail;
    }
    st.st_size = (off_t)size;
  }
  if (has_size && (uint64_t)st.st_size != size) {
    r = ts_layer_error(l, err, -EINVAL, "size", "%s is %llu bytes, the configuration says %llu",
                       path, (unsigned long long)st.st_size, (unsigned long long)size);
    close(fd);
    goto fail;
  }
  if (!has_size && (st.st_size == 0 || (uint64_t)st.st_size % bs)) {
    r = ts_layer_error(l, err, -EINVAL, "path", "%s is %llu bytes, not a non-zero multiple of %llu",
                       path, (unsigned long long)st.st_size, (unsigned long long)bs);
    close(fd);
    goto fail;
  }
  struct file_layer *f = calloc(1, sizeof *f);
  if (!f) {
    close(fd);
    r = ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
    goto fail;
  }
  f->size = (uint64_t)st.st_size;
  f->block_size = (uint32_t)bs;
  f->fs_block = st.st_blksize > 0 ? (uint32_t)st.st_blksize : 4096;
  f->read_only = ro;
  f->direct = direct;
  ts__fio_init(&f->io, fd, direct, (uint32_t)bs, true);
  f->io.clone_align = f->fs_block;
  f->io.skip_clean_syncs = true; /* every change of the file goes through fileio */
  pthread_mutex_init(&f->ring_lock, NULL);
  f->path = path;
  ts_layer_set_priv(l, f);
  return 0;
fail:
  free(path);
  return r;
}

static void file_close(ts_layer *l)
{
  struct file_layer *f = ts_layer_priv(l);
  if (!f)
    return;
  ts__fio_ring_stop(&f->io);
  pthread_mutex_destroy(&f->ring_lock);
  close(f->io.fd);
  free(f->path);
  free(f);
}

static int file_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  struct file_layer *f = ts_layer_priv(l);
  ts__fio_file_limits(lim, f->size, f->block_size, f->fs_block);
  lim->read_only = f->read_only;
  return 0;
}

static int file_rw(struct file_layer *f, const ts_io *io)
{
  return ts__fio_rw(&f->io, io->op == TS_OP_WRITE, io->iov, io->iovcnt, io->offset, io->length,
                    0);
}

static int falloc_keep(struct file_layer *f, const ts_io *io, int mode)
{
  return ts__fio_fallocate(&f->io, mode | FALLOC_FL_KEEP_SIZE, io->offset, io->length);
}

static int file_submit(ts_layer *l, const ts_io *io)
{
  struct file_layer *f = ts_layer_priv(l);
  int r;
  switch (io->op) {
  case TS_OP_READ:
    return file_rw(f, io);
  case TS_OP_WRITE:
    r = file_rw(f, io);
    break;
  case TS_OP_FLUSH:
    return ts__fio_sync(&f->io);
  case TS_OP_DISCARD:
    return falloc_keep(f, io, FALLOC_FL_PUNCH_HOLE);
  case TS_OP_WRITE_ZEROES:
    r = falloc_keep(f, io, (io->flags & TS_IO_MAY_UNMAP) ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE);
    break;
  case TS_OP_PROVISION:
    return falloc_keep(f, io, 0);
  default:
    return -EOPNOTSUPP;
  }
  if (!r && (io->flags & TS_IO_FUA))
    r = ts__fio_sync(&f->io);
  return r;
}

static int file_submit_async(ts_layer *l, const ts_io *io, ts_io_done_fn done, void *arg)
{
  struct file_layer *f = ts_layer_priv(l);
  if (!atomic_load_explicit(&f->ring_tried, memory_order_acquire)) {
    pthread_mutex_lock(&f->ring_lock);
    if (!atomic_load_explicit(&f->ring_tried, memory_order_relaxed)) {
      ts__fio_ring_start(&f->io);
      atomic_store_explicit(&f->ring_tried, true, memory_order_release);
    }
    pthread_mutex_unlock(&f->ring_lock);
  }
  return ts__fio_submit_async(&f->io, io, done, arg);
}

/* A clone where the file system shares extents; else (without NOFALLBACK)
 * copy_file_range; else the core reads and writes. */
static int file_copy_range(ts_layer *l, uint64_t src, uint64_t dst, uint64_t len, uint32_t flags)
{
  struct file_layer *f = ts_layer_priv(l);
  return ts__fio_copy(&f->io, src, dst, len, flags & TS_IO_NOFALLBACK);
}

static int file_block_status(ts_layer *l, uint64_t off, uint64_t len, ts_extent_list *out)
{
  struct file_layer *f = ts_layer_priv(l);
  return ts__fio_block_status(&f->io, off, len, out);
}

static int file_status(ts_layer *l, json_t *out)
{
  struct file_layer *f = ts_layer_priv(l);
  struct stat st;
  json_object_set_new(out, "path", json_string(f->path));
  if (fstat(f->io.fd, &st) == 0)
    json_object_set_new(out, "allocated_bytes", json_integer((json_int_t)st.st_blocks * 512));
  json_object_set_new(out, "direct", json_boolean(f->direct));
  /* Only the unaligned pieces of O_DIRECT requests are copied. */
  json_object_set_new(out, "bounced_bytes", json_integer((json_int_t)atomic_load(&f->io.bounced)));
  /* How the async API runs this file's requests: its io_uring, or its
   * workers and why; "threads" until the first async request. */
  pthread_mutex_lock(&f->ring_lock);
  json_object_set_new(out, "async_engine", json_string(f->io.ring_state));
  pthread_mutex_unlock(&f->ring_lock);
  json_object_set_new(out, "ring_ops", json_integer((json_int_t)atomic_load(&f->io.ring_ops)));
  /* Of those, the ones an async context's ring completed, reaped on the
   * context's own thread (LOOP and EVENTFD modes). */
  json_object_set_new(out, "ring_ops_sink",
                      json_integer((json_int_t)atomic_load(&f->io.ring_ops_sink)));
  /* How copies within the file go (a thin pool breaking a share): the
   * best call the kernel has not refused for this file. */
  json_object_set_new(out, "copy", json_string(ts__fio_copy_state(&f->io)));
  json_object_set_new(out, "cloned_bytes", json_integer((json_int_t)atomic_load(&f->io.cloned)));
  json_object_set_new(out, "copy_file_range_bytes",
                      json_integer((json_int_t)atomic_load(&f->io.cfr_copied)));
  /* FLUSH with nothing changed since the last fdatasync skips it. */
  json_object_set_new(out, "fdatasyncs", json_integer((json_int_t)atomic_load(&f->io.syncs)));
  json_object_set_new(out, "fdatasyncs_skipped",
                      json_integer((json_int_t)atomic_load(&f->io.syncs_skipped)));
  json_object_set_new(out, "provision", json_string("fallocate(KEEP_SIZE)"));
  json_object_set_new(out, "discard", json_string("fallocate(PUNCH_HOLE)"));
  json_object_set_new(out, "write_zeroes", json_string("fallocate(ZERO_RANGE), PUNCH_HOLE with may_unmap"));
  return 0;
}

/* Extend the file; the new tail is a hole, so it reads as zeroes. */
static int file_grow(ts_layer *l, uint64_t new_size, ts_error *err)
{
  struct file_layer *f = ts_layer_priv(l);
  if (new_size % f->block_size)
    return ts_layer_error(l, err, -EINVAL, "size", "%llu is not a multiple of %u",
                          (unsigned long long)new_size, f->block_size);
  if (ftruncate(f->io.fd, (off_t)new_size) != 0)
    return ts_layer_error(l, err, -errno, "size", "cannot grow %s to %llu bytes: %s", f->path,
                          (unsigned long long)new_size, strerror(errno));
  ts__fio_changed(&f->io); /* the new size is durable after the next sync */
  f->size = new_size;
  return 0;
}

/* A file grown since open (ts_dev_grow) no longer matches a "size" it was
 * opened with; without one, the size comes from the file anyway. */
static int file_config(ts_layer *l, json_t *params)
{
  struct file_layer *f = ts_layer_priv(l);
  if (!json_object_get(params, "size") || ts_param_size(params, "size", 0) == f->size)
    return 0;
  return json_object_set_new(params, "size", json_integer((json_int_t)f->size)) ? -ENOMEM : 0;
}

const ts_layer_type ts__file_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "file",
  .summary = "a regular file (loop-file): provision = fallocate, discard = punch hole",
  .params = file_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = file_open,
  .close = file_close,
  .limits = file_limits,
  .submit = file_submit,
  .block_status = file_block_status,
  .status = file_status,
  .grow = file_grow,
  .config = file_config,
  .submit_async = file_submit_async,
  .copy_range = file_copy_range,
};
