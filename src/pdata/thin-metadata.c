/* Pool-level thin metadata: devices, mappings, data space and commits on top
 * of the btrees and space maps, in the dm-thin metadata version 2 layout.
 *
 * In-memory state beyond the block cache: both space maps (see sm.c) and a
 * table of every thin device with its current mapping-tree root and details.
 * Roots and details go back into the two top-level trees at commit; the
 * top-level path of a device is shadowed before its first change in a
 * transaction, so reference counts stay right when that path is shared with
 * a held metadata snapshot. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "pdata/pdata-internal.h"
#include "pdata/thin-metadata.h"

struct tmd_dev {
  uint32_t id;
  uint64_t root;
  struct tmd_dev_info info;
  bool root_dirty; /* top-level tree value is stale */
  bool info_dirty; /* details tree value is stale */
  bool top_ready;  /* top-level path shadowed in this transaction */
  uint64_t gen;    /* tmd_map_gen: changes whenever a lookup's answer may */
};

struct freed_run {
  tmd_freed_fn fn;
  void *arg;
  bool hold;
  uint64_t begin, len;
  int err;
};

struct tmd {
  struct pd_bdev bdev;
  struct tmd_config cfg;
  struct pd_bm *bm;
  struct pd_sm data, meta;
  struct pd_tm tm;
  struct pd_btree top, map, details;
  uint8_t sb[PD_BLOCK_SIZE]; /* last committed superblock */
  uint32_t flags, time, data_block_size;
  uint64_t trans_id, held_root, mapping_root, details_root, meta_nr_blocks;
  struct tmd_dev **devs;
  size_t nr_devs, cap_devs;
  bool read_only, failed, changed;
  struct freed_run *fr; /* set during tmd_remove_range */
  uint64_t gen;         /* last value handed to a device's gen; survives reloads */
};

/* ---- value types ---- */

static int map_inc(void *ctx, const uint8_t *v, uint32_t n)
{
  struct tmd *md = ctx;
  for (uint32_t i = 0; i < n; i++) {
    int r = pd_sm_inc(&md->data, ts__le64(v + 8 * (size_t)i) >> 24);
    if (r)
      return r;
  }
  return 0;
}

static void freed_report(struct tmd *md, uint64_t b)
{
  struct freed_run *f = md->fr;
  if (f->len && f->begin + f->len == b) {
    f->len++;
    return;
  }
  if (f->len && !f->err && f->fn)
    f->err = f->fn(f->arg, f->begin, f->len);
  f->begin = b;
  f->len = 1;
}

static int map_dec(void *ctx, const uint8_t *v)
{
  struct tmd *md = ctx;
  uint64_t b = ts__le64(v) >> 24;
  if (md->fr && md->fr->hold && pd_sm_get(&md->data, b) == 1) {
    freed_report(md, b); /* keep the last reference for the caller */
    return 0;
  }
  uint32_t now;
  int r = pd_sm_dec(&md->data, b, &now);
  if (r)
    return r == -EINVAL ? -EILSEQ : r; /* mapping to a free block: corrupt */
  if (!now && md->fr)
    freed_report(md, b);
  return 0;
}

static int top_inc(void *ctx, const uint8_t *v, uint32_t n)
{
  struct tmd *md = ctx;
  for (uint32_t i = 0; i < n; i++) {
    int r = pd_tm_inc(&md->tm, ts__le64(v + 8 * (size_t)i));
    if (r)
      return r;
  }
  return 0;
}

/* for releasing a held snapshot: dropping a top-level value drops a subtree */
static int top_dec_subtree(void *ctx, const uint8_t *v)
{
  struct tmd *md = ctx;
  return pd_btree_del(&md->map, ts__le64(v));
}

static void init_trees(struct tmd *md)
{
  md->tm.bm = md->bm;
  md->tm.meta = &md->meta;
  md->top = (struct pd_btree){&md->tm, {8, md, top_inc, NULL}};
  md->map = (struct pd_btree){&md->tm, {8, md, map_inc, map_dec}};
  md->details = (struct pd_btree){&md->tm, {24, md, NULL, NULL}};
}

/* ---- device table (sorted by id) ---- */

