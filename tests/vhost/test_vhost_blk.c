/* The vhost-user-blk server against a front end written here: the test is
 * the VMM. Its guest memory is a memfd of two regions (so buffers can cross
 * a region boundary) that it passes with SET_MEM_TABLE, it lays out split
 * virtqueues in that memory, puts descriptor chains on them and reads the
 * used rings, as a guest driver would.
 *
 * The device is a thin volume on real files. The malformed-request table
 * runs on queue 1 while a thread keeps writing and verifying good requests
 * on queue 0; for each bad chain it asserts the used element, the status
 * byte, that no other byte of the queue's guest memory changed and, at the
 * end, that the device outside queue 0's range holds what it held. */
#include "testutil.h"

#include <endian.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE (4u << 20)
#define REGION (2u << 20)
#define GPA_BASE 0x40000000ull
#define QNUM 64
#define DEV_SIZE (16u << 20)
#define Q0_DEV_RANGE (1u << 20) /* queue 0's good requests stay below this */

/* Guest memory layout (offsets into the memfd). */
#define RING_OFF(q) (0x10000u * (q)) /* desc, avail +0x1000, used +0x2000 */
#define BUF_OFF(q) ((q) == 0 ? 0x40000u : 0x100000u)
#define BUF_END(q) ((q) == 0 ? 0x100000u : MEM_SIZE)

struct desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4

struct dq {
  unsigned idx;
  struct desc *desc;
  uint16_t *avail, *used;
  uint16_t avail_idx, used_seen;
  int kick, call;
};

struct fe {
  int sock, memfd;
  uint8_t *mem;
  uint64_t features;
  struct dq q[2];
};

static ts_stack *stack;
static ts_dev *vol;
static ts_vhost_blk *srv;
static char *sock_path;
static uint8_t *model; /* what the device should hold */

static uint64_t gpa(uint64_t off) { return GPA_BASE + off; }

/* ------------------------------------------------------------------------ */
/* The front end's side of the protocol                                       */

struct msg {
  uint32_t req, flags, size;
  uint8_t payload[512];
} __attribute__((packed));

static void send_msg(int fd, uint32_t req, uint32_t flags, const void *p, uint32_t size,
                     const int *fds, int nfds)
{
  struct msg m = { req, 1u | flags, size, { 0 } };
  ck_assert_uint_le(size, sizeof m.payload);
  if (size)
    memcpy(m.payload, p, size);
  struct iovec iov = { &m, 12 + size };
  char cbuf[CMSG_SPACE(sizeof(int) * 8)] = { 0 };
  struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
  if (nfds) {
    mh.msg_control = cbuf;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
  }
  ck_assert_int_eq(sendmsg(fd, &mh, MSG_NOSIGNAL), (ssize_t)(12 + size));
}

/* A reply's payload size, or -1 when the server closed the connection. */
static int recv_reply(int fd, uint32_t req, void *p, uint32_t max)
{
  struct msg m;
  struct pollfd pf = { fd, POLLIN, 0 };
  ck_assert_msg(poll(&pf, 1, 10000) == 1, "no reply to request %u", req);
  ssize_t n = recv(fd, &m, 12, MSG_WAITALL);
  if (n <= 0)
    return -1;
  ck_assert_int_eq(n, 12);
  ck_assert_uint_eq(m.req, req);
  ck_assert_uint_eq(m.flags & 7, 5); /* version 1, reply */
  ck_assert_uint_le(m.size, max);
  ck_assert_int_eq(recv(fd, p, m.size, MSG_WAITALL), (ssize_t)m.size);
  return (int)m.size;
}

static uint64_t get_u64(int fd, uint32_t req)
{
  send_msg(fd, req, 0, NULL, 0, NULL, 0);
  uint64_t v = 0;
  ck_assert_int_eq(recv_reply(fd, req, &v, 8), 8);
  return v;
}

/* A message with NEED_REPLY; returns the server's ack (0 = success). */
static uint64_t acked(int fd, uint32_t req, const void *p, uint32_t size, const int *fds, int nfds)
{
  send_msg(fd, req, 1u << 3, p, size, fds, nfds);
  uint64_t v = 99;
  ck_assert_int_eq(recv_reply(fd, req, &v, 8), 8);
  return v;
}

static int connect_to(const char *path)
{
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  strcpy(sa.sun_path, path);
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  return fd;
}

static void set_mem_table(struct fe *f)
{
  struct {
    uint32_t n, pad;
    uint64_t r[2][4];
  } mt = { 2,
           0,
           { { gpa(0), REGION, (uintptr_t)f->mem, 0 },
             { gpa(REGION), REGION, (uintptr_t)f->mem + REGION, REGION } } };
  int fds[2] = { f->memfd, f->memfd };
  ck_assert_uint_eq(acked(f->sock, 5, &mt, sizeof mt, fds, 2), 0);
}

static void start_queue(struct fe *f, unsigned qi)
{
  struct dq *q = &f->q[qi];
  uint32_t base = RING_OFF(qi);
  memset(f->mem + base, 0, 0x3000);
  q->idx = qi;
  q->desc = (struct desc *)(f->mem + base);
  q->avail = (uint16_t *)(f->mem + base + 0x1000);
  q->used = (uint16_t *)(f->mem + base + 0x2000);
  q->avail_idx = q->used_seen = 0;
  uint32_t st[2] = { qi, QNUM };
  ck_assert_uint_eq(acked(f->sock, 8, st, 8, NULL, 0), 0); /* SET_VRING_NUM */
  st[1] = 0;
  ck_assert_uint_eq(acked(f->sock, 10, st, 8, NULL, 0), 0); /* SET_VRING_BASE */
  struct {
    uint32_t index, flags;
    uint64_t desc, used, avail, log;
  } a = { qi, 0, (uintptr_t)q->desc, (uintptr_t)q->used, (uintptr_t)q->avail, 0 };
  ck_assert_uint_eq(acked(f->sock, 9, &a, sizeof a, NULL, 0), 0); /* SET_VRING_ADDR */
  q->call = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  q->kick = eventfd(0, EFD_CLOEXEC);
  uint64_t u = qi;
  ck_assert_uint_eq(acked(f->sock, 13, &u, 8, &q->call, 1), 0); /* SET_VRING_CALL */
  ck_assert_uint_eq(acked(f->sock, 12, &u, 8, &q->kick, 1), 0); /* SET_VRING_KICK */
  st[1] = 1;
  ck_assert_uint_eq(acked(f->sock, 18, st, 8, NULL, 0), 0); /* SET_VRING_ENABLE */
}

