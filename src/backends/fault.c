/* fault: inject failures and impose limits on a child (dm-flakey, blkdebug).
 *
 *   { "type": "fault", "child": "disk",
 *     "rules": [ { "op": "write", "action": "error", "errno": "EIO",
 *                  "after": 100, "count": 1, "offset": "1M", "length": "64K" } ],
 *     "limits": { "max_io_bytes": "64K", "max_provision_bytes": 0 } }
 *
 * A rule matches requests of `op` ("read", "write", "flush", "discard",
 * "write_zeroes", "provision"; "all" = every op that changes the device,
 * "any" = every op) that overlap [offset, offset+length) (default: the whole
 * device). The first `after` matching requests pass; from then on the rule
 * fires `count` times (0 = forever): "error" fails the request with `errno`
 * without touching the child, "drop" reports success and does nothing (reads
 * return zeroes) -- a device that lost power stops persisting exactly so.
 * The first rule that fires decides. `limits` overrides the stacked limits, so
 * splitting and fallbacks can be exercised on any child; 0 for an op's
 * maximum turns the op off.
 */
#include <libthinstack/layer.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { OP_ALL = TS_OP_COUNT, OP_ANY };

struct rule {
  int op;
  bool drop;
  int err;
  uint64_t after, count;
  uint64_t offset, length;
  _Atomic uint64_t seen;   /* matching requests so far */
  _Atomic uint64_t fired;
};

struct fault_layer {
  ts_layer *child;
  struct rule *rules;
  size_t nrules;
  json_t *limits;          /* borrowed from params */
};

