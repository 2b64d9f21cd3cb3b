/* Helpers shared by the kernel layer's tests: stacks over one kernel layer,
 * its status as JSON, and the backing files behind loop devices. */
#ifndef TS_KERNEL_TEST_H
#define TS_KERNEL_TEST_H

#include "testutil.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/sysmacros.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A stack with one exported kernel layer "k" over `path`; `extra` is more
 * JSON members for the layer (without a leading comma), or "". */
static inline ts_stack *kt_open(const char *dir, const char *path, const char *extra)
{
  char *j = ts_test_fmt("{\"version\": 1, \"layers\": {\"k\": {\"type\": \"kernel\", "
                        "\"path\": \"%s\"%s%s}}, \"exports\": [\"k\"]}",
                        path, extra[0] ? ", " : "", extra);
  ts_stack *s = ts_test_open(dir, j);
  free(j);
  return s;
}

static inline int kt_try_open(const char *dir, const char *path, const char *extra,
                              ts_stack **out, ts_error *err)
{
  char *j = ts_test_fmt("{\"version\": 1, \"layers\": {\"k\": {\"type\": \"kernel\", "
                        "\"path\": \"%s\"%s%s}}, \"exports\": [\"k\"]}",
                        path, extra[0] ? ", " : "", extra);
  int r = ts_test_try_open(dir, j, out, err);
  free(j);
  return r;
}

/* The layer part of the device's status, parsed; caller json_decref()s. */
static inline json_t *kt_status(ts_dev *d)
{
  char *s = ts_dev_status_json(d);
  ck_assert_ptr_nonnull(s);
  json_error_t je;
  json_t *all = json_loads(s, 0, &je);
  free(s);
  ck_assert_ptr_nonnull(all);
  json_t *layer = json_incref(json_object_get(all, "layer"));
  json_decref(all);
  ck_assert_ptr_nonnull(layer);
  return layer;
}

/* status.ops.<ladder>.<field> as a string ("path", "initial"). */
static inline const char *kt_ladder(json_t *st, const char *ladder, const char *field)
{
  json_t *v = json_object_get(json_object_get(json_object_get(st, "ops"), ladder), field);
  return json_is_string(v) ? json_string_value(v) : "";
}

/* status.kernel_calls.<path>.<field>, 0 when the path was never called. */
static inline uint64_t kt_calls(json_t *st, const char *path, const char *field)
{
  json_t *v = json_object_get(json_object_get(json_object_get(st, "kernel_calls"), path), field);
  return json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
}

static inline size_t kt_downgrades(json_t *st, const char *ladder)
{
  return json_array_size(
      json_object_get(json_object_get(json_object_get(st, "ops"), ladder), "downgrades"));
}

/* Read `len` bytes of a file at `off` (the backing file behind a loop device). */
static inline void kt_pread_file(const char *path, void *buf, size_t len, off_t off)
{
  int fd = open(path, O_RDONLY);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(pread(fd, buf, len, off), (ssize_t)len);
  close(fd);
}

/* PROVISION from a caller that holds nothing in the range. */
static inline int kt_provision_may_zero(ts_dev *d, uint64_t off, uint64_t len)
{
  ts_io io = { .op = TS_OP_PROVISION, .flags = TS_IO_MAY_ZERO, .offset = off, .length = len };
  return ts_submit(d, &io);
}

static inline uint64_t kt_refused(ts_dev *d)
{
  json_t *st = kt_status(d);
  uint64_t n = (uint64_t)json_integer_value(json_object_get(st, "provision_refused_would_zero"));
  json_decref(st);
  return n;
}

static inline bool kt_is_zero(const void *buf, size_t len)
{
  const unsigned char *p = buf;
  for (size_t i = 0; i < len; i++)
    if (p[i])
      return false;
  return true;
}

/* A sparse file of `size` bytes. */
static inline void kt_sparse(const char *path, uint64_t size)
{
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
  close(fd);
}

/* ------------------------------------------------------------------------ */
/* Loop devices (root). Each test program keeps its loop devices over files
 * in one folder whose fixture runs in the parent process (an unchecked
 * fixture), so kt_loop_detach_all() runs even when a test fails or crashes. */

struct kt_loop {
  char *img;   /* backing sparse file */
  char *dev;   /* /dev/loopN */
  unsigned maj, min;
};

/* Detach every loop device whose backing file lives in `dir`. */
static inline void kt_loop_detach_all(const char *dir)
{
  char *out = NULL;
  ts_test_run(&out, "losetup -n -l -O NAME,BACK-FILE");
  size_t dl = strlen(dir);
  char *save = NULL;
  for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char name[64], back[4096];
    if (sscanf(line, "%63s %4095s", name, back) == 2 && strncmp(back, dir, dl) == 0 &&
        back[dl] == '/') {
      char *o = NULL;
      if (ts_test_run(&o, "losetup -d %s", name) != 0)
        fprintf(stderr, "warning: losetup -d %s: %s\n", name, o);
      free(o);
    }
  }
  free(out);
}

/* A sparse file `name` of `size` bytes in `dir`, attached to a loop device. */
static inline struct kt_loop kt_loop_attach(const char *dir, const char *name, uint64_t size,
                                            bool ro)
{
  struct kt_loop l;
  l.img = ts_test_path(dir, name);
  kt_sparse(l.img, size);
  char *out = NULL;
  int rc = ts_test_run(&out, "losetup -f --show %s %s", ro ? "-r" : "", l.img);
  ck_assert_msg(rc == 0, "losetup failed: %s", out);
  out[strcspn(out, "\n")] = '\0';
  l.dev = out;
  struct stat st;
  ck_assert_int_eq(stat(l.dev, &st), 0);
  l.maj = major(st.st_rdev);
  l.min = minor(st.st_rdev);
  return l;
}

static inline void kt_loop_release(struct kt_loop *l)
{
  char *o = NULL;
  ts_test_run(&o, "losetup -d %s", l->dev);
  free(o);
  free(l->img);
  free(l->dev);
}

/* For main(): root, losetup, and a loop device that attaches; otherwise skip
 * (or fail under CI=true). Plain C: Check helpers only work inside tests. */
static inline void kt_loop_require(void)
{
  ts_test_require_root();
  ts_test_require_tool("losetup");
  char probe_dir[] = "/tmp/ts-kernel-probe-XXXXXX", img[64], cmd[256], out[256] = "";
  bool ok = mkdtemp(probe_dir) != NULL;
  snprintf(img, sizeof img, "%s/probe.img", probe_dir);
  FILE *f = ok ? fopen(img, "w") : NULL;
  ok = f && ftruncate(fileno(f), 1 << 20) == 0;
  if (f)
    fclose(f);
  if (ok) {
    snprintf(cmd, sizeof cmd, "losetup -f --show %s 2>&1", img);
    FILE *p = popen(cmd, "r");
    ok = p && fgets(out, sizeof out, p) != NULL;
    ok = p && pclose(p) == 0 && ok;
    out[strcspn(out, "\n")] = '\0';
    if (ok) {
      snprintf(cmd, sizeof cmd, "losetup -d %s", out);
      ok = system(cmd) == 0;
    }
  }
  unlink(img);
  rmdir(probe_dir);
  char why[512];
  snprintf(why, sizeof why, "needs loop devices (losetup -f --show said: %s)", out);
  ts_test_require(ok, why);
}

#endif
