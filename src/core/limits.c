/* Limits: the stacking algebra (one table, one rule per field) and JSON output. */
#include "core/internal.h"

#include <stddef.h>
#include <string.h>

enum rule {
  R_KEEP,         /* the layer sets it (size) */
  R_MAX,          /* block sizes, io_min */
  R_LCM,          /* granularities, io_opt: 0 means "none" */
  R_MIN_NOT_ZERO, /* caps where 0 means "no limit" */
  R_MIN,          /* op-enabling maxima where 0 means "unsupported" */
  R_AND,
  R_OR,
};

enum width { W32, W64, WBOOL };

static const struct field {
  const char *name;
  size_t off;
  enum width w;
  enum rule rule;
} fields[] = {
#define F(n, w, r) { #n, offsetof(ts_limits, n), w, r }
  F(size, W64, R_KEEP),
  F(logical_block_size, W32, R_MAX),
  F(physical_block_size, W32, R_MAX),
  F(io_min, W32, R_MAX),
  F(io_opt, W32, R_LCM),
  F(max_io_bytes, W64, R_MIN_NOT_ZERO),
  F(max_discard_bytes, W64, R_MIN),
  F(discard_granularity, W32, R_LCM),
  F(max_write_zeroes_bytes, W64, R_MIN),
  F(max_provision_bytes, W64, R_MIN),
  F(provision_granularity, W32, R_LCM),
  F(discard_zeroes, WBOOL, R_AND),
  F(write_zeroes_unmap, WBOOL, R_AND),
  F(fua, WBOOL, R_AND),
  F(read_only, WBOOL, R_OR),
#undef F
};

static uint64_t get(const ts_limits *l, const struct field *f)
{
  const char *p = (const char *)l + f->off;
  switch (f->w) {
  case W32: return *(const uint32_t *)p;
  case W64: return *(const uint64_t *)p;
  default: return *(const bool *)p;
  }
}

static void set(ts_limits *l, const struct field *f, uint64_t v)
{
  char *p = (char *)l + f->off;
  switch (f->w) {
  case W32: *(uint32_t *)p = (uint32_t)v; break;
  case W64: *(uint64_t *)p = v; break;
  default: *(bool *)p = v != 0; break;
  }
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
  while (b) {
    uint64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

void ts_limits_stack(ts_limits *top, const ts_limits *bottom)
{
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    const struct field *f = &fields[i];
    uint64_t t = get(top, f), b = get(bottom, f), r = t;
    switch (f->rule) {
    case R_KEEP: break;
    case R_MAX: r = t > b ? t : b; break;
    case R_LCM: r = !t ? b : !b ? t : t / gcd(t, b) * b; break;
    case R_MIN_NOT_ZERO: r = !t ? b : !b ? t : t < b ? t : b; break;
    case R_MIN: r = t < b ? t : b; break;
    case R_AND: r = t && b; break;
    case R_OR: r = t || b; break;
    }
    set(top, f, r);
  }
}

void ts__limits_leaf_default(ts_limits *lim)
{
  memset(lim, 0, sizeof *lim);
  lim->logical_block_size = 512;
  lim->physical_block_size = 512;
  lim->io_min = 512;
}

/* The identity of ts_limits_stack for folding children: anything stacked onto
 * it yields the child's value. */
void ts__limits_fold_start(ts_limits *lim)
{
  memset(lim, 0, sizeof *lim);
  lim->max_discard_bytes = UINT64_MAX;
  lim->max_write_zeroes_bytes = UINT64_MAX;
  lim->max_provision_bytes = UINT64_MAX;
  lim->discard_zeroes = lim->write_zeroes_unmap = lim->fua = true;
}

ts_cap ts_limits_cap(const ts_limits *lim, int op)
{
  switch (op) {
  case TS_OP_READ:
  case TS_OP_FLUSH:
    return TS_CAP_NATIVE;
  case TS_OP_WRITE:
    return lim->read_only ? TS_CAP_NONE : TS_CAP_NATIVE;
  case TS_OP_DISCARD:
    return lim->read_only || !lim->max_discard_bytes ? TS_CAP_NONE : TS_CAP_NATIVE;
  case TS_OP_WRITE_ZEROES:
    if (lim->read_only)
      return TS_CAP_NONE;
    return lim->max_write_zeroes_bytes ? TS_CAP_NATIVE : TS_CAP_EMULATE;
  case TS_OP_PROVISION:
    return lim->read_only || !lim->max_provision_bytes ? TS_CAP_NONE : TS_CAP_NATIVE;
  case TS_OP_COUNT: /* FUA */
    if (lim->read_only)
      return TS_CAP_NONE;
    return lim->fua ? TS_CAP_NATIVE : TS_CAP_EMULATE;
  default:
    return TS_CAP_NONE;
  }
}

json_t *ts__limits_to_json(const ts_limits *lim)
{
  static const char *const capnames[] = { "none", "emulate", "native" };
  json_t *o = json_object();
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    const struct field *f = &fields[i];
    uint64_t v = get(lim, f);
    json_object_set_new(o, f->name, f->w == WBOOL ? json_boolean(v) : json_integer((json_int_t)v));
  }
  json_t *ops = json_object();
  for (int op = 0; op < TS_OP_COUNT; op++)
    json_object_set_new(ops, ts_op_name(op), json_string(capnames[ts_limits_cap(lim, op)]));
  json_object_set_new(ops, "fua", json_string(capnames[ts_limits_cap(lim, TS_OP_COUNT)]));
  json_object_set_new(o, "ops", ops);
  return o;
}

char *ts_dev_limits_json(const ts_dev *dev)
{
  json_t *o = ts__limits_to_json(&dev->limits);
  char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(o);
  return s;
}
