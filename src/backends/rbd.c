/* rbd: a Ceph RBD image as a block device, through librbd.
 *
 *   { "type": "rbd", "pool": "rbd", "image": "disk0", "conf": "/etc/ceph/ceph.conf",
 *     "id": "admin", "create": true, "size": "10G", "object_size": "4M" }
 *
 * Built only when librbd and librados are found (TS_HAVE_RBD).
 *
 * Ownership: a writable image is locked with rbd_lock_acquire(EXCLUSIVE)
 * before anything is read or written, so a second writer on any host (or a
 * second layer of this stack) fails with -EBUSY naming the lock owner; the
 * lock goes with rbd_close, or with the client's session when the process
 * dies (the next writer breaks a dead owner's lock, as librbd does for
 * exclusive-lock). Images without the exclusive-lock feature are refused for
 * writing: nothing else would keep two writers apart. Snapshots and
 * read-only opens take no lock.
 *
 * Ops: READ/WRITE through rbd_aio_readv/writev, so requests of many threads
 * are in flight at once (TS_THREAD_PARALLEL); writes pass the caller's
 * buffers to librbd uncopied unless its cache needs a copy (see
 * rbd_disable_zero_copy_writes below); FLUSH is rbd_aio_flush. The
 * async API starts READ, WRITE and FLUSH itself (submit_async) and librbd's
 * completion callback reports them, on librbd's finisher thread; `submit`
 * waits for the same calls, for the synchronous API and the rest. DISCARD
 * is rbd_aio_discard: librbd silently skips the parts of a discard smaller
 * than rbd_discard_granularity_bytes, so that is the discard granularity and
 * discarded ranges are not promised to read zeroes. WRITE_ZEROES is
 * rbd_aio_write_zeroes: with MAY_UNMAP objects may be deleted, without it the
 * THICK_PROVISION flag makes Ceph store zeroes. PROVISION is the same thick
 * zeroing, so it takes only TS_IO_MAY_ZERO requests. BLOCK_STATUS comes from
 * rbd_diff_iterate2 at object granularity: an object that exists is data.
 * Kernel equivalent: `rbd map` (the krbd driver, /dev/rbd/POOL/IMAGE).
 */
#ifdef TS_HAVE_RBD
#include <libthinstack/layer.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rbd_layer {
  rados_t cluster;
  rados_ioctx_t io;
  rbd_image_t image;
  bool cluster_up, io_up, image_up;
  bool read_only, created, locked;
  uint64_t size, object_size;
  uint32_t discard_granularity;
  char *pool, *ns, *name, *snap;
};

