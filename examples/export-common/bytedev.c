/* bytedev: byte ranges on top of a block-aligned libthinstack device. See
 * bytedev.h for the contract and the locking rule. */
#include "bytedev.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

/* One writer's hold on [start, end); lives on that writer's stack. */
struct bd_range {
  uint64_t start, end;
  struct bd_range *next;
};

int bd_init(bd_dev *b, ts_dev *dev)
{
  memset(b, 0, sizeof *b);
  b->dev = dev;
  b->size = ts_dev_size(dev);
  b->lbs = ts_dev_limits(dev)->logical_block_size;
  int r = pthread_mutex_init(&b->mu, NULL);
  if (r)
    return -r;
  r = pthread_cond_init(&b->cv, NULL);
  if (r) {
    pthread_mutex_destroy(&b->mu);
    return -r;
  }
  return 0;
}

void bd_fini(bd_dev *b)
{
  pthread_cond_destroy(&b->cv);
  pthread_mutex_destroy(&b->mu);
}

static void lock_range(bd_dev *b, struct bd_range *r, uint64_t start, uint64_t end)
{
  r->start = start;
  r->end = end;
  pthread_mutex_lock(&b->mu);
  for (;;) {
    const struct bd_range *h = b->held;
    while (h && !(h->start < end && start < h->end))
      h = h->next;
    if (!h)
      break;
    pthread_cond_wait(&b->cv, &b->mu);
  }
  r->next = b->held;
  b->held = r;
  pthread_mutex_unlock(&b->mu);
}

static void unlock_range(bd_dev *b, struct bd_range *r)
{
  pthread_mutex_lock(&b->mu);
  struct bd_range **p = &b->held;
  while (*p != r)
    p = &(*p)->next;
  *p = r->next;
  /* Waiters may want any part of the range: wake them all; each re-checks. */
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
}

static uint64_t down(const bd_dev *b, uint64_t x) { return x - x % b->lbs; }
static uint64_t up(const bd_dev *b, uint64_t x) { return down(b, x + b->lbs - 1); }

static int check_range(const bd_dev *b, uint64_t off, uint64_t len)
{
  /* The device's own size, not the one at attach: a volume grows live. */
  uint64_t size = ts_dev_size(b->dev);
  if (off > size || len > size - off)
    return -EINVAL;
  return 0;
}

int bd_read(bd_dev *b, void *buf, size_t len, uint64_t off)
{
  int r = check_range(b, off, len);
  if (r || len == 0)
    return r;
  uint64_t end = off + len, alo = down(b, off), ahi = up(b, end);
  if (alo == off && ahi == end)
    return ts_pread(b->dev, buf, len, off);
  /* Read the covering blocks in one request, the unwanted edges into
   * scratch space, the wanted bytes straight into the caller's buffer. */
  size_t head = (size_t)(off - alo), tail = (size_t)(ahi - end);
  char *scratch = malloc(head + tail);
  if (!scratch)
    return -ENOMEM;
  struct iovec v[3];
  int n = 0;
  if (head)
    v[n++] = (struct iovec){ scratch, head };
  v[n++] = (struct iovec){ buf, len };
  if (tail)
    v[n++] = (struct iovec){ scratch + head, tail };
  r = ts_preadv(b->dev, v, n, alo);
  free(scratch);
  return r;
}

int bd_write(bd_dev *b, const void *buf, size_t len, uint64_t off, uint32_t flags)
{
  int r = check_range(b, off, len);
  if (r || len == 0)
    return r;
  uint64_t end = off + len, alo = down(b, off), ahi = up(b, end);
  struct bd_range held;
  lock_range(b, &held, alo, ahi);
  if (alo == off && ahi == end) {
    r = ts_pwrite(b->dev, buf, len, off, flags);
    unlock_range(b, &held);
    return r;
  }
  size_t head = (size_t)(off - alo), tail = (size_t)(ahi - end);
  char *hb = NULL, *tb = NULL;
  if (head) {
    hb = malloc(b->lbs);
    r = hb ? ts_pread(b->dev, hb, b->lbs, alo) : -ENOMEM;
  }
  if (!r && tail) {
    if (head && ahi - alo == b->lbs) {
      tb = hb; /* one block holds both edges: read it once */
    } else {
      tb = malloc(b->lbs);
      r = tb ? ts_pread(b->dev, tb, b->lbs, ahi - b->lbs) : -ENOMEM;
    }
  }
  if (!r) {
    struct iovec v[3];
    int n = 0;
    if (head)
      v[n++] = (struct iovec){ hb, head };
    v[n++] = (struct iovec){ (void *)buf, len };
    if (tail)
      v[n++] = (struct iovec){ tb + (b->lbs - tail), tail };
    r = ts_pwritev(b->dev, v, n, alo, flags);
  }
  unlock_range(b, &held);
  if (tb != hb)
    free(tb);
  free(hb);
  return r;
}

