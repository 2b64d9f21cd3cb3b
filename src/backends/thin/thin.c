/* thin: a thinly provisioned volume of a thin-pool (dm-thin's thin target).
 *
 *   { "type": "thin", "pool": "pool", "id": 0, "size": "20G", "create": true }
 *
 * Virtual block b of the volume maps to a data block of the pool (same size)
 * through the pool's metadata; unmapped blocks read as zeroes. Writes to an
 * unmapped block allocate one; writes to a block shared with a snapshot copy
 * it first (break sharing). DISCARD unmaps whole blocks; PROVISION allocates
 * without writing; WRITE_ZEROES is PROVISION with a zero guarantee (or an
 * unmap with MAY_UNMAP). FLUSH commits the pool (FUA: the core turns it into
 * a FLUSH after the write).
 *
 * Zeroes without writing zeroes. A data block is mapped into a volume only
 * after it reads as zeroes on the data layer (or its unwritten part does,
 * for a partial write): the pool asks the data layer's BLOCK_STATUS which
 * parts already read as zeroes (a hole or unwritten extent of a sparse
 * file, a block discarded after it was freed) and zeroes only the rest,
 * with WRITE_ZEROES on the data layer (fallocate ZERO_RANGE on a file). The
 * rule keeps no state of its own, so it holds after a crash too: a freed
 * block whose discard was lost still holds data and is zeroed when it is
 * allocated again, before its new mapping can be committed (zeroing, then
 * the data flush of the commit, then the metadata). Freed blocks are
 * discarded after the commit that frees them (never before: until then the
 * committed metadata may still map them), or right away for DISCARD, like
 * the kernel's passdown. A provisioned block that was never written reads
 * as zeroes from the data layer itself, and BLOCK_STATUS reports it as
 * allocated zeroes (TS_EXTENT_ZERO) from the same data layer status.
 *
 * Kernel equivalent: `thin <pool> <id>`.
 */
#include "backends/thin/thin-internal.h"
#include "core/array.h"
#include "core/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Virtual bytes provisioned per locked step: a huge PROVISION does not hold
 * off commits for long (a 16 GiB step is ~20 ms at 64K blocks), while a
 * typical one is a single step: one fallocate below, one extent query. */
#define PROVISION_STEP (16ull << 30)
/* Bytes of new blocks provisioned below before their mappings are inserted,
 * while the next group is provisioned (see struct filler). */
#define PROVISION_GROUP (512ull << 20)
/* Bounce buffer for copying shared blocks. */
#define COPY_CHUNK (1u << 20)

