/* The control server: JSON-RPC 2.0 over a Unix socket, one request per line.
 *
 * One libuv loop on its own thread accepts clients, reads lines and runs each
 * method to the end before reading on, so methods never overlap each other;
 * against the data path they rely on the locking of the library calls they
 * make, as any second thread of the holder would. Events come from whatever
 * thread raises them: they are queued under a mutex and the loop is woken
 * to send them to subscribers. */
#include "core/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define MAX_QUEUED_EVENTS 1024
/* A subscriber that does not read is dropped rather than letting its
 * replies pile up in memory. */
#define MAX_PENDING_WRITE (4u * 1024 * 1024)

struct ctl_event {
  struct ctl_event *next;
  char *line;
};

struct ctl_client {
  uv_pipe_t pipe;
  struct ts__ctl *ctl;
  struct ctl_client *next;
  char *line;
  size_t len;
  bool skipping; /* inside a line longer than TS_CTL_MAX_REQUEST */
  bool subscribed;
  bool closing;
  size_t pending; /* bytes written but not yet sent */
  char rbuf[16384];
};

struct ts__ctl {
  ts_stack *stack;
  char *path;
  uv_loop_t loop;
  uv_pipe_t server;
  uv_async_t wake;
  pthread_t thread;
  pthread_mutex_t mu; /* events and stop */
  struct ctl_event *ev_head, *ev_tail;
  size_t nev;
  bool stop;
  struct ctl_client *clients;
  dev_t sock_dev; /* the socket file made, to remove only that one */
  ino_t sock_ino;
};

/* Guards stack->ctl for the event hook, which may run on any thread while
 * the server stops. */
static pthread_mutex_t attach_mu = PTHREAD_MUTEX_INITIALIZER;

/* ------------------------------------------------------------------------ */
/* Parameters                                                                */

struct call {
  ts_stack *stack;
  struct ctl_client *client; /* NULL for ts_ctl_call */
  json_t *params;
  ts_error *err;
};

static int bad_param(struct call *c, const char *key, const char *why)
{
  return ts_error_set(c->err, -EINVAL, "params.%s: %s", key, why);
}

static int p_str(struct call *c, const char *key, bool required, const char **out)
{
  json_t *v = json_object_get(c->params, key);
  *out = NULL;
  if (!v)
    return required ? bad_param(c, key, "required (a string)") : 0;
  if (!json_is_string(v))
    return bad_param(c, key, "must be a string");
  *out = json_string_value(v);
  if (!**out || strlen(*out) != json_string_length(v))
    return bad_param(c, key, "must be a non-empty string without NUL");
  return 0;
}

static int p_bool(struct call *c, const char *key, bool *out)
{
  json_t *v = json_object_get(c->params, key);
  *out = false;
  if (!v)
    return 0;
  if (!json_is_boolean(v))
    return bad_param(c, key, "must be true or false");
  *out = json_is_true(v);
  return 0;
}

/* A size: a non-negative integer of bytes or a string with a K..P suffix. */
static int p_size(struct call *c, const char *key, bool required, uint64_t *out, bool *given)
{
  json_t *v = json_object_get(c->params, key);
  if (given)
    *given = v != NULL;
  if (!v)
    return required ? bad_param(c, key, "required (bytes, or a string such as \"1G\")") : 0;
  if (json_is_integer(v)) {
    if (json_integer_value(v) < 0)
      return bad_param(c, key, "must not be negative");
    *out = (uint64_t)json_integer_value(v);
    return 0;
  }
  if (json_is_string(v)) {
    int r = ts_parse_size(json_string_value(v), out);
    if (r == -ERANGE)
      return ts_error_set(c->err, -ERANGE, "params.%s: \"%s\" is above %llu bytes", key,
                          json_string_value(v), (unsigned long long)TS_SIZE_MAX);
    if (r)
      return bad_param(c, key, "is not a size (bytes, or a number with K, M, G, T or P)");
    return 0;
  }
  return bad_param(c, key, "must be an integer or a size string");
}

static int p_id(struct call *c, const char *key, uint32_t *out, bool *given)
{
  json_t *v = json_object_get(c->params, key);
  *given = v != NULL;
  if (!v)
    return 0;
  if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > TS_THIN_MAX_ID)
    return ts_error_set(c->err, -EINVAL, "params.%s: must be a volume id, 0..%u", key,
                        TS_THIN_MAX_ID);
  *out = (uint32_t)json_integer_value(v);
  return 0;
}

static int p_node(struct call *c, const char *key, ts_dev **out)
{
  const char *name;
  int r = p_str(c, key, true, &name);
  if (r)
    return r;
  *out = ts_stack_dev(c->stack, name);
  if (!*out)
    *out = ts_stack_node(c->stack, name);
  if (!*out)
    return ts_error_set(c->err, -ENOENT, "params.%s: the stack has no layer \"%s\"", key, name);
  return 0;
}

