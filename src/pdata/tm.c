/* Transaction manager: copy-on-write ("shadowing") over the block manager
 * and the metadata space map. A block the last commit uses is never written
 * in place: it is copied to a block that was free in the last commit, so the
 * committed trees stay intact on disk until the next superblock write. */
#include <errno.h>

#include "pdata/pdata-internal.h"

int pd_tm_read(struct pd_tm *tm, uint64_t b, enum pd_btype t, struct pd_block **out)
{
  return pd_bm_read(tm->bm, b, t, out);
}

/* `copy`: the caller overwrites the whole block. B-tree nodes are not
 * zeroed whole: their writers fill the entries, the block manager the rest
 * at unlock (a provision's leaves are full: 4 KiB zeroed for nothing). */
static int new_block(struct pd_tm *tm, enum pd_btype t, bool copy, struct pd_block **out)
{
  uint64_t b;
  int r = pd_sm_alloc(tm->meta, &b);
  if (r)
    return r;
  r = copy              ? pd_bm_write_fill(tm->bm, b, t, out)
      : t == PD_BT_NODE ? pd_bm_write_node(tm->bm, b, out)
                        : pd_bm_write_zero(tm->bm, b, t, out);
  if (r) {
    pd_sm_dec(tm->meta, b, NULL);
    return r;
  }
  return 0;
}

int pd_tm_new_block(struct pd_tm *tm, enum pd_btype t, struct pd_block **out)
{
  return new_block(tm, t, false, out);
}

int pd_tm_shadow(struct pd_tm *tm, uint64_t b, enum pd_btype t, struct pd_block **out,
                 bool *shared)
{
  uint32_t c = pd_sm_get(tm->meta, b);
  if (c == 0)
    return -EILSEQ; /* a reachable block with count 0: corrupt space map */
  *shared = c > 1;
  if (c == 1 && pd_sm_committed_free(tm->meta, b))
    return pd_bm_write(tm->bm, b, t, out); /* ours alone, new in this transaction */
  struct pd_block *src, *dst;
  int r = pd_bm_read(tm->bm, b, t, &src);
  if (r)
    return r;
  r = new_block(tm, t, true, &dst);
  if (r) {
    pd_bm_unlock(tm->bm, src);
    return r;
  }
  memcpy(dst->data, src->data, PD_BLOCK_SIZE);
  pd_bm_unlock(tm->bm, src);
  r = pd_sm_dec(tm->meta, b, NULL);
  if (r) {
    pd_bm_unlock(tm->bm, dst);
    return r;
  }
  *out = dst;
  return 0;
}

void pd_tm_unlock(struct pd_tm *tm, struct pd_block *b)
{
  pd_bm_unlock(tm->bm, b);
}

int pd_tm_inc(struct pd_tm *tm, uint64_t b)
{
  return pd_sm_inc(tm->meta, b);
}

int pd_tm_dec(struct pd_tm *tm, uint64_t b, uint32_t *now)
{
  uint32_t n;
  int r = pd_sm_dec(tm->meta, b, &n);
  if (r)
    return r;
  if (!n && pd_sm_committed_free(tm->meta, b))
    pd_bm_forget(tm->bm, b); /* a block of this transaction died: never write it */
  if (now)
    *now = n;
  return 0;
}
