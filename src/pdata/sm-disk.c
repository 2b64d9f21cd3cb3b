/* Space maps on disk: loading the bitmaps, index and overflow trees into
 * memory, and writing the changed ones back at commit.
 *
 * Writing the metadata space map changes the metadata space map (its own
 * blocks are shadowed, its overflow tree allocates nodes), so placement runs
 * to a fixpoint before any content is serialised: every block that changes
 * gets a writable location first, then contents are written once. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "pdata/pdata-internal.h"

#define EPB PD_ENTRIES_PER_BITMAP

static void init_tree(struct pd_btree *t, struct pd_tm *tm, uint32_t vsize)
{
  memset(t, 0, sizeof(*t));
  t->tm = tm;
  t->vt.size = vsize;
}

static int load_bitmap(struct pd_tm *tm, struct pd_sm *sm, size_t i, uint64_t blocknr, char *why,
                       size_t whylen)
{
  if (blocknr == 0 || blocknr >= tm->bm->nr_blocks) {
    snprintf(why, whylen, "%s space map: bitmap %zu at invalid block %" PRIu64,
             sm->is_meta ? "metadata" : "data", i, blocknr);
    return -EINVAL;
  }
  struct pd_block *b;
  int r = pd_tm_read(tm, blocknr, PD_BT_BITMAP, &b);
  if (r) {
    snprintf(why, whylen, "%s space map: bitmap %zu (block %" PRIu64 "): %s",
             sm->is_meta ? "metadata" : "data", i, blocknr,
             r == -EILSEQ ? "checksum or block number mismatch" : strerror(-r));
    return r;
  }
  memcpy(sm->bm[i].words, b->data + 16, PD_BITMAP_WORDS * 8);
  pd_tm_unlock(tm, b);
  sm->bm[i].blocknr = blocknr;
  /* entries past the end of the map must read as free */
  uint64_t start = (uint64_t)i * EPB;
  if (sm->nr_blocks - start < EPB) {
    uint32_t n = (uint32_t)(sm->nr_blocks - start);
    for (uint32_t e = n; e < EPB; e++)
      if (pd_bits_get(sm->bm[i].words, e))
        sm->bm[i].words[e / 32] &= ~(3ull << (2 * (e % 32)));
  }
  return 0;
}

struct idx_ctx {
  struct pd_tm *tm;
  struct pd_sm *sm;
  uint8_t *seen;
  char *why;
  size_t whylen;
};

static int idx_leaf(void *arg, const uint8_t *n, uint32_t first, uint32_t cnt)
{
  struct idx_ctx *c = arg;
  if (pd_node_vsize(n) != 16) {
    snprintf(c->why, c->whylen, "data space map index: leaf value size %u, expected 16", pd_node_vsize(n));
    return -EILSEQ;
  }
  for (uint32_t i = first; i < first + cnt; i++) {
    uint64_t k = pd_node_key(n, i);
    if (k >= c->sm->nr_bitmaps) {
      snprintf(c->why, c->whylen, "data space map index: entry for bitmap %" PRIu64 " past the end", k);
      return -EINVAL;
    }
    int r = load_bitmap(c->tm, c->sm, (size_t)k, ts__le64(pd_node_cval(n, i)), c->why, c->whylen);
    if (r)
      return r;
    c->seen[k] = 1;
  }
  return 0;
}

static int ov_leaf(void *arg, const uint8_t *n, uint32_t first, uint32_t cnt)
{
  struct idx_ctx *c = arg;
  if (pd_node_vsize(n) != 4) {
    snprintf(c->why, c->whylen, "%s space map overflow tree: leaf value size %u, expected 4",
             c->sm->is_meta ? "metadata" : "data", pd_node_vsize(n));
    return -EILSEQ;
  }
  for (uint32_t i = first; i < first + cnt; i++) {
    uint64_t k = pd_node_key(n, i);
    uint32_t v = ts__le32(pd_node_cval(n, i));
    if (k >= c->sm->nr_blocks)
      continue; /* beyond the map: ignored, as the kernel never looks it up */
    int r = pd_sm_load_overflow(c->sm, k, v);
    if (r)
      return r;
  }
  return 0;
}

