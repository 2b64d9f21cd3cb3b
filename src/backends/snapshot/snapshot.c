/* snapshot-origin and snapshot: dm-snapshot's two targets.
 *
 *   "origin": { "type": "snapshot-origin", "child": "base" }
 *   "snap1":  { "type": "snapshot", "origin": "origin", "cow": "cow1",
 *               "chunk_size": "4K", "persistent": true, "create": true,
 *               "discard_zeroes_cow": false }
 *
 * snapshot-origin passes everything to its child, except that a write (or
 * WRITE_ZEROES) first copies each chunk it touches into every valid snapshot
 * that has no exception for it yet; DISCARD is not supported (the kernel's
 * origin target takes none). A snapshot names the origin node (a shared
 * child, so several snapshots may share one origin) and its own COW layer; it
 * reads a chunk from the COW device when it has an exception, else from the
 * origin's child, and writes always land in exceptions. The persistent store
 * is the kernel's "P" format (store.c), so a COW file can be handed to
 * dmsetup. A full COW device invalidates the snapshot, as in the kernel.
 *
 * Locking. Snapshots register with their origin when they open (the origin,
 * being a child, opens first) and leave when they close; the list is fixed
 * while requests run. An origin write holds the chunk-aligned range it
 * touches exclusively in the origin's range lock while it copies chunks out
 * and writes; snapshot I/O that needs origin data holds its range shared, so
 * it never sees a chunk change under a copy or a read. Within a snapshot,
 * store_mu serialises allocation, copy and commit (so records go to disk in
 * allocation order and one chunk is never copied twice), and table_lock lets
 * readers look exceptions up meanwhile. An exception enters the table only
 * after its record is durable. Order: origin list, origin range, store_mu,
 * table_lock.
 */
#include "backends/snapshot/snap-internal.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------- */
/* Range lock: shared/exclusive holds on byte ranges of the origin          */

struct range_hold {
  uint64_t start, end;
  bool excl;
  struct range_hold *next;
};

struct range_lock {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct range_hold *held;
};

static bool range_conflicts(const struct range_lock *rl, const struct range_hold *h)
{
  for (const struct range_hold *o = rl->held; o; o = o->next)
    if (o->start < h->end && h->start < o->end && (o->excl || h->excl))
      return true;
  return false;
}

static void range_lock(struct range_lock *rl, struct range_hold *h, uint64_t start, uint64_t end,
                       bool excl)
{
  h->start = start;
  h->end = end;
  h->excl = excl;
  pthread_mutex_lock(&rl->mu);
  while (range_conflicts(rl, h))
    pthread_cond_wait(&rl->cv, &rl->mu);
  h->next = rl->held;
  rl->held = h;
  pthread_mutex_unlock(&rl->mu);
}

static void range_unlock(struct range_lock *rl, struct range_hold *h)
{
  pthread_mutex_lock(&rl->mu);
  for (struct range_hold **p = &rl->held; *p; p = &(*p)->next)
    if (*p == h) {
      *p = h->next;
      break;
    }
  pthread_cond_broadcast(&rl->cv);
  pthread_mutex_unlock(&rl->mu);
}

/* ---------------------------------------------------------------------- */
/* State                                                                    */

struct snapshot;

struct origin {
  ts_layer *node;
  ts_layer *child;
  uint64_t size;
  pthread_rwlock_t list_lock;  /* written only while snapshots open and close */
  struct snapshot **snaps;
  size_t nsnaps;
  uint32_t max_chunk;          /* largest chunk of the registered snapshots */
  struct range_lock rl;
  _Atomic uint64_t copy_writes;  /* writes that had to copy chunks out first */
};

struct snapshot {
  ts_layer *node;
  struct origin *origin;
  ts_layer *base;              /* the origin's child: unchanged chunks are read there */
  ts_layer *cow;
  struct ts__snap_store st;    /* under store_mu; st.table also under table_lock */
  pthread_mutex_t store_mu;
  pthread_rwlock_t table_lock;
  _Atomic bool valid;
  bool discard_zeroes_cow;
  uint64_t size;
  uint32_t chunk;
  char why[256];               /* set once, before valid turns false */
  _Atomic uint64_t copies;     /* chunks copied from the origin */
};

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

