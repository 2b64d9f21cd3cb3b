/* The data path over a file descriptor (see fileio.h): one copy of the
 * loop-file code for the file layer and the kernel layer. */
#include "backends/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define FIO_IOV_STEP 64 /* iovec pieces per system call */

void ts__fio_init(struct ts__fio *f, int fd, bool direct, uint32_t align, bool eof_zeroes)
{
  f->fd = fd;
  f->align = direct ? align : 0;
  f->eof_zeroes = eof_zeroes;
  atomic_init(&f->fiemap, true);
  atomic_init(&f->bounced, 0);
  f->ring = NULL;
  f->ring_writes = false;
  atomic_init(&f->ring_ops, 0);
  atomic_init(&f->ring_ops_sink, 0);
  snprintf(f->ring_state, sizeof f->ring_state, "threads");
  f->clone_align = 0;
  atomic_init(&f->no_clone, false);
  atomic_init(&f->no_cfr, false);
  atomic_init(&f->cloned, 0);
  atomic_init(&f->cfr_copied, 0);
  f->skip_clean_syncs = false;
  /* The first flush after open always syncs: what the file holds when
   * opened (created, truncated) may not be durable yet. */
  atomic_init(&f->changes, 1);
  atomic_init(&f->synced, 0);
  atomic_init(&f->syncs, 0);
  atomic_init(&f->syncs_skipped, 0);
}

void ts__fio_changed(struct ts__fio *f)
{
  atomic_fetch_add_explicit(&f->changes, 1, memory_order_release);
}

static bool iov_aligned(const struct iovec *iov, int iovcnt, uint32_t a)
{
  for (int i = 0; i < iovcnt; i++)
    if (((uintptr_t)iov[i].iov_base | iov[i].iov_len) & (a - 1))
      return false;
  return true;
}

static int rw_all(struct ts__fio *f, bool write, const struct iovec *iov, int iovcnt,
                  uint64_t off, uint64_t len, int rwf)
{
  struct iovec piece[FIO_IOV_STEP];
  uint64_t done = 0;
  while (done < len) {
    int cnt = ts_iov_slice(iov, iovcnt, done, len - done, piece, FIO_IOV_STEP);
    if (cnt < 0)
      cnt = FIO_IOV_STEP; /* the first pieces now, the rest on the next pass */
    ssize_t n = write ? pwritev2(f->fd, piece, cnt, (off_t)(off + done), rwf)
                      : preadv(f->fd, piece, cnt, (off_t)(off + done));
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (n == 0) {
      /* The file shrank under us: it reads as zeroes past its end, as a
       * loop device over it would; a block device cannot. */
      if (write || !f->eof_zeroes)
        return -EIO;
      ts_iov_zero(iov, iovcnt, done, len - done);
      return 0;
    }
    done += (uint64_t)n;
  }
  return 0;
}

/* The calling thread's bounce buffer: kept between requests (a fresh
 * allocation per request page-faults as it fills and unmaps when freed),
 * grown on demand up to TS__FIO_BOUNCE_MAX, freed when the thread exits. */
struct bounce {
  void *p;
  size_t cap;
};

static pthread_key_t bounce_key;
static pthread_once_t bounce_once = PTHREAD_ONCE_INIT;

static void bounce_free(void *arg)
{
  struct bounce *b = arg;
  free(b->p);
  free(b);
}

static void bounce_key_init(void) { (void)pthread_key_create(&bounce_key, bounce_free); }

static void *bounce_get(size_t need)
{
  pthread_once(&bounce_once, bounce_key_init);
  struct bounce *b = pthread_getspecific(bounce_key);
  if (!b) {
    if (!(b = calloc(1, sizeof *b)))
      return NULL;
    if (pthread_setspecific(bounce_key, b)) {
      free(b);
      return NULL;
    }
  }
  if (b->cap < need) {
    /* Grow in large steps so a thread settles on one size quickly. */
    size_t cap = need < (64u << 10) ? (64u << 10) : need;
    if (cap > TS__FIO_BOUNCE_MAX)
      cap = need > TS__FIO_BOUNCE_MAX ? need : TS__FIO_BOUNCE_MAX;
    void *p;
    if (posix_memalign(&p, 65536, cap)) /* any block size up to 64K */
      return NULL;
    free(b->p);
    b->p = p;
    b->cap = cap;
  }
  return b->p;
}

/* Where the request stands: segment `i`, `k` bytes into it. */
struct iov_pos {
  const struct iovec *iov;
  int iovcnt, i;
  size_t k;
};

static void pos_advance(struct iov_pos *p, uint64_t n)
{
  while (n && p->i < p->iovcnt) {
    size_t left = p->iov[p->i].iov_len - p->k;
    if (n < left) {
      p->k += (size_t)n;
      return;
    }
    n -= left;
    p->i++;
    p->k = 0;
  }
  while (p->i < p->iovcnt && p->iov[p->i].iov_len == p->k) {
    p->i++;
    p->k = 0;
  }
}

/* At `p`, the memory is aligned and at least one aligned block follows in
 * the same segment: O_DIRECT can take it as it is. */
static bool pos_direct(const struct iov_pos *p, uint32_t a)
{
  if (p->i >= p->iovcnt)
    return false;
  const struct iovec *v = &p->iov[p->i];
  return !(((uintptr_t)v->iov_base + p->k) & (a - 1)) && v->iov_len - p->k >= a;
}

