/* Salvaging damaged pool metadata, as thin_repair does: every node of the
 * device and mapping trees that still reads back valid (checksum, block
 * number, header) gives up its entries, the rest is passed over, and what
 * was found is written as thin_dump XML for pd_restore_xml to build fresh
 * metadata from. The space maps are not read at all: they are recomputed
 * from the mappings kept. What is lost: the mappings of unreadable leaves,
 * devices reached only through an unreadable node of the top-level tree,
 * and everything when the superblock itself is unreadable (its tree roots
 * are not searched for). */
#include "pdata/pdata-internal.h"
#include "pdata/thin-metadata.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#define SALVAGE_MAX_DEPTH 16

struct salvage {
  struct pd_bm *bm;
  struct pd_repair_result *res;
};

/* Called per readable leaf with its keys and values. */
typedef int (*salvage_leaf_fn)(void *arg, const uint64_t *keys, const uint8_t *vals, uint32_t n,
                               uint32_t vsize);

static bool node_sane(const uint8_t *n, uint32_t leaf_vsize)
{
  uint32_t flags = ts__le32(n + NODE_FLAGS), nr = pd_node_nr(n), maxe = pd_node_maxe(n);
  uint32_t vs = pd_node_vsize(n);
  bool leaf = flags & PD_NODE_LEAF;
  if (leaf == !!(flags & PD_NODE_INTERNAL) || vs != (leaf ? leaf_vsize : 8u) || nr > maxe ||
      32 + (uint64_t)maxe * (8 + vs) > PD_BLOCK_SIZE)
    return false;
  for (uint32_t i = 1; i < nr; i++)
    if (pd_node_key(n, i) <= pd_node_key(n, i - 1))
      return false;
  return true;
}

static int salvage_walk(struct salvage *s, uint64_t b, uint32_t vsize, int depth,
                        salvage_leaf_fn fn, void *arg)
{
  if (depth > SALVAGE_MAX_DEPTH || b == 0 || b >= s->bm->nr_blocks) {
    s->res->nodes_damaged++;
    return 0;
  }
  struct pd_block *blk;
  int r = pd_bm_read(s->bm, b, PD_BT_NODE, &blk);
  if (r == -EILSEQ || r == -EIO) {
    s->res->nodes_damaged++;
    return 0;
  }
  if (r)
    return r;
  uint8_t *copy = malloc(PD_BLOCK_SIZE);
  if (!copy) {
    pd_bm_unlock(s->bm, blk);
    return -ENOMEM;
  }
  memcpy(copy, blk->data, PD_BLOCK_SIZE);
  pd_bm_unlock(s->bm, blk);
  if (!node_sane(copy, vsize)) {
    s->res->nodes_damaged++;
    free(copy);
    return 0;
  }
  uint32_t nr = pd_node_nr(copy);
  uint64_t keys[256];
  for (uint32_t i = 0; i < nr && i < 256; i++)
    keys[i] = pd_node_key(copy, i);
  if (pd_node_is_leaf(copy)) {
    r = fn(arg, keys, pd_node_cval(copy, 0), nr, vsize);
  } else {
    for (uint32_t i = 0; i < nr && !r; i++)
      r = salvage_walk(s, ts__le64(pd_node_cval(copy, i)), vsize, depth + 1, fn, arg);
  }
  free(copy);
  return r;
}

/* ---- what is found ---- */

struct found_dev {
  uint32_t id;
  uint64_t root;
  bool have_details;
  uint8_t details[24];
  uint64_t *map; /* vblock, value (block << 24 | time) pairs */
  size_t n, cap;
};

struct found {
  struct found_dev *devs;
  size_t n, cap;
  struct found_dev *cur;
};

static struct found_dev *dev_get(struct found *f, uint64_t id, bool add)
{
  for (size_t i = 0; i < f->n; i++)
    if (f->devs[i].id == id)
      return &f->devs[i];
  if (!add || id > TMD_MAX_DEV_ID)
    return NULL;
  if (f->n == f->cap) {
    size_t c = f->cap ? 2 * f->cap : 16;
    struct found_dev *d = realloc(f->devs, c * sizeof *d);
    if (!d)
      return NULL;
    f->devs = d;
    f->cap = c;
  }
  struct found_dev *d = &f->devs[f->n++];
  memset(d, 0, sizeof *d);
  d->id = (uint32_t)id;
  return d;
}

