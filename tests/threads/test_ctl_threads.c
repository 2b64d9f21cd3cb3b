/* The control server beside the data path: two writer threads hammer a thin
 * volume while a client on the socket creates, snapshots, resizes and
 * deletes volumes, provisions and maps ranges, polls status and receives a
 * low-water event; a second client connects and drops mid-request. Every
 * write succeeds and reads back; the stack closes (stopping the server)
 * with the clients still connected. Run under TSan in CI. */
#include "testutil.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static const char *conf =
    "{\"version\":1,\"layers\":{"
    "\"meta\":{\"type\":\"memory\",\"size\":\"4M\"},"
    "\"data\":{\"type\":\"memory\",\"size\":\"128M\"},"
    "\"pool\":{\"type\":\"thin-pool\",\"metadata\":\"meta\",\"data\":\"data\",\"block_size\":\"64K\","
    "\"low_water_mark\":\"120M\",\"create\":true},"
    "\"vm0\":{\"type\":\"thin\",\"pool\":\"pool\",\"id\":0,\"size\":\"8M\",\"create\":true}},"
    "\"exports\":[\"vm0\"]}";

struct shared {
  ts_dev *dev;
  _Atomic int stop;
  _Atomic int bad;
};

struct writer {
  struct shared *sh;
  int id;
};

/* Writer i owns [i * 2M, (i + 1) * 2M) and checks every write reads back. */
static void *writer(void *arg)
{
  struct writer *w = arg;
  unsigned char buf[16384], back[16384];
  uint64_t x = (uint64_t)w->id + 7;
  for (int i = 0; !atomic_load(&w->sh->stop) || i < 50; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t off = (uint64_t)w->id * (2u << 20) + (x >> 40) % 128 * 16384;
    ts_test_pattern(buf, sizeof buf, x);
    if (ts_pwrite(w->sh->dev, buf, sizeof buf, off, 0) ||
        ts_pread(w->sh->dev, back, sizeof back, off) || memcmp(buf, back, sizeof buf))
      atomic_fetch_add(&w->sh->bad, 1);
  }
  return NULL;
}

static int connect_to(const char *path)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  return fd;
}

/* One line from fd (without its newline), a static buffer. */
static const char *read_line(int fd)
{
  static char line[1 << 20];
  size_t n = 0;
  while (n + 1 < sizeof line) {
    ssize_t r = read(fd, line + n, 1);
    ck_assert_int_eq(r, 1);
    if (line[n] == '\n')
      break;
    n++;
  }
  line[n] = '\0';
  return line;
}

/* Send a request; return its reply, skipping notifications (counted). */
static json_t *call(int fd, const char *req, int *events)
{
  size_t n = strlen(req);
  ck_assert_int_eq(write(fd, req, n), (ssize_t)n);
  ck_assert_int_eq(write(fd, "\n", 1), 1);
  for (;;) {
    json_t *j = json_loads(read_line(fd), 0, NULL);
    ck_assert_ptr_nonnull(j);
    if (!json_object_get(j, "method"))
      return j;
    (*events)++;
    json_decref(j);
  }
}

static void ok(int fd, const char *req, int *events)
{
  json_t *j = call(fd, req, events);
  ck_assert_msg(json_object_get(j, "result"), "%s failed: %s", req,
                json_string_value(json_object_get(json_object_get(j, "error"), "message")));
  json_decref(j);
}

START_TEST(ctl_beside_io)
{
  const char *dir = ts_test_dir;
  char *sock = ts_test_path(dir, "ctl.sock");
  ts_stack *s = NULL;
  ts_error err = { 0 };
  ck_assert_int_eq(ts_stack_open_string(conf, dir, NULL, &s, &err), 0);
  ck_assert_msg(ts_ctl_listen(s, sock, &err) == 0, "%s", err.msg);
  ck_assert_str_eq(ts_ctl_path(s), sock);
  ck_assert_int_eq(ts_ctl_listen(s, sock, &err), -EBUSY);

  struct shared sh = { .dev = ts_stack_dev(s, "vm0") };
  pthread_t th[2];
  struct writer w[2];
  for (int i = 0; i < 2; i++) {
    w[i] = (struct writer){ &sh, i };
    pthread_create(&th[i], NULL, writer, &w[i]);
  }
  int fd = connect_to(sock), events = 0;
  ok(fd, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"events.subscribe\"}", &events);
  /* A client that goes with half a request. */
  int half = connect_to(sock);
  ck_assert_int_eq(write(half, "{\"jsonrpc\":\"2.0\",\"id\":1,\"meth", 29), 29);
  close(half);
  int other = connect_to(sock); /* stays connected through the close */
  for (int i = 0; i < 10; i++) {
    char req[512];
    snprintf(req, sizeof req,
             "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"volume.create\",\"params\":{\"name\":\"v%d\","
             "\"size\":\"1M\"}}", i);
    ok(fd, req, &events);
    snprintf(req, sizeof req,
             "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"volume.snapshot\",\"params\":{\"origin\":"
             "\"vm0\",\"name\":\"s%d\"}}", i);
    ok(fd, req, &events);
    snprintf(req, sizeof req,
             "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"volume.resize\",\"params\":{\"name\":\"v%d\","
             "\"size\":\"2M\"}}", i);
    ok(fd, req, &events);
    ok(fd, "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"stack.status\"}", &events);
    ok(fd, "{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"pool.status\"}", &events);
    ok(fd, "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"io.map\",\"params\":{\"dev\":\"vm0\"}}",
       &events);
    snprintf(req, sizeof req,
             "{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"io.provision\",\"params\":{\"dev\":\"vm0\","
             "\"offset\":\"%dK\",\"length\":\"64K\"}}", 4096 + i * 64);
    ok(fd, req, &events);
    if (i % 2) {
      snprintf(req, sizeof req,
               "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"volume.delete\",\"params\":{\"name\":\"s%d\"}}",
               i - 1);
      ok(fd, req, &events);
    }
  }
  /* Past the low water mark (120M of 128M free): fill the rest of vm0. */
  ok(fd, "{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"io.provision\",\"params\":{\"dev\":\"vm0\","
         "\"offset\":0,\"length\":\"8M\"}}", &events);
  for (int i = 0; i < 100 && !events; i++)
    ok(fd, "{\"jsonrpc\":\"2.0\",\"id\":11,\"method\":\"rpc.methods\"}", &events);
  ck_assert_int_gt(events, 0);
  atomic_store(&sh.stop, 1);
  for (int i = 0; i < 2; i++)
    pthread_join(th[i], NULL);
  ck_assert_int_eq(atomic_load(&sh.bad), 0);
  /* Closing the stack stops the server under its connected clients. */
  ck_assert_msg(ts_stack_close(s, &err) == 0, "%s", err.msg);
  ck_assert_int_eq(access(sock, F_OK), -1);
  char c;
  ck_assert_int_le(read(other, &c, 1), 0);
  close(other);
  close(fd);
  free(sock);
}
END_TEST

int main(void)
{
  Suite *s = suite_create("ctl-threads");
  TCase *tc = tcase_create("threads");
  tcase_add_checked_fixture(tc, ts_test_dir_setup, ts_test_dir_teardown);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, ctl_beside_io);
  suite_add_tcase(s, tc);
  return ts_test_main(s);
}
