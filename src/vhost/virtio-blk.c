/* The virtio-blk device (VIRTIO 1.2 section 5.2) on the vhost-user back end:
 * features, the config space from the device's limits, and requests from
 * descriptor chains to the asynchronous API.
 *
 * The guest is not trusted: every descriptor is copied before use, every
 * address is translated through the memory table (a chain naming memory
 * outside it fails), a chain's length is bounded (which also ends loops),
 * and each request's status byte is the last byte of its last
 * device-writable descriptor, the only guest memory written besides the
 * data buffers of a read or GET_ID. A chain too broken to name a status
 * byte still gets its used element, so the ring keeps moving. */
#include "vhost/vhost-internal.h"

#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct vb_req {
  ts_aio_req aio;
  struct vu_vq *vq;
  struct vb_req *next_free;
  uint8_t *status;
  uint32_t used_len;
  uint16_t head;
};

static uint64_t bit(unsigned b) { return 1ull << b; }

uint64_t vb_features(const struct vu_dev *d)
{
  uint64_t f = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_INDIRECT_DESC) |
               bit(VIRTIO_RING_F_EVENT_IDX) | bit(VHOST_USER_F_PROTOCOL_FEATURES) |
               bit(VIRTIO_BLK_F_SIZE_MAX) | bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) |
               bit(VIRTIO_BLK_F_TOPOLOGY) | bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_MQ);
  if (d->read_only)
    f |= bit(VIRTIO_BLK_F_RO);
  else {
    /* The core emulates WRITE_ZEROES where a layer lacks it. */
    f |= bit(VIRTIO_BLK_F_WRITE_ZEROES);
    if (d->lim->max_discard_bytes)
      f |= bit(VIRTIO_BLK_F_DISCARD);
  }
  return f;
}

static void put16(uint8_t *p, uint16_t v)
{
  v = htole16(v);
  memcpy(p, &v, 2);
}
static void put32(uint8_t *p, uint32_t v)
{
  v = htole32(v);
  memcpy(p, &v, 4);
}
static void put64(uint8_t *p, uint64_t v)
{
  v = htole64(v);
  memcpy(p, &v, 8);
}

static uint32_t sectors32(uint64_t bytes, uint32_t align_sectors)
{
  uint64_t s = bytes / 512;
  if (s > UINT32_MAX)
    s = UINT32_MAX;
  if (align_sectors > 1)
    s -= s % align_sectors;
  return (uint32_t)s;
}

static unsigned log2u(uint32_t v)
{
  unsigned n = 0;
  while (v > 1) {
    v >>= 1;
    n++;
  }
  return n;
}

size_t vb_config(const struct vu_dev *d, uint8_t *buf, size_t n)
{
  const ts_limits *l = d->lim;
  const size_t len = 60; /* up to and with write_zeroes_may_unmap and its padding */
  if (n < len)
    return 0;
  memset(buf, 0, len);
  uint32_t lbs = l->logical_block_size ? l->logical_block_size : 512;
  uint32_t lsec = lbs / 512;
  put64(buf + 0, l->size / 512); /* capacity */
  put32(buf + 8, VB_SIZE_MAX);   /* size_max */
  put32(buf + 12, VB_SEG_MAX);   /* seg_max */
  put32(buf + 20, lbs);          /* blk_size */
  uint32_t pbs = l->physical_block_size > lbs ? l->physical_block_size : lbs;
  buf[24] = (uint8_t)log2u(pbs / lbs); /* physical_block_exp */
  uint64_t min_io = l->io_min / lbs;
  put16(buf + 26, (uint16_t)(min_io > UINT16_MAX ? 0 : min_io)); /* min_io_size */
  put32(buf + 28, l->io_opt / lbs);                              /* opt_io_size */
  put16(buf + 34, (uint16_t)d->nqueues);                         /* num_queues */
  uint32_t dgran = l->discard_granularity > lbs ? l->discard_granularity / 512 : lsec;
  if (l->max_discard_bytes) {
    put32(buf + 36, sectors32(l->max_discard_bytes, dgran)); /* max_discard_sectors */
    put32(buf + 40, 1);                                      /* max_discard_seg */
    put32(buf + 44, dgran);                                  /* discard_sector_alignment */
  }
  /* Without native zeroing the core writes zero buffers: keep requests to a
   * size one such write handles in reasonable time. */
  uint64_t wz = l->max_write_zeroes_bytes ? l->max_write_zeroes_bytes : 32u << 20;
  put32(buf + 48, sectors32(wz, lsec));    /* max_write_zeroes_sectors */
  put32(buf + 52, 1);                      /* max_write_zeroes_seg */
  buf[56] = l->write_zeroes_unmap ? 1 : 0; /* write_zeroes_may_unmap */
  return len;
}

