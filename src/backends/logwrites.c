/* log-writes: pass every request to a child and record each write, discard
 * and flush, in the order they completed, on a log device in the format of
 * the kernel's dm-log-writes, so that `thinstack replay-log` (or xfstests'
 * replay-log) can rebuild the child as it was at any point of the log.
 *
 *   { "type": "log-writes", "child": "meta", "log": "metalog" }
 *
 * The log (facts from drivers/md/dm-log-writes.c): blocks of `sectorsize`
 * bytes, the child's logical block size. Block 0 is the super block (magic,
 * version 1, number of entries, sectorsize; little-endian). Entries follow
 * from block 1: one block holding {sector, nr_sectors, flags, data_len} (in
 * sectorsize units; a mark's text after the entry in the same block), then
 * for a write its nr_sectors blocks of data. Flags: FLUSH 1, FUA 2,
 * DISCARD 4, MARK 8.
 *
 * In the kernel's order: a plain write or a discard that completed waits
 * in memory (with a copy of its data) until the next flush that follows it
 * completes; that flush then logs the writes that completed before it was
 * submitted, in completion order, and then itself. A FUA write is logged as
 * soon as it completed and a mark as soon as it is asked for, so a mark
 * right after an unflushed write comes before that write in the log.
 * Closing logs what still waits, then the mark "dm-log-writes-end". The
 * super block is rewritten after each FUA write, flush and mark, which
 * makes those entries count. A log that fills up, or fails, stops logging
 * (an event says so) while requests go on. Unlike the kernel the log starts
 * empty at open and is flushed with every flush entry, so it survives a
 * crash as far as the child's data does. PROVISION passes through unlogged
 * (it changes no data); WRITE_ZEROES is left to the core, which turns it
 * into zero writes. Format: docs/formats/dm-log-writes.md.
 */
#include <libthinstack/layer.h>

#include "backends/logwrites.h"
#include "core/le.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define LW_END_MARK "dm-log-writes-end"

/* A completed write or discard waiting for the flush that logs it. */
struct lw_pending {
  struct lw_pending *next;
  uint32_t flags;
  uint64_t sector, nr;
  unsigned char *data; /* a write's data; NULL for a discard */
};

struct lw_layer {
  ts_layer *child, *log;
  uint32_t ss;             /* the log's block size: the child's logical block size */
  uint64_t log_size;
  pthread_mutex_t mu;      /* orders appends: the log is in completion order */
  uint64_t next;           /* byte offset of the next entry */
  uint64_t entries;
  bool enabled;
  int stop_reason;         /* why logging stopped: -ENOSPC (full) or an I/O error */
  unsigned char *block;    /* one entry block */
  struct lw_pending *pending, **pending_tail; /* under mu, in completion order */
  uint64_t npending;
};

