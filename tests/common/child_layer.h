/* A test layer over one child ("child"), the same size: the parameters,
 * open, limits and pass-through submit that the tests' own layers share
 * (header-only: each test is its own program). */
#ifndef TS_CHILD_LAYER_H
#define TS_CHILD_LAYER_H

#include <libthinstack/layer.h>

#include <errno.h>

static const ts_param child_params[] = {
  { "child", TS_PARAM_CHILD, TS_PARAM_REQUIRED, NULL, NULL, "the device under the test layer" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static inline int child_layer_open(ts_layer *l, const json_t *params, ts_error *err)
{
  ts_layer *child = ts_layer_child(l, ts_param_string(params, "child", ""));
  if (!child)
    return ts_layer_error(l, err, -EINVAL, "child", "no such layer");
  ts_layer_set_priv(l, child);
  return 0;
}

static inline int child_layer_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  (void)err;
  lim->size = ts_dev_size(ts_layer_priv(l));
  return 0;
}

static inline int child_layer_submit(ts_layer *l, const ts_io *io)
{
  return ts_submit(ts_layer_priv(l), io);
}

#endif