/* Aligned pieces from `p` on, straight into `out`: each segment's aligned
 * prefix, continuing into the next segment only while the pieces stay
 * whole. Returns the pieces' count; their bytes in *n. */
static int direct_run(const struct iov_pos *p, uint32_t a, uint64_t limit, struct iovec *out,
                      uint64_t *n)
{
  int cnt = 0;
  size_t k = p->k;
  *n = 0;
  for (int i = p->i; i < p->iovcnt && cnt < FIO_IOV_STEP && *n < limit; i++, k = 0) {
    const struct iovec *v = &p->iov[i];
    char *base = (char *)v->iov_base + k;
    size_t len = v->iov_len - k;
    if (!len)
      continue;
    if (((uintptr_t)base & (a - 1)) || len < a)
      break;
    size_t take = len & ~(size_t)(a - 1);
    if (take > limit - *n)
      take = (size_t)(limit - *n);
    out[cnt].iov_base = base;
    out[cnt++].iov_len = take;
    *n += take;
    if (take != len)
      break;
  }
  return cnt;
}

/* Bytes from `p` that must go through the bounce buffer: up to the next
 * place O_DIRECT can take directly that keeps the file offset aligned
 * (a whole number of blocks from `p`), or `limit`. */
static uint64_t bounce_run(const struct iov_pos *p, uint32_t a, uint64_t limit)
{
  uint64_t at = 0; /* bytes from p to the start of segment i (k in the first) */
  size_t k = p->k;
  for (int i = p->i; i < p->iovcnt && at < limit; i++, k = 0) {
    const struct iovec *v = &p->iov[i];
    uintptr_t addr = (uintptr_t)v->iov_base + k;
    size_t len = v->iov_len - k;
    /* The first aligned address in this segment, and whether it falls on a
     * block boundary of the file offset too. */
    size_t skip = (size_t)((a - (addr & (a - 1))) & (a - 1));
    uint64_t q = at + skip;
    if (q > 0 && q % a == 0 && len >= skip + a)
      return q < limit ? q : limit;
    at += len;
  }
  return at < limit ? at : limit;
}

static int fio_rw(struct ts__fio *f, bool write, const struct iovec *iov, int iovcnt, uint64_t off,
                  uint64_t len, int rwf)
{
  uint32_t a = f->align;
  if (!a || iov_aligned(iov, iovcnt, a))
    return rw_all(f, write, iov, iovcnt, off, len, rwf);
  /* O_DIRECT wants memory and lengths aligned: the aligned pieces go to the
   * file as they are, only the rest is copied through the thread's bounce
   * buffer, in steps of at most TS__FIO_BOUNCE_MAX. */
  struct iov_pos p = { iov, iovcnt, 0, 0 };
  uint64_t cap = TS__FIO_BOUNCE_MAX & ~(uint64_t)(a - 1);
  if (cap < a)
    cap = a;
  pos_advance(&p, 0);
  for (uint64_t done = 0; done < len;) {
    uint64_t n;
    int r;
    if (pos_direct(&p, a)) {
      struct iovec piece[FIO_IOV_STEP];
      int cnt = direct_run(&p, a, len - done, piece, &n);
      r = rw_all(f, write, piece, cnt, off + done, n, rwf);
    } else {
      n = bounce_run(&p, a, len - done);
      if (n > cap)
        n = cap;
      if (!n)
        return -EINVAL; /* the iovec holds less than len */
      void *buf = bounce_get((size_t)n);
      if (!buf)
        return -ENOMEM;
      struct iovec v = { buf, (size_t)n };
      if (write)
        ts_iov_to_buf(iov, iovcnt, (size_t)done, buf, (size_t)n);
      r = rw_all(f, write, &v, 1, off + done, n, rwf);
      if (!r && !write)
        ts_iov_from_buf(iov, iovcnt, (size_t)done, buf, (size_t)n);
      atomic_fetch_add_explicit(&f->bounced, n, memory_order_relaxed);
    }
    if (r)
      return r;
    done += n;
    pos_advance(&p, n);
  }
  return 0;
}

int ts__fio_rw(struct ts__fio *f, bool write, const struct iovec *iov, int iovcnt, uint64_t off,
               uint64_t len, int rwf)
{
  int r = fio_rw(f, write, iov, iovcnt, off, len, rwf);
  if (write)
    ts__fio_changed(f);
  return r;
}

/* An answer that means "this call does not work on this file", not "this
 * request failed". */
static bool refused(int e)
{
  return e == EOPNOTSUPP || e == ENOTSUP || e == ENOTTY || e == EXDEV || e == EINVAL || e == ENOSYS;
}

