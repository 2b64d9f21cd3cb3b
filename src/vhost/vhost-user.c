/* The vhost-user back end: the socket, the message protocol (QEMU's
 * docs/interop/vhost-user.rst), the guest's memory table and the threads
 * that run the split virtqueues.
 *
 * Debian ships no libvhost-user, and DPDK's librte_vhost wants its EAL
 * (hugepages, lcores) set up in the host process, which a library cannot
 * impose on the program that links it; the part of the protocol a block
 * device needs is small, so it is written here.
 *
 * Threads: the server thread accepts one connection at a time and handles
 * its messages; every started queue has a thread that polls the kick
 * eventfd (and a wake-up and a stop eventfd), takes chains and submits them
 * to the queue's own asynchronous context, whose workers complete them:
 * push the used element and interrupt the guest, under the queue's lock.
 * Everything the queue's threads read (memory table, ring addresses,
 * features) changes only while the queue is stopped; the server thread
 * stops a queue (draining what it has in flight) before it changes
 * anything that queue uses. Only the call fd changes under a running
 * queue, under its own lock. */
#include "vhost/vhost-internal.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

enum {
  VHOST_USER_GET_FEATURES = 1,
  VHOST_USER_SET_FEATURES = 2,
  VHOST_USER_SET_OWNER = 3,
  VHOST_USER_RESET_OWNER = 4,
  VHOST_USER_SET_MEM_TABLE = 5,
  VHOST_USER_SET_LOG_BASE = 6,
  VHOST_USER_SET_LOG_FD = 7,
  VHOST_USER_SET_VRING_NUM = 8,
  VHOST_USER_SET_VRING_ADDR = 9,
  VHOST_USER_SET_VRING_BASE = 10,
  VHOST_USER_GET_VRING_BASE = 11,
  VHOST_USER_SET_VRING_KICK = 12,
  VHOST_USER_SET_VRING_CALL = 13,
  VHOST_USER_SET_VRING_ERR = 14,
  VHOST_USER_GET_PROTOCOL_FEATURES = 15,
  VHOST_USER_SET_PROTOCOL_FEATURES = 16,
  VHOST_USER_GET_QUEUE_NUM = 17,
  VHOST_USER_SET_VRING_ENABLE = 18,
  VHOST_USER_GET_CONFIG = 24,
  VHOST_USER_SET_CONFIG = 25,
};

#define VHOST_USER_VERSION 0x1u
#define VHOST_USER_REPLY (1u << 2)
#define VHOST_USER_NEED_REPLY (1u << 3)
#define VHOST_USER_VRING_IDX_MASK 0xffu
#define VHOST_USER_VRING_NOFD (1u << 8)
#define VU_PAYLOAD_MAX 4096
#define VU_MAX_FDS 8

struct vu_hdr {
  uint32_t request, flags, size;
};

struct vu_msg {
  struct vu_hdr h;
  union {
    uint64_t u64;
    struct {
      uint32_t index, num;
    } state;
    struct {
      uint32_t index, flags;
      uint64_t desc, used, avail, log;
    } addr;
    struct {
      uint32_t nregions, padding;
      struct {
        uint64_t gpa, size, uva, mmap_offset;
      } r[VU_MAX_REGIONS];
    } mem;
    struct {
      uint32_t offset, size, flags;
      uint8_t data[256];
    } cfg;
    uint8_t raw[VU_PAYLOAD_MAX];
  } p;
  int fds[VU_MAX_FDS];
  int nfds;
};

struct ts_vhost_blk {
  struct vu_dev d;
  char *path;
  dev_t sock_dev;
  ino_t sock_ino;
  int listen_fd, stop_fd;
  pthread_mutex_t conn_mu; /* conn_fd: stop shuts it down, the server closes it */
  int conn_fd;
  atomic_bool stopping;
  atomic_uint_least64_t sessions;
  pthread_t thread;
};

/* ------------------------------------------------------------------------ */
/* Memory                                                                    */

static void *region_host(struct vu_region *r, uint64_t off) { return r->host + off; }