int pd_sm_load(struct pd_tm *tm, struct pd_sm *sm, const uint8_t *root32, bool is_meta, char *why,
               size_t whylen)
{
  uint64_t nr_blocks = ts__le64(root32), idx = ts__le64(root32 + 16), ref = ts__le64(root32 + 24);
  const char *what = is_meta ? "metadata" : "data";
  if (is_meta && nr_blocks > (uint64_t)PD_MAX_META_BITMAPS * EPB) {
    snprintf(why, whylen, "metadata space map: %" PRIu64 " blocks is more than the format allows", nr_blocks);
    return -EINVAL;
  }
  int r = pd_sm_init(sm, is_meta, nr_blocks);
  if (r)
    return r;
  sm->index_root = idx;
  sm->ref_root = ref;
  if (idx >= tm->bm->nr_blocks || ref >= tm->bm->nr_blocks || !idx || !ref) {
    snprintf(why, whylen, "%s space map: root block out of range", what);
    return -EINVAL;
  }
  if (is_meta) {
    struct pd_block *b;
    r = pd_tm_read(tm, idx, PD_BT_INDEX, &b);
    if (r) {
      snprintf(why, whylen, "metadata space map index block %" PRIu64 ": %s", idx,
               r == -EILSEQ ? "checksum or block number mismatch" : strerror(-r));
      return r;
    }
    uint64_t where[PD_MAX_META_BITMAPS];
    for (size_t i = 0; i < sm->nr_bitmaps; i++)
      where[i] = ts__le64(b->data + 16 + 16 * i);
    pd_tm_unlock(tm, b);
    for (size_t i = 0; i < sm->nr_bitmaps; i++)
      if ((r = load_bitmap(tm, sm, i, where[i], why, whylen)))
        return r;
  } else {
    struct pd_btree t;
    init_tree(&t, tm, 16);
    struct idx_ctx c = {tm, sm, calloc(sm->nr_bitmaps + 1, 1), why, whylen};
    if (!c.seen)
      return -ENOMEM;
    r = pd_btree_walk(&t, idx, 0, UINT64_MAX, idx_leaf, &c);
    for (size_t i = 0; !r && i < sm->nr_bitmaps; i++)
      if (!c.seen[i]) {
        snprintf(why, whylen, "data space map index: bitmap %zu missing", i);
        r = -EINVAL;
      }
    free(c.seen);
    if (r) {
      if (!why[0] && r == -EILSEQ)
        pd_bm_last_refusal(tm->bm, why, whylen);
      if (!why[0])
        snprintf(why, whylen, "data space map index tree: %s", strerror(-r));
      return r;
    }
  }
  struct pd_btree t;
  init_tree(&t, tm, 4);
  struct idx_ctx c = {tm, sm, NULL, why, whylen};
  r = pd_btree_walk(&t, ref, 0, UINT64_MAX, ov_leaf, &c);
  if (r) {
    if (!why[0] && r == -EILSEQ)
      pd_bm_last_refusal(tm->bm, why, whylen);
    if (!why[0])
      snprintf(why, whylen, "%s space map overflow tree: %s", what, strerror(-r));
    return r;
  }
  /* every count of 3 needs its overflow entry */
  for (size_t i = 0; i < sm->nr_bitmaps; i++) {
    for (uint32_t wi = 0; wi < PD_BITMAP_WORDS; wi++) {
      uint64_t w = sm->bm[i].words[wi];
      uint64_t three = w & (w >> 1) & 0x5555555555555555ull;
      while (three) {
        uint64_t b = (uint64_t)i * EPB + wi * 32 + (uint64_t)__builtin_ctzll(three) / 2;
        three &= three - 1;
        if (pd_sm_get(sm, b) < 3) {
          snprintf(why, whylen, "%s space map: block %" PRIu64 " has count 3+ but no overflow entry",
                   what, b);
          return -EINVAL;
        }
      }
    }
    sm->bm[i].dirty = false;
  }
  pd_sm_recount(sm);
  sm->ovd_n = 0;
  sm->gen = 0;
  return 0;
}