static int fio_copy(struct ts__fio *f, uint64_t src, uint64_t dst, uint64_t len, bool clone_only)
{
  uint32_t a = f->clone_align;
  if (a && !(src % a) && !(dst % a) && !(len % a) &&
      !atomic_load_explicit(&f->no_clone, memory_order_relaxed)) {
    struct file_clone_range fcr = { .src_fd = f->fd,
                                    .src_offset = src,
                                    .src_length = len,
                                    .dest_offset = dst };
    int r;
    while ((r = ioctl(f->fd, FICLONERANGE, &fcr)) != 0 && errno == EINTR)
      ;
    if (r == 0) {
      atomic_fetch_add_explicit(&f->cloned, len, memory_order_relaxed);
      return 0;
    }
    if (!refused(errno))
      return -errno;
    atomic_store_explicit(&f->no_clone, true, memory_order_relaxed);
  }
  if (clone_only || atomic_load_explicit(&f->no_cfr, memory_order_relaxed))
    return -EOPNOTSUPP;
  loff_t in = (loff_t)src, out = (loff_t)dst;
  uint64_t done = 0;
  while (done < len) {
    ssize_t n = copy_file_range(f->fd, &in, f->fd, &out, (size_t)(len - done), 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      /* Refused before anything was copied: remember, and let the caller
       * copy the whole range its way. After a partial copy, or at end of
       * file (0), say what failed. */
      if (n < 0 && !done && refused(errno)) {
        atomic_store_explicit(&f->no_cfr, true, memory_order_relaxed);
        return -EOPNOTSUPP;
      }
      return n < 0 ? -errno : -EIO;
    }
    done += (uint64_t)n;
  }
  atomic_fetch_add_explicit(&f->cfr_copied, len, memory_order_relaxed);
  return 0;
}

int ts__fio_copy(struct ts__fio *f, uint64_t src, uint64_t dst, uint64_t len, bool clone_only)
{
  int r = fio_copy(f, src, dst, len, clone_only);
  ts__fio_changed(f);
  return r;
}

const char *ts__fio_copy_state(struct ts__fio *f)
{
  if (f->clone_align && !atomic_load_explicit(&f->no_clone, memory_order_relaxed))
    return "FICLONERANGE";
  if (!atomic_load_explicit(&f->no_cfr, memory_order_relaxed))
    return "copy_file_range";
  return "none";
}

int ts__fio_sync(struct ts__fio *f)
{
  /* Every change counted up to c returned before the fdatasync begins, so
   * that fdatasync covers them; later ones count past c. A failed one
   * leaves `synced` behind, so the next flush tries again. */
  uint64_t c = atomic_load_explicit(&f->changes, memory_order_acquire);
  if (f->skip_clean_syncs && c == atomic_load_explicit(&f->synced, memory_order_acquire)) {
    atomic_fetch_add_explicit(&f->syncs_skipped, 1, memory_order_relaxed);
    return 0;
  }
  atomic_fetch_add_explicit(&f->syncs, 1, memory_order_relaxed);
  while (fdatasync(f->fd) != 0)
    if (errno != EINTR)
      return -errno;
  uint64_t s = atomic_load_explicit(&f->synced, memory_order_relaxed);
  while (s < c && !atomic_compare_exchange_weak_explicit(&f->synced, &s, c, memory_order_release,
                                                         memory_order_relaxed))
    ;
  return 0;
}

int ts__fio_fallocate(struct ts__fio *f, int mode, uint64_t off, uint64_t len)
{
  int r;
  while ((r = fallocate(f->fd, mode, (off_t)off, (off_t)len)) != 0 && errno == EINTR)
    ;
  int e = errno;
  ts__fio_changed(f);
  if (!r)
    return 0;
  /* EOPNOTSUPP for a mode the file system or block device lacks, ENOSYS
   * on kernels without fallocate: unsupported, not failed. */
  if (e == EOPNOTSUPP || e == ENOTSUP || e == ENOSYS)
    return -EOPNOTSUPP;
  return -e;
}

/* What one SEEK_DATA answered during a walk: no data (not even cached
 * pages) in [from, data). Extents are visited in ascending order, so one
 * answer covers every unwritten extent up to `data`: without it each extent
 * asked again, and each SEEK_DATA over unwritten extents scans to the next
 * data or the end of the file, which made a walk quadratic in the size. */
struct seek_hint {
  uint64_t from, data; /* data == UINT64_MAX: none before the end */
  bool valid;
};

static int status_fiemap(struct ts__fio *f, uint64_t off, uint64_t len, ts_extent_list *out,
                         bool exact, struct seek_hint *hint);

/* An unwritten (preallocated) extent reads as zeroes only where no newer
 * data sits in the page cache: file systems such as ext4 keep the extent
 * unwritten until writeback, so FIEMAP alone would call freshly written
 * data zeroes. When SEEK_DATA sees cached pages in the extent (dirty, or
 * merely read), write the range back and map it again: the extent states
 * are then exact. Without cached pages this costs at most one lseek per
 * walk (see struct seek_hint). */
static int add_unwritten(struct ts__fio *f, uint64_t s, uint64_t e, ts_extent_list *out,
                         struct seek_hint *hint)
{
  if (!hint->valid || s < hint->from || s >= hint->data) {
    off_t d = lseek(f->fd, (off_t)s, SEEK_DATA);
    if (d < 0 && errno != ENXIO)
      return ts_extent_list_add(out, s, e - s, 0) ? -ENOMEM : 0; /* unknown: data */
    hint->from = s;
    hint->data = d < 0 ? UINT64_MAX : (uint64_t)d;
    hint->valid = true;
  }
  if (hint->data >= e)
    return ts_extent_list_add(out, s, e - s, TS_EXTENT_ZERO) ? -ENOMEM : 0;
  if (sync_file_range(f->fd, (off_t)s, (off_t)(e - s),
                      SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                          SYNC_FILE_RANGE_WAIT_AFTER) != 0)
    return ts_extent_list_add(out, s, e - s, 0) ? -ENOMEM : 0; /* unknown: data */
  /* The second pass may only lengthen the last extent (data after data:
   * ts_extent_list_add merges), so whether it covered anything is told by
   * where the list ends, not by how many extents it holds. */
  size_t before = out->n;
  uint64_t tail = before ? out->v[before - 1].offset + out->v[before - 1].length : 0;
  int r = status_fiemap(f, s, e - s, out, true, NULL);
  if (r)
    return r;
  uint64_t now = out->n ? out->v[out->n - 1].offset + out->v[out->n - 1].length : 0;
  uint64_t got = out->n > before || now != tail ? now : s;
  /* What the second pass left out is unknown: data. */
  return got < e && ts_extent_list_add(out, got, e - got, 0) ? -ENOMEM : 0;
}