/* ------------------------------------------------------------------------ */
/* Queues                                                                    */

int vb_queue_start(struct vu_vq *vq)
{
  struct vu_dev *d = vq->dev;
  vq->reqs = calloc(vq->num, sizeof *vq->reqs);
  if (!vq->reqs)
    return -ENOMEM;
  vq->free_reqs = NULL;
  for (uint32_t i = vq->num; i-- > 0;) {
    vq->reqs[i].vq = vq;
    vq->reqs[i].next_free = vq->free_reqs;
    vq->free_reqs = &vq->reqs[i];
  }
  ts_aio_opts o = { .struct_size = sizeof o,
                    .mode = TS_AIO_MODE_WORKER,
                    .workers = d->workers,
                    .depth = vq->num };
  ts_error err = { 0 };
  int r = ts_aio_ctx_create(&o, &vq->aio, &err);
  if (r) {
    fprintf(stderr, "thinstack: vhost-user: queue %u: %s\n", vq->idx, err.msg);
    free(vq->reqs);
    vq->reqs = NULL;
    return r;
  }
  vq->inflight = 0;
  vq->starved = false;
  /* Without the inflight-tracking protocol, chains a previous session left
   * unanswered are taken again from the last used one. */
  vq->used_idx = le16toh(__atomic_load_n(&vq->used[1], __ATOMIC_ACQUIRE));
  vq->last_avail = vq->used_idx;
  vq->signalled_valid = false;
  return 0;
}

void vb_queue_stop(struct vu_vq *vq)
{
  ts_aio_ctx_close(vq->aio);
  vq->aio = NULL;
  free(vq->reqs);
  vq->reqs = vq->free_reqs = NULL;
}

/* Under vq->mu. */
static void finish_locked(struct vb_req *q, uint8_t status)
{
  struct vu_vq *vq = q->vq;
  uint32_t len = q->used_len;
  if (q->status) {
    *q->status = status;
    len++;
  } else {
    len = 0;
  }
  if (status != VIRTIO_BLK_S_OK)
    atomic_fetch_add(&vq->dev->errors, 1);
  vu_push_used(vq, q->head, len);
  q->next_free = vq->free_reqs;
  vq->free_reqs = q;
  vu_maybe_signal(vq);
}

/* A request answered without reaching the stack, on the queue's thread. */
static void finish(struct vb_req *q, uint8_t status)
{
  pthread_mutex_lock(&q->vq->mu);
  finish_locked(q, status);
  pthread_mutex_unlock(&q->vq->mu);
}

/* On the worker that ran the request. */
static void on_done(ts_aio_req *a)
{
  struct vb_req *q = (struct vb_req *)a;
  struct vu_vq *vq = q->vq;
  uint8_t st = a->result == 0             ? VIRTIO_BLK_S_OK
               : a->result == -EOPNOTSUPP ? VIRTIO_BLK_S_UNSUPP
                                          : VIRTIO_BLK_S_IOERR;
  if (st != VIRTIO_BLK_S_OK || a->io.op != TS_OP_READ)
    q->used_len = 0;
  pthread_mutex_lock(&vq->mu);
  finish_locked(q, st);
  if (vq->starved) {
    /* The queue thread stopped taking chains for want of a slot. */
    vq->starved = false;
    uint64_t one = 1;
    if (write(vq->wake_fd, &one, sizeof one) < 0) {
      /* an eventfd write fails only on overflow, and then it is readable */
    }
  }
  if (--vq->inflight == 0)
    pthread_cond_broadcast(&vq->idle);
  pthread_mutex_unlock(&vq->mu);
}