void *vu_gpa_to_host(struct vu_dev *d, uint64_t gpa, uint64_t len)
{
  for (int i = 0; i < d->nregions; i++) {
    struct vu_region *r = &d->regions[i];
    if (gpa >= r->gpa && gpa - r->gpa < r->size && len <= r->size - (gpa - r->gpa))
      return region_host(r, gpa - r->gpa);
  }
  return NULL;
}

int vu_gpa_iov(struct vu_dev *d, uint64_t gpa, uint32_t len, struct iovec *iov, int n, int max)
{
  while (len) {
    struct vu_region *r = NULL;
    for (int i = 0; i < d->nregions && !r; i++)
      if (gpa >= d->regions[i].gpa && gpa - d->regions[i].gpa < d->regions[i].size)
        r = &d->regions[i];
    if (!r)
      return -EFAULT;
    if (n >= max)
      return -E2BIG;
    uint64_t room = r->size - (gpa - r->gpa);
    uint32_t take = room < len ? (uint32_t)room : len;
    iov[n].iov_base = region_host(r, gpa - r->gpa);
    iov[n].iov_len = take;
    n++;
    gpa += take;
    len -= take;
  }
  return n;
}

/* Ring addresses are the VMM's own virtual addresses. */
static void *uva_to_host(struct vu_dev *d, uint64_t uva, uint64_t len)
{
  for (int i = 0; i < d->nregions; i++) {
    struct vu_region *r = &d->regions[i];
    if (uva >= r->uva && uva - r->uva < r->size && len <= r->size - (uva - r->uva))
      return region_host(r, uva - r->uva);
  }
  return NULL;
}

static void unmap_all(struct vu_dev *d)
{
  for (int i = 0; i < d->nregions; i++)
    munmap(d->regions[i].map, d->regions[i].map_len);
  d->nregions = 0;
}

/* ------------------------------------------------------------------------ */
/* Rings                                                                     */

bool vu_has_feature(const struct vu_dev *d, unsigned bit) { return (d->features >> bit) & 1; }

void vu_push_used(struct vu_vq *vq, uint16_t head, uint32_t len)
{
  struct vring_used_elem e = { htole32(head), htole32(len) };
  memcpy((uint8_t *)vq->used + 4 + (size_t)(vq->used_idx % vq->num) * 8, &e, sizeof e);
  vq->used_idx++;
  /* The element before the index that publishes it. */
  __atomic_store_n(&vq->used[1], htole16(vq->used_idx), __ATOMIC_RELEASE);
}

static void signal_call(struct vu_vq *vq)
{
  pthread_mutex_lock(&vq->call_mu);
  if (vq->call_fd >= 0) {
    uint64_t one = 1;
    if (write(vq->call_fd, &one, sizeof one) < 0) {
      /* A full counter still wakes the guest. */
    }
  }
  pthread_mutex_unlock(&vq->call_mu);
}

void vu_maybe_signal(struct vu_vq *vq)
{
  if (vq->signalled_valid && vq->signalled_used == vq->used_idx)
    return;
  /* The used index must be visible before the guest's event index is read,
   * or the guest may sleep past our last element. */
  atomic_thread_fence(memory_order_seq_cst);
  bool need;
  if (vu_has_feature(vq->dev, VIRTIO_RING_F_EVENT_IDX)) {
    uint16_t ev = le16toh(__atomic_load_n(&vq->avail[2 + vq->num], __ATOMIC_RELAXED));
    uint16_t nw = vq->used_idx, old = vq->signalled_used;
    need = !vq->signalled_valid || (uint16_t)(nw - ev - 1) < (uint16_t)(nw - old);
  } else {
    need =
        !(le16toh(__atomic_load_n(&vq->avail[0], __ATOMIC_RELAXED)) & VRING_AVAIL_F_NO_INTERRUPT);
  }
  vq->signalled_used = vq->used_idx;
  vq->signalled_valid = true;
  if (need)
    signal_call(vq);
}

