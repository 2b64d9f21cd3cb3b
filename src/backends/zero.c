/* zero and error: constant devices, for tests and examples.
 *
 *   { "type": "zero", "size": "1T" }    reads zeroes, drops writes (dm-zero)
 *   { "type": "error", "size": "1G" }   fails every request with EIO (dm-error)
 */
#include <libthinstack/layer.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

static const ts_param const_params[] = {
  { "size", TS_PARAM_SIZE, TS_PARAM_REQUIRED, NULL, NULL, "device size" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static int const_open(ts_layer *l, const json_t *params, ts_error *err)
{
  uint64_t size = ts_param_size(params, "size", 0);
  if (size == 0 || size % 512)
    return ts_layer_error(l, err, -EINVAL, "size", "must be a non-zero multiple of 512");
  uint64_t *p = malloc(sizeof *p);
  if (!p)
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  *p = size;
  ts_layer_set_priv(l, p);
  return 0;
}

static void const_close(ts_layer *l) { free(ts_layer_priv(l)); }

static int zero_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  lim->size = *(uint64_t *)ts_layer_priv(l);
  lim->max_discard_bytes = UINT64_MAX;
  lim->discard_zeroes = true;
  lim->max_write_zeroes_bytes = UINT64_MAX;
  lim->write_zeroes_unmap = true;
  lim->max_provision_bytes = UINT64_MAX;
  lim->fua = true;
  return 0;
}

static int zero_submit(ts_layer *l, const ts_io *io)
{
  if (io->op == TS_OP_READ)
    ts_iov_zero(io->iov, io->iovcnt, 0, io->length);
  return 0;
}

static int zero_block_status(ts_layer *l, uint64_t off, uint64_t len, ts_extent_list *out)
{
  return ts_extent_list_add(out, off, len, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
}

static char *zero_dm_table(ts_layer *l)
{
  char *s = NULL;
  if (asprintf(&s, "0 %llu zero", (unsigned long long)(*(uint64_t *)ts_layer_priv(l) / 512)) < 0)
    return NULL;
  return s;
}

const ts_layer_type ts__zero_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "zero",
  .summary = "reads zeroes, drops writes (dm-zero)",
  .params = const_params,
  .open = const_open,
  .close = const_close,
  .limits = zero_limits,
  .submit = zero_submit,
  .block_status = zero_block_status,
  .dm_table = zero_dm_table,
};

static int error_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  lim->size = *(uint64_t *)ts_layer_priv(l);
  lim->max_discard_bytes = UINT64_MAX;
  lim->max_write_zeroes_bytes = UINT64_MAX;
  lim->max_provision_bytes = UINT64_MAX;
  lim->fua = true;
  return 0;
}

static int error_submit(ts_layer *l, const ts_io *io) { return -EIO; }

static char *error_dm_table(ts_layer *l)
{
  char *s = NULL;
  if (asprintf(&s, "0 %llu error", (unsigned long long)(*(uint64_t *)ts_layer_priv(l) / 512)) < 0)
    return NULL;
  return s;
}

const ts_layer_type ts__error_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "error",
  .summary = "fails every request with EIO (dm-error)",
  .params = const_params,
  .open = const_open,
  .close = const_close,
  .limits = error_limits,
  .submit = error_submit,
  .dm_table = error_dm_table,
};