/* The pool named by params.pool, or the stack's only thin-pool. */
static int p_pool(struct call *c, const char **name, ts_dev **pool)
{
  int r = p_str(c, "pool", false, name);
  if (r)
    return r;
  if (*name) {
    *pool = ts_stack_node(c->stack, *name);
    if (!*pool)
      return ts_error_set(c->err, -ENOENT, "params.pool: the stack has no layer \"%s\"", *name);
    if (strcmp(ts_dev_type(*pool), "thin-pool") != 0)
      return ts_error_set(c->err, -EINVAL, "params.pool: layers.%s is a %s layer, not a thin-pool",
                          *name, ts_dev_type(*pool));
    return 0;
  }
  int n = 0;
  for (size_t i = 0; i < ts_stack_nnodes(c->stack); i++) {
    ts_dev *d = ts_stack_node_at(c->stack, i);
    if (strcmp(ts_dev_type(d), "thin-pool") == 0) {
      *pool = d;
      n++;
    }
  }
  if (n != 1)
    return ts_error_set(c->err, -EINVAL, "params.pool: the stack has %s thin-pool: name one",
                        n ? "more than one" : "no");
  *name = ts_dev_name(*pool);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Methods                                                                   */

typedef int (*method_fn)(struct call *c, json_t **result);

static json_t *status_of(ts_dev *d)
{
  json_t *j = ts__dev_status(d);
  return j ? j : json_null();
}

static int m_stack_info(struct call *c, json_t **res)
{
  json_t *nodes = json_array();
  for (size_t i = 0; i < ts_stack_nnodes(c->stack); i++) {
    ts_dev *d = ts_stack_node_at(c->stack, i);
    json_array_append_new(nodes, json_pack("{s:s,s:s,s:b,s:o}", "name", ts_dev_name(d), "type",
                                           ts_dev_type(d), "exported",
                                           ts_stack_dev(c->stack, ts_dev_name(d)) != NULL,
                                           "limits", ts__limits_to_json(ts_dev_limits(d))));
  }
  *res = json_pack("{s:o}", "nodes", nodes);
  return 0;
}

static int m_stack_status(struct call *c, json_t **res)
{
  const char *only;
  int r = p_str(c, "node", false, &only);
  if (r)
    return r;
  if (only && !ts_stack_node(c->stack, only))
    return ts_error_set(c->err, -ENOENT, "params.node: the stack has no layer \"%s\"", only);
  json_t *a = json_array();
  for (size_t i = 0; i < ts_stack_nnodes(c->stack); i++) {
    ts_dev *d = ts_stack_node_at(c->stack, i);
    if (!only || strcmp(only, ts_dev_name(d)) == 0)
      json_array_append_new(a, status_of(d));
  }
  *res = a;
  return 0;
}

static int m_dump_config(struct call *c, json_t **res)
{
  bool secrets;
  int r = p_bool(c, "secrets", &secrets);
  if (r)
    return r;
  char *txt = ts_stack_config_json(c->stack, secrets ? TS_CONFIG_SECRETS : 0);
  *res = txt ? json_loads(txt, JSON_DECODE_ANY, NULL) : NULL;
  free(txt);
  return *res ? 0 : ts_error_set(c->err, -ENOMEM, "dump-config: out of memory");
}

static json_t *volume_json(const ts_volume_info *v)
{
  return json_pack("{s:s?,s:s,s:i,s:I,s:I,s:I,s:f,s:s?,s:b,s:b,s:b}", "name",
                   v->name[0] ? v->name : NULL, "pool", v->pool, "id", (int)v->id, "size",
                   (json_int_t)v->size, "mapped_bytes", (json_int_t)v->mapped_bytes,
                   "provisioned_bytes", (json_int_t)v->provisioned_bytes, "data_percent",
                   v->size ? 100.0 * (double)v->mapped_bytes / (double)v->size : 0.0, "origin",
                   v->origin[0] ? v->origin : NULL, "in_config", v->name[0] != 0, "in_pool",
                   v->in_pool, "open", v->open);
}

static int list_volumes(struct call *c, const char *pool, ts_volume_info **out, size_t *n)
{
  *out = NULL;
  int r = ts_volume_list(c->stack, pool, NULL, 0, n, c->err);
  if (r)
    return r;
  *out = calloc(*n + 1, sizeof **out);
  if (!*out)
    return ts_error_set(c->err, -ENOMEM, "volume.list: out of memory");
  r = ts_volume_list(c->stack, pool, *out, *n, n, c->err);
  if (r) {
    free(*out);
    *out = NULL;
  }
  return r;
}

/* Each volume's exclusive and shared bytes, as `thin list` shows them. */
static int add_usage(struct call *c, const ts_volume_info *v, size_t n, json_t *a)
{
  ts_thin_usage *u = NULL;
  size_t nu = 0;
  uint64_t bs = 0;
  const char *upool = NULL;
  int r = 0;
  for (size_t i = 0; !r && i < n; i++) {
    ts_dev *pd = ts_stack_node(c->stack, v[i].pool);
    uint64_t ex = 0, sh = 0;
    if (v[i].in_pool && pd && (!upool || strcmp(upool, v[i].pool))) {
      ts_pool_status st;
      free(u);
      u = NULL;
      upool = v[i].pool;
      r = ts_pool_get_status(pd, &st, c->err);
      bs = st.block_size;
      if (!r)
        r = ts_pool_thin_usage(pd, NULL, 0, &nu, c->err);
      if (!r && !(u = calloc(nu + 1, sizeof *u)))
        r = ts_error_set(c->err, -ENOMEM, "volume.list: out of memory");
      if (!r)
        r = ts_pool_thin_usage(pd, u, nu, &nu, c->err);
    }
    for (size_t j = 0; !r && v[i].in_pool && u && j < nu; j++)
      if (u[j].id == v[i].id) {
        ex = u[j].exclusive_blocks * bs;
        sh = u[j].shared_blocks * bs;
      }
    json_object_set_new(json_array_get(a, i), "exclusive_bytes", json_integer((json_int_t)ex));
    json_object_set_new(json_array_get(a, i), "shared_bytes", json_integer((json_int_t)sh));
  }
  free(u);
  return r;
}

static int m_volume_list(struct call *c, json_t **res)
{
  const char *pool;
  ts_dev *pd;
  int r = p_str(c, "pool", false, &pool);
  if (!r && pool)
    r = p_pool(c, &pool, &pd);
  if (r)
    return r;
  ts_volume_info *v;
  size_t n;
  if ((r = list_volumes(c, pool, &v, &n)))
    return r;
  json_t *a = json_array();
  for (size_t i = 0; i < n; i++)
    json_array_append_new(a, volume_json(&v[i]));
  r = add_usage(c, v, n, a);
  free(v);
  if (r) {
    json_decref(a);
    return r;
  }
  *res = a;
  return 0;
}

static int delta_range_json(void *arg, const ts_delta_range *r)
{
  return json_array_append_new(arg, json_pack("[i,I,I,I,I]", (int)r->kind, (json_int_t)r->begin,
                                              (json_int_t)r->length, (json_int_t)r->left_data,
                                              (json_int_t)r->right_data))
             ? -ENOMEM
             : 0;
}

/* thin delta: the ranges as ts_pool_delta reports them, each
 * [kind, begin, length, left_data, right_data]. */
static int m_volume_delta(struct call *c, json_t **res)
{
  const char *pool;
  ts_dev *pd;
  uint32_t left = 0, right = 0;
  bool hl, hr, same;
  ts_pool_status st;
  int r = p_pool(c, &pool, &pd);
  if (!r)
    r = p_id(c, "left", &left, &hl);
  if (!r)
    r = p_id(c, "right", &right, &hr);
  if (!r && (!hl || !hr))
    r = bad_param(c, hl ? "right" : "left", "required (a volume id)");
  if (!r)
    r = p_bool(c, "same", &same);
  if (!r)
    r = ts_pool_get_status(pd, &st, c->err);
  json_t *a = json_array();
  uint64_t nodes = 0;
  if (!r)
    r = ts_pool_delta(pd, left, right, same ? TS_DELTA_WITH_SAME : 0, delta_range_json, a, &nodes,
                      c->err);
  if (r) {
    json_decref(a);
    return r;
  }
  *res = json_pack("{s:s,s:I,s:o,s:I}", "pool", pool, "block_size", (json_int_t)st.block_size,
                   "ranges", a, "metadata_nodes_read", (json_int_t)nodes);
  return 0;
}

static int m_volume_create(struct call *c, json_t **res)
{
  const char *name, *pool;
  ts_dev *pd;
  uint64_t size = 0;
  uint32_t id = TS_VOLUME_ANY_ID;
  bool has_id, exp;
  int r = p_str(c, "name", true, &name);
  if (!r)
    r = p_size(c, "size", true, &size, NULL);
  if (!r)
    r = p_id(c, "id", &id, &has_id);
  if (!r)
    r = p_bool(c, "export", &exp);
  if (!r)
    r = p_pool(c, &pool, &pd);
  if (!r)
    r = ts_volume_create(c->stack, pool, name, size, id, exp ? TS_VOLUME_EXPORT : 0, &id, c->err);
  if (!r)
    *res = json_pack("{s:s,s:i,s:I,s:s}", "name", name, "id", (int)id, "size", (json_int_t)size,
                     "pool", pool);
  return r;
}

static int m_volume_snapshot(struct call *c, json_t **res)
{
  const char *origin, *name;
  bool exp;
  uint32_t id = 0;
  int r = p_str(c, "origin", true, &origin);
  if (!r)
    r = p_str(c, "name", true, &name);
  if (!r)
    r = p_bool(c, "export", &exp);
  if (!r)
    r = ts_volume_snapshot(c->stack, origin, name, exp ? TS_VOLUME_EXPORT : 0, &id, c->err);
  if (r)
    return r;
  ts_dev *o = ts_stack_node(c->stack, origin);
  const char *pool = "";
  /* The new layer is not open in this stack: report its pool from the
   * volume list, which reads the configuration. */
  ts_volume_info *v;
  size_t n;
  json_t *pj = NULL;
  if (list_volumes(c, NULL, &v, &n) == 0) {
    for (size_t i = 0; i < n; i++)
      if (strcmp(v[i].name, name) == 0)
        pj = json_string(v[i].pool);
    free(v);
  }
  (void)o;
  ts_error_clear(c->err);
  *res = json_pack("{s:s,s:i,s:o,s:s}", "name", name, "id", (int)id, "pool",
                   pj ? pj : json_string(pool), "origin", origin);
  return 0;
}

static int m_volume_delete(struct call *c, json_t **res)
{
  const char *name, *pool;
  ts_dev *pd;
  uint32_t id = 0;
  bool has_id;
  int r = p_str(c, "name", false, &name);
  if (!r)
    r = p_id(c, "id", &id, &has_id);
  if (r)
    return r;
  if (!name == !has_id)
    return ts_error_set(c->err, -EINVAL, "params: give \"name\" (a layer) or \"id\" (a volume no "
                                         "layer names), not both or neither");
  if (name) {
    /* The pool, to say where it was deleted from. */
    ts_volume_info *v;
    size_t n;
    char pname[256] = "";
    if ((r = list_volumes(c, NULL, &v, &n)))
      return r;
    for (size_t i = 0; i < n; i++)
      if (strcmp(v[i].name, name) == 0)
        snprintf(pname, sizeof pname, "%s", v[i].pool);
    free(v);
    if ((r = ts_volume_delete(c->stack, name, c->err)))
      return r;
    *res = json_pack("{s:s,s:s}", "name", name, "pool", pname);
    return 0;
  }
  if ((r = p_pool(c, &pool, &pd)) || (r = ts_volume_delete_id(c->stack, pool, id, c->err)))
    return r;
  *res = json_pack("{s:i,s:s}", "id", (int)id, "pool", pool);
  return 0;
}

static int m_volume_resize(struct call *c, json_t **res)
{
  const char *name;
  uint64_t size = 0;
  bool discard;
  int r = p_str(c, "name", true, &name);
  if (!r)
    r = p_size(c, "size", true, &size, NULL);
  if (!r)
    r = p_bool(c, "discard_beyond", &discard);
  if (!r)
    r = ts_volume_resize(c->stack, name, size, discard ? TS_VOLUME_DISCARD_BEYOND : 0, c->err);
  if (!r)
    *res = json_pack("{s:s,s:I}", "name", name, "size", (json_int_t)size);
  return r;
}

/* io.*: a range of a device; the library checks alignment and bounds. */
static int io_range(struct call *c, ts_dev **d, uint64_t *off, uint64_t *len, bool len_required)
{
  int r = p_node(c, "dev", d);
  if (!r)
    r = p_size(c, "offset", len_required, off, NULL);
  bool given;
  if (!r)
    r = p_size(c, "length", len_required, len, &given);
  if (!r && !given)
    *len = *off < ts_dev_size(*d) ? ts_dev_size(*d) - *off : 0;
  return r;
}

/* The request path's reason when it gave one on this thread, else strerror. */
static const char *io_why(int r)
{
  return ts_last_errno() == r && ts_last_error() ? ts_last_error() : ts_strerror(r);
}

static int io_result(struct call *c, const char *what, ts_dev *d, uint64_t off, uint64_t len, int r,
                     json_t **res)
{
  /* Durable on return, as the CLI's range commands are. */
  if (!r)
    r = ts_flush(d);
  if (r)
    return ts_error_set(c->err, r, "layers.%s: %s of %llu bytes at %llu failed: %s", ts_dev_name(d),
                        what, (unsigned long long)len, (unsigned long long)off, io_why(r));
  *res = json_pack("{s:s,s:I,s:I}", "dev", ts_dev_name(d), "offset", (json_int_t)off, "length",
                   (json_int_t)len);
  return 0;
}

static int m_io_provision(struct call *c, json_t **res)
{
  ts_dev *d;
  uint64_t off = 0, len = 0;
  bool may_zero;
  int r = io_range(c, &d, &off, &len, true);
  if (!r)
    r = p_bool(c, "may_zero", &may_zero);
  if (r)
    return r;
  ts_io io = { .op = TS_OP_PROVISION, .flags = may_zero ? TS_IO_MAY_ZERO : 0, .offset = off,
               .length = len };
  return io_result(c, "provision", d, off, len, ts_submit(d, &io), res);
}

static int m_io_discard(struct call *c, json_t **res)
{
  ts_dev *d;
  uint64_t off = 0, len = 0;
  int r = io_range(c, &d, &off, &len, true);
  if (r)
    return r;
  return io_result(c, "discard", d, off, len, ts_discard(d, off, len), res);
}

static int m_io_write_zeroes(struct call *c, json_t **res)
{
  ts_dev *d;
  uint64_t off = 0, len = 0;
  bool unmap, nofallback;
  int r = io_range(c, &d, &off, &len, true);
  if (!r)
    r = p_bool(c, "may_unmap", &unmap);
  if (!r)
    r = p_bool(c, "no_fallback", &nofallback);
  if (r)
    return r;
  uint32_t f = (unmap ? TS_IO_MAY_UNMAP : 0) | (nofallback ? TS_IO_NOFALLBACK : 0);
  return io_result(c, "write-zeroes", d, off, len, ts_write_zeroes(d, off, len, f), res);
}

static int m_io_map(struct call *c, json_t **res)
{
  ts_dev *d;
  uint64_t off = 0, len = 0;
  int r = io_range(c, &d, &off, &len, false);
  if (r)
    return r;
  ts_extent_list l = { 0 };
  /* One bounded batch per call: a reply stays small whatever the range; the
   * caller continues from "next" while it is below offset+length. */
  r = len ? ts_block_status_bounded(d, off, len, 0, &l) : 0;
  if (r) {
    ts_extent_list_free(&l);
    return ts_error_set(c->err, r, "layers.%s: block status of %llu bytes at %llu failed: %s",
                        ts_dev_name(d), (unsigned long long)len, (unsigned long long)off,
                        io_why(r));
  }
  json_t *a = json_array();
  uint64_t next = off;
  for (size_t i = 0; i < l.n; i++) {
    json_array_append_new(a, json_pack("{s:I,s:I,s:i,s:b,s:b}", "offset",
                                       (json_int_t)l.v[i].offset, "length",
                                       (json_int_t)l.v[i].length, "flags", (int)l.v[i].flags,
                                       "hole", (l.v[i].flags & TS_EXTENT_HOLE) != 0, "zero",
                                       (l.v[i].flags & TS_EXTENT_ZERO) != 0));
    next = l.v[i].offset + l.v[i].length;
  }
  ts_extent_list_free(&l);
  *res = json_pack("{s:s,s:I,s:I,s:I,s:o}", "dev", ts_dev_name(d), "offset", (json_int_t)off,
                   "length", (json_int_t)len, "next", (json_int_t)next, "extents", a);
  return 0;
}

static const char *pool_mode(const ts_pool_status *st)
{
  return st->failed                  ? "failed"
         : st->read_only             ? "ro"
         : st->out_of_metadata_space ? "out_of_metadata_space"
         : st->out_of_data_space     ? "out_of_data_space"
                                     : "rw";
}

static int m_pool_status(struct call *c, json_t **res)
{
  const char *name;
  ts_dev *pool;
  ts_pool_status st;
  size_t n = 0;
  int r = p_pool(c, &name, &pool);
  if (!r)
    r = ts_pool_get_status(pool, &st, c->err);
  if (!r)
    r = ts_pool_list_thins(pool, NULL, 0, &n, c->err);
  if (r)
    return r;
  ts_thin_info *v = calloc(n + 1, sizeof *v);
  if (!v)
    return ts_error_set(c->err, -ENOMEM, "pool.status: out of memory");
  if ((r = ts_pool_list_thins(pool, v, n, &n, c->err))) {
    free(v);
    return r;
  }
  /* The fields and order of `thinstack pool status --json`. */
  json_t *o = json_pack(
      "{s:s,s:I,s:I,s:{s:I,s:I,s:I},s:{s:I,s:I,s:b},s:s,s:I,s:b,s:s,s:b,s:b,s:b,s:I}", "pool", name,
      "block_size", (json_int_t)st.block_size, "transaction_id", (json_int_t)st.transaction_id,
      "data", "blocks", (json_int_t)st.data_blocks, "used", (json_int_t)st.data_used_blocks,
      "free", (json_int_t)st.data_free_blocks, "metadata", "blocks",
      (json_int_t)st.metadata_blocks, "used", (json_int_t)st.metadata_used_blocks, "out_of_space",
      st.out_of_metadata_space, "mode", pool_mode(&st), "low_water_mark",
      (json_int_t)st.low_water_mark, "low_water", st.low_water, "out_of_space",
      st.queue_if_no_space ? "queue" : "error", "discard_passdown", st.discard_passdown,
      "zero_new_blocks", st.zero_new_blocks, "needs_check", st.needs_check, "held_metadata_root",
      (json_int_t)st.held_metadata_root);
  json_t *a = json_array();
  for (size_t i = 0; i < n; i++)
    json_array_append_new(a, json_pack("{s:i,s:I,s:I}", "id", (int)v[i].id, "mapped_blocks",
                                       (json_int_t)v[i].mapped_blocks, "mapped_bytes",
                                       (json_int_t)v[i].mapped_bytes));
  free(v);
  json_object_set_new(o, "volumes", a);
  *res = o;
  return 0;
}

static int pool_extend(struct call *c, json_t **res, bool meta)
{
  const char *name;
  ts_dev *pool;
  ts_pool_status st;
  uint64_t size = 0;
  int r = p_pool(c, &name, &pool);
  if (!r)
    r = p_size(c, "size", true, &size, NULL);
  if (!r)
    r = ts_pool_get_status(pool, &st, c->err);
  if (r)
    return r;
  uint64_t unit = meta ? 4096 : st.block_size;
  uint64_t had = (meta ? st.metadata_blocks : st.data_blocks) * unit;
  if ((r = ts_stack_pool_extend(c->stack, name, size, meta ? TS_POOL_EXTEND_METADATA : 0, c->err)))
    return r;
  *res = json_pack("{s:s,s:s,s:I,s:I,s:b}", "pool", name, "space", meta ? "metadata" : "data",
                   "size", (json_int_t)size, "blocks", (json_int_t)(size / unit), "grown",
                   size > had);
  return 0;
}

static int m_pool_extend(struct call *c, json_t **res)
{
  return pool_extend(c, res, false);
}

static int m_pool_extend_metadata(struct call *c, json_t **res)
{
  return pool_extend(c, res, true);
}

static int m_pool_reserve(struct call *c, json_t **res)
{
  const char *name;
  ts_dev *pool;
  int r = p_pool(c, &name, &pool);
  if (!r)
    r = ts_pool_reserve_metadata_snap(pool, c->err);
  if (!r)
    *res = json_pack("{s:s}", "pool", name);
  return r;
}

static int m_pool_release(struct call *c, json_t **res)
{
  const char *name;
  ts_dev *pool;
  int r = p_pool(c, &name, &pool);
  if (!r)
    r = ts_pool_release_metadata_snap(pool, c->err);
  if (!r)
    *res = json_pack("{s:s}", "pool", name);
  return r;
}

static int m_layer_message(struct call *c, json_t **res)
{
  ts_dev *d;
  const char *msg;
  int r = p_node(c, "node", &d);
  if (!r)
    r = p_str(c, "message", true, &msg);
  if (!r)
    r = ts_dev_message(d, msg, c->err);
  if (!r)
    *res = json_pack("{s:s,s:s}", "node", ts_dev_name(d), "message", msg);
  return r;
}

static int m_events_subscribe(struct call *c, json_t **res)
{
  if (!c->client)
    return ts_error_set(c->err, -EOPNOTSUPP,
                        "events.subscribe: events need a connection (the control socket)");
  if (c->client->subscribed)
    return ts_error_set(c->err, -EALREADY, "events.subscribe: this connection is subscribed");
  c->client->subscribed = true;
  *res = json_pack("{s:b}", "subscribed", 1);
  return 0;
}

static int m_rpc_methods(struct call *c, json_t **res);

struct method {
  const char *name;
  method_fn fn;
  const char *params; /* "name:type" words; a trailing ? marks optional */
  const char *summary;
};

static const struct method methods[] = {
  { "rpc.methods", m_rpc_methods, "", "every method with its parameters" },
  { "stack.info", m_stack_info, "", "each node's type and stacked limits (thinstack info --json)" },
  { "stack.status", m_stack_status, "node:string?",
    "counters and layer state of each node, or one (thinstack status)" },
  { "dump-config", m_dump_config, "secrets:bool?",
    "the configuration that re-opens the stack as it is now" },
  { "volume.list", m_volume_list, "pool:string?", "the volumes (thinstack thin list --json)" },
  { "volume.delta", m_volume_delta, "left:integer right:integer pool:string? same:bool?",
    "the ranges that differ between two volumes (thinstack thin delta)" },
  { "volume.create", m_volume_create, "name:string size:size pool:string? id:integer? export:bool?",
    "create an empty volume and its layer" },
  { "volume.snapshot", m_volume_snapshot, "origin:string name:string export:bool?",
    "snapshot a volume (an open one is quiesced for the instant) as a new layer" },
  { "volume.delete", m_volume_delete, "name:string? id:integer? pool:string?",
    "delete a layer's volume and the layer, or a volume no layer names" },
  { "volume.resize", m_volume_resize, "name:string size:size discard_beyond:bool?",
    "grow a volume, or shrink one that is not open" },
  { "io.provision", m_io_provision, "dev:string offset:size length:size may_zero:bool?",
    "reserve space for a range" },
  { "io.discard", m_io_discard, "dev:string offset:size length:size", "release a range" },
  { "io.write-zeroes", m_io_write_zeroes,
    "dev:string offset:size length:size may_unmap:bool? no_fallback:bool?",
    "make a range read as zeroes" },
  { "io.map", m_io_map, "dev:string offset:size? length:size?",
    "block status of a range, one bounded batch of extents" },
  { "pool.status", m_pool_status, "pool:string?", "a pool's state (thinstack pool status --json)" },
  { "pool.extend", m_pool_extend, "pool:string? size:size", "grow a pool's data space" },
  { "pool.extend-metadata", m_pool_extend_metadata, "pool:string? size:size",
    "grow a pool's metadata space" },
  { "pool.reserve-metadata-snap", m_pool_reserve, "pool:string?",
    "keep a copy of the metadata for thin_dump -m" },
  { "pool.release-metadata-snap", m_pool_release, "pool:string?", "drop that copy" },
  { "layer.message", m_layer_message, "node:string message:string",
    "send a layer one of its verbs (log-writes: mark NAME)" },
  { "events.subscribe", m_events_subscribe, "",
    "receive the stack's events as \"event\" notifications on this connection" },
};
#define NMETHODS (sizeof methods / sizeof methods[0])

static json_t *params_of(const struct method *m)
{
  json_t *o = json_object();
  char buf[256];
  snprintf(buf, sizeof buf, "%s", m->params);
  for (char *save, *w = strtok_r(buf, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
    char *colon = strchr(w, ':');
    size_t n = strlen(colon + 1);
    bool opt = colon[n] == '?';
    if (opt)
      colon[n] = '\0';
    *colon = '\0';
    json_object_set_new(o, w, json_pack("{s:s,s:b}", "type", colon + 1, "required", !opt));
  }
  return o;
}

static int m_rpc_methods(struct call *c, json_t **res)
{
  json_t *a = json_array();
  for (size_t i = 0; i < NMETHODS; i++)
    json_array_append_new(a, json_pack("{s:s,s:s,s:o}", "name", methods[i].name, "summary",
                                       methods[i].summary, "params", params_of(&methods[i])));
  *res = a;
  return 0;
}

/* A parameter the method does not take: refused, so that a typo never
 * silently means the default. */
static int check_param_names(struct call *c, const struct method *m)
{
  const char *k;
  json_t *v;
  json_object_foreach(c->params, k, v) {
    size_t n = strlen(k);
    bool known = false;
    for (const char *p = m->params; *p && !known; p = strchr(p, ' ') ? strchr(p, ' ') + 1 : "")
      known = strncmp(p, k, n) == 0 && p[n] == ':';
    if (!known)
      return ts_error_set(c->err, -EINVAL, "params.%s: %s takes no such parameter", k, m->name);
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Requests and replies                                                      */

/* JSON-RPC's own codes; a method's failure has code -errno (outside the
 * reserved -32768..-32000 range) and data naming the errno and the path. */
#define RPC_PARSE_ERROR -32700
#define RPC_INVALID_REQUEST -32600
#define RPC_METHOD_NOT_FOUND -32601
#define RPC_INVALID_PARAMS -32602

/* The JSON path or file a library message starts with ("layers.pool: ..."). */
static json_t *path_of(const char *msg)
{
  const char *colon = strstr(msg, ": ");
  if (!colon || colon == msg || memchr(msg, ' ', (size_t)(colon - msg)))
    return json_string("");
  return json_stringn(msg, (size_t)(colon - msg));
}

static char *reply_error(json_t *id, int rpc_code, int errcode, const char *msg)
{
  json_t *data = json_pack("{s:s,s:o}", "errno", ts_err_name(errcode), "path", path_of(msg));
  json_t *r = json_pack("{s:s,s:O,s:{s:i,s:s,s:o}}", "jsonrpc", "2.0", "id", id ? id : json_null(),
                        "error", "code", rpc_code ? rpc_code : errcode, "message", msg, "data",
                        data);
  char *txt = r ? json_dumps(r, JSON_COMPACT) : NULL;
  json_decref(r);
  return txt;
}

static char *handle(ts_stack *stack, struct ctl_client *client, const char *line, size_t len)
{
  ts_error err = { 0 };
  json_error_t je;
  json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
  if (!req) {
    ts_error_set(&err, -EINVAL, "request: not JSON at column %d: %s", je.column, je.text);
    return reply_error(NULL, RPC_PARSE_ERROR, -EINVAL, err.msg);
  }
  json_t *id = json_object_get(req, "id");
  char *out = NULL;
  if (!json_is_object(req)) {
    out = reply_error(NULL, RPC_INVALID_REQUEST, -EINVAL, "request: must be a JSON object");
    goto done;
  }
  if (id && !json_is_string(id) && !json_is_integer(id) && !json_is_null(id)) {
    out = reply_error(NULL, RPC_INVALID_REQUEST, -EINVAL,
                      "id: must be a string, an integer or null");
    goto done;
  }
  const char *ver = json_string_value(json_object_get(req, "jsonrpc"));
  if (!ver || strcmp(ver, "2.0") != 0) {
    out = reply_error(id, RPC_INVALID_REQUEST, -EINVAL, "jsonrpc: must be \"2.0\"");
    goto done;
  }
  json_t *mj = json_object_get(req, "method");
  if (!json_is_string(mj)) {
    out = reply_error(id, RPC_INVALID_REQUEST, -EINVAL,
                      mj ? "method: must be a string" : "method: required");
    goto done;
  }
  const char *name = json_string_value(mj);
  const struct method *m = NULL;
  for (size_t i = 0; i < NMETHODS && !m; i++)
    if (strcmp(methods[i].name, name) == 0)
      m = &methods[i];
  if (!m) {
    ts_error_set(&err, -ENOSYS, "method: no method \"%.200s\" (rpc.methods lists them)", name);
    out = reply_error(id, RPC_METHOD_NOT_FOUND, -ENOSYS, err.msg);
    goto done;
  }
  json_t *params = json_object_get(req, "params");
  if (params && !json_is_object(params)) {
    out = reply_error(id, RPC_INVALID_PARAMS, -EINVAL, "params: must be an object");
    goto done;
  }
  json_t *empty = json_object();
  struct call c = { .stack = stack, .client = client, .params = params ? params : empty,
                    .err = &err };
  json_t *result = NULL;
  int r = check_param_names(&c, m);
  if (!r)
    r = m->fn(&c, &result);
  json_decref(empty);
  if (r) {
    if (!err.msg[0])
      ts_error_set(&err, r, "%s: %s", name, ts_strerror(r));
    out = reply_error(id, strncmp(err.msg, "params", 6) == 0 ? RPC_INVALID_PARAMS : 0, r, err.msg);
    json_decref(result);
    goto done;
  }
  json_t *rep = json_pack("{s:s,s:O,s:o}", "jsonrpc", "2.0", "id", id ? id : json_null(), "result",
                          result ? result : json_object());
  out = rep ? json_dumps(rep, JSON_COMPACT) : NULL;
  json_decref(rep);
done:
  json_decref(req);
  return out;
}

char *ts_ctl_call(ts_stack *stack, const char *request, size_t len)
{
  if (len > TS_CTL_MAX_REQUEST)
    return reply_error(NULL, RPC_INVALID_REQUEST, -E2BIG, "request: longer than 65536 bytes");
  return handle(stack, NULL, request, len);
}

/* ------------------------------------------------------------------------ */
/* The loop                                                                  */

struct wreq {
  uv_write_t req;
  struct ctl_client *client;
  size_t len;
  char data[];
};

static void on_closed(uv_handle_t *h)
{
  struct ctl_client *cl = h->data;
  free(cl->line);
  free(cl);
}

static void drop_client(struct ctl_client *cl)
{
  if (cl->closing)
    return;
  cl->closing = true;
  for (struct ctl_client **p = &cl->ctl->clients; *p; p = &(*p)->next)
    if (*p == cl) {
      *p = cl->next;
      break;
    }
  uv_close((uv_handle_t *)&cl->pipe, on_closed);
}

static void on_written(uv_write_t *req, int status)
{
  struct wreq *w = (struct wreq *)req;
  /* The client may be closing; libuv calls this before its close callback. */
  w->client->pending -= w->len;
  if (status < 0)
    drop_client(w->client);
  free(w);
}

/* Queue `txt` and a newline to the client; takes `txt`. */
static void send_line(struct ctl_client *cl, char *txt)
{
  if (!txt || cl->closing) {
    free(txt);
    return;
  }
  size_t n = strlen(txt);
  if (cl->pending + n + 1 > MAX_PENDING_WRITE) {
    free(txt);
    drop_client(cl);
    return;
  }
  struct wreq *w = malloc(sizeof *w + n + 1);
  if (!w) {
    free(txt);
    return;
  }
  memcpy(w->data, txt, n);
  w->data[n] = '\n';
  free(txt);
  w->client = cl;
  w->len = n + 1;
  uv_buf_t b = uv_buf_init(w->data, (unsigned)(n + 1));
  cl->pending += w->len;
  if (uv_write(&w->req, (uv_stream_t *)&cl->pipe, &b, 1, on_written) < 0) {
    cl->pending -= w->len;
    free(w);
    drop_client(cl);
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
  struct ctl_client *cl = h->data;
  *buf = uv_buf_init(cl->rbuf, sizeof cl->rbuf);
}

static void take_bytes(struct ctl_client *cl, const char *p, size_t n)
{
  while (n && !cl->closing) {
    const char *nl = memchr(p, '\n', n);
    size_t part = nl ? (size_t)(nl - p) : n;
    if (!cl->skipping) {
      if (cl->len + part > TS_CTL_MAX_REQUEST) {
        cl->skipping = true;
        cl->len = 0;
        send_line(cl, reply_error(NULL, RPC_INVALID_REQUEST, -E2BIG,
                                  "request: longer than 65536 bytes (skipped to its newline)"));
      } else {
        memcpy(cl->line + cl->len, p, part);
        cl->len += part;
      }
    }
    if (!nl)
      return;
    if (!cl->skipping) {
      size_t len = cl->len;
      while (len && cl->line[len - 1] == '\r')
        len--;
      bool blank = true;
      for (size_t i = 0; i < len && blank; i++)
        blank = cl->line[i] == ' ' || cl->line[i] == '\t';
      if (!blank)
        send_line(cl, handle(cl->ctl->stack, cl, cl->line, len));
    }
    cl->skipping = false;
    cl->len = 0;
    p += part + 1;
    n -= part + 1;
  }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
  struct ctl_client *cl = s->data;
  if (nread < 0) {
    /* EOF or error: a request not ended by a newline is never run. */
    drop_client(cl);
    return;
  }
  take_bytes(cl, buf->base, (size_t)nread);
}

static void on_connection(uv_stream_t *server, int status)
{
  struct ts__ctl *c = server->data;
  if (status < 0)
    return;
  struct ctl_client *cl = calloc(1, sizeof *cl);
  if (!cl)
    return;
  cl->line = malloc(TS_CTL_MAX_REQUEST);
  cl->ctl = c;
  uv_pipe_init(&c->loop, &cl->pipe, 0);
  cl->pipe.data = cl;
  cl->next = c->clients;
  c->clients = cl;
  if (!cl->line || uv_accept(server, (uv_stream_t *)&cl->pipe) < 0) {
    drop_client(cl);
    return;
  }
  uv_os_fd_t fd;
  struct ucred cred;
  socklen_t cl_len = sizeof cred;
  if (uv_fileno((uv_handle_t *)&cl->pipe, &fd) < 0 ||
      getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl_len) < 0 ||
      (cred.uid != 0 && cred.uid != geteuid())) {
    char msg[160];
    snprintf(msg, sizeof msg, "control: uid %ld may not use this socket (owner uid %ld or root)",
             cl_len == sizeof cred ? (long)cred.uid : -1L, (long)geteuid());
    /* Written now, not queued: closing the handle right after would cancel
     * a queued write, and the peer would see the socket close unexplained.
     * A fresh socket's buffer takes the one short line whole. */
    char *txt = reply_error(NULL, 0, -EACCES, msg);
    if (txt) {
      size_t n = strlen(txt);
      char line[512];
      if (n < sizeof line) {
        memcpy(line, txt, n);
        line[n] = '\n';
        uv_buf_t b = uv_buf_init(line, (unsigned)(n + 1));
        (void)uv_try_write((uv_stream_t *)&cl->pipe, &b, 1);
      }
      free(txt);
    }
    drop_client(cl);
    return;
  }
  uv_read_start((uv_stream_t *)&cl->pipe, on_alloc, on_read);
}

static void on_wake(uv_async_t *a)
{
  struct ts__ctl *c = a->data;
  pthread_mutex_lock(&c->mu);
  struct ctl_event *e = c->ev_head;
  c->ev_head = c->ev_tail = NULL;
  c->nev = 0;
  bool stop = c->stop;
  pthread_mutex_unlock(&c->mu);
  while (e) {
    struct ctl_event *next = e->next;
    for (struct ctl_client *cl = c->clients, *nx; cl; cl = nx) {
      nx = cl->next;
      if (cl->subscribed)
        send_line(cl, strdup(e->line));
    }
    free(e->line);
    free(e);
    e = next;
  }
  if (stop) {
    while (c->clients)
      drop_client(c->clients);
    uv_close((uv_handle_t *)&c->server, NULL);
    uv_close((uv_handle_t *)&c->wake, NULL);
  }
}

static void *loop_main(void *arg)
{
  struct ts__ctl *c = arg;
  uv_run(&c->loop, UV_RUN_DEFAULT);
  return NULL;
}

void ts__ctl_event(ts_stack *s, const char *node, const char *event, const char *detail)
{
  pthread_mutex_lock(&attach_mu);
  struct ts__ctl *c = s->ctl;
  if (c) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    json_t *n = json_pack("{s:s,s:s,s:{s:s,s:s,s:s,s:f}}", "jsonrpc", "2.0", "method", "event",
                          "params", "node", node, "event", event, "detail", detail, "time",
                          (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
    struct ctl_event *e = n ? calloc(1, sizeof *e) : NULL;
    if (e && (e->line = json_dumps(n, JSON_COMPACT))) {
      pthread_mutex_lock(&c->mu);
      if (c->nev < MAX_QUEUED_EVENTS) {
        if (c->ev_tail)
          c->ev_tail->next = e;
        else
          c->ev_head = e;
        c->ev_tail = e;
        c->nev++;
        e = NULL;
      }
      pthread_mutex_unlock(&c->mu);
      uv_async_send(&c->wake);
    }
    if (e)
      free(e->line);
    free(e);
    json_decref(n);
  }
  pthread_mutex_unlock(&attach_mu);
}

/* ------------------------------------------------------------------------ */
/* Setting up and stopping                                                   */

static int socket_at(const char *path, struct sockaddr_un *sa, ts_error *err)
{
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (strlen(path) >= sizeof sa->sun_path)
    return ts_error_set(err, -ENAMETOOLONG, "control: %s: longer than a socket address (%zu bytes)",
                        path, sizeof sa->sun_path - 1);
  strcpy(sa->sun_path, path);
  return 0;
}

/* A temporary name beside `path` that fits a socket address as `path` does:
 * the file name cut short to leave room for ".PID-N.tmp" (N tells apart two
 * stacks of one process binding at once). */
static int temp_beside(const char *path, char *buf, size_t n, ts_error *err)
{
  static atomic_uint seq;
  const char *slash = strrchr(path, '/');
  const char *base = slash ? slash + 1 : path;
  char suffix[48];
  int sl =
      snprintf(suffix, sizeof suffix, ".%ld-%u.tmp", (long)getpid(), atomic_fetch_add(&seq, 1));
  size_t dirlen = (size_t)(base - path), blen = strlen(base);
  if (dirlen + 1 + (size_t)sl >= n)
    return ts_error_set(err, -ENAMETOOLONG,
                        "control: %s: no room beside it for a temporary socket name", path);
  size_t keep = n - 1 - dirlen - (size_t)sl;
  if (keep > blen)
    keep = blen;
  snprintf(buf, n, "%.*s%.*s%s", (int)dirlen, path, (int)keep, base, suffix);
  return 0;
}

/* Bind a socket at `path`: under a temporary name, made 0600, then renamed
 * over it, so that no one connects before the mode is set. */
static int bind_socket(const char *path, int *out, ts_error *err)
{
  struct sockaddr_un sa, tmp;
  int r = socket_at(path, &sa, err);
  if (r)
    return r;
  struct stat st;
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return ts_error_set(err, -EEXIST, "control: %s exists and is not a socket", path);
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0) {
      close(probe);
      return ts_error_set(err, -EADDRINUSE,
                          "control: %s: another server answers there (is the stack held twice?)",
                          path);
    }
    if (probe >= 0)
      close(probe);
  }
  char tpath[sizeof sa.sun_path];
  if ((r = temp_beside(path, tpath, sizeof tpath, err)) || (r = socket_at(tpath, &tmp, err)))
    return r;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return ts_error_set(err, -errno, "control: socket: %s", ts_strerror(-errno));
  unlink(tpath);
  if (bind(fd, (struct sockaddr *)&tmp, sizeof tmp) < 0) {
    r = -errno;
    close(fd);
    return ts_error_set(err, r, "control: %s: bind: %s", tpath, ts_strerror(r));
  }
  if (chmod(tpath, 0600) < 0 || listen(fd, 16) < 0 || rename(tpath, path) < 0) {
    r = -errno;
    unlink(tpath);
    close(fd);
    return ts_error_set(err, r, "control: %s: %s", path, ts_strerror(r));
  }
  *out = fd;
  return 0;
}

/* CONFIG.ctl, when it fits `n` and a socket address. */
static int path_beside(const char *config, char *buf, size_t n)
{
  struct sockaddr_un sa;
  size_t len = strlen(config) + 4;
  if (len >= n || len >= sizeof sa.sun_path)
    return -ENAMETOOLONG;
  snprintf(buf, n, "%s.ctl", config);
  return 0;
}

/* $XDG_RUNTIME_DIR/thinstack/NAME-HASH.ctl: NAME the configuration's file
 * name (shortened to fit), HASH 64 bits of FNV-1a over its absolute,
 * resolved path, so that every spelling of one file finds one socket and two
 * files of one name do not meet. */
static int path_runtime(const char *config, char *buf, size_t n)
{
  struct sockaddr_un sa;
  const char *rt = getenv("XDG_RUNTIME_DIR");
  if (!rt || rt[0] != '/')
    return -ENOENT;
  char abs[PATH_MAX];
  if (!realpath(config, abs))
    return -errno;
  uint64_t h = 0xcbf29ce484222325ull;
  for (const unsigned char *p = (const unsigned char *)abs; *p; p++)
    h = (h ^ *p) * 0x100000001b3ull;
  const char *name = strrchr(abs, '/') + 1;
  size_t cap = n < sizeof sa.sun_path ? n : sizeof sa.sun_path;
  size_t fixed = strlen(rt) + strlen("/thinstack/") + 1 + 16 + strlen(".ctl") + 1;
  if (fixed > cap)
    return -ENAMETOOLONG;
  size_t keep = strlen(name) < cap - fixed ? strlen(name) : cap - fixed;
  snprintf(buf, n, "%s/thinstack/%.*s-%016llx.ctl", rt, (int)keep, name, (unsigned long long)h);
  return 0;
}

int ts_ctl_path_candidate(const char *config, unsigned i, char *buf, size_t n)
{
  if (!config || !buf)
    return -EINVAL;
  switch (i) {
  case 0:
    return path_beside(config, buf, n);
  case 1:
    return path_runtime(config, buf, n);
  default:
    return -EINVAL;
  }
}

/* Can a holder create CONFIG.ctl? The folder must let us in and write, and
 * not be on a read-only file system (which access() does not see for
 * root). */
static bool beside_usable(const char *config)
{
  char dir[PATH_MAX];
  const char *slash = strrchr(config, '/');
  if (!slash)
    snprintf(dir, sizeof dir, ".");
  else if (slash == config)
    snprintf(dir, sizeof dir, "/");
  else
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - config), config);
  struct statvfs v;
  if (access(dir, W_OK | X_OK) != 0)
    return false;
  return !(statvfs(dir, &v) == 0 && (v.f_flag & ST_RDONLY));
}

/* The private folder for sockets under $XDG_RUNTIME_DIR: made 0700, and
 * refused when it is not a folder of ours that only we can enter. */
static int runtime_folder(const char *sock)
{
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%.*s", (int)(strrchr(sock, '/') - sock), sock);
  if (mkdir(dir, 0700) != 0 && errno != EEXIST)
    return -errno;
  struct stat st;
  if (lstat(dir, &st) != 0)
    return -errno;
  if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077))
    return -EPERM;
  return 0;
}

