/* Offline checker for dm-thin metadata: recomputes every reference count
 * from the trees and compares with both space maps, and checks structure,
 * checksums, block numbers and the device bookkeeping. Reads only. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "pdata/pdata-internal.h"
#include "pdata/thin-metadata.h"

#define MAX_REPORTS_PER_KIND 20

struct devrec { uint64_t id, root, mapped; bool have_top, have_details; uint8_t details[24]; };

struct ck {
  const struct pd_bdev *bdev;
  pd_check_report_fn report;
  void *arg;
  struct pd_check_result *res;
  uint64_t mnr, dnr;
  uint32_t sb_time;
  uint32_t *mcount, *dcount;   /* counts found from references */
  uint32_t *mdisk, *ddisk;     /* counts the space maps claim */
  uint8_t *visited;
  uint64_t *memo;              /* mapped entries below a mapping-tree node */
  uint8_t *dseen;              /* data space map bitmaps found in the index */
  struct devrec *devs;
  size_t ndevs, capdevs;
  bool held_mode;
};

static void rep(struct ck *c, enum pd_check_level lvl, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void rep(struct ck *c, enum pd_check_level lvl, const char *fmt, ...)
{
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  if (lvl == PD_CHECK_ERROR)
    c->res->errors++;
  else
    c->res->warnings++;
  if (c->report)
    c->report(c->arg, lvl, msg);
}

static struct devrec *dev_get(struct ck *c, uint64_t id)
{
  for (size_t i = c->ndevs; i-- > 0;)
    if (c->devs[i].id == id)
      return &c->devs[i];
  if (c->ndevs == c->capdevs) {
    size_t n = c->capdevs ? c->capdevs * 2 : 64;
    struct devrec *v = realloc(c->devs, n * sizeof(*v));
    if (!v)
      return NULL;
    c->devs = v;
    c->capdevs = n;
  }
  memset(&c->devs[c->ndevs], 0, sizeof(c->devs[0]));
  c->devs[c->ndevs].id = id;
  return &c->devs[c->ndevs++];
}

/* Count one reference to metadata block b; false if b is out of range. */
static bool ref(struct ck *c, uint64_t b, const char *what)
{
  if (b >= c->mnr) {
    rep(c, PD_CHECK_ERROR, "%s points at block %" PRIu64 ", past the end of the metadata device (%" PRIu64 " blocks)",
        what, b, c->mnr);
    return false;
  }
  c->mcount[b]++;
  return true;
}

static int read_valid(struct ck *c, uint64_t b, enum pd_btype t, uint8_t *buf, const char *what)
{
  int r = pd_bdev_read(c->bdev, b, 1, buf);
  if (r) {
    rep(c, PD_CHECK_ERROR, "%s: reading block %" PRIu64 ": %s", what, b, strerror(-r));
    return r;
  }
  char why[256];
  if ((r = pd_block_validate(buf, b, t, why, sizeof(why)))) {
    rep(c, PD_CHECK_ERROR, "%s: %s", what, why);
    return r;
  }
  return 0;
}

enum kind { K_TOP, K_MAP, K_DETAILS, K_INDEX, K_OVERFLOW_META, K_OVERFLOW_DATA };
static const char *kind_name[] = {"mapping tree (top level)", "mapping tree", "device details tree",
                                  "data space map index", "metadata space map overflow tree",
                                  "data space map overflow tree"};
static const uint32_t kind_vsize[] = {8, 8, 24, 16, 4, 4};

static void leaf_value(struct ck *c, enum kind k, uint64_t key, const uint8_t *v, uint64_t node);
static void load_bitmap(struct ck *c, uint64_t b, uint32_t *disk, uint64_t first, uint64_t n, const char *what);

static uint64_t walk(struct ck *c, enum kind k, uint64_t b, uint64_t lo, uint64_t hi, bool root, int depth)
{
  char what[96];
  snprintf(what, sizeof(what), "%s node %" PRIu64, kind_name[k], b);
  if (!ref(c, b, what))
    return 0;
  if (c->visited[b])
    return c->memo[b];
  c->visited[b] = 1;
  if (depth > 32) {
    rep(c, PD_CHECK_ERROR, "%s: tree deeper than 32 levels (cycle?)", what);
    return 0;
  }
  uint8_t *n = malloc(PD_BLOCK_SIZE);
  if (!n || read_valid(c, b, PD_BT_NODE, n, kind_name[k])) {
    free(n);
    return 0;
  }
  uint32_t nr = pd_node_nr(n), maxe = pd_node_maxe(n), vs = pd_node_vsize(n), flags = ts__le32(n + NODE_FLAGS);
  bool leaf = flags == PD_NODE_LEAF;
  uint32_t want_vs = leaf ? kind_vsize[k] : 8;
  uint64_t total = 0;
  /* the same rules as the btree code applies before using a node */
  if (flags != PD_NODE_LEAF && flags != PD_NODE_INTERNAL) {
    rep(c, PD_CHECK_ERROR, "%s: flags %u, expected %u (internal) or %u (leaf)", what, flags, PD_NODE_INTERNAL,
        PD_NODE_LEAF);
    goto out;
  }
  if (vs != want_vs || maxe != pd_node_max_entries(vs) || nr > maxe) {
    rep(c, PD_CHECK_ERROR, "%s: value size %u / max entries %u / %u entries, expected %u / %u / at most %u", what,
        vs, maxe, nr, want_vs, pd_node_max_entries(want_vs), pd_node_max_entries(want_vs));
    goto out;
  }
  if (!leaf && !nr) {
    rep(c, PD_CHECK_ERROR, "%s: internal node without entries", what);
    goto out;
  }
  if (!root && nr < maxe / 3)
    rep(c, PD_CHECK_ERROR, "%s: only %u entries, a non-root node needs at least %u", what, nr, maxe / 3);
  for (uint32_t i = 0; i < nr; i++) {
    uint64_t key = pd_node_key(n, i);
    if (i && key <= pd_node_key(n, i - 1)) {
      rep(c, PD_CHECK_ERROR, "%s: keys not strictly increasing at entry %u", what, i);
      goto out;
    }
    if (key < lo || key >= hi) {
      rep(c, PD_CHECK_ERROR, "%s: key %" PRIu64 " outside the range [%" PRIu64 ", %" PRIu64 ") its parent gives",
          what, key, lo, hi);
      goto out;
    }
  }
  for (uint32_t i = 0; i < nr; i++) {
    uint64_t key = pd_node_key(n, i);
    if (leaf) {
      leaf_value(c, k, key, pd_node_cval(n, i), b);
      total++;
    } else {
      uint64_t chi = i + 1 < nr ? pd_node_key(n, i + 1) : hi;
      total += walk(c, k, ts__le64(pd_node_cval(n, i)), key, chi, false, depth + 1);
    }
  }
out:
  free(n);
  c->memo[b] = total;
  return total;
}

static void leaf_value(struct ck *c, enum kind k, uint64_t key, const uint8_t *v, uint64_t node)
{
  switch (k) {
  case K_TOP: {
    uint64_t root = ts__le64(v);
    if (c->held_mode) {
      walk(c, K_MAP, root, 0, UINT64_MAX, true, 0);
      break;
    }
    struct devrec *d = dev_get(c, key);
    if (d) {
      d->have_top = true;
      d->root = root;
    }
    break;
  }
  case K_MAP: {
    uint64_t x = ts__le64(v), db = x >> 24;
    uint32_t t = (uint32_t)(x & 0xFFFFFF);
    if (db >= c->dnr)
      rep(c, PD_CHECK_ERROR, "mapping tree leaf %" PRIu64 ": virtual block %" PRIu64 " maps to data block %" PRIu64
          " past the end of the data device (%" PRIu64 " blocks)", node, key, db, c->dnr);
    else
      c->dcount[db]++;
    if (t > c->sb_time)
      rep(c, PD_CHECK_ERROR, "mapping tree leaf %" PRIu64 ": virtual block %" PRIu64 " has time %u, after the pool time %u",
          node, key, t, c->sb_time);
    break;
  }
  case K_DETAILS:
    if (!c->held_mode) {
      struct devrec *d = dev_get(c, key);
      if (d) {
        d->have_details = true;
        memcpy(d->details, v, 24);
      }
    }
    break;
  case K_INDEX: {
    /* Compare the index key, not key * entries, which wraps for a huge key. */
    uint64_t nbitmaps = c->dnr / PD_ENTRIES_PER_BITMAP + (c->dnr % PD_ENTRIES_PER_BITMAP != 0);
    char what[64];
    snprintf(what, sizeof(what), "data space map bitmap %" PRIu64, key);
    if (key >= nbitmaps) {
      rep(c, PD_CHECK_ERROR, "data space map index: entry %" PRIu64 " past the end of the map", key);
      break;
    }
    uint64_t first = key * PD_ENTRIES_PER_BITMAP;
    c->dseen[key] = 1;
    uint64_t n = c->dnr - first < PD_ENTRIES_PER_BITMAP ? c->dnr - first : PD_ENTRIES_PER_BITMAP;
    load_bitmap(c, ts__le64(v), c->ddisk, first, n, what);
    break;
  }
  case K_OVERFLOW_META:
  case K_OVERFLOW_DATA: {
    uint32_t *disk = k == K_OVERFLOW_META ? c->mdisk : c->ddisk;
    uint64_t lim = k == K_OVERFLOW_META ? c->mnr : c->dnr;
    uint32_t cnt = ts__le32(v);
    if (key >= lim) {
      rep(c, PD_CHECK_ERROR, "%s: entry for block %" PRIu64 " past the end of the map", kind_name[k], key);
    } else if (disk[key] != 3) {
      rep(c, PD_CHECK_ERROR, "%s: entry for block %" PRIu64 " whose bitmap count is %u, not 3", kind_name[k], key,
          disk[key]);
    } else if (cnt < 3) {
      rep(c, PD_CHECK_ERROR, "%s: block %" PRIu64 " has overflow count %u (< 3)", kind_name[k], key, cnt);
    } else {
      disk[key] = cnt | 0x80000000u; /* mark: overflow entry seen */
    }
    break;
  }
  }
}

static void load_bitmap(struct ck *c, uint64_t b, uint32_t *disk, uint64_t first, uint64_t n, const char *what)
{
  if (!ref(c, b, what))
    return;
  uint8_t *buf = malloc(PD_BLOCK_SIZE);
  if (!buf)
    return;
  if (!read_valid(c, b, PD_BT_BITMAP, buf, what)) {
    uint64_t w[PD_BITMAP_WORDS];
    memcpy(w, buf + 16, sizeof(w));
    for (uint64_t i = 0; i < n; i++)
      disk[first + i] = pd_bits_get(w, (uint32_t)i);
  }
  free(buf);
}

static void compare_counts(struct ck *c, const char *what, const uint32_t *found, uint32_t *disk, uint64_t n,
                           uint64_t claimed_alloc)
{
  uint64_t bad = 0, alloc = 0;
  for (uint64_t b = 0; b < n; b++) {
    uint32_t d = disk[b];
    if (d == 3) {
      if (bad++ < MAX_REPORTS_PER_KIND)
        rep(c, PD_CHECK_ERROR, "%s space map: block %" PRIu64 " has count 3+ but no overflow entry", what, b);
      continue;
    }
    d &= 0x7FFFFFFFu;
    if (d)
      alloc++;
    if (d != found[b] && bad++ < MAX_REPORTS_PER_KIND)
      rep(c, PD_CHECK_ERROR, "%s space map: block %" PRIu64 " has reference count %u, but %u reference%s found%s",
          what, b, d, found[b], found[b] == 1 ? " was" : "s were", d > found[b] ? " (leaked)" : "");
  }
  if (bad > MAX_REPORTS_PER_KIND)
    rep(c, PD_CHECK_ERROR, "%s space map: %" PRIu64 " more reference count errors not shown", what,
        bad - MAX_REPORTS_PER_KIND);
  if (alloc != claimed_alloc)
    rep(c, PD_CHECK_WARNING, "%s space map: root says %" PRIu64 " blocks allocated, bitmaps say %" PRIu64, what,
        claimed_alloc, alloc);
}

/* Whatever the walk above accepts, opening must accept too: open the pool
 * read-only the way the library does and report its refusal as damage. */
static void open_as_pool(struct ck *c)
{
  struct tmd_config cfg = {.read_only = true, .cache_blocks = 256};
  struct pd_bdev ro = *c->bdev;
  ro.read_only = true;
  struct tmd *md;
  ts_error err = {0};
  int r = tmd_open(&ro, &cfg, &md, &err);
  if (r == -ENOMEM)
    rep(c, PD_CHECK_ERROR, "opening the pool: out of memory");
  else if (r)
    rep(c, PD_CHECK_ERROR, "opening the pool is refused: %s", err.msg);
  else
    tmd_close(md);
}

int pd_check(const struct pd_bdev *bdev, pd_check_report_fn report, void *arg, struct pd_check_result *res)
{
  struct pd_check_result dummy;
  if (!res)
    res = &dummy;
  memset(res, 0, sizeof(*res));
  struct ck c = {.bdev = bdev, .report = report, .arg = arg, .res = res};
  uint8_t *sb = malloc(PD_BLOCK_SIZE);
  if (!sb)
    return -ENOMEM;
  int r = bdev->nr_blocks ? pd_bdev_read(bdev, 0, 1, sb) : -EIO;
  if (r) {
    free(sb);
    return r;
  }
  char why[400];
  if (pd_sb_check(sb, bdev->nr_blocks, false, why, sizeof(why))) {
    rep(&c, PD_CHECK_ERROR, "%s", why);
    free(sb);
    return 0;
  }
  c.mnr = ts__le64(sb + SB_META_NR_BLOCKS);
  c.dnr = ts__le64(sb + SB_DATA_SM);
  c.sb_time = ts__le32(sb + SB_TIME);
  res->transaction_id = ts__le64(sb + SB_TRANS_ID);
  /* pd_sb_check bounded the bitmaps by the metadata size, and with them the
   * memory and time below that go per data block */
  uint64_t dbm = (c.dnr + PD_ENTRIES_PER_BITMAP - 1) / PD_ENTRIES_PER_BITMAP;
  c.dseen = calloc(dbm + 1, 1);
  c.mcount = calloc(c.mnr, 4);
  c.mdisk = calloc(c.mnr, 4);
  c.visited = calloc(c.mnr, 1);
  c.memo = calloc(c.mnr, 8);
  c.dcount = calloc(c.dnr + 1, 4);
  c.ddisk = calloc(c.dnr + 1, 4);
  if (!c.dseen || !c.mcount || !c.mdisk || !c.visited || !c.memo || !c.dcount || !c.ddisk) {
    r = -ENOMEM;
    goto out;
  }
  c.mcount[0]++; /* the superblock */

  /* space maps first, so overflow entries can be matched to bitmap counts */
  uint64_t midx = ts__le64(sb + SB_META_SM + 16);
  if (ref(&c, midx, "metadata space map index")) {
    uint8_t *ib = malloc(PD_BLOCK_SIZE);
    if (ib && !read_valid(&c, midx, PD_BT_INDEX, ib, "metadata space map index")) {
      uint64_t nbm = (c.mnr + PD_ENTRIES_PER_BITMAP - 1) / PD_ENTRIES_PER_BITMAP;
      for (uint64_t i = 0; i < nbm; i++) {
        uint64_t first = i * PD_ENTRIES_PER_BITMAP;
        uint64_t n = c.mnr - first < PD_ENTRIES_PER_BITMAP ? c.mnr - first : PD_ENTRIES_PER_BITMAP;
        char what[64];
        snprintf(what, sizeof(what), "metadata space map bitmap %" PRIu64, i);
        load_bitmap(&c, ts__le64(ib + 16 + 16 * i), c.mdisk, first, n, what);
      }
    }
    free(ib);
  }
  walk(&c, K_INDEX, ts__le64(sb + SB_DATA_SM + 16), 0, UINT64_MAX, true, 0);
  for (uint64_t i = 0, missing = 0; i < dbm; i++)
    if (!c.dseen[i] && missing++ < MAX_REPORTS_PER_KIND)
      rep(&c, PD_CHECK_ERROR, "data space map index: bitmap %" PRIu64 " missing (the map has %" PRIu64
          " blocks)", i, c.dnr);
  walk(&c, K_OVERFLOW_META, ts__le64(sb + SB_META_SM + 24), 0, UINT64_MAX, true, 0);
  walk(&c, K_OVERFLOW_DATA, ts__le64(sb + SB_DATA_SM + 24), 0, UINT64_MAX, true, 0);

  /* the pool's trees */
  walk(&c, K_TOP, ts__le64(sb + SB_MAPPING_ROOT), 0, UINT64_MAX, true, 0);
  walk(&c, K_DETAILS, ts__le64(sb + SB_DETAILS_ROOT), 0, UINT64_MAX, true, 0);
  for (size_t i = 0; i < c.ndevs; i++) {
    struct devrec *d = &c.devs[i];
    if (d->have_top)
      d->mapped = walk(&c, K_MAP, d->root, 0, UINT64_MAX, true, 0);
  }
  for (size_t i = 0; i < c.ndevs; i++) {
    struct devrec *d = &c.devs[i];
    if (!d->have_details)
      rep(&c, PD_CHECK_ERROR, "device %" PRIu64 " is in the mapping tree but not in the details tree", d->id);
    else if (!d->have_top)
      rep(&c, PD_CHECK_ERROR, "device %" PRIu64 " is in the details tree but not in the mapping tree", d->id);
    else if (ts__le64(d->details) != d->mapped)
      rep(&c, PD_CHECK_ERROR, "device %" PRIu64 ": details say %" PRIu64 " mapped blocks, its tree has %" PRIu64,
          d->id, ts__le64(d->details), d->mapped);
    if (d->have_details && ts__le32(d->details + 20) > c.sb_time)
      rep(&c, PD_CHECK_ERROR, "device %" PRIu64 ": snapshot time %u is after the pool time %u", d->id,
          ts__le32(d->details + 20), c.sb_time);
    res->nr_mappings += d->mapped;
  }
  res->nr_devices = c.ndevs;

  /* the held metadata snapshot shares the trees: count its references too */
  uint64_t held = ts__le64(sb + SB_HELD_ROOT);
  if (held && ref(&c, held, "held metadata snapshot")) {
    uint8_t *hb = malloc(PD_BLOCK_SIZE);
    if (hb && !read_valid(&c, held, PD_BT_SUPER, hb, "held metadata snapshot superblock")) {
      c.held_mode = true;
      walk(&c, K_TOP, ts__le64(hb + SB_MAPPING_ROOT), 0, UINT64_MAX, true, 0);
      walk(&c, K_DETAILS, ts__le64(hb + SB_DETAILS_ROOT), 0, UINT64_MAX, true, 0);
    }
    free(hb);
  }

  compare_counts(&c, "metadata", c.mcount, c.mdisk, c.mnr, ts__le64(sb + SB_META_SM + 8));
  compare_counts(&c, "data", c.dcount, c.ddisk, c.dnr, ts__le64(sb + SB_DATA_SM + 8));
  for (uint64_t b = 0; b < c.mnr; b++)
    res->metadata_blocks_used += c.mcount[b] != 0;
  for (uint64_t b = 0; b < c.dnr; b++)
    res->data_blocks_used += c.dcount[b] != 0;
  if (!res->errors)
    open_as_pool(&c);
  r = 0;
out:
  free(c.dseen);
  free(sb);
  free(c.mcount);
  free(c.mdisk);
  free(c.visited);
  free(c.memo);
  free(c.dcount);
  free(c.ddisk);
  free(c.devs);
  return r;
}