/* Allocated extents are data, unwritten ones allocated zeroes (see
 * add_unwritten), gaps holes. `exact`: the range was just written back, so
 * unwritten extents are zeroes. One forward pass: FIEMAP in batches until
 * the range is covered. */
static int status_fiemap(struct ts__fio *f, uint64_t off, uint64_t len, ts_extent_list *out,
                         bool exact, struct seek_hint *hint)
{
  enum { N = 128 };
  struct {
    struct fiemap fm;
    struct fiemap_extent ext[N];
  } req;
  uint64_t end = off + len, pos = off;
  bool last = false;
  while (pos < end && !last) {
    memset(&req.fm, 0, sizeof req.fm);
    req.fm.fm_start = pos;
    req.fm.fm_length = end - pos;
    req.fm.fm_extent_count = N;
    if (ioctl(f->fd, FS_IOC_FIEMAP, &req.fm) != 0) {
      if (pos > off)
        return 0; /* report the prefix: the core asks again */
      return errno == ENOTTY || errno == ENOTSUP ? -EOPNOTSUPP : -errno;
    }
    uint64_t batch_start = pos;
    for (unsigned i = 0; i < req.fm.fm_mapped_extents && pos < end; i++) {
      const struct fiemap_extent *e = &req.ext[i];
      uint64_t es = e->fe_logical, ee = e->fe_logical + e->fe_length;
      last = e->fe_flags & FIEMAP_EXTENT_LAST;
      if (ee <= pos)
        continue;
      if (es > pos) {
        uint64_t gap_end = es < end ? es : end;
        if (ts_extent_list_add(out, pos, gap_end - pos, TS_EXTENT_HOLE | TS_EXTENT_ZERO))
          return -ENOMEM;
        pos = gap_end;
      }
      if (pos >= end)
        break;
      uint64_t s = es > pos ? es : pos, e2 = ee < end ? ee : end;
      int r;
      if (!(e->fe_flags & FIEMAP_EXTENT_UNWRITTEN))
        r = ts_extent_list_add(out, s, e2 - s, 0) ? -ENOMEM : 0;
      else if (exact || !hint)
        r = ts_extent_list_add(out, s, e2 - s, TS_EXTENT_ZERO) ? -ENOMEM : 0;
      else
        r = add_unwritten(f, s, e2, out, hint);
      if (r)
        return r;
      pos = e2;
      if (last)
        break;
    }
    /* Fewer extents than asked for: nothing more is mapped in the range. */
    if (req.fm.fm_mapped_extents < N)
      last = true;
    if (!last && pos == batch_start)
      break; /* no progress (a full batch ending before pos): let the core ask again */
  }
  /* Past the last extent it is all hole. */
  if (pos < end && (last || pos == off))
    if (ts_extent_list_add(out, pos, end - pos, TS_EXTENT_HOLE | TS_EXTENT_ZERO))
      return -ENOMEM;
  return 0;
}