static int vq_map(struct vu_vq *vq)
{
  struct vu_dev *d = vq->dev;
  uint32_t n = vq->num;
  vq->desc = uva_to_host(d, vq->desc_uva, 16ull * n);
  vq->avail = uva_to_host(d, vq->avail_uva, 6 + 2ull * n);
  vq->used = uva_to_host(d, vq->used_uva, 6 + 8ull * n);
  if (!vq->desc || !vq->avail || !vq->used || ((uintptr_t)vq->desc & 15) ||
      ((uintptr_t)vq->avail & 1) || ((uintptr_t)vq->used & 3))
    return -EFAULT;
  return 0;
}

static void *vq_main(void *arg)
{
  struct vu_vq *vq = arg;
  struct pollfd p[3] = { { vq->kick_fd, POLLIN, 0 },
                         { vq->wake_fd, POLLIN, 0 },
                         { vq->stop_fd, POLLIN, 0 } };
  /* Chains made available before the queue started need no kick. */
  vb_queue_process(vq);
  for (;;) {
    if (poll(p, 3, -1) < 0)
      continue;
    if (p[2].revents)
      break;
    uint64_t v;
    for (int i = 0; i < 2; i++)
      if (p[i].revents && read(p[i].fd, &v, sizeof v) < 0) {
        /* EAGAIN: nothing was pending after all */
      }
    vb_queue_process(vq);
  }
  /* Stopped: what is in flight completes (and is answered) first. */
  vb_queue_drain(vq);
  return NULL;
}

static void close_fd(int *fd)
{
  if (*fd >= 0)
    close(*fd);
  *fd = -1;
}

static void vq_stop(struct vu_vq *vq)
{
  if (!vq->running)
    return;
  uint64_t one = 1;
  if (write(vq->stop_fd, &one, sizeof one) < 0) {
    /* an eventfd write fails only on overflow */
  }
  pthread_join(vq->thread, NULL);
  vb_queue_stop(vq);
  close_fd(&vq->stop_fd);
  close_fd(&vq->wake_fd);
  vq->running = false;
}

/* Start the queue when it has everything: an address, a kick fd and (once
 * protocol features are negotiated, which start rings disabled) an enable. */
static int vq_maybe_start(struct vu_vq *vq)
{
  struct vu_dev *d = vq->dev;
  bool enabled = vq->enabled || !vu_has_feature(d, VHOST_USER_F_PROTOCOL_FEATURES);
  if (vq->running || !enabled || vq->kick_fd < 0 || !vq->have_addr || !vq->num || vq->broken)
    return 0;
  int r = vq_map(vq);
  if (r) {
    fprintf(stderr, "thinstack: vhost-user: queue %u: ring addresses lie outside guest memory\n",
            vq->idx);
    vq->broken = true;
    return r;
  }
  if ((r = vb_queue_start(vq)))
    return r;
  vq->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  vq->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (vq->stop_fd < 0 || vq->wake_fd < 0 || (r = -pthread_create(&vq->thread, NULL, vq_main, vq))) {
    r = vq->stop_fd < 0 || vq->wake_fd < 0 ? -errno : r;
    close_fd(&vq->stop_fd);
    close_fd(&vq->wake_fd);
    vb_queue_stop(vq);
    return r;
  }
  char name[16];
  snprintf(name, sizeof name, "ts-vhost-q%u", vq->idx);
  pthread_setname_np(vq->thread, name);
  vq->running = true;
  return 0;
}

static void vq_reset(struct vu_vq *vq)
{
  vq_stop(vq);
  close_fd(&vq->kick_fd);
  close_fd(&vq->err_fd);
  pthread_mutex_lock(&vq->call_mu);
  close_fd(&vq->call_fd);
  pthread_mutex_unlock(&vq->call_mu);
  vq->num = 0;
  vq->last_avail = vq->used_idx = 0;
  vq->have_addr = vq->enabled = vq->broken = false;
  vq->desc = NULL;
  vq->avail = vq->used = NULL;
}

/* A fresh session: what the last VMM set up is forgotten. */
static void dev_reset(struct vu_dev *d)
{
  for (uint32_t i = 0; i < d->nqueues; i++)
    vq_reset(&d->vq[i]);
  unmap_all(d);
  d->features = d->protocol = 0;
}