/* Zero [from, to) inside the block at `blk` by read-modify-write; the caller
 * holds the lock on that block. */
static int zero_partial(bd_dev *b, uint64_t blk, uint64_t from, uint64_t to, uint32_t flags)
{
  char *p = malloc(b->lbs);
  if (!p)
    return -ENOMEM;
  int r = ts_pread(b->dev, p, b->lbs, blk);
  if (!r) {
    memset(p + (from - blk), 0, (size_t)(to - from));
    r = ts_pwrite(b->dev, p, b->lbs, blk, flags & TS_IO_FUA);
  }
  free(p);
  return r;
}

/* Zero the partial blocks at the edges of [off, end); the caller holds the
 * lock on the covering blocks. */
static int zero_edges(bd_dev *b, uint64_t off, uint64_t end, uint32_t flags)
{
  int r = 0;
  if (off % b->lbs) {
    uint64_t blk = down(b, off), stop = end < blk + b->lbs ? end : blk + b->lbs;
    r = zero_partial(b, blk, off, stop, flags);
  }
  /* The tail block, unless it is the head block handled above. */
  if (!r && end % b->lbs && down(b, end) >= up(b, off)) {
    uint64_t blk = down(b, end);
    r = zero_partial(b, blk, off > blk ? off : blk, end, flags);
  }
  return r;
}

/* Zero [off, end): whole blocks with WRITE_ZEROES and `flags`, partial
 * edges by read-modify-write; the caller holds the lock on the range. */
static int zero_range(bd_dev *b, uint64_t off, uint64_t end, uint32_t flags)
{
  if (off >= end)
    return 0;
  uint64_t mlo = up(b, off), mhi = down(b, end);
  int r = 0;
  if (mlo < mhi)
    r = ts_write_zeroes(b->dev, mlo, mhi - mlo, flags);
  if (!r)
    r = zero_edges(b, off, end, flags);
  return r;
}

int bd_zero(bd_dev *b, uint64_t off, uint64_t len, uint32_t flags)
{
  int r = check_range(b, off, len);
  if (r || len == 0)
    return r;
  struct bd_range held;
  lock_range(b, &held, down(b, off), up(b, off + len));
  r = zero_range(b, off, off + len, flags);
  unlock_range(b, &held);
  return r;
}

int bd_punch(bd_dev *b, uint64_t off, uint64_t len)
{
  const ts_limits *lim = ts_dev_limits(b->dev);
  bool discard = ts_limits_cap(lim, TS_OP_DISCARD) != TS_CAP_NONE;
  bool zero = ts_limits_cap(lim, TS_OP_WRITE_ZEROES) == TS_CAP_NATIVE;
  int r = check_range(b, off, len);
  if (r || len == 0)
    return r;
  if (!discard && !zero)
    return -EOPNOTSUPP;
  uint64_t end = off + len, dlo = 0, dhi = 0;
  if (discard && lim->discard_zeroes) {
    /* Only whole discard units are sure to read back as zeroes (a thin
     * volume leaves the rest of a partly discarded block as it was). */
    uint64_t g = lim->discard_granularity > b->lbs ? lim->discard_granularity : b->lbs;
    dlo = (off + g - 1) / g * g;
    dhi = end / g * g;
  }
  struct bd_range held;
  lock_range(b, &held, down(b, off), up(b, end));
  if (dlo < dhi) {
    r = ts_discard(b->dev, dlo, dhi - dlo);
    if (!r)
      r = zero_range(b, off, dlo, TS_IO_MAY_UNMAP);
    if (!r)
      r = zero_range(b, dhi, end, TS_IO_MAY_UNMAP);
  } else {
    r = zero_range(b, off, end, TS_IO_MAY_UNMAP);
  }
  unlock_range(b, &held);
  return r;
}

int bd_trim(bd_dev *b, uint64_t off, uint64_t len)
{
  int r = check_range(b, off, len);
  if (r)
    return r;
  uint64_t mlo = up(b, off), mhi = down(b, off + len);
  if (mlo >= mhi)
    return 0;
  struct bd_range held;
  lock_range(b, &held, mlo, mhi);
  r = ts_discard(b->dev, mlo, mhi - mlo);
  unlock_range(b, &held);
  return r;
}

int bd_provision(bd_dev *b, uint64_t off, uint64_t len)
{
  int r = check_range(b, off, len);
  if (r || len == 0)
    return r;
  /* No lock: provisioning never changes what the blocks read. */
  uint64_t alo = down(b, off), ahi = up(b, off + len);
  return ts_provision(b->dev, alo, ahi - alo);
}

int bd_extents(bd_dev *b, uint64_t off, uint64_t len, ts_extent_list *out)
{
  int r = check_range(b, off, len);
  if (r || len == 0)
    return r ? r : -EINVAL;
  uint64_t alo = down(b, off), ahi = up(b, off + len);
  return ts_block_status(b->dev, alo, ahi - alo, out);
}