static const ts_param rbd_params[] = {
  { "pool", TS_PARAM_STRING, TS_PARAM_REQUIRED, NULL, NULL, "the RADOS pool" },
  { "image", TS_PARAM_STRING, TS_PARAM_REQUIRED, NULL, NULL, "the RBD image" },
  { "namespace", TS_PARAM_STRING, 0, NULL, NULL, "the RADOS namespace in the pool" },
  { "conf", TS_PARAM_PATH, 0, NULL, NULL,
    "ceph.conf to read (default: $CEPH_CONF, then Ceph's search path)" },
  { "id", TS_PARAM_STRING, 0, NULL, NULL, "client name without \"client.\" (default admin)" },
  { "keyring", TS_PARAM_PATH, 0, NULL, NULL, "keyring file (default: the conf's)" },
  { "create", TS_PARAM_BOOL, 0, NULL, NULL, "create the image when it does not exist" },
  { "size", TS_PARAM_SIZE, 0, NULL, NULL, "image size; required to create, checked when opening" },
  { "object_size", TS_PARAM_SIZE, 0, NULL, NULL, "object size on create (power of two, default 4M)" },
  { "snapshot", TS_PARAM_STRING, 0, NULL, NULL, "open this snapshot of the image, read-only" },
  { "read_only", TS_PARAM_BOOL, 0, NULL, NULL, "open read-only" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

/* "pool/ns/image@snap", for messages. */
static void where(const struct rbd_layer *r, char *buf, size_t len)
{
  snprintf(buf, len, "%s/%s%s%s%s%s", r->pool, r->ns ? r->ns : "", r->ns ? "/" : "", r->name,
           r->snap ? "@" : "", r->snap ? r->snap : "");
}

static void rbd_teardown(struct rbd_layer *r, bool abort)
{
  if (r->image_up) {
    if (r->locked)
      rbd_lock_release(r->image);
    rbd_close(r->image);
  }
  if (abort && r->created)
    rbd_remove(r->io, r->name);
  if (r->io_up)
    rados_ioctx_destroy(r->io);
  if (r->cluster_up)
    rados_shutdown(r->cluster);
  free(r->pool);
  free(r->ns);
  free(r->name);
  free(r->snap);
  free(r);
}

/* Say who holds the exclusive lock of an image, for -EBUSY messages. */
static void lock_owner(struct rbd_layer *r, char *buf, size_t len)
{
  rbd_lock_mode_t mode;
  char *owners[4];
  size_t n = 4;
  snprintf(buf, len, "another client");
  if (rbd_lock_get_owners(r->image, &mode, owners, &n) == 0 && n > 0) {
    snprintf(buf, len, "%s", owners[0]);
    rbd_lock_get_owners_cleanup(owners, n);
  }
}

static int rbd_layer_open(ts_layer *l, const json_t *params, ts_error *err)
{
  bool create = ts_param_bool(params, "create", false);
  bool has_size = json_object_get(params, "size") != NULL;
  uint64_t size = ts_param_size(params, "size", 0);
  uint64_t obj = ts_param_size(params, "object_size", 4u << 20);
  const char *snap = ts_param_string(params, "snapshot", NULL);
  bool ro = ts_param_bool(params, "read_only", false) || snap || ts_layer_force_read_only(l);

  if (has_size && (size == 0 || size % 512))
    return ts_layer_error(l, err, -EINVAL, "size", "must be a non-zero multiple of 512");
  if (obj < 4096 || obj > (1u << 30) || (obj & (obj - 1)))
    return ts_layer_error(l, err, -EINVAL, "object_size", "must be a power of two from 4K to 1G");
  if (create && !has_size)
    return ts_layer_error(l, err, -EINVAL, "size", "is required with \"create\"");
  if (create && (snap || ts_param_bool(params, "read_only", false)))
    return ts_layer_error(l, err, -EINVAL, "create", "cannot create a read-only image");

  struct rbd_layer *r = calloc(1, sizeof *r);
  if (!r)
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  const char *ns = ts_param_string(params, "namespace", NULL);
  r->pool = strdup(ts_param_string(params, "pool", ""));
  r->name = strdup(ts_param_string(params, "image", ""));
  r->ns = ns ? strdup(ns) : NULL;
  r->snap = snap ? strdup(snap) : NULL;
  r->read_only = ro;
  if (!r->pool || !r->name || (ns && !r->ns) || (snap && !r->snap)) {
    rbd_teardown(r, false);
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  }
  char wh[512];
  where(r, wh, sizeof wh);

  int rc = rados_create(&r->cluster, ts_param_string(params, "id", "admin"));
  if (rc < 0) {
    rbd_teardown(r, false);
    return ts_layer_error(l, err, rc, "id", "rados_create: %s", ts_strerror(rc));
  }
  r->cluster_up = true;
  const char *conf_p = ts_param_string(params, "conf", NULL);
  char *conf = conf_p ? ts_layer_path(l, conf_p) : NULL;
  rc = rados_conf_read_file(r->cluster, conf); /* NULL: $CEPH_CONF, then the search path */
  if (rc < 0) {
    ts_layer_error(l, err, rc, conf ? "conf" : NULL, "reading %s: %s",
                   conf ? conf : "ceph.conf ($CEPH_CONF or /etc/ceph)", ts_strerror(rc));
    free(conf);
    rbd_teardown(r, false);
    return rc;
  }
  free(conf);
  const char *kr_p = ts_param_string(params, "keyring", NULL);
  if (kr_p) {
    char *kr = ts_layer_path(l, kr_p);
    rc = kr ? rados_conf_set(r->cluster, "keyring", kr) : -ENOMEM;
    free(kr);
    if (rc < 0) {
      rbd_teardown(r, false);
      return ts_layer_error(l, err, rc, "keyring", "%s", ts_strerror(rc));
    }
  }
  /* librbd copies every write into a buffer of its own unless told not to
   * (Ceph's default, for callers that may change a buffer in flight). A
   * layer's caller leaves the buffers untouched until the request ends, and
   * librbd holds a zero-copy write's completion until it has released the
   * buffer, so the copy buys nothing here. Where librbd's cache may
   * acknowledge a write early (writearound, writeback) it copies anyway; an
   * image's own `conf_rbd_disable_zero_copy_writes` metadata still wins. */
  rados_conf_set(r->cluster, "rbd_disable_zero_copy_writes", "false");
  rc = rados_connect(r->cluster);
  if (rc < 0) {
    rbd_teardown(r, false);
    return ts_layer_error(l, err, rc, NULL, "connecting to the Ceph cluster for %s: %s", wh,
                          ts_strerror(rc));
  }
  char gran[32] = "";
  if (rados_conf_get(r->cluster, "rbd_discard_granularity_bytes", gran, sizeof gran) == 0)
    r->discard_granularity = (uint32_t)strtoul(gran, NULL, 10);
  if (r->discard_granularity < 512)
    r->discard_granularity = 512;

  rc = rados_ioctx_create(r->cluster, r->pool, &r->io);
  if (rc < 0) {
    ts_layer_error(l, err, rc, "pool", "pool %s: %s", r->pool, ts_strerror(rc));
    rbd_teardown(r, false);
    return rc;
  }
  r->io_up = true;
  if (r->ns)
    rados_ioctx_set_namespace(r->io, r->ns);

  if (r->snap || ro)
    rc = rbd_open_read_only(r->io, r->name, &r->image, r->snap);
  else
    rc = rbd_open(r->io, r->name, &r->image, NULL);
  if (rc == -ENOENT && create && !ro) {
    int order = 0;
    while ((1ull << order) < obj)
      order++;
    rc = rbd_create(r->io, r->name, size, &order);
    if (rc < 0) {
      rbd_teardown(r, false);
      return ts_layer_error(l, err, rc, "image", "creating %s: %s", wh, ts_strerror(rc));
    }
    r->created = true;
    rc = rbd_open(r->io, r->name, &r->image, NULL);
  }
  if (rc < 0) {
    ts_layer_error(l, err, rc, r->snap && rc == -ENOENT ? "snapshot" : "image", "opening %s: %s",
                   wh, ts_strerror(rc));
    rbd_teardown(r, r->created);
    return rc;
  }
  r->image_up = true;

  if (!ro) {
    uint64_t features = 0;
    rbd_get_features(r->image, &features);
    if (!(features & RBD_FEATURE_EXCLUSIVE_LOCK)) {
      rbd_teardown(r, r->created);
      return ts_layer_error(l, err, -EINVAL, "image",
                            "%s lacks the exclusive-lock feature, which keeps two writers apart "
                            "(rbd feature enable %s exclusive-lock)", wh, wh);
    }
    rc = rbd_lock_acquire(r->image, RBD_LOCK_MODE_EXCLUSIVE);
    if (rc < 0) {
      char owner[256];
      lock_owner(r, owner, sizeof owner);
      rbd_teardown(r, r->created);
      if (rc == -EROFS || rc == -EBUSY || rc == -EAGAIN)
        return ts_layer_error(l, err, -EBUSY, "image", "%s is in use by %s", wh, owner);
      return ts_layer_error(l, err, rc, "image", "locking %s: %s", wh, ts_strerror(rc));
    }
    r->locked = true;
  }

  rbd_image_info_t info;
  rc = rbd_stat(r->image, &info, sizeof info);
  if (rc < 0) {
    rbd_teardown(r, r->created);
    return ts_layer_error(l, err, rc, "image", "rbd_stat %s: %s", wh, ts_strerror(rc));
  }
  r->size = info.size;
  r->object_size = info.obj_size;
  if (has_size && r->size != size) {
    rbd_teardown(r, r->created);
    return ts_layer_error(l, err, -EINVAL, "size", "%s is %" PRIu64 " bytes, not %" PRIu64, wh,
                          info.size, size);
  }
  if (r->size % 512) {
    rbd_teardown(r, r->created);
    return ts_layer_error(l, err, -EINVAL, "image", "%s: size %" PRIu64 " is not a multiple of 512",
                          wh, info.size);
  }
  ts_layer_set_priv(l, r);
  return 0;
}

static void rbd_layer_close(ts_layer *l)
{
  struct rbd_layer *r = ts_layer_priv(l);
  if (r)
    rbd_teardown(r, ts_layer_aborting(l));
}

static int rbd_layer_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  struct rbd_layer *r = ts_layer_priv(l);
  lim->size = r->size;
  lim->io_opt = r->object_size <= UINT32_MAX ? (uint32_t)r->object_size : 0;
  lim->read_only = r->read_only;
  lim->max_discard_bytes = 1ull << 30;
  lim->discard_granularity = r->discard_granularity;
  lim->discard_zeroes = false; /* pieces below the granularity are skipped */
  lim->max_write_zeroes_bytes = 1ull << 30;
  lim->write_zeroes_unmap = true;
  lim->max_provision_bytes = 1ull << 30;
  lim->provision_granularity = r->object_size <= UINT32_MAX ? (uint32_t)r->object_size : 0;
  lim->fua = false; /* librbd has no FUA: the core follows with a FLUSH */
  return 0;
}

/* One request in librbd: what its completion callback reports to. */
struct rbd_async {
  ts_io_done_fn done;
  void *arg;
};

/* Runs on librbd's finisher thread, once per completion. The completion is
 * released before `done`: after `done` the caller may close the image. */
static void rbd_async_cb(rbd_completion_t c, void *arg)
{
  struct rbd_async *a = arg;
  ssize_t rc = rbd_aio_get_return_value(c);
  ts_io_done_fn done = a->done;
  void *done_arg = a->arg;
  rbd_aio_release(c);
  free(a);
  done(done_arg, rc < 0 ? (int)rc : 0);
}

/* Start `io` on librbd; `done` runs once when it ends, unless this returns
 * an error (then nothing was queued). */
static int rbd_start(struct rbd_layer *r, const ts_io *io, ts_io_done_fn done, void *arg)
{
  /* Ceph reserves nothing without writing: provisioning stores zeroes. */
  if (io->op == TS_OP_PROVISION && !(io->flags & TS_IO_MAY_ZERO))
    return -EOPNOTSUPP;
  struct rbd_async *a = malloc(sizeof *a);
  if (!a)
    return -ENOMEM;
  a->done = done;
  a->arg = arg;
  rbd_completion_t c;
  int rc = rbd_aio_create_completion(a, rbd_async_cb, &c);
  if (rc < 0) {
    free(a);
    return rc;
  }
  switch (io->op) {
  case TS_OP_READ:
    rc = rbd_aio_readv(r->image, io->iov, io->iovcnt, io->offset, c);
    break;
  case TS_OP_WRITE:
    rc = rbd_aio_writev(r->image, io->iov, io->iovcnt, io->offset, c);
    break;
  case TS_OP_FLUSH:
    rc = rbd_aio_flush(r->image, c);
    break;
  case TS_OP_DISCARD:
    rc = rbd_aio_discard(r->image, io->offset, io->length, c);
    break;
  case TS_OP_WRITE_ZEROES:
    rc = rbd_aio_write_zeroes(r->image, io->offset, io->length, c,
                              (io->flags & TS_IO_MAY_UNMAP) ? 0
                                                            : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION,
                              0);
    break;
  case TS_OP_PROVISION:
    rc = rbd_aio_write_zeroes(r->image, io->offset, io->length, c,
                              RBD_WRITE_ZEROES_FLAG_THICK_PROVISION, 0);
    break;
  default:
    rc = -EOPNOTSUPP;
  }
  if (rc < 0) {
    /* Refused before anything was queued: the callback never runs. */
    rbd_aio_release(c);
    free(a);
  }
  return rc < 0 ? rc : 0;
}

/* A synchronous request waits on a condition of its own rather than in
 * rbd_aio_wait_for_complete: the same callback ends both kinds, and the
 * hand-over is one ThreadSanitizer can see. */
struct rbd_wait {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool done;
  int result;
};

static void rbd_wait_done(void *arg, int result)
{
  struct rbd_wait *w = arg;
  pthread_mutex_lock(&w->lock);
  w->result = result;
  w->done = true;
  pthread_cond_signal(&w->cond);
  pthread_mutex_unlock(&w->lock);
}

static int rbd_layer_submit(ts_layer *l, const ts_io *io)
{
  struct rbd_wait w = { .done = false, .result = 0 };
  pthread_mutex_init(&w.lock, NULL);
  pthread_cond_init(&w.cond, NULL);
  int rc = rbd_start(ts_layer_priv(l), io, rbd_wait_done, &w);
  if (rc == 0) {
    pthread_mutex_lock(&w.lock);
    while (!w.done)
      pthread_cond_wait(&w.cond, &w.lock);
    pthread_mutex_unlock(&w.lock);
    rc = w.result;
  }
  pthread_cond_destroy(&w.cond);
  pthread_mutex_destroy(&w.lock);
  return rc;
}

/* READ, WRITE and FLUSH started from the caller's thread: no worker waits
 * for them, and the completion is reported from librbd's finisher thread as
 * soon as the OSD has answered. */
static int rbd_layer_submit_async(ts_layer *l, const ts_io *io, ts_io_done_fn done, void *arg)
{
  return rbd_start(ts_layer_priv(l), io, done, arg);
}

struct diff_ctx {
  ts_extent_list *out;
  uint64_t pos;
  int err;
};

static int diff_cb(uint64_t off, size_t len, int exists, void *arg)
{
  struct diff_ctx *d = arg;
  if (off > d->pos && ts_extent_list_add(d->out, d->pos, off - d->pos, TS_EXTENT_HOLE | TS_EXTENT_ZERO))
    return d->err = -ENOMEM;
  if (off + len > d->pos) {
    uint64_t from = off > d->pos ? off : d->pos;
    if (ts_extent_list_add(d->out, from, off + len - from, exists ? 0 : TS_EXTENT_HOLE | TS_EXTENT_ZERO))
      return d->err = -ENOMEM;
    d->pos = off + len;
  }
  return 0;
}

static int rbd_layer_block_status(ts_layer *l, uint64_t off, uint64_t len, ts_extent_list *out)
{
  struct rbd_layer *r = ts_layer_priv(l);
  /* Bounded per call (the core asks for the rest): 4096 objects. */
  uint64_t span = r->object_size * 4096;
  if (len > span)
    len = span;
  struct diff_ctx d = { out, off, 0 };
  int rc = rbd_diff_iterate2(r->image, NULL, off, len, 1, 1, diff_cb, &d);
  if (d.err)
    return d.err;
  if (rc < 0)
    return rc;
  if (d.pos < off + len &&
      ts_extent_list_add(out, d.pos, off + len - d.pos, TS_EXTENT_HOLE | TS_EXTENT_ZERO))
    return -ENOMEM;
  return 0;
}

static int rbd_layer_status(ts_layer *l, json_t *out)
{
  struct rbd_layer *r = ts_layer_priv(l);
  char wh[512];
  where(r, wh, sizeof wh);
  json_object_set_new(out, "image", json_string(wh));
  json_object_set_new(out, "object_size", json_integer((json_int_t)r->object_size));
  json_object_set_new(out, "discard_granularity", json_integer(r->discard_granularity));
  json_object_set_new(out, "exclusive_lock", json_boolean(r->locked));
  return 0;
}

static char *rbd_layer_dm_table(ts_layer *l)
{
  struct rbd_layer *r = ts_layer_priv(l);
  char wh[512], *s = NULL;
  where(r, wh, sizeof wh);
  /* `rbd map POOL/[NS/]IMAGE[@SNAP]` makes /dev/rbd/POOL/[NS/]IMAGE[@SNAP]. */
  if (asprintf(&s, "0 %" PRIu64 " linear /dev/rbd/%s 0", r->size / 512, wh) < 0)
    return NULL;
  return s;
}

static int rbd_layer_message(ts_layer *l, const char *msg, ts_error *err)
{
  struct rbd_layer *r = ts_layer_priv(l);
  char wh[512];
  where(r, wh, sizeof wh);
  const char *name = NULL;
  bool create = false;
  if (!strncmp(msg, "snap-create ", 12)) {
    name = msg + 12;
    create = true;
  } else if (!strncmp(msg, "snap-remove ", 12)) {
    name = msg + 12;
  } else {
    return ts_error_set(err, -EINVAL, "rbd %s: unknown message \"%s\" (snap-create NAME, "
                        "snap-remove NAME)", wh, msg);
  }
  if (!*name || strchr(name, ' ') || strchr(name, '@') || strchr(name, '/'))
    return ts_error_set(err, -EINVAL, "rbd %s: \"%s\" is not a snapshot name", wh, name);
  if (r->read_only)
    return ts_error_set(err, -EROFS, "rbd %s: opened read-only", wh);
  int rc = create ? rbd_snap_create(r->image, name) : rbd_snap_remove(r->image, name);
  if (rc < 0)
    return ts_error_set(err, rc, "rbd %s: %s %s: %s", wh, create ? "snap-create" : "snap-remove",
                        name, ts_strerror(rc));
  return 0;
}

const ts_layer_type ts__rbd_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "rbd",
  .summary = "a Ceph RBD image through librbd",
  .params = rbd_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = rbd_layer_open,
  .close = rbd_layer_close,
  .limits = rbd_layer_limits,
  .submit = rbd_layer_submit,
  .submit_async = rbd_layer_submit_async,
  .block_status = rbd_layer_block_status,
  .status = rbd_layer_status,
  .dm_table = rbd_layer_dm_table,
  .message = rbd_layer_message,
};
#else
/* Without librbd the translation unit must not be empty (ISO C). */
typedef int ts__rbd_unavailable;
#endif