int ts_ctl_default_path(const char *config, char *buf, size_t n)
{
  if (!config || !buf)
    return -EINVAL;
  int beside = path_beside(config, buf, n);
  if (beside == 0 && beside_usable(config))
    return 0;
  char alt[sizeof((struct sockaddr_un *)0)->sun_path];
  int r = path_runtime(config, alt, sizeof alt);
  if (r == 0 && strlen(alt) < n && runtime_folder(alt) == 0) {
    snprintf(buf, n, "%s", alt);
    return 0;
  }
  /* No usable fallback: CONFIG.ctl when it fits, so binding it says why. */
  return beside == 0 ? path_beside(config, buf, n) : beside;
}

int ts_ctl_listen(ts_stack *stack, const char *address, ts_error *err)
{
  if (!stack || !address)
    return ts_error_set(err, -EINVAL, "control: no stack or address");
  const char *path = strncmp(address, "unix:", 5) == 0 ? address + 5 : address;
  if (!*path)
    return ts_error_set(err, -EINVAL, "control: \"%s\": no socket path", address);
  if (stack->ctl)
    return ts_error_set(err, -EBUSY, "control: the stack already serves %s", stack->ctl->path);
  struct ts__ctl *c = calloc(1, sizeof *c);
  char cwd[PATH_MAX];
  /* Absolute, so that the socket is still removed after a daemon's chdir. */
  if (c && path[0] != '/' && getcwd(cwd, sizeof cwd)) {
    size_t n = strlen(cwd) + strlen(path) + 2;
    if ((c->path = malloc(n)))
      snprintf(c->path, n, "%s/%s", cwd, path);
  } else if (c) {
    c->path = strdup(path);
  }
  if (!c || !c->path) {
    free(c);
    return ts_error_set(err, -ENOMEM, "control: out of memory");
  }
  c->stack = stack;
  path = c->path;
  int fd = -1, r = bind_socket(path, &fd, err);
  if (r) {
    free(c->path);
    free(c);
    return r;
  }
  pthread_mutex_init(&c->mu, NULL);
  uv_loop_init(&c->loop);
  uv_pipe_init(&c->loop, &c->server, 0);
  c->server.data = c;
  uv_async_init(&c->loop, &c->wake, on_wake);
  c->wake.data = c;
  if ((r = uv_pipe_open(&c->server, fd)) < 0 ||
      (r = uv_listen((uv_stream_t *)&c->server, 16, on_connection)) < 0 ||
      (r = -pthread_create(&c->thread, NULL, loop_main, c)) < 0) {
    ts_error_set(err, r, "control: %s: %s", path, r < -4000 ? uv_strerror(r) : ts_strerror(r));
    if (r > -4000)
      r = -EIO;
    uv_close((uv_handle_t *)&c->server, NULL);
    uv_close((uv_handle_t *)&c->wake, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    uv_loop_close(&c->loop);
    unlink(path);
    pthread_mutex_destroy(&c->mu);
    free(c->path);
    free(c);
    return r;
  }
  struct stat st;
  if (stat(path, &st) == 0) {
    c->sock_dev = st.st_dev;
    c->sock_ino = st.st_ino;
  }
  /* Named, so that its CPU time can be told apart (bench_ctl.sh). */
  pthread_setname_np(c->thread, "ts-ctl");
  pthread_mutex_lock(&attach_mu);
  stack->ctl = c;
  pthread_mutex_unlock(&attach_mu);
  return 0;
}

void ts_ctl_stop(ts_stack *stack)
{
  if (!stack)
    return;
  pthread_mutex_lock(&attach_mu);
  struct ts__ctl *c = stack->ctl;
  stack->ctl = NULL;
  pthread_mutex_unlock(&attach_mu);
  if (!c)
    return;
  pthread_mutex_lock(&c->mu);
  c->stop = true;
  pthread_mutex_unlock(&c->mu);
  uv_async_send(&c->wake);
  pthread_join(c->thread, NULL);
  uv_loop_close(&c->loop);
  for (struct ctl_event *e = c->ev_head, *n; e; e = n) {
    n = e->next;
    free(e->line);
    free(e);
  }
  /* Only our own socket: a later server may have replaced it. */
  struct stat st;
  if (lstat(c->path, &st) == 0 && st.st_dev == c->sock_dev && st.st_ino == c->sock_ino)
    unlink(c->path);
  pthread_mutex_destroy(&c->mu);
  free(c->path);
  free(c);
}

const char *ts_ctl_path(const ts_stack *stack)
{
  return stack && stack->ctl ? stack->ctl->path : NULL;
}