static int status_seek(struct ts__fio *f, uint64_t off, uint64_t len, ts_extent_list *out)
{
  uint64_t end = off + len;
  off_t data = lseek(f->fd, (off_t)off, SEEK_DATA);
  if (data < 0 && errno == ENXIO)
    return ts_extent_list_add(out, off, len, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  if (data < 0)
    return ts_extent_list_add(out, off, len, 0); /* no sparse information: all data */
  if ((uint64_t)data > off) {
    uint64_t e = (uint64_t)data < end ? (uint64_t)data : end;
    return ts_extent_list_add(out, off, e - off, TS_EXTENT_HOLE | TS_EXTENT_ZERO);
  }
  off_t hole = lseek(f->fd, (off_t)off, SEEK_HOLE);
  uint64_t e = hole < 0 || (uint64_t)hole > end || (uint64_t)hole <= off ? end : (uint64_t)hole;
  return ts_extent_list_add(out, off, e - off, 0);
}

int ts__fio_block_status(struct ts__fio *f, uint64_t off, uint64_t len, ts_extent_list *out)
{
  if (atomic_load(&f->fiemap)) {
    size_t before = out->n;
    struct seek_hint hint = { 0, 0, false };
    int r = status_fiemap(f, off, len, out, false, &hint);
    if (r == 0 && out->n > before)
      return 0;
    if (r == -ENOMEM)
      return r;
    /* No FIEMAP here (tmpfs, some FUSE file systems): do not ask again. */
    if (r == -EOPNOTSUPP)
      atomic_store(&f->fiemap, false);
    out->n = before;
  }
  return status_seek(f, off, len, out);
}

void ts__fio_file_limits(ts_limits *lim, uint64_t size, uint32_t lbs, uint32_t alloc_unit)
{
  uint32_t u = alloc_unit > lbs ? alloc_unit : lbs;
  lim->size = size;
  lim->logical_block_size = lbs;
  lim->physical_block_size = u;
  lim->io_min = lbs;
  lim->io_opt = u;
  lim->max_io_bytes = 0;
  lim->max_discard_bytes = UINT64_MAX;
  lim->discard_granularity = u;
  lim->discard_zeroes = true; /* a punched hole reads as zeroes */
  lim->max_write_zeroes_bytes = UINT64_MAX;
  lim->write_zeroes_unmap = true;
  lim->max_provision_bytes = UINT64_MAX;
  lim->provision_granularity = u;
  lim->fua = true;
}

/* The async path: io_uring, in one of two ways.
 *
 * A request started by an async context in LOOP or EVENTFD mode (the core
 * lends its sink while the request starts, see ts__aio_sink in
 * core/internal.h) goes to a ring of that context's: created at its first
 * request, shared by every file the context reaches, watched by the
 * context's loop through the ring's own fd (LOOP mode, the sink's `watch`)
 * or signalling the context's eventfd (io_uring_register_eventfd), and with
 * no thread of its own. The context reaps it on its own thread, so a
 * completion reaches the callback with no thread hand-off, as with a thread
 * calling pread.
 *
 * Any other request (no context lends a sink: a layer's own thread, a sink
 * whose ring the kernel refused) goes to the file's ring, filled under a
 * lock by whatever threads submit and reaped by a thread of its own, started
 * at the first such request. */
#ifdef TS_HAVE_LIBURING
#include "core/internal.h"

#include <liburing.h>
#include <sched.h>
#include <time.h>

#define RING_ENTRIES 256

struct ts__fio_ring {
  struct io_uring ring;
  pthread_mutex_t sq_lock;    /* the submission queue has one producer at a time */
  pthread_mutex_t start_lock; /* the reaper's start */
  _Atomic bool reaper_on;
  bool reaper_failed;
  pthread_t reaper;
};

/* A context's ring. In flight are at most RING_ENTRIES requests, half the
 * completion queue, so completions never overflow it and a submit never
 * answers EBUSY, which only reaping (this context's thread) would clear. */
struct sink_ring {
  struct ts__aio_source src;
  struct io_uring ring;
  pthread_mutex_t sq_lock;
  pthread_mutex_t cq_lock;   /* one reaper at a time */
  _Atomic uint32_t inflight; /* started, not reaped */
  struct sink_ring *live_next;
};

/* Every context ring, for submitters that exit (below). */
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sink_ring *live_rings;

static int sink_reap_locked(struct sink_ring *S, bool wait);

/* The kernel cancels a thread's io_uring requests when the thread exits
 * (-ECANCELED), and any thread may submit (EVENTFD mode allows it). So each
 * submitting thread counts its requests in flight, and a destructor of its
 * thread-local data holds its exit until they have completed. */
struct submitter {
  pthread_mutex_t m;
  pthread_cond_t c;
  unsigned inflight;
};

static pthread_key_t submitter_key;
static pthread_once_t submitter_once = PTHREAD_ONCE_INIT;

/* Requests on a context's ring complete only when reaped, and the thread
 * that reaps them may be waiting for this one to exit (EVENTFD mode: submit
 * on threads, join them, then poll): reap what it can meanwhile. The
 * callbacks still run on the context's thread; this only queues them. */
static void reap_live_rings(void)
{
  pthread_mutex_lock(&live_lock);
  for (struct sink_ring *S = live_rings; S; S = S->live_next) {
    if (pthread_mutex_trylock(&S->cq_lock) == 0) {
      sink_reap_locked(S, false);
      pthread_mutex_unlock(&S->cq_lock);
    }
  }
  pthread_mutex_unlock(&live_lock);
}

static void submitter_exit(void *arg)
{
  struct submitter *t = arg;
  pthread_mutex_lock(&t->m);
  while (t->inflight) {
    pthread_mutex_unlock(&t->m);
    reap_live_rings();
    pthread_mutex_lock(&t->m);
    if (!t->inflight)
      break;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 1000000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&t->c, &t->m, &ts);
  }
  pthread_mutex_unlock(&t->m);
  pthread_cond_destroy(&t->c);
  pthread_mutex_destroy(&t->m);
  free(t);
}

static void submitter_key_init(void) { (void)pthread_key_create(&submitter_key, submitter_exit); }

static struct submitter *submitter_get(void)
{
  (void)pthread_once(&submitter_once, submitter_key_init);
  struct submitter *t = pthread_getspecific(submitter_key);
  if (t)
    return t;
  if (!(t = calloc(1, sizeof *t)))
    return NULL;
  pthread_mutex_init(&t->m, NULL);
  pthread_cond_init(&t->c, NULL);
  if (pthread_setspecific(submitter_key, t) != 0) {
    pthread_cond_destroy(&t->c);
    pthread_mutex_destroy(&t->m);
    free(t);
    return NULL;
  }
  return t;
}

/* Under the lock, so that the exiting thread cannot free `t` between the
 * count and the signal. */
static void submitter_put(struct submitter *t)
{
  pthread_mutex_lock(&t->m);
  if (--t->inflight == 0)
    pthread_cond_signal(&t->c);
  pthread_mutex_unlock(&t->m);
}

