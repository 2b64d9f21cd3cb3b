/* Ownership: one writer per file, shared readers, force-share, one layer per
 * file within a stack, locks that follow forks and execs as documented, and
 * read-only opens that create nothing. Real files, real processes. */
#include "testutil.h"

#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char *img;

static void setup(void)
{
  ts_test_dir_setup();
  img = ts_test_file("disk.img");
}

#define FILE_STACK                                                                            \
  "{ \"version\": 1, \"layers\": { \"d\": { \"type\": \"file\", \"path\": \"disk.img\", "     \
  "\"size\": \"4M\", \"create\": true } }, \"exports\": [\"d\"] }"

struct events {
  int n;
  char last[600];
};

static void on_event(ts_stack *s, const char *node, const char *event, const char *detail,
                     void *arg)
{
  (void)s;
  struct events *e = arg;
  if (strcmp(event, "force-share") == 0) {
    e->n++;
    snprintf(e->last, sizeof e->last, "%s: %s", node, detail);
  }
}

static int try_open(const char *json, uint32_t flags, struct events *ev, ts_stack **out,
                    ts_error *err)
{
  ts_open_opts o = { .struct_size = sizeof o, .flags = flags, .event = ev ? on_event : NULL,
                     .event_arg = ev };
  *out = NULL;
  memset(err, 0, sizeof *err);
  return ts_stack_open_string(json, ts_test_dir, &o, out, err);
}

/* "pid N (" for this process: the holder the messages must name. */
static char *me(void) { return ts_test_fmt("pid %d (", (int)getpid()); }

START_TEST(second_writer_same_process)
{
  ts_stack *a = ts_test_open(ts_test_dir, FILE_STACK), *b = NULL;
  ts_error err;
  ck_assert_int_eq(try_open(FILE_STACK, 0, NULL, &b, &err), -EBUSY);
  ck_assert_ptr_null(b);
  char *pid = me();
  ck_assert_msg(strstr(err.msg, "layers.d: ") && strstr(err.msg, "disk.img is in use by ") &&
                    strstr(err.msg, pid),
                "%s", err.msg);
  free(pid);
  /* A reader is refused too while the writer holds it. */
  ck_assert_int_eq(try_open(FILE_STACK, TS_OPEN_READ_ONLY, NULL, &b, &err), -EBUSY);
  ck_assert_msg(strstr(err.msg, "disk.img is open for writing by pid "), "%s", err.msg);
  ck_assert_int_eq(ts_stack_close(a, NULL), 0);
  /* Closing released it. */
  a = ts_test_open(ts_test_dir, FILE_STACK);
  ts_stack_close(a, NULL);
}
END_TEST

START_TEST(readers_share_and_keep_writers_out)
{
  ts_stack *w = ts_test_open(ts_test_dir, FILE_STACK), *r1 = NULL, *r2 = NULL, *x = NULL;
  ts_stack_close(w, NULL);
  ts_error err;
  ck_assert_int_eq(try_open(FILE_STACK, TS_OPEN_READ_ONLY, NULL, &r1, &err), 0);
  ck_assert_int_eq(try_open(FILE_STACK, TS_OPEN_READ_ONLY, NULL, &r2, &err), 0);
  ck_assert_int_eq(try_open(FILE_STACK, 0, NULL, &x, &err), -EBUSY);
  ck_assert_msg(strstr(err.msg, "disk.img is open read-only by pid "), "%s", err.msg);
  ts_stack_close(r1, NULL);
  ck_assert_int_eq(try_open(FILE_STACK, 0, NULL, &x, &err), -EBUSY);
  ts_stack_close(r2, NULL);
  ck_assert_int_eq(try_open(FILE_STACK, 0, NULL, &x, &err), 0);
  ts_stack_close(x, NULL);
}
END_TEST

