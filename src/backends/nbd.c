/* nbd: a remote NBD export as a block device, through libnbd.
 *
 *   { "type": "nbd", "uri": "nbd://127.0.0.1:10809/disk", "connections": 4 }
 *
 * Built only when libnbd is found (TS_HAVE_NBD).
 *
 * The URI takes every form libnbd's nbd_connect_uri does: nbd://host[:port]/
 * export, nbd+unix:///export?socket=PATH, and nbds:// / nbds+unix:// with TLS
 * (the certificates or ?tls-psk-file= of the URI) when libnbd has TLS.
 * Structured replies are requested; with "connections" > 1 and a server that
 * advertises multi-conn, that many connections carry requests at once (a
 * flush on one covers all, which is what multi-conn promises); otherwise
 * one connection, and requests take turns on it.
 *
 * Ops: READ/WRITE (FUA when the server has it); FLUSH; DISCARD is TRIM, which
 * NBD calls advisory, so discarded ranges are not promised to read zeroes;
 * WRITE_ZEROES is NBD_CMD_WRITE_ZEROES, with NO_HOLE unless MAY_UNMAP and
 * with FAST_ZERO for NOFALLBACK (a server without fast zero takes no
 * NOFALLBACK request). NBD has no way to reserve space: PROVISION is a
 * NO_HOLE zero, so it takes only TS_IO_MAY_ZERO requests, and what it
 * reserves is the server's affair (docs/layers/nbd.md). BLOCK_STATUS is the
 * base:allocation context. The server's minimum, preferred and maximum block
 * sizes become logical_block_size, io_opt and max_io_bytes.
 *
 * Ownership: nothing here can lock a remote export; what keeps two writers
 * apart is the server (qemu-nbd serves one client unless --shared says
 * more; nbdkit serves any number).
 */
#ifdef TS_HAVE_NBD
#include <libthinstack/layer.h>

#include <errno.h>
#include <inttypes.h>
#include <libnbd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CONNECTIONS 16

struct nbd_layer {
  struct nbd_handle *h[MAX_CONNECTIONS];
  unsigned nconn;
  bool busy[MAX_CONNECTIONS];
  pthread_mutex_t lock;
  pthread_cond_t freed;
  uint64_t size;
  uint32_t min_block, pref_block;
  uint64_t max_block;
  bool read_only, can_flush, can_fua, can_trim, can_zero, can_fast_zero, can_bs;
  char *uri;
};

