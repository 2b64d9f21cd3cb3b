/* Stacks: load the layer modules, have config.c check the configuration
 * into a plan, build the nodes from it and open them bottom-up, compute
 * limits, close top-down and free; and the services the core offers to
 * layer code. This file alone creates and frees nodes. */
#include "core/internal.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void free_stack(struct ts_stack *s)
{
  for (size_t i = 0; i < s->nnodes; i++) {
    struct ts_node *n = s->nodes[i];
    pthread_mutex_destroy(&n->serial);
    free(n->children);
    free(n->name);
    free(n);
  }
  for (size_t i = 0; i < s->ncreated; i++)
    free(s->created[i]);
  free(s->created);
  ts__claims_free(s);
  free(s->nodes);
  free(s->exports);
  free(s->base_dir);
  free(s->config_path);
  pthread_mutex_destroy(&s->config_mu);
  json_decref(s->config);
  free(s);
}

/* Close opened nodes top-down. On an aborted open, also remove the files the
 * open created, so a failed open leaves the disk as it found it. */
static void close_nodes(struct ts_stack *s)
{
  for (size_t i = s->nnodes; i-- > 0;) {
    struct ts_node *n = s->nodes[i];
    if (n->opened && n->type->close)
      n->type->close(n);
    n->opened = false;
  }
  if (s->aborting)
    for (size_t i = s->ncreated; i-- > 0;)
      unlink(s->created[i]);
}

static int compute_limits(struct ts_node *n, ts_error *err)
{
  ts_limits lim;
  if (n->nchildren == 0) {
    ts__limits_leaf_default(&lim);
  } else {
    ts__limits_fold_start(&lim);
    for (size_t i = 0; i < n->nchildren; i++)
      ts_limits_stack(&lim, &n->children[i]->limits);
  }
  int r = n->type->limits(n, &lim, err);
  if (r)
    return r;
  if (lim.logical_block_size < 512 || (lim.logical_block_size & (lim.logical_block_size - 1)))
    return ts_layer_error(n, err, -EINVAL, NULL, "logical block size %u is not a power of two >= 512",
                          lim.logical_block_size);
  if (lim.size % lim.logical_block_size)
    return ts_layer_error(n, err, -EINVAL, NULL,
                          "size %llu is not a multiple of the logical block size %u",
                          (unsigned long long)lim.size, lim.logical_block_size);
  if (ts_layer_force_read_only(n))
    lim.read_only = true;
  n->limits = lim;
  return 0;
}

/* Load the layer modules (the plugin folder's, then the config's) and check
 * the config against the types they register. */
static int check_config(struct ts_stack *s, struct ts__plan *plan, ts_error *err)
{
  const char *pdir = s->opts.plugin_dir ? s->opts.plugin_dir : getenv("TS_PLUGIN_DIR");
  memset(plan, 0, sizeof *plan);
  int r = ts__load_plugin_dir(pdir ? pdir : TS_PLUGIN_DIR, err);
  if (r)
    return r;
  ts_error bad = { 0 };
  int bad_r = ts__config_check_header(s->config, s->base_dir, plan, &bad);
  for (size_t i = 0; i < plan->nplugins; i++) {
    ts_error e2;
    r = ts_load_layer_module(plan->plugins[i], &e2);
    if (r)
      return ts_error_set(err, r, "plugins[%zu]: %s", i, e2.msg);
  }
  if (bad_r)
    return ts_error_set(err, bad_r, "%s", bad.msg);
  return ts__config_check_layers(s->config, plan, err);
}

/* The stack's nodes from a checked plan, in its bottom-up order; nothing
 * opened. free_stack frees them. */