static const ts_param thin_params[] = {
  { "pool", TS_PARAM_CHILD, TS_PARAM_REQUIRED | TS_PARAM_SHARED, NULL, NULL, "the thin-pool layer" },
  { "id", TS_PARAM_UINT, TS_PARAM_REQUIRED, NULL, NULL, "the volume's id in the pool (0..16777215)" },
  { "size", TS_PARAM_SIZE, TS_PARAM_REQUIRED, NULL, NULL, "the volume's size (dm-thin does not store it)" },
  { "create", TS_PARAM_BOOL, 0, NULL, NULL, "create the volume in the pool when it does not exist" },
  { "origin", TS_PARAM_STRING, 0, NULL, NULL,
    "the layer this volume was snapshotted from (recorded by `thin snap`; dm-thin keeps no parentage)" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

/* ------------------------------------------------------------------------ */
/* Mapping look-ups                                                          */

struct runs {
  struct tmd_run *v;
  size_t n, cap;
  size_t max;          /* stop the walk after this many runs; 0 = all */
  struct tmd_run inl[8];
};

/* Mapped runs one block status call reports at most: the core asks again
 * from where it stopped, so a huge, fragmented volume costs bounded memory
 * and time per call. */
#define STATUS_MAX_RUNS 4096
/* What runs_add returns to stop the walk once `max` runs are in. */
#define RUNS_FULL 1

static void runs_init(struct runs *r)
{
  r->v = r->inl;
  r->n = 0;
  r->max = 0;
  r->cap = sizeof r->inl / sizeof r->inl[0];
}

static void runs_free(struct runs *r)
{
  if (r->v != r->inl)
    free(r->v);
  runs_init(r);
}

static int runs_add(void *arg, const struct tmd_run *run)
{
  struct runs *r = arg;
  if (r->max && r->n == r->max)
    return RUNS_FULL;
  struct tmd_run *v = ts__array_grow(r->v, &r->cap, r->n, sizeof *v, r->inl);
  if (!v)
    return -ENOMEM;
  r->v = v;
  r->v[r->n++] = *run;
  return 0;
}

/* Mapped runs of blocks [b, e); under lock (either mode). */
static int lookup(struct tp_pool *p, uint32_t id, uint64_t b, uint64_t e, struct runs *out)
{
  out->n = 0;
  return tp_data_err(p, tmd_lookup_range(p->md, id, b, e, runs_add, out));
}

/* The lookup cache. A request inside one block (every 4K request) looks up
 * that block alone; walking the mapping tree from its root for it takes two
 * or three metadata blocks from the block cache, each a lock round trip and
 * a reader count, which was most of thin's own CPU per request. The last
 * answers are kept per volume, direct-mapped by virtual block, each tagged
 * with the device's tmd_map_gen when it was read. The tag is read and
 * compared under `lock` (either mode), and every change that can make an
 * answer stale (an insert or unmap, a snapshot of the volume, a reload)
 * changes the gen under `lock` exclusive, so a tagged answer that matches is
 * what the walk would return. The entries are filled by concurrent holders of
 * the shared lock: each is a seqlock, and a filler that finds one taken just
 * does not fill it. */
#define MC_MAX_ENTRIES 8192u /* 256 KiB per volume; 512 MiB of 64K blocks */
#define MC_UNMAPPED UINT64_MAX

static void mc_init(struct tp_vol *v)
{
  uint64_t blocks = (v->size + v->pool->bs - 1) / v->pool->bs, n = 1;
  while (n < blocks && n < MC_MAX_ENTRIES)
    n <<= 1;
  v->mc = calloc(n, sizeof *v->mc); /* gen 0 matches no device */
  v->mc_mask = n - 1;
}

static bool mc_get(struct tp_map_entry *x, uint64_t b, uint64_t gen, uint64_t *val)
{
  uint64_t s = atomic_load_explicit(&x->seq, memory_order_acquire);
  if (s & 1)
    return false;
  /* Acquire loads, not a fence (ThreadSanitizer does not model fences):
   * the second read of seq cannot move above them, and a value stored
   * after a filler made seq odd makes that odd seq visible here. */
  uint64_t k = atomic_load_explicit(&x->vblock, memory_order_acquire);
  uint64_t v = atomic_load_explicit(&x->val, memory_order_acquire);
  uint64_t g = atomic_load_explicit(&x->gen, memory_order_acquire);
  if (atomic_load_explicit(&x->seq, memory_order_relaxed) != s || k != b || g != gen)
    return false;
  *val = v;
  return true;
}

static void mc_put(struct tp_map_entry *x, uint64_t b, uint64_t gen, uint64_t val)
{
  uint64_t s = atomic_load_explicit(&x->seq, memory_order_relaxed);
  if ((s & 1) || !atomic_compare_exchange_strong_explicit(&x->seq, &s, s + 1, memory_order_acquire,
                                                          memory_order_relaxed))
    return;
  /* Release stores keep the odd seq ahead of each of them. */
  atomic_store_explicit(&x->vblock, b, memory_order_release);
  atomic_store_explicit(&x->val, val, memory_order_release);
  atomic_store_explicit(&x->gen, gen, memory_order_release);
  atomic_store_explicit(&x->seq, s + 2, memory_order_release);
}

/* lookup() for volume v, answered from the cache when [b, e) is one block;
 * under lock (either mode). */
static int lookup_vol(struct tp_vol *v, uint64_t b, uint64_t e, struct runs *out)
{
  struct tp_pool *p = v->pool;
  if (e != b + 1 || !v->mc)
    return lookup(p, v->id, b, e, out);
  uint64_t gen = tmd_map_gen(p->md, v->id), val;
  struct tp_map_entry *x = &v->mc[b & v->mc_mask];
  if (gen && mc_get(x, b, gen, &val)) {
    out->n = 0;
    if (val == MC_UNMAPPED)
      return 0;
    struct tmd_run run = { .vbegin = b, .len = 1, .dbegin = val >> 1, .shared = val & 1 };
    return runs_add(out, &run);
  }
  atomic_fetch_add_explicit(&v->n_walks, 1, memory_order_relaxed);
  int r = lookup(p, v->id, b, e, out);
  if (r == 0 && gen && out->n <= 1)
    mc_put(x, b, gen, out->n ? out->v[0].dbegin << 1 | out->v[0].shared : MC_UNMAPPED);
  return r;
}

/* ------------------------------------------------------------------------ */
/* Data layer helpers                                                        */

/* Make data bytes [doff, doff+len) read as zeroes, writing only where the
 * data layer does not already say they do. */
static int make_zero(struct tp_pool *p, uint64_t doff, uint64_t len)
{
  ts_extent_list l = { 0 };
  int r = ts_block_status(p->data, doff, len, &l);
  if (r) {
    ts_extent_list_free(&l);
    r = ts_write_zeroes(p->data, doff, len, 0);
    if (!r)
      atomic_fetch_add(&p->n_zeroed_bytes, len);
    return r;
  }
  uint64_t zs = 0, zl = 0;
  for (size_t i = 0; i <= l.n && !r; i++) {
    const ts_extent *e = i < l.n ? &l.v[i] : NULL;
    if (e && (e->flags & TS_EXTENT_ZERO))
      continue;
    if (e && zl && zs + zl == e->offset) {
      zl += e->length;
      continue;
    }
    if (zl) {
      r = ts_write_zeroes(p->data, zs, zl, 0);
      if (!r)
        atomic_fetch_add(&p->n_zeroed_bytes, zl);
    }
    if (e) {
      zs = e->offset;
      zl = e->length;
    }
  }
  ts_extent_list_free(&l);
  return r;
}

/* Copy data bytes [from, from+len) to [to, to+len), skipping what reads as
 * zeroes at the source (the destination is made zero there instead). */
static int copy_data(struct tp_pool *p, uint64_t from, uint64_t to, uint64_t len)
{
  ts_extent_list l = { 0 };
  if (ts_block_status(p->data, from, len, &l) != 0) {
    l.n = 0;
    if (ts_extent_list_add(&l, from, len, 0))
      return -ENOMEM;
  }
  void *buf = NULL;
  int r = 0;
  for (size_t i = 0; i < l.n && !r; i++) {
    uint64_t s = l.v[i].offset, n = l.v[i].length;
    if (l.v[i].flags & TS_EXTENT_ZERO) {
      r = make_zero(p, to + (s - from), n);
      continue;
    }
    if (!buf && posix_memalign(&buf, 4096, COPY_CHUNK)) {
      buf = NULL;
      r = -ENOMEM;
      break;
    }
    for (uint64_t o = 0; o < n && !r; o += COPY_CHUNK) {
      size_t c = n - o < COPY_CHUNK ? (size_t)(n - o) : COPY_CHUNK;
      r = ts_pread(p->data, buf, c, s + o);
      if (!r)
        r = ts_pwrite(p->data, buf, c, to + (s - from) + o, 0);
    }
  }
  free(buf);
  ts_extent_list_free(&l);
  return r;
}

/* Where a write's bytes come from: an iovec, or zeroes (iov == NULL). */
struct src {
  const struct iovec *iov;
  int iovcnt;
  uint64_t off; /* virtual offset of the first byte */
};

/* Write the source's bytes for virtual [voff, voff+len) at data offset doff. */
static int put(struct tp_pool *p, const struct src *s, uint64_t voff, uint64_t doff, uint64_t len)
{
  if (!len)
    return 0;
  if (!s->iov)
    return make_zero(p, doff, len);
  ts_io io = { .iov = s->iov, .iovcnt = s->iovcnt };
  return ts_layer_submit_slice(p->data, TS_OP_WRITE, 0, doff, &io, voff - s->off, len);
}

/* The data requests of one volume request, one per run of consecutive data
 * blocks. They are started together through the data layer's submit_async
 * and waited for once, so over rbd (each request a round trip to the
 * cluster) a request over n runs costs about one round trip instead of n.
 * Over the file layer (where a read from the page cache costs less on this
 * thread than through its ring and reaper thread), and for what
 * submit_async declines, each runs in turn on this thread. The first error
 * fails the request; no piece is started after a failure, and the request
 * ends only once every piece started has. */
struct piece {
  uint64_t doff, skip, len; /* data offset; bytes [skip, skip+len) of the caller's buffers */
};

struct fan {
  struct tp_pool *p;
  uint32_t op;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int pending; /* started through submit_async, not yet ended */
  int err;     /* the first error */
};

static bool fan_out(const struct tp_pool *p)
{
  const char *t = ts_dev_type(p->data);
  return t && strcmp(t, "file") != 0;
}

/* Runs on the data layer's completion thread, once per started piece. */
static void fan_done(void *arg, int result)
{
  struct fan *f = arg;
  if (result)
    ts__count_error(f->p->data, f->op);
  pthread_mutex_lock(&f->lock);
  if (result && !f->err)
    f->err = result;
  if (--f->pending == 0)
    pthread_cond_signal(&f->cond);
  pthread_mutex_unlock(&f->lock);
}

static int fan_run(struct tp_pool *p, uint32_t op, const struct iovec *iov, int iovcnt,
                   const struct piece *pc, size_t n)
{
  if (n == 0)
    return 0;
  ts_io whole = { .iov = (struct iovec *)iov, .iovcnt = iovcnt };
  if (n == 1 || !fan_out(p)) {
    int r = 0;
    for (size_t i = 0; i < n && !r; i++)
      r = ts_layer_submit_slice(p->data, op, 0, pc[i].doff, &whole, pc[i].skip, pc[i].len);
    return r;
  }
  /* Slices of disjoint ranges have at most iovcnt + n pieces in all. */
  size_t room = (size_t)iovcnt + n;
  ts_io *ios = malloc(n * sizeof *ios + room * sizeof(struct iovec));
  if (!ios)
    return -ENOMEM;
  struct iovec *v = (struct iovec *)(ios + n);
  struct fan f = { .p = p, .op = op, .pending = 0, .err = 0 };
  pthread_mutex_init(&f.lock, NULL);
  pthread_cond_init(&f.cond, NULL);
  int r = 0;
  for (size_t i = 0; i < n && !r; i++) {
    int cnt = ts_iov_slice(iov, iovcnt, (size_t)pc[i].skip, (size_t)pc[i].len, v, (int)room);
    if (cnt <= 0) {
      r = cnt < 0 ? cnt : -EIO;
      break;
    }
    ios[i] =
        (ts_io){ .op = op, .offset = pc[i].doff, .length = pc[i].len, .iov = v, .iovcnt = cnt };
    v += cnt;
    room -= (size_t)cnt;
    if ((r = ts__io_check(p->data, &ios[i])))
      break;
    pthread_mutex_lock(&f.lock);
    f.pending++;
    pthread_mutex_unlock(&f.lock);
    if (ts__submit_async(p->data, &ios[i], fan_done, &f) == 0)
      continue;
    pthread_mutex_lock(&f.lock);
    f.pending--;
    pthread_mutex_unlock(&f.lock);
    r = ts__submit_checked(p->data, &ios[i]);
  }
  pthread_mutex_lock(&f.lock);
  while (f.pending)
    pthread_cond_wait(&f.cond, &f.lock);
  if (!r)
    r = f.err;
  pthread_mutex_unlock(&f.lock);
  pthread_cond_destroy(&f.cond);
  pthread_mutex_destroy(&f.lock);
  free(ios);
  return r;
}

/* ------------------------------------------------------------------------ */
/* READ                                                                      */

static int thin_read(struct tp_vol *vol, const ts_io *io)
{
  struct tp_pool *p = vol->pool;
  uint64_t bs = p->bs, off = io->offset, end = io->offset + io->length;
  struct runs runs;
  runs_init(&runs);
  struct piece inl[8], *pc = inl;
  /* The shared lock stays held across the data reads: a mapping cannot
   * change (and its block be reused) while we read it. */
  pthread_rwlock_rdlock(&p->lock);
  int r = lookup_vol(vol, off / bs, (end + bs - 1) / bs, &runs);
  if (!r && runs.n > sizeof inl / sizeof inl[0] && !(pc = malloc(runs.n * sizeof *pc)))
    r = -ENOMEM;
  uint64_t pos = off;
  for (size_t i = 0; i < runs.n && !r; i++) {
    uint64_t rs = runs.v[i].vbegin * bs, re = (runs.v[i].vbegin + runs.v[i].len) * bs;
    rs = rs > off ? rs : off;
    re = re < end ? re : end;
    if (rs > pos)
      ts_iov_zero(io->iov, io->iovcnt, (size_t)(pos - off), (size_t)(rs - pos));
    pc[i] =
        (struct piece){ runs.v[i].dbegin * bs + (rs - runs.v[i].vbegin * bs), rs - off, re - rs };
    pos = re;
  }
  if (!r)
    r = fan_run(p, TS_OP_READ, io->iov, io->iovcnt, pc, runs.n);
  if (!r && pos < end)
    ts_iov_zero(io->iov, io->iovcnt, (size_t)(pos - off), (size_t)(end - pos));
  pthread_rwlock_unlock(&p->lock);
  if (pc != inl)
    free(pc);
  runs_free(&runs);
  return r;
}

/* ------------------------------------------------------------------------ */
/* WRITE (and the zero-writing parts of WRITE_ZEROES)                        */

enum kind {
  K_SKIP,    /* unmapped and left so (zeroing) */
  K_PRIVATE, /* mapped to this volume alone: write in place */
  K_NEW,     /* unmapped: new block, zero what the write leaves */
  K_BREAK,   /* shared: new block, copy what the write leaves */
  K_DONE,    /* new block already complete (zeroed whole): only map it */
};

static bool is_new(enum kind k) { return k == K_NEW || k == K_BREAK || k == K_DONE; }
static bool to_put(enum kind k) { return k == K_PRIVATE || k == K_NEW || k == K_BREAK; }

struct plan {
  enum kind kind;
  uint64_t d;    /* target data block */
  uint64_t old;  /* K_BREAK: the shared block */
  bool whole;    /* the new block already holds its final contents (merged copy) */
};

/* One slow-path write: virtual blocks [sb, se) of a request. */
struct slow {
  struct tp_vol *vol;
  const struct src *s;
  uint64_t off, end; /* the request's virtual bytes */
  uint64_t sb, se, nb;
  bool skip_unmapped;
  struct plan *pl;
  struct runs runs;
  struct tp_druns alloc;
};

/* The request's bytes [cs, ce) of block i, relative to the block. */
static void covered(const struct slow *w, uint64_t i, uint64_t *cs, uint64_t *ce)
{
  uint64_t bs = w->vol->pool->bs, vs = (w->sb + i) * bs;
  *cs = w->off > vs ? w->off - vs : 0;
  *ce = w->end < vs + bs ? w->end - vs : bs;
}

/* Phase 1, under the write lock: what each block needs, and how many new
 * data blocks that takes. */
static int plan_blocks(struct slow *w, uint64_t *need)
{
  struct tp_pool *p = w->vol->pool;
  int r = lookup(p, w->vol->id, w->sb, w->se, &w->runs);
  if (r)
    return r;
  for (uint64_t i = 0; i < w->nb; i++)
    w->pl[i] = (struct plan){ w->skip_unmapped ? K_SKIP : K_NEW, 0, 0, false };
  for (size_t k = 0; k < w->runs.n; k++)
    for (uint64_t j = 0; j < w->runs.v[k].len; j++) {
      struct plan *x = &w->pl[w->runs.v[k].vbegin + j - w->sb];
      x->kind = w->runs.v[k].shared ? K_BREAK : K_PRIVATE;
      x->d = x->old = w->runs.v[k].dbegin + j;
    }
  *need = 0;
  for (uint64_t i = 0; i < w->nb; i++)
    *need += is_new(w->pl[i].kind);
  return 0;
}

/* Phase 2: hand the allocated runs out to the new blocks in order. */
static void hand_out(struct slow *w)
{
  size_t ai = 0;
  uint64_t aoff = 0;
  for (uint64_t i = 0; i < w->nb; i++) {
    if (!is_new(w->pl[i].kind))
      continue;
    w->pl[i].d = w->alloc.v[ai].d + aoff;
    if (++aoff == w->alloc.v[ai].n) {
      ai++;
      aoff = 0;
    }
  }
}

/* Break the sharing of a partly covered block in one copy: read the old
 * block whole, lay the request's bytes (or zeroes) over it in memory, write
 * the new block whole. No extent query: one read and one write, where
 * copying head and tail apart took two of each plus the request's own. */
static int merge_block(struct tp_pool *p, const struct src *s, uint64_t vs, uint64_t cs,
                       uint64_t ce, const struct plan *x, unsigned char **buf)
{
  uint64_t bs = p->bs;
  if (!*buf) {
    void *m;
    if (posix_memalign(&m, 4096, (size_t)bs))
      return -ENOMEM;
    *buf = m;
  }
  int r = ts_pread(p->data, *buf, (size_t)bs, x->old * bs);
  if (r)
    return r;
  if (s->iov)
    ts_iov_to_buf(s->iov, s->iovcnt, (size_t)(vs + cs - s->off), *buf + cs, (size_t)(ce - cs));
  else
    memset(*buf + cs, 0, (size_t)(ce - cs));
  return ts_pwrite(p->data, *buf, (size_t)bs, x->d * bs, 0);
}

/* Phase 3, outside the metadata lock: give each new block what the request
 * leaves of it (zeroes for a fresh block, the old data for a broken share). */
static int fill_blocks(struct slow *w)
{
  struct tp_pool *p = w->vol->pool;
  uint64_t bs = p->bs;
  unsigned char *buf = NULL;
  int r = 0;
  for (uint64_t i = 0; i < w->nb && !r; i++) {
    struct plan *x = &w->pl[i];
    uint64_t cs, ce, nd = x->d * bs;
    covered(w, i, &cs, &ce);
    if (x->kind == K_NEW) {
      if (!w->s->iov && p->zero_new) {
        r = make_zero(p, nd, bs); /* the whole block, covered part included */
        x->kind = K_DONE;
        continue;
      }
      if (p->zero_new && cs)
        r = make_zero(p, nd, cs);
      if (!r && p->zero_new && ce < bs)
        r = make_zero(p, nd + ce, bs - ce);
    } else if (x->kind == K_BREAK && (cs || ce < bs)) {
      atomic_fetch_add(&p->n_copied_blocks, 1);
      /* Where the data layer shares storage (a file on XFS with reflink,
       * btrfs), clone the old block and let phase 4 write only the
       * request's bytes: no data read, no whole-block write. */
      r = p->clone_breaks ? ts__copy_range(p->data, x->old * bs, nd, bs, TS_IO_NOFALLBACK)
                          : -EOPNOTSUPP;
      if (!r) {
        atomic_fetch_add(&p->n_cloned_blocks, 1);
        continue;
      }
      if (r != -EOPNOTSUPP)
        break;
      r = 0;
      if (bs <= COPY_CHUNK) {
        r = merge_block(p, w->s, (w->sb + i) * bs, cs, ce, x, &buf);
        x->whole = !r;
        continue;
      }
      /* Huge blocks: copy around the request, skipping what reads as zero. */
      if (cs)
        r = copy_data(p, x->old * bs, nd, cs);
      if (!r && ce < bs)
        r = copy_data(p, x->old * bs + ce, nd + ce, bs - ce);
    } else if (x->kind == K_BREAK) {
      atomic_fetch_add(&p->n_copied_blocks, 1);
    }
  }
  free(buf);
  return r;
}

/* Phase 4: the covered bytes of the blocks not written whole yet, one data
 * write per run of consecutive data blocks. */
static int put_covered(struct slow *w)
{
  struct tp_pool *p = w->vol->pool;
  uint64_t bs = p->bs;
  int r = 0;
  for (uint64_t i = 0; i < w->nb && !r;) {
    if (!to_put(w->pl[i].kind) || w->pl[i].whole) {
      i++;
      continue;
    }
    uint64_t j = i + 1;
    while (j < w->nb && to_put(w->pl[j].kind) && !w->pl[j].whole &&
           w->pl[j].d == w->pl[j - 1].d + 1)
      j++;
    uint64_t vs = (w->sb + i) * bs, ve = (w->sb + j) * bs;
    uint64_t ws = w->off > vs ? w->off : vs, we = w->end < ve ? w->end : ve;
    r = put(p, w->s, ws, w->pl[i].d * bs + (ws - vs), we - ws);
    i = j;
  }
  return r;
}

/* Phase 5, under the write lock: map the new blocks, runs of consecutive
 * virtual and data blocks at a time; a broken share drops its reference to
 * the old block. */
static int map_blocks(struct slow *w)
{
  struct tp_pool *p = w->vol->pool;
  for (uint64_t i = 0; i < w->nb;) {
    if (!is_new(w->pl[i].kind)) {
      i++;
      continue;
    }
    uint64_t j = i + 1;
    while (j < w->nb && is_new(w->pl[j].kind) && w->pl[j].d == w->pl[j - 1].d + 1)
      j++;
    uint64_t done = 0;
    int e = tmd_insert_run(p->md, w->vol->id, w->sb + i, j - i, w->pl[i].d, &done);
    tp_changed(p);
    for (uint64_t x = i; x < i + done; x++)
      if (w->pl[x].kind == K_BREAK)
        tp_note_unref(p, w->pl[x].old);
    if (e) {
      /* Give back the references of every block not mapped. */
      for (uint64_t x = i + done; x < w->nb; x++)
        if (is_new(w->pl[x].kind))
          tmd_data_dec(p->md, w->pl[x].d);
      return tp_data_err(p, e);
    }
    i = j;
  }
  return 0;
}

/* The slow path for blocks [sb, se) that were unmapped or shared: lock the
 * blocks, look again (another request may have got there first), allocate
 * (waiting for space if the pool says so), fill the new blocks and write
 * the request outside the metadata lock, then map them. */
static int write_slow(struct tp_vol *vol, const struct src *s, uint64_t off, uint64_t end,
                      uint64_t sb, uint64_t se, bool skip_unmapped)
{
  struct tp_pool *p = vol->pool;
  struct slow w = { .vol = vol,
                    .s = s,
                    .off = off,
                    .end = end,
                    .sb = sb,
                    .se = se,
                    .nb = se - sb,
                    .skip_unmapped = skip_unmapped };
  w.pl = calloc(w.nb, sizeof *w.pl);
  if (!w.pl)
    return -ENOMEM;
  runs_init(&w.runs);
  struct timespec deadline = { 0, 0 };
  struct tp_cell cell;
  int r;

  for (;;) {
    tp_cell_lock(p, &cell, vol->id, sb, se);
    pthread_rwlock_rdlock(&p->txn);
    pthread_rwlock_wrlock(&p->lock);
    uint64_t need = 0, gen = 0;
    r = plan_blocks(&w, &need);
    if (r)
      goto unlock;
    w.alloc.n = 0;
    r = tp_alloc(p, need, &w.alloc, &gen);
    if (!r)
      break;
    tp_release(p, &w.alloc);
    pthread_rwlock_unlock(&p->lock);
    pthread_rwlock_unlock(&p->txn);
    tp_cell_unlock(p, &cell);
    if (r != -ENOSPC || (r = tp_wait_space(p, gen, &deadline)) != 0)
      goto out;
  }
  hand_out(&w);
  pthread_rwlock_unlock(&p->lock);

  /* Data I/O, with the blocks' cell and txn shared held: nobody else maps
   * these virtual blocks, and the new data blocks belong to us alone. */
  r = fill_blocks(&w);
  if (!r)
    r = put_covered(&w);

  pthread_rwlock_wrlock(&p->lock);
  if (r)
    tp_release(p, &w.alloc);
  else
    r = map_blocks(&w);
unlock:
  pthread_rwlock_unlock(&p->lock);
  pthread_rwlock_unlock(&p->txn);
  tp_cell_unlock(p, &cell);
out:
  tp_fire_events(p);
  tp_druns_free(&w.alloc);
  runs_free(&w.runs);
  free(w.pl);
  return r;
}

/* Write [off, off+len) from `s`. Blocks mapped to this volume alone are
 * written in place under the shared lock; the rest take the slow path. With
 * skip_unmapped (zeroing), unmapped blocks are left alone: they read as
 * zeroes already. */
static int write_range(struct tp_vol *vol, const struct src *s, uint64_t off, uint64_t len,
                       bool skip_unmapped)
{
  struct tp_pool *p = vol->pool;
  uint64_t bs = p->bs, end = off + len, b0 = off / bs, b1 = (end + bs - 1) / bs;
  struct runs runs;
  runs_init(&runs);
  struct tp_druns slow = { 0 }; /* virtual block ranges for the slow path */

  struct piece inl[8], *pc = inl; /* data writes of the private runs */
  size_t npc = 0;

  pthread_rwlock_rdlock(&p->lock);
  int r = lookup_vol(vol, b0, b1, &runs);
  if (!r && s->iov && runs.n > sizeof inl / sizeof inl[0] && !(pc = malloc(runs.n * sizeof *pc)))
    r = -ENOMEM;
  uint64_t next = b0; /* first block not yet classified */
  for (size_t i = 0; i <= runs.n && !r; i++) {
    uint64_t rb = i < runs.n ? runs.v[i].vbegin : b1;
    if (rb > next && !skip_unmapped)
      r = tp_druns_add(&slow, next, rb - next);
    if (i == runs.n || r)
      break;
    const struct tmd_run *run = &runs.v[i];
    if (run->shared) {
      r = tp_druns_add(&slow, run->vbegin, run->len);
    } else {
      uint64_t vs = run->vbegin * bs, ve = (run->vbegin + run->len) * bs;
      uint64_t ws = off > vs ? off : vs, we = end < ve ? end : ve;
      if (s->iov)
        pc[npc++] = (struct piece){ run->dbegin * bs + (ws - vs), ws - s->off, we - ws };
      else
        r = put(p, s, ws, run->dbegin * bs + (ws - vs), we - ws);
    }
    next = run->vbegin + run->len;
  }
  if (!r)
    r = fan_run(p, TS_OP_WRITE, s->iov, s->iovcnt, pc, npc);
  pthread_rwlock_unlock(&p->lock);
  if (pc != inl)
    free(pc);
  for (size_t i = 0; i < slow.n && !r; i++)
    r = write_slow(vol, s, off, end, slow.v[i].d, slow.v[i].d + slow.v[i].n, skip_unmapped);
  tp_druns_free(&slow);
  runs_free(&runs);
  return r;
}

/* ------------------------------------------------------------------------ */
/* PROVISION (and WRITE_ZEROES without MAY_UNMAP)                            */

struct newrun {
  uint64_t v, d, n;
  uint64_t old;  /* shared: first old data block; else UINT64_MAX */
};

struct newruns {
  struct newrun *v;
  size_t n, cap;
};

static int newruns_add(struct newruns *r, struct newrun x)
{
  struct newrun *v = ts__array_grow(r->v, &r->cap, r->n, sizeof *v, NULL);
  if (!v)
    return -ENOMEM;
  r->v = v;
  r->v[r->n++] = x;
  return 0;
}

/* Allocate for virtual [v, v+n) (old: the shared data blocks, or
 * UINT64_MAX), recording the runs; -ENOSPC after a partial allocation. */
static int alloc_for(struct tp_pool *p, uint64_t v, uint64_t n, uint64_t old, struct newruns *nr,
                     uint64_t *gen)
{
  while (n) {
    struct tp_druns a = { 0 };
    int r = tp_alloc(p, n, &a, gen);
    for (size_t i = 0; i < a.n && r != -ENOMEM; i++) {
      int e = newruns_add(nr, (struct newrun){ v, a.v[i].d, a.v[i].n, old });
      if (e) {
        struct tp_druns rest = { a.v + i, a.n - i, 0 };
        tp_release(p, &rest);
        r = e;
        break;
      }
      v += a.v[i].n;
      n -= a.v[i].n;
      if (old != UINT64_MAX)
        old += a.v[i].n;
    }
    tp_druns_free(&a);
    if (r)
      return r;
  }
  return 0;
}

/* Provision below and fill (zero, or copy for broken sharing) the new
 * blocks nr[i0, i1). Space is reserved below first and filled after: a data
 * layer may implement PROVISION by zeroing (a kernel device with provision
 * "emulate" uses BLKZEROOUT), and under crypt zero ciphertext is not zero
 * plaintext, so zeroing must come last. New blocks hold nothing, so the
 * layer below may zero them (TS_IO_MAY_ZERO). No pool lock is taken. */
static int fill_new(struct tp_pool *p, const struct newruns *nr, size_t i0, size_t i1, bool zeroes)
{
  uint64_t bs = p->bs;
  struct tp_druns below = { 0 };
  int r = 0;
  for (size_t i = i0; i < i1 && !r; i++)
    r = tp_druns_add(&below, nr->v[i].d, nr->v[i].n);
  for (size_t i = 0; i < below.n && !r && p->data_provision; i++) {
    r = ts_layer_io(p->data, TS_OP_PROVISION, TS_IO_MAY_ZERO, below.v[i].d * bs, below.v[i].n * bs);
    if (!r)
      atomic_fetch_add(&p->n_passdown_provision, below.v[i].n);
  }
  tp_druns_free(&below);
  for (size_t i = i0; i < i1 && !r; i++) {
    const struct newrun *x = &nr->v[i];
    if (x->old == UINT64_MAX || zeroes) {
      if (p->zero_new || zeroes)
        r = make_zero(p, x->d * bs, x->n * bs);
    } else {
      atomic_fetch_add(&p->n_copied_blocks, x->n);
      r = copy_data(p, x->old * bs, x->d * bs, x->n * bs);
    }
  }
  return r;
}

/* Blocks already mapped hold the volume's data and were reserved below
 * when they were mapped; ask again (a data file may have lost its
 * allocation) only where that keeps the data: a layer that could only zero
 * them answers -EOPNOTSUPP, which leaves them as they are. With `zeroes`,
 * zero them. */
static int fill_private(struct tp_pool *p, const struct tp_druns *priv, bool zeroes)
{
  uint64_t bs = p->bs;
  int r = 0;
  for (size_t i = 0; i < priv->n && !r && p->data_provision; i++) {
    int e = ts_layer_io(p->data, TS_OP_PROVISION, 0, priv->v[i].d * bs, priv->v[i].n * bs);
    if (!e)
      atomic_fetch_add(&p->n_passdown_provision, priv->v[i].n);
    else if (e != -EOPNOTSUPP)
      r = e;
  }
  for (size_t i = 0; i < priv->n && !r && zeroes; i++)
    r = make_zero(p, priv->v[i].d * bs, priv->v[i].n * bs);
  return r;
}

/* The data side of one provision step, run on its own thread while the
 * step's mappings are inserted: the new runs are cut into groups of at most
 * PROVISION_GROUP bytes, and `ready` counts the runs whose group is
 * provisioned and filled, so the inserting thread never maps a block whose
 * space below is not yet reserved. A huge PROVISION then costs about the
 * data layer's own fallocate plus one group's inserts, not their sum. */
struct filler {
  struct tp_pool *p;
  const struct newruns *nr;
  const struct tp_druns *priv;
  bool zeroes;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  size_t ready; /* nr->v[0, ready) may be mapped */
  int err;      /* the first error; the filler stops there */
  bool stop;    /* the inserting side failed: fill no more */
  bool done;
};

/* The end of the group that starts at run i. */
static size_t group_end(const struct newruns *nr, size_t i, uint64_t group)
{
  uint64_t n = 0;
  while (i < nr->n && n < group)
    n += nr->v[i++].n;
  return i;
}

static void *filler_main(void *arg)
{
  struct filler *f = arg;
  uint64_t group = PROVISION_GROUP / f->p->bs ? PROVISION_GROUP / f->p->bs : 1;
  int r = fill_private(f->p, f->priv, f->zeroes);
  for (size_t i = 0; i < f->nr->n && !r;) {
    pthread_mutex_lock(&f->mu);
    bool stop = f->stop;
    pthread_mutex_unlock(&f->mu);
    if (stop)
      break;
    size_t e = group_end(f->nr, i, group);
    r = fill_new(f->p, f->nr, i, e, f->zeroes);
    pthread_mutex_lock(&f->mu);
    if (!r)
      f->ready = e;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
    i = e;
  }
  pthread_mutex_lock(&f->mu);
  f->err = r;
  f->done = true;
  pthread_cond_signal(&f->cv);
  pthread_mutex_unlock(&f->mu);
  return NULL;
}

/* Cut new runs longer than `group` blocks, so that groups have about that
 * size whatever the allocator returned. */
static int split_runs(struct newruns *nr, uint64_t group)
{
  for (size_t i = 0; i < nr->n; i++) {
    if (nr->v[i].n <= group)
      continue;
    struct newrun rest = nr->v[i];
    rest.v += group;
    rest.d += group;
    rest.n -= group;
    if (rest.old != UINT64_MAX)
      rest.old += group;
    nr->v[i].n = group;
    if (newruns_add(nr, rest))
      return -ENOMEM;
    /* Keep virtual order: move the rest right after its head. */
    memmove(&nr->v[i + 2], &nr->v[i + 1], (nr->n - i - 2) * sizeof nr->v[0]);
    nr->v[i + 1] = rest;
  }
  return 0;
}

/* Provision whole blocks [vb, ve): allocate the unmapped ones, break the
 * sharing of shared ones (copying, or with `zeroes` just taking fresh zeroed
 * blocks), and with `zeroes` zero the blocks already mapped to this volume.
 * New blocks read as zeroes before they are mapped (make_zero). Space is
 * reserved below with PROVISION for every block left mapped in the range.
 * On ENOSPC what was done stays done (block status tells). */
static int provision_range(struct tp_vol *vol, uint64_t vb, uint64_t ve, bool zeroes)
{
  struct tp_pool *p = vol->pool;
  uint64_t bs = p->bs, step = PROVISION_STEP / bs ? PROVISION_STEP / bs : 1;
  struct runs runs;
  runs_init(&runs);
  struct newruns nr = { 0 };
  struct tp_druns priv = { 0 };
  struct timespec deadline = { 0, 0 };
  int r = 0;

  for (uint64_t pos = vb; pos < ve && !r;) {
    uint64_t cend = ve - pos < step ? ve : pos + step;
    struct tp_cell cell;
    uint64_t gen = 0;
    nr.n = priv.n = 0;
    tp_cell_lock(p, &cell, vol->id, pos, cend);
    pthread_rwlock_rdlock(&p->txn);
    pthread_rwlock_wrlock(&p->lock);
    r = lookup(p, vol->id, pos, cend, &runs);
    int space = 0;
    uint64_t next = pos;
    for (size_t i = 0; i <= runs.n && !r && !space; i++) {
      uint64_t rb = i < runs.n ? runs.v[i].vbegin : cend;
      if (rb > next)
        space = alloc_for(p, next, rb - next, UINT64_MAX, &nr, &gen);
      if (i == runs.n || space)
        break;
      const struct tmd_run *run = &runs.v[i];
      if (run->shared)
        space = alloc_for(p, run->vbegin, run->len, run->dbegin, &nr, &gen);
      else
        r = tp_druns_add(&priv, run->dbegin, run->len);
      next = run->vbegin + run->len;
    }
    if (space && space != -ENOSPC)
      r = space;
    pthread_rwlock_unlock(&p->lock);

    /* Data I/O outside the metadata lock (see fill_new), on a second
     * thread when the step spans more than one group, so that inserting
     * one group's mappings overlaps the data layer's work on the next. */
    uint64_t group = PROVISION_GROUP / bs ? PROVISION_GROUP / bs : 1;
    if (!r)
      r = split_runs(&nr, group);
    struct filler f = { .p = p, .nr = &nr, .priv = &priv, .zeroes = zeroes };
    pthread_mutex_init(&f.mu, NULL);
    pthread_cond_init(&f.cv, NULL);
    pthread_t th;
    bool threaded =
        !r && group_end(&nr, 0, group) < nr.n && pthread_create(&th, NULL, filler_main, &f) == 0;
    if (!r && !threaded) {
      filler_main(&f);
      r = f.err;
    }

    size_t i = 0;
    while (i < nr.n && !r) {
      size_t e;
      if (threaded) {
        pthread_mutex_lock(&f.mu);
        while (f.ready == i && !f.done)
          pthread_cond_wait(&f.cv, &f.mu);
        e = f.ready;
        if (e == i)
          r = f.err;
        pthread_mutex_unlock(&f.mu);
      } else {
        e = nr.n;
      }
      pthread_rwlock_wrlock(&p->lock);
      for (; i < e && !r; i++) {
        struct newrun *x = &nr.v[i];
        uint64_t done = 0;
        int err = tmd_insert_run(p->md, vol->id, x->v, x->n, x->d, &done);
        tp_changed(p);
        if (x->old != UINT64_MAX)
          for (uint64_t j = 0; j < done; j++)
            tp_note_unref(p, x->old + j);
        if (err) {
          tmd_data_dec_run(p->md, x->d + done, x->n - done);
          r = tp_data_err(p, err);
        }
      }
      /* While the data layer is busy with later groups, this group's
       * metadata goes to the disk; otherwise the commit writes and syncs
       * it all after the request, with nothing left to overlap. After the
       * request's last group no flush is asked: it would only run beside
       * the commit's own, syncing the same blocks. */
      tp_meta_writeback(p, threaded && !r, e < nr.n || cend < ve);
      pthread_rwlock_unlock(&p->lock);
    }
    if (threaded) {
      pthread_mutex_lock(&f.mu);
      f.stop = true;
      pthread_mutex_unlock(&f.mu);
      pthread_join(th, NULL);
      if (!r)
        r = f.err;
    }
    pthread_mutex_destroy(&f.mu);
    pthread_cond_destroy(&f.cv);
    /* After an error, the blocks not mapped go back (a run cut short by a
     * failed insert gave its rest back above). */
    pthread_rwlock_wrlock(&p->lock);
    for (size_t j = i; j < nr.n; j++)
      tmd_data_dec_run(p->md, nr.v[j].d, nr.v[j].n);
    pthread_rwlock_unlock(&p->lock);
    pthread_rwlock_unlock(&p->txn);
    tp_cell_unlock(p, &cell);
    tp_fire_events(p);
    if (!r && space == -ENOSPC) {
      /* Redo the same step: what was provisioned is now mapped. */
      r = tp_wait_space(p, gen, &deadline);
      continue;
    }
    pos = cend;
  }
  free(nr.v);
  tp_druns_free(&priv);
  runs_free(&runs);
  return r;
}

/* ------------------------------------------------------------------------ */
/* DISCARD                                                                   */

static int collect_freed(void *arg, uint64_t d, uint64_t n)
{
  return tp_druns_add(arg, d, n);
}

/* Unmap the whole blocks [vb, ve). Blocks that no volume maps any more are
 * discarded on the data layer (discard_passdown) while a temporary
 * reference keeps them from being allocated again, then freed. */
static int discard_blocks(struct tp_vol *vol, uint64_t vb, uint64_t ve)
{
  struct tp_pool *p = vol->pool;
  if (vb >= ve)
    return 0;
  bool hold = p->passdown && p->data_discard;
  struct tp_druns held = { 0 };
  struct tp_cell cell;
  uint64_t removed = 0;
  tp_cell_lock(p, &cell, vol->id, vb, ve);
  pthread_rwlock_rdlock(&p->txn);
  pthread_rwlock_wrlock(&p->lock);
  /* The blocks may be free (and, allocated in this transaction, reusable)
   * as soon as the lock is let go: no fast-path write may still be on its
   * way to them. */
  tp_drain(p);
  int r = tmd_remove_range(p->md, vol->id, vb, ve, hold ? TMD_REMOVE_HOLD : 0,
                           hold ? collect_freed : NULL, &held, &removed);
  if (removed || held.n) {
    tp_changed(p);
    p->freed = true;
  }
  pthread_rwlock_unlock(&p->lock);
  if (held.n) {
    for (size_t i = 0; i < held.n; i++)
      if (ts_discard(p->data, held.v[i].d * p->bs, held.v[i].n * p->bs) == 0)
        atomic_fetch_add(&p->n_passdown_discard, held.v[i].n);
    pthread_rwlock_wrlock(&p->lock);
    tp_release(p, &held);
    pthread_rwlock_unlock(&p->lock);
  }
  pthread_rwlock_unlock(&p->txn);
  tp_cell_unlock(p, &cell);
  tp_druns_free(&held);
  return tp_data_err(p, r);
}

/* ------------------------------------------------------------------------ */
/* The async fast path                                                       */

/* A request of the async API (LOOP and EVENTFD modes) that needs no change
 * to the metadata -- a READ of blocks that are all mapped to one run of data
 * blocks, or all unmapped; a WRITE into blocks mapped to this volume alone --
 * is translated and started on the data layer's own submit_async (the file
 * layer's io_uring), with no worker thread: the request costs one thread
 * hand-off, the completion, where the worker path costs two. Anything else
 * (allocation, broken sharing, a request across runs, an error) is declined
 * and takes the ordinary path on a worker.
 *
 * The shared lock is not held while the request is in flight (it belongs to
 * the submitting thread, and the completion runs on another); the pool's
 * `fast_inflight` count stands in for it: raised under the shared lock, and
 * drained (tp_drain) under the exclusive lock before a change frees or
 * shares a block, so a fast write never lands in a block handed to someone
 * else. */
struct fast {
  ts_io io; /* the request, at its data offset */
  struct tp_pool *pool;
  ts_io_done_fn done;
  void *arg;
};

static void fast_done(void *arg, int result)
{
  struct fast *f = arg;
  struct tp_pool *p = f->pool;
  ts_io_done_fn done = f->done;
  void *darg = f->arg;
  atomic_fetch_add(f->io.op == TS_OP_READ ? &p->n_fast_reads : &p->n_fast_writes, 1);
  free(f);
  tp_fast_end(p);
  done(darg, result);
}

static int thin_submit_async(ts_layer *l, const ts_io *io, ts_io_done_fn done, void *arg)
{
  struct tp_vol *v = ts_layer_priv(l);
  struct tp_pool *p = v->pool;
  if (io->op != TS_OP_READ && io->op != TS_OP_WRITE)
    return -EAGAIN; /* FLUSH commits: the workers' job */
  /* A data layer that declines writes (the file layer with
   * TS_IO_URING=reads) would have each looked up twice, here and
   * on the worker: after a declined write, only every 64th tries again. */
  if (io->op == TS_OP_WRITE && atomic_load_explicit(&p->fast_write_skip, memory_order_relaxed) &&
      atomic_fetch_add_explicit(&p->fast_write_skip, 1, memory_order_relaxed) % 64 != 0)
    return -EAGAIN;
  uint64_t bs = p->bs, b0 = io->offset / bs, b1 = (io->offset + io->length + bs - 1) / bs;
  struct fast *f = malloc(sizeof *f);
  if (!f)
    return -EAGAIN;
  /* The caller's thread is often an event loop: never wait for the lock.
   * A commit or a mapping change holding it sends the request to a worker. */
  if (pthread_rwlock_tryrdlock(&p->lock) != 0) {
    free(f);
    return -EAGAIN;
  }
  struct runs runs;
  runs_init(&runs);
  runs.max = 2; /* more than one run is not ours anyway */
  int r = lookup_vol(v, b0, b1, &runs);
  const struct tmd_run *run = runs.n == 1 ? &runs.v[0] : NULL;
  bool whole = run && run->vbegin <= b0 && run->vbegin + run->len >= b1;
  if (r == 0 && runs.n == 0 && io->op == TS_OP_READ) {
    /* Unmapped: zeroes, here and now. */
    pthread_rwlock_unlock(&p->lock);
    free(f);
    ts_iov_zero(io->iov, io->iovcnt, 0, (size_t)io->length);
    atomic_fetch_add(&p->n_fast_reads, 1);
    done(arg, 0);
    return 0;
  }
  if (r || !whole || (io->op == TS_OP_WRITE && run->shared)) {
    pthread_rwlock_unlock(&p->lock);
    free(f);
    return -EAGAIN;
  }
  f->io = *io;
  f->io.offset = run->dbegin * bs + (io->offset - run->vbegin * bs);
  f->pool = p;
  f->done = done;
  f->arg = arg;
  atomic_fetch_add(&p->fast_inflight, 1);
  pthread_rwlock_unlock(&p->lock);
  bool write = io->op == TS_OP_WRITE;
  if (ts__submit_async(p->data, &f->io, fast_done, f) == 0) {
    if (write)
      atomic_store_explicit(&p->fast_write_skip, 0, memory_order_relaxed);
    return 0;
  }
  free(f);
  tp_fast_end(p);
  if (write)
    atomic_store_explicit(&p->fast_write_skip, 1, memory_order_relaxed);
  return -EAGAIN;
}

/* ------------------------------------------------------------------------ */
/* The layer                                                                 */

static int thin_open(ts_layer *l, const json_t *params, ts_error *err)
{
  const char *pname = ts_param_string(params, "pool", "");
  ts_layer *pool = ts_layer_child(l, pname);
  struct tp_pool *p = tp_pool_of(pool);
  uint64_t id = ts_param_uint(params, "id", 0);
  uint64_t size = ts_param_size(params, "size", 0);
  if (!p)
    return ts_layer_error(l, err, -EINVAL, "pool", "\"%s\" is a %s layer, not a thin-pool", pname,
                          pool ? ts_dev_type(pool) : "missing");
  if (id > TS_THIN_MAX_ID)
    return ts_layer_error(l, err, -EINVAL, "id", "%llu is out of range (0..%u)",
                          (unsigned long long)id, TS_THIN_MAX_ID);
  uint32_t lbs = ts_dev_limits(p->data)->logical_block_size;
  if (size == 0 || size % lbs)
    return ts_layer_error(l, err, -EINVAL, "size", "must be a non-zero multiple of %u bytes", lbs);
  struct tp_vol *v;
  int r = tp_vol_attach(p, l, (uint32_t)id, size, ts_param_bool(params, "create", false), &v, err);
  if (r)
    return r;
  /* dm-thin does not store sizes, so a "size" edited below the data would
   * silently hide it and a later grow would bring it back stale. */
  uint64_t hi = 0;
  pthread_rwlock_rdlock(&p->lock);
  int h = tmd_highest_mapped(p->md, (uint32_t)id, &hi);
  pthread_rwlock_unlock(&p->lock);
  if (h == 0 && hi >= (size + p->bs - 1) / p->bs) {
    char a[32], b[32];
    ts_format_size(size, a, sizeof a);
    ts_format_size((hi + 1) * p->bs, b, sizeof b);
    const char *cfg = ts_dev_stack(l) && ts_stack_config_path(ts_dev_stack(l))
                          ? ts_stack_config_path(ts_dev_stack(l)) : "CONFIG";
    tp_vol_detach(v);
    return ts_layer_error(l, err, -EINVAL, "size",
                          "%s (%llu bytes) is below the data of volume %u: block %llu is mapped, so"
                          " bytes up to %llu (%s) may hold data; set the size back, or shrink with"
                          " `thinstack thin resize %s %s %s --discard-beyond`, which drops them",
                          a, (unsigned long long)size, (unsigned)id, (unsigned long long)hi,
                          (unsigned long long)((hi + 1) * p->bs), b, cfg, ts_dev_name(l), a);
  }
  mc_init(v);
  ts_layer_set_priv(l, v);
  return 0;
}

/* Growing adds unmapped space: nothing to do in the pool (dm-thin keeps no
 * size), so the volume just answers for more. */
static int thin_grow(ts_layer *l, uint64_t new_size, ts_error *err)
{
  struct tp_vol *v = ts_layer_priv(l);
  (void)err;
  pthread_mutex_lock(&v->pool->vol_mu);
  v->size = new_size;
  pthread_mutex_unlock(&v->pool->vol_mu);
  return 0;
}

static void thin_close(ts_layer *l)
{
  struct tp_vol *v = ts_layer_priv(l);
  if (v)
    tp_vol_detach(v);
}

static int thin_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  struct tp_vol *v = ts_layer_priv(l);
  struct tp_pool *p = v->pool;
  const ts_limits *dl = ts_dev_limits(p->data);
  lim->size = v->size;
  lim->logical_block_size = dl->logical_block_size;
  lim->physical_block_size = dl->physical_block_size;
  lim->io_min = dl->io_min;
  lim->io_opt = (uint32_t)p->bs;
  lim->max_io_bytes = 0;
  lim->max_discard_bytes = UINT64_MAX;
  lim->discard_granularity = (uint32_t)p->bs;
  lim->discard_zeroes = true;               /* unmapped blocks read as zeroes */
  lim->max_write_zeroes_bytes = UINT64_MAX;
  lim->write_zeroes_unmap = true;
  lim->max_provision_bytes = UINT64_MAX;
  lim->provision_granularity = (uint32_t)p->bs;
  lim->fua = false;                         /* FUA = write, then FLUSH (commit) */
  lim->read_only = p->read_only;
  return 0;
}

static int thin_submit(ts_layer *l, const ts_io *io)
{
  struct tp_vol *v = ts_layer_priv(l);
  struct tp_pool *p = v->pool;
  uint64_t bs = p->bs, off = io->offset, end = io->offset + io->length;
  uint64_t fb = (off + bs - 1) / bs, fe = end / bs; /* whole blocks inside */
  struct src zero = { NULL, 0, off };
  int r = 0;
  switch (io->op) {
  case TS_OP_READ:
    return thin_read(v, io);
  case TS_OP_WRITE: {
    struct src s = { io->iov, io->iovcnt, off };
    return write_range(v, &s, off, io->length, false);
  }
  case TS_OP_FLUSH:
    return tp_commit(p);
  case TS_OP_DISCARD:
    /* Whole blocks only; the partial ends keep their data, as in dm-thin. */
    return discard_blocks(v, fb, fe);
  case TS_OP_PROVISION:
    return provision_range(v, off / bs, (end + bs - 1) / bs, false);
  case TS_OP_WRITE_ZEROES: {
    bool unmap = io->flags & TS_IO_MAY_UNMAP;
    if (fb >= fe)
      return write_range(v, &zero, off, io->length, unmap);
    if (off < fb * bs)
      r = write_range(v, &zero, off, fb * bs - off, unmap);
    if (!r)
      r = unmap ? discard_blocks(v, fb, fe) : provision_range(v, fb, fe, true);
    if (!r && fe * bs < end)
      r = write_range(v, &zero, fe * bs, end - fe * bs, unmap);
    return r;
  }
  default:
    return -EOPNOTSUPP;
  }
}

/* Mapped blocks are allocated; whether they read as zeroes (provisioned,
 * never written) is what the data layer says of their data blocks. The walk
 * visits mapped keys only, so an unmapped stretch of any length is one hole;
 * after STATUS_MAX_RUNS runs it stops and reports what it has. */
static int thin_block_status(ts_layer *l, uint64_t off, uint64_t len, ts_extent_list *out)
{
  struct tp_vol *v = ts_layer_priv(l);
  struct tp_pool *p = v->pool;
  uint64_t bs = p->bs, end = off + len;
  struct runs runs;
  runs_init(&runs);
  runs.max = STATUS_MAX_RUNS;
  pthread_rwlock_rdlock(&p->lock);
  int r = lookup(p, v->id, off / bs, end / bs + (end % bs != 0), &runs);
  bool partial = r == RUNS_FULL;
  if (partial)
    r = 0;
  uint64_t pos = off;
  for (size_t i = 0; i < runs.n && !r; i++) {
    uint64_t rs = runs.v[i].vbegin * bs, re = (runs.v[i].vbegin + runs.v[i].len) * bs;
    rs = rs > off ? rs : off;
    re = re < end ? re : end;
    if (rs > pos && (r = ts_extent_list_add(out, pos, rs - pos, TS_EXTENT_HOLE | TS_EXTENT_ZERO)))
      break;
    uint64_t doff = runs.v[i].dbegin * bs + (rs - runs.v[i].vbegin * bs);
    ts_extent_list dl = { 0 };
    if (ts_block_status(p->data, doff, re - rs, &dl) != 0) {
      r = ts_extent_list_add(out, rs, re - rs, 0);
    } else {
      for (size_t k = 0; k < dl.n && !r; k++)
        r = ts_extent_list_add(out, rs + (dl.v[k].offset - doff), dl.v[k].length,
                               (dl.v[k].flags & TS_EXTENT_ZERO) ? TS_EXTENT_ZERO : 0);
    }
    ts_extent_list_free(&dl);
    pos = re;
  }
  /* A stopped walk covers up to its last run; the core asks for the rest. */
  if (!r && pos < end && !(partial && runs.n))
    r = ts_extent_list_add(out, pos, end - pos, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  pthread_rwlock_unlock(&p->lock);
  runs_free(&runs);
  return r;
}

static int thin_status(ts_layer *l, json_t *out)
{
  struct tp_vol *v = ts_layer_priv(l);
  struct tp_pool *p = v->pool;
  struct tmd_dev_info di = { 0 };
  uint64_t hi = 0;
  pthread_rwlock_rdlock(&p->lock);
  int r = tmd_dev_info(p->md, v->id, &di);
  int h = tmd_highest_mapped(p->md, v->id, &hi);
  pthread_rwlock_unlock(&p->lock);
  if (r)
    return r;
  json_object_set_new(out, "pool", json_string(ts_dev_name(p->layer)));
  json_object_set_new(out, "id", json_integer(v->id));
  json_object_set_new(out, "block_size", json_integer((json_int_t)p->bs));
  json_object_set_new(out, "mapped_blocks", json_integer((json_int_t)di.mapped_blocks));
  json_object_set_new(out, "mapped_bytes", json_integer((json_int_t)(di.mapped_blocks * p->bs)));
  json_object_set_new(out, "highest_mapped_block", h == 0 ? json_integer((json_int_t)hi) : json_null());
  json_object_set_new(out, "lookup_walks", json_integer((json_int_t)atomic_load(&v->n_walks)));
  return 0;
}

static char *thin_dm_table(ts_layer *l)
{
  struct tp_vol *v = ts_layer_priv(l);
  char *s = NULL;
  if (asprintf(&s, "0 %llu thin <%s> %u", (unsigned long long)(v->size / 512),
               ts_dev_name(v->pool->layer), v->id) < 0)
    return NULL;
  return s;
}

/* A volume grown since open (ts_dev_grow) dumps with its new size. */
static int thin_config(ts_layer *l, json_t *params)
{
  struct tp_vol *v = ts_layer_priv(l);
  if (!v || ts_param_size(params, "size", 0) == v->size)
    return 0;
  return json_object_set_new(params, "size", json_integer((json_int_t)v->size)) ? -ENOMEM : 0;
}

const ts_layer_type ts__thin_layer_type = {
  TS_LAYER_TYPE_INIT,
  .name = "thin",
  .summary = "a thin volume of a thin-pool: allocate on write, O(1) snapshots, provision",
  .params = thin_params,
  .thread_model = TS_THREAD_PARALLEL,
  .open = thin_open,
  .close = thin_close,
  .limits = thin_limits,
  .submit = thin_submit,
  .block_status = thin_block_status,
  .status = thin_status,
  .dm_table = thin_dm_table,
  .grow = thin_grow,
  .config = thin_config,
  .submit_async = thin_submit_async,
};