START_TEST(force_share_reads_beside_a_writer)
{
  ts_stack *w = ts_test_open(ts_test_dir, FILE_STACK), *r = NULL;
  char buf[4096], back[4096];
  ts_test_pattern(buf, sizeof buf, 7);
  ck_assert_int_eq(ts_pwrite(ts_stack_dev(w, "d"), buf, sizeof buf, 8192, TS_IO_FUA), 0);
  struct events ev = { 0 };
  ts_error err;
  ck_assert_int_eq(try_open(FILE_STACK, TS_OPEN_READ_ONLY | TS_OPEN_FORCE_SHARE, &ev, &r, &err), 0);
  ck_assert_int_eq(ev.n, 1);
  char *pid = me();
  ck_assert_msg(strstr(ev.last, "d: ") && strstr(ev.last, "disk.img is open for writing by ") &&
                    strstr(ev.last, pid) && strstr(ev.last, "stale"),
                "%s", ev.last);
  free(pid);
  ck_assert_int_eq(ts_pread(ts_stack_dev(r, "d"), back, sizeof back, 8192), 0);
  ck_assert_mem_eq(buf, back, sizeof buf);
  /* force-share does not make a writer: a read-only stack stays read-only. */
  ck_assert(ts_dev_limits(ts_stack_dev(r, "d"))->read_only);
  ts_stack_close(r, NULL);
  /* Nor does it let a second writer in. */
  ck_assert_int_eq(try_open(FILE_STACK, TS_OPEN_FORCE_SHARE, NULL, &r, &err), -EBUSY);
  ts_stack_close(w, NULL);
  /* Without a writer there is nothing to warn about. */
  ev.n = 0;
  ck_assert_int_eq(try_open(FILE_STACK, TS_OPEN_READ_ONLY | TS_OPEN_FORCE_SHARE, &ev, &r, &err), 0);
  ck_assert_int_eq(ev.n, 0);
  ts_stack_close(r, NULL);
}
END_TEST

#define TWO_FILES(second)                                                                     \
  "{ \"version\": 1, \"layers\": { \"a\": { \"type\": \"file\", \"path\": \"disk.img\" }, "   \
  "\"b\": { \"type\": \"file\", \"path\": \"" second "\" } }, \"exports\": [\"a\", \"b\"] }"

static void two_layers_refused(const char *json, const char *second)
{
  for (int ro = 0; ro < 2; ro++) {
    ts_stack *s = NULL;
    ts_error err;
    ck_assert_int_eq(try_open(json, ro ? TS_OPEN_READ_ONLY : 0, NULL, &s, &err), -EBUSY);
    ck_assert_msg(strstr(err.msg, "layers.b.path: ") && strstr(err.msg, second) &&
                      strstr(err.msg, "layer \"a\"") && strstr(err.msg, "disk.img"),
                  "%s", err.msg);
  }
}

START_TEST(same_file_twice_in_one_stack)
{
  ts_stack_close(ts_test_open(ts_test_dir, FILE_STACK), NULL);
  char *sym = ts_test_path(ts_test_dir, "sym.img"), *hard = ts_test_path(ts_test_dir, "hard.img");
  ck_assert_int_eq(symlink("disk.img", sym), 0);
  ck_assert_int_eq(link(img, hard), 0);
  two_layers_refused(TWO_FILES("sym.img"), "sym.img");
  two_layers_refused(TWO_FILES("hard.img"), "hard.img");
  two_layers_refused(TWO_FILES("disk.img"), "disk.img");
  /* A pool with metadata and data on one file is refused before it is formatted. */
  const char *pool =
      "{ \"version\": 1, \"layers\": {"
      " \"meta\": { \"type\": \"file\", \"path\": \"disk.img\" },"
      " \"data\": { \"type\": \"file\", \"path\": \"sym.img\" },"
      " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
      "   \"block_size\": \"64K\", \"create\": true } }, \"exports\": [\"pool\"] }";
  ts_stack *s = NULL;
  ts_error err;
  ck_assert_int_eq(try_open(pool, 0, NULL, &s, &err), -EBUSY);
  ck_assert_msg(strstr(err.msg, "layers.data.path: ") && strstr(err.msg, "layer \"meta\""), "%s",
                err.msg);
  void *data;
  size_t len;
  ck_assert(ts_test_read_file(img, &data, &len));
  size_t i = 0;
  while (i < len && ((unsigned char *)data)[i] == 0)
    i++;
  ck_assert_msg(i == len, "byte %zu was written", i);
  free(data);
  free(sym);
  free(hard);
}
END_TEST