static int build_nodes(struct ts_stack *s, const struct ts__plan *plan, ts_error *err)
{
  s->nodes = calloc(plan->nlayers, sizeof *s->nodes);
  s->exports = calloc(plan->nexports ? plan->nexports : 1, sizeof *s->exports);
  if (!s->nodes || !s->exports)
    return ts_error_set(err, -ENOMEM, "out of memory");
  for (size_t i = 0; i < plan->nlayers; i++) {
    const struct ts__plan_layer *pl = &plan->layers[i];
    struct ts_node *n = calloc(1, sizeof *n);
    if (!n || !(n->name = strdup(pl->name)) ||
        (pl->nchildren && !(n->children = calloc(pl->nchildren, sizeof *n->children)))) {
      if (n)
        free(n->name);
      free(n);
      return ts_error_set(err, -ENOMEM, "out of memory");
    }
    n->stack = s;
    n->params = pl->params;
    n->type = pl->type;
    pthread_mutex_init(&n->serial, NULL);
    s->nodes[s->nnodes++] = n;
    /* Children come first in the plan, so they exist already. */
    for (size_t k = 0; k < pl->nchildren; k++)
      n->children[n->nchildren++] = s->nodes[pl->children[k]];
  }
  for (size_t i = 0; i < plan->nexports; i++) {
    struct ts_node *n = s->nodes[plan->exports[i]];
    n->exported = true;
    s->exports[s->nexports++] = n;
  }
  return 0;
}

/* Takes `config` and `config_path` (may be NULL) over, even on failure. */
static int open_stack(json_t *config, const char *base_dir, const ts_open_opts *opts,
                      char *config_path, ts_stack **out, ts_error *err)
{
  *out = NULL;
  struct ts_stack *s = calloc(1, sizeof *s);
  if (!s) {
    json_decref(config);
    free(config_path);
    return ts_error_set(err, -ENOMEM, "out of memory");
  }
  s->config = config;
  s->config_path = config_path;
  pthread_mutex_init(&s->config_mu, NULL);
  if (opts) {
    size_t n = opts->struct_size && opts->struct_size < sizeof s->opts ? opts->struct_size
                                                                       : sizeof s->opts;
    memcpy(&s->opts, opts, n);
  }
  /* Absolute, so that paths resolved later (a dumped configuration) do not
   * depend on the directory the process is in by then. */
  char cwd[PATH_MAX], abs_base[2 * PATH_MAX + 2];
  if (getcwd(cwd, sizeof cwd)) {
    if (!base_dir)
      base_dir = cwd;
    else if (base_dir[0] != '/') {
      snprintf(abs_base, sizeof abs_base, "%s/%s", cwd, base_dir);
      base_dir = abs_base;
    }
  }
  s->base_dir = base_dir ? strdup(base_dir) : NULL;

  struct ts__plan plan;
  int r = check_config(s, &plan, err);
  if (!r && !(s->opts.flags & TS_OPEN_VALIDATE_ONLY))
    r = build_nodes(s, &plan, err);
  ts__plan_free(&plan);
  if (r || (s->opts.flags & TS_OPEN_VALIDATE_ONLY)) {
    free_stack(s);
    return r;
  }
  for (size_t i = 0; i < s->nnodes && !r; i++) {
    struct ts_node *n = s->nodes[i];
    r = n->type->open(n, n->params, err);
    if (r) {
      if (!err || !err->msg[0])
        ts_layer_error(n, err, r, NULL, "cannot open: %s", ts_strerror(r));
      break;
    }
    n->opened = true;
    r = compute_limits(n, err);
  }
  if (r) {
    s->aborting = true;
    close_nodes(s);
    free_stack(s);
    return r;
  }
  *out = s;
  return 0;
}

int ts_stack_open_string(const char *json, const char *base_dir, const ts_open_opts *opts,
                         ts_stack **out, ts_error *err)
{
  json_error_t je;
  ts_error_clear(err);
  json_t *config = ts__json_loads(json, JSON_REJECT_DUPLICATES, &je);
  if (!config)
    return ts_error_set(err, -EINVAL, "line %d, column %d: invalid JSON: %s", je.line, je.column,
                        je.text);
  return open_stack(config, base_dir, opts, NULL, out, err);
}