static int top_leaf(void *arg, const uint64_t *keys, const uint8_t *vals, uint32_t n, uint32_t vs)
{
  (void)vs;
  struct found *f = arg;
  for (uint32_t i = 0; i < n; i++) {
    struct found_dev *d = dev_get(f, keys[i], true);
    if (!d)
      return keys[i] > TMD_MAX_DEV_ID ? 0 : -ENOMEM;
    if (!d->root)
      d->root = ts__le64(vals + 8 * (size_t)i);
  }
  return 0;
}

static int details_leaf(void *arg, const uint64_t *keys, const uint8_t *vals, uint32_t n,
                        uint32_t vs)
{
  struct found *f = arg;
  for (uint32_t i = 0; i < n; i++) {
    struct found_dev *d = dev_get(f, keys[i], false);
    if (d && !d->have_details) {
      memcpy(d->details, vals + (size_t)vs * i, 24);
      d->have_details = true;
    }
  }
  return 0;
}

static int map_leaf(void *arg, const uint64_t *keys, const uint8_t *vals, uint32_t n, uint32_t vs)
{
  (void)vs;
  struct found_dev *d = ((struct found *)arg)->cur;
  if (d->n + n > d->cap) {
    size_t c = d->cap ? 2 * d->cap : 1024;
    while (c < d->n + n)
      c *= 2;
    uint64_t *m = realloc(d->map, c * 2 * sizeof *m);
    if (!m)
      return -ENOMEM;
    d->map = m;
    d->cap = c;
  }
  for (uint32_t i = 0; i < n; i++) {
    d->map[2 * d->n] = keys[i];
    d->map[2 * d->n + 1] = ts__le64(vals + 8 * (size_t)i);
    d->n++;
  }
  return 0;
}