/* ------------------------------------------------------------------------ */
/* Messages                                                                  */

static int recv_msg(int fd, struct vu_msg *m)
{
  char cbuf[CMSG_SPACE(sizeof(int) * VU_MAX_FDS)];
  struct iovec iov = { &m->h, sizeof m->h };
  struct msghdr mh = { .msg_iov = &iov,
                       .msg_iovlen = 1,
                       .msg_control = cbuf,
                       .msg_controllen = sizeof cbuf };
  m->nfds = 0;
  ssize_t n;
  do
    n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_WAITALL);
  while (n < 0 && errno == EINTR);
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
      continue;
    int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    for (int i = 0; i < k; i++) {
      int f;
      memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
      if (m->nfds < VU_MAX_FDS)
        m->fds[m->nfds++] = f;
      else
        close(f);
    }
  }
  if (n != (ssize_t)sizeof m->h)
    return n == 0 ? -ECONNRESET : -EPROTO;
  if (m->h.size > VU_PAYLOAD_MAX || (m->h.flags & 3) != VHOST_USER_VERSION)
    return -EPROTO;
  size_t got = 0;
  while (got < m->h.size) {
    n = recv(fd, m->p.raw + got, m->h.size - got, MSG_WAITALL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -EPROTO;
    got += (size_t)n;
  }
  return 0;
}

static int send_reply(int fd, struct vu_msg *m, uint32_t size)
{
  m->h.flags = VHOST_USER_VERSION | VHOST_USER_REPLY;
  m->h.size = size;
  size_t len = sizeof m->h + size;
  const uint8_t *p = (const uint8_t *)&m->h;
  uint8_t buf[sizeof m->h + VU_PAYLOAD_MAX];
  memcpy(buf, p, sizeof m->h);
  memcpy(buf + sizeof m->h, m->p.raw, size);
  size_t off = 0;
  while (off < len) {
    ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -EPIPE;
    off += (size_t)n;
  }
  return 0;
}

static int take_fd(struct vu_msg *m)
{
  if (m->nfds < 1)
    return -1;
  int fd = m->fds[0];
  memmove(m->fds, m->fds + 1, sizeof(int) * (size_t)(m->nfds - 1));
  m->nfds--;
  return fd;
}

static struct vu_vq *msg_vq(struct vu_dev *d, struct vu_msg *m, uint32_t index)
{
  if (m->h.size < 4 || index >= d->nqueues) {
    fprintf(stderr, "thinstack: vhost-user: request %u names queue %u of %u\n", m->h.request, index,
            d->nqueues);
    return NULL;
  }
  return &d->vq[index];
}

static int set_mem_table(struct vu_dev *d, struct vu_msg *m)
{
  uint32_t n = m->p.mem.nregions;
  if (m->h.size < 8 + 32 * n || n > VU_MAX_REGIONS || (int)n != m->nfds) {
    fprintf(stderr, "thinstack: vhost-user: SET_MEM_TABLE: %u regions, %d fds\n", n, m->nfds);
    return -EINVAL;
  }
  bool was[TS_VHOST_MAX_QUEUES];
  for (uint32_t i = 0; i < d->nqueues; i++) {
    was[i] = d->vq[i].running;
    vq_stop(&d->vq[i]);
  }
  unmap_all(d);
  int r = 0;
  for (uint32_t i = 0; i < n; i++) {
    uint64_t off = m->p.mem.r[i].mmap_offset, size = m->p.mem.r[i].size;
    struct vu_region *g = &d->regions[d->nregions];
    if (!size || off + size < off || off + size > SIZE_MAX) {
      r = -EINVAL;
      break;
    }
    /* From the page the region starts in, not from the start of the fd. */
    uint64_t skip = off % (uint64_t)sysconf(_SC_PAGESIZE);
    void *p = mmap(NULL, skip + size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, m->fds[i],
                   (off_t)(off - skip));
    if (p == MAP_FAILED) {
      r = -errno;
      fprintf(stderr, "thinstack: vhost-user: mapping guest memory region %u: %s\n", i,
              ts_strerror(r));
      break;
    }
    g->gpa = m->p.mem.r[i].gpa;
    g->size = size;
    g->uva = m->p.mem.r[i].uva;
    g->map = p;
    g->map_len = skip + size;
    g->host = (uint8_t *)p + skip;
    d->nregions++;
  }
  if (r)
    unmap_all(d);
  for (uint32_t i = 0; i < d->nqueues; i++)
    if (was[i] && !r)
      vq_maybe_start(&d->vq[i]);
  return r;
}