static const ts_param nbd_params[] = {
  { "uri", TS_PARAM_STRING, TS_PARAM_REQUIRED, NULL, NULL,
    "nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, nbds://... (TLS)" },
  { "export", TS_PARAM_STRING, 0, NULL, NULL, "export name, when the URI names none" },
  { "connections", TS_PARAM_UINT, 0, NULL, NULL,
    "connections to open when the server allows multi-conn (default 4, at most 16)" },
  { "read_only", TS_PARAM_BOOL, 0, NULL, NULL, "open read-only" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static int nbd_err(void)
{
  int e = nbd_get_errno();
  return e > 0 ? -e : -EIO;
}

static void nbd_teardown(struct nbd_layer *n)
{
  for (unsigned i = 0; i < n->nconn; i++) {
    nbd_shutdown(n->h[i], 0);
    nbd_close(n->h[i]);
  }
  pthread_mutex_destroy(&n->lock);
  pthread_cond_destroy(&n->freed);
  free(n->uri);
  free(n);
}

static struct nbd_handle *connect_one(ts_layer *l, const char *uri, ts_error *err)
{
  struct nbd_handle *h = nbd_create();
  if (!h) {
    ts_layer_error(l, err, -ENOMEM, NULL, "nbd_create: %s", nbd_get_error());
    return NULL;
  }
  nbd_set_request_structured_replies(h, true);
  nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
  /* The URI comes from the stack's own config, trusted as a key_file is:
   * let it name a ?tls-psk-file=, which libnbd refuses by default. */
  nbd_set_uri_allow_local_file(h, true);
  if (nbd_connect_uri(h, uri) < 0) {
    int rc = nbd_err();
    ts_layer_error(l, err, rc, "uri", "connecting to %s: %s", uri, nbd_get_error());
    nbd_close(h);
    return NULL;
  }
  return h;
}

static int nbd_layer_open(ts_layer *l, const json_t *params, ts_error *err)
{
  const char *uri_p = ts_param_string(params, "uri", "");
  const char *export = ts_param_string(params, "export", NULL);
  uint64_t want = ts_param_uint(params, "connections", 4);
  bool ro = ts_param_bool(params, "read_only", false) || ts_layer_force_read_only(l);

  if (want == 0 || want > MAX_CONNECTIONS)
    return ts_layer_error(l, err, -EINVAL, "connections", "must be from 1 to %d", MAX_CONNECTIONS);
  if (strncmp(uri_p, "nbd", 3) || !strstr(uri_p, "://"))
    return ts_layer_error(l, err, -EINVAL, "uri", "\"%s\" is not an nbd:// or nbds:// URI", uri_p);
  if (!strncmp(uri_p, "nbds", 4)) {
    struct nbd_handle *t = nbd_create();
    bool tls = t && nbd_supports_tls(t) == 1;
    if (t)
      nbd_close(t);
    if (!tls)
      return ts_layer_error(l, err, -EOPNOTSUPP, "uri", "this libnbd was built without TLS");
  }

  struct nbd_layer *n = calloc(1, sizeof *n);
  if (!n)
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  pthread_mutex_init(&n->lock, NULL);
  pthread_cond_init(&n->freed, NULL);
  /* An "export" goes in the URI's path, so one parser reads both. */
  const char *path = strstr(uri_p, "://") + 3;
  path = strchr(path, '/');
  bool has_export = path && path[1] && path[1] != '?';
  if (export && has_export) {
    nbd_teardown(n);
    return ts_layer_error(l, err, -EINVAL, "export", "the URI already names export \"%s\"",
                          path + 1);
  }
  int rc;
  if (export) {
    const char *q = strchr(uri_p, '?');
    size_t hostlen = path ? (size_t)(path - uri_p) : q ? (size_t)(q - uri_p) : strlen(uri_p);
    rc = asprintf(&n->uri, "%.*s/%s%s", (int)hostlen, uri_p, export, q ? q : "");
  } else {
    rc = (n->uri = strdup(uri_p)) ? 0 : -1;
  }
  if (rc < 0) {
    n->uri = NULL;
    nbd_teardown(n);
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  }

  if (!(n->h[0] = connect_one(l, n->uri, err))) {
    rc = err ? err->code : -EIO;
    nbd_teardown(n);
    return rc;
  }
  n->nconn = 1;
  struct nbd_handle *h = n->h[0];
  int64_t size = nbd_get_size(h);
  if (size < 0 || size % 512) {
    rc = size < 0 ? nbd_err() : -EINVAL;
    ts_layer_error(l, err, rc, "uri", "%s: export size %" PRId64 " is not a multiple of 512",
                   n->uri, size);
    nbd_teardown(n);
    return rc;
  }
  n->size = (uint64_t)size;
  n->read_only = ro || nbd_is_read_only(h) == 1;
  n->can_flush = nbd_can_flush(h) == 1;
  n->can_fua = nbd_can_fua(h) == 1;
  n->can_trim = nbd_can_trim(h) == 1;
  n->can_zero = nbd_can_zero(h) == 1;
  n->can_fast_zero = nbd_can_fast_zero(h) == 1;
  n->can_bs = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  int64_t bmin = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
  int64_t bpref = nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED);
  int64_t bmax = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
  n->min_block = bmin > 512 ? (uint32_t)bmin : 512;
  n->pref_block = bpref > 0 ? (uint32_t)bpref : 0;
  /* Without a stated maximum, 32M is what every server must take. */
  n->max_block = bmax > 0 ? (uint64_t)bmax : 32u << 20;
  if (n->min_block & (n->min_block - 1) || n->min_block > 65536 || n->size % n->min_block) {
    ts_layer_error(l, err, -EINVAL, "uri", "%s: minimum block size %u is not usable", n->uri,
                   n->min_block);
    nbd_teardown(n);
    return -EINVAL;
  }
  if (nbd_can_multi_conn(h) == 1) {
    for (; n->nconn < want; n->nconn++)
      if (!(n->h[n->nconn] = connect_one(l, n->uri, err))) {
        rc = err ? err->code : -EIO;
        nbd_teardown(n);
        return rc;
      }
  }
  ts_layer_set_priv(l, n);
  return 0;
}

static void nbd_layer_close(ts_layer *l)
{
  struct nbd_layer *n = ts_layer_priv(l);
  if (n)
    nbd_teardown(n);
}

static int nbd_layer_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  struct nbd_layer *n = ts_layer_priv(l);
  lim->size = n->size;
  lim->logical_block_size = n->min_block;
  if (lim->physical_block_size < n->min_block)
    lim->physical_block_size = n->min_block;
  if (n->pref_block && !(n->pref_block & (n->pref_block - 1)))
    lim->io_opt = n->pref_block;
  lim->max_io_bytes = n->max_block / n->min_block * n->min_block;
  lim->read_only = n->read_only;
  lim->fua = n->can_fua;
  if (n->can_trim) {
    lim->max_discard_bytes = 1ull << 30;
    lim->discard_granularity = n->min_block;
    lim->discard_zeroes = false; /* NBD_CMD_TRIM is advisory */
  }
  if (n->can_zero) {
    lim->max_write_zeroes_bytes = 1ull << 30;
    lim->write_zeroes_unmap = n->can_trim;
    lim->max_provision_bytes = 1ull << 30;
    lim->provision_granularity = n->min_block;
  }
  return 0;
}

