/* Helpers shared by the snapshot test programs (header-only: each test_*.c
 * is its own program). */
#ifndef TS_SNAPUTIL_H
#define TS_SNAPUTIL_H

#include "testutil.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define KiB 1024ull
#define MiB (1024ull * 1024)

/* Open with an event callback; fails the test with the library's message. */
static inline ts_stack *snap_open(const char *dir, const char *json, ts_event_fn fn, void *arg)
{
  ts_open_opts o = { .struct_size = sizeof o, .event = fn, .event_arg = arg };
  ts_stack *s = NULL;
  ts_error err = { 0 };
  int r = ts_stack_open_string(json, dir, &o, &s, &err);
  ck_assert_msg(r == 0, "stack did not open: %s (%s)", err.msg, ts_strerror(r));
  return s;
}

static inline ts_dev *node(ts_stack *s, const char *name)
{
  ts_dev *d = ts_stack_node(s, name);
  ck_assert_msg(d != NULL, "no node %s", name);
  return d;
}

/* The "layer" object of a node's status (caller decrefs). */
static inline json_t *layer_status(ts_stack *s, const char *name)
{
  char *txt = ts_dev_status_json(node(s, name));
  ck_assert_ptr_nonnull(txt);
  json_t *o = json_loads(txt, 0, NULL);
  free(txt);
  ck_assert_ptr_nonnull(o);
  json_t *l = json_incref(json_object_get(o, "layer"));
  json_decref(o);
  ck_assert_ptr_nonnull(l);
  return l;
}

static inline long long status_int(ts_stack *s, const char *name, const char *key)
{
  json_t *l = layer_status(s, name);
  json_t *v = json_object_get(l, key);
  ck_assert_msg(json_is_integer(v) || json_is_boolean(v), "status of %s has no %s", name, key);
  long long n = json_is_boolean(v) ? json_is_true(v) : (long long)json_integer_value(v);
  json_decref(l);
  return n;
}

/* Write a deterministic non-zero pattern over a whole new file of `size`. */
static inline void prefill(const char *dir, const char *file, uint64_t size, uint64_t seed)
{
  char *json = ts_test_fmt("{\"version\":1,\"layers\":{\"f\":{\"type\":\"file\",\"path\":\"%s\","
                           "\"size\":%llu,\"create\":true}}}",
                           file, (unsigned long long)size);
  ts_stack *s = ts_test_open(dir, json);
  unsigned char *buf = malloc(size);
  ts_test_pattern(buf, size, seed);
  ck_assert_int_eq(ts_pwrite(node(s, "f"), buf, size, 0, 0), 0);
  ck_assert_int_eq(ts_stack_close(s, NULL), 0);
  free(buf);
  free(json);
}

/* Read a node's whole contents (malloc'd). */
static inline unsigned char *read_all(ts_stack *s, const char *name)
{
  ts_dev *d = node(s, name);
  uint64_t n = ts_dev_size(d);
  unsigned char *b = malloc(n);
  ck_assert_int_eq(ts_pread(d, b, n, 0), 0);
  return b;
}

static inline uint32_t le32_at(const unsigned char *p)
{
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t le64_at(const unsigned char *p)
{
  return (uint64_t)le32_at(p) | (uint64_t)le32_at(p + 4) << 32;
}

#endif
