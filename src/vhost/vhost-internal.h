/* The vhost-user back end (vhost-user.c: the message protocol, the memory
 * table, split virtqueues) and the virtio-blk device on it (virtio-blk.c).
 * Facts from QEMU's docs/interop/vhost-user.rst and VIRTIO 1.2 sections
 * 2.7 (split virtqueues) and 5.2 (block device). */
#ifndef TS_VHOST_INTERNAL_H
#define TS_VHOST_INTERNAL_H

#include <libthinstack/thinstack.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

/* Virtio feature bits (VIRTIO 1.2 sections 5.2.3 and 6). */
#define VIRTIO_BLK_F_SIZE_MAX 1
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_F_TOPOLOGY 10
#define VIRTIO_BLK_F_MQ 12
#define VIRTIO_BLK_F_DISCARD 13
#define VIRTIO_BLK_F_WRITE_ZEROES 14
#define VIRTIO_RING_F_INDIRECT_DESC 28
#define VIRTIO_RING_F_EVENT_IDX 29
#define VHOST_USER_F_PROTOCOL_FEATURES 30
#define VIRTIO_F_VERSION_1 32

/* vhost-user protocol features. */
#define VHOST_USER_PROTOCOL_F_MQ 0
#define VHOST_USER_PROTOCOL_F_REPLY_ACK 3
#define VHOST_USER_PROTOCOL_F_CONFIG 9

/* Split virtqueue layout (VIRTIO 1.2 section 2.7). */
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VU_QUEUE_MAX 32768

struct vring_desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
struct vring_used_elem {
  uint32_t id;
  uint32_t len;
};

/* virtio-blk requests and statuses (section 5.2.6). */
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_T_DISCARD 11
#define VIRTIO_BLK_T_WRITE_ZEROES 13
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
#define VIRTIO_BLK_ID_BYTES 20
#define VIRTIO_BLK_WZ_F_UNMAP 1

/* What one chain may hold: data segments (seg_max in the config), the
 * descriptors walked (a bound that also ends loops), host iovec entries
 * after splitting at memory region boundaries, and the per-segment size. */
#define VB_SEG_MAX 126
#define VB_DESC_MAX 256
#define VB_IOV_MAX 256
#define VB_SIZE_MAX (1u << 20)

#define VU_MAX_REGIONS 8

struct vu_region {
  uint64_t gpa, size, uva;
  uint8_t *host; /* gpa's host address */
  void *map;     /* the whole mapping (mmap_offset included) */
  size_t map_len;
};

struct vu_dev;
struct vb_req;

struct vu_vq {
  struct vu_dev *dev;
  unsigned idx;
  uint32_t num;
  uint16_t last_avail, used_idx, signalled_used;
  bool signalled_valid;
  uint64_t desc_uva, avail_uva, used_uva;
  bool have_addr, enabled, running, broken;
  struct vring_desc *desc;
  uint16_t *avail; /* flags, idx, ring[num], used_event */
  uint16_t *used;  /* flags, idx, then elements; avail_event after them */
  int kick_fd, err_fd, stop_fd;
  /* The call fd changes while the queue runs (QEMU swaps it when the guest
   * masks interrupts), so it is read under this lock. */
  pthread_mutex_t call_mu;
  int call_fd;
  pthread_t thread;
  /* Requests complete on the context's workers (TS_AIO_MODE_WORKER), which
   * push used elements and interrupt the guest themselves: the used ring,
   * the free requests and the counts below are under `mu`. */
  ts_aio_ctx *aio;
  pthread_mutex_t mu;
  pthread_cond_t idle; /* inflight fell to 0 */
  int wake_fd;         /* a request slot came free while starved */
  bool starved;
  struct vb_req *reqs, *free_reqs;
  uint32_t inflight;
  /* Scratch for the chain being parsed (the aio request copies its iovec). */
  struct iovec out[VB_IOV_MAX], in[VB_IOV_MAX];
};

struct vu_dev {
  ts_dev *dev;
  const ts_limits *lim;
  bool read_only;
  char serial[VIRTIO_BLK_ID_BYTES];
  uint32_t nqueues, workers;
  uint64_t features, protocol;
  int nregions;
  struct vu_region regions[VU_MAX_REGIONS];
  struct vu_vq vq[TS_VHOST_MAX_QUEUES];
  atomic_uint_least64_t requests, errors;
};

/* vhost-user.c: guest memory and rings for virtio-blk.c. */
/* Host address of [gpa, gpa+len) when one region holds all of it. */
void *vu_gpa_to_host(struct vu_dev *d, uint64_t gpa, uint64_t len);
/* Append host iovecs for [gpa, gpa+len) to iov (which has room for `max`),
 * split at region boundaries. Returns the new count, or -EFAULT when a byte
 * lies in no region, -E2BIG when `max` entries are not enough. */
int vu_gpa_iov(struct vu_dev *d, uint64_t gpa, uint32_t len, struct iovec *iov, int n, int max);
/* Put a used element and publish it (the guest sees it after this). Under
 * vq->mu. */
void vu_push_used(struct vu_vq *vq, uint16_t head, uint32_t len);
/* Interrupt the guest if the ring's notification rules ask for it. Under
 * vq->mu. */
void vu_maybe_signal(struct vu_vq *vq);
bool vu_has_feature(const struct vu_dev *d, unsigned bit);

/* virtio-blk.c */
uint64_t vb_features(const struct vu_dev *d);
/* The config space (section 5.2.4) as the guest reads it. */
size_t vb_config(const struct vu_dev *d, uint8_t *buf, size_t n);
int vb_queue_start(struct vu_vq *vq);
/* Take and run every available chain (while request slots last). */
void vb_queue_process(struct vu_vq *vq);
/* Wait until no request is in flight. */
void vb_queue_drain(struct vu_vq *vq);
void vb_queue_stop(struct vu_vq *vq);

#endif
