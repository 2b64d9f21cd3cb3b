/* memory: a sparse RAM disk, for tests and examples.
 *
 *   { "type": "memory", "size": "1G" }
 *
 * Storage is allocated in 64 KiB chunks on first write or provision and
 * freed by whole-chunk discards, so block status shows what is allocated.
 * Kernel equivalent: brd (the RAM disk driver), with discard.
 */
#include <libthinstack/layer.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK (64u * 1024)

struct memory_layer {
  uint64_t size;
  uint64_t nchunks;
  unsigned char **chunk;
  uint64_t allocated;
};

static const ts_param memory_params[] = {
  { "size", TS_PARAM_SIZE, TS_PARAM_REQUIRED, NULL, NULL, "device size" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

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
  m->chunk = calloc(m->nchunks, sizeof *m->chunk);
  if (!m->chunk) {
    free(m);
    return ts_layer_error(l, err, -ENOMEM, "size", "cannot index %llu bytes of memory",
                          (unsigned long long)size);
  }
  ts_layer_set_priv(l, m);
  return 0;
}

static void memory_close(ts_layer *l)
{
  struct memory_layer *m = ts_layer_priv(l);
  if (!m)
    return;
  for (uint64_t i = 0; i < m->nchunks; i++)
    free(m->chunk[i]);
  free(m->chunk);
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

static unsigned char *get_chunk(struct memory_layer *m, uint64_t i)
{
  if (!m->chunk[i]) {
    m->chunk[i] = calloc(1, CHUNK);
    if (m->chunk[i])
      m->allocated++;
  }
  return m->chunk[i];
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
      if (m->chunk[i])
        ts_iov_from_buf(io->iov, io->iovcnt, done, m->chunk[i] + co, n);
      else
        ts_iov_zero(io->iov, io->iovcnt, done, n);
      done += n;
    }
    return 0;
  case TS_OP_WRITE:
    FOR_CHUNKS(m, io->offset, io->length, i, co, n) {
      unsigned char *c = get_chunk(m, i);
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
      if (!get_chunk(m, i))
        return -ENOSPC;
    }
    return 0;
  case TS_OP_DISCARD:
  case TS_OP_WRITE_ZEROES: {
    bool unmap = io->op == TS_OP_DISCARD || (io->flags & TS_IO_MAY_UNMAP);
    FOR_CHUNKS(m, io->offset, io->length, i, co, n) {
      if (unmap && n == CHUNK && m->chunk[i]) {
        free(m->chunk[i]);
        m->chunk[i] = NULL;
        m->allocated--;
      } else if (m->chunk[i]) {
        memset(m->chunk[i] + co, 0, n);
      } else if (!unmap && !get_chunk(m, i)) {
        return -ENOSPC;
      }
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
  FOR_CHUNKS(m, off, len, i, co, n) {
    if (ts_extent_list_add(out, i * CHUNK + co, n, m->chunk[i] ? 0 : TS_EXTENT_HOLE | TS_EXTENT_ZERO))
      return -ENOMEM;
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