/* Take a connection for one request; waits while every one is busy. */
static unsigned take(struct nbd_layer *n)
{
  pthread_mutex_lock(&n->lock);
  for (;;) {
    for (unsigned i = 0; i < n->nconn; i++)
      if (!n->busy[i]) {
        n->busy[i] = true;
        pthread_mutex_unlock(&n->lock);
        return i;
      }
    pthread_cond_wait(&n->freed, &n->lock);
  }
}

static void give(struct nbd_layer *n, unsigned i)
{
  pthread_mutex_lock(&n->lock);
  n->busy[i] = false;
  pthread_cond_signal(&n->freed);
  pthread_mutex_unlock(&n->lock);
}

static int rw(struct nbd_handle *h, const ts_io *io, uint32_t flags)
{
  if (io->iovcnt == 1) {
    int rc = io->op == TS_OP_READ ? nbd_pread(h, io->iov[0].iov_base, io->length, io->offset, 0)
                                  : nbd_pwrite(h, io->iov[0].iov_base, io->length, io->offset, flags);
    return rc < 0 ? nbd_err() : 0;
  }
  /* libnbd takes flat buffers: bounce a scattered request. */
  void *buf = malloc(io->length);
  if (!buf)
    return -ENOMEM;
  int rc;
  if (io->op == TS_OP_READ) {
    rc = nbd_pread(h, buf, io->length, io->offset, 0) < 0 ? nbd_err() : 0;
    if (!rc)
      ts_iov_from_buf(io->iov, io->iovcnt, 0, buf, io->length);
  } else {
    ts_iov_to_buf(io->iov, io->iovcnt, 0, buf, io->length);
    rc = nbd_pwrite(h, buf, io->length, io->offset, flags) < 0 ? nbd_err() : 0;
  }
  free(buf);
  return rc;
}