/* A forked child shares the parent's open file description (and so its
 * lock) for the fds it inherited, but a stack it opens itself is a new
 * writer like any other process's. */
START_TEST(forked_child_is_refused)
{
  ts_stack *s = ts_test_open(ts_test_dir, FILE_STACK);
  int parent = (int)getpid();
  int p[2];
  ck_assert_int_eq(pipe(p), 0);
  pid_t c = fork();
  ck_assert_int_ge(c, 0);
  if (c == 0) {
    close(p[0]);
    ts_stack *t = NULL;
    ts_error err;
    int r = try_open(FILE_STACK, 0, NULL, &t, &err);
    char line[600];
    int n = snprintf(line, sizeof line, "%d %s", r, err.msg);
    if (write(p[1], line, (size_t)n) < 0)
      _exit(3);
    _exit(0);
  }
  close(p[1]);
  char got[600] = "";
  ssize_t n = read(p[0], got, sizeof got - 1);
  close(p[0]);
  int st;
  ck_assert_int_eq(waitpid(c, &st, 0), c);
  ck_assert(n > 0);
  got[n] = '\0';
  ck_assert_int_eq(atoi(got), -EBUSY);
  char *pid = ts_test_fmt("pid %d (", parent);
  ck_assert_msg(strstr(got, "disk.img is in use by ") && strstr(got, pid), "%s", got);
  free(pid);
  ts_stack_close(s, NULL);
}
END_TEST

/* The fds are O_CLOEXEC: a program the holder runs does not keep the lock
 * after the stack closes. */
START_TEST(exec_child_does_not_keep_the_lock)
{
  ts_stack *s = ts_test_open(ts_test_dir, FILE_STACK);
  pid_t c = fork();
  ck_assert_int_ge(c, 0);
  if (c == 0) {
    execlp("sleep", "sleep", "30", (char *)NULL);
    _exit(127);
  }
  usleep(200 * 1000); /* let it exec */
  ts_stack_close(s, NULL);
  ts_stack *t = NULL;
  ts_error err;
  int r = try_open(FILE_STACK, 0, NULL, &t, &err);
  kill(c, SIGKILL);
  waitpid(c, NULL, 0);
  ck_assert_msg(r == 0, "%s", err.msg);
  ts_stack_close(t, NULL);
}
END_TEST

START_TEST(created_files_are_0600_and_mode_widens)
{
  umask(022);
  ts_stack_close(ts_test_open(ts_test_dir, FILE_STACK), NULL);
  struct stat st;
  ck_assert_int_eq(stat(img, &st), 0);
  ck_assert_uint_eq(st.st_mode & 07777, 0600);
  const char *wide = "{ \"version\": 1, \"layers\": { \"d\": { \"type\": \"file\", \"path\": "
                     "\"wide.img\", \"size\": \"1M\", \"create\": true, \"mode\": \"0640\" } }, "
                     "\"exports\": [\"d\"] }";
  ts_stack_close(ts_test_open(ts_test_dir, wide), NULL);
  char *w = ts_test_path(ts_test_dir, "wide.img");
  ck_assert_int_eq(stat(w, &st), 0);
  ck_assert_uint_eq(st.st_mode & 07777, 0640);
  free(w);
  const char *bad = "{ \"version\": 1, \"layers\": { \"d\": { \"type\": \"file\", \"path\": "
                    "\"bad.img\", \"size\": \"1M\", \"create\": true, \"mode\": \"0400\" } }, "
                    "\"exports\": [\"d\"] }";
  ts_stack *s = NULL;
  ts_error err;
  ck_assert_int_eq(try_open(bad, 0, NULL, &s, &err), -EINVAL);
  ck_assert_msg(strstr(err.msg, "layers.d.mode: "), "%s", err.msg);
}
END_TEST