void vb_queue_drain(struct vu_vq *vq)
{
  pthread_mutex_lock(&vq->mu);
  while (vq->inflight)
    pthread_cond_wait(&vq->idle, &vq->mu);
  pthread_mutex_unlock(&vq->mu);
}

/* A parsed chain. */
struct chain {
  int nout, nin;
  uint64_t out_len, in_len;
  uint8_t *status;
  int ndesc;    /* non-empty descriptors */
  bool fault;   /* an address outside guest memory, or too many pieces */
  bool too_big; /* a descriptor above size_max */
};

static void read_desc(const struct vring_desc *table, uint32_t i, struct vring_desc *out)
{
  memcpy(out, &table[i], sizeof *out);
  out->addr = le64toh(out->addr);
  out->len = le32toh(out->len);
  out->flags = le16toh(out->flags);
  out->next = le16toh(out->next);
}

/* Walk the chain at `head`. Returns 0, or -EINVAL for a chain whose shape
 * is broken (bad index, too long or looping, misplaced or nested indirect
 * table, readable after writable); c->status is then what the walk found
 * before it stopped. */
static int parse(struct vu_vq *vq, uint16_t head, struct chain *c)
{
  struct vu_dev *d = vq->dev;
  const struct vring_desc *table = vq->desc;
  uint32_t size = vq->num, i = head, walked = 0;
  bool indirect = false;
  memset(c, 0, sizeof *c);
  for (;;) {
    if (i >= size || ++walked > VB_DESC_MAX)
      return -EINVAL;
    struct vring_desc ds;
    read_desc(table, i, &ds);
    if (ds.flags & VRING_DESC_F_INDIRECT) {
      if (indirect || walked != 1 || (ds.flags & VRING_DESC_F_NEXT) || !ds.len || ds.len % 16 ||
          ds.len / 16 > VB_DESC_MAX || !vu_has_feature(d, VIRTIO_RING_F_INDIRECT_DESC))
        return -EINVAL;
      const struct vring_desc *t = vu_gpa_to_host(d, ds.addr, ds.len);
      if (!t) {
        c->fault = true;
        return -EINVAL;
      }
      indirect = true;
      table = t;
      size = ds.len / 16;
      i = 0;
      walked = 0;
      continue;
    }
    bool w = ds.flags & VRING_DESC_F_WRITE;
    if (!w && c->nin)
      return -EINVAL;
    if (w)
      c->status = NULL;
    if (ds.len > VB_SIZE_MAX)
      c->too_big = true;
    else if (ds.len) {
      c->ndesc++;
      struct iovec *v = w ? vq->in : vq->out;
      int *n = w ? &c->nin : &c->nout;
      int k = vu_gpa_iov(d, ds.addr, ds.len, v, *n, VB_IOV_MAX);
      if (k < 0) {
        c->fault = true;
      } else {
        *n = k;
        if (w) {
          c->in_len += ds.len;
          c->status = (uint8_t *)v[k - 1].iov_base + v[k - 1].iov_len - 1;
        } else {
          c->out_len += ds.len;
        }
      }
    }
    if (!(ds.flags & VRING_DESC_F_NEXT))
      return 0;
    i = ds.next;
  }
}

/* Copy up to `len` bytes from the iovec, skipping `skip` bytes. */
static size_t iov_read(const struct iovec *v, int n, size_t skip, void *buf, size_t len)
{
  size_t done = 0;
  for (int i = 0; i < n && done < len; i++) {
    if (skip >= v[i].iov_len) {
      skip -= v[i].iov_len;
      continue;
    }
    size_t k = v[i].iov_len - skip;
    if (k > len - done)
      k = len - done;
    memcpy((uint8_t *)buf + done, (uint8_t *)v[i].iov_base + skip, k);
    done += k;
    skip = 0;
  }
  return done;
}

/* Drop the first `skip` bytes of the iovec in place; returns the new count. */
static int iov_skip(struct iovec *v, int n, size_t skip)
{
  int i = 0;
  while (i < n && skip >= v[i].iov_len)
    skip -= v[i++].iov_len;
  if (i < n) {
    v[i].iov_base = (uint8_t *)v[i].iov_base + skip;
    v[i].iov_len -= skip;
  }
  memmove(v, v + i, sizeof *v * (size_t)(n - i));
  return n - i;
}

