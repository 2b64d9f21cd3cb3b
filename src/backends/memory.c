/* memory: a sparse RAM disk, for tests and examples.
 *
 *   { "type": "memory", "size": "1G" }
 *
 * Storage is allocated in 64 KiB chunks on first write or provision and
 * freed by whole-chunk discards, so block status shows what is allocated;
 * the index of chunks grows with them, so any size up to 8E opens at once.
 * Kernel equivalent: brd (the RAM disk driver), with discard.
 */
#include <libthinstack/layer.h>

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK (64u * 1024)
/* The chunk index is a radix tree of 4096-way nodes, allocated as chunks are
 * first written: its memory follows what is stored, not the device size (an
 * index array for a "111T" device alone would take 14 GiB). */
#define FAN_BITS 12
#define FAN (1u << FAN_BITS)

struct memory_layer {
  uint64_t size;
  uint64_t nchunks;
  unsigned levels;   /* 1..4: 4096^levels >= nchunks */
  void **root;       /* NULL until the first write */
  uint64_t allocated;
};

static const ts_param memory_params[] = {
  { "size", TS_PARAM_SIZE, TS_PARAM_REQUIRED, NULL, NULL, "device size" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static unsigned slot_of(unsigned levels, unsigned level, uint64_t i)
{
  return (unsigned)(i >> (FAN_BITS * (levels - 1 - level))) & (FAN - 1);
}

/* The chunk of index i, or NULL; with `create`, allocated (zeroed) with
 * whatever index nodes lead to it. */
static unsigned char *chunk_at(struct memory_layer *m, uint64_t i, bool create)
{
  void ***link = &m->root;
  for (unsigned lv = 0; lv < m->levels; lv++) {
    if (!*link) {
      if (!create || !(*link = calloc(FAN, sizeof **link)))
        return NULL;
    }
    link = (void ***)&(*link)[slot_of(m->levels, lv, i)];
  }
  unsigned char **c = (unsigned char **)link;
  if (!*c && create && (*c = calloc(1, CHUNK)))
    m->allocated++;
  return *c;
}

static void drop_chunk(struct memory_layer *m, uint64_t i)
{
  void **node = m->root;
  for (unsigned lv = 0; node && lv + 1 < m->levels; lv++)
    node = node[slot_of(m->levels, lv, i)];
  if (!node)
    return;
  unsigned k = slot_of(m->levels, m->levels - 1, i);
  if (node[k]) {
    free(node[k]);
    node[k] = NULL;
    m->allocated--;
  }
}

/* The first allocated chunk index in [i, limit) below `node` (covering
 * indexes from `base` at `level`), or limit: skips absent subtrees whole,
 * so a huge unwritten range costs nothing. */
static uint64_t next_in(const struct memory_layer *m, void **node, unsigned level, uint64_t base,
                        uint64_t i, uint64_t limit)
{
  unsigned shift = FAN_BITS * (m->levels - 1 - level);
  for (unsigned k = slot_of(m->levels, level, i > base ? i : base); k < FAN; k++) {
    uint64_t sbase = base + ((uint64_t)k << shift);
    if (sbase >= limit)
      break;
    if (!node[k])
      continue;
    if (level + 1 == m->levels)
      return sbase > i ? sbase : i;
    uint64_t f = next_in(m, node[k], level + 1, sbase, i > sbase ? i : sbase, limit);
    if (f < limit)
      return f;
  }
  return limit;
}

static uint64_t next_allocated(const struct memory_layer *m, uint64_t i, uint64_t limit)
{
  return m->root && i < limit ? next_in(m, m->root, 0, 0, i, limit) : limit;
}

static void free_node(void **node, unsigned depth_left)
{
  if (!node)
    return;
  for (unsigned k = 0; k < FAN; k++)
    if (node[k]) {
      if (depth_left > 1)
        free_node(node[k], depth_left - 1);
      else
        free(node[k]);
    }
  free(node);
}

static int memory_open(ts_layer *l, const json_t *params, ts_error *err)
{
  uint64_t size = ts_param_size(params, "size", 0);
  if (size == 0 || size % 512)
    return ts_layer_error(l, err, -EINVAL, "size", "must be a non-zero multiple of 512");
  struct memory_layer *m = calloc(1, sizeof *m);
  if (!m)
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  m->size = size;
  m->nchunks = (size + CHUNK - 1) / CHUNK;
  m->levels = 1;
  while (m->levels < 4 && (m->nchunks - 1) >> (FAN_BITS * m->levels))
    m->levels++;
  ts_layer_set_priv(l, m);
  return 0;
}

static void memory_close(ts_layer *l)
{
  struct memory_layer *m = ts_layer_priv(l);
  if (!m)
    return;
  free_node(m->root, m->levels);
  free(m);
}

static int memory_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  struct memory_layer *m = ts_layer_priv(l);
  lim->size = m->size;
  lim->max_discard_bytes = UINT64_MAX;
  lim->discard_granularity = CHUNK;
  lim->discard_zeroes = true;
  lim->max_write_zeroes_bytes = UINT64_MAX;
  lim->write_zeroes_unmap = true;
  lim->max_provision_bytes = UINT64_MAX;
  lim->provision_granularity = CHUNK;
  lim->fua = true; /* nothing is volatile */
  return 0;
}

/* Walk [off, off+len) chunk by chunk. */
#define FOR_CHUNKS(m, off, len, idx, co, n)                                                  \
  for (uint64_t _p = (off), _e = (off) + (len), idx, co, n;                                  \
       _p < _e && ((idx = _p / CHUNK), (co = _p % CHUNK),                                    \
                   (n = (CHUNK - co < _e - _p ? CHUNK - co : _e - _p)), 1);                  \
       _p += n)

static int memory_submit(ts_layer *l, const ts_io *io)
{
  struct memory_layer *m = ts_layer_priv(l);
  uint64_t done = 0;
  switch (io->op) {
  case TS_OP_READ:
    FOR_CHUNKS(m, io->offset, io->length, i, co, n) {
      const unsigned char *c = chunk_at(m, i, false);
      if (c)
        ts_iov_from_buf(io->iov, io->iovcnt, done, c + co, n);
      else
        ts_iov_zero(io->iov, io->iovcnt, done, n);
      done += n;
    }
    return 0;
  case TS_OP_WRITE:
    FOR_CHUNKS(m, io->offset, io->length, i, co, n) {
      unsigned char *c = chunk_at(m, i, true);
      if (!c)
        return -ENOMEM;
      ts_iov_to_buf(io->iov, io->iovcnt, done, c + co, n);
      done += n;
    }
    return 0;
  case TS_OP_FLUSH:
    return 0;
  case TS_OP_PROVISION:
    FOR_CHUNKS(m, io->offset, io->length, i, co, n) {
      if (!chunk_at(m, i, true))
        return -ENOSPC;
    }
    return 0;
  case TS_OP_DISCARD:
  case TS_OP_WRITE_ZEROES: {
    bool unmap = io->op == TS_OP_DISCARD || (io->flags & TS_IO_MAY_UNMAP);
    if (unmap) {
      /* Visit only the chunks that exist: a discard of a huge, mostly
       * unwritten range costs what is stored, not the range. */
      uint64_t end = io->offset + io->length, last = (end - 1) / CHUNK;
      for (uint64_t i = next_allocated(m, io->offset / CHUNK, last + 1); i <= last;
           i = next_allocated(m, i + 1, last + 1)) {
        uint64_t cs = i * CHUNK, ce = cs + CHUNK;
        uint64_t from = cs > io->offset ? cs : io->offset, to = ce < end ? ce : end;
        if (to - from == CHUNK)
          drop_chunk(m, i);
        else
          memset(chunk_at(m, i, false) + (from - cs), 0, to - from);
      }
      return 0;
    }
    FOR_CHUNKS(m, io->offset, io->length, i, co, n) {
      unsigned char *c = chunk_at(m, i, true);
      if (!c)
        return -ENOSPC;
      memset(c + co, 0, n);
    }
    return 0;
  }
  default:
    return -EOPNOTSUPP;
  }
}

static int memory_block_status(ts_layer *l, uint64_t off, uint64_t len, ts_extent_list *out)
{
  struct memory_layer *m = ts_layer_priv(l);
  uint64_t end = off + len, last = (end - 1) / CHUNK;
  /* A prefix per call keeps each call bounded; the core asks for the rest. */
  size_t start = out->n;
  while (off < end && out->n - start < 4096) {
    uint64_t i = off / CHUNK, stop;
    uint32_t flags = 0;
    if (chunk_at(m, i, false)) {
      stop = (i + 1) * CHUNK;
    } else {
      stop = next_allocated(m, i + 1, last + 1) * CHUNK;
      flags = TS_EXTENT_HOLE | TS_EXTENT_ZERO;
    }
    if (stop > end)
      stop = end;
    if (ts_extent_list_add(out, off, stop - off, flags))
      return -ENOMEM;
    off = stop;
  }
  return 0;
}

static int memory_status(ts_layer *l, json_t *out)
{
  struct memory_layer *m = ts_layer_priv(l);
  json_object_set_new(out, "allocated_bytes", json_integer((json_int_t)(m->allocated * CHUNK)));
  return 0;
}

const ts_layer_type ts__memory_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "memory",
  .summary = "a sparse RAM disk allocated in 64K chunks",
  .params = memory_params,
  .thread_model = TS_THREAD_SERIALIZE,
  .open = memory_open,
  .close = memory_close,
  .limits = memory_limits,
  .submit = memory_submit,
  .block_status = memory_block_status,
  .status = memory_status,
};