struct ring_req {
  struct ts__fio *f;
  struct submitter *owner;
  const ts_io *io;
  ts_io_done_fn done;
  void *arg;
  /* Published just before the SQE is submitted, after the last read of
   * the request, and read by the reaper first: the kernel's ordering is
   * invisible to ThreadSanitizer, this is not. */
  _Atomic bool armed;
};

/* A transfer the ring cut short (EOF, a signal) or refused with EAGAIN:
 * the rest, synchronously, on the reaping thread. */
static int finish_rw(struct ts__fio *f, const ts_io *io, uint64_t done_bytes)
{
  ts_iov_buf b;
  int r = ts_iov_buf_init(&b, io->iovcnt);
  if (!r) {
    int cnt = ts_iov_buf_slice(&b, io->iov, io->iovcnt, done_bytes, io->length - done_bytes);
    r = cnt < 0 ? cnt
                : ts__fio_rw(f, io->op == TS_OP_WRITE, b.v, cnt, io->offset + done_bytes,
                             io->length - done_bytes, (io->flags & TS_IO_FUA) ? RWF_DSYNC : 0);
  }
  ts_iov_buf_free(&b);
  return r;
}

static void ring_complete(struct ring_req *q, int res, bool on_sink)
{
  (void)atomic_load_explicit(&q->armed, memory_order_acquire);
  struct ts__fio *f = q->f;
  const ts_io *io = q->io;
  int r;
  if (io->op == TS_OP_FLUSH) {
    r = res == -EINTR || res == -EAGAIN ? ts__fio_sync(f) : res;
  } else if (res < 0) {
    r = res == -EINTR || res == -EAGAIN ? finish_rw(f, io, 0) : res;
  } else if ((uint64_t)res < io->length) {
    r = finish_rw(f, io, (uint64_t)res);
  } else {
    r = 0;
  }
  if (io->op == TS_OP_WRITE)
    ts__fio_changed(f); /* before the caller learns it is done */
  atomic_fetch_add_explicit(&f->ring_ops, 1, memory_order_relaxed);
  if (on_sink)
    atomic_fetch_add_explicit(&f->ring_ops_sink, 1, memory_order_relaxed);
  ts_io_done_fn done = q->done;
  void *arg = q->arg;
  struct submitter *owner = q->owner;
  free(q);
  submitter_put(owner);
  done(arg, r);
}

static void *reaper_main(void *arg)
{
  struct ts__fio_ring *R = arg;
  pthread_setname_np(pthread_self(), "ts-ring-reaper");
  for (;;) {
    struct io_uring_cqe *cqe;
    int r = io_uring_wait_cqe(&R->ring, &cqe);
    if (r == -EINTR || r == -EAGAIN)
      continue;
    if (r < 0)
      break; /* cannot happen on a live ring; stop rather than spin */
    struct ring_req *q = io_uring_cqe_get_data(cqe);
    int res = cqe->res;
    io_uring_cqe_seen(&R->ring, cqe);
    if (!q)
      break; /* the stop marker */
    ring_complete(q, res, false);
  }
  return NULL;
}

static bool reaper_start(struct ts__fio_ring *R)
{
  if (atomic_load_explicit(&R->reaper_on, memory_order_acquire))
    return true;
  pthread_mutex_lock(&R->start_lock);
  if (!atomic_load_explicit(&R->reaper_on, memory_order_relaxed) && !R->reaper_failed) {
    if (pthread_create(&R->reaper, NULL, reaper_main, R) == 0)
      atomic_store_explicit(&R->reaper_on, true, memory_order_release);
    else
      R->reaper_failed = true;
  }
  bool on = atomic_load_explicit(&R->reaper_on, memory_order_relaxed);
  pthread_mutex_unlock(&R->start_lock);
  return on;
}

/* Submit what is queued. The file's ring: a busy ring (completions not yet
 * reaped) clears as the reaper runs. A context's ring is never busy (see
 * struct sink_ring). On any other failure the SQE stays queued and goes with
 * the next submission. Called with the ring's sq_lock held. */
static void ring_push(struct io_uring *ring, bool reaper)
{
  int n;
  while ((n = io_uring_submit(ring)) == -EINTR || (reaper && (n == -EAGAIN || n == -EBUSY)))
    sched_yield();
}

/* Reap what has completed (with `wait`, wait for one first if none has and
 * some are in flight); cq_lock held. The reaped count drops after each
 * completion has run, so a waiter that sees requests in flight always has
 * a completion to wait for. */
static int sink_reap_locked(struct sink_ring *S, bool wait)
{
  int n = 0;
  if (wait) {
    /* An SQE a failed submit left queued must go before waiting for it. */
    pthread_mutex_lock(&S->sq_lock);
    if (io_uring_sq_ready(&S->ring))
      ring_push(&S->ring, false);
    pthread_mutex_unlock(&S->sq_lock);
  }
  for (;;) {
    struct io_uring_cqe *cqe;
    int r = io_uring_peek_cqe(&S->ring, &cqe);
    if (r != 0) {
      if (!wait || n || atomic_load(&S->inflight) == 0)
        break;
      r = io_uring_wait_cqe(&S->ring, &cqe);
      if (r == -EINTR || r == -EAGAIN)
        continue;
      if (r < 0)
        break;
    }
    struct ring_req *q = io_uring_cqe_get_data(cqe);
    int res = cqe->res;
    io_uring_cqe_seen(&S->ring, cqe);
    ring_complete(q, res, true);
    atomic_fetch_sub(&S->inflight, 1);
    n++;
  }
  return n;
}