static const ts_param lw_params[] = {
  { "child", TS_PARAM_CHILD, TS_PARAM_REQUIRED, NULL, NULL, "the device whose writes are logged" },
  { "log", TS_PARAM_CHILD, TS_PARAM_REQUIRED, NULL, NULL, "the log device (rewritten from its start)" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

/* Under mu. */
static int write_super(struct lw_layer *w)
{
  memset(w->block, 0, w->ss);
  ts__put64(w->block + LW_SUPER_MAGIC, LW_MAGIC);
  ts__put64(w->block + LW_SUPER_VERSION, LW_VERSION);
  ts__put64(w->block + LW_SUPER_ENTRIES, w->entries);
  ts__put32(w->block + LW_SUPER_SECTORSIZE, w->ss);
  return ts_pwrite(w->log, w->block, w->ss, 0, 0);
}

/* Under mu: stop logging for good, once, saying why. */
static void stop_logging(ts_layer *l, struct lw_layer *w, int why)
{
  if (!w->enabled)
    return;
  w->enabled = false;
  w->stop_reason = why;
  /* The log device itself still works: make what fitted count. */
  if (why == -ENOSPC && write_super(w) == 0)
    (void)ts_flush(w->log);
  if (why == -ENOSPC)
    ts_layer_event(l, "log-full", "the log device is full after %llu entries: logging stopped",
                   (unsigned long long)w->entries);
  else
    ts_layer_event(l, "log-failed", "writing the log failed (%s): logging stopped",
                   ts_strerror(why));
}

/* Append one entry: `nr` blocks at child block `sector`, with the data in
 * `iov` (writes) or none (discard, flush), or a mark's text. A log error
 * stops logging rather than failing the request, as the kernel does. */
static void append_locked(ts_layer *l, struct lw_layer *w, uint32_t flags, uint64_t sector,
                          uint64_t nr, const struct iovec *iov, int iovcnt, const char *mark)
{
  if (!w->enabled)
    return;
  uint64_t data = iov ? nr * w->ss : 0;
  if (w->next + w->ss + data > w->log_size) {
    stop_logging(l, w, -ENOSPC);
    return;
  }
  size_t mlen = mark ? strlen(mark) : 0;
  memset(w->block, 0, w->ss);
  ts__put64(w->block + LW_ENTRY_SECTOR, sector);
  ts__put64(w->block + LW_ENTRY_NR, nr);
  ts__put64(w->block + LW_ENTRY_FLAGS, flags);
  ts__put64(w->block + LW_ENTRY_DATA_LEN, mlen);
  if (mlen)
    memcpy(w->block + LW_ENTRY_SIZE, mark, mlen);
  int r = ts_pwrite(w->log, w->block, w->ss, w->next, 0);
  if (!r && iov) {
    ts_io io = { .op = TS_OP_WRITE, .offset = w->next + w->ss, .length = data, .iov = iov,
                 .iovcnt = iovcnt };
    r = ts_submit(w->log, &io);
  }
  if (!r) {
    w->next += w->ss + data;
    w->entries++;
    /* These entries count once the super block says so; make them last as
     * long as what they describe. */
    if (flags & (LW_FUA | LW_FLUSH | LW_MARK)) {
      r = write_super(w);
      if (!r && (flags & (LW_FUA | LW_FLUSH)))
        r = ts_flush(w->log);
    }
  }
  if (r)
    stop_logging(l, w, r);
}

static void append(ts_layer *l, struct lw_layer *w, uint32_t flags, uint64_t sector, uint64_t nr,
                   const struct iovec *iov, int iovcnt, const char *mark)
{
  pthread_mutex_lock(&w->mu);
  append_locked(l, w, flags, sector, nr, iov, iovcnt, mark);
  pthread_mutex_unlock(&w->mu);
}

/* Under mu: log a list of waiting entries in order and free them. */
static void log_pending_locked(ts_layer *l, struct lw_layer *w, struct lw_pending *p)
{
  while (p) {
    struct lw_pending *next = p->next;
    struct iovec iov = { .iov_base = p->data, .iov_len = (size_t)(p->nr * w->ss) };
    append_locked(l, w, p->flags, p->sector, p->nr, p->data ? &iov : NULL, 1, NULL);
    free(p->data);
    free(p);
    p = next;
  }
}

/* Keep a completed plain write or discard, with a copy of the data (the
 * caller may reuse its buffers once the request completed), for the next
 * flush. Out of memory stops logging: a log missing a write would replay to
 * a state the device never was in. */
static void add_pending(ts_layer *l, struct lw_layer *w, uint32_t flags, const ts_io *io)
{
  struct lw_pending *p = calloc(1, sizeof *p);
  bool ok = p != NULL;
  if (ok && io->op == TS_OP_WRITE) {
    p->data = malloc(io->length ? io->length : 1);
    ok = p->data != NULL;
    size_t at = 0;
    for (int i = 0; ok && i < io->iovcnt && at < io->length; i++) {
      size_t n = io->iov[i].iov_len < io->length - at ? io->iov[i].iov_len : io->length - at;
      memcpy(p->data + at, io->iov[i].iov_base, n);
      at += n;
    }
  }
  pthread_mutex_lock(&w->mu);
  if (!ok || !w->enabled) {
    if (!ok)
      stop_logging(l, w, -ENOMEM);
    pthread_mutex_unlock(&w->mu);
    if (p)
      free(p->data);
    free(p);
    return;
  }
  p->flags = flags;
  p->sector = io->offset / w->ss;
  p->nr = io->length / w->ss;
  *w->pending_tail = p;
  w->pending_tail = &p->next;
  w->npending++;
  pthread_mutex_unlock(&w->mu);
}

/* Under mu: take every waiting entry. */
static struct lw_pending *take_pending_locked(struct lw_layer *w)
{
  struct lw_pending *p = w->pending;
  w->pending = NULL;
  w->pending_tail = &w->pending;
  w->npending = 0;
  return p;
}

static int lw_open(ts_layer *l, const json_t *params, ts_error *err)
{
  ts_layer *child = ts_layer_child(l, ts_param_string(params, "child", ""));
  ts_layer *log = ts_layer_child(l, ts_param_string(params, "log", ""));
  if (!child || !log)
    return ts_layer_error(l, err, -EINVAL, child ? "log" : "child", "no such layer");
  if (child == log)
    return ts_layer_error(l, err, -EINVAL, "log", "the log cannot be the child itself");
  const ts_limits *cl = ts_dev_limits(child), *ll = ts_dev_limits(log);
  uint32_t ss = cl->logical_block_size;
  if (ss < 512 || ss % ll->logical_block_size)
    return ts_layer_error(l, err, -EINVAL, "log",
                          "the log's %u-byte blocks do not divide the child's %u-byte blocks",
                          ll->logical_block_size, ss);
  if (ll->read_only && !ts_layer_force_read_only(l))
    return ts_layer_error(l, err, -EROFS, "log", "layer \"%s\" is read-only", ts_dev_name(log));
  if (ll->size < 2ull * ss)
    return ts_layer_error(l, err, -EINVAL, "log", "layer \"%s\" is smaller than two %u-byte blocks",
                          ts_dev_name(log), ss);
  struct lw_layer *w = calloc(1, sizeof *w);
  if (!w || posix_memalign((void **)&w->block, 4096, ss)) {
    free(w);
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  }
  w->child = child;
  w->log = log;
  w->ss = ss;
  w->log_size = ll->size / ss * ss;
  w->next = ss;
  w->enabled = !ll->read_only;
  w->pending_tail = &w->pending;
  pthread_mutex_init(&w->mu, NULL);
  /* A new, empty log: no entry of an older one can be mistaken for ours. */
  int r = w->enabled ? write_super(w) : 0;
  if (!r && w->enabled)
    r = ts_flush(log);
  if (r) {
    pthread_mutex_destroy(&w->mu);
    free(w->block);
    free(w);
    return ts_layer_error(l, err, r, "log", "cannot start the log on \"%s\": %s", ts_dev_name(log),
                          ts_strerror(r));
  }
  ts_layer_set_priv(l, w);
  return 0;
}

static void lw_close(ts_layer *l)
{
  struct lw_layer *w = ts_layer_priv(l);
  if (!w)
    return;
  pthread_mutex_lock(&w->mu);
  struct lw_pending *p = take_pending_locked(w);
  /* As the kernel's target does when it goes away: what completed is
   * logged even without a flush, then the end mark. */
  if (!ts_layer_aborting(l)) {
    log_pending_locked(l, w, p);
    append_locked(l, w, LW_MARK, 0, 0, NULL, 0, LW_END_MARK);
  } else {
    w->enabled = false;
    log_pending_locked(l, w, p);
  }
  if (w->enabled && ts_flush(w->log) != 0)
    stop_logging(l, w, -EIO);
  pthread_mutex_unlock(&w->mu);
  pthread_mutex_destroy(&w->mu);
  free(w->block);
  free(w);
}

static int lw_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  (void)err;
  struct lw_layer *w = ts_layer_priv(l);
  /* The child's limits alone: the log's size or speed is no concern of the
   * requests. */
  *lim = *ts_dev_limits(w->child);
  lim->max_write_zeroes_bytes = 0;
  lim->write_zeroes_unmap = false;
  return 0;
}

static int lw_submit(ts_layer *l, const ts_io *io)
{
  struct lw_layer *w = ts_layer_priv(l);
  if (io->op == TS_OP_FLUSH) {
    /* The flush covers the writes that completed before it was sent. */
    pthread_mutex_lock(&w->mu);
    struct lw_pending *p = take_pending_locked(w);
    pthread_mutex_unlock(&w->mu);
    int r = ts_submit(w->child, io);
    pthread_mutex_lock(&w->mu);
    if (r && p) {
      /* Not known durable: they wait for the next flush, still first. */
      struct lw_pending *last = p;
      uint64_t n = 1;
      for (; last->next; last = last->next)
        n++;
      last->next = w->pending;
      if (!w->pending)
        w->pending_tail = &last->next;
      w->pending = p;
      w->npending += n;
    } else if (!r) {
      log_pending_locked(l, w, p);
      append_locked(l, w, LW_FLUSH, 0, 0, NULL, 0, NULL);
    }
    pthread_mutex_unlock(&w->mu);
    return r;
  }
  int r = ts_submit(w->child, io);
  if (r)
    return r;
  switch (io->op) {
  case TS_OP_WRITE:
    if (io->flags & TS_IO_FUA)
      append(l, w, LW_FUA, io->offset / w->ss, io->length / w->ss, io->iov, io->iovcnt, NULL);
    else
      add_pending(l, w, 0, io);
    break;
  case TS_OP_DISCARD:
    add_pending(l, w, LW_DISCARD, io);
    break;
  default:
    break;
  }
  return 0;
}

/* "mark NAME": an entry replay can stop at (replay-log --end-mark NAME),
 * logged at once, after the flushed and FUA writes but before any write
 * still waiting for a flush, as the kernel does. The kernel keeps a mark's
 * text to one block less the entry; so do we. */
static int lw_message(ts_layer *l, const char *msg, ts_error *err)
{
  struct lw_layer *w = ts_layer_priv(l);
  if (strncmp(msg, "mark ", 5) != 0 || !msg[5])
    return ts_layer_error(l, err, -EINVAL, NULL, "unknown message \"%s\" (log-writes takes \"mark NAME\")",
                          msg);
  const char *name = msg + 5;
  if (strlen(name) >= w->ss - LW_ENTRY_SIZE)
    return ts_layer_error(l, err, -EINVAL, NULL, "a mark is at most %u bytes",
                          w->ss - LW_ENTRY_SIZE - 1);
  append(l, w, LW_MARK, 0, 0, NULL, 0, name);
  pthread_mutex_lock(&w->mu);
  bool ok = w->enabled;
  pthread_mutex_unlock(&w->mu);
  if (!ok)
    return ts_layer_error(l, err, w->stop_reason ? w->stop_reason : -EROFS, NULL,
                          "the mark was not logged: %s",
                          w->stop_reason == -ENOSPC ? "the log is full"
                          : w->stop_reason          ? ts_strerror(w->stop_reason)
                                                    : "the log is read-only");
  return 0;
}

static int lw_block_status(ts_layer *l, uint64_t off, uint64_t len, ts_extent_list *out)
{
  struct lw_layer *w = ts_layer_priv(l);
  return ts_block_status(w->child, off, len, out);
}

static int lw_status(ts_layer *l, json_t *out)
{
  struct lw_layer *w = ts_layer_priv(l);
  pthread_mutex_lock(&w->mu);
  json_object_set_new(out, "logging", json_boolean(w->enabled));
  json_object_set_new(out, "entries", json_integer((json_int_t)w->entries));
  json_object_set_new(out, "waiting_for_flush", json_integer((json_int_t)w->npending));
  json_object_set_new(out, "log_bytes_used", json_integer((json_int_t)w->next));
  json_object_set_new(out, "log_bytes", json_integer((json_int_t)w->log_size));
  json_object_set_new(out, "sector_size", json_integer(w->ss));
  if (w->stop_reason)
    json_object_set_new(out, "stopped", json_string(w->stop_reason == -ENOSPC ? "log full"
                                                                              : ts_strerror(w->stop_reason)));
  pthread_mutex_unlock(&w->mu);
  return 0;
}

static char *lw_dm_table(ts_layer *l)
{
  struct lw_layer *w = ts_layer_priv(l);
  char *s = NULL;
  if (asprintf(&s, "0 %llu log-writes <%s> <%s>",
               (unsigned long long)(ts_dev_size(w->child) / 512), ts_dev_name(w->child),
               ts_dev_name(w->log)) < 0)
    return NULL;
  return s;
}

const ts_layer_type ts__log_writes_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "log-writes",
  .summary = "record writes, discards and flushes in dm-log-writes format for replay",
  .params = lw_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = lw_open,
  .close = lw_close,
  .limits = lw_limits,
  .submit = lw_submit,
  .block_status = lw_block_status,
  .status = lw_status,
  .dm_table = lw_dm_table,
  .message = lw_message,
};