static void fe_connect(struct fe *f)
{
  f->sock = connect_to(sock_path);
  send_msg(f->sock, 3, 0, NULL, 0, NULL, 0); /* SET_OWNER */
  uint64_t feat = get_u64(f->sock, 1);
  /* VERSION_1, PROTOCOL_FEATURES, INDIRECT, EVENT_IDX, FLUSH, DISCARD, WRITE_ZEROES, MQ */
  uint64_t want = (1ull << 32) | (1ull << 30) | (1ull << 28) | (1ull << 29) | (1ull << 9) |
                  (1ull << 13) | (1ull << 14) | (1ull << 12);
  ck_assert_uint_eq(feat & want, want);
  uint64_t proto = get_u64(f->sock, 15);
  ck_assert_uint_eq(proto & 0x209, 0x209); /* MQ, REPLY_ACK, CONFIG */
  uint64_t p = 0x209;
  send_msg(f->sock, 16, 0, &p, 8, NULL, 0);
  ck_assert_uint_eq(get_u64(f->sock, 17), 2); /* GET_QUEUE_NUM */
  f->features = want;
  ck_assert_uint_eq(acked(f->sock, 2, &want, 8, NULL, 0), 0);
  set_mem_table(f);
  start_queue(f, 0);
  start_queue(f, 1);
}

static void fe_open(struct fe *f)
{
  memset(f, 0, sizeof *f);
  f->memfd = memfd_create("guest", MFD_CLOEXEC);
  ck_assert_int_ge(f->memfd, 0);
  ck_assert_int_eq(ftruncate(f->memfd, MEM_SIZE), 0);
  f->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, f->memfd, 0);
  ck_assert(f->mem != MAP_FAILED);
  fe_connect(f);
}

static void fe_close(struct fe *f)
{
  close(f->sock);
  for (int i = 0; i < 2; i++) {
    close(f->q[i].kick);
    close(f->q[i].call);
  }
  munmap(f->mem, MEM_SIZE);
  close(f->memfd);
}

/* ------------------------------------------------------------------------ */
/* The guest driver's side                                                    */

static void set_desc(struct desc *t, unsigned i, uint64_t addr, uint32_t len, uint16_t flags,
                     uint16_t next)
{
  struct desc d = { htole64(addr), htole32(len), htole16(flags), htole16(next) };
  memcpy(&t[i], &d, sizeof d);
}

static void kick(struct dq *q, uint16_t head)
{
  q->avail[2 + q->avail_idx % QNUM] = htole16(head);
  q->avail_idx++;
  __atomic_store_n(&q->avail[1], htole16(q->avail_idx), __ATOMIC_RELEASE);
  uint64_t one = 1;
  ck_assert_int_eq(write(q->kick, &one, 8), 8);
}

/* Wait for the next used element; returns false after 10 s. */
static bool wait_used(struct dq *q, uint32_t *id, uint32_t *len)
{
  for (int i = 0; i < 100000; i++) {
    uint16_t u = le16toh(__atomic_load_n(&q->used[1], __ATOMIC_ACQUIRE));
    if (u != q->used_seen) {
      uint32_t e[2];
      memcpy(e, (uint8_t *)q->used + 4 + (q->used_seen % QNUM) * 8, 8);
      q->used_seen++;
      *id = le32toh(e[0]);
      *len = le32toh(e[1]);
      return true;
    }
    usleep(100);
  }
  return false;
}

/* A request header at `off` in guest memory. */
static void put_hdr(struct fe *f, uint32_t off, uint32_t type, uint64_t sector)
{
  uint32_t t = htole32(type), z = 0;
  uint64_t s = htole64(sector);
  memcpy(f->mem + off, &t, 4);
  memcpy(f->mem + off + 4, &z, 4);
  memcpy(f->mem + off + 8, &s, 8);
}

/* A plain request on a direct chain: header, one data buffer (readable for
 * OUT, writable otherwise), status. Returns the status byte. */
static int simple_req(struct fe *f, unsigned qi, uint32_t type, uint64_t sector, uint32_t data_off,
                      uint32_t len)
{
  struct dq *q = &f->q[qi];
  uint32_t hdr = BUF_OFF(qi), st = BUF_OFF(qi) + 16;
  put_hdr(f, hdr, type, sector);
  f->mem[st] = 0xee;
  bool out = type == 1 || type == 11 || type == 13;
  unsigned n = 0;
  set_desc(q->desc, n, gpa(hdr), 16, F_NEXT, n + 1);
  n++;
  if (len) {
    set_desc(q->desc, n, gpa(data_off), len, (uint16_t)(F_NEXT | (out ? 0 : F_WRITE)), n + 1);
    n++;
  }
  set_desc(q->desc, n, gpa(st), 1, F_WRITE, 0);
  kick(q, 0);
  uint32_t id, used_len;
  ck_assert_msg(wait_used(q, &id, &used_len), "queue %u: no used element", qi);
  ck_assert_uint_eq(id, 0);
  ck_assert_uint_eq(used_len, 1 + ((type == 0 || type == 8) && f->mem[st] == 0 ? len : 0));
  return f->mem[st];
}

/* ------------------------------------------------------------------------ */
/* Fixture                                                                    */