static bool snap_lookup(struct snapshot *s, uint64_t c, uint64_t *nc)
{
  pthread_rwlock_rdlock(&s->table_lock);
  bool m = ts__snap_table_lookup(&s->st.table, c, nc);
  pthread_rwlock_unlock(&s->table_lock);
  return m;
}

static bool all_mapped(struct snapshot *s, uint64_t c0, uint64_t c1)
{
  bool all = true;
  pthread_rwlock_rdlock(&s->table_lock);
  for (uint64_t c = c0; c < c1 && all; c++)
    all = ts__snap_table_lookup(&s->st.table, c, NULL);
  pthread_rwlock_unlock(&s->table_lock);
  return all;
}

/* Invalidate with store_mu held: the header says so before anything that
 * depends on it (an origin write) proceeds. */
static void invalidate_locked(struct snapshot *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void invalidate_locked(struct snapshot *s, const char *fmt, ...)
{
  if (!atomic_load(&s->valid))
    return;
  char reason[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  int r = ts__snap_store_invalidate(&s->st);
  snprintf(s->why, sizeof s->why, "%s%s%s", reason,
           r ? "; the header could not be marked invalid: " : "", r ? ts_strerror(r) : "");
  atomic_store(&s->valid, false);
  ts_layer_event(s->node, "invalidated", "%s", s->why);
}

static int commit_batch(struct snapshot *s, const struct ts__snap_exc *v, size_t n)
{
  int r = ts__snap_store_commit(&s->st, v, n);
  if (r)
    return r;
  pthread_rwlock_wrlock(&s->table_lock);
  for (size_t i = 0; i < n && !r; i++)
    r = ts__snap_table_insert(&s->st.table, v[i].old, v[i].new_chunk);
  pthread_rwlock_unlock(&s->table_lock);
  return r;
}

enum purpose { FOR_WRITE, FOR_PROVISION };

#define BATCH 256

/* Give chunks [c0, c1) exceptions. A new COW chunk gets the origin's data,
 * with the part `wr` covers laid over it (a snapshot write); a chunk that has
 * an exception already gets `wr`'s part written in place. The caller holds
 * the origin range over these chunks, so their origin data cannot change
 * during the copy. Exceptions made before a failure are committed. Returns
 * -EIO if the snapshot is invalid, -ENOSPC when the COW device is full, or
 * the I/O error met; any failure of a write invalidates the snapshot, while
 * a provision that runs out of space leaves it valid. */
static int make_exceptions(struct snapshot *s, uint64_t c0, uint64_t c1, const ts_io *wr,
                           enum purpose why)
{
  uint32_t cs = s->chunk;
  struct ts__snap_exc batch[BATCH];
  size_t nb = 0;
  unsigned char *buf = NULL;
  int r = 0;
  uint64_t failed_chunk = c0;
  pthread_mutex_lock(&s->store_mu);
  if (!atomic_load(&s->valid)) {
    pthread_mutex_unlock(&s->store_mu);
    return -EIO;
  }
  for (uint64_t c = c0; c < c1 && !r; c++) {
    uint64_t start = c * cs, end = min_u64(start + cs, s->size), ws = 0, we = 0, nc;
    failed_chunk = c;
    if (wr) {
      ws = max_u64(wr->offset, start);
      we = min_u64(wr->offset + wr->length, end);
    }
    /* Only store_mu holders change the table, so no table_lock here. */
    if (ts__snap_table_lookup(&s->st.table, c, &nc)) {
      if (ws < we)
        r = ts_layer_submit_slice(s->cow, TS_OP_WRITE, wr->flags, nc * cs + (ws - start), wr,
                                  ws - wr->offset, we - ws);
      continue;
    }
    r = ts__snap_store_alloc(&s->st, &nc);
    if (r)
      break;
    if (!buf && !(buf = malloc(cs))) {
      r = -ENOMEM;
      break;
    }
    if (!(ws == start && we == end)) {
      r = ts_pread(s->base, buf, end - start, start);
      atomic_fetch_add_explicit(&s->copies, 1, memory_order_relaxed);
    }
    if (!r) {
      if (end - start < cs)
        memset(buf + (end - start), 0, cs - (end - start));
      if (ws < we)
        ts_iov_to_buf(wr->iov, wr->iovcnt, ws - wr->offset, buf + (ws - start), we - ws);
      r = ts_pwrite(s->cow, buf, cs, nc * cs, 0);
    }
    if (r)
      break;
    batch[nb++] = (struct ts__snap_exc){ c, nc };
    if (nb == BATCH) {
      r = commit_batch(s, batch, nb);
      nb = 0;
    }
  }
  if (nb) {
    int r2 = commit_batch(s, batch, nb);
    if (!r)
      r = r2;
  }
  if (r == -ENOSPC && why == FOR_WRITE)
    invalidate_locked(s, "the COW device \"%s\" is full (%llu chunks of %u bytes)",
                      ts_dev_name(s->cow), (unsigned long long)s->st.cow_chunks, cs);
  else if (r && r != -ENOSPC)
    invalidate_locked(s, "making the exception for origin chunk %llu failed: %s",
                      (unsigned long long)failed_chunk, ts_strerror(r));
  pthread_mutex_unlock(&s->store_mu);
  free(buf);
  return r;
}

/* ---------------------------------------------------------------------- */
/* snapshot-origin                                                          */

static const ts_param origin_params[] = {
  { "child", TS_PARAM_CHILD, TS_PARAM_REQUIRED, NULL, NULL, "the origin device" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static int origin_open(ts_layer *l, const json_t *params, ts_error *err)
{
  struct origin *o = calloc(1, sizeof *o);
  if (!o)
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  o->node = l;
  o->child = ts_layer_child(l, ts_param_string(params, "child", ""));
  o->size = ts_dev_size(o->child);
  pthread_rwlock_init(&o->list_lock, NULL);
  pthread_mutex_init(&o->rl.mu, NULL);
  pthread_cond_init(&o->rl.cv, NULL);
  ts_layer_set_priv(l, o);
  return 0;
}

static void origin_close(ts_layer *l)
{
  struct origin *o = ts_layer_priv(l);
  if (!o)
    return;
  pthread_rwlock_destroy(&o->list_lock);
  pthread_mutex_destroy(&o->rl.mu);
  pthread_cond_destroy(&o->rl.cv);
  free(o->snaps);
  free(o);
}

static int origin_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  struct origin *o = ts_layer_priv(l);
  lim->size = o->size;
  /* dm-snapshot's origin target takes no discards: one would destroy data
   * the snapshots still read, and copying it out first would spend COW space
   * to free origin space. */
  lim->max_discard_bytes = 0;
  lim->discard_granularity = 0;
  lim->discard_zeroes = false;
  return 0;
}

static int origin_register(struct origin *o, struct snapshot *s)
{
  pthread_rwlock_wrlock(&o->list_lock);
  struct snapshot **v = realloc(o->snaps, (o->nsnaps + 1) * sizeof *v);
  if (v) {
    o->snaps = v;
    v[o->nsnaps++] = s;
    if (s->chunk > o->max_chunk)
      o->max_chunk = s->chunk;
  }
  pthread_rwlock_unlock(&o->list_lock);
  return v ? 0 : -ENOMEM;
}

static void origin_unregister(struct origin *o, struct snapshot *s)
{
  pthread_rwlock_wrlock(&o->list_lock);
  size_t k = 0;
  o->max_chunk = 0;
  for (size_t i = 0; i < o->nsnaps; i++) {
    if (o->snaps[i] == s)
      continue;
    o->snaps[k++] = o->snaps[i];
    if (o->snaps[i]->chunk > o->max_chunk)
      o->max_chunk = o->snaps[i]->chunk;
  }
  o->nsnaps = k;
  pthread_rwlock_unlock(&o->list_lock);
}

/* WRITE or WRITE_ZEROES: copy the touched chunks out to every snapshot that
 * lacks them, then let the write through. A snapshot that cannot take the
 * copy is invalidated (durably, first); the origin write still proceeds. */
static int origin_write(struct origin *o, const ts_io *io)
{
  pthread_rwlock_rdlock(&o->list_lock);
  if (o->nsnaps == 0) {
    pthread_rwlock_unlock(&o->list_lock);
    return ts_submit(o->child, io);
  }
  uint64_t end = io->offset + io->length, mc = o->max_chunk;
  struct range_hold h;
  range_lock(&o->rl, &h, io->offset / mc * mc, min_u64((end + mc - 1) / mc * mc, o->size), true);
  bool copied = false;
  for (size_t i = 0; i < o->nsnaps; i++) {
    struct snapshot *s = o->snaps[i];
    uint64_t cs = s->chunk, c0 = io->offset / cs, c1 = (end + cs - 1) / cs;
    if (!atomic_load(&s->valid) || all_mapped(s, c0, c1))
      continue;
    copied = true;
    make_exceptions(s, c0, c1, NULL, FOR_WRITE); /* failure invalidated s */
  }
  if (copied)
    atomic_fetch_add_explicit(&o->copy_writes, 1, memory_order_relaxed);
  int r = ts_submit(o->child, io);
  range_unlock(&o->rl, &h);
  pthread_rwlock_unlock(&o->list_lock);
  return r;
}

static int origin_submit(ts_layer *l, const ts_io *io)
{
  struct origin *o = ts_layer_priv(l);
  switch (io->op) {
  case TS_OP_WRITE:
  case TS_OP_WRITE_ZEROES:
    return origin_write(o, io);
  case TS_OP_DISCARD:
    assert(!"discard reached snapshot-origin"); /* limits say unsupported */
    return -EOPNOTSUPP;
  default:
    /* READ; FLUSH (every exception is durable before the write that made it
     * completes, so there is nothing of the snapshots' to commit); PROVISION
     * (it changes no data, so no snapshot needs a copy). */
    return ts_submit(o->child, io);
  }
}

static int origin_block_status(ts_layer *l, uint64_t off, uint64_t len, ts_extent_list *out)
{
  struct origin *o = ts_layer_priv(l);
  return ts_block_status(o->child, off, len, out);
}

static int origin_status(ts_layer *l, json_t *out)
{
  struct origin *o = ts_layer_priv(l);
  json_t *a = json_array();
  pthread_rwlock_rdlock(&o->list_lock);
  for (size_t i = 0; i < o->nsnaps; i++)
    json_array_append_new(a, json_string(ts_dev_name(o->snaps[i]->node)));
  pthread_rwlock_unlock(&o->list_lock);
  json_object_set_new(out, "snapshots", a);
  json_object_set_new(out, "writes_with_copy_out",
                      json_integer((json_int_t)atomic_load(&o->copy_writes)));
  json_object_set_new(out, "discard", json_string("unsupported (as dm-snapshot's origin)"));
  return 0;
}

static char *origin_dm_table(ts_layer *l)
{
  struct origin *o = ts_layer_priv(l);
  char *s = NULL;
  if (asprintf(&s, "0 %llu snapshot-origin <%s>", (unsigned long long)(o->size / 512),
               ts_dev_name(o->child)) < 0)
    return NULL;
  return s;
}

const ts_layer_type ts__snapshot_origin_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "snapshot-origin",
  .summary = "the origin of dm-snapshot snapshots: writes copy old chunks out first",
  .params = origin_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = origin_open,
  .close = origin_close,
  .limits = origin_limits,
  .submit = origin_submit,
  .block_status = origin_block_status,
  .status = origin_status,
  .dm_table = origin_dm_table,
};

/* ---------------------------------------------------------------------- */
/* snapshot                                                                 */

static const ts_param snapshot_params[] = {
  { "origin", TS_PARAM_CHILD, TS_PARAM_REQUIRED | TS_PARAM_SHARED, NULL, NULL,
    "the snapshot-origin layer this is a snapshot of" },
  { "cow", TS_PARAM_CHILD, TS_PARAM_REQUIRED, NULL, NULL, "the COW device holding the exceptions" },
  { "chunk_size", TS_PARAM_SIZE, 0, NULL, NULL,
    "exception unit, a power of two from 4K to 512K (default: the store's, or 16K)" },
  { "persistent", TS_PARAM_BOOL, 0, NULL, NULL,
    "keep exceptions on the COW device (\"P\", default) or only in memory (\"N\")" },
  { "create", TS_PARAM_BOOL, 0, NULL, NULL, "initialise a blank COW device" },
  { "discard_zeroes_cow", TS_PARAM_BOOL, 0, NULL, NULL,
    "accept discards: whole chunks with an exception are zeroed" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static int snapshot_open(ts_layer *l, const json_t *params, ts_error *err)
{
  const char *oname = ts_param_string(params, "origin", "");
  ts_layer *on = ts_layer_child(l, oname);
  ts_layer *cow = ts_layer_child(l, ts_param_string(params, "cow", ""));
  if (strcmp(ts_dev_type(on), "snapshot-origin") != 0)
    return ts_layer_error(l, err, -EINVAL, "origin",
                          "\"%s\" is a %s layer; a snapshot needs a snapshot-origin layer, "
                          "e.g. { \"type\": \"snapshot-origin\", \"child\": \"%s\" }, so that "
                          "writes to the origin copy chunks out first",
                          oname, ts_dev_type(on), oname);
  struct origin *o = ts_layer_priv(on);
  /* Origin writes must be able to record their copies, or the snapshot
   * would silently change under them. */
  if (ts_dev_limits(cow)->read_only && !ts_dev_limits(on)->read_only)
    return ts_layer_error(l, err, -EROFS, "cow",
                          "\"%s\" is read-only but the origin \"%s\" is writable: origin writes "
                          "could not copy their chunks out",
                          ts_dev_name(cow), oname);
  bool has_chunk = json_object_get(params, "chunk_size") != NULL;
  uint64_t chunk = ts_param_size(params, "chunk_size", 0);
  uint32_t lbs = ts_dev_limits(o->child)->logical_block_size;
  if (ts_dev_limits(cow)->logical_block_size > lbs)
    lbs = ts_dev_limits(cow)->logical_block_size;
  if (has_chunk && (chunk < TS_SNAP_MIN_CHUNK || chunk > TS_SNAP_MAX_CHUNK || (chunk & (chunk - 1))))
    return ts_layer_error(l, err, -EINVAL, "chunk_size", "must be a power of two from 4K to 512K");
  if (has_chunk && chunk < lbs)
    return ts_layer_error(l, err, -EINVAL, "chunk_size",
                          "%llu is below the logical block size %u of the origin or COW device",
                          (unsigned long long)chunk, lbs);

  struct snapshot *s = calloc(1, sizeof *s);
  if (!s)
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  struct ts__snap_store_params p = {
    .persistent = ts_param_bool(params, "persistent", true),
    .create = ts_param_bool(params, "create", false),
    .read_only = ts_dev_limits(cow)->read_only || ts_layer_force_read_only(l),
    .chunk = (uint32_t)chunk,
    .min_chunk = lbs,
    .origin_size = o->size,
  };
  int r = ts__snap_store_open(&s->st, l, cow, &p, err);
  if (r) {
    free(s);
    return r;
  }
  s->node = l;
  s->origin = o;
  s->base = o->child;
  s->cow = cow;
  s->size = o->size;
  s->chunk = s->st.chunk;
  s->discard_zeroes_cow = ts_param_bool(params, "discard_zeroes_cow", false);
  atomic_store(&s->valid, s->st.valid);
  if (!s->st.valid)
    snprintf(s->why, sizeof s->why,
             "the exception store's header says invalid (it overflowed or failed earlier)");
  pthread_mutex_init(&s->store_mu, NULL);
  pthread_rwlock_init(&s->table_lock, NULL);
  r = origin_register(o, s);
  if (r) {
    pthread_mutex_destroy(&s->store_mu);
    pthread_rwlock_destroy(&s->table_lock);
    ts__snap_store_close(&s->st);
    free(s);
    return ts_layer_error(l, err, r, NULL, "out of memory");
  }
  ts_layer_set_priv(l, s);
  return 0;
}

static void snapshot_close(ts_layer *l)
{
  struct snapshot *s = ts_layer_priv(l);
  if (!s)
    return;
  origin_unregister(s->origin, s);
  pthread_mutex_destroy(&s->store_mu);
  pthread_rwlock_destroy(&s->table_lock);
  ts__snap_store_close(&s->st);
  free(s);
}

static int snapshot_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  struct snapshot *s = ts_layer_priv(l);
  const ts_limits *cl = ts_dev_limits(s->cow);
  lim->size = s->size;
  /* The origin is only read: only the COW device decides writability. */
  lim->read_only = cl->read_only;
  lim->fua = cl->fua;
  /* WRITE_ZEROES becomes zero writes into exceptions (the core emulates it). */
  lim->max_write_zeroes_bytes = 0;
  lim->write_zeroes_unmap = false;
  lim->max_provision_bytes = (uint64_t)s->chunk * 1024;
  lim->provision_granularity = s->chunk;
  if (s->discard_zeroes_cow) {
    /* As the kernel: discards are split per chunk. */
    lim->max_discard_bytes = s->chunk;
    lim->discard_granularity = s->chunk;
  } else {
    lim->max_discard_bytes = 0;
    lim->discard_granularity = 0;
  }
  lim->discard_zeroes = false;
  return 0;
}

/* READ, or a WRITE whose chunks all have exceptions: runs of chunks go to the
 * COW device (consecutive exceptions in one request) or, for a READ, the
 * origin's child. */
static int snapshot_rw_runs(struct snapshot *s, const ts_io *io)
{
  uint64_t cs = s->chunk, pos = io->offset, end = io->offset + io->length;
  while (pos < end) {
    uint64_t c = pos / cs, nc = 0, nc2 = 0;
    bool m = snap_lookup(s, c, &nc);
    uint64_t run_end = min_u64((c + 1) * cs, end);
    while (run_end < end) {
      uint64_t c2 = run_end / cs;
      bool m2 = snap_lookup(s, c2, &nc2);
      if (m2 != m || (m && nc2 != nc + (c2 - c)))
        break;
      run_end = min_u64(run_end + cs, end);
    }
    assert(m || io->op == TS_OP_READ);
    int r = ts_layer_submit_slice(m ? s->cow : s->base, io->op, io->flags,
                                  m ? nc * cs + pos % cs : pos, io, pos - io->offset,
                                  run_end - pos);
    if (r)
      return r;
    pos = run_end;
  }
  return 0;
}

static int snapshot_read(struct snapshot *s, const ts_io *io)
{
  uint64_t cs = s->chunk, end = io->offset + io->length;
  if (all_mapped(s, io->offset / cs, (end + cs - 1) / cs))
    return snapshot_rw_runs(s, io);
  /* Some data comes from the origin: keep origin writes off it meanwhile. */
  struct range_hold h;
  range_lock(&s->origin->rl, &h, io->offset, end, false);
  int r = snapshot_rw_runs(s, io);
  range_unlock(&s->origin->rl, &h);
  return r;
}

/* WRITE (with wr) or PROVISION (without). */
static int snapshot_make(struct snapshot *s, uint64_t off, uint64_t len, const ts_io *wr,
                         enum purpose why)
{
  uint64_t cs = s->chunk, c0 = off / cs, c1 = (off + len + cs - 1) / cs;
  struct range_hold h;
  range_lock(&s->origin->rl, &h, c0 * cs, min_u64(c1 * cs, s->size), false);
  int r = make_exceptions(s, c0, c1, wr, why);
  range_unlock(&s->origin->rl, &h);
  return r;
}

/* discard_zeroes_cow: a whole chunk with an exception is zeroed; part of one
 * is discarded on the COW device (if it takes discards); a chunk without an
 * exception is left alone, as a copy would cost space to free none. */
static int snapshot_discard(struct snapshot *s, const ts_io *io)
{
  uint64_t cs = s->chunk, pos = io->offset, end = io->offset + io->length;
  while (pos < end) {
    uint64_t c = pos / cs, start = c * cs, cend = min_u64(start + cs, s->size), nc;
    uint64_t e = min_u64(cend, end);
    int r = 0;
    if (snap_lookup(s, c, &nc)) {
      if (pos == start && e == cend)
        r = ts_write_zeroes(s->cow, nc * cs, cs, 0);
      else if (ts_limits_cap(ts_dev_limits(s->cow), TS_OP_DISCARD) != TS_CAP_NONE)
        r = ts_discard(s->cow, nc * cs + (pos - start), e - pos);
    }
    if (r)
      return r;
    pos = e;
  }
  return 0;
}

static int snapshot_submit(ts_layer *l, const ts_io *io)
{
  struct snapshot *s = ts_layer_priv(l);
  if (io->op == TS_OP_FLUSH)
    return ts_flush(s->cow);
  if (!atomic_load(&s->valid))
    return -EIO;
  uint64_t cs = s->chunk, end = io->offset + io->length;
  switch (io->op) {
  case TS_OP_READ:
    return snapshot_read(s, io);
  case TS_OP_WRITE:
    if (all_mapped(s, io->offset / cs, (end + cs - 1) / cs))
      return snapshot_rw_runs(s, io);
    return snapshot_make(s, io->offset, io->length, io, FOR_WRITE);
  case TS_OP_PROVISION:
    if (all_mapped(s, io->offset / cs, (end + cs - 1) / cs))
      return 0;
    return snapshot_make(s, io->offset, io->length, NULL, FOR_PROVISION);
  case TS_OP_DISCARD:
    return snapshot_discard(s, io);
  default:
    return -EOPNOTSUPP; /* WRITE_ZEROES is emulated by the core: limits say so */
  }
}

static int snapshot_block_status(ts_layer *l, uint64_t off, uint64_t len, ts_extent_list *out)
{
  struct snapshot *s = ts_layer_priv(l);
  if (!atomic_load(&s->valid))
    return -EIO;
  uint64_t cs = s->chunk, pos = off, end = off + len;
  while (pos < end) {
    uint64_t c = pos / cs;
    bool m = snap_lookup(s, c, NULL);
    uint64_t run_end = min_u64((c + 1) * cs, end);
    while (run_end < end && snap_lookup(s, run_end / cs, NULL) == m)
      run_end = min_u64(run_end + cs, end);
    int r;
    if (m) {
      r = ts_extent_list_add(out, pos, run_end - pos, 0);
    } else {
      ts_extent_list tmp = { 0 };
      r = ts_block_status(s->base, pos, run_end - pos, &tmp);
      for (size_t i = 0; !r && i < tmp.n; i++)
        r = ts_extent_list_add(out, tmp.v[i].offset, tmp.v[i].length, tmp.v[i].flags);
      ts_extent_list_free(&tmp);
    }
    if (r)
      return r;
    pos = run_end;
  }
  return 0;
}

static int snapshot_status(ts_layer *l, json_t *out)
{
  struct snapshot *s = ts_layer_priv(l);
  pthread_mutex_lock(&s->store_mu);
  const struct ts__snap_store *st = &s->st;
  bool valid = atomic_load(&s->valid);
  uint64_t alloc = ts__snap_store_sectors_allocated(st), meta = ts__snap_store_metadata_sectors(st);
  uint64_t total = ts_dev_size(s->cow) / 512;
  char line[96];
  if (valid)
    snprintf(line, sizeof line, "%llu/%llu %llu", (unsigned long long)alloc,
             (unsigned long long)total, (unsigned long long)meta);
  else
    snprintf(line, sizeof line, "Invalid");
  json_object_set_new(out, "store", json_string(st->persistent ? "persistent" : "transient"));
  json_object_set_new(out, "chunk_size", json_integer(st->chunk));
  json_object_set_new(out, "valid", json_boolean(valid));
  json_object_set_new(out, "state", json_string(valid ? "valid" : "invalid"));
  if (!valid)
    json_object_set_new(out, "invalid_reason", json_string(s->why));
  json_object_set_new(out, "exceptions", json_integer((json_int_t)st->table.n));
  json_object_set_new(out, "stray_records", json_integer((json_int_t)st->stray));
  json_object_set_new(out, "chunks_used", json_integer((json_int_t)st->next_free));
  json_object_set_new(out, "chunks_total", json_integer((json_int_t)st->cow_chunks));
  json_object_set_new(out, "sectors_allocated", json_integer((json_int_t)alloc));
  json_object_set_new(out, "total_sectors", json_integer((json_int_t)total));
  json_object_set_new(out, "metadata_sectors", json_integer((json_int_t)meta));
  json_object_set_new(out, "chunks_copied", json_integer((json_int_t)atomic_load(&s->copies)));
  json_object_set_new(out, "dm_status", json_string(line));
  pthread_mutex_unlock(&s->store_mu);
  return 0;
}

static char *snapshot_dm_table(ts_layer *l)
{
  struct snapshot *s = ts_layer_priv(l);
  char *line = NULL;
  /* The kernel's snapshot line names the real origin device, as LVM's
   * "-real" volume, not the snapshot-origin device. */
  if (asprintf(&line, "0 %llu snapshot <%s> <%s> %s %u%s", (unsigned long long)(s->size / 512),
               ts_dev_name(s->base), ts_dev_name(s->cow), s->st.persistent ? "P" : "N",
               s->chunk / 512, s->discard_zeroes_cow ? " 1 discard_zeroes_cow" : "") < 0)
    return NULL;
  return line;
}

const ts_layer_type ts__snapshot_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "snapshot",
  .summary = "a dm-snapshot snapshot of a snapshot-origin, exceptions on a COW device",
  .params = snapshot_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = snapshot_open,
  .close = snapshot_close,
  .limits = snapshot_limits,
  .submit = snapshot_submit,
  .block_status = snapshot_block_status,
  .status = snapshot_status,
  .dm_table = snapshot_dm_table,
};
