/* Comparing thin devices from the metadata alone: the ranges that differ
 * between two devices' mapping trees (as thin_delta reports them) and each
 * device's exclusive and shared mapped blocks (as thin_ls counts them).
 *
 * The delta walks both trees at once as two ordered streams of items, each
 * item either a mapping of a leaf or a node not yet read. When both streams
 * reach the same node block, everything beneath it is identical in both
 * devices (a snapshot and its origin share every subtree neither has
 * written since), so it is passed over unread: the walk reads the nodes
 * that changed and the paths down to them, not the whole volume. */
#include "pdata/pdata-internal.h"
#include "pdata/thin-metadata.h"

#include <errno.h>
#include <stdlib.h>

/* Deeper than any tree a 4 KiB node format can give 2^64 keys. */
#define DELTA_MAX_DEPTH 32

struct frame {
  uint32_t nr, idx;
  uint32_t height; /* of the entries: 0 = mappings, else nodes of that height - 1 */
  uint64_t keys[256], vals[256];
};

/* One side of the walk: a stack of node copies, the top one being read. */
struct side {
  struct pd_btree *tree;
  struct frame *f[DELTA_MAX_DEPTH];
  int depth;
  uint64_t nodes_read;
};

/* The next item of a side: a mapping (node == false) or an unread node
 * whose keys are all >= key. */
struct item {
  bool node;
  uint64_t key, val; /* val: block << 24 | time, or the node's block */
  uint32_t height;   /* of the node (0 = leaf) */
};

static void side_free(struct side *s)
{
  for (int i = 0; i < s->depth; i++)
    free(s->f[i]);
  s->depth = 0;
}

/* Push a frame copying node `b`. */
static int side_push_node(struct side *s, uint64_t b, uint32_t height)
{
  if (s->depth == DELTA_MAX_DEPTH)
    return -EILSEQ;
  struct pd_block *blk;
  int r = pd_btree_read_node(s->tree, b, &blk);
  if (r)
    return r;
  s->nodes_read++;
  const uint8_t *n = blk->data;
  uint32_t nr = pd_node_nr(n);
  /* A node's height is fixed by the tree's shape: a leaf where a node is
   * expected (or the reverse) is damage, not a shape to follow. */
  if (nr > 256 || pd_node_is_leaf(n) != (height == 0) || pd_node_vsize(n) != 8) {
    pd_tm_unlock(s->tree->tm, blk);
    return -EILSEQ;
  }
  struct frame *f = malloc(sizeof *f);
  if (!f) {
    pd_tm_unlock(s->tree->tm, blk);
    return -ENOMEM;
  }
  f->nr = nr;
  f->idx = 0;
  f->height = height;
  for (uint32_t i = 0; i < nr; i++) {
    f->keys[i] = pd_node_key(n, i);
    f->vals[i] = ts__le64(pd_node_cval(n, i));
  }
  pd_tm_unlock(s->tree->tm, blk);
  s->f[s->depth++] = f;
  return 0;
}

/* The tree's height: the leftmost path down to a leaf (every leaf of a
 * btree is at the same depth). */
static int tree_height(struct pd_btree *t, uint64_t root, uint32_t *h)
{
  uint64_t b = root;
  for (uint32_t d = 0; d < DELTA_MAX_DEPTH; d++) {
    struct pd_block *blk;
    int r = pd_btree_read_node(t, b, &blk);
    if (r)
      return r;
    bool leaf = pd_node_is_leaf(blk->data);
    uint32_t nr = pd_node_nr(blk->data);
    if (!leaf && nr)
      b = ts__le64(pd_node_cval(blk->data, 0));
    pd_tm_unlock(t->tm, blk);
    if (leaf) {
      *h = d;
      return 0;
    }
    if (!nr)
      return -EILSEQ;
  }
  return -EILSEQ;
}

static int side_init(struct side *s, struct pd_btree *t, uint64_t root)
{
  s->tree = t;
  s->depth = 0;
  s->nodes_read = 0;
  uint32_t h = 0;
  int r = tree_height(t, root, &h);
  if (r)
    return r;
  struct frame *f = malloc(sizeof *f);
  if (!f)
    return -ENOMEM;
  /* A frame of one entry, the root, so that it can be compared unread. */
  f->nr = 1;
  f->idx = 0;
  f->height = h + 1;
  f->keys[0] = 0;
  f->vals[0] = root;
  s->f[s->depth++] = f;
  return 0;
}

/* The side's next item; false at the end. */
static bool side_peek(struct side *s, struct item *it)
{
  while (s->depth && s->f[s->depth - 1]->idx == s->f[s->depth - 1]->nr)
    free(s->f[--s->depth]);
  if (!s->depth)
    return false;
  struct frame *f = s->f[s->depth - 1];
  it->node = f->height != 0;
  it->key = f->keys[f->idx];
  it->val = f->vals[f->idx];
  it->height = f->height ? f->height - 1 : 0;
  return true;
}

static void side_skip(struct side *s) { s->f[s->depth - 1]->idx++; }

/* Replace the next item, a node, with its entries. */
static int side_expand(struct side *s, const struct item *it)
{
  side_skip(s);
  return side_push_node(s, it->val, it->height);
}

/* Runs of consecutive blocks of one kind, data blocks consecutive too. */
struct delta_out {
  struct tmd_delta run;
  tmd_delta_fn fn;
  void *arg;
};