/* Drop the last byte (the status) of a non-empty iovec; returns the count. */
static int iov_drop_last(struct iovec *v, int n)
{
  while (n && v[n - 1].iov_len == 0)
    n--;
  if (n && --v[n - 1].iov_len == 0)
    n--;
  return n;
}

static void handle_chain(struct vu_vq *vq, struct vb_req *q, uint16_t head)
{
  struct vu_dev *d = vq->dev;
  q->head = head;
  q->used_len = 0;
  q->status = NULL;
  atomic_fetch_add(&d->requests, 1);
  struct chain c;
  int r = parse(vq, head, &c);
  q->status = c.status;
  /* seg_max counts data segments; the header and status take two more. */
  if (r || c.fault || !c.status || c.out_len < 16 || c.too_big || c.ndesc > VB_SEG_MAX + 2) {
    finish(q, VIRTIO_BLK_S_IOERR);
    return;
  }
  uint8_t hdr[16];
  iov_read(vq->out, c.nout, 0, hdr, sizeof hdr);
  uint32_t type;
  uint64_t sector;
  memcpy(&type, hdr, 4);
  memcpy(&sector, hdr + 8, 8);
  type = le32toh(type);
  sector = le64toh(sector);
  int nout = iov_skip(vq->out, c.nout, 16);
  uint64_t out_data = c.out_len - 16;
  int nin = iov_drop_last(vq->in, c.nin);
  uint64_t in_data = c.in_len - 1;
  ts_io io = { 0 };
  switch (type) {
  case VIRTIO_BLK_T_IN:
  case VIRTIO_BLK_T_OUT: {
    bool in = type == VIRTIO_BLK_T_IN;
    uint64_t len = in ? in_data : out_data;
    struct iovec *v = in ? vq->in : vq->out;
    int n = in ? nin : nout;
    if (!in && d->read_only) {
      finish(q, VIRTIO_BLK_S_IOERR);
      return;
    }
    if (!len || len % 512 || sector > TS_SIZE_MAX / 512) {
      finish(q, VIRTIO_BLK_S_IOERR);
      return;
    }
    io.op = in ? TS_OP_READ : TS_OP_WRITE;
    /* A guest that did not negotiate FLUSH expects writes through. */
    if (!in && !vu_has_feature(d, VIRTIO_BLK_F_FLUSH))
      io.flags = TS_IO_FUA;
    io.offset = sector * 512;
    io.length = len;
    io.iov = v;
    io.iovcnt = n;
    q->used_len = in ? (uint32_t)len : 0;
    break;
  }
  case VIRTIO_BLK_T_FLUSH:
    io.op = TS_OP_FLUSH;
    break;
  case VIRTIO_BLK_T_GET_ID: {
    char id[VIRTIO_BLK_ID_BYTES] = { 0 };
    memcpy(id, d->serial, sizeof id);
    size_t k = in_data < sizeof id ? (size_t)in_data : sizeof id;
    size_t done = 0;
    for (int i = 0; i < nin && done < k; i++) {
      size_t m = vq->in[i].iov_len < k - done ? vq->in[i].iov_len : k - done;
      memcpy(vq->in[i].iov_base, id + done, m);
      done += m;
    }
    q->used_len = (uint32_t)done;
    finish(q, VIRTIO_BLK_S_OK);
    return;
  }
  case VIRTIO_BLK_T_DISCARD:
  case VIRTIO_BLK_T_WRITE_ZEROES: {
    bool wz = type == VIRTIO_BLK_T_WRITE_ZEROES;
    uint8_t seg[16];
    if (!vu_has_feature(d, wz ? VIRTIO_BLK_F_WRITE_ZEROES : VIRTIO_BLK_F_DISCARD) || d->read_only) {
      finish(q, VIRTIO_BLK_S_UNSUPP);
      return;
    }
    /* One segment: max_discard_seg and max_write_zeroes_seg say so. */
    if (out_data != 16) {
      finish(q, VIRTIO_BLK_S_IOERR);
      return;
    }
    iov_read(vq->out, nout, 0, seg, sizeof seg);
    uint64_t s;
    uint32_t ns, fl;
    memcpy(&s, seg, 8);
    memcpy(&ns, seg + 8, 4);
    memcpy(&fl, seg + 12, 4);
    s = le64toh(s);
    ns = le32toh(ns);
    fl = le32toh(fl);
    if (fl & ~(uint32_t)(wz ? VIRTIO_BLK_WZ_F_UNMAP : 0)) {
      finish(q, VIRTIO_BLK_S_UNSUPP);
      return;
    }
    uint8_t cfg[64];
    vb_config(d, cfg, sizeof cfg);
    uint32_t max;
    memcpy(&max, cfg + (wz ? 48 : 36), 4);
    if (!ns || ns > le32toh(max) || s > TS_SIZE_MAX / 512) {
      finish(q, VIRTIO_BLK_S_IOERR);
      return;
    }
    io.op = wz ? TS_OP_WRITE_ZEROES : TS_OP_DISCARD;
    /* Without the unmap flag a thin volume provisions the range. */
    io.flags = (fl & VIRTIO_BLK_WZ_F_UNMAP) ? TS_IO_MAY_UNMAP : 0;
    io.offset = s * 512;
    io.length = (uint64_t)ns * 512;
    break;
  }
  default:
    finish(q, VIRTIO_BLK_S_UNSUPP);
    return;
  }
  q->aio.io = io;
  q->aio.cb = on_done;
  /* Counted first: the callback may run before submit returns. */
  pthread_mutex_lock(&vq->mu);
  vq->inflight++;
  pthread_mutex_unlock(&vq->mu);
  r = ts_aio_submit(vq->aio, d->dev, &q->aio);
  if (r) {
    q->used_len = 0;
    pthread_mutex_lock(&vq->mu);
    if (--vq->inflight == 0)
      pthread_cond_broadcast(&vq->idle);
    finish_locked(q, r == -EOPNOTSUPP ? VIRTIO_BLK_S_UNSUPP : VIRTIO_BLK_S_IOERR);
    pthread_mutex_unlock(&vq->mu);
  }
}