int ts_stack_open_file(const char *path, const ts_open_opts *opts, ts_stack **out,
                       ts_error *err)
{
  json_error_t je;
  ts_error_clear(err);
  *out = NULL;
  json_t *config = ts__json_load_file(path, JSON_REJECT_DUPLICATES, &je);
  if (!config) {
    if (access(path, R_OK) != 0)
      return ts_error_set(err, -errno, "%s: cannot read the configuration: %s", path,
                          strerror(errno));
    return ts_error_set(err, -EINVAL, "%s:%d:%d: invalid JSON: %s", path, je.line, je.column,
                        je.text);
  }
  char *dup = strdup(path);
  if (!dup) {
    json_decref(config);
    return ts_error_set(err, -ENOMEM, "out of memory");
  }
  char *slash = strrchr(dup, '/');
  const char *dir = ".";
  if (slash) {
    *slash = '\0';
    dir = slash == dup ? "/" : dup;
  }
  char abs[PATH_MAX];
  if (!realpath(dir, abs))
    snprintf(abs, sizeof abs, "%s", dir);
  /* The file itself, through any symlink: a rewrite replaces the file,
   * not the link. */
  const char *base = slash ? slash + 1 : path;
  char *cpath = realpath(path, NULL);
  if (!cpath && asprintf(&cpath, "%s%s%s", abs, strcmp(abs, "/") ? "/" : "", base) < 0)
    cpath = NULL;
  free(dup);
  int r = open_stack(config, abs, opts, cpath, out, err);
  if (!r && *out)
    ts__volumes_opened(*out);
  if (r && err && err->msg[0]) {
    /* Prefix the file name so the message stands on its own. */
    char tmp[sizeof err->msg];
    snprintf(tmp, sizeof tmp, "%s: %s", path, err->msg);
    memcpy(err->msg, tmp, sizeof tmp);
  }
  return r;
}

int ts_stack_close(ts_stack *s, ts_error *err)
{
  if (!s)
    return 0;
  /* No request may arrive over the socket once the layers start closing. */
  ts_ctl_stop(s);
  int first = 0;
  /* Top-down, so each layer's flush reaches children not yet flushed. */
  for (size_t i = s->nnodes; i-- > 0;) {
    struct ts_node *n = s->nodes[i];
    if (!n->opened || n->limits.read_only)
      continue;
    int r = ts__node_flush_all(n);
    if (r && !first) {
      first = r;
      ts_error_set(err, r, "layers.%s: flush on close failed: %s", n->name, ts_strerror(r));
    }
  }
  close_nodes(s);
  free_stack(s);
  return first;
}

ts_dev *ts_stack_dev(ts_stack *s, const char *name)
{
  for (size_t i = 0; i < s->nexports; i++)
    if (strcmp(s->exports[i]->name, name) == 0)
      return s->exports[i];
  return NULL;
}

ts_dev *ts_stack_node(ts_stack *s, const char *name)
{
  for (size_t i = 0; i < s->nnodes; i++)
    if (strcmp(s->nodes[i]->name, name) == 0)
      return s->nodes[i];
  return NULL;
}

size_t ts_stack_ndevs(const ts_stack *s) { return s->nexports; }
ts_dev *ts_stack_dev_at(ts_stack *s, size_t i) { return i < s->nexports ? s->exports[i] : NULL; }
size_t ts_stack_nnodes(const ts_stack *s) { return s->nnodes; }
ts_dev *ts_stack_node_at(ts_stack *s, size_t i) { return i < s->nnodes ? s->nodes[i] : NULL; }

const char *ts_dev_name(const ts_dev *d) { return d->name; }
const char *ts_dev_type(const ts_dev *d) { return d->type->name; }
uint64_t ts_dev_size(const ts_dev *d) { return ts__node_size(d); }
const ts_limits *ts_dev_limits(const ts_dev *d) { return &d->limits; }
ts_stack *ts_dev_stack(const ts_dev *d) { return d->stack; }

int ts_dev_grow(ts_dev *d, uint64_t new_size, ts_error *err)
{
  const ts_layer_type *t = d->type;
  uint64_t cur = ts__node_size(d);
  if (new_size == cur)
    return 0;
  if (new_size < cur || new_size % d->limits.logical_block_size)
    return ts_layer_error(
        d, err, -EINVAL, NULL,
        "cannot grow from %llu to %llu bytes (must be larger and a multiple of %u)",
        (unsigned long long)cur, (unsigned long long)new_size, d->limits.logical_block_size);
  if (d->limits.read_only)
    return ts_layer_error(d, err, -EROFS, NULL, "read-only: cannot grow");
  /* Types built against an older header have no grow slot. */
  if (t->struct_size < offsetof(ts_layer_type, grow) + sizeof t->grow || !t->grow)
    return ts_layer_error(d, err, -EOPNOTSUPP, NULL, "a %s layer cannot grow", t->name);
  int r = t->grow(d, new_size, err);
  if (r) {
    if (err && !err->msg[0])
      ts_layer_error(d, err, r, NULL, "cannot grow: %s", ts_strerror(r));
    return r;
  }
  /* Last, once the layer serves the new range: requests racing with the
   * grow see either size, and each is served whole. */
  ts__node_set_size(d, new_size);
  return 0;
}

