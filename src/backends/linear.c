/* linear: concatenate ranges of one or more children (dm-linear).
 *
 *   { "type": "linear",
 *     "segments": [ { "child": "a", "offset": 0, "length": "1G" },
 *                   { "child": "b" } ] }
 *
 * Each segment maps the next `length` bytes of this device onto `child`
 * starting at `offset` (default 0; length defaults to the rest of the child).
 * Every op passes straight down, remapped; the core splits requests at
 * segment edges, and an op is supported only where every child supports it.
 * A copy within the device (copy_range) passes down when both ranges map
 * into one child.
 * Kernel equivalent: a dm table with one `linear` line per segment.
 */
#include <libthinstack/layer.h>

#include "core/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct segment {
  uint64_t start;   /* in this device */
  uint64_t length;
  uint64_t offset;  /* in the child */
  ts_layer *child;
};

struct linear_layer {
  struct segment *seg;
  size_t nseg;
  uint64_t size;
};

static const ts_param segment_fields[] = {
  { "child", TS_PARAM_CHILD, TS_PARAM_REQUIRED, NULL, NULL, "the layer this segment maps onto" },
  { "offset", TS_PARAM_SIZE, 0, NULL, NULL, "start in the child (default 0)" },
  { "length", TS_PARAM_SIZE, 0, NULL, NULL, "bytes mapped (default: the rest of the child)" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static const ts_param linear_params[] = {
  { "segments", TS_PARAM_ARRAY, TS_PARAM_REQUIRED, NULL, segment_fields,
    "ranges of children, concatenated in order" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static int linear_open(ts_layer *l, const json_t *params, ts_error *err)
{
  const json_t *segs = json_object_get(params, "segments");
  size_t n = json_array_size(segs);
  struct linear_layer *lin = calloc(1, sizeof *lin);
  if (!lin || !(lin->seg = calloc(n, sizeof *lin->seg))) {
    free(lin);
    return ts_layer_error(l, err, -ENOMEM, NULL, "out of memory");
  }
  for (size_t i = 0; i < n; i++) {
    const json_t *s = json_array_get(segs, i);
    char key[64];
    ts_layer *child = ts_layer_child(l, json_string_value(json_object_get(s, "child")));
    const ts_limits *cl = ts_dev_limits(child);
    uint64_t off = ts_param_size(s, "offset", 0);
    uint64_t len = ts_param_size(s, "length", off < cl->size ? cl->size - off : 0);
    int r = 0;
    snprintf(key, sizeof key, "segments[%zu]", i);
    if (off % cl->logical_block_size || len % cl->logical_block_size)
      r = ts_layer_error(l, err, -EINVAL, key, "offset and length must be multiples of %u (the block size of \"%s\")",
                         cl->logical_block_size, ts_dev_name(child));
    else if (len == 0 || off + len < off || off + len > cl->size)
      r = ts_layer_error(l, err, -EINVAL, key,
                         "offset %llu + length %llu does not fit in \"%s\" (%llu bytes)",
                         (unsigned long long)off, (unsigned long long)len, ts_dev_name(child),
                         (unsigned long long)cl->size);
    else if (len > TS_SIZE_MAX - lin->size)
      r = ts_layer_error(l, err, -ERANGE, key,
                         "the segments add up to more than 2^63 - 1 bytes, the largest device size");
    if (r) {
      free(lin->seg);
      free(lin);
      return r;
    }
    lin->seg[i] = (struct segment){ lin->size, len, off, child };
    lin->size += len;
  }
  lin->nseg = n;
  ts_layer_set_priv(l, lin);
  return 0;
}

static void linear_close(ts_layer *l)
{
  struct linear_layer *lin = ts_layer_priv(l);
  if (lin) {
    free(lin->seg);
    free(lin);
  }
}

static int linear_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  struct linear_layer *lin = ts_layer_priv(l);
  lim->size = lin->size;
  /* A segment that starts off the child's granularity would make discards
   * and provisions land misaligned: fall back to the block size there. */
  for (size_t i = 0; i < lin->nseg; i++) {
    const ts_limits *cl = ts_dev_limits(lin->seg[i].child);
    if (cl->discard_granularity && (lin->seg[i].offset % cl->discard_granularity ||
                                    lin->seg[i].start % cl->discard_granularity))
      lim->discard_granularity = lim->logical_block_size;
  }
  return 0;
}

static const struct segment *find_segment(const struct linear_layer *lin, uint64_t off)
{
  size_t lo = 0, hi = lin->nseg;
  while (hi - lo > 1) {
    size_t mid = (lo + hi) / 2;
    if (lin->seg[mid].start <= off)
      lo = mid;
    else
      hi = mid;
  }
  return &lin->seg[lo];
}

static uint64_t linear_next_boundary(ts_layer *l, uint64_t off)
{
  const struct segment *s = find_segment(ts_layer_priv(l), off);
  return s->start + s->length;
}

static int linear_submit(ts_layer *l, const ts_io *io)
{
  struct linear_layer *lin = ts_layer_priv(l);
  if (io->op == TS_OP_FLUSH) {
    int first = 0;
    for (size_t i = 0; i < lin->nseg; i++) {
      bool seen = false;
      for (size_t k = 0; k < i; k++)
        seen |= lin->seg[k].child == lin->seg[i].child;
      int r = seen ? 0 : ts_flush(lin->seg[i].child);
      if (r && !first)
        first = r;
    }
    return first;
  }
  const struct segment *s = find_segment(lin, io->offset);
  ts_io sub = *io;
  sub.offset = io->offset - s->start + s->offset;
  return ts_submit(s->child, &sub);
}

/* Passed down when both ranges map into one child, which may clone them;
 * across children or segment edges the core copies by reads and writes. */
static int linear_copy_range(ts_layer *l, uint64_t src, uint64_t dst, uint64_t len, uint32_t flags)
{
  struct linear_layer *lin = ts_layer_priv(l);
  const struct segment *a = find_segment(lin, src), *b = find_segment(lin, dst);
  if (a->child != b->child || src + len > a->start + a->length || dst + len > b->start + b->length)
    return -EOPNOTSUPP;
  return ts__copy_range(a->child, src - a->start + a->offset, dst - b->start + b->offset, len,
                        flags);
}

static int linear_block_status(ts_layer *l, uint64_t off, uint64_t len, ts_extent_list *out)
{
  const struct segment *s = find_segment(ts_layer_priv(l), off);
  ts_extent_list tmp = { 0 };
  /* A prefix is enough: the core asks again for the rest. */
  int r = ts_block_status_bounded(s->child, off - s->start + s->offset, len, 0, &tmp);
  for (size_t i = 0; !r && i < tmp.n; i++)
    r = ts_extent_list_add(out, tmp.v[i].offset - s->offset + s->start, tmp.v[i].length,
                           tmp.v[i].flags);
  ts_extent_list_free(&tmp);
  return r;
}

static int linear_status(ts_layer *l, json_t *out)
{
  struct linear_layer *lin = ts_layer_priv(l);
  json_object_set_new(out, "segments", json_integer((json_int_t)lin->nseg));
  return 0;
}

static char *linear_dm_table(ts_layer *l)
{
  struct linear_layer *lin = ts_layer_priv(l);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f)
    return NULL;
  for (size_t i = 0; i < lin->nseg; i++)
    fprintf(f, "%s%llu %llu linear <%s> %llu", i ? "\n" : "",
            (unsigned long long)(lin->seg[i].start / 512),
            (unsigned long long)(lin->seg[i].length / 512), ts_dev_name(lin->seg[i].child),
            (unsigned long long)(lin->seg[i].offset / 512));
  fclose(f);
  return buf;
}

const ts_layer_type ts__linear_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "linear",
  .summary = "concatenated ranges of children (dm-linear)",
  .params = linear_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = linear_open,
  .close = linear_close,
  .limits = linear_limits,
  .submit = linear_submit,
  .block_status = linear_block_status,
  .next_boundary = linear_next_boundary,
  .status = linear_status,
  .dm_table = linear_dm_table,
  .copy_range = linear_copy_range,
};
