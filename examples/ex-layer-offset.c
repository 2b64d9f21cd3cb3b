/* ex-layer-offset: an out-of-tree layer type, the template for new layers.
 *
 *   { "plugins": ["ts-layer-offset.so"], ...
 *     "part": { "type": "offset", "child": "disk", "offset": "1M", "length": "16M" } }
 *
 * Exposes [offset, offset+length) of its child as a device of its own (like
 * nbdkit's offset filter or a one-segment dm-linear). Everything passes down
 * with the offset added; the core has already checked and split each
 * request, so the layer only remaps. Build as a shared object that exports
 * `ts_layer_types`:
 *   cc -shared -fPIC ex-layer-offset.c -o ts-layer-offset.so $(pkg-config --cflags thinstack jansson)
 */
#include <libthinstack/layer.h>

#include <errno.h>
#include <stdlib.h>

struct offset_layer {
  ts_layer *child;
  uint64_t offset, length;
};

static const ts_param offset_params[] = {
  { "child", TS_PARAM_CHILD, TS_PARAM_REQUIRED, NULL, NULL, "the layer to expose a range of" },
  { "offset", TS_PARAM_SIZE, 0, NULL, NULL, "start of the range (default 0)" },
  { "length", TS_PARAM_SIZE, 0, NULL, NULL, "length of the range (default: to the end)" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static int offset_open(ts_layer *l, const json_t *params, ts_error *err)
{
  ts_layer *child = ts_layer_child(l, ts_param_string(params, "child", ""));
  uint64_t size = ts_dev_size(child);
  uint32_t lbs = ts_dev_limits(child)->logical_block_size;
  uint64_t off = ts_param_size(params, "offset", 0);
  uint64_t len = ts_param_size(params, "length", off < size ? size - off : 0);
  if (off % lbs || len % lbs)
    return ts_layer_error(l, err, -EINVAL, "offset", "offset and length must be multiples of %u", lbs);
  if (len == 0 || off + len < off || off + len > size)
    return ts_layer_error(l, err, -EINVAL, "length",
                          "offset %llu + length %llu is past the end of \"%s\" (%llu bytes)",
                          (unsigned long long)off, (unsigned long long)len, ts_dev_name(child),
                          (unsigned long long)size);
  struct offset_layer *o = malloc(sizeof *o);
  if (!o)
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  *o = (struct offset_layer){ child, off, len };
  ts_layer_set_priv(l, o);
  return 0;
}

static void offset_close(ts_layer *l) { free(ts_layer_priv(l)); }

/* The core folded the child's limits into `lim` already: only the size changes. */
static int offset_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  lim->size = ((struct offset_layer *)ts_layer_priv(l))->length;
  return 0;
}

static int offset_submit(ts_layer *l, const ts_io *io)
{
  struct offset_layer *o = ts_layer_priv(l);
  ts_io sub = *io;
  if (io->op != TS_OP_FLUSH)
    sub.offset += o->offset;
  return ts_submit(o->child, &sub);
}

static int offset_block_status(ts_layer *l, uint64_t off, uint64_t len, ts_extent_list *out)
{
  struct offset_layer *o = ts_layer_priv(l);
  ts_extent_list tmp = { 0 };
  int r = ts_block_status(o->child, off + o->offset, len, &tmp);
  for (size_t i = 0; !r && i < tmp.n; i++)
    r = ts_extent_list_add(out, tmp.v[i].offset - o->offset, tmp.v[i].length, tmp.v[i].flags);
  ts_extent_list_free(&tmp);
  return r;
}

static const ts_layer_type offset_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "offset",
  .summary = "a range of a child as a device of its own (example out-of-tree layer)",
  .params = offset_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = offset_open,
  .close = offset_close,
  .limits = offset_limits,
  .submit = offset_submit,
  .block_status = offset_block_status,
};

/* What the core looks for when it loads this module. */
__attribute__((visibility("default"))) const ts_layer_type *const ts_layer_types[] = {
  &offset_layer_type,
  NULL,
};