static int emit(struct delta_out *o, enum tmd_delta_kind kind, uint64_t key, uint64_t left,
                uint64_t right)
{
  struct tmd_delta *d = &o->run;
  bool has_l = kind != TMD_DELTA_RIGHT_ONLY, has_r = kind != TMD_DELTA_LEFT_ONLY;
  if (d->len && d->kind == kind && d->vbegin + d->len == key &&
      (!has_l || d->left + d->len == left) && (!has_r || d->right + d->len == right)) {
    d->len++;
    return 0;
  }
  int r = d->len ? o->fn(o->arg, d) : 0;
  *d = (struct tmd_delta){ kind, key, 1, has_l ? left : 0, has_r ? right : 0 };
  return r;
}

int tmd_delta(struct tmd *md, uint32_t left_id, uint32_t right_id, unsigned flags, tmd_delta_fn fn,
              void *arg, uint64_t *nodes_read)
{
  uint64_t lroot, rroot;
  struct pd_btree *lt, *rt;
  int r = pd_tmd_dev_tree(md, left_id, &lroot, &lt);
  if (!r)
    r = pd_tmd_dev_tree(md, right_id, &rroot, &rt);
  if (r)
    return r;
  struct side L, R;
  struct delta_out o = { { 0 }, fn, arg };
  r = side_init(&L, lt, lroot);
  if (r)
    return r;
  r = side_init(&R, rt, rroot);
  bool same_too = flags & TMD_DELTA_WITH_SAME;
  while (!r) {
    struct item a, b;
    bool ha = side_peek(&L, &a), hb = side_peek(&R, &b);
    if (!ha && !hb)
      break;
    if (ha && hb && a.node && b.node && a.val == b.val && !same_too) {
      /* One block: the same mappings on both sides. */
      side_skip(&L);
      side_skip(&R);
    } else if (ha && a.node &&
               (!hb || (b.node ? a.height > b.height || (a.height == b.height && a.key <= b.key)
                               : a.key <= b.key))) {
      /* Open the node that is taller or comes first, so that equal
       * subtrees meet at the same height and key. */
      r = side_expand(&L, &a);
    } else if (hb && b.node && (!ha || a.node || b.key <= a.key)) {
      r = side_expand(&R, &b);
    } else if (ha && !a.node && (!hb || b.node || a.key < b.key)) {
      /* Before anything the other side has left. */
      r = emit(&o, TMD_DELTA_LEFT_ONLY, a.key, a.val >> 24, 0);
      side_skip(&L);
    } else if (hb && !b.node && (!ha || a.node || b.key < a.key)) {
      r = emit(&o, TMD_DELTA_RIGHT_ONLY, b.key, 0, b.val >> 24);
      side_skip(&R);
    } else {
      uint64_t x = a.val >> 24, y = b.val >> 24;
      if (x != y || same_too)
        r = emit(&o, x == y ? TMD_DELTA_SAME : TMD_DELTA_DIFFERENT, a.key, x, y);
      side_skip(&L);
      side_skip(&R);
    }
  }
  if (!r && o.run.len)
    r = fn(arg, &o.run);
  if (nodes_read)
    *nodes_read = L.nodes_read + R.nodes_read;
  side_free(&L);
  side_free(&R);
  return r;
}

/* ---- exclusive and shared blocks ---- */

/* 2-bit saturating count of mappings per data block: 0, 1, 2 = more. */
struct refs {
  uint8_t *bits;
  uint64_t nr_blocks;
  int pass; /* 0: count, 1: classify */
  uint64_t exclusive, shared;
};

static unsigned refs_get(const struct refs *x, uint64_t b)
{
  return (x->bits[b / 4] >> (2 * (b % 4))) & 3u;
}

static int refs_run(void *arg, const struct tmd_run *run)
{
  struct refs *x = arg;
  if (run->dbegin >= x->nr_blocks || run->len > x->nr_blocks - run->dbegin)
    return -EILSEQ;
  for (uint64_t b = run->dbegin; b < run->dbegin + run->len; b++) {
    unsigned c = refs_get(x, b);
    if (x->pass == 0 && c < 2)
      x->bits[b / 4] = (uint8_t)(x->bits[b / 4] + (1u << (2 * (b % 4))));
    else if (x->pass == 1 && c == 1)
      x->exclusive++;
    else if (x->pass == 1)
      x->shared++;
  }
  return 0;
}

int tmd_sharing(struct tmd *md, const uint32_t *ids, size_t n, uint64_t *exclusive,
                uint64_t *shared)
{
  struct refs x = { NULL, tmd_data_nr_blocks(md), 0, 0, 0 };
  x.bits = calloc(x.nr_blocks / 4 + 1, 1);
  if (!x.bits)
    return -ENOMEM;
  size_t nd = tmd_list_devices(md, NULL, 0);
  uint32_t *all = calloc(nd + 1, sizeof *all);
  int r = all ? 0 : -ENOMEM;
  if (!r)
    nd = tmd_list_devices(md, all, nd);
  for (size_t i = 0; !r && i < nd; i++)
    r = tmd_lookup_range(md, all[i], 0, UINT64_MAX, refs_run, &x);
  x.pass = 1;
  for (size_t i = 0; !r && i < n; i++) {
    x.exclusive = x.shared = 0;
    r = tmd_lookup_range(md, ids[i], 0, UINT64_MAX, refs_run, &x);
    exclusive[i] = x.exclusive;
    shared[i] = x.shared;
  }
  free(all);
  free(x.bits);
  return r;
}