/* Handle one message; > 0 when the reply (payload of that size) is in m,
 * 0 or a negative errno otherwise. */
static int handle(struct vu_dev *d, struct vu_msg *m)
{
  struct vu_vq *vq;
  int fd;
  switch (m->h.request) {
  case VHOST_USER_GET_FEATURES:
    m->p.u64 = vb_features(d);
    return 8;
  case VHOST_USER_SET_FEATURES:
    if (m->h.size < 8)
      return -EINVAL;
    if (m->p.u64 & ~vb_features(d))
      return -EINVAL;
    d->features = m->p.u64;
    return 0;
  case VHOST_USER_SET_OWNER:
    return 0;
  case VHOST_USER_RESET_OWNER:
    dev_reset(d);
    return 0;
  case VHOST_USER_GET_PROTOCOL_FEATURES:
    m->p.u64 = (1ull << VHOST_USER_PROTOCOL_F_MQ) | (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
               (1ull << VHOST_USER_PROTOCOL_F_CONFIG);
    return 8;
  case VHOST_USER_SET_PROTOCOL_FEATURES:
    if (m->h.size < 8)
      return -EINVAL;
    d->protocol = m->p.u64;
    return 0;
  case VHOST_USER_GET_QUEUE_NUM:
    m->p.u64 = d->nqueues;
    return 8;
  case VHOST_USER_SET_MEM_TABLE:
    return set_mem_table(d, m);
  case VHOST_USER_SET_VRING_NUM:
    if (!(vq = msg_vq(d, m, m->p.state.index)) || m->h.size < 8)
      return -EINVAL;
    if (!m->p.state.num || m->p.state.num > VU_QUEUE_MAX || (m->p.state.num & (m->p.state.num - 1)))
      return -EINVAL;
    vq_stop(vq);
    vq->num = m->p.state.num;
    return 0;
  case VHOST_USER_SET_VRING_ADDR:
    if (!(vq = msg_vq(d, m, m->p.addr.index)) || m->h.size < 40)
      return -EINVAL;
    vq_stop(vq);
    vq->desc_uva = m->p.addr.desc;
    vq->used_uva = m->p.addr.used;
    vq->avail_uva = m->p.addr.avail;
    vq->have_addr = true;
    vq->broken = false;
    return vq_maybe_start(vq);
  case VHOST_USER_SET_VRING_BASE:
    if (!(vq = msg_vq(d, m, m->p.state.index)) || m->h.size < 8)
      return -EINVAL;
    vq_stop(vq);
    vq->last_avail = (uint16_t)m->p.state.num;
    return 0;
  case VHOST_USER_GET_VRING_BASE:
    if (!(vq = msg_vq(d, m, m->p.state.index)))
      return -EINVAL;
    /* Stops the ring: what it has in flight completes first. */
    vq_stop(vq);
    close_fd(&vq->kick_fd);
    m->p.state.num = vq->last_avail;
    return 8;
  case VHOST_USER_SET_VRING_KICK:
  case VHOST_USER_SET_VRING_CALL:
  case VHOST_USER_SET_VRING_ERR:
    if (m->h.size < 8 || !(vq = msg_vq(d, m, (uint32_t)(m->p.u64 & VHOST_USER_VRING_IDX_MASK))))
      return -EINVAL;
    fd = (m->p.u64 & VHOST_USER_VRING_NOFD) ? -1 : take_fd(m);
    if (m->h.request == VHOST_USER_SET_VRING_CALL) {
      pthread_mutex_lock(&vq->call_mu);
      close_fd(&vq->call_fd);
      vq->call_fd = fd;
      pthread_mutex_unlock(&vq->call_mu);
      return 0;
    }
    if (m->h.request == VHOST_USER_SET_VRING_ERR) {
      close_fd(&vq->err_fd);
      vq->err_fd = fd;
      return 0;
    }
    vq_stop(vq);
    close_fd(&vq->kick_fd);
    if (fd < 0)
      return -EINVAL; /* polling without a kick fd is not offered */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    vq->kick_fd = fd;
    return vq_maybe_start(vq);
  case VHOST_USER_SET_VRING_ENABLE:
    if (!(vq = msg_vq(d, m, m->p.state.index)) || m->h.size < 8)
      return -EINVAL;
    vq->enabled = m->p.state.num != 0;
    if (!vq->enabled) {
      vq_stop(vq);
      return 0;
    }
    return vq_maybe_start(vq);
  case VHOST_USER_GET_CONFIG: {
    uint8_t cfg[256];
    size_t len = vb_config(d, cfg, sizeof cfg);
    uint32_t off = m->p.cfg.offset, sz = m->p.cfg.size;
    if (m->h.size < 12 || sz > sizeof m->p.cfg.data || off > len || sz > len - off) {
      /* An empty payload tells the front end the read failed. */
      m->p.cfg.size = 0;
      return 12;
    }
    memcpy(m->p.cfg.data, cfg + off, sz);
    return (int)(12 + sz);
  }
  case VHOST_USER_SET_CONFIG:
    return -EPERM; /* the writeback field is not offered (no CONFIG_WCE) */
  case VHOST_USER_SET_LOG_BASE:
  case VHOST_USER_SET_LOG_FD:
  default:
    fprintf(stderr, "thinstack: vhost-user: request %u is not supported\n", m->h.request);
    return -EOPNOTSUPP;
  }
}

static bool has_reply(uint32_t request)
{
  return request == VHOST_USER_GET_FEATURES || request == VHOST_USER_GET_PROTOCOL_FEATURES ||
         request == VHOST_USER_GET_QUEUE_NUM || request == VHOST_USER_GET_VRING_BASE ||
         request == VHOST_USER_GET_CONFIG;
}

static void serve_conn(struct ts_vhost_blk *s, int fd)
{
  struct vu_dev *d = &s->d;
  struct vu_msg *m = malloc(sizeof *m);
  if (!m)
    return;
  while (!atomic_load(&s->stopping)) {
    int r = recv_msg(fd, m);
    if (r) {
      for (int i = 0; i < m->nfds; i++)
        close(m->fds[i]);
      break;
    }
    uint32_t req = m->h.request, flags = m->h.flags;
    int res = handle(d, m);
    for (int i = 0; i < m->nfds; i++)
      close(m->fds[i]);
    if (has_reply(req)) {
      if (res < 0)
        break; /* a reply the front end waits for cannot be an error */
      if (send_reply(fd, m, (uint32_t)res))
        break;
    } else if ((flags & VHOST_USER_NEED_REPLY) &&
               (d->protocol & (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK))) {
      m->h.request = req;
      m->p.u64 = res < 0 ? 1 : 0;
      if (send_reply(fd, m, 8))
        break;
    }
  }
  free(m);
}

static void *server_main(void *arg)
{
  struct ts_vhost_blk *s = arg;
  while (!atomic_load(&s->stopping)) {
    struct pollfd p[2] = { { s->listen_fd, POLLIN, 0 }, { s->stop_fd, POLLIN, 0 } };
    if (poll(p, 2, -1) < 0)
      continue;
    if (p[1].revents)
      break;
    if (!p[0].revents)
      continue;
    int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
      continue;
    pthread_mutex_lock(&s->conn_mu);
    s->conn_fd = fd;
    /* A stop between accept and the store above shuts the socket here. */
    if (atomic_load(&s->stopping))
      shutdown(fd, SHUT_RDWR);
    pthread_mutex_unlock(&s->conn_mu);
    atomic_fetch_add(&s->sessions, 1);
    serve_conn(s, fd);
    /* In-flight requests drain before the memory they use goes. */
    dev_reset(&s->d);
    pthread_mutex_lock(&s->conn_mu);
    s->conn_fd = -1;
    pthread_mutex_unlock(&s->conn_mu);
    close(fd);
  }
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* The public calls                                                          */

static int bind_socket(const char *path, int *out, ts_error *err)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  if (strlen(path) >= sizeof sa.sun_path)
    return ts_error_set(err, -EINVAL, "vhost-user: %s: longer than a socket address (%zu bytes)",
                        path, sizeof sa.sun_path - 1);
  strcpy(sa.sun_path, path);
  struct stat st;
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return ts_error_set(err, -EEXIST, "vhost-user: %s exists and is not a socket", path);
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0) {
      close(probe);
      return ts_error_set(err, -EADDRINUSE, "vhost-user: %s: another server answers there", path);
    }
    if (probe >= 0)
      close(probe);
    unlink(path);
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return ts_error_set(err, -errno, "vhost-user: socket: %s", ts_strerror(-errno));
  /* 0600 before listen(): nobody can connect to a socket that does not
   * listen yet, so no other user gets in between. */
  int r = bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ? -errno : 0;
  if (!r && (chmod(path, 0600) < 0 || listen(fd, 4) < 0))
    r = -errno;
  if (r && r != -EADDRINUSE)
    unlink(path);
  if (r) {
    close(fd);
    return ts_error_set(err, r, "vhost-user: %s: %s", path, ts_strerror(r));
  }
  *out = fd;
  return 0;
}