static const ts_param rule_fields[] = {
  { "op", TS_PARAM_ENUM, TS_PARAM_REQUIRED, "read|write|flush|discard|write_zeroes|provision|all|any",
    NULL, "which requests the rule matches" },
  { "action", TS_PARAM_ENUM, 0, "error|drop", NULL, "fail the request, or drop it silently" },
  { "errno", TS_PARAM_STRING, 0, NULL, NULL, "errno name for \"error\" (default EIO)" },
  { "after", TS_PARAM_UINT, 0, NULL, NULL, "matching requests that pass first" },
  { "count", TS_PARAM_UINT, 0, NULL, NULL, "times the rule fires (0 = forever)" },
  { "offset", TS_PARAM_SIZE, 0, NULL, NULL, "start of the range the rule watches" },
  { "length", TS_PARAM_SIZE, 0, NULL, NULL, "length of that range (default: to the end)" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static const ts_param limit_fields[] = {
  { "logical_block_size", TS_PARAM_SIZE, 0, NULL, NULL, NULL },
  { "max_io_bytes", TS_PARAM_SIZE, 0, NULL, NULL, NULL },
  { "max_discard_bytes", TS_PARAM_SIZE, 0, NULL, NULL, NULL },
  { "discard_granularity", TS_PARAM_SIZE, 0, NULL, NULL, NULL },
  { "max_write_zeroes_bytes", TS_PARAM_SIZE, 0, NULL, NULL, NULL },
  { "max_provision_bytes", TS_PARAM_SIZE, 0, NULL, NULL, NULL },
  { "provision_granularity", TS_PARAM_SIZE, 0, NULL, NULL, NULL },
  { "fua", TS_PARAM_BOOL, 0, NULL, NULL, NULL },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static const ts_param fault_params[] = {
  { "child", TS_PARAM_CHILD, TS_PARAM_REQUIRED, NULL, NULL, "the layer requests pass to" },
  { "rules", TS_PARAM_ARRAY, 0, NULL, rule_fields, "failures to inject" },
  { "limits", TS_PARAM_OBJECT, 0, NULL, limit_fields, "limits imposed on top of the child's" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static int fault_open(ts_layer *l, const json_t *params, ts_error *err)
{
  const json_t *rules = json_object_get(params, "rules");
  size_t n = json_array_size(rules);
  struct fault_layer *f = calloc(1, sizeof *f);
  if (!f || (n && !(f->rules = calloc(n, sizeof *f->rules)))) {
    free(f);
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  }
  f->child = ts_layer_child(l, ts_param_string(params, "child", ""));
  f->limits = json_object_get(params, "limits");
  for (size_t i = 0; i < n; i++) {
    const json_t *j = json_array_get(rules, i);
    struct rule *r = &f->rules[i];
    const char *op = ts_param_string(j, "op", "any");
    r->op = strcmp(op, "all") == 0 ? OP_ALL : strcmp(op, "any") == 0 ? OP_ANY : ts_op_from_name(op);
    r->drop = strcmp(ts_param_string(j, "action", "error"), "drop") == 0;
    const char *e = ts_param_string(j, "errno", "EIO");
    r->err = ts_err_from_name(e);
    if (!r->err) {
      char key[64];
      snprintf(key, sizeof key, "rules[%zu].errno", i);
      free(f->rules);
      free(f);
      return ts_layer_error(l, err, -EINVAL, key, "unknown errno name \"%s\" (e.g. EIO, ENOSPC)", e);
    }
    r->after = ts_param_uint(j, "after", 0);
    r->count = ts_param_uint(j, "count", 0);
    r->offset = ts_param_size(j, "offset", 0);
    r->length = ts_param_size(j, "length", UINT64_MAX - r->offset);
  }
  f->nrules = n;
  ts_layer_set_priv(l, f);
  return 0;
}

static void fault_close(ts_layer *l)
{
  struct fault_layer *f = ts_layer_priv(l);
  if (f) {
    free(f->rules);
    free(f);
  }
}

static int fault_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  struct fault_layer *f = ts_layer_priv(l);
  lim->size = ts_dev_size(f->child);
  const json_t *o = f->limits;
  if (!o)
    return 0;
  lim->logical_block_size = (uint32_t)ts_param_size(o, "logical_block_size", lim->logical_block_size);
  lim->max_io_bytes = ts_param_size(o, "max_io_bytes", lim->max_io_bytes);
  lim->max_discard_bytes = ts_param_size(o, "max_discard_bytes", lim->max_discard_bytes);
  lim->discard_granularity = (uint32_t)ts_param_size(o, "discard_granularity", lim->discard_granularity);
  lim->max_write_zeroes_bytes = ts_param_size(o, "max_write_zeroes_bytes", lim->max_write_zeroes_bytes);
  lim->max_provision_bytes = ts_param_size(o, "max_provision_bytes", lim->max_provision_bytes);
  lim->provision_granularity = (uint32_t)ts_param_size(o, "provision_granularity", lim->provision_granularity);
  lim->fua = ts_param_bool(o, "fua", lim->fua);
  if (lim->physical_block_size < lim->logical_block_size)
    lim->physical_block_size = lim->logical_block_size;
  if (lim->io_min < lim->logical_block_size)
    lim->io_min = lim->logical_block_size;
  return 0;
}

static bool matches(const struct rule *r, const ts_io *io)
{
  if (r->op == OP_ALL ? io->op == TS_OP_READ : r->op != OP_ANY && r->op != (int)io->op)
    return false;
  if (io->op == TS_OP_FLUSH)
    return true; /* a flush covers the whole device */
  return io->offset < r->offset + r->length && r->offset < io->offset + io->length;
}

static int fault_submit(ts_layer *l, const ts_io *io)
{
  struct fault_layer *f = ts_layer_priv(l);
  for (size_t i = 0; i < f->nrules; i++) {
    struct rule *r = &f->rules[i];
    if (!matches(r, io))
      continue;
    uint64_t seen = atomic_fetch_add(&r->seen, 1);
    if (seen < r->after || (r->count && seen - r->after >= r->count))
      continue;
    atomic_fetch_add(&r->fired, 1);
    if (!r->drop)
      return r->err;
    if (io->op == TS_OP_READ)
      ts_iov_zero(io->iov, io->iovcnt, 0, io->length);
    return 0;
  }
  return ts_submit(f->child, io);
}

static int fault_block_status(ts_layer *l, uint64_t off, uint64_t len, ts_extent_list *out)
{
  struct fault_layer *f = ts_layer_priv(l);
  return ts_block_status(f->child, off, len, out);
}

static int fault_status(ts_layer *l, json_t *out)
{
  struct fault_layer *f = ts_layer_priv(l);
  json_t *a = json_array();
  for (size_t i = 0; i < f->nrules; i++) {
    json_t *o = json_object();
    json_object_set_new(o, "matched", json_integer((json_int_t)atomic_load(&f->rules[i].seen)));
    json_object_set_new(o, "fired", json_integer((json_int_t)atomic_load(&f->rules[i].fired)));
    json_array_append_new(a, o);
  }
  json_object_set_new(out, "rules", a);
  return 0;
}

const ts_layer_type ts__fault_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "fault",
  .summary = "inject errors or dropped requests, impose limits (dm-flakey, blkdebug)",
  .params = fault_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = fault_open,
  .close = fault_close,
  .limits = fault_limits,
  .submit = fault_submit,
  .block_status = fault_block_status,
  .status = fault_status,
};
