/* Helpers shared by the thin-pool test programs: a pool on sparse files in a
 * temporary folder, and Debian's thin_check as the oracle after each test. */
#ifndef TS_TEST_THIN_HELPERS_H
#define TS_TEST_THIN_HELPERS_H

#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct pool_opts {
  const char *block_size;   /* "64K" when NULL */
  const char *data_size;    /* "256M" when NULL */
  const char *meta_size;    /* "16M" when NULL */
  const char *extra;        /* more pool keys, e.g. "\"out_of_space\": \"queue\"", or NULL */
  const char *vols;         /* more layers after the pool, e.g. thin volumes, or NULL */
  const char *exports;      /* the exports array body, e.g. "\"v0\"" */
  bool no_create;           /* open existing files and pool only */
};

/* The JSON of a stack with "meta", "data" and "pool" plus opts->vols. */
static inline char *pool_json(const struct pool_opts *o)
{
  const char *c = o->no_create ? "" : ", \"create\": true";
  return ts_test_fmt(
      "{ \"version\": 1, \"layers\": {"
      " \"meta\": { \"type\": \"file\", \"path\": \"pool.meta\", \"size\": \"%s\"%s },"
      " \"data\": { \"type\": \"file\", \"path\": \"pool.data\", \"size\": \"%s\"%s },"
      " \"pool\": { \"type\": \"thin-pool\", \"metadata\": \"meta\", \"data\": \"data\","
      "   \"block_size\": \"%s\"%s%s%s }%s%s },"
      " \"exports\": [%s] }",
      o->meta_size ? o->meta_size : "16M", c, o->data_size ? o->data_size : "256M", c,
      o->block_size ? o->block_size : "64K", c, o->extra ? ", " : "", o->extra ? o->extra : "",
      o->vols ? ", " : "", o->vols ? o->vols : "", o->exports ? o->exports : "");
}

static inline ts_stack *pool_open(const char *dir, const struct pool_opts *o)
{
  char *j = pool_json(o);
  ts_stack *s = ts_test_open(dir, j);
  free(j);
  return s;
}

/* Debian's thin_check on the closed pool's metadata: exit 0 and nothing on
 * stderr but its progress lines. */
static inline void thin_check_clean(const char *dir)
{
  char *meta = ts_test_path(dir, "pool.meta");
  ts_test_assert_thin_check(meta);
  free(meta);
}

static inline void close_and_check(ts_stack *s, const char *dir)
{
  ts_error e = { 0 };
  ck_assert_msg(ts_stack_close(s, &e) == 0, "close: %s", e.msg);
  thin_check_clean(dir);
}

/* For main(): thin_check and thin_dump must be installed (Debian's
 * thin-provisioning-tools). ts_test_require_tool asserts, which Check only
 * allows inside a test. */
static inline void require_thin_tools(void)
{
  bool ok = system("command -v thin_check >/dev/null 2>&1 && command -v thin_dump >/dev/null 2>&1") == 0;
  ts_test_require(ok, "needs thin_check and thin_dump (package thin-provisioning-tools)");
}

static inline bool is_zero(const void *buf, size_t len)
{
  const unsigned char *p = buf;
  for (size_t i = 0; i < len; i++)
    if (p[i])
      return false;
  return true;
}

static inline ts_pool_status pool_status(ts_dev *pool)
{
  ts_pool_status st;
  ts_error e = { 0 };
  ck_assert_msg(ts_pool_get_status(pool, &st, &e) == 0, "%s", e.msg);
  return st;
}

/* Flags of the extent covering `off` (asks for [off, off+len)). */
static inline uint32_t extent_flags_at(ts_dev *d, uint64_t off, uint64_t len)
{
  ts_extent_list l = { 0 };
  ck_assert_int_eq(ts_block_status(d, off, len, &l), 0);
  ck_assert_uint_ge(l.n, 1);
  uint32_t f = l.v[0].flags;
  ck_assert_msg(l.v[0].offset == off, "first extent starts at %llu", (unsigned long long)l.v[0].offset);
  ck_assert_msg(l.v[0].length >= len, "range [%llu,+%llu) is not one extent (first %llu)",
                (unsigned long long)off, (unsigned long long)len, (unsigned long long)l.v[0].length);
  ts_extent_list_free(&l);
  return f;
}

#endif