int ts_vhost_blk_serve(ts_dev *dev, const char *path, const ts_vhost_blk_opts *opts,
                       ts_vhost_blk **out, ts_error *err)
{
  ts_vhost_blk_opts o = { 0 };
  if (opts) {
    if (opts->struct_size < sizeof(uint32_t) * 4)
      return ts_error_set(err, -EINVAL, "vhost-user: opts.struct_size %u is too small",
                          opts->struct_size);
    memcpy(&o, opts, opts->struct_size < sizeof o ? opts->struct_size : sizeof o);
  }
  if (!dev || !path || !*path || !out)
    return ts_error_set(err, -EINVAL, "vhost-user: no device, socket path or result pointer");
  if (o.flags & ~TS_VHOST_READ_ONLY)
    return ts_error_set(err, -EINVAL, "vhost-user: unknown flags 0x%x", o.flags);
  if (o.queues > TS_VHOST_MAX_QUEUES)
    return ts_error_set(err, -EINVAL, "vhost-user: queues=%u: at most %u", o.queues,
                        TS_VHOST_MAX_QUEUES);
  if (o.workers > 256)
    return ts_error_set(err, -EINVAL, "vhost-user: workers=%u: at most 256", o.workers);
  if (o.serial && strlen(o.serial) > VIRTIO_BLK_ID_BYTES)
    return ts_error_set(err, -EINVAL, "vhost-user: serial \"%s\": longer than %d bytes", o.serial,
                        VIRTIO_BLK_ID_BYTES);
  const ts_limits *lim = ts_dev_limits(dev);
  if (lim->size < 512)
    return ts_error_set(err, -EINVAL, "vhost-user: %s: smaller than one sector", ts_dev_name(dev));
  struct ts_vhost_blk *s = calloc(1, sizeof *s);
  char cwd[PATH_MAX];
  if (s && path[0] != '/' && getcwd(cwd, sizeof cwd)) {
    size_t n = strlen(cwd) + strlen(path) + 2;
    if ((s->path = malloc(n)))
      snprintf(s->path, n, "%s/%s", cwd, path);
  } else if (s) {
    s->path = strdup(path);
  }
  if (!s || !s->path) {
    free(s);
    return ts_error_set(err, -ENOMEM, "vhost-user: out of memory");
  }
  struct vu_dev *d = &s->d;
  d->dev = dev;
  d->lim = lim;
  d->read_only = lim->read_only || (o.flags & TS_VHOST_READ_ONLY);
  d->nqueues = o.queues ? o.queues : TS_VHOST_DEFAULT_QUEUES;
  d->workers = o.workers ? o.workers : TS_VHOST_DEFAULT_WORKERS;
  const char *serial = o.serial ? o.serial : ts_dev_name(dev);
  memcpy(d->serial, serial, strnlen(serial, sizeof d->serial));
  for (uint32_t i = 0; i < TS_VHOST_MAX_QUEUES; i++) {
    struct vu_vq *vq = &d->vq[i];
    vq->dev = d;
    vq->idx = i;
    vq->kick_fd = vq->call_fd = vq->err_fd = vq->stop_fd = vq->wake_fd = -1;
    pthread_mutex_init(&vq->call_mu, NULL);
    pthread_mutex_init(&vq->mu, NULL);
    pthread_cond_init(&vq->idle, NULL);
  }
  s->conn_fd = -1;
  s->listen_fd = s->stop_fd = -1;
  pthread_mutex_init(&s->conn_mu, NULL);
  int r = bind_socket(s->path, &s->listen_fd, err);
  if (!r && (s->stop_fd = eventfd(0, EFD_CLOEXEC)) < 0)
    r = ts_error_set(err, -errno, "vhost-user: eventfd: %s", ts_strerror(-errno));
  if (!r && (r = -pthread_create(&s->thread, NULL, server_main, s)))
    ts_error_set(err, r, "vhost-user: starting the server thread: %s", ts_strerror(r));
  if (r) {
    if (s->listen_fd >= 0) {
      close(s->listen_fd);
      unlink(s->path);
    }
    if (s->stop_fd >= 0)
      close(s->stop_fd);
    for (uint32_t i = 0; i < TS_VHOST_MAX_QUEUES; i++) {
      pthread_mutex_destroy(&d->vq[i].call_mu);
      pthread_mutex_destroy(&d->vq[i].mu);
      pthread_cond_destroy(&d->vq[i].idle);
    }
    pthread_mutex_destroy(&s->conn_mu);
    free(s->path);
    free(s);
    return r;
  }
  struct stat st;
  if (stat(s->path, &st) == 0) {
    s->sock_dev = st.st_dev;
    s->sock_ino = st.st_ino;
  }
  pthread_setname_np(s->thread, "ts-vhost");
  *out = s;
  return 0;
}