static void setup(void)
{
  ts_test_require_tool("thin_check");
  ts_test_dir_setup();
  char *json = ts_test_fmt(
      "{ \"version\": 1, \"layers\": {"
      " \"meta\": { \"type\": \"file\", \"path\": \"meta.img\", \"size\": \"8M\", \"create\": true },"
      " \"data\": { \"type\": \"file\", \"path\": \"data.img\", \"size\": \"24M\", \"create\": true },"
      " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
      "             \"block_size\": \"64K\", \"create\": true },"
      " \"vm0\": { \"type\": \"thin\", \"pool\": \"pool\", \"id\": 0, \"size\": %u, \"create\": true } },"
      " \"exports\": [ \"vm0\" ] }",
      DEV_SIZE);
  stack = ts_test_open(ts_test_dir, json);
  free(json);
  vol = ts_stack_dev(stack, "vm0");
  model = malloc(DEV_SIZE);
  ts_test_pattern(model, DEV_SIZE, 7);
  ck_assert_int_eq(ts_pwrite(vol, model, DEV_SIZE, 0, 0), 0);
  sock_path = ts_test_file("vm0.sock");
  ts_vhost_blk_opts o = { .struct_size = sizeof o, .queues = 2, .serial = "serial-vm0" };
  ts_error err = { 0 };
  ck_assert_msg(ts_vhost_blk_serve(vol, sock_path, &o, &srv, &err) == 0, "%s", err.msg);
  struct stat sb;
  ck_assert_int_eq(stat(sock_path, &sb), 0);
  ck_assert_uint_eq(sb.st_mode & 0777, 0600);
}

static void teardown(void)
{
  ck_assert_int_eq(ts_vhost_blk_stop(srv), 0);
  ck_assert_int_ne(access(sock_path, F_OK), 0); /* the socket is removed */
  ts_error err = { 0 };
  ck_assert_int_eq(ts_stack_close(stack, &err), 0);
  char *meta = ts_test_path(ts_test_dir, "meta.img");
  ts_test_assert_thin_check(meta);
  free(meta);
  free(model);
  ts_test_dir_teardown();
}

static void assert_device_is_model(uint64_t from, uint64_t to)
{
  uint8_t *buf = malloc(to - from);
  ck_assert_int_eq(ts_pread(vol, buf, to - from, from), 0);
  /* memcmp first: each ck_assert marks a point through a pipe. */
  if (memcmp(buf, model + from, to - from))
    for (uint64_t i = 0; i < to - from; i++)
      ck_assert_msg(buf[i] == model[from + i], "device byte %llu changed",
                    (unsigned long long)(from + i));
  free(buf);
}

/* ------------------------------------------------------------------------ */
/* Good requests                                                              */

START_TEST(config_and_features)
{
  struct fe f;
  fe_open(&f);
  struct {
    uint32_t off, size, flags;
    uint8_t data[60];
  } c = { 0, 60, 0, { 0 } };
  send_msg(f.sock, 24, 0, &c, sizeof c, NULL, 0);
  ck_assert_int_eq(recv_reply(f.sock, 24, &c, sizeof c), (int)sizeof c);
  uint64_t cap;
  uint32_t blk, seg_max, size_max, max_wz, max_disc, disc_align;
  uint16_t nq;
  memcpy(&cap, c.data, 8);
  memcpy(&size_max, c.data + 8, 4);
  memcpy(&seg_max, c.data + 12, 4);
  memcpy(&blk, c.data + 20, 4);
  memcpy(&nq, c.data + 34, 2);
  memcpy(&max_disc, c.data + 36, 4);
  memcpy(&disc_align, c.data + 44, 4);
  memcpy(&max_wz, c.data + 48, 4);
  const ts_limits *l = ts_dev_limits(vol);
  ck_assert_uint_eq(le64toh(cap), DEV_SIZE / 512);
  ck_assert_uint_eq(le32toh(blk), l->logical_block_size);
  ck_assert_uint_eq(le16toh(nq), 2);
  ck_assert_uint_eq(le32toh(seg_max), 126);
  ck_assert_uint_eq(le32toh(size_max), 1u << 20);
  ck_assert_uint_eq(le32toh(disc_align), l->discard_granularity / 512); /* the pool's 64K */
  ck_assert_uint_gt(le32toh(max_disc), 0);
  ck_assert_uint_gt(le32toh(max_wz), 0);
  ck_assert_uint_eq(c.data[56], l->write_zeroes_unmap);
  /* A read past the config space gets an empty reply. */
  c.off = 40;
  c.size = 60;
  send_msg(f.sock, 24, 0, &c, 12 + 60, NULL, 0);
  ck_assert_int_eq(recv_reply(f.sock, 24, &c, sizeof c), 12);
  ck_assert_uint_eq(c.size, 0);
  fe_close(&f);
}
END_TEST

START_TEST(read_write_flush_id)
{
  struct fe f;
  fe_open(&f);
  /* 8K straddling the two memory regions, written at sector 2048 (1M). */
  uint32_t data = REGION - 4096;
  ts_test_pattern(f.mem + data, 8192, 42);
  ck_assert_int_eq(simple_req(&f, 1, 1, 2048, data, 8192), 0);
  memcpy(model + (1u << 20), f.mem + data, 8192);
  assert_device_is_model(1u << 20, (1u << 20) + 8192);
  memset(f.mem + data, 0, 8192);
  ck_assert_int_eq(simple_req(&f, 1, 0, 2048, data, 8192), 0);
  ck_assert_int_eq(memcmp(f.mem + data, model + (1u << 20), 8192), 0);
  ck_assert_int_eq(simple_req(&f, 0, 4, 0, 0, 0), 0); /* FLUSH */
  /* GET_ID: 20 bytes of serial. */
  memset(f.mem + 0x200000, 0xaa, 20);
  ck_assert_int_eq(simple_req(&f, 1, 8, 0, 0x200000, 20), 0);
  ck_assert_int_eq(memcmp(f.mem + 0x200000, "serial-vm0\0\0\0\0\0\0\0\0\0\0", 20), 0);
  /* An indirect table: header, two data pieces, status. */
  struct dq *q = &f.q[0];
  struct desc *t = (struct desc *)(f.mem + 0x80000);
  put_hdr(&f, 0x81000, 1, 0);
  ts_test_pattern(f.mem + 0x82000, 4096, 43);
  set_desc(t, 0, gpa(0x81000), 16, F_NEXT, 1);
  set_desc(t, 1, gpa(0x82000), 1024, F_NEXT, 2);
  set_desc(t, 2, gpa(0x82000 + 1024), 3072, F_NEXT, 3);
  set_desc(t, 3, gpa(0x81010), 1, F_WRITE, 0);
  f.mem[0x81010] = 0xee;
  set_desc(q->desc, 5, gpa(0x80000), 4 * 16, F_INDIRECT, 0);
  kick(q, 5);
  uint32_t id, len;
  ck_assert(wait_used(q, &id, &len));
  ck_assert_uint_eq(id, 5);
  ck_assert_uint_eq(f.mem[0x81010], 0);
  memcpy(model, f.mem + 0x82000, 4096);
  assert_device_is_model(0, 4096);
  fe_close(&f);
}
END_TEST