static int sink_reap(struct ts__aio_source *s, bool wait)
{
  struct sink_ring *S = (struct sink_ring *)s;
  pthread_mutex_lock(&S->cq_lock);
  int n = sink_reap_locked(S, wait);
  pthread_mutex_unlock(&S->cq_lock);
  return n;
}

static uint32_t sink_inflight(struct ts__aio_source *s)
{
  return atomic_load(&((struct sink_ring *)s)->inflight);
}

static void sink_destroy(struct ts__aio_source *s)
{
  struct sink_ring *S = (struct sink_ring *)s;
  pthread_mutex_lock(&live_lock);
  for (struct sink_ring **pp = &live_rings; *pp; pp = &(*pp)->live_next)
    if (*pp == S) {
      *pp = S->live_next;
      break;
    }
  pthread_mutex_unlock(&live_lock);
  io_uring_queue_exit(&S->ring);
  pthread_mutex_destroy(&S->cq_lock);
  pthread_mutex_destroy(&S->sq_lock);
  free(S);
}

/* Setup flags the context's ring asks for, dropped when the kernel refuses
 * them (EINVAL before 5.19). COOP_TASKRUN: a completion does not interrupt
 * the context's thread with an IPI while it runs; its task work runs at its
 * next entry to the kernel, which on a loop is never far off (the next
 * submit or epoll_wait), and a thread asleep is still woken. TASKRUN_FLAG
 * makes liburing's peek enter the kernel when such work is pending, so a
 * reap never misses a completion that waits on it. */
static _Atomic unsigned sink_ring_flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;

static int sink_ring_init(struct io_uring *ring)
{
  unsigned flags = atomic_load_explicit(&sink_ring_flags, memory_order_relaxed);
  int r = io_uring_queue_init(RING_ENTRIES, ring, flags);
  if (r == -EINVAL && flags) {
    atomic_store_explicit(&sink_ring_flags, 0, memory_order_relaxed);
    r = io_uring_queue_init(RING_ENTRIES, ring, 0);
  }
  return r;
}

/* The ring of the context lending `sink`, made at its first request; NULL
 * when the kernel refuses one (the file's ring serves it then). */
static struct sink_ring *sink_ring_get(struct ts__aio_sink *sink)
{
  for (struct ts__aio_source *s = atomic_load_explicit(&sink->sources, memory_order_acquire); s;
       s = s->next)
    if (s->reap == sink_reap)
      return (struct sink_ring *)s;
  if (atomic_load_explicit(&sink->refused, memory_order_relaxed))
    return NULL;
  pthread_mutex_lock(&sink->lock);
  struct sink_ring *S = NULL;
  for (struct ts__aio_source *s = atomic_load_explicit(&sink->sources, memory_order_relaxed); s;
       s = s->next)
    if (s->reap == sink_reap)
      S = (struct sink_ring *)s;
  if (!S && !atomic_load_explicit(&sink->refused, memory_order_relaxed)) {
    S = calloc(1, sizeof *S);
    if (S && sink_ring_init(&S->ring) < 0) {
      free(S);
      S = NULL;
    } else if (S) {
      /* The ring's own fd polls readable while the CQ holds entries: a
       * context that watches it is spared the eventfd's signal and read. */
      S->src.fd = -1;
      if (sink->watch && sink->watch(sink, S->ring.ring_fd) == 0)
        S->src.fd = S->ring.ring_fd;
      else if (io_uring_register_eventfd(&S->ring, sink->efd) < 0) {
        io_uring_queue_exit(&S->ring);
        free(S);
        S = NULL;
      }
    }
    if (S) {
      pthread_mutex_init(&S->sq_lock, NULL);
      pthread_mutex_init(&S->cq_lock, NULL);
      S->src.reap = sink_reap;
      S->src.inflight = sink_inflight;
      S->src.destroy = sink_destroy;
      pthread_mutex_lock(&live_lock);
      S->live_next = live_rings;
      live_rings = S;
      pthread_mutex_unlock(&live_lock);
      ts__aio_sink_attach(sink, &S->src);
    } else {
      atomic_store_explicit(&sink->refused, true, memory_order_relaxed);
    }
  }
  pthread_mutex_unlock(&sink->lock);
  return S;
}