static int count_entries(void)
{
  char *out = NULL;
  ts_test_run(&out, "ls -A '%s' | wc -l", ts_test_dir);
  int n = atoi(out ? out : "-1");
  free(out);
  return n;
}

START_TEST(read_only_creates_nothing)
{
  ts_stack *s = NULL;
  ts_error err;
  ck_assert_int_eq(try_open(FILE_STACK, TS_OPEN_READ_ONLY, NULL, &s, &err), -ENOENT);
  ck_assert_msg(strstr(err.msg, "disk.img does not exist") &&
                    strstr(err.msg, "open the stack for writing") && !strstr(err.msg, "set \""),
                "%s", err.msg);
  ck_assert_int_eq(count_entries(), 0);
  /* A pool whose files exist but whose metadata is blank is not formatted. */
  const char *pool =
      "{ \"version\": 1, \"layers\": {"
      " \"meta\": { \"type\": \"file\", \"path\": \"meta.img\", \"size\": \"4M\", \"create\": true },"
      " \"data\": { \"type\": \"file\", \"path\": \"data.img\", \"size\": \"8M\", \"create\": true },"
      " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
      "   \"block_size\": \"64K\", \"create\": true } }, \"exports\": [\"pool\"] }";
  ck_assert_int_eq(try_open(pool, TS_OPEN_READ_ONLY, NULL, &s, &err), -ENOENT);
  ck_assert_int_eq(count_entries(), 0);
  char *meta = ts_test_path(ts_test_dir, "meta.img"), *data = ts_test_path(ts_test_dir, "data.img");
  ck_assert_int_eq(truncate(meta, 0), -1);
  int fd = open(meta, O_RDWR | O_CREAT, 0600);
  ck_assert_int_eq(ftruncate(fd, 4 << 20), 0);
  close(fd);
  fd = open(data, O_RDWR | O_CREAT, 0600);
  ck_assert_int_eq(ftruncate(fd, 8 << 20), 0);
  close(fd);
  ck_assert_int_eq(try_open(pool, TS_OPEN_READ_ONLY, NULL, &s, &err), -ENODATA);
  ck_assert_msg(strstr(err.msg, "layers.pool.metadata: ") && strstr(err.msg, "formats nothing") &&
                    !strstr(err.msg, "set \""),
                "%s", err.msg);
  ck_assert_uint_eq(ts_test_allocated(meta), 0);
  /* Opened for writing, the same config formats it. */
  ck_assert_int_eq(try_open(pool, 0, NULL, &s, &err), 0);
  ts_stack_close(s, NULL);
  ck_assert_uint_gt(ts_test_allocated(meta), 0);
  free(meta);
  free(data);
}
END_TEST

/* A layer type of the kind a plugin would bring: it opens its file itself
 * and claims it through the public helper, so it follows the same rule. */
static const ts_param raw_params[] = {
  { "path", TS_PARAM_PATH, TS_PARAM_REQUIRED, NULL, NULL, "a file" },
  { NULL, 0, 0, NULL, NULL, NULL },
};