void vb_queue_process(struct vu_vq *vq)
{
  bool event_idx = vu_has_feature(vq->dev, VIRTIO_RING_F_EVENT_IDX);
  while (!vq->broken) {
    uint16_t avail = le16toh(__atomic_load_n(&vq->avail[1], __ATOMIC_ACQUIRE));
    if (avail == vq->last_avail) {
      if (!event_idx)
        return;
      /* Ask for a kick at the next chain, then look once more: the guest
       * may have added one before it saw the new event index. */
      __atomic_store_n(&vq->used[2 + 4 * vq->num], htole16(vq->last_avail), __ATOMIC_RELAXED);
      atomic_thread_fence(memory_order_seq_cst);
      avail = le16toh(__atomic_load_n(&vq->avail[1], __ATOMIC_ACQUIRE));
      if (avail == vq->last_avail)
        return;
    }
    if ((uint16_t)(avail - vq->last_avail) > vq->num) {
      fprintf(stderr,
              "thinstack: vhost-user: queue %u: the guest's available index jumped"
              " from %u to %u on a ring of %u\n",
              vq->idx, vq->last_avail, avail, vq->num);
      vq->broken = true;
      if (vq->err_fd >= 0) {
        uint64_t one = 1;
        if (write(vq->err_fd, &one, sizeof one) < 0) {
          /* the VMM learns of it from the log then */
        }
      }
      return;
    }
    pthread_mutex_lock(&vq->mu);
    struct vb_req *q = vq->free_reqs;
    if (q)
      vq->free_reqs = q->next_free;
    else
      vq->starved = true; /* the next completion wakes the thread */
    pthread_mutex_unlock(&vq->mu);
    if (!q)
      return;
    uint16_t head =
        le16toh(__atomic_load_n(&vq->avail[2 + vq->last_avail % vq->num], __ATOMIC_RELAXED));
    vq->last_avail++;
    handle_chain(vq, q, head);
  }
}
