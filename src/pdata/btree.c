/* Persistent-data btrees (the dm "btree" format): 64-bit keys, fixed-size
 * values, copy-on-write through the transaction manager, reference-counted
 * sharing of subtrees. Inserts split full nodes on the way down and removals
 * rebalance thin nodes on the way down, so every non-root node keeps at
 * least max_entries / 3 entries (a rule thin_check enforces). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "pdata/pdata-internal.h"

#define BT PD_BT_NODE

static void node_init(uint8_t *n, bool leaf, uint32_t vsize)
{
  ts__put32(n + NODE_FLAGS, leaf ? PD_NODE_LEAF : PD_NODE_INTERNAL);
  ts__put32(n + NODE_NR, 0);
  ts__put32(n + NODE_MAX, pd_node_max_entries(vsize));
  ts__put32(n + NODE_VSIZE, vsize);
}

static void set_nr(uint8_t *n, uint32_t nr) { ts__put32(n + NODE_NR, nr); }
static void set_key(uint8_t *n, uint32_t i, uint64_t k) { ts__put64(n + NODE_KEYS + 8 * (size_t)i, k); }
static uint32_t min_entries(const uint8_t *n) { return pd_node_maxe(n) / 3; }
static uint64_t child_at(const uint8_t *n, uint32_t i) { return ts__le64(pd_node_cval(n, i)); }

/* number of keys <= key */
static uint32_t upper(const uint8_t *n, uint64_t key)
{
  uint32_t lo = 0, hi = pd_node_nr(n);
  while (lo < hi) {
    uint32_t mid = (lo + hi) / 2;
    if (pd_node_key(n, mid) <= key)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* first index with key >= key */
static uint32_t lower(const uint8_t *n, uint64_t key)
{
  uint32_t lo = 0, hi = pd_node_nr(n);
  while (lo < hi) {
    uint32_t mid = (lo + hi) / 2;
    if (pd_node_key(n, mid) < key)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Move entries [i, nr) of n right by `by` slots (room for new entries). */
static void open_gap(uint8_t *n, uint32_t i, uint32_t by)
{
  uint32_t nr = pd_node_nr(n), vs = pd_node_vsize(n);
  memmove(n + NODE_KEYS + 8 * (size_t)(i + by), n + NODE_KEYS + 8 * (size_t)i, 8 * (size_t)(nr - i));
  memmove(pd_node_val(n, i + by), pd_node_val(n, i), (size_t)vs * (nr - i));
  set_nr(n, nr + by);
}

static void close_gap(uint8_t *n, uint32_t i, uint32_t cnt)
{
  uint32_t nr = pd_node_nr(n), vs = pd_node_vsize(n);
  memmove(n + NODE_KEYS + 8 * (size_t)i, n + NODE_KEYS + 8 * (size_t)(i + cnt), 8 * (size_t)(nr - i - cnt));
  memmove(pd_node_val(n, i), pd_node_val(n, i + cnt), (size_t)vs * (nr - i - cnt));
  /* keep unused slots zero, as the kernel and tools do */
  memset(n + NODE_KEYS + 8 * (size_t)(nr - cnt), 0, 8 * (size_t)cnt);
  memset(pd_node_val(n, nr - cnt), 0, (size_t)vs * cnt);
  set_nr(n, nr - cnt);
}

/* Append entries [from, from+cnt) of src to the end of dst. */
static void copy_entries(uint8_t *dst, const uint8_t *src, uint32_t from, uint32_t cnt)
{
  uint32_t nr = pd_node_nr(dst), vs = pd_node_vsize(dst);
  memcpy(dst + NODE_KEYS + 8 * (size_t)nr, src + NODE_KEYS + 8 * (size_t)from, 8 * (size_t)cnt);
  memcpy(pd_node_val(dst, nr), pd_node_cval(src, from), (size_t)vs * cnt);
  set_nr(dst, nr + cnt);
}

static void insert_entry(uint8_t *n, uint32_t i, uint64_t key, const void *val)
{
  open_gap(n, i, 1);
  set_key(n, i, key);
  memcpy(pd_node_val(n, i), val, pd_node_vsize(n));
}

/* The block layer checked the header against the block size; this checks it
 * against the tree: every size, count and offset used below comes from the
 * node, so a node that disagrees with the tree's value size is refused before
 * anything is copied out of or into it. */
static int node_check(struct pd_btree *t, struct pd_block *blk)
{
  const uint8_t *n = blk->data;
  uint32_t flags = ts__le32(n + NODE_FLAGS), nr = pd_node_nr(n), maxe = pd_node_maxe(n), vs = pd_node_vsize(n);
  bool leaf = flags == PD_NODE_LEAF;
  uint32_t want = leaf ? t->vt.size : 8;
  if ((leaf || flags == PD_NODE_INTERNAL) && vs == want && maxe == pd_node_max_entries(want) && nr <= maxe &&
      (leaf || nr > 0))
    return 0;
  pd_bm_refused(t->tm->bm,
                "btree node %" PRIu64 ": flags %u, %u entries, max entries %u, value size %u do not fit a tree of "
                "%u-byte values (expected a leaf or internal node, max entries %u, value size %u)",
                blk->nr, flags, nr, maxe, vs, t->vt.size, pd_node_max_entries(want), want);
  return -EILSEQ;
}

/* Read-lock node b and check it against the tree. */
static int read_node(struct pd_btree *t, uint64_t b, struct pd_block **out)
{
  int r = pd_tm_read(t->tm, b, BT, out);
  if (!r && (r = node_check(t, *out)))
    pd_tm_unlock(t->tm, *out);
  return r;
}

/* A shared node was copied: its children gain the copy as a parent. */
static int inc_children(struct pd_btree *t, const uint8_t *n)
{
  uint32_t nr = pd_node_nr(n);
  if (!pd_node_is_leaf(n)) {
    for (uint32_t i = 0; i < nr; i++) {
      int r = pd_tm_inc(t->tm, child_at(n, i));
      if (r)
        return r;
    }
    return 0;
  }
  return t->vt.inc && nr ? t->vt.inc(t->vt.ctx, pd_node_cval(n, 0), nr) : 0;
}

static int shadow(struct pd_btree *t, uint64_t b, struct pd_block **out)
{
  bool shared;
  int r = pd_tm_shadow(t->tm, b, BT, out, &shared);
  if (r)
    return r;
  if ((r = node_check(t, *out))) {
    pd_tm_unlock(t->tm, *out);
    return r;
  }
  if (shared && (r = inc_children(t, (*out)->data))) {
    pd_tm_unlock(t->tm, *out);
    return r;
  }
  return 0;
}

/* Shadow child i of the (writable) parent and point the parent at the copy. */
static int shadow_child(struct pd_btree *t, struct pd_block *parent, uint32_t i, struct pd_block **out)
{
  int r = shadow(t, child_at(parent->data, i), out);
  if (!r)
    ts__put64(pd_node_val(parent->data, i), (*out)->nr);
  return r;
}

int pd_btree_empty(struct pd_btree *t, uint64_t *root)
{
  struct pd_block *b;
  int r = pd_tm_new_block(t->tm, BT, &b);
  if (r)
    return r;
  node_init(b->data, true, t->vt.size);
  *root = b->nr;
  pd_tm_unlock(t->tm, b);
  return 0;
}

int pd_btree_lookup(struct pd_btree *t, uint64_t root, uint64_t key, void *value)
{
  uint64_t b = root;
  for (int depth = 0; depth < 64; depth++) {
    struct pd_block *blk;
    int r = read_node(t, b, &blk);
    if (r)
      return r;
    const uint8_t *n = blk->data;
    if (pd_node_is_leaf(n)) {
      uint32_t i = lower(n, key);
      r = -ENODATA;
      if (i < pd_node_nr(n) && pd_node_key(n, i) == key) {
        if (value)
          memcpy(value, pd_node_cval(n, i), pd_node_vsize(n));
        r = 0;
      }
      pd_tm_unlock(t->tm, blk);
      return r;
    }
    uint32_t i = upper(n, key);
    b = i ? child_at(n, i - 1) : 0;
    pd_tm_unlock(t->tm, blk);
    if (!i)
      return -ENODATA;
  }
  return -EILSEQ; /* a cycle: corrupt */
}

static int lb_rec(struct pd_btree *t, uint64_t b, uint64_t key, uint64_t *found, int depth)
{
  if (depth > 64)
    return -EILSEQ;
  struct pd_block *blk;
  int r = read_node(t, b, &blk);
  if (r)
    return r;
  const uint8_t *n = blk->data;
  uint32_t nr = pd_node_nr(n);
  r = -ENODATA;
  if (pd_node_is_leaf(n)) {
    uint32_t i = lower(n, key);
    if (i < nr) {
      *found = pd_node_key(n, i);
      r = 0;
    }
  } else {
    uint32_t i = upper(n, key);
    for (i = i ? i - 1 : 0; i < nr && r == -ENODATA; i++)
      r = lb_rec(t, child_at(n, i), key, found, depth + 1);
  }
  pd_tm_unlock(t->tm, blk);
  return r;
}

int pd_btree_lower_bound(struct pd_btree *t, uint64_t root, uint64_t key, uint64_t *found)
{
  return lb_rec(t, root, key, found, 0);
}

int pd_btree_highest(struct pd_btree *t, uint64_t root, uint64_t *key)
{
  uint64_t b = root;
  for (int depth = 0; depth < 64; depth++) {
    struct pd_block *blk;
    int r = read_node(t, b, &blk);
    if (r)
      return r;
    const uint8_t *n = blk->data;
    uint32_t nr = pd_node_nr(n);
    bool leaf = pd_node_is_leaf(n);
    if (!nr) {
      pd_tm_unlock(t->tm, blk);
      return -ENODATA;
    }
    if (leaf)
      *key = pd_node_key(n, nr - 1);
    else
      b = child_at(n, nr - 1);
    pd_tm_unlock(t->tm, blk);
    if (leaf)
      return 0;
  }
  return -EILSEQ;
}

/* ---- insertion ---- */

struct vgen {
  const uint8_t *single; /* one value for every key, or NULL: */
  uint64_t vbase, vstep; /* 8-byte values vbase + i * vstep */
};

static void gen_value(const struct vgen *g, uint64_t i, uint8_t *dst, uint32_t vs)
{
  if (g->single)
    memcpy(dst, g->single, vs);
  else
    ts__put64(dst, g->vbase + i * g->vstep);
}

/* The root is full: move its entries into two new children and make it an
 * internal node over them, keeping the root's block number. */
static int split_beneath(struct pd_btree *t, struct pd_block *root)
{
  uint8_t *n = root->data;
  uint32_t nr = pd_node_nr(n), vs = pd_node_vsize(n);
  bool leaf = pd_node_is_leaf(n);
  struct pd_block *l, *rr;
  int r = pd_tm_new_block(t->tm, BT, &l);
  if (r)
    return r;
  r = pd_tm_new_block(t->tm, BT, &rr);
  if (r) {
    pd_tm_unlock(t->tm, l);
    pd_tm_dec(t->tm, l->nr, NULL);
    return r;
  }
  node_init(l->data, leaf, vs);
  node_init(rr->data, leaf, vs);
  copy_entries(l->data, n, 0, nr / 2);
  copy_entries(rr->data, n, nr / 2, nr - nr / 2);
  uint8_t tmp[PD_BLOCK_SIZE];
  memset(tmp, 0, sizeof(tmp));
  node_init(tmp, false, 8);
  uint8_t v[8];
  ts__put64(v, l->nr);
  insert_entry(tmp, 0, pd_node_key(l->data, 0), v);
  ts__put64(v, rr->nr);
  insert_entry(tmp, 1, pd_node_key(rr->data, 0), v);
  memcpy(n, tmp, PD_BLOCK_SIZE);
  pd_tm_unlock(t->tm, l);
  pd_tm_unlock(t->tm, rr);
  return 0;
}

/* Split full child (at index i of parent) in two; the upper part goes to a
 * new right sibling at i+1. *right is returned locked. */
static int split_child(struct pd_btree *t, struct pd_block *parent, uint32_t i, struct pd_block *child,
                       struct pd_block **right)
{
  uint8_t *c = child->data;
  uint32_t nr = pd_node_nr(c);
  int r = pd_tm_new_block(t->tm, BT, right);
  if (r)
    return r;
  node_init((*right)->data, pd_node_is_leaf(c), pd_node_vsize(c));
  copy_entries((*right)->data, c, nr / 2, nr - nr / 2);
  close_gap(c, nr / 2, nr - nr / 2);
  uint8_t v[8];
  ts__put64(v, (*right)->nr);
  insert_entry(parent->data, i + 1, pd_node_key((*right)->data, 0), v);
  return 0;
}

/* Write-lock the (already shadowed) root and split it beneath itself when
 * full, so every level of the descent has room for one more entry. */
static int lock_root(struct pd_btree *t, uint64_t root, struct pd_block **out)
{
  struct pd_block *node;
  int r = pd_bm_write(t->tm->bm, root, BT, &node);
  if (r)
    return r;
  r = node_check(t, node);
  if (!r && pd_node_nr(node->data) == pd_node_maxe(node->data))
    r = split_beneath(t, node);
  if (r) {
    pd_tm_unlock(t->tm, node);
    return r;
  }
  *out = node;
  return 0;
}

/* Child i of node is full: replace *child with a locked child that has room
 * for kcur, narrowing *ub to that child's upper key bound. Appending past a
 * full leaf with enough keys to fill a new one starts a fresh leaf instead of
 * halving this one, so sequential fills produce full leaves. On failure
 * *child has been unlocked. */
static int make_room(struct pd_btree *t, struct pd_block *node, uint32_t i, uint64_t kcur,
                     uint64_t remaining, uint64_t *ub, struct pd_block **child)
{
  uint8_t *n = node->data, *c = (*child)->data;
  uint64_t fit = *ub - kcur < remaining ? *ub - kcur : remaining;
  struct pd_block *other;
  int r;
  if (pd_node_is_leaf(c) && kcur > pd_node_key(c, pd_node_nr(c) - 1) && fit >= min_entries(c)) {
    uint32_t vs = pd_node_vsize(c);
    r = pd_tm_new_block(t->tm, BT, &other);
    pd_tm_unlock(t->tm, *child);
    if (r)
      return r;
    node_init(other->data, true, vs);
    uint8_t v[8];
    ts__put64(v, other->nr);
    insert_entry(n, i + 1, kcur, v);
    *child = other;
    return 0;
  }
  r = split_child(t, node, i, *child, &other);
  if (r) {
    pd_tm_unlock(t->tm, *child);
  } else if (kcur >= pd_node_key(n, i + 1)) {
    pd_tm_unlock(t->tm, *child);
    *child = other;
  } else {
    *ub = pd_node_key(n, i + 1);
    pd_tm_unlock(t->tm, other);
  }
  return r;
}

/* From the locked root *node down to the leaf that takes kcur, shadowing each
 * child on the way and making room in full ones; *ub becomes the leaf's
 * exclusive upper key bound. On success *node is that leaf, locked; on
 * failure nothing is left locked. */
static int descend(struct pd_btree *t, struct pd_block **node, uint64_t kcur, uint64_t remaining,
                   uint64_t *ub)
{
  *ub = UINT64_MAX;
  while (!pd_node_is_leaf((*node)->data)) {
    uint8_t *n = (*node)->data;
    uint32_t i = upper(n, kcur);
    if (i == 0) {
      set_key(n, 0, kcur); /* keep key[0] equal to the lowest key below it */
      i = 1;
    }
    i--;
    if (i + 1 < pd_node_nr(n))
      *ub = pd_node_key(n, i + 1);
    struct pd_block *child;
    int r = shadow_child(t, *node, i, &child);
    if (!r && pd_node_nr(child->data) == pd_node_maxe(child->data))
      r = make_room(t, *node, i, kcur, remaining, ub, &child);
    pd_tm_unlock(t->tm, *node);
    if (r)
      return r;
    *node = child;
  }
  return 0;
}

/* Merge keys k0 + *processed ... k0 + count - 1 into leaf n, up to its
 * exclusive key bound ub and its capacity: a key already there gets the new
 * value (the old one released through vt.dec), absent keys go in as runs. */
static int merge_run(struct pd_btree *t, uint8_t *n, uint64_t k0, uint64_t count,
                     const struct vgen *g, uint64_t ub, uint64_t *processed, uint64_t *added)
{
  uint32_t vs = pd_node_vsize(n), maxe = pd_node_maxe(n);
  while (*processed < count) {
    uint64_t kcur = k0 + *processed;
    if (kcur >= ub)
      return 0;
    uint32_t nr = pd_node_nr(n), j = lower(n, kcur);
    if (j < nr && pd_node_key(n, j) == kcur) {
      int r = t->vt.dec ? t->vt.dec(t->vt.ctx, pd_node_val(n, j)) : 0;
      if (r)
        return r;
      gen_value(g, *processed, pd_node_val(n, j), vs);
      (*processed)++;
      continue;
    }
    if (nr == maxe)
      return 0;
    uint64_t next = j < nr ? pd_node_key(n, j) : ub;
    uint64_t m = count - *processed;
    if (next - kcur < m)
      m = next - kcur;
    if (maxe - nr < m)
      m = maxe - nr;
    open_gap(n, j, (uint32_t)m);
    uint8_t *kp = n + NODE_KEYS + 8 * (size_t)j, *vp = pd_node_val(n, j);
    if (g->single) {
      for (uint32_t x = 0; x < m; x++, kp += 8, vp += vs) {
        ts__put64(kp, kcur + x);
        memcpy(vp, g->single, vs);
      }
    } else {
      /* 8-byte values: the pointers and the value are computed once, not
       * from the node's header at every entry (the stores into the node
       * may alias it). */
      uint64_t v = g->vbase + *processed * g->vstep;
      for (uint32_t x = 0; x < m; x++, kp += 8, vp += 8, v += g->vstep) {
        ts__put64(kp, kcur + x);
        ts__put64(vp, v);
      }
    }
    *processed += m;
    *added += m;
  }
  return 0;
}

/* Insert keys k0 .. k0 + count - 1 (values from g): one descent from the
 * root per leaf the run touches. */
static int insert_core(struct pd_btree *t, uint64_t root, uint64_t k0, uint64_t count,
                       const struct vgen *g, uint64_t *new_root, uint64_t *done, uint64_t *added)
{
  uint64_t processed = 0, nadded = 0;
  struct pd_block *node;
  *new_root = root;
  int r = shadow(t, root, &node);
  if (!r) {
    *new_root = root = node->nr;
    pd_tm_unlock(t->tm, node);
  }
  while (!r && processed < count) {
    uint64_t ub;
    r = lock_root(t, root, &node);
    if (!r)
      r = descend(t, &node, k0 + processed, count - processed, &ub);
    if (!r) {
      r = merge_run(t, node->data, k0, count, g, ub, &processed, &nadded);
      pd_tm_unlock(t->tm, node);
    }
  }
  if (done)
    *done = processed;
  if (added)
    *added = nadded;
  return r;
}

int pd_btree_insert(struct pd_btree *t, uint64_t root, uint64_t key, const void *value,
                    uint64_t *new_root, bool *inserted)
{
  struct vgen g = {value, 0, 0};
  uint64_t added = 0;
  int r = insert_core(t, root, key, 1, &g, new_root, NULL, &added);
  if (inserted)
    *inserted = added != 0;
  return r;
}

int pd_btree_insert_run(struct pd_btree *t, uint64_t root, uint64_t kbegin, uint64_t count,
                        uint64_t vbase, uint64_t vstep, uint64_t *new_root, uint64_t *done,
                        uint64_t *added)
{
  struct vgen g = {NULL, vbase, vstep};
  return insert_core(t, root, kbegin, count, &g, new_root, done, added);
}

/* ---- removal ---- */

/* Make sure child i of node has more than the minimum number of entries,
 * merging with or borrowing from a sibling; *i is updated to the child that
 * now covers key. */
static int rebalance(struct pd_btree *t, struct pd_block *node, uint32_t *i, uint64_t key)
{
  uint8_t *n = node->data;
  uint32_t nr = pd_node_nr(n);
  struct pd_block *cb;
  int r = read_node(t, child_at(n, *i), &cb);
  if (r)
    return r;
  uint32_t cnr = pd_node_nr(cb->data), cmin = min_entries(cb->data), cmax = pd_node_maxe(cb->data);
  pd_tm_unlock(t->tm, cb);
  if (cnr > cmin || nr < 2)
    return 0;
  uint32_t li = *i + 1 < nr ? *i : *i - 1, ri = li + 1;
  struct pd_block *l, *rt;
  if ((r = shadow_child(t, node, li, &l)))
    return r;
  if ((r = shadow_child(t, node, ri, &rt))) {
    pd_tm_unlock(t->tm, l);
    return r;
  }
  uint32_t ln = pd_node_nr(l->data), rn = pd_node_nr(rt->data);
  if (pd_node_is_leaf(l->data) != pd_node_is_leaf(rt->data)) {
    pd_bm_refused(t->tm->bm, "btree nodes %" PRIu64 " and %" PRIu64 ": siblings of different levels", l->nr, rt->nr);
    pd_tm_unlock(t->tm, rt);
    pd_tm_unlock(t->tm, l);
    return -EILSEQ;
  }
  if (ln + rn <= cmax) {
    copy_entries(l->data, rt->data, 0, rn);
    close_gap(n, ri, 1);
    uint64_t dead = rt->nr;
    pd_tm_unlock(t->tm, rt);
    pd_tm_unlock(t->tm, l);
    *i = li;
    return pd_tm_dec(t->tm, dead, NULL); /* its entries moved to the left node */
  }
  uint32_t want_l = (ln + rn) / 2;
  if (ln < want_l) {
    copy_entries(l->data, rt->data, 0, want_l - ln);
    close_gap(rt->data, 0, want_l - ln);
  } else if (ln > want_l) {
    uint32_t mv = ln - want_l;
    open_gap(rt->data, 0, mv);
    memcpy(rt->data + NODE_KEYS, l->data + NODE_KEYS + 8 * (size_t)want_l, 8 * (size_t)mv);
    memcpy(pd_node_val(rt->data, 0), pd_node_val(l->data, want_l), (size_t)pd_node_vsize(l->data) * mv);
    close_gap(l->data, want_l, mv);
  }
  set_key(n, ri, pd_node_key(rt->data, 0));
  *i = key >= pd_node_key(n, ri) ? ri : li;
  pd_tm_unlock(t->tm, rt);
  pd_tm_unlock(t->tm, l);
  return 0;
}

int pd_btree_remove_range(struct pd_btree *t, uint64_t root, uint64_t kb, uint64_t ke,
                          uint64_t *new_root, uint64_t *removed)
{
  uint64_t total = 0;
  int r = 0;
  *new_root = root;
  while (kb < ke) {
    uint64_t f;
    r = pd_btree_lower_bound(t, root, kb, &f);
    if (r == -ENODATA) {
      r = 0;
      break;
    }
    if (r || f >= ke)
      break;
    kb = f;
    struct pd_block *node, *child;
    if ((r = shadow(t, root, &node)))
      break;
    root = *new_root = node->nr;
    /* a root with one child gives its place to that child */
    while (!pd_node_is_leaf(node->data) && pd_node_nr(node->data) == 1) {
      uint64_t cnr = child_at(node->data, 0);
      struct pd_block *cb;
      if ((r = read_node(t, cnr, &cb)))
        break;
      /* All but the stamp (checksum, block number), which the write
       * stamps anew, and which the cache's write-back thread may be
       * writing into `cb` right now. */
      memcpy(node->data + NODE_FLAGS, cb->data + NODE_FLAGS, 4);
      memcpy(node->data + NODE_NR, cb->data + NODE_NR, PD_BLOCK_SIZE - NODE_NR);
      pd_tm_unlock(t->tm, cb);
      if (pd_sm_get(t->tm->meta, cnr) > 1 && (r = inc_children(t, node->data)))
        break;
      if ((r = pd_tm_dec(t->tm, cnr, NULL)))
        break;
    }
    while (!r && !pd_node_is_leaf(node->data)) {
      uint32_t i = upper(node->data, kb);
      i = i ? i - 1 : 0;
      if ((r = rebalance(t, node, &i, kb)))
        break;
      if ((r = shadow_child(t, node, i, &child)))
        break;
      pd_tm_unlock(t->tm, node);
      node = child;
    }
    if (r) {
      pd_tm_unlock(t->tm, node);
      break;
    }
    uint8_t *n = node->data;
    uint32_t nr = pd_node_nr(n), j = lower(n, kb), e = lower(n, ke) - j;
    if (node->nr != root && e > nr - min_entries(n))
      e = nr - min_entries(n);
    for (uint32_t x = 0; x < e && t->vt.dec; x++)
      if ((r = t->vt.dec(t->vt.ctx, pd_node_val(n, j + x))))
        break;
    if (!r)
      close_gap(n, j, e);
    pd_tm_unlock(t->tm, node);
    if (r)
      break;
    total += e;
    if (!e)
      kb++; /* cannot happen on a valid tree; guarantees progress */
  }
  if (removed)
    *removed = total;
  return r;
}

/* ---- whole trees ---- */

static int del_rec(struct pd_btree *t, uint64_t b, int depth)
{
  if (depth > 64)
    return -EILSEQ;
  if (pd_sm_get(t->tm->meta, b) > 1)
    return pd_tm_dec(t->tm, b, NULL);
  struct pd_block *blk;
  int r = read_node(t, b, &blk);
  if (r)
    return r;
  const uint8_t *n = blk->data;
  uint32_t nr = pd_node_nr(n);
  if (pd_node_is_leaf(n)) {
    for (uint32_t i = 0; i < nr && t->vt.dec && !r; i++)
      r = t->vt.dec(t->vt.ctx, pd_node_cval(n, i));
    pd_tm_unlock(t->tm, blk);
  } else {
    uint64_t kids[PD_BLOCK_SIZE / 8];
    for (uint32_t i = 0; i < nr; i++)
      kids[i] = child_at(n, i);
    pd_tm_unlock(t->tm, blk);
    for (uint32_t i = 0; i < nr && !r; i++)
      r = del_rec(t, kids[i], depth + 1);
  }
  return r ? r : pd_tm_dec(t->tm, b, NULL);
}

int pd_btree_del(struct pd_btree *t, uint64_t root)
{
  return del_rec(t, root, 0);
}

static int walk_rec(struct pd_btree *t, uint64_t b, uint64_t kb, uint64_t ke, pd_leaf_fn fn,
                    void *arg, int depth)
{
  if (depth > 64)
    return -EILSEQ;
  struct pd_block *blk;
  int r = read_node(t, b, &blk);
  if (r)
    return r;
  const uint8_t *n = blk->data;
  uint32_t nr = pd_node_nr(n);
  if (pd_node_is_leaf(n)) {
    uint32_t j = lower(n, kb), e = lower(n, ke);
    if (e > j)
      r = fn(arg, n, j, e - j);
  } else {
    uint32_t i = upper(n, kb);
    for (i = i ? i - 1 : 0; i < nr && pd_node_key(n, i) < ke && !r; i++)
      r = walk_rec(t, child_at(n, i), kb, ke, fn, arg, depth + 1);
  }
  pd_tm_unlock(t->tm, blk);
  return r;
}

int pd_btree_walk(struct pd_btree *t, uint64_t root, uint64_t kb, uint64_t ke, pd_leaf_fn fn,
                  void *arg)
{
  return walk_rec(t, root, kb, ke, fn, arg, 0);
}

int pd_btree_read_node(struct pd_btree *t, uint64_t b, struct pd_block **out)
{
  return read_node(t, b, out);
}