static size_t dev_pos(const struct tmd *md, uint32_t id)
{
  size_t lo = 0, hi = md->nr_devs;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (md->devs[mid]->id < id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static struct tmd_dev *dev_find(const struct tmd *md, uint32_t id)
{
  size_t p = dev_pos(md, id);
  return p < md->nr_devs && md->devs[p]->id == id ? md->devs[p] : NULL;
}

static struct tmd_dev *dev_add(struct tmd *md, uint32_t id)
{
  if (md->nr_devs == md->cap_devs) {
    size_t n = md->cap_devs ? md->cap_devs * 2 : 16;
    struct tmd_dev **v = realloc(md->devs, n * sizeof(*v));
    if (!v)
      return NULL;
    md->devs = v;
    md->cap_devs = n;
  }
  struct tmd_dev *d = calloc(1, sizeof(*d));
  if (!d)
    return NULL;
  d->id = id;
  d->gen = ++md->gen;
  size_t p = dev_pos(md, id);
  memmove(md->devs + p + 1, md->devs + p, (md->nr_devs - p) * sizeof(*md->devs));
  md->devs[p] = d;
  md->nr_devs++;
  return d;
}

static void dev_remove(struct tmd *md, uint32_t id)
{
  size_t p = dev_pos(md, id);
  free(md->devs[p]);
  memmove(md->devs + p, md->devs + p + 1, (md->nr_devs - p - 1) * sizeof(*md->devs));
  md->nr_devs--;
}

static void free_state(struct tmd *md)
{
  for (size_t i = 0; i < md->nr_devs; i++)
    free(md->devs[i]);
  free(md->devs);
  md->devs = NULL;
  md->nr_devs = md->cap_devs = 0;
  pd_sm_free(&md->data);
  pd_sm_free(&md->meta);
}

static void encode_details(const struct tmd_dev_info *in, uint8_t *v)
{
  ts__put64(v, in->mapped_blocks);
  ts__put64(v + 8, in->transaction_id);
  ts__put32(v + 16, in->creation_time);
  ts__put32(v + 20, in->snapshotted_time);
}

/* ---- loading ---- */

struct load_ctx {
  struct tmd *md;
  char *why;
  size_t whylen;
};

static int load_top(void *arg, const uint8_t *n, uint32_t first, uint32_t cnt)
{
  struct load_ctx *c = arg;
  if (pd_node_vsize(n) != 8) {
    snprintf(c->why, c->whylen, "mapping tree: top-level leaf value size %u", pd_node_vsize(n));
    return -EILSEQ;
  }
  for (uint32_t i = first; i < first + cnt; i++) {
    uint64_t id = pd_node_key(n, i), root = ts__le64(pd_node_cval(n, i));
    if (id > TMD_MAX_DEV_ID || root == 0 || root >= c->md->meta_nr_blocks) {
      snprintf(c->why, c->whylen, "mapping tree: device %" PRIu64 " has invalid id or root %" PRIu64, id, root);
      return -EINVAL;
    }
    struct tmd_dev *d = dev_add(c->md, (uint32_t)id);
    if (!d)
      return -ENOMEM;
    d->root = root;
  }
  return 0;
}

static int load_details(void *arg, const uint8_t *n, uint32_t first, uint32_t cnt)
{
  struct load_ctx *c = arg;
  if (pd_node_vsize(n) != 24) {
    snprintf(c->why, c->whylen, "device details tree: leaf value size %u", pd_node_vsize(n));
    return -EILSEQ;
  }
  for (uint32_t i = first; i < first + cnt; i++) {
    uint64_t id = pd_node_key(n, i);
    struct tmd_dev *d = id <= TMD_MAX_DEV_ID ? dev_find(c->md, (uint32_t)id) : NULL;
    if (!d) {
      snprintf(c->why, c->whylen, "device %" PRIu64 " is in the details tree but not in the mapping tree", id);
      return -EINVAL;
    }
    const uint8_t *v = pd_node_cval(n, i);
    d->info.mapped_blocks = ts__le64(v);
    d->info.transaction_id = ts__le64(v + 8);
    d->info.creation_time = ts__le32(v + 16);
    d->info.snapshotted_time = ts__le32(v + 20);
    d->info_dirty = true; /* marks "seen"; cleared below */
  }
  return 0;
}

/* Validate superblock fields; 0 or -errno with why. */
int pd_sb_check(const uint8_t *sb, uint64_t dev_blocks, bool rw, char *why, size_t whylen)
{
  if (ts__le64(sb + SB_MAGIC) != PD_SB_MAGIC) {
    snprintf(why, whylen, "superblock: bad magic %" PRIu64 " (expected %llu): not thin-pool metadata",
             ts__le64(sb + SB_MAGIC), PD_SB_MAGIC);
    return -EINVAL;
  }
  if (ts__le32(sb) != pd_block_csum(sb, PD_SALT_SUPER)) {
    snprintf(why, whylen, "superblock: checksum mismatch (stored %08x, computed %08x)", ts__le32(sb),
             pd_block_csum(sb, PD_SALT_SUPER));
    return -EILSEQ;
  }
  if (ts__le64(sb + SB_BLOCKNR) != 0) {
    snprintf(why, whylen, "superblock: stored block number %" PRIu64 ", expected 0", ts__le64(sb + SB_BLOCKNR));
    return -EILSEQ;
  }
  uint32_t ver = ts__le32(sb + SB_VERSION);
  if (ver != PD_SB_VERSION) {
    snprintf(why, whylen, "superblock: metadata version %u is not supported (only version 2%s)", ver,
             ver == 1 ? "; thin_restore writes 1 unless the XML says version=\"2\"" : "");
    return -EINVAL;
  }
  if (ts__le32(sb + SB_INCOMPAT)) {
    snprintf(why, whylen, "superblock: unknown incompatible feature flags 0x%x", ts__le32(sb + SB_INCOMPAT));
    return -EINVAL;
  }
  if (rw && ts__le32(sb + SB_COMPAT_RO)) {
    snprintf(why, whylen, "superblock: unknown read-only-compatible feature flags 0x%x; open read-only",
             ts__le32(sb + SB_COMPAT_RO));
    return -EINVAL;
  }
  if (ts__le32(sb + SB_META_BLOCK_SIZE) != 8) {
    snprintf(why, whylen, "superblock: metadata block size %u sectors, expected 8", ts__le32(sb + SB_META_BLOCK_SIZE));
    return -EINVAL;
  }
  uint32_t dbs = ts__le32(sb + SB_DATA_BLOCK_SIZE);
  if (dbs < TMD_MIN_DATA_BLOCK_SIZE || dbs > TMD_MAX_DATA_BLOCK_SIZE || dbs % 128) {
    snprintf(why, whylen, "superblock: data block size %u sectors is invalid", dbs);
    return -EINVAL;
  }
  uint64_t mnr = ts__le64(sb + SB_META_NR_BLOCKS);
  if (mnr < 2 || mnr > TMD_MAX_METADATA_BLOCKS) {
    snprintf(why, whylen, "superblock: metadata size %" PRIu64 " blocks is invalid", mnr);
    return -EINVAL;
  }
  if (mnr > dev_blocks) {
    snprintf(why, whylen, "metadata device is truncated: superblock says %" PRIu64 " blocks, device has %" PRIu64,
             mnr, dev_blocks);
    return -EINVAL;
  }
  if (ts__le64(sb + SB_META_SM) != mnr) {
    snprintf(why, whylen, "superblock: metadata space map has %" PRIu64 " blocks, superblock says %" PRIu64,
             ts__le64(sb + SB_META_SM), mnr);
    return -EINVAL;
  }
  uint64_t dnr = ts__le64(sb + SB_DATA_SM);
  if (dnr > TMD_MAX_DATA_BLOCKS) {
    snprintf(why, whylen, "superblock: data space map size %" PRIu64 " is too large", dnr);
    return -EINVAL;
  }
  /* Each data bitmap is a metadata block of its own: a larger claim is
   * damage, and refusing it keeps what loading and checking allocate per
   * data block bounded by the metadata device's size. */
  uint64_t dbm = (dnr + PD_ENTRIES_PER_BITMAP - 1) / PD_ENTRIES_PER_BITMAP;
  if (dbm > mnr) {
    snprintf(why, whylen, "superblock: the data space map of %" PRIu64 " blocks needs %" PRIu64
             " bitmaps, more than the %" PRIu64 " blocks of the metadata device", dnr, dbm, mnr);
    return -EINVAL;
  }
  uint64_t roots[3] = {ts__le64(sb + SB_MAPPING_ROOT), ts__le64(sb + SB_DETAILS_ROOT), ts__le64(sb + SB_HELD_ROOT)};
  for (int i = 0; i < 3; i++)
    if ((i < 2 && !roots[i]) || roots[i] >= mnr) {
      snprintf(why, whylen, "superblock: %s block %" PRIu64 " is out of range",
               i == 0 ? "mapping root" : i == 1 ? "details root" : "held root", roots[i]);
      return -EINVAL;
    }
  return 0;
}

/* (Re)load all in-memory state from the superblock in md->sb. */
static int load_state(struct tmd *md, char *why, size_t whylen)
{
  const uint8_t *sb = md->sb;
  md->flags = ts__le32(sb + SB_FLAGS);
  md->time = ts__le32(sb + SB_TIME);
  md->trans_id = ts__le64(sb + SB_TRANS_ID);
  md->held_root = ts__le64(sb + SB_HELD_ROOT);
  md->mapping_root = ts__le64(sb + SB_MAPPING_ROOT);
  md->details_root = ts__le64(sb + SB_DETAILS_ROOT);
  md->data_block_size = ts__le32(sb + SB_DATA_BLOCK_SIZE);
  md->meta_nr_blocks = ts__le64(sb + SB_META_NR_BLOCKS);
  int r = pd_sm_load(&md->tm, &md->meta, sb + SB_META_SM, true, why, whylen);
  if (!r)
    r = pd_sm_load(&md->tm, &md->data, sb + SB_DATA_SM, false, why, whylen);
  if (r)
    return r;
  struct load_ctx c = {md, why, whylen};
  r = pd_btree_walk(&md->top, md->mapping_root, 0, UINT64_MAX, load_top, &c);
  if (!r)
    r = pd_btree_walk(&md->details, md->details_root, 0, UINT64_MAX, load_details, &c);
  if (r) {
    if (!why[0] && r == -EILSEQ) {
      char bad[200];
      pd_bm_last_refusal(md->bm, bad, sizeof(bad));
      snprintf(why, whylen, "reading the device trees: %s", bad[0] ? bad : "a btree node failed validation");
    } else if (!why[0]) {
      snprintf(why, whylen, "reading the device trees: %s", strerror(-r));
    }
    return r;
  }
  for (size_t i = 0; i < md->nr_devs; i++) {
    if (!md->devs[i]->info_dirty) {
      snprintf(why, whylen, "device %u is in the mapping tree but not in the details tree", md->devs[i]->id);
      return -EINVAL;
    }
    md->devs[i]->info_dirty = false;
  }
  md->changed = false;
  md->failed = false;
  return 0;
}

static int create_handle(const struct pd_bdev *bdev, const struct tmd_config *cfg, uint64_t nr_blocks,
                         struct tmd **out)
{
  struct tmd *md = calloc(1, sizeof(*md));
  if (!md)
    return -ENOMEM;
  md->bdev = *bdev;
  if (cfg)
    md->cfg = *cfg;
  md->read_only = md->cfg.read_only || bdev->read_only || !bdev->ops->write;
  int r = pd_bm_create(&md->bm, bdev, nr_blocks,
                       md->cfg.cache_blocks ? md->cfg.cache_blocks : TMD_DEFAULT_CACHE_BLOCKS);
  if (r) {
    free(md);
    return r;
  }
  init_trees(md);
  *out = md;
  return 0;
}

int tmd_open(const struct pd_bdev *bdev, const struct tmd_config *cfg, struct tmd **out, ts_error *err)
{
  uint8_t *sb = malloc(PD_BLOCK_SIZE);
  if (!sb)
    return ts_error_set(err, -ENOMEM, "out of memory");
  if (bdev->nr_blocks < 1) {
    free(sb);
    return ts_error_set(err, -EINVAL, "metadata device is empty (truncated)");
  }
  int r = pd_bdev_read(bdev, 0, 1, sb);
  if (r) {
    free(sb);
    return ts_error_set(err, r, "reading the superblock: %s", strerror(-r));
  }
  bool zero = true;
  for (size_t i = 0; i < PD_BLOCK_SIZE && zero; i++)
    zero = sb[i] == 0;
  if (zero) {
    free(sb);
    return ts_error_set(err, -ENODATA, "metadata device is unformatted (block 0 is all zeroes)");
  }
  char why[400] = "";
  bool rw = !(cfg && cfg->read_only) && !bdev->read_only;
  if ((r = pd_sb_check(sb, bdev->nr_blocks, rw, why, sizeof(why)))) {
    free(sb);
    return ts_error_set(err, r, "%s", why);
  }
  struct tmd *md;
  if ((r = create_handle(bdev, cfg, ts__le64(sb + SB_META_NR_BLOCKS), &md))) {
    free(sb);
    return ts_error_set(err, r, "out of memory");
  }
  memcpy(md->sb, sb, PD_BLOCK_SIZE);
  free(sb);
  if ((r = load_state(md, why, sizeof(why)))) {
    tmd_close(md);
    return ts_error_set(err, r, "%s", why[0] ? why : strerror(-r));
  }
  *out = md;
  return 0;
}

void tmd_close(struct tmd *md)
{
  if (!md)
    return;
  free_state(md);
  pd_bm_destroy(md->bm);
  free(md);
}

/* ---- commit ---- */

static void fill_sb(struct tmd *md, uint8_t *sb)
{
  memset(sb, 0, PD_BLOCK_SIZE);
  ts__put32(sb + SB_FLAGS, md->flags);
  ts__put64(sb + SB_MAGIC, PD_SB_MAGIC);
  ts__put32(sb + SB_VERSION, PD_SB_VERSION);
  ts__put32(sb + SB_TIME, md->time);
  ts__put64(sb + SB_TRANS_ID, md->trans_id);
  ts__put64(sb + SB_HELD_ROOT, md->held_root);
  pd_sm_root_encode(&md->data, sb + SB_DATA_SM);
  pd_sm_root_encode(&md->meta, sb + SB_META_SM);
  ts__put64(sb + SB_MAPPING_ROOT, md->mapping_root);
  ts__put64(sb + SB_DETAILS_ROOT, md->details_root);
  ts__put32(sb + SB_DATA_BLOCK_SIZE, md->data_block_size);
  ts__put32(sb + SB_META_BLOCK_SIZE, 8);
  ts__put64(sb + SB_META_NR_BLOCKS, md->meta_nr_blocks);
}

static int writable(const struct tmd *md)
{
  if (md->read_only || md->failed)
    return -EROFS;
  return 0;
}

/* Everything but the superblock: the top-level trees, the space maps, every
 * dirty block written and the device flushed. Leaves the transaction open
 * and consistent: each step is idempotent when repeated (top-level and index
 * values overwrite with no reference counting, blocks already placed in this
 * transaction stay where they are, written blocks are still new in it and
 * are changed in place), so a commit whose superblock is not written may be
 * retried, with more changes in between or not. */
static int write_all_but_super(struct tmd *md)
{
  int r = 0;
  for (size_t i = 0; i < md->nr_devs && !r; i++) {
    struct tmd_dev *d = md->devs[i];
    if (d->root_dirty) {
      uint8_t v[8];
      ts__put64(v, d->root);
      r = pd_btree_insert(&md->top, md->mapping_root, d->id, v, &md->mapping_root, NULL);
    }
    if (!r && d->info_dirty) {
      uint8_t v[24];
      encode_details(&d->info, v);
      r = pd_btree_insert(&md->details, md->details_root, d->id, v, &md->details_root, NULL);
    }
  }
  if (!r)
    r = pd_sm_commit_place(&md->tm, &md->data, &md->meta);
  if (!r)
    r = pd_sm_commit_write(&md->tm, &md->data, &md->meta);
  if (!r)
    r = pd_bm_flush_dirty(md->bm, 0);
  if (!r)
    r = pd_bdev_flush(&md->bdev);
  return r;
}

/* The superblock, once everything it names is durable, then the in-memory
 * state becomes the last commit. */
static int write_super(struct tmd *md)
{
  struct pd_block *b;
  int r = pd_bm_write_zero(md->bm, 0, PD_BT_SUPER, &b);
  if (r)
    return r;
  fill_sb(md, b->data);
  pd_tm_unlock(&md->tm, b);
  if ((r = pd_bm_write_block(md->bm, 0)) || (r = pd_bdev_flush(&md->bdev)))
    return r;
  fill_sb(md, md->sb);
  pd_block_prepare(md->sb, 0, PD_BT_SUPER);
  pd_sm_committed(&md->data);
  pd_sm_committed(&md->meta);
  for (size_t i = 0; i < md->nr_devs; i++) {
    md->devs[i]->root_dirty = md->devs[i]->info_dirty = false;
    md->devs[i]->top_ready = false;
  }
  md->changed = false;
  return 0;
}

int tmd_commit_beside(struct tmd *md, int (*wait)(void *arg), void *arg)
{
  int r = writable(md);
  if (r || !md->changed) {
    int w = wait ? wait(arg) : 0;
    return r ? r : w;
  }
  r = write_all_but_super(md);
  int w = wait ? wait(arg) : 0;
  if (!r && w)
    return w; /* nothing names what was written: the transaction stays open */
  if (!r)
    r = write_super(md);
  if (r)
    md->failed = true; /* the device holds the previous commit (or, after a failed
                          superblock flush, maybe this one): reload to know */
  return r;
}

int tmd_commit(struct tmd *md) { return tmd_commit_beside(md, NULL, NULL); }

int tmd_abort(struct tmd *md)
{
  if (md->read_only)
    return md->changed ? -EROFS : 0;
  pd_bm_drop_all(md->bm);
  free_state(md);
  char why[400] = "";
  uint8_t *sb = malloc(PD_BLOCK_SIZE);
  if (!sb)
    return -ENOMEM;
  int r = pd_bdev_read(&md->bdev, 0, 1, sb);
  if (!r && pd_block_validate(sb, 0, PD_BT_SUPER, NULL, 0))
    r = -EILSEQ;
  if (!r)
    memcpy(md->sb, sb, PD_BLOCK_SIZE);
  free(sb);
  if (!r)
    r = load_state(md, why, sizeof(why));
  if (r)
    md->failed = true;
  return r;
}

/* The blocks the pool on the device uses, if one opens there: 1 and *old
 * filled, 0 if there is none to keep. */
static int old_pool_blocks(struct tmd *md, struct pd_sm *old)
{
  uint8_t *sb = malloc(PD_BLOCK_SIZE);
  char why[400];
  int kept = 0;
  memset(old, 0, sizeof(*old));
  if (sb && !pd_bdev_read(&md->bdev, 0, 1, sb) && !pd_sb_check(sb, md->bdev.nr_blocks, false, why, sizeof(why)) &&
      ts__le64(sb + SB_META_NR_BLOCKS) <= md->meta_nr_blocks) {
    why[0] = 0;
    kept = pd_sm_load(&md->tm, old, sb + SB_META_SM, true, why, sizeof(why)) == 0;
    if (!kept)
      pd_sm_free(old);
  }
  free(sb);
  return kept;
}

static int format(const struct pd_bdev *bdev, uint32_t data_block_size, uint64_t nr_data_blocks,
                  const struct tmd_config *cfg, bool beside, bool *kept, struct tmd **out, ts_error *err)
{
  if (data_block_size < TMD_MIN_DATA_BLOCK_SIZE || data_block_size > TMD_MAX_DATA_BLOCK_SIZE ||
      data_block_size % 128)
    return ts_error_set(err, -EINVAL, "data block size %u sectors: must be 128..2097152 and a multiple of 128",
                data_block_size);
  if (nr_data_blocks > TMD_MAX_DATA_BLOCKS)
    return ts_error_set(err, -EINVAL, "%" PRIu64 " data blocks: more than the format's 2^40", nr_data_blocks);
  if (bdev->nr_blocks < 64)
    return ts_error_set(err, -EINVAL, "metadata device of %" PRIu64 " blocks is too small (at least 64 x 4 KiB)",
                bdev->nr_blocks);
  if (bdev->read_only || !bdev->ops->write || (cfg && cfg->read_only))
    return ts_error_set(err, -EROFS, "cannot format a read-only metadata device");
  uint64_t mnr = bdev->nr_blocks < TMD_MAX_METADATA_BLOCKS ? bdev->nr_blocks : TMD_MAX_METADATA_BLOCKS;
  uint64_t dbm = (nr_data_blocks + PD_ENTRIES_PER_BITMAP - 1) / PD_ENTRIES_PER_BITMAP;
  if (dbm > mnr)
    return ts_error_set(err, -ENOSPC, "%" PRIu64 " data blocks need %" PRIu64 " space map bitmaps, more than the %"
                        PRIu64 " blocks of the metadata device: grow the metadata", nr_data_blocks, dbm, mnr);
  struct tmd *md;
  int r = create_handle(bdev, cfg, mnr, &md);
  if (r)
    return ts_error_set(err, r, "out of memory");
  md->data_block_size = data_block_size;
  md->meta_nr_blocks = mnr;
  struct pd_sm old;
  bool keep = beside && old_pool_blocks(md, &old);
  if (kept)
    *kept = keep;
  if (!keep) {
    /* An interrupted format must not look like the old pool. */
    uint8_t *zero = calloc(1, PD_BLOCK_SIZE);
    r = zero ? pd_bdev_write(bdev, 0, 1, zero) : -ENOMEM;
    free(zero);
    if (!r)
      r = pd_bdev_flush(bdev);
  }
  if (!r)
    r = pd_sm_init(&md->meta, true, mnr);
  if (keep) {
    if (!r)
      r = pd_sm_keep_out(&md->meta, &old);
    pd_sm_free(&old);
  }
  if (!r)
    r = pd_sm_init(&md->data, false, nr_data_blocks);
  if (!r)
    r = pd_sm_set(&md->meta, 0, 1); /* the superblock */
  struct pd_btree t4 = {&md->tm, {4, NULL, NULL, NULL}}, t16 = {&md->tm, {16, NULL, NULL, NULL}};
  if (!r)
    r = pd_btree_empty(&t4, &md->meta.ref_root);
  if (!r)
    r = pd_btree_empty(&t4, &md->data.ref_root);
  if (!r)
    r = pd_btree_empty(&t16, &md->data.index_root);
  if (!r)
    r = pd_btree_empty(&md->details, &md->details_root);
  if (!r)
    r = pd_btree_empty(&md->top, &md->mapping_root);
  md->changed = true;
  if (!r && !beside && !(r = write_all_but_super(md)))
    r = write_super(md);
  if (r) {
    tmd_close(md);
    return ts_error_set(err, r, "formatting the metadata device: %s", strerror(-r));
  }
  *out = md;
  return 0;
}

int tmd_format(const struct pd_bdev *bdev, uint32_t data_block_size, uint64_t nr_data_blocks,
               const struct tmd_config *cfg, struct tmd **out, ts_error *err)
{
  return format(bdev, data_block_size, nr_data_blocks, cfg, false, NULL, out, err);
}

int pd_tmd_format_beside(const struct pd_bdev *bdev, uint32_t data_block_size, uint64_t nr_data_blocks,
                         struct tmd **out, bool *kept, ts_error *err)
{
  return format(bdev, data_block_size, nr_data_blocks, NULL, true, kept, out, err);
}

/* ---- flags, ids, time ---- */

bool tmd_needs_check(const struct tmd *md) { return md->flags & PD_SB_FLAG_NEEDS_CHECK; }
bool tmd_is_writable(const struct tmd *md) { return !md->read_only && !md->failed; }
uint32_t tmd_data_block_size(const struct tmd *md) { return md->data_block_size; }
uint64_t tmd_transaction_id(const struct tmd *md) { return md->trans_id; }
uint32_t tmd_time(const struct tmd *md) { return md->time; }
uint64_t tmd_metadata_snap(const struct tmd *md) { return md->held_root; }

int tmd_set_needs_check(struct tmd *md, bool on)
{
  if (md->read_only)
    return -EROFS;
  uint32_t f = ts__le32(md->sb + SB_FLAGS);
  f = on ? f | PD_SB_FLAG_NEEDS_CHECK : f & ~PD_SB_FLAG_NEEDS_CHECK;
  uint8_t *b = malloc(PD_BLOCK_SIZE);
  if (!b)
    return -ENOMEM;
  memcpy(b, md->sb, PD_BLOCK_SIZE);
  ts__put32(b + SB_FLAGS, f);
  pd_block_prepare(b, 0, PD_BT_SUPER);
  int r = pd_bdev_write(&md->bdev, 0, 1, b);
  if (!r)
    r = pd_bdev_flush(&md->bdev);
  if (!r) {
    memcpy(md->sb, b, PD_BLOCK_SIZE);
    md->flags = on ? md->flags | PD_SB_FLAG_NEEDS_CHECK : md->flags & ~PD_SB_FLAG_NEEDS_CHECK;
  }
  free(b);
  return r;
}

int tmd_set_transaction_id(struct tmd *md, uint64_t current, uint64_t next)
{
  int r = writable(md);
  if (r)
    return r;
  if (current != md->trans_id)
    return -EINVAL;
  md->trans_id = next;
  md->changed = true;
  return 0;
}

/* ---- devices ---- */

/* Shadow the top-level path of d once per transaction (see file comment). */
static int dev_prepare(struct tmd *md, struct tmd_dev *d)
{
  if (d->top_ready)
    return 0;
  uint8_t v[8];
  ts__put64(v, d->root);
  int r = pd_btree_insert(&md->top, md->mapping_root, d->id, v, &md->mapping_root, NULL);
  if (r)
    return r;
  d->top_ready = true;
  md->changed = true;
  return 0;
}

static void dev_set_root(struct tmd *md, struct tmd_dev *d, uint64_t root)
{
  /* Called after every change to the tree, failed or not (a shadowed node
   * changes in place under the same root). */
  d->gen = ++md->gen;
  if (root != d->root) {
    d->root = root;
    d->root_dirty = true;
  }
  md->changed = true;
}

int tmd_create_thin(struct tmd *md, uint32_t id)
{
  int r = writable(md);
  if (r)
    return r;
  if (id > TMD_MAX_DEV_ID)
    return -EINVAL;
  if (dev_find(md, id))
    return -EEXIST;
  uint64_t root;
  if ((r = pd_btree_empty(&md->map, &root)))
    return r;
  struct tmd_dev *d = dev_add(md, id);
  if (!d) {
    pd_tm_dec(&md->tm, root, NULL);
    return -ENOMEM;
  }
  d->root = root;
  d->info = (struct tmd_dev_info){0, md->trans_id, md->time, md->time};
  d->root_dirty = d->info_dirty = d->top_ready = true;
  md->changed = true;
  return 0;
}

int tmd_create_snap(struct tmd *md, uint32_t id, uint32_t origin)
{
  int r = writable(md);
  if (r)
    return r;
  if (id > TMD_MAX_DEV_ID)
    return -EINVAL;
  if (dev_find(md, id))
    return -EEXIST;
  struct tmd_dev *o = dev_find(md, origin);
  if (!o)
    return -ENODEV;
  if (md->time >= 0xFFFFFF)
    return -EOVERFLOW; /* mapping times are 24-bit */
  if ((r = pd_tm_inc(&md->tm, o->root)))
    return r;
  struct tmd_dev *d = dev_add(md, id);
  if (!d) {
    pd_tm_dec(&md->tm, dev_find(md, origin)->root, NULL);
    return -ENOMEM;
  }
  o = dev_find(md, origin); /* the table may have moved */
  md->time++;
  d->root = o->root;
  d->info = (struct tmd_dev_info){o->info.mapped_blocks, md->trans_id, md->time, md->time};
  o->info.snapshotted_time = md->time;
  o->info_dirty = true;
  o->gen = ++md->gen; /* its mappings are shared now */
  d->root_dirty = d->info_dirty = d->top_ready = true;
  md->changed = true;
  return 0;
}

int tmd_delete(struct tmd *md, uint32_t id)
{
  int r = writable(md);
  if (r)
    return r;
  struct tmd_dev *d = dev_find(md, id);
  if (!d)
    return -ENODEV;
  /* the top-level entry holds no reference of its own here: the subtree
   * reference is dropped explicitly below */
  if ((r = pd_btree_remove_range(&md->top, md->mapping_root, id, (uint64_t)id + 1, &md->mapping_root, NULL)))
    return r;
  md->changed = true;
  if ((r = pd_btree_remove_range(&md->details, md->details_root, id, (uint64_t)id + 1, &md->details_root, NULL)))
    return r;
  uint64_t root = d->root;
  dev_remove(md, id);
  return pd_btree_del(&md->map, root);
}

bool tmd_dev_exists(const struct tmd *md, uint32_t id) { return dev_find(md, id) != NULL; }

uint64_t tmd_map_gen(const struct tmd *md, uint32_t id)
{
  const struct tmd_dev *d = dev_find(md, id);
  return d ? d->gen : 0;
}

size_t tmd_list_devices(const struct tmd *md, uint32_t *ids, size_t max)
{
  for (size_t i = 0; i < md->nr_devs && i < max; i++)
    ids[i] = md->devs[i]->id;
  return md->nr_devs;
}

int tmd_dev_info(const struct tmd *md, uint32_t id, struct tmd_dev_info *out)
{
  struct tmd_dev *d = dev_find(md, id);
  if (!d)
    return -ENODEV;
  *out = d->info;
  return 0;
}

int tmd_highest_mapped(struct tmd *md, uint32_t id, uint64_t *vblock)
{
  struct tmd_dev *d = dev_find(md, id);
  if (!d)
    return -ENODEV;
  return pd_btree_highest(&md->map, d->root, vblock);
}

/* ---- mappings ---- */

int tmd_lookup(struct tmd *md, uint32_t id, uint64_t vblock, uint64_t *dblock, bool *shared)
{
  struct tmd_dev *d = dev_find(md, id);
  if (!d)
    return -ENODEV;
  uint8_t v[8];
  int r = pd_btree_lookup(&md->map, d->root, vblock, v);
  if (r)
    return r;
  uint64_t x = ts__le64(v);
  if (dblock)
    *dblock = x >> 24;
  if (shared)
    *shared = d->info.snapshotted_time > (uint32_t)(x & 0xFFFFFF);
  return 0;
}

struct range_ctx {
  struct tmd_run run;
  uint32_t snap_time;
  tmd_run_fn fn;
  void *arg;
};

static int range_leaf(void *arg, const uint8_t *n, uint32_t first, uint32_t cnt)
{
  struct range_ctx *c = arg;
  for (uint32_t i = first; i < first + cnt; i++) {
    uint64_t k = pd_node_key(n, i), x = ts__le64(pd_node_cval(n, i));
    uint64_t b = x >> 24;
    bool sh = c->snap_time > (uint32_t)(x & 0xFFFFFF);
    if (c->run.len && c->run.vbegin + c->run.len == k && c->run.dbegin + c->run.len == b && c->run.shared == sh) {
      c->run.len++;
      continue;
    }
    if (c->run.len) {
      int r = c->fn(c->arg, &c->run);
      if (r)
        return r;
    }
    c->run = (struct tmd_run){k, 1, b, sh};
  }
  return 0;
}

int tmd_lookup_range(struct tmd *md, uint32_t id, uint64_t vbegin, uint64_t vend, tmd_run_fn fn, void *arg)
{
  struct tmd_dev *d = dev_find(md, id);
  if (!d)
    return -ENODEV;
  if (vbegin > vend)
    return -EINVAL;
  struct range_ctx c = {{0, 0, 0, false}, d->info.snapshotted_time, fn, arg};
  int r = pd_btree_walk(&md->map, d->root, vbegin, vend, range_leaf, &c);
  if (!r && c.run.len)
    r = fn(arg, &c.run);
  return r;
}

int pd_tmd_dev_tree(struct tmd *md, uint32_t id, uint64_t *root, struct pd_btree **tree)
{
  struct tmd_dev *d = dev_find(md, id);
  if (!d)
    return -ENODEV;
  *root = d->root;
  *tree = &md->map;
  return 0;
}

int tmd_insert(struct tmd *md, uint32_t id, uint64_t vblock, uint64_t dblock)
{
  return tmd_insert_run(md, id, vblock, 1, dblock, NULL);
}

/* Insert with an explicit mapping time (restore). */
int pd_tmd_insert_run_time(struct tmd *md, uint32_t id, uint64_t vbegin, uint64_t count, uint64_t dbegin,
                           uint32_t time, uint64_t *done)
{
  if (done)
    *done = 0;
  int r = writable(md);
  if (r)
    return r;
  struct tmd_dev *d = dev_find(md, id);
  if (!d)
    return -ENODEV;
  if (!count)
    return 0;
  if (dbegin >= md->data.nr_blocks || count > md->data.nr_blocks - dbegin || vbegin + count < vbegin ||
      time > 0xFFFFFF)
    return -EINVAL;
  if ((r = dev_prepare(md, d)))
    return r;
  uint64_t root, n = 0, added = 0;
  r = pd_btree_insert_run(&md->map, d->root, vbegin, count, (dbegin << 24) | time, 1ull << 24, &root, &n,
                          &added);
  dev_set_root(md, d, root);
  d->info.mapped_blocks += added;
  d->info_dirty = true;
  if (done)
    *done = n;
  return r;
}

int tmd_insert_run(struct tmd *md, uint32_t id, uint64_t vbegin, uint64_t count, uint64_t dbegin,
                   uint64_t *done)
{
  return pd_tmd_insert_run_time(md, id, vbegin, count, dbegin, md->time, done);
}

int tmd_remove_range(struct tmd *md, uint32_t id, uint64_t vbegin, uint64_t vend, unsigned flags,
                     tmd_freed_fn fn, void *arg, uint64_t *removed)
{
  if (removed)
    *removed = 0;
  int r = writable(md);
  if (r)
    return r;
  struct tmd_dev *d = dev_find(md, id);
  if (!d)
    return -ENODEV;
  if (vbegin > vend)
    return -EINVAL;
  uint64_t f;
  r = pd_btree_lower_bound(&md->map, d->root, vbegin, &f);
  if (r == -ENODATA || (!r && f >= vend))
    return 0; /* nothing mapped: change nothing */
  if (r)
    return r;
  if ((r = dev_prepare(md, d)))
    return r;
  struct freed_run fr = {fn, arg, (flags & TMD_REMOVE_HOLD) != 0, 0, 0, 0};
  md->fr = &fr;
  uint64_t root, n = 0;
  r = pd_btree_remove_range(&md->map, d->root, vbegin, vend, &root, &n);
  md->fr = NULL;
  if (fr.len && !fr.err && fn)
    fr.err = fn(arg, fr.begin, fr.len);
  dev_set_root(md, d, root);
  d->info.mapped_blocks -= n;
  d->info_dirty = true;
  if (removed)
    *removed = n;
  return r ? r : fr.err;
}

/* ---- data space ---- */

int tmd_alloc_data(struct tmd *md, uint64_t *dblock)
{
  int r = writable(md);
  if (r)
    return r;
  r = pd_sm_alloc(&md->data, dblock);
  if (!r)
    md->changed = true;
  return r;
}

int tmd_alloc_data_run(struct tmd *md, uint64_t max, uint64_t *dbegin, uint64_t *len)
{
  int r = writable(md);
  if (r)
    return r;
  r = pd_sm_alloc_run(&md->data, max, dbegin, len);
  if (!r)
    md->changed = true;
  return r;
}

int tmd_data_inc_run(struct tmd *md, uint64_t dbegin, uint64_t len)
{
  int r = writable(md);
  if (r)
    return r;
  if (dbegin > md->data.nr_blocks || len > md->data.nr_blocks - dbegin)
    return -EINVAL;
  for (uint64_t i = 0; i < len; i++)
    if ((r = pd_sm_inc(&md->data, dbegin + i))) {
      while (i--)
        pd_sm_dec(&md->data, dbegin + i, NULL);
      return r;
    }
  md->changed = true;
  return 0;
}

int tmd_data_dec_run(struct tmd *md, uint64_t dbegin, uint64_t len)
{
  int r = writable(md);
  if (r)
    return r;
  if (dbegin > md->data.nr_blocks || len > md->data.nr_blocks - dbegin)
    return -EINVAL;
  for (uint64_t i = 0; i < len; i++)
    if (!pd_sm_get(&md->data, dbegin + i))
      return -EINVAL;
  for (uint64_t i = 0; i < len; i++)
    if ((r = pd_sm_dec(&md->data, dbegin + i, NULL)))
      return r;
  md->changed = true;
  return 0;
}

int tmd_data_ref_count(const struct tmd *md, uint64_t dblock, uint32_t *count)
{
  if (dblock >= md->data.nr_blocks)
    return -EINVAL;
  *count = pd_sm_get(&md->data, dblock);
  return 0;
}

uint64_t tmd_data_nr_blocks(const struct tmd *md) { return md->data.nr_blocks; }
uint64_t tmd_data_nr_free(const struct tmd *md) { return md->data.nr_blocks - md->data.nr_allocated; }
uint64_t tmd_metadata_nr_blocks(const struct tmd *md) { return md->meta.nr_blocks; }
uint64_t tmd_metadata_nr_used(const struct tmd *md) { return md->meta.nr_allocated; }

uint64_t tmd_blocks_written(struct tmd *md)
{
  pthread_rwlock_rdlock(&md->bm->lock);
  uint64_t n = md->bm->writes;
  pthread_rwlock_unlock(&md->bm->lock);
  return n;
}

int tmd_write_back(struct tmd *md)
{
  int r = writable(md);
  return r ? r : pd_bm_write_back(md->bm);
}

int tmd_resize_data(struct tmd *md, uint64_t n)
{
  int r = writable(md);
  if (r)
    return r;
  if (n < md->data.nr_blocks || n > TMD_MAX_DATA_BLOCKS)
    return -EINVAL;
  if (n == md->data.nr_blocks)
    return 0;
  /* each new bitmap needs a metadata block and an index entry */
  uint64_t need = (n + PD_ENTRIES_PER_BITMAP - 1) / PD_ENTRIES_PER_BITMAP - md->data.nr_bitmaps;
  if (need + 16 > md->meta.nr_blocks - md->meta.nr_allocated)
    return -ENOSPC;
  r = pd_sm_extend(&md->data, n);
  if (!r)
    md->changed = true;
  return r;
}

int tmd_resize_metadata(struct tmd *md, uint64_t n)
{
  int r = writable(md);
  if (r)
    return r;
  if (n < md->meta.nr_blocks || n > TMD_MAX_METADATA_BLOCKS)
    return -EINVAL;
  if (n == md->meta.nr_blocks)
    return 0;
  /* The block manager refuses blocks past the device it was given. */
  if (n > md->bm->nr_blocks) {
    md->bm->nr_blocks = n;
    md->bm->bdev.nr_blocks = n;
    md->bdev.nr_blocks = n;
  }
  if ((r = pd_sm_extend(&md->meta, n)))
    return r;
  md->meta_nr_blocks = n;
  md->changed = true;
  return 0;
}

/* ---- metadata snapshot ---- */

int tmd_reserve_metadata_snap(struct tmd *md)
{
  int r = writable(md);
  if (r)
    return r;
  if (md->held_root)
    return -EBUSY;
  md->changed = true; /* commit even when clean, so md->sb is current */
  if ((r = tmd_commit(md)))
    return r;
  struct pd_block *b;
  if ((r = pd_tm_new_block(&md->tm, PD_BT_SUPER, &b)))
    return r;
  memcpy(b->data, md->sb, PD_BLOCK_SIZE);
  memset(b->data + SB_DATA_SM, 0, 256); /* both space-map roots */
  ts__put64(b->data + SB_HELD_ROOT, 0);
  uint64_t h = b->nr;
  pd_tm_unlock(&md->tm, b);
  if ((r = pd_tm_inc(&md->tm, md->mapping_root)) || (r = pd_tm_inc(&md->tm, md->details_root)))
    return r;
  md->held_root = h;
  md->changed = true;
  return tmd_commit(md);
}

int tmd_release_metadata_snap(struct tmd *md)
{
  int r = writable(md);
  if (r)
    return r;
  if (!md->held_root)
    return -EINVAL;
  struct pd_block *b;
  if ((r = pd_tm_read(&md->tm, md->held_root, PD_BT_SUPER, &b)))
    return r;
  uint64_t mroot = ts__le64(b->data + SB_MAPPING_ROOT), droot = ts__le64(b->data + SB_DETAILS_ROOT);
  pd_tm_unlock(&md->tm, b);
  struct pd_btree top = {&md->tm, {8, md, top_inc, top_dec_subtree}};
  md->changed = true;
  if ((r = pd_btree_del(&top, mroot)) || (r = pd_btree_del(&md->details, droot)))
    return r;
  if ((r = pd_tm_dec(&md->tm, md->held_root, NULL)))
    return r;
  md->held_root = 0;
  return 0;
}

/* ---- restore helpers ---- */

int pd_tmd_set_details(struct tmd *md, uint32_t id, const struct tmd_dev_info *info)
{
  struct tmd_dev *d = dev_find(md, id);
  if (!d)
    return -ENODEV;
  d->info = *info;
  d->info_dirty = true;
  md->changed = true;
  return 0;
}

void pd_tmd_set_sb_fields(struct tmd *md, uint32_t time, uint64_t trans_id, uint32_t flags)
{
  md->time = time;
  md->trans_id = trans_id;
  md->flags = flags;
  md->changed = true;
}