static int raw_open(ts_layer *l, const json_t *params, ts_error *err)
{
  char *path = ts_layer_path(l, ts_param_string(params, "path", ""));
  bool ro = ts_layer_force_read_only(l);
  int fd = open(path, (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  int r = fd < 0 ? ts_layer_error(l, err, -errno, "path", "cannot open %s", path)
                 : ts_layer_claim_fd(l, fd, path, !ro, err);
  free(path);
  if (r) {
    if (fd >= 0)
      close(fd);
    return r;
  }
  ts_layer_set_priv(l, (void *)(intptr_t)(fd + 1));
  return 0;
}

static void raw_close(ts_layer *l) { close((int)(intptr_t)ts_layer_priv(l) - 1); }

static int raw_limits(ts_layer *l, ts_limits *lim, ts_error *err)
{
  (void)l;
  (void)err;
  lim->size = 4 << 20;
  lim->read_only = true;
  return 0;
}

static int raw_submit(ts_layer *l, const ts_io *io)
{
  (void)l;
  (void)io;
  return -EOPNOTSUPP;
}

static const ts_layer_type raw_type = {
  TS_LAYER_TYPE_INIT,
  .name = "test-raw",
  .summary = "a file claimed through ts_layer_claim_fd",
  .params = raw_params,
  .open = raw_open,
  .close = raw_close,
  .limits = raw_limits,
  .submit = raw_submit,
};

START_TEST(plugin_layers_claim_through_the_helper)
{
  int r = ts_register_layer_type(&raw_type);
  ck_assert(r == 0 || r == -EEXIST);
  ts_stack_close(ts_test_open(ts_test_dir, FILE_STACK), NULL);
  const char *raw = "{ \"version\": 1, \"layers\": { \"r\": { \"type\": \"test-raw\", "
                    "\"path\": \"disk.img\" } }, \"exports\": [\"r\"] }";
  ts_stack *p = ts_test_open(ts_test_dir, raw), *f = NULL;
  ts_error err;
  /* The file layer is refused while the plugin layer holds the file ... */
  ck_assert_int_eq(try_open(FILE_STACK, 0, NULL, &f, &err), -EBUSY);
  ck_assert_msg(strstr(err.msg, "disk.img is in use by pid "), "%s", err.msg);
  ts_stack_close(p, NULL);
  /* ... and the other way round. */
  f = ts_test_open(ts_test_dir, FILE_STACK);
  ck_assert_int_eq(try_open(raw, 0, NULL, &p, &err), -EBUSY);
  ck_assert_msg(strstr(err.msg, "layers.r: ") && strstr(err.msg, "disk.img is in use by pid "),
                "%s", err.msg);
  ts_stack_close(f, NULL);
  /* One stack with both on the same file is refused naming both layers. */
  const char *both = "{ \"version\": 1, \"layers\": { \"d\": { \"type\": \"file\", "
                     "\"path\": \"disk.img\" }, \"r\": { \"type\": \"test-raw\", "
                     "\"path\": \"disk.img\" } }, \"exports\": [\"d\", \"r\"] }";
  ck_assert_int_eq(try_open(both, 0, NULL, &p, &err), -EBUSY);
  ck_assert_msg(strstr(err.msg, "layer \"d\"") || strstr(err.msg, "layer \"r\""), "%s", err.msg);
}
END_TEST

static Suite *suite(void)
{
  Suite *s = suite_create("ownership");
  TCase *t = tcase_create("ownership");
  tcase_add_checked_fixture(t, setup, ts_test_dir_teardown);
  tcase_add_test(t, second_writer_same_process);
  tcase_add_test(t, readers_share_and_keep_writers_out);
  tcase_add_test(t, force_share_reads_beside_a_writer);
  tcase_add_test(t, same_file_twice_in_one_stack);
  tcase_add_test(t, forked_child_is_refused);
  tcase_add_test(t, exec_child_does_not_keep_the_lock);
  tcase_add_test(t, created_files_are_0600_and_mode_widens);
  tcase_add_test(t, read_only_creates_nothing);
  tcase_add_test(t, plugin_layers_claim_through_the_helper);
  suite_add_tcase(s, t);
  return s;
}

int main(void) { return ts_test_main(suite()); }