const char *ts_vhost_blk_path(const ts_vhost_blk *srv) { return srv ? srv->path : NULL; }

uint64_t ts_vhost_blk_sessions(const ts_vhost_blk *srv)
{
  return srv ? atomic_load(&((ts_vhost_blk *)srv)->sessions) : 0;
}

int ts_vhost_blk_stop(ts_vhost_blk *s)
{
  if (!s)
    return 0;
  atomic_store(&s->stopping, true);
  uint64_t one = 1;
  if (write(s->stop_fd, &one, sizeof one) < 0) {
    /* cannot overflow: written once */
  }
  pthread_mutex_lock(&s->conn_mu);
  if (s->conn_fd >= 0)
    shutdown(s->conn_fd, SHUT_RDWR);
  pthread_mutex_unlock(&s->conn_mu);
  pthread_join(s->thread, NULL);
  pthread_mutex_destroy(&s->conn_mu);
  close(s->listen_fd);
  close(s->stop_fd);
  struct stat st;
  /* Only our own socket: a later server may have replaced it. */
  if (lstat(s->path, &st) == 0 && st.st_dev == s->sock_dev && st.st_ino == s->sock_ino)
    unlink(s->path);
  for (uint32_t i = 0; i < TS_VHOST_MAX_QUEUES; i++) {
    pthread_mutex_destroy(&s->d.vq[i].call_mu);
    pthread_mutex_destroy(&s->d.vq[i].mu);
    pthread_cond_destroy(&s->d.vq[i].idle);
  }
  free(s->path);
  free(s);
  return 0;
}