static int cmp_pair(const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static int cmp_dev(const void *a, const void *b)
{
  uint32_t x = ((const struct found_dev *)a)->id, y = ((const struct found_dev *)b)->id;
  return x < y ? -1 : x > y;
}

static void write_run(FILE *out, uint64_t v, uint64_t d, uint64_t len, uint32_t t)
{
  if (len == 1)
    fprintf(out,
            "    <single_mapping origin_block=\"%" PRIu64 "\" data_block=\"%" PRIu64
            "\" time=\"%u\"/>\n",
            v, d, t);
  else if (len)
    fprintf(out,
            "    <range_mapping origin_begin=\"%" PRIu64 "\" data_begin=\"%" PRIu64
            "\" length=\"%" PRIu64 "\" time=\"%u\"/>\n",
            v, d, len, t);
}

int pd_repair_xml(const struct pd_bdev *bdev, FILE *out, struct pd_repair_result *res,
                  ts_error *err)
{
  memset(res, 0, sizeof *res);
  uint8_t *sb = malloc(PD_BLOCK_SIZE);
  if (!sb)
    return ts_error_set(err, -ENOMEM, "out of memory");
  char why[400];
  int r = bdev->nr_blocks ? pd_bdev_read(bdev, 0, 1, sb) : -EIO;
  if (r) {
    free(sb);
    return ts_error_set(err, r, "reading the superblock: %s", strerror(-r));
  }
  /* The superblock names every tree: without it nothing is found. */
  if ((r = pd_sb_check(sb, bdev->nr_blocks, false, why, sizeof why))) {
    free(sb);
    return ts_error_set(err, r, "the superblock is damaged (%s): nothing to rebuild from", why);
  }
  struct pd_bm *bm;
  uint64_t nr_meta = ts__le64(sb + SB_META_NR_BLOCKS);
  if ((r = pd_bm_create(&bm, bdev, nr_meta, 1024))) {
    free(sb);
    return ts_error_set(err, r, "out of memory");
  }
  struct salvage s = { bm, res };
  struct found f = { 0 };
  uint64_t nr_data = ts__le64(sb + SB_DATA_SM);
  uint32_t time = ts__le32(sb + SB_TIME);
  r = salvage_walk(&s, ts__le64(sb + SB_MAPPING_ROOT), 8, 0, top_leaf, &f);
  if (!r)
    r = salvage_walk(&s, ts__le64(sb + SB_DETAILS_ROOT), 24, 0, details_leaf, &f);
  for (size_t i = 0; !r && i < f.n; i++) {
    f.cur = &f.devs[i];
    r = salvage_walk(&s, f.devs[i].root, 8, 0, map_leaf, &f);
  }
  if (r) {
    ts_error_set(err, r, "salvaging the trees: %s", strerror(-r));
    goto out;
  }
  qsort(f.devs, f.n, sizeof *f.devs, cmp_dev);
  /* Mappings in key order, the first of a repeated key kept; blocks past
   * the data device dropped. The pool's time covers every time kept. */
  for (size_t i = 0; i < f.n; i++) {
    struct found_dev *d = &f.devs[i];
    qsort(d->map, d->n, 2 * sizeof *d->map, cmp_pair);
    size_t k = 0;
    for (size_t j = 0; j < d->n; j++) {
      uint64_t v = d->map[2 * j], x = d->map[2 * j + 1];
      if ((k && d->map[2 * (k - 1)] == v) || (x >> 24) >= nr_data) {
        res->mappings_dropped++;
        continue;
      }
      if ((uint32_t)(x & 0xFFFFFF) > time)
        time = (uint32_t)(x & 0xFFFFFF);
      d->map[2 * k] = v;
      d->map[2 * k + 1] = x;
      k++;
    }
    d->n = k;
    if (!d->have_details)
      res->devices_without_details++;
    else if (ts__le32(d->details + 20) > time || ts__le32(d->details + 16) > time)
      time = ts__le32(d->details + 20) > ts__le32(d->details + 16) ? ts__le32(d->details + 20)
                                                                   : ts__le32(d->details + 16);
  }
  fprintf(out,
          "<superblock uuid=\"\" time=\"%u\" transaction=\"%" PRIu64 "\" flags=\"0\" "
          "version=\"2\" data_block_size=\"%u\" nr_data_blocks=\"%" PRIu64 "\">\n",
          time, ts__le64(sb + SB_TRANS_ID), ts__le32(sb + SB_DATA_BLOCK_SIZE), nr_data);
  for (size_t i = 0; i < f.n; i++) {
    struct found_dev *d = &f.devs[i];
    const uint8_t *det = d->details;
    fprintf(out,
            "  <device dev_id=\"%u\" mapped_blocks=\"%zu\" transaction=\"%" PRIu64
            "\" creation_time=\"%u\" snap_time=\"%u\">\n",
            d->id, d->n, d->have_details ? ts__le64(det + 8) : 0,
            d->have_details ? ts__le32(det + 16) : 0, d->have_details ? ts__le32(det + 20) : 0);
    uint64_t rv = 0, rd = 0, rl = 0;
    uint32_t rt = 0;
    for (size_t j = 0; j < d->n; j++) {
      uint64_t v = d->map[2 * j], b = d->map[2 * j + 1] >> 24;
      uint32_t t = (uint32_t)(d->map[2 * j + 1] & 0xFFFFFF);
      if (rl && rv + rl == v && rd + rl == b && rt == t) {
        rl++;
        continue;
      }
      write_run(out, rv, rd, rl, rt);
      rv = v, rd = b, rl = 1, rt = t;
    }
    write_run(out, rv, rd, rl, rt);
    fprintf(out, "  </device>\n");
    res->devices++;
    res->mappings += d->n;
  }
  fprintf(out, "</superblock>\n");
  if (ferror(out))
    r = ts_error_set(err, -EIO, "writing the rebuilt metadata's XML failed");
out:
  for (size_t i = 0; i < f.n; i++)
    free(f.devs[i].map);
  free(f.devs);
  pd_bm_destroy(bm);
  free(sb);
  return r;
}