void ts__fio_ring_start(struct ts__fio *f)
{
  f->ring = NULL;
  f->ring_writes = false;
  atomic_init(&f->ring_ops, 0);
  atomic_init(&f->ring_ops_sink, 0);
  /* Every op the ring takes goes there by default. Writes used to stay on
   * the workers (a write into an unwritten extent is punted to the kernel's
   * io-wq), but on a context's ring they won: bench io --mode loop, 4K
   * random writes into written blocks, 3 interleaved runs, load 1-5: at
   * depth 1 0.61-0.78x of pwrite on the ring against 0.41-0.45x on the
   * workers, at depth 32 0.99-1.29x against 0.64-0.71x. TS_IO_URING=reads
   * keeps writes on the workers, TS_IO_URING=0 takes no ring at all. */
  const char *env = getenv("TS_IO_URING");
  if (env && strcmp(env, "0") == 0) {
    snprintf(f->ring_state, sizeof f->ring_state, "threads (TS_IO_URING=0)");
    return;
  }
  f->ring_writes = !(env && strcmp(env, "reads") == 0);
  struct ts__fio_ring *R = calloc(1, sizeof *R);
  if (!R) {
    snprintf(f->ring_state, sizeof f->ring_state, "threads (no memory for a ring)");
    return;
  }
  int r = io_uring_queue_init(RING_ENTRIES, &R->ring, 0);
  if (r < 0) {
    /* EPERM: kernel.io_uring_disabled; ENOSYS: a kernel without io_uring. */
    snprintf(f->ring_state, sizeof f->ring_state, "threads (io_uring_setup: %s)", strerror(-r));
    free(R);
    return;
  }
  pthread_mutex_init(&R->sq_lock, NULL);
  pthread_mutex_init(&R->start_lock, NULL);
  snprintf(f->ring_state, sizeof f->ring_state, "%s",
           f->ring_writes ? "io_uring"
                          : "io_uring for reads, threads for writes (TS_IO_URING=reads)");
  f->ring = R;
}

void ts__fio_ring_stop(struct ts__fio *f)
{
  struct ts__fio_ring *R = f->ring;
  if (!R)
    return;
  if (atomic_load(&R->reaper_on)) {
    pthread_mutex_lock(&R->sq_lock);
    struct io_uring_sqe *sqe;
    while (!(sqe = io_uring_get_sqe(&R->ring))) {
      ring_push(&R->ring, true);
      sched_yield();
    }
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data(sqe, NULL);
    ring_push(&R->ring, true);
    pthread_mutex_unlock(&R->sq_lock);
    pthread_join(R->reaper, NULL);
  }
  pthread_mutex_destroy(&R->start_lock);
  pthread_mutex_destroy(&R->sq_lock);
  io_uring_queue_exit(&R->ring);
  free(R);
  f->ring = NULL;
}

int ts__fio_submit_async(struct ts__fio *f, const ts_io *io, ts_io_done_fn done, void *arg)
{
  struct ts__fio_ring *R = f->ring;
  if (!R)
    return -EAGAIN;
  bool rw = io->op == TS_OP_READ || io->op == TS_OP_WRITE;
  if (!rw && io->op != TS_OP_FLUSH)
    return -EAGAIN;
  if (rw && (io->iovcnt > IOV_MAX || (f->align && !iov_aligned(io->iov, io->iovcnt, f->align))))
    return -EAGAIN;
  struct ts__aio_sink *sink = ts__aio_sink_current;
  struct sink_ring *S = sink ? sink_ring_get(sink) : NULL;
  if (io->op != TS_OP_READ && !f->ring_writes)
    return -EAGAIN;
  if (S) {
    if (atomic_fetch_add(&S->inflight, 1) >= RING_ENTRIES) {
      atomic_fetch_sub(&S->inflight, 1);
      return -EAGAIN;
    }
  } else if (!reaper_start(R)) {
    return -EAGAIN;
  }
  struct submitter *owner = submitter_get();
  struct ring_req *q = owner ? malloc(sizeof *q) : NULL;
  if (!q) {
    if (S)
      atomic_fetch_sub(&S->inflight, 1);
    return -EAGAIN;
  }
  pthread_mutex_lock(&owner->m);
  owner->inflight++;
  pthread_mutex_unlock(&owner->m);
  q->owner = owner;
  q->f = f;
  q->io = io;
  q->done = done;
  q->arg = arg;
  struct io_uring *ring = S ? &S->ring : &R->ring;
  pthread_mutex_t *sq_lock = S ? &S->sq_lock : &R->sq_lock;
  pthread_mutex_lock(sq_lock);
  struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
  if (!sqe) {
    pthread_mutex_unlock(sq_lock);
    free(q);
    submitter_put(owner);
    if (S)
      atomic_fetch_sub(&S->inflight, 1);
    return -EAGAIN;
  }
  if (io->op == TS_OP_READ)
    io_uring_prep_readv(sqe, f->fd, io->iov, (unsigned)io->iovcnt, io->offset);
  else if (io->op == TS_OP_WRITE)
    io_uring_prep_writev2(sqe, f->fd, io->iov, (unsigned)io->iovcnt, io->offset,
                          (io->flags & TS_IO_FUA) ? RWF_DSYNC : 0);
  else
    io_uring_prep_fsync(sqe, f->fd, IORING_FSYNC_DATASYNC);
  io_uring_sqe_set_data(sqe, q);
  /* After every read of `io`: the caller may reuse it once done has run. */
  atomic_store_explicit(&q->armed, true, memory_order_release);
  ring_push(ring, !S);
  pthread_mutex_unlock(sq_lock);
  return 0;
}

#else /* !TS_HAVE_LIBURING */

void ts__fio_ring_start(struct ts__fio *f)
{
  f->ring = NULL;
  atomic_init(&f->ring_ops, 0);
  atomic_init(&f->ring_ops_sink, 0);
  snprintf(f->ring_state, sizeof f->ring_state, "threads (built without liburing)");
}

void ts__fio_ring_stop(struct ts__fio *f) { (void)f; }

int ts__fio_submit_async(struct ts__fio *f, const ts_io *io, ts_io_done_fn done, void *arg)
{
  (void)f, (void)io, (void)done, (void)arg;
  return -EAGAIN;
}

#endif