START_TEST(zeroes_discard_provision)
{
  struct fe f;
  fe_open(&f);
  uint32_t seg = 0x200000;
  struct seg {
    uint64_t sector;
    uint32_t n, flags;
  } s = { htole64(4096), htole32(2048), 0 }; /* 1M at 2M */
  ts_extent_list l = { 0 };
  /* Unmapped first, so that a provision is seen to allocate. */
  ck_assert_int_eq(ts_discard(vol, 2u << 20, 1u << 20), 0);
  ck_assert_int_eq(ts_block_status(vol, 2u << 20, 1u << 20, &l), 0);
  ck_assert_uint_eq(l.v[0].flags & TS_EXTENT_HOLE, TS_EXTENT_HOLE);
  memcpy(f.mem + seg, &s, 16);
  /* WRITE_ZEROES without unmap: provisioned (allocated, reads zeroes). */
  ck_assert_int_eq(simple_req(&f, 1, 13, 0, seg, 16), 0);
  ts_extent_list_reset(&l);
  ck_assert_int_eq(ts_block_status(vol, 2u << 20, 1u << 20, &l), 0);
  ck_assert_uint_eq(l.n, 1);
  ck_assert_uint_eq(l.v[0].flags, TS_EXTENT_ZERO);
  memset(model + (2u << 20), 0, 1u << 20);
  assert_device_is_model(2u << 20, 3u << 20);
  /* With unmap: freed. */
  s.flags = htole32(1);
  memcpy(f.mem + seg, &s, 16);
  ck_assert_int_eq(simple_req(&f, 1, 13, 0, seg, 16), 0);
  ts_extent_list_reset(&l);
  ck_assert_int_eq(ts_block_status(vol, 2u << 20, 1u << 20, &l), 0);
  ck_assert_uint_eq(l.v[0].flags & TS_EXTENT_HOLE, TS_EXTENT_HOLE);
  /* DISCARD of 64K at 4M. */
  s = (struct seg){ htole64(8192), htole32(128), 0 };
  memcpy(f.mem + seg, &s, 16);
  ck_assert_int_eq(simple_req(&f, 1, 11, 0, seg, 16), 0);
  ts_extent_list_reset(&l);
  ck_assert_int_eq(ts_block_status(vol, 4u << 20, 65536, &l), 0);
  ck_assert_uint_eq(l.v[0].flags & TS_EXTENT_HOLE, TS_EXTENT_HOLE);
  memset(model + (4u << 20), 0, 65536);
  ts_extent_list_free(&l);
  fe_close(&f);
}
END_TEST