int ts_dev_message(ts_dev *d, const char *message, ts_error *err)
{
  const ts_layer_type *t = d->type;
  if (!message)
    return ts_layer_error(d, err, -EINVAL, NULL, "no message");
  if (t->struct_size < offsetof(ts_layer_type, message) + sizeof t->message || !t->message)
    return ts_layer_error(d, err, -EOPNOTSUPP, NULL, "a %s layer takes no messages", t->name);
  return t->message(d, message, err);
}

json_t *ts__dev_status(ts_dev *d)
{
  json_t *o = json_object();
  json_object_set_new(o, "name", json_string(d->name));
  json_object_set_new(o, "type", json_string(d->type->name));
  json_object_set_new(o, "size", json_integer((json_int_t)ts__node_size(d)));
  json_t *req = json_object();
  for (int op = 0; op < TS_OP_COUNT; op++) {
    json_t *c = json_object();
    json_object_set_new(c, "requests", json_integer((json_int_t)atomic_load(&d->nr_req[op])));
    json_object_set_new(c, "bytes", json_integer((json_int_t)atomic_load(&d->nr_bytes[op])));
    json_object_set_new(c, "errors", json_integer((json_int_t)atomic_load(&d->nr_err[op])));
    json_object_set_new(req, ts_op_name(op), c);
  }
  json_object_set_new(o, "requests", req);
  json_object_set_new(o, "async_submits", json_integer((json_int_t)atomic_load(&d->nr_async)));
  if (d->type->status) {
    json_t *ls = json_object();
    if (d->type->thread_model == TS_THREAD_SERIALIZE)
      pthread_mutex_lock(&d->serial);
    int r = d->type->status(d, ls);
    if (d->type->thread_model == TS_THREAD_SERIALIZE)
      pthread_mutex_unlock(&d->serial);
    if (r == 0)
      json_object_set_new(o, "layer", ls);
    else
      json_decref(ls);
  }
  return o;
}

char *ts_dev_status_json(ts_dev *d)
{
  json_t *o = ts__dev_status(d);
  char *s = json_dumps(o, JSON_INDENT(2));
  json_decref(o);
  return s;
}

/* Services for layers. */

void ts_layer_set_priv(ts_layer *l, void *priv) { l->priv = priv; }
void *ts_layer_priv(const ts_layer *l) { return l->priv; }
bool ts_layer_aborting(const ts_layer *l) { return l->stack->aborting; }
bool ts_layer_force_read_only(const ts_layer *l)
{
  return l->stack->opts.flags & TS_OPEN_READ_ONLY;
}

ts_layer *ts_layer_child(ts_layer *l, const char *name)
{
  for (size_t i = 0; i < l->nchildren; i++)
    if (strcmp(l->children[i]->name, name) == 0)
      return l->children[i];
  return NULL;
}

char *ts__stack_path(const struct ts_stack *s, const char *path)
{
  return ts__config_path(s->base_dir, path);
}

char *ts_layer_path(ts_layer *l, const char *path)
{
  return ts__stack_path(l->stack, path);
}

int ts_layer_error(ts_layer *l, ts_error *err, int code, const char *key, const char *fmt, ...)
{
  if (!err)
    return code;
  char text[sizeof err->msg];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  return ts_error_set(err, code, "layers.%s%s%s: %s", l->name, key ? "." : "", key ? key : "",
                      text);
}

void ts_layer_note_created(ts_layer *l, const char *path)
{
  struct ts_stack *s = l->stack;
  char **v = realloc(s->created, (s->ncreated + 1) * sizeof *v);
  if (!v)
    return;
  s->created = v;
  if ((v[s->ncreated] = strdup(path)))
    s->ncreated++;
}

void ts_layer_event(ts_layer *l, const char *event, const char *fmt, ...)
{
  struct ts_stack *s = l->stack;
  char detail[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof detail, fmt, ap);
  va_end(ap);
  ts__ctl_event(s, l->name, event, detail);
  if (s->opts.event)
    s->opts.event(s, l->name, event, detail, s->opts.event_arg);
}