static int nbd_layer_submit(ts_layer *l, const ts_io *io)
{
  struct nbd_layer *n = ts_layer_priv(l);
  uint32_t fua = (io->flags & TS_IO_FUA) ? LIBNBD_CMD_FLAG_FUA : 0;
  uint32_t zflags = 0;
  if (io->op == TS_OP_WRITE_ZEROES) {
    if (!(io->flags & TS_IO_MAY_UNMAP))
      zflags |= LIBNBD_CMD_FLAG_NO_HOLE;
    if (io->flags & TS_IO_NOFALLBACK) {
      if (!n->can_fast_zero)
        return -EOPNOTSUPP;
      zflags |= LIBNBD_CMD_FLAG_FAST_ZERO;
    }
    zflags |= fua;
  } else if (io->op == TS_OP_PROVISION) {
    if (!(io->flags & TS_IO_MAY_ZERO))
      return -EOPNOTSUPP;
    zflags = LIBNBD_CMD_FLAG_NO_HOLE;
  } else if (io->op == TS_OP_FLUSH && !n->can_flush) {
    return 0; /* the server has no volatile cache to flush */
  }

  unsigned i = take(n);
  struct nbd_handle *h = n->h[i];
  int rc;
  switch (io->op) {
  case TS_OP_READ:
  case TS_OP_WRITE:
    rc = rw(h, io, fua);
    break;
  case TS_OP_FLUSH:
    rc = nbd_flush(h, 0) < 0 ? nbd_err() : 0;
    break;
  case TS_OP_DISCARD:
    rc = nbd_trim(h, io->length, io->offset, 0) < 0 ? nbd_err() : 0;
    break;
  case TS_OP_WRITE_ZEROES:
  case TS_OP_PROVISION:
    rc = nbd_zero(h, io->length, io->offset, zflags) < 0 ? nbd_err() : 0;
    break;
  default:
    rc = -EOPNOTSUPP;
  }
  give(n, i);
  return rc;
}

struct bs_ctx {
  ts_extent_list *out;
  uint64_t pos, end;
  int err;
};

static int extent_cb(void *arg, const char *ctx, uint64_t off, uint32_t *e, size_t ne, int *error)
{
  struct bs_ctx *b = arg;
  if (strcmp(ctx, LIBNBD_CONTEXT_BASE_ALLOCATION))
    return 0;
  for (size_t i = 0; i + 1 < ne && b->pos < b->end; i += 2) {
    uint64_t len = e[i];
    if (len > b->end - b->pos)
      len = b->end - b->pos;
    uint32_t f = (e[i + 1] & LIBNBD_STATE_HOLE ? TS_EXTENT_HOLE : 0) |
                 (e[i + 1] & LIBNBD_STATE_ZERO ? TS_EXTENT_ZERO : 0);
    if (len && ts_extent_list_add(b->out, b->pos, len, f)) {
      b->err = -ENOMEM;
      return -1;
    }
    b->pos += len;
  }
  return 0;
}

static int nbd_layer_block_status(ts_layer *l, uint64_t off, uint64_t len, ts_extent_list *out)
{
  struct nbd_layer *n = ts_layer_priv(l);
  if (!n->can_bs)
    return ts_extent_list_add(out, off, len, 0);
  if (len > (1u << 30))
    len = 1u << 30; /* NBD counts are 32-bit; the core asks for the rest */
  struct bs_ctx b = { out, off, off + len, 0 };
  unsigned i = take(n);
  int rc = nbd_block_status(n->h[i], len, off, (nbd_extent_callback){ .callback = extent_cb,
                                                                       .user_data = &b }, 0);
  rc = rc < 0 ? nbd_err() : 0;
  give(n, i);
  if (b.err)
    return b.err;
  if (rc)
    return rc;
  if (b.pos == off) /* a server must describe at least one extent */
    return -EIO;
  return 0;
}

static int nbd_layer_status(ts_layer *l, json_t *out)
{
  struct nbd_layer *n = ts_layer_priv(l);
  json_object_set_new(out, "uri", json_string(n->uri));
  json_object_set_new(out, "connections", json_integer(n->nconn));
  json_object_set_new(out, "fast_zero", json_boolean(n->can_fast_zero));
  json_object_set_new(out, "base_allocation", json_boolean(n->can_bs));
  return 0;
}

const ts_layer_type ts__nbd_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "nbd",
  .summary = "a remote NBD export through libnbd",
  .params = nbd_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = nbd_layer_open,
  .close = nbd_layer_close,
  .limits = nbd_layer_limits,
  .submit = nbd_layer_submit,
  .block_status = nbd_layer_block_status,
  .status = nbd_layer_status,
};
#else
typedef int ts__nbd_unavailable;
#endif