START_TEST(event_idx_signals)
{
  struct fe f;
  fe_open(&f);
  struct dq *q = &f.q[1];
  uint64_t v;
  while (read(q->call, &v, 8) == 8) {
  }
  /* used_event = the next used index: the device must interrupt. */
  q->avail[2 + QNUM] = htole16(q->used_seen);
  memcpy(f.mem + 0x300000, model, 4096);
  ck_assert_int_eq(simple_req(&f, 1, 0, 0, 0x300000, 4096), 0);
  struct pollfd p = { q->call, POLLIN, 0 };
  ck_assert_int_eq(poll(&p, 1, 5000), 1);
  ck_assert_int_eq(read(q->call, &v, 8), 8);
  /* used_event far behind: no interrupt for the next one. */
  q->avail[2 + QNUM] = htole16((uint16_t)(q->used_seen + 100));
  ck_assert_int_eq(simple_req(&f, 1, 0, 0, 0x300000, 4096), 0);
  ck_assert_int_eq(poll(&p, 1, 200), 0);
  /* The device asks to be kicked at the next chain (avail_event). */
  ck_assert_uint_eq(le16toh(q->used[2 + 4 * QNUM]), q->avail_idx);
  fe_close(&f);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Malformed requests on queue 1 while queue 0 serves                         */

static atomic_bool q0_stop;
static atomic_int q0_done, q0_bad;

static void *q0_main(void *arg)
{
  struct fe *f = arg;
  uint32_t buf = 0x50000, n = 0;
  while (!atomic_load(&q0_stop)) {
    uint64_t sector = (n * 16) % (Q0_DEV_RANGE / 512);
    ts_test_pattern(f->mem + buf, 8192, n);
    if (simple_req(f, 0, 1, sector, buf, 8192) != 0)
      atomic_fetch_add(&q0_bad, 1);
    memset(f->mem + buf, 0, 8192);
    if (simple_req(f, 0, 0, sector, buf, 8192) != 0)
      atomic_fetch_add(&q0_bad, 1);
    uint8_t want[8192];
    ts_test_pattern(want, sizeof want, n);
    if (memcmp(want, f->mem + buf, sizeof want))
      atomic_fetch_add(&q0_bad, 1);
    atomic_fetch_add(&q0_done, 1);
    n++;
  }
  return NULL;
}

struct bad {
  const char *what;
  /* Lays the chain out from queue 1's descriptor table; returns the head. */
  uint16_t (*build)(struct fe *f, struct dq *q, uint32_t *status_off);
  int status; /* the status byte expected, -1: none written (used len 0) */
};

#define B 0x100000u /* queue 1's buffers */
#define HDR (B + 0x1000)
#define ST (B + 0x2000)
#define DATA (B + 0x10000)
#define TBL (B + 0x8000)

static uint16_t b_head_out_of_ring(struct fe *f, struct dq *q, uint32_t *st) { return QNUM + 3; }
static uint16_t b_next_out_of_ring(struct fe *f, struct dq *q, uint32_t *st)
{
  put_hdr(f, HDR, 0, 0);
  set_desc(q->desc, 0, gpa(HDR), 16, F_NEXT, 1);
  set_desc(q->desc, 1, gpa(DATA), 4096, F_NEXT | F_WRITE, 2);
  set_desc(q->desc, 2, gpa(ST), 1, F_NEXT | F_WRITE, 999);
  *st = ST;
  return 0;
}
static uint16_t b_loop_writable(struct fe *f, struct dq *q, uint32_t *st)
{
  put_hdr(f, HDR, 0, 0);
  set_desc(q->desc, 0, gpa(HDR), 16, F_NEXT, 1);
  set_desc(q->desc, 1, gpa(ST), 1, F_NEXT | F_WRITE, 1); /* points at itself */
  *st = ST;
  return 0;
}
static uint16_t b_loop_readable(struct fe *f, struct dq *q, uint32_t *st)
{
  put_hdr(f, HDR, 1, 0);
  set_desc(q->desc, 0, gpa(HDR), 16, F_NEXT, 1);
  set_desc(q->desc, 1, gpa(DATA), 512, F_NEXT, 0);
  return 0;
}
static uint16_t b_data_outside_memory(struct fe *f, struct dq *q, uint32_t *st)
{
  put_hdr(f, HDR, 0, 0);
  set_desc(q->desc, 0, gpa(HDR), 16, F_NEXT, 1);
  set_desc(q->desc, 1, gpa(MEM_SIZE) + 4096, 4096, F_NEXT | F_WRITE, 2);
  set_desc(q->desc, 2, gpa(ST), 1, F_WRITE, 0);
  *st = ST;
  return 0;
}
static uint16_t b_data_past_memory_end(struct fe *f, struct dq *q, uint32_t *st)
{
  put_hdr(f, HDR, 1, 0);
  set_desc(q->desc, 0, gpa(HDR), 16, F_NEXT, 1);
  set_desc(q->desc, 1, gpa(MEM_SIZE - 2048), 4096, F_NEXT, 2); /* half outside */
  set_desc(q->desc, 2, gpa(ST), 1, F_WRITE, 0);
  *st = ST;
  return 0;
}
static uint16_t b_hdr_below_memory(struct fe *f, struct dq *q, uint32_t *st)
{
  set_desc(q->desc, 0, GPA_BASE - 4096, 16, F_NEXT, 1);
  set_desc(q->desc, 1, gpa(ST), 1, F_WRITE, 0);
  *st = ST;
  return 0;
}
static uint16_t b_status_outside(struct fe *f, struct dq *q, uint32_t *st)
{
  put_hdr(f, HDR, 0, 0);
  set_desc(q->desc, 0, gpa(HDR), 16, F_NEXT, 1);
  set_desc(q->desc, 1, gpa(DATA), 4096, F_NEXT | F_WRITE, 2);
  set_desc(q->desc, 2, 0x7fff0000000ull, 1, F_WRITE, 0);
  return 0;
}
static uint16_t b_no_writable(struct fe *f, struct dq *q, uint32_t *st)
{
  put_hdr(f, HDR, 1, 0);
  set_desc(q->desc, 0, gpa(HDR), 16, F_NEXT, 1);
  set_desc(q->desc, 1, gpa(DATA), 4096, 0, 0);
  return 0;
}
static uint16_t b_readable_after_writable(struct fe *f, struct dq *q, uint32_t *st)
{
  put_hdr(f, HDR, 1, 0);
  set_desc(q->desc, 0, gpa(HDR), 16, F_NEXT, 1);
  set_desc(q->desc, 1, gpa(ST), 1, F_NEXT | F_WRITE, 2);
  set_desc(q->desc, 2, gpa(DATA), 4096, 0, 0);
  *st = ST;
  return 0;
}
static uint16_t b_short_header(struct fe *f, struct dq *q, uint32_t *st)
{
  put_hdr(f, HDR, 0, 0);
  set_desc(q->desc, 0, gpa(HDR), 8, F_NEXT, 1);
  set_desc(q->desc, 1, gpa(ST), 1, F_WRITE, 0);
  *st = ST;
  return 0;
}
static uint16_t chain3(struct fe *f, struct dq *q, uint32_t *st, uint32_t type, uint64_t sector,
                       uint32_t len, bool out)
{
  put_hdr(f, HDR, type, sector);
  set_desc(q->desc, 0, gpa(HDR), 16, F_NEXT, 1);
  set_desc(q->desc, 1, gpa(DATA), len, (uint16_t)(F_NEXT | (out ? 0 : F_WRITE)), 2);
  set_desc(q->desc, 2, gpa(ST), 1, F_WRITE, 0);
  *st = ST;
  return 0;
}
static uint16_t b_zero_length_read(struct fe *f, struct dq *q, uint32_t *st)
{
  put_hdr(f, HDR, 0, 0);
  set_desc(q->desc, 0, gpa(HDR), 16, F_NEXT, 1);
  set_desc(q->desc, 1, gpa(ST), 1, F_WRITE, 0);
  *st = ST;
  return 0;
}
static uint16_t b_zero_length_write(struct fe *f, struct dq *q, uint32_t *st)
{
  return chain3(f, q, st, 1, 0, 0, true);
}
static uint16_t b_unaligned_length(struct fe *f, struct dq *q, uint32_t *st)
{
  return chain3(f, q, st, 1, 0, 100, true);
}
static uint16_t b_segment_too_big(struct fe *f, struct dq *q, uint32_t *st)
{
  return chain3(f, q, st, 0, 0, 2u << 20, false); /* above size_max (1M) */
}
static uint16_t b_read_past_end(struct fe *f, struct dq *q, uint32_t *st)
{
  return chain3(f, q, st, 0, DEV_SIZE / 512 - 4, 4096, false);
}
static uint16_t b_write_past_end(struct fe *f, struct dq *q, uint32_t *st)
{
  return chain3(f, q, st, 1, DEV_SIZE / 512, 512, true);
}
static uint16_t b_sector_overflow(struct fe *f, struct dq *q, uint32_t *st)
{
  return chain3(f, q, st, 1, UINT64_MAX - 1, 512, true);
}
static uint16_t b_unknown_type(struct fe *f, struct dq *q, uint32_t *st)
{
  return chain3(f, q, st, 99, 0, 512, false);
}
static uint16_t b_get_lifetime(struct fe *f, struct dq *q, uint32_t *st)
{
  return chain3(f, q, st, 10, 0, 12, false);
}
static uint16_t seg_req(struct fe *f, struct dq *q, uint32_t *st, uint32_t type, uint64_t sector,
                        uint32_t n, uint32_t flags, uint32_t nseg)
{
  uint32_t s[4] = { htole32((uint32_t)sector), htole32((uint32_t)(sector >> 32)), htole32(n),
                    htole32(flags) };
  for (uint32_t i = 0; i < nseg; i++)
    memcpy(f->mem + DATA + 16 * i, s, 16);
  return chain3(f, q, st, type, 0, 16 * nseg, true);
}
static uint16_t b_discard_unmap_flag(struct fe *f, struct dq *q, uint32_t *st)
{
  return seg_req(f, q, st, 11, 2048, 128, 1, 1);
}
static uint16_t b_write_zeroes_bad_flag(struct fe *f, struct dq *q, uint32_t *st)
{
  return seg_req(f, q, st, 13, 2048, 128, 2, 1);
}
static uint16_t b_discard_two_segments(struct fe *f, struct dq *q, uint32_t *st)
{
  return seg_req(f, q, st, 11, 2048, 128, 0, 2);
}
static uint16_t b_discard_zero_sectors(struct fe *f, struct dq *q, uint32_t *st)
{
  return seg_req(f, q, st, 11, 2048, 0, 0, 1);
}
static uint16_t b_write_zeroes_past_end(struct fe *f, struct dq *q, uint32_t *st)
{
  return seg_req(f, q, st, 13, DEV_SIZE / 512 - 64, 128, 0, 1);
}
static uint16_t b_discard_short_segment(struct fe *f, struct dq *q, uint32_t *st)
{
  seg_req(f, q, st, 11, 2048, 128, 0, 1);
  return chain3(f, q, st, 11, 0, 12, true);
}
static uint16_t b_too_many_segments(struct fe *f, struct dq *q, uint32_t *st)
{
  struct desc *t = (struct desc *)(f->mem + TBL);
  put_hdr(f, HDR, 0, 0);
  set_desc(t, 0, gpa(HDR), 16, F_NEXT, 1);
  for (unsigned i = 1; i <= 127; i++) /* one more than seg_max */
    set_desc(t, i, gpa(DATA + 512 * i), 512, F_NEXT | F_WRITE, (uint16_t)(i + 1));
  set_desc(t, 128, gpa(ST), 1, F_WRITE, 0);
  set_desc(q->desc, 0, gpa(TBL), 129 * 16, F_INDIRECT, 0);
  *st = ST;
  return 0;
}
static uint16_t b_indirect_nested(struct fe *f, struct dq *q, uint32_t *st)
{
  struct desc *t = (struct desc *)(f->mem + TBL);
  put_hdr(f, HDR, 0, 0);
  set_desc(t, 0, gpa(HDR), 16, F_NEXT, 1);
  set_desc(t, 1, gpa(TBL), 32, F_INDIRECT, 0);
  set_desc(q->desc, 0, gpa(TBL), 32, F_INDIRECT, 0);
  return 0;
}
static uint16_t b_indirect_with_next(struct fe *f, struct dq *q, uint32_t *st)
{
  struct desc *t = (struct desc *)(f->mem + TBL);
  put_hdr(f, HDR, 0, 0);
  set_desc(t, 0, gpa(HDR), 16, F_NEXT, 1);
  set_desc(t, 1, gpa(ST), 1, F_WRITE, 0);
  set_desc(q->desc, 0, gpa(TBL), 32, F_INDIRECT | F_NEXT, 1);
  set_desc(q->desc, 1, gpa(ST), 1, F_WRITE, 0);
  return 0;
}
static uint16_t b_indirect_bad_length(struct fe *f, struct dq *q, uint32_t *st)
{
  set_desc(q->desc, 0, gpa(TBL), 24, F_INDIRECT, 0);
  return 0;
}
static uint16_t b_indirect_empty(struct fe *f, struct dq *q, uint32_t *st)
{
  set_desc(q->desc, 0, gpa(TBL), 0, F_INDIRECT, 0);
  return 0;
}
static uint16_t b_indirect_outside_memory(struct fe *f, struct dq *q, uint32_t *st)
{
  set_desc(q->desc, 0, gpa(MEM_SIZE - 16), 64, F_INDIRECT, 0);
  return 0;
}
static uint16_t b_indirect_next_outside_table(struct fe *f, struct dq *q, uint32_t *st)
{
  struct desc *t = (struct desc *)(f->mem + TBL);
  put_hdr(f, HDR, 0, 0);
  set_desc(t, 0, gpa(HDR), 16, F_NEXT, 1);
  set_desc(t, 1, gpa(ST), 1, F_WRITE | F_NEXT, 2); /* the table has 2 entries */
  set_desc(q->desc, 0, gpa(TBL), 32, F_INDIRECT, 0);
  *st = ST;
  return 0;
}
static uint16_t b_indirect_loop(struct fe *f, struct dq *q, uint32_t *st)
{
  struct desc *t = (struct desc *)(f->mem + TBL);
  put_hdr(f, HDR, 0, 0);
  set_desc(t, 0, gpa(HDR), 16, F_NEXT, 1);
  set_desc(t, 1, gpa(DATA), 512, F_WRITE | F_NEXT, 2);
  set_desc(t, 2, gpa(ST), 1, F_WRITE | F_NEXT, 2);
  set_desc(q->desc, 0, gpa(TBL), 48, F_INDIRECT, 0);
  *st = ST;
  return 0;
}
static uint16_t b_indirect_after_direct(struct fe *f, struct dq *q, uint32_t *st)
{
  struct desc *t = (struct desc *)(f->mem + TBL);
  put_hdr(f, HDR, 0, 0);
  set_desc(t, 0, gpa(ST), 1, F_WRITE, 0);
  set_desc(q->desc, 0, gpa(HDR), 16, F_NEXT, 1);
  set_desc(q->desc, 1, gpa(TBL), 16, F_INDIRECT, 0);
  return 0;
}

static const struct bad bad_table[] = {
  { "head index outside the ring", b_head_out_of_ring, -1 },
  { "next index outside the ring", b_next_out_of_ring, 1 },
  { "a writable descriptor that loops to itself", b_loop_writable, 1 },
  { "a readable loop with no status", b_loop_readable, -1 },
  { "data outside guest memory", b_data_outside_memory, 1 },
  { "data running past the end of memory", b_data_past_memory_end, 1 },
  { "header below guest memory", b_hdr_below_memory, 1 },
  { "status outside guest memory", b_status_outside, -1 },
  { "no writable descriptor", b_no_writable, -1 },
  { "readable after writable", b_readable_after_writable, 1 },
  { "header shorter than 16 bytes", b_short_header, 1 },
  { "read of zero bytes", b_zero_length_read, 1 },
  { "write of zero bytes", b_zero_length_write, 1 },
  { "write of 100 bytes", b_unaligned_length, 1 },
  { "a 2M segment (size_max is 1M)", b_segment_too_big, 1 },
  { "127 segments (seg_max is 126)", b_too_many_segments, 1 },
  { "read past the end of the device", b_read_past_end, 1 },
  { "write at the capacity", b_write_past_end, 1 },
  { "sector number overflowing", b_sector_overflow, 1 },
  { "unknown request type", b_unknown_type, 2 },
  { "GET_LIFETIME (not offered)", b_get_lifetime, 2 },
  { "DISCARD with the unmap flag", b_discard_unmap_flag, 2 },
  { "WRITE_ZEROES with an unknown flag", b_write_zeroes_bad_flag, 2 },
  { "DISCARD of two segments (max_discard_seg is 1)", b_discard_two_segments, 1 },
  { "DISCARD of zero sectors", b_discard_zero_sectors, 1 },
  { "DISCARD segment of 12 bytes", b_discard_short_segment, 1 },
  { "WRITE_ZEROES past the end", b_write_zeroes_past_end, 1 },
  { "indirect table inside an indirect table", b_indirect_nested, -1 },
  { "indirect descriptor with NEXT", b_indirect_with_next, -1 },
  { "indirect table of 24 bytes", b_indirect_bad_length, -1 },
  { "indirect table of 0 bytes", b_indirect_empty, -1 },
  { "indirect table outside memory", b_indirect_outside_memory, -1 },
  { "indirect next outside its table", b_indirect_next_outside_table, 1 },
  { "loop inside an indirect table", b_indirect_loop, 1 },
  { "indirect after a direct descriptor", b_indirect_after_direct, -1 },
};

START_TEST(malformed_requests)
{
  struct fe f;
  fe_open(&f);
  pthread_t t;
  atomic_store(&q0_stop, false);
  atomic_store(&q0_done, 0);
  atomic_store(&q0_bad, 0);
  ck_assert_int_eq(pthread_create(&t, NULL, q0_main, &f), 0);
  uint8_t *before = malloc(MEM_SIZE);
  struct dq *q = &f.q[1];
  size_t n = sizeof bad_table / sizeof bad_table[0];
  for (size_t i = 0; i < n; i++) {
    const struct bad *b = &bad_table[i];
    memset(f.mem + B, 0x5a, MEM_SIZE - B);
    uint32_t st = 0;
    uint16_t head = b->build(&f, q, &st);
    if (st)
      f.mem[st] = 0xee;
    memcpy(before + B, f.mem + B, MEM_SIZE - B); /* queue 0's part is its thread's */
    int done0 = atomic_load(&q0_done);
    kick(q, head);
    uint32_t id, len;
    ck_assert_msg(wait_used(q, &id, &len), "%s: no used element", b->what);
    ck_assert_msg(id == head, "%s: used id %u, not %u", b->what, id, head);
    if (b->status < 0) {
      ck_assert_msg(len == 0, "%s: used len %u with no status byte", b->what, len);
    } else {
      ck_assert_msg(len == 1, "%s: used len %u", b->what, len);
      ck_assert_msg(f.mem[st] == b->status, "%s: status %u, not %d", b->what, f.mem[st], b->status);
      before[st] = (uint8_t)b->status;
    }
    /* Nothing else of queue 1's memory changed: not the data buffers of a
     * failed read, not the header, not the tables. */
    if (memcmp(f.mem + B, before + B, MEM_SIZE - B))
      for (uint32_t o = B; o < MEM_SIZE; o++)
        ck_assert_msg(f.mem[o] == before[o], "%s: guest byte at %#x changed (%#x -> %#x)", b->what,
                      o, before[o], f.mem[o]);
    /* Queue 0 keeps serving in the meantime. */
    for (int w = 0; w < 5000 && atomic_load(&q0_done) == done0; w++)
      usleep(1000);
    ck_assert_msg(atomic_load(&q0_done) > done0, "%s: queue 0 stalled", b->what);
  }
  /* A good request on queue 1 after all that. */
  ts_test_pattern(f.mem + DATA, 4096, 99);
  ck_assert_int_eq(simple_req(&f, 1, 1, 8192, DATA, 4096), 0);
  memcpy(model + (4u << 20), f.mem + DATA, 4096);
  /* Finally a guest that moves its available index by more than the ring:
   * queue 1 stops taking chains; queue 0 goes on. */
  q->avail_idx += QNUM + 1;
  kick(q, 0);
  usleep(100000);
  uint16_t used_before = le16toh(q->used[1]);
  int done0 = atomic_load(&q0_done);
  for (int w = 0; w < 5000 && atomic_load(&q0_done) < done0 + 3; w++)
    usleep(1000);
  ck_assert_int_ge(atomic_load(&q0_done), done0 + 3);
  ck_assert_uint_eq(le16toh(q->used[1]), used_before);
  atomic_store(&q0_stop, true);
  pthread_join(t, NULL);
  ck_assert_int_eq(atomic_load(&q0_bad), 0);
  ck_assert_int_gt(atomic_load(&q0_done), (int)n);
  /* The device outside queue 0's range holds what it held. */
  assert_device_is_model(Q0_DEV_RANGE, DEV_SIZE);
  free(before);
  fe_close(&f);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Sessions                                                                   */

START_TEST(reconnect_gets_a_fresh_session)
{
  struct fe f;
  fe_open(&f);
  ck_assert_uint_eq(ts_vhost_blk_sessions(srv), 1);
  /* Leave with requests on the ring. */
  ts_test_pattern(f.mem + 0x300000, 4096, 5);
  for (uint16_t i = 0; i < 8; i++) {
    put_hdr(&f, 0x200000 + 32 * i, 1, 4096 + 8 * i);
    set_desc(f.q[1].desc, 3 * i, gpa(0x200000 + 32 * i), 16, F_NEXT, 3 * i + 1);
    set_desc(f.q[1].desc, 3 * i + 1, gpa(0x300000), 4096, F_NEXT, 3 * i + 2);
    set_desc(f.q[1].desc, 3 * i + 2, gpa(0x200010 + 32 * i), 1, F_WRITE, 0);
    kick(&f.q[1], 3 * i);
  }
  fe_close(&f);
  /* A message larger than any the protocol has drops the connection. */
  int s = connect_to(sock_path);
  struct {
    uint32_t req, flags, size;
  } h = { 1, 1, 1u << 20 };
  ck_assert_int_eq(send(s, &h, sizeof h, MSG_NOSIGNAL), (ssize_t)sizeof h);
  char c;
  struct pollfd p = { s, POLLIN, 0 };
  ck_assert_int_eq(poll(&p, 1, 5000), 1);
  ck_assert_int_eq(recv(s, &c, 1, 0), 0);
  close(s);
  /* A memory table whose fds do not match is refused; the session goes on. */
  s = connect_to(sock_path);
  uint64_t proto = 0x209;
  send_msg(s, 16, 0, &proto, 8, NULL, 0);
  struct {
    uint32_t n, pad;
    uint64_t r[2][4];
  } mt = { 2, 0, { { 0 } } };
  ck_assert_uint_ne(acked(s, 5, &mt, sizeof mt, NULL, 0), 0);
  uint64_t qi = 7; /* no such queue */
  ck_assert_uint_ne(acked(s, 13, &qi, 8, NULL, 0), 0);
  ck_assert_uint_ne(get_u64(s, 1), 0);
  close(s);
  /* A new VMM gets a working device. */
  fe_open(&f);
  ck_assert_uint_eq(ts_vhost_blk_sessions(srv), 4);
  ts_test_pattern(f.mem + 0x300000, 8192, 6);
  ck_assert_int_eq(simple_req(&f, 1, 1, 6000, 0x300000, 8192), 0);
  memcpy(model + 6000 * 512, f.mem + 0x300000, 8192);
  assert_device_is_model(6000 * 512, 6000 * 512 + 8192);
  fe_close(&f);
}
END_TEST

START_TEST(stop_with_a_vmm_attached)
{
  struct fe f;
  fe_open(&f);
  ts_test_pattern(f.mem + 0x300000, 4096, 8);
  ck_assert_int_eq(simple_req(&f, 1, 1, 100, 0x300000, 4096), 0);
  memcpy(model + 100 * 512, f.mem + 0x300000, 4096);
  ck_assert_int_eq(ts_vhost_blk_stop(srv), 0);
  srv = NULL;
  /* The server closed our connection. */
  char c;
  ck_assert_int_eq(recv(f.sock, &c, 1, 0), 0);
  ck_assert_int_ne(access(sock_path, F_OK), 0);
  assert_device_is_model(0, DEV_SIZE);
  fe_close(&f);
  /* A socket a server still answers on is not taken over. */
  ts_error err = { 0 };
  ck_assert_int_eq(ts_vhost_blk_serve(vol, sock_path, NULL, &srv, &err), 0);
  ts_vhost_blk *second = NULL;
  ck_assert_int_eq(ts_vhost_blk_serve(vol, sock_path, NULL, &second, &err), -EADDRINUSE);
  ck_assert_ptr_nonnull(strstr(err.msg, sock_path));
}
END_TEST

int main(void)
{
  Suite *s = suite_create("vhost_blk");
  TCase *tc = tcase_create("vhost");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, config_and_features);
  tcase_add_test(tc, read_write_flush_id);
  tcase_add_test(tc, zeroes_discard_provision);
  tcase_add_test(tc, event_idx_signals);
  tcase_add_test(tc, malformed_requests);
  tcase_add_test(tc, reconnect_gets_a_fresh_session);
  tcase_add_test(tc, stop_with_a_vmm_attached);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