static int flush_overflow(struct pd_tm *tm, struct pd_sm *sm)
{
  struct pd_btree t;
  init_tree(&t, tm, 4);
  while (sm->ovd_n) {
    size_t n = sm->ovd_n;
    uint64_t *keys = malloc(n * sizeof(*keys));
    if (!keys)
      return -ENOMEM;
    memcpy(keys, sm->ovd, n * sizeof(*keys));
    sm->ovd_n = 0;
    int r = 0;
    for (size_t i = 0; i < n && !r; i++) {
      uint32_t c = pd_sm_get(sm, keys[i]);
      if (c >= 3) {
        uint8_t v[4];
        ts__put32(v, c);
        r = pd_btree_insert(&t, sm->ref_root, keys[i], v, &sm->ref_root, NULL);
      } else {
        r = pd_btree_remove_range(&t, sm->ref_root, keys[i], keys[i] + 1, &sm->ref_root, NULL);
      }
    }
    free(keys);
    if (r)
      return r;
  }
  return 0;
}

/* Give *blocknr a location this transaction may write: a new block unless
 * it already is one. */
static int place(struct pd_tm *tm, uint64_t *blocknr)
{
  uint64_t b = *blocknr;
  if (b && pd_sm_get(tm->meta, b) == 1 && pd_sm_committed_free(tm->meta, b))
    return 0;
  uint64_t nb;
  int r = pd_sm_alloc(tm->meta, &nb);
  if (r)
    return r;
  if (b && (r = pd_tm_dec(tm, b, NULL)))
    return r;
  *blocknr = nb;
  return 0;
}

int pd_sm_commit_place(struct pd_tm *tm, struct pd_sm *data, struct pd_sm *meta)
{
  int r = flush_overflow(tm, data);
  if (r)
    return r;
  struct pd_btree idx;
  init_tree(&idx, tm, 16);
  for (size_t i = 0; i < data->nr_bitmaps; i++) {
    struct pd_sm_bitmap *m = &data->bm[i];
    if (!m->dirty)
      continue;
    if ((r = place(tm, &m->blocknr)))
      return r;
    uint8_t v[16];
    ts__put64(v, m->blocknr);
    ts__put32(v + 8, m->nr_free);
    ts__put32(v + 12, pd_sm_none_free_before(data, i));
    if ((r = pd_btree_insert(&idx, data->index_root, i, v, &data->index_root, NULL)))
      return r;
  }
  for (int iter = 0; iter < 10000; iter++) {
    uint64_t g0 = meta->gen;
    if ((r = flush_overflow(tm, meta)))
      return r;
    for (size_t i = 0; i < meta->nr_bitmaps; i++)
      if (meta->bm[i].dirty && (r = place(tm, &meta->bm[i].blocknr)))
        return r;
    if ((r = place(tm, &meta->index_root)))
      return r;
    if (meta->gen == g0)
      return 0;
  }
  return -ELOOP;
}

static int write_bitmap(struct pd_tm *tm, struct pd_sm_bitmap *m)
{
  struct pd_block *b;
  int r = pd_bm_write_zero(tm->bm, m->blocknr, PD_BT_BITMAP, &b);
  if (r)
    return r;
  memcpy(b->data + 16, m->words, PD_BITMAP_WORDS * 8);
  pd_tm_unlock(tm, b);
  return 0;
}

int pd_sm_commit_write(struct pd_tm *tm, struct pd_sm *data, struct pd_sm *meta)
{
  int r;
  for (size_t i = 0; i < data->nr_bitmaps; i++)
    if (data->bm[i].dirty && (r = write_bitmap(tm, &data->bm[i])))
      return r;
  for (size_t i = 0; i < meta->nr_bitmaps; i++)
    if (meta->bm[i].dirty && (r = write_bitmap(tm, &meta->bm[i])))
      return r;
  struct pd_block *b;
  if ((r = pd_bm_write_zero(tm->bm, meta->index_root, PD_BT_INDEX, &b)))
    return r;
  for (size_t i = 0; i < meta->nr_bitmaps; i++) {
    uint8_t *e = b->data + 16 + 16 * i;
    ts__put64(e, meta->bm[i].blocknr);
    ts__put32(e + 8, meta->bm[i].nr_free);
    ts__put32(e + 12, pd_sm_none_free_before(meta, i));
  }
  pd_tm_unlock(tm, b);
  return 0;
}

void pd_sm_root_encode(const struct pd_sm *sm, uint8_t *root32)
{
  ts__put64(root32, sm->nr_blocks);
  ts__put64(root32 + 8, sm->nr_allocated);
  ts__put64(root32 + 16, sm->index_root);
  ts__put64(root32 + 24, sm->ref_root);
}
